//! Where results go. A sink takes what the recording produces and must
//! never hold up the loop that drains the probes' ring buffer or that
//! watches the stop conditions: what it cannot take is counted, by cause.

pub mod lines;
