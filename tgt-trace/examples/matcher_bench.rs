//! Matcher throughput and memory on a synthetic stream (a benchmark, not a
//! test): `cargo run --release -p tgt-trace --example matcher_bench -- 10000000`.
//!
//! The stream is generated as it is consumed, as the lean probe set would
//! deliver it: 32 commands in flight on each of two nexuses, an ABORT TASK
//! every 1000 commands (half aborted at once, half deferred behind a busy
//! command), a LUN RESET every 20000.

use std::time::Instant;

use tgt_trace::{
    correlate::{Config, Coverage, Matcher},
    event::{Event, Waiter},
};
use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

const PID: u32 = 1;
const DEPTH: u64 = 32;

struct Generator {
    ts: u64,
    next_tag: u64,
    commands: u64,
    mid: u64,
    batch: Vec<Event>,
}

impl Generator {
    fn tick(&mut self) -> u64 {
        self.ts += 250;
        self.ts
    }

    fn queue(&mut self, itn_id: u64, tag: u64) {
        let ts = self.tick();
        self.batch.push(Event::CmdQueue {
            ts_ns: ts,
            pid: PID,
            tid: 1,
            itn_id,
            tag,
            lun: 1,
            opcode: 0x28,
            attribute: 0x20,
            cmd: tag,
        });
    }

    fn release(&mut self, itn_id: u64, tag: u64, result: i32, tmf: Option<Waiter>) {
        let ts = self.tick();
        self.batch.push(Event::CmdRelease {
            ts_ns: ts,
            pid: PID,
            itn_id,
            tag,
            cmd: tag,
            result,
            tmf,
        });
    }

    fn tmf(&mut self, itn_id: u64, function: u8, tag: u64, ret: i32, result: i32) -> u64 {
        self.mid += 1;
        let mid = self.mid;
        let ts = self.tick();
        self.batch.push(Event::TmfRequest {
            ts_ns: ts,
            pid: PID,
            tid: 1,
            itn_id,
            mid,
            function,
            tag,
            lun: 1,
        });
        if ret != mgmt_ret::QUEUED {
            let ts = self.tick();
            self.batch.push(Event::TmfResponse {
                ts_ns: ts,
                pid: PID,
                mid,
                function,
                result,
            });
        }
        let ts = self.tick();
        self.batch.push(Event::TmfReturn {
            ts_ns: ts,
            pid: PID,
            mid,
            ret,
        });
        mid
    }

    /// The next few events: one command's life, sometimes with a TMF.
    fn fill(&mut self) {
        self.batch.clear();
        let itn_id = itn_of(self.next_tag);
        let tag = self.next_tag;
        self.next_tag += 1;
        self.commands += 1;
        self.queue(itn_id, tag);
        // The command queued DEPTH commands ago on this nexus completes now.
        let old = tag.saturating_sub(2 * DEPTH);
        if old == 0 {
            return;
        }
        if self.commands.is_multiple_of(20_000) {
            // LUN RESET: everything in flight is aborted at once.
            self.tmf(itn_id, tmf::LOGICAL_UNIT_RESET, 0, mgmt_ret::DONE, 0);
        } else if self.commands.is_multiple_of(2_000) {
            let mid = self.tmf(itn_id, tmf::ABORT_TASK, old, mgmt_ret::QUEUED, 0);
            let ts = self.tick();
            self.batch.push(Event::TmfResponse {
                ts_ns: ts,
                pid: PID,
                mid,
                function: tmf::ABORT_TASK,
                result: -17,
            });
            self.release(
                itn_of(old),
                old,
                0,
                Some(Waiter {
                    mid,
                    function: tmf::ABORT_TASK,
                    busy: 1,
                }),
            );
            return;
        } else if self.commands.is_multiple_of(1_000) {
            self.tmf(itn_of(old), tmf::ABORT_TASK, old, mgmt_ret::DONE, 0);
            self.release(itn_of(old), old, TASK_ABORTED, None);
            return;
        }
        self.release(itn_of(old), old, 0, None);
    }
}

/// Tags alternate between the two nexuses.
fn itn_of(tag: u64) -> u64 {
    1 + (tag % 2)
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmHWM:")
                    .map(|v| v.trim().trim_end_matches(" kB").parse().unwrap_or(0))
            })
        })
        .unwrap_or(0)
}

fn main() {
    let target: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let cfg = Config {
        coverage: Coverage {
            result: false,
            ..Coverage::ALL
        },
        ..Config::default()
    };
    let mut matcher = Matcher::new(cfg);
    let mut stream = Generator {
        ts: 1,
        next_tag: 1,
        commands: 0,
        mid: 0,
        batch: Vec::new(),
    };
    let mut out = Vec::new();
    let mut events = 0u64;
    let mut records = 0u64;
    let mut rss_at_tenth = 0;
    let start = Instant::now();
    while events < target {
        stream.fill();
        for e in &stream.batch {
            matcher.push(e, &mut out);
        }
        events += stream.batch.len() as u64;
        records += out.len() as u64;
        out.clear();
        if rss_at_tenth == 0 && events >= target / 10 {
            rss_at_tenth = peak_rss_kib();
        }
    }
    let elapsed = start.elapsed();
    let summary = matcher.finish(stream.ts, &mut out);
    let c = &summary.counts;
    println!("events            {events}");
    println!("elapsed           {:.3} s", elapsed.as_secs_f64());
    println!(
        "throughput        {:.2} M events/s (one core)",
        events as f64 / elapsed.as_secs_f64() / 1e6
    );
    println!(
        "records           {records} (commands {} in, {} aborted; TMFs {}; orphans {})",
        c.commands_in,
        c.commands_aborted,
        c.tmfs,
        c.orphans()
    );
    println!(
        "peak RSS          {} KiB at 10% of the stream, {} KiB at the end",
        rss_at_tenth,
        peak_rss_kib()
    );
}
