//! The test initiator against a real tgtd: login, I/O across many PDUs, task
//! management, several sessions, logout and a dropped connection. Needs root
//! and `/usr/sbin/tgtd`.

use std::time::Duration;

use tgt_trace_e2e::{
    iscsi::{
        Command, Error, Exchange, Itt, LoginOptions, ReceivedKind, Response, SentKind, Session,
        TaskAttr, Tmf, TmfFunction, scsi_status, tmf_response,
    },
    tgtd::{Tgtd, TgtdOptions},
};

const LUN: u16 = 1;
const LUN_BYTES: u64 = 16 << 20;
const BLOCK: u32 = 512;
const WAIT: Duration = Duration::from_secs(10);

fn target() -> Tgtd {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_lun(u32::from(LUN), LUN_BYTES).expect("LUN 1");
    tgtd
}

fn options(tgtd: &Tgtd, name: &str) -> LoginOptions {
    LoginOptions::new(format!("iqn.2026-11.io.tgt-trace:{name}"), &tgtd.target_iqn)
}

fn login(tgtd: &Tgtd, name: &str) -> Session {
    login_with(tgtd, options(tgtd, name))
}

fn login_with(tgtd: &Tgtd, options: LoginOptions) -> Session {
    let mut session = Session::login(tgtd.portal, &options)
        .unwrap_or_else(|e| panic!("login as {}: {e}\n{}", options.initiator_name, tgtd.log()));
    // A new I_T nexus may start with a unit attention; clear it so that the
    // tests below see their own commands' status.
    for _ in 0..3 {
        let ready = session.test_unit_ready(LUN).expect("TEST UNIT READY");
        if ready.status == scsi_status::GOOD {
            return session;
        }
    }
    panic!("LUN {LUN} never became ready");
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

fn count(exchanges: &[Exchange], itt: Itt, what: fn(&Exchange) -> bool) -> usize {
    exchanges
        .iter()
        .filter(|e| match e {
            Exchange::Sent { itt: i, .. } | Exchange::Received { itt: i, .. } => *i == itt,
            Exchange::Disconnected { .. } => false,
        })
        .filter(|e| what(e))
        .count()
}

fn last_command_itt(session: &Session) -> Itt {
    session
        .exchanges()
        .iter()
        .rev()
        .find_map(|e| match e {
            Exchange::Sent {
                itt,
                kind: SentKind::Command { .. },
                ..
            } => Some(*itt),
            _ => None,
        })
        .expect("a command was sent")
}

#[test]
fn login_test_unit_ready_and_read_capacity() {
    let tgtd = target();
    let mut session = login(&tgtd, "capacity");
    let ready = session.test_unit_ready(LUN).expect("TEST UNIT READY");
    assert_eq!(ready.status, scsi_status::GOOD, "{ready:?}");
    let (last_lba, block_size) = session.read_capacity10(LUN).expect("READ CAPACITY");
    assert_eq!(block_size, BLOCK);
    assert_eq!(u64::from(last_lba) + 1, LUN_BYTES / u64::from(BLOCK));
    let negotiated = session.negotiated();
    assert_ne!(negotiated.tsih, 0, "tgtd gives every session a TSIH");
    assert_eq!(negotiated.target_max_recv_data_segment_length, 8192);
    assert!(negotiated.initial_r2t);
    assert!(!negotiated.immediate_data);
    session.logout().expect("logout");
}

#[test]
fn write_then_read_spans_many_pdus_and_r2ts() {
    let tgtd = target();
    let mut opts = options(&tgtd, "rw");
    opts.max_recv_data_segment_length = 4096;
    // Smaller bursts than the write, so tgtd needs several R2Ts.
    opts.max_burst_length = 16384;
    let mut session = login_with(&tgtd, opts);
    let blocks = 256u16; // 128 KiB
    let data = pattern(usize::from(blocks) * BLOCK as usize, 7);

    session
        .write10(LUN, 100, blocks, data.clone())
        .expect("WRITE(10)");
    let write = last_command_itt(&session);
    let exchanges = session.exchanges();
    let r2ts = count(exchanges, write, |e| {
        matches!(
            e,
            Exchange::Received {
                kind: ReceivedKind::R2t { .. },
                ..
            }
        )
    });
    let data_outs = count(exchanges, write, |e| {
        matches!(
            e,
            Exchange::Sent {
                kind: SentKind::DataOut { .. },
                ..
            }
        )
    });
    assert!(r2ts >= 8, "128 KiB in 16 KiB bursts: {r2ts} R2Ts");
    assert!(
        data_outs >= 16,
        "8 KiB Data-Out segments at most: {data_outs}"
    );

    let read = session.read10(LUN, 100, blocks, BLOCK).expect("READ(10)");
    assert!(read == data, "read back differs from what was written");
    let read_itt = last_command_itt(&session);
    let data_ins = count(session.exchanges(), read_itt, |e| {
        matches!(
            e,
            Exchange::Received {
                kind: ReceivedKind::DataIn { .. },
                ..
            }
        )
    });
    assert!(data_ins >= 32, "4 KiB Data-In segments: {data_ins}");
    // Status in the last Data-In, not in a separate SCSI Response.
    assert!(session.exchanges().iter().any(|e| matches!(
        e,
        Exchange::Received {
            itt,
            kind: ReceivedKind::DataIn { status: Some(0), .. },
            ..
        } if *itt == read_itt
    )));
    session.logout().expect("logout");
}

#[test]
fn unsolicited_and_immediate_write_data() {
    let tgtd = target();
    let mut opts = options(&tgtd, "unsolicited");
    opts.initial_r2t = false;
    opts.immediate_data = true;
    let mut session = login_with(&tgtd, opts);
    // InitialR2T is ORed: tgtd's target default (Yes) wins.
    assert!(session.negotiated().initial_r2t);
    assert!(session.negotiated().immediate_data);
    let blocks = 384u16; // 192 KiB: immediate data, then R2Ts
    let data = pattern(usize::from(blocks) * BLOCK as usize, 99);
    session
        .write10(LUN, 2000, blocks, data.clone())
        .expect("WRITE(10)");
    let read = session.read10(LUN, 2000, blocks, BLOCK).expect("READ(10)");
    assert!(read == data, "read back differs from what was written");
    session.logout().expect("logout");
}

#[test]
fn task_attributes_are_accepted() {
    let tgtd = target();
    let mut session = login(&tgtd, "attrs");
    let mut tags = Vec::new();
    for (n, attr) in [
        TaskAttr::Simple,
        TaskAttr::Ordered,
        TaskAttr::HeadOfQueue,
        TaskAttr::Untagged,
    ]
    .into_iter()
    .enumerate()
    {
        let itt = session
            .submit(Command::read10(LUN, n as u32 * 8, 8, BLOCK).with_attr(attr))
            .expect("submit");
        tags.push(itt);
    }
    // Waited for out of order: answers read meanwhile are kept.
    for itt in tags.into_iter().rev() {
        let response = session.wait_scsi(itt, WAIT).expect("response");
        assert_eq!(response.status, scsi_status::GOOD, "{response:?}");
        assert_eq!(response.data.len(), 8 * BLOCK as usize);
    }
}

#[test]
fn task_management_responses_of_tgtd() {
    let tgtd = target();
    let mut session = login(&tgtd, "tmf");

    let never_existed = session
        .task_management(Tmf::abort_task(LUN, Itt(0x7777_0001)))
        .expect("ABORT TASK of an unknown tag");
    assert_eq!(never_existed, tmf_response::TASK_DOES_NOT_EXIST);

    session.test_unit_ready(LUN).expect("TEST UNIT READY");
    let completed = last_command_itt(&session);
    let just_completed = session
        .task_management(Tmf::abort_task(LUN, completed))
        .expect("ABORT TASK of a completed command");
    assert_eq!(just_completed, tmf_response::TASK_DOES_NOT_EXIST);

    let set = session
        .task_management(Tmf::abort_task_set(LUN))
        .expect("ABORT TASK SET");
    assert_eq!(set, tmf_response::FUNCTION_COMPLETE);

    // tgtd answers CLEAR TASK SET in its iSCSI layer without trying it.
    let clear = session
        .task_management(Tmf::clear_task_set(LUN))
        .expect("CLEAR TASK SET");
    assert_eq!(clear, tmf_response::NOT_SUPPORTED);

    let reset = session
        .task_management(Tmf::lun_reset(LUN))
        .expect("LUN RESET");
    assert_eq!(reset, tmf_response::FUNCTION_COMPLETE);

    let tmfs: Vec<(TmfFunction, Itt)> = session
        .exchanges()
        .iter()
        .filter_map(|e| match e {
            Exchange::Sent {
                kind:
                    SentKind::Tmf {
                        function,
                        referenced_itt,
                        ..
                    },
                ..
            } => Some((*function, *referenced_itt)),
            _ => None,
        })
        .collect();
    assert_eq!(tmfs.len(), 5);
    assert_eq!(tmfs[0], (TmfFunction::AbortTask, Itt(0x7777_0001)));
    assert_eq!(tmfs[1], (TmfFunction::AbortTask, completed));
}

#[test]
fn tmf_overtakes_commands_in_flight() {
    abort_the_last_of_eight_reads(TaskAttr::Simple);
}

/// tgtd 1.0.85 segfaults here: ABORT TASK finds the ORDERED read still
/// blocked behind the others, answers it TASK ABORTED at once, and later
/// performs the freed command anyway. Kept to show the crash, not run.
#[test]
#[ignore = "crashes tgtd 1.0.85"]
fn abort_of_a_blocked_ordered_command() {
    abort_the_last_of_eight_reads(TaskAttr::Ordered);
}

fn abort_the_last_of_eight_reads(attr: TaskAttr) {
    let tgtd = target();
    let mut session = login(&tgtd, "inflight");
    let reads: Vec<Itt> = (0..8)
        .map(|n| {
            session
                .submit(Command::read10(LUN, n * 64, 64, BLOCK).with_attr(attr))
                .expect("submit")
        })
        .collect();
    let abort = session
        .submit_tmf(Tmf::abort_task(LUN, reads[7]))
        .expect("submit ABORT TASK");
    let answer = session
        .wait_tmf(abort, WAIT)
        .unwrap_or_else(|e| panic!("ABORT TASK response: {e}\n{}", tgtd.log()));
    assert!(
        [
            tmf_response::FUNCTION_COMPLETE,
            tmf_response::TASK_DOES_NOT_EXIST
        ]
        .contains(&answer.response),
        "{answer:?}"
    );
    // tgtd answers 1 (task does not exist) for a command it found but had
    // already started, as well as for one that finished first; 0 only when
    // it caught the command before its backing store. Either way every
    // command is answered, an aborted one with TASK ABORTED.
    for itt in reads {
        let response = session
            .wait_scsi(itt, WAIT)
            .unwrap_or_else(|e| panic!("read {itt}: {e}\n{}", tgtd.log()));
        assert!(
            [scsi_status::GOOD, scsi_status::TASK_ABORTED].contains(&response.status),
            "{response:?}"
        );
    }
    session.logout().expect("logout");
}

#[test]
fn two_sessions_at_once() {
    let tgtd = target();
    let mut first = login(&tgtd, "first");
    let mut second = login(&tgtd, "second");
    assert_ne!(first.negotiated().isid, second.negotiated().isid);
    assert_ne!(first.negotiated().tsih, second.negotiated().tsih);
    let shown = tgtd
        .tgtadm(&["--op", "show", "--mode", "target"])
        .expect("tgtadm show");
    assert!(shown.contains("iqn.2026-11.io.tgt-trace:first"), "{shown}");
    assert!(shown.contains("iqn.2026-11.io.tgt-trace:second"), "{shown}");

    let a = first
        .submit(Command::write10(LUN, 0, 1, vec![0xaa; 512]))
        .expect("submit on the first");
    let b = second
        .submit(Command::write10(LUN, 1, 1, vec![0xbb; 512]))
        .expect("submit on the second");
    assert_eq!(
        second.wait_scsi(b, WAIT).expect("second").status,
        scsi_status::GOOD
    );
    assert_eq!(
        first.wait_scsi(a, WAIT).expect("first").status,
        scsi_status::GOOD
    );
    let both = first.read10(LUN, 0, 2, BLOCK).expect("read");
    assert_eq!(&both[..512], &[0xaa; 512][..]);
    assert_eq!(&both[512..], &[0xbb; 512][..]);
    first.logout().expect("logout first");
    second.logout().expect("logout second");
}

#[test]
fn logout_ends_the_session() {
    let tgtd = target();
    let mut session = login(&tgtd, "logout");
    session.logout().expect("logout");
    match session.submit(Command::test_unit_ready(LUN)) {
        Err(Error::SessionEnded) => {}
        other => panic!("a command after logout: {other:?}"),
    }
    assert!(session.exchanges().iter().any(|e| matches!(
        e,
        Exchange::Received {
            kind: ReceivedKind::Logout { response: 0 },
            ..
        }
    )));
}

#[test]
fn abrupt_disconnect_then_new_login() {
    let tgtd = target();
    let opts = options(&tgtd, "dropped");
    let mut session = login_with(&tgtd, opts.clone());
    // A write that waits for R2T and a read, both left behind.
    session
        .submit(Command::write10(LUN, 0, 64, vec![0x55; 64 * 512]))
        .expect("submit write");
    session
        .submit(Command::read10(LUN, 0, 64, BLOCK))
        .expect("submit read");
    session.disconnect();
    assert!(matches!(
        session.exchanges().last(),
        Some(Exchange::Disconnected { .. })
    ));
    assert!(matches!(
        session.test_unit_ready(LUN),
        Err(Error::SessionEnded)
    ));

    // The same initiator name again, as a restarted initiator would.
    let mut again = login_with(&tgtd, opts);
    assert_eq!(
        again.test_unit_ready(LUN).expect("TUR").status,
        scsi_status::GOOD
    );
    again.logout().expect("logout");
}

#[test]
fn login_to_a_missing_target_names_the_reason() {
    let tgtd = target();
    let opts = LoginOptions::new("iqn.2026-11.io.tgt-trace:lost", "iqn.2026-11.io.nowhere:t");
    match Session::login(tgtd.portal, &opts) {
        Err(Error::LoginRejected {
            status_class: 2,
            status_detail: 3,
        }) => {}
        Err(other) => panic!("expected 'target not found', got {other}"),
        Ok(_) => panic!("login to a target that does not exist succeeded"),
    }
}

#[test]
fn waiting_for_an_unknown_tag_fails_clearly() {
    let tgtd = target();
    let mut session = login(&tgtd, "unknown");
    let err = session
        .wait(Itt(0x1234), Duration::from_millis(100))
        .expect_err("no such task");
    assert!(err.to_string().contains("0x1234"), "{err}");
    let itt = session
        .submit(Command::test_unit_ready(LUN))
        .expect("submit");
    let response = session.wait(itt, WAIT).expect("TUR");
    assert!(matches!(response, Response::Scsi(_)));
}
