//! No heap allocation per element: a counting global allocator shows that the allocations of a
//! pipeline grow with the number of batches, never with the number of elements.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use iotstream::{Graph, Harness};

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// The counter is global: tests that read it take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Allocations made while running source → map → filter → sink over `n` u64 elements, and the
/// number of batches the source emitted.
fn allocations(n: u64, threaded: bool) -> (u64, u64) {
    let mut g = Graph::new("alloc");
    let s = g.source_iter("numbers", 0..n);
    let m = g.map("scale", &s, |v: &u64| v.wrapping_mul(3));
    let f = g.filter("odd", &m, |v: &u64| v % 2 == 1);
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let c = std::sync::Arc::clone(&count);
    g.sink_list("count", &f, move |xs: &[u64]| {
        c.fetch_add(xs.len() as u64, Relaxed);
        Ok(())
    });
    let before = ALLOCS.load(Relaxed);
    let metrics = if threaded {
        g.run().unwrap()
    } else {
        let mut h = Harness::new(g).unwrap();
        h.finish().unwrap();
        h.metrics()
    };
    let used = ALLOCS.load(Relaxed) - before;
    assert_eq!(count.load(Relaxed), n / 2);
    (used, metrics.stream("numbers.out").unwrap().batches)
}

#[test]
fn allocations_grow_with_batches_not_elements() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    for threaded in [false, true] {
        let (small, small_batches) = allocations(1_000_000, threaded);
        let (large, large_batches) = allocations(2_000_000, threaded);
        // Per batch, a handful of allocations (the shared batch, the envelope, actix's
        // message box, the credit message …), over three connections: never one per element.
        let per_batch = (large - small) as f64 / (large_batches - small_batches) as f64;
        assert!(
            per_batch < 40.0,
            "threaded {threaded}: {per_batch:.1} allocations per source batch"
        );
        assert!(
            large < 2_000_000 / 20,
            "threaded {threaded}: {large} allocations for 2,000,000 elements"
        );
        assert!(large_batches >= 2_000_000 / iotstream::SourceOptions::default().max_batch as u64);
        eprintln!(
            "threaded {threaded}: {small} allocations for 1M elements ({small_batches} batches), {large} for 2M ({large_batches} batches): {per_batch:.1} per batch"
        );
    }
}

/// Allocations made while pushing `n` u64 one element at a time into an input (the program's
/// thread, [`InputSender::push`](iotstream::InputSender::push), or [`Harness::push`]) read by
/// map → sink, and the number of batches the input sent.
fn push_allocations(n: u64, threaded: bool) -> (u64, u64) {
    let mut g = Graph::new("alloc_push");
    let input = g.input::<u64>("readings");
    let m = g.map("scale", &input, |v: &u64| v.wrapping_mul(3));
    let count = std::sync::Arc::new(AtomicU64::new(0));
    let c = std::sync::Arc::clone(&count);
    g.sink_list("count", &m, move |xs: &[u64]| {
        c.fetch_add(xs.len() as u64, Relaxed);
        Ok(())
    });
    let before = ALLOCS.load(Relaxed);
    let metrics = if threaded {
        let mut running = g.start().unwrap();
        let tx = running.input(&input).unwrap();
        for v in 0..n {
            tx.push(v).unwrap();
        }
        drop(tx);
        running.join().unwrap()
    } else {
        let mut h = Harness::new(g).unwrap();
        for v in 0..n {
            h.push(&input, [v]).unwrap();
        }
        h.close(&input).unwrap();
        h.finish().unwrap();
        h.metrics()
    };
    let used = ALLOCS.load(Relaxed) - before;
    assert_eq!(count.load(Relaxed), n);
    (used, metrics.stream("readings.out").unwrap().batches)
}

/// One element per push: the push itself allocates nothing (it appends to the input's waiting
/// elements), so allocations grow with batches. How many batches depends on how busy the
/// readers are (adaptive batching): under the harness, pushes wait until the input is full; in
/// a threaded run, anything from one batch per push to a few thousand pushes per batch.
#[test]
fn one_element_pushes_allocate_per_batch_not_per_element() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    // Starting and ending a run allocates a fixed amount (threads, actors, buffers).
    let (fixed, _) = push_allocations(0, true);
    for threaded in [false, true] {
        let (used, batches) = push_allocations(400_000, threaded);
        let per_batch = used.saturating_sub(fixed) as f64 / batches.max(1) as f64;
        eprintln!(
            "threaded {threaded}: {used} allocations for 400k pushes in {batches} batches ({fixed} to start and end a run): {per_batch:.1} per batch"
        );
        assert!(
            per_batch < 40.0,
            "threaded {threaded}: {per_batch:.1} allocations per batch"
        );
        if !threaded {
            assert!(
                used < 400_000 / 100,
                "harness: {used} allocations for 400,000 pushes"
            );
        }
    }
}
