//! Installs what is missing, and only that: a second run changes nothing.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

use crate::run_step;

/// Debian packages: the target, the initiators, tmux for terminal tests,
/// tshark (with dumpcap) for the end-to-end tests' independent view of the
/// wire; prometheus (with promtool) to scrape `tgt-trace serve` and check
/// deploy/'s rules; dpkg-dev for cargo deb's dependency search
/// (dpkg-shlibdeps), man-db to read the packaged man page.
const PACKAGES: &[&str] = &[
    "tgt",
    "libiscsi-bin",
    "tmux",
    "tshark",
    "prometheus",
    "dpkg-dev",
    "man-db",
];
/// Answers for package questions that would otherwise stop a
/// non-interactive install: dumpcap stays root-only (no setuid helper, no
/// `wireshark` group), which is all the tests, run as root, need.
const DEBCONF_PRESEED: &str = "wireshark-common wireshark-common/install-setuid boolean false\n";
/// bpf-linker release known to build against the nightly toolchain's LLVM.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-deb release that builds with the stable toolchain (rustc 1.95).
const CARGO_DEB_VERSION: &str = "3.8.0";

pub fn run() -> anyhow::Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    cargo_deb()?;
    debian_packages(PACKAGES)?;
    Ok(())
}

pub fn require_root(why: &str) -> anyhow::Result<()> {
    if !is_root() {
        bail!("{why}: run as root (CI runs as root), or use --no-e2e");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))
        .context("rustup not found: install Rust with rustup (https://rustup.rs), then rerun")?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        run_step(
            "install the nightly toolchain (the eBPF probes need it)",
            Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]),
        )?;
    }
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        run_step(
            "install rust-src for nightly (build-std=core for the BPF target)",
            Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        )?;
    }
    Ok(())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
}

/// bpf-linker built against the nightly toolchain's own libLLVM (its
/// `llvm-NN` feature from `rustc +nightly -vV`, linked with an rpath to the
/// toolchain's lib directory): no system LLVM, no download.
fn bpf_linker() -> anyhow::Result<()> {
    let linker = cargo_home().join("bin/bpf-linker");
    if output(Command::new(&linker).arg("--version"))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION))
    {
        return Ok(());
    }
    let sysroot = output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))
        .context("rustc +nightly does not run; `rustup toolchain install nightly` first")?;
    let sysroot = PathBuf::from(sysroot.trim());
    let verbose = output(Command::new("rustc").args(["+nightly", "-vV"])).unwrap_or_default();
    let llvm_major = verbose
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("rustc +nightly -vV names no LLVM version")?
        .to_owned();
    let lib_dir = sysroot.join("lib");
    let libllvm = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libLLVM.so"))
        })
        .with_context(|| {
            format!(
                "no libLLVM.so in {}; the nightly toolchain is incomplete",
                lib_dir.display()
            )
        })?;
    let prefix = crate::root().join("target/xtask/llvm");
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)
        .with_context(|| format!("linking {}", link.display()))?;
    run_step(
        &format!(
            "build bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {llvm_major} (a few minutes, once)"
        ),
        Command::new("rustup")
            .args([
                "run",
                "nightly",
                "cargo",
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm_major}"),
            ])
            .env("LLVM_PREFIX", &prefix)
            .env(
                "RUSTFLAGS",
                format!("-C link-args=-Wl,-rpath,{}", lib_dir.display()),
            ),
    )
}

/// cargo-deb, which builds the Debian package (`cargo xtask deb`), from
/// crates.io at a pinned version, with its own lock file.
fn cargo_deb() -> anyhow::Result<()> {
    let bin = cargo_home().join("bin/cargo-deb");
    if output(Command::new(&bin).arg("--version"))
        .is_some_and(|v| v.trim() == format!("cargo-deb {CARGO_DEB_VERSION}"))
    {
        return Ok(());
    }
    run_step(
        &format!("build cargo-deb {CARGO_DEB_VERSION} (a few minutes, once)"),
        crate::cargo().args([
            "install",
            "cargo-deb",
            "--version",
            CARGO_DEB_VERSION,
            "--locked",
        ]),
    )
}

fn package_installed(name: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", name]))
        .is_some_and(|s| s.trim() == "install ok installed")
}

pub fn debian_packages(packages: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !package_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let list = missing.join(" ");
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "missing Debian packages: {list}; this is not a Debian system: install tgtd and libiscsi's tools by other means"
        );
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {list}; run `sudo apt-get install -y {list}`, or rerun as root"
        );
    }
    // Keep package scripts from starting services: a tgtd started by the
    // package would listen on every address, and tests start their own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let added_policy = !policy.exists();
    if added_policy {
        std::fs::write(policy, "#!/bin/sh\nexit 101\n").context("writing /usr/sbin/policy-rc.d")?;
        std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    }
    let result = preseed(DEBCONF_PRESEED).and_then(|()| {
        run_step(
            "apt-get update",
            Command::new("apt-get").args(["update", "-qq"]),
        )
        .and_then(|()| {
            run_step(
                &format!("apt-get install {list}"),
                Command::new("apt-get")
                    .args(["install", "-y", "-qq", "--no-install-recommends"])
                    .args(&missing)
                    .env("DEBIAN_FRONTEND", "noninteractive"),
            )
        })
    });
    if added_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

/// Feeds `selections` to `debconf-set-selections`, so that apt-get asks
/// nothing.
fn preseed(selections: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    eprintln!("xtask: debconf-set-selections (package questions answered ahead)");
    let mut child = Command::new("debconf-set-selections")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .context("cannot run debconf-set-selections (package debconf): is this Debian?")?;
    let written = child
        .stdin
        .take()
        .context("debconf-set-selections has no standard input")?
        .write_all(selections.as_bytes());
    let status = child.wait().context("waiting for debconf-set-selections")?;
    written.context("writing to debconf-set-selections")?;
    if !status.success() {
        bail!("debconf-set-selections failed ({status}) on: {selections}");
    }
    Ok(())
}
