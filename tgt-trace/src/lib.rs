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
pub mod stats;
pub mod synth;
pub mod tgtd;
pub mod trace;

/// The version of the NDJSON trace format. Any change to a field's name or
/// meaning bumps it.
pub const SCHEMA_VERSION: u32 = 1;
