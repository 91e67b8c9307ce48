//! The metrics sink (`tgt-trace serve`): the matcher's records, the
//! latencies it measures and its open state, as Prometheus metrics that
//! [`crate::serve`] exposes over HTTP.
//!
//! The registry and its text encodings are `prometheus-client`'s: it is the
//! Prometheus project's own client library for Rust, it writes both the
//! OpenMetrics text Prometheus asks for and the classic text format (0.0.4)
//! that `promtool check metrics` and a plain `curl` read, and its metrics
//! are light to share between threads: counters are atomics and a histogram
//! takes a short lock of its own, so a scrape being encoded on the HTTP
//! thread holds up the driver for at most one histogram's copy.
//!
//! What changes with every event is updated in place; what the scrape needs
//! from the matcher (the open TMFs, the commands in flight) is copied into
//! atomics at the end of each batch ([`Live`]), so a scrape never reaches
//! into the matcher and the driver never waits for a scrape.

use std::{
    collections::HashSet,
    io,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::{Registry, Unit},
};

use crate::{
    correlate::{Matcher, Measured, Record, orphan_name, outcome_name},
    event::{Event, OpClass},
    plausible::{Check, LayoutViolations},
    probe::monotonic_ns,
    trace::{Drops, Header, MatchedSummary, SinkLoss},
};

use super::Sink;

pub const NAME: &str = "metrics";

/// Every metric's name starts so.
pub const PREFIX: &str = "tgttrace";

/// Histogram bucket edges, in seconds: 10 µs (a fast command on a null
/// backing store) to 180 s, with edges exactly at 30 s and 60 s, the
/// timeouts initiators commonly give a command or a TMF before they
/// escalate, so "answered before the initiator gave up" is one bucket
/// boundary, not an interpolation.
pub const BUCKETS: [f64; 23] = [
    1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 180.0,
];

/// The label value that stands for every value beyond a label's cap.
pub const OTHER: &str = "other";

/// How many distinct values a capped label takes before the rest are
/// `other`: each histogram series is 26 time series in Prometheus, so the
/// caps bound what a misbehaving initiator can cost it.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct LUNs with their own `lun` label.
    pub luns: usize,
    /// Label TMFs and orphans with the initiator's name (`--initiator-labels`),
    /// at most this many distinct names; `None`: no initiator label.
    pub initiators: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            luns: 256,
            initiators: None,
        }
    }
}

type Labels = Vec<(&'static str, String)>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// The metrics the sink updates as the stream goes.
#[derive(Clone)]
struct Families {
    tmf_duration: Family<Labels, Histogram>,
    tmfs: Family<Labels, Counter>,
    aborts: Counter,
    abort_latency: Histogram,
    command_duration: Family<Labels, Histogram>,
    orphans: Family<Labels, Counter>,
    label_overflow: Family<Labels, Counter>,
}

/// What a scrape reads that the sink refreshes at the end of each batch.
#[derive(Debug, Default)]
pub struct Live {
    events: AtomicU64,
    tmfs_open: AtomicU64,
    in_flight: AtomicU64,
    /// The oldest open TMF's request time (CLOCK_MONOTONIC ns); 0: none.
    oldest_open_tmf_ns: AtomicU64,
    /// The probes are attached (from the header to the end of the events).
    attached: AtomicBool,
    /// When the driver last ended a batch (CLOCK_MONOTONIC ns); 0: never.
    last_batch_ns: AtomicU64,
    /// Events lost, by cause; changes a few times a second at most.
    lost: Mutex<Vec<(String, u64)>>,
    /// Every probe point, attached or not; set once.
    probes: Mutex<Vec<(&'static str, bool)>>,
    /// `--sample`'s share of time, in percent; 100 without it. Set once.
    sampled_percent: AtomicU64,
    /// Runtime layout check violations, by check name; changes only when
    /// one fires.
    layout_violations: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Live {
    /// Whether the probes are attached and the loop that drains them has
    /// ended a batch within `stale_after`; if not, why not.
    pub fn health(&self, stale_after: Duration) -> Result<(), String> {
        if !self.attached.load(Ordering::Acquire) {
            return Err("the probes are not attached".to_owned());
        }
        let last = self.last_batch_ns.load(Ordering::Acquire);
        let idle = Duration::from_nanos(monotonic_ns().saturating_sub(last));
        if last == 0 || idle > stale_after {
            return Err(format!(
                "the drain loop has not run for {:.1} s (limit {:.1} s)",
                idle.as_secs_f64(),
                stale_after.as_secs_f64()
            ));
        }
        Ok(())
    }
}

/// The registry and the live state: what the HTTP side reads.
#[derive(Debug)]
pub struct Exposition {
    registry: Registry,
    live: Arc<Live>,
}

impl Exposition {
    /// One scrape: OpenMetrics text, or the classic text format (0.0.4).
    pub fn encode(&self, openmetrics: bool) -> Result<String, std::fmt::Error> {
        let mut text = String::with_capacity(16 << 10);
        if openmetrics {
            prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        } else {
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)?;
        }
        Ok(text)
    }

    pub fn health(&self, stale_after: Duration) -> Result<(), String> {
        self.live.health(stale_after)
    }
}

/// The sink and what exposes it, sharing the same metrics.
pub fn metrics(options: Options) -> (MetricsSink, Exposition) {
    let families = Families {
        tmf_duration: Family::new_with_constructor(histogram),
        tmfs: Family::default(),
        aborts: Counter::default(),
        abort_latency: histogram(),
        command_duration: Family::new_with_constructor(histogram),
        orphans: Family::default(),
        label_overflow: Family::default(),
    };
    let live = Arc::new(Live::default());
    let mut registry = Registry::with_prefix(PREFIX);
    registry.register_with_unit(
        "tmf_duration",
        "TMF request to the response the initiator was sent (to its transmission \
         when traced), by function and outcome; unanswered TMFs are not in it",
        Unit::Seconds,
        families.tmf_duration.clone(),
    );
    registry.register(
        "tmfs",
        "TMFs concluded, by function and outcome",
        families.tmfs.clone(),
    );
    registry.register(
        "aborts",
        "Commands aborted by a TMF (completed TASK_ABORTED and attributed to one)",
        families.aborts.clone(),
    );
    registry.register_with_unit(
        "abort_latency",
        "A TMF's request to the TASK_ABORTED of each command it aborted",
        Unit::Seconds,
        families.abort_latency.clone(),
    );
    registry.register_with_unit(
        "command_duration",
        "A command's arrival to its result (full probe set) or release (lean), \
         by op (read, write, other) and LUN",
        Unit::Seconds,
        families.command_duration.clone(),
    );
    registry.register(
        "orphans",
        "Orphans by kind: tmf_found_no_task, abort_without_tmf, tmf_unanswered, \
         blocker_never_released, aborted_command_ran",
        families.orphans.clone(),
    );
    registry.register(
        "label_overflow",
        "Observations whose label value was over its cap and counted as \"other\", by label",
        families.label_overflow.clone(),
    );
    // Every kind from the start: an alert on their increase sees the first.
    for kind in ORPHAN_KINDS {
        let _created = families
            .orphans
            .get_or_create(&vec![("kind", kind.to_owned())]);
    }
    registry.register_collector(Box::new(Scraped(live.clone())));
    let initiators = options.initiators;
    let sink = MetricsSink {
        families,
        live: live.clone(),
        options,
        luns: HashSet::new(),
        initiators: HashSet::with_capacity(initiators.unwrap_or(0)),
        events: 0,
    };
    (sink, Exposition { registry, live })
}

const ORPHAN_KINDS: [&str; 5] = [
    "tmf_found_no_task",
    "abort_without_tmf",
    "tmf_unanswered",
    "blocker_never_released",
    "aborted_command_ran",
];

/// The pipeline's side: never blocks (atomics, and the metrics' own short
/// locks), and loses nothing.
pub struct MetricsSink {
    families: Families,
    live: Arc<Live>,
    options: Options,
    /// LUNs that have a label of their own.
    luns: HashSet<u64>,
    /// Initiators that have a label of their own.
    initiators: HashSet<String>,
    events: u64,
}

impl MetricsSink {
    fn lun_label(&mut self, lun: Option<u64>) -> String {
        let Some(lun) = lun else {
            return "unknown".to_owned();
        };
        if self.luns.contains(&lun) || self.luns.len() < self.options.luns {
            self.luns.insert(lun);
            return lun.to_string();
        }
        self.overflow("lun");
        OTHER.to_owned()
    }

    /// The initiator label, when initiators are labelled.
    fn initiator_label(&mut self, initiator: Option<&str>) -> Option<String> {
        let cap = self.options.initiators?;
        let Some(name) = initiator else {
            return Some("unknown".to_owned());
        };
        if self.initiators.contains(name) {
            return Some(name.to_owned());
        }
        if self.initiators.len() < cap {
            self.initiators.insert(name.to_owned());
            return Some(name.to_owned());
        }
        self.overflow("initiator");
        Some(OTHER.to_owned())
    }

    fn overflow(&self, label: &'static str) {
        self.families
            .label_overflow
            .get_or_create(&vec![("label", label.to_owned())])
            .inc();
    }

    fn set_lost(&self, drops: &Drops, sinks: &[SinkLoss]) {
        let mut lost = vec![
            ("ring_full".to_owned(), drops.ring_full),
            ("read_failed".to_owned(), drops.read_failed),
            ("decode_errors".to_owned(), drops.decode_errors),
            // A TMF's walk of tgtd's task lists cut short (tmf set): its
            // covered commands are incomplete.
            ("walk_truncated".to_owned(), drops.walk_truncated),
        ];
        for loss in sinks {
            let cause = format!("sink_{}_{}", loss.sink, loss.cause);
            match lost.iter_mut().find(|(c, _)| *c == cause) {
                Some((_, n)) => *n = n.saturating_add(loss.lost),
                None => lost.push((cause, loss.lost)),
            }
        }
        if let Ok(mut shown) = self.live.lost.lock() {
            *shown = lost;
        }
    }

    fn refresh(&self, matcher: Option<&Matcher>) {
        let live = &self.live;
        live.events.store(self.events, Ordering::Relaxed);
        if let Some(m) = matcher {
            live.tmfs_open
                .store(m.open_tmfs() as u64, Ordering::Relaxed);
            live.in_flight
                .store(m.in_flight() as u64, Ordering::Relaxed);
            live.oldest_open_tmf_ns
                .store(m.oldest_open_tmf_ns().unwrap_or(0), Ordering::Relaxed);
        }
    }
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

impl Sink for MetricsSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn wants_matching(&self) -> bool {
        true
    }

    fn header(&mut self, header: &Header) -> io::Result<()> {
        if let Ok(mut probes) = self.live.probes.lock() {
            // Only the points the probe set wants: a point the set leaves
            // out on purpose (the tmf set's queue) is not a probe missing.
            *probes = header
                .probes
                .iter()
                .filter(|p| header.probe_set.wants(p.name) || p.attached)
                .map(|p| (p.name.name(), p.attached))
                .collect();
        }
        self.live.sampled_percent.store(
            header.sampling.map_or(100, |s| u64::from(s.percent)),
            Ordering::Release,
        );
        self.set_lost(&Drops::default(), &[]);
        // Healthy only from the first batch's end: the drain loop is alive.
        self.live
            .attached
            .store(header.probes.iter().any(|p| p.attached), Ordering::Release);
        Ok(())
    }

    fn event(&mut self, _: &Event, matcher: Option<&Matcher>) -> io::Result<()> {
        self.events += 1;
        let Some(matcher) = matcher else {
            return Ok(());
        };
        for measured in matcher.measured() {
            match *measured {
                Measured::Command {
                    opcode,
                    lun,
                    latency_ns,
                } => {
                    let op = opcode.map_or(OpClass::Other, OpClass::of).name();
                    let lun = self.lun_label(lun);
                    self.families
                        .command_duration
                        .get_or_create(&vec![("op", op.to_owned()), ("lun", lun)])
                        .observe(seconds(latency_ns));
                }
                Measured::Abort { latency_ns } => {
                    self.families.aborts.inc();
                    self.families.abort_latency.observe(seconds(latency_ns));
                }
            }
        }
        Ok(())
    }

    fn record(&mut self, record: &Record) -> io::Result<()> {
        match record {
            Record::Tmf(tmf) => {
                let outcome = outcome_name(tmf.outcome);
                let mut labels: Labels = vec![
                    ("function", tmf.function.clone()),
                    ("outcome", outcome.to_owned()),
                ];
                if let Some(ns) = tmf.latency_ns {
                    self.families
                        .tmf_duration
                        .get_or_create(&labels)
                        .observe(seconds(ns));
                }
                if let Some(initiator) = self.initiator_label(tmf.initiator.as_deref()) {
                    labels.push(("initiator", initiator));
                }
                self.families.tmfs.get_or_create(&labels).inc();
            }
            Record::Orphan(orphan) => {
                let mut labels: Labels = vec![("kind", orphan_name(orphan.kind).to_owned())];
                if let Some(initiator) = self.initiator_label(orphan.initiator.as_deref()) {
                    labels.push(("initiator", initiator));
                }
                self.families.orphans.get_or_create(&labels).inc();
            }
            // Its latency came as it was measured (`Measured::Command`).
            Record::Command(_) => {}
        }
        Ok(())
    }

    fn batch_end(&mut self, matcher: Option<&Matcher>) -> io::Result<()> {
        self.refresh(matcher);
        self.live
            .last_batch_ns
            .store(monotonic_ns(), Ordering::Release);
        Ok(())
    }

    fn drops(&mut self, drops: &Drops, sinks: &[SinkLoss]) -> io::Result<()> {
        self.set_lost(drops, sinks);
        Ok(())
    }

    fn matched_summary(&mut self, summary: &MatchedSummary) -> io::Result<()> {
        self.set_lost(&summary.drops, &summary.sinks);
        Ok(())
    }

    fn layout_violations(&mut self, found: &LayoutViolations) -> io::Result<()> {
        if let Ok(mut shown) = self.live.layout_violations.lock() {
            shown.clone_from(&found.counts);
        }
        Ok(())
    }

    fn finished(&mut self, matcher: Option<&Matcher>) -> io::Result<()> {
        // The probes were detached before the last drain.
        self.refresh(matcher);
        self.live.attached.store(false, Ordering::Release);
        Ok(())
    }
}

/// What is computed at scrape time: the clock-dependent age of the oldest
/// open TMF, the tracer's own cost, and the copies [`Live`] holds.
#[derive(Debug)]
struct Scraped(Arc<Live>);

impl Collector for Scraped {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = &self.0;
        let oldest = live.oldest_open_tmf_ns.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0.0
        } else {
            seconds(monotonic_ns().saturating_sub(oldest))
        };
        gauge(
            &mut encoder,
            "tmf_oldest_open",
            "Age of the oldest TMF not yet answered, at scrape time (0: none open); \
             a hung TMF shows here long before it reaches a histogram",
            Some(&Unit::Seconds),
            age,
        )?;
        gauge(
            &mut encoder,
            "tmfs_open",
            "TMFs requested and not yet concluded",
            None,
            live.tmfs_open.load(Ordering::Relaxed) as f64,
        )?;
        gauge(
            &mut encoder,
            "inflight_commands",
            "Commands in tgtd, as the trace shows them",
            None,
            live.in_flight.load(Ordering::Relaxed) as f64,
        )?;
        ConstCounter::new(live.events.load(Ordering::Relaxed)).encode(
            encoder.encode_descriptor(
                "events",
                "Events the probes delivered",
                None,
                MetricType::Counter,
            )?,
        )?;
        let lost = live.lost.lock().map(|l| l.clone()).unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "events_lost",
            "Events lost, by cause: ring_full, read_failed, decode_errors, \
             walk_truncated (a TMF's walk of the task lists cut short), and \
             sink_<sink>_<cause> for what a sink could not take",
            None,
            MetricType::Counter,
        )?;
        for (cause, n) in &lost {
            ConstCounter::new(*n).encode(family.encode_family(&[("cause", cause.as_str())])?)?;
        }
        let violations = live
            .layout_violations
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "layout_violations",
            "Events that broke a runtime layout plausibility check, by check (every \
             check is listed, at 0 while it holds); any non-zero count means tgt-trace \
             may be reading tgtd with a wrong struct layout: run `tgt-trace probes` and \
             report the build",
            None,
            MetricType::Counter,
        )?;
        for check in Check::ALL {
            let n = violations.get(check.name()).copied().unwrap_or(0);
            ConstCounter::new(n).encode(family.encode_family(&[("check", check.name())])?)?;
        }
        let probes = live.probes.lock().map(|p| p.clone()).unwrap_or_default();
        let mut family = encoder.encode_descriptor(
            "probes_attached",
            "1 for each probe point of the probe set that is attached, 0 for one that is not",
            None,
            MetricType::Gauge,
        )?;
        for (probe, attached) in &probes {
            ConstGauge::new(i64::from(*attached))
                .encode(family.encode_family(&[("probe", *probe)])?)?;
        }
        gauge(
            &mut encoder,
            "command_duration_sampled_ratio",
            "The share of time the per-command probes are attached: below 1 under \
             --sample, when command_duration holds only the commands seen whole inside \
             a sampling window (TMF metrics are complete either way)",
            None,
            live.sampled_percent.load(Ordering::Acquire) as f64 / 100.0,
        )?;
        if let Some(own) = process() {
            ConstCounter::new(own.cpu_seconds).encode(encoder.encode_descriptor(
                "process_cpu",
                "CPU time tgt-trace has used, user and system",
                Some(&Unit::Seconds),
                MetricType::Counter,
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory",
                "tgt-trace's resident memory",
                Some(&Unit::Bytes),
                own.resident_bytes as f64,
            )?;
        }
        let mut family = encoder.encode_descriptor(
            "build_info",
            "1, labelled with the version of tgt-trace",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(1i64)
            .encode(family.encode_family(&[("version", env!("CARGO_PKG_VERSION"))])?)?;
        Ok(())
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: f64,
) -> Result<(), std::fmt::Error> {
    ConstGauge::new(value).encode(encoder.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// The tracer's own cost.
struct Own {
    cpu_seconds: f64,
    resident_bytes: u64,
}

/// From the kernel's own accounts of this process: its stat file (utime
/// and stime, fields 14 and 15, in clock ticks) and its statm file
/// (resident pages, the second field).
fn process() -> Option<Own> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name, field 2, is in parentheses and may hold spaces.
    let after_name = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // After the name, field 3 (state) is index 0: utime is 11, stime 12.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ticks <= 0 || page <= 0 {
        return None;
    }
    Some(Own {
        cpu_seconds: (utime + stime) as f64 / ticks as f64,
        resident_bytes: pages.saturating_mul(page as u64),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        correlate::{Config, Delivery, OrphanKind, OrphanRecord, TmfOutcome, TmfRecord},
        synth::{self, SynthConfig},
    };

    /// The samples of a scrape: (name, labels as written, value).
    fn samples(text: &str) -> Vec<(String, String, f64)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("a sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((name, rest)) => (name, rest.trim_end_matches('}')),
                    None => (series, ""),
                };
                let value = match value {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().expect("a sample value"),
                };
                (name.to_owned(), labels.to_owned(), value)
            })
            .collect()
    }

    /// The value of the one sample named `name` whose labels contain all of
    /// `labels` (`k="v"` each).
    fn value(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
        let found: Vec<f64> = samples(text)
            .into_iter()
            .filter(|(n, l, _)| n == name && labels.iter().all(|want| l.contains(want)))
            .map(|(_, _, v)| v)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    }

    fn tmf(function: &str, outcome: TmfOutcome, latency_ns: Option<u64>) -> Record {
        Record::Tmf(TmfRecord {
            seq: 1,
            pid: 1,
            tid: 1,
            itn_id: 1,
            initiator: Some("iqn.2026-11.test:a".to_owned()),
            mid: 7,
            function: function.to_owned(),
            lun: 1,
            tag: 42,
            itt: None,
            requested_ns: 1_000,
            returned: None,
            responded_ns: latency_ns.map(|l| 1_000 + l),
            response: None,
            response_inferred: false,
            response_dropped: false,
            latency_ns,
            iscsi_response: None,
            sent_ns: None,
            delivery: Delivery::Sent,
            referenced: None,
            outcome,
            covered: Vec::new(),
            race_gap_ns: None,
            executed_ns: None,
            cause: None,
        })
    }

    fn orphan(kind: OrphanKind, initiator: &str) -> Record {
        Record::Orphan(OrphanRecord {
            kind,
            pid: 1,
            itn_id: 1,
            initiator: Some(initiator.to_owned()),
            tag: 42,
            lun: 1,
            at_ns: 5,
            tmf_seq: None,
            function: None,
            detail: String::new(),
        })
    }

    #[test]
    fn tmf_records_count_by_function_and_outcome_and_fill_the_right_bucket() {
        let (mut sink, exposition) = metrics(Options::default());
        // 3 ms: above the 2.5 ms edge, within the 5 ms one.
        sink.record(&tmf(
            "ABORT_TASK",
            TmfOutcome::CompletedWithAborts,
            Some(3_000_000),
        ))
        .expect("taken");
        sink.record(&tmf(
            "ABORT_TASK",
            TmfOutcome::CompletedWithAborts,
            Some(40_000_000_000),
        ))
        .expect("taken");
        // Unanswered: counted, and no latency to observe.
        sink.record(&tmf("LOGICAL_UNIT_RESET", TmfOutcome::Unanswered, None))
            .expect("taken");
        let text = exposition.encode(false).expect("encodes");
        let tmfs = |f: &str, o: &str| {
            value(
                &text,
                "tgttrace_tmfs_total",
                &[&format!("function=\"{f}\""), &format!("outcome=\"{o}\"")],
            )
        };
        assert_eq!(tmfs("ABORT_TASK", "completed_with_aborts"), Some(2.0));
        assert_eq!(tmfs("LOGICAL_UNIT_RESET", "unanswered"), Some(1.0));
        let bucket = |le: &str| {
            value(
                &text,
                "tgttrace_tmf_duration_seconds_bucket",
                &["function=\"ABORT_TASK\"", &format!("le=\"{le}\"")],
            )
        };
        assert_eq!(bucket("0.0025"), Some(0.0), "{text}");
        assert_eq!(bucket("0.005"), Some(1.0));
        // 40 s: past the 30 s edge, within 60 s.
        assert_eq!(bucket("30"), Some(1.0));
        assert_eq!(bucket("60"), Some(2.0));
        assert_eq!(bucket("+Inf"), Some(2.0));
        assert_eq!(
            value(
                &text,
                "tgttrace_tmf_duration_seconds_count",
                &["function=\"LOGICAL_UNIT_RESET\""]
            ),
            None,
            "an unanswered TMF has no duration"
        );
        // Every edge of BUCKETS, and no other.
        let edges: Vec<String> = samples(&text)
            .into_iter()
            .filter(|(n, l, _)| {
                n == "tgttrace_tmf_duration_seconds_bucket" && l.contains("completed_with_aborts")
            })
            .map(|(_, l, _)| {
                l.split("le=\"")
                    .nth(1)
                    .expect("le")
                    .trim_end_matches('"')
                    .to_owned()
            })
            .collect();
        let mut want: Vec<String> = BUCKETS.iter().map(|b| format!("{b:?}")).collect();
        want.push("+Inf".to_owned());
        assert_eq!(edges.len(), want.len(), "{edges:?}");
        for (got, want) in edges.iter().zip(&want) {
            assert_eq!(
                got.parse::<f64>().ok(),
                want.parse::<f64>().ok(),
                "{edges:?}"
            );
        }
    }

    #[test]
    fn every_orphan_kind_is_there_from_the_start_and_counts() {
        let (mut sink, exposition) = metrics(Options::default());
        let text = exposition.encode(false).expect("encodes");
        for kind in ORPHAN_KINDS {
            assert_eq!(
                value(
                    &text,
                    "tgttrace_orphans_total",
                    &[&format!("kind=\"{kind}\"")]
                ),
                Some(0.0),
                "{kind}"
            );
        }
        sink.record(&orphan(OrphanKind::TmfUnanswered, "a"))
            .expect("taken");
        sink.record(&orphan(OrphanKind::TmfUnanswered, "b"))
            .expect("taken");
        let text = exposition.encode(true).expect("encodes");
        assert_eq!(
            value(
                &text,
                "tgttrace_orphans_total",
                &["kind=\"tmf_unanswered\""]
            ),
            Some(2.0)
        );
        assert!(text.ends_with("# EOF\n"), "OpenMetrics ends so");
        assert!(
            !text.contains("initiator="),
            "no initiator label unless asked"
        );
    }

    #[test]
    fn labels_beyond_their_cap_are_other_and_counted() {
        let (mut sink, exposition) = metrics(Options {
            luns: 2,
            initiators: Some(1),
        });
        for lun in [1, 2, 3, 4, 1] {
            assert_eq!(
                sink.lun_label(Some(lun)),
                if lun <= 2 {
                    lun.to_string()
                } else {
                    OTHER.to_owned()
                }
            );
        }
        sink.record(&orphan(OrphanKind::AbortWithoutTmf, "iqn.a"))
            .expect("taken");
        sink.record(&orphan(OrphanKind::AbortWithoutTmf, "iqn.b"))
            .expect("taken");
        sink.record(&orphan(OrphanKind::AbortWithoutTmf, "iqn.a"))
            .expect("taken");
        let text = exposition.encode(false).expect("encodes");
        let overflow = |label: &str| {
            value(
                &text,
                "tgttrace_label_overflow_total",
                &[&format!("label=\"{label}\"")],
            )
        };
        assert_eq!(overflow("lun"), Some(2.0));
        assert_eq!(overflow("initiator"), Some(1.0));
        let orphans = |initiator: &str| {
            value(
                &text,
                "tgttrace_orphans_total",
                &[
                    "kind=\"abort_without_tmf\"",
                    &format!("initiator=\"{initiator}\""),
                ],
            )
        };
        assert_eq!(orphans("iqn.a"), Some(2.0));
        assert_eq!(orphans(OTHER), Some(1.0));
    }

    /// The sink, fed by a real matcher over a synthetic stream, shows what
    /// the matcher's own counts and histograms say.
    #[test]
    fn a_matched_stream_s_metrics_equal_the_matcher_s_totals() {
        let (events, _, _) = synth::generate(
            SynthConfig {
                abort_task_ppm: 20_000,
                lun_reset_ppm: 2_000,
                ..SynthConfig::default()
            },
            200_000,
        );
        let (mut sink, exposition) = metrics(Options::default());
        let mut matcher = Matcher::new(Config::default());
        let mut out = Vec::new();
        for event in &events {
            out.clear();
            matcher.push(event, &mut out);
            sink.event(event, Some(&matcher)).expect("taken");
            for record in &out {
                sink.record(record).expect("taken");
            }
        }
        sink.batch_end(Some(&matcher)).expect("taken");
        let open_before_end = matcher.open_tmfs() as f64;
        let text = exposition.encode(false).expect("encodes");
        assert_eq!(
            value(&text, "tgttrace_tmfs_open", &[]),
            Some(open_before_end)
        );
        assert_eq!(
            value(&text, "tgttrace_events_total", &[]),
            Some(events.len() as f64)
        );
        out.clear();
        let end = events.last().map_or(0, Event::ts_ns);
        matcher.finish(end, &mut out);
        for record in &out {
            sink.record(record).expect("taken");
        }
        sink.finished(Some(&matcher)).expect("taken");
        let text = exposition.encode(false).expect("encodes");
        let sum = |name: &str| -> f64 {
            samples(&text)
                .into_iter()
                .filter(|(n, _, _)| n == name)
                .map(|(_, _, v)| v)
                .sum()
        };
        let stats = matcher.stats();
        let counts = matcher.counts();
        assert!(stats.command.count() > 1000 && stats.abort.count() > 10);
        assert_eq!(
            sum("tgttrace_command_duration_seconds_count"),
            stats.command.count() as f64
        );
        assert_eq!(sum("tgttrace_aborts_total"), stats.abort.count() as f64);
        assert_eq!(
            sum("tgttrace_abort_latency_seconds_count"),
            stats.abort.count() as f64
        );
        let mut by_outcome: BTreeMap<String, f64> = BTreeMap::new();
        for (_, labels, v) in samples(&text)
            .into_iter()
            .filter(|(n, _, _)| n == "tgttrace_tmfs_total")
        {
            let outcome = labels
                .split("outcome=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .expect("an outcome label");
            *by_outcome.entry(outcome.to_owned()).or_default() += v;
        }
        let want: BTreeMap<String, f64> = counts
            .tmfs_by_outcome
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect();
        assert_eq!(by_outcome, want);
        assert_eq!(sum("tgttrace_orphans_total"), counts.orphans() as f64);
        assert_eq!(value(&text, "tgttrace_tmfs_open", &[]), Some(0.0));
        // Luns and ops are the synthetic stream's: bounded label sets.
        for (name, labels, _) in samples(&text) {
            if name == "tgttrace_command_duration_seconds_count" {
                assert!(
                    ["op=\"read\"", "op=\"write\"", "op=\"other\""]
                        .iter()
                        .any(|op| labels.contains(op)),
                    "{labels}"
                );
            }
        }
    }

    #[test]
    fn the_oldest_open_tmf_s_age_is_taken_at_scrape_time() {
        let (_sink, exposition) = metrics(Options::default());
        let text = exposition.encode(false).expect("encodes");
        assert_eq!(
            value(&text, "tgttrace_tmf_oldest_open_seconds", &[]),
            Some(0.0)
        );
        exposition
            .live
            .oldest_open_tmf_ns
            .store(monotonic_ns() - 90_000_000_000, Ordering::Relaxed);
        let text = exposition.encode(false).expect("encodes");
        let age = value(&text, "tgttrace_tmf_oldest_open_seconds", &[]).expect("the gauge");
        assert!((90.0..100.0).contains(&age), "{age}");
    }

    #[test]
    fn the_sampled_ratio_is_the_header_s_share() {
        use crate::points::{Point, ProbePoint, ProbeSet, Sampling, Target};
        let header = |sampling| Header {
            schema_version: crate::SCHEMA_VERSION,
            tgt_trace_version: String::new(),
            target: Target::Tgtd,
            tgtd_path: String::new(),
            tgtd_build_id: String::new(),
            tgtd_layout: crate::tgtd::LayoutCheck::CodeFingerprint,
            probe_set: ProbeSet::Lean,
            sampling,
            probes: vec![ProbePoint {
                name: Point::Queue,
                function: String::new(),
                offset: None,
                attached: true,
                sampled: sampling.is_some(),
                missing: None,
            }],
            pids: Vec::new(),
            pid_filter: None,
            start_unix_ns: 0,
            start_monotonic_ns: 0,
            ring_bytes: 4096,
        };
        let ratio = |sampling| {
            let (mut sink, exposition) = metrics(Options::default());
            sink.header(&header(sampling)).expect("taken");
            let text = exposition.encode(false).expect("encodes");
            value(&text, "tgttrace_command_duration_sampled_ratio", &[])
        };
        assert_eq!(ratio(None), Some(1.0));
        let tenth = Sampling {
            percent: 10,
            period_ms: 10_000,
        };
        assert_eq!(ratio(Some(tenth)), Some(0.1));
    }

    #[test]
    fn health_needs_the_probes_attached_and_a_recent_batch() {
        let (mut sink, exposition) = metrics(Options::default());
        let limit = Duration::from_secs(5);
        assert!(exposition.health(limit).is_err(), "before the header");
        sink.live.attached.store(true, Ordering::Release);
        sink.batch_end(None).expect("taken");
        assert_eq!(exposition.health(limit), Ok(()));
        sink.live
            .last_batch_ns
            .store(monotonic_ns() - 6_000_000_000, Ordering::Release);
        let stalled = exposition.health(limit).expect_err("stalled");
        assert!(stalled.contains("drain loop"), "{stalled}");
        sink.batch_end(None).expect("taken");
        sink.finished(None).expect("taken");
        assert!(exposition.health(limit).is_err(), "detached");
    }

    #[test]
    fn losses_are_counted_by_cause_with_each_sink_s_own() {
        let (mut sink, exposition) = metrics(Options::default());
        let drops = Drops {
            ring_full: 3,
            read_failed: 0,
            decode_errors: 1,
            sink_slow: 9,
            walk_truncated: 2,
        };
        let losses = [SinkLoss {
            sink: "ndjson".to_owned(),
            cause: "slow".to_owned(),
            lost: 9,
            unit: "lines".to_owned(),
        }];
        sink.drops(&drops, &losses).expect("taken");
        let text = exposition.encode(false).expect("encodes");
        let lost = |cause: &str| {
            value(
                &text,
                "tgttrace_events_lost_total",
                &[&format!("cause=\"{cause}\"")],
            )
        };
        assert_eq!(lost("ring_full"), Some(3.0));
        assert_eq!(lost("read_failed"), Some(0.0));
        assert_eq!(lost("decode_errors"), Some(1.0));
        assert_eq!(lost("walk_truncated"), Some(2.0));
        assert_eq!(lost("sink_ndjson_slow"), Some(9.0));
        assert_eq!(
            value(&text, "tgttrace_build_info", &[]),
            Some(1.0),
            "{text}"
        );
        assert!(value(&text, "tgttrace_process_resident_memory_bytes", &[]).unwrap_or(0.0) > 0.0);
        assert!(value(&text, "tgttrace_process_cpu_seconds_total", &[]).is_some());
    }

    #[test]
    fn layout_violations_are_counted_by_check_every_check_listed() {
        let (mut sink, exposition) = metrics(Options::default());
        let text = exposition.encode(false).expect("encodes");
        let violations = |text: &str, check: &str| {
            value(
                text,
                "tgttrace_layout_violations_total",
                &[&format!("check=\"{check}\"")],
            )
        };
        assert_eq!(violations(&text, "cmd_identity"), Some(0.0), "{text}");
        let mut found = LayoutViolations::default();
        found.counts.insert("cmd_identity".to_owned(), 3);
        sink.layout_violations(&found).expect("taken");
        let text = exposition.encode(false).expect("encodes");
        assert_eq!(violations(&text, "cmd_identity"), Some(3.0), "{text}");
        assert_eq!(violations(&text, "lun_format"), Some(0.0), "{text}");
    }
}
