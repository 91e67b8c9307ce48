//! `cargo xtask tgtd-builds`: tgtd built from the source Debian ships, in
//! several ways (issue 17), so that the tests can hold tgt-trace's layout
//! proof to builds it was never shown: each must be proved field by field
//! or refused naming the field.
//!
//! Everything lives in `target/tgtd-builds/` (a clean clone rebuilds it):
//! `src/` the unpacked `apt-get source tgt` of the installed tgt version
//! (so Debian's tgtadm, which the tests drive, is the same 1.0.85), one
//! directory per variant with its `tgtd`, its build log and tree, and
//! `manifest.json`, which `tests/tests/builds.rs` and `cargo xtask test`
//! read. A variant whose `tgtd` exists and whose recorded recipe matches is
//! not rebuilt.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail};

use crate::{root, run_step, setup};

/// Compilers, make, libc headers, nm (binutils); dpkg-source (dpkg-dev)
/// unpacks what `apt-get source` downloads. Nothing else: tgt's
/// usr/Makefile builds the optional backends (rbd, glfs, iser, aio,
/// systemd) only when asked or when their headers exist.
const PACKAGES: &[&str] = &["build-essential", "clang", "dpkg-dev", "tgt"];

/// The entry this job adds, its own file, so that the machine's own are
/// never edited.
const SRC_ENTRY: &str = "/etc/apt/sources.list.d/tgt-trace-src.sources";
/// Where the machine's Debian archive is configured (deb822), from which
/// the deb-src entry copies URIs, suites, components and key.
const DEBIAN_SOURCES: &str = "/etc/apt/sources.list.d/debian.sources";

/// One way of building tgtd.
pub struct Variant {
    pub name: &'static str,
    pub compiler: &'static str,
    /// Appended after usr/Makefile's own `-g -O2 -fno-strict-aliasing
    /// -Wall -Wstrict-prototypes -Werror`: the last -O wins.
    pub cflags: &'static [&'static str],
    pub ldflags: &'static [&'static str],
    /// Build a copy of the source with `struct scsi_cmd`'s `tag` moved.
    pub corrupt_layout: bool,
}

pub const VARIANTS: &[Variant] = &[
    Variant {
        name: "gcc-O0",
        compiler: "gcc",
        cflags: &["-O0"],
        ldflags: &[],
        corrupt_layout: false,
    },
    Variant {
        name: "gcc-O2",
        compiler: "gcc",
        cflags: &["-O2"],
        ldflags: &[],
        corrupt_layout: false,
    },
    Variant {
        name: "gcc-O3",
        compiler: "gcc",
        cflags: &["-O3"],
        ldflags: &[],
        corrupt_layout: false,
    },
    Variant {
        name: "gcc-Os",
        compiler: "gcc",
        cflags: &["-Os"],
        ldflags: &[],
        corrupt_layout: false,
    },
    Variant {
        name: "gcc-O2-cf-protection",
        compiler: "gcc",
        cflags: &["-O2", "-fcf-protection=full"],
        ldflags: &[],
        corrupt_layout: false,
    },
    Variant {
        name: "gcc-O2-lto",
        compiler: "gcc",
        cflags: &["-O2", "-flto=auto"],
        // LTO generates the code at link time: the link needs -flto and
        // the optimisation level too.
        ldflags: &["-O2", "-flto=auto"],
        corrupt_layout: false,
    },
    Variant {
        name: "clang-O2",
        compiler: "clang",
        // clang 14 warns of four unused static functions in
        // usr/bs_sheepdog.c (is_data_obj_writeable, is_data_obj,
        // data_oid_to_idx, vid_to_vmstate_oid) where gcc 12 does not, and
        // usr/Makefile has -Werror: that one warning stays printed in the
        // build log but no longer fails it.
        cflags: &["-O2", "-Wno-error=unused-function"],
        ldflags: &[],
        corrupt_layout: false,
    },
    Variant {
        name: "corrupt-layout",
        compiler: "gcc",
        cflags: &["-O2"],
        ldflags: &[],
        corrupt_layout: true,
    },
];

/// What `corrupt-layout` does to usr/scsi_cmnd.h (tgt 1.0.85): eight bytes
/// before `tag`, so `tag` and every field after it (`result`, `mreq`,
/// `sense_buffer`, ..., `it_nexus`) move by 8.
const CORRUPT_FROM: &str = "\tint attribute;\n\tuint64_t tag;\n";
const CORRUPT_TO: &str =
    "\tint attribute;\n\tuint64_t tgt_trace_moved; /* tgt-trace: moves tag */\n\tuint64_t tag;\n";

/// One variant's outcome, as written to the manifest.
#[derive(Debug, Clone)]
pub struct Built {
    pub name: String,
    pub compiler: String,
    pub cflags: String,
    pub path: PathBuf,
    pub built: bool,
    pub why_not: Option<String>,
    pub build_seconds: f64,
    /// True when this run reused an earlier build.
    pub cached: bool,
    /// What the build was made from; a variant is rebuilt when it changes.
    recipe: String,
}

pub fn dir() -> PathBuf {
    root().join("target/tgtd-builds")
}

pub fn manifest_path() -> PathBuf {
    dir().join("manifest.json")
}

/// Fetches the source if needed, builds every variant not already built,
/// writes the manifest and prints the table.
pub fn run() -> anyhow::Result<Vec<Built>> {
    let started = Instant::now();
    setup::require_root("building tgtd installs compilers and adds a deb-src entry to apt")?;
    setup::debian_packages(PACKAGES)?;
    let version = installed_tgt_version()?;
    let source = source_tree(&version)?;
    let previous = read_previous();
    let mut built = Vec::new();
    for variant in VARIANTS {
        let recipe = recipe(variant, &version);
        let path = dir().join(variant.name).join("tgtd");
        let reused = previous
            .iter()
            .find(|b| b.name == variant.name && b.built && b.recipe == recipe && b.path == path)
            .filter(|_| path.is_file());
        let result = match reused {
            Some(b) => Built {
                cached: true,
                ..b.clone()
            },
            None => build(variant, &source, &version, recipe)?,
        };
        built.push(result);
    }
    write_manifest(&built)?;
    print_table(&built, started.elapsed().as_secs_f64());
    Ok(built)
}

/// The installed tgt's version (`1:1.0.85-1+deb12u1`): the source fetched
/// is that one, so the builds and Debian's tgtadm agree.
fn installed_tgt_version() -> anyhow::Result<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", "tgt"])
        .output()
        .context("cannot run dpkg-query: this job needs Debian")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || version.is_empty() {
        bail!("tgt is not installed: run `cargo xtask setup` (it installs tgt), then rerun");
    }
    Ok(version)
}

/// `1:1.0.85-1+deb12u1` -> `1.0.85`: dpkg-source unpacks into
/// `tgt-<upstream version>`.
fn upstream_version(version: &str) -> &str {
    let no_epoch = version.split_once(':').map_or(version, |(_, v)| v);
    no_epoch.rsplit_once('-').map_or(no_epoch, |(v, _)| v)
}

/// The unpacked Debian source (with Debian's patches applied by
/// dpkg-source), fetched once: a stamp names the version it holds.
fn source_tree(version: &str) -> anyhow::Result<PathBuf> {
    let src = dir().join("src");
    let tree = src.join(format!("tgt-{}", upstream_version(version)));
    let stamp = src.join("fetched");
    if std::fs::read_to_string(&stamp).is_ok_and(|s| s == version) && tree.is_dir() {
        return Ok(tree);
    }
    let started = Instant::now();
    ensure_deb_src(version)?;
    if src.exists() {
        std::fs::remove_dir_all(&src).with_context(|| format!("removing {}", src.display()))?;
    }
    std::fs::create_dir_all(&src).with_context(|| format!("creating {}", src.display()))?;
    run_step(
        &format!("apt-get source tgt={version} into {}", src.display()),
        Command::new("apt-get")
            .args(["source", "-qq", &format!("tgt={version}")])
            .current_dir(&src)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )?;
    if !tree.join("usr/Makefile").is_file() {
        bail!(
            "apt-get source tgt={version} left no {}/usr/Makefile: see what it unpacked in {}",
            tree.display(),
            src.display()
        );
    }
    std::fs::write(&stamp, version)?;
    eprintln!(
        "xtask: tgt {version} source fetched in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(tree)
}

/// Makes `apt-get source tgt=VERSION` possible: nothing when apt already
/// knows that source; otherwise a deb-src twin of each entry of the
/// machine's debian.sources, then `apt-get update`.
fn ensure_deb_src(version: &str) -> anyhow::Result<()> {
    if apt_knows_source(version) {
        return Ok(());
    }
    let machine = std::fs::read_to_string(DEBIAN_SOURCES).with_context(|| {
        format!(
            "apt has no source for tgt={version} and {DEBIAN_SOURCES} cannot be read to \
             derive one: add a deb-src entry for the Debian archive yourself, then rerun"
        )
    })?;
    let entry = deb_src_twin(&machine);
    if entry.is_empty() {
        bail!(
            "{DEBIAN_SOURCES} has no `Types: deb` entry to copy: add a deb-src entry for \
             the Debian archive yourself, then rerun"
        );
    }
    if std::fs::read_to_string(SRC_ENTRY).ok().as_deref() != Some(entry.as_str()) {
        std::fs::write(SRC_ENTRY, &entry).with_context(|| format!("writing {SRC_ENTRY}"))?;
        eprintln!("xtask: added {SRC_ENTRY} (deb-src twins of {DEBIAN_SOURCES})");
    }
    run_step(
        "apt-get update (for the source entries)",
        Command::new("apt-get").args(["update", "-qq"]),
    )?;
    if !apt_knows_source(version) {
        bail!(
            "after adding {SRC_ENTRY} and apt-get update, apt still has no source package \
             tgt={version}: is that version still in the archive? (`apt-cache showsrc tgt`)"
        );
    }
    Ok(())
}

fn apt_knows_source(version: &str) -> bool {
    Command::new("apt-cache")
        .args(["showsrc", "--only-source", "tgt"])
        .output()
        .is_ok_and(|out| {
            String::from_utf8_lossy(&out.stdout)
                .lines()
                .any(|l| l.strip_prefix("Version: ") == Some(version))
        })
}

/// For each deb822 stanza whose Types include `deb`: the same URIs,
/// Suites, Components and Signed-By, as `Types: deb-src`. Comments and
/// other fields are left out.
fn deb_src_twin(sources: &str) -> String {
    const KEPT: &[&str] = &["URIs", "Suites", "Components", "Signed-By"];
    let mut out = String::new();
    for stanza in sources.split("\n\n") {
        let fields: Vec<(&str, &str)> = stanza
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim(), v.trim()))
            .collect();
        let is_deb = fields
            .iter()
            .any(|(k, v)| *k == "Types" && v.split_whitespace().any(|t| t == "deb"));
        if !is_deb {
            continue;
        }
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str("Types: deb-src\n");
        for (k, v) in fields.iter().filter(|(k, _)| KEPT.contains(k)) {
            let _ = writeln!(out, "{k}: {v}");
        }
    }
    out
}

fn recipe(variant: &Variant, version: &str) -> String {
    format!(
        "tgt {version}; CC={}; CFLAGS+={}; LDFLAGS={}; {}",
        variant.compiler,
        variant.cflags.join(" "),
        variant.ldflags.join(" "),
        if variant.corrupt_layout {
            "scsi_cmd.tag moved by 8 bytes"
        } else {
            "unpatched"
        }
    )
}

/// Builds one variant in its own copy of the source (tgt builds in
/// place), with `make -C usr tgtd` and the variant's flags appended by a
/// second makefile: usr/Makefile appends `-g -O2` to CFLAGS after any
/// given in the environment, so only flags added after it take effect.
fn build(variant: &Variant, source: &Path, version: &str, recipe: String) -> anyhow::Result<Built> {
    let vdir = dir().join(variant.name);
    let tree = vdir.join("tree");
    let path = vdir.join("tgtd");
    if vdir.exists() {
        std::fs::remove_dir_all(&vdir).with_context(|| format!("removing {}", vdir.display()))?;
    }
    std::fs::create_dir_all(&vdir)?;
    let mut result = Built {
        name: variant.name.to_owned(),
        compiler: variant.compiler.to_owned(),
        cflags: variant.cflags.join(" "),
        path: path.clone(),
        built: false,
        why_not: None,
        build_seconds: 0.0,
        cached: false,
        recipe,
    };
    let started = Instant::now();
    let status = Command::new("cp")
        .arg("-a")
        .arg(source)
        .arg(&tree)
        .status()
        .context("cannot run cp")?;
    if !status.success() {
        bail!("copying {} to {} failed", source.display(), tree.display());
    }
    if variant.corrupt_layout {
        let header = tree.join("usr/scsi_cmnd.h");
        let text = std::fs::read_to_string(&header)?;
        if !text.contains(CORRUPT_FROM) {
            bail!(
                "{} has no `int attribute;` followed by `uint64_t tag;` in struct scsi_cmd: \
                 the tgt source changed; update CORRUPT_FROM in xtask/src/tgtd_builds.rs",
                header.display()
            );
        }
        std::fs::write(&header, text.replacen(CORRUPT_FROM, CORRUPT_TO, 1))?;
    }
    let extra = vdir.join("variant.mk");
    std::fs::write(
        &extra,
        format!(
            "# Appended after usr/Makefile (make -f Makefile -f this): the last -O wins.\n\
             CFLAGS += {}\n",
            variant.cflags.join(" ")
        ),
    )?;
    let log = vdir.join("build.log");
    let log_file = std::fs::File::create(&log)?;
    eprintln!("xtask: build tgtd {} ({})", variant.name, result.recipe);
    let status = Command::new("make")
        .arg("-C")
        .arg(tree.join("usr"))
        .arg("-f")
        .arg("Makefile")
        .arg("-f")
        .arg(&extra)
        .arg("-j2")
        .arg(format!("CC={}", variant.compiler))
        .arg(format!("LDFLAGS={}", variant.ldflags.join(" ")))
        // The top-level Makefile exports VERSION; tgtd reports it.
        .arg(format!("VERSION={}", upstream_version(version)))
        .arg("tgtd")
        // Only the variant's flags: none from the caller's environment.
        .env_remove("CFLAGS")
        .env_remove("CPPFLAGS")
        .env_remove("LDFLAGS")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()
        .context("cannot run make")?;
    result.build_seconds = started.elapsed().as_secs_f64();
    let log_text = std::fs::read_to_string(&log).unwrap_or_default();
    if !status.success() {
        result.why_not = Some(format!(
            "make failed ({status}); its last lines:\n{}\n(full log: {})",
            tail(&log_text, 8),
            log.display()
        ));
        return Ok(result);
    }
    std::fs::copy(tree.join("usr/tgtd"), &path)
        .with_context(|| format!("copying the built tgtd to {}", path.display()))?;
    // tgt-trace attaches to tgtd's exported functions; usr/Makefile links
    // tgtd with `-Wl,-E` (export-dynamic) for its backing-store modules,
    // so every build must export them as Debian's does.
    if let Some(missing) = unexported(&path, "target_cmd_queue")? {
        result.why_not = Some(missing);
        return Ok(result);
    }
    result.built = true;
    Ok(result)
}

/// None when `symbol` is among the binary's defined dynamic symbols, else
/// why not.
fn unexported(binary: &Path, symbol: &str) -> anyhow::Result<Option<String>> {
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(binary)
        .output()
        .context("cannot run nm (binutils): install build-essential")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text
        .lines()
        .any(|l| l.split_whitespace().last() == Some(symbol))
    {
        return Ok(None);
    }
    Ok(Some(format!(
        "built, but {symbol} is not a dynamic symbol of {} (nm -D): the link lost \
         usr/Makefile's -Wl,-E",
        binary.display()
    )))
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn write_manifest(built: &[Built]) -> anyhow::Result<()> {
    let variants: Vec<serde_json::Value> = built
        .iter()
        .map(|b| {
            serde_json::json!({
                "name": b.name,
                "compiler": b.compiler,
                "cflags": b.cflags,
                "path": b.path,
                "built": b.built,
                "why_not": b.why_not,
                "build_seconds": (b.build_seconds * 10.0).round() / 10.0,
                "recipe": b.recipe,
            })
        })
        .collect();
    let text = serde_json::to_string_pretty(&serde_json::json!({ "variants": variants }))?;
    let path = manifest_path();
    std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// The manifest of an earlier run, for its cache; empty when there is
/// none or it cannot be read (everything is then rebuilt).
fn read_previous() -> Vec<Built> {
    let Ok(text) = std::fs::read_to_string(manifest_path()) else {
        return Vec::new();
    };
    let Ok(value) = serde_json::from_str::<serde_json::Value>(&text) else {
        return Vec::new();
    };
    let str_of = |v: &serde_json::Value, k: &str| v[k].as_str().unwrap_or_default().to_owned();
    value["variants"]
        .as_array()
        .map(|vs| {
            vs.iter()
                .map(|v| Built {
                    name: str_of(v, "name"),
                    compiler: str_of(v, "compiler"),
                    cflags: str_of(v, "cflags"),
                    path: PathBuf::from(str_of(v, "path")),
                    built: v["built"].as_bool().unwrap_or(false),
                    why_not: v["why_not"].as_str().map(str::to_owned),
                    build_seconds: v["build_seconds"].as_f64().unwrap_or(0.0),
                    cached: true,
                    recipe: str_of(v, "recipe"),
                })
                .collect()
        })
        .unwrap_or_default()
}

fn print_table(built: &[Built], total: f64) {
    eprintln!("xtask: tgtd builds ({})", dir().display());
    eprintln!(
        "  {:<22} {:<6} {:<32} {:>8}  result",
        "variant", "cc", "cflags (added)", "seconds"
    );
    for b in built {
        let result = match (&b.why_not, b.cached) {
            (Some(why), _) => format!("not built: {}", why.lines().next().unwrap_or_default()),
            (None, true) => "built (cached)".to_owned(),
            (None, false) => "built".to_owned(),
        };
        eprintln!(
            "  {:<22} {:<6} {:<32} {:>8.1}  {result}",
            b.name, b.compiler, b.cflags, b.build_seconds
        );
    }
    eprintln!("xtask: tgtd builds done in {total:.1} s");
}

/// The end-to-end tests run again on each traceable build: the TMF
/// scenarios (issue 4's paths A-J) and the libiscsi TMF tests, the checks
/// whose truth rests on the fields the layout proof covers.
const SCENARIO_TESTS: &[&str] = &["scenarios", "tmf"];

/// One build's line in `cargo xtask test`'s summary.
struct Run {
    name: String,
    verdict: String,
    unproved: Vec<String>,
    scenarios: String,
    seconds: f64,
}

/// For each build `tgt-trace probes` says it can trace, the TMF scenario
/// tests with that build as the tests' tgtd (`TGT_TRACE_TGTD`). Prints one
/// line per build; fails when a scenario run fails.
pub fn scenarios_per_build(built: &[Built], tgt_trace: &Path) -> anyhow::Result<()> {
    let mut runs = Vec::new();
    for b in built.iter().filter(|b| b.built) {
        let (traceable, unproved) = verdict(tgt_trace, &b.path)?;
        let mut run = Run {
            name: b.name.clone(),
            verdict: if traceable { "proved" } else { "refused" }.to_owned(),
            unproved,
            scenarios: "not run (refused)".to_owned(),
            seconds: 0.0,
        };
        if traceable {
            let started = Instant::now();
            let mut cmd = crate::cargo();
            cmd.args([
                "test",
                "--release",
                "--locked",
                "--no-fail-fast",
                "-p",
                "tgt-trace-e2e",
            ]);
            for test in SCENARIO_TESTS {
                cmd.args(["--test", test]);
            }
            cmd.args(["--", "--test-threads=1"])
                .env("TGT_TRACE_BIN", tgt_trace)
                .env(tgt_trace_e2e::tgtd::TGTD_ENV, &b.path);
            eprintln!(
                "xtask: TMF scenarios on tgtd {} ({})",
                b.name,
                b.path.display()
            );
            let status = cmd
                .status()
                .with_context(|| format!("cannot run {cmd:?}"))?;
            run.seconds = started.elapsed().as_secs_f64();
            run.scenarios = if status.success() {
                "passed".to_owned()
            } else {
                format!("FAILED ({status})")
            };
        }
        runs.push(run);
    }
    eprintln!("xtask: tgtd builds, traced:");
    for r in &runs {
        eprintln!(
            "  {:<22} {:<8} unproved: {:<40} scenarios: {:<24} {:>6.1} s",
            r.name,
            r.verdict,
            if r.unproved.is_empty() {
                "none".to_owned()
            } else {
                r.unproved.join(", ")
            },
            r.scenarios,
            r.seconds
        );
    }
    let failed: Vec<&str> = runs
        .iter()
        .filter(|r| r.scenarios.starts_with("FAILED"))
        .map(|r| r.name.as_str())
        .collect();
    if !failed.is_empty() {
        bail!(
            "the TMF scenarios failed on tgtd builds {}: their output is above; rerun one with \
             TGT_TRACE_TGTD=target/tgtd-builds/NAME/tgtd cargo test --release -p tgt-trace-e2e \
             --test scenarios --test tmf -- --test-threads=1",
            failed.join(", ")
        );
    }
    Ok(())
}

/// `tgt-trace probes --tgtd PATH --json`'s `traceable`, and the fields it
/// could not prove.
fn verdict(tgt_trace: &Path, tgtd: &Path) -> anyhow::Result<(bool, Vec<String>)> {
    let out = Command::new(tgt_trace)
        .args(["probes", "--json", "--tgtd"])
        .arg(tgtd)
        .output()
        .with_context(|| format!("cannot run {}", tgt_trace.display()))?;
    let facts: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "tgt-trace probes --json --tgtd {} printed no JSON ({}): {}",
            tgtd.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    let Some(traceable) = facts["traceable"].as_bool() else {
        bail!(
            "tgt-trace probes --json --tgtd {} has no `traceable`: this tgt-trace predates \
             the field-by-field layout proof (issue 17), which the per-build runs need",
            tgtd.display()
        );
    };
    let unproved = facts["fields"]
        .as_array()
        .with_context(|| format!("probes --json --tgtd {} has no `fields`", tgtd.display()))?
        .iter()
        .filter(|f| f["proved"] == false)
        .filter_map(|f| f["field"].as_str().map(str::to_owned))
        .collect();
    Ok((traceable, unproved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_src_twin_copies_each_deb_stanza() {
        let machine = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\n\
                       Suites: bookworm bookworm-updates\nComponents: main\n\
                       Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n\
                       Types: deb-src\nURIs: http://x\nSuites: y\n";
        assert_eq!(
            deb_src_twin(machine),
            "Types: deb-src\nURIs: http://deb.debian.org/debian\n\
             Suites: bookworm bookworm-updates\nComponents: main\n\
             Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
        );
    }

    #[test]
    fn upstream_version_drops_epoch_and_revision() {
        assert_eq!(upstream_version("1:1.0.85-1+deb12u1"), "1.0.85");
        assert_eq!(upstream_version("1.0.85"), "1.0.85");
    }
}
