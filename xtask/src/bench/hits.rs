//! `hits`: how often each of tgt-trace's programs runs, per command and per
//! TMF, under a saturating load with an ABORT TASK loop beside it. The
//! kernel counts each BPF program's runs and run time when
//! `kernel.bpf_stats_enabled` is 1 (on for the section, restored after);
//! bpftool reports them by program, and the tracer's fdinfo says which programs are its own. A uprobe's run
//! count is its hit count: this is what each probe point costs tgtd's event
//! loop in traps, not only in BPF run time.

use std::{collections::BTreeMap, fmt::Write as _, process::Command};

use anyhow::Context as _;
use tgt_trace_e2e::tgtd::Tgtd;

use super::{
    Options,
    live::{self, AbortLoop, Mode},
};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Puts `kernel.bpf_stats_enabled` back as it was.
struct StatsOn(String);

impl StatsOn {
    fn enable() -> anyhow::Result<StatsOn> {
        let before = std::fs::read_to_string(STATS).context("reading bpf_stats_enabled")?;
        std::fs::write(STATS, "1").context("enabling BPF run statistics")?;
        Ok(StatsOn(before.trim().to_owned()))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = std::fs::write(STATS, &self.0);
    }
}

/// The ids of the BPF programs process `pid` holds open (its fdinfo says
/// `prog_id:` for each).
fn program_ids(pid: u32) -> Vec<u64> {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    fds.filter_map(|fd| std::fs::read_to_string(fd.ok()?.path()).ok())
        .filter_map(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("prog_id:"))
                .and_then(|id| id.trim().parse().ok())
        })
        .collect()
}

/// (runs, run time ns) of each program `pid` holds, by name.
fn program_runs(pid: u32) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let ids = program_ids(pid);
    anyhow::ensure!(!ids.is_empty(), "tgt-trace {pid} holds no BPF program");
    let out = Command::new("bpftool")
        .args(["--json", "prog", "show"])
        .output()
        .context("running bpftool")?;
    anyhow::ensure!(out.status.success(), "bpftool prog show failed");
    let progs: serde_json::Value = serde_json::from_slice(&out.stdout).context("bpftool's JSON")?;
    let mut runs = BTreeMap::new();
    for p in progs.as_array().into_iter().flatten() {
        let ours = p["id"].as_u64().is_some_and(|id| ids.contains(&id));
        if let (true, Some(name)) = (ours, p["name"].as_str()) {
            runs.insert(
                name.to_owned(),
                (
                    p["run_cnt"].as_u64().unwrap_or(0),
                    p["run_time_ns"].as_u64().unwrap_or(0),
                ),
            );
        }
    }
    Ok(runs)
}

pub fn run(tgtd: &Tgtd, opts: &Options) -> anyhow::Result<String> {
    crate::setup::debian_packages(&["bpftool"])?;
    let _stats = StatsOn::enable()?;
    let mut body = format!(
        "## Hits per command and per TMF\n\n`cargo xtask bench --only hits --seconds {s}`: \
         `iscsi-perf -m 32 -b 1` on a null LUN for {s} s with the bench's ABORT TASK loop \
         on a session of its own; each program's run count (= uprobe hits) and BPF run time \
         from the kernel's BPF statistics (`kernel.bpf_stats_enabled`, read with bpftool). \
         Commands are iscsi-perf's average IOPS times the run's length.\n\n\
         | probe set | program | hits | per command | per TMF | BPF run time per hit |\n\
         |---|---|---:|---:|---:|---:|\n",
        s = opts.seconds
    );
    for set in ["tmf", "lean", "full"] {
        let tracer = Mode::tgt_trace(set)
            .start(tgtd)?
            .context("tgt-trace starts")?;
        let pid = tracer.pid().context("tgt-trace's pid")?;
        let before = program_runs(pid)?;
        let aborts = AbortLoop::start(tgtd)?;
        let iops = live::iscsi_perf(tgtd, opts.seconds)?;
        let tmfs = aborts.stop()?;
        let after = program_runs(pid)?;
        tracer.stop()?;
        let commands = iops * opts.seconds as f64;
        for (name, &(runs, ns)) in &after {
            let (runs0, ns0) = before.get(name).copied().unwrap_or_default();
            let hits = runs.saturating_sub(runs0);
            let time = ns.saturating_sub(ns0);
            let _ = writeln!(
                body,
                "| {set} | `{name}` | {hits} | {:.3} | {:.2} | {} |",
                hits as f64 / commands.max(1.0),
                hits as f64 / (tmfs.max(1) as f64),
                if hits == 0 {
                    "—".to_owned()
                } else {
                    format!("{:.2} µs", time as f64 / hits as f64 / 1e3)
                }
            );
        }
        let _ = writeln!(
            body,
            "| {set} | (load) | {commands:.0} commands, {tmfs} TMFs | | | |"
        );
    }
    body.push_str(
        "\nThe iSCSI layer's points (`tmf_received`, `tmf_tx_start`, `tmf_sent`, \
         `conn_close`) are hit per TMF, per NOOP-OUT or LOGOUT response (`tmf_sent`, filtered \
         in the kernel) and per connection, never per ordinary command.\n",
    );
    Ok(body)
}
