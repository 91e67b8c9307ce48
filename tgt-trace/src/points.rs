//! The probe points as data: their names in traces, the tgtd functions they
//! sit in, the probe sets that attach them, and what the probes count in
//! the kernel. Plain types, so that the matcher, the trace format, `check`
//! and the TUI need nothing of the loader (`probe.rs`, the only aya user).

use serde::{Deserialize, Serialize};

use crate::{proof::Field, tgtd::symbol};

/// Which SCSI target a trace is of.
#[derive(
    Debug,
    Clone,
    Copy,
    Default,
    PartialEq,
    Eq,
    Serialize,
    Deserialize,
    clap::ValueEnum,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// tgt's user-space daemon, through uprobes.
    #[default]
    Tgtd,
    /// The kernel's SCSI target (`drivers/target/`), through kprobes and
    /// raw tracepoints.
    Lio,
}

/// Which probe points to attach; each costs a uprobe hit per command where it
/// is on the command path.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProbeSet {
    /// TMFs and nexuses only: 0 hits per command. What each TMF covers is
    /// read from tgtd's own task lists when the TMF arrives (`tmf_walk`);
    /// a deferred TMF's answer comes from its response. No command latency,
    /// no in-flight view, no per-blocker release times, no aborted releases.
    Tmf,
    /// queue and release, with the result read at release: 2 hits per
    /// command. Command latency (arrival to release), outcomes, covered sets,
    /// deferral; no queue-wait time, and abort times are release times.
    Lean,
    /// all four paths: queue, uspace-send (`scsi_cmd_perform`), kspace_exec
    /// (`target_cmd_io_done`) and release: 4 hits per command. Adds
    /// queue-wait time, the exact time of each result, and which covered
    /// commands were already in the backing store at a TMF.
    Full,
}

impl ProbeSet {
    pub fn name(self) -> &'static str {
        match self {
            ProbeSet::Tmf => "tmf",
            ProbeSet::Lean => "lean",
            ProbeSet::Full => "full",
        }
    }

    /// Probe hits per ordinary command (one that no TMF touches).
    pub fn hits_per_command(self) -> u32 {
        match self {
            ProbeSet::Tmf => 0,
            ProbeSet::Lean => 2,
            ProbeSet::Full => 4,
        }
    }

    /// Whether this set attaches `point`.
    pub fn wants(self, point: Point) -> bool {
        match point {
            Point::Queue | Point::Release => self != ProbeSet::Tmf,
            Point::Perform | Point::Result => self == ProbeSet::Full,
            // The other sets learn covered sets from arrivals and releases.
            Point::TmfWalk => self == ProbeSet::Tmf,
            _ => true,
        }
    }
}

impl Point {
    /// Hit by every command: what `--sample` attaches only in its windows.
    pub fn per_command(self) -> bool {
        matches!(
            self,
            Point::Queue | Point::Perform | Point::Result | Point::Release
        )
    }
}

/// A probe point, named after the tgt core's paths (the seed patch's
/// *queue*, *uspace-send*, *kspace_exec*, *tsk_mgmt*) and the iSCSI layer's
/// TMF points. The names are part of the trace format (the header's
/// `probes`).
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
pub enum Point {
    Queue,
    #[serde(rename = "uspace_send")]
    Perform,
    #[serde(rename = "kspace_exec")]
    Result,
    Release,
    #[serde(rename = "tsk_mgmt")]
    TmfRequest,
    #[serde(rename = "tsk_mgmt_return")]
    TmfReturn,
    #[serde(rename = "tsk_mgmt_response")]
    TmfResponse,
    NexusCreate,
    NexusDestroy,
    TmfReceived,
    TmfSent,
    TmfTxStart,
    ConnClose,
    /// Not a probe of its own: the `tsk_mgmt` probe's walk of tgtd's task
    /// lists, sending `tmf_covers` and `tmf_walked`. Attached when the
    /// walk is on (its offsets proved in the build's machine code).
    TmfWalk,
    /// The kernel target (LIO): `target_sequencer_start` (raw tracepoint).
    LioQueue,
    /// LIO: `target_cmd_complete` (raw tracepoint).
    LioComplete,
    /// LIO: `iscsit_handle_task_mgt_cmd` (kprobe).
    LioTmfReceived,
    /// LIO: `transport_generic_handle_tmr` (kprobe).
    LioTmfRequest,
    /// LIO: `target_tmr_work` (kprobe and kretprobe).
    LioTmfExecute,
    /// LIO: `target_put_cmd_and_wait` inside `target_tmr_work` (kprobe and
    /// kretprobe).
    LioAbortWait,
    /// LIO: `lio_queue_tm_rsp` (kprobe).
    LioTmfResponse,
    /// LIO: `iscsit_build_task_mgt_rsp` (kprobe and kretprobe).
    LioTmfSent,
    /// LIO: `__transport_register_session` (kprobe).
    LioNexusCreate,
    /// LIO: `transport_deregister_session` (kprobe).
    LioNexusDestroy,
}

impl Point {
    /// The kernel target's points, in attach order.
    pub const LIO: [Point; 10] = [
        Point::LioQueue,
        Point::LioComplete,
        Point::LioTmfReceived,
        Point::LioTmfRequest,
        Point::LioTmfExecute,
        Point::LioAbortWait,
        Point::LioTmfResponse,
        Point::LioTmfSent,
        Point::LioNexusCreate,
        Point::LioNexusDestroy,
    ];

    pub const ALL: [Point; 14] = [
        Point::Queue,
        Point::Perform,
        Point::Result,
        Point::Release,
        Point::TmfRequest,
        Point::TmfReturn,
        Point::TmfResponse,
        Point::NexusCreate,
        Point::NexusDestroy,
        Point::TmfReceived,
        Point::TmfSent,
        Point::TmfTxStart,
        Point::ConnClose,
        Point::TmfWalk,
    ];

    /// The name in traces and messages.
    pub fn name(self) -> &'static str {
        match self {
            Point::Queue => "queue",
            Point::Perform => "uspace_send",
            Point::Result => "kspace_exec",
            Point::Release => "release",
            Point::TmfRequest => "tsk_mgmt",
            Point::TmfReturn => "tsk_mgmt_return",
            Point::TmfResponse => "tsk_mgmt_response",
            Point::NexusCreate => "nexus_create",
            Point::NexusDestroy => "nexus_destroy",
            Point::TmfReceived => "tmf_received",
            Point::TmfSent => "tmf_sent",
            Point::TmfTxStart => "tmf_tx_start",
            Point::ConnClose => "conn_close",
            Point::TmfWalk => "tmf_walk",
            Point::LioQueue => "lio_queue",
            Point::LioComplete => "lio_complete",
            Point::LioTmfReceived => "lio_tmf_received",
            Point::LioTmfRequest => "lio_tsk_mgmt",
            Point::LioTmfExecute => "lio_tmf_execute",
            Point::LioAbortWait => "lio_abort_wait",
            Point::LioTmfResponse => "lio_tmf_response",
            Point::LioTmfSent => "lio_tmf_sent",
            Point::LioNexusCreate => "lio_nexus_create",
            Point::LioNexusDestroy => "lio_nexus_destroy",
        }
    }

    /// The program at a LIO point's entry, and the one at its return.
    pub fn lio_programs(self) -> Option<(&'static str, Option<&'static str>)> {
        Some(match self {
            Point::LioQueue => ("lio_cmd_start", None),
            Point::LioComplete => ("lio_cmd_complete", None),
            Point::LioTmfReceived => ("lio_tmf_received", None),
            Point::LioTmfRequest => ("lio_tmf_request", None),
            Point::LioTmfExecute => ("lio_tmf_execute", Some("lio_tmf_executed")),
            Point::LioAbortWait => ("lio_abort_wait", Some("lio_abort_waited")),
            Point::LioTmfResponse => ("lio_tmf_response", None),
            Point::LioTmfSent => ("lio_tmf_build", Some("lio_tmf_sent")),
            Point::LioNexusCreate => ("lio_session_up", None),
            Point::LioNexusDestroy => ("lio_session_down", None),
            _ => return None,
        })
    }

    /// The eBPF program attached there.
    pub fn program(self) -> &'static str {
        match self {
            Point::Queue => "cmd_queue",
            Point::Perform => "cmd_perform",
            Point::Result => "cmd_result",
            Point::Release => "cmd_release",
            Point::TmfRequest => "tmf_request",
            Point::TmfReturn => "tmf_return",
            Point::TmfResponse => "tmf_response",
            Point::TmfWalk => "tmf_request",
            other => other
                .lio_programs()
                .map_or(other.name(), |(entry, _)| entry),
        }
    }

    /// The fields its probe reads, each proved from the build's machine code
    /// before the probe is attached (`crate::proof`). The command probes
    /// read `struct scsi_cmd` from `cmd_itn_id` to `mreq` in one window, so
    /// each needs all that window's fields it reports.
    pub fn needs(self) -> &'static [Field] {
        use Field as F;
        match self {
            Point::Queue => &[
                F::QueueArgs,
                F::CmdItnId,
                F::CmdLun,
                F::CmdScb,
                F::CmdAttribute,
                F::CmdTag,
            ],
            Point::Perform => &[F::PerformArgs, F::CmdItnId, F::CmdTag],
            Point::Result => &[
                F::IoDoneAborts,
                F::IoDoneArgs,
                F::CmdResult,
                F::CmdItnId,
                F::CmdTag,
                F::CmdMreq,
                F::MreqMid,
            ],
            Point::Release => &[
                F::DoneArgs,
                F::CmdItnId,
                F::CmdTag,
                F::CmdResult,
                F::CmdMreq,
                F::MreqMid,
                F::MreqBusy,
                F::MreqFunction,
            ],
            Point::TmfRequest | Point::TmfReturn => &[F::MgmtArgs, F::MreqMid],
            Point::TmfResponse => &[
                F::DriverMgmtEndNotify,
                F::MreqMid,
                F::MreqFunction,
                F::MreqResult,
            ],
            Point::NexusCreate => &[F::NexusCreateArgs],
            Point::NexusDestroy => &[F::NexusDestroyArgs],
            Point::TmfWalk => &[F::MgmtArgs, F::CmdTag, F::CmdLun, F::CmdMreq, F::MreqBusy],
            // Found and proved in the machine code by `crate::locate`.
            Point::TmfReceived | Point::TmfSent | Point::TmfTxStart | Point::ConnClose => &[],
            // The kernel's: offsets from its BTF (`crate::lio`).
            _ => &[],
        }
    }

    /// The tgtd function it is in (static ones have no symbol and are found
    /// in the machine code: `crate::tgtd`, `crate::locate`).
    pub fn function(self) -> &'static str {
        match self {
            Point::Queue => symbol::QUEUE,
            Point::Perform => symbol::PERFORM,
            Point::Result => symbol::RESULT,
            Point::Release => symbol::RELEASE,
            Point::TmfRequest | Point::TmfReturn | Point::TmfWalk => symbol::TMF_REQUEST,
            Point::TmfResponse => "iscsi_tm_done",
            Point::NexusCreate => symbol::NEXUS_CREATE,
            Point::NexusDestroy => symbol::NEXUS_DESTROY,
            Point::TmfReceived => "iscsi_tm_execute",
            Point::TmfSent => "iscsi_task_tx_done",
            Point::TmfTxStart => "iscsi_tm_tx_start",
            Point::ConnClose => symbol::CONN_CLOSE,
            Point::LioQueue => "target_sequencer_start",
            Point::LioComplete => "target_cmd_complete",
            Point::LioTmfReceived => "iscsit_handle_task_mgt_cmd",
            Point::LioTmfRequest => "transport_generic_handle_tmr",
            Point::LioTmfExecute => "target_tmr_work",
            Point::LioAbortWait => "target_put_cmd_and_wait",
            Point::LioTmfResponse => "lio_queue_tm_rsp",
            Point::LioTmfSent => "iscsit_build_task_mgt_rsp",
            Point::LioNexusCreate => "__transport_register_session",
            Point::LioNexusDestroy => "transport_deregister_session",
        }
    }
}

impl std::fmt::Display for Point {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One probe point and whether it is attached: the trace header lists them,
/// so a reader knows which signals a trace can contain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbePoint {
    /// The point: queue, uspace_send, kspace_exec, release, tsk_mgmt, ...
    pub name: Point,
    /// The tgtd function.
    pub function: String,
    /// File offset in the tgtd binary.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    pub attached: bool,
    /// Attached only inside `--sample`'s windows (absent: all the time).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sampled: bool,
    /// Why it is not attached, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

/// `--sample`: the probe set's per-command probes are attached for
/// `percent` of every `period_ms`, and detached for the rest; the TMF
/// points stay attached, with the tmf set's walk for what each TMF covers.
/// A command's latency is measured only when both its arrival and its
/// release fall inside one window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    /// 1 to 99.
    pub percent: u8,
    pub period_ms: u64,
}

impl Sampling {
    /// How long each window is open.
    pub fn open_ms(self) -> u64 {
        self.period_ms * u64::from(self.percent) / 100
    }
}

impl std::fmt::Display for Sampling {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}% of each {} ms", self.percent, self.period_ms)
    }
}

/// Whether `point` is attached, by the header's list.
pub fn attached(probes: &[ProbePoint], point: Point) -> bool {
    probes.iter().any(|p| p.name == point && p.attached)
}

/// Counters the probes keep in the kernel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCounters {
    /// Records lost because the ring buffer was full.
    pub ring_full: u64,
    /// Records not sent because tgtd's memory could not be read.
    pub read_failed: u64,
    /// TMF walks that did not see all of tgtd's task lists: those TMFs'
    /// covered sets are incomplete.
    #[serde(default)]
    pub walk_truncated: u64,
}
