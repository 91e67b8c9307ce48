//! `tgt-trace record`.

use std::{process::ExitCode, time::Duration};

use anyhow::Context as _;
use tgt_trace::record::{Matching, Output, RecordError, RecordOptions, record};

use super::{
    args::{AttachArgs, MatchArgs, parse_duration},
    exit,
};

#[derive(clap::Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Output file, or - for standard output. Created 0644 and never
    /// through a symbolic link.
    #[arg(short, long, value_name = "FILE", default_value = "-")]
    pub output: String,
    /// Create the output file 0600 (the trace names initiators and hosts).
    #[arg(long)]
    pub private: bool,
    /// Stop after this long (e.g. 30s, 500ms, 2m).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Also write the matcher's records (command, tmf, orphan, matched_summary
    /// lines) right after the events that concluded them.
    #[arg(long)]
    pub matched: bool,
    /// With --matched: a matched_summary snapshot this often (e.g. 10s).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "matched")]
    pub summary_every: Option<Duration>,
    /// With --matched: write only the header, the matched lines and the
    /// summaries, not the events (a small trace that report and check
    /// read; replay and the TUI need the events).
    #[arg(long, requires = "matched")]
    pub no_events: bool,
    #[command(flatten)]
    pub matching: MatchArgs,
    /// Run this command once the probes are attached; stop when it exits,
    /// and exit with its status.
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

impl RecordArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        let attach = &self.attach;
        let opts = RecordOptions {
            trace: attach.trace_options()?,
            output: if self.output == "-" {
                Output::Stdout
            } else {
                Output::File(self.output.into())
            },
            duration: self.duration,
            command: self.command,
            poll: attach.poll,
            matched: self.matched.then(|| Matching {
                config: self.matching.config(),
                summary_every: self.summary_every,
                events: !self.no_events,
            }),
            stop: None,
            quiet: false,
            private: self.private,
            sinks: Vec::new(),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let outcome = match runtime.block_on(record(opts)) {
            Ok(outcome) => outcome,
            // `record ... | head`: the reader has what it wanted.
            Err(RecordError::OutputClosed) => {
                eprintln!("tgt-trace: standard output was closed; recording stopped");
                return Ok(ExitCode::SUCCESS);
            }
            Err(e) => return Err(e.into()),
        };
        let s = &outcome.summary;
        eprintln!(
            "tgt-trace: {} events, {} dropped (ring full {}, unreadable {}, undecodable {}{}), {:.3}s, stopped by {}",
            s.events,
            s.drops.total(),
            s.drops.ring_full,
            s.drops.read_failed,
            s.drops.decode_errors,
            match (s.drops.sink_slow, s.drops.walk_truncated) {
                (0, 0) => String::new(),
                (slow, walks) => format!(
                    "{}{}",
                    if slow > 0 {
                        format!(", output's reader too slow {slow} lines")
                    } else {
                        String::new()
                    },
                    if walks > 0 {
                        format!(", TMF walks cut short {walks}")
                    } else {
                        String::new()
                    },
                ),
            },
            s.duration_ns as f64 / 1e9,
            s.stopped_by
        );
        let found = &s.layout_violations;
        if found.total() > 0 {
            eprintln!("tgt-trace: LAYOUT: {}", found.inconclusive_reason());
            for v in &found.examples {
                eprintln!("tgt-trace:   {} at {}: {}", v.check, v.event, v.detail);
            }
        }
        if found.untracked > 0 {
            eprintln!(
                "tgt-trace: {} commands were not tracked by the layout checks (more in flight \
                 than they hold); their identity was not checked",
                found.untracked
            );
        }
        Ok(match outcome.command_status {
            Some(status) => ExitCode::from(status.code().map_or(exit::FAILURE, |c| c as u8)),
            None => ExitCode::SUCCESS,
        })
    }
}
