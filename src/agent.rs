//! Agents: state plus a step function.
//!
//! # The step
//!
//! An [`Agent`] is a plain struct. The runtime calls [`Agent::step`] whenever one of its inputs
//! has new elements. The step sees, for each input, every element not yet consumed as one slice
//! ([`Inputs::slice`]), tells the runtime how many it consumed ([`Inputs::consume`]), and appends
//! to the streams it owns ([`Outputs::push`], [`Outputs::extend`], [`Outputs::vec`]). Elements it
//! leaves unconsumed are shown again, followed by newer ones, at the next step: that is how
//! windows and merges keep partial input without copying it themselves.
//!
//! An agent never learns which transport feeds it or reads from it, nor which thread, process or
//! host it runs on: the same struct runs under the deterministic [`Harness`](crate::Harness), on an
//! actix arbiter, or (later) in another process.
//!
//! # Declaring ports
//!
//! Ports are declared when the agent is added, with [`Ports`]:
//!
//! ```
//! use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, Stream};
//!
//! /// Emits the running maximum of its input.
//! struct RunningMax { input: Input<i64>, out: Stream<i64>, max: Option<i64> }
//!
//! impl Agent for RunningMax {
//!     fn step(&mut self, inputs: &mut Inputs, outputs: &mut Outputs) -> Result<(), AgentError> {
//!         let new = inputs.slice(&self.input);
//!         let out = outputs.vec(&self.out);
//!         for &v in new {
//!             let m = self.max.map_or(v, |m| m.max(v));
//!             self.max = Some(m);
//!             out.push(m);
//!         }
//!         let n = new.len();
//!         inputs.consume(&self.input, n);
//!         Ok(())
//!     }
//! }
//!
//! let mut g = Graph::new("running_max");
//! let readings = g.source_iter("readings", [3, 1, 4, 1, 5, 9, 2, 6]);
//! let (input, out) = g.add_agent("max", |p| {
//!     let input = p.input::<i64>("in");
//!     let out = p.output::<i64>("out");
//!     (RunningMax { input, out, max: None }, (input, out))
//! });
//! g.connect(&readings, &input);
//! let maxima = g.collect("maxima", &out);
//! g.run().unwrap();
//! assert_eq!(maxima.values(), [3, 3, 4, 4, 5, 9, 9, 9]);
//! ```
//!
//! # Event time: marks and timers
//!
//! A stream of timestamped elements may carry [`Mark`]s in band: watermarks ("no element
//! with a timestamp below `w` follows") and idleness (see the [`ops::event`](crate::ops::event)
//! guide). An agent sees the marks among its unconsumed elements with [`Inputs::marks`], and
//! each input's progress so far with [`Inputs::watermark`] and [`Inputs::is_idle`].
//!
//! By default the runtime forwards marks for the agent: after each step, an input's marks up
//! to where the agent consumed are *passed*, and each output gets the smallest watermark of
//! the inputs (an input closed or idle does not count; one that never had a watermark holds
//! it back; all idle makes the outputs idle), after the step's elements. So that a mark keeps
//! its place through such an agent whatever the batches, a step of an agent that consumed all
//! it was shown last time is shown the elements up to the next mark only; what follows comes
//! in the next step. (An agent that leaves elements unconsumed, a count window say, is shown
//! everything, and its marks may move later: never earlier.) An agent that holds elements
//! back and emits them later with earlier timestamps must say what its outputs' progress is
//! itself: it declares [`Ports::manages_watermarks`], is shown everything, and calls
//! [`Outputs::mark`].
//!
//! A step may also ask to be called again at a processing time ([`Inputs::wake_at`], with
//! the clock of [`Inputs::processing_time`]): for output "every N seconds of wall clock" or
//! after an input went quiet. The [`Harness`](crate::Harness) runs that clock by hand.
//!
//! # End of stream
//!
//! When every input is closed and a step consumed nothing more, the runtime calls
//! [`Agent::finish`] once (the place to emit a final partial result, if the agent has one) and
//! then closes the agent's outputs. Elements still unconsumed then (an incomplete window, say)
//! are dropped by design: the agent has seen them and chose not to use them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::AgentError;
use crate::port::{InBuf, InSlot, OutBuf, OutSlot};
use crate::stream::{Element, Input, Mark, PortId, Stream};

/// The logic of an agent: state plus a step function. See the [module docs](self).
pub trait Agent: Send + 'static {
    /// Reads new input, appends output. Called whenever an input has new elements, and once more
    /// after all inputs are closed so the agent can drain what it holds.
    fn step(
        &mut self,
        inputs: &mut Inputs<'_>,
        outputs: &mut Outputs<'_>,
    ) -> Result<(), AgentError>;

    /// Called once when every input is closed and drained, before the outputs close.
    fn finish(&mut self, outputs: &mut Outputs<'_>) -> Result<(), AgentError> {
        let _ = outputs;
        Ok(())
    }
}

/// A step's processing time, read from the executor's clock at the first look (a step that
/// asks for none reads no clock).
pub(crate) struct StepTime<'a> {
    read: &'a (dyn Fn() -> Duration + Sync),
    at: std::cell::OnceCell<Duration>,
}

impl<'a> StepTime<'a> {
    /// A time to be read from `read` when first asked.
    pub(crate) fn new(read: &'a (dyn Fn() -> Duration + Sync)) -> Self {
        StepTime {
            read,
            at: std::cell::OnceCell::new(),
        }
    }

    /// The time, the same at every call.
    fn get(&self) -> Duration {
        *self.at.get_or_init(self.read)
    }
}

/// The inputs of one agent, as seen by its step.
pub struct Inputs<'a> {
    pub(crate) agent: (u32, u32),
    pub(crate) slots: &'a mut [Box<dyn InSlot>],
    /// The processing time of the step, read at its first look.
    pub(crate) now: StepTime<'a>,
    /// The earliest processing time the step asked to be called again at.
    pub(crate) wake: &'a mut Option<Duration>,
    /// The agent's count of late elements ([`Inputs::count_late`]).
    pub(crate) late: &'a AtomicU64,
    /// The agent's count of undelivered elements ([`Inputs::count_undelivered`]).
    pub(crate) undelivered: &'a AtomicU64,
}

impl Inputs<'_> {
    fn slot<T: Element>(&self, input: &Input<T>) -> &InBuf<T> {
        let i = self.index(input.id);
        self.slots[i]
            .as_any()
            .downcast_ref::<InBuf<T>>()
            .expect("input port type mismatch")
    }

    fn slot_mut<T: Element>(&mut self, input: &Input<T>) -> &mut InBuf<T> {
        let i = self.index(input.id);
        self.slots[i]
            .as_any_mut()
            .downcast_mut::<InBuf<T>>()
            .expect("input port type mismatch")
    }

    fn index(&self, id: PortId) -> usize {
        assert!(
            (id.graph, id.agent) == self.agent && (id.port as usize) < self.slots.len(),
            "an agent used an Input handle that belongs to another agent"
        );
        id.port as usize
    }

    /// Every element of `input` not yet consumed, oldest first.
    pub fn slice<T: Element>(&self, input: &Input<T>) -> &[T] {
        self.slot(input).as_slice()
    }

    /// Marks the first `n` elements of `input`'s slice as consumed: they are not shown again.
    ///
    /// # Panics
    ///
    /// If `n` is more than the slice holds (the runtime reports it as the agent's panic).
    pub fn consume<T: Element>(&mut self, input: &Input<T>, n: usize) {
        self.slot_mut(input).consume(n);
    }

    /// Consumes everything `input` currently shows.
    pub fn consume_all<T: Element>(&mut self, input: &Input<T>) {
        let n = self.slice(input).len();
        self.consume(input, n);
    }

    /// True once the writer of `input` has closed it and every element it sent is in the slice.
    pub fn is_closed<T: Element>(&self, input: &Input<T>) -> bool {
        self.slot(input).is_closed()
    }

    /// The marks among `input`'s unconsumed elements, oldest first: `(i, mark)` means `mark`
    /// follows the first `i` elements of [`slice`](Self::slice) (`i` may equal its length).
    /// A mark is passed, and no longer listed, once the elements before it are consumed.
    ///
    /// ```
    /// use iotstream::{Agent, AgentError, Graph, Harness, Input, Inputs, Mark, Outputs, Stream};
    /// use iotstream::ops::event::Watermarks;
    ///
    /// /// Emits each element, and each watermark as a negative number.
    /// struct Show { input: Input<(u64, i64)>, out: Stream<i64> }
    /// impl Agent for Show {
    ///     fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
    ///         let data = i.slice(&self.input);
    ///         let mut at = 0;
    ///         for (k, mark) in i.marks(&self.input) {
    ///             o.extend(&self.out, data[at..k].iter().map(|e| e.1));
    ///             at = k;
    ///             if let Mark::Watermark(w) = mark {
    ///                 o.push(&self.out, -(w as i64));
    ///             }
    ///         }
    ///         o.extend(&self.out, data[at..].iter().map(|e| e.1));
    ///         i.consume_all(&self.input);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut g = Graph::new("marks");
    /// let x = g.input::<(u64, i64)>("x");
    /// let timed = g.watermarks("timed", &x, Watermarks::ascending());
    /// let (input, out) = g.add_agent("show", |p| {
    ///     let input = p.input("in");
    ///     let out = p.output("out");
    ///     (Show { input, out }, (input, out))
    /// });
    /// g.connect(&timed, &input);
    /// let seen = g.collect("seen", &out);
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&x, [(10, 1), (12, 2)]).unwrap();
    /// h.run().unwrap();
    /// h.push(&x, [(15, 3)]).unwrap();
    /// h.run().unwrap();
    /// assert_eq!(seen.values(), [1, 2, -12, 3, -15]);
    /// h.finish().unwrap();
    /// ```
    pub fn marks<T: Element>(
        &self,
        input: &Input<T>,
    ) -> impl Iterator<Item = (usize, Mark)> + use<'_, T> {
        self.slot(input).marks()
    }

    /// The highest watermark of `input` passed so far (`None`: none yet). See
    /// [`marks`](Self::marks) for the ones among the unconsumed elements.
    pub fn watermark<T: Element>(&self, input: &Input<T>) -> Option<u64> {
        self.slot(input).watermark()
    }

    /// True if `input`'s writer said it is idle (and nothing arrived since).
    pub fn is_idle<T: Element>(&self, input: &Input<T>) -> bool {
        self.slot(input).is_idle()
    }

    /// True if the stream connected to `input` carries watermarks: it comes from
    /// [`Graph::watermarks`](crate::Graph::watermarks), or from agents that forward the marks
    /// of such a stream. Known from the graph before the first element arrives. An operator
    /// uses it to choose between watermarks and timestamps taken as ascending.
    pub fn carries_watermarks<T: Element>(&self, input: &Input<T>) -> bool {
        self.slot(input).is_timed()
    }

    /// Processing time: how long the process has run, on the clock of the executor (the
    /// [`Harness`](crate::Harness) moves it by hand). For timers, not for event time. Read
    /// once per step, at its first call: every call in a step returns the same time.
    pub fn processing_time(&self) -> Duration {
        self.now.get()
    }

    /// Asks for a step at processing time `at` (or soon after), even if no input arrives. The
    /// earliest request of a step counts; a new step forgets older requests, so a step that
    /// still wants its timer asks again.
    ///
    /// An agent may take its input in only at its timers (a reader with a pace of its own):
    /// while it has a timer armed, the full connection it reads and the blocked writer of it
    /// are not a stall, nor is a connection it leads to ([`Error::Stalled`](crate::Error::Stalled)
    /// is declared once no such timer is left). In the [`Harness`](crate::Harness) time moves
    /// only with `advance_clock`, and a push that stalls names the timers to come.
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::{Agent, AgentError, Graph, Harness, Input, Inputs, Outputs, Stream};
    ///
    /// /// Every 10 s of wall clock, how many readings came in that time, whatever the traffic.
    /// struct EveryTen { input: Input<f64>, out: Stream<usize>, seen: usize, next: Option<Duration> }
    ///
    /// impl Agent for EveryTen {
    ///     fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
    ///         self.seen += i.slice(&self.input).len();
    ///         i.consume_all(&self.input);
    ///         let now = i.processing_time();
    ///         let next = *self.next.get_or_insert(now + Duration::from_secs(10));
    ///         if now >= next {
    ///             o.push(&self.out, std::mem::take(&mut self.seen));
    ///             self.next = Some(next + Duration::from_secs(10));
    ///         }
    ///         i.wake_at(self.next.unwrap());
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut g = Graph::new("rate");
    /// let x = g.input::<f64>("x");
    /// let (input, out) = g.add_agent("every_ten", |p| {
    ///     let input = p.input("in");
    ///     let out = p.output("out");
    ///     (EveryTen { input, out, seen: 0, next: None }, (input, out))
    /// });
    /// g.connect(&x, &input);
    /// let counts = g.collect("counts", &out);
    /// let mut h = Harness::new(g).unwrap();
    /// h.push(&x, [1.0, 2.0, 3.0]).unwrap();
    /// h.run().unwrap(); // at 0 s
    /// h.advance_clock(Duration::from_secs(10)).unwrap();
    /// h.advance_clock(Duration::from_secs(10)).unwrap(); // nothing came: 0
    /// assert_eq!(counts.values(), [3, 0]);
    /// h.finish().unwrap();
    /// ```
    pub fn wake_at(&mut self, at: Duration) {
        *self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// Counts `n` input elements this step found **late** (event time: behind what the
    /// watermarks already closed) and dropped, routed aside or used only to correct an
    /// earlier result. The count is the agent's `late` counter
    /// ([`AgentStats::late`](crate::AgentStats::late)), shown by the live view and exported as
    /// `iotstream_agent_late_total`, so that late data is never lost silently. The built-in
    /// event-time operators (windows, merges, joins) call it; an agent of your own that
    /// drops late elements should too. Cheap: one relaxed atomic add; call it once per step
    /// with the step's total rather than once per element.
    ///
    /// ```
    /// use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, Stream};
    ///
    /// /// Passes on readings `(time, value)` in time order, dropping any behind the last one.
    /// struct InOrder { input: Input<(u64, f64)>, out: Stream<(u64, f64)>, last: u64 }
    ///
    /// impl Agent for InOrder {
    ///     fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
    ///         let mut late = 0;
    ///         for &(t, v) in i.slice(&self.input) {
    ///             if t < self.last {
    ///                 late += 1;
    ///             } else {
    ///                 self.last = t;
    ///                 o.push(&self.out, (t, v));
    ///             }
    ///         }
    ///         i.consume_all(&self.input);
    ///         i.count_late(late);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut g = Graph::new("in_order");
    /// let readings = g.source_iter("readings", [(1, 0.5), (3, 0.7), (2, 0.6), (4, 0.9)]);
    /// let (input, out) = g.add_agent("in_order", |p| {
    ///     let input = p.input("in");
    ///     let out = p.output("out");
    ///     (InOrder { input, out, last: 0 }, (input, out))
    /// });
    /// g.connect(&readings, &input);
    /// let kept = g.collect("kept", &out);
    /// let metrics = g.run().unwrap();
    /// assert_eq!(kept.values(), [(1, 0.5), (3, 0.7), (4, 0.9)]);
    /// assert_eq!(metrics.agent("in_order").unwrap().late, 1);
    /// ```
    pub fn count_late(&mut self, n: u64) {
        if n > 0 {
            self.late.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Counts `n` elements this agent (a sink) consumed but could not deliver to the outside
    /// world and gave up on: they show in [`AgentStats::undelivered`](crate::AgentStats) and
    /// the live view's `iotstream_agent_undelivered_total`, never silently lost.
    ///
    /// ```
    /// use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs};
    ///
    /// /// "Delivers" only even numbers; counts the others.
    /// struct EvenOnly { input: Input<u32> }
    ///
    /// impl Agent for EvenOnly {
    ///     fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
    ///         let new = i.slice(&self.input);
    ///         let (n, odd) = (new.len(), new.iter().filter(|v| *v % 2 == 1).count());
    ///         i.consume(&self.input, n);
    ///         i.count_undelivered(odd as u64);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut g = Graph::new("even_only");
    /// let s = g.source_iter("numbers", 0..10u32);
    /// let input = g.add_agent("even_only", |p| {
    ///     let input = p.input("in");
    ///     (EvenOnly { input }, input)
    /// });
    /// g.connect(&s, &input);
    /// let metrics = g.run().unwrap();
    /// assert_eq!(metrics.agent("even_only").unwrap().undelivered, 5);
    /// ```
    pub fn count_undelivered(&mut self, n: u64) {
        if n > 0 {
            self.undelivered.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// The outputs of one agent, as seen by its step. Everything appended to one output during one
/// step travels as one batch.
pub struct Outputs<'a> {
    pub(crate) agent: (u32, u32),
    pub(crate) slots: &'a mut [Box<dyn OutSlot>],
}

impl Outputs<'_> {
    /// The buffer of elements appended to `stream` in this step: push to it directly in hot loops.
    pub fn vec<T: Element>(&mut self, stream: &Stream<T>) -> &mut Vec<T> {
        self.buf(stream).pending()
    }

    fn buf<T: Element>(&mut self, stream: &Stream<T>) -> &mut OutBuf<T> {
        let id = stream.id;
        assert!(
            (id.graph, id.agent) == self.agent && (id.port as usize) < self.slots.len(),
            "an agent appended to a Stream it does not own"
        );
        self.slots[id.port as usize]
            .as_any_mut()
            .downcast_mut::<OutBuf<T>>()
            .expect("output port type mismatch")
    }

    /// Moves every element `inputs` shows of `input` to the end of `stream`, consumes them, and
    /// returns them there, to be changed in place: a map that keeps its element type, or a
    /// stage that passes its input on, without copying its batches.
    ///
    /// When the step has appended nothing to `stream` yet and the input shows one batch of at
    /// least 64 KiB (4 KiB when every reader of `stream` is reached through a ring, a socket
    /// or a broker, which write it as bytes) that nothing else holds (its writer's only reader
    /// took it, as a whole),
    /// the batch's vector itself becomes the step's output: no element is copied, and an
    /// empty vector of this output's goes back to the writer's pool in its place. Otherwise
    /// the elements are cloned onto the end of the output, as [`extend`](Self::extend) would
    /// (a smaller batch is copied faster than its vector is passed on). Either way the result
    /// is the same; only the cost differs (with 1 KiB elements, the copy is most of a map
    /// stage's time).
    ///
    /// The elements are in the output as soon as this returns, and what a step appended goes
    /// on even when the step then fails: a step that may fail after changing only some of them
    /// should cut the output back to what it changed (`o.vec(&out).truncate(..)`), as
    /// [`Graph::map_in_place`](crate::Graph::map_in_place) does when its function panics.
    ///
    /// ```
    /// use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, Stream};
    ///
    /// /// Scales every reading in place.
    /// struct Scale { input: Input<[f32; 4]>, out: Stream<[f32; 4]> }
    ///
    /// impl Agent for Scale {
    ///     fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
    ///         for r in o.forward(&self.out, i, &self.input) {
    ///             r.iter_mut().for_each(|x| *x *= 2.0);
    ///         }
    ///         Ok(())
    ///     }
    /// }
    ///
    /// let mut g = Graph::new("scale");
    /// let s = g.source_iter("readings", (0..3).map(|k| [k as f32; 4]));
    /// let (input, out) = g.add_agent("scale", |p| {
    ///     let input = p.input("in");
    ///     let out = p.output("out");
    ///     (Scale { input, out }, (input, out))
    /// });
    /// g.connect(&s, &input);
    /// let scaled = g.collect("scaled", &out);
    /// g.run().unwrap();
    /// assert_eq!(scaled.values(), [[0.0; 4], [2.0; 4], [4.0; 4]]);
    /// ```
    pub fn forward<T: Element>(
        &mut self,
        stream: &Stream<T>,
        inputs: &mut Inputs,
        input: &Input<T>,
    ) -> &mut [T] {
        let inbuf = inputs.slot_mut(input);
        let out = self.buf(stream);
        let from = out.pending().len();
        let at_least = out.moves_at_least();
        if from == 0 && out.adopt(|empty| inbuf.take_shown(empty, at_least)) {
            return out.pending();
        }
        let n = inbuf.as_slice().len();
        out.pending().extend_from_slice(inbuf.as_slice());
        inbuf.consume(n);
        &mut out.pending()[from..]
    }

    /// Whether [`map_from`](Self::map_from) would make its results straight in a ring now:
    /// nothing appended to `stream` in this step yet, and its only reader is in another
    /// process, over shared memory, with plain data ([`Graph::plain_data`](crate::Graph::plain_data)).
    pub(crate) fn makes_through<T: Element>(&mut self, stream: &Stream<T>) -> bool {
        self.buf(stream).makes_through()
    }

    /// Appends `f(x)` to `stream` for each element `x` that `inputs` shows of `input`, and
    /// consumes them. When [`makes_through`](Self::makes_through), each result is made
    /// straight in the ring, as many as it has room for now (no vector, no second pass
    /// over the elements to copy them in); the rest are appended as usual.
    ///
    /// If `f` panics, exactly the elements whose results go on are consumed: those before it
    /// (those of the ring frame it panicked in are dropped unsent, and stay unconsumed); the
    /// panic then goes on.
    pub(crate) fn map_from<T: Element, U: Element>(
        &mut self,
        stream: &Stream<U>,
        inputs: &mut Inputs,
        input: &Input<T>,
        mut f: impl FnMut(&T) -> U,
    ) {
        let items = inputs.slice(input);
        let n = items.len();
        if n == 0 {
            return;
        }
        let out = self.buf(stream);
        let (made, panic) = out.make_through(n, |i| f(&items[i]));
        let mut mapped = made;
        let panic = panic.or_else(|| {
            let pending = out.pending();
            pending.reserve(n - made);
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                for x in &items[made..] {
                    pending.push(f(x));
                    mapped += 1;
                }
            }))
            .err()
        });
        inputs.consume(input, mapped);
        if let Some(panic) = panic {
            std::panic::resume_unwind(panic);
        }
    }

    /// Appends one element to `stream`.
    pub fn push<T: Element>(&mut self, stream: &Stream<T>, value: T) {
        self.vec(stream).push(value);
    }

    /// Appends every element of `values` to `stream`, in order.
    pub fn extend<T: Element, I: IntoIterator<Item = T>>(&mut self, stream: &Stream<T>, values: I) {
        self.vec(stream).extend(values);
    }

    /// Sends `mark` on `stream` after the elements appended to it so far in this step (marks
    /// may go between a step's elements: they travel in that order). Only for agents
    /// that declared [`Ports::manages_watermarks`] (otherwise the runtime forwards their
    /// inputs' marks and this one may be overridden). A watermark not above the last one
    /// sent is ignored: watermarks never go back.
    pub fn mark<T: Element>(&mut self, stream: &Stream<T>, mark: Mark) {
        let id = stream.id;
        assert!(
            (id.graph, id.agent) == self.agent && (id.port as usize) < self.slots.len(),
            "an agent marked a Stream it does not own"
        );
        self.slots[id.port as usize].set_mark(mark);
    }
}

/// Declares the ports of an agent being added with [`Graph::add_agent`](crate::Graph::add_agent).
pub struct Ports {
    pub(crate) graph: u32,
    pub(crate) agent: u32,
    pub(crate) inputs: Vec<PortDecl>,
    pub(crate) outputs: Vec<PortDecl>,
    /// The agent sends its outputs' marks itself ([`Ports::manages_watermarks`]).
    pub(crate) manages_watermarks: bool,
    /// Its outputs carry watermarks whatever its inputs ([`Ports::originates_watermarks`]).
    pub(crate) originates_watermarks: bool,
    /// Calls that named a port of another agent: reported when the application is built.
    pub(crate) misuse: Vec<String>,
}

/// What the graph keeps of a declared port until the application is instantiated.
pub(crate) struct PortDecl {
    pub name: String,
    /// The element type's name, for messages.
    pub type_name: &'static str,
    /// For inputs: the fewest elements the agent needs buffered to make progress.
    pub min_capacity: usize,
    pub make_in: fn() -> Box<dyn InSlot>,
    pub make_out: fn() -> Box<dyn OutSlot>,
    /// `size_of` of the element type: what a connection's byte bound counts per element in
    /// process.
    pub element_bytes: usize,
    /// The ring bytes one element of this port's type takes at most (a frame of its own):
    /// what the byte bound counts per element on a ring, and what rings are sized from.
    pub ring_frame: fn() -> usize,
    /// Starts the thread that feeds this input from a shared-memory ring.
    pub make_feeder:
        fn(
            crate::transport::FeederSpec,
        ) -> Result<std::sync::Arc<dyn crate::transport::Mailbox>, crate::error::Error>,
    /// What a TCP link of this port's type says it carries in its handshake: `(application,
    /// deployment digest, connection, label)`.
    pub link_identity: fn(&str, [u8; 32], u32, &str) -> crate::transport::tcp::LinkIdentity,
    /// Starts the receiver that feeds this input from a TCP link.
    pub make_tcp_feeder:
        fn(
            crate::transport::tcp::TcpFeederSpec,
        ) -> Result<std::sync::Arc<dyn crate::transport::Mailbox>, crate::error::Error>,
    /// Starts the receiver that feeds this input from a broker (NATS JetStream).
    pub make_broker_feeder:
        fn(
            crate::transport::broker::BrokerFeederSpec,
        ) -> Result<std::sync::Arc<dyn crate::transport::Mailbox>, crate::error::Error>,
}

fn make_in<T: Element>() -> Box<dyn InSlot> {
    Box::new(InBuf::<T>::new())
}
fn make_out<T: Element>() -> Box<dyn OutSlot> {
    Box::new(OutBuf::<T>::new())
}

impl Ports {
    fn decl<T: Element>(name: &str) -> PortDecl {
        PortDecl {
            name: name.to_string(),
            type_name: std::any::type_name::<T>(),
            min_capacity: 1,
            make_in: make_in::<T>,
            make_out: make_out::<T>,
            element_bytes: std::mem::size_of::<T>(),
            ring_frame: crate::transport::one_element_frame::<T>,
            make_feeder: crate::transport::spawn_feeder::<T>,
            link_identity: crate::transport::tcp::LinkIdentity::new::<T>,
            make_tcp_feeder: crate::transport::tcp::spawn_tcp_feeder::<T>,
            make_broker_feeder: crate::transport::broker::spawn_broker_feeder::<T>,
        }
    }

    /// Declares an input of type `T` named `name` (unique among this agent's inputs).
    pub fn input<T: Element>(&mut self, name: &str) -> Input<T> {
        let port = self.inputs.len() as u32;
        self.inputs.push(Self::decl::<T>(name));
        Input::new(PortId {
            graph: self.graph,
            agent: self.agent,
            port,
        })
    }

    /// Declares an output stream of type `T` named `name`, owned by this agent.
    pub fn output<T: Element>(&mut self, name: &str) -> Stream<T> {
        let port = self.outputs.len() as u32;
        self.outputs.push(Self::decl::<T>(name));
        Stream::new(PortId {
            graph: self.graph,
            agent: self.agent,
            port,
        })
    }

    /// Says the agent cannot make progress on `input` with fewer than `n` unconsumed elements
    /// (a count window of size `n`, say). A connection with a smaller capacity is rejected when
    /// the application is built, instead of stalling at run time.
    pub fn needs_at_least<T: Element>(&mut self, input: &Input<T>, n: usize) {
        let id = input.id;
        match self.inputs.get_mut(id.port as usize) {
            Some(decl) if (id.graph, id.agent) == (self.graph, self.agent) => {
                decl.min_capacity = n.max(1);
            }
            _ => self.misuse.push(format!(
                "needs_at_least names an input of another agent, not one this agent declared \
                 (input {} of agent {})",
                id.port, id.agent
            )),
        }
    }

    /// Says the agent sends its outputs' marks itself, with [`Outputs::mark`], instead of the
    /// runtime forwarding its inputs' (see the [module docs](self#event-time-marks-and-timers)).
    /// Its outputs carry watermarks ([`Inputs::carries_watermarks`] of their readers) if one
    /// of its inputs does, as for any agent.
    pub fn manages_watermarks(&mut self) {
        self.manages_watermarks = true;
    }

    /// Says the agent makes watermarks (it [manages](Self::manages_watermarks) them, and its
    /// outputs carry watermarks whatever its inputs): a watermark generator, like
    /// [`Graph::watermarks`](crate::Graph::watermarks).
    pub fn originates_watermarks(&mut self) {
        self.manages_watermarks = true;
        self.originates_watermarks = true;
    }
}

#[cfg(test)]
mod tests {
    use super::{Inputs, StepTime};
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    #[test]
    fn a_step_reads_the_clock_once_and_only_if_it_asks() {
        let reads = AtomicU32::new(0);
        let read = || {
            let n = reads.fetch_add(1, Ordering::Relaxed) + 1;
            Duration::from_millis(u64::from(n) * 10)
        };
        {
            let _unasked = StepTime::new(&read);
        }
        assert_eq!(
            reads.load(Ordering::Relaxed),
            0,
            "a step that does not ask reads no clock"
        );
        let asked = StepTime::new(&read);
        assert_eq!(asked.get(), Duration::from_millis(10));
        assert_eq!(
            asked.get(),
            Duration::from_millis(10),
            "the same time all step long"
        );
        assert_eq!(reads.load(Ordering::Relaxed), 1);
    }

    /// A step may hand its inputs to a scoped thread: the lazy clock keeps `Inputs` `Send`.
    #[test]
    fn inputs_stay_send() {
        fn send<T: Send>() {}
        send::<Inputs<'static>>();
    }
}
