//! Statistics and BENCHMARKS.md: each section owns a block between
//! `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`; the file is rewritten
//! whole, in a fixed order, keeping the blocks of sections not run.

use anyhow::Context as _;

use crate::root;

/// The order of blocks in BENCHMARKS.md (`soak` is written by `cargo xtask
/// soak`); blocks with other names follow, as found.
const ORDER: [&str; 13] = [
    "goals",
    "overhead",
    "latency",
    "cpu",
    "sampled",
    "aborts",
    "ring",
    "probes",
    "profile",
    "matcher",
    "replay",
    "soak",
    "soak-sampled",
];

pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Minimum and maximum.
pub fn spread(values: &[f64]) -> (f64, f64) {
    let lo = values.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

/// "min–max" of a series, formatted with `digits` decimals.
pub fn range(values: &[f64], digits: usize) -> String {
    let (lo, hi) = spread(values);
    format!("{lo:.digits$}–{hi:.digits$}")
}

pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name\t: ").map(str::to_owned))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:")
                    .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            })
        })
        .unwrap_or(0);
    let tgt = Some(std::process::Command::new("dpkg-query"))
        .and_then(|mut c| {
            c.args(["-W", "-f", "${Version}", "tgt"])
                .output()
                .ok()
                .filter(|o| o.status.success())
        })
        .map(|o| format!(", tgt {}", String::from_utf8_lossy(&o.stdout).trim()))
        .unwrap_or_default();
    format!(
        "{cores} × {cpu}, {:.0} GiB, Linux {}{tgt}",
        mem_kb as f64 / (1 << 20) as f64,
        kernel.trim()
    )
}

/// Today's date (UTC), YYYY-MM-DD.
fn today() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm).
    let z = (secs / 86_400) as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

/// A goal of issue #7 or #15: its row in the goals table, and the id of the
/// mark its section writes next to the verdict it computed ([`goal_mark`]).
struct Goal {
    id: &'static str,
    issue: u32,
    text: &'static str,
    /// The block that measures it.
    section: &'static str,
    /// Where the table points.
    link: &'static str,
}

const OVERHEAD: &str = "[Overhead](#overhead-at-saturation)";

const GOALS: [Goal; 12] = [
    Goal {
        id: "tmf-0.98",
        issue: 15,
        text: "traced/untraced IOPS ≥ 0.98 with the tmf set",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "lean-0.80",
        issue: 15,
        text: "traced/untraced IOPS ≥ 0.80 with the lean set",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "full-0.60",
        issue: 15,
        text: "traced/untraced IOPS ≥ 0.60 with the full set",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "sample-0.95",
        issue: 15,
        text: "traced/untraced IOPS ≥ 0.95 with the lean set and `--sample 10%`",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "sampled-p50",
        issue: 15,
        text: "`--sample 10%`: the command histogram's p50 within 10% of the unsampled one's",
        section: "sampled",
        link: "[Sampled histograms](#sampled-histograms)",
    },
    Goal {
        id: "sampled-p99",
        issue: 15,
        text: "`--sample 10%`: the command histogram's p99 within 10% of the unsampled one's",
        section: "sampled",
        link: "[Sampled histograms](#sampled-histograms)",
    },
    Goal {
        id: "full-0.88",
        issue: 7,
        text: "traced/untraced IOPS ≥ 0.88 with the full set (#15: 0.60)",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "tmf-0.95",
        issue: 7,
        text: "traced/untraced IOPS ≥ 0.95 with the tmf set (#15: 0.98)",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "bpftrace-1.3",
        issue: 7,
        text: "tgt-trace ≥ 1.3× bpftrace's IOPS on the same probe points, same run",
        section: "overhead",
        link: OVERHEAD,
    },
    Goal {
        id: "drops-0",
        issue: 7,
        text: "0 drops at saturation (default 16 MiB ring, full set)",
        section: "ring",
        link: "[Ring](#drops-at-saturation-ring-size)",
    },
    Goal {
        id: "matcher-10M",
        issue: 7,
        text: "matcher ≥ 10 M events/s on one core (full and lean sets)",
        section: "matcher",
        link: "[Matcher](#matcher-throughput)",
    },
    Goal {
        id: "replay-1M",
        issue: 7,
        text: "replay ≥ 1 M lines/s",
        section: "replay",
        link: "[Replay](#replay-throughput)",
    },
];

/// The mark a section writes after a goal's verdict: invisible in the
/// rendered file, read back by [`write_intro`] so the goals table states
/// the verdict the section computed, never one of its own.
pub fn goal_mark(id: &str, met: bool) -> String {
    format!("<!-- goal:{id} {} -->", if met { "met" } else { "missed" })
}

/// A goal's status from its section's block: the verdict its mark gives,
/// and the date the block was measured.
fn goal_status(blocks: &[(String, String)], goal: &Goal) -> String {
    let Some((_, block)) = blocks.iter().find(|(n, _)| n == goal.section) else {
        return format!("not measured yet (`--only {}`)", goal.section);
    };
    let day = block
        .rfind("_Measured ")
        .map(|at| &block[at + "_Measured ".len()..])
        .and_then(|rest| rest.split_whitespace().next());
    let date = day.map_or(String::new(), |d| format!(" ({d})"));
    let mark = |met| block.contains(&goal_mark(goal.id, met));
    if mark(true) {
        format!("met{date}")
    } else if mark(false) {
        format!("**missed**{date}")
    } else {
        // Its verdict is in the block's text, from a run before the marks.
        format!(
            "see the section (measured {} before the marks; `--only {}` remeasures)",
            day.unwrap_or("earlier"),
            goal.section
        )
    }
}

/// The goals of issues #7 and #15, where each is measured and whether the
/// last measurement met it; rewritten after every section.
pub fn write_intro(machine: &str) -> anyhow::Result<()> {
    let path = root().join("BENCHMARKS.md");
    let blocks = parse_blocks(&std::fs::read_to_string(&path).unwrap_or_default());
    let sections: Vec<&str> = super::Section::ALL.iter().map(|s| s.name()).collect();
    let mut table = String::from("| goal | issue | status | where |\n|---|---|---|---|\n");
    for goal in &GOALS {
        table.push_str(&format!(
            "| {} | #{} | {} | {} |\n",
            goal.text,
            goal.issue,
            goal_status(&blocks, goal),
            goal.link
        ));
    }
    table.push_str(
        "| tgt-trace's RSS flat over a long run | #7 | not measured here | the soak \
         (`cargo xtask soak`, [Soak](#soak)) |\n",
    );
    let body = format!(
        "Written by `cargo xtask bench [--rounds N] [--seconds S] [--rate R] [--only SECTION...]` \
         (sections: {}); each section names the machine and the date it was measured on, as \
         sections can be rerun alone. The live sections run a scratch tgtd (`null` backing \
         store) on 127.0.0.1 with its load generators on the same machine (this run: \
         {machine}).\n\n\
         ## Goals (issues #7 and #15)\n\n\
         {table}\n\
         The status is the verdict of the section's last measurement (its date in parentheses), \
         computed there from the measured numbers; each section says by how much a missed goal \
         is missed and what limits it. Issue #15 sets its own ratios for the full and tmf sets; \
         #7's are kept, each with its own verdict.\n",
        sections.join(", ")
    );
    write_block("goals", &body)
}

/// Writes a section's block, with the machine and date it was measured on.
pub fn write_section(name: &str, body: &str, machine: &str) -> anyhow::Result<()> {
    let block = format!(
        "{}\n\n_Measured {} on {machine}._\n",
        body.trim_end(),
        today()
    );
    write_block(name, &block)
}

fn write_block(name: &str, block: &str) -> anyhow::Result<()> {
    let path = root().join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let mut blocks = parse_blocks(&old);
    match blocks.iter_mut().find(|(n, _)| n == name) {
        Some(entry) => entry.1 = block.trim_end().to_owned(),
        None => blocks.push((name.to_owned(), block.trim_end().to_owned())),
    }
    let rank = |n: &str| ORDER.iter().position(|o| *o == n).unwrap_or(ORDER.len());
    // Stable: unknown blocks keep their relative order, after the known ones.
    blocks.sort_by_key(|(n, _)| rank(n));
    let mut text = String::from("# Benchmarks\n");
    for (n, b) in &blocks {
        text.push_str(&format!("\n<!-- bench:{n} -->\n{b}\n<!-- /bench:{n} -->\n"));
    }
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

/// The marked blocks of a BENCHMARKS.md, in file order: (name, content).
fn parse_blocks(text: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- bench:") {
        let after = &rest[start + "<!-- bench:".len()..];
        let Some(end_name) = after.find(" -->") else {
            break;
        };
        let name = after[..end_name].to_owned();
        let content_start = &after[end_name + " -->".len()..];
        let close = format!("<!-- /bench:{name} -->");
        let Some(end) = content_start.find(&close) else {
            break;
        };
        blocks.push((name, content_start[..end].trim().to_owned()));
        rest = &content_start[end + close.len()..];
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_round_trip() {
        let text = "# Benchmarks\n<!-- bench:soak -->\n## Soak\n\nx\n<!-- /bench:soak -->\n\
                    <!-- bench:overhead -->\n## O\n<!-- /bench:overhead -->\n";
        let blocks = parse_blocks(text);
        assert_eq!(
            blocks,
            vec![
                ("soak".to_owned(), "## Soak\n\nx".to_owned()),
                ("overhead".to_owned(), "## O".to_owned())
            ]
        );
    }

    #[test]
    fn a_goal_status_is_its_sections_mark() {
        let goal = &GOALS[0];
        let block = |mark: &str| {
            vec![(
                goal.section.to_owned(),
                format!("- x: met (1.00 ≥ 0.98) {mark}\n\n_Measured 2026-12-01 on a machine._"),
            )]
        };
        assert_eq!(
            goal_status(&block(&goal_mark(goal.id, true)), goal),
            "met (2026-12-01)"
        );
        assert_eq!(
            goal_status(&block(&goal_mark(goal.id, false)), goal),
            "**missed** (2026-12-01)"
        );
        // Another goal's mark, or none: not this goal's verdict.
        assert_eq!(
            goal_status(&block(&goal_mark("other", true)), goal),
            "see the section (measured 2026-12-01 before the marks; `--only overhead` remeasures)"
        );
        assert!(goal_status(&[], goal).starts_with("not measured"));
    }

    #[test]
    fn goal_ids_are_unique() {
        let mut ids: Vec<&str> = GOALS.iter().map(|g| g.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), GOALS.len());
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
