//! The `scaling` mode: how the cost grows with the shape of the graph, not just points.
//!
//! | shape | graph | elements |
//! |---|---|---|
//! | `chain` (n = `--agents`) | source → n maps → sink, one process, links of [`CHAIN_CAPACITY`] | [`CHAIN_ELEMENTS`] `u64` |
//! | `fan-out` (n = `--readers`) | one source read by n sinks | [`FAN_OUT_ELEMENTS`] `u64` to each |
//! | `processes` (n = `--processes`) | source (main) → a map in each of processes `p1` … `p{n-1}`, the sink in the last; all in one process for n = 1 | [`PROCESS_ELEMENTS`] `u64` |
//!
//! Each point is a fresh process: the time from building the graph to the end of the run,
//! the time until [`Graph::start`](crate::Graph::start) returned (and per unit), the
//! starter's threads once started, its peak memory, and the fewest batches any stream of
//! the starter carried (with the chain: what the least busy agent sent on). Memory per unit
//! is the starter's resident memory growth over its own before the graph was built, divided
//! by `n`: once started, before the first element (the source waits until then: what idle
//! agents cost), and at its peak during the run. Between successive points the report gives
//! the time ratio and the exponent `k` of time ∝ nᵏ (1: linear, 2: quadratic). A point that
//! fails (a thread that cannot be made, a run killed after `--timeout`) is reported with its
//! error, and the larger points of its shape are skipped.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{emit, ScalePoint};
use crate::error::Error;
use crate::graph::Graph;
use crate::ops::source::SourceOptions;

/// Elements through the chain.
pub const CHAIN_ELEMENTS: u64 = 100_000;
/// Each link's capacity in the chain, and so its largest batch.
pub const CHAIN_CAPACITY: usize = 1024;
/// Elements to each reader of the fan-out.
pub const FAN_OUT_ELEMENTS: u64 = 100_000;
/// Elements through the chain of processes.
pub const PROCESS_ELEMENTS: u64 = 1_000_000;

/// A scaling shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Shape {
    /// source → n maps → sink.
    Chain,
    /// One source, n sinks.
    FanOut,
    /// A chain over n processes.
    Processes,
}

impl Shape {
    /// Its name in the output.
    pub fn name(self) -> &'static str {
        match self {
            Shape::Chain => "chain",
            Shape::FanOut => "fan-out",
            Shape::Processes => "processes",
        }
    }
}

/// The threads of this process now.
fn threads_now() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Peak resident memory of this process, KiB.
fn max_rss_kib() -> u64 {
    super::rusage(libc::RUSAGE_SELF).ru_maxrss.max(0) as u64
}

/// Resident memory of this process now, KiB (`/proc/self/statm`).
fn rss_kib() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page / 1024)
}

/// `0..n` in batches of at most `max`, starting once `go` is set (so that what the started
/// graph costs idle can be read before the first element).
fn gated(n: u64, go: &Arc<AtomicBool>) -> impl crate::ops::source::Source<u64> + use<> {
    let go = Arc::clone(go);
    let mut next = 0u64;
    move |out: &mut Vec<u64>, max: usize| {
        // Bounded: a starter that never sets `go` fails (and exits) instead.
        for _ in 0..60_000 {
            if go.load(Ordering::Acquire) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let end = next.saturating_add(max as u64).min(n);
        out.extend(next..end);
        next = end;
        Ok(next < n)
    }
}

/// Runs point `n` of `shape`; the starter prints the times, the process with the sinks what
/// they got.
pub(crate) fn run(shape: Shape, n: usize) -> Result<(), Error> {
    let role = std::env::var(crate::launch::ENV_PROCESS).ok();
    let rss_before = rss_kib();
    let go = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut g = Graph::new(&format!("bench_scale_{}", shape.name().replace('-', "_")));
    g.handle_signals(false);
    let delivered = Arc::new(AtomicU64::new(0));
    let count = |g: &mut Graph, name: &str, s: &crate::stream::Stream<u64>| {
        let d = Arc::clone(&delivered);
        g.sink_list(name, s, move |xs: &[u64]| {
            d.fetch_add(xs.len() as u64, Ordering::Relaxed);
            Ok(())
        });
    };
    let options = SourceOptions {
        max_batch: 1024,
        interval: None,
    };
    let (sent, expected, sinks_in) = match shape {
        Shape::Chain => {
            // Batches merge while a stage is behind, up to a link's capacity: with 1024 every
            // agent handles at least CHAIN_ELEMENTS / 1024 batches, not a few large ones.
            g.set_default_capacity(CHAIN_CAPACITY);
            let mut s = g.source_with("source", gated(CHAIN_ELEMENTS, &go), options);
            for i in 0..n {
                s = g.map(&format!("map{i}"), &s, |v: &u64| v.wrapping_add(1));
            }
            count(&mut g, "sink", &s);
            (CHAIN_ELEMENTS, CHAIN_ELEMENTS, None)
        }
        Shape::FanOut => {
            let s = g.source_with("source", gated(FAN_OUT_ELEMENTS, &go), options);
            for i in 0..n {
                count(&mut g, &format!("sink{i}"), &s);
            }
            (FAN_OUT_ELEMENTS, FAN_OUT_ELEMENTS * n as u64, None)
        }
        Shape::Processes => {
            g.set_default_capacity(8192);
            let mut s = g.source_with("source", gated(PROCESS_ELEMENTS, &go), options);
            for k in 1..n {
                let name = format!("map{k}");
                s = g.map(&name, &s, |v: &u64| v.wrapping_add(1));
                g.place_in_process(&name, &format!("p{k}"));
            }
            count(&mut g, "sink", &s);
            let last = (n > 1).then(|| format!("p{}", n - 1));
            if let Some(p) = &last {
                g.place_in_process("sink", p);
            }
            (PROCESS_ELEMENTS, PROCESS_ELEMENTS, last)
        }
    };
    let built = t0.elapsed();
    let running = g.start()?;
    let started = t0.elapsed();
    let threads = threads_now();
    let rss_started = rss_kib();
    go.store(true, Ordering::Release);
    let metrics = running.join()?;
    // The fewest batches a stream of this process carried: with the chain, what the least
    // busy agent sent on.
    let min_batches = metrics.streams.iter().map(|s| s.batches).min().unwrap_or(0);
    let total = t0.elapsed();
    if role.is_none() {
        emit(json!({
            "sent": sent,
            "expected": expected,
            "build_s": built.as_secs_f64(),
            "start_s": started.as_secs_f64(),
            "total_s": total.as_secs_f64(),
            "threads": threads,
            "max_rss_kib": max_rss_kib(),
            "rss_before_kib": rss_before,
            "rss_started_kib": rss_started,
            "min_batches": min_batches,
        }));
    }
    if role == sinks_in {
        emit(json!({ "delivered": delivered.load(Ordering::Relaxed) }));
    }
    Ok(())
}

/// The report's point from a cell's outcome (values and CPU seconds), the previous point of
/// the shape (its `n` and total seconds) giving the growth.
pub(crate) fn point(
    shape: Shape,
    n: usize,
    outcome: Result<(serde_json::Map<String, serde_json::Value>, f64), String>,
    previous: Option<(usize, f64)>,
) -> ScalePoint {
    let mut p = ScalePoint {
        shape: shape.name().into(),
        n,
        ..ScalePoint::default()
    };
    let (values, cpu_s) = match outcome {
        Ok(o) => o,
        Err(e) => {
            p.error = Some(e);
            return p;
        }
    };
    let u = |k: &str| values.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    let f = |k: &str| values.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0);
    p.sent = u("sent");
    p.delivered = u("delivered");
    p.expected = u("expected");
    p.build_s = f("build_s");
    p.start_s = f("start_s");
    p.total_s = f("total_s");
    p.threads = u("threads");
    p.max_rss_kib = u("max_rss_kib");
    p.cpu_s = cpu_s;
    p.per_unit_us = p.total_s / n as f64 * 1e6;
    p.start_per_unit_us = p.start_s / n as f64 * 1e6;
    p.min_batches = u("min_batches");
    let before = u("rss_before_kib");
    p.idle_kib_per_unit = u("rss_started_kib").saturating_sub(before) as f64 / n as f64;
    p.peak_kib_per_unit = p.max_rss_kib.saturating_sub(before) as f64 / n as f64;
    if let Some((pn, pt)) = previous {
        if pt > 0.0 && p.total_s > 0.0 && n > pn {
            let ratio = p.total_s / pt;
            p.time_ratio = Some(ratio);
            p.exponent = Some(ratio.ln() / (n as f64 / pn as f64).ln());
        }
    }
    if !values.contains_key("delivered") || p.expected == 0 {
        p.error = Some("no count of what was delivered".into());
    } else if p.delivered != p.expected {
        p.error = Some(format!(
            "delivered {} of {} elements",
            p.delivered, p.expected
        ));
    }
    p
}
