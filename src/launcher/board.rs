//! What a launcher knows of the application it runs, in one place: the [`Board`].
//!
//! The supervisor writes it (each process's status, pid, start time and restarts, after every
//! event it handles); the threads reading the children's control channels write each process's
//! latest counters into it (`metrics <json>` lines: an
//! [`observe::ProcessSample`](crate::observe::ProcessSample)); the threads copying the
//! children's output keep their last lines in its [`LogBook`]. The control socket
//! ([`super::socket`]) only reads it: `iotstream list`, `logs`, the `status` and `metrics`
//! requests are answered from it, never by asking the supervisor.
//!
//! ```text
//!  supervisor ──(status, pid, restarts)──►┌───────────────┐◄── iotstream list / logs / …
//!  control readers ──(latest sample)─────►│ Board         │    (the control socket)
//!  output copiers ──(lines)──────────────►│  └─ LogBook   │◄── an aggregator (live view)
//!                                         └───────────────┘
//! ```
//!
//! Everything in it is bounded: one sample per process (a report is at most 4 MiB), the last
//! `N` lines per process and at most [`LOG_BYTES_PER_SOURCE`] bytes of them.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::info::GraphInfo;
use crate::observe::{AppMetrics, ProcessSample, ProcessStatus};

/// Milliseconds since the Unix epoch of `t` (0 if before it).
pub(crate) fn epoch_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where an application is in its life, as its launcher sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Its processes are starting; no data flows yet.
    #[default]
    Starting,
    /// Every process reported ready: data flows.
    Running,
    /// A drain is on (Ctrl-C, SIGTERM, `iotstream stop`, a failure): sources stopped.
    Draining,
    /// Every process has ended; the launcher is exiting.
    Ended,
}

/// The state of one application as its launcher sees it now: what the control socket's
/// `status` and `metrics` requests answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The application's name ([`Graph::new`](crate::Graph::new)).
    pub app: String,
    /// The run's id (`<launcher pid>-<nonce>`): names its shared-memory objects.
    pub run: String,
    /// The host this launcher runs.
    pub host: String,
    /// Every host of the application (other launchers run the others).
    pub hosts: Vec<String>,
    /// The launcher's pid.
    pub launcher_pid: u32,
    /// When the launcher started the run, milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// How often processes report their counters, in milliseconds (0: never).
    pub interval_ms: u64,
    /// Where the application is in its life.
    pub phase: Phase,
    /// The launcher's exit code, once [`Phase::Ended`].
    pub exit_code: Option<i32>,
    /// Every process of this host.
    pub processes: Vec<ProcessState>,
    /// The processes of the other hosts, each with its host (their launchers run them).
    #[serde(default)]
    pub elsewhere: Vec<(String, String)>,
}

impl Status {
    /// Why `process` is not one of this launcher's, for an error: the host that runs it, or
    /// else the processes there are.
    pub fn not_here(&self, process: &str) -> String {
        if let Some((_, host)) = self.elsewhere.iter().find(|(p, _)| p == process) {
            return format!(
                "process '{process}' of '{}' runs on host '{host}', not on this host ('{}'): \
                 run the command there",
                self.app, self.host
            );
        }
        let names: Vec<String> = self
            .processes
            .iter()
            .map(|p| format!("'{}'", p.process))
            .collect();
        format!(
            "no process '{process}' in this launcher of '{}'; its processes are {}",
            self.app,
            names.join(", ")
        )
    }

    /// How many processes run now (their agents running or draining: a drain that a process
    /// holds up shows it still there), and how many there are.
    pub fn running(&self) -> (usize, usize) {
        let running = self
            .processes
            .iter()
            .filter(|p| matches!(p.status, ProcessStatus::Running | ProcessStatus::Draining))
            .count();
        (running, self.processes.len())
    }
}

/// One process of the application, across its restarts.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcessState {
    /// Its name in the graph.
    pub process: String,
    /// The host it runs on.
    pub host: String,
    /// What it is doing.
    pub status: ProcessStatus,
    /// Its pid now (0 when not running).
    pub pid: u32,
    /// When it (last) started, milliseconds since the Unix epoch (0: never started).
    pub started_ms: u64,
    /// Times it was started again: after a failure (its restart policy) or on request
    /// (`iotstream restart`).
    pub restarts: u64,
    /// Its latest report (left out of `status` answers, which stay small; in `metrics`).
    pub sample: Option<ProcessSample>,
    /// When that report arrived, milliseconds since the Unix epoch (0: none yet).
    pub sample_ms: u64,
}

/// The launcher's view of its application, shared by the supervisor, the threads that read the
/// children, and the control socket. See the [module](self) docs.
pub struct Board {
    status: Mutex<Status>,
    info: GraphInfo,
    logs: LogBook,
    /// The live view of the whole application (other hosts merged in), made every interval
    /// by [`super::watch`].
    view: Mutex<AppMetrics>,
    /// The same of this host's processes only: what the other hosts' launchers are told.
    local_view: Mutex<AppMetrics>,
}

impl Board {
    /// A board for run `run` of the application `info` describes, of which this launcher runs
    /// `processes` on `host`; processes report every `interval` (zero: never); `log_lines`
    /// output lines are kept per process.
    pub fn new(
        info: GraphInfo,
        run: String,
        host: String,
        processes: &[String],
        interval: Duration,
        log_lines: usize,
    ) -> Board {
        let status = Status {
            app: info.app.clone(),
            run,
            hosts: info.hosts.iter().map(|h| h.name.clone()).collect(),
            elsewhere: info
                .hosts
                .iter()
                .filter(|h| h.name != host)
                .flat_map(|h| h.processes.iter().map(|p| (p.clone(), h.name.clone())))
                .collect(),
            launcher_pid: std::process::id(),
            started_ms: epoch_ms(SystemTime::now()),
            interval_ms: interval.as_millis() as u64,
            phase: Phase::Starting,
            exit_code: None,
            processes: processes
                .iter()
                .map(|p| ProcessState {
                    process: p.clone(),
                    host: host.clone(),
                    ..ProcessState::default()
                })
                .collect(),
            host,
        };
        let view = AppMetrics {
            app: info.app.clone(),
            run: status.run.clone(),
            interval_ms: status.interval_ms,
            ..AppMetrics::default()
        };
        Board {
            status: Mutex::new(status),
            info,
            logs: LogBook::new(log_lines),
            local_view: Mutex::new(view.clone()),
            view: Mutex::new(view),
        }
    }

    /// The state now; with each process's latest counters if `samples`.
    pub fn status(&self, samples: bool) -> Status {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if samples {
            return s.clone();
        }
        let mut copy = s.clone_without_processes();
        copy.processes = s
            .processes
            .iter()
            .map(ProcessState::clone_without_sample)
            .collect();
        copy
    }

    /// The application's graph as placed (what `iotstream graph --format json` prints).
    pub fn graph(&self) -> &GraphInfo {
        &self.info
    }

    /// The live view of the whole application, as of the last interval (empty counters
    /// before the first).
    pub fn view(&self) -> AppMetrics {
        self.view.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// This host's part of the live view (what other hosts' launchers ask for).
    pub fn local_view(&self) -> AppMetrics {
        self.local_view
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(crate) fn set_view(&self, view: AppMetrics) {
        *self.view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }

    pub(crate) fn set_local_view(&self, view: AppMetrics) {
        *self.local_view.lock().unwrap_or_else(|p| p.into_inner()) = view;
    }

    /// The processes' last output lines.
    pub fn logs(&self) -> &LogBook {
        &self.logs
    }

    /// The names of the processes this launcher runs.
    pub fn processes(&self) -> Vec<String> {
        let s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        s.processes.iter().map(|p| p.process.clone()).collect()
    }

    /// Changes the state (the supervisor's side).
    pub(crate) fn update(&self, change: impl FnOnce(&mut Status)) {
        change(&mut self.status.lock().unwrap_or_else(|p| p.into_inner()));
    }

    /// Keeps `sample` as process `index`'s latest report; its pid is the one the launcher
    /// started (`pid`), whatever the report says.
    pub(crate) fn record_sample(&self, index: usize, pid: u32, mut sample: ProcessSample) {
        sample.pid = pid;
        let mut s = self.status.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = s.processes.get_mut(index) {
            p.sample = Some(sample);
            p.sample_ms = epoch_ms(SystemTime::now());
        }
    }
}

impl Status {
    fn clone_without_processes(&self) -> Status {
        Status {
            app: self.app.clone(),
            run: self.run.clone(),
            host: self.host.clone(),
            hosts: self.hosts.clone(),
            elsewhere: self.elsewhere.clone(),
            launcher_pid: self.launcher_pid,
            started_ms: self.started_ms,
            interval_ms: self.interval_ms,
            phase: self.phase,
            exit_code: self.exit_code,
            processes: Vec::new(),
        }
    }
}

impl ProcessState {
    fn clone_without_sample(&self) -> ProcessState {
        ProcessState {
            process: self.process.clone(),
            host: self.host.clone(),
            status: self.status,
            pid: self.pid,
            started_ms: self.started_ms,
            restarts: self.restarts,
            sample: None,
            sample_ms: self.sample_ms,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Logs

/// The most bytes of lines kept per process (and for the launcher's own lines), whatever the
/// number of lines: a process writing long lines keeps fewer of them.
pub const LOG_BYTES_PER_SOURCE: usize = 8 << 20;

/// How many lines per process a launcher keeps by default (`iotstream run --log-lines`).
pub const DEFAULT_LOG_LINES: usize = 1000;

/// One output line of a process (or of the launcher itself).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// Its number in arrival order, over every process (from 1).
    pub seq: u64,
    /// The process that wrote it; `None` for the launcher's own lines (`[iotstream] …`).
    pub process: Option<String>,
    /// It came on standard error.
    pub stderr: bool,
    /// The line, without its ending (at most 64 KiB, the launcher's copying bound: a longer
    /// one comes in pieces).
    pub text: String,
}

impl LogLine {
    /// The line as the launcher printed it: `[process] text`.
    pub fn prefixed(&self) -> String {
        format!(
            "[{}] {}",
            self.process.as_deref().unwrap_or("iotstream"),
            self.text
        )
    }
}

/// Which lines a reader of the [`LogBook`] wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogFilter {
    /// Every process's and the launcher's.
    All,
    /// One process's.
    Process(String),
    /// The launcher's own.
    Launcher,
}

impl LogFilter {
    fn wants(&self, source: &Option<String>) -> bool {
        match self {
            LogFilter::All => true,
            LogFilter::Process(p) => source.as_deref() == Some(p.as_str()),
            LogFilter::Launcher => source.is_none(),
        }
    }
}

/// The last output lines of every process, bounded per process (a ring of `N` lines, at most
/// [`LOG_BYTES_PER_SOURCE`] bytes), numbered in arrival order so that readers can interleave
/// them and follow new ones.
pub struct LogBook {
    book: Mutex<Book>,
    grew: Condvar,
    lines_per_source: usize,
}

#[derive(Default)]
struct Book {
    /// The last number given.
    last: u64,
    /// Per source (`None`: the launcher), its lines and their bytes.
    sources: BTreeMap<Option<String>, (VecDeque<LogLine>, usize)>,
    /// No line will come any more.
    ended: bool,
}

impl LogBook {
    /// A book keeping the last `lines_per_source` lines of each process (at least 1).
    pub fn new(lines_per_source: usize) -> LogBook {
        LogBook {
            book: Mutex::default(),
            grew: Condvar::new(),
            lines_per_source: lines_per_source.max(1),
        }
    }

    /// Adds a line of `process` (`None`: the launcher).
    pub fn push(&self, process: Option<&str>, stderr: bool, text: &str) {
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        b.last += 1;
        let line = LogLine {
            seq: b.last,
            process: process.map(str::to_string),
            stderr,
            text: text.to_string(),
        };
        let (lines, bytes) = b.sources.entry(line.process.clone()).or_default();
        *bytes += line.text.len();
        lines.push_back(line);
        while lines.len() > self.lines_per_source
            || (*bytes > LOG_BYTES_PER_SOURCE && lines.len() > 1)
        {
            if let Some(old) = lines.pop_front() {
                *bytes -= old.text.len();
            }
        }
        drop(b);
        self.grew.notify_all();
    }

    /// The number of the last line so far (0: none).
    pub fn last_seq(&self) -> u64 {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).last
    }

    /// The kept lines numbered after `after` that `filter` wants, in arrival order.
    pub fn since(&self, after: u64, filter: &LogFilter) -> Vec<LogLine> {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        Self::collect(&b, after, filter)
    }

    fn collect(b: &Book, after: u64, filter: &LogFilter) -> Vec<LogLine> {
        let mut out: Vec<LogLine> = b
            .sources
            .iter()
            .filter(|(source, _)| filter.wants(source))
            .flat_map(|(_, (lines, _))| lines.iter().filter(|l| l.seq > after).cloned())
            .collect();
        out.sort_by_key(|l| l.seq);
        out
    }

    /// Like [`since`](Self::since), waiting up to `timeout` for a line if there is none yet;
    /// also says whether the book has ended (no line will come any more).
    pub fn wait_since(
        &self,
        after: u64,
        filter: &LogFilter,
        timeout: Duration,
    ) -> (Vec<LogLine>, bool) {
        let deadline = std::time::Instant::now() + timeout;
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let lines = Self::collect(&b, after, filter);
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if !lines.is_empty() || b.ended || left.is_zero() {
                return (lines, b.ended);
            }
            b = self
                .grew
                .wait_timeout(b, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// No line will come any more: followers end.
    pub fn end(&self) {
        self.book.lock().unwrap_or_else(|p| p.into_inner()).ended = true;
        self.grew.notify_all();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_draining_process_still_counts_as_running() {
        let state = |status| super::ProcessState {
            status,
            ..Default::default()
        };
        let s = super::Status {
            processes: vec![
                state(ProcessStatus::Draining),
                state(ProcessStatus::Running),
                state(ProcessStatus::Ended),
                state(ProcessStatus::Starting),
                state(ProcessStatus::Failed),
            ],
            ..Default::default()
        };
        assert_eq!(s.running(), (2, 5));
    }

    use super::*;

    #[test]
    fn the_book_keeps_the_last_lines_per_process_in_arrival_order() {
        let book = LogBook::new(3);
        for i in 0..5 {
            book.push(Some("a"), false, &format!("a{i}"));
            book.push(Some("b"), i == 4, &format!("b{i}"));
        }
        book.push(None, true, "launcher says");
        let all: Vec<String> = book
            .since(0, &LogFilter::All)
            .iter()
            .map(LogLine::prefixed)
            .collect();
        assert_eq!(
            all,
            [
                "[a] a2",
                "[b] b2",
                "[a] a3",
                "[b] b3",
                "[a] a4",
                "[b] b4",
                "[iotstream] launcher says"
            ]
        );
        let b: Vec<LogLine> = book.since(0, &LogFilter::Process("b".into()));
        assert_eq!(b.len(), 3);
        assert!(b[2].stderr && !b[1].stderr);
        assert_eq!(
            book.since(b[1].seq, &LogFilter::Process("b".into())),
            [b[2].clone()]
        );
        assert_eq!(book.since(0, &LogFilter::Launcher).len(), 1);
    }

    #[test]
    fn long_lines_are_bounded_in_bytes_too() {
        let book = LogBook::new(1000);
        let line = "x".repeat(64 * 1024);
        for _ in 0..200 {
            book.push(Some("a"), false, &line);
        }
        let kept = book.since(0, &LogFilter::All);
        assert_eq!(kept.len(), LOG_BYTES_PER_SOURCE / line.len());
        assert_eq!(kept.last().map(|l| l.seq), Some(200));
    }

    #[test]
    fn a_follower_wakes_for_a_new_line_and_for_the_end() {
        let book = std::sync::Arc::new(LogBook::new(10));
        book.push(Some("a"), false, "first");
        let after = book.last_seq();
        let writer = {
            let book = std::sync::Arc::clone(&book);
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(50));
                book.push(Some("a"), false, "second");
                std::thread::sleep(Duration::from_millis(50));
                book.end();
            })
        };
        let filter = LogFilter::Process("a".into());
        let (lines, ended) = book.wait_since(after, &filter, Duration::from_secs(60));
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].text, "second");
        assert!(!ended);
        let (lines, ended) = book.wait_since(lines[0].seq, &filter, Duration::from_secs(60));
        assert!(lines.is_empty() && ended);
        writer.join().unwrap();
    }

    #[test]
    fn status_answers_leave_the_samples_out() {
        let info = GraphInfo {
            app: "demo".into(),
            default_capacity: 1,
            agents: Vec::new(),
            edges: Vec::new(),
            processes: Vec::new(),
            hosts: Vec::new(),
        };
        let board = Board::new(
            info,
            "1-a".into(),
            "local".into(),
            &["main".to_string(), "work".to_string()],
            Duration::from_secs(1),
            10,
        );
        board.record_sample(
            1,
            42,
            ProcessSample {
                pid: 7,
                cpu_ns: 5,
                ..ProcessSample::default()
            },
        );
        let full = board.status(true);
        assert_eq!(full.processes[1].sample.as_ref().map(|s| s.pid), Some(42));
        assert!(full.processes[1].sample_ms > 0);
        let small = board.status(false);
        assert!(small.processes.iter().all(|p| p.sample.is_none()));
        assert_eq!(small.processes[1].sample_ms, full.processes[1].sample_ms);
        assert_eq!(small.app, "demo");
        assert_eq!(board.processes(), ["main", "work"]);
    }
}
