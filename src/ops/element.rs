//! Element and list operators: a function on each element, or on each batch as a slice.
//!
//! | call | IoTPy | output |
//! |---|---|---|
//! | [`Graph::map`] | `map_element` | `f(v)` for each `v` |
//! | [`Graph::map_in_place`] | `map_element` | `v` after `f(&mut v)`: a large batch only this agent holds is changed where it lies, not copied ([`Outputs::forward`]) |
//! | [`Graph::filter`] | `filter_element` | `v` where `f(v)` is true |
//! | [`Graph::filter_map`] | `map_element` returning `_no_value` | `f(v)` where it is `Some` |
//! | [`Graph::flat_map`] | `map_element` returning `_multivalue` | every item of `f(v)`, in order |
//! | [`Graph::map_with_state`] | `map_element(…, state=)` | `f(v, s) -> (out, s')` |
//! | [`Graph::try_map`] | — | `f(v)`, or the application stops with the agent's error |
//! | [`Graph::map_list`] | `map_list` | `f(new elements)` extends the output |
//! | [`Graph::skip`] | — | every element after the first `n` |
//! | [`Graph::take`] | — | the first `n` elements; the rest is read and discarded |
//! | [`Graph::map_with_state_and_end`] | `map_element(…, state=)` | as `map_with_state`, then `end(s)` when the input ends |
//! | [`Graph::flat_map_with_state_and_end`] | `map_element(…, state=)` + `_multivalue` | every item of `f(v, s) -> (items, s')`, then of `end(s)` |
//!
//! Closures are `FnMut`, so they may also keep state of their own.
//!
//! # Lining streams up: `skip` and `take`
//!
//! Two rolling aggregates of different lengths start at different elements: a rolling mean over
//! `S` values emits its first value at element `S − 1`, one over `L > S` values at element
//! `L − 1`. [`Graph::skip`] drops the first `L − S` values of the shorter one so that the two
//! line up element for element, as a seismologist's STA/LTA ratio (short-term over long-term
//! average) needs. [`Graph::take`] keeps a prefix (the first hour of a recording, a test's first
//! thousand samples); after it, the input is still read and discarded, so the writer is never
//! held back by a reader that has stopped listening.
//!
//! # Emitting at the end: the `_and_end` forms
//!
//! An element-by-element operator sees nothing after its last element, yet some results are
//! known only then: a trigger still on at the last sample must report its "off", a run-length
//! encoder its last run, a de-bouncer the value it was holding. The `_and_end` forms take a
//! second closure, `end(state)`, called once when the input has ended (also after a drain:
//! [`Running::stop`](crate::Running::stop) ends the sources' streams, and this input with
//! them); the items it returns (an `Option`, a `Vec`, any iterator) are the last elements of the
//! output. If the application fails, `end` is not called.
//!
//! [`Graph::feedback`] makes a stream usable before the stream that feeds it exists: the way to
//! build a feedback loop out of operators.

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Stream};

/// Appends the items of `items`, at most `most` of them (more is a panic), to `out`: written
/// into its spare room with a count of our own, the length set once. `extend` with an
/// iterator of unknown length (a filter) stores the length and reloads the length, the
/// capacity and the pointer at every item (an element written could alias them, for the
/// compiler): `filter` on `u64` took 2.5 times as long that way. Room for `most` up front (an
/// output vector is reused from batch to batch, so this allocates only until it has the room).
fn extend_at_most<U>(out: &mut Vec<U>, most: usize, items: impl Iterator<Item = U>) {
    out.reserve(most);
    let start = out.len();
    let room = &mut out.spare_capacity_mut()[..most];
    let mut written = 0;
    for item in items {
        room[written].write(item);
        written += 1;
    }
    // SAFETY: the `written` slots after the first `start` elements were each written above
    // with an initialised `U`, within the capacity (`reserve`). Should `items` panic (a
    // user's function), the length is not set and the items written are never dropped (a
    // leak, never a double drop).
    unsafe { out.set_len(start + written) };
}

/// One input, one output, a function on each new slice: the shape of every operator here.
pub(crate) struct SliceMap<T, U, F> {
    input: Input<T>,
    out: Stream<U>,
    f: F,
}

impl<T, U, F> Agent for SliceMap<T, U, F>
where
    T: Element,
    U: Element,
    F: FnMut(&[T], &mut Vec<U>) -> Result<(), AgentError> + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        if n == 0 {
            return Ok(());
        }
        (self.f)(new, outputs.vec(&self.out))?;
        inputs.consume(&self.input, n);
        Ok(())
    }
}

/// One input, one output, a state threaded through a function on each element, and a last word
/// from the state when the input ends: the `_and_end` operators.
struct StatefulMap<T, U, S, F, E> {
    input: Input<T>,
    out: Stream<U>,
    /// `None` only while `f` holds it, or after `end` took it.
    state: Option<S>,
    f: F,
    /// Taken by `finish`, which the runtime calls once.
    end: Option<E>,
}

impl<T, U, S, I, J, F, E> Agent for StatefulMap<T, U, S, F, E>
where
    T: Element,
    U: Element,
    S: Send + 'static,
    I: IntoIterator<Item = U>,
    J: IntoIterator<Item = U>,
    F: FnMut(&T, S) -> (I, S) + Send + 'static,
    E: FnOnce(S) -> J + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let n = new.len();
        if n == 0 {
            return Ok(());
        }
        let out = outputs.vec(&self.out);
        for v in new {
            let s = self
                .state
                .take()
                .expect("state is put back after each call");
            let (items, s) = (self.f)(v, s);
            self.state = Some(s);
            out.extend(items);
        }
        inputs.consume(&self.input, n);
        Ok(())
    }

    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        if let (Some(end), Some(state)) = (self.end.take(), self.state.take()) {
            outputs.vec(&self.out).extend(end(state));
        }
        Ok(())
    }
}

/// The agent of [`Graph::map`]: `out[i] = f(in[i])`.
struct MapEach<T, U, F> {
    input: Input<T>,
    out: Stream<U>,
    f: F,
}

impl<T, U, F> Agent for MapEach<T, U, F>
where
    T: Element,
    U: Element,
    F: FnMut(&T) -> U + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        if std::mem::size_of::<U>() <= MADE_IN_RING_AT_MOST_BYTES
            && outputs.makes_through(&self.out)
        {
            // Its only reader is across a ring: each result is made in the ring, not
            // appended to a vector that the ring then copies.
            outputs.map_from(&self.out, inputs, &self.input, &mut self.f);
            return Ok(());
        }
        let new = inputs.slice(&self.input);
        let n = new.len();
        if n == 0 {
            return Ok(());
        }
        outputs.vec(&self.out).extend(new.iter().map(&mut self.f));
        inputs.consume(&self.input, n);
        Ok(())
    }
}

/// The largest result [`Graph::map`] makes straight in the ring of its only reader, and the
/// largest element [`Graph::map_in_place`] changes on its way into it (a copy changed and
/// written there), rather than appending it to a vector the ring then copies
/// ([`Outputs::map_from`]). Measured with `iotstream bench --modes processes` (batches,
/// alternated builds) for `map_in_place`: 8-byte elements 0.97–1.26 G/s against 0.84–0.96 G/s,
/// a pass over the batch saved; 64-byte ones 102–109 M/s against 140–143 M/s, 1 KiB 6.4–6.6 M
/// against 8.1–8.5 M: a larger element is copied more than once on its way (into the copy `f`
/// changes, then into the ring), where the change in place touches only what `f` changes and
/// the ring's copy is one bulk copy. For `map` (`cargo bench --bench modes`' two-process
/// graph, 200 M `u64`, alternated): 0.96–1.17 G/s against 0.94–0.96 G/s.
const MADE_IN_RING_AT_MOST_BYTES: usize = 8;

/// The agent of [`Graph::map_in_place`].
struct InPlace<T: Element, F> {
    input: Input<T>,
    out: Stream<T>,
    f: F,
}

impl<T, F> Agent for InPlace<T, F>
where
    T: Element,
    F: FnMut(&mut T) + Send + 'static,
{
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        if std::mem::size_of::<T>() <= MADE_IN_RING_AT_MOST_BYTES
            && outputs.makes_through(&self.out)
        {
            // Its only reader is across a ring: each element is changed on its way into the
            // ring, in one pass (no change in place, then a copy into the ring).
            let f = &mut self.f;
            outputs.map_from(&self.out, inputs, &self.input, |v: &T| {
                let mut v = v.clone();
                f(&mut v);
                v
            });
            return Ok(());
        }
        let from = outputs.vec(&self.out).len();
        let moved = outputs.forward(&self.out, inputs, &self.input);
        let mut mapped = 0;
        let f = &mut self.f;
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for v in moved.iter_mut() {
                f(v);
                mapped += 1;
            }
        }));
        if let Err(panic) = run {
            // What follows the element `f` panicked on was never changed: it must not go on
            // as if it had been (as `map` sends only what `f` returned before it panicked).
            outputs.vec(&self.out).truncate(from + mapped);
            std::panic::resume_unwind(panic);
        }
        Ok(())
    }
}

impl Graph {
    /// Adds an agent that applies `f` to each new slice of `stream`, appending to its output.
    pub(crate) fn slice_map<T, U, F>(&mut self, name: &str, stream: &Stream<T>, f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&[T], &mut Vec<U>) -> Result<(), AgentError> + Send + 'static,
    {
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<U>("out");
            (SliceMap { input, out, f }, (input, out))
        });
        self.connect(stream, &input);
        out
    }

    /// `out[i] = f(in[i])`.
    ///
    /// When the output's only reader is in another process (a shared-memory ring) and the
    /// results are plain data of at most 8 bytes (a number, a small declared struct), each
    /// result is made straight in the ring, not appended to a vector the ring then copies.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("celsius");
    /// let f = g.source_iter("fahrenheit", [32.0, 212.0]);
    /// let c = g.map("to_celsius", &f, |v: &f64| (v - 32.0) * 5.0 / 9.0);
    /// let out = g.collect("out", &c);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [0.0, 100.0]);
    /// ```
    pub fn map<T, U, F>(&mut self, name: &str, stream: &Stream<T>, f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&T) -> U + Send + 'static,
    {
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<U>("out");
            (MapEach { input, out, f }, (input, out))
        });
        self.connect(stream, &input);
        out
    }

    /// `v` after `f(&mut v)`, for each `v`: a map that keeps the element type and changes each
    /// element where it lies. A batch of at least 64 KiB (4 KiB when the output's readers are
    /// all in other processes or hosts) that only this agent holds (its writer's only reader
    /// took it whole) becomes the output without a copy
    /// ([`Outputs::forward`]); a smaller one is copied (faster than passing it on); a batch
    /// another reader holds too is copied first, and that reader never sees the change. With
    /// large elements (a frame of samples, an image row) this saves most of a map's time.
    /// Elements of at most 8 bytes whose only reader is across a shared-memory ring are
    /// changed on their way into it instead (as [`map`](Self::map) makes its results there).
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("calibrate");
    /// let frames = g.source_iter("frames", [[1.0f32; 32], [2.0; 32]]);
    /// let scaled = g.map_in_place("gain", &frames, |f: &mut [f32; 32]| {
    ///     f.iter_mut().for_each(|x| *x *= 0.5)
    /// });
    /// let out = g.collect("out", &scaled);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [[0.5; 32], [1.0; 32]]);
    /// ```
    pub fn map_in_place<T, F>(&mut self, name: &str, stream: &Stream<T>, f: F) -> Stream<T>
    where
        T: Element,
        F: FnMut(&mut T) + Send + 'static,
    {
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<T>("out");
            (InPlace { input, out, f }, (input, out))
        });
        self.connect(stream, &input);
        out
    }

    /// Keeps the elements for which `f` is true.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("alarms");
    /// let t = g.source_iter("temperatures", [20, 95, 30, 101]);
    /// let hot = g.filter("too_hot", &t, |v: &i32| *v > 90);
    /// let out = g.collect("out", &hot);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [95, 101]);
    /// ```
    pub fn filter<T, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F) -> Stream<T>
    where
        T: Element,
        F: FnMut(&T) -> bool + Send + 'static,
    {
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<T>| {
            extend_at_most(out, new.len(), new.iter().filter(|v| f(v)).cloned());
            Ok(())
        })
    }

    /// `f(v)` where it is `Some`; `None` emits nothing (IoTPy's "no value").
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("parse");
    /// let lines = g.source_iter("lines", ["12".to_string(), "oops".into(), "7".into()]);
    /// let n = g.filter_map("parse", &lines, |s: &String| s.parse::<u32>().ok());
    /// let out = g.collect("out", &n);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [12, 7]);
    /// ```
    pub fn filter_map<T, U, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&T) -> Option<U> + Send + 'static,
    {
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<U>| {
            extend_at_most(out, new.len(), new.iter().filter_map(&mut f));
            Ok(())
        })
    }

    /// Every item of `f(v)`, in order (IoTPy's "multi value").
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("words");
    /// let lines = g.source_iter("lines", ["a b".to_string(), "c".into()]);
    /// let words = g.flat_map("split", &lines, |s: &String| {
    ///     s.split(' ').map(str::to_string).collect::<Vec<_>>()
    /// });
    /// let out = g.collect("out", &words);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), ["a", "b", "c"]);
    /// ```
    pub fn flat_map<T, U, I, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        I: IntoIterator<Item = U>,
        F: FnMut(&T) -> I + Send + 'static,
    {
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<U>| {
            for v in new {
                out.extend(f(v));
            }
            Ok(())
        })
    }

    /// `(out, s') = f(v, s)`, starting from `state` (IoTPy's explicit state).
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("totals");
    /// let s = g.source_iter("readings", [1, 2, 3, 4]);
    /// let totals = g.map_with_state("running_total", &s, 0, |v: &i32, total| (total + v, total + v));
    /// let out = g.collect("out", &totals);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [1, 3, 6, 10]);
    /// ```
    pub fn map_with_state<T, U, S, F>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        state: S,
        mut f: F,
    ) -> Stream<U>
    where
        T: Element,
        U: Element,
        S: Send + 'static,
        F: FnMut(&T, S) -> (U, S) + Send + 'static,
    {
        let mut state = Some(state);
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<U>| {
            for v in new {
                let (o, s) = f(v, state.take().expect("state is put back after each call"));
                state = Some(s);
                out.push(o);
            }
            Ok(())
        })
    }

    /// `f(v)`; an `Err` stops the application with an error naming this agent and the failing
    /// element's index in the stream (counting from 0). Elements before the failing one are
    /// still emitted.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("strict");
    /// let lines = g.source_iter("lines", ["1".to_string(), "x".into()]);
    /// let n = g.try_map("parse", &lines, |s: &String| s.parse::<u32>());
    /// let _out = g.collect("out", &n);
    /// let err = g.run().unwrap_err();
    /// assert_eq!(err.agent(), Some("parse"));
    /// ```
    pub fn try_map<T, U, E, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        E: Into<AgentError>,
        F: FnMut(&T) -> Result<U, E> + Send + 'static,
    {
        // The stream index of the next element: what an error names (a batch's bounds mean
        // nothing to the user).
        let mut index: u64 = 0;
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<U>| {
            for v in new {
                let o = f(v).map_err(|e| -> AgentError {
                    let e: AgentError = e.into();
                    format!("element {index} of the stream (counting from 0): {e}").into()
                })?;
                index += 1;
                out.push(o);
            }
            Ok(())
        })
    }

    /// `f(new elements)` extends the output: the cheap, vectorisable form (IoTPy's `map_list`).
    /// `f` sees batches of whatever size arrived; its result must not depend on where one batch
    /// ends and the next begins.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("scale");
    /// let s = g.source_iter("raw", [1, 2, 3]);
    /// let scaled = g.map_list("scale", &s, |xs: &[i32]| xs.iter().map(|x| x * 10).collect());
    /// let out = g.collect("out", &scaled);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [10, 20, 30]);
    /// ```
    pub fn map_list<T, U, F>(&mut self, name: &str, stream: &Stream<T>, mut f: F) -> Stream<U>
    where
        T: Element,
        U: Element,
        F: FnMut(&[T]) -> Vec<U> + Send + 'static,
    {
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<U>| {
            out.extend(f(new));
            Ok(())
        })
    }

    /// Every element after the first `n`: `out[i] = in[n + i]`. `skip(…, 0)` passes everything.
    ///
    /// Lines up two rolling aggregates of different lengths (see the [module docs](self)): the
    /// short-term average over `S` values starts `L − S` elements before the long-term one
    /// over `L`, so skipping its first `L − S` values pairs each with the long-term value of the
    /// same sample.
    ///
    /// ```
    /// use iotstream::Graph;
    /// use iotstream::ops::rolling::Rolling;
    /// // STA/LTA: the mean energy of the last 2 samples over that of the last 4.
    /// let mut g = Graph::new("sta_lta");
    /// let energy = g.source_iter("energy", [1.0, 1.0, 1.0, 1.0, 9.0, 1.0]);
    /// let sta = g.rolling("sta", &energy, 2, Rolling::Mean);
    /// let lta = g.rolling("lta", &energy, 4, Rolling::Mean);
    /// let sta = g.skip("line_up", &sta, 4 - 2);
    /// let pairs = g.zip("pair", &sta, &lta);
    /// let ratio = g.map("ratio", &pairs, |(s, l): &(f64, f64)| s / l);
    /// let out = g.collect("out", &ratio);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [1.0, 5.0 / 3.0, 5.0 / 3.0]);
    /// ```
    pub fn skip<T: Element>(&mut self, name: &str, stream: &Stream<T>, n: usize) -> Stream<T> {
        let mut to_skip = n;
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<T>| {
            let k = to_skip.min(new.len());
            to_skip -= k;
            out.extend_from_slice(&new[k..]);
            Ok(())
        })
    }

    /// The first `n` elements of `stream`. After them the input is still read, and discarded,
    /// so its writer is never held back; the output ends when the input does.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Calibrate on the first 3 readings of a sensor that never stops sending.
    /// let mut g = Graph::new("calibration");
    /// let readings = g.source_iter("readings", [10.5, 10.25, 10.75, 99.0, 98.0]);
    /// let first = g.take("calibration_window", &readings, 3);
    /// let out = g.collect("out", &first);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [10.5, 10.25, 10.75]);
    /// ```
    pub fn take<T: Element>(&mut self, name: &str, stream: &Stream<T>, n: usize) -> Stream<T> {
        let mut left = n;
        self.slice_map(name, stream, move |new: &[T], out: &mut Vec<T>| {
            let k = left.min(new.len());
            left -= k;
            out.extend_from_slice(&new[..k]);
            Ok(())
        })
    }

    /// `(out, s') = f(v, s)` for each element, starting from `state`, like
    /// [`Graph::map_with_state`]; when the input ends, the items of `end(s)` (an `Option`, a
    /// `Vec`, any iterator) are appended. See the [module docs](self).
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Number each reading, and end with how many there were.
    /// let mut g = Graph::new("numbered");
    /// let s = g.source_iter("readings", ["a".to_string(), "b".into()]);
    /// let lines = g.map_with_state_and_end(
    ///     "number",
    ///     &s,
    ///     0,
    ///     |v: &String, n| (format!("{n}: {v}"), n + 1),
    ///     |n| Some(format!("{n} readings")),
    /// );
    /// let out = g.collect("out", &lines);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), ["0: a", "1: b", "2 readings"]);
    /// ```
    pub fn map_with_state_and_end<T, U, S, J, F, E>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        state: S,
        mut f: F,
        end: E,
    ) -> Stream<U>
    where
        T: Element,
        U: Element,
        S: Send + 'static,
        J: IntoIterator<Item = U>,
        F: FnMut(&T, S) -> (U, S) + Send + 'static,
        E: FnOnce(S) -> J + Send + 'static,
    {
        self.flat_map_with_state_and_end(
            name,
            stream,
            state,
            move |v: &T, s| {
                let (o, s) = f(v, s);
                (Some(o), s)
            },
            end,
        )
    }

    /// Every item of `items` for each element, where `(items, s') = f(v, s)`, starting from
    /// `state`; when the input ends, every item of `end(s)`. `items` and `end(s)` may be an
    /// `Option`, a `Vec` or any iterator. See the [module docs](self).
    ///
    /// ```
    /// use iotstream::Graph;
    /// // A trigger: (on, off) sample indices of the runs above 5. The last run is still on
    /// // at the last sample; `end` closes it there.
    /// let mut g = Graph::new("trigger");
    /// let ratio = g.source_iter("sta_lta", [1.0, 7.0, 8.0, 2.0, 6.0, 9.0]);
    /// let events = g.flat_map_with_state_and_end(
    ///     "on_off",
    ///     &ratio,
    ///     (0u64, None), // (index of the next sample, index where the trigger went on)
    ///     |r: &f64, (i, on): (u64, Option<u64>)| match (on, *r > 5.0) {
    ///         (None, true) => (None, (i + 1, Some(i))),
    ///         (Some(start), false) => (Some((start, i - 1)), (i + 1, None)),
    ///         _ => (None, (i + 1, on)),
    ///     },
    ///     |(i, on)| on.map(|start| (start, i - 1)),
    /// );
    /// let out = g.collect("out", &events);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [(1, 2), (4, 5)]);
    /// ```
    pub fn flat_map_with_state_and_end<T, U, S, I, J, F, E>(
        &mut self,
        name: &str,
        stream: &Stream<T>,
        state: S,
        f: F,
        end: E,
    ) -> Stream<U>
    where
        T: Element,
        U: Element,
        S: Send + 'static,
        I: IntoIterator<Item = U>,
        J: IntoIterator<Item = U>,
        F: FnMut(&T, S) -> (I, S) + Send + 'static,
        E: FnOnce(S) -> J + Send + 'static,
    {
        let (input, out) = self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<U>("out");
            let agent = StatefulMap {
                input,
                out,
                state: Some(state),
                f,
                end: Some(end),
            };
            (agent, (input, out))
        });
        self.connect(stream, &input);
        out
    }

    /// A stream that can be read before what feeds it exists: returns the input to connect later
    /// and the stream that repeats it. This is how a feedback loop is built from operators.
    ///
    /// A loop ends when its functions stop emitting; once every source has ended and nothing is
    /// in flight, the runtime closes the loop's inputs. Under back-pressure, a loop that holds
    /// more than its connections' capacity cannot make progress, and the run fails with
    /// [`Error::Stalled`](crate::Error::Stalled) naming the connection, instead of hanging.
    ///
    /// ```
    /// use iotstream::Graph;
    /// // Each reading is halved until it drops below 1: 8 → 4, 2, 1.
    /// let mut g = Graph::new("halving");
    /// let readings = g.source_iter("readings", [8u32]);
    /// let (loop_in, looped) = g.feedback::<u32>("loop");
    /// let halves = g.blend("both", &[readings, looped]);
    /// let next = g.filter_map("halve", &halves, |v: &u32| (*v >= 2).then(|| v / 2));
    /// g.connect(&next, &loop_in);
    /// let out = g.collect("out", &next);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [4, 2, 1]);
    /// ```
    pub fn feedback<T: Element>(&mut self, name: &str) -> (Input<T>, Stream<T>) {
        self.add_agent(name, |p| {
            let input = p.input::<T>("in");
            let out = p.output::<T>("out");
            let f = |new: &[T], out: &mut Vec<T>| -> Result<(), AgentError> {
                out.extend_from_slice(new);
                Ok(())
            };
            (SliceMap { input, out, f }, (input, out))
        })
    }
}
