//! The main job: a scratch tgtd on 127.0.0.1, a looping workload that makes
//! tgtd abort and defer, and tgt-trace watching it.
//!
//! The workload: libiscsi's throughput and TMF tests, and the project's own
//! initiator holding a READ in the backing store (the slow-I/O gate) while it
//! sends ABORT TASK (deferred), then ABORT TASK for a tag that never existed
//! (an orphan), once a second.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::io::Write as _;

use anyhow::Context as _;
use tgt_trace_e2e::{
    iscsi::{Command as ScsiCommand, Itt, LoginOptions, Session, Tmf},
    slowio::SlowIo,
    tgtd::{Tgtd, TgtdOptions},
};

use crate::{cargo, root, run_step};

/// How the demo shows the trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// `tgt-trace tui`, when the demo runs on a terminal without a time limit.
    Tui,
    /// TMF records and orphans printed as they are concluded, then a report.
    Text,
}

impl View {
    pub fn choose(seconds: u64, text: bool) -> View {
        use std::io::IsTerminal as _;
        if !text
            && seconds == 0
            && std::io::stdin().is_terminal()
            && std::io::stdout().is_terminal()
        {
            View::Tui
        } else {
            View::Text
        }
    }
}

pub fn run(seconds: u64, view: View) -> anyhow::Result<()> {
    run_step(
        "build tgt-trace (release)",
        cargo().args(["build", "--release", "-p", "tgt-trace", "-p", "tgt-slowio"]),
    )?;
    crate::setup::require_root("the demo starts tgtd and loads eBPF probes")?;
    let gate = SlowIo::new("demo").context("the slow-I/O gate")?;
    let env = gate
        .env("lun1.img", u64::from(HELD_LBA) * 512, 4096)
        .context("the slow-I/O library")?;
    let tgtd = Tgtd::start(&TgtdOptions {
        env,
        ..TgtdOptions::default()
    })
    .context("starting a scratch tgtd")?;
    tgtd.add_lun(1, 64 << 20)
        .context("adding a file-backed LUN")?;
    tgtd.add_null_lun(2).context("adding a null LUN")?;
    eprintln!(
        "demo: tgtd pid {} on {} (control {}), target {}; Ctrl-C to stop",
        tgtd.pid(),
        tgtd.portal,
        tgtd.control,
        tgtd.target_iqn
    );

    // Ctrl-C is for tgt-trace, which then drains and exits; the demo cleans
    // up after it. The workload and tgtd run in their own process groups.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };

    let mut workload = start_workload(&tgtd)?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saved = root().join("target/demo.ndjson");
    // The TUI owns the screen: the aborter's complaints go to a file then.
    let complaints: Box<dyn std::io::Write + Send> = match view {
        View::Tui => {
            let log = root().join("target/demo-aborter.log");
            Box::new(
                std::fs::File::create(&log)
                    .with_context(|| format!("creating {}", log.display()))?,
            )
        }
        View::Text => Box::new(std::io::stderr()),
    };
    let aborter = {
        let (portal, iqn, stop) = (tgtd.portal, tgtd.target_iqn.clone(), stop.clone());
        std::thread::spawn(move || abort_loop(portal, &iqn, &gate, &stop, complaints))
    };
    if view == View::Tui {
        let status = Command::new(root().join("target/release/tgt-trace"))
            .args(["tui", "--pid", &tgtd.pid().to_string(), "-o"])
            .arg(&saved)
            .status()
            .context("starting tgt-trace tui");
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let _ = aborter.join();
        stop_group(&mut workload);
        drop(tgtd);
        anyhow::ensure!(status?.success(), "tgt-trace tui failed");
        return report(&saved);
    }
    let mut tracer = Command::new(root().join("target/release/tgt-trace"));
    tracer.args([
        "record",
        "--pid",
        &tgtd.pid().to_string(),
        "--matched",
        "-o",
        "-",
    ]);
    if seconds > 0 {
        tracer.args(["--duration", &format!("{seconds}s")]);
    }
    let mut tracer = tracer
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tgt-trace")?;
    let result = show(&mut tracer, &saved);
    let _ = tracer.wait();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = aborter.join();
    stop_group(&mut workload);
    drop(tgtd);
    result?;
    report(&saved)
}

fn report(saved: &std::path::Path) -> anyhow::Result<()> {
    eprintln!(
        "demo: the trace is in {}; the matcher's report:",
        saved.display()
    );
    run_step(
        "tgt-trace report",
        Command::new(root().join("target/release/tgt-trace"))
            .arg("report")
            .arg(saved),
    )
}

/// The READ the aborter holds in the backing store.
pub(crate) const HELD_LBA: u32 = 4096;

/// Once a second: a READ held in the backing store and an ABORT TASK for it
/// (tgtd defers the response until the READ is released), then an ABORT
/// TASK for a tag that never existed (an orphan).
pub(crate) fn abort_loop(
    portal: std::net::SocketAddrV4,
    iqn: &str,
    gate: &SlowIo,
    stop: &std::sync::atomic::AtomicBool,
    mut complaints: Box<dyn std::io::Write + Send>,
) {
    let wait = Duration::from_secs(5);
    let mut round: u32 = 0;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        round += 1;
        let result = (|| -> anyhow::Result<()> {
            let mut session = Session::login(
                portal,
                &LoginOptions::new("iqn.2026-11.io.tgt-trace:demo-aborter", iqn),
            )?;
            // The first command after login takes the unit attention.
            let _ = session.test_unit_ready(1);
            gate.hold()?;
            let held = session.submit(ScsiCommand::read10(1, HELD_LBA, 8, 512))?;
            gate.wait_held(round as usize, wait)?;
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
            let _ = writeln!(complaints, "demo: aborter: {e:#}");
        }
        std::thread::sleep(Duration::from_millis(800));
    }
}

/// A loop of libiscsi tools: throughput bursts on the null LUN, and the TMF
/// tests (ABORT TASK, LUN RESET) on the file LUN. `timeout --foreground`
/// stays in the loop's process group, so stopping the group stops it too
/// (plain `timeout` makes a group of its own and outlives the loop), and
/// `-k 1` kills an iscsi-perf that ignores SIGINT while it reconnects.
pub(crate) fn start_workload(tgtd: &Tgtd) -> anyhow::Result<Child> {
    let script = format!(
        "while :; do \
           timeout --foreground -k 1 -s INT 2 iscsi-perf -m 16 -b 8 {null} >/dev/null 2>&1; \
           iscsi-test-cu --dataloss -t iSCSI.iSCSITMF.AbortTaskSimpleAsync {file} >/dev/null 2>&1; \
           iscsi-test-cu --dataloss -t iSCSI.iSCSITMF.LUNResetSimpleAsync {file} >/dev/null 2>&1; \
           iscsi-inq {file} >/dev/null 2>&1; \
         done",
        null = tgtd.url(2),
        file = tgtd.url(1)
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the workload")
}

pub(crate) fn stop_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
    }
    let _ = child.wait();
}

/// Prints TMF events as they come and a status line every second.
fn show(tracer: &mut Child, saved: &std::path::Path) -> anyhow::Result<()> {
    let stdout = tracer.stdout.take().context("tgt-trace's output")?;
    let mut copy = std::io::BufWriter::new(
        std::fs::File::create(saved).with_context(|| format!("creating {}", saved.display()))?,
    );
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading tgt-trace's output")?;
        writeln!(copy, "{line}").context("saving the trace")?;
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("bad line: {line}"))?;
        let kind = match value["type"].as_str() {
            Some("event") => value["kind"].as_str(),
            other => other,
        }
        .unwrap_or("?")
        .to_owned();
        match kind.as_str() {
            "tmf" => println!(
                "TMF  {} tag {:#010x} nexus {} ({}) -> {} in {} µs, covered {}",
                value["function"].as_str().unwrap_or("?"),
                value["tag"].as_u64().unwrap_or(0),
                value["itn_id"],
                value["initiator"].as_str().unwrap_or("?"),
                value["outcome"].as_str().unwrap_or("?"),
                value["latency_ns"].as_u64().unwrap_or(0) / 1_000,
                value["covered"]
                    .as_array()
                    .map(|c| c
                        .iter()
                        .map(|c| format!(
                            "{:#x}:{}",
                            c["tag"].as_u64().unwrap_or(0),
                            c["fate"].as_str().unwrap_or("?")
                        ))
                        .collect::<Vec<_>>()
                        .join(" "))
                    .unwrap_or_default()
            ),
            "orphan" => println!(
                "ORPHAN {}: {}",
                value["kind"].as_str().unwrap_or("?"),
                value["detail"].as_str().unwrap_or("?")
            ),
            "summary" => println!("{line}"),
            _ => {}
        }
        *counts.entry(kind).or_default() += 1;
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let text: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            eprintln!("demo: {}", text.join(", "));
        }
    }
    Ok(())
}
