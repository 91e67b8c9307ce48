//! Finds, in tgtd's machine code, the iSCSI layer's TMF points that have no
//! symbol of their own, and proves from the same code the offsets the probes
//! read there.
//!
//! tgt's iSCSI layer (`usr/iscsi/iscsid.c`) decides about TMFs in static
//! functions that gcc inlines: `iscsi_tm_execute` (answers CLEAR ACA, CLEAR
//! TASK SET, the target resets and TASK REASSIGN itself, hands the rest to
//! `target_mgmt_request`) and `iscsi_task_tx_done` (frees a task once its
//! response PDU has been written). Both are found by what tgt's source makes
//! them do next to exported functions, with a real decoder (`iced-x86`), not
//! by byte patterns:
//!
//! - **received**: `switch (req->flags & ISCSI_FLAG_TM_FUNC_MASK)` is a
//!   byte load at displacement 1 of the task, masked with 0x7f and compared
//!   with 8 (the highest function it knows, TASK REASSIGN), followed in the
//!   same code by the call to `target_mgmt_request` whose arguments are
//!   loaded from `task->req.lun` (8, fifth argument), `task->req.rtt` (20,
//!   sixth), `conn->session->tsih` (second) and `session->target->tid`
//!   (first), and by the store of the iSCSI layer's own answer to
//!   `task->result`.
//! - **sent**: the call to `iscsi_free_task` that is followed by
//!   `if (op == ISCSI_OP_LOGOUT) conn->state = STATE_CLOSE;`: a compare with 6
//!   and a store of 10 to the connection's first field.
//!
//! A point is used only when exactly one place in `.text` fits; anything
//! else is reported as missing with the reason, and the probes it would feed
//! are not attached.

use std::collections::HashMap;

use iced_x86::{Code, Decoder, DecoderOptions, Instruction, Mnemonic, OpKind, Register};
use object::{Object as _, ObjectSection as _};
use tgt_trace_common::{layout, pt_regs};

/// An offset probe inside a static function: where, and which register
/// holds the iSCSI task there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskPoint {
    /// Virtual address of the instruction.
    pub address: u64,
    /// The `pt_regs` index of the register holding the task.
    pub task_reg: u8,
}

/// What was found; each `Err` says why a point is missing.
#[derive(Debug, Clone)]
pub struct IscsiPoints {
    pub received: Result<TaskPoint, String>,
    pub sent: Result<TaskPoint, String>,
    /// The start of a TMF response's transmission; `task_reg` holds the
    /// connection there.
    pub tx_start: Result<TaskPoint, String>,
    /// `conn_close` reads `conn->closed` at 4 and `conn->session` at 40.
    pub conn_close: Result<(), String>,
}

/// How far after the function read the call to `target_mgmt_request` may be
/// (Debian's build: 43 instructions).
const RECEIVED_WINDOW: usize = 96;

/// Decodes `.text` and looks for the points. `exported` maps exported
/// function names to (address, size).
pub fn iscsi_points(
    file: &object::File<'_>,
    exported: &HashMap<String, (u64, u64)>,
) -> IscsiPoints {
    let Some(text) = file.section_by_name(".text") else {
        let reason = "the binary has no .text section".to_owned();
        return IscsiPoints {
            received: Err(reason.clone()),
            sent: Err(reason.clone()),
            tx_start: Err(reason.clone()),
            conn_close: Err(reason),
        };
    };
    let code = text.data().unwrap_or_default();
    let insns = decode(code, text.address());
    let addr = |name: &str| exported.get(name).map(|&(a, _)| a);
    IscsiPoints {
        received: match addr("target_mgmt_request") {
            Some(target) => received_point(&insns, target),
            None => Err("target_mgmt_request is not exported".to_owned()),
        },
        sent: match addr("iscsi_free_task") {
            Some(target) => sent_point(&insns, target),
            None => Err("iscsi_free_task is not exported".to_owned()),
        },
        tx_start: tx_start_point(&insns, |address| read_u16(file, address)),
        conn_close: match exported.get("conn_close") {
            Some(&(a, size)) => conn_close_reads(&insns, a, size),
            None => Err("conn_close is not exported".to_owned()),
        },
    }
}

/// Where the `tmf` probe set's walk of tgtd's task lists starts, proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmfWalk {
    /// The static `target_list`'s address minus `target_mgmt_request`'s.
    pub target_list_from_entry: i64,
}

fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
    let mut decoder = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
    let mut out = Vec::with_capacity(code.len() / 4);
    while decoder.can_decode() {
        out.push(decoder.decode());
    }
    out
}

fn calls(insn: &Instruction, target: u64) -> bool {
    insn.mnemonic() == Mnemonic::Call
        && insn.op0_kind() == OpKind::NearBranch64
        && insn.near_branch_target() == target
}

fn imm(insn: &Instruction, operand: u32) -> Option<u64> {
    match insn.op_kind(operand) {
        OpKind::Immediate8
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32
        | OpKind::Immediate32to64
        | OpKind::Immediate16 => Some(insn.immediate(operand)),
        _ => None,
    }
}

fn has_memory(insn: &Instruction) -> bool {
    (0..insn.op_count()).any(|i| insn.op_kind(i) == OpKind::Memory)
}

/// A memory operand `[base + disp]` with no index register.
fn memory_disp(insn: &Instruction) -> Option<(Register, u64)> {
    (has_memory(insn) && insn.memory_index() == Register::None)
        .then(|| (insn.memory_base(), insn.memory_displacement64()))
}

/// Whether `insn` writes the 32/64-bit register `reg` from memory at `disp`
/// (a load, or `lea` with `lea`), as when it loads a call argument.
fn loads(insn: &Instruction, reg: Register, disp: u64, lea: bool) -> bool {
    let is_lea = insn.mnemonic() == Mnemonic::Lea;
    insn.op_count() == 2
        && insn.op0_kind() == OpKind::Register
        && insn.op0_register().full_register() == reg.full_register()
        && is_lea == lea
        && memory_disp(insn).is_some_and(|(_, d)| d == disp)
}

fn pt_regs_index(reg: Register) -> Option<u8> {
    Some(match reg.full_register() {
        Register::R15 => pt_regs::R15,
        Register::R14 => pt_regs::R14,
        Register::R13 => pt_regs::R13,
        Register::R12 => pt_regs::R12,
        Register::RBP => pt_regs::RBP,
        Register::RBX => pt_regs::RBX,
        Register::R11 => pt_regs::R11,
        Register::R10 => pt_regs::R10,
        Register::R9 => pt_regs::R9,
        Register::R8 => pt_regs::R8,
        Register::RAX => pt_regs::RAX,
        Register::RCX => pt_regs::RCX,
        Register::RDX => pt_regs::RDX,
        Register::RSI => pt_regs::RSI,
        Register::RDI => pt_regs::RDI,
        _ => return None,
    })
}

/// The name of a `pt_regs` index, for people.
pub fn register_name(index: u8) -> &'static str {
    const NAMES: [&str; 15] = [
        "r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx", "rdx",
        "rsi", "rdi",
    ];
    NAMES.get(usize::from(index)).copied().unwrap_or("?")
}

fn unique<T>(mut found: Vec<T>, what: &str) -> Result<T, String> {
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(format!("{what} was not found in the machine code")),
        n => Err(format!(
            "{what} fits {n} places in the machine code; tgt-trace uses none of them"
        )),
    }
}

/// The read of the TMF function in `iscsi_tm_execute`; see the module doc.
fn received_point(insns: &[Instruction], mgmt_request: u64) -> Result<TaskPoint, String> {
    let mut found = Vec::new();
    let mut unproved = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        let reads_flags = insn.mnemonic() == Mnemonic::Movzx
            && insn.memory_size() == iced_x86::MemorySize::UInt8
            && memory_disp(insn)
                .is_some_and(|(base, d)| d == layout::ISCSI_TASK_FLAGS as u64 && base.is_gpr64());
        if !reads_flags {
            continue;
        }
        let dest = insn.op0_register().full_register();
        let next = &insns[i + 1..insns.len().min(i + 5)];
        let masked = next.iter().position(|n| {
            n.mnemonic() == Mnemonic::And
                && n.op0_kind() == OpKind::Register
                && n.op0_register().full_register() == dest
                && imm(n, 1) == Some(u64::from(layout::ISCSI_TMF_FUNCTION_MASK))
        });
        let Some(masked) = masked else { continue };
        let compared = next[masked + 1..]
            .iter()
            .any(|n| n.mnemonic() == Mnemonic::Cmp && imm(n, 1) == Some(8));
        if !compared {
            continue;
        }
        let window = &insns[i..insns.len().min(i + RECEIVED_WINDOW)];
        let Some(call) = window.iter().position(|n| calls(n, mgmt_request)) else {
            continue;
        };
        let before_call = &window[..call];
        // The arguments of target_mgmt_request(tid, itn_id, req_id, function,
        // lun_buf, tag, host_no), in the System V order.
        let proofs: [(&str, bool); 7] = [
            (
                "iscsi_task.req.lun (fifth argument, lea 8)",
                before_call
                    .iter()
                    .any(|n| loads(n, Register::R8, layout::ISCSI_TASK_LUN as u64, true)),
            ),
            (
                "iscsi_task.req.rtt (sixth argument, 20)",
                before_call
                    .iter()
                    .any(|n| loads(n, Register::R9, layout::ISCSI_TASK_RTT as u64, false)),
            ),
            (
                "iscsi_session.tsih (second argument, 70)",
                before_call.iter().any(|n| {
                    loads(n, Register::RSI, layout::ISCSI_SESSION_TSIH as u64, false)
                        && n.memory_size() == iced_x86::MemorySize::UInt16
                }),
            ),
            (
                "iscsi_target.tid (first argument, 224)",
                before_call
                    .iter()
                    .any(|n| loads(n, Register::RDI, layout::ISCSI_TARGET_TID as u64, false)),
            ),
            (
                "iscsi_connection.session (40) and iscsi_session.target (56)",
                before_call.iter().any(|n| {
                    memory_disp(n).is_some_and(|(_, d)| d == layout::ISCSI_CONN_SESSION as u64)
                }) && before_call.iter().any(|n| {
                    memory_disp(n).is_some_and(|(_, d)| d == layout::ISCSI_SESSION_TARGET as u64)
                }),
            ),
            (
                "iscsi_task.flags (160) |= TASK_in_scsi after the call",
                window[call..].iter().take(16).any(|n| {
                    memory_disp(n).is_some_and(|(_, d)| d == layout::ISCSI_TASK_TASK_FLAGS as u64)
                }) && window[call..].iter().take(16).any(|n| {
                    n.mnemonic() == Mnemonic::Or && imm(n, 1) == Some(layout::ISCSI_TASK_IN_SCSI)
                }),
            ),
            (
                "iscsi_task.conn (104) and iscsi_task.result (168)",
                window.iter().any(|n| {
                    memory_disp(n).is_some_and(|(_, d)| d == layout::ISCSI_TASK_CONN as u64)
                }) && window.iter().any(|n| {
                    n.code() == Code::Mov_rm32_r32
                        && memory_disp(n)
                            .is_some_and(|(_, d)| d == layout::ISCSI_TASK_RESULT as u64)
                }),
            ),
        ];
        let failed: Vec<&str> = proofs
            .iter()
            .filter(|(_, ok)| !ok)
            .map(|(f, _)| *f)
            .collect();
        if !failed.is_empty() {
            unproved.push(format!(
                "the TMF dispatch at {:#x} does not show {}",
                insn.ip(),
                failed.join(", ")
            ));
            continue;
        }
        if let Some(task_reg) = pt_regs_index(insn.memory_base()) {
            found.push(TaskPoint {
                address: insn.ip(),
                task_reg,
            });
        }
    }
    if found.is_empty() && !unproved.is_empty() {
        return Err(unproved.join("; "));
    }
    unique(found, "iscsi_tm_execute's read of the TMF function")
}

/// The `iscsi_free_task` call of `iscsi_task_tx_done`; see the module doc.
fn sent_point(insns: &[Instruction], free_task: u64) -> Result<TaskPoint, String> {
    let found: Vec<TaskPoint> = insns
        .iter()
        .enumerate()
        .filter(|(i, insn)| {
            if !calls(insn, free_task) {
                return false;
            }
            let next = &insns[i + 1..insns.len().min(i + 7)];
            let logout = next[..next.len().min(3)]
                .iter()
                .any(|n| n.mnemonic() == Mnemonic::Cmp && imm(n, 1) == Some(6));
            let closes = next.iter().any(|n| {
                n.mnemonic() == Mnemonic::Mov
                    && imm(n, 1) == Some(layout::ISCSI_STATE_CLOSE as u64)
                    && memory_disp(n).is_some_and(|(base, d)| {
                        d == layout::ISCSI_CONN_STATE as u64 && base.is_gpr64()
                    })
            });
            logout && closes
        })
        .map(|(_, insn)| TaskPoint {
            address: insn.ip(),
            // At a call the task is the first argument.
            task_reg: pt_regs::RDI,
        })
        .collect();
    unique(found, "iscsi_task_tx_done's iscsi_free_task call")
}

fn read_u16(file: &object::File<'_>, address: u64) -> Option<u16> {
    file.sections().find_map(|s| {
        let offset = address.checked_sub(s.address())?;
        if offset >= s.size() {
            return None;
        }
        let data = s.data().ok()?;
        let at = usize::try_from(offset).ok()?;
        Some(u16::from_le_bytes(data.get(at..at + 2)?.try_into().ok()?))
    })
}

/// `iscsi_tm_tx_start` (tgt `usr/iscsi/iscsid.c`) fills in the response
/// header in `conn->rsp.bhs`: `rsp->opcode = ISCSI_OP_SCSI_TMFUNC_RSP;
/// rsp->flags = ISCSI_FLAG_CMD_FINAL;` (one 16-bit store of 0x8022, its value
/// loaded from read-only data or immediate) and, a few instructions on,
/// `rsp->response = task->result;` (a byte store at offset 2 of the header).
/// The probe goes on the 16-bit store; its base register is the connection.
fn tx_start_point(
    insns: &[Instruction],
    word_at: impl Fn(u64) -> Option<u16>,
) -> Result<TaskPoint, String> {
    let bhs = layout::ISCSI_CONN_RSP_BHS as u64;
    let mut found = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        let Some((base, disp)) = memory_disp(insn) else {
            continue;
        };
        let header_store = insn.mnemonic() == Mnemonic::Mov
            && insn.op0_kind() == OpKind::Memory
            && insn.memory_size() == iced_x86::MemorySize::UInt16
            && disp == bhs
            && base.is_gpr64();
        if !header_store {
            continue;
        }
        let value = match insn.op1_kind() {
            OpKind::Register => {
                let source = insn.op1_register().full_register();
                insns[i.saturating_sub(6)..i].iter().rev().find_map(|n| {
                    (n.mnemonic() == Mnemonic::Movzx
                        && n.op0_register().full_register() == source
                        && n.is_ip_rel_memory_operand())
                    .then(|| word_at(n.ip_rel_memory_address()))
                    .flatten()
                })
            }
            _ => imm(insn, 1).and_then(|v| u16::try_from(v).ok()),
        };
        if value != Some(layout::ISCSI_TMF_RSP_OPCODE_FLAGS) {
            continue;
        }
        let response_store = insns[i + 1..insns.len().min(i + 8)].iter().any(|n| {
            n.mnemonic() == Mnemonic::Mov
                && n.op0_kind() == OpKind::Memory
                && n.memory_size() == iced_x86::MemorySize::UInt8
                && memory_disp(n).is_some_and(|(b, d)| b == base && d == bhs + 2)
        });
        if !response_store {
            continue;
        }
        if let Some(task_reg) = pt_regs_index(base) {
            found.push(TaskPoint {
                address: insn.ip(),
                task_reg,
            });
        }
    }
    unique(found, "iscsi_tm_tx_start's store of the response header")
}

fn conn_close_reads(insns: &[Instruction], address: u64, size: u64) -> Result<(), String> {
    let body: Vec<&Instruction> = insns
        .iter()
        .filter(|n| n.ip() >= address && n.ip() < address + size.max(1))
        .collect();
    let closed = body.iter().take(16).any(|n| {
        memory_disp(n)
            .is_some_and(|(base, d)| base == Register::RDI && d == layout::ISCSI_CONN_CLOSED as u64)
    });
    let session = body
        .iter()
        .any(|n| memory_disp(n).is_some_and(|(_, d)| d == layout::ISCSI_CONN_SESSION as u64));
    // `list_for_each_entry_safe(task, tmp, &conn->session->pending_cmd_list,
    // c_list)`: the list right after `cmd_list` in `struct iscsi_session`,
    // which is how its offset is known.
    let pending = (layout::ISCSI_SESSION_CMD_LIST + 16) as u64;
    let walks_pending = body.iter().any(|n| {
        n.mnemonic() == Mnemonic::Lea && memory_disp(n).is_some_and(|(_, d)| d == pending)
    });
    if !walks_pending {
        return Err(format!(
            "conn_close does not walk session->pending_cmd_list at offset {pending}"
        ));
    }
    match (closed, session) {
        (true, true) => Ok(()),
        (false, _) => Err(format!(
            "conn_close does not test conn->closed at offset {}",
            layout::ISCSI_CONN_CLOSED
        )),
        (_, false) => Err(format!(
            "conn_close never reads conn->session at offset {}",
            layout::ISCSI_CONN_SESSION
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(bytes: &[u8]) -> Vec<Instruction> {
        decode(bytes, 0x1000)
    }

    /// Debian's tgtd 1.0.85: `iscsi_task_tx_done`'s TMF/LOGOUT branch,
    /// `mov %r12,%rdi; call iscsi_free_task; cmp $6,%bpl; jne; movl $0xa,(%rbx)`.
    #[test]
    fn the_sent_point_is_the_free_before_the_logout_check() {
        // call rel32 to 0x2000 from 0x1003: 0x2000 - 0x1008 = 0xff8.
        let code = [
            0x4c, 0x89, 0xe7, // mov %r12,%rdi
            0xe8, 0xf8, 0x0f, 0x00, 0x00, // call 0x2000
            0x40, 0x80, 0xfd, 0x06, // cmp $0x6,%bpl
            0x75, 0x06, // jne +6
            0xc7, 0x03, 0x0a, 0x00, 0x00, 0x00, // movl $0xa,(%rbx)
        ];
        let insns = assemble(&code);
        let point = sent_point(&insns, 0x2000).expect("found");
        assert_eq!(point.address, 0x1003);
        // Without the STATE_CLOSE store it is some other free.
        let insns = assemble(&code[..14]);
        assert!(sent_point(&insns, 0x2000).is_err());
    }
}
