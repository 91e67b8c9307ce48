//! The matcher: pairs each TMF with the commands it covers and with its
//! response, classifies it, and finds orphaned aborts. Pure: events in,
//! records out; time comes only from event timestamps.
//!
//! tgtd's rules (tgt `usr/target.c`: `target_mgmt_request`, `abort_task_set`,
//! `abort_cmd`, `target_cmd_done`; `../shared/notes/tgt-facts.md` §2):
//! - ABORT TASK covers the same tag on the same I_T nexus; ABORT TASK SET the
//!   nexus; CLEAR TASK SET and LOGICAL UNIT RESET the LUN, all initiators.
//! - A covered command is in tgtd's task list from queue to release. One not
//!   yet handed to the backing store is aborted at once (TASK_ABORTED); one
//!   already there makes the TMF wait (`cmd->mreq`, busy count) and the
//!   response is sent at the release of the last such command.
//! - ABORT TASK that finds nothing is answered at once with -EEXIST; one that
//!   waited is answered -EEXIST after the command completes.

use std::collections::{HashMap, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};
use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

use crate::{
    event::{Event, OpClass, Waiter, mgmt_ret_name, tmf_name},
    stats::{Stats, StatsSummary},
};

const EEXIST: i32 = 17;
/// At most this many recent releases are remembered for race detection.
const RECENT_RELEASES: usize = 1 << 16;
const EINVAL: i32 = 22;

/// Which kinds of event the trace can contain (from its probe set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    pub queue: bool,
    pub result: bool,
    pub release: bool,
    pub tmf_response: bool,
}

impl Coverage {
    pub const ALL: Coverage = Coverage {
        queue: true,
        result: true,
        release: true,
        tmf_response: true,
    };

    /// From a trace header's probe list.
    pub fn from_probes(probes: &[crate::probe::ProbePoint]) -> Coverage {
        let attached = |name: &str| probes.iter().any(|p| p.name == name && p.attached);
        Coverage {
            queue: attached("queue"),
            result: attached("kspace_exec"),
            release: attached("release"),
            tmf_response: attached("tsk_mgmt_response"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    /// A TMF without a response this long after its request is unanswered.
    pub tmf_timeout_ns: u64,
    /// An ABORT TASK that finds nothing within this long after the same
    /// nexus and tag was released raced that command's completion.
    pub race_window_ns: u64,
    pub max_commands: usize,
    pub max_tmfs: usize,
    pub coverage: Coverage,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            tmf_timeout_ns: 30_000_000_000,
            race_window_ns: 1_000_000_000,
            max_commands: 1_000_000,
            max_tmfs: 65_536,
            coverage: Coverage::ALL,
        }
    }
}

/// What the matcher concludes, in the order it concludes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Record {
    Command(CommandRecord),
    Tmf(TmfRecord),
    Orphan(OrphanRecord),
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandOutcome {
    Good,
    ErrorStatus,
    Aborted,
    /// Still in tgtd when its nexus went away, tgtd exited, or the trace ended.
    InFlight,
    /// Pushed out by `max_commands`.
    Evicted,
}

/// A command worth keeping: aborted, failed, covered by a TMF, or unfinished.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandRecord {
    pub pid: u32,
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub tag: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opcode: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arrived_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub released_ns: Option<u64>,
    pub outcome: CommandOutcome,
    /// The TMFs (by sequence number) that covered it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub covered_by: Vec<u64>,
    /// Why it is unfinished, for `in_flight`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

/// What happened to a command a TMF covered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    /// Not yet known.
    Pending,
    /// TASK_ABORTED, at `at_ns`.
    Aborted,
    /// Busy in the backing store; the TMF waited for its release.
    Blocked,
    /// Released normally without naming this TMF: tgtd neither aborted it
    /// nor made this TMF wait for it (e.g. a later TMF took over its
    /// `cmd->mreq`).
    Completed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Covered {
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub tag: u64,
    pub lun: u64,
    pub arrived_ns: u64,
    pub fate: Fate,
    /// When it got TASK_ABORTED, or was released while blocking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_ns: Option<u64>,
    /// Another initiator's command, hit by a LUN-wide TMF.
    pub other_initiator: bool,
}

/// The class of a TMF's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TmfOutcome {
    CompletedWithAborts,
    CompletedNothingToAbort,
    /// Answered after busy commands were released.
    Deferred,
    /// ABORT TASK for a tag that was not in tgtd.
    NoTaskNeverExisted,
    /// ABORT TASK for a command released just before the request.
    NoTaskRace,
    /// ABORT TASK that waited for its busy command, answered -EEXIST after it completed.
    NoTaskDeferredThenFinished,
    NotSupported,
    Rejected,
    Unanswered,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TmfRecord {
    /// Order of the request in the trace; names the TMF in other records.
    pub seq: u64,
    pub pid: u32,
    pub tid: i32,
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub mid: u64,
    pub function: String,
    pub lun: u64,
    /// The referenced tag (ABORT TASK).
    pub tag: u64,
    pub requested_ns: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub returned: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responded_ns: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<i32>,
    /// The response was inferred (no response probe).
    pub response_inferred: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<u64>,
    pub outcome: TmfOutcome,
    pub covered: Vec<Covered>,
    /// For a race: the gap between that command's release and the request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub race_gap_ns: Option<u64>,
    /// For unanswered: why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrphanKind {
    /// (a) A TMF that found no task.
    TmfFoundNoTask,
    /// (b) A command completed TASK_ABORTED that no TMF covers.
    AbortWithoutTmf,
    /// (c) A TMF never answered: timeout, nexus gone, target exited, trace ended.
    TmfUnanswered,
    /// (d) A deferred TMF whose blocking command was never released.
    BlockerNeverReleased,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrphanRecord {
    pub kind: OrphanKind,
    pub pid: u32,
    pub itn_id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initiator: Option<String>,
    pub tag: u64,
    pub lun: u64,
    pub at_ns: u64,
    /// The TMF concerned, by sequence number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tmf_seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    pub detail: String,
}

/// Totals, and where every command and TMF went.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Counts {
    pub events: u64,
    pub commands_in: u64,
    pub commands_good: u64,
    pub commands_error: u64,
    pub commands_aborted: u64,
    pub commands_in_flight: u64,
    pub commands_evicted: u64,
    pub tmfs: u64,
    pub tmfs_by_outcome: std::collections::BTreeMap<String, u64>,
    pub tmfs_evicted: u64,
    pub orphans_by_kind: std::collections::BTreeMap<String, u64>,
    /// Events about commands or TMFs the matcher never saw start.
    pub unmatched_events: u64,
}

impl Counts {
    pub fn orphans(&self) -> u64 {
        self.orphans_by_kind.values().sum()
    }
}

/// The end of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Summary {
    pub counts: Counts,
    pub histograms: StatsSummary,
}

type CmdKey = (u32, u64, u64);
type TmfKey = (u32, u64);

#[derive(Debug, Clone)]
struct Command {
    seq: u64,
    tid: i32,
    lun: Option<u64>,
    opcode: Option<u8>,
    arrived_ns: Option<u64>,
    result: Option<(i32, u64)>,
    covered_by: Vec<u64>,
}

#[derive(Debug, Clone)]
struct Tmf {
    seq: u64,
    pid: u32,
    tid: i32,
    itn_id: u64,
    mid: u64,
    function: u8,
    lun: u64,
    tag: u64,
    requested_ns: u64,
    ret: Option<i32>,
    response: Option<(i32, u64, bool)>,
    /// Covered commands, by their command key.
    covered: Vec<(CmdKey, Covered)>,
    race: Option<u64>,
}

/// The matcher's state.
pub struct Matcher {
    cfg: Config,
    commands: FxHashMap<CmdKey, Command>,
    /// Insertion order for eviction; entries whose seq no longer matches are stale.
    command_order: VecDeque<(u64, CmdKey)>,
    tmfs: FxHashMap<TmfKey, Tmf>,
    /// The TMF whose `target_mgmt_request` is running, by pid.
    in_request: FxHashMap<u32, TmfKey>,
    /// Recent releases by key, for race detection, in release order.
    recent_releases: VecDeque<(u64, CmdKey)>,
    initiators: HashMap<(u32, u64), String>,
    next_seq: u64,
    now_ns: u64,
    /// No open TMF can time out before this stream time: `advance` scans
    /// the open TMFs only once it is reached.
    next_timeout_ns: u64,
    counts: Counts,
    stats: Stats,
}

impl Matcher {
    pub fn new(cfg: Config) -> Matcher {
        Matcher {
            cfg,
            commands: FxHashMap::default(),
            command_order: VecDeque::new(),
            tmfs: FxHashMap::default(),
            in_request: FxHashMap::default(),
            recent_releases: VecDeque::new(),
            initiators: HashMap::new(),
            next_seq: 0,
            now_ns: 0,
            next_timeout_ns: u64::MAX,
            counts: Counts::default(),
            stats: Stats::default(),
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn counts(&self) -> &Counts {
        &self.counts
    }

    /// Commands now in tgtd, as the trace shows them.
    pub fn in_flight(&self) -> usize {
        self.commands.len()
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn initiator(&self, pid: u32, itn_id: u64) -> Option<String> {
        self.initiators.get(&(pid, itn_id)).cloned()
    }

    /// Feeds one event; finished records are appended to `out`.
    pub fn push(&mut self, event: &Event, out: &mut Vec<Record>) {
        self.counts.events += 1;
        let ts = event.ts_ns();
        if ts > self.now_ns {
            self.now_ns = ts;
        }
        match *event {
            Event::CmdQueue {
                ts_ns,
                pid,
                tid,
                itn_id,
                tag,
                lun,
                opcode,
                ..
            } => {
                self.queue(ts_ns, (pid, itn_id, tag), tid, lun, opcode, out);
            }
            Event::CmdPerform { .. } => {}
            Event::CmdResult {
                ts_ns,
                pid,
                itn_id,
                tag,
                result,
                ..
            } => {
                self.result((pid, itn_id, tag), result, ts_ns, out);
            }
            Event::CmdRelease {
                ts_ns,
                pid,
                itn_id,
                tag,
                result,
                tmf,
                ..
            } => {
                self.release(ts_ns, (pid, itn_id, tag), result, tmf, out);
            }
            Event::TmfRequest {
                ts_ns,
                pid,
                tid,
                itn_id,
                mid,
                function,
                tag,
                lun,
            } => {
                self.tmf_request(ts_ns, pid, tid, itn_id, mid, function, tag, lun, out);
            }
            Event::TmfReturn {
                ts_ns,
                pid,
                mid,
                ret,
            } => self.tmf_return(ts_ns, (pid, mid), ret, out),
            Event::TmfResponse {
                ts_ns,
                pid,
                mid,
                result,
                ..
            } => {
                self.tmf_response((pid, mid), result, ts_ns, false, out);
            }
            Event::NexusCreate {
                pid,
                itn_id,
                ref initiator,
                ..
            } => {
                if let Some(name) = initiator {
                    self.initiators.insert((pid, itn_id), name.clone());
                }
            }
            Event::NexusDestroy { pid, itn_id, .. } => {
                self.close_where("nexus gone", |p, itn| p == pid && itn == itn_id, out);
                self.initiators.remove(&(pid, itn_id));
            }
            Event::ProcessExit { pid, .. } => {
                self.close_where("target exited", |p, _| p == pid, out);
                self.initiators.retain(|(p, _), _| *p != pid);
            }
        }
        self.advance(self.now_ns, out);
    }

    fn queue(
        &mut self,
        ts: u64,
        key: CmdKey,
        tid: i32,
        lun: u64,
        opcode: u8,
        out: &mut Vec<Record>,
    ) {
        self.counts.commands_in += 1;
        if self.commands.len() >= self.cfg.max_commands {
            self.evict_oldest_command(out);
        }
        let seq = self.seq();
        self.command_order.push_back((seq, key));
        let command = Command {
            seq,
            tid,
            lun: Some(lun),
            opcode: Some(opcode),
            arrived_ns: Some(ts),
            result: None,
            covered_by: Vec::new(),
        };
        if let Some(old) = self.commands.insert(key, command) {
            // The same tag again before its release: the first was lost to us.
            self.emit_command(
                key,
                old,
                CommandOutcome::InFlight,
                Some("tag reused before release"),
                None,
                out,
            );
        }
        if self.command_order.len() > 2 * self.commands.len() + 1024 {
            let commands = &self.commands;
            self.command_order
                .retain(|(seq, key)| commands.get(key).is_some_and(|c| c.seq == *seq));
        }
    }

    fn evict_oldest_command(&mut self, out: &mut Vec<Record>) {
        while let Some((seq, key)) = self.command_order.pop_front() {
            if self.commands.get(&key).is_some_and(|c| c.seq == seq) {
                if let Some(cmd) = self.commands.remove(&key) {
                    self.emit_command(
                        key,
                        cmd,
                        CommandOutcome::Evicted,
                        Some("max_commands reached"),
                        None,
                        out,
                    );
                }
                return;
            }
        }
    }

    /// A command known only from a later event (trace started mid-command, or
    /// the TMF-only probe set).
    fn unseen_command(&mut self) -> Command {
        if self.cfg.coverage.queue {
            self.counts.unmatched_events += 1;
        }
        self.counts.commands_in += 1;
        Command {
            seq: self.seq(),
            tid: -1,
            lun: None,
            opcode: None,
            arrived_ns: None,
            result: None,
            covered_by: Vec::new(),
        }
    }

    /// The full set's result probe. An aborted result is rare; only then is
    /// the command taken out of the map to be attributed.
    fn result(&mut self, key: CmdKey, result: i32, ts: u64, out: &mut Vec<Record>) {
        match self.commands.get_mut(&key) {
            Some(cmd) if cmd.result.is_some() => return,
            Some(cmd) => {
                cmd.result = Some((result, ts));
                if result != TASK_ABORTED {
                    return;
                }
            }
            None => {
                let mut cmd = self.unseen_command();
                cmd.result = Some((result, ts));
                self.commands.insert(key, cmd);
            }
        }
        if result == TASK_ABORTED
            && let Some(mut cmd) = self.commands.remove(&key)
        {
            self.attribute_abort(key, &mut cmd, ts, out);
            self.commands.insert(key, cmd);
        }
    }

    fn release(
        &mut self,
        ts: u64,
        key: CmdKey,
        result: i32,
        waiter: Option<Waiter>,
        out: &mut Vec<Record>,
    ) {
        let mut cmd = match self.commands.remove(&key) {
            Some(cmd) => cmd,
            None => self.unseen_command(),
        };
        // The lean set learns the result here.
        if cmd.result.is_none() {
            cmd.result = Some((result, ts));
            if result == TASK_ABORTED {
                self.attribute_abort(key, &mut cmd, ts, out);
            }
        }
        if let Some(w) = waiter {
            self.blocker_released((key.0, w.mid), key, ts);
            self.try_finish_tmf((key.0, w.mid), out);
            if w.busy == 1 && !self.cfg.coverage.tmf_response {
                let inferred = if i32::from(w.function) == i32::from(tmf::ABORT_TASK) {
                    -EEXIST
                } else {
                    0
                };
                self.tmf_response((key.0, w.mid), inferred, ts, true, out);
            }
        }
        if !cmd.covered_by.is_empty() {
            self.covered_command_released(key, &cmd.covered_by, ts, out);
        }
        let (result, result_ns) = cmd.result.unwrap_or((result, ts));
        let outcome = match result {
            0 => CommandOutcome::Good,
            TASK_ABORTED => CommandOutcome::Aborted,
            _ => CommandOutcome::ErrorStatus,
        };
        if let Some(arrived) = cmd.arrived_ns {
            // Full set: to the result; lean: the result is seen at release.
            let latency = result_ns.saturating_sub(arrived);
            self.stats.command.record_ns(latency);
            if let Some(op) = cmd.opcode {
                self.stats
                    .command_by_class
                    .entry(OpClass::of(op))
                    .or_default()
                    .record_ns(latency);
            }
            if let Some(lun) = cmd.lun {
                self.stats
                    .command_by_lun
                    .entry(lun)
                    .or_default()
                    .record_ns(latency);
            }
        }
        // Kept for race detection, which only an ABORT TASK that finds
        // nothing consults: a scan then is cheaper than a map on every release.
        self.recent_releases.push_back((ts, key));
        while let Some(&(old_ts, _)) = self.recent_releases.front() {
            if ts.saturating_sub(old_ts) <= self.cfg.race_window_ns
                && self.recent_releases.len() <= RECENT_RELEASES
            {
                break;
            }
            self.recent_releases.pop_front();
        }
        self.emit_command(key, cmd, outcome, None, Some(ts), out);
    }

    /// A TASK_ABORTED result: to the TMF that covers the command, or an orphan.
    fn attribute_abort(&mut self, key: CmdKey, cmd: &mut Command, ts: u64, out: &mut Vec<Record>) {
        let mut tmf_key = self
            .tmfs
            .iter()
            .find(|(_, t)| cmd.covered_by.contains(&t.seq))
            .map(|(k, _)| *k);
        if tmf_key.is_none() && !self.cfg.coverage.queue {
            // Without arrivals the covered set is unknown: the TMF in progress
            // on this pid, or the latest matching one.
            tmf_key = self
                .tmfs
                .iter()
                .filter(|(k, t)| k.0 == key.0 && scope_matches(t, key, None))
                .max_by_key(|(_, t)| t.seq)
                .map(|(k, _)| *k);
        }
        let Some(tk) = tmf_key else {
            self.orphan(
                OrphanKind::AbortWithoutTmf,
                key.0,
                key.1,
                key.2,
                cmd.lun.unwrap_or(0),
                ts,
                None,
                None,
                "completed TASK_ABORTED, and no TMF covers it".to_owned(),
                out,
            );
            return;
        };
        let arrived = cmd.arrived_ns;
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            return;
        };
        self.stats
            .abort
            .record_ns(ts.saturating_sub(tmf.requested_ns));
        if let Some(arrived) = arrived {
            self.stats
                .aborted_in_flight
                .record_ns(ts.saturating_sub(arrived));
        }
        match tmf.covered.iter_mut().find(|(k, _)| *k == key) {
            Some((_, c)) => {
                c.fate = Fate::Aborted;
                c.at_ns = Some(ts);
            }
            None => {
                let initiator = self.initiators.get(&(key.0, key.1)).cloned();
                let itn = tmf.itn_id;
                tmf.covered.push((
                    key,
                    Covered {
                        itn_id: key.1,
                        initiator,
                        tag: key.2,
                        lun: tmf.lun,
                        arrived_ns: arrived.unwrap_or(0),
                        fate: Fate::Aborted,
                        at_ns: Some(ts),
                        other_initiator: key.1 != itn,
                    },
                ));
            }
        }
        if !cmd.covered_by.contains(&tmf.seq) {
            cmd.covered_by.push(tmf.seq);
        }
        self.try_finish_tmf(tk, out);
    }

    /// A released command's fate is known for every TMF that covered it; a
    /// TMF still waiting to learn it may now conclude.
    fn covered_command_released(
        &mut self,
        key: CmdKey,
        covered_by: &[u64],
        ts: u64,
        out: &mut Vec<Record>,
    ) {
        let waiting: Vec<TmfKey> = self
            .tmfs
            .iter()
            .filter(|(_, t)| covered_by.contains(&t.seq))
            .map(|(k, _)| *k)
            .collect();
        for tk in waiting {
            if let Some(tmf) = self.tmfs.get_mut(&tk)
                && let Some((_, c)) = tmf
                    .covered
                    .iter_mut()
                    .find(|(k, c)| *k == key && c.fate == Fate::Pending)
            {
                c.fate = Fate::Completed;
                c.at_ns = Some(ts);
            }
            self.try_finish_tmf(tk, out);
        }
    }

    fn blocker_released(&mut self, tk: TmfKey, key: CmdKey, ts: u64) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        match tmf.covered.iter_mut().find(|(k, _)| *k == key) {
            Some((_, c)) => {
                c.fate = Fate::Blocked;
                c.at_ns = Some(ts);
            }
            None => tmf.covered.push((
                key,
                Covered {
                    itn_id: key.1,
                    initiator: self.initiators.get(&(key.0, key.1)).cloned(),
                    tag: key.2,
                    lun: tmf.lun,
                    arrived_ns: 0,
                    fate: Fate::Blocked,
                    at_ns: Some(ts),
                    other_initiator: key.1 != tmf.itn_id,
                },
            )),
        }
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one event")]
    fn tmf_request(
        &mut self,
        ts: u64,
        pid: u32,
        tid: i32,
        itn_id: u64,
        mid: u64,
        function: u8,
        tag: u64,
        lun: u64,
        out: &mut Vec<Record>,
    ) {
        let tk = (pid, mid);
        if self.tmfs.contains_key(&tk) {
            // tgtd reuses a mid (the iSCSI task's address) only after freeing
            // the previous TMF, so that one's response was lost to us.
            self.close_tmf(
                tk,
                "its mid was reused by a new TMF: the response was not seen",
                out,
            );
        }
        if self.tmfs.len() >= self.cfg.max_tmfs
            && let Some(oldest) = self.tmfs.iter().min_by_key(|(_, t)| t.seq).map(|(k, _)| *k)
        {
            self.counts.tmfs_evicted += 1;
            self.close_tmf(oldest, "evicted: max_tmfs reached", out);
        }
        self.counts.tmfs += 1;
        let seq = self.seq();
        let mut tmf = Tmf {
            seq,
            pid,
            tid,
            itn_id,
            mid,
            function,
            lun,
            tag,
            requested_ns: ts,
            ret: None,
            response: None,
            covered: Vec::new(),
            race: None,
        };
        let initiators = &self.initiators;
        for (key, cmd) in self.commands.iter_mut() {
            if key.0 == pid && (cmd.tid == tid || cmd.tid < 0) && scope_matches(&tmf, *key, cmd.lun)
            {
                cmd.covered_by.push(seq);
                tmf.covered.push((
                    *key,
                    Covered {
                        itn_id: key.1,
                        initiator: initiators.get(&(key.0, key.1)).cloned(),
                        tag: key.2,
                        lun: cmd.lun.unwrap_or(lun),
                        arrived_ns: cmd.arrived_ns.unwrap_or(0),
                        fate: Fate::Pending,
                        at_ns: None,
                        other_initiator: key.1 != itn_id,
                    },
                ));
            }
        }
        tmf.covered.sort_by_key(|(k, c)| (c.arrived_ns, *k));
        if function == tmf::ABORT_TASK && tmf.covered.is_empty() {
            tmf.race = self
                .recent_releases
                .iter()
                .rev()
                .find(|(_, k)| *k == (pid, itn_id, tag))
                .map(|&(released, _)| ts.saturating_sub(released))
                .filter(|&gap| gap <= self.cfg.race_window_ns);
        }
        self.next_timeout_ns = self
            .next_timeout_ns
            .min(ts.saturating_add(self.cfg.tmf_timeout_ns));
        self.tmfs.insert(tk, tmf);
        self.in_request.insert(pid, tk);
    }

    fn tmf_return(&mut self, ts: u64, tk: TmfKey, ret: i32, out: &mut Vec<Record>) {
        self.in_request.remove(&tk.0);
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        tmf.ret = Some(ret);
        if ret == mgmt_ret::QUEUED {
            // What was not aborted inside the request is busy in the backing store.
            for (_, c) in &mut tmf.covered {
                if c.fate == Fate::Pending && self.cfg.coverage.result {
                    c.fate = Fate::Blocked;
                }
            }
        }
        if !self.cfg.coverage.tmf_response && ret != mgmt_ret::QUEUED {
            let inferred = match (ret, tmf.function) {
                (mgmt_ret::DONE, _) => 0,
                (_, tmf::ABORT_TASK) => -EEXIST,
                _ => -EINVAL,
            };
            self.tmf_response(tk, inferred, ts, true, out);
        } else {
            self.try_finish_tmf(tk, out);
        }
    }

    fn tmf_response(
        &mut self,
        tk: TmfKey,
        result: i32,
        ts: u64,
        inferred: bool,
        out: &mut Vec<Record>,
    ) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        if tmf.response.is_none() {
            tmf.response = Some((result, ts, inferred));
            let latency = ts.saturating_sub(tmf.requested_ns);
            self.stats
                .tmf_by_function
                .entry(tmf_name(tmf.function))
                .or_default()
                .record_ns(latency);
            if tmf.ret == Some(mgmt_ret::QUEUED) {
                self.stats.deferred_wait.record_ns(latency);
            }
        }
        self.try_finish_tmf(tk, out);
    }

    /// A TMF is finished once answered and every covered command's fate is known.
    fn try_finish_tmf(&mut self, tk: TmfKey, out: &mut Vec<Record>) {
        let ready = self.tmfs.get(&tk).is_some_and(|t| {
            t.response.is_some()
                && (t.ret.is_some() || !self.in_request.contains_key(&t.pid))
                && t.covered.iter().all(|(_, c)| c.fate != Fate::Pending)
        });
        if ready && let Some(tmf) = self.tmfs.remove(&tk) {
            self.emit_tmf(tmf, None, out);
        }
    }

    /// Closes a TMF that will not be answered (or whose covered commands will
    /// not finish), with the cause.
    fn close_tmf(&mut self, tk: TmfKey, cause: &str, out: &mut Vec<Record>) {
        if let Some(tmf) = self.tmfs.remove(&tk) {
            self.emit_tmf(tmf, Some(cause.to_owned()), out);
        }
    }

    fn emit_tmf(&mut self, tmf: Tmf, cause: Option<String>, out: &mut Vec<Record>) {
        let blocked = tmf.covered.iter().any(|(_, c)| c.fate == Fate::Blocked)
            || tmf.ret == Some(mgmt_ret::QUEUED);
        let aborted = tmf
            .covered
            .iter()
            .filter(|(_, c)| c.fate == Fate::Aborted)
            .count();
        let outcome = match tmf.response {
            None => TmfOutcome::Unanswered,
            Some((result, _, _)) => match result.wrapping_neg() {
                0 if blocked => TmfOutcome::Deferred,
                0 if aborted > 0 => TmfOutcome::CompletedWithAborts,
                0 => TmfOutcome::CompletedNothingToAbort,
                EEXIST if blocked => TmfOutcome::NoTaskDeferredThenFinished,
                EEXIST if tmf.race.is_some() => TmfOutcome::NoTaskRace,
                EEXIST => TmfOutcome::NoTaskNeverExisted,
                EINVAL => TmfOutcome::NotSupported,
                _ => TmfOutcome::Rejected,
            },
        };
        let initiator = self.initiator(tmf.pid, tmf.itn_id);
        let function = tmf_name(tmf.function).to_owned();
        *self
            .counts
            .tmfs_by_outcome
            .entry(outcome_name(outcome).to_owned())
            .or_default() += 1;
        let at = tmf.response.map_or(self.now_ns, |r| r.1);
        match outcome {
            TmfOutcome::NoTaskNeverExisted | TmfOutcome::NoTaskRace => {
                let detail = match tmf.race {
                    Some(gap) => format!(
                        "ABORT TASK found no task: tag {:#x} was released {} µs before the request (a race with its completion)",
                        tmf.tag,
                        gap / 1_000
                    ),
                    None => format!(
                        "ABORT TASK found no task: tag {:#x} was not in tgtd",
                        tmf.tag
                    ),
                };
                self.orphan(
                    OrphanKind::TmfFoundNoTask,
                    tmf.pid,
                    tmf.itn_id,
                    tmf.tag,
                    tmf.lun,
                    at,
                    Some(tmf.seq),
                    Some(function.clone()),
                    detail,
                    out,
                );
            }
            TmfOutcome::Unanswered => {
                let cause_text = cause.clone().unwrap_or_else(|| "no response".to_owned());
                let never_released: Vec<&Covered> = tmf
                    .covered
                    .iter()
                    .map(|(_, c)| c)
                    .filter(|c| c.fate == Fate::Blocked && c.at_ns.is_none())
                    .collect();
                if never_released.is_empty() {
                    self.orphan(
                        OrphanKind::TmfUnanswered,
                        tmf.pid,
                        tmf.itn_id,
                        tmf.tag,
                        tmf.lun,
                        at,
                        Some(tmf.seq),
                        Some(function.clone()),
                        format!("{function} never answered: {cause_text}"),
                        out,
                    );
                } else {
                    for c in never_released {
                        let detail = format!(
                            "{function} waited for tag {:#x}, which was never released: {cause_text}",
                            c.tag
                        );
                        self.orphan(
                            OrphanKind::BlockerNeverReleased,
                            tmf.pid,
                            c.itn_id,
                            c.tag,
                            c.lun,
                            at,
                            Some(tmf.seq),
                            Some(function.clone()),
                            detail,
                            out,
                        );
                    }
                }
            }
            _ => {}
        }
        out.push(Record::Tmf(TmfRecord {
            seq: tmf.seq,
            pid: tmf.pid,
            tid: tmf.tid,
            itn_id: tmf.itn_id,
            initiator,
            mid: tmf.mid,
            function,
            lun: tmf.lun,
            tag: tmf.tag,
            requested_ns: tmf.requested_ns,
            returned: tmf.ret.map(|r| mgmt_ret_name(r).to_owned()),
            responded_ns: tmf.response.map(|r| r.1),
            response: tmf.response.map(|r| r.0),
            response_inferred: tmf.response.is_some_and(|r| r.2),
            latency_ns: tmf.response.map(|r| r.1.saturating_sub(tmf.requested_ns)),
            outcome,
            covered: tmf.covered.into_iter().map(|(_, c)| c).collect(),
            race_gap_ns: tmf.race,
            cause: if outcome == TmfOutcome::Unanswered {
                cause.or_else(|| Some("no response".to_owned()))
            } else {
                None
            },
        }));
    }

    fn emit_command(
        &mut self,
        key: CmdKey,
        cmd: Command,
        outcome: CommandOutcome,
        cause: Option<&str>,
        released_ns: Option<u64>,
        out: &mut Vec<Record>,
    ) {
        match outcome {
            CommandOutcome::Good => self.counts.commands_good += 1,
            CommandOutcome::ErrorStatus => self.counts.commands_error += 1,
            CommandOutcome::Aborted => self.counts.commands_aborted += 1,
            CommandOutcome::InFlight => self.counts.commands_in_flight += 1,
            CommandOutcome::Evicted => self.counts.commands_evicted += 1,
        }
        if outcome == CommandOutcome::Good && cmd.covered_by.is_empty() {
            return;
        }
        out.push(Record::Command(CommandRecord {
            pid: key.0,
            itn_id: key.1,
            initiator: self.initiator(key.0, key.1),
            tag: key.2,
            lun: cmd.lun,
            opcode: cmd.opcode,
            arrived_ns: cmd.arrived_ns,
            result: cmd.result.map(|r| r.0),
            result_ns: cmd.result.map(|r| r.1),
            released_ns,
            outcome,
            covered_by: cmd.covered_by,
            cause: cause.map(str::to_owned),
        }));
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one orphan")]
    fn orphan(
        &mut self,
        kind: OrphanKind,
        pid: u32,
        itn_id: u64,
        tag: u64,
        lun: u64,
        at_ns: u64,
        tmf_seq: Option<u64>,
        function: Option<String>,
        detail: String,
        out: &mut Vec<Record>,
    ) {
        *self
            .counts
            .orphans_by_kind
            .entry(orphan_name(kind).to_owned())
            .or_default() += 1;
        out.push(Record::Orphan(OrphanRecord {
            kind,
            pid,
            itn_id,
            initiator: self.initiator(pid, itn_id),
            tag,
            lun,
            at_ns,
            tmf_seq,
            function,
            detail,
        }));
    }

    /// Closes the commands and TMFs of the nexuses `which(pid, itn)` selects.
    fn close_where(
        &mut self,
        cause: &str,
        which: impl Fn(u32, u64) -> bool,
        out: &mut Vec<Record>,
    ) {
        let mut tmfs: Vec<(u64, TmfKey)> = self
            .tmfs
            .iter()
            .filter(|(_, t)| which(t.pid, t.itn_id))
            .map(|(k, t)| (t.seq, *k))
            .collect();
        tmfs.sort_unstable();
        for (_, tk) in tmfs {
            self.close_tmf(tk, cause, out);
        }
        let mut keys: Vec<(u64, CmdKey)> = self
            .commands
            .iter()
            .filter(|(k, _)| which(k.0, k.1))
            .map(|(k, c)| (c.seq, *k))
            .collect();
        keys.sort_unstable();
        for (_, key) in keys {
            if let Some(cmd) = self.commands.remove(&key) {
                self.emit_command(key, cmd, CommandOutcome::InFlight, Some(cause), None, out);
            }
        }
    }

    /// The stream clock moved: TMFs past their timeout are unanswered.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
        }
        let timeout = self.cfg.tmf_timeout_ns;
        if now_ns <= self.next_timeout_ns {
            return;
        }
        self.next_timeout_ns = self
            .tmfs
            .values()
            .map(|t| t.requested_ns.saturating_add(timeout))
            .filter(|&deadline| deadline >= now_ns)
            .min()
            .unwrap_or(u64::MAX);
        let mut late: Vec<(u64, TmfKey)> = self
            .tmfs
            .iter()
            .filter(|(_, t)| now_ns.saturating_sub(t.requested_ns) > timeout)
            .map(|(k, t)| (t.seq, *k))
            .collect();
        late.sort_unstable();
        for (_, tk) in late {
            self.close_tmf(
                tk,
                &format!("no response within {} s", timeout / 1_000_000_000),
                out,
            );
        }
    }

    /// Ends the trace: everything still open is closed with the cause "trace ended".
    pub fn finish(&mut self, end_ns: u64, out: &mut Vec<Record>) -> Summary {
        self.advance(end_ns, out);
        self.close_where("trace ended", |_, _| true, out);
        Summary {
            counts: self.counts.clone(),
            histograms: self.stats.summary(),
        }
    }
}

/// Whether a TMF's scope covers a command (tgt `abort_task_set`).
fn scope_matches(tmf: &Tmf, key: CmdKey, lun: Option<u64>) -> bool {
    let (_, itn, tag) = key;
    match tmf.function {
        tmf::ABORT_TASK => itn == tmf.itn_id && tag == tmf.tag,
        tmf::ABORT_TASK_SET => itn == tmf.itn_id,
        tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => lun.is_none_or(|l| l == tmf.lun),
        _ => false,
    }
}

pub fn outcome_name(outcome: TmfOutcome) -> &'static str {
    match outcome {
        TmfOutcome::CompletedWithAborts => "completed_with_aborts",
        TmfOutcome::CompletedNothingToAbort => "completed_nothing_to_abort",
        TmfOutcome::Deferred => "deferred",
        TmfOutcome::NoTaskNeverExisted => "no_task_never_existed",
        TmfOutcome::NoTaskRace => "no_task_race",
        TmfOutcome::NoTaskDeferredThenFinished => "no_task_deferred_then_finished",
        TmfOutcome::NotSupported => "not_supported",
        TmfOutcome::Rejected => "rejected",
        TmfOutcome::Unanswered => "unanswered",
    }
}

pub fn orphan_name(kind: OrphanKind) -> &'static str {
    match kind {
        OrphanKind::TmfFoundNoTask => "tmf_found_no_task",
        OrphanKind::AbortWithoutTmf => "abort_without_tmf",
        OrphanKind::TmfUnanswered => "tmf_unanswered",
        OrphanKind::BlockerNeverReleased => "blocker_never_released",
    }
}
