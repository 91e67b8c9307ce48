//! `tgt-trace tui`: the matcher's view of a trace, live or replayed, on a
//! terminal screen.
//!
//! Data flows one way: a source (the live probes, or a replayed file) → the
//! pipeline's one driver (the matcher) → [`feed::Screen`], a sink → a
//! bounded channel → [`app::App`] → [`ui`], which draws it. Keys come over the same channel; the few that
//! need I/O (quit, save, step) come back from the app as [`app::Effect`]s.

pub mod app;
pub mod event;
pub mod feed;
pub mod save;
pub mod source;
pub mod terminal;
pub mod ui;

use std::{
    io::{self, IsTerminal as _},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use ratatui::layout::Rect;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{Notify, mpsc},
    task::LocalSet,
};

use self::{
    app::{App, Effect},
    event::Msg,
    source::Pace,
    terminal::TerminalGuard,
};
use crate::{
    correlate::Config,
    probe::TraceOptions,
    reader::{ReadError, TraceReader},
    record::{Matching, Output, RecordError, RecordOptions, record},
};

/// `tgt-trace tui`'s own options; the attach and matcher options are
/// shared with `record` and `replay`.
#[derive(clap::Args, Debug, Clone)]
pub struct TuiArgs {
    /// Replay a recorded trace instead of tracing live.
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// Replay this many times faster than recorded (0.5 is half speed).
    #[arg(long, value_name = "N", default_value_t = 1.0, value_parser = parse_speed, requires = "replay")]
    pub speed: f64,
    /// Replay one batch of events (--poll of trace time) per key: space or n.
    #[arg(long, requires = "replay", conflicts_with = "speed")]
    pub step: bool,
    /// Skip malformed lines of the replayed trace (they are counted).
    #[arg(long, requires = "replay")]
    pub lenient: bool,
    /// Live: also write the trace (NDJSON, with matched lines) to FILE.
    #[arg(short, long, value_name = "FILE", conflicts_with = "replay")]
    pub output: Option<PathBuf>,
    /// Create the -o file 0600 (the trace names initiators and hosts).
    #[arg(long, requires = "output")]
    pub private: bool,
    /// Where `s` saves the screen and its records.
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub save_dir: PathBuf,
}

fn parse_speed(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(speed),
        _ => Err(format!(
            "'{text}' is not a speed; give a factor above 0, e.g. 10"
        )),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TuiError {
    #[error(
        "tgt-trace tui needs a terminal on standard output; for text use `tgt-trace report FILE`"
    )]
    NotATerminal,
    /// Live mode was asked for without the probes to attach.
    #[error("nothing to show: pass --replay FILE, or run live with the probes attached")]
    NoSource,
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("cannot set up the terminal: {0}")]
    Terminal(#[source] io::Error),
    #[error("cannot start the async runtime or its signal handlers: {0}")]
    Runtime(#[source] io::Error),
    #[error(transparent)]
    Record(#[from] RecordError),
}

enum Source {
    Replay {
        path: PathBuf,
        lenient: bool,
        pace: Pace,
    },
    Live(Box<TraceOptions>, Duration),
}

/// Runs the screen until q, Ctrl-C, SIGINT or SIGTERM. `poll` is the live
/// drain interval, and a replay step's width in trace time; `live` is what
/// to attach when not replaying.
pub fn run(
    args: TuiArgs,
    config: Config,
    poll: Duration,
    live: Option<TraceOptions>,
) -> Result<(), TuiError> {
    if !io::stdout().is_terminal() {
        return Err(TuiError::NotATerminal);
    }
    // The trace is opened before the screen is taken, so that a bad file is
    // reported on a normal terminal.
    let source = match (&args.replay, live) {
        (Some(path), _) => {
            let pace = if args.step {
                Pace::Step {
                    batch_ns: u64::try_from(poll.as_nanos()).unwrap_or(u64::MAX).max(1),
                }
            } else {
                Pace::Speed(args.speed)
            };
            // Standard input can be read only once: by the replay.
            if path != Path::new("-") {
                TraceReader::open(path, args.lenient)?;
            }
            Source::Replay {
                path: path.clone(),
                lenient: args.lenient,
                pace,
            }
        }
        (None, Some(trace)) => Source::Live(Box::new(trace), poll),
        (None, None) => return Err(TuiError::NoSource),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(TuiError::Runtime)?;
    LocalSet::new().block_on(&runtime, session(args, config, source))
}

async fn session(args: TuiArgs, config: Config, source: Source) -> Result<(), TuiError> {
    let mut sigterm = signal(SignalKind::terminate()).map_err(TuiError::Runtime)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(TuiError::Runtime)?;
    let (tx, mut rx) = mpsc::channel(256);
    let (step_tx, step_rx) = mpsc::channel(16);
    let mut app = App::new(matches!(
        source,
        Source::Replay {
            pace: Pace::Step { .. },
            ..
        }
    ));
    let mut recording = None;
    match source {
        Source::Replay {
            path,
            lenient,
            pace,
        } => {
            tokio::task::spawn_local(source::replay(
                path,
                lenient,
                config,
                pace,
                tx.clone(),
                step_rx,
            ));
        }
        Source::Live(trace, poll) => {
            // The screen takes the recording's lines in process, over a
            // bounded channel; only `-o FILE` writes anything to disk.
            let output = match &args.output {
                Some(path) => Output::File(path.clone()),
                None => Output::None,
            };
            let stop = Arc::new(Notify::new());
            let opts = RecordOptions {
                trace: *trace,
                output,
                duration: None,
                command: Vec::new(),
                poll,
                // Matched lines make a saved file a full trace, and the
                // snapshots carry the drop counts while recording.
                matched: Some(Matching {
                    config: config.clone(),
                    summary_every: Some(Duration::from_secs(1)),
                    events: true,
                }),
                stop: Some(stop.clone()),
                quiet: true,
                private: args.private,
                // The screen is a sink of the recording's own driver.
                sinks: vec![Box::new(feed::Screen::live(tx.clone(), "live"))],
            };
            let record_tx = tx.clone();
            let handle = tokio::task::spawn_local(async move {
                let msg = match record(opts).await {
                    Ok(_) => Msg::RecordingStopped,
                    Err(e) => Msg::RecordingFailed(e),
                };
                let _ = record_tx.send(msg).await;
            });
            recording = Some((handle, stop, args.output.clone()));
        }
    }

    let mut guard = TerminalGuard::enter().map_err(TuiError::Terminal)?;
    let _input = event::spawn_input(tx);
    let mut redraw = tokio::time::interval(source::TICK);
    let mut dirty = true;
    let outcome = loop {
        tokio::select! {
            msg = rx.recv() => {
                dirty = true;
                match msg {
                    None => break Ok(()),
                    Some(Msg::Key(key)) => match app.on_key(key) {
                        Some(Effect::Quit) => break Ok(()),
                        Some(Effect::Step) => {
                            let _ = step_tx.try_send(());
                        }
                        Some(Effect::Save) => {
                            let area = guard.terminal.get_frame().area();
                            app.status = Some(save(&app, area, &args.save_dir));
                        }
                        None => {}
                    },
                    Some(Msg::Resize) => {}
                    Some(Msg::Update(update)) => app.apply(update),
                    Some(Msg::Problem(problem)) => app.problem(problem),
                    Some(Msg::RecordingStopped) => {
                        app.status = Some("recording stopped".to_owned());
                    }
                    Some(Msg::RecordingFailed(e)) => break Err(TuiError::Record(e)),
                }
            }
            _ = sigterm.recv() => break Ok(()),
            _ = sigint.recv() => break Ok(()),
            _ = redraw.tick(), if dirty => {
                dirty = false;
                guard
                    .terminal
                    .draw(|frame| frame.render_widget(&app, frame.area()))
                    .map_err(TuiError::Terminal)?;
            }
        }
    };
    drop(guard);
    // The screen is gone: what it showed in red stays said.
    let found = &app.latest().layout_violations;
    if found.total() > 0 {
        eprintln!("tgt-trace: LAYOUT: {}", found.inconclusive_reason());
    }
    if let Some((handle, stop, path)) = recording {
        if !handle.is_finished() {
            // A signal stops the recording too (it has its own handlers);
            // a permit left unused then does no harm.
            stop.notify_one();
            // Give the recording the time to drain and write its summary line.
            let _ = tokio::time::timeout(Duration::from_secs(5), handle).await;
        }
        if let Some(path) = path {
            eprintln!("tgt-trace: the trace is in {}", path.display());
        }
    }
    outcome
}

/// Saves the screen as text and its records as NDJSON in `dir`; says where,
/// or what went wrong.
fn save(app: &App, area: Rect, dir: &Path) -> String {
    let text = save::screen_text(app, area);
    let ndjson = match save::to_ndjson(&save::visible_lines(app)) {
        Ok(ndjson) => ndjson,
        Err(e) => return format!("cannot save: {e}"),
    };
    let slug = app.view.title().to_lowercase().replace(' ', "-");
    let Some(base) = (1..10_000)
        .map(|n| dir.join(format!("tgt-trace-{slug}-{n}")))
        .find(|base| !base.with_extension("txt").exists())
    else {
        return format!("cannot save: {} is full of saved screens", dir.display());
    };
    let (txt, json) = (base.with_extension("txt"), base.with_extension("ndjson"));
    match std::fs::write(&txt, text).and_then(|()| std::fs::write(&json, ndjson)) {
        Ok(()) => format!("saved {} and {}", txt.display(), json.display()),
        Err(e) => format!(
            "cannot save in {}: {e}; pass --save-dir DIR to save elsewhere",
            dir.display()
        ),
    }
}
