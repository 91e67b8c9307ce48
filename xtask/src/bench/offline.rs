//! The user-space side alone, on synthetic streams: the matcher's
//! throughput and memory (`examples/matcher_bench`), and `tgt-trace replay`
//! on a trace file.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::{
    Options, perf,
    report::{self, median, range},
};
use crate::{cargo, root, run_step};

const MATCHER_EVENTS: u64 = 10_000_000;
const REPLAY_EVENTS: u64 = 2_000_000;

fn build_example() -> anyhow::Result<std::path::PathBuf> {
    run_step(
        "build matcher_bench (release)",
        cargo().args([
            "build",
            "--release",
            "-p",
            "tgt-trace",
            "--example",
            "matcher_bench",
        ]),
    )?;
    Ok(root().join("target/release/examples/matcher_bench"))
}

fn verdict(value: f64, goal: f64, unit: &str) -> String {
    if value >= goal {
        format!("met ({value:.2} {unit} ≥ {goal} {unit})")
    } else {
        format!(
            "**missed** by {:.2} {unit} ({value:.2} {unit}, goal ≥ {goal} {unit}, {:.0}% of it)",
            goal - value,
            value / goal * 100.0
        )
    }
}

pub fn matcher(opts: &Options) -> anyhow::Result<String> {
    let bench = build_example()?;
    let sets = ["full", "lean"];
    let mut rows = String::new();
    let mut full_rate = f64::NAN;
    let mut lean_rate = f64::NAN;
    let mut raw = String::new();
    for set in sets {
        let mut rates = Vec::new();
        let mut totals = Vec::new();
        let mut last = serde_json::Value::Null;
        let mut hwm_tenth = 0;
        let mut hwm_end = 0;
        for round in 1..=opts.rounds {
            // One process per run: VmHWM is the run's own peak.
            let out = Command::new(&bench)
                .args(["--events", &MATCHER_EVENTS.to_string(), "--probes", set])
                .arg("--json")
                .stderr(Stdio::inherit())
                .output()
                .context("running matcher_bench")?;
            anyhow::ensure!(out.status.success(), "matcher_bench failed: {}", out.status);
            let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
            let v: serde_json::Value = serde_json::from_str(&line)
                .with_context(|| format!("matcher_bench printed {line:?}"))?;
            let rate = v["matcher_events_per_s"].as_f64().unwrap_or(f64::NAN) / 1e6;
            eprintln!(
                "bench: matcher round {round}/{} {set}: {rate:.2} M events/s",
                opts.rounds
            );
            rates.push(rate);
            totals.push(v["total_events_per_s"].as_f64().unwrap_or(f64::NAN) / 1e6);
            hwm_tenth = hwm_tenth.max(v["vmhwm_tenth_kib"].as_u64().unwrap_or(0));
            hwm_end = hwm_end.max(v["vmhwm_end_kib"].as_u64().unwrap_or(0));
            let _ = writeln!(raw, "{line}");
            last = v;
        }
        let m = median(&rates);
        match set {
            "full" => full_rate = m,
            _ => lean_rate = m,
        }
        let _ = writeln!(
            rows,
            "| {set} | {} | {m:.2} ({}) | {:.2} | {:.0} | {} | {} | {} | {} | {hwm_tenth} | \
             {hwm_end} |",
            last["events"],
            range(&rates, 2),
            median(&totals),
            1e3 / m * if set == "full" { 4.0 } else { 2.0 },
            last["records"],
            last["tmfs"],
            last["aborted"],
            last["orphans"],
        );
    }
    let mut goal = format!(
        "Goal, matcher ≥ 10 M events/s on one core: full set {}; lean set {}. {}",
        verdict(full_rate, 10.0, "M events/s"),
        verdict(lean_rate, 10.0, "M events/s"),
        report::goal_mark("matcher-10M", full_rate >= 10.0 && lean_rate >= 10.0),
    );
    let profile = perf::profile(
        bench.as_os_str(),
        &[
            "--events".as_ref(),
            MATCHER_EVENTS.to_string().as_ref(),
            "--probes".as_ref(),
            "lean".as_ref(),
        ],
        &[
            ("generator", &["synth::", "matcher_bench::main"]),
            ("hash maps", &["hashbrown"]),
            ("histograms", &["stats::Latency", "hdrhistogram"]),
            ("race scan", &["vec_deque::iter::Iter"]),
            ("push", &["correlate::Matcher::push"]),
        ],
    );
    if full_rate < 10.0 || lean_rate < 10.0 {
        goal.push_str(
            " What limits it is the work per command rather than per event (see the ns per \
             command column): a command's queue and release each insert into or remove from \
             the command map, the release records its latency in three histograms (overall, \
             by opcode class, by LUN), and every ABORT TASK that finds nothing scans the recent \
             releases for a race; the full set's perform and result events are only lookups, \
             so the lean set, with half the events per command, has fewer events per second.",
        );
        if let Some(p) = &profile {
            let matcher = 100.0 - p.share("generator");
            let _ = write!(
                goal,
                " Measured (perf, lean set, below): of the samples outside the stream \
                 generator ({matcher:.0}% of all), hash maps take {:.0}%, histograms {:.0}%, \
                 the race scan of recent releases {:.0}%, `Matcher::push` itself {:.0}%.",
                p.share("hash maps") / matcher * 100.0,
                p.share("histograms") / matcher * 100.0,
                p.share("race scan") / matcher * 100.0,
                p.share("push") / matcher * 100.0,
            );
        }
    }
    let profile = match &profile {
        Some(p) => format!(
            "\n\nProfile of one lean run (`perf record -F 999`, {} samples; the generator's \
             symbols are `synth::` and `matcher_bench::main`):\n\n```text\n{}```",
            p.samples,
            p.table()
        ),
        None => "\n\n(perf is not installed: no profile.)".to_owned(),
    };
    goal.push_str(&profile);
    Ok(format!(
        "## Matcher throughput\n\n\
         `cargo run --release -p tgt-trace --example matcher_bench -- --events {MATCHER_EVENTS} \
         --probes SET --json`, {} run(s) per set, each its own process (single-threaded: one \
         core). The stream is `tgt_trace::synth`'s default mix (4 initiators at queue depth 32 \
         over 4 LUNs, 0.1% errors, 2% of commands held in tgtd's queue, an ABORT TASK per 1000 \
         commands, rarer ABORT TASK SET and LUN RESET), filtered to what the set delivers. \
         *Matcher* times `Matcher::push` alone; *end to end* includes generating the stream. Peak \
         memory is the process's VmHWM at 10% of the stream and at its end (equal: memory flat \
         in the stream's length); the maximum over the runs.\n\n\
         | set | events | matcher M events/s (median, spread) | end to end M events/s | ns per \
         command | records | TMFs | aborted | orphans | VmHWM @10% (KiB) | VmHWM @end (KiB) |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n{rows}\n{goal}\n\n\
         Raw output (`--json`):\n\n```text\n{raw}```\n",
        opts.rounds
    ))
}

/// A child's wall time, CPU time and peak RSS (KiB), from wait4.
fn run_measured(cmd: &mut Command) -> anyhow::Result<(Duration, Duration, u64)> {
    let start = Instant::now();
    let child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value for wait4 to fill.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, which nothing else reaps; the pointers
    // are to live locals.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    let wall = start.elapsed();
    anyhow::ensure!(pid > 0, "wait4: {}", std::io::Error::last_os_error());
    anyhow::ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{cmd:?} failed (wait status {status})"
    );
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    Ok((
        wall,
        tv(usage.ru_utime) + tv(usage.ru_stime),
        u64::try_from(usage.ru_maxrss).unwrap_or(0),
    ))
}

pub fn replay(opts: &Options) -> anyhow::Result<String> {
    let bench = build_example()?;
    let file = std::env::temp_dir().join(format!("tgt-trace-bench-{}.ndjson", std::process::id()));
    // Removed however this ends.
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(file.clone());
    let out = Command::new(&bench)
        .args([
            "--events",
            &REPLAY_EVENTS.to_string(),
            "--probes",
            "full",
            "--write",
        ])
        .arg(&file)
        .output()
        .context("running matcher_bench --write")?;
    anyhow::ensure!(
        out.status.success(),
        "matcher_bench --write failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::metadata(&file)?.len();
    let lines = {
        use std::io::BufRead as _;
        std::io::BufReader::new(std::fs::File::open(&file)?)
            .split(b'\n')
            .count() as u64
    };
    let tgt_trace = root().join("target/release/tgt-trace");
    let (mut rates, mut mbs, mut cpus, mut rss) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for round in 1..=opts.rounds {
        let (wall, cpu, maxrss) = run_measured(
            Command::new(&tgt_trace)
                .arg("replay")
                .arg(&file)
                .stdin(Stdio::null())
                .stdout(Stdio::null()),
        )?;
        let rate = lines as f64 / wall.as_secs_f64();
        eprintln!(
            "bench: replay round {round}/{} {:.2} M lines/s, {:.2} s, peak RSS {maxrss} KiB",
            opts.rounds,
            rate / 1e6,
            wall.as_secs_f64()
        );
        rates.push(rate / 1e6);
        mbs.push(bytes as f64 / wall.as_secs_f64() / 1e6);
        cpus.push(cpu.as_secs_f64() / wall.as_secs_f64() * 100.0);
        rss = rss.max(maxrss);
    }
    let m = median(&rates);
    let mut goal = format!(
        "Goal, replay ≥ 1 M lines/s: {}. {}",
        verdict(m, 1.0, "M lines/s"),
        report::goal_mark("replay-1M", m >= 1.0),
    );
    let profile = perf::profile(
        tgt_trace.as_os_str(),
        &["replay".as_ref(), file.as_os_str()],
        &[
            (
                "tagged",
                &[
                    "serde::private::de::content",
                    "serde_core::private::content",
                    "__deserialize_content",
                    "TagOrContent",
                ],
            ),
            ("json", &["serde", "from_utf8", "memchr"]),
            ("matcher", &["correlate::", "stats::"]),
            ("alloc", &["malloc", "_int_free", "cfree", "realloc"]),
        ],
    );
    if m < 1.0 {
        goal.push_str(
            " What limits it: replay is one thread that parses every line into the typed \
             `Line` with serde_json, runs it through the matcher and writes the matched records.",
        );
        if let Some(p) = &profile {
            let _ = write!(
                goal,
                " Measured (perf, below): serde and serde_json take {:.0}% of the samples, \
                 {:.0}% of all in serde's buffering of internally tagged enums (`Line` is \
                 tagged by `\"type\"` and `Event` by `\"kind\"`: each line is parsed into \
                 serde's generic `Content` tree and deserialized a second time from it); \
                 allocation {:.0}%; the matcher {:.0}%.",
                p.share("json"),
                p.share("tagged"),
                p.share("alloc"),
                p.share("matcher"),
            );
        }
    }
    let profile = match &profile {
        Some(p) => format!(
            "\n\nProfile of one replay (`perf record -F 999`, {} samples):\n\n```text\n{}```",
            p.samples,
            p.table()
        ),
        None => "\n\n(perf is not installed: no profile.)".to_owned(),
    };
    goal.push_str(&profile);
    Ok(format!(
        "## Replay throughput\n\n\
         `tgt-trace replay FILE > /dev/null` on a synthetic full-set trace written by \
         `matcher_bench --events {REPLAY_EVENTS} --probes full --write FILE` (a header, the \
         events, a summary: {lines} lines, {:.0} MB, in the page cache); {} run(s). Peak RSS is \
         the child's `ru_maxrss` (wait4).\n\n\
         | lines | M lines/s (median, spread) | MB/s | CPU (% of a core) | peak RSS (KiB) |\n\
         |---|---|---|---|---|\n| {lines} | {m:.2} ({}) | {:.0} | {:.0} | {rss} |\n\n{goal}\n",
        bytes as f64 / 1e6,
        opts.rounds,
        range(&rates, 2),
        median(&mbs),
        median(&cpus),
    ))
}
