//! Merges: several streams into one.
//!
//! | call | IoTPy | takes | emits |
//! |---|---|---|---|
//! | [`Graph::zip`], [`Graph::zip3`] | `zip_stream` | one element of every input at a time | `(a, b)`, `(a, b, c)` |
//! | [`Graph::zip_map`] | `zip_map`, `merge_element` | one element of every input at a time | `f(&[a, b, …])` |
//! | [`Graph::mix`] | `mix` | every element, as it arrives | `(input index, v)` |
//! | [`Graph::blend`] | `blend`, `weave` | every element, as it arrives | `v` |
//! | [`Graph::timed_zip`] | `timed_zip` | `(t, v)` elements, aligned by time | `(t, [v or None per input])` |
//! | [`Graph::timed_mix`] | `timed_mix` | `(t, v)` elements, as they arrive (or by watermark, in event time) | `(t, (input index, v))`; late ones dropped and counted |
//!
//! # Synchronous merges: zip
//!
//! The k-th output of a zip is made of the k-th element of every input. When one input runs
//! ahead, its extra elements wait, unconsumed, until every other input has caught up (and if it
//! runs far ahead, its writer waits: a zip never buffers without bound). The output never depends
//! on how the inputs were cut into batches.
//!
//! **End of stream.** Once an input has closed and all of its elements have been zipped, no
//! further tuple can ever form. From then on the zip discards what the other inputs hold and
//! whatever they still send (so their writers are never held back by a reader that can no longer
//! use their data), and its output closes when the last input closes.
//!
//! **Bounded connections.** A zip holds the extra elements of an input that runs ahead, up to
//! that connection's capacity. If two of its inputs come, directly or through other agents,
//! from one writer that feeds them unevenly (two outputs of one [`Graph::split`], say), the
//! faster one's connection fills, the writer waits for the zip, and the zip waits for the slower
//! input: the application cannot go on. [`Harness::finish`](crate::Harness::finish) and a threaded
//! run report this as [`Error::Stalled`](crate::Error::Stalled) naming the full connection; give that connection
//! a capacity ([`Connection::capacity`](crate::Connection::capacity)) at least as large as the
//! lead the faster input can take. The same holds for [`Graph::timed_zip`].
//!
//! # Asynchronous merges: mix and blend
//!
//! A mix handles every element of every input as soon as it arrives; it never waits for one input
//! to catch up with another. What is guaranteed:
//!
//! - every element of every input is emitted exactly once;
//! - elements of one input keep their order;
//! - elements that reached the agent in an earlier step come before elements that reached it in a
//!   later step; elements that reached it in the same step are emitted input by input: all of
//!   input 0's, then all of input 1's, and so on.
//!
//! Which elements share a step depends on timing in a threaded run, so there the interleaving of
//! different inputs may change from run to run: that is what "arrival order" means. Under the
//! [`Harness`](crate::Harness) everything pushed before one [`run`](crate::Harness::run) reaches
//! the mix in one step, so a test controls the interleaving exactly (see [`Graph::mix`]).
//!
//! # Timed merges
//!
//! The timed merges read elements `(t, v)`: a timestamp `t` (any unit: seconds, ticks, sequence
//! numbers) and a value. Timestamps must not decrease within one input (equal ones are allowed);
//! a decrease stops the application with an error naming the agent, the input and both
//! timestamps. Inputs may run at any speed relative to each other.
//!
//! [`Graph::timed_zip`] aligns its inputs by time. Repeatedly, `t` is the smallest timestamp at
//! the head of the inputs; the output is `(t, row)` where `row[i]` is input `i`'s value if its next
//! element has timestamp `t` (that element is then consumed), and `None` otherwise. An input with
//! several elements at one timestamp gives several outputs at that timestamp. Because an input
//! with nothing pending may still send an earlier timestamp, the timed zip emits only while
//! **every input has an element pending**: a quiet input holds the output back (give a sensor that
//! may fall silent a heartbeat). An input that has **closed** and been fully consumed can send
//! nothing more: it no longer holds the others back and is `None` in every later row. So once
//! every input has closed, everything has been emitted. The output never depends on batch
//! boundaries.
//!
//! **In event time**, [`Graph::timed_zip`] waits for the watermarks instead: a row at `t` goes
//! out once every input's watermark has passed `t` (an idle or ended input does not hold the
//! others back), so a quiet input marked idle no longer holds the output for ever, and input out
//! of order within the bound gives the same rows; an element behind its input's watermark, or
//! behind what was emitted, is late, dropped and counted ([`Graph::timed_zip_counted`]).
//!
//! **In event time.** When the inputs of [`Graph::timed_mix`] carry watermarks (each made with
//! [`Graph::watermarks`], see the [`event`](crate::ops::event) guide), it does not judge by
//! arrival: it buffers elements until every input's watermark has passed them (an idle or
//! ended input does not hold the others back), then emits them in `(t, input index, encoding)`
//! order, so input that is out of order within the watermarks' bound gives the same output
//! whatever the arrival. Only an element behind its input's watermark (one that came before
//! it on that input), or behind what was already emitted, is late: dropped and counted. The
//! first is judged on the input alone, so whether an element is late does not depend on
//! batches or on how the inputs' arrivals interleave (the second happens only to an input
//! that was idle meanwhile). At the end everything buffered is emitted. Either all its inputs carry watermarks or
//! none do (a mix of both is an error naming the input). For two streams of different types,
//! or a match within a tolerance, see [`join`](crate::ops::join).
//!
//! **In arrival order** (no watermarks, IoTPy's rule):
//! [`Graph::timed_mix`] emits `(t, (i, v))` as elements arrive, keeping the output's timestamps
//! strictly increasing: an element whose `t` is not after the last emitted timestamp is late, is
//! dropped, and is counted in the [`LateCounter`] the call returns. Arrival order is as for
//! [`Graph::mix`], with one refinement: elements that reach the agent in the same step are taken
//! in timestamp order (ties: lower input index first, then input order), so elements that arrive
//! together are never dropped merely for being listed after a later one. Which elements are late
//! therefore depends on arrival: under the [`Harness`](crate::Harness) it is exactly determined by
//! how pushes and runs are interleaved.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::agent::{Agent, Inputs, Outputs, Ports};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Declares `n` inputs named `in0`, `in1`, ….
pub(crate) fn declare_inputs<T: Element>(p: &mut Ports, n: usize) -> Vec<Input<T>> {
    (0..n).map(|i| p.input::<T>(&format!("in{i}"))).collect()
}

impl Graph {
    /// Connects `streams[i]` to `inputs[i]`, and records a problem if there are none.
    pub(crate) fn connect_all<T: Element>(
        &mut self,
        name: &str,
        op: &str,
        streams: &[Stream<T>],
        inputs: &[Input<T>],
    ) {
        if streams.is_empty() {
            self.problem(format!(
                "agent '{name}': {op} needs at least one input stream"
            ));
        }
        for (s, i) in streams.iter().zip(inputs) {
            self.connect(s, i);
        }
    }
}

/// One step of an n-way zip: calls `row` with the k-th element of every input, for every k that
/// every input holds, then consumes those elements. Once an input has closed and been zipped to
/// its end, consumes (discards) everything the others hold as well: no tuple can form any more.
pub(crate) fn zip_step<T: Element>(
    inputs: &mut Inputs<'_>,
    ins: &[Input<T>],
    mut row: impl FnMut(&[&T]) -> Result<(), AgentError>,
) -> Result<(), AgentError> {
    let k = ins.iter().map(|i| inputs.slice(i).len()).min().unwrap_or(0);
    if k > 0 {
        // One allocation per batch, none per element.
        let slices: Vec<&[T]> = ins.iter().map(|i| inputs.slice(i)).collect();
        let mut r: Vec<&T> = Vec::with_capacity(ins.len());
        for x in 0..k {
            r.clear();
            r.extend(slices.iter().map(|s| &s[x]));
            row(&r)?;
        }
    }
    let ended = ins
        .iter()
        .any(|i| inputs.is_closed(i) && inputs.slice(i).len() == k);
    for i in ins {
        let n = if ended { inputs.slice(i).len() } else { k };
        inputs.consume(i, n);
    }
    Ok(())
}

/// Whether a timed merge runs in event time: all its inputs carry watermarks (true), or none
/// (false: IoTPy's rules); some but not all is an error naming the first input without.
fn in_event_time<V: Element>(
    inputs: &Inputs<'_>,
    ins: &[Input<(u64, V)>],
    op: &str,
) -> Result<bool, AgentError> {
    let timed: Vec<bool> = ins.iter().map(|i| inputs.carries_watermarks(i)).collect();
    if !timed.iter().any(|&t| t) {
        return Ok(false);
    }
    match timed.iter().position(|&t| !t) {
        Some(j) => Err(format!(
            "input {j} carries no watermarks while others do: put Graph::watermarks on every \
             input of a {op} in event time, or on none"
        )
        .into()),
        None => Ok(true),
    }
}

/// Checks that timestamps do not decrease within one input, looking at each element once
/// however long it waits unconsumed.
#[derive(Default)]
struct TimeOrder {
    /// Elements at the front of the input's slice already checked.
    checked: usize,
    /// The timestamp of the last element checked.
    last: Option<u64>,
}

impl TimeOrder {
    fn check<V>(&mut self, input: usize, slice: &[(u64, V)]) -> Result<(), AgentError> {
        for (t, _) in &slice[self.checked..] {
            if let Some(last) = self.last {
                if *t < last {
                    return Err(format!(
                        "input {input}: timestamp {t} follows timestamp {last}; \
                         timestamps must not decrease within an input"
                    )
                    .into());
                }
            }
            self.last = Some(*t);
        }
        self.checked = slice.len();
        Ok(())
    }

    /// `n` elements were consumed from the front of the slice.
    fn consumed(&mut self, n: usize) {
        self.checked -= n;
    }
}

// ---------------------------------------------------------------------------------------------
// zip

struct Zip2<A, B> {
    a: Input<A>,
    b: Input<B>,
    out: Stream<(A, B)>,
}

impl<A: Element, B: Element> Agent for Zip2<A, B> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let (sa, sb) = (inputs.slice(&self.a), inputs.slice(&self.b));
        let k = sa.len().min(sb.len());
        outputs
            .vec(&self.out)
            .extend(sa[..k].iter().cloned().zip(sb[..k].iter().cloned()));
        let ended = (sa.len() == k && inputs.is_closed(&self.a))
            || (sb.len() == k && inputs.is_closed(&self.b));
        let (na, nb) = if ended { (sa.len(), sb.len()) } else { (k, k) };
        inputs.consume(&self.a, na);
        inputs.consume(&self.b, nb);
        Ok(())
    }
}

struct Zip3<A, B, C> {
    a: Input<A>,
    b: Input<B>,
    c: Input<C>,
    out: Stream<(A, B, C)>,
}

impl<A: Element, B: Element, C: Element> Agent for Zip3<A, B, C> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let (sa, sb, sc) = (
            inputs.slice(&self.a),
            inputs.slice(&self.b),
            inputs.slice(&self.c),
        );
        let k = sa.len().min(sb.len()).min(sc.len());
        outputs.vec(&self.out).extend(
            sa[..k]
                .iter()
                .zip(&sb[..k])
                .zip(&sc[..k])
                .map(|((a, b), c)| (a.clone(), b.clone(), c.clone())),
        );
        let ended = (sa.len() == k && inputs.is_closed(&self.a))
            || (sb.len() == k && inputs.is_closed(&self.b))
            || (sc.len() == k && inputs.is_closed(&self.c));
        let (na, nb, nc) = if ended {
            (sa.len(), sb.len(), sc.len())
        } else {
            (k, k, k)
        };
        inputs.consume(&self.a, na);
        inputs.consume(&self.b, nb);
        inputs.consume(&self.c, nc);
        Ok(())
    }
}

struct ZipMap<T, U, F> {
    ins: Vec<Input<T>>,
    out: Stream<U>,
    f: F,
}

impl<T, U, F> Agent for ZipMap<T, U, F>
where
    T: Element,
    U: Element,
    F: FnMut(&[&T]) -> U + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let out = outputs.vec(&self.out);
        let f = &mut self.f;
        zip_step(inputs, &self.ins, |row| {
            out.push(f(row));
            Ok(())
        })
    }
}

// ---------------------------------------------------------------------------------------------
// mix and blend

struct Mix<T, U> {
    ins: Vec<Input<T>>,
    out: Stream<U>,
    tag: fn(usize, &T) -> U,
}

impl<T: Element, U: Element> Agent for Mix<T, U> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let out = outputs.vec(&self.out);
        let tag = self.tag;
        for (j, input) in self.ins.iter().enumerate() {
            let new = inputs.slice(input);
            let n = new.len();
            out.extend(new.iter().map(|v| tag(j, v)));
            inputs.consume(input, n);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// timed_zip

struct TimedZip<V> {
    name: String,
    /// Event time, once the first step saw that the inputs carry watermarks.
    event: Option<crate::ops::event::EventZip<V>>,
    chosen: bool,
    late: LateCounter,
    ins: Vec<Input<(u64, V)>>,
    out: Stream<(u64, Vec<Option<V>>)>,
    order: Vec<TimeOrder>,
    /// Per input: elements taken in this step (kept to reuse the allocation).
    pos: Vec<usize>,
}

impl<V: Element> Agent for TimedZip<V> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        if !self.chosen {
            self.chosen = true;
            if in_event_time(inputs, &self.ins, "timed zip")? {
                self.event = Some(crate::ops::event::EventZip::new(self.ins.len()));
            }
        }
        if let Some(ev) = &mut self.event {
            let late = ev.step(&self.name, inputs, &self.ins, &self.out, outputs)?;
            self.late.add(late);
            inputs.count_late(late);
            return Ok(());
        }
        let n = self.ins.len();
        for (j, input) in self.ins.iter().enumerate() {
            self.order[j].check(j, inputs.slice(input))?;
        }
        let slices: Vec<&[(u64, V)]> = self.ins.iter().map(|i| inputs.slice(i)).collect();
        let closed: Vec<bool> = self.ins.iter().map(|i| inputs.is_closed(i)).collect();
        let pos = &mut self.pos;
        pos.clear();
        pos.resize(n, 0);
        let out = outputs.vec(&self.out);
        // Each round consumes at least one element: the loop is bounded by the input.
        loop {
            let mut t_min: Option<u64> = None;
            let mut waiting = false;
            for j in 0..n {
                match slices[j].get(pos[j]) {
                    Some((t, _)) => t_min = Some(t_min.map_or(*t, |m| m.min(*t))),
                    // Closed and fully consumed: it can no longer send an earlier timestamp.
                    None if closed[j] => {}
                    None => {
                        waiting = true;
                        break;
                    }
                }
            }
            let Some(t) = t_min.filter(|_| !waiting) else {
                break;
            };
            let row: Vec<Option<V>> = (0..n)
                .map(|j| match slices[j].get(pos[j]) {
                    Some((tj, v)) if *tj == t => {
                        pos[j] += 1;
                        Some(v.clone())
                    }
                    _ => None,
                })
                .collect();
            out.push((t, row));
        }
        drop(slices);
        for (j, input) in self.ins.iter().enumerate() {
            inputs.consume(input, self.pos[j]);
            self.order[j].consumed(self.pos[j]);
        }
        Ok(())
    }

    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        if let Some(ev) = &mut self.event {
            ev.emit(None, &self.out, outputs);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// timed_mix

/// How many elements a [`Graph::timed_mix`] dropped because they arrived late (their timestamp
/// was not after the last one emitted), or an event window
/// ([`Graph::event_window`](crate::ops::event_window)) found late.
///
/// A cheap handle (an `Arc` around an atomic counter): clone it freely and read it while the
/// application runs or after it ended.
#[derive(Clone, Debug, Default)]
pub struct LateCounter(pub(crate) Arc<AtomicU64>);

impl LateCounter {
    /// Elements dropped so far.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// Counts `n` more dropped elements (for the operators that share this counter).
    pub(crate) fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
}

struct TimedMix<V> {
    name: String,
    /// Event time, once the first step saw that the inputs carry watermarks.
    event: Option<crate::ops::event::EventMix<V>>,
    /// The first step chose between event time and arrival order.
    chosen: bool,
    ins: Vec<Input<(u64, V)>>,
    out: Stream<(u64, (usize, V))>,
    order: Vec<TimeOrder>,
    last_emitted: Option<u64>,
    late: LateCounter,
    /// Next element of each input, smallest timestamp (then lowest input index) first.
    heap: BinaryHeap<Reverse<(u64, usize)>>,
    pos: Vec<usize>,
}

impl<V: Element> Agent for TimedMix<V> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        if !self.chosen {
            self.chosen = true;
            if in_event_time(inputs, &self.ins, "timed mix")? {
                self.event = Some(crate::ops::event::EventMix::new(self.ins.len()));
            }
        }
        if let Some(ev) = &mut self.event {
            let late = ev.step(&self.name, inputs, &self.ins, &self.out, outputs)?;
            self.late.0.fetch_add(late, Ordering::Relaxed);
            inputs.count_late(late);
            return Ok(());
        }
        for (j, input) in self.ins.iter().enumerate() {
            self.order[j].check(j, inputs.slice(input))?;
        }
        let slices: Vec<&[(u64, V)]> = self.ins.iter().map(|i| inputs.slice(i)).collect();
        self.pos.clear();
        self.pos.resize(slices.len(), 0);
        self.heap.clear();
        for (j, s) in slices.iter().enumerate() {
            if let Some((t, _)) = s.first() {
                self.heap.push(Reverse((*t, j)));
            }
        }
        let out = outputs.vec(&self.out);
        let mut late = 0;
        while let Some(Reverse((t, j))) = self.heap.pop() {
            let (_, v) = &slices[j][self.pos[j]];
            if self.last_emitted.is_none_or(|last| t > last) {
                out.push((t, (j, v.clone())));
                self.last_emitted = Some(t);
            } else {
                late += 1;
            }
            self.pos[j] += 1;
            if let Some((next, _)) = slices[j].get(self.pos[j]) {
                self.heap.push(Reverse((*next, j)));
            }
        }
        self.late.0.fetch_add(late, Ordering::Relaxed);
        drop(slices);
        inputs.count_late(late);
        for (j, input) in self.ins.iter().enumerate() {
            inputs.consume(input, self.pos[j]);
            self.order[j].consumed(self.pos[j]);
        }
        Ok(())
    }

    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        if let Some(ev) = &mut self.event {
            ev.emit(None, &self.out, outputs);
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The operators

impl Graph {
    /// Pairs the k-th elements of `a` and `b`: `(a[k], b[k])`. The longer input waits. See the
    /// [module docs](crate::ops::merge) for end of stream.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("weather_station");
    /// let temperature = g.source_iter("temperature", [21.5, 22.0, 22.5]);
    /// let humidity = g.source_iter("humidity", [40, 42, 45, 47]);
    /// let readings = g.zip("reading", &temperature, &humidity);
    /// let out = g.collect("out", &readings);
    /// g.run().unwrap();
    /// // The fourth humidity reading has no temperature to pair with.
    /// assert_eq!(out.values(), [(21.5, 40), (22.0, 42), (22.5, 45)]);
    /// ```
    pub fn zip<A: Element, B: Element>(
        &mut self,
        name: &str,
        a: &Stream<A>,
        b: &Stream<B>,
    ) -> Stream<(A, B)> {
        let (ia, ib, out) = self.add_agent(name, |p| {
            let ia = p.input::<A>("in0");
            let ib = p.input::<B>("in1");
            let out = p.output::<(A, B)>("out");
            (Zip2 { a: ia, b: ib, out }, (ia, ib, out))
        });
        self.connect(a, &ia);
        self.connect(b, &ib);
        out
    }

    /// Triples the k-th elements of `a`, `b` and `c`: `(a[k], b[k], c[k])`, like [`Graph::zip`].
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("accelerometer");
    /// let x = g.source_iter("x", [0.1, 0.2]);
    /// let y = g.source_iter("y", [0.0, -0.1]);
    /// let z = g.source_iter("z", [9.8, 9.7]);
    /// let xyz = g.zip3("xyz", &x, &y, &z);
    /// let out = g.collect("out", &xyz);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [(0.1, 0.0, 9.8), (0.2, -0.1, 9.7)]);
    /// ```
    pub fn zip3<A: Element, B: Element, C: Element>(
        &mut self,
        name: &str,
        a: &Stream<A>,
        b: &Stream<B>,
        c: &Stream<C>,
    ) -> Stream<(A, B, C)> {
        let (ia, ib, ic, out) = self.add_agent(name, |p| {
            let ia = p.input::<A>("in0");
            let ib = p.input::<B>("in1");
            let ic = p.input::<C>("in2");
            let out = p.output::<(A, B, C)>("out");
            (
                Zip3 {
                    a: ia,
                    b: ib,
                    c: ic,
                    out,
                },
                (ia, ib, ic, out),
            )
        });
        self.connect(a, &ia);
        self.connect(b, &ib);
        self.connect(c, &ic);
        out
    }

    /// `f(&[s0[k], s1[k], …])` for the k-th elements of every stream (IoTPy's `zip_map`). The
    /// row is ordered like `streams`; longer inputs wait. An empty `streams` is a graph problem.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("power_meter");
    /// let l1 = g.source_iter("phase_1", [100.0, 120.0]);
    /// let l2 = g.source_iter("phase_2", [90.0, 95.0]);
    /// let l3 = g.source_iter("phase_3", [110.0, 105.0]);
    /// let total = g.zip_map("total_watts", &[l1, l2, l3], |w: &[&f64]| {
    ///     w.iter().map(|v| **v).sum::<f64>()
    /// });
    /// let out = g.collect("out", &total);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [300.0, 320.0]);
    /// ```
    pub fn zip_map<T, U, F>(&mut self, name: &str, streams: &[Stream<T>], f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&[&T]) -> U + Send + 'static,
    {
        let (ins, out) = self.add_agent(name, |p| {
            let ins = declare_inputs::<T>(p, streams.len());
            let out = p.output::<U>("out");
            (
                ZipMap {
                    ins: ins.clone(),
                    out,
                    f,
                },
                (ins, out),
            )
        });
        self.connect_all(name, "zip_map", streams, &ins);
        out
    }

    fn mix_with<T: Element, U: Element>(
        &mut self,
        name: &str,
        op: &str,
        streams: &[Stream<T>],
        tag: fn(usize, &T) -> U,
    ) -> Stream<U> {
        let (ins, out) = self.add_agent(name, |p| {
            let ins = declare_inputs::<T>(p, streams.len());
            let out = p.output::<U>("out");
            (
                Mix {
                    ins: ins.clone(),
                    out,
                    tag,
                },
                (ins, out),
            )
        });
        self.connect_all(name, op, streams, &ins);
        out
    }

    /// Every element of every stream as it arrives, tagged with the index of its stream:
    /// `(i, v)` (IoTPy's `mix`). Order within one input is kept; across inputs it follows
    /// arrival (see the [module docs](crate::ops::merge) for exactly what is guaranteed).
    /// [`Graph::separate`] is its inverse. An empty `streams` is a graph problem.
    ///
    /// ```
    /// use iotstream::{Graph, Harness};
    /// let mut g = Graph::new("log_monitor");
    /// let web = g.input::<String>("web_log");
    /// let db = g.input::<String>("db_log");
    /// let all = g.mix("all_logs", &[web, db]);
    /// let out = g.collect("out", &all);
    ///
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&web, ["GET /".to_string()]).unwrap();
    /// h.run().unwrap();
    /// h.push(&db, ["slow query".to_string()]).unwrap();
    /// h.run().unwrap();
    /// h.push(&web, ["POST /login".to_string()]).unwrap();
    /// h.run().unwrap();
    /// assert_eq!(
    ///     out.values(),
    ///     [(0, "GET /".to_string()), (1, "slow query".into()), (0, "POST /login".into())]
    /// );
    /// h.finish().unwrap();
    /// ```
    pub fn mix<T: Element>(&mut self, name: &str, streams: &[Stream<T>]) -> Stream<(usize, T)> {
        self.mix_with(name, "mix", streams, |i, v| (i, v.clone()))
    }

    /// Every element of every stream as it arrives, untagged (IoTPy's `blend`): like
    /// [`Graph::mix`] without the input index.
    ///
    /// ```
    /// use iotstream::{Graph, Harness};
    /// let mut g = Graph::new("building_alarms");
    /// let north = g.input::<u32>("north_wing");
    /// let south = g.input::<u32>("south_wing");
    /// let alarms = g.blend("alarms", &[north, south]);
    /// let out = g.collect("out", &alarms);
    ///
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&south, [204]).unwrap();
    /// h.run().unwrap();
    /// h.push(&north, [101, 102]).unwrap();
    /// h.push(&south, [205]).unwrap();
    /// h.run().unwrap(); // arrived together: input 0 (north) first
    /// assert_eq!(out.values(), [204, 101, 102, 205]);
    /// h.finish().unwrap();
    /// ```
    pub fn blend<T: Element>(&mut self, name: &str, streams: &[Stream<T>]) -> Stream<T> {
        self.mix_with(name, "blend", streams, |_, v| v.clone())
    }

    /// Aligns timestamped streams by time: `(t, row)` with `row[i]` the value of stream `i` at
    /// time `t`, or `None` if it has none (IoTPy's `timed_zip`). Emits in time order, waiting
    /// until every open input has an element pending; a closed, drained input no longer holds
    /// the others back. See the [module docs](crate::ops::merge#timed-merges) for the exact
    /// rule. A decreasing timestamp within one input is an error; an empty `streams` is a graph
    /// problem.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("house");
    /// // (seconds, °C)
    /// let kitchen = g.source_iter("kitchen", [(0u64, 21.0), (10, 21.5), (20, 22.0)]);
    /// let garage = g.source_iter("garage", [(0u64, 12.0), (20, 11.5), (30, 11.0)]);
    /// let rooms = g.timed_zip("rooms", &[kitchen, garage]);
    /// let out = g.collect("out", &rooms);
    /// g.run().unwrap();
    /// assert_eq!(
    ///     out.values(),
    ///     [
    ///         (0, vec![Some(21.0), Some(12.0)]),
    ///         (10, vec![Some(21.5), None]),
    ///         (20, vec![Some(22.0), Some(11.5)]),
    ///         (30, vec![None, Some(11.0)]), // after the kitchen sensor's stream ended
    ///     ]
    /// );
    /// ```
    pub fn timed_zip<V: Element>(
        &mut self,
        name: &str,
        streams: &[Stream<(u64, V)>],
    ) -> Stream<(u64, Vec<Option<V>>)> {
        self.timed_zip_counted(name, streams).0
    }

    /// [`Graph::timed_zip`], with the counter of the late elements it dropped (in event time:
    /// an element behind its input's watermark or behind what was already emitted; see the
    /// [module docs](crate::ops::merge)).
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::event::Watermarks;
    /// let mut g = Graph::new("house");
    /// // The garage sensor's readings arrive out of order (within 10 s).
    /// let kitchen = g.source_iter("kitchen", [(0u64, 21.0), (10, 21.5), (20, 22.0)]);
    /// let garage = g.source_iter("garage", [(20u64, 11.5), (0, 12.0)]);
    /// let k = g.watermarks("k", &kitchen, Watermarks::bounded(10));
    /// let gg = g.watermarks("g", &garage, Watermarks::bounded(20));
    /// let (rooms, late) = g.timed_zip_counted("rooms", &[k, gg]);
    /// let out = g.collect("out", &rooms);
    /// g.run().unwrap();
    /// assert_eq!(
    ///     out.values(),
    ///     [
    ///         (0, vec![Some(21.0), Some(12.0)]),
    ///         (10, vec![Some(21.5), None]),
    ///         (20, vec![Some(22.0), Some(11.5)]),
    ///     ]
    /// );
    /// assert_eq!(late.get(), 0);
    /// ```
    // The tuple spells out the element, as in the other operators' signatures.
    #[allow(clippy::type_complexity)]
    pub fn timed_zip_counted<V: Element>(
        &mut self,
        name: &str,
        streams: &[Stream<(u64, V)>],
    ) -> (Stream<(u64, Vec<Option<V>>)>, LateCounter) {
        let late = LateCounter::default();
        let n = streams.len();
        let (ins, out) = self.add_agent(name, |p| {
            let ins = declare_inputs::<(u64, V)>(p, n);
            let out = p.output::<(u64, Vec<Option<V>>)>("out");
            p.manages_watermarks();
            let agent = TimedZip {
                name: name.to_string(),
                event: None,
                chosen: false,
                late: late.clone(),
                ins: ins.clone(),
                out,
                order: (0..n).map(|_| TimeOrder::default()).collect(),
                pos: Vec::with_capacity(n),
            };
            (agent, (ins, out))
        });
        self.connect_all(name, "timed_zip", streams, &ins);
        (out, late)
    }

    /// Emits `(t, (i, v))` for each element `(t, v)` of stream `i` as it arrives, keeping the
    /// output's timestamps strictly increasing: an element whose `t` is not after the last
    /// emitted timestamp is late and dropped (IoTPy's `timed_mix`). The returned
    /// [`LateCounter`] counts the drops. Elements that arrive together are taken in time order;
    /// see the [module docs](crate::ops::merge#timed-merges). A decreasing timestamp within one
    /// input is an error; an empty `streams` is a graph problem.
    ///
    /// ```
    /// use iotstream::{Graph, Harness};
    /// let mut g = Graph::new("event_log");
    /// let door = g.input::<(u64, String)>("door");
    /// let camera = g.input::<(u64, String)>("camera");
    /// let (events, late) = g.timed_mix("events", &[door, camera]);
    /// let out = g.collect("out", &events);
    ///
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&door, [(100, "opened".to_string())]).unwrap();
    /// h.run().unwrap();
    /// h.push(&camera, [(105, "person".to_string())]).unwrap();
    /// h.run().unwrap();
    /// h.push(&door, [(103, "closed".to_string())]).unwrap(); // after 105: late
    /// h.run().unwrap();
    /// assert_eq!(
    ///     out.values(),
    ///     [(100, (0, "opened".to_string())), (105, (1, "person".to_string()))]
    /// );
    /// assert_eq!(late.get(), 1);
    /// h.finish().unwrap();
    /// ```
    // The tuple spells out the element, as in the other operators' signatures.
    #[allow(clippy::type_complexity)]
    pub fn timed_mix<V: Element>(
        &mut self,
        name: &str,
        streams: &[Stream<(u64, V)>],
    ) -> (Stream<(u64, (usize, V))>, LateCounter) {
        let n = streams.len();
        let late = LateCounter::default();
        let (ins, out) = self.add_agent(name, |p| {
            let ins = declare_inputs::<(u64, V)>(p, n);
            let out = p.output::<(u64, (usize, V))>("out");
            p.manages_watermarks();
            let agent = TimedMix {
                name: name.to_string(),
                event: None,
                chosen: false,
                ins: ins.clone(),
                out,
                order: (0..n).map(|_| TimeOrder::default()).collect(),
                last_emitted: None,
                late: late.clone(),
                heap: BinaryHeap::with_capacity(n),
                pos: Vec::with_capacity(n),
            };
            (agent, (ins, out))
        });
        self.connect_all(name, "timed_mix", streams, &ins);
        (out, late)
    }
}
