//! `cargo xtask bench`: tracing overhead on a saturated tgtd, interleaved
//! runs, medians and spread; writes BENCHMARKS.md.

use std::{
    fmt::Write as _,
    process::{Command, Stdio},
};

use anyhow::Context as _;
use tgt_trace_e2e::tgtd::{Tgtd, TgtdOptions};

use crate::{cargo, root, run_step};

/// What one run measures.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Untraced,
    TgtTrace(&'static str),
    /// bpftrace on the same probe points as the lean set, printing the same fields.
    Bpftrace,
}

impl Mode {
    fn name(self) -> String {
        match self {
            Mode::Untraced => "untraced".to_owned(),
            Mode::TgtTrace(set) => format!("tgt-trace {set}"),
            Mode::Bpftrace => "bpftrace (lean's probe points)".to_owned(),
        }
    }
}

/// The lean set's probe points and fields, in bpftrace: the queue and release
/// of each command (struct offsets as in tgt-trace-common::layout).
const BPFTRACE_LEAN: &str = r#"
BEGIN { printf("ready\n"); }
uprobe:/usr/sbin/tgtd:target_cmd_queue /pid == $1/ {
  $c = arg1;
  printf("q %d %llu %llu %llu %d\n", pid, nsecs, *(uint64*)($c + 120), *(uint64*)($c + 168), *(uint8*)(*(uint64*)($c + 144)));
}
uprobe:/usr/sbin/tgtd:target_cmd_done /pid == $1/ {
  $c = arg0;
  printf("r %d %llu %llu %llu %d\n", pid, nsecs, *(uint64*)($c + 120), *(uint64*)($c + 168), *(int32*)($c + 176));
}
"#;

pub fn run(rounds: u32, seconds: u64) -> anyhow::Result<()> {
    crate::setup::debian_packages(&["bpftrace"])?;
    run_step(
        "build tgt-trace (release)",
        cargo().args(["build", "--release", "-p", "tgt-trace"]),
    )?;
    crate::setup::require_root("the benchmark starts tgtd and loads eBPF probes")?;
    let tgtd = Tgtd::start(&TgtdOptions::default()).context("starting tgtd")?;
    tgtd.add_null_lun(1).context("adding a null LUN")?;
    let url = tgtd.url(1);
    let modes = [
        Mode::Untraced,
        Mode::TgtTrace("tmf"),
        Mode::TgtTrace("lean"),
        Mode::TgtTrace("full"),
        Mode::Bpftrace,
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut drops: Vec<u64> = vec![0; modes.len()];
    for round in 1..=rounds {
        for (i, &mode) in modes.iter().enumerate() {
            let (iops, dropped) = measure(&tgtd, &url, mode, seconds)?;
            eprintln!(
                "bench: round {round}/{rounds} {:<32} {iops:>9.0} IOPS",
                mode.name()
            );
            results[i].push(iops);
            drops[i] += dropped;
        }
    }
    let untraced = median(&results[0]);
    let bpftrace = median(&results[modes.len() - 1]);
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| mode | IOPS (median) | spread (min–max) | traced/untraced | vs bpftrace | drops |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|");
    for (i, mode) in modes.iter().enumerate() {
        let m = median(&results[i]);
        let (lo, hi) = spread(&results[i]);
        // Only the lean set has the same probe points as the bpftrace script.
        let vs_bpftrace = match mode {
            Mode::TgtTrace("lean") => format!("{:.2}×", m / bpftrace),
            _ => "—".to_owned(),
        };
        let dropped = match mode {
            Mode::TgtTrace(_) => drops[i].to_string(),
            _ => "—".to_owned(),
        };
        let _ = writeln!(
            table,
            "| {} | {m:.0} | {lo:.0}–{hi:.0} | {:.2} | {vs_bpftrace} | {dropped} |",
            mode.name(),
            m / untraced
        );
    }
    println!("{table}");
    write_report(&table, rounds, seconds)
}

/// One run of `iscsi-perf -m 32 -b 1` for `seconds`, under `mode`.
fn measure(tgtd: &Tgtd, url: &str, mode: Mode, seconds: u64) -> anyhow::Result<(f64, u64)> {
    let perf = format!(
        "timeout -s INT {seconds} iscsi-perf -m 32 -b 1 {url} 2>&1 | tr '\\r' '\\n' | \
         grep -o 'iops average [0-9]*' | tail -1 | awk '{{print $3}}'"
    );
    let trace_file = tgtd.dir.join("bench.ndjson");
    let pid = tgtd.pid().to_string();
    let output = match mode {
        Mode::Untraced => Command::new("sh").args(["-c", &perf]).output()?,
        Mode::TgtTrace(set) => Command::new(root().join("target/release/tgt-trace"))
            .args(["record", "--pid", &pid, "--probes", set, "-o"])
            .arg(&trace_file)
            .args(["--", "sh", "-c", &perf])
            .stderr(Stdio::null())
            .output()?,
        Mode::Bpftrace => {
            let mut bpftrace = Command::new("bpftrace")
                .args(["-e", BPFTRACE_LEAN, &pid])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting bpftrace")?;
            wait_for_attach(&mut bpftrace)?;
            let out = Command::new("sh").args(["-c", &perf]).output()?;
            // SAFETY: signalling our own child.
            unsafe { libc::kill(bpftrace.id() as i32, libc::SIGINT) };
            let _ = bpftrace.wait();
            out
        }
    };
    let iops: f64 = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .with_context(|| format!("iscsi-perf printed no IOPS under {}", mode.name()))?;
    let dropped = match mode {
        Mode::TgtTrace(_) => {
            let text = std::fs::read_to_string(&trace_file).unwrap_or_default();
            let _ = std::fs::remove_file(&trace_file);
            let summary: serde_json::Value = text
                .lines()
                .last()
                .and_then(|l| serde_json::from_str(l).ok())
                .context("the trace has no summary line")?;
            ["ring_full", "read_failed", "decode_errors"]
                .iter()
                .map(|k| summary["drops"][k].as_u64().unwrap_or(0))
                .sum()
        }
        _ => 0,
    };
    Ok((iops, dropped))
}

/// bpftrace runs BEGIN once every probe is attached; the script's BEGIN
/// prints "ready". Its output is then consumed, as a user's terminal would.
fn wait_for_attach(child: &mut std::process::Child) -> anyhow::Result<()> {
    use std::io::{BufRead as _, BufReader};
    let stdout = child.stdout.take().context("bpftrace's stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    for line in lines.by_ref() {
        if line? == "ready" {
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(());
        }
    }
    anyhow::bail!("bpftrace exited before attaching its probes")
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn spread(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(0.0, f64::max);
    (lo, hi)
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        })
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} × {cpu}, Linux {}", kernel.trim())
}

fn write_report(table: &str, rounds: u32, seconds: u64) -> anyhow::Result<()> {
    let text = format!(
        "# Benchmarks\n\n\
         Written by `cargo xtask bench`. Machine: {}.\n\n\
         ## Overhead at saturation\n\n\
         tgtd with a `null` backing store on 127.0.0.1, driven by `iscsi-perf -m 32 -b 1` on the \
         same two cores; {rounds} interleaved rounds of {seconds} s per mode. tgt-trace writes its \
         NDJSON to a file, as in use. bpftrace runs the lean set's probe points and prints the same \
         fields.\n\n{table}\n\
         Goals (issue #7): traced/untraced ≥ 0.88 with full per-command tracing, ≥ 0.95 in the \
         TMF-only set, ≥ 1.3× bpftrace, 0 drops.\n",
        machine()
    );
    std::fs::write(root().join("BENCHMARKS.md"), text).context("writing BENCHMARKS.md")
}
