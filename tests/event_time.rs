//! Watermarks and idleness in band: forwarding through agents, the minimum over inputs,
//! idle inputs on the harness's clock, and marks across the threaded runtime's links.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use iotstream::ops::event::Watermarks;
use iotstream::{Agent, AgentError, Graph, Harness, Input, Inputs, Mark, Outputs, Stream};

/// What an observer saw, in order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    El(u64),
    M(Mark),
}

/// Records the elements and marks of its inputs, in the order they come (input by input
/// within a step).
struct Observer {
    inputs: Vec<Input<(u64, u32)>>,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Agent for Observer {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let mut log = self.log.lock().unwrap();
        for input in &self.inputs {
            let data = i.slice(input);
            let mut at = 0;
            for (k, m) in i.marks(input) {
                log.extend(data[at..k].iter().map(|e| Seen::El(e.0)));
                log.push(Seen::M(m));
                at = k;
            }
            log.extend(data[at..].iter().map(|e| Seen::El(e.0)));
            i.consume_all(input);
        }
        Ok(())
    }
}

fn observe(g: &mut Graph, name: &str, streams: &[Stream<(u64, u32)>]) -> Arc<Mutex<Vec<Seen>>> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let n = streams.len();
    let inputs = g.add_agent(name, |p| {
        let inputs: Vec<_> = (0..n).map(|k| p.input(&format!("in{k}"))).collect();
        (
            Observer {
                inputs: inputs.clone(),
                log: l,
            },
            inputs,
        )
    });
    for (s, i) in streams.iter().zip(&inputs) {
        g.connect(s, i);
    }
    log
}

fn marks(log: &Arc<Mutex<Vec<Seen>>>) -> Vec<Mark> {
    log.lock()
        .unwrap()
        .iter()
        .filter_map(|s| match s {
            Seen::M(m) => Some(*m),
            Seen::El(_) => None,
        })
        .collect()
}

#[test]
fn a_map_forwards_watermarks_after_the_elements_they_follow() {
    let mut g = Graph::new("forward");
    let x = g.input::<(u64, u32)>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(2));
    let doubled = g.map("double", &timed, |e: &(u64, u32)| (e.0, e.1 * 2));
    let kept = g.filter("even_times", &doubled, |e: &(u64, u32)| e.0 % 2 == 0);
    let log = observe(&mut g, "obs", &[kept]);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(10, 1), (11, 1), (12, 1)]).unwrap();
    h.run().unwrap();
    h.push(&x, [(20, 1)]).unwrap();
    h.run().unwrap();
    h.finish().unwrap();
    use Seen::*;
    assert_eq!(
        *log.lock().unwrap(),
        [
            El(10),
            El(12),
            M(Mark::Watermark(10)),
            El(20),
            M(Mark::Watermark(18))
        ]
    );
}

#[test]
fn an_element_beyond_the_bound_follows_the_watermark_it_breaks_whatever_the_batches() {
    // 20 then 5 with a bound of 10: 5 < 20 - 10, so it is late; the watermark 10 must come
    // before it whether both came in one batch or two.
    for split in [false, true] {
        let mut g = Graph::new("beyond");
        let x = g.input::<(u64, u32)>("x");
        let timed = g.watermarks("timed", &x, Watermarks::bounded(10));
        let log = observe(&mut g, "obs", &[timed]);
        let mut h = Harness::new(g).unwrap();
        if split {
            h.push(&x, [(20, 0)]).unwrap();
            h.run().unwrap();
            h.push(&x, [(5, 0)]).unwrap();
        } else {
            h.push(&x, [(20, 0), (5, 0)]).unwrap();
        }
        h.finish().unwrap();
        use Seen::*;
        assert_eq!(
            *log.lock().unwrap(),
            [El(20), M(Mark::Watermark(10)), El(5)],
            "split: {split}"
        );
    }
}

#[test]
fn an_agent_with_two_inputs_forwards_the_smaller_watermark_and_a_closed_input_stops_counting() {
    let mut g = Graph::new("minimum");
    let a = g.input::<(u64, u32)>("a");
    let b = g.input::<(u64, u32)>("b");
    let ta = g.watermarks("ta", &a, Watermarks::ascending());
    let tb = g.watermarks("tb", &b, Watermarks::ascending());
    let both = g.blend("both", &[ta, tb]);
    let log = observe(&mut g, "obs", &[both]);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [(100, 0)]).unwrap();
    h.run().unwrap();
    assert_eq!(marks(&log), [], "b has no watermark yet: it holds a back");
    h.push(&b, [(40, 0)]).unwrap();
    h.run().unwrap();
    assert_eq!(marks(&log), [Mark::Watermark(40)]);
    h.push(&b, [(70, 0)]).unwrap();
    h.run().unwrap();
    assert_eq!(marks(&log), [Mark::Watermark(40), Mark::Watermark(70)]);
    h.close(&b).unwrap();
    h.run().unwrap();
    assert_eq!(
        marks(&log),
        [
            Mark::Watermark(40),
            Mark::Watermark(70),
            Mark::Watermark(100)
        ],
        "b closed: only a counts"
    );
    h.finish().unwrap();
}

#[test]
fn an_idle_input_stops_holding_back_the_watermark_until_it_sends_again() {
    let mut g = Graph::new("idle");
    let a = g.input::<(u64, u32)>("a");
    let b = g.input::<(u64, u32)>("b");
    let quiet = Duration::from_secs(30);
    let ta = g.watermarks("ta", &a, Watermarks::ascending().idle_after(quiet));
    let tb = g.watermarks("tb", &b, Watermarks::ascending().idle_after(quiet));
    let both = g.blend("both", &[ta, tb]);
    let log = observe(&mut g, "obs", &[both]);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [(5, 0)]).unwrap();
    h.push(&b, [(3, 0)]).unwrap();
    h.run().unwrap();
    assert_eq!(marks(&log), [Mark::Watermark(3)]);
    h.advance_clock(Duration::from_secs(20)).unwrap();
    h.push(&a, [(50, 0)]).unwrap();
    h.run().unwrap();
    assert_eq!(marks(&log), [Mark::Watermark(3)], "b not idle yet");
    h.advance_clock(Duration::from_secs(15)).unwrap();
    // 35 s: b has been quiet for 35 s (idle), a for 15 s.
    assert_eq!(marks(&log), [Mark::Watermark(3), Mark::Watermark(50)]);
    h.advance_clock(Duration::from_secs(20)).unwrap();
    // 55 s: a quiet for 35 s too: every input idle.
    assert_eq!(
        marks(&log),
        [Mark::Watermark(3), Mark::Watermark(50), Mark::Idle]
    );
    h.push(&b, [(60, 0)]).unwrap();
    h.run().unwrap();
    // b is back (its watermark 60); a is still idle: 60 goes.
    assert_eq!(
        marks(&log),
        [
            Mark::Watermark(3),
            Mark::Watermark(50),
            Mark::Idle,
            Mark::Watermark(60)
        ]
    );
    h.finish().unwrap();
}

#[test]
fn watermarks_cross_the_threaded_runtime_in_order_with_the_data() {
    let mut g = Graph::new("runtime_marks");
    let times: Vec<(u64, u32)> = (0..20_000u64).map(|t| (t, 0)).collect();
    let s = g.source_iter("numbers", times);
    let timed = g.watermarks("timed", &s, Watermarks::ascending());
    let m = g.map("same", &timed, |e: &(u64, u32)| *e);
    g.place_on_thread("same", "other");
    let log = observe(&mut g, "obs", &[m]);
    g.run().unwrap();
    let log = log.lock().unwrap();
    let mut last_mark = None;
    let mut last_el = None;
    let mut elements = 0;
    for s in log.iter() {
        match s {
            Seen::El(t) => {
                assert!(
                    last_mark.is_none_or(|w| *t >= w),
                    "element {t} after watermark {last_mark:?}"
                );
                last_el = Some(*t);
                elements += 1;
            }
            Seen::M(Mark::Watermark(w)) => {
                assert!(last_mark.is_none_or(|m| *w > m), "watermarks increase");
                assert_eq!(Some(*w), last_el, "a watermark right after its element");
                last_mark = Some(*w);
            }
            Seen::M(Mark::Idle) => panic!("nothing was idle"),
        }
    }
    assert_eq!(elements, 20_000);
    assert_eq!(last_mark, Some(19_999));
}

#[test]
fn an_idle_timeout_fires_in_the_threaded_runtime_without_any_input() {
    // The timer runs on the real clock here: the input stays open and silent, and the
    // observer must see the stream marked idle. The wait below is a hang guard, not a timing
    // assertion: the timeout is 20 ms and the guard 20 s.
    let mut g = Graph::new("idle_runtime");
    let x = g.input::<(u64, u32)>("x");
    let timed = g.watermarks(
        "timed",
        &x,
        Watermarks::ascending().idle_after(Duration::from_millis(20)),
    );
    let log = observe(&mut g, "obs", &[timed]);
    let mut running = g.start().unwrap();
    let tx = running.input(&x).unwrap();
    tx.send(vec![(7, 0)]).unwrap();
    let guard = std::time::Instant::now();
    while !marks(&log).contains(&Mark::Idle) {
        assert!(
            guard.elapsed() < Duration::from_secs(20),
            "no idleness mark: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    tx.close();
    running.join().unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        [
            Seen::El(7),
            Seen::M(Mark::Watermark(7)),
            Seen::M(Mark::Idle)
        ]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

    /// Marks keep their places through agents that forward them (a map, a filter): an element
    /// seen behind the watermark before it downstream is exactly one more than `d` below the
    /// highest timestamp before it, whatever the batches.
    #[test]
    fn lateness_survives_forwarding_agents_whatever_the_batches(
        times in proptest::collection::vec(0u64..200, 1..80),
        bound in 0u64..20,
        cuts in proptest::collection::vec(1usize..9, 1..8),
    ) {
        let mut g = Graph::new("exact");
        let x = g.input::<(u64, u32)>("x");
        let timed = g.watermarks("timed", &x, Watermarks::bounded(bound));
        let m = g.map("same", &timed, |e: &(u64, u32)| *e);
        let f = g.filter("all", &m, |_: &(u64, u32)| true);
        let log = observe(&mut g, "obs", &[f]);
        let mut h = Harness::new(g).unwrap();
        let input: Vec<(u64, u32)> = times.iter().enumerate().map(|(i, &t)| (t, i as u32)).collect();
        let mut at = 0;
        let mut k = 0;
        while at < input.len() {
            let n = cuts[k % cuts.len()].min(input.len() - at);
            h.push(&x, input[at..at + n].iter().cloned()).unwrap();
            if k % 2 == 0 {
                h.run().unwrap();
            }
            at += n;
            k += 1;
        }
        h.finish().unwrap();
        let mut want = Vec::new();
        let mut max: Option<u64> = None;
        for &(t, _) in &input {
            if max.is_some_and(|m| t + bound < m) {
                want.push(t);
            }
            max = Some(max.map_or(t, |m| m.max(t)));
        }
        let mut got = Vec::new();
        let mut wm: Option<u64> = None;
        for s in log.lock().unwrap().iter() {
            match s {
                Seen::El(t) if wm.is_some_and(|w| *t < w) => got.push(*t),
                Seen::El(_) | Seen::M(Mark::Idle) => {}
                Seen::M(Mark::Watermark(w)) => wm = Some(*w),
            }
        }
        proptest::prop_assert_eq!(got, want);
    }
}

#[test]
fn a_watermark_followed_at_once_by_idleness_still_closes_the_windows_it_passes() {
    // The watermark and the idleness after it reach the window's input together: the
    // idleness must not erase the watermark, or the window [0, 10) waits for the next element
    // (here: for the end, as Final) although the watermark 12 passed it.
    use iotstream::ops::event_window::{EventWindow, Firing, Window};
    let mut g = Graph::new("idle_after_mark");
    let x = g.input::<(u64, u32)>("x");
    let timed = g.watermarks(
        "timed",
        &x,
        Watermarks::ascending().idle_after(Duration::ZERO),
    );
    let w = g.event_window(
        "count",
        &timed,
        EventWindow::tumbling(10),
        |e: &[(u64, u32)]| e.len(),
    );
    let windows = g.collect("windows", &w.windows);
    let mut h = Harness::new(g).unwrap();
    h.push(&x, [(3, 0), (12, 0)]).unwrap();
    h.run().unwrap();
    assert_eq!(
        windows.values(),
        [Window {
            start: 0,
            end: 10,
            value: 1,
            firing: Firing::OnTime
        }],
        "the watermark 12 closed [0, 10)"
    );
    h.finish().unwrap();
}

#[test]
fn timed_join_emits_the_last_readings_of_an_input_gone_idle() {
    // The dew-point join: the temperature sensor (a) goes quiet after its reading at 10 and is
    // marked idle; humidity (b) goes on. The reading at 10 has its nearest humidity (at 9,
    // nothing nearer can come: b is at 40) and must not wait for the temperature sensor to
    // come back, as an idle input of a timed_mix or timed_zip does not.
    let mut g = Graph::new("idle_join");
    let a = g.input::<(u64, u32)>("temperature");
    let b = g.input::<(u64, u32)>("humidity");
    let quiet = Duration::from_secs(30);
    let ta = g.watermarks("ta", &a, Watermarks::ascending().idle_after(quiet));
    let tb = g.watermarks("tb", &b, Watermarks::ascending());
    let (pairs, late) = g.timed_join("dew", &ta, &tb, 2);
    let out = g.collect("out", &pairs);
    let mut h = Harness::new(g).unwrap();
    h.push(&a, [(5, 50), (10, 100)]).unwrap();
    h.push(&b, [(4, 1), (9, 2), (40, 3)]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(5, 50, 1)], "10 waits: a may still send 10");
    h.advance_clock(Duration::from_secs(31)).unwrap();
    assert_eq!(
        out.values(),
        [(5, 50, 1), (10, 100, 2)],
        "a is idle: b alone says what is complete"
    );
    h.push(&b, [(50, 4)]).unwrap();
    h.run().unwrap();
    assert_eq!(out.values(), [(5, 50, 1), (10, 100, 2)]);
    h.finish().unwrap();
    assert_eq!(late.get(), 0);
}

#[test]
fn timed_join_picks_the_same_reading_among_equal_timestamps_whatever_the_arrival() {
    // Two humidity readings carry the same timestamp (a duplicate with another value): which
    // one is joined must not depend on which arrived first.
    let run = |b_order: [(u64, u32); 2]| {
        let mut g = Graph::new("join_ties");
        let a = g.input::<(u64, u32)>("a");
        let b = g.input::<(u64, u32)>("b");
        let ta = g.watermarks("ta", &a, Watermarks::bounded(5));
        let tb = g.watermarks("tb", &b, Watermarks::bounded(5));
        let (pairs, _) = g.timed_join("pairs", &ta, &tb, 2);
        let out = g.collect("out", &pairs);
        let mut h = Harness::new(g).unwrap();
        h.push(&a, [(10, 1)]).unwrap();
        h.push(&b, b_order).unwrap();
        h.finish().unwrap();
        out.values()
    };
    assert_eq!(run([(10, 7), (10, 3)]), run([(10, 3), (10, 7)]));
}
