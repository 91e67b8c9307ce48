//! The live benchmark's parts: tracers that are known to be attached before
//! the load starts, the saturating load (iscsi-perf), a paced load and an
//! ABORT TASK loop (the project's initiator), and CPU time from /proc.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Read as _, Seek as _, SeekFrom},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tgt_trace_e2e::{
    iscsi::{Command as ScsiCommand, Itt, LoginOptions, Session, Tmf, scsi_status},
    tgtd::Tgtd,
};

use crate::root;

/// The null LUN every live section drives.
pub const LUN: u16 = 1;
/// Sessions the paced load is spread over.
pub const PACED_SESSIONS: usize = 4;
/// `--sample`'s share in the sampled modes: issue #15's goals are set at
/// 10%, of tgt-trace's default period.
pub const SAMPLE_PERCENT: u8 = 10;
/// `--sample-period` in the sampled modes, in seconds: tgt-trace's default,
/// passed explicitly so that the tables say what was run.
pub const SAMPLE_PERIOD_S: u64 = 10;
/// Bytes one command event takes in the ring buffer: the 72-byte record
/// (`tgt_trace_common::EVENT_SIZE`) and the ring's 8-byte header.
pub const RING_RECORD_BYTES: f64 = 80.0;

/// How tgtd is traced during a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Untraced,
    /// `tgt-trace record --probes SET`, with `--ring-size` and `--sample
    /// PERCENT --sample-period SAMPLE_PERIOD_S` when given.
    TgtTrace {
        set: &'static str,
        ring: Option<u32>,
        sample: Option<u8>,
    },
    /// A bpftrace script (its BEGIN prints "ready"; `$1` is tgtd's pid).
    Bpftrace(Script),
}

impl Mode {
    pub const fn tgt_trace(set: &'static str) -> Mode {
        Mode::TgtTrace {
            set,
            ring: None,
            sample: None,
        }
    }

    /// `--sample PERCENT` of each [`SAMPLE_PERIOD_S`].
    pub const fn sampled(set: &'static str, percent: u8) -> Mode {
        Mode::TgtTrace {
            set,
            ring: None,
            sample: Some(percent),
        }
    }

    pub fn name(self) -> String {
        match self {
            Mode::Untraced => "untraced".to_owned(),
            Mode::TgtTrace { set, ring, sample } => {
                let mut name = format!("tgt-trace {set}");
                if let Some(percent) = sample {
                    name.push_str(&format!(" --sample {percent}%"));
                }
                if let Some(bytes) = ring {
                    name.push_str(&format!(", ring {}", bytes_name(bytes.into())));
                }
                name
            }
            Mode::Bpftrace(script) => script.name(),
        }
    }

    /// Probe hits per ordinary command (one no TMF touches); none for a
    /// sampled mode, whose commands take the set's hits only inside a window.
    pub fn hits_per_command(self) -> Option<u32> {
        match self {
            Mode::Untraced => Some(0),
            Mode::TgtTrace {
                sample: Some(_), ..
            } => None,
            Mode::TgtTrace { set: "tmf", .. } => Some(0),
            Mode::TgtTrace { set: "lean", .. } => Some(2),
            Mode::TgtTrace { set: "full", .. } => Some(4),
            Mode::TgtTrace { .. } => None,
            Mode::Bpftrace(Script::Lean | Script::LeanTmf) => Some(2),
            Mode::Bpftrace(Script::Empty(f)) => Some(u32::from(f != "target_mgmt_request")),
            Mode::Bpftrace(Script::Profile) => Some(0),
        }
    }

    /// Starts the tracer and returns once its probes are attached.
    pub fn start(self, tgtd: &Tgtd) -> anyhow::Result<Option<Tracer>> {
        match self {
            Mode::Untraced => Ok(None),
            Mode::TgtTrace { set, ring, sample } => {
                Tracer::tgt_trace(tgtd, set, ring, sample).map(Some)
            }
            Mode::Bpftrace(script) => {
                Tracer::bpftrace(tgtd, &script.source(tgtd.binary()), false).map(Some)
            }
        }
    }
}

/// "16 MiB", "512 KiB", "4096 B".
pub fn bytes_name(bytes: u64) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1 << 10 && bytes.is_multiple_of(1 << 10) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}

/// The bpftrace scripts the benchmark runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Script {
    /// The lean set's command probes (queue, release), printing the fields
    /// tgt-trace's records carry.
    Lean,
    /// `Lean` and the TMF request and its return, as tgt-trace's lean set
    /// has them (not the response: `iscsi_tm_done` is static, and bpftrace
    /// 0.17 cannot attach to it by address in a binary without .symtab).
    LeanTmf,
    /// One uprobe with an empty action: the cost of the uprobe itself.
    Empty(&'static str),
    /// tgtd's kernel and user stacks, sampled at 499 Hz.
    Profile,
}

/// The lean set's probe points and fields, in bpftrace: the queue and release
/// of each command (struct offsets as in tgt-trace-common::layout).
const BPFTRACE_LEAN: &str = r#"
uprobe:/usr/sbin/tgtd:target_cmd_queue /pid == $1/ {
  $c = arg1;
  printf("q %d %llu %llu %llu %d\n", pid, nsecs, *(uint64*)($c + 120), *(uint64*)($c + 168), *(uint8*)(*(uint64*)($c + 144)));
}
uprobe:/usr/sbin/tgtd:target_cmd_done /pid == $1/ {
  $c = arg0;
  printf("r %d %llu %llu %llu %d\n", pid, nsecs, *(uint64*)($c + 120), *(uint64*)($c + 168), *(int32*)($c + 176));
}
"#;

/// target_mgmt_request(tid, itn_id, req_id, function, lun, tag, host_no).
const BPFTRACE_TMF: &str = r#"
uprobe:/usr/sbin/tgtd:target_mgmt_request /pid == $1/ {
  printf("m %d %llu %d %llu %llu %d %llu\n", pid, nsecs, arg0, arg1, arg2, arg3, arg5);
}
uretprobe:/usr/sbin/tgtd:target_mgmt_request /pid == $1/ {
  printf("M %d %llu %d\n", pid, nsecs, retval);
}
"#;

impl Script {
    pub fn name(self) -> String {
        match self {
            Script::Lean => "bpftrace (lean's probe points)".to_owned(),
            Script::LeanTmf => "bpftrace (lean's points, TMF request+return)".to_owned(),
            Script::Empty(f) => format!("bpftrace: empty uprobe on {f}"),
            Script::Profile => "bpftrace profile".to_owned(),
        }
    }

    /// The script for the tgtd binary at `tgtd` (the one the bench runs:
    /// Debian's, or a build named by `TGT_TRACE_TGTD`).
    pub fn source(self, tgtd: &std::path::Path) -> String {
        let begin = "BEGIN { printf(\"ready\\n\"); }\n";
        let at = |script: &str| script.replace("/usr/sbin/tgtd", &tgtd.display().to_string());
        match self {
            Script::Lean => format!("{begin}{}", at(BPFTRACE_LEAN)),
            Script::LeanTmf => format!("{begin}{}{}", at(BPFTRACE_LEAN), at(BPFTRACE_TMF)),
            Script::Empty(f) => format!("{begin}uprobe:{}:{f} /pid == $1/ {{ }}\n", tgtd.display()),
            Script::Profile => format!(
                "{begin}profile:hz:499 /pid == $1/ {{ @[kstack(8), ustack(8)] = count(); }}\n"
            ),
        }
    }
}

/// Drops as a trace's summary line gives them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drops {
    pub ring_full: u64,
    pub read_failed: u64,
    pub decode_errors: u64,
    /// Lines the trace's writer could not deliver (a slow output reader).
    pub sink_slow: u64,
}

impl Drops {
    pub fn total(self) -> u64 {
        self.ring_full + self.read_failed + self.decode_errors + self.sink_slow
    }

    pub fn add(&mut self, other: Drops) {
        self.ring_full += other.ring_full;
        self.read_failed += other.read_failed;
        self.decode_errors += other.decode_errors;
        self.sink_slow += other.sink_slow;
    }
}

/// What a tracer left when it was stopped.
#[derive(Debug, Default)]
pub struct Stopped {
    /// tgt-trace: its summary line's drops and events.
    pub drops: Option<Drops>,
    pub events: Option<u64>,
    /// bpftrace, when asked to keep it: what it printed (its maps at exit).
    pub output: String,
    /// tgt-trace, when asked for it: `tgt-trace report --json` of the trace.
    pub report: Option<serde_json::Value>,
}

/// A running tracer, attached. Dropping it stops it.
pub struct Tracer {
    child: Option<Child>,
    kind: Kind,
}

enum Kind {
    /// Runs `sh -c 'echo attached; read x'` as its COMMAND: the line says the
    /// probes are attached; closing the shell's stdin ends the recording.
    TgtTrace {
        stdin: Option<ChildStdin>,
        trace: PathBuf,
    },
    /// Its stdout is read by a thread (kept or discarded) after "ready".
    Bpftrace { output: Option<JoinHandle<Vec<u8>>> },
}

/// The tracer dies with the benchmark (SIGTERM drains tgt-trace like SIGINT).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent; it runs in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

impl Tracer {
    fn tgt_trace(
        tgtd: &Tgtd,
        set: &str,
        ring: Option<u32>,
        sample: Option<u8>,
    ) -> anyhow::Result<Tracer> {
        let trace = tgtd.dir.join("bench.ndjson");
        let log = tgtd.dir.join("tracer.log");
        let mut cmd = Command::new(root().join("target/release/tgt-trace"));
        cmd.args(["record", "--pid", &tgtd.pid().to_string(), "--probes", set])
            .args(
                ring.map(|r| ["--ring-size".to_owned(), r.to_string()])
                    .iter()
                    .flatten(),
            )
            .args(
                sample
                    .map(|p| {
                        [
                            "--sample".to_owned(),
                            format!("{p}%"),
                            "--sample-period".to_owned(),
                            format!("{SAMPLE_PERIOD_S}s"),
                        ]
                    })
                    .iter()
                    .flatten(),
            )
            .arg("-o")
            .arg(&trace)
            .args(["--", "sh", "-c", "echo attached; read x; exit 0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).context("creating the tracer's log")?);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting tgt-trace")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("tgt-trace's stdout")?;
        let mut tracer = Tracer {
            child: Some(child),
            kind: Kind::TgtTrace { stdin, trace },
        };
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .context("reading tgt-trace's COMMAND")?;
        if line.trim() != "attached" {
            tracer.stop_quietly();
            bail!(
                "tgt-trace record --probes {set} did not attach: {}",
                log_tail(&log)
            );
        }
        Ok(tracer)
    }

    /// bpftrace with `script`; `keep` keeps what it prints for [`Stopped::output`].
    pub fn bpftrace(tgtd: &Tgtd, script: &str, keep: bool) -> anyhow::Result<Tracer> {
        let log = tgtd.dir.join("tracer.log");
        let mut cmd = Command::new("bpftrace");
        cmd.args(["-e", script, &tgtd.pid().to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(&log).context("creating the tracer's log")?);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().context("starting bpftrace")?;
        let stdout = child.stdout.take().context("bpftrace's stdout")?;
        let mut tracer = Tracer {
            child: Some(child),
            kind: Kind::Bpftrace { output: None },
        };
        // bpftrace runs BEGIN once every probe is attached.
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                tracer.stop_quietly();
                bail!(
                    "bpftrace exited before attaching its probes: {}",
                    log_tail(&log)
                );
            }
            if line.trim() == "ready" {
                break;
            }
        }
        // The rest is consumed as a terminal would; kept only when asked.
        let thread = std::thread::spawn(move || {
            let mut kept = Vec::new();
            if keep {
                let _ = reader.read_to_end(&mut kept);
            } else {
                let _ = std::io::copy(&mut reader, &mut std::io::sink());
            }
            kept
        });
        tracer.kind = Kind::Bpftrace {
            output: Some(thread),
        };
        Ok(tracer)
    }

    /// The tracer's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The tracer's CPU time so far (all its threads, user and system).
    pub fn cpu(&self) -> Duration {
        self.child
            .as_ref()
            .and_then(|c| cpu_time(c.id()))
            .unwrap_or_default()
    }

    /// Stops the tracer, waits for it, and collects what it left.
    pub fn stop(mut self) -> anyhow::Result<Stopped> {
        self.finish(false)
    }

    /// As [`Tracer::stop`], and for tgt-trace the matcher's report on the
    /// trace ([`Stopped::report`]) before the trace is removed.
    pub fn stop_with_report(mut self) -> anyhow::Result<Stopped> {
        self.finish(true)
    }

    fn stop_quietly(&mut self) {
        let _ = self.finish(false);
    }

    fn finish(&mut self, report: bool) -> anyhow::Result<Stopped> {
        let Some(mut child) = self.child.take() else {
            return Ok(Stopped::default());
        };
        let mut stopped = Stopped::default();
        match &mut self.kind {
            Kind::TgtTrace { stdin, trace } => {
                // The COMMAND reads EOF and exits; tgt-trace drains and writes
                // its summary.
                drop(stdin.take());
                let status = child.wait().context("waiting for tgt-trace")?;
                let summary = last_line(trace);
                let reported = (report && status.success()).then(|| report_json(trace));
                let _ = std::fs::remove_file(&*trace);
                anyhow::ensure!(status.success(), "tgt-trace record exited with {status}");
                stopped.report = reported.transpose()?;
                let summary: serde_json::Value = summary
                    .as_deref()
                    .and_then(|l| serde_json::from_str(l).ok())
                    .filter(|v: &serde_json::Value| v["type"] == "summary")
                    .context("the trace has no summary line")?;
                let drop_count = |k: &str| summary["drops"][k].as_u64().unwrap_or(0);
                stopped.drops = Some(Drops {
                    ring_full: drop_count("ring_full"),
                    read_failed: drop_count("read_failed"),
                    decode_errors: drop_count("decode_errors"),
                    sink_slow: drop_count("sink_slow"),
                });
                stopped.events = summary["events"].as_u64();
            }
            Kind::Bpftrace { output } => {
                // SAFETY: signalling our own child, which has not been reaped.
                unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                let _ = child.wait();
                if let Some(thread) = output.take() {
                    stopped.output =
                        String::from_utf8_lossy(&thread.join().unwrap_or_default()).into_owned();
                }
            }
        }
        Ok(stopped)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.stop_quietly();
    }
}

/// `tgt-trace report --json` of a trace: the matcher's summary, replayed
/// by the same binary that recorded it (xtask does not link tgt-trace's
/// library: it must build before the eBPF toolchain exists).
fn report_json(trace: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(root().join("target/release/tgt-trace"))
        .args(["report", "--json"])
        .arg(trace)
        .stdin(Stdio::null())
        .output()
        .context("running tgt-trace report")?;
    anyhow::ensure!(
        out.status.success(),
        "tgt-trace report --json exited with {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    serde_json::from_slice(&out.stdout).context("parsing tgt-trace report --json")
}

/// The last line of a file, read from its end (traces are large).
fn last_line(path: &Path) -> Option<String> {
    let mut file = File::open(path).ok()?;
    let len = file.metadata().ok()?.len();
    let from = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(from)).ok()?;
    let mut tail = String::new();
    file.read_to_string(&mut tail).ok()?;
    tail.lines().last().map(str::to_owned)
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().rev().take(5).collect();
    let tail = lines.into_iter().rev().collect::<Vec<_>>().join(" / ");
    if tail.is_empty() {
        "(it printed nothing)".to_owned()
    } else {
        tail
    }
}

/// read and write system calls a process has made (`syscr` + `syscw` of
/// /proc/PID/io).
pub fn rw_syscalls(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            matches!(k, "syscr" | "syscw")
                .then(|| v.trim().parse::<u64>().ok())
                .flatten()
        })
        .sum()
}

/// utime + stime of a process (all its threads), from /proc/PID/stat.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may hold spaces: fields are
    // counted after the last ')'. utime and stime are fields 14 and 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let hz = u64::try_from(hz).ok().filter(|h| *h > 0)?;
    Some(Duration::from_nanos((utime + stime) * 1_000_000_000 / hz))
}

/// `iscsi-perf -m 32 -b 1` for `seconds`: its average IOPS.
pub fn iscsi_perf(tgtd: &Tgtd, seconds: u64) -> anyhow::Result<f64> {
    let out = Command::new("timeout")
        .args(["-k", "2", "-s", "INT", &seconds.to_string()])
        .args(["iscsi-perf", "-m", "32", "-b", "1", &tgtd.url(LUN.into())])
        .stdin(Stdio::null())
        .output()
        .context("running iscsi-perf")?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    text.lines()
        .rev()
        .find_map(|l| {
            let rest = &l[l.find("iops average ")? + "iops average ".len()..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(rest.len());
            rest[..end].parse::<f64>().ok()
        })
        .with_context(|| {
            format!(
                "iscsi-perf printed no IOPS ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

fn login(tgtd: &Tgtd, name: &str) -> anyhow::Result<Session> {
    let options = LoginOptions::new(
        format!("iqn.2026-11.io.tgt-trace:bench-{name}"),
        &tgtd.target_iqn,
    );
    Session::login(tgtd.portal, &options).with_context(|| format!("logging in as bench-{name}"))
}

/// Round-trip times of READ(10) of one block, one at a time (queue depth of
/// one) on one session, for `duration`: what a command waits for each
/// probe hit it takes, with nothing else in tgtd's event loop.
pub fn qd1_latencies(tgtd: &Tgtd, duration: Duration) -> anyhow::Result<Vec<Duration>> {
    let mut session = login(tgtd, "qd1")?;
    session
        .test_unit_ready(LUN)
        .context("TEST UNIT READY after login")?;
    let mut out = Vec::new();
    let start = Instant::now();
    while start.elapsed() < duration {
        let lba = (out.len() % 1024) as u32;
        let sent = Instant::now();
        let itt = session.submit(ScsiCommand::read10(LUN, lba, 1, 512))?;
        let r = session.wait_scsi(itt, Duration::from_secs(10))?;
        out.push(sent.elapsed());
        anyhow::ensure!(
            r.status == scsi_status::GOOD,
            "READ answered {:#x}",
            r.status
        );
    }
    let _ = session.logout();
    Ok(out)
}

/// READ(10) of one block, paced to a fixed rate over a few sessions.
pub struct PacedLoad {
    sessions: Vec<Session>,
}

/// The sentence a section adds when paced READs failed over its runs;
/// empty when none did.
pub fn failed_reads_note(failed: u64) -> String {
    if failed > 0 {
        format!(" {failed} READs were answered with a status other than GOOD.")
    } else {
        String::new()
    }
}

/// What a paced run did.
pub struct Paced {
    pub completed: u64,
    /// Responses other than GOOD.
    pub failed: u64,
    pub elapsed: Duration,
}

impl PacedLoad {
    /// Logs `sessions` sessions in (before anything is measured).
    /// Each answers a TEST UNIT READY first: a new I_T nexus's first command
    /// gets the LUN's UNIT ATTENTION, which is not what is measured.
    pub fn login(tgtd: &Tgtd, sessions: usize) -> anyhow::Result<PacedLoad> {
        let sessions = (0..sessions)
            .map(|i| {
                let mut session = login(tgtd, &format!("paced-{i}"))?;
                session
                    .test_unit_ready(LUN)
                    .context("TEST UNIT READY after login")?;
                Ok(session)
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(PacedLoad { sessions })
    }

    /// Each session submits on its own schedule (`rate / sessions` per
    /// second, by the clock: late ticks catch up) and reaps its answers
    /// while it waits for the next one. Ends with every answer in.
    pub fn run(self, rate: u32, duration: Duration) -> anyhow::Result<Paced> {
        let per_session = f64::from(rate) / self.sessions.len() as f64;
        let start = Instant::now();
        let threads: Vec<_> = self
            .sessions
            .into_iter()
            .map(|session| {
                std::thread::spawn(move || paced_session(session, per_session, start, duration))
            })
            .collect();
        let mut total = Paced {
            completed: 0,
            failed: 0,
            elapsed: Duration::ZERO,
        };
        for thread in threads {
            let (completed, failed) = thread
                .join()
                .map_err(|_| anyhow::anyhow!("a paced session panicked"))??;
            total.completed += completed;
            total.failed += failed;
        }
        total.elapsed = start.elapsed();
        Ok(total)
    }
}

fn paced_session(
    mut session: Session,
    rate: f64,
    start: Instant,
    duration: Duration,
) -> anyhow::Result<(u64, u64)> {
    let mut in_flight = std::collections::VecDeque::new();
    let (mut submitted, mut completed, mut failed) = (0u64, 0u64, 0u64);
    let mut reap = |session: &mut Session, itt: Itt, timeout: Duration| match session
        .wait_scsi(itt, timeout)
    {
        Ok(r) => {
            completed += 1;
            failed += u64::from(r.status != scsi_status::GOOD);
            Ok(true)
        }
        Err(tgt_trace_e2e::iscsi::Error::Timeout { .. }) => Ok(false),
        Err(e) => Err(e),
    };
    loop {
        let now = Instant::now();
        let elapsed = now - start;
        if elapsed >= duration {
            break;
        }
        let due = (elapsed.as_secs_f64() * rate) as u64;
        while submitted < due {
            let lba = (submitted % 1024) as u32;
            in_flight.push_back(session.submit(ScsiCommand::read10(LUN, lba, 1, 512))?);
            submitted += 1;
        }
        let next = start + Duration::from_secs_f64((submitted + 1) as f64 / rate);
        let wait = next.saturating_duration_since(Instant::now());
        match in_flight.front().copied() {
            // Wait for the oldest answer, but no longer than the next tick.
            Some(itt) => {
                if reap(&mut session, itt, wait)? {
                    in_flight.pop_front();
                }
            }
            None => std::thread::sleep(wait),
        }
    }
    while let Some(itt) = in_flight.pop_front() {
        anyhow::ensure!(
            reap(&mut session, itt, Duration::from_secs(10))?,
            "no answer to READ {itt} in 10 s"
        );
    }
    let _ = session.logout();
    Ok((completed, failed))
}

/// ABORT TASK for tags that never existed (15 of 16) and ABORT TASK SET on
/// a session with nothing in flight (1 of 16), one at a time, as fast as
/// tgtd answers, on a session of its own.
pub struct AbortLoop {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    thread: Option<JoinHandle<anyhow::Result<()>>>,
}

impl AbortLoop {
    pub fn start(tgtd: &Tgtd) -> anyhow::Result<AbortLoop> {
        let mut session = login(tgtd, "aborter")?;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, done) = (stop.clone(), done.clone());
            std::thread::spawn(move || {
                let mut n: u32 = 0;
                while !stop.load(Ordering::Relaxed) {
                    let tmf = if n % 16 == 15 {
                        Tmf::abort_task_set(LUN)
                    } else {
                        // This session's own tags start at 1; these are never used.
                        Tmf::abort_task(LUN, Itt(0x8000_0000 | (n & 0x3fff_ffff)))
                    };
                    session
                        .task_management(tmf)
                        .context("ABORT TASK loop: no answer")?;
                    n = n.wrapping_add(1);
                    done.fetch_add(1, Ordering::Relaxed);
                }
                let _ = session.logout();
                Ok(())
            })
        };
        Ok(AbortLoop {
            stop,
            done,
            thread: Some(thread),
        })
    }

    /// TMFs answered so far.
    pub fn answered(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            thread
                .join()
                .map_err(|_| anyhow::anyhow!("the ABORT TASK loop panicked"))??;
        }
        Ok(self.answered())
    }
}

impl Drop for AbortLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The TMF loop alone for `duration`: TMFs answered per second, and tgtd's
/// CPU time per TMF (µs).
pub fn tmf_loop(tgtd: &Tgtd, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let aborts = AbortLoop::start(tgtd)?;
    let cpu0 = cpu_time(tgtd.pid()).unwrap_or_default();
    let (start, first) = (Instant::now(), aborts.answered());
    // The measurement window itself, not a wait for some state.
    std::thread::sleep(duration);
    let (elapsed, last) = (start.elapsed(), aborts.answered());
    let cpu1 = cpu_time(tgtd.pid()).unwrap_or_default();
    aborts.stop()?;
    let n = (last - first).max(1) as f64;
    Ok((
        n / elapsed.as_secs_f64(),
        (cpu1 - cpu0).as_secs_f64() * 1e6 / n,
    ))
}

/// tgtd's CPU time per command (µs) under the paced load, and the rate
/// reached.
pub fn paced_cpu(tgtd: &Tgtd, rate: u32, duration: Duration) -> anyhow::Result<(f64, f64)> {
    let load = PacedLoad::login(tgtd, PACED_SESSIONS)?;
    let cpu0 = cpu_time(tgtd.pid()).unwrap_or_default();
    let paced = load.run(rate, duration)?;
    let cpu1 = cpu_time(tgtd.pid()).unwrap_or_default();
    let n = paced.completed.max(1) as f64;
    Ok((
        (cpu1 - cpu0).as_secs_f64() * 1e6 / n,
        n / paced.elapsed.as_secs_f64(),
    ))
}
