//! Reading an NDJSON trace back: the header first, then lines one at a time,
//! with errors that name the file and the line, and a lenient mode that skips
//! bad lines and counts them.

use std::{
    fs::File,
    io::{self, BufRead, BufReader},
    path::Path,
};

use crate::{
    OLDEST_SCHEMA_VERSION, SCHEMA_VERSION,
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
    buf: String,
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
        let mut first = String::new();
        let n = lines
            .read_line(&mut first)
            .map_err(|source| ReadError::Io {
                source_name: source_name.clone(),
                source,
            })?;
        if n == 0 || first.trim().is_empty() {
            return Err(ReadError::Empty { source_name });
        }
        // The version is checked before the header's shape, so that a newer
        // trace says "unsupported version" rather than "unknown field".
        let value: serde_json::Value =
            serde_json::from_str(&first).map_err(|_| ReadError::NoHeader {
                source_name: source_name.clone(),
            })?;
        if value.get("type").and_then(|t| t.as_str()) != Some("header") {
            return Err(ReadError::NoHeader { source_name });
        }
        let found = value
            .get("schema_version")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
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
                return Err(ReadError::Malformed {
                    source_name,
                    line: 1,
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
            buf: String::new(),
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
            self.buf.clear();
            match self.lines.read_line(&mut self.buf) {
                Ok(0) => return None,
                Ok(_) => {}
                Err(source) => {
                    return Some(Err(ReadError::Io {
                        source_name: self.source_name.clone(),
                        source,
                    }));
                }
            }
            self.line_no += 1;
            if self.buf.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Line>(&self.buf) {
                Ok(Line::Header(_)) => {
                    if let Some(err) = self.bad_line("a second header line".to_owned()) {
                        return Some(Err(err));
                    }
                }
                Ok(line) => return Some(Ok(line)),
                Err(e) => {
                    if let Some(err) = self.bad_line(e.to_string()) {
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
            &HEADER.replace("\"schema_version\":1", "\"schema_version\":7"),
            false,
        )
        .err()
        .expect("error");
        assert!(
            matches!(
                err,
                ReadError::UnsupportedVersion {
                    found: 7,
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
