//! What counting heap bytes costs: a threaded pipeline of `String`s (source → map → sink),
//! whose links count each element's text against the byte bound (`Graph::heap_bytes`, built in
//! for `String`), against the same pipeline over a newtype around `String` that has no counter
//! (its links count `size_of` only), in the same run. Both move the same strings; the ratio is
//! the accounting's cost (the ledger per batch, a counter call per element sent and per element
//! a source makes).
//!
//! ```text
//! cargo bench --bench heap_bytes
//! ```
//! `HEAP_BYTES_N` sets the element count (default 1,000,000); each string is 32 bytes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use iotstream::Graph;

fn n() -> usize {
    std::env::var("HEAP_BYTES_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

/// A `String` with no heap counter.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Uncounted(String);

fn text(i: usize) -> String {
    format!("{i:032}")
}

/// Seconds to move `n` strings, made by `make`, through source → map (`len`) → sink.
fn run<T: iotstream::Element>(n: usize, make: fn(usize) -> T, len: fn(&T) -> usize) -> f64 {
    let mut g = Graph::new("bench_heap_bytes");
    let s = g.source_iter("lines", (0..n).map(make));
    let m = g.map("len", &s, move |t: &T| len(t));
    let total = Arc::new(AtomicUsize::new(0));
    let sum = Arc::clone(&total);
    g.for_each("total", &m, move |v: &usize| {
        sum.fetch_add(*v, Ordering::Relaxed);
    });
    let start = Instant::now();
    g.run().expect("run");
    let elapsed = start.elapsed().as_secs_f64();
    assert_eq!(total.load(Ordering::Relaxed), 32 * n);
    elapsed
}

fn counted(n: usize) -> f64 {
    run(n, text, String::len)
}

fn uncounted(n: usize) -> f64 {
    run(n, |i| Uncounted(text(i)), |t| t.0.len())
}

fn main() {
    let n = n();
    let rounds = 7;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        a.push(counted(n));
        b.push(uncounted(n));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut a), median(&mut b));
    println!(
        "{n} strings of 32 bytes, median of {rounds} alternated rounds: counted {:.1} M/s, \
         uncounted {:.1} M/s, counted/uncounted {:.2}x",
        n as f64 / a / 1e6,
        n as f64 / b / 1e6,
        b / a
    );
}
