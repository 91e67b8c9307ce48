//! The wire oracle (`tgt_trace_e2e::wire`) against what the project's
//! initiator recorded: a capture of a scratch tgtd's port, dissected by
//! tshark, must tell the same story as the initiator's own log of PDUs:
//! sessions, SCSI commands, every task management function and its
//! response. The byte-order claims of the module are checked against tgtd
//! itself (its log, tgtadm). Needs root, `/usr/sbin/tgtd` and tshark.

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use tgt_trace_e2e::{
    iscsi::{
        Command, Exchange, Itt, LoginOptions, ReceivedKind, SentKind, Session, Tmf, TmfFunction,
        scsi_status, tmf_response,
    },
    slowio::SlowIo,
    tgtd::{Tgtd, TgtdOptions},
    wire::{Capture, EndKind, Side, Wire, WireTmf, tsih_to_itn_id, wire_itt_to_tgtd_tag},
};

const LUN: u16 = 1;
const BLOCK: u32 = 512;
const WAIT: Duration = Duration::from_secs(10);
/// Blocks the slow-I/O gate holds (the unanswered-TMF case).
const SLOW_LBA: u32 = 2048;
const SLOW_BLOCKS: u16 = 8;

fn login(tgtd: &Tgtd, name: &str) -> Session {
    let options = LoginOptions::new(format!("iqn.2026-11.io.tgt-trace:{name}"), &tgtd.target_iqn);
    let mut session = Session::login(tgtd.portal, &options)
        .unwrap_or_else(|e| panic!("login as {name}: {e}\n{}", tgtd.log()));
    // A new I_T nexus may start with a unit attention.
    let ready = (0..4).any(|_| {
        session
            .test_unit_ready(LUN)
            .is_ok_and(|r| r.status == scsi_status::GOOD)
    });
    assert!(ready, "LUN {LUN} never became ready for {name}");
    session
}

/// What the initiator recorded of one TMF.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SentTmf {
    itt: u32,
    function: u8,
    referenced_itt: u32,
    lun: u16,
    response: Option<u8>,
}

fn sent_tmfs(exchanges: &[Exchange]) -> Vec<SentTmf> {
    let responses: HashMap<Itt, u8> = exchanges
        .iter()
        .filter_map(|e| match e {
            Exchange::Received {
                itt,
                kind: ReceivedKind::TmfResponse { response },
                ..
            } => Some((*itt, *response)),
            _ => None,
        })
        .collect();
    exchanges
        .iter()
        .filter_map(|e| match e {
            Exchange::Sent {
                itt,
                kind:
                    SentKind::Tmf {
                        function,
                        lun,
                        referenced_itt,
                        ..
                    },
                ..
            } => Some(SentTmf {
                itt: itt.0,
                function: function.code(),
                referenced_itt: referenced_itt.0,
                lun: *lun,
                response: responses.get(itt).copied(),
            }),
            _ => None,
        })
        .collect()
}

fn wire_tmf(tmf: &WireTmf) -> SentTmf {
    SentTmf {
        itt: tmf.itt,
        function: tmf.function,
        referenced_itt: tmf.referenced_itt,
        lun: tmf.lun.unwrap_or_else(|| {
            panic!("the wire gives no LUN for {tmf:?} (shared a frame with other PDUs)")
        }),
        response: tmf.response,
    }
}

fn commands_sent(exchanges: &[Exchange]) -> usize {
    exchanges
        .iter()
        .filter(|e| {
            matches!(
                e,
                Exchange::Sent {
                    kind: SentKind::Command { .. },
                    ..
                }
            )
        })
        .count()
}

/// tgtadm's I_T nexus list: initiator name -> itn_id.
fn nexus_ids(tgtd: &Tgtd) -> HashMap<String, u64> {
    let shown = tgtd
        .tgtadm(&["--op", "show", "--mode", "target"])
        .expect("tgtadm show");
    let mut ids = HashMap::new();
    let mut current = None;
    for line in shown.lines().map(str::trim) {
        if let Some(id) = line.strip_prefix("I_T nexus:") {
            current = id.trim().parse::<u64>().ok();
        } else if let Some(rest) = line.strip_prefix("Initiator:") {
            let name = rest.split_whitespace().next().unwrap_or_default();
            if let Some(id) = current.take() {
                ids.insert(name.to_owned(), id);
            }
        }
    }
    ids
}

fn log_has(tgtd: &Tgtd, what: &str) -> bool {
    tgtd.log().contains(what)
}

/// Checks the facts of one session against its initiator's record; returns
/// the TMFs for a closer look.
fn same_story(wire: &Wire, session: &Session, name: &str) -> Vec<WireTmf> {
    let tsih = session.negotiated().tsih;
    let stream = wire
        .stream_by_tsih(tsih)
        .unwrap_or_else(|| panic!("no connection on the wire with TSIH {tsih:#06x}: {wire:#?}"));
    assert_eq!(
        stream.initiator_name.as_deref(),
        Some(format!("iqn.2026-11.io.tgt-trace:{name}").as_str())
    );
    assert_eq!(
        stream.scsi_commands,
        commands_sent(session.exchanges()),
        "SCSI commands of {name}"
    );
    let on_wire: Vec<WireTmf> = wire.tmfs_of(stream.stream).cloned().collect();
    let recorded = sent_tmfs(session.exchanges());
    assert_eq!(
        on_wire.iter().map(wire_tmf).collect::<Vec<_>>(),
        recorded,
        "TMFs of {name}: the wire, then the initiator"
    );
    for tmf in &on_wire {
        let round_trip = tmf.round_trip.expect("answered");
        assert!(round_trip > Duration::ZERO && round_trip < WAIT, "{tmf:?}");
        assert_eq!(tmf.tsih, Some(tsih));
    }
    on_wire
}

#[test]
fn wire_facts_equal_what_the_initiator_recorded() {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_lun(u32::from(LUN), 16 << 20).expect("LUN 1");
    let capture = Capture::start(tgtd.portal.port()).expect("capture starts");
    let mut a = login(&tgtd, "wire-a");
    let mut b = login(&tgtd, "wire-b");

    // Some I/O on both.
    a.write10(LUN, 0, 16, vec![0xa5; 16 * BLOCK as usize])
        .expect("WRITE on a");
    b.write10(LUN, 16, 16, vec![0x5a; 16 * BLOCK as usize])
        .expect("WRITE on b");
    assert_eq!(
        a.read10(LUN, 0, 32, BLOCK).expect("READ on a").len(),
        32 * BLOCK as usize
    );
    b.read10(LUN, 0, 8, BLOCK).expect("READ on b");

    // ABORT TASK of a tag that exists: the last of eight reads in flight.
    let reads: Vec<Itt> = (0..8)
        .map(|n| {
            a.submit(Command::read10(LUN, n * 64, 64, BLOCK))
                .expect("submit READ")
        })
        .collect();
    let abort = a
        .submit_tmf(Tmf::abort_task(LUN, reads[7]))
        .expect("ABORT TASK");
    let aborted = a.wait_tmf(abort, WAIT).expect("ABORT TASK answered");
    assert!(
        [
            tmf_response::FUNCTION_COMPLETE,
            tmf_response::TASK_DOES_NOT_EXIST
        ]
        .contains(&aborted.response),
        "{aborted:?}"
    );
    for itt in reads {
        a.wait_scsi(itt, WAIT).expect("every READ answered");
    }

    // Every other function once, split over both sessions, with what
    // tgtd 1.0.85 answers (usr/iscsi/iscsid.c, iscsi_tm_execute).
    let unknown_tag = Itt(0x7777_0001);
    let plan: [(char, Tmf, u8); 9] = [
        (
            'a',
            Tmf::abort_task(LUN, unknown_tag),
            tmf_response::TASK_DOES_NOT_EXIST,
        ),
        (
            'a',
            Tmf::abort_task_set(LUN),
            tmf_response::FUNCTION_COMPLETE,
        ),
        (
            'a',
            Tmf::new(TmfFunction::ClearAca, LUN),
            tmf_response::NOT_SUPPORTED,
        ),
        ('b', Tmf::clear_task_set(LUN), tmf_response::NOT_SUPPORTED),
        ('b', Tmf::lun_reset(LUN), tmf_response::FUNCTION_COMPLETE),
        (
            'b',
            Tmf::new(TmfFunction::TargetWarmReset, LUN),
            tmf_response::NOT_SUPPORTED,
        ),
        (
            'b',
            Tmf::new(TmfFunction::TargetColdReset, LUN),
            tmf_response::NOT_SUPPORTED,
        ),
        (
            'a',
            Tmf::new(TmfFunction::TaskReassign, LUN),
            tmf_response::NOT_SUPPORTED,
        ),
        (
            'a',
            Tmf::new(TmfFunction::Unassigned, LUN),
            tmf_response::REJECTED,
        ),
    ];
    let mut answers = Vec::new();
    for (which, tmf, want) in plan {
        let session = if which == 'a' { &mut a } else { &mut b };
        let function = tmf.function;
        let got = session
            .task_management(tmf)
            .unwrap_or_else(|e| panic!("{function:?}: {e}\n{}", tgtd.log()));
        answers.push((function, got, want));
    }
    // The sessions go on after the target resets (which tgtd does not
    // perform); b's next command may carry the LUN RESET's unit attention.
    b.test_unit_ready(LUN).expect("b still works");
    a.test_unit_ready(LUN).expect("a still works");

    let nexus = nexus_ids(&tgtd);
    a.logout().expect("logout a");
    b.logout().expect("logout b");
    let wire = capture.stop().expect("capture stops and is dissected");
    wire.complete()
        .unwrap_or_else(|e| panic!("no conclusion from this capture: {e}"));
    eprintln!("{wire:#?}");
    assert!(wire.unmatched_responses.is_empty(), "{wire:#?}");
    let a_tmfs = same_story(&wire, &a, "wire-a");
    let b_tmfs = same_story(&wire, &b, "wire-b");
    assert_eq!(a_tmfs.len() + b_tmfs.len(), 10);
    assert_eq!(wire.streams.len(), 2, "{wire:#?}");
    for (function, got, want) in &answers {
        assert_eq!(got, want, "{function:?} answered {got}, expected {want}");
    }
    let mut functions: Vec<u8> = a_tmfs.iter().chain(&b_tmfs).map(|t| t.function).collect();
    functions.sort_unstable();
    functions.dedup();
    assert_eq!(functions, [1, 2, 3, 4, 5, 6, 7, 8, 14]);
    // tshark 4.0 dissects functions 1-8 only; the oracle read 14 itself.
    for tmf in a_tmfs.iter().chain(&b_tmfs) {
        assert_eq!(tmf.undissected, tmf.function == 14, "{tmf:?}");
    }

    // Both sessions ended with a logout, then each side's FIN.
    for stream in &wire.streams {
        let sides: Vec<(Side, EndKind)> = stream.ends.iter().map(|e| (e.side, e.kind)).collect();
        assert!(
            sides.contains(&(Side::Initiator, EndKind::Fin))
                && sides.contains(&(Side::Target, EndKind::Fin)),
            "{stream:?}"
        );
    }

    // TSIH on the wire = tgtd's itn_id with its bytes swapped (tgtadm).
    for (session, name) in [(&a, "wire-a"), (&b, "wire-b")] {
        let tsih = session.negotiated().tsih;
        let id = nexus[&format!("iqn.2026-11.io.tgt-trace:{name}")];
        assert_eq!(
            tsih_to_itn_id(tsih),
            id,
            "{name}: wire TSIH {tsih:#06x}, tgtadm I_T nexus {id}"
        );
        assert_ne!(u64::from(tsih), id, "the bytes really are swapped");
    }

    assert!(
        log_has(&tgtd, "unknown task management function 14"),
        "tgtd names the function it rejects:\n{}",
        tgtd.log()
    );

    // Tags: tgtd logs the tag each ABORT TASK looks for (abort_task_set's
    // "found TAG 0"), in its own byte order.
    let log = tgtd.log();
    for tmf in a_tmfs.iter().filter(|t| t.function == 1) {
        let tag = wire_itt_to_tgtd_tag(tmf.referenced_itt);
        assert!(
            log.contains(&format!("found {tag:x} 0")),
            "tgtd's tag for wire RefTT {:#010x} should be {tag:#x}:\n{log}",
            tmf.referenced_itt
        );
    }
}

#[test]
fn wire_shows_an_unanswered_tmf_and_who_hung_up() {
    let gate = SlowIo::new("wire-unanswered").expect("gate directory");
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
    tgtd.add_lun(u32::from(LUN), 16 << 20).expect("LUN 1");
    let capture = Capture::start(tgtd.portal.port()).expect("capture starts");
    let name = "wire-hangup";
    let mut session = login(&tgtd, name);

    // A READ held in the backing store, and an ABORT TASK for it: tgtd
    // answers only when the READ finishes, and the initiator does not wait.
    gate.hold().expect("gate closes");
    let read = session
        .submit(Command::read10(LUN, SLOW_LBA, SLOW_BLOCKS, BLOCK))
        .expect("submit READ");
    gate.wait_held(1, WAIT)
        .unwrap_or_else(|e| panic!("{e}\n{}", tgtd.log()));
    let abort = session
        .submit_tmf(Tmf::abort_task(LUN, read))
        .expect("ABORT TASK");
    let disconnected_at = SystemTime::now();
    session.disconnect().expect("was connected");

    // Let the READ finish, and wait for tgtd to drop the session.
    gate.release().expect("gate opens");
    let deadline = Instant::now() + WAIT;
    while nexus_ids(&tgtd).contains_key(&format!("iqn.2026-11.io.tgt-trace:{name}")) {
        assert!(
            Instant::now() < deadline,
            "tgtd kept the session after the initiator hung up:\n{}",
            tgtd.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let wire = capture.stop().expect("capture stops and is dissected");
    wire.complete()
        .unwrap_or_else(|e| panic!("no conclusion from this capture: {e}"));
    eprintln!("{wire:#?}");

    let stream = wire
        .stream_by_tsih(session.negotiated().tsih)
        .expect("the session's connection");
    let tmfs: Vec<&WireTmf> = wire.tmfs_of(stream.stream).collect();
    assert_eq!(tmfs.len(), 1, "{wire:#?}");
    let tmf = tmfs[0];
    assert_eq!((tmf.itt, tmf.function), (abort.0, 1));
    assert_eq!(tmf.referenced_itt, read.0);
    assert_eq!(tmf.response, None, "tgtd never answered: {tmf:?}");
    assert!(tmf.round_trip.is_none() && tmf.responded_at.is_none());
    let ended = tmf.ended.expect("the connection ended after the TMF");
    assert_eq!((ended.side, ended.kind), (Side::Initiator, EndKind::Fin));
    assert!(ended.at >= tmf.requested_at);
    // The kernel stamps the FIN around the time the initiator hung up.
    let skew = ended
        .at
        .duration_since(disconnected_at)
        .unwrap_or_else(|e| e.duration());
    assert!(skew < WAIT, "{ended:?} vs {disconnected_at:?}");
    assert!(
        stream
            .ends
            .iter()
            .any(|e| e.side == Side::Target && e.at >= ended.at),
        "tgtd closed its side too: {stream:?}"
    );
    assert!(wire.unmatched_responses.is_empty(), "{wire:#?}");
}
