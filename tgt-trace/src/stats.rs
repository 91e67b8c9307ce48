//! Latency histograms: hdrhistogram, 3 significant digits, 1 µs to 1 h, in
//! microseconds. Summaries give percentiles and the non-empty buckets.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::{event::OpClass, points::Sampling};

const LOWEST_US: u64 = 1;
const HIGHEST_US: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// One latency distribution.
#[derive(Debug, Clone)]
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Latency(
            Histogram::new_with_bounds(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
        )
    }
}

impl Latency {
    /// Records a duration in nanoseconds, clamped to the histogram's range.
    pub fn record_ns(&mut self, ns: u64) {
        self.0
            .saturating_record((ns / 1_000).clamp(LOWEST_US, HIGHEST_US));
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.0;
        let q = |quantile: f64| {
            if h.is_empty() {
                0
            } else {
                h.value_at_quantile(quantile)
            }
        };
        LatencySummary {
            count: h.len(),
            min_us: if h.is_empty() { 0 } else { h.min() },
            p50_us: q(0.50),
            p90_us: q(0.90),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: if h.is_empty() { 0 } else { h.max() },
            buckets: h
                .iter_recorded()
                .map(|v| {
                    (
                        h.highest_equivalent(v.value_iterated_to()),
                        v.count_at_value(),
                    )
                })
                .collect(),
        }
    }
}

/// Percentiles (µs) and the non-empty buckets as `[upper bound µs, count]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub buckets: Vec<(u64, u64)>,
}

/// Every histogram the matcher keeps.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    /// Arrival to result (full set) or to release (lean set).
    pub command: Latency,
    pub command_by_class: BTreeMap<OpClass, Latency>,
    pub command_by_lun: BTreeMap<u64, Latency>,
    /// TMF request to response, by function name.
    pub tmf_by_function: BTreeMap<&'static str, Latency>,
    /// TMF request to each aborted command's TASK_ABORTED result.
    pub abort: Latency,
    /// Arrival to TASK_ABORTED result: how long aborted commands had been in flight.
    pub aborted_in_flight: Latency,
    /// Request to response of TMFs that waited for a busy command.
    pub deferred_wait: Latency,
    /// `--sample`: the command histograms hold only the commands that
    /// arrived and were released inside one window.
    pub sampling: Option<Sampling>,
}

impl Stats {
    pub fn summary(&self) -> StatsSummary {
        StatsSummary {
            command: self.command.summary(),
            command_by_class: self
                .command_by_class
                .iter()
                .map(|(k, v)| (k.name().to_owned(), v.summary()))
                .collect(),
            command_by_lun: self
                .command_by_lun
                .iter()
                .map(|(k, v)| (k.to_string(), v.summary()))
                .collect(),
            tmf_by_function: self
                .tmf_by_function
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.summary()))
                .collect(),
            abort: self.abort.summary(),
            aborted_in_flight: self.aborted_in_flight.summary(),
            deferred_wait: self.deferred_wait.summary(),
            sampling: self.sampling,
        }
    }
}

/// [`Stats`] as it is written out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StatsSummary {
    pub command: LatencySummary,
    pub command_by_class: BTreeMap<String, LatencySummary>,
    pub command_by_lun: BTreeMap<String, LatencySummary>,
    pub tmf_by_function: BTreeMap<String, LatencySummary>,
    pub abort: LatencySummary,
    pub aborted_in_flight: LatencySummary,
    pub deferred_wait: LatencySummary,
    /// `--sample` (schema 9): `command`, `command_by_class` and
    /// `command_by_lun` are of the sampled windows only, at this rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sampling: Option<Sampling>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_buckets() {
        let mut h = Latency::default();
        for us in 1..=1000u64 {
            h.record_ns(us * 1_000);
        }
        let s = h.summary();
        assert_eq!((s.count, s.min_us, s.max_us), (1000, 1, 1000));
        assert_eq!(s.p50_us, 500);
        assert_eq!(s.p99_us, 990);
        assert_eq!(s.buckets.iter().map(|b| b.1).sum::<u64>(), 1000);
    }

    #[test]
    fn sub_microsecond_and_huge_values_are_clamped_not_lost() {
        let mut h = Latency::default();
        h.record_ns(10);
        h.record_ns(u64::MAX);
        assert_eq!(h.count(), 2);
    }

    #[test]
    fn an_empty_histogram_summarises_to_zeros() {
        assert_eq!(Latency::default().summary(), LatencySummary::default());
    }
}
