//! The TUI drawn on a fixed 80×24 test terminal from fixed event streams:
//! every view empty, from a real tgtd trace (ABORT TASK and LUN RESET), with
//! drops, and with orphans of every kind; and what each key does to the
//! screen's state. Snapshots are in `tests/snapshots/`; they hold no clock
//! or path, so they are the same on every machine.

use std::path::PathBuf;

use ratatui::{
    Terminal,
    backend::TestBackend,
    crossterm::event::{KeyCode, KeyEvent, KeyModifiers},
};
use tgt_trace::{
    correlate::Config,
    event::Event,
    reader::TraceReader,
    trace::{Drops, Header, Line, Summary},
    tui::{
        app::{App, Effect, Mode, View},
        feed::{Feed, TraceInfo, Update},
        ui::buffer_text,
    },
};
use tgt_trace_common::{TASK_ABORTED, mgmt_ret, tmf};

const WIDTH: u16 = 80;
const HEIGHT: u16 = 24;
const PID: u32 = 100;

fn trace_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/libiscsi-tmf.ndjson")
}

/// The recorded trace's header and lines.
fn recorded() -> (Header, Vec<Line>) {
    let mut reader = TraceReader::open(&trace_path(), false).expect("the recorded trace opens");
    let header = reader.header().clone();
    let lines = reader.by_ref().map(|l| l.expect("a good line")).collect();
    (header, lines)
}

/// An app fed `lines` as one batch, then the end of the trace.
fn app_from(header: &Header, lines: Vec<Line>) -> App {
    let mut app = App::default();
    app.apply(Update::Started(TraceInfo::from_header(
        "replay test.ndjson".to_owned(),
        header,
    )));
    let mut feed = Feed::new(header, Config::default());
    let mut ended = None;
    for line in lines {
        if let Some(end) = feed.line(line) {
            ended = Some(end);
        }
    }
    app.apply(Update::Batch(Box::new(feed.finish())));
    if let Some(ended) = ended {
        app.apply(Update::Ended(ended));
    }
    app
}

fn screen(app: &App) -> String {
    let mut terminal = Terminal::new(TestBackend::new(WIDTH, HEIGHT)).expect("test terminal");
    terminal
        .draw(|frame| frame.render_widget(app, frame.area()))
        .expect("draws");
    buffer_text(terminal.backend().buffer())
}

fn key(code: KeyCode) -> KeyEvent {
    KeyEvent::new(code, KeyModifiers::NONE)
}

fn type_text(app: &mut App, text: &str) {
    for c in text.chars() {
        app.on_key(key(KeyCode::Char(c)));
    }
}

fn snapshot_every_view(name: &str, mut app: App) {
    for view in View::ALL {
        app.view = view;
        let shot = format!("{name}-{}", view.title().to_lowercase().replace(' ', "-"));
        insta::assert_snapshot!(shot, screen(&app));
    }
}

fn event_stream_header() -> Header {
    recorded().0
}

/// Orphans of every kind, built by hand the way tgtd emits them.
fn orphan_events() -> Vec<Line> {
    let mut ts = 5_730_723_500_000;
    let mut next = || {
        ts += 10_000;
        ts
    };
    let initiator = "iqn.2007-10.com.example:host-a";
    let mut events = vec![
        Event::NexusCreate {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            initiator: Some(initiator.to_owned()),
            info: format!("Initiator: {initiator} alias: none"),
        },
        // (a) ABORT TASK for a tag tgtd never had.
        Event::TmfRequest {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            mid: 0xa1,
            function: tmf::ABORT_TASK,
            tag: 0x99,
            lun: 2,
            lun_raw: None,
        },
        Event::TmfReturn {
            ts_ns: next(),
            pid: PID,
            mid: 0xa1,
            ret: mgmt_ret::DONE,
        },
        Event::TmfResponse {
            ts_ns: next(),
            pid: PID,
            mid: 0xa1,
            function: tmf::ABORT_TASK,
            result: -17,
            connection_closed: None,
        },
        // (b) TASK_ABORTED that no TMF explains.
        Event::CmdQueue {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            tag: 0x10,
            lun: 2,
            lun_raw: None,
            opcode: 0x28,
            attribute: 0x20,
            cmd: 0x10,
        },
        Event::CmdRelease {
            ts_ns: next(),
            pid: PID,
            itn_id: 7,
            tag: 0x10,
            cmd: 0x10,
            result: TASK_ABORTED,
            tmf: None,
        },
        // LUN RESET waiting for a busy write that never comes back (the
        // lean set cannot tell it busy: unanswered when the trace ends);
        // a read still in flight meanwhile.
        Event::CmdQueue {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            tag: 0x20,
            lun: 3,
            lun_raw: None,
            opcode: 0x2a,
            attribute: 0x20,
            cmd: 0x20,
        },
        Event::TmfRequest {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            mid: 0xa2,
            function: tmf::LOGICAL_UNIT_RESET,
            tag: u64::from(u32::MAX),
            lun: 3,
            lun_raw: None,
        },
        Event::TmfReturn {
            ts_ns: next(),
            pid: PID,
            mid: 0xa2,
            ret: mgmt_ret::QUEUED,
        },
        Event::CmdQueue {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            tag: 0x30,
            lun: 2,
            lun_raw: None,
            opcode: 0x28,
            attribute: 0x20,
            cmd: 0x30,
        },
        // (c) ABORT TASK SET never answered.
        Event::TmfRequest {
            ts_ns: next(),
            pid: PID,
            tid: 1,
            itn_id: 7,
            mid: 0xa3,
            function: tmf::ABORT_TASK_SET,
            tag: 0,
            lun: 4,
            lun_raw: None,
        },
    ];
    events.sort_by_key(Event::ts_ns);
    events.into_iter().map(Line::Event).collect()
}

#[test]
fn empty_screens() {
    snapshot_every_view("empty", App::default());
}

#[test]
fn recorded_trace_screens() {
    let (header, lines) = recorded();
    snapshot_every_view("libiscsi", app_from(&header, lines));
}

#[test]
fn screens_with_drops() {
    let (header, mut lines) = recorded();
    lines.retain(|l| !matches!(l, Line::Summary(_)));
    lines.push(Line::Summary(Summary {
        events: 90,
        drops: Drops {
            ring_full: 12,
            read_failed: 1,
            decode_errors: 0,
            sink_slow: 0,
            walk_truncated: 0,
        },
        duration_ns: 21_752_139,
        stopped_by: "signal".to_owned(),
        sinks: Vec::new(),
        layout_violations: Default::default(),
    }));
    snapshot_every_view("drops", app_from(&header, lines));
}

#[test]
fn screens_with_orphans() {
    let app = app_from(&event_stream_header(), orphan_events());
    assert_eq!(app.data().orphans.len(), 4);
    snapshot_every_view("orphans", app);
}

/// Mid-trace: a deferred LUN RESET open, its busy command marked.
#[test]
fn in_flight_marks_the_command_a_deferred_tmf_waits_for() {
    let header = event_stream_header();
    let mut lines = orphan_events();
    lines.truncate(10);
    let mut app = App::default();
    let mut feed = Feed::new(&header, Config::default());
    for line in lines {
        feed.line(line);
    }
    app.apply(Update::Batch(Box::new(feed.take_batch())));
    app.view = View::InFlight;
    let text = screen(&app);
    assert!(text.contains("BLOCKS TMF"), "{text}");
    insta::assert_snapshot!("open-in-flight", text);
    app.view = View::Tmfs;
    insta::assert_snapshot!("open-tmfs", screen(&app));
}

#[test]
fn a_busy_synthetic_target() {
    let header = event_stream_header();
    let (events, _, _) = tgt_trace::synth::generate(
        tgt_trace::synth::SynthConfig {
            abort_task_ppm: 20_000,
            lun_reset_ppm: 2_000,
            ..Default::default()
        },
        20_000,
    );
    let mut app = App::default();
    app.apply(Update::Started(TraceInfo::from_header(
        "replay synth.ndjson".to_owned(),
        &header,
    )));
    let mut feed = Feed::new(&header, Config::default());
    for event in &events {
        feed.event(event);
    }
    app.apply(Update::Batch(Box::new(feed.take_batch())));
    snapshot_every_view("synth", app);
}

#[test]
fn the_tmf_timeline_and_the_help_overlay() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    app.on_key(key(KeyCode::Char('2')));
    app.on_key(key(KeyCode::Down));
    assert_eq!(app.on_key(key(KeyCode::Enter)), None);
    assert_eq!(app.mode, Mode::Details);
    insta::assert_snapshot!("libiscsi-timeline", screen(&app));
    app.on_key(key(KeyCode::Esc));
    app.on_key(key(KeyCode::Char('?')));
    insta::assert_snapshot!("help", screen(&app));
}

#[test]
fn tiny_terminals_do_not_panic() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    for view in View::ALL {
        app.view = view;
        for (w, h) in [(1, 1), (10, 5), (40, 10), (80, 3), (200, 60)] {
            let mut terminal = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
            terminal
                .draw(|frame| frame.render_widget(&app, frame.area()))
                .expect("draws");
        }
    }
}

// Keys, on the app's state.

#[test]
fn views_switch_with_tab_and_numbers() {
    let mut app = App::default();
    assert_eq!(app.view, View::Overview);
    app.on_key(key(KeyCode::Tab));
    assert_eq!(app.view, View::Tmfs);
    app.on_key(key(KeyCode::BackTab));
    app.on_key(key(KeyCode::BackTab));
    assert_eq!(app.view, View::Orphans);
    for (c, view) in ('1'..='5').zip(View::ALL) {
        app.on_key(key(KeyCode::Char(c)));
        assert_eq!(app.view, view);
    }
}

#[test]
fn q_and_ctrl_c_quit_s_saves() {
    let mut app = App::default();
    assert_eq!(app.on_key(key(KeyCode::Char('q'))), Some(Effect::Quit));
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Some(Effect::Quit)
    );
    assert_eq!(app.on_key(key(KeyCode::Char('s'))), Some(Effect::Save));
    // Ctrl-C quits even while typing a filter.
    app.on_key(key(KeyCode::Char('f')));
    assert_eq!(
        app.on_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
        Some(Effect::Quit)
    );
}

#[test]
fn pause_freezes_the_screen_while_data_keeps_coming() {
    let (header, lines) = recorded();
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('p')));
    assert!(app.paused());
    let mut feed = Feed::new(&header, Config::default());
    for line in lines {
        feed.line(line);
    }
    app.apply(Update::Batch(Box::new(feed.finish())));
    assert_eq!(app.data().events, 0, "the screen stays as it was");
    app.on_key(key(KeyCode::Char('p')));
    assert!(!app.paused());
    assert_eq!(app.data().events, 90, "what came meanwhile is shown");
}

#[test]
fn a_filter_narrows_the_lists_and_a_bad_one_says_why() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    app.on_key(key(KeyCode::Char('2')));
    app.on_key(key(KeyCode::Char('f')));
    type_text(&mut app, "fn=logical_unit_reset");
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.mode, Mode::Normal);
    let rows = app.data().tmf_rows(&app.filter);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].function(), "LOGICAL_UNIT_RESET");
    insta::assert_snapshot!("libiscsi-tmfs-filtered", screen(&app));

    app.on_key(key(KeyCode::Char('f')));
    // The current filter is offered for editing: clear it, type another.
    for _ in 0..40 {
        app.on_key(key(KeyCode::Backspace));
    }
    type_text(&mut app, "lun=x");
    app.on_key(key(KeyCode::Enter));
    assert!(
        app.status
            .as_deref()
            .is_some_and(|s| s.contains("a LUN is a number")),
        "{:?}",
        app.status
    );
    assert_eq!(
        app.data().tmf_rows(&app.filter).len(),
        1,
        "the old filter stays"
    );

    app.on_key(key(KeyCode::Char('f')));
    for _ in 0..40 {
        app.on_key(key(KeyCode::Backspace));
    }
    app.on_key(key(KeyCode::Enter));
    assert!(app.filter.is_empty());
    assert_eq!(app.data().tmf_rows(&app.filter).len(), 2);
}

#[test]
fn an_initiator_filter_says_the_histograms_are_not_narrowed() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    app.on_key(key(KeyCode::Char('4')));
    assert!(screen(&app).contains("latency"));
    assert!(!screen(&app).contains("all initiators"));
    app.on_key(key(KeyCode::Char('f')));
    type_text(&mut app, "init=libiscsi");
    app.on_key(key(KeyCode::Enter));
    let shown = screen(&app);
    assert!(shown.contains("all initiators"), "{shown}");
    assert!(shown.contains("command"), "the rows stay: {shown}");
}

#[test]
fn esc_drops_a_filter_being_typed() {
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('f')));
    type_text(&mut app, "lun=3");
    app.on_key(key(KeyCode::Esc));
    assert_eq!(app.mode, Mode::Normal);
    assert!(app.filter.is_empty());
}

#[test]
fn find_selects_the_tmf_that_names_a_tag() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    // The LUN RESET waited for 0x4f77fa4c.
    app.on_key(key(KeyCode::Char('/')));
    type_text(&mut app, "0x4f77fa4c");
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.view, View::Tmfs);
    assert_eq!(app.selected(), 1);
    app.on_key(key(KeyCode::Char('/')));
    type_text(&mut app, "12345");
    app.on_key(key(KeyCode::Enter));
    assert!(
        app.status
            .as_deref()
            .is_some_and(|s| s.contains("0x3039 is not on any list")),
        "{:?}",
        app.status
    );
}

#[test]
fn selection_stays_within_the_rows() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    app.on_key(key(KeyCode::Char('2')));
    for _ in 0..5 {
        app.on_key(key(KeyCode::Down));
    }
    assert_eq!(app.selected(), 1);
    app.on_key(key(KeyCode::PageUp));
    assert_eq!(app.selected(), 0);
    app.on_key(key(KeyCode::End));
    assert_eq!(app.selected(), 1);
    // Enter opens the timeline only where there is a TMF to show.
    app.on_key(key(KeyCode::Char('5')));
    app.on_key(key(KeyCode::Enter));
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn help_opens_and_closes() {
    let mut app = App::default();
    app.on_key(key(KeyCode::Char('?')));
    assert_eq!(app.mode, Mode::Help);
    assert_eq!(
        app.on_key(key(KeyCode::Char('q'))),
        None,
        "q closes help first"
    );
    assert_eq!(app.mode, Mode::Normal);
}

#[test]
fn step_mode_steps_on_space() {
    let mut stepping = App::new(true);
    assert_eq!(stepping.on_key(key(KeyCode::Char(' '))), Some(Effect::Step));
    assert_eq!(stepping.on_key(key(KeyCode::Char('n'))), Some(Effect::Step));
    let mut app = App::default();
    assert_eq!(app.on_key(key(KeyCode::Char(' '))), None);
}

#[test]
fn saving_gives_the_visible_records_as_trace_lines() {
    let (header, lines) = recorded();
    let mut app = app_from(&header, lines);
    app.on_key(key(KeyCode::Char('2')));
    let saved = tgt_trace::tui::save::visible_lines(&app);
    assert_eq!(saved.len(), 2);
    assert!(saved.iter().all(|l| matches!(l, Line::Tmf(_))));
    let ndjson = tgt_trace::tui::save::to_ndjson(&saved).expect("serialises");
    for line in ndjson.lines() {
        serde_json::from_str::<Line>(line).expect("each saved line reads back as a trace line");
    }
    let text = tgt_trace::tui::save::screen_text(&app, ratatui::layout::Rect::new(0, 0, 80, 24));
    assert!(text.contains("LUN_RESET"), "{text}");
}

/// Issue 15: a `--sample` trace. The header names the rate, the command
/// histogram says it is sampled, and the in-flight view says why it is
/// empty rather than showing no commands in flight.
#[test]
fn a_sampled_trace_says_so() {
    let mut header = event_stream_header();
    header.sampling = Some(tgt_trace::points::Sampling {
        percent: 10,
        period_ms: 10_000,
    });
    for p in &mut header.probes {
        if p.name.per_command() && p.attached {
            p.sampled = true;
        }
    }
    let window = |ts_ns, open| {
        Line::Event(Event::SampleWindow {
            ts_ns,
            pid: 0,
            open,
        })
    };
    let lines = vec![
        window(1_000, true),
        Line::Event(Event::CmdQueue {
            ts_ns: 2_000,
            pid: PID,
            tid: 1,
            itn_id: 1,
            tag: 7,
            lun: 1,
            lun_raw: None,
            opcode: 0x28,
            attribute: 0x20,
            cmd: 0x100,
        }),
        Line::Event(Event::CmdRelease {
            ts_ns: 52_000,
            pid: PID,
            itn_id: 1,
            tag: 7,
            cmd: 0x100,
            result: 0,
            tmf: None,
        }),
        window(60_000, false),
    ];
    let mut app = app_from(&header, lines);
    let overview = screen(&app);
    assert!(
        overview.contains("commands sampled 10% of each 10000 ms"),
        "{overview}"
    );
    app.view = View::Histograms;
    let histograms = screen(&app);
    assert!(histograms.contains("command (10% sampled)"), "{histograms}");
    app.view = View::InFlight;
    let in_flight = screen(&app);
    assert!(in_flight.contains("--sample's windows only"), "{in_flight}");
}
