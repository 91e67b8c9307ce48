//! Issue 2: `tgt-trace record` against a real tgtd under libiscsi's tools.
//! tgtd's own debug log (`tgtd -d 1` prints every command it queues, with
//! its address, opcode and LUN) is the account the trace must match exactly.

use std::collections::{BTreeMap, HashMap};

use tgt_trace::event::Event;
use tgt_trace_e2e::tgtd::{Tgtd, TgtdOptions};

mod support;
use support::{Trace, record};

/// (cmd address, opcode, LUN) of every command, in tgtd's order.
fn tgtd_account(log: &str) -> Vec<(u64, u8, u64)> {
    log.lines()
        .filter_map(|line| {
            // tgtd: target_cmd_queue(1126) 0x5592e5fba4e0 12 1
            let rest = line.split_once("target_cmd_queue(")?.1.split_once(") ")?.1;
            let mut fields = rest.split_whitespace();
            let cmd = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
            let opcode = u8::from_str_radix(fields.next()?, 16).ok()?;
            let lun = fields.next()?.parse().ok()?;
            Some((cmd, opcode, lun))
        })
        .collect()
}

fn run_workload(probe_set: &str) -> (Trace, Vec<(u64, u8, u64)>) {
    let tgtd = Tgtd::start(&TgtdOptions {
        debug: true,
        ..TgtdOptions::default()
    })
    .expect("tgtd starts");
    tgtd.add_lun(1, 16 << 20).expect("LUN 1");
    let out = tgtd.dir.join("record.ndjson");
    let url = tgtd.url(1);
    let script = format!(
        "set -e; iscsi-inq {url} >/dev/null; iscsi-inq {url} >/dev/null; \
         iscsi-readcapacity16 {url} >/dev/null; \
         iscsi-test-cu --dataloss -t SCSI.Write10.Simple {url} >/dev/null; \
         iscsi-test-cu -t SCSI.Read10.Simple {url} >/dev/null"
    );
    let status = record(
        &tgtd,
        &out,
        &["--probes", probe_set],
        &["sh", "-c", &script],
    );
    assert!(status.success(), "workload failed under tracing ({status})");
    let trace = support::read_trace(&out);
    let account = tgtd_account(&tgtd.log());
    (trace, account)
}

fn check(probe_set: &str) {
    let (trace, account) = run_workload(probe_set);
    assert_eq!(
        trace.summary.drops.total(),
        0,
        "drops: {:?}",
        trace.summary.drops
    );
    support::assert_no_layout_violations(&trace);
    assert!(
        account.len() > 100,
        "tgtd logged only {} commands: is -d 1 working?",
        account.len()
    );

    // Exactly tgtd's commands, in tgtd's order.
    let queued: Vec<(u64, u8, u64)> = trace
        .events
        .iter()
        .filter_map(|e| match *e {
            Event::CmdQueue {
                cmd, opcode, lun, ..
            } => Some((cmd, opcode, lun)),
            _ => None,
        })
        .collect();
    assert_eq!(queued.len(), account.len(), "commands traced vs tgtd's log");
    assert_eq!(queued, account, "the trace's commands are tgtd's, in order");
    let mut per_opcode: BTreeMap<u8, usize> = BTreeMap::new();
    for &(_, opcode, _) in &account {
        *per_opcode.entry(opcode).or_default() += 1;
    }
    for opcode in [0x28u8, 0x2a, 0x12, 0x9e] {
        assert!(
            per_opcode.get(&opcode).copied().unwrap_or(0) > 0,
            "no {opcode:#04x} in {per_opcode:?}"
        );
    }
    eprintln!(
        "{probe_set}: {} commands, per opcode {per_opcode:x?}",
        account.len()
    );

    // Each command: arrival, then (full) its result, then its release, same
    // nexus and tag, in time order, each exactly once.
    let mut open: HashMap<u64, (u64, u64, u64, bool)> = HashMap::new(); // cmd -> (itn, tag, ts, result seen)
    let mut released = 0;
    for event in &trace.events {
        match *event {
            Event::CmdQueue {
                cmd,
                itn_id,
                tag,
                ts_ns,
                ..
            } => {
                assert!(
                    open.insert(cmd, (itn_id, tag, ts_ns, false)).is_none(),
                    "{cmd:#x} queued twice"
                );
            }
            Event::CmdResult {
                cmd,
                itn_id,
                tag,
                ts_ns,
                ..
            } => {
                let entry = open.get_mut(&cmd).expect("result of a queued command");
                assert_eq!((entry.0, entry.1), (itn_id, tag), "result's nexus and tag");
                assert!(ts_ns >= entry.2 && !entry.3, "one result, after arrival");
                entry.3 = true;
            }
            Event::CmdRelease {
                cmd,
                itn_id,
                tag,
                ts_ns,
                ..
            } => {
                let (itn, t, arrived, result_seen) =
                    open.remove(&cmd).expect("release of a queued command");
                assert_eq!((itn, t), (itn_id, tag), "release's nexus and tag");
                assert!(ts_ns >= arrived, "release after arrival");
                assert_eq!(
                    result_seen,
                    probe_set == "full",
                    "result before release iff the set probes results"
                );
                released += 1;
            }
            _ => {}
        }
    }
    assert!(open.is_empty(), "{} commands never released", open.len());
    assert_eq!(released, account.len());

    // Every nexus is named after its initiator.
    let nexuses: Vec<&Option<String>> = trace
        .events
        .iter()
        .filter_map(|e| match e {
            Event::NexusCreate { initiator, .. } => Some(initiator),
            _ => None,
        })
        .collect();
    assert!(
        nexuses.len() >= 5,
        "one nexus per tool run, saw {}",
        nexuses.len()
    );
    for name in nexuses {
        let name = name.as_deref().expect("initiator named");
        assert!(
            name.starts_with("iqn.2007-10.com.github:sahlberg:libiscsi:iscsi-"),
            "{name}"
        );
    }
}

#[test]
fn record_matches_tgtds_own_account_lean() {
    check("lean");
}

#[test]
fn record_matches_tgtds_own_account_full() {
    check("full");
}

/// Issue 15: `--sample 20% --sample-period 500ms` under a steady load
/// (iscsi-perf on a null LUN). tgtd's own log is the account: the trace's
/// commands are whole runs of tgtd's, one run per window (the probes were
/// attached throughout a window and lost nothing in it), every command
/// event lies inside a window, and the windows together saw a share of
/// tgtd's commands near the duty cycle, far from all of them. Each command
/// is measured or counted as cut by a window's edge.
#[test]
fn sampled_windows_hold_whole_runs_of_tgtds_commands() {
    let tgtd = Tgtd::start(&TgtdOptions {
        debug: true,
        ..TgtdOptions::default()
    })
    .expect("tgtd starts");
    tgtd.add_null_lun(2).expect("LUN 2");
    let out = tgtd.dir.join("sampled.ndjson");
    let url = tgtd.url(2);
    // The length of the load, not a wait for anything.
    let script = format!(
        "timeout --foreground -k 1 -s INT 3 iscsi-perf -m 8 -b 8 {url} >/dev/null 2>&1; true"
    );
    let status = record(
        &tgtd,
        &out,
        &[
            "--probes",
            "lean",
            "--sample",
            "20%",
            "--sample-period",
            "500ms",
        ],
        &["sh", "-c", &script],
    );
    assert!(status.success(), "workload failed under tracing ({status})");
    let trace = support::read_trace(&out);
    let account = tgtd_account(&tgtd.log());
    assert_eq!(trace.summary.drops.total(), 0, "{:?}", trace.summary.drops);
    // A command cut by one window whose address tgtd reuses for one the
    // next window sees is not taken for the same command.
    support::assert_no_layout_violations(&trace);
    let sampling = trace.header.sampling.expect("the header says it sampled");
    assert_eq!((sampling.percent, sampling.period_ms), (20, 500));
    for point in ["queue", "release"] {
        let p = trace
            .header
            .probes
            .iter()
            .find(|p| serde_json::to_value(p.name).expect("name") == point)
            .expect("listed");
        assert!(p.attached && p.sampled, "{p:?}");
    }

    // Windows alternate, open first; command events only inside one.
    let mut runs: Vec<Vec<(u64, u8, u64)>> = Vec::new();
    let mut open = false;
    for event in &trace.events {
        match *event {
            Event::SampleWindow { open: now, .. } => {
                assert_ne!(open, now, "windows alternate");
                open = now;
                if open {
                    runs.push(Vec::new());
                }
            }
            Event::CmdQueue {
                cmd, opcode, lun, ..
            } => {
                assert!(open, "a command event outside a window");
                runs.last_mut().expect("a window").push((cmd, opcode, lun));
            }
            Event::CmdRelease { .. } => assert!(open, "a command event outside a window"),
            _ => {}
        }
    }
    assert!(!open, "the last window is closed");
    assert!(
        runs.len() >= 4,
        "{} windows in 3 s of 500 ms periods",
        runs.len()
    );
    // Each window's commands are a contiguous run of tgtd's, in order.
    let mut from = 0;
    for (i, run) in runs.iter().enumerate().filter(|(_, r)| !r.is_empty()) {
        let at = (from..=account.len().saturating_sub(run.len()))
            .find(|&s| account[s..s + run.len()] == run[..])
            .unwrap_or_else(|| {
                panic!(
                    "window {i}: its {} commands are not a run of tgtd's",
                    run.len()
                )
            });
        from = at + run.len();
    }
    let traced: usize = runs.iter().map(Vec::len).sum();
    let share = traced as f64 / account.len() as f64;
    eprintln!(
        "sampled: {} windows, {traced} of tgtd's {} commands ({:.1}%)",
        runs.len(),
        account.len(),
        share * 100.0
    );
    assert!(
        (0.05..0.6).contains(&share),
        "a 20% duty cycle saw {:.1}% of tgtd's commands",
        share * 100.0
    );

    // Replayed: every traced arrival is measured or cut, none is a record.
    let mut reader = tgt_trace::reader::TraceReader::open(&out, false).expect("trace opens");
    let mut commands = 0;
    let replayed = tgt_trace::report::replay(&mut reader, Default::default(), |r| {
        if matches!(r, tgt_trace::correlate::Record::Command(_)) {
            commands += 1;
        }
    })
    .expect("replays");
    let summary = replayed.summary.expect("the matcher's summary");
    let c = &summary.counts;
    assert_eq!(commands, 0, "a sampled command is no record");
    assert_eq!(summary.histograms.sampling, Some(sampling));
    assert_eq!(summary.histograms.command.count, c.commands_sampled);
    assert!(c.commands_sampled > 0 && c.commands_sampled <= traced as u64);
    assert!(
        c.commands_sampled + c.commands_cut_by_window >= traced as u64,
        "{c:?}"
    );
    assert_eq!(c.sample_windows, runs.len() as u64);
}
