//! `--sample`: the per-command probes are attached only inside windows, so
//! the command events of a sampled trace feed the latency histograms and
//! nothing else. Its TMFs are matched exactly as the tmf set's are (the
//! walk of tgtd's task lists at each request), whether or not a window is
//! open: a window's arrivals and releases would describe some commands and
//! not others, and a TMF's covered set must not depend on when it came.
//!
//! A command is measured when its arrival and its release (its result, with
//! the full set) were both seen in one window. One whose arrival came
//! before the window opened (a release with no arrival), or whose release
//! came after it closed (an arrival still open at the close), is counted as
//! cut by the window and not measured. Windows are long against a command
//! (a second's tenth against a few hundred µs), so the few cut at each edge
//! leave the distribution's shape alone; a command longer than a window is
//! never measured, which the count of cut commands shows.

use rustc_hash::FxHashMap;

use super::{CmdKey, Matcher};
use crate::event::Event;

/// The commands that arrived in the open window.
#[derive(Debug, Default)]
pub(super) struct Sampler {
    arrived: FxHashMap<CmdKey, Arrival>,
}

/// What a window saw of a command before its release.
#[derive(Debug)]
struct Arrival {
    at_ns: u64,
    opcode: u8,
    lun: u64,
    /// The full set's result time.
    result_ns: Option<u64>,
}

impl Matcher {
    /// A command event or window edge of a sampled trace.
    pub(super) fn sampled(&mut self, event: &Event) {
        match *event {
            Event::SampleWindow { open, .. } => {
                if open {
                    self.counts.sample_windows += 1;
                }
                // Whatever is still open arrived in the window now closing
                // (or, at an open, in one whose close was lost): cut.
                self.counts.commands_cut_by_window += self.sampler.arrived.len() as u64;
                self.sampler.arrived.clear();
            }
            Event::CmdQueue {
                ts_ns,
                pid,
                itn_id,
                tag,
                lun,
                opcode,
                ..
            } => {
                if self.sampler.arrived.len() >= self.cfg.max_commands {
                    self.counts.commands_cut_by_window += 1;
                    return;
                }
                let arrival = Arrival {
                    at_ns: ts_ns,
                    opcode,
                    lun,
                    result_ns: None,
                };
                if self
                    .sampler
                    .arrived
                    .insert((pid, itn_id, tag), arrival)
                    .is_some()
                {
                    // The same tag again: its release was not seen.
                    self.counts.commands_cut_by_window += 1;
                }
            }
            Event::CmdResult {
                ts_ns,
                pid,
                itn_id,
                tag,
                ..
            } => {
                if let Some(a) = self.sampler.arrived.get_mut(&(pid, itn_id, tag)) {
                    a.result_ns.get_or_insert(ts_ns);
                }
            }
            Event::CmdRelease {
                ts_ns,
                pid,
                itn_id,
                tag,
                ..
            } => match self.sampler.arrived.remove(&(pid, itn_id, tag)) {
                Some(a) => {
                    // Full set: to the result; lean: to the release.
                    let end = a.result_ns.unwrap_or(ts_ns);
                    self.counts.commands_sampled += 1;
                    self.record_command_latency(
                        Some(a.opcode),
                        Some(a.lun),
                        end.saturating_sub(a.at_ns),
                    );
                }
                None => self.counts.commands_cut_by_window += 1,
            },
            _ => {}
        }
    }

    /// The end of a sampled trace: commands still open are cut.
    pub(super) fn finish_sample(&mut self) {
        self.counts.commands_cut_by_window += self.sampler.arrived.len() as u64;
        self.sampler.arrived.clear();
    }
}
