//! The struct layout the probes read, proved field by field from tgtd's own
//! machine code, in the context tgt's source gives each field.
//!
//! A probe that reads `cmd->tag` at the wrong offset produces plausible
//! garbage, so no offset is trusted on a build id or a byte pattern: each is
//! shown to be what the code does with the value tgt's source says it does.
//! [`crate::flow`] follows each function's values (arguments, spills,
//! loads); a field is proved when the access it names is there, at the
//! offset `tgt_trace_common::layout` gives, on the value the source says:
//!
//! | field | proved in | by (tgt source) |
//! |---|---|---|
//! | `target_cmd_queue(tid, cmd)` args, `scsi_cmd.cmd_itn_id` (120) | `target_cmd_queue` | `itn_id = cmd->cmd_itn_id`: an 8-byte load from its second argument |
//! | `scsi_cmd.lun` (156) | `target_cmd_queue` | `scsi_get_devid(target->lid, cmd->lun)`: the field's address passed to a call, or its 8 bytes loaded |
//! | `scsi_cmd.scb` (144) | `scsi_cmd_perform` | `op = cmd->scb[0]`: a byte loaded through the pointer at 144 of the second argument |
//! | `scsi_cmd.attribute` (164) | `target_cmd_perform` | `cmd->attribute` read, 4 bytes, from its second argument |
//! | `target_cmd_io_done(cmd, result)` args, `scsi_cmd.result` (176) | `target_cmd_io_done` | `scsi_set_result(cmd, result)`: the second argument stored at 176 of the first |
//! | `tgt_driver.cmd_end_notify` (104) | `target_cmd_io_done` | `tgt_drivers[lid]->cmd_end_notify(cmd->cmd_itn_id, result, cmd)` |
//! | `scsi_cmd.mreq` (184) | `target_cmd_done` | `mreq = cmd->mreq`, 8 bytes from its argument |
//! | `mgmt_req.busy` (8), `.function` (12), `.result` (16) | `target_cmd_done` | `!--mreq->busy`; `mreq->function == ABORT_TASK`; `mreq->result = ...` |
//! | `tgt_driver.mgmt_end_notify` (112) | `target_cmd_done` | `tgt_drivers[...]->mgmt_end_notify(mreq)` |
//! | `target_mgmt_request` args, `mgmt_req.mid` (0) | `target_mgmt_request` | `mreq->mid = req_id` (third argument), `mreq->function = function` (fourth), on what the allocation returned; `target->tid == tid` (first) |
//! | `target_mgmt_request` itn_id, tag, lun_buf; `scsi_cmd.tag` (168) | `target_mgmt_request`, `abort_task_set` | `abort_task_set(mreq, target, itn_id, tag, ...)` with the second and sixth arguments, which compares `cmd->tag == tag` (or the same compare inlined); `lun_buf` (fifth) passed on |
//! | `iscsi_task.conn` (104), `iscsi_connection.state` (0) | `iscsi_tm_done` | `task = mreq->mid; task->conn->state == STATE_CLOSE` |
//! | `it_nexus_create(tid, itn_id, host_no, info)` args | `it_nexus_create` | `itn->itn_id = itn_id` (second argument) on the allocation |
//! | `it_nexus_destroy(tid, itn_id)` args | `it_nexus_destroy` | `it_nexus_lookup(tid, itn_id)` with its first two arguments, which compares `itn->itn_id` with the second |
//!
//! A field that cannot be proved is reported by name with what was looked
//! for; the probe points that read it are not attached
//! ([`crate::points::Point::needs`]), and tracing is refused when the TMF
//! request itself cannot be read.

use std::{
    cell::RefCell,
    collections::{BTreeSet, HashMap},
    rc::Rc,
};

use iced_x86::{FlowControl, Instruction, Register};
use object::{Object as _, ObjectSection as _};
use serde::Serialize;
use tgt_trace_common::{layout, tmf};

use crate::flow::{self, Facts, Use, Val};

/// A fact the probes rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    QueueArgs,
    CmdItnId,
    CmdLun,
    PerformArgs,
    CmdScb,
    CmdAttribute,
    IoDoneArgs,
    CmdResult,
    DriverCmdEndNotify,
    DoneArgs,
    CmdMreq,
    MreqBusy,
    MreqFunction,
    MreqResult,
    DriverMgmtEndNotify,
    MgmtArgs,
    MreqMid,
    CmdTag,
    TaskConn,
    ConnState,
    NexusCreateArgs,
    NexusDestroyArgs,
    /// Not a field: the call the `kspace_exec` probe relies on to see an
    /// aborted command's result. A compiler that inlines
    /// `target_cmd_io_done` into `abort_task_set` hides it.
    IoDoneAborts,
}

impl Field {
    pub const ALL: [Field; 23] = [
        Field::QueueArgs,
        Field::CmdItnId,
        Field::CmdLun,
        Field::PerformArgs,
        Field::CmdScb,
        Field::CmdAttribute,
        Field::IoDoneArgs,
        Field::CmdResult,
        Field::DriverCmdEndNotify,
        Field::DoneArgs,
        Field::CmdMreq,
        Field::MreqBusy,
        Field::MreqFunction,
        Field::MreqResult,
        Field::DriverMgmtEndNotify,
        Field::MgmtArgs,
        Field::MreqMid,
        Field::CmdTag,
        Field::TaskConn,
        Field::ConnState,
        Field::NexusCreateArgs,
        Field::NexusDestroyArgs,
        Field::IoDoneAborts,
    ];

    /// The name in messages and `probes --json`.
    pub fn name(self) -> &'static str {
        match self {
            Field::QueueArgs => "target_cmd_queue(tid, cmd)",
            Field::CmdItnId => "scsi_cmd.cmd_itn_id",
            Field::CmdLun => "scsi_cmd.lun",
            Field::PerformArgs => "scsi_cmd_perform(host_no, cmd)",
            Field::CmdScb => "scsi_cmd.scb",
            Field::CmdAttribute => "scsi_cmd.attribute",
            Field::IoDoneArgs => "target_cmd_io_done(cmd, result)",
            Field::CmdResult => "scsi_cmd.result",
            Field::DriverCmdEndNotify => "tgt_driver.cmd_end_notify",
            Field::DoneArgs => "target_cmd_done(cmd)",
            Field::CmdMreq => "scsi_cmd.mreq",
            Field::MreqBusy => "mgmt_req.busy",
            Field::MreqFunction => "mgmt_req.function",
            Field::MreqResult => "mgmt_req.result",
            Field::DriverMgmtEndNotify => "tgt_driver.mgmt_end_notify",
            Field::MgmtArgs => "target_mgmt_request(tid, itn_id, req_id, function, lun_buf, tag)",
            Field::MreqMid => "mgmt_req.mid",
            Field::CmdTag => "scsi_cmd.tag",
            Field::TaskConn => "iscsi_task.conn",
            Field::ConnState => "iscsi_connection.state",
            Field::NexusCreateArgs => "it_nexus_create(tid, itn_id, host_no, info)",
            Field::NexusDestroyArgs => "it_nexus_destroy(tid, itn_id)",
            Field::IoDoneAborts => "abort_task_set calls target_cmd_io_done(cmd, TASK_ABORTED)",
        }
    }

    /// The offset the probes read it at, for struct fields.
    pub fn offset(self) -> Option<usize> {
        Some(match self {
            Field::CmdItnId => layout::CMD_ITN_ID,
            Field::CmdLun => layout::CMD_LUN,
            Field::CmdScb => layout::CMD_SCB,
            Field::CmdAttribute => layout::CMD_ATTRIBUTE,
            Field::CmdResult => layout::CMD_RESULT,
            Field::DriverCmdEndNotify => layout::DRIVER_CMD_END_NOTIFY,
            Field::CmdMreq => layout::CMD_MREQ,
            Field::MreqBusy => layout::MREQ_BUSY,
            Field::MreqFunction => layout::MREQ_FUNCTION,
            Field::MreqResult => layout::MREQ_RESULT,
            Field::DriverMgmtEndNotify => layout::DRIVER_MGMT_END_NOTIFY,
            Field::MreqMid => layout::MREQ_MID,
            Field::CmdTag => layout::CMD_TAG,
            Field::TaskConn => layout::ISCSI_TASK_CONN,
            Field::ConnState => layout::ISCSI_CONN_STATE,
            _ => return None,
        })
    }
}

/// As its name (`Field::name`), in `probes --json`.
impl Serialize for Field {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl std::fmt::Display for Field {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One field: proved, with where; or not, with what was looked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldProof {
    pub field: Field,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<usize>,
    pub proved: bool,
    /// Where it was proved (the instruction's address and what it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// What was looked for and not found.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// Every field, proved or not.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LayoutProof {
    pub fields: Vec<FieldProof>,
}

impl LayoutProof {
    pub fn proved(&self, field: Field) -> bool {
        self.fields.iter().any(|f| f.field == field && f.proved)
    }

    pub fn unproved(&self) -> impl Iterator<Item = &FieldProof> {
        self.fields.iter().filter(|f| !f.proved)
    }

    /// The first of `fields` not proved, with why: what a probe that reads
    /// them is missing.
    pub fn first_unproved(&self, fields: &[Field]) -> Option<&FieldProof> {
        fields
            .iter()
            .find_map(|&field| self.fields.iter().find(|f| f.field == field && !f.proved))
    }
}

/// The code of `.text`, decoded, and where its functions start.
pub struct Code {
    insns: Vec<Instruction>,
    /// Exported functions: name → (address, size).
    exported: HashMap<String, (u64, u64)>,
    /// Every known function start (exported, and direct call targets), so
    /// a static function ends where the next one begins.
    starts: BTreeSet<u64>,
    text: std::ops::Range<u64>,
    facts: RefCell<HashMap<(u64, u8), Rc<Facts>>>,
    clobbers: RefCell<HashMap<u64, Option<Vec<Register>>>>,
}

/// How deep the facts of called functions are followed: `-O0` calls
/// tgt's one-line accessors (`scsi_set_result`, `cmd_processed`) and the
/// static helpers that `-O2` inlines (`target_mgmt_request` →
/// `abort_task_set` → `abort_cmd` → `cmd_processed`).
const CALL_DEPTH: u8 = 3;

impl Code {
    pub fn new(file: &object::File<'_>, exported: &HashMap<String, (u64, u64)>) -> Option<Code> {
        let text = file.section_by_name(".text")?;
        let data = text.data().ok()?;
        let insns = flow::decode(data, text.address());
        let mut starts: BTreeSet<u64> = exported.values().map(|&(a, _)| a).collect();
        let range = text.address()..text.address() + text.size();
        starts.extend(
            insns
                .iter()
                .filter(|i| i.mnemonic() == iced_x86::Mnemonic::Call)
                .filter(|i| i.op0_kind() == iced_x86::OpKind::NearBranch64)
                .map(|i| i.near_branch_target())
                .filter(|t| range.contains(t)),
        );
        Some(Code {
            insns,
            exported: exported.clone(),
            starts,
            text: range,
            facts: RefCell::default(),
            clobbers: RefCell::default(),
        })
    }

    /// All of `.text`, decoded.
    pub fn instructions(&self) -> &[Instruction] {
        &self.insns
    }

    /// The instructions of the function at `address`: to its symbol's size,
    /// or to the next known function.
    fn function(&self, address: u64, size: Option<u64>) -> &[Instruction] {
        let end = size
            .filter(|&s| s > 0)
            .map(|s| address + s)
            .unwrap_or_else(|| {
                self.starts
                    .range(address + 1..)
                    .next()
                    .copied()
                    .unwrap_or(u64::MAX)
            });
        let at = |a: u64| self.insns.partition_point(|n| n.ip() < a);
        &self.insns[at(address)..at(end)]
    }

    /// The registers a function of `.text` writes, when it calls nothing
    /// (else unknown: every caller-saved one).
    fn clobbers(&self, target: u64) -> Option<Vec<Register>> {
        if let Some(known) = self.clobbers.borrow().get(&target) {
            return known.clone();
        }
        let written = self.text.contains(&target).then(|| {
            let body = self.function(target, None);
            let leaves = body.iter().any(|i| {
                matches!(
                    i.flow_control(),
                    FlowControl::Call | FlowControl::IndirectCall | FlowControl::IndirectBranch
                ) || (i.flow_control() == FlowControl::UnconditionalBranch
                    && !(body[0].ip()..body[body.len() - 1].next_ip())
                        .contains(&i.near_branch_target()))
            });
            (!body.is_empty() && !leaves).then(|| flow::written_registers(body))
        });
        let written = written.flatten();
        self.clobbers.borrow_mut().insert(target, written.clone());
        written
    }

    /// What the function at `address` does, with the facts of the
    /// functions it calls directly (to `depth`) seen from each call.
    fn facts(&self, address: u64, size: Option<u64>, depth: u8) -> Rc<Facts> {
        if let Some(f) = self.facts.borrow().get(&(address, depth)) {
            return f.clone();
        }
        let mut facts = flow::analyze(self.function(address, size), &|t| self.clobbers(t));
        if depth > 0 {
            let calls = facts.calls.clone();
            for call in calls {
                if let Some(target) = call
                    .target
                    .filter(|t| self.text.contains(t) && *t != address)
                {
                    let callee = self.facts(target, None, depth - 1);
                    facts.absorb(&callee, &call.args);
                }
            }
        }
        let facts = Rc::new(facts);
        self.facts
            .borrow_mut()
            .insert((address, depth), facts.clone());
        facts
    }

    fn exported(&self, name: &str) -> Result<Rc<Facts>, String> {
        let &(address, size) = self
            .exported
            .get(name)
            .ok_or_else(|| format!("{name} is not exported"))?;
        Ok(self.facts(address, Some(size), CALL_DEPTH))
    }

    fn at(&self, address: u64) -> Rc<Facts> {
        self.facts(address, None, CALL_DEPTH)
    }
}

/// A field's offset from its struct, and from the list node a walk holds
/// (clang reads a container's fields through the node, without forming the
/// container: `field - member`).
fn through_node(field: usize, member: usize) -> [i64; 2] {
    [field as i64, field as i64 - member as i64]
}

/// `Ok("{how} at {ip}")` where the instruction was found, else `Err(why)`.
fn shown(at: Option<u64>, how: &str, why: &str) -> Proved {
    at.map(|ip| format!("{how} at {ip:#x}"))
        .ok_or_else(|| why.to_owned())
}

/// A call through the function pointer at `slot` of some struct (a
/// `tgt_driver`'s), with these arguments: its address.
fn through_slot(f: &Facts, slot: usize, args: &[(usize, &Val)]) -> Option<u64> {
    f.calls
        .iter()
        .find(|c| {
            c.via.as_ref().is_some_and(|(_, disp)| *disp == slot as i64)
                && args.iter().all(|(n, v)| c.args[*n].as_ref() == Some(*v))
        })
        .map(|c| c.ip)
}

/// Whether `value` is compared with what is at one of `offsets` of some
/// pointer: a compare with memory there, or with a register loaded from
/// there. Offsets relative to a list node (clang walks `list_head`s
/// without forming the container) are passed by the caller.
fn compared(f: &Facts, value: &Val, offsets: &[i64], size: usize) -> Option<u64> {
    f.accesses
        .iter()
        .find(|a| {
            a.what == Use::Compare
                && offsets.contains(&a.disp)
                && (size == 0 || a.size == size)
                && a.value.as_ref() == Some(value)
        })
        .map(|a| a.ip)
        .or_else(|| {
            f.compares
                .iter()
                .find(|c| {
                    let loaded = |v: &Val| matches!(v, Val::Load(_, d) if offsets.contains(d));
                    (c.a == *value && loaded(&c.b)) || (c.b == *value && loaded(&c.a))
                })
                .map(|c| c.ip)
        })
}

type Proved = Result<String, String>;

fn found<'a>(mut it: impl Iterator<Item = &'a flow::Access>, what: &str) -> Proved {
    it.next()
        .map(|a| format!("{what} at {:#x}", a.ip))
        .ok_or_else(|| format!("no {what}"))
}

fn both(a: Proved, b: Proved) -> Proved {
    match (a, b) {
        (Ok(a), Ok(b)) => Ok(format!("{a}; {b}")),
        (Err(e), _) | (_, Err(e)) => Err(e),
    }
}

/// Proves every field; `tm_done` is `iscsi_tm_done`'s address when the
/// iSCSI driver's table gave it.
pub fn prove(code: &Code, tm_done: Option<u64>) -> LayoutProof {
    let mut proofs: HashMap<Field, Proved> = HashMap::new();
    let a0 = Val::Arg(0);
    let a1 = Val::Arg(1);

    // target_cmd_queue(int tid, struct scsi_cmd *cmd)
    match code.exported("target_cmd_queue") {
        Err(e) => {
            for f in [Field::QueueArgs, Field::CmdItnId, Field::CmdLun] {
                proofs.insert(f, Err(e.clone()));
            }
        }
        Ok(q) => {
            let itn = found(
                q.at(Use::Read, &a1, layout::CMD_ITN_ID, 8),
                "target_cmd_queue: 8-byte load of cmd->cmd_itn_id from its second argument",
            );
            proofs.insert(Field::QueueArgs, itn.clone());
            proofs.insert(Field::CmdItnId, itn);
            let lun_addr = Val::Addr(Box::new(a1.clone()), layout::CMD_LUN as i64);
            let lun = q
                .calls
                .iter()
                .find(|c| c.args.iter().any(|a| a.as_ref() == Some(&lun_addr)))
                .map(|c| format!("target_cmd_queue passes &cmd->lun to a call at {:#x}", c.ip))
                .ok_or(())
                .or_else(|()| {
                    found(
                        q.at(Use::Read, &a1, layout::CMD_LUN, 8),
                        "target_cmd_queue: 8-byte load of cmd->lun",
                    )
                })
                .map_err(|_| {
                    "target_cmd_queue neither passes &cmd->lun (cmd + 156) to scsi_get_devid \
                     nor loads its 8 bytes"
                        .to_owned()
                });
            proofs.insert(Field::CmdLun, lun);
        }
    }

    // scsi_cmd_perform(int host_no, struct scsi_cmd *cmd): op = cmd->scb[0]
    let scb = code.exported("scsi_cmd_perform").and_then(|p| {
        let ptr = Val::load(&a1, layout::CMD_SCB as i64);
        found(
            p.at(Use::Read, &ptr, 0, 1),
            "scsi_cmd_perform: byte load of cmd->scb[0] through its second argument",
        )
    });
    proofs.insert(Field::PerformArgs, scb.clone());
    proofs.insert(Field::CmdScb, scb);

    // target_cmd_perform(int tid, struct scsi_cmd *cmd): cmd->attribute
    proofs.insert(
        Field::CmdAttribute,
        code.exported("target_cmd_perform").and_then(|p| {
            found(
                p.accesses.iter().filter(|a| {
                    a.base == a1
                        && a.disp == layout::CMD_ATTRIBUTE as i64
                        && a.size == 4
                        && matches!(a.what, Use::Read | Use::Compare)
                }),
                "target_cmd_perform: 4-byte read of cmd->attribute from its second argument",
            )
        }),
    );

    // target_cmd_io_done(struct scsi_cmd *cmd, int result)
    match code.exported("target_cmd_io_done") {
        Err(e) => {
            for f in [
                Field::IoDoneArgs,
                Field::CmdResult,
                Field::DriverCmdEndNotify,
            ] {
                proofs.insert(f, Err(e.clone()));
            }
        }
        Ok(d) => {
            let result = found(
                d.at(Use::Write, &a0, layout::CMD_RESULT, 4)
                    .filter(|a| a.value.as_ref() == Some(&a1)),
                "target_cmd_io_done: scsi_set_result(cmd, result), its second argument stored \
                 at cmd + 176",
            );
            proofs.insert(Field::IoDoneArgs, result.clone());
            proofs.insert(Field::CmdResult, result);
            let itn = Val::load(&a0, layout::CMD_ITN_ID as i64);
            let notify = shown(
                through_slot(
                    &d,
                    layout::DRIVER_CMD_END_NOTIFY,
                    &[(0, &itn), (1, &a1), (2, &a0)],
                ),
                "target_cmd_io_done calls cmd_end_notify(cmd->cmd_itn_id, result, cmd) through \
                 the driver's slot",
                "target_cmd_io_done does not call the driver's slot 104 with \
                 (cmd->cmd_itn_id, result, cmd)",
            );
            proofs.insert(Field::DriverCmdEndNotify, notify);
        }
    }

    // target_cmd_done(struct scsi_cmd *cmd)
    match code.exported("target_cmd_done") {
        Err(e) => {
            for f in [
                Field::DoneArgs,
                Field::CmdMreq,
                Field::MreqBusy,
                Field::MreqFunction,
                Field::MreqResult,
                Field::DriverMgmtEndNotify,
            ] {
                proofs.insert(f, Err(e.clone()));
            }
        }
        Ok(d) => {
            let mreq = Val::load(&a0, layout::CMD_MREQ as i64);
            let load = found(
                d.at(Use::Read, &a0, layout::CMD_MREQ, 8),
                "target_cmd_done: mreq = cmd->mreq, 8 bytes from its argument",
            );
            proofs.insert(Field::DoneArgs, load.clone());
            proofs.insert(Field::CmdMreq, load);
            proofs.insert(
                Field::MreqBusy,
                found(
                    d.accesses.iter().filter(|a| {
                        a.base == mreq
                            && a.disp == layout::MREQ_BUSY as i64
                            && a.size == 4
                            && matches!(a.what, Use::Write | Use::Update)
                    }),
                    "target_cmd_done: --mreq->busy, a 4-byte write at mreq + 8",
                ),
            );
            let function = Val::load(&mreq, layout::MREQ_FUNCTION as i64);
            let abort = u64::from(tmf::ABORT_TASK);
            let compared = d
                .at(Use::Compare, &mreq, layout::MREQ_FUNCTION, 4)
                .find(|a| a.value == Some(Val::Imm(abort)))
                .map(|a| a.ip)
                .or_else(|| {
                    d.compares
                        .iter()
                        .find(|c| c.of(&function, &Val::Imm(abort)))
                        .map(|c| c.ip)
                });
            proofs.insert(
                Field::MreqFunction,
                compared
                    .map(|ip| format!("target_cmd_done: mreq->function == ABORT_TASK at {ip:#x}"))
                    .ok_or_else(|| {
                        format!(
                            "target_cmd_done does not compare mreq + 12 with ABORT_TASK \
                             ({abort:#x})"
                        )
                    }),
            );
            proofs.insert(
                Field::MreqResult,
                found(
                    d.at(Use::Write, &mreq, layout::MREQ_RESULT, 4),
                    "target_cmd_done: mreq->result = ..., a 4-byte store at mreq + 16",
                ),
            );
            let notify = shown(
                through_slot(&d, layout::DRIVER_MGMT_END_NOTIFY, &[(0, &mreq)]),
                "target_cmd_done calls mgmt_end_notify(mreq) through the driver's slot",
                "target_cmd_done does not call the driver's slot 112 with cmd->mreq",
            );
            proofs.insert(Field::DriverMgmtEndNotify, notify);
        }
    }

    // target_mgmt_request(int tid, uint64_t itn_id, uint64_t req_id,
    //                     int function, uint8_t *lun_buf, uint64_t tag, ...)
    match code.exported("target_mgmt_request") {
        Err(e) => {
            for f in [Field::MgmtArgs, Field::MreqMid, Field::CmdTag] {
                proofs.insert(f, Err(e.clone()));
            }
        }
        Ok(m) => {
            let (a2, a3, a4, a5) = (Val::Arg(2), Val::Arg(3), Val::Arg(4), Val::Arg(5));
            let stored = |value: &Val, disp: usize, size: usize| {
                m.accesses.iter().find(|a| {
                    a.what == Use::Write
                        && matches!(a.base, Val::Ret(_))
                        && a.disp == disp as i64
                        && a.size == size
                        && a.value.as_ref() == Some(value)
                })
            };
            let mid = shown(
                stored(&a2, layout::MREQ_MID, 8).map(|a| a.ip),
                "target_mgmt_request: mreq->mid = req_id",
                "target_mgmt_request does not store its third argument (req_id) at offset 0 of \
                 the allocated mgmt_req",
            );
            let function = shown(
                stored(&a3, layout::MREQ_FUNCTION, 4).map(|a| a.ip),
                "mreq->function = function",
                "target_mgmt_request does not store its fourth argument (function) at offset 12 \
                 of the allocated mgmt_req",
            );
            // target_lookup(tid), inlined or called: target->tid == tid,
            // through the target or its target_siblings node.
            let tid = shown(
                compared(
                    &m,
                    &a0,
                    &through_node(layout::TARGET_TID, layout::TARGET_SIBLINGS),
                    4,
                ),
                "target->tid compared with its first argument",
                "target_mgmt_request does not compare target->tid (+8) with its first argument, \
                 inlined or in a function it calls",
            );
            // scsi_get_devid(target->lid, lun_buf), or abort_task_set(...,
            // itn_id, .., lun_buf, ..) for a LUN RESET.
            let lun_buf = shown(
                m.calls
                    .iter()
                    .find(|c| {
                        c.args[1].as_ref() == Some(&a4)
                            || (c.args[4].as_ref() == Some(&a4) && c.args[2].as_ref() == Some(&a1))
                    })
                    .map(|c| c.ip),
                "lun_buf passed to scsi_get_devid or abort_task_set",
                "target_mgmt_request does not pass its fifth argument (lun_buf) to \
                 scsi_get_devid or abort_task_set",
            );
            // abort_task_set(mreq, target, itn_id, tag, lun, tag_check)
            // compares cmd->tag with its tag (the facts of the functions
            // target_mgmt_request calls are seen with its arguments), through
            // the command or its c_hlist node.
            let tag = shown(
                compared(
                    &m,
                    &a5,
                    &through_node(layout::CMD_TAG, layout::CMD_C_HLIST),
                    8,
                ),
                "cmd->tag (+168) compared with target_mgmt_request's sixth argument \
                 (abort_task_set)",
                "nothing target_mgmt_request runs compares an 8-byte field at 168 of a command \
                 with the TMF's tag, its sixth argument",
            );
            let itn = shown(
                compared(
                    &m,
                    &a1,
                    &through_node(layout::ITN_ITN_ID, layout::ITN_NEXUS_SIBLINGS),
                    8,
                ),
                "itn->itn_id compared with its second argument",
                "nothing target_mgmt_request runs compares it_nexus.itn_id with its second \
                 argument",
            );
            // abort_cmd: target_cmd_io_done(cmd, TASK_ABORTED), called
            // (the kspace_exec probe sees it) or inlined (it does not).
            let io_done = code.exported.get("target_cmd_io_done").map(|&(a, _)| a);
            let task_aborted = Some(Val::Imm(tgt_trace_common::TASK_ABORTED as u64));
            proofs.insert(
                Field::IoDoneAborts,
                shown(
                    m.calls
                        .iter()
                        .find(|c| {
                            c.target.is_some() && c.target == io_done && c.args[1] == task_aborted
                        })
                        .map(|c| c.ip),
                    "target_cmd_io_done(cmd, TASK_ABORTED) called",
                    "abort_task_set does not call target_cmd_io_done(cmd, TASK_ABORTED): \
                     inlined, an aborted command's result never reaches the kspace_exec probe",
                ),
            );
            let args = [mid.clone(), function, tid, lun_buf, itn]
                .into_iter()
                .reduce(both)
                .unwrap_or_else(|| Err("nothing".to_owned()));
            proofs.insert(Field::MgmtArgs, args);
            proofs.insert(Field::MreqMid, mid);
            proofs.insert(Field::CmdTag, tag);
        }
    }

    // iscsi_tm_done(struct mgmt_req *mreq): task = mreq->mid;
    // task->conn->state == STATE_CLOSE
    let conn = match tm_done {
        None => Err(
            "iscsi_tm_done was not found through the iSCSI driver's table (tgt_driver \
             .name \"iscsi\", .default_bst \"rdwr\")"
                .to_owned(),
        ),
        Some(address) => {
            let t = code.at(address);
            let task = Val::load(&a0, layout::MREQ_MID as i64);
            let conn = Val::load(&task, layout::ISCSI_TASK_CONN as i64);
            let loads_conn = found(
                t.at(Use::Read, &task, layout::ISCSI_TASK_CONN, 8),
                "iscsi_tm_done: task->conn, 8 bytes at 104 of mreq->mid",
            );
            let state = t
                .at(Use::Compare, &conn, layout::ISCSI_CONN_STATE, 4)
                .find(|a| a.value == Some(Val::Imm(layout::ISCSI_STATE_CLOSE as u64)))
                .map(|a| format!("conn->state == STATE_CLOSE at {:#x}", a.ip))
                .or_else(|| {
                    let state = Val::load(&conn, layout::ISCSI_CONN_STATE as i64);
                    t.compares
                        .iter()
                        .find(|c| c.of(&state, &Val::Imm(layout::ISCSI_STATE_CLOSE as u64)))
                        .map(|c| format!("conn->state == STATE_CLOSE at {:#x}", c.ip))
                })
                .ok_or_else(|| {
                    "iscsi_tm_done does not compare task->conn->state (+0) with STATE_CLOSE"
                        .to_owned()
                });
            Ok((loads_conn, state))
        }
    };
    match conn {
        Err(e) => {
            proofs.insert(Field::TaskConn, Err(e.clone()));
            proofs.insert(Field::ConnState, Err(e));
        }
        Ok((task_conn, state)) => {
            proofs.insert(Field::TaskConn, task_conn);
            proofs.insert(Field::ConnState, state);
        }
    }

    // it_nexus_create(int tid, uint64_t itn_id, int host_no, char *info):
    // itn->itn_id = itn_id on the allocation.
    proofs.insert(
        Field::NexusCreateArgs,
        code.exported("it_nexus_create").and_then(|c| {
            found(
                c.accesses.iter().filter(|a| {
                    a.what == Use::Write
                        && matches!(a.base, Val::Ret(_))
                        && a.disp == layout::ITN_ITN_ID as i64
                        && a.size == 8
                        && a.value.as_ref() == Some(&a1)
                }),
                "it_nexus_create: itn->itn_id = itn_id (second argument)",
            )
        }),
    );
    // it_nexus_destroy(int tid, uint64_t itn_id): it_nexus_lookup(tid, itn_id)
    proofs.insert(
        Field::NexusDestroyArgs,
        code.exported("it_nexus_destroy").and_then(|c| {
            shown(
                compared(
                    &c,
                    &a1,
                    &through_node(layout::ITN_ITN_ID, layout::ITN_NEXUS_SIBLINGS),
                    8,
                ),
                "it_nexus_lookup(tid, itn_id): itn->itn_id compared with its second argument",
                "it_nexus_destroy does not look its nexus up by itn_id (its second argument \
                 compared with it_nexus.itn_id)",
            )
        }),
    );

    LayoutProof {
        fields: Field::ALL
            .iter()
            .map(|&field| {
                let proof = proofs
                    .remove(&field)
                    .unwrap_or_else(|| Err("not checked".to_owned()));
                FieldProof {
                    field,
                    offset: field.offset(),
                    proved: proof.is_ok(),
                    how: proof.as_ref().ok().cloned(),
                    why_not: proof.err(),
                }
            })
            .collect(),
    }
}

/// Proves what the `tmf` set's walk reads (`layout::TARGET_*`, `ITN_*`,
/// `CMD_C_HLIST`, `CMD_STATE`, `CMD_PROCESSED_BIT`) and finds the static
/// `target_list`, from what `target_mgmt_request` runs (with the
/// `target_lookup` and `abort_task_set` it calls or inlines):
///
/// - `target_list`: the one global whose first node, less `target_siblings`
///   (24), has its `tid` (8) compared with the first argument
///   (`list_for_each_entry(target, &target_list, target_siblings) if
///   (target->tid == tid)`).
/// - `abort_task_set`'s walk, as tgt writes it: `target->it_nexus_list`
///   (56) and each nexus's `cmd_list` (16) read as list heads, nodes turned
///   back into containers through `nexus_siblings` (40) and `c_hlist` (8)
///   (either subtracted, or folded into the offsets of the fields read
///   through the node, as clang does), `itn->itn_id` (0) compared with the
///   nexus id argument, `cmd->tag` (168) with the tag argument,
///   `cmd_processed(cmd)` as `testb $2` of `cmd->state` (56), `cmd->mreq`
///   (184) stored, and `target_cmd_io_done(cmd, TASK_ABORTED)` called.
pub fn prove_walk(code: &Code) -> Result<crate::locate::TmfWalk, String> {
    let &(entry, _) = code
        .exported
        .get("target_mgmt_request")
        .ok_or("target_mgmt_request is not exported")?;
    let &(io_done, _) = code
        .exported
        .get("target_cmd_io_done")
        .ok_or("target_cmd_io_done is not exported")?;
    let m = code.exported("target_mgmt_request")?;
    let (a0, a1, a5) = (Val::Arg(0), Val::Arg(1), Val::Arg(5));

    // target_list, through target_lookup.
    let tid_at = layout::TARGET_TID as i64 - layout::TARGET_SIBLINGS as i64;
    let mut lists: Vec<u64> = m
        .accesses
        .iter()
        .filter_map(|a| match (&a.base, a.what, a.disp, a.size) {
            (Val::Global(g), Use::Read, 0, 8) => Some(*g),
            _ => None,
        })
        .filter(|&g| {
            let first = Val::load(&Val::Global(g), 0);
            m.accesses.iter().any(|a| {
                a.what == Use::Compare
                    && a.base == first
                    && a.disp == tid_at
                    && a.value.as_ref() == Some(&a0)
            }) || m
                .compares
                .iter()
                .any(|c| c.of(&a0, &Val::load(&first, tid_at)))
        })
        .collect();
    lists.sort_unstable();
    lists.dedup();
    let list = match lists[..] {
        [one] => one,
        [] => {
            return Err(format!(
                "target_mgmt_request does not walk a global list comparing each \
                 target.tid ({}) through target.target_siblings ({}) with its first argument \
                 (target_lookup)",
                layout::TARGET_TID,
                layout::TARGET_SIBLINGS
            ));
        }
        _ => return Err(format!("target_lookup's list is ambiguous: {lists:x?}")),
    };

    // abort_task_set's reads; each offset also as clang folds the node's
    // offset into it.
    let any = |what: Use, offsets: &[i64], size: usize| {
        m.accesses
            .iter()
            .any(|a| a.what == what && offsets.contains(&a.disp) && (size == 0 || a.size == size))
    };
    let cmd_field = |field: usize| through_node(field, layout::CMD_C_HLIST);
    let itn_field = |field: usize| through_node(field, layout::ITN_NEXUS_SIBLINGS);
    let target_field = |field: usize| through_node(field, layout::TARGET_SIBLINGS);
    let compared_arg =
        |value: &Val, offsets: &[i64], size: usize| compared(&m, value, offsets, size).is_some();
    // target_cmd_io_done(cmd, TASK_ABORTED), called, or inlined (clang):
    // the driver's cmd_end_notify(.., TASK_ABORTED, cmd).
    let task_aborted = Some(Val::Imm(tgt_trace_common::TASK_ABORTED as u64));
    let aborted = m.calls.iter().any(|c| {
        c.args[1] == task_aborted
            && (c.target == Some(io_done)
                || c.via
                    .as_ref()
                    .is_some_and(|(_, d)| *d == layout::DRIVER_CMD_END_NOTIFY as i64))
    });
    let proofs: [(String, bool); 8] = [
        (
            format!("target.it_nexus_list ({}) read", layout::TARGET_IT_NEXUS_LIST),
            any(Use::Read, &target_field(layout::TARGET_IT_NEXUS_LIST), 8),
        ),
        (
            format!(
                "it_nexus.itn_id ({}) compared with the nexus id, through nexus_siblings ({})",
                layout::ITN_ITN_ID,
                layout::ITN_NEXUS_SIBLINGS
            ),
            compared_arg(&a1, &itn_field(layout::ITN_ITN_ID), 8),
        ),
        (
            format!(
                "it_nexus.cmd_list ({}) read, through nexus_siblings",
                layout::ITN_CMD_LIST
            ),
            any(Use::Read, &itn_field(layout::ITN_CMD_LIST), 8),
        ),
        (
            format!(
                "scsi_cmd.tag ({}) compared with the tag, through c_hlist ({})",
                layout::CMD_TAG,
                layout::CMD_C_HLIST
            ),
            compared_arg(&a5, &cmd_field(layout::CMD_TAG), 8),
        ),
        (
            format!("scsi_cmd.lun ({}) read as 8 bytes", layout::CMD_LUN),
            any(Use::Read, &cmd_field(layout::CMD_LUN), 8)
                || any(Use::Compare, &cmd_field(layout::CMD_LUN), 8)
                // memcmp(cmd->lun, lun, sizeof(cmd->lun)), called.
                || m.calls.iter().any(|c| {
                    c.args[2] == Some(Val::Imm(8))
                        && c.args[..2].iter().any(|a| {
                            matches!(a, Some(Val::Addr(_, d)) if cmd_field(layout::CMD_LUN).contains(d))
                        })
                }),
        ),
        (
            format!(
                "cmd_processed: testb ${}, scsi_cmd.state ({})",
                layout::CMD_PROCESSED_BIT,
                layout::CMD_STATE
            ),
            m.accesses.iter().any(|a| {
                a.what == Use::Compare
                    && cmd_field(layout::CMD_STATE).contains(&a.disp)
                    && a.value == Some(Val::Imm(layout::CMD_PROCESSED_BIT))
            }) || m.compares.iter().any(|c| {
                matches!(&c.a, Val::Load(_, d) if cmd_field(layout::CMD_STATE).contains(d))
                    && c.b == Val::Imm(layout::CMD_PROCESSED_BIT)
            }),
        ),
        (
            format!("scsi_cmd.mreq ({}) stored", layout::CMD_MREQ),
            any(Use::Write, &cmd_field(layout::CMD_MREQ), 8),
        ),
        (
            "target_cmd_io_done(cmd, TASK_ABORTED), called or inlined".to_owned(),
            aborted,
        ),
    ];
    let missing: Vec<String> = proofs
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(what, _)| what)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "what target_mgmt_request runs (abort_task_set) does not show {}",
            missing.join(", ")
        ));
    }
    let delta = i64::try_from(list).ok().zip(i64::try_from(entry).ok());
    let (list, entry) = delta.ok_or("addresses out of range")?;
    Ok(crate::locate::TmfWalk {
        target_list_from_entry: list - entry,
    })
}

/// `conn_close(struct iscsi_connection *conn)` (tgt `usr/iscsi/conn.c`)
/// tests `conn->closed` (4), reads `conn->session` (40) and walks the
/// session's `pending_cmd_list` (112: right after `cmd_list` at 96), whose
/// tasks it frees unsent: the offsets its probe and the session walk read.
pub fn prove_conn_close(code: &Code) -> Result<(), String> {
    let c = code.exported("conn_close")?;
    let conn = Val::Arg(0);
    let session = Val::load(&conn, layout::ISCSI_CONN_SESSION as i64);
    let pending = (layout::ISCSI_SESSION_CMD_LIST + 16) as i64;
    let touches = |base: &Val, disp: i64, size: usize| {
        c.accesses
            .iter()
            .any(|a| a.base == *base && a.disp == disp && a.size == size)
    };
    if !touches(&conn, layout::ISCSI_CONN_CLOSED as i64, 4) {
        return Err(format!(
            "conn_close does not test conn->closed at offset {}",
            layout::ISCSI_CONN_CLOSED
        ));
    }
    if !touches(&conn, layout::ISCSI_CONN_SESSION as i64, 8) {
        return Err(format!(
            "conn_close never reads conn->session at offset {}",
            layout::ISCSI_CONN_SESSION
        ));
    }
    if !touches(&session, pending, 8) {
        return Err(format!(
            "conn_close does not walk session->pending_cmd_list at offset {pending}"
        ));
    }
    Ok(())
}

/// Where `iscsi_tm_execute` (static, `usr/iscsi/iscsid.c`; inlined or not)
/// reads the TMF's function (`req->flags & ISCSI_FLAG_TM_FUNC_MASK`), with
/// the register holding the task there, proved from its call of
/// `target_mgmt_request`: with the task `t` it passes `t` itself as the
/// request id, `&t->req.lun` (8) as `lun_buf`, `t->req.rtt` (20) as the tag,
/// `t->conn->session->tsih` (104, 40, 70) as the nexus and
/// `t->conn->session->target->tid` (56, 224) as the target; it masks the
/// byte at 1 of the same `t` with 0x7f. Every path of the code is followed
/// (`crate::flow`), so the compiler's choice of registers, spills and
/// branch layout does not matter.
pub fn prove_received(code: &Code) -> Result<crate::locate::TaskPoint, String> {
    let &(mgmt, _) = code
        .exported
        .get("target_mgmt_request")
        .ok_or("target_mgmt_request is not exported")?;
    let call_sites: Vec<u64> = code
        .insns
        .iter()
        .filter(|i| {
            i.flow_control() == FlowControl::Call
                && i.op0_kind() == iced_x86::OpKind::NearBranch64
                && i.near_branch_target() == mgmt
        })
        .map(|i| i.ip())
        .collect();
    let mut found = Vec::new();
    let mut unproved = Vec::new();
    for site in call_sites {
        let Some(&start) = code.starts.range(..=site).next_back() else {
            continue;
        };
        let f = code.facts(start, None, 0);
        let Some(call) = f.calls.iter().find(|c| c.ip == site) else {
            continue;
        };
        let Some(task) = call.args[2].clone().filter(|t| !mentions_unknown(t)) else {
            continue;
        };
        // The session: through `t->conn`, or through the connection the
        // enclosing function already holds (clang); `t->conn` is then
        // proved by its own read.
        let via_task = Val::load(
            &Val::load(&task, layout::ISCSI_TASK_CONN as i64),
            layout::ISCSI_CONN_SESSION as i64,
        );
        let session = match &call.args[1] {
            Some(Val::Load(s, d)) if *d == layout::ISCSI_SESSION_TSIH as i64 => match &**s {
                Val::Load(_, d) if *d == layout::ISCSI_CONN_SESSION as i64 => (**s).clone(),
                _ => via_task.clone(),
            },
            _ => via_task.clone(),
        };
        let conn_read = f
            .at(Use::Read, &task, layout::ISCSI_TASK_CONN, 8)
            .next()
            .is_some();
        let target = Val::load(&session, layout::ISCSI_SESSION_TARGET as i64);
        let args: [(&str, Val, usize); 4] = [
            (
                "t->conn->session->target->tid (first argument)",
                Val::load(&target, layout::ISCSI_TARGET_TID as i64),
                0,
            ),
            (
                "t->conn->session->tsih (second argument)",
                Val::load(&session, layout::ISCSI_SESSION_TSIH as i64),
                1,
            ),
            (
                "&t->req.lun (fifth argument)",
                Val::Addr(Box::new(task.clone()), layout::ISCSI_TASK_LUN as i64),
                4,
            ),
            (
                "t->req.rtt (sixth argument)",
                Val::load(&task, layout::ISCSI_TASK_RTT as i64),
                5,
            ),
        ];
        let mut missing: Vec<&str> = args
            .iter()
            .filter(|(_, want, at)| call.args[*at].as_ref() != Some(want))
            .map(|(what, _, _)| *what)
            .collect();
        if !conn_read {
            missing.push("t->conn (104) read");
        }
        // The read of `req->flags` that the mask follows (the nearest one
        // before it; the same byte is read elsewhere for other reasons).
        let flags = Val::load(&task, layout::ISCSI_TASK_FLAGS as i64);
        let mask = Val::Imm(u64::from(layout::ISCSI_TMF_FUNCTION_MASK));
        let mut reads_all: Vec<u64> = f
            .at(Use::Read, &task, layout::ISCSI_TASK_FLAGS, 1)
            .map(|a| a.ip)
            .collect();
        reads_all.sort_unstable();
        reads_all.dedup();
        let mut reads: Vec<u64> = f
            .compares
            .iter()
            .filter(|c| c.of(&flags, &mask))
            .filter_map(|c| reads_all.iter().rev().find(|&&r| r < c.ip).copied())
            .collect();
        reads.sort_unstable();
        reads.dedup();
        // Masked more than once (`-O0` also masks it for the message of
        // an unknown function): the switch's read is the one on every path
        // to the call.
        if reads.len() > 1 {
            let body = code.function(start, None);
            reads.retain(|&r| flow::dominates(body, r, site));
        }
        if reads.is_empty() {
            missing.push("t->req.flags (1) masked with ISCSI_FLAG_TM_FUNC_MASK");
        }
        if f.at(Use::Write, &task, layout::ISCSI_TASK_RESULT, 4)
            .next()
            .is_none()
        {
            missing.push("t->result (168) stored");
        }
        if !missing.is_empty() {
            unproved.push(format!(
                "the call of target_mgmt_request at {site:#x} does not show {}",
                missing.join(", ")
            ));
            continue;
        }
        for ip in reads {
            let at = code.insns.partition_point(|n| n.ip() < ip);
            if let Some(task_reg) = code
                .insns
                .get(at)
                .and_then(|n| crate::locate::pt_regs_index(n.memory_base()))
                && !found
                    .iter()
                    .any(|p: &crate::locate::TaskPoint| p.address == ip)
            {
                found.push(crate::locate::TaskPoint {
                    address: ip,
                    task_reg,
                });
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 if !unproved.is_empty() => Err(unproved.join("; ")),
        0 => Err("iscsi_tm_execute's call of target_mgmt_request was not found".to_owned()),
        n => Err(format!(
            "iscsi_tm_execute's read of the TMF function fits {n} places; tgt-trace uses none"
        )),
    }
}

fn mentions_unknown(v: &Val) -> bool {
    match v {
        Val::Unknown | Val::Sp(_) | Val::Imm(_) => true,
        Val::Load(b, _) | Val::Addr(b, _) | Val::Elem(b) => mentions_unknown(b),
        _ => false,
    }
}

/// Where an entry probe goes: the first instruction of the function's
/// entry block that the kernel emulates (a push of a register, a relative branch or
/// call), with the register each argument the probe reads is in there, as
/// the dataflow shows it. A single-stepped first instruction (`endbr64`,
/// `mov %rdi,%rdx`) costs a second trap per hit; the instructions of the
/// entry block run exactly once per call, so the probe sees every call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Virtual address.
    pub address: u64,
    /// Bytes from the function's entry.
    pub from_entry: u64,
    /// `tgt_trace_common::args` packing: where each argument is.
    pub args: u64,
}

/// The placement of a probe on the function at `entry` that reads the
/// arguments `needs`; at the entry itself (System V registers) when no
/// emulated instruction of the entry block has them all in registers.
pub fn place(code: &Code, entry: u64, size: Option<u64>, needs: &[usize]) -> Placement {
    use tgt_trace_common::args;
    let at_entry = Placement {
        address: entry,
        from_entry: 0,
        args: args::SYSV,
    };
    let body = code.function(entry, size);
    let states = flow::entry_block(body);
    for (insn, regs) in body.iter().zip(&states) {
        if !crate::tgtd::UprobeStep::of(insn).is_emulated() {
            continue;
        }
        let mut packed = std::array::from_fn(|n| args::of(args::SYSV, n));
        let sysv = flow::ARG_REGS;
        let found = needs.iter().all(|&n| {
            // The argument's own register if it still holds it, else any.
            let holds = |r: &Register| {
                regs.iter()
                    .any(|(reg, v)| reg == r && *v == Val::Arg(n as u8))
            };
            let reg = std::iter::once(sysv[n])
                .filter(holds)
                .chain(
                    regs.iter()
                        .filter(|(_, v)| *v == Val::Arg(n as u8))
                        .map(|(r, _)| *r),
                )
                .find_map(crate::locate::pt_regs_index);
            match reg {
                Some(index) => {
                    packed[n] = index;
                    true
                }
                None => false,
            }
        });
        if found {
            return Placement {
                address: insn.ip(),
                from_entry: insn.ip() - entry,
                args: args::pack(packed),
            };
        }
    }
    at_entry
}

#[cfg(test)]
mod tests {
    use super::*;
    use object::ObjectSymbol as _;

    /// The layout of the tgtd this machine runs, proved from its code.
    pub(crate) fn prove_file(path: &str) -> Option<LayoutProof> {
        let data = std::fs::read(path).ok()?;
        let file = object::File::parse(&*data).ok()?;
        let exported: HashMap<String, (u64, u64)> = file
            .dynamic_symbols()
            .filter(|s| s.is_definition())
            .filter_map(|s| Some((s.name().ok()?.to_owned(), (s.address(), s.size()))))
            .collect();
        let code = Code::new(&file, &exported)?;
        let tm_done = crate::tgtd::iscsi_mgmt_end_notify(&file);
        Some(prove(&code, tm_done))
    }

    #[test]
    fn debian_tgtd_is_proved_field_by_field() {
        let Some(proof) = prove_file(crate::tgtd::DEFAULT_TGTD) else {
            eprintln!("skipped: no tgtd at {}", crate::tgtd::DEFAULT_TGTD);
            return;
        };
        for f in &proof.fields {
            eprintln!("{}: {:?} {:?}", f.field, f.how, f.why_not);
        }
        let unproved: Vec<_> = proof.unproved().collect();
        assert!(unproved.is_empty(), "{unproved:#?}");
    }
}
