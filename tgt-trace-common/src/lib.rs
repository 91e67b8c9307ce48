//! The binary interface between tgt-trace's uprobes and user space.
//!
//! Every record the probes send starts with a [`RecordHeader`]. Command and TMF
//! events are one fixed-size [`Event`]; I_T nexus creation carries the
//! initiator's session text and is a fixed-size [`NexusEvent`]. User space
//! tells them apart by `kind` and checks the length before it reads either.
//!
//! All fields are little-endian host order (BPF runs on the host), aligned, and
//! padding is explicit so that `size_of` is the same on both sides.
#![no_std]

/// What happened. The numbers are part of the recorded-trace format.
pub mod kind {
    /// `target_cmd_queue`: the transport hands a command to the tgt core (*queue*).
    pub const CMD_QUEUE: u8 = 1;
    /// `scsi_cmd_perform`: the core hands the command to its device type and
    /// backing store (*uspace-send*); from here on an abort can only be deferred.
    pub const CMD_PERFORM: u8 = 2;
    /// `target_cmd_io_done`: the result is known (*kspace_exec*).
    pub const CMD_RESULT: u8 = 3;
    /// `target_cmd_done`: the command is released; a deferred TMF response is sent here.
    pub const CMD_RELEASE: u8 = 4;
    /// `target_mgmt_request` entry (*tsk_mgmt*).
    pub const TMF_REQUEST: u8 = 5;
    /// `target_mgmt_request` return: DONE, QUEUED or FAILED.
    pub const TMF_RETURN: u8 = 6;
    /// The transport's `mgmt_end_notify` (iSCSI: `iscsi_tm_done`): the TMF response.
    pub const TMF_RESPONSE: u8 = 7;
    /// `it_nexus_create`: a [`super::NexusEvent`].
    pub const NEXUS_CREATE: u8 = 8;
    /// `it_nexus_destroy`.
    pub const NEXUS_DESTROY: u8 = 9;
    /// The iSCSI layer takes a TMF request off the wire (inside the static
    /// `iscsi_tm_execute`, where it reads the function): every TMF, including
    /// those it answers itself without the core.
    pub const TMF_RECEIVED: u8 = 10;
    /// The iSCSI layer has written a TMF response to the connection (the
    /// transmit-done path of `iscsi_tx_handler`, where it frees the task).
    pub const TMF_SENT: u8 = 11;
    /// `conn_close`: an iSCSI connection goes away; a TMF response still
    /// queued on it is freed unsent.
    pub const CONN_CLOSE: u8 = 12;
    /// The iSCSI layer starts writing a TMF response to its connection (the
    /// static `iscsi_tm_tx_start`, where it fills in the response header):
    /// the time the response was handed to the connection.
    pub const TMF_TX_START: u8 = 13;
    /// A command `target_mgmt_request` is about to find (the walk of
    /// `abort_task_set`'s lists at the entry probe, before tgtd aborts
    /// anything): its tag, LUN, nexus, `cmd->state`, and whether the TMF
    /// will wait for it (see [`super::covers`]).
    pub const TMF_COVERS: u8 = 14;
    /// The end of that walk: how many commands it found, and whether it was
    /// complete (see [`super::covers`]).
    pub const TMF_WALKED: u8 = 15;
}

/// Task-management function codes, as tgt's `usr/scsi.h` numbers them.
pub mod tmf {
    pub const ABORT_TASK: u8 = 0x0d;
    pub const ABORT_TASK_SET: u8 = 0x06;
    pub const CLEAR_ACA: u8 = 0x16;
    pub const CLEAR_TASK_SET: u8 = 0x0e;
    pub const LOGICAL_UNIT_RESET: u8 = 0x17;
}

/// tgtd's `enum mgmt_req_result`, the return value of `target_mgmt_request`.
pub mod mgmt_ret {
    pub const FAILED: i32 = -1;
    pub const DONE: i32 = 0;
    pub const QUEUED: i32 = 1;
}

/// The result tgtd gives a command it aborted: SAM's TASK ABORTED (0x40)
/// shifted right by one, as in the seed patch and tgt `usr/scsi.h`.
pub const TASK_ABORTED: i32 = 0x20;

/// SCSI task attributes as tgt stores them in `scsi_cmd.attribute`.
pub mod task_attr {
    pub const SIMPLE: u8 = 0x20;
    pub const HEAD_OF_QUEUE: u8 = 0x21;
    pub const ORDERED: u8 = 0x22;
}

/// One command or TMF event. 72 bytes.
///
/// Field use by kind (unused fields are zero):
///
/// | kind          | tid | itn_id | tag          | lun | opcode/attr | value              | cookie   | tmf_mid / function |
/// |---------------|-----|--------|--------------|-----|-------------|--------------------|----------|--------------------|
/// | CMD_QUEUE     | yes | yes    | command tag  | yes | yes         | -                  | cmd addr | -                  |
/// | CMD_PERFORM   | -   | yes    | command tag  | -   | -           | -                  | cmd addr | -                  |
/// | CMD_RESULT    | -   | yes    | command tag  | -   | -           | SCSI result        | cmd addr | waiting TMF's mid  |
/// | CMD_RELEASE   | -   | yes    | command tag  | -   | -           | SCSI result (`cmd->result`); `aux`: TMF busy count | cmd addr | waiting TMF's mid and function |
/// | TMF_REQUEST   | yes | yes    | referenced   | yes | -           | -                  | mid      | function           |
/// | TMF_RETURN    | -   | -      | -            | -   | -           | mgmt_req_result    | mid      | -                  |
/// | TMF_RESPONSE  | -   | -      | -            | -   | -           | mreq->result (errno); `aux`: [`conn_state`] | mid | function |
/// | NEXUS_DESTROY | yes | yes    | -            | -   | -           | -                  | -        | -                  |
/// | TMF_RECEIVED  | yes | yes    | referenced (`rtt`) | yes | -     | `itt` (bits)       | task (= mid) | connection; iSCSI function |
/// | TMF_SENT      | -   | -      | -            | -   | -           | iSCSI response code | task (= mid) | connection; iSCSI function; `aux`: `itt` (bits) |
/// | TMF_TX_START  | yes | yes    | -            | -   | -           | -                  | connection | -              |
/// | CONN_CLOSE    | -   | yes (0 before login) | - | - | -           | -                  | connection | -                |
/// | TMF_COVERS    | yes | command's | command tag | yes | opcode   | `cmd->state` (low 32 bits); `aux`: [`covers`] flags | mid | command address; function |
/// | TMF_WALKED    | -   | -      | -            | -   | -           | records sent; `aux`: [`covers`] flags | mid | function |
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub kind: u8,
    /// CDB byte 0.
    pub opcode: u8,
    /// Task attribute (see [`task_attr`]).
    pub attribute: u8,
    /// TMF function (see [`tmf`]).
    pub function: u8,
    /// tgtd's process id (tgid).
    pub pid: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// Target id; -1 where the probe does not see it.
    pub tid: i32,
    pub value: i32,
    /// I_T nexus id (iSCSI: the session's TSIH).
    pub itn_id: u64,
    pub tag: u64,
    /// The 8-byte SAM LUN as the transport gave it.
    pub lun: [u8; 8],
    /// `struct scsi_cmd *` for command kinds, the TMF's `mid` for TMF kinds.
    pub cookie: u64,
    /// For CMD_RESULT / CMD_RELEASE: the `mid` of the TMF waiting for this
    /// command (`cmd->mreq->mid`), 0 when none.
    pub tmf_mid: u64,
    /// CMD_RELEASE: the waiting TMF's busy count before this release.
    pub aux: i32,
    pub _pad: u32,
}

/// iSCSI task-management function codes as on the wire (RFC 7143 11.5.1),
/// which `iscsi_tm_execute` maps to tgt's codes or answers itself.
pub mod iscsi_tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// iSCSI TMF response codes (RFC 7143 11.6.1), as `iscsi_tm_done` and
/// `iscsi_tm_execute` put them in `task->result`.
pub mod iscsi_rsp {
    pub const FUNCTION_COMPLETE: u8 = 0;
    pub const TASK_DOES_NOT_EXIST: u8 = 1;
    pub const LUN_DOES_NOT_EXIST: u8 = 2;
    pub const TASK_STILL_ALLEGIANT: u8 = 3;
    pub const REASSIGNMENT_NOT_SUPPORTED: u8 = 4;
    pub const NOT_SUPPORTED: u8 = 5;
    pub const AUTHORIZATION_FAILED: u8 = 6;
    pub const REJECTED: u8 = 255;
}

/// TMF_RECEIVED's `aux` for ABORT TASK: where the referenced command was,
/// from a walk of the session's task list (`session->cmd_list`).
pub mod referenced {
    /// Not in the session's tasks.
    pub const ABSENT: i32 = 0;
    /// Received by the iSCSI layer, not yet handed to the core
    /// (`task->flags` without `TASK_in_scsi`).
    pub const HELD_BY_TRANSPORT: i32 = 1;
    /// Handed to the core.
    pub const IN_CORE: i32 = 2;
    /// The list was longer than the walk, or unreadable.
    pub const UNKNOWN: i32 = -1;
    /// Not walked: not an ABORT TASK, or the layout is unproved.
    pub const NOT_WALKED: i32 = -2;
}

/// TMF_COVERS' and TMF_WALKED's `aux`: flags.
///
/// TMF_COVERS: `tid` is the target's, `itn_id` the command's nexus, `tag`
/// and `lun` the command's, `cookie` the TMF's `mid`, `tmf_mid` the command's
/// address (`struct scsi_cmd *`), `opcode` its CDB byte 0, `value` the low 32
/// bits of `cmd->state`, `function` the TMF's.
///
/// TMF_WALKED: `cookie` the TMF's `mid`, `value` the number of TMF_COVERS
/// records the walk sent, `function` the TMF's.
pub mod covers {
    /// TMF_COVERS: `cmd_processed(cmd)` (tgt `abort_cmd`): the command was
    /// handed to the backing store, so the TMF will wait for it (`cmd->mreq
    /// = mreq`, -EBUSY); without it the command is aborted at once
    /// (TASK_ABORTED).
    pub const DEFERS: i32 = 1;
    /// TMF_WALKED: the lists were longer than the walk, or a read of tgtd's
    /// memory failed: the records sent are not the whole covered set.
    pub const TRUNCATED: i32 = 2;
    /// TMF_WALKED: no target with the TMF's tid was found (tgtd then fails
    /// the TMF without looking at any command).
    pub const NO_TARGET: i32 = 4;
    /// TMF_WALKED: the function does not walk the task lists in tgtd
    /// (CLEAR ACA, an unknown one): nothing is covered.
    pub const NOT_WALKED: i32 = 8;
}

/// TMF_RESPONSE's `aux`: whether the iSCSI connection the response is for is
/// closed, in which case `iscsi_tm_done` frees the response instead of
/// sending it.
pub mod conn_state {
    pub const OPEN: i32 = 0;
    pub const CLOSED: i32 = 1;
    /// Not read (an unverified build), or unreadable.
    pub const UNKNOWN: i32 = -1;
}

/// Room for the I_T nexus session text; iSCSI's is well under this (an IQN is
/// at most 223 bytes, and the session text adds the connection and address).
pub const NEXUS_INFO_LEN: usize = 384;

/// `it_nexus_create`: the header, and the transport's session text
/// (`Initiator: <iqn> alias: <alias>\nConnection: ...`), NUL-terminated.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NexusEvent {
    pub event: Event,
    /// Bytes of `info` that were copied, including the NUL; 0 when unreadable.
    pub info_len: u32,
    pub _pad: u32,
    pub info: [u8; NEXUS_INFO_LEN],
}

pub const EVENT_SIZE: usize = core::mem::size_of::<Event>();
pub const NEXUS_EVENT_SIZE: usize = core::mem::size_of::<NexusEvent>();

const _: () = assert!(EVENT_SIZE == 72);
const _: () = assert!(NEXUS_EVENT_SIZE == EVENT_SIZE + 8 + NEXUS_INFO_LEN);

/// Indexes into the probes' per-CPU counter array.
pub mod counter {
    /// Records that could not be reserved in the ring buffer (it was full).
    pub const RING_FULL: u32 = 0;
    /// Reads of tgtd memory that failed; the record was not sent.
    pub const READ_FAILED: u32 = 1;
    /// TMF walks (`kind::TMF_WALKED` with `covers::TRUNCATED`) that did not
    /// see the whole of tgtd's task lists.
    pub const WALK_TRUNCATED: u32 = 2;
    pub const COUNT: u32 = 3;
}

/// Byte offsets of the tgtd structure fields the probes read.
///
/// Source: tgt 1.0.85 `usr/scsi_cmnd.h`, `usr/tgtd.h`, `usr/driver.h`, x86_64
/// as Debian builds it (bookworm `tgt 1:1.0.85-1+deb12u1`); unchanged in 1.0.97.
/// User space checks the running binary before it loads probes that use them.
pub mod layout {
    /// `struct scsi_cmd`: the window `[CMD_WINDOW_START, CMD_WINDOW_END)` is read
    /// in one `bpf_probe_read_user`.
    pub const CMD_ITN_ID: usize = 120;
    pub const CMD_SCB: usize = 144;
    pub const CMD_LUN: usize = 156;
    pub const CMD_ATTRIBUTE: usize = 164;
    pub const CMD_TAG: usize = 168;
    pub const CMD_RESULT: usize = 176;
    pub const CMD_MREQ: usize = 184;
    pub const CMD_WINDOW_START: usize = CMD_ITN_ID;
    pub const CMD_WINDOW_END: usize = CMD_MREQ + 8;
    pub const CMD_WINDOW_LEN: usize = CMD_WINDOW_END - CMD_WINDOW_START;

    /// `struct mgmt_req { uint64_t mid; int busy; int function; int result; }`.
    pub const MREQ_MID: usize = 0;
    pub const MREQ_BUSY: usize = 8;
    pub const MREQ_FUNCTION: usize = 12;
    pub const MREQ_RESULT: usize = 16;
    pub const MREQ_LEN: usize = 20;

    /// `struct tgt_driver`: the function pointers tgt-trace resolves.
    pub const DRIVER_NAME: usize = 0;
    pub const DRIVER_CMD_END_NOTIFY: usize = 104;
    pub const DRIVER_MGMT_END_NOTIFY: usize = 112;
    pub const DRIVER_DEFAULT_BST: usize = 128;

    /// `struct iscsi_task.conn` (`usr/iscsi/iscsid.h`): a TMF's `mid` is the
    /// address of its iSCSI task.
    pub const ISCSI_TASK_CONN: usize = 104;
    /// `struct iscsi_connection.state`, and its `STATE_CLOSE` value.
    pub const ISCSI_CONN_STATE: usize = 0;
    pub const ISCSI_STATE_CLOSE: i32 = 10;
    /// `struct iscsi_connection.rsp.bhs`: the header of the PDU being sent;
    /// a TMF response's first two bytes are its opcode (0x22) and the F bit.
    pub const ISCSI_CONN_RSP_BHS: usize = 392;
    pub const ISCSI_TMF_RSP_OPCODE_FLAGS: u16 = 0x8022;
    /// `struct iscsi_connection.closed`: set by the first `conn_close`.
    pub const ISCSI_CONN_CLOSED: usize = 4;

    /// `struct iscsi_task` (`usr/iscsi/iscsid.h`) starts with the request's
    /// basic header segment (`struct iscsi_hdr req`, 48 bytes): opcode,
    /// flags (for a TMF, the function in the low 7 bits), the LUN at 8, the
    /// initiator task tag at 16 and, for a TMF, the referenced task tag at 20.
    pub const ISCSI_TASK_OPCODE: usize = 0;
    pub const ISCSI_TASK_FLAGS: usize = 1;
    pub const ISCSI_TASK_LUN: usize = 8;
    pub const ISCSI_TASK_ITT: usize = 16;
    pub const ISCSI_TASK_RTT: usize = 20;
    /// `struct iscsi_task.c_hlist`, linked to `session->cmd_list`;
    /// `struct iscsi_task.flags` and its `TASK_in_scsi` bit (handed to the
    /// core); `struct iscsi_session.cmd_list` (every SCSI task received on
    /// the session, from its arrival until it is freed).
    pub const ISCSI_TASK_C_HLIST: usize = 112;
    pub const ISCSI_TASK_TASK_FLAGS: usize = 160;
    pub const ISCSI_TASK_IN_SCSI: u64 = 1 << 1;
    pub const ISCSI_SESSION_CMD_LIST: usize = 96;
    /// At most this many tasks of a session are walked (tgtd's default
    /// command window per session is 128).
    pub const SESSION_TASK_WALK: u32 = 256;
    /// `struct iscsi_task.result`: the iSCSI TMF response code.
    pub const ISCSI_TASK_RESULT: usize = 168;
    /// `struct iscsi_connection.session`, and `struct iscsi_session.tsih`
    /// (the I_T nexus id tgtd's iSCSI layer passes to the core).
    pub const ISCSI_CONN_SESSION: usize = 40;
    pub const ISCSI_SESSION_TSIH: usize = 70;
    /// `struct iscsi_session.target`, and `struct iscsi_target.tid`.
    pub const ISCSI_SESSION_TARGET: usize = 56;
    pub const ISCSI_TARGET_TID: usize = 224;
    /// The iSCSI opcode of a TMF request (`ISCSI_OP_SCSI_TMFUNC`), under
    /// `ISCSI_OPCODE_MASK` (0x3f); and the function mask of its flags.
    pub const ISCSI_OP_TMF: u8 = 0x02;
    pub const ISCSI_OPCODE_MASK: u8 = 0x3f;
    pub const ISCSI_TMF_FUNCTION_MASK: u8 = 0x7f;

    /// What the TMF walk reads (tgt's `struct target`, `struct it_nexus`, `struct scsi_cmd`):
    /// `struct target.tid` and `.target_siblings` (linked to the static
    /// `target_list`, which `target_lookup` walks), `.it_nexus_list`;
    /// `struct it_nexus.itn_id`, `.cmd_list`, `.nexus_siblings`;
    /// `struct scsi_cmd.c_hlist` (linked to `itn->cmd_list`) and `.state`,
    /// whose bit `TGT_CMD_PROCESSED` is `cmd_processed()`. Proved for each
    /// build from `target_mgmt_request` and `abort_task_set`'s machine code
    /// (`tgt_trace::locate`) before the walk is switched on.
    pub const TARGET_TID: usize = 8;
    pub const TARGET_SIBLINGS: usize = 24;
    pub const TARGET_IT_NEXUS_LIST: usize = 56;
    pub const ITN_ITN_ID: usize = 0;
    pub const ITN_CMD_LIST: usize = 16;
    pub const ITN_NEXUS_SIBLINGS: usize = 40;
    pub const CMD_C_HLIST: usize = 8;
    pub const CMD_STATE: usize = 56;
    pub const CMD_PROCESSED_BIT: u64 = 1 << 1;
    /// At most this many steps (one per target, nexus or command visited)
    /// per TMF; tgtd's default command window is 128 per session, so this is
    /// over 200 busy sessions. A longer walk is reported as truncated.
    pub const TMF_WALK_STEPS: u32 = 32 * 1024;
}

/// Which saved register holds the iSCSI task at an offset probe: an index
/// into x86_64's `struct pt_regs` (arch/x86/include/asm/ptrace.h), set by
/// user space from the instruction it decoded there.
/// Where a probed function's integer arguments are at the instruction its
/// probe sits on, packed: byte `n` is the `pt_regs` index of argument `n`.
/// User space places each entry probe on the first instruction the kernel
/// emulates and proves from the machine code which register still holds
/// each argument there.
pub mod args {
    use super::pt_regs;

    /// The System V order, as at a function's first instruction.
    pub const SYSV: u64 = pack([
        pt_regs::RDI,
        pt_regs::RSI,
        pt_regs::RDX,
        pt_regs::RCX,
        pt_regs::R8,
        pt_regs::R9,
    ]);

    pub const fn pack(regs: [u8; 6]) -> u64 {
        let mut packed = 0u64;
        let mut i = 0;
        while i < 6 {
            packed |= (regs[i] as u64) << (8 * i);
            i += 1;
        }
        packed
    }

    /// The `pt_regs` index of argument `n`.
    pub const fn of(packed: u64, n: usize) -> u8 {
        (packed >> (8 * n)) as u8
    }
}

pub mod pt_regs {
    pub const R15: u8 = 0;
    pub const R14: u8 = 1;
    pub const R13: u8 = 2;
    pub const R12: u8 = 3;
    pub const RBP: u8 = 4;
    pub const RBX: u8 = 5;
    pub const R11: u8 = 6;
    pub const R10: u8 = 7;
    pub const R9: u8 = 8;
    pub const R8: u8 = 9;
    pub const RAX: u8 = 10;
    pub const RCX: u8 = 11;
    pub const RDX: u8 = 12;
    pub const RSI: u8 = 13;
    pub const RDI: u8 = 14;
}

/// The kernel's SCSI target (LIO, `drivers/target/`): what its kprobes and
/// raw tracepoints send. They reuse [`Event`] and the kinds above where LIO
/// has the same fact (a command arrives, completes; a TMF is received,
/// enters the core, is answered, is sent; a session comes and goes), with
/// kernel pointers where tgtd's events carry user-space ones. User space
/// replaces every pointer with an opaque id before an event leaves it.
pub mod lio {
    /// `target_tmr_work` (a kworker): the core executes the TMF. `cookie`:
    /// the TMF's `struct se_cmd *`; `function`: `se_tmr_req->function`.
    pub const TMF_EXECUTE: u8 = 32;
    /// `target_put_cmd_and_wait` called while that TMF executes: the TMF
    /// has marked this command aborted (`CMD_T_ABORTED`) and now waits for
    /// its release. `cookie`: the TMF's `se_cmd`; `tmf_mid`: the command's
    /// `se_cmd`; `itn_id`: its session; `tag`, `lun` (`orig_fe_lun`, as a
    /// little-endian u64), `opcode`: its own; `value`: its
    /// `transport_state`; `aux`: its `se_cmd_flags`.
    pub const ABORT_WAIT: u8 = 33;
    /// The return of that `target_put_cmd_and_wait`: the aborted command
    /// was released. `cookie`: the TMF's `se_cmd`; `tmf_mid`: the command's.
    pub const ABORT_WAITED: u8 = 34;

    /// `transport_state` bit: the command's initiator is sent TASK ABORTED
    /// (TAS), set for another session's command by a LUN RESET
    /// (`include/target/target_core_base.h`, a `#define`, so not in BTF).
    pub const CMD_T_TAS: u32 = 1 << 10;
    /// `se_cmd_flags` bit: the command is itself a TMF (`SCF_SCSI_TMR_CDB`).
    pub const SCF_SCSI_TMR_CDB: u32 = 1 << 4;

    /// `enum tcm_tmrsp_table`: the core's TMF response codes.
    pub mod rsp {
        pub const FUNCTION_FAILED: u8 = 0;
        pub const FUNCTION_COMPLETE: u8 = 1;
        pub const TASK_DOES_NOT_EXIST: u8 = 2;
        pub const LUN_DOES_NOT_EXIST: u8 = 3;
        pub const NOT_SUPPORTED: u8 = 4;
        pub const FUNCTION_REJECTED: u8 = 5;
    }

    /// Byte offsets of the kernel structure fields the probes read, found
    /// by user space in the running kernel's BTF (`/sys/kernel/btf/`) before
    /// load and set as the probes' `LIO_LAYOUT` global: nothing is compiled
    /// in. Field names are `struct_field`.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
    pub struct Layout {
        pub se_cmd_tag: u32,
        pub se_cmd_orig_fe_lun: u32,
        pub se_cmd_se_sess: u32,
        pub se_cmd_se_tmr_req: u32,
        pub se_cmd_t_task_cdb: u32,
        pub se_cmd_scsi_status: u32,
        pub se_cmd_transport_state: u32,
        pub se_cmd_se_cmd_flags: u32,
        pub se_cmd_sam_task_attr: u32,
        pub se_cmd_work: u32,
        pub se_tmr_req_function: u32,
        pub se_tmr_req_response: u32,
        pub se_tmr_req_ref_task_tag: u32,
        pub se_node_acl_initiatorname: u32,
        /// `struct iscsit_cmd.se_cmd` (iscsi_target_mod): the TMF's
        /// `se_cmd` is embedded in its iSCSI command.
        pub iscsit_cmd_se_cmd: u32,
        pub iscsit_conn_sess: u32,
        pub iscsit_session_se_sess: u32,
        /// `struct iscsit_conn.conn_state` (a u8).
        pub iscsit_conn_conn_state: u32,
        /// `struct iscsit_conn.sock`, `struct socket.sk`, and the TCP state
        /// in `struct sock` (`__sk_common.skc_state`, a u8).
        pub iscsit_conn_sock: u32,
        pub socket_sk: u32,
        pub sock_skc_state: u32,
        pub _pad: u32,
    }

    /// The TCP state of a connection both ends use (`TCP_ESTABLISHED`);
    /// after the initiator's FIN it is CLOSE_WAIT, and LIO's receive thread
    /// waits up to 2 s (`iscsit_rx_thread_wait_for_tcp`) before it notices:
    /// a response sent meanwhile goes to an initiator that has gone.
    pub const TCP_ESTABLISHED: u8 = 1;

    /// `enum iscsi_target_conn_state_table`: a connection in use. Any other
    /// state at a response means the receive thread has seen the
    /// connection go (`iscsit_take_action_for_connection_exit` sets
    /// CLEANUP_WAIT): the initiator is not there to read it.
    pub const TARG_CONN_STATE_LOGGED_IN: u8 = 5;

    /// The iSCSI basic header segment (RFC 7143 11.5): a TMF request's
    /// function is in the low 7 bits of byte 1, its LUN at 8, ITT at 16 and
    /// referenced task tag at 20; a TMF response's code is byte 2.
    pub const BHS_FLAGS: usize = 1;
    pub const BHS_RESPONSE: usize = 2;
    pub const BHS_LUN: usize = 8;
    pub const BHS_ITT: usize = 16;
    pub const BHS_RTT: usize = 20;
}
