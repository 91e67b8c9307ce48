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

/// Where the trace's assertions go: the trace recorded in the guest with
/// the scenarios the initiator saw. `None` until tgt-trace knows
/// `record --target lio`; the guest then ran the scenarios untraced.
struct LioTrace<'a> {
    ndjson: &'a str,
    scenarios: &'a [Value],
}

fn lio_trace() -> Option<LioTrace<'static>> {
    let run = guest();
    Some(LioTrace {
        ndjson: run.trace.as_deref()?,
        scenarios: &run.scenarios,
    })
}

#[test]
fn trace_of_the_scenarios() {
    let Some(trace) = lio_trace() else {
        let run = guest();
        eprintln!(
            "lio: trace unavailable {}; tgt-trace's stderr:\n{}",
            run.trace_unavailable.as_deref().unwrap_or(""),
            run.tracer_stderr
        );
        return;
    };
    assert_eq!(
        guest().statuses.get("tracer").map(String::as_str),
        Some("0"),
        "tgt-trace's exit status in the guest; its stderr:\n{}",
        guest().tracer_stderr
    );
    let header: Value = serde_json::from_str(trace.ndjson.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("the trace's first line is not JSON: {e}"));
    assert_eq!(header["type"], "header", "{header}");
    assert!(!trace.scenarios.is_empty());
}
