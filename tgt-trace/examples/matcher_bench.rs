//! Matcher throughput and memory on synthetic tgtd streams (a benchmark, not
//! a test):
//!
//! ```text
//! cargo run --release -p tgt-trace --example matcher_bench -- --events 10000000
//! ```
//!
//! Options: `--events N` (per probe set, default 10 000 000), `--probes
//! full|lean|tmf|all` (default all), `--seed N`.
//!
//! The stream is [`tgt_trace::synth`]'s default mix: 4 initiators at queue
//! depth 32 over 4 LUNs, 0.1 % error status, 2 % of commands held in tgtd's
//! queue, one ABORT TASK per 1000 commands (in flight, just released, or
//! never used), ABORT TASK SET and LUN RESET rarer; filtered to what each
//! probe set would deliver. It is generated in batches of 64 Ki events as it
//! is consumed; "matcher" times only `Matcher::push`, "end to end" includes
//! the generator. Peak RSS is the process's VmHWM, read at 10 % of each run
//! and at its end: equal values mean memory flat in the trace's length.

use std::time::{Duration, Instant};

use tgt_trace::{
    correlate::{Config, Coverage, Matcher, Summary},
    synth::{Synth, SynthConfig},
};

const BATCH: usize = 1 << 16;

struct Args {
    events: u64,
    sets: Vec<(&'static str, Coverage)>,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        events: 10_000_000,
        sets: all_sets(),
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--events" => {
                args.events = value()?
                    .replace('_', "")
                    .parse()
                    .map_err(|e| format!("--events: {e}"))?;
            }
            "--seed" => args.seed = value()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "--probes" => {
                let name = value()?;
                args.sets = all_sets()
                    .into_iter()
                    .filter(|(n, _)| name == "all" || *n == name)
                    .collect();
                if args.sets.is_empty() {
                    return Err(format!("--probes: unknown set {name}"));
                }
            }
            "-h" | "--help" => {
                return Err(
                    "usage: matcher_bench [--events N] [--probes full|lean|tmf|all] [--seed N]"
                        .into(),
                );
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(args)
}

fn all_sets() -> Vec<(&'static str, Coverage)> {
    vec![
        ("full", Coverage::ALL),
        ("lean", Coverage::LEAN),
        ("tmf", Coverage::TMF_ONLY),
    ]
}

/// `VmHWM` (peak resident set) in KiB, 0 if unreadable.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            })
        })
        .unwrap_or(0)
}

struct Run {
    events: u64,
    matcher: Duration,
    total: Duration,
    records: u64,
    rss_tenth_kib: u64,
    rss_end_kib: u64,
    summary: Summary,
}

fn run(events: u64, seed: u64, coverage: Coverage) -> Run {
    let mut synth = Synth::new(SynthConfig {
        seed,
        probes: coverage,
        ..SynthConfig::default()
    });
    let mut matcher = Matcher::new(Config {
        coverage,
        ..Config::default()
    });
    let mut batch = Vec::with_capacity(BATCH + 64);
    let mut out = Vec::new();
    let (mut seen, mut records) = (0u64, 0u64);
    let mut matcher_time = Duration::ZERO;
    let mut rss_tenth_kib = 0;
    let start = Instant::now();
    while seen < events {
        batch.clear();
        synth.fill(BATCH.min((events - seen) as usize), &mut batch);
        let t = Instant::now();
        for e in &batch {
            matcher.push(e, &mut out);
        }
        matcher_time += t.elapsed();
        seen += batch.len() as u64;
        records += out.len() as u64;
        out.clear();
        if rss_tenth_kib == 0 && seen >= events / 10 {
            rss_tenth_kib = peak_rss_kib();
        }
    }
    let summary = matcher.finish(synth.now_ns(), &mut out);
    records += out.len() as u64;
    Run {
        events: seen,
        matcher: matcher_time,
        total: start.elapsed(),
        records,
        rss_tenth_kib,
        rss_end_kib: peak_rss_kib(),
        summary,
    }
}

fn rate(events: u64, d: Duration) -> f64 {
    events as f64 / d.as_secs_f64().max(1e-9) / 1e6
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    println!(
        "{:<5} {:>11} {:>9} {:>13} {:>13} {:>9} {:>8} {:>8} {:>8} {:>13} {:>13}",
        "set",
        "events",
        "matcher",
        "matcher",
        "end to end",
        "records",
        "TMFs",
        "aborted",
        "orphans",
        "VmHWM @10%",
        "VmHWM @end"
    );
    for (name, coverage) in &args.sets {
        let r = run(args.events, args.seed, *coverage);
        let c = &r.summary.counts;
        println!(
            "{:<5} {:>11} {:>8.3}s {:>8.2} M/s {:>8.2} M/s {:>9} {:>8} {:>8} {:>8} {:>9} KiB {:>9} KiB",
            name,
            r.events,
            r.matcher.as_secs_f64(),
            rate(r.events, r.matcher),
            rate(r.events, r.total),
            r.records,
            c.tmfs,
            c.commands_aborted,
            c.orphans(),
            r.rss_tenth_kib,
            r.rss_end_kib,
        );
    }
}
