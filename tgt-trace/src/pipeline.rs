//! The one driver: a source (the live probes, [`crate::source::probes`], or
//! a recorded trace, [`crate::source::file`]) pushes lines into a
//! [`Driver`]; the driver runs the matcher over the events and hands every
//! sink ([`crate::sink`]) the same stream in the same order. `record`,
//! `replay`, `report`, `check` and the TUI, live or replayed, all conclude
//! through this one loop, so they conclude the same.
//!
//! ```text
//!   source::probes ─┐                     ┌─ sink::ndjson   (record -o, tui -o)
//!                   ├─► Driver (matcher) ─┼─ tui::feed      (the screen)
//!   source::file ───┘                     ├─ sink::records  (replay, report, check)
//!                                         └─ …
//! ```

use std::time::Duration;

use crate::{
    correlate::{self, Config, Coverage, Matcher, Record},
    event::Event,
    plausible::{Checker, LayoutViolations},
    sink::{Sink, SinkError},
    trace::{Drops, Header, MatchedSummary, SinkLoss, Summary},
};

/// Runs the matcher (when a sink wants it) and fans out to the sinks.
pub struct Driver<'a> {
    matcher: Option<Matcher>,
    sinks: Vec<Box<dyn Sink + 'a>>,
    /// The matcher's output for the current event; kept for its capacity.
    records: Vec<Record>,
    /// The stream clock: the latest event timestamp.
    now_ns: u64,
    /// The runtime layout checks, over every event ([`crate::plausible`]).
    plausible: Checker,
    /// The violation count the sinks were last told.
    violations_told: u64,
}

impl<'a> Driver<'a> {
    /// `config`'s coverage is replaced by what `header`'s probes observe.
    /// The matcher runs only when a sink wants matching.
    pub fn new(header: &Header, config: Config, sinks: Vec<Box<dyn Sink + 'a>>) -> Driver<'a> {
        let matcher = sinks.iter().any(|s| s.wants_matching()).then(|| {
            Matcher::new(Config {
                coverage: Coverage::from_header(header),
                ..config
            })
        });
        Driver {
            matcher,
            sinks,
            records: Vec::new(),
            now_ns: 0,
            plausible: match header.target {
                crate::points::Target::Tgtd => Checker::default(),
                crate::points::Target::Lio => Checker::disabled(),
            },
            violations_told: 0,
        }
    }

    /// The stream clock: the latest event's timestamp.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    pub fn matcher(&self) -> Option<&Matcher> {
        self.matcher.as_ref()
    }

    /// What the runtime layout checks found so far.
    pub fn layout_violations(&self) -> &LayoutViolations {
        self.plausible.violations()
    }

    /// Tells the sinks the violations, when there are new ones.
    fn tell_violations(&mut self) -> Result<(), SinkError> {
        let total = self.plausible.total();
        if total == self.violations_told {
            return Ok(());
        }
        self.violations_told = total;
        let found = self.plausible.violations();
        for sink in &mut self.sinks {
            sink.layout_violations(found).map_err(|source| SinkError {
                sink: sink.name(),
                source,
            })?;
        }
        Ok(())
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut dyn Sink) -> std::io::Result<()>,
    ) -> Result<(), SinkError> {
        for sink in &mut self.sinks {
            f(sink.as_mut()).map_err(|source| SinkError {
                sink: sink.name(),
                source,
            })?;
        }
        Ok(())
    }

    pub fn header(&mut self, header: &Header) -> Result<(), SinkError> {
        self.each(|s| s.header(header))
    }

    /// One event: the matcher sees it, then every sink, then the records it
    /// concluded, in order.
    pub fn event(&mut self, event: &Event) -> Result<(), SinkError> {
        self.now_ns = self.now_ns.max(event.ts_ns());
        self.plausible.push(event);
        if let Some(matcher) = &mut self.matcher {
            matcher.push(event, &mut self.records);
        }
        let matcher = self.matcher.as_ref();
        for sink in &mut self.sinks {
            sink.event(event, matcher).map_err(|source| SinkError {
                sink: sink.name(),
                source,
            })?;
        }
        self.hand_records()
    }

    /// A record a trace carries as recorded: one written without events
    /// (`record --matched --no-events`) has nothing else to conclude from.
    pub fn recorded(&mut self, record: &Record) -> Result<(), SinkError> {
        self.each(|s| s.record(record))
    }

    fn hand_records(&mut self) -> Result<(), SinkError> {
        if self.records.is_empty() {
            return Ok(());
        }
        // Taken and put back, so the buffer keeps its capacity.
        let mut records = std::mem::take(&mut self.records);
        let result = records
            .iter()
            .try_for_each(|record| self.each(|s| s.record(record)));
        records.clear();
        self.records = records;
        result
    }

    /// The end of a batch: sinks see the matcher as it stands.
    pub fn batch_end(&mut self) -> Result<(), SinkError> {
        if let Some(matcher) = &mut self.matcher {
            matcher.advance(self.now_ns, &mut self.records);
        }
        self.hand_records()?;
        self.tell_violations()?;
        let matcher = self.matcher.as_ref();
        for sink in &mut self.sinks {
            sink.batch_end(matcher).map_err(|source| SinkError {
                sink: sink.name(),
                source,
            })?;
        }
        Ok(())
    }

    /// A periodic `matched_summary`, when the matcher runs.
    pub fn snapshot(&mut self, drops: Drops) -> Result<(), SinkError> {
        let Some(matcher) = &self.matcher else {
            return Ok(());
        };
        let line = MatchedSummary {
            is_final: false,
            at_ns: self.now_ns,
            summary: matcher.summary(),
            drops,
            complete: false,
            skipped_lines: 0,
            sinks: self.losses(),
            layout_violations: self.plausible.violations().clone(),
        };
        self.each(|s| s.matched_summary(&line))
    }

    /// The losses so far: the probes' and every sink's.
    pub fn drops(&mut self, drops: Drops) -> Result<(), SinkError> {
        let losses = self.losses();
        self.each(|s| s.drops(&drops, &losses))
    }

    /// A `matched_summary` a recorded trace carries: passed on as it is.
    pub fn recorded_summary(&mut self, line: &MatchedSummary) -> Result<(), SinkError> {
        self.each(|s| s.matched_summary(line))
    }

    /// The events are over: the matcher closes what is open ("trace
    /// ended"), and the final `matched_summary` goes to the sinks. `None`
    /// when the matcher does not run.
    pub fn finish(
        &mut self,
        drops: Drops,
        complete: bool,
        skipped_lines: u64,
    ) -> Result<Option<correlate::Summary>, SinkError> {
        let summary = match &mut self.matcher {
            Some(matcher) => Some(matcher.finish(self.now_ns, &mut self.records)),
            None => None,
        };
        self.hand_records()?;
        self.tell_violations()?;
        let matcher = self.matcher.as_ref();
        for sink in &mut self.sinks {
            sink.finished(matcher).map_err(|source| SinkError {
                sink: sink.name(),
                source,
            })?;
        }
        if let Some(summary) = &summary {
            let line = MatchedSummary {
                is_final: true,
                at_ns: self.now_ns,
                summary: summary.clone(),
                drops,
                complete,
                skipped_lines,
                sinks: self.losses(),
                layout_violations: self.plausible.violations().clone(),
            };
            self.each(|s| s.matched_summary(&line))?;
        }
        Ok(summary)
    }

    /// The trace's summary line.
    pub fn summary(&mut self, summary: &Summary) -> Result<(), SinkError> {
        self.each(|s| s.summary(summary))
    }

    /// What the sinks could not take so far.
    pub fn losses(&self) -> Vec<SinkLoss> {
        self.sinks.iter().flat_map(|s| s.losses()).collect()
    }

    /// The ndjson sink's lost lines: the trace's own `drops.sink_slow`.
    pub fn lines_lost(&self) -> u64 {
        lines_lost(&self.losses())
    }

    /// Closes every sink, each within `within` of its start; their losses,
    /// and the first failure.
    pub async fn close(self, within: Duration) -> (Vec<SinkLoss>, Option<SinkError>) {
        let mut losses = Vec::new();
        let mut failure = None;
        for sink in self.sinks {
            let name = sink.name();
            let (lost, error) = sink.close(within).await;
            losses.extend(lost);
            if let (None, Some(source)) = (&failure, error) {
                failure = Some(SinkError { sink: name, source });
            }
        }
        (losses, failure)
    }
}

/// The lines the `ndjson` sink lost, of `losses`.
pub fn lines_lost(losses: &[SinkLoss]) -> u64 {
    losses
        .iter()
        .filter(|l| l.sink == crate::sink::ndjson::NAME)
        .map(|l| l.lost)
        .fold(0, u64::saturating_add)
}
