//! `tgt-trace check` on the real tgtd trace in tests/data: exit codes and
//! messages for pass, each kind of failure, each cause of "inconclusive",
//! and bad input.

use std::{path::PathBuf, process::Command};

/// libiscsi's ABORT TASK and LUN RESET tests against a real tgtd, recorded
/// with the iSCSI layer's probes (schema 4): both deferred, both answered.
fn golden() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf-v4.ndjson")
}

/// The same tests recorded by a schema-3 tgt-trace, without the transmit
/// probe: whether a response reached the initiator is unknown there.
fn golden_v3() -> PathBuf {
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

/// Issue 13: a trace that cannot tell whether a response reached the
/// initiator gives no verdict on TMF outcomes or orphans; latencies it has.
#[test]
fn a_trace_without_the_transmit_probe_is_inconclusive_on_tmf_counts() {
    for budget in [
        "orphans==0",
        "tmfs.deferred==1",
        "orphans.tmf_unanswered==0",
    ] {
        let (code, text) = check(&golden_v3(), &[budget]);
        assert_eq!(code, 2, "{budget}: {text}");
        assert!(
            text.contains("cannot tell whether they reached the initiator"),
            "{text}"
        );
    }
    let (code, text) = check(&golden_v3(), &["tmf.ABORT_TASK.count==1"]);
    assert_eq!(code, 0, "{text}");
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
    // The deferred LUN RESET took 59 µs; the ABORT TASK found no task.
    for budget in [
        "deferred.max<=10us",
        "tmf.LOGICAL_UNIT_RESET.max<50us",
        "orphans>0",
        "tmfs.no_task_deferred_then_finished==0",
    ] {
        let (code, text) = check(&golden(), &[budget]);
        assert_eq!(code, 1, "{budget}: {text}");
        assert!(text.contains("FAIL") && text.contains("measured"), "{text}");
    }
    // A failure wins over an inconclusive budget in the same run.
    let (code, _) = check(&golden(), &["deferred.max<=10us", "abort.p99<=5ms"]);
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

/// Issue 17: a release naming its command with another tag than its queue
/// did (what a wrong `scsi_cmd` layout looks like) makes every budget
/// inconclusive, naming the check and the fix; the untouched real trace
/// has no violation.
#[test]
fn a_layout_violation_makes_every_budget_inconclusive() {
    let trace = variant(
        "layout",
        r#""kind":"cmd_release","ts_ns":1956714104550,"pid":16522,"itn_id":17,"tag":3698272285"#,
        r#""kind":"cmd_release","ts_ns":1956714104550,"pid":16522,"itn_id":17,"tag":3698272286"#,
    );
    let (code, text) = check(&trace, &["orphans==0", "command.max<=1s"]);
    assert_eq!(code, 2, "{text}");
    assert_eq!(text.matches("cmd_identity 1").count(), 2, "{text}");
    assert!(
        text.contains("wrong struct layout; run `tgt-trace probes` and report the build"),
        "{text}"
    );
    let out = Command::new(env!("CARGO_BIN_EXE_tgt-trace"))
        .args(["report", "--json"])
        .arg(&trace)
        .output()
        .expect("tgt-trace runs");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        report["layout_violations"]["counts"]["cmd_identity"], 1,
        "{report}"
    );
    let (code, text) = check(&golden(), &["orphans==0"]);
    assert_eq!(code, 0, "{text}");
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

/// Runs check with arbitrary arguments after the trace.
fn check_args(trace: &std::path::Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tgt-trace"))
        .arg("check")
        .arg(trace)
        .args(args)
        .output()
        .expect("tgt-trace runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn temp(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("tgt-trace-check-{}-{name}", std::process::id()));
    std::fs::write(&path, text).expect("temporary file");
    path
}

/// The golden trace with every event `factor` times further from the first:
/// every latency in it scaled by `factor`.
fn slowed(name: &str, factor: u64) -> PathBuf {
    let text = std::fs::read_to_string(golden()).expect("golden trace");
    let mut t0 = None;
    let mut out = String::new();
    for line in text.lines() {
        let mut value: serde_json::Value = serde_json::from_str(line).expect("JSON");
        if value["type"] == "event" {
            let ts = value["ts_ns"].as_u64().expect("ts_ns");
            let t0 = *t0.get_or_insert(ts);
            value["ts_ns"] = (t0 + (ts - t0) * factor).into();
        }
        out.push_str(&value.to_string());
        out.push('\n');
    }
    temp(&format!("{name}.ndjson"), &out)
}

#[test]
fn a_budgets_file_is_read_and_its_budgets_checked() {
    let passing = temp(
        "pass.toml",
        "# CI budgets\nmin_samples = 20\nbudgets = [\n  \"orphans == 0\",\n  \"tmf.ABORT_TASK.count == 1\",\n  \"deferred.max <= 1s\",\n]\n",
    );
    let (code, text) = check_args(&golden(), &["--budgets", passing.to_str().expect("path")]);
    assert_eq!(code, 0, "{text}");
    assert_eq!(text.matches(" pass").count(), 3, "{text}");
    // Flags add to the file's budgets.
    let (code, text) = check_args(
        &golden(),
        &[
            "--budgets",
            passing.to_str().expect("path"),
            "--budget",
            "deferred.max<=10us",
        ],
    );
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("deferred.max<=10us") && text.contains("FAIL"),
        "{text}"
    );
}

#[test]
fn a_bad_budgets_file_exits_3_naming_file_and_cause() {
    for (name, content, expected) in [
        (
            "syntax.toml",
            "budgets = [\"orphans == 0\"\n",
            "syntax.toml",
        ),
        (
            "key.toml",
            "budget = [\"orphans == 0\"]\n",
            "unknown field `budget`",
        ),
        (
            "expr.toml",
            "budgets = [\"abort.p99 <= soon\"]\n",
            "bad budget 'abort.p99 <= soon'",
        ),
        (
            "tolerance.toml",
            "tolerance = \"a bit\"\n",
            "bad tolerance 'a bit'",
        ),
    ] {
        let file = temp(name, content);
        let (code, text) = check_args(&golden(), &["--budgets", file.to_str().expect("path")]);
        assert_eq!(code, 3, "{name}: {text}");
        assert!(text.contains(expected), "{name}: {text}");
    }
    let (code, text) = check_args(&golden(), &["--budgets", "/nonexistent/budgets.toml"]);
    assert_eq!(code, 3, "{text}");
    assert!(
        text.contains("cannot read the budgets file /nonexistent/budgets.toml"),
        "{text}"
    );
    let (code, text) = check_args(&golden(), &[]);
    assert_eq!(code, 3, "{text}");
    assert!(text.contains("nothing to check"), "{text}");
}

#[test]
fn a_regression_against_the_baseline_fails() {
    let slow = slowed("slow", 2);
    let golden = golden();
    // Every latency doubled: the command percentiles regress by ~100%.
    let (code, text) = check_args(&slow, &["--baseline", golden.to_str().expect("path")]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("command.p50 vs baseline") && l.contains("FAIL")),
        "{text}"
    );
    // Faster than the baseline, or the same, passes.
    let (code, text) = check_args(&golden, &["--baseline", slow.to_str().expect("path")]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = check_args(
        &golden,
        &[
            "--baseline",
            golden.to_str().expect("path"),
            "--tolerance",
            "0%",
        ],
    );
    assert_eq!(code, 0, "{text}");
    // Within a generous tolerance, the doubling passes.
    let (code, text) = check_args(
        &slow,
        &[
            "--baseline",
            golden.to_str().expect("path"),
            "--tolerance",
            "150%",
        ],
    );
    assert_eq!(code, 0, "{text}");
    // A named percentile neither trace can give is inconclusive.
    let (code, text) = check_args(
        &slow,
        &[
            "--baseline",
            golden.to_str().expect("path"),
            "--compare",
            "abort.p99",
        ],
    );
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("no samples for abort"), "{text}");
}

#[test]
fn junit_output_has_a_case_per_verdict() {
    let xml_path = std::env::temp_dir().join(format!("tgt-trace-check-{}.xml", std::process::id()));
    let (code, text) = check_args(
        &golden(),
        &[
            "--budget",
            "orphans==0",
            "--budget",
            "deferred.max<=10us",
            "--budget",
            "abort.p99<=5ms",
            "--junit",
            xml_path.to_str().expect("path"),
        ],
    );
    assert_eq!(code, 1, "{text}");
    let xml = std::fs::read_to_string(&xml_path).expect("JUnit file written");
    assert!(xml.starts_with("<?xml"), "{xml}");
    assert!(
        xml.contains(r#"tests="3""#) && xml.contains(r#"failures="1""#),
        "{xml}"
    );
    assert!(xml.contains(r#"<testcase name="orphans==0""#), "{xml}");
    assert!(
        xml.contains("<failure") && xml.contains("deferred.max&lt;=10us"),
        "{xml}"
    );
    assert!(
        xml.contains("<skipped") && xml.contains("no samples for abort"),
        "{xml}"
    );
}
