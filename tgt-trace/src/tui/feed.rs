//! The screen as a sink of the pipeline: what a batch of events changed,
//! and the matcher's state after it, as one [`Batch`] per batch of the
//! driver (one drain of the ring buffer live, one paced step of a replay).
//! The TUI runs no matcher of its own: [`Screen`] is handed the driver's.
//!
//! Live, batches go to the screen's loop over its bounded channel and never
//! wait for it: a batch it has no room for is merged into the next (events
//! and arrivals summed, records kept, the snapshots replaced), and records
//! beyond [`PENDING_RECORDS`] are dropped and counted (`screen`, `slow`).
//! [`Feed`] runs the same sink over a trace's lines without a channel: the
//! paced replay and the tests.

use std::{cell::RefCell, collections::BTreeMap, collections::VecDeque, rc::Rc, time::Duration};

use tokio::sync::mpsc::{self, error::TrySendError};

pub use crate::correlate::OpenTmf;
use crate::{
    correlate::{Config, InFlight, Matcher, Record, Summary},
    event::{Event, OpClass},
    pipeline::Driver,
    plausible::LayoutViolations,
    points::ProbePoint,
    sink::{Closing, Sink},
    source::file::FileSource,
    trace::{Drops, Header, Line, MatchedSummary, SinkLoss},
};

use super::event::Msg;

/// Records a batch the screen had no room for may hold while it waits to
/// be merged into the next; beyond, the newest are dropped and counted.
pub const PENDING_RECORDS: usize = 100_000;

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
    /// For the kernel target (LIO): the kernel release; it has no pids.
    pub kernel: Option<String>,
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
            kernel: (header.target == crate::points::Target::Lio)
                .then(|| header.tgtd_build_id.clone()),
            pids: header.pids.clone(),
            probe_set: match header.target {
                crate::points::Target::Tgtd => match header.sampling {
                    Some(s) => format!("{} (commands sampled {s})", header.probe_set.name()),
                    None => header.probe_set.name().to_owned(),
                },
                crate::points::Target::Lio => "lio".to_owned(),
            },
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
#[derive(Debug, Clone, Default)]
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
    /// What the recording's sinks, the screen among them, could not take.
    pub sinks: Vec<SinkLoss>,
    /// The runtime layout checks' findings, when they changed.
    pub layout_violations: Option<LayoutViolations>,
}

impl Batch {
    /// `next` after `self`, as one batch: for a screen that missed `self`.
    fn merge(mut self, next: Batch) -> Batch {
        self.events += next.events;
        self.first_ns = self.first_ns.or(next.first_ns);
        for (key, n) in next.arrivals {
            *self.arrivals.entry(key).or_default() += n;
        }
        self.tmf_requests += next.tmf_requests;
        self.records.extend(next.records);
        Batch {
            now_ns: next.now_ns,
            open_tmfs: next.open_tmfs,
            in_flight: next.in_flight,
            in_flight_total: next.in_flight_total,
            summary: next.summary,
            drops: next.drops.or(self.drops),
            sinks: next.sinks,
            layout_violations: next.layout_violations.or(self.layout_violations),
            ..self
        }
    }
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
    layout_violations: Option<LayoutViolations>,
}

/// Where the screen's batches go.
enum Out {
    /// Live: the screen loop's channel, never waited for.
    Channel(mpsc::Sender<Msg>),
    /// [`Feed`]: a queue its caller empties after each batch.
    Queue(Rc<RefCell<VecDeque<Update>>>),
}

/// The screen's sink: see the module documentation.
pub struct Screen {
    out: Out,
    /// Live: the header becomes the screen's `Started` update, so named.
    source: Option<String>,
    batch: Gathered,
    /// A batch the channel had no room for, merged into the next.
    pending: Option<Batch>,
    lost_records: u64,
    /// The recording's other sinks' losses, from its latest snapshot.
    others: Vec<SinkLoss>,
    ended: Option<Ended>,
    /// The stream clock: the latest event timestamp.
    now_ns: u64,
}

impl Screen {
    /// The live screen's sink: the header starts it as `source`.
    pub fn live(tx: mpsc::Sender<Msg>, source: &str) -> Screen {
        Screen::new(Out::Channel(tx), Some(source.to_owned()))
    }

    fn new(out: Out, source: Option<String>) -> Screen {
        Screen {
            out,
            source,
            batch: Gathered::default(),
            pending: None,
            lost_records: 0,
            others: Vec::new(),
            ended: None,
            now_ns: 0,
        }
    }

    fn send(&mut self, update: Update) {
        match &self.out {
            Out::Queue(queue) => queue.borrow_mut().push_back(update),
            Out::Channel(tx) => match tx.try_send(Msg::Update(update)) {
                Ok(()) => {}
                Err(TrySendError::Full(Msg::Update(Update::Batch(batch)))) => {
                    self.hold(*batch);
                }
                // A `Started` or `Ended` is sent first or last, when the
                // channel has room; the screen may have quit.
                Err(_) => {}
            },
        }
    }

    /// Keeps a batch the screen had no room for, within the bound.
    fn hold(&mut self, mut batch: Batch) {
        let held = self.pending.as_ref().map_or(0, |p| p.records.len());
        let room = PENDING_RECORDS.saturating_sub(held);
        if batch.records.len() > room {
            self.lost_records += (batch.records.len() - room) as u64;
            batch.records.truncate(room);
        }
        self.pending = Some(batch);
    }

    fn deliver(&mut self, batch: Batch) {
        let batch = match self.pending.take() {
            Some(pending) => pending.merge(batch),
            None => batch,
        };
        self.send(Update::Batch(Box::new(batch)));
    }

    fn snapshot(&mut self, matcher: Option<&Matcher>) -> Batch {
        let gathered = std::mem::take(&mut self.batch);
        let mut sinks = self.others.clone();
        sinks.extend(self.losses());
        Batch {
            events: gathered.events,
            first_ns: gathered.first_ns,
            now_ns: self.now_ns,
            arrivals: gathered.arrivals,
            tmf_requests: gathered.tmf_requests,
            records: gathered.records,
            open_tmfs: matcher.map(Matcher::open_tmf_list).unwrap_or_default(),
            in_flight: matcher
                .map(|m| m.oldest_in_flight(IN_FLIGHT_SHOWN))
                .unwrap_or_default(),
            in_flight_total: matcher.map_or(0, Matcher::in_flight),
            summary: matcher.map(Matcher::summary).unwrap_or_default(),
            drops: gathered.drops,
            sinks,
            layout_violations: gathered.layout_violations,
        }
    }
}

impl Sink for Screen {
    fn name(&self) -> &'static str {
        "screen"
    }

    fn wants_matching(&self) -> bool {
        true
    }

    fn header(&mut self, header: &Header) -> std::io::Result<()> {
        if let Some(source) = self.source.clone() {
            self.send(Update::Started(TraceInfo::from_header(source, header)));
        }
        Ok(())
    }

    fn event(&mut self, event: &Event, matcher: Option<&Matcher>) -> std::io::Result<()> {
        let batch = &mut self.batch;
        batch.events += 1;
        let ts = event.ts_ns();
        batch.first_ns = Some(batch.first_ns.map_or(ts, |first| first.min(ts)));
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
                initiator: matcher
                    .and_then(|m| m.initiator(*pid, *itn_id))
                    .unwrap_or_else(|| format!("nexus {itn_id}")),
                opcode: *opcode,
            };
            *batch.arrivals.entry(key).or_default() += 1;
        }
        if matches!(event, Event::TmfRequest { .. }) {
            batch.tmf_requests += 1;
        }
        Ok(())
    }

    fn record(&mut self, record: &Record) -> std::io::Result<()> {
        self.batch.records.push(record.clone());
        Ok(())
    }

    fn matched_summary(&mut self, summary: &MatchedSummary) -> std::io::Result<()> {
        self.batch.drops = Some(summary.drops);
        self.others = summary
            .sinks
            .iter()
            .filter(|l| l.sink != self.name())
            .cloned()
            .collect();
        Ok(())
    }

    fn layout_violations(&mut self, found: &LayoutViolations) -> std::io::Result<()> {
        self.batch.layout_violations = Some(found.clone());
        Ok(())
    }

    fn batch_end(&mut self, matcher: Option<&Matcher>) -> std::io::Result<()> {
        let batch = self.snapshot(matcher);
        self.deliver(batch);
        Ok(())
    }

    fn finished(&mut self, matcher: Option<&Matcher>) -> std::io::Result<()> {
        self.batch_end(matcher)
    }

    fn summary(&mut self, summary: &crate::trace::Summary) -> std::io::Result<()> {
        self.batch.drops = Some(summary.drops);
        self.ended = Some(Ended {
            complete: true,
            stopped_by: Some(summary.stopped_by.clone()),
            duration_ns: Some(summary.duration_ns),
        });
        Ok(())
    }

    fn losses(&self) -> Vec<SinkLoss> {
        (self.lost_records > 0)
            .then(|| SinkLoss {
                sink: self.name().to_owned(),
                cause: "slow".to_owned(),
                lost: self.lost_records,
                unit: "records".to_owned(),
            })
            .into_iter()
            .collect()
    }

    /// Hands the screen what it has not taken yet, and the end, waiting for
    /// it at most `within`.
    fn close(mut self: Box<Self>, within: Duration) -> Closing {
        Box::pin(async move {
            let ended = self.ended.take().unwrap_or(Ended {
                complete: false,
                stopped_by: None,
                duration_ns: None,
            });
            let mut last: Vec<Update> = Vec::new();
            if let Some(pending) = self.pending.take() {
                last.push(Update::Batch(Box::new(pending)));
            }
            last.push(Update::Ended(ended));
            match &self.out {
                Out::Queue(queue) => queue.borrow_mut().extend(last),
                Out::Channel(tx) => {
                    let deadline = tokio::time::Instant::now() + within;
                    for update in last {
                        let lost = match &update {
                            Update::Batch(b) => b.records.len() as u64,
                            _ => 0,
                        };
                        let sent = tokio::time::timeout_at(deadline, tx.send(Msg::Update(update)));
                        if !matches!(sent.await, Ok(Ok(()))) {
                            self.lost_records += lost;
                        }
                    }
                }
            }
            (self.losses(), None)
        })
    }
}

/// The screen's sink run over a trace's lines by a driver of its own, with
/// the batches handed back to the caller: the paced replay, and the tests.
pub struct Feed {
    driver: Driver<'static>,
    source: FileSource,
    queue: Rc<RefCell<VecDeque<Update>>>,
}

impl Feed {
    /// `config`'s coverage is replaced by the header's probes.
    pub fn new(header: &Header, config: Config) -> Feed {
        let queue = Rc::new(RefCell::new(VecDeque::new()));
        let screen = Screen::new(Out::Queue(queue.clone()), None);
        Feed {
            driver: Driver::new(header, config, vec![Box::new(screen)]),
            source: FileSource::default(),
            queue,
        }
    }

    /// One trace line after the header; the summary line ends the trace.
    pub fn line(&mut self, line: Line) -> Option<Ended> {
        let ended = match &line {
            Line::Summary(s) => Some(Ended {
                complete: true,
                stopped_by: Some(s.stopped_by.clone()),
                duration_ns: Some(s.duration_ns),
            }),
            _ => None,
        };
        // The screen's sink never fails.
        let _ = self.source.line(&mut self.driver, line);
        ended
    }

    pub fn event(&mut self, event: &Event) {
        let _ = self.driver.event(event);
    }

    /// What the events since the last batch changed, with snapshots of now.
    pub fn take_batch(&mut self) -> Batch {
        let _ = self.driver.batch_end();
        self.next_batch()
    }

    /// Ends the trace: what is still open is closed ("trace ended").
    pub fn finish(&mut self) -> Batch {
        let source = std::mem::take(&mut self.source);
        let _ = source.finish(&mut self.driver, 0);
        self.next_batch()
    }

    /// The batches the driver's last steps made, as one. A trace without
    /// events ends without the matcher: its batch is made here.
    fn next_batch(&mut self) -> Batch {
        if !self
            .queue
            .borrow()
            .iter()
            .any(|u| matches!(u, Update::Batch(_)))
        {
            let _ = self.driver.batch_end();
        }
        let batches: Vec<Batch> = self
            .queue
            .borrow_mut()
            .drain(..)
            .filter_map(|u| match u {
                Update::Batch(b) => Some(*b),
                Update::Started(_) | Update::Ended(_) => None,
            })
            .collect();
        let mut batches = batches.into_iter();
        let first = batches.next().unwrap_or_default();
        batches.fold(first, Batch::merge)
    }
}
