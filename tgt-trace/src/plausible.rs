//! Runtime plausibility: cheap checks, while tracing, that would catch a
//! wrong struct layout the static proof ([`crate::tgtd`]) missed.
//!
//! The probes read tgtd's `struct scsi_cmd` and `struct mgmt_req` at fixed
//! offsets (`tgt_trace_common::layout`). Read at a wrong offset, a field
//! still decodes, as some other field's bytes. Each check here names a
//! property tgtd's own source guarantees for the right bytes, so a
//! violation means the bytes are not what tgt-trace thinks they are (or,
//! for `lun_format` only, an initiator that breaks SAM). The checker is fed
//! the decoded events in order, by the [`crate::pipeline::Driver`], live and
//! in replay alike; it holds bounded memory and counts what it could not
//! check.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tgt_trace_common::{TASK_ABORTED, iscsi_rsp, mgmt_ret, tmf};

use crate::event::Event;

/// Commands queued and not yet released that are remembered for the
/// identity check. tgtd's default command window is 128 per session; this
/// is room for hundreds of busy sessions. Past it, new commands are not
/// remembered, and counted in [`LayoutViolations::untracked`].
pub const TRACKED_COMMANDS: usize = 65_536;

/// The first violations kept as examples, in the order seen.
pub const EXAMPLES: usize = 8;

/// One named check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// `cmd_perform`, `cmd_result`, `cmd_release` and `tmf_covers` name a
    /// command by its address (`struct scsi_cmd *`) with the tag and nexus
    /// `cmd_queue` saw there: tgtd sets both before `target_cmd_queue`
    /// (iSCSI: `iscsi_scsi_cmd_execute`) and never changes them until
    /// `target_cmd_done`.
    CmdIdentity,
    /// A core TMF function is one `target_mgmt_request` (tgt `usr/target.c`)
    /// names: ABORT_TASK, ABORT_TASK_SET, CLEAR_ACA, CLEAR_TASK_SET,
    /// LOGICAL_UNIT_RESET (`usr/scsi.h`); on a release, one that waits for
    /// commands (every one but CLEAR_ACA, which `target_mgmt_request`
    /// answers without looking at a command).
    TmfFunction,
    /// `mreq->result` as tgt sets it for the function: `target_mgmt_request`
    /// sets 0, -EEXIST (ABORT_TASK found nothing) or -EINVAL (CLEAR_ACA, an
    /// unknown function); `target_cmd_done` sets -EEXIST for ABORT_TASK and
    /// 0 for the others.
    TmfResult,
    /// `target_mgmt_request` returns `enum mgmt_req_result` (`usr/tgtd.h`):
    /// -1, 0 or 1.
    TmfReturn,
    /// A waiting TMF's `mreq->busy` before a release is at least 1:
    /// `abort_task_set` counts each command it defers, `target_cmd_done`
    /// counts down and frees the request at 0.
    TmfBusy,
    /// A command's result is a SAM status (tgt `usr/scsi.h` `SAM_STAT_*`,
    /// which the device types and backing stores return, and `bs_sg` passes
    /// on from the device) or tgt's TASK_ABORTED (0x20, `abort_cmd`).
    ScsiResult,
    /// The LUN's 8 bytes are a SAM-5 LUN structure (section 4.7): a level
    /// that addresses a logical unit ends the LUN, so the levels after it
    /// are zero, and an extended address is one of the formats SAM defines.
    LunFormat,
    /// The iSCSI TMF response tgtd wrote is one tgt sets: `iscsi_tm_done`
    /// (FUNCTION COMPLETE, TASK DOES NOT EXIST, NOT SUPPORTED, REJECTED) and
    /// `iscsi_tm_execute` (NOT SUPPORTED, REJECTED), `usr/iscsi/iscsid.c`.
    IscsiResponse,
}

impl Check {
    pub const ALL: [Check; 8] = [
        Check::CmdIdentity,
        Check::TmfFunction,
        Check::TmfResult,
        Check::TmfReturn,
        Check::TmfBusy,
        Check::ScsiResult,
        Check::LunFormat,
        Check::IscsiResponse,
    ];

    /// The name in the trace, the metrics and `check`'s verdicts.
    pub fn name(self) -> &'static str {
        match self {
            Check::CmdIdentity => "cmd_identity",
            Check::TmfFunction => "tmf_function",
            Check::TmfResult => "tmf_result",
            Check::TmfReturn => "tmf_return",
            Check::TmfBusy => "tmf_busy",
            Check::ScsiResult => "scsi_result",
            Check::LunFormat => "lun_format",
            Check::IscsiResponse => "iscsi_response",
        }
    }
}

/// One violation, as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Violation {
    /// The check's name (`cmd_identity`, `tmf_function`, ...).
    pub check: String,
    /// The event's kind (`cmd_release`, ...).
    pub event: String,
    pub ts_ns: u64,
    pub pid: u32,
    /// What was seen, and what tgt allows there.
    pub detail: String,
}

/// What the checks found: counts by check, the first few as examples, and
/// what could not be checked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LayoutViolations {
    /// Violations by check name; checks that never fired are absent.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub counts: BTreeMap<String, u64>,
    /// The first violations (at most 8), in the order seen.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<Violation>,
    /// Commands queued while the identity check's table was full: their
    /// later events were not checked against their queue.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub untracked: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl LayoutViolations {
    /// All violations, of every check. Saturating: a trace's summary line
    /// is input and can hold any counts.
    pub fn total(&self) -> u64 {
        self.counts.values().fold(0, |a, &n| a.saturating_add(n))
    }

    /// Nothing to say: no violation, nothing unchecked (what the summary
    /// line leaves out).
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty() && self.untracked == 0
    }

    /// `cmd_identity 3, lun_format 1`.
    pub fn describe(&self) -> String {
        self.counts
            .iter()
            .map(|(check, n)| format!("{check} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Why a trace with violations cannot be trusted, and what to do.
    pub fn inconclusive_reason(&self) -> String {
        format!(
            "{} layout plausibility violations ({}): tgt-trace may be reading this tgtd with a \
             wrong struct layout; run `tgt-trace probes` and report the build",
            self.total(),
            self.describe()
        )
    }
}

/// What the identity check remembers of a queued command.
#[derive(Debug, Clone, Copy)]
struct Queued {
    itn_id: u64,
    tag: u64,
}

/// The checker: feed it every event, in order.
#[derive(Debug)]
pub struct Checker {
    /// `(pid, cmd address)` of commands queued and not yet released.
    queued: HashMap<(u32, u64), Queued>,
    capacity: usize,
    found: LayoutViolations,
    /// Off for the kernel target: its offsets come from the kernel's own
    /// BTF, and a command ends at its status, not a release.
    enabled: bool,
}

impl Default for Checker {
    fn default() -> Self {
        Checker::new(TRACKED_COMMANDS)
    }
}

impl Checker {
    pub fn new(capacity: usize) -> Checker {
        Checker {
            queued: HashMap::new(),
            capacity,
            found: LayoutViolations::default(),
            enabled: true,
        }
    }

    /// A checker that checks nothing (a LIO trace).
    pub fn disabled() -> Checker {
        Checker {
            enabled: false,
            ..Checker::new(0)
        }
    }

    pub fn violations(&self) -> &LayoutViolations {
        &self.found
    }

    /// Every violation counted so far (for a cheap "has it changed?").
    pub fn total(&self) -> u64 {
        self.found.total()
    }

    /// Commands remembered now.
    pub fn tracked(&self) -> usize {
        self.queued.len()
    }

    fn flag(&mut self, check: Check, event: &Event, detail: impl FnOnce() -> String) {
        let n = self
            .found
            .counts
            .entry(check.name().to_owned())
            .or_default();
        *n = n.saturating_add(1);
        if self.found.examples.len() < EXAMPLES {
            self.found.examples.push(Violation {
                check: check.name().to_owned(),
                event: event.kind_name().to_owned(),
                ts_ns: event.ts_ns(),
                pid: event.pid(),
                detail: detail(),
            });
        }
    }

    pub fn push(&mut self, event: &Event) {
        if !self.enabled {
            return;
        }
        match *event {
            Event::CmdQueue {
                pid,
                itn_id,
                tag,
                cmd,
                lun_raw,
                ..
            } => {
                // An address still remembered was released unseen (events
                // lost, or no release probe): this is a new command.
                let key = (pid, cmd);
                if self.queued.len() < self.capacity || self.queued.contains_key(&key) {
                    self.queued.insert(key, Queued { itn_id, tag });
                } else {
                    self.found.untracked = self.found.untracked.saturating_add(1);
                }
                if let Some(raw) = lun_raw {
                    self.lun(event, raw);
                }
            }
            Event::CmdPerform {
                pid,
                itn_id,
                tag,
                cmd,
                ..
            } => self.same_command(event, pid, cmd, itn_id, tag, false),
            Event::CmdResult {
                pid,
                itn_id,
                tag,
                cmd,
                result,
                ..
            } => {
                self.same_command(event, pid, cmd, itn_id, tag, false);
                self.scsi_result(event, result);
            }
            Event::CmdRelease {
                pid,
                itn_id,
                tag,
                cmd,
                result,
                tmf: waiter,
                ..
            } => {
                // A release whose address was never queued is fine: the
                // trace began while the command was in flight.
                self.same_command(event, pid, cmd, itn_id, tag, true);
                self.scsi_result(event, result);
                if let Some(w) = waiter {
                    if !waits_for_commands(w.function) {
                        self.flag(Check::TmfFunction, event, || {
                            format!(
                                "waiting TMF's function {:#04x} is not one that waits for \
                                 commands (ABORT_TASK 0x0d, ABORT_TASK_SET 0x06, \
                                 CLEAR_TASK_SET 0x0e, LOGICAL_UNIT_RESET 0x17)",
                                w.function
                            )
                        });
                    }
                    if w.busy < 1 {
                        self.flag(Check::TmfBusy, event, || {
                            format!("waiting TMF's busy count {} before a release; tgtd's is at least 1", w.busy)
                        });
                    }
                }
            }
            Event::TmfRequest {
                function, lun_raw, ..
            } => {
                self.function(event, function);
                if let Some(raw) = lun_raw {
                    self.lun(event, raw);
                }
            }
            Event::TmfReturn { ret, .. } => {
                if !matches!(ret, mgmt_ret::FAILED | mgmt_ret::DONE | mgmt_ret::QUEUED) {
                    self.flag(Check::TmfReturn, event, || {
                        format!("target_mgmt_request returned {ret}; tgt returns -1, 0 or 1")
                    });
                }
            }
            Event::TmfResponse {
                function, result, ..
            } => {
                if self.function(event, function) && !tmf_result_ok(function, result) {
                    self.flag(Check::TmfResult, event, || {
                        format!(
                            "mreq->result {result} for function {function:#04x}; tgt sets {}",
                            tmf_results_text(function)
                        )
                    });
                }
            }
            Event::TmfCovers {
                pid,
                itn_id,
                tag,
                cmd,
                lun_raw,
                ..
            } => {
                self.same_command(event, pid, cmd, itn_id, tag, false);
                self.lun(event, lun_raw);
            }
            Event::TmfSent { response, .. } => {
                if !matches!(
                    response,
                    iscsi_rsp::FUNCTION_COMPLETE
                        | iscsi_rsp::TASK_DOES_NOT_EXIST
                        | iscsi_rsp::NOT_SUPPORTED
                        | iscsi_rsp::REJECTED
                ) {
                    self.flag(Check::IscsiResponse, event, || {
                        format!("iSCSI TMF response {response}; tgtd sends 0, 1, 5 or 255")
                    });
                }
            }
            Event::ProcessExit { pid, .. } => {
                // Its commands are gone with it.
                self.queued.retain(|&(p, _), _| p != pid);
            }
            Event::NexusCreate { .. }
            | Event::NexusDestroy { .. }
            | Event::TmfReceived { .. }
            | Event::TmfTxStart { .. }
            | Event::TmfWalked { .. }
            | Event::ConnClose { .. }
            | Event::TmfExecute { .. }
            | Event::AbortWait { .. }
            | Event::AbortWaited { .. } => {}
            Event::SampleWindow { .. } => {
                // `--sample`: a command queued in one window and released
                // after it closed leaves its address here, and tgtd reuses
                // the address for another command that a later window sees
                // released: not the same command, so nothing to compare.
                self.queued.clear();
            }
        }
    }

    fn same_command(
        &mut self,
        event: &Event,
        pid: u32,
        cmd: u64,
        itn_id: u64,
        tag: u64,
        released: bool,
    ) {
        let key = (pid, cmd);
        let Some(&queued) = self.queued.get(&key) else {
            return;
        };
        if released {
            self.queued.remove(&key);
        }
        if (queued.itn_id, queued.tag) != (itn_id, tag) {
            self.flag(Check::CmdIdentity, event, || {
                format!(
                    "command {cmd:#x} has nexus {itn_id} tag {tag:#x}; it was queued with \
                     nexus {} tag {:#x}",
                    queued.itn_id, queued.tag
                )
            });
        }
    }

    /// False (and counted) when `function` is not a core TMF function.
    fn function(&mut self, event: &Event, function: u8) -> bool {
        let known = matches!(
            function,
            tmf::ABORT_TASK
                | tmf::ABORT_TASK_SET
                | tmf::CLEAR_ACA
                | tmf::CLEAR_TASK_SET
                | tmf::LOGICAL_UNIT_RESET
        );
        if !known {
            self.flag(Check::TmfFunction, event, || {
                format!(
                    "TMF function {function:#04x} is none of tgt's (0x0d, 0x06, 0x16, 0x0e, 0x17)"
                )
            });
        }
        known
    }

    fn scsi_result(&mut self, event: &Event, result: i32) {
        if !scsi_result_ok(result) {
            self.flag(Check::ScsiResult, event, || {
                format!(
                    "command result {result:#x} is neither a SAM status nor TASK_ABORTED (0x20)"
                )
            });
        }
    }

    fn lun(&mut self, event: &Event, raw: u64) {
        if let Err(why) = lun_well_formed(raw.to_be_bytes()) {
            self.flag(Check::LunFormat, event, || {
                format!("LUN bytes {raw:016x}: {why}")
            });
        }
    }
}

/// The TMFs that can wait for a command (`abort_task_set` sets
/// `cmd->mreq`): all but CLEAR_ACA (tgt `target_mgmt_request`).
fn waits_for_commands(function: u8) -> bool {
    matches!(
        function,
        tmf::ABORT_TASK | tmf::ABORT_TASK_SET | tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET
    )
}

const EEXIST: i32 = 17;
const EINVAL: i32 = 22;

/// `mreq->result` tgt can set for `function` (tgt `usr/target.c`:
/// `target_mgmt_request`, `target_cmd_done`).
fn tmf_result_ok(function: u8, result: i32) -> bool {
    match function {
        tmf::ABORT_TASK => result == 0 || result == -EEXIST,
        tmf::CLEAR_ACA => result == -EINVAL,
        _ => result == 0,
    }
}

fn tmf_results_text(function: u8) -> &'static str {
    match function {
        tmf::ABORT_TASK => "0 or -EEXIST (-17)",
        tmf::CLEAR_ACA => "-EINVAL (-22)",
        _ => "0",
    }
}

/// SAM status codes (tgt `usr/scsi.h` `SAM_STAT_*`, SAM-5 table 45), and
/// tgt's TASK_ABORTED (0x20, `usr/target.c` `abort_cmd`).
pub fn scsi_result_ok(result: i32) -> bool {
    matches!(
        result,
        0x00 // GOOD
        | 0x02 // CHECK CONDITION
        | 0x04 // CONDITION MET
        | 0x08 // BUSY
        | 0x10 // INTERMEDIATE (obsolete)
        | 0x14 // INTERMEDIATE-CONDITION MET (obsolete)
        | 0x18 // RESERVATION CONFLICT
        | 0x22 // COMMAND TERMINATED (obsolete)
        | 0x28 // TASK SET FULL
        | 0x30 // ACA ACTIVE
        | 0x40 // TASK ABORTED
    ) || result == TASK_ABORTED
}

/// Whether 8 LUN bytes are a SAM-5 eight-byte LUN structure (SAM-5 4.7):
/// up to four 2-byte levels, each with its address method in the top two
/// bits of its first byte. Peripheral device addressing (00b) with a bus
/// identifier of 0, flat space (01b) and logical unit addressing (10b)
/// address a logical unit at that level, so the levels after it are null
/// (0000h); a non-zero bus identifier continues to the next level. Extended
/// addressing (11b) is one of SAM's formats, by its length and extended
/// address method: a well-known LUN (C1h, 2 bytes), extended flat space
/// (D2h, 4 bytes), long extended flat space (E2h, 6 bytes), or "logical
/// unit not specified" (FFh, 8 bytes of FFh); the bytes after it are zero.
/// tgt's `__scsi_get_devid` (`usr/scsi.c`) reads only the first level and
/// maps what it cannot use to no LUN: such bytes reach tgtd from a
/// conforming initiator, and are not flagged.
pub fn lun_well_formed(bytes: [u8; 8]) -> Result<(), String> {
    let rest_zero = |from: usize| bytes[from..].iter().all(|&b| b == 0);
    for level in 0..4 {
        let at = level * 2;
        let first = bytes[at];
        match first >> 6 {
            0 if first & 0x3f != 0 => continue,
            0..=2 => {
                return if rest_zero(at + 2) {
                    Ok(())
                } else {
                    Err(format!(
                        "level {} addresses a logical unit, but the levels after it are not zero",
                        level + 1
                    ))
                };
            }
            _ => {
                let (length, method) = ((first >> 4) & 0x3, first & 0xf);
                let len = match (length, method) {
                    (0, 0x1) | (1, 0x2) | (2, 0x2) => 2 * (usize::from(length) + 1),
                    (3, 0xf) => {
                        return if bytes[at..].iter().all(|&b| b == 0xff) {
                            Ok(())
                        } else {
                            Err("\"logical unit not specified\" must be all FFh".to_owned())
                        };
                    }
                    _ => {
                        return Err(format!(
                            "extended address byte {first:#04x} is a reserved format"
                        ));
                    }
                };
                return if at + len <= 8 && rest_zero((at + len).min(8)) {
                    Ok(())
                } else {
                    Err(format!(
                        "extended address {first:#04x} of {len} bytes is followed by non-zero bytes"
                    ))
                };
            }
        }
    }
    // Four levels each naming a bus: nothing addresses the logical unit.
    Err("no level addresses a logical unit".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Waiter;

    const CMD: u64 = 0x5555_0000_1000;

    fn queue(cmd: u64, tag: u64, lun: [u8; 8]) -> Event {
        Event::CmdQueue {
            ts_ns: 1,
            pid: 7,
            tid: 1,
            itn_id: 0x1_0000_0002,
            tag,
            lun: crate::decode::lun_number(&lun),
            lun_raw: Some(u64::from_be_bytes(lun)),
            opcode: 0x28,
            attribute: 0x20,
            cmd,
        }
    }

    fn release(cmd: u64, tag: u64, result: i32, tmf: Option<Waiter>) -> Event {
        Event::CmdRelease {
            ts_ns: 4,
            pid: 7,
            itn_id: 0x1_0000_0002,
            tag,
            cmd,
            result,
            tmf,
        }
    }

    fn response(function: u8, result: i32) -> Event {
        Event::TmfResponse {
            ts_ns: 9,
            pid: 7,
            mid: 0x77,
            function,
            result,
            connection_closed: Some(false),
        }
    }

    const LUN1: [u8; 8] = [0, 1, 0, 0, 0, 0, 0, 0];

    fn run(events: &[Event]) -> LayoutViolations {
        let mut c = Checker::default();
        for e in events {
            c.push(e);
        }
        c.violations().clone()
    }

    /// A command's life and an ABORT TASK that waits for it, as a real
    /// tgtd traces them: nothing fires.
    #[test]
    fn real_shaped_events_pass() {
        let found = run(&[
            queue(CMD, 0x10, LUN1),
            Event::CmdPerform {
                ts_ns: 2,
                pid: 7,
                itn_id: 0x1_0000_0002,
                tag: 0x10,
                cmd: CMD,
            },
            Event::TmfRequest {
                ts_ns: 3,
                pid: 7,
                tid: 1,
                itn_id: 0x1_0000_0002,
                mid: 0x77,
                function: tmf::ABORT_TASK,
                tag: 0x10,
                lun: 1,
                lun_raw: Some(u64::from_be_bytes(LUN1)),
            },
            Event::TmfReturn {
                ts_ns: 3,
                pid: 7,
                mid: 0x77,
                ret: mgmt_ret::QUEUED,
            },
            Event::CmdResult {
                ts_ns: 4,
                pid: 7,
                itn_id: 0x1_0000_0002,
                tag: 0x10,
                cmd: CMD,
                result: 0,
                tmf_mid: Some(0x77),
            },
            release(
                CMD,
                0x10,
                0,
                Some(Waiter {
                    mid: 0x77,
                    function: tmf::ABORT_TASK,
                    busy: 1,
                }),
            ),
            response(tmf::ABORT_TASK, -EEXIST),
            // The address reused by the next command, with a new tag.
            queue(CMD, 0x11, LUN1),
            release(CMD, 0x11, TASK_ABORTED, None),
            // Released, never queued in this trace: it began mid-command.
            release(0x9999, 0x3, 2, None),
            response(tmf::LOGICAL_UNIT_RESET, 0),
            response(tmf::CLEAR_ACA, -EINVAL),
        ]);
        assert_eq!(found, LayoutViolations::default(), "{found:?}");
    }

    #[test]
    fn a_release_whose_tag_differs_from_its_queue_is_counted() {
        let found = run(&[queue(CMD, 0x10, LUN1), release(CMD, 0x2a, 0, None)]);
        assert_eq!(found.counts.get("cmd_identity"), Some(&1));
        assert_eq!(found.examples[0].event, "cmd_release");
        assert!(found.examples[0].detail.contains("tag 0x10"), "{found:?}");
        // Released: the address's next queue is a new command.
        let found = run(&[
            queue(CMD, 0x10, LUN1),
            release(CMD, 0x2a, 0, None),
            release(CMD, 0x2b, 0, None),
        ]);
        assert_eq!(found.total(), 1);
    }

    #[test]
    fn bad_function_codes_and_results_are_counted() {
        let found = run(&[
            response(1, 0),
            response(tmf::ABORT_TASK_SET, -EEXIST),
            response(tmf::ABORT_TASK, 5),
            Event::TmfReturn {
                ts_ns: 3,
                pid: 7,
                mid: 1,
                ret: 2,
            },
            release(
                CMD,
                1,
                0,
                Some(Waiter {
                    mid: 1,
                    function: tmf::CLEAR_ACA,
                    busy: 0,
                }),
            ),
        ]);
        let counts: Vec<(&str, u64)> = found.counts.iter().map(|(k, v)| (k.as_str(), *v)).collect();
        assert_eq!(
            counts,
            [
                ("tmf_busy", 1),
                ("tmf_function", 2),
                ("tmf_result", 2),
                ("tmf_return", 1)
            ]
        );
    }

    #[test]
    fn command_results_follow_tgt() {
        for ok in [0, 2, 8, 0x18, 0x28, TASK_ABORTED, 0x40] {
            assert!(scsi_result_ok(ok), "{ok:#x}");
        }
        for bad in [1, 0x03, 0x7f, -1, 0x0100_0000] {
            assert!(!scsi_result_ok(bad), "{bad:#x}");
        }
        let found = run(&[release(CMD, 1, 0x1234, None)]);
        assert_eq!(found.counts.get("scsi_result"), Some(&1));
    }

    #[test]
    fn lun_bytes_follow_sam() {
        for ok in [
            [0u8; 8],
            LUN1,
            [0x40 | 0x01, 0x02, 0, 0, 0, 0, 0, 0],
            [0x01, 0x02, 0x00, 0x05, 0, 0, 0, 0],
            [0xc1, 0x01, 0, 0, 0, 0, 0, 0],
            [0xd2, 0x00, 0x12, 0x34, 0, 0, 0, 0],
            [0xff; 8],
        ] {
            assert_eq!(lun_well_formed(ok), Ok(()), "{ok:02x?}");
        }
        for bad in [
            // A user-space pointer read where the LUN should be.
            [0xa0, 0x12, 0x34, 0x56, 0xfc, 0x7f, 0, 0],
            [0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01],
            [0xc0, 0, 0, 0, 0, 0, 0, 0],
            [0xc1, 0x01, 0, 0, 0, 0, 0, 9],
            [0xff, 0xff, 0, 0, 0, 0, 0, 0],
            [0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01, 0x01],
        ] {
            assert!(lun_well_formed(bad).is_err(), "{bad:02x?}");
        }
        let found = run(&[queue(CMD, 1, [0xa0, 0x12, 0x34, 0x56, 0xfc, 0x7f, 0, 0])]);
        assert_eq!(found.counts.get("lun_format"), Some(&1));
    }

    #[test]
    fn the_table_is_bounded_and_what_falls_out_is_counted() {
        let mut c = Checker::new(2);
        for cmd in 1..=5 {
            c.push(&queue(cmd, cmd, LUN1));
        }
        assert_eq!(c.tracked(), 2);
        assert_eq!(c.violations().untracked, 3);
        // An untracked command's release is not checked, nor counted again.
        c.push(&release(5, 99, 0, None));
        assert_eq!(c.total(), 0);
        c.push(&release(1, 99, 0, None));
        assert_eq!(c.total(), 1);
        c.push(&Event::ProcessExit { ts_ns: 9, pid: 7 });
        assert_eq!(c.tracked(), 0);
    }

    // `--sample`: a command queued in a window that closed before its
    // release; its address, reused by another command released in the next
    // window, is no identity violation.
    #[test]
    fn a_sample_window_forgets_the_commands_it_cut() {
        let mut c = Checker::default();
        c.push(&queue(0x100, 1, LUN1));
        c.push(&Event::SampleWindow {
            ts_ns: 5,
            pid: 0,
            open: false,
        });
        c.push(&Event::SampleWindow {
            ts_ns: 6,
            pid: 0,
            open: true,
        });
        c.push(&release(0x100, 2, 0, None));
        assert_eq!(c.total(), 0);
        assert_eq!(c.tracked(), 0);
    }

    #[test]
    fn examples_are_bounded() {
        let events: Vec<Event> = (0..100).map(|_| response(0x42, 0)).collect();
        let found = run(&events);
        assert_eq!(found.counts.get("tmf_function"), Some(&100));
        assert_eq!(found.examples.len(), EXAMPLES);
    }

    proptest::proptest! {
        /// Whatever the tags, a command released with its queue's identity
        /// is never flagged, and one released with another always is.
        #[test]
        fn identity_holds_exactly_when_tags_match(
            tags in proptest::collection::vec((proptest::num::u64::ANY, proptest::num::u64::ANY), 1..50),
        ) {
            let mut c = Checker::default();
            let mut expected = 0;
            for (i, &(queued, released)) in tags.iter().enumerate() {
                let cmd = (i as u64 % 4) * 0x100;
                c.push(&queue(cmd, queued, LUN1));
                c.push(&release(cmd, released, 0, None));
                if queued != released {
                    expected += 1;
                }
            }
            proptest::prop_assert_eq!(c.total(), expected);
            proptest::prop_assert_eq!(c.tracked(), 0);
        }
    }
}
