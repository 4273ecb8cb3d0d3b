//! The cost of disorder: a keyed event-time window over input that is 1 % out of order, beside
//! the same workload on ordered input, measured in the same run (issue 11).
//!
//! The workload: `N` elements `(t, (key, value))` with 10,000 keys (`t` in ms, 50 elements per
//! ms of event time, keys round-robin), `watermarks(bounded(50 ms))`, then `keyed_event_window`
//! per key over tumbling 10 s windows summing the values (about 50 elements per key and window:
//! 2 M elements make 40 windows of 10,000 keys), then a sink that counts the windows. In the
//! `disordered` variant 1 % of the elements are moved up to 399 places (8 ms) later in the
//! stream (within the bound: no element is late, and the output is the same).
//!
//! ```text
//! cargo bench --bench event_time            # EVENT_N (default 2_000_000)
//! ```
//!
//! After the criterion output the bench runs both variants in 7 alternated pairs and prints the
//! median of the pairs' ratios (disordered / ordered).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput};
use iotstream::ops::event::Watermarks;
use iotstream::ops::event_window::{EventWindow, KeyedWindow};
use iotstream::Graph;

const KEYS: u64 = 10_000;
const PAIRS: usize = 7;

/// The input: ordered, or with 1 % of the elements moved up to 399 places (8 ms) later.
fn input(n: u64, disordered: bool) -> Vec<(u64, (u32, u32))> {
    let mut v: Vec<(u64, (u32, u32))> = (0..n)
        .map(|i| (i / 50, ((i % KEYS) as u32, (i % 7) as u32)))
        .collect();
    if disordered {
        // Deterministic: every 100th element goes 1 to 399 places later.
        let mut i = 0;
        while i + 400 < v.len() {
            let shift = 1 + (i * 7919) % 399;
            // Element i moves to i + shift; the ones between move up by one.
            v[i..=i + shift].rotate_left(1);
            i += 100;
        }
    }
    v
}

/// Runs the workload; returns how many windows came out.
fn run(data: Vec<(u64, (u32, u32))>) -> u64 {
    let windows = Arc::new(AtomicU64::new(0));
    let seen = Arc::clone(&windows);
    let mut g = Graph::new("bench_event_time");
    let s = g.source_iter("readings", data);
    let timed = g.watermarks("timed", &s, Watermarks::bounded(50));
    let w = g.keyed_event_window(
        "per_key",
        &timed,
        |e: &(u64, (u32, u32))| e.1 .0,
        EventWindow::tumbling(10_000),
        |xs: &[(u64, (u32, u32))]| xs.iter().map(|e| u64::from(e.1 .1)).sum::<u64>(),
    );
    g.for_each("count", &w.windows, move |_: &KeyedWindow<u32, u64>| {
        seen.fetch_add(1, Ordering::Relaxed);
    });
    g.run().expect("the bench application");
    assert_eq!(w.late_count.get(), 0, "nothing is late within the bound");
    windows.load(Ordering::Relaxed)
}

fn main() {
    let n: u64 = std::env::var("EVENT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    let want = run(input(n, false));
    assert_eq!(
        run(input(n, true)),
        want,
        "disorder within the bound changes nothing"
    );
    let mut c = Criterion::default()
        .configure_from_args()
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let mut group = c.benchmark_group("event_time");
    group.throughput(Throughput::Elements(n));
    for (label, disordered) in [("ordered", false), ("disordered_1pct", true)] {
        let data = input(n, disordered);
        group.bench_with_input(BenchmarkId::new(label, n), &data, |b, data| {
            b.iter(|| run(data.clone()));
        });
    }
    group.finish();
    let (ordered, disordered) = (input(n, false), input(n, true));
    let time = |d: &Vec<(u64, (u32, u32))>| {
        let d = d.clone();
        let t = Instant::now();
        run(d);
        n as f64 / t.elapsed().as_secs_f64() / 1e6
    };
    let mut ratios = Vec::new();
    let (mut o, mut x) = (Vec::new(), Vec::new());
    for _ in 0..PAIRS {
        let a = time(&ordered);
        let b = time(&disordered);
        o.push(a);
        x.push(b);
        ratios.push(b / a);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!("\nkeyed event-time window, {KEYS} keys, {n} elements, {PAIRS} alternated pairs:");
    println!(
        "  ordered (median)          : {:>8.2} M elements/s",
        median(&mut o)
    );
    println!(
        "  1 % out of order (median) : {:>8.2} M elements/s",
        median(&mut x)
    );
    println!(
        "  disordered / ordered      : {:>8.2} median of pairs",
        median(&mut ratios)
    );
    c.final_summary();
}
