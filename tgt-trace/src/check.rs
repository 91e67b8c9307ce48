//! Budgets for CI: `abort.p99<=5ms`, `tmf.ABORT_TASK.p99.9<=20ms`,
//! `orphans==0`, checked against a replayed trace's summary.

use std::fmt;

use crate::{correlate::Summary, probe::ProbePoint, stats::LatencySummary, trace::Drops};

/// A budget that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "bad budget '{text}': {reason}; write METRIC OP VALUE, e.g. 'abort.p99<=5ms', \
     'tmf.ABORT_TASK.p99.9<=20ms', 'command.read.p50<2ms', 'orphans==0'"
)]
pub struct BudgetError {
    pub text: String,
    pub reason: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Le,
    Lt,
    Eq,
    Ge,
    Gt,
}

impl Op {
    fn holds(self, measured: f64, limit: f64) -> bool {
        match self {
            Op::Le => measured <= limit,
            Op::Lt => measured < limit,
            Op::Eq => measured == limit,
            Op::Ge => measured >= limit,
            Op::Gt => measured > limit,
        }
    }

    fn text(self) -> &'static str {
        match self {
            Op::Le => "<=",
            Op::Lt => "<",
            Op::Eq => "==",
            Op::Ge => ">=",
            Op::Gt => ">",
        }
    }
}

/// What a budget measures.
#[derive(Debug, Clone, PartialEq)]
enum Metric {
    /// A histogram (by path: `command`, `command.read`, `command.lun.1`,
    /// `tmf.ABORT_TASK`, `abort`, `aborted_age`, `deferred`) at a statistic.
    Latency { histogram: String, stat: Stat },
    /// `orphans`, `orphans.<kind>`, `drops`, `tmfs.<outcome>`.
    Count(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Stat {
    Quantile(f64),
    Max,
    Count,
}

/// One budget: metric, comparison, limit (µs for latencies).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    pub text: String,
    metric: Metric,
    pub op: Op,
    limit: f64,
}

impl Budget {
    pub fn parse(text: &str) -> Result<Budget, BudgetError> {
        let err = |reason: &str| BudgetError {
            text: text.to_owned(),
            reason: reason.to_owned(),
        };
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let (at, op, len) = [
            ("<=", Op::Le),
            (">=", Op::Ge),
            ("==", Op::Eq),
            ("<", Op::Lt),
            (">", Op::Gt),
        ]
        .iter()
        .find_map(|&(sym, op)| compact.find(sym).map(|at| (at, op, sym.len())))
        .ok_or_else(|| err("no comparison (<=, <, ==, >=, >)"))?;
        let (name, value) = (&compact[..at], &compact[at + len..]);
        if name.is_empty() || value.is_empty() {
            return Err(err("a metric and a value are both needed"));
        }
        let mut parts: Vec<&str> = name.split('.').collect();
        // `p99.9` splits into `p99` and `9`: join them back.
        if parts.len() >= 2
            && parts[parts.len() - 2].starts_with('p')
            && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        {
            let tail = parts.pop().unwrap_or_default();
            let last = parts.pop().unwrap_or_default();
            let joined = format!("{last}.{tail}");
            let metric = Budget::metric(&parts, &joined).ok_or_else(|| err("unknown metric"))?;
            return Ok(Budget {
                text: text.to_owned(),
                metric,
                op,
                limit: Budget::value(value, true).ok_or_else(|| err("bad value"))?,
            });
        }
        let last = parts.pop().unwrap_or_default();
        let metric = Budget::metric(&parts, last).ok_or_else(|| err("unknown metric"))?;
        let is_latency = matches!(
            metric,
            Metric::Latency {
                stat: Stat::Quantile(_) | Stat::Max,
                ..
            }
        );
        let limit = Budget::value(value, is_latency).ok_or_else(|| {
            err(if is_latency {
                "a latency needs a duration such as 500us, 5ms or 1s"
            } else {
                "a count needs a number"
            })
        })?;
        Ok(Budget {
            text: text.to_owned(),
            metric,
            op,
            limit,
        })
    }

    fn metric(head: &[&str], last: &str) -> Option<Metric> {
        let stat = match last {
            "max" => Some(Stat::Max),
            "count" => Some(Stat::Count),
            p if p.starts_with('p') => p[1..]
                .parse::<f64>()
                .ok()
                .filter(|q| *q > 0.0 && *q < 100.0)
                .map(|q| Stat::Quantile((q * 1e7).round() / 1e9)),
            _ => None,
        };
        match (head.first().copied(), stat) {
            (Some("command" | "tmf" | "abort" | "aborted_age" | "deferred"), Some(stat)) => {
                Some(Metric::Latency {
                    histogram: head.join("."),
                    stat,
                })
            }
            (None, None) if matches!(last, "orphans" | "drops") => {
                Some(Metric::Count(last.to_owned()))
            }
            (Some("orphans" | "tmfs"), None) if head.len() == 1 => {
                Some(Metric::Count(format!("{}.{last}", head[0])))
            }
            _ => None,
        }
    }

    /// µs for latencies; a plain number for counts.
    fn value(text: &str, latency: bool) -> Option<f64> {
        if !latency {
            return text.parse::<f64>().ok().filter(|v| v.is_finite());
        }
        let split = text.find(|c: char| !c.is_ascii_digit() && c != '.')?;
        let (number, unit) = text.split_at(split);
        let v: f64 = number.parse().ok()?;
        let scale = match unit {
            "ns" => 1e-3,
            "us" | "µs" => 1.0,
            "ms" => 1e3,
            "s" => 1e6,
            _ => return None,
        };
        Some(v * scale)
    }
}

/// How one budget fared.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The trace cannot answer: the reason.
    Inconclusive(String),
}

#[derive(Debug, Clone)]
pub struct Checked {
    pub budget: Budget,
    pub measured: Option<f64>,
    pub verdict: Verdict,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let measured = match (&self.budget.metric, self.measured) {
            (_, None) => "—".to_owned(),
            (
                Metric::Latency {
                    stat: Stat::Count, ..
                }
                | Metric::Count(_),
                Some(v),
            ) => format!("{v}"),
            (Metric::Latency { .. }, Some(v)) => format!("{v} µs"),
        };
        let verdict = match &self.verdict {
            Verdict::Pass => "pass".to_owned(),
            Verdict::Fail => "FAIL".to_owned(),
            Verdict::Inconclusive(why) => format!("inconclusive: {why}"),
        };
        write!(
            f,
            "{:<36} measured {:<14} {}",
            self.budget.text, measured, verdict
        )
    }
}

/// What a check needs from the trace besides the matcher's summary.
pub struct Evidence<'a> {
    pub summary: &'a Summary,
    pub drops: Drops,
    pub probes: &'a [ProbePoint],
    /// Fewest samples for a quantile q: at least this and 1/(1-q).
    pub min_samples: u64,
}

fn histogram<'a>(summary: &'a Summary, path: &str) -> Option<&'a LatencySummary> {
    let h = &summary.histograms;
    let mut parts = path.splitn(3, '.');
    match (parts.next()?, parts.next(), parts.next()) {
        ("command", None, None) => Some(&h.command),
        ("command", Some("lun"), Some(lun)) => h.command_by_lun.get(lun),
        ("command", Some(class), None) => h.command_by_class.get(class),
        ("tmf", Some(function), None) => h.tmf_by_function.get(function),
        ("abort", None, None) => Some(&h.abort),
        ("aborted_age", None, None) => Some(&h.aborted_in_flight),
        ("deferred", None, None) => Some(&h.deferred_wait),
        _ => None,
    }
}

/// The probe a histogram needs.
fn needed_probe(path: &str) -> Option<&'static str> {
    match path.split('.').next() {
        Some("command" | "aborted_age") => Some("queue"),
        _ => None,
    }
}

pub fn check(budget: &Budget, ev: &Evidence<'_>) -> Checked {
    let checked = |measured, verdict| Checked {
        budget: budget.clone(),
        measured,
        verdict,
    };
    if ev.drops.total() > 0 {
        return checked(
            None,
            Verdict::Inconclusive(format!("the trace dropped {} events", ev.drops.total())),
        );
    }
    let measured = match &budget.metric {
        Metric::Count(name) => {
            let c = &ev.summary.counts;
            match name.split_once('.') {
                None if name == "orphans" => c.orphans() as f64,
                None => ev.drops.total() as f64,
                Some(("orphans", kind)) => c.orphans_by_kind.get(kind).copied().unwrap_or(0) as f64,
                Some((_, outcome)) => c.tmfs_by_outcome.get(outcome).copied().unwrap_or(0) as f64,
            }
        }
        Metric::Latency {
            histogram: path,
            stat,
        } => {
            if let Some(probe) = needed_probe(path)
                && !ev.probes.iter().any(|p| p.name == probe && p.attached)
            {
                return checked(
                    None,
                    Verdict::Inconclusive(format!("the '{probe}' probe was not attached")),
                );
            }
            let empty = LatencySummary::default();
            let h = histogram(ev.summary, path).unwrap_or(&empty);
            match *stat {
                Stat::Count => h.count as f64,
                Stat::Max | Stat::Quantile(_) if h.count == 0 => {
                    return checked(
                        None,
                        Verdict::Inconclusive(format!("no samples for {path}")),
                    );
                }
                Stat::Max => h.max_us as f64,
                Stat::Quantile(q) => {
                    let needed = ev.min_samples.max((1.0 / (1.0 - q)).ceil() as u64);
                    if h.count < needed {
                        return checked(
                            None,
                            Verdict::Inconclusive(format!(
                                "{} samples for {path}, {needed} needed for p{}",
                                h.count,
                                q * 100.0
                            )),
                        );
                    }
                    quantile(h, q) as f64
                }
            }
        }
    };
    let verdict = if budget.op.holds(measured, budget.limit) {
        Verdict::Pass
    } else {
        Verdict::Fail
    };
    checked(Some(measured), verdict)
}

/// A quantile from the summary's buckets (the summary's own fields for the
/// usual ones, so both agree).
fn quantile(h: &LatencySummary, q: f64) -> u64 {
    match q {
        0.5 => h.p50_us,
        0.9 => h.p90_us,
        0.99 => h.p99_us,
        0.999 => h.p999_us,
        _ => {
            let target = (q * h.count as f64).ceil() as u64;
            let mut seen = 0;
            for &(value, count) in &h.buckets {
                seen += count;
                if seen >= target {
                    return value;
                }
            }
            h.max_us
        }
    }
}

/// 0 pass, 1 a budget failed, 2 inconclusive (and none failed).
pub fn exit_code(results: &[Checked]) -> u8 {
    if results.iter().any(|r| r.verdict == Verdict::Fail) {
        1
    } else if results
        .iter()
        .any(|r| matches!(r.verdict, Verdict::Inconclusive(_)))
    {
        2
    } else {
        0
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        for text in [
            "abort.p99<=5ms",
            "tmf.ABORT_TASK.p99.9 <= 20ms",
            "orphans==0",
            "command.read.p50<2ms",
            "command.lun.1.max<1s",
            "orphans.tmf_found_no_task==0",
            "tmfs.unanswered==0",
            "deferred.count>=1",
        ] {
            Budget::parse(text).unwrap_or_else(|e| panic!("{e}"));
        }
        let b = Budget::parse("tmf.ABORT_TASK.p99.9<=20ms").expect("parses");
        assert_eq!(
            b.metric,
            Metric::Latency {
                histogram: "tmf.ABORT_TASK".to_owned(),
                stat: Stat::Quantile(0.999)
            }
        );
        assert_eq!(b.limit, 20_000.0);
    }

    #[test]
    fn bad_budgets_say_what_is_wrong() {
        for (text, reason) in [
            ("abort.p99", "no comparison"),
            ("abort.p99<=5", "duration"),
            ("latency.p99<=5ms", "unknown metric"),
            ("orphans<=many", "number"),
            ("abort.p100<=1ms", "unknown metric"),
            ("<=5ms", "both"),
        ] {
            let e = Budget::parse(text).expect_err(text);
            assert!(e.to_string().contains(reason), "{text}: {e}");
        }
    }
}
