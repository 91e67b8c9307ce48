//! Reading an NDJSON trace back: the header first, then lines one at a time,
//! with errors that name the file and the line, and a lenient mode that skips
//! bad lines and counts them.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read as _},
    path::Path,
};

use crate::{
    OLDEST_SCHEMA_VERSION, SCHEMA_VERSION,
    event::Event,
    trace::{Header, Line},
};

/// Why a trace cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read {source_name}: {source}")]
    Io {
        source_name: String,
        #[source]
        source: io::Error,
    },
    /// The file has no lines at all.
    #[error(
        "{source_name} is empty: it is not a tgt-trace trace (record one with `tgt-trace record -o FILE`)"
    )]
    Empty { source_name: String },
    /// The first line is not a header.
    #[error(
        "{source_name}:1: the first line is not a tgt-trace header; is this a trace written by `tgt-trace record`?"
    )]
    NoHeader { source_name: String },
    #[error(
        "{source_name}: schema version {found} is not supported (this tgt-trace reads versions \
         {oldest} to {supported}); read it with the tgt-trace version that wrote it",
        oldest = OLDEST_SCHEMA_VERSION
    )]
    UnsupportedVersion {
        source_name: String,
        found: u64,
        supported: u32,
    },
    /// The first line is a header, but not one this version can use.
    #[error(
        "{source_name}:1: the header is damaged: {message}; record the trace again with `tgt-trace record`"
    )]
    BadHeader {
        source_name: String,
        message: String,
    },
    /// A line that is not valid JSON or not a known line type.
    #[error("{source_name}:{line}: {message}; pass --lenient to skip bad lines (they are counted)")]
    Malformed {
        source_name: String,
        line: u64,
        message: String,
    },
}

/// A trace being read.
pub struct TraceReader {
    lines: Box<dyn BufRead>,
    source_name: String,
    line_no: u64,
    lenient: bool,
    skipped: u64,
    header: Header,
    buf: Vec<u8>,
    /// An event line's object without its `"type"`, for [`parse_line`].
    scratch: String,
}

/// How `record` and `replay` begin an event line.
const EVENT_PREFIX: &str = r#"{"type":"event","#;

/// Parses one line. An event line as tgt-trace writes it is parsed as an
/// [`Event`] straight away: serde buffers an internally tagged enum before
/// it can pick the variant, and `Line` inside `Event` would buffer twice
/// (that was 41% of replay's time). Anything else, or an event line that
/// does not parse that way, takes the general path, which also words the
/// error.
fn parse_line(text: &str, scratch: &mut String) -> Result<Line, String> {
    if let Some(rest) = text.strip_prefix(EVENT_PREFIX) {
        if let Some(event) = command_event(rest, scratch) {
            return Ok(Line::Event(event));
        }
        scratch.clear();
        scratch.push('{');
        scratch.push_str(rest);
        if let Ok(event) = serde_json::from_str::<Event>(scratch) {
            return Ok(Line::Event(event));
        }
    }
    serde_json::from_str::<Line>(text).map_err(|e| not_a_trace_line(&e))
}

/// The longest line a trace may have (the largest, a `matched_summary` with
/// its histograms, is far shorter). A longer line is malformed, and no more
/// than this much of it is held in memory.
pub const MAX_LINE_BYTES: usize = 64 << 20;

/// What [`read_line_bounded`] read.
enum RawLine {
    Eof,
    /// A line, with its newline if it had one.
    Line,
    /// A line longer than [`MAX_LINE_BYTES`]: skipped to its end, not kept.
    TooLong,
}

/// Reads one line into `buf`, keeping at most [`MAX_LINE_BYTES`] of it.
fn read_line_bounded(input: &mut dyn BufRead, buf: &mut Vec<u8>) -> io::Result<RawLine> {
    buf.clear();
    let n = (&mut *input)
        .take(MAX_LINE_BYTES as u64)
        .read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(RawLine::Eof);
    }
    if n < MAX_LINE_BYTES || buf.last() == Some(&b'\n') {
        return Ok(RawLine::Line);
    }
    buf.clear();
    loop {
        let available = match input.fill_buf() {
            Ok(available) => available,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(RawLine::TooLong);
        }
        match available.iter().position(|&b| b == b'\n') {
            Some(end) => {
                input.consume(end + 1);
                return Ok(RawLine::TooLong);
            }
            None => {
                let len = available.len();
                input.consume(len);
            }
        }
    }
}

/// Why a line is not a trace line, from serde's error without its position
/// (which counts the lines of the one line serde saw).
fn not_a_trace_line(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let position = format!(" at line {} column {}", e.line(), e.column());
    let what = full.strip_suffix(&position).unwrap_or(&full);
    let column = if e.line() == 1 {
        format!(" at column {}", e.column())
    } else {
        String::new()
    };
    match e.classify() {
        serde_json::error::Category::Data => format!("not a trace line: {what}{column}"),
        _ => format!("not a trace line (expected one JSON object): {what}{column}"),
    }
}

impl TraceReader {
    /// Opens a file, or standard input for `-`, and reads its header.
    pub fn open(path: &Path, lenient: bool) -> Result<TraceReader, ReadError> {
        let source_name = if path == Path::new("-") {
            "standard input".to_owned()
        } else {
            path.display().to_string()
        };
        let input: Box<dyn BufRead> = if path == Path::new("-") {
            Box::new(BufReader::with_capacity(1 << 16, io::stdin()))
        } else {
            let file = File::open(path).map_err(|source| ReadError::Io {
                source_name: source_name.clone(),
                source,
            })?;
            Box::new(BufReader::with_capacity(1 << 16, file))
        };
        TraceReader::new(input, source_name, lenient)
    }

    /// Reads from any buffered source; `source_name` names it in errors.
    pub fn new(
        mut lines: Box<dyn BufRead>,
        source_name: String,
        lenient: bool,
    ) -> Result<TraceReader, ReadError> {
        let mut first = Vec::new();
        let raw = read_line_bounded(&mut *lines, &mut first).map_err(|source| ReadError::Io {
            source_name: source_name.clone(),
            source,
        })?;
        let first = match raw {
            RawLine::Eof => return Err(ReadError::Empty { source_name }),
            RawLine::TooLong => return Err(ReadError::NoHeader { source_name }),
            RawLine::Line => std::str::from_utf8(&first).map_err(|_| ReadError::NoHeader {
                source_name: source_name.clone(),
            })?,
        };
        // The version is checked before the header's shape, so that a newer
        // trace says "unsupported version" rather than "unknown field".
        let value: serde_json::Value =
            serde_json::from_str(first).map_err(|_| ReadError::NoHeader {
                source_name: source_name.clone(),
            })?;
        if value.get("type").and_then(|t| t.as_str()) != Some("header") {
            return Err(ReadError::NoHeader { source_name });
        }
        let Some(found) = value.get("schema_version").and_then(|v| v.as_u64()) else {
            return Err(ReadError::BadHeader {
                source_name,
                message: "its schema_version is missing or not a version number".to_owned(),
            });
        };
        if !(u64::from(OLDEST_SCHEMA_VERSION)..=u64::from(SCHEMA_VERSION)).contains(&found) {
            return Err(ReadError::UnsupportedVersion {
                source_name,
                found,
                supported: SCHEMA_VERSION,
            });
        }
        let header = match serde_json::from_value::<Line>(value) {
            Ok(Line::Header(header)) => header,
            Ok(_) => return Err(ReadError::NoHeader { source_name }),
            Err(e) => {
                return Err(ReadError::BadHeader {
                    source_name,
                    message: e.to_string(),
                });
            }
        };
        Ok(TraceReader {
            lines,
            source_name,
            line_no: 1,
            lenient,
            skipped: 0,
            header,
            buf: Vec::new(),
            scratch: String::new(),
        })
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// Lines skipped in lenient mode.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    pub fn source_name(&self) -> &str {
        &self.source_name
    }

    /// The next line after the header; `None` at the end. A truncated last
    /// line (no newline, not valid JSON) is malformed like any other.
    pub fn next_line(&mut self) -> Option<Result<Line, ReadError>> {
        loop {
            let raw = match read_line_bounded(&mut *self.lines, &mut self.buf) {
                Ok(RawLine::Eof) => return None,
                Ok(raw) => raw,
                Err(source) => {
                    return Some(Err(ReadError::Io {
                        source_name: self.source_name.clone(),
                        source,
                    }));
                }
            };
            self.line_no += 1;
            let parsed = match raw {
                RawLine::TooLong => Err(format!(
                    "not a trace line: longer than {} MiB",
                    MAX_LINE_BYTES >> 20
                )),
                _ => match std::str::from_utf8(&self.buf) {
                    Err(e) => Err(format!(
                        "not a trace line: not UTF-8 text (byte {})",
                        e.valid_up_to() + 1
                    )),
                    Ok(text) if text.trim().is_empty() => continue,
                    Ok(text) => parse_line(text, &mut self.scratch),
                },
            };
            match parsed {
                Ok(Line::Header(_)) => {
                    if let Some(err) = self.bad_line("a second header line".to_owned()) {
                        return Some(Err(err));
                    }
                }
                Ok(line) => return Some(Ok(line)),
                Err(message) => {
                    if let Some(err) = self.bad_line(message) {
                        return Some(Err(err));
                    }
                }
            }
        }
    }

    /// In lenient mode counts the line and carries on (None); otherwise the error.
    fn bad_line(&mut self, message: String) -> Option<ReadError> {
        if self.lenient {
            self.skipped += 1;
            return None;
        }
        Some(ReadError::Malformed {
            source_name: self.source_name.clone(),
            line: self.line_no,
            message,
        })
    }
}

impl Iterator for TraceReader {
    type Item = Result<Line, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_line()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = r#"{"type":"header","schema_version":1,"tgt_trace_version":"0.1.0","tgtd_path":"/usr/sbin/tgtd","tgtd_build_id":"x","tgtd_layout":{"by":"code_fingerprint"},"probe_set":"lean","probes":[],"pids":[1],"start_unix_ns":0,"start_monotonic_ns":0,"ring_bytes":4096}"#;
    const EVENT: &str = r#"{"type":"event","kind":"process_exit","ts_ns":5,"pid":1}"#;

    fn reader(text: &str, lenient: bool) -> Result<TraceReader, ReadError> {
        TraceReader::new(
            Box::new(io::Cursor::new(text.to_owned().into_bytes())),
            "t.ndjson".to_owned(),
            lenient,
        )
    }

    #[test]
    fn reads_header_then_lines() {
        let mut r = reader(&format!("{HEADER}\n{EVENT}\n\n{EVENT}\n"), false).expect("opens");
        assert_eq!(r.header().pids, vec![1]);
        assert_eq!(r.by_ref().filter(|l| l.is_ok()).count(), 2);
    }

    #[test]
    fn empty_file_says_so() {
        let err = reader("", false).err().expect("error");
        assert!(matches!(err, ReadError::Empty { .. }), "{err}");
        assert!(err.to_string().contains("t.ndjson is empty"));
    }

    #[test]
    fn a_file_without_header_is_refused() {
        let err = reader(&format!("{EVENT}\n"), false).err().expect("error");
        assert!(err.to_string().starts_with("t.ndjson:1:"), "{err}");
    }

    #[test]
    fn an_unknown_schema_version_is_named() {
        let err = reader(
            &HEADER.replace("\"schema_version\":1", "\"schema_version\":8"),
            false,
        )
        .err()
        .expect("error");
        assert!(
            matches!(
                err,
                ReadError::UnsupportedVersion {
                    found: 8,
                    supported: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_malformed_line_names_file_and_line() {
        let mut r = reader(
            &format!("{HEADER}\n{EVENT}\n{{\"type\":\"event\",\"kind\":\"cmd_qu\n"),
            false,
        )
        .expect("opens");
        assert!(r.next_line().expect("line").is_ok());
        let err = r.next_line().expect("line").expect_err("malformed");
        assert!(
            err.to_string().starts_with("t.ndjson:3:") && err.to_string().contains("--lenient"),
            "{err}"
        );
    }

    #[test]
    fn lenient_mode_skips_and_counts() {
        let text =
            format!("{HEADER}\n{EVENT}\nnot json\n{{\"type\":\"martian\"}}\n{HEADER}\n{EVENT}");
        let mut r = reader(&text, true).expect("opens");
        let good = r.by_ref().filter(|l| l.is_ok()).count();
        assert_eq!((good, r.skipped()), (2, 3));
    }
}

/// `rest` with `kind` cut from its front, as a JSON object in `scratch`.
fn fields<'s>(rest: &str, scratch: &'s mut String, kind: &str) -> Option<&'s str> {
    let after = rest.strip_prefix(kind)?;
    scratch.clear();
    scratch.push('{');
    scratch.push_str(after);
    Some(scratch.as_str())
}

/// The per-command kinds, which are most of a trace, parsed without the
/// `kind` tag's buffering: the fields of each as a plain struct (its field
/// names and defaults are those of the [`Event`] variant; the test below
/// holds them equal).
fn command_event(rest: &str, scratch: &mut String) -> Option<Event> {
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Queue {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        tag: u64,
        lun: u64,
        #[serde(default)]
        lun_raw: Option<u64>,
        opcode: u8,
        attribute: u8,
        cmd: u64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Perform {
        ts_ns: u64,
        pid: u32,
        itn_id: u64,
        tag: u64,
        cmd: u64,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Result_ {
        ts_ns: u64,
        pid: u32,
        itn_id: u64,
        tag: u64,
        cmd: u64,
        result: i32,
        #[serde(default)]
        tmf_mid: Option<u64>,
    }
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Release {
        ts_ns: u64,
        pid: u32,
        itn_id: u64,
        tag: u64,
        cmd: u64,
        result: i32,
        #[serde(default)]
        tmf: Option<crate::event::Waiter>,
    }

    if let Some(json) = fields(rest, scratch, r#""kind":"cmd_queue","#) {
        let q: Queue = serde_json::from_str(json).ok()?;
        return Some(Event::CmdQueue {
            ts_ns: q.ts_ns,
            pid: q.pid,
            tid: q.tid,
            itn_id: q.itn_id,
            tag: q.tag,
            lun: q.lun,
            lun_raw: q.lun_raw,
            opcode: q.opcode,
            attribute: q.attribute,
            cmd: q.cmd,
        });
    }
    if let Some(json) = fields(rest, scratch, r#""kind":"cmd_release","#) {
        let r: Release = serde_json::from_str(json).ok()?;
        return Some(Event::CmdRelease {
            ts_ns: r.ts_ns,
            pid: r.pid,
            itn_id: r.itn_id,
            tag: r.tag,
            cmd: r.cmd,
            result: r.result,
            tmf: r.tmf,
        });
    }
    if let Some(json) = fields(rest, scratch, r#""kind":"cmd_perform","#) {
        let p: Perform = serde_json::from_str(json).ok()?;
        return Some(Event::CmdPerform {
            ts_ns: p.ts_ns,
            pid: p.pid,
            itn_id: p.itn_id,
            tag: p.tag,
            cmd: p.cmd,
        });
    }
    if let Some(json) = fields(rest, scratch, r#""kind":"cmd_result","#) {
        let r: Result_ = serde_json::from_str(json).ok()?;
        return Some(Event::CmdResult {
            ts_ns: r.ts_ns,
            pid: r.pid,
            itn_id: r.itn_id,
            tag: r.tag,
            cmd: r.cmd,
            result: r.result,
            tmf_mid: r.tmf_mid,
        });
    }
    None
}

#[cfg(test)]
mod fast_path_tests {
    use super::*;

    /// The event fast path gives exactly what the general path gives, on
    /// every line of a real tgtd trace and on lines it must not take.
    #[test]
    fn the_event_fast_path_equals_the_general_parse() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/data/libiscsi-tmf.ndjson"
        );
        let text = std::fs::read_to_string(path).expect("the recorded trace");
        let mut scratch = String::new();
        let mut events = 0;
        for line in text.lines() {
            let general = serde_json::from_str::<Line>(line).map_err(|e| not_a_trace_line(&e));
            events += usize::from(line.starts_with(EVENT_PREFIX));
            assert_eq!(parse_line(line, &mut scratch), general, "{line}");
        }
        assert!(events > 10, "the trace has events: {events}");
        // Every kind the synthetic tgtd makes, with and without waiters.
        let (synthetic, _, _) =
            crate::synth::generate(crate::synth::SynthConfig::default(), 20_000);
        for event in synthetic {
            let line = serde_json::to_string(&Line::Event(event)).expect("serializes");
            let general = serde_json::from_str::<Line>(&line).map_err(|e| not_a_trace_line(&e));
            assert_eq!(parse_line(&line, &mut scratch), general, "{line}");
        }
        for odd in [
            r#"{"type":"event","kind":"cmd_queue","ts_ns":1,"pid":2}"#,
            r#"{"type":"event","kind":"cmd_release","ts_ns":1,"pid":2,"itn_id":1,"tag":1,"cmd":1,"result":0,"extra":1}"#,
            r#"{"type":"event","kind":"process_exit","ts_ns":1,"pid":2,"type":"event"}"#,
            r#"{"type":"event","kind":"process_exit","ts_ns":1}"#,
            r#"{"type":"event","#,
            r#"{"type": "event","kind":"process_exit","ts_ns":1,"pid":2}"#,
        ] {
            let general = serde_json::from_str::<Line>(odd).map_err(|e| not_a_trace_line(&e));
            assert_eq!(parse_line(odd, &mut scratch), general, "{odd}");
        }
    }
}
