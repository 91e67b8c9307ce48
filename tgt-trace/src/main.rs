//! The `tgt-trace` command line. Errors become messages and documented exit
//! codes here; the library returns typed errors.

use std::{num::NonZeroU32, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use tgt_trace::{
    check::{
        Budget, BudgetsFile, Checked, Evidence, check, compare, exit_code, parse_compared,
        parse_tolerance,
    },
    correlate::{Config, Record},
    probe::{ProbeSet, TraceOptions},
    reader::TraceReader,
    record::{Matching, Output, RecordError, RecordOptions, record},
    report::{render_text, replay},
    tgtd::{DEFAULT_TGTD, TgtdBinary},
    trace::Line,
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
    /// Probe set: tmf (1 hit per command), lean (2), full (4; adds queue-wait time).
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
        /// Output file, or - for standard output. Created 0644 and never
        /// through a symbolic link.
        #[arg(short, long, value_name = "FILE", default_value = "-")]
        output: String,
        /// Create the output file 0600 (the trace names initiators and hosts).
        #[arg(long)]
        private: bool,
        /// Stop after this long (e.g. 30s, 500ms, 2m).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        duration: Option<Duration>,
        /// Also write the matcher's records (command, tmf, orphan, matched_summary
        /// lines) right after the events that concluded them.
        #[arg(long)]
        matched: bool,
        /// With --matched: a matched_summary snapshot this often (e.g. 10s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration, requires = "matched")]
        summary_every: Option<Duration>,
        /// With --matched: write only the header, the matched lines and the
        /// summaries, not the events (a small trace that report and check
        /// read; replay and the TUI need the events).
        #[arg(long, requires = "matched")]
        no_events: bool,
        #[command(flatten)]
        matching: MatchArgs,
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
    /// Check a trace against latency and orphan budgets, and against a
    /// baseline trace, for CI. Exit 0 pass, 1 a budget failed or a percentile
    /// regressed, 2 inconclusive (drops, a missing probe, too few samples),
    /// 3 bad input or usage.
    Check(CheckArgs),
    /// Print the JSON Schema of the trace lines (or of `report --json`).
    Schema {
        #[arg(long, value_enum, default_value = "trace-line")]
        of: SchemaOf,
    },
    /// Check a tgtd binary and list the probe points tgt-trace can attach.
    Probes {
        #[arg(long, value_name = "PATH", default_value = DEFAULT_TGTD)]
        tgtd: PathBuf,
    },
    /// A screen of TMFs, commands in flight, latency and orphans: live, or
    /// a recorded trace replayed (--replay FILE). In replay, --poll is the
    /// trace time one --step covers.
    Tui {
        #[command(flatten)]
        tui: tgt_trace::tui::TuiArgs,
        #[command(flatten)]
        attach: AttachArgs,
        #[command(flatten)]
        matching: MatchArgs,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum SchemaOf {
    TraceLine,
    Report,
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
            private,
            duration,
            matched,
            summary_every,
            no_events,
            matching,
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
                matched: matched.then(|| Matching {
                    config: matching.config(),
                    summary_every,
                    events: !no_events,
                }),
                stop: None,
                quiet: false,
                private,
                tap: None,
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
                match s.drops.sink_slow {
                    0 => String::new(),
                    n => format!(", output's reader too slow {n} lines"),
                },
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
            let summary = replayed
                .matched_summary()
                .context("replay produced no summary")?;
            serde_json::to_writer(&mut out, &Line::MatchedSummary(Box::new(summary)))?;
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
                let report = replayed
                    .report_json(orphans)
                    .context("replay produced no summary")?;
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", render_text(&replayed, &orphans));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Check(args) => match run_check(args) {
            Ok(code) => Ok(ExitCode::from(code)),
            Err(e) => {
                eprintln!("tgt-trace: {e:#}");
                Ok(ExitCode::from(exit::USAGE))
            }
        },
        Command::Tui {
            tui,
            attach,
            matching,
        } => {
            let live = match tui.replay {
                Some(_) => None,
                None => Some(TraceOptions {
                    binary: TgtdBinary::inspect(&attach.tgtd)?,
                    pid: attach.pid,
                    set: attach.probes,
                    ring_bytes: attach.ring_size,
                }),
            };
            tgt_trace::tui::run(tui, matching.config(), attach.poll, live)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Schema { of } => {
            let schema = match of {
                SchemaOf::TraceLine => tgt_trace::schema::trace_line(),
                SchemaOf::Report => tgt_trace::schema::report(),
            };
            print!("{}", tgt_trace::schema::to_text(&schema));
            Ok(ExitCode::SUCCESS)
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
            println!(
                "  {:<22} {}",
                "task->conn->state",
                if binary.tmf_response_reads_connection {
                    "verified: responses freed on a closed connection are flagged"
                } else {
                    "not verified: a response dropped on a closed connection looks sent"
                }
            );
            // The iSCSI layer's TMF points, found in the machine code.
            let points = [
                ("iscsi_tm_execute", "TMFs as received", &binary.tmf_received),
                (
                    "iscsi_tm_tx_start",
                    "responses handed to the socket",
                    &binary.tmf_tx_start,
                ),
                ("iscsi_task_tx_done", "responses written", &binary.tmf_sent),
            ];
            for (function, what, point) in points {
                match point {
                    Ok(p) => println!(
                        "  {function:<22} offset {:#x} ({what}; register {} holds the {})",
                        p.address,
                        tgt_trace::locate::register_name(p.task_reg),
                        if function == "iscsi_tm_tx_start" {
                            "connection"
                        } else {
                            "task"
                        }
                    ),
                    Err(why) => println!("  {function:<22} not found: {why}; {what} are unknown"),
                }
            }
            match &binary.conn_close {
                Ok(offset) => println!("  {:<22} offset {offset:#x}", "conn_close"),
                Err(why) => println!("  {:<22} not used: {why}", "conn_close"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The trace, or - for standard input.
    file: PathBuf,
    /// A budget, e.g. 'abort.p99<=5ms', 'tmf.ABORT_TASK.p99.9<=20ms', 'orphans==0'. Repeatable.
    #[arg(long = "budget", value_name = "EXPR")]
    budget: Vec<String>,
    /// A TOML file of budgets (`budgets = [...]`, `min_samples`, `tolerance`, `compare`).
    #[arg(long = "budgets", value_name = "FILE")]
    budgets_file: Option<PathBuf>,
    /// An older trace: fail when a latency percentile got worse than it by more than --tolerance.
    #[arg(long, value_name = "OLD.ndjson")]
    baseline: Option<PathBuf>,
    /// How much worse than the baseline a percentile may be [default: 10%].
    #[arg(long, value_name = "PERCENT", requires = "baseline")]
    tolerance: Option<String>,
    /// A percentile to compare with the baseline, e.g. abort.p99 (repeatable;
    /// default: p50 and p99 of every histogram with enough samples in both).
    #[arg(long, value_name = "METRIC", requires = "baseline")]
    compare: Vec<String>,
    /// Fewest samples a percentile needs (and at least 1/(1-q)) [default: 20].
    #[arg(long, value_name = "N")]
    min_samples: Option<u64>,
    /// Also write the verdicts as JUnit XML to this file.
    #[arg(long, value_name = "FILE")]
    junit: Option<PathBuf>,
    /// Skip malformed lines (they are counted) instead of failing.
    #[arg(long)]
    lenient: bool,
    #[command(flatten)]
    matching: MatchArgs,
}

/// A replayed trace, as `check` weighs it.
struct Weighed {
    summary: tgt_trace::correlate::Summary,
    drops: tgt_trace::trace::Drops,
    probes: Vec<tgt_trace::points::ProbePoint>,
    complete: bool,
}

impl Weighed {
    fn load(file: &std::path::Path, lenient: bool, config: Config) -> anyhow::Result<Weighed> {
        let mut reader = TraceReader::open(file, lenient)?;
        let probes = reader.header().probes.clone();
        let replayed = replay(&mut reader, config, |_| {})?;
        Ok(Weighed {
            summary: replayed.summary.context("replay produced no summary")?,
            drops: replayed.drops,
            probes,
            complete: replayed.complete,
        })
    }

    fn evidence(&self, min_samples: u64) -> Evidence<'_> {
        Evidence {
            summary: &self.summary,
            drops: self.drops,
            probes: &self.probes,
            min_samples,
        }
    }
}

/// `check`: the exit code, or an error that is bad input or usage (exit 3).
fn run_check(args: CheckArgs) -> anyhow::Result<u8> {
    let file = match &args.budgets_file {
        Some(path) => BudgetsFile::load(path)?,
        None => BudgetsFile::default(),
    };
    let budgets = file
        .budgets
        .iter()
        .chain(&args.budget)
        .map(|b| Budget::parse(b))
        .collect::<Result<Vec<_>, _>>()?;
    let compare_names = if args.compare.is_empty() {
        &file.compare
    } else {
        &args.compare
    };
    let compared_metrics = compare_names
        .iter()
        .map(|m| parse_compared(m))
        .collect::<Result<Vec<_>, _>>()?;
    let tolerance = match args.tolerance.as_ref().or(file.tolerance.as_ref()) {
        Some(t) => parse_tolerance(t).map_err(anyhow::Error::msg)?,
        None => 0.10,
    };
    if budgets.is_empty() && args.baseline.is_none() {
        anyhow::bail!(
            "nothing to check: give --budget EXPR, --budgets FILE with budgets, or --baseline OLD.ndjson"
        );
    }
    let min_samples = args.min_samples.or(file.min_samples).unwrap_or(20);
    let config = args.matching.config();
    let current = Weighed::load(&args.file, args.lenient, config.clone())?;
    let evidence = current.evidence(min_samples);
    let results: Vec<Checked> = budgets.iter().map(|b| check(b, &evidence)).collect();
    for r in &results {
        println!("{r}");
    }
    let mut comparisons = Vec::new();
    if let Some(path) = &args.baseline {
        let base = Weighed::load(path, args.lenient, config.clone())
            .with_context(|| format!("reading the baseline {}", path.display()))?;
        comparisons = compare(
            &compared_metrics,
            &evidence,
            &base.evidence(min_samples),
            tolerance,
        );
        for c in &comparisons {
            println!("{c}");
        }
        if !base.complete {
            println!(
                "note: the baseline has no summary line (cut short); its drop counts are unknown"
            );
        }
    }
    if !current.complete {
        println!("note: the trace has no summary line (cut short); its drop counts are unknown");
    }
    if let Some(path) = &args.junit {
        let xml = tgt_trace::check::junit(&args.file.display().to_string(), &results, &comparisons);
        std::fs::write(path, xml).with_context(|| format!("writing {}", path.display()))?;
    }
    let verdicts = results
        .iter()
        .map(|r| &r.verdict)
        .chain(comparisons.iter().map(|c| &c.verdict));
    // A cut-short trace cannot pass, but a failed budget still fails.
    Ok(match exit_code(verdicts) {
        0 if !current.complete => 2,
        code => code,
    })
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
