//! `iotstream bench`: what each way of running agents costs, measured on this machine, each
//! figure beside a baseline measured in the same run.
//!
//! # What runs
//!
//! A **cell** is one mode × element size × input pattern:
//!
//! - **throughput**: source → map → sink over elements of the size
//!   (`N` bytes of plain data, see docs/benchmarks.md), the source feeding for `--duration` as fast
//!   as the graph takes it; elements/s counts what the sink got, from the source's first element
//!   to the sink's last (both on `CLOCK_MONOTONIC`, shared by the processes of a host);
//! - **latency**: a ping-pong pair (ping → echo → pong, one element in flight) for half the
//!   duration; half of each round trip is one sample, p50/p99/p999 over them (the first
//!   [`WARM_UP`] left out). Back to back by default; at each rate of `--rate` the ping side
//!   sends the next ping at the next tick of that rate ([`Pace`]), never before the previous
//!   pong came back, so the pair sleeps between round trips as a sensor's stream does;
//! - **baseline**: the same two measures over a raw mechanism moving the same bytes, fed the
//!   same way (`src/bench/raw.rs`): crossbeam channels for `thread` and `threads`, a raw shared-memory
//!   ring between two processes for `processes`, a raw loopback TCP connection for `tcp`.
//!
//! Modes ([`Mode`]): `thread` (every agent on one thread), `threads` (each on a thread of its
//! own), `processes` (the sink, or the echo, in a second process over shared memory), `tcp`
//! (map → sink, or both echo connections, forced onto a TCP link on loopback). Patterns
//! ([`Pattern`]): `batch` (a [`Source`](crate::Source) handing over batches) and `single` (one
//! [`InputSender::send`](crate::InputSender::send) per element). The `scaling` mode runs
//! shapes instead ([`Shape`]): a chain of agents, a fan-out to readers, a chain of processes,
//! and prints how the time grows.
//!
//! Every cell runs in a **fresh process** of this same binary (the `iotstream` executable
//! re-executed with [`CELL_VAR`] naming the cell; [`cell_from_env`] runs it), so that cells
//! share no state, a cell's CPU time is exactly its process's (and its children's), a
//! multi-process graph can re-execute that binary as its other processes, and a cell that
//! fails, panics or hangs (killed after `--timeout`) is a row with its error, never the end of
//! the bench. Every cell checks that every element sent was delivered.

mod element;
mod graphs;
mod raw;
mod report;
mod scaling;

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::CommandExt as _;
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use serde::{Deserialize, Serialize};

pub use element::SIZES;
pub use raw::check_nats;
pub use report::{check_output, render_scaling, render_table, write_json, write_plot};
pub use scaling::Shape;

/// The environment variable that makes the `iotstream` binary run one cell (its value, JSON)
/// instead of its command line. Inherited by the cell's own processes.
pub const CELL_VAR: &str = "IOTSTREAM_BENCH_CELL";

/// The marker of a result line a cell's process prints on standard output.
const RESULT_MARK: &str = "iotstream-bench-result";

/// How a cell's process starts its error line on standard error.
const CELL_ERROR: &str = "iotstream bench cell: ";

/// Round trips left out of the latency percentiles at the start (cold caches, threads not yet
/// awake), when there are at least twice as many.
pub const WARM_UP: usize = 100;

/// Feeders read the clock once per this many elements.
const CLOCK_EVERY: usize = 64;

/// Where the agents of a cell run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Every agent on one thread (`Graph::place_on_thread` with one name).
    Thread,
    /// Every agent on a thread of its own (`place_on_thread` with its own name).
    Threads,
    /// One process, no placement: the agents take turns on the worker pool (about a thread
    /// per core), as a graph does unless told otherwise.
    Pool,
    /// The sink (the echo) in a second process; the connections to it are shared-memory rings.
    Processes,
    /// One process; map → sink (both echo connections) forced to `Transport::Tcp` on loopback.
    Tcp,
    /// As `processes`, every ring in low-latency mode (`Connection::spin` of [`SPIN_WINDOW`]:
    /// always, as iceoryx2's polling ping-pong, with which it is compared).
    Spin,
    /// One process; map → sink (both echo connections) forced through a NATS JetStream
    /// broker (`Transport::Broker`, the server `--nats` names).
    Broker,
}

/// How long the rings of the `spin` mode are checked before their readers sleep: always (a
/// window shorter than the gap between messages, 1 ms at 1,000/s, sleeps as blocking mode
/// does, and costs a wake-up per message).
pub const SPIN_WINDOW: Duration = Duration::MAX;

impl Mode {
    /// Every mode, in the order the bench runs them.
    pub const ALL: [Mode; 7] = [
        Mode::Thread,
        Mode::Threads,
        Mode::Pool,
        Mode::Processes,
        Mode::Tcp,
        Mode::Spin,
        Mode::Broker,
    ];

    /// The modes a plain `iotstream bench` runs (`spin` keeps a core busy: asked for only).
    pub const DEFAULT: [Mode; 5] = [
        Mode::Thread,
        Mode::Threads,
        Mode::Pool,
        Mode::Processes,
        Mode::Tcp,
    ];

    /// Its name on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Thread => "thread",
            Mode::Threads => "threads",
            Mode::Pool => "pool",
            Mode::Processes => "processes",
            Mode::Tcp => "tcp",
            Mode::Spin => "spin",
            Mode::Broker => "broker",
        }
    }

    /// Its sink (or echo) runs in a process of its own.
    pub fn two_processes(self) -> bool {
        matches!(self, Mode::Processes | Mode::Spin)
    }

    /// The baseline its figures are compared with.
    pub fn baseline(self) -> Baseline {
        match self {
            Mode::Thread | Mode::Threads | Mode::Pool => Baseline::Crossbeam,
            Mode::Processes | Mode::Spin => Baseline::ShmRing,
            Mode::Tcp => Baseline::RawTcp,
            Mode::Broker => Baseline::RawNats,
        }
    }
}

/// How the source hands elements to the graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    /// A `Source` whose `fill` appends a whole batch (as `source_iter` does).
    Batch,
    /// One `InputSender::push(x)` per element, from the program's thread (as sensor
    /// callbacks, sockets and MQTT clients deliver).
    Single,
}

impl Pattern {
    /// Its name on the command line and in the output.
    pub fn name(self) -> &'static str {
        match self {
            Pattern::Batch => "batch",
            Pattern::Single => "single",
        }
    }
}

/// A raw mechanism a mode is compared with (`src/bench/raw.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Baseline {
    /// Threads and bounded crossbeam channels.
    Crossbeam,
    /// A minimal shared-memory ring between two processes.
    ShmRing,
    /// A loopback TCP connection between two threads.
    RawTcp,
    /// An async-nats JetStream publisher and pull subscriber on the same server as `broker`.
    RawNats,
}

impl Baseline {
    /// Its name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Baseline::Crossbeam => "crossbeam",
            Baseline::ShmRing => "shm-ring",
            Baseline::RawTcp => "raw-tcp",
            Baseline::RawNats => "raw-nats",
        }
    }
}

/// What `iotstream bench` runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// The modes measured cell by cell.
    pub modes: Vec<Mode>,
    /// Whether the scaling shapes run.
    pub scaling: bool,
    /// Element sizes in bytes, each one of [`SIZES`].
    pub sizes: Vec<usize>,
    /// Input patterns.
    pub patterns: Vec<Pattern>,
    /// How long each throughput run feeds (a latency run takes half as long).
    pub duration: Duration,
    /// Pings per second of the latency runs, one run (one row) each; 0 is back to back.
    pub rates: Vec<u32>,
    /// Scaling: lengths of the chain of agents.
    pub agents: Vec<usize>,
    /// Scaling: readers of one stream.
    pub readers: Vec<usize>,
    /// Scaling: processes in a chain.
    pub processes: Vec<usize>,
    /// How long a cell may run beyond its duration before it is killed and reported failed.
    pub timeout: Duration,
    /// The NATS server (JetStream on) of the `broker` mode and its baseline.
    pub nats: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            modes: Mode::DEFAULT.to_vec(),
            scaling: true,
            sizes: vec![8, 1024],
            patterns: vec![Pattern::Batch, Pattern::Single],
            duration: Duration::from_millis(500),
            rates: vec![0],
            agents: vec![1, 10, 100, 1000],
            readers: vec![1, 10, 100],
            processes: vec![1, 2, 4],
            timeout: Duration::from_secs(60),
            nats: None,
        }
    }
}

/// Parses `--modes`: names separated by commas (`thread,threads,pool,processes,tcp,spin,broker,
/// scaling`).
pub fn parse_modes(text: &str) -> Result<(Vec<Mode>, bool), String> {
    let mut modes = Vec::new();
    let mut scaling = false;
    for word in list_words(text)? {
        match word {
            "scaling" => scaling = true,
            w => match Mode::ALL.iter().find(|m| m.name() == w) {
                Some(m) if !modes.contains(m) => modes.push(*m),
                Some(_) => {}
                None => {
                    let known: Vec<&str> = Mode::ALL.iter().map(|m| m.name()).collect();
                    return Err(format!(
                        "unknown mode '{w}': the modes are {} and scaling",
                        known.join(", ")
                    ));
                }
            },
        }
    }
    Ok((modes, scaling))
}

/// Parses `--sizes`: element sizes in bytes, each one of [`SIZES`].
pub fn parse_sizes(text: &str) -> Result<Vec<usize>, String> {
    let mut sizes = Vec::new();
    for word in list_words(text)? {
        let size = parse_size(word)?;
        if !sizes.contains(&size) {
            sizes.push(size);
        }
    }
    Ok(sizes)
}

fn parse_size(word: &str) -> Result<usize, String> {
    let lower = word.to_ascii_lowercase();
    let (number, scale) = if let Some(n) = lower.strip_suffix("kib").or(lower.strip_suffix('k')) {
        (n, 1024)
    } else {
        (lower.strip_suffix('b').unwrap_or(&lower), 1)
    };
    let size = number
        .trim()
        .parse::<usize>()
        .ok()
        .and_then(|n| n.checked_mul(scale));
    let supported = SIZES.map(|s| s.to_string()).join(", ");
    match size {
        Some(s) if SIZES.contains(&s) => Ok(s),
        Some(s) => Err(format!(
            "no element of {s} bytes: the sizes are {supported} (bytes; 1k or 64KiB also read)"
        )),
        None => Err(format!(
            "'{word}' is not a size: the sizes are {supported} (bytes; 1k or 64KiB also read)"
        )),
    }
}

/// Parses `--patterns`: `batch`, `single` or both.
pub fn parse_patterns(text: &str) -> Result<Vec<Pattern>, String> {
    let mut patterns = Vec::new();
    for word in list_words(text)? {
        let p = match word {
            "batch" => Pattern::Batch,
            "single" => Pattern::Single,
            w => {
                return Err(format!(
                    "unknown pattern '{w}': the patterns are batch and single"
                ))
            }
        };
        if !patterns.contains(&p) {
            patterns.push(p);
        }
    }
    Ok(patterns)
}

/// The highest `--rate`: one ping per microsecond is already faster than any round trip here.
pub const MAX_RATE: u32 = 1_000_000;

/// Parses `--rate`: pings per second of the latency runs, comma-separated (`0,1000`; 0 is back
/// to back), each from 0 to [`MAX_RATE`].
pub fn parse_rates(text: &str) -> Result<Vec<u32>, String> {
    let mut rates = Vec::new();
    for word in list_words(text)? {
        let rate = word
            .replace('_', "")
            .parse::<u32>()
            .ok()
            .filter(|r| *r <= MAX_RATE)
            .ok_or_else(|| {
                format!(
                    "'{word}' is not a rate: write messages per second, from 0 (back to back) \
                     to {MAX_RATE}"
                )
            })?;
        if !rates.contains(&rate) {
            rates.push(rate);
        }
    }
    Ok(rates)
}

/// Paces a latency run's pings at a fixed rate: ticks every `1/rate` seconds from the first
/// ping on; [`Pace::wait`] sleeps until the first tick not yet past. Called once the previous
/// pong is back, it never sends a ping before that pong, and a round trip longer than a tick
/// skips the ticks it overran (no catching up in a burst). At rate 0 it never waits.
/// `benches/ipc_latency.rs` paces its iceoryx2 runs with it too.
pub struct Pace {
    period: Option<Duration>,
    next: Option<Instant>,
}

impl Pace {
    /// A pace of `rate` pings per second (0: back to back).
    pub fn new(rate: u32) -> Pace {
        Pace {
            period: (rate > 0).then(|| Duration::from_secs(1) / rate),
            next: None,
        }
    }

    /// Sleeps until the next tick (at once for the first ping, and always at rate 0).
    pub fn wait(&mut self) {
        let Some(period) = self.period else {
            return;
        };
        let tick = Pace::tick(self.next, Instant::now(), period);
        loop {
            let now = Instant::now();
            if now >= tick {
                break;
            }
            std::thread::sleep(tick - now);
        }
        self.next = Some(tick + period);
    }

    /// When the ping sent at `now` or later goes: at once for the first (`scheduled` is
    /// `None`), at its tick if that is still ahead, else at the first tick of the grid at or
    /// after `now`.
    fn tick(scheduled: Option<Instant>, now: Instant, period: Duration) -> Instant {
        match scheduled {
            None => now,
            Some(t) if t >= now => t,
            Some(t) => {
                let steps = (now - t).as_nanos().div_ceil(period.as_nanos());
                t + period * u32::try_from(steps).unwrap_or(u32::MAX)
            }
        }
    }
}

/// Parses a duration in seconds (`0.5`, `2`, `1.5s`, `250ms`), from 10 ms to an hour.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 1e-3)
    } else {
        (t.strip_suffix('s').unwrap_or(t), 1.0)
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (0.01..=3600.0).contains(&(v * scale)) => {
            Ok(Duration::from_secs_f64(v * scale))
        }
        _ => Err(format!(
            "'{text}' is not a duration from 10ms to 3600s: write seconds (0.5, 2) or 250ms"
        )),
    }
}

/// Parses a list of counts (`1,10,100`), each from 1 to `max`, in increasing order.
pub fn parse_counts(text: &str, max: usize) -> Result<Vec<usize>, String> {
    let mut counts: Vec<usize> = Vec::new();
    for word in list_words(text)? {
        let n: usize = word
            .replace('_', "")
            .parse()
            .map_err(|_| format!("'{word}' is not a whole number"))?;
        if n == 0 || n > max {
            return Err(format!("{n} is out of range: from 1 to {max}"));
        }
        if counts.last().is_some_and(|&last| n <= last) {
            return Err(format!(
                "{n} after {}: give the counts in increasing order",
                counts[counts.len() - 1]
            ));
        }
        counts.push(n);
    }
    Ok(counts)
}

fn list_words(text: &str) -> Result<Vec<&str>, String> {
    let words: Vec<&str> = text
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if words.is_empty() {
        return Err("an empty list".into());
    }
    Ok(words)
}

/// One row of the table: a mode, size, pattern and latency rate, its baseline beside it. Rows
/// that differ only in their rate share one throughput run (and its figures).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Run {
    /// The mode's name.
    pub mode: String,
    /// Bytes per element.
    pub element_bytes: usize,
    /// The pattern's name.
    pub pattern: String,
    /// Pings per second of the latency run (and its baseline's): 0 is back to back.
    pub rate_per_s: u32,
    /// Elements the sink got per second of the throughput run.
    pub elements_per_s: f64,
    /// `elements_per_s` × `element_bytes`.
    pub bytes_per_s: f64,
    /// One-way latency (half a round trip), median, in nanoseconds.
    pub p50_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// The baseline's elements per second, same size and pattern, same run.
    pub baseline_elements_per_s: f64,
    /// Which baseline (`crossbeam`, `shm-ring`, `raw-tcp`).
    pub baseline: String,
    /// The baseline's one-way latency, median.
    pub baseline_p50_ns: u64,
    /// The baseline's 99th percentile.
    pub baseline_p99_ns: u64,
    /// The baseline's 99.9th percentile.
    pub baseline_p999_ns: u64,
    /// `elements_per_s / baseline_elements_per_s`: above 1, faster than the baseline.
    pub ratio: f64,
    /// `p50_ns / baseline_p50_ns`: above 1, slower than the baseline.
    pub latency_ratio: f64,
    /// CPU seconds of the throughput run, every process and thread (getrusage).
    pub cpu_s: f64,
    /// CPU seconds of the baseline's throughput run.
    pub baseline_cpu_s: f64,
    /// Elements the throughput run's source sent.
    pub sent: u64,
    /// Elements its sink got.
    pub delivered: u64,
    /// The same for the baseline.
    pub baseline_sent: u64,
    /// The same for the baseline.
    pub baseline_delivered: u64,
    /// Pings sent by the latency run.
    pub latency_sent: u64,
    /// Pongs it got back.
    pub latency_delivered: u64,
    /// Latency samples after the warm-up.
    pub latency_samples: u64,
    /// Seconds from the source's first element to the sink's last.
    pub elapsed_s: f64,
    /// Each connection's capacity, in elements.
    pub capacity: usize,
    /// Elements per batch of the `batch` pattern.
    pub batch: usize,
    /// What failed, if anything did (the figures of what failed are 0).
    pub error: Option<String>,
}

/// One point of a scaling shape.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ScalePoint {
    /// `chain`, `fan-out` or `processes`.
    pub shape: String,
    /// Agents in the chain, readers, or processes.
    pub n: usize,
    /// Elements the source sent.
    pub sent: u64,
    /// Elements delivered, summed over every reader.
    pub delivered: u64,
    /// Elements every reader should have got, summed (`sent` × readers).
    pub expected: u64,
    /// Seconds to build the graph.
    pub build_s: f64,
    /// Seconds from the start of building until `Graph::start` returned.
    pub start_s: f64,
    /// Seconds from the start of building to the end of the run.
    pub total_s: f64,
    /// `total_s / n`, in microseconds.
    pub per_unit_us: f64,
    /// `total_s` over the previous point's.
    pub time_ratio: Option<f64>,
    /// `k` in time ∝ nᵏ between the previous point and this one (1: linear).
    pub exponent: Option<f64>,
    /// Threads of the starter once started.
    pub threads: u64,
    /// Peak resident memory of the starter, KiB.
    pub max_rss_kib: u64,
    /// `start_s / n`, in microseconds.
    pub start_per_unit_us: f64,
    /// The starter's resident memory once started, before the first element, over what it
    /// was before the graph was built, per unit (KiB): what an idle agent costs.
    pub idle_kib_per_unit: f64,
    /// Its peak resident memory over what it was before the graph was built, per unit (KiB).
    pub peak_kib_per_unit: f64,
    /// The fewest batches any stream of the starter carried (with the chain: what the least
    /// busy agent sent on).
    pub min_batches: u64,
    /// CPU seconds, every process.
    pub cpu_s: f64,
    /// What failed, if anything did.
    pub error: Option<String>,
}

/// Everything one `iotstream bench` measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// One per mode × size × pattern.
    pub runs: Vec<Run>,
    /// The scaling shapes' points.
    pub scaling: Vec<ScalePoint>,
    /// What was asked.
    pub settings: serde_json::Value,
    /// The signal (2 for SIGINT, 15 for SIGTERM, 1 for SIGHUP) that stopped the bench before
    /// every cell ran: the rows are those of the cells that ran before it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interrupted: Option<i32>,
}

impl Run {
    /// The pattern, and the latency rate when it is paced: `batch`, `batch @1000/s`.
    pub fn pattern_label(&self) -> String {
        if self.rate_per_s == 0 {
            self.pattern.clone()
        } else {
            format!("{} @{}/s", self.pattern, self.rate_per_s)
        }
    }
}

impl Report {
    /// Every failure, one line each, naming the mode, size and pattern (with its rate when
    /// paced), or the shape and point.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for r in &self.runs {
            if let Some(e) = &r.error {
                out.push(format!(
                    "{} {} B {}: {e}",
                    r.mode,
                    r.element_bytes,
                    r.pattern_label()
                ));
            }
        }
        for p in &self.scaling {
            if let Some(e) = &p.error {
                out.push(format!("scaling {} {}: {e}", p.shape, p.n));
            }
        }
        out
    }
}

/// One cell, as handed to its process in [`CELL_VAR`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) enum Cell {
    Throughput(Mode, Params),
    Latency(Mode, Params),
    BaseThroughput(Baseline, Params),
    BaseLatency(Baseline, Params),
    Scaling(Shape, usize),
}

/// The parameters of a throughput or latency cell.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct Params {
    pub size: usize,
    pub pattern: Pattern,
    pub duration: Duration,
    /// Each connection's (or channel's, ring's) capacity in elements.
    pub capacity: usize,
    /// Elements per batch of the `batch` pattern.
    pub batch: usize,
    /// Latency cells: pings per second (0: back to back).
    pub rate: u32,
    /// The NATS server of the `broker` mode and its baseline.
    #[serde(default)]
    pub nats: Option<String>,
}

impl Params {
    fn new(size: usize, pattern: Pattern, duration: Duration) -> Params {
        // The default byte bound in flight per connection, within the default element bound:
        // what a graph that sets neither has.
        let capacity = crate::graph::DEFAULT_CAPACITY_BYTES / size;
        let capacity = capacity.clamp(16, crate::graph::DEFAULT_CAPACITY);
        let batch = (capacity / 4).clamp(1, 4096);
        Params {
            size,
            pattern,
            duration,
            capacity,
            batch,
            rate: 0,
            nats: None,
        }
    }
}

/// Prints one result line of a cell's process.
pub(crate) fn emit(value: serde_json::Value) {
    println!("{RESULT_MARK} {value}");
}

/// Nanoseconds on `CLOCK_MONOTONIC`: comparable between the processes of a host.
pub(crate) fn now_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC) {
        Ok(t) => t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64,
        Err(_) => 0,
    }
}

/// p50, p99 and p999 of `samples` (sorted in place; nearest rank), zeroes if empty.
pub fn percentiles(samples: &mut [u64]) -> (u64, u64, u64) {
    if samples.is_empty() {
        return (0, 0, 0);
    }
    samples.sort_unstable();
    let pick = |q: f64| {
        let rank = (q * samples.len() as f64).ceil() as usize;
        samples[rank.clamp(1, samples.len()) - 1]
    };
    (pick(0.5), pick(0.99), pick(0.999))
}

/// If this process was started to run one cell ([`CELL_VAR`] is set), runs it and returns the
/// exit code; `None` otherwise. The `iotstream` binary calls it first thing in `main`.
pub fn cell_from_env() -> Option<ExitCode> {
    let spec = std::env::var_os(CELL_VAR)?;
    let cell: Cell = match spec.to_str().map(serde_json::from_str) {
        Some(Ok(c)) => c,
        _ => {
            eprintln!("iotstream bench: {CELL_VAR} does not name a cell");
            return Some(ExitCode::from(2));
        }
    };
    let result = run_cell(&cell);
    Some(match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{CELL_ERROR}{e}");
            ExitCode::FAILURE
        }
    })
}

fn run_cell(cell: &Cell) -> Result<(), String> {
    let unsupported = |size: usize| format!("no element type of {size} bytes");
    match cell {
        Cell::Throughput(mode, p) => {
            element::with_size!(p.size, N => graphs::throughput::<N>(*mode, p))
                .ok_or_else(|| unsupported(p.size))?
                .map_err(|e| e.to_string())
        }
        Cell::Latency(mode, p) => element::with_size!(p.size, N => graphs::latency::<N>(*mode, p))
            .ok_or_else(|| unsupported(p.size))?
            .map_err(|e| e.to_string()),
        Cell::BaseThroughput(b, p) => element::with_size!(p.size, N => match b {
            Baseline::Crossbeam => raw::crossbeam_throughput::<N>(p),
            Baseline::ShmRing => raw::ring_throughput::<N>(p),
            Baseline::RawTcp => raw::tcp_throughput::<N>(p),
            Baseline::RawNats => raw::nats_throughput::<N>(p),
        })
        .ok_or_else(|| unsupported(p.size))?,
        Cell::BaseLatency(b, p) => element::with_size!(p.size, N => match b {
            Baseline::Crossbeam => raw::crossbeam_latency::<N>(p),
            Baseline::ShmRing => raw::ring_latency::<N>(p),
            Baseline::RawTcp => raw::tcp_latency::<N>(p),
            Baseline::RawNats => raw::nats_latency::<N>(p),
        })
        .ok_or_else(|| unsupported(p.size))?,
        Cell::Scaling(shape, n) => scaling::run(*shape, *n).map_err(|e| e.to_string()),
    }
}

/// What a cell's processes reported, merged, with its CPU time.
#[derive(Clone)]
struct Outcome {
    values: serde_json::Map<String, serde_json::Value>,
    cpu_s: f64,
}

impl Outcome {
    fn u64(&self, key: &str) -> u64 {
        self.values
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
    }
    /// `sent` and `delivered` must both be there and equal.
    fn check_delivery(&self, what: &str) -> Result<(), String> {
        let (sent, delivered) = (self.u64("sent"), self.u64("delivered"));
        if !self.values.contains_key("sent") || !self.values.contains_key("delivered") {
            return Err(format!("{what}: no count of what was sent and delivered"));
        }
        if sent == 0 {
            return Err(format!("{what}: sent nothing"));
        }
        if delivered != sent {
            return Err(format!("{what}: delivered {delivered} of {sent} elements"));
        }
        Ok(())
    }
}

/// `getrusage(who)`, zeroes if it fails.
pub(crate) fn rusage(who: libc::c_int) -> libc::rusage {
    // SAFETY: all zeroes is a valid `rusage` (integers and timevals).
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable rusage; `who` is RUSAGE_SELF or RUSAGE_CHILDREN.
    unsafe { libc::getrusage(who, &mut u) };
    u
}

/// CPU seconds used by this process's children that have been waited for (and theirs).
fn children_cpu_s() -> f64 {
    let u = rusage(libc::RUSAGE_CHILDREN);
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

/// Keeps the last lines of a child's standard error.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// The process group of the cell running now (its first process's pid), 0 between cells: a
/// second signal kills it before the bench ends.
static CELL_GROUP: AtomicU32 = AtomicU32::new(0);

/// The first process of the cell that ran last (its pid names its broker streams).
static LAST_CELL: AtomicU32 = AtomicU32::new(0);

/// The signal that interrupted the bench, 0 if none came.
static INTERRUPTED: AtomicI32 = AtomicI32::new(0);

/// How long an interrupted or killed cell's processes may take to be gone before its rings
/// are swept anyway (those of a process still alive then are left for `iotstream clean`).
const GROUP_GONE_WITHIN: Duration = Duration::from_secs(2);

/// The signal that interrupted the bench, if one did.
fn interrupted() -> Option<i32> {
    match INTERRUPTED.load(Ordering::SeqCst) {
        0 => None,
        signal => Some(signal),
    }
}

fn pid(id: u32) -> nix::unistd::Pid {
    nix::unistd::Pid::from_raw(id as i32)
}

/// A signal's name (`SIGINT` for 2), or `signal N` for a number that names none.
pub fn signal_name(signal: i32) -> String {
    Signal::try_from(signal).map_or_else(|_| format!("signal {signal}"), |s| s.to_string())
}

/// Waits until no process of `group` is left, at most `within`.
fn wait_group_gone(group: u32, within: Duration) {
    let until = Instant::now() + within;
    // `kill(-group, 0)` fails with ESRCH once the group is empty (a zombie still counts: the
    // starter's children are reaped by whoever adopted them).
    while nix::sys::signal::killpg(pid(group), None).is_ok() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Makes SIGINT, SIGTERM and SIGHUP stop the bench between two cells, or the cell running,
/// while the returned registration lives: the rows measured so far are kept
/// ([`Report::interrupted`]). A second signal ends the process at once (status 128 + the
/// signal), killing the cell running.
fn on_signals() -> Option<crate::launch::signals::Registration> {
    use crate::launch::signals::{register, Again, OnSignal};
    INTERRUPTED.store(0, Ordering::SeqCst);
    let actions = OnSignal {
        terminal: true,
        first: Box::new(|signal| {
            let _ = INTERRUPTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
        }),
        again: Again::Exit(Box::new(|| {
            let group = CELL_GROUP.load(Ordering::SeqCst);
            if group != 0 {
                let _ = nix::sys::signal::killpg(pid(group), Signal::SIGKILL);
                wait_group_gone(group, Duration::from_millis(500));
                let _ = crate::launch::sweep_stale(None);
            }
        })),
        bound: None,
    };
    register(actions).ok()
}

/// The error a cell's process wrote last (after [`CELL_ERROR`]), on one line: an error of
/// several lines (an application that is not well formed lists each problem on a line of its
/// own) keeps all of them.
fn cell_error(stderr: &str) -> Option<String> {
    let (_, error) = stderr.rsplit_once(CELL_ERROR)?;
    let lines: Vec<&str> = error
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Some(lines.join(" "))
}

/// Runs `cell` in a fresh process of this binary; kills it after `limit`.
fn spawn_cell(cell: &Cell, limit: Duration) -> Result<Outcome, String> {
    let exe = std::env::current_exe()
        .map_err(|e| format!("cannot find the iotstream binary to run a cell: {e}"))?;
    let spec = serde_json::to_string(cell).map_err(|e| e.to_string())?;
    let cpu_before = children_cpu_s();
    // A process group of its own (the cell's processes, a starter's children with it): a
    // terminal's Ctrl-C reaches this process only, which ends the cell and cleans up after it
    // (below) rather than the cell's processes dying where they stand; a cell killed is
    // killed whole.
    let mut child = Command::new(exe)
        .env(CELL_VAR, spec)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot start a cell process: {e}"))?;
    let group = child.id();
    CELL_GROUP.store(group, Ordering::SeqCst);
    LAST_CELL.store(group, Ordering::SeqCst);
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let mut bytes = Vec::new();
                let _ = p.read_to_end(&mut bytes);
                text = String::from_utf8_lossy(&bytes).into_owned();
            }
            text
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + limit;
    let mut killed = None;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if Instant::now() >= deadline || interrupted().is_some() => {
                killed = Some(interrupted());
                let _ = nix::sys::signal::killpg(pid(group), Signal::SIGKILL);
                break child.wait();
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => break Err(e),
        }
    }
    .map_err(|e| format!("waiting for a cell process: {e}"));
    let cpu_s = children_cpu_s() - cpu_before;
    if killed.is_some() || interrupted().is_some() {
        // Its processes are killed (or died of the signal); once all of them are gone, their
        // rings are provably stale.
        let _ = nix::sys::signal::killpg(pid(group), Signal::SIGKILL);
        wait_group_gone(group, GROUP_GONE_WITHIN);
        let _ = crate::launch::sweep_stale(None);
    }
    CELL_GROUP.store(0, Ordering::SeqCst);
    let status = status?;
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    match killed {
        Some(Some(signal)) => return Err(format!("interrupted ({})", signal_name(signal))),
        Some(None) => return Err(killed_after(limit, &stderr)),
        None => {}
    }
    if !status.success() {
        // The cell's own error line says it best; otherwise whatever it said last.
        let said = cell_error(&stderr).unwrap_or_else(|| last_lines(&stderr, 3));
        return Err(if said.is_empty() {
            format!("its process ended with {status}")
        } else {
            format!("{said} ({status})")
        });
    }
    let mut values = serde_json::Map::new();
    for line in stdout.lines() {
        if let Some((_, json)) = line.split_once(RESULT_MARK) {
            match serde_json::from_str::<serde_json::Value>(json.trim()) {
                Ok(serde_json::Value::Object(m)) => values.extend(m),
                _ => return Err(format!("a result line that is not JSON: {line}")),
            }
        }
    }
    Ok(Outcome { values, cpu_s })
}

/// `210 ms` below a second (never rounded to 0 s), `60 s`, `2.5 s` from a second.
fn span(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        let s = format!("{:.3}", d.as_secs_f64());
        format!("{} s", s.trim_end_matches('0').trim_end_matches('.'))
    }
}

/// The error of a cell killed after `limit` (its duration and `--timeout`), with the last
/// lines its process wrote on its standard error, `stderr`.
fn killed_after(limit: Duration, stderr: &str) -> String {
    format!(
        "killed after {} (--timeout){}",
        span(limit),
        match last_lines(stderr, 3) {
            s if s.is_empty() => String::new(),
            s => format!("; it said: {s}"),
        }
    )
}

/// What the progress display is told.
pub trait Progress {
    /// `what` starts; `done` of `total` cells are finished.
    fn start(&mut self, what: &str, done: usize, total: usize);
    /// Everything is finished.
    fn finish(&mut self);
}

/// A progress display that shows nothing.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&mut self, _: &str, _: usize, _: usize) {}
    fn finish(&mut self) {}
}

/// A progress bar on standard error (drawn only on a terminal).
pub struct Bar(indicatif::ProgressBar);

impl Bar {
    /// A bar of `total` cells.
    pub fn new() -> Bar {
        let bar = indicatif::ProgressBar::new(0);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{prefix} [{bar:30}] {pos}/{len} {elapsed_precise} {wide_msg}",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix("iotstream bench");
        Bar(bar)
    }
}

impl Default for Bar {
    fn default() -> Self {
        Bar::new()
    }
}

impl Progress for Bar {
    fn start(&mut self, what: &str, done: usize, total: usize) {
        self.0.set_length(total as u64);
        self.0.set_position(done as u64);
        self.0.set_message(what.to_string());
    }
    fn finish(&mut self) {
        self.0.finish_and_clear();
    }
}

/// How many cells `options` runs (for the progress display).
fn cell_count(o: &Options) -> usize {
    let cells = o.modes.len() * o.sizes.len() * o.patterns.len();
    let rates = o.rates.len();
    let mut baselines: Vec<Baseline> = Vec::new();
    for b in o.modes.iter().map(|m| m.baseline()) {
        if !baselines.contains(&b) {
            baselines.push(b);
        }
    }
    let base = baselines.len() * o.sizes.len() * (o.patterns.len() + rates);
    let scaling = if o.scaling {
        o.agents.len() + o.readers.len() + o.processes.len()
    } else {
        0
    };
    cells * (1 + rates) + base + scaling
}

/// Runs every cell `options` asks for and returns what they measured. A cell that fails is a
/// row with its error ([`Report::failures`] lists them), and the bench goes on.
///
/// While it runs, SIGINT, SIGTERM and SIGHUP stop it: the cell running is killed with its
/// processes and its rings are swept, and the report holds the rows that ran whole, with the
/// signal in [`Report::interrupted`]. A second signal ends the process at once.
pub fn run(options: &Options, progress: &mut dyn Progress) -> Report {
    let total = cell_count(options);
    let mut done = 0;
    let mut step = |what: String, progress: &mut dyn Progress| {
        progress.start(&what, done, total);
        done += 1;
    };
    let limit = options.duration + options.timeout;
    let _signals = on_signals();
    // A broker cell's streams are deleted once it ended, whichever way (the server keeps them).
    let cell = |cell: &Cell, limit: Duration| {
        if let Some(signal) = interrupted() {
            return Err(format!("not run: interrupted ({})", signal_name(signal)));
        }
        let outcome = spawn_cell(cell, limit);
        if let (Cell::Throughput(Mode::Broker, p) | Cell::Latency(Mode::Broker, p), Some(url)) =
            (cell, &options.nats)
        {
            let ran = LAST_CELL.load(Ordering::SeqCst);
            let prefixes = graphs::broker_stream_prefixes(p.size, ran);
            if let Err(e) = raw::delete_nats_streams(url, &prefixes) {
                eprintln!(
                    "iotstream bench: warning: the broker cell's streams were not deleted: {e}"
                );
            }
        }
        outcome
    };
    let mut base_tput: HashMap<(Baseline, usize, Pattern), Result<Outcome, String>> =
        HashMap::new();
    let mut base_lat: HashMap<(Baseline, usize, u32), Result<Outcome, String>> = HashMap::new();
    let mut runs = Vec::new();
    'cells: for &mode in &options.modes {
        let b = mode.baseline();
        for &size in &options.sizes {
            for &pattern in &options.patterns {
                if interrupted().is_some() {
                    break 'cells;
                }
                let p = Params {
                    nats: options.nats.clone(),
                    ..Params::new(size, pattern, options.duration)
                };
                let name = format!("{} {size} B {}", mode.name(), pattern.name());
                // The baseline first, next to the run it is compared with.
                if let Entry::Vacant(slot) = base_tput.entry((b, size, pattern)) {
                    step(
                        format!("{} {size} B {}", b.name(), pattern.name()),
                        progress,
                    );
                    slot.insert(cell(&Cell::BaseThroughput(b, p.clone()), limit));
                }
                step(format!("{name} throughput"), progress);
                let tput = cell(&Cell::Throughput(mode, p.clone()), limit);
                for &rate in &options.rates {
                    let lat = Params {
                        duration: (options.duration / 2).max(Duration::from_millis(10)),
                        rate,
                        ..p.clone()
                    };
                    let paced = match rate {
                        0 => String::new(),
                        r => format!(" @{r}/s"),
                    };
                    if let Entry::Vacant(slot) = base_lat.entry((b, size, rate)) {
                        step(format!("{} {size} B latency{paced}", b.name()), progress);
                        slot.insert(cell(&Cell::BaseLatency(b, lat.clone()), limit));
                    }
                    step(format!("{name} latency{paced}"), progress);
                    let latency = cell(&Cell::Latency(mode, lat.clone()), limit);
                    if interrupted().is_some() {
                        // A row a signal cut short is no measurement: the table shows the
                        // rows that ran whole.
                        break 'cells;
                    }
                    runs.push(assemble(
                        mode,
                        &lat,
                        &tput,
                        latency,
                        &base_tput[&(b, size, pattern)],
                        &base_lat[&(b, size, rate)],
                    ));
                }
            }
        }
    }
    let mut points = Vec::new();
    if options.scaling {
        for (shape, counts) in [
            (Shape::Chain, &options.agents),
            (Shape::FanOut, &options.readers),
            (Shape::Processes, &options.processes),
        ] {
            let mut failed: Option<usize> = None;
            let mut previous: Option<(usize, f64)> = None;
            for &n in counts {
                if interrupted().is_some() {
                    break;
                }
                step(format!("scaling {} {n}", shape.name()), progress);
                let point = match failed {
                    Some(f) => ScalePoint {
                        shape: shape.name().into(),
                        n,
                        error: Some(format!("skipped: {f} failed")),
                        ..ScalePoint::default()
                    },
                    None => {
                        let o = cell(&Cell::Scaling(shape, n), options.timeout);
                        scaling::point(shape, n, o.map(|o| (o.values, o.cpu_s)), previous)
                    }
                };
                if interrupted().is_some() {
                    break;
                }
                if point.error.is_some() {
                    failed.get_or_insert(n);
                } else {
                    previous = Some((n, point.total_s));
                }
                points.push(point);
            }
        }
    }
    progress.finish();
    Report {
        runs,
        scaling: points,
        settings: serde_json::json!({
            "modes": options.modes.iter().map(|m| m.name()).collect::<Vec<_>>(),
            "scaling": options.scaling,
            "sizes": options.sizes,
            "patterns": options.patterns.iter().map(|p| p.name()).collect::<Vec<_>>(),
            "duration_s": options.duration.as_secs_f64(),
            "latency_duration_s": (options.duration / 2).as_secs_f64(),
            "rates": options.rates,
            "agents": options.agents,
            "readers": options.readers,
            "processes": options.processes,
            "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        }),
        interrupted: interrupted(),
    }
}

/// One row from its four cells' outcomes (`p`: the latency run's parameters, with its rate).
fn assemble(
    mode: Mode,
    p: &Params,
    tput: &Result<Outcome, String>,
    latency: Result<Outcome, String>,
    base_tput: &Result<Outcome, String>,
    base_lat: &Result<Outcome, String>,
) -> Run {
    let b = mode.baseline();
    let mut run = Run {
        mode: mode.name().into(),
        element_bytes: p.size,
        pattern: p.pattern.name().into(),
        rate_per_s: p.rate,
        baseline: b.name().into(),
        capacity: p.capacity,
        batch: p.batch,
        ..Run::default()
    };
    let mut errors = Vec::new();
    let rate = |o: &Outcome| {
        let ns = o.u64("end_ns").saturating_sub(o.u64("start_ns"));
        if ns == 0 {
            0.0
        } else {
            o.u64("delivered") as f64 / (ns as f64 * 1e-9)
        }
    };
    match tput {
        Ok(o) => {
            run.sent = o.u64("sent");
            run.delivered = o.u64("delivered");
            run.cpu_s = o.cpu_s;
            run.elapsed_s = o.u64("end_ns").saturating_sub(o.u64("start_ns")) as f64 * 1e-9;
            run.elements_per_s = rate(o);
            run.bytes_per_s = run.elements_per_s * p.size as f64;
            if let Err(e) = o.check_delivery("throughput") {
                errors.push(e);
            }
        }
        Err(e) => errors.push(format!("throughput: {e}")),
    }
    match &latency {
        Ok(o) => {
            run.latency_sent = o.u64("sent");
            run.latency_delivered = o.u64("delivered");
            run.latency_samples = o.u64("samples");
            run.p50_ns = o.u64("p50_ns");
            run.p99_ns = o.u64("p99_ns");
            run.p999_ns = o.u64("p999_ns");
            if let Err(e) = o.check_delivery("latency") {
                errors.push(e);
            }
        }
        Err(e) => errors.push(format!("latency: {e}")),
    }
    match base_tput {
        Ok(o) => {
            run.baseline_sent = o.u64("sent");
            run.baseline_delivered = o.u64("delivered");
            run.baseline_cpu_s = o.cpu_s;
            run.baseline_elements_per_s = rate(o);
            if let Err(e) = o.check_delivery(&format!("baseline {}", b.name())) {
                errors.push(e);
            }
        }
        Err(e) => errors.push(format!("baseline {}: {e}", b.name())),
    }
    match base_lat {
        Ok(o) => {
            run.baseline_p50_ns = o.u64("p50_ns");
            run.baseline_p99_ns = o.u64("p99_ns");
            run.baseline_p999_ns = o.u64("p999_ns");
            if let Err(e) = o.check_delivery(&format!("baseline {} latency", b.name())) {
                errors.push(e);
            }
        }
        Err(e) => errors.push(format!("baseline {} latency: {e}", b.name())),
    }
    if run.baseline_elements_per_s > 0.0 {
        run.ratio = run.elements_per_s / run.baseline_elements_per_s;
    }
    if run.baseline_p50_ns > 0 {
        run.latency_ratio = run.p50_ns as f64 / run.baseline_p50_ns as f64;
    }
    if !errors.is_empty() {
        run.error = Some(errors.join("; "));
    }
    run
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_bad_values_say_what_is_allowed() {
        assert_eq!(
            parse_modes("thread, tcp,scaling").unwrap(),
            (vec![Mode::Thread, Mode::Tcp], true)
        );
        assert!(parse_modes("threads,fast").unwrap_err().contains("'fast'"));
        // The error names every mode there is.
        let unknown = parse_modes("bogus").unwrap_err();
        for m in Mode::ALL {
            assert!(unknown.contains(m.name()), "{}: {unknown}", m.name());
        }
        assert_eq!(parse_sizes("8,1k,64KiB").unwrap(), [8, 1024, 65536]);
        assert!(parse_sizes("100").unwrap_err().contains("100 bytes"));
        assert!(parse_sizes("").is_err());
        assert_eq!(
            parse_patterns("single,batch").unwrap(),
            [Pattern::Single, Pattern::Batch]
        );
        assert!(parse_patterns("burst").is_err());
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_seconds("250ms").unwrap(), Duration::from_millis(250));
        for bad in ["", "0", "-1", "fast", "1ms", "NaN"] {
            assert!(parse_seconds(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_counts("1,10,1_000", 1000).unwrap(), [1, 10, 1000]);
        assert!(parse_counts("10,1", 100).is_err());
        assert!(parse_counts("0", 100).is_err());
        assert!(parse_counts("101", 100).is_err());
        assert_eq!(parse_rates("0, 1000,1_000,10").unwrap(), [0, 1000, 10]);
        for bad in ["", "fast", "-1", "1.5", "2000000"] {
            assert!(parse_rates(bad).is_err(), "{bad}");
        }
        assert!(parse_rates("fast").unwrap_err().contains("'fast'"));
    }

    #[test]
    fn pace_keeps_to_its_grid_and_skips_the_ticks_it_overran() {
        let ms = Duration::from_millis(1);
        let t0 = Instant::now();
        // The first ping goes at once; a tick still ahead is kept.
        assert_eq!(Pace::tick(None, t0, ms), t0);
        assert_eq!(Pace::tick(Some(t0 + ms), t0, ms), t0 + ms);
        assert_eq!(Pace::tick(Some(t0), t0, ms), t0);
        // A pong 2.5 ticks late: the next tick of the grid, not three pings in a burst.
        assert_eq!(Pace::tick(Some(t0), t0 + ms * 5 / 2, ms), t0 + ms * 3);
        assert_eq!(Pace::tick(Some(t0), t0 + ms * 2, ms), t0 + ms * 2);
        // Back to back never waits and keeps no grid.
        let mut p = Pace::new(0);
        p.wait();
        assert!(p.next.is_none() && p.period.is_none());
        assert_eq!(Pace::new(1000).period, Some(ms));
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        assert_eq!(percentiles(&mut v), (500, 990, 999));
        assert_eq!(percentiles(&mut []), (0, 0, 0));
        assert_eq!(percentiles(&mut [7]), (7, 7, 7));
    }

    fn outcome(sent: u64, delivered: u64) -> Result<Outcome, String> {
        let v = serde_json::json!({
            "sent": sent, "delivered": delivered, "start_ns": 1_000, "end_ns": 1_000_001_000u64,
            "p50_ns": 10, "p99_ns": 20, "p999_ns": 30, "samples": delivered,
        });
        Ok(Outcome {
            values: v.as_object().cloned().unwrap_or_default(),
            cpu_s: 0.5,
        })
    }

    #[test]
    fn a_shortfall_fails_the_row_naming_mode_size_and_pattern() {
        let p = Params::new(64, Pattern::Single, Duration::from_secs(1));
        let good = assemble(
            Mode::Threads,
            &p,
            &outcome(100, 100),
            outcome(10, 10),
            &outcome(50, 50),
            &outcome(3, 3),
        );
        assert_eq!(good.error, None);
        assert_eq!((good.elements_per_s, good.ratio), (100.0, 2.0));
        let short = assemble(
            Mode::Processes,
            &p,
            &outcome(100, 99),
            outcome(10, 10),
            &outcome(50, 50),
            &Err("killed after 60 s (--timeout)".into()),
        );
        let report = Report {
            runs: vec![good, short],
            ..Report::default()
        };
        let failures = report.failures();
        assert_eq!(
            failures,
            [
                "processes 64 B single: throughput: delivered 99 of 100 elements; \
              baseline shm-ring latency: killed after 60 s (--timeout)"
            ]
        );
        assert!(render_table(&report).contains("FAILED processes 64 B single"));
        let empty = assemble(
            Mode::Tcp,
            &p,
            &outcome(0, 0),
            outcome(1, 1),
            &outcome(1, 1),
            &outcome(1, 1),
        );
        assert!(empty.error.unwrap().contains("sent nothing"));
        let paced = Params { rate: 1000, ..p };
        let slow = assemble(
            Mode::Processes,
            &paced,
            &outcome(1, 1),
            outcome(10, 9),
            &outcome(1, 1),
            &outcome(1, 1),
        );
        assert_eq!(slow.rate_per_s, 1000);
        let report = Report {
            runs: vec![slow],
            ..Report::default()
        };
        assert_eq!(
            report.failures(),
            ["processes 64 B single @1000/s: latency: delivered 9 of 10 elements"]
        );
    }

    /// The cell of `table` (as [`render_table`] lays it out) in the column headed `column`,
    /// on the first row that starts with `row`; the columns right of the third are aligned
    /// right and separated by two spaces at least.
    fn table_cell(table: &str, row: &str, column: &str) -> String {
        let head = table.lines().next().unwrap_or_default();
        let end = head[..head.find(column).expect(column)].chars().count() + column.chars().count();
        let line = table.lines().find(|l| l.starts_with(row)).expect(row);
        let left: String = line.chars().take(end).collect();
        left.rsplit("  ")
            .next()
            .unwrap_or_default()
            .trim()
            .to_string()
    }

    #[test]
    fn a_cell_error_of_several_lines_is_kept_whole() {
        let stderr = "a log line\niotstream bench cell: application 'bench_broker_8_1' is not \
                      well formed:\n- BrokerOptions: url must be nats://HOST:PORT, found 'x'\n\n";
        assert_eq!(
            cell_error(stderr).as_deref(),
            Some(
                "application 'bench_broker_8_1' is not well formed: - BrokerOptions: url must \
                 be nats://HOST:PORT, found 'x'"
            )
        );
        assert_eq!(
            cell_error("iotstream bench cell: one\niotstream bench cell: two\n").as_deref(),
            Some("two")
        );
        assert_eq!(cell_error("panicked somewhere\n"), None);
    }

    #[test]
    fn a_cell_killed_by_the_timeout_says_when_and_shows_no_rate() {
        // Killed below a second: said in milliseconds, not rounded to "0 s".
        assert_eq!(
            killed_after(Duration::from_millis(210), ""),
            "killed after 210 ms (--timeout)"
        );
        assert_eq!(
            killed_after(Duration::from_secs(60), "starting\nstill going\n"),
            "killed after 60 s (--timeout); it said: starting | still going"
        );
        assert_eq!(
            killed_after(Duration::from_millis(2500), ""),
            "killed after 2.5 s (--timeout)"
        );

        // Its row has no elements/s nor bytes/s figure: a dash, not 0.
        let p = Params::new(8, Pattern::Batch, Duration::from_millis(200));
        let killed = assemble(
            Mode::Processes,
            &p,
            &Err(killed_after(Duration::from_millis(210), "")),
            outcome(10, 10),
            &outcome(50, 50),
            &outcome(3, 3),
        );
        let good = assemble(
            Mode::Threads,
            &p,
            &outcome(100, 100),
            outcome(10, 10),
            &outcome(50, 50),
            &outcome(3, 3),
        );
        // A row whose latency runs failed shows no latency: a dash, not "0 ns".
        let no_latency = assemble(
            Mode::Tcp,
            &p,
            &outcome(100, 100),
            Err("its process ended with exit status: 1".into()),
            &outcome(50, 50),
            &Err("cannot connect".into()),
        );
        let report = Report {
            runs: vec![good, killed, no_latency],
            ..Report::default()
        };
        let table = render_table(&report);
        for column in ["p50", "p99", "p999", "base p50", "p50/base"] {
            assert_eq!(table_cell(&table, "tcp", column), "-", "{column}: {table}");
        }
        assert_eq!(table_cell(&table, "threads", "p50"), "10 ns", "{table}");
        assert_eq!(
            table_cell(&table, "processes", "elements/s"),
            "-",
            "{table}"
        );
        assert_eq!(table_cell(&table, "processes", "bytes/s"), "-", "{table}");
        assert_eq!(table_cell(&table, "processes", "CPU s"), "-", "{table}");
        assert_eq!(
            table_cell(&table, "threads", "elements/s"),
            "100",
            "{table}"
        );
        assert_ne!(table_cell(&table, "threads", "bytes/s"), "-", "{table}");
        assert_eq!(table_cell(&table, "threads", "CPU s"), "0.50", "{table}");
        assert!(
            table.contains("FAILED processes 8 B batch: throughput: killed after 210 ms"),
            "{table}"
        );
    }

    #[test]
    fn a_scaling_point_that_failed_or_fell_short_says_so() {
        let values = |delivered: u64| {
            let v = serde_json::json!({
                "sent": 10, "expected": 30, "delivered": delivered, "total_s": 2.0,
            });
            Ok((v.as_object().cloned().unwrap_or_default(), 0.1))
        };
        let p = scaling::point(Shape::FanOut, 3, values(30), Some((1, 0.5)));
        assert_eq!(p.error, None);
        assert_eq!(p.time_ratio, Some(4.0));
        assert!((p.exponent.unwrap_or(0.0) - 4f64.ln() / 3f64.ln()).abs() < 1e-9);
        let p = scaling::point(Shape::FanOut, 3, values(29), None);
        assert_eq!(p.error.as_deref(), Some("delivered 29 of 30 elements"));
        let p = scaling::point(
            Shape::Chain,
            10_000,
            Err("Too many open files".into()),
            None,
        );
        assert_eq!(p.error.as_deref(), Some("Too many open files"));
        let report = Report {
            scaling: vec![p],
            ..Report::default()
        };
        assert_eq!(
            report.failures(),
            ["scaling chain 10000: Too many open files"]
        );
        assert!(render_scaling(&report).contains("FAILED scaling chain 10000: Too many open files"));
    }

    #[test]
    fn capacities_hold_the_default_byte_bound() {
        let p = Params::new(8, Pattern::Batch, Duration::from_secs(1));
        assert_eq!(
            (p.capacity, p.batch),
            (crate::graph::DEFAULT_CAPACITY, 4096)
        );
        let p = Params::new(1024, Pattern::Batch, Duration::from_secs(1));
        assert_eq!((p.capacity, p.batch), (1024, 256));
        let p = Params::new(65536, Pattern::Batch, Duration::from_secs(1));
        assert_eq!((p.capacity, p.batch), (16, 4));
    }
}
