//! NDJSON lines to a file or a pipe without ever blocking the writer's
//! caller: a thread of its own does the `write(2)`s, fed whole lines in
//! chunks, with a bound on the bytes waiting for it. When a slow reader
//! (`tgt-trace record -o - | slow`) lets the bound fill, whole lines are
//! dropped and counted (`sink_slow`), so the trace stays a sequence of
//! whole lines and the loss is said, never silent.

use std::{
    io::{self, Write},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

/// Bytes that may wait for the writer thread; past this, lines are dropped.
pub const DEFAULT_BUDGET: usize = 32 << 20;
/// Complete lines are handed to the thread in chunks of about this size.
const CHUNK: usize = 256 << 10;

struct Shared {
    /// Bytes handed to the thread and not yet written.
    in_flight: AtomicUsize,
    /// Lines dropped because `in_flight` was at its bound.
    dropped_lines: AtomicU64,
    /// Lines handed over and lines written.
    sent_lines: AtomicU64,
    written_lines: AtomicU64,
    /// The first write error; the thread stops then.
    error: Mutex<Option<io::Error>>,
}

/// A `Write` that never blocks: see the module documentation. Lines are
/// what it counts; a partial line waits in it until its newline comes.
pub struct LineSink {
    pending: Vec<u8>,
    budget: usize,
    shared: Arc<Shared>,
    tx: Option<mpsc::Sender<Vec<u8>>>,
    thread: Option<JoinHandle<()>>,
    /// Disconnected when the writer thread ends: `close` waits on it.
    done: mpsc::Receiver<()>,
}

/// What the sink could not deliver when it was closed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Undelivered {
    /// Dropped while recording: the reader was too slow.
    pub dropped: u64,
    /// Still waiting for the reader when the bounded final flush ended.
    pub unwritten: u64,
}

impl LineSink {
    pub fn new(out: Box<dyn Write + Send>, budget: usize) -> LineSink {
        let shared = Arc::new(Shared {
            in_flight: AtomicUsize::new(0),
            dropped_lines: AtomicU64::new(0),
            sent_lines: AtomicU64::new(0),
            written_lines: AtomicU64::new(0),
            error: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel::<Vec<u8>>();
        let (done_tx, done) = mpsc::channel::<()>();
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("trace-writer".to_owned())
                .spawn(move || {
                    write_loop(out, &rx, &shared);
                    drop(done_tx);
                })
                .ok()
        };
        LineSink {
            pending: Vec::with_capacity(CHUNK),
            budget,
            shared,
            tx: Some(tx),
            thread,
            done,
        }
    }

    /// Lines dropped so far because the reader was too slow.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped_lines.load(Ordering::Relaxed)
    }

    /// The write error that stopped the writer thread, once (it is taken).
    pub fn take_error(&self) -> Option<io::Error> {
        self.shared.error.lock().ok().and_then(|mut e| e.take())
    }

    /// Hands the complete lines in `pending` to the thread, or drops them
    /// when the bytes already waiting are at the budget.
    fn hand_over(&mut self) {
        let Some(end) = self.pending.iter().rposition(|&b| b == b'\n') else {
            return;
        };
        let rest = self.pending.split_off(end + 1);
        let chunk = std::mem::replace(&mut self.pending, rest);
        let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let waiting = self.shared.in_flight.load(Ordering::Relaxed);
        let sent = waiting + chunk.len() <= self.budget
            && self.tx.as_ref().is_some_and(|tx| {
                self.shared
                    .in_flight
                    .fetch_add(chunk.len(), Ordering::Relaxed);
                tx.send(chunk).is_ok()
            });
        if sent {
            self.shared.sent_lines.fetch_add(lines, Ordering::Relaxed);
        } else {
            self.shared
                .dropped_lines
                .fetch_add(lines, Ordering::Relaxed);
        }
    }

    /// Hands over what is complete, then waits at most `within` for the
    /// thread to write everything; what it has not written by then is
    /// counted, and the thread is left to the process's exit (it may be
    /// blocked in a write to a reader that does not read).
    pub fn close(mut self, within: Duration) -> (Undelivered, Option<io::Error>) {
        self.hand_over();
        drop(self.tx.take());
        if let Some(thread) = self.thread.take() {
            // The thread drops its end of `done` as it returns: this waits
            // for that, or for `within`, whichever comes first.
            let ended = matches!(
                self.done.recv_timeout(within),
                Err(mpsc::RecvTimeoutError::Disconnected)
            );
            if ended {
                let _ = thread.join();
            }
        }
        let s = &self.shared;
        let sent = s.sent_lines.load(Ordering::Relaxed);
        let written = s.written_lines.load(Ordering::Relaxed);
        (
            Undelivered {
                dropped: s.dropped_lines.load(Ordering::Relaxed),
                unwritten: sent.saturating_sub(written),
            },
            self.take_error(),
        )
    }
}

impl Write for LineSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.pending.extend_from_slice(buf);
        if self.pending.len() >= CHUNK {
            self.hand_over();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.hand_over();
        Ok(())
    }
}

fn write_loop(mut out: Box<dyn Write + Send>, rx: &mpsc::Receiver<Vec<u8>>, shared: &Shared) {
    for chunk in rx {
        let lines = chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        let result = out.write_all(&chunk).and_then(|()| out.flush());
        shared.in_flight.fetch_sub(chunk.len(), Ordering::Relaxed);
        match result {
            Ok(()) => {
                shared.written_lines.fetch_add(lines, Ordering::Relaxed);
            }
            Err(e) => {
                if let Ok(mut slot) = shared.error.lock() {
                    slot.get_or_insert(e);
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A reader that never reads: every write blocks until `open` is set.
    struct Stuck(Arc<std::sync::atomic::AtomicBool>, Arc<Mutex<Vec<u8>>>);

    impl Write for Stuck {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            while !self.0.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(1));
            }
            self.1.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stuck_reader_never_blocks_and_whole_lines_are_counted() {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut sink = LineSink::new(Box::new(Stuck(open.clone(), got.clone())), 1000);
        let started = Instant::now();
        for i in 0..10_000 {
            writeln!(sink, "{{\"line\":{i}}}").expect("never fails");
            sink.flush().expect("never fails");
        }
        assert!(started.elapsed() < Duration::from_secs(2), "it blocked");
        assert!(sink.dropped() > 9_000, "{}", sink.dropped());
        let (undelivered, error) = sink.close(Duration::from_millis(50));
        assert!(error.is_none());
        // What was handed over is stuck in the reader: unwritten, counted.
        assert!(undelivered.unwritten > 0, "{undelivered:?}");
        assert_eq!(
            undelivered.dropped + undelivered.unwritten,
            10_000,
            "every line is written, dropped or counted unwritten"
        );
        open.store(true, Ordering::Relaxed);
    }

    #[test]
    fn a_fast_reader_gets_every_line_whole_and_in_order() {
        let open = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut sink = LineSink::new(Box::new(Stuck(open, got.clone())), DEFAULT_BUDGET);
        for i in 0..1000 {
            // Lines arrive in pieces, as BufWriter hands them on.
            write!(sink, "{{\"line\":").expect("write");
            sink.flush().expect("flush");
            writeln!(sink, "{i}}}").expect("write");
        }
        let (undelivered, error) = sink.close(Duration::from_secs(5));
        assert_eq!(undelivered, Undelivered::default());
        assert!(error.is_none());
        let text = String::from_utf8(got.lock().expect("lock").clone()).expect("UTF-8");
        let expected: String = (0..1000).map(|i| format!("{{\"line\":{i}}}\n")).collect();
        assert_eq!(text, expected);
    }

    struct Full;
    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_write_error_is_reported() {
        let mut sink = LineSink::new(Box::new(Full), DEFAULT_BUDGET);
        writeln!(sink, "x").expect("buffered");
        sink.flush().expect("handed over");
        let (_, error) = sink.close(Duration::from_secs(5));
        assert_eq!(error.and_then(|e| e.raw_os_error()), Some(libc::ENOSPC));
    }
}
