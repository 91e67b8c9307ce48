//! `cargo xtask soak --minutes N`: the demo's mixed load with aborts, traced
//! with `--matched` for N minutes, sampling tgt-trace's memory, its drops and
//! how far the trace lags behind tgtd. The NDJSON is read as it is written
//! (and then discarded: a long soak writes gigabytes), so serialisation is
//! exercised as in use.

use std::{
    fmt::Write as _,
    io::BufReader,
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tgt_trace_e2e::{slowio::SlowIo, workload};

use crate::{demo, owned, root};

/// What the reader thread knows of the stream so far.
#[derive(Default, Clone)]
struct Seen {
    lines: u64,
    last_event_ts_ns: u64,
    drops: u64,
    tmfs: u64,
    orphans: u64,
    summary: Option<serde_json::Value>,
}

struct Sample {
    at: Duration,
    rss_kb: u64,
    hwm_kb: u64,
    lines: u64,
    drops: u64,
    lag_ms: f64,
}

/// `--sample` for the recording, as tgt-trace takes it.
pub struct Sampling {
    pub percent: String,
    pub period: Option<String>,
}

impl Sampling {
    fn args(&self) -> Vec<String> {
        let mut args = vec!["--sample".to_owned(), self.percent.clone()];
        if let Some(period) = &self.period {
            args.extend(["--sample-period".to_owned(), period.clone()]);
        }
        args
    }
}

pub fn run(minutes: u64, sampling: Option<&Sampling>) -> anyhow::Result<()> {
    crate::build_release(&["tgt-trace", "tgt-slowio"])?;
    crate::setup::require_root("the soak starts tgtd and loads eBPF probes")?;
    let gate = SlowIo::new("soak").context("the slow-I/O gate")?;
    let env = gate
        .env("lun1.img", u64::from(workload::HELD_LBA) * 512, 4096)
        .context("the slow-I/O library")?;
    let gate = Arc::new(gate);
    let scratch = demo::scratch_tgtd(env)?;
    let tgtd = &scratch.tgtd;
    tgtd.add_lun(1, 64 << 20).context("adding a file LUN")?;
    tgtd.add_null_lun(2).context("adding a null LUN")?;

    let mut tracer = owned::Tracer::new(
        Command::new(root().join("target/release/tgt-trace"))
            .args(["record", "--pid", &tgtd.pid().to_string(), "--matched"])
            .args(["--summary-every", "10s", "-o", "-"])
            .args(sampling.map(Sampling::args).unwrap_or_default())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting tgt-trace")?,
    );
    let stdout = tracer.child.stdout.take().context("tgt-trace's output")?;
    let seen = Arc::new(Mutex::new(Seen::default()));
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || read_stream(BufReader::new(stdout), &seen))
    };
    // The header is written once the probes are attached: start the load then.
    let attached = Instant::now();
    while seen.lock().map(|s| s.lines).unwrap_or(0) == 0 {
        if owned::stopping().is_some() {
            return Ok(());
        }
        anyhow::ensure!(
            tracer.try_wait()?.is_none(),
            "tgt-trace exited before attaching its probes"
        );
        anyhow::ensure!(
            attached.elapsed() < Duration::from_secs(30),
            "tgt-trace wrote no header in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let load = demo::Load::start(tgtd, &gate, demo::log_file("soak-aborter.log")?)?;

    let total = Duration::from_secs(minutes.max(1) * 60);
    let every = (total / 30).max(Duration::from_secs(5));
    let start = Instant::now();
    let mut samples = Vec::new();
    eprintln!("soak: {minutes} min, a sample every {every:?}");
    while start.elapsed() < total {
        if owned::wait_for_stop(every.min(total.saturating_sub(start.elapsed()))) {
            break;
        }
        let (rss_kb, hwm_kb) = memory(tracer.child.id());
        let now = Seen::clone(&seen.lock().expect("reader alive"));
        let lag_ms = (monotonic_ns().saturating_sub(now.last_event_ts_ns)) as f64 / 1e6;
        let sample = Sample {
            at: start.elapsed(),
            rss_kb,
            hwm_kb,
            lines: now.lines,
            drops: now.drops,
            lag_ms,
        };
        eprintln!(
            "soak: {:>6.0}s RSS {:>7} kB (peak {:>7} kB) lines {:>11} drops {} lag {:.0} ms",
            sample.at.as_secs_f64(),
            sample.rss_kb,
            sample.hwm_kb,
            sample.lines,
            sample.drops,
            sample.lag_ms
        );
        samples.push(sample);
    }
    load.stop();
    if owned::stopping().is_none() {
        // SAFETY: signalling our own child, not yet reaped; it drains and
        // writes its summary. (On a signal it has been told already.)
        unsafe { libc::kill(tracer.child.id() as i32, libc::SIGINT) };
    }
    let status = tracer.wait().context("waiting for tgt-trace")?;
    let _ = reader.join();
    drop(scratch);
    if owned::stopping().is_some() {
        owned::note("soak: stopped early; BENCHMARKS.md is left as it was");
        return Ok(());
    }
    let seen = seen.lock().expect("reader done").clone();
    let summary = seen
        .summary
        .clone()
        .context("tgt-trace wrote no summary line")?;
    anyhow::ensure!(status.success(), "tgt-trace exited with {status}");
    report(minutes, sampling, &samples, &seen, &summary)
}

fn read_stream(lines: impl std::io::BufRead, seen: &Mutex<Seen>) {
    for line in lines.lines() {
        let Ok(line) = line else { return };
        let Ok(mut seen) = seen.lock() else { return };
        seen.lines += 1;
        // Only the lines that matter are parsed whole; events are frequent.
        if line.starts_with(r#"{"type":"event""#) {
            if let Some(ts) = field_u64(&line, r#""ts_ns":"#) {
                seen.last_event_ts_ns = seen.last_event_ts_ns.max(ts);
            }
        } else if line.starts_with(r#"{"type":"tmf""#) {
            seen.tmfs += 1;
        } else if line.starts_with(r#"{"type":"orphan""#) {
            seen.orphans += 1;
        } else if (line.starts_with(r#"{"type":"matched_summary""#)
            || line.starts_with(r#"{"type":"summary""#))
            && let Ok(value) = serde_json::from_str::<serde_json::Value>(&line)
        {
            let drops = &value["drops"];
            seen.drops = ["ring_full", "read_failed", "decode_errors"]
                .iter()
                .map(|k| drops[k].as_u64().unwrap_or(0))
                .sum();
            if value["type"] == "summary" {
                seen.summary = Some(value);
            }
        }
    }
}

fn field_u64(line: &str, key: &str) -> Option<u64> {
    let rest = &line[line.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// VmRSS and VmHWM of a process, in kB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (kb("VmRSS:"), kb("VmHWM:"))
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn report(
    minutes: u64,
    sampling: Option<&Sampling>,
    samples: &[Sample],
    seen: &Seen,
    summary: &serde_json::Value,
) -> anyhow::Result<()> {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| at | RSS (kB) | peak RSS (kB) | lines written | drops | lag behind tgtd (ms) |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(
            table,
            "| {:.0} s | {} | {} | {} | {} | {:.0} |",
            s.at.as_secs_f64(),
            s.rss_kb,
            s.hwm_kb,
            s.lines,
            s.drops,
            s.lag_ms
        );
    }
    // RSS after the warm-up (the first tenth of the samples) against the end.
    let warm = samples.get(samples.len() / 10).map_or(0, |s| s.rss_kb);
    let last = samples.last().map_or(0, |s| s.rss_kb);
    let growth = if warm == 0 {
        0.0
    } else {
        (last as f64 - warm as f64) / warm as f64 * 100.0
    };
    let events = summary["events"].as_u64().unwrap_or(0);
    let drops = seen.drops;
    let verdict = format!(
        "{minutes} min: {events} events, {} TMF records, {} orphans, drops {drops}; \
         RSS {warm} kB after warm-up, {last} kB at the end ({growth:+.1}%).",
        seen.tmfs, seen.orphans
    );
    println!("{table}\n{verdict}");
    let (title, name, sample_args, lag_note) = match sampling {
        Some(s) => (
            "Soak (sampled)",
            "soak-sampled",
            format!(" {}", s.args().join(" ")),
            " Between windows only TMF and nexus events come, so lag there is also the time \
             since the last of them.",
        ),
        None => ("Soak", "soak", String::new(), ""),
    };
    let block = format!(
        "## {title}\n\n`cargo xtask soak --minutes {minutes}{sample_args}`: the demo's workload \
         (libiscsi throughput bursts and TMF tests, the project's initiator deferring an ABORT \
         TASK behind a held READ and aborting a tag that never existed, once a second), traced \
         with `record --matched --summary-every 10s{sample_args}`; the NDJSON is read as \
         written. RSS is tgt-trace's; lag is how far the newest event read trails tgtd's clock \
         (drain interval plus pipe).{lag_note}\n\n{table}\n{verdict}\n"
    );
    crate::bench::report::write_section(name, &block, &crate::bench::report::machine())
}
