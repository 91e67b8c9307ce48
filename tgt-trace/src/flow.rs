//! Where a function's values come from: a small forward dataflow over its
//! x86_64 machine code (decoded by `iced-x86`), enough to say "this load is
//! 8 bytes at offset 168 of the pointer the function got as its second
//! argument" whatever registers, spills and branches the compiler chose.
//!
//! Each register and each stack slot (addressed from the stack pointer at
//! entry, so `-O0`'s `%rbp` frames and `-O2`'s `%rsp` spills look alike)
//! holds a symbolic [`Val`]; facts from different paths are met by keeping
//! what both agree on, so a fact holds on every path that reaches it.
//! Switches compiled to jump tables are followed by giving each block no
//! direct edge reaches the state at the function's indirect jumps.
//!
//! Used by `crate::proof` to prove the struct layout the probes read.

use std::collections::BTreeMap;

use iced_x86::{
    FlowControl, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind, Register,
};

/// A symbolic value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Val {
    /// The function's `n`th integer argument (System V: rdi, rsi, rdx, rcx,
    /// r8, r9), or a truncation or extension of it.
    Arg(u8),
    /// The stack pointer at entry plus this.
    Sp(i64),
    /// What was loaded from `[val + disp]`.
    Load(Box<Val>, i64),
    /// The address `val + disp` (`lea`).
    Addr(Box<Val>, i64),
    /// An element of the array at `val` (`[val + index*scale]`), loaded.
    Elem(Box<Val>),
    /// A RIP-relative address.
    Global(u64),
    /// What a call returned; the callee's address when direct.
    Ret(Option<u64>),
    Imm(u64),
    /// A base register whose value is not known (a list walk's node).
    /// `Load(Unknown, d)` is "something loaded at `d` from some pointer":
    /// enough to say what a value was compared with, never where it points.
    Unknown,
}

impl Val {
    pub fn load(base: &Val, disp: i64) -> Val {
        Val::Load(Box::new(base.clone()), disp)
    }
}

/// A memory operand `[base + disp]`, or a register or immediate operand
/// used beside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    /// Loaded into a register (`mov`, `movzx`, `movsx`, ...).
    Read,
    /// Stored to; `value` is what was stored.
    Write,
    /// Compared (`cmp`, `test`) with `value`.
    Compare,
    /// Read, changed and written back (`add $1, mem`, `inc mem`).
    Update,
    /// Its address taken (`lea`).
    Address,
}

/// One memory access whose base register's value is known.
#[derive(Debug, Clone)]
pub struct Access {
    pub ip: u64,
    pub what: Use,
    pub base: Val,
    pub disp: i64,
    /// Bytes.
    pub size: usize,
    /// The other operand's value: what was stored, what it was compared with.
    pub value: Option<Val>,
}

/// Two registers, or a register and an immediate, compared (`cmp $13,
/// %eax`, `cmp %r15, %rax`).
#[derive(Debug, Clone)]
pub struct Compare {
    pub ip: u64,
    pub a: Val,
    pub b: Val,
}

impl Compare {
    /// Whether it compares these two, in either order.
    pub fn of(&self, x: &Val, y: &Val) -> bool {
        (self.a == *x && self.b == *y) || (self.a == *y && self.b == *x)
    }
}

/// A call or a tail jump, with the argument registers' values.
#[derive(Debug, Clone)]
pub struct Call {
    pub ip: u64,
    /// The callee, when direct.
    pub target: Option<u64>,
    /// For `call *disp(%reg)`: the register's value and the displacement.
    pub via: Option<(Val, i64)>,
    pub args: [Option<Val>; 6],
}

/// What a function does with its values.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    pub accesses: Vec<Access>,
    pub compares: Vec<Compare>,
    pub calls: Vec<Call>,
}

impl Facts {
    /// Accesses of `[base + disp]` of `size` bytes (any size when 0).
    pub fn at<'a>(
        &'a self,
        what: Use,
        base: &'a Val,
        disp: usize,
        size: usize,
    ) -> impl Iterator<Item = &'a Access> + 'a {
        self.accesses.iter().filter(move |a| {
            a.what == what
                && a.base == *base
                && a.disp == disp as i64
                && (size == 0 || a.size == size)
        })
    }

    /// Whether any access of `[anything + disp]` of `size` bytes compares
    /// it with `value`.
    pub fn compared_with(&self, disp: usize, size: usize, value: &Val) -> bool {
        self.accesses.iter().any(|a| {
            a.what == Use::Compare
                && a.disp == disp as i64
                && a.size == size
                && a.value.as_ref() == Some(value)
        })
    }
}

/// Decodes `code` as 64-bit instructions starting at address `ip`.
pub fn decode(code: &[u8], ip: u64) -> Vec<Instruction> {
    let mut decoder = iced_x86::Decoder::with_ip(64, code, ip, iced_x86::DecoderOptions::NONE);
    let mut out = Vec::with_capacity(code.len() / 4);
    while decoder.can_decode() {
        out.push(decoder.decode());
    }
    out
}

/// The System V integer argument registers, in order.
pub const ARG_REGS: [Register; 6] = [
    Register::RDI,
    Register::RSI,
    Register::RDX,
    Register::RCX,
    Register::R8,
    Register::R9,
];

const CALLER_SAVED: [Register; 9] = [
    Register::RAX,
    Register::RCX,
    Register::RDX,
    Register::RSI,
    Register::RDI,
    Register::R8,
    Register::R9,
    Register::R10,
    Register::R11,
];

/// Registers and stack slots (by offset from the entry stack pointer).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct State {
    regs: BTreeMap<Register, Val>,
    slots: BTreeMap<i64, Val>,
}

impl State {
    fn entry() -> State {
        let mut regs = BTreeMap::new();
        for (i, reg) in ARG_REGS.iter().enumerate() {
            regs.insert(*reg, Val::Arg(i as u8));
        }
        regs.insert(Register::RSP, Val::Sp(0));
        State {
            regs,
            slots: BTreeMap::new(),
        }
    }

    /// What both paths agree on.
    fn meet(&mut self, other: &State) -> bool {
        let before = (self.regs.len(), self.slots.len());
        self.regs.retain(|r, v| other.regs.get(r) == Some(v));
        self.slots.retain(|s, v| other.slots.get(s) == Some(v));
        before != (self.regs.len(), self.slots.len())
    }

    fn reg(&self, reg: Register) -> Option<Val> {
        if reg == Register::None {
            return None;
        }
        self.regs.get(&reg.full_register()).cloned()
    }

    fn set(&mut self, reg: Register, val: Option<Val>) {
        let reg = reg.full_register();
        match val {
            Some(v) => {
                self.regs.insert(reg, v);
            }
            None => {
                self.regs.remove(&reg);
            }
        }
    }
}

/// The memory operand of `insn`, as (base value, displacement), when its
/// base is known; `Elem` for an indexed load from a known base.
fn memory(state: &State, insn: &Instruction) -> Option<(Val, i64)> {
    if insn.is_ip_rel_memory_operand() {
        return Some((Val::Global(insn.ip_rel_memory_address()), 0));
    }
    let disp = insn.memory_displacement64() as i64;
    let index = insn.memory_index();
    let base = state.reg(insn.memory_base());
    match (base, index) {
        // `[p + 24 - 16]` is `[p + 8]`, whichever way the compiler formed it.
        (Some(Val::Addr(base, d)), Register::None) => Some((*base, d + disp)),
        (Some(base), Register::None) => Some((base, disp)),
        (None, Register::None) if insn.memory_base() != Register::None => {
            Some((Val::Unknown, disp))
        }
        // `tgt_drivers[lid]`: an element of a known array.
        (Some(base), _) if disp == 0 => Some((Val::Elem(Box::new(base)), 0)),
        // A non-PIE array addressed by its absolute address.
        (None, index) if index != Register::None && insn.memory_base() == Register::None => {
            Some((Val::Elem(Box::new(Val::Global(disp as u64))), 0))
        }
        _ => None,
    }
}

/// `val + delta`, kept in one `Addr`.
fn offset(val: Val, delta: i64) -> Val {
    match val {
        Val::Sp(k) => Val::Sp(k + delta),
        Val::Addr(b, d) => {
            if d + delta == 0 {
                *b
            } else {
                Val::Addr(b, d + delta)
            }
        }
        other if delta == 0 => other,
        other => Val::Addr(Box::new(other), delta),
    }
}

/// The value at a memory operand: a stack slot's, or a symbolic load.
fn load(state: &State, base: &Val, disp: i64) -> Option<Val> {
    match base {
        Val::Sp(k) => state.slots.get(&(k + disp)).cloned(),
        Val::Elem(_) if disp == 0 => Some(base.clone()),
        _ => Some(Val::load(base, disp)),
    }
}

fn operand_value(state: &State, insn: &Instruction, op: u32) -> Option<Val> {
    match insn.op_kind(op) {
        OpKind::Register => state.reg(insn.op_register(op)),
        OpKind::Immediate8
        | OpKind::Immediate16
        | OpKind::Immediate32
        | OpKind::Immediate64
        | OpKind::Immediate8to16
        | OpKind::Immediate8to32
        | OpKind::Immediate8to64
        | OpKind::Immediate32to64 => Some(Val::Imm(insn.immediate(op))),
        _ => None,
    }
}

fn is_memory(insn: &Instruction, op: u32) -> bool {
    insn.op_kind(op) == OpKind::Memory
}

/// Applies one instruction to `state`, recording into `facts` when given.
fn step(
    state: &mut State,
    insn: &Instruction,
    range: &std::ops::Range<u64>,
    clobbers: &dyn Fn(u64) -> Option<Vec<Register>>,
    info: &mut InstructionInfoFactory,
    mut facts: Option<&mut Facts>,
) {
    let mnemonic = insn.mnemonic();
    let size = insn.memory_size().size();
    let mem = (0..insn.op_count())
        .any(|o| is_memory(insn, o))
        .then(|| memory(state, insn))
        .flatten();
    let mut record = |what: Use, value: Option<Val>| {
        if let (Some(f), Some((base, disp))) = (facts.as_deref_mut(), mem.clone())
            && !matches!(base, Val::Sp(_))
        {
            f.accesses.push(Access {
                ip: insn.ip(),
                what,
                base,
                disp,
                size,
                value,
            });
        }
    };
    match mnemonic {
        Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
            if insn.op_count() == 2 =>
        {
            if insn.op0_kind() == OpKind::Register {
                let value = if is_memory(insn, 1) {
                    record(Use::Read, None);
                    mem.as_ref().and_then(|(b, d)| load(state, b, *d))
                } else {
                    operand_value(state, insn, 1)
                };
                state.set(insn.op0_register(), value);
            } else if is_memory(insn, 0) {
                let value = operand_value(state, insn, 1);
                record(Use::Write, value.clone());
                if let Some((Val::Sp(k), disp)) = &mem {
                    match value {
                        Some(v) => {
                            state.slots.insert(k + disp, v);
                        }
                        None => {
                            state.slots.remove(&(k + disp));
                        }
                    }
                }
            }
            return;
        }
        Mnemonic::Lea => {
            let value = match &mem {
                Some((Val::Sp(k), d)) => Some(Val::Sp(k + d)),
                Some((Val::Global(g), _)) => Some(Val::Global(*g)),
                Some((b, d)) if insn.memory_index() == Register::None => {
                    Some(offset(b.clone(), *d))
                }
                _ => None,
            };
            record(Use::Address, None);
            state.set(insn.op0_register(), value);
            return;
        }
        Mnemonic::Cmp | Mnemonic::Test => {
            // `-O0` compares a loaded value with a variable in its frame:
            // the variable's value is what is compared.
            let slot = match &mem {
                Some((Val::Sp(k), disp)) => state.slots.get(&(k + disp)).cloned(),
                _ => None,
            };
            if let Some(a) = slot {
                let other = if is_memory(insn, 0) { 1 } else { 0 };
                if let (Some(b), Some(f)) =
                    (operand_value(state, insn, other), facts.as_deref_mut())
                {
                    f.compares.push(Compare {
                        ip: insn.ip(),
                        a,
                        b,
                    });
                }
            } else if is_memory(insn, 0) {
                record(Use::Compare, operand_value(state, insn, 1));
            } else if is_memory(insn, 1) {
                record(Use::Compare, operand_value(state, insn, 0));
            } else if let (Some(a), Some(b), Some(f)) = (
                operand_value(state, insn, 0),
                operand_value(state, insn, 1),
                facts.as_deref_mut(),
            ) {
                f.compares.push(Compare {
                    ip: insn.ip(),
                    a,
                    b,
                });
            }
            return;
        }
        Mnemonic::Push => {
            let value = operand_value(state, insn, 0);
            if let Some(Val::Sp(k)) = state.reg(Register::RSP) {
                let k = k - 8;
                match value {
                    Some(v) => state.slots.insert(k, v),
                    None => state.slots.remove(&k),
                };
                state.set(Register::RSP, Some(Val::Sp(k)));
            }
            return;
        }
        Mnemonic::Pop => {
            if let Some(Val::Sp(k)) = state.reg(Register::RSP) {
                let value = state.slots.get(&k).cloned();
                state.set(insn.op0_register(), value);
                state.set(Register::RSP, Some(Val::Sp(k + 8)));
            }
            return;
        }
        // `cmd->state & (1UL << TGT_CMD_PROCESSED)` as `-O0` computes it:
        // a bit test, then the register holds something else.
        Mnemonic::And
            if insn.op0_kind() == OpKind::Register
                && !matches!(insn.op1_kind(), OpKind::Register | OpKind::Memory) =>
        {
            if let (Some(a), Some(b), Some(f)) = (
                operand_value(state, insn, 0),
                operand_value(state, insn, 1),
                facts.as_deref_mut(),
            ) {
                f.compares.push(Compare {
                    ip: insn.ip(),
                    a,
                    b,
                });
            }
            state.set(insn.op0_register(), None);
            return;
        }
        Mnemonic::Xor
            if insn.op0_kind() == OpKind::Register
                && insn.op1_kind() == OpKind::Register
                && insn.op0_register() == insn.op1_register() =>
        {
            state.set(insn.op0_register(), Some(Val::Imm(0)));
            return;
        }
        // Pointer arithmetic: the stack pointer, and `container_of` done
        // with `sub $24, %rax` (`-O0`) as with `lea -24(%rax)`.
        Mnemonic::Sub | Mnemonic::Add
            if insn.op0_kind() == OpKind::Register
                && insn.op0_register().is_gpr64()
                && !matches!(insn.op1_kind(), OpKind::Register | OpKind::Memory) =>
        {
            let imm = insn.immediate(1) as i64;
            let delta = if mnemonic == Mnemonic::Sub { -imm } else { imm };
            let value = state.reg(insn.op0_register()).map(|v| offset(v, delta));
            state.set(insn.op0_register(), value);
            return;
        }
        _ => {}
    }
    let flow = insn.flow_control();
    // `call *%rax` / `jmp *%rax` where %rax was loaded from a struct:
    // a call through that slot (clang loads the pointer first).
    let via_register = match (flow, insn.op0_kind()) {
        (FlowControl::IndirectCall | FlowControl::IndirectBranch, OpKind::Register) => {
            match state.reg(insn.op0_register()) {
                Some(Val::Load(base, disp)) => Some((*base, disp)),
                _ => None,
            }
        }
        _ => None,
    };
    if matches!(flow, FlowControl::Call | FlowControl::IndirectCall)
        || (flow == FlowControl::IndirectBranch && (is_memory(insn, 0) || via_register.is_some()))
        || (flow == FlowControl::UnconditionalBranch
            && insn.op0_kind() == OpKind::NearBranch64
            && !range.contains(&insn.near_branch_target()))
    {
        let via = (flow != FlowControl::Call && flow != FlowControl::UnconditionalBranch)
            .then(|| via_register.or_else(|| mem.clone()))
            .flatten();
        let target = matches!(flow, FlowControl::Call | FlowControl::UnconditionalBranch)
            .then(|| insn.near_branch_target());
        if let Some(f) = facts {
            f.calls.push(Call {
                ip: insn.ip(),
                target,
                via,
                args: ARG_REGS.map(|r| state.reg(r)),
            });
        }
        if matches!(flow, FlowControl::Call | FlowControl::IndirectCall) {
            // gcc's -fipa-ra keeps values in caller-saved registers across
            // a call to a function of the same unit that does not write
            // them: only what the callee writes is lost.
            match target.and_then(clobbers) {
                Some(written) => {
                    for reg in written {
                        state.set(reg, None);
                    }
                }
                None => {
                    for reg in CALLER_SAVED {
                        state.set(reg, None);
                    }
                }
            }
            state.set(Register::RAX, Some(Val::Ret(target)));
        }
        return;
    }
    // Anything else: what it reads from or writes to memory is recorded,
    // and every register it writes is forgotten.
    if mem.is_some() {
        let writes_memory = info
            .info(insn)
            .used_memory()
            .iter()
            .any(|m| matches!(m.access(), OpAccess::ReadWrite | OpAccess::Write));
        record(
            if writes_memory {
                Use::Update
            } else {
                Use::Read
            },
            None,
        );
        if writes_memory && let Some((Val::Sp(k), disp)) = &mem {
            state.slots.remove(&(k + disp));
        }
    }
    let written: Vec<Register> = info
        .info(insn)
        .used_registers()
        .iter()
        .filter(|r| {
            matches!(
                r.access(),
                OpAccess::Write
                    | OpAccess::ReadWrite
                    | OpAccess::CondWrite
                    | OpAccess::ReadCondWrite
            )
        })
        .map(|r| r.register())
        .filter(|r| r.is_gpr())
        .collect();
    for reg in written {
        state.set(reg, None);
    }
}

/// The instructions control can go to after `insns[i]`, by direct edges.
fn successors(insns: &[Instruction], i: usize) -> Vec<usize> {
    let n = insns.len();
    let (start, end) = (insns[0].ip(), insns[n - 1].next_ip());
    let index_of = |ip: u64| insns.binary_search_by_key(&ip, |i| i.ip()).ok();
    let insn = &insns[i];
    let mut next = Vec::new();
    match insn.flow_control() {
        FlowControl::Return | FlowControl::IndirectBranch | FlowControl::Exception => {}
        FlowControl::UnconditionalBranch => {
            let t = insn.near_branch_target();
            if (start..end).contains(&t) {
                next.extend(index_of(t));
            }
        }
        FlowControl::ConditionalBranch => {
            let t = insn.near_branch_target();
            if (start..end).contains(&t) {
                next.extend(index_of(t));
            }
            next.push(i + 1);
        }
        _ => next.push(i + 1),
    }
    next.retain(|&j| j < n);
    next
}

/// Whether every path from the function's entry to the instruction at `b`
/// passes the one at `a` (an indirect jump may go to any block no direct
/// edge reaches, as for a jump table).
pub fn dominates(insns: &[Instruction], a: u64, b: u64) -> bool {
    let n = insns.len();
    let index_of = |ip: u64| insns.binary_search_by_key(&ip, |i| i.ip()).ok();
    let (Some(a), Some(b)) = (index_of(a), index_of(b)) else {
        return false;
    };
    let leaders: Vec<usize> = (1..n)
        .filter(|&i| !successors(insns, i - 1).contains(&i))
        .collect();
    let mut seen = vec![false; n];
    let mut work = vec![0usize];
    while let Some(i) = work.pop() {
        if i == a || seen[i] {
            continue;
        }
        if i == b {
            return false;
        }
        seen[i] = true;
        if insns[i].flow_control() == FlowControl::IndirectBranch {
            work.extend(leaders.iter().copied());
        }
        work.extend(successors(insns, i));
    }
    true
}

/// Follows the function made of `insns` (in address order, the first is its
/// entry) and returns what it does with its values. `clobbers` gives the
/// registers a direct callee writes, when known; else a call is taken to
/// write every caller-saved register.
pub fn analyze(insns: &[Instruction], clobbers: &dyn Fn(u64) -> Option<Vec<Register>>) -> Facts {
    let n = insns.len();
    if n == 0 {
        return Facts::default();
    }
    let successors = |i: usize| successors(insns, i);
    let mut info = InstructionInfoFactory::new();
    let mut states: Vec<Option<State>> = vec![None; n];
    states[0] = Some(State::entry());
    let mut work = vec![0usize];
    // Facts are recorded at every visit: each holds on some path through
    // the function (a loop's first iteration included, whose values the
    // meet at its head would otherwise lose). A path that arrives at a join
    // after another may go unrecorded: a fact can be missed, never made up.
    let mut facts = Facts::default();
    loop {
        while let Some(i) = work.pop() {
            let Some(mut state) = states[i].clone() else {
                continue;
            };
            step(
                &mut state,
                &insns[i],
                &(insns[0].ip()..insns[n - 1].next_ip()),
                clobbers,
                &mut info,
                Some(&mut facts),
            );
            for j in successors(i) {
                let changed = match &mut states[j] {
                    Some(existing) => existing.meet(&state),
                    slot @ None => {
                        *slot = Some(state.clone());
                        true
                    }
                };
                if changed {
                    work.push(j);
                }
            }
        }
        // Jump tables: the blocks nothing reached start from what the
        // indirect jumps agree on.
        let mut table: Option<State> = None;
        for (i, insn) in insns.iter().enumerate() {
            if insn.flow_control() == FlowControl::IndirectBranch
                && let Some(s) = &states[i]
            {
                match &mut table {
                    Some(t) => {
                        t.meet(s);
                    }
                    None => table = Some(s.clone()),
                }
            }
        }
        let Some(table) = table else { break };
        let unreached: Vec<usize> = (1..n)
            .filter(|&i| states[i].is_none() && !successors(i - 1).contains(&i))
            .filter(|&i| {
                insns[i].mnemonic() != Mnemonic::Nop && insns[i].mnemonic() != Mnemonic::Int3
            })
            .collect();
        if unreached.is_empty() {
            break;
        }
        for i in unreached {
            states[i] = Some(table.clone());
            work.push(i);
        }
    }
    facts
}

/// The caller-saved registers `insns` write (for a callee's clobbers; the
/// ABI has it restore the others, which its pushes and pops also write).
pub fn written_registers(insns: &[Instruction]) -> Vec<Register> {
    let mut info = InstructionInfoFactory::new();
    let mut out: Vec<Register> = Vec::new();
    for insn in insns {
        for r in info.info(insn).used_registers() {
            let reg = r.register().full_register();
            if CALLER_SAVED.contains(&reg)
                && matches!(
                    r.access(),
                    OpAccess::Write
                        | OpAccess::ReadWrite
                        | OpAccess::CondWrite
                        | OpAccess::ReadCondWrite
                )
                && !out.contains(&reg)
            {
                out.push(reg);
            }
        }
    }
    out
}

/// `val` as the caller sees it, given the caller's argument values at the
/// call: the callee's arguments replaced; what lives on the callee's own
/// stack has no meaning outside it.
/// An argument the caller does not know, or the callee's own frame, is
/// `Unknown`: still some pointer, never equal to a known value.
pub fn substitute(val: &Val, args: &[Option<Val>; 6]) -> Val {
    match val {
        Val::Arg(i) => args
            .get(usize::from(*i))
            .cloned()
            .flatten()
            .unwrap_or(Val::Unknown),
        Val::Sp(_) => Val::Unknown,
        Val::Load(b, d) => Val::Load(Box::new(substitute(b, args)), *d),
        Val::Addr(b, d) => Val::Addr(Box::new(substitute(b, args)), *d),
        Val::Elem(b) => Val::Elem(Box::new(substitute(b, args))),
        other => other.clone(),
    }
}

impl Facts {
    /// Adds a callee's facts, as seen from a call with `args`.
    pub fn absorb(&mut self, callee: &Facts, args: &[Option<Val>; 6]) {
        let known = |v: Val| (v != Val::Unknown).then_some(v);
        for a in &callee.accesses {
            self.accesses.push(Access {
                base: substitute(&a.base, args),
                value: a.value.as_ref().and_then(|v| known(substitute(v, args))),
                ..a.clone()
            });
        }
        for c in &callee.compares {
            self.compares.push(Compare {
                ip: c.ip,
                a: substitute(&c.a, args),
                b: substitute(&c.b, args),
            });
        }
        for c in &callee.calls {
            self.calls.push(Call {
                ip: c.ip,
                target: c.target,
                via: c.via.as_ref().map(|(v, d)| (substitute(v, args), *d)),
                args: c
                    .args
                    .clone()
                    .map(|a| a.and_then(|v| known(substitute(&v, args)))),
            });
        }
    }
}

/// The registers' values before each instruction of a function's entry
/// block, stepped from its first instruction: the block up to and including
/// its first control transfer, cut before any instruction a direct branch
/// of `insns` goes to (so each instruction of it runs once per call).
pub fn entry_block(insns: &[Instruction]) -> Vec<Vec<(Register, Val)>> {
    let Some(first) = insns.first() else {
        return Vec::new();
    };
    let range = first.ip()..insns[insns.len() - 1].next_ip();
    let targets: Vec<u64> = insns
        .iter()
        .filter(|i| {
            matches!(
                i.flow_control(),
                FlowControl::ConditionalBranch | FlowControl::UnconditionalBranch
            )
        })
        .map(|i| i.near_branch_target())
        .filter(|t| range.contains(t))
        .collect();
    let mut info = InstructionInfoFactory::new();
    let mut state = State::entry();
    let mut out = Vec::new();
    for (i, insn) in insns.iter().enumerate() {
        if i > 0 && targets.contains(&insn.ip()) {
            break;
        }
        out.push(state.regs.iter().map(|(r, v)| (*r, v.clone())).collect());
        if insn.flow_control() != FlowControl::Next {
            break;
        }
        step(&mut state, insn, &range, &|_| None, &mut info, None);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(code: &[u8]) -> Vec<Instruction> {
        super::decode(code, 0x1000)
    }

    fn no_callees(_: u64) -> Option<Vec<Register>> {
        None
    }

    /// `-O0` style: the argument goes through a stack slot before it is
    /// used as a base; the store is still seen on the second argument.
    #[test]
    fn a_value_is_followed_through_a_spill() {
        let insns = decode(&[
            0x48, 0x89, 0x74, 0x24, 0xf8, // mov %rsi,-0x8(%rsp)
            0x48, 0x8b, 0x44, 0x24, 0xf8, // mov -0x8(%rsp),%rax
            0x89, 0x90, 0xb0, 0x00, 0x00, 0x00, // mov %edx,0xb0(%rax)
            0xc3, // ret
        ]);
        let facts = analyze(&insns, &no_callees);
        let store = facts
            .at(Use::Write, &Val::Arg(1), 0xb0, 4)
            .next()
            .expect("the store through the spilled argument");
        assert_eq!(store.value, Some(Val::Arg(2)));
    }

    /// Two paths that leave different values in a register: each fact
    /// recorded at the join holds on some path that reaches it (the first
    /// to arrive), and once they have met, nothing is claimed of it. A
    /// fact can be missed (a proof then fails, and the probe is off); it
    /// is never one no path has.
    #[test]
    fn paths_meet_on_what_they_agree() {
        let insns = decode(&[
            0x85, 0xc9, // test %ecx,%ecx
            0x74, 0x05, // je +5 (to the second mov)
            0x48, 0x89, 0xf8, // mov %rdi,%rax
            0xeb, 0x03, // jmp +3 (to the load)
            0x48, 0x89, 0xf0, // mov %rsi,%rax
            0x8b, 0x50, 0x10, // mov 0x10(%rax),%edx
            0xc3, // ret
        ]);
        let facts = analyze(&insns, &no_callees);
        let bases: Vec<&Val> = facts
            .accesses
            .iter()
            .filter(|a| a.disp == 0x10)
            .map(|a| &a.base)
            .collect();
        assert!(
            bases
                .iter()
                .any(|b| **b == Val::Arg(0) || **b == Val::Arg(1)),
            "{bases:?}"
        );
        assert!(bases.contains(&&Val::Unknown), "after the meet: {bases:?}");
        assert!(
            bases
                .iter()
                .all(|b| matches!(b, Val::Arg(0) | Val::Arg(1) | Val::Unknown)),
            "{bases:?}"
        );
    }

    /// gcc's -fipa-ra: across a call to a function that writes only %rax,
    /// %rsi keeps the second argument; across an unknown call it does not.
    #[test]
    fn a_known_callee_clobbers_only_what_it_writes() {
        let insns = decode(&[
            0xe8, 0x0b, 0x00, 0x00, 0x00, // call 0x1010
            0x89, 0x86, 0xb0, 0x00, 0x00, 0x00, // mov %eax,0xb0(%rsi)
            0xc3, // ret
        ]);
        let writes_rax = |_: u64| Some(vec![Register::RAX]);
        let known = analyze(&insns, &writes_rax);
        assert!(known.at(Use::Write, &Val::Arg(1), 0xb0, 4).next().is_some());
        let unknown = analyze(&insns, &no_callees);
        assert!(
            unknown
                .at(Use::Write, &Val::Arg(1), 0xb0, 4)
                .next()
                .is_none()
        );
    }

    /// `endbr64; push %r14; mov %rdi,%rdx; je`: the entry block, with the
    /// registers before each instruction.
    #[test]
    fn the_entry_block_ends_at_its_first_branch() {
        let insns = decode(&[
            0xf3, 0x0f, 0x1e, 0xfa, // endbr64
            0x41, 0x56, // push %r14
            0x48, 0x89, 0xfa, // mov %rdi,%rdx
            0x74, 0x00, // je +0
            0xc3, // ret
        ]);
        let block = entry_block(&insns);
        assert_eq!(block.len(), 4, "up to and including the je");
        let holds = |i: usize, reg: Register| {
            block[i]
                .iter()
                .find(|(r, _)| *r == reg)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(holds(3, Register::RDX), Some(Val::Arg(0)));
        assert_eq!(holds(3, Register::RDI), Some(Val::Arg(0)));
    }
}
