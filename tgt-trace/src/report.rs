//! Replay a recorded trace through the matcher, and summarise it for people.

use std::fmt::Write as _;

pub use crate::source::file::{ReplayError, Replayed};
use crate::{
    correlate::{Config, OrphanRecord, Record, Summary},
    pipeline::Driver,
    plausible::LayoutViolations,
    reader::{ReadError, TraceReader},
    sink::records::RecordsSink,
    source::file,
    stats::LatencySummary,
    trace::{Drops, MatchedSummary, SinkLoss},
};

/// Runs every event of `reader` through the driver's matcher, configured
/// from the trace's header, handing each record to `each` as it is
/// concluded (see [`crate::source::file`]).
pub fn replay(
    reader: &mut TraceReader,
    config: Config,
    each: impl FnMut(&Record),
) -> Result<Replayed, ReadError> {
    let header = reader.header().clone();
    let mut driver = Driver::new(&header, config, vec![Box::new(RecordsSink(each))]);
    file::replay(reader, &mut driver).map_err(|e| match e {
        ReplayError::Read(e) => e,
        // The records sink does no I/O of its own; kept for completeness.
        ReplayError::Sink(e) => ReadError::Io {
            source_name: format!("the {} sink", e.sink),
            source: e.source,
        },
    })
}

/// `tgt-trace report --json`.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ReportJson {
    pub schema_version: u32,
    pub summary: Summary,
    pub orphans: Vec<OrphanRecord>,
    /// Drops the recording reported.
    pub drops: Drops,
    /// The recording ended with its summary line (it was stopped cleanly).
    pub complete: bool,
    /// Lines skipped by `--lenient`.
    pub skipped_lines: u64,
    /// What each of the recording's sinks could not take.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkLoss>,
    /// What the runtime layout checks found (absent when nothing): any
    /// violation means tgt-trace may be reading this tgtd with a wrong
    /// struct layout.
    #[serde(default, skip_serializing_if = "LayoutViolations::is_empty")]
    pub layout_violations: LayoutViolations,
}

impl Replayed {
    pub fn report_json(&self, orphans: Vec<OrphanRecord>) -> Option<ReportJson> {
        Some(ReportJson {
            schema_version: crate::SCHEMA_VERSION,
            summary: self.summary.clone()?,
            orphans,
            drops: self.drops,
            complete: self.complete,
            skipped_lines: self.skipped,
            sinks: self.sinks.clone(),
            layout_violations: self.layout_violations.clone(),
        })
    }

    /// The `matched_summary` line that ends `replay`'s output.
    pub fn matched_summary(&self) -> Option<MatchedSummary> {
        Some(MatchedSummary {
            is_final: true,
            at_ns: self.last_ts_ns,
            summary: self.summary.clone()?,
            drops: self.drops,
            complete: self.complete,
            skipped_lines: self.skipped,
            sinks: self.sinks.clone(),
            layout_violations: self.layout_violations.clone(),
        })
    }
}

fn latency_row(table: &mut String, name: &str, s: &LatencySummary) {
    let _ = writeln!(
        table,
        "  {name:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        s.count, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
    );
}

/// The human summary: commands, TMFs by function and outcome, aborts,
/// orphans, drops.
pub fn render_text(replayed: &Replayed, orphans: &[OrphanRecord]) -> String {
    let mut t = String::new();
    let Some(summary) = &replayed.summary else {
        return t;
    };
    let c = &summary.counts;
    let h = &summary.histograms;
    match h.sampling {
        // Commands are not traced one by one: their counts would be of the
        // windows, and the TMFs' covered commands are in the TMF records.
        Some(sampling) => {
            let _ = writeln!(
                t,
                "commands: sampled (--sample {sampling}): {} measured in {} windows, {} cut by a \
                 window's edge; the command latencies below are of those measured",
                c.commands_sampled, c.sample_windows, c.commands_cut_by_window
            );
        }
        None => {
            let _ = writeln!(
                t,
                "commands: {} in, {} good, {} error status, {} aborted, {} still in flight, {} \
                 evicted",
                c.commands_in,
                c.commands_good,
                c.commands_error,
                c.commands_aborted,
                c.commands_in_flight,
                c.commands_evicted
            );
        }
    }
    let _ = writeln!(
        t,
        "\nlatency (µs)                      count       p50       p90       p99     p99.9       max"
    );
    latency_row(
        &mut t,
        if h.sampling.is_some() {
            "commands (sampled)"
        } else {
            "commands"
        },
        &h.command,
    );
    for (class, s) in &h.command_by_class {
        latency_row(&mut t, &format!("commands {class}"), s);
    }
    for (lun, s) in &h.command_by_lun {
        latency_row(&mut t, &format!("commands LUN {lun}"), s);
    }
    for (function, s) in &h.tmf_by_function {
        latency_row(&mut t, &format!("TMF {function}"), s);
    }
    latency_row(&mut t, "abort (TMF to TASK_ABORTED)", &h.abort);
    latency_row(&mut t, "aborted commands' age", &h.aborted_in_flight);
    latency_row(&mut t, "deferred TMF wait", &h.deferred_wait);
    let _ = writeln!(t, "\nTMFs: {}", c.tmfs);
    for (function, outcomes) in &c.tmfs_by_function {
        let _ = writeln!(t, "  {function}: {}", outcomes.values().sum::<u64>());
        for (outcome, n) in outcomes {
            let _ = writeln!(t, "    {outcome:<32} {n}");
        }
    }
    let _ = writeln!(t, "\norphans: {}", c.orphans());
    for o in orphans {
        let who = o.initiator.as_deref().unwrap_or("unknown initiator");
        let _ = writeln!(
            t,
            "  {}: {} (nexus {} {who}, LUN {})",
            crate::correlate::orphan_name(o.kind),
            o.detail,
            o.itn_id,
            o.lun
        );
    }
    let d = &replayed.drops;
    let _ = writeln!(
        t,
        "\ndrops: {} (ring full {}, unreadable {}, undecodable {}{}){}{}",
        d.total(),
        d.ring_full,
        d.read_failed,
        d.decode_errors,
        match (d.sink_slow, d.walk_truncated) {
            (0, 0) => String::new(),
            (slow, walks) => format!(
                "{}{}",
                if slow > 0 {
                    format!(", lines the recording's output reader was too slow for {slow}")
                } else {
                    String::new()
                },
                if walks > 0 {
                    format!(", TMF walks of tgtd's task lists cut short {walks}")
                } else {
                    String::new()
                },
            ),
        },
        if replayed.complete {
            ""
        } else {
            "; the trace has no summary line: it was cut short"
        },
        if replayed.skipped > 0 {
            format!("; {} malformed lines skipped", replayed.skipped)
        } else {
            String::new()
        }
    );
    layout_text(&mut t, &replayed.layout_violations);
    t
}

/// The runtime layout checks' findings, when there are any.
fn layout_text(t: &mut String, found: &LayoutViolations) {
    if found.total() > 0 {
        let _ = writeln!(t, "\nLAYOUT: {}", found.inconclusive_reason());
        for v in &found.examples {
            let _ = writeln!(
                t,
                "  {} at {} (pid {}, {} ns): {}",
                v.check, v.event, v.pid, v.ts_ns, v.detail
            );
        }
    }
    if found.untracked > 0 {
        let _ = writeln!(
            t,
            "\nlayout checks: {} commands were not tracked (more in flight than the checker \
             holds); their identity was not checked",
            found.untracked
        );
    }
}
