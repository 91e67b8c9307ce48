//! `sampled`: whether `--sample 10%` measures the command latencies that
//! tracing every command measures (issue #15). Sampling keeps only the
//! commands that arrive and are released inside one window; if the probes'
//! attach and detach, or the window's edges, bent the distribution, the
//! sampled p50 and p99 would move away from the unsampled ones on the same
//! load.

use std::{fmt::Write as _, time::Duration};

use anyhow::Context as _;
use tgt_trace_e2e::tgtd::Tgtd;

use super::{
    Options,
    live::{self, Drops, Mode, PACED_SESSIONS, PacedLoad, SAMPLE_PERCENT, SAMPLE_PERIOD_S},
    overhead::{SAMPLED, rotated},
    report::{goal_mark, median, range},
};

/// How far a sampled percentile may be from the unsampled one (issue #15).
const TOLERANCE: f64 = 0.10;

/// What one mode's runs gave, a value per run.
#[derive(Default)]
struct Runs {
    /// READs answered per second (the paced load reached its rate, or not).
    iops: Vec<f64>,
    /// Commands in the matcher's command histogram.
    measured: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
    /// The sampled mode's counts.
    windows: Vec<f64>,
    sampled: Vec<f64>,
    cut: Vec<f64>,
    /// READs answered with a status other than GOOD, over all runs.
    failed: u64,
    drops: Drops,
}

pub fn run(tgtd: &Tgtd, opts: &Options) -> anyhow::Result<String> {
    let modes = [Mode::tgt_trace("lean"), SAMPLED];
    let mut runs: Vec<Runs> = modes.iter().map(|_| Runs::default()).collect();
    let duration = Duration::from_secs(opts.seconds);
    for round in 1..=opts.rounds {
        for (i, mode) in rotated(&modes, round) {
            // Logged in (and past each nexus's first UNIT ATTENTION) before
            // the tracer starts: the histograms hold the paced READs alone.
            let load = PacedLoad::login(tgtd, PACED_SESSIONS)?;
            let tracer = mode
                .start(tgtd)?
                .context("a tgt-trace mode starts a tracer")?;
            let paced = load.run(opts.rate, duration)?;
            let stopped = tracer.stop_with_report()?;
            let report = stopped.report.context("tgt-trace report gave no summary")?;
            let r = &mut runs[i];
            r.drops.add(stopped.drops.unwrap_or_default());
            r.failed += paced.failed;
            r.iops
                .push(paced.completed as f64 / paced.elapsed.as_secs_f64());
            let command = &report["summary"]["histograms"]["command"];
            let counts = &report["summary"]["counts"];
            let number = |v: &serde_json::Value, what: &str| {
                v.as_u64()
                    .map(|n| n as f64)
                    .with_context(|| format!("tgt-trace report --json has no {what}"))
            };
            let (n, p50, p99) = (
                number(&command["count"], "command count")?,
                number(&command["p50_us"], "command p50_us")?,
                number(&command["p99_us"], "command p99_us")?,
            );
            anyhow::ensure!(
                n > 0.0,
                "{}: the command histogram is empty (tgt-trace's log: {})",
                mode.name(),
                tgtd.dir.join("tracer.log").display()
            );
            r.measured.push(n);
            r.p50.push(p50);
            r.p99.push(p99);
            if mode == SAMPLED {
                // Absent from the summary when zero.
                let count = |k: &str| counts[k].as_u64().unwrap_or(0) as f64;
                r.windows.push(count("sample_windows"));
                r.sampled.push(count("commands_sampled"));
                r.cut.push(count("commands_cut_by_window"));
            }
            eprintln!(
                "bench: sampled round {round}/{} {:<32} {n:>7.0} commands, p50 {p50:.0} µs, \
                 p99 {p99:.0} µs",
                opts.rounds,
                mode.name(),
            );
        }
    }
    let mut table = String::from(
        "| mode | READs/s reached | commands measured per run | p50 µs (median, range) | p99 µs \
         (median, range) | windows per run | commands sampled per run | cut by a window's edge \
         per run | drops |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for (mode, r) in modes.iter().zip(&runs) {
        let per_run = |v: &[f64]| {
            if v.is_empty() {
                "—".to_owned()
            } else {
                format!("{:.0}", median(v))
            }
        };
        let cut = if r.cut.is_empty() {
            "—".to_owned()
        } else {
            let (cut, sampled) = (median(&r.cut), median(&r.sampled));
            format!(
                "{cut:.0} ({:.1}% of those seen)",
                cut / (cut + sampled).max(1.0) * 100.0
            )
        };
        let _ = writeln!(
            table,
            "| {} | {:.0} | {:.0} | {:.0} ({}) | {:.0} ({}) | {} | {} | {cut} | {} |",
            mode.name(),
            median(&r.iops),
            median(&r.measured),
            median(&r.p50),
            range(&r.p50, 0),
            median(&r.p99),
            range(&r.p99, 0),
            per_run(&r.windows),
            per_run(&r.sampled),
            r.drops.total(),
        );
    }
    let (all, part) = (&runs[0], &runs[1]);
    let goals = format!(
        "{}{}",
        goal_line("p50", "sampled-p50", median(&part.p50), median(&all.p50)),
        goal_line("p99", "sampled-p99", median(&part.p99), median(&all.p99)),
    );
    let failed: u64 = runs.iter().map(|r| r.failed).sum();
    Ok(format!(
        "## Sampled histograms\n\n\
         The [CPU](#cpu-at-a-fixed-rate) section's load: {} READ(10) of one block per second to \
         the null LUN, paced by the project's initiator over {PACED_SESSIONS} sessions (logged \
         in before the tracer starts); {} interleaved rounds of {} s per mode (rotated), \
         tgt-trace recording to a file, as in use. The lean set traced all the time, and with \
         `--sample {SAMPLE_PERCENT}%` (per-command probes attached for {SAMPLE_PERCENT}% of \
         each {SAMPLE_PERIOD_S} s period, from the start of the run: see windows per run). p50 and p99 are the matcher's command latency histogram (arrival to \
         release in tgtd, 1 µs resolution) from `tgt-trace report --json` on each run's trace: \
         the median of the runs' values and their range. A sampled trace's histogram holds \
         only the commands whose arrival and release fell in one window (commands sampled); \
         a command whose arrival or release fell outside is counted as cut, not measured \
         (one that spans a whole closed period counts at both ends). A sampled run's p99 \
         rests on about a tenth of the commands (see commands measured), so it varies more \
         from run to run than the unsampled one: see its range.{}\n\n\
         {table}\nGoals (issue #15), each sampled percentile within {:.0}% of the unsampled \
         one:\n\n{goals}",
        opts.rate,
        opts.rounds,
        opts.seconds,
        live::failed_reads_note(failed),
        TOLERANCE * 100.0,
    ))
}

/// "- p50: met (52 µs sampled, 50 µs unsampled: +4.0%)", with the goal's mark.
fn goal_line(name: &str, id: &str, sampled: f64, unsampled: f64) -> String {
    let off = sampled / unsampled - 1.0;
    let met = off.abs() <= TOLERANCE;
    let numbers = format!(
        "{sampled:.0} µs sampled, {unsampled:.0} µs unsampled: {:+.1}%",
        off * 100.0
    );
    let verdict = if met {
        format!("met ({numbers})")
    } else {
        format!(
            "**missed** by {:.1} points ({numbers}, goal ±{:.0}%)",
            (off.abs() - TOLERANCE) * 100.0,
            TOLERANCE * 100.0
        )
    };
    format!("- {name}: {verdict} {}\n", goal_mark(id, met))
}
