//! Issue 6: `record --matched` writes the matcher's records live, and a
//! replay of the same file concludes exactly the same; every line of the
//! recorded output validates against the committed JSON Schema.

use std::process::Command;

use tgt_trace::trace::Line;
use tgt_trace_e2e::tgtd::{Tgtd, TgtdOptions, tgt_trace_bin};

mod support;
use support::Recording;

#[test]
fn live_matched_records_equal_replay_lean() {
    live_matched_records_equal_replay("lean");
}

#[test]
fn live_matched_records_equal_replay_full() {
    live_matched_records_equal_replay("full");
}

fn live_matched_records_equal_replay(probe_set: &str) {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_lun(1, 64 << 20).expect("LUN 1");
    let out = tgtd.dir.join("matched.ndjson");
    let url = tgtd.url(1);
    let mut recording = Recording::start(
        &tgtd,
        &out,
        &[
            "--probes",
            probe_set,
            "--matched",
            "--summary-every",
            "10ms",
        ],
    );
    for test in [
        "iSCSI.iSCSITMF.AbortTaskSimpleAsync",
        "iSCSI.iSCSITMF.LUNResetSimpleAsync",
    ] {
        let status = Command::new("iscsi-test-cu")
            .args(["--dataloss", "-t", test, &url])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("iscsi-test-cu runs");
        eprintln!("{test}: {status}");
    }
    // Both TMFs concluded live (deferred ones only after their blocking
    // command's release), and a periodic summary written since counts them.
    recording.wait_for("both TMFs matched, then a snapshot", |text| {
        let lines: Vec<&str> = text.lines().collect();
        let tmfs: Vec<usize> = (0..lines.len())
            .filter(|&i| lines[i].contains(r#""type":"tmf""#))
            .collect();
        tmfs.len() == 2
            && lines[tmfs[1]..]
                .iter()
                .any(|l| l.contains(r#""type":"matched_summary","final":false"#))
    });
    let trace = recording.stop();
    assert_eq!(trace.summary.drops.total(), 0, "{:?}", trace.summary.drops);

    let snapshots: Vec<&Line> = trace
        .matched
        .iter()
        .filter(|l| matches!(l, Line::MatchedSummary(s) if !s.is_final))
        .collect();
    let Some(Line::MatchedSummary(last_snapshot)) = snapshots.last() else {
        panic!("no periodic matched_summary");
    };
    assert_eq!(
        last_snapshot.summary.counts.tmfs, 2,
        "the snapshot counts both TMFs"
    );
    let live: Vec<serde_json::Value> = trace
        .matched
        .iter()
        .filter(|l| !matches!(l, Line::MatchedSummary(s) if !s.is_final))
        .map(|l| serde_json::to_value(l).expect("serializes"))
        .collect();
    assert_eq!(
        live.last().map(|v| v["type"].clone()),
        Some("matched_summary".into()),
        "the final matched_summary ends the matched lines"
    );

    let replayed = Command::new(tgt_trace_bin())
        .arg("replay")
        .arg(&out)
        .output()
        .expect("replay runs");
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let replayed: Vec<serde_json::Value> = String::from_utf8_lossy(&replayed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("replay line is JSON"))
        .collect();
    assert_eq!(
        live.len(),
        replayed.len(),
        "live and replayed record counts differ"
    );
    for (i, (l, r)) in live.iter().zip(&replayed).enumerate() {
        assert_eq!(l, r, "record {i} differs between live and replay");
    }
    let tmfs = live.iter().filter(|v| v["type"] == "tmf").count();
    assert_eq!(tmfs, 2, "TMF records");

    let schema_path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../schema/trace-line.schema.json");
    let schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&schema_path).expect("the committed schema"))
            .expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let text = std::fs::read_to_string(&out).expect("trace");
    for (n, line) in text.lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).expect("JSON");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "line {}: {errors:?}", n + 1);
    }
}
