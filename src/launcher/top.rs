//! `iotstream top`: the live view in a terminal.
//!
//! Three tables, refreshed every interval: the **connections** (stream → reader input, transport,
//! elements per second, backlog against capacity, drops, share of the interval the writer was
//! blocked), the **agents** (process, busy share, steps) and the **processes** (status, pid, CPU,
//! memory, restarts, up time), under a header with the application, the run and the age of the
//! data. What looks wrong is coloured, by the same rules as the web page
//! ([`crate::observe::ui`]): red for a writer blocked half the interval or more, a backlog at
//! capacity, drops rising, a failed process; yellow for lesser signs (blocked 10%, backlog half
//! full, past drops, an agent busy 90% of the time, a process restarting or unknown). The
//! problems are also listed, one line, under the header.
//!
//! # Keys
//!
//! `r` sorts by rate, `b` by backlog, `n` by name (connections by the key; agents and processes by
//! busy share or CPU for `r` and `b`, by name for `n`); `↑`/`↓` (or `k`/`j`) select a connection,
//! whose details show in the last line; `q`, `Esc` or `Ctrl-C` quit.
//!
//! # Using it
//!
//! [`run_top`] owns the terminal (alternate screen, raw mode) and gives it back on every way out:
//! a quit key, an error, a panic. It asks `fetch` for the graph and the metrics once per
//! interval; a failed fetch is shown in the header and the last data stay on screen. [`draw`]
//! is the pure rendering of a [`TopState`], for tests with ratatui's `TestBackend`.
//!
//! ```no_run
//! use std::time::Duration;
//! # fn ask_the_launcher() -> Result<(iotstream::info::GraphInfo, iotstream::observe::AppMetrics), String> { todo!() }
//! iotstream::launcher::top::run_top(ask_the_launcher, Duration::from_secs(1))?;
//! # Ok::<(), iotstream::Error>(())
//! ```

use std::io::stdout;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::cursor::{Hide, Show};
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::crossterm::execute;
use ratatui::crossterm::terminal::{
    disable_raw_mode, enable_raw_mode, EnterAlternateScreen, LeaveAlternateScreen,
};
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table, TableState};
use ratatui::{Frame, Terminal};

use crate::error::Error;
use crate::info::GraphInfo;
use crate::observe::{AgentView, AppMetrics, LinkView, ProcessStatus, ProcessView};

/// A writer blocked at least this share of the interval is a problem (red).
pub const BLOCKED_BAD: f64 = 0.5;
/// A writer blocked at least this share of the interval is worth a look (yellow).
pub const BLOCKED_WARN: f64 = 0.1;
/// A backlog at least this share of its capacity is worth a look (yellow); at capacity, red.
pub const BACKLOG_WARN: f64 = 0.5;
/// An agent busy at least this share of the interval is likely the bottleneck (yellow).
pub const BUSY_WARN: f64 = 0.9;

/// The shortest refresh interval [`run_top`] accepts.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// What the tables are sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SortKey {
    /// Connections by elements per second, agents by busy share, processes by CPU (most first).
    #[default]
    Rate,
    /// Connections by backlog (share of capacity, then elements in flight), agents by busy share,
    /// processes by CPU (most first).
    Backlog,
    /// Everything by name.
    Name,
}

impl SortKey {
    fn label(self) -> &'static str {
        match self {
            SortKey::Rate => "rate",
            SortKey::Backlog => "backlog",
            SortKey::Name => "name",
        }
    }
}

/// How a part looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// No data for it yet.
    Idle,
    /// Nothing wrong.
    Ok,
    /// Worth a look (yellow).
    Warn,
    /// A problem (red).
    Bad,
}

impl Health {
    fn style(self) -> Style {
        match self {
            Health::Idle => Style::new().fg(Color::DarkGray),
            Health::Ok => Style::new(),
            Health::Warn => Style::new().fg(Color::Yellow),
            Health::Bad => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        }
    }
}

/// Everything one screen shows.
#[derive(Clone, Debug, Default)]
pub struct TopState {
    /// The application's graph, once fetched.
    pub graph: Option<GraphInfo>,
    /// The latest metrics, once fetched.
    pub metrics: Option<AppMetrics>,
    /// What the tables are sorted by.
    pub sort: SortKey,
    /// The selected row of the connections table, in the order shown.
    pub selected: usize,
    /// Why the last fetch failed, if it did (the data shown are then older).
    pub fetch_error: Option<String>,
    /// Now, in milliseconds since the Unix epoch, to tell the data's age (0: not shown).
    pub now_ms: u64,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Flow {
    /// Keep going.
    Continue,
    /// Leave `top`.
    Quit,
}

impl TopState {
    /// Takes one fetch's outcome: new data replace the old ones; an error keeps them, marked.
    pub fn update(&mut self, fetched: Result<(GraphInfo, AppMetrics), String>) {
        match fetched {
            Ok((graph, metrics)) => {
                self.graph = Some(graph);
                self.metrics = Some(metrics);
                self.fetch_error = None;
            }
            Err(why) => self.fetch_error = Some(why),
        }
    }

    /// Acts on a key press.
    pub fn on_key(&mut self, code: KeyCode, modifiers: KeyModifiers) -> Flow {
        match code {
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => return Flow::Quit,
            KeyCode::Char('q') | KeyCode::Esc => return Flow::Quit,
            KeyCode::Char('r') => self.sort = SortKey::Rate,
            KeyCode::Char('b') => self.sort = SortKey::Backlog,
            KeyCode::Char('n') => self.sort = SortKey::Name,
            KeyCode::Up | KeyCode::Char('k') => self.selected = self.selected.saturating_sub(1),
            KeyCode::Down | KeyCode::Char('j') => {
                let last = self
                    .graph
                    .as_ref()
                    .map_or(0, |g| g.edges.len().saturating_sub(1));
                self.selected = (self.selected + 1).min(last);
            }
            KeyCode::Home => self.selected = 0,
            _ => {}
        }
        Flow::Continue
    }
}

/// Runs `iotstream top` in this terminal until the user quits: fetches every `interval`
/// (100 ms at least), draws, answers keys. The terminal is restored on every way out (quit, an
/// error of the terminal, a panic). A failed fetch does not end it: the header says why and
/// the last data stay shown.
pub fn run_top<F>(mut fetch: F, interval: Duration) -> Result<(), Error>
where
    F: FnMut() -> Result<(GraphInfo, AppMetrics), String>,
{
    let interval = interval.max(MIN_INTERVAL);
    let _guard = TerminalGuard::enter()?;
    let mut terminal = Terminal::new(CrosstermBackend::new(stdout())).map_err(terminal_error)?;
    let mut state = TopState::default();
    let mut next_fetch = Instant::now();
    // Ends on a quit key or a terminal error; each pass waits for a key or the next fetch.
    loop {
        if Instant::now() >= next_fetch {
            state.update(fetch());
            next_fetch = Instant::now() + interval;
        }
        state.now_ms = now_ms();
        terminal
            .draw(|frame| draw(frame, &state))
            .map_err(terminal_error)?;
        let wait = next_fetch.saturating_duration_since(Instant::now());
        if event::poll(wait).map_err(terminal_error)? {
            // A resize or any other event: drawn again on the next pass.
            if let Event::Key(key) = event::read().map_err(terminal_error)? {
                if key.kind == KeyEventKind::Press
                    && state.on_key(key.code, key.modifiers) == Flow::Quit
                {
                    return Ok(());
                }
            }
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn terminal_error(e: std::io::Error) -> Error {
    Error::Runtime {
        detail: format!("iotstream top: the terminal failed: {e}"),
    }
}

type PanicHook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync + 'static;

/// Raw mode and the alternate screen while it lives; a panic hook that gives the terminal back
/// before the panic's message is printed (else the message would vanish with the alternate
/// screen). Dropping it restores the terminal and the previous hook.
struct TerminalGuard {
    previous_hook: Option<Arc<PanicHook>>,
}

impl TerminalGuard {
    fn enter() -> Result<TerminalGuard, Error> {
        enable_raw_mode().map_err(|e| Error::Runtime {
            detail: format!("iotstream top needs a terminal: {e}"),
        })?;
        let previous: Arc<PanicHook> = Arc::from(std::panic::take_hook());
        let chained = previous.clone();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            chained(info);
        }));
        // From here on, every way out restores (Drop), even if entering fails halfway.
        let guard = TerminalGuard {
            previous_hook: Some(previous),
        };
        execute!(stdout(), EnterAlternateScreen, Hide).map_err(terminal_error)?;
        Ok(guard)
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
        // set_hook panics on a panicking thread: the chained hook stays then, harmlessly.
        if !std::thread::panicking() {
            if let Some(previous) = self.previous_hook.take() {
                drop(std::panic::take_hook());
                std::panic::set_hook(Box::new(move |info| previous(info)));
            }
        }
    }
}

fn restore_terminal() {
    let _ = disable_raw_mode();
    let _ = execute!(stdout(), Show, LeaveAlternateScreen);
}

// ---------- what is shown ----------

/// One row of the connections table.
struct Connection<'a> {
    edge: usize,
    name: String,
    transport: &'a str,
    link: Option<&'a LinkView>,
    health: Health,
    reasons: Vec<(Health, String)>,
}

/// How a connection looks, and why.
pub fn link_health(l: &LinkView) -> (Health, Vec<(Health, String)>) {
    let mut reasons = Vec::new();
    let blocked = l.blocked_share.unwrap_or(0.0);
    if blocked >= BLOCKED_BAD {
        reasons.push((
            Health::Bad,
            format!("writer blocked {}", pct(Some(blocked))),
        ));
    } else if blocked >= BLOCKED_WARN {
        reasons.push((
            Health::Warn,
            format!("writer blocked {}", pct(Some(blocked))),
        ));
    }
    if l.capacity > 0 && l.in_flight >= l.capacity {
        let full = format!("backlog full ({}/{})", l.in_flight, l.capacity);
        reasons.push((Health::Bad, full));
    } else if l.capacity > 0 && l.in_flight as f64 >= BACKLOG_WARN * l.capacity as f64 {
        let share = l.in_flight as f64 / l.capacity as f64;
        reasons.push((
            Health::Warn,
            format!("backlog {} of capacity", pct(Some(share))),
        ));
    }
    if l.dropped_per_s.unwrap_or(0.0) > 0.0 {
        let rate = format!("dropping {}/s", human(l.dropped_per_s));
        reasons.push((Health::Bad, rate));
    } else if l.dropped > 0 {
        let past = format!("{} dropped so far", human(Some(l.dropped as f64)));
        reasons.push((Health::Warn, past));
    }
    let health = reasons.iter().map(|r| r.0).max().unwrap_or(Health::Ok);
    (health, reasons)
}

/// How a process looks.
pub fn process_health(p: &ProcessView) -> Health {
    match p.status {
        ProcessStatus::Failed => Health::Bad,
        ProcessStatus::Restarting | ProcessStatus::Unknown => Health::Warn,
        ProcessStatus::Ended => Health::Idle,
        ProcessStatus::Starting | ProcessStatus::Running | ProcessStatus::Draining => Health::Ok,
    }
}

fn agent_health(a: &AgentView) -> Health {
    match a.busy_share {
        Some(busy) if busy >= BUSY_WARN => Health::Warn,
        Some(_) => Health::Ok,
        None => Health::Idle,
    }
}

fn status_name(s: ProcessStatus) -> &'static str {
    match s {
        ProcessStatus::Starting => "starting",
        ProcessStatus::Running => "running",
        ProcessStatus::Draining => "draining",
        ProcessStatus::Restarting => "restarting",
        ProcessStatus::Ended => "ended",
        ProcessStatus::Failed => "FAILED",
        ProcessStatus::Unknown => "unknown",
    }
}

/// The connections in the order shown.
fn connections<'a>(
    graph: &'a GraphInfo,
    metrics: Option<&'a AppMetrics>,
    sort: SortKey,
) -> Vec<Connection<'a>> {
    let links = metrics.map_or(&[][..], |m| &m.links[..]);
    let mut rows: Vec<Connection<'a>> = graph
        .edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let link = links.iter().find(|l| l.edge == i);
            let (health, reasons) = link.map_or((Health::Idle, Vec::new()), link_health);
            Connection {
                edge: i,
                name: format!("{} → {}", e.stream, e.input),
                transport: &e.transport,
                link,
                health,
                reasons,
            }
        })
        .collect();
    let rate = |c: &Connection| c.link.and_then(|l| l.elements_per_s).unwrap_or(-1.0);
    let backlog = |c: &Connection| {
        c.link.map_or((-1.0, 0), |l| {
            (l.in_flight as f64 / l.capacity.max(1) as f64, l.in_flight)
        })
    };
    match sort {
        SortKey::Rate => rows.sort_by(|a, b| rate(b).total_cmp(&rate(a)).then(a.edge.cmp(&b.edge))),
        SortKey::Backlog => rows.sort_by(|a, b| {
            let (x, y) = (backlog(a), backlog(b));
            y.0.total_cmp(&x.0)
                .then(y.1.cmp(&x.1))
                .then(a.edge.cmp(&b.edge))
        }),
        SortKey::Name => rows.sort_by(|a, b| a.name.cmp(&b.name)),
    }
    rows
}

/// Every problem, the worst first.
fn problems(state: &TopState) -> Vec<(Health, String)> {
    let mut found = Vec::new();
    if let Some(why) = &state.fetch_error {
        found.push((Health::Bad, format!("cannot reach the application: {why}")));
    }
    let Some(m) = &state.metrics else {
        return found;
    };
    for p in &m.processes {
        let h = process_health(p);
        if h >= Health::Warn {
            found.push((
                h,
                format!(
                    "process {} {}",
                    p.process,
                    status_name(p.status).to_lowercase()
                ),
            ));
        }
    }
    if let Some(g) = &state.graph {
        for c in connections(g, Some(m), SortKey::Name) {
            for (h, why) in c.reasons {
                found.push((h, format!("{}: {why}", c.name)));
            }
        }
    }
    for a in &m.agents {
        if agent_health(a) == Health::Warn {
            found.push((
                Health::Warn,
                format!("{} busy {}", a.name, pct(a.busy_share)),
            ));
        }
    }
    found.sort_by_key(|p| std::cmp::Reverse(p.0));
    found
}

// ---------- drawing ----------

/// Draws one screen of `top` from `state`.
pub fn draw(frame: &mut Frame, state: &TopState) {
    let problems = problems(state);
    let [header, problem_line, body, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(u16::from(!problems.is_empty())),
        Constraint::Fill(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(Paragraph::new(header_line(state)), header);
    if let Some((worst, _)) = problems.first() {
        let text: Vec<&str> = problems.iter().map(|p| p.1.as_str()).collect();
        let line = format!(" {} problem(s): {}", problems.len(), text.join(" · "));
        frame.render_widget(Paragraph::new(line).style(worst.style()), problem_line);
    }
    let Some(graph) = &state.graph else {
        let why = state
            .fetch_error
            .as_deref()
            .unwrap_or("asking the launcher…");
        frame.render_widget(
            Paragraph::new(format!(" {why}")).block(Block::bordered()),
            body,
        );
        return;
    };
    let rows = connections(graph, state.metrics.as_ref(), state.sort);
    // Each table as tall as its rows (plus borders and header) where the screen allows, else
    // a fair share of it; what is left stays empty at the bottom.
    let tall = |n: usize| u16::try_from(n).unwrap_or(u16::MAX).saturating_add(3);
    let (agents, procs, links) = (
        tall(graph.agents.len()),
        tall(graph.processes.len()),
        tall(rows.len()),
    );
    if body.width >= 120 {
        let [top, bottom] = stack(body, &[links, agents.max(procs)]);
        let late = state
            .metrics
            .as_ref()
            .is_some_and(|m| m.agents.iter().any(|a| a.late > 0));
        let [left, right] = Layout::horizontal([
            Constraint::Fill(table_width(&agent_columns(graph, late))),
            Constraint::Fill(table_width(&process_columns(graph))),
        ])
        .areas(bottom);
        draw_connections(frame, top, &rows, state.selected);
        draw_agents(frame, left, state);
        draw_processes(frame, right, state);
    } else {
        let [top, middle, bottom] = stack(body, &[links, agents, procs]);
        draw_connections(frame, top, &rows, state.selected);
        draw_agents(frame, middle, state);
        draw_processes(frame, bottom, state);
    }
    frame.render_widget(Paragraph::new(footer_line(&rows, state.selected)), footer);
}

/// `area` cut from the top into N parts of the heights wanted, or fair shares of it when they
/// do not fit: the smallest wants are met first, the rest split evenly.
fn stack<const N: usize>(area: Rect, wants: &[u16; N]) -> [Rect; N] {
    let mut order: Vec<usize> = (0..N).collect();
    order.sort_by_key(|&i| wants[i]);
    let mut heights = [0u16; N];
    let mut left = area.height;
    for (k, &i) in order.iter().enumerate() {
        let share = left / (N - k) as u16;
        heights[i] = wants[i].min(share);
        left -= heights[i];
    }
    let mut y = area.y;
    heights.map(|h| {
        let part = Rect {
            y,
            height: h,
            ..area
        };
        y += h;
        part
    })
}

fn header_line(state: &TopState) -> Line<'static> {
    let sep = || Span::raw(" │ ").dark_gray();
    let mut spans = vec![Span::raw(" iotstream top").bold()];
    let app = state.metrics.as_ref().map(|m| m.app.clone());
    let app = app.or_else(|| state.graph.as_ref().map(|g| g.app.clone()));
    spans.extend([
        sep(),
        Span::raw(app.unwrap_or_else(|| "…".into())).bold().cyan(),
    ]);
    if let Some(m) = &state.metrics {
        let up = m.processes.iter().map(|p| p.up_s).fold(0.0, f64::max);
        let run = if m.run.is_empty() { "–" } else { &m.run };
        spans.extend([
            sep(),
            Span::raw(format!("run {run}")),
            sep(),
            Span::raw(format!("up {}", duration(up))),
        ]);
        let mut updated = format!("updated {} UTC", clock(m.time_ms));
        if state.now_ms > 0 {
            let age_s = state.now_ms.saturating_sub(m.time_ms) / 1000;
            updated.push_str(&format!(" ({age_s} s ago)"));
        }
        spans.extend([sep(), Span::raw(updated)]);
    }
    spans.extend([sep(), Span::raw(format!("sort: {}", state.sort.label()))]);
    if state.fetch_error.is_some() {
        spans.extend([sep(), Span::styled("stale", Health::Bad.style())]);
    }
    Line::from(spans)
}

fn footer_line(rows: &[Connection], selected: usize) -> Line<'static> {
    let mut spans =
        vec![Span::raw(" r rate · b backlog · n name · ↑↓ select · q quit").dark_gray()];
    if let Some(c) = rows.get(selected.min(rows.len().saturating_sub(1))) {
        let detail = match c.link {
            Some(l) => {
                let mut d = format!(
                    "{}: {} elements in {} batches, at most {} in flight",
                    c.name,
                    human(Some(l.elements as f64)),
                    human(Some(l.batches as f64)),
                    l.max_in_flight
                );
                if l.transport == "tcp" {
                    d.push_str(&format!(
                        ", {} sent, {} unacknowledged, {} reconnections",
                        bytes(l.bytes),
                        bytes(l.unacked_bytes),
                        l.reconnects
                    ));
                }
                d
            }
            None => format!("{}: no data yet", c.name),
        };
        spans.extend([Span::raw(" │ ").dark_gray(), Span::raw(detail)]);
    }
    Line::from(spans)
}

fn right(s: String) -> Cell<'static> {
    Cell::from(Line::from(s).right_aligned())
}

fn header_row(names: &[&'static str], right_from: usize) -> Row<'static> {
    let cells = names.iter().enumerate().map(|(i, n)| {
        if i >= right_from {
            right(n.to_string())
        } else {
            Cell::from(*n)
        }
    });
    Row::new(cells).style(Style::new().bold().underlined())
}

fn draw_connections(frame: &mut Frame, area: Rect, rows: &[Connection], selected: usize) {
    let body: Vec<Row> = rows
        .iter()
        .map(|c| {
            let short = match c.transport {
                "shared-memory" => "shm",
                other => other,
            };
            let cells = match c.link {
                Some(l) => vec![
                    Cell::from(c.name.clone()),
                    Cell::from(short.to_string()),
                    right(human(l.elements_per_s)),
                    right(format!(
                        "{}/{}",
                        human(Some(l.in_flight as f64)),
                        human(Some(l.capacity as f64))
                    )),
                    right(match l.dropped_per_s {
                        Some(r) if r > 0.0 => {
                            format!("{} +{}/s", human(Some(l.dropped as f64)), human(Some(r)))
                        }
                        _ => human(Some(l.dropped as f64)),
                    }),
                    right(pct(l.blocked_share)),
                ],
                None => vec![
                    Cell::from(c.name.clone()),
                    Cell::from(short.to_string()),
                    right("–".into()),
                ],
            };
            Row::new(cells).style(c.health.style())
        })
        .collect();
    let widths = [
        Constraint::Fill(1),
        Constraint::Length(5),
        Constraint::Length(9),
        Constraint::Length(13),
        Constraint::Length(12),
        Constraint::Length(8),
    ];
    let table = Table::new(body, widths)
        .header(header_row(
            &[
                "connection (stream → input)",
                "via",
                "rate/s",
                "backlog/cap",
                "drops",
                "blocked",
            ],
            2,
        ))
        .block(Block::bordered().title(" Connections "))
        .row_highlight_style(Style::new().reversed())
        .highlight_symbol("▶ ");
    let mut table_state = TableState::default().with_selected(if rows.is_empty() {
        None
    } else {
        Some(selected.min(rows.len() - 1))
    });
    frame.render_stateful_widget(table, area, &mut table_state);
}

fn draw_agents(frame: &mut Frame, area: Rect, state: &TopState) {
    let Some(graph) = &state.graph else { return };
    let views = state.metrics.as_ref().map_or(&[][..], |m| &m.agents[..]);
    let mut agents: Vec<(&str, &str, Option<&AgentView>)> = graph
        .agents
        .iter()
        .map(|a| {
            (
                a.name.as_str(),
                a.process.as_str(),
                views.iter().find(|v| v.name == a.name),
            )
        })
        .collect();
    let busy =
        |a: &(&str, &str, Option<&AgentView>)| a.2.and_then(|v| v.busy_share).unwrap_or(-1.0);
    match state.sort {
        SortKey::Name => agents.sort_by(|a, b| a.0.cmp(b.0)),
        SortKey::Rate | SortKey::Backlog => agents.sort_by(|a, b| busy(b).total_cmp(&busy(a))),
    }
    let any_late = views.iter().any(|v| v.late > 0);
    let rows = agents.iter().map(|&(name, process, view)| {
        let Some(v) = view else {
            let cells = [Cell::from(name), Cell::from(process), right("–".into())];
            return Row::new(cells).style(Health::Idle.style());
        };
        let mut cells = vec![
            Cell::from(name.to_string()),
            Cell::from(process.to_string()),
            right(pct(v.busy_share)),
            Cell::from(bar(v.busy_share.unwrap_or(0.0), 8)),
            right(human(Some(v.steps as f64))),
        ];
        if any_late {
            cells.push(right(human(Some(v.late as f64))));
        }
        Row::new(cells).style(agent_health(v).style())
    });
    let columns = agent_columns(graph, any_late);
    let names = ["agent", "process", "busy", "", "steps", "late"];
    let table = Table::new(rows, widths(&columns))
        .header(header_row(&names[..columns.len()], 2))
        .block(Block::bordered().title(" Agents "));
    frame.render_widget(table, area);
}

fn longest<'a>(names: impl Iterator<Item = &'a str>, at_least: usize) -> u16 {
    let n = names.map(|s| s.chars().count()).max().unwrap_or(0);
    u16::try_from(n.max(at_least)).unwrap_or(u16::MAX)
}

/// The agents table's column widths.
fn agent_columns(graph: &GraphInfo, late: bool) -> Vec<u16> {
    let name = longest(graph.agents.iter().map(|a| a.name.as_str()), 5);
    let process = longest(graph.processes.iter().map(String::as_str), 7);
    let mut columns = vec![name, process, 5, 8, 7];
    if late {
        columns.push(6);
    }
    columns
}

/// The processes table's column widths.
fn process_columns(graph: &GraphInfo) -> [u16; 8] {
    let name = longest(graph.processes.iter().map(String::as_str), 7);
    let host = longest(graph.hosts.iter().map(|h| h.name.as_str()), 4);
    [name, host, 10, 7, 5, 10, 8, 8]
}

/// The first column takes what is left over; the others their width.
fn widths(columns: &[u16]) -> Vec<Constraint> {
    let rest = columns.iter().skip(1).map(|&w| Constraint::Length(w));
    columns
        .first()
        .map(|&w| Constraint::Min(w))
        .into_iter()
        .chain(rest)
        .collect()
}

/// The width a table of these columns wants: theirs, one space between, the borders.
fn table_width(columns: &[u16]) -> u16 {
    let sum: u16 = columns.iter().fold(0, |a, &c| a.saturating_add(c));
    sum.saturating_add(columns.len() as u16 + 1)
}

fn draw_processes(frame: &mut Frame, area: Rect, state: &TopState) {
    let Some(graph) = &state.graph else { return };
    let views = state.metrics.as_ref().map_or(&[][..], |m| &m.processes[..]);
    let mut procs: Vec<(&str, Option<&ProcessView>)> = graph
        .processes
        .iter()
        .map(|p| (p.as_str(), views.iter().find(|v| &v.process == p)))
        .collect();
    let cpu = |p: &(&str, Option<&ProcessView>)| p.1.and_then(|v| v.cpu_share).unwrap_or(-1.0);
    match state.sort {
        SortKey::Name => procs.sort_by(|a, b| a.0.cmp(b.0)),
        SortKey::Rate | SortKey::Backlog => procs.sort_by(|a, b| cpu(b).total_cmp(&cpu(a))),
    }
    let rows = procs.iter().map(|&(name, view)| {
        let Some(v) = view else {
            return Row::new([name, "", "no data"]).style(Health::Idle.style());
        };
        let health = process_health(v);
        let restarts = if v.restarts > 0 {
            Cell::from(Line::from(v.restarts.to_string()).right_aligned())
                .style(Health::Warn.style())
        } else {
            right("0".into())
        };
        Row::new([
            Cell::from(name.to_string()),
            Cell::from(v.host.clone()),
            Cell::from(status_name(v.status)),
            right(if v.pid == 0 {
                "–".into()
            } else {
                v.pid.to_string()
            }),
            right(pct(v.cpu_share)),
            right(bytes(v.rss_bytes)),
            restarts,
            right(duration(v.up_s)),
        ])
        .style(health.style())
    });
    let columns = process_columns(graph);
    let names = [
        "process", "host", "status", "pid", "CPU", "memory", "restarts", "up",
    ];
    let table = Table::new(rows, widths(&columns))
        .header(header_row(&names, 3))
        .block(Block::bordered().title(" Processes "));
    frame.render_widget(table, area);
}

// ---------- numbers ----------

/// `1234.0` → `1.2k`; `None` → `–`.
fn human(x: Option<f64>) -> String {
    let Some(x) = x.filter(|x| x.is_finite()) else {
        return "–".into();
    };
    let a = x.abs();
    for (d, s) in [(1e9, "G"), (1e6, "M"), (1e3, "k")] {
        if a >= d {
            let digits = if a / d >= 100.0 { 0 } else { 1 };
            return format!("{:.*}{s}", digits, x / d);
        }
    }
    if a >= 100.0 || x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

fn bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = b as f64;
    let mut i = 0;
    while x >= 1024.0 && i < units.len() - 1 {
        x /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b} B")
    } else {
        format!("{x:.1} {}", units[i])
    }
}

fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "–".into(), |x| format!("{:.0}%", x * 100.0))
}

fn duration(s: f64) -> String {
    let s = if s.is_finite() && s > 0.0 {
        s as u64
    } else {
        0
    };
    let (d, h, m) = (s / 86_400, s / 3600 % 24, s / 60 % 60);
    if d > 0 {
        format!("{d}d {h}h")
    } else if h > 0 {
        format!("{h}h {m:02}m")
    } else if m > 0 {
        format!("{m}m {:02}s", s % 60)
    } else {
        format!("{s}s")
    }
}

/// `HH:MM:SS` of a time in milliseconds since the epoch, in UTC.
fn clock(ms: u64) -> String {
    let s = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn bar(share: f64, width: usize) -> String {
    let full = ((share.clamp(0.0, 1.0) * width as f64).round() as usize).min(width);
    format!("{}{}", "█".repeat(full), "░".repeat(width - full))
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;
    use ratatui::buffer::Buffer;

    use super::*;
    use crate::info::{AgentInfo, EdgeInfo, HostInfo, PortInfo};
    use crate::stream::{Policy, Transport};

    fn agent(name: &str, process: &str) -> AgentInfo {
        let port = |n: &str| PortInfo {
            name: n.into(),
            element: "f64".into(),
            min_capacity: 1,
        };
        AgentInfo {
            name: name.into(),
            process: process.into(),
            thread: None,
            inputs: vec![port("in")],
            outputs: vec![port("out")],
            reads_stdin: false,
        }
    }

    /// sensor (main) → filter (work) → sink (main), and sensor → archive (work).
    fn graph() -> GraphInfo {
        let agents = vec![
            agent("sensor", "main"),
            agent("filter", "work"),
            agent("sink", "main"),
            agent("archive", "work"),
        ];
        let edge = |from: usize, to: usize, transport: &str| EdgeInfo {
            from_agent: from,
            from_port: 0,
            to_agent: to,
            to_port: 0,
            stream: format!("{}.out", agents[from].name),
            input: format!("{}.in", agents[to].name),
            capacity: 100,
            capacity_bytes: crate::graph::DEFAULT_CAPACITY_BYTES,
            element_bytes: 8,
            credit: 100,
            policy: Policy::Block,
            forced: Transport::Auto,
            transport: transport.into(),
            ring_bytes: None,
        };
        let edges = vec![
            edge(0, 1, "shared-memory"),
            edge(1, 2, "shared-memory"),
            edge(0, 3, "shared-memory"),
        ];
        GraphInfo {
            app: "demo".into(),
            default_capacity: 100,
            agents,
            edges,
            processes: vec!["main".into(), "work".into()],
            hosts: vec![HostInfo {
                name: "local".into(),
                address: "127.0.0.1".into(),
                port: 7400,
                observe_port: None,
                processes: vec!["main".into(), "work".into()],
            }],
        }
    }

    /// Edge 0 fast with a small backlog, edge 1 slow with a full backlog, edge 2 in between.
    fn metrics(g: &GraphInfo, work: ProcessStatus) -> AppMetrics {
        let link = |edge: usize, rate: f64, in_flight: u64| {
            let e = &g.edges[edge];
            LinkView {
                edge,
                stream: e.stream.clone(),
                reader: g.agents[e.to_agent].name.clone(),
                input: e.input.clone(),
                transport: e.transport.clone(),
                capacity: 100,
                elements: 1000,
                batches: 10,
                in_flight,
                max_in_flight: 100,
                elements_per_s: Some(rate),
                dropped_per_s: Some(0.0),
                blocked_share: Some(if in_flight >= 100 { 0.7 } else { 0.0 }),
                ..LinkView::default()
            }
        };
        let process = |name: &str, status, pid| ProcessView {
            process: name.into(),
            host: "local".into(),
            pid,
            status,
            up_s: 65.0,
            cpu_s: 3.0,
            cpu_share: Some(0.25),
            rss_bytes: 12 << 20,
            restarts: u64::from(status == ProcessStatus::Failed),
        };
        AppMetrics {
            app: "demo".into(),
            run: "42-abc".into(),
            time_ms: 3_600_000 + 61_000,
            interval_ms: 1000,
            processes: vec![
                process("main", ProcessStatus::Running, 42),
                process("work", work, 43),
            ],
            agents: g
                .agents
                .iter()
                .map(|a| AgentView {
                    name: a.name.clone(),
                    process: a.process.clone(),
                    host: "local".into(),
                    steps: 77,
                    busy_share: Some(0.2),
                    ..AgentView::default()
                })
                .collect(),
            streams: Vec::new(),
            links: vec![link(0, 9000.0, 5), link(1, 10.0, 100), link(2, 500.0, 60)],
        }
    }

    fn state(work: ProcessStatus) -> TopState {
        let g = graph();
        let m = metrics(&g, work);
        let mut s = TopState::default();
        s.update(Ok((g, m)));
        s
    }

    fn render(state: &TopState, width: u16, height: u16) -> Buffer {
        let mut terminal = Terminal::new(TestBackend::new(width, height)).expect("test terminal");
        terminal.draw(|f| draw(f, state)).expect("draw");
        terminal.backend().buffer().clone()
    }

    fn lines(buf: &Buffer) -> Vec<String> {
        let w = buf.area.width as usize;
        buf.content
            .chunks(w)
            .map(|row| row.iter().map(|c| c.symbol()).collect())
            .collect()
    }

    /// The screen line of the first table row (a line inside a box) containing `text`.
    fn row_of(lines: &[String], text: &str) -> usize {
        lines
            .iter()
            .position(|l| l.starts_with('│') && l.contains(text))
            .unwrap_or_else(|| panic!("{text:?} not on screen:\n{}", lines.join("\n")))
    }

    #[test]
    fn every_agent_connection_and_process_is_shown() {
        for (w, h) in [(140, 30), (90, 30)] {
            let buf = render(&state(ProcessStatus::Running), w, h);
            let screen = lines(&buf);
            let all = screen.join("\n");
            for name in ["sensor", "filter", "sink", "archive"] {
                assert!(all.contains(name), "agent {name} missing ({w}×{h}):\n{all}");
            }
            for c in [
                "sensor.out → filter.in",
                "filter.out → sink.in",
                "sensor.out → archive.in",
            ] {
                row_of(&screen, c);
            }
            assert!(
                all.contains("demo") && all.contains("run 42-abc") && all.contains("01:01:01 UTC")
            );
            // The rates, backlogs and shares, in human units.
            let fast = &screen[row_of(&screen, "sensor.out → filter.in")];
            assert!(
                fast.contains("9.0k") && fast.contains("5/100") && fast.contains("shm"),
                "{fast}"
            );
            assert!(screen[row_of(&screen, "filter.out → sink.in")].contains("70%"));
            let work = &screen[row_of(&screen, "│work ")];
            assert!(
                work.contains("running") && work.contains("12.0 MiB") && work.contains("1m 05s")
            );
        }
    }

    #[test]
    fn the_sort_key_orders_the_connections() {
        let mut s = state(ProcessStatus::Running);
        let order = |s: &TopState| {
            let screen = lines(&render(s, 140, 30));
            let mut rows = [
                ("sensor.out → filter.in", 0),
                ("filter.out → sink.in", 0),
                ("sensor.out → archive.in", 0),
            ];
            for r in &mut rows {
                r.1 = row_of(&screen, r.0);
            }
            rows.sort_by_key(|r| r.1);
            rows.map(|r| r.0)
        };
        assert_eq!(s.sort, SortKey::Rate);
        assert_eq!(
            order(&s),
            [
                "sensor.out → filter.in",
                "sensor.out → archive.in",
                "filter.out → sink.in"
            ]
        );
        assert_eq!(
            s.on_key(KeyCode::Char('b'), KeyModifiers::NONE),
            Flow::Continue
        );
        assert_eq!(
            order(&s),
            [
                "filter.out → sink.in",
                "sensor.out → archive.in",
                "sensor.out → filter.in"
            ]
        );
        s.on_key(KeyCode::Char('n'), KeyModifiers::NONE);
        assert_eq!(
            order(&s),
            [
                "filter.out → sink.in",
                "sensor.out → archive.in",
                "sensor.out → filter.in"
            ]
        );
        s.on_key(KeyCode::Char('r'), KeyModifiers::NONE);
        assert_eq!(order(&s)[0], "sensor.out → filter.in");
        assert!(lines(&render(&s, 140, 30))[0].contains("sort: rate"));
    }

    #[test]
    fn a_failed_process_and_a_stalled_link_are_marked() {
        let buf = render(&state(ProcessStatus::Failed), 140, 30);
        let screen = lines(&buf);
        let y = row_of(&screen, "FAILED");
        assert!(screen[y].contains("work"), "{}", screen[y]);
        let x = screen[y].find("FAILED").unwrap();
        // Column of a char index: every symbol here is one cell wide, but '│' and '→' are
        // several bytes: count chars.
        let col = screen[y][..x].chars().count() as u16;
        assert_eq!(buf[(col, y as u16)].fg, Color::Red, "FAILED in red");
        // The problems line names both.
        assert!(screen[1].contains("process work failed"), "{}", screen[1]);
        assert!(
            screen[1].contains("filter.out → sink.in: writer blocked 70%"),
            "{}",
            screen[1]
        );
        let stalled = row_of(&screen, "filter.out → sink.in");
        let col = screen[stalled].find("filter.out").unwrap();
        let col = screen[stalled][..col].chars().count() as u16;
        assert_eq!(
            buf[(col, stalled as u16)].fg,
            Color::Red,
            "stalled link in red"
        );
        // A running process is not.
        let main = row_of(&screen, " main ");
        assert!(!screen[main].contains("FAILED"));
        assert!(!problems(&state(ProcessStatus::Running))
            .iter()
            .any(|p| p.1.contains("process")));
    }

    #[test]
    fn keys_select_and_quit() {
        let mut s = state(ProcessStatus::Running);
        for _ in 0..5 {
            s.on_key(KeyCode::Down, KeyModifiers::NONE);
        }
        assert_eq!(s.selected, 2, "clamped to the last connection");
        s.on_key(KeyCode::Char('k'), KeyModifiers::NONE);
        assert_eq!(s.selected, 1);
        let screen = lines(&render(&s, 140, 30));
        // Sorted by rate, the second row is the archive's; its details are in the footer.
        assert!(screen[row_of(&screen, "sensor.out → archive.in")].contains('▶'));
        assert!(screen[29].contains("sensor.out → archive.in: 1.0k elements in 10 batches"));
        assert_eq!(s.on_key(KeyCode::Char('q'), KeyModifiers::NONE), Flow::Quit);
        assert_eq!(s.on_key(KeyCode::Esc, KeyModifiers::NONE), Flow::Quit);
        assert_eq!(
            s.on_key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Flow::Quit
        );
        assert_eq!(
            s.on_key(KeyCode::Char('c'), KeyModifiers::NONE),
            Flow::Continue
        );
    }

    #[test]
    fn before_data_and_after_a_failed_fetch() {
        let mut s = TopState::default();
        let screen = lines(&render(&s, 100, 10)).join("\n");
        assert!(screen.contains("asking the launcher"), "{screen}");
        s.update(Err("no launcher runs 'demo'".into()));
        let screen = lines(&render(&s, 100, 10)).join("\n");
        assert!(screen.contains("no launcher runs 'demo'"), "{screen}");
        // Data, then a failure: the data stay, the header says why.
        let mut s = state(ProcessStatus::Running);
        s.update(Err("connection refused".into()));
        s.now_ms = 3_600_000 + 61_000 + 5_000;
        let screen = lines(&render(&s, 160, 30));
        assert!(screen[0].contains("stale"), "{}", screen[0]);
        assert!(screen[1].contains("cannot reach the application: connection refused"));
        assert!(screen[0].contains("(5 s ago)"), "{}", screen[0]);
        row_of(&screen, "sensor.out → filter.in");
        // Tiny terminals do not panic.
        for (w, h) in [(1, 1), (20, 4), (40, 8)] {
            render(&s, w, h);
        }
    }

    #[test]
    fn many_connections_in_a_small_terminal_leave_room_for_the_other_tables() {
        let mut s = state(ProcessStatus::Running);
        let g = s.graph.as_mut().unwrap();
        let first = g.edges[0].clone();
        for i in 0..40 {
            g.edges.push(EdgeInfo {
                input: format!("extra{i}.in"),
                ..first.clone()
            });
        }
        let screen = lines(&render(&s, 100, 30));
        assert!(screen.iter().any(|l| l.contains("┌ Agents")));
        row_of(&screen, "│main ");
        // The wanted heights when they fit; fair shares when not.
        let area = Rect::new(0, 2, 80, 20);
        let heights = |parts: [Rect; 3]| parts.map(|r| r.height);
        assert_eq!(heights(stack(area, &[5, 6, 4])), [5, 6, 4]);
        assert_eq!(heights(stack(area, &[43, 7, 5])), [8, 7, 5]);
        assert_eq!(heights(stack(area, &[43, 40, 5])), [8, 7, 5]);
        let [a, b] = stack(area, &[3, 4]);
        assert_eq!((a.y, b.y, b.height), (2, 5, 4));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(human(Some(0.0)), "0");
        assert_eq!(human(Some(12.34)), "12.3");
        assert_eq!(human(Some(1234.0)), "1.2k");
        assert_eq!(human(Some(123_456.0)), "123k");
        assert_eq!(human(Some(2.5e6)), "2.5M");
        assert_eq!(human(None), "–");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(3 << 20), "3.0 MiB");
        assert_eq!(duration(3725.0), "1h 02m");
        assert_eq!(duration(42.9), "42s");
        assert_eq!(bar(0.5, 4), "██░░");
        assert_eq!(clock(3_661_000), "01:01:01");
    }
}
