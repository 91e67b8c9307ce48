//! The JSON Schemas of tgt-trace's output, derived from the serde types that
//! write it. The committed copies in `schema/` are checked against these by a
//! test, so a change to a field shows up as a schema diff (and a version bump).

use schemars::{Schema, schema_for};

use crate::{SCHEMA_VERSION, report::ReportJson, trace::Line};

/// The schema of one NDJSON line, as `record` and `replay` write them.
pub fn trace_line() -> Schema {
    let mut schema = schema_for!(Line);
    describe(
        &mut schema,
        "trace-line",
        "One line of a tgt-trace NDJSON trace: header, event, summary, and the matched \
         records (command, tmf, orphan, matched_summary), told apart by \"type\".",
    );
    schema
}

/// The schema of `tgt-trace report --json`.
pub fn report() -> Schema {
    let mut schema = schema_for!(ReportJson);
    describe(
        &mut schema,
        "report",
        "The output of `tgt-trace report --json`: the matcher's summary, the orphans, the drops.",
    );
    schema
}

fn describe(schema: &mut Schema, name: &str, description: &str) {
    schema.insert(
        "$id".to_owned(),
        format!(
            "https://github.com/tgt-trace/tgt-trace/schema/v{SCHEMA_VERSION}/{name}.schema.json"
        )
        .into(),
    );
    schema.insert("description".to_owned(), description.into());
}

/// Pretty JSON with a final newline, as committed.
pub fn to_text(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}
