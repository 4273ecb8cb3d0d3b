//! Shared by the benches: process CPU time, a figure less sensitive than wall time to other
//! programs on a shared machine.

use std::time::Duration;

/// CPU time used so far by every thread of this process (`CLOCK_PROCESS_CPUTIME_ID`).
pub fn process_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Runs `f` `iters` times and returns the process CPU time it used (all threads), for
/// `Bencher::iter_custom`: criterion then reports CPU time as "time", and elements per
/// CPU-second as "thrpt".
pub fn cpu_time_of<R>(iters: u64, mut f: impl FnMut() -> R) -> Duration {
    let start = process_cpu_time();
    for _ in 0..iters {
        std::hint::black_box(f());
    }
    process_cpu_time() - start
}
