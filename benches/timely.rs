//! One process, big batches: iotstream against timely-dataflow on the same pipeline, same run.
//!
//! The pipeline is source → map → filter → sink over `u64` (issue 13: iotstream must reach at
//! least 1.5× timely with one worker and with two workers):
//!
//! - **iotstream**: `Graph::run`, the threaded runtime with its defaults: `source_iter(0..n)`,
//!   `map`, `filter`, `sink_list` summing (the agents on the worker pool, one worker per core;
//!   the source's `fill` on a thread of its own);
//! - **iotstream_1_worker**: the same with `Graph::worker_threads(1)`: every agent on one
//!   worker, the source's `fill` beside it (a chain of light stages keeps its batches in one
//!   core's cache and wakes no other thread between stages).
//! - **timely, 1 and 2 workers**: `timely::execute` with `Config::process(w)`; each worker reads
//!   its share of `0..n` with `to_stream`, then `map`, `filter`, and `inspect_batch` summing. Two
//!   workers split the data (timely's data parallelism), no exchange between them.
//!
//! Every variant is checked against the sum computed without a pipeline before anything is
//! timed. Criterion then times each variant; after it, an interleaved pass runs the three
//! variants in turn `TIMELY_ROUNDS` times (default 5; 0 skips it, for profiling) and prints the median wall and process CPU
//! time of each and the ratios `timely time / iotstream time` (above 1: iotstream is faster),
//! measured in the same run, round by round, so that a busy machine weighs on all of them alike.
//!
//! Run with `cargo bench --bench timely`; `TIMELY_N` sets the element count (default 20 M).
//! `TIMELY_ONLY=iotstream` (or `timely_1_worker`, `timely_2_workers`) runs that variant
//! `TIMELY_ROUNDS` times and nothing else, for a profiler. `TIMELY_BATCH` sets iotstream's
//! source batch (`SourceOptions::max_batch`; default: the default options).
//! Results: `docs/benchmarks.md`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use iotstream::{Graph, Harness, SourceOptions};
use timely::dataflow::operators::{Filter, Inspect, Map, ToStream};

mod common;

/// The map stage: cheap, so the runtime dominates.
fn map_fn(v: u64) -> u64 {
    v.wrapping_mul(3).wrapping_add(1)
}

/// The filter stage: keeps three elements in four.
fn keep(v: u64) -> bool {
    v % 4 != 0
}

/// What the sink must have summed, computed without any pipeline.
fn expected(n: u64) -> u64 {
    (0..n)
        .map(map_fn)
        .filter(|&v| keep(v))
        .fold(0u64, u64::wrapping_add)
}

/// The pipeline in iotstream's threaded runtime (or, with `harness`, in the single-thread
/// `Harness`: the same hosts with no thread hand-offs); returns the sink's sum.
fn iotstream_pipeline(n: u64, harness: bool, workers: Option<usize>) -> u64 {
    let sum = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&sum);
    let mut g = Graph::new("bench_timely");
    let src = match std::env::var("TIMELY_BATCH")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(max_batch) => {
            let options = SourceOptions {
                max_batch,
                ..SourceOptions::default()
            };
            g.source_iter_with("source", 0..n, options)
        }
        None => g.source_iter("source", 0..n),
    };
    let mapped = g.map("map", &src, |v: &u64| map_fn(*v));
    let kept = g.filter("filter", &mapped, |v: &u64| keep(*v));
    let mut acc = 0u64;
    g.sink_list("sink", &kept, move |xs: &[u64]| {
        acc = xs.iter().fold(acc, |a, &v| a.wrapping_add(v));
        total.store(acc, Ordering::Relaxed);
        Ok(())
    });
    if harness {
        let mut h = Harness::new(g).expect("pipeline builds");
        // The harness bounds what a source emits in one run (10 M by default, a guard against
        // a source that never ends): this one ends after its `n`.
        h.set_max_source_elements(n);
        h.finish().expect("pipeline runs");
    } else {
        if let Some(w) = workers {
            g.worker_threads(w);
        }
        g.run().expect("pipeline runs");
    }
    sum.load(Ordering::Relaxed)
}

/// The same pipeline in timely with `workers` workers (threads) of one process; returns the
/// sum over every worker.
fn timely_pipeline(n: u64, workers: usize) -> u64 {
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let (index, peers) = (worker.index() as u64, worker.peers() as u64);
        let (lo, hi) = (n * index / peers, n * (index + 1) / peers);
        let sum = Arc::new(AtomicU64::new(0));
        let total = Arc::clone(&sum);
        worker.dataflow::<u64, _, _>(move |scope| {
            let mut acc = 0u64;
            (lo..hi)
                .to_stream(scope)
                .map(map_fn)
                .filter(|v| keep(*v))
                .inspect_batch(move |_, xs: &Vec<u64>| {
                    acc = xs.iter().fold(acc, |a, &v| a.wrapping_add(v));
                    total.store(acc, Ordering::Relaxed);
                });
        });
        // `execute` runs the worker until its dataflow is done after this returns.
        sum
    })
    .expect("timely starts");
    guards
        .join()
        .into_iter()
        .map(|r| r.expect("timely worker").load(Ordering::Relaxed))
        .fold(0u64, u64::wrapping_add)
}

/// The variants, in the order they run and print. `iotstream_harness` is not a mode to compare
/// with timely (it runs every agent in one thread, in a deterministic order); it shows what the
/// same hosts cost without the threaded runtime's hand-offs between threads.
const VARIANTS: [&str; 5] = [
    "iotstream",
    "iotstream_1_worker",
    "timely_1_worker",
    "timely_2_workers",
    "iotstream_harness",
];

fn run_variant(name: &str, n: u64) -> u64 {
    match name {
        "iotstream" => iotstream_pipeline(n, false, None),
        "iotstream_1_worker" => iotstream_pipeline(n, false, Some(1)),
        "iotstream_harness" => iotstream_pipeline(n, true, None),
        "timely_1_worker" => timely_pipeline(n, 1),
        "timely_2_workers" => timely_pipeline(n, 2),
        other => panic!("no variant {other}: one of {VARIANTS:?}"),
    }
}

fn median(xs: &mut [Duration]) -> Duration {
    xs.sort();
    xs[xs.len() / 2]
}

/// Runs the variants in turn, `rounds` times, and prints the median times and the ratios.
fn interleaved(n: u64, rounds: usize) {
    let mut wall: Vec<Vec<Duration>> = vec![Vec::new(); VARIANTS.len()];
    let mut cpu: Vec<Vec<Duration>> = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..rounds {
        for (i, name) in VARIANTS.iter().enumerate() {
            let (c0, t0) = (common::process_cpu_time(), Instant::now());
            black_box(run_variant(name, n));
            wall[i].push(t0.elapsed());
            cpu[i].push(common::process_cpu_time() - c0);
        }
    }
    let wall: Vec<Duration> = wall.iter_mut().map(|v| median(v)).collect();
    let cpu: Vec<Duration> = cpu.iter_mut().map(|v| median(v)).collect();
    println!("\ninterleaved, {rounds} rounds of {n} elements each (medians):");
    for (i, name) in VARIANTS.iter().enumerate() {
        println!(
            "  {name:<17} wall {:>8.1} ms ({:>6.1} M elements/s)   cpu {:>8.1} ms",
            wall[i].as_secs_f64() * 1e3,
            n as f64 / wall[i].as_secs_f64() / 1e6,
            cpu[i].as_secs_f64() * 1e3,
        );
    }
    for (o, ours) in VARIANTS.iter().enumerate().take(2) {
        for (i, name) in VARIANTS
            .iter()
            .enumerate()
            .filter(|(_, n)| n.starts_with("timely"))
        {
            println!(
                "  {ours} vs {name}: {:.2}x wall, {:.2}x cpu (timely time / iotstream time)",
                wall[i].as_secs_f64() / wall[o].as_secs_f64(),
                cpu[i].as_secs_f64() / cpu[o].as_secs_f64(),
            );
        }
    }
}

fn bench(c: &mut Criterion) {
    let n: u64 = std::env::var("TIMELY_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000_000);
    let rounds: usize = std::env::var("TIMELY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let want = expected(n);
    if let Ok(only) = std::env::var("TIMELY_ONLY") {
        // One variant, `rounds` times, nothing else: for `perf stat` and `perf record`.
        for _ in 0..rounds.max(1) {
            assert_eq!(run_variant(&only, n), want, "{only}: the sink's sum");
        }
        return;
    }
    for name in VARIANTS {
        assert_eq!(run_variant(name, n), want, "{name}: the sink's sum");
    }

    let mut group = c.benchmark_group("timely_u64");
    group
        .throughput(Throughput::Elements(n))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for name in VARIANTS {
        group.bench_function(name, |b| {
            b.iter(|| black_box(run_variant(name, black_box(n))))
        });
    }
    group.finish();

    // The same, in process CPU time (every thread): "time" is CPU time, "thrpt" elements per
    // CPU-second; less sensitive to other programs on the machine than wall time.
    let mut group = c.benchmark_group("timely_u64_cpu_time");
    group
        .throughput(Throughput::Elements(n))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    for name in VARIANTS {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| common::cpu_time_of(iters, || run_variant(name, n)))
        });
    }
    group.finish();

    if rounds > 0 {
        interleaved(n, rounds);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
