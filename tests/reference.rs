//! Reference cases C1–C4, C12 and C13 of `iotpy-semantics.md`, observed on IoTPy, reproduced
//! with the deterministic harness. ("run" = run until nothing is left to do.)

use std::sync::{Arc, Mutex};

use iotstream::{Connection, Graph, Harness};

#[test]
fn c1_map_doubles_across_two_runs() {
    let mut g = Graph::new("c1");
    let x = g.input::<i64>("x");
    let y = g.map("double", &x, |v: &i64| 2 * v);
    let out = g.collect("out", &y);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [0, 1, 2]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [0, 2, 4]);
    h.push(&x, [10, 20, 30]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [0, 2, 4, 20, 40, 60]);
    h.finish().unwrap();
}

#[test]
fn c2_filter_keeps_small_values() {
    let mut g = Graph::new("c2");
    let x = g.input::<i64>("x");
    let y = g.filter("small", &x, |v: &i64| *v < 3);
    let out = g.collect("out", &y);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..=4).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [0, 1, 2]);
}

#[test]
fn c3_map_with_state_running_sum() {
    let mut g = Graph::new("c3");
    let x = g.input::<i64>("x");
    let y = g.map_with_state("sum", &x, 0, |v: &i64, s| (s + v, s + v));
    let out = g.collect("out", &y);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..=9).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [0, 1, 3, 6, 10, 15, 21, 28, 36, 45]);
}

#[test]
fn c3_state_carries_across_batches() {
    let mut g = Graph::new("c3b");
    let x = g.input::<i64>("x");
    let y = g.map_with_state("sum", &x, 0, |v: &i64, s| (s + v, s + v));
    let out = g.collect("out", &y);
    let mut h = Harness::new(g).unwrap();
    for v in 0..=9 {
        h.push(&x, [v]).unwrap();
        h.run().unwrap();
    }
    assert_eq!(out.values(), [0, 1, 3, 6, 10, 15, 21, 28, 36, 45]);
}

#[test]
fn c4_multi_value() {
    let mut g = Graph::new("c4");
    let x = g.input::<i64>("x");
    let y = g.flat_map("and_ten", &x, |v: &i64| [*v, 10 * v]);
    let out = g.collect("out", &y);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1, 2, 3]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [1, 10, 2, 20, 3, 30]);
}

#[test]
fn no_value_emits_nothing() {
    let mut g = Graph::new("no_value");
    let x = g.input::<i64>("x");
    let y = g.filter_map("odd_squares", &x, |v: &i64| (v % 2 == 1).then_some(v * v));
    let out = g.collect("out", &y);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..6).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [1, 9, 25]);
}

#[test]
fn c12_sink_with_state_and_collector() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let mut g = Graph::new("c12");
    let x = g.input::<char>("x");
    g.for_each_with_state("count", &x, 0usize, move |v: &char, n| {
        log.lock().unwrap().push((n, *v));
        n + 1
    });
    let out = g.collect("collect", &x);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, ['a', 'b', 'c']).unwrap();
    h.run().unwrap();
    assert_eq!(*seen.lock().unwrap(), [(0, 'a'), (1, 'b'), (2, 'c')]);
    assert_eq!(out.values(), ['a', 'b', 'c']);
}

/// C13: stream memory 16 elements, map → sink, pushed 5 at a time: all 40 arrive in order and
/// never more than 16 are held on a connection.
#[test]
fn c13_bounded_memory_loses_nothing() {
    for run_between_pushes in [true, false] {
        let mut g = Graph::new("c13");
        g.set_default_capacity(16);
        let x = g.input::<u32>("x");
        let y = g.map("plus_one", &x, |v: &u32| v + 1);
        let out = g.collect("sink", &y);
        let mut h = Harness::new(g).unwrap();
        for chunk in (0..40u32).collect::<Vec<_>>().chunks(5) {
            h.push(&x, chunk.to_vec()).unwrap();
            if run_between_pushes {
                h.run().unwrap();
            }
        }
        h.run().unwrap();
        assert_eq!(out.values(), (1..=40).collect::<Vec<_>>());
        let m = h.metrics();
        for link in &m.links {
            assert!(
                link.max_in_flight <= 16,
                "{} -> {} held {} elements",
                link.stream,
                link.reader,
                link.max_in_flight
            );
            assert_eq!(link.elements, 40);
            assert_eq!(link.dropped, 0);
        }
        h.finish().unwrap();
    }
}

/// C13 with an explicit per-connection capacity smaller than a batch: batches are split.
#[test]
fn c13_capacity_smaller_than_batch_splits_batches() {
    let mut g = Graph::new("c13_split");
    let x = g.input::<u32>("x");
    let (input, out) = g.add_agent("copy", |p| {
        let input = p.input::<u32>("in");
        let out = p.output::<u32>("out");
        (Copy { input, out }, (input, out))
    });
    g.connect_with(&x, &input, Connection::new().capacity(3));
    let collected = g.collect("sink", &out);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..40).unwrap();
    h.run().unwrap();
    assert_eq!(collected.values(), (0..40).collect::<Vec<_>>());
    let m = h.metrics();
    let link = m.link("x.out", "copy").unwrap();
    assert_eq!(link.max_in_flight, 3);
    assert_eq!(link.batches, 14); // ceil(40 / 3)
}

struct Copy {
    input: iotstream::Input<u32>,
    out: iotstream::Stream<u32>,
}

impl iotstream::Agent for Copy {
    fn step(
        &mut self,
        inputs: &mut iotstream::Inputs,
        outputs: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        outputs
            .vec(&self.out)
            .extend_from_slice(inputs.slice(&self.input));
        inputs.consume_all(&self.input);
        Ok(())
    }
}
