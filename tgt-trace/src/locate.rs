//! Finds, in tgtd's machine code, the iSCSI layer's TMF points that have no
//! symbol of their own, and proves from the same code the offsets the probes
//! read there.
//!
//! tgt's iSCSI layer (`usr/iscsi/iscsid.c`) decides about TMFs in static
//! functions that compilers inline: `iscsi_task_tx_done` (frees a task once
//! its response PDU has been written) and `iscsi_tm_tx_start` (fills in the
//! response header). They are found by what tgt's source makes them do
//! next to exported functions, with a real decoder (`iced-x86`), not by byte
//! patterns:
//!
//! - **sent**: the call to `iscsi_free_task` that is followed by
//!   `if (op == ISCSI_OP_LOGOUT) conn->state = STATE_CLOSE;`: a compare with 6
//!   and a store of 10 to the connection's first field.
//! - **tx start**: the 16-bit store of the response's opcode and flags into
//!   `conn->rsp.bhs`, followed by the byte store of the response code.
//!
//! (The received point, `conn_close`'s offsets and the TMF walk are proved
//! on the dataflow of `crate::proof`, which follows values whatever the
//! compiler did with them.)
//!
//! A point is used only when exactly one place in `.text` fits; anything
//! else is reported as missing with the reason, and the probes it would feed
//! are not attached.

use std::collections::HashMap;

use iced_x86::{Instruction, Mnemonic, OpKind, Register};
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
    pub sent: Result<TaskPoint, String>,
    /// The start of a TMF response's transmission; `task_reg` holds the
    /// connection there.
    pub tx_start: Result<TaskPoint, String>,
}

/// Looks for the points in `.text`, decoded once for the whole inspection
/// (`crate::proof::Code`). `exported` maps exported function names to
/// (address, size).
pub fn iscsi_points(
    file: &object::File<'_>,
    insns: &[Instruction],
    exported: &HashMap<String, (u64, u64)>,
) -> IscsiPoints {
    let addr = |name: &str| exported.get(name).map(|&(a, _)| a);
    IscsiPoints {
        sent: match addr("iscsi_free_task") {
            Some(target) => sent_point(insns, target),
            None => Err("iscsi_free_task is not exported".to_owned()),
        },
        tx_start: tx_start_point(insns, |address| read_u16(file, address)),
    }
}

/// Where the `tmf` probe set's walk of tgtd's task lists starts, proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TmfWalk {
    /// The static `target_list`'s address minus `target_mgmt_request`'s.
    pub target_list_from_entry: i64,
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

pub(crate) fn pt_regs_index(reg: Register) -> Option<u8> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assemble(bytes: &[u8]) -> Vec<Instruction> {
        crate::flow::decode(bytes, 0x1000)
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
