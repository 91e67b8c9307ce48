//! A scratch tgtd: its own control socket, a portal on 127.0.0.1 only, file
//! LUNs in a temporary directory. Dropping it stops the daemon and removes
//! its files.

use std::{
    io,
    net::{SocketAddrV4, TcpListener},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU16, Ordering},
    time::{Duration, Instant},
};

/// Control-socket numbers handed out in this process (`tgtd -C N`); offset by
/// pid so that concurrent test binaries do not collide.
static NEXT_CONTROL: AtomicU16 = AtomicU16::new(0);

/// The environment variable naming the tgtd binary the tests start instead
/// of Debian's `/usr/sbin/tgtd`: one of `cargo xtask tgtd-builds`'
/// variants (issue 17). Only the daemon changes: tgtadm stays Debian's,
/// built from the same tgt 1.0.85 source. tgt-trace refuses a `--pid`
/// whose `/proc/PID/exe` is not its `--tgtd` (default `/usr/sbin/tgtd`), so
/// the tests that trace another build pass `--tgtd` [`Tgtd::binary`] (as
/// tests/tests/support does); the others trace Debian's tgtd only.
pub const TGTD_ENV: &str = "TGT_TRACE_TGTD";

#[derive(Debug, Clone)]
pub struct TgtdOptions {
    /// `$TGT_TRACE_TGTD` when set, else `/usr/sbin/tgtd`.
    pub tgtd: PathBuf,
    /// Extra environment for tgtd (LD_PRELOAD of the slow-I/O library, ...).
    pub env: Vec<(String, String)>,
    pub target_iqn: String,
    /// `tgtd -d 1`: tgtd logs every command it queues (`target_cmd_queue`),
    /// an account of the workload independent of tgt-trace.
    pub debug: bool,
}

impl Default for TgtdOptions {
    fn default() -> Self {
        TgtdOptions {
            tgtd: std::env::var_os(TGTD_ENV)
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/usr/sbin/tgtd")),
            env: Vec::new(),
            debug: false,
            target_iqn: "iqn.2026-11.io.tgt-trace:scratch".to_owned(),
        }
    }
}

/// A running tgtd with one target (tid 1), bound to all initiators.
pub struct Tgtd {
    child: Child,
    binary: PathBuf,
    pub control: u16,
    pub portal: SocketAddrV4,
    pub target_iqn: String,
    pub dir: PathBuf,
}

impl Tgtd {
    /// Starts tgtd and creates the target. Waits until tgtd answers tgtadm.
    pub fn start(opts: &TgtdOptions) -> io::Result<Tgtd> {
        let control = 1000
            + (std::process::id() as u16 % 20_000)
            + NEXT_CONTROL.fetch_add(1, Ordering::Relaxed);
        let portal = free_loopback_port()?;
        let dir =
            std::env::temp_dir().join(format!("tgt-trace-tgtd-{}-{control}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = std::fs::File::create(dir.join("tgtd.log"))?;
        let child = Command::new(&opts.tgtd)
            .args([
                "-f",
                "-C",
                &control.to_string(),
                "--iscsi",
                &format!("portal={portal}"),
            ])
            .args(if opts.debug { &["-d", "1"][..] } else { &[] })
            .envs(opts.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a Ctrl-C at the terminal is for tgt-trace
            // and the demo, which stop tgtd themselves.
            .process_group(0)
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("starting {}: {e}", opts.tgtd.display()))
            })?;
        let mut tgtd = Tgtd {
            child,
            binary: opts.tgtd.clone(),
            control,
            portal,
            target_iqn: opts.target_iqn.clone(),
            dir,
        };
        tgtd.wait_ready()?;
        tgtd.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "target",
            "--tid",
            "1",
            "-T",
            &opts.target_iqn,
        ])?;
        tgtd.tgtadm(&[
            "--op", "bind", "--mode", "target", "--tid", "1", "-I", "ALL",
        ])?;
        Ok(tgtd)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The tgtd binary this daemon runs: what `tgt-trace --tgtd` must name
    /// for `--pid` to be accepted.
    pub fn binary(&self) -> &Path {
        &self.binary
    }

    /// Adds a file-backed LUN of `bytes` bytes (rdwr backing store).
    pub fn add_lun(&self, lun: u32, bytes: u64) -> io::Result<PathBuf> {
        let path = self.dir.join(format!("lun{lun}.img"));
        std::fs::File::create(&path)?.set_len(bytes)?;
        self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            &lun.to_string(),
            "-b",
            path.to_str()
                .ok_or_else(|| io::Error::other("temporary path is not UTF-8"))?,
        ])?;
        Ok(path)
    }

    /// Adds a LUN with the `null` backing store: no I/O, for throughput runs.
    pub fn add_null_lun(&self, lun: u32) -> io::Result<()> {
        self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            "1",
            "--lun",
            &lun.to_string(),
            "--bstype",
            "null",
            "-b",
            &format!("null{lun}"),
            "--blocksize",
            "512",
        ])?;
        Ok(())
    }

    /// Opens a second portal on 127.0.0.1 and returns it: load sent there
    /// stays out of a capture of `portal`.
    pub fn add_portal(&self) -> io::Result<SocketAddrV4> {
        let portal = free_loopback_port()?;
        self.tgtadm(&[
            "--op",
            "new",
            "--mode",
            "portal",
            "--param",
            &format!("portal={portal}"),
        ])?;
        Ok(portal)
    }

    /// libiscsi's URL for a LUN of this target.
    pub fn url(&self, lun: u32) -> String {
        format!("iscsi://{}/{}/{lun}", self.portal, self.target_iqn)
    }

    pub fn tgtadm(&self, args: &[&str]) -> io::Result<String> {
        let out = Command::new("tgtadm")
            .args(["-C", &self.control.to_string(), "--lld", "iscsi"])
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "tgtadm {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tgtd.log")).unwrap_or_default()
    }

    /// tgtd creates its control socket after it has started; until then
    /// tgtadm fails. Bounded, and fails with tgtd's own log.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "tgtd exited at start ({status}):\n{}",
                    self.log()
                )));
            }
            if self.tgtadm(&["--op", "show", "--mode", "target"]).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "tgtd did not answer tgtadm within 10 s:\n{}",
                    self.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops tgtd the way its service does, then makes sure it is gone.
    /// tgtd 1.0.85 refuses `delete --mode system` while a target exists
    /// ("invalid request"), so the target goes first.
    pub fn stop(&mut self) {
        let control = self.control.to_string();
        for args in [
            &[
                "--lld", "iscsi", "--op", "delete", "--mode", "target", "--tid", "1", "--force",
            ][..],
            &["--op", "delete", "--mode", "system"][..],
        ] {
            let _ = Command::new("tgtadm")
                .args(["-C", &control])
                .args(args)
                .stdin(Stdio::null())
                .output();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Kills tgtd without letting it clean up (a crash, for fault tests).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_loopback_port() -> io::Result<SocketAddrV4> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    match listener.local_addr()? {
        std::net::SocketAddr::V4(addr) => Ok(addr),
        std::net::SocketAddr::V6(_) => Err(io::Error::other("bound 127.0.0.1 but got IPv6")),
    }
}

/// The tgt-trace binary under test: `TGT_TRACE_BIN`, or the workspace's
/// release build.
pub fn tgt_trace_bin() -> PathBuf {
    std::env::var_os("TGT_TRACE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/tgt-trace")
        })
}
