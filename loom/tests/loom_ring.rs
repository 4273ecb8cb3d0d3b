//! Model tests of the shared-memory ring protocol with [loom]: every interleaving of the two
//! sides (up to a preemption bound), with loom's model of relaxed memory, and its checks that
//! no payload byte is accessed by both sides without a happens-before between them.
//!
//! ```text
//! cargo test --release --manifest-path loom/Cargo.toml
//! ```
//!
//! The ring's source is compiled into this test crate (`#[path]` modules), with the loom
//! version of its `sync` module. This crate (`loom/`) is a workspace of its own that depends on
//! loom and thiserror only: the library never sees loom, and the release build the models need
//! builds none of the main crate's dependencies. Its `build.rs` sets `cfg(iotstream_loom)` for
//! this crate alone (not `loom`: tokio reads `cfg(loom)` too, and no RUSTFLAGS reach any
//! dependency).
//! The futex is emulated by a loom mutex and condition variable that never time out, so a lost
//! wake-up is a deadlock, which loom reports.
//!
//! The models have teeth: each of these one-line mutations of `ring.rs` makes some of them fail
//! (checked by hand when they were written): the waiter's `SeqCst` fence removed, or the
//! waker's (a deadlock: a lost wake-up); `head` published with `Relaxed` instead of `Release`,
//! or `tail` released with `Relaxed` (a causality violation on payload bytes); the producer's
//! nudge moved before its waiting flag is set and fenced, or a `DataNudger` nudge without its
//! fence (a deadlock); the consumer's `consumed` stored after the `tail` it goes with (a
//! producer counting less in flight than there is), or `release_consumed` not waking the
//! producer when only `consumed` changed (a deadlock); `Producer::wake_space_waiter` left
//! out (a deadlock: the writer's watcher keeps waiting for what it no longer needs).
//!
//! Bounds: the six sleep/wake handshake models are exhaustive (including the producer's nudge
//! to a consumer that holds frames and watches for a producer out of space, a nudge from
//! another thread of the consumer's process, and a wake of the producer's watcher from the
//! writer's thread), and so are the two of the consumer's
//! `consumed` word (the producer's count of what is in flight, its wait for consumption);
//! the three longer ones are bounded to 4–5
//! preemptions, so that the whole file takes about a minute on two cores.
//!
//! [loom]: https://docs.rs/loom
#![cfg(iotstream_loom)]

#[path = "../../src/transport/shm/sync.rs"]
#[allow(dead_code)]
mod sync;

#[path = "../../src/transport/shm/ring.rs"]
#[allow(dead_code)]
mod ring;

use std::sync::Arc;
use std::time::Duration;

use loom::thread;
use ring::{Consumer, HeapRing, Producer, Wait};

type P = Producer<Arc<HeapRing>>;
type C = Consumer<Arc<HeapRing>>;

/// Longer than any model runs: a wait that returns before its condition holds is a bug.
const FOREVER: Duration = Duration::from_secs(3600);

/// Checks `f` under every interleaving with at most `preemption_bound` preemptions (`None`:
/// every interleaving). loom's own `LOOM_MAX_PREEMPTIONS` overrides it, e.g. for a longer run.
fn model(preemption_bound: Option<usize>, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if std::env::var_os("LOOM_MAX_PREEMPTIONS").is_none() {
        builder.preemption_bound = preemption_bound;
    }
    builder.check(f);
}

fn pair(capacity: usize) -> (P, C) {
    let ring = HeapRing::new(capacity).unwrap();
    let p = Producer::new(Arc::clone(&ring)).unwrap();
    let c = Consumer::new(ring).unwrap();
    (p, c)
}

/// Writes one frame, publishing and waiting for space while it does not fit.
fn send(p: &mut P, bytes: &[u8]) {
    while !p
        .try_write(bytes.len(), |b| b.copy_from_slice(bytes))
        .unwrap()
    {
        p.publish();
        assert_eq!(p.wait_for_space(bytes.len(), FOREVER).unwrap(), Wait::Ready);
    }
}

/// Reads frames until the end of the stream, waiting while the ring is empty.
fn drain(c: &mut C) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    loop {
        while let Some(frame) = c.try_read(|b| b.to_vec()).unwrap() {
            got.push(frame);
        }
        c.release().unwrap();
        if c.is_closed().unwrap() {
            return got;
        }
        assert_eq!(c.wait_for_data(FOREVER).unwrap(), Wait::Ready);
    }
}

#[test]
fn publish_then_consume() {
    model(Some(5), || {
        let (mut p, mut c) = pair(64);
        let producer = thread::spawn(move || {
            send(&mut p, &[1; 8]);
            send(&mut p, &[2; 3]);
            p.publish();
            send(&mut p, &[3; 16]);
            p.close();
        });
        let got = drain(&mut c);
        producer.join().unwrap();
        assert_eq!(got, [vec![1; 8], vec![2; 3], vec![3; 16]]);
    });
}

#[test]
fn wrap_around_with_both_sides_waiting() {
    // Frames of 24 bytes in a 64-byte ring: the third needs a wrap marker at offset 48, and the
    // producer must wait for the consumer to release space more than once.
    model(Some(4), || {
        let (mut p, mut c) = pair(64);
        let producer = thread::spawn(move || {
            for i in 1..=4u8 {
                send(&mut p, &[i; 16]);
                p.publish();
            }
            p.close();
        });
        let got = drain(&mut c);
        producer.join().unwrap();
        assert_eq!(got, (1..=4u8).map(|i| vec![i; 16]).collect::<Vec<_>>());
    });
}

#[test]
fn full_then_empty() {
    // The producer fills the ring in one batch (four 16-byte frames), then must wait for space
    // for a fifth; the consumer empties it in one batch.
    model(Some(5), || {
        let (mut p, mut c) = pair(64);
        let producer = thread::spawn(move || {
            for i in 1..=4u8 {
                assert!(p.try_write(8, |b| b.fill(i)).unwrap());
            }
            assert!(!p.try_write(8, |_| ()).unwrap(), "the ring is full");
            send(&mut p, &[5; 8]);
            p.close();
        });
        let got = drain(&mut c);
        producer.join().unwrap();
        assert_eq!(got, (1..=5u8).map(|i| vec![i; 8]).collect::<Vec<_>>());
    });
}

#[test]
fn a_consumer_waiting_for_data_is_always_woken() {
    model(None, || {
        let (mut p, mut c) = pair(64);
        let producer = thread::spawn(move || {
            assert!(p.try_write(8, |b| b.fill(7)).unwrap());
            p.publish();
            p
        });
        assert_eq!(c.wait_for_data(FOREVER).unwrap(), Wait::Ready);
        assert_eq!(c.try_read(|b| b.to_vec()).unwrap(), Some(vec![7; 8]));
        drop(producer.join().unwrap());
    });
}

#[test]
fn a_producer_waiting_for_space_is_always_woken() {
    model(None, || {
        let (mut p, mut c) = pair(64);
        for i in 1..=4u8 {
            assert!(p.try_write(8, |b| b.fill(i)).unwrap());
        }
        p.publish();
        let consumer = thread::spawn(move || {
            assert_eq!(c.try_read(|b| b.to_vec()).unwrap(), Some(vec![1; 8]));
            c.release().unwrap();
            c
        });
        assert_eq!(p.wait_for_space(8, FOREVER).unwrap(), Wait::Ready);
        assert!(p.try_write(8, |b| b.fill(5)).unwrap());
        p.publish();
        drop(consumer.join().unwrap());
    });
}

#[test]
fn close_wakes_a_waiting_consumer() {
    model(None, || {
        let (mut p, mut c) = pair(64);
        let producer = thread::spawn(move || p.close());
        assert_eq!(c.wait_for_data(FOREVER).unwrap(), Wait::Ready);
        assert!(c.is_closed().unwrap());
        producer.join().unwrap();
    });
}

#[test]
fn a_producer_waiting_for_space_wakes_a_consumer_watching_for_it() {
    // The consumer holds every frame (read, not released) and waits, watching the producer;
    // the producer runs out of space and waits too. Its nudge must wake the consumer (which
    // then releases), or both sleep forever: a deadlock, which loom reports.
    model(None, || {
        let (mut p, mut c) = pair(64);
        for i in 1..=4u8 {
            assert!(p.try_write(8, |b| b.fill(i)).unwrap());
        }
        p.publish();
        for _ in 1..=4 {
            assert!(c.try_read(|_| ()).unwrap().is_some());
        }
        let producer = thread::spawn(move || {
            assert_eq!(p.wait_for_space(8, FOREVER).unwrap(), Wait::Ready);
            assert!(p.try_write(8, |b| b.fill(5)).unwrap());
            p.publish();
            p
        });
        assert_eq!(
            c.wait_for_data_or(FOREVER, true, || false).unwrap(),
            Wait::Ready
        );
        assert!(c.producer_waits_for_space());
        c.release().unwrap();
        drop(producer.join().unwrap());
    });
}

#[test]
fn a_nudge_wakes_a_consumer_waiting_for_its_condition() {
    // Another thread of the consumer's process makes the consumer's extra condition true (a
    // relaxed store: the nudge's fence is what orders it) and nudges.
    model(None, || {
        use loom::sync::atomic::{AtomicBool, Ordering};
        let (_p, mut c) = pair(64);
        let nudger = c.nudger();
        let flag = Arc::new(AtomicBool::new(false));
        let set = Arc::clone(&flag);
        let other = thread::spawn(move || {
            set.store(true, Ordering::Relaxed);
            nudger.nudge();
        });
        assert_eq!(
            c.wait_for_data_or(FOREVER, false, || flag.load(Ordering::Relaxed))
                .unwrap(),
            Wait::Ready
        );
        other.join().unwrap();
    });
}

#[test]
fn a_producer_asking_for_something_else_wakes_its_space_waiter() {
    // The writer's watcher waits for room the reader never gives; the writer (another thread
    // of its process) asks for something else (a relaxed store: the wake's fence is what
    // orders it) and wakes it. Missing that wake-up is a writer asleep until the reader
    // releases frames it may hold for long.
    model(None, || {
        use loom::sync::atomic::{AtomicBool, Ordering};
        let (p, _c) = pair(64);
        let waiter = p.space_waiter();
        let flag = Arc::new(AtomicBool::new(false));
        let asked = Arc::clone(&flag);
        let writer = thread::spawn(move || {
            asked.store(true, Ordering::Relaxed);
            p.wake_space_waiter();
            p
        });
        assert_eq!(
            waiter
                .wait_for_tail(64, FOREVER, || flag.load(Ordering::Relaxed))
                .unwrap(),
            Wait::Ready
        );
        drop(writer.join().unwrap());
    });
}

#[test]
fn a_producer_never_counts_less_in_flight_than_there_is() {
    // Frames A (3 elements) and B (2). The reader consumes 2 of A (the consumer says
    // consumed 2, nothing released), then 2 more: A is released and 1 of B consumed (consumed
    // 1 at A's end). At the least 1 element is in flight; the producer, reading `tail` then
    // `consumed` at any moment, must never count fewer (it would write past its capacity).
    model(None, || {
        let (mut p, mut c) = pair(64);
        assert!(p.try_write(8, |b| b.fill(1)).unwrap());
        let end_a = p.head();
        assert!(p.try_write(8, |b| b.fill(2)).unwrap());
        let end_b = p.head();
        p.publish();
        let consumer = thread::spawn(move || {
            assert!(c.try_read(|_| ()).unwrap().is_some());
            assert!(c.try_read(|_| ()).unwrap().is_some());
            c.release_consumed(2, None).unwrap();
            c.release_consumed(1, Some(end_a)).unwrap();
            c
        });
        // Reads until it sees the end state, checking every reading on the way.
        loop {
            let (tail, consumed) = p.released().unwrap();
            let written: u64 = [(end_a, 3), (end_b, 2)]
                .iter()
                .filter(|&&(end, _)| end > tail)
                .map(|&(_, n)| n)
                .sum();
            let counted = written - consumed.min(written);
            assert!(
                (1..=5).contains(&counted),
                "tail {tail}, consumed {consumed}: {counted} counted in flight"
            );
            if (tail, consumed) == (end_a, 1) {
                break;
            }
            thread::yield_now();
        }
        drop(consumer.join().unwrap());
    });
}

#[test]
fn a_producer_waiting_for_consumption_is_woken_by_it() {
    // The reader consumes part of a frame: nothing is released, only `consumed` changes. A
    // producer out of element credit waits for exactly that; missing it is a deadlock.
    model(None, || {
        let (mut p, mut c) = pair(64);
        assert!(p.try_write(8, |b| b.fill(1)).unwrap());
        p.publish();
        let waiter = p.space_waiter();
        let (tail, consumed) = p.released().unwrap();
        let consumer = thread::spawn(move || {
            assert!(c.try_read(|_| ()).unwrap().is_some());
            c.release_consumed(1, None).unwrap();
            c
        });
        assert_eq!(
            waiter
                .wait_for_progress(tail, consumed, FOREVER, || false)
                .unwrap(),
            Wait::Ready
        );
        assert_eq!(p.released().unwrap(), (0, 1));
        drop(consumer.join().unwrap());
    });
}
