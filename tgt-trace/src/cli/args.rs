//! The options several commands share, and their parsers.

use std::{num::NonZeroU32, path::PathBuf, time::Duration};

use tgt_trace::{
    correlate::Config,
    points::Target,
    probe::{ProbeSet, Sampling, TraceOptions, Traced},
    tgtd::{DEFAULT_TGTD, TgtdBinary, TgtdError},
};

#[derive(clap::Args, Clone)]
pub struct AttachArgs {
    /// Which SCSI target: tgtd (uprobes on tgt's daemon), or lio (the
    /// kernel's target: kprobes and raw tracepoints; needs the kernel's BTF
    /// and LIO's modules loaded; --tgtd, --pid and --probes do not apply).
    #[arg(long, value_enum, default_value = "tgtd")]
    pub target: Target,
    /// The tgtd binary whose processes are traced [default: with --pid, that
    /// process's executable; else /usr/sbin/tgtd].
    #[arg(long, value_name = "PATH")]
    pub tgtd: Option<PathBuf>,
    /// Trace only this tgtd process (filtered in the kernel).
    #[arg(long, value_name = "PID")]
    pub pid: Option<NonZeroU32>,
    /// Probe set: tmf (0 hits per command), lean (2), full (4; adds queue-wait time).
    #[arg(long, value_enum, default_value = "lean")]
    pub probes: ProbeSet,
    /// Ring buffer size in bytes (a power of two, at least 4096).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = parse_ring_size)]
    pub ring_size: u32,
    /// How often the ring buffer is drained.
    #[arg(long, value_name = "DURATION", default_value = "20ms", value_parser = parse_duration)]
    pub poll: Duration,
    /// Attach the probe set's per-command probes for this share of each
    /// --sample-period only (1% to 99%): command latency histograms and
    /// counts from those windows, marked sampled; TMFs stay complete (the
    /// tmf set's walk). With --probes lean or full.
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    pub sample: Option<u8>,
    /// The period --sample's windows repeat with. Each window's end stalls
    /// tgtd for some milliseconds (the kernel removing the probes), so
    /// shorter periods cost more than their share.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration, requires = "sample")]
    pub sample_period: Duration,
}

impl AttachArgs {
    /// What to trace: the binary is checked here, before anything attaches.
    pub fn trace_options(&self) -> anyhow::Result<TraceOptions> {
        let sample = self.sampling()?;
        if self.target == Target::Lio {
            if sample.is_some() {
                anyhow::bail!(
                    "--sample detaches tgtd's per-command uprobes between windows; the kernel \
                     target's command path is two raw tracepoints, cheap enough to keep: drop \
                     --sample"
                );
            }
            if self.tgtd.is_some() || self.pid.is_some() {
                anyhow::bail!(
                    "--tgtd and --pid name a tgtd process; the kernel target (--target lio) \
                     has none: drop them"
                );
            }
            return Ok(TraceOptions {
                traced: Traced::Lio(tgt_trace::lio::layout_from_sysfs()?),
                pid: None,
                set: self.probes,
                ring_bytes: self.ring_size,
                sample: None,
            });
        }
        let path = match (&self.tgtd, self.pid) {
            (Some(path), _) => path.clone(),
            // The running process's own binary, whatever build it is.
            (None, Some(pid)) => std::fs::read_link(format!("/proc/{pid}/exe")).map_err(|e| {
                anyhow::anyhow!(
                    "cannot read /proc/{pid}/exe ({e}): is process {pid} running? pass --tgtd PATH"
                )
            })?,
            (None, None) => PathBuf::from(DEFAULT_TGTD),
        };
        let binary = match TgtdBinary::inspect(&path) {
            Ok(binary) => binary,
            // The process's own binary is not tgtd at all.
            Err(e @ (TgtdError::MissingSymbols { .. } | TgtdError::NotElf { .. }))
                if self.tgtd.is_none() =>
            {
                let pid = self.pid.map_or(0, NonZeroU32::get);
                anyhow::bail!(
                    "process {pid} is not running tgtd ({e}); pass a tgtd pid (`pidof tgtd`)"
                )
            }
            Err(e) => return Err(e.into()),
        };
        // Refused when not even the TMF request's fields are proved.
        if let Some(refusal) = binary.refusal() {
            return Err(refusal.into());
        }
        Ok(TraceOptions {
            traced: Traced::Tgtd(Box::new(binary)),
            pid: self.pid,
            set: self.probes,
            ring_bytes: self.ring_size,
            sample,
        })
    }

    /// `--sample` and `--sample-period`, checked against the probe set.
    fn sampling(&self) -> anyhow::Result<Option<Sampling>> {
        let Some(percent) = self.sample else {
            return Ok(None);
        };
        if self.probes == ProbeSet::Tmf {
            anyhow::bail!(
                "--sample attaches a probe set's per-command probes in windows, and the tmf set \
                 has none: add --probes lean (or full)"
            );
        }
        let period_ms = u64::try_from(self.sample_period.as_millis()).unwrap_or(u64::MAX);
        let sampling = Sampling { percent, period_ms };
        // A window shorter than this is mostly attach and detach.
        if sampling.open_ms() < 10 {
            anyhow::bail!(
                "--sample {percent}% of --sample-period {period_ms} ms is a {} ms window; a window \
                 needs at least 10 ms: raise --sample-period",
                sampling.open_ms()
            );
        }
        Ok(Some(sampling))
    }
}

/// `10%` or `10`: a whole percentage from 1 to 99.
pub fn parse_percent(text: &str) -> Result<u8, String> {
    let number = text.trim().trim_end_matches('%').trim();
    match number.parse::<u8>() {
        Ok(n) if (1..=99).contains(&n) => Ok(n),
        _ => Err(format!(
            "{text:?} is not a whole percentage from 1% to 99% (e.g. 10%); without --sample the \
             probes are attached all the time"
        )),
    }
}

/// The matcher's limits.
#[derive(clap::Args, Clone)]
pub struct MatchArgs {
    /// A TMF without a response this long after its request is unanswered (orphan c).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    tmf_timeout: Duration,
    /// ABORT TASK finding nothing this soon after the tag's release is a race.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    race_window: Duration,
    /// Commands tracked at once; the oldest beyond this are evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = 1_000_000)]
    max_commands: usize,
    /// TMFs tracked at once; the oldest beyond this are evicted (and counted).
    #[arg(long, value_name = "N", default_value_t = 65_536)]
    max_tmfs: usize,
}

impl MatchArgs {
    pub fn config(&self) -> Config {
        let ns = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        Config {
            tmf_timeout_ns: ns(self.tmf_timeout),
            race_window_ns: ns(self.race_window),
            max_commands: self.max_commands.max(1),
            max_tmfs: self.max_tmfs.max(1),
            ..Config::default()
        }
    }
}

pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("'{text}' is not a duration; use e.g. 500ms, 30s, 2m"))?;
    let seconds = match unit {
        "ns" => value / 1e9,
        "us" | "µs" => value / 1e6,
        "ms" => value / 1e3,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => {
            return Err(format!(
                "'{unit}' is not a duration unit; use ns, us, ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("'{text}' is not a duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let size: u32 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a byte count"))?;
    if size < 4096 || !size.is_power_of_two() {
        return Err(format!(
            "ring size {size} must be a power of two and at least 4096"
        ));
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn sample_is_a_whole_percentage() {
        assert_eq!(parse_percent("10%"), Ok(10));
        assert_eq!(parse_percent("5"), Ok(5));
        assert!(parse_percent("0%").is_err());
        assert!(parse_percent("100%").is_err());
        assert!(parse_percent("2.5%").is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert!(parse_ring_size("5000").is_err());
        assert!(parse_ring_size("1024").is_err());
    }
}
