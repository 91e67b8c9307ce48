//! The only module that touches aya: load the embedded probes, attach them to
//! tgtd, and drain the ring buffer into typed events.

use std::{num::NonZeroU32, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{
        KProbe, RawTracePoint, UProbe,
        kprobe::KProbeLink,
        raw_trace_point::RawTracePointLink,
        uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope},
    },
};
use tgt_trace_common::counter;

pub use crate::points::{KernelCounters, Point, ProbePoint, ProbeSet, Sampling};
use crate::{decode::decode, event::Event, tgtd::TgtdBinary};

/// The probes, built by `build.rs` from `tgt-trace-ebpf`.
static PROBES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tgt-trace"));

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Loading eBPF or attaching uprobes needs privileges this process lacks.
    #[error(
        "tgt-trace needs CAP_BPF and CAP_PERFMON (or root) to load its probes, and on current \
         kernels CAP_SYS_ADMIN to attach them; missing: {missing}. Run it as root, or grant \
         them: setcap cap_bpf,cap_perfmon,cap_sys_admin+ep $(which tgt-trace)"
    )]
    Privileges { missing: String },
    /// The binary was built with AYA_BUILD_SKIP and holds no probes.
    #[error(
        "this tgt-trace was built without its eBPF probes (AYA_BUILD_SKIP); rebuild it without AYA_BUILD_SKIP after `cargo xtask setup`"
    )]
    NoProbes,
    /// The kernel refused the probes.
    #[error(
        "loading the eBPF probes failed: {0}; the kernel needs BPF, BTF and uprobes (Linux 5.8 or later)"
    )]
    Load(#[source] aya::EbpfError),
    /// A probe that every probe set needs could not be attached.
    #[error("attaching the {name} probe to {function} in {binary} failed: {source}")]
    Attach {
        name: Point,
        function: &'static str,
        binary: String,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// `--pid` names a process that is not running the traced binary.
    #[error(
        "process {pid} is not running {binary}; pass its binary with --tgtd PATH, or a tgtd pid (pidof tgtd)"
    )]
    NotTgtd { pid: u32, binary: String },
    #[error(
        "the eBPF object lacks {0}; the probes and tgt-trace were built from different sources: rebuild"
    )]
    MissingProgram(&'static str),
    /// No LIO point could be attached.
    #[error(
        "no probe of the kernel target could be attached (first: {why}); tracing LIO needs \
         kprobes (CONFIG_KPROBES) for its TMF path and its target_* tracepoints for commands"
    )]
    NothingAttached { why: String },
    #[error("{0}")]
    Map(#[from] aya::maps::MapError),
    #[error("{0}")]
    Program(Box<aya::programs::ProgramError>),
}

// aya's ProgramError is large; boxed so that Result<_, ProbeError> stays small.
impl From<aya::programs::ProgramError> for ProbeError {
    fn from(err: aya::programs::ProgramError) -> Self {
        ProbeError::Program(Box::new(err))
    }
}

/// Which target's probes, and what they need to know of it.
#[derive(Debug, Clone)]
pub enum Traced {
    /// tgtd: its binary, inspected and proved (`crate::tgtd`).
    Tgtd(Box<TgtdBinary>),
    /// The kernel's LIO: its structures' offsets, from BTF (`crate::lio`).
    Lio(crate::lio::Resolved),
}

/// What to trace.
#[derive(Debug, Clone)]
pub struct TraceOptions {
    pub traced: Traced,
    /// Only this process (filtered by the kernel at the uprobe).
    pub pid: Option<NonZeroU32>,
    pub set: ProbeSet,
    /// Ring buffer size in bytes: a power of two, at least a page.
    pub ring_bytes: u32,
    /// `--sample`: the set's per-command probes only in windows (tgtd).
    pub sample: Option<Sampling>,
}

/// A per-command probe `--sample` attaches for each window.
struct SampledProbe {
    point: Point,
    program: &'static str,
    offset: u64,
}

/// An attached probe of either target.
enum Link {
    // Held for their Drop, which detaches them.
    Uprobe(#[allow(dead_code, reason = "held to be dropped")] UProbeLink),
    Kprobe(#[allow(dead_code, reason = "held to be dropped")] KProbeLink),
    RawTracepoint(#[allow(dead_code, reason = "held to be dropped")] RawTracePointLink),
}

/// Drops `links` on threads of their own, so that the kernel's grace
/// periods overlap, and waits for them all.
fn detach_all(links: &mut Vec<Link>) {
    let threads: Vec<_> = links
        .drain(..)
        .map(|link| std::thread::spawn(move || drop(link)))
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

/// `LIO_LAYOUT` as aya loads a global: plain bytes of the same layout.
#[derive(Clone, Copy)]
#[repr(transparent)]
struct LioLayoutGlobal(tgt_trace_common::lio::Layout);

// SAFETY: `repr(C)` of u32 fields only, no padding, every bit pattern valid.
unsafe impl aya::Pod for LioLayoutGlobal {}

/// Probes attached to a target, and the ring buffer they fill.
pub struct Tracer {
    /// The attached probes, owned apart from their programs so that they
    /// are detached together (see [`Tracer::detach`]).
    links: Vec<Link>,
    /// LIO's records carry kernel pointers, replaced here by ids.
    lio_ids: Option<crate::lio::Ids>,
    /// `--sample`: the per-command probes, where and in what, and their
    /// links while a window is open.
    sampled: Vec<SampledProbe>,
    sample_target: Option<(std::path::PathBuf, UProbeScope)>,
    sample_links: Vec<Link>,
    /// The threads detaching a closed window's probes (see
    /// [`Tracer::sample_close`]).
    sample_closing: Vec<std::thread::JoinHandle<()>>,
    // Dropping `Ebpf` unloads the programs; it must outlive the maps' users.
    ebpf: Ebpf,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    points: Vec<ProbePoint>,
    decode_errors: u64,
}

impl Tracer {
    /// Checks privileges, loads the probes and attaches them.
    pub fn start(opts: &TraceOptions) -> Result<Tracer, ProbeError> {
        if PROBES.is_empty() {
            return Err(ProbeError::NoProbes);
        }
        check_privileges()?;
        match &opts.traced {
            Traced::Tgtd(binary) => Tracer::start_tgtd(opts, binary),
            Traced::Lio(resolved) => Tracer::start_lio(opts, &resolved.layout),
        }
    }

    fn start_tgtd(opts: &TraceOptions, binary: &TgtdBinary) -> Result<Tracer, ProbeError> {
        if let Some(pid) = opts.pid {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
            let canonical = std::fs::canonicalize(&binary.path).ok();
            if exe.is_none() || exe != canonical {
                return Err(ProbeError::NotTgtd {
                    pid: pid.get(),
                    binary: binary.path.display().to_string(),
                });
            }
        }
        // The walk is the tmf set's covered sets, and a sampled set's; the
        // others learn them from arrivals and releases.
        let walks = opts.set.wants(Point::TmfWalk) || opts.sample.is_some();
        let walk = match &binary.tmf_walk {
            Ok(walk) if walks => Some(*walk),
            _ => None,
        };
        let walk_covers: u8 = walk.is_some().into();
        let target_list_from_entry: i64 = walk.map_or(0, |w| w.target_list_from_entry);
        let read_conn_state: u8 = binary.tmf_response_reads_connection.into();
        let received_reg: u8 = binary
            .tmf_received
            .as_ref()
            .map_or(tgt_trace_common::pt_regs::RDI, |p| p.task_reg);
        let tx_conn_reg: u8 = binary
            .tmf_tx_start
            .as_ref()
            .map_or(tgt_trace_common::pt_regs::RAX, |p| p.task_reg);
        // The walk's offsets are proved by the received point (task flags)
        // and conn_close (the session's task lists).
        let walk_tasks: u8 = (binary.tmf_received.is_ok() && binary.conn_close.is_ok()).into();
        // Each entry probe on its function's first emulated instruction,
        // its arguments where the machine code has them there.
        let placed_args = |point: Point| {
            binary
                .placements
                .get(&point)
                .map_or(tgt_trace_common::args::SYSV, |p| p.args)
        };
        let mut ebpf = EbpfLoader::new()
            .override_global("WALK_TMF_COVERS", &walk_covers, true)
            .override_global("TARGET_LIST_FROM_ENTRY", &target_list_from_entry, true)
            .override_global("READ_CONN_STATE", &read_conn_state, true)
            .override_global("RECEIVED_TASK_REG", &received_reg, true)
            .override_global("WALK_SESSION_TASKS", &walk_tasks, true)
            .override_global("TX_CONN_REG", &tx_conn_reg, true)
            .override_global("QUEUE_ARGS", &placed_args(Point::Queue), true)
            .override_global("PERFORM_ARGS", &placed_args(Point::Perform), true)
            .override_global("RESULT_ARGS", &placed_args(Point::Result), true)
            .override_global("RELEASE_ARGS", &placed_args(Point::Release), true)
            .override_global("RESPONSE_ARGS", &placed_args(Point::TmfResponse), true)
            .override_global("CONN_CLOSE_ARGS", &placed_args(Point::ConnClose), true)
            .override_global("NEXUS_CREATE_ARGS", &placed_args(Point::NexusCreate), true)
            .override_global(
                "NEXUS_DESTROY_ARGS",
                &placed_args(Point::NexusDestroy),
                true,
            )
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(PROBES)
            .map_err(ProbeError::Load)?;
        let scope = match opts.pid {
            Some(pid) => UProbeScope::OneProcess(pid),
            None => UProbeScope::AllProcesses,
        };
        let binary_path = binary.path.display().to_string();
        let mut points = Vec::new();
        let mut links = Vec::new();
        let mut sampled = Vec::new();
        for path in Point::ALL {
            let (name, program, function) = (path, path.program(), path.function());
            let located = match path {
                Point::TmfResponse => binary.tmf_response_offset.ok_or_else(|| {
                    "iscsi_tm_done could not be located through the iSCSI driver table; \
                     TMF responses are inferred from tgtd's return value and releases"
                        .to_owned()
                }),
                Point::TmfReceived => binary.tmf_received.clone().map(|p| p.address),
                Point::TmfSent => binary.tmf_sent.clone().map(|p| p.address),
                Point::TmfTxStart => binary.tmf_tx_start.clone().map(|p| p.address),
                Point::ConnClose => binary.conn_close.clone(),
                Point::TmfWalk => binary.tmf_walk.clone().and_then(|_| {
                    binary
                        .symbol_offset(function)
                        .ok_or_else(|| format!("{function} is not exported"))
                }),
                _ => binary
                    .symbol_offset(function)
                    .ok_or_else(|| format!("{function} is not exported")),
            };
            // Never read with an offset the build's code does not prove.
            let located = match binary.unproved_for(path) {
                Some(why) => Err(why),
                None => located,
            };
            // An entry probe goes where `placements` put it.
            let located =
                located.map(|offset| binary.placements.get(&path).map_or(offset, |p| p.offset));
            let offset = located.as_ref().ok().copied();
            let mut point = ProbePoint {
                name,
                function: function.to_owned(),
                offset,
                attached: false,
                sampled: false,
                missing: None,
            };
            let wanted = opts.set.wants(path) || (path == Point::TmfWalk && walks);
            if !wanted {
                point.missing = Some(format!("not in the {} probe set", opts.set.name()));
                points.push(point);
                continue;
            }
            let offset = match located {
                Ok(offset) => offset,
                Err(reason) => {
                    // Only points found in the machine code can be missing
                    // here: exported symbols were checked by
                    // TgtdBinary::inspect. The matcher says what it then
                    // cannot know.
                    point.missing = Some(reason);
                    points.push(point);
                    continue;
                }
            };
            if path == Point::TmfWalk {
                // Done by the tsk_mgmt probe (WALK_TMF_COVERS, set above):
                // on when that probe is.
                point.attached = points
                    .iter()
                    .any(|p: &ProbePoint| p.name == Point::TmfRequest && p.attached);
                if !point.attached {
                    point.missing = Some("the tsk_mgmt probe is not attached".to_owned());
                }
                points.push(point);
                continue;
            }
            let prog: &mut UProbe = ebpf
                .program_mut(program)
                .ok_or(ProbeError::MissingProgram(program))?
                .try_into()?;
            prog.load()?;
            if opts.sample.is_some() && path.per_command() {
                // Attached by `sample_open` for each window.
                sampled.push(SampledProbe {
                    point: path,
                    program,
                    offset,
                });
                point.attached = true;
                point.sampled = true;
                points.push(point);
                continue;
            }
            let link = prog
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(offset),
                    &binary.path,
                    scope,
                )
                .map_err(|source| {
                    // Kernels since 2025 (and stable kernels it was
                    // backported to) need CAP_SYS_ADMIN to create a uprobe;
                    // CAP_BPF and CAP_PERFMON, which the check at start
                    // accepts, load the programs but cannot attach them.
                    if permission_denied(&source) && !has_capability(CAP_SYS_ADMIN) {
                        return ProbeError::Privileges {
                            missing: "CAP_SYS_ADMIN (this kernel needs it to create uprobes)"
                                .to_owned(),
                        };
                    }
                    ProbeError::Attach {
                        name,
                        function,
                        binary: binary_path.clone(),
                        source: Box::new(source),
                    }
                })?;
            links.push(Link::Uprobe(prog.take_link(link)?));
            point.attached = true;
            points.push(point);
        }
        let mut tracer = Tracer::finish(ebpf, links, points, None)?;
        if !sampled.is_empty() {
            tracer.sampled = sampled;
            tracer.sample_target = Some((binary.path.clone(), scope));
        }
        Ok(tracer)
    }

    /// Opens a `--sample` window: attaches the per-command probes. On an
    /// error, those attached are detached again.
    pub fn sample_open(&mut self) -> Result<(), ProbeError> {
        let Some((path, scope)) = &self.sample_target else {
            return Ok(());
        };
        let mut failed = None;
        for probe in &self.sampled {
            let prog: &mut UProbe = self
                .ebpf
                .program_mut(probe.program)
                .ok_or(ProbeError::MissingProgram(probe.program))?
                .try_into()?;
            let attached = prog
                .attach(
                    UProbeAttachLocation::AbsoluteOffset(probe.offset),
                    path,
                    *scope,
                )
                .and_then(|link| prog.take_link(link));
            match attached {
                Ok(link) => self.sample_links.push(Link::Uprobe(link)),
                Err(source) => {
                    failed = Some(ProbeError::Attach {
                        name: probe.point,
                        function: probe.point.function(),
                        binary: path.display().to_string(),
                        source: Box::new(source),
                    });
                    break;
                }
            }
        }
        match failed {
            Some(e) => {
                detach_all(&mut self.sample_links);
                Err(e)
            }
            None => Ok(()),
        }
    }

    /// Closes a `--sample` window: starts detaching the per-command
    /// probes, each on a thread of its own, and returns at once. The kernel
    /// takes each breakpoint out at the start and then waits for a grace
    /// period (about 200 ms under load here) before the detach returns;
    /// the drain loop goes on meanwhile, and [`Tracer::sample_closed`] says
    /// when no per-command probe can fire any more.
    pub fn sample_close(&mut self) {
        self.sample_closing.extend(
            self.sample_links
                .drain(..)
                .map(|link| std::thread::spawn(move || drop(link))),
        );
    }

    /// Whether the last window's probes are all detached.
    pub fn sample_closed(&mut self) -> bool {
        if !self.sample_closing.iter().all(|t| t.is_finished()) {
            return false;
        }
        for thread in self.sample_closing.drain(..) {
            let _ = thread.join();
        }
        true
    }

    /// Whether this tracer samples.
    pub fn samples(&self) -> bool {
        self.sample_target.is_some()
    }

    fn finish(
        mut ebpf: Ebpf,
        links: Vec<Link>,
        points: Vec<ProbePoint>,
        lio_ids: Option<crate::lio::Ids>,
    ) -> Result<Tracer, ProbeError> {
        let ring = RingBuf::try_from(
            ebpf.take_map("EVENTS")
                .ok_or(ProbeError::MissingProgram("EVENTS"))?,
        )?;
        let counters = PerCpuArray::try_from(
            ebpf.take_map("COUNTERS")
                .ok_or(ProbeError::MissingProgram("COUNTERS"))?,
        )?;
        Ok(Tracer {
            links,
            lio_ids,
            sampled: Vec::new(),
            sample_target: None,
            sample_links: Vec::new(),
            sample_closing: Vec::new(),
            ebpf,
            ring,
            counters,
            points,
            decode_errors: 0,
        })
    }

    /// The kernel target: kprobes on LIO's TMF path, raw tracepoints on its
    /// command path. Any point may be missing (no kprobes in this kernel,
    /// another fabric than iSCSI, a function inlined): the header says
    /// which, with why; with none at all tracing fails.
    fn start_lio(
        opts: &TraceOptions,
        layout: &tgt_trace_common::lio::Layout,
    ) -> Result<Tracer, ProbeError> {
        let mut ebpf = EbpfLoader::new()
            .override_global("LIO_LAYOUT", &LioLayoutGlobal(*layout), true)
            .map_max_entries("EVENTS", opts.ring_bytes)
            .load(PROBES)
            .map_err(ProbeError::Load)?;
        let mut links = Vec::new();
        let mut points = Vec::new();
        for point in Point::LIO {
            let function = point.function();
            let mut probe = ProbePoint {
                name: point,
                function: function.to_owned(),
                offset: None,
                attached: false,
                sampled: false,
                missing: None,
            };
            match attach_lio(&mut ebpf, point, &mut links) {
                Ok(()) => probe.attached = true,
                Err(e) => probe.missing = Some(format!("{function}: {e}")),
            }
            points.push(probe);
        }
        // A kernel without kprobes still has the command path's raw
        // tracepoints; without either there is nothing to trace.
        if let Some(first) = points.iter().find(|p| !p.attached)
            && points.iter().all(|p| !p.attached)
        {
            return Err(ProbeError::NothingAttached {
                why: first.missing.clone().unwrap_or_default(),
            });
        }
        Tracer::finish(ebpf, links, points, Some(crate::lio::Ids::default()))
    }

    /// Detaches every probe, all at once. The kernel waits for a grace
    /// period to remove a uprobe (about 90 ms here), one after the other if
    /// the links are closed in turn (over a second for thirteen points):
    /// closing them on threads of their own overlaps the waits, so a
    /// recording ends on time. Idempotent; dropping the tracer does it too.
    pub fn detach(&mut self) {
        self.links.append(&mut self.sample_links);
        detach_all(&mut self.links);
        for thread in self.sample_closing.drain(..) {
            let _ = thread.join();
        }
    }

    pub fn points(&self) -> &[ProbePoint] {
        &self.points
    }

    /// Hands every record now in the ring buffer to `sink`, in ring order.
    /// Records that do not decode are counted, not passed on.
    pub fn drain(&mut self, mut sink: impl FnMut(Event)) -> usize {
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            let decoded = match &mut self.lio_ids {
                Some(ids) => ids.decode(&item),
                None => decode(&item),
            };
            match decoded {
                Ok(event) => sink(event),
                Err(_) => self.decode_errors += 1,
            }
            n += 1;
        }
        n
    }

    /// The kernel-side counters, summed over CPUs.
    pub fn counters(&self) -> Result<KernelCounters, ProbeError> {
        let sum = |index: u32| -> Result<u64, ProbeError> {
            Ok(self.counters.get(&index, 0)?.iter().sum())
        };
        Ok(KernelCounters {
            ring_full: sum(counter::RING_FULL)?,
            read_failed: sum(counter::READ_FAILED)?,
            walk_truncated: sum(counter::WALK_TRUNCATED)?,
        })
    }

    /// Records that reached user space but could not be decoded.
    pub fn decode_errors(&self) -> u64 {
        self.decode_errors
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        self.detach();
    }
}

/// Loads and attaches one LIO point's programs (entry, and return where it
/// has one).
fn attach_lio(
    ebpf: &mut Ebpf,
    point: Point,
    links: &mut Vec<Link>,
) -> Result<(), aya::programs::ProgramError> {
    let Some((entry, ret)) = point.lio_programs() else {
        return Ok(());
    };
    let function = point.function();
    let missing = || aya::programs::ProgramError::UnexpectedProgramType;
    if matches!(point, Point::LioQueue | Point::LioComplete) {
        let prog: &mut RawTracePoint = ebpf.program_mut(entry).ok_or_else(missing)?.try_into()?;
        prog.load()?;
        let link = prog.attach(function)?;
        links.push(Link::RawTracepoint(prog.take_link(link)?));
        return Ok(());
    }
    for program in std::iter::once(entry).chain(ret) {
        let prog: &mut KProbe = ebpf.program_mut(program).ok_or_else(missing)?.try_into()?;
        prog.load()?;
        let link = prog.attach(function, 0)?;
        links.push(Link::Kprobe(prog.take_link(link)?));
    }
    Ok(())
}

/// Fails early, naming what is missing, instead of letting the kernel answer
/// EPERM from somewhere deep in aya.
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

fn has_capability(cap: u32) -> bool {
    effective_capabilities().unwrap_or(0) & (1u64 << cap) != 0
}

/// Whether `err`, or an error it was caused by, is EPERM or EACCES.
fn permission_denied(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::PermissionDenied)
        {
            return true;
        }
        next = e.source();
    }
    false
}

fn check_privileges() -> Result<(), ProbeError> {
    if has_capability(CAP_SYS_ADMIN) || (has_capability(CAP_BPF) && has_capability(CAP_PERFMON)) {
        return Ok(());
    }
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|(cap, _)| !has_capability(*cap))
        .map(|(_, name)| name)
        .collect();
    Err(ProbeError::Privileges {
        missing: missing.join(", "),
    })
}

fn effective_capabilities() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))?
        .trim();
    u64::from_str_radix(hex, 16).ok()
}

/// The processes now running `binary`, by `/proc/PID/exe`.
pub fn running_processes(binary: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::canonicalize(binary) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe == target))
        .collect();
    pids.sort_unstable();
    pids
}

/// True while process `pid` exists (a zombie counts as gone).
pub fn process_alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
    })
}

/// CLOCK_MONOTONIC now, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec on our stack.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use object::{Object as _, ObjectSection as _, SectionKind};

    use super::PROBES;

    /// `bpf_probe_write_user`, the one helper that writes a traced
    /// process's memory (include/uapi/linux/bpf.h).
    const BPF_FUNC_PROBE_WRITE_USER: i32 = 36;
    /// `bpf_probe_read_user`: what the probes do use.
    const BPF_FUNC_PROBE_READ_USER: i32 = 112;
    /// BPF_JMP | BPF_CALL.
    const CALL: u8 = 0x85;

    /// tgt-trace only reads tgtd: no program in the embedded object calls
    /// the helper that writes user memory (the kernel would also log a
    /// warning on load if one did).
    #[test]
    fn the_probes_never_write_into_tgtd() {
        if PROBES.is_empty() {
            assert!(
                std::env::var("AYA_BUILD_SKIP").is_ok(),
                "the eBPF object is empty although AYA_BUILD_SKIP is not set"
            );
            eprintln!("skipped: built with AYA_BUILD_SKIP, no eBPF object embedded");
            return;
        }
        let file = object::File::parse(PROBES).expect("the embedded object is ELF");
        let mut reads = 0;
        for section in file.sections() {
            if section.kind() != SectionKind::Text {
                continue;
            }
            let code = section.data().expect("section data");
            for (i, insn) in code.chunks_exact(8).enumerate() {
                // A helper call: src_reg 0 (not a BPF-to-BPF call), imm = id.
                let helper = insn[0] == CALL && insn[1] >> 4 == 0;
                let imm = i32::from_le_bytes([insn[4], insn[5], insn[6], insn[7]]);
                assert!(
                    !(helper && imm == BPF_FUNC_PROBE_WRITE_USER),
                    "{} instruction {i} calls bpf_probe_write_user",
                    section.name().unwrap_or("?")
                );
                reads += usize::from(helper && imm == BPF_FUNC_PROBE_READ_USER);
            }
        }
        // The scan sees helper calls at all: the reads are there.
        assert!(
            reads > 0,
            "no bpf_probe_read_user call found: the scan is blind"
        );
    }
}
