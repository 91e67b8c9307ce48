//! `tgt-trace serve`: the probes, the matcher and the metrics sink, as one
//! recording (`record::record`) whose sinks are the metrics and, with `-o`,
//! the NDJSON trace; the driver runs the matcher once for both.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context as _, bail};
use tgt_trace::{
    record::{Matching, Output, RecordOptions, record},
    serve::{Endpoint, Server},
    sink::metrics::{self, Options},
};

use super::args::{AttachArgs, MatchArgs, parse_duration};

#[derive(clap::Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub attach: AttachArgs,
    /// Where to serve /metrics and /healthz. A loopback address unless
    /// --allow-remote is given.
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9464")]
    pub listen: SocketAddr,
    /// Allow --listen on an address other hosts can reach (the metrics name
    /// tgtd's LUNs, and with --initiator-labels its initiators).
    #[arg(long)]
    pub allow_remote: bool,
    /// Also keep the NDJSON trace, with the matched lines, in FILE. Created
    /// 0644 (0600 with --private) and never through a symbolic link.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Create the -o file 0600.
    #[arg(long, requires = "output")]
    pub private: bool,
    /// Stop after this long (e.g. 30s); otherwise on SIGINT or SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Label TMFs and orphans with the initiator's name, the first N
    /// distinct names (the rest are "other", counted in
    /// tgttrace_label_overflow_total{label="initiator"}).
    #[arg(long, value_name = "N", num_args = 0..=1, default_missing_value = "64")]
    pub initiator_labels: Option<usize>,
    /// LUNs with a label of their own; the rest are "other".
    #[arg(long, value_name = "N", default_value_t = 256)]
    pub lun_labels: usize,
    #[command(flatten)]
    pub matching: MatchArgs,
}

impl ServeArgs {
    pub fn run(self) -> anyhow::Result<ExitCode> {
        check_listen(self.listen, self.allow_remote)?;
        let attach = &self.attach;
        let trace = attach.trace_options()?;
        let (sink, exposition) = metrics::metrics(Options {
            luns: self.lun_labels,
            initiators: self.initiator_labels,
        });
        // A drain loop that has not ended a batch in a hundred polls (and
        // at least 5 s) is stuck, not slow.
        let stale_after = (attach.poll * 100).max(Duration::from_secs(5));
        let server = Server::start(
            self.listen,
            Endpoint {
                exposition,
                stale_after,
            },
        )?;
        eprintln!(
            "tgt-trace: serving metrics on http://{}/metrics",
            server.local_addr()
        );
        let opts = RecordOptions {
            trace,
            output: match self.output {
                Some(path) => Output::File(path),
                None => Output::None,
            },
            duration: self.duration,
            command: Vec::new(),
            poll: attach.poll,
            matched: Some(Matching {
                config: self.matching.config(),
                summary_every: None,
                events: true,
            }),
            stop: None,
            quiet: false,
            private: self.private,
            sinks: vec![Box::new(sink)],
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the async runtime")?;
        let outcome = runtime.block_on(record(opts));
        server.stop();
        let s = outcome?.summary;
        eprintln!(
            "tgt-trace: {} events, {} dropped, {:.3}s, stopped by {}",
            s.events,
            s.drops.total(),
            s.duration_ns as f64 / 1e9,
            s.stopped_by
        );
        Ok(ExitCode::SUCCESS)
    }
}

/// A non-loopback address (`0.0.0.0` included) only when asked for.
fn check_listen(listen: SocketAddr, allow_remote: bool) -> anyhow::Result<()> {
    if !listen.ip().is_loopback() && !allow_remote {
        bail!(
            "refusing to serve metrics on {listen}: it is not a loopback address, and the \
             metrics describe this host's storage; pass --allow-remote to serve them \
             there, or --listen 127.0.0.1:{}",
            listen.port()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn only_loopback_unless_remote_is_allowed() {
        assert!(check_listen(addr("127.0.0.1:9464"), false).is_ok());
        assert!(check_listen(addr("[::1]:9464"), false).is_ok());
        for remote in ["0.0.0.0:9464", "[::]:9464", "192.0.2.7:9464"] {
            let err = check_listen(addr(remote), false).expect_err(remote);
            assert!(err.to_string().contains("--allow-remote"), "{err}");
            assert!(check_listen(addr(remote), true).is_ok(), "{remote}");
        }
    }
}
