//! The `tgt-trace` command line: parses, dispatches to [`cli`], and turns
//! errors into messages and the exit codes the README documents.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use cli::{
    args::{AttachArgs, MatchArgs},
    check::CheckArgs,
    exit,
    probes::ProbesArgs,
    record::RecordArgs,
    replay::{ReplayArgs, ReportArgs},
    serve::ServeArgs,
};

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

#[derive(Subcommand)]
enum Command {
    /// Write the manual pages (roff), for packaging.
    #[command(hide = true)]
    Man(cli::man::ManArgs),
    /// Record events to NDJSON until Ctrl-C, SIGTERM, --duration, or COMMAND exits.
    Record(RecordArgs),
    /// Run a recorded trace through the matcher; print its records as NDJSON.
    Replay(ReplayArgs),
    /// Summarise a recorded trace: latency, TMFs by outcome, aborts, orphans, drops.
    Report(ReportArgs),
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
    /// Serve Prometheus metrics of TMFs, aborts, orphans and latency on
    /// /metrics (and /healthz) until Ctrl-C, SIGTERM or --duration.
    Serve(ServeArgs),
    /// Check a tgtd binary and list the probe points tgt-trace can attach.
    Probes(ProbesArgs),
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
        Command::Man(args) => args.run(),
        Command::Record(args) => args.run(),
        Command::Replay(args) => args.run(),
        Command::Report(args) => args.run(),
        Command::Check(args) => match args.run() {
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
                None => Some(attach.trace_options()?),
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
        Command::Probes(args) => args.run(),
        Command::Serve(args) => args.run(),
    }
}
