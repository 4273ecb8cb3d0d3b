//! The operators added for gaps found on real data (issue 11): `skip`, `take`, the `_and_end`
//! stateful maps, `to_file_with`, `rolling` over integers, `rolling_timed`, `split_either` and
//! `split3`.
//!
//! Each property test pushes random input in random chunks through the [`Harness`], runs after
//! each push, and compares what the operator emitted so far with a plain reference
//! implementation of the input pushed so far; then it does the same with the input as one
//! batch. The other tests check one behaviour each: `take` never holds back its writer, the
//! `_and_end` forms speak at a drain too, and file errors name the file.

use std::fmt::Debug;
use std::time::Duration;

use iotstream::ops::rolling::{Rolling, RollingMax};
use iotstream::ops::split::{Either, OneOf3};
use iotstream::{AgentError, Element, Graph, Harness, Stream};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Reads an operator's outputs so far.
type Reader<U> = Box<dyn Fn() -> Vec<Vec<U>>>;

fn collected<U: Element>(c: Vec<iotstream::Collected<U>>) -> Reader<U> {
    Box::new(move || c.iter().map(|c| c.values()).collect())
}

fn check<U: PartialEq + Debug>(
    got: Vec<Vec<U>>,
    want: Vec<Vec<U>>,
    when: &str,
) -> Result<(), TestCaseError> {
    prop_assert_eq!(got, want, "{}", when);
    Ok(())
}

/// Builds a one-input graph with `build`, pushes `data` in chunks of the sizes in `chunks`
/// (cycled), runs after each push and compares with `expect(prefix, false)`; after the end of
/// the input with `expect(data, true)`. Then the same with the whole input as one batch.
fn single<T, U>(
    data: &[T],
    chunks: &[usize],
    capacity: usize,
    build: impl Fn(&mut Graph, &Stream<T>) -> Reader<U>,
    expect: impl Fn(&[T], bool) -> Vec<Vec<U>>,
) -> Result<(), TestCaseError>
where
    T: Element,
    U: Element + PartialEq + Debug,
{
    let mut g = Graph::new("prop_gaps");
    g.set_default_capacity(capacity);
    let x = g.input::<T>("x");
    let read = build(&mut g, &x);
    let mut h = Harness::new(g).expect("graph builds");
    let mut pushed = 0;
    let mut sizes = chunks.iter().cycle();
    while pushed < data.len() {
        let n = (*sizes.next().expect("chunks is not empty")).min(data.len() - pushed);
        h.push(&x, data[pushed..pushed + n].iter().cloned())
            .expect("push");
        h.run().expect("run");
        pushed += n;
        check(
            read(),
            expect(&data[..pushed], false),
            &format!("after {pushed} elements"),
        )?;
    }
    h.finish().expect("finish");
    check(read(), expect(data, true), "after the end")?;

    let mut g = Graph::new("prop_gaps_one_batch");
    let x = g.input::<T>("x");
    let read = build(&mut g, &x);
    let mut h = Harness::new(g).expect("graph builds");
    h.push(&x, data.iter().cloned()).expect("push");
    h.run().expect("run");
    check(read(), expect(data, false), "one batch")?;
    h.finish().expect("finish");
    check(read(), expect(data, true), "one batch, after the end")?;
    Ok(())
}

fn data() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(-50i64..50, 0..80)
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..9, 1..6)
}

/// The trigger of `flat_map_with_state_and_end`'s use case: `(on, off)` indices of each run of
/// values above `level`; a run still on at the end closes at the last index, once the input
/// has ended.
fn ref_trigger(data: &[i64], level: i64, ended: bool) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut on = None;
    for (i, &v) in data.iter().enumerate() {
        match (on, v > level) {
            (None, true) => on = Some(i as u64),
            (Some(start), false) => {
                out.push((start, i as u64 - 1));
                on = None;
            }
            _ => {}
        }
    }
    if let (true, Some(start)) = (ended, on) {
        out.push((start, data.len() as u64 - 1));
    }
    out
}

/// Adds the trigger of [`ref_trigger`] to `g`.
fn trigger(g: &mut Graph, x: &Stream<i64>, level: i64) -> Stream<(u64, u64)> {
    g.flat_map_with_state_and_end(
        "trigger",
        x,
        (0u64, None::<u64>),
        move |v: &i64, (i, on)| match (on, *v > level) {
            (None, true) => (None, (i + 1, Some(i))),
            (Some(start), false) => (Some((start, i - 1)), (i + 1, None)),
            _ => (None, (i + 1, on)),
        },
        |(i, on)| on.map(|start| (start, i - 1)),
    )
}

/// Non-decreasing timestamps with values.
fn timed_data() -> impl Strategy<Value = Vec<(u64, i32)>> {
    prop::collection::vec((0u64..8, -1000i32..1000), 0..80).prop_map(|v| {
        let mut t = 0;
        v.into_iter()
            .map(|(gap, x)| {
                t += gap;
                (t, x)
            })
            .collect()
    })
}

/// Every aggregate of `Rolling`.
const AGGREGATES: [Rolling; 9] = [
    Rolling::Count,
    Rolling::Sum,
    Rolling::Mean,
    Rolling::Min,
    Rolling::Max,
    Rolling::Variance,
    Rolling::SampleVariance,
    Rolling::StdDev,
    Rolling::SampleStdDev,
];

/// The values of a rolling aggregate over `data` as `f64`, one batch: the reference for the
/// integer and timed forms (the `f64` operator itself is checked against a naive recomputation
/// in `prop_windows.rs`).
fn ref_rolling(data: &[f64], w: usize, agg: Rolling) -> Vec<f64> {
    let mut g = Graph::new("reference");
    let x = g.input::<f64>("x");
    let r = g.rolling("r", &x, w, agg);
    let out = g.collect("out", &r);
    let mut h = Harness::new(g).expect("graph builds");
    h.push(&x, data.iter().copied()).expect("push");
    h.finish().expect("finish");
    out.values()
}

/// `f64`s compared bit for bit (NaN included).
fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn skip_and_take_match_reference(data in data(), chunks in chunks(), n in 0usize..90, cap in 1usize..10) {
        single(
            &data, &chunks, cap,
            |g, x| {
                let s = g.skip("skip", x, n);
                let t = g.take("take", x, n);
                collected(vec![g.collect("skipped", &s), g.collect("taken", &t)])
            },
            |d, _| vec![d[n.min(d.len())..].to_vec(), d[..n.min(d.len())].to_vec()],
        )?;
    }

    /// `take` then `skip` (and the other way round) line two streams up like slicing does.
    #[test]
    fn skip_then_take_is_a_slice(data in data(), chunks in chunks(), a in 0usize..40, b in 0usize..40) {
        single(
            &data, &chunks, 4,
            |g, x| {
                let s = g.skip("skip", x, a);
                let st = g.take("take", &s, b);
                collected(vec![g.collect("out", &st)])
            },
            |d, _| {
                let start = a.min(d.len());
                vec![d[start..(a + b).min(d.len())].to_vec()]
            },
        )?;
    }

    #[test]
    fn flat_map_with_state_and_end_matches_reference(data in data(), chunks in chunks(), level in -20i64..40) {
        single(
            &data, &chunks, 8,
            |g, x| {
                let t = trigger(g, x, level);
                collected(vec![g.collect("out", &t)])
            },
            |d, ended| vec![ref_trigger(d, level, ended)],
        )?;
    }

    #[test]
    fn map_with_state_and_end_matches_reference(data in data(), chunks in chunks()) {
        single(
            &data, &chunks, 8,
            |g, x| {
                // Running total, then (at the end) the count of elements, negated as a marker.
                let s = g.map_with_state_and_end(
                    "totals", x, (0i64, 0i64),
                    |v: &i64, (sum, n)| (sum + v, (sum + v, n + 1)),
                    |(_, n)| Some(-1000 - n),
                );
                collected(vec![g.collect("out", &s)])
            },
            |d, ended| {
                let mut sum = 0;
                let mut out: Vec<i64> = d.iter().map(|v| { sum += v; sum }).collect();
                if ended {
                    out.push(-1000 - d.len() as i64);
                }
                vec![out]
            },
        )?;
    }

    #[test]
    fn split_either_and_split3_match_reference(data in data(), chunks in chunks(), cap in 1usize..10) {
        let either = |v: &i64| if v % 2 == 0 { Either::Left(*v) } else { Either::Right(format!("odd {v}")) };
        let three = |v: &i64| match v.rem_euclid(3) {
            0 => OneOf3::First(*v),
            1 => OneOf3::Second(*v > 0),
            _ => OneOf3::Third((*v as f64) / 2.0),
        };
        single(
            &data, &chunks, cap,
            |g, x| {
                // Every output as a string, to compare them in one vector.
                let (even, odd) = g.split_either("either", x, either);
                let (zero, one, two) = g.split3("three", x, three);
                let streams = [
                    g.map("s0", &even, |v: &i64| v.to_string()),
                    odd,
                    g.map("s2", &zero, |v: &i64| v.to_string()),
                    g.map("s3", &one, |v: &bool| v.to_string()),
                    g.map("s4", &two, |v: &f64| v.to_string()),
                ];
                collected(streams.iter().enumerate().map(|(i, s)| g.collect(&format!("out{i}"), s)).collect())
            },
            |d, _| {
                let mut out = vec![Vec::new(); 5];
                for v in d {
                    match either(v) {
                        Either::Left(a) => out[0].push(a.to_string()),
                        Either::Right(b) => out[1].push(b),
                    }
                    match three(v) {
                        OneOf3::First(a) => out[2].push(a.to_string()),
                        OneOf3::Second(b) => out[3].push(b.to_string()),
                        OneOf3::Third(c) => out[4].push(c.to_string()),
                    }
                }
                out
            },
        )?;
    }

    /// An integer stream gives, bit for bit, what the same values as `f64` give, whatever the
    /// batches: `i64`, `u64`, `i32`, `u32`, `bool`.
    #[test]
    fn rolling_over_integers_equals_rolling_over_f64(
        data in prop::collection::vec(0i64..1_000_000, 0..80),
        chunks in chunks(),
        w in 1usize..10,
        which in 0usize..9,
    ) {
        let agg = AGGREGATES[which];
        let as_f64: Vec<f64> = data.iter().map(|&v| v as f64).collect();
        let want = bits(&ref_rolling(&as_f64, w, agg));
        let flags: Vec<bool> = data.iter().map(|v| v % 3 == 0).collect();
        let want_flags = bits(&ref_rolling(&flags.iter().map(|&b| f64::from(u8::from(b))).collect::<Vec<_>>(), w, agg));
        single(
            &data, &chunks, 4,
            |g, x| {
                let i64s = g.rolling("i64", x, w, agg);
                let u = g.map("to_u64", x, |v: &i64| *v as u64);
                let u64s = g.rolling("u64", &u, w, agg);
                let i = g.map("to_i32", x, |v: &i64| *v as i32);
                let i32s = g.rolling("i32", &i, w, agg);
                let u = g.map("to_u32", x, |v: &i64| *v as u32);
                let u32s = g.rolling("u32", &u, w, agg);
                let b = g.map("to_bool", x, |v: &i64| v % 3 == 0);
                let bools = g.rolling("bool", &b, w, agg);
                let outs = [i64s, u64s, i32s, u32s, bools];
                let outs: Vec<_> = outs.iter().enumerate().map(|(k, s)| g.collect(&format!("out{k}"), s)).collect();
                Box::new(move || outs.iter().map(|o| bits(&o.values())).collect())
            },
            |d, _| {
                let n = (d.len() + 1).saturating_sub(w);
                let mut out = vec![want[..n].to_vec(); 4];
                out.push(want_flags[..n].to_vec());
                out
            },
        )?;
    }

    /// `rolling_timed` emits the aggregates of `rolling` over the values, each with the
    /// timestamp of the element that completed its window.
    #[test]
    fn rolling_timed_keeps_the_timestamps(
        data in timed_data(),
        chunks in chunks(),
        w in 1usize..10,
        which in 0usize..9,
    ) {
        let agg = AGGREGATES[which];
        let values: Vec<f64> = data.iter().map(|&(_, v)| f64::from(v)).collect();
        let want: Vec<(u64, u64)> = data
            .iter()
            .skip(w - 1)
            .zip(ref_rolling(&values, w, agg))
            .map(|(&(t, _), a)| (t, a.to_bits()))
            .collect();
        let want_max: Vec<(u64, u64)> = data
            .iter()
            .skip(w - 1)
            .zip(ref_rolling(&values, w, Rolling::Max))
            .map(|(&(t, _), a)| (t, a.to_bits()))
            .collect();
        single(
            &data, &chunks, 4,
            |g, x| {
                let r = g.rolling_timed("timed", x, w, agg);
                let m = g.rolling_timed_with("timed_with", x, RollingMax::new(w));
                let outs = [g.collect("out", &r), g.collect("out_with", &m)];
                Box::new(move || {
                    outs.iter()
                        .map(|o| o.values().into_iter().map(|(t, a)| (t, a.to_bits())).collect())
                        .collect()
                })
            },
            |d, _| {
                let n = (d.len() + 1).saturating_sub(w);
                vec![want[..n].to_vec(), want_max[..n].to_vec()]
            },
        )?;
    }

    /// `to_file_with` writes one formatted line per element, whatever the batches.
    #[test]
    fn to_file_with_writes_one_formatted_line_per_element(
        data in prop::collection::vec((0u64..10_000, -50i32..50), 0..60),
        chunks in chunks(),
    ) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let want: String = data.iter().map(|(t, v)| format!("{t};{v}\n")).collect();
        for (label, sizes) in [("random batches", chunks.clone()), ("one batch", vec![usize::MAX])] {
            // A file per run: `to_file_with` appends.
            let path = dir.path().join(format!("{label}.csv"));
            let mut g = Graph::new("file");
            g.set_default_capacity(8);
            let x = g.input::<(u64, i32)>("x");
            g.to_file_with("csv", &x, &path, |(t, v): &(u64, i32)| format!("{t};{v}"));
            let mut h = Harness::new(g).expect("graph builds");
            let mut pushed = 0;
            let mut sizes = sizes.iter().cycle();
            while pushed < data.len() {
                let n = (*sizes.next().expect("not empty")).min(data.len() - pushed);
                h.push(&x, data[pushed..pushed + n].iter().copied()).expect("push");
                h.run().expect("run");
                pushed += n;
            }
            h.finish().expect("finish");
            let got = std::fs::read_to_string(&path).expect("the file exists");
            prop_assert_eq!(&got, &want, "{}", label);
        }
    }
}

/// `take` reads on after its `n` elements: with connections of 2, a source of 100,000
/// elements runs to its end (a `take` that stopped reading would leave its writer blocked, and
/// the run would fail as stalled).
#[test]
fn take_never_holds_back_its_writer() {
    let mut g = Graph::new("take_then_nothing");
    g.set_default_capacity(2);
    let s = g.source_iter("samples", 0..100_000u64);
    let first = g.take("first", &s, 3);
    let out = g.collect("out", &first);
    let m = g.run().expect("the run ends");
    assert_eq!(out.values(), [0, 1, 2]);
    assert_eq!(m.stream("samples.out").expect("counted").elements, 100_000);
}

/// A drain ([`Running::stop`](iotstream::Running::stop)) ends the input, so the `_and_end`
/// forms still emit their last word: the number of elements seen, after all of them.
#[test]
fn end_is_emitted_after_a_drain() {
    let mut g = Graph::new("drained");
    let mut n = 0u64;
    let s = g.source(
        "endless",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            out.extend(n..n + max as u64);
            n += max as u64;
            Ok(true)
        },
    );
    let tagged = g.map_with_state_and_end(
        "count",
        &s,
        0u64,
        |v: &u64, seen| (Either::Left(*v), seen + 1),
        |seen| Some(Either::Right(seen)),
    );
    let out = g.collect("out", &tagged);
    let running = g.start().expect("starts");
    while out.len() < 1000 {
        std::thread::sleep(Duration::from_millis(5));
    }
    running.stop();
    running.join().expect("the run ends normally");
    let got = out.values();
    let (last, readings) = got.split_last().expect("something was emitted");
    assert_eq!(*last, Either::Right(readings.len() as u64));
    for (i, r) in readings.iter().enumerate() {
        assert_eq!(*r, Either::Left(i as u64));
    }
}

/// `end` is not called when the application fails: no last word after an error.
#[test]
fn end_is_not_emitted_when_the_run_fails() {
    let mut g = Graph::new("failing");
    let s = g.source_iter("readings", ["1".to_string(), "x".into()]);
    let n = g.try_map("parse", &s, |v: &String| v.parse::<i64>());
    let counted =
        g.map_with_state_and_end("count", &n, 0i64, |v: &i64, k| (*v, k + 1), |k| Some(-k));
    let out = g.collect("out", &counted);
    let err = g.run().expect_err("the parse fails");
    assert_eq!(err.agent(), Some("parse"));
    assert!(!out.values().contains(&-1), "got {:?}", out.values());
}

/// A file that cannot be created is an error naming the agent and the file.
#[test]
fn to_file_with_reports_the_file_it_cannot_create() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("no_such_dir").join("out.csv");
    let mut g = Graph::new("bad_path");
    let s = g.source_iter("pairs", [(1u64, 2.5f64)]);
    g.to_file_with("csv", &s, &path, |(t, v): &(u64, f64)| format!("{t},{v}"));
    let err = g.run().expect_err("the directory does not exist");
    assert_eq!(err.agent(), Some("csv"));
    assert!(err.to_string().contains("no_such_dir"), "{err}");
}

/// STA/LTA as in ObsPy's `classic_sta_lta`, built from operators: the short-term mean is
/// skipped by the difference of lengths so that both means end at the same sample, and the
/// trigger's last "off" comes at the end of the stream.
#[test]
fn sta_lta_lines_up_and_closes_the_last_trigger() {
    let (nsta, nlta) = (2usize, 5usize);
    // Quiet, an event, quiet, and an event still going at the last sample.
    let samples: Vec<i64> = vec![1, -1, 1, -1, 1, -1, 9, -9, 8, 1, -1, 1, -1, 1, -1, 1, 7, -8];
    let mut g = Graph::new("sta_lta");
    let x = g.source_iter("counts", samples.clone());
    let energy = g.map("energy", &x, |v: &i64| v * v);
    let sta = g.rolling("sta", &energy, nsta, Rolling::Mean);
    let lta = g.rolling("lta", &energy, nlta, Rolling::Mean);
    let sta = g.skip("line_up", &sta, nlta - nsta);
    let ratio = g.zip_map("ratio", &[sta, lta], |v: &[&f64]| v[0] / v[1]);
    let events = g.flat_map_with_state_and_end(
        "trigger",
        &ratio,
        (nlta as u64 - 1, None::<u64>),
        |r: &f64, (i, on)| match (on, *r > 1.5) {
            (None, true) => (None, (i + 1, Some(i))),
            (Some(start), false) => (Some((start, i - 1)), (i + 1, None)),
            _ => (None, (i + 1, on)),
        },
        |(i, on)| on.map(|start| (start, i - 1)),
    );
    let out = g.collect("out", &events);
    g.run().expect("runs");

    // The same by hand: ratio at sample i (i ≥ nlta − 1) over windows ending at i.
    let e: Vec<f64> = samples.iter().map(|v| (v * v) as f64).collect();
    let mean = |i: usize, n: usize| e[i + 1 - n..=i].iter().sum::<f64>() / n as f64;
    let above: Vec<bool> = (nlta - 1..e.len())
        .map(|i| mean(i, nsta) / mean(i, nlta) > 1.5)
        .collect();
    let mut want = Vec::new();
    let mut on = None;
    for (k, &a) in above.iter().enumerate() {
        let i = (k + nlta - 1) as u64;
        match (on, a) {
            (None, true) => on = Some(i),
            (Some(s), false) => {
                want.push((s, i - 1));
                on = None;
            }
            _ => {}
        }
    }
    let last = (e.len() - 1) as u64;
    assert!(on.is_some(), "the test's data must end inside an event");
    want.push((on.expect("checked"), last));
    assert_eq!(out.values(), want);
    assert_eq!(want.len(), 2);
}
