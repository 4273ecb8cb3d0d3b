//! Concurrency modes on the same application, measured in the same run.
//!
//! - **Throughput** (criterion): source → map → sink over u64, all in one process (`local`),
//!   versus the sink in a second process behind a shared-memory ring (`shm`), versus the map →
//!   sink connection forced to a TCP link over 127.0.0.1 inside one process (`tcp`), beside a raw
//!   batched TCP sender and receiver moving the same bytes (`raw_tcp`, see
//!   `benches/common/raw_tcp.rs`). The bars: shared memory at least 0.7× one process (DESIGN §7),
//!   the TCP link at least 0.8× raw TCP (issue 10). After the criterion output the bench times
//!   `tcp` and `raw_tcp` in alternation and prints the median ratio.
//! - **Latency** (printed table): one-way latency from a source agent in one process to a sink
//!   agent in another, for 8-byte and 1-KiB elements, p50 and p99, beside a raw cache-line
//!   ping-pong between the same two kinds of processes (the floor: what two processes of this
//!   host need to see each other's write at all).
//!
//! ```text
//! cargo bench --bench modes
//! ```
//!
//! The bench binary is also the application: a multi-process run re-executes this binary with a
//! role in its environment, and `IOTSTREAM_BENCH_APP` (inherited) tells it which graph to build.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use iotstream::{
    Agent, AgentError, Connection, Graph, Input, Inputs, Outputs, SourceOptions, Transport,
};
use serde::{Deserialize, Serialize};

#[path = "common/raw_tcp.rs"]
mod raw_tcp;

const APP_VAR: &str = "IOTSTREAM_BENCH_APP";

/// Alternated runs of `tcp` and `raw_tcp` after the criterion group, for their ratio.
const TCP_RATIO_ROUNDS: usize = 9;

/// Where the throughput app's map → sink connection runs.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Everything in one process: envelopes between threads.
    Local,
    /// The sink in process "sink": a shared-memory ring.
    Shm,
    /// Everything in one process, map → sink forced to a TCP link on 127.0.0.1.
    Tcp,
}

/// source → map → sink over `n` u64, the map → sink connection as `mode` says.
fn throughput_app(n: u64, mode: Mode) -> Result<(), iotstream::Error> {
    let mut g = Graph::new(match mode {
        Mode::Local => "modes_local",
        Mode::Shm => "modes_shm",
        Mode::Tcp => "modes_tcp",
    });
    let s = g.source_iter("numbers", 0..n);
    let m = g.map("scale", &s, |v: &u64| v.wrapping_mul(7));
    let seen = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&seen);
    // What `sink_list` builds, spelled out so that the connection can be forced.
    let input = g.add_agent("count", |p| {
        let input = p.input::<u64>("in");
        (Count { input, seen: count }, input)
    });
    let transport = match mode {
        Mode::Tcp => Transport::Tcp,
        Mode::Local | Mode::Shm => Transport::Auto,
    };
    g.connect_with(&m, &input, Connection::new().transport(transport));
    if mode == Mode::Shm {
        g.place_in_process("count", "sink");
    }
    let in_sink = mode != Mode::Shm || std::env::var("IOTSTREAM_PROCESS").as_deref() == Ok("sink");
    g.run()?;
    if in_sink && seen.load(Ordering::Relaxed) != n {
        return Err(iotstream::Error::Runtime {
            detail: format!(
                "the sink saw {} of {n} elements",
                seen.load(Ordering::Relaxed)
            ),
        });
    }
    Ok(())
}

/// The throughput app's sink: counts what it consumes.
struct Count {
    input: Input<u64>,
    seen: Arc<AtomicU64>,
}

impl Agent for Count {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len();
        if n > 0 {
            self.seen.fetch_add(n as u64, Ordering::Relaxed);
            i.consume(&self.input, n);
        }
        Ok(())
    }
}

#[derive(Clone, Serialize, Deserialize)]
struct Stamped {
    sent_ns: u64,
    payload: Vec<u8>,
}

/// Nanoseconds on CLOCK_MONOTONIC: comparable between processes of one host.
fn now_ns() -> u64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("monotonic clock");
    t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64
}

/// `samples` stamped elements of `payload` bytes (after 200 of warm-up), one every 200 µs,
/// from "main" to "sink"; the sink prints `LATENCY p50 p99` in nanoseconds when the stream ends.
fn latency_app(samples: u64, payload: usize) -> Result<(), iotstream::Error> {
    let mut g = Graph::new("modes_latency");
    let pad = vec![0xA5u8; payload.saturating_sub(8)];
    let stamped = g.source_fn(
        "stamps",
        Duration::from_micros(200),
        Some(200 + samples),
        move || Stamped {
            sent_ns: now_ns(),
            payload: pad.clone(),
        },
    );
    let delays = Arc::new(Mutex::new(Vec::with_capacity(samples as usize)));
    let d = Arc::clone(&delays);
    let mut seen = 0u64;
    g.for_each("latency", &stamped, move |s: &Stamped| {
        let now = now_ns();
        if seen >= 200 {
            d.lock().unwrap().push(now.saturating_sub(s.sent_ns));
        }
        seen += 1;
    });
    g.place_in_process("latency", "sink");
    let in_sink = std::env::var("IOTSTREAM_PROCESS").as_deref() == Ok("sink");
    g.run()?;
    if in_sink {
        let mut d = delays.lock().unwrap().clone();
        d.sort_unstable();
        let pick = |q: f64| {
            d.get(((d.len() as f64 - 1.0) * q) as usize)
                .copied()
                .unwrap_or(0)
        };
        println!("LATENCY {} {}", pick(0.5), pick(0.99));
    }
    Ok(())
}

/// Raw floor: two processes bounce a counter on one shared cache line; returns (p50, p99) of the
/// one-way time (half a round trip), in nanoseconds.
fn ping_pong(rounds: usize) -> (u64, u64) {
    use nix::sys::mman::{mmap_anonymous, MapFlags, ProtFlags};
    let len = std::num::NonZeroUsize::new(4096).unwrap();
    // SAFETY: a fresh anonymous shared mapping; only used through the atomic below.
    let ptr = unsafe {
        mmap_anonymous(
            None,
            len,
            ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
            MapFlags::MAP_SHARED,
        )
    }
    .expect("mmap");
    // SAFETY: the mapping is page-aligned, zeroed and lives until the end of this function in
    // both processes; AtomicU64 has the layout of u64.
    let word = unsafe { &*(ptr.as_ptr() as *const AtomicU64) };
    // SAFETY: the child only spins on the atomic and exits with _exit.
    match unsafe { nix::unistd::fork() }.expect("fork") {
        nix::unistd::ForkResult::Child => {
            for i in 0..rounds as u64 {
                while word.load(Ordering::Acquire) != 2 * i + 1 {
                    std::hint::spin_loop();
                }
                word.store(2 * i + 2, Ordering::Release);
            }
            unsafe { nix::libc::_exit(0) };
        }
        nix::unistd::ForkResult::Parent { child } => {
            let mut times = Vec::with_capacity(rounds);
            for i in 0..rounds as u64 {
                let t = Instant::now();
                word.store(2 * i + 1, Ordering::Release);
                while word.load(Ordering::Acquire) != 2 * i + 2 {
                    std::hint::spin_loop();
                }
                times.push(t.elapsed().as_nanos() as u64 / 2);
            }
            let _ = nix::sys::wait::waitpid(child, None);
            times.sort_unstable();
            (times[rounds / 2], times[rounds * 99 / 100])
        }
    }
}

/// Runs `app` as a starter in a fresh process and returns its stdout (its children's lines are
/// prefixed `[process]`).
fn run_app(app: &str) -> String {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env(APP_VAR, app)
        .output()
        .expect("run the application");
    assert!(
        out.status.success(),
        "{app} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn latency(payload: usize) -> (u64, u64) {
    let out = run_app(&format!("latency:{payload}"));
    let line = out
        .lines()
        .find_map(|l| l.split_once("LATENCY ").map(|x| x.1.to_string()))
        .expect("a LATENCY line");
    let mut it = line.split_whitespace().map(|v| v.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn main() {
    if let Ok(app) = std::env::var(APP_VAR) {
        let (kind, arg) = app.split_once(':').unwrap_or((app.as_str(), "0"));
        let arg: u64 = arg.parse().unwrap_or(0);
        let r = match kind {
            "local" => throughput_app(arg, Mode::Local),
            "shm" => throughput_app(arg, Mode::Shm),
            "tcp" => throughput_app(arg, Mode::Tcp),
            "raw_tcp" => {
                raw_tcp::raw_tcp_run(arg, SourceOptions::default().max_batch, "127.0.0.1");
                Ok(())
            }
            "latency" => latency_app(5_000, arg as usize),
            other => panic!("unknown bench application {other}"),
        };
        if let Err(e) = r {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }

    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));
    let n: u64 = 20_000_000;
    let mut group = c.benchmark_group("modes");
    group.throughput(Throughput::Elements(n));
    for mode in ["local", "shm", "tcp", "raw_tcp"] {
        group.bench_with_input(BenchmarkId::new(mode, n), &mode, |b, mode| {
            b.iter(|| run_app(&format!("{mode}:{n}")));
        });
    }
    group.finish();

    println!("\none-way latency between two processes (p50 / p99), same run:");
    let (pp50, pp99) = ping_pong(200_000);
    println!(
        "  raw cache-line ping-pong      : {:>8} ns / {:>8} ns",
        pp50, pp99
    );
    for payload in [8usize, 1024] {
        let (p50, p99) = latency(payload);
        println!(
            "  iotstream, {payload:>4}-byte elements : {:>8} ns / {:>8} ns",
            p50, p99
        );
    }
    tcp_over_raw(n);
    c.final_summary();
}

/// Times `tcp` and `raw_tcp` runs of `n` elements in alternation (each a fresh process, as in
/// the criterion group) and prints their medians and the median of the pairs' ratios.
fn tcp_over_raw(n: u64) {
    let time = |mode: &str| {
        let t = Instant::now();
        run_app(&format!("{mode}:{n}"));
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let (mut tcp, mut raw, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..TCP_RATIO_ROUNDS {
        let (t, r) = (time("tcp"), time("raw_tcp"));
        tcp.push(t);
        raw.push(r);
        ratio.push(t / r);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (lo, hi) = ratio
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), &r| (lo.min(r), hi.max(r)));
    println!(
        "\nTCP link / raw TCP, {n} u64, {TCP_RATIO_ROUNDS} alternated pairs (wall time of a \
         fresh process each), same run:"
    );
    println!(
        "  iotstream tcp (median) : {:>8.1} M elements/s",
        median(&mut tcp)
    );
    println!(
        "  raw tcp (median)       : {:>8.1} M elements/s",
        median(&mut raw)
    );
    println!(
        "  tcp / raw              : {:>8.2} median of pairs (min {lo:.2}, max {hi:.2}; bar 0.8)",
        median(&mut ratio)
    );
}
