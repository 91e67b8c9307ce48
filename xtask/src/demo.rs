//! The main job: a scratch tgtd on 127.0.0.1, a looping workload that makes
//! tgtd abort and defer, and tgt-trace watching it.
//!
//! The workload: libiscsi's throughput and TMF tests, and the project's own
//! initiator holding a READ in the backing store (the slow-I/O gate) while it
//! sends ABORT TASK (deferred), then ABORT TASK for a tag that never existed
//! (an orphan), once a second.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, Write as _},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tgt_trace_e2e::{
    slowio::SlowIo,
    tgtd::{Tgtd, TgtdOptions},
    workload::{self, HELD_LBA},
};

use crate::{
    owned::{self, Registration, note},
    root, run_step,
};

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

pub struct Options {
    /// Stop after this long (0: when stopped).
    pub seconds: u64,
    pub view: View,
    /// Where the trace is saved.
    pub save: PathBuf,
    /// Save every event too, not only the matched lines and summaries.
    pub keep_events: bool,
}

/// The default place of the saved trace.
pub fn default_save() -> PathBuf {
    root().join("target/demo.ndjson")
}

/// A scratch tgtd, registered so that a signal's last resort stops it too.
/// Fields drop in order: tgtd is stopped before it is unregistered.
pub(crate) struct Scratch {
    pub tgtd: Tgtd,
    _registration: Registration,
}

pub(crate) fn scratch_tgtd(env: Vec<(String, String)>) -> anyhow::Result<Scratch> {
    let tgtd = Tgtd::start(&TgtdOptions {
        env,
        ..TgtdOptions::default()
    })
    .context("starting a scratch tgtd")?;
    let registration = Registration::group(tgtd.pid(), Some(tgtd.dir.clone()));
    Ok(Scratch {
        tgtd,
        _registration: registration,
    })
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    crate::build_release(&["tgt-trace", "tgt-slowio"])?;
    crate::setup::require_root("the demo starts tgtd and loads eBPF probes")?;
    if owned::stopping().is_some() {
        return Ok(());
    }
    let gate = Arc::new(SlowIo::new("demo").context("the slow-I/O gate")?);
    let env = gate
        .env("lun1.img", u64::from(HELD_LBA) * 512, 4096)
        .context("the slow-I/O library")?;
    let scratch = scratch_tgtd(env)?;
    let tgtd = &scratch.tgtd;
    tgtd.add_lun(1, 64 << 20)
        .context("adding a file-backed LUN")?;
    tgtd.add_null_lun(2).context("adding a null LUN")?;
    note(&format!(
        "demo: tgtd pid {} on {} (control {}), target {}",
        tgtd.pid(),
        tgtd.portal,
        tgtd.control,
        tgtd.target_iqn
    ));

    // tgt-trace writes the trace into tgtd's scratch directory (removed with
    // it); what is saved is taken from it at the end. The TUI follows the
    // events in its file, so that one holds them all; the text view's holds
    // only the matched lines and summaries unless --keep-events.
    let written = tgtd.dir.join("live.ndjson");
    // A complete first line in this file is the header of this run.
    let _ = std::fs::remove_file(&written);
    let mut tracer = Command::new(root().join("target/release/tgt-trace"));
    match opts.view {
        View::Tui => tracer.arg("tui"),
        View::Text => tracer.args(["record", "--matched", "--summary-every", "1s"]),
    };
    tracer
        .args(["--pid", &tgtd.pid().to_string(), "-o"])
        .arg(&written);
    if opts.view == View::Text {
        if !opts.keep_events {
            tracer.arg("--no-events");
        }
        if opts.seconds > 0 {
            tracer.args(["--duration", &format!("{}s", opts.seconds)]);
        }
        tracer.stdin(Stdio::null());
    }
    let mut tracer = owned::Tracer::new(tracer.spawn().context("starting tgt-trace")?);

    // The load starts once the probes are attached (tgt-trace writes the
    // header then), so that the trace has the first TMFs.
    if !wait_for_header(&written, &mut tracer)? {
        return Ok(());
    }
    // The TUI owns the screen: the aborter's complaints go to a file then.
    let complaints: Box<dyn std::io::Write + Send> = match opts.view {
        View::Tui => log_file("demo-aborter.log")?,
        View::Text => Box::new(std::io::stderr()),
    };
    let load = Load::start(tgtd, &gate, complaints)?;
    let status = match opts.view {
        View::Tui => tracer.wait().context("waiting for tgt-trace tui"),
        View::Text => {
            note(&format!(
                "demo: probes attached, load started{}; Ctrl-C to stop",
                match opts.seconds {
                    0 => String::new(),
                    n => format!(" for {n} s"),
                }
            ));
            show(&written, &mut tracer)
        }
    };
    note("demo: stopping the load and tgtd");
    load.stop();
    save_from(&written, &opts.save, opts.keep_events)?;
    drop(scratch);
    let status = status?;
    if owned::stopping().is_none() {
        anyhow::ensure!(status.success(), "tgt-trace {status}");
    }
    report(&opts.save, opts.keep_events)
}

/// The demo's load on a scratch tgtd (`tgt_trace_e2e::workload`): the
/// libiscsi loop in a process group of its own, its throughput on a second
/// portal, and the aborter on a thread. The demo, `soak` and `soak --tui`
/// run the same.
pub(crate) struct Load {
    group: owned::Group,
    stop: Arc<AtomicBool>,
    gate: Arc<SlowIo>,
    aborter: std::thread::JoinHandle<()>,
}

impl Load {
    pub(crate) fn start(
        tgtd: &Tgtd,
        gate: &Arc<SlowIo>,
        complaints: Box<dyn std::io::Write + Send>,
    ) -> anyhow::Result<Load> {
        let portal = tgtd
            .add_portal()
            .context("a portal for the throughput load")?;
        let group =
            owned::Group::new(workload::start(tgtd, &portal).context("starting the workload")?);
        let stop = Arc::new(AtomicBool::new(false));
        let aborter = {
            let (portal, iqn) = (tgtd.portal, tgtd.target_iqn.clone());
            let (gate, stop) = (gate.clone(), stop.clone());
            std::thread::spawn(move || workload::abort_loop(portal, &iqn, &gate, &stop, complaints))
        };
        Ok(Load {
            group,
            stop,
            gate: gate.clone(),
            aborter,
        })
    }

    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // The aborter's READ may be held: let it finish so the round ends now.
        let _ = self.gate.release();
        let _ = self.aborter.join();
        self.group.stop();
    }
}

/// A log file in `target/`, for what would otherwise disturb a screen.
pub(crate) fn log_file(name: &str) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    let log = root().join("target").join(name);
    Ok(Box::new(
        File::create(&log).with_context(|| format!("creating {}", log.display()))?,
    ))
}

/// Waits until `path` has its first whole line (the header: the probes are
/// attached). False when the demo was stopped first; an error when
/// tgt-trace exited first (it said why on stderr) or took over 30 s.
fn wait_for_header(path: &Path, tracer: &mut owned::Tracer) -> anyhow::Result<bool> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::fs::read(path).is_ok_and(|b| b.contains(&b'\n')) {
            return Ok(true);
        }
        if owned::stopping().is_some() {
            return Ok(false);
        }
        if let Some(status) = tracer.try_wait()? {
            anyhow::bail!("tgt-trace exited before attaching its probes ({status})");
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "tgt-trace did not attach its probes within 30 s"
        );
        // Polling a file another process writes; bounded above.
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The saved trace: every line, or (by default) all but the events and the
/// periodic summary snapshots, which the final `matched_summary` sums up.
fn save_from(live: &Path, saved: &Path, keep_events: bool) -> anyhow::Result<()> {
    let mut input =
        BufReader::new(File::open(live).with_context(|| format!("{}", live.display()))?);
    let mut output = std::io::BufWriter::new(
        File::create(saved).with_context(|| format!("creating {}", saved.display()))?,
    );
    let mut line = Vec::new();
    loop {
        line.clear();
        // A line cut by a tgt-trace that was killed is left out.
        if input.read_until(b'\n', &mut line)? == 0 || !line.ends_with(b"\n") {
            break;
        }
        if keep_events
            || !(line.starts_with(EVENT_PREFIX.as_bytes())
                || line.starts_with(SNAPSHOT_PREFIX.as_bytes()))
        {
            output.write_all(&line)?;
        }
    }
    output.flush()?;
    Ok(())
}

/// How `record` begins an event line (the field order of its writer).
const EVENT_PREFIX: &str = r#"{"type":"event""#;
/// How it begins a periodic (not final) summary snapshot.
const SNAPSHOT_PREFIX: &str = r#"{"type":"matched_summary","final":false"#;

fn report(saved: &Path, keep_events: bool) -> anyhow::Result<()> {
    let size = std::fs::metadata(saved).map_or(0, |m| m.len());
    note(&format!(
        "demo: the trace is in {} ({:.1} MB: {}); the matcher's report:",
        saved.display(),
        size as f64 / 1e6,
        if keep_events {
            "every event and the matched lines"
        } else {
            "the matched lines and summaries; --keep-events keeps the events too"
        }
    ));
    run_step(
        "tgt-trace report",
        Command::new(root().join("target/release/tgt-trace"))
            .arg("report")
            .arg(saved),
    )
}

/// Shows the matcher's records as tgt-trace writes them to `path`: each
/// TMF and orphan as it is concluded, and a status line from each summary
/// snapshot, until tgt-trace exits. The file is read as it grows, so
/// tgt-trace never waits for this reader; without --keep-events it holds a
/// few lines a second, and event lines are skipped unparsed in any case.
fn show(path: &Path, tracer: &mut owned::Tracer) -> anyhow::Result<ExitStatus> {
    let mut reader =
        BufReader::new(File::open(path).with_context(|| format!("{}", path.display()))?);
    let started = Instant::now();
    let mut line = String::new();
    loop {
        // Whether it exited is asked before reading, so that nothing it
        // wrote before exiting is left unread.
        let exited = tracer.try_wait()?;
        loop {
            let n = reader.read_line(&mut line).context("reading the trace")?;
            if n == 0 || !line.ends_with('\n') {
                // At the end of what is written (a partial line waits).
                break;
            }
            print_line(&line, started);
            line.clear();
        }
        if let Some(status) = exited {
            return Ok(status);
        }
        // Polling a file another process writes.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints one trace line for people, ignoring a closed standard output (the
/// demo still has to clean up).
fn print_line(line: &str, started: Instant) {
    if line.starts_with(EVENT_PREFIX) {
        return;
    }
    let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
        return;
    };
    let text = match value["type"].as_str() {
        Some("tmf") => format!(
            "TMF  {} tag {:#010x} nexus {} ({}) -> {} {}, covered {}",
            value["function"].as_str().unwrap_or("?"),
            value["tag"].as_u64().unwrap_or(0),
            value["itn_id"],
            value["initiator"].as_str().unwrap_or("?"),
            value["outcome"].as_str().unwrap_or("?"),
            // An unanswered TMF has no latency: say why instead.
            match value["latency_ns"].as_u64() {
                Some(ns) => format!("in {} µs", ns / 1_000),
                None => format!("({})", value["cause"].as_str().unwrap_or("no response")),
            },
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
        Some("orphan") => format!(
            "ORPHAN {}: {}",
            value["kind"].as_str().unwrap_or("?"),
            value["detail"].as_str().unwrap_or("?")
        ),
        Some("matched_summary") => {
            let counts = &value["summary"]["counts"];
            let orphans: u64 = counts["orphans_by_kind"]
                .as_object()
                .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
            let drops: u64 = value["drops"]
                .as_object()
                .map_or(0, |o| o.values().filter_map(|v| v.as_u64()).sum());
            note(&format!(
                "demo: {:>4.0} s: {} events, {} commands, {} TMFs, {} orphans, {} drops",
                started.elapsed().as_secs_f64(),
                counts["events"],
                counts["commands_in"],
                counts["tmfs"],
                orphans,
                drops
            ));
            return;
        }
        Some("summary") => line.trim_end().to_owned(),
        _ => return,
    };
    let _ = writeln!(std::io::stdout(), "{text}");
}
