//! Replay a recorded trace through the matcher, and summarise it for people.

use std::fmt::Write as _;

use crate::{
    correlate::{Config, Coverage, Matcher, OrphanRecord, Record, Summary},
    reader::{ReadError, TraceReader},
    stats::LatencySummary,
    trace::{Drops, Line, MatchedSummary},
};

/// What a replay found besides the matcher's summary.
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
}

/// Runs every event of `reader` through a matcher configured from the
/// trace's header, handing each record to `sink` as it is concluded.
///
/// A trace recorded with `record --matched --no-events` has no events to
/// match: its matched lines and its final `matched_summary` are taken as
/// recorded (with the recording's limits, not `cfg`'s).
pub fn replay(
    reader: &mut TraceReader,
    mut cfg: Config,
    mut sink: impl FnMut(&Record),
) -> Result<Replayed, ReadError> {
    cfg.coverage = Coverage::from_probes(&reader.header().probes);
    let mut matcher = Matcher::new(cfg);
    let mut out = Vec::new();
    let mut replayed = Replayed::default();
    let mut last_ts = 0;
    let mut events_seen = false;
    let mut recorded: Option<MatchedSummary> = None;
    for line in reader.by_ref() {
        match line? {
            Line::Event(event) => {
                events_seen = true;
                last_ts = last_ts.max(event.ts_ns());
                matcher.push(&event, &mut out);
                out.drain(..).for_each(|r| sink(&r));
            }
            Line::Summary(s) => {
                replayed.drops = s.drops;
                replayed.complete = true;
            }
            // What `record --matched` concluded live is concluded again here,
            // from the events, with this run's limits; matched lines come
            // after the events that concluded them, so before any event they
            // are a trace without events.
            Line::Command(c) if !events_seen => sink(&Record::Command(c)),
            Line::Tmf(t) if !events_seen => sink(&Record::Tmf(t)),
            Line::Orphan(o) if !events_seen => sink(&Record::Orphan(o)),
            Line::MatchedSummary(m) if m.is_final && !events_seen => recorded = Some(*m),
            Line::Header(_)
            | Line::Command(_)
            | Line::Tmf(_)
            | Line::Orphan(_)
            | Line::MatchedSummary(_) => {}
        }
    }
    match recorded {
        Some(m) if !events_seen => {
            replayed.summary = Some(m.summary);
            replayed.last_ts_ns = m.at_ns;
        }
        _ => {
            let summary = matcher.finish(last_ts, &mut out);
            out.drain(..).for_each(|r| sink(&r));
            replayed.summary = Some(summary);
            replayed.last_ts_ns = last_ts;
        }
    }
    replayed.skipped = reader.skipped();
    Ok(replayed)
}

/// `tgt-trace report --json`.
#[derive(
    Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct ReportJson {
    pub schema_version: u32,
    pub summary: Summary,
    pub orphans: Vec<OrphanRecord>,
    /// Drops the recording reported.
    pub drops: Drops,
    /// The recording ended with its summary line (it was stopped cleanly).
    pub complete: bool,
    /// Lines skipped by `--lenient`.
    pub skipped_lines: u64,
}

impl Replayed {
    pub fn report_json(&self, orphans: Vec<OrphanRecord>) -> Option<ReportJson> {
        Some(ReportJson {
            schema_version: crate::SCHEMA_VERSION,
            summary: self.summary.clone()?,
            orphans,
            drops: self.drops,
            complete: self.complete,
            skipped_lines: self.skipped,
        })
    }

    /// The `matched_summary` line that ends `replay`'s output.
    pub fn matched_summary(&self) -> Option<MatchedSummary> {
        Some(MatchedSummary {
            is_final: true,
            at_ns: self.last_ts_ns,
            summary: self.summary.clone()?,
            drops: self.drops,
            complete: self.complete,
            skipped_lines: self.skipped,
        })
    }
}

fn latency_row(table: &mut String, name: &str, s: &LatencySummary) {
    let _ = writeln!(
        table,
        "  {name:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
        s.count, s.p50_us, s.p90_us, s.p99_us, s.p999_us, s.max_us
    );
}

/// The human summary: commands, TMFs by function and outcome, aborts,
/// orphans, drops.
pub fn render_text(replayed: &Replayed, orphans: &[OrphanRecord]) -> String {
    let mut t = String::new();
    let Some(summary) = &replayed.summary else {
        return t;
    };
    let c = &summary.counts;
    let h = &summary.histograms;
    let _ = writeln!(
        t,
        "commands: {} in, {} good, {} error status, {} aborted, {} still in flight, {} evicted",
        c.commands_in,
        c.commands_good,
        c.commands_error,
        c.commands_aborted,
        c.commands_in_flight,
        c.commands_evicted
    );
    let _ = writeln!(
        t,
        "\nlatency (µs)                      count       p50       p90       p99     p99.9       max"
    );
    latency_row(&mut t, "commands", &h.command);
    for (class, s) in &h.command_by_class {
        latency_row(&mut t, &format!("commands {class}"), s);
    }
    for (lun, s) in &h.command_by_lun {
        latency_row(&mut t, &format!("commands LUN {lun}"), s);
    }
    for (function, s) in &h.tmf_by_function {
        latency_row(&mut t, &format!("TMF {function}"), s);
    }
    latency_row(&mut t, "abort (TMF to TASK_ABORTED)", &h.abort);
    latency_row(&mut t, "aborted commands' age", &h.aborted_in_flight);
    latency_row(&mut t, "deferred TMF wait", &h.deferred_wait);
    let _ = writeln!(t, "\nTMFs: {}", c.tmfs);
    for (function, outcomes) in &c.tmfs_by_function {
        let _ = writeln!(t, "  {function}: {}", outcomes.values().sum::<u64>());
        for (outcome, n) in outcomes {
            let _ = writeln!(t, "    {outcome:<32} {n}");
        }
    }
    let _ = writeln!(t, "\norphans: {}", c.orphans());
    for o in orphans {
        let who = o.initiator.as_deref().unwrap_or("unknown initiator");
        let _ = writeln!(
            t,
            "  {}: {} (nexus {} {who}, LUN {})",
            crate::correlate::orphan_name(o.kind),
            o.detail,
            o.itn_id,
            o.lun
        );
    }
    let d = &replayed.drops;
    let _ = writeln!(
        t,
        "\ndrops: {} (ring full {}, unreadable {}, undecodable {}{}){}{}",
        d.total(),
        d.ring_full,
        d.read_failed,
        d.decode_errors,
        match d.sink_slow {
            0 => String::new(),
            n => format!(", lines the recording's output reader was too slow for {n}"),
        },
        if replayed.complete {
            ""
        } else {
            "; the trace has no summary line: it was cut short"
        },
        if replayed.skipped > 0 {
            format!("; {} malformed lines skipped", replayed.skipped)
        } else {
            String::new()
        }
    );
    t
}
