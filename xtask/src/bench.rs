//! `cargo xtask bench`: what tracing costs tgtd, and how fast the user-space
//! side is; writes BENCHMARKS.md.
//!
//! Sections (all by default, or those given with `--only`):
//!
//! - `overhead`: IOPS at saturation (`iscsi-perf -m 32 -b 1` on a null LUN),
//!   interleaved runs untraced, with each probe set, the lean set with
//!   `--sample 10%`, and bpftrace on the lean set's probe points;
//! - `cpu`: tgtd's and the tracer's CPU time at a fixed, moderate rate paced
//!   by the project's initiator;
//! - `sampled`: the command latency histogram's p50 and p99 with the lean
//!   set traced all the time and with `--sample 10%`, on the `cpu` section's
//!   paced load;
//! - `aborts`: the overhead table with ABORT TASK / ABORT TASK SET sent in a
//!   tight loop on a session of its own next to the saturating load;
//! - `ring`: drops at saturation with the full set, the default ring and a
//!   sweep of `--ring-size` downwards;
//! - `probes`: one empty bpftrace uprobe per tgtd attach point: µs per hit,
//!   and whether the kernel emulates or single-steps the probed instruction;
//! - `hits`: each program's hits (the kernel's BPF run counts) per command
//!   and per TMF at saturation with an ABORT TASK loop, for each probe set;
//! - `profile`: tgtd's kernel and user stacks sampled during the full-set
//!   saturation run;
//! - `matcher`: the matcher on 10 M synthetic events (`examples/matcher_bench`);
//! - `replay`: `tgt-trace replay` on a synthetic trace of 2 M lines.
//!
//! Each section writes its own block of BENCHMARKS.md between
//! `<!-- bench:NAME -->` markers; blocks of sections not run are kept.

mod hits;
mod live;
mod offline;
mod overhead;
mod perf;
mod probes;
mod profile;
pub(crate) mod report;
mod sampled;

use anyhow::Context as _;

/// A part of the benchmark, runnable alone with `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Section {
    /// IOPS at saturation: untraced, each probe set, bpftrace.
    Overhead,
    /// Added latency per command (p50, p99) at queue depth 1, by mode.
    Latency,
    /// tgtd's and the tracer's CPU time at a fixed rate.
    Cpu,
    /// Command latency p50 and p99, sampled (`--sample 10%`) and not.
    Sampled,
    /// IOPS and TMFs/s at saturation with an ABORT TASK loop.
    Aborts,
    /// Drops at saturation with the full set; ring-size sweep.
    Ring,
    /// µs per uprobe hit at each attach point; first instructions.
    Probes,
    /// Each program's hits per command and per TMF, by probe set.
    Hits,
    /// tgtd's stacks during the full-set saturation run.
    Profile,
    /// Matcher throughput and memory on 10 M synthetic events.
    Matcher,
    /// `tgt-trace replay` throughput and memory on 2 M lines.
    Replay,
}

impl Section {
    pub const ALL: [Section; 11] = [
        Section::Overhead,
        Section::Latency,
        Section::Cpu,
        Section::Sampled,
        Section::Aborts,
        Section::Ring,
        Section::Probes,
        Section::Hits,
        Section::Profile,
        Section::Matcher,
        Section::Replay,
    ];

    /// The marker name of the section's block in BENCHMARKS.md.
    pub fn name(self) -> &'static str {
        match self {
            Section::Overhead => "overhead",
            Section::Latency => "latency",
            Section::Cpu => "cpu",
            Section::Sampled => "sampled",
            Section::Aborts => "aborts",
            Section::Ring => "ring",
            Section::Probes => "probes",
            Section::Hits => "hits",
            Section::Profile => "profile",
            Section::Matcher => "matcher",
            Section::Replay => "replay",
        }
    }

    /// Needs a live tgtd, root and eBPF.
    fn live(self) -> bool {
        !matches!(self, Section::Matcher | Section::Replay)
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Interleaved rounds per mode (medians and spread are over these).
    pub rounds: u32,
    /// Seconds per run.
    pub seconds: u64,
    /// Commands per second of the `cpu` and `sampled` sections' paced load.
    pub rate: u32,
    /// Sections to run; empty: all.
    pub only: Vec<Section>,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    anyhow::ensure!(opts.rounds >= 1, "--rounds must be at least 1");
    anyhow::ensure!(opts.seconds >= 1, "--seconds must be at least 1");
    anyhow::ensure!(opts.rate >= 1, "--rate must be at least 1");
    let mut sections = if opts.only.is_empty() {
        Section::ALL.to_vec()
    } else {
        opts.only.clone()
    };
    sections.sort();
    sections.dedup();
    let live = sections.iter().any(|s| s.live());
    if live {
        crate::setup::debian_packages(&["bpftrace"])?;
    }
    crate::build_release(&["tgt-trace"])?;
    let tgtd = if live {
        crate::setup::require_root("the benchmark starts tgtd and loads eBPF probes")?;
        // Registered: a signal stops it (and bench's tracers die with xtask).
        let scratch = crate::demo::scratch_tgtd(Vec::new())?;
        let tgtd = &scratch.tgtd;
        tgtd.add_null_lun(live::LUN.into())
            .context("adding a null LUN")?;
        // tgtd's first sessions and buffers are not part of any mode's numbers.
        live::iscsi_perf(tgtd, 2).context("warming up")?;
        Some(scratch)
    } else {
        None
    };
    let machine = report::machine();
    for section in sections {
        eprintln!("bench: section {}", section.name());
        let body = match (section, tgtd.as_ref().map(|s| &s.tgtd)) {
            (Section::Matcher, _) => offline::matcher(opts)?,
            (Section::Replay, _) => offline::replay(opts)?,
            (_, None) => unreachable!("live sections start tgtd"),
            (Section::Overhead, Some(t)) => overhead::saturation(t, opts)?,
            (Section::Latency, Some(t)) => overhead::latency(t, opts)?,
            (Section::Cpu, Some(t)) => overhead::cpu(t, opts)?,
            (Section::Sampled, Some(t)) => sampled::run(t, opts)?,
            (Section::Aborts, Some(t)) => overhead::aborts(t, opts)?,
            (Section::Ring, Some(t)) => overhead::ring(t, opts)?,
            (Section::Probes, Some(t)) => probes::run(t, opts)?,
            (Section::Hits, Some(t)) => hits::run(t, opts)?,
            (Section::Profile, Some(t)) => profile::run(t, opts)?,
        };
        println!("{body}");
        report::write_section(section.name(), &body, &machine)?;
        // After the section: the goals table shows the verdicts just written.
        report::write_intro(&machine)?;
    }
    Ok(())
}
