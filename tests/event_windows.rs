//! Event-time windows and keys: property tests against plain reference implementations (input
//! permuted within the out-of-orderness bound, random batches; beyond the bound, exactly the
//! late elements dropped), and the behaviours one by one: final windows, drop_partial,
//! corrections, early windows on a quiet input (the harness's clock, no sleeps), sessions,
//! 10,000 keys, the key bound, the buffer bound, keyed state.

use std::time::Duration;

use iotstream::ops::event::Watermarks;
use iotstream::ops::event_window::{EventWindow, Firing, KeyedWindow, Window, WindowKind};
use iotstream::{Collected, Error, Graph, Harness, Stream};
use proptest::prelude::*;

type El = (u64, u32);
type Out = Window<Vec<El>>;

/// The window's elements as `f` must see them: by time, equal times by postcard encoding.
fn canonical(mut elems: Vec<El>) -> Vec<El> {
    elems.sort_by_cached_key(|e| (e.0, postcard::to_allocvec(&e.1).unwrap()));
    elems
}

/// Windows `(start, end)` of a grid kind that contain `t`.
fn grid_windows(size: u64, step: u64, t: u64) -> Vec<(u64, u64)> {
    (0..=t / step)
        .map(|k| (k * step, k * step + size))
        .filter(|&(s, e)| s <= t && t < e)
        .collect()
}

/// Every non-empty window of `data` (any order) by the definitions, each with its elements.
fn ref_windows(kind: WindowKind, data: &[El]) -> Vec<(u64, u64, Vec<El>)> {
    let mut out: Vec<(u64, u64, Vec<El>)> = Vec::new();
    match kind {
        WindowKind::Tumbling { size } | WindowKind::Sliding { size, .. } => {
            let step = match kind {
                WindowKind::Sliding { step, .. } => step,
                _ => size,
            };
            let mut all: Vec<(u64, u64)> = data
                .iter()
                .flat_map(|e| grid_windows(size, step, e.0))
                .collect();
            all.sort();
            all.dedup();
            for (s, e) in all {
                let inside = data
                    .iter()
                    .filter(|x| s <= x.0 && x.0 < e)
                    .copied()
                    .collect();
                out.push((s, e, canonical(inside)));
            }
        }
        WindowKind::Session { gap } => {
            let sorted = canonical(data.to_vec());
            for x in sorted {
                match out.last_mut() {
                    Some((_, end, elems)) if x.0 < *end => {
                        *end = (*end).max(x.0 + gap);
                        elems.push(x);
                    }
                    _ => out.push((x.0, x.0 + gap, vec![x])),
                }
            }
        }
    }
    out.sort_by_key(|w| (w.1, w.0));
    out
}

/// What the operator must emit for `data` (none late) with watermarks `bounded(d)`: windows
/// the last watermark passed are on time, the others final.
fn ref_output(kind: WindowKind, data: &[El], d: u64) -> Vec<Out> {
    let wm = data
        .iter()
        .map(|e| e.0)
        .max()
        .map_or(0, |m| m.saturating_sub(d));
    ref_windows(kind, data)
        .into_iter()
        .map(|(start, end, value)| Window {
            start,
            end,
            value,
            firing: if end <= wm {
                Firing::OnTime
            } else {
                Firing::Final
            },
        })
        .collect()
}

/// Runs `data` through watermarks(bounded(d)) and an event window that returns its elements,
/// pushed in chunks of `chunks` (cycled) with a run after each.
fn run_windows(
    spec: EventWindow,
    data: &[El],
    d: u64,
    chunks: &[usize],
) -> (Vec<Out>, Vec<El>, u64) {
    let mut g = Graph::new("prop_event");
    let x = g.input::<El>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(d));
    let w = g.event_window("w", &timed, spec, |e: &[El]| e.to_vec());
    let windows = g.collect("windows", &w.windows);
    let late = g.collect("late", &w.late);
    let mut h = Harness::new(g).unwrap();
    let mut pushed = 0;
    let mut sizes = chunks.iter().cycle();
    while pushed < data.len() {
        let n = (*sizes.next().unwrap()).min(data.len() - pushed).max(1);
        h.push(&x, data[pushed..pushed + n].iter().copied())
            .unwrap();
        h.run().unwrap();
        pushed += n;
    }
    h.finish().unwrap();
    (windows.values(), late.values(), w.late_count.get())
}

fn kind() -> impl Strategy<Value = WindowKind> {
    prop_oneof![
        (1u64..30).prop_map(|size| WindowKind::Tumbling { size }),
        (1u64..30, 1u64..30).prop_map(|(size, step)| WindowKind::Sliding { size, step }),
        (1u64..20).prop_map(|gap| WindowKind::Session { gap }),
    ]
}

fn spec_of(kind: WindowKind) -> EventWindow {
    match kind {
        WindowKind::Tumbling { size } => EventWindow::tumbling(size),
        WindowKind::Sliding { size, step } => EventWindow::sliding(size, step),
        WindowKind::Session { gap } => EventWindow::session(gap),
    }
}

/// Sorted timestamps (with repeats) and values with multi-byte encodings, then the same
/// elements permuted within `d`: each sorted by `t + jitter`, `jitter ≤ d`.
fn disorder() -> impl Strategy<Value = (Vec<El>, Vec<El>, u64)> {
    (0u64..15).prop_flat_map(|d| {
        prop::collection::vec((0u64..200, 0u32..400, 0u64..=d), 0..70).prop_map(move |v| {
            let mut sorted: Vec<El> = v.iter().map(|&(t, x, _)| (t, x)).collect();
            sorted.sort();
            let mut jittered = v.clone();
            jittered.sort_by_key(|&(t, _, j)| t + j);
            let permuted = jittered.iter().map(|&(t, x, _)| (t, x)).collect();
            (sorted, permuted, d)
        })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// With an allowed lateness and input beyond its bound (so that there are late elements,
    /// corrections, and sessions that take in emitted ones), the windows and the late elements
    /// do not depend on the batches; within the bound, a lateness changes nothing.
    #[test]
    fn with_allowed_lateness_the_output_does_not_depend_on_batches(
        data in prop::collection::vec((0u64..100, 0u32..5), 0..40),
        d in 0u64..6,
        lateness in 0u64..15,
        kind in kind(),
        chunks in prop::collection::vec(1usize..6, 1..5),
    ) {
        let spec = spec_of(kind).allowed_lateness(lateness);
        let batched = run_windows(spec, &data, d, &chunks);
        let whole = run_windows(spec, &data, d, &[usize::MAX]);
        prop_assert_eq!(batched, whole);
    }

    #[test]
    fn within_the_bound_a_lateness_changes_nothing(
        (sorted, permuted, d) in disorder(),
        kind in kind(),
        lateness in 1u64..15,
        chunks in prop::collection::vec(1usize..9, 1..6),
    ) {
        let want = ref_output(kind, &sorted, d);
        let (got, late, _) = run_windows(spec_of(kind).allowed_lateness(lateness), &permuted, d, &chunks);
        prop_assert_eq!(&got, &want);
        prop_assert!(late.is_empty());
    }

    #[test]
    fn within_the_bound_the_output_is_the_reference_whatever_the_order_and_batches(
        (sorted, permuted, d) in disorder(),
        kind in kind(),
        chunks in prop::collection::vec(1usize..9, 1..6),
    ) {
        let spec = spec_of(kind);
        let want = ref_output(kind, &sorted, d);
        let (got, late, n_late) = run_windows(spec, &permuted, d, &chunks);
        prop_assert_eq!(&got, &want, "permuted, chunks {:?}", chunks);
        prop_assert!(late.is_empty());
        prop_assert_eq!(n_late, 0);
        let (one, _, _) = run_windows(spec, &sorted, d, &[usize::MAX]);
        prop_assert_eq!(&one, &want, "sorted, one batch");
    }

    #[test]
    fn beyond_the_bound_exactly_the_late_elements_are_dropped_counted_and_routed(
        data in prop::collection::vec((0u64..200, 0u32..400), 0..70),
        d in 0u64..10,
        grid in prop_oneof![
            (1u64..30).prop_map(|s| (s, s)),
            (1u64..30, 1u64..30),
        ],
        chunks in prop::collection::vec(1usize..9, 1..6),
    ) {
        let (size, step) = grid;
        let kind = if size == step {
            WindowKind::Tumbling { size }
        } else {
            WindowKind::Sliding { size, step }
        };
        // Late: more than d below the highest timestamp before it, and its (first) window
        // ended at or before that watermark.
        let mut max_before: Option<u64> = None;
        let mut kept = Vec::new();
        let mut want_late = Vec::new();
        for &e in &data {
            let wm = max_before.map(|m| m.saturating_sub(d));
            let first_end = grid_windows(size, step, e.0).first().map(|w| w.1);
            match (wm, first_end) {
                (Some(w), Some(end)) if e.0 < w && end <= w => want_late.push(e),
                (_, Some(_)) => kept.push(e),
                (_, None) => {} // in no window
            }
            max_before = Some(max_before.map_or(e.0, |m| m.max(e.0)));
        }
        let wm = data.iter().map(|e| e.0).max().map_or(0, |m| m.saturating_sub(d));
        let want: Vec<Out> = ref_windows(kind, &kept)
            .into_iter()
            .map(|(start, end, value)| Window {
                start,
                end,
                value,
                firing: if end <= wm { Firing::OnTime } else { Firing::Final },
            })
            .collect();
        let (got, late, n_late) = run_windows(spec_of(kind), &data, d, &chunks);
        prop_assert_eq!(&got, &want);
        prop_assert_eq!(&late, &want_late);
        prop_assert_eq!(n_late, want_late.len() as u64);
    }
}

/// What a reader following the docs holds at the end: each window in the order emitted; for
/// sessions, every emitted session supersedes the earlier ones it overlaps (whatever its
/// firing), for the other kinds a `Late` window supersedes the same window. An `OnTime` window
/// supersedes nothing (no `fire_when_idle` here), nor does anything but `Late` for the grid
/// kinds.
fn reconcile(kind: WindowKind, out: &[Out]) -> Result<Vec<(u64, u64, Vec<El>)>, String> {
    let session = matches!(kind, WindowKind::Session { .. });
    let mut cur: Vec<(u64, u64, Vec<El>)> = Vec::new();
    for w in out {
        let replaces = |c: &(u64, u64, Vec<El>)| {
            if session {
                c.0 < w.end && w.start < c.1
            } else {
                (c.0, c.1) == (w.start, w.end)
            }
        };
        let supersedes = w.firing == Firing::Late || (session && w.firing != Firing::OnTime);
        if supersedes {
            cur.retain(|c| !replaces(c));
        } else if let Some(c) = cur.iter().find(|c| replaces(c)) {
            return Err(format!(
                "{:?} [{}, {}) would replace [{}, {})",
                w.firing, w.start, w.end, c.0, c.1
            ));
        }
        cur.push((w.start, w.end, w.value.clone()));
    }
    cur.sort_by_key(|w| (w.1, w.0));
    Ok(cur)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    /// With an allowed lateness and input beyond its bound, a reader that applies the windows
    /// in order as the docs say (corrections supersede) ends with the windows of the elements
    /// that were not late: every accepted element in its windows, none lost to a correction.
    #[test]
    fn reconciled_by_the_docs_the_windows_are_those_of_the_elements_not_late(
        data in prop::collection::vec((0u64..100, 0u32..5), 0..40),
        d in 0u64..6,
        lateness in 0u64..15,
        kind in kind(),
        chunks in prop::collection::vec(1usize..6, 1..5),
    ) {
        let spec = spec_of(kind).allowed_lateness(lateness);
        let (out, late, _) = run_windows(spec, &data, d, &chunks);
        let cur = reconcile(kind, &out).map_err(|e| TestCaseError::fail(format!("{e}: {out:?}")))?;
        let mut kept = data.clone();
        for l in &late {
            let i = kept.iter().position(|x| x == l).expect("a late element came");
            kept.remove(i);
        }
        prop_assert_eq!(cur, ref_windows(kind, &kept));
    }
}

fn win(start: u64, end: u64, value: Vec<El>, firing: Firing) -> Out {
    Window {
        start,
        end,
        value,
        firing,
    }
}

/// A graph: input → watermarks(bounded(d)) → event window returning its elements.
fn graph(spec: EventWindow, d: u64) -> (Harness, Stream<El>, Collected<Out>, Collected<El>) {
    let mut g = Graph::new("event");
    let x = g.input::<El>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(d));
    let w = g.event_window("w", &timed, spec, |e: &[El]| e.to_vec());
    let windows = g.collect("windows", &w.windows);
    let late = g.collect("late", &w.late);
    (Harness::new(g).unwrap(), x, windows, late)
}

#[test]
fn windows_the_watermark_did_not_pass_are_final_at_end_of_stream_or_dropped() {
    let (mut h, x, windows, _) = graph(EventWindow::tumbling(10), 2);
    h.push(&x, [(1, 1), (13, 2), (25, 3)]).unwrap();
    h.run().unwrap();
    assert_eq!(
        windows.values(),
        [
            win(0, 10, vec![(1, 1)], Firing::OnTime),
            win(10, 20, vec![(13, 2)], Firing::OnTime),
        ]
    );
    h.finish().unwrap();
    assert_eq!(
        windows.values()[2..],
        [win(20, 30, vec![(25, 3)], Firing::Final)]
    );

    let (mut h, x, windows, _) = graph(EventWindow::tumbling(10).drop_partial(), 2);
    h.push(&x, [(1, 1), (13, 2), (25, 3)]).unwrap();
    h.finish().unwrap();
    assert_eq!(windows.values().len(), 2, "the partial [20, 30) is dropped");
}

#[test]
fn a_late_element_within_the_allowed_lateness_updates_its_window_and_it_is_emitted_again() {
    let (mut h, x, windows, late) = graph(EventWindow::tumbling(10).allowed_lateness(5), 0);
    h.push(&x, [(2, 1), (12, 2)]).unwrap(); // watermark 12: [0, 10) on time
    h.push(&x, [(7, 3)]).unwrap(); // 12 < 10 + 5: a correction
    h.push(&x, [(16, 4), (8, 5)]).unwrap(); // watermark 16 ≥ 15: [0, 10) is gone; 8 is late
    h.finish().unwrap();
    assert_eq!(
        windows.values(),
        [
            win(0, 10, vec![(2, 1)], Firing::OnTime),
            win(0, 10, vec![(2, 1), (7, 3)], Firing::Late),
            win(10, 20, vec![(12, 2), (16, 4)], Firing::Final),
        ]
    );
    assert_eq!(late.values(), [(8, 5)]);
}

/// A late element that bridges a session already emitted and one still open makes one
/// session of them: it replaces the emitted one, so it is a correction (`Late`) when the
/// watermark passes its end, not a second `OnTime` session covering the first (a reader that
/// counts `OnTime` sessions and reconciles `Late` ones would count [3, 8) twice).
#[test]
fn a_session_that_takes_in_one_already_emitted_is_a_correction() {
    let (mut h, x, windows, late) = graph(EventWindow::session(5).allowed_lateness(20), 0);
    h.push(&x, [(3, 1)]).unwrap();
    h.run().unwrap();
    h.push(&x, [(10, 2)]).unwrap(); // watermark 10: [3, 8) on time; [10, 15) open
    h.run().unwrap();
    h.push(&x, [(7, 3)]).unwrap(); // within the lateness: bridges [3, 8) and [10, 15)
    h.run().unwrap();
    h.push(&x, [(30, 4)]).unwrap(); // watermark 30: [3, 15) closes
    h.finish().unwrap();
    assert_eq!(
        windows.values(),
        [
            win(3, 8, vec![(3, 1)], Firing::OnTime),
            win(3, 15, vec![(3, 1), (7, 3), (10, 2)], Firing::Late),
            win(30, 35, vec![(30, 4)], Firing::Final),
        ]
    );
    assert!(late.values().is_empty());
}

/// The same bridge with the stream ending before the watermark passes [3, 15): the session is
/// `Final`, and (as the docs of `Firing` say for sessions) it supersedes [3, 8), which it
/// holds: a reader keeps the last session of the overlapping ones, whatever its firing.
#[test]
fn a_final_session_that_took_in_an_emitted_one_supersedes_it() {
    let (mut h, x, windows, late) = graph(EventWindow::session(5).allowed_lateness(20), 0);
    for e in [(3, 1), (10, 2), (7, 3)] {
        h.push(&x, [e]).unwrap();
        h.run().unwrap();
    }
    h.finish().unwrap();
    assert_eq!(
        windows.values(),
        [
            win(3, 8, vec![(3, 1)], Firing::OnTime),
            win(3, 15, vec![(3, 1), (7, 3), (10, 2)], Firing::Final),
        ]
    );
    assert!(late.values().is_empty());
}

/// A session stays while a late element that is still accepted can touch it: the element
/// joins it (a correction holding both), instead of forming a session of its own that
/// overlaps it and, read as the correction it is, would drop [3, 8)'s element.
#[test]
fn a_late_element_joins_an_emitted_session_it_touches_while_it_is_accepted() {
    let (mut h, x, windows, late) = graph(EventWindow::session(5).allowed_lateness(20), 0);
    h.push(&x, [(3, 1)]).unwrap();
    h.run().unwrap();
    h.push(&x, [(30, 2)]).unwrap(); // watermark 30: [3, 8) on time
    h.run().unwrap();
    h.push(&x, [(7, 3)]).unwrap(); // 7 + 5 + 20 > 30: accepted, and it touches [3, 8)
    h.finish().unwrap();
    assert_eq!(
        windows.values(),
        [
            win(3, 8, vec![(3, 1)], Firing::OnTime),
            win(3, 12, vec![(3, 1), (7, 3)], Firing::Late),
            win(30, 35, vec![(30, 2)], Firing::Final),
        ]
    );
    assert!(late.values().is_empty());
}

/// An element that touches a session still kept and reaches back before the end of one
/// already dropped is late: merged, it would make a session overlapping the dropped one
/// without its elements.
#[test]
fn an_element_that_would_bridge_to_a_dropped_session_is_late() {
    let (mut h, x, windows, late) = graph(EventWindow::session(10).allowed_lateness(6), 3);
    for e in [(52, 1), (81, 2), (0, 3), (63, 4), (54, 5)] {
        h.push(&x, [e]).unwrap();
        h.run().unwrap();
    }
    h.finish().unwrap();
    // At watermark 78, [52, 62) is dropped (62 + 10 + 6 <= 78); 63 is accepted (63 + 10 + 6
    // > 78) and closed at once; 54 touches [63, 73) but is before 62.
    assert_eq!(
        windows.values(),
        [
            win(52, 62, vec![(52, 1)], Firing::OnTime),
            win(63, 73, vec![(63, 4)], Firing::Late),
            win(81, 91, vec![(81, 2)], Firing::Final),
        ]
    );
    assert_eq!(late.values(), [(0, 3), (54, 5)]);
}

#[test]
fn a_quiet_input_emits_its_open_windows_early_on_the_harness_clock() {
    let quiet = Duration::from_secs(30);
    let (mut h, x, windows, _) = graph(EventWindow::tumbling(10).fire_when_idle(quiet), 0);
    h.push(&x, [(1, 1), (12, 2), (14, 3)]).unwrap();
    h.run().unwrap();
    assert_eq!(windows.values().len(), 1, "[0, 10) on time; [10, 20) open");
    h.advance_clock(Duration::from_secs(29)).unwrap();
    assert_eq!(windows.values().len(), 1, "not quiet long enough");
    h.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(
        windows.values()[1..],
        [win(10, 20, vec![(12, 2), (14, 3)], Firing::Early)]
    );
    h.advance_clock(Duration::from_secs(100)).unwrap();
    assert_eq!(windows.values().len(), 2, "once per quiet period");
    h.push(&x, [(15, 4)]).unwrap();
    h.run().unwrap(); // at 130 s: a new quiet period starts
    h.advance_clock(Duration::from_secs(29)).unwrap();
    assert_eq!(windows.values().len(), 2);
    h.advance_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(
        windows.values()[2..],
        [win(10, 20, vec![(12, 2), (14, 3), (15, 4)], Firing::Early)]
    );
    h.push(&x, [(21, 5)]).unwrap();
    h.run().unwrap();
    assert_eq!(
        windows.values()[3..],
        [win(10, 20, vec![(12, 2), (14, 3), (15, 4)], Firing::OnTime)],
        "a window emitted early is emitted again when it closes"
    );
    h.finish().unwrap();
}

#[test]
fn sessions_close_after_the_gap_and_an_element_between_two_merges_them() {
    let (mut h, x, windows, _) = graph(EventWindow::session(5), 10);
    h.push(&x, [(1, 1), (3, 2), (10, 3), (12, 4)]).unwrap();
    h.run().unwrap();
    assert!(windows.values().is_empty(), "watermark 2: nothing closed");
    h.push(&x, [(6, 5)]).unwrap(); // bridges [1, 8) and [10, 17)
    h.push(&x, [(40, 6)]).unwrap();
    h.finish().unwrap();
    assert_eq!(
        windows.values(),
        [
            win(
                1,
                17,
                vec![(1, 1), (3, 2), (6, 5), (10, 3), (12, 4)],
                Firing::OnTime
            ),
            win(40, 45, vec![(40, 6)], Firing::Final),
        ]
    );
}

#[test]
fn an_input_without_watermarks_is_taken_as_ascending() {
    let mut g = Graph::new("ascending");
    let x = g.input::<El>("x");
    let w = g.event_window("w", &x, EventWindow::tumbling(10), |e: &[El]| e.len());
    let windows = g.collect("windows", &w.windows);
    let late = g.collect("late", &w.late);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(1, 0), (5, 0), (12, 0), (3, 0), (11, 0)])
        .unwrap();
    h.finish().unwrap();
    let values: Vec<_> = windows
        .values()
        .iter()
        .map(|w| (w.end, w.value, w.firing))
        .collect();
    assert_eq!(values, [(10, 2, Firing::OnTime), (20, 2, Firing::Final)]);
    assert_eq!(late.values(), [(3, 0)]);
}

#[test]
fn the_output_carries_watermarks_so_windows_of_windows_close_on_time() {
    let mut g = Graph::new("two_stages");
    let x = g.input::<El>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(0));
    let w = g.event_window("per_10", &timed, EventWindow::tumbling(10), |e: &[El]| {
        e.len() as u32
    });
    // Each window at its start: [0, 10) counts in [0, 30).
    let counts = g.map("at_start", &w.windows, |w: &Window<u32>| (w.start, w.value));
    let w30 = g.event_window(
        "per_30",
        &counts,
        EventWindow::tumbling(30),
        |e: &[El]| e.iter().map(|c| c.1).sum::<u32>(),
    );
    let out = g.collect("out", &w30.windows);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(1, 0), (2, 0), (15, 0), (29, 0), (45, 0)])
        .unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [Window {
            start: 0,
            end: 30,
            value: 4,
            firing: Firing::OnTime
        }],
        "the second stage closed [0, 30) on the first stage's watermark 45, before the end"
    );
    h.finish().unwrap();
}

#[test]
fn keyed_windows_over_10_000_keys_match_the_reference_per_key() {
    type KEl = (u64, (u32, u32));
    let keys = 10_000u32;
    let mut data: Vec<KEl> = Vec::new();
    for round in 0..3u64 {
        for k in 0..keys {
            let t = round * 7 + u64::from(k % 5);
            data.push((t, (k, k ^ round as u32)));
        }
    }
    let mut g = Graph::new("keys");
    let x = g.input::<KEl>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(3));
    let w = g.keyed_event_window(
        "per_key",
        &timed,
        |e: &KEl| e.1 .0,
        EventWindow::tumbling(10),
        |e: &[KEl]| e.iter().map(|x| x.1 .1).collect::<Vec<u32>>(),
    );
    let windows = g.collect("windows", &w.windows);
    let mut h = Harness::new(g).unwrap();
    for chunk in data.chunks(777) {
        h.push(&x, chunk.iter().copied()).unwrap();
        h.run().unwrap();
    }
    h.finish().unwrap();
    // Reference: per key, tumbling(10) windows of its elements; the last watermark is 18 - 3.
    let wm = data.iter().map(|e| e.0).max().unwrap() - 3;
    let mut want: Vec<KeyedWindow<u32, Vec<u32>>> = Vec::new();
    for k in 0..keys {
        let mine: Vec<El> = data
            .iter()
            .filter(|e| e.1 .0 == k)
            .map(|e| (e.0, e.1 .1))
            .collect();
        for (start, end, elems) in ref_windows(WindowKind::Tumbling { size: 10 }, &mine) {
            want.push(KeyedWindow {
                key: k,
                start,
                end,
                value: elems.iter().map(|e| e.1).collect(),
                firing: if end <= wm {
                    Firing::OnTime
                } else {
                    Firing::Final
                },
            });
        }
    }
    want.sort_by_cached_key(|w| (w.end, w.start, postcard::to_allocvec(&w.key).unwrap()));
    let got = windows.values();
    assert_eq!(got.len(), want.len());
    assert_eq!(got, want);
    assert_eq!(w.evicted.get(), 0);
    assert_eq!(w.late_count.get(), 0);
}

#[test]
fn the_key_bound_evicts_the_least_recently_seen_key_and_counts_it() {
    type KEl = (u64, (u32, u32));
    let mut g = Graph::new("evict");
    let x = g.input::<KEl>("x");
    let w = g.keyed_event_window(
        "per_key",
        &x,
        |e: &KEl| e.1 .0,
        EventWindow::tumbling(10_000).max_keys(100),
        |e: &[KEl]| e.len(),
    );
    let windows = g.collect("windows", &w.windows);
    let mut h = Harness::new(g).unwrap();
    // 1000 keys in one window; key 0 comes back often, so it is never the least recent.
    let data: Vec<KEl> = (0..1000u64)
        .flat_map(|i| [(i, (i as u32, 1)), (i, (0, 1))])
        .collect();
    h.push(&x, data).unwrap();
    h.finish().unwrap();
    let got = windows.values();
    assert_eq!(w.evicted.get(), 900, "1000 keys, 100 live");
    let evicted: Vec<_> = got.iter().filter(|w| w.firing == Firing::Evicted).collect();
    assert_eq!(evicted.len(), 900);
    assert!(evicted.iter().all(|w| w.key != 0 && w.value == 1));
    assert_eq!(evicted[0].key, 1, "the least recently seen goes first");
    let finals: Vec<_> = got.iter().filter(|w| w.firing == Firing::Final).collect();
    assert_eq!(finals.len(), 100);
    assert_eq!(
        got.iter().map(|w| w.value).sum::<usize>(),
        2000,
        "nothing lost"
    );

    // Keys whose windows all closed hold nothing: they are not live, nothing is evicted.
    let mut g = Graph::new("closed_keys");
    let x = g.input::<KEl>("x");
    let w = g.keyed_event_window(
        "per_key",
        &x,
        |e: &KEl| e.1 .0,
        EventWindow::tumbling(10).max_keys(1),
        |e: &[KEl]| e.len(),
    );
    let windows = g.collect("windows", &w.windows);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, (0..50u64).map(|i| (i * 100, (i as u32, 0))))
        .unwrap();
    h.finish().unwrap();
    assert_eq!(w.evicted.get(), 0);
    assert_eq!(windows.values().len(), 50);
}

/// A documented limit: eviction forgets a key's emitted windows too, so a correction of the
/// key after it holds only what came after the eviction ([0, 10) Late holds 5, not 1).
#[test]
fn an_evicted_key_starts_afresh_and_a_later_correction_holds_only_what_came_after() {
    for (spec, first, bridged) in [
        (EventWindow::tumbling(10), (0, 10), (0, 10)),
        (EventWindow::session(5), (1, 6), (5, 10)),
    ] {
        let mut g = Graph::new("evict_afresh");
        let x = g.input::<(u64, char)>("x");
        let timed = g.watermarks("timed", &x, Watermarks::bounded(0));
        let w = g.keyed_event_window(
            "w",
            &timed,
            |e: &(u64, char)| e.1,
            spec.allowed_lateness(20).max_keys(1),
            |e: &[(u64, char)]| e.to_vec(),
        );
        let windows = g.collect("windows", &w.windows);
        let mut h = Harness::new(g).unwrap();
        // 'b' evicts 'a' (with [0, 10) / [1, 6) emitted and kept for the lateness); 'a' comes
        // again with 5.
        for e in [(1, 'a'), (12, 'a'), (13, 'b'), (5, 'a')] {
            h.push(&x, [e]).unwrap();
            h.run().unwrap();
        }
        h.finish().unwrap();
        let got: Vec<_> = windows
            .values()
            .into_iter()
            .filter(|w| w.key == 'a' && w.start < 10)
            .map(|w| (w.start, w.end, w.value, w.firing))
            .collect();
        assert_eq!(
            got,
            [
                (first.0, first.1, vec![(1, 'a')], Firing::OnTime),
                (bridged.0, bridged.1, vec![(5, 'a')], Firing::Late),
            ],
            "{spec:?}"
        );
        assert_eq!(w.evicted.get(), 2, "{spec:?}");
    }
}

/// An element whose window would end past `u64::MAX` (a window is `[start, start + size)`)
/// fails the agent, naming its timestamp, with watermarks or without. It used to go into a
/// window whose end was cut to `u64::MAX`, which left it out: it was in no window and not
/// late, and an empty window was emitted.
#[test]
fn an_element_whose_window_would_end_past_the_last_timestamp_is_an_error_naming_it() {
    let near_the_end = u64::MAX - 2;
    for spec in [
        EventWindow::tumbling(10),
        EventWindow::sliding(10, 3),
        EventWindow::session(5),
    ] {
        for timed in [true, false] {
            let mut g = Graph::new("last");
            let x = g.input::<El>("x");
            let input = if timed {
                g.watermarks("timed", &x, Watermarks::bounded(0))
            } else {
                x
            };
            let w = g.event_window("w", &input, spec, |e: &[El]| e.to_vec());
            let windows = g.collect("windows", &w.windows);
            let mut h = Harness::new(g).unwrap();
            h.push(&x, [(5, 1), (near_the_end, 2)]).unwrap();
            let err = h.run().and_then(|()| h.finish()).unwrap_err();
            match &err {
                Error::Agent { agent, cause } => {
                    assert_eq!(agent, "w", "{spec:?}");
                    assert!(
                        cause.contains(&format!("timestamp {near_the_end}")),
                        "{cause}"
                    );
                    assert!(cause.contains("past u64::MAX"), "{cause}");
                }
                other => panic!("{spec:?}: unexpected error {other:?}"),
            }
            // Nothing was emitted that leaves the element out.
            assert!(
                windows
                    .values()
                    .iter()
                    .all(|w| w.end <= 10 && !w.value.is_empty()),
                "{spec:?} {:?}",
                windows.values()
            );
        }
    }
    // A window that ends exactly at u64::MAX holds its elements.
    let (mut h, x, windows, _) = graph(EventWindow::tumbling(5), 0);
    let last_window = u64::MAX - 5;
    h.push(&x, [(last_window, 1), (u64::MAX - 1, 2)]).unwrap();
    h.finish().unwrap();
    assert_eq!(
        windows.values(),
        [win(
            last_window,
            u64::MAX,
            vec![(last_window, 1), (u64::MAX - 1, 2)],
            Firing::Final
        )]
    );
}

#[test]
fn more_buffered_elements_than_the_bound_is_an_error_naming_the_operator_and_the_bound() {
    let (mut h, x, _, _) = graph(EventWindow::tumbling(1_000).max_buffered(5), 0);
    h.push(&x, (0..6u64).map(|t| (t, 0))).unwrap();
    let err = h.run().unwrap_err();
    match &err {
        Error::Agent { agent, cause } => {
            assert_eq!(agent, "w");
            assert!(cause.contains("event window 'w'"), "{cause}");
            assert!(cause.contains("more than 5 elements buffered"), "{cause}");
        }
        other => panic!("unexpected error {other:?}"),
    }

    // Elements leave the buffer when their windows close: the same bound holds a long stream
    // (ascending input: the watermark moves element by element).
    let mut g = Graph::new("bounded_buffer");
    let x = g.input::<El>("x");
    let w = g.event_window(
        "w",
        &x,
        EventWindow::tumbling(5).max_buffered(5),
        |e: &[El]| e.len(),
    );
    let windows = g.collect("windows", &w.windows);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, (0..1000u64).map(|t| (t, 0))).unwrap();
    h.finish().unwrap();
    assert_eq!(windows.values().len(), 200);
    assert!(windows.values().iter().all(|w| w.value == 5));
}

#[test]
fn parameters_of_zero_are_reported_when_the_graph_is_built() {
    let mut g = Graph::new("zeros");
    let x = g.input::<El>("x");
    let _ = g.event_window("a", &x, EventWindow::sliding(0, 0), |e: &[El]| e.len());
    let _ = g.event_window(
        "b",
        &x,
        EventWindow::session(0).max_keys(0),
        |e: &[El]| e.len(),
    );
    let _ = g.event_window(
        "d",
        &x,
        EventWindow::tumbling(10).max_buffered(0),
        |e: &[El]| e.len(),
    );
    // A minute in microseconds slid every microsecond: 60 million windows per element (one
    // element took over 1 GB in 20 s and did not finish its step).
    let _ = g.event_window(
        "e",
        &x,
        EventWindow::sliding(60_000_000, 1),
        |e: &[El]| e.len(),
    );
    // At the bound: accepted.
    let _ = g.event_window("f", &x, EventWindow::sliding(100_000, 1), |e: &[El]| {
        e.len()
    });
    let _ = g.keyed_map_with_state(
        "c",
        &x,
        0,
        |e: &El| e.1,
        |_: &u32| (),
        |_: &mut (), _: &El| Some(0u8),
    );
    match Harness::new(g).err().expect("the graph is rejected") {
        Error::Graph { problems, .. } => {
            let all = problems.join("\n");
            for want in [
                "agent 'a': window size must be at least 1",
                "agent 'a': window step must be at least 1",
                "agent 'b': session gap must be at least 1",
                "agent 'b': max_keys must be at least 1",
                "agent 'c': max_keys must be at least 1",
                "agent 'd': max_buffered must be at least 1",
                "agent 'e': sliding(60000000, 1) puts each element in 60000000 windows, more than 100000",
            ] {
                assert!(all.contains(want), "missing {want:?} in {all}");
            }
            assert!(!all.contains("agent 'f'"), "{all}");
        }
        other => panic!("unexpected error {other:?}"),
    }
}

#[test]
fn keyed_state_is_per_key_and_bounded_with_the_least_recently_seen_evicted() {
    let mut g = Graph::new("state");
    let x = g.input::<(char, u32)>("x");
    let m = g.keyed_map_with_state(
        "running_sum",
        &x,
        2,
        |e: &(char, u32)| e.0,
        |_: &char| 0u32,
        |s: &mut u32, e: &(char, u32)| {
            *s += e.1;
            Some(*s)
        },
    );
    let out = g.collect("out", &m.out);
    let mut h = Harness::new(g).unwrap();
    h.push(
        &x,
        [
            ('a', 1),
            ('b', 10),
            ('a', 2),
            ('c', 100),
            ('a', 3),
            ('b', 20),
        ],
    )
    .unwrap();
    h.finish().unwrap();
    // 'c' evicts 'b' (seen least recently); 'b' comes back from scratch, evicting 'c'.
    assert_eq!(
        out.values(),
        [
            ('a', 1),
            ('b', 10),
            ('a', 3),
            ('c', 100),
            ('a', 6),
            ('b', 20)
        ]
    );
    assert_eq!(m.evicted.get(), 2);
}

#[test]
fn the_timeline_of_the_docs() {
    // docs/operators.md, "Event time", and the module docs of ops::event_window.
    let (mut h, x, windows, late) = graph(EventWindow::tumbling(10).allowed_lateness(5), 3);
    for e in [(2, 0), (12, 0), (7, 0), (16, 0), (8, 0)] {
        h.push(&x, [e]).unwrap();
        h.run().unwrap();
    }
    let (a, b, c) = ((2, 0), (7, 0), (8, 0));
    assert_eq!(
        windows.values(),
        [
            win(0, 10, vec![a, b], Firing::OnTime),
            win(0, 10, vec![a, b, c], Firing::Late),
        ]
    );
    h.finish().unwrap();
    assert!(late.values().is_empty());
    assert_eq!(windows.values()[2].firing, Firing::Final);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// `keyed_rolling` gives, per key, the rolling aggregate of that key's values (the plain
    /// reference: the sum of the key's last `w` values), whatever the batches; with fewer
    /// keys than the bound nothing is evicted.
    #[test]
    fn keyed_rolling_is_the_rolling_aggregate_of_each_key(
        data in prop::collection::vec((0u8..6, -100i32..100), 0..200),
        window in 1usize..5,
        cuts in prop::collection::vec(1usize..9, 1..6),
    ) {
        use iotstream::ops::rolling::Rolling;
        let mut g = Graph::new("keyed_rolling");
        let x = g.input::<(u8, i32)>("x");
        let means = g.keyed_rolling(
            "means", &x, 16,
            |e: &(u8, i32)| e.0, |e: &(u8, i32)| f64::from(e.1),
            window, Rolling::Sum,
        );
        let out = g.collect("out", &means.out);
        let mut h = Harness::new(g).unwrap();
        let (mut at, mut k) = (0, 0);
        while at < data.len() {
            let n = cuts[k % cuts.len()].min(data.len() - at);
            h.push(&x, data[at..at + n].iter().cloned()).unwrap();
            h.run().unwrap();
            at += n;
            k += 1;
        }
        h.finish().unwrap();
        let mut per_key: std::collections::HashMap<u8, Vec<i32>> = Default::default();
        let mut want = Vec::new();
        for &(key, v) in &data {
            let seen = per_key.entry(key).or_default();
            seen.push(v);
            if seen.len() >= window {
                let sum: i32 = seen[seen.len() - window..].iter().sum();
                want.push((key, f64::from(sum)));
            }
        }
        prop_assert_eq!(out.values(), want);
        prop_assert_eq!(means.evicted.get(), 0);
    }
}

#[test]
fn keyed_rolling_evicts_beyond_its_key_bound_and_a_returning_key_starts_afresh() {
    use iotstream::ops::rolling::Rolling;
    let mut g = Graph::new("keyed_rolling_bound");
    let x = g.input::<(u8, i32)>("x");
    let sums = g.keyed_rolling(
        "sums",
        &x,
        2,
        |e: &(u8, i32)| e.0,
        |e: &(u8, i32)| f64::from(e.1),
        2,
        Rolling::Sum,
    );
    let out = g.collect("out", &sums.out);
    let mut h = Harness::new(g).unwrap();
    // Key 1 twice (a sum), key 2, key 3 (evicts key 1, the least recently seen), key 1 again
    // (fresh: one value, no sum yet; evicts key 2), key 1 (a sum of the fresh two).
    h.push(&x, [(1, 10), (1, 20), (2, 5), (3, 7), (1, 100), (1, 1)])
        .unwrap();
    h.finish().unwrap();
    assert_eq!(out.values(), [(1, 30.0), (1, 101.0)]);
    assert_eq!(sums.evicted.get(), 2);
}

#[test]
fn a_drain_emits_the_open_windows_as_final() {
    // A threaded run that is stopped (as Ctrl-C does) while its input is still open: what was
    // sent is processed, and the windows the watermark had not passed come out as Final.
    let mut g = Graph::new("drain_final");
    let x = g.input::<(u64, u32)>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(2));
    let w = g.event_window(
        "count",
        &timed,
        EventWindow::tumbling(10),
        |e: &[(u64, u32)]| e.len(),
    );
    let out = g.collect("out", &w.windows);
    let mut running = g.start().unwrap();
    let tx = running.input(&x).unwrap();
    tx.send((0..25u64).map(|t| (t, 0)).collect()).unwrap();
    // Wait (bounded: a hang guard, not a timing assertion) until the on-time windows are out,
    // so that the stop comes after the data.
    let guard = std::time::Instant::now();
    while out.values().len() < 2 {
        assert!(
            guard.elapsed() < Duration::from_secs(20),
            "{:?}",
            out.values()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    running.stop();
    running.join().unwrap();
    drop(tx);
    let got: Vec<(u64, u64, usize, Firing)> = out
        .values()
        .iter()
        .map(|w| (w.start, w.end, w.value, w.firing))
        .collect();
    assert_eq!(
        got,
        [
            (0, 10, 10, Firing::OnTime),
            (10, 20, 10, Firing::OnTime),
            (20, 30, 5, Firing::Final)
        ]
    );
}
