//! `cargo xtask vm`: LIO, the kernel's SCSI target, in a throw-away qemu
//! guest running Debian's kernel (the host's may have neither kprobes nor
//! modules), with the TMF scenarios (tgt-trace-e2e's lio-scenarios) run
//! inside under `tgt-trace record --target lio`; their results come back on
//! the guest's console.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tgt_trace_e2e::vm::{self, Demo, Dirs, GuestPlan, GuestRun};

use crate::{
    owned::{self, Registration, note},
    root,
};

/// TCG boots in seconds and the scenarios take a few more; this bounds a
/// guest that hangs (a TMF LIO never answers, a kernel panic's reboot).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The guest's scenario program, built by `cargo build -p tgt-trace-e2e`.
pub fn scenarios_bin() -> PathBuf {
    root().join("target/release/lio-scenarios")
}

pub fn dirs(name: &str) -> Dirs {
    Dirs {
        cache: root().join("target/vm/cache"),
        work: root().join("target/vm").join(name),
    }
}

/// Installs qemu, busybox and dmsetup if missing, and fetches the guest's
/// kernel into the cache: what the VM needs besides our own binaries.
pub fn setup() -> anyhow::Result<()> {
    crate::setup::debian_packages(vm::HOST_PACKAGES)?;
    let kernel = vm::kernel(&dirs("").cache).context("the guest's kernel")?;
    note(&format!(
        "xtask: vm: guest kernel {} ({})",
        kernel.release, kernel.package
    ));
    Ok(())
}

pub fn run(timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    setup()?;
    crate::build_release(&["tgt-trace", "tgt-trace-e2e"])?;
    note(&format!(
        "xtask: set-up took {:.1} s (packages, kernel, release builds)",
        started.elapsed().as_secs_f64()
    ));
    if owned::stopping().is_some() {
        return Ok(());
    }
    let plan = GuestPlan {
        scenarios: scenarios_bin(),
        tgt_trace: Some(root().join("target/release/tgt-trace")),
        demo: None,
    };
    let booted = Instant::now();
    let Some(run) = boot(&plan, "run", timeout)? else {
        return Ok(());
    };
    note(&format!(
        "xtask: vm: guest built, booted and done in {:.1} s",
        booted.elapsed().as_secs_f64()
    ));
    let log = root().join("target/vm/console.log");
    vm::save(&log, &run.console)?;
    let ok = summarize(&run);
    note(&format!("xtask: vm: console saved to {}", log.display()));
    if !ok {
        bail!(
            "the LIO scenarios failed (see above, and {} for the whole console)",
            log.display()
        );
    }
    Ok(())
}

/// Builds the guest under target/vm/`name` and boots it with qemu
/// registered for the signal thread's last resort; `None` when stopped by
/// a signal (qemu killed).
fn boot(plan: &GuestPlan, name: &str, timeout: Duration) -> anyhow::Result<Option<GuestRun>> {
    let mut registration = None;
    let verbose = crate::VERBOSE.load(std::sync::atomic::Ordering::Relaxed);
    let run = vm::run_guest(
        &dirs(name),
        plan,
        timeout,
        |qemu| registration = Some(Registration::group(qemu.pid(), None)),
        |line| {
            if verbose {
                note(&format!("guest: {line}"));
            }
        },
        &|| owned::stopping().is_some(),
    );
    drop(registration);
    if owned::stopping().is_some() {
        return Ok(None);
    }
    Ok(Some(run?))
}

/// Prints what each scenario saw; true when the guest ran to its end and
/// every scenario passed.
fn summarize(run: &GuestRun) -> bool {
    let mut ok = run.done && run.error.is_none();
    if let Some(error) = &run.error {
        note(&format!("xtask: vm: the guest's set-up failed: {error}"));
    }
    if !run.done {
        note("xtask: vm: the guest did not report to its end");
    }
    if let Some(release) = &run.kernel_release {
        note(&format!("xtask: vm: LIO on Linux {release}"));
    }
    match (&run.trace, &run.trace_unavailable) {
        (Some(trace), _) => note(&format!(
            "xtask: vm: trace: {} lines",
            trace.lines().count()
        )),
        (None, Some(why)) => note(&format!("xtask: vm: trace: unavailable {why}")),
        (None, None) => note("xtask: vm: trace: unavailable"),
    }
    for (name, code) in &run.statuses {
        note(&format!("xtask: vm: exit status of {name}: {code}"));
    }
    if run.scenarios.is_empty() {
        ok = false;
        note("xtask: vm: no scenario reported");
    }
    for scenario in &run.scenarios {
        ok &= scenario["passed"] == true;
        print_scenario(scenario);
    }
    if !run.scenarios_stderr.trim().is_empty() {
        note(&format!(
            "lio-scenarios stderr:\n{}",
            run.scenarios_stderr.trim_end()
        ));
    }
    if !ok || run.trace.is_none() {
        let stderr = run.tracer_stderr.trim();
        if !stderr.is_empty() {
            note(&format!("tgt-trace stderr:\n{}", indent(stderr, 10)));
        }
    }
    if let Some(dmesg) = run.sections.get("dmesg") {
        note(&format!("guest dmesg (LIO's lines):\n{}", dmesg.trim_end()));
    }
    ok
}

fn indent(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let mut out: Vec<String> = lines
        .iter()
        .take(max_lines)
        .map(|l| format!("  {l}"))
        .collect();
    if lines.len() > max_lines {
        out.push(format!("  ... {} more lines", lines.len() - max_lines));
    }
    out.join("\n")
}

fn text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".to_owned(),
        other => other.to_string(),
    }
}

fn print_scenario(s: &serde_json::Value) {
    let verdict = if s["passed"] == true { "PASS" } else { "FAIL" };
    println!("{verdict} {} ({} ms)", text(&s["scenario"]), text(&s["ms"]));
    for c in s["commands"].as_array().into_iter().flatten() {
        let sense = c
            .get("sense")
            .map(|x| format!(" sense {}", text(x)))
            .unwrap_or_default();
        println!(
            "    command ITT {} LUN {} opcode {}: {}{sense}  [{}]",
            text(&c["itt"]),
            text(&c["lun"]),
            text(&c["opcode"]),
            text(&c["outcome"]),
            text(&c["session"])
        );
    }
    for t in s["tmfs"].as_array().into_iter().flatten() {
        let referenced = t
            .get("referenced_itt")
            .map(|r| format!(" for ITT {}", text(r)))
            .unwrap_or_default();
        println!(
            "    TMF ITT {} {}{referenced} LUN {}: {} ({})  [{}]",
            text(&t["itt"]),
            text(&t["function"]),
            text(&t["lun"]),
            text(&t["response_name"]),
            text(&t["response"]),
            text(&t["session"])
        );
    }
    for c in s["checks"].as_array().into_iter().flatten() {
        let mark = if c["passed"] == true { "ok  " } else { "FAIL" };
        println!("    {mark} {}: {}", text(&c["check"]), text(&c["detail"]));
    }
    for n in s["notes"].as_array().into_iter().flatten() {
        println!("    note: {}", text(n));
    }
    if let Some(error) = s.get("error") {
        println!("    error: {}", text(error));
    }
}

/// `cargo xtask demo --target lio`: the load and the scenarios in a loop
/// inside the guest while tgt-trace shows them: its TUI on the console when
/// the host's stdin and stdout are a terminal, else a recorded trace and
/// its report.
pub fn demo(duration: Duration) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let started = Instant::now();
    setup()?;
    crate::build_release(&["tgt-trace", "tgt-trace-e2e"])?;
    note(&format!(
        "xtask: set-up took {:.1} s",
        started.elapsed().as_secs_f64()
    ));
    require_lio_target(&root().join("target/release/tgt-trace"))?;
    let terminal = (std::io::stdin().is_terminal() && std::io::stdout().is_terminal())
        .then(terminal_size)
        .flatten();
    let plan = GuestPlan {
        scenarios: scenarios_bin(),
        tgt_trace: Some(root().join("target/release/tgt-trace")),
        demo: Some(Demo { duration, terminal }),
    };
    // Boot, set-up and shutdown on top of the demo's own time.
    let timeout = duration + Duration::from_secs(120);
    if terminal.is_none() {
        let Some(run) = boot(&plan, "demo", timeout)? else {
            return Ok(());
        };
        let log = root().join("target/vm/demo-console.log");
        vm::save(&log, &run.console)?;
        if let Some(report) = run.sections.get("report") {
            println!("{}", report.trim_end());
        }
        for (name, code) in &run.statuses {
            note(&format!("xtask: demo: exit status of {name}: {code}"));
        }
        if !run.tracer_stderr.trim().is_empty() {
            note(&format!(
                "tgt-trace stderr:\n{}",
                indent(run.tracer_stderr.trim(), 20)
            ));
        }
        note(&format!("xtask: demo: console saved to {}", log.display()));
        if !run.done
            || run
                .statuses
                .get("tracer")
                .is_none_or(|c| c != "0" && c != "143")
        {
            bail!("the guest's tgt-trace did not run to its end (see above)");
        }
        return Ok(());
    }
    // On a terminal qemu shares it (the TUI reads keys): it stays in our
    // process group and is told to stop like tgt-trace in the tgtd demo.
    let dirs = dirs("demo");
    let kernel = vm::kernel(&dirs.cache)?;
    let (initrd, append) = vm::build_guest(&kernel, &plan, &dirs.work)?;
    let boot = vm::Boot {
        kernel: kernel.vmlinuz.clone(),
        initrd,
        append,
        memory_mb: 1024,
        timeout,
        interactive: true,
    };
    let child = boot
        .command()
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let mut qemu = owned::Tracer::new(child);
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = qemu.try_wait()? {
            if !status.success() && owned::stopping().is_none() {
                bail!("qemu failed ({status})");
            }
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the guest did not power off within {timeout:?}; qemu killed");
        }
        if owned::wait_for_stop(Duration::from_millis(200)) {
            // Tracer's drop sends SIGTERM, then kills.
            return Ok(());
        }
    }
}

/// tgt-trace must know `--target lio` for the demo; the scenarios run
/// falls back to untraced, the demo has nothing to show without it.
fn require_lio_target(tgt_trace: &Path) -> anyhow::Result<()> {
    let help = std::process::Command::new(tgt_trace)
        .args(["record", "--help"])
        .output()
        .with_context(|| format!("running {} record --help", tgt_trace.display()))?;
    let help = String::from_utf8_lossy(&help.stdout);
    if !help.contains("--target") {
        bail!(
            "{} has no `record --target` yet, so it cannot trace LIO: the LIO demo needs a \
             tgt-trace with `--target lio` (use `cargo xtask vm` for the untraced scenarios)",
            tgt_trace.display()
        );
    }
    Ok(())
}

/// The host terminal's rows and columns.
fn terminal_size() -> Option<(u16, u16)> {
    let mut size = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ fills the winsize struct passed by pointer.
    let rc = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &mut size) };
    (rc == 0 && size.ws_row > 0 && size.ws_col > 0).then_some((size.ws_row, size.ws_col))
}
