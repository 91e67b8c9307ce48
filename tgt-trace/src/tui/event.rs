//! What the screen's loop hears: keys, and updates from the trace, over one
//! channel. The keyboard is read on its own thread, as crossterm reads block.

use std::time::Duration;

use ratatui::crossterm::event::{self, Event as TermEvent, KeyEvent};
use tokio::sync::mpsc;

use super::feed::Update;

#[derive(Debug)]
pub enum Msg {
    Key(KeyEvent),
    /// The terminal changed size: draw again.
    Resize,
    Update(Update),
    /// The trace cannot be read further, or the recording failed.
    Problem(String),
    /// Live: the recording ended (its summary line follows in the trace).
    RecordingStopped,
    /// Live: the recording could not start or went wrong.
    RecordingFailed(crate::record::RecordError),
}

/// How often the keyboard thread looks whether the loop is gone.
const INPUT_POLL: Duration = Duration::from_millis(100);

/// Reads the keyboard until the loop drops its receiver.
pub fn spawn_input(tx: mpsc::Sender<Msg>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !tx.is_closed() {
            let msg = match event::poll(INPUT_POLL) {
                Ok(false) => continue,
                Ok(true) => match event::read() {
                    Ok(TermEvent::Key(key)) => Msg::Key(key),
                    Ok(TermEvent::Resize(..)) => Msg::Resize,
                    Ok(_) => continue,
                    Err(e) => Msg::Problem(format!("cannot read the keyboard: {e}")),
                },
                Err(e) => Msg::Problem(format!("cannot read the keyboard: {e}")),
            };
            let failed = matches!(msg, Msg::Problem(_));
            if tx.blocking_send(msg).is_err() || failed {
                break;
            }
        }
    })
}
