//! `tgt-trace check` on the real tgtd trace in tests/data: exit codes and
//! messages for pass, each kind of failure, each cause of "inconclusive",
//! and bad input.

use std::{path::PathBuf, process::Command};

fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf.ndjson")
}

/// Runs check on `trace` with `budgets`; returns (exit code, stdout + stderr).
fn check(trace: &std::path::Path, budgets: &[&str]) -> (i32, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tgt-trace"));
    cmd.arg("check").arg(trace);
    for b in budgets {
        cmd.args(["--budget", b]);
    }
    let out = cmd.output().expect("tgt-trace runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// The golden trace with `from` replaced by `to`, in a temporary file.
fn variant(name: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(golden()).expect("golden trace");
    assert!(text.contains(from), "the golden trace has '{from}'");
    let path = std::env::temp_dir().join(format!(
        "tgt-trace-check-{}-{name}.ndjson",
        std::process::id()
    ));
    std::fs::write(&path, text.replacen(from, to, 1)).expect("temporary trace");
    path
}

#[test]
fn passing_budgets_exit_0() {
    let (code, text) = check(
        &golden(),
        &[
            "orphans==0",
            "tmf.ABORT_TASK.count==1",
            "deferred.max<=1s",
            "tmfs.deferred==1",
        ],
    );
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches(" pass").count(), 4, "{text}");
}

#[test]
fn each_kind_of_budget_can_fail_with_exit_1() {
    // The deferred LUN RESET waited 633 µs; the ABORT TASK found no task.
    for budget in [
        "deferred.max<=100us",
        "tmf.LOGICAL_UNIT_RESET.max<500us",
        "orphans>0",
        "tmfs.no_task_deferred_then_finished==0",
    ] {
        let (code, text) = check(&golden(), &[budget]);
        assert_eq!(code, 1, "{budget}: {text}");
        assert!(text.contains("FAIL") && text.contains("measured"), "{text}");
    }
    // A failure wins over an inconclusive budget in the same run.
    let (code, _) = check(&golden(), &["deferred.max<=100us", "abort.p99<=5ms"]);
    assert_eq!(code, 1);
}

#[test]
fn too_few_samples_is_inconclusive() {
    let (code, text) = check(&golden(), &["deferred.p99<=1s"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("2 samples for deferred, 100 needed for p99"),
        "{text}"
    );
    let (code, text) = check(&golden(), &["abort.p50<=1ms"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no samples for abort"), "{text}");
}

#[test]
fn drops_make_every_budget_inconclusive() {
    let trace = variant("drops", r#""ring_full":0"#, r#""ring_full":3"#);
    let (code, text) = check(&trace, &["orphans==0"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("dropped 3 events"), "{text}");
}

#[test]
fn a_missing_probe_is_inconclusive() {
    let trace = variant(
        "noqueue",
        r#"{"name":"queue","function":"target_cmd_queue","offset":194928,"attached":true}"#,
        r#"{"name":"queue","function":"target_cmd_queue","offset":194928,"attached":false,"missing":"test"}"#,
    );
    let (code, text) = check(&trace, &["command.max<=1s"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("'queue' probe was not attached"), "{text}");
}

#[test]
fn bad_input_exits_3_naming_the_cause() {
    let (code, text) = check(&golden(), &["abort.p99<=fast"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("bad budget 'abort.p99<=fast'"), "{text}");
    let broken = variant(
        "broken",
        r#"{"type":"event","kind":"cmd_queue""#,
        r#"{"type":"event","kind":"cmd_qu"#,
    );
    let (code, text) = check(&broken, &["orphans==0"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains(&format!("{}:3:", broken.display())), "{text}");
    let empty = std::env::temp_dir().join(format!(
        "tgt-trace-check-{}-empty.ndjson",
        std::process::id()
    ));
    std::fs::write(&empty, "").expect("empty file");
    let (code, text) = check(&empty, &["orphans==0"]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("is empty"), "{text}");
}
