//! Threads scale with the cores, not with the agents (issue 13): agents not placed on a thread
//! run on a pool of worker threads.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use iotstream::Graph;

/// Threads of this process now.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A chain of 10,000 maps runs on the worker pool: every element comes through, and the
/// process has about as many threads as workers (plus the runtime's own few), not one per agent.
#[test]
fn ten_thousand_agents_run_on_a_few_threads() {
    const AGENTS: usize = 10_000;
    const WORKERS: usize = 2;
    let before = threads();
    let mut g = Graph::new("long_chain");
    g.worker_threads(WORKERS);
    let mut s = g.source_iter("numbers", 0..1_000u64);
    for k in 0..AGENTS {
        s = g.map(&format!("add{k}"), &s, |v: &u64| v + 1);
    }
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    let sum = Arc::new(AtomicUsize::new(0));
    let total = Arc::clone(&sum);
    g.sink_list("sum", &s, move |xs: &[u64]| {
        seen.fetch_max(threads(), Ordering::Relaxed);
        total.fetch_add(xs.iter().sum::<u64>() as usize, Ordering::Relaxed);
        Ok(())
    });
    g.run().unwrap();
    let want: u64 = (0..1_000u64).map(|v| v + AGENTS as u64).sum();
    assert_eq!(sum.load(Ordering::Relaxed) as u64, want);
    // Other tests of this binary start and end threads meanwhile: the count can even fall.
    let during = peak.load(Ordering::Relaxed).saturating_sub(before);
    // The workers, the runtime's thread, the source's thread, actix's system arbiter and a
    // few helpers: a handful, not 10,000.
    assert!(
        during <= WORKERS + 8,
        "{during} threads for {AGENTS} agents on {WORKERS} workers"
    );
}

/// A chain of 20,000 maps with a stream that reaches every agent in many batches (links of
/// 64 elements: at least 2,048 / 64 = 32 batches each): every element comes through every
/// agent, on about as many threads as workers, and memory stays bounded (what each agent
/// holds once data has gone by is not kept per agent: see `stream::spare`), which this
/// checks only as far as the run finishing.
#[test]
fn twenty_thousand_agents_each_handle_many_batches() {
    const AGENTS: usize = 20_000;
    const ELEMENTS: u64 = 2_048;
    const CAPACITY: usize = 64;
    const WORKERS: usize = 2;
    let before = threads();
    let mut g = Graph::new("many_batches");
    g.worker_threads(WORKERS);
    g.set_default_capacity(CAPACITY);
    let mut s = g.source_iter("numbers", 0..ELEMENTS);
    for k in 0..AGENTS {
        s = g.map(&format!("m{k}"), &s, |v: &u64| v + 1);
    }
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    let sum = Arc::new(AtomicUsize::new(0));
    let total = Arc::clone(&sum);
    g.sink_list("sum", &s, move |xs: &[u64]| {
        seen.fetch_max(threads(), Ordering::Relaxed);
        total.fetch_add(xs.iter().sum::<u64>() as usize, Ordering::Relaxed);
        Ok(())
    });
    let metrics = g.run().unwrap();
    let want: u64 = (0..ELEMENTS).map(|v| v + AGENTS as u64).sum();
    assert_eq!(sum.load(Ordering::Relaxed) as u64, want);
    for k in [0, AGENTS / 2, AGENTS - 1] {
        let out = metrics.stream(&format!("m{k}.out")).unwrap();
        assert_eq!(out.elements, ELEMENTS, "m{k}");
        assert!(
            out.batches >= ELEMENTS / CAPACITY as u64,
            "m{k} sent {} batches",
            out.batches
        );
    }
    // Other tests of this binary start and end threads meanwhile: the count can even fall.
    let during = peak.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        during <= WORKERS + 8,
        "{during} threads for {AGENTS} agents on {WORKERS} workers"
    );
}

/// Without `worker_threads` the pool has one worker per core.
#[test]
fn the_default_pool_has_one_worker_per_core() {
    let cores = std::thread::available_parallelism().unwrap().get();
    let before = threads();
    let mut g = Graph::new("default_pool");
    let mut s = g.source_iter("numbers", 0..10u64);
    for k in 0..200 {
        s = g.map(&format!("same{k}"), &s, |v: &u64| *v);
    }
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&peak);
    g.sink_list("watch", &s, move |_: &[u64]| {
        seen.fetch_max(threads(), Ordering::Relaxed);
        Ok(())
    });
    g.run().unwrap();
    // Other tests of this binary start and end threads meanwhile: the count can even fall.
    let during = peak.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        during <= cores + 8,
        "{during} threads for 200 agents on {cores} cores"
    );
}

/// With one worker, every agent not placed shares one thread; a placed agent runs on another.
#[test]
fn pooled_agents_share_the_workers_and_a_placed_one_has_its_own_thread() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::thread::ThreadId;
    let mut g = Graph::new("placed");
    g.worker_threads(1);
    let pooled: Arc<Mutex<HashSet<ThreadId>>> = Arc::default();
    let mut s = g.source_iter("numbers", 0..100u64);
    for k in 0..5 {
        let ids = Arc::clone(&pooled);
        s = g.map(&format!("m{k}"), &s, move |v: &u64| {
            ids.lock().unwrap().insert(std::thread::current().id());
            *v
        });
    }
    let placed: Arc<Mutex<HashSet<ThreadId>>> = Arc::default();
    let ids = Arc::clone(&placed);
    g.sink_list("watch", &s, move |_: &[u64]| {
        ids.lock().unwrap().insert(std::thread::current().id());
        Ok(())
    });
    g.place_on_thread("watch", "watcher");
    g.run().unwrap();
    let pooled = pooled.lock().unwrap().clone();
    let placed = placed.lock().unwrap().clone();
    assert_eq!(pooled.len(), 1, "five maps on one worker");
    assert_eq!(placed.len(), 1);
    assert!(
        pooled.is_disjoint(&placed),
        "the placed sink ran on the worker"
    );
}

/// A worker count of 0 is refused with a clear error.
#[test]
fn zero_workers_is_an_error() {
    let mut g = Graph::new("none");
    g.worker_threads(0);
    let s = g.source_iter("numbers", 0..10u64);
    g.collect("out", &s);
    let err = g.run().unwrap_err().to_string();
    assert!(err.contains("worker_threads"), "{err}");
}

/// A deployment's `workers` for a process wins over the code's `worker_threads` there: with
/// `workers = 1` for `main`, every pooled agent shares one thread although the code asks for
/// four.
#[test]
fn a_deployments_workers_set_the_pool_of_its_process() {
    use std::collections::HashSet;
    use std::sync::Mutex;
    use std::thread::ThreadId;
    let mut g = Graph::new("deployed_pool");
    g.worker_threads(4);
    let pooled: Arc<Mutex<HashSet<ThreadId>>> = Arc::default();
    let mut s = g.source_iter("numbers", 0..100u64);
    for k in 0..8 {
        let ids = Arc::clone(&pooled);
        s = g.map(&format!("m{k}"), &s, move |v: &u64| {
            ids.lock().unwrap().insert(std::thread::current().id());
            *v
        });
    }
    let out = g.collect("out", &s);
    let plan = iotstream::deploy::Deployment::parse("d.toml", "[processes.main]\nworkers = 1\n")
        .unwrap()
        .plan(&g.info())
        .unwrap();
    g.apply_plan(&plan);
    g.run().unwrap();
    assert_eq!(out.len(), 100);
    assert_eq!(pooled.lock().unwrap().len(), 1, "eight maps on one worker");
}
