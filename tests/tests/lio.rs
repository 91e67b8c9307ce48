//! LIO, the kernel's SCSI target, in a qemu guest (tgt_trace_e2e::vm): the
//! TMF scenarios of lio-scenarios run inside under `tgt-trace record
//! --target lio`, once for this whole file; each test asserts one
//! scenario's initiator-side view, with the values LIO 6.1 answers.
//!
//! Needs qemu-system-x86, busybox-static and dmsetup, and Debian's kernel
//! package (downloaded into target/vm/cache); `cargo xtask test` installs
//! them, builds lio-scenarios and names it in `LIO_SCENARIOS_BIN`.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;
use tgt_trace::{
    correlate::{
        CommandOutcome, CommandRecord, Delivery, Fate, OrphanKind, OrphanRecord, TmfOutcome,
        TmfRecord,
    },
    points::Target,
    trace::{Header, Line, Summary},
};
use tgt_trace_e2e::{
    tgtd::tgt_trace_bin,
    vm::{self, Dirs, GuestPlan, GuestRun},
};

/// Names the guest's scenario program (target/release/lio-scenarios).
const SCENARIOS_ENV: &str = "LIO_SCENARIOS_BIN";
const TIMEOUT: Duration = Duration::from_secs(300);

/// iSCSI task management responses and SCSI statuses as numbers in the
/// scenario lines.
const FUNCTION_COMPLETE: u64 = 0;
const TASK_DOES_NOT_EXIST: u64 = 1;
const NOT_SUPPORTED: u64 = 5;
const TASK_ABORTED: u64 = 0x40;
const GOOD: u64 = 0;
const CHECK_CONDITION: u64 = 2;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_owned)
        .unwrap_or_default()
}

/// The one guest run of this file: booted by the first test that asks.
fn guest() -> &'static GuestRun {
    static RUN: OnceLock<Result<GuestRun, String>> = OnceLock::new();
    let run =
        RUN.get_or_init(|| {
            let scenarios = std::env::var_os(SCENARIOS_ENV).map(PathBuf::from).ok_or_else(|| {
            format!(
                "{SCENARIOS_ENV} is not set: run `cargo xtask test` (it builds lio-scenarios), \
                 or `cargo build --release -p tgt-trace-e2e` and set \
                 {SCENARIOS_ENV}=target/release/lio-scenarios"
            )
        })?;
            let tgt_trace = tgt_trace_bin();
            let plan = GuestPlan {
                scenarios,
                tgt_trace: tgt_trace.exists().then_some(tgt_trace),
                demo: None,
            };
            let dirs = Dirs {
                cache: workspace().join("target/vm/cache"),
                work: workspace().join("target/vm/test"),
            };
            let run = vm::run_guest(&dirs, &plan, TIMEOUT, |_| {}, |_| {}, &|| false)
                .map_err(|e| format!("the LIO guest: {e}"))?;
            let log = workspace().join("target/vm/test-console.log");
            let _ = vm::save(&log, &run.console);
            eprintln!("lio: guest console saved to {}", log.display());
            Ok(run)
        });
    match run {
        Ok(run) => run,
        Err(e) => panic!("{e}"),
    }
}

/// The named scenario, which must have passed its own checks.
fn scenario(name: &str) -> &'static Value {
    let run = guest();
    assert!(
        run.error.is_none(),
        "the guest's set-up failed: {:?}\n{}",
        run.error,
        run.sections.get("dmesg").map_or("", String::as_str)
    );
    let found = run.scenario(name).unwrap_or_else(|| {
        panic!(
            "no scenario {name} on the guest's console (exit status {:?}); stderr:\n{}",
            run.statuses.get("scenarios"),
            run.scenarios_stderr
        )
    });
    let failed: Vec<&Value> = found["checks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["passed"] != true)
        .collect();
    assert!(
        found["passed"] == true,
        "scenario {name} failed: error {}, checks {failed:#?}\n{found:#}",
        found.get("error").unwrap_or(&Value::Null)
    );
    found
}

fn tmfs(s: &Value) -> &[Value] {
    s["tmfs"].as_array().map_or(&[], Vec::as_slice)
}

fn commands<'a>(s: &'a Value, session_role: &str) -> Vec<&'a Value> {
    let initiator = s["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["role"] == session_role)
        .map(|x| x["initiator"].clone())
        .unwrap_or(Value::Null);
    s["commands"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["session"] == initiator)
        .collect()
}

fn only_tmf(s: &Value) -> &Value {
    let all = tmfs(s);
    assert_eq!(all.len(), 1, "one TMF expected: {all:#?}");
    &all[0]
}

#[test]
fn guest_ran_to_its_end() {
    let run = guest();
    assert!(
        run.done,
        "the guest stopped before its end:\n{}",
        run.console
    );
    assert_eq!(
        run.statuses.get("scenarios").map(String::as_str),
        Some("0"),
        "lio-scenarios' exit status; its stderr:\n{}",
        run.scenarios_stderr
    );
    assert_eq!(run.scenarios.len(), 7, "{:#?}", run.scenarios);
}

#[test]
fn abort_task_on_a_held_read() {
    let s = scenario("abort-task-held");
    let tmf = only_tmf(s);
    assert_eq!(tmf["function"], "ABORT TASK");
    assert_eq!(tmf["response"], FUNCTION_COMPLETE);
    let reads = commands(s, "a");
    assert_eq!(reads.len(), 1);
    assert_eq!(tmf["referenced_itt"], reads[0]["itt"]);
    assert_eq!(reads[0]["outcome"], "no response", "{s:#}");
}

#[test]
fn abort_task_on_a_finished_read() {
    let s = scenario("abort-task-finished");
    assert_eq!(only_tmf(s)["response"], TASK_DOES_NOT_EXIST);
    assert_eq!(commands(s, "a")[0]["status"], GOOD);
}

#[test]
fn lun_reset_from_another_session() {
    let s = scenario("lun-reset-other-session");
    let tmf = only_tmf(s);
    assert_eq!(tmf["function"], "LOGICAL UNIT RESET");
    assert_eq!(tmf["response"], FUNCTION_COMPLETE);
    let a = commands(s, "a");
    let reads: Vec<_> = a.iter().filter(|c| c["opcode"] == "0x28").collect();
    assert_eq!(reads.len(), 2, "{s:#}");
    for read in reads {
        assert_eq!(read["status"], TASK_ABORTED, "{s:#}");
    }
    // Both nexuses get the reset's unit attention.
    for role in ["a", "b"] {
        let tur = commands(s, role)
            .into_iter()
            .find(|c| c["opcode"] == "0x00")
            .unwrap_or_else(|| panic!("no TEST UNIT READY from {role}: {s:#}"));
        assert_eq!(tur["status"], CHECK_CONDITION);
        assert_eq!(tur["sense"], "0x6/0x29/0x03");
    }
}

#[test]
fn abort_task_on_a_write_awaiting_data_out() {
    let s = scenario("abort-task-write-awaiting-data");
    assert_eq!(only_tmf(s)["response"], FUNCTION_COMPLETE);
    assert_eq!(commands(s, "a")[0]["outcome"], "no response");
}

#[test]
fn disconnect_with_a_tmf_outstanding() {
    let s = scenario("disconnect-with-tmf-outstanding");
    let tmf = only_tmf(s);
    assert_eq!(tmf["function"], "LOGICAL UNIT RESET");
    assert_eq!(tmf["response"], Value::Null);
    let after = commands(s, "after");
    assert_eq!(after.len(), 3, "{s:#}");
    assert!(after.iter().all(|c| c["status"] == GOOD), "{s:#}");
}

#[test]
fn abort_task_set_and_clear_task_set_are_not_supported() {
    for name in ["abort-task-set", "clear-task-set"] {
        assert_eq!(only_tmf(scenario(name))["response"], NOT_SUPPORTED);
    }
}

/// The trace recorded in the guest (`record --target lio --matched`),
/// parsed: its header, events and the matcher's records.
struct LioTrace {
    header: Header,
    tmfs: Vec<TmfRecord>,
    commands: Vec<CommandRecord>,
    orphans: Vec<OrphanRecord>,
    summary: Summary,
}

fn lio_trace() -> &'static LioTrace {
    static TRACE: OnceLock<LioTrace> = OnceLock::new();
    TRACE.get_or_init(|| {
        let run = guest();
        let ndjson = run.trace.as_deref().unwrap_or_else(|| {
            panic!(
                "no trace from the guest ({}); tgt-trace's stderr:\n{}",
                run.trace_unavailable.as_deref().unwrap_or(""),
                run.tracer_stderr
            )
        });
        assert_eq!(
            run.statuses.get("tracer").map(String::as_str),
            Some("0"),
            "tgt-trace's exit status in the guest; its stderr:\n{}",
            run.tracer_stderr
        );
        let (mut header, mut summary) = (None, None);
        let (mut tmfs, mut commands, mut orphans) = (Vec::new(), Vec::new(), Vec::new());
        for line in ndjson.lines() {
            let parsed: Line = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("a trace line that does not parse ({e}): {line}"));
            match parsed {
                Line::Header(h) => header = Some(h),
                Line::Tmf(t) => tmfs.push(t),
                Line::Command(c) => commands.push(c),
                Line::Orphan(o) => orphans.push(o),
                Line::Summary(s) => summary = Some(s),
                _ => {}
            }
        }
        LioTrace {
            header: header.expect("the trace has a header"),
            tmfs,
            commands,
            orphans,
            summary: summary.expect("the trace ends with its summary"),
        }
    })
}

/// A wire ITT ("0x7") as the trace carries tags: LIO keeps the wire's four
/// bytes as a little-endian number (`(__force u32)hdr->itt`).
fn as_loaded(itt: &Value) -> u64 {
    let text = itt.as_str().unwrap_or_default();
    let wire = u32::from_str_radix(text.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("ITT {itt}: {e}"));
    u64::from(wire.swap_bytes())
}

fn initiator_of<'a>(s: &'a Value, role: &str) -> &'a str {
    s["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|x| x["role"] == role)
        .and_then(|x| x["initiator"].as_str())
        .unwrap_or_else(|| panic!("no session {role}: {s:#}"))
}

/// The trace's record of the scenario's one TMF, found by the initiator's
/// name and the TMF's own ITT, as the initiator sent it.
fn traced_tmf(s: &Value) -> &'static TmfRecord {
    let sent = only_tmf(s);
    let initiator = sent["session"].as_str().unwrap_or_default();
    let itt = as_loaded(&sent["itt"]);
    let found: Vec<&TmfRecord> = lio_trace()
        .tmfs
        .iter()
        .filter(|t| t.initiator.as_deref() == Some(initiator) && t.itt.map(u64::from) == Some(itt))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one traced TMF from {initiator} with ITT {itt:#x} expected; the trace's TMFs: {:#?}",
        lio_trace().tmfs
    );
    found[0]
}

/// What the trace says of the command the initiator sent as `itt`.
fn traced_command(initiator: &str, itt: &Value) -> &'static CommandRecord {
    let tag = as_loaded(itt);
    lio_trace()
        .commands
        .iter()
        .find(|c| c.initiator.as_deref() == Some(initiator) && c.tag == tag)
        .unwrap_or_else(|| {
            panic!(
                "no command record for {initiator}'s {itt} (tag {tag:#x}): {:#?}",
                lio_trace().commands
            )
        })
}

/// The TMF answered what the initiator got, and covered exactly the
/// commands the initiator saw aborted, each aborted after the TMF's wait
/// for it.
fn assert_agrees(s: &Value, outcome: TmfOutcome, aborted_roles: &[&str]) -> &'static TmfRecord {
    let sent = only_tmf(s);
    let traced = traced_tmf(s);
    assert_eq!(traced.outcome, outcome, "{traced:#?}\nthe initiator: {s:#}");
    match sent["response"].as_u64() {
        Some(code) => {
            assert_eq!(traced.delivery, Delivery::Sent, "{traced:#?}");
            assert_eq!(
                traced.iscsi_response.map(u64::from),
                Some(code),
                "{traced:#?}"
            );
        }
        None => assert_ne!(traced.delivery, Delivery::Sent, "{traced:#?}"),
    }
    let mut expected: Vec<(String, u64)> = Vec::new();
    for role in aborted_roles {
        let initiator = initiator_of(s, role);
        for c in commands(s, role) {
            let aborted = c["outcome"] == "no response" || c["status"] == TASK_ABORTED;
            if !aborted {
                continue;
            }
            expected.push((initiator.to_owned(), as_loaded(&c["itt"])));
            let record = traced_command(initiator, &c["itt"]);
            assert_eq!(record.outcome, CommandOutcome::Aborted, "{record:#?}");
            assert_eq!(record.covered_by, vec![traced.seq], "{record:#?}");
            // TASK ABORTED on the wire is tgt's 0x20 in a trace; no
            // response at all is no result.
            let result = (c["status"] == TASK_ABORTED).then_some(tgt_trace_common::TASK_ABORTED);
            assert_eq!(record.result, result, "{record:#?}\nthe initiator: {c}");
        }
    }
    let mut covered: Vec<(String, u64)> = traced
        .covered
        .iter()
        .map(|c| (c.initiator.clone().unwrap_or_default(), c.tag))
        .collect();
    covered.sort();
    expected.sort();
    assert_eq!(covered, expected, "{traced:#?}\nthe initiator: {s:#}");
    for c in &traced.covered {
        assert_eq!(c.fate, Fate::Aborted, "{c:#?}");
        // Released after the TMF began waiting for it: LIO answers only then.
        let waited = c.blocked_ns.unwrap_or_else(|| panic!("no wait: {c:#?}"));
        if let Some(responded) = traced.responded_ns {
            assert!(traced.requested_ns + waited <= responded, "{traced:#?}");
        }
    }
    traced
}

/// The initiator held the backing store (or its Data-Out) 1.5 s before it
/// let the command go, and saw no response meanwhile: the trace's wait is
/// at least that.
const HELD: u64 = 1_500_000_000;

#[test]
fn trace_header_names_lio_and_every_point() {
    let trace = lio_trace();
    assert_eq!(trace.header.target, Target::Lio);
    assert_eq!(trace.header.tgtd_path, "kernel");
    let missing: Vec<_> = trace.header.probes.iter().filter(|p| !p.attached).collect();
    assert!(missing.is_empty(), "LIO points not attached: {missing:#?}");
    assert_eq!(trace.summary.drops.ring_full, 0);
    assert_eq!(trace.summary.drops.read_failed, 0);
    assert_eq!(trace.summary.drops.decode_errors, 0);
}

#[test]
fn trace_abort_task_on_a_held_read() {
    let s = scenario("abort-task-held");
    let t = assert_agrees(s, TmfOutcome::CompletedWithAborts, &["a"]);
    assert_eq!(t.covered.len(), 1);
    assert!(t.covered[0].blocked_ns.unwrap_or(0) >= HELD, "{t:#?}");
    assert!(t.executed_ns.is_some(), "{t:#?}");
}

#[test]
fn trace_abort_task_on_a_finished_read() {
    let s = scenario("abort-task-finished");
    let traced = traced_tmf(s);
    // The READ's status left before the request: a race with its
    // completion when it was this recent, else a task that was not there.
    assert!(
        matches!(
            traced.outcome,
            TmfOutcome::NoTaskRace | TmfOutcome::NoTaskNeverExisted
        ),
        "{traced:#?}"
    );
    assert_agrees(s, traced.outcome, &["a"]);
    assert!(
        lio_trace()
            .orphans
            .iter()
            .any(|o| o.kind == OrphanKind::TmfFoundNoTask && o.tmf_seq == Some(traced.seq)),
        "{:#?}",
        lio_trace().orphans
    );
    // A good command leaves no record; the race says when it was released.
    if traced.outcome == TmfOutcome::NoTaskRace {
        assert!(traced.race_gap_ns.is_some(), "{traced:#?}");
    }
}

#[test]
fn trace_lun_reset_from_another_session() {
    let s = scenario("lun-reset-other-session");
    let t = assert_agrees(s, TmfOutcome::CompletedWithAborts, &["a"]);
    assert_eq!(t.covered.len(), 2, "{t:#?}");
    assert!(t.covered.iter().all(|c| c.other_initiator), "{t:#?}");
    // B's response waited for A's acknowledgement of its TASK ABORTED
    // statuses, after the store was released.
    assert!(t.latency_ns.unwrap_or(0) >= 2 * HELD, "{t:#?}");
}

#[test]
fn trace_abort_task_on_a_write_awaiting_data_out() {
    let s = scenario("abort-task-write-awaiting-data");
    let t = assert_agrees(s, TmfOutcome::CompletedWithAborts, &["a"]);
    assert!(t.covered[0].blocked_ns.unwrap_or(0) >= HELD, "{t:#?}");
}

#[test]
fn trace_disconnect_with_a_tmf_outstanding() {
    let s = scenario("disconnect-with-tmf-outstanding");
    let t = assert_agrees(s, TmfOutcome::Unanswered, &["a"]);
    assert_eq!(t.delivery, Delivery::FreedUnsent, "{t:#?}");
    assert!(
        lio_trace()
            .orphans
            .iter()
            .any(|o| o.kind == OrphanKind::TmfUnanswered && o.tmf_seq == Some(t.seq)),
        "{:#?}",
        lio_trace().orphans
    );
}

#[test]
fn trace_abort_task_set_and_clear_task_set() {
    for name in ["abort-task-set", "clear-task-set"] {
        let t = assert_agrees(scenario(name), TmfOutcome::NotSupported, &[]);
        assert!(t.covered.is_empty(), "{t:#?}");
    }
}

/// Every orphan the trace reports is one the scenarios made.
#[test]
fn trace_has_no_other_orphans() {
    for name in [
        "abort-task-held",
        "lun-reset-other-session",
        "abort-task-write-awaiting-data",
        "abort-task-set",
        "clear-task-set",
    ] {
        let seq = traced_tmf(scenario(name)).seq;
        let about: Vec<_> = lio_trace()
            .orphans
            .iter()
            .filter(|o| o.tmf_seq == Some(seq))
            .collect();
        assert!(about.is_empty(), "{name}: {about:#?}");
    }
    let without_tmf: Vec<_> = lio_trace()
        .orphans
        .iter()
        .filter(|o| o.kind == OrphanKind::AbortWithoutTmf)
        .collect();
    assert!(without_tmf.is_empty(), "{without_tmf:#?}");
}
