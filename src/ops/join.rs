//! Event-time joins and typed timed zips: two streams of different types, aligned by the
//! timestamps they carry.
//!
//! | call | emits |
//! |---|---|
//! | [`Graph::timed_join`] | `(t, a, b)` for each `a` at `t`, with the `b` nearest in time within a tolerance |
//! | [`Graph::timed_zip2`] | `(t, Option<a>, Option<b>)` for each timestamp of either input |
//!
//! Both read `(t, value)` streams and emit in timestamp order. If their inputs carry watermarks
//! (see the [`event`](crate::ops::event) guide) they wait for the watermarks: elements may
//! arrive out of order within the inputs' bound and the output does not change. If the inputs
//! carry none, timestamps are taken as ascending within each input (the watermark of an input
//! is the highest timestamp it sent). Either way an input that has ended holds nothing back,
//! and at the end everything buffered is emitted. An element is **late** (dropped, and counted
//! in the [`LateCounter`] returned) when it is behind its own input's watermark (a watermark
//! that came before it on that input; without watermarks, a timestamp its input already
//! sent), judged on that input alone, so that batches and the interleaving of the two inputs
//! change nothing; or when it arrives behind what was already emitted, which only an input
//! that was idle meanwhile can do.
//!
//! The output carries a watermark too (the point up to which it is complete), so another
//! event-time operator can read it.
//!
//! # Nearest in time: the dew-point join
//!
//! A temperature and a humidity sensor sample at their own instants. `timed_join(temperature,
//! humidity, tolerance)` pairs each temperature reading with the humidity reading nearest to it
//! in time, if one is within `tolerance` (ties: the earlier one; several readings at that
//! timestamp: the one with the smallest postcard encoding). A reading of `a` with no `b`
//! within the tolerance gives nothing. It is emitted once nothing nearer can come: once the
//! watermark of `b` has passed `t + tolerance`.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::atomic::Ordering;

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::ops::event::{encoding, frontier, sort_ties, EventInput, Keyed};
use crate::ops::merge::LateCounter;

pub use crate::ops::event::DEFAULT_MAX_BUFFERED;
use crate::stream::{Element, Input, Mark, Stream};

// ---------------------------------------------------------------------------------------------
// timed_join

struct TimedJoin<A, B> {
    a: Input<(u64, A)>,
    b: Input<(u64, B)>,
    out: Stream<(u64, A, B)>,
    tolerance: u64,
    clocks: [EventInput; 2],
    /// Elements of `a` waiting, in (t, arrival) order.
    pending: BinaryHeap<Reverse<Keyed<A>>>,
    /// Elements of `b` that may still match, by (t, arrival).
    candidates: BTreeMap<(u64, u64), B>,
    /// Arrival counters, for ties.
    seq: u64,
    /// Everything of `a` below this was emitted (or dropped).
    done_below: u64,
    late: LateCounter,
    max_buffered: usize,
    name: String,
}

impl<A: Element, B: Element> TimedJoin<A, B> {
    /// The `b` nearest to `t` within the tolerance (ties: the earlier, then the first to come).
    fn nearest(&self, t: u64) -> Option<&B> {
        let lo = t.saturating_sub(self.tolerance);
        let hi = t.saturating_add(self.tolerance);
        let mut best: Option<(u64, u64, &B)> = None;
        for (&(tb, _), v) in self.candidates.range((lo, 0)..=(hi, u64::MAX)) {
            let d = tb.abs_diff(t);
            let better = match best {
                None => true,
                Some((bd, _, _)) if d != bd => d < bd,
                // Several readings at one timestamp: the smallest encoding, not the first to
                // arrive, so that arrival order does not matter.
                Some((_, btb, bv)) => tb == btb && encoding(v) < encoding(bv),
            };
            if better {
                best = Some((d, tb, v));
            }
        }
        best.map(|(_, _, v)| v)
    }

    /// Emits every waiting `a` below `upto` (with `None`, the end: every one, timestamps of
    /// `u64::MAX` included); forgets the `b`s no later `a` can match.
    fn emit(&mut self, upto: Option<u64>, outputs: &mut Outputs<'_>) {
        while let Some(Reverse(k)) = self.pending.peek() {
            if upto.is_some_and(|u| k.t >= u) {
                break;
            }
            let Reverse(k) = self.pending.pop().expect("peeked");
            if let Some(b) = self.nearest(k.t) {
                outputs.push(&self.out, (k.t, k.v, b.clone()));
            }
        }
        let upto = upto.unwrap_or(u64::MAX);
        self.done_below = self.done_below.max(upto);
        let keep_from = self.done_below.saturating_sub(self.tolerance);
        self.candidates = self.candidates.split_off(&(keep_from, 0));
        if upto < u64::MAX {
            outputs.mark(&self.out, Mark::Watermark(upto));
        }
    }
}

impl<A: Element, B: Element> Agent for TimedJoin<A, B> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let mut late = 0;
        let done_below = self.done_below;
        let (tol, seq) = (self.tolerance, &mut self.seq);
        let pending = &mut self.pending;
        self.clocks[0].take(inputs, &self.a, |e, behind| {
            if behind || e.0 < done_below {
                late += 1;
            } else {
                *seq += 1;
                pending.push(Reverse(Keyed {
                    t: e.0,
                    seq: *seq,
                    v: e.1.clone(),
                }));
            }
        });
        let candidates = &mut self.candidates;
        self.clocks[1].take(inputs, &self.b, |e, behind| {
            // Behind `b`'s own watermark, or it could only have matched readings of `a`
            // already emitted.
            if behind || e.0.saturating_add(tol) < done_below {
                late += 1;
            } else {
                *seq += 1;
                candidates.insert((e.0, *seq), e.1.clone());
            }
        });
        self.late.0.fetch_add(late, Ordering::Relaxed);
        inputs.count_late(late);
        if self.pending.len() + self.candidates.len() > self.max_buffered {
            return Err(format!(
                "timed join '{}': more than {} elements wait for the watermarks (raise \
                 max_buffered, or check that both inputs' watermarks advance)",
                self.name, self.max_buffered
            )
            .into());
        }
        // An `a` at t is complete once `a` has passed t and `b` has passed t + tolerance.
        let wa = frontier(&self.clocks[..1]);
        let wb = frontier(&self.clocks[1..]);
        let upto = match (wa, wb) {
            (Some(a), Some(b)) => {
                let b = if b == u64::MAX {
                    b
                } else {
                    b.saturating_sub(tol)
                };
                Some(a.min(b))
            }
            (Some(a), None) if self.clocks[1].idle => Some(a),
            // `a` idle: `b` alone says how far `a`'s buffered readings are complete (as for
            // an idle input of a timed merge). Not once `b` ended: `a` may still come back,
            // and everything it sends then would be behind an emitted u64::MAX.
            (None, Some(b)) if self.clocks[0].idle && b < u64::MAX => Some(b.saturating_sub(tol)),
            _ => None,
        };
        if let Some(upto) = upto.filter(|&u| u > self.done_below) {
            self.emit(Some(upto), outputs);
        }
        Ok(())
    }

    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        self.emit(None, outputs);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// timed_zip2

struct TimedZip2<A, B> {
    a: Input<(u64, A)>,
    b: Input<(u64, B)>,
    out: Stream<(u64, Option<A>, Option<B>)>,
    clocks: [EventInput; 2],
    /// Per timestamp, what each input brought, in arrival order.
    rows: BTreeMap<u64, (VecDeque<A>, VecDeque<B>)>,
    done_below: u64,
    late: LateCounter,
    buffered: usize,
    max_buffered: usize,
    name: String,
}

impl<A: Element, B: Element> TimedZip2<A, B> {
    /// Emits every row below `upto` (with `None`, the end: every row, timestamps of
    /// `u64::MAX` included), then the watermark.
    fn emit(&mut self, upto: Option<u64>, outputs: &mut Outputs<'_>) {
        while let Some(entry) = self.rows.first_entry() {
            if upto.is_some_and(|u| *entry.key() >= u) {
                break;
            }
            let (t, (mut xs, mut ys)) = entry.remove_entry();
            self.buffered -= xs.len() + ys.len();
            sort_ties(&mut xs);
            sort_ties(&mut ys);
            while !xs.is_empty() || !ys.is_empty() {
                outputs.push(&self.out, (t, xs.pop_front(), ys.pop_front()));
            }
        }
        let upto = upto.unwrap_or(u64::MAX);
        self.done_below = self.done_below.max(upto);
        if upto < u64::MAX {
            outputs.mark(&self.out, Mark::Watermark(upto));
        }
    }
}

impl<A: Element, B: Element> Agent for TimedZip2<A, B> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let mut late = 0;
        let done_below = self.done_below;
        let (rows, buffered) = (&mut self.rows, &mut self.buffered);
        self.clocks[0].take(inputs, &self.a, |e, behind| {
            if behind || e.0 < done_below {
                late += 1;
            } else {
                rows.entry(e.0).or_default().0.push_back(e.1.clone());
                *buffered += 1;
            }
        });
        self.clocks[1].take(inputs, &self.b, |e, behind| {
            if behind || e.0 < done_below {
                late += 1;
            } else {
                rows.entry(e.0).or_default().1.push_back(e.1.clone());
                *buffered += 1;
            }
        });
        self.late.0.fetch_add(late, Ordering::Relaxed);
        inputs.count_late(late);
        if self.buffered > self.max_buffered {
            return Err(format!(
                "timed zip '{}': more than {} elements wait for the watermarks (raise \
                 max_buffered, or check that both inputs' watermarks advance)",
                self.name, self.max_buffered
            )
            .into());
        }
        if let Some(upto) = frontier(&self.clocks).filter(|&u| u > self.done_below) {
            self.emit(Some(upto), outputs);
        }
        Ok(())
    }

    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        self.emit(None, outputs);
        Ok(())
    }
}

impl Graph {
    /// For each element `(t, a)` of `a`, `(t, a, b)` with the element of `b` nearest to `t`
    /// within `tolerance` (ties: the earlier); none if no `b` is that near. Emitted in time
    /// order; late elements are dropped and counted. See the [module docs](crate::ops::join).
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::event::Watermarks;
    /// // Dew point needs temperature and humidity at (nearly) the same instant; timestamps in ms.
    /// let mut g = Graph::new("dew_point");
    /// let temperature = g.source_iter("temperature", [(1_000u64, 20.0), (2_000, 21.0), (3_000, 22.0)]);
    /// let humidity = g.source_iter("humidity", [(1_150u64, 60u8), (2_900, 55), (3_050, 50)]);
    /// let t = g.watermarks("t", &temperature, Watermarks::bounded(500));
    /// let h = g.watermarks("h", &humidity, Watermarks::bounded(500));
    /// let (pairs, late) = g.timed_join("pairs", &t, &h, 200);
    /// let out = g.collect("out", &pairs);
    /// g.run().unwrap();
    /// // 2 000 ms has no humidity reading within 200 ms; 3 000 ms takes 3 050 (nearer than 2 900).
    /// assert_eq!(out.values(), [(1_000, 20.0, 60), (3_000, 22.0, 50)]);
    /// assert_eq!(late.get(), 0);
    /// ```
    pub fn timed_join<A: Element, B: Element>(
        &mut self,
        name: &str,
        a: &Stream<(u64, A)>,
        b: &Stream<(u64, B)>,
        tolerance: u64,
    ) -> (Stream<(u64, A, B)>, LateCounter) {
        let late = LateCounter::default();
        let (ia, ib, out) = self.add_agent(name, |p| {
            p.manages_watermarks();
            let ia = p.input::<(u64, A)>("in0");
            let ib = p.input::<(u64, B)>("in1");
            let out = p.output::<(u64, A, B)>("out");
            let agent = TimedJoin {
                a: ia,
                b: ib,
                out,
                tolerance,
                clocks: Default::default(),
                pending: BinaryHeap::new(),
                candidates: BTreeMap::new(),
                seq: 0,
                done_below: 0,
                late: late.clone(),
                max_buffered: DEFAULT_MAX_BUFFERED,
                name: name.to_string(),
            };
            (agent, (ia, ib, out))
        });
        self.connect(a, &ia);
        self.connect(b, &ib);
        (out, late)
    }

    /// Aligns two timestamped streams of different types: `(t, Some(a), Some(b))` where both
    /// have an element at `t`, `(t, Some(a), None)` or `(t, None, Some(b))` where only one has.
    /// Several elements of one input at one timestamp give several rows. Emitted in time
    /// order once both inputs have passed `t` (see the [module docs](crate::ops::join)); late
    /// elements are dropped and counted.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("machine");
    /// // (second, rpm) and (second, alarm text)
    /// let rpm = g.source_iter("rpm", [(1u64, 1200u32), (2, 1250), (3, 1300)]);
    /// let alarms = g.source_iter("alarms", [(2u64, "overheat".to_string())]);
    /// let rows = g.timed_zip2("rows", &rpm, &alarms);
    /// let out = g.collect("out", &rows);
    /// g.run().unwrap();
    /// assert_eq!(
    ///     out.values(),
    ///     [
    ///         (1, Some(1200), None),
    ///         (2, Some(1250), Some("overheat".to_string())),
    ///         (3, Some(1300), None),
    ///     ]
    /// );
    /// ```
    // The tuple spells out the element, as in the other operators' signatures.
    #[allow(clippy::type_complexity)]
    pub fn timed_zip2<A: Element, B: Element>(
        &mut self,
        name: &str,
        a: &Stream<(u64, A)>,
        b: &Stream<(u64, B)>,
    ) -> Stream<(u64, Option<A>, Option<B>)> {
        self.timed_zip2_counted(name, a, b).0
    }

    /// [`Graph::timed_zip2`], with the counter of late elements it dropped.
    #[allow(clippy::type_complexity)]
    pub fn timed_zip2_counted<A: Element, B: Element>(
        &mut self,
        name: &str,
        a: &Stream<(u64, A)>,
        b: &Stream<(u64, B)>,
    ) -> (Stream<(u64, Option<A>, Option<B>)>, LateCounter) {
        let late = LateCounter::default();
        let (ia, ib, out) = self.add_agent(name, |p| {
            p.manages_watermarks();
            let ia = p.input::<(u64, A)>("in0");
            let ib = p.input::<(u64, B)>("in1");
            let out = p.output::<(u64, Option<A>, Option<B>)>("out");
            let agent = TimedZip2 {
                a: ia,
                b: ib,
                out,
                clocks: Default::default(),
                rows: BTreeMap::new(),
                done_below: 0,
                late: late.clone(),
                buffered: 0,
                max_buffered: DEFAULT_MAX_BUFFERED,
                name: name.to_string(),
            };
            (agent, (ia, ib, out))
        });
        self.connect(a, &ia);
        self.connect(b, &ib);
        (out, late)
    }
}
