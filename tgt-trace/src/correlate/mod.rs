//! The matcher: pairs each TMF with the commands it covers and with its
//! response, classifies it, and finds orphaned aborts. Pure: events in,
//! records out; time comes only from event timestamps.
//!
//! tgtd's rules (tgt `usr/target.c`: `target_mgmt_request`, `abort_task_set`,
//! `abort_cmd`, `target_cmd_done`; README "What the matcher concludes"):
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

use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

mod lio;
mod records;
mod sample;

pub use records::*;

use crate::{
    event::{
        Event, OpClass, Waiter, core_function, iscsi_response_name, iscsi_response_of,
        iscsi_tmf_name, mgmt_ret_name, tmf_name,
    },
    points::{Point, ProbePoint, Sampling},
    stats::Stats,
};

const EEXIST: i32 = 17;

/// The TMF a release names as waiting for the command (`cmd->mreq`).
#[derive(Debug, Clone, Copy)]
struct Taker {
    mid: u64,
    seq: Option<u64>,
    function: u8,
}

/// How a TMF's response was learnt.
#[derive(Debug, Clone, Copy)]
struct Answer {
    /// From a release with busy count 1, without a response probe.
    inferred: bool,
    /// Seen, and freed unsent: the initiator's connection was closed.
    dropped: bool,
}

impl Answer {
    const INFERRED: Answer = Answer {
        inferred: true,
        dropped: false,
    };
}

/// At most this many recent releases are remembered for race detection.
const RECENT_RELEASES: usize = 1 << 16;
const EINVAL: i32 = 22;
/// The cause given to what is open at the end of a trace.
const TRACE_ENDED: &str = "trace ended";
/// The cause given to a TMF pushed out by `max_tmfs`.
const EVICTED_TMF: &str = "evicted: max_tmfs reached";

/// Which kinds of event the trace can contain (from its probe set). The
/// matcher infers what a missing probe would have said, and marks inferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coverage {
    /// `CmdQueue`: without it commands are known only from later events, and
    /// a TMF's covered set only from the aborted and blocking releases.
    pub queue: bool,
    /// `CmdPerform`: with it a covered command is known to be busy in the
    /// backing store at the TMF's request; without it that is inferred from
    /// results, `tmf_mid` and the TMF's return value.
    pub perform: bool,
    pub result: bool,
    pub release: bool,
    pub tmf_response: bool,
    /// The iSCSI layer's TMF points: every TMF as received (including those
    /// it answers itself), each response as written to the connection, and
    /// connection teardown. Without them whether a built response left
    /// tgtd is unknown.
    pub tmf_received: bool,
    pub tmf_sent: bool,
    pub conn_close: bool,
    /// `TmfCovers`/`TmfWalked` (the `tmf` set's walk of tgtd's task lists
    /// at each request): a TMF's covered set, and each command's fate
    /// (aborted at once, or waited for), as tgtd decides them. Without
    /// releases a blocker's release time is unknown.
    pub covers: bool,
    /// The trace is of the kernel's target, LIO: its rules (`lio.rs`)
    /// apply, and its covered sets come from its own aborts.
    pub lio: bool,
    /// `--sample`: the command probes were attached only in windows; their
    /// events feed the command histograms alone (`sample.rs`), and the
    /// per-command fields above are false.
    pub sampled: Option<Sampling>,
}

impl Coverage {
    pub const ALL: Coverage = Coverage {
        queue: true,
        perform: true,
        result: true,
        release: true,
        tmf_response: true,
        tmf_received: true,
        tmf_sent: true,
        conn_close: true,
        covers: false,
        lio: false,
        sampled: None,
    };

    /// The lean probe set: queue and release, result read at release.
    pub const LEAN: Coverage = Coverage {
        perform: false,
        result: false,
        ..Coverage::ALL
    };

    /// The TMF probe set: TMFs, and what each covers from the walk; no
    /// command probe at all.
    pub const TMF_ONLY: Coverage = Coverage {
        queue: false,
        release: false,
        covers: true,
        ..Coverage::LEAN
    };

    /// The TMF probe set of schema 5 and earlier: TMFs and the releases a
    /// TMF cares about (aborted, or blocking), filtered in the kernel.
    pub const TMF_RELEASES: Coverage = Coverage {
        queue: false,
        ..Coverage::LEAN
    };

    /// From a trace header's probe list.
    pub fn from_probes(probes: &[ProbePoint]) -> Coverage {
        // A sampled point saw some commands, not all: to the TMF rules it
        // is not there.
        let attached = |point| {
            probes
                .iter()
                .any(|p| p.name == point && p.attached && !p.sampled)
        };
        if Point::LIO.iter().any(|&p| attached(p)) {
            return Coverage {
                queue: attached(Point::LioQueue),
                perform: false,
                result: attached(Point::LioComplete),
                release: false,
                tmf_response: attached(Point::LioTmfResponse),
                tmf_received: attached(Point::LioTmfReceived),
                tmf_sent: attached(Point::LioTmfSent),
                conn_close: false,
                covers: attached(Point::LioAbortWait),
                lio: true,
                sampled: None,
            };
        }
        Coverage {
            queue: attached(Point::Queue),
            perform: attached(Point::Perform),
            result: attached(Point::Result),
            release: attached(Point::Release),
            tmf_response: attached(Point::TmfResponse),
            tmf_received: attached(Point::TmfReceived),
            tmf_sent: attached(Point::TmfSent),
            conn_close: attached(Point::ConnClose),
            covers: attached(Point::TmfWalk),
            lio: false,
            sampled: None,
        }
    }

    /// From a trace header: its probes, and its sampling.
    pub fn from_header(header: &crate::trace::Header) -> Coverage {
        Coverage {
            sampled: header.sampling,
            ..Coverage::from_probes(&header.probes)
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

type CmdKey = (u32, u64, u64);
type TmfKey = (u32, u64);

#[derive(Debug, Clone)]
struct Command {
    seq: u64,
    tid: i32,
    lun: Option<u64>,
    /// The LUN's 8 bytes, as tgtd compares them.
    lun_raw: Option<u64>,
    opcode: Option<u8>,
    arrived_ns: Option<u64>,
    result: Option<(i32, u64)>,
    /// Handed to the backing store (`CmdPerform` seen, or a normal result):
    /// a TMF can then only wait for it.
    performed: bool,
    /// Aborted at once by a TMF: tgtd took it off the task list
    /// (`abort_cmd` → `cmd_done`), so later TMFs cannot find it.
    aborted: bool,
    /// The TMF (by seq) its TASK_ABORTED was attributed to.
    aborted_by: Option<u64>,
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
    lun_raw: Option<u64>,
    tag: u64,
    requested_ns: u64,
    /// `target_mgmt_request` was seen for it.
    core_requested: bool,
    /// What the iSCSI layer's received probe said.
    iscsi: Option<IscsiSide>,
    /// The response as written to the connection: (iSCSI code, time).
    sent: Option<(u8, u64)>,
    /// The connection closed with its response built but unsent.
    freed_unsent: bool,
    /// The trace ended between the response being built and sent: whether
    /// it left is not known.
    ended_unsent: bool,
    /// Its latency is in the histograms (taken once: at transmission when
    /// the trace can see it, else when the response was built).
    latency_recorded: bool,
    ret: Option<i32>,
    response: Option<(i32, u64, bool)>,
    /// tgtd freed the response unsent: the initiator's connection was closed.
    response_dropped: bool,
    /// Why it will never be answered, once that is certain: it concludes
    /// as soon as its covered commands' fates are known.
    stranded: Option<String>,
    /// Covered commands, by their command key.
    covered: Vec<(CmdKey, Covered)>,
    race: Option<u64>,
    /// Without the queue and result probes the covered set is learnt only
    /// from aborted releases, which follow the response: a finished TMF waits
    /// until this stream time for them before it is emitted.
    linger_until: Option<u64>,
    /// `TmfCovers` seen for it, and why its walk's covered set is
    /// incomplete, once `TmfWalked` said so.
    covers_seen: u32,
    walk_incomplete: Option<String>,
    /// LIO: when the core began executing it (`target_tmr_work`).
    executed_ns: Option<u64>,
    /// LIO: the commands it waits for, by their id, until released.
    waits: Vec<(u64, CmdKey)>,
}

/// A TMF as the iSCSI layer received it.
#[derive(Debug, Clone, Copy)]
struct IscsiSide {
    conn: u64,
    itt: u32,
    function: u8,
    referenced: Option<Referenced>,
}

impl Tmf {
    fn name(&self) -> &'static str {
        match self.iscsi {
            Some(i) => iscsi_tmf_name(i.function),
            None => tmf_name(self.function),
        }
    }

    /// Whether the matcher waits for the transmit probe before it concludes.
    fn awaits_transmission(&self, coverage: Coverage) -> bool {
        coverage.tmf_sent && self.iscsi.is_some()
    }

    fn delivery(&self, coverage: Coverage) -> Delivery {
        if self.sent.is_some() {
            Delivery::Sent
        } else if self.freed_unsent || self.response_dropped {
            Delivery::FreedUnsent
        } else if self.response.is_none() {
            Delivery::NotSent
        } else if self.awaits_transmission(coverage) && !self.ended_unsent {
            // Built, and not seen leaving before the TMF was closed (timeout,
            // nexus gone, target exited).
            Delivery::NotSent
        } else {
            Delivery::Unknown
        }
    }
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
    /// ABORT TASKs answered while the iSCSI layer held their command: the
    /// command's key → the TMF's seq and time, until the command arrives.
    held_aborts: FxHashMap<CmdKey, (u64, u64, u64)>,
    /// When each connection last started writing a TMF response, by (pid,
    /// connection): the time the response was handed to the socket, which
    /// the transmit-done event that follows refers to.
    tx_started: FxHashMap<(u32, u64), u64>,
    next_seq: u64,
    now_ns: u64,
    /// No open TMF can time out before this stream time: `advance` scans
    /// the open TMFs only once it is reached.
    next_timeout_ns: u64,
    counts: Counts,
    stats: Stats,
    /// What the last event measured (see [`Matcher::measured`]); cleared
    /// at each event, kept for its capacity.
    measured: Vec<Measured>,
    /// `--sample`'s open window.
    sampler: sample::Sampler,
}

/// A latency the matcher measured from one event, as it went into its
/// histograms. Good commands conclude no record, so a live consumer that
/// wants every command's latency (the metrics) reads it here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// A command's arrival to its result (full set) or release (lean set).
    Command {
        opcode: Option<u8>,
        lun: Option<u64>,
        latency_ns: u64,
    },
    /// A TMF's request to the TASK_ABORTED of a command it aborted.
    Abort { latency_ns: u64 },
}

impl Matcher {
    pub fn new(cfg: Config) -> Matcher {
        Matcher {
            commands: FxHashMap::default(),
            command_order: VecDeque::new(),
            tmfs: FxHashMap::default(),
            in_request: FxHashMap::default(),
            recent_releases: VecDeque::new(),
            initiators: HashMap::new(),
            held_aborts: FxHashMap::default(),
            tx_started: FxHashMap::default(),
            next_seq: 0,
            now_ns: 0,
            next_timeout_ns: u64::MAX,
            stats: Stats {
                sampling: cfg.coverage.sampled,
                ..Stats::default()
            },
            cfg,
            counts: Counts::default(),
            measured: Vec::new(),
            sampler: sample::Sampler::default(),
        }
    }

    /// The latencies the last event pushed measured, in the order measured.
    pub fn measured(&self) -> &[Measured] {
        &self.measured
    }

    /// When the oldest TMF not yet concluded was requested (stream time),
    /// if one is open. Read-only and allocation-free: for live gauges.
    pub fn oldest_open_tmf_ns(&self) -> Option<u64> {
        self.tmfs.values().map(|t| t.requested_ns).min()
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

    /// TMFs not yet concluded.
    pub fn open_tmfs(&self) -> usize {
        self.tmfs.len()
    }

    fn seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// The initiator named at the nexus's creation, while the nexus lives.
    pub fn initiator(&self, pid: u32, itn_id: u64) -> Option<String> {
        self.initiators.get(&(pid, itn_id)).cloned()
    }

    /// Feeds one event; finished records are appended to `out`.
    pub fn push(&mut self, event: &Event, out: &mut Vec<Record>) {
        self.measured.clear();
        self.counts.events += 1;
        let ts = event.ts_ns();
        if ts > self.now_ns {
            self.now_ns = ts;
        }
        if self.cfg.coverage.sampled.is_some()
            && matches!(
                event,
                Event::CmdQueue { .. }
                    | Event::CmdPerform { .. }
                    | Event::CmdResult { .. }
                    | Event::CmdRelease { .. }
                    | Event::SampleWindow { .. }
            )
        {
            self.sampled(event);
            self.advance(self.now_ns, out);
            return;
        }
        match *event {
            Event::CmdQueue {
                ts_ns,
                pid,
                tid,
                itn_id,
                tag,
                lun,
                lun_raw,
                opcode,
                ..
            } => {
                self.queue(ts_ns, (pid, itn_id, tag), tid, (lun, lun_raw), opcode, out);
            }
            Event::CmdPerform {
                pid, itn_id, tag, ..
            } => self.perform((pid, itn_id, tag), out),
            Event::CmdResult {
                ts_ns,
                pid,
                itn_id,
                tag,
                result,
                tmf_mid,
                ..
            } => {
                if self.cfg.coverage.lio {
                    // LIO's status is a command's last event.
                    self.release(ts_ns, (pid, itn_id, tag), result, None, out);
                } else {
                    self.result((pid, itn_id, tag), result, tmf_mid, ts_ns, out);
                }
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
                lun_raw,
            } => {
                let tk = (pid, mid);
                self.tmf_request(ts_ns, tk, tid, itn_id, function, tag, (lun, lun_raw), out);
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
                connection_closed,
                ..
            } => {
                let answer = Answer {
                    inferred: false,
                    dropped: connection_closed == Some(true),
                };
                self.tmf_response((pid, mid), result, ts_ns, answer, out);
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
            // Only a sampled trace has windows (handled above).
            Event::SampleWindow { .. } => {}
            Event::ProcessExit { pid, .. } => {
                self.close_where("target exited", |p, _| p == pid, out);
                self.initiators.retain(|(p, _), _| *p != pid);
                self.held_aborts.retain(|k, _| k.0 != pid);
                self.tx_started.retain(|k, _| k.0 != pid);
            }
            Event::TmfReceived {
                ts_ns,
                pid,
                tid,
                itn_id,
                task,
                conn,
                itt,
                iscsi_function,
                tag,
                lun,
                lun_raw,
                referenced,
            } => {
                let side = IscsiSide {
                    conn,
                    itt,
                    function: iscsi_function,
                    referenced: referenced.map(Referenced::from_probe),
                };
                self.tmf_received(
                    ts_ns,
                    (pid, task),
                    tid,
                    itn_id,
                    side,
                    tag,
                    (lun, lun_raw),
                    out,
                );
                if self.cfg.coverage.lio {
                    self.lio_received(ts_ns, (pid, task));
                }
            }
            Event::TmfSent {
                ts_ns,
                pid,
                task,
                conn,
                response,
                ..
            } => {
                // Handed to the socket when its transmission started (the
                // write follows at once; the done event comes after it).
                let started = self.tx_started.remove(&(pid, conn)).unwrap_or(ts_ns);
                self.tmf_sent(started, (pid, task), response, out);
            }
            Event::TmfTxStart {
                ts_ns, pid, conn, ..
            } => {
                self.tx_started.insert((pid, conn), ts_ns);
            }
            Event::ConnClose { pid, conn, .. } => {
                self.tx_started.remove(&(pid, conn));
                self.conn_closed(pid, conn, out);
            }
            Event::TmfCovers {
                ts_ns,
                pid,
                mid,
                itn_id,
                tag,
                lun,
                defers,
                ..
            } => self.tmf_covers(ts_ns, (pid, mid), (pid, itn_id, tag), lun, defers, out),
            Event::TmfWalked {
                pid,
                mid,
                covered,
                truncated,
                ..
            } => self.tmf_walked((pid, mid), covered, truncated),
            Event::TmfExecute {
                ts_ns, pid, mid, ..
            } => self.lio_execute(ts_ns, (pid, mid)),
            Event::AbortWait {
                pid,
                mid,
                itn_id,
                tag,
                lun,
                cmd,
                tas,
                ..
            } => self.lio_abort_wait((pid, mid), (pid, itn_id, tag), lun, cmd, tas),
            Event::AbortWaited {
                ts_ns,
                pid,
                mid,
                cmd,
            } => self.lio_abort_waited(ts_ns, (pid, mid), cmd, out),
        }
        self.advance(self.now_ns, out);
    }

    fn queue(
        &mut self,
        ts: u64,
        key: CmdKey,
        tid: i32,
        (lun, lun_raw): (u64, Option<u64>),
        opcode: u8,
        out: &mut Vec<Record>,
    ) {
        self.counts.commands_in += 1;
        // Almost always empty: no hash per command then.
        let held = if self.held_aborts.is_empty() {
            None
        } else {
            self.held_aborts.remove(&key)
        };
        if let Some((seq, answered_ns, lun)) = held {
            let detail = format!(
                "ABORT TASK (TMF {seq}) was answered TASK DOES NOT EXIST for tag {:#x} while the iSCSI \
                 layer held it; the command reached the core {} µs later and ran",
                key.2,
                ts.saturating_sub(answered_ns) / 1_000
            );
            self.orphan(
                OrphanKind::AbortedCommandRan,
                key.0,
                key.1,
                key.2,
                lun,
                ts,
                Some(seq),
                Some("ABORT_TASK".to_owned()),
                detail,
                out,
            );
        }
        let command = Command {
            seq: self.seq(),
            tid,
            lun: Some(lun),
            lun_raw,
            opcode: Some(opcode),
            arrived_ns: Some(ts),
            result: None,
            performed: false,
            aborted: false,
            aborted_by: None,
            covered_by: Vec::new(),
        };
        self.track(key, command, out);
    }

    /// Starts tracking a command: within `max_commands`, and in arrival
    /// order so that the oldest is the one evicted.
    fn track(&mut self, key: CmdKey, command: Command, out: &mut Vec<Record>) {
        if self.commands.len() >= self.cfg.max_commands && !self.commands.contains_key(&key) {
            self.evict_oldest_command(out);
        }
        self.command_order.push_back((command.seq, key));
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
        // Released commands leave stale entries behind; drop them before
        // they outnumber the live ones, so memory stays flat.
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
            lun_raw: None,
            opcode: None,
            arrived_ns: None,
            result: None,
            performed: false,
            aborted: false,
            aborted_by: None,
            covered_by: Vec::new(),
        }
    }

    /// The command as tracked, or a newly tracked unseen one.
    fn tracked(&mut self, key: CmdKey, out: &mut Vec<Record>) -> Option<&mut Command> {
        if !self.commands.contains_key(&key) {
            let cmd = self.unseen_command();
            self.track(key, cmd, out);
        }
        self.commands.get_mut(&key)
    }

    /// `scsi_cmd_perform`: from here on tgtd can only defer an abort.
    fn perform(&mut self, key: CmdKey, out: &mut Vec<Record>) {
        if let Some(cmd) = self.tracked(key, out) {
            cmd.performed = true;
        }
    }

    /// The full set's result probe. An aborted result is rare; only then is
    /// the command taken out of the map to be attributed.
    fn result(
        &mut self,
        key: CmdKey,
        result: i32,
        tmf_mid: Option<u64>,
        ts: u64,
        out: &mut Vec<Record>,
    ) {
        let Some(cmd) = self.tracked(key, out) else {
            return;
        };
        if cmd.result.is_some() {
            return;
        }
        cmd.result = Some((result, ts));
        if result != TASK_ABORTED {
            // A normal result comes back from the backing store.
            cmd.performed = true;
            if let Some(mid) = tmf_mid {
                self.mark_blocking((key.0, mid), key, None);
            }
            return;
        }
        cmd.aborted = true;
        if let Some(mut cmd) = self.commands.remove(&key) {
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
        // The lean set learns the result here. A TMF that returned DONE
        // aborted every command it found (tgt `abort_task_set` found none
        // busy): that outranks `cmd->result` as read at release, which tgtd
        // 1.0.85 leaves stale for an aborted command that was still queued.
        if cmd.result.is_none() {
            let result = if cmd.aborted { TASK_ABORTED } else { result };
            cmd.result = Some((result, ts));
            if result == TASK_ABORTED {
                cmd.aborted = true;
                self.attribute_abort(key, &mut cmd, ts, out);
            }
        }
        // Named before the release may conclude it.
        let taker = waiter.map(|w| Taker {
            mid: w.mid,
            seq: self.tmfs.get(&(key.0, w.mid)).map(|t| t.seq),
            function: w.function,
        });
        if let Some(w) = waiter {
            self.waiter_released(key, w, ts, out);
        }
        if !cmd.covered_by.is_empty() {
            self.covered_command_released(key, &cmd, taker, ts, out);
        }
        let (result, result_ns) = cmd.result.unwrap_or((result, ts));
        let outcome = match result {
            0 => CommandOutcome::Good,
            TASK_ABORTED => CommandOutcome::Aborted,
            _ => CommandOutcome::ErrorStatus,
        };
        if let Some(arrived) = cmd.arrived_ns {
            // Full set: to the result; lean: the result is seen at release.
            self.record_command_latency(cmd.opcode, cmd.lun, result_ns.saturating_sub(arrived));
        }
        self.remember_release(ts, key);
        self.emit_command(key, cmd, outcome, None, Some(ts), out);
    }

    fn record_command_latency(&mut self, opcode: Option<u8>, lun: Option<u64>, latency: u64) {
        self.measured.push(Measured::Command {
            opcode,
            lun,
            latency_ns: latency,
        });
        self.stats.command.record_ns(latency);
        if let Some(op) = opcode {
            self.stats
                .command_by_class
                .entry(OpClass::of(op))
                .or_default()
                .record_ns(latency);
        }
        if let Some(lun) = lun {
            self.stats
                .command_by_lun
                .entry(lun)
                .or_default()
                .record_ns(latency);
        }
    }

    /// Kept for race detection, which only an ABORT TASK that finds nothing
    /// consults: a scan then is cheaper than a map on every release. Bounded
    /// by the race window and by [`RECENT_RELEASES`].
    fn remember_release(&mut self, ts: u64, key: CmdKey) {
        self.recent_releases.push_back((ts, key));
        while let Some(&(old_ts, _)) = self.recent_releases.front() {
            if ts.saturating_sub(old_ts) <= self.cfg.race_window_ns
                && self.recent_releases.len() <= RECENT_RELEASES
            {
                break;
            }
            self.recent_releases.pop_front();
        }
    }

    /// A release that names its waiting TMF (`cmd->mreq`): the command
    /// blocked that TMF until now; busy 1 means this release sends the response.
    fn waiter_released(&mut self, key: CmdKey, w: Waiter, ts: u64, out: &mut Vec<Record>) {
        let tk = (key.0, w.mid);
        if !self.tmfs.contains_key(&tk) {
            self.counts.unmatched_events += 1;
            return;
        }
        self.mark_blocking(tk, key, Some(ts));
        if w.busy == 1 && !self.cfg.coverage.tmf_response {
            let inferred = if w.function == tmf::ABORT_TASK {
                -EEXIST
            } else {
                0
            };
            self.tmf_response(tk, inferred, ts, Answer::INFERRED, out);
        } else {
            self.try_finish_tmf(tk, out);
        }
    }

    /// A TASK_ABORTED result: to the TMF that covers the command, or an orphan.
    fn attribute_abort(&mut self, key: CmdKey, cmd: &mut Command, ts: u64, out: &mut Vec<Record>) {
        // tgtd aborts a command not yet performed at the first TMF that
        // finds it; later ones (the lean set cannot tell) did not.
        let mut tmf_key = self
            .tmfs
            .iter()
            .filter(|(_, t)| cmd.covered_by.contains(&t.seq))
            .min_by_key(|(_, t)| t.seq)
            .map(|(k, _)| *k);
        if tmf_key.is_none() && self.cfg.coverage.lio {
            // LIO marks every command a LUN RESET covers aborted at once
            // (`core_tmr_drain_state_list`), then waits for them one by
            // one: a TAS status can come before the wait that names it.
            tmf_key = self
                .tmfs
                .iter()
                .filter(|(k, t)| {
                    k.0 == key.0
                        && t.executed_ns.is_some()
                        && t.function == tmf::LOGICAL_UNIT_RESET
                        && cmd.lun.is_none_or(|l| l == t.lun)
                })
                .min_by_key(|(_, t)| t.seq)
                .map(|(k, _)| *k);
        }
        if tmf_key.is_none() && !self.cfg.coverage.queue {
            // Without arrivals the covered set is unknown: the TMF in progress
            // on this pid, or the latest matching one.
            tmf_key = self
                .tmfs
                .iter()
                .filter(|(k, t)| k.0 == key.0 && scope_matches(t, key, None, None))
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
        let latency_ns = ts.saturating_sub(tmf.requested_ns);
        self.stats.abort.record_ns(latency_ns);
        self.measured.push(Measured::Abort { latency_ns });
        if let Some(arrived) = arrived {
            self.stats
                .aborted_in_flight
                .record_ns(ts.saturating_sub(arrived));
        }
        let initiators = &self.initiators;
        let c = covered_entry(tmf, key, cmd.lun, arrived, initiators);
        c.fate = Fate::Aborted;
        c.at_ns = Some(ts);
        if !cmd.covered_by.contains(&tmf.seq) {
            cmd.covered_by.push(tmf.seq);
        }
        cmd.aborted_by = Some(tmf.seq);
        self.try_finish_tmf(tk, out);
    }

    /// A released command's fate is known for every TMF that covered it; a
    /// TMF still waiting to learn it may now conclude. One the TMF expected
    /// to block it but that was released without naming it (a later TMF
    /// took over its `cmd->mreq`) did not hold that TMF's response.
    ///
    /// A command another TMF aborted was not in this TMF's reach after all
    /// (the lean set learns that only now): it leaves the covered set.
    ///
    /// A deferred TMF whose busy command is released to another TMF is
    /// stranded: tgtd keeps one waiting TMF per command (`cmd->mreq`, which
    /// a later TMF overwrites), so the first one's busy count never reaches
    /// zero and it is never answered. It is closed at once, with that cause.
    fn covered_command_released(
        &mut self,
        key: CmdKey,
        cmd: &Command,
        taker: Option<Taker>,
        ts: u64,
        out: &mut Vec<Record>,
    ) {
        let waiting: Vec<TmfKey> = self
            .tmfs
            .iter()
            .filter(|(_, t)| cmd.covered_by.contains(&t.seq))
            .map(|(k, _)| *k)
            .collect();
        // Only a covered set taken from arrivals says the command was in
        // tgtd's task list, so busy for this TMF.
        let covered_sets_known = self.cfg.coverage.queue;
        for tk in waiting {
            let mut stranded = None;
            if let Some(tmf) = self.tmfs.get_mut(&tk)
                && let Some(index) = tmf.covered.iter().position(|(k, c)| {
                    *k == key
                        && (c.fate == Fate::Pending
                            || (c.fate == Fate::Blocked && c.at_ns.is_none()))
                })
            {
                if cmd.aborted_by.is_some_and(|seq| seq != tmf.seq) {
                    tmf.covered.remove(index);
                } else {
                    let c = &mut tmf.covered[index].1;
                    c.fate = Fate::Completed;
                    c.at_ns = Some(ts);
                    stranded = taker.filter(|t| {
                        t.mid != tk.1
                            && covered_sets_known
                            && !cmd.aborted
                            && tmf.ret == Some(mgmt_ret::QUEUED)
                            && tmf.response.is_none()
                    });
                }
            }
            if let Some(taker) = stranded
                && let Some(tmf) = self.tmfs.get_mut(&tk)
            {
                let by = match taker.seq {
                    Some(seq) => format!("TMF {seq} ({})", tmf_name(taker.function)),
                    None => tmf_name(taker.function).to_owned(),
                };
                tmf.stranded = Some(format!(
                    "stranded: tag {:#x}, which it waited for, was released to {by}; \
                     tgtd keeps one waiting TMF per command (cmd->mreq), so this one is never answered",
                    key.2
                ));
            }
            self.try_finish_tmf(tk, out);
        }
    }

    /// The command holds the TMF's response (`cmd->mreq`); `released` is
    /// when it let go, if it has.
    fn mark_blocking(&mut self, tk: TmfKey, key: CmdKey, released: Option<u64>) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            return;
        };
        let requested = tmf.requested_ns;
        let c = covered_entry(tmf, key, None, None, &self.initiators);
        c.fate = Fate::Blocked;
        if let Some(ts) = released {
            c.at_ns = Some(ts);
            c.blocked_ns = Some(ts.saturating_sub(requested));
        }
    }

    /// A new TMF under `tk`, closing one that still holds the key: tgtd
    /// reuses a mid (the iSCSI task's address) only after freeing the
    /// previous TMF, so that one's response was lost to us.
    fn open_tmf(&mut self, tk: TmfKey, tmf: Tmf, out: &mut Vec<Record>) {
        if self.tmfs.contains_key(&tk) {
            let cause = if self.cfg.coverage.tmf_sent {
                "its iSCSI task was freed and reused before its response was seen leaving"
            } else {
                "its mid was reused by a new TMF: the response was not seen"
            };
            self.close_tmf(tk, cause, out);
        }
        if self.tmfs.len() >= self.cfg.max_tmfs
            && let Some(oldest) = self.tmfs.iter().min_by_key(|(_, t)| t.seq).map(|(k, _)| *k)
        {
            self.counts.tmfs_evicted += 1;
            self.close_tmf(oldest, EVICTED_TMF, out);
        }
        self.counts.tmfs += 1;
        self.next_timeout_ns = self
            .next_timeout_ns
            .min(tmf.requested_ns.saturating_add(self.cfg.tmf_timeout_ns));
        self.tmfs.insert(tk, tmf);
    }

    fn new_tmf(&mut self, tk: TmfKey, tid: i32, itn_id: u64, ts: u64) -> Tmf {
        Tmf {
            seq: self.seq(),
            pid: tk.0,
            tid,
            itn_id,
            mid: tk.1,
            function: 0,
            lun: 0,
            lun_raw: None,
            tag: 0,
            requested_ns: ts,
            core_requested: false,
            iscsi: None,
            sent: None,
            freed_unsent: false,
            ended_unsent: false,
            latency_recorded: false,
            ret: None,
            response: None,
            response_dropped: false,
            stranded: None,
            covered: Vec::new(),
            race: None,
            linger_until: None,
            covers_seen: 0,
            walk_incomplete: None,
            executed_ns: None,
            waits: Vec::new(),
        }
    }

    /// The iSCSI layer received a TMF. Those it hands the core are followed
    /// at once by `target_mgmt_request` (same call chain); the others it
    /// answers itself.
    #[allow(clippy::too_many_arguments, reason = "the fields of one event")]
    fn tmf_received(
        &mut self,
        ts: u64,
        tk: TmfKey,
        tid: i32,
        itn_id: u64,
        side: IscsiSide,
        tag: u64,
        (lun, lun_raw): (u64, u64),
        out: &mut Vec<Record>,
    ) {
        let mut tmf = self.new_tmf(tk, tid, itn_id, ts);
        tmf.function = core_function(side.function).unwrap_or(0);
        tmf.tag = tag;
        tmf.lun = lun;
        tmf.lun_raw = Some(lun_raw);
        tmf.iscsi = Some(side);
        self.open_tmf(tk, tmf, out);
    }

    #[allow(clippy::too_many_arguments, reason = "the fields of one event")]
    fn tmf_request(
        &mut self,
        ts: u64,
        tk: TmfKey,
        tid: i32,
        itn_id: u64,
        function: u8,
        tag: u64,
        (lun, lun_raw): (u64, Option<u64>),
        out: &mut Vec<Record>,
    ) {
        let received = self
            .tmfs
            .get(&tk)
            .is_some_and(|t| t.iscsi.is_some() && !t.core_requested);
        if !received {
            let tmf = self.new_tmf(tk, tid, itn_id, ts);
            self.open_tmf(tk, tmf, out);
        }
        let Some(mut tmf) = self.tmfs.remove(&tk) else {
            return;
        };
        tmf.core_requested = true;
        tmf.tid = tid;
        tmf.itn_id = itn_id;
        tmf.function = function;
        tmf.tag = tag;
        tmf.lun = lun;
        tmf.lun_raw = lun_raw.or(tmf.lun_raw);
        if self.cfg.coverage.lio {
            // LIO's covered set is what it aborts (`abort_wait`), and it
            // has no return value to wait for.
            self.tmfs.insert(tk, tmf);
            return;
        }
        self.cover(&mut tmf);
        if function == tmf::ABORT_TASK && tmf.covered.is_empty() {
            tmf.race = self.race_gap(tk.0, itn_id, tag, ts);
        }
        self.tmfs.insert(tk, tmf);
        self.in_request.insert(tk.0, tk);
    }

    /// The response was written to the connection: the initiator has it.
    fn tmf_sent(&mut self, ts: u64, tk: TmfKey, response: u8, out: &mut Vec<Record>) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        if tmf.sent.is_some() {
            return;
        }
        tmf.sent = Some((response, ts));
        tmf.stranded = None;
        record_latency(&mut self.stats, tmf, ts);
        self.try_finish_tmf(tk, out);
    }

    /// `conn_close`: a response built for this connection and not yet sent
    /// is freed unsent (tgt `usr/iscsi/conn.c`: the transmit list is
    /// emptied). A TMF still waiting in the core is answered later into a
    /// closed connection, which the response probe sees.
    fn conn_closed(&mut self, pid: u32, conn: u64, out: &mut Vec<Record>) {
        // Without the transmit probe a response never shows as sent, so a
        // closed connection says nothing of whether it left.
        if !self.cfg.coverage.tmf_sent {
            return;
        }
        let mut affected: Vec<(u64, TmfKey)> = self
            .tmfs
            .iter_mut()
            .filter(|(k, t)| {
                k.0 == pid
                    && t.iscsi.is_some_and(|i| i.conn == conn)
                    && t.sent.is_none()
                    && (t.response.is_some() || !t.core_requested)
            })
            .map(|(k, t)| {
                t.freed_unsent = true;
                (t.seq, *k)
            })
            .collect();
        affected.sort_unstable();
        for (_, tk) in affected {
            self.try_finish_tmf(tk, out);
        }
    }

    /// The commands in tgtd's task list that the TMF's scope takes in (tgt
    /// `abort_task_set`): those already in the backing store will block it,
    /// the others are to be aborted at once.
    fn cover(&mut self, tmf: &mut Tmf) {
        let initiators = &self.initiators;
        for (key, cmd) in self.commands.iter_mut() {
            let in_scope = key.0 == tmf.pid
                && (cmd.tid == tmf.tid || cmd.tid < 0)
                && !cmd.aborted
                && scope_matches(tmf, *key, cmd.lun, cmd.lun_raw);
            if !in_scope {
                continue;
            }
            cmd.covered_by.push(tmf.seq);
            tmf.covered.push((
                *key,
                Covered {
                    itn_id: key.1,
                    initiator: initiators.get(&(key.0, key.1)).cloned(),
                    tag: key.2,
                    lun: cmd.lun.unwrap_or(tmf.lun),
                    arrived_ns: cmd.arrived_ns.unwrap_or(0),
                    fate: if cmd.performed {
                        Fate::Blocked
                    } else {
                        Fate::Pending
                    },
                    at_ns: None,
                    blocked_ns: None,
                    other_initiator: key.1 != tmf.itn_id,
                },
            ));
        }
        tmf.covered.sort_by_key(|(k, c)| (c.arrived_ns, *k));
    }

    /// A command the TMF's walk found in tgtd's task lists at the request
    /// (tgt `abort_task_set`'s lists and rule): tgtd aborts it at once
    /// unless it is in the backing store (`abort_cmd`: `cmd_processed`),
    /// in which case the TMF waits for it (`cmd->mreq = mreq`). A busy
    /// command another TMF already waited for is taken over: tgtd keeps one
    /// waiting TMF per command, so the earlier one is never answered.
    fn tmf_covers(
        &mut self,
        ts: u64,
        tk: TmfKey,
        key: CmdKey,
        lun: u64,
        defers: bool,
        out: &mut Vec<Record>,
    ) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        tmf.covers_seen += 1;
        let (seq, function) = (tmf.seq, tmf.function);
        let c = covered_entry(tmf, key, Some(lun), None, &self.initiators);
        if defers {
            c.fate = Fate::Blocked;
        } else {
            // abort_cmd: cmd_done, then target_cmd_io_done(TASK_ABORTED),
            // inside this request.
            c.fate = Fate::Aborted;
            c.at_ns = Some(ts);
            self.counts.commands_aborted += 1;
        }
        if !defers {
            return;
        }
        let mut taken: Vec<(u64, TmfKey)> = self
            .tmfs
            .iter()
            .filter(|(k, t)| {
                **k != tk
                    && k.0 == tk.0
                    && t.response.is_none()
                    && t.stranded.is_none()
                    && t.covered
                        .iter()
                        .any(|(ck, c)| *ck == key && c.fate == Fate::Blocked)
            })
            .map(|(k, t)| (t.seq, *k))
            .collect();
        taken.sort_unstable();
        for (_, other) in taken {
            if let Some(t) = self.tmfs.get_mut(&other) {
                t.stranded = Some(format!(
                    "stranded: tag {:#x}, which it waited for, was taken over by TMF {seq} ({}); \
                     tgtd keeps one waiting TMF per command (cmd->mreq), so this one is never answered",
                    key.2,
                    tmf_name(function)
                ));
            }
            self.try_finish_tmf(other, out);
        }
    }

    /// The end of a TMF's walk: a shorter covered set than the walk sent
    /// (lost records), or a walk cut short, leaves the set incomplete.
    fn tmf_walked(&mut self, tk: TmfKey, covered: u32, truncated: bool) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        if truncated {
            tmf.walk_incomplete =
                Some("covered set incomplete: the walk of tgtd's task lists was cut short".into());
        } else if tmf.covers_seen != covered {
            tmf.walk_incomplete = Some(format!(
                "covered set incomplete: the walk found {covered} commands, {} reached the trace",
                tmf.covers_seen
            ));
        }
    }

    /// How long before `ts` the same command was released, if within the
    /// race window.
    fn race_gap(&self, pid: u32, itn_id: u64, tag: u64, ts: u64) -> Option<u64> {
        self.recent_releases
            .iter()
            .rev()
            .find(|(_, k)| *k == (pid, itn_id, tag))
            .map(|&(released, _)| ts.saturating_sub(released))
            .filter(|&gap| gap <= self.cfg.race_window_ns)
    }

    fn tmf_return(&mut self, ts: u64, tk: TmfKey, ret: i32, out: &mut Vec<Record>) {
        self.in_request.remove(&tk.0);
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        tmf.ret = Some(ret);
        match ret {
            mgmt_ret::QUEUED if self.cfg.coverage.result => {
                // What was not aborted inside the request is busy in the backing store.
                for (_, c) in &mut tmf.covered {
                    if c.fate == Fate::Pending {
                        c.fate = Fate::Blocked;
                    }
                }
            }
            mgmt_ret::DONE => {
                // Nothing was busy, so nothing this TMF found had been
                // performed. A command an earlier TMF also covered was then
                // aborted by that one and was gone: it leaves this covered set.
                // The others were aborted at once and have left the task list,
                // though the lean set sees their results only at release.
                let seq = tmf.seq;
                let commands = &mut self.commands;
                tmf.covered.retain(|(key, c)| {
                    if c.fate != Fate::Pending {
                        return true;
                    }
                    let Some(cmd) = commands.get_mut(key) else {
                        return true;
                    };
                    if cmd.covered_by.iter().any(|&s| s < seq) {
                        cmd.covered_by.retain(|&s| s != seq);
                        return false;
                    }
                    cmd.aborted = true;
                    true
                });
            }
            _ => {}
        }
        let function = tmf.function;
        if !self.cfg.coverage.tmf_response && ret != mgmt_ret::QUEUED {
            let inferred = match (ret, function) {
                (mgmt_ret::DONE, _) => 0,
                (_, tmf::ABORT_TASK) => -EEXIST,
                _ => -EINVAL,
            };
            self.tmf_response(tk, inferred, ts, Answer::INFERRED, out);
        } else {
            self.try_finish_tmf(tk, out);
        }
    }

    fn tmf_response(
        &mut self,
        tk: TmfKey,
        result: i32,
        ts: u64,
        answer: Answer,
        out: &mut Vec<Record>,
    ) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        if answer.dropped {
            // The initiator never sees it: no latency to record.
            tmf.response_dropped = true;
            tmf.response.get_or_insert((result, ts, answer.inferred));
        } else if tmf.response.is_none() {
            // An answer proves it was not stranded after all.
            tmf.stranded = None;
            tmf.response = Some((result, ts, answer.inferred));
            // With the transmit probe the latency is taken when the
            // response leaves (tmf_sent); this is only when tgtd built it.
            if !tmf.awaits_transmission(self.cfg.coverage) {
                record_latency(&mut self.stats, tmf, ts);
            }
        }
        self.try_finish_tmf(tk, out);
    }

    /// A TMF is finished once answered and every covered command's fate is
    /// known. Without the queue and result probes, one that may have aborted
    /// commands lingers a race window for their releases.
    fn try_finish_tmf(&mut self, tk: TmfKey, out: &mut Vec<Record>) {
        let Some(t) = self.tmfs.get_mut(&tk) else {
            return;
        };
        let fates_known = t.covered.iter().all(|(_, c)| c.fate != Fate::Pending);
        // A stranded TMF's other blockers are still on their way out, not
        // never released.
        let released = || {
            t.covered
                .iter()
                .all(|(_, c)| c.fate != Fate::Blocked || c.at_ns.is_some())
        };
        // The walk sees no releases: a stranded TMF is certain at once.
        if t.stranded.is_some() && fates_known && (self.cfg.coverage.covers || released()) {
            if let Some(tmf) = self.tmfs.remove(&tk) {
                let cause = tmf.stranded.clone();
                self.emit_tmf(tmf, cause, out);
            }
            return;
        }
        // Answered: written to the connection when the trace can see that;
        // else built. Freed unsent is as final as sent.
        let answered = if t.awaits_transmission(self.cfg.coverage) {
            t.sent.is_some() || t.freed_unsent || t.response_dropped
        } else {
            t.response.is_some()
        };
        let ready = answered
            && (t.ret.is_some() || !t.core_requested || !self.in_request.contains_key(&t.pid))
            && fates_known;
        if !ready {
            return;
        }
        let coverage = self.cfg.coverage;
        let may_have_unseen_aborts = !coverage.queue
            && !coverage.result
            && !coverage.covers
            && t.core_requested
            && t.response.is_some_and(|r| r.0 == 0)
            && t.ret != Some(mgmt_ret::FAILED);
        if may_have_unseen_aborts && t.linger_until.is_none() {
            let until = self.now_ns.saturating_add(self.cfg.race_window_ns);
            t.linger_until = Some(until);
            self.next_timeout_ns = self.next_timeout_ns.min(until);
            return;
        }
        if t.linger_until.is_some_and(|until| self.now_ns < until) {
            return;
        }
        if let Some(tmf) = self.tmfs.remove(&tk) {
            self.emit_tmf(tmf, None, out);
        }
    }

    /// Closes a TMF that will not be answered (or whose covered commands will
    /// not finish), with the cause.
    fn close_tmf(&mut self, tk: TmfKey, cause: &str, out: &mut Vec<Record>) {
        if let Some(mut tmf) = self.tmfs.remove(&tk) {
            // A response built but not yet sent when the trace ends may
            // still leave: that is not known, and not claimed.
            tmf.ended_unsent = cause == TRACE_ENDED;
            // Why it was never answered outranks why it is closed now, but
            // an eviction (the matcher's own limit) is always said.
            let cause = match tmf.stranded.clone() {
                Some(stranded) if cause != EVICTED_TMF => stranded,
                _ => cause.to_owned(),
            };
            self.emit_tmf(tmf, Some(cause), out);
        }
    }

    fn emit_tmf(&mut self, tmf: Tmf, cause: Option<String>, out: &mut Vec<Record>) {
        let fates_unknown = tmf.covered.iter().any(|(_, c)| c.fate == Fate::Pending);
        let blocked = tmf.covered.iter().any(|(_, c)| c.fate == Fate::Blocked)
            || tmf.ret == Some(mgmt_ret::QUEUED);
        // DONE means nothing was busy: a covered command whose release the
        // lean set has not seen yet was aborted at once all the same.
        let aborted_unseen = tmf.ret == Some(mgmt_ret::DONE);
        let aborted = tmf
            .covered
            .iter()
            .filter(|(_, c)| c.fate == Fate::Aborted || (aborted_unseen && c.fate == Fate::Pending))
            .count();
        let delivery = tmf.delivery(self.cfg.coverage);
        // The iSCSI code the initiator got or would have got: as sent, else
        // as iscsi_tm_done maps the core's result.
        let iscsi_response = tmf
            .sent
            .map(|(code, _)| code)
            .or_else(|| tmf.response.map(|r| iscsi_response_of(r.0)));
        let cause =
            match delivery {
                // LIO writes it to a connection whose initiator has gone.
                Delivery::FreedUnsent if self.cfg.coverage.lio => Some(format!(
                    "connection closed: the initiator had closed its end when the target sent \
                     its response ({})",
                    iscsi_response.map_or("unknown", iscsi_response_name)
                )),
                Delivery::FreedUnsent => Some(match iscsi_response {
                    Some(code) => format!(
                        "connection closed: the target freed its response ({}) unsent",
                        iscsi_response_name(code)
                    ),
                    None => "connection closed: the target freed its response unsent".to_owned(),
                }),
                Delivery::NotSent if tmf.response.is_some() => Some(cause.unwrap_or_else(|| {
                    "tgtd built a response that was never seen leaving".to_owned()
                })),
                _ => cause,
            };
        let transport_only = tmf.iscsi.is_some() && !tmf.core_requested;
        let referenced_held = tmf
            .iscsi
            .and_then(|i| i.referenced)
            .is_some_and(|r| r == Referenced::HeldByTransport);
        let outcome = match (delivery, iscsi_response) {
            (Delivery::FreedUnsent | Delivery::NotSent, _) | (_, None) => TmfOutcome::Unanswered,
            (_, Some(code)) if transport_only && self.cfg.coverage.lio => {
                lio::transport_outcome(code, tmf.race.is_some())
            }
            (_, Some(code)) if transport_only => match code {
                tgt_trace_common::iscsi_rsp::REJECTED => TmfOutcome::RejectedByTransport,
                _ => TmfOutcome::NotSupportedByTransport,
            },
            (_, Some(code)) => {
                // The core's own result when seen, else the code's meaning.
                let result = tmf.response.map_or(
                    match code {
                        0 => 0,
                        1 => -EEXIST,
                        5 => -EINVAL,
                        _ => -1,
                    },
                    |r| r.0,
                );
                match result.wrapping_neg() {
                    0 if blocked => TmfOutcome::Deferred,
                    0 if aborted > 0 => TmfOutcome::CompletedWithAborts,
                    0 => TmfOutcome::CompletedNothingToAbort,
                    EEXIST if blocked => TmfOutcome::NoTaskDeferredThenFinished,
                    EEXIST if referenced_held => TmfOutcome::NoTaskNotYetQueued,
                    EEXIST if tmf.race.is_some() => TmfOutcome::NoTaskRace,
                    EEXIST => TmfOutcome::NoTaskNeverExisted,
                    EINVAL => TmfOutcome::NotSupported,
                    _ => TmfOutcome::Rejected,
                }
            }
        };
        if delivery == Delivery::Unknown {
            self.counts.tmfs_delivery_unknown += 1;
        }
        let initiator = self.initiator(tmf.pid, tmf.itn_id);
        let function = tmf.name().to_owned();
        *self
            .counts
            .tmfs_by_outcome
            .entry(outcome_name(outcome).to_owned())
            .or_default() += 1;
        *self
            .counts
            .tmfs_by_function
            .entry(function.clone())
            .or_default()
            .entry(outcome_name(outcome).to_owned())
            .or_default() += 1;
        let at = tmf
            .sent
            .map(|s| s.1)
            .or(tmf.response.map(|r| r.1))
            .unwrap_or(self.now_ns);
        match outcome {
            TmfOutcome::NoTaskNotYetQueued
            | TmfOutcome::NoTaskNeverExisted
            | TmfOutcome::NoTaskRace => {
                let detail = if outcome == TmfOutcome::NoTaskNotYetQueued {
                    if self.held_aborts.len() < self.cfg.max_tmfs {
                        self.held_aborts
                            .insert((tmf.pid, tmf.itn_id, tmf.tag), (tmf.seq, at, tmf.lun));
                    }
                    format!(
                        "ABORT TASK found no task in the core: tag {:#x} was still held by the iSCSI \
                         layer (waiting for its CmdSN or Data-Out); tgtd answered TASK DOES NOT EXIST \
                         and will run the command when it arrives",
                        tmf.tag
                    )
                } else {
                    match tmf.race {
                        Some(gap) => format!(
                            "ABORT TASK found no task: tag {:#x} was released {} µs before the request (a race with its completion)",
                            tmf.tag,
                            gap / 1_000
                        ),
                        None => format!(
                            "ABORT TASK found no task: tag {:#x} was not in tgtd",
                            tmf.tag
                        ),
                    }
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
                // With the walk no release is seen: a blocker is known to
                // be still held only when tgtd never built the response
                // (it does at the last blocker's release) and no other TMF
                // took the blockers over.
                // LIO's covered sets come with their releases.
                let covers = self.cfg.coverage.covers && !self.cfg.coverage.lio;
                let never_released: Vec<&Covered> = tmf
                    .covered
                    .iter()
                    .map(|(_, c)| c)
                    .filter(|c| c.fate == Fate::Blocked && c.at_ns.is_none())
                    .filter(|_| !covers || (tmf.response.is_none() && tmf.stranded.is_none()))
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
                        let detail = if covers {
                            format!(
                                "{function} waited for tag {:#x}; it or another of the TMF's \
                                 blockers was never released (the tmf probe set sees no \
                                 releases): {cause_text}",
                                c.tag
                            )
                        } else {
                            format!(
                                "{function} waited for tag {:#x}, which was never released: {cause_text}",
                                c.tag
                            )
                        };
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
            itt: tmf.iscsi.map(|i| i.itt),
            requested_ns: tmf.requested_ns,
            returned: tmf.ret.map(|r| mgmt_ret_name(r).to_owned()),
            responded_ns: tmf.response.map(|r| r.1),
            response: tmf.response.map(|r| r.0),
            response_inferred: tmf.response.is_some_and(|r| r.2),
            response_dropped: tmf.response_dropped,
            latency_ns: match delivery {
                Delivery::Sent => tmf.sent.map(|s| s.1.saturating_sub(tmf.requested_ns)),
                Delivery::Unknown => tmf.response.map(|r| r.1.saturating_sub(tmf.requested_ns)),
                Delivery::FreedUnsent | Delivery::NotSent => None,
            },
            iscsi_response,
            sent_ns: tmf.sent.map(|s| s.1),
            delivery,
            referenced: tmf.iscsi.and_then(|i| i.referenced),
            outcome,
            covered: tmf.covered.into_iter().map(|(_, c)| c).collect(),
            race_gap_ns: tmf.race,
            executed_ns: tmf.executed_ns,
            cause: if outcome == TmfOutcome::Unanswered {
                cause.or_else(|| Some("no response".to_owned()))
            } else {
                cause
                    .filter(|c| fates_unknown || c == EVICTED_TMF)
                    .or(tmf.walk_incomplete)
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

    /// The stream clock moved: TMFs past their timeout are unanswered, and
    /// lingering TMFs whose window has passed are emitted. The open TMFs are
    /// scanned only once the earliest deadline is reached.
    pub fn advance(&mut self, now_ns: u64, out: &mut Vec<Record>) {
        if now_ns > self.now_ns {
            self.now_ns = now_ns;
        }
        if now_ns < self.next_timeout_ns {
            return;
        }
        let timeout = self.cfg.tmf_timeout_ns;
        let mut due: Vec<(u64, TmfKey, bool)> = self
            .tmfs
            .iter()
            .filter_map(|(k, t)| {
                let lingered = t.linger_until.is_some_and(|until| until <= now_ns);
                let late = now_ns.saturating_sub(t.requested_ns) > timeout;
                (lingered || late).then_some((t.seq, *k, lingered))
            })
            .collect();
        due.sort_unstable();
        for (_, tk, lingered) in due {
            if lingered {
                self.try_finish_tmf(tk, out);
            } else {
                self.close_tmf(
                    tk,
                    &format!("no response within {} s", timeout / 1_000_000_000),
                    out,
                );
            }
        }
        self.next_timeout_ns = self
            .tmfs
            .values()
            .map(|t| {
                let deadline = t.requested_ns.saturating_add(timeout).saturating_add(1);
                t.linger_until.map_or(deadline, |until| until.min(deadline))
            })
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Totals and histograms so far; nothing is closed.
    pub fn summary(&self) -> Summary {
        Summary {
            counts: self.counts.clone(),
            histograms: self.stats.summary(),
        }
    }

    /// Ends the trace: everything still open is closed with the cause "trace ended".
    pub fn finish(&mut self, end_ns: u64, out: &mut Vec<Record>) -> Summary {
        self.advance(end_ns, out);
        self.finish_sample();
        self.close_where(TRACE_ENDED, |_, _| true, out);
        self.summary()
    }
}

/// A TMF's latency to `ts` into the histograms, once: at its transmission
/// when the trace sees that, else when tgtd built the response.
fn record_latency(stats: &mut Stats, tmf: &mut Tmf, ts: u64) {
    if tmf.latency_recorded {
        return;
    }
    tmf.latency_recorded = true;
    let latency = ts.saturating_sub(tmf.requested_ns);
    stats
        .tmf_by_function
        .entry(tmf.name())
        .or_default()
        .record_ns(latency);
    if tmf.ret == Some(mgmt_ret::QUEUED) {
        stats.deferred_wait.record_ns(latency);
    }
}

/// The TMF's entry for a command, added if the TMF's covered set did not
/// have it (a command the trace did not see arrive).
fn covered_entry<'t>(
    tmf: &'t mut Tmf,
    key: CmdKey,
    lun: Option<u64>,
    arrived_ns: Option<u64>,
    initiators: &HashMap<(u32, u64), String>,
) -> &'t mut Covered {
    let index = match tmf.covered.iter().position(|(k, _)| *k == key) {
        Some(index) => index,
        None => {
            tmf.covered.push((
                key,
                Covered {
                    itn_id: key.1,
                    initiator: initiators.get(&(key.0, key.1)).cloned(),
                    tag: key.2,
                    lun: lun.unwrap_or(tmf.lun),
                    arrived_ns: arrived_ns.unwrap_or(0),
                    fate: Fate::Pending,
                    at_ns: None,
                    blocked_ns: None,
                    other_initiator: key.1 != tmf.itn_id,
                },
            ));
            tmf.covered.len() - 1
        }
    };
    &mut tmf.covered[index].1
}

/// Whether a TMF's scope covers a command, as tgt 1.0.85 `abort_task_set`
/// decides it (`usr/target.c`):
///
/// ```c
/// if ((all && itn->itn_id == itn_id) ||
///     (cmd->tag == tag && itn->itn_id == itn_id) ||
///     (lun && !memcmp(cmd->lun, lun, sizeof(cmd->lun))))
/// ```
///
/// ABORT TASK passes its tag and no LUN; ABORT TASK SET `all`; CLEAR TASK
/// SET and LOGICAL UNIT RESET the LUN bytes **and tag 0**, so the
/// requester's own commands with tag 0 are covered on any LUN. LUNs are
/// compared as their 8 bytes; where a trace lacks them (before schema 4),
/// as the decoded numbers.
fn scope_matches(tmf: &Tmf, key: CmdKey, lun: Option<u64>, lun_raw: Option<u64>) -> bool {
    let (_, itn, tag) = key;
    let same_nexus = itn == tmf.itn_id;
    match tmf.function {
        tmf::ABORT_TASK => same_nexus && tag == tmf.tag,
        tmf::ABORT_TASK_SET => same_nexus,
        tmf::CLEAR_TASK_SET | tmf::LOGICAL_UNIT_RESET => {
            let same_lun = match (lun_raw, tmf.lun_raw) {
                (Some(a), Some(b)) => a == b,
                _ => lun.is_none_or(|l| l == tmf.lun),
            };
            same_lun || (same_nexus && tag == 0)
        }
        _ => false,
    }
}

impl Matcher {
    /// The TMFs not yet concluded, oldest request first. Read-only: for live views.
    pub fn open_tmf_list(&self) -> Vec<OpenTmf> {
        let mut open: Vec<OpenTmf> = self
            .tmfs
            .values()
            .map(|t| OpenTmf {
                pid: t.pid,
                mid: t.mid,
                itn_id: t.itn_id,
                initiator: self.initiator(t.pid, t.itn_id),
                function: t.name().to_owned(),
                lun: t.lun,
                tag: t.tag,
                requested_ns: t.requested_ns,
                returned: t.ret.map(|r| crate::event::mgmt_ret_name(r).to_owned()),
            })
            .collect();
        open.sort_by_key(|t| t.requested_ns);
        open
    }

    /// The `limit` commands that have been in tgtd longest, oldest first,
    /// each with the open TMFs it holds up. Read-only: for live views.
    pub fn oldest_in_flight(&self, limit: usize) -> Vec<InFlight> {
        let mut blocking: FxHashMap<CmdKey, Vec<u64>> = FxHashMap::default();
        for tmf in self.tmfs.values() {
            let queued = tmf.ret == Some(mgmt_ret::QUEUED);
            for (key, c) in &tmf.covered {
                let holds = (c.fate == Fate::Blocked && c.at_ns.is_none())
                    || (queued && c.fate == Fate::Pending);
                if holds {
                    blocking.entry(*key).or_default().push(tmf.seq);
                }
            }
        }
        self.command_order
            .iter()
            .filter_map(|(seq, key)| {
                let cmd = self.commands.get(key).filter(|c| c.seq == *seq)?;
                Some((key, cmd))
            })
            .take(limit)
            .map(|(key, cmd)| {
                let mut tmfs = blocking.remove(key).unwrap_or_default();
                tmfs.sort_unstable();
                InFlight {
                    pid: key.0,
                    itn_id: key.1,
                    initiator: self.initiator(key.0, key.1),
                    tag: key.2,
                    lun: cmd.lun,
                    opcode: cmd.opcode,
                    arrived_ns: cmd.arrived_ns,
                    blocking: if cmd.aborted { Vec::new() } else { tmfs },
                }
            })
            .collect()
    }
}
