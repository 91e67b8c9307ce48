//! Where a trace comes from. A source yields the trace's lines, in order,
//! into the one [`crate::pipeline::Driver`]: the header, the events in
//! batches, and the end. [`probes`] attaches to running tgtd processes;
//! [`file`] reads a recorded trace. Only [`probes`] reaches the loader
//! ([`crate::probe`], the one module that uses aya).

pub mod file;
pub mod probes;
