//! Budgets for CI: `abort.p99<=5ms`, `tmf.ABORT_TASK.p99.9<=20ms`,
//! `orphans==0`, checked against a replayed trace's summary; regressions of
//! latency percentiles against a baseline trace; a budgets file; JUnit XML.

use std::{fmt, path::Path};

use serde::Deserialize;

use crate::{
    correlate::Summary,
    plausible::LayoutViolations,
    points::{Point, ProbePoint},
    stats::LatencySummary,
    trace::Drops,
};

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

/// A budgets file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BudgetsFileError {
    #[error("cannot read the budgets file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: {message}; a budgets file has `budgets = [\"abort.p99 <= 5ms\", ...]` and \
         optionally `min_samples`, `tolerance` and `compare` (see the README)"
    )]
    Syntax { path: String, message: String },
    #[error("{path}: {source}")]
    Budget {
        path: String,
        #[source]
        source: BudgetError,
    },
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

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.text())
    }
}

/// What a budget or a comparison measures.
#[derive(Debug, Clone, PartialEq)]
pub enum Metric {
    /// A histogram (by path: `command`, `command.read`, `command.lun.1`,
    /// `tmf.ABORT_TASK`, `abort`, `aborted_age`, `deferred`) at a statistic.
    Latency { histogram: String, stat: Stat },
    /// `orphans`, `orphans.<kind>`, `drops`, `tmfs.<outcome>`.
    Count(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    Quantile(f64),
    Max,
    Count,
}

impl Metric {
    /// `abort.p99`, `tmf.ABORT_TASK.p99.9`, `command.lun.1.max`, `orphans`, ...
    pub fn parse(name: &str) -> Option<Metric> {
        let mut parts: Vec<&str> = name.split('.').collect();
        // `p99.9` splits into `p99` and `9`: join them back.
        if parts.len() >= 2
            && parts[parts.len() - 2].starts_with('p')
            && parts[parts.len() - 1].chars().all(|c| c.is_ascii_digit())
        {
            let tail = parts.pop().unwrap_or_default();
            let last = parts.pop().unwrap_or_default();
            return Metric::from_parts(&parts, &format!("{last}.{tail}"));
        }
        let last = parts.pop().unwrap_or_default();
        Metric::from_parts(&parts, last)
    }

    fn from_parts(head: &[&str], last: &str) -> Option<Metric> {
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

    /// A latency in µs (not a count of anything).
    fn is_duration(&self) -> bool {
        matches!(
            self,
            Metric::Latency {
                stat: Stat::Quantile(_) | Stat::Max,
                ..
            }
        )
    }

    fn format(&self, value: f64) -> String {
        if self.is_duration() {
            format!("{value} µs")
        } else {
            format!("{value}")
        }
    }
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
        let metric = Metric::parse(name).ok_or_else(|| err("unknown metric"))?;
        let is_latency = metric.is_duration();
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

/// A budgets file (TOML):
///
/// ```toml
/// min_samples = 20
/// tolerance = "10%"
/// compare = ["abort.p99", "tmf.ABORT_TASK.p99"]
/// budgets = ["abort.p99 <= 5ms", "orphans == 0"]
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsFile {
    #[serde(default)]
    pub budgets: Vec<String>,
    pub min_samples: Option<u64>,
    /// With `--baseline`: how much worse a percentile may get, e.g. "10%".
    pub tolerance: Option<String>,
    /// With `--baseline`: the percentiles compared (default: p50 and p99 of
    /// every histogram with enough samples in both traces).
    #[serde(default)]
    pub compare: Vec<String>,
}

impl BudgetsFile {
    /// Reads and checks a budgets file: every budget and compared metric parses.
    pub fn load(path: &Path) -> Result<BudgetsFile, BudgetsFileError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| BudgetsFileError::Io {
            path: name.clone(),
            source,
        })?;
        let file: BudgetsFile = toml::from_str(&text).map_err(|e| BudgetsFileError::Syntax {
            path: name.clone(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        for text in &file.budgets {
            Budget::parse(text).map_err(|source| BudgetsFileError::Budget {
                path: name.clone(),
                source,
            })?;
        }
        for metric in &file.compare {
            parse_compared(metric).map_err(|source| BudgetsFileError::Budget {
                path: name.clone(),
                source,
            })?;
        }
        if let Some(t) = &file.tolerance {
            parse_tolerance(t).map_err(|reason| BudgetsFileError::Syntax {
                path: name.clone(),
                message: reason,
            })?;
        }
        Ok(file)
    }
}

/// How one budget or comparison fared.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Pass,
    Fail,
    /// The trace cannot answer: the reason.
    Inconclusive(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Pass => f.write_str("pass"),
            Verdict::Fail => f.write_str("FAIL"),
            Verdict::Inconclusive(why) => write!(f, "inconclusive: {why}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Checked {
    pub budget: Budget,
    pub measured: Option<f64>,
    pub verdict: Verdict,
}

impl fmt::Display for Checked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let measured = self
            .measured
            .map_or_else(|| "—".to_owned(), |v| self.budget.metric.format(v));
        write!(
            f,
            "{:<36} measured {:<14} {}",
            self.budget.text, measured, self.verdict
        )
    }
}

/// What a check needs from the trace besides the matcher's summary.
pub struct Evidence<'a> {
    pub summary: &'a Summary,
    pub drops: Drops,
    pub probes: &'a [ProbePoint],
    /// What the runtime layout checks found: any violation makes every
    /// measurement untrustworthy, as lost events do.
    pub layout_violations: &'a LayoutViolations,
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

/// Every histogram path the summary has, in a stable order.
fn histogram_paths(summary: &Summary) -> Vec<String> {
    let h = &summary.histograms;
    let mut paths = vec!["command".to_owned()];
    paths.extend(h.command_by_class.keys().map(|c| format!("command.{c}")));
    paths.extend(h.command_by_lun.keys().map(|l| format!("command.lun.{l}")));
    paths.extend(h.tmf_by_function.keys().map(|f| format!("tmf.{f}")));
    paths.extend(["abort", "aborted_age", "deferred"].map(str::to_owned));
    paths
}

/// The probe a histogram needs, and whether a sampled one will do: the
/// command histograms are fed inside `--sample`'s windows, the abort ones
/// only by a probe attached all the time.
fn needed_probe(path: &str) -> Option<(Point, bool)> {
    match path.split('.').next() {
        Some("command") => Some((Point::Queue, true)),
        Some("aborted_age") => Some((Point::Queue, false)),
        // The tmf set's walk sees aborts decided, not given: the time to
        // TASK_ABORTED needs the release (or result) path.
        Some("abort") => Some((Point::Release, false)),
        _ => None,
    }
}

impl Evidence<'_> {
    /// The metric's value, or why this trace cannot give it.
    fn measure(&self, metric: &Metric) -> Result<f64, String> {
        if self.drops.total() > 0 {
            return Err(format!("the trace dropped {} events", self.drops.total()));
        }
        if self.layout_violations.total() > 0 {
            return Err(self.layout_violations.inconclusive_reason());
        }
        match metric {
            Metric::Count(name) => {
                let c = &self.summary.counts;
                let about_tmfs = name == "orphans" || name.contains('.');
                if about_tmfs && c.tmfs_delivery_unknown > 0 {
                    return Err(format!(
                        "{} TMF responses were built but the trace cannot tell whether they \
                         reached the initiator (recorded without the tmf_sent probe)",
                        c.tmfs_delivery_unknown
                    ));
                }
                Ok(match name.split_once('.') {
                    None if name == "orphans" => c.orphans() as f64,
                    None => self.drops.total() as f64,
                    Some(("orphans", kind)) => {
                        c.orphans_by_kind.get(kind).copied().unwrap_or(0) as f64
                    }
                    Some((_, outcome)) => {
                        c.tmfs_by_outcome.get(outcome).copied().unwrap_or(0) as f64
                    }
                })
            }
            Metric::Latency {
                histogram: path,
                stat,
            } => {
                if let Some((probe, sampled_will_do)) = needed_probe(path) {
                    let found = self.probes.iter().find(|p| p.name == probe && p.attached);
                    match found {
                        None => return Err(format!("the '{probe}' probe was not attached")),
                        Some(p) if p.sampled && !sampled_will_do => {
                            return Err(format!(
                                "the '{probe}' probe was attached only in --sample's windows, \
                                 and this histogram is of TMFs, which a sampled trace matches \
                                 without it: record without --sample"
                            ));
                        }
                        Some(_) => {}
                    }
                }
                let empty = LatencySummary::default();
                let h = histogram(self.summary, path).unwrap_or(&empty);
                match *stat {
                    Stat::Count => Ok(h.count as f64),
                    Stat::Max | Stat::Quantile(_) if h.count == 0 => {
                        Err(format!("no samples for {path}"))
                    }
                    Stat::Max => Ok(h.max_us as f64),
                    Stat::Quantile(q) => {
                        let needed = self.min_samples.max((1.0 / (1.0 - q)).ceil() as u64);
                        if h.count < needed {
                            return Err(format!(
                                "{} samples for {path}, {needed} needed for p{}",
                                h.count,
                                q * 100.0
                            ));
                        }
                        Ok(quantile(h, q) as f64)
                    }
                }
            }
        }
    }
}

pub fn check(budget: &Budget, ev: &Evidence<'_>) -> Checked {
    let (measured, verdict) = match ev.measure(&budget.metric) {
        Err(why) => (None, Verdict::Inconclusive(why)),
        Ok(v) if budget.op.holds(v, budget.limit) => (Some(v), Verdict::Pass),
        Ok(v) => (Some(v), Verdict::Fail),
    };
    Checked {
        budget: budget.clone(),
        measured,
        verdict,
    }
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

/// `10%` (or `10`) as the fraction 0.1.
pub fn parse_tolerance(text: &str) -> Result<f64, String> {
    let number = text.trim().trim_end_matches('%').trim();
    number
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| v / 100.0)
        .ok_or_else(|| format!("bad tolerance '{text}': write a percentage such as 10%"))
}

/// A compared metric: a latency percentile or max.
pub fn parse_compared(text: &str) -> Result<Metric, BudgetError> {
    let err = |reason: &str| BudgetError {
        text: text.to_owned(),
        reason: reason.to_owned(),
    };
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    match Metric::parse(&compact) {
        Some(m) if m.is_duration() => Ok(m),
        Some(_) => Err(err("only latency percentiles and max can be compared")),
        None => Err(err("unknown metric")),
    }
}

/// One percentile, this trace against the baseline.
#[derive(Debug, Clone)]
pub struct Compared {
    pub name: String,
    metric: Metric,
    pub baseline: Option<f64>,
    pub measured: Option<f64>,
    pub tolerance: f64,
    pub verdict: Verdict,
}

impl fmt::Display for Compared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = format!("{} vs baseline", self.name);
        match (self.measured, self.baseline) {
            (Some(m), Some(b)) => {
                let change = if b > 0.0 {
                    format!("{:+.1}%", (m - b) / b * 100.0)
                } else {
                    "new".to_owned()
                };
                write!(
                    f,
                    "{name:<36} measured {:<14} baseline {} ({change}, tolerance {}%) {}",
                    self.metric.format(m),
                    self.metric.format(b),
                    self.tolerance * 100.0,
                    self.verdict
                )
            }
            _ => write!(f, "{name:<36} {}", self.verdict),
        }
    }
}

/// Compares latency percentiles with a baseline trace. With no metrics
/// named, p50 and p99 of every histogram both traces have enough samples
/// for; nothing comparable at all is inconclusive.
pub fn compare(
    metrics: &[Metric],
    current: &Evidence<'_>,
    baseline: &Evidence<'_>,
    tolerance: f64,
) -> Vec<Compared> {
    let compared = |metric: &Metric, name: String| {
        let (measured, base) = (current.measure(metric), baseline.measure(metric));
        let verdict = match (&measured, &base) {
            (Err(why), _) => Verdict::Inconclusive(why.clone()),
            (_, Err(why)) => Verdict::Inconclusive(format!("baseline: {why}")),
            (Ok(m), Ok(b)) if *m <= b * (1.0 + tolerance) => Verdict::Pass,
            _ => Verdict::Fail,
        };
        Compared {
            name,
            metric: metric.clone(),
            baseline: base.ok(),
            measured: measured.ok(),
            tolerance,
            verdict,
        }
    };
    if !metrics.is_empty() {
        return metrics
            .iter()
            .map(|m| compared(m, metric_name(m)))
            .collect();
    }
    let mut results = Vec::new();
    for path in histogram_paths(current.summary) {
        for q in [0.5, 0.99] {
            let metric = Metric::Latency {
                histogram: path.clone(),
                stat: Stat::Quantile(q),
            };
            let c = compared(&metric, metric_name(&metric));
            // Only what both traces can answer is compared by default; a
            // histogram the run barely touched is not a regression signal.
            if c.measured.is_some() && c.baseline.is_some() {
                results.push(c);
            }
        }
    }
    if results.is_empty() {
        results.push(Compared {
            name: "baseline".to_owned(),
            metric: Metric::Count("none".to_owned()),
            baseline: None,
            measured: None,
            tolerance,
            verdict: Verdict::Inconclusive(
                "no latency percentile has enough samples in both traces to compare".to_owned(),
            ),
        });
    }
    results
}

fn metric_name(metric: &Metric) -> String {
    match metric {
        Metric::Latency { histogram, stat } => match stat {
            Stat::Quantile(q) => format!("{histogram}.p{}", q * 100.0),
            Stat::Max => format!("{histogram}.max"),
            Stat::Count => format!("{histogram}.count"),
        },
        Metric::Count(name) => name.clone(),
    }
}

/// 0 pass, 1 something failed, 2 inconclusive (and nothing failed).
pub fn exit_code<'a>(verdicts: impl IntoIterator<Item = &'a Verdict>) -> u8 {
    let mut code = 0;
    for v in verdicts {
        match v {
            Verdict::Fail => return 1,
            Verdict::Inconclusive(_) => code = 2,
            Verdict::Pass => {}
        }
    }
    code
}

/// The run as JUnit XML: one test case per budget and comparison; an
/// inconclusive one is skipped, with its reason.
pub fn junit(trace_name: &str, budgets: &[Checked], comparisons: &[Compared]) -> String {
    use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};
    let case = |name: String, verdict: &Verdict, line: String| {
        let status = match verdict {
            Verdict::Pass => TestCaseStatus::success(),
            Verdict::Fail => {
                let mut s = TestCaseStatus::non_success(NonSuccessKind::Failure);
                s.set_message(line.clone());
                s
            }
            Verdict::Inconclusive(why) => {
                let mut s = TestCaseStatus::skipped();
                s.set_message(format!("inconclusive: {why}"));
                s
            }
        };
        let mut case = TestCase::new(name, status);
        case.set_classname(trace_name.to_owned());
        case.set_system_out(line);
        case
    };
    let mut suite = TestSuite::new("tgt-trace check");
    for c in budgets {
        suite.add_test_case(case(c.budget.text.clone(), &c.verdict, c.to_string()));
    }
    for c in comparisons {
        suite.add_test_case(case(
            format!("{} vs baseline", c.name),
            &c.verdict,
            c.to_string(),
        ));
    }
    let mut report = Report::new("tgt-trace");
    report.add_test_suite(suite);
    report.to_string().unwrap_or_default()
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

    #[test]
    fn tolerances_and_compared_metrics() {
        assert_eq!(parse_tolerance("10%"), Ok(0.1));
        assert_eq!(parse_tolerance("2.5"), Ok(0.025));
        assert!(parse_tolerance("-1%").is_err());
        assert!(parse_tolerance("lots").is_err());
        assert_eq!(
            metric_name(&parse_compared("tmf.ABORT_TASK.p99.9").expect("parses")),
            "tmf.ABORT_TASK.p99.9"
        );
        assert!(parse_compared("orphans").is_err());
    }

    #[test]
    fn a_layout_violation_makes_every_check_inconclusive() {
        let summary = Summary {
            counts: Default::default(),
            histograms: Default::default(),
        };
        fn ev<'a>(summary: &'a Summary, found: &'a LayoutViolations) -> Evidence<'a> {
            Evidence {
                summary,
                drops: Drops::default(),
                probes: &[],
                layout_violations: found,
                min_samples: 1,
            }
        }
        let mut found = LayoutViolations::default();
        let budget = Budget::parse("orphans==0").expect("parses");
        assert_eq!(check(&budget, &ev(&summary, &found)).verdict, Verdict::Pass);
        found.untracked = 5;
        assert_eq!(
            check(&budget, &ev(&summary, &found)).verdict,
            Verdict::Pass,
            "commands not tracked are no violation"
        );
        found.counts.insert("tmf_result".to_owned(), 2);
        let Verdict::Inconclusive(why) = check(&budget, &ev(&summary, &found)).verdict else {
            panic!("not inconclusive");
        };
        assert!(
            why.contains("tmf_result 2") && why.contains("run `tgt-trace probes`"),
            "{why}"
        );
    }

    #[test]
    fn a_sampled_trace_checks_command_latency_but_not_abort_latency() {
        let mut summary = Summary {
            counts: Default::default(),
            histograms: Default::default(),
        };
        for _ in 0..100 {
            summary.histograms.command.count += 1;
        }
        summary.histograms.command.p99_us = 300;
        let sampled = |name| ProbePoint {
            name,
            function: String::new(),
            offset: None,
            attached: true,
            sampled: true,
            missing: None,
        };
        let probes = [sampled(Point::Queue), sampled(Point::Release)];
        let found = LayoutViolations::default();
        let ev = Evidence {
            summary: &summary,
            drops: Drops::default(),
            probes: &probes,
            layout_violations: &found,
            min_samples: 1,
        };
        let command = Budget::parse("command.p99<=1ms").expect("parses");
        assert_eq!(check(&command, &ev).verdict, Verdict::Pass);
        let abort = Budget::parse("abort.p99<=5ms").expect("parses");
        let Verdict::Inconclusive(why) = check(&abort, &ev).verdict else {
            panic!("not inconclusive");
        };
        assert!(why.contains("record without --sample"), "{why}");
    }

    #[test]
    fn the_worst_verdict_sets_the_exit_code() {
        let inconclusive = Verdict::Inconclusive("x".to_owned());
        assert_eq!(exit_code([&Verdict::Pass]), 0);
        assert_eq!(exit_code([&Verdict::Pass, &inconclusive]), 2);
        assert_eq!(exit_code([&inconclusive, &Verdict::Fail]), 1);
    }
}
