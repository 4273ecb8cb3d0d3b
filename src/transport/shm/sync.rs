//! The ring's environment: atomics, the futex, spinning, and race tracking, in two versions.
//!
//! The ring ([`super::ring`]) reaches everything that synchronises through this module, so the
//! same ring code runs for real and under the [loom] model checker:
//!
//! | item | real build | `cfg(all(iotstream_loom, test))` |
//! |---|---|---|
//! | `AtomicU32`, `AtomicU64`, `fence` | `std::sync::atomic` | `loom::sync::atomic` |
//! | [`Shadow::futex_wait`] / [`Shadow::futex_wake`] | the Linux `futex` system call, shared (not `FUTEX_PRIVATE`), so it works across processes | a loom `Mutex` + `Condvar` emulating wait-if-equal / wake-all |
//! | [`Shadow::track_read`] / [`Shadow::track_write`] | nothing | one loom `UnsafeCell<()>` per 8 data bytes, so loom reports unsynchronised payload accesses |
//! | [`SPIN_LIMIT`] | a short spin before sleeping | one check, to keep the models small |
//! | [`SLOW_STREAM_CHECKS`] | none: a reader on a slow stream sleeps at once | one check: without it every schedule goes through the futex emulation (the models took 300 s instead of 30) |
//! | `note_woke` / `take_woke` | a thread-local flag: this thread woke a sleeper (its next wait gives the core up first) | nothing noted |
//! | `own_start_stamp` | when this process started, read once from `/proc/<pid>/stat` (a ring's [`Holder`](super::ring::Holder)) | 0, not known |
//!
//! [`Shadow`] is the per-ring state the model needs; in a real build it is zero-sized, and a
//! shared-memory segment needs nothing but the futex words already in the ring's header.
//!
//! Why `all(iotstream_loom, test)` and not `loom` alone: the library never depends on loom, so it
//! is always built without it (also when `RUSTFLAGS="--cfg loom"`). `loom/tests/loom_ring.rs`, a
//! crate of its own that depends on loom and whose `build.rs` sets `iotstream_loom`, compiles
//! this file and `ring.rs` into the test crate itself (`#[path]` modules), where `test` is set
//! and loom is available.
//!
//! [loom]: https://docs.rs/loom

#[cfg(not(all(iotstream_loom, test)))]
pub(crate) use real::*;

#[cfg(all(iotstream_loom, test))]
pub(crate) use model::*;

/// What a futex wait returned; callers re-check their condition whatever it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FutexWait {
    /// Woken, interrupted, or the word no longer held the expected value.
    Returned,
    /// The timeout elapsed.
    TimedOut,
}

#[cfg(not(all(iotstream_loom, test)))]
mod real {
    use super::FutexWait;
    use std::time::Duration;

    pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

    /// How many times a side re-checks its condition (with a spin-loop hint) before sleeping on
    /// the futex (a producer always, a consumer only after a short wait: `AdaptiveSpin`): 1–3
    /// µs, by how long the processor's spin-loop hint takes (`pause` took 28–36 ns on the
    /// project's AMD EPYC machines in 2026-12: 100 checks, 2.9 µs), at the low end of what a
    /// futex wake-up costs there (2–20 µs). 40 checks measured no different
    /// (docs/benchmarks-journal.md, "Where a blocking round trip goes at 1,000/s").
    pub(crate) const SPIN_LIMIT: u32 = 100;

    /// How many times a reader whose last wait was long re-checks for data before the
    /// handshake (which checks once more): none, it sleeps at once (`AdaptiveSpin`).
    pub(crate) const SLOW_STREAM_CHECKS: u32 = 0;

    /// A hint to the processor inside a spin loop.
    #[inline]
    pub(crate) fn spin_hint() {
        std::hint::spin_loop();
    }

    /// Inside a long spin: lets a thread that waits for this core run (the peer this one just
    /// woke may have been put on it), at the cost of one system call when none does.
    #[inline]
    pub(crate) fn yield_core() {
        std::thread::yield_now();
    }

    std::thread_local! {
        /// This thread woke a sleeper on a ring's futex since it last asked ([`note_woke`]).
        static WOKE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    /// Notes that this thread has just woken a thread sleeping on a ring's futex word, which
    /// the scheduler may have put on this very core.
    #[inline]
    pub(crate) fn note_woke() {
        WOKE.with(|w| w.set(true));
    }

    /// Whether this thread woke a sleeper since the last call.
    #[inline]
    pub(crate) fn take_woke() -> bool {
        WOKE.with(|w| w.replace(false))
    }

    /// This process's start stamp (see [`Holder`](super::super::ring::Holder)), read once.
    pub(crate) fn own_start_stamp() -> u32 {
        crate::transport::process::own_start_stamp()
    }

    /// Per-ring state of the model checker; nothing in a real build.
    #[derive(Debug, Default)]
    pub(crate) struct Shadow;

    impl Shadow {
        /// The shadow of a ring of `capacity` data bytes.
        pub(crate) fn new(_capacity: usize) -> Shadow {
            Shadow
        }

        /// Sleeps while `word` holds `expected`, for at most `timeout` (`FUTEX_WAIT`).
        ///
        /// The kernel compares and sleeps atomically, so a waker that changes `word` and then
        /// calls [`futex_wake`](Self::futex_wake) cannot be missed.
        pub(crate) fn futex_wait(
            &self,
            word: &AtomicU32,
            expected: u32,
            timeout: Duration,
        ) -> FutexWait {
            // A relative timeout; i64 seconds are ~292 G years, so the cap never matters.
            let ts = libc::timespec {
                tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
                tv_nsec: timeout.subsec_nanos() as libc::c_long,
            };
            // SAFETY: `word` is a live, aligned u32 for the duration of the call (a reference),
            // and the kernel only reads it; `ts` is a valid timespec on our stack; the last two
            // arguments are ignored by FUTEX_WAIT. Without FUTEX_PRIVATE_FLAG the kernel keys the
            // wait on the physical page, so a waker in another process mapping the same shared
            // memory finds us.
            let r = unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAIT,
                    expected,
                    &ts as *const libc::timespec,
                    std::ptr::null::<u32>(),
                    0u32,
                )
            };
            if r == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT) {
                FutexWait::TimedOut
            } else {
                // 0 (woken, possibly spuriously), EAGAIN (value changed), EINTR (signal).
                FutexWait::Returned
            }
        }

        /// Wakes every thread, in any process, sleeping on `word` (`FUTEX_WAKE`).
        pub(crate) fn futex_wake(&self, word: &AtomicU32) {
            // SAFETY: `word` is a live, aligned u32 (a reference); FUTEX_WAKE does not access
            // it, the kernel only uses its address as the wait key. The trailing arguments are
            // ignored by FUTEX_WAKE. An error (none is expected) would only mean nobody was woken,
            // and waits are timed, so it is ignored.
            unsafe {
                libc::syscall(
                    libc::SYS_futex,
                    word.as_ptr(),
                    libc::FUTEX_WAKE,
                    i32::MAX,
                    std::ptr::null::<libc::timespec>(),
                    std::ptr::null::<u32>(),
                    0u32,
                );
            }
        }

        /// Records a read of data bytes `off..off + len` (model checking only).
        #[inline(always)]
        pub(crate) fn track_read(&self, _off: usize, _len: usize) {}

        /// Records a write of data bytes `off..off + len` (model checking only).
        #[inline(always)]
        pub(crate) fn track_write(&self, _off: usize, _len: usize) {}
    }
}

#[cfg(all(iotstream_loom, test))]
mod model {
    use super::FutexWait;
    use loom::cell::UnsafeCell;
    use loom::sync::{Condvar, Mutex};
    use std::time::Duration;

    pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

    /// One check before sleeping: spinning only multiplies the interleavings loom explores.
    pub(crate) const SPIN_LIMIT: u32 = 1;

    /// One check too, where the real build makes none: a check only reads, so the handshake
    /// after a failed one is the real build's, and without it every schedule of every model
    /// goes through the futex emulation (the models took ten times as long).
    pub(crate) const SLOW_STREAM_CHECKS: u32 = 1;

    /// Lets loom run another thread.
    pub(crate) fn spin_hint() {
        loom::thread::yield_now();
    }

    /// Lets loom run another thread.
    pub(crate) fn yield_core() {
        loom::thread::yield_now();
    }

    /// Nothing to note under the model.
    pub(crate) fn note_woke() {}

    /// Never: the model's waits stay small.
    pub(crate) fn take_woke() -> bool {
        false
    }

    /// Not known: the models have one process, and no `/proc` to read under loom.
    pub(crate) fn own_start_stamp() -> u32 {
        0
    }

    /// Per-ring state of the model: the futex emulation and one race detector per 8 data bytes.
    pub(crate) struct Shadow {
        lock: Mutex<()>,
        wakeups: Condvar,
        granules: Vec<UnsafeCell<()>>,
    }

    impl Shadow {
        /// The shadow of a ring of `capacity` data bytes.
        pub(crate) fn new(capacity: usize) -> Shadow {
            Shadow {
                lock: Mutex::new(()),
                wakeups: Condvar::new(),
                granules: (0..capacity.div_ceil(8))
                    .map(|_| UnsafeCell::new(()))
                    .collect(),
            }
        }

        /// Wait-if-equal: the comparison happens under the lock a waker takes, as the kernel's
        /// does under its hash-bucket lock. loom's condition variable never times out, so a lost
        /// wake-up shows as a deadlock instead of a slow run.
        pub(crate) fn futex_wait(
            &self,
            word: &AtomicU32,
            expected: u32,
            _timeout: Duration,
        ) -> FutexWait {
            let guard = self.lock.lock().unwrap();
            if word.load(Ordering::SeqCst) != expected {
                return FutexWait::Returned;
            }
            drop(self.wakeups.wait(guard).unwrap());
            FutexWait::Returned
        }

        /// Wake-all. (One condition variable serves both futex words of a ring: a waiter woken
        /// for the other word sees its condition unchanged and sleeps again, as after a spurious
        /// futex wake-up.)
        pub(crate) fn futex_wake(&self, _word: &AtomicU32) {
            let _guard = self.lock.lock().unwrap();
            self.wakeups.notify_all();
        }

        /// Records a read of data bytes `off..off + len`: loom fails the model if a write to
        /// the same 8-byte granules is not ordered with it.
        pub(crate) fn track_read(&self, off: usize, len: usize) {
            for g in &self.granules[off / 8..(off + len).div_ceil(8)] {
                g.with(|_| ());
            }
        }

        /// Records a write of data bytes `off..off + len` (see [`track_read`](Self::track_read)).
        pub(crate) fn track_write(&self, off: usize, len: usize) {
            for g in &self.granules[off / 8..(off + len).div_ceil(8)] {
                g.with_mut(|_| ());
            }
        }
    }
}
