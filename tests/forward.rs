//! `Outputs::forward`: a stage that keeps its element type passes its input's batches on and
//! changes them in place, without copying a batch that only it holds; a batch another reader
//! still holds is copied, never changed under it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use iotstream::{
    Agent, AgentError, Connection, Graph, Input, Inputs, Outputs, SourceOptions, Stream, Transport,
};

/// Doubles in place; counts the steps whose output is the input's own memory.
struct Double {
    input: Input<u64>,
    out: Stream<u64>,
    moved: Arc<AtomicU64>,
    copied: Arc<AtomicU64>,
}

impl Agent for Double {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        let shown = i.slice(&self.input);
        if shown.is_empty() {
            return Ok(());
        }
        let (ptr, n) = (shown.as_ptr(), shown.len());
        let out = o.forward(&self.out, i, &self.input);
        assert_eq!(out.len(), n, "forward returns what the input showed");
        if out.as_ptr() == ptr {
            self.moved.fetch_add(1, Relaxed);
        } else {
            self.copied.fetch_add(1, Relaxed);
        }
        out.iter_mut().for_each(|v| *v *= 2);
        assert!(
            i.slice(&self.input).is_empty(),
            "forward consumes what it moved"
        );
        Ok(())
    }
}

/// source (batches of 16,384) → double → collect, and with `shared` a second reader of the
/// source. Returns what double passed on, and how many of its steps moved or copied.
fn run(n: u64, shared: bool) -> (Vec<u64>, Vec<u64>, u64, u64) {
    let mut g = Graph::new(if shared { "forward_shared" } else { "forward" });
    let s = g.source_iter_with(
        "numbers",
        0..n,
        SourceOptions {
            // 128 KiB a batch: enough to be moved rather than copied.
            max_batch: 16_384,
            interval: None,
        },
    );
    let moved = Arc::new(AtomicU64::new(0));
    let copied = Arc::new(AtomicU64::new(0));
    let (m, c) = (Arc::clone(&moved), Arc::clone(&copied));
    let (input, out) = g.add_agent("double", |p| {
        let input = p.input("in");
        let out = p.output("out");
        let agent = Double {
            input,
            out,
            moved: m,
            copied: c,
        };
        (agent, (input, out))
    });
    g.connect(&s, &input);
    let doubled = g.collect("doubled", &out);
    let raw = shared.then(|| g.collect("raw", &s));
    g.run().unwrap();
    (
        doubled.values(),
        raw.map(|r| r.values()).unwrap_or_default(),
        moved.load(Relaxed),
        copied.load(Relaxed),
    )
}

#[test]
fn a_batch_only_the_stage_holds_becomes_its_output_without_a_copy() {
    // Whole batches only: a last, smaller one would be copied.
    let n = 6 * 16_384;
    let (doubled, _, moved, copied) = run(n, false);
    assert_eq!(doubled, (0..n).map(|v| v * 2).collect::<Vec<_>>());
    assert!(moved > 0, "no step moved its batch ({copied} copied)");
    assert_eq!(
        copied, 0,
        "{moved} steps moved their batch, {copied} copied"
    );
}

#[test]
fn a_batch_another_reader_reads_too_is_never_changed_under_it() {
    let n = 100_000;
    // A step may still move a batch the other reader had let go of already.
    let (doubled, raw, _moved, copied) = run(n, true);
    assert_eq!(doubled, (0..n).map(|v| v * 2).collect::<Vec<_>>());
    assert_eq!(
        raw,
        (0..n).collect::<Vec<_>>(),
        "the other reader's batch untouched"
    );
    // Which steps copy depends on whether the other reader still held the batch then (it is
    // on another thread): what must hold is that it never sees the change.
    eprintln!("copied {copied}");
}

/// `f` panics on element `at` of a batch of `n`: readers get the elements mapped before it and
/// nothing unmapped, whether the batch was moved (`n` large) or copied. With `ring`, the reader
/// is behind a shared-memory ring (forced in this process), where each element is changed on
/// its way into the ring.
fn panics_at(n: u64, at: u64, ring: bool) -> Vec<u64> {
    let app = if ring {
        "forward_panics_ring"
    } else {
        "forward_panics"
    };
    let mut g = Graph::new(app);
    let s = g.source_iter_with(
        "numbers",
        0..n,
        SourceOptions {
            max_batch: n as usize,
            interval: None,
        },
    );
    let doubled = g.map_in_place("double", &s, move |v: &mut u64| {
        if *v == at {
            panic!("no {at}");
        }
        *v *= 2;
    });
    let got = keep(&mut g, &doubled, Connection::new(), ring);
    let err = g.run().unwrap_err();
    assert_eq!(err.agent(), Some("double"), "{err}");
    kept(got)
}

/// A `Keep` agent reading `stream` over `conn`, through a shared-memory ring with `ring`.
fn keep(
    g: &mut Graph,
    stream: &Stream<u64>,
    conn: Connection,
    ring: bool,
) -> Arc<std::sync::Mutex<Vec<u64>>> {
    let (input, got) = g.add_agent("out", |p| {
        let input = p.input::<u64>("in");
        let got = Arc::new(std::sync::Mutex::new(Vec::new()));
        let keep = Keep {
            input,
            got: Arc::clone(&got),
        };
        (keep, (input, got))
    });
    let conn = if ring {
        conn.transport(Transport::SharedMemory)
    } else {
        conn
    };
    g.connect_with(stream, &input, conn);
    got
}

/// What a `Keep` agent kept, once its run is over.
fn kept(got: Arc<std::sync::Mutex<Vec<u64>>>) -> Vec<u64> {
    Arc::try_unwrap(got)
        .expect("the run is over")
        .into_inner()
        .unwrap()
}

/// Keeps what it reads.
struct Keep {
    input: Input<u64>,
    got: Arc<std::sync::Mutex<Vec<u64>>>,
}

impl Agent for Keep {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        self.got
            .lock()
            .unwrap()
            .extend_from_slice(i.slice(&self.input));
        i.consume_all(&self.input);
        Ok(())
    }
}

#[test]
fn a_panicking_map_in_place_sends_nothing_it_did_not_change() {
    for (n, at, ring) in [
        (10, 5, false),
        (6 * 16_384, 70_000, false),
        (10, 5, true),
        (6 * 16_384, 70_000, true),
    ] {
        let got = panics_at(n, at, ring);
        assert!(
            got.iter().zip(0..).all(|(&v, k)| v == 2 * k) && got.len() as u64 <= at,
            "n {n}, panic at {at}, ring {ring}: {} elements, the last {:?}",
            got.len(),
            got.last()
        );
    }
}

/// A map in place whose only reader is across a ring (forced in this process; a small ring
/// that fills, so that the elements go both ways: made in the ring, and stashed behind it)
/// delivers every element changed once, in order, as in one process.
#[test]
fn a_map_in_place_in_front_of_a_ring_changes_every_element_once() {
    let run = |ring: bool| {
        let mut g = Graph::new(if ring {
            "forward_ring"
        } else {
            "forward_local"
        });
        let s = g.source_iter_with(
            "numbers",
            0..300_000u64,
            SourceOptions {
                max_batch: 5_000,
                interval: None,
            },
        );
        let tripled = g.map_in_place("triple", &s, |v: &mut u64| *v = *v * 3 + 1);
        let got = keep(&mut g, &tripled, Connection::new().capacity(1_000), ring);
        g.run().unwrap();
        kept(got)
    };
    let expected: Vec<u64> = (0..300_000u64).map(|v| v * 3 + 1).collect();
    assert_eq!(run(false), expected);
    assert_eq!(run(true), expected);
}
