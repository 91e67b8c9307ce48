//! The matcher against tgtd's event orders (`usr/target.c`), without root:
//! one test per rule of the seed patch, one per tgtd path, and properties
//! over random interleavings that follow tgtd's semantics.

use proptest::prelude::*;
use tgt_trace::{
    correlate::{
        CommandOutcome, Config, Coverage, Fate, Matcher, OrphanKind, Record, Summary, TmfOutcome,
        TmfRecord,
    },
    event::{Event, Waiter},
};
use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

const PID: u32 = 100;
const EEXIST: i32 = -17;

/// Builds event streams the way tgtd emits them, with a clock.
struct Stream {
    events: Vec<Event>,
    ts: u64,
    pid: u32,
}

impl Stream {
    fn new() -> Stream {
        Stream {
            events: Vec::new(),
            ts: 1_000_000,
            pid: PID,
        }
    }

    fn tick(&mut self) -> u64 {
        self.ts += 1_000;
        self.ts
    }

    fn nexus(&mut self, itn_id: u64, name: &str) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::NexusCreate {
            ts_ns: ts,
            pid: self.pid,
            tid: 1,
            itn_id,
            initiator: Some(name.to_owned()),
            info: format!("Initiator: {name} alias: none"),
        });
        self
    }

    fn queue(&mut self, itn_id: u64, tag: u64, lun: u64) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::CmdQueue {
            ts_ns: ts,
            pid: self.pid,
            tid: 1,
            itn_id,
            tag,
            lun,
            lun_raw: None,
            opcode: 0x28,
            attribute: 0x20,
            cmd: tag,
        });
        self
    }

    fn result(&mut self, itn_id: u64, tag: u64, result: i32, tmf_mid: Option<u64>) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::CmdResult {
            ts_ns: ts,
            pid: self.pid,
            itn_id,
            tag,
            cmd: tag,
            result,
            tmf_mid,
        });
        self
    }

    fn release(&mut self, itn_id: u64, tag: u64, result: i32, tmf: Option<Waiter>) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::CmdRelease {
            ts_ns: ts,
            pid: self.pid,
            itn_id,
            tag,
            cmd: tag,
            result,
            tmf,
        });
        self
    }

    fn request(&mut self, itn_id: u64, mid: u64, function: u8, tag: u64, lun: u64) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::TmfRequest {
            ts_ns: ts,
            pid: self.pid,
            tid: 1,
            itn_id,
            mid,
            function,
            tag,
            lun,
            lun_raw: None,
        });
        self
    }

    fn ret(&mut self, mid: u64, ret: i32) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::TmfReturn {
            ts_ns: ts,
            pid: self.pid,
            mid,
            ret,
        });
        self
    }

    fn response(&mut self, mid: u64, function: u8, result: i32) -> &mut Self {
        self.response_on(mid, function, result, None)
    }

    /// A response tgtd frees unsent: the initiator's connection is closed.
    fn dropped_response(&mut self, mid: u64, function: u8, result: i32) -> &mut Self {
        self.response_on(mid, function, result, Some(true))
    }

    fn response_on(
        &mut self,
        mid: u64,
        function: u8,
        result: i32,
        connection_closed: Option<bool>,
    ) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::TmfResponse {
            ts_ns: ts,
            pid: self.pid,
            mid,
            function,
            result,
            connection_closed,
        });
        self
    }

    fn run(&self, cfg: Config) -> (Vec<Record>, Summary) {
        let mut m = Matcher::new(cfg);
        let mut out = Vec::new();
        for e in &self.events {
            m.push(e, &mut out);
        }
        let summary = m.finish(self.ts + 1, &mut out);
        (out, summary)
    }
}

fn tmfs(records: &[Record]) -> Vec<&TmfRecord> {
    records
        .iter()
        .filter_map(|r| {
            if let Record::Tmf(t) = r {
                Some(t)
            } else {
                None
            }
        })
        .collect()
}

fn orphans(records: &[Record]) -> Vec<OrphanKind> {
    records
        .iter()
        .filter_map(|r| {
            if let Record::Orphan(o) = r {
                Some(o.kind)
            } else {
                None
            }
        })
        .collect()
}

fn lean() -> Config {
    Config {
        coverage: Coverage {
            result: false,
            ..Coverage::ALL
        },
        ..Config::default()
    }
}

// Seed rule: ABORT TASK that finds its command gives one aborted result and
// one response.
#[test]
fn abort_task_that_finds_its_command_full() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .result(1, 7, TASK_ABORTED, None)
        .response(900, tmf::ABORT_TASK, 0)
        .ret(900, mgmt_ret::DONE)
        .release(1, 7, TASK_ABORTED, None);
    let (records, summary) = s.run(Config::default());
    let t = tmfs(&records);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].outcome, TmfOutcome::CompletedWithAborts);
    assert_eq!(t[0].covered.len(), 1);
    assert_eq!(
        (t[0].covered[0].tag, t[0].covered[0].fate),
        (7, Fate::Aborted)
    );
    assert_eq!(t[0].response, Some(0));
    assert!(orphans(&records).is_empty());
    assert_eq!(summary.counts.commands_aborted, 1);
    assert_eq!(summary.histograms.abort.count, 1);
    assert_eq!(summary.histograms.tmf_by_function["ABORT_TASK"].count, 1);
}

// The lean set sees the aborted result only at the release, after the response.
#[test]
fn abort_task_that_finds_its_command_lean() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .response(900, tmf::ABORT_TASK, 0)
        .ret(900, mgmt_ret::DONE)
        .release(1, 7, TASK_ABORTED, None);
    let (records, _) = s.run(lean());
    let t = tmfs(&records);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].outcome, TmfOutcome::CompletedWithAborts);
    assert_eq!(t[0].covered[0].fate, Fate::Aborted);
    assert!(orphans(&records).is_empty());
}

// Issue 4, scenario a: tgtd 1.0.85 aborts a queued ORDERED command (DONE)
// and then releases it with `cmd->result` still 0 (it frees the command while
// it is queued, and crashes). DONE says the command was aborted.
#[test]
fn a_done_tmf_outranks_a_stale_result_at_release_lean() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .response(900, tmf::ABORT_TASK, 0)
        .ret(900, mgmt_ret::DONE)
        .release(1, 7, 0, None);
    let (records, summary) = s.run(lean());
    let t = tmfs(&records);
    assert_eq!(t[0].outcome, TmfOutcome::CompletedWithAborts);
    assert_eq!(t[0].covered[0].fate, Fate::Aborted);
    assert_eq!(summary.counts.commands_aborted, 1);
    assert!(orphans(&records).is_empty());
}

// Seed rule: ABORT TASK that finds nothing gives only the response: orphan (a).
#[test]
fn abort_task_that_finds_nothing() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK, 0x55, 1)
        .response(900, tmf::ABORT_TASK, EEXIST)
        .ret(900, mgmt_ret::FAILED);
    let (records, summary) = s.run(Config::default());
    assert_eq!(tmfs(&records)[0].outcome, TmfOutcome::NoTaskNeverExisted);
    assert_eq!(orphans(&records), vec![OrphanKind::TmfFoundNoTask]);
    assert_eq!(summary.counts.orphans_by_kind["tmf_found_no_task"], 1);
}

// Seed rule: ABORT TASK SET gives N aborted results and one response; another
// nexus's commands are not covered.
#[test]
fn abort_task_set_aborts_the_nexus() {
    let mut s = Stream::new();
    s.queue(1, 1, 1)
        .queue(1, 2, 1)
        .queue(1, 3, 1)
        .queue(2, 4, 1)
        .request(1, 900, tmf::ABORT_TASK_SET, 0, 1);
    for tag in 1..=3 {
        s.result(1, tag, TASK_ABORTED, None);
    }
    s.response(900, tmf::ABORT_TASK_SET, 0)
        .ret(900, mgmt_ret::DONE);
    for tag in 1..=3 {
        s.release(1, tag, TASK_ABORTED, None);
    }
    s.release(2, 4, 0, None);
    let (records, summary) = s.run(Config::default());
    let t = tmfs(&records);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].outcome, TmfOutcome::CompletedWithAborts);
    let tags: Vec<u64> = t[0].covered.iter().map(|c| c.tag).collect();
    assert_eq!(tags, vec![1, 2, 3]);
    assert!(t[0].covered.iter().all(|c| c.fate == Fate::Aborted));
    assert_eq!(
        (
            summary.counts.commands_aborted,
            summary.counts.commands_good
        ),
        (3, 1)
    );
    assert_eq!(summary.histograms.abort.count, 3);
}

// tgtd path: a command in the backing store makes ABORT TASK wait for its
// release; tgtd then answers -EEXIST.
#[test]
fn deferred_abort_task_is_answered_after_release() {
    let waiter = Waiter {
        mid: 900,
        function: tmf::ABORT_TASK,
        busy: 1,
    };
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED)
        .result(1, 7, 0, Some(900))
        .release(1, 7, 0, Some(waiter))
        .response(900, tmf::ABORT_TASK, EEXIST);
    let (records, summary) = s.run(Config::default());
    let t = tmfs(&records);
    assert_eq!(t[0].outcome, TmfOutcome::NoTaskDeferredThenFinished);
    assert_eq!(t[0].covered[0].fate, Fate::Blocked);
    assert!(t[0].covered[0].at_ns.is_some(), "the blocking release time");
    assert_eq!(t[0].returned.as_deref(), Some("QUEUED"));
    assert!(orphans(&records).is_empty());
    assert_eq!(summary.histograms.deferred_wait.count, 1);
}

// Whatever the order of the response and the blocker's release, the TMF
// resolves once both are seen.
#[test]
fn deferred_response_before_the_release_still_resolves() {
    let waiter = Waiter {
        mid: 900,
        function: tmf::ABORT_TASK,
        busy: 1,
    };
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED)
        .response(900, tmf::ABORT_TASK, EEXIST)
        .release(1, 7, 0, Some(waiter));
    let mut m = Matcher::new(Config::default());
    let mut out = Vec::new();
    for e in &s.events {
        m.push(e, &mut out);
    }
    // Resolved by the events themselves, not by finish().
    assert_eq!(tmfs(&out).len(), 1);
    assert_eq!(
        tmfs(&out)[0].outcome,
        TmfOutcome::NoTaskDeferredThenFinished
    );
}

// tgtd keeps one waiting TMF per command (cmd->mreq): when a second TMF
// takes it over, the first is never named at the release. Its fate is still
// known there, and it must not hold the first TMF open.
#[test]
fn a_covered_command_released_without_naming_the_tmf_resolves_it() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED)
        .response(900, tmf::ABORT_TASK, EEXIST)
        .release(1, 7, 0, None);
    let mut m = Matcher::new(lean());
    let mut out = Vec::new();
    for e in &s.events {
        m.push(e, &mut out);
    }
    let t = tmfs(&out);
    assert_eq!(t.len(), 1, "concluded by the release, not by finish()");
    assert_eq!(t[0].covered[0].fate, Fate::Completed);
}

// tgtd 1.0.85 path (`abort_cmd` overwrites `cmd->mreq`): a busy command
// covered by a deferred ABORT TASK and then by a LUN RESET is released to the
// LUN RESET only; the ABORT TASK's busy count never reaches zero. Seen in the
// demo, and in the e2e scenario that reproduces it.
#[test]
fn a_deferred_tmf_whose_blocker_a_later_tmf_took_is_stranded() {
    let mut s = Stream::new();
    s.nexus(1, "iqn.a")
        .nexus(2, "iqn.b")
        .queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED)
        .request(2, 901, tmf::LOGICAL_UNIT_RESET, 0, 1)
        .ret(901, mgmt_ret::QUEUED)
        .release(1, 7, 0, waiter(901, tmf::LOGICAL_UNIT_RESET, 1))
        .response(901, tmf::LOGICAL_UNIT_RESET, 0);
    for cfg in [Config::default(), lean()] {
        let mut m = Matcher::new(cfg);
        let mut out = Vec::new();
        for e in &s.events {
            m.push(e, &mut out);
        }
        // Concluded at the release, not at the end of the trace.
        let t = tmfs(&out);
        assert_eq!(t.len(), 2, "{t:#?}");
        let abort = t.iter().find(|t| t.mid == 900).expect("the ABORT TASK");
        let reset = t.iter().find(|t| t.mid == 901).expect("the LUN RESET");
        assert_eq!(abort.outcome, TmfOutcome::Unanswered);
        let cause = abort.cause.as_deref().unwrap_or_default();
        assert!(
            cause.contains("stranded")
                && cause.contains(&format!("TMF {} (LOGICAL_UNIT_RESET)", reset.seq))
                && cause.contains("0x7"),
            "{cause}"
        );
        assert_eq!(abort.covered[0].fate, Fate::Completed);
        assert_eq!(reset.outcome, TmfOutcome::Deferred);
        assert_eq!(reset.covered[0].fate, Fate::Blocked);
        assert_eq!(orphans(&out), vec![OrphanKind::TmfUnanswered]);
    }
}

// Without arrivals (the TMF-only set) nothing says the command was busy for
// the first TMF: no stranding is claimed, and the end of the trace closes it.
#[test]
fn stranding_is_not_claimed_without_arrivals() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED)
        .request(2, 901, tmf::LOGICAL_UNIT_RESET, 0, 1)
        .ret(901, mgmt_ret::QUEUED)
        .release(1, 7, 0, waiter(901, tmf::LOGICAL_UNIT_RESET, 1))
        .response(901, tmf::LOGICAL_UNIT_RESET, 0);
    let cfg = Config {
        coverage: Coverage {
            queue: false,
            perform: false,
            result: false,
            ..Coverage::ALL
        },
        ..Config::default()
    };
    let (records, _) = s.run(cfg);
    let abort = tmfs(&records)
        .into_iter()
        .find(|t| t.mid == 900)
        .expect("the ABORT TASK");
    assert_eq!(abort.outcome, TmfOutcome::Unanswered);
    assert!(
        !abort
            .cause
            .as_deref()
            .unwrap_or_default()
            .contains("stranded"),
        "{:?}",
        abort.cause
    );
}

// iSCSI path (`iscsi_tm_done`): the initiator's connection is closed when the
// deferred response is ready, so tgtd frees it unsent.
#[test]
fn a_response_freed_on_a_closed_connection_leaves_the_tmf_unanswered() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED)
        .release(1, 7, 0, waiter(900, tmf::ABORT_TASK, 1))
        .dropped_response(900, tmf::ABORT_TASK, EEXIST);
    let (records, summary) = s.run(Config::default());
    let t = tmfs(&records);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].outcome, TmfOutcome::Unanswered);
    assert!(t[0].response_dropped);
    assert_eq!(t[0].response, Some(EEXIST), "what tgtd answered is kept");
    assert_eq!(t[0].latency_ns, None, "the initiator never had a response");
    let cause = t[0].cause.as_deref().unwrap_or_default();
    assert!(
        cause.contains("connection closed") && cause.contains("TASK DOES NOT EXIST"),
        "{cause}"
    );
    assert_eq!(orphans(&records), vec![OrphanKind::TmfUnanswered]);
    assert_eq!(
        summary
            .histograms
            .tmf_by_function
            .get("ABORT_TASK")
            .map(|h| h.count),
        None,
        "no latency sample for a response never sent"
    );
}

#[test]
fn deferred_lun_reset_names_its_blockers() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .queue(1, 8, 1)
        .request(1, 900, tmf::LOGICAL_UNIT_RESET, 0, 1)
        .ret(900, mgmt_ret::QUEUED)
        .release(
            1,
            7,
            0,
            Some(Waiter {
                mid: 900,
                function: tmf::LOGICAL_UNIT_RESET,
                busy: 2,
            }),
        )
        .release(
            1,
            8,
            0,
            Some(Waiter {
                mid: 900,
                function: tmf::LOGICAL_UNIT_RESET,
                busy: 1,
            }),
        )
        .response(900, tmf::LOGICAL_UNIT_RESET, 0);
    let (records, _) = s.run(lean());
    let t = tmfs(&records);
    assert_eq!(t[0].outcome, TmfOutcome::Deferred);
    assert_eq!(
        t[0].covered
            .iter()
            .filter(|c| c.fate == Fate::Blocked)
            .count(),
        2
    );
}

// tgtd path: LUN RESET aborts every initiator's commands on the LUN.
#[test]
fn lun_reset_reports_cross_initiator_impact() {
    let mut s = Stream::new();
    s.nexus(1, "iqn.a")
        .nexus(2, "iqn.b")
        .queue(1, 1, 1)
        .queue(2, 2, 1)
        .queue(2, 3, 2)
        .request(1, 900, tmf::LOGICAL_UNIT_RESET, 0, 1)
        .result(1, 1, TASK_ABORTED, None)
        .result(2, 2, TASK_ABORTED, None)
        .response(900, tmf::LOGICAL_UNIT_RESET, 0)
        .ret(900, mgmt_ret::DONE);
    let (records, _) = s.run(Config::default());
    let t = &tmfs(&records)[0];
    assert_eq!(t.covered.len(), 2, "LUN 2's command is not covered");
    let other: Vec<(&str, u64)> = t
        .covered
        .iter()
        .filter(|c| c.other_initiator)
        .map(|c| (c.initiator.as_deref().unwrap_or("?"), c.tag))
        .collect();
    assert_eq!(other, vec![("iqn.b", 2)]);
}

// tgtd path: an aborted result that no TMF explains: orphan (b).
#[test]
fn aborted_result_without_tmf() {
    let mut s = Stream::new();
    s.queue(1, 7, 1).release(1, 7, TASK_ABORTED, None);
    let (records, _) = s.run(lean());
    assert_eq!(orphans(&records), vec![OrphanKind::AbortWithoutTmf]);
}

// tgtd path: a TMF never answered: orphan (c), by timeout, nexus gone, exit.
#[test]
fn tmf_never_answered_times_out() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1);
    s.ts += 31_000_000_000;
    s.queue(2, 1, 1);
    let (records, _) = s.run(Config::default());
    let t = &tmfs(&records)[0];
    assert_eq!(t.outcome, TmfOutcome::Unanswered);
    assert!(
        t.cause
            .as_deref()
            .is_some_and(|c| c.contains("within 30 s")),
        "{:?}",
        t.cause
    );
    assert_eq!(orphans(&records), vec![OrphanKind::TmfUnanswered]);
}

#[test]
fn tmf_unanswered_when_nexus_goes_or_target_exits() {
    for (gone, cause) in [
        (
            Event::NexusDestroy {
                ts_ns: 9_000_000,
                pid: PID,
                tid: 1,
                itn_id: 1,
            },
            "nexus gone",
        ),
        (
            Event::ProcessExit {
                ts_ns: 9_000_000,
                pid: PID,
            },
            "target exited",
        ),
    ] {
        let mut s = Stream::new();
        s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1)
            .ret(900, mgmt_ret::QUEUED);
        s.events.push(gone);
        let (records, _) = s.run(Config::default());
        assert_eq!(tmfs(&records)[0].cause.as_deref(), Some(cause));
        assert_eq!(orphans(&records), vec![OrphanKind::TmfUnanswered]);
    }
}

// tgtd path: a deferred TMF whose blocking command is never released: (d).
#[test]
fn blocker_never_released() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .ret(900, mgmt_ret::QUEUED);
    let (records, summary) = s.run(Config::default());
    assert_eq!(orphans(&records), vec![OrphanKind::BlockerNeverReleased]);
    assert_eq!(summary.counts.commands_in_flight, 1);
}

// tgtd path: a tag reused after release is a new command.
#[test]
fn tag_reuse_is_a_new_command() {
    let mut s = Stream::new();
    s.queue(1, 7, 1)
        .release(1, 7, 0, None)
        .queue(1, 7, 1)
        .release(1, 7, 2, None);
    let (records, summary) = s.run(lean());
    assert_eq!(summary.counts.commands_in, 2);
    assert_eq!(
        (summary.counts.commands_good, summary.counts.commands_error),
        (1, 1)
    );
    let kept: Vec<CommandOutcome> = records
        .iter()
        .filter_map(|r| {
            if let Record::Command(c) = r {
                Some(c.outcome)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(kept, vec![CommandOutcome::ErrorStatus]);
}

// ABORT TASK just after its command completed is a race, not "never existed".
#[test]
fn abort_task_racing_completion() {
    let mut s = Stream::new();
    s.queue(1, 7, 1).release(1, 7, 0, None);
    s.request(1, 900, tmf::ABORT_TASK, 7, 1)
        .response(900, tmf::ABORT_TASK, EEXIST)
        .ret(900, mgmt_ret::FAILED);
    let (records, _) = s.run(Config::default());
    let t = &tmfs(&records)[0];
    assert_eq!(t.outcome, TmfOutcome::NoTaskRace);
    assert_eq!(t.race_gap_ns, Some(1_000));
    let detail = records
        .iter()
        .find_map(|r| {
            if let Record::Orphan(o) = r {
                Some(o.detail.clone())
            } else {
                None
            }
        })
        .expect("orphan (a)");
    assert!(detail.contains("race"), "{detail}");
}

// Outside the race window the tag is simply not there.
#[test]
fn abort_task_long_after_completion_is_not_a_race() {
    let mut s = Stream::new();
    s.queue(1, 7, 1).release(1, 7, 0, None);
    s.ts += 2_000_000_000;
    s.request(1, 900, tmf::ABORT_TASK, 7, 1)
        .response(900, tmf::ABORT_TASK, EEXIST)
        .ret(900, mgmt_ret::FAILED);
    let (records, _) = s.run(Config::default());
    assert_eq!(tmfs(&records)[0].outcome, TmfOutcome::NoTaskNeverExisted);
}

#[test]
fn eviction_is_counted() {
    let mut s = Stream::new();
    s.queue(1, 1, 1).queue(1, 2, 1).queue(1, 3, 1);
    let (records, summary) = s.run(Config {
        max_commands: 2,
        ..Config::default()
    });
    assert_eq!(summary.counts.commands_evicted, 1);
    assert_eq!(summary.counts.commands_in_flight, 2);
    assert!(records.iter().any(
        |r| matches!(r, Record::Command(c) if c.outcome == CommandOutcome::Evicted && c.tag == 1)
    ));
}

#[test]
fn two_tgtd_processes_are_kept_apart() {
    let mut s = Stream::new();
    s.queue(1, 7, 1);
    s.pid = PID + 1;
    s.queue(1, 7, 1)
        .request(1, 900, tmf::ABORT_TASK, 7, 1)
        .result(1, 7, TASK_ABORTED, None);
    s.response(900, tmf::ABORT_TASK, 0).ret(900, mgmt_ret::DONE);
    let (records, _) = s.run(Config::default());
    let t = &tmfs(&records)[0];
    assert_eq!(t.covered.len(), 1, "only the TMF's own process");
    assert_eq!(t.pid, PID + 1);
}

// Without the response probe, responses are inferred and marked so.
#[test]
fn responses_are_inferred_without_the_response_probe() {
    let cfg = Config {
        coverage: Coverage {
            tmf_response: false,
            ..Coverage::ALL
        },
        ..Config::default()
    };
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK, 0x55, 1)
        .ret(900, mgmt_ret::FAILED);
    s.queue(1, 7, 1)
        .request(1, 901, tmf::ABORT_TASK, 7, 1)
        .ret(901, mgmt_ret::QUEUED)
        .release(
            1,
            7,
            0,
            Some(Waiter {
                mid: 901,
                function: tmf::ABORT_TASK,
                busy: 1,
            }),
        );
    let (records, _) = s.run(cfg);
    let t = tmfs(&records);
    assert_eq!(t.len(), 2);
    assert!(
        t.iter()
            .all(|t| t.response_inferred && t.response == Some(EEXIST))
    );
    assert_eq!(t[0].outcome, TmfOutcome::NoTaskNeverExisted);
    assert_eq!(t[1].outcome, TmfOutcome::NoTaskDeferredThenFinished);
}

// tgtd reuses a mid once the TMF is freed; an open TMF with a reused mid
// lost its response.
#[test]
fn a_reused_mid_starts_a_new_tmf() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1)
        .ret(900, mgmt_ret::QUEUED);
    s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1)
        .response(900, tmf::ABORT_TASK_SET, 0)
        .ret(900, mgmt_ret::DONE);
    let (records, summary) = s.run(Config::default());
    assert_eq!(summary.counts.tmfs, 2);
    let outcomes: Vec<TmfOutcome> = tmfs(&records).iter().map(|t| t.outcome).collect();
    assert_eq!(
        outcomes,
        vec![TmfOutcome::Unanswered, TmfOutcome::CompletedNothingToAbort]
    );
}

/// One step of a random workload on one nexus and LUN, in tgtd's semantics.
#[derive(Debug, Clone)]
enum Step {
    Queue,
    /// Complete the i-th in-flight command (modulo), with a result.
    Complete(usize, bool),
    /// ABORT TASK of the i-th in-flight command (or of a tag never used); the
    /// command is in the backing store when `busy`.
    AbortTask(usize, bool),
    AbortTaskSet(bool),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        4 => Just(Step::Queue),
        4 => (0..64usize, any::<bool>()).prop_map(|(i, e)| Step::Complete(i, e)),
        1 => (0..64usize, any::<bool>()).prop_map(|(i, b)| Step::AbortTask(i, b)),
        1 => any::<bool>().prop_map(Step::AbortTaskSet),
    ]
}

/// Plays steps as tgtd would, into events; returns the events and how many
/// commands and TMFs there were.
fn play(steps: &[Step]) -> (Stream, u64, u64) {
    let mut s = Stream::new();
    let mut in_flight: Vec<u64> = Vec::new();
    let mut next_tag = 1;
    let mut mid = 5_000;
    let (mut commands, mut tmfs) = (0, 0);
    for st in steps {
        match *st {
            Step::Queue => {
                s.queue(1, next_tag, 1);
                in_flight.push(next_tag);
                next_tag += 1;
                commands += 1;
            }
            Step::Complete(i, error) if !in_flight.is_empty() => {
                let tag = in_flight.remove(i % in_flight.len());
                let result = if error { 2 } else { 0 };
                s.result(1, tag, result, None).release(1, tag, result, None);
            }
            Step::AbortTask(i, busy) => {
                mid += 1;
                tmfs += 1;
                if in_flight.is_empty() {
                    s.request(1, mid, tmf::ABORT_TASK, 999_999, 1)
                        .response(mid, tmf::ABORT_TASK, EEXIST)
                        .ret(mid, mgmt_ret::FAILED);
                    continue;
                }
                let tag = in_flight.remove(i % in_flight.len());
                s.request(1, mid, tmf::ABORT_TASK, tag, 1);
                if busy {
                    let w = Waiter {
                        mid,
                        function: tmf::ABORT_TASK,
                        busy: 1,
                    };
                    s.ret(mid, mgmt_ret::QUEUED)
                        .result(1, tag, 0, Some(mid))
                        .release(1, tag, 0, Some(w));
                    s.response(mid, tmf::ABORT_TASK, EEXIST);
                } else {
                    s.result(1, tag, TASK_ABORTED, None)
                        .response(mid, tmf::ABORT_TASK, 0)
                        .ret(mid, mgmt_ret::DONE);
                    s.release(1, tag, TASK_ABORTED, None);
                }
            }
            Step::AbortTaskSet(busy) => {
                mid += 1;
                tmfs += 1;
                let tags: Vec<u64> = std::mem::take(&mut in_flight);
                s.request(1, mid, tmf::ABORT_TASK_SET, 0, 1);
                if busy && !tags.is_empty() {
                    s.ret(mid, mgmt_ret::QUEUED);
                    let n = tags.len() as i32;
                    for (k, &tag) in tags.iter().enumerate() {
                        let w = Waiter {
                            mid,
                            function: tmf::ABORT_TASK_SET,
                            busy: n - k as i32,
                        };
                        s.result(1, tag, 0, Some(mid)).release(1, tag, 0, Some(w));
                    }
                    s.response(mid, tmf::ABORT_TASK_SET, 0);
                } else {
                    for &tag in &tags {
                        s.result(1, tag, TASK_ABORTED, None);
                    }
                    s.response(mid, tmf::ABORT_TASK_SET, 0)
                        .ret(mid, mgmt_ret::DONE);
                    for &tag in &tags {
                        s.release(1, tag, TASK_ABORTED, None);
                    }
                }
            }
            Step::Complete(..) => {}
        }
    }
    (s, commands, tmfs)
}

proptest! {
    #[test]
    fn every_command_and_tmf_resolves_exactly_once(steps in proptest::collection::vec(step(), 0..200)) {
        let (s, commands, tmf_count) = play(&steps);
        let (records, summary) = s.run(Config::default());
        let c = &summary.counts;
        // Conservation: every command in has exactly one outcome.
        prop_assert_eq!(c.commands_in, commands);
        prop_assert_eq!(c.commands_good + c.commands_error + c.commands_aborted + c.commands_in_flight + c.commands_evicted, commands);
        // Every TMF resolves once.
        prop_assert_eq!(tmfs(&records).len() as u64, tmf_count);
        prop_assert_eq!(c.tmfs_by_outcome.values().sum::<u64>(), tmf_count);
        // Histogram counts equal the matched pairs.
        let released = c.commands_good + c.commands_error + c.commands_aborted;
        prop_assert_eq!(summary.histograms.command.count, released);
        prop_assert_eq!(summary.histograms.abort.count, c.commands_aborted);
        // tgtd's semantics leave no orphan but ABORT TASK of nothing, and no
        // unanswered TMF: every TMF here got its response.
        prop_assert!(!c.tmfs_by_outcome.contains_key("unanswered"));
        prop_assert_eq!(c.orphans_by_kind.get("abort_without_tmf"), None);
    }

    #[test]
    fn the_lean_set_reaches_the_same_verdicts(steps in proptest::collection::vec(step(), 0..200)) {
        let (s, _, _) = play(&steps);
        let (full, _) = s.run(Config::default());
        let mut lean_stream = Stream::new();
        lean_stream.events = s.events.iter().filter(|e| !matches!(e, Event::CmdResult { .. })).cloned().collect();
        let (lean_records, _) = lean_stream.run(lean());
        let outcomes = |r: &[Record]| tmfs(r).iter().map(|t| (t.seq, t.outcome, t.covered.len())).collect::<Vec<_>>();
        prop_assert_eq!(outcomes(&full), outcomes(&lean_records));
    }
}

// ---------------------------------------------------------------------------
// Properties over the synthetic generator (tgt_trace::synth), which plays
// tgtd over several processes, nexuses and LUNs and keeps the truth.

use tgt_trace::synth::{SynthConfig, Truth, generate};

fn synth_config() -> impl Strategy<Value = SynthConfig> {
    (
        any::<u64>(),
        1..3u32,
        1..4u32,
        1..3u32,
        1..8usize,
        (0..100_000u32, 0..500_000u32),
        (20_000..300_000u32, 0..50_000u32, 0..50_000u32),
    )
        .prop_map(
            |(seed, pids, nexuses, luns, depth, (error_ppm, held_ppm), (at, ats, lr))| {
                SynthConfig {
                    seed,
                    pids,
                    nexuses,
                    luns,
                    depth,
                    error_ppm,
                    held_ppm,
                    abort_task_ppm: at,
                    abort_task_set_ppm: ats,
                    lun_reset_ppm: lr,
                    ..SynthConfig::default()
                }
            },
        )
}

/// The probe sets that see command arrivals.
const WITH_QUEUE: [Coverage; 4] = [
    Coverage::ALL,
    Coverage::LEAN,
    Coverage {
        perform: false,
        ..Coverage::ALL
    },
    Coverage {
        tmf_response: false,
        ..Coverage::ALL
    },
];

fn run_events(events: &[Event], end_ns: u64, cfg: Config) -> (Vec<Record>, Summary) {
    let mut m = Matcher::new(cfg);
    let mut out = Vec::new();
    for e in events {
        m.push(e, &mut out);
    }
    let summary = m.finish(end_ns + 1, &mut out);
    (out, summary)
}

fn assert_matches_truth(
    records: &[Record],
    summary: &Summary,
    truth: &Truth,
    coverage: Coverage,
) -> Result<(), TestCaseError> {
    let c = &summary.counts;
    prop_assert_eq!(c.commands_in, truth.commands);
    prop_assert_eq!(
        (c.commands_good, c.commands_error, c.commands_aborted),
        (truth.good, truth.error, truth.aborted)
    );
    prop_assert_eq!(
        (c.commands_in_flight, c.commands_evicted),
        (truth.in_flight, 0)
    );
    prop_assert_eq!(c.tmfs, truth.tmfs);
    prop_assert_eq!(&c.tmfs_by_outcome, &truth.tmf_outcomes);
    // Every TMF resolves exactly once.
    let mut seqs: Vec<u64> = tmfs(records).iter().map(|t| t.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    prop_assert_eq!(seqs.len() as u64, truth.tmfs);
    // Histogram counts equal the matched pairs.
    let h = &summary.histograms;
    prop_assert_eq!(h.command.count, truth.good + truth.error + truth.aborted);
    let aborts = if coverage.result {
        truth.aborted_at_once
    } else {
        truth.aborted
    };
    prop_assert_eq!(h.abort.count, aborts);
    prop_assert_eq!(h.aborted_in_flight.count, aborts);
    let answered: u64 = h.tmf_by_function.values().map(|l| l.count).sum();
    prop_assert_eq!(answered, truth.tmfs_answered);
    prop_assert_eq!(h.deferred_wait.count, truth.tmfs_deferred_answered);
    // tgtd aborts only for a TMF.
    prop_assert_eq!(c.orphans_by_kind.get("abort_without_tmf"), None);
    let unanswered = truth
        .tmf_outcomes
        .get("unanswered")
        .copied()
        .unwrap_or_default();
    let found_nothing = ["no_task_race", "no_task_never_existed"]
        .iter()
        .filter_map(|k| truth.tmf_outcomes.get(*k))
        .sum::<u64>();
    prop_assert_eq!(
        c.orphans_by_kind
            .get("tmf_found_no_task")
            .copied()
            .unwrap_or_default(),
        found_nothing
    );
    let c_or_d = c
        .orphans_by_kind
        .get("tmf_unanswered")
        .copied()
        .unwrap_or_default()
        + c.orphans_by_kind
            .get("blocker_never_released")
            .copied()
            .unwrap_or_default();
    prop_assert!(c_or_d >= unanswered);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn synthetic_streams_match_the_truth_for_every_probe_set_with_arrivals(
        cfg in synth_config(),
        len in 0..3_000usize,
    ) {
        for coverage in WITH_QUEUE {
            let (events, truth, end) = generate(SynthConfig { probes: coverage, ..cfg.clone() }, len);
            let (records, summary) = run_events(&events, end, Config { coverage, ..Config::default() });
            assert_matches_truth(&records, &summary, &truth, coverage)?;
        }
    }

    #[test]
    fn counts_are_conserved_under_eviction(
        cfg in synth_config(),
        len in 0..3_000usize,
        max_commands in 1..20usize,
        max_tmfs in 1..4usize,
    ) {
        let (events, truth, end) = generate(cfg, len);
        let (records, summary) = run_events(&events, end, Config { max_commands, max_tmfs, ..Config::default() });
        let c = &summary.counts;
        prop_assert_eq!(
            c.commands_in,
            c.commands_good + c.commands_error + c.commands_aborted + c.commands_in_flight + c.commands_evicted
        );
        prop_assert!(c.commands_in >= truth.commands);
        prop_assert_eq!(c.tmfs, truth.tmfs);
        prop_assert_eq!(c.tmfs_by_outcome.values().sum::<u64>(), c.tmfs);
        prop_assert_eq!(tmfs(&records).len() as u64, c.tmfs);
        let evicted_records = records
            .iter()
            .filter(|r| matches!(r, Record::Command(cmd) if cmd.outcome == CommandOutcome::Evicted))
            .count() as u64;
        prop_assert_eq!(evicted_records, c.commands_evicted);
        let evicted_tmfs = tmfs(&records)
            .iter()
            .filter(|t| t.cause.as_deref() == Some("evicted: max_tmfs reached"))
            .count() as u64;
        prop_assert_eq!(evicted_tmfs, c.tmfs_evicted);
    }

    // The TMF probe set of schema 5 sees no arrivals and no ordinary
    // release: it cannot tell a race from a tag that never existed, nor
    // (when LUN-wide TMFs overlap) which of them aborted a command; every
    // TMF still resolves once and every abort is attributed.
    #[test]
    fn the_schema_5_tmf_probe_set_resolves_every_tmf(cfg in synth_config(), len in 0..3_000usize) {
        let (events, truth, end) = generate(SynthConfig { probes: Coverage::TMF_RELEASES, ..cfg }, len);
        let (records, summary) = run_events(&events, end, Config { coverage: Coverage::TMF_RELEASES, ..Config::default() });
        let c = &summary.counts;
        prop_assert_eq!(c.tmfs, truth.tmfs);
        prop_assert_eq!(tmfs(&records).len() as u64, truth.tmfs);
        prop_assert_eq!(c.commands_aborted, truth.aborted);
        prop_assert_eq!(c.orphans_by_kind.get("abort_without_tmf"), None);
        let merge = |m: &std::collections::BTreeMap<String, u64>| {
            let mut merged = std::collections::BTreeMap::new();
            for (k, v) in m {
                let k = match k.as_str() {
                    "no_task_race" => "no_task_never_existed",
                    "completed_nothing_to_abort" => "completed_with_aborts",
                    k => k,
                };
                *merged.entry(k.to_owned()).or_insert(0u64) += v;
            }
            merged
        };
        prop_assert_eq!(merge(&c.tmfs_by_outcome), merge(&truth.tmf_outcomes));
    }

    // `--sample`: a stream with the walk and the lean set's command events,
    // the command events kept only inside random windows (as detaching
    // their probes does). The TMFs are matched exactly as the tmf set
    // matches the same stream without command events, and the command
    // histogram holds exactly the commands whose arrival and release fell
    // in one window, counted from the stream's own positions; every other
    // command event seen is counted as cut.
    #[test]
    fn sampling_leaves_tmfs_alone_and_measures_whole_commands_only(
        cfg in synth_config(),
        len in 0..3_000usize,
        toggles in proptest::collection::btree_set(0..3_000usize, 0..12),
    ) {
        let coverage = Coverage { covers: true, ..Coverage::LEAN };
        let (events, _truth, end) = generate(SynthConfig { probes: coverage, ..cfg }, len);
        let is_command = |e: &Event| matches!(
            e,
            Event::CmdQueue { .. } | Event::CmdPerform { .. } | Event::CmdResult { .. } | Event::CmdRelease { .. }
        );
        // Windows open and close at the toggles, the first opening.
        let mut sampled = Vec::new();
        let mut open = false;
        let mut window = 0u64;
        let mut arrived = std::collections::HashMap::new();
        let (mut whole, mut seen_commands) = (0u64, 0u64);
        for (i, e) in events.iter().enumerate() {
            if toggles.contains(&i) {
                open = !open;
                window += 1;
                sampled.push(Event::SampleWindow { ts_ns: e.ts_ns(), pid: 0, open });
            }
            if !is_command(e) {
                sampled.push(e.clone());
                continue;
            }
            if !open {
                continue;
            }
            match *e {
                Event::CmdQueue { pid, itn_id, tag, .. } => {
                    seen_commands += 1;
                    arrived.insert((pid, itn_id, tag), window);
                }
                Event::CmdRelease { pid, itn_id, tag, .. } => {
                    if arrived.remove(&(pid, itn_id, tag)) == Some(window) {
                        whole += 1;
                    } else {
                        seen_commands += 1;
                    }
                }
                _ => {}
            }
            sampled.push(e.clone());
        }
        let rate = tgt_trace::points::Sampling { percent: 10, period_ms: 1_000 };
        let (records, summary) = run_events(
            &sampled,
            end,
            Config { coverage: Coverage { sampled: Some(rate), ..Coverage::TMF_ONLY }, ..Config::default() },
        );
        let tmf_only: Vec<Event> = events.iter().filter(|e| !is_command(e)).cloned().collect();
        let (tmf_records, tmf_summary) = run_events(&tmf_only, end, tmf_only_config());
        prop_assert_eq!(tmfs(&records), tmfs(&tmf_records));
        prop_assert_eq!(&summary.counts.tmfs_by_outcome, &tmf_summary.counts.tmfs_by_outcome);
        prop_assert_eq!(summary.histograms.command.count, whole);
        prop_assert_eq!(summary.counts.commands_sampled, whole);
        prop_assert_eq!(summary.counts.commands_cut_by_window, seen_commands - whole);
        prop_assert_eq!(summary.histograms.sampling, Some(rate));
        prop_assert!(!records.iter().any(|r| matches!(r, Record::Command(_))));
    }

    // The TMF probe set: no command event at all, each TMF's covered set
    // from its walk of tgtd's task lists. Every outcome is the truth's but
    // a race, which needs the release it raced (it is a tag not in tgtd);
    // the commands aborted are those tgtd aborted at once; each answered TMF
    // has its latency; no orphan that needs the command path appears.
    #[test]
    fn the_tmf_probe_set_walks_to_the_truth(cfg in synth_config(), len in 0..3_000usize) {
        let (events, truth, end) = generate(SynthConfig { probes: Coverage::TMF_ONLY, ..cfg }, len);
        let command_events = events.iter().filter(|e| matches!(
            e,
            Event::CmdQueue { .. } | Event::CmdPerform { .. } | Event::CmdResult { .. } | Event::CmdRelease { .. }
        )).count();
        prop_assert_eq!(command_events, 0);
        let (records, summary) = run_events(&events, end, Config { coverage: Coverage::TMF_ONLY, ..Config::default() });
        let c = &summary.counts;
        prop_assert_eq!(c.tmfs, truth.tmfs);
        prop_assert_eq!(tmfs(&records).len() as u64, truth.tmfs);
        prop_assert_eq!(c.commands_aborted, truth.aborted_at_once);
        prop_assert_eq!(c.orphans_by_kind.get("abort_without_tmf"), None);
        prop_assert_eq!(c.unmatched_events, 0);
        let merge = |m: &std::collections::BTreeMap<String, u64>| {
            let mut merged = std::collections::BTreeMap::new();
            for (k, v) in m {
                let k = if k == "no_task_race" { "no_task_never_existed" } else { k.as_str() };
                *merged.entry(k.to_owned()).or_insert(0u64) += v;
            }
            merged
        };
        prop_assert_eq!(merge(&c.tmfs_by_outcome), merge(&truth.tmf_outcomes));
        let h = &summary.histograms;
        let answered: u64 = h.tmf_by_function.values().map(|l| l.count).sum();
        prop_assert_eq!(answered, truth.tmfs_answered);
        prop_assert_eq!(h.deferred_wait.count, truth.tmfs_deferred_answered);
        prop_assert_eq!(h.command.count, 0);
        // Each covered command's fate is what abort_cmd decided.
        for t in tmfs(&records) {
            for cov in &t.covered {
                prop_assert!(matches!(cov.fate, Fate::Aborted | Fate::Blocked), "{:?}", t);
            }
        }
    }
}

#[test]
fn a_realistic_synthetic_stream_matches_its_truth_exactly() {
    for coverage in WITH_QUEUE {
        // Commands held in tgtd's queue are what a TMF aborts at once;
        // 5% of them makes sure this stream has some.
        let cfg = SynthConfig {
            pids: 2,
            probes: coverage,
            held_ppm: 50_000,
            ..SynthConfig::default()
        };
        let (events, truth, end) = generate(cfg, 400_000);
        let (records, summary) = run_events(
            &events,
            end,
            Config {
                coverage,
                ..Config::default()
            },
        );
        assert!(
            truth.tmfs >= 100 && truth.races > 0 && truth.aborted > 0,
            "{truth:?}"
        );
        // Issue 13: responses freed unsent, and TMFs the iSCSI layer
        // answers itself, are in the stream where the trace can see them.
        if coverage.tmf_sent && coverage.conn_close {
            for outcome in ["unanswered", "not_supported_by_transport"] {
                assert!(truth.tmf_outcomes.contains_key(outcome), "{truth:?}");
            }
        }
        assert_matches_truth(&records, &summary, &truth, coverage).expect("matches the truth");
    }
}

impl Stream {
    fn perform(&mut self, itn_id: u64, tag: u64) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::CmdPerform {
            ts_ns: ts,
            pid: self.pid,
            itn_id,
            tag,
            cmd: tag,
        });
        self
    }
}

fn waiter(mid: u64, function: u8, busy: i32) -> Option<Waiter> {
    Some(Waiter {
        mid,
        function,
        busy,
    })
}

// tgtd path, full set: one covered command is in the backing store (it
// blocks), the other is still queued (aborted at once). The perform probe
// says which at the request; the block lasts from request to release.
#[test]
fn abort_task_set_with_one_busy_and_one_queued_command() {
    let mut s = Stream::new();
    s.queue(1, 1, 1)
        .perform(1, 1)
        .queue(1, 2, 1)
        .request(1, 900, tmf::ABORT_TASK_SET, 0, 1) // t = 1_004_000
        .result(1, 2, TASK_ABORTED, None)
        .ret(900, mgmt_ret::QUEUED)
        .release(1, 2, TASK_ABORTED, None)
        .result(1, 1, 0, Some(900))
        .release(1, 1, 0, waiter(900, tmf::ABORT_TASK_SET, 1)) // t = 1_009_000
        .response(900, tmf::ABORT_TASK_SET, 0);
    let (records, summary) = s.run(Config::default());
    let t = &tmfs(&records)[0];
    assert_eq!(t.outcome, TmfOutcome::Deferred);
    let fates: Vec<(u64, Fate, Option<u64>)> = t
        .covered
        .iter()
        .map(|c| (c.tag, c.fate, c.blocked_ns))
        .collect();
    assert_eq!(
        fates,
        vec![(1, Fate::Blocked, Some(5_000)), (2, Fate::Aborted, None)]
    );
    assert_eq!(t.latency_ns, Some(6_000));
    assert_eq!(summary.histograms.deferred_wait.count, 1);
    assert_eq!(summary.histograms.abort.count, 1);
    assert_eq!(
        summary.counts.tmfs_by_function["ABORT_TASK_SET"]["deferred"],
        1
    );
    assert!(orphans(&records).is_empty());
}

// Without the perform probe, the result's `tmf_mid` names the TMF a command blocks.
#[test]
fn the_result_names_the_tmf_a_command_blocks() {
    let mut s = Stream::new();
    s.queue(1, 1, 1)
        .request(1, 900, tmf::ABORT_TASK, 1, 1)
        .result(1, 1, 0, Some(900));
    let mut m = Matcher::new(Config {
        coverage: Coverage {
            perform: false,
            ..Coverage::ALL
        },
        ..Config::default()
    });
    let mut out = Vec::new();
    for e in &s.events {
        m.push(e, &mut out);
    }
    // No return seen yet; at the end the blocker was never released: (d).
    m.finish(s.ts + 1, &mut out);
    assert_eq!(orphans(&out), vec![OrphanKind::BlockerNeverReleased]);
    assert_eq!(tmfs(&out)[0].covered[0].fate, Fate::Blocked);
}

// tgtd takes a command aborted at once off the task list (`abort_cmd` →
// `cmd_done`) before its release: a later TMF does not find it.
#[test]
fn a_command_aborted_at_once_is_not_covered_again() {
    for coverage in [Coverage::ALL, Coverage::LEAN] {
        let mut s = Stream::new();
        s.queue(1, 1, 1).request(1, 900, tmf::ABORT_TASK_SET, 0, 1);
        if coverage.result {
            s.result(1, 1, TASK_ABORTED, None);
        }
        s.response(900, tmf::ABORT_TASK_SET, 0)
            .ret(900, mgmt_ret::DONE)
            .request(2, 901, tmf::LOGICAL_UNIT_RESET, 0, 1)
            .response(901, tmf::LOGICAL_UNIT_RESET, 0)
            .ret(901, mgmt_ret::DONE)
            .release(1, 1, TASK_ABORTED, None);
        let (records, _) = s.run(Config {
            coverage,
            ..Config::default()
        });
        let outcomes: Vec<(u64, TmfOutcome, usize)> = tmfs(&records)
            .iter()
            .map(|t| (t.mid, t.outcome, t.covered.len()))
            .collect();
        assert!(
            outcomes.contains(&(900, TmfOutcome::CompletedWithAborts, 1))
                && outcomes.contains(&(901, TmfOutcome::CompletedNothingToAbort, 0)),
            "{coverage:?}: {outcomes:?}"
        );
    }
}

// CLEAR TASK SET covers the LUN for every initiator, within the TMF's target only.
#[test]
fn clear_task_set_covers_the_lun_of_its_own_target() {
    let mut s = Stream::new();
    s.nexus(1, "iqn.a")
        .nexus(2, "iqn.b")
        .queue(1, 1, 3)
        .queue(2, 2, 3);
    let ts = s.tick();
    s.events.push(Event::CmdQueue {
        ts_ns: ts,
        pid: PID,
        tid: 2,
        itn_id: 3,
        tag: 3,
        lun: 3,
        lun_raw: None,
        opcode: 0x2a,
        attribute: 0x20,
        cmd: 3,
    });
    s.request(1, 900, tmf::CLEAR_TASK_SET, 0, 3)
        .result(1, 1, TASK_ABORTED, None)
        .result(2, 2, TASK_ABORTED, None)
        .response(900, tmf::CLEAR_TASK_SET, 0)
        .ret(900, mgmt_ret::DONE);
    let (records, _) = s.run(Config::default());
    let t = &tmfs(&records)[0];
    let covered: Vec<(u64, bool, Option<&str>)> = t
        .covered
        .iter()
        .map(|c| (c.tag, c.other_initiator, c.initiator.as_deref()))
        .collect();
    assert_eq!(
        covered,
        vec![(1, false, Some("iqn.a")), (2, true, Some("iqn.b"))]
    );
    assert_eq!(t.outcome, TmfOutcome::CompletedWithAborts);
}

// The TMF probe set of schema 5: commands are known only from the releases a
// TMF cares about, which follow the response; a completed TMF waits a race
// window for them.
#[test]
fn the_tmf_probe_set_attributes_later_aborted_releases() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1)
        .response(900, tmf::ABORT_TASK_SET, 0)
        .ret(900, mgmt_ret::DONE);
    let mut m = Matcher::new(Config {
        coverage: Coverage::TMF_RELEASES,
        ..Config::default()
    });
    let mut out = Vec::new();
    for e in &s.events {
        m.push(e, &mut out);
    }
    assert!(tmfs(&out).is_empty(), "lingers for late aborted releases");
    s.events.clear();
    s.release(1, 7, TASK_ABORTED, None)
        .release(1, 8, TASK_ABORTED, None);
    for e in &s.events {
        m.push(e, &mut out);
    }
    m.advance(s.ts + 1_000_000_001, &mut out);
    let t = tmfs(&out);
    assert_eq!(t.len(), 1, "emitted once the window passed");
    assert_eq!(t[0].outcome, TmfOutcome::CompletedWithAborts);
    let tags: Vec<u64> = t[0].covered.iter().map(|c| c.tag).collect();
    assert_eq!(tags, vec![7, 8]);
    assert!(orphans(&out).is_empty());
    let summary = m.finish(s.ts + 2_000_000_000, &mut out);
    assert_eq!(
        (summary.counts.commands_in, summary.counts.commands_aborted),
        (2, 2)
    );
}

#[test]
fn tmf_eviction_is_counted_and_reported() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1)
        .ret(900, mgmt_ret::QUEUED)
        .request(1, 901, tmf::ABORT_TASK_SET, 0, 1)
        .ret(901, mgmt_ret::QUEUED);
    let (records, summary) = s.run(Config {
        max_tmfs: 1,
        ..Config::default()
    });
    assert_eq!(summary.counts.tmfs_evicted, 1);
    let causes: Vec<(u64, Option<&str>)> = tmfs(&records)
        .iter()
        .map(|t| (t.mid, t.cause.as_deref()))
        .collect();
    assert_eq!(
        causes,
        vec![
            (900, Some("evicted: max_tmfs reached")),
            (901, Some("trace ended"))
        ]
    );
}

#[test]
fn process_exit_closes_only_its_own_process() {
    let mut s = Stream::new();
    s.queue(1, 1, 1);
    s.pid = PID + 1;
    s.queue(1, 1, 1);
    let ts = s.tick();
    s.events.push(Event::ProcessExit {
        ts_ns: ts,
        pid: PID,
    });
    let mut m = Matcher::new(Config::default());
    let mut out = Vec::new();
    for e in &s.events {
        m.push(e, &mut out);
    }
    let closed: Vec<(u32, Option<&str>)> = out
        .iter()
        .filter_map(|r| match r {
            Record::Command(c) => Some((c.pid, c.cause.as_deref())),
            _ => None,
        })
        .collect();
    assert_eq!(closed, vec![(PID, Some("target exited"))]);
    assert_eq!(m.in_flight(), 1);
}

// The records and the summary are the JSON schema: they read back, and an
// unknown field is refused.
#[test]
fn records_and_summary_round_trip_through_json() {
    let (events, _, end) = generate(
        SynthConfig {
            abort_task_ppm: 100_000,
            held_ppm: 300_000,
            ..SynthConfig::default()
        },
        20_000,
    );
    let (records, summary) = run_events(&events, end, Config::default());
    assert!(records.len() > 100);
    for r in &records {
        let text = serde_json::to_string(r).expect("serializes");
        let back: Record = serde_json::from_str(&text).expect("reads back");
        assert_eq!(&back, r);
    }
    let text = serde_json::to_string(&summary).expect("serializes");
    assert_eq!(
        serde_json::from_str::<Summary>(&text).expect("reads back"),
        summary
    );
    let buckets = &summary.histograms.command.buckets;
    assert_eq!(
        buckets.iter().map(|b| b.1).sum::<u64>(),
        summary.histograms.command.count
    );
    let tmf = records
        .iter()
        .find(|r| matches!(r, Record::Tmf(_)))
        .expect("a TMF");
    let mut value = serde_json::to_value(tmf).expect("serializes");
    value["surprise"] = serde_json::Value::Bool(true);
    assert!(serde_json::from_value::<Record>(value).is_err());
}

impl Stream {
    /// A command the TMF's walk found (the tmf probe set).
    fn covers(&mut self, mid: u64, itn_id: u64, tag: u64, defers: bool) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::TmfCovers {
            ts_ns: ts,
            pid: self.pid,
            mid,
            tid: 1,
            itn_id,
            tag,
            lun: 1,
            lun_raw: 0x0001_0000_0000_0000,
            opcode: 0x28,
            cmd: tag,
            state: if defers { 0b11 } else { 0b01 },
            defers,
        });
        self
    }

    fn walked(&mut self, mid: u64, covered: u32, truncated: bool) -> &mut Self {
        let ts = self.tick();
        self.events.push(Event::TmfWalked {
            ts_ns: ts,
            pid: self.pid,
            mid,
            covered,
            truncated,
            no_target: false,
        });
        self
    }
}

fn tmf_only_config() -> Config {
    tmf_only()
}

fn tmf_only() -> Config {
    Config {
        coverage: Coverage::TMF_ONLY,
        ..Config::default()
    }
}

// The tmf set: a LUN RESET whose walk found one command to abort at once
// and one to wait for is deferred, names both with their fates, and is
// concluded at its response with no release seen.
#[test]
fn the_tmf_set_takes_covered_sets_and_fates_from_the_walk() {
    let mut s = Stream::new();
    s.nexus(1, "iqn.a")
        .nexus(2, "iqn.b")
        .request(1, 900, tmf::LOGICAL_UNIT_RESET, 0, 1)
        .covers(900, 1, 7, false)
        .covers(900, 2, 8, true)
        .walked(900, 2, false)
        .ret(900, mgmt_ret::QUEUED)
        .response(900, tmf::LOGICAL_UNIT_RESET, 0);
    let (records, summary) = s.run(tmf_only());
    let t = tmfs(&records);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].outcome, TmfOutcome::Deferred);
    let fates: Vec<(u64, Fate, bool, bool)> = t[0]
        .covered
        .iter()
        .map(|c| (c.tag, c.fate, c.at_ns.is_some(), c.other_initiator))
        .collect();
    assert_eq!(
        fates,
        vec![
            (7, Fate::Aborted, true, false),
            (8, Fate::Blocked, false, true)
        ]
    );
    assert_eq!(t[0].cause, None);
    assert!(orphans(&records).is_empty());
    assert_eq!(summary.counts.commands_aborted, 1);
    assert_eq!(summary.histograms.deferred_wait.count, 1);
}

// The tmf set: a busy command a deferred ABORT TASK waits for is found busy
// again by a later LUN RESET, which takes it over (`cmd->mreq`): the ABORT
// TASK is stranded at that walk, without waiting for any release.
#[test]
fn the_tmf_set_concludes_a_stranded_tmf_at_the_walk_that_takes_its_blocker() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK, 8, 1)
        .covers(900, 1, 8, true)
        .walked(900, 1, false)
        .ret(900, mgmt_ret::QUEUED)
        .request(2, 901, tmf::LOGICAL_UNIT_RESET, 0, 1)
        .covers(901, 1, 8, true);
    let taken_at = s.ts;
    s.walked(901, 1, false).ret(901, mgmt_ret::QUEUED);
    let mut m = Matcher::new(tmf_only());
    let mut out = Vec::new();
    for e in &s.events {
        m.push(e, &mut out);
    }
    let t = tmfs(&out);
    assert_eq!(t.len(), 1, "the ABORT TASK concluded at once: {out:?}");
    assert_eq!(t[0].outcome, TmfOutcome::Unanswered);
    let cause = t[0].cause.as_deref().unwrap_or_default();
    assert!(
        cause.contains("stranded") && cause.contains("TMF 2 (LOGICAL_UNIT_RESET)"),
        "{cause}"
    );
    let o: Vec<(OrphanKind, u64)> = out
        .iter()
        .filter_map(|r| match r {
            Record::Orphan(o) => Some((o.kind, o.at_ns)),
            _ => None,
        })
        .collect();
    assert_eq!(o, vec![(OrphanKind::TmfUnanswered, taken_at)]);
}

// The tmf set: a walk that was cut short, or whose records did not all
// arrive, says its covered set is incomplete.
#[test]
fn the_tmf_set_says_when_a_walk_is_incomplete() {
    let mut s = Stream::new();
    s.request(1, 900, tmf::ABORT_TASK_SET, 0, 1)
        .covers(900, 1, 7, false)
        .walked(900, 2, false)
        .ret(900, mgmt_ret::DONE)
        .response(900, tmf::ABORT_TASK_SET, 0)
        .request(1, 901, tmf::ABORT_TASK_SET, 0, 1)
        .walked(901, 0, true)
        .ret(901, mgmt_ret::DONE)
        .response(901, tmf::ABORT_TASK_SET, 0);
    let (records, _) = s.run(tmf_only());
    let causes: Vec<Option<&str>> = tmfs(&records).iter().map(|t| t.cause.as_deref()).collect();
    assert_eq!(
        causes,
        vec![
            Some("covered set incomplete: the walk found 2 commands, 1 reached the trace"),
            Some("covered set incomplete: the walk of tgtd's task lists was cut short"),
        ]
    );
}
