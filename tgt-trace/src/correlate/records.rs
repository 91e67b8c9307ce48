//! What the matcher concludes: its records, totals and live views. Plain
//! data, serialized into traces and reports; the engine that makes them is
//! the parent module.

use serde::{Deserialize, Serialize};

use crate::stats::StatsSummary;

fn unknown_delivery() -> Delivery {
    Delivery::Unknown
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// What the matcher concludes, in the order it concludes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Command(CommandRecord),
    Tmf(TmfRecord),
    Orphan(OrphanRecord),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Good,
    ErrorStatus,
    Aborted,
    /// Still in tgtd when its nexus went away, tgtd exited, or the trace ended.
    InFlight,
    /// Pushed out by `max_commands`.
    Evicted,
}

/// A command worth keeping: aborted, failed, covered by a TMF, or unfinished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CommandRecord {
    pub pid: u32,
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub tag: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcode: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ns: Option<u64>,
    pub outcome: CommandOutcome,
    /// The TMFs (by sequence number) that covered it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covered_by: Vec<u64>,
    /// Why it is unfinished, for `in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// What happened to a command a TMF covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Not yet known.
    Pending,
    /// TASK_ABORTED, at `at_ns`.
    Aborted,
    /// Busy in the backing store; the TMF waited for its release.
    Blocked,
    /// Released normally without naming this TMF: tgtd neither aborted it
    /// nor made this TMF wait for it (e.g. a later TMF took over its
    /// `cmd->mreq`).
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Covered {
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub tag: u64,
    pub lun: u64,
    pub arrived_ns: u64,
    pub fate: Fate,
    /// When it got TASK_ABORTED, or was released while blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ns: Option<u64>,
    /// For a blocking command: how long it held the TMF, from the TMF's
    /// request to its release.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_ns: Option<u64>,
    /// Another initiator's command, hit by a LUN-wide TMF.
    pub other_initiator: bool,
}

/// The class of a TMF's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TmfOutcome {
    CompletedWithAborts,
    CompletedNothingToAbort,
    /// Answered after busy commands were released.
    Deferred,
    /// ABORT TASK for a tag that was not in tgtd.
    NoTaskNeverExisted,
    /// ABORT TASK for a command released just before the request.
    NoTaskRace,
    /// ABORT TASK that waited for its busy command, answered -EEXIST after it completed.
    NoTaskDeferredThenFinished,
    NotSupported,
    Rejected,
    /// Answered FUNCTION NOT SUPPORTED by tgtd's iSCSI layer itself
    /// (`iscsi_tm_execute`: CLEAR ACA, CLEAR TASK SET, TARGET WARM/COLD
    /// RESET, TASK REASSIGN); the core never saw it.
    NotSupportedByTransport,
    /// Answered FUNCTION REJECTED by the iSCSI layer: a function code it
    /// does not know.
    RejectedByTransport,
    /// ABORT TASK that the core answered TASK DOES NOT EXIST while the
    /// referenced command was still held by the iSCSI layer (waiting for its
    /// CmdSN or its Data-Out), not yet queued to the core: it runs anyway.
    NoTaskNotYetQueued,
    Unanswered,
}

/// Whether the initiator was sent the TMF's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Written to the connection (`iscsi_task_tx_done`).
    Sent,
    /// Built, then freed unsent: the connection was closed first.
    FreedUnsent,
    /// No response was built.
    NotSent,
    /// A response was built; the trace cannot tell whether it left tgtd (no
    /// transmit probe: an older trace or a build where it was not found).
    Unknown,
}

/// Where ABORT TASK's referenced command was when the iSCSI layer received
/// the TMF (its session's task list, walked by the received probe).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Referenced {
    /// Not in the session's tasks: it never arrived, or is gone.
    Absent,
    /// Received, but not yet handed to the core (waiting for its CmdSN or
    /// Data-Out).
    HeldByTransport,
    /// Handed to the core.
    InCore,
    /// The list was longer than the probe walks, or unreadable.
    Unknown,
}

impl Referenced {
    pub(super) fn from_probe(state: i32) -> Referenced {
        match state {
            tgt_trace_common::referenced::ABSENT => Referenced::Absent,
            tgt_trace_common::referenced::HELD_BY_TRANSPORT => Referenced::HeldByTransport,
            tgt_trace_common::referenced::IN_CORE => Referenced::InCore,
            _ => Referenced::Unknown,
        }
    }
}

fn delivery_is_unknown(d: &Delivery) -> bool {
    *d == Delivery::Unknown
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TmfRecord {
    /// Order of the request in the trace; names the TMF in other records.
    pub seq: u64,
    pub pid: u32,
    pub tid: i32,
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub mid: u64,
    pub function: String,
    pub lun: u64,
    /// The referenced tag (ABORT TASK).
    pub tag: u64,
    /// The TMF's own initiator task tag as tgtd loads it (the wire's ITT
    /// with its bytes swapped on x86); absent without the received probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub itt: Option<u32>,
    /// When the iSCSI layer received it, or else when the core got it.
    pub requested_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responded_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<i32>,
    /// The response was inferred (no response probe).
    pub response_inferred: bool,
    /// tgtd answered (`response`, `responded_ns`) but freed the response
    /// unsent, because the initiator's connection was closed: the TMF is
    /// unanswered.
    #[serde(default, skip_serializing_if = "is_false")]
    pub response_dropped: bool,
    /// Request to response, for a response the initiator was sent: to its
    /// transmission when the trace has it, else to the core's response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    /// The iSCSI response code the initiator got (or would have got).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iscsi_response: Option<u8>,
    /// When the response was written to the connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_ns: Option<u64>,
    /// Whether the response reached the connection; `unknown` (the
    /// default) only for traces without the transmit probe.
    #[serde(
        default = "unknown_delivery",
        skip_serializing_if = "delivery_is_unknown"
    )]
    pub delivery: Delivery,
    /// ABORT TASK: where its referenced command was at the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub referenced: Option<Referenced>,
    pub outcome: TmfOutcome,
    pub covered: Vec<Covered>,
    /// For a race: the gap between that command's release and the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race_gap_ns: Option<u64>,
    /// LIO: when the core began executing it (`target_tmr_work`, a kworker:
    /// the gap from the request is the work queue's delay).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executed_ns: Option<u64>,
    /// Why the TMF was closed early: for unanswered, why there is no
    /// response; for an answered one, why some covered command's fate is
    /// unknown, or that it was evicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum OrphanKind {
    /// (a) A TMF that found no task.
    TmfFoundNoTask,
    /// (b) A command completed TASK_ABORTED that no TMF covers.
    AbortWithoutTmf,
    /// (c) A TMF never answered: timeout, nexus gone, target exited, trace ended.
    TmfUnanswered,
    /// (d) A deferred TMF whose blocking command was never released.
    BlockerNeverReleased,
    /// (e) A command that ABORT TASK was answered TASK DOES NOT EXIST for,
    /// because the iSCSI layer still held it, reached the core afterwards
    /// and ran: the initiator believes it was never there.
    AbortedCommandRan,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OrphanRecord {
    pub kind: OrphanKind,
    pub pid: u32,
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub tag: u64,
    pub lun: u64,
    pub at_ns: u64,
    /// The TMF concerned, by sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmf_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub detail: String,
}

/// Totals, and where every command and TMF went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub events: u64,
    pub commands_in: u64,
    pub commands_good: u64,
    pub commands_error: u64,
    pub commands_aborted: u64,
    pub commands_in_flight: u64,
    pub commands_evicted: u64,
    pub tmfs: u64,
    pub tmfs_by_outcome: std::collections::BTreeMap<String, u64>,
    /// Function name → outcome name → count.
    #[serde(default)]
    pub tmfs_by_function:
        std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
    pub tmfs_evicted: u64,
    /// TMFs whose response was built but whose delivery the trace cannot
    /// tell (no transmit probe): `check` will not count them as answered.
    #[serde(default)]
    pub tmfs_delivery_unknown: u64,
    pub orphans_by_kind: std::collections::BTreeMap<String, u64>,
    /// Events about commands or TMFs the matcher never saw start.
    pub unmatched_events: u64,
    /// `--sample`: windows opened; commands measured (arrival and release
    /// in one window); and commands cut by a window's edge, not measured:
    /// an arrival whose window closed before its release, a release whose
    /// arrival came before its window opened (a command that spans a whole
    /// closed period is counted at both ends). What sampling gives up is
    /// counted, not lost.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub sample_windows: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub commands_sampled: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub commands_cut_by_window: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Counts {
    pub fn orphans(&self) -> u64 {
        self.orphans_by_kind.values().sum()
    }
}

/// The end of a trace.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub counts: Counts,
    pub histograms: StatsSummary,
}

pub fn outcome_name(outcome: TmfOutcome) -> &'static str {
    match outcome {
        TmfOutcome::CompletedWithAborts => "completed_with_aborts",
        TmfOutcome::CompletedNothingToAbort => "completed_nothing_to_abort",
        TmfOutcome::Deferred => "deferred",
        TmfOutcome::NoTaskNeverExisted => "no_task_never_existed",
        TmfOutcome::NoTaskRace => "no_task_race",
        TmfOutcome::NoTaskDeferredThenFinished => "no_task_deferred_then_finished",
        TmfOutcome::NotSupported => "not_supported",
        TmfOutcome::Rejected => "rejected",
        TmfOutcome::NotSupportedByTransport => "not_supported_by_transport",
        TmfOutcome::RejectedByTransport => "rejected_by_transport",
        TmfOutcome::NoTaskNotYetQueued => "no_task_not_yet_queued",
        TmfOutcome::Unanswered => "unanswered",
    }
}

pub fn orphan_name(kind: OrphanKind) -> &'static str {
    match kind {
        OrphanKind::TmfFoundNoTask => "tmf_found_no_task",
        OrphanKind::AbortWithoutTmf => "abort_without_tmf",
        OrphanKind::TmfUnanswered => "tmf_unanswered",
        OrphanKind::BlockerNeverReleased => "blocker_never_released",
        OrphanKind::AbortedCommandRan => "aborted_command_ran",
    }
}

/// A TMF requested and not yet concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenTmf {
    pub pid: u32,
    pub mid: u64,
    pub itn_id: u64,
    pub initiator: Option<String>,
    pub function: String,
    pub lun: u64,
    pub tag: u64,
    pub requested_ns: u64,
    /// DONE, QUEUED or FAILED, once `target_mgmt_request` returned.
    pub returned: Option<String>,
}

/// A command still in tgtd, as live views show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InFlight {
    pub pid: u32,
    pub itn_id: u64,
    pub initiator: Option<String>,
    pub tag: u64,
    pub lun: Option<u64>,
    pub opcode: Option<u8>,
    pub arrived_ns: Option<u64>,
    /// The open TMFs (by sequence number) whose response waits for this
    /// command's release.
    pub blocking: Vec<u64>,
}
