//! Holding tgtd's backing-store I/O on purpose, through the `tgt-slowio`
//! preload library (`tests/slowio`): a test knows a command is inside the
//! backing store because the library says so (a `held-N` file), and decides
//! when it may finish.

use std::{
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// The preload library: `SLOWIO_LIB`, or the workspace's release build.
pub fn library() -> PathBuf {
    std::env::var_os("SLOWIO_LIB")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/libtgt_slowio.so")
        })
}

/// One I/O the library held, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldIo {
    pub op: String,
    pub offset: u64,
    pub len: u64,
}

/// The gate directory shared with the library inside tgtd.
pub struct SlowIo {
    dir: PathBuf,
}

impl SlowIo {
    pub fn new(name: &str) -> io::Result<SlowIo> {
        let dir = std::env::temp_dir().join(format!("tgt-slowio-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(SlowIo { dir })
    }

    /// tgtd's environment: hold I/O to the file whose path ends with `file`
    /// (e.g. `lun1.img`) overlapping `len` bytes at `offset`, while the gate
    /// is closed.
    pub fn env(&self, file: &str, offset: u64, len: u64) -> io::Result<Vec<(String, String)>> {
        let lib = library();
        if !lib.exists() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!(
                    "{} is missing; build it with `cargo build --release -p tgt-slowio` \
                     (cargo xtask test does) or set SLOWIO_LIB",
                    lib.display()
                ),
            ));
        }
        Ok(vec![
            ("LD_PRELOAD".to_owned(), lib.display().to_string()),
            ("SLOWIO_FILE".to_owned(), file.to_owned()),
            ("SLOWIO_OFFSET".to_owned(), offset.to_string()),
            ("SLOWIO_LEN".to_owned(), len.to_string()),
            ("SLOWIO_DIR".to_owned(), self.dir.display().to_string()),
        ])
    }

    /// Closes the gate: matching I/O from now on waits.
    pub fn hold(&self) -> io::Result<()> {
        std::fs::write(self.dir.join("hold"), b"")
    }

    /// Opens the gate: held I/O finishes.
    pub fn release(&self) -> io::Result<()> {
        match std::fs::remove_file(self.dir.join("hold")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn markers(&self, prefix: &str) -> Vec<HeldIo> {
        let mut found: Vec<(u64, HeldIo)> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let seq: u64 = name.strip_prefix(prefix)?.parse().ok()?;
                let text = std::fs::read_to_string(entry.path()).ok()?;
                let mut words = text.split_whitespace();
                let held = HeldIo {
                    op: words.next()?.to_owned(),
                    offset: words.next()?.parse().ok()?,
                    len: words.next()?.parse().ok()?,
                };
                Some((seq, held))
            })
            .collect();
        found.sort_by_key(|(seq, _)| *seq);
        found.into_iter().map(|(_, h)| h).collect()
    }

    /// Waits until at least `n` I/Os have been held (they are then inside
    /// tgtd's backing store); returns them in the order they were held.
    pub fn wait_held(&self, n: usize, timeout: Duration) -> io::Result<Vec<HeldIo>> {
        self.wait_markers("held-", n, timeout)
    }

    /// Waits until at least `n` held I/Os have finished.
    pub fn wait_done(&self, n: usize, timeout: Duration) -> io::Result<Vec<HeldIo>> {
        self.wait_markers("done-", n, timeout)
    }

    fn wait_markers(&self, prefix: &str, n: usize, timeout: Duration) -> io::Result<Vec<HeldIo>> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.markers(prefix);
            if found.len() >= n {
                return Ok(found);
            }
            if Instant::now() >= deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} of {n} I/Os reported {prefix}* in {} within {timeout:?}; is tgtd running with the preload library?",
                        found.len(),
                        self.dir.display()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for SlowIo {
    /// Never leaves tgtd's workers stuck behind a closed gate.
    fn drop(&mut self) {
        let _ = self.release();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
