//! `tgt-trace record`: attach, stream events to NDJSON, stop on a signal, a
//! duration or the end of a command, and account for every event.

use std::{
    ffi::OsString,
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom, Write},
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::ExitStatus,
    sync::Arc,
    time::Duration,
};

use tokio::sync::Notify;

use crate::{
    correlate::Config,
    pipeline::Driver,
    probe::{ProbeError, TraceOptions},
    sink::{Sink, SinkError, lines, ndjson},
    source::probes::{self, LiveError, Stops},
    trace::Summary,
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
    /// Sinks of the embedding program besides the NDJSON output (the live
    /// TUI's screen). Each takes the same stream through the same driver,
    /// and none may block it.
    pub sinks: Vec<Box<dyn Sink>>,
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
    #[error(transparent)]
    Sink(SinkError),
}

/// How long the end of a recording waits for a pipe's reader to take what
/// is left, and for a file's last writes. A pipe's reader has had all the
/// time of the probes' detaching (the kernel removes uprobes one grace
/// period at a time, about 80 ms each here) to take what was written
/// before; a stuck one would not take more in any time.
const PIPE_FINAL_FLUSH: Duration = Duration::from_millis(200);
const FILE_FINAL_FLUSH: Duration = Duration::from_secs(10);

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
    let failed = |e: LiveError| match e {
        LiveError::Sink(SinkError { sink, source }) if sink == ndjson::NAME => {
            if to_stdout && source.kind() == io::ErrorKind::BrokenPipe {
                RecordError::OutputClosed
            } else {
                RecordError::Output {
                    target: target_name.clone(),
                    source,
                }
            }
        }
        LiveError::Sink(e) => RecordError::Sink(e),
        LiveError::Probe(e) => RecordError::Probe(e),
        LiveError::Command { command, source } => RecordError::Command { command, source },
        LiveError::Signal(e) => RecordError::Signal(e),
    };
    let (file, final_flush): (Option<Box<dyn Write + Send>>, Duration) = match &opts.output {
        // A pipe's reader may never read: the end is not held up for it.
        Output::Stdout => (Some(Box::new(io::stdout())), PIPE_FINAL_FLUSH),
        Output::File(path) => (
            Some(Box::new(create_output(path, opts.private)?)),
            FILE_FINAL_FLUSH,
        ),
        Output::None => (None, PIPE_FINAL_FLUSH),
    };
    let attached = probes::attach(&opts.trace)?;
    let config = opts
        .matched
        .as_ref()
        .map(|m| m.config.clone())
        .unwrap_or_default();
    let sinks = sinks(file, opts.matched.as_ref(), opts.sinks);
    let driver = Driver::new(&attached.header, config, sinks);
    let stops = Stops {
        duration: opts.duration,
        command: opts.command,
        poll: opts.poll,
        summary_every: opts.matched.as_ref().and_then(|m| m.summary_every),
        stop: opts.stop,
        final_flush,
        quiet: opts.quiet,
    };
    let ended = probes::run(attached, driver, &stops)
        .await
        .map_err(failed)?;
    let summary = ended.summary;
    if !opts.quiet {
        for loss in &summary.sinks {
            let when = match loss.cause.as_str() {
                "unsent" => format!("not taken within {final_flush:?} at the end"),
                _ => "dropped while recording".to_owned(),
            };
            if loss.sink == ndjson::NAME {
                eprintln!(
                    "tgt-trace: the reader of {target_name} was too slow: {} {} {when} \
                     (sink_slow; the trace is incomplete, and check gives no verdict on it)",
                    loss.lost, loss.unit
                );
            } else {
                eprintln!(
                    "tgt-trace: the {} sink was too slow: {} {} {when}",
                    loss.sink, loss.lost, loss.unit
                );
            }
        }
    }
    Ok(RecordOutcome {
        summary,
        command_status: ended.command_status,
    })
}

/// The sinks of a recording: where they are chosen. A new sink is one more
/// line here.
fn sinks(
    file: Option<Box<dyn Write + Send>>,
    matched: Option<&Matching>,
    embedded: Vec<Box<dyn Sink>>,
) -> Vec<Box<dyn Sink>> {
    let mut sinks: Vec<Box<dyn Sink>> = Vec::new();
    if let Some(file) = file {
        sinks.push(Box::new(ndjson::NdjsonSink::new(
            file,
            lines::DEFAULT_BUDGET,
            matched.is_some(),
            matched.is_none_or(|m| m.events),
        )));
    }
    sinks.extend(embedded);
    sinks
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
