//! The agent host: everything between an agent's step and the links, independent of the executor.
//!
//! A [`Host`] owns one agent, its input buffers and its output buffers. An executor (the
//! deterministic harness, or an actix actor) hands it [`Envelope`]s with [`Host::accept`] and
//! calls [`Host::run`]; the host decides whether to step, flushes each output as one batch, sends
//! batches on its links within their credit, returns credit for what its agent consumed, and
//! closes its outputs once its inputs are drained. Both executors therefore share one
//! implementation of the stream semantics, and the harness tests exactly what runs in production.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex};

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Inputs, Outputs, StepTime};
use crate::error::{panic_message, AgentError, Error};
use crate::metrics::{add, AgentCounters};
use crate::port::{InSlot, OutSlot};
use crate::stream::Mark;
pub(crate) use crate::transport::{join_waiting, Envelope, Mailbox};

// ---------------------------------------------------------------------------------------------
// The host

/// How long a source still inside [`Source::fill`](crate::Source::fill) after a stop is waited for before its stream
/// ends without it.
pub const SOURCE_STOP_GRACE: Duration = Duration::from_secs(1);

/// Processing time, for agents' timers ([`Inputs::wake_at`](crate::Inputs::wake_at)): the
/// process's monotonic clock, or one a test moves by hand.
#[derive(Clone, Debug, Default)]
pub(crate) enum Clock {
    /// Time since the first look at the clock in this process.
    #[default]
    Real,
    /// Nanoseconds, set by the [`Harness`](crate::Harness).
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// The processing time now.
    pub fn now(&self) -> Duration {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        match self {
            Clock::Real => ORIGIN.get_or_init(Instant::now).elapsed(),
            Clock::Manual(ns) => Duration::from_nanos(ns.load(Ordering::SeqCst)),
        }
    }
}

thread_local! {
    /// This thread is inside an agent's step (see [`in_a_step`]).
    static IN_STEP: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` (an agent's step or finish) marked as inside a step on this thread.
fn in_step<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_STEP.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(IN_STEP.with(|c| c.replace(true)));
    f()
}

/// True on a thread that is running an agent's step: something that would wait there (for
/// room in an input, say) would hold up every agent of that worker thread, possibly the very
/// one that makes the room.
pub(crate) fn in_a_step() -> bool {
    IN_STEP.with(|c| c.get())
}

/// Holds a source's thread back until the executor has set up every agent of the process, and
/// every stage of the source's chain (the agents its thread steps) has made its first step: a
/// thread that started at once would hand over to, and step, agents not there yet, and its
/// elements would pile up for whichever thread starts them (see the runtime's direct
/// mailboxes); and a stage's first step, on its worker, could come after the source's first
/// batch and take it in there, off the source's thread. One gate per source
/// ([`StartGates`]): a source waits for no other chain's first steps.
#[derive(Default)]
pub(crate) struct StartGate {
    state: Mutex<GateState>,
    opened: Condvar,
}

/// What keeps a [`StartGate`] shut.
#[derive(Default)]
struct GateState {
    /// The executor's setup is over ([`StartGate::open`]).
    set_up: bool,
    /// Holds not yet released ([`StartGate::hold`]).
    holds: usize,
    /// The run is over: the gate is open whatever holds it ([`StartGate::open_for_good`]).
    forced: bool,
}

impl GateState {
    fn is_open(&self) -> bool {
        self.forced || (self.set_up && self.holds == 0)
    }
}

impl StartGate {
    /// Ends the setup: the gate opens once every hold is released.
    pub fn open(&self) {
        self.update(|s| s.set_up = true);
    }

    /// Opens the gate now, holds or not: the run is over (a first step that will never run
    /// must not keep a source's thread waiting).
    pub fn open_for_good(&self) {
        self.update(|s| s.forced = true);
    }

    /// Keeps the gate shut until the returned hold is dropped (a first step queued on a worker
    /// holds it until it has run, or until the worker drops it unrun).
    pub fn hold(self: &Arc<Self>) -> GateHold {
        self.update(|s| s.holds += 1);
        GateHold(Arc::clone(self))
    }

    fn update(&self, change: impl FnOnce(&mut GateState)) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        change(&mut state);
        if state.is_open() {
            self.opened.notify_all();
        }
    }

    /// Waits until the gate is open.
    pub fn wait(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while !state.is_open() {
            state = self.opened.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// Keeps a [`StartGate`] shut while it lives.
pub(crate) struct GateHold(Arc<StartGate>);

impl Drop for GateHold {
    fn drop(&mut self) {
        self.0.update(|s| s.holds -= 1);
    }
}

/// The start gates of a process's sources, one per source agent (by its index), made when
/// first asked for. Dropped, it opens every gate for good: however the executor ends (a panic
/// included), no source's thread waits for ever.
#[derive(Default)]
pub(crate) struct StartGates(std::collections::HashMap<usize, Arc<StartGate>>);

impl StartGates {
    /// The gate of the source whose agent is `source`.
    pub fn of(&mut self, source: usize) -> Arc<StartGate> {
        Arc::clone(self.0.entry(source).or_default())
    }

    /// Ends the setup of every gate ([`StartGate::open`]).
    pub fn end_setup(&self) {
        self.0.values().for_each(|g| g.open());
    }

    /// Opens every gate now, holds or not ([`StartGate::open_for_good`]).
    pub fn open_for_good(&self) {
        self.0.values().for_each(|g| g.open_for_good());
    }
}

impl Drop for StartGates {
    fn drop(&mut self) {
        self.open_for_good();
    }
}

/// What a source thread needs from the executor.
pub(crate) struct SourceThreadCtx {
    pub name: String,
    pub wake: Arc<dyn Mailbox>,
    pub stop: Arc<AtomicBool>,
    /// The thread calls its source only once this is open.
    pub gate: Arc<StartGate>,
    /// The agent is stepped by whoever posts to it (the runtime's direct mailboxes): the
    /// source thread posts at every hand-over ([`Waker::every_time`]).
    pub stepped_by_poster: bool,
}

/// Whether a source's agent is awake (a wake-up is on its way, or its step runs), kept where its
/// hand-overs wait (a source's handoff, under the lock a hand-over takes anyway: one cache
/// line fewer moves between the writer's core and the agent's per hand-over).
pub(crate) trait AwakeFlag: Send + Sync {
    /// Marks the agent awake; true if it was asleep (the caller posts it a wake-up).
    fn rouse(&self) -> bool;
}

/// Wakes a source's host when a chunk arrives, once: while the host is awake (its step takes
/// what waits, and the step that leaves nothing waiting clears the flag under the handoff's
/// lock), the source thread posts no more wake-ups.
pub(crate) struct Waker {
    pub mailbox: Arc<dyn Mailbox>,
    pub awake: Arc<dyn AwakeFlag>,
    /// The source's own thread drives the agent, stepped by whoever posts to it: it posts at
    /// every call, awake or not, as the agent's driver ([`Mailbox::post_as_driver`]), so that
    /// the source's thread steps the agent and the chain it feeds, waiting for its turn when
    /// a worker has it, rather than leaving them to a worker that keeps them stepping.
    pub every_time: bool,
}

impl Waker {
    /// Posts a wake-up unless one is pending (or at every call, as the driver,
    /// [`every_time`](Self::every_time)).
    pub fn wake(&self) {
        let asleep = self.awake.rouse();
        self.woken(asleep);
    }

    /// As [`wake`](Self::wake), for a caller that has marked the agent awake itself (a
    /// hand-over does, under its lock) and found it `asleep` or not.
    pub fn woken(&self, asleep: bool) {
        if self.every_time {
            self.mailbox.post_as_driver(Envelope::Wake);
        } else if asleep {
            self.mailbox.post(Envelope::Wake);
        }
    }
}

/// Ends the stream of a source whose thread is still inside `Source::fill` after a stop (see
/// [`SOURCE_STOP_GRACE`]): what the thread had handed over is delivered, then the stream ends.
pub(crate) struct SourceEnder {
    pub name: String,
    /// Set by the source thread when it returns.
    pub thread_done: Arc<AtomicBool>,
    /// Read by the source's agent once its channel is empty.
    pub abandoned: Arc<AtomicBool>,
    pub waker: Waker,
}

impl SourceEnder {
    /// Abandons the source thread if it has not returned yet.
    pub fn end(&self) {
        if self.thread_done.load(Ordering::SeqCst) {
            return;
        }
        tracing::warn!(
            "source '{}' is still waiting for input {} ms after the stop: its stream ends without it",
            self.name,
            SOURCE_STOP_GRACE.as_millis()
        );
        // Before the wake-up: the agent reads `abandoned` after it has cleared `awake`.
        self.abandoned.store(true, Ordering::SeqCst);
        self.waker.wake();
    }
}

/// What a source driver reports after a step.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SourceStatus {
    /// More waits than the step took: step again.
    More,
    /// Nothing now; a `Wake` envelope will come.
    Wait,
    /// Finished: close the outputs.
    Done,
}

/// A source as the host drives it. See `ops::source`.
pub(crate) trait SourceDriver: Send {
    fn step(&mut self, outputs: &mut Outputs<'_>) -> Result<SourceStatus, AgentError>;
    /// Moves the source's work onto its own thread (threaded executor only); returns what ends
    /// its stream if that thread does not return after a stop (a source on a thread of its own).
    fn spawn(&mut self, ctx: SourceThreadCtx) -> Result<Option<SourceEnder>, Error>;
    /// Its work runs on a thread of its own in a threaded run (a [`Source`](crate::Source)),
    /// rather than in the program's calls (`Graph::input`).
    fn has_thread(&self) -> bool;
    /// Keeps its batches to at most `elements` (never below one), and, for elements that own
    /// heap memory, to about `bytes`: set once, before the run, from the bounds of the
    /// connections its stream feeds.
    fn limit_batch(&mut self, elements: usize, bytes: usize);
}

pub(crate) enum Driver {
    Agent(Box<dyn Agent>),
    Source(Box<dyn SourceDriver>),
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    Running,
    Closing,
    Done,
}

/// One agent with its buffers. See the module docs.
pub(crate) struct Host {
    pub name: Arc<str>,
    pub id: (u32, u32),
    pub driver: Driver,
    pub inputs: Vec<Box<dyn InSlot>>,
    pub outputs: Vec<Box<dyn OutSlot>>,
    pub counters: Arc<AgentCounters>,
    dirty: bool,
    state: State,
    span: tracing::Span,
    /// Some input has a durable credit route (known once the routes are set, at the first
    /// step).
    durable: Option<bool>,
    /// A durable input may owe credit that waits for the outputs to be handed on.
    owed: bool,
    /// The runtime forwards the inputs' marks to the outputs (the agent did not declare
    /// [`Ports::manages_watermarks`](crate::Ports::manages_watermarks)).
    pub forward_marks: bool,
    /// The last mark forwarded.
    forwarded: Option<Mark>,
    /// Which inputs are fed from the agent's own feedback loop (their writer is in the same
    /// strongly connected part of the graph): the ones a forced close closes. `None`: every
    /// input (a host made outside a graph).
    pub loop_inputs: Option<Vec<bool>>,
    /// The clock of [`Inputs::processing_time`](crate::Inputs::processing_time).
    pub clock: Clock,
    /// The processing time the last step asked to be called again at.
    timer: Option<Duration>,
}

impl Host {
    pub fn new(
        name: Arc<str>,
        id: (u32, u32),
        driver: Driver,
        inputs: Vec<Box<dyn InSlot>>,
        outputs: Vec<Box<dyn OutSlot>>,
        counters: Arc<AgentCounters>,
    ) -> Self {
        let span = tracing::info_span!("agent", name = &*name);
        Host {
            name,
            id,
            driver,
            inputs,
            outputs,
            counters,
            dirty: true,
            state: State::Running,
            span,
            durable: None,
            owed: false,
            forward_marks: true,
            forwarded: None,
            loop_inputs: None,
            clock: Clock::Real,
            timer: None,
        }
    }

    /// The processing time the agent asked to be called again at, if it did.
    pub fn timer(&self) -> Option<Duration> {
        self.timer
    }

    /// Marks the agent for a step if its timer is due; returns whether it was.
    pub fn fire_timer_if_due(&mut self) -> bool {
        match self.timer {
            Some(at) if at <= self.clock.now() && self.state == State::Running => {
                self.timer = None;
                self.dirty = true;
                true
            }
            _ => false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True if `run` would step the agent, finish a close, or return deferred credit.
    pub fn ready(&self) -> bool {
        if self.owed && !self.outputs.iter().any(|o| o.blocked()) {
            return true;
        }
        match self.state {
            State::Done => false,
            State::Closing => self.outputs.iter().all(|o| o.done()),
            State::Running => self.dirty && !self.outputs.iter().any(|o| o.blocked()),
        }
    }

    /// True if a link of this host holds data for a shared-memory ring (another process will
    /// make room, or its death will be noticed).
    pub fn waits_on_ring(&self) -> bool {
        self.outputs.iter().any(|o| o.waits_on_ring())
    }

    /// True if, of those, a link waits on a TCP link or a broker, which no ring shows.
    pub fn waits_off_ring(&self) -> bool {
        self.outputs.iter().any(|o| o.waits_off_ring())
    }

    /// Appends to `into` the readers (agent indices in the graph) of this agent's links that
    /// hold data they cannot send (no allocation once `into` has room).
    pub fn blocked_readers_into(&self, into: &mut Vec<usize>) {
        for o in &self.outputs {
            o.blocked_readers(into);
        }
    }

    /// True if an input holds elements the agent has not consumed.
    pub fn holds_input(&self) -> bool {
        self.inputs.iter().any(|i| i.holds())
    }

    /// True if a `Block` link of this host holds data it cannot send.
    pub fn is_blocked(&self) -> bool {
        self.outputs.iter().any(|o| o.blocked())
    }

    pub fn is_source(&self) -> bool {
        matches!(self.driver, Driver::Source(_))
    }

    /// Takes one envelope in. Errors are protocol violations by the peer.
    pub fn accept(&mut self, env: Envelope) -> Result<(), Error> {
        match env {
            Envelope::Data { input, batch } => {
                let slot = match self.inputs.get_mut(input as usize) {
                    Some(s) => s,
                    None => {
                        return Err(self
                            .violation(format!("data for input #{input}, which does not exist")))
                    }
                };
                slot.push(batch).map_err(|e| Error::Runtime {
                    detail: format!("agent '{}', input #{input}: {e}", self.name),
                })?;
                self.dirty = true;
            }
            Envelope::Mark { input, mark } => {
                let slot = match self.inputs.get_mut(input as usize) {
                    Some(s) => s,
                    None => {
                        return Err(self
                            .violation(format!("a mark for input #{input}, which does not exist")))
                    }
                };
                slot.push_mark(mark).map_err(|e| Error::Runtime {
                    detail: format!("agent '{}', input #{input}: {e}", self.name),
                })?;
                self.dirty = true;
            }
            Envelope::Eos { input } => {
                let slot = match self.inputs.get_mut(input as usize) {
                    Some(s) => s,
                    None => {
                        return Err(self.violation(format!(
                            "end of stream for input #{input}, which does not exist"
                        )))
                    }
                };
                slot.close();
                self.dirty = true;
            }
            Envelope::Credit { output, link, n } => {
                let slot = match self.outputs.get_mut(output as usize) {
                    Some(s) => s,
                    None => {
                        return Err(self.violation(format!(
                            "credit for output #{output}, which does not exist"
                        )))
                    }
                };
                let was_blocked = slot.blocked();
                slot.credit(link, n);
                if let Some(e) = slot.take_error() {
                    return Err(Error::Runtime {
                        detail: format!("agent '{}': {e}", self.name),
                    });
                }
                // Credit may unblock a step that was held back, or finish a close.
                if was_blocked || self.state == State::Closing {
                    self.dirty = true;
                }
            }
            Envelope::Wake => self.dirty = true,
            Envelope::ForceClose => {
                // Only the inputs of a loop: an agent the loop merely feeds (a sink after it,
                // an `_and_end` operator) ends when its writer's end of stream reaches it, so
                // that what its writer still sends while the loop ends (the items an `end`
                // function returns) is not refused as "data after the end of stream".
                for (i, slot) in self.inputs.iter_mut().enumerate() {
                    if self.loop_inputs.as_ref().is_none_or(|l| l[i]) {
                        slot.close();
                    }
                }
                self.dirty = true;
            }
        }
        Ok(())
    }

    fn violation(&self, what: String) -> Error {
        Error::Runtime {
            detail: format!("agent '{}' received {what}", self.name),
        }
    }

    /// Steps the agent as long as it has work and is not blocked.
    ///
    /// After each step, credit for what the agent consumed goes back to the writers. For an
    /// input fed by a shared-memory ring (a durable credit route) that credit lets the ring's
    /// feeder release the consumed elements' space for good, so it must mean "done with": it
    /// is returned only after the step's outputs are flushed, and only while no `Block` output
    /// link holds stashed data (outputs not yet handed to their links or rings). Otherwise it
    /// waits, and goes back as soon as the outputs unblock: at the start of every `run` (which
    /// executors call after every envelope, the credit that empties a stash included), in every
    /// state, so also at the end of the stream. In-process routes return credit right after
    /// the step, as always.
    pub fn run(&mut self) -> Result<(), Error> {
        self.run_yielding(&AtomicBool::new(false))
    }

    /// [`run`](Self::run), returning between two steps once `yield_now` is set (after one
    /// step at least): the host keeps what is left to do for the next `run`, which its
    /// executor must call. A source's agent says after every step that more waits for as long
    /// as its thread keeps up, so without this one `run` could last as long as the stream.
    pub fn run_yielding(&mut self, yield_now: &AtomicBool) -> Result<(), Error> {
        let span = self.span.clone();
        let _entered = span.enter();
        if self.owed {
            self.settle_durable();
        }
        let mut stepped = false;
        loop {
            match self.state {
                State::Done => return Ok(()),
                State::Closing => {
                    if self.outputs.iter().all(|o| o.done()) {
                        self.state = State::Done;
                        tracing::debug!("finished");
                    }
                    return Ok(());
                }
                State::Running => {}
            }
            if !self.dirty || self.outputs.iter().any(|o| o.blocked()) {
                return Ok(());
            }
            if stepped && yield_now.load(Ordering::SeqCst) {
                return Ok(());
            }
            stepped = true;
            self.dirty = false;
            add(&self.counters.steps, 1);
            let id = self.id;
            match &mut self.driver {
                Driver::Agent(agent) => {
                    let segment = self.forward_marks;
                    for slot in &mut self.inputs {
                        slot.prepare(segment);
                    }
                    // Read only if the step asks (most do not): a clock read is a few tens
                    // of nanoseconds, more with the clock's page out of the cache.
                    let clock = &self.clock;
                    let read_clock = || clock.now();
                    // A step forgets older timer requests (see `Inputs::wake_at`).
                    self.timer = None;
                    let result = {
                        let mut inputs = Inputs {
                            agent: id,
                            slots: &mut self.inputs,
                            now: StepTime::new(&read_clock),
                            wake: &mut self.timer,
                            late: &self.counters.late,
                            undelivered: &self.counters.undelivered,
                        };
                        let mut outputs = Outputs {
                            agent: id,
                            slots: &mut self.outputs,
                        };
                        let started = self.counters.step_started();
                        let r = catch_unwind(AssertUnwindSafe(|| {
                            in_step(|| agent.step(&mut inputs, &mut outputs))
                        }));
                        self.counters.note_busy(started);
                        r
                    };
                    if !matches!(result, Ok(Ok(()))) {
                        // What the step appended before it failed is delivered: nothing already
                        // accepted is lost (readers see it; the run then stops with the error).
                        let _ = self.flush();
                    }
                    self.check(result)?;
                    let consumed = self.return_credits();
                    self.pass_marks();
                    self.flush()?;
                    if self.inputs.iter().any(|i| i.has_unseen()) {
                        // What waits behind a mark, or behind a large batch shown alone, gets
                        // its own step.
                        self.dirty = true;
                    }
                    if self.owed {
                        self.settle_durable();
                    }
                    if self.inputs.iter().all(|i| i.is_closed()) {
                        if consumed > 0 {
                            self.dirty = true;
                            continue;
                        }
                        // What the agent leaves at its end (the last partial window) goes back
                        // as credit, as if consumed: a TCP link's writer takes its stream as
                        // ended only once the reader consumed all of it, and would otherwise
                        // wait for ever (its process, and a host waiting on it, with it).
                        let left: usize = self.inputs.iter_mut().map(|i| i.discard_rest()).sum();
                        if left > 0 {
                            self.return_credits();
                            // The agent's counter says what it consumed, not what was dropped.
                            self.counters
                                .consumed
                                .fetch_sub(left as u64, Ordering::Relaxed);
                            if self.owed {
                                self.settle_durable();
                            }
                        }
                        let Driver::Agent(agent) = &mut self.driver else {
                            unreachable!()
                        };
                        let result = {
                            let mut outputs = Outputs {
                                agent: id,
                                slots: &mut self.outputs,
                            };
                            let started = self.counters.step_started();
                            let r = catch_unwind(AssertUnwindSafe(|| {
                                in_step(|| agent.finish(&mut outputs))
                            }));
                            self.counters.note_busy(started);
                            r
                        };
                        self.check(result)?;
                        self.flush()?;
                        self.close_outputs()?;
                    }
                }
                Driver::Source(source) => {
                    let result = {
                        let mut outputs = Outputs {
                            agent: id,
                            slots: &mut self.outputs,
                        };
                        let started = self.counters.step_started();
                        let r = catch_unwind(AssertUnwindSafe(|| source.step(&mut outputs)));
                        self.counters.note_busy(started);
                        r
                    };
                    if !matches!(result, Ok(Ok(_))) {
                        // As for an agent: what the source appended before it failed is
                        // delivered.
                        let _ = self.flush();
                    }
                    let status = self.check(result)?;
                    self.flush()?;
                    match status {
                        SourceStatus::More => self.dirty = true,
                        SourceStatus::Wait => {}
                        SourceStatus::Done => self.close_outputs()?,
                    }
                }
            }
        }
    }

    /// Passes the marks each input's agent has consumed up to and, unless the agent sends
    /// its own, sets the outputs' mark: the smallest watermark of the open inputs that are not
    /// idle (one with no watermark yet holds it back), or idleness if every open input is idle.
    fn pass_marks(&mut self) {
        let mut open = false;
        let mut all_idle = true;
        let mut held = false;
        let mut min: Option<u64> = None;
        for slot in &mut self.inputs {
            let passed = slot.pass_marks();
            let p = slot.progress();
            // An input that ends in this very step still hands on the marks it passed (its end
            // may have come in with its last elements and marks: adaptive batching).
            if p.closed && !passed {
                continue;
            }
            open = true;
            if p.idle {
                continue;
            }
            all_idle = false;
            match p.watermark {
                Some(w) => min = Some(min.map_or(w, |m| m.min(w))),
                None => held = true,
            }
        }
        if !self.forward_marks || !open {
            return;
        }
        let mark = match (all_idle, held, min) {
            (true, _, _) => Mark::Idle,
            (false, false, Some(w)) => Mark::Watermark(w),
            _ => return,
        };
        if self.forwarded == Some(mark) {
            return;
        }
        self.forwarded = Some(mark);
        for o in &mut self.outputs {
            o.set_mark(mark);
        }
    }

    fn check<R>(&self, result: std::thread::Result<Result<R, AgentError>>) -> Result<R, Error> {
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => Err(Error::Agent {
                agent: self.name.to_string(),
                cause: e.to_string(),
            }),
            Err(payload) => Err(Error::Panic {
                agent: self.name.to_string(),
                message: panic_message(&*payload),
            }),
        }
    }

    /// Returns the credit due on in-process routes; durable routes' credit is owed until
    /// [`settle_durable`](Self::settle_durable).
    fn return_credits(&mut self) -> usize {
        let mut total = 0;
        for slot in &mut self.inputs {
            total += slot.take_consumed();
            let n = slot.credit_due(false);
            if n > 0 {
                if let Some(route) = slot.credit_route() {
                    route.mailbox.post(Envelope::Credit {
                        output: route.output,
                        link: route.link,
                        n,
                    });
                }
            }
        }
        let inputs = &self.inputs;
        self.owed |= *self.durable.get_or_insert_with(|| {
            inputs
                .iter()
                .any(|i| i.credit_route().is_some_and(|r| r.durable))
        });
        add(&self.counters.consumed, total as u64);
        total
    }

    /// Returns the credit owed on durable routes, unless a `Block` output link still holds
    /// stashed data: then it stays owed.
    fn settle_durable(&mut self) {
        if self.outputs.iter().any(|o| o.blocked()) {
            return;
        }
        self.owed = false;
        for slot in &mut self.inputs {
            if !slot.credit_route().is_some_and(|r| r.durable) {
                continue;
            }
            let n = slot.credit_due(true);
            let waiting = slot.take_waiting();
            if let Some(route) = slot.credit_route() {
                if n > 0 {
                    route.mailbox.post(Envelope::Credit {
                        output: route.output,
                        link: route.link,
                        n,
                    });
                }
                if let Some(left) = waiting {
                    route.mailbox.reader_waits(left);
                }
            }
        }
    }

    fn flush(&mut self) -> Result<(), Error> {
        for o in &mut self.outputs {
            o.flush();
            if let Some(e) = o.take_error() {
                return Err(Error::Runtime {
                    detail: format!("agent '{}': {e}", self.name),
                });
            }
        }
        Ok(())
    }

    fn close_outputs(&mut self) -> Result<(), Error> {
        for o in &mut self.outputs {
            o.close();
            if let Some(e) = o.take_error() {
                return Err(Error::Runtime {
                    detail: format!("agent '{}': {e}", self.name),
                });
            }
        }
        self.state = State::Closing;
        self.dirty = true;
        Ok(())
    }

    /// Lines describing links of this host that hold data they cannot send.
    pub fn stalled(&self) -> Vec<String> {
        self.outputs.iter().flat_map(|o| o.stalled()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::{Inputs, Outputs};
    use crate::port::{CreditRoute, InBuf, OutBuf};
    use crate::stream::{Batch, Input, Policy, PortId, Stream};
    use crate::transport::LinkSpec;
    use std::sync::Mutex;

    /// A start gate opens once the setup is over and every hold is released, in either order;
    /// `open_for_good` opens it whatever holds it.
    #[test]
    fn the_start_gate_waits_for_the_setup_and_every_hold() {
        let gate = Arc::new(StartGate::default());
        let first = gate.hold();
        let second = gate.hold();
        gate.open();
        assert!(!gate.state.lock().unwrap().is_open(), "open with two holds");
        drop(first);
        assert!(!gate.state.lock().unwrap().is_open(), "open with one hold");
        let waiter = {
            let gate = Arc::clone(&gate);
            std::thread::spawn(move || gate.wait())
        };
        drop(second);
        waiter.join().unwrap();
        assert!(gate.state.lock().unwrap().is_open());

        let gate = Arc::new(StartGate::default());
        drop(gate.hold());
        assert!(
            !gate.state.lock().unwrap().is_open(),
            "open before the setup ended"
        );
        gate.open();
        assert!(gate.state.lock().unwrap().is_open());

        let gate = Arc::new(StartGate::default());
        let _never_released = gate.hold();
        gate.open();
        gate.open_for_good();
        gate.wait();
    }

    /// Records the envelopes posted to it, and what readers said they wait with.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<Envelope>>, Mutex<Vec<usize>>);

    impl Mailbox for Recorder {
        fn post(&self, env: Envelope) {
            self.0.lock().unwrap().push(env);
        }

        fn reader_waits(&self, unconsumed: usize) {
            self.1.lock().unwrap().push(unconsumed);
        }
    }

    impl Recorder {
        /// The credit posted so far, taken.
        fn credit(&self) -> usize {
            let mut v = self.0.lock().unwrap();
            let n = v
                .iter()
                .map(|e| match e {
                    Envelope::Credit { n, .. } => *n,
                    _ => 0,
                })
                .sum();
            v.clear();
            n
        }

        /// The elements of the data envelopes posted so far, taken.
        fn data(&self) -> Vec<u64> {
            let mut v = self.0.lock().unwrap();
            let mut out = Vec::new();
            for e in v.drain(..) {
                if let Envelope::Data { batch, .. } = e {
                    out.extend_from_slice(batch.downcast::<u64>().unwrap().as_slice());
                }
            }
            out
        }
    }

    struct PassOn {
        input: Input<u64>,
        out: Stream<u64>,
    }

    impl Agent for PassOn {
        fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
            o.vec(&self.out).extend_from_slice(i.slice(&self.input));
            i.consume_all(&self.input);
            Ok(())
        }
    }

    /// Passes elements on in pairs: an odd one waits for its partner.
    struct Pairs {
        input: Input<u64>,
        out: Stream<u64>,
    }

    impl Agent for Pairs {
        fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
            let xs = i.slice(&self.input);
            let n = xs.len() / 2 * 2;
            o.vec(&self.out).extend_from_slice(&xs[..n]);
            i.consume(&self.input, n);
            Ok(())
        }
    }

    /// A pass-through host whose input returns credit to `upstream` (durable or not) and whose
    /// output has one `Block` link of capacity 2 to `downstream`.
    fn host(durable: bool, upstream: &Arc<Recorder>, downstream: &Arc<Recorder>) -> Host {
        let port = PortId {
            graph: 0,
            agent: 0,
            port: 0,
        };
        let agent = PassOn {
            input: Input::new(port),
            out: Stream::new(port),
        };
        host_of(Box::new(agent), durable, 8, 2, upstream, downstream)
    }

    /// A host of `agent` (one `u64` input of `capacity`, returning credit to `upstream`, and
    /// one output with a `Block` link of capacity `out_capacity` to `downstream`).
    fn host_of(
        agent: Box<dyn Agent>,
        durable: bool,
        capacity: usize,
        out_capacity: usize,
        upstream: &Arc<Recorder>,
        downstream: &Arc<Recorder>,
    ) -> Host {
        let mut input: Box<dyn InSlot> = Box::new(InBuf::<u64>::new());
        input.set_credit_route(CreditRoute {
            mailbox: Arc::clone(upstream) as Arc<dyn Mailbox>,
            output: 0,
            link: 0,
            capacity,
            policy: Policy::Block,
            durable,
            local: None,
        });
        let mut output: Box<dyn OutSlot> = Box::new(OutBuf::<u64>::new());
        output.add_link(LinkSpec {
            mailbox: Some(Arc::clone(downstream) as Arc<dyn Mailbox>),
            input: 0,
            capacity: out_capacity,
            capacity_bytes: usize::MAX,
            need: 0,
            policy: Policy::Block,
            counters: Arc::default(),
            label: "pass.out -> next.in".into(),
            reader: 1,
        });
        Host::new(
            "pass".into(),
            (0, 0),
            Driver::Agent(agent),
            vec![input],
            vec![output],
            Arc::default(),
        )
    }

    fn data(items: &[u64]) -> Envelope {
        Envelope::Data {
            input: 0,
            batch: Batch::new(items.into()).into_any(),
        }
    }

    fn credit(n: usize) -> Envelope {
        Envelope::Credit {
            output: 0,
            link: 0,
            n,
        }
    }

    #[test]
    fn durable_credit_waits_until_the_outputs_are_handed_on() {
        let (up, down) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let mut h = host(true, &up, &down);
        h.accept(data(&[1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        h.run().unwrap();
        assert_eq!(down.data(), [1, 2], "the link's capacity");
        assert_eq!(
            up.credit(),
            0,
            "6 outputs wait in the stash: consumed, not done with"
        );
        h.accept(credit(2)).unwrap();
        h.run().unwrap();
        assert_eq!(down.data(), [3, 4]);
        assert_eq!(up.credit(), 0, "still 4 in the stash");
        h.accept(credit(2)).unwrap();
        h.run().unwrap();
        h.accept(credit(2)).unwrap();
        assert!(h.ready(), "the stash is empty: owed credit can go");
        h.run().unwrap();
        assert_eq!(down.data(), [5, 6, 7, 8]);
        assert_eq!(
            up.credit(),
            8,
            "all handed on: credit returned when the stash emptied"
        );
        assert!(!h.ready());
    }

    #[test]
    fn durable_credit_owed_at_the_end_of_the_stream_is_returned_when_the_outputs_drain() {
        let (up, down) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let mut h = host(true, &up, &down);
        h.accept(data(&[1, 2, 3])).unwrap();
        h.accept(Envelope::Eos { input: 0 }).unwrap();
        h.run().unwrap();
        assert_eq!(up.credit(), 0);
        assert!(!h.is_done());
        h.accept(credit(2)).unwrap();
        h.run().unwrap();
        assert_eq!(up.credit(), 3, "the stash drained while closing");
        assert_eq!(down.data(), [1, 2, 3]);
        h.accept(credit(1)).unwrap();
        h.run().unwrap();
        assert!(h.is_done());
        assert_eq!(up.credit(), 0, "nothing returned twice");
    }

    #[test]
    fn durable_credit_goes_back_after_every_step_with_what_the_step_left_waiting() {
        // A ring's feeder holds ring space for every element not credited back, and the writer
        // may wait for that space: credit in groups (a quarter of 64 here) could leave reader,
        // feeder and writer all waiting. So a durable route returns all of it after each step,
        // and says when a step that saw everything received left some unconsumed.
        let (up, down) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let port = PortId {
            graph: 0,
            agent: 0,
            port: 0,
        };
        let pairs = |durable| {
            let agent = Pairs {
                input: Input::new(port),
                out: Stream::new(port),
            };
            host_of(Box::new(agent), durable, 64, 64, &up, &down)
        };
        let waits = || std::mem::take(&mut *up.1.lock().unwrap());
        let mut h = pairs(true);
        h.accept(data(&[1, 2, 3])).unwrap();
        h.run().unwrap();
        assert_eq!(up.credit(), 2, "returned at once, not in a group of 16");
        assert_eq!(waits(), [1], "the step saw everything and left one");
        h.accept(data(&[4])).unwrap();
        h.run().unwrap();
        assert_eq!(up.credit(), 2);
        assert_eq!(waits(), [] as [usize; 0], "nothing left");
        h.accept(data(&[5])).unwrap();
        h.run().unwrap();
        assert_eq!(up.credit(), 0);
        assert_eq!(waits(), [1], "consumed nothing: it waits with one");
        h.accept(data(&[6, 7])).unwrap();
        h.run().unwrap();
        assert_eq!((up.credit(), waits()), (2, vec![1]));
        assert_eq!(down.data(), [1, 2, 3, 4, 5, 6]);

        let mut h = pairs(false);
        h.accept(data(&[1, 2, 3])).unwrap();
        h.run().unwrap();
        assert_eq!(up.credit(), 0, "in-process: credit in groups of 16");
        assert_eq!(waits(), [] as [usize; 0], "in-process routes are not told");
    }

    #[test]
    fn in_process_credit_is_returned_right_after_the_step() {
        let (up, down) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let mut h = host(false, &up, &down);
        h.accept(data(&[1, 2, 3, 4, 5, 6, 7, 8])).unwrap();
        h.run().unwrap();
        assert_eq!(down.data(), [1, 2]);
        assert_eq!(
            up.credit(),
            8,
            "returned although the outputs wait in the stash"
        );
    }
}
