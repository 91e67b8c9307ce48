//! The NDJSON trace: one JSON object per line, told apart by `"type"`.
//!
//! A trace is a `header` line, then `event` lines in the order the ring
//! buffer delivered them, then a `summary` line. With `record --matched` the
//! matcher's records (`command`, `tmf`, `orphan`) follow the events that
//! concluded them, with a `matched_summary` now and then and one at the end.
//! `replay` writes the matched lines alone. The schema is versioned by
//! [`crate::SCHEMA_VERSION`] in the header and kept as a JSON Schema in
//! `schema/tgt-trace.schema.json`.

use serde::{Deserialize, Serialize};

use crate::{
    correlate::{self, CommandRecord, OrphanRecord, Record, TmfRecord},
    event::Event,
    plausible::LayoutViolations,
    points::{KernelCounters, ProbePoint, ProbeSet, Sampling, Target},
    tgtd::LayoutCheck,
};

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Line {
    Header(Header),
    Event(Event),
    Summary(Summary),
    Command(CommandRecord),
    Tmf(TmfRecord),
    Orphan(OrphanRecord),
    // Boxed: it holds every histogram, and event lines are the hot path.
    MatchedSummary(Box<MatchedSummary>),
}

impl From<Record> for Line {
    fn from(record: Record) -> Line {
        match record {
            Record::Command(c) => Line::Command(c),
            Record::Tmf(t) => Line::Tmf(t),
            Record::Orphan(o) => Line::Orphan(o),
        }
    }
}

/// The matcher's totals and histograms: periodic ones while recording with
/// `--matched` (`final: false`), and the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchedSummary {
    /// The last summary of the trace; the others are snapshots.
    #[serde(rename = "final")]
    pub is_final: bool,
    /// Stream time (the latest event's timestamp) the summary is as of.
    pub at_ns: u64,
    pub summary: correlate::Summary,
    /// Drops so far (final: as the recording's summary line gave them).
    pub drops: Drops,
    /// The recording ended with its summary line (it was stopped cleanly);
    /// for a snapshot, false.
    pub complete: bool,
    /// Lines skipped by `--lenient` while replaying.
    pub skipped_lines: u64,
    /// What each of the recording's sinks could not take so far.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkLoss>,
    /// What the runtime layout checks found so far (absent when nothing).
    #[serde(default, skip_serializing_if = "LayoutViolations::is_empty")]
    pub layout_violations: LayoutViolations,
}

/// The first line: what was traced, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub schema_version: u32,
    pub tgt_trace_version: String,
    /// `tgtd` or `lio` (absent before schema 8: tgtd). For `lio`,
    /// `tgtd_path` is `kernel`, `tgtd_build_id` the kernel release and
    /// `pids` empty.
    #[serde(default)]
    pub target: Target,
    pub tgtd_path: String,
    pub tgtd_build_id: String,
    pub tgtd_layout: LayoutCheck,
    pub probe_set: ProbeSet,
    /// `--sample`: when the probe set's per-command probes were attached
    /// (schema 9; absent: all the time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
    /// Every probe point, attached or not, and why not.
    pub probes: Vec<ProbePoint>,
    /// The tgtd processes running when tracing started (more may start later:
    /// the probes follow the binary).
    pub pids: Vec<u32>,
    /// Only this pid was traced, when `--pid` was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_filter: Option<u32>,
    /// Wall clock at start, Unix ns; with `start_monotonic_ns` it maps event
    /// timestamps (CLOCK_MONOTONIC) to wall-clock time.
    pub start_unix_ns: u64,
    pub start_monotonic_ns: u64,
    pub ring_bytes: u32,
}

/// The last line: totals, and everything that was lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub events: u64,
    pub drops: Drops,
    pub duration_ns: u64,
    /// Why recording stopped: "signal", "duration", "command exited", or
    /// "stopped" (the TUI was quit).
    pub stopped_by: String,
    /// What each of the recording's sinks could not take (the trace's own
    /// lost lines are also in `drops.sink_slow`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sinks: Vec<SinkLoss>,
    /// Events that broke a runtime layout check (`crate::plausible`): by
    /// check, with the first few as examples. Absent when none did, and in
    /// traces before schema 7.
    #[serde(default, skip_serializing_if = "LayoutViolations::is_empty")]
    pub layout_violations: LayoutViolations,
}

/// What one sink of a recording could not take, and why. A sink never holds
/// up the recording: a consumer too slow for it loses whole items, counted
/// here. The `ndjson` sink's lines are the trace's own (`drops.sink_slow`);
/// the `screen` (the live TUI) and `metrics` sinks lose only what they show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SinkLoss {
    /// `ndjson`, `screen` or `metrics`.
    pub sink: String,
    /// `slow`: its consumer did not keep up; `unsent`: still waiting when
    /// the bounded final flush ended.
    pub cause: String,
    /// How many were lost.
    pub lost: u64,
    /// What `lost` counts: `lines` or `records`.
    pub unit: String,
}

/// Every way an event can be lost. Any non-zero field makes a trace incomplete.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(deny_unknown_fields)]
pub struct Drops {
    /// The ring buffer was full (counted in the kernel).
    pub ring_full: u64,
    /// tgtd's memory could not be read, so no record was made (kernel).
    pub read_failed: u64,
    /// Records that reached user space but did not decode.
    pub decode_errors: u64,
    /// Lines the output's reader was too slow to take (`record -o - | slow`):
    /// dropped whole so that recording kept up and stopped on time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sink_slow: u64,
    /// TMFs whose walk of tgtd's task lists (the `tmf` probe set) was cut
    /// short (kernel): their covered sets are incomplete, so the trace is.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub walk_truncated: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Drops {
    pub fn new(kernel: KernelCounters, decode_errors: u64) -> Drops {
        Drops {
            ring_full: kernel.ring_full,
            read_failed: kernel.read_failed,
            decode_errors,
            sink_slow: 0,
            walk_truncated: kernel.walk_truncated,
        }
    }

    /// Saturating: a trace's summary line is input, and can hold any counts.
    pub fn total(&self) -> u64 {
        self.ring_full
            .saturating_add(self.read_failed)
            .saturating_add(self.decode_errors)
            .saturating_add(self.sink_slow)
            .saturating_add(self.walk_truncated)
    }
}
