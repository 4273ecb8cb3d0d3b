//! One element per push: a threaded pipeline whose source hands over one element at a time
//! (as sensors, sockets and MQTT callbacks deliver), against the same stages on std threads
//! joined by per-element crossbeam-channel channels, in the same run (issue 13: iotstream must
//! reach at least the crossbeam pipeline).
//!
//! - `push`: the program pushes into a [`Graph::input`] with [`InputSender::push`], one element
//!   per call, from its own thread;
//! - `fill1`: a [`Source`] whose `fill` returns one element per call;
//! - `fill1_max1`: the same source with `SourceOptions::max_batch` 1 (batches of one);
//! - `crossbeam`: pusher → map thread → sink thread, one element per message.
//!
//! The pipeline is source → map → sink over `u64`. After the criterion group the bench runs the
//! variants in alternation and prints the median ratio of each to crossbeam.
//!
//! ```text
//! cargo bench --bench single
//! ```
//! `SINGLE_N` sets the element count (default 200,000).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, SamplingMode, Throughput};
use iotstream::{AgentError, Graph, Source, SourceOptions};

fn n() -> u64 {
    std::env::var("SINGLE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}

fn map_fn(v: u64) -> u64 {
    v.wrapping_mul(3).wrapping_add(1)
}

fn expected(n: u64) -> u64 {
    (0..n).map(map_fn).fold(0, u64::wrapping_add)
}

/// `Graph::input` fed one element per `push` from this thread.
fn iotstream_push(n: u64) -> u64 {
    let sum = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&sum);
    let mut g = Graph::new("bench_single_push");
    let input = g.input::<u64>("readings");
    let m = g.map("map", &input, |v: &u64| map_fn(*v));
    g.for_each("sum", &m, move |v: &u64| {
        total.fetch_add(*v, Ordering::Relaxed);
    });
    let mut running = g.start().expect("start");
    let tx = running.input(&input).expect("input");
    for v in 0..n {
        tx.push(v).expect("push");
    }
    drop(tx);
    running.join().expect("run");
    sum.load(Ordering::Relaxed)
}

/// One element per `fill`.
struct OneByOne {
    next: u64,
    n: u64,
}

impl Source<u64> for OneByOne {
    fn fill(&mut self, out: &mut Vec<u64>, _max: usize) -> Result<bool, AgentError> {
        if self.next < self.n {
            out.push(self.next);
            self.next += 1;
        }
        Ok(self.next < self.n)
    }
}

/// source → map → sum over [`OneByOne`], driven as `options` say.
fn iotstream_one_by_one(n: u64, options: SourceOptions) -> u64 {
    let sum = Arc::new(AtomicU64::new(0));
    let total = Arc::clone(&sum);
    let mut g = Graph::new("bench_single_fill");
    let s = g.source_with("readings", OneByOne { next: 0, n }, options);
    let m = g.map("map", &s, |v: &u64| map_fn(*v));
    g.for_each("sum", &m, move |v: &u64| {
        total.fetch_add(*v, Ordering::Relaxed);
    });
    g.run().expect("run");
    sum.load(Ordering::Relaxed)
}

/// One element per `fill`, with the default `max_batch`: the source's agent takes what waits
/// as one batch.
fn iotstream_fill1(n: u64) -> u64 {
    iotstream_one_by_one(n, SourceOptions::default())
}

/// One element per `fill`, with `max_batch: 1`: each call is asked for one element, and each
/// batch downstream holds one (a step per element; its thread runs ahead of its agent).
fn iotstream_fill1_max1(n: u64) -> u64 {
    let options = SourceOptions {
        max_batch: 1,
        interval: None,
    };
    iotstream_one_by_one(n, options)
}

/// The same stages on std threads, one element per message.
fn crossbeam(n: u64) -> u64 {
    let (tx1, rx1) = crossbeam_channel::bounded::<u64>(1024);
    let (tx2, rx2) = crossbeam_channel::bounded::<u64>(1024);
    let mapper = thread::spawn(move || {
        for v in rx1 {
            if tx2.send(map_fn(v)).is_err() {
                return;
            }
        }
    });
    let sink = thread::spawn(move || rx2.iter().fold(0u64, u64::wrapping_add));
    for v in 0..n {
        tx1.send(v).expect("send");
    }
    drop(tx1);
    mapper.join().expect("mapper");
    sink.join().expect("sink")
}

type Variant = (&'static str, fn(u64) -> u64);

const VARIANTS: [Variant; 4] = [
    ("crossbeam", crossbeam),
    ("push", iotstream_push),
    ("fill1", iotstream_fill1),
    ("fill1_max1", iotstream_fill1_max1),
];

fn bench(c: &mut Criterion) {
    let n = n();
    let want = expected(n);
    let mut group = c.benchmark_group("single");
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(n));
    for (name, f) in VARIANTS {
        group.bench_function(name, |b| b.iter(|| assert_eq!(f(n), want, "{name}")));
    }
    group.finish();
}

/// The variants in alternation; prints each one's median ratio of elements/s to crossbeam.
fn ratios() {
    const ROUNDS: usize = 7;
    let n = n();
    let want = expected(n);
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    for _ in 0..ROUNDS {
        for (i, (name, f)) in VARIANTS.iter().enumerate() {
            let started = Instant::now();
            assert_eq!(f(n), want, "{name}");
            rates[i].push(n as f64 / started.elapsed().as_secs_f64());
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut rates[0].clone());
    println!("\none element per push, {n} elements, median of {ROUNDS} alternated rounds:");
    for (i, (name, _)) in VARIANTS.iter().enumerate() {
        let rate = median(&mut rates[i]);
        println!(
            "  {name:<10} {:>12.0} elements/s   {:>6.2}x crossbeam",
            rate,
            rate / base
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
    if !std::env::args().any(|a| a == "--list" || a == "--test") {
        ratios();
    }
}
