//! The jobs around the build: set-up, the whole test suite, the demo.
//!
//! `cargo xtask setup` installs what is missing, idempotently; `test` and
//! `demo` run it first, so the README's two commands work on a fresh machine.

mod bench;
mod demo;
mod deploy;
mod fuzz;
mod owned;
mod setup;
mod soak;
mod soak_tui;
mod tgtd_builds;
mod vm;

use std::{
    process::{Command, ExitCode},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    /// Show the builds' own output (cargo -vv: also the eBPF build's).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    job: Job,
}

#[derive(Subcommand)]
enum Job {
    /// Install what building and testing need: nightly rust-src, bpf-linker, Debian packages.
    Setup,
    /// fmt, clippy (user space and eBPF), unit tests, promtool on deploy/, then as root the
    /// end-to-end tests and the Debian package (installed, checked, purged).
    Test {
        /// Skip the end-to-end tests (they need root and a real tgtd).
        #[arg(long)]
        no_e2e: bool,
        /// Only run end-to-end tests whose name contains this.
        #[arg(long)]
        e2e_filter: Option<String>,
    },
    /// Tracing overhead, CPU, sampled histograms, aborts, drops, per-probe cost, profile, matcher and replay speed -> BENCHMARKS.md.
    Bench {
        /// Interleaved rounds per mode.
        #[arg(long, default_value_t = 5)]
        rounds: u32,
        /// Seconds per run.
        #[arg(long, default_value_t = 8)]
        seconds: u64,
        /// Commands per second of the cpu and sampled sections' paced load.
        #[arg(long, default_value_t = 10_000)]
        rate: u32,
        /// Run only these sections (default: all); their blocks of
        /// BENCHMARKS.md are replaced, the others kept.
        #[arg(long, value_enum, num_args = 1.., value_delimiter = ',')]
        only: Vec<bench::Section>,
    },
    /// The demo's load with aborts, traced for N minutes: tgt-trace's RSS over time, drops, lag.
    Soak {
        #[arg(long, default_value_t = 30)]
        minutes: u64,
        /// Soak the live TUI (no -o) on a terminal instead of `record`.
        #[arg(long)]
        tui: bool,
        /// Record with `--sample PERCENT` (written to BENCHMARKS.md's
        /// "soak-sampled" section, apart from the unsampled soak).
        #[arg(long, value_name = "PERCENT", conflicts_with = "tui")]
        sample: Option<String>,
        /// With --sample: its `--sample-period`.
        #[arg(long, value_name = "DURATION", requires = "sample")]
        sample_period: Option<String>,
    },
    /// Fuzz the readers of untrusted input (records, traces, replay) with N cases per target, in release.
    Fuzz {
        /// Cases per fuzz target.
        #[arg(long, default_value_t = 20_000)]
        cases: u32,
    },
    /// Build tgtd from Debian's source in several ways (gcc -O0..-Os, CET, LTO, clang, a
    /// corrupted layout) into target/tgtd-builds/, with manifest.json (issue 17).
    TgtdBuilds {
        /// Then, as `cargo xtask test` does, run the TMF scenarios on each build
        /// `tgt-trace probes` calls traceable (builds tgt-trace in release first;
        /// `TGT_TRACE_BIN` names another tgt-trace to test).
        #[arg(long)]
        scenarios: bool,
    },
    /// Build the Debian package (release binary, man pages, unit, rules) into target/debian/.
    Deb,
    /// LIO (the kernel's SCSI target) in a throw-away qemu guest with Debian's kernel: the
    /// TMF scenarios run inside under tgt-trace; their results, the trace, the console.
    Vm {
        /// Kill the guest after this many seconds.
        #[arg(long, default_value_t = vm::GUEST_TIMEOUT.as_secs())]
        timeout: u64,
    },
    /// Start a scratch tgtd on 127.0.0.1 (or LIO in a qemu guest), drive a workload that
    /// causes aborts, and trace it live.
    Demo {
        /// The SCSI target: tgtd on this host, or LIO in a qemu guest (`cargo xtask vm`'s).
        #[arg(long, value_enum, default_value_t = DemoTarget::Tgtd)]
        target: DemoTarget,
        /// Stop after this many seconds (0: until Ctrl-C, or q in the TUI; with
        /// --target lio, 0 means 30: the guest always powers off).
        #[arg(long, visible_alias = "duration", default_value_t = 0)]
        seconds: u64,
        /// Print TMF records and orphans as text instead of the TUI (the
        /// TUI needs a terminal and no --seconds).
        #[arg(long)]
        text: bool,
        /// Where to save the trace [default: target/demo.ndjson].
        #[arg(long, value_name = "FILE")]
        save: Option<std::path::PathBuf>,
        /// Save every event too (about 16 MB/s at the demo's load), not only the
        /// matched records and summaries.
        #[arg(long)]
        keep_events: bool,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum DemoTarget {
    Tgtd,
    Lio,
}

static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn main() -> ExitCode {
    let cli = Cli::parse();
    VERBOSE.store(cli.verbose, std::sync::atomic::Ordering::Relaxed);
    // The jobs that start tgtd or a workload stop them on every signal.
    let signals = match &cli.job {
        Job::Demo { .. } | Job::Soak { .. } | Job::Vm { .. } => Some(owned::Mode::Cooperative),
        Job::Bench { .. } => Some(owned::Mode::Immediate),
        Job::Setup | Job::Test { .. } | Job::Fuzz { .. } | Job::Deb | Job::TgtdBuilds { .. } => {
            None
        }
    };
    if let Some(mode) = signals
        && let Err(err) = owned::install(mode)
    {
        eprintln!("xtask: {err:#}");
        return ExitCode::FAILURE;
    }
    let result = match cli.job {
        Job::Setup => setup::run(),
        Job::Test { no_e2e, e2e_filter } => test(no_e2e, e2e_filter.as_deref()),
        Job::Bench {
            rounds,
            seconds,
            rate,
            only,
        } => setup::run().and_then(|()| {
            bench::run(&bench::Options {
                rounds,
                seconds,
                rate,
                only,
            })
        }),
        Job::Soak {
            minutes,
            tui,
            sample,
            sample_period,
        } => setup::run().and_then(|()| {
            if tui {
                soak_tui::run(minutes)
            } else {
                let sampling = sample.map(|percent| soak::Sampling {
                    percent,
                    period: sample_period,
                });
                soak::run(minutes, sampling.as_ref())
            }
        }),
        Job::Fuzz { cases } => fuzz::run(cases),
        Job::TgtdBuilds { scenarios } => tgtd_builds::run().and_then(|builds| {
            if !scenarios {
                return Ok(());
            }
            setup::run()?;
            build_release(&["tgt-trace", "tgt-slowio"])?;
            // The tgt-trace under test, as the e2e tests take it.
            let tgt_trace = std::env::var_os("TGT_TRACE_BIN")
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| root().join("target/release/tgt-trace"));
            tgtd_builds::scenarios_per_build(&builds, &tgt_trace)
        }),
        Job::Deb => setup::run()
            .and_then(|()| build_release(&["tgt-trace"]))
            .and_then(|()| deploy::package())
            .map(|_| ()),
        Job::Vm { timeout } => setup::run().and_then(|()| vm::run(Duration::from_secs(timeout))),
        Job::Demo {
            target: DemoTarget::Lio,
            seconds,
            ..
        } => setup::run()
            .and_then(|()| vm::demo(Duration::from_secs(if seconds == 0 { 30 } else { seconds }))),
        Job::Demo {
            target: DemoTarget::Tgtd,
            seconds,
            text,
            save,
            keep_events,
        } => setup::run().and_then(|()| {
            demo::run(&demo::Options {
                seconds,
                view: demo::View::choose(seconds, text),
                save: save.unwrap_or_else(demo::default_save),
                keep_events,
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::from(owned::exit_status()),
        Err(err) => {
            owned::note(&format!("xtask: {err:#}"));
            ExitCode::FAILURE
        }
    }
}

/// The workspace root (xtask lives one level below it).
pub fn root() -> std::path::PathBuf {
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_owned()
}

pub fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(root());
    cmd
}

/// `cargo build --release --locked` of these packages; the builds' own
/// output only with `-v`.
pub fn build_release(packages: &[&str]) -> anyhow::Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--release", "--locked"]);
    if VERBOSE.load(std::sync::atomic::Ordering::Relaxed) {
        cmd.arg("-vv");
    }
    for package in packages {
        cmd.args(["-p", package]);
    }
    run_step("build tgt-trace (release)", &mut cmd)
}

/// Runs a command, failing with its command line when it fails.
pub fn run_step(what: &str, cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: {what}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{what} failed ({status}): {cmd:?}");
    }
    Ok(())
}

fn test(no_e2e: bool, e2e_filter: Option<&str>) -> anyhow::Result<()> {
    setup::run()?;
    run_step(
        "cargo fmt --check",
        cargo().args(["fmt", "--all", "--check"]),
    )?;
    run_step(
        "clippy (user space)",
        cargo().args([
            "clippy",
            "--workspace",
            "--exclude",
            "tgt-trace-ebpf",
            "--all-targets",
            "--locked",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    run_step(
        "clippy (eBPF)",
        Command::new("rustup")
            .current_dir(root().join("tgt-trace-ebpf"))
            .args([
                "run",
                "nightly",
                "cargo",
                "clippy",
                "--release",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--locked",
                "--",
                "-D",
                "warnings",
            ]),
    )?;
    run_step(
        "unit and property tests",
        cargo()
            .args([
                "test",
                "--workspace",
                "--exclude",
                "tgt-trace-ebpf",
                "--locked",
            ])
            .args(["--exclude", "tgt-trace-e2e"]),
    )?;
    run_step(
        "e2e crate's own unit tests",
        cargo().args(["test", "-p", "tgt-trace-e2e", "--lib", "--locked"]),
    )?;
    deploy::check_rules()?;
    if no_e2e {
        eprintln!("xtask: end-to-end tests skipped (--no-e2e)");
        return Ok(());
    }
    setup::require_root("the end-to-end tests start tgtd and load eBPF probes")?;
    // Before the end-to-end tests: tests/tests/builds.rs reads its manifest.
    let builds = tgtd_builds::run()?;
    // tests/tests/lio.rs boots LIO in a qemu guest: its packages and kernel.
    vm::setup()?;
    // tgt-trace-e2e: lio-scenarios, which runs in that guest.
    build_release(&["tgt-trace", "tgt-slowio", "tgt-trace-e2e"])?;
    let mut e2e = cargo();
    e2e.args([
        "test",
        "--release",
        "--locked",
        "-p",
        "tgt-trace-e2e",
        "--tests",
        "--",
    ])
    .args(["--test-threads=1"])
    .env("TGT_TRACE_BIN", root().join("target/release/tgt-trace"))
    .env("LIO_SCENARIOS_BIN", vm::scenarios_bin())
    // Debian's tgtd: the other builds get their own runs below.
    .env_remove(tgt_trace_e2e::tgtd::TGTD_ENV)
    // The demo's end-to-end test runs this very xtask.
    .env(
        "XTASK_BIN",
        std::env::current_exe().context("finding xtask's own path")?,
    );
    if let Some(filter) = e2e_filter {
        e2e.arg(filter);
    }
    run_step(
        "end-to-end tests (real tgtd, real initiators, root)",
        &mut e2e,
    )?;
    if e2e_filter.is_some() {
        eprintln!(
            "xtask: the scenarios on each tgtd build and the package's install test skipped \
             (--e2e-filter)"
        );
        return Ok(());
    }
    tgtd_builds::scenarios_per_build(&builds, &root().join("target/release/tgt-trace"))?;
    // The release build above is the one packaged: no second build.
    eprintln!("xtask: deploy: the package, installed, checked and purged");
    let deb = deploy::package()?;
    deploy::install_and_remove(&deb)
}
