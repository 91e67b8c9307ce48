//! A recorded trace replayed at its own speed (or faster, or a batch per
//! key). Live, the screen is a sink of the recording itself
//! ([`super::feed::Screen`]), and no file is involved.

use std::{path::PathBuf, time::Duration};

use tokio::{sync::mpsc, time::Instant};

use super::{
    event::Msg,
    feed::{Ended, Feed, TraceInfo, Update},
};
use crate::{
    correlate::Config,
    reader::{ReadError, TraceReader},
    trace::{Header, Line},
};

/// How often a replay or a followed file hands the screen a batch.
pub const TICK: Duration = Duration::from_millis(50);
/// At most this many events per batch, so that a fast replay does not keep
/// the screen from drawing or reading keys.
const MAX_EVENTS_PER_BATCH: u64 = 50_000;

/// How a replay is paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Pace {
    /// This many times real time (1.0: as recorded).
    Speed(f64),
    /// One batch per step: the events of `batch_ns` of trace time.
    Step { batch_ns: u64 },
}

/// What the file reader thread hands on.
enum Read {
    Header(Box<Header>, String),
    Line(Box<Line>),
    Failed(ReadError),
    /// The end of the file, and how many bad lines `--lenient` skipped.
    End {
        skipped: u64,
    },
}

/// Reads the trace on a thread of its own: file reads block, and standard
/// input may wait for its writer.
fn spawn_reader(path: PathBuf, lenient: bool) -> mpsc::Receiver<Read> {
    let (tx, rx) = mpsc::channel(4096);
    std::thread::spawn(move || {
        let mut reader = match TraceReader::open(&path, lenient) {
            Ok(reader) => reader,
            Err(e) => {
                let _ = tx.blocking_send(Read::Failed(e));
                return;
            }
        };
        let header = Read::Header(
            Box::new(reader.header().clone()),
            reader.source_name().to_owned(),
        );
        if tx.blocking_send(header).is_err() {
            return;
        }
        for line in reader.by_ref() {
            let read = match line {
                Ok(line) => Read::Line(Box::new(line)),
                Err(e) => Read::Failed(e),
            };
            let failed = matches!(read, Read::Failed(_));
            if tx.blocking_send(read).is_err() || failed {
                return;
            }
        }
        let _ = tx.blocking_send(Read::End {
            skipped: reader.skipped(),
        });
    });
    rx
}

/// Replays the trace at `path`, paced, to `tx`; steps arrive on `steps`.
pub async fn replay(
    path: PathBuf,
    lenient: bool,
    config: Config,
    pace: Pace,
    tx: mpsc::Sender<Msg>,
    mut steps: mpsc::Receiver<()>,
) {
    let mut lines = spawn_reader(path, lenient);
    let header = match lines.recv().await {
        Some(Read::Header(header, name)) => {
            // The file's name: a long path would crowd the header out.
            let file = std::path::Path::new(&name)
                .file_name()
                .map_or(name.clone(), |f| f.to_string_lossy().into_owned());
            let info = TraceInfo::from_header(format!("replay {file}"), &header);
            if tx.send(Msg::Update(Update::Started(info))).await.is_err() {
                return;
            }
            header
        }
        Some(Read::Failed(e)) => {
            let _ = tx.send(Msg::Problem(e.to_string())).await;
            return;
        }
        _ => return,
    };
    let mut feed = Feed::new(&header, config);
    let mut ended: Option<Ended> = None;
    // An event read but beyond the current batch.
    let mut held: Option<Line> = None;
    let mut first_ts: Option<u64> = None;
    let started = Instant::now();
    let mut ticker = tokio::time::interval(TICK);
    loop {
        let mut batch_end = match pace {
            Pace::Step { .. } => {
                if steps.recv().await.is_none() {
                    return;
                }
                None
            }
            Pace::Speed(speed) => {
                ticker.tick().await;
                let elapsed = started.elapsed().as_secs_f64() * speed * 1e9;
                first_ts.map(|first| first.saturating_add(elapsed as u64))
            }
        };
        let mut events = 0;
        let done = loop {
            let line = match held.take() {
                Some(line) => line,
                None => match lines.recv().await {
                    Some(Read::Line(line)) => *line,
                    Some(Read::Failed(e)) => {
                        let _ = tx.send(Msg::Problem(e.to_string())).await;
                        break true;
                    }
                    Some(Read::Header(..)) => continue,
                    Some(Read::End { skipped }) => {
                        if skipped > 0 {
                            let _ = tx
                                .send(Msg::Problem(format!("{skipped} malformed lines skipped")))
                                .await;
                        }
                        break true;
                    }
                    None => break true,
                },
            };
            if let Line::Event(event) = &line {
                let ts = event.ts_ns();
                let first = *first_ts.get_or_insert(ts);
                let end = *batch_end.get_or_insert(match pace {
                    Pace::Step { batch_ns } => ts.saturating_add(batch_ns),
                    // The first event: due now.
                    Pace::Speed(_) => first,
                });
                if ts > end || events >= MAX_EVENTS_PER_BATCH {
                    held = Some(line);
                    break false;
                }
                events += 1;
            }
            if let Some(end) = feed.line(line) {
                ended = Some(end);
            }
        };
        let batch = if done {
            feed.finish()
        } else {
            feed.take_batch()
        };
        if tx
            .send(Msg::Update(Update::Batch(Box::new(batch))))
            .await
            .is_err()
        {
            return;
        }
        if done {
            let ended = ended.unwrap_or(Ended {
                complete: false,
                stopped_by: None,
                duration_ns: None,
            });
            let _ = tx.send(Msg::Update(Update::Ended(ended))).await;
            return;
        }
    }
}
