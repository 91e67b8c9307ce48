//! Holds a trace to the wire (issue 13): what tgt-trace concluded about each
//! TMF against the PDUs a packet capture of the same run saw, by session
//! (TSIH) and initiator task tag.
//!
//! The wire is the independent oracle: tshark dissected it, and nothing of
//! the matcher is used to read it. Every disagreement is returned as a
//! sentence; the caller prints them and fails.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tgt_trace::{
    correlate::{Delivery, OrphanKind, Record, TmfOutcome, TmfRecord},
    event::Event,
};
use tgt_trace_e2e::wire::{Wire, WireTmf, tmf_function_name, tsih_to_itn_id, wire_itt_to_tgtd_tag};

use super::Trace;

/// What was compared, for the test's log.
#[derive(Debug, Default)]
pub struct Compared {
    pub tmfs: usize,
    /// Wire TMFs outside the traced window (requested before the probes
    /// were attached or after the recording stopped).
    pub outside_window: usize,
    pub sessions: usize,
    pub commands: usize,
    pub disagreements: Vec<String>,
}

/// The wire name of a TMF function as tgt-trace names it (RFC 7143's names,
/// underscored; tgt-trace has no names for codes tgtd does not know).
fn traced_name(code: u8) -> String {
    match code {
        1..=8 => tmf_function_name(code).replace(' ', "_"),
        _ => "UNKNOWN".to_owned(),
    }
}

/// CLOCK_MONOTONIC of the trace to wall-clock time, through the header.
fn wall(trace: &Trace, mono_ns: u64) -> SystemTime {
    let h = &trace.header;
    let unix = i128::from(h.start_unix_ns) + i128::from(mono_ns) - i128::from(h.start_monotonic_ns);
    UNIX_EPOCH + Duration::from_nanos(u64::try_from(unix.max(0)).unwrap_or(0))
}

/// Compares `trace` (and the matcher's `records` of it) with `wire`.
pub fn compare(trace: &Trace, records: &[Record], wire: &Wire) -> Compared {
    let mut out = Compared::default();
    let mut fail = |text: String| out.disagreements.push(text);
    if let Err(why) = wire.complete() {
        fail(why.to_string());
        return out;
    }
    let h = &trace.header;
    let start = wall(trace, h.start_monotonic_ns);
    let end = wall(
        trace,
        h.start_monotonic_ns
            .saturating_add(trace.summary.duration_ns),
    );
    let tmfs: Vec<&TmfRecord> = records
        .iter()
        .filter_map(|r| match r {
            Record::Tmf(t) => Some(t),
            _ => None,
        })
        .collect();
    let mut matched = vec![false; tmfs.len()];

    for w in &wire.tmfs {
        if w.requested_at < start || w.requested_at > end {
            out.outside_window += 1;
            continue;
        }
        let Some(tsih) = w.tsih else {
            fail(format!(
                "wire TMF ITT {:#x} on stream {} has no session (its login was not captured)",
                w.itt, w.stream
            ));
            continue;
        };
        let itn = tsih_to_itn_id(tsih);
        let itt = wire_itt_to_tgtd_tag(w.itt) as u32;
        let found: Vec<usize> = tmfs
            .iter()
            .enumerate()
            .filter(|(_, t)| t.itn_id == itn && t.itt == Some(itt))
            .map(|(i, _)| i)
            .collect();
        let [i] = found[..] else {
            fail(format!(
                "wire TMF {} ITT {:#x} (nexus {itn}) is in the trace {} times",
                tmf_function_name(w.function),
                w.itt,
                found.len()
            ));
            continue;
        };
        matched[i] = true;
        out.tmfs += 1;
        for d in tmf_disagreements(w, tmfs[i]) {
            fail(format!(
                "{} ITT {:#x} (nexus {itn}, TMF {}): {d}",
                tmf_function_name(w.function),
                w.itt,
                tmfs[i].seq
            ));
        }
    }
    // Nothing the wire did not carry.
    for (t, seen) in tmfs.iter().zip(&matched) {
        let in_window = t.itt.is_some()
            && (start..=end).contains(&wall(trace, t.requested_ns))
            && wire
                .streams
                .iter()
                .any(|s| s.tsih.map(tsih_to_itn_id) == Some(t.itn_id));
        if in_window && !seen {
            fail(format!(
                "the trace has {} TMF {} (nexus {}, ITT {:?}) that the wire does not",
                t.function, t.seq, t.itn_id, t.itt
            ));
        }
    }
    command_counts(trace, records, wire, &mut out);
    out
}

fn tmf_disagreements(w: &WireTmf, t: &TmfRecord) -> Vec<String> {
    let mut d = Vec::new();
    if t.function != traced_name(w.function) {
        d.push(format!(
            "function: wire {}, trace {}",
            w.function, t.function
        ));
    }
    if w.function == 1 && t.tag != wire_itt_to_tgtd_tag(w.referenced_itt) {
        d.push(format!(
            "referenced tag: wire {:#x}, trace {:#x}",
            wire_itt_to_tgtd_tag(w.referenced_itt),
            t.tag
        ));
    }
    match w.response {
        Some(code) => {
            if t.delivery != Delivery::Sent || t.outcome == TmfOutcome::Unanswered {
                d.push(format!(
                    "answered {code} on the wire, but the trace says {:?} ({:?}, {:?})",
                    t.outcome, t.delivery, t.cause
                ));
            }
            if t.iscsi_response != Some(code) {
                d.push(format!(
                    "response: wire {code}, trace {:?}",
                    t.iscsi_response
                ));
            }
            match (t.latency_ns, w.round_trip) {
                (Some(latency), Some(rtt)) if Duration::from_nanos(latency) > rtt => {
                    d.push(format!(
                        "target-side latency {latency} ns exceeds the wire's round trip {rtt:?}"
                    ))
                }
                (None, _) => d.push("answered, but the trace has no latency".to_owned()),
                _ => {}
            }
        }
        None => {
            if t.outcome != TmfOutcome::Unanswered
                || !matches!(t.delivery, Delivery::FreedUnsent | Delivery::NotSent)
            {
                d.push(format!(
                    "no response on the wire (then {:?}), but the trace says {:?} ({:?}, response {:?})",
                    w.ended, t.outcome, t.delivery, t.iscsi_response
                ));
            }
        }
    }
    d
}

/// SCSI commands per session: the wire's command PDUs against the
/// commands the trace saw reach the core, for the sessions that began and
/// ended while both were watching. A command the iSCSI layer held while
/// ABORT TASK was answered TASK DOES NOT EXIST, and that never came, is on
/// the wire and never in the core: the trace says so, and it is counted.
fn command_counts(trace: &Trace, records: &[Record], wire: &Wire, out: &mut Compared) {
    // A sampled queue probe saw the commands of its windows only, which
    // the trace does not claim to be all.
    let queue_probe = trace
        .header
        .probes
        .iter()
        .any(|p| p.name == tgt_trace::points::Point::Queue && p.attached && !p.sampled);
    if !queue_probe {
        return;
    }
    let mut lived: HashMap<u64, (bool, bool)> = HashMap::new();
    let mut queued: HashMap<u64, usize> = HashMap::new();
    for e in &trace.events {
        match e {
            Event::NexusCreate { itn_id, .. } => lived.entry(*itn_id).or_default().0 = true,
            Event::NexusDestroy { itn_id, .. } => lived.entry(*itn_id).or_default().1 = true,
            Event::CmdQueue { itn_id, .. } => *queued.entry(*itn_id).or_default() += 1,
            _ => {}
        }
    }
    let mut held: HashMap<u64, i64> = HashMap::new();
    for r in records {
        match r {
            Record::Tmf(t) if t.outcome == TmfOutcome::NoTaskNotYetQueued => {
                *held.entry(t.itn_id).or_default() += 1;
            }
            Record::Orphan(o) if o.kind == OrphanKind::AbortedCommandRan => {
                *held.entry(o.itn_id).or_default() -= 1;
            }
            _ => {}
        }
    }
    for s in &wire.streams {
        let Some(itn) = s.tsih.map(tsih_to_itn_id) else {
            continue;
        };
        if lived.get(&itn) != Some(&(true, true)) {
            continue;
        }
        let traced = i64::try_from(queued.get(&itn).copied().unwrap_or(0)).unwrap_or(i64::MAX)
            + held.get(&itn).copied().unwrap_or(0);
        out.sessions += 1;
        out.commands += s.scsi_commands;
        if usize::try_from(traced).ok() != Some(s.scsi_commands) {
            out.disagreements.push(format!(
                "nexus {itn}: {} SCSI commands on the wire, {traced} in the trace",
                s.scsi_commands
            ));
        }
    }
}
