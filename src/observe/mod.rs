//! Seeing a running application: its counters gathered from every process, exported as
//! Prometheus text and JSON, and shown live (a web page, `iotstream top`).
//!
//! (Work in progress for issue 12: the model is in [`model`].)

pub mod model;
pub mod peers;
pub mod ui;

pub use model::{
    AgentView, AppMetrics, LinkView, ProcessSample, ProcessStatus, ProcessView, StreamView,
};

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
        let start = std::time::Instant::now();
        let mut x = 0u64;
        while start.elapsed() < std::time::Duration::from_millis(120) {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
        }
        let (cpu1, _) = super::process_usage();
        assert!(cpu1 > cpu0, "cpu {cpu0} -> {cpu1} ns after 120 ms of work");
    }
}
