//! Issue 18: `tgt-trace serve` scraped by a real Prometheus. Real TMFs
//! (libiscsi's ABORT TASK and LOGICAL UNIT RESET tests) against a real
//! tgtd; what Prometheus stored, asked through its HTTP API, must equal
//! what `tgt-trace report --json` concludes from the trace the same `serve`
//! kept with `-o`. `promtool check metrics` must accept a raw scrape, and
//! `serve` must stop on SIGTERM, promptly and with status 0.
//!
//! Needs Debian's `prometheus` package (it brings `promtool`); `cargo
//! xtask setup` installs it.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, SocketAddrV4, TcpStream},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tgt_trace::sink::metrics::BUCKETS;
use tgt_trace_e2e::{
    group::Group,
    tgtd::{Tgtd, TgtdOptions, free_loopback_port, tgt_trace_bin},
};

const PROMETHEUS: &str = "/usr/bin/prometheus";
const PROMTOOL: &str = "/usr/bin/promtool";

/// `tgt-trace serve`, in a process group of its own: stopped with SIGTERM
/// by the test, killed with the group on any other way out.
struct Serve {
    child: Child,
    listen: SocketAddrV4,
    log: PathBuf,
}

impl Serve {
    fn start(tgtd: &Tgtd, trace: &Path, log: PathBuf) -> Serve {
        let listen = free_loopback_port().expect("a free port");
        let stderr = std::fs::File::create(&log).expect("serve's log");
        let child = Command::new(tgt_trace_bin())
            .args(["serve", "--pid", &tgtd.pid().to_string()])
            .args(["--listen", &listen.to_string(), "-o"])
            .arg(trace)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("running {}: {e}", tgt_trace_bin().display()));
        Serve { child, listen, log }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::V4(self.listen)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and its exit status within `within`.
    fn terminate(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let pid = i32::try_from(self.child.id()).expect("a pid");
        // SAFETY: kill(2) on the child this guard owns and has not reaped.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait()
            && let Ok(pgid) = i32::try_from(self.child.id())
        {
            // SAFETY: kill(2) on the process group this guard's child leads.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.child.wait();
    }
}

/// A GET over HTTP/1.0 (so the body is not chunked): status and body.
fn get(addr: SocketAddr, target: &str, accept: Option<&str>) -> std::io::Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let accept = accept.map_or(String::new(), |a| format!("Accept: {a}\r\n"));
    write!(
        stream,
        "GET {target} HTTP/1.0\r\nHost: {addr}\r\n{accept}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP head in {response:?}")))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status in {head:?}")))?;
    Ok((status, body.to_owned()))
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// An instant query through Prometheus's HTTP API: each series' labels and
/// value.
fn query(prometheus: SocketAddr, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let (status, body) = get(
        prometheus,
        &format!("/api/v1/query?query={}", encode(promql)),
        None,
    )
    .unwrap_or_else(|e| panic!("querying Prometheus for {promql}: {e}"));
    assert_eq!(status, 200, "{promql}: {body}");
    let answer: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(answer["status"], "success", "{promql}: {body}");
    answer["data"]["result"]
        .as_array()
        .expect("a vector result")
        .iter()
        .map(|series| {
            let labels = series["metric"]
                .as_object()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect();
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .expect("a sample value");
            (labels, value)
        })
        .collect()
}

/// The one value of a query that gives one series, if it gives any.
fn scalar(prometheus: SocketAddr, promql: &str) -> Option<f64> {
    let result = query(prometheus, promql);
    assert!(result.len() <= 1, "{promql}: {result:?}");
    result.first().map(|(_, v)| *v)
}

/// Waits, bounded, for `done`; panics with `what` and `context()`.
fn wait_until(what: &str, within: Duration, context: impl Fn() -> String, done: impl Fn() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "no {what} within {within:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The value of the sample `name` (no labels) in a scrape.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// The sum of every sample of `name` in a scrape.
fn sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

fn require(tool: &str) {
    assert!(
        Path::new(tool).exists(),
        "{tool} is missing: install Debian's prometheus package \
         (apt-get install prometheus; `cargo xtask setup` does it), which brings \
         prometheus and promtool"
    );
}

#[test]
fn prometheus_scrapes_what_the_report_concludes() {
    require(PROMETHEUS);
    require(PROMTOOL);
    let tgtd = Tgtd::start(&TgtdOptions::default()).expect("tgtd starts");
    tgtd.add_lun(1, 64 << 20).expect("LUN 1");
    let trace = tgtd.dir.join("serve.ndjson");
    let mut serve = Serve::start(&tgtd, &trace, tgtd.dir.join("serve.log"));
    let metrics = serve.addr();
    wait_until(
        "healthy serve",
        Duration::from_secs(20),
        || serve.log(),
        || matches!(get(metrics, "/healthz", None), Ok((200, _))),
    );

    // Prometheus, scraping serve every second.
    let prom_dir = tgtd.dir.join("prometheus");
    std::fs::create_dir_all(&prom_dir).expect("Prometheus's directory");
    let config = prom_dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: tgt-trace\n    static_configs:\n\
             \x20     - targets: ['{metrics}']\n"
        ),
    )
    .expect("prometheus.yml");
    let prometheus = SocketAddr::V4(free_loopback_port().expect("a free port"));
    let prom_log = prom_dir.join("prometheus.log");
    let _prometheus = Group::of(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                prom_dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={prometheus}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&prom_log).expect("Prometheus's log"))
            .process_group(0)
            .spawn()
            .expect("prometheus starts"),
    );
    let prom_context = || std::fs::read_to_string(&prom_log).unwrap_or_default();
    wait_until(
        "Prometheus ready",
        Duration::from_secs(30),
        prom_context,
        || matches!(get(prometheus, "/-/ready", None), Ok((200, _))),
    );
    wait_until(
        "a first scrape of serve",
        Duration::from_secs(30),
        prom_context,
        || scalar(prometheus, "up{job=\"tgt-trace\"}") == Some(1.0),
    );

    let url = tgtd.url(1);
    for test in [
        "iSCSI.iSCSITMF.AbortTaskSimpleAsync",
        "iSCSI.iSCSITMF.LUNResetSimpleAsync",
    ] {
        let status = Command::new("iscsi-test-cu")
            .args(["--dataloss", "-t", test, &url])
            .stdout(Stdio::null())
            .status()
            .expect("iscsi-test-cu runs");
        eprintln!("{test}: {status}");
    }

    // Both TMFs concluded (a deferred one only after its blocking command's
    // release), as serve itself shows them.
    let scrape = || {
        get(metrics, "/metrics", None)
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    wait_until(
        "both TMFs concluded in serve's metrics",
        Duration::from_secs(30),
        || format!("{}\n{}", scrape(), serve.log()),
        || {
            let text = scrape();
            sum(&text, "tgttrace_tmfs_total") >= 2.0
                && sample(&text, "tgttrace_tmfs_open") == Some(0.0)
        },
    );
    let concluded = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64();
    let tmfs_served = sum(&scrape(), "tgttrace_tmfs_total");
    // Then a scrape taken after that.
    wait_until(
        "a scrape after the TMFs concluded",
        Duration::from_secs(30),
        prom_context,
        || scalar(prometheus, "timestamp(tgttrace_tmfs_open)").is_some_and(|t| t > concluded),
    );

    // promtool lints a raw scrape, in the classic text format.
    let raw = scrape();
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    promtool
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(raw.as_bytes())
        .expect("the scrape to promtool");
    let linted = promtool.wait_with_output().expect("promtool ends");
    assert!(
        linted.status.success(),
        "promtool check metrics: {}{}\n{raw}",
        String::from_utf8_lossy(&linted.stdout),
        String::from_utf8_lossy(&linted.stderr)
    );
    // What Prometheus stored, asked before serve stops.
    let prom_tmfs = query(
        prometheus,
        "sum by (function, outcome) (tgttrace_tmfs_total)",
    );
    let prom_orphans = query(prometheus, "sum by (kind) (tgttrace_orphans_total)");
    // Each function's median, as Prometheus interpolates it from the
    // buckets.
    let medians: BTreeMap<String, f64> = query(
        prometheus,
        "histogram_quantile(0.5, sum by (function, le) (tgttrace_tmf_duration_seconds_bucket))",
    )
    .into_iter()
    .map(|(l, v)| (l["function"].clone(), v))
    .collect();
    assert_eq!(
        scalar(prometheus, "sum(tgttrace_tmfs_total)"),
        Some(tmfs_served),
        "Prometheus has the scrape that counts every TMF"
    );

    let status = serve.terminate(Duration::from_secs(5));
    assert!(
        status.is_some_and(|s| s.success()),
        "serve must exit 0 within 5 s of SIGTERM: {status:?}\n{}",
        serve.log()
    );

    // The matcher's report of the same run.
    let report = Command::new(tgt_trace_bin())
        .args(["report", "--json"])
        .arg(&trace)
        .output()
        .expect("report runs");
    assert!(
        report.status.success(),
        "{}",
        String::from_utf8_lossy(&report.stderr)
    );
    let report: Value = serde_json::from_slice(&report.stdout).expect("report --json is JSON");
    assert_eq!(report["complete"], true, "serve ended its trace cleanly");
    let counts = &report["summary"]["counts"];
    let mut want_tmfs: BTreeMap<(String, String), f64> = BTreeMap::new();
    for (function, outcomes) in counts["tmfs_by_function"].as_object().expect("by function") {
        for (outcome, n) in outcomes.as_object().expect("by outcome") {
            want_tmfs.insert(
                (function.clone(), outcome.clone()),
                n.as_f64().expect("a count"),
            );
        }
    }
    let got_tmfs: BTreeMap<(String, String), f64> = prom_tmfs
        .iter()
        .map(|(l, v)| ((l["function"].clone(), l["outcome"].clone()), *v))
        .collect();
    assert_eq!(
        want_tmfs.values().sum::<f64>(),
        2.0,
        "one TMF from each libiscsi test: {want_tmfs:?}"
    );
    assert_eq!(got_tmfs, want_tmfs, "TMFs by function and outcome");

    let want_orphans: BTreeMap<String, f64> = counts["orphans_by_kind"]
        .as_object()
        .expect("orphans by kind")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_f64().expect("a count")))
        .collect();
    let got_orphans: BTreeMap<String, f64> = prom_orphans
        .iter()
        .map(|(l, v)| (l["kind"].clone(), *v))
        .collect();
    eprintln!("Prometheus: TMFs {got_tmfs:?}, orphans {got_orphans:?}");
    for kind in want_orphans.keys().chain(got_orphans.keys()) {
        assert_eq!(
            got_orphans.get(kind).copied().unwrap_or(0.0),
            want_orphans.get(kind).copied().unwrap_or(0.0),
            "orphans of kind {kind}: Prometheus {got_orphans:?}, report {want_orphans:?}"
        );
    }

    // Each function's median in Prometheus lies in the bucket that holds
    // the report's median of the same function.
    let histograms = report["summary"]["histograms"]["tmf_by_function"]
        .as_object()
        .expect("TMF latency by function");
    assert_eq!(
        histograms.keys().collect::<Vec<_>>(),
        medians.keys().collect::<Vec<_>>(),
        "the functions with a latency"
    );
    for (function, median) in &medians {
        let p50 = histograms[function]["p50_us"].as_f64().expect("a p50") / 1e6;
        let upper = BUCKETS
            .iter()
            .position(|&edge| p50 <= edge)
            .expect("a TMF median under 180 s");
        let lower = if upper == 0 { 0.0 } else { BUCKETS[upper - 1] };
        assert!(
            (lower..=BUCKETS[upper]).contains(median),
            "{function}: Prometheus's median {median} s is not in the report's p50 bucket \
             ({lower}, {}] (p50 {p50} s)",
            BUCKETS[upper]
        );
        eprintln!(
            "{function}: report p50 {p50} s, Prometheus median {median} s, bucket ({lower}, {}]",
            BUCKETS[upper]
        );
    }
}
