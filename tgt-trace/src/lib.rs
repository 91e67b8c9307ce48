//! tgt-trace: an eBPF tracer for the tgt SCSI target framework.
//!
//! Data flows one way: probes → ring buffer → [`decode`] → [`correlate`] →
//! outputs. Only [`probe`] touches aya.

pub mod check;
pub mod correlate;
pub mod decode;
pub mod event;
pub mod probe;
pub mod reader;
pub mod record;
pub mod report;
pub mod schema;
pub mod stats;
pub mod synth;
pub mod tgtd;
pub mod trace;
pub mod tui;

/// The version of the NDJSON trace format. Any change to a field's name or
/// meaning bumps it. `schema/tgt-trace.schema.json` describes it.
///
/// 2 added the matched lines (`command`, `tmf`, `orphan`, `matched_summary`)
/// to recorded traces, `blocked_ns` on covered commands and
/// `tmfs_by_function` in the counts; version 1 traces are a subset and are
/// still read.
///
/// 3 added `connection_closed` on `tmf_response` events and
/// `response_dropped` on TMF records (a response tgtd freed unsent because
/// the initiator's connection was closed; such a TMF is unanswered and has no
/// `latency_ns`). Versions 1 and 2 are still read.
pub const SCHEMA_VERSION: u32 = 3;

/// The oldest trace format this version reads.
pub const OLDEST_SCHEMA_VERSION: u32 = 1;
