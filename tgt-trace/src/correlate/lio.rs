//! LIO's rules, as its source says them (Linux 6.1 `drivers/target/`):
//!
//! - The iSCSI layer answers an ABORT TASK whose referenced task is not on
//!   the connection itself (`iscsit_tmr_abort_task`), without the core: with
//!   FUNCTION COMPLETE when the referenced CmdSN is within the session's
//!   window, else TASK DOES NOT EXIST — the wire code is what the trace
//!   reports, read from the response header it builds.
//! - In the core (`target_tmr_work`), ABORT TASK aborts the one command of
//!   the requesting session with the tag (`core_tmr_abort_task`); LUN RESET
//!   every command on the LUN, from every session, and the TMFs before it
//!   (`core_tmr_lun_reset`); ABORT TASK SET, CLEAR TASK SET and CLEAR ACA
//!   are answered FUNCTION NOT SUPPORTED, covering nothing.
//! - Each aborted command is waited for (`target_put_cmd_and_wait`) before
//!   the response: a TMF is answered only once every command it aborted is
//!   released. That wait is where LIO's hangs are: a command that is never
//!   released holds the TMF forever.
//! - An aborted command is not answered, except with TASK ABORTED when its
//!   session is not the TMF's and the LUN's TAS is on (`CMD_T_TAS`,
//!   `target_handle_abort`).

use super::*;

/// The outcome of a TMF the iSCSI layer answered without the core, by the
/// response code on the wire.
pub(super) fn transport_outcome(code: u8, raced: bool) -> TmfOutcome {
    use tgt_trace_common::iscsi_rsp as r;
    match code {
        // `iscsit_tmr_abort_task`: the referenced task is not on the
        // connection and its CmdSN is in the window: nothing to abort.
        r::FUNCTION_COMPLETE => TmfOutcome::CompletedNothingToAbort,
        r::TASK_DOES_NOT_EXIST if raced => TmfOutcome::NoTaskRace,
        r::TASK_DOES_NOT_EXIST => TmfOutcome::NoTaskNeverExisted,
        r::NOT_SUPPORTED => TmfOutcome::NotSupportedByTransport,
        r::REJECTED => TmfOutcome::RejectedByTransport,
        _ => TmfOutcome::Rejected,
    }
}

impl Matcher {
    /// An ABORT TASK the iSCSI layer received: whether the command it names
    /// was released just before (a race with its completion).
    pub(super) fn lio_received(&mut self, ts: u64, tk: TmfKey) {
        let Some(tmf) = self.tmfs.get(&tk) else {
            return;
        };
        if tmf.function != tmf::ABORT_TASK {
            return;
        }
        let race = self.race_gap(tk.0, tmf.itn_id, tmf.tag, ts);
        if let Some(tmf) = self.tmfs.get_mut(&tk) {
            tmf.race = race;
        }
    }

    pub(super) fn lio_execute(&mut self, ts: u64, tk: TmfKey) {
        match self.tmfs.get_mut(&tk) {
            Some(tmf) => {
                tmf.executed_ns.get_or_insert(ts);
            }
            None => self.counts.unmatched_events += 1,
        }
    }

    /// The TMF aborted `key` and waits for it: covered, and holding the
    /// TMF's response until released.
    pub(super) fn lio_abort_wait(
        &mut self,
        tk: TmfKey,
        key: CmdKey,
        lun: u64,
        cmd_id: u64,
        tas: bool,
    ) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        let seq = tmf.seq;
        let command = self.commands.get_mut(&key);
        let arrived = command.as_ref().and_then(|c| c.arrived_ns);
        if let Some(command) = command {
            command.aborted = true;
            if !command.covered_by.contains(&seq) {
                command.covered_by.push(seq);
            }
            command.aborted_by.get_or_insert(seq);
        }
        tmf.covers_seen += 1;
        tmf.waits.push((cmd_id, key));
        let c = covered_entry(tmf, key, Some(lun), arrived, &self.initiators);
        // Blocked until released; a TAS status may mark it aborted first.
        if c.fate == Fate::Pending {
            c.fate = Fate::Blocked;
        }
        if tas {
            c.other_initiator = true;
        }
    }

    /// The command the TMF waited for was released: aborted, after holding
    /// the TMF this long. A command that got no status (aborted without
    /// TAS) ends here.
    pub(super) fn lio_abort_waited(
        &mut self,
        ts: u64,
        tk: TmfKey,
        cmd_id: u64,
        out: &mut Vec<Record>,
    ) {
        let Some(tmf) = self.tmfs.get_mut(&tk) else {
            self.counts.unmatched_events += 1;
            return;
        };
        let Some(index) = tmf.waits.iter().position(|(id, _)| *id == cmd_id) else {
            self.counts.unmatched_events += 1;
            return;
        };
        let (_, key) = tmf.waits.swap_remove(index);
        let requested = tmf.requested_ns;
        let c = covered_entry(tmf, key, None, None, &self.initiators);
        let first_abort = c.fate != Fate::Aborted;
        c.fate = Fate::Aborted;
        c.at_ns.get_or_insert(ts);
        c.blocked_ns = Some(ts.saturating_sub(requested));
        if first_abort {
            let latency_ns = ts.saturating_sub(requested);
            self.stats.abort.record_ns(latency_ns);
            self.measured.push(Measured::Abort { latency_ns });
        }
        if let Some(cmd) = self.commands.remove(&key) {
            if let Some(arrived) = cmd.arrived_ns {
                self.stats
                    .aborted_in_flight
                    .record_ns(ts.saturating_sub(arrived));
            }
            self.remember_release(ts, key);
            self.emit_command(key, cmd, CommandOutcome::Aborted, None, Some(ts), out);
        }
        self.try_finish_tmf(tk, out);
    }
}
