//! Issue 4: each TMF path of tgtd, put there on purpose by the project's own
//! initiator and the slow-I/O gate, traced by tgt-trace, and asserted both
//! against tgt-trace's matched records and against what the initiator
//! itself sent and received.

use std::time::Duration;

use tgt_trace::{
    correlate::{
        CommandOutcome, CommandRecord, Delivery, Fate, OrphanKind, OrphanRecord, TmfOutcome,
        TmfRecord,
    },
    event::Event,
    trace::Line,
};
use tgt_trace_e2e::{
    iscsi::{
        Command, Exchange, Itt, LoginOptions, ReceivedKind, SentKind, Session, TaskAttr, Tmf,
        TmfFunction, scsi_status, tmf_response,
    },
    slowio::SlowIo,
    tgtd::{Tgtd, TgtdOptions},
};

mod support;
use support::{Recording, Trace};

const BLOCK: u32 = 512;
/// I/O to these blocks of LUN 1 is held while the gate is closed.
const SLOW_LBA: u32 = 2048;
const SLOW_BLOCKS: u16 = 8;
/// Blocks nothing holds.
const FAST_LBA: u32 = 64;
const WAIT: Duration = Duration::from_secs(10);

struct Scenario {
    // Dropped in this order: the recording before tgtd, the gate last (its
    // Drop opens it, so tgtd never stops with a worker held).
    recording: Option<Recording>,
    tgtd: Tgtd,
    gate: SlowIo,
}

impl Scenario {
    fn start(name: &str, probe_set: &str) -> Scenario {
        let gate = SlowIo::new(name).expect("gate directory");
        let env = gate
            .env(
                "lun1.img",
                u64::from(SLOW_LBA * BLOCK),
                u64::from(SLOW_BLOCKS) * u64::from(BLOCK),
            )
            .expect("the slow-I/O library");
        let tgtd = Tgtd::start(&TgtdOptions {
            env,
            ..TgtdOptions::default()
        })
        .expect("tgtd starts");
        tgtd.add_lun(1, 16 << 20).expect("LUN 1");
        let out = tgtd.dir.join(format!("{name}.ndjson"));
        let recording = Recording::start(&tgtd, &out, &["--probes", probe_set, "--matched"]);
        Scenario {
            recording: Some(recording),
            tgtd,
            gate,
        }
    }

    /// A logged-in session whose unit attention (power on, reset) has been
    /// taken, so that its next command is not answered CHECK CONDITION.
    fn login(&self, who: &str) -> Session {
        let mut session = Session::login(
            self.tgtd.portal,
            &LoginOptions::new(
                format!("iqn.2026-11.io.tgt-trace:{who}"),
                &self.tgtd.target_iqn,
            ),
        )
        .unwrap_or_else(|e| panic!("{who} logs in: {e}"));
        let ready = (0..4).any(|_| {
            session
                .test_unit_ready(1)
                .is_ok_and(|r| r.status == scsi_status::GOOD)
        });
        assert!(ready, "LUN 1 never became ready for {who}");
        session
    }

    fn recording(&mut self) -> &mut Recording {
        self.recording.as_mut().expect("still recording")
    }

    /// A READ of the held blocks, submitted; returns once the backing store
    /// holds it.
    fn submit_held_read(&mut self, session: &mut Session, held_before: usize) -> Itt {
        self.submit_held_read_of(session, held_before, SLOW_BLOCKS)
    }

    /// As [`Scenario::submit_held_read`], `blocks` long from the held ones.
    fn submit_held_read_of(
        &mut self,
        session: &mut Session,
        held_before: usize,
        blocks: u16,
    ) -> Itt {
        self.gate.hold().expect("gate closes");
        let itt = session
            .submit(Command::read10(1, SLOW_LBA, blocks, BLOCK))
            .expect("submit");
        if let Err(e) = self.gate.wait_held(held_before + 1, WAIT) {
            panic!(
                "the READ did not reach the backing store: {e}\ntrace so far:\n{}\ntgtd log:\n{}",
                self.recording().text(),
                self.tgtd.log()
            );
        }
        itt
    }

    /// Waits until tgtd has returned QUEUED for the one TMF sent: it waits
    /// for a command in the backing store.
    fn wait_one_tmf_queued(&mut self) {
        self.recording()
            .wait_for_events("the TMF queued behind the held READ", |e| {
                tmf_returned(e) == [tgt_trace_common::mgmt_ret::QUEUED]
            });
    }

    /// Waits until the trace has `n` TMF records, then stops recording.
    fn finish(&mut self, tmfs: usize) -> Trace {
        let recording = self.recording();
        recording.wait_for(&format!("{tmfs} TMF records"), |text| {
            text.lines()
                .filter(|l| l.starts_with(r#"{"type":"tmf""#))
                .count()
                >= tmfs
        });
        let trace = self.recording.take().expect("recording").stop();
        assert_eq!(
            trace.summary.drops.total(),
            0,
            "drops: {:?}",
            trace.summary.drops
        );
        trace
    }
}

/// tgtd's `cmd->tag` for an iSCSI command: the ITT as tgtd loads it from the
/// PDU, big-endian on the wire, so byte-swapped on x86.
fn tag(itt: Itt) -> u64 {
    u64::from(itt.0.swap_bytes())
}

fn tmfs(trace: &Trace) -> Vec<&TmfRecord> {
    trace
        .matched
        .iter()
        .filter_map(|l| match l {
            Line::Tmf(t) => Some(t),
            _ => None,
        })
        .collect()
}

fn orphans(trace: &Trace) -> Vec<&OrphanRecord> {
    trace
        .matched
        .iter()
        .filter_map(|l| match l {
            Line::Orphan(o) => Some(o),
            _ => None,
        })
        .collect()
}

fn command(trace: &Trace, itt: Itt) -> Option<&CommandRecord> {
    trace.matched.iter().find_map(|l| match l {
        Line::Command(c) if c.tag == tag(itt) => Some(c),
        _ => None,
    })
}

fn fate_of(tmf: &TmfRecord, itt: Itt) -> Option<Fate> {
    tmf.covered
        .iter()
        .find(|c| c.tag == tag(itt))
        .map(|c| c.fate)
}

fn queued(events: &[Event], itt: Itt) -> bool {
    events
        .iter()
        .any(|e| matches!(e, Event::CmdQueue { tag: t, .. } if *t == tag(itt)))
}

fn tmf_returned(events: &[Event]) -> Vec<i32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::TmfReturn { ret, .. } => Some(*ret),
            _ => None,
        })
        .collect()
}

/// A. tgtd 1.0.85 aborts a queued ORDERED command at once (DONE, FUNCTION
/// COMPLETE, TASK_ABORTED) and then segfaults in `target_cmd_done` on that
/// command's release, before the response reaches the wire: tgt-trace sees
/// the whole TMF, the crash as the target's exit, and closes the command
/// still in the backing store with that cause. (A tgtd without the bug
/// answers; then the initiator's record must say FUNCTION COMPLETE.)
#[test]
fn a_abort_task_of_a_queued_command_aborts_it_at_once() {
    a_queued("lean");
}

/// A with the tmf set: the walk finds the ORDERED command queued and the
/// held READ busy; the crash and the unsent response are seen the same way.
#[test]
fn a_tmf_abort_task_of_a_queued_command_aborts_it_at_once() {
    a_queued("tmf");
}

fn a_queued(set: &str) {
    let mut s = Scenario::start(&format!("a-{set}"), set);
    let mut session = s.login("a");
    let slow = s.submit_held_read(&mut session, 0);
    // ORDERED waits until the SIMPLE command ahead of it is done: queued in
    // tgtd, not yet performed.
    let ordered = session
        .submit(Command::read10(1, FAST_LBA, 8, BLOCK).with_attr(TaskAttr::Ordered))
        .expect("submit");
    if set == "tmf" {
        // No queue event to wait for. None is needed for tgtd: it reads one
        // connection's PDUs in order and queues a READ, which has no Data-Out
        // to wait for, as soon as its PDU is in and its CmdSN is next
        // (iscsi_task_queue → target_cmd_queue), so the ORDERED command is
        // queued before tgtd reads the TMF sent after it on this connection.
    } else {
        s.recording()
            .wait_for_events("the ORDERED command queued", |e| queued(e, ordered));
    }
    let abort = session
        .submit_tmf(Tmf::abort_task(1, ordered))
        .expect("ABORT TASK");
    let answer = session.wait_tmf(abort, WAIT);
    let crashed = match &answer {
        Ok(answer) => {
            assert_eq!(answer.response, tmf_response::FUNCTION_COMPLETE);
            false
        }
        Err(tgt_trace_e2e::iscsi::Error::ConnectionClosed { .. }) => true,
        Err(e) => panic!("TMF response: {e}"),
    };
    if crashed {
        s.recording().wait_for_events("tgtd's exit", |e| {
            e.iter().any(|e| matches!(e, Event::ProcessExit { .. }))
        });
    } else {
        s.gate.release().expect("gate opens");
        let done = session
            .wait_scsi(slow, WAIT)
            .expect("the held READ completes");
        assert_eq!(done.status, scsi_status::GOOD);
    }

    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record: {:?}", tmfs(&trace));
    };
    assert_eq!(tmf.function, "ABORT_TASK");
    assert_eq!(tmf.tag, tag(ordered));
    assert_eq!(tmf.returned.as_deref(), Some("DONE"));
    assert_eq!(tmf.response, Some(0), "tgtd built FUNCTION COMPLETE");
    assert_eq!(fate_of(tmf, ordered), Some(Fate::Aborted));
    assert_eq!(fate_of(tmf, slow), None, "the held READ was not covered");
    // Issue 13: the trace claims an answer only when the response left on
    // the connection, which the initiator confirms either way.
    if crashed && support::written(&trace.header) == Delivery::Unknown {
        // A build whose transmit point is not found: tgtd built the
        // response and died; whether it left first, the trace cannot tell,
        // and it claims neither.
        assert_eq!(
            (tmf.outcome, tmf.delivery),
            (TmfOutcome::CompletedWithAborts, Delivery::Unknown),
            "{tmf:?}\n{:?}",
            trace.events
        );
        let kinds: Vec<OrphanKind> = orphans(&trace).iter().map(|o| o.kind).collect();
        assert!(!kinds.contains(&OrphanKind::TmfUnanswered), "{kinds:?}");
    } else if crashed {
        assert_eq!(
            (tmf.outcome, tmf.delivery),
            (TmfOutcome::Unanswered, Delivery::NotSent),
            "{tmf:?}\n{:?}",
            trace.events
        );
        assert_eq!(tmf.cause.as_deref(), Some("target exited"));
        let kinds: Vec<OrphanKind> = orphans(&trace).iter().map(|o| o.kind).collect();
        assert_eq!(kinds, [OrphanKind::TmfUnanswered]);
    } else {
        assert_eq!(
            (tmf.outcome, tmf.delivery),
            (
                TmfOutcome::CompletedWithAborts,
                support::written(&trace.header)
            ),
            "{tmf:?}\n{:?}",
            trace.events
        );
        assert!(orphans(&trace).is_empty(), "{:?}", orphans(&trace));
    }
    if set == "tmf" {
        assert!(
            command(&trace, slow).is_none(),
            "the tmf set keeps no record of a command no TMF covered"
        );
        return;
    }
    let held = command(&trace, slow).expect("the held READ's record");
    if crashed {
        assert_eq!(held.outcome, CommandOutcome::InFlight);
        assert_eq!(held.cause.as_deref(), Some("target exited"));
        let exchanges = session.exchanges();
        assert!(
            !exchanges.iter().any(|x| matches!(
                x,
                Exchange::Received {
                    kind: ReceivedKind::TmfResponse { .. },
                    ..
                }
            )),
            "the initiator got no TMF response"
        );
    }
}

#[test]
fn b_abort_task_of_a_command_in_the_backing_store_is_deferred_until_its_release() {
    b_deferred("lean");
}

/// B with the tmf set: the walk found the READ busy; its release is not
/// seen, the response's time is.
#[test]
fn b_tmf_abort_task_of_a_command_in_the_backing_store_is_deferred() {
    b_deferred("tmf");
}

fn b_deferred(set: &str) {
    let mut s = Scenario::start(&format!("b-{set}"), set);
    let mut session = s.login("b");
    let slow = s.submit_held_read(&mut session, 0);
    let abort = session
        .submit_tmf(Tmf::abort_task(1, slow))
        .expect("ABORT TASK");
    s.wait_one_tmf_queued();
    assert!(
        session.poll(abort).expect("poll").is_none(),
        "answered before the READ was released"
    );
    s.gate.release().expect("gate opens");
    let answer = session.wait_tmf(abort, WAIT).expect("TMF response");
    let read = session.wait_scsi(slow, WAIT).expect("the READ's response");
    session.logout().expect("logout");

    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record: {:?}", tmfs(&trace));
    };
    assert_eq!(tmf.returned.as_deref(), Some("QUEUED"));
    assert_eq!(
        fate_of(tmf, slow),
        Some(Fate::Blocked),
        "the blocking tag is named"
    );
    let blocker = tmf
        .covered
        .iter()
        .find(|c| c.tag == tag(slow))
        .expect("covered");
    if set == "tmf" {
        assert_eq!(tmf.covered.len(), 1, "{tmf:?}");
        assert_eq!(blocker.at_ns, None, "the tmf set sees no release");
    } else {
        assert!(
            blocker
                .at_ns
                .is_some_and(|at| at <= tmf.responded_ns.unwrap_or(0)),
            "the response follows the blocker's release: {tmf:?}"
        );
    }
    // tgtd finished the READ rather than abort it, and said so: -EEXIST,
    // which iSCSI answers as "task does not exist".
    assert_eq!(read.status, scsi_status::GOOD);
    assert_eq!(tmf.response, Some(-17));
    assert_eq!(tmf.outcome, TmfOutcome::NoTaskDeferredThenFinished);
    assert_eq!(answer.response, tmf_response::TASK_DOES_NOT_EXIST);
}

/// C. ABORT TASK of a tag tgtd never had: answered at once, and an orphan.
#[test]
fn c_abort_task_of_a_tag_that_never_existed_is_an_orphan() {
    c_never_existed("lean");
}

#[test]
fn c_tmf_abort_task_of_a_tag_that_never_existed_is_an_orphan() {
    c_never_existed("tmf");
}

fn c_never_existed(set: &str) {
    let mut s = Scenario::start(&format!("c-{set}"), set);
    let mut session = s.login("c");
    let ghost = Itt(0x00c0_ffee);
    let response = session
        .task_management(Tmf::abort_task(1, ghost))
        .expect("TMF response");
    assert_eq!(response, tmf_response::TASK_DOES_NOT_EXIST);
    session.logout().expect("logout");

    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record");
    };
    assert_eq!(tmf.tag, tag(ghost));
    assert_eq!(tmf.outcome, TmfOutcome::NoTaskNeverExisted);
    assert!(tmf.covered.is_empty());
    assert_eq!(tmf.response, Some(-17));
    let [orphan] = orphans(&trace)[..] else {
        panic!("one orphan: {:?}", orphans(&trace));
    };
    assert_eq!(orphan.kind, OrphanKind::TmfFoundNoTask);
    assert_eq!((orphan.tag, orphan.tmf_seq), (tag(ghost), Some(tmf.seq)));
    assert!(
        orphan.detail.contains("was not in tgtd"),
        "{}",
        orphan.detail
    );
}

/// D. ABORT TASK right after the command completed: the same "no task" from
/// tgtd and the initiator, but classified as the race, with the gap.
#[test]
fn d_abort_task_racing_a_completion_is_the_race() {
    d_race("lean");
}

/// D with the tmf set: the release it raced is not seen, so the TMF is one
/// whose tag was not in tgtd, which is true at the request.
#[test]
fn d_tmf_abort_task_racing_a_completion_found_no_task() {
    d_race("tmf");
}

fn d_race(set: &str) {
    let mut s = Scenario::start(&format!("d-{set}"), set);
    let mut session = s.login("d");
    let read = session
        .submit(Command::read10(1, FAST_LBA, 8, BLOCK))
        .expect("submit");
    let done = session.wait_scsi(read, WAIT).expect("READ completes");
    assert_eq!(done.status, scsi_status::GOOD);
    let response = session
        .task_management(Tmf::abort_task(1, read))
        .expect("TMF response");
    assert_eq!(response, tmf_response::TASK_DOES_NOT_EXIST);
    session.logout().expect("logout");

    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record");
    };
    assert_eq!(tmf.tag, tag(read));
    if set == "tmf" {
        assert_eq!(tmf.outcome, TmfOutcome::NoTaskNeverExisted);
        assert!(tmf.covered.is_empty() && tmf.race_gap_ns.is_none());
        let [orphan] = orphans(&trace)[..] else {
            panic!("one orphan");
        };
        assert!(
            orphan.detail.contains("was not in tgtd"),
            "{}",
            orphan.detail
        );
        return;
    }
    assert_eq!(tmf.outcome, TmfOutcome::NoTaskRace);
    let released = command(&trace, read).map(|c| c.released_ns);
    assert_eq!(released, None, "a good command is not kept as a record");
    let gap = tmf.race_gap_ns.expect("the gap is given");
    assert!(gap < 1_000_000_000, "gap {gap} ns");
    let [orphan] = orphans(&trace)[..] else {
        panic!("one orphan");
    };
    assert!(
        orphan.detail.contains("a race with its completion"),
        "{}",
        orphan.detail
    );
}

/// E. ABORT TASK SET over several commands in the backing store: tgtd waits
/// for every one (aborting queued commands at once crashes tgtd 1.0.85: see
/// A), and sends one response after the last is released.
#[test]
fn e_abort_task_set_covers_every_command_and_answers_once() {
    e_task_set("lean");
}

#[test]
fn e_tmf_abort_task_set_covers_every_command_and_answers_once() {
    e_task_set("tmf");
}

fn e_task_set(set: &str) {
    let mut s = Scenario::start(&format!("e-{set}"), set);
    let mut session = s.login("e");
    s.gate.hold().expect("gate closes");
    let reads: Vec<Itt> = (0..3)
        .map(|_| {
            session
                .submit(Command::read10(1, SLOW_LBA, SLOW_BLOCKS, BLOCK))
                .expect("submit")
        })
        .collect();
    s.gate.wait_held(3, WAIT).expect("all three READs held");
    let set = session
        .submit_tmf(Tmf::abort_task_set(1))
        .expect("ABORT TASK SET");
    s.wait_one_tmf_queued();
    assert!(session.poll(set).expect("poll").is_none(), "answered early");
    s.gate.release().expect("gate opens");
    let answer = session.wait_tmf(set, WAIT).expect("TMF response");
    assert_eq!(answer.response, tmf_response::FUNCTION_COMPLETE);
    for &r in &reads {
        session.wait_scsi(r, WAIT).expect("READ answered");
    }
    session.logout().expect("logout");

    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record");
    };
    assert_eq!(tmf.function, "ABORT_TASK_SET");
    assert_eq!(tmf.outcome, TmfOutcome::Deferred);
    for &r in &reads {
        assert_eq!(fate_of(tmf, r), Some(Fate::Blocked), "{r}: {tmf:?}");
    }
    assert_eq!(tmf.covered.len(), reads.len(), "{tmf:?}");
    let last_release = tmf.covered.iter().filter_map(|c| c.at_ns).max();
    assert!(
        last_release <= tmf.responded_ns,
        "one response, after the last release"
    );
    let responses = session
        .exchanges()
        .iter()
        .filter(|x| {
            matches!(
                x,
                Exchange::Received {
                    kind: ReceivedKind::TmfResponse { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(responses, 1);
}

/// F. LUN RESET with two initiators: the other initiator's command is in
/// the reset's reach, and flagged as cross-initiator impact.
#[test]
fn f_lun_reset_reaches_the_other_initiator() {
    f_lun_reset("lean");
}

#[test]
fn f_tmf_lun_reset_reaches_the_other_initiator() {
    f_lun_reset("tmf");
}

fn f_lun_reset(set: &str) {
    let mut s = Scenario::start(&format!("f-{set}"), set);
    let mut resetter = s.login("f-resetter");
    let mut bystander = s.login("f-bystander");
    let own = s.submit_held_read(&mut resetter, 0);
    let other = bystander
        .submit(Command::read10(1, SLOW_LBA, SLOW_BLOCKS, BLOCK))
        .expect("submit");
    s.gate.wait_held(2, WAIT).expect("both READs held");
    let reset = resetter.submit_tmf(Tmf::lun_reset(1)).expect("LUN RESET");
    s.wait_one_tmf_queued();
    s.gate.release().expect("gate opens");
    let answer = resetter.wait_tmf(reset, WAIT).expect("TMF response");
    assert_eq!(answer.response, tmf_response::FUNCTION_COMPLETE);
    resetter.wait_scsi(own, WAIT).expect("own READ answered");
    bystander
        .wait_scsi(other, WAIT)
        .expect("other READ answered");
    resetter.logout().expect("logout");
    bystander.logout().expect("logout");

    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record");
    };
    assert_eq!(tmf.function, "LOGICAL_UNIT_RESET");
    assert_eq!(tmf.outcome, TmfOutcome::Deferred);
    // Both sessions number their tasks alike: the nexus tells them apart.
    let entry = |who: &str, itt: Itt| {
        tmf.covered
            .iter()
            .find(|c| {
                c.tag == tag(itt)
                    && c.initiator.as_deref() == Some(&format!("iqn.2026-11.io.tgt-trace:{who}"))
            })
            .unwrap_or_else(|| panic!("{who} {itt} covered: {tmf:?}"))
    };
    assert_eq!(
        tmf.initiator.as_deref(),
        Some("iqn.2026-11.io.tgt-trace:f-resetter")
    );
    assert!(!entry("f-resetter", own).other_initiator);
    assert!(
        entry("f-bystander", other).other_initiator,
        "cross-initiator impact"
    );
    assert_eq!(entry("f-resetter", own).fate, Fate::Blocked);
    assert_eq!(entry("f-bystander", other).fate, Fate::Blocked);
    assert_eq!(tmf.covered.len(), 2, "{tmf:?}");
}

/// G. The initiator drops its connection while its ABORT TASK waits for a
/// large READ in the backing store. tgtd does not read the connection while
/// the READ is outstanding, so it learns of the disconnect only when, after
/// the release, it writes the READ's data and the write fails: it closes the
/// connection and frees its tasks, which releases the READ, which answers
/// the TMF (-EEXIST) on a closed connection. `iscsi_tm_done` then frees the
/// response unsent. tgt-trace's response probe reads the connection state,
/// so the TMF is unanswered (response dropped, cause "connection closed")
/// and an orphan; the initiator's record ends with its disconnect.
#[test]
fn g_a_connection_dropped_with_a_tmf_outstanding() {
    g_dropped("lean");
}

#[test]
fn g_tmf_a_connection_dropped_with_a_tmf_outstanding() {
    g_dropped("tmf");
}

fn g_dropped(set: &str) {
    let mut s = Scenario::start(&format!("g-{set}"), set);
    let mut session = s.login("g");
    // Many Data-In PDUs: the first write draws the closed socket's reset,
    // a later one fails.
    let slow = s.submit_held_read_of(&mut session, 0, 512);
    session
        .submit_tmf(Tmf::abort_task(1, slow))
        .expect("ABORT TASK");
    s.wait_one_tmf_queued();
    session.disconnect().expect("connected");
    s.gate.release().expect("gate opens");
    s.recording().wait_for_events("the nexus gone", |e| {
        e.iter().any(|e| matches!(e, Event::NexusDestroy { .. }))
    });
    let trace = s.finish(1);
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF record");
    };
    let exchanges = session.exchanges();
    assert!(
        matches!(exchanges.last(), Some(Exchange::Disconnected { .. })),
        "the initiator's record ends with its disconnect"
    );
    assert!(!exchanges.iter().any(|x| matches!(
        x,
        Exchange::Received {
            kind: ReceivedKind::TmfResponse { .. },
            ..
        }
    )));
    assert_eq!(tmf.outcome, TmfOutcome::Unanswered, "{tmf:?}");
    assert!(tmf.response_dropped, "{tmf:?}");
    assert_eq!(tmf.response, Some(-17), "tgtd's answer: no task");
    assert_eq!(tmf.latency_ns, None);
    let cause = tmf.cause.as_deref().unwrap_or_default();
    assert!(cause.contains("connection closed"), "{cause}");
    assert_eq!(fate_of(tmf, slow), Some(Fate::Blocked));
    let [orphan] = orphans(&trace)[..] else {
        panic!("one orphan: {:?}", orphans(&trace));
    };
    assert_eq!(orphan.kind, OrphanKind::TmfUnanswered);
    assert_eq!(orphan.tmf_seq, Some(tmf.seq));
    assert!(orphan.detail.contains("connection closed"), "{orphan:?}");
    let destroyed = trace
        .events
        .iter()
        .find_map(|e| match e {
            Event::NexusDestroy { ts_ns, .. } => Some(*ts_ns),
            _ => None,
        })
        .expect("nexus destroyed");
    assert!(
        tmf.responded_ns.is_some_and(|at| at <= destroyed),
        "tgtd answered, then tore the session down"
    );
}

/// I. tgtd keeps one waiting TMF per command (`cmd->mreq`): a deferred
/// ABORT TASK's busy READ is covered again by another initiator's LUN
/// RESET, which takes it over. At the release the LUN RESET is answered and
/// the ABORT TASK never will be. tgt-trace concludes that at the release
/// (stranded, naming the LUN RESET), instead of at a timeout; the initiator
/// that sent the ABORT TASK never gets a response. Found by the demo.
#[test]
fn i_a_tmf_whose_blocker_another_tmf_took_over_is_stranded() {
    i_stranded("lean");
}

/// I with the tmf set: the LUN RESET's walk finds the READ the ABORT TASK
/// waits for still busy, so the ABORT TASK is stranded from that moment,
/// and concluded then, before the READ's release answers the LUN RESET.
#[test]
fn i_tmf_a_tmf_whose_blocker_another_tmf_took_over_is_stranded() {
    i_stranded("tmf");
}

fn i_stranded(set: &str) {
    let mut s = Scenario::start(&format!("i-{set}"), set);
    let mut aborter = s.login("i-aborter");
    let mut resetter = s.login("i-resetter");
    let slow = s.submit_held_read(&mut aborter, 0);
    let abort = aborter
        .submit_tmf(Tmf::abort_task(1, slow))
        .expect("ABORT TASK");
    s.wait_one_tmf_queued();
    let reset = resetter.submit_tmf(Tmf::lun_reset(1)).expect("LUN RESET");
    s.recording()
        .wait_for_events("both TMFs queued behind the held READ", |e| {
            tmf_returned(e)
                == [
                    tgt_trace_common::mgmt_ret::QUEUED,
                    tgt_trace_common::mgmt_ret::QUEUED,
                ]
        });
    s.gate.release().expect("gate opens");
    let answer = resetter.wait_tmf(reset, WAIT).expect("LUN RESET answered");
    assert_eq!(answer.response, tmf_response::FUNCTION_COMPLETE);
    aborter.wait_scsi(slow, WAIT).expect("the READ answered");

    let trace = s.finish(2);
    let records = tmfs(&trace);
    let abort_record = records
        .iter()
        .find(|t| t.function == "ABORT_TASK")
        .expect("the ABORT TASK record");
    let reset_record = records
        .iter()
        .find(|t| t.function == "LOGICAL_UNIT_RESET")
        .expect("the LUN RESET record");
    assert_eq!(reset_record.outcome, TmfOutcome::Deferred);
    assert_eq!(fate_of(reset_record, slow), Some(Fate::Blocked));
    assert_eq!(abort_record.outcome, TmfOutcome::Unanswered);
    let cause = abort_record.cause.as_deref().unwrap_or_default();
    assert!(
        cause.contains("stranded")
            && cause.contains(&format!("TMF {} (LOGICAL_UNIT_RESET)", reset_record.seq)),
        "{cause}"
    );
    let orphan = orphans(&trace)
        .into_iter()
        .find(|o| o.tmf_seq == Some(abort_record.seq))
        .expect("the stranded ABORT TASK is an orphan");
    assert_eq!(orphan.kind, OrphanKind::TmfUnanswered);
    if set == "tmf" {
        // Concluded at the LUN RESET's request, before the release.
        assert!(
            orphan.at_ns >= reset_record.requested_ns
                && reset_record
                    .responded_ns
                    .is_some_and(|answered| orphan.at_ns < answered),
            "{orphan:?} {reset_record:?}"
        );
    } else {
        // Concluded at the release, not when the recording stopped.
        let released = command(&trace, slow)
            .and_then(|c| c.released_ns)
            .expect("the READ's release");
        assert_eq!(orphan.at_ns, released);
    }
    // The initiator's own record: no response to its ABORT TASK. tgtd would
    // have queued one at the READ's release, which came before it read the
    // logout, so it would be in the record before the logout response.
    aborter.logout().expect("logout");
    assert!(
        !aborter.exchanges().iter().any(|x| matches!(
            x,
            Exchange::Received {
                kind: ReceivedKind::TmfResponse { .. },
                ..
            }
        )),
        "tgtd answered the ABORT TASK {abort:?} after all"
    );
}

/// H. A sustained mixed load: thousands of commands over three sessions,
/// dozens of ABORT TASKs (deferred behind held I/O, of tags that never
/// existed, and racing completions). tgt-trace's counts equal the
/// initiators' own.
#[test]
fn h_sustained_load_counts_match_the_initiators() {
    h_sustained("lean");
}

/// H with the tmf set: no command is seen (none is counted), every TMF is,
/// with the one command each deferred ABORT TASK found; a race reads as a
/// tag that was not in tgtd.
#[test]
fn h_tmf_sustained_load_tmf_counts_match_the_initiators() {
    h_sustained("tmf");
}

fn h_sustained(set: &str) {
    const ROUNDS: usize = 12;
    let mut s = Scenario::start(&format!("h-{set}"), set);
    let mut sessions: Vec<Session> = (0..3).map(|i| s.login(&format!("h{i}"))).collect();
    let mut held = 0;
    for round in 0..ROUNDS {
        // A burst of ordinary I/O on every session.
        for session in &mut sessions {
            let itts: Vec<Itt> = (0..40u32)
                .map(|i| {
                    let cmd = if i % 2 == 0 {
                        Command::read10(1, FAST_LBA + i * 8, 8, BLOCK)
                    } else {
                        Command::write10(1, FAST_LBA + i * 8, 1, vec![round as u8; 512])
                    };
                    session.submit(cmd).expect("submit")
                })
                .collect();
            for itt in itts {
                session.wait_scsi(itt, WAIT).expect("answered");
            }
        }
        // A deferred ABORT TASK behind held I/O.
        let session = &mut sessions[round % 3];
        s.gate.hold().expect("gate closes");
        let slow = session
            .submit(Command::read10(1, SLOW_LBA, SLOW_BLOCKS, BLOCK))
            .expect("submit");
        held += 1;
        s.gate.wait_held(held, WAIT).expect("held");
        let abort = session.submit_tmf(Tmf::abort_task(1, slow)).expect("TMF");
        let want = 3 * round + 1;
        s.recording()
            .wait_for_events("the TMF queued", |e| tmf_returned(e).len() == want);
        s.gate.release().expect("gate opens");
        session.wait_tmf(abort, WAIT).expect("TMF answered");
        session.wait_scsi(slow, WAIT).expect("READ answered");
        // One for a tag that never existed, one racing a completion.
        session
            .task_management(Tmf::abort_task(1, Itt(0x00ab_0000 + round as u32)))
            .expect("TMF answered");
        let quick = session.execute(Command::test_unit_ready(1)).expect("TUR");
        session
            .task_management(Tmf::abort_task(1, quick.itt))
            .expect("TMF answered");
    }
    let mut sent_commands = 0;
    let mut sent_tmfs = 0;
    let mut answered_no_task = 0;
    for session in &mut sessions {
        session.logout().expect("logout");
        for x in session.exchanges() {
            match x {
                Exchange::Sent {
                    kind: SentKind::Command { .. },
                    ..
                } => sent_commands += 1,
                Exchange::Sent {
                    kind:
                        SentKind::Tmf {
                            function: TmfFunction::AbortTask,
                            ..
                        },
                    ..
                } => sent_tmfs += 1,
                Exchange::Received {
                    kind: ReceivedKind::TmfResponse { response },
                    ..
                } if *response == tmf_response::TASK_DOES_NOT_EXIST => answered_no_task += 1,
                _ => {}
            }
        }
    }
    let trace = s.finish(3 * ROUNDS);
    let Some(Line::MatchedSummary(summary)) = trace.matched.last() else {
        panic!("a final matched_summary");
    };
    let counts = &summary.summary.counts;
    assert!(sent_commands > 1000, "{sent_commands} commands");
    assert_eq!(counts.tmfs, sent_tmfs, "TMFs");
    assert_eq!(counts.tmfs, 3 * ROUNDS as u64);
    let by_outcome = |name: &str| counts.tmfs_by_outcome.get(name).copied().unwrap_or(0);
    assert_eq!(by_outcome("no_task_deferred_then_finished"), ROUNDS as u64);
    if set == "tmf" {
        assert_eq!(counts.commands_in, 0, "the tmf set sees no command");
        assert_eq!(by_outcome("no_task_never_existed"), 2 * ROUNDS as u64);
        for t in tmfs(&trace) {
            let found = t.covered.iter().filter(|c| c.fate == Fate::Blocked).count();
            let expected = usize::from(t.outcome == TmfOutcome::NoTaskDeferredThenFinished);
            assert_eq!((found, t.covered.len()), (expected, expected), "{t:?}");
        }
    } else {
        assert_eq!(counts.commands_in, sent_commands, "commands");
        assert_eq!(
            counts.commands_good + counts.commands_error,
            sent_commands,
            "every command completed"
        );
        assert_eq!(by_outcome("no_task_never_existed"), ROUNDS as u64);
        assert_eq!(by_outcome("no_task_race"), ROUNDS as u64);
    }
    assert_eq!(
        answered_no_task,
        3 * ROUNDS as u64,
        "tgtd answered each 'no task'"
    );
    assert_eq!(
        counts.orphans_by_kind.get("tmf_found_no_task"),
        Some(&(2 * ROUNDS as u64))
    );
    assert_eq!(
        summary.summary.histograms.tmf_by_function["ABORT_TASK"].count,
        3 * ROUNDS as u64
    );
}

/// J. Issue 13: a session opened before tracing starts has no
/// `nexus_create` event; tgt-trace asks tgtd (through tgtadm) at attach time,
/// so the TMFs of that session still name their initiator.
#[test]
fn j_a_session_opened_before_tracing_is_named() {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_lun(1, 16 << 20).expect("LUN 1");
    let who = "iqn.2026-11.io.tgt-trace:early";
    let mut session = Session::login(tgtd.portal, &LoginOptions::new(who, &tgtd.target_iqn))
        .expect("logs in before tracing");
    let out = tgtd.dir.join("j.ndjson");
    let mut recording = Recording::start(&tgtd, &out, &["--probes", "lean", "--matched"]);
    session
        .task_management(Tmf::abort_task(1, Itt(0x4242)))
        .expect("ABORT TASK of a tag never used");
    recording.wait_for("its TMF record", |text| {
        text.lines().any(|l| l.starts_with(r#"{"type":"tmf""#))
    });
    let trace = recording.stop();
    let [tmf] = tmfs(&trace)[..] else {
        panic!("one TMF: {:?}", tmfs(&trace));
    };
    assert_eq!(tmf.initiator.as_deref(), Some(who), "{tmf:?}");
    assert_eq!(tmf.outcome, TmfOutcome::NoTaskNeverExisted);
    assert_eq!(tmf.delivery, support::written(&trace.header));
}
