//! Seeing a running application: its counters gathered from every process, exported as
//! Prometheus text and JSON, and shown live (a web page, `iotstream top`).
//!
//! # What is counted
//!
//! Every process keeps counters of its agents, streams and connections ([`crate::metrics`]):
//! elements and batches, drops, time blocked, elements in flight, late elements, the last
//! watermark, time spent in steps. Each process's part is one [`ProcessSample`], with its CPU
//! time and resident memory ([`process_usage`]), reported every interval (1 s by default).
//!
//! # Putting processes together
//!
//! An [`Aggregator`], made from the application's [`GraphInfo`](crate::info::GraphInfo),
//! takes every process's samples ([`Aggregator::record`]), what the supervisor knows of each
//! process ([`Aggregator::set_status`], [`Aggregator::restarted`]), and other hosts' views
//! ([`Aggregator::merge_remote`]); [`Aggregator::tick`] makes an [`AppMetrics`]: one entry
//! per process, agent, stream and connection, counters that never go back (restarts
//! included), rates over the last interval. The two ends of a connection between processes
//! are put together, each counter taken from the end that knows it (see [`aggregate`]).
//!
//! # Serving it
//!
//! [`prometheus_text`] renders an [`AppMetrics`] in the Prometheus text format
//! (`iotstream_stream_elements_total{app,stream,process,host}`, … see [`prometheus`]).
//! [`Server`] serves `/metrics`, `/api/metrics`, `/api/graph` and the live-view page on
//! `/`, from any [`ViewSource`] (an `Arc<Mutex<Aggregator>>` is one), on 127.0.0.1 by
//! default and only with a token elsewhere (see [`http`]).
//!
//! The launcher does this for a launched application (`iotstream run APP --metrics ADDR`);
//! a program that runs without it calls [`Graph::serve_metrics`](crate::Graph::serve_metrics)
//! before starting:
//!
//! ```no_run
//! use iotstream::Graph;
//!
//! let mut g = Graph::new("quake");
//! let readings = g.source_iter("sensor", 0..u64::MAX);
//! g.for_each("detector", &readings, |_: &u64| {});
//! g.serve_metrics("127.0.0.1:9464");
//! g.run().unwrap(); // curl 127.0.0.1:9464/metrics while it runs
//! ```

pub mod aggregate;
mod bounded;
pub mod http;
pub mod model;
pub mod peers;
pub mod prometheus;
pub mod ui;

pub use aggregate::Aggregator;
pub use http::{ServeOptions, Server, ViewSource};
pub use model::{
    AgentView, AppMetrics, LinkView, ProcessSample, ProcessStatus, ProcessView, StreamView,
};
pub use prometheus::{prometheus_text, PROMETHEUS_CONTENT_TYPE};

/// This process's report now: its pid, the time, its CPU time and memory
/// ([`process_usage`]), and `metrics` (its counters).
pub fn sample_this_process(metrics: crate::metrics::Metrics) -> ProcessSample {
    let (cpu_ns, rss_bytes) = process_usage();
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    ProcessSample {
        pid: std::process::id(),
        time_ms,
        cpu_ns,
        rss_bytes,
        metrics,
    }
}

/// This process's CPU time (user plus system, nanoseconds) and resident memory (bytes), from
/// `/proc/self/stat` and `/proc/self/statm`; zeros where they cannot be read.
pub fn process_usage() -> (u64, u64) {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    let cpu_ns = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            // The command name (field 2) is in parentheses and may hold spaces: split after it.
            let rest = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state is field 3, utime field 14, stime field 15.
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) * 1_000_000_000 / ticks)
        })
        .unwrap_or(0);
    let rss_bytes = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * page);
    (cpu_ns, rss_bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_process_uses_some_memory_and_cpu_grows_with_work() {
        let (cpu0, rss) = super::process_usage();
        assert!(rss > 1 << 20, "resident memory {rss} bytes");
        // Work until the CPU time moves (it counts in clock ticks, and a loaded machine may
        // give this thread little of the wall time), within a generous bound.
        let start = std::time::Instant::now();
        let mut x = 0u64;
        let mut cpu1 = cpu0;
        while cpu1 == cpu0 && start.elapsed() < std::time::Duration::from_secs(60) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
            cpu1 = super::process_usage().0;
        }
        assert!(
            cpu1 > cpu0,
            "cpu {cpu0} -> {cpu1} ns after a minute of work"
        );
    }
}
