//! Matcher throughput and memory on synthetic tgtd streams (a benchmark, not
//! a test):
//!
//! ```text
//! cargo run --release -p tgt-trace --example matcher_bench -- --events 10000000
//! ```
//!
//! Options: `--events N` (per probe set, default 10 000 000), `--probes
//! full|lean|tmf|all` (default all), `--seed N`, `--json` (one JSON object
//! per set instead of the table), `--write FILE`.
//!
//! With `--write FILE` nothing is timed: the stream of the one set given by
//! `--probes` (default full) is written to FILE as a valid NDJSON trace (a
//! header, `--events` event lines, a summary line), the input of `cargo
//! xtask bench`'s replay benchmark.
//!
//! The stream is [`tgt_trace::synth`]'s default mix: 4 initiators at queue
//! depth 32 over 4 LUNs, 0.1 % error status, 2 % of commands held in tgtd's
//! queue, one ABORT TASK per 1000 commands (in flight, just released, or
//! never used), ABORT TASK SET and LUN RESET rarer; filtered to what each
//! probe set would deliver. It is generated in batches of 64 Ki events as it
//! is consumed; "matcher" times only `Matcher::push`, "end to end" includes
//! the generator. Peak RSS is the process's VmHWM, read at 10 % of each run
//! and at its end: equal values mean memory flat in the trace's length.

use std::{
    io::{BufWriter, Write as _},
    path::PathBuf,
    time::{Duration, Instant},
};

use tgt_trace::{
    correlate::{Config, Coverage, Matcher, Summary},
    points::{Point, ProbePoint, ProbeSet},
    synth::{Synth, SynthConfig},
    tgtd::LayoutCheck,
    trace::{Drops, Header, Line, Summary as TraceSummary},
};

const BATCH: usize = 1 << 16;

struct Args {
    events: u64,
    sets: Vec<(&'static str, Coverage)>,
    seed: u64,
    json: bool,
    write: Option<PathBuf>,
}

const USAGE: &str = "usage: matcher_bench [--events N] [--probes full|lean|tmf|all] [--seed N] \
                     [--json] [--write FILE]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        events: 10_000_000,
        sets: all_sets(),
        seed: 1,
        json: false,
        write: None,
    };
    let mut probes_given = false;
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
            "--json" => args.json = true,
            "--write" => args.write = Some(PathBuf::from(value()?)),
            "--probes" => {
                probes_given = true;
                let name = value()?;
                args.sets = all_sets()
                    .into_iter()
                    .filter(|(n, _)| name == "all" || *n == name)
                    .collect();
                if args.sets.is_empty() {
                    return Err(format!("--probes: unknown set {name}"));
                }
            }
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    if args.write.is_some() {
        if !probes_given {
            args.sets.truncate(1);
        }
        if args.sets.len() != 1 {
            return Err("--write takes one probe set: --probes full|lean|tmf".into());
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
    if let Some(path) = &args.write {
        let (name, coverage) = args.sets[0];
        match write_trace(path, args.events, args.seed, name, coverage) {
            Ok(lines) => println!("wrote {lines} lines to {}", path.display()),
            Err(e) => {
                eprintln!("writing {}: {e}", path.display());
                std::process::exit(1);
            }
        }
        return;
    }
    if !args.json {
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
    }
    for (name, coverage) in &args.sets {
        let r = run(args.events, args.seed, *coverage);
        let c = &r.summary.counts;
        if args.json {
            let line = serde_json::json!({
                "set": name,
                "events": r.events,
                "matcher_s": r.matcher.as_secs_f64(),
                "total_s": r.total.as_secs_f64(),
                "matcher_events_per_s": r.events as f64 / r.matcher.as_secs_f64().max(1e-9),
                "total_events_per_s": r.events as f64 / r.total.as_secs_f64().max(1e-9),
                "records": r.records,
                "tmfs": c.tmfs,
                "aborted": c.commands_aborted,
                "orphans": c.orphans(),
                "vmhwm_tenth_kib": r.rss_tenth_kib,
                "vmhwm_end_kib": r.rss_end_kib,
            });
            println!("{line}");
            continue;
        }
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

/// The probe points a trace of this coverage lists as attached, named as
/// `tgt-trace record` names them (`probe::Hook`), so that a reader derives
/// the same coverage from the header.
fn probe_points(coverage: Coverage) -> Vec<ProbePoint> {
    Point::ALL
        .into_iter()
        .map(|point| {
            let attached = match point {
                Point::Queue => coverage.queue,
                Point::Perform => coverage.perform,
                Point::Result => coverage.result,
                Point::Release => coverage.release,
                Point::TmfResponse => coverage.tmf_response,
                Point::TmfReceived => coverage.tmf_received,
                Point::TmfSent => coverage.tmf_sent,
                Point::ConnClose => coverage.conn_close,
                _ => true,
            };
            ProbePoint {
                name: point,
                function: point.function().to_owned(),
                offset: None,
                attached,
                sampled: false,
                missing: (!attached).then(|| "not in this synthetic probe set".to_owned()),
            }
        })
        .collect()
}

/// Writes the synthetic stream as a trace `tgt-trace replay` reads: header,
/// events, summary. Returns the number of lines written.
fn write_trace(
    path: &std::path::Path,
    events: u64,
    seed: u64,
    set: &str,
    coverage: Coverage,
) -> std::io::Result<u64> {
    let probe_set = match set {
        "full" => ProbeSet::Full,
        "lean" => ProbeSet::Lean,
        _ => ProbeSet::Tmf,
    };
    let mut synth = Synth::new(SynthConfig {
        seed,
        probes: coverage,
        ..SynthConfig::default()
    });
    let start_ns = synth.now_ns();
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let line = |out: &mut BufWriter<std::fs::File>, l: &Line| -> std::io::Result<()> {
        serde_json::to_writer(&mut *out, l)?;
        out.write_all(b"\n")
    };
    let header = Header {
        schema_version: tgt_trace::SCHEMA_VERSION,
        tgt_trace_version: env!("CARGO_PKG_VERSION").to_owned(),
        target: tgt_trace::points::Target::Tgtd,
        tgtd_path: "/usr/sbin/tgtd".to_owned(),
        tgtd_build_id: "synthetic".to_owned(),
        tgtd_layout: LayoutCheck::CodeFingerprint,
        probe_set,
        sampling: None,
        probes: probe_points(coverage),
        pids: vec![1000],
        pid_filter: None,
        start_unix_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        start_monotonic_ns: start_ns,
        ring_bytes: 16 << 20,
    };
    line(&mut out, &Line::Header(header))?;
    let mut batch = Vec::with_capacity(BATCH + 64);
    let mut written = 0u64;
    while written < events {
        batch.clear();
        synth.fill(BATCH.min((events - written) as usize), &mut batch);
        for e in batch.drain(..) {
            line(&mut out, &Line::Event(e))?;
            written += 1;
        }
    }
    let summary = TraceSummary {
        events: written,
        drops: Drops::default(),
        duration_ns: synth.now_ns().saturating_sub(start_ns),
        stopped_by: "synthetic".to_owned(),
        sinks: Vec::new(),
        layout_violations: Default::default(),
    };
    line(&mut out, &Line::Summary(summary))?;
    out.flush()?;
    Ok(written + 2)
}
