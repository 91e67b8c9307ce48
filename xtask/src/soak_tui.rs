//! `cargo xtask soak --tui --minutes N`: the live TUI, on a terminal (a
//! tmux server of its own, 80×24), watching the demo's load for N minutes
//! without `-o`: tgt-trace's memory over time, the bytes it hands the
//! storage layer (`/proc/PID/io` `write_bytes`: it must stay 0), and the
//! drops its header shows.

use std::{
    fmt::Write as _,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tgt_trace_e2e::{slowio::SlowIo, workload};

use crate::{demo, owned, root};

/// A tmux server of the soak's own; killed (with what it runs) on drop.
struct Tmux(String);

impl Tmux {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("tmux")
            .args(["-L", &self.0])
            .args(args)
            .output()
            .context("running tmux (apt-get install tmux)")?;
        anyhow::ensure!(
            out.status.success(),
            "tmux {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "soak"])
            .unwrap_or_default()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.0, "kill-server"])
            .output();
    }
}

/// The tgt-trace process running `tui --pid <tgtd>`.
fn tui_pid(tgtd: u32) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: u32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<&[u8]> = cmdline.split(|&b| b == 0).collect();
        let ours = args.first()?.ends_with(b"tgt-trace")
            && args.get(1) == Some(&&b"tui"[..])
            && args
                .windows(2)
                .any(|w| w[0] == b"--pid" && w[1] == tgtd.to_string().as_bytes());
        ours.then_some(pid)
    })
}

/// A number from `/proc/PID/status` (kB) or `/proc/PID/io`.
fn proc_field(pid: u32, file: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or(0)
}

/// "drops N" from the TUI's header.
fn screen_drops(screen: &str) -> Option<u64> {
    let rest = &screen[screen.find("drops ")? + "drops ".len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// "screen N records lost" from the TUI's header: what the screen's own
/// sink could not take (absent: nothing).
fn screen_lost(screen: &str) -> u64 {
    screen
        .find("screen ")
        .map(|at| &screen[at + "screen ".len()..])
        .and_then(|rest| {
            let (n, rest) = rest.split_once(' ')?;
            rest.starts_with("records lost").then(|| n.parse().ok())?
        })
        .unwrap_or(0)
}

struct Sample {
    at: Duration,
    rss_kb: u64,
    hwm_kb: u64,
    write_bytes: u64,
    drops: Option<u64>,
    screen_lost: u64,
}

pub fn run(minutes: u64) -> anyhow::Result<()> {
    crate::build_release(&["tgt-trace", "tgt-slowio"])?;
    crate::setup::require_root("the soak starts tgtd and loads eBPF probes")?;
    let gate = Arc::new(SlowIo::new("soak-tui").context("the slow-I/O gate")?);
    let env = gate
        .env("lun1.img", u64::from(workload::HELD_LBA) * 512, 4096)
        .context("the slow-I/O library")?;
    let scratch = demo::scratch_tgtd(env)?;
    let tgtd = &scratch.tgtd;
    tgtd.add_lun(1, 64 << 20).context("adding a file LUN")?;
    tgtd.add_null_lun(2).context("adding a null LUN")?;

    let tmux = Tmux(format!("tgt-trace-soak-{}", std::process::id()));
    let command = format!(
        "{} tui --pid {}",
        root().join("target/release/tgt-trace").display(),
        tgtd.pid()
    );
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        "soak",
        "-x",
        "80",
        "-y",
        "24",
        &command,
    ])?;
    // The header shows once the probes are attached.
    let started = Instant::now();
    let pid = loop {
        if owned::stopping().is_some() {
            return Ok(());
        }
        if tmux.screen().contains("tgt-trace live")
            && let Some(pid) = tui_pid(tgtd.pid())
        {
            break pid;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(30),
            "the TUI showed no live header in 30 s:\n{}",
            tmux.screen()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let written_before = proc_field(pid, "io", "write_bytes:");
    let load = demo::Load::start(tgtd, &gate, demo::log_file("soak-tui-aborter.log")?)?;

    let total = Duration::from_secs(minutes.max(1) * 60);
    let every = (total / 30).max(Duration::from_secs(5));
    let start = Instant::now();
    let mut samples = Vec::new();
    eprintln!("soak --tui: {minutes} min, a sample every {every:?}");
    while start.elapsed() < total {
        if owned::wait_for_stop(every.min(total.saturating_sub(start.elapsed()))) {
            break;
        }
        let screen = tmux.screen();
        let sample = Sample {
            at: start.elapsed(),
            rss_kb: proc_field(pid, "status", "VmRSS:"),
            hwm_kb: proc_field(pid, "status", "VmHWM:"),
            write_bytes: proc_field(pid, "io", "write_bytes:").saturating_sub(written_before),
            drops: screen_drops(&screen),
            screen_lost: screen_lost(&screen),
        };
        eprintln!(
            "soak --tui: {:>6.0}s RSS {:>7} kB (peak {:>7} kB) written {} B drops {:?} \
             screen lost {}",
            sample.at.as_secs_f64(),
            sample.rss_kb,
            sample.hwm_kb,
            sample.write_bytes,
            sample.drops,
            sample.screen_lost
        );
        samples.push(sample);
    }
    let last_screen = tmux.screen();
    load.stop();
    let _ = tmux.run(&["send-keys", "-t", "soak", "q"]);
    let quit = Instant::now();
    while std::fs::metadata(format!("/proc/{pid}")).is_ok()
        && quit.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(tmux);
    drop(scratch);
    if owned::stopping().is_some() {
        owned::note("soak --tui: stopped early; BENCHMARKS.md is left as it was");
        return Ok(());
    }
    report(minutes, &samples, &last_screen)
}

fn report(minutes: u64, samples: &[Sample], last_screen: &str) -> anyhow::Result<()> {
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| at | RSS (kB) | peak RSS (kB) | bytes written to storage | drops shown | records the screen lost |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|");
    for s in samples {
        let _ = writeln!(
            table,
            "| {:.0} s | {} | {} | {} | {} | {} |",
            s.at.as_secs_f64(),
            s.rss_kb,
            s.hwm_kb,
            s.write_bytes,
            s.drops.map_or("?".to_owned(), |d| d.to_string()),
            s.screen_lost
        );
    }
    let warm = samples.get(samples.len() / 10).map_or(0, |s| s.rss_kb);
    let last = samples.last().map_or(0, |s| s.rss_kb);
    let peak = samples.iter().map(|s| s.hwm_kb).max().unwrap_or(0);
    let written = samples.last().map_or(0, |s| s.write_bytes);
    let drops = samples.last().and_then(|s| s.drops);
    let lost = samples.last().map_or(0, |s| s.screen_lost);
    let goal = |ok: bool| if ok { "met" } else { "MISSED" };
    let verdict = format!(
        "{minutes} min: RSS {warm} kB after warm-up, {last} kB at the end, peak {peak} kB \
         (goal ≤ 64 MiB and flat: {}); {written} bytes written to storage (goal 0: {}); \
         drops {} (goal 0: {}); records the screen's sink lost {lost} (goal 0: {}).",
        goal(peak <= 64 * 1024 && last <= warm + warm / 10),
        goal(written == 0),
        drops.map_or("unknown".to_owned(), |d| d.to_string()),
        goal(drops == Some(0)),
        goal(lost == 0),
    );
    println!("{table}\n{verdict}");
    let block = format!(
        "## Soak of the live TUI\n\n`cargo xtask soak --tui --minutes {minutes}`: `tgt-trace \
         tui --pid PID` (no `-o`) in a tmux terminal of 80×24 under the demo's workload \
         (libiscsi throughput on a second portal and TMF tests, the project's aborter); RSS \
         and `write_bytes` (`/proc/PID/io`: bytes handed to the storage layer) are \
         tgt-trace's, drops and the screen's losses are the TUI header's; the screen is a sink \
         of the recording's own driver (one matcher).\n\n{table}\n{verdict}\n\nThe screen at \
         the end:\n\n```\n{}\n```\n",
        last_screen.trim_end()
    );
    crate::bench::report::write_section("soak-tui", &block, &crate::bench::report::machine())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_header_s_drops_and_screen_losses_are_read() {
        let header = "events 1 (2/s)  duration 3s  drops 0  screen 17 records lost (slow)";
        assert_eq!(screen_drops(header), Some(0));
        assert_eq!(screen_lost(header), 17);
        assert_eq!(screen_lost("events 1  drops 0"), 0);
    }
}
