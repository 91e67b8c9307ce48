//! The live source: tgtd's probes, drained every `poll` until a stop
//! condition (a signal, `--duration`, the end of `-- COMMAND`, or the
//! embedding program's stop) — each of which holds however slow the sinks
//! are, because no sink blocks (see [`crate::sink`]).

use std::{
    collections::BTreeSet,
    ffi::OsString,
    io,
    process::ExitStatus,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tokio::{
    signal::unix::{SignalKind, signal},
    sync::Notify,
};

use crate::{
    event::Event,
    pipeline::{Driver, lines_lost},
    points::Target,
    probe::{self, ProbeError, TraceOptions, Traced, Tracer},
    sink::SinkError,
    trace::{Drops, Header, Summary},
};

/// How often, in drains, to look for tgtd processes that have exited.
const LIVENESS_EVERY: u32 = 10;

/// When a live trace stops, and how it is paced.
#[derive(Debug, Clone)]
pub struct Stops {
    pub duration: Option<Duration>,
    /// Run this command once the probes are attached; stop when it exits.
    pub command: Vec<OsString>,
    /// How often the ring buffer is drained (the probes do not wake us).
    pub poll: Duration,
    /// A `matched_summary` snapshot this often, if at all.
    pub summary_every: Option<Duration>,
    /// Stops the trace, as a signal does, when notified: how an embedding
    /// program (the TUI) ends it without signalling itself.
    pub stop: Option<Arc<Notify>>,
    /// How long the end waits for the sinks to hand on what is left.
    pub final_flush: Duration,
    /// Say nothing on standard error (the TUI owns the terminal).
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    #[error(transparent)]
    Probe(#[from] ProbeError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error("cannot run {command:?}: {source}; check the command after `--`")]
    Command {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot install a signal handler: {0}")]
    Signal(#[source] io::Error),
}

/// The probes attached, and the header that says so: the first line of
/// the trace, from which the driver is built.
pub struct Attached {
    tracer: Tracer,
    pub header: Header,
}

/// How a live trace ended.
#[derive(Debug)]
pub struct Ended {
    pub summary: Summary,
    /// The command's exit status, when one was run.
    pub command_status: Option<ExitStatus>,
}

/// Attaches the probes to `trace`'s binary.
pub fn attach(trace: &TraceOptions) -> Result<Attached, ProbeError> {
    let tracer = Tracer::start(trace)?;
    let (target, pids, path, build_id, layout) = match &trace.traced {
        Traced::Tgtd(binary) => (
            Target::Tgtd,
            match trace.pid {
                Some(pid) => vec![pid.get()],
                None => probe::running_processes(&binary.path),
            },
            binary.path.display().to_string(),
            binary.build_id.clone(),
            binary.layout.clone(),
        ),
        Traced::Lio(resolved) => (
            Target::Lio,
            Vec::new(),
            "kernel".to_owned(),
            crate::lio::kernel_release(),
            crate::tgtd::LayoutCheck::Btf {
                offsets: resolved.offsets.clone(),
            },
        ),
    };
    let header = Header {
        schema_version: crate::SCHEMA_VERSION,
        tgt_trace_version: env!("CARGO_PKG_VERSION").to_owned(),
        target,
        tgtd_path: path,
        tgtd_build_id: build_id,
        tgtd_layout: layout,
        probe_set: trace.set,
        sampling: trace.sample,
        probes: tracer.points().to_vec(),
        pids,
        pid_filter: trace.pid.map(|p| p.get()),
        start_unix_ns: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
        start_monotonic_ns: probe::monotonic_ns(),
        ring_bytes: trace.ring_bytes,
    };
    Ok(Attached { tracer, header })
}

/// Runs the live trace through `driver` until a stop condition, then
/// detaches, drains what is left, ends the trace and closes the sinks
/// within `stops.final_flush`.
pub async fn run(
    attached: Attached,
    mut driver: Driver<'_>,
    stops: &Stops,
) -> Result<Ended, LiveError> {
    let Attached { mut tracer, header } = attached;
    // Taken before anything else: whoever waits for the header to know that
    // the probes are attached may stop the trace at once, and a signal while
    // the sessions already open are named (tgtadm) must end the trace
    // cleanly, with its summary, rather than kill the process.
    let mut sigint = signal(SignalKind::interrupt()).map_err(LiveError::Signal)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(LiveError::Signal)?;
    driver.header(&header)?;
    // Sessions opened before the probes were attached: their initiators'
    // names, from tgtd (through tgtadm), stamped with the trace's start.
    let mut events: u64 = 0;
    for &pid in &header.pids {
        match crate::existing::nexuses(pid, header.start_monotonic_ns) {
            Ok(found) => {
                for event in found {
                    events += 1;
                    driver.event(&event)?;
                }
            }
            Err(why) if !stops.quiet => eprintln!(
                "tgt-trace: the initiators of tgtd {pid}'s sessions opened before tracing \
                 are unnamed: {why}"
            ),
            Err(_) => {}
        }
    }
    if header.target == Target::Lio && !stops.quiet {
        for p in header.probes.iter().filter(|p| !p.attached) {
            eprintln!(
                "tgt-trace: LIO point {} not attached: {}",
                p.name,
                p.missing.as_deref().unwrap_or("unknown")
            );
        }
    }
    if header.pids.is_empty() && header.target == Target::Tgtd && !stops.quiet {
        eprintln!(
            "tgt-trace: no {} process is running yet; its processes are traced as they start",
            header.tgtd_path
        );
    }
    driver.batch_end()?;

    let mut child = match stops.command.split_first() {
        Some((program, args)) => Some(
            tokio::process::Command::new(program)
                .args(args)
                .kill_on_drop(true)
                .spawn()
                .map_err(|source| LiveError::Command {
                    command: stops
                        .command
                        .iter()
                        .map(|a| a.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join(" "),
                    source,
                })?,
        ),
        None => None,
    };

    let mut ticker = tokio::time::interval(stops.poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut next_snapshot = stops
        .summary_every
        .map(|every| tokio::time::Instant::now() + every);
    let deadline = stops.duration.map(|d| tokio::time::Instant::now() + d);

    let mut processes = Processes {
        live: header.pids.iter().copied().collect(),
        exited: BTreeSet::new(),
        // The kernel target has no process to outlive.
        watch: header.target == Target::Tgtd,
    };
    let mut drains: u32 = 0;
    let mut command_status = None;
    // `--sample`: the first window opens at once.
    let mut window = header
        .sampling
        .filter(|_| tracer.samples())
        .map(|sampling| Window {
            sampling,
            phase: Phase::Closed,
            next: Some(tokio::time::Instant::now()),
            period_start: tokio::time::Instant::now(),
        });

    let stopped_by = loop {
        tokio::select! {
            _ = ticker.tick() => {
                drains = drains.wrapping_add(1);
                events += processes.drain(&mut tracer, &mut driver)?;
                if let Some(w) = window.as_mut() {
                    events += w.settle(&mut tracer, &mut processes, &mut driver)?;
                }
                if drains.is_multiple_of(LIVENESS_EVERY) {
                    events += processes.report_exits(&mut driver)?;
                    // Two map reads: cheap at this pace, and what a live
                    // consumer (the metrics) shows as lost.
                    let mut drops = Drops::new(tracer.counters()?, tracer.decode_errors());
                    drops.sink_slow = driver.lines_lost();
                    driver.drops(drops)?;
                }
                driver.batch_end()?;
                if let (Some(every), Some(at)) = (stops.summary_every, next_snapshot)
                    && tokio::time::Instant::now() >= at
                {
                    next_snapshot = Some(at + every);
                    let mut drops = Drops::new(tracer.counters()?, tracer.decode_errors());
                    drops.sink_slow = driver.lines_lost();
                    driver.snapshot(drops)?;
                }
            }
            () = sleep_until(window.as_ref().and_then(|w| w.next)) => {
                if let Some(w) = window.as_mut() {
                    events += w.turn(&mut tracer, &mut processes, &mut driver)?;
                    driver.batch_end()?;
                }
            }
            _ = sigint.recv() => break "signal",
            _ = sigterm.recv() => break "signal",
            () = notified(stops.stop.as_deref()) => break "stopped",
            () = sleep_until(deadline) => break "duration",
            status = wait_for(&mut child) => {
                command_status = Some(status.map_err(|source| LiveError::Command {
                    command: "the command".to_owned(),
                    source,
                })?);
                break "command exited";
            }
        }
    };

    // No probe fires once they are detached: everything they submitted is
    // in the ring then, and the last drain takes it all.
    tracer.detach();
    events += processes.drain(&mut tracer, &mut driver)?;
    if let Some(w) = window.as_ref().filter(|w| w.phase != Phase::Closed) {
        events += w.edge(false, &mut driver)?;
    }
    events += processes.report_exits(&mut driver)?;
    driver.batch_end()?;
    let mut drops = Drops::new(tracer.counters()?, tracer.decode_errors());
    drops.sink_slow = driver.lines_lost();
    driver.drops(drops)?;
    driver.finish(drops, true, 0)?;
    let mut summary = Summary {
        events,
        drops,
        duration_ns: probe::monotonic_ns().saturating_sub(header.start_monotonic_ns),
        stopped_by: stopped_by.to_owned(),
        sinks: driver.losses(),
        layout_violations: driver.layout_violations().clone(),
    };
    driver.summary(&summary)?;
    // A bounded final flush: what a reader has not taken by then is
    // counted, and the trace ends on time.
    let (losses, failure) = driver.close(stops.final_flush).await;
    if let Some(failure) = failure {
        return Err(failure.into());
    }
    summary.drops.sink_slow = lines_lost(&losses);
    summary.sinks = losses;
    Ok(Ended {
        summary,
        command_status,
    })
}

/// `--sample`'s windows: open for `open_ms` of every `period_ms`.
struct Window {
    sampling: crate::points::Sampling,
    phase: Phase,
    /// When it opens or closes next; none while closing.
    next: Option<tokio::time::Instant>,
    /// When the current period began.
    period_start: tokio::time::Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open,
    /// Its probes are being detached.
    Closing,
}

impl Window {
    /// At `next`: opens the window, or begins to close it. An open is
    /// stamped before the first probe is attached.
    fn turn(
        &mut self,
        tracer: &mut Tracer,
        processes: &mut Processes,
        driver: &mut Driver<'_>,
    ) -> Result<u64, LiveError> {
        match self.phase {
            Phase::Closed => {
                let events = processes.drain(tracer, driver)? + self.edge(true, driver)?;
                self.phase = Phase::Open;
                tracer.sample_open()?;
                self.next = tokio::time::Instant::now()
                    .checked_add(Duration::from_millis(self.sampling.open_ms()));
                Ok(events)
            }
            Phase::Open => {
                tracer.sample_close();
                self.phase = Phase::Closing;
                self.next = None;
                Ok(0)
            }
            Phase::Closing => Ok(0),
        }
    }

    /// At each drain: once a closing window's probes are all detached, the
    /// ring is drained of what they sent and the close is stamped, so that
    /// every command event of a window lies between its two edges.
    fn settle(
        &mut self,
        tracer: &mut Tracer,
        processes: &mut Processes,
        driver: &mut Driver<'_>,
    ) -> Result<u64, LiveError> {
        if self.phase != Phase::Closing || !tracer.sample_closed() {
            return Ok(0);
        }
        let events = processes.drain(tracer, driver)? + self.edge(false, driver)?;
        self.phase = Phase::Closed;
        // The next period; one missed (the loop was held up) is skipped,
        // not run late back to back.
        let period = Duration::from_millis(self.sampling.period_ms);
        let now = tokio::time::Instant::now();
        self.period_start += period;
        while self.period_start < now {
            self.period_start += period;
        }
        self.next = Some(self.period_start);
        Ok(events)
    }

    fn edge(&self, open: bool, driver: &mut Driver<'_>) -> Result<u64, SinkError> {
        driver.event(&Event::SampleWindow {
            ts_ns: probe::monotonic_ns(),
            pid: 0,
            open,
        })?;
        Ok(1)
    }
}

/// The tgtd processes seen, and those seen to exit.
struct Processes {
    live: BTreeSet<u32>,
    exited: BTreeSet<u32>,
    watch: bool,
}

impl Processes {
    fn drain(&mut self, tracer: &mut Tracer, driver: &mut Driver<'_>) -> Result<u64, SinkError> {
        let mut result = Ok(());
        let mut n = 0;
        tracer.drain(|event| {
            if result.is_err() {
                return;
            }
            let pid = event.pid();
            if self.watch && !self.exited.contains(&pid) {
                self.live.insert(pid);
            }
            n += 1;
            result = driver.event(&event);
        });
        result.map(|()| n)
    }

    /// A `process_exit` event for each traced tgtd that is gone.
    fn report_exits(&mut self, driver: &mut Driver<'_>) -> Result<u64, SinkError> {
        let gone: Vec<u32> = self
            .live
            .iter()
            .copied()
            .filter(|&pid| !probe::process_alive(pid))
            .collect();
        for &pid in &gone {
            self.live.remove(&pid);
            self.exited.insert(pid);
            driver.event(&Event::ProcessExit {
                ts_ns: probe::monotonic_ns(),
                pid,
            })?;
        }
        Ok(gone.len() as u64)
    }
}

/// Never completes without a deadline.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Never completes without a stop handle.
async fn notified(stop: Option<&Notify>) {
    match stop {
        Some(stop) => stop.notified().await,
        None => std::future::pending().await,
    }
}

/// Never completes without a child.
async fn wait_for(child: &mut Option<tokio::process::Child>) -> io::Result<ExitStatus> {
    match child {
        Some(child) => child.wait().await,
        None => std::future::pending().await,
    }
}
