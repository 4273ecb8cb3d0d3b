//! The agent host: everything between an agent's step and the links, independent of the executor.
//!
//! A [`Host`] owns one agent, its input buffers and its output buffers. An executor (the
//! deterministic harness, or an actix actor) hands it [`Envelope`]s with [`Host::accept`] and
//! calls [`Host::run`]; the host decides whether to step, flushes each output as one batch, sends
//! batches on its links within their credit, returns credit for what its agent consumed, and
//! closes its outputs once its inputs are drained. Both executors therefore share one
//! implementation of the stream semantics, and the harness tests exactly what runs in production.

use std::any::Any;
use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Instant;

use crate::agent::{Agent, Inputs, Outputs};
use crate::error::{panic_message, AgentError, Error};
use crate::graph::Policy;
use crate::metrics::{add, AgentCounters, LinkCounters, StreamCounters};
use crate::stream::{Batch, Element};

/// A message to a host. Data and end-of-stream travel in order on the same path, so an end of
/// stream never overtakes data.
pub(crate) enum Envelope {
    /// A batch (`Batch<T>`, boxed) for input `input`.
    Data { input: u32, batch: Box<dyn Any + Send> },
    /// The writer of input `input` closed its stream; nothing follows.
    Eos { input: u32 },
    /// The reader of link `link` of output `output` consumed `n` elements.
    Credit { output: u32, link: u32, n: usize },
    /// A source of this host has data (or has ended).
    Wake,
    /// The application is quiescent with this host's inputs still open (a feedback loop):
    /// treat every input as closed.
    ForceClose,
}

/// Where a host posts envelopes for another host.
pub(crate) trait Mailbox: Send + Sync {
    fn post(&self, env: Envelope);
}

/// Where an input returns credit: the writer's mailbox and which of its links feeds this input.
pub(crate) struct CreditRoute {
    pub mailbox: Arc<dyn Mailbox>,
    pub output: u32,
    pub link: u32,
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// The type-erased face of an input buffer.
pub(crate) trait InSlot: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Queues a batch; an error if the payload is not a `Batch<T>` or the input is closed.
    fn push(&mut self, batch: Box<dyn Any + Send>) -> Result<(), String>;
    fn close(&mut self);
    /// Closed and every element received is in the view.
    fn is_closed(&self) -> bool;
    /// Makes everything received visible as one slice.
    fn prepare(&mut self);
    /// Elements received and not yet consumed.
    #[allow(dead_code)] // not called yet: kept for diagnostics
    fn unconsumed(&self) -> usize;
    /// Elements consumed since the last call.
    fn take_consumed(&mut self) -> usize;
    fn set_credit_route(&mut self, route: CreditRoute);
    fn credit_route(&self) -> Option<&CreditRoute>;
}

enum View<T> {
    Borrowed(Batch<T>),
    Owned(Vec<T>, usize),
}

/// An input buffer: batches received, shown to the step as one slice.
///
/// While the agent consumes everything it is shown, the slice is the batch itself (no copy).
/// When it leaves elements unconsumed and more arrive, they are gathered into one owned vector;
/// each element is copied at most once per stay, and the vector's allocation is reused.
pub(crate) struct InBuf<T> {
    view: View<T>,
    queue: VecDeque<Batch<T>>,
    closed: bool,
    consumed: usize,
    spare: Vec<T>,
    route: Option<CreditRoute>,
}

impl<T: Element> InBuf<T> {
    pub fn new() -> Self {
        InBuf {
            view: View::Owned(Vec::new(), 0),
            queue: VecDeque::new(),
            closed: false,
            consumed: 0,
            spare: Vec::new(),
            route: None,
        }
    }

    pub fn as_slice(&self) -> &[T] {
        match &self.view {
            View::Borrowed(b) => b.as_slice(),
            View::Owned(v, off) => &v[*off..],
        }
    }

    pub fn consume(&mut self, n: usize) {
        let have = self.as_slice().len();
        assert!(
            n <= have,
            "consumed {n} elements but the input shows only {have}"
        );
        match &mut self.view {
            View::Borrowed(b) => b.advance(n),
            View::Owned(_, off) => *off += n,
        }
        self.consumed += n;
    }
}

impl<T: Element> InSlot for InBuf<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn push(&mut self, batch: Box<dyn Any + Send>) -> Result<(), String> {
        if self.closed {
            return Err("data arrived after the end of stream".into());
        }
        let batch = batch
            .downcast::<Batch<T>>()
            .map_err(|_| format!("a batch of the wrong type arrived (expected {})", std::any::type_name::<T>()))?;
        if !batch.is_empty() {
            self.queue.push_back(*batch);
        }
        Ok(())
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn is_closed(&self) -> bool {
        self.closed && self.queue.is_empty()
    }

    fn prepare(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        let visible = self.as_slice().len();
        if visible == 0 && self.queue.len() == 1 {
            let batch = self.queue.pop_front().expect("one batch queued");
            if let View::Owned(mut v, _) = std::mem::replace(&mut self.view, View::Borrowed(batch)) {
                v.clear();
                self.spare = v;
            }
            return;
        }
        let mut buf = match std::mem::replace(&mut self.view, View::Owned(Vec::new(), 0)) {
            View::Borrowed(b) => {
                let mut v = std::mem::take(&mut self.spare);
                v.clear();
                v.extend_from_slice(b.as_slice());
                v
            }
            View::Owned(mut v, off) => {
                v.drain(..off);
                v
            }
        };
        for b in self.queue.drain(..) {
            buf.extend_from_slice(b.as_slice());
        }
        self.view = View::Owned(buf, 0);
    }

    fn unconsumed(&self) -> usize {
        self.as_slice().len() + self.queue.iter().map(Batch::len).sum::<usize>()
    }

    fn take_consumed(&mut self) -> usize {
        std::mem::take(&mut self.consumed)
    }

    fn set_credit_route(&mut self, route: CreditRoute) {
        self.route = Some(route);
    }

    fn credit_route(&self) -> Option<&CreditRoute> {
        self.route.as_ref()
    }
}

// ---------------------------------------------------------------------------------------------
// Outputs and links

/// What the graph tells an output about one of its readers.
pub(crate) struct LinkSpec {
    pub mailbox: Arc<dyn Mailbox>,
    pub input: u32,
    pub capacity: usize,
    pub policy: Policy,
    pub counters: Arc<LinkCounters>,
    pub label: String,
}

/// The type-erased face of an output buffer.
pub(crate) trait OutSlot: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Sends what the step appended as one batch to every reader.
    fn flush(&mut self);
    /// A `Block` link holds data it could not send yet.
    fn blocked(&self) -> bool;
    fn credit(&mut self, link: u32, n: usize);
    /// Closes the stream: every link sends its end of stream once its stash is sent.
    fn close(&mut self);
    /// Closed, and every link has sent its end of stream.
    fn done(&self) -> bool;
    fn add_link(&mut self, spec: LinkSpec);
    fn link_count(&self) -> usize;
    fn set_counters(&mut self, counters: Arc<StreamCounters>);
    /// One line per link that holds data it cannot send.
    fn stalled(&self) -> Vec<String>;
}

/// How a link reaches its reader. One variant per transport; agents never see which.
enum Flavor {
    /// Same process: envelopes to the reader's mailbox.
    Local { mailbox: Arc<dyn Mailbox>, input: u32 },
}

/// The writer's end of one connection: credit, stash, policy.
///
/// The reader grants `capacity` elements of credit up front and returns credit as its agent
/// consumes, so at most `capacity` elements are ever in flight (sent, not consumed). Data that
/// finds no credit waits in the stash (`Block`: the writer's agent does not step again until the
/// stash is sent), is dropped (`DropNewest`), or waits while the oldest stashed elements beyond
/// `capacity` are dropped (`DropOldest`). Drops are counted.
struct LinkTx<T> {
    flavor: Flavor,
    capacity: usize,
    credit: usize,
    policy: Policy,
    stash: VecDeque<Batch<T>>,
    stashed: usize,
    close_pending: bool,
    eos_sent: bool,
    blocked_since: Option<Instant>,
    counters: Arc<LinkCounters>,
    label: String,
}

impl<T: Element> LinkTx<T> {
    fn offer(&mut self, mut batch: Batch<T>) {
        match self.policy {
            Policy::Block => {
                self.stashed += batch.len();
                self.stash.push_back(batch);
                self.pump();
            }
            Policy::DropNewest => {
                if self.stash.is_empty() {
                    let n = self.credit.min(batch.len());
                    if n > 0 {
                        let front = batch.split_front(n);
                        self.send(front);
                    }
                }
                add(&self.counters.dropped, batch.len() as u64);
            }
            Policy::DropOldest => {
                self.stashed += batch.len();
                self.stash.push_back(batch);
                self.pump();
                while self.stashed > self.capacity {
                    let excess = self.stashed - self.capacity;
                    let front = self.stash.front_mut().expect("stash holds the excess");
                    let n = excess.min(front.len());
                    front.advance(n);
                    if front.is_empty() {
                        self.stash.pop_front();
                    }
                    self.stashed -= n;
                    add(&self.counters.dropped, n as u64);
                }
            }
        }
        self.note_blocked();
    }

    fn pump(&mut self) {
        while self.credit > 0 {
            let Some(front) = self.stash.front_mut() else { break };
            let n = self.credit.min(front.len());
            let part = if n == front.len() {
                self.stash.pop_front().expect("front exists")
            } else {
                front.split_front(n)
            };
            self.stashed -= n;
            self.send(part);
        }
        if self.stash.is_empty() && self.close_pending && !self.eos_sent {
            self.eos_sent = true;
            match &self.flavor {
                Flavor::Local { mailbox, input } => mailbox.post(Envelope::Eos { input: *input }),
            }
        }
        self.note_blocked();
    }

    fn note_blocked(&mut self) {
        match (self.stash.is_empty(), self.blocked_since) {
            (false, None) => self.blocked_since = Some(Instant::now()),
            (true, Some(since)) => {
                add(&self.counters.blocked_ns, since.elapsed().as_nanos() as u64);
                self.blocked_since = None;
            }
            _ => {}
        }
    }

    fn send(&mut self, batch: Batch<T>) {
        let n = batch.len();
        self.credit -= n;
        let in_flight = (self.capacity - self.credit) as u64;
        let c = &self.counters;
        add(&c.elements, n as u64);
        add(&c.batches, 1);
        c.in_flight.store(in_flight, std::sync::atomic::Ordering::Relaxed);
        c.max_in_flight
            .fetch_max(in_flight, std::sync::atomic::Ordering::Relaxed);
        match &self.flavor {
            Flavor::Local { mailbox, input } => mailbox.post(Envelope::Data {
                input: *input,
                batch: Box::new(batch),
            }),
        }
    }

    fn credit(&mut self, n: usize) {
        self.credit = (self.credit + n).min(self.capacity);
        self.counters.in_flight.store(
            (self.capacity - self.credit) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.pump();
    }
}

/// An output buffer: the step appends to `pending`; `flush` makes it one shared batch.
pub(crate) struct OutBuf<T> {
    pending: Vec<T>,
    links: Vec<LinkTx<T>>,
    closed: bool,
    counters: Arc<StreamCounters>,
}

impl<T: Element> OutBuf<T> {
    pub fn new() -> Self {
        OutBuf {
            pending: Vec::new(),
            links: Vec::new(),
            closed: false,
            counters: Arc::default(),
        }
    }
    pub fn pending(&mut self) -> &mut Vec<T> {
        &mut self.pending
    }
}

impl<T: Element> OutSlot for OutBuf<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        add(&self.counters.elements, self.pending.len() as u64);
        add(&self.counters.batches, 1);
        if self.closed {
            // Appends after close (from a buggy finish) have nowhere to go; the host
            // never calls finish after closing, so this is unreachable in practice.
            self.pending.clear();
            return;
        }
        let data: Arc<[T]> = self.pending.drain(..).collect();
        for link in &mut self.links {
            link.offer(Batch::new(Arc::clone(&data)));
        }
    }

    fn blocked(&self) -> bool {
        self.links
            .iter()
            .any(|l| l.policy == Policy::Block && !l.stash.is_empty())
    }

    fn credit(&mut self, link: u32, n: usize) {
        if let Some(l) = self.links.get_mut(link as usize) {
            l.credit(n);
        }
    }

    fn close(&mut self) {
        self.closed = true;
        for link in &mut self.links {
            link.close_pending = true;
            link.pump();
        }
    }

    fn done(&self) -> bool {
        self.closed && self.links.iter().all(|l| l.eos_sent)
    }

    fn add_link(&mut self, spec: LinkSpec) {
        self.links.push(LinkTx {
            flavor: Flavor::Local {
                mailbox: spec.mailbox,
                input: spec.input,
            },
            capacity: spec.capacity,
            credit: spec.capacity,
            policy: spec.policy,
            stash: VecDeque::new(),
            stashed: 0,
            close_pending: false,
            eos_sent: false,
            blocked_since: None,
            counters: spec.counters,
            label: spec.label,
        });
    }

    fn link_count(&self) -> usize {
        self.links.len()
    }

    fn set_counters(&mut self, counters: Arc<StreamCounters>) {
        self.counters = counters;
    }

    fn stalled(&self) -> Vec<String> {
        self.links
            .iter()
            .filter(|l| !l.stash.is_empty())
            .map(|l| {
                format!(
                    "{}: {} elements wait at the writer, {} in flight unconsumed by the reader (capacity {})",
                    l.label,
                    l.stashed,
                    l.capacity - l.credit,
                    l.capacity
                )
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The host

/// What a source driver reports after a step.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum SourceStatus {
    /// It may have more right away: step again.
    More,
    /// Nothing now; a `Wake` envelope will come.
    Wait,
    /// Finished: close the outputs.
    Done,
}

/// A source as the host drives it. See `ops::source`.
pub(crate) trait SourceDriver: Send {
    fn step(&mut self, outputs: &mut Outputs<'_>) -> Result<SourceStatus, AgentError>;
    /// Moves the source's work onto its own thread (threaded executor only).
    fn spawn(&mut self, ctx: crate::ops::source::SourceThreadCtx) -> Result<(), Error>;
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
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// True if `run` would step the agent or finish a close.
    pub fn ready(&self) -> bool {
        match self.state {
            State::Done => false,
            State::Closing => self.outputs.iter().all(|o| o.done()),
            State::Running => self.dirty && !self.outputs.iter().any(|o| o.blocked()),
        }
    }

    pub fn is_source(&self) -> bool {
        matches!(self.driver, Driver::Source(_))
    }

    /// Takes one envelope in. Errors are protocol violations by the peer.
    pub fn accept(&mut self, env: Envelope) -> Result<(), Error> {
        match env {
            Envelope::Data { input, batch } => {
                let slot = match self.inputs.get_mut(input as usize) { Some(s) => s, None => return Err(self.violation(format!("data for input #{input}, which does not exist"))) };
                slot.push(batch).map_err(|e| Error::Runtime {
                    detail: format!("agent '{}', input #{input}: {e}", self.name),
                })?;
                self.dirty = true;
            }
            Envelope::Eos { input } => {
                let slot = match self.inputs.get_mut(input as usize) { Some(s) => s, None => return Err(self.violation(format!("end of stream for input #{input}, which does not exist"))) };
                slot.close();
                self.dirty = true;
            }
            Envelope::Credit { output, link, n } => {
                let slot = match self.outputs.get_mut(output as usize) { Some(s) => s, None => return Err(self.violation(format!("credit for output #{output}, which does not exist"))) };
                let was_blocked = slot.blocked();
                slot.credit(link, n);
                // Credit may unblock a step that was held back, or finish a close.
                if was_blocked || self.state == State::Closing {
                    self.dirty = true;
                }
            }
            Envelope::Wake => self.dirty = true,
            Envelope::ForceClose => {
                for slot in &mut self.inputs {
                    slot.close();
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
    pub fn run(&mut self) -> Result<(), Error> {
        let span = self.span.clone();
        let _entered = span.enter();
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
            self.dirty = false;
            add(&self.counters.steps, 1);
            let id = self.id;
            match &mut self.driver {
                Driver::Agent(agent) => {
                    for slot in &mut self.inputs {
                        slot.prepare();
                    }
                    let result = {
                        let mut inputs = Inputs { agent: id, slots: &mut self.inputs };
                        let mut outputs = Outputs { agent: id, slots: &mut self.outputs };
                        catch_unwind(AssertUnwindSafe(|| agent.step(&mut inputs, &mut outputs)))
                    };
                    self.check(result)?;
                    let consumed = self.return_credits();
                    self.flush();
                    if self.inputs.iter().all(|i| i.is_closed()) {
                        if consumed > 0 {
                            self.dirty = true;
                            continue;
                        }
                        let Driver::Agent(agent) = &mut self.driver else { unreachable!() };
                        let result = {
                            let mut outputs = Outputs { agent: id, slots: &mut self.outputs };
                            catch_unwind(AssertUnwindSafe(|| agent.finish(&mut outputs)))
                        };
                        self.check(result)?;
                        self.flush();
                        self.close_outputs();
                    }
                }
                Driver::Source(source) => {
                    let result = {
                        let mut outputs = Outputs { agent: id, slots: &mut self.outputs };
                        catch_unwind(AssertUnwindSafe(|| source.step(&mut outputs)))
                    };
                    let status = self.check(result)?;
                    self.flush();
                    match status {
                        SourceStatus::More => self.dirty = true,
                        SourceStatus::Wait => {}
                        SourceStatus::Done => self.close_outputs(),
                    }
                }
            }
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

    fn return_credits(&mut self) -> usize {
        let mut total = 0;
        for slot in &mut self.inputs {
            let n = slot.take_consumed();
            if n > 0 {
                total += n;
                if let Some(route) = slot.credit_route() {
                    route.mailbox.post(Envelope::Credit {
                        output: route.output,
                        link: route.link,
                        n,
                    });
                }
            }
        }
        add(&self.counters.consumed, total as u64);
        total
    }

    fn flush(&mut self) {
        for o in &mut self.outputs {
            o.flush();
        }
    }

    fn close_outputs(&mut self) {
        for o in &mut self.outputs {
            o.close();
        }
        self.state = State::Closing;
        self.dirty = true;
    }

    /// Lines describing links of this host that hold data they cannot send.
    pub fn stalled(&self) -> Vec<String> {
        self.outputs.iter().flat_map(|o| o.stalled()).collect()
    }
}
