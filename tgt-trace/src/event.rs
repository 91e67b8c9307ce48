//! Typed events: what the probes saw, in user-space terms.
//!
//! This is the `"type": "event"` line of the NDJSON trace and the input of the
//! matcher. Field names are part of the recorded-trace schema
//! ([`crate::SCHEMA_VERSION`]).

use serde::{Deserialize, Serialize};
use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

/// One thing that happened inside a tgtd process.
///
/// Every variant carries `ts_ns` (CLOCK_MONOTONIC, from the probe) and `pid`
/// (tgtd's process id). Commands are named by `(pid, itn_id, tag)`; `cmd` is
/// the address of tgtd's `struct scsi_cmd`, unique while the command lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Event {
    /// `target_cmd_queue`: a command enters the tgt core.
    CmdQueue {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        tag: u64,
        lun: u64,
        /// The 8 LUN bytes as the transport gave them, read big-endian (LUN 1
        /// in peripheral addressing is `0x0001000000000000`): tgtd compares
        /// LUNs as these bytes (`memcmp` in `abort_task_set`), not as the
        /// number in `lun`. Absent in traces before schema 4.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lun_raw: Option<u64>,
        opcode: u8,
        attribute: u8,
        cmd: u64,
    },
    /// `scsi_cmd_perform`: handed to the device type / backing store.
    CmdPerform {
        ts_ns: u64,
        pid: u32,
        itn_id: u64,
        tag: u64,
        cmd: u64,
    },
    /// `target_cmd_io_done`: the result is known.
    CmdResult {
        ts_ns: u64,
        pid: u32,
        itn_id: u64,
        tag: u64,
        cmd: u64,
        /// tgtd's result: a SAM status, or [`TASK_ABORTED`] (0x20).
        result: i32,
        /// The TMF waiting for this command, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tmf_mid: Option<u64>,
    },
    /// `target_cmd_done`: the command is released.
    CmdRelease {
        ts_ns: u64,
        pid: u32,
        itn_id: u64,
        tag: u64,
        cmd: u64,
        /// `cmd->result`, as `target_cmd_io_done` stored it: the lean probe
        /// set learns results here, without a probe on the result path.
        result: i32,
        /// The TMF waiting for this command, if any, with its busy count
        /// before this release: 1 means this release sends its response.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tmf: Option<Waiter>,
    },
    /// `target_mgmt_request` entry.
    TmfRequest {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        mid: u64,
        function: u8,
        /// The referenced task tag (ABORT TASK).
        tag: u64,
        lun: u64,
        /// As in `cmd_queue`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        lun_raw: Option<u64>,
    },
    /// `target_mgmt_request` return.
    TmfReturn {
        ts_ns: u64,
        pid: u32,
        mid: u64,
        /// -1 FAILED, 0 DONE, 1 QUEUED.
        ret: i32,
    },
    /// The transport's TMF response (iSCSI `iscsi_tm_done`).
    TmfResponse {
        ts_ns: u64,
        pid: u32,
        mid: u64,
        function: u8,
        /// tgtd's `mreq->result`: 0, -EINVAL (not supported), -EEXIST (no task), other (rejected).
        result: i32,
        /// The initiator's connection was closed: tgtd freed this response
        /// instead of sending it. Absent when the build's layout for this
        /// was not verified.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connection_closed: Option<bool>,
    },
    /// `it_nexus_create`.
    NexusCreate {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        /// The initiator name parsed from `info`, when the transport gives one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        initiator: Option<String>,
        /// The transport's session text, as tgtd keeps it.
        info: String,
    },
    /// `it_nexus_destroy`.
    NexusDestroy {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
    },
    /// Seen by user space, not a probe: the tgtd process is gone.
    ProcessExit { ts_ns: u64, pid: u32 },
    /// Done by user space, not a probe (`--sample`): the per-command probes
    /// were attached (`open`, stamped before the first was attached) or
    /// detached (stamped after the last was, and after the ring was
    /// drained of what they sent). `pid` is 0.
    SampleWindow { ts_ns: u64, pid: u32, open: bool },
    /// The iSCSI layer received a TMF request (inside `iscsi_tm_execute`):
    /// every TMF, including those it answers itself without the core.
    TmfReceived {
        ts_ns: u64,
        pid: u32,
        /// -1 before the session has a target (never for a TMF in practice).
        tid: i32,
        itn_id: u64,
        /// The iSCSI task's address: the `mid` the core's events name it by.
        task: u64,
        /// The connection's address (`task->conn`).
        conn: u64,
        /// The initiator task tag as tgtd loads it (the wire's bytes
        /// swapped on x86, like `tag`).
        itt: u32,
        /// The iSCSI function code (1 ABORT TASK .. 8 TASK REASSIGN).
        iscsi_function: u8,
        /// The referenced task tag, as the core would get it.
        tag: u64,
        lun: u64,
        lun_raw: u64,
        /// ABORT TASK: where the referenced command was (the probe's walk of
        /// the session's tasks: 0 absent, 1 held by the iSCSI layer, 2 in
        /// the core, -1 unknown).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        referenced: Option<i32>,
    },
    /// The iSCSI layer wrote a TMF response to the connection
    /// (`iscsi_task_tx_done`): the initiator was answered.
    TmfSent {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        task: u64,
        conn: u64,
        itt: u32,
        iscsi_function: u8,
        tag: u64,
        /// The iSCSI response code sent (0 complete, 1 no task, 5 not
        /// supported, 255 rejected, ...).
        response: u8,
    },
    /// The iSCSI layer starts writing a TMF response to the connection
    /// (`iscsi_tm_tx_start`): the moment it is handed to the socket, before
    /// the write; `tmf_sent` follows once the write is done.
    TmfTxStart {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        conn: u64,
    },
    /// A command `target_mgmt_request` will find (the `tmf` probe set's
    /// walk of tgtd's task lists at the request, before tgtd aborts
    /// anything: tgt `abort_task_set`'s lists and rule). Follows its
    /// `tmf_request`; `tmf_walked` ends the list.
    TmfCovers {
        ts_ns: u64,
        pid: u32,
        /// The TMF's `mid`.
        mid: u64,
        tid: i32,
        /// The command's nexus (another initiator's for a LUN-wide TMF).
        itn_id: u64,
        tag: u64,
        lun: u64,
        lun_raw: u64,
        opcode: u8,
        /// The command's address (`struct scsi_cmd *`).
        cmd: u64,
        /// `cmd->state` (low 32 bits): tgt's `TGT_CMD_*` bits.
        state: u32,
        /// `cmd_processed(cmd)`: in the backing store, so the TMF waits for
        /// it (tgt `abort_cmd`: `cmd->mreq = mreq`, -EBUSY); else it is
        /// aborted at once with TASK_ABORTED.
        defers: bool,
    },
    /// The end of a TMF's walk: `covered` `tmf_covers` events were sent.
    TmfWalked {
        ts_ns: u64,
        pid: u32,
        mid: u64,
        /// `tmf_covers` events sent for this TMF.
        covered: u32,
        /// The walk did not see all of tgtd's task lists (longer than it
        /// walks, or unreadable): the covered set is incomplete.
        #[serde(default, skip_serializing_if = "is_false")]
        truncated: bool,
        /// No target with the TMF's tid: tgtd fails the TMF.
        #[serde(default, skip_serializing_if = "is_false")]
        no_target: bool,
    },
    /// `conn_close`: the connection goes away; a TMF response still queued
    /// on it is freed unsent.
    ConnClose {
        ts_ns: u64,
        pid: u32,
        tid: i32,
        /// 0 for a connection that never completed its login.
        itn_id: u64,
        conn: u64,
    },
    /// LIO: the core executes a TMF (`target_tmr_work`, in a kworker).
    TmfExecute {
        ts_ns: u64,
        pid: u32,
        mid: u64,
        /// As in `tmf_request`.
        function: u8,
    },
    /// LIO: the executing TMF has marked this command aborted
    /// (`CMD_T_ABORTED`) and waits for its release
    /// (`target_put_cmd_and_wait`, from `core_tmr_abort_task` or a LUN
    /// RESET's drain).
    AbortWait {
        ts_ns: u64,
        pid: u32,
        /// The TMF's id.
        mid: u64,
        /// The command's session, tag and LUN.
        itn_id: u64,
        tag: u64,
        lun: u64,
        opcode: u8,
        /// The command's id.
        cmd: u64,
        /// Its initiator is sent TASK ABORTED (TAS: another session's
        /// command, hit by a LUN RESET, `CMD_T_TAS`).
        #[serde(default, skip_serializing_if = "is_false")]
        tas: bool,
        /// The command is itself a TMF (a LUN RESET aborts the TMFs before
        /// it: `core_tmr_drain_tmr_list`).
        #[serde(default, skip_serializing_if = "is_false")]
        is_tmf: bool,
    },
    /// LIO: the aborted command was released: the TMF's wait for it is over.
    AbortWaited {
        ts_ns: u64,
        pid: u32,
        mid: u64,
        cmd: u64,
    },
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// A TMF that waits for a command's release (`cmd->mreq`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Waiter {
    pub mid: u64,
    pub function: u8,
    pub busy: i32,
}

impl Event {
    pub fn ts_ns(&self) -> u64 {
        match *self {
            Event::CmdQueue { ts_ns, .. }
            | Event::CmdPerform { ts_ns, .. }
            | Event::CmdResult { ts_ns, .. }
            | Event::CmdRelease { ts_ns, .. }
            | Event::TmfRequest { ts_ns, .. }
            | Event::TmfReturn { ts_ns, .. }
            | Event::TmfResponse { ts_ns, .. }
            | Event::NexusCreate { ts_ns, .. }
            | Event::NexusDestroy { ts_ns, .. }
            | Event::ProcessExit { ts_ns, .. }
            | Event::SampleWindow { ts_ns, .. }
            | Event::TmfReceived { ts_ns, .. }
            | Event::TmfSent { ts_ns, .. }
            | Event::TmfTxStart { ts_ns, .. }
            | Event::ConnClose { ts_ns, .. }
            | Event::TmfCovers { ts_ns, .. }
            | Event::TmfWalked { ts_ns, .. }
            | Event::TmfExecute { ts_ns, .. }
            | Event::AbortWait { ts_ns, .. }
            | Event::AbortWaited { ts_ns, .. } => ts_ns,
        }
    }

    pub fn pid(&self) -> u32 {
        match *self {
            Event::CmdQueue { pid, .. }
            | Event::CmdPerform { pid, .. }
            | Event::CmdResult { pid, .. }
            | Event::CmdRelease { pid, .. }
            | Event::TmfRequest { pid, .. }
            | Event::TmfReturn { pid, .. }
            | Event::TmfResponse { pid, .. }
            | Event::NexusCreate { pid, .. }
            | Event::NexusDestroy { pid, .. }
            | Event::ProcessExit { pid, .. }
            | Event::SampleWindow { pid, .. }
            | Event::TmfReceived { pid, .. }
            | Event::TmfSent { pid, .. }
            | Event::TmfTxStart { pid, .. }
            | Event::ConnClose { pid, .. }
            | Event::TmfCovers { pid, .. }
            | Event::TmfWalked { pid, .. }
            | Event::TmfExecute { pid, .. }
            | Event::AbortWait { pid, .. }
            | Event::AbortWaited { pid, .. } => pid,
        }
    }

    /// The name used in the `kind` field.
    pub fn kind_name(&self) -> &'static str {
        match self {
            Event::CmdQueue { .. } => "cmd_queue",
            Event::CmdPerform { .. } => "cmd_perform",
            Event::CmdResult { .. } => "cmd_result",
            Event::CmdRelease { .. } => "cmd_release",
            Event::TmfRequest { .. } => "tmf_request",
            Event::TmfReturn { .. } => "tmf_return",
            Event::TmfResponse { .. } => "tmf_response",
            Event::NexusCreate { .. } => "nexus_create",
            Event::NexusDestroy { .. } => "nexus_destroy",
            Event::ProcessExit { .. } => "process_exit",
            Event::SampleWindow { .. } => "sample_window",
            Event::TmfReceived { .. } => "tmf_received",
            Event::TmfSent { .. } => "tmf_sent",
            Event::TmfTxStart { .. } => "tmf_tx_start",
            Event::ConnClose { .. } => "conn_close",
            Event::TmfCovers { .. } => "tmf_covers",
            Event::TmfWalked { .. } => "tmf_walked",
            Event::TmfExecute { .. } => "tmf_execute",
            Event::AbortWait { .. } => "abort_wait",
            Event::AbortWaited { .. } => "abort_waited",
        }
    }
}

/// A TMF function by name, as tgt numbers them (`usr/scsi.h`).
pub fn tmf_name(function: u8) -> &'static str {
    match function {
        tmf::ABORT_TASK => "ABORT_TASK",
        tmf::ABORT_TASK_SET => "ABORT_TASK_SET",
        tmf::CLEAR_ACA => "CLEAR_ACA",
        tmf::CLEAR_TASK_SET => "CLEAR_TASK_SET",
        tmf::LOGICAL_UNIT_RESET => "LOGICAL_UNIT_RESET",
        _ => "UNKNOWN",
    }
}

/// An iSCSI TMF function code by name (RFC 7143 11.5.1); the ones the core
/// also knows have tgt's names.
pub fn iscsi_tmf_name(function: u8) -> &'static str {
    use tgt_trace_common::iscsi_tmf as f;
    match function {
        f::ABORT_TASK => "ABORT_TASK",
        f::ABORT_TASK_SET => "ABORT_TASK_SET",
        f::CLEAR_ACA => "CLEAR_ACA",
        f::CLEAR_TASK_SET => "CLEAR_TASK_SET",
        f::LOGICAL_UNIT_RESET => "LOGICAL_UNIT_RESET",
        f::TARGET_WARM_RESET => "TARGET_WARM_RESET",
        f::TARGET_COLD_RESET => "TARGET_COLD_RESET",
        f::TASK_REASSIGN => "TASK_REASSIGN",
        _ => "UNKNOWN",
    }
}

/// The tgt function code `iscsi_tm_execute` hands the core for an iSCSI
/// function, or `None` when the iSCSI layer answers it itself.
pub fn core_function(iscsi_function: u8) -> Option<u8> {
    use tgt_trace_common::iscsi_tmf as f;
    match iscsi_function {
        f::ABORT_TASK => Some(tmf::ABORT_TASK),
        f::ABORT_TASK_SET => Some(tmf::ABORT_TASK_SET),
        f::LOGICAL_UNIT_RESET => Some(tmf::LOGICAL_UNIT_RESET),
        _ => None,
    }
}

/// An iSCSI TMF response code by name (RFC 7143 11.6.1).
pub fn iscsi_response_name(code: u8) -> &'static str {
    use tgt_trace_common::iscsi_rsp as r;
    match code {
        r::FUNCTION_COMPLETE => "FUNCTION COMPLETE",
        r::TASK_DOES_NOT_EXIST => "TASK DOES NOT EXIST",
        r::LUN_DOES_NOT_EXIST => "LUN DOES NOT EXIST",
        r::TASK_STILL_ALLEGIANT => "TASK STILL ALLEGIANT",
        r::REASSIGNMENT_NOT_SUPPORTED => "TASK ALLEGIANCE REASSIGNMENT NOT SUPPORTED",
        r::NOT_SUPPORTED => "FUNCTION NOT SUPPORTED",
        r::AUTHORIZATION_FAILED => "FUNCTION AUTHORIZATION FAILED",
        r::REJECTED => "FUNCTION REJECTED",
        _ => "UNKNOWN",
    }
}

/// The iSCSI response `iscsi_tm_done` makes of the core's `mreq->result`.
pub fn iscsi_response_of(result: i32) -> u8 {
    use tgt_trace_common::iscsi_rsp as r;
    match result.wrapping_neg() {
        0 => r::FUNCTION_COMPLETE,
        17 => r::TASK_DOES_NOT_EXIST,
        22 => r::NOT_SUPPORTED,
        _ => r::REJECTED,
    }
}

/// `target_mgmt_request`'s return value by name.
pub fn mgmt_ret_name(ret: i32) -> &'static str {
    match ret {
        mgmt_ret::FAILED => "FAILED",
        mgmt_ret::DONE => "DONE",
        mgmt_ret::QUEUED => "QUEUED",
        _ => "UNKNOWN",
    }
}

/// A TMF's `mreq->result` as the iSCSI response `iscsi_tm_done` makes of it.
pub fn response_name(result: i32) -> &'static str {
    const EEXIST: i32 = 17;
    const EINVAL: i32 = 22;
    match result.wrapping_neg() {
        0 => "FUNCTION COMPLETE",
        EEXIST => "TASK DOES NOT EXIST",
        EINVAL => "NOT SUPPORTED",
        _ => "REJECTED",
    }
}

/// True when tgtd gave the command its abort result.
pub fn is_aborted_result(result: i32) -> bool {
    result == TASK_ABORTED
}

/// Opcode classes used by the histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpClass {
    Read,
    Write,
    Other,
}

impl OpClass {
    pub fn of(opcode: u8) -> OpClass {
        match opcode {
            // READ(6), READ(10), READ(12), READ(16)
            0x08 | 0x28 | 0xa8 | 0x88 => OpClass::Read,
            // WRITE(6/10/12/16), WRITE AND VERIFY(10/12/16), WRITE SAME(10/16)
            0x0a | 0x2a | 0xaa | 0x8a | 0x2e | 0xae | 0x8e | 0x41 | 0x93 => OpClass::Write,
            _ => OpClass::Other,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            OpClass::Read => "read",
            OpClass::Write => "write",
            OpClass::Other => "other",
        }
    }
}
