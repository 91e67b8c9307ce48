//! deploy/: the Prometheus rules, the systemd unit and the Debian package.
//!
//! `cargo xtask deb` builds the package; `cargo xtask test` checks the rules
//! with promtool, then installs the package it builds, checks what it
//! installed (the binary runs, the man page reads, the unit verifies, the
//! rules are there) and purges it, checking that every file it brought is
//! gone.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail, ensure};

use crate::{root, run_step};

const PACKAGE: &str = "tgt-trace";
const RULES: &str = "deploy/prometheus/tgt-trace.rules.yml";
const RULES_TEST: &str = "deploy/prometheus/tgt-trace.rules.test.yml";
const UNIT: &str = "deploy/systemd/tgt-trace.service";
/// Where the package puts what the checks look at.
const INSTALLED_BIN: &str = "/usr/bin/tgt-trace";
const INSTALLED_MAN: &str = "/usr/share/man/man1/tgt-trace.1.gz";
const INSTALLED_UNIT: &str = "/usr/lib/systemd/system/tgt-trace.service";
const INSTALLED_RULES: &str = "/usr/share/tgt-trace/prometheus/tgt-trace.rules.yml";

/// `promtool check rules` and `promtool test rules` on deploy/prometheus.
pub fn check_rules() -> anyhow::Result<()> {
    run_step(
        "promtool check rules",
        Command::new("promtool")
            .current_dir(root())
            .args(["check", "rules", RULES]),
    )?;
    run_step(
        "promtool test rules (alerts and recording rules)",
        Command::new("promtool")
            .current_dir(root())
            .args(["test", "rules", RULES_TEST]),
    )
}

/// The manual pages and the .deb, from the release build already made;
/// returns the package's path.
pub fn package() -> anyhow::Result<PathBuf> {
    let release = root().join("target/release");
    let man = release.join("man");
    // Pages of commands that no longer exist must not be packaged.
    let _ = std::fs::remove_dir_all(&man);
    run_step(
        "tgt-trace man --out-dir target/release/man",
        Command::new(release.join("tgt-trace"))
            .args(["man", "--out-dir"])
            .arg(&man),
    )?;
    // Compressed here, as Debian wants man pages: cargo deb leaves files
    // under target/release/ as they are. -n: no name or time stamp inside,
    // so the same pages give the same bytes.
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&man)
        .with_context(|| format!("reading {}", man.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    pages.sort();
    ensure!(!pages.is_empty(), "tgt-trace man wrote no page");
    run_step(
        "gzip the man pages",
        Command::new("gzip").args(["-9", "-n", "-f"]).args(&pages),
    )?;
    let out = crate::cargo()
        .args(["deb", "-p", PACKAGE, "--no-build"])
        .output()
        .context("cannot run cargo-deb: `cargo xtask setup` installs it")?;
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        bail!("cargo deb failed ({})", out.status);
    }
    // cargo deb prints the package's path last.
    let stdout = String::from_utf8_lossy(&out.stdout);
    let deb = stdout
        .lines()
        .rev()
        .find(|l| l.ends_with(".deb"))
        .map(PathBuf::from)
        .with_context(|| format!("cargo deb named no .deb: {stdout}"))?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// Installs `deb`, checks it, purges it, and checks that it left nothing.
/// Refuses to touch a machine where tgt-trace is installed already: the
/// test would replace and then remove someone's installation.
pub fn install_and_remove(deb: &Path) -> anyhow::Result<()> {
    ensure!(
        !installed(),
        "the {PACKAGE} package is installed on this machine; the deploy test installs and purges its own build: `dpkg -P {PACKAGE}` first"
    );
    ensure!(
        !Path::new(INSTALLED_BIN).exists(),
        "{INSTALLED_BIN} exists but belongs to no package; the deploy test would overwrite and then remove it: move it away first"
    );
    // The directories the package would create: after its removal they
    // must be gone too (those that existed before must stay).
    let new_dirs: BTreeSet<PathBuf> = package_dirs(deb)?
        .into_iter()
        .filter(|d| !d.exists())
        .collect();
    let mut guard = Installed { purged: false };
    run_step(
        "dpkg -i the package",
        Command::new("dpkg").arg("-i").arg(deb),
    )?;
    let listed = text(Command::new("dpkg").args(["-L", PACKAGE]))?;
    let files: Vec<PathBuf> = listed
        .lines()
        .map(PathBuf::from)
        .filter(|p| !p.is_dir())
        .collect();
    for path in [
        INSTALLED_BIN,
        INSTALLED_MAN,
        INSTALLED_UNIT,
        INSTALLED_RULES,
    ] {
        ensure!(
            files.iter().any(|f| f == Path::new(path)),
            "dpkg -L {PACKAGE} does not list {path}:\n{listed}"
        );
    }
    check_installed()?;
    run_step(
        "dpkg -r the package",
        Command::new("dpkg").args(["-r", PACKAGE]),
    )?;
    let left: Vec<&PathBuf> = files
        .iter()
        .chain(&new_dirs)
        .filter(|p| p.symlink_metadata().is_ok())
        .collect();
    ensure!(
        left.is_empty(),
        "dpkg -r {PACKAGE} left what it installed: {left:?}"
    );
    // No conffiles: dpkg -r forgets the package. Were any added, -P
    // removes them.
    if status().contains("config-files") {
        run_step(
            "dpkg -P the package",
            Command::new("dpkg").args(["-P", PACKAGE]),
        )?;
    }
    guard.purged = true;
    let after = status();
    ensure!(
        after.is_empty() || after.ends_with(" not-installed"),
        "dpkg still knows {PACKAGE} after its removal: {after}"
    );
    eprintln!(
        "xtask: the package installed {} files and removed them all",
        files.len()
    );
    Ok(())
}

/// What the installed package must provide.
fn check_installed() -> anyhow::Result<()> {
    let version = text(Command::new(INSTALLED_BIN).arg("--version"))?;
    let expected = format!("tgt-trace {}", env!("CARGO_PKG_VERSION"));
    ensure!(
        version.trim() == expected,
        "{INSTALLED_BIN} --version said {version:?}, not {expected:?}"
    );
    let roff = text(Command::new("zcat").arg(INSTALLED_MAN))?;
    ensure!(
        roff.contains(".TH tgt-trace 1"),
        "{INSTALLED_MAN} is not tgt-trace's man page:\n{roff}"
    );
    // man renders it as a reader sees it: plain text when not on a
    // terminal, here with no pager and no formatting codes.
    let shown = text(
        Command::new("man")
            .args(["-l", INSTALLED_MAN])
            .env("MANPAGER", "cat")
            .env("MAN_KEEP_FORMATTING", "")
            .env("MANWIDTH", "100"),
    )?;
    for needle in ["NAME", "SUBCOMMANDS", "tgt-trace-record(1)", "eBPF tracer"] {
        ensure!(
            shown.contains(needle),
            "man -l {INSTALLED_MAN} does not show {needle:?}:\n{shown}"
        );
    }
    for (installed, source) in [(INSTALLED_UNIT, UNIT), (INSTALLED_RULES, RULES)] {
        let got = std::fs::read(installed).with_context(|| format!("reading {installed}"))?;
        let want = std::fs::read(root().join(source))?;
        ensure!(got == want, "{installed} differs from {source}");
    }
    // The unit as installed, where its ExecStart= binary and its man page
    // exist. verify exits 0 on most mistakes (an unknown setting, a bad
    // value) and only prints them, so any output fails the check.
    let out = Command::new("systemd-analyze")
        .args(["verify", INSTALLED_UNIT])
        .output()
        .context("cannot run systemd-analyze (package systemd)")?;
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify {INSTALLED_UNIT} ({}): {said}",
        out.status
    );
    eprintln!("xtask: systemd-analyze verify {INSTALLED_UNIT}: clean");
    Ok(())
}

/// Purges the package if a check failed half-way.
struct Installed {
    purged: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        let known = status();
        if !self.purged && !known.is_empty() && !known.ends_with(" not-installed") {
            eprintln!("xtask: purging the {PACKAGE} package the failed test installed");
            let _ = Command::new("dpkg").args(["-P", PACKAGE]).status();
        }
    }
}

fn installed() -> bool {
    status() == "install ok installed"
}

/// dpkg's status of the package ("install ok installed", "deinstall ok
/// config-files", ...), empty when dpkg has never heard of it.
fn status() -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", PACKAGE])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// The directories in `deb`'s file system, as absolute paths.
fn package_dirs(deb: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let listing = text(Command::new("dpkg-deb").arg("-c").arg(deb))?;
    Ok(listing
        .lines()
        .filter(|l| l.starts_with('d'))
        .filter_map(|l| l.split_whitespace().last())
        .map(|p| PathBuf::from(p.trim_start_matches('.').trim_end_matches('/')))
        .filter(|p| p.as_os_str().len() > 1)
        .collect())
}

/// A command's standard output; its failure is an error.
fn text(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
