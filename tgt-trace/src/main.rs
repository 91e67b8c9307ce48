//! The `tgt-trace` command line. Errors become messages and documented exit
//! codes here; the library returns typed errors.

use std::{num::NonZeroU32, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tgt_trace::{
    check::{Budget, Evidence, check, exit_code},
    correlate::{Config, Record},
    probe::{ProbeSet, TraceOptions},
    reader::TraceReader,
    record::{Output, RecordOptions, record},
    report::{render_text, replay},
    tgtd::{DEFAULT_TGTD, TgtdBinary},
};

/// Exit codes, as the README documents them.
mod exit {
    pub const FAILURE: u8 = 1;
    pub const USAGE: u8 = 3;
}

#[derive(Parser)]
#[command(
    name = "tgt-trace",
    version,
    about = "eBPF tracer for the tgt SCSI target: TMFs, aborts and orphaned aborts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Clone)]
struct AttachArgs {
    /// The tgtd binary whose processes are traced.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_TGTD)]
    tgtd: PathBuf,
    /// Trace only this tgtd process (filtered in the kernel).
    #[arg(long, value_name = "PID")]
    pid: Option<NonZeroU32>,
    /// Probe set: tmf (1 hit per command), lean (3), full (4; adds queue-wait time).
    #[arg(long, value_enum, default_value = "lean")]
    probes: ProbeSet,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = parse_ring_size)]
    ring_size: u32,
    /// How often the ring buffer is drained.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    poll: Duration,
}

/// The matcher's limits.
#[derive(clap::Args, Clone)]
struct MatchArgs {
    /// A TMF without a response this long after its request is unanswered (orphan c).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    tmf_timeout: Duration,
    /// ABORT TASK finding nothing this soon after the tag's release is a race.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    race_window: Duration,
    /// Commands tracked at once; the oldest beyond this are evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_commands: usize,
    /// TMFs tracked at once; the oldest beyond this are evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    max_tmfs: usize,
}

impl MatchArgs {
    fn config(&self) -> Config {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Config {
            tmf_timeout_ns: ns(self.tmf_timeout),
            race_window_ns: ns(self.race_window),
            max_commands: self.max_commands.max(1),
            max_tmfs: self.max_tmfs.max(1),
            ..Config::default()
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Record events to NDJSON until Ctrl-C, SIGTERM, --duration, or COMMAND exits.
    Record {
        #[command(flatten)]
        attach: AttachArgs,
        /// Output file, or - for standard output.
        #[arg(short, long, value_name = "FILE", default_value = "-")]
        output: String,
        /// Stop after this long (e.g. 30s, 500ms, 2m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Run this command once the probes are attached; stop when it exits,
        /// and exit with its status.
        #[arg(last = true, value_name = "COMMAND")]
        command: Vec<std::ffi::OsString>,
    },
    /// Run a recorded trace through the matcher; print its records as NDJSON.
    Replay {
        /// The trace, or - for standard input.
        file: PathBuf,
        /// Skip malformed lines (they are counted) instead of failing.
        #[arg(long)]
        lenient: bool,
        #[command(flatten)]
        matching: MatchArgs,
    },
    /// Summarise a recorded trace: latency, TMFs by outcome, aborts, orphans, drops.
    Report {
        /// The trace, or - for standard input.
        file: PathBuf,
        /// The summary as JSON.
        #[arg(long)]
        json: bool,
        /// Skip malformed lines (they are counted) instead of failing.
        #[arg(long)]
        lenient: bool,
        #[command(flatten)]
        matching: MatchArgs,
    },
    /// Check a trace against latency and orphan budgets, for CI. Exit 0 pass,
    /// 1 a budget failed, 2 inconclusive (drops, a missing probe, too few
    /// samples), 3 bad input or usage.
    Check {
        /// The trace, or - for standard input.
        file: PathBuf,
        /// A budget, e.g. 'abort.p99<=5ms', 'tmf.ABORT_TASK.p99.9<=20ms', 'orphans==0'. Repeatable.
        #[arg(long = "budget", value_name = "EXPR", required = true)]
        budgets: Vec<String>,
        /// Fewest samples a percentile needs (and at least 1/(1-q)).
        #[arg(long, value_name = "N", default_value_t = 20)]
        min_samples: u64,
        /// Skip malformed lines (they are counted) instead of failing.
        #[arg(long)]
        lenient: bool,
        #[command(flatten)]
        matching: MatchArgs,
    },
    /// Check a tgtd binary and list the probe points tgt-trace can attach.
    Probes {
        #[arg(long, value_name = "PATH", default_value = DEFAULT_TGTD)]
        tgtd: PathBuf,
    },
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use e.g. 500ms, 30s, 2m"))?;
    let seconds = match unit {
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "'{unit}' is not a duration unit; use ns, us, ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("'{text}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!(
            "ring size {size} must be a power of two and at least 4096"
        ));
    }
    Ok(size)
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let code = if err.use_stderr() { exit::USAGE } else { 0 };
            let _ = err.print();
            return ExitCode::from(code);
        }
    };
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("tgt-trace: {err:#}");
            ExitCode::from(exit::FAILURE)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Record {
            attach,
            output,
            duration,
            command,
        } => {
            let binary = TgtdBinary::inspect(&attach.tgtd)?;
            let opts = RecordOptions {
                trace: TraceOptions {
                    binary,
                    pid: attach.pid,
                    set: attach.probes,
                    ring_bytes: attach.ring_size,
                },
                output: if output == "-" {
                    Output::Stdout
                } else {
                    Output::File(output.into())
                },
                duration,
                command,
                poll: attach.poll,
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let outcome = runtime.block_on(record(opts))?;
            let s = &outcome.summary;
            eprintln!(
                "tgt-trace: {} events, {} dropped (ring full {}, unreadable {}, undecodable {}), {:.3}s, stopped by {}",
                s.events,
                s.drops.total(),
                s.drops.ring_full,
                s.drops.read_failed,
                s.drops.decode_errors,
                s.duration_ns as f64 / 1e9,
                s.stopped_by
            );
            Ok(match outcome.command_status {
                Some(status) => ExitCode::from(status.code().map_or(exit::FAILURE, |c| c as u8)),
                None => ExitCode::SUCCESS,
            })
        }
        Command::Replay {
            file,
            lenient,
            matching,
        } => {
            let mut reader = TraceReader::open(&file, lenient)?;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            let mut write_error = None;
            let replayed = replay(&mut reader, matching.config(), |record| {
                if write_error.is_none()
                    && let Err(e) = serde_json::to_writer(&mut out, record).and_then(|()| {
                        std::io::Write::write_all(&mut out, b"\n").map_err(serde_json::Error::io)
                    })
                {
                    write_error = Some(e);
                }
            })?;
            if let Some(e) = write_error {
                anyhow::bail!("writing the records: {e}");
            }
            let line = serde_json::json!({
                "type": "matched_summary",
                "summary": replayed.summary,
                "drops": replayed.drops,
                "complete": replayed.complete,
                "skipped_lines": replayed.skipped,
            });
            serde_json::to_writer(&mut out, &line)?;
            std::io::Write::write_all(&mut out, b"\n")?;
            std::io::Write::flush(&mut out)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report {
            file,
            json,
            lenient,
            matching,
        } => {
            let mut reader = TraceReader::open(&file, lenient)?;
            let mut orphans = Vec::new();
            let replayed = replay(&mut reader, matching.config(), |record| {
                if let Record::Orphan(o) = record {
                    orphans.push(o.clone());
                }
            })?;
            if json {
                let line = serde_json::json!({
                    "summary": replayed.summary,
                    "orphans": orphans,
                    "drops": replayed.drops,
                    "complete": replayed.complete,
                    "skipped_lines": replayed.skipped,
                });
                println!("{}", serde_json::to_string_pretty(&line)?);
            } else {
                print!("{}", render_text(&replayed, &orphans));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check {
            file,
            budgets,
            min_samples,
            lenient,
            matching,
        } => {
            let parsed: Result<Vec<Budget>, _> = budgets.iter().map(|b| Budget::parse(b)).collect();
            let budgets = match parsed {
                Ok(b) => b,
                Err(e) => {
                    eprintln!("tgt-trace: {e}");
                    return Ok(ExitCode::from(exit::USAGE));
                }
            };
            let mut reader = match TraceReader::open(&file, lenient) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tgt-trace: {e}");
                    return Ok(ExitCode::from(exit::USAGE));
                }
            };
            let probes = reader.header().probes.clone();
            let replayed = match replay(&mut reader, matching.config(), |_| {}) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("tgt-trace: {e}");
                    return Ok(ExitCode::from(exit::USAGE));
                }
            };
            let summary = replayed.summary.context("replay produced no summary")?;
            let evidence = Evidence {
                summary: &summary,
                drops: replayed.drops,
                probes: &probes,
                min_samples,
            };
            let results: Vec<_> = budgets.iter().map(|b| check(b, &evidence)).collect();
            for r in &results {
                println!("{r}");
            }
            if !replayed.complete {
                println!(
                    "note: the trace has no summary line (cut short); its drop counts are unknown"
                );
            }
            // A cut-short trace cannot pass, but a failed budget still fails.
            let code = match (exit_code(&results), replayed.complete) {
                (0, false) => 2,
                (code, _) => code,
            };
            Ok(ExitCode::from(code))
        }
        Command::Probes { tgtd } => {
            let binary = TgtdBinary::inspect(&tgtd)?;
            println!(
                "{}: build id {}, layout {:?}",
                binary.path.display(),
                binary.build_id,
                binary.layout
            );
            for name in tgt_trace::tgtd::probe_functions() {
                match binary.symbol_offset(name) {
                    Some(offset) => println!("  {name:<22} offset {offset:#x}"),
                    None => println!("  {name:<22} missing"),
                }
            }
            match binary.tmf_response_offset {
                Some(offset) => println!("  {:<22} offset {offset:#x}", "iscsi_tm_done"),
                None => println!(
                    "  {:<22} not found: TMF responses will be inferred",
                    "iscsi_tm_done"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("1024").is_err());
    }
}
