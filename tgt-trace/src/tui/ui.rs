//! Drawing the [`App`]: pure, from its state to a buffer. Nothing here reads
//! a clock or a file, so the same state always draws the same screen.

use std::collections::BTreeMap;

use ratatui::{
    buffer::Buffer,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{
        Block, Borders, Cell, Clear, Paragraph, Row, Sparkline, StatefulWidget, Table, TableState,
        Tabs, Widget, Wrap,
    },
};

use super::app::{App, Data, FILTER_PROMPT, FIND_PROMPT, Filter, Mode, OpFilter, TmfRow, View};
use crate::{
    correlate::{Fate, OrphanKind, TmfOutcome, TmfRecord},
    event::OpClass,
    stats::LatencySummary,
};

const HEADER_STYLE: Style = Style::new().add_modifier(Modifier::BOLD);
const SELECTED: Style = Style::new().add_modifier(Modifier::REVERSED);
const ALERT: Style = Style::new().fg(Color::Red).add_modifier(Modifier::BOLD);
const DIM: Style = Style::new().fg(Color::DarkGray);

impl Widget for &App {
    fn render(self, area: Rect, buf: &mut Buffer) {
        let [header, tabs, body, footer] = Layout::vertical([
            Constraint::Length(3),
            Constraint::Length(1),
            Constraint::Min(0),
            Constraint::Length(1),
        ])
        .areas(area);
        let data = self.data();
        render_header(self, data, header, buf);
        Tabs::new(
            View::ALL
                .iter()
                .enumerate()
                .map(|(i, v)| format!("{} {}", i + 1, v.title())),
        )
        .select(self.view.index())
        .highlight_style(Style::new().add_modifier(Modifier::REVERSED | Modifier::BOLD))
        .render(tabs, buf);
        match self.view {
            View::Overview => render_overview(data, &self.filter, body, buf),
            View::Tmfs => render_tmfs(self, data, body, buf),
            View::InFlight => render_in_flight(self, data, body, buf),
            View::Histograms => render_histograms(self, data, body, buf),
            View::Orphans => render_orphans(self, data, body, buf),
        }
        render_footer(self, footer, buf);
        match self.mode {
            Mode::Help => render_help(self, area, buf),
            Mode::Details => render_details(self, data, area, buf),
            _ => {}
        }
    }
}

fn render_header(app: &App, data: &Data, area: Rect, buf: &mut Buffer) {
    let mut first = vec![Span::styled("tgt-trace ", HEADER_STYLE)];
    let mut probes = Vec::new();
    match &data.info {
        Some(info) => {
            first.push(Span::raw(format!("{}  ", info.source)));
            let pids: Vec<String> = info.pids.iter().map(u32::to_string).collect();
            first.push(Span::raw(match &info.kernel {
                Some(release) => format!("LIO, kernel {release}"),
                None => format!(
                    "tgtd pid {}",
                    if pids.is_empty() {
                        "none yet".to_owned()
                    } else {
                        pids.join(",")
                    }
                ),
            }));
            let attached = info.probes.iter().filter(|p| p.attached).count();
            probes.push(Span::raw(format!(
                "probes {} {attached}/{} attached",
                info.probe_set,
                info.probes.len()
            )));
            // A probe the set leaves out is expected; one that failed is not.
            let missing: Vec<_> = info.probes.iter().filter(|p| !p.attached).collect();
            if !missing.is_empty() {
                probes.push(Span::raw(", not:"));
            }
            for p in missing {
                let by_choice = p
                    .missing
                    .as_deref()
                    .is_some_and(|why| why.starts_with("not in the"));
                probes.push(Span::styled(
                    format!(" {}", p.name),
                    if by_choice { DIM } else { ALERT },
                ));
            }
        }
        None => first.push(Span::styled("waiting for the trace header…", DIM)),
    }
    let rates = data.rates(&Filter::default());
    let drops = data.drops.total();
    let mut second = vec![
        Span::raw(format!(
            "events {} ({}/s)  duration {}  ",
            data.events,
            rate(rates.events),
            duration_ns(data.elapsed_ns())
        )),
        Span::styled(
            format!("drops {drops}"),
            if drops > 0 { ALERT } else { Style::new() },
        ),
    ];
    if drops > 0 {
        second.push(Span::styled(
            format!(
                ": ring full {}, unreadable {}, undecodable {}{}",
                data.drops.ring_full,
                data.drops.read_failed,
                data.drops.decode_errors,
                match data.drops.sink_slow {
                    0 => String::new(),
                    n => format!(", slow reader {n}"),
                }
            ),
            ALERT,
        ));
    }
    // Shown only when a runtime layout check fired: the numbers on this
    // screen may then be read from the wrong bytes (see `plausible`).
    let violations = data.layout_violations.total();
    if violations > 0 {
        second.push(Span::styled(
            format!(
                "  LAYOUT? {violations} implausible ({}): run `tgt-trace probes`",
                data.layout_violations.describe()
            ),
            ALERT,
        ));
    }
    // What a sink other than the trace file could not take: the screen
    // itself, when it fell behind the recording.
    for loss in data.sinks.iter().filter(|l| l.sink != "ndjson") {
        second.push(Span::styled(
            format!(
                "  {} {} {} lost ({})",
                loss.sink, loss.lost, loss.unit, loss.cause
            ),
            ALERT,
        ));
    }
    // The state goes first: a long drops line may be cut at the right.
    if let Some(ended) = &data.ended {
        second.insert(
            0,
            Span::styled(
                if ended.complete {
                    "ENDED "
                } else {
                    "ENDED (cut short) "
                },
                HEADER_STYLE,
            ),
        );
    }
    if app.paused() {
        second.insert(0, Span::styled("PAUSED ", ALERT));
    }
    if let Some(problem) = &data.problem {
        second.push(Span::styled(format!("  {problem}"), ALERT));
    }
    Paragraph::new(vec![
        Line::from(first),
        Line::from(probes),
        Line::from(second),
    ])
    .render(area, buf);
}

fn render_footer(app: &App, area: Rect, buf: &mut Buffer) {
    let line = match &app.mode {
        Mode::Filter(text) => Line::from(vec![
            Span::styled(FILTER_PROMPT, HEADER_STYLE),
            Span::raw(format!(" {text}_")),
        ]),
        Mode::Find(text) => Line::from(vec![
            Span::styled(FIND_PROMPT, HEADER_STYLE),
            Span::raw(format!(" {text}_")),
        ]),
        _ => {
            let mut spans = Vec::new();
            if let Some(status) = &app.status {
                spans.push(Span::styled(format!("{status}  "), HEADER_STYLE));
            }
            if !app.filter.is_empty() {
                spans.push(Span::styled(
                    format!("[{}] ", app.filter.describe()),
                    Style::new().fg(Color::Yellow),
                ));
            }
            if app.stepping && app.data().ended.is_none() {
                spans.push(Span::styled("space: next batch  ", HEADER_STYLE));
            }
            spans.push(Span::styled(
                "q quit  Tab/1-5 view  p pause  f filter  / find  s save  ? help",
                DIM,
            ));
            Line::from(spans)
        }
    };
    Paragraph::new(line).render(area, buf);
}

fn render_overview(data: &Data, filter: &Filter, area: Rect, buf: &mut Buffer) {
    let [top, sparks] = Layout::vertical([Constraint::Min(0), Constraint::Length(4)]).areas(area);
    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(top);
    let rates = data.rates(filter);
    let c = &data.summary.counts;
    let mut lines = vec![
        Line::from(format!(
            "commands {} in, {} good, {} error",
            c.commands_in, c.commands_good, c.commands_error
        )),
        Line::from(format!(
            "  aborted {}, {}/s now",
            c.commands_aborted,
            rate(rates.aborts)
        )),
        Line::from(format!(
            "  in flight {}{}",
            data.in_flight_total,
            data.in_flight
                .first()
                .and_then(|oldest| oldest.arrived_ns)
                .map(|at| format!(", oldest {}", duration_ns(data.now_ns.saturating_sub(at))))
                .unwrap_or_default()
        )),
        Line::from(format!(
            "TMFs {} ({}/s), {} open",
            c.tmfs,
            rate(rates.tmfs),
            data.open_tmfs.len()
        )),
    ];
    for (outcome, n) in &c.tmfs_by_outcome {
        lines.push(Line::from(format!("  {outcome} {n}")));
    }
    let orphans = c.orphans();
    lines.push(Line::styled(
        format!("orphans {orphans}"),
        if orphans > 0 { ALERT } else { Style::new() },
    ));
    for (kind, n) in &c.orphans_by_kind {
        lines.push(Line::from(format!("  {kind} {n}")));
    }
    Paragraph::new(lines)
        .block(Block::new().borders(Borders::RIGHT))
        .render(left, buf);

    let [by_lun, by_initiator] =
        Layout::vertical([Constraint::Percentage(40), Constraint::Percentage(60)]).areas(right);
    rate_table("LUN", &rates.by_lun, |lun| lun.to_string(), by_lun, buf);
    rate_table(
        "initiator",
        &rates.by_initiator,
        |name| name.clone(),
        by_initiator,
        buf,
    );

    let bins: Vec<_> = data.bins.iter().collect();
    let series: [(&str, Vec<u64>); 3] = [
        ("IOPS", bins.iter().map(|b| b.commands).collect()),
        ("TMFs/s", bins.iter().map(|b| b.tmfs).collect()),
        ("aborts/s", bins.iter().map(|b| b.aborts).collect()),
    ];
    let [title, rows @ ..] = Layout::vertical([Constraint::Length(1); 4]).areas::<4>(sparks);
    Line::styled("per second of trace time", DIM).render(title, buf);
    for ((name, values), row) in series.iter().zip(rows) {
        let [label, spark] =
            Layout::horizontal([Constraint::Length(18), Constraint::Min(0)]).areas(row);
        let last = values.last().copied().unwrap_or(0);
        Line::from(format!("{name:<9}{last:>8} ")).render(label, buf);
        // The newest seconds, as many as fit.
        let shown = &values[values.len().saturating_sub(usize::from(spark.width))..];
        Sparkline::default().data(shown).render(spark, buf);
    }
}

fn rate_table<K>(
    what: &str,
    rates: &BTreeMap<K, f64>,
    name: impl Fn(&K) -> String,
    area: Rect,
    buf: &mut Buffer,
) {
    let mut sorted: Vec<(&K, &f64)> = rates.iter().collect();
    sorted.sort_by(|a, b| b.1.total_cmp(a.1));
    let width = usize::from(area.width.saturating_sub(10));
    let rows = sorted
        .into_iter()
        .map(|(k, v)| Row::new([tail(&name(k), width), rate(*v)]));
    let table = Table::new(rows, [Constraint::Min(0), Constraint::Length(8)])
        .header(Row::new([format!("IOPS by {what}"), "IOPS".to_owned()]).style(HEADER_STYLE));
    Widget::render(table, area, buf);
}

fn render_tmfs(app: &App, data: &Data, area: Rect, buf: &mut Buffer) {
    let rows = data.tmf_rows(&app.filter);
    if rows.is_empty() {
        empty(area, buf, "no TMFs yet", &app.filter);
        return;
    }
    let table_rows = rows.iter().map(|r| {
        let (outcome, style) = tmf_outcome(r);
        Row::new([
            Cell::from(format!("{:.6}", data.relative_s(r.requested_ns()))),
            Cell::from(short_function(r.function())),
            Cell::from(short_initiator(r.initiator(), 10)),
            Cell::from(r.lun().to_string()),
            Cell::from(ref_tag(r.function(), r.tag())),
            Cell::from(outcome).style(style),
            Cell::from(match r {
                TmfRow::Done(t) => t.latency_ns.map(duration_ns).unwrap_or_default(),
                TmfRow::Open(t) => format!(
                    ">{}",
                    duration_ns(data.now_ns.saturating_sub(t.requested_ns))
                ),
            }),
            Cell::from(match r {
                TmfRow::Done(t) => affected_tags(t),
                TmfRow::Open(_) => String::new(),
            }),
        ])
    });
    let table = Table::new(
        table_rows,
        [
            Constraint::Length(9),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Length(3),
            Constraint::Length(10),
            Constraint::Length(13),
            Constraint::Length(7),
            Constraint::Min(0),
        ],
    )
    .header(
        Row::new([
            "time s",
            "function",
            "initiator",
            "LUN",
            "ref tag",
            "outcome",
            "latency",
            "aborted",
        ])
        .style(HEADER_STYLE),
    )
    .row_highlight_style(SELECTED)
    .block(Block::new().title(format!(
        "TMFs: {} shown ({} open)  Enter: timeline",
        rows.len(),
        data.open_tmfs.len()
    )));
    let mut state = TableState::default().with_selected(Some(app.selected_clamped()));
    StatefulWidget::render(table, area, buf, &mut state);
}

fn tmf_outcome(row: &TmfRow<'_>) -> (String, Style) {
    match row {
        TmfRow::Open(t) => (
            format!(
                "open{}",
                t.returned
                    .as_deref()
                    .map(|r| format!(", {r}"))
                    .unwrap_or_default()
            ),
            Style::new().fg(Color::Yellow),
        ),
        TmfRow::Done(t) => {
            let text = match t.outcome {
                TmfOutcome::CompletedWithAborts => "aborted",
                TmfOutcome::CompletedNothingToAbort => "nothing to do",
                TmfOutcome::Deferred => "deferred",
                TmfOutcome::NoTaskNeverExisted => "no task",
                TmfOutcome::NoTaskRace => "no task: race",
                TmfOutcome::NoTaskDeferredThenFinished => "no task: done",
                TmfOutcome::NotSupported => "not supported",
                TmfOutcome::Rejected => "rejected",
                TmfOutcome::NotSupportedByTransport => "not supported (iSCSI)",
                TmfOutcome::RejectedByTransport => "rejected (iSCSI)",
                TmfOutcome::NoTaskNotYetQueued => "no task: not queued",
                TmfOutcome::Unanswered => "UNANSWERED",
            };
            let style = match t.outcome {
                TmfOutcome::Unanswered | TmfOutcome::Rejected | TmfOutcome::NoTaskNotYetQueued => {
                    ALERT
                }
                TmfOutcome::NoTaskNeverExisted | TmfOutcome::NoTaskRace => {
                    Style::new().fg(Color::Yellow)
                }
                _ => Style::new(),
            };
            (text.to_owned(), style)
        }
    }
}

/// The covered commands that were aborted, then those the TMF waited for.
fn affected_tags(t: &TmfRecord) -> String {
    let tags = |fate: Fate| -> Vec<String> {
        t.covered
            .iter()
            .filter(|c| c.fate == fate)
            .map(|c| format!("{:#x}", c.tag))
            .collect()
    };
    let aborted = tags(Fate::Aborted);
    let waited = tags(Fate::Blocked);
    let mut parts = Vec::new();
    if !aborted.is_empty() {
        parts.push(aborted.join(","));
    }
    if !waited.is_empty() {
        parts.push(format!("waited {}", waited.join(",")));
    }
    parts.join(" ")
}

fn render_details(app: &App, data: &Data, area: Rect, buf: &mut Buffer) {
    let rows = data.tmf_rows(&app.filter);
    let Some(row) = rows.get(app.selected_clamped()) else {
        return;
    };
    let popup = inset(area, 2, 1);
    Clear.render(popup, buf);
    let block = Block::bordered().title(" TMF timeline (Esc closes) ");
    let inner = block.inner(popup);
    block.render(popup, buf);
    let mut lines = Vec::new();
    let t = match row {
        TmfRow::Open(t) => {
            lines.push(Line::from(format!(
                "{} LUN {} tag {} from {}: open since {:.6} s, returned {}",
                t.function,
                t.lun,
                ref_tag(&t.function, t.tag),
                t.initiator.as_deref().unwrap_or("?"),
                data.relative_s(t.requested_ns),
                t.returned.as_deref().unwrap_or("not yet")
            )));
            Paragraph::new(lines)
                .wrap(Wrap { trim: false })
                .render(inner, buf);
            return;
        }
        TmfRow::Done(t) => *t,
    };
    lines.push(Line::styled(
        format!(
            "#{} {} LUN {} tag {}: {}",
            t.seq,
            t.function,
            t.lun,
            ref_tag(&t.function, t.tag),
            crate::correlate::outcome_name(t.outcome)
        ),
        HEADER_STYLE,
    ));
    lines.push(Line::from(format!(
        "initiator {} (nexus {}, pid {})",
        t.initiator.as_deref().unwrap_or("?"),
        t.itn_id,
        t.pid
    )));
    lines.push(Line::from(format!(
        "returned {}, response {}{}, latency {}",
        t.returned.as_deref().unwrap_or("-"),
        t.response.map_or("-".to_owned(), |r| r.to_string()),
        if t.response_inferred {
            " (inferred)"
        } else {
            ""
        },
        t.latency_ns.map_or("-".to_owned(), duration_ns)
    )));
    if let Some(cause) = &t.cause {
        lines.push(Line::styled(format!("cause: {cause}"), ALERT));
    }
    if let Some(gap) = t.race_gap_ns {
        lines.push(Line::from(format!(
            "race: the tag was released {} before the request",
            duration_ns(gap)
        )));
    }
    lines.push(Line::styled("time from the request:", HEADER_STYLE));
    let mut timeline: Vec<(i128, String)> = vec![(0, "request".to_owned())];
    let at = |ns: u64| i128::from(ns) - i128::from(t.requested_ns);
    for c in &t.covered {
        let who = if c.other_initiator {
            format!(
                " ({}, other initiator)",
                tail(c.initiator.as_deref().unwrap_or("?"), 24)
            )
        } else {
            String::new()
        };
        if c.arrived_ns > 0 {
            timeline.push((
                at(c.arrived_ns),
                format!("{:#x} arrived, LUN {}{who}", c.tag, c.lun),
            ));
        }
        let what = match c.fate {
            Fate::Aborted => "aborted (TASK_ABORTED)".to_owned(),
            Fate::Blocked => match c.blocked_ns {
                Some(b) => format!("released; the TMF waited {} for it", duration_ns(b)),
                None => "still holding the TMF".to_owned(),
            },
            Fate::Completed => "completed normally".to_owned(),
            Fate::Pending => "fate unknown".to_owned(),
        };
        match c.at_ns {
            Some(ns) => timeline.push((at(ns), format!("{:#x} {what}", c.tag))),
            None => timeline.push((i128::MAX, format!("{:#x} {what}", c.tag))),
        }
    }
    if let Some(ns) = t.responded_ns {
        timeline.push((
            at(ns),
            format!(
                "response {}",
                t.response.map_or("-".to_owned(), |r| r.to_string())
            ),
        ));
    }
    timeline.sort_by_key(|(offset, _)| *offset);
    for (offset, what) in timeline {
        let when = if offset == i128::MAX {
            "never".to_owned()
        } else if offset < 0 {
            format!(
                "-{}",
                duration_ns(u64::try_from(-offset).unwrap_or(u64::MAX))
            )
        } else {
            format!(
                "+{}",
                duration_ns(u64::try_from(offset).unwrap_or(u64::MAX))
            )
        };
        lines.push(Line::from(format!("  {when:>10}  {what}")));
    }
    for o in data.orphans.iter().filter(|o| o.tmf_seq == Some(t.seq)) {
        lines.push(Line::styled(
            format!(
                "orphan {}: {}",
                crate::correlate::orphan_name(o.kind),
                o.detail
            ),
            ALERT,
        ));
    }
    Paragraph::new(lines)
        .wrap(Wrap { trim: false })
        .render(inner, buf);
}

fn render_in_flight(app: &App, data: &Data, area: Rect, buf: &mut Buffer) {
    let queue = data.info.as_ref().map(|i| {
        i.probes
            .iter()
            .find(|p| p.name == crate::points::Point::Queue && p.attached)
            .map(|p| p.sampled)
    });
    let why = match queue {
        Some(None) => {
            Some("the queue probe is not attached (tmf probe set): commands in flight are not seen")
        }
        // A window's arrivals feed its latency histograms only.
        Some(Some(true)) => Some(
            "the queue probe is attached in --sample's windows only: commands in flight are not \
             tracked",
        ),
        _ => None,
    };
    if let Some(why) = why {
        empty(area, buf, why, &Filter::default());
        return;
    }
    let rows = data.in_flight_rows(&app.filter);
    if rows.is_empty() {
        empty(area, buf, "no commands in flight", &app.filter);
        return;
    }
    let table_rows = rows.iter().map(|c| {
        let blocks = if c.blocking.is_empty() {
            Cell::from("")
        } else {
            let seqs: Vec<String> = c.blocking.iter().map(|s| format!("#{s}")).collect();
            Cell::from(format!("BLOCKS TMF {}", seqs.join(","))).style(ALERT)
        };
        Row::new([
            Cell::from(
                c.arrived_ns
                    .map(|at| duration_ns(data.now_ns.saturating_sub(at)))
                    .unwrap_or_else(|| "?".to_owned()),
            ),
            Cell::from(format!("{:#x}", c.tag)),
            Cell::from(c.lun.map_or("?".to_owned(), |l| l.to_string())),
            Cell::from(c.opcode.map_or("?".to_owned(), |op| {
                format!("{op:#04x} {}", OpClass::of(op).name())
            })),
            Cell::from(short_initiator(c.initiator.as_deref(), 22)),
            blocks,
        ])
    });
    let table = Table::new(
        table_rows,
        [
            Constraint::Length(9),
            Constraint::Length(10),
            Constraint::Length(3),
            Constraint::Length(10),
            Constraint::Length(22),
            Constraint::Min(0),
        ],
    )
    .header(Row::new(["age", "tag", "LUN", "opcode", "initiator", ""]).style(HEADER_STYLE))
    .row_highlight_style(SELECTED)
    .block(Block::new().title(format!(
        "In flight: {} (oldest first; {} listed)",
        data.in_flight_total,
        rows.len()
    )));
    let mut state = TableState::default().with_selected(Some(app.selected_clamped()));
    StatefulWidget::render(table, area, buf, &mut state);
}

/// The histograms the filter lets through, by name.
pub fn histogram_rows<'d>(data: &'d Data, filter: &Filter) -> Vec<(String, &'d LatencySummary)> {
    let h = &data.summary.histograms;
    let command = match h.sampling {
        Some(s) => format!("command ({}% sampled)", s.percent),
        None => "command".to_owned(),
    };
    let mut rows = vec![(command, &h.command)];
    for (class, s) in &h.command_by_class {
        let shown = match filter.op {
            Some(OpFilter::Class(c)) => c.name() == class,
            Some(OpFilter::Code(code)) => OpClass::of(code).name() == class,
            None => true,
        };
        if shown {
            rows.push((format!("command {class}"), s));
        }
    }
    for (lun, s) in &h.command_by_lun {
        if filter.lun.is_none_or(|want| want.to_string() == *lun) {
            rows.push((format!("command LUN {lun}"), s));
        }
    }
    for (function, s) in &h.tmf_by_function {
        if filter
            .function
            .as_deref()
            .is_none_or(|want| want.eq_ignore_ascii_case(function))
        {
            rows.push((format!("TMF {}", short_function(function)), s));
        }
    }
    rows.push(("abort".to_owned(), &h.abort));
    rows.push(("aborted cmd age".to_owned(), &h.aborted_in_flight));
    rows.push(("deferred wait".to_owned(), &h.deferred_wait));
    rows
}

fn render_histograms(app: &App, data: &Data, area: Rect, buf: &mut Buffer) {
    let rows = histogram_rows(data, &app.filter);
    let height = u16::try_from(rows.len() + 2)
        .unwrap_or(u16::MAX)
        .min(area.height / 2 + 2);
    let [table_area, chart_area] =
        Layout::vertical([Constraint::Length(height), Constraint::Min(0)]).areas(area);
    let table = Table::new(
        rows.iter().map(|(name, s)| {
            // An empty histogram has no percentiles, not zero ones.
            let at = |value: u64| {
                if s.count == 0 {
                    "-".to_owned()
                } else {
                    us(value)
                }
            };
            Row::new(
                [
                    name.clone(),
                    s.count.to_string(),
                    at(s.p50_us),
                    at(s.p90_us),
                    at(s.p99_us),
                    at(s.p999_us),
                    at(s.max_us),
                ]
                .map(Cell::from),
            )
        }),
        [
            Constraint::Length(22),
            Constraint::Length(7),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(8),
        ],
    )
    .header(
        Row::new([
            // The matcher keeps no histogram per initiator: say that an
            // initiator filter does not narrow these.
            if app.filter.initiator.is_some() {
                "all initiators"
            } else {
                "latency"
            },
            "count",
            "p50",
            "p90",
            "p99",
            "p99.9",
            "max",
        ])
        .style(HEADER_STYLE),
    )
    .row_highlight_style(SELECTED);
    let selected = app.selected_clamped();
    let mut state = TableState::default().with_selected(Some(selected));
    StatefulWidget::render(table, table_area, buf, &mut state);
    let Some((name, summary)) = rows.get(selected) else {
        return;
    };
    let block = Block::new()
        .borders(Borders::TOP)
        .title(format!("{name}: count by latency (µs)"));
    let inner = block.inner(chart_area);
    block.render(chart_area, buf);
    let bins = power_of_two_bins(&summary.buckets);
    if bins.is_empty() {
        Line::styled("no samples", DIM).render(inner, buf);
        return;
    }
    let most = bins.iter().map(|b| b.1).max().unwrap_or(1).max(1);
    let bar_width = u64::from(inner.width.saturating_sub(20));
    let lines: Vec<Line> = bins
        .iter()
        .map(|&(upper, count)| {
            let len = usize::try_from(count * bar_width / most).unwrap_or(0);
            let len = if count > 0 { len.max(1) } else { 0 };
            Line::from(format!(
                "{:>9} {} {count}",
                format!("<={}", us(upper)),
                "#".repeat(len)
            ))
        })
        .collect();
    // The slowest bins matter most: they are kept when not all fit.
    let skip = lines.len().saturating_sub(usize::from(inner.height));
    Paragraph::new(lines.into_iter().skip(skip).collect::<Vec<_>>()).render(inner, buf);
}

/// hdrhistogram's fine buckets regrouped by powers of two, from the lowest
/// non-empty one to the highest, empty ones between kept.
pub fn power_of_two_bins(buckets: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut by_exp: BTreeMap<u32, u64> = BTreeMap::new();
    for &(upper, count) in buckets {
        let exp = upper.max(1).next_power_of_two().trailing_zeros();
        *by_exp.entry(exp).or_default() += count;
    }
    let (Some((&low, _)), Some((&high, _))) = (by_exp.first_key_value(), by_exp.last_key_value())
    else {
        return Vec::new();
    };
    (low..=high)
        .map(|e| (1u64 << e, by_exp.get(&e).copied().unwrap_or(0)))
        .collect()
}

fn render_orphans(app: &App, data: &Data, area: Rect, buf: &mut Buffer) {
    let rows = data.orphan_rows(&app.filter);
    if rows.is_empty() {
        empty(area, buf, "no orphans", &app.filter);
        return;
    }
    let [list, detail] = Layout::vertical([Constraint::Min(3), Constraint::Length(5)]).areas(area);
    let table = Table::new(
        rows.iter().map(|o| {
            Row::new([
                format!("{:.6}", data.relative_s(o.at_ns)),
                short_orphan(o.kind).to_owned(),
                short_initiator(o.initiator.as_deref(), 20),
                o.lun.to_string(),
                format!("{:#x}", o.tag),
                o.function
                    .as_deref()
                    .map(short_function)
                    .unwrap_or_default(),
            ])
        }),
        [
            Constraint::Length(9),
            Constraint::Length(15),
            Constraint::Length(20),
            Constraint::Length(3),
            Constraint::Length(10),
            Constraint::Min(0),
        ],
    )
    .header(Row::new(["time s", "cause", "initiator", "LUN", "tag", "TMF"]).style(HEADER_STYLE))
    .row_highlight_style(SELECTED)
    .block(Block::new().title(format!("Orphans: {}", rows.len())));
    let selected = app.selected_clamped();
    let mut state = TableState::default().with_selected(Some(selected));
    StatefulWidget::render(table, list, buf, &mut state);
    if let Some(o) = rows.get(selected) {
        let mut text = vec![Line::styled(
            format!(
                "{} (nexus {}, pid {}{})",
                crate::correlate::orphan_name(o.kind),
                o.itn_id,
                o.pid,
                o.tmf_seq.map(|s| format!(", TMF #{s}")).unwrap_or_default()
            ),
            HEADER_STYLE,
        )];
        text.push(Line::from(o.detail.clone()));
        Paragraph::new(text)
            .wrap(Wrap { trim: false })
            .block(Block::new().borders(Borders::TOP))
            .render(detail, buf);
    }
}

fn render_help(app: &App, area: Rect, buf: &mut Buffer) {
    let popup = inset(area, 4, 2);
    Clear.render(popup, buf);
    let mut lines = vec![
        "q, Ctrl-C     quit",
        "Tab, 1-5      switch view (Shift-Tab back)",
        "Up/Down j/k   select a row (PgUp/PgDn, Home/End)",
        "Enter         TMFs: the selected TMF's timeline",
        "p             pause the screen (data keeps coming)",
        "f             filter: lun=N init=TEXT op=read|write|other|0xNN",
        "              fn=ABORT_TASK|LOGICAL_UNIT_RESET|...; empty clears",
        "/             find a tag (0x... or decimal)",
        "s             save the screen (.txt) and its records (.ndjson)",
        "?, Esc        close this help",
    ];
    if app.stepping {
        lines.push("space, n      step: apply the next batch of events");
    }
    Paragraph::new(lines.into_iter().map(Line::from).collect::<Vec<_>>())
        .block(Block::bordered().title(" keys "))
        .render(popup, buf);
}

fn empty(area: Rect, buf: &mut Buffer, what: &str, filter: &Filter) {
    let text = if filter.is_empty() {
        what.to_owned()
    } else {
        format!("{what} (filter: {}; f to change)", filter.describe())
    };
    Paragraph::new(Line::styled(text, DIM))
        .wrap(Wrap { trim: true })
        .render(area, buf);
}

fn inset(area: Rect, x: u16, y: u16) -> Rect {
    Rect {
        x: area.x + x.min(area.width / 4),
        y: area.y + y.min(area.height / 4),
        width: area.width.saturating_sub(2 * x.min(area.width / 4)),
        height: area.height.saturating_sub(2 * y.min(area.height / 4)),
    }
}

/// LOGICAL_UNIT_RESET is long for a column; the others fit.
fn short_function(function: &str) -> String {
    match function {
        "LOGICAL_UNIT_RESET" => "LUN_RESET".to_owned(),
        other => other.to_owned(),
    }
}

fn short_orphan(kind: OrphanKind) -> &'static str {
    match kind {
        OrphanKind::TmfFoundNoTask => "TMF found none",
        OrphanKind::AbortWithoutTmf => "abort, no TMF",
        OrphanKind::TmfUnanswered => "TMF unanswered",
        OrphanKind::BlockerNeverReleased => "blocker stuck",
        OrphanKind::AbortedCommandRan => "aborted, ran",
    }
}

/// The referenced tag matters for ABORT TASK only; the others carry a dummy.
fn ref_tag(function: &str, tag: u64) -> String {
    if function == "ABORT_TASK" {
        format!("{tag:#x}")
    } else {
        "-".to_owned()
    }
}

/// An iSCSI name's last part (`iqn….:iscsi-test` → `iscsi-test`), which
/// tells initiators apart, cut to `width` from its end.
fn short_initiator(name: Option<&str>, width: usize) -> String {
    let name = name.unwrap_or("?");
    let last = name
        .rsplit(':')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(name);
    tail(last, width)
}

/// The end of a long name: initiator names differ at their ends.
pub fn tail(text: &str, width: usize) -> String {
    let count = text.chars().count();
    if count <= width {
        return text.to_owned();
    }
    if width == 0 {
        return String::new();
    }
    let keep: String = text.chars().skip(count - (width - 1)).collect();
    format!("…{keep}")
}

pub fn duration_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns}ns"),
        1_000..1_000_000 => format!("{}µs", ns / 1_000),
        1_000_000..1_000_000_000 => format!("{:.1}ms", ns as f64 / 1e6),
        _ => format!("{:.2}s", ns as f64 / 1e9),
    }
}

fn us(value: u64) -> String {
    duration_ns(value.saturating_mul(1_000))
}

fn rate(per_second: f64) -> String {
    if per_second >= 10_000.0 {
        format!("{:.0}k", per_second / 1e3)
    } else if per_second >= 1_000.0 {
        format!("{:.1}k", per_second / 1e3)
    } else {
        format!("{per_second:.0}")
    }
}

/// A buffer's text, one line per row, trailing blanks trimmed: what `s`
/// saves and what the render tests compare.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut text = String::new();
    for y in area.top()..area.bottom() {
        let mut line = String::new();
        let mut skip = 0;
        for x in area.left()..area.right() {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let symbol = buf[(x, y)].symbol();
            // A wide character covers the cell after it.
            skip = unicode_width(symbol).saturating_sub(1);
            line.push_str(symbol);
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

fn unicode_width(symbol: &str) -> usize {
    Line::raw(symbol).width().max(1)
}
