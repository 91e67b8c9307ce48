//! Issue 16: `cargo xtask demo` stops everything it started, however it is
//! stopped. Each test runs the demo (the text view, output piped), waits
//! until its load runs, sends it a signal as a terminal, `timeout` or a CI
//! job would, and then asserts that no tgtd, iscsi-perf, iscsi-test-cu or
//! shell of the demo's is left and that tgtd's port is free.
//!
//! This test binary is a child subreaper: whatever the demo leaves behind is
//! reparented here rather than to init, so a leftover cannot escape the
//! check by outliving its parent.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

/// Start-up (set-up check, a no-op build, tgtd, attaching) is a few seconds;
/// generous for a loaded machine.
const START: Duration = Duration::from_secs(120);
/// From the signal to the demo's exit.
const STOP: Duration = Duration::from_secs(40);

/// The xtask binary: `XTASK_BIN` (set by `cargo xtask test`), or the
/// workspace's debug build.
fn xtask_bin() -> PathBuf {
    std::env::var_os("XTASK_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/xtask"))
}

/// A process as /proc shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ppid: i32,
    pgid: i32,
    state: char,
    comm: String,
    /// Start time in clock ticks: tells a process from a later one that
    /// reused its pid.
    start: u64,
}

fn proc_stat(pid: i32) -> Option<Proc> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
    Some(Proc {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgid: fields.get(2)?.parse().ok()?,
        start: fields.get(19)?.parse().ok()?,
        comm,
    })
}

fn all_procs() -> Vec<Proc> {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(proc_stat)
        .collect()
}

/// `root`'s descendants and every member of their process groups (a
/// process in a group whose leader has gone is still the demo's).
fn family(root: i32) -> BTreeMap<i32, Proc> {
    let procs = all_procs();
    let mut found: BTreeMap<i32, Proc> = BTreeMap::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for p in procs.iter().filter(|p| p.ppid == parent) {
            if found.insert(p.pid, p.clone()).is_none() {
                frontier.push(p.pid);
            }
        }
    }
    let groups: Vec<i32> = found.values().map(|p| p.pgid).collect();
    for p in procs.iter().filter(|p| groups.contains(&p.pgid)) {
        found.entry(p.pid).or_insert_with(|| p.clone());
    }
    found
}

/// The demo, in a process group of its own as a shell job would be.
struct Demo {
    child: Child,
    lines: Receiver<String>,
    log: Vec<String>,
    dir: PathBuf,
    /// Everything of the demo's seen so far, for the clean-up of a failed test.
    seen: BTreeMap<i32, Proc>,
}

impl Demo {
    fn start(name: &str) -> Demo {
        let dir =
            std::env::temp_dir().join(format!("tgt-trace-demo-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let mut child = Command::new(xtask_bin())
            .args(["demo", "--text", "--save"])
            .arg(dir.join("demo.ndjson"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("xtask runs (cargo xtask test builds it)");
        let (tx, lines) = channel();
        let stderr = child.stderr.take().expect("stderr");
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Demo {
            child,
            lines,
            log: Vec::new(),
            dir,
            seen: BTreeMap::new(),
        }
    }

    /// Reads what the demo prints, as a terminal would.
    fn drain_stdout(&mut self) {
        let mut stdout = self.child.stdout.take().expect("stdout");
        std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits for a line of the demo's stderr that starts with `prefix`.
    fn wait_line(&mut self, prefix: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.log.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no '{prefix}' within {within:?}:\n{}", self.log.join("\n"))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("the demo ended before '{prefix}':\n{}", self.log.join("\n"))
                }
            }
        }
    }

    /// The rest of stderr, once the demo has exited.
    fn rest(&mut self) -> String {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.log.push(line);
        }
        self.log.join("\n")
    }

    /// Signals the demo's process group, as a terminal does.
    fn signal_group(&self, sig: i32) {
        // SAFETY: signalling the process group this test created.
        assert_eq!(unsafe { libc::kill(-self.pid(), sig) }, 0);
    }

    /// Signals xtask alone, as `kill PID` or a CI runner's cancel does.
    fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child, not yet reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0);
    }
}

impl Drop for Demo {
    /// A failed test must not leave the demo's processes behind either.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.seen.extend(family(self.pid()));
            self.signal_group(libc::SIGKILL);
            let _ = self.child.wait();
        }
        let me = std::process::id() as i32;
        for p in self.seen.values() {
            if proc_stat(p.pid).is_some_and(|now| now.start == p.start) {
                // SAFETY: the same process (same start time) the demo started.
                unsafe { libc::kill(p.pid, libc::SIGKILL) };
            }
            // Its process group, with what started since it was seen (the
            // groups are the demo's own: never this test's).
            if p.pgid != me && p.pgid > 1 {
                // SAFETY: signalling a process group the demo created.
                unsafe { libc::kill(-p.pgid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Runs the demo until its load runs; returns it, its processes, and tgtd's
/// portal.
fn running_demo(name: &str) -> (Demo, std::net::SocketAddr) {
    // SAFETY: prctl(PR_SET_CHILD_SUBREAPER) takes plain integers.
    let subreaper = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    assert_eq!(subreaper, 0, "becoming a child subreaper");
    let mut demo = Demo::start(name);
    let started = demo.wait_line("demo: tgtd pid", START);
    let portal: std::net::SocketAddr = started
        .split_whitespace()
        .nth(5)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no portal in: {started}"));
    demo.wait_line("demo: probes attached, load started", START);
    // The workload is a loop: once one of its initiators is seen, every kind
    // of process the demo owns is running.
    let deadline = Instant::now() + START;
    loop {
        let family = family(demo.pid());
        let names: Vec<&str> = family.values().map(|p| p.comm.as_str()).collect();
        demo.seen.extend(family.clone());
        if names.contains(&"tgtd")
            && names.contains(&"sh")
            && names.iter().any(|n| n.starts_with("iscsi-"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo's processes never all ran: {names:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (demo, portal)
}

/// After the demo has exited: nothing of it is left, and the port is free.
fn assert_all_gone(mut demo: Demo, portal: std::net::SocketAddr, signal: &str) {
    let deadline = Instant::now() + STOP;
    let status = loop {
        if let Some(status) = demo.child.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not exit within {STOP:?} of {signal}:\n{}",
            demo.log.join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let log = demo.rest();
    // Orphans of the demo were reparented here: reap those that exited.
    // SAFETY: waitpid on any child of ours, without blocking; the demo
    // itself has been reaped above.
    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) } > 0 {}
    let me = std::process::id() as i32;
    let left: Vec<Proc> = all_procs()
        .into_iter()
        .filter(|p| p.state != 'Z')
        .filter(|p| {
            p.ppid == me
                || demo.seen.get(&p.pid).is_some_and(|s| s.start == p.start)
                || demo.seen.values().any(|s| s.pgid == p.pgid && s.pgid != me)
        })
        .collect();
    assert!(
        left.is_empty(),
        "after {signal} ({status}) the demo left {left:#?}\nits stderr:\n{log}"
    );
    std::net::TcpListener::bind(portal)
        .unwrap_or_else(|e| panic!("tgtd's port {portal} is still taken after {signal}: {e}"));
    assert!(
        log.contains("demo: stopping the load and tgtd"),
        "the demo did not clean up itself:\n{log}"
    );
}

/// Ctrl-C at a terminal, with the output piped to a reader that Ctrl-C
/// ended too; then a second Ctrl-C during the clean-up.
#[test]
fn demo_cleans_up_on_ctrl_c_with_its_output_piped_and_a_second_ctrl_c() {
    let (mut demo, portal) = running_demo("int");
    // The pipe's reader is gone: the demo's writes to stdout fail.
    drop(demo.child.stdout.take());
    demo.signal_group(libc::SIGINT);
    demo.wait_line("xtask: SIGINT", STOP);
    demo.wait_line("demo: stopping", STOP);
    demo.signal_group(libc::SIGINT);
    assert_all_gone(demo, portal, "SIGINT twice");
}

/// SIGTERM to xtask alone: `kill`, or a CI job's cancel.
#[test]
fn demo_cleans_up_on_sigterm() {
    let (mut demo, portal) = running_demo("term");
    demo.drain_stdout();
    demo.signal(libc::SIGTERM);
    assert_all_gone(demo, portal, "SIGTERM");
}

/// SIGHUP to the foreground process group: its terminal was closed.
#[test]
fn demo_cleans_up_on_sighup() {
    let (mut demo, portal) = running_demo("hup");
    demo.drain_stdout();
    demo.signal_group(libc::SIGHUP);
    assert_all_gone(demo, portal, "SIGHUP");
}
