//! Issue 8: faults while tracing a real tgtd. The output's reader goes away,
//! the disk is full, the ring is too small for a burst, tgtd crashes and a
//! new one starts: each ends in a clear message or a clean exit, and nothing
//! is lost without being counted.

use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use tgt_trace::{correlate::CommandOutcome, event::Event, trace::Line};
use tgt_trace_e2e::{
    group::Group,
    iscsi::{Command as ScsiCommand, LoginOptions, Session},
    slowio::SlowIo,
    tgtd::{Tgtd, TgtdOptions, tgt_trace_bin},
};

mod support;
use support::{Recording, read_trace};

const DEADLINE: Duration = Duration::from_secs(20);

fn wait_exit(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("{what}: tgt-trace still running after {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut std::process::Child) -> String {
    let mut text = String::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = err.read_to_string(&mut text);
    }
    text
}

/// `tgt-trace record | head -1`: once the reader has gone, the next write
/// fails with EPIPE and tgt-trace stops cleanly, with status 0 and a note.
#[test]
fn a_closed_output_pipe_is_a_clean_exit() {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_null_lun(1).expect("LUN 1");
    let mut child = Command::new(tgt_trace_bin())
        .args(["record", "--pid", &tgtd.pid().to_string(), "-o", "-"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tgt-trace starts");
    let mut first = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut first)
        .expect("the header line");
    assert!(first.contains(r#""type":"header""#), "{first}");
    // The reader is gone (dropped above). Traffic makes tgt-trace write.
    let start = Instant::now();
    let status = loop {
        let _ = Command::new("iscsi-inq")
            .arg(tgtd.url(1))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(start.elapsed() < DEADLINE, "tgt-trace kept running");
    };
    let stderr = stderr_of(&mut child);
    assert!(status.success(), "exit {status}: {stderr}");
    assert!(
        stderr.contains("standard output was closed"),
        "says why it stopped: {stderr}"
    );
}

/// No space left: a clear error naming the cause and what to do, status 1.
#[test]
fn a_full_disk_is_a_clear_error() {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    let mut child = Command::new(tgt_trace_bin())
        .args([
            "record",
            "--pid",
            &tgtd.pid().to_string(),
            "-o",
            "/dev/full",
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tgt-trace starts");
    let status = wait_exit(&mut child, "/dev/full");
    let stderr = stderr_of(&mut child);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("/dev/full")
            && stderr.contains("No space left on device")
            && stderr.contains("free space or pass -o elsewhere"),
        "{stderr}"
    );
}

/// Two recordings of the same burst, one with the default ring and one with
/// a 4 KiB ring drained once a second: the small one's events plus its
/// counted drops equal the large one's events, exactly. Every output says
/// so, and `check` refuses a verdict.
#[test]
fn drops_over_a_tiny_ring_are_counted_exactly_and_make_check_inconclusive() {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_null_lun(1).expect("LUN 1");
    let big_out = tgtd.dir.join("big.ndjson");
    let tiny_out = tgtd.dir.join("tiny.ndjson");
    let mut big = Recording::start(&tgtd, &big_out, &["--probes", "lean"]);
    let tiny = Recording::start(
        &tgtd,
        &tiny_out,
        &[
            "--probes",
            "lean",
            "--matched",
            "--ring-size",
            "4096",
            "--poll",
            "1s",
        ],
    );
    let perf = Command::new("timeout")
        .args(["-s", "INT", "2", "iscsi-perf", "-m", "32", "-b", "1"])
        .arg(tgtd.url(1))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("iscsi-perf runs");
    eprintln!("iscsi-perf: {perf}");
    // Once the session is gone tgtd is idle: both have seen everything.
    big.wait_for_events("the perf session's end", |e| {
        e.iter().any(|e| matches!(e, Event::NexusDestroy { .. }))
    });
    let big = big.stop();
    // SIGTERM drains as SIGINT does.
    let tiny = tiny.stop_with("-TERM");
    assert_eq!(tiny.summary.stopped_by, "signal");
    assert_eq!(big.summary.drops.total(), 0, "{:?}", big.summary.drops);
    let d = tiny.summary.drops;
    assert!(
        d.ring_full > 0,
        "a 4 KiB ring drained once a second overflows"
    );
    assert_eq!(
        tiny.events.len() as u64 + d.ring_full,
        big.events.len() as u64,
        "events + drops of the small ring = events of the large one"
    );
    assert_eq!(tiny.summary.events, tiny.events.len() as u64);
    // The final matched summary carries the same drops.
    let matched_drops = tiny.matched.iter().rev().find_map(|l| match l {
        Line::MatchedSummary(m) if m.is_final => Some(m.drops),
        _ => None,
    });
    assert_eq!(matched_drops, Some(d));

    let report = Command::new(tgt_trace_bin())
        .arg("report")
        .arg(&tiny_out)
        .output()
        .expect("report runs");
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains(&format!("ring full {}", d.ring_full)),
        "the report shows the drops: {text}"
    );
    let check = Command::new(tgt_trace_bin())
        .args(["check", "--budget", "command.p99<=10s"])
        .arg(&tiny_out)
        .output()
        .expect("check runs");
    let text = String::from_utf8_lossy(&check.stdout).into_owned()
        + &String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(2), "inconclusive: {text}");
    assert!(text.contains("drop"), "says why: {text}");
}

/// tgtd crashes with a READ in its backing store, and a new tgtd starts.
/// A recording of the binary (no --pid) closes the dead process's open
/// command with "target exited" and traces the new process from its start.
#[test]
fn a_killed_and_restarted_tgtd_is_followed() {
    let gate = SlowIo::new("restart").expect("gate directory");
    let env = gate
        .env("lun1.img", 2048 * 512, 4096)
        .expect("slow-I/O library");
    let mut first = Tgtd::start(&TgtdOptions {
        env,
        ..TgtdOptions::default()
    })
    .expect("tgtd starts");
    first.add_lun(1, 16 << 20).expect("LUN 1");
    let out = first.dir.with_extension("restart.ndjson");
    let mut child = Command::new(tgt_trace_bin())
        .args(["record", "--probes", "lean", "--matched", "-o"])
        .arg(&out)
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tgt-trace starts");
    let lines = |pred: &dyn Fn(&Line) -> bool| {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Line>(l).ok())
            .any(|l| pred(&l))
    };
    let wait = |what: &str, pred: &dyn Fn(&Line) -> bool| {
        let start = Instant::now();
        while !lines(pred) {
            assert!(start.elapsed() < DEADLINE, "no {what} in the trace");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait("header", &|l| matches!(l, Line::Header(_)));

    let login = |tgtd: &Tgtd, who: &str| {
        let mut s = Session::login(
            tgtd.portal,
            &LoginOptions::new(format!("iqn.2026-11.io.tgt-trace:{who}"), &tgtd.target_iqn),
        )
        .expect("login");
        let _ = s.test_unit_ready(1);
        s
    };
    let first_pid = first.pid();
    let mut session = login(&first, "before");
    gate.hold().expect("gate closes");
    let held = session
        .submit(ScsiCommand::read10(1, 2048, 8, 512))
        .expect("submit");
    gate.wait_held(1, DEADLINE).expect("the READ is held");
    let held_tag = u64::from(held.0.swap_bytes());
    wait(
        "the held READ",
        &|l| matches!(l, Line::Event(Event::CmdQueue { pid, tag, .. }) if *pid == first_pid && *tag == held_tag),
    );
    first.kill();
    wait(
        "the exit",
        &|l| matches!(l, Line::Event(Event::ProcessExit { pid, .. }) if *pid == first_pid),
    );
    drop(session);

    let second = Tgtd::start(&TgtdOptions::default()).expect("a new tgtd starts");
    second.add_lun(1, 16 << 20).expect("LUN 1");
    let second_pid = second.pid();
    let mut session = login(&second, "after");
    session
        .execute(ScsiCommand::read10(1, 64, 8, 512))
        .expect("a READ on the new tgtd");
    wait(
        "the new tgtd's READ released",
        &|l| matches!(l, Line::Event(Event::CmdRelease { pid, .. }) if *pid == second_pid),
    );
    session.logout().expect("logout");

    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(kill.success());
    let status = wait_exit(&mut child, "SIGINT");
    assert!(status.success(), "{}", stderr_of(&mut child));
    let trace = read_trace(&out);
    let closed = trace
        .matched
        .iter()
        .find_map(|l| match l {
            Line::Command(c) if c.pid == first_pid && c.tag == held_tag => Some(c.clone()),
            _ => None,
        })
        .expect("the held READ is closed");
    assert_eq!(closed.outcome, CommandOutcome::InFlight);
    assert_eq!(closed.cause.as_deref(), Some("target exited"));
    assert!(
        trace
            .events
            .iter()
            .any(|e| matches!(e, Event::NexusCreate { pid, initiator: Some(i), .. } if *pid == second_pid && i.ends_with(":after"))),
        "the new process is traced from its first session"
    );
    let _ = std::fs::remove_file(&out);
}

/// How a slow-reader recording is stopped.
#[derive(Debug, Clone, Copy)]
enum Stop {
    Duration,
    Sigterm,
    CommandExits,
}

/// Issue 14: `tgt-trace record -o - | (sleep 30; cat)` under load: the
/// reader takes nothing, yet recording stops on time (5 s, then a bounded
/// flush) and says how many lines it could not deliver; the trace's reader
/// still gets whole lines.
fn a_slow_reader_does_not_hold_up(stop: Stop) {
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_null_lun(1).expect("LUN 1");
    // Saturating load, stopped with its process group at the end.
    let _load =
        Group::spawn(Command::new("iscsi-perf").args(["-m", "32", "-b", "1", &tgtd.url(1)]))
            .expect("iscsi-perf runs");
    let mut cmd = Command::new(tgt_trace_bin());
    cmd.args(["record", "--pid", &tgtd.pid().to_string(), "-o", "-"]);
    match stop {
        Stop::Duration => {
            cmd.args(["--duration", "5s"]);
        }
        Stop::Sigterm => {}
        Stop::CommandExits => {
            cmd.args(["--", "sleep", "5"]);
        }
    }
    let started = Instant::now();
    // stdout is a pipe this test does not read until tgt-trace has exited.
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tgt-trace starts");
    if let Stop::Sigterm = stop {
        std::thread::sleep(Duration::from_secs(5));
        let pid = i32::try_from(child.id()).expect("pid");
        // SAFETY: kill(2) on the child this test started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let status = wait_exit(&mut child, "slow reader");
    let took = started.elapsed();
    eprintln!("{stop:?}: tgt-trace stopped {took:?} after it started");
    let stderr = stderr_of(&mut child);
    assert!(status.success(), "{stop:?}: {status}\n{stderr}");
    assert!(
        took < Duration::from_secs(7),
        "{stop:?}: tgt-trace took {took:?} to stop with a slow reader\n{stderr}"
    );
    assert!(
        stderr.contains("too slow") && stderr.contains("sink_slow"),
        "{stop:?}: the undelivered lines are counted\n{stderr}"
    );
    // What the reader does get is whole lines, but for the last one: the
    // writer was blocked in a write to the full pipe when tgt-trace ended.
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("reads");
    let whole = out
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(&out[..0], |end| &out[..=end]);
    let text = String::from_utf8_lossy(whole);
    assert!(text.starts_with(r#"{"type":"header""#), "{stop:?}");
    for (i, line) in text.lines().enumerate() {
        serde_json::from_str::<Line>(line)
            .unwrap_or_else(|e| panic!("{stop:?}: line {} is not whole: {e}", i + 1));
    }
}

#[test]
fn a_slow_reader_does_not_hold_up_the_duration() {
    a_slow_reader_does_not_hold_up(Stop::Duration);
}

#[test]
fn a_slow_reader_does_not_hold_up_sigterm() {
    a_slow_reader_does_not_hold_up(Stop::Sigterm);
}

#[test]
fn a_slow_reader_does_not_hold_up_the_end_of_the_command() {
    a_slow_reader_does_not_hold_up(Stop::CommandExits);
}
