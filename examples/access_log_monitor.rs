//! Access-log monitoring in event time: the rate of server errors (5xx) per virtual host per
//! 10 s of the time the log lines carry, and an alert above a threshold, on a log that arrives
//! out of order and goes quiet, with no buffering written by hand.
//!
//! ```text
//! log ──────▶ parse ──────▶ timed ──────────────▶ per_host ─────────────▶ alert ──────▶ report
//! (file)      (filter_map)   (watermarks:          (keyed_event_window:    (filter_map)  (for_each)
//!                             5 s out of order,     10 s tumbling per
//!                             idle after 2 s)       virtual host)
//!                                                   └─ late lines ─▶ count
//! ```
//!
//! - `parse` reads nginx-style lines, `vhost client - - [02/Dec/2026:21:31:39 +0000] "GET / HTTP/1.1"
//!   503 512 "-" "agent"`, into `(milliseconds since the epoch, Access)`; lines that do not parse
//!   are counted and skipped;
//! - `timed` puts watermarks on the stream: lines may be written up to 5 s out of order (a busy
//!   worker flushes late); a line more than 5 s behind the newest is late;
//! - `per_host` counts requests and 5xx per virtual host in tumbling 10 s windows of event time,
//!   emitted once the watermark passes their end. When the log goes quiet, the open windows are
//!   emitted after 5 s of wall clock (`fire_when_idle`), and at the end of the log the last ones
//!   (`Final`): the last alert always comes;
//! - `alert` raises an alert for a window with at least 10 requests of which 20 % or more failed;
//! - `report` prints each alert; the late lines are counted.
//!
//! ```text
//! cargo run --release --example access_log_monitor               # on a log it generates
//! cargo run --release --example access_log_monitor -- access.log # on your own log
//! ```
//!
//! `tests/access_log_monitor.rs` compiles this file as a module (`#[path]`) and checks the
//! alerts against a reference, whatever the order of the lines within the bound.

// Compiled as a module of tests/access_log_monitor.rs too, which does not use `main`.
#![cfg_attr(test, allow(dead_code))]

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotstream::ops::event::Watermarks;
use iotstream::ops::event_window::{EventWindow, Firing, KeyedWindow};
use iotstream::{Graph, Stream};
use serde::{Deserialize, Serialize};

/// One request of the log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// The virtual host it was for.
    pub vhost: String,
    /// The HTTP status code.
    pub status: u16,
}

/// Requests and server errors in one window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Requests.
    pub requests: u64,
    /// Of which 5xx.
    pub errors: u64,
}

/// An alert: a virtual host's window with too many server errors.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// The virtual host.
    pub vhost: String,
    /// The window, in milliseconds since the epoch: `[start, end)`.
    pub start: u64,
    /// Its end.
    pub end: u64,
    /// Its counts.
    pub counts: Counts,
    /// Why the window was emitted (`Final` or `Early`: the log ended or went quiet).
    pub firing: Firing,
}

/// The monitor's settings.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// How far out of order lines may come, in ms.
    pub max_delay_ms: u64,
    /// Window length, in ms of event time.
    pub window_ms: u64,
    /// The fewest requests in a window for an alert.
    pub min_requests: u64,
    /// The share of 5xx that raises an alert.
    pub alert_at: f64,
    /// Wall-clock quiet time after which open windows are emitted.
    pub quiet: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_delay_ms: 5_000,
            window_ms: 10_000,
            min_requests: 10,
            alert_at: 0.2,
            quiet: Duration::from_secs(5),
        }
    }
}

/// Days from 1970-01-01 to `y-m-d` (proleptic Gregorian; Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp as i64 + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Milliseconds since the epoch of an nginx `$time_local`: `02/Dec/2026:21:31:39 +0000`.
pub fn parse_time(s: &str) -> Option<u64> {
    let (date, zone) = s.split_once(' ')?;
    let mut it = date.split([':', '/']);
    let day: u32 = it.next()?.parse().ok()?;
    let month = match it.next()? {
        "Jan" => 1,
        "Feb" => 2,
        "Mar" => 3,
        "Apr" => 4,
        "May" => 5,
        "Jun" => 6,
        "Jul" => 7,
        "Aug" => 8,
        "Sep" => 9,
        "Oct" => 10,
        "Nov" => 11,
        "Dec" => 12,
        _ => return None,
    };
    let year: i64 = it.next()?.parse().ok()?;
    let (h, m, sec): (i64, i64, i64) = (
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
        it.next()?.parse().ok()?,
    );
    if it.next().is_some() || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    let sign = match zone.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let z: i64 = zone.get(1..5)?.parse().ok()?;
    let offset = sign * ((z / 100) * 3600 + (z % 100) * 60);
    let secs = days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec - offset;
    u64::try_from(secs).ok().map(|s| s * 1000)
}

/// `(ms since the epoch, access)` of one log line, if it is one.
pub fn parse_line(line: &str) -> Option<(u64, Access)> {
    let mut words = line.split(' ');
    let vhost = words.next()?.to_string();
    let open = line.find('[')?;
    let close = open + line[open..].find(']')?;
    let t = parse_time(&line[open + 1..close])?;
    // After the request's closing quote: the status.
    let after = &line[close..];
    let q1 = after.find('"')?;
    let q2 = q1 + 1 + after[q1 + 1..].find('"')?;
    let status: u16 = after[q2 + 1..].split_whitespace().next()?.parse().ok()?;
    if vhost.is_empty() || !(100..=599).contains(&status) {
        return None;
    }
    Some((t, Access { vhost, status }))
}

/// One log line in the format [`parse_line`] reads.
pub fn format_line(t_ms: u64, a: &Access, path: &str) -> String {
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = (t_ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Hinnant).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{} 203.0.113.7 - - [{:02}/{}/{}:{:02}:{:02}:{:02} +0000] \"GET {path} HTTP/1.1\" {} 512 \"-\" \"probe/1.0\"",
        a.vhost,
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        a.status
    )
}

/// A log of `minutes` of traffic for three virtual hosts starting at `t0_ms`, as an nginx with
/// several workers writes it: lines up to 3 s out of order, one line in 200 written 30 s late
/// (beyond the monitor's bound: late), a burst of 503s on `shop.example` in minute 2, and a
/// quiet minute (no line at all) in minute 4. Deterministic for a `seed`. Returns the lines and
/// how many were written beyond the bound.
pub fn generate(t0_ms: u64, minutes: u64, seed: u64) -> (Vec<String>, u64) {
    // A small deterministic generator (splitmix64): no dependency for an example.
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    };
    let hosts = ["www.example", "shop.example", "api.example"];
    // (written at, line)
    let mut out: Vec<(u64, String)> = Vec::new();
    let mut beyond = 0;
    let end = t0_ms + minutes * 60_000;
    let mut t = t0_ms;
    while t < end {
        let minute = (t - t0_ms) / 60_000;
        t += 20 + next() % 60;
        if minute == 4 {
            continue; // the quiet minute
        }
        let vhost = hosts[(next() % 3) as usize];
        let burst = vhost == "shop.example" && minute == 2;
        let status = if burst && next() % 100 < 40 {
            503
        } else if next() % 1000 < 5 {
            500
        } else {
            200
        };
        let a = Access {
            vhost: vhost.to_string(),
            status,
        };
        let written = if next() % 200 == 0 {
            beyond += 1;
            t + 30_000
        } else {
            t + next() % 3_000
        };
        out.push((written, format_line(t, &a, "/")));
    }
    out.sort_by_key(|(w, _)| *w);
    (out.into_iter().map(|(_, l)| l).collect(), beyond)
}

/// `HH:MM:SS` (UTC) of a time in ms since the epoch.
pub fn time_of_day(t_ms: u64) -> String {
    let s = t_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// What the monitor counts besides its alerts.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Lines that did not parse.
    pub unparsed: Arc<AtomicU64>,
    /// Lines behind the watermark: too late for their window.
    pub late: iotstream::LateCounter,
}

/// Adds the monitor's agents, reading `lines`; returns the alerts and the tallies.
pub fn build(g: &mut Graph, lines: &Stream<String>, cfg: &Config) -> (Stream<Alert>, Tally) {
    let unparsed: Arc<AtomicU64> = Arc::default();
    let bad = Arc::clone(&unparsed);
    let accesses = g.filter_map("parse", lines, move |line: &String| {
        let parsed = parse_line(line);
        if parsed.is_none() {
            bad.fetch_add(1, Ordering::Relaxed);
        }
        parsed
    });
    let timed = g.watermarks(
        "timed",
        &accesses,
        Watermarks::bounded(cfg.max_delay_ms).idle_after(Duration::from_secs(2)),
    );
    let windows = g.keyed_event_window(
        "per_host",
        &timed,
        |e: &(u64, Access)| e.1.vhost.clone(),
        EventWindow::tumbling(cfg.window_ms).fire_when_idle(cfg.quiet),
        |w: &[(u64, Access)]| Counts {
            requests: w.len() as u64,
            errors: w.iter().filter(|(_, a)| a.status >= 500).count() as u64,
        },
    );
    let (min_requests, alert_at) = (cfg.min_requests, cfg.alert_at);
    let alerts = g.filter_map(
        "alert",
        &windows.windows,
        move |w: &KeyedWindow<String, Counts>| {
            let c = w.value;
            (c.requests >= min_requests && c.errors as f64 >= alert_at * c.requests as f64).then(
                || Alert {
                    vhost: w.key.clone(),
                    start: w.start,
                    end: w.end,
                    counts: c,
                    firing: w.firing,
                },
            )
        },
    );
    (
        alerts,
        Tally {
            unparsed,
            late: windows.late_count,
        },
    )
}

/// The whole application over the lines of `path`, printing each alert.
pub fn application(path: PathBuf, cfg: &Config) -> (Graph, Tally) {
    let mut g = Graph::new("access_log_monitor");
    let lines = g.source_file_lines("log", path);
    let (alerts, tally) = build(&mut g, &lines, cfg);
    g.for_each("report", &alerts, |a: &Alert| {
        println!(
            "ALERT {} {}-{} UTC: {} of {} requests failed ({:.0} %){}",
            a.vhost,
            time_of_day(a.start),
            time_of_day(a.end),
            a.counts.errors,
            a.counts.requests,
            100.0 * a.counts.errors as f64 / a.counts.requests as f64,
            match a.firing {
                Firing::OnTime => "",
                Firing::Late => " (corrected)",
                Firing::Final => " (at the end of the log)",
                Firing::Early => " (the log went quiet)",
                Firing::Evicted => " (host evicted)",
            }
        )
    });
    (g, tally)
}

fn main() {
    iotstream::init_logging();
    // The generated log is a file without a name, which the system removes once this process
    // ends, however it ends: no clean-up after `run` is needed. None would run when the
    // launcher asks the program to describe its graph (`run` ends the process there), nor in
    // a process killed by a signal.
    let (path, _generated) = match std::env::args_os().nth(1) {
        Some(p) => (PathBuf::from(p), None),
        None => {
            // 2026-12-02 12:00:00 UTC, six minutes of traffic.
            let (lines, beyond) = generate(1_796_212_800_000, 6, 7);
            let written = tempfile::tempfile().and_then(|mut file| {
                std::io::Write::write_all(&mut file, (lines.join("\n") + "\n").as_bytes())?;
                Ok(file)
            });
            let file = match written {
                Ok(f) => f,
                Err(e) => {
                    eprintln!("error: cannot write the generated log: {e}");
                    std::process::exit(1);
                }
            };
            // The source opens it by this path, which names the open file of this process.
            let path = PathBuf::from(format!(
                "/proc/self/fd/{}",
                std::os::fd::AsRawFd::as_raw_fd(&file)
            ));
            println!(
                "generated {} lines ({} written more than 5 s late) in a temporary file without \
                 a name, removed when the program ends",
                lines.len(),
                beyond,
            );
            (path, Some(file))
        }
    };
    let (g, tally) = application(path, &Config::default());
    if let Err(e) = g.run() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    println!(
        "late lines: {}, lines that did not parse: {}",
        tally.late.get(),
        tally.unparsed.load(Ordering::Relaxed)
    );
}
