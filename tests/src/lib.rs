//! End-to-end support: a real tgtd, real initiators, and tgt-trace, on 127.0.0.1 only.

pub mod group;
pub mod iscsi;
pub mod slowio;
pub mod tgtd;
pub mod vm;
pub mod wire;
pub mod workload;
