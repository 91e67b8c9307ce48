//! The screen's state and what each key does to it. No I/O: a key that needs
//! some (save, step, quit) returns an [`Effect`] for the loop to carry out.

use std::collections::{BTreeMap, VecDeque};

use ratatui::crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

use super::feed::{ArrivalKey, Batch, Ended, OpenTmf, TraceInfo, Update};
use crate::{
    correlate::{CommandOutcome, Counts, InFlight, OrphanRecord, Record, Summary, TmfRecord},
    event::OpClass,
    plausible::LayoutViolations,
    stats::StatsSummary,
    trace::{Drops, SinkLoss},
};

/// Concluded TMFs and orphans kept for the lists; the oldest go first.
pub const KEPT_RECORDS: usize = 10_000;
/// Rates are taken over this much stream time.
pub const RATE_WINDOW_NS: u64 = 1_000_000_000;
/// Sparkline bins: one per second of stream time, this many kept.
pub const BIN_NS: u64 = 1_000_000_000;
pub const BINS_KEPT: usize = 300;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    Overview,
    Tmfs,
    InFlight,
    Histograms,
    Orphans,
}

impl View {
    pub const ALL: [View; 5] = [
        View::Overview,
        View::Tmfs,
        View::InFlight,
        View::Histograms,
        View::Orphans,
    ];

    pub fn title(self) -> &'static str {
        match self {
            View::Overview => "Overview",
            View::Tmfs => "TMFs",
            View::InFlight => "In flight",
            View::Histograms => "Histograms",
            View::Orphans => "Orphans",
        }
    }

    pub fn index(self) -> usize {
        match self {
            View::Overview => 0,
            View::Tmfs => 1,
            View::InFlight => 2,
            View::Histograms => 3,
            View::Orphans => 4,
        }
    }

    fn from_index(i: usize) -> View {
        View::ALL[i % View::ALL.len()]
    }
}

/// What a key asks of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Quit,
    /// Step mode: apply the next batch.
    Step,
    /// Save the screen as text and the visible records as NDJSON.
    Save,
}

/// Where keys go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    Normal,
    /// Typing a filter.
    Filter(String),
    /// Typing a tag to find.
    Find(String),
    Help,
    /// The selected TMF's timeline.
    Details,
}

/// Which opcodes a filter keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpFilter {
    Class(OpClass),
    Code(u8),
}

impl OpFilter {
    pub fn matches(self, opcode: u8) -> bool {
        match self {
            OpFilter::Class(class) => OpClass::of(opcode) == class,
            OpFilter::Code(code) => opcode == code,
        }
    }
}

/// What the lists and rates are narrowed to. A part that does not apply to
/// a row (an opcode for a TMF) does not hide it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub lun: Option<u64>,
    /// A part of the initiator's name.
    pub initiator: Option<String>,
    pub op: Option<OpFilter>,
    /// A TMF function name, e.g. ABORT_TASK (any case).
    pub function: Option<String>,
}

impl Filter {
    /// `lun=1 init=iscsi-test op=read fn=abort_task`; empty clears.
    pub fn parse(text: &str) -> Result<Filter, String> {
        let mut filter = Filter::default();
        for part in text.split_whitespace() {
            let (key, value) = part
                .split_once('=')
                .ok_or_else(|| format!("'{part}': write KEY=VALUE (lun, init, op, fn)"))?;
            match key {
                "lun" => {
                    filter.lun = Some(
                        value
                            .parse()
                            .map_err(|_| format!("lun={value}: a LUN is a number"))?,
                    );
                }
                "init" | "initiator" => filter.initiator = Some(value.to_owned()),
                "op" | "opcode" => {
                    filter.op = Some(match value {
                        "read" => OpFilter::Class(OpClass::Read),
                        "write" => OpFilter::Class(OpClass::Write),
                        "other" => OpFilter::Class(OpClass::Other),
                        _ => OpFilter::Code(parse_number(value).and_then(|v| u8::try_from(v).ok()).ok_or_else(
                            || format!("op={value}: give read, write, other or an opcode such as 0x28"),
                        )?),
                    });
                }
                "fn" | "tmf" | "function" => filter.function = Some(value.to_uppercase()),
                _ => return Err(format!("'{key}' is not a filter; use lun, init, op or fn")),
            }
        }
        Ok(filter)
    }

    pub fn is_empty(&self) -> bool {
        *self == Filter::default()
    }

    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        if let Some(lun) = self.lun {
            parts.push(format!("lun={lun}"));
        }
        if let Some(i) = &self.initiator {
            parts.push(format!("init={i}"));
        }
        match self.op {
            Some(OpFilter::Class(c)) => parts.push(format!("op={}", c.name())),
            Some(OpFilter::Code(c)) => parts.push(format!("op={c:#04x}")),
            None => {}
        }
        if let Some(f) = &self.function {
            parts.push(format!("fn={f}"));
        }
        parts.join(" ")
    }

    fn lun_ok(&self, lun: Option<u64>) -> bool {
        match (self.lun, lun) {
            (Some(want), Some(lun)) => want == lun,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    fn initiator_ok(&self, name: Option<&str>) -> bool {
        match &self.initiator {
            Some(want) => name.is_some_and(|n| n.contains(want.as_str())),
            None => true,
        }
    }

    fn function_ok(&self, function: Option<&str>) -> bool {
        match &self.function {
            Some(want) => function.is_some_and(|f| f.eq_ignore_ascii_case(want)),
            None => true,
        }
    }

    pub fn tmf(&self, t: &TmfRow<'_>) -> bool {
        self.lun_ok(Some(t.lun()))
            && self.initiator_ok(t.initiator())
            && self.function_ok(Some(t.function()))
    }

    pub fn in_flight(&self, c: &InFlight) -> bool {
        self.lun_ok(c.lun)
            && self.initiator_ok(c.initiator.as_deref())
            && self
                .op
                .is_none_or(|op| c.opcode.is_some_and(|code| op.matches(code)))
    }

    pub fn orphan(&self, o: &OrphanRecord) -> bool {
        self.lun_ok(Some(o.lun))
            && self.initiator_ok(o.initiator.as_deref())
            && (self.function.is_none() || self.function_ok(o.function.as_deref()))
    }

    pub fn arrival(&self, a: &ArrivalKey) -> bool {
        self.lun_ok(Some(a.lun))
            && self.initiator_ok(Some(&a.initiator))
            && self.op.is_none_or(|op| op.matches(a.opcode))
    }
}

/// A tag typed as hex (0x…) or decimal.
pub fn parse_number(text: &str) -> Option<u64> {
    let text = text.trim();
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// A row of the TMF list: concluded, or still open.
#[derive(Debug, Clone, Copy)]
pub enum TmfRow<'a> {
    Done(&'a TmfRecord),
    Open(&'a OpenTmf),
}

impl<'a> TmfRow<'a> {
    pub fn requested_ns(&self) -> u64 {
        match self {
            TmfRow::Done(t) => t.requested_ns,
            TmfRow::Open(t) => t.requested_ns,
        }
    }

    pub fn function(&self) -> &'a str {
        match self {
            TmfRow::Done(t) => &t.function,
            TmfRow::Open(t) => &t.function,
        }
    }

    pub fn initiator(&self) -> Option<&'a str> {
        match self {
            TmfRow::Done(t) => t.initiator.as_deref(),
            TmfRow::Open(t) => t.initiator.as_deref(),
        }
    }

    pub fn lun(&self) -> u64 {
        match self {
            TmfRow::Done(t) => t.lun,
            TmfRow::Open(t) => t.lun,
        }
    }

    pub fn tag(&self) -> u64 {
        match self {
            TmfRow::Done(t) => t.tag,
            TmfRow::Open(t) => t.tag,
        }
    }

    fn has_tag(&self, tag: u64) -> bool {
        self.tag() == tag
            || matches!(self, TmfRow::Done(t) if t.covered.iter().any(|c| c.tag == tag))
    }
}

/// One batch's counts, kept for the rates.
#[derive(Debug, Clone)]
struct Tick {
    now_ns: u64,
    events: u64,
    arrivals: BTreeMap<ArrivalKey, u64>,
    tmfs: u64,
    aborts: u64,
}

/// One second of stream time, for the sparklines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bin {
    pub second: u64,
    pub commands: u64,
    pub tmfs: u64,
    pub aborts: u64,
}

/// Everything the trace told so far. Frozen copies of it are shown while paused.
#[derive(Debug, Clone)]
pub struct Data {
    pub info: Option<TraceInfo>,
    pub ended: Option<Ended>,
    pub events: u64,
    pub first_ns: Option<u64>,
    pub now_ns: u64,
    ticks: VecDeque<Tick>,
    pub bins: VecDeque<Bin>,
    pub tmfs: VecDeque<TmfRecord>,
    pub open_tmfs: Vec<OpenTmf>,
    pub orphans: VecDeque<OrphanRecord>,
    pub in_flight: Vec<InFlight>,
    pub in_flight_total: usize,
    pub summary: Summary,
    pub drops: Drops,
    /// What the recording's sinks (the screen among them) could not take.
    pub sinks: Vec<SinkLoss>,
    /// What the runtime layout checks found.
    pub layout_violations: LayoutViolations,
    /// Lines of the trace that could not be read, and why (the last one).
    pub problem: Option<String>,
}

impl Default for Data {
    fn default() -> Self {
        Data {
            info: None,
            ended: None,
            events: 0,
            first_ns: None,
            now_ns: 0,
            ticks: VecDeque::new(),
            bins: VecDeque::new(),
            tmfs: VecDeque::new(),
            open_tmfs: Vec::new(),
            orphans: VecDeque::new(),
            in_flight: Vec::new(),
            in_flight_total: 0,
            summary: Summary {
                counts: Counts::default(),
                histograms: StatsSummary::default(),
            },
            drops: Drops::default(),
            sinks: Vec::new(),
            layout_violations: LayoutViolations::default(),
            problem: None,
        }
    }
}

/// Per-second rates over the last [`RATE_WINDOW_NS`] of stream time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rates {
    pub events: f64,
    pub commands: f64,
    pub tmfs: f64,
    pub aborts: f64,
    pub by_lun: BTreeMap<u64, f64>,
    pub by_initiator: BTreeMap<String, f64>,
}

impl Data {
    pub fn apply(&mut self, update: Update) {
        match update {
            Update::Started(info) => self.info = Some(info),
            Update::Batch(batch) => self.batch(*batch),
            Update::Ended(ended) => self.ended = Some(ended),
        }
    }

    fn batch(&mut self, batch: Batch) {
        if self.first_ns.is_none() {
            self.first_ns = batch.first_ns;
        }
        self.events += batch.events;
        self.now_ns = self.now_ns.max(batch.now_ns);
        let mut aborts = 0;
        for record in batch.records {
            match record {
                Record::Tmf(t) => push_bounded(&mut self.tmfs, t),
                Record::Orphan(o) => push_bounded(&mut self.orphans, o),
                Record::Command(c) => {
                    if c.outcome == CommandOutcome::Aborted {
                        aborts += 1;
                    }
                }
            }
        }
        let commands: u64 = batch.arrivals.values().sum();
        self.bin(commands, batch.tmf_requests, aborts);
        self.ticks.push_back(Tick {
            now_ns: batch.now_ns,
            events: batch.events,
            arrivals: batch.arrivals,
            tmfs: batch.tmf_requests,
            aborts,
        });
        let horizon = self.now_ns.saturating_sub(RATE_WINDOW_NS);
        while self.ticks.front().is_some_and(|t| t.now_ns < horizon) {
            self.ticks.pop_front();
        }
        self.open_tmfs = batch.open_tmfs;
        self.in_flight = batch.in_flight;
        self.in_flight_total = batch.in_flight_total;
        self.summary = batch.summary;
        if let Some(drops) = batch.drops {
            self.drops = drops;
        }
        if !batch.sinks.is_empty() {
            self.sinks = batch.sinks;
        }
        if let Some(found) = batch.layout_violations {
            self.layout_violations = found;
        }
    }

    fn bin(&mut self, commands: u64, tmfs: u64, aborts: u64) {
        let second = self.now_ns / BIN_NS;
        if self.bins.back().is_none_or(|b| b.second < second) {
            // Quiet seconds show as zeros, up to what is kept.
            let from = self.bins.back().map_or(second, |b| {
                (b.second + 1).max(second.saturating_sub(BINS_KEPT as u64))
            });
            for s in from..=second {
                self.bins.push_back(Bin {
                    second: s,
                    ..Bin::default()
                });
            }
            while self.bins.len() > BINS_KEPT {
                self.bins.pop_front();
            }
        }
        if let Some(b) = self.bins.back_mut() {
            b.commands += commands;
            b.tmfs += tmfs;
            b.aborts += aborts;
        }
    }

    /// Seconds of stream time the rates are over: the window, or less at
    /// the start of a trace.
    fn rate_span_s(&self) -> f64 {
        let span = match self.first_ns {
            Some(first) => self.now_ns.saturating_sub(first).min(RATE_WINDOW_NS),
            None => 0,
        };
        span.max(1_000_000) as f64 / 1e9
    }

    pub fn rates(&self, filter: &Filter) -> Rates {
        let span = self.rate_span_s();
        let mut rates = Rates::default();
        for tick in &self.ticks {
            rates.events += tick.events as f64;
            rates.tmfs += tick.tmfs as f64;
            rates.aborts += tick.aborts as f64;
            for (key, n) in &tick.arrivals {
                if filter.arrival(key) {
                    rates.commands += *n as f64;
                    *rates.by_lun.entry(key.lun).or_default() += *n as f64;
                    *rates.by_initiator.entry(key.initiator.clone()).or_default() += *n as f64;
                }
            }
        }
        rates.events /= span;
        rates.commands /= span;
        rates.tmfs /= span;
        rates.aborts /= span;
        rates.by_lun.values_mut().for_each(|v| *v /= span);
        rates.by_initiator.values_mut().for_each(|v| *v /= span);
        rates
    }

    /// Stream time since tracing started (or since the first event).
    pub fn elapsed_ns(&self) -> u64 {
        let start = self
            .info
            .as_ref()
            .map(|i| i.start_monotonic_ns)
            .filter(|&s| s > 0 && s <= self.now_ns)
            .or(self.first_ns)
            .unwrap_or(self.now_ns);
        self.now_ns.saturating_sub(start)
    }

    /// A timestamp as seconds since the trace started.
    pub fn relative_s(&self, ts_ns: u64) -> f64 {
        let start = self
            .info
            .as_ref()
            .map(|i| i.start_monotonic_ns)
            .filter(|&s| s > 0 && s <= ts_ns)
            .or(self.first_ns)
            .unwrap_or(ts_ns);
        ts_ns.saturating_sub(start) as f64 / 1e9
    }

    /// TMF rows, concluded and open, in request order, filtered.
    pub fn tmf_rows(&self, filter: &Filter) -> Vec<TmfRow<'_>> {
        let mut rows: Vec<TmfRow<'_>> = self
            .tmfs
            .iter()
            .map(TmfRow::Done)
            .chain(self.open_tmfs.iter().map(TmfRow::Open))
            .filter(|r| filter.tmf(r))
            .collect();
        rows.sort_by_key(|r| r.requested_ns());
        rows
    }

    pub fn in_flight_rows(&self, filter: &Filter) -> Vec<&InFlight> {
        self.in_flight
            .iter()
            .filter(|c| filter.in_flight(c))
            .collect()
    }

    pub fn orphan_rows(&self, filter: &Filter) -> Vec<&OrphanRecord> {
        self.orphans.iter().filter(|o| filter.orphan(o)).collect()
    }

    /// The TMF a sequence number names, if still kept.
    pub fn tmf_by_seq(&self, seq: u64) -> Option<&TmfRecord> {
        self.tmfs.iter().find(|t| t.seq == seq)
    }
}

fn push_bounded<T>(list: &mut VecDeque<T>, item: T) {
    if list.len() >= KEPT_RECORDS {
        list.pop_front();
    }
    list.push_back(item);
}

/// The whole state of the screen.
#[derive(Debug, Clone)]
pub struct App {
    live: Data,
    /// While paused, what the screen shows; `live` keeps collecting.
    frozen: Option<Data>,
    pub view: View,
    pub mode: Mode,
    pub filter: Filter,
    /// The selected row of each view.
    selected: [usize; 5],
    /// A one-line message: what a key did, or why it could not.
    pub status: Option<String>,
    /// Replay one batch per key.
    pub stepping: bool,
}

impl Default for App {
    fn default() -> Self {
        App::new(false)
    }
}

impl App {
    pub fn new(stepping: bool) -> App {
        App {
            live: Data::default(),
            frozen: None,
            view: View::Overview,
            mode: Mode::Normal,
            filter: Filter::default(),
            selected: [0; 5],
            status: None,
            stepping,
        }
    }

    /// What the screen shows.
    pub fn data(&self) -> &Data {
        self.frozen.as_ref().unwrap_or(&self.live)
    }

    /// What the trace told so far, paused or not.
    pub fn latest(&self) -> &Data {
        &self.live
    }

    pub fn paused(&self) -> bool {
        self.frozen.is_some()
    }

    pub fn apply(&mut self, update: Update) {
        self.live.apply(update);
    }

    /// The trace could not be read further.
    pub fn problem(&mut self, message: String) {
        self.live.problem = Some(message);
    }

    pub fn selected(&self) -> usize {
        self.selected[self.view.index()]
    }

    fn rows_in_view(&self) -> usize {
        let data = self.data();
        match self.view {
            View::Overview => 0,
            View::Tmfs => data.tmf_rows(&self.filter).len(),
            View::InFlight => data.in_flight_rows(&self.filter).len(),
            View::Histograms => super::ui::histogram_rows(data, &self.filter).len(),
            View::Orphans => data.orphan_rows(&self.filter).len(),
        }
    }

    /// The selected row, clamped to the rows there are now.
    pub fn selected_clamped(&self) -> usize {
        self.selected().min(self.rows_in_view().saturating_sub(1))
    }

    pub fn on_key(&mut self, key: KeyEvent) -> Option<Effect> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            return Some(Effect::Quit);
        }
        match std::mem::replace(&mut self.mode, Mode::Normal) {
            Mode::Normal => self.normal_key(key),
            Mode::Help => {
                if !matches!(key.code, KeyCode::Esc | KeyCode::Char('?' | 'q')) {
                    self.mode = Mode::Help;
                }
                None
            }
            Mode::Details => {
                match key.code {
                    KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q') => {}
                    _ => self.mode = Mode::Details,
                }
                None
            }
            Mode::Filter(text) => {
                self.mode = self.typing(key, text, Mode::Filter, |app, text| {
                    match Filter::parse(text) {
                        Ok(filter) => {
                            app.status = Some(if filter.is_empty() {
                                "filter cleared".to_owned()
                            } else {
                                format!("filter: {}", filter.describe())
                            });
                            app.filter = filter;
                            app.selected = [0; 5];
                        }
                        Err(e) => app.status = Some(e),
                    }
                });
                None
            }
            Mode::Find(text) => {
                self.mode = self.typing(key, text, Mode::Find, |app, text| {
                    match parse_number(text) {
                        Some(tag) => app.find_tag(tag),
                        None => {
                            app.status = Some(format!("'{text}' is not a tag: give 0x… or decimal"))
                        }
                    }
                });
                None
            }
        }
    }

    /// A line being typed: Enter hands it to `done`, Esc drops it, other
    /// keys edit it and `again` keeps the mode.
    fn typing(
        &mut self,
        key: KeyEvent,
        mut text: String,
        again: fn(String) -> Mode,
        done: impl FnOnce(&mut App, &str),
    ) -> Mode {
        match key.code {
            KeyCode::Enter => {
                done(self, text.trim());
                Mode::Normal
            }
            KeyCode::Esc => Mode::Normal,
            KeyCode::Backspace => {
                text.pop();
                again(text)
            }
            KeyCode::Char(c) => {
                text.push(c);
                again(text)
            }
            _ => again(text),
        }
    }

    fn normal_key(&mut self, key: KeyEvent) -> Option<Effect> {
        match key.code {
            KeyCode::Char('q') => return Some(Effect::Quit),
            KeyCode::Tab => self.view = View::from_index(self.view.index() + 1),
            KeyCode::BackTab => self.view = View::from_index(self.view.index() + 4),
            KeyCode::Char(c @ '1'..='5') => {
                self.view = View::from_index(usize::from(c as u8 - b'1'));
            }
            KeyCode::Char('p') => self.toggle_pause(),
            KeyCode::Char('?') => self.mode = Mode::Help,
            KeyCode::Char('f') => self.mode = Mode::Filter(self.filter.describe()),
            KeyCode::Char('/') => self.mode = Mode::Find(String::new()),
            KeyCode::Char('s') => return Some(Effect::Save),
            KeyCode::Char(' ' | 'n') if self.stepping => return Some(Effect::Step),
            KeyCode::Enter if self.view == View::Tmfs && self.rows_in_view() > 0 => {
                self.mode = Mode::Details;
            }
            KeyCode::Down | KeyCode::Char('j') => self.move_selection(1),
            KeyCode::Up | KeyCode::Char('k') => self.move_selection(-1),
            KeyCode::PageDown => self.move_selection(10),
            KeyCode::PageUp => self.move_selection(-10),
            KeyCode::Home | KeyCode::Char('g') => self.selected[self.view.index()] = 0,
            KeyCode::End | KeyCode::Char('G') => {
                self.selected[self.view.index()] = self.rows_in_view().saturating_sub(1);
            }
            _ => {}
        }
        None
    }

    fn toggle_pause(&mut self) {
        self.frozen = match self.frozen.take() {
            Some(_) => None,
            None => Some(self.live.clone()),
        };
    }

    fn move_selection(&mut self, by: isize) {
        let last = self.rows_in_view().saturating_sub(1);
        let now = self.selected_clamped();
        self.selected[self.view.index()] = now.saturating_add_signed(by).min(last);
    }

    /// Selects the first row with the tag: in this view, else the next view that has one.
    fn find_tag(&mut self, tag: u64) {
        let order = [View::Tmfs, View::InFlight, View::Orphans];
        let start = order.iter().position(|v| *v == self.view).unwrap_or(0);
        for view in order.iter().cycle().skip(start).take(order.len()) {
            let data = self.data();
            let row = match view {
                View::Tmfs => data
                    .tmf_rows(&self.filter)
                    .iter()
                    .position(|r| r.has_tag(tag)),
                View::InFlight => data
                    .in_flight_rows(&self.filter)
                    .iter()
                    .position(|c| c.tag == tag),
                _ => data
                    .orphan_rows(&self.filter)
                    .iter()
                    .position(|o| o.tag == tag),
            };
            if let Some(row) = row {
                self.view = *view;
                self.selected[view.index()] = row;
                self.status = Some(format!("tag {tag:#x} in {}", view.title()));
                return;
            }
        }
        self.status = Some(format!("tag {tag:#x} is not on any list (filter: {})", {
            let f = self.filter.describe();
            if f.is_empty() { "none".to_owned() } else { f }
        }));
    }
}

pub const FILTER_PROMPT: &str = "filter (lun=N init=TEXT op=read|0x28 fn=NAME):";
pub const FIND_PROMPT: &str = "find tag (0x… or decimal):";
