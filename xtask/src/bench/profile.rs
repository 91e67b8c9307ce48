//! Where tgtd's time goes at saturation, traced with the full set and not:
//! its kernel and user stacks sampled by bpftrace at 499 Hz.

use std::{collections::HashMap, fmt::Write as _};

use tgt_trace_e2e::tgtd::Tgtd;

use super::{
    Options,
    live::{self, Mode, Script, Tracer},
};

/// Stacks printed.
const TOP: usize = 10;

/// One sampled stack pair, innermost frame first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Stack {
    kernel: Vec<String>,
    user: Vec<String>,
}

/// Parses bpftrace's print of `@[kstack, ustack] = count()`:
///
/// ```text
/// @[
///     ksys_write+111
///     do_syscall_64+113
/// ,
///     __GI___write+16
/// ]: 42
/// ```
///
/// (an empty kernel stack prints as `@[, `).
fn parse(output: &str) -> Vec<(Stack, u64)> {
    let mut stacks = Vec::new();
    let mut current: Option<(Stack, bool)> = None;
    for line in output.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("@[") {
            let user = rest.trim_start().starts_with(',');
            current = Some((
                Stack {
                    kernel: Vec::new(),
                    user: Vec::new(),
                },
                user,
            ));
        } else if let Some(count) = t.strip_prefix("]:") {
            if let (Some((stack, _)), Ok(n)) = (current.take(), count.trim().parse()) {
                stacks.push((stack, n));
            }
        } else if let Some((stack, user)) = current.as_mut() {
            if t.starts_with(',') {
                *user = true;
            } else if !t.is_empty() {
                let frames = if *user {
                    &mut stack.user
                } else {
                    &mut stack.kernel
                };
                frames.push(t.to_owned());
            }
        }
    }
    stacks
}

/// A mapping of tgtd's: start, end, file offset, and whether it is the
/// uprobes' out-of-line page (`[uprobes]`) rather than tgtd's own file.
type Mapping = (u64, u64, u64, bool);

/// tgtd's file mappings and its `[uprobes]` page, from /proc/PID/maps.
fn tgtd_mappings(pid: u32) -> Vec<Mapping> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter(|l| l.ends_with("/tgtd") || l.ends_with("[uprobes]"))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (range, _, offset) = (f.next()?, f.next()?, f.next()?);
            let (start, end) = range.split_once('-')?;
            Some((
                u64::from_str_radix(start, 16).ok()?,
                u64::from_str_radix(end, 16).ok()?,
                u64::from_str_radix(offset, 16).ok()?,
                l.ends_with("[uprobes]"),
            ))
        })
        .collect()
}

/// `func+123` → `func`; an address in tgtd → `tgtd+0xOFFSET` (its static
/// functions have no symbols); in the `[uprobes]` page → the out-of-line
/// slot where a displaced instruction is single-stepped; other addresses
/// stay.
fn frame_name(frame: &str, maps: &[Mapping]) -> String {
    if let Some(hex) = frame.strip_prefix("0x")
        && let Ok(addr) = u64::from_str_radix(hex, 16)
    {
        return maps
            .iter()
            .find(|(s, e, _, _)| (*s..*e).contains(&addr))
            .map_or_else(
                || frame.to_owned(),
                |(s, _, off, xol)| {
                    if *xol {
                        "[uprobes] (out-of-line single-step slot)".to_owned()
                    } else {
                        format!("tgtd+{:#x}", addr - s + off)
                    }
                },
            );
    }
    match frame.rsplit_once('+') {
        Some((name, off)) if off.chars().all(|c| c.is_ascii_digit()) => name.to_owned(),
        _ => frame.to_owned(),
    }
}

/// Kernel frames of the uprobe and its BPF program: the int3 and
/// single-step traps, the uprobe dispatch, BPF helpers and the ring buffer.
fn is_probe_frame(f: &str) -> bool {
    ["uprobe", "bpf", "int3", "exc_debug", "ringbuf", "xol"]
        .iter()
        .any(|k| f.contains(k))
}

struct Profile {
    iops: f64,
    samples: u64,
    user: u64,
    probe: u64,
    top: Vec<(Stack, u64)>,
}

fn sample(tgtd: &Tgtd, mode: Mode, seconds: u64) -> anyhow::Result<Profile> {
    let tracer = mode.start(tgtd)?;
    let profiler = Tracer::bpftrace(tgtd, &Script::Profile.source(tgtd.binary()), true)?;
    let iops = live::iscsi_perf(tgtd, seconds)?;
    let output = profiler.stop()?.output;
    if let Some(tracer) = tracer {
        tracer.stop()?;
    }
    let maps = tgtd_mappings(tgtd.pid());
    let mut merged: HashMap<Stack, u64> = HashMap::new();
    for (stack, n) in parse(&output) {
        let stack = Stack {
            kernel: stack.kernel.iter().map(|f| frame_name(f, &maps)).collect(),
            user: stack.user.iter().map(|f| frame_name(f, &maps)).collect(),
        };
        *merged.entry(stack).or_default() += n;
    }
    let samples = merged.values().sum();
    let user = merged
        .iter()
        .filter(|(s, _)| s.kernel.is_empty())
        .map(|(_, n)| n)
        .sum();
    let probe = merged
        .iter()
        .filter(|(s, _)| s.kernel.iter().any(|f| is_probe_frame(f)))
        .map(|(_, n)| n)
        .sum();
    let mut top: Vec<(Stack, u64)> = merged.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.kernel.cmp(&b.0.kernel)));
    top.truncate(TOP);
    Ok(Profile {
        iops,
        samples,
        user,
        probe,
        top,
    })
}

fn pct(part: u64, whole: u64) -> f64 {
    part as f64 * 100.0 / whole.max(1) as f64
}

fn breakdown(name: &str, p: &Profile) -> String {
    format!(
        "| {name} | {:.0} | {} | {:.1}% | {:.1}% | {:.1}% |",
        p.iops,
        p.samples,
        pct(p.user, p.samples),
        pct(p.probe, p.samples),
        pct(p.samples - p.user - p.probe, p.samples),
    )
}

pub fn run(tgtd: &Tgtd, opts: &Options) -> anyhow::Result<String> {
    let untraced = sample(tgtd, Mode::Untraced, opts.seconds)?;
    eprintln!("bench: profile untraced: {} samples", untraced.samples);
    let full = sample(tgtd, Mode::tgt_trace("full"), opts.seconds)?;
    eprintln!("bench: profile full: {} samples", full.samples);
    let mut stacks = String::new();
    for (stack, n) in &full.top {
        let _ = writeln!(stacks, "{n} samples ({:.1}%)", pct(*n, full.samples));
        if stack.kernel.is_empty() {
            stacks.push_str("  kernel: (none: in user space)\n");
        } else {
            let _ = writeln!(stacks, "  kernel: {}", stack.kernel.join(" ← "));
        }
        let _ = writeln!(stacks, "  user:   {}", stack.user.join(" ← "));
    }
    Ok(format!(
        "## Profile of tgtd (full set at saturation)\n\n\
         bpftrace samples tgtd's stacks at 499 Hz (`profile:hz:499 /pid == $1/ {{ \
         @[kstack(8), ustack(8)] = count(); }}`) during a {} s saturation run, untraced and with \
         tgt-trace's full set. Probe path: a kernel frame of the uprobe or its BPF program \
         (int3 and single-step traps, uprobe dispatch, BPF helpers, ring buffer); other kernel: \
         mostly tgtd's socket reads and writes and epoll. `asm_exc_int3` is a probe's \
         breakpoint; `asm_exc_debug` the single-step trap after an instruction the kernel \
         could not emulate, taken in the `[uprobes]` page's out-of-line slot. The kernel does a \
         uprobe's work on the trap's way back to user space, so `irqentry_exit_to_user_mode` is \
         the innermost frame of those samples. Offsets are trimmed from symbols; tgtd's static \
         functions have no symbol and show as `tgtd+0xFILE_OFFSET`; frames of libraries \
         without frame pointers can be garbage.\n\n\
         | run | IOPS | samples | user | probe path | other kernel |\n|---|---|---|---|---|---|\n\
         {}\n{}\n\n\
         The {TOP} most frequent stacks with the full set, innermost frame first (kernel frames, \
         then the user frames they were entered from; 8 frames each at most):\n\n\
         ```text\n{stacks}```\n",
        opts.seconds,
        breakdown("untraced", &untraced),
        breakdown("tgt-trace full", &full),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bpftrace_stack_pairs() {
        let out = "Attaching 2 probes...\nready\n\n\n\
                   @[\n    vfs_write+724\n    ksys_write+111\n, \n    __GI___write+16\n]: 3\n\
                   @[, \n    0x561a4dc1023b\n]: 1\n";
        let stacks = parse(out);
        assert_eq!(stacks.len(), 2);
        assert_eq!(stacks[0].0.kernel, vec!["vfs_write+724", "ksys_write+111"]);
        assert_eq!(stacks[0].0.user, vec!["__GI___write+16"]);
        assert_eq!(stacks[0].1, 3);
        assert!(stacks[1].0.kernel.is_empty());
        assert_eq!(stacks[1].0.user, vec!["0x561a4dc1023b"]);
        let maps = [
            (0x561a4dc00000, 0x561a4dc20000, 0x13000, false),
            (0x7fffffffe000, 0x7ffffffff000, 0, true),
        ];
        assert_eq!(frame_name("0x561a4dc1023b", &maps), "tgtd+0x2323b");
        assert_eq!(frame_name("vfs_write+724", &maps), "vfs_write");
        assert!(frame_name("0x7fffffffe083", &maps).starts_with("[uprobes]"));
    }
}
