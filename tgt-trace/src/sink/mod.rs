//! Where results go. The [`crate::pipeline::Driver`] hands every sink the
//! same stream, in order: the trace's header, each event with the records
//! the matcher concluded from it, the end of each batch (one drain of the
//! ring buffer, or one paced step of a replay) with the matcher as it
//! stands, the periodic and final matched summaries, and the summary line.
//!
//! A sink must never hold up the loop that drains the probes' ring buffer or
//! that watches the stop conditions: what it cannot take is counted, by
//! cause, and reported under its name ([`crate::trace::SinkLoss`]).
//!
//! Adding a sink is a file here implementing [`Sink`], and one line where
//! the sinks of a run are chosen (`record::sinks`).

pub mod lines;
pub mod metrics;
pub mod ndjson;
pub mod records;

use std::{future::Future, io, pin::Pin, time::Duration};

use crate::{
    correlate::{Matcher, Record},
    event::Event,
    plausible::LayoutViolations,
    trace::{Drops, Header, MatchedSummary, SinkLoss, Summary},
};

/// A sink's failure: fatal for the run (a trace file that cannot be
/// written). A slow sink is not a failure; it counts what it dropped.
#[derive(Debug, thiserror::Error)]
#[error("{sink}: {source}")]
pub struct SinkError {
    pub sink: &'static str,
    #[source]
    pub source: io::Error,
}

/// What a sink's close hands back: its losses, and a failure if it had one.
pub type Closing = Pin<Box<dyn Future<Output = (Vec<SinkLoss>, Option<io::Error>)>>>;

/// One consumer of the pipeline. Every method has a default that ignores
/// its input, so a sink implements only what it uses.
pub trait Sink {
    /// Names the sink in losses and errors: `ndjson`, `screen`, `metrics`.
    fn name(&self) -> &'static str;

    /// Whether the sink needs the matcher's records and state; a run whose
    /// sinks need none does not run the matcher (`record` without
    /// `--matched`).
    fn wants_matching(&self) -> bool {
        false
    }

    fn header(&mut self, _header: &Header) -> io::Result<()> {
        Ok(())
    }

    /// An event, after the matcher has seen it (the matcher is `None` when
    /// no sink of the run wants matching).
    fn event(&mut self, _event: &Event, _matcher: Option<&Matcher>) -> io::Result<()> {
        Ok(())
    }

    /// A record the matcher concluded, right after the event that
    /// concluded it; or, for a trace recorded without events, as recorded.
    fn record(&mut self, _record: &Record) -> io::Result<()> {
        Ok(())
    }

    /// The end of a batch of events: the matcher as it stands now.
    fn batch_end(&mut self, _matcher: Option<&Matcher>) -> io::Result<()> {
        Ok(())
    }

    /// A `matched_summary`: a periodic snapshot, or the final one.
    fn matched_summary(&mut self, _summary: &MatchedSummary) -> io::Result<()> {
        Ok(())
    }

    /// The losses so far, now and then while live (a few times a second):
    /// every event lost before a sink saw it, and what the other sinks
    /// could not take. Cheaper than a `matched_summary`, and sent without
    /// the matcher.
    fn drops(&mut self, _drops: &Drops, _sinks: &[SinkLoss]) -> io::Result<()> {
        Ok(())
    }

    /// The runtime layout checks found new violations (at the end of the
    /// batch that found them): the counts so far.
    fn layout_violations(&mut self, _found: &LayoutViolations) -> io::Result<()> {
        Ok(())
    }

    /// The matcher has closed what was open: the trace's events are over.
    fn finished(&mut self, _matcher: Option<&Matcher>) -> io::Result<()> {
        Ok(())
    }

    /// The trace's summary line.
    fn summary(&mut self, _summary: &Summary) -> io::Result<()> {
        Ok(())
    }

    /// What the sink could not take so far, if anything.
    fn losses(&self) -> Vec<SinkLoss> {
        Vec::new()
    }

    /// Hands on what is left within `within` (a slow reader is not waited
    /// for longer), and says what was lost in all.
    fn close(self: Box<Self>, _within: Duration) -> Closing {
        let losses = self.losses();
        Box::pin(async move { (losses, None) })
    }
}
