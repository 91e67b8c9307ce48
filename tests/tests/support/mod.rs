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

pub mod crosscheck;

/// A parsed NDJSON trace.
#[derive(Debug)]
pub struct Trace {
    pub header: Header,
    pub events: Vec<Event>,
    /// With `record --matched`: the matched lines, in the order written.
    pub matched: Vec<Line>,
    pub summary: Summary,
}

/// Issue 17: the runtime layout checks never fire on real traffic. Both
/// as the recording wrote them in its summary line and as the checker finds
/// them over the trace's events again.
pub fn assert_no_layout_violations(trace: &Trace) {
    let found = &trace.summary.layout_violations;
    assert!(
        found.counts.is_empty(),
        "layout violations in the summary line: {found:?}"
    );
    let mut checker = tgt_trace::plausible::Checker::default();
    for event in &trace.events {
        checker.push(event);
    }
    assert_eq!(
        checker.violations().total(),
        0,
        "layout violations over the events: {:?}",
        checker.violations()
    );
}

/// What a trace can say of a response tgtd wrote to the connection:
/// `sent` where the build's transmit point (`iscsi_task_tx_done`'s free,
/// found in the machine code) is attached, else `unknown`: the trace never
/// claims a delivery it could not see.
pub fn written(header: &Header) -> tgt_trace::correlate::Delivery {
    use tgt_trace::correlate::Delivery;
    if tgt_trace::points::attached(&header.probes, tgt_trace::points::Point::TmfSent) {
        Delivery::Sent
    } else {
        Delivery::Unknown
    }
}

/// Reads a trace, panicking with the line that is wrong.
pub fn read_trace(path: &Path) -> Trace {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut header = None;
    let mut summary = None;
    let mut events = Vec::new();
    let mut matched = Vec::new();
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
            line => {
                assert!(
                    summary.is_none(),
                    "matched line after the summary at line {}",
                    n + 1
                );
                matched.push(line);
            }
        }
    }
    Trace {
        header: header.expect("trace has a header"),
        events,
        matched,
        summary: summary.expect("trace ends with a summary"),
    }
}

/// Runs `tgt-trace record --pid <tgtd> -o <out> [extra] -- <command>`; the
/// command starts only once the probes are attached.
pub fn record(tgtd: &Tgtd, out: &Path, extra: &[&str], command: &[&str]) -> ExitStatus {
    Command::new(tgt_trace_bin())
        .args(["record", "--pid", &tgtd.pid().to_string(), "--tgtd"])
        .arg(tgtd.binary())
        .arg("-o")
        .arg(out)
        .args(extra)
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("running {}: {e}", tgt_trace_bin().display()))
}

/// A `tgt-trace record` running in the background, stopped with SIGINT.
pub struct Recording {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Recording {
    /// Starts recording `tgtd` and returns once the probes are attached (the
    /// header line is written after attaching).
    pub fn start(tgtd: &Tgtd, out: &Path, extra: &[&str]) -> Recording {
        let child = Command::new(tgt_trace_bin())
            .args(["record", "--pid", &tgtd.pid().to_string(), "--tgtd"])
            .arg(tgtd.binary())
            .arg("-o")
            .arg(out)
            .args(extra)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", tgt_trace_bin().display()));
        let mut recording = Recording {
            child,
            out: out.to_owned(),
        };
        recording.wait_for("the trace header", |text| {
            text.lines()
                .next()
                .is_some_and(|l| l.contains("\"header\""))
        });
        recording
    }

    /// Waits, bounded, until the trace written so far satisfies `done`.
    pub fn wait_for(&mut self, what: &str, done: impl Fn(&str) -> bool) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&self.out).unwrap_or_default();
            if done(&text) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("tgt-trace exited ({status}) while waiting for {what}");
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} in the trace within 20 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Waits until the events recorded so far satisfy `done` (e.g. every TMF
    /// request has its response).
    pub fn wait_for_events(&mut self, what: &str, done: impl Fn(&[Event]) -> bool) {
        self.wait_for(what, |text| {
            let events: Vec<Event> = text
                .lines()
                .filter_map(|l| match serde_json::from_str::<Line>(l) {
                    Ok(Line::Event(e)) => Some(e),
                    _ => None,
                })
                .collect();
            done(&events)
        });
    }

    /// The recording tgt-trace's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The trace written so far.
    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Stops with SIGINT, as a user's Ctrl-C, and reads the trace.
    pub fn stop(self) -> Trace {
        self.stop_with("-INT")
    }

    /// Stops with a signal (`kill`'s spelling: -INT, -TERM) and reads the
    /// trace, which must end with its summary line.
    pub fn stop_with(mut self, signal: &str) -> Trace {
        let pid = i32::try_from(self.child.id()).expect("pid fits");
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "signalling tgt-trace");
        let status = self.child.wait().expect("tgt-trace exits");
        assert!(status.success(), "tgt-trace exited {status} on SIGINT");
        read_trace(&self.out)
    }
}

impl Drop for Recording {
    /// A test that failed half-way must not leave tgt-trace running.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
