//! The demo's load, shared by `cargo xtask demo`, `cargo xtask soak` and the
//! end-to-end test that holds a trace of it against the wire: libiscsi's
//! throughput tool and TMF tests, and the project's initiator aborting a
//! READ it holds in the backing store.

use std::{
    io::{self, Write},
    net::SocketAddrV4,
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use crate::{
    iscsi::{Command as ScsiCommand, Itt, LoginOptions, Session, Tmf},
    slowio::SlowIo,
    tgtd::Tgtd,
};

/// The READ the aborter holds in the backing store (LUN 1).
pub const HELD_LBA: u32 = 4096;

/// The aborter's initiator name.
pub const ABORTER: &str = "iqn.2026-11.io.tgt-trace:demo-aborter";

/// Once a second: a READ held in the backing store and an ABORT TASK for it
/// (tgtd defers the response until the READ is released), then an ABORT
/// TASK for a tag that never existed (an orphan). Until `stop`; what goes
/// wrong in a round is written to `complaints` and the next round begins.
pub fn abort_loop(
    portal: SocketAddrV4,
    iqn: &str,
    gate: &SlowIo,
    stop: &AtomicBool,
    mut complaints: Box<dyn Write + Send>,
) {
    let wait = Duration::from_secs(5);
    let mut round: u32 = 0;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let result = (|| -> Result<(), Box<dyn std::error::Error>> {
            let mut session = Session::login(portal, &LoginOptions::new(ABORTER, iqn))?;
            // The first command after login takes the unit attention.
            let _ = session.test_unit_ready(1);
            // Counted from what the gate has seen, so that a round that
            // failed before its READ was held does not upset the next ones.
            let held_before = gate.wait_held(0, Duration::ZERO)?.len();
            gate.hold()?;
            let held = session.submit(ScsiCommand::read10(1, HELD_LBA, 8, 512))?;
            gate.wait_held(held_before + 1, wait)?;
            let abort = session.submit_tmf(Tmf::abort_task(1, held))?;
            // Pacing for the viewer, not synchronization: the READ is held a
            // moment so the deferral shows. Should the release win the race
            // with the TMF, the matcher reports that (no_task_race) instead.
            std::thread::sleep(Duration::from_millis(200));
            gate.release()?;
            session.wait_tmf(abort, wait)?;
            session.wait_scsi(held, wait)?;
            session.task_management(Tmf::abort_task(1, Itt(0xdead_0000 | round)))?;
            session.logout()?;
            Ok(())
        })();
        if let Err(e) = result {
            let _ = gate.release();
            let _ = writeln!(complaints, "demo: aborter: {e}");
        }
        // Pacing, cut short when the load stops.
        let pause = Instant::now() + Duration::from_millis(800);
        while Instant::now() < pause && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A loop of libiscsi tools, in a process group of its own (the caller
/// stops the group): throughput bursts on the null LUN 2 through
/// `throughput` (a portal of `tgtd`: another one keeps them out of a
/// capture of the main portal), and the TMF tests (ABORT TASK, LUN RESET)
/// and an inquiry on the file LUN 1 through the main portal.
///
/// `timeout --foreground` stays in the loop's process group, so stopping the
/// group stops it too (plain `timeout` makes a group of its own and outlives
/// the loop), and `-k 1` kills an iscsi-perf that ignores SIGINT while it
/// reconnects.
pub fn start(tgtd: &Tgtd, throughput: &SocketAddrV4) -> io::Result<Child> {
    let null = format!("iscsi://{throughput}/{}/2", tgtd.target_iqn);
    let script = format!(
        "while :; do \
           timeout --foreground -k 1 -s INT 2 iscsi-perf -m 16 -b 8 {null} >/dev/null 2>&1; \
           iscsi-test-cu --dataloss -t iSCSI.iSCSITMF.AbortTaskSimpleAsync {file} >/dev/null 2>&1; \
           iscsi-test-cu --dataloss -t iSCSI.iSCSITMF.LUNResetSimpleAsync {file} >/dev/null 2>&1; \
           iscsi-inq {file} >/dev/null 2>&1; \
         done",
        file = tgtd.url(1)
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
}
