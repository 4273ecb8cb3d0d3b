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
    Data {
        input: u32,
        batch: Box<dyn Any + Send>,
    },
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

    /// On a durable credit route (a ring's feeder): the reading agent's last step saw every
    /// element received on the input and left `unconsumed` of them; it waits for more. Posted
    /// after that step's credit, and only if nothing arrived since the step. Other mailboxes
    /// ignore it.
    fn reader_waits(&self, _unconsumed: usize) {}
}

/// Where an input returns credit: the writer's mailbox and which of its links feeds this input.
pub(crate) struct CreditRoute {
    pub mailbox: Arc<dyn Mailbox>,
    pub output: u32,
    pub link: u32,
    pub capacity: usize,
    pub policy: Policy,
    /// The input is fed from a shared-memory ring, whose feeder releases ring space as credit
    /// comes back: credit then means "done with", and is returned only once the step's outputs
    /// are handed on (see [`Host::run`]), so that a restarted process re-reads what was not.
    pub durable: bool,
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
    /// Elements consumed since the last call.
    fn take_consumed(&mut self) -> usize;
    /// Credit to return to the writer now, if it is due (see [`InBuf`]). A durable route's
    /// credit is never due unless `durable_ok` (the host says the outputs are handed on).
    fn credit_due(&mut self, durable_ok: bool) -> usize;
    fn set_credit_route(&mut self, route: CreditRoute);
    fn credit_route(&self) -> Option<&CreditRoute>;
    /// How many elements the last step left unconsumed, if it left some, saw everything
    /// received, and nothing arrived since (see [`Mailbox::reader_waits`]); taken once.
    fn take_waiting(&mut self) -> Option<usize>;
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
///
/// # Credit in groups
///
/// Consumed elements are credited back to the writer in groups of a quarter of the capacity,
/// which divides the credit messages by the batches per quarter. This never deadlocks: when no
/// message is in transit, the writer's credit is `capacity - outstanding`, so a writer with no
/// credit left implies `outstanding == capacity` here, and then whatever was consumed is
/// returned at once. Drop-policy links return credit after every step, since a writer that
/// drops instead of waiting should see the reader's room as soon as it exists.
///
/// On a durable route (a shared-memory ring) the same credit also tells the feeder which ring
/// frames it may release; the host returns it only once the step's outputs are handed on (see
/// [`Host::run`]), and then all of it, without grouping: a feeder holds ring space for every
/// element not credited back, and the writer may be waiting for exactly that space. With the
/// credit, the host tells the feeder when a step left elements unconsumed although it saw
/// everything received ([`Mailbox::reader_waits`]): only then may the feeder release ring
/// space early (see `transport::held`).
pub(crate) struct InBuf<T> {
    view: View<T>,
    queue: VecDeque<Batch<T>>,
    closed: bool,
    /// Consumed since the last `take_consumed`.
    consumed: usize,
    /// Consumed and not yet credited back.
    unreturned: usize,
    /// Received and not yet credited back.
    outstanding: usize,
    spare: Vec<T>,
    route: Option<CreditRoute>,
    /// Elements the last step left unconsumed, having seen everything received (see
    /// [`InSlot::take_waiting`]); cleared when a batch arrives.
    waiting: Option<usize>,
}

impl<T: Element> InBuf<T> {
    pub fn new() -> Self {
        InBuf {
            view: View::Owned(Vec::new(), 0),
            queue: VecDeque::new(),
            closed: false,
            consumed: 0,
            unreturned: 0,
            outstanding: 0,
            spare: Vec::new(),
            route: None,
            waiting: None,
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
        self.unreturned += n;
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
        let batch = batch.downcast::<Batch<T>>().map_err(|_| {
            format!(
                "a batch of the wrong type arrived (expected {})",
                std::any::type_name::<T>()
            )
        })?;
        if !batch.is_empty() {
            self.outstanding += batch.len();
            self.queue.push_back(*batch);
            self.waiting = None;
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
            if let View::Owned(mut v, _) = std::mem::replace(&mut self.view, View::Borrowed(batch))
            {
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

    fn take_consumed(&mut self) -> usize {
        // Called once after each step: batches arrive only between steps, so an empty queue
        // means the step saw everything received.
        let left = self.as_slice().len();
        self.waiting = (left > 0 && self.queue.is_empty() && !self.closed).then_some(left);
        std::mem::take(&mut self.consumed)
    }

    fn credit_due(&mut self, durable_ok: bool) -> usize {
        let Some(route) = &self.route else { return 0 };
        if route.durable && !durable_ok {
            return 0;
        }
        let group = match route.policy {
            Policy::Block if !route.durable => (route.capacity / 4).max(1),
            Policy::Block | Policy::DropOldest | Policy::DropNewest => 1,
        };
        if self.unreturned >= group || self.outstanding >= route.capacity || self.closed {
            let n = std::mem::take(&mut self.unreturned);
            self.outstanding -= n;
            n
        } else {
            0
        }
    }

    fn set_credit_route(&mut self, route: CreditRoute) {
        self.route = Some(route);
    }

    fn credit_route(&self) -> Option<&CreditRoute> {
        self.route.as_ref()
    }

    fn take_waiting(&mut self) -> Option<usize> {
        self.waiting.take()
    }
}

// ---------------------------------------------------------------------------------------------
// Outputs and links

/// What the graph tells an output about one of its readers.
pub(crate) struct LinkSpec {
    /// The reader's mailbox (in-process links only).
    pub mailbox: Option<Arc<dyn Mailbox>>,
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
    /// A `Block` link holds data it could not send yet (a stash, or parts of a large element
    /// owed to a ring).
    fn blocked(&self) -> bool;
    fn credit(&mut self, link: u32, n: usize);
    /// Closes the stream: every link sends its end of stream once its stash is sent.
    fn close(&mut self);
    /// Closed, and every link has sent its end of stream.
    fn done(&self) -> bool;
    fn add_link(&mut self, spec: LinkSpec);
    /// Adds a link that writes into the shared-memory ring `segment`; `wake` reaches this
    /// output's host, which knows the link as `(output, link)`.
    fn add_shm_link(
        &mut self,
        segment: &str,
        spec: LinkSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: crate::runtime::RunHandle,
        peer: &str,
    ) -> Result<(), Error>;
    fn link_count(&self) -> usize;
    /// The first transport failure of any link, taken.
    fn take_error(&mut self) -> Option<String>;
    fn set_counters(&mut self, counters: Arc<StreamCounters>);
    /// One line per link that holds data it cannot send.
    fn stalled(&self) -> Vec<String>;
    /// A link holds data for a shared-memory ring: it waits on another process, not on this one.
    fn waits_on_ring(&self) -> bool;
}

/// How a link reaches its reader. One variant per transport; agents never see which.
pub(crate) enum Flavor<T> {
    /// Same process: envelopes to the reader's mailbox, within the link's credit.
    Local {
        mailbox: Arc<dyn Mailbox>,
        input: u32,
    },
    /// Another process (or a forced ring): frames in a shared-memory ring, within its room.
    Shm(crate::transport::ShmSender<T>),
}

/// The writer's end of one connection: credit, stash, policy.
///
/// In-process, the reader grants `capacity` elements of credit up front and returns credit as its
/// agent consumes, so at most `capacity` elements are ever in flight (sent, not consumed). Across
/// processes the ring's room plays the part of the credit. Data that cannot be sent now waits in
/// the stash (`Block`: the writer's agent does not step again until the stash is sent), is
/// dropped (`DropNewest`), or waits while the oldest stashed elements beyond `capacity` are
/// dropped (`DropOldest`). Drops are counted.
pub(crate) struct LinkTx<T> {
    flavor: Flavor<T>,
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
    /// The first transport failure (a corrupt ring, an element too large for a frame).
    error: Option<String>,
}

/// Sends as much of the front of `batch` as the transport takes now; returns how many elements.
fn transmit<T: Element>(
    flavor: &mut Flavor<T>,
    credit: &mut usize,
    capacity: usize,
    counters: &LinkCounters,
    batch: &mut Batch<T>,
) -> Result<usize, String> {
    let n = match flavor {
        Flavor::Local { mailbox, input } => {
            let n = (*credit).min(batch.len());
            if n == 0 {
                return Ok(0);
            }
            *credit -= n;
            let part = batch.split_front(n);
            mailbox.post(Envelope::Data {
                input: *input,
                batch: Box::new(part),
            });
            let in_flight = (capacity - *credit) as u64;
            counters
                .in_flight
                .store(in_flight, std::sync::atomic::Ordering::Relaxed);
            counters
                .max_in_flight
                .fetch_max(in_flight, std::sync::atomic::Ordering::Relaxed);
            n
        }
        Flavor::Shm(tx) => {
            let n = tx.write(batch.as_slice())?;
            batch.advance(n);
            n
        }
    };
    if n > 0 {
        add(&counters.elements, n as u64);
        add(&counters.batches, 1);
    }
    Ok(n)
}

impl<T: Element> LinkTx<T> {
    pub(crate) fn new(flavor: Flavor<T>, spec: &LinkSpec) -> Self {
        LinkTx {
            flavor,
            capacity: spec.capacity,
            credit: spec.capacity,
            policy: spec.policy,
            stash: VecDeque::new(),
            stashed: 0,
            close_pending: false,
            eos_sent: false,
            blocked_since: None,
            counters: Arc::clone(&spec.counters),
            label: spec.label.clone(),
            error: None,
        }
    }

    fn send_now(&mut self, batch: &mut Batch<T>) -> usize {
        if self.error.is_some() {
            return 0;
        }
        match transmit(
            &mut self.flavor,
            &mut self.credit,
            self.capacity,
            &self.counters,
            batch,
        ) {
            Ok(n) => n,
            Err(e) => {
                self.error = Some(format!("connection {}: {e}", self.label));
                0
            }
        }
    }

    fn offer(&mut self, mut batch: Batch<T>) {
        match self.policy {
            Policy::Block => {
                self.stashed += batch.len();
                self.stash.push_back(batch);
                self.pump();
            }
            Policy::DropNewest => {
                if self.stash.is_empty() {
                    self.send_now(&mut batch);
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
        // A ring may still owe parts of a large element it accepted: they go first.
        if let (Flavor::Shm(tx), None) = (&mut self.flavor, &self.error) {
            if let Err(e) = tx.flush() {
                self.error = Some(format!("connection {}: {e}", self.label));
            }
        }
        while let Some(mut front) = self.stash.pop_front() {
            let n = self.send_now(&mut front);
            self.stashed -= n;
            if !front.is_empty() {
                self.stash.push_front(front);
            }
            if n == 0 {
                break;
            }
        }
        if self.stash.is_empty() && self.close_pending && !self.eos_sent && self.transport_idle() {
            self.eos_sent = true;
            match &mut self.flavor {
                Flavor::Local { mailbox, input } => mailbox.post(Envelope::Eos { input: *input }),
                Flavor::Shm(tx) => tx.close(),
            }
        }
        self.note_blocked();
    }

    /// Nothing accepted waits in the transport (a ring's large element written entirely), or
    /// the link failed: the stream may be closed.
    fn transport_idle(&self) -> bool {
        match &self.flavor {
            Flavor::Local { .. } => true,
            Flavor::Shm(tx) => tx.idle() || self.error.is_some(),
        }
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

    fn credit(&mut self, n: usize) {
        if let Flavor::Local { .. } = self.flavor {
            self.credit = (self.credit + n).min(self.capacity);
            self.counters.in_flight.store(
                (self.capacity - self.credit) as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
        }
        // For a ring, a credit envelope means "there may be room again".
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
        // Parts of a large element still owed to a ring count as stashed data: the element is
        // not handed on (a restarted writer must get it again from its input, so durable
        // credit waits for it), and they go before anything the agent writes next.
        self.links
            .iter()
            .any(|l| l.policy == Policy::Block && !(l.stash.is_empty() && l.transport_idle()))
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
        let flavor = Flavor::Local {
            mailbox: Arc::clone(
                spec.mailbox
                    .as_ref()
                    .expect("an in-process link has the reader's mailbox"),
            ),
            input: spec.input,
        };
        self.links.push(LinkTx::new(flavor, &spec));
    }

    fn add_shm_link(
        &mut self,
        segment: &str,
        spec: LinkSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: crate::runtime::RunHandle,
        peer: &str,
    ) -> Result<(), Error> {
        let link = self.links.len() as u32;
        let tx = crate::transport::ShmSender::<T>::open(
            segment,
            &spec.label,
            peer,
            wake,
            output,
            link,
            run,
        )?;
        self.links.push(LinkTx::new(Flavor::Shm(tx), &spec));
        Ok(())
    }

    fn take_error(&mut self) -> Option<String> {
        self.links.iter_mut().find_map(|l| l.error.take())
    }

    fn link_count(&self) -> usize {
        self.links.len()
    }

    fn set_counters(&mut self, counters: Arc<StreamCounters>) {
        self.counters = counters;
    }

    fn waits_on_ring(&self) -> bool {
        self.links.iter().any(|l| {
            matches!(l.flavor, Flavor::Shm(_)) && !(l.stash.is_empty() && l.transport_idle())
        })
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
    /// Moves the source's work onto its own thread (threaded executor only); returns what ends
    /// its stream if that thread does not return after a stop (a source on a thread of its own).
    fn spawn(
        &mut self,
        ctx: crate::ops::source::SourceThreadCtx,
    ) -> Result<Option<crate::ops::source::SourceEnder>, Error>;
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
        let span = self.span.clone();
        let _entered = span.enter();
        if self.owed {
            self.settle_durable();
        }
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
                        let mut inputs = Inputs {
                            agent: id,
                            slots: &mut self.inputs,
                        };
                        let mut outputs = Outputs {
                            agent: id,
                            slots: &mut self.outputs,
                        };
                        catch_unwind(AssertUnwindSafe(|| agent.step(&mut inputs, &mut outputs)))
                    };
                    if !matches!(result, Ok(Ok(()))) {
                        // What the step appended before it failed is delivered: nothing already
                        // accepted is lost (readers see it; the run then stops with the error).
                        let _ = self.flush();
                    }
                    self.check(result)?;
                    let consumed = self.return_credits();
                    self.flush()?;
                    if self.owed {
                        self.settle_durable();
                    }
                    if self.inputs.iter().all(|i| i.is_closed()) {
                        if consumed > 0 {
                            self.dirty = true;
                            continue;
                        }
                        let Driver::Agent(agent) = &mut self.driver else {
                            unreachable!()
                        };
                        let result = {
                            let mut outputs = Outputs {
                                agent: id,
                                slots: &mut self.outputs,
                            };
                            catch_unwind(AssertUnwindSafe(|| agent.finish(&mut outputs)))
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
                        catch_unwind(AssertUnwindSafe(|| source.step(&mut outputs)))
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
    use crate::stream::{Input, PortId, Stream};
    use std::sync::Mutex;

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
                    out.extend_from_slice(batch.downcast::<Batch<u64>>().unwrap().as_slice());
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
        });
        let mut output: Box<dyn OutSlot> = Box::new(OutBuf::<u64>::new());
        output.add_link(LinkSpec {
            mailbox: Some(Arc::clone(downstream) as Arc<dyn Mailbox>),
            input: 0,
            capacity: out_capacity,
            policy: Policy::Block,
            counters: Arc::default(),
            label: "pass.out -> next.in".into(),
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
            batch: Box::new(Batch::new(items.into())),
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
