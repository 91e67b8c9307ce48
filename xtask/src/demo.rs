//! The main job: a scratch tgtd on 127.0.0.1, a looping workload that makes
//! tgtd abort and defer, and tgt-trace watching it.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::io::Write as _;

use anyhow::Context as _;
use tgt_trace_e2e::tgtd::{Tgtd, TgtdOptions};

use crate::{cargo, root, run_step};

pub fn run(seconds: u64) -> anyhow::Result<()> {
    run_step(
        "build tgt-trace (release)",
        cargo().args(["build", "--release", "-p", "tgt-trace"]),
    )?;
    crate::setup::require_root("the demo starts tgtd and loads eBPF probes")?;
    let tgtd = Tgtd::start(&TgtdOptions::default()).context("starting a scratch tgtd")?;
    tgtd.add_lun(1, 64 << 20)
        .context("adding a file-backed LUN")?;
    tgtd.add_null_lun(2).context("adding a null LUN")?;
    eprintln!(
        "demo: tgtd pid {} on {} (control {}), target {}; Ctrl-C to stop",
        tgtd.pid(),
        tgtd.portal,
        tgtd.control,
        tgtd.target_iqn
    );

    // Ctrl-C is for tgt-trace, which then drains and exits; the demo cleans
    // up after it. The workload and tgtd run in their own process groups.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };

    let mut workload = start_workload(&tgtd)?;
    let mut tracer = Command::new(root().join("target/release/tgt-trace"));
    tracer.args(["record", "--pid", &tgtd.pid().to_string(), "-o", "-"]);
    if seconds > 0 {
        tracer.args(["--duration", &format!("{seconds}s")]);
    }
    let mut tracer = tracer
        .stdout(Stdio::piped())
        .spawn()
        .context("starting tgt-trace")?;
    let saved = root().join("target/demo.ndjson");
    let result = show(&mut tracer, &saved);
    let _ = tracer.wait();
    stop_group(&mut workload);
    drop(tgtd);
    result?;
    eprintln!(
        "demo: the trace is in {}; the matcher's report:",
        saved.display()
    );
    run_step(
        "tgt-trace report",
        Command::new(root().join("target/release/tgt-trace"))
            .arg("report")
            .arg(&saved),
    )
}

/// A loop of libiscsi tools: throughput bursts on the null LUN, and the TMF
/// tests (ABORT TASK, LUN RESET) on the file LUN.
fn start_workload(tgtd: &Tgtd) -> anyhow::Result<Child> {
    let script = format!(
        "while :; do \
           timeout -s INT 2 iscsi-perf -m 16 -b 8 {null} >/dev/null 2>&1; \
           iscsi-test-cu --dataloss -t iSCSI.iSCSITMF.AbortTaskSimpleAsync {file} >/dev/null 2>&1; \
           iscsi-test-cu --dataloss -t iSCSI.iSCSITMF.LUNResetSimpleAsync {file} >/dev/null 2>&1; \
           iscsi-inq {file} >/dev/null 2>&1; \
         done",
        null = tgtd.url(2),
        file = tgtd.url(1)
    );
    Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the workload")
}

fn stop_group(child: &mut Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: signalling our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
    }
    let _ = child.wait();
}

/// Prints TMF events as they come and a status line every second.
fn show(tracer: &mut Child, saved: &std::path::Path) -> anyhow::Result<()> {
    let stdout = tracer.stdout.take().context("tgt-trace's output")?;
    let mut copy = std::io::BufWriter::new(
        std::fs::File::create(saved).with_context(|| format!("creating {}", saved.display()))?,
    );
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = Instant::now();
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading tgt-trace's output")?;
        writeln!(copy, "{line}").context("saving the trace")?;
        let value: serde_json::Value =
            serde_json::from_str(&line).with_context(|| format!("bad line: {line}"))?;
        let kind = value["kind"]
            .as_str()
            .or(value["type"].as_str())
            .unwrap_or("?")
            .to_owned();
        match kind.as_str() {
            "tmf_request" => println!(
                "TMF  request  fn {} tag {:#010x} lun {} nexus {} mid {:#x}",
                value["function"],
                value["tag"].as_u64().unwrap_or(0),
                value["lun"],
                value["itn_id"],
                value["mid"].as_u64().unwrap_or(0)
            ),
            "tmf_return" => println!(
                "TMF  return   {} mid {:#x}",
                match value["ret"].as_i64() {
                    Some(0) => "DONE",
                    Some(1) => "QUEUED (deferred behind a busy command)",
                    _ => "FAILED",
                },
                value["mid"].as_u64().unwrap_or(0)
            ),
            "tmf_response" => println!(
                "TMF  response result {} mid {:#x}",
                value["result"],
                value["mid"].as_u64().unwrap_or(0)
            ),
            "summary" => println!("{line}"),
            _ => {}
        }
        *counts.entry(kind).or_default() += 1;
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let text: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
            eprintln!("demo: {}", text.join(", "));
        }
    }
    Ok(())
}
