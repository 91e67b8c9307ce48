//! A recorded trace as a source: its lines into the driver, one at a time
//! (the TUI paces them), and what the trace said of itself at its end.

use crate::{
    correlate::{Record, Summary},
    pipeline::Driver,
    plausible::LayoutViolations,
    reader::{ReadError, TraceReader},
    sink::SinkError,
    trace::{Drops, Line, MatchedSummary, SinkLoss},
};

/// What a replay found besides the matcher's records.
#[derive(Debug, Clone, Default)]
pub struct Replayed {
    pub summary: Option<Summary>,
    /// Drops the recording reported in its summary line.
    pub drops: Drops,
    /// The recording ended with its summary line (it was stopped cleanly).
    pub complete: bool,
    /// Lines skipped in lenient mode.
    pub skipped: u64,
    /// The latest event timestamp: where the matcher's clock ended.
    pub last_ts_ns: u64,
    /// What the recording's sinks could not take, from its summary line.
    pub sinks: Vec<SinkLoss>,
    /// What the runtime layout checks found: over the trace's events, as
    /// this run replayed them (so also for traces before schema 7); for a
    /// trace without events, as the recording's summary says.
    pub layout_violations: LayoutViolations,
}

/// The trace's lines, fed one by one. A trace recorded with `record
/// --matched --no-events` has no events to match: its matched lines and its
/// final `matched_summary` are taken as recorded (with the recording's
/// limits, not this run's).
#[derive(Debug, Default)]
pub struct FileSource {
    events_seen: bool,
    recorded: Option<MatchedSummary>,
    replayed: Replayed,
}

impl FileSource {
    /// One line after the header.
    pub fn line(&mut self, driver: &mut Driver<'_>, line: Line) -> Result<(), SinkError> {
        match line {
            Line::Event(event) => {
                self.events_seen = true;
                driver.event(&event)
            }
            Line::Summary(s) => {
                self.replayed.drops = s.drops;
                self.replayed.complete = true;
                self.replayed.sinks.clone_from(&s.sinks);
                self.replayed
                    .layout_violations
                    .clone_from(&s.layout_violations);
                driver.summary(&s)
            }
            // What `record --matched` concluded live is concluded again here,
            // from the events, with this run's limits; matched lines come
            // after the events that concluded them, so before any event they
            // are a trace without events.
            Line::Command(c) if !self.events_seen => driver.recorded(&Record::Command(c)),
            Line::Tmf(t) if !self.events_seen => driver.recorded(&Record::Tmf(t)),
            Line::Orphan(o) if !self.events_seen => driver.recorded(&Record::Orphan(o)),
            Line::MatchedSummary(m) => {
                // Passed on as recorded: its drops tell a screen what the
                // recording had lost by then.
                driver.recorded_summary(&m)?;
                if m.is_final && !self.events_seen {
                    self.recorded = Some(*m);
                }
                Ok(())
            }
            Line::Header(_) | Line::Command(_) | Line::Tmf(_) | Line::Orphan(_) => Ok(()),
        }
    }

    /// The end of the trace: the matcher closes what is open.
    pub fn finish(mut self, driver: &mut Driver<'_>, skipped: u64) -> Result<Replayed, SinkError> {
        self.replayed.skipped = skipped;
        match self.recorded.take() {
            Some(m) if !self.events_seen => {
                self.replayed.summary = Some(m.summary);
                self.replayed.last_ts_ns = m.at_ns;
                // A cut-short trace's last word on them is its final
                // matched summary's.
                if !self.replayed.complete {
                    self.replayed.layout_violations = m.layout_violations;
                }
            }
            _ => {
                self.replayed.summary =
                    driver.finish(self.replayed.drops, self.replayed.complete, skipped)?;
                self.replayed.last_ts_ns = driver.now_ns();
                if self.events_seen {
                    self.replayed.layout_violations = driver.layout_violations().clone();
                }
            }
        }
        Ok(self.replayed)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Runs every line of `reader` through `driver`.
pub fn replay(reader: &mut TraceReader, driver: &mut Driver<'_>) -> Result<Replayed, ReplayError> {
    driver.header(&reader.header().clone())?;
    let mut source = FileSource::default();
    for line in reader.by_ref() {
        source.line(driver, line?)?;
    }
    Ok(source.finish(driver, reader.skipped())?)
}
