use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// Builds the probes with the nightly toolchain and bpf-linker, into OUT_DIR,
/// where `probe.rs` embeds them. With AYA_BUILD_SKIP=1 (clippy, docs, or a
/// machine without bpf-linker) an empty object is left instead, and the
/// binary says so when asked to trace.
fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let object = std::path::Path::new(&out_dir).join("tgt-trace");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        std::fs::write(&object, b"").context("writing the placeholder eBPF object")?;
        return Ok(());
    }
    let ebpf_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("tgt-trace has a parent directory")?
        .join("tgt-trace-ebpf");
    let root_dir = ebpf_dir
        .to_str()
        .context("the eBPF crate's path is UTF-8")?;
    aya_build::build_ebpf(
        [Package {
            name: "tgt-trace-ebpf",
            root_dir,
            ..Default::default()
        }],
        Toolchain::default(),
    )
    .context(
        "building the eBPF probes failed; `cargo xtask setup` installs what they need \
         (nightly rust-src and bpf-linker)",
    )
}
