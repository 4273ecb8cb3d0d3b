//! A map in place in front of a shared-memory ring (forced in this process): small elements
//! are changed on their way into the ring (`Outputs::map_from`), and nothing else changes:
//! marks stay where they were, the connection's credit holds, and every element arrives as
//! it would in one process.

use std::sync::{Arc, Mutex};

use iotstream::{
    Agent, AgentError, Connection, Element, Graph, Input, Inputs, Mark, Outputs, SourceOptions,
    Stream, Transport,
};

/// Passes elements on, with a watermark `v` right after each element `v` with `v % 97 == 96`.
struct Stamp {
    input: Input<u64>,
    out: Stream<u64>,
}

impl Agent for Stamp {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        for &v in i.slice(&self.input) {
            o.push(&self.out, v);
            if v % 97 == 96 {
                o.mark(&self.out, Mark::Watermark(v));
            }
        }
        i.consume_all(&self.input);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Event {
    Data(u64),
    Mark(Mark),
}

/// Records elements and marks in the order it is shown them.
struct Record {
    input: Input<u64>,
    got: Arc<Mutex<Vec<Event>>>,
}

impl Agent for Record {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let data = i.slice(&self.input);
        let mut got = self.got.lock().unwrap();
        let mut at = 0;
        for (k, mark) in i.marks(&self.input) {
            got.extend(data[at..k].iter().map(|&v| Event::Data(v)));
            got.push(Event::Mark(mark));
            at = k;
        }
        got.extend(data[at..].iter().map(|&v| Event::Data(v)));
        drop(got);
        i.consume_all(&self.input);
        Ok(())
    }
}

/// numbers → stamp (watermarks) → map in place → record, the last hop over a ring with `ring`.
fn stamped(app: &str, ring: bool) -> Vec<Event> {
    const N: u64 = 60_000;
    let mut g = Graph::new(app);
    let s = g.source_iter_with(
        "numbers",
        0..N,
        SourceOptions {
            max_batch: 3_000,
            interval: None,
        },
    );
    let (input, stamped) = g.add_agent("stamp", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        p.manages_watermarks();
        (Stamp { input, out }, (input, out))
    });
    g.connect(&s, &input);
    let mapped = g.map_in_place("shift", &stamped, |v: &mut u64| *v += 1_000_000);
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&got);
    let input = g.add_agent("record", |p| {
        let input = p.input::<u64>("in");
        p.manages_watermarks();
        (Record { input, got: kept }, input)
    });
    g.connect_with(&mapped, &input, over(Connection::new().capacity(150), ring));
    g.run().unwrap();
    Arc::try_unwrap(got).unwrap().into_inner().unwrap()
}

/// `conn`, through a shared-memory ring with `ring`.
fn over(conn: Connection, ring: bool) -> Connection {
    if ring {
        conn.transport(Transport::SharedMemory)
    } else {
        conn
    }
}

#[test]
fn watermarks_stay_after_the_elements_made_in_the_ring_before_them() {
    for ring in [false, true] {
        let app = if ring {
            "make_through_marks_ring"
        } else {
            "make_through_marks_local"
        };
        let events = stamped(app, ring);
        let data: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Event::Data(v) => Some(*v),
                Event::Mark(_) => None,
            })
            .collect();
        let expected: Vec<u64> = (0..60_000u64).map(|v| v + 1_000_000).collect();
        assert_eq!(data, expected, "ring {ring}");
        let (mut before, mut marks) = (0u64, 0);
        for e in &events {
            match e {
                Event::Data(_) => before += 1,
                Event::Mark(Mark::Watermark(w)) => {
                    assert_eq!(before, w + 1, "ring {ring}: watermark {w} after {before}");
                    marks += 1;
                }
                Event::Mark(_) => {}
            }
        }
        assert!(marks > 100, "ring {ring}: {marks} watermarks seen");
    }
}

/// A map in place in front of a ring keeps at most the connection's capacity (elements, or
/// what its byte bound allows) in flight, as any writer into a ring does, and counts each
/// element once on the stream and on the link.
#[test]
fn a_map_in_place_in_front_of_a_ring_keeps_within_the_credit() {
    const N: u64 = 5_000;
    for (capacity, bytes) in [(1, None), (7, None), (64, None), (1_000, Some(256))] {
        let mut g = Graph::new(&format!("make_through_credit_{capacity}"));
        let s = g.source_iter_with(
            "numbers",
            0..N,
            SourceOptions {
                max_batch: 500,
                interval: None,
            },
        );
        let mapped = g.map_in_place("shift", &s, |v: &mut u64| *v = *v * 2 + 1);
        let mut conn = over(Connection::new().capacity(capacity), true);
        if let Some(b) = bytes {
            conn = conn.capacity_bytes(b);
        }
        let got = keep_all(&mut g, "slow", &mapped, conn, true);
        let metrics = g.run().unwrap();
        let got = Arc::try_unwrap(got).unwrap().into_inner().unwrap();
        let expected: Vec<u64> = (0..N).map(|v| v * 2 + 1).collect();
        assert_eq!(got, expected, "capacity {capacity}");
        let link = metrics.link("shift.out", "slow").expect("the link");
        assert_eq!(link.elements, N, "capacity {capacity}");
        assert_eq!(link.released_early, 0);
        assert!(
            link.capacity <= capacity,
            "{} for {capacity}",
            link.capacity
        );
        assert!(
            link.max_in_flight > 0 && link.max_in_flight <= link.capacity as u64,
            "capacity {}: {} in flight",
            link.capacity,
            link.max_in_flight
        );
        let stream = metrics.stream("shift.out").expect("the stream");
        assert_eq!(stream.elements, N);
    }
}

#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    bytemuck::Pod,
    bytemuck::Zeroable,
    serde::Serialize,
    serde::Deserialize,
)]
#[repr(C)]
struct Pair {
    a: u16,
    b: u16,
    c: u32,
}

/// Keeps what it reads, of any element type; with `slow`, sleeps every eighth step (so that
/// its writer runs into the credit).
struct KeepAll<T> {
    input: Input<T>,
    got: Arc<Mutex<Vec<T>>>,
    slow: bool,
    steps: u64,
}

impl<T: Element> Agent for KeepAll<T> {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        self.steps += 1;
        if self.slow && self.steps % 8 == 0 {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
        self.got
            .lock()
            .unwrap()
            .extend_from_slice(i.slice(&self.input));
        i.consume_all(&self.input);
        Ok(())
    }
}

/// A `KeepAll` agent named `name` reading `stream` over `conn`; what it keeps.
fn keep_all<T: Element>(
    g: &mut Graph,
    name: &str,
    stream: &Stream<T>,
    conn: Connection,
    slow: bool,
) -> Arc<Mutex<Vec<T>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let kept = Arc::clone(&got);
    let input = g.add_agent(name, |p| {
        let input = p.input::<T>("in");
        let keep = KeepAll {
            input,
            got: kept,
            slow,
            steps: 0,
        };
        (keep, input)
    });
    g.connect_with(stream, &input, conn);
    got
}

/// items → map in place `f` → keep, the last hop over a ring with `ring`.
fn through<T: Element + Copy>(app: &str, items: Vec<T>, f: fn(&mut T), ring: bool) -> Vec<T> {
    let mut g = Graph::new(app);
    g.plain_data::<Pair>();
    let s = g.source_iter_with(
        "items",
        items,
        SourceOptions {
            max_batch: 3_333,
            interval: None,
        },
    );
    let mapped = g.map_in_place("change", &s, f);
    let conn = over(Connection::new().capacity(2_000), ring);
    let got = keep_all(&mut g, "keep", &mapped, conn, false);
    g.run().unwrap();
    std::mem::take(&mut *got.lock().unwrap())
}

/// Elements of 1 byte and a declared plain struct of 8 bytes (several fields) are changed on
/// their way into a ring exactly as in one process.
#[test]
fn small_and_declared_plain_elements_are_made_in_a_ring_as_changed_in_place() {
    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let f: fn(&mut u8) = |v| *v = v.wrapping_mul(3).wrapping_add(1);
    let local = through("make_through_u8_local", bytes.clone(), f, false);
    assert_eq!(local.len(), 100_000);
    assert_eq!(through("make_through_u8_ring", bytes, f, true), local);

    let pairs: Vec<Pair> = (0..50_000u32)
        .map(|i| Pair {
            a: i as u16,
            b: (i >> 16) as u16,
            c: i,
        })
        .collect();
    let f: fn(&mut Pair) = |p| {
        std::mem::swap(&mut p.a, &mut p.b);
        p.c = p.c.wrapping_mul(7);
    };
    let local = through("make_through_pair_local", pairs.clone(), f, false);
    assert_eq!(local.len(), 50_000);
    assert_eq!(through("make_through_pair_ring", pairs, f, true), local);
}

/// numbers → `map` (`u64` to `u32`, a type of its own) → keep, the last hop over a ring with
/// `ring`; a map that panics at `panic_at`. What was kept, and whether the run failed.
fn mapped(app: &str, ring: bool, panic_at: Option<u64>) -> (Vec<u32>, bool) {
    let mut g = Graph::new(app);
    let s = g.source_iter_with(
        "numbers",
        0..200_000u64,
        SourceOptions {
            max_batch: 7_000,
            interval: None,
        },
    );
    let m = g.map("low", &s, move |v: &u64| {
        assert!(Some(*v) != panic_at, "no {v}");
        (*v as u32).wrapping_mul(2_654_435_761)
    });
    let conn = over(Connection::new().capacity(3_000), ring);
    let got = keep_all(&mut g, "keep", &m, conn, false);
    let failed = match g.run() {
        Ok(_) => false,
        Err(e) => {
            assert_eq!(e.agent(), Some("low"), "{e}");
            true
        }
    };
    let got = std::mem::take(&mut *got.lock().unwrap());
    (got, failed)
}

/// `Graph::map` makes its small results straight in the ring of its only reader: they arrive
/// as in one process; a function that panics fails the run, and what arrived before is a
/// prefix of the results, none of them past the panic.
#[test]
fn a_map_in_front_of_a_ring_makes_its_results_there_as_in_one_process() {
    let expected: Vec<u32> = (0..200_000u64)
        .map(|v| (v as u32).wrapping_mul(2_654_435_761))
        .collect();
    assert_eq!(
        mapped("make_through_map_local", false, None),
        (expected.clone(), false)
    );
    assert_eq!(
        mapped("make_through_map_ring", true, None),
        (expected.clone(), false)
    );
    for ring in [false, true] {
        let app = if ring {
            "make_through_map_panics_ring"
        } else {
            "make_through_map_panics_local"
        };
        let (got, failed) = mapped(app, ring, Some(150_000));
        assert!(failed, "ring {ring}: the panic fails the run");
        assert!(got.len() <= 150_000, "ring {ring}: {} results", got.len());
        assert_eq!(got, expected[..got.len()], "ring {ring}");
    }
}
