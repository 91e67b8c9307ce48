//! What `s` saves: the screen as text, and the records it shows as NDJSON
//! lines of the trace schema. Pure; the loop writes the files.

use ratatui::{buffer::Buffer, layout::Rect, widgets::Widget};

use super::{
    app::{App, TmfRow, View},
    ui::buffer_text,
};
use crate::{
    correlate::{CommandOutcome, CommandRecord},
    trace::{Line, MatchedSummary},
};

/// The screen as it is drawn at `area`'s size.
pub fn screen_text(app: &App, area: Rect) -> String {
    let mut buf = Buffer::empty(area);
    app.render(area, &mut buf);
    buffer_text(&buf)
}

/// The records behind the current view, as trace lines: the TMFs or orphans
/// listed, the commands in flight, or (overview, histograms) a
/// `matched_summary` snapshot.
pub fn visible_lines(app: &App) -> Vec<Line> {
    let data = app.data();
    match app.view {
        View::Tmfs => data
            .tmf_rows(&app.filter)
            .into_iter()
            .filter_map(|row| match row {
                TmfRow::Done(t) => Some(Line::Tmf(t.clone())),
                // Not concluded: there is no record of it yet.
                TmfRow::Open(_) => None,
            })
            .collect(),
        View::Orphans => data
            .orphan_rows(&app.filter)
            .into_iter()
            .map(|o| Line::Orphan(o.clone()))
            .collect(),
        View::InFlight => data
            .in_flight_rows(&app.filter)
            .into_iter()
            .map(|c| {
                Line::Command(CommandRecord {
                    pid: c.pid,
                    itn_id: c.itn_id,
                    initiator: c.initiator.clone(),
                    tag: c.tag,
                    lun: c.lun,
                    opcode: c.opcode,
                    arrived_ns: c.arrived_ns,
                    result: None,
                    result_ns: None,
                    released_ns: None,
                    outcome: CommandOutcome::InFlight,
                    covered_by: c.blocking.clone(),
                    cause: Some("in flight when the screen was saved".to_owned()),
                })
            })
            .collect(),
        View::Overview | View::Histograms => vec![Line::MatchedSummary(Box::new(MatchedSummary {
            is_final: false,
            at_ns: data.now_ns,
            summary: data.summary.clone(),
            drops: data.drops,
            complete: false,
            skipped_lines: 0,
            sinks: data.sinks.clone(),
            layout_violations: data.layout_violations.clone(),
        }))],
    }
}

pub fn to_ndjson(lines: &[Line]) -> Result<String, serde_json::Error> {
    let mut text = String::new();
    for line in lines {
        text.push_str(&serde_json::to_string(line)?);
        text.push('\n');
    }
    Ok(text)
}
