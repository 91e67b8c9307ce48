//! The cost of one uprobe hit at each tgtd attach point: bpftrace with an
//! empty action on that point alone, against untraced; and the instruction
//! each point displaces, which decides whether the kernel emulates it or
//! single-steps it out of line.

use std::{fmt::Write as _, process::Command, time::Duration};

use anyhow::Context as _;
use tgt_trace_e2e::tgtd::Tgtd;

use super::{
    Options,
    live::{self, Mode, Script},
    report::{median, range},
};

/// Hit once per command, in the order a command meets them.
const COMMAND_PATH: [&str; 4] = [
    "target_cmd_queue",
    "scsi_cmd_perform",
    "target_cmd_io_done",
    "target_cmd_done",
];
/// Hit once per TMF.
const TMF_PATH: &str = "target_mgmt_request";

struct FirstInstruction {
    address: u64,
    bytes: Vec<u8>,
    text: String,
}

/// The instruction at a function's entry, from `nm -D` and `objdump -d`.
fn first_instruction(tgtd: &std::path::Path, function: &str) -> anyhow::Result<FirstInstruction> {
    let tgtd_path = tgtd.display().to_string();
    let nm = Command::new("nm")
        .args(["-D", "--defined-only", &tgtd_path])
        .output()
        .context("running nm (binutils)")?;
    let address = String::from_utf8_lossy(&nm.stdout)
        .lines()
        .find_map(|l| {
            let mut f = l.split_whitespace();
            let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
            (name == function)
                .then(|| u64::from_str_radix(addr, 16).ok())
                .flatten()
        })
        .with_context(|| format!("{tgtd_path} exports no {function}"))?;
    let dump = Command::new("objdump")
        .args([
            "-d",
            &format!("--start-address={address:#x}"),
            &format!("--stop-address={:#x}", address + 16),
            &tgtd_path,
        ])
        .output()
        .context("running objdump (binutils)")?;
    let text = String::from_utf8_lossy(&dump.stdout);
    // "   2f970:\t41 56                \tpush   %r14"
    let line = text
        .lines()
        .find(|l| {
            l.trim_start()
                .split_once(":\t")
                .is_some_and(|(a, _)| u64::from_str_radix(a, 16) == Ok(address))
        })
        .with_context(|| format!("objdump shows no instruction at {function}"))?;
    let mut parts = line.split('\t').skip(1);
    let bytes = parts
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|b| u8::from_str_radix(b, 16).ok())
        .collect();
    let text = parts
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    Ok(FirstInstruction {
        address,
        bytes,
        text,
    })
}

/// How Linux (arch/x86/kernel/uprobes.c, 6.18) handles the probed
/// instruction: `branch_setup_xol_ops` emulates jmp, call, jcc and nop
/// (0x90), `push_setup_xol_ops` push of a register (also r8–r15 behind a
/// 0x41 REX prefix); every other instruction is copied to the XOL page and
/// single-stepped (a second trap). Returns (emulated, what).
fn uprobe_handling(bytes: &[u8]) -> (bool, &'static str) {
    match bytes {
        [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..] => (true, "push: emulated"),
        [0x90, ..] | [0x66, 0x90, ..] => (true, "nop: emulated"),
        [0xe8, ..] => (true, "call: emulated"),
        [0xe9 | 0xeb, ..] => (true, "jmp: emulated"),
        [0x70..=0x7f, ..] | [0x0f, 0x80..=0x8f, ..] => (true, "jcc: emulated"),
        [0xf3, 0x0f, 0x1e, 0xfa, ..] => (false, "endbr64: single-stepped"),
        _ => (false, "single-stepped"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// One row of measurements: untraced or with one probe.
#[derive(Default)]
struct Runs {
    /// Saturation IOPS, or TMFs/s for the TMF point.
    rate: Vec<f64>,
    /// tgtd CPU µs per command at the paced rate, or per TMF.
    cpu_us: Vec<f64>,
}

/// µs per hit from two throughputs: 1/with − 1/without.
fn us_from_rates(without: &[f64], with: &[f64]) -> f64 {
    1e6 / median(with) - 1e6 / median(without)
}

pub fn run(tgtd: &Tgtd, opts: &Options) -> anyhow::Result<String> {
    let duration = Duration::from_secs(opts.seconds);
    // [untraced, each command-path point]; the TMF point separately.
    let mut command: Vec<Runs> = (0..=COMMAND_PATH.len()).map(|_| Runs::default()).collect();
    let (mut tmf_untraced, mut tmf_traced) = (Runs::default(), Runs::default());
    let n = opts.rounds;
    for round in 1..=n {
        let points: Vec<Option<&str>> = std::iter::once(None)
            .chain(COMMAND_PATH.iter().copied().map(Some))
            .collect();
        // Each round starts one point later, so none always runs first.
        let start = (round as usize - 1) % points.len();
        for k in 0..points.len() {
            let i = (start + k) % points.len();
            let point = points[i];
            let tracer = match point {
                Some(f) => Mode::Bpftrace(Script::Empty(f)).start(tgtd)?,
                None => None,
            };
            let iops = live::iscsi_perf(tgtd, opts.seconds)?;
            let (us, reached) = live::paced_cpu(tgtd, opts.rate, duration)?;
            drop(tracer);
            let name = point.unwrap_or("untraced");
            eprintln!(
                "bench: probes round {round}/{n} {name}: {iops:.0} IOPS at saturation; \
                 {us:.2} µs tgtd CPU per command at {reached:.0}/s"
            );
            command[i].rate.push(iops);
            command[i].cpu_us.push(us);
        }
        for traced in [false, true] {
            let tracer = if traced {
                Mode::Bpftrace(Script::Empty(TMF_PATH)).start(tgtd)?
            } else {
                None
            };
            let (rate, us) = live::tmf_loop(tgtd, duration)?;
            drop(tracer);
            eprintln!(
                "bench: probes round {round}/{n} TMF loop{}: {rate:.0} TMFs/s, {us:.2} µs tgtd \
                 CPU per TMF",
                if traced {
                    " with target_mgmt_request"
                } else {
                    ""
                }
            );
            let runs = if traced {
                &mut tmf_traced
            } else {
                &mut tmf_untraced
            };
            runs.rate.push(rate);
            runs.cpu_us.push(us);
        }
    }

    let mut table = String::from(
        "| attach point | entry | first instruction | kernel | saturation: untraced → with \
         the probe | µs per hit | fixed rate: tgtd CPU per command, untraced → with | µs per \
         hit |\n|---|---|---|---|---|---|---|---|\n",
    );
    // (function, emulated, µs per hit by CPU time)
    let mut costs: Vec<(&str, bool, f64)> = Vec::new();
    let base = &command[0];
    let rows = COMMAND_PATH
        .iter()
        .zip(&command[1..])
        .map(|(f, r)| (*f, base, r, "IOPS", "µs"))
        .chain(std::iter::once((
            TMF_PATH,
            &tmf_untraced,
            &tmf_traced,
            "TMFs/s (TMF loop)",
            "µs per TMF",
        )));
    for (f, without, with, rate_unit, cpu_unit) in rows {
        let insn = first_instruction(tgtd.binary(), f)?;
        let (emulated, what) = uprobe_handling(&insn.bytes);
        let by_rate = us_from_rates(&without.rate, &with.rate);
        let by_cpu = median(&with.cpu_us) - median(&without.cpu_us);
        costs.push((f, emulated, by_cpu));
        let _ = writeln!(
            table,
            "| `{f}` | {:#x} | `{}` ({}) | {what} | {:.0} → {:.0} {rate_unit} ({}) | \
             {by_rate:.2} | {:.2} → {:.2} {cpu_unit} ({}) | **{by_cpu:.2}** |",
            insn.address,
            insn.text,
            hex(&insn.bytes),
            median(&without.rate),
            median(&with.rate),
            range(&with.rate, 0),
            median(&without.cpu_us),
            median(&with.cpu_us),
            range(&with.cpu_us, 2),
        );
    }
    let mean = |emulated: bool| {
        let v: Vec<f64> = costs
            .iter()
            .filter(|c| c.1 == emulated)
            .map(|c| c.2)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    let cheap: Vec<String> = costs
        .iter()
        .filter(|c| c.1)
        .map(|c| format!("`{}`", c.0))
        .collect();
    let dear: Vec<String> = costs
        .iter()
        .filter(|c| !c.1)
        .map(|c| format!("`{}`", c.0))
        .collect();
    let mut summary = format!(
        "**Which points are cheap.** A uprobe replaces the first byte of the probed instruction \
         with int3; on the hit the kernel runs the BPF program and then must execute the \
         displaced instruction. Linux 6.18 emulates a few kinds in the trap handler (push of a \
         register, nop, jmp, call, jcc; `arch/x86/kernel/uprobes.c`); any other is copied to an \
         out-of-line slot and single-stepped, a second trap per hit. Emulated here: {}",
        if cheap.is_empty() {
            "none".to_owned()
        } else {
            cheap.join(", ")
        },
    );
    if let Some(m) = mean(true) {
        let _ = write!(summary, " (mean {m:.2} µs of tgtd CPU per hit)");
    }
    let _ = write!(
        summary,
        "; single-stepped: {}",
        if dear.is_empty() {
            "none".to_owned()
        } else {
            dear.join(", ")
        }
    );
    if let Some(m) = mean(false) {
        let _ = write!(summary, " ({m:.2} µs of tgtd CPU per hit)");
    }
    summary.push_str(". ");
    summary.push_str(
        "These are the costs at each function's entry, where bpftrace attaches. tgt-trace puts \
         each entry probe on the first instruction of the function's entry block that the \
         kernel emulates (`tgt-trace probes` shows which), so where the entry is \
         single-stepped it pays the emulated cost instead: on this build, \
         `target_cmd_io_done` (the full set's kspace_exec point) is probed at its entry \
         block's `je`.",
    );
    Ok(format!(
        "## Per-probe cost\n\n\
         One uprobe at a time, attached by bpftrace with an empty action (`uprobe:{}:FN \
         /pid == $1/ {{ }}`): the cost of the trap, the filter and the return, without any \
         record; {} interleaved round(s) of {} s per measurement (rotated). The command-path \
         points are hit once per command, and measured two ways: at saturation (`iscsi-perf -m \
         32 -b 1`), \
         µs per hit = 1/IOPS with the probe − 1/IOPS untraced; and at a fixed {} READs/s (the \
         [CPU](#cpu-at-a-fixed-rate) section's paced load), µs per hit = tgtd's CPU time per \
         command with the probe − without (utime+stime; a hit runs in tgtd's context). The \
         saturation figure is the one tgtd's throughput sees, but saturation IOPS vary from run \
         to run by more than one hit costs (iscsi-perf and tgtd share the two cores), so it can \
         even come out negative; the CPU figure (bold) is the steadier. `target_mgmt_request` \
         is hit per TMF, not per command: it is measured by the ABORT TASK loop alone (one \
         TMF in flight, so a hit lengthens each round trip: µs per hit = 1/rate with − 1/rate \
         without) and by tgtd's CPU time per TMF. The first instruction is objdump's at the \
         exported symbol, where the probe sits.\n\n{table}\n{summary}\n",
        tgtd.binary().display(),
        opts.rounds,
        opts.seconds,
        opts.rate
    ))
}
