//! Sources: where streams start.
//!
//! A source is an agent with no inputs. Its work (calling an iterator, a function on a timer,
//! reading a file or standard input) runs **on a thread of its own** in a threaded run, so a slow
//! or blocking source never holds up other agents; it hands what it produces to its agent
//! through a bounded queue of elements (at most four batches wait), so a source that outruns
//! its readers is slowed down, not buffered without end. The agent takes everything waiting as
//! one batch: a source that produces one element per call still travels in batches whenever
//! its readers are busy, and alone, at once, when they are not.
//! When the source alone feeds a chain of stages whose last one writes only into shared-memory
//! rings (`source → map → filter`, then another process on the host), the source's thread
//! also steps that chain as it hands a batch over, up to the write into the ring: no worker
//! to wake, the batch stays in one core's cache (a stage of the chain then runs between the
//! source's calls, not beside them; place it with
//! [`Graph::place_on_thread`](crate::Graph::place_on_thread) to run it beside them).
//! Under the [`Harness`](crate::Harness) the same source is called inline, and timers are
//! ignored (the harness runs in logical time).
//!
//! | call | emits |
//! |---|---|
//! | [`Graph::source_iter`] | the items of an iterator, then closes |
//! | [`Graph::source_fn`] | `f()` every `interval`, `count` times or forever |
//! | [`Graph::source_file_lines`] | a file's lines, then closes |
//! | [`Graph::source_file_follow`] | the lines appended to a file, through rotation (`tail -F`; [`follow`](crate::ops::follow)) |
//! | [`Graph::source_stdin`] | standard input's lines, then closes |
//! | [`Graph::source`] | any [`Source`] you write |
//! | [`Graph::input`] | what the program pushes through an [`InputSender`] (or the harness pushes) |
//! | [`Graph::source_mqtt`] | messages from an MQTT broker (see [`ops::mqtt`](crate::ops::mqtt)) |

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::Outputs;
use crate::error::{AgentError, Error};
use crate::graph::{ExternalAny, Graph};
pub use crate::host::SOURCE_STOP_GRACE;
use crate::host::{
    Driver, Mailbox, SourceDriver, SourceEnder, SourceStatus, SourceThreadCtx, Waker,
};
use crate::ops::handoff::{bytes_of, handoff, Ending, HandoffRx, HandoffTx, PutError, Wait};
use crate::stream::{heap, Element, Stream};

/// Something that produces elements, called again and again on the source's own thread.
///
/// ```
/// use iotstream::{AgentError, Graph, Source};
///
/// /// Counts down from `n` to 1.
/// struct Countdown(u32);
///
/// impl Source<u32> for Countdown {
///     fn fill(&mut self, out: &mut Vec<u32>, max: usize) -> Result<bool, AgentError> {
///         while self.0 > 0 && out.len() < max {
///             out.push(self.0);
///             self.0 -= 1;
///         }
///         Ok(self.0 > 0)
///     }
/// }
///
/// let mut g = Graph::new("countdown");
/// let s = g.source("countdown", Countdown(3));
/// let out = g.collect("out", &s);
/// g.run().unwrap();
/// assert_eq!(out.values(), [3, 2, 1]);
/// ```
pub trait Source<T>: Send + 'static {
    /// Appends at most `max` next elements to `out` (it may block to wait for them). Returns
    /// `Ok(false)` once the source is exhausted (after appending its last elements).
    ///
    /// When the application is asked to stop, the source's stream ends after the call in
    /// progress returns; a call still waiting [`SOURCE_STOP_GRACE`] after the stop (blocked
    /// reading a terminal or a quiet pipe, say) is abandoned and the stream ends without it, so
    /// a drain never waits for input that may never come. A source that waits for input in
    /// short slices, returning `Ok(true)` with nothing appended when none came, is never
    /// abandoned and leaves what it has not read.
    fn fill(&mut self, out: &mut Vec<T>, max: usize) -> Result<bool, AgentError>;

    /// Called once the elements appended by the last [`fill`](Source::fill) are in the graph:
    /// handed over to the source's agent (a threaded run) or appended to its output (the
    /// [`Harness`](crate::Harness)). Not called after a `fill` that appended nothing, nor after
    /// one that failed. A source that reads from a system which redelivers what is not
    /// acknowledged (an MQTT broker at QoS 1, say) acknowledges here, so nothing acknowledged
    /// can be lost between the system and the graph. Does nothing by default.
    fn delivered(&mut self) {}
}

/// A closure `FnMut(out, max) -> Result<more, AgentError>` is a source, like the `fill` method.
///
/// ```
/// use iotstream::{AgentError, Graph};
/// let mut g = Graph::new("counter");
/// let mut next = 0u64;
/// let s = g.source("counter", move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
///     let end = (next + max as u64).min(10);
///     out.extend(next..end);
///     next = end;
///     Ok(next < 10)
/// });
/// let out = g.collect("out", &s);
/// g.run().unwrap();
/// assert_eq!(out.values(), (0..10).collect::<Vec<_>>());
/// ```
impl<T, F> Source<T> for F
where
    F: FnMut(&mut Vec<T>, usize) -> Result<bool, AgentError> + Send + 'static,
{
    fn fill(&mut self, out: &mut Vec<T>, max: usize) -> Result<bool, AgentError> {
        self(out, max)
    }
}

/// How a source is driven.
#[derive(Clone, Copy, Debug)]
pub struct SourceOptions {
    /// Most elements per batch (default 4096). With the default connection capacity (32 Ki
    /// elements) that keeps 8 batches in flight per connection: large batches are what makes
    /// throughput high, since the runtime's costs are per batch, never per element. It is a
    /// limit, not a size: a source's thread reserves room for at most 4 MiB of a batch up
    /// front, and what a call appends beyond that grows the batch.
    ///
    /// The run lowers it to an eighth of the smallest credit among the connections the source
    /// feeds (see [`graph`](crate::graph), "Capacity"), so that 8 batches are in flight there
    /// however large the elements, but never below 256 KiB of elements: at the default byte
    /// bound (1 MiB), 1 KiB elements go 256 to a batch, 64 KiB elements 4; 8-byte elements
    /// keep 4096. A batch that took a connection's whole credit would make writer and reader
    /// take turns (each waits while the other works on it), and one of several megabytes no
    /// longer fits a core's cache between making it and sending it: together they halved the
    /// two-process throughput of 1 KiB elements (docs/benchmarks-journal.md).
    ///
    /// A small `max_batch` (say 1) is kept: each batch downstream holds at most that many,
    /// and so each costs a step, whatever the pace. For a source that makes one element per
    /// call, keep the default instead and append what you have: a call may append fewer than
    /// `max`, and in a threaded run the source's agent takes everything its thread handed
    /// over meanwhile as one batch (adaptive batching; a quiet stream's element goes alone, at
    /// once). `cargo bench --bench single` measures both: `fill1` and `fill1_max1`.
    /// Either way the source's thread may run ahead of its agent by four default batches
    /// (lowered by the connections' bounds, as above): a small `max_batch` does not bound
    /// memory; the connection's capacity and byte bound do ([`Graph::heap_bytes`] for
    /// elements that own heap memory).
    ///
    /// [`Graph::heap_bytes`]: crate::Graph::heap_bytes
    pub max_batch: usize,
    /// If set, [`Source::fill`] is called for one element every `interval` (threaded runs
    /// only; the harness ignores time). The calls keep to the clock, without drift; an
    /// interval past what the clock can count (`Duration::MAX`) means one call, then none
    /// until the stop.
    pub interval: Option<Duration>,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            max_batch: 4096,
            interval: None,
        }
    }
}

/// Sets its flag when dropped: a source thread's "I have returned", however it returns.
struct SetOnDrop(Arc<AtomicBool>);

impl Drop for SetOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

enum Mode<T> {
    /// Called inline (the harness; a threaded run moves it to its own thread).
    Pull(Box<dyn Source<T>>),
    /// Fed by a source thread or the program, through a handoff.
    Channel(HandoffRx<T>),
    Finished,
}

pub(crate) struct SourceAgent<T> {
    out: Stream<T>,
    mode: Mode<T>,
    /// Made with a [`Source`] (its calls run on a thread of their own in a threaded run), not
    /// fed by the program (`Graph::input`).
    pulls: bool,
    options: SourceOptions,
    /// What the handoff is sized by (four of these may wait, [`waiting_limit`]): the larger of
    /// `options.max_batch` and the default's, lowered with it by the connections' bounds
    /// ([`SourceDriver::limit_batch`]). Not `max_batch` alone: a source of small batches
    /// (`max_batch: 1`) could then hand over four before its thread waited for the agent,
    /// and every batch cost a wake-up of each and two switches of threads (65,000 elements/s
    /// in `iotstream bench`'s `pool` cell with batches of one, 2.1 million now).
    handoff_batch: usize,
    /// Set by a [`SourceEnder`]: once the handoff is empty, the stream ends.
    abandoned: Arc<AtomicBool>,
    /// For elements that own heap memory, once the run set the batch's bytes.
    budget: Option<ByteBudget<T>>,
    /// Calls of the source in a row, stepped in place (under the `Harness`), that returned
    /// `Ok(true)` with nothing appended.
    empty_fills: u32,
}

/// How many calls in a row a source stepped in place (under the `Harness`, which runs
/// sources until they end) may return `Ok(true)` with nothing appended before it is an error:
/// such a source waits for outside input, and under the harness it would wait for ever.
const MAX_EMPTY_FILLS: u32 = 100;

/// Keeps a source's batches of elements that own heap memory (see
/// [`Graph::heap_bytes`](crate::Graph::heap_bytes)) to about `bytes`: each call's `max`
/// follows the bytes per element of the batch before, and the first call makes one element.
/// A batch of 4,096 camera frames made before anything could count them would hold what the
/// connections' byte bounds are there to prevent.
struct ByteBudget<T> {
    count: heap::Counter<T>,
    bytes: usize,
    /// Bytes per element of the last batch; 0 before the first.
    per_element: usize,
    /// The most the last call was allowed: the next is allowed at most twice that, so that a
    /// small first element does not let the second call make thousands of large ones.
    last: usize,
}

impl<T> Clone for ByteBudget<T> {
    fn clone(&self) -> Self {
        ByteBudget {
            count: Arc::clone(&self.count),
            bytes: self.bytes,
            per_element: self.per_element,
            last: self.last,
        }
    }
}

impl<T> ByteBudget<T> {
    /// The most elements the next call may make, at most `max`.
    fn max(&mut self, max: usize) -> usize {
        let allowed = match self.per_element {
            0 => 1,
            per => (self.bytes / per)
                .min(self.last.saturating_mul(2))
                .clamp(1, max.max(1)),
        };
        self.last = allowed;
        allowed
    }

    /// Learns the bytes per element from a batch just made.
    fn observe(&mut self, items: &[T]) {
        if !items.is_empty() {
            self.per_element = (bytes_of(&self.count, items) / items.len()).max(1);
        }
    }
}

impl<T: Element> SourceDriver for SourceAgent<T> {
    /// A pull source fills one batch. A channel-fed one takes every chunk waiting, up to
    /// `max_batch` elements, as one batch (adaptive batching: what queued up while the stage
    /// was busy travels together; a quiet stream's single element goes alone, at once).
    fn step(&mut self, outputs: &mut Outputs<'_>) -> Result<SourceStatus, AgentError> {
        let max = self.options.max_batch.max(1);
        match &mut self.mode {
            Mode::Pull(source) => {
                let buf = outputs.vec(&self.out);
                let before = buf.len();
                let max = self.budget.as_mut().map_or(max, |b| b.max(max));
                let more = source.fill(buf, max)?;
                if let Some(b) = &mut self.budget {
                    b.observe(&buf[before..]);
                }
                if buf.len() > before {
                    source.delivered();
                    self.empty_fills = 0;
                } else if more {
                    self.empty_fills += 1;
                    if self.empty_fills >= MAX_EMPTY_FILLS {
                        return Err(format!(
                            "returned Ok(true) with no element {MAX_EMPTY_FILLS} times in a row: \
                             the Harness runs a source until it ends, and one that waits for \
                             outside input never does (test the agents after it with \
                             Graph::input and pushes, or run the graph threaded)"
                        )
                        .into());
                    }
                }
                if more {
                    Ok(SourceStatus::More)
                } else {
                    self.mode = Mode::Finished;
                    Ok(SourceStatus::Done)
                }
            }
            Mode::Channel(rx) => {
                let buf = outputs.vec(&self.out);
                let before = buf.len();
                let max = self.budget.as_mut().map_or(max, |b| b.max(max));
                let taken = rx.take(buf, max, &self.abandoned);
                if let Some(b) = &mut self.budget {
                    b.observe(&buf[before..]);
                }
                match taken.end {
                    // What came before the failure is delivered first (the host flushes).
                    Some(Ending::Failed(e)) => Err(e.into()),
                    // Raised again here, where a step's panics are caught: the same
                    // `Error::Panic` as under the Harness, which makes the call in the step.
                    Some(Ending::Panicked(message)) => std::panic::resume_unwind(Box::new(message)),
                    Some(Ending::Done) => {
                        self.mode = Mode::Finished;
                        Ok(SourceStatus::Done)
                    }
                    // More than a step takes waits: step again.
                    None if !taken.asleep => Ok(SourceStatus::More),
                    // The queue is empty and the writer's next hand-over wakes the agent.
                    None => Ok(SourceStatus::Wait),
                }
            }
            Mode::Finished => Ok(SourceStatus::Done),
        }
    }

    fn has_thread(&self) -> bool {
        self.pulls
    }

    fn limit_batch(&mut self, elements: usize, bytes: usize) {
        self.options.max_batch = self.options.max_batch.clamp(1, elements.max(1));
        self.handoff_batch = self.handoff_batch.clamp(1, elements.max(1));
        self.budget = heap::counter::<T>().map(|count| ByteBudget {
            count,
            bytes,
            per_element: 0,
            last: 0,
        });
        // An input the program appends to (`Graph::input`) has its handoff already, made with
        // the default batch: it gathers batches of the step's size from now on. Batches of
        // the default size behind a step that takes fewer were split at every step, each part
        // shifting the rest (quadratic in the gathered batch: 1 KiB elements pushed one at a
        // time ran at 1.2-2.8 M/s in every mode).
        if let Mode::Channel(rx) = &self.mode {
            rx.set_bounds(waiting_limit(self.handoff_batch), self.options.max_batch);
            if let Some(b) = &self.budget {
                rx.limit_bytes(waiting_bytes(b.bytes), Arc::clone(&b.count));
            }
        }
    }

    fn spawn(&mut self, ctx: SourceThreadCtx) -> Result<Option<SourceEnder>, Error> {
        let Mode::Pull(_) = self.mode else {
            let Mode::Channel(rx) = &self.mode else {
                return Ok(None);
            };
            // An input the program appends to (`Graph::input`): its "thread" is the program's,
            // which may keep its sender for ever. After a stop, once the grace has passed,
            // what it sent is delivered and the stream ends, as for a source stuck in `fill`.
            return Ok(Some(SourceEnder {
                name: ctx.name.clone(),
                thread_done: Arc::new(AtomicBool::new(false)),
                abandoned: Arc::clone(&self.abandoned),
                waker: Waker {
                    mailbox: Arc::clone(&ctx.wake),
                    awake: rx.awake_flag(),
                    every_time: false,
                },
            }));
        };
        let limit = waiting_limit(self.handoff_batch);
        let (tx, rx) = handoff(limit);
        rx.set_bounds(limit, self.options.max_batch);
        if let Some(b) = &self.budget {
            rx.limit_bytes(waiting_bytes(b.bytes), Arc::clone(&b.count));
        }
        let budget = self.budget.clone();
        let Mode::Pull(source) = std::mem::replace(&mut self.mode, Mode::Channel(rx)) else {
            unreachable!()
        };
        let options = self.options;
        let name = ctx.name.clone();
        let waker = Waker {
            mailbox: Arc::clone(&ctx.wake),
            awake: tx.awake_flag(),
            every_time: ctx.stepped_by_poster,
        };
        let ender = SourceEnder {
            name: name.clone(),
            thread_done: Arc::new(AtomicBool::new(false)),
            abandoned: Arc::clone(&self.abandoned),
            waker: Waker {
                mailbox: Arc::clone(&ctx.wake),
                awake: tx.awake_flag(),
                every_time: false,
            },
        };
        let done = SetOnDrop(Arc::clone(&ender.thread_done));
        std::thread::Builder::new()
            .name(format!("source {name}"))
            .spawn(move || {
                let _done = done;
                run_source_thread(source, options, budget, tx, ctx, waker)
            })
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start the thread of source '{name}': {e}"),
            })?;
        Ok(Some(ender))
    }
}

/// How many elements may wait between a source's thread (or the program) and its agent before
/// the writer waits: four batches (of `handoff_batch` elements).
fn waiting_limit(handoff_batch: usize) -> usize {
    handoff_batch.max(1).saturating_mul(4)
}

/// What a source's handoff is sized by, before the run lowers it: `max_batch`, and at least
/// the default's (see [`SourceAgent::handoff_batch`]).
fn handoff_batch(options: &SourceOptions) -> usize {
    options
        .max_batch
        .max(SourceOptions::default().max_batch)
        .max(1)
}

/// How many bytes of elements that own heap memory may wait there: four batches' worth.
fn waiting_bytes(batch_bytes: usize) -> usize {
    batch_bytes.saturating_mul(4)
}

/// Hands `buf` over, waiting while the handoff is full; after a stop, appends it anyway (what
/// the source produced is delivered). False if the run is over.
fn hand_over<T>(tx: &HandoffTx<T>, buf: &mut Vec<T>, ctx: &SourceThreadCtx, waker: &Waker) -> bool {
    match tx.put(buf, Wait::UntilStop(&ctx.stop)) {
        Ok(asleep) => {
            waker.woken(asleep);
            true
        }
        Err(_) => false,
    }
}

/// Ends a source's stream with `failure`, after what its failed call appended (`buf`): nothing
/// already accepted is lost.
fn fail<T>(
    failure: Ending,
    mut buf: Vec<T>,
    tx: &HandoffTx<T>,
    ctx: &SourceThreadCtx,
    waker: &Waker,
) {
    if buf.is_empty() || hand_over(tx, &mut buf, ctx, waker) {
        tx.end(failure);
        waker.wake();
    }
}

/// How a source's call that panicked ends its stream.
fn panicked(panic: &(dyn std::any::Any + Send)) -> Ending {
    Ending::Panicked(crate::error::panic_message(panic))
}

/// Ends a source's stream after what it handed over.
fn end<T>(tx: &HandoffTx<T>, waker: &Waker) {
    tx.end(Ending::Done);
    waker.wake();
}

/// Ends the stream of a source's thread that a panic unwound outside the source's own calls
/// (those are caught where they are made): in a stage this thread stepped as it woke its
/// agent, say. The run then fails with the panic; a handoff merely dropped would have left the
/// agent asleep with nothing to wake it (the run hung), or ended the stream as if the source
/// had finished. Nothing if the stream had already ended.
fn fail_unwound<T>(panic: Box<dyn std::any::Any + Send>, tx: &HandoffTx<T>, waker: &Waker) {
    let message = format!("panicked: {}", crate::error::panic_message(&*panic));
    tx.end(Ending::Failed(message));
    // The wake-up may be what panicked: once more, and whatever it does, the thread ends here.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| waker.wake()));
    // A payload whose drop panics must not unwind out of the thread either.
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(panic)));
}

/// A source's thread, from its first call to the end of its stream, however it ends.
fn run_source_thread<T: Element>(
    source: Box<dyn Source<T>>,
    options: SourceOptions,
    budget: Option<ByteBudget<T>>,
    tx: HandoffTx<T>,
    ctx: SourceThreadCtx,
    waker: Waker,
) {
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        source_thread(source, options, budget, &tx, &ctx, &waker)
    }));
    if let Err(panic) = run {
        fail_unwound(panic, &tx, &waker);
    }
}

/// The most bytes a source's thread reserves up front for a batch (more grows as `fill`
/// appends): a `max_batch` far beyond what any call fills must not fail the allocation.
const RESERVE_AT_MOST_BYTES: usize = 4 << 20;

/// The capacity a source's thread starts its batch with: room for `max` elements, within
/// [`RESERVE_AT_MOST_BYTES`].
fn batch_reserve<T>(max: usize) -> usize {
    max.min(RESERVE_AT_MOST_BYTES / std::mem::size_of::<T>().max(1))
        .max(1)
}

/// Sleeps until `due` (never, if `None`), in short slices so that a stop is noticed at once;
/// returns early on a stop.
fn sleep_until(due: Option<Instant>, stop: &AtomicBool) {
    const SLICE: Duration = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        let left = match due {
            Some(due) => match due.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => left,
                _ => return,
            },
            None => SLICE,
        };
        std::thread::sleep(left.min(SLICE));
    }
}

fn source_thread<T: Element>(
    mut source: Box<dyn Source<T>>,
    options: SourceOptions,
    mut budget: Option<ByteBudget<T>>,
    tx: &HandoffTx<T>,
    ctx: &SourceThreadCtx,
    waker: &Waker,
) {
    ctx.gate.wait();
    let max = if options.interval.is_some() {
        1
    } else {
        options.max_batch.max(1)
    };
    // When the next call is due with an interval: one interval after the last one was due (no
    // drift). `None` once that is past what an `Instant` holds: the source then waits for the
    // stop (an interval of `Duration::MAX` calls it once).
    let mut due = Some(Instant::now());
    // Handing over moves this to the agent and gives back an empty Vec the agent is done with
    // (when there is one): no allocation per call in steady state.
    let mut buf = Vec::with_capacity(batch_reserve::<T>(max));
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            // A graceful stop: what was emitted is delivered, then the stream ends.
            return end(tx, waker);
        }
        let max = budget.as_mut().map_or(max, |b| b.max(max));
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.fill(&mut buf, max)));
        if let Some(b) = &mut budget {
            b.observe(&buf);
        }
        let more = match result {
            Ok(Ok(more)) => more,
            Ok(Err(e)) => return fail(Ending::Failed(e.to_string()), buf, tx, ctx, waker),
            Err(p) => return fail(panicked(&*p), buf, tx, ctx, waker),
        };
        if !buf.is_empty() {
            if !hand_over(tx, &mut buf, ctx, waker) {
                return;
            }
            let told =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| source.delivered()));
            if let Err(p) = told {
                return fail(panicked(&*p), buf, tx, ctx, waker);
            }
        }
        if !more {
            return end(tx, waker);
        }
        if let Some(interval) = options.interval {
            due = due.and_then(|due| due.checked_add(interval));
            sleep_until(due, &ctx.stop);
        }
    }
}

/// Pushes elements into a stream made with [`Graph::input`] during a threaded run.
///
/// `send` and `push` wait while the stream's channel is full (back-pressure reaches the pushing
/// thread). Dropping the sender (or calling [`InputSender::close`]) ends the stream.
///
/// Pushing one element at a time costs little: while the input's agent is awake, no wake-up is
/// sent, and whatever was pushed while it was busy goes downstream as one batch.
///
/// **Several inputs from one thread.** An agent that pairs its inputs (a zip, a join, a merge
/// in event time) holds what one input brings until the others bring theirs, up to the
/// connection's capacity; then a push into that input waits for room the agent makes only once
/// another input is fed. A program that pushes everything into one input before it pushes
/// into the next therefore waits for ever once it has pushed more than the connection and the
/// input's own queue hold (the run cannot tell: another thread might still push). Push them
/// in turns, or from a thread per input.
///
/// ```
/// use iotstream::Graph;
/// let mut g = Graph::new("readings");
/// let readings = g.input::<f64>("readings");
/// let out = g.collect("out", &readings);
/// let mut running = g.start().unwrap();
/// let tx = running.input(&readings).unwrap();
/// for r in [20.5, 20.7, 21.0] {
///     tx.push(r).unwrap();
/// }
/// tx.send(vec![21.2, 21.3]).unwrap();
/// drop(tx); // ends the stream
/// running.join().unwrap();
/// assert_eq!(out.values(), [20.5, 20.7, 21.0, 21.2, 21.3]);
/// ```
pub struct InputSender<T: Element> {
    tx: Option<HandoffTx<T>>,
    waker: Waker,
    /// The stream's name (`"agent.port"`), for errors.
    name: String,
}

impl<T: Element> std::fmt::Debug for InputSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputSender")
            .field("stream", &self.name)
            .field("closed", &self.tx.is_none())
            .finish()
    }
}

impl<T: Element> InputSender<T> {
    pub(crate) fn new(tx: HandoffTx<T>, waker: Waker, name: String) -> Self {
        InputSender {
            tx: Some(tx),
            waker,
            name,
        }
    }

    /// Appends `items` to the stream (with whatever else waits, as one batch). Fails only if
    /// the application has stopped.
    ///
    /// Called from inside an agent's step (an agent that feeds an input of the application),
    /// it does not wait: if the input is full it fails, since waiting could hold up the worker
    /// thread that is the one to make room.
    pub fn send(&self, mut items: Vec<T>) -> Result<(), Error> {
        let tx = self.tx.as_ref().expect("sender is open until dropped");
        self.handed(tx.put(&mut items, Self::wait()))
    }

    /// Appends one element. Fails only if the application has stopped, or, called from inside
    /// an agent's step, if the input is full (see [`send`](Self::send)).
    pub fn push(&self, item: T) -> Result<(), Error> {
        let tx = self.tx.as_ref().expect("sender is open until dropped");
        self.handed(tx.put_one(item, Self::wait()).map_err(|(e, _)| e))
    }

    fn wait() -> Wait<'static> {
        if crate::host::in_a_step() {
            Wait::Never
        } else {
            Wait::Forever
        }
    }

    fn handed(&self, put: Result<bool, PutError>) -> Result<(), Error> {
        let asleep = put.map_err(|e| Error::Runtime {
            detail: match e {
                PutError::ReaderGone => format!(
                    "input '{}': the application has stopped; input not accepted",
                    self.name
                ),
                PutError::Full => format!(
                    "input '{}' is full and its sender was called from inside an agent's step, \
                     where waiting could hold up the very thread that makes room: send from a \
                     thread of your own",
                    self.name
                ),
            },
        })?;
        self.waker.woken(asleep);
        Ok(())
    }

    /// Ends the stream.
    pub fn close(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            tx.end(Ending::Done);
            drop(tx);
            self.waker.wake();
        }
    }
}

impl<T: Element> Drop for InputSender<T> {
    fn drop(&mut self) {
        self.end();
    }
}

/// The channel behind an external input: the executor hands out the sender.
pub(crate) struct ExternalInput<T> {
    pub tx: HandoffTx<T>,
    pub agent: usize,
}

impl<T: Element> ExternalAny for ExternalInput<T> {
    fn agent(&self) -> usize {
        self.agent
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn into_sender(
        self: Box<Self>,
        wake: Arc<dyn Mailbox>,
        name: String,
    ) -> Box<dyn std::any::Any + Send> {
        let waker = Waker {
            mailbox: wake,
            awake: self.tx.awake_flag(),
            every_time: false,
        };
        Box::new(InputSender::new(self.tx, waker, name))
    }
}

/// The items of an iterator, `max` at a time.
struct IterSource<I>(I);

impl<I> Source<I::Item> for IterSource<I>
where
    I: Iterator + Send + 'static,
{
    fn fill(&mut self, out: &mut Vec<I::Item>, max: usize) -> Result<bool, AgentError> {
        // One `extend` per batch, not one `push` per item: for an iterator of known length (a
        // range, a vector's items, a slice's) the vector reserves once and the loop writes
        // without a capacity check per item.
        let before = out.len();
        out.extend(self.0.by_ref().take(max));
        if out.len() - before < max {
            return Ok(false);
        }
        // Ended exactly at a batch's end: say so now rather than with an empty batch after.
        Ok(self.0.size_hint().1 != Some(0))
    }
}

struct FnSource<F> {
    f: F,
    left: Option<u64>,
}

impl<T, F: FnMut() -> T + Send + 'static> Source<T> for FnSource<F> {
    fn fill(&mut self, out: &mut Vec<T>, max: usize) -> Result<bool, AgentError> {
        for _ in 0..max {
            match &mut self.left {
                Some(0) => return Ok(false),
                Some(n) => *n -= 1,
                None => {}
            }
            out.push((self.f)());
        }
        Ok(self.left != Some(0))
    }
}

/// How long one [`LineSource::fill`] waits for input before it returns with nothing (its
/// thread then checks for a stop and calls again).
const LINE_WAIT_MS: u16 = 50;
/// The most one read takes from a line source's file.
const LINE_READ_CHUNK: usize = 64 * 1024;
/// The longest line a line source accepts: a longer one fails the source, naming the line.
const MAX_LINE_BYTES: usize = 16 << 20;
// A line crosses a ring as a postcard string: its bytes and a length of at most 5 bytes.
const _: () = assert!(MAX_LINE_BYTES + 5 <= crate::stream::MAX_ELEMENT_BYTES);

/// The lines of a file or of standard input. It never blocks for long and never reads more
/// than it will emit: it waits for input with `poll` in slices of [`LINE_WAIT_MS`] (a stop is
/// noticed between calls, and input not read stays in the pipe), reads what has arrived, and
/// emits the complete lines at once, without waiting for a full batch.
struct LineSource {
    origin: String,
    open: Option<Box<dyn FnOnce() -> std::io::Result<std::fs::File> + Send>>,
    file: Option<std::fs::File>,
    /// Bytes read and not emitted yet: complete lines from `start` on, then at most one
    /// unfinished line.
    pending: Vec<u8>,
    start: usize,
    /// `pending` has no `\n` from `start` up to here (an unfinished line is not searched again).
    searched: usize,
    /// Lines emitted so far (the number of the last one).
    line_no: u64,
    /// The file has ended.
    at_end: bool,
}

impl LineSource {
    fn new(
        origin: String,
        open: impl FnOnce() -> std::io::Result<std::fs::File> + Send + 'static,
    ) -> Self {
        LineSource {
            origin,
            open: Some(Box::new(open)),
            file: None,
            pending: Vec::new(),
            start: 0,
            searched: 0,
            line_no: 0,
            at_end: false,
        }
    }

    /// Moves complete lines from `pending` to `out`, at most `max` in all.
    fn take_lines(&mut self, out: &mut Vec<String>, max: usize) -> Result<(), AgentError> {
        while out.len() < max {
            let from = self.searched.max(self.start);
            let Some(i) = self.pending[from..].iter().position(|&b| b == b'\n') else {
                self.searched = self.pending.len();
                // (One byte more: the line's `\r` may be there already.)
                if self.pending.len() - self.start > MAX_LINE_BYTES + 1 {
                    let mib = MAX_LINE_BYTES >> 20;
                    let (origin, line) = (&self.origin, self.line_no + 1);
                    return Err(format!("{origin}, line {line}: longer than {mib} MiB").into());
                }
                break;
            };
            let (begin, end) = (self.start, from + i);
            self.start = end + 1;
            self.line_no += 1;
            out.push(decode_line(
                &self.origin,
                self.line_no,
                &self.pending[begin..end],
            )?);
        }
        if self.start == self.pending.len() || self.start >= LINE_READ_CHUNK {
            self.pending.drain(..self.start);
            self.searched = self.searched.saturating_sub(self.start);
            self.start = 0;
        }
        Ok(())
    }

    /// Waits (at most [`LINE_WAIT_MS`]) for input and reads what has arrived; false if none
    /// arrived in that time.
    fn read_more(&mut self) -> Result<bool, AgentError> {
        use std::io::Read;
        use std::os::fd::AsFd;
        let file = self.file.as_ref().expect("opened before reading");
        let mut fds = [nix::poll::PollFd::new(
            file.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, LINE_WAIT_MS) {
            // Nothing yet (or a signal): never read without knowing there is something to read.
            Ok(0) | Err(nix::errno::Errno::EINTR) => return Ok(false),
            Ok(_) => {}
            Err(e) => return Err(format!("{}: cannot wait for input: {e}", self.origin).into()),
        }
        let old = self.pending.len();
        self.pending.resize(old + LINE_READ_CHUNK, 0);
        match (&*file).read(&mut self.pending[old..]) {
            Ok(0) => {
                self.pending.truncate(old);
                self.at_end = true;
            }
            Ok(n) => self.pending.truncate(old + n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => self.pending.truncate(old),
            Err(e) => {
                self.pending.truncate(old);
                return Err(format!("{}, line {}: {e}", self.origin, self.line_no + 1).into());
            }
        }
        Ok(true)
    }
}

/// Line `line_no` of `origin` from its bytes (without the `\n`): without a trailing `\r`, as
/// UTF-8, or an error naming the line.
fn decode_line(origin: &str, line_no: u64, bytes: &[u8]) -> Result<String, AgentError> {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    if bytes.len() > MAX_LINE_BYTES {
        let mib = MAX_LINE_BYTES >> 20;
        return Err(format!("{origin}, line {line_no}: longer than {mib} MiB").into());
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => Ok(text.to_string()),
        Err(_) => Err(format!("{origin}, line {line_no}: not valid UTF-8").into()),
    }
}

impl Source<String> for LineSource {
    fn fill(&mut self, out: &mut Vec<String>, max: usize) -> Result<bool, AgentError> {
        if let Some(open) = self.open.take() {
            self.file = Some(open().map_err(|e| format!("cannot open {}: {e}", self.origin))?);
        }
        loop {
            self.take_lines(out, max)?;
            if !out.is_empty() {
                return Ok(true); // what has arrived, without waiting for more
            }
            if self.at_end {
                // The last line may lack its line ending.
                if self.start < self.pending.len() {
                    self.line_no += 1;
                    let last = &self.pending[self.start..];
                    out.push(decode_line(&self.origin, self.line_no, last)?);
                    self.pending.clear();
                    (self.start, self.searched) = (0, 0);
                }
                return Ok(false);
            }
            if !self.read_more()? {
                return Ok(true); // nothing yet
            }
        }
    }
}

impl Graph {
    fn add_source_driver<T: Element>(
        &mut self,
        name: &str,
        mode: Mode<T>,
        options: SourceOptions,
    ) -> Stream<T> {
        let mut ports = self.ports();
        let out = ports.output::<T>("out");
        let agent = SourceAgent {
            out,
            pulls: matches!(mode, Mode::Pull(_)),
            mode,
            handoff_batch: handoff_batch(&options),
            options,
            abandoned: Arc::new(AtomicBool::new(false)),
            budget: None,
            empty_fills: 0,
        };
        self.push_agent(name, ports, Driver::Source(Box::new(agent)));
        out
    }

    /// A source that emits what `source` produces. See [`Source`]; a closure
    /// `FnMut(&mut Vec<T>, usize) -> Result<bool, AgentError>` is one.
    ///
    /// ```
    /// use iotstream::{AgentError, Graph};
    /// let mut g = Graph::new("counter");
    /// let mut next = 0u64;
    /// // Appends at most `max` elements a call; `Ok(false)` once it is done.
    /// let numbers = g.source("numbers", move |out: &mut Vec<u64>, max: usize| {
    ///     let end = (next + max as u64).min(5);
    ///     out.extend(next..end);
    ///     next = end;
    ///     Ok::<bool, AgentError>(next < 5)
    /// });
    /// let out = g.collect("out", &numbers);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [0, 1, 2, 3, 4]);
    /// ```
    pub fn source<T: Element>(&mut self, name: &str, source: impl Source<T>) -> Stream<T> {
        self.source_with(name, source, SourceOptions::default())
    }

    /// [`Graph::source`] with explicit [`SourceOptions`].
    pub fn source_with<T: Element>(
        &mut self,
        name: &str,
        source: impl Source<T>,
        options: SourceOptions,
    ) -> Stream<T> {
        self.add_source_driver(name, Mode::Pull(Box::new(source)), options)
    }

    /// A source that emits the items of `items`, then closes its stream.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("numbers");
    /// let s = g.source_iter("numbers", 0..5u32);
    /// let out = g.collect("out", &s);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [0, 1, 2, 3, 4]);
    /// ```
    pub fn source_iter<T, I>(&mut self, name: &str, items: I) -> Stream<T>
    where
        T: Element,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        self.source(name, IterSource(items.into_iter()))
    }

    /// [`Graph::source_iter`] with explicit [`SourceOptions`] (a batch size, say).
    pub fn source_iter_with<T, I>(
        &mut self,
        name: &str,
        items: I,
        options: SourceOptions,
    ) -> Stream<T>
    where
        T: Element,
        I: IntoIterator<Item = T>,
        I::IntoIter: Send + 'static,
    {
        self.source_with(name, IterSource(items.into_iter()), options)
    }

    /// A source that calls `f` every `interval` and emits its result, `count` times (or
    /// forever with `None`). IoTPy's `source_func_to_stream`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::Graph;
    /// let mut g = Graph::new("ticks");
    /// let mut n = 0;
    /// let s = g.source_fn("ticker", Duration::from_millis(1), Some(3), move || { n += 1; n });
    /// let out = g.collect("out", &s);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), [1, 2, 3]);
    /// ```
    pub fn source_fn<T, F>(
        &mut self,
        name: &str,
        interval: Duration,
        count: Option<u64>,
        f: F,
    ) -> Stream<T>
    where
        T: Element,
        F: FnMut() -> T + Send + 'static,
    {
        let options = SourceOptions {
            interval: Some(interval),
            ..SourceOptions::default()
        };
        self.source_with(name, FnSource { f, left: count }, options)
    }

    /// A source that emits the lines of the file at `path` (without line endings, `\n` or
    /// `\r\n`), then closes. Each batch is the complete lines that have arrived: a FIFO or a
    /// pipe is never held back waiting for a full batch, nor behind an unfinished line. A file
    /// that cannot be opened or read, a line that is not UTF-8 or longer than 16 MiB fail the
    /// source, naming the file and line; the lines before it are emitted first (a threaded run
    /// then stops at once, so its readers may not get to them). The source waits for input in
    /// slices of 50 ms, so a stop ends it at once and leaves what it has not read. (Opening a
    /// FIFO waits for its writer; a stop during that wait ends the stream after
    /// [`SOURCE_STOP_GRACE`].)
    ///
    /// ```
    /// use iotstream::Graph;
    /// let path = std::env::temp_dir().join(format!("iotstream-doc-lines-{}", std::process::id()));
    /// std::fs::write(&path, "21.5\n22.0\n").unwrap();
    /// let mut g = Graph::new("readings");
    /// let lines = g.source_file_lines("file", &path);
    /// let out = g.collect("out", &lines);
    /// g.run().unwrap();
    /// assert_eq!(out.values(), ["21.5", "22.0"]);
    /// std::fs::remove_file(path).unwrap();
    /// ```
    pub fn source_file_lines(&mut self, name: &str, path: impl Into<PathBuf>) -> Stream<String> {
        let path = path.into();
        let origin = format!("file '{}'", path.display());
        self.source(
            name,
            LineSource::new(origin, move || std::fs::File::open(&path)),
        )
    }

    /// A source that emits the lines of standard input, then closes at its end; lines as
    /// [`source_file_lines`](Graph::source_file_lines) reads them.
    ///
    /// Standard input follows this agent wherever it is placed: in a multi-process application
    /// the process holding it is given the standard input of whoever started the application
    /// (the program run directly, or `iotstream run`), and no other process reads it. Only one
    /// agent of an application may read standard input.
    ///
    /// ```no_run
    /// // tail -F /var/log/machine.log | log_monitor
    /// use iotstream::Graph;
    /// let mut g = Graph::new("log_monitor");
    /// let lines = g.source_stdin("log");
    /// let errors = g.filter("errors", &lines, |l: &String| l.contains("ERROR"));
    /// g.for_each("alert", &errors, |l: &String| eprintln!("alert: {l}"));
    /// g.run().unwrap();
    /// ```
    pub fn source_stdin(&mut self, name: &str) -> Stream<String> {
        // Read through a descriptor of its own, not through `Stdin`'s buffer: what `poll` sees
        // is then all there is.
        let open = || {
            use std::os::fd::AsFd;
            let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
            Ok(std::fs::File::from(fd))
        };
        let lines = self.source(name, LineSource::new("standard input".to_string(), open));
        self.agents[lines.id.agent as usize].reads_stdin = true;
        lines
    }

    /// A stream the program itself appends to: through [`Harness::push`](crate::Harness::push)
    /// in tests, or through [`Running::input`](crate::Running::input) in a threaded run.
    /// The stream ends when its sender is dropped, or, after [`Running::stop`](crate::Running::stop)
    /// (or Ctrl-C), [`SOURCE_STOP_GRACE`] after the stop, with everything sent until then.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("callbacks");
    /// let clicks = g.input::<u32>("clicks");
    /// let doubled = g.map("double", &clicks, |c: &u32| c * 2);
    /// let out = g.collect("out", &doubled);
    /// let mut running = g.start().unwrap();
    /// let sender = running.input(&clicks).unwrap();
    /// // As a device's callback would, one element at a time.
    /// for c in [1, 2, 3] {
    ///     sender.push(c).unwrap();
    /// }
    /// drop(sender); // ends the stream
    /// running.join().unwrap();
    /// assert_eq!(out.values(), [2, 4, 6]);
    /// ```
    pub fn input<T: Element>(&mut self, name: &str) -> Stream<T> {
        let (tx, rx) = handoff(waiting_limit(handoff_batch(&SourceOptions::default())));
        let agent = self.agents.len();
        let stream = self.add_source_driver(name, Mode::Channel(rx), SourceOptions::default());
        self.externals
            .insert(stream.id, Box::new(ExternalInput { tx, agent }));
        stream
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::mailbox::{Envelope, Mailbox};
    use std::sync::atomic::AtomicUsize;

    /// A mailbox whose every post panics, as a stage stepped on the posting thread might.
    struct PanicsOnPost(AtomicUsize);

    impl Mailbox for PanicsOnPost {
        fn post(&self, _: Envelope) {
            self.0.fetch_add(1, Ordering::SeqCst);
            panic!("a stage stepped by the poster failed");
        }
    }

    #[test]
    fn a_source_thread_unwound_outside_its_source_calls_fails_the_stream_and_wakes_the_agent() {
        let (tx, rx) = handoff::<u64>(16);
        let mailbox = Arc::new(PanicsOnPost(AtomicUsize::new(0)));
        let ctx = SourceThreadCtx {
            name: "unwound".into(),
            wake: mailbox.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            gate: {
                let gate = crate::host::StartGate::default();
                gate.open();
                Arc::new(gate)
            },
            stepped_by_poster: true,
        };
        let waker = Waker {
            mailbox: mailbox.clone(),
            awake: tx.awake_flag(),
            every_time: true,
        };
        let mut sent = false;
        let source = move |out: &mut Vec<u64>, _: usize| {
            if !sent {
                out.push(7);
                sent = true;
            }
            Ok(true)
        };
        let options = SourceOptions::default();
        std::thread::spawn(move || {
            run_source_thread(Box::new(source), options, None, tx, ctx, waker)
        })
        .join()
        .expect("the thread ends, it does not unwind");
        // The element handed over comes first, then the stream fails with the panic (before,
        // the dropped handoff ended it as if the source had finished, or left the agent asleep).
        let mut out = Vec::new();
        let taken = rx.take(&mut out, 16, &AtomicBool::new(false));
        assert_eq!(out, [7]);
        match taken.end {
            Some(Ending::Failed(e)) => assert!(e.contains("stepped by the poster"), "{e}"),
            other => panic!("the stream must fail with the panic, not end with {other:?}"),
        }
        // The wake-up was tried again once the stream had failed (the agent is not left asleep).
        assert_eq!(mailbox.0.load(Ordering::SeqCst), 2);
    }

    /// A program's input is made before the run knows its batch: once the batch is limited
    /// (from its connections' credit), the handoff gathers batches of that size and the
    /// program waits once four of them wait (before, four of the default 4,096: a step of the
    /// limited size then split each gathered batch, shifting the rest every time).
    #[test]
    fn a_programs_input_follows_its_limited_batch() {
        let mut g = Graph::new("limited");
        let s = g.input::<u64>("in");
        let Some(Driver::Source(driver)) = g.agents[s.id.agent as usize].driver.as_mut() else {
            panic!("an input is a source");
        };
        driver.limit_batch(2, usize::MAX);
        let external = g.externals.remove(&s.id).expect("the input's sender");
        let input = external
            .as_any()
            .downcast_ref::<ExternalInput<u64>>()
            .expect("an input of u64");
        for v in 0..8 {
            input
                .tx
                .put_one(v, Wait::Never)
                .expect("room for four batches of 2");
        }
        assert_eq!(
            input.tx.put_one(8, Wait::Never).map_err(|(e, _)| e),
            Err(PutError::Full)
        );
    }

    #[test]
    fn a_source_thread_reserves_room_for_a_batch_within_a_bound() {
        assert_eq!(batch_reserve::<u64>(4096), 4096);
        assert_eq!(batch_reserve::<u64>(0), 1);
        assert_eq!(
            batch_reserve::<u64>(usize::MAX / 4),
            RESERVE_AT_MOST_BYTES / 8
        );
        assert_eq!(batch_reserve::<[u8; 1 << 23]>(10), 1);
        assert_eq!(batch_reserve::<()>(usize::MAX), RESERVE_AT_MOST_BYTES);
    }
}
