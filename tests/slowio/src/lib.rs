//! An `LD_PRELOAD` library for tgtd: it holds chosen backing-store I/O so
//! that a test knows a command is inside the backing store when its TMF
//! arrives.
//!
//! tgtd's rdwr backing store reads and writes with `pread64`/`pwrite64` and
//! syncs with `fdatasync`, from its worker threads (tgt `usr/bs_rdwr.c`). This
//! library wraps those calls. An I/O on a file whose path ends with
//! `SLOWIO_FILE` (e.g. `lun1.img`) that overlaps the byte
//! range `[SLOWIO_OFFSET, SLOWIO_OFFSET + SLOWIO_LEN)` (an `fdatasync` of the
//! file always matches) is *held*:
//!
//! - with `SLOWIO_DIR` set: it creates `SLOWIO_DIR/held-<seq>` (containing
//!   `op offset len`), then waits while `SLOWIO_DIR/hold` exists, then creates
//!   `SLOWIO_DIR/done-<seq>`. A test creates `hold`, sends the command, waits
//!   for `held-*` (observable state: the command is in the backing store),
//!   sends its TMF, and removes `hold` to let the I/O finish;
//! - with `SLOWIO_DELAY_US` instead: it sleeps that long (for workloads that
//!   loop, like the demo).
//!
//! Without `SLOWIO_FILE` every call goes straight to libc.

use std::{
    ffi::{CStr, c_int, c_void},
    path::PathBuf,
    sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use libc::{off64_t, size_t, ssize_t};

struct Rule {
    file: PathBuf,
    offset: u64,
    len: u64,
    hold: Hold,
}

enum Hold {
    Gate(PathBuf),
    Delay(Duration),
}

fn rule() -> Option<&'static Rule> {
    static RULE: OnceLock<Option<Rule>> = OnceLock::new();
    RULE.get_or_init(|| {
        let var = |name: &str| std::env::var_os(name);
        let number = |name: &str| {
            var(name)
                .and_then(|v| v.to_str().and_then(|s| s.trim().parse::<u64>().ok()))
                .unwrap_or(0)
        };
        let file = PathBuf::from(var("SLOWIO_FILE")?);
        let hold = match (var("SLOWIO_DIR"), number("SLOWIO_DELAY_US")) {
            (Some(dir), _) => Hold::Gate(PathBuf::from(dir)),
            (None, us) if us > 0 => Hold::Delay(Duration::from_micros(us)),
            _ => return None,
        };
        Some(Rule {
            file,
            offset: number("SLOWIO_OFFSET"),
            len: match number("SLOWIO_LEN") {
                0 => u64::MAX,
                len => len,
            },
            hold,
        })
    })
    .as_ref()
}

/// Whether `fd` is the chosen file: its path ends with `SLOWIO_FILE`
/// (whole components), so a test can name a LUN file before tgtd's scratch
/// directory exists. The path behind an fd is read from /proc, which takes a
/// syscall but none of the wrapped ones.
fn is_target(rule: &Rule, fd: c_int) -> bool {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).is_ok_and(|p| p.ends_with(&rule.file))
}

fn overlaps(rule: &Rule, offset: u64, len: u64) -> bool {
    offset < rule.offset.saturating_add(rule.len) && rule.offset < offset.saturating_add(len)
}

/// Holds the calling thread (a tgtd backing-store worker) as the rule says.
fn hold(rule: &Rule, op: &str, offset: u64, len: u64) {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    match &rule.hold {
        Hold::Delay(d) => std::thread::sleep(*d),
        Hold::Gate(dir) => {
            let seq = SEQ.fetch_add(1, Ordering::Relaxed);
            let note = format!("{op} {offset} {len}\n");
            // Written under another name and renamed, so that a test never
            // sees a half-written marker.
            let tmp = dir.join(format!(".held-{seq}"));
            if std::fs::write(&tmp, &note).is_ok() {
                let _ = std::fs::rename(&tmp, dir.join(format!("held-{seq}")));
            }
            let gate = dir.join("hold");
            // Polling keeps the library free of any channel to the test; it
            // runs only in held I/O, on a worker thread tgtd expects to block.
            while gate.exists() {
                std::thread::sleep(Duration::from_millis(1));
            }
            let _ = std::fs::write(dir.join(format!("done-{seq}")), &note);
        }
    }
}

fn maybe_hold(fd: c_int, op: &str, offset: u64, len: u64) {
    if let Some(rule) = rule()
        && overlaps(rule, offset, len)
        && is_target(rule, fd)
    {
        hold(rule, op, offset, len);
    }
}

/// The next definition of `name` (libc's), looked up once per symbol.
fn next(name: &CStr, slot: &OnceLock<usize>) -> usize {
    *slot.get_or_init(|| {
        // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no
        // preconditions; a null result is checked before use.
        let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
        if f.is_null() {
            // Without libc's function there is nothing sane to do.
            std::process::abort();
        }
        f as usize
    })
}

type Pread = unsafe extern "C" fn(c_int, *mut c_void, size_t, off64_t) -> ssize_t;
type Pwrite = unsafe extern "C" fn(c_int, *const c_void, size_t, off64_t) -> ssize_t;
type Fsync = unsafe extern "C" fn(c_int) -> c_int;

macro_rules! wrap_read {
    ($name:ident) => {
        /// # Safety
        /// The caller's contract is libc's.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *mut c_void,
            count: size_t,
            offset: off64_t,
        ) -> ssize_t {
            static REAL: OnceLock<usize> = OnceLock::new();
            maybe_hold(fd, "read", offset as u64, count as u64);
            let name = CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes())
                .unwrap_or_default();
            // SAFETY: the address is libc's function of this name and type.
            let real: Pread = unsafe { std::mem::transmute::<usize, Pread>(next(&name, &REAL)) };
            // SAFETY: forwarded unchanged under the caller's contract.
            unsafe { real(fd, buf, count, offset) }
        }
    };
}

macro_rules! wrap_write {
    ($name:ident) => {
        /// # Safety
        /// The caller's contract is libc's.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            fd: c_int,
            buf: *const c_void,
            count: size_t,
            offset: off64_t,
        ) -> ssize_t {
            static REAL: OnceLock<usize> = OnceLock::new();
            maybe_hold(fd, "write", offset as u64, count as u64);
            let name = CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes())
                .unwrap_or_default();
            // SAFETY: the address is libc's function of this name and type.
            let real: Pwrite = unsafe { std::mem::transmute::<usize, Pwrite>(next(&name, &REAL)) };
            // SAFETY: forwarded unchanged under the caller's contract.
            unsafe { real(fd, buf, count, offset) }
        }
    };
}

macro_rules! wrap_sync {
    ($name:ident) => {
        /// # Safety
        /// The caller's contract is libc's.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(fd: c_int) -> c_int {
            static REAL: OnceLock<usize> = OnceLock::new();
            maybe_hold(fd, "sync", 0, u64::MAX);
            let name = CStr::from_bytes_with_nul(concat!(stringify!($name), "\0").as_bytes())
                .unwrap_or_default();
            // SAFETY: the address is libc's function of this name and type.
            let real: Fsync = unsafe { std::mem::transmute::<usize, Fsync>(next(&name, &REAL)) };
            // SAFETY: forwarded unchanged under the caller's contract.
            unsafe { real(fd) }
        }
    };
}

// On x86_64 `pread` and `pread64` are the same call; tgtd binds whichever
// its headers chose, so both are wrapped.
wrap_read!(pread64);
wrap_read!(pread);
wrap_write!(pwrite64);
wrap_write!(pwrite);
wrap_sync!(fdatasync);
wrap_sync!(fsync);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_overlap_at_their_edges_only_when_shared() {
        let rule = Rule {
            file: PathBuf::from("/x"),
            offset: 4096,
            len: 512,
            hold: Hold::Delay(Duration::ZERO),
        };
        assert!(overlaps(&rule, 4096, 1));
        assert!(overlaps(&rule, 0, 4097));
        assert!(overlaps(&rule, 4607, 10));
        assert!(!overlaps(&rule, 0, 4096));
        assert!(!overlaps(&rule, 4608, 512));
        assert!(overlaps(&rule, 0, u64::MAX));
    }

    #[test]
    fn the_path_behind_an_fd_is_recognised() {
        use std::os::fd::AsRawFd as _;
        let path = std::env::temp_dir().join(format!("slowio-{}", std::process::id()));
        let file = std::fs::File::create(&path).expect("temp file");
        let rule = Rule {
            file: path.clone(),
            offset: 0,
            len: u64::MAX,
            hold: Hold::Delay(Duration::ZERO),
        };
        assert!(is_target(&rule, file.as_raw_fd()));
        assert!(!is_target(&rule, 0));
        let by_name = Rule {
            file: PathBuf::from(path.file_name().expect("a name")),
            ..rule
        };
        assert!(is_target(&by_name, file.as_raw_fd()));
        let partial = Rule {
            file: PathBuf::from("owio-1"),
            ..by_name
        };
        assert!(
            !is_target(&partial, file.as_raw_fd()),
            "whole components only"
        );
        let _ = std::fs::remove_file(&path);
    }
}
