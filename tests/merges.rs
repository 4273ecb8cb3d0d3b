//! Merge and split operators: IoTPy's reference cases C6–C9 and C11 (see
//! `iotpy-semantics.md`), errors, and end of stream. "run" is `Harness::run`.

use iotstream::{Error, Graph, Harness};
use serde::{Deserialize, Serialize};

/// IoTPy's C7 mixes ints and chars; one Rust element type holds both.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum Val {
    Int(i64),
    Char(char),
}

fn agent_error(err: &Error) -> (&str, String) {
    match err {
        Error::Agent { agent, cause } => (agent.as_str(), cause.clone()),
        other => panic!("expected an agent error, got {other:?}"),
    }
}

fn graph_problems(result: Result<Harness, Error>) -> Vec<String> {
    match result {
        Err(Error::Graph { problems, .. }) => problems,
        Err(other) => panic!("expected a graph error, got {other:?}"),
        Ok(_) => panic!("expected a graph error, the graph was accepted"),
    }
}

// ---------------------------------------------------------------------------------------------
// Reference cases

#[test]
fn c6_zip_sum_waits_for_the_shorter_input() {
    let mut g = Graph::new("c6");
    let x = g.input::<i64>("x");
    let u = g.input::<i64>("u");
    let sum = g.zip_map("sum", &[x, u], |r: &[&i64]| r[0] + r[1]);
    let out = g.collect("out", &sum);
    let mut h = Harness::new(g).unwrap();

    h.push(&x, [0, 1, 2]).unwrap();
    h.push(&u, [10, 15, 18]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [10, 16, 20]);

    h.push(&u, [37]).unwrap();
    h.push(&x, [3, 4]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [10, 16, 20, 40]);

    h.push(&u, [96, 95]).unwrap();
    h.run().unwrap();
    // x's 4 waited for u's 96; u's 95 now waits for x.
    assert_eq!(out.values(), [10, 16, 20, 40, 100]);
    h.finish().unwrap();
    assert_eq!(out.values(), [10, 16, 20, 40, 100]);
}

#[test]
fn c6_with_zip_then_map() {
    let mut g = Graph::new("c6_pairs");
    let x = g.input::<i64>("x");
    let u = g.input::<i64>("u");
    let pairs = g.zip("pairs", &x, &u);
    let sum = g.map("sum", &pairs, |(a, b): &(i64, i64)| a + b);
    let out = g.collect("out", &sum);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [0, 1, 2]).unwrap();
    h.push(&u, [10, 15, 18]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [10, 16, 20]);
    h.push(&u, [37]).unwrap();
    h.push(&x, [3, 4]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [10, 16, 20, 40]);
    h.push(&u, [96, 95]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [10, 16, 20, 40, 100]);
    h.finish().unwrap();
}

#[test]
fn zip3_triples() {
    let mut g = Graph::new("zip3");
    let a = g.input::<u8>("a");
    let b = g.input::<char>("b");
    let c = g.input::<String>("c");
    let abc = g.zip3("abc", &a, &b, &c);
    let out = g.collect("out", &abc);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [1, 2, 3]).unwrap();
    h.push(&b, ['x', 'y']).unwrap();
    h.run().unwrap();
    assert!(out.is_empty());
    h.push(&c, ["p".to_string(), "q".into(), "r".into()])
        .unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [(1, 'x', "p".to_string()), (2, 'y', "q".into())]
    );
    h.finish().unwrap();
}

#[test]
fn c7_mix_follows_arrival() {
    let mut g = Graph::new("c7");
    let x = g.input::<Val>("x");
    let y = g.input::<Val>("y");
    let mixed = g.mix("mix", &[x, y]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [Val::Int(10)]).unwrap();
    h.run().unwrap();
    h.push(&y, [Val::Char('A')]).unwrap();
    h.run().unwrap();
    h.push(&y, [Val::Char('B')]).unwrap();
    h.run().unwrap();
    h.push(&x, [Val::Int(20)]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (0, Val::Int(10)),
            (1, Val::Char('A')),
            (1, Val::Char('B')),
            (0, Val::Int(20))
        ]
    );
    h.finish().unwrap();
}

#[test]
fn c7_blend_follows_arrival() {
    let mut g = Graph::new("c7_blend");
    let x = g.input::<Val>("x");
    let y = g.input::<Val>("y");
    let blended = g.blend("blend", &[x, y]);
    let out = g.collect("out", &blended);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [Val::Int(10)]).unwrap();
    h.run().unwrap();
    h.push(&y, [Val::Char('A')]).unwrap();
    h.run().unwrap();
    h.push(&y, [Val::Char('B')]).unwrap();
    h.run().unwrap();
    h.push(&x, [Val::Int(20)]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [Val::Int(10), Val::Char('A'), Val::Char('B'), Val::Int(20)]
    );
    h.finish().unwrap();
}

#[test]
fn mix_of_elements_arriving_together_goes_input_by_input() {
    let mut g = Graph::new("mix_together");
    let x = g.input::<u32>("x");
    let y = g.input::<u32>("y");
    let mixed = g.mix("mix", &[x, y]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    h.push(&y, [1, 2]).unwrap();
    h.push(&x, [3]).unwrap();
    h.push(&y, [4]).unwrap();
    h.push(&x, [5]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(0, 3), (0, 5), (1, 1), (1, 2), (1, 4)]);
    h.finish().unwrap();
}

#[test]
fn c8_split_into_two_outputs() {
    let mut g = Graph::new("c8");
    let s = g.input::<i64>("s");
    let outs = g.split("split", &s, 2, |v: &i64| vec![Some(v + 1), Some(2 * v)]);
    assert_eq!(outs.len(), 2);
    let a = g.collect("a", &outs[0]);
    let b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, 0..=4).unwrap();
    h.run().unwrap();
    assert_eq!(a.values(), [1, 2, 3, 4, 5]);
    assert_eq!(b.values(), [0, 2, 4, 6, 8]);
    h.finish().unwrap();
}

#[test]
fn split_none_skips_an_output() {
    let mut g = Graph::new("split_none");
    let s = g.input::<i64>("s");
    let outs = g.split("parity", &s, 2, |v: &i64| {
        if v % 2 == 0 {
            [Some(*v), None]
        } else {
            [None, Some(*v)]
        }
    });
    let even = g.collect("even", &outs[0]);
    let odd = g.collect("odd", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, 0..7).unwrap();
    h.run().unwrap();
    assert_eq!(even.values(), [0, 2, 4, 6]);
    assert_eq!(odd.values(), [1, 3, 5]);
    h.finish().unwrap();
}

#[test]
fn c9_unzip_into_two() {
    let mut g = Graph::new("c9_unzip");
    let s = g.input::<(i64, char)>("s");
    let (nums, chars) = g.unzip("unzip", &s);
    let a = g.collect("a", &nums);
    let b = g.collect("b", &chars);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, [(1, 'a'), (2, 'b')]).unwrap();
    h.run().unwrap();
    assert_eq!(a.values(), [1, 2]);
    assert_eq!(b.values(), ['a', 'b']);
    h.finish().unwrap();
}

#[test]
fn c9_separate_into_two() {
    let mut g = Graph::new("c9_separate");
    let s = g.input::<(usize, char)>("s");
    let outs = g.separate("separate", &s, 2);
    let a = g.collect("a", &outs[0]);
    let b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, [(0, 'p'), (1, 'q'), (0, 'r')]).unwrap();
    h.run().unwrap();
    assert_eq!(a.values(), ['p', 'r']);
    assert_eq!(b.values(), ['q']);
    h.finish().unwrap();
}

#[test]
fn unzip3_into_three() {
    let mut g = Graph::new("unzip3");
    let s = g.input::<(u8, char, bool)>("s");
    let (a, b, c) = g.unzip3("unzip3", &s);
    let a = g.collect("a", &a);
    let b = g.collect("b", &b);
    let c = g.collect("c", &c);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, [(1, 'a', true), (2, 'b', false)]).unwrap();
    h.run().unwrap();
    assert_eq!(a.values(), [1, 2]);
    assert_eq!(b.values(), ['a', 'b']);
    assert_eq!(c.values(), [true, false]);
    h.finish().unwrap();
}

#[test]
fn separate_inverts_mix() {
    let mut g = Graph::new("mix_separate");
    let x = g.input::<u32>("x");
    let y = g.input::<u32>("y");
    let mixed = g.mix("mix", &[x, y]);
    let outs = g.separate("separate", &mixed, 2);
    let a = g.collect("a", &outs[0]);
    let b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1, 2]).unwrap();
    h.push(&y, [10]).unwrap();
    h.run().unwrap();
    h.push(&y, [20, 30]).unwrap();
    h.push(&x, [3]).unwrap();
    h.finish().unwrap();
    assert_eq!(a.values(), [1, 2, 3]);
    assert_eq!(b.values(), [10, 20, 30]);
}

#[test]
fn multi_element_zips_then_splits() {
    let mut g = Graph::new("multi");
    let x = g.input::<i64>("x");
    let y = g.input::<i64>("y");
    let outs = g.multi_element("sum_diff", &[x, y], 2, |r: &[&i64]| {
        let (a, b) = (*r[0], *r[1]);
        [Some(a + b), (a > b).then_some(a - b)]
    });
    let sums = g.collect("sums", &outs[0]);
    let diffs = g.collect("diffs", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [5, 1, 7]).unwrap();
    h.push(&y, [2, 3]).unwrap();
    h.run().unwrap();
    assert_eq!(sums.values(), [7, 4]);
    assert_eq!(diffs.values(), [3]);
    h.push(&y, [4, 100]).unwrap();
    h.run().unwrap();
    assert_eq!(sums.values(), [7, 4, 11]);
    assert_eq!(diffs.values(), [3, 3]);
    h.finish().unwrap();
}

/// Pushes `(input, (t, v))` one element at a time, running after each push.
fn push_each(
    h: &mut Harness,
    inputs: &[iotstream::Stream<(u64, char)>],
    events: &[(usize, (u64, char))],
) {
    for &(i, e) in events {
        h.push(&inputs[i], [e]).unwrap();
        h.run().unwrap();
    }
}

#[test]
fn c11_timed_mix_drops_late_elements() {
    let mut g = Graph::new("c11");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let (mixed, late) = g.timed_mix("timed_mix", &[x, y]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    push_each(
        &mut h,
        &[x, y],
        &[
            (0, (0, 'a')),
            (0, (1, 'b')),
            (1, (2, 'A')),
            (1, (5, 'B')),
            (0, (3, 'c')),
            (0, (4, 'd')),
            (0, (8, 'e')),
        ],
    );
    let expected = [
        (0, (0, 'a')),
        (1, (0, 'b')),
        (2, (1, 'A')),
        (5, (1, 'B')),
        (8, (0, 'e')),
    ];
    assert_eq!(out.values(), expected);
    assert_eq!(late.get(), 2);
    h.finish().unwrap();
    assert_eq!(out.values(), expected);
    assert_eq!(late.get(), 2);
}

#[test]
fn c11_with_pushes_grouped_between_runs() {
    // The same arrival as C11, with each input's consecutive elements pushed together.
    let mut g = Graph::new("c11_grouped");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let (mixed, late) = g.timed_mix("timed_mix", &[x, y]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(0, 'a'), (1, 'b')]).unwrap();
    h.run().unwrap();
    h.push(&y, [(2, 'A'), (5, 'B')]).unwrap();
    h.run().unwrap();
    h.push(&x, [(3, 'c'), (4, 'd'), (8, 'e')]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (0, (0, 'a')),
            (1, (0, 'b')),
            (2, (1, 'A')),
            (5, (1, 'B')),
            (8, (0, 'e'))
        ]
    );
    assert_eq!(late.get(), 2);
    h.finish().unwrap();
}

#[test]
fn timed_mix_takes_elements_arriving_together_in_time_order() {
    // Everything of C11 in one step: nothing is late, ties keep the lower input first.
    let mut g = Graph::new("c11_together");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let (mixed, late) = g.timed_mix("timed_mix", &[x, y]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(0, 'a'), (1, 'b'), (3, 'c'), (4, 'd'), (8, 'e')])
        .unwrap();
    h.push(&y, [(2, 'A'), (5, 'B'), (8, 'E')]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (0, (0, 'a')),
            (1, (0, 'b')),
            (2, (1, 'A')),
            (3, (0, 'c')),
            (4, (0, 'd')),
            (5, (1, 'B')),
            (8, (0, 'e')),
        ]
    );
    assert_eq!(late.get(), 1, "y's (8, E) is not after x's (8, e)");
    h.finish().unwrap();
}

#[test]
fn timed_zip_aligns_by_time_and_waits_for_every_input() {
    let mut g = Graph::new("timed_zip");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let z = g.timed_zip("timed_zip", &[x, y]);
    let out = g.collect("out", &z);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(1, 'a'), (3, 'b'), (10, 'c')]).unwrap();
    h.run().unwrap();
    assert!(out.is_empty(), "y may still send a timestamp before 1");
    h.push(&y, [(2, 'A'), (3, 'B')]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (1, vec![Some('a'), None]),
            (2, vec![None, Some('A')]),
            (3, vec![Some('b'), Some('B')]),
        ]
    );
    h.push(&y, [(8, 'C'), (10, 'D'), (12, 'E')]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values()[3..],
        [(8, vec![None, Some('C')]), (10, vec![Some('c'), Some('D')])]
    );
    // At the end, x no longer holds y's 12 back.
    h.finish().unwrap();
    assert_eq!(out.values()[5..], [(12, vec![None, Some('E')])]);
}

#[test]
fn timed_zip_equal_timestamps_in_one_input_give_several_rows() {
    let mut g = Graph::new("timed_zip_dups");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let z = g.timed_zip("timed_zip", &[x, y]);
    let out = g.collect("out", &z);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(3, 'a'), (3, 'b')]).unwrap();
    h.push(&y, [(3, 'A'), (4, 'B')]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [(3, vec![Some('a'), Some('A')]), (3, vec![Some('b'), None])]
    );
    h.finish().unwrap();
    assert_eq!(out.values()[2..], [(4, vec![None, Some('B')])]);
}

// ---------------------------------------------------------------------------------------------
// Errors

#[test]
fn split_with_too_many_values_names_the_agent() {
    let mut g = Graph::new("split_arity");
    let s = g.input::<i64>("s");
    let outs = g.split("router", &s, 2, |v: &i64| vec![Some(*v); 3]);
    let _a = g.collect("a", &outs[0]);
    let _b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, [1]).unwrap();
    let err = h.run().unwrap_err();
    let (agent, cause) = agent_error(&err);
    assert_eq!(agent, "router");
    assert!(cause.contains("more than 2"), "{cause}");
    assert!(err.to_string().contains("'router'"), "{err}");
}

#[test]
fn split_with_too_few_values_names_the_agent() {
    let mut g = Graph::new("split_arity_few");
    let s = g.input::<i64>("s");
    let outs = g.split("router", &s, 3, |v: &i64| vec![Some(*v)]);
    for (i, o) in outs.iter().enumerate() {
        let _ = g.collect(&format!("c{i}"), o);
    }
    let mut h = Harness::new(g).unwrap();
    h.push(&s, [1]).unwrap();
    let err = h.run().unwrap_err();
    let (agent, cause) = agent_error(&err);
    assert_eq!(agent, "router");
    assert!(cause.contains("returned 1 values"), "{cause}");
    assert!(cause.contains("exactly 3"), "{cause}");
}

#[test]
fn multi_element_with_wrong_arity_names_the_agent() {
    let mut g = Graph::new("multi_arity");
    let x = g.input::<i64>("x");
    let outs = g.multi_element("fanout", &[x], 2, |_: &[&i64]| Vec::<Option<i64>>::new());
    let _a = g.collect("a", &outs[0]);
    let _b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1]).unwrap();
    let err = h.run().unwrap_err();
    let (agent, cause) = agent_error(&err);
    assert_eq!(agent, "fanout");
    assert!(cause.contains("returned 0 values"), "{cause}");
}

#[test]
fn separate_index_out_of_range_names_the_agent_and_index() {
    let mut g = Graph::new("separate_range");
    let s = g.input::<(usize, char)>("s");
    let outs = g.separate("dispatcher", &s, 2);
    let _a = g.collect("a", &outs[0]);
    let _b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, [(1, 'q'), (7, 'z')]).unwrap();
    let err = h.run().unwrap_err();
    let (agent, cause) = agent_error(&err);
    assert_eq!(agent, "dispatcher");
    assert!(cause.contains("output 7"), "{cause}");
    assert!(cause.contains("only 2 outputs"), "{cause}");
}

#[test]
fn timed_zip_decreasing_timestamp_names_agent_input_and_timestamps() {
    let mut g = Graph::new("timed_zip_order");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let z = g.timed_zip("aligner", &[x, y]);
    let _out = g.collect("out", &z);
    let mut h = Harness::new(g).unwrap();
    h.push(&y, [(5, 'A')]).unwrap();
    h.run().unwrap();
    // Detected on arrival, even though nothing of y can be consumed yet.
    h.push(&y, [(4, 'B')]).unwrap();
    let err = h.run().unwrap_err();
    let (agent, cause) = agent_error(&err);
    assert_eq!(agent, "aligner");
    assert!(cause.contains("input 1"), "{cause}");
    assert!(cause.contains("timestamp 4 follows timestamp 5"), "{cause}");
}

#[test]
fn timed_mix_decreasing_timestamp_names_agent_input_and_timestamps() {
    let mut g = Graph::new("timed_mix_order");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let (m, _late) = g.timed_mix("event_merger", &[x, y]);
    let _out = g.collect("out", &m);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(10, 'a')]).unwrap();
    h.run().unwrap();
    h.push(&x, [(12, 'b'), (9, 'c')]).unwrap();
    let err = h.run().unwrap_err();
    let (agent, cause) = agent_error(&err);
    assert_eq!(agent, "event_merger");
    assert!(cause.contains("input 0"), "{cause}");
    assert!(
        cause.contains("timestamp 9 follows timestamp 12"),
        "{cause}"
    );
}

#[test]
fn operators_without_inputs_or_outputs_are_graph_problems() {
    let mut g = Graph::new("empty");
    let s = g.input::<i64>("s");
    let _ = g.zip_map(
        "no_inputs",
        &[] as &[iotstream::Stream<i64>],
        |_: &[&i64]| 0,
    );
    let _ = g.mix::<i64>("no_mix_inputs", &[]);
    let _ = g.split("no_outputs", &s, 0, |_: &i64| Vec::<Option<i64>>::new());
    let problems = graph_problems(Harness::new(g));
    assert!(
        problems
            .iter()
            .any(|p| p.contains("'no_inputs'") && p.contains("zip_map")),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.contains("'no_mix_inputs'")),
        "{problems:?}"
    );
    assert!(
        problems
            .iter()
            .any(|p| p.contains("'no_outputs'") && p.contains("n = 0")),
        "{problems:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// End of stream

#[test]
fn zip_ends_when_one_input_is_closed_and_drained() {
    let mut g = Graph::new("zip_end");
    // A small capacity: if the zip kept y's elements once x has ended, y's writer would stall.
    g.set_default_capacity(4);
    let x = g.input::<u32>("x");
    let y = g.input::<u32>("y");
    let z = g.zip("zip", &x, &y);
    let out = g.collect("out", &z);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1, 2]).unwrap();
    h.push(&y, [10, 20, 30]).unwrap();
    h.close(&x).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(1, 10), (2, 20)]);
    for chunk in 0..25 {
        h.push(&y, [chunk; 4]).unwrap();
        h.run().unwrap();
    }
    assert_eq!(out.values(), [(1, 10), (2, 20)]);
    let m = h.metrics();
    let link = m.link("y.out", "zip").unwrap();
    assert_eq!(link.elements, 103, "every element of y reached the zip");
    assert_eq!(link.in_flight, 0, "and was consumed (discarded)");
    assert!(!h.is_finished(), "y is still open");
    h.close(&y).unwrap();
    h.run().unwrap();
    assert!(h.is_finished(), "the zip closed once its last input closed");
    h.finish().unwrap();
    assert_eq!(out.values(), [(1, 10), (2, 20)]);
}

#[test]
fn zip_map_and_multi_element_end_like_zip() {
    let mut g = Graph::new("zip_map_end");
    g.set_default_capacity(2);
    let x = g.input::<u32>("x");
    let y = g.input::<u32>("y");
    let s = g.zip_map("sum", &[x, y], |r: &[&u32]| r[0] + r[1]);
    let m = g.multi_element("both", &[x, y], 1, |r: &[&u32]| [Some(r[0] * r[1])]);
    let sums = g.collect("sums", &s);
    let products = g.collect("products", &m[0]);
    let mut h = Harness::new(g).unwrap();
    h.push(&y, [1, 2, 3]).unwrap();
    h.push(&x, [5]).unwrap();
    h.close(&x).unwrap();
    h.run().unwrap();
    for _ in 0..10 {
        h.push(&y, [7, 7]).unwrap();
        h.run().unwrap();
    }
    h.finish().unwrap();
    assert_eq!(sums.values(), [6]);
    assert_eq!(products.values(), [5]);
}

#[test]
fn finish_drains_every_operator() {
    let mut g = Graph::new("drain");
    let x = g.input::<(u64, i64)>("x");
    let y = g.input::<(u64, i64)>("y");
    let tz = g.timed_zip("tz", &[x, y]);
    let (tm, late) = g.timed_mix("tm", &[x, y]);
    let mixed = g.mix("mix", &[x, y]);
    let blended = g.blend("blend", &[x, y]);
    let zipped = g.zip("zip", &x, &y);
    let (ts, vs) = g.unzip("unzip", &x);
    let parts = g.split("split", &ts, 2, |t: &u64| [Some(*t), None]);
    let tagged = g.map("tag", &vs, |v: &i64| ((*v as usize) % 2, *v));
    let sep = g.separate("separate", &tagged, 2);
    let c_tz = g.collect("c_tz", &tz);
    let c_tm = g.collect("c_tm", &tm);
    let c_mix = g.collect("c_mix", &mixed);
    let c_blend = g.collect("c_blend", &blended);
    let c_zip = g.collect("c_zip", &zipped);
    let c_split = g.collect("c_split", &parts[0]);
    let _ = g.collect("c_split1", &parts[1]);
    let c_even = g.collect("c_even", &sep[0]);
    let c_odd = g.collect("c_odd", &sep[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(1, 1), (4, 2), (6, 3)]).unwrap();
    h.push(&y, [(2, 10), (4, 20)]).unwrap();
    h.run().unwrap();
    // x's (6, 3) waits in the timed zip for y.
    assert_eq!(c_tz.len(), 3);
    h.finish().unwrap();
    assert!(h.is_finished());
    assert_eq!(
        c_tz.values(),
        [
            (1, vec![Some(1), None]),
            (2, vec![None, Some(10)]),
            (4, vec![Some(2), Some(20)]),
            (6, vec![Some(3), None]),
        ]
    );
    assert_eq!(
        c_tm.values(),
        [(1, (0, 1)), (2, (1, 10)), (4, (0, 2)), (6, (0, 3))]
    );
    assert_eq!(late.get(), 1);
    assert_eq!(c_mix.len(), 5);
    assert_eq!(c_blend.len(), 5);
    assert_eq!(c_zip.values(), [((1, 1), (2, 10)), ((4, 2), (4, 20))]);
    assert_eq!(c_split.values(), [1, 4, 6]);
    assert_eq!(c_even.values(), [2]);
    assert_eq!(c_odd.values(), [1, 3]);
}

#[test]
fn timed_zip_closed_input_releases_the_others() {
    let mut g = Graph::new("timed_zip_end");
    let x = g.input::<(u64, char)>("x");
    let y = g.input::<(u64, char)>("y");
    let z = g.timed_zip("tz", &[x, y]);
    let out = g.collect("out", &z);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(1, 'a')]).unwrap();
    h.push(&y, [(1, 'A'), (2, 'B'), (3, 'C')]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(1, vec![Some('a'), Some('A')])]);
    h.close(&x).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (1, vec![Some('a'), Some('A')]),
            (2, vec![None, Some('B')]),
            (3, vec![None, Some('C')]),
        ]
    );
    h.push(&y, [(7, 'D')]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values()[3..], [(7, vec![None, Some('D')])]);
    h.finish().unwrap();
}

#[test]
fn zip_of_unbalanced_outputs_of_one_writer_reports_a_stall() {
    // The split's first output runs ahead; the zip holds it while it waits for the second, the
    // connection fills, and the split waits for the zip: reported, never a hang.
    let mut g = Graph::new("unbalanced");
    g.set_default_capacity(4);
    let s = g.input::<u32>("s");
    let outs = g.split("router", &s, 2, |v: &u32| {
        [Some(*v), (*v >= 10).then_some(*v)]
    });
    let z = g.zip("pair", &outs[0], &outs[1]);
    let _out = g.collect("out", &z);
    let mut h = Harness::new(g).unwrap();
    h.push(&s, 0..20).unwrap();
    h.run().unwrap();
    match h.finish() {
        Err(Error::Stalled { detail }) => assert!(detail.contains("router.out0"), "{detail}"),
        other => panic!("expected a stall, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Threaded runs: the same results with real concurrency and small connections

#[test]
fn threaded_run_gives_the_batch_independent_results() {
    const N: u64 = 20_000;
    let mut g = Graph::new("threaded");
    g.set_default_capacity(64);
    let a = g.source_iter("a", 0..N);
    let b = g.source_iter("b", (0..N / 2).map(|v| v * 10));
    // The timed zip reads sources of its own: fed from `a` and `b`, which the zip pairs one to
    // one, its 3:2 alignment would need unbounded buffers and the run would stall.
    let ta = g.source_iter("ta", (0..N).map(|v| (v / 3, v)));
    let tb = g.source_iter("tb", (0..N / 2).map(|v| (v / 2, v * 10)));
    let zipped = g.zip("zip", &a, &b);
    let aligned = g.timed_zip("align", &[ta, tb]);
    let parts = g.split("parity", &a, 2, |v: &u64| {
        [(v % 2 == 0).then_some(*v), (v % 2 == 1).then_some(*v)]
    });
    let (firsts, _) = g.unzip("unzip", &zipped);
    let c_zip = g.collect("c_zip", &zipped);
    let c_aligned = g.collect("c_aligned", &aligned);
    let c_even = g.collect("c_even", &parts[0]);
    let c_odd = g.collect("c_odd", &parts[1]);
    let c_firsts = g.collect("c_firsts", &firsts);
    g.run().unwrap();

    let zipped: Vec<(u64, u64)> = (0..N / 2).map(|v| (v, v * 10)).collect();
    assert_eq!(c_zip.values(), zipped);
    assert_eq!(c_firsts.values(), (0..N / 2).collect::<Vec<_>>());
    assert_eq!(c_even.values(), (0..N).step_by(2).collect::<Vec<_>>());
    assert_eq!(c_odd.values(), (1..N).step_by(2).collect::<Vec<_>>());
    // ta: 3 elements per timestamp; tb: 2 per timestamp, up to t = N / 4. Each row holds
    // ta's next element at t, and tb's while it has one at t.
    let got = c_aligned.values();
    let expect: Vec<(u64, Vec<Option<u64>>)> = (0..N)
        .map(|v| {
            let (t, k) = (v / 3, v % 3);
            let b = (t < N / 4 && k < 2).then_some((2 * t + k) * 10);
            (t, vec![Some(v), b])
        })
        .collect();
    assert_eq!(got, expect);
}

#[test]
fn threaded_mix_keeps_every_element_in_input_order() {
    const N: u32 = 10_000;
    let mut g = Graph::new("threaded_mix");
    g.set_default_capacity(32);
    let x = g.source_iter("x", 0..N);
    let y = g.source_iter("y", N..2 * N);
    let mixed = g.mix("mix", &[x, y]);
    let blended = g.blend("blend", &[x, y]);
    let c_mix = g.collect("c_mix", &mixed);
    let c_blend = g.collect("c_blend", &blended);
    g.run().unwrap();
    let got = c_mix.values();
    let of = |i: usize| -> Vec<u32> {
        got.iter()
            .filter(|(j, _)| *j == i)
            .map(|(_, v)| *v)
            .collect()
    };
    assert_eq!(of(0), (0..N).collect::<Vec<_>>());
    assert_eq!(of(1), (N..2 * N).collect::<Vec<_>>());
    let blended = c_blend.values();
    let low: Vec<u32> = blended.iter().copied().filter(|v| *v < N).collect();
    let high: Vec<u32> = blended.iter().copied().filter(|v| *v >= N).collect();
    assert_eq!(low, (0..N).collect::<Vec<_>>());
    assert_eq!(high, (N..2 * N).collect::<Vec<_>>());
}
