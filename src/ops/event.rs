//! Event time: watermarks, idle inputs, and the operators that use them.
//!
//! Real data arrives out of order: clocks drift, networks reorder, a log line is written late,
//! two hosts' streams are merged. An element's **event time** is the timestamp it carries (the
//! `t` of a `(t, value)` element, in any unit: seconds, milliseconds, sample counters); its
//! **processing time** is when an agent sees it. Operators that group or align by event time
//! (windows, timed merges, joins) need to know when they have seen everything up to some time.
//! Watermarks tell them.
//!
//! # Watermarks
//!
//! A **watermark** `W` is a [`Mark`] that travels in band with a stream's elements and says "no
//! element with a timestamp below `W` follows". An element that does follow with `t < W` is
//! **late**. Marks travel in order with the data on every transport (in-process, shared
//! memory, TCP): they never overtake an element, nor an element them.
//!
//! [`Graph::watermarks`] puts watermarks on a stream, following a [`Watermarks`] strategy:
//!
//! - [`Watermarks::bounded`]`(d)`: elements may come up to `d` time units out of order; the
//!   watermark trails the highest timestamp seen by `d` (Flink's bounded out-of-orderness);
//! - [`Watermarks::ascending`]: timestamps never decrease (`d = 0`), the behaviour of the
//!   IoTPy operators.
//!
//! ```text
//!  elements (t):   3   7   5  12   9  16  10
//!  bounded(4):    ─┬───┬───┬───┬───┬───┬───┬──►
//!  watermark:      0   3   3   8   8  12  12     (highest t so far − 4)
//!                                          ▲ 10 < 12: late, beyond the bound
//! ```
//!
//! The watermark goes out after each step's elements, and also right before an element that
//! is beyond the bound, so whether an element is late never depends on how the input was cut
//! into batches: it is late exactly when its timestamp is more than `d` below the highest one
//! before it.
//!
//! Every other agent forwards the watermarks of its inputs: after each step, the smallest of
//! its inputs' watermarks up to where it consumed (an input that is closed or idle does not
//! count; one without a watermark yet holds the others back), after that step's elements. A
//! step is shown the elements up to the next mark, so `map`, `filter` and the like keep the
//! watermarks of the stream they transform exactly in place (whether an element is late
//! downstream does not depend on batches either), and an agent that reads several streams goes
//! as fast as the slowest.
//!
//! # Idle inputs
//!
//! A stream that goes quiet holds back every watermark computed from it: a merge with one
//! silent sensor would wait for ever. With [`Watermarks::idle_after`]`(d)`, a stream with no
//! element for `d` of processing time is marked **idle** ([`Mark::Idle`]): agents that read it
//! with other streams go on without it, until its next element (Flink's `withIdleness`). An
//! agent all of whose inputs are idle marks its outputs idle.
//!
//! Processing time is the executor's clock: the process's monotonic clock when the application
//! runs, and a clock the test moves by hand under the [`Harness`](crate::Harness)
//! ([`Harness::advance_clock`](crate::Harness::advance_clock)).
//!
//! # Limits at the time of writing
//!
//! - A pending timer does not keep an application alive: when every source has ended and the
//!   rest is quiet, agents are closed (their `finish` runs: event windows emit what they hold as
//!   `Final`) without waiting for timers.
//! - When every open input of a merge is idle, nothing is emitted until one sends again or
//!   ends (an ended input's buffered elements wait too): idleness never makes elements late.
//! - An agent that forwards marks takes one step per mark: a stream with a watermark after
//!   nearly every element (heavy disorder beyond the bound) costs a step per element there.
//! - `sliding(size, step)` keeps one pending window per window an element is in: a large
//!   `size / step` costs memory in proportion, and more than
//!   [`MAX_WINDOWS_PER_ELEMENT`](crate::ops::event_window::MAX_WINDOWS_PER_ELEMENT) (100,000)
//!   is refused when the application is built.
//!
//! # In your own agent
//!
//! [`Inputs::marks`](crate::Inputs::marks) lists the marks among an input's unconsumed
//! elements, with their places; [`Inputs::watermark`](crate::Inputs::watermark) and
//! [`Inputs::is_idle`](crate::Inputs::is_idle) say where an input stands;
//! [`Inputs::wake_at`](crate::Inputs::wake_at) asks for a step at a processing time. An agent
//! that emits elements later than it reads them, with earlier timestamps, declares
//! [`Ports::manages_watermarks`](crate::Ports::manages_watermarks) and sends its own marks
//! with [`Outputs::mark`](crate::Outputs::mark).

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Duration;

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::AgentError;
use crate::graph::Graph;
use crate::stream::{Element, Input, Mark, Stream};

/// How [`Graph::watermarks`] derives watermarks from a stream's timestamps.
///
/// ```
/// use std::time::Duration;
/// use iotstream::ops::event::Watermarks;
/// // Readings up to 2 s late (timestamps in ms); a sensor silent for 30 s stops holding
/// // back the others.
/// let w = Watermarks::bounded(2_000).idle_after(Duration::from_secs(30));
/// assert_eq!(w.max_delay(), 2_000);
/// assert_eq!(Watermarks::ascending().max_delay(), 0);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    max_delay: u64,
    idle_after: Option<Duration>,
}

impl Watermarks {
    /// Timestamps never decrease: the watermark is the highest timestamp seen.
    pub fn ascending() -> Self {
        Self::bounded(0)
    }

    /// Elements come at most `max_delay` time units after a later one: the watermark is the
    /// highest timestamp seen minus `max_delay`.
    pub fn bounded(max_delay: u64) -> Self {
        Watermarks {
            max_delay,
            idle_after: None,
        }
    }

    /// Marks the stream idle after `quiet` of processing time without an element (see the
    /// [module docs](self#idle-inputs)).
    pub fn idle_after(self, quiet: Duration) -> Self {
        Watermarks {
            idle_after: Some(quiet),
            ..self
        }
    }

    /// The out-of-orderness bound.
    pub fn max_delay(&self) -> u64 {
        self.max_delay
    }

    /// The idle timeout, if any.
    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_after
    }
}

/// The agent of [`Graph::watermarks`].
struct WatermarkAgent<V> {
    input: Input<(u64, V)>,
    out: Stream<(u64, V)>,
    strategy: Watermarks,
    /// The highest timestamp seen.
    max_seen: Option<u64>,
    /// The last watermark sent.
    sent: Option<u64>,
    /// When the last element came (processing time; the first step before any), and whether
    /// idleness was said since.
    last_element: Option<Duration>,
    idle: bool,
}

impl<V: Element> WatermarkAgent<V> {
    /// The watermark the elements so far imply.
    fn due(&self) -> Option<u64> {
        self.max_seen
            .map(|m| m.saturating_sub(self.strategy.max_delay))
    }

    fn send(&mut self, outputs: &mut Outputs<'_>) {
        if let Some(w) = self.due() {
            if self.sent.is_none_or(|s| w > s) {
                outputs.mark(&self.out, Mark::Watermark(w));
                self.sent = Some(w);
            }
        }
    }
}

impl<V: Element> Agent for WatermarkAgent<V> {
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError> {
        let now = inputs.processing_time();
        let data = inputs.slice(&self.input);
        // The quiet time counts from the first step, then from the last element.
        if !data.is_empty() || self.last_element.is_none() {
            self.last_element = Some(now);
            self.idle = false;
        }
        for e in data {
            // An element beyond the bound: the watermark it breaks goes first, so that it is
            // late whatever the batches (see the module docs).
            if self.due().is_some_and(|w| e.0 < w) {
                self.send(outputs);
            }
            outputs.push(&self.out, e.clone());
            self.max_seen = Some(self.max_seen.map_or(e.0, |m| m.max(e.0)));
        }
        self.send(outputs);
        inputs.consume_all(&self.input);
        if let Some(quiet) = self.strategy.idle_after {
            let since = self.last_element.unwrap_or_default();
            if !self.idle && now.saturating_sub(since) >= quiet {
                self.idle = true;
                outputs.mark(&self.out, Mark::Idle);
            } else if !self.idle {
                inputs.wake_at(since + quiet);
            }
        }
        Ok(())
    }
}

impl Graph {
    /// The elements of `stream`, unchanged, with watermarks following `strategy` (see the
    /// [module docs](crate::ops::event)): what event-time windows, merges and joins read.
    ///
    /// ```
    /// use iotstream::{Graph, Harness, Mark};
    /// use iotstream::ops::event::Watermarks;
    ///
    /// let mut g = Graph::new("readings");
    /// let x = g.input::<(u64, f64)>("x");
    /// let timed = g.watermarks("timed", &x, Watermarks::bounded(5));
    /// let out = g.collect("out", &timed);
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&x, [(10, 0.1), (8, 0.2), (20, 0.3)]).unwrap();
    /// h.finish().unwrap();
    /// // Elements are passed on as they came; the watermarks (5, then 15) travel with them.
    /// assert_eq!(out.values(), [(10, 0.1), (8, 0.2), (20, 0.3)]);
    /// ```
    pub fn watermarks<V: Element>(
        &mut self,
        name: &str,
        stream: &Stream<(u64, V)>,
        strategy: Watermarks,
    ) -> Stream<(u64, V)> {
        let (input, out) = self.add_agent(name, |p| {
            p.originates_watermarks();
            let input = p.input::<(u64, V)>("in");
            let out = p.output::<(u64, V)>("out");
            let agent = WatermarkAgent {
                input,
                out,
                strategy,
                max_seen: None,
                sent: None,
                last_element: None,
                idle: false,
            };
            (agent, (input, out))
        });
        self.connect(stream, &input);
        out
    }
}

/// How many elements an event-time merge or join buffers at most while it waits for watermarks.
pub const DEFAULT_MAX_BUFFERED: usize = 1 << 20;

// ---------------------------------------------------------------------------------------------
// The pieces of buffering operators (merges and joins): one input's event time

/// Where one input of a buffering operator stands in event time.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct EventInput {
    /// The input's watermark: no element below it will come (timestamps taken as ascending
    /// when the input carries no watermarks).
    pub watermark: Option<u64>,
    /// It said it is idle, and nothing came since.
    pub idle: bool,
    /// It ended, and every element was taken.
    pub closed: bool,
}

impl EventInput {
    /// Takes every unconsumed element of `input`, in order with its marks: `each` gets every
    /// element and whether it is **behind its input's watermark** just before it (below a
    /// watermark that came before it; without watermarks, below a timestamp the input already
    /// sent). Such an element is late whatever the other inputs do, and judging it by its own
    /// input's marks, in their place, is what keeps lateness independent of batches and of
    /// how the inputs' steps interleave: the operator may not have emitted up to that
    /// watermark yet. Consumes them all.
    pub fn take<V: Element>(
        &mut self,
        inputs: &mut Inputs<'_>,
        input: &Input<(u64, V)>,
        mut each: impl FnMut(&(u64, V), bool),
    ) {
        let timed = inputs.carries_watermarks(input);
        let data = inputs.slice(input);
        let mut at = 0;
        let mut marks = inputs.marks(input).peekable();
        // Ends: each pass takes an element or a mark.
        loop {
            if let Some(&(k, mark)) = marks.peek() {
                if k <= at {
                    marks.next();
                    match mark {
                        Mark::Watermark(w) if timed => {
                            self.watermark = Some(self.watermark.map_or(w, |o| o.max(w)));
                            self.idle = false;
                        }
                        Mark::Idle if timed => self.idle = true,
                        _ => {}
                    }
                    continue;
                }
            }
            let Some(e) = data.get(at) else { break };
            each(e, self.watermark.is_some_and(|w| e.0 < w));
            self.idle = false;
            if !timed {
                self.watermark = Some(self.watermark.map_or(e.0, |o| o.max(e.0)));
            }
            at += 1;
        }
        drop(marks);
        inputs.consume_all(input);
        self.closed = inputs.is_closed(input);
    }
}

/// The point below which every input is complete: the smallest watermark of the inputs that
/// are open and not idle (`None` while one has none yet; `u64::MAX` once all ended). All idle
/// (and none ended with nothing left): nothing is known beyond what was emitted.
pub(crate) fn frontier(ins: &[EventInput]) -> Option<u64> {
    let mut min: Option<u64> = None;
    let mut active = false;
    for i in ins {
        if i.closed || i.idle {
            continue;
        }
        active = true;
        // One without a watermark yet holds everything back.
        let w = i.watermark?;
        min = Some(min.map_or(w, |m| m.min(w)));
    }
    if active {
        min
    } else if ins.iter().all(|i| i.closed) {
        Some(u64::MAX)
    } else {
        None
    }
}

// ---------------------------------------------------------------------------------------------
// timed_mix in event time

/// [`Graph::timed_mix`](crate::Graph::timed_mix) over inputs that carry watermarks: elements
/// wait until every input's watermark has passed them, then go out in `(t, input, encoding)`
/// order; an element behind its input's watermark, or behind what was emitted, is late.
pub(crate) struct EventMix<V> {
    clocks: Vec<EventInput>,
    pending: BinaryHeap<Reverse<Keyed<(usize, V)>>>,
    seq: u64,
    done_below: u64,
}

impl<V: Element> EventMix<V> {
    pub fn new(inputs: usize) -> Self {
        EventMix {
            clocks: vec![EventInput::default(); inputs],
            pending: BinaryHeap::new(),
            seq: 0,
            done_below: 0,
        }
    }

    /// One step: takes every input's elements, emits what every watermark has passed;
    /// returns how many were late.
    pub fn step(
        &mut self,
        name: &str,
        inputs: &mut Inputs<'_>,
        ins: &[Input<(u64, V)>],
        out: &Stream<(u64, (usize, V))>,
        outputs: &mut Outputs<'_>,
    ) -> Result<u64, AgentError> {
        let mut late = 0;
        let done_below = self.done_below;
        for (j, input) in ins.iter().enumerate() {
            let (pending, seq) = (&mut self.pending, &mut self.seq);
            self.clocks[j].take(inputs, input, |e, behind| {
                if behind || e.0 < done_below {
                    late += 1;
                } else {
                    *seq += 1;
                    pending.push(Reverse(Keyed {
                        t: e.0,
                        seq: (j as u64) << 48 | *seq,
                        v: (j, e.1.clone()),
                    }));
                }
            });
        }
        if self.pending.len() > DEFAULT_MAX_BUFFERED {
            return Err(format!(
                "timed mix '{name}': more than {DEFAULT_MAX_BUFFERED} elements wait for the \
                 watermarks (check that every input's watermark advances, or mark quiet inputs \
                 idle)"
            )
            .into());
        }
        if let Some(upto) = frontier(&self.clocks).filter(|&u| u > self.done_below) {
            self.emit(Some(upto), out, outputs);
        }
        Ok(late)
    }

    /// Emits everything below `upto`, then the watermark; with `None` (the end), everything,
    /// timestamps of `u64::MAX` included.
    pub fn emit(
        &mut self,
        upto: Option<u64>,
        out: &Stream<(u64, (usize, V))>,
        outputs: &mut Outputs<'_>,
    ) {
        // Elements of one input at one timestamp go out in a fixed order (`sort_ties`), not
        // in their order of arrival.
        let mut run: Vec<(usize, V)> = Vec::new();
        let mut run_t = 0;
        let flush = |run: &mut Vec<(usize, V)>, t: u64, outputs: &mut Outputs<'_>| {
            if run.len() > 1 {
                run.sort_by_cached_key(|(_, v)| encoding(v));
            }
            for e in run.drain(..) {
                outputs.push(out, (t, e));
            }
        };
        while let Some(Reverse(k)) = self.pending.peek() {
            if upto.is_some_and(|u| k.t >= u) {
                break;
            }
            let Reverse(k) = self.pending.pop().expect("peeked");
            if run
                .first()
                .is_some_and(|(j, _)| (run_t, *j) != (k.t, k.v.0))
            {
                flush(&mut run, run_t, outputs);
            }
            run_t = k.t;
            run.push(k.v);
        }
        flush(&mut run, run_t, outputs);
        let upto = upto.unwrap_or(u64::MAX);
        self.done_below = self.done_below.max(upto);
        if upto < u64::MAX {
            outputs.mark(out, Mark::Watermark(upto));
        }
    }
}

/// An element ordered by (timestamp, arrival) only.
pub(crate) struct Keyed<V> {
    pub t: u64,
    pub seq: u64,
    pub v: V,
}

impl<V> PartialEq for Keyed<V> {
    fn eq(&self, o: &Self) -> bool {
        (self.t, self.seq) == (o.t, o.seq)
    }
}
impl<V> Eq for Keyed<V> {}
impl<V> PartialOrd for Keyed<V> {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl<V> Ord for Keyed<V> {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.t, self.seq).cmp(&(o.t, o.seq))
    }
}

// ---------------------------------------------------------------------------------------------
// timed_zip in event time

/// [`Graph::timed_zip`](crate::Graph::timed_zip) over inputs that carry watermarks: rows wait
/// until every input's watermark has passed their timestamp, then go out in time order; an
/// element behind its input's watermark, or behind what was emitted, is late.
pub(crate) struct EventZip<V> {
    clocks: Vec<EventInput>,
    /// Per timestamp, what each input brought, in arrival order.
    rows: std::collections::BTreeMap<u64, Vec<std::collections::VecDeque<V>>>,
    buffered: usize,
    done_below: u64,
}

impl<V: Element> EventZip<V> {
    pub fn new(inputs: usize) -> Self {
        EventZip {
            clocks: vec![EventInput::default(); inputs],
            rows: std::collections::BTreeMap::new(),
            buffered: 0,
            done_below: 0,
        }
    }

    /// One step: takes every input's elements, emits the rows every watermark has passed;
    /// returns how many elements were late.
    pub fn step(
        &mut self,
        name: &str,
        inputs: &mut Inputs<'_>,
        ins: &[Input<(u64, V)>],
        out: &Stream<(u64, Vec<Option<V>>)>,
        outputs: &mut Outputs<'_>,
    ) -> Result<u64, AgentError> {
        let mut late = 0;
        let (done_below, n) = (self.done_below, ins.len());
        for (j, input) in ins.iter().enumerate() {
            let (rows, buffered) = (&mut self.rows, &mut self.buffered);
            self.clocks[j].take(inputs, input, |e, behind| {
                if behind || e.0 < done_below {
                    late += 1;
                } else {
                    let row = rows
                        .entry(e.0)
                        .or_insert_with(|| (0..n).map(|_| Default::default()).collect());
                    row[j].push_back(e.1.clone());
                    *buffered += 1;
                }
            });
        }
        if self.buffered > DEFAULT_MAX_BUFFERED {
            return Err(format!(
                "timed zip '{name}': more than {DEFAULT_MAX_BUFFERED} elements wait for the \
                 watermarks (check that every input's watermark advances, or mark quiet inputs \
                 idle)"
            )
            .into());
        }
        if let Some(upto) = frontier(&self.clocks).filter(|&u| u > self.done_below) {
            self.emit(Some(upto), out, outputs);
        }
        Ok(late)
    }

    /// Emits every row below `upto` (several when an input has several elements at one
    /// timestamp), then the watermark; with `None` (the end), every row, timestamps of
    /// `u64::MAX` included.
    pub fn emit(
        &mut self,
        upto: Option<u64>,
        out: &Stream<(u64, Vec<Option<V>>)>,
        outputs: &mut Outputs<'_>,
    ) {
        while let Some(entry) = self.rows.first_entry() {
            if upto.is_some_and(|u| *entry.key() >= u) {
                break;
            }
            let (t, mut queues) = entry.remove_entry();
            for q in &mut queues {
                sort_ties(q);
            }
            while queues.iter().any(|q| !q.is_empty()) {
                let row: Vec<Option<V>> = queues.iter_mut().map(|q| q.pop_front()).collect();
                self.buffered -= row.iter().filter(|v| v.is_some()).count();
                outputs.push(out, (t, row));
            }
        }
        let upto = upto.unwrap_or(u64::MAX);
        self.done_below = self.done_below.max(upto);
        if upto < u64::MAX {
            outputs.mark(out, Mark::Watermark(upto));
        }
    }
}

/// `v`'s postcard encoding (the bytes it crosses a link as): a fixed total order for elements
/// with equal timestamps, so that their order never depends on their arrival.
pub(crate) fn encoding<T: serde::Serialize>(v: &T) -> Vec<u8> {
    postcard::to_allocvec(v).unwrap_or_default()
}

/// Puts the elements of one input at one timestamp in the order of their encoding (nothing to
/// do, and no encoding, for fewer than two).
pub(crate) fn sort_ties<V: serde::Serialize>(q: &mut std::collections::VecDeque<V>) {
    if q.len() > 1 {
        q.make_contiguous().sort_by_cached_key(encoding);
    }
}
