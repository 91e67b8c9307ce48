//! tgt-trace's uprobes on tgtd.
//!
//! Each probe reads what its event needs from tgtd's structures, fills one
//! fixed-size record and submits it to the `EVENTS` ring buffer without waking
//! the reader (user space drains on a timer: a wake-up per record costs more
//! than the record). A record that cannot be reserved is counted in
//! `COUNTERS[RING_FULL]`, so a drop is never silent.
//!
//! Struct offsets: `tgt_trace_common::layout` (tgt 1.0.85 `usr/scsi_cmnd.h`,
//! `usr/tgtd.h`, x86_64). User space checks the tgtd build before loading us.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::{map, uprobe, uretprobe},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{ProbeContext, RetProbeContext},
};
use tgt_trace_common::{
    Event, NexusEvent, args, conn_state, counter, covers, iscsi_tmf, kind, layout, pt_regs,
    referenced, tmf,
};

mod lio;

/// Sized by user space (`--ring-size`) before load.
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// The `mid` of a `target_mgmt_request` call in progress, by thread, so that
/// its return probe can name the TMF it returns for.
#[map]
static TMF_IN_PROGRESS: HashMap<u64, u64> = HashMap::with_max_entries(256, 0);

/// Set by user space when the tgtd build's `iscsi_tm_done` was checked to
/// read `task->conn->state` at the offsets in `layout`: only then does the
/// response probe say whether the response was sent or dropped.
#[unsafe(no_mangle)]
static READ_CONN_STATE: u8 = 0;

/// Set by user space: the `struct pt_regs` index of the register that holds
/// the iSCSI task at the TMF-received point (`pt_regs` in the common crate).
/// The point is inside a static function, so the register is whatever the
/// compiler chose; user space decoded the instruction there to learn it.
#[unsafe(no_mangle)]
static RECEIVED_TASK_REG: u8 = pt_regs::RDI;

/// Set by user space: the `pt_regs` index of the register that holds the
/// connection at the TMF-transmit-start point (the base register of the
/// store of the response's opcode into `conn->rsp.bhs`).
#[unsafe(no_mangle)]
static TX_CONN_REG: u8 = pt_regs::RAX;

/// Set by user space when the build's code shows the session task list and
/// task flags at the offsets in `layout`: only then does the received probe
/// walk the list for ABORT TASK's referenced command.
#[unsafe(no_mangle)]
static WALK_SESSION_TASKS: u8 = 0;

/// Where each probed function's arguments are at its probe (see
/// `tgt_trace_common::args`): set by user space, which puts each entry
/// probe on the first instruction of the function the kernel emulates
/// (a single-stepped one costs a second trap per hit) and proves from the
/// machine code which register holds each argument there.
#[unsafe(no_mangle)]
static QUEUE_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static PERFORM_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static RESULT_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static RELEASE_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static RESPONSE_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static CONN_CLOSE_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static NEXUS_CREATE_ARGS: u64 = args::SYSV;
#[unsafe(no_mangle)]
static NEXUS_DESTROY_ARGS: u64 = args::SYSV;

/// Set by user space when `target_mgmt_request`'s and `abort_task_set`'s
/// machine code proved the offsets the TMF walk reads (`layout::TARGET_*`,
/// `ITN_*`, `CMD_C_HLIST`, `CMD_STATE`) and where the static `target_list`
/// is: only then does the TMF request probe walk tgtd's task lists.
#[unsafe(no_mangle)]
static WALK_TMF_COVERS: u8 = 0;

/// Set by user space: the address of tgtd's static `target_list` minus
/// that of `target_mgmt_request`, both from the binary. tgtd is position
/// independent: at the entry probe the saved instruction pointer is
/// `target_mgmt_request`'s address in the process, so the list is there
/// plus this.
#[unsafe(no_mangle)]
static TARGET_LIST_FROM_ENTRY: i64 = 0;

/// tgt 1.0.85 `struct scsi_cmd`, bytes `CMD_WINDOW_START..CMD_WINDOW_END`:
/// everything the command probes need, read in one helper call.
#[repr(C)]
#[derive(Clone, Copy)]
struct CmdWindow {
    itn_id: u64,
    _offset: u64,
    _tl: u32,
    _pad0: u32,
    scb: u64,
    _scb_len: i32,
    lun: [u8; 8],
    attribute: i32,
    tag: u64,
    result: i32,
    _pad1: u32,
    mreq: u64,
}

const _: () = {
    assert!(core::mem::size_of::<CmdWindow>() == layout::CMD_WINDOW_LEN);
    assert!(core::mem::offset_of!(CmdWindow, scb) == layout::CMD_SCB - layout::CMD_WINDOW_START);
    assert!(core::mem::offset_of!(CmdWindow, lun) == layout::CMD_LUN - layout::CMD_WINDOW_START);
    assert!(
        core::mem::offset_of!(CmdWindow, attribute)
            == layout::CMD_ATTRIBUTE - layout::CMD_WINDOW_START
    );
    assert!(core::mem::offset_of!(CmdWindow, tag) == layout::CMD_TAG - layout::CMD_WINDOW_START);
    assert!(
        core::mem::offset_of!(CmdWindow, result) == layout::CMD_RESULT - layout::CMD_WINDOW_START
    );
    assert!(core::mem::offset_of!(CmdWindow, mreq) == layout::CMD_MREQ - layout::CMD_WINDOW_START);
};

/// tgt 1.0.85 `struct mgmt_req` (`usr/tgtd.h`).
#[repr(C)]
#[derive(Clone, Copy)]
struct MgmtReq {
    mid: u64,
    busy: i32,
    function: i32,
    result: i32,
}

const _: () = {
    assert!(core::mem::offset_of!(MgmtReq, busy) == layout::MREQ_BUSY);
    assert!(core::mem::offset_of!(MgmtReq, function) == layout::MREQ_FUNCTION);
    assert!(core::mem::offset_of!(MgmtReq, result) == layout::MREQ_RESULT);
};

fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot is only touched by the CPU this program runs on.
        unsafe { *slot += 1 };
    }
}

fn emit(event: Event) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut slot) => {
            slot.write(event);
            slot.submit(BPF_RB_NO_WAKEUP as u64);
        }
        None => bump(counter::RING_FULL),
    }
}

fn header(kind: u8) -> Event {
    Event {
        kind,
        pid: (bpf_get_current_pid_tgid() >> 32) as u32,
        ts_ns: {
            // SAFETY: a helper without arguments.
            unsafe { bpf_ktime_get_ns() }
        },
        tid: -1,
        ..Event::default()
    }
}

fn read_cmd(cmd: u64) -> Result<CmdWindow, ()> {
    // SAFETY: bpf_probe_read_user copes with any address; a bad one fails.
    unsafe { bpf_probe_read_user((cmd + layout::CMD_WINDOW_START as u64) as *const CmdWindow) }
        .map_err(|_| bump(counter::READ_FAILED))
}

fn read_mreq(mreq: u64) -> Option<MgmtReq> {
    if mreq == 0 {
        return None;
    }
    // SAFETY: as in read_cmd.
    unsafe { bpf_probe_read_user(mreq as *const MgmtReq) }
        .map_err(|_| bump(counter::READ_FAILED))
        .ok()
}

fn arg(ctx: &ProbeContext, n: usize) -> u64 {
    ctx.arg::<u64>(n).unwrap_or(0)
}

/// Argument `n` where `placed` says it is at this probe.
fn arg_in(ctx: &ProbeContext, placed: &u64, n: usize) -> u64 {
    // SAFETY: a read-only global that user space sets before load.
    let packed = unsafe { core::ptr::read_volatile(placed) };
    saved_register(ctx, args::of(packed, n))
}

fn command_event(kind: u8, cmd: u64, w: &CmdWindow) -> Event {
    Event {
        itn_id: w.itn_id,
        tag: w.tag,
        cookie: cmd,
        ..header(kind)
    }
}

/// `int target_cmd_queue(int tid, struct scsi_cmd *cmd)`.
#[uprobe]
pub fn cmd_queue(ctx: ProbeContext) -> u32 {
    let cmd = arg_in(&ctx, &QUEUE_ARGS, 1);
    let Ok(w) = read_cmd(cmd) else { return 0 };
    // SAFETY: as in read_cmd; a CDB pointer tgtd set before queueing.
    let opcode = unsafe { bpf_probe_read_user(w.scb as *const u8) }.unwrap_or(0);
    emit(Event {
        tid: arg_in(&ctx, &QUEUE_ARGS, 0) as i32,
        lun: w.lun,
        opcode,
        attribute: w.attribute as u8,
        ..command_event(kind::CMD_QUEUE, cmd, &w)
    });
    0
}

/// `int scsi_cmd_perform(int host_no, struct scsi_cmd *cmd)`.
#[uprobe]
pub fn cmd_perform(ctx: ProbeContext) -> u32 {
    let cmd = arg_in(&ctx, &PERFORM_ARGS, 1);
    if let Ok(w) = read_cmd(cmd) {
        emit(command_event(kind::CMD_PERFORM, cmd, &w));
    }
    0
}

/// `void target_cmd_io_done(struct scsi_cmd *cmd, int result)`.
#[uprobe]
pub fn cmd_result(ctx: ProbeContext) -> u32 {
    let cmd = arg_in(&ctx, &RESULT_ARGS, 0);
    let result = arg_in(&ctx, &RESULT_ARGS, 1) as i32;
    let Ok(w) = read_cmd(cmd) else { return 0 };
    let tmf_mid = read_mreq(w.mreq).map_or(0, |m| m.mid);
    emit(Event {
        value: result,
        tmf_mid,
        ..command_event(kind::CMD_RESULT, cmd, &w)
    });
    0
}

/// `void target_cmd_done(struct scsi_cmd *cmd)`: a waiting TMF's response is
/// sent from here when this is its last busy command. `target_cmd_io_done`
/// stored the result in `cmd->result` before, so the lean probe set reads it
/// here and saves a probe hit per command.
#[uprobe]
pub fn cmd_release(ctx: ProbeContext) -> u32 {
    let cmd = arg_in(&ctx, &RELEASE_ARGS, 0);
    let Ok(w) = read_cmd(cmd) else { return 0 };
    let mut event = command_event(kind::CMD_RELEASE, cmd, &w);
    event.value = w.result;
    if let Some(m) = read_mreq(w.mreq) {
        event.tmf_mid = m.mid;
        event.function = m.function as u8;
        event.aux = m.busy;
    }
    emit(event);
    0
}

/// The TMF walk's state, on the request probe's stack, advanced one node
/// per `bpf_loop` step (the verifier checks the step once, not per node).
///
/// It visits what tgtd visits: `target_lookup(tid)`
/// over `target_list`, then `abort_task_set`'s
/// `list_for_each_entry(itn, &target->it_nexus_list, nexus_siblings)
/// list_for_each_entry_safe(cmd, tmp, &itn->cmd_list, c_hlist)`, and keeps
/// the commands its rule takes: `(all && itn->itn_id == itn_id) ||
/// (cmd->tag == tag && itn->itn_id == itn_id) || (lun && !memcmp(cmd->lun,
/// lun, 8))`. It runs at the entry of `target_mgmt_request`, before tgtd
/// aborts anything, so the lists are as `abort_task_set` will find them.
#[repr(C)]
struct Walk {
    mid: u64,
    itn_id: u64,
    tag: u64,
    lun: [u8; 8],
    /// `&target_list` in tgtd.
    targets: u64,
    /// The target list node last visited (phase 0), then the target.
    target_node: u64,
    target: u64,
    /// `&target->it_nexus_list`, the nexus node last visited.
    nexuses: u64,
    nexus_node: u64,
    nexus_itn_id: u64,
    /// `&itn->cmd_list`, the command node to visit next.
    cmds: u64,
    cmd_node: u64,
    tid: i32,
    found: i32,
    flags: i32,
    all: u8,
    has_lun: u8,
    function: u8,
    done: u8,
}

fn walk_failed(w: &mut Walk) -> i64 {
    w.flags |= covers::TRUNCATED;
    w.done = 1;
    1
}

/// One step of the walk; returns 1 to stop `bpf_loop`.
fn walk_step(w: &mut Walk) -> i64 {
    if w.target == 0 {
        // target_lookup(tid).
        let Some(next) = read_user::<u64>(w.target_node) else {
            return walk_failed(w);
        };
        if next == w.targets {
            w.flags |= covers::NO_TARGET;
            w.done = 1;
            return 1;
        }
        w.target_node = next;
        let target = next.wrapping_sub(layout::TARGET_SIBLINGS as u64);
        let Some(tid) = read_user::<i32>(target + layout::TARGET_TID as u64) else {
            return walk_failed(w);
        };
        if tid == w.tid {
            w.target = target;
            w.nexuses = target + layout::TARGET_IT_NEXUS_LIST as u64;
            w.nexus_node = w.nexuses;
            // No command list yet: the next step moves to the first nexus.
            w.cmds = 0;
            w.cmd_node = 0;
        }
        return 0;
    }
    if w.cmd_node == w.cmds {
        // The end of this nexus's commands: the next nexus.
        let Some(next) = read_user::<u64>(w.nexus_node) else {
            return walk_failed(w);
        };
        if next == w.nexuses {
            w.done = 1;
            return 1;
        }
        w.nexus_node = next;
        let itn = next.wrapping_sub(layout::ITN_NEXUS_SIBLINGS as u64);
        let Some(itn_id) = read_user::<u64>(itn + layout::ITN_ITN_ID as u64) else {
            return walk_failed(w);
        };
        w.nexus_itn_id = itn_id;
        w.cmds = itn + layout::ITN_CMD_LIST as u64;
        let Some(first) = read_user::<u64>(w.cmds) else {
            return walk_failed(w);
        };
        w.cmd_node = first;
        return 0;
    }
    let cmd = w.cmd_node.wrapping_sub(layout::CMD_C_HLIST as u64);
    let Ok(c) = read_cmd(cmd) else {
        return walk_failed(w);
    };
    let Some(next) = read_user::<u64>(w.cmd_node) else {
        return walk_failed(w);
    };
    w.cmd_node = next;
    let same_nexus = w.nexus_itn_id == w.itn_id;
    let covered = (w.all != 0 && same_nexus)
        || (c.tag == w.tag && same_nexus)
        || (w.has_lun != 0 && c.lun == w.lun);
    if !covered {
        return 0;
    }
    let Some(state) = read_user::<u64>(cmd + layout::CMD_STATE as u64) else {
        return walk_failed(w);
    };
    // SAFETY: as in read_cmd; a CDB pointer tgtd set before queueing.
    let opcode = unsafe { bpf_probe_read_user(c.scb as *const u8) }.unwrap_or(0);
    emit(Event {
        tid: w.tid,
        itn_id: w.nexus_itn_id,
        tag: c.tag,
        lun: c.lun,
        opcode,
        cookie: w.mid,
        tmf_mid: cmd,
        function: w.function,
        value: state as i32,
        aux: if state & layout::CMD_PROCESSED_BIT != 0 {
            covers::DEFERS
        } else {
            0
        },
        ..header(kind::TMF_COVERS)
    });
    w.found += 1;
    0
}

/// `bpf_loop`'s callback: `long (*)(u64 index, void *ctx)`.
extern "C" fn walk_callback(_index: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `Walk` on tmf_request's stack that it passed to
    // bpf_loop; nothing else holds it during the loop.
    let w = unsafe { &mut *(ctx as *mut Walk) };
    walk_step(w)
}

/// Sends a TMF_COVERS record for each command `target_mgmt_request` will
/// find, then TMF_WALKED. Per TMF only: ordinary commands never come here.
fn walk_covers(ctx: &ProbeContext, mid: u64, function: u8, lun: Option<[u8; 8]>) {
    let mut w = Walk {
        mid,
        itn_id: arg(ctx, 1),
        tag: 0,
        lun: lun.unwrap_or([0; 8]),
        targets: 0,
        target_node: 0,
        target: 0,
        nexuses: 0,
        nexus_node: 0,
        nexus_itn_id: 0,
        cmds: 0,
        cmd_node: 0,
        tid: arg(ctx, 0) as i32,
        found: 0,
        flags: 0,
        all: 0,
        has_lun: 0,
        function,
        done: 0,
    };
    // target_mgmt_request's switch: which arguments abort_task_set gets.
    match function {
        tmf::ABORT_TASK => w.tag = arg(ctx, 5),
        tmf::ABORT_TASK_SET => w.all = 1,
        tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => match lun {
            Some(_) => w.has_lun = 1,
            // A LUN tgtd will read and we could not: its matches are unknown.
            None => w.flags |= covers::TRUNCATED,
        },
        _ => {
            w.flags |= covers::NOT_WALKED;
            w.done = 1;
        }
    }
    if w.done == 0 {
        // SAFETY: `regs` is the probe's own pt_regs.
        let ip = unsafe { core::ptr::read_volatile(&(*ctx.regs).rip) };
        // SAFETY: a read-only global that user space sets before load.
        let delta = unsafe { core::ptr::read_volatile(&TARGET_LIST_FROM_ENTRY) };
        w.targets = ip.wrapping_add(delta as u64);
        w.target_node = w.targets;
        // SAFETY: bpf_loop calls `walk_callback` with `&mut w`, which lives
        // on this stack for the whole call.
        unsafe {
            aya_ebpf::helpers::generated::bpf_loop(
                layout::TMF_WALK_STEPS,
                walk_callback as *mut core::ffi::c_void,
                &mut w as *mut Walk as *mut core::ffi::c_void,
                0,
            )
        };
        if w.done == 0 {
            w.flags |= covers::TRUNCATED;
        }
    }
    if w.flags & covers::TRUNCATED != 0 {
        bump(counter::WALK_TRUNCATED);
    }
    emit(Event {
        cookie: mid,
        function,
        value: w.found,
        aux: w.flags,
        ..header(kind::TMF_WALKED)
    });
}

/// `enum mgmt_req_result target_mgmt_request(int tid, uint64_t itn_id,
/// uint64_t req_id, int function, uint8_t *lun_buf, uint64_t tag, int host_no)`.
#[uprobe]
pub fn tmf_request(ctx: ProbeContext) -> u32 {
    let mid = arg(&ctx, 2);
    let lun_buf = arg(&ctx, 4);
    let lun = if lun_buf == 0 {
        None
    } else {
        // SAFETY: as in read_cmd.
        unsafe { bpf_probe_read_user(lun_buf as *const [u8; 8]) }.ok()
    };
    let function = arg(&ctx, 3) as u8;
    let _ = TMF_IN_PROGRESS.insert(bpf_get_current_pid_tgid(), mid, 0);
    emit(Event {
        tid: arg(&ctx, 0) as i32,
        itn_id: arg(&ctx, 1),
        cookie: mid,
        function,
        lun: lun.unwrap_or([0; 8]),
        tag: arg(&ctx, 5),
        ..header(kind::TMF_REQUEST)
    });
    // SAFETY: a read-only global that user space sets before load.
    if unsafe { core::ptr::read_volatile(&WALK_TMF_COVERS) } != 0 {
        walk_covers(&ctx, mid, function, lun);
    }
    0
}

#[uretprobe]
pub fn tmf_return(ctx: RetProbeContext) -> u32 {
    let thread = bpf_get_current_pid_tgid();
    // SAFETY: the value is copied out before the entry is removed.
    let mid = unsafe { TMF_IN_PROGRESS.get(thread) }.copied().unwrap_or(0);
    let _ = TMF_IN_PROGRESS.remove(thread);
    emit(Event {
        cookie: mid,
        value: ctx.ret::<i32>(),
        ..header(kind::TMF_RETURN)
    });
    0
}

/// The transport's `int (*mgmt_end_notify)(struct mgmt_req *)`; for iSCSI the
/// static `iscsi_tm_done`, attached by file offset.
#[uprobe]
pub fn tmf_response(ctx: ProbeContext) -> u32 {
    if let Some(m) = read_mreq(arg_in(&ctx, &RESPONSE_ARGS, 0)) {
        emit(Event {
            cookie: m.mid,
            function: m.function as u8,
            value: m.result,
            aux: connection_state(m.mid),
            ..header(kind::TMF_RESPONSE)
        });
    }
    0
}

/// Whether `iscsi_tm_done` will drop this response: it frees it unsent when
/// the task's connection is closed (the initiator went away mid-TMF).
fn connection_state(task: u64) -> i32 {
    // SAFETY: a volatile read of a global user space sets before load.
    if unsafe { core::ptr::read_volatile(&READ_CONN_STATE) } == 0 || task == 0 {
        return conn_state::UNKNOWN;
    }
    // SAFETY: bpf_probe_read_user checks the address; a bad one is an error.
    let conn =
        unsafe { bpf_probe_read_user((task + layout::ISCSI_TASK_CONN as u64) as *const u64) };
    let state = conn.and_then(|conn| {
        // SAFETY: as above.
        unsafe { bpf_probe_read_user((conn + layout::ISCSI_CONN_STATE as u64) as *const i32) }
    });
    match state {
        Ok(layout::ISCSI_STATE_CLOSE) => conn_state::CLOSED,
        Ok(_) => conn_state::OPEN,
        Err(_) => conn_state::UNKNOWN,
    }
}

/// The first bytes of tgt's `struct iscsi_task` (`usr/iscsi/iscsid.h`): the
/// request's basic header segment.
#[repr(C)]
#[derive(Clone, Copy)]
struct TaskHeader {
    opcode: u8,
    flags: u8,
    _rsvd: [u8; 6],
    lun: [u8; 8],
    itt: u32,
    rtt: u32,
}

const _: () = {
    assert!(core::mem::offset_of!(TaskHeader, flags) == layout::ISCSI_TASK_FLAGS);
    assert!(core::mem::offset_of!(TaskHeader, lun) == layout::ISCSI_TASK_LUN);
    assert!(core::mem::offset_of!(TaskHeader, itt) == layout::ISCSI_TASK_ITT);
    assert!(core::mem::offset_of!(TaskHeader, rtt) == layout::ISCSI_TASK_RTT);
};

fn read_user<T>(address: u64) -> Option<T> {
    if address == 0 {
        return None;
    }
    // SAFETY: bpf_probe_read_user checks the address; a bad one is an error.
    unsafe { bpf_probe_read_user(address as *const T) }
        .map_err(|_| bump(counter::READ_FAILED))
        .ok()
}

/// The saved register `index` (a `pt_regs` index) at the probed instruction.
///
/// The verifier accepts only context loads at constant offsets, so every
/// register is loaded on its own (volatile, so that the compiler cannot fold
/// the loads into one at a computed offset) and the value chosen afterwards.
fn saved_register(ctx: &ProbeContext, index: u8) -> u64 {
    let regs = ctx.regs;
    // All fifteen are read and one is kept by a loop of compares: a `match`
    // on the index reading one field was tried, and the verifier refused
    // the program (Linux 6.18).
    // SAFETY: `regs` is the probe's own pt_regs; each read is one field.
    let all = unsafe {
        [
            core::ptr::read_volatile(&(*regs).r15),
            core::ptr::read_volatile(&(*regs).r14),
            core::ptr::read_volatile(&(*regs).r13),
            core::ptr::read_volatile(&(*regs).r12),
            core::ptr::read_volatile(&(*regs).rbp),
            core::ptr::read_volatile(&(*regs).rbx),
            core::ptr::read_volatile(&(*regs).r11),
            core::ptr::read_volatile(&(*regs).r10),
            core::ptr::read_volatile(&(*regs).r9),
            core::ptr::read_volatile(&(*regs).r8),
            core::ptr::read_volatile(&(*regs).rax),
            core::ptr::read_volatile(&(*regs).rcx),
            core::ptr::read_volatile(&(*regs).rdx),
            core::ptr::read_volatile(&(*regs).rsi),
            core::ptr::read_volatile(&(*regs).rdi),
        ]
    };
    let mut value = all[pt_regs::RDI as usize];
    for (i, v) in all.iter().enumerate() {
        if i == index as usize {
            value = *v;
        }
    }
    value
}

/// `conn->session->tsih` (the I_T nexus id) and `session->target->tid`;
/// 0 and -1 before the session exists (a connection still logging in).
fn nexus_of(conn: u64) -> (u64, i32) {
    let Some(session) = read_user::<u64>(conn + layout::ISCSI_CONN_SESSION as u64) else {
        return (0, -1);
    };
    if session == 0 {
        return (0, -1);
    }
    let tsih = read_user::<u16>(session + layout::ISCSI_SESSION_TSIH as u64).unwrap_or(0);
    let tid = read_user::<u64>(session + layout::ISCSI_SESSION_TARGET as u64)
        .and_then(|target| read_user::<i32>(target + layout::ISCSI_TARGET_TID as u64))
        .unwrap_or(-1);
    (u64::from(tsih), tid)
}

/// Where ABORT TASK's referenced command is: tgt keeps every SCSI task of a
/// session on `session->cmd_list` from its arrival (`iscsi_cmd_rx_start`)
/// until it is freed, and sets `TASK_in_scsi` in `task->flags` when it hands
/// it to the core (`iscsi_target_cmd_queue`). A bounded walk; per TMF only.
fn referenced_state(conn: u64, rtt: u32) -> i32 {
    // SAFETY: a read-only global that user space sets before load.
    if unsafe { core::ptr::read_volatile(&WALK_SESSION_TASKS) } == 0 {
        return referenced::NOT_WALKED;
    }
    let Some(session) = read_user::<u64>(conn + layout::ISCSI_CONN_SESSION as u64) else {
        return referenced::UNKNOWN;
    };
    if session == 0 {
        return referenced::UNKNOWN;
    }
    let head = session + layout::ISCSI_SESSION_CMD_LIST as u64;
    let Some(mut node) = read_user::<u64>(head) else {
        return referenced::UNKNOWN;
    };
    for _ in 0..layout::SESSION_TASK_WALK {
        if node == head {
            return referenced::ABSENT;
        }
        let task = node.wrapping_sub(layout::ISCSI_TASK_C_HLIST as u64);
        let Some(itt) = read_user::<u32>(task + layout::ISCSI_TASK_ITT as u64) else {
            return referenced::UNKNOWN;
        };
        if itt == rtt {
            let flags = read_user::<u64>(task + layout::ISCSI_TASK_TASK_FLAGS as u64).unwrap_or(0);
            return if flags & layout::ISCSI_TASK_IN_SCSI != 0 {
                referenced::IN_CORE
            } else {
                referenced::HELD_BY_TRANSPORT
            };
        }
        match read_user::<u64>(node) {
            Some(next) => node = next,
            None => return referenced::UNKNOWN,
        }
    }
    referenced::UNKNOWN
}

/// Inside the static `iscsi_tm_execute(task)` (tgt `usr/iscsi/iscsid.c`), at
/// the read of the request's function: every TMF the iSCSI layer receives,
/// before it decides whether the core sees it. Fires once per TMF.
#[uprobe]
pub fn tmf_received(ctx: ProbeContext) -> u32 {
    // SAFETY: a read-only global that user space sets before load.
    let reg = unsafe { core::ptr::read_volatile(&RECEIVED_TASK_REG) };
    let task = saved_register(&ctx, reg);
    let Some(h) = read_user::<TaskHeader>(task) else {
        return 0;
    };
    let conn = read_user::<u64>(task + layout::ISCSI_TASK_CONN as u64).unwrap_or(0);
    let (itn_id, tid) = nexus_of(conn);
    let function = h.flags & layout::ISCSI_TMF_FUNCTION_MASK;
    let state = if function == iscsi_tmf::ABORT_TASK {
        referenced_state(conn, h.rtt)
    } else {
        referenced::NOT_WALKED
    };
    emit(Event {
        tid,
        itn_id,
        cookie: task,
        tmf_mid: conn,
        function,
        aux: state,
        lun: h.lun,
        // tgtd passes `req->rtt` as the core's tag as loaded: host order.
        tag: u64::from(h.rtt),
        value: h.itt as i32,
        ..header(kind::TMF_RECEIVED)
    });
    0
}

/// At the transmit-done path of `iscsi_tx_handler` where tgtd frees a task
/// whose response PDU has been written to the socket (the NOOP-OUT, LOGOUT
/// and TMF case of the static `iscsi_task_tx_done`): filtered here to TMFs.
/// The task is the first argument of that `iscsi_free_task` call.
#[uprobe]
pub fn tmf_sent(ctx: ProbeContext) -> u32 {
    let task = arg(&ctx, 0);
    let Some(h) = read_user::<TaskHeader>(task) else {
        return 0;
    };
    if h.opcode & layout::ISCSI_OPCODE_MASK != layout::ISCSI_OP_TMF {
        return 0;
    }
    let response = read_user::<i32>(task + layout::ISCSI_TASK_RESULT as u64).unwrap_or(-1);
    let conn = read_user::<u64>(task + layout::ISCSI_TASK_CONN as u64).unwrap_or(0);
    let (itn_id, tid) = nexus_of(conn);
    emit(Event {
        tid,
        itn_id,
        cookie: task,
        tmf_mid: conn,
        function: h.flags & layout::ISCSI_TMF_FUNCTION_MASK,
        tag: u64::from(h.rtt),
        value: response,
        aux: h.itt as i32,
        ..header(kind::TMF_SENT)
    });
    0
}

/// Inside the static `iscsi_tm_tx_start` (inlined in `iscsi_tx_handler`),
/// at the store of the TMF response's opcode into the connection's response
/// header: tgtd is about to write the response to the socket. Fires once
/// per TMF response sent.
#[uprobe]
pub fn tmf_tx_start(ctx: ProbeContext) -> u32 {
    // SAFETY: a read-only global that user space sets before load.
    let reg = unsafe { core::ptr::read_volatile(&TX_CONN_REG) };
    let conn = saved_register(&ctx, reg);
    let (itn_id, tid) = nexus_of(conn);
    emit(Event {
        tid,
        itn_id,
        cookie: conn,
        ..header(kind::TMF_TX_START)
    });
    0
}

/// `void conn_close(struct iscsi_connection *conn)`: once per connection
/// (a second call returns at once on `conn->closed`, and is not sent).
#[uprobe]
pub fn conn_close(ctx: ProbeContext) -> u32 {
    let conn = arg_in(&ctx, &CONN_CLOSE_ARGS, 0);
    if read_user::<i32>(conn + layout::ISCSI_CONN_CLOSED as u64).unwrap_or(0) != 0 {
        return 0;
    }
    let (itn_id, tid) = nexus_of(conn);
    emit(Event {
        tid,
        itn_id,
        cookie: conn,
        ..header(kind::CONN_CLOSE)
    });
    0
}

/// `int it_nexus_create(int tid, uint64_t itn_id, int host_no, char *info)`.
#[uprobe]
pub fn nexus_create(ctx: ProbeContext) -> u32 {
    let Some(mut slot) = EVENTS.reserve::<NexusEvent>(0) else {
        bump(counter::RING_FULL);
        return 0;
    };
    let info = arg_in(&ctx, &NEXUS_CREATE_ARGS, 3);
    let record = slot.as_mut_ptr();
    // SAFETY: `record` points at the reserved, writable ring-buffer slot;
    // fields are written through raw pointers before it is submitted.
    unsafe {
        (*record).event = Event {
            tid: arg_in(&ctx, &NEXUS_CREATE_ARGS, 0) as i32,
            itn_id: arg_in(&ctx, &NEXUS_CREATE_ARGS, 1),
            ..header(kind::NEXUS_CREATE)
        };
        (*record)._pad = 0;
        (*record).info[0] = 0;
        (*record).info_len = if info == 0 {
            0
        } else {
            bpf_probe_read_user_str_bytes(info as *const u8, &mut (*record).info)
                .map_or(0, |s| s.len() as u32 + 1)
        };
    }
    slot.submit(BPF_RB_NO_WAKEUP as u64);
    0
}

/// `int it_nexus_destroy(int tid, uint64_t itn_id)`.
#[uprobe]
pub fn nexus_destroy(ctx: ProbeContext) -> u32 {
    emit(Event {
        tid: arg_in(&ctx, &NEXUS_DESTROY_ARGS, 0) as i32,
        itn_id: arg_in(&ctx, &NEXUS_DESTROY_ARGS, 1),
        ..header(kind::NEXUS_DESTROY)
    });
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
