//! Issue 14: `replay`, `record --matched` and the TUI's screen conclude
//! through the one driver, so each of them gets the same records from the
//! same lines: a real tgtd's trace and a busy synthetic one go through each
//! consumer's own sink, and the records must agree one for one.

use std::{
    io::Write,
    path::Path,
    sync::{Arc, Mutex},
    time::Duration,
};

use tgt_trace::{
    correlate::{Config, Record},
    pipeline::Driver,
    reader::TraceReader,
    report::replay,
    sink::{lines::DEFAULT_BUDGET, ndjson::NdjsonSink},
    source::file::FileSource,
    synth::{SynthConfig, generate},
    trace::{Header, Line},
    tui::feed::Feed,
};

/// A trace's lines: the header and the rest.
fn lines_of(text: &str) -> (Header, Vec<Line>) {
    let mut lines = text
        .lines()
        .map(|l| serde_json::from_str::<Line>(l).expect("a trace line"));
    let Some(Line::Header(header)) = lines.next() else {
        panic!("a header first");
    };
    (header, lines.collect())
}

/// `replay` / `report` / `check`: the records sink.
fn by_replay(text: &str) -> Vec<Record> {
    let mut reader = TraceReader::new(
        Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
        "trace".to_owned(),
        false,
    )
    .expect("reads");
    let mut records = Vec::new();
    replay(&mut reader, Config::default(), |r| records.push(r.clone())).expect("replays");
    records
}

/// The TUI: the screen's sink, batch by batch as a replay paces it.
fn by_screen(header: &Header, lines: &[Line], batch: usize) -> Vec<Record> {
    let mut feed = Feed::new(header, Config::default());
    let mut records = Vec::new();
    for chunk in lines.chunks(batch) {
        for line in chunk {
            feed.line(line.clone());
        }
        records.extend(feed.take_batch().records);
    }
    records.extend(feed.finish().records);
    records
}

/// A `Write` the test reads back after the sink's thread is done.
#[derive(Clone, Default)]
struct Shared(Arc<Mutex<Vec<u8>>>);

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `record --matched`: the NDJSON sink's matched lines.
fn by_ndjson(header: &Header, lines: &[Line]) -> Vec<Record> {
    let out = Shared::default();
    let sink = NdjsonSink::new(Box::new(out.clone()), DEFAULT_BUDGET, true, true);
    let mut driver = Driver::new(header, Config::default(), vec![Box::new(sink)]);
    driver.header(header).expect("header");
    let mut source = FileSource::default();
    for line in lines {
        source.line(&mut driver, line.clone()).expect("line");
    }
    source.finish(&mut driver, 0).expect("finish");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (losses, failure) = runtime.block_on(driver.close(Duration::from_secs(10)));
    assert!(losses.is_empty() && failure.is_none(), "{losses:?}");
    let text = String::from_utf8(out.0.lock().expect("lock").clone()).expect("UTF-8");
    text.lines()
        .filter_map(
            |l| match serde_json::from_str::<Line>(l).expect("a trace line") {
                Line::Command(c) => Some(Record::Command(c)),
                Line::Tmf(t) => Some(Record::Tmf(t)),
                Line::Orphan(o) => Some(Record::Orphan(o)),
                _ => None,
            },
        )
        .collect()
}

/// `batches`: how many events the screen gets between two batch ends.
fn all_agree(text: &str, batches: &[usize]) -> Vec<Record> {
    let (header, lines) = lines_of(text);
    // Only event lines: what a recording's driver sees live.
    let events: Vec<Line> = lines
        .into_iter()
        .filter(|l| matches!(l, Line::Event(_)))
        .collect();
    let replayed = by_replay(text);
    assert!(!replayed.is_empty(), "the trace concludes something");
    for &batch in batches {
        let screen = by_screen(&header, &events, batch);
        assert_eq!(screen.len(), replayed.len(), "screen, batches of {batch}");
        for (i, (s, r)) in screen.iter().zip(&replayed).enumerate() {
            assert_eq!(
                s, r,
                "record {i}: the screen (batches of {batch}) and replay differ"
            );
        }
    }
    let ndjson = by_ndjson(&header, &events);
    assert_eq!(ndjson, replayed, "record --matched and replay differ");
    replayed
}

#[test]
fn a_real_tgtd_trace_concludes_the_same_in_every_sink() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf-v4.ndjson");
    let records = all_agree(
        &std::fs::read_to_string(path).expect("trace"),
        &[1, 7, usize::MAX],
    );
    let tmfs = records
        .iter()
        .filter(|r| matches!(r, Record::Tmf(_)))
        .count();
    assert_eq!(tmfs, 2, "ABORT TASK and LUN RESET");
}

#[test]
fn a_busy_synthetic_trace_concludes_the_same_in_every_sink() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf-v4.ndjson");
    let (header, _) = lines_of(&std::fs::read_to_string(path).expect("trace"));
    let (events, _, _) = generate(
        SynthConfig {
            abort_task_ppm: 20_000,
            abort_task_set_ppm: 2_000,
            lun_reset_ppm: 2_000,
            transport_tmf_ppm: 2_000,
            ..Default::default()
        },
        20_000,
    );
    let mut text = serde_json::to_string(&Line::Header(header)).expect("serializes");
    text.push('\n');
    for event in events {
        text.push_str(&serde_json::to_string(&Line::Event(event)).expect("serializes"));
        text.push('\n');
    }
    // A batch end takes snapshots of the whole matcher: a few widths only.
    let records = all_agree(&text, &[997, usize::MAX]);
    let tmfs = records
        .iter()
        .filter(|r| matches!(r, Record::Tmf(_)))
        .count();
    assert!(tmfs > 100, "{tmfs} TMF records");
    assert!(
        records.iter().any(|r| matches!(r, Record::Orphan(_))),
        "orphans too"
    );
}
