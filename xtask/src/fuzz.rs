//! `cargo xtask fuzz`: the property-based fuzz targets of untrusted input
//! (ring-buffer records, NDJSON traces, replay) with many more cases than
//! `cargo test` runs, in release.

use crate::{cargo, run_step};

pub fn run(cases: u32) -> anyhow::Result<()> {
    run_step(
        &format!("fuzz targets, {cases} cases each (tgt-trace/tests/fuzz.rs, release)"),
        cargo()
            .args(["test", "--release", "-p", "tgt-trace", "--test", "fuzz"])
            .env("PROPTEST_CASES", cases.to_string()),
    )
}
