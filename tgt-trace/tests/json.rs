//! Issue 6: the NDJSON schema cannot drift silently. The committed JSON
//! Schemas equal the ones derived from the serde types; the output of
//! `replay` and `report --json` on a real tgtd trace validates against them
//! and reads back into the types, which deny unknown fields.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use tgt_trace::{report::ReportJson, schema, trace::Line};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate is in the workspace")
        .to_owned()
}

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf.ndjson")
}

fn committed(name: &str) -> serde_json::Value {
    let path = repo().join("schema").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validator(name: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&committed(name))
        .unwrap_or_else(|e| panic!("schema/{name} is not a valid JSON Schema: {e}"))
}

fn run(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_tgt-trace"))
        .args(args)
        .output()
        .expect("tgt-trace runs");
    assert!(
        out.status.success(),
        "tgt-trace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn assert_valid(validator: &jsonschema::Validator, value: &serde_json::Value, what: &str) {
    let errors: Vec<String> = validator
        .iter_errors(value)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    assert!(errors.is_empty(), "{what}: {errors:#?}");
}

#[test]
fn committed_schemas_are_the_derived_ones() {
    for (name, derived) in [
        ("trace-line.schema.json", schema::trace_line()),
        ("report.schema.json", schema::report()),
    ] {
        let text = schema::to_text(&derived);
        assert!(
            committed(name) == serde_json::from_str::<serde_json::Value>(&text).expect("JSON"),
            "schema/{name} differs from the serde types. If a field's name or meaning changed, \
             bump SCHEMA_VERSION; then regenerate with \
             `cargo run -p tgt-trace -- schema [--of report] > schema/{name}`"
        );
    }
}

#[test]
fn a_recorded_trace_validates_line_by_line() {
    let validator = validator("trace-line.schema.json");
    // A schema-3 recording and a schema-4 one (with the iSCSI layer's
    // events): the schema takes both.
    for trace in [golden(), golden().with_file_name("libiscsi-tmf-v4.ndjson")] {
        let text = std::fs::read_to_string(&trace).expect("golden trace");
        for (i, line) in text.lines().enumerate() {
            let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
            assert_valid(&validator, &value, &format!("{trace:?} line {}", i + 1));
        }
    }
}

#[test]
fn replay_output_validates_and_reads_back_strictly() {
    let validator = validator("trace-line.schema.json");
    let golden = golden();
    let output = run(&["replay", golden.to_str().expect("UTF-8 path")]);
    let mut kinds = std::collections::BTreeSet::new();
    for (i, line) in output.lines().enumerate() {
        let value: serde_json::Value = serde_json::from_str(line).expect("JSON line");
        assert_valid(&validator, &value, &format!("replay line {}", i + 1));
        let parsed: Line = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("replay line {} does not read back: {e}", i + 1));
        // Round trip: nothing the types do not know about was written.
        assert_eq!(
            serde_json::to_value(&parsed).expect("serializes"),
            value,
            "replay line {}",
            i + 1
        );
        kinds.insert(value["type"].as_str().unwrap_or_default().to_owned());
    }
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        ["command", "matched_summary", "tmf"]
    );
}

#[test]
fn an_unknown_field_is_refused_on_reading_back() {
    let output = run(&["replay", golden().to_str().expect("UTF-8 path")]);
    let tmf = output
        .lines()
        .find(|l| l.contains(r#""type":"tmf""#))
        .expect("a tmf line");
    let with_extra = tmf.replacen('{', r#"{"surprise":1,"#, 1);
    let err = serde_json::from_str::<Line>(&with_extra).expect_err("unknown field refused");
    assert!(err.to_string().contains("surprise"), "{err}");
    let value: serde_json::Value = serde_json::from_str(&with_extra).expect("JSON");
    assert!(
        !validator("trace-line.schema.json").is_valid(&value),
        "the schema lets an unknown field through"
    );
}

#[test]
fn report_json_validates_and_reads_back_strictly() {
    let golden = golden();
    let output = run(&["report", "--json", golden.to_str().expect("UTF-8 path")]);
    let value: serde_json::Value = serde_json::from_str(&output).expect("JSON");
    assert_valid(&validator("report.schema.json"), &value, "report --json");
    let report: ReportJson = serde_json::from_str(&output).expect("reads back");
    assert_eq!(report.schema_version, tgt_trace::SCHEMA_VERSION);
    assert_eq!(report.summary.counts.tmfs, 2);
    assert_eq!(serde_json::to_value(&report).expect("serializes"), value);
}
