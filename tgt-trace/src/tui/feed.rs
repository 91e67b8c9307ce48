//! Trace lines in, updates for the screen out: runs the matcher and sums up
//! each batch of events. Pure, so the screen can be tested from fixed
//! streams; the tasks in `source` only pace it.

use std::collections::BTreeMap;

pub use crate::correlate::OpenTmf;
use crate::{
    correlate::{Config, Coverage, InFlight, Matcher, Record, Summary},
    event::{Event, OpClass},
    points::ProbePoint,
    trace::{Drops, Header, Line},
};

/// The in-flight view shows at most this many commands, the oldest.
pub const IN_FLIGHT_SHOWN: usize = 500;

/// What the screen hears from the trace.
#[derive(Debug, Clone)]
pub enum Update {
    /// The trace's header: what is traced, and how.
    Started(TraceInfo),
    Batch(Box<Batch>),
    /// The trace's summary line, or the end of a trace that has none.
    Ended(Ended),
}

/// From the trace's header.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceInfo {
    /// "replay FILE" or "live".
    pub source: String,
    pub tgtd_path: String,
    pub pids: Vec<u32>,
    pub probe_set: String,
    pub probes: Vec<ProbePoint>,
    /// Event timestamps are CLOCK_MONOTONIC; times are shown from here.
    pub start_monotonic_ns: u64,
}

impl TraceInfo {
    pub fn from_header(source: String, header: &Header) -> TraceInfo {
        TraceInfo {
            source,
            tgtd_path: header.tgtd_path.clone(),
            pids: header.pids.clone(),
            probe_set: format!("{:?}", header.probe_set).to_lowercase(),
            probes: header.probes.clone(),
            start_monotonic_ns: header.start_monotonic_ns,
        }
    }
}

/// How the trace ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    /// The trace has its summary line (it was stopped cleanly).
    pub complete: bool,
    pub stopped_by: Option<String>,
    pub duration_ns: Option<u64>,
}

/// Command arrivals are counted by what the filters can select.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ArrivalKey {
    pub lun: u64,
    pub initiator: String,
    pub opcode: u8,
}

impl ArrivalKey {
    pub fn class(&self) -> OpClass {
        OpClass::of(self.opcode)
    }
}

/// What one batch of events changed.
#[derive(Debug, Clone)]
pub struct Batch {
    pub events: u64,
    /// The earliest event timestamp of the batch, if it had events.
    pub first_ns: Option<u64>,
    /// The stream clock after the batch (the latest event timestamp).
    pub now_ns: u64,
    pub arrivals: BTreeMap<ArrivalKey, u64>,
    pub tmf_requests: u64,
    /// What the matcher concluded, in order.
    pub records: Vec<Record>,
    /// Snapshots after the batch.
    pub open_tmfs: Vec<OpenTmf>,
    pub in_flight: Vec<InFlight>,
    pub in_flight_total: usize,
    pub summary: Summary,
    /// Drops so far, when the trace told (live: its periodic snapshots).
    pub drops: Option<Drops>,
}

/// What a batch gathers while its events are fed.
#[derive(Debug, Default)]
struct Gathered {
    events: u64,
    first_ns: Option<u64>,
    arrivals: BTreeMap<ArrivalKey, u64>,
    tmf_requests: u64,
    records: Vec<Record>,
    drops: Option<Drops>,
}

/// The matcher and what the screen needs besides its records.
pub struct Feed {
    matcher: Matcher,
    batch: Gathered,
    now_ns: u64,
}

impl Feed {
    /// `config`'s coverage is replaced by the header's probes.
    pub fn new(header: &Header, config: Config) -> Feed {
        Feed {
            matcher: Matcher::new(Config {
                coverage: Coverage::from_probes(&header.probes),
                ..config
            }),
            batch: Gathered::default(),
            now_ns: 0,
        }
    }

    /// One trace line after the header; the summary line ends the trace.
    pub fn line(&mut self, line: Line) -> Option<Ended> {
        match line {
            Line::Event(event) => self.event(&event),
            Line::MatchedSummary(s) => self.batch.drops = Some(s.drops),
            Line::Summary(s) => {
                self.batch.drops = Some(s.drops);
                return Some(Ended {
                    complete: true,
                    stopped_by: Some(s.stopped_by),
                    duration_ns: Some(s.duration_ns),
                });
            }
            // Matched lines a recording carries are concluded again here,
            // from the events, as `replay` does.
            Line::Header(_) | Line::Command(_) | Line::Tmf(_) | Line::Orphan(_) => {}
        }
        None
    }

    pub fn event(&mut self, event: &Event) {
        self.batch.events += 1;
        let ts = event.ts_ns();
        self.batch.first_ns = Some(self.batch.first_ns.map_or(ts, |first| first.min(ts)));
        self.now_ns = self.now_ns.max(ts);
        if let Event::CmdQueue {
            pid,
            itn_id,
            lun,
            opcode,
            ..
        } = event
        {
            let key = ArrivalKey {
                lun: *lun,
                initiator: self
                    .matcher
                    .initiator(*pid, *itn_id)
                    .unwrap_or_else(|| format!("nexus {itn_id}")),
                opcode: *opcode,
            };
            *self.batch.arrivals.entry(key).or_default() += 1;
        }
        if matches!(event, Event::TmfRequest { .. }) {
            self.batch.tmf_requests += 1;
        }
        self.matcher.push(event, &mut self.batch.records);
    }

    /// What the events since the last batch changed, with snapshots of now.
    pub fn take_batch(&mut self) -> Batch {
        self.matcher.advance(self.now_ns, &mut self.batch.records);
        self.snapshot()
    }

    /// Ends the trace: what is still open is closed ("trace ended").
    pub fn finish(&mut self) -> Batch {
        self.matcher.finish(self.now_ns, &mut self.batch.records);
        self.snapshot()
    }

    fn snapshot(&mut self) -> Batch {
        let gathered = std::mem::take(&mut self.batch);
        Batch {
            events: gathered.events,
            first_ns: gathered.first_ns,
            now_ns: self.now_ns,
            arrivals: gathered.arrivals,
            tmf_requests: gathered.tmf_requests,
            records: gathered.records,
            open_tmfs: self.matcher.open_tmf_list(),
            in_flight: self.matcher.oldest_in_flight(IN_FLIGHT_SHOWN),
            in_flight_total: self.matcher.in_flight(),
            summary: self.matcher.summary(),
            drops: gathered.drops,
        }
    }
}
