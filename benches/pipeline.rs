//! Local pipeline throughput: source → map → filter → sink over `u64`, every stage on its own
//! thread, against the same four stages on std threads joined by per-element crossbeam-channel
//! bounded channels (DESIGN §7: iotstream must reach at least 3× the crossbeam baseline in the
//! same run; target ≥ 100 M elements/s).
//!
//! Run with `cargo bench --bench pipeline`; set `PIPELINE_N` to change the element count.
//! Results and the machine they were measured on: `docs/benchmarks.md`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode, Throughput};
use iotstream::{AgentError, Graph, Source, SourceOptions};

mod common;

/// The map stage: cheap, so the transport dominates.
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

/// 0, 1, 2, … `n - 1`, a whole batch per call (for the variant with a larger source batch).
struct Count {
    next: u64,
    n: u64,
}

impl Source<u64> for Count {
    fn fill(&mut self, out: &mut Vec<u64>, max: usize) -> Result<bool, AgentError> {
        let end = (self.next + max as u64).min(self.n);
        out.extend(self.next..end);
        self.next = end;
        Ok(self.next < self.n)
    }
}

/// The iotstream pipeline; `max_batch: None` is `source_iter` with the default options.
fn iotstream_pipeline(n: u64, max_batch: Option<usize>) -> u64 {
    let sum = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&sum);
    let mut g = Graph::new("bench_pipeline");
    let src = match max_batch {
        None => g.source_iter("source", 0..n),
        Some(max_batch) => {
            let options = SourceOptions {
                max_batch,
                ..SourceOptions::default()
            };
            g.source_with("source", Count { next: 0, n }, options)
        }
    };
    let mapped = g.map("map", &src, |v: &u64| map_fn(*v));
    let kept = g.filter("filter", &mapped, |v: &u64| keep(*v));
    let mut acc = 0u64;
    g.sink_list("sink", &kept, move |xs: &[u64]| {
        acc = xs.iter().fold(acc, |a, &v| a.wrapping_add(v));
        total.store(acc, Ordering::Relaxed);
        Ok(())
    });
    g.run().expect("pipeline runs");
    sum.load(Ordering::Relaxed)
}

/// Capacity of each crossbeam channel, in elements (one element per message).
const CROSSBEAM_CAPACITY: usize = 1024;

fn crossbeam_pipeline(n: u64) -> u64 {
    let (tx_src, rx_map) = crossbeam_channel::bounded::<u64>(CROSSBEAM_CAPACITY);
    let (tx_map, rx_filter) = crossbeam_channel::bounded::<u64>(CROSSBEAM_CAPACITY);
    let (tx_filter, rx_sink) = crossbeam_channel::bounded::<u64>(CROSSBEAM_CAPACITY);
    let source = thread::spawn(move || {
        for v in 0..n {
            tx_src.send(v).expect("map stage alive");
        }
    });
    let map = thread::spawn(move || {
        for v in rx_map {
            tx_map.send(map_fn(v)).expect("filter stage alive");
        }
    });
    let filter = thread::spawn(move || {
        for v in rx_filter {
            if keep(v) {
                tx_filter.send(v).expect("sink stage alive");
            }
        }
    });
    let sink = thread::spawn(move || rx_sink.into_iter().fold(0u64, u64::wrapping_add));
    source.join().expect("source thread");
    map.join().expect("map thread");
    filter.join().expect("filter thread");
    sink.join().expect("sink thread")
}

fn pipeline(c: &mut Criterion) {
    let n: u64 = std::env::var("PIPELINE_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000_000);
    let want = expected(n);
    // Both variants must compute the same thing before either is timed.
    assert_eq!(
        iotstream_pipeline(n, None),
        want,
        "iotstream pipeline result"
    );
    assert_eq!(
        iotstream_pipeline(n, Some(8192)),
        want,
        "iotstream pipeline result"
    );
    assert_eq!(crossbeam_pipeline(n), want, "crossbeam pipeline result");

    let mut group = c.benchmark_group("pipeline_u64");
    group
        .throughput(Throughput::Elements(n))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("iotstream", |b| {
        b.iter(|| black_box(iotstream_pipeline(black_box(n), None)))
    });
    // The same graph with the source's batch size set explicitly (`SourceOptions::max_batch`):
    // how much of the cost is per batch rather than per element.
    for max_batch in [1024, 8192] {
        group.bench_function(format!("iotstream_source_batch_{max_batch}"), |b| {
            b.iter(|| black_box(iotstream_pipeline(black_box(n), Some(max_batch))))
        });
    }
    group.bench_function("crossbeam_per_element", |b| {
        b.iter(|| black_box(crossbeam_pipeline(black_box(n))))
    });
    group.finish();

    // The same defaults and baseline, measured in process CPU time (every thread): "time" is
    // CPU time, "thrpt" elements per CPU-second. Less sensitive to other programs on the
    // machine than wall time; it also charges crossbeam's spinning to the baseline.
    let mut group = c.benchmark_group("pipeline_u64_cpu_time");
    group
        .throughput(Throughput::Elements(n))
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(5));
    group.bench_function("iotstream", |b| {
        b.iter_custom(|iters| common::cpu_time_of(iters, || iotstream_pipeline(n, None)))
    });
    group.bench_function("crossbeam_per_element", |b| {
        b.iter_custom(|iters| common::cpu_time_of(iters, || crossbeam_pipeline(n)))
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
