//! The NDJSON trace (`record -o`, `tui -o`): every line as the trace format
//! says it ([`crate::trace`]), written by [`super::lines::LineSink`]'s own
//! thread so that a slow reader never holds up the recording.

use std::{
    io::{self, BufWriter, Write},
    time::Duration,
};

use super::{Closing, Sink, lines::LineSink};
use crate::{
    correlate::{Matcher, Record},
    event::Event,
    trace::{Header, Line, MatchedSummary, SinkLoss, Summary},
};

pub const NAME: &str = "ndjson";

pub struct NdjsonSink {
    out: BufWriter<LineSink>,
    /// Write the matcher's lines (`--matched`).
    matched: bool,
    /// Write the event lines; without them (`--no-events`) the trace is the
    /// header, the matched lines and the summaries.
    events: bool,
}

impl NdjsonSink {
    pub fn new(out: Box<dyn Write + Send>, budget: usize, matched: bool, events: bool) -> Self {
        NdjsonSink {
            out: BufWriter::with_capacity(1 << 16, LineSink::new(out, budget)),
            matched,
            events: events || !matched,
        }
    }

    fn line(&mut self, line: &Line) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, line).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }

    fn loss(dropped: u64, cause: &str) -> Option<SinkLoss> {
        (dropped > 0).then(|| SinkLoss {
            sink: NAME.to_owned(),
            cause: cause.to_owned(),
            lost: dropped,
            unit: "lines".to_owned(),
        })
    }
}

impl Sink for NdjsonSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants_matching(&self) -> bool {
        self.matched
    }

    fn header(&mut self, header: &Header) -> io::Result<()> {
        self.line(&Line::Header(header.clone()))?;
        // Readers (tail -f, tests, a pipe) see the header once attached.
        self.out.flush()
    }

    fn event(&mut self, event: &Event, _: Option<&Matcher>) -> io::Result<()> {
        if !self.events {
            return Ok(());
        }
        serde_json::to_writer(&mut self.out, &EventLine(event)).map_err(io::Error::other)?;
        self.out.write_all(b"\n")
    }

    fn record(&mut self, record: &Record) -> io::Result<()> {
        if !self.matched {
            return Ok(());
        }
        self.line(&Line::from(record.clone()))
    }

    fn batch_end(&mut self, _: Option<&Matcher>) -> io::Result<()> {
        // A trace is read while it is written (tail -f, tests); one hand-over
        // per drain keeps it current. The writer thread's error, if any,
        // ends the recording.
        self.out.flush()?;
        match self.out.get_ref().take_error() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn matched_summary(&mut self, summary: &MatchedSummary) -> io::Result<()> {
        if !self.matched {
            return Ok(());
        }
        self.line(&Line::MatchedSummary(Box::new(summary.clone())))?;
        self.out.flush()
    }

    fn summary(&mut self, summary: &Summary) -> io::Result<()> {
        self.line(&Line::Summary(summary.clone()))
    }

    fn losses(&self) -> Vec<SinkLoss> {
        Self::loss(self.out.get_ref().dropped(), "slow")
            .into_iter()
            .collect()
    }

    fn close(self: Box<Self>, within: Duration) -> Closing {
        // Blocks for at most `within`: the bounded final flush.
        let result = match self.out.into_inner() {
            Ok(sink) => {
                let (undelivered, error) = sink.close(within);
                let losses = [
                    Self::loss(undelivered.dropped, "slow"),
                    Self::loss(undelivered.unwritten, "unsent"),
                ]
                .into_iter()
                .flatten()
                .collect();
                (losses, error)
            }
            Err(e) => (Vec::new(), Some(e.into_error())),
        };
        Box::pin(async move { result })
    }
}

/// An event line serialized from a borrowed event, as [`Line::Event`] is:
/// the hot path need not clone each event.
struct EventLine<'a>(&'a Event);

impl serde::Serialize for EventLine<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(serde::Serialize)]
        #[serde(tag = "type", rename_all = "snake_case")]
        enum Borrowed<'a> {
            Event(&'a Event),
        }
        Borrowed::Event(self.0).serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_borrowed_event_line_is_the_trace_format_s_event_line() {
        let event = Event::ProcessExit { ts_ns: 42, pid: 7 };
        assert_eq!(
            serde_json::to_string(&EventLine(&event)).expect("serializes"),
            serde_json::to_string(&Line::Event(event)).expect("serializes")
        );
    }
}
