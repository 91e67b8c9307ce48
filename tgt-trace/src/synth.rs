//! Deterministic synthetic event streams that follow tgtd's semantics (tgt
//! `usr/target.c`), for the matcher's property tests and its benchmark.
//!
//! The generator plays tgtd: commands are queued, performed (handed to the
//! backing store), completed and released on several I_T nexuses of several
//! tgtd processes; TMFs cover commands exactly as `abort_task_set` does, abort
//! at once those not yet performed and wait (`cmd->mreq`, busy count) for the
//! others. It keeps the [`Truth`]: what a correct matcher must conclude.
//!
//! Same seed, same stream: the generator owns its PRNG (splitmix64) and
//! allocates only when a nexus is created.

use std::collections::BTreeMap;

use rustc_hash::FxHashMap;
use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

use crate::{
    correlate::{Coverage, TmfOutcome, outcome_name},
    event::{Event, Waiter},
};

const EEXIST: i32 = 17;
const EINVAL: i32 = 22;
/// SAM CHECK CONDITION, the error status the generator uses.
const CHECK_CONDITION: i32 = 0x02;
const TID: i32 = 1;
const PPM: u64 = 1_000_000;

/// The mix of the stream. Rates are per queued command, in parts per million.
#[derive(Debug, Clone)]
pub struct SynthConfig {
    pub seed: u64,
    /// tgtd processes; each has its own nexuses with the same `itn_id`s and
    /// tags, so a matcher that mixes processes up gets them wrong.
    pub pids: u32,
    /// I_T nexuses per process.
    pub nexuses: u32,
    pub luns: u32,
    /// Commands in flight per nexus, at most.
    pub depth: usize,
    pub error_ppm: u32,
    /// Commands held in tgtd's queue (e.g. behind an ORDERED command) before
    /// they are performed: the ones a TMF can abort at once.
    pub held_ppm: u32,
    pub abort_task_ppm: u32,
    pub abort_task_set_ppm: u32,
    pub lun_reset_ppm: u32,
    /// TMFs tgtd's iSCSI layer answers itself (`iscsi_tm_execute`): CLEAR
    /// TASK SET and the target resets (FUNCTION NOT SUPPORTED) and an
    /// unknown function (FUNCTION REJECTED); the core never sees them.
    pub transport_tmf_ppm: u32,
    /// Commands given tag 0 (when their nexus has none in flight): tgtd's
    /// LUN-wide TMFs pass tag 0 to `abort_task_set`, so they also cover the
    /// requester's tag-0 commands on other LUNs.
    pub tag_zero_ppm: u32,
    /// Commands whose LUN is written in flat addressing (`0x40 | hi, lo`)
    /// instead of peripheral (`0, lun`): the same LUN number, other bytes,
    /// and tgtd compares the bytes (`memcmp`).
    pub lun_alias_ppm: u32,
    /// Deferred TMFs whose connection closes after tgtd built the response
    /// and before it was sent: `conn_close` frees it (tgt
    /// `usr/iscsi/conn.c`), so the initiator is never answered. Only where
    /// the trace has the iSCSI layer's points to tell.
    pub unsent_ppm: u32,
    /// Which events the stream contains. Without `release` and `covers`
    /// nothing ever ends; `Coverage::TMF_RELEASES` (the TMF probe set of
    /// schema 5) has releases filtered as its kernel probe filtered them
    /// (aborted or blocking a TMF); `Coverage::TMF_ONLY` has no command
    /// event, and each TMF's walk of the task lists (`covers`).
    pub probes: Coverage,
    /// Time between events: uniform in `1..=2 * mean_gap_ns`.
    pub mean_gap_ns: u64,
}

impl Default for SynthConfig {
    /// A busy target: 4 initiators at queue depth 32 over 4 LUNs; one
    /// command in 1000 is aborted by ABORT TASK, LUN-wide TMFs are rarer.
    fn default() -> Self {
        SynthConfig {
            seed: 1,
            pids: 1,
            nexuses: 4,
            luns: 4,
            depth: 32,
            error_ppm: 1_000,
            held_ppm: 20_000,
            abort_task_ppm: 1_000,
            abort_task_set_ppm: 50,
            lun_reset_ppm: 20,
            transport_tmf_ppm: 20,
            tag_zero_ppm: 2_000,
            lun_alias_ppm: 5_000,
            unsent_ppm: 50_000,
            probes: Coverage::ALL,
            mean_gap_ns: 250,
        }
    }
}

/// What a correct matcher concludes from the stream so far (closing at the
/// current point: what is open is in flight or unanswered).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Truth {
    pub commands: u64,
    pub good: u64,
    pub error: u64,
    pub aborted: u64,
    /// TASK_ABORTED results given (some not yet released).
    pub aborted_at_once: u64,
    pub in_flight: u64,
    pub tmfs: u64,
    /// By [`outcome_name`].
    pub tmf_outcomes: BTreeMap<String, u64>,
    /// TMFs answered (a response or, without the response probe, an inferred one).
    pub tmfs_answered: u64,
    /// Of those, TMFs that waited (QUEUED) before their response.
    pub tmfs_deferred_answered: u64,
    /// ABORT TASKs that found nothing because their command had just been released.
    pub races: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In tgtd's queue, not yet performed: abortable at once.
    Held,
    /// In the backing store.
    Performed,
    /// Result given, not yet released.
    Done(i32),
    /// Aborted at once: off the task list, waiting for its release.
    Aborted,
}

#[derive(Debug, Clone)]
struct Cmd {
    tag: u64,
    lun: u64,
    /// The LUN's 8 bytes as the initiator wrote them.
    lun_bytes: [u8; 8],
    state: State,
    /// `cmd->mreq`: the TMF waiting for this command.
    mreq: Option<u64>,
}

#[derive(Debug)]
struct Nexus {
    pid: u32,
    itn_id: u64,
    cmds: Vec<Cmd>,
    next_tag: u64,
    last_released: Option<u64>,
}

/// A TMF waiting for busy commands (tgt `struct mgmt_req`).
#[derive(Debug, Clone, Copy)]
struct Mreq {
    function: u8,
    busy: i32,
}

/// The generator. Call [`Synth::step`] for the next few events.
pub struct Synth {
    cfg: SynthConfig,
    rng: u64,
    ts: u64,
    nexuses: Vec<Nexus>,
    mreqs: FxHashMap<(u32, u64), Mreq>,
    /// TMF tasks by (pid, mid): their connection and nexus.
    tasks: FxHashMap<(u32, u64), (u64, u64)>,
    next_mid: u64,
    next_itt: u32,
    started: bool,
    truth: Truth,
}

impl Synth {
    pub fn new(cfg: SynthConfig) -> Synth {
        let mut nexuses = Vec::new();
        for p in 0..cfg.pids {
            for n in 0..cfg.nexuses {
                nexuses.push(Nexus {
                    pid: 1000 + p,
                    itn_id: u64::from(n) + 1,
                    cmds: Vec::with_capacity(cfg.depth),
                    next_tag: 0x100 * (u64::from(n) + 1),
                    last_released: None,
                });
            }
        }
        Synth {
            rng: cfg.seed,
            cfg,
            ts: 1_000_000_000,
            nexuses,
            mreqs: FxHashMap::default(),
            tasks: FxHashMap::default(),
            next_mid: 0x7f00_0000,
            next_itt: 0x10,
            started: false,
            truth: Truth::default(),
        }
    }

    /// Stream time of the last event.
    pub fn now_ns(&self) -> u64 {
        self.ts
    }

    /// The truth up to now.
    pub fn truth(&self) -> Truth {
        let mut truth = self.truth.clone();
        truth.in_flight = self.nexuses.iter().map(|n| n.cmds.len() as u64).sum();
        let unanswered = self.mreqs.len() as u64;
        if unanswered > 0 {
            *truth
                .tmf_outcomes
                .entry(outcome_name(TmfOutcome::Unanswered).to_owned())
                .or_default() += unanswered;
        }
        truth
    }

    /// Appends the next events (one action of one nexus) to `out`.
    pub fn step(&mut self, out: &mut Vec<Event>) {
        if !self.started {
            self.started = true;
            self.create_nexuses(out);
        }
        let n = self.below(self.nexuses.len() as u64) as usize;
        let room = self.nexuses[n].cmds.len() < self.cfg.depth;
        if room && (self.nexuses[n].cmds.is_empty() || self.below(2) == 0) {
            self.queue(n, out);
            self.maybe_tmf(n, out);
        } else if !self.nexuses[n].cmds.is_empty() {
            let i = self.below(self.nexuses[n].cmds.len() as u64) as usize;
            self.progress(n, i, out);
        }
    }

    /// Steps until at least `events` events are in `out`.
    pub fn fill(&mut self, events: usize, out: &mut Vec<Event>) {
        while out.len() < events {
            self.step(out);
        }
    }

    fn create_nexuses(&mut self, out: &mut Vec<Event>) {
        for k in 0..self.nexuses.len() {
            let ts = self.tick();
            let (pid, itn_id) = (self.nexuses[k].pid, self.nexuses[k].itn_id);
            let name = format!("iqn.2024-01.org.example:synth-{itn_id}");
            out.push(Event::NexusCreate {
                ts_ns: ts,
                pid,
                tid: TID,
                itn_id,
                info: format!("Initiator: {name} alias: synth"),
                initiator: Some(name),
            });
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    fn chance(&mut self, ppm: u32) -> bool {
        self.below(PPM) < u64::from(ppm)
    }

    fn tick(&mut self) -> u64 {
        let gap = 1 + self.below(2 * self.cfg.mean_gap_ns.max(1));
        self.ts += gap;
        self.ts
    }

    fn emit(&mut self, wanted: bool, out: &mut Vec<Event>, make: impl FnOnce(u64) -> Event) {
        let ts = self.tick();
        if wanted {
            out.push(make(ts));
        }
    }

    fn queue(&mut self, n: usize, out: &mut Vec<Event>) {
        let lun = self.below(u64::from(self.cfg.luns.max(1)));
        let opcode = match self.below(10) {
            0..=5 => 0x28,
            6..=8 => 0x2a,
            _ => 0x00,
        };
        let held = self.chance(self.cfg.held_ppm);
        let lun_bytes = if self.chance(self.cfg.lun_alias_ppm) {
            flat_lun(lun)
        } else {
            peripheral_lun(lun)
        };
        let tag_zero =
            self.chance(self.cfg.tag_zero_ppm) && !self.nexuses[n].cmds.iter().any(|c| c.tag == 0);
        let nexus = &mut self.nexuses[n];
        let (pid, itn_id) = (nexus.pid, nexus.itn_id);
        let tag = if tag_zero {
            0
        } else {
            nexus.next_tag += 1;
            nexus.next_tag - 1
        };
        nexus.cmds.push(Cmd {
            tag,
            lun,
            lun_bytes,
            state: State::Held,
            mreq: None,
        });
        self.truth.commands += 1;
        let wanted = self.cfg.probes.queue;
        self.emit(wanted, out, |ts_ns| Event::CmdQueue {
            ts_ns,
            pid,
            tid: TID,
            itn_id,
            tag,
            lun,
            lun_raw: Some(u64::from_be_bytes(lun_bytes)),
            opcode,
            attribute: tgt_trace_common::task_attr::SIMPLE,
            cmd: cmd_addr(pid, itn_id, tag),
        });
        if !held {
            let i = self.nexuses[n].cmds.len() - 1;
            self.progress(n, i, out);
        }
    }

    /// Moves command `i` of nexus `n` one step on.
    fn progress(&mut self, n: usize, i: usize, out: &mut Vec<Event>) {
        let (pid, itn_id) = (self.nexuses[n].pid, self.nexuses[n].itn_id);
        let cmd = self.nexuses[n].cmds[i].clone();
        let tag = cmd.tag;
        match cmd.state {
            State::Held => {
                self.nexuses[n].cmds[i].state = State::Performed;
                let wanted = self.cfg.probes.perform;
                self.emit(wanted, out, |ts_ns| Event::CmdPerform {
                    ts_ns,
                    pid,
                    itn_id,
                    tag,
                    cmd: cmd_addr(pid, itn_id, tag),
                });
            }
            State::Performed => {
                let result = if self.chance(self.cfg.error_ppm) {
                    CHECK_CONDITION
                } else {
                    0
                };
                self.nexuses[n].cmds[i].state = State::Done(result);
                let wanted = self.cfg.probes.result;
                self.emit(wanted, out, |ts_ns| Event::CmdResult {
                    ts_ns,
                    pid,
                    itn_id,
                    tag,
                    cmd: cmd_addr(pid, itn_id, tag),
                    result,
                    tmf_mid: cmd.mreq,
                });
            }
            State::Done(result) => self.release(n, i, result, out),
            State::Aborted => self.release(n, i, TASK_ABORTED, out),
        }
    }

    /// `target_cmd_done`: frees the command; a waiting TMF whose busy count
    /// drops to zero is answered right after.
    fn release(&mut self, n: usize, i: usize, result: i32, out: &mut Vec<Event>) {
        let nexus = &mut self.nexuses[n];
        let (pid, itn_id) = (nexus.pid, nexus.itn_id);
        let cmd = nexus.cmds.swap_remove(i);
        nexus.last_released = Some(cmd.tag);
        match result {
            0 => self.truth.good += 1,
            TASK_ABORTED => self.truth.aborted += 1,
            _ => self.truth.error += 1,
        }
        let waiter = cmd.mreq.and_then(|mid| {
            self.mreqs.get(&(pid, mid)).map(|m| Waiter {
                mid,
                function: m.function,
                busy: m.busy,
            })
        });
        let probes = self.cfg.probes;
        let wanted = probes.release && (probes.queue || result == TASK_ABORTED || waiter.is_some());
        self.emit(wanted, out, |ts_ns| Event::CmdRelease {
            ts_ns,
            pid,
            itn_id,
            tag: cmd.tag,
            cmd: cmd_addr(pid, itn_id, cmd.tag),
            result,
            tmf: waiter,
        });
        let Some(w) = waiter else {
            return;
        };
        if w.busy > 1 {
            if let Some(m) = self.mreqs.get_mut(&(pid, w.mid)) {
                m.busy -= 1;
            }
            return;
        }
        self.mreqs.remove(&(pid, w.mid));
        let (response, outcome) = if w.function == tmf::ABORT_TASK {
            (-EEXIST, TmfOutcome::NoTaskDeferredThenFinished)
        } else {
            (0, TmfOutcome::Deferred)
        };
        let p = self.cfg.probes;
        let unsent =
            p.tmf_received && p.tmf_sent && p.conn_close && self.chance(self.cfg.unsent_ppm);
        if unsent {
            // Built into an open connection, which closes before tgtd sends it.
            let wanted = p.tmf_response;
            self.emit(wanted, out, |ts_ns| Event::TmfResponse {
                ts_ns,
                pid,
                mid: w.mid,
                function: w.function,
                result: response,
                connection_closed: Some(false),
            });
            let (conn, itn_id) = self.iscsi_of(pid, w.mid);
            self.emit(true, out, |ts_ns| Event::ConnClose {
                ts_ns,
                pid,
                tid: TID,
                itn_id,
                conn,
            });
            self.conclude(TmfOutcome::Unanswered);
            return;
        }
        self.respond(pid, w.mid, w.function, response, out);
        self.truth.tmfs_deferred_answered += 1;
        self.conclude(outcome);
    }

    fn respond(&mut self, pid: u32, mid: u64, function: u8, result: i32, out: &mut Vec<Event>) {
        self.truth.tmfs_answered += 1;
        let wanted = self.cfg.probes.tmf_response;
        self.emit(wanted, out, |ts_ns| Event::TmfResponse {
            ts_ns,
            pid,
            mid,
            function,
            result,
            connection_closed: Some(false),
        });
        // iscsi_tm_done (usr/iscsi/iscsid.c): 0 -> FUNCTION COMPLETE,
        // -EINVAL -> NOT SUPPORTED, -EEXIST -> TASK DOES NOT EXIST, else
        // REJECTED; the connection is open, so it is queued and sent.
        let response = match result {
            0 => 0,
            r if r == -EINVAL => 5,
            r if r == -EEXIST => 1,
            _ => 255,
        };
        let function = match function {
            tmf::ABORT_TASK => 1,
            tmf::ABORT_TASK_SET => 2,
            _ => 5,
        };
        self.send(pid, mid, function, response, out);
    }

    /// The iSCSI layer writes a TMF response to the connection.
    fn send(
        &mut self,
        pid: u32,
        task: u64,
        iscsi_function: u8,
        response: u8,
        out: &mut Vec<Event>,
    ) {
        let wanted = self.cfg.probes.tmf_sent;
        let (conn, itn_id) = self.iscsi_of(pid, task);
        self.emit(wanted, out, |ts_ns| Event::TmfSent {
            ts_ns,
            pid,
            tid: TID,
            itn_id,
            task,
            conn,
            itt: (task & 0xffff_ffff) as u32,
            iscsi_function,
            tag: 0,
            response,
        });
    }

    /// The connection and nexus a TMF task was received on (kept by mid).
    fn iscsi_of(&self, pid: u32, task: u64) -> (u64, u64) {
        self.tasks.get(&(pid, task)).copied().unwrap_or((0, 0))
    }

    /// The iSCSI layer receives a TMF (`iscsi_tm_execute`).
    fn receive(
        &mut self,
        n: usize,
        task: u64,
        iscsi_function: u8,
        tag: u64,
        lun: u64,
        out: &mut Vec<Event>,
    ) {
        let (pid, itn_id) = (self.nexuses[n].pid, self.nexuses[n].itn_id);
        let conn = 0x5500_0000_0000 ^ (u64::from(pid) << 32) ^ (itn_id << 16);
        self.tasks.insert((pid, task), (conn, itn_id));
        self.next_itt = self.next_itt.wrapping_add(1);
        let itt = self.next_itt;
        let wanted = self.cfg.probes.tmf_received;
        self.emit(wanted, out, |ts_ns| Event::TmfReceived {
            ts_ns,
            pid,
            tid: TID,
            itn_id,
            task,
            conn,
            itt,
            iscsi_function,
            tag,
            lun,
            lun_raw: u64::from_be_bytes(peripheral_lun(lun)),
            referenced: None,
        });
    }

    /// A TMF the iSCSI layer answers itself: CLEAR TASK SET, the target
    /// resets (NOT SUPPORTED) or a function it does not know (REJECTED).
    fn transport_tmf(&mut self, n: usize, out: &mut Vec<Event>) {
        self.next_mid += 0x40;
        let task = self.next_mid;
        let pid = self.nexuses[n].pid;
        let (function, response, outcome) = match self.below(3) {
            0 => (4, 5, TmfOutcome::NotSupportedByTransport),
            1 => (6, 5, TmfOutcome::NotSupportedByTransport),
            _ => (14, 255, TmfOutcome::RejectedByTransport),
        };
        self.truth.tmfs += 1;
        self.receive(n, task, function, u64::from(u32::MAX), 0, out);
        if !self.cfg.probes.tmf_received {
            // Without the received probe the trace cannot know of it.
            self.truth.tmfs -= 1;
            return;
        }
        self.truth.tmfs_answered += 1;
        self.send(pid, task, function, response, out);
        self.conclude(outcome);
    }

    fn conclude(&mut self, outcome: TmfOutcome) {
        *self
            .truth
            .tmf_outcomes
            .entry(outcome_name(outcome).to_owned())
            .or_default() += 1;
    }

    fn maybe_tmf(&mut self, n: usize, out: &mut Vec<Event>) {
        let roll = self.below(PPM);
        let c = &self.cfg;
        let abort_task = u64::from(c.abort_task_ppm);
        let abort_task_set = abort_task + u64::from(c.abort_task_set_ppm);
        let lun_reset = abort_task_set + u64::from(c.lun_reset_ppm);
        let transport = lun_reset + u64::from(c.transport_tmf_ppm);
        if roll < abort_task {
            self.abort_task(n, out);
        } else if roll < abort_task_set {
            self.tmf(n, tmf::ABORT_TASK_SET, 0, 0, false, out);
        } else if roll < lun_reset {
            let lun = self.below(u64::from(self.cfg.luns.max(1)));
            self.tmf(n, tmf::LOGICAL_UNIT_RESET, u64::MAX, lun, false, out);
        } else if roll < transport {
            self.transport_tmf(n, out);
        }
    }

    /// ABORT TASK of a command in flight (mostly), of one just released (a
    /// race), or of a tag never used.
    fn abort_task(&mut self, n: usize, out: &mut Vec<Event>) {
        let choice = self.below(20);
        let live: Vec<(u64, u64)> = self.nexuses[n]
            .cmds
            .iter()
            .filter(|c| c.state != State::Aborted)
            .map(|c| (c.tag, c.lun))
            .collect();
        let (tag, lun, race) = match (choice, self.nexuses[n].last_released) {
            (0..=2, Some(tag)) => (tag, 0, true),
            (3..=5, _) => (u64::MAX - self.below(1 << 20), 0, false),
            _ if !live.is_empty() => {
                let (tag, lun) = live[self.below(live.len() as u64) as usize];
                (tag, lun, false)
            }
            _ => (u64::MAX - 1, 0, false),
        };
        self.tmf(n, tmf::ABORT_TASK, tag, lun, race, out);
    }

    /// `target_mgmt_request` and `abort_task_set`, event by event.
    fn tmf(
        &mut self,
        n: usize,
        function: u8,
        tag: u64,
        lun: u64,
        race: bool,
        out: &mut Vec<Event>,
    ) {
        self.next_mid += 0x40;
        let mid = self.next_mid;
        let (pid, itn_id) = (self.nexuses[n].pid, self.nexuses[n].itn_id);
        self.truth.tmfs += 1;
        let iscsi_function = match function {
            tmf::ABORT_TASK => 1,
            tmf::ABORT_TASK_SET => 2,
            _ => 5,
        };
        self.receive(n, mid, iscsi_function, tag, lun, out);
        let lun_bytes = peripheral_lun(lun);
        self.emit(true, out, |ts_ns| Event::TmfRequest {
            ts_ns,
            pid,
            tid: TID,
            itn_id,
            mid,
            function,
            tag,
            lun,
            lun_raw: Some(u64::from_be_bytes(lun_bytes)),
        });
        // target_mgmt_request's calls of abort_task_set(mreq, target,
        // itn_id, tag, lun, all) (tgt usr/target.c): ABORT TASK passes its
        // tag and no LUN; ABORT TASK SET tag 0 and all; CLEAR TASK SET and
        // LOGICAL UNIT RESET tag 0 and the LUN bytes.
        let (tag_arg, lun_arg, all) = match function {
            tmf::ABORT_TASK => (tag, None, false),
            tmf::ABORT_TASK_SET => (0, None, true),
            _ => (0, Some(lun_bytes), false),
        };
        // abort_task_set's walk: every nexus of the target, every command
        // on it, in list order. The tmf probe set reads the same lists at
        // the request, before anything is aborted.
        let mut found: Vec<(usize, usize)> = Vec::new();
        for k in 0..self.nexuses.len() {
            if self.nexuses[k].pid != pid {
                continue;
            }
            let same_nexus = self.nexuses[k].itn_id == itn_id;
            for (i, cmd) in self.nexuses[k].cmds.iter().enumerate() {
                // abort_task_set's condition, term by term; an aborted
                // command has left the nexus's list.
                #[expect(clippy::nonminimal_bool, reason = "tgtd's condition, term by term")]
                let covered = cmd.state != State::Aborted
                    && ((all && same_nexus)
                        || (cmd.tag == tag_arg && same_nexus)
                        || lun_arg.is_some_and(|l| l == cmd.lun_bytes));
                if covered {
                    found.push((k, i));
                }
            }
        }
        // Only a stream with the walk spends time (and randomness) on it, so
        // that the other probe sets' streams stay as they were.
        let walked = self.cfg.probes.covers;
        for &(k, i) in found.iter().filter(|_| walked) {
            let (c_itn, cmd) = (self.nexuses[k].itn_id, &self.nexuses[k].cmds[i]);
            let (c_tag, c_lun, c_bytes) = (cmd.tag, cmd.lun, cmd.lun_bytes);
            // abort_cmd's test: cmd_processed(cmd), TGT_CMD_PROCESSED (bit 1).
            let processed = cmd.state != State::Held;
            self.emit(true, out, |ts_ns| Event::TmfCovers {
                ts_ns,
                pid,
                mid,
                tid: TID,
                itn_id: c_itn,
                tag: c_tag,
                lun: c_lun,
                lun_raw: u64::from_be_bytes(c_bytes),
                opcode: 0x28,
                cmd: cmd_addr(pid, c_itn, c_tag),
                state: if processed { 0b11 } else { 0b01 },
                defers: processed,
            });
        }
        if walked {
            let covered = found.len() as u32;
            self.emit(true, out, |ts_ns| Event::TmfWalked {
                ts_ns,
                pid,
                mid,
                covered,
                truncated: false,
                no_target: false,
            });
        }
        let (count, mut busy, mut aborted) = (found.len(), 0, 0);
        for (k, i) in found {
            if self.nexuses[k].cmds[i].state == State::Held {
                aborted += 1;
                self.abort_at_once(k, i, out);
            } else {
                busy += 1;
                self.nexuses[k].cmds[i].mreq = Some(mid);
            }
        }
        if busy > 0 {
            self.mreqs.insert((pid, mid), Mreq { function, busy });
            self.tmf_return(pid, mid, mgmt_ret::QUEUED, out);
            return;
        }
        let not_found = function == tmf::ABORT_TASK && count == 0;
        let response = if not_found { -EEXIST } else { 0 };
        self.respond(pid, mid, function, response, out);
        let ret = if not_found {
            mgmt_ret::FAILED
        } else {
            mgmt_ret::DONE
        };
        self.tmf_return(pid, mid, ret, out);
        let outcome = match (not_found, race, aborted) {
            (true, true, _) => {
                self.truth.races += 1;
                TmfOutcome::NoTaskRace
            }
            (true, false, _) => TmfOutcome::NoTaskNeverExisted,
            (false, _, 0) => TmfOutcome::CompletedNothingToAbort,
            _ => TmfOutcome::CompletedWithAborts,
        };
        self.conclude(outcome);
    }

    fn abort_at_once(&mut self, k: usize, i: usize, out: &mut Vec<Event>) {
        let nexus = &mut self.nexuses[k];
        let (pid, itn_id) = (nexus.pid, nexus.itn_id);
        let cmd = &mut nexus.cmds[i];
        cmd.state = State::Aborted;
        let tag = cmd.tag;
        self.truth.aborted_at_once += 1;
        let wanted = self.cfg.probes.result;
        self.emit(wanted, out, |ts_ns| Event::CmdResult {
            ts_ns,
            pid,
            itn_id,
            tag,
            cmd: cmd_addr(pid, itn_id, tag),
            result: TASK_ABORTED,
            tmf_mid: None,
        });
    }

    fn tmf_return(&mut self, pid: u32, mid: u64, ret: i32, out: &mut Vec<Event>) {
        self.emit(true, out, |ts_ns| Event::TmfReturn {
            ts_ns,
            pid,
            mid,
            ret,
        });
    }
}

/// An 8-byte SAM LUN in peripheral device addressing (SAM-5 4.7.7.2).
fn peripheral_lun(lun: u64) -> [u8; 8] {
    [0, (lun & 0xff) as u8, 0, 0, 0, 0, 0, 0]
}

/// The same LUN in flat space addressing (SAM-5 4.7.7.4): method 01b.
fn flat_lun(lun: u64) -> [u8; 8] {
    [
        0x40 | ((lun >> 8) & 0x3f) as u8,
        (lun & 0xff) as u8,
        0,
        0,
        0,
        0,
        0,
        0,
    ]
}

/// A plausible `struct scsi_cmd *`, unique per command.
fn cmd_addr(pid: u32, itn_id: u64, tag: u64) -> u64 {
    0x5600_0000_0000 ^ (u64::from(pid) << 32) ^ (itn_id << 24) ^ tag.wrapping_mul(0x100)
}

/// A whole stream of about `events` events, and its truth.
pub fn generate(cfg: SynthConfig, events: usize) -> (Vec<Event>, Truth, u64) {
    let mut synth = Synth::new(cfg);
    let mut out = Vec::with_capacity(events + 64);
    synth.fill(events, &mut out);
    (out, synth.truth(), synth.now_ns())
}
