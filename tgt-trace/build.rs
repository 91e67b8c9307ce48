use std::process::{Command, Stdio};

use anyhow::{Context as _, anyhow, bail};
use aya_build::{Package, Toolchain};

/// Set in the copy of this build script that runs aya-build (below).
const INNER: &str = "TGT_TRACE_EBPF_BUILD_INNER";

/// Builds the probes with the nightly toolchain and bpf-linker, into OUT_DIR,
/// where `probe.rs` embeds them. With AYA_BUILD_SKIP=1 (clippy, docs, or a
/// machine without bpf-linker) an empty object is left instead, and the
/// binary says so when asked to trace.
///
/// aya-build relays every line of the inner cargo build as a
/// `cargo:warning`, and cargo replays those on every later build, even when
/// nothing is rebuilt: about fifty lines of "Compiling …" per `cargo build`.
/// So aya-build runs in a second copy of this script whose standard output is
/// captured here: its `cargo:` instructions are passed on, and the build's
/// own output goes to standard error, which cargo shows only when the build
/// fails or with `cargo build -vv`. It is also kept in OUT_DIR/ebpf-build.log.
fn main() -> anyhow::Result<()> {
    let out_dir = std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?;
    let out_dir = std::path::Path::new(&out_dir);
    let object = out_dir.join("tgt-trace");
    let skip =
        std::env::var("AYA_BUILD_SKIP").is_ok_and(|v| v == "1" || v.eq_ignore_ascii_case("true"));
    if skip {
        println!("cargo:rerun-if-env-changed=AYA_BUILD_SKIP");
        std::fs::write(&object, b"").context("writing the placeholder eBPF object")?;
        return Ok(());
    }
    if std::env::var_os(INNER).is_some() {
        return build_probes();
    }
    let script = std::env::current_exe().context("finding the build script's own path")?;
    let inner = Command::new(&script)
        .env(INNER, "1")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let mut log = String::new();
    for line in String::from_utf8_lossy(&inner.stdout).lines() {
        match line.strip_prefix("cargo:warning=") {
            Some(text) => log.push_str(text),
            None if line.starts_with("cargo:") => {
                println!("{line}");
                continue;
            }
            None => log.push_str(line),
        }
        log.push('\n');
    }
    log.push_str(&String::from_utf8_lossy(&inner.stderr));
    let _ = std::fs::write(out_dir.join("ebpf-build.log"), &log);
    eprint!("{log}");
    if !inner.status.success() {
        bail!(
            "building the eBPF probes failed ({}; its output is above); `cargo xtask setup` \
             installs what they need (nightly rust-src and bpf-linker)",
            inner.status
        );
    }
    Ok(())
}

fn build_probes() -> anyhow::Result<()> {
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
