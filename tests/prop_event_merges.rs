//! Event-time merges and joins: for input permuted within the watermarks' bound, delivered in
//! random batches with the inputs interleaved at random, `timed_mix`, `timed_zip2` and
//! `timed_join` give exactly what a plain reference gives on the sorted input, and drop
//! nothing; beyond the bound, exactly the late elements are dropped and counted.

use std::collections::BTreeSet;

use iotstream::ops::event::Watermarks;
use iotstream::{Graph, Harness, Stream};
use proptest::prelude::*;

/// Distinct sorted timestamps with values, and an arrival order within `bound` of it: each
/// element arrives at `t + delay` with `delay <= bound` (ties by timestamp).
fn arrivals(times: &BTreeSet<u64>, delays: &[u64], bound: u64) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, u64, u32)> = times
        .iter()
        .enumerate()
        .map(|(i, &t)| (t + delays[i % delays.len()] % (bound + 1), t, i as u32))
        .collect();
    v.sort();
    v.into_iter().map(|(_, t, x)| (t, x)).collect()
}

/// Pushes `inputs[j]` to `streams[j]` in chunks of the sizes in `cuts`, choosing the input of
/// each chunk from `order`, with a run after each chunk when `runs` says so.
fn deliver(
    h: &mut Harness,
    streams: &[Stream<(u64, u32)>],
    inputs: &[Vec<(u64, u32)>],
    cuts: &[usize],
    order: &[usize],
) {
    let mut at = vec![0; inputs.len()];
    let mut k = 0;
    while at.iter().zip(inputs).any(|(a, i)| *a < i.len()) {
        let mut j = order[k % order.len()] % inputs.len();
        while at[j] >= inputs[j].len() {
            j = (j + 1) % inputs.len();
        }
        let n = cuts[k % cuts.len()].min(inputs[j].len() - at[j]);
        h.push(&streams[j], inputs[j][at[j]..at[j] + n].iter().cloned())
            .unwrap();
        at[j] += n;
        if k % 3 != 0 {
            h.run().unwrap();
        }
        k += 1;
    }
}

fn times() -> impl Strategy<Value = BTreeSet<u64>> {
    prop::collection::btree_set(0u64..400, 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn timed_mix_in_event_time_gives_the_sorted_merge_whatever_the_arrival(
        t0 in times(), t1 in times(), t2 in times(),
        delays in prop::collection::vec(0u64..50, 1..20),
        bound in 0u64..30,
        cuts in prop::collection::vec(1usize..7, 1..10),
        order in prop::collection::vec(0usize..3, 1..10),
    ) {
        let inputs: Vec<Vec<(u64, u32)>> =
            [&t0, &t1, &t2].iter().map(|t| arrivals(t, &delays, bound)).collect();
        let mut g = Graph::new("mix");
        let xs: Vec<_> = (0..3).map(|j| g.input::<(u64, u32)>(&format!("x{j}"))).collect();
        let timed: Vec<_> = xs
            .iter()
            .enumerate()
            .map(|(j, x)| g.watermarks(&format!("w{j}"), x, Watermarks::bounded(bound)))
            .collect();
        let (mixed, late) = g.timed_mix("mix", &timed);
        let out = g.collect("out", &mixed);
        let mut h = Harness::new(g).unwrap();
        deliver(&mut h, &xs, &inputs, &cuts, &order);
        h.finish().unwrap();
        let mut want: Vec<(u64, (usize, u32))> = Vec::new();
        for (j, t) in [&t0, &t1, &t2].iter().enumerate() {
            for (i, &t) in t.iter().enumerate() {
                want.push((t, (j, i as u32)));
            }
        }
        want.sort();
        prop_assert_eq!(late.get(), 0);
        prop_assert_eq!(out.values(), want);
    }

    #[test]
    fn timed_zip_in_event_time_aligns_three_inputs_whatever_the_arrival(
        t0 in times(), t1 in times(), t2 in times(),
        delays in prop::collection::vec(0u64..50, 1..20),
        bound in 0u64..30,
        cuts in prop::collection::vec(1usize..7, 1..10),
        order in prop::collection::vec(0usize..3, 1..10),
    ) {
        let ts = [&t0, &t1, &t2];
        let inputs: Vec<Vec<(u64, u32)>> = ts.iter().map(|t| arrivals(t, &delays, bound)).collect();
        let mut g = Graph::new("zip");
        let xs: Vec<_> = (0..3).map(|j| g.input::<(u64, u32)>(&format!("x{j}"))).collect();
        let timed: Vec<_> = xs
            .iter()
            .enumerate()
            .map(|(j, x)| g.watermarks(&format!("w{j}"), x, Watermarks::bounded(bound)))
            .collect();
        let (rows, late) = g.timed_zip_counted("zip", &timed);
        let out = g.collect("out", &rows);
        let mut h = Harness::new(g).unwrap();
        deliver(&mut h, &xs, &inputs, &cuts, &order);
        h.finish().unwrap();
        let idx = |s: &BTreeSet<u64>, t: u64| s.iter().position(|&x| x == t).map(|i| i as u32);
        let all: BTreeSet<u64> = t0.union(&t1).chain(t2.iter()).copied().collect();
        let want: Vec<(u64, Vec<Option<u32>>)> = all
            .iter()
            .map(|&t| (t, ts.iter().map(|s| idx(s, t)).collect()))
            .collect();
        prop_assert_eq!(late.get(), 0);
        prop_assert_eq!(out.values(), want);
    }

    #[test]
    fn timed_zip2_aligns_by_time_whatever_the_arrival(
        t0 in times(), t1 in times(),
        delays in prop::collection::vec(0u64..50, 1..20),
        bound in 0u64..30,
        cuts in prop::collection::vec(1usize..7, 1..10),
        order in prop::collection::vec(0usize..2, 1..10),
        timed in any::<bool>(),
    ) {
        // Without watermarks the inputs are taken as ascending: deliver them sorted then.
        let bound = if timed { bound } else { 0 };
        let inputs: Vec<Vec<(u64, u32)>> =
            [&t0, &t1].iter().map(|t| arrivals(t, &delays, bound)).collect();
        let mut g = Graph::new("zip2");
        let a = g.input::<(u64, u32)>("a");
        let b = g.input::<(u64, u32)>("b");
        let (ta, tb) = if timed {
            (
                g.watermarks("wa", &a, Watermarks::bounded(bound)),
                g.watermarks("wb", &b, Watermarks::bounded(bound)),
            )
        } else {
            (a, b)
        };
        let (rows, late) = g.timed_zip2_counted("rows", &ta, &tb);
        let out = g.collect("out", &rows);
        let mut h = Harness::new(g).unwrap();
        deliver(&mut h, &[a, b], &inputs, &cuts, &order);
        h.finish().unwrap();
        let idx = |ts: &BTreeSet<u64>, t: u64| ts.iter().position(|&x| x == t).map(|i| i as u32);
        let want: Vec<(u64, Option<u32>, Option<u32>)> = t0
            .union(&t1)
            .map(|&t| (t, idx(&t0, t), idx(&t1, t)))
            .collect();
        prop_assert_eq!(late.get(), 0);
        prop_assert_eq!(out.values(), want);
    }

    #[test]
    fn timed_join_pairs_each_reading_with_the_nearest_within_the_tolerance(
        t0 in times(), t1 in times(),
        delays in prop::collection::vec(0u64..50, 1..20),
        bound in 0u64..30,
        tolerance in 0u64..20,
        cuts in prop::collection::vec(1usize..7, 1..10),
        order in prop::collection::vec(0usize..2, 1..10),
    ) {
        let inputs: Vec<Vec<(u64, u32)>> =
            [&t0, &t1].iter().map(|t| arrivals(t, &delays, bound)).collect();
        let mut g = Graph::new("join");
        let a = g.input::<(u64, u32)>("a");
        let b = g.input::<(u64, u32)>("b");
        let ta = g.watermarks("wa", &a, Watermarks::bounded(bound));
        let tb = g.watermarks("wb", &b, Watermarks::bounded(bound));
        let (pairs, late) = g.timed_join("pairs", &ta, &tb, tolerance);
        let out = g.collect("out", &pairs);
        let mut h = Harness::new(g).unwrap();
        deliver(&mut h, &[a, b], &inputs, &cuts, &order);
        h.finish().unwrap();
        let mut want = Vec::new();
        for (i, &t) in t0.iter().enumerate() {
            // The nearest b; ties: the earlier.
            let best = t1
                .iter()
                .enumerate()
                .filter(|&(_, &tb)| tb.abs_diff(t) <= tolerance)
                .min_by_key(|&(_, &tb)| (tb.abs_diff(t), tb));
            if let Some((k, _)) = best {
                want.push((t, i as u32, k as u32));
            }
        }
        prop_assert_eq!(late.get(), 0);
        prop_assert_eq!(out.values(), want);
    }
}

#[test]
fn beyond_the_bound_exactly_the_late_elements_are_dropped_and_counted() {
    // Bound 5. Input 0: 10, 30, 12 (12 < 30 - 5: beyond the bound). Input 1: 11, 31, 29
    // (29 >= 31 - 5: within). Watermarks: 25 after 30, 26 after 31: everything below 25 is
    // emitted by then, so 12 is late; 29 is not.
    let mut g = Graph::new("late");
    let a = g.input::<(u64, u32)>("a");
    let b = g.input::<(u64, u32)>("b");
    let ta = g.watermarks("wa", &a, Watermarks::bounded(5));
    let tb = g.watermarks("wb", &b, Watermarks::bounded(5));
    let (mixed, late) = g.timed_mix("mix", &[ta, tb]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [(10, 0), (30, 1)]).unwrap();
    h.push(&b, [(11, 0), (31, 1)]).unwrap();
    h.run().unwrap();
    h.push(&a, [(12, 2)]).unwrap();
    h.push(&b, [(29, 2)]).unwrap();
    h.finish().unwrap();
    assert_eq!(late.get(), 1);
    assert_eq!(
        out.values(),
        [
            (10, (0, 0)),
            (11, (1, 0)),
            (29, (1, 2)),
            (30, (0, 1)),
            (31, (1, 1))
        ]
    );
}

#[test]
fn a_humidity_reading_that_comes_late_in_processing_time_is_not_dropped() {
    // The case: a reading delivered well after the time it carries, within the bound,
    // merged with a faster sensor. Arrival order must not matter.
    let mut g = Graph::new("dew");
    let temp = g.input::<(u64, u32)>("temperature");
    let hum = g.input::<(u64, u32)>("humidity");
    let t = g.watermarks("t", &temp, Watermarks::bounded(2_000));
    let hu = g.watermarks("h", &hum, Watermarks::bounded(2_000));
    let (mixed, late) = g.timed_mix("mix", &[t, hu]);
    let out = g.collect("out", &mixed);
    let mut h = Harness::new(g).unwrap();
    for k in 0..20u64 {
        h.push(&temp, [(k * 1_000, 20)]).unwrap();
        h.run().unwrap();
        if k >= 1 {
            // Humidity at (k-1) s + 0.5 s, delivered after temperature at k s.
            h.push(&hum, [((k - 1) * 1_000 + 500, 60)]).unwrap();
            h.run().unwrap();
        }
    }
    h.finish().unwrap();
    assert_eq!(late.get(), 0, "nothing within the bound is late");
    assert_eq!(out.values().len(), 39);
    let ts: Vec<u64> = out.values().iter().map(|e| e.0).collect();
    assert!(ts.windows(2).all(|w| w[0] < w[1]), "in time order: {ts:?}");
}

#[test]
fn a_timed_mix_with_watermarks_on_some_inputs_only_is_an_error_naming_the_input() {
    let mut g = Graph::new("half");
    let a = g.source_iter("a", [(1u64, 0u32)]);
    let b = g.source_iter("b", [(2u64, 0u32)]);
    let ta = g.watermarks("wa", &a, Watermarks::ascending());
    let (mixed, _) = g.timed_mix("mix", &[ta, b]);
    g.collect("out", &mixed);
    let e = g.run().unwrap_err().to_string();
    assert!(
        e.contains("mix") && e.contains("input 1 carries no watermarks"),
        "{e}"
    );
}

/// Elements `(t, v)` with repeated timestamps (values distinct), arriving at `t + delay` for
/// the given delays (at most `bound`; ties by position).
fn arrivals_dup(elems: &[(u64, u32)], delays: &[u64], bound: u64) -> Vec<(u64, u32)> {
    let mut v: Vec<(u64, usize, (u64, u32))> = elems
        .iter()
        .enumerate()
        .map(|(i, &e)| (e.0 + delays[i % delays.len()] % (bound + 1), i, e))
        .collect();
    v.sort();
    v.into_iter().map(|(_, _, e)| e).collect()
}

fn dup_input() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(0u64..40, 0..40).prop_map(|mut ts| {
        ts.sort();
        ts.into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect()
    })
}

/// Runs timed_mix and timed_zip over three inputs arriving as `inputs` says; their outputs.
#[allow(clippy::type_complexity)]
fn mix_and_zip(
    inputs: &[Vec<(u64, u32)>],
    bound: u64,
) -> (Vec<(u64, (usize, u32))>, Vec<(u64, Vec<Option<u32>>)>) {
    let mut g = Graph::new("ties");
    let xs: Vec<_> = (0..3)
        .map(|j| g.input::<(u64, u32)>(&format!("x{j}")))
        .collect();
    let timed: Vec<_> = xs
        .iter()
        .enumerate()
        .map(|(j, x)| g.watermarks(&format!("w{j}"), x, Watermarks::bounded(bound)))
        .collect();
    let (mixed, _) = g.timed_mix("mix", &timed);
    let rows = g.timed_zip("zip", &timed);
    let m = g.collect("m", &mixed);
    let z = g.collect("z", &rows);
    let mut h = Harness::new(g).unwrap();
    deliver(&mut h, &xs, inputs, &[3], &[0, 1, 2]);
    h.finish().unwrap();
    (m.values(), z.values())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Several elements of one input at one timestamp: the output of `timed_mix` and
    /// `timed_zip` does not depend on the order they arrive in (within the bound).
    #[test]
    fn equal_timestamps_give_the_same_output_whatever_their_arrival(
        e0 in dup_input(), e1 in dup_input(), e2 in dup_input(),
        d1 in prop::collection::vec(0u64..50, 1..20),
        d2 in prop::collection::vec(0u64..50, 1..20),
        bound in 0u64..10,
    ) {
        let order = |d: &[u64]| -> Vec<Vec<(u64, u32)>> {
            [&e0, &e1, &e2].iter().map(|e| arrivals_dup(e, d, bound)).collect()
        };
        prop_assert_eq!(mix_and_zip(&order(&d1), bound), mix_and_zip(&order(&d2), bound));
    }
}

/// An operator's output and how many elements it counted late.
type WithLate<T> = (Vec<T>, u64);

/// What two inputs gave through every event-time merge and join, with their late counts.
#[derive(Debug, PartialEq)]
struct Merged {
    mix: WithLate<(u64, (usize, u32))>,
    zip: WithLate<(u64, Vec<Option<u32>>)>,
    zip2: WithLate<(u64, Option<u32>, Option<u32>)>,
    join: WithLate<(u64, u32, u32)>,
}

/// Runs `timed_mix`, `timed_zip`, `timed_zip2` and `timed_join` (tolerance 3) over two inputs
/// with watermarks of `bound` (or none, taken as ascending), delivered as `cuts` and `order`
/// say (see [`deliver`]).
fn merged(
    inputs: &[Vec<(u64, u32)>; 2],
    bound: Option<u64>,
    cuts: &[usize],
    order: &[usize],
) -> Merged {
    let mut g = Graph::new("merged");
    let xs = [g.input::<(u64, u32)>("x0"), g.input::<(u64, u32)>("x1")];
    let timed = match bound {
        Some(d) => [
            g.watermarks("w0", &xs[0], Watermarks::bounded(d)),
            g.watermarks("w1", &xs[1], Watermarks::bounded(d)),
        ],
        None => xs,
    };
    let mut mix_late = None;
    let mut zip_late = None;
    let (mix, zip) = if bound.is_some() {
        let (mix, late) = g.timed_mix("mix", &timed);
        mix_late = Some(late);
        let (zip, late) = g.timed_zip_counted("zip", &timed);
        zip_late = Some(late);
        (
            Some(g.collect("c_mix", &mix)),
            Some(g.collect("c_zip", &zip)),
        )
    } else {
        // Without watermarks these two refuse a decreasing timestamp (tested elsewhere).
        (None, None)
    };
    let (zip2, zip2_late) = g.timed_zip2_counted("zip2", &timed[0], &timed[1]);
    let (join, join_late) = g.timed_join("join", &timed[0], &timed[1], 3);
    let (zip2, join) = (g.collect("c_zip2", &zip2), g.collect("c_join", &join));
    let mut h = Harness::new(g).unwrap();
    deliver(&mut h, &xs, inputs, cuts, order);
    h.finish().unwrap();
    Merged {
        mix: (
            mix.map(|c| c.values()).unwrap_or_default(),
            mix_late.map_or(0, |l| l.get()),
        ),
        zip: (
            zip.map(|c| c.values()).unwrap_or_default(),
            zip_late.map_or(0, |l| l.get()),
        ),
        zip2: (zip2.values(), zip2_late.get()),
        join: (join.values(), join_late.get()),
    }
}

/// The elements of `input` that are not late: those not more than `bound` below the highest
/// timestamp before them on the same input (without watermarks, not below it).
fn on_time(input: &[(u64, u32)], bound: Option<u64>) -> Vec<(u64, u32)> {
    let mut highest: Option<u64> = None;
    let mut kept = Vec::new();
    for &(t, v) in input {
        let late = highest.is_some_and(|m| t.saturating_add(bound.unwrap_or(0)) < m);
        if !late {
            kept.push((t, v));
        }
        highest = Some(highest.map_or(t, |m| m.max(t)));
    }
    kept
}

/// Any timestamps, in any order: far beyond the bound too. Values below 128 and distinct, so
/// that their encodings (the order of equal timestamps) sort as the numbers do.
fn disordered() -> impl Strategy<Value = Vec<(u64, u32)>> {
    prop::collection::vec(0u64..120, 0..40).prop_map(|ts| {
        ts.into_iter()
            .enumerate()
            .map(|(i, t)| (t, i as u32))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// Beyond the bound: whether an element is late is judged on its own input (its
    /// watermark before it), so each merge and join gives the same output and the same late
    /// count whatever the batches and the interleaving of the two inputs, and `timed_mix`
    /// gives the sorted merge of exactly the elements that are not late. (Before, an element
    /// behind its input's watermark was kept when the merge had not emitted up to that
    /// watermark yet: kept or late depending on where the batches ended.)
    #[test]
    fn lateness_beyond_the_bound_does_not_depend_on_batches_or_interleaving(
        x0 in disordered(), x1 in disordered(),
        bound in prop::option::of(0u64..10),
        cuts in prop::collection::vec(1usize..6, 1..8),
        order in prop::collection::vec(0usize..2, 1..8),
    ) {
        let inputs = [x0, x1];
        let whole = merged(&inputs, bound, &[usize::MAX], &[0, 1]);
        let cut = merged(&inputs, bound, &cuts, &order);
        prop_assert_eq!(&whole, &cut);
        let kept: Vec<Vec<(u64, u32)>> = inputs.iter().map(|i| on_time(i, bound)).collect();
        let late = (inputs[0].len() + inputs[1].len() - kept[0].len() - kept[1].len()) as u64;
        if bound.is_some() {
            let mut want: Vec<(u64, (usize, u32))> = kept
                .iter()
                .enumerate()
                .flat_map(|(j, k)| k.iter().map(move |&(t, v)| (t, (j, v))))
                .collect();
            want.sort();
            prop_assert_eq!(&whole.mix, &(want, late));
            prop_assert_eq!(whole.zip.1, late);
        }
        prop_assert_eq!(whole.zip2.1, late);
        let zipped: usize = whole.zip2.0.iter().map(|r| r.1.is_some() as usize + r.2.is_some() as usize).sum();
        prop_assert_eq!(zipped, kept[0].len() + kept[1].len());
    }
}

/// An element at the last timestamp, `u64::MAX`, is emitted at the end by every event-time
/// merge and join (they emitted only what lay below `u64::MAX`, and counted nothing late).
#[test]
fn an_element_at_the_last_timestamp_is_emitted_at_the_end() {
    const LAST: u64 = u64::MAX;
    for bound in [Some(0), None] {
        let inputs = [vec![(5, 1), (LAST, 2)], vec![(5, 3), (LAST, 4)]];
        let out = merged(&inputs, bound, &[usize::MAX], &[0, 1]);
        if bound.is_some() {
            assert_eq!(
                out.mix,
                (
                    vec![(5, (0, 1)), (5, (1, 3)), (LAST, (0, 2)), (LAST, (1, 4))],
                    0
                )
            );
            assert_eq!(
                out.zip,
                (
                    vec![(5, vec![Some(1), Some(3)]), (LAST, vec![Some(2), Some(4)])],
                    0
                )
            );
        }
        assert_eq!(
            out.zip2,
            (vec![(5, Some(1), Some(3)), (LAST, Some(2), Some(4))], 0),
            "{bound:?}"
        );
        assert_eq!(out.join, (vec![(5, 1, 3), (LAST, 2, 4)], 0), "{bound:?}");
    }
}
