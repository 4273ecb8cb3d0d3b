//! Back-pressure: every connection is bounded; `Block` loses nothing, the drop policies drop
//! exactly what they should and count it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotstream::{Connection, Graph, Harness, Policy, Transport};

/// Builds x → sink with the given connection; 100 elements are pushed in chunks of 5 before the
/// sink gets a chance to run, so the writer outruns the reader deterministically.
fn burst(policy: Policy) -> (Vec<u32>, iotstream::Metrics) {
    let mut g = Graph::new("burst");
    let x = g.input::<u32>("x");
    let (input, collected) = {
        let collected = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let c = Arc::clone(&collected);
        let input = g.add_agent("sink", |p| {
            let input = p.input::<u32>("in");
            (Sink { input, seen: c }, input)
        });
        (input, collected)
    };
    g.connect_with(&x, &input, Connection::new().capacity(10).policy(policy));
    let mut h = Harness::new(g).unwrap();
    for chunk in (0..100u32).collect::<Vec<_>>().chunks(5) {
        h.push(&x, chunk.to_vec()).unwrap();
    }
    h.run().unwrap();
    h.finish().unwrap();
    let seen = collected.lock().unwrap().clone();
    (seen, h.metrics())
}

struct Sink {
    input: iotstream::Input<u32>,
    seen: Arc<std::sync::Mutex<Vec<u32>>>,
}

impl iotstream::Agent for Sink {
    fn step(
        &mut self,
        inputs: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        self.seen
            .lock()
            .unwrap()
            .extend_from_slice(inputs.slice(&self.input));
        inputs.consume_all(&self.input);
        Ok(())
    }
}

#[test]
fn block_loses_nothing_and_bounds_in_flight() {
    let (seen, m) = burst(Policy::Block);
    assert_eq!(seen, (0..100).collect::<Vec<_>>());
    let link = m.link("x.out", "sink").unwrap();
    assert_eq!(link.dropped, 0);
    assert_eq!(link.elements, 100);
    assert!(link.max_in_flight <= 10);
}

#[test]
fn drop_newest_keeps_the_first_capacity_elements() {
    let (seen, m) = burst(Policy::DropNewest);
    // The reader has not run while the 100 elements arrive: the first 10 fill the credit,
    // the other 90 find no room.
    assert_eq!(seen, (0..10).collect::<Vec<_>>());
    let link = m.link("x.out", "sink").unwrap();
    assert_eq!(link.dropped, 90);
    assert_eq!(m.total_dropped(), 90);
}

#[test]
fn drop_oldest_keeps_the_freshest_elements() {
    let (seen, m) = burst(Policy::DropOldest);
    // 10 are sent at once; of the 90 that wait, only the newest 10 are kept, and they are
    // sent as soon as the reader returns credit.
    let expected: Vec<u32> = (0..10).chain(90..100).collect();
    assert_eq!(seen, expected);
    assert_eq!(m.link("x.out", "sink").unwrap().dropped, 80);
}

#[test]
fn drops_on_one_reader_do_not_affect_another() {
    let mut g = Graph::new("two_readers");
    let x = g.input::<u32>("x");
    let lossless = g.collect("lossless", &x);
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let input = g.add_agent("lossy", |p| {
        let input = p.input::<u32>("in");
        (Sink { input, seen: s }, input)
    });
    g.connect_with(
        &x,
        &input,
        Connection::new().capacity(4).policy(Policy::DropNewest),
    );
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..50).unwrap();
    h.run().unwrap();
    assert_eq!(lossless.values(), (0..50).collect::<Vec<_>>());
    assert_eq!(*seen.lock().unwrap(), [0, 1, 2, 3]);
    let m = h.metrics();
    assert_eq!(m.link("x.out", "lossy").unwrap().dropped, 46);
    assert_eq!(m.link("x.out", "lossless").unwrap().dropped, 0);
}

/// A reader that stalls (threaded run): the writer waits, memory stays within the connection's
/// capacity plus one source batch, and once the reader resumes every element arrives in order.
#[test]
fn stalled_reader_bounds_memory_and_loses_nothing() {
    const N: u64 = 200_000;
    const CAP: usize = 1000;
    let gate = Arc::new(AtomicBool::new(false));
    let open = Arc::clone(&gate);
    let mut g = Graph::new("stall");
    let src = g.source_iter("sensor", 0..N);
    let out = Arc::new(std::sync::Mutex::new(Vec::with_capacity(N as usize)));
    let sink_out = Arc::clone(&out);
    let input = g.add_agent("slow", |p| {
        let input = p.input::<u64>("in");
        (
            Gated {
                input,
                gate: open,
                out: sink_out,
            },
            input,
        )
    });
    g.connect_with(&src, &input, Connection::new().capacity(CAP));
    // `slow` blocks in its step until the gate opens: a thread of its own, as the runtime's
    // docs ask of an agent that waits (on the pool it would hold up its worker, which, the
    // only reader of the source, it shares with the source's agent).
    g.place_on_thread("slow", "slow");
    let running = g.start().unwrap();
    // Wait until the connection is full (bounded wait: 30 s at most), then give the writer
    // ample time to overrun if it could.
    let mut full = false;
    for _ in 0..3000 {
        if running
            .metrics()
            .link("sensor.out", "slow")
            .unwrap()
            .in_flight as usize
            == CAP
        {
            full = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(full, "the connection never filled up");
    std::thread::sleep(Duration::from_millis(200));
    let m = running.metrics();
    let link = m.link("sensor.out", "slow").unwrap();
    assert!(link.max_in_flight as usize <= CAP);
    let emitted = m.stream("sensor.out").unwrap().elements;
    let batch = iotstream::SourceOptions::default().max_batch;
    assert!(
        emitted as usize <= CAP + batch,
        "the source emitted {emitted} elements while its only reader was stalled"
    );
    gate.store(true, Ordering::SeqCst);
    let m = running.join().unwrap();
    assert_eq!(*out.lock().unwrap(), (0..N).collect::<Vec<_>>());
    assert_eq!(m.link("sensor.out", "slow").unwrap().dropped, 0);
    assert!(m.link("sensor.out", "slow").unwrap().blocked > Duration::ZERO);
}

/// Takes nothing until the gate opens.
struct Gated {
    input: iotstream::Input<u64>,
    gate: Arc<AtomicBool>,
    out: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl iotstream::Agent for Gated {
    fn step(
        &mut self,
        inputs: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        // Wait (briefly, in a loop) for the gate instead of returning: a step that consumes
        // nothing would not be called again until new data arrives.
        while !self.gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.out
            .lock()
            .unwrap()
            .extend_from_slice(inputs.slice(&self.input));
        inputs.consume_all(&self.input);
        Ok(())
    }
}

/// Drop policies in a threaded run with a slow reader, in process and over a shared-memory
/// ring: everything emitted is either delivered or counted as dropped, what is delivered is in
/// order, and the writer is never counted as blocked: it drops instead of waiting (a
/// drop-oldest ring, which keeps the newest elements for when room comes, was shown blocked
/// 100 % of the time: found by a user's audit).
#[test]
fn drop_policies_account_for_every_element_when_threaded() {
    let cases = [Policy::DropNewest, Policy::DropOldest]
        .into_iter()
        .flat_map(|p| [(p, None), (p, Some(Transport::SharedMemory))]);
    for (policy, transport) in cases {
        const N: u64 = 50_000;
        let mut g = Graph::new("lossy");
        let src = g.source_iter("sensor", 0..N);
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let input = g.add_agent("slow", |p| {
            let input = p.input::<u64>("in");
            (Slow { input, seen: s }, input)
        });
        let conn = Connection::new().capacity(64).policy(policy);
        let conn = match transport {
            Some(t) => conn.transport(t),
            None => conn,
        };
        g.connect_with(&src, &input, conn);
        let m = g.run().unwrap();
        let seen = seen.lock().unwrap();
        let link = m.link("sensor.out", "slow").unwrap();
        let what = format!("{policy:?} over {transport:?}");
        assert_eq!(seen.len() as u64 + link.dropped, N, "{what}");
        assert_eq!(link.elements, seen.len() as u64, "{what}");
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{what}: out of order");
        assert!(link.max_in_flight <= 64, "{what}");
        assert!(link.dropped > 0, "{what}: the reader is slow");
        assert_eq!(
            link.blocked,
            Duration::ZERO,
            "{what}: dropping is not waiting"
        );
    }
}

struct Slow {
    input: iotstream::Input<u64>,
    seen: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl iotstream::Agent for Slow {
    fn step(
        &mut self,
        inputs: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        std::thread::sleep(Duration::from_micros(200));
        self.seen
            .lock()
            .unwrap()
            .extend_from_slice(inputs.slice(&self.input));
        inputs.consume_all(&self.input);
        Ok(())
    }
}

/// A connection of elements that own heap memory holds what its byte bound says, not its
/// element capacity of them: a `Vec<u8>` counts its bytes, not the 24 of `size_of` (before:
/// 100 vectors of 64 KiB, 6.4 MB, in flight under a 1 MiB bound).
#[test]
fn heap_owning_elements_in_flight_are_bounded_by_their_bytes() {
    let mut g = Graph::new("images");
    let x = g.input::<Vec<u8>>("x");
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = Arc::clone(&seen);
    let input = g.add_agent("sink", |p| {
        let input = p.input::<Vec<u8>>("in");
        (Lengths { input, seen: s }, input)
    });
    g.connect_with(&x, &input, Connection::new().capacity_bytes(1 << 20));
    let mut h = Harness::new(g).unwrap();
    for i in 0..100u8 {
        h.push(&x, vec![vec![i; 64 << 10]]).unwrap();
    }
    h.run().unwrap();
    h.finish().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen, (0..100u8).map(|i| (i, 64 << 10)).collect::<Vec<_>>());
    let link = h.metrics().link("x.out", "sink").unwrap().clone();
    // Each counts 64 KiB and 24 bytes: 15 fit in 1 MiB.
    assert!(
        (1..=15).contains(&link.max_in_flight),
        "{} vectors of 64 KiB in flight under a 1 MiB bound",
        link.max_in_flight
    );
    assert_eq!(link.elements, 100);
}

struct Lengths {
    input: iotstream::Input<Vec<u8>>,
    seen: Arc<std::sync::Mutex<Vec<(u8, usize)>>>,
}

impl iotstream::Agent for Lengths {
    fn step(
        &mut self,
        inputs: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        let mut seen = self.seen.lock().unwrap();
        seen.extend(inputs.slice(&self.input).iter().map(|v| (v[0], v.len())));
        inputs.consume_all(&self.input);
        Ok(())
    }
}

/// The same bound in a threaded run, for a type declared with `Graph::heap_bytes`, from a
/// source faster than its reader; and a window that needs more elements than the bound holds
/// still gets them (the byte bound yields to what the reader needs to make progress).
#[test]
fn declared_heap_bytes_bound_a_threaded_link_and_yield_to_a_window_s_need() {
    #[derive(Clone, serde::Serialize, serde::Deserialize)]
    struct Shot {
        n: u32,
        jpeg: Vec<u8>,
    }
    let mut g = Graph::new("shots");
    g.heap_bytes::<Shot>(|s| s.jpeg.capacity());
    g.set_default_capacity_bytes(1 << 20);
    let shots = g.source_iter(
        "camera",
        (0..400u32).map(|n| Shot {
            n,
            jpeg: vec![n as u8; 32 << 10],
        }),
    );
    let slow = g.map("slow", &shots, |s: &Shot| {
        std::thread::sleep(Duration::from_micros(200));
        s.n
    });
    let seen = g.collect("seen", &slow);
    // 40 shots of 32 KiB a window: 1.25 MiB, more than the bound.
    let windows = g.map_window("window", &shots, 40, 40, |w: &[Shot]| w[0].n);
    let firsts = g.collect("firsts", &windows);
    let m = g.run().unwrap();
    assert_eq!(seen.take(), (0..400).collect::<Vec<_>>());
    assert_eq!(firsts.take(), (0..10).map(|i| i * 40).collect::<Vec<_>>());
    let link = m.link("camera.out", "slow").unwrap();
    // Each counts 32 KiB and its `size_of`: 31 fit in 1 MiB.
    assert!(
        (1..=31).contains(&link.max_in_flight),
        "{} shots of 32 KiB in flight under a 1 MiB bound",
        link.max_in_flight
    );
    let window = m.link("camera.out", "window").unwrap();
    assert!(window.max_in_flight >= 40, "the window got its 40");
}

/// Elements alive in the process, and the most ever alive at once, one tally per test that
/// counts (`K`): tests run in parallel.
static ALIVE: [std::sync::atomic::AtomicUsize; 2] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 2];
static PEAK: [std::sync::atomic::AtomicUsize; 2] =
    [const { std::sync::atomic::AtomicUsize::new(0) }; 2];

/// A camera frame or a file's record that counts how many of it are alive, in tally `K`.
#[derive(serde::Serialize, serde::Deserialize)]
struct Counted<const K: usize> {
    n: u32,
    bytes: Vec<u8>,
}

impl<const K: usize> Counted<K> {
    fn new(n: u32, len: usize) -> Self {
        let alive = ALIVE[K].fetch_add(1, Ordering::SeqCst) + 1;
        PEAK[K].fetch_max(alive, Ordering::SeqCst);
        Counted {
            n,
            bytes: vec![n as u8; len],
        }
    }
}

impl<const K: usize> Clone for Counted<K> {
    fn clone(&self) -> Self {
        let mut c = Counted::new(self.n, 0);
        c.bytes.clone_from(&self.bytes);
        c
    }
}

impl<const K: usize> Drop for Counted<K> {
    fn drop(&mut self) {
        ALIVE[K].fetch_sub(1, Ordering::SeqCst);
    }
}

type Frame = Counted<0>;
type Record = Counted<1>;

/// What a source of large heap-owning elements holds at once follows the byte bound of the
/// connection it feeds: its batches, what waits between its thread and its agent, and the
/// link (before: the source's first call made all 400 frames of 64 KiB, 26 MB, as one batch
/// of its 8,192 elements, under a 1 MiB bound).
#[test]
fn a_source_of_large_elements_holds_what_the_byte_bound_says() {
    let mut g = Graph::new("frames");
    g.heap_bytes::<Frame>(|f| f.bytes.capacity());
    g.set_default_capacity_bytes(1 << 20);
    let frames = g.source_iter("camera", (0..400u32).map(|n| Frame::new(n, 64 << 10)));
    let seen = g.map("slow", &frames, |f: &Frame| {
        std::thread::sleep(Duration::from_micros(100));
        f.n
    });
    let out = g.collect("out", &seen);
    g.run().unwrap();
    assert_eq!(out.take(), (0..400).collect::<Vec<_>>());
    assert_eq!(ALIVE[0].load(Ordering::SeqCst), 0);
    // The link's 1 MiB (15 frames; the reader gathers what arrived meanwhile by moving it,
    // not by cloning), the source agent's batch of 256 KiB (3) and what it could not send
    // yet, what waits for it (four such batches and one hand-over past them: 15) and the
    // batch being made (3): 39 seen, 42 before batches were moved into the gathered slice.
    let peak = PEAK[0].load(Ordering::SeqCst);
    assert!(
        peak <= 42,
        "{peak} frames of 64 KiB alive at once under a 1 MiB bound"
    );
}

/// Runs `f` on a thread of its own; panics if it does not return within `secs` (a hang).
fn within<R: Send + 'static>(secs: u64, f: impl FnOnce() -> R + Send + 'static) -> R {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("did not return within {secs} s: a hang"))
}

/// A harness whose input holds as much as it may while the graph takes no more (a zip fed
/// one side only) says so: before, `push` ran the graph again and again, for ever.
#[test]
fn a_harness_push_the_graph_takes_no_more_of_is_a_stall_not_a_hang() {
    let err = within(60, || {
        let mut g = Graph::new("one_side");
        let a = g.input::<u64>("a");
        let b = g.input::<u64>("b");
        let z = g.zip("z", &a, &b);
        g.for_each("sink", &z, |_: &(u64, u64)| {});
        let mut h = Harness::new(g).unwrap();
        for v in 0..200_000u64 {
            if let Err(e) = h.push(&a, [v]) {
                return e.to_string();
            }
        }
        "every push went in".to_string()
    });
    assert!(
        err.contains("input 'a' holds as much as it may") && err.contains("a.out -> z.in0"),
        "{err}"
    );
}

/// A zip that holds one input while it waits for the other (here a lag of 100 strings of
/// 64 KiB, `skip`'s pattern) needs more than the default byte bound: the stall says so and
/// names the bound and what to raise, and with a larger bound the same graph runs.
#[test]
fn a_zip_held_up_by_the_byte_bound_says_so_and_runs_with_a_larger_one() {
    let run = |bytes: Option<usize>| {
        let mut g = Graph::new("lag");
        if let Some(b) = bytes {
            g.set_default_capacity_bytes(b);
        }
        let s = g.source_iter(
            "s",
            (0..300u32).map(|i| format!("{i:08}{}", "x".repeat(64 << 10))),
        );
        let later = g.skip("later", &s, 100);
        let z = g.zip("z", &s, &later);
        let ids = g.map("ids", &z, |(x, y): &(String, String)| {
            (
                x[..8].parse::<u32>().unwrap(),
                y[..8].parse::<u32>().unwrap(),
            )
        });
        let out = g.collect("out", &ids);
        g.run().map(|_| out.values()).map_err(|e| e.to_string())
    };
    let err = run(None).unwrap_err();
    assert!(
        err.contains("s.out -> z.in0")
            && err.contains("byte bound of 1048576")
            && err.contains("Connection::capacity_bytes"),
        "{err}"
    );
    let pairs = run(Some(16 << 20)).unwrap();
    assert_eq!(pairs, (0..200u32).map(|i| (i, i + 100)).collect::<Vec<_>>());
}

/// A source whose first element is small (a file's header) does not make thousands of the
/// large ones at its second call: each call makes at most twice the last (before: 199 of 200
/// records of 256 KiB alive at once under a 1 MiB bound).
#[test]
fn a_source_whose_first_element_is_small_still_keeps_to_the_byte_bound() {
    let mut g = Graph::new("header");
    g.heap_bytes::<Record>(|r| r.bytes.capacity());
    g.set_default_capacity_bytes(1 << 20);
    let records = g.source_iter(
        "file",
        (0..200u32).map(|n| Record::new(n, if n == 0 { 0 } else { 256 << 10 })),
    );
    let slow = g.map("slow", &records, |r: &Record| {
        std::thread::sleep(Duration::from_micros(200));
        r.n
    });
    let out = g.collect("out", &slow);
    g.run().unwrap();
    assert_eq!(out.take(), (0..200).collect::<Vec<_>>());
    let peak = PEAK[1].load(Ordering::SeqCst);
    assert!(
        peak <= 24,
        "{peak} records of 256 KiB alive at once under a 1 MiB bound"
    );
}

/// A drop-oldest link of elements that own heap memory holds its byte bound in what waits
/// too, dropping the oldest (before: 2,000 strings of 64 KiB, 128 MB, held under 1 MiB).
#[test]
fn a_drop_oldest_link_of_strings_keeps_to_its_byte_bound() {
    let mut g = Graph::new("drop");
    let x = g.input::<String>("x");
    let input = g.add_agent("sink", |p| {
        let input = p.input::<String>("in");
        (Never { input }, input)
    });
    g.connect_with(
        &x,
        &input,
        Connection::new()
            .policy(Policy::DropOldest)
            .capacity_bytes(1 << 20),
    );
    let mut h = Harness::new(g).unwrap();
    for i in 0..2000u32 {
        h.push(&x, [format!("{i:08}{}", "d".repeat(64 << 10))])
            .unwrap();
        h.run().unwrap();
    }
    let link = h.metrics().link("x.out", "sink").unwrap().clone();
    let held = 2000 - link.dropped;
    // 15 in flight, 15 waiting.
    assert!(
        held <= 32,
        "{held} strings of 64 KiB held by a drop-oldest link bounded to 1 MiB"
    );
    assert!(link.dropped > 0);
}

/// Never consumes anything.
struct Never {
    input: iotstream::Input<String>,
}

impl iotstream::Agent for Never {
    fn step(
        &mut self,
        _: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        let _ = &self.input;
        Ok(())
    }
}
