//! Sliding window throughput: the mean of the last 100 `f64`, step 1, over 10 M elements
//! (source → sliding mean → sink, each on its own thread), beside the same computation as a
//! plain single-threaded loop (no streams) measured in the same run.
//!
//! Four variants of the same sliding mean, in the same run:
//! - `rolling_mean`: the built-in `g.rolling(…, Rolling::Mean)`, O(1) amortised per element
//!   (compensated sums);
//! - `map_window_mean`: `g.map_window(…, 100, 1, mean)`, which recomputes each window (O(size)
//!   per element, as IoTPy does);
//! - `iotstream_custom_agent`: a hand-written incremental agent (ring buffer + running sum);
//! - `plain_loop_one_thread`: the arithmetic alone, no streams.
//!
//! Run with `cargo bench --bench window`; set `WINDOW_N` to change the element count.
//! Results and the machine they were measured on: `docs/benchmarks.md`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, Stream};

mod common;

/// Window size.
const SIZE: usize = 100;

/// The input signal.
fn value(i: u64) -> f64 {
    (i % 1000) as f64 * 0.5
}

/// The sliding mean of the last `SIZE` inputs, emitted for every input once `SIZE` have arrived.
struct SlidingMean {
    input: Input<f64>,
    out: Stream<f64>,
    ring: [f64; SIZE],
    pos: usize,
    seen: usize,
    sum: f64,
}

impl Agent for SlidingMean {
    fn step(&mut self, inputs: &mut Inputs, outputs: &mut Outputs) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let out = outputs.vec(&self.out);
        out.reserve(new.len());
        for &x in new {
            self.sum += x - self.ring[self.pos];
            self.ring[self.pos] = x;
            self.pos = if self.pos + 1 == SIZE {
                0
            } else {
                self.pos + 1
            };
            self.seen += 1;
            if self.seen >= SIZE {
                out.push(self.sum / SIZE as f64);
            }
        }
        let n = new.len();
        inputs.consume(&self.input, n);
        Ok(())
    }
}

/// Runs source → sliding mean → sink; returns the sum of the means.
fn iotstream_sliding_mean(n: u64) -> f64 {
    let total = Arc::new(AtomicU64::new(0));
    let result = Arc::clone(&total);
    let mut g = Graph::new("bench_window");
    let src = g.source_iter("source", (0..n).map(value));
    let (input, means) = g.add_agent("sliding_mean", |p| {
        let input = p.input::<f64>("in");
        let out = p.output::<f64>("out");
        let agent = SlidingMean {
            input,
            out,
            ring: [0.0; SIZE],
            pos: 0,
            seen: 0,
            sum: 0.0,
        };
        (agent, (input, out))
    });
    g.connect(&src, &input);
    let mut acc = 0.0f64;
    g.sink_list("sink", &means, move |xs: &[f64]| {
        acc = xs.iter().fold(acc, |a, x| a + x); // in order, as the plain loop adds
        total.store(acc.to_bits(), Ordering::Relaxed);
        Ok(())
    });
    g.run().expect("pipeline runs");
    f64::from_bits(result.load(Ordering::Relaxed))
}

/// The sliding mean with an operator: `rolling` (incremental) or `map_window` (recomputing).
fn operator_sliding_mean(n: u64, rolling: bool) -> u64 {
    let count = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&count);
    let mut g = Graph::new("bench_window_ops");
    let src = g.source_iter("source", (0..n).map(value));
    let means = if rolling {
        g.rolling("mean", &src, SIZE, iotstream::Rolling::Mean)
    } else {
        g.map_window("mean", &src, SIZE, 1, |w: &[f64]| {
            w.iter().sum::<f64>() / SIZE as f64
        })
    };
    g.sink_list("sink", &means, move |xs: &[f64]| {
        seen.fetch_add(xs.len() as u64, Ordering::Relaxed);
        Ok(())
    });
    g.run().expect("pipeline runs");
    count.load(Ordering::Relaxed)
}

/// The same sliding mean as one loop in one thread: the cost of the arithmetic alone.
fn plain_loop_sliding_mean(n: u64) -> f64 {
    let mut ring = [0.0f64; SIZE];
    let (mut pos, mut sum, mut acc) = (0usize, 0.0f64, 0.0f64);
    for i in 0..n {
        let x = value(i);
        sum += x - ring[pos];
        ring[pos] = x;
        pos = if pos + 1 == SIZE { 0 } else { pos + 1 };
        if i + 1 >= SIZE as u64 {
            acc += sum / SIZE as f64;
        }
    }
    acc
}

fn window(c: &mut Criterion) {
    let n: u64 = std::env::var("WINDOW_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    // Same arithmetic in the same order: the results are bit-identical.
    assert_eq!(
        iotstream_sliding_mean(n),
        plain_loop_sliding_mean(n),
        "both variants compute the same means"
    );

    let mut group = c.benchmark_group("sliding_mean_100_f64");
    group
        .throughput(Throughput::Elements(n))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    assert_eq!(operator_sliding_mean(n, true), n - SIZE as u64 + 1);
    assert_eq!(operator_sliding_mean(n, false), n - SIZE as u64 + 1);
    group.bench_function("rolling_mean", |b| {
        b.iter(|| black_box(operator_sliding_mean(black_box(n), true)))
    });
    group.bench_function("map_window_mean", |b| {
        b.iter(|| black_box(operator_sliding_mean(black_box(n), false)))
    });
    group.bench_function("iotstream_custom_agent", |b| {
        b.iter(|| black_box(iotstream_sliding_mean(black_box(n))))
    });
    group.bench_function("plain_loop_one_thread", |b| {
        b.iter(|| black_box(plain_loop_sliding_mean(black_box(n))))
    });
    group.finish();

    // The iotstream variant in process CPU time (every thread): "time" is CPU time, "thrpt"
    // elements per CPU-second; less sensitive to other programs on the machine.
    let mut group = c.benchmark_group("sliding_mean_100_f64_cpu_time");
    group
        .throughput(Throughput::Elements(n))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("iotstream_custom_agent", |b| {
        b.iter_custom(|iters| common::cpu_time_of(iters, || iotstream_sliding_mean(n)))
    });
    group.finish();
}

criterion_group!(benches, window);
criterion_main!(benches);
