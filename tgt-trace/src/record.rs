//! `tgt-trace record`: attach, stream events to NDJSON, stop on a signal, a
//! duration or the end of a command, and account for every event.

use std::{
    collections::BTreeSet,
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::ExitStatus,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use std::sync::Arc;

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    correlate::{Config, Coverage, Matcher},
    event::Event,
    probe::{self, ProbeError, TraceOptions, Tracer},
    sink::lines::{self, LineSink},
    trace::{Drops, Header, Line, MatchedSummary, Summary},
};

/// Where the NDJSON goes.
#[derive(Debug, Clone)]
pub enum Output {
    Stdout,
    File(PathBuf),
    /// No NDJSON: the lines go to the in-process tap only (the live TUI
    /// without `-o`), and nothing is written to disk.
    None,
}

#[derive(Debug, Clone)]
pub struct RecordOptions {
    pub trace: TraceOptions,
    pub output: Output,
    pub duration: Option<Duration>,
    /// Run this command once the probes are attached; stop when it exits.
    pub command: Vec<OsString>,
    /// How often the ring buffer is drained (the probes do not wake us).
    pub poll: Duration,
    /// Also write the matcher's records (`--matched`).
    pub matched: Option<Matching>,
    /// Stops the recording, as a signal does, when notified: how an
    /// embedding program (the TUI) ends it without signalling itself.
    pub stop: Option<Arc<Notify>>,
    /// Say nothing on standard error: the TUI owns the terminal and shows
    /// the same on its screen.
    pub quiet: bool,
    /// Create the trace file 0600 instead of 0644 (`--private`).
    pub private: bool,
    /// An in-process consumer of every line (the live TUI): the lines of
    /// each drain as one batch on a bounded channel. A batch it has no room
    /// for is dropped and its lines counted (`sink_slow`): it never holds
    /// up the drain or the stop conditions.
    pub tap: Option<tokio::sync::mpsc::Sender<Vec<Line>>>,
}

/// The tap's side of the writer: the batch being gathered, and what could
/// not be handed over.
struct Tap {
    tx: tokio::sync::mpsc::Sender<Vec<Line>>,
    batch: Vec<Line>,
    dropped: u64,
}

impl Tap {
    fn hand_over(&mut self) {
        if self.batch.is_empty() {
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        let lines = batch.len() as u64;
        if self.tx.try_send(batch).is_err() {
            self.dropped += lines;
        }
    }
}

/// The matcher run alongside the recording.
#[derive(Debug, Clone)]
pub struct Matching {
    /// Its limits; the coverage is taken from the probes attached.
    pub config: Config,
    /// A `matched_summary` snapshot this often, if at all.
    pub summary_every: Option<Duration>,
    /// Write the event lines too; without them (`--no-events`) the trace
    /// is the header, the matched lines and the summaries: a few lines a
    /// second where the events are tens of thousands, for a long run or a
    /// slow reader. The matcher sees every event either way.
    pub events: bool,
}

/// How a recording ended.
#[derive(Debug)]
pub struct RecordOutcome {
    pub summary: Summary,
    /// The command's exit status, when one was run.
    pub command_status: Option<ExitStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(
        "cannot write the trace to {target}: {source}; every complete line written is kept \
         (a partial last line is removed); free space or pass -o elsewhere"
    )]
    Output {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{0} is a symbolic link, and tgt-trace does not write a trace through one \
         (it could point anywhere); pass the path of the file itself"
    )]
    OutputIsSymlink(PathBuf),
    /// The reader of standard output went away (`| head`): not a failure.
    #[error("standard output was closed; recording stopped")]
    OutputClosed,
    #[error("cannot run {command:?}: {source}; check the command after `--`")]
    Command {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] io::Error),
}

/// How long the end of a recording waits for a pipe's reader to take what
/// is left, and for a file's last writes. A pipe's reader has had all the
/// time of the probes' detaching (the kernel removes uprobes one grace
/// period at a time, about 80 ms each here) to take what was written
/// before; a stuck one would not take more in any time.
const PIPE_FINAL_FLUSH: Duration = Duration::from_millis(200);
const FILE_FINAL_FLUSH: Duration = Duration::from_secs(10);

/// How often, in drains, to look for tgtd processes that have exited.
const LIVENESS_EVERY: u32 = 10;

pub async fn record(opts: RecordOptions) -> Result<RecordOutcome, RecordError> {
    let file = match &opts.output {
        Output::File(path) => Some(path.clone()),
        Output::Stdout | Output::None => None,
    };
    let result = record_to(opts).await;
    if let (Err(RecordError::Output { .. }), Some(path)) = (&result, file) {
        // A full disk can cut the last line: a trace of whole lines stays
        // readable by replay, report and check.
        let _ = cut_partial_line(&path);
    }
    result
}

/// Creates (or truncates) a trace file: 0644, or 0600 when `private`; never
/// through a symbolic link, so a link planted at the path cannot redirect
/// a root-owned write.
pub fn create_output(path: &Path, private: bool) -> Result<File, RecordError> {
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| match source.raw_os_error() {
            Some(libc::ELOOP) => RecordError::OutputIsSymlink(path.to_owned()),
            _ => RecordError::Output {
                target: path.display().to_string(),
                source,
            },
        })?;
    if private {
        // An existing file keeps its mode through O_CREAT.
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|source| RecordError::Output {
                target: path.display().to_string(),
                source,
            })?;
    }
    Ok(file)
}

/// Truncates `path` after its last newline.
fn cut_partial_line(path: &Path) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let len = file.seek(SeekFrom::End(0))?;
    let mut end = len;
    let mut chunk = vec![0u8; 64 * 1024];
    while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let part = &mut chunk[..(end - start) as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(part)?;
        if let Some(at) = part.iter().rposition(|&b| b == b'\n') {
            return file.set_len(start + at as u64 + 1);
        }
        end = start;
    }
    file.set_len(0)
}

async fn record_to(opts: RecordOptions) -> Result<RecordOutcome, RecordError> {
    let target_name = match &opts.output {
        Output::Stdout => "standard output".to_owned(),
        Output::File(path) => path.display().to_string(),
        Output::None => "the screen".to_owned(),
    };
    let to_stdout = matches!(opts.output, Output::Stdout);
    let output_error = |source: io::Error| {
        if to_stdout && source.kind() == io::ErrorKind::BrokenPipe {
            RecordError::OutputClosed
        } else {
            RecordError::Output {
                target: target_name.clone(),
                source,
            }
        }
    };
    let (sink, final_flush): (Option<Box<dyn Write + Send>>, Duration) = match &opts.output {
        // A pipe's reader may never read: the end is not held up for it.
        Output::Stdout => (Some(Box::new(io::stdout())), PIPE_FINAL_FLUSH),
        Output::File(path) => (
            Some(Box::new(create_output(path, opts.private)?)),
            FILE_FINAL_FLUSH,
        ),
        Output::None => (None, PIPE_FINAL_FLUSH),
    };
    // Written by a thread of its own: a slow reader never holds up the
    // ring buffer's draining or the stop conditions (crate::sink::lines).
    let sink = sink.map(|sink| LineSink::new(sink, lines::DEFAULT_BUDGET));
    let mut tracer = Tracer::start(&opts.trace)?;
    let matcher = opts.matched.as_ref().map(|m| {
        Matcher::new(Config {
            coverage: Coverage::from_probes(tracer.points()),
            ..m.config.clone()
        })
    });
    let mut out = Writer {
        out: sink.map(|sink| io::BufWriter::with_capacity(1 << 16, sink)),
        tap: opts.tap.clone().map(|tx| Tap {
            tx,
            batch: Vec::new(),
            dropped: 0,
        }),
        events: opts.matched.as_ref().is_none_or(|m| m.events),
        matcher,
        records: Vec::new(),
        last_ts_ns: 0,
    };
    let pids = match opts.trace.pid {
        Some(pid) => vec![pid.get()],
        None => probe::running_processes(&opts.trace.binary.path),
    };
    let start_monotonic_ns = probe::monotonic_ns();
    let header = Header {
        schema_version: crate::SCHEMA_VERSION,
        tgt_trace_version: env!("CARGO_PKG_VERSION").to_owned(),
        tgtd_path: opts.trace.binary.path.display().to_string(),
        tgtd_build_id: opts.trace.binary.build_id.clone(),
        tgtd_layout: opts.trace.binary.layout.clone(),
        probe_set: opts.trace.set,
        probes: tracer.points().to_vec(),
        pids: pids.clone(),
        pid_filter: opts.trace.pid.map(|p| p.get()),
        start_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        start_monotonic_ns,
        ring_bytes: opts.trace.ring_bytes,
    };
    out.line(Line::Header(header)).map_err(output_error)?;
    out.flush().map_err(output_error)?;
    // Sessions opened before the probes were attached: their initiators'
    // names, from tgtd (through tgtadm), stamped with the trace's start.
    let mut events: u64 = 0;
    for &pid in &pids {
        match crate::existing::nexuses(pid, start_monotonic_ns) {
            Ok(found) => {
                for event in found {
                    events += 1;
                    out.event(event).map_err(output_error)?;
                }
            }
            Err(why) if !opts.quiet => eprintln!(
                "tgt-trace: the initiators of tgtd {pid}'s sessions opened before tracing \
                 are unnamed: {why}"
            ),
            Err(_) => {}
        }
    }
    if pids.is_empty() && !opts.quiet {
        eprintln!(
            "tgt-trace: no {} process is running yet; its processes are traced as they start",
            opts.trace.binary.path.display()
        );
    }

    let mut child = match opts.command.split_first() {
        Some((program, args)) => Some(
            tokio::process::Command::new(program)
                .args(args)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| RecordError::Command {
                    command: opts
                        .command
                        .iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" "),
                    source,
                })?,
        ),
        None => None,
    };

    let mut sigint = signal(SignalKind::interrupt()).map_err(RecordError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(RecordError::Signal)?;
    let mut ticker = tokio::time::interval(opts.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let summary_every = opts.matched.as_ref().and_then(|m| m.summary_every);
    let mut next_snapshot = summary_every.map(|every| tokio::time::Instant::now() + every);
    let deadline = opts.duration.map(|d| tokio::time::Instant::now() + d);

    let mut live: BTreeSet<u32> = pids.into_iter().collect();
    let mut exited: BTreeSet<u32> = BTreeSet::new();
    let mut drains: u32 = 0;
    let mut command_status = None;

    let stopped_by = loop {
        tokio::select! {
            _ = ticker.tick() => {
                drains = drains.wrapping_add(1);
                events += drain(&mut tracer, &mut out, &mut live, &exited).map_err(output_error)?;
                if drains.is_multiple_of(LIVENESS_EVERY) {
                    events += report_exits(&mut out, &mut live, &mut exited).map_err(output_error)?;
                }
                if let (Some(every), Some(at)) = (summary_every, next_snapshot)
                    && tokio::time::Instant::now() >= at
                {
                    next_snapshot = Some(at + every);
                    let mut drops = Drops::new(tracer.counters()?, tracer.decode_errors());
                    drops.sink_slow = out.dropped();
                    out.matched_summary(false, drops).map_err(output_error)?;
                }
                // A trace is read while it is written (tail -f, tests, the
                // TUI); one hand-over per drain keeps it current.
                out.flush().map_err(output_error)?;
                if let Some(e) = out.out.as_ref().and_then(|o| o.get_ref().take_error()) {
                    return Err(output_error(e));
                }
            }
            _ = sigint.recv() => break "signal",
            _ = sigterm.recv() => break "signal",
            () = notified(opts.stop.as_deref()) => break "stopped",
            () = sleep_until(deadline) => break "duration",
            status = wait_for(&mut child) => {
                command_status = Some(status.map_err(|source| RecordError::Command {
                    command: "the command".to_owned(),
                    source,
                })?);
                break "command exited";
            }
        }
    };

    // No probe fires once they are detached: everything they submitted is
    // in the ring then, and the last drain takes it all.
    tracer.detach();
    events += drain(&mut tracer, &mut out, &mut live, &exited).map_err(output_error)?;
    events += report_exits(&mut out, &mut live, &mut exited).map_err(output_error)?;
    let mut drops = Drops::new(tracer.counters()?, tracer.decode_errors());
    drops.sink_slow = out.dropped();
    out.matched_summary(true, drops).map_err(output_error)?;
    let mut summary = Summary {
        events,
        drops,
        duration_ns: probe::monotonic_ns().saturating_sub(start_monotonic_ns),
        stopped_by: stopped_by.to_owned(),
    };
    out.line(Line::Summary(summary.clone()))
        .map_err(output_error)?;
    // A bounded final flush: what the reader has not taken by then is
    // counted, and recording ends on time.
    let mut undelivered = lines::Undelivered::default();
    if let Some(tap) = &mut out.tap {
        let batch = std::mem::take(&mut tap.batch);
        let n = batch.len() as u64;
        if !batch.is_empty()
            && !matches!(
                tokio::time::timeout(final_flush, tap.tx.send(batch)).await,
                Ok(Ok(()))
            )
        {
            tap.dropped += n;
        }
        undelivered.dropped += tap.dropped;
    }
    if let Some(out) = out.out.take() {
        let sink = out.into_inner().map_err(|e| output_error(e.into_error()))?;
        let (file, error) = sink.close(final_flush);
        if let Some(e) = error {
            return Err(output_error(e));
        }
        undelivered.dropped += file.dropped;
        undelivered.unwritten += file.unwritten;
    }
    summary.drops.sink_slow = undelivered.dropped.saturating_add(undelivered.unwritten);
    if summary.drops.sink_slow > 0 && !opts.quiet {
        eprintln!(
            "tgt-trace: the reader of {target_name} was too slow: {} lines dropped while \
             recording and {} not taken within {:?} at the end (sink_slow; the trace is \
             incomplete, and check gives no verdict on it)",
            undelivered.dropped, undelivered.unwritten, final_flush
        );
    }
    Ok(RecordOutcome {
        summary,
        command_status,
    })
}

/// Never completes without a deadline.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Never completes without a stop handle.
async fn notified(stop: Option<&Notify>) {
    match stop {
        Some(stop) => stop.notified().await,
        None => std::future::pending().await,
    }
}

/// Never completes without a child.
async fn wait_for(child: &mut Option<tokio::process::Child>) -> io::Result<ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}

fn write_line(out: &mut impl Write, line: &Line) -> io::Result<()> {
    serde_json::to_writer(&mut *out, line).map_err(io::Error::other)?;
    out.write_all(b"\n")
}

/// The trace being written: each event, and with `--matched` what the
/// matcher concludes from it, right after it.
struct Writer {
    out: Option<io::BufWriter<LineSink>>,
    tap: Option<Tap>,
    /// Whether event lines are written (see [`Matching::events`]).
    events: bool,
    matcher: Option<Matcher>,
    records: Vec<crate::correlate::Record>,
    last_ts_ns: u64,
}

impl Writer {
    fn event(&mut self, event: Event) -> io::Result<()> {
        // The same clock `replay` uses, so both conclude the same.
        self.last_ts_ns = self.last_ts_ns.max(event.ts_ns());
        if let Some(matcher) = &mut self.matcher {
            matcher.push(&event, &mut self.records);
        }
        if self.events
            && let Some(out) = &mut self.out
        {
            write_line(out, &Line::Event(event.clone()))?;
        }
        // The tap drives a matcher of its own (the TUI's): every event.
        if let Some(tap) = &mut self.tap {
            tap.batch.push(Line::Event(event));
        }
        self.write_records()
    }

    /// A line to the output and the tap.
    fn line(&mut self, line: Line) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            write_line(out, &line)?;
        }
        if let Some(tap) = &mut self.tap {
            tap.batch.push(line);
        }
        Ok(())
    }

    /// Hands what is written so far on: to the output's writer thread, and
    /// as one batch to the tap.
    fn flush(&mut self) -> io::Result<()> {
        if let Some(out) = &mut self.out {
            out.flush()?;
        }
        if let Some(tap) = &mut self.tap {
            tap.hand_over();
        }
        Ok(())
    }

    /// Lines the output's reader or the tap could not take so far.
    fn dropped(&self) -> u64 {
        let file = self.out.as_ref().map_or(0, |o| o.get_ref().dropped());
        file + self.tap.as_ref().map_or(0, |t| t.dropped)
    }

    fn write_records(&mut self) -> io::Result<()> {
        // Taken and put back, so the buffer keeps its capacity.
        let mut records = std::mem::take(&mut self.records);
        let result = records
            .drain(..)
            .try_for_each(|record| self.line(Line::from(record)));
        self.records = records;
        result
    }

    /// A snapshot, or (`is_final`) closes what is open and sums up.
    fn matched_summary(&mut self, is_final: bool, drops: Drops) -> io::Result<()> {
        let Some(matcher) = &mut self.matcher else {
            return Ok(());
        };
        let summary = if is_final {
            matcher.finish(self.last_ts_ns, &mut self.records)
        } else {
            matcher.summary()
        };
        self.write_records()?;
        let line = Line::MatchedSummary(Box::new(MatchedSummary {
            is_final,
            at_ns: self.last_ts_ns,
            summary,
            drops,
            complete: is_final,
            skipped_lines: 0,
        }));
        self.line(line)
    }
}

fn drain(
    tracer: &mut Tracer,
    out: &mut Writer,
    live: &mut BTreeSet<u32>,
    exited: &BTreeSet<u32>,
) -> io::Result<u64> {
    let mut result = Ok(());
    let mut n = 0;
    tracer.drain(|event| {
        if result.is_err() {
            return;
        }
        let pid = event.pid();
        if !exited.contains(&pid) {
            live.insert(pid);
        }
        n += 1;
        result = out.event(event);
    });
    result.map(|()| n)
}

/// Emits a `process_exit` event for each traced tgtd that is gone.
fn report_exits(
    out: &mut Writer,
    live: &mut BTreeSet<u32>,
    exited: &mut BTreeSet<u32>,
) -> io::Result<u64> {
    let gone: Vec<u32> = live
        .iter()
        .copied()
        .filter(|&pid| !probe::process_alive(pid))
        .collect();
    for &pid in &gone {
        live.remove(&pid);
        exited.insert(pid);
        out.event(Event::ProcessExit {
            ts_ns: probe::monotonic_ns(),
            pid,
        })?;
    }
    Ok(gone.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tgt-trace-record-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        path
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn traces_are_created_0644_or_0600_when_private() {
        let open = scratch("open.ndjson");
        create_output(&open, false).expect("created");
        // 0644 less the umask: never writable by others.
        assert_eq!(mode(&open) & 0o622, 0o600, "{:o}", mode(&open));
        let private = scratch("private.ndjson");
        std::fs::write(&private, "old").expect("an older file");
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        create_output(&private, true).expect("created");
        assert_eq!(
            mode(&private),
            0o600,
            "an existing file is made private too"
        );
        assert_eq!(std::fs::read(&private).expect("read").len(), 0, "truncated");
    }

    #[test]
    fn a_symlink_at_the_output_path_is_refused_by_name() {
        let target = scratch("elsewhere");
        std::fs::write(&target, "precious").expect("target");
        let link = scratch("link.ndjson");
        std::os::unix::fs::symlink(&target, &link).expect("symlink");
        let err = create_output(&link, false).expect_err("refused");
        assert!(matches!(err, RecordError::OutputIsSymlink(_)), "{err:?}");
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).expect("read"), "precious");
    }

    #[test]
    fn a_partial_last_line_is_cut_and_whole_lines_are_kept() {
        let path = scratch("cut.ndjson");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").expect("write");
        cut_partial_line(&path).expect("cut");
        assert_eq!(
            std::fs::read_to_string(&path).expect("read"),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        // Whole lines only: nothing to cut.
        cut_partial_line(&path).expect("cut");
        assert_eq!(std::fs::read_to_string(&path).expect("read").len(), 16);
        // A single partial line: nothing is left.
        std::fs::write(&path, "x".repeat(100_000)).expect("write");
        cut_partial_line(&path).expect("cut");
        assert_eq!(std::fs::metadata(&path).expect("meta").len(), 0);
    }
}
