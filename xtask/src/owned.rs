//! The processes an xtask job starts are its own, and it stops them however
//! it ends: on return, on error, on panic (their guards' `Drop`), and on
//! SIGINT, SIGTERM and SIGHUP.
//!
//! tgtd and the workload run in process groups of their own, so that a
//! Ctrl-C at the terminal reaches the demo and tgt-trace, never tgtd
//! half-way; that is also why the kernel would never stop them for us. So
//! each such group is registered here while it runs.
//!
//! Signals are taken by a thread (signal-hook: its handler only writes to a
//! pipe, so no code of ours runs in signal context, and no unsafe code is
//! written here for it). On the first signal a cooperative job (the demo,
//! the soak) is told to stop ([`stopping`], [`wait_for_stop`]); the
//! processes registered with [`Forward`] get SIGTERM (tgt-trace then drains
//! and exits), and the job cleans up as on any return. Later signals do not
//! interrupt that clean-up. Should it not finish within [`GRACE`], or for a
//! job that does not cooperate (bench), the thread stops every registered
//! group itself (SIGTERM, then SIGKILL), removes their scratch directories
//! and exits.

use std::{
    io::Write as _,
    path::PathBuf,
    process::Child,
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// How long a cooperative job may take to clean up after a signal.
pub const GRACE: Duration = Duration::from_secs(30);

/// How long a process (tgtd, tgt-trace) has to leave after SIGTERM before
/// SIGKILL.
const TERM_WAIT: Duration = Duration::from_secs(3);
/// The same for a workload: load generators with nothing to save (iscsi-perf
/// takes seconds to log out, and would hold up every stop).
const WORKLOAD_TERM_WAIT: Duration = Duration::from_millis(300);

struct State {
    /// The first signal taken, if any.
    signal: Option<i32>,
    /// Registered process groups (by leader pid) and their scratch dirs.
    groups: Vec<(i32, Option<PathBuf>)>,
    /// Processes that get SIGTERM when the job is told to stop.
    forward: Vec<i32>,
}

static STATE: Mutex<State> = Mutex::new(State {
    signal: None,
    groups: Vec::new(),
    forward: Vec::new(),
});
static STOPPED: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    // A panic while holding the lock leaves plain data behind: keep going.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Writes a line to stderr, ignoring errors: after SIGHUP, or with a closed
/// pipe, stderr may be gone, and clean-up must not panic over a message.
pub fn note(text: &str) {
    let _ = writeln!(std::io::stderr(), "{text}");
}

/// How the job reacts to a signal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The job watches [`stopping`] and cleans up itself within [`GRACE`].
    Cooperative,
    /// The signal thread stops the registered groups and exits at once.
    Immediate,
}

/// Takes SIGINT, SIGTERM and SIGHUP from now on.
pub fn install(mode: Mode) -> anyhow::Result<()> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing the signal handlers")?;
    std::thread::Builder::new()
        .name("signals".to_owned())
        .spawn(move || {
            let mut first = None;
            for sig in signals.forever() {
                if first.is_some() {
                    note("xtask: still cleaning up; its processes are stopped either way");
                    continue;
                }
                first = Some(sig);
                note(&format!(
                    "xtask: {}: stopping what this job started",
                    name(sig)
                ));
                if mode == Mode::Immediate {
                    emergency(sig);
                }
                let forward = {
                    let mut state = state();
                    state.signal = Some(sig);
                    state.forward.clone()
                };
                STOPPED.notify_all();
                for pid in forward {
                    terminate(pid);
                }
                // The job cleans up and exits; if it is stuck, this does.
                let watchdog = std::thread::spawn(move || {
                    std::thread::sleep(GRACE);
                    note("xtask: clean-up is taking too long; stopping what is left");
                    emergency(sig);
                });
                drop(watchdog);
            }
        })
        .context("starting the signal thread")?;
    Ok(())
}

fn name(sig: i32) -> &'static str {
    match sig {
        SIGINT => "SIGINT",
        SIGTERM => "SIGTERM",
        SIGHUP => "SIGHUP",
        _ => "signal",
    }
}

/// The signal the job was told to stop by, if any.
pub fn stopping() -> Option<i32> {
    state().signal
}

/// Waits up to `timeout` for a stop; true when told to stop. Pacing that
/// must end at once when the job is stopped.
pub fn wait_for_stop(timeout: Duration) -> bool {
    let state = state();
    let (state, _) = STOPPED
        .wait_timeout_while(state, timeout, |s| s.signal.is_none())
        .unwrap_or_else(|e| e.into_inner());
    state.signal.is_some()
}

/// The exit status a job stopped by a signal ends with: 0 after SIGINT (the
/// user's way to end the demo), 128 + N after SIGTERM and SIGHUP.
pub fn exit_status() -> u8 {
    match stopping() {
        None | Some(SIGINT) => 0,
        Some(sig) => u8::try_from(128 + sig).unwrap_or(1),
    }
}

/// Stops every registered group and exits: the last resort.
fn emergency(sig: i32) -> ! {
    let groups = std::mem::take(&mut state().groups);
    let pgids: Vec<i32> = groups.iter().map(|(p, _)| *p).collect();
    stop_groups(&pgids, TERM_WAIT);
    for dir in groups.iter().filter_map(|(_, d)| d.as_ref()) {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(128 + sig);
}

fn terminate(pid: i32) {
    // SAFETY: kill has no memory preconditions; pid is a child of ours that
    // has not been reaped (it is unregistered before it is waited for).
    unsafe { libc::kill(pid, libc::SIGTERM) };
}

/// Whether any process of group `pgid` is left. The leader is our child:
/// reaped here if it exited, so that a zombie does not count.
fn group_alive(pgid: i32) -> bool {
    // SAFETY: waitpid with WNOHANG on our own child; a null status pointer
    // is allowed.
    unsafe { libc::waitpid(pgid, std::ptr::null_mut(), libc::WNOHANG) };
    // SAFETY: signal 0 only checks that the group has a member.
    unsafe { libc::kill(-pgid, 0) == 0 }
}

/// SIGTERM to each group, then SIGKILL to those still there after `wait`.
fn stop_groups(pgids: &[i32], wait: Duration) {
    for &pgid in pgids {
        // SAFETY: signalling a process group this job created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + wait;
    while pgids.iter().any(|&p| group_alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    for &pgid in pgids {
        if group_alive(pgid) {
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
    }
}

/// A process group registered for the signal thread's last resort while
/// this lives; a field declared after the thing it guards, so it is
/// unregistered only after that has been stopped.
pub struct Registration(i32);

impl Registration {
    pub fn group(pgid: u32, dir: Option<PathBuf>) -> Registration {
        let pgid = i32::try_from(pgid).unwrap_or(i32::MAX);
        state().groups.push((pgid, dir));
        Registration(pgid)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        state().groups.retain(|(p, _)| *p != self.0);
    }
}

/// A process that is sent SIGTERM when the job is told to stop (tgt-trace:
/// it drains and exits). Sent at once when the job is already stopping.
pub struct Forward(i32);

impl Forward {
    pub fn new(pid: u32) -> Forward {
        let pid = i32::try_from(pid).unwrap_or(i32::MAX);
        let already = {
            let mut state = state();
            state.forward.push(pid);
            state.signal.is_some()
        };
        if already {
            terminate(pid);
        }
        Forward(pid)
    }
}

impl Drop for Forward {
    fn drop(&mut self) {
        state().forward.retain(|p| *p != self.0);
    }
}

/// A workload: a child in a process group of its own (`process_group(0)`
/// when spawned), with everything it starts: stopped as a group when
/// dropped.
pub struct Group {
    child: Child,
    _registration: Registration,
}

impl Group {
    pub fn new(child: Child) -> Group {
        let registration = Registration::group(child.id(), None);
        Group {
            child,
            _registration: registration,
        }
    }

    pub fn stop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            stop_groups(&[pgid], WORKLOAD_TERM_WAIT);
        }
        let _ = self.child.wait();
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child in our own process group (it shares the terminal: tgt-trace's
/// TUI reads it), told to stop with SIGTERM when the job is; killed if
/// it is still running when dropped.
pub struct Tracer {
    pub child: Child,
    _forward: Forward,
}

impl Tracer {
    pub fn new(child: Child) -> Tracer {
        let forward = Forward::new(child.id());
        Tracer {
            child,
            _forward: forward,
        }
    }
}

impl Tracer {
    /// Waits for it to exit on its own (or on a forwarded signal).
    pub fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        let status = self.child.wait();
        self.unregister();
        status
    }

    /// Whether it has exited, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<std::process::ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() {
            self.unregister();
        }
        Ok(status)
    }

    fn unregister(&self) {
        state().forward.retain(|p| *p != self._forward.0);
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            terminate(i32::try_from(self.child.id()).unwrap_or(i32::MAX));
            let deadline = Instant::now() + TERM_WAIT;
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
        }
        self.unregister();
        let _ = self.child.wait();
    }
}
