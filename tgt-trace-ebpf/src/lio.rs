//! The kernel's SCSI target (LIO, Linux `drivers/target/`): kprobes on its
//! TMF path and raw tracepoints on its command path.
//!
//! LIO has two tracepoints (`target_sequencer_start`, `target_cmd_complete`)
//! and none for task management, so the TMF path is read at the functions
//! that carry it (Linux 6.1, `target_core_transport.c`, `target_core_tmr.c`,
//! `iscsi/iscsi_target.c`):
//!
//! - `iscsit_handle_task_mgt_cmd`: the iSCSI layer takes a TMF request off
//!   the wire; it answers some itself (an ABORT TASK whose task is not on
//!   the connection, a LUN it does not have) and hands the rest to the core;
//! - `transport_generic_handle_tmr`: the TMF enters the core;
//! - `target_tmr_work` (a kworker): the core executes it; every
//!   `target_put_cmd_and_wait` on that thread until it returns is the TMF
//!   waiting for a command it aborted (`core_tmr_abort_task`,
//!   `core_tmr_drain_state_list`, `core_tmr_drain_tmr_list`);
//! - `lio_queue_tm_rsp`: the core hands its response to the iSCSI layer;
//! - `iscsit_build_task_mgt_rsp`: the iSCSI layer writes the response
//!   header it then sends (the code is read back at the return).
//!
//! Offsets come from the running kernel's BTF, found by user space and set
//! in `LIO_LAYOUT` before load. Pointers go to user space as they are; it
//! replaces them with opaque ids.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
    macros::{kprobe, kretprobe, map, raw_tracepoint},
    maps::HashMap,
    programs::{ProbeContext, RawTracePointContext, RetProbeContext},
};
use tgt_trace_common::{Event, NexusEvent, conn_state, counter, kind, lio, referenced};

use crate::{EVENTS, bump, emit, header};

/// Set by user space from BTF before load.
#[unsafe(no_mangle)]
static LIO_LAYOUT: lio::Layout = lio::Layout {
    se_cmd_tag: 0,
    se_cmd_orig_fe_lun: 0,
    se_cmd_se_sess: 0,
    se_cmd_se_tmr_req: 0,
    se_cmd_t_task_cdb: 0,
    se_cmd_scsi_status: 0,
    se_cmd_transport_state: 0,
    se_cmd_se_cmd_flags: 0,
    se_cmd_sam_task_attr: 0,
    se_cmd_work: 0,
    se_tmr_req_function: 0,
    se_tmr_req_response: 0,
    se_tmr_req_ref_task_tag: 0,
    se_node_acl_initiatorname: 0,
    iscsit_cmd_se_cmd: 0,
    iscsit_conn_sess: 0,
    iscsit_session_se_sess: 0,
    iscsit_conn_conn_state: 0,
    iscsit_conn_sock: 0,
    socket_sk: 0,
    sock_skc_state: 0,
    _pad: 0,
};

/// The TMF (`se_cmd *`) each thread is executing in `target_tmr_work`.
#[map]
static LIO_EXECUTING: HashMap<u64, u64> = HashMap::with_max_entries(1024, 0);
/// The command each thread waits for in `target_put_cmd_and_wait`.
#[map]
static LIO_WAITING: HashMap<u64, u64> = HashMap::with_max_entries(1024, 0);
/// `iscsit_build_task_mgt_rsp`'s command, connection and header, by thread,
/// from its entry to its return.
#[map]
static LIO_BUILDING: HashMap<u64, [u64; 3]> = HashMap::with_max_entries(1024, 0);

fn layout() -> lio::Layout {
    // SAFETY: a read-only global that user space sets before load.
    unsafe { core::ptr::read_volatile(&LIO_LAYOUT) }
}

fn kread<T>(address: u64) -> Option<T> {
    if address == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel copes with any address; a bad one fails.
    unsafe { bpf_probe_read_kernel(address as *const T) }
        .map_err(|_| bump(counter::READ_FAILED))
        .ok()
}

fn field<T>(base: u64, offset: u32) -> Option<T> {
    if base == 0 {
        return None;
    }
    kread(base + u64::from(offset))
}

fn thread() -> u64 {
    bpf_get_current_pid_tgid()
}

/// A command's identity, as every command event carries it.
fn command_event(kind: u8, cmd: u64, l: &lio::Layout) -> Event {
    Event {
        itn_id: field(cmd, l.se_cmd_se_sess).unwrap_or(0),
        tag: field(cmd, l.se_cmd_tag).unwrap_or(0),
        cookie: cmd,
        ..header(kind)
    }
}

/// `orig_fe_lun`, as a little-endian u64 in the event's LUN bytes; only the
/// events that report a LUN read it.
fn lun(cmd: u64, l: &lio::Layout) -> [u8; 8] {
    field::<u64>(cmd, l.se_cmd_orig_fe_lun)
        .unwrap_or(0)
        .to_le_bytes()
}

/// The little-endian u32 at `at` in a basic header segment (as LIO loads
/// tags: `(__force u32)hdr->itt`).
fn bhs_u32(bhs: &[u8; 48], at: usize) -> u32 {
    u32::from_le_bytes([bhs[at], bhs[at + 1], bhs[at + 2], bhs[at + 3]])
}

fn opcode(cmd: u64, l: &lio::Layout) -> u8 {
    let cdb: u64 = field(cmd, l.se_cmd_t_task_cdb).unwrap_or(0);
    kread(cdb).unwrap_or(0)
}

/// `TP_PROTO(struct se_cmd *cmd)`: the command's CDB is set up, it is about
/// to be sequenced (`target_cmd_init_cdb`). Once per command.
#[raw_tracepoint(tracepoint = "target_sequencer_start")]
pub fn lio_cmd_start(ctx: RawTracePointContext) -> i32 {
    let cmd: u64 = ctx.arg(0);
    let l = layout();
    let attribute: u32 = field(cmd, l.se_cmd_sam_task_attr).unwrap_or(0);
    emit(Event {
        opcode: opcode(cmd, &l),
        attribute: attribute as u8,
        lun: lun(cmd, &l),
        ..command_event(kind::CMD_QUEUE, cmd, &l)
    });
    0
}

/// `TP_PROTO(struct se_cmd *cmd)`: the status is handed to the fabric
/// (also TASK ABORTED for an aborted command when TAS says so).
#[raw_tracepoint(tracepoint = "target_cmd_complete")]
pub fn lio_cmd_complete(ctx: RawTracePointContext) -> i32 {
    let cmd: u64 = ctx.arg(0);
    let l = layout();
    let status: u8 = field(cmd, l.se_cmd_scsi_status).unwrap_or(0);
    emit(Event {
        value: i32::from(status),
        ..command_event(kind::CMD_RESULT, cmd, &l)
    });
    0
}

fn karg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// `int iscsit_handle_task_mgt_cmd(struct iscsit_conn *conn, struct
/// iscsit_cmd *cmd, unsigned char *buf)`: `buf` is the request's header.
#[kprobe]
pub fn lio_tmf_received(ctx: ProbeContext) -> u32 {
    let l = layout();
    let (conn, cmd, buf) = (karg(&ctx, 0), karg(&ctx, 1), karg(&ctx, 2));
    let Some(bhs) = kread::<[u8; 48]>(buf) else {
        return 0;
    };
    let sess: u64 = field(conn, l.iscsit_conn_sess).unwrap_or(0);
    let mut wire_lun = [0u8; 8];
    wire_lun.copy_from_slice(&bhs[lio::BHS_LUN..lio::BHS_LUN + 8]);
    emit(Event {
        function: bhs[lio::BHS_FLAGS] & 0x7f,
        itn_id: field(sess, l.iscsit_session_se_sess).unwrap_or(0),
        // As the core stores it: `se_tmr->ref_task_tag = (__force u32)hdr->rtt`.
        tag: u64::from(bhs_u32(&bhs, lio::BHS_RTT)),
        lun: wire_lun,
        value: bhs_u32(&bhs, lio::BHS_ITT) as i32,
        cookie: cmd + u64::from(l.iscsit_cmd_se_cmd),
        tmf_mid: conn,
        aux: referenced::NOT_WALKED,
        ..header(kind::TMF_RECEIVED)
    });
    0
}

/// `int transport_generic_handle_tmr(struct se_cmd *cmd)`: the TMF enters
/// the core, which queues `target_tmr_work`.
#[kprobe]
pub fn lio_tmf_request(ctx: ProbeContext) -> u32 {
    let l = layout();
    let cmd = karg(&ctx, 0);
    let tmr: u64 = field(cmd, l.se_cmd_se_tmr_req).unwrap_or(0);
    emit(Event {
        function: field(tmr, l.se_tmr_req_function).unwrap_or(0),
        tag: field(tmr, l.se_tmr_req_ref_task_tag).unwrap_or(0),
        lun: lun(cmd, &l),
        ..command_event(kind::TMF_REQUEST, cmd, &l)
    });
    0
}

/// `static void target_tmr_work(struct work_struct *work)`, `work` being
/// the TMF's `se_cmd.work`.
#[kprobe]
pub fn lio_tmf_execute(ctx: ProbeContext) -> u32 {
    let l = layout();
    let cmd = karg(&ctx, 0).wrapping_sub(u64::from(l.se_cmd_work));
    let _ = LIO_EXECUTING.insert(thread(), cmd, 0);
    let tmr: u64 = field(cmd, l.se_cmd_se_tmr_req).unwrap_or(0);
    emit(Event {
        function: field(tmr, l.se_tmr_req_function).unwrap_or(0),
        cookie: cmd,
        ..header(lio::TMF_EXECUTE)
    });
    0
}

#[kretprobe]
pub fn lio_tmf_executed(_ctx: RetProbeContext) -> u32 {
    let _ = LIO_EXECUTING.remove(thread());
    0
}

/// `void target_put_cmd_and_wait(struct se_cmd *cmd)`, on a thread that is
/// executing a TMF: that TMF aborted `cmd` and waits for its release. Other
/// callers (session shutdown) are not sent.
#[kprobe]
pub fn lio_abort_wait(ctx: ProbeContext) -> u32 {
    let me = thread();
    // SAFETY: a value copied out at once; the map is only written by this thread's key.
    let Some(tmf) = (unsafe { LIO_EXECUTING.get(me) }).copied() else {
        return 0;
    };
    let l = layout();
    let cmd = karg(&ctx, 0);
    let _ = LIO_WAITING.insert(me, cmd, 0);
    let state: u32 = field(cmd, l.se_cmd_transport_state).unwrap_or(0);
    let flags: u32 = field(cmd, l.se_cmd_se_cmd_flags).unwrap_or(0);
    emit(Event {
        opcode: opcode(cmd, &l),
        value: state as i32,
        aux: flags as i32,
        cookie: tmf,
        tmf_mid: cmd,
        lun: lun(cmd, &l),
        ..command_event(lio::ABORT_WAIT, cmd, &l)
    });
    0
}

#[kretprobe]
pub fn lio_abort_waited(_ctx: RetProbeContext) -> u32 {
    let me = thread();
    // SAFETY: as in lio_abort_wait.
    let Some(cmd) = (unsafe { LIO_WAITING.get(me) }).copied() else {
        return 0;
    };
    let _ = LIO_WAITING.remove(me);
    // SAFETY: as above.
    let tmf = unsafe { LIO_EXECUTING.get(me) }.copied().unwrap_or(0);
    emit(Event {
        cookie: tmf,
        tmf_mid: cmd,
        ..header(lio::ABORT_WAITED)
    });
    0
}

/// `static int lio_queue_tm_rsp(struct se_cmd *se_cmd)`: the iSCSI fabric's
/// `queue_tm_rsp`, where the core hands over its response
/// (`se_tmr_req->response`, `enum tcm_tmrsp_table`).
#[kprobe]
pub fn lio_tmf_response(ctx: ProbeContext) -> u32 {
    let l = layout();
    let cmd = karg(&ctx, 0);
    let tmr: u64 = field(cmd, l.se_cmd_se_tmr_req).unwrap_or(0);
    let response: u8 = field(tmr, l.se_tmr_req_response).unwrap_or(0xff);
    emit(Event {
        function: field(tmr, l.se_tmr_req_function).unwrap_or(0),
        value: i32::from(response),
        cookie: cmd,
        aux: conn_state::UNKNOWN,
        ..header(kind::TMF_RESPONSE)
    });
    0
}

/// `void iscsit_build_task_mgt_rsp(struct iscsit_cmd *cmd, struct
/// iscsit_conn *conn, struct iscsi_tm_rsp *hdr)`: the header is written
/// by the function; it is read at the return.
#[kprobe]
pub fn lio_tmf_build(ctx: ProbeContext) -> u32 {
    let saved = [karg(&ctx, 0), karg(&ctx, 1), karg(&ctx, 2)];
    let _ = LIO_BUILDING.insert(thread(), saved, 0);
    0
}

#[kretprobe]
pub fn lio_tmf_sent(_ctx: RetProbeContext) -> u32 {
    let me = thread();
    // SAFETY: as in lio_abort_wait.
    let Some([cmd, conn, hdr]) = (unsafe { LIO_BUILDING.get(me) }).copied() else {
        return 0;
    };
    let _ = LIO_BUILDING.remove(me);
    let Some(bhs) = kread::<[u8; 48]>(hdr) else {
        return 0;
    };
    let l = layout();
    let se_cmd = cmd + u64::from(l.iscsit_cmd_se_cmd);
    let tmr: u64 = field(se_cmd, l.se_cmd_se_tmr_req).unwrap_or(0);
    let itt = bhs_u32(&bhs, lio::BHS_ITT);
    let sess: u64 = field(conn, l.iscsit_conn_sess).unwrap_or(0);
    let sock: u64 = field(conn, l.iscsit_conn_sock).unwrap_or(0);
    let sk: u64 = field(sock, l.socket_sk).unwrap_or(0);
    emit(Event {
        function: field(tmr, l.se_tmr_req_function).unwrap_or(0),
        // And whether the initiator has closed its end (TCP state).
        opcode: field(sk, l.sock_skc_state).unwrap_or(0),
        // Whether the initiator is still there to read it.
        attribute: field(conn, l.iscsit_conn_conn_state).unwrap_or(0),
        itn_id: field(sess, l.iscsit_session_se_sess).unwrap_or(0),
        value: i32::from(bhs[lio::BHS_RESPONSE]),
        cookie: se_cmd,
        tmf_mid: conn,
        aux: itt as i32,
        ..header(kind::TMF_SENT)
    });
    0
}

/// `void __transport_register_session(struct se_portal_group *se_tpg,
/// struct se_node_acl *se_nacl, struct se_session *se_sess, void
/// *fabric_sess_ptr)`: a session (I_T nexus) starts; its initiator's name.
#[kprobe]
pub fn lio_session_up(ctx: ProbeContext) -> u32 {
    let l = layout();
    let (nacl, sess) = (karg(&ctx, 1), karg(&ctx, 2));
    let Some(mut slot) = EVENTS.reserve::<NexusEvent>(0) else {
        bump(counter::RING_FULL);
        return 0;
    };
    let record = slot.as_mut_ptr();
    // SAFETY: `record` points at the reserved, writable ring-buffer slot;
    // fields are written through raw pointers before it is submitted.
    unsafe {
        (*record).event = Event {
            itn_id: sess,
            ..header(kind::NEXUS_CREATE)
        };
        (*record)._pad = 0;
        (*record).info[0] = 0;
        (*record).info_len = if nacl == 0 {
            0
        } else {
            bpf_probe_read_kernel_str_bytes(
                (nacl + u64::from(l.se_node_acl_initiatorname)) as *const u8,
                &mut (*record).info,
            )
            .map_or(0, |s| s.len() as u32 + 1)
        };
    }
    slot.submit(aya_ebpf::bindings::BPF_RB_NO_WAKEUP as u64);
    0
}

/// `void transport_deregister_session(struct se_session *se_sess)`.
#[kprobe]
pub fn lio_session_down(ctx: ProbeContext) -> u32 {
    emit(Event {
        itn_id: karg(&ctx, 0),
        ..header(kind::NEXUS_DESTROY)
    });
    0
}
