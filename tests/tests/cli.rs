//! The CLI's refusals, as a user meets them: each names the cause and the fix.

use std::process::{Command, Output};

use tgt_trace_e2e::tgtd::tgt_trace_bin;

fn run(args: &[&str]) -> Output {
    Command::new(tgt_trace_bin())
        .args(args)
        .output()
        .expect("tgt-trace runs")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn without_bpf_capabilities_it_names_the_missing_ones() {
    // setpriv (util-linux) drops every capability, as an unprivileged user has none.
    let out = Command::new("setpriv")
        .args(["--inh-caps=-all", "--bounding-set=-all", "--"])
        .arg(tgt_trace_bin())
        .args(["record", "--duration", "1s", "-o", "/dev/null"])
        .output()
        .expect("setpriv runs");
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stderr(&out);
    assert!(
        text.contains("CAP_BPF") && text.contains("CAP_PERFMON") && text.contains("root"),
        "{text}"
    );
}

/// Kernels since 2025 need CAP_SYS_ADMIN to create a uprobe: with CAP_BPF
/// and CAP_PERFMON alone the programs load but cannot attach, and the error
/// names the capability, not the attach call. (A kernel that still lets
/// them attach records, and exits 0.)
#[test]
fn without_cap_sys_admin_it_names_it_where_the_kernel_needs_it() {
    let out = Command::new("setpriv")
        .args([
            "--inh-caps=-all",
            "--bounding-set=-all,+bpf,+perfmon,+sys_ptrace",
            "--",
        ])
        .arg(tgt_trace_bin())
        .args(["record", "--duration", "1s", "-o", "/dev/null"])
        .output()
        .expect("setpriv runs");
    let text = stderr(&out);
    match out.status.code() {
        Some(0) => {}
        Some(1) => assert!(
            text.contains("missing: CAP_SYS_ADMIN") && text.contains("setcap"),
            "{text}"
        ),
        other => panic!("exit {other:?}: {text}"),
    }
}

#[test]
fn a_missing_tgtd_binary_names_the_flag() {
    let out = run(&["record", "--tgtd", "/nonexistent/tgtd", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("pass --tgtd PATH"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_binary_that_is_not_tgtd_names_the_missing_symbols() {
    let out = run(&["record", "--tgtd", "/bin/sh", "--duration", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("target_cmd_queue"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pid_that_is_not_tgtd_is_refused() {
    let me = std::process::id().to_string();
    let out = run(&[
        "record",
        "--pid",
        &me,
        "--duration",
        "1s",
        "-o",
        "/dev/null",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("process {me} is not running")),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_usage_exits_3() {
    for args in [
        &["record", "--probes", "most"][..],
        &["record", "--ring-size", "1000"],
        &["record", "--duration", "soon"],
        &["frobnicate"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {}", stderr(&out));
    }
}

/// `probes --json` gives scripts the facts the text gives people: every
/// point, found or with the reason it is not; on Debian's tgtd the iSCSI
/// layer's points are found in the machine code with their registers, and
/// the tmf set's walk is proved.
#[test]
fn probes_json_has_the_same_facts_as_the_text() {
    let json = run(&["probes", "--json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let facts: serde_json::Value = serde_json::from_slice(&json.stdout).expect("one JSON object");
    let text = run(&["probes"]);
    assert!(text.status.success(), "{}", stderr(&text));
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    let points = facts["points"].as_array().expect("points");
    assert!(points.len() >= 12, "{facts}");
    for p in points {
        let name = p["point"].as_str().expect("a name");
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} is in the text:\n{text}"));
        match p["found"].as_bool().expect("found") {
            true => {
                assert!(p.get("why_not").is_none(), "{p}");
                if let Some(offset) = p["offset"].as_u64() {
                    assert!(line.contains(&format!("{offset:#x}")), "{line}");
                }
            }
            false => {
                let why = p["why_not"].as_str().expect("a reason");
                assert!(line.contains(why), "{line} / {why}");
            }
        }
    }
    let found = |name: &str| {
        points
            .iter()
            .find(|p| p["point"] == name)
            .unwrap_or_else(|| panic!("{name}"))
            .clone()
    };
    assert_eq!(found("iscsi_tm_execute")["register"], "rdi", "{facts}");
    assert_eq!(found("tmf_walk")["found"], true, "{facts}");
    assert_eq!(facts["layout"]["by"], "machine_code", "{facts}");
    // Every field the probes read is proved from Debian's build, each in
    // the text with where.
    assert_eq!(facts["traceable"], true, "{facts}");
    let fields = facts["fields"].as_array().expect("fields");
    assert!(fields.len() >= 20, "{facts}");
    for f in fields {
        let name = f["field"].as_str().expect("a name");
        assert_eq!(f["proved"], true, "{f}");
        let how = f["how"].as_str().expect("where it was proved");
        assert!(
            text.lines().any(|l| l.contains(name) && l.contains(how)),
            "{name} proved in the text:\n{text}"
        );
    }
}
