//! Count and timed windows: IoTPy's reference cases, edge cases and the errors that name their
//! agent. Batch-independence is proved in `prop_windows.rs`.

use iotstream::{Error, Graph, Harness};

fn problems(err: Error) -> Vec<String> {
    match err {
        Error::Graph { problems, .. } => problems,
        other => panic!("expected a graph error, got {other}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Count windows

/// C5: count window sum, W=3 S=2 and W=4 S=4, over 0..=15.
#[test]
fn c5_count_window_sum() {
    let mut g = Graph::new("c5");
    let x = g.input::<i64>("x");
    let a = g.map_window("sum_3_2", &x, 3, 2, |w: &[i64]| w.iter().sum::<i64>());
    let b = g.map_window("sum_4_4", &x, 4, 4, |w: &[i64]| w.iter().sum::<i64>());
    let out_a = g.collect("out_a", &a);
    let out_b = g.collect("out_b", &b);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..=15).unwrap();
    h.run().unwrap();
    assert_eq!(out_a.values(), [3, 9, 15, 21, 27, 33, 39]);
    assert_eq!(out_b.values(), [6, 22, 38, 54]);
    h.finish().unwrap();
    // An incomplete last window is not emitted at the end of the stream.
    assert_eq!(out_a.values(), [3, 9, 15, 21, 27, 33, 39]);
}

/// C5 again, one element per run: the windows do not depend on the batching.
#[test]
fn c5_one_element_at_a_time() {
    let mut g = Graph::new("c5_single");
    let x = g.input::<i64>("x");
    let a = g.map_window("sum_3_2", &x, 3, 2, |w: &[i64]| w.iter().sum::<i64>());
    let out = g.collect("out", &a);
    let mut h = Harness::new(g).unwrap();
    let mut seen = Vec::new();
    for v in 0..=15 {
        h.push(&x, [v]).unwrap();
        h.run().unwrap();
        seen.push(out.len());
    }
    assert_eq!(out.values(), [3, 9, 15, 21, 27, 33, 39]);
    // A window is emitted as soon as its last element arrives: after elements 2, 4, 6, …
    assert_eq!(seen, [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7]);
}

/// Step larger than size: the elements between windows are skipped, even when the gap
/// straddles batches.
#[test]
fn step_larger_than_size_skips_across_batches() {
    let mut g = Graph::new("gaps");
    let x = g.input::<u32>("x");
    let w = g.map_window("pairs", &x, 2, 5, |w: &[u32]| w.to_vec());
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    // Windows: [0,1], [5,6], [10,11], [15,16]
    h.push(&x, [0, 1, 2]).unwrap(); // window [0,1]; 2 is before the next window
    h.run().unwrap();
    assert_eq!(out.values(), [vec![0, 1]]);
    h.push(&x, [3]).unwrap();
    h.run().unwrap();
    h.push(&x, [4, 5]).unwrap();
    h.run().unwrap();
    assert_eq!(out.len(), 1);
    h.push(&x, [6, 7, 8, 9, 10, 11, 12, 13, 14, 15]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [vec![0, 1], vec![5, 6], vec![10, 11]]);
    h.push(&x, [16]).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [vec![0, 1], vec![5, 6], vec![10, 11], vec![15, 16]]
    );
    h.finish().unwrap();
}

/// With step > size and a capacity of exactly `size`, the skipped elements are consumed as
/// they arrive, so the writer is never blocked.
#[test]
fn step_larger_than_size_with_minimal_capacity_runs_to_the_end() {
    let mut g = Graph::new("tight");
    g.set_default_capacity(3);
    let x = g.source_iter("samples", 0..100u64);
    let w = g.map_window("first_of_ten", &x, 3, 10, |w: &[u64]| w[0]);
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    h.finish().unwrap();
    assert_eq!(out.values(), (0..100).step_by(10).collect::<Vec<u64>>());
}

#[test]
fn map_window_with_state_threads_the_state() {
    let mut g = Graph::new("state");
    let x = g.input::<i32>("x");
    let w = g.map_window_with_state("numbered_max", &x, 2, 1, 0usize, |w: &[i32], n| {
        ((n, *w.iter().max().unwrap()), n + 1)
    });
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [3, 1, 4]).unwrap();
    h.run().unwrap();
    h.push(&x, [1, 5]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(0, 3), (1, 4), (2, 4), (3, 5)]);
}

#[test]
fn merge_window_waits_for_every_input() {
    let mut g = Graph::new("merge");
    let a = g.input::<i32>("a");
    let b = g.input::<i32>("b");
    let m = g.merge_window("sum_both", &[a, b], 2, 2, |ws: &[&[i32]]| {
        ws.iter().map(|w| w.iter().sum::<i32>()).collect::<Vec<_>>()
    });
    let out = g.collect("out", &m);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [1, 2, 3, 4, 5, 6]).unwrap();
    h.push(&b, [10, 20, 30]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [vec![3, 30]]);
    h.push(&b, [40]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [vec![3, 30], vec![7, 70]]);
    h.finish().unwrap();
}

/// When one input of a merge ends, no window can follow: the other input's elements are
/// dropped instead of blocking its writer forever.
#[test]
fn merge_window_drains_when_an_input_ends() {
    let mut g = Graph::new("merge_end");
    g.set_default_capacity(4);
    let short = g.source_iter("short", 0..5u32);
    let long = g.source_iter("long", 0..1000u32);
    let m = g.merge_window("pairs", &[short, long], 2, 2, |ws: &[&[u32]]| {
        ws[0][0] + ws[1][1]
    });
    let out = g.collect("out", &m);
    let mut h = Harness::new(g).unwrap();
    h.finish().unwrap();
    assert_eq!(out.values(), [1, 5]);
}

#[test]
fn split_window_sends_value_j_to_output_j() {
    let mut g = Graph::new("split");
    let x = g.input::<i32>("x");
    let outs = g.split_window("min_max", &x, 3, 3, 2, |w: &[i32]| {
        [*w.iter().min().unwrap(), *w.iter().max().unwrap()]
    });
    let lo = g.collect("lo", &outs[0]);
    let hi = g.collect("hi", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [5, 1, 9, 2, 8, 3, 7]).unwrap();
    h.run().unwrap();
    assert_eq!(lo.values(), [1, 2]);
    assert_eq!(hi.values(), [9, 8]);
}

#[test]
fn split_window_opt_none_skips_that_output() {
    let mut g = Graph::new("split_opt");
    let x = g.input::<i32>("x");
    let outs = g.split_window_opt("even_odd_sum", &x, 2, 2, 2, |w: &[i32]| {
        let s = w[0] + w[1];
        [(s % 2 == 0).then_some(s), (s % 2 != 0).then_some(s)]
    });
    let even = g.collect("even", &outs[0]);
    let odd = g.collect("odd", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1, 1, 1, 2, 2, 2, 3, 4]).unwrap();
    h.run().unwrap();
    assert_eq!(even.values(), [2, 4]);
    assert_eq!(odd.values(), [3, 7]);
}

#[test]
fn split_window_wrong_length_is_an_agent_error() {
    let mut g = Graph::new("split_bad");
    let x = g.input::<i32>("x");
    let outs = g.split_window("three_for_two", &x, 2, 2, 2, |w: &[i32]| vec![w[0]; 3]);
    let _a = g.collect("a", &outs[0]);
    let _b = g.collect("b", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [1, 2]).unwrap();
    let err = h.run().unwrap_err();
    assert_eq!(err.agent(), Some("three_for_two"));
    assert!(err.to_string().contains("3 values for 2 outputs"), "{err}");
}

#[test]
fn multi_window_zips_windows_and_splits_results() {
    let mut g = Graph::new("multi");
    let a = g.input::<i64>("a");
    let b = g.input::<i64>("b");
    let outs = g.multi_window("sum_and_diff", &[a, b], 2, 1, 2, |ws: &[&[i64]]| {
        let (sa, sb) = (ws[0].iter().sum::<i64>(), ws[1].iter().sum::<i64>());
        vec![sa + sb, sa - sb]
    });
    let sum = g.collect("sum", &outs[0]);
    let diff = g.collect("diff", &outs[1]);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [1, 2, 3]).unwrap();
    h.push(&b, [10, 20]).unwrap();
    h.run().unwrap();
    assert_eq!(sum.values(), [33]);
    h.push(&b, [30]).unwrap();
    h.run().unwrap();
    assert_eq!(sum.values(), [33, 55]);
    assert_eq!(diff.values(), [-27, -45]);
}

#[test]
fn multi_window_wrong_length_is_an_agent_error() {
    let mut g = Graph::new("multi_bad");
    let a = g.input::<i64>("a");
    let outs = g.multi_window("too_few", &[a], 1, 1, 3, |ws: &[&[i64]]| vec![ws[0][0]]);
    for (i, o) in outs.iter().enumerate() {
        g.collect(&format!("c{i}"), o);
    }
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [7]).unwrap();
    let err = h.run().unwrap_err();
    assert_eq!(err.agent(), Some("too_few"));
    assert!(err.to_string().contains("1 values for 3 outputs"), "{err}");
}

#[test]
fn sink_window_sees_each_window() {
    use std::sync::{Arc, Mutex};
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = Arc::clone(&seen);
    let mut g = Graph::new("sink");
    let x = g.input::<u8>("x");
    g.sink_window("log", &x, 2, 3, move |w: &[u8]| {
        log.lock().unwrap().push(w.to_vec())
    });
    let mut h = Harness::new(g).unwrap();
    h.push(&x, 0..9).unwrap();
    h.run().unwrap();
    h.finish().unwrap();
    assert_eq!(*seen.lock().unwrap(), [vec![0, 1], vec![3, 4], vec![6, 7]]);
}

#[test]
fn zero_size_or_step_is_rejected_at_build_naming_the_agent() {
    let mut g = Graph::new("zeros");
    let x = g.input::<i32>("x");
    let a = g.map_window("empty_windows", &x, 0, 1, |w: &[i32]| w.len());
    let b = g.map_window("standing_still", &x, 2, 0, |w: &[i32]| w.len());
    let outs = g.split_window("no_outputs", &x, 2, 2, 0, |_w: &[i32]| Vec::<i32>::new());
    let _ = outs;
    g.collect("a", &a);
    g.collect("b", &b);
    let p = problems(Harness::new(g).err().expect("a graph error"));
    assert!(
        p.iter()
            .any(|m| m.contains("'empty_windows'") && m.contains("size")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("'standing_still'") && m.contains("step")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("'no_outputs'") && m.contains("n_outputs")),
        "{p:?}"
    );
}

#[test]
fn merge_window_without_inputs_is_rejected() {
    let mut g = Graph::new("no_inputs");
    let m = g.merge_window(
        "lonely",
        &[] as &[iotstream::Stream<i32>],
        2,
        1,
        |ws: &[&[i32]]| ws.len(),
    );
    g.collect("out", &m);
    let p = problems(Harness::new(g).err().expect("a graph error"));
    assert!(p.iter().any(|m| m.contains("'lonely'")), "{p:?}");
}

#[test]
fn capacity_smaller_than_window_is_rejected_at_build() {
    let mut g = Graph::new("small");
    g.set_default_capacity(8);
    let x = g.input::<f64>("accelerometer");
    let w = g.map_window("fft_64", &x, 64, 32, |w: &[f64]| w.len());
    g.collect("out", &w);
    let p = problems(Harness::new(g).err().expect("a graph error"));
    assert!(
        p.iter()
            .any(|m| m.contains("fft_64") && m.contains("capacity 8") && m.contains("64")),
        "{p:?}"
    );
}

#[test]
fn merge_capacity_smaller_than_window_is_rejected_at_build() {
    let mut g = Graph::new("small_merge");
    g.set_default_capacity(2);
    let a = g.input::<f64>("a");
    let b = g.input::<f64>("b");
    let w = g.merge_window("pairs_of_3", &[a, b], 3, 1, |ws: &[&[f64]]| ws.len());
    g.collect("out", &w);
    let p = problems(Harness::new(g).err().expect("a graph error"));
    assert_eq!(
        p.iter()
            .filter(|m| m.contains("pairs_of_3") && m.contains("capacity 2"))
            .count(),
        2,
        "{p:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Timed windows

use iotstream::ops::timed::TimedWindow;

/// C10: timed window, identity, D=10 T=10.
#[test]
fn c10_timed_window_identity() {
    let mut g = Graph::new("c10");
    let x = g.input::<(u64, char)>("x");
    let w = g.timed_window(
        "identity",
        &x,
        TimedWindow::new(10, 10),
        |w: &[(u64, char)]| w.to_vec(),
    );
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    h.push(
        &x,
        [
            (1, 'a'),
            (8, 'b'),
            (12, 'c'),
            (14, 'd'),
            (32, 'e'),
            (50, 'f'),
        ],
    )
    .unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (10, vec![(1, 'a'), (8, 'b')]),
            (20, vec![(12, 'c'), (14, 'd')]),
            (40, vec![(32, 'e')]),
        ]
    );
    h.finish().unwrap();
    assert_eq!(out.len(), 3, "the window holding (50, f) never completes");
}

/// C10 one element per run: each window appears when the first element at or after its end
/// arrives.
#[test]
fn c10_one_element_at_a_time() {
    let mut g = Graph::new("c10_single");
    let x = g.input::<(u64, char)>("x");
    let w = g.timed_window(
        "count",
        &x,
        TimedWindow::tumbling(10),
        |w: &[(u64, char)]| w.len(),
    );
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    let mut seen = Vec::new();
    for e in [
        (1, 'a'),
        (8, 'b'),
        (12, 'c'),
        (14, 'd'),
        (32, 'e'),
        (50, 'f'),
    ] {
        h.push(&x, [e]).unwrap();
        h.run().unwrap();
        seen.push(out.values());
    }
    assert_eq!(
        seen,
        [
            vec![],
            vec![],
            vec![(10, 2)],
            vec![(10, 2)],
            vec![(10, 2), (20, 2)],
            vec![(10, 2), (20, 2), (40, 1)],
        ]
    );
}

#[test]
fn timed_window_sliding_sampling_and_start() {
    let input = [(0, 1), (3, 2), (5, 4), (9, 8), (10, 16), (14, 32), (21, 64)];
    let run = |shape: TimedWindow| {
        let mut g = Graph::new("shapes");
        let x = g.input::<(u64, u32)>("x");
        let w = g.timed_window("sum", &x, shape, |w: &[(u64, u32)]| {
            w.iter().map(|e| e.1).sum::<u32>()
        });
        let out = g.collect("out", &w);
        let mut h = Harness::new(g).unwrap();
        h.push(&x, input).unwrap();
        h.run().unwrap();
        out.values()
    };
    // Sliding: [0,10) [5,15) [10,20) [15,25 incomplete)
    assert_eq!(run(TimedWindow::new(10, 5)), [(10, 15), (15, 60), (20, 48)]);
    // Sampling: [0,2) [6,8) [12,14) [18,20): elements at 3, 5, 9, 10, 14 fall in no window
    assert_eq!(run(TimedWindow::new(2, 6)), [(2, 1)]);
    // Starting at 4: elements at 0 and 3 are skipped; [4,9) [9,14) [14,19)
    assert_eq!(
        run(TimedWindow::tumbling(5).starting_at(4)),
        [(9, 4), (14, 24), (19, 32)]
    );
}

/// A gap of 10^18 time units is jumped over, not walked window by window, and windows that
/// would end past `u64::MAX` never complete (no overflow). Windows are [k, k + 3).
#[test]
fn timed_window_jumps_over_long_gaps_and_huge_timestamps() {
    let mut g = Graph::new("gaps");
    let x = g.input::<(u64, u8)>("x");
    let w = g.timed_window("count", &x, TimedWindow::new(3, 1), |w: &[(u64, u8)]| {
        w.len()
    });
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    h.push(
        &x,
        [
            (0, 0),
            (1_000_000_000_000_000_000, 1),
            (u64::MAX - 1, 2),
            (u64::MAX, 3),
        ],
    )
    .unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [
            (3, 1),
            (1_000_000_000_000_000_001, 1),
            (1_000_000_000_000_000_002, 1),
            (1_000_000_000_000_000_003, 1),
            (u64::MAX, 1)
        ]
    );
    h.finish().unwrap();
}

#[test]
fn decreasing_timestamp_is_an_agent_error_naming_both() {
    for batches in [
        vec![vec![(1, 0.5), (7, 0.1), (5, 0.2)]],
        vec![vec![(1, 0.5), (7, 0.1)], vec![(5, 0.2)]],
    ] {
        let mut g = Graph::new("late");
        let x = g.input::<(u64, f64)>("x");
        let w = g.timed_window(
            "vibration_rms",
            &x,
            TimedWindow::tumbling(10),
            |w: &[(u64, f64)]| w.len(),
        );
        g.collect("out", &w);
        let mut h = Harness::new(g).unwrap();
        let mut result = Ok(());
        for b in batches {
            h.push(&x, b).unwrap();
            result = h.run();
            if result.is_err() {
                break;
            }
        }
        let err = result.unwrap_err();
        assert_eq!(err.agent(), Some("vibration_rms"));
        let msg = err.to_string();
        assert!(msg.contains("5 arrived after 7"), "{msg}");
    }
}

#[test]
fn equal_timestamps_are_accepted() {
    let mut g = Graph::new("ties");
    let x = g.input::<(u64, u8)>("x");
    let w = g.timed_window(
        "count",
        &x,
        TimedWindow::tumbling(2),
        |w: &[(u64, u8)]| w.len(),
    );
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(1, 0), (1, 1)]).unwrap();
    h.run().unwrap();
    h.push(&x, [(1, 2), (2, 3), (2, 4)]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(2, 3)]);
}

/// Elements are consumed once no future window can hold them: a capacity of a few elements is
/// enough for a long stream whose windows each hold at most three.
#[test]
fn timed_window_memory_stays_bounded() {
    let mut g = Graph::new("bounded");
    g.set_default_capacity(4);
    let x = g.source_iter("ticks", (0..10_000u64).map(|t| (t, t)));
    let w = g.timed_window("sum", &x, TimedWindow::new(3, 2), |w: &[(u64, u64)]| {
        w.iter().map(|e| e.1).sum::<u64>()
    });
    let out = g.collect("out", &w);
    let mut h = Harness::new(g).unwrap();
    h.finish().unwrap();
    let v = out.values();
    // windows [2k, 2k + 3) for 2k + 3 <= 9999
    assert_eq!(v.len(), 4999);
    assert_eq!(v[0], (3, 3));
    assert_eq!(v[1], (5, 9));
}

#[test]
fn zero_duration_or_step_is_rejected_at_build_naming_the_agent() {
    let mut g = Graph::new("zeros");
    let x = g.input::<(u64, f64)>("x");
    let a = g.timed_window(
        "instant",
        &x,
        TimedWindow::new(0, 1),
        |w: &[(u64, f64)]| w.len(),
    );
    let b = g.timed_window(
        "frozen",
        &x,
        TimedWindow::new(1, 0),
        |w: &[(u64, f64)]| w.len(),
    );
    g.collect("a", &a);
    g.collect("b", &b);
    let p = problems(Harness::new(g).err().expect("a graph error"));
    assert!(
        p.iter()
            .any(|m| m.contains("'instant'") && m.contains("duration")),
        "{p:?}"
    );
    assert!(
        p.iter()
            .any(|m| m.contains("'frozen'") && m.contains("step")),
        "{p:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Rolling aggregates (property tests against recomputation are in prop_windows.rs)

use iotstream::ops::rolling::{Rolling, RollingAggregate, RollingMean, RollingVariance};

#[test]
fn rolling_aligns_with_map_window() {
    let mut g = Graph::new("align");
    let x = g.input::<f64>("temperature");
    let r = g.rolling("mean_3", &x, 3, Rolling::Mean);
    let m = g.map_window("window_3", &x, 3, 1, |w: &[f64]| {
        w.iter().sum::<f64>() / 3.0
    });
    let r = g.collect("r", &r);
    let m = g.collect("m", &m);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [21.0, 24.0]).unwrap();
    h.run().unwrap();
    assert!(r.is_empty() && m.is_empty());
    h.push(&x, [27.0, 30.0, 18.0]).unwrap();
    h.run().unwrap();
    assert_eq!(r.values(), [24.0, 27.0, 25.0]);
    assert_eq!(r.values(), m.values());
}

#[test]
fn rolling_every_aggregate_on_a_small_window() {
    let xs = [4.0, 8.0, 6.0, f64::NAN, 2.0, 2.0, 2.0];
    let run = |agg: Rolling| {
        let mut g = Graph::new("all");
        let x = g.input::<f64>("x");
        let r = g.rolling("r", &x, 3, agg);
        let out = g.collect("out", &r);
        let mut h = Harness::new(g).unwrap();
        h.push(&x, xs).unwrap();
        h.finish().unwrap();
        out.values()
    };
    let nan = f64::NAN;
    let same = |a: Vec<f64>, b: &[f64]| {
        assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
        for (x, y) in a.iter().zip(b) {
            assert!(
                (x.is_nan() && y.is_nan()) || (x - y).abs() < 1e-12,
                "{a:?} vs {b:?}"
            );
        }
    };
    same(run(Rolling::Count), &[3.0, 2.0, 2.0, 2.0, 3.0]);
    same(run(Rolling::Sum), &[18.0, nan, nan, nan, 6.0]);
    same(run(Rolling::Mean), &[6.0, nan, nan, nan, 2.0]);
    same(run(Rolling::Min), &[4.0, nan, nan, nan, 2.0]);
    same(run(Rolling::Max), &[8.0, nan, nan, nan, 2.0]);
    same(run(Rolling::Variance), &[8.0 / 3.0, nan, nan, nan, 0.0]);
    same(run(Rolling::SampleVariance), &[4.0, nan, nan, nan, 0.0]);
    same(
        run(Rolling::StdDev),
        &[(8.0f64 / 3.0).sqrt(), nan, nan, nan, 0.0],
    );
    same(run(Rolling::SampleStdDev), &[2.0, nan, nan, nan, 0.0]);
}

/// A glitch of 10^12 among readings near 20 leaves no trace once it is out of the window.
#[test]
fn rolling_recovers_exactly_after_a_glitch() {
    let mut mean = RollingMean::new(4);
    let mut var = RollingVariance::population(4);
    let readings = [20.1, 20.2, 1e12, 20.3, 20.4, 20.5, 20.6, 20.7, 20.8];
    for (i, &x) in readings.iter().enumerate() {
        let (got_m, got_v) = (mean.push(x), var.push(x));
        if i < 6 {
            continue; // the glitch (index 2) is in the window until index 5
        }
        let window = &readings[i - 3..=i];
        let m = window.iter().sum::<f64>() / 4.0;
        let v = window.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / 4.0;
        let (got_m, got_v) = (got_m.unwrap(), got_v.unwrap());
        assert!(
            (got_m - m).abs() <= 1e-12 * m,
            "at {i}: mean {got_m} vs {m}"
        );
        assert!(
            (got_v - v).abs() <= 1e-9 * v,
            "at {i}: variance {got_v} vs {v}"
        );
    }
}

/// Finite values whose sum or squared deviations overflow f64 give what plain arithmetic
/// gives (inf), never NaN or a variance of 0, and the aggregates recover as soon as they leave
/// the window (they stayed NaN for up to a window more, and the variance of [7, 1e308] was 0).
#[test]
fn rolling_overflow_gives_inf_and_recovers_when_it_leaves() {
    let run = |agg: Rolling, xs: &[f64]| {
        let mut g = Graph::new("overflow");
        let x = g.input::<f64>("x");
        let r = g.rolling("r", &x, 4, agg);
        let out = g.collect("out", &r);
        let mut h = Harness::new(g).unwrap();
        h.push(&x, xs.iter().copied()).unwrap();
        h.finish().unwrap();
        out.values()
    };
    let xs = [1.0, 1.0, 1.0, 1e308, 1e308, 1.0, 1.0, 1.0, 1.0, 1.0];
    let inf = f64::INFINITY;
    assert_eq!(
        run(Rolling::Sum, &xs),
        [1e308, inf, inf, inf, 1e308, 4.0, 4.0]
    );
    assert_eq!(
        run(Rolling::Mean, &xs),
        [2.5e307, inf, inf, inf, 2.5e307, 1.0, 1.0]
    );
    let var = run(Rolling::Variance, &xs);
    assert_eq!(var[1..4], [inf, inf, inf], "{var:?}");
    assert_eq!(var[5..], [0.0, 0.0], "{var:?}");
    assert!(var[0] > 1e300 && var[4] > 1e300, "{var:?}");
    let var = run(Rolling::Variance, &[7.0, 1e308, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(var[..2], [inf, inf], "{var:?}");
    assert_eq!(var[2], 1.25, "{var:?}");
    // Equal values whose sum overflows (their squared deviations do not): the variance is 0,
    // not ∞ (the shift was taken as sum / n, an infinite sum made every deviation infinite).
    let big = [1e308; 10];
    for agg in [
        Rolling::Variance,
        Rolling::SampleVariance,
        Rolling::StdDev,
        Rolling::SampleStdDev,
    ] {
        assert_eq!(run(agg, &big), [0.0; 7], "{agg:?}");
    }
    let var = run(
        Rolling::Variance,
        &[1e308, 1e308, 1e308, 1e308, 1.0, 2.0, 3.0, 4.0],
    );
    assert_eq!(var[0], 0.0, "{var:?}");
    assert_eq!(var[1..4], [inf, inf, inf], "{var:?}");
    assert_eq!(var[4], 1.25, "{var:?}");
}

/// A rolling window far larger than the stream allocates for the values that came, not for the
/// window: a window of 4e9 over 10 values ran out of memory at once (the process aborted with
/// "memory allocation of 32000000000 bytes failed", naming no agent). The window here is 2^58
/// values on a 64-bit target (2^61 bytes, beyond any address space, below `isize::MAX`), so
/// that reserving it fails on every machine, overcommit or not. (On a 32-bit target, 2^26
/// values: 2^29 bytes, which some machines can reserve; there the test checks the results.)
#[test]
fn a_huge_rolling_window_allocates_for_the_values_not_the_window() {
    for agg in [
        Rolling::Mean,
        Rolling::Max,
        Rolling::Variance,
        Rolling::Count,
    ] {
        let mut g = Graph::new("huge_window");
        let x = g.input::<f64>("x");
        let r = g.rolling("r", &x, 1 << (usize::BITS - 6), agg);
        let out = g.collect("out", &r);
        let mut h = Harness::new(g).unwrap();
        h.push(&x, (0..10).map(f64::from)).unwrap();
        h.finish().unwrap();
        assert!(out.values().is_empty(), "{agg:?}");
    }
}

#[test]
fn rolling_zero_window_is_rejected_at_build_naming_the_agent() {
    let mut g = Graph::new("zero");
    let x = g.input::<f64>("x");
    let r = g.rolling("no_window", &x, 0, Rolling::Max);
    g.collect("out", &r);
    let p = problems(Harness::new(g).err().expect("a graph error"));
    assert!(
        p.iter()
            .any(|m| m.contains("'no_window'") && m.contains("window")),
        "{p:?}"
    );
}

#[test]
#[should_panic(expected = "at least 1")]
fn rolling_struct_with_zero_window_panics() {
    let _ = RollingMean::new(0);
}
