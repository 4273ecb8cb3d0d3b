//! Log monitoring: an alert when errors burst in a log that arrives on standard input.
//!
//! ```text
//! log ──────────▶ severity ──────────▶ error_rate ───▶ alert ─────────▶ report
//! (source_stdin)  (map_with_state)     (map_window)    (filter_map)     (for_each)
//! ```
//!
//! - `severity` numbers each line and classifies it by the first level word in it (`ERROR`,
//!   `FATAL` or `CRITICAL` are errors, `WARN`/`WARNING` warnings, anything else information);
//! - `error_rate` computes the share of errors in windows of 100 lines, every 50 lines;
//! - `alert` raises a [`Burst`] when that share reaches 20 %, once per burst: it re-arms when a
//!   window falls below 5 %;
//! - `report` prints each burst.
//!
//! ```text
//! journalctl -f | cargo run --release --example log_monitor
//! (seq 300 | sed 's/^/INFO request /'; seq 60 | sed 's/^/ERROR db timeout /'; seq 300 | sed 's/^/INFO request /') \
//!     | cargo run --release --example log_monitor
//! ```
//!
//! The same binary under the launcher, with the reader of standard input moved to a process of
//! its own (`examples/log_monitor.toml`); standard input follows it:
//!
//! ```text
//! cargo build --release --example log_monitor --bin iotstream
//! journalctl -f | target/release/iotstream run target/release/examples/log_monitor \
//!     --deploy examples/log_monitor.toml     # or tail -F /var/log/syslog | ..., where it exists
//! ```
//!
//! `tests/log_monitor.rs` compiles this file as a module (`#[path]`) and checks the alerts with
//! the deterministic harness and a threaded run.

// Compiled as a module of tests/log_monitor.rs too, which does not use `main`.
#![cfg_attr(test, allow(dead_code))]

use iotstream::{Graph, Stream};
use serde::{Deserialize, Serialize};

/// How serious a log line is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    /// Anything that is not a warning or an error.
    Info,
    /// `WARN` or `WARNING`.
    Warning,
    /// `ERROR`, `FATAL` or `CRITICAL`.
    Error,
}

/// The severity of `line`: its first word that names a level (case-insensitive, punctuation
/// around it ignored, as in `[ERROR]` or `level=error`).
pub fn severity(line: &str) -> Severity {
    for word in line.split(|c: char| !c.is_ascii_alphabetic()) {
        match word.to_ascii_uppercase().as_str() {
            "ERROR" | "FATAL" | "CRITICAL" => return Severity::Error,
            "WARN" | "WARNING" => return Severity::Warning,
            "INFO" | "DEBUG" | "TRACE" => return Severity::Info,
            _ => {}
        }
    }
    Severity::Info
}

/// The share of errors in a window of lines: (first line, last line, share in 0..=1), lines
/// numbered from 1.
pub type Rate = (u64, u64, f64);

/// A burst of errors: the window where the share of errors first reached the threshold.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Burst {
    /// The window's first line (from 1).
    pub first_line: u64,
    /// Its last line.
    pub last_line: u64,
    /// The share of errors in it, 0 to 1.
    pub error_share: f64,
}

/// The monitor's settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Lines per window.
    pub window: usize,
    /// Lines between the starts of two windows.
    pub step: usize,
    /// The share of errors that raises an alert.
    pub alert_at: f64,
    /// The share of errors below which the alert re-arms.
    pub rearm_below: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            window: 100,
            step: 50,
            alert_at: 0.2,
            rearm_below: 0.05,
        }
    }
}

/// Adds the monitor's agents, reading `lines`; returns the stream of bursts.
pub fn build(g: &mut Graph, lines: &Stream<String>, cfg: &Config) -> Stream<Burst> {
    let numbered = g.map_with_state("severity", lines, 0u64, |line: &String, n: u64| {
        ((n + 1, severity(line)), n + 1)
    });
    let rates = g.map_window(
        "error_rate",
        &numbered,
        cfg.window,
        cfg.step,
        |w: &[(u64, Severity)]| -> Rate {
            let errors = w.iter().filter(|(_, s)| *s == Severity::Error).count();
            (w[0].0, w[w.len() - 1].0, errors as f64 / w.len() as f64)
        },
    );
    let (alert_at, rearm_below) = (cfg.alert_at, cfg.rearm_below);
    let mut armed = true;
    g.filter_map("alert", &rates, move |&(first, last, share): &Rate| {
        if armed && share >= alert_at {
            armed = false;
            Some(Burst {
                first_line: first,
                last_line: last,
                error_share: share,
            })
        } else {
            if share < rearm_below {
                armed = true;
            }
            None
        }
    })
}

/// The whole application: standard input's lines, the monitor, and `report` printing each
/// burst.
pub fn application(cfg: &Config) -> Graph {
    let mut g = Graph::new("log_monitor");
    let lines = g.source_stdin("log");
    let bursts = build(&mut g, &lines, cfg);
    g.for_each("report", &bursts, |b: &Burst| {
        println!(
            "ALERT lines {}-{}: {:.0} % errors",
            b.first_line,
            b.last_line,
            b.error_share * 100.0
        )
    });
    g
}

fn main() {
    iotstream::init_logging();
    if let Err(e) = application(&Config::default()).run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
