//! Property tests: every window operator gives, after every run, exactly what a plain reference
//! implementation gives for the input pushed so far, whatever the batch sizes and connection
//! capacities; and the same input pushed as one batch gives the same result.

use std::fmt::Debug;
use std::sync::{Arc, Mutex};

use iotstream::ops::rolling::{
    Rolling, RollingAggregate, RollingCount, RollingMax, RollingMean, RollingMin, RollingSum,
    RollingVariance,
};
use iotstream::ops::timed::TimedWindow;
use iotstream::{Element, Graph, Harness, Stream};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;

/// Reads an operator's outputs so far.
type Reader<U> = Box<dyn Fn() -> Vec<Vec<U>>>;

/// Windows of `data` by IoTPy's rule: window k is `data[k*step .. k*step + size]`, full only.
fn ref_windows<T: Clone>(data: &[T], size: usize, step: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut k = 0;
    while k * step + size <= data.len() {
        out.push(data[k * step..k * step + size].to_vec());
        k += 1;
    }
    out
}

/// Windows of several inputs advanced together: as many as the shortest input allows.
fn ref_merged<T: Clone>(data: &[Vec<T>], size: usize, step: usize) -> Vec<Vec<Vec<T>>> {
    let per: Vec<Vec<Vec<T>>> = data.iter().map(|d| ref_windows(d, size, step)).collect();
    let n = per.iter().map(Vec::len).min().unwrap_or(0);
    (0..n)
        .map(|k| per.iter().map(|w| w[k].clone()).collect())
        .collect()
}

/// Timed windows by the definition: window k covers [t0 + kT, t0 + kT + D); it is emitted, if
/// not empty, once the largest timestamp seen is at least its end.
fn ref_timed<V: Clone>(data: &[(u64, V)], w: TimedWindow) -> Vec<(u64, Vec<(u64, V)>)> {
    let Some(&(t_max, _)) = data.last() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut k = 0;
    while w.start + k * w.step + w.duration <= t_max {
        let (start, end) = (w.start + k * w.step, w.start + k * w.step + w.duration);
        let inside: Vec<_> = data
            .iter()
            .filter(|(t, _)| start <= *t && *t < end)
            .cloned()
            .collect();
        if !inside.is_empty() {
            out.push((end, inside));
        }
        k += 1;
    }
    out
}

/// Every aggregate of `Rolling`, with the struct that computes it.
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

/// A fresh struct computing `agg` over `w` values (standard deviations as the square root of
/// the variance structs).
fn aggregate(agg: Rolling, w: usize) -> Box<dyn FnMut(f64) -> Option<f64>> {
    fn boxed<A: RollingAggregate>(mut a: A, sqrt: bool) -> Box<dyn FnMut(f64) -> Option<f64>> {
        Box::new(move |x| a.push(x).map(|v| if sqrt { v.sqrt() } else { v }))
    }
    match agg {
        Rolling::Count => boxed(RollingCount::new(w), false),
        Rolling::Sum => boxed(RollingSum::new(w), false),
        Rolling::Mean => boxed(RollingMean::new(w), false),
        Rolling::Min => boxed(RollingMin::new(w), false),
        Rolling::Max => boxed(RollingMax::new(w), false),
        Rolling::Variance => boxed(RollingVariance::population(w), false),
        Rolling::SampleVariance => boxed(RollingVariance::sample(w), false),
        Rolling::StdDev => boxed(RollingVariance::population(w), true),
        Rolling::SampleStdDev => boxed(RollingVariance::sample(w), true),
    }
}

/// The aggregate recomputed from scratch over one window, the plain way, and how far from it
/// a correct incremental result may be (rounding, relative to the window's magnitude).
fn naive(agg: Rolling, w: &[f64]) -> (f64, f64) {
    let n = w.len() as f64;
    let sum: f64 = w.iter().sum();
    let abs: f64 = w.iter().filter(|x| x.is_finite()).map(|x| x.abs()).sum();
    let any_nan = w.iter().any(|x| x.is_nan());
    let extreme = |max: bool| {
        if any_nan {
            f64::NAN
        } else if max {
            w.iter().copied().fold(f64::NEG_INFINITY, f64::max)
        } else {
            w.iter().copied().fold(f64::INFINITY, f64::min)
        }
    };
    let variance = |div: f64| {
        if w.iter().any(|x| !x.is_finite()) {
            return (f64::NAN, 0.0);
        }
        let mean = sum / n;
        let m2: f64 = w.iter().map(|x| (x - mean) * (x - mean)).sum();
        (m2 / div, 1e-9 * m2 / div + 1e-12 * (mean * mean + 1.0))
    };
    match agg {
        Rolling::Count => (w.iter().filter(|x| !x.is_nan()).count() as f64, 0.0),
        Rolling::Sum => (sum, 1e-9 * abs),
        Rolling::Mean => (sum / n, 1e-9 * abs / n),
        Rolling::Min => (extreme(false), 0.0),
        Rolling::Max => (extreme(true), 0.0),
        Rolling::Variance => variance(n),
        Rolling::SampleVariance => variance(n - 1.0),
        Rolling::StdDev => {
            let (v, tol) = variance(n);
            (v.sqrt(), tol.sqrt())
        }
        Rolling::SampleStdDev => {
            let (v, tol) = variance(n - 1.0);
            (v.sqrt(), tol.sqrt())
        }
    }
}

/// Equal, or both NaN, or both finite and within `tol`.
fn close(got: f64, want: f64, tol: f64) -> bool {
    (got.is_nan() && want.is_nan())
        || got == want
        || (got.is_finite() && want.is_finite() && (got - want).abs() <= tol)
}

/// Sensor-like readings with repeated values, rare glitches and rare non-finite values.
fn reading() -> impl Strategy<Value = f64> {
    prop_oneof![
        20 => -1000.0f64..1000.0,
        4 => (-5i32..5).prop_map(f64::from),
        1 => prop_oneof![Just(1e12), Just(-3e11)],
        1 => prop_oneof![Just(f64::NAN), Just(f64::INFINITY), Just(f64::NEG_INFINITY)],
    ]
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
/// (cycled), runs after each push and compares with `expect(prefix)`; then does it again with
/// the whole input as one batch.
fn single<T, U>(
    data: &[T],
    chunks: &[usize],
    capacity: usize,
    build: impl Fn(&mut Graph, &Stream<T>) -> Reader<U>,
    expect: impl Fn(&[T]) -> Vec<Vec<U>>,
) -> Result<(), TestCaseError>
where
    T: Element,
    U: Element + PartialEq + Debug,
{
    let mut g = Graph::new("prop_single");
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
            expect(&data[..pushed]),
            &format!("after {pushed} elements"),
        )?;
    }
    h.finish().expect("finish");
    check(read(), expect(data), "after finish")?;

    let mut g = Graph::new("prop_single_one_batch");
    let x = g.input::<T>("x");
    let read = build(&mut g, &x);
    let mut h = Harness::new(g).expect("graph builds");
    h.push(&x, data.iter().cloned()).expect("push");
    h.run().expect("run");
    check(read(), expect(data), "one batch")?;
    h.finish().expect("finish");
    Ok(())
}

/// Like [`single`] for several inputs: `schedule` says which input gets the next chunk and how
/// big it is (cycled; inputs already fully pushed are passed over).
fn many<U>(
    data: &[Vec<i64>],
    schedule: &[(usize, usize)],
    capacity: usize,
    build: impl Fn(&mut Graph, &[Stream<i64>]) -> Reader<U>,
    expect: impl Fn(&[Vec<i64>]) -> Vec<Vec<U>>,
) -> Result<(), TestCaseError>
where
    U: Element + PartialEq + Debug,
{
    let k = data.len();
    let mut g = Graph::new("prop_many");
    g.set_default_capacity(capacity);
    let xs: Vec<Stream<i64>> = (0..k).map(|i| g.input::<i64>(&format!("x{i}"))).collect();
    let read = build(&mut g, &xs);
    let mut h = Harness::new(g).expect("graph builds");
    let mut pushed = vec![0; k];
    let mut steps = schedule.iter().cycle();
    while pushed.iter().zip(data).any(|(p, d)| *p < d.len()) {
        let &(which, size) = steps.next().expect("schedule is not empty");
        // The first input at or after `which` that still has data.
        let i = (0..k)
            .map(|j| (which + j) % k)
            .find(|&i| pushed[i] < data[i].len())
            .expect("some input has data");
        let n = size.min(data[i].len() - pushed[i]);
        h.push(&xs[i], data[i][pushed[i]..pushed[i] + n].iter().copied())
            .expect("push");
        h.run().expect("run");
        pushed[i] += n;
        let prefix: Vec<Vec<i64>> = data
            .iter()
            .zip(&pushed)
            .map(|(d, &p)| d[..p].to_vec())
            .collect();
        check(
            read(),
            expect(&prefix),
            &format!("after {pushed:?} elements"),
        )?;
    }
    h.finish().expect("finish");
    check(read(), expect(data), "after finish")?;

    let mut g = Graph::new("prop_many_one_batch");
    let xs: Vec<Stream<i64>> = (0..k).map(|i| g.input::<i64>(&format!("x{i}"))).collect();
    let read = build(&mut g, &xs);
    let mut h = Harness::new(g).expect("graph builds");
    for (x, d) in xs.iter().zip(data) {
        h.push(x, d.iter().copied()).expect("push");
    }
    h.run().expect("run");
    check(read(), expect(data), "one batch")?;
    h.finish().expect("finish");
    Ok(())
}

fn collected<U: Element>(c: Vec<iotstream::Collected<U>>) -> Reader<U> {
    Box::new(move || c.iter().map(|c| c.values()).collect())
}

fn data() -> impl Strategy<Value = Vec<i64>> {
    prop::collection::vec(-50i64..50, 0..80)
}

fn chunks() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..9, 1..6)
}

/// Size, step, and extra capacity beyond the size.
fn shape() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..7, 1usize..9, 0usize..4)
}

fn inputs(
    k: std::ops::Range<usize>,
) -> impl Strategy<Value = (Vec<Vec<i64>>, Vec<(usize, usize)>)> {
    k.prop_flat_map(|k| {
        (
            prop::collection::vec(prop::collection::vec(-50i64..50, 0..50), k),
            prop::collection::vec((0..k, 1usize..9), 1..6),
        )
    })
}

/// Non-decreasing timestamps (gaps of 0 to 7, sometimes a long one) with small values.
fn timed_data() -> impl Strategy<Value = Vec<(u64, i32)>> {
    prop::collection::vec((prop_oneof![8 => 0u64..8, 1 => 8u64..60], -9i32..10), 0..60).prop_map(
        |v| {
            let mut t = 0;
            v.into_iter()
                .map(|(gap, x)| {
                    t += gap;
                    (t, x)
                })
                .collect()
        },
    )
}

fn timed_shape() -> impl Strategy<Value = TimedWindow> {
    (1u64..15, 1u64..15, 0u64..12).prop_map(|(d, s, t0)| TimedWindow::new(d, s).starting_at(t0))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn map_window_matches_reference(data in data(), chunks in chunks(), (size, step, extra) in shape()) {
        single(
            &data, &chunks, size + extra,
            |g, x| {
                let w = g.map_window("w", x, size, step, |w: &[i64]| w.to_vec());
                collected(vec![g.collect("out", &w)])
            },
            |d| vec![ref_windows(d, size, step)],
        )?;
    }

    #[test]
    fn map_window_with_state_matches_reference(data in data(), chunks in chunks(), (size, step, extra) in shape()) {
        single(
            &data, &chunks, size + extra,
            |g, x| {
                let s = g.map_window_with_state("w", x, size, step, 0i64, |w: &[i64], total| {
                    let t = total + w.iter().sum::<i64>();
                    (t, t)
                });
                collected(vec![g.collect("out", &s)])
            },
            |d| {
                let mut total = 0;
                vec![ref_windows(d, size, step).iter().map(|w| { total += w.iter().sum::<i64>(); total }).collect()]
            },
        )?;
    }

    #[test]
    fn sink_window_matches_reference(data in data(), chunks in chunks(), (size, step, extra) in shape()) {
        single(
            &data, &chunks, size + extra,
            |g, x| {
                let seen: Arc<Mutex<Vec<Vec<i64>>>> = Arc::default();
                let log = Arc::clone(&seen);
                g.sink_window("w", x, size, step, move |w: &[i64]| log.lock().unwrap().push(w.to_vec()));
                Box::new(move || vec![seen.lock().unwrap().iter().map(|w| w.iter().sum::<i64>()).collect()])
            },
            |d| vec![ref_windows(d, size, step).iter().map(|w| w.iter().sum::<i64>()).collect()],
        )?;
    }

    #[test]
    fn split_window_matches_reference(data in data(), chunks in chunks(), (size, step, extra) in shape()) {
        let f = |w: &[i64]| [w.iter().sum::<i64>(), w[0], w[w.len() - 1]];
        single(
            &data, &chunks, size + extra,
            |g, x| {
                let outs = g.split_window("w", x, size, step, 3, f);
                collected(outs.iter().enumerate().map(|(i, o)| g.collect(&format!("out{i}"), o)).collect())
            },
            |d| {
                let ws = ref_windows(d, size, step);
                (0..3).map(|j| ws.iter().map(|w| f(w)[j]).collect()).collect()
            },
        )?;
    }

    #[test]
    fn split_window_opt_matches_reference(data in data(), chunks in chunks(), (size, step, extra) in shape()) {
        let f = |w: &[i64]| {
            let s = w.iter().sum::<i64>();
            [(s % 2 == 0).then_some(s), (w[0] > 0).then_some(w[0])]
        };
        single(
            &data, &chunks, size + extra,
            |g, x| {
                let outs = g.split_window_opt("w", x, size, step, 2, f);
                collected(outs.iter().enumerate().map(|(i, o)| g.collect(&format!("out{i}"), o)).collect())
            },
            |d| {
                let ws = ref_windows(d, size, step);
                (0..2).map(|j| ws.iter().filter_map(|w| f(w)[j]).collect()).collect()
            },
        )?;
    }

    #[test]
    fn merge_window_matches_reference((data, schedule) in inputs(1..4), (size, step, extra) in shape()) {
        many(
            &data, &schedule, size + extra,
            |g, xs| {
                let m = g.merge_window("w", xs, size, step, |ws: &[&[i64]]| ws.iter().map(|w| w.to_vec()).collect::<Vec<_>>());
                collected(vec![g.collect("out", &m)])
            },
            |d| vec![ref_merged(d, size, step)],
        )?;
    }

    #[test]
    fn multi_window_matches_reference((data, schedule) in inputs(1..4), (size, step, extra) in shape()) {
        let f = |ws: &[&[i64]]| vec![ws.iter().map(|w| w.iter().sum::<i64>()).sum::<i64>(), ws[ws.len() - 1][0]];
        many(
            &data, &schedule, size + extra,
            |g, xs| {
                let outs = g.multi_window("w", xs, size, step, 2, f);
                collected(outs.iter().enumerate().map(|(i, o)| g.collect(&format!("out{i}"), o)).collect())
            },
            |d| {
                let ws = ref_merged(d, size, step);
                (0..2).map(|j| ws.iter().map(|w| {
                    let slices: Vec<&[i64]> = w.iter().map(Vec::as_slice).collect();
                    f(&slices)[j]
                }).collect()).collect()
            },
        )?;
    }

    #[test]
    fn multi_window_opt_matches_reference((data, schedule) in inputs(2..4), (size, step, extra) in shape()) {
        let f = |ws: &[&[i64]]| [(ws[0][0] > ws[1][0]).then_some(ws[0][0]), (ws[0][0] <= ws[1][0]).then_some(ws[1][0])];
        many(
            &data, &schedule, size + extra,
            |g, xs| {
                let outs = g.multi_window_opt("w", xs, size, step, 2, f);
                collected(outs.iter().enumerate().map(|(i, o)| g.collect(&format!("out{i}"), o)).collect())
            },
            |d| {
                let ws = ref_merged(d, size, step);
                (0..2).map(|j| ws.iter().filter_map(|w| {
                    let slices: Vec<&[i64]> = w.iter().map(Vec::as_slice).collect();
                    f(&slices)[j]
                }).collect()).collect()
            },
        )?;
    }

    #[test]
    fn timed_window_matches_reference(data in timed_data(), chunks in chunks(), shape in timed_shape(), cap in 60usize..64) {
        single(
            &data, &chunks, cap,
            |g, x| {
                let w = g.timed_window("w", x, shape, |w: &[(u64, i32)]| w.to_vec());
                collected(vec![g.collect("out", &w)])
            },
            |d| vec![ref_timed(d, shape)],
        )?;
    }

    #[test]
    fn rolling_structs_match_naive_recomputation(
        xs in prop::collection::vec(reading(), 0..300),
        w in prop_oneof![1usize..6, 6usize..40],
    ) {
        for agg in AGGREGATES {
            let mut a = aggregate(agg, w);
            for (i, &x) in xs.iter().enumerate() {
                let got = a(x);
                if i + 1 < w {
                    prop_assert_eq!(got, None, "{:?} before the window is full", agg);
                    continue;
                }
                let window = &xs[i + 1 - w..=i];
                let (want, tol) = naive(agg, window);
                let got = got.expect("a value once the window is full");
                prop_assert!(close(got, want, tol), "{:?} W={} at {}: got {}, naive {} (tol {}) over {:?}", agg, w, i, got, want, tol, window);
            }
        }
    }

    #[test]
    fn rolling_operator_is_batch_independent_and_matches_naive(
        xs in prop::collection::vec(reading(), 0..120),
        chunks in chunks(),
        w in 1usize..12,
        which in 0usize..9,
    ) {
        let agg = AGGREGATES[which];
        let run = |chunks: &[usize]| {
            let mut g = Graph::new("rolling");
            let x = g.input::<f64>("x");
            let r = g.rolling("r", &x, w, agg);
            let out = g.collect("out", &r);
            let mut h = Harness::new(g).expect("graph builds");
            let mut pushed = 0;
            let mut sizes = chunks.iter().cycle();
            while pushed < xs.len() {
                let n = (*sizes.next().expect("chunks is not empty")).min(xs.len() - pushed);
                h.push(&x, xs[pushed..pushed + n].iter().copied()).expect("push");
                h.run().expect("run");
                pushed += n;
                assert_eq!(out.len(), (pushed + 1).saturating_sub(w), "one value per element once full");
            }
            h.finish().expect("finish");
            out.values()
        };
        let batched = run(&chunks);
        let whole = run(&[usize::MAX]);
        // The same values bit for bit (NaN included): batching never changes a result.
        let bits = |v: &[f64]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        prop_assert_eq!(bits(&batched), bits(&whole));
        for (k, &got) in batched.iter().enumerate() {
            let (want, tol) = naive(agg, &xs[k..k + w]);
            prop_assert!(close(got, want, tol), "{:?} window {}: got {}, naive {}", agg, k, got, want);
        }
    }

    /// `rolling(Mean)` equals `map_window(W, 1, mean)` element for element, within 1e-9
    /// relative, on temperature-like readings.
    #[test]
    fn rolling_mean_equals_map_window_mean(
        xs in prop::collection::vec(-40.0f64..60.0, 0..200),
        chunks in chunks(),
        w in 1usize..30,
    ) {
        let mut g = Graph::new("mean_vs_window");
        let x = g.input::<f64>("temperature");
        let rolling = g.rolling("rolling_mean", &x, w, Rolling::Mean);
        let window = g.map_window("window_mean", &x, w, 1, |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64);
        let rolling = g.collect("rolling", &rolling);
        let window = g.collect("window", &window);
        let mut h = Harness::new(g).expect("graph builds");
        let mut pushed = 0;
        let mut sizes = chunks.iter().cycle();
        while pushed < xs.len() {
            let n = (*sizes.next().expect("chunks is not empty")).min(xs.len() - pushed);
            h.push(&x, xs[pushed..pushed + n].iter().copied()).expect("push");
            h.run().expect("run");
            pushed += n;
        }
        h.finish().expect("finish");
        let (r, m) = (rolling.values(), window.values());
        prop_assert_eq!(r.len(), m.len());
        for (a, b) in r.iter().zip(&m) {
            // Relative to the readings' scale (a mean near 0 has no meaningful relative error).
            let scale = a.abs().max(b.abs()).max(1.0);
            prop_assert!((a - b).abs() <= 1e-9 * scale, "{} vs {}", a, b);
        }
    }
}
