//! Concurrency modes on the same application, measured in the same run.
//!
//! - **Throughput** (criterion): source → map → sink over u64, all in one process versus the sink
//!   in a second process behind a shared-memory ring. The bar (DESIGN §7): shared memory at least
//!   0.7× one process.
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
use iotstream::Graph;
use serde::{Deserialize, Serialize};

const APP_VAR: &str = "IOTSTREAM_BENCH_APP";

/// source → map → sink over `n` u64; the sink in process "sink" when `split`.
fn throughput_app(n: u64, split: bool) -> Result<(), iotstream::Error> {
    let mut g = Graph::new(if split { "modes_shm" } else { "modes_local" });
    let s = g.source_iter("numbers", 0..n);
    let m = g.map("scale", &s, |v: &u64| v.wrapping_mul(7));
    let seen = Arc::new(AtomicU64::new(0));
    let count = Arc::clone(&seen);
    g.sink_list("count", &m, move |xs: &[u64]| {
        count.fetch_add(xs.len() as u64, Ordering::Relaxed);
        Ok(())
    });
    if split {
        g.place_in_process("count", "sink");
    }
    let in_sink = !split || std::env::var("IOTSTREAM_PROCESS").as_deref() == Ok("sink");
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
            "local" => throughput_app(arg, false),
            "shm" => throughput_app(arg, true),
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
    for mode in ["local", "shm"] {
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
    c.final_summary();
}
