//! `tgt-trace check`: budgets and a baseline, for CI.

use std::path::PathBuf;

use anyhow::Context as _;
use tgt_trace::{
    check::{
        Budget, BudgetsFile, Checked, Evidence, check, compare, exit_code, parse_compared,
        parse_tolerance,
    },
    correlate::Config,
    reader::TraceReader,
    report::replay,
};

use super::args::MatchArgs;

#[derive(clap::Args)]
pub struct CheckArgs {
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
    layout_violations: tgt_trace::plausible::LayoutViolations,
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
            layout_violations: replayed.layout_violations,
        })
    }

    fn evidence(&self, min_samples: u64) -> Evidence<'_> {
        Evidence {
            summary: &self.summary,
            drops: self.drops,
            probes: &self.probes,
            layout_violations: &self.layout_violations,
            min_samples,
        }
    }
}

impl CheckArgs {
    /// The exit code, or an error that is bad input or usage (exit 3).
    pub fn run(self) -> anyhow::Result<u8> {
        run_check(self)
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
