//! `tgt-trace probes`: what tgt-trace can attach to a tgtd binary, and why
//! not where it cannot; as text, or as JSON for scripts (`--json`). Both
//! are printed from the same list of facts.

use std::{path::PathBuf, process::ExitCode};

use serde::Serialize;
use tgt_trace::{
    locate::register_name,
    points::Point,
    proof::FieldProof,
    tgtd::{DEFAULT_TGTD, LayoutCheck, TgtdBinary, UprobeStep},
};

#[derive(clap::Args)]
pub struct ProbesArgs {
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TGTD)]
    tgtd: PathBuf,
    /// The same facts as one JSON object, for scripts.
    #[arg(long)]
    json: bool,
}

/// `tgt-trace probes --json`.
#[derive(Serialize)]
struct Facts {
    tgtd: String,
    build_id: String,
    layout: LayoutCheck,
    points: Vec<Fact>,
    /// Each field the probes read, proved from the machine code or not.
    fields: Vec<FieldProof>,
    /// Whether `record`, `tui` and `serve` trace this build (the TMF
    /// request's fields are proved); probes whose fields are not proved are
    /// left off either way.
    traceable: bool,
    /// Why not, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    refused: Option<String>,
}

/// One point tgt-trace attaches to or reads, and whether it can.
#[derive(Serialize)]
struct Fact {
    /// The tgtd function (or, for `task->conn->state` and `tmf_walk`, the
    /// fact proved).
    point: &'static str,
    /// What it gives the trace.
    gives: &'static str,
    found: bool,
    /// File offset (exported functions) or address (points found in the
    /// machine code).
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    /// The register the probe reads its argument from, where the compiler
    /// chose it.
    #[serde(skip_serializing_if = "Option::is_none")]
    register: Option<&'static str>,
    /// Why it was not found, and what is lost without it.
    #[serde(skip_serializing_if = "Option::is_none")]
    why_not: Option<String>,
    /// The instruction the uprobe displaces (AT&T syntax).
    #[serde(skip_serializing_if = "Option::is_none")]
    instruction: Option<String>,
    /// Whether the kernel emulates it on each hit or single-steps it (a
    /// second trap: about three times the cost).
    #[serde(skip_serializing_if = "Option::is_none")]
    uprobe: Option<UprobeStep>,
}

impl Fact {
    fn at(point: &'static str, gives: &'static str, offset: Option<u64>) -> Fact {
        Fact {
            point,
            gives,
            found: offset.is_some(),
            offset,
            register: None,
            why_not: offset.is_none().then(|| "missing".to_owned()),
            instruction: None,
            uprobe: None,
        }
    }

    fn or(point: &'static str, gives: &'static str, why_not: String) -> Fact {
        Fact {
            point,
            gives,
            found: false,
            offset: None,
            register: None,
            why_not: Some(why_not),
            instruction: None,
            uprobe: None,
        }
    }
}

fn facts(binary: &TgtdBinary) -> Facts {
    let mut points: Vec<Fact> = tgt_trace::tgtd::probe_functions()
        .iter()
        .map(|&name| {
            let gives = "the tgt core's path";
            let unproved = Point::ALL
                .iter()
                .find(|p| p.function() == name)
                .and_then(|&p| binary.unproved_for(p));
            let point = Point::ALL.iter().find(|p| p.function() == name).copied();
            let placed = point.and_then(|p| binary.placements.get(&p));
            match unproved {
                Some(why) => Fact::or(name, gives, format!("off: {why}")),
                None => Fact::at(
                    name,
                    gives,
                    placed.map(|p| p.offset).or(binary.symbol_offset(name)),
                ),
            }
        })
        .collect();
    points.push(match binary.tmf_response_offset {
        Some(offset) => Fact::at(
            "iscsi_tm_done",
            "TMF responses",
            Some(
                binary
                    .placements
                    .get(&Point::TmfResponse)
                    .map_or(offset, |p| p.offset),
            ),
        ),
        None => Fact::or(
            "iscsi_tm_done",
            "TMF responses",
            "not found: TMF responses will be inferred".to_owned(),
        ),
    });
    let verified = binary.tmf_response_reads_connection;
    points.push(Fact {
        point: "task->conn->state",
        gives: "responses freed on a closed connection are flagged",
        found: verified,
        offset: None,
        register: None,
        why_not: (!verified)
            .then(|| "not verified: a response dropped on a closed connection looks sent".into()),
        instruction: None,
        uprobe: None,
    });
    // The iSCSI layer's TMF points, found in the machine code.
    let located = [
        ("iscsi_tm_execute", "TMFs as received", &binary.tmf_received),
        (
            "iscsi_tm_tx_start",
            "responses handed to the socket",
            &binary.tmf_tx_start,
        ),
        ("iscsi_task_tx_done", "responses written", &binary.tmf_sent),
    ];
    for (point, gives, found) in located {
        points.push(match found {
            Ok(p) => Fact {
                point,
                gives,
                found: true,
                offset: Some(p.address),
                register: Some(register_name(p.task_reg)),
                why_not: None,
                instruction: None,
                uprobe: None,
            },
            Err(why) => Fact::or(
                point,
                gives,
                format!("not found: {why}; {gives} are unknown"),
            ),
        });
    }
    points.push(match &binary.conn_close {
        Ok(offset) => Fact::at(
            "conn_close",
            "responses freed unsent",
            Some(
                binary
                    .placements
                    .get(&Point::ConnClose)
                    .map_or(*offset, |p| p.offset),
            ),
        ),
        Err(why) => Fact::or(
            "conn_close",
            "responses freed unsent",
            format!("not used: {why}"),
        ),
    });
    points.push(match &binary.tmf_walk {
        Ok(_) => Fact {
            point: "tmf_walk",
            gives: "the tmf set's covered commands, from abort_task_set's lists",
            found: true,
            offset: None,
            register: None,
            why_not: None,
            instruction: None,
            uprobe: None,
        },
        Err(why) => Fact::or(
            "tmf_walk",
            "the tmf set's covered commands, from abort_task_set's lists",
            format!("off: {why}; the tmf probe set sees no covered commands"),
        ),
    });
    // What each uprobe displaces, and so what a hit costs.
    for f in points.iter_mut().filter(|f| f.found) {
        if let Some((text, step)) = f.offset.and_then(|o| binary.probed_instruction(o)) {
            f.instruction = Some(text);
            f.uprobe = Some(step);
        }
    }
    let refused = binary.refusal().map(|e| e.to_string());
    Facts {
        tgtd: binary.path.display().to_string(),
        build_id: binary.build_id.clone(),
        layout: binary.layout.clone(),
        points,
        fields: binary.proof.fields.clone(),
        traceable: refused.is_none(),
        refused,
    }
}

impl ProbesArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let binary = TgtdBinary::inspect(&self.tgtd)?;
        let facts = facts(&binary);
        if self.json {
            println!("{}", serde_json::to_string_pretty(&facts)?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("{}: build id {}", facts.tgtd, facts.build_id);
        if let Some(why) = &facts.refused {
            println!("REFUSED: {why}");
        }
        let proved = facts.fields.iter().filter(|f| f.proved).count();
        println!(
            "layout: {proved} of {} fields proved from the machine code",
            facts.fields.len()
        );
        for f in &facts.fields {
            let name = match f.offset {
                Some(offset) => format!("{} ({offset})", f.field),
                None => f.field.to_string(),
            };
            let lead = format!("  {name:<32}");
            match (&f.how, &f.why_not) {
                (Some(how), _) => println!("{lead} proved: {how}"),
                (_, why) => println!(
                    "{lead} NOT PROVED: {}",
                    why.as_deref().unwrap_or("not checked")
                ),
            }
        }
        println!("points:");
        for f in &facts.points {
            let mut line = format!("  {:<22} ", f.point);
            match (&f.why_not, f.offset) {
                (Some(why), _) => line.push_str(why),
                (None, Some(offset)) => line.push_str(&format!("offset {offset:#x}")),
                (None, None) => line.push_str("proved"),
            }
            if let (Some(text), Some(step)) = (&f.instruction, f.uprobe) {
                line.push_str(&format!(" [{text}: {}]", step.name()));
            }
            if f.found {
                line.push_str(&format!(" ({}", f.gives));
                if let Some(register) = f.register {
                    line.push_str(&format!("; register {register} holds its argument"));
                }
                if f.point == "tmf_walk"
                    && let Ok(walk) = &binary.tmf_walk
                {
                    line.push_str(&format!(
                        "; target_list at {:+#x} from target_mgmt_request",
                        walk.target_list_from_entry
                    ));
                }
                line.push(')');
            }
            println!("{line}");
        }
        Ok(ExitCode::SUCCESS)
    }
}
