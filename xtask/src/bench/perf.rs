//! A flat CPU profile of one user-space run with `perf` (when installed), so
//! that a missed throughput goal names what limits it from measurement.

use std::{
    ffi::OsStr,
    fmt::Write as _,
    process::{Command, Stdio},
};

/// Symbols (with their share of samples) and the share of each category.
pub struct Flat {
    /// As perf reports it ("2K").
    pub samples: String,
    pub top: Vec<(f64, String)>,
    pub categories: Vec<(&'static str, f64)>,
}

/// Runs `program args` under `perf record` (user and kernel samples at
/// 999 Hz) with its stdout discarded. `categories` sum the shares of the
/// symbols that contain any of their patterns. None when perf is missing or
/// fails.
pub fn profile(
    program: &OsStr,
    args: &[&OsStr],
    categories: &[(&'static str, &[&str])],
) -> Option<Flat> {
    let data = std::env::temp_dir().join(format!("tgt-trace-bench-{}.perf", std::process::id()));
    let recorded = Command::new("perf")
        .args(["record", "-q", "-F", "999", "-o"])
        .arg(&data)
        .arg("--")
        .arg(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let report = Command::new("perf")
        .args([
            "report",
            "--no-children",
            "--sort",
            "symbol",
            "--stdio",
            "-i",
        ])
        .arg(&data)
        .stderr(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&data);
    if !recorded.success() {
        return None;
    }
    let report = String::from_utf8_lossy(&report.ok()?.stdout).into_owned();
    let samples = report
        .lines()
        .find_map(|l| l.strip_prefix("# Samples: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("?")
        .to_owned();
    // "    16.32%  [.] symbol   -  -"
    let rows: Vec<(f64, String)> = report
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (pct, rest) = l.trim_start().split_once('%')?;
            let pct: f64 = pct.parse().ok()?;
            let rest = rest.trim_start();
            let symbol = rest
                .strip_prefix("[.]")
                .or_else(|| rest.strip_prefix("[k]"))?
                .trim()
                .trim_end_matches(|c: char| c == '-' || c.is_whitespace());
            Some((pct, symbol.to_owned()))
        })
        .collect();
    let categories = categories
        .iter()
        .map(|(label, patterns)| {
            let share = rows
                .iter()
                .filter(|(_, s)| patterns.iter().any(|p| s.contains(p)))
                .map(|(p, _)| p)
                .sum();
            (*label, share)
        })
        .collect();
    Some(Flat {
        samples,
        top: rows.into_iter().take(12).collect(),
        categories,
    })
}

impl Flat {
    /// The top symbols as a text block (symbols shortened to 110 characters).
    pub fn table(&self) -> String {
        let mut text = String::new();
        for (pct, symbol) in &self.top {
            let short: String = symbol.chars().take(110).collect();
            let _ = writeln!(text, "{pct:6.2}%  {short}");
        }
        text
    }

    pub fn share(&self, label: &str) -> f64 {
        self.categories
            .iter()
            .find(|(l, _)| *l == label)
            .map_or(0.0, |(_, s)| *s)
    }
}
