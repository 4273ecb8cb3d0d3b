//! Property tests of the merge and split operators.
//!
//! Batch-independent operators (zips, timed_zip, splits): random input delivered in random
//! chunks, with or without a run after each push, gives exactly the output of a plain reference
//! implementation written here, after every run and at the end; so does the same input in one
//! batch. Arrival-dependent operators (mix, blend, timed_mix): the output is exactly what a
//! reference replaying the same pushes and runs predicts, and the invariants hold (order within
//! each input kept, nothing lost or invented; for timed_mix, strictly increasing timestamps and
//! every dropped element counted).

use std::ops::Range;

use iotstream::{Element, Graph, Harness, Stream};
use proptest::prelude::*;

/// One step of a delivery: `data[input][range]` was pushed, or the graph ran to quiescence.
#[derive(Clone, Debug)]
enum Ev {
    Push(usize, Range<usize>),
    Run,
}

/// A random delivery plan: `(input, chunk length, run afterwards)`. Fewer than 60 pushes, so no
/// input's channel (64 chunks) fills up and runs the graph behind the test's back.
fn plan() -> impl Strategy<Value = Vec<(usize, usize, bool)>> {
    prop::collection::vec((0usize..8, 1usize..8, any::<bool>()), 0..60)
}

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(96)
}

/// Delivers inputs of lengths `lens` following `ops`, then what is left (one chunk per input)
/// and a last run, then finishes. `push(h, i, range)` pushes `data[i][range]`; `after_run(sent)`
/// is called after every run with how much of each input has been pushed. Returns the log of
/// pushes and runs. An empty `ops` delivers everything as one batch.
fn drive(
    h: &mut Harness,
    lens: &[usize],
    ops: &[(usize, usize, bool)],
    mut push: impl FnMut(&mut Harness, usize, Range<usize>),
    mut after_run: impl FnMut(&[usize]),
) -> Vec<Ev> {
    let k = lens.len();
    let mut sent: Vec<usize> = vec![0; k];
    let mut log = Vec::new();
    let tail = (0..k).map(|i| (i, usize::MAX, false));
    for (i, n, run) in ops.iter().copied().chain(tail) {
        let i = i % k;
        let end = sent[i].saturating_add(n).min(lens[i]);
        if end > sent[i] {
            push(h, i, sent[i]..end);
            log.push(Ev::Push(i, sent[i]..end));
            sent[i] = end;
        }
        if run {
            h.run().unwrap();
            log.push(Ev::Run);
            after_run(&sent);
        }
    }
    h.run().unwrap();
    log.push(Ev::Run);
    after_run(&sent);
    h.finish().unwrap();
    log
}

/// Pushes a chunk of `data` to `stream`.
fn push_chunk<T: Element>(h: &mut Harness, stream: &Stream<T>, data: &[T]) {
    h.push(stream, data.iter().cloned()).unwrap();
}

/// Non-decreasing timestamps from deltas, starting at `start`.
fn timed(start: u64, deltas: &[(u8, u8)]) -> Vec<(u64, u8)> {
    let mut t = start;
    deltas
        .iter()
        .map(|&(d, v)| {
            t += u64::from(d % 3);
            (t, v)
        })
        .collect()
}

fn timed_inputs(max_inputs: usize) -> impl Strategy<Value = Vec<Vec<(u64, u8)>>> {
    prop::collection::vec(
        (
            0u64..4,
            prop::collection::vec((any::<u8>(), any::<u8>()), 0..25),
        ),
        1..=max_inputs,
    )
    .prop_map(|ins| ins.iter().map(|(s, d)| timed(*s, d)).collect())
}

// ---------------------------------------------------------------------------------------------
// Reference implementations

/// Zip of the prefixes `data[i][..sent[i]]`.
fn zip_ref<T: Clone>(data: &[Vec<T>], sent: &[usize]) -> Vec<Vec<T>> {
    let k = sent.iter().copied().min().unwrap_or(0);
    (0..k)
        .map(|x| data.iter().map(|d| d[x].clone()).collect())
        .collect()
}

/// timed_zip of the prefixes `data[i][..sent[i]]`, where `closed[i]` says input `i` has ended.
fn timed_zip_ref<V: Clone>(
    data: &[Vec<(u64, V)>],
    sent: &[usize],
    closed: &[bool],
) -> Vec<(u64, Vec<Option<V>>)> {
    let n = data.len();
    let mut pos = vec![0; n];
    let mut out = Vec::new();
    loop {
        let waiting = (0..n).any(|j| pos[j] == sent[j] && !closed[j]);
        let heads: Vec<u64> = (0..n)
            .filter(|&j| pos[j] < sent[j])
            .map(|j| data[j][pos[j]].0)
            .collect();
        let Some(&t) = heads.iter().min() else { break };
        if waiting {
            break;
        }
        let row = (0..n)
            .map(|j| {
                if pos[j] < sent[j] && data[j][pos[j]].0 == t {
                    pos[j] += 1;
                    Some(data[j][pos[j] - 1].1.clone())
                } else {
                    None
                }
            })
            .collect();
        out.push((t, row));
    }
    out
}

/// What mix emits for the pushes and runs in `log`: at each run, what arrived since the last
/// run, input by input.
fn mix_ref<T: Clone>(data: &[Vec<T>], log: &[Ev]) -> Vec<(usize, T)> {
    let mut pending: Vec<Vec<T>> = vec![Vec::new(); data.len()];
    let mut out = Vec::new();
    for ev in log {
        match ev {
            Ev::Push(i, r) => pending[*i].extend_from_slice(&data[*i][r.clone()]),
            Ev::Run => {
                for (i, p) in pending.iter_mut().enumerate() {
                    out.extend(p.drain(..).map(|v| (i, v)));
                }
            }
        }
    }
    out
}

/// What timed_mix emits for the pushes and runs in `log`, and how many it drops: at each run,
/// what arrived since the last run in time order (ties: lower input first), keeping only
/// timestamps after the last emitted one.
fn timed_mix_ref<V: Clone>(data: &[Vec<(u64, V)>], log: &[Ev]) -> (Vec<Tagged<V>>, u64) {
    let mut pending: Vec<Tagged<V>> = Vec::new();
    let mut out: Vec<Tagged<V>> = Vec::new();
    let mut late = 0;
    for ev in log {
        match ev {
            Ev::Push(i, r) => pending.extend(
                data[*i][r.clone()]
                    .iter()
                    .map(|(t, v)| (*t, (*i, v.clone()))),
            ),
            Ev::Run => {
                // Stable: equal (t, input) keep push order, which is input order.
                pending.sort_by_key(|(t, (i, _))| (*t, *i));
                for e in pending.drain(..) {
                    if out.last().is_none_or(|last| e.0 > last.0) {
                        out.push(e);
                    } else {
                        late += 1;
                    }
                }
            }
        }
    }
    (out, late)
}

/// An element of a timed mix's output: `(t, (input, v))`.
type Tagged<V> = (u64, (usize, V));

/// `out` restricted to input `i`, untagged.
fn of_input<T: Clone>(out: &[(usize, T)], i: usize) -> Vec<T> {
    out.iter()
        .filter(|(j, _)| *j == i)
        .map(|(_, v)| v.clone())
        .collect()
}

/// True if `sub` is a subsequence of `all`.
fn is_subsequence<T: PartialEq>(sub: &[T], all: &[T]) -> bool {
    let mut it = all.iter();
    sub.iter().all(|s| it.any(|a| a == s))
}

// ---------------------------------------------------------------------------------------------
// Synchronous merges

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn zip_is_batch_independent(
        a in prop::collection::vec(any::<u16>(), 0..40),
        b in prop::collection::vec(any::<i32>(), 0..40),
        ops in plan(),
    ) {
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("zip");
            let (sa, sb) = (g.input::<u16>("a"), g.input::<i32>("b"));
            let z = g.zip("zip", &sa, &sb);
            let out = g.collect("out", &z);
            let mut h = Harness::new(g).unwrap();
            let expect = |n: usize| -> Vec<(u16, i32)> {
                a.iter().copied().zip(b.iter().copied()).take(n).collect()
            };
            drive(
                &mut h,
                &[a.len(), b.len()],
                ops,
                |h, i, r| match i {
                    0 => push_chunk(h, &sa, &a[r]),
                    _ => push_chunk(h, &sb, &b[r]),
                },
                |sent| assert_eq!(out.values(), expect(sent[0].min(sent[1]))),
            );
            prop_assert_eq!(out.values(), expect(usize::MAX));
        }
    }

    #[test]
    fn zip3_is_batch_independent(
        a in prop::collection::vec(any::<u8>(), 0..30),
        b in prop::collection::vec(any::<char>(), 0..30),
        c in prop::collection::vec(any::<bool>(), 0..30),
        ops in plan(),
    ) {
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("zip3");
            let (sa, sb, sc) = (g.input::<u8>("a"), g.input::<char>("b"), g.input::<bool>("c"));
            let z = g.zip3("zip3", &sa, &sb, &sc);
            let out = g.collect("out", &z);
            let mut h = Harness::new(g).unwrap();
            let expect = |n: usize| -> Vec<(u8, char, bool)> {
                a.iter().zip(&b).zip(&c).map(|((a, b), c)| (*a, *b, *c)).take(n).collect()
            };
            drive(
                &mut h,
                &[a.len(), b.len(), c.len()],
                ops,
                |h, i, r| match i {
                    0 => push_chunk(h, &sa, &a[r]),
                    1 => push_chunk(h, &sb, &b[r]),
                    _ => push_chunk(h, &sc, &c[r]),
                },
                |sent| assert_eq!(out.values(), expect(sent.iter().copied().min().unwrap())),
            );
            prop_assert_eq!(out.values(), expect(usize::MAX));
        }
    }

    #[test]
    fn zip_map_is_batch_independent(
        data in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..30), 1..5),
        ops in plan(),
    ) {
        // Order-sensitive, so a row in the wrong order would show.
        let weigh = |row: &[u8]| -> u64 {
            row.iter().enumerate().map(|(j, v)| (j as u64 + 1) * u64::from(*v) * 1000u64.pow(j as u32)).sum()
        };
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("zip_map");
            let ins: Vec<_> = (0..data.len()).map(|i| g.input::<u8>(&format!("in{i}"))).collect();
            let z = g.zip_map("weigh", &ins, move |r: &[&u8]| {
                let row: Vec<u8> = r.iter().map(|v| **v).collect();
                weigh(&row)
            });
            let out = g.collect("out", &z);
            let mut h = Harness::new(g).unwrap();
            let expect = |sent: &[usize]| -> Vec<u64> {
                zip_ref(&data, sent).iter().map(|row| weigh(row.as_slice())).collect()
            };
            drive(
                &mut h,
                &lens,
                ops,
                |h, i, r| push_chunk(h, &ins[i], &data[i][r]),
                |sent| assert_eq!(out.values(), expect(sent)),
            );
            prop_assert_eq!(out.values(), expect(&lens));
        }
    }

    #[test]
    fn timed_zip_is_batch_independent(data in timed_inputs(4), ops in plan()) {
        let n = data.len();
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("timed_zip");
            let ins: Vec<_> = (0..n).map(|i| g.input::<(u64, u8)>(&format!("in{i}"))).collect();
            let z = g.timed_zip("align", &ins);
            let out = g.collect("out", &z);
            let mut h = Harness::new(g).unwrap();
            drive(
                &mut h,
                &lens,
                ops,
                |h, i, r| push_chunk(h, &ins[i], &data[i][r]),
                // While every input is open.
                |sent| assert_eq!(out.values(), timed_zip_ref(&data, sent, &vec![false; n])),
            );
            prop_assert_eq!(out.values(), timed_zip_ref(&data, &lens, &vec![true; n]));
        }
    }

    #[test]
    fn timed_zip_releases_others_when_an_input_closes(data in timed_inputs(3), first in 0usize..3) {
        let n = data.len();
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let first = first % n;
        let mut g = Graph::new("timed_zip_close");
        let ins: Vec<_> = (0..n).map(|i| g.input::<(u64, u8)>(&format!("in{i}"))).collect();
        let z = g.timed_zip("align", &ins);
        let out = g.collect("out", &z);
        let mut h = Harness::new(g).unwrap();
        for (i, d) in data.iter().enumerate() {
            push_chunk(&mut h, &ins[i], d);
        }
        h.run().unwrap();
        prop_assert_eq!(out.values(), timed_zip_ref(&data, &lens, &vec![false; n]));
        h.close(&ins[first]).unwrap();
        h.run().unwrap();
        let mut closed = vec![false; n];
        closed[first] = true;
        prop_assert_eq!(out.values(), timed_zip_ref(&data, &lens, &closed));
        h.finish().unwrap();
        prop_assert_eq!(out.values(), timed_zip_ref(&data, &lens, &vec![true; n]));
    }
}

// ---------------------------------------------------------------------------------------------
// Asynchronous merges

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn mix_follows_the_pushes_and_keeps_every_element(
        data in prop::collection::vec(prop::collection::vec(any::<u16>(), 0..30), 1..5),
        ops in plan(),
    ) {
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let mut g = Graph::new("mix");
        let ins: Vec<_> = (0..data.len()).map(|i| g.input::<u16>(&format!("in{i}"))).collect();
        let m = g.mix("mix", &ins);
        let out = g.collect("out", &m);
        let mut h = Harness::new(g).unwrap();
        let log = drive(&mut h, &lens, &ops, |h, i, r| push_chunk(h, &ins[i], &data[i][r]), |_| {});
        let got = out.values();
        prop_assert_eq!(&got, &mix_ref(&data, &log));
        // Invariants: each input's elements, all of them, in their order.
        for (i, d) in data.iter().enumerate() {
            prop_assert_eq!(&of_input(&got, i), d);
        }
        prop_assert_eq!(got.len(), lens.iter().sum::<usize>());
    }

    #[test]
    fn blend_follows_the_pushes_and_keeps_every_element(
        data in prop::collection::vec(prop::collection::vec(any::<u16>(), 0..30), 1..5),
        ops in plan(),
    ) {
        // Values carry their input so the invariants can be checked on the untagged output.
        let data: Vec<Vec<(u8, u16)>> = data
            .iter()
            .enumerate()
            .map(|(i, d)| d.iter().map(|v| (i as u8, *v)).collect())
            .collect();
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let mut g = Graph::new("blend");
        let ins: Vec<_> = (0..data.len()).map(|i| g.input::<(u8, u16)>(&format!("in{i}"))).collect();
        let b = g.blend("blend", &ins);
        let out = g.collect("out", &b);
        let mut h = Harness::new(g).unwrap();
        let log = drive(&mut h, &lens, &ops, |h, i, r| push_chunk(h, &ins[i], &data[i][r]), |_| {});
        let got = out.values();
        let expect: Vec<(u8, u16)> = mix_ref(&data, &log).into_iter().map(|(_, v)| v).collect();
        prop_assert_eq!(&got, &expect);
        for (i, d) in data.iter().enumerate() {
            let mine: Vec<(u8, u16)> = got.iter().filter(|v| v.0 == i as u8).copied().collect();
            prop_assert_eq!(&mine, d);
        }
        let mut sorted_got = got.clone();
        let mut sorted_in: Vec<(u8, u16)> = data.concat();
        sorted_got.sort_unstable();
        sorted_in.sort_unstable();
        prop_assert_eq!(sorted_got, sorted_in);
    }

    #[test]
    fn timed_mix_follows_the_pushes_and_counts_what_it_drops(data in timed_inputs(4), ops in plan()) {
        let n = data.len();
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        let mut g = Graph::new("timed_mix");
        let ins: Vec<_> = (0..n).map(|i| g.input::<(u64, u8)>(&format!("in{i}"))).collect();
        let (m, late) = g.timed_mix("events", &ins);
        let out = g.collect("out", &m);
        let mut h = Harness::new(g).unwrap();
        let log = drive(&mut h, &lens, &ops, |h, i, r| push_chunk(h, &ins[i], &data[i][r]), |_| {});
        let got = out.values();
        let (expect, expect_late) = timed_mix_ref(&data, &log);
        prop_assert_eq!(&got, &expect);
        prop_assert_eq!(late.get(), expect_late);
        // Invariants: strictly increasing time, nothing invented, every drop counted.
        prop_assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        for (i, d) in data.iter().enumerate() {
            let mine: Vec<(u64, u8)> = got.iter().filter(|e| e.1 .0 == i).map(|e| (e.0, e.1 .1)).collect();
            prop_assert!(is_subsequence(&mine, d));
        }
        prop_assert_eq!(got.len() as u64 + late.get(), lens.iter().sum::<usize>() as u64);
    }
}

// ---------------------------------------------------------------------------------------------
// Splits

/// The split function of the tests: three outputs, the first and third sometimes skipped.
fn triage(v: &i32) -> [Option<i64>; 3] {
    let v = i64::from(*v);
    [
        (v % 2 == 0).then_some(v),
        Some(3 * v),
        (v % 3 == 0).then_some(v + 1),
    ]
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn split_is_batch_independent(
        data in prop::collection::vec(any::<i32>(), 0..60),
        ops in plan(),
    ) {
        let expect: Vec<Vec<i64>> = (0..3)
            .map(|j| data.iter().filter_map(|v| triage(v)[j]).collect())
            .collect();
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("split");
            let s = g.input::<i32>("s");
            // A Vec result here, an array in the reference: both are accepted.
            let outs = g.split("triage", &s, 3, |v: &i32| triage(v).to_vec());
            let cols: Vec<_> = outs.iter().enumerate().map(|(j, o)| g.collect(&format!("c{j}"), o)).collect();
            let mut h = Harness::new(g).unwrap();
            drive(&mut h, &[data.len()], ops, |h, _, r| push_chunk(h, &s, &data[r]), |sent| {
                for (j, c) in cols.iter().enumerate() {
                    let want: Vec<i64> = data[..sent[0]].iter().filter_map(|v| triage(v)[j]).collect();
                    assert_eq!(c.values(), want);
                }
            });
            for (c, want) in cols.iter().zip(&expect) {
                prop_assert_eq!(&c.values(), want);
            }
        }
    }

    #[test]
    fn unzip_and_unzip3_are_batch_independent(
        data in prop::collection::vec((any::<u8>(), any::<char>(), any::<i16>()), 0..60),
        ops in plan(),
    ) {
        let pairs: Vec<(u8, char)> = data.iter().map(|(a, b, _)| (*a, *b)).collect();
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("unzip");
            let p = g.input::<(u8, char)>("pairs");
            let t = g.input::<(u8, char, i16)>("triples");
            let (pa, pb) = g.unzip("unzip", &p);
            let (ta, tb, tc) = g.unzip3("unzip3", &t);
            let (pa, pb) = (g.collect("pa", &pa), g.collect("pb", &pb));
            let (ta, tb, tc) = (g.collect("ta", &ta), g.collect("tb", &tb), g.collect("tc", &tc));
            let mut h = Harness::new(g).unwrap();
            drive(
                &mut h,
                &[pairs.len(), data.len()],
                ops,
                |h, i, r| match i {
                    0 => push_chunk(h, &p, &pairs[r]),
                    _ => push_chunk(h, &t, &data[r]),
                },
                |sent| {
                    assert_eq!(pa.len(), sent[0]);
                    assert_eq!(ta.len(), sent[1]);
                },
            );
            prop_assert_eq!(pa.values(), data.iter().map(|x| x.0).collect::<Vec<_>>());
            prop_assert_eq!(pb.values(), data.iter().map(|x| x.1).collect::<Vec<_>>());
            prop_assert_eq!(ta.values(), data.iter().map(|x| x.0).collect::<Vec<_>>());
            prop_assert_eq!(tb.values(), data.iter().map(|x| x.1).collect::<Vec<_>>());
            prop_assert_eq!(tc.values(), data.iter().map(|x| x.2).collect::<Vec<_>>());
        }
    }

    #[test]
    fn separate_is_batch_independent(
        n in 1usize..5,
        raw in prop::collection::vec((any::<usize>(), any::<u32>()), 0..60),
        ops in plan(),
    ) {
        let data: Vec<(usize, u32)> = raw.iter().map(|(j, v)| (j % n, *v)).collect();
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("separate");
            let s = g.input::<(usize, u32)>("s");
            let outs = g.separate("route", &s, n);
            let cols: Vec<_> = outs.iter().enumerate().map(|(j, o)| g.collect(&format!("c{j}"), o)).collect();
            let mut h = Harness::new(g).unwrap();
            drive(&mut h, &[data.len()], ops, |h, _, r| push_chunk(h, &s, &data[r]), |sent| {
                let total: usize = cols.iter().map(|c| c.len()).sum();
                assert_eq!(total, sent[0]);
            });
            for (j, c) in cols.iter().enumerate() {
                prop_assert_eq!(c.values(), of_input(&data, j));
            }
        }
    }

    #[test]
    fn multi_element_is_batch_independent(
        data in prop::collection::vec(prop::collection::vec(any::<i16>(), 0..30), 1..4),
        ops in plan(),
    ) {
        // Output 0: the row's sum; output 1: the first value, when the row is increasing.
        let f = |row: &[i16]| -> [Option<i64>; 2] {
            let sum = row.iter().map(|v| i64::from(*v)).sum();
            let increasing = row.windows(2).all(|w| w[0] < w[1]);
            [Some(sum), increasing.then_some(i64::from(row[0]))]
        };
        let lens: Vec<usize> = data.iter().map(Vec::len).collect();
        for ops in [&ops[..], &[]] {
            let mut g = Graph::new("multi");
            let ins: Vec<_> = (0..data.len()).map(|i| g.input::<i16>(&format!("in{i}"))).collect();
            let outs = g.multi_element("rows", &ins, 2, move |r: &[&i16]| {
                let row: Vec<i16> = r.iter().map(|v| **v).collect();
                f(&row)
            });
            let (sums, firsts) = (g.collect("sums", &outs[0]), g.collect("firsts", &outs[1]));
            let mut h = Harness::new(g).unwrap();
            let expect = |sent: &[usize], j: usize| -> Vec<i64> {
                zip_ref(&data, sent).iter().filter_map(|row| f(row.as_slice())[j]).collect()
            };
            drive(
                &mut h,
                &lens,
                ops,
                |h, i, r| push_chunk(h, &ins[i], &data[i][r]),
                |sent| {
                    assert_eq!(sums.values(), expect(sent, 0));
                    assert_eq!(firsts.values(), expect(sent, 1));
                },
            );
            prop_assert_eq!(sums.values(), expect(&lens, 0));
            prop_assert_eq!(firsts.values(), expect(&lens, 1));
        }
    }
}
