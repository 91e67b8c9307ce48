//! Running `tgt-trace record` against a scratch tgtd and reading the result.
#![allow(dead_code, reason = "each test binary uses part of it")]

use std::{
    path::Path,
    process::{Command, ExitStatus, Stdio},
};

use tgt_trace::{
    event::Event,
    trace::{Header, Line, Summary},
};

use tgt_trace_e2e::tgtd::{Tgtd, tgt_trace_bin};

/// A parsed NDJSON trace.
#[derive(Debug)]
pub struct Trace {
    pub header: Header,
    pub events: Vec<Event>,
    pub summary: Summary,
}

/// Reads a trace, panicking with the line that is wrong.
pub fn read_trace(path: &Path) -> Trace {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut header = None;
    let mut summary = None;
    let mut events = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let parsed: Line = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("{}:{}: {e}: {line}", path.display(), n + 1));
        match parsed {
            Line::Header(h) => {
                assert!(
                    header.is_none() && n == 0,
                    "header must be line 1 and only once"
                );
                header = Some(h);
            }
            Line::Event(e) => {
                assert!(
                    summary.is_none(),
                    "event after the summary at line {}",
                    n + 1
                );
                events.push(e);
            }
            Line::Summary(s) => summary = Some(s),
        }
    }
    Trace {
        header: header.expect("trace has a header"),
        events,
        summary: summary.expect("trace ends with a summary"),
    }
}

/// Runs `tgt-trace record --pid <tgtd> -o <out> [extra] -- <command>`; the
/// command starts only once the probes are attached.
pub fn record(tgtd: &Tgtd, out: &Path, extra: &[&str], command: &[&str]) -> ExitStatus {
    Command::new(tgt_trace_bin())
        .args(["record", "--pid", &tgtd.pid().to_string(), "-o"])
        .arg(out)
        .args(extra)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", tgt_trace_bin().display()))
}
