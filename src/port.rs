//! The buffers behind an agent's ports, which the host fills and drains.
//!
//! An input's [`InBuf<T>`] queues the batches that arrive for it, shows everything not yet
//! consumed to the agent's step as one slice, and works out the credit to return to the writer
//! (to a ring's feeder only once the step's outputs are handed on: "durable" credit). An
//! output's [`OutBuf<T>`] collects what a step appends and sends it, as one shared batch, on
//! each of its links (a [`LinkTx<T>`], whatever the transport). The host sees both through the
//! type-erased [`InSlot`] and [`OutSlot`]; the agent API ([`crate::agent`]) sees them typed.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::Arc;

use crate::error::Error;
use crate::metrics::{add, LinkCounters, StreamCounters};
use crate::stream::{spare, AnyBatch, Batch, Element, Mark, Policy, VecPool, SMALL_VEC_BYTES};
use crate::transport::broker::{BrokerSender, BrokerWriterSpec};
use crate::transport::tcp::{TcpSender, TcpWriterSpec};
use crate::transport::{LinkSpec, LinkTx, Mailbox, Run, ShmSender};

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
    /// An in-process link's counters, shared with its writer: the reader stores there what its
    /// agent consumed, from which the backlog is computed ([`LinkCounters::local_backlog`]).
    pub local: Option<Arc<LinkCounters>>,
}

// ---------------------------------------------------------------------------------------------
// Inputs

/// The type-erased face of an input buffer.
pub(crate) trait InSlot: Send {
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Queues a batch; an error if the payload is not a `Batch<T>` or the input is closed.
    fn push(&mut self, batch: AnyBatch) -> Result<(), String>;
    fn close(&mut self);
    /// Closed and every element received is in the view.
    fn is_closed(&self) -> bool;
    /// Makes what was received visible as one slice: everything, or, with `segment` and an
    /// agent that consumed all it was shown last time, only the elements before the next
    /// unpassed mark (so that marks keep their places through an agent that forwards them).
    fn prepare(&mut self, segment: bool);
    /// Elements received that the last [`prepare`](InSlot::prepare) did not show.
    fn has_unseen(&self) -> bool;
    /// Elements received and not consumed.
    fn holds(&self) -> bool;
    /// Elements consumed since the last call.
    fn take_consumed(&mut self) -> usize;
    /// Consumes, for credit, every element left once the input is closed and the agent has
    /// consumed all it will (the last partial window, say), so that the writer's link
    /// accounts the stream as consumed; returns how many. Nothing while elements are unseen.
    fn discard_rest(&mut self) -> usize;
    /// Credit to return to the writer now, if it is due (see [`InBuf`]). A durable route's
    /// credit is never due unless `durable_ok` (the host says the outputs are handed on).
    fn credit_due(&mut self, durable_ok: bool) -> usize;
    fn set_credit_route(&mut self, route: CreditRoute);
    fn credit_route(&self) -> Option<&CreditRoute>;
    /// How many elements the last step left unconsumed, if it left some, saw everything
    /// received, and nothing arrived since (see [`Mailbox::reader_waits`]); taken once.
    fn take_waiting(&mut self) -> Option<usize>;
    /// Queues a mark after the elements received so far (ignored once the input is closed).
    fn push_mark(&mut self, mark: Mark) -> Result<(), String>;
    /// Passes the marks the agent has consumed up to (every element before them consumed):
    /// they become the input's [`progress`](InSlot::progress). Called after each step. True if
    /// it passed any.
    fn pass_marks(&mut self) -> bool;
    /// The input's event-time progress, as of the marks passed.
    fn progress(&self) -> Progress;
    /// Says whether the stream feeding this input carries watermarks (known from the graph).
    fn set_timed(&mut self, timed: bool);
}

/// An input's event-time progress, as its host combines it (see [`Host`](crate::host::Host)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Progress {
    /// The writer closed the stream and every element was received.
    pub closed: bool,
    /// The highest watermark passed (`None`: none yet).
    pub watermark: Option<u64>,
    /// An idleness mark was passed and nothing arrived since.
    pub idle: bool,
}

enum View<T> {
    Borrowed(Batch<T>),
    Owned(Vec<T>, usize),
}

/// A batch of at least this many elements is shown to a step alone, not gathered with the
/// batches queued behind it (see [`travels_alone`]).
const ALONE_ELEMENTS: usize = 1024;
/// A batch of at least this many bytes of elements is shown to a step alone.
const ALONE_BYTES: usize = 64 << 10;

/// Whether a queued batch of `len` elements of `size` bytes is shown to a step by itself when
/// the agent is caught up: gathering small batches pays the per-step cost once per burst
/// (adaptive batching), but a batch this large already amortises it, and gathering would
/// copy (or clone) every element of it: with 1 KiB elements that copy was 29 % of a map
/// stage's time. The batches behind it get the next steps.
fn travels_alone(len: usize, size: usize) -> bool {
    len >= ALONE_ELEMENTS || len.saturating_mul(size) >= ALONE_BYTES
}

/// The fewest bytes of elements that [`InBuf::take_shown`] moves rather than leaving its
/// caller to copy them, for an output with a reader in this process
/// ([`OutBuf::moves_at_least`]). A smaller batch stays in a core's cache, and copying it into the
/// output's own vector (the same few vectors, written by this thread, step after step) costs
/// less than the vectors it would otherwise pass on: the writer's thread then fills vectors
/// another core has just written. Measured with 8-byte elements in batches of 4,096 (32 KiB),
/// source and map on one thread: moving them was 0.7× the copy.
pub(crate) const MOVE_AT_LEAST_BYTES: usize = 64 << 10;

/// [`MOVE_AT_LEAST_BYTES`] for an output whose every link writes bytes (a ring, a socket, a
/// broker: its readers are in other processes or hosts, or forced onto such a link): its
/// vector is written by the stepping thread and goes back to that output's pool there, so
/// the vector passed on is only the empty one the input's writer gets in exchange, and a copy
/// would be a second pass over the bytes before the transport's (with 8-byte elements in
/// batches of 32 KiB between two processes, the map's copy was about a quarter of the
/// writing thread's time, the ring's another quarter).
pub(crate) const MOVE_TO_BYTES_AT_LEAST_BYTES: usize = 4 << 10;

/// An input buffer: batches received, shown to the step as one slice.
///
/// While the agent consumes everything it is shown, the slice is the batch itself (no copy).
/// Several small batches waiting for a caught-up agent are gathered into one owned vector and
/// shown at once (adaptive batching); a large one is shown alone ([`travels_alone`]). When
/// the agent leaves elements unconsumed and more arrive, they are gathered too; each element
/// is copied at most once per stay, and the vector's allocation is reused. A batch no other
/// reader holds is moved into the gathered vector, not cloned ([`Batch::move_into`]): a
/// `String` keeps its text where it is (a clone was an allocation and a copy per element,
/// and twice the memory until the batch was dropped).
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
    /// An empty vector kept for the next gathering (see `keep_spare`).
    spare: Vec<T>,
    /// Its capacity in bytes, counted in the process's spare buffers.
    spare_bytes: usize,
    route: Option<CreditRoute>,
    /// An in-process link whose elements own heap memory: its writer counts their bytes
    /// against the connection's byte bound from what this input stores as consumed, and may
    /// stop far below the element credit; then it says so
    /// ([`LinkCounters::writer_waits_bytes`](crate::metrics::LinkCounters)) and credit goes
    /// back at the next step that consumed, rather than by quarters of the capacity.
    heap_counted: bool,
    /// Elements the last step left unconsumed, having seen everything received (see
    /// [`InSlot::take_waiting`]); cleared when a batch arrives.
    waiting: Option<usize>,
    /// Elements received and consumed since the start, for the positions of marks.
    received_total: u64,
    consumed_total: u64,
    /// Marks not passed yet, each with the number of elements received before it.
    marks: VecDeque<(u64, Mark)>,
    /// The highest watermark passed.
    watermark: Option<u64>,
    /// An idleness mark was passed at this position (and is void once an element follows).
    idle_at: Option<u64>,
    /// The stream feeding this input carries watermarks.
    timed: bool,
    /// Elements of the view shown to the step (the rest waits behind a mark).
    shown: usize,
    /// The last step consumed everything it was shown.
    kept_up: bool,
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
            spare_bytes: 0,
            route: None,
            heap_counted: false,
            waiting: None,
            received_total: 0,
            consumed_total: 0,
            marks: VecDeque::new(),
            watermark: None,
            idle_at: None,
            timed: false,
            shown: 0,
            kept_up: true,
        }
    }

    /// Keeps `v`, emptied, as the vector the next gathering of batches reuses, if the
    /// process's bound on spare buffers allows (see [`spare`](crate::stream::spare));
    /// otherwise frees it. A vector with no capacity is not worth keeping.
    fn keep_spare(&mut self, mut v: Vec<T>) {
        if v.capacity() == 0 {
            return;
        }
        v.clear();
        drop(self.take_spare());
        let bytes = v.capacity().saturating_mul(std::mem::size_of::<T>());
        if spare::keep(bytes) {
            self.spare = v;
            self.spare_bytes = bytes;
        }
    }

    /// The spare vector (empty; possibly without capacity), no longer counted as spare.
    fn take_spare(&mut self) -> Vec<T> {
        spare::release(std::mem::take(&mut self.spare_bytes));
        std::mem::take(&mut self.spare)
    }

    /// Everything in the view, shown or not.
    fn view_all(&self) -> &[T] {
        match &self.view {
            View::Borrowed(b) => b.as_slice(),
            View::Owned(v, off) => &v[*off..],
        }
    }

    pub fn as_slice(&self) -> &[T] {
        &self.view_all()[..self.shown]
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
        self.shown -= n;
        self.consumed += n;
        self.unreturned += n;
        self.consumed_total += n as u64;
    }

    /// Consumes everything shown and returns it as a vector without copying, when the view is
    /// all shown, at least `at_least_bytes` (see [`OutBuf::moves_at_least`]), and one vector
    /// that nothing else holds: a
    /// batch, whole and unshared ([`Batch::take_whole`]; `replacement` goes back to the
    /// batch's pool with it), or the vector batches were gathered into (`replacement` becomes
    /// the view's). Otherwise `replacement` comes back and nothing is consumed.
    pub fn take_shown(
        &mut self,
        replacement: Vec<T>,
        at_least_bytes: usize,
    ) -> Result<Vec<T>, Vec<T>> {
        let n = self.shown;
        if n == 0
            || n != self.view_all().len()
            || n.saturating_mul(std::mem::size_of::<T>()) < at_least_bytes
        {
            return Err(replacement);
        }
        let items = match &mut self.view {
            View::Borrowed(b) => b.take_whole(replacement)?,
            View::Owned(v, 0) => std::mem::replace(v, replacement),
            View::Owned(..) => return Err(replacement),
        };
        if let View::Owned(v, _) = &mut self.view {
            v.clear();
        }
        self.shown = 0;
        self.consumed += n;
        self.unreturned += n;
        self.consumed_total += n as u64;
        Ok(items)
    }

    /// The marks among the unconsumed elements, each with its place in the slice: `(i, m)`
    /// means `m` follows the first `i` elements of [`as_slice`](Self::as_slice).
    pub fn marks(&self) -> impl Iterator<Item = (usize, Mark)> + '_ {
        let base = self.consumed_total;
        let end = base + self.shown as u64;
        // Marks before what was consumed in this step are passed (they leave after it); marks
        // after what is shown come with their elements.
        self.marks
            .iter()
            .filter(move |&&(at, _)| at >= base && at <= end)
            .map(move |&(at, m)| ((at - base) as usize, m))
    }

    /// The highest watermark passed (see [`InSlot::progress`]).
    pub fn watermark(&self) -> Option<u64> {
        self.watermark
    }

    /// An idleness mark was passed and nothing arrived since.
    pub fn is_idle(&self) -> bool {
        self.idle_at == Some(self.received_total)
    }

    /// The stream feeding this input carries watermarks.
    pub fn is_timed(&self) -> bool {
        self.timed
    }
}

impl<T> Drop for InBuf<T> {
    fn drop(&mut self) {
        spare::release(self.spare_bytes);
    }
}

impl<T: Element> InSlot for InBuf<T> {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn push(&mut self, batch: AnyBatch) -> Result<(), String> {
        if self.closed {
            return Err("data arrived after the end of stream".into());
        }
        let batch = batch.downcast::<T>().map_err(|_| {
            format!(
                "a batch of the wrong type arrived (expected {})",
                std::any::type_name::<T>()
            )
        })?;
        if !batch.is_empty() {
            self.outstanding += batch.len();
            self.received_total += batch.len() as u64;
            self.queue.push_back(batch);
            self.waiting = None;
        }
        Ok(())
    }

    fn push_mark(&mut self, mark: Mark) -> Result<(), String> {
        if self.closed {
            // After the end (a feedback loop closed when the application went quiet, say) a
            // mark says nothing any more.
            return Ok(());
        }
        let at = self.received_total;
        // Marks with no element between say, together, a watermark and whether the stream
        // is idle after it: at most a watermark then idleness wait at one place. Idleness
        // does not replace the watermark before it (that watermark would be lost to the
        // input's progress); a watermark does replace idleness (it ends it).
        if mark == Mark::Idle {
            if !matches!(self.marks.back(), Some(&(a, Mark::Idle)) if a == at) {
                self.marks.push_back((at, mark));
            }
            return Ok(());
        }
        if matches!(self.marks.back(), Some(&(a, Mark::Idle)) if a == at) {
            self.marks.pop_back();
        }
        match self.marks.back_mut() {
            Some((a, m @ Mark::Watermark(_))) if *a == at => *m = mark,
            _ => self.marks.push_back((at, mark)),
        }
        Ok(())
    }

    fn pass_marks(&mut self) -> bool {
        let mut passed = false;
        while let Some(&(at, mark)) = self.marks.front() {
            if at > self.consumed_total {
                break;
            }
            self.marks.pop_front();
            passed = true;
            match mark {
                Mark::Watermark(w) => {
                    self.watermark = Some(self.watermark.map_or(w, |old| old.max(w)));
                    self.idle_at = None;
                }
                Mark::Idle => self.idle_at = Some(at),
            }
        }
        passed
    }

    fn progress(&self) -> Progress {
        Progress {
            closed: self.is_closed(),
            watermark: self.watermark,
            idle: self.is_idle(),
        }
    }

    fn set_timed(&mut self, timed: bool) {
        self.timed = timed;
    }

    fn close(&mut self) {
        self.closed = true;
    }

    fn is_closed(&self) -> bool {
        self.closed && !self.has_unseen()
    }

    fn has_unseen(&self) -> bool {
        !self.queue.is_empty() || self.shown < self.view_all().len()
    }

    fn holds(&self) -> bool {
        !self.queue.is_empty() || !self.view_all().is_empty()
    }

    fn prepare(&mut self, segment: bool) {
        // With `segment`, show only what comes before the next mark (none, if it is at the
        // front: it passes after this step, before what follows it is shown). Not after a
        // step that left elements: an agent that waits for more (a count window, a zip) must
        // see them all.
        let want = match self.marks.front() {
            Some(&(at, _)) if segment && self.kept_up => {
                usize::try_from(at.saturating_sub(self.consumed_total)).unwrap_or(usize::MAX)
            }
            _ => usize::MAX,
        };
        let visible = self.view_all().len();
        if visible < want && !self.queue.is_empty() {
            // How many queued batches the view needs.
            let (mut have, mut take) = (visible, 0);
            let size = std::mem::size_of::<T>();
            for b in &self.queue {
                // A large batch behind others is not gathered with them: it is shown alone
                // at the next step.
                if have >= want || (take > 0 && travels_alone(b.len(), size)) {
                    break;
                }
                have += b.len();
                take += 1;
            }
            let alone = self
                .queue
                .front()
                .is_some_and(|b| travels_alone(b.len(), size));
            if visible == 0 && (take == 1 || alone) {
                let batch = self.queue.pop_front().expect("a batch queued");
                if let View::Owned(v, _) = std::mem::replace(&mut self.view, View::Borrowed(batch))
                {
                    self.keep_spare(v);
                }
            } else {
                let mut buf = match std::mem::replace(&mut self.view, View::Owned(Vec::new(), 0)) {
                    View::Borrowed(mut b) => {
                        let mut v = self.take_spare();
                        b.move_into(&mut v);
                        v
                    }
                    // An empty view without a vector (let go of after a step): the spare.
                    View::Owned(v, _) if v.capacity() == 0 => self.take_spare(),
                    View::Owned(mut v, off) => {
                        v.drain(..off);
                        v
                    }
                };
                for mut b in self.queue.drain(..take) {
                    b.move_into(&mut buf);
                }
                self.view = View::Owned(buf, 0);
            }
        }
        self.shown = self.view_all().len().min(want);
    }

    fn discard_rest(&mut self) -> usize {
        if self.has_unseen() {
            return 0;
        }
        let n = self.as_slice().len();
        if n > 0 {
            self.consume(n);
        }
        n
    }

    fn take_consumed(&mut self) -> usize {
        // Called once after each step: batches arrive only between steps, so nothing unseen
        // (no batch queued, nothing held behind a mark) means the step saw everything received.
        let left = self.as_slice().len();
        self.kept_up = left == 0;
        self.waiting = (left > 0 && !self.has_unseen() && !self.closed).then_some(left);
        if self.view_all().is_empty() && self.queue.is_empty() {
            // Everything received is consumed: let go of the view now rather than at the next
            // step, however far off (a batch goes back to its writer's pool; a gathered vector
            // becomes the spare, within the process's bound on spare buffers).
            match std::mem::replace(&mut self.view, View::Owned(Vec::new(), 0)) {
                View::Borrowed(_) => {}
                View::Owned(v, _) => self.keep_spare(v),
            }
        }
        if let Some(local) = self.route.as_ref().and_then(|r| r.local.as_ref()) {
            if self.consumed > 0 {
                // The link's backlog is what was sent less this (see
                // `LinkCounters::local_backlog`); a writer waiting on its byte bound reads it
                // before it waits (see `credit_due`).
                let order = if self.heap_counted {
                    std::sync::atomic::Ordering::SeqCst
                } else {
                    std::sync::atomic::Ordering::Release
                };
                local.consumed.store(self.consumed_total, order);
            }
        }
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
        // After the SeqCst store of what was consumed (`take_consumed`): a writer that set
        // the flag before reading that store waits for this credit.
        let writer_waits = || {
            route.local.as_ref().is_some_and(|l| {
                l.writer_waits_bytes
                    .load(std::sync::atomic::Ordering::SeqCst)
                    && l.writer_waits_bytes
                        .swap(false, std::sync::atomic::Ordering::SeqCst)
            })
        };
        if self.unreturned >= group
            || self.outstanding >= route.capacity
            || self.closed
            || (self.heap_counted && self.unreturned > 0 && writer_waits())
        {
            let n = std::mem::take(&mut self.unreturned);
            self.outstanding -= n;
            n
        } else {
            0
        }
    }

    fn set_credit_route(&mut self, route: CreditRoute) {
        self.heap_counted = route.local.is_some() && crate::stream::heap::counter::<T>().is_some();
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

/// The type-erased face of an output buffer.
pub(crate) trait OutSlot: Send {
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// Sends what the step appended as one batch to every reader, then the step's mark.
    fn flush(&mut self);
    /// Sets the mark sent after this step's elements (see [`OutBuf::set_mark`]).
    fn set_mark(&mut self, mark: Mark);
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
        run: Run,
        peer: &str,
    ) -> Result<(), Error>;
    /// Adds a link that writes to a TCP link to another host; `wake` reaches this output's
    /// host, which knows the link as `(output, link)`.
    fn add_tcp_link(
        &mut self,
        spec: LinkSpec,
        tcp: TcpWriterSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: Run,
    ) -> Result<(), Error>;
    /// Adds a link that publishes to a broker (NATS JetStream); `wake` reaches this output's
    /// host, which knows the link as `(output, link)`.
    fn add_broker_link(
        &mut self,
        spec: LinkSpec,
        broker: BrokerWriterSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: Run,
    ) -> Result<(), Error>;
    fn link_count(&self) -> usize;
    /// The first transport failure of any link, taken.
    fn take_error(&mut self) -> Option<String>;
    fn set_counters(&mut self, counters: Arc<StreamCounters>);
    /// One line per link that holds data it cannot send.
    fn stalled(&self) -> Vec<String>;
    /// The readers (agent indices in the graph) of the links that hold data they cannot send.
    fn blocked_readers(&self, into: &mut Vec<usize>);
    /// A link holds data for another process (a ring, a TCP link), or waits for its reader to
    /// acknowledge its end: it waits on another process, not on this one.
    fn waits_on_ring(&self) -> bool;
    /// Of those, a link whose peer no ring shows (TCP, a broker).
    fn waits_off_ring(&self) -> bool;
}

/// An output buffer: the step appends to `pending`; `flush` makes it one shared batch, then
/// sends the step's mark, if it set one, after it.
///
/// The batch is `pending` itself, moved (not copied) into the batch every reader shares; the
/// next step that appends takes a vector from `pool`, where batch vectors come back once
/// their last reader has dropped them. In a steady state no step allocates or copies its output (a batch
/// that fills less than half its vector is copied instead: see `take_batch`).
pub(crate) struct OutBuf<T> {
    pending: Vec<T>,
    pool: Arc<VecPool<T>>,
    /// The marks to send with `pending`, each after the first `n` of its elements.
    pending_marks: Vec<(usize, Mark)>,
    /// The last watermark sent, and whether an idleness mark followed it.
    sent_watermark: Option<u64>,
    sent_idle: bool,
    links: Vec<LinkTx<T>>,
    /// Per link, how many of the step's elements it took from the step's vector (see
    /// [`OutBuf::offer_pending`]); kept to reuse its allocation.
    taken: Vec<usize>,
    /// Elements were made in a ring in this step ([`OutBuf::make_through`]): the step's batch
    /// is counted already.
    made: bool,
    closed: bool,
    counters: Arc<StreamCounters>,
}

impl<T: Element> OutBuf<T> {
    pub fn new() -> Self {
        OutBuf {
            pending: Vec::new(),
            pool: Arc::new(VecPool::new()),
            pending_marks: Vec::new(),
            sent_watermark: None,
            sent_idle: false,
            links: Vec::new(),
            taken: Vec::new(),
            made: false,
            closed: false,
            counters: Arc::default(),
        }
    }
    /// What this step appended so far. The vector comes from the pool at the first call of
    /// a step that appends: between steps an output holds no buffer of its own (an idle
    /// agent holds none), only its pool does (see [`VecPool`]).
    pub fn pending(&mut self) -> &mut Vec<T> {
        if self.pending.capacity() == 0 {
            self.pending = self.pool.take();
        }
        &mut self.pending
    }

    /// The fewest bytes of a batch worth taking over as this output's vector rather than
    /// copying ([`InBuf::take_shown`]): [`MOVE_TO_BYTES_AT_LEAST_BYTES`] when every link
    /// writes bytes (the readers are all in other processes), else [`MOVE_AT_LEAST_BYTES`].
    pub fn moves_at_least(&self) -> usize {
        if !self.links.is_empty() && self.links.iter().all(LinkTx::writes_bytes) {
            MOVE_TO_BYTES_AT_LEAST_BYTES
        } else {
            MOVE_AT_LEAST_BYTES
        }
    }

    /// Whether [`make_through`](Self::make_through) would make elements straight in a ring
    /// now: nothing appended or marked in this step yet, and the output's only link writes
    /// plain data into a ring with nothing waiting before it.
    pub fn makes_through(&self) -> bool {
        !self.closed
            && self.pending.is_empty()
            && self.pending_marks.is_empty()
            && matches!(self.links.as_slice(), [link] if link.makes_in_ring())
    }

    /// Makes `make(0)`, `make(1)`, … (`count` in all) straight in the ring of the output's
    /// only link, as many as it takes now, when [`makes_through`](Self::makes_through): sent,
    /// as a step's flush sends (counted, in order before anything the step appends next).
    /// How many, and `make`'s panic if it panicked (see [`LinkTx::offer_made`]).
    pub fn make_through(
        &mut self,
        count: usize,
        make: impl FnMut(usize) -> T,
    ) -> (usize, Option<Box<dyn std::any::Any + Send>>) {
        if !self.makes_through() {
            return (0, None);
        }
        let (n, panic) = self.links[0].offer_made(count, make);
        if n > 0 {
            add(&self.counters.elements, n as u64);
            // One batch per step that appended anything, however many ways it went.
            if !std::mem::replace(&mut self.made, true) {
                add(&self.counters.batches, 1);
            }
            self.sent_idle = false;
        }
        (n, panic)
    }

    /// Makes `take`'s vector this step's, if `take` gives one for the empty vector it is handed
    /// (this output's, or one from its pool); true if it did. Only while the step appended
    /// nothing.
    pub fn adopt(&mut self, take: impl FnOnce(Vec<T>) -> Result<Vec<T>, Vec<T>>) -> bool {
        debug_assert!(self.pending.is_empty());
        let empty = if self.pending.capacity() == 0 {
            self.pool.take()
        } else {
            std::mem::take(&mut self.pending)
        };
        match take(empty) {
            Ok(items) => {
                self.pending = items;
                true
            }
            Err(empty) => {
                self.pending = empty;
                false
            }
        }
    }

    /// What the step appended, as one batch: the vector itself, moved, and `pending` starts
    /// again with a vector from the pool.
    ///
    /// A batch in flight holds at most twice its elements' memory, or [`SMALL_VEC_BYTES`]:
    /// the elements of a vector that is mostly empty room of more than that (a selective
    /// filter's output in a vector sized for its input, a source's batch in the vector its
    /// hand-over gathered one element at a time into room for a batch) are copied into a
    /// vector that fits them ([`VecPool::take_fitting`]), and the output keeps its room (in
    /// its pool, until a step appends again). The fitting vectors come back to the pool: a
    /// stream of small steps reuses them and, once warm, allocates nothing.
    ///
    /// The vector is never shrunk in place instead: the allocator gives the rest back, and
    /// the vector, back in the pool, grows again in the next steps (a large one, mapped on its
    /// own, is moved by the kernel to fresh pages at each growth). With 1 KiB elements handed
    /// over one at a time, that was a page fault every four elements, and the kernel's time
    /// four times the program's (about 1 M elements/s, against about 10 M with the copy).
    fn take_batch(&mut self) -> Batch<T> {
        let len = self.pending.len();
        let room = self
            .pending
            .capacity()
            .saturating_mul(std::mem::size_of::<T>());
        if self.pending.capacity() / 2 > len && room > SMALL_VEC_BYTES {
            let mut own = self.pool.take_fitting(len);
            own.append(&mut self.pending);
            // The room waits in the pool, not in this output, until a step appends again.
            self.pool.put(std::mem::take(&mut self.pending));
            return Batch::pooled(own, &self.pool);
        }
        Batch::pooled(std::mem::take(&mut self.pending), &self.pool)
    }
}

impl<T: Element> OutBuf<T> {
    /// Hands what the step appended to every link. Links of a transport of bytes (rings,
    /// sockets, a broker) write what they take straight from the step's vector
    /// ([`LinkTx::offer_slice`]); a batch is made only for in-process links and for what a
    /// link could not take now. An output whose readers are all in other processes thus
    /// builds no batch (no allocation, no reference count) per step, and its vector goes
    /// back to the pool.
    fn offer_pending(&mut self) {
        let len = self.pending.len();
        self.taken.clear();
        let mut rest = false;
        for link in &mut self.links {
            let taken = link.offer_slice(&self.pending);
            rest |= taken < len;
            self.taken.push(taken);
        }
        if !rest {
            self.pool.put(std::mem::take(&mut self.pending));
            return;
        }
        let mut data = Some(self.take_batch());
        let last = self.taken.iter().rposition(|&taken| taken < len);
        for (i, (link, &taken)) in self.links.iter_mut().zip(&self.taken).enumerate() {
            if taken < len {
                let mut part = share(&mut data, Some(i) == last);
                part.advance(taken);
                link.offer(part);
            }
        }
    }
}

/// A reference to the batch in `data` for one more reader: the batch itself for the `last`
/// (nothing is left holding it, so a reader that alone holds it may take its vector, see
/// [`InBuf::take_shown`]), a clone otherwise.
fn share<T>(data: &mut Option<Batch<T>>, last: bool) -> Batch<T> {
    if last {
        data.take().expect("the last reader takes the batch once")
    } else {
        data.clone()
            .expect("the batch is there until the last reader")
    }
}

impl<T> OutBuf<T> {
    /// Sends `mark` after the elements appended so far in this step. Watermarks never go
    /// back: one not above the last is ignored (it says nothing new), as is idleness already
    /// said.
    pub fn set_mark(&mut self, mark: Mark) {
        let (mut watermark, mut idle) = (self.sent_watermark, self.sent_idle);
        let mut last_at = 0;
        for &(at, m) in &self.pending_marks {
            match m {
                Mark::Watermark(w) => (watermark, idle) = (Some(w), false),
                Mark::Idle => idle = true,
            }
            last_at = at;
        }
        let at = self.pending.len();
        if at > last_at {
            // An element ends idleness.
            idle = false;
        }
        let news = match mark {
            Mark::Watermark(w) => watermark.is_none_or(|old| w > old),
            Mark::Idle => !idle,
        };
        if !news {
            return;
        }
        match self.pending_marks.last_mut() {
            // Two marks with no element between: the later says all the earlier did, unless
            // it is idleness after a watermark.
            Some((a, m))
                if *a == at && !(mark == Mark::Idle && matches!(m, Mark::Watermark(_))) =>
            {
                *m = mark
            }
            _ => self.pending_marks.push((at, mark)),
        }
    }
}

impl<T: Element> OutSlot for OutBuf<T> {
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }

    fn set_mark(&mut self, mark: Mark) {
        OutBuf::set_mark(self, mark);
    }

    fn flush(&mut self) {
        let made = std::mem::take(&mut self.made);
        if self.closed {
            // Appends after close (from a buggy finish) have nowhere to go; the host
            // never calls finish after closing, so this is unreachable in practice.
            self.pending.clear();
            self.pending_marks.clear();
            return;
        }
        let len = self.pending.len();
        if len > 0 {
            add(&self.counters.elements, len as u64);
            if !made {
                add(&self.counters.batches, 1);
            }
        }
        if self.pending_marks.is_empty() {
            if len > 0 {
                self.offer_pending();
                self.sent_idle = false;
            }
            return;
        }
        // Elements and marks in the order the step made them: parts of one shared batch.
        // (No batch for a step that only set marks.)
        let mut data = (len > 0).then(|| self.take_batch());
        let mut marks = std::mem::take(&mut self.pending_marks);
        let mut from = 0;
        for &(at, mark) in &marks {
            if at > from {
                let data = data.as_mut().expect("elements before a mark");
                let part = data.split_front(at - from);
                for link in &mut self.links {
                    link.offer(part.clone());
                }
                from = at;
                self.sent_idle = false;
            }
            match mark {
                Mark::Watermark(w) => {
                    self.sent_watermark = Some(w);
                    self.sent_idle = false;
                    self.counters.set_watermark(w);
                }
                Mark::Idle => self.sent_idle = true,
            }
            for link in &mut self.links {
                link.offer_mark(mark);
            }
        }
        if len > from {
            let n = self.links.len();
            for (i, link) in self.links.iter_mut().enumerate() {
                link.offer(share(&mut data, i + 1 == n));
            }
            self.sent_idle = false;
        }
        marks.clear();
        self.pending_marks = marks;
    }

    fn blocked(&self) -> bool {
        // Parts of a large element still owed to a ring count as stashed data: the element is
        // not handed on (a restarted writer must get it again from its input, so durable
        // credit waits for it), and they go before anything the agent writes next.
        self.links
            .iter()
            .any(|l| l.policy() == Policy::Block && l.holds_data())
    }

    fn credit(&mut self, link: u32, n: usize) {
        if let Some(l) = self.links.get_mut(link as usize) {
            l.credit(n);
        }
    }

    fn close(&mut self) {
        self.closed = true;
        for link in &mut self.links {
            link.close();
        }
    }

    fn done(&self) -> bool {
        self.closed && self.links.iter().all(|l| l.eos_sent())
    }

    fn add_link(&mut self, spec: LinkSpec) {
        self.links.push(LinkTx::local(&spec));
    }

    fn add_tcp_link(
        &mut self,
        spec: LinkSpec,
        tcp: TcpWriterSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: Run,
    ) -> Result<(), Error> {
        let link = self.links.len() as u32;
        let tx = TcpSender::<T>::open(tcp, wake, output, link, run)?;
        self.links.push(LinkTx::tcp(tx, &spec));
        Ok(())
    }

    fn add_broker_link(
        &mut self,
        spec: LinkSpec,
        broker: BrokerWriterSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: Run,
    ) -> Result<(), Error> {
        let link = self.links.len() as u32;
        let tx = BrokerSender::<T>::open(broker, wake, output, link, run)?;
        self.links.push(LinkTx::broker(tx, &spec));
        Ok(())
    }

    fn add_shm_link(
        &mut self,
        segment: &str,
        spec: LinkSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        run: Run,
        peer: &str,
    ) -> Result<(), Error> {
        let link = self.links.len() as u32;
        let tx = ShmSender::<T>::open(segment, &spec.label, peer, wake, output, link, run)?;
        self.links.push(LinkTx::shm(tx, &spec));
        Ok(())
    }

    fn take_error(&mut self) -> Option<String> {
        self.links.iter_mut().find_map(|l| l.take_error())
    }

    fn link_count(&self) -> usize {
        self.links.len()
    }

    fn set_counters(&mut self, counters: Arc<StreamCounters>) {
        self.counters = counters;
    }

    fn waits_on_ring(&self) -> bool {
        self.links.iter().any(|l| l.waits_on_peer())
    }

    fn waits_off_ring(&self) -> bool {
        self.links.iter().any(|l| l.waits_off_ring())
    }

    fn stalled(&self) -> Vec<String> {
        self.links.iter().filter_map(|l| l.stalled()).collect()
    }

    fn blocked_readers(&self, into: &mut Vec<usize>) {
        into.extend(self.links.iter().filter_map(|l| l.blocked_reader()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(items: &[u64]) -> AnyBatch {
        Batch::new(items.to_vec().into()).into_any()
    }

    /// The progress after a step that consumed everything it was shown.
    fn step(buf: &mut InBuf<u64>) -> Progress {
        buf.prepare(false);
        let n = buf.as_slice().len();
        buf.consume(n);
        buf.take_consumed();
        buf.pass_marks();
        buf.progress()
    }

    #[test]
    fn a_full_output_vector_is_moved_into_its_batch_and_comes_back_for_the_next_step() {
        let mut out = OutBuf::<u64>::new();
        out.pending().extend(0..4096u64);
        let ptr = out.pending().as_ptr();
        let batch = out.take_batch();
        assert_eq!(batch.as_slice().as_ptr(), ptr, "moved, not copied");
        assert_eq!(batch.len(), 4096);
        // Once its reader drops it, the vector waits in the pool: the output's next step
        // appends to it again, with its room.
        drop(batch);
        assert_eq!(
            out.pending().as_ptr(),
            ptr,
            "the next step appends to it again"
        );
        out.pending().extend(0..4096u64);
        let second = out.take_batch();
        assert_eq!(second.as_slice().as_ptr(), ptr);
        // Between steps the output holds no buffer of its own.
        assert_eq!(out.pending.capacity(), 0);
        drop(second);
        assert!(out.pending().is_empty() && out.pending().capacity() >= 4096);
    }

    #[test]
    fn a_whole_unshared_batch_moves_from_input_to_output_and_an_empty_vector_goes_home() {
        let writer = Arc::new(VecPool::<u64>::new());
        let mut input = InBuf::<u64>::new();
        let mut out = OutBuf::<u64>::new();
        // The output's own pool has a vector to give in exchange.
        out.pool.put(Vec::with_capacity(512));
        let n = MOVE_AT_LEAST_BYTES / 8;
        input
            .push(Batch::pooled((0..n as u64).collect(), &writer).into_any())
            .unwrap();
        input.prepare(false);
        let ptr = input.as_slice().as_ptr();
        assert!(out.adopt(|empty| input.take_shown(empty, MOVE_AT_LEAST_BYTES)));
        assert_eq!(out.pending().as_ptr(), ptr, "moved, not copied");
        assert_eq!(out.pending().len(), n);
        assert!(input.as_slice().is_empty());
        assert_eq!(input.take_consumed(), n, "consumed, for credit");
        // The input let go of the emptied batch: the output's vector is now its writer's.
        assert_eq!(writer.len(), 1);
        assert!(writer.take().capacity() >= 512);

        // Shared by another reader: nothing moves, nothing is consumed.
        let shared = Batch::pooled((0..n as u64).collect(), &writer);
        let other = shared.clone();
        input.push(shared.into_any()).unwrap();
        input.prepare(false);
        let mut out = OutBuf::<u64>::new();
        assert!(!out.adopt(|empty| input.take_shown(empty, MOVE_AT_LEAST_BYTES)));
        assert_eq!(input.as_slice().len(), n);
        drop(other);
        // Partly consumed: not the whole vector any more.
        input.consume(2);
        assert!(!out.adopt(|empty| input.take_shown(empty, MOVE_AT_LEAST_BYTES)));
        input.consume(n - 2);
        input.take_consumed();
        // Smaller than MOVE_AT_LEAST_BYTES: left to be copied.
        input.push(batch(&[1, 2, 3])).unwrap();
        input.prepare(false);
        assert!(!out.adopt(|empty| input.take_shown(empty, MOVE_AT_LEAST_BYTES)));
        input.consume(3);
        input.take_consumed();
        // Batches gathered into the input's own vector: that vector moves.
        for _ in 0..16 {
            input.push(batch(&vec![7; n / 16])).unwrap();
        }
        input.prepare(false);
        let gathered = input.as_slice().as_ptr();
        assert!(out.adopt(|empty| input.take_shown(empty, MOVE_AT_LEAST_BYTES)));
        assert_eq!(out.pending().as_ptr(), gathered);
        assert_eq!(out.pending().len(), n);
        assert_eq!(input.take_consumed(), n);
        // Behind a mark only part is shown: nothing moves.
        let mut input = InBuf::<u64>::new();
        input.push(batch(&vec![1; n])).unwrap();
        input.push_mark(Mark::Watermark(9)).unwrap();
        input.push(batch(&[4])).unwrap();
        input.prepare(true);
        assert_eq!(input.as_slice().len(), n);
        let mut out = OutBuf::<u64>::new();
        assert!(!out.adopt(|empty| input.take_shown(empty, MOVE_AT_LEAST_BYTES)));
    }

    #[test]
    fn a_consumed_input_lets_go_of_its_batch_and_keeps_a_gathered_vector_as_its_spare() {
        let pool = Arc::new(VecPool::<u64>::new());
        let mut buf = InBuf::<u64>::new();
        // One batch: the view is the batch itself; once consumed, the input lets go of it
        // after the step, and its vector is back in the writer's pool.
        buf.push(Batch::pooled((0..4096).collect(), &pool).into_any())
            .unwrap();
        step(&mut buf);
        assert_eq!(pool.len(), 1, "the batch went back to its writer");
        // Two batches: gathered into a vector of the input's own; once consumed, the vector
        // is kept as the spare (the bound on spare buffers has room for it), not as a view.
        buf.push(batch(&[1, 2])).unwrap();
        buf.push(batch(&[3])).unwrap();
        buf.prepare(false);
        assert_eq!(buf.as_slice(), [1, 2, 3]);
        buf.consume(3);
        buf.take_consumed();
        assert!(matches!(&buf.view, View::Owned(v, _) if v.capacity() == 0));
        assert!(buf.spare.capacity() >= 3);
        assert_eq!(buf.spare_bytes, buf.spare.capacity() * 8);
        // The next gathering reuses it; a step that leaves elements keeps its view.
        let spare = buf.spare.as_ptr();
        buf.push(batch(&[4, 5])).unwrap();
        buf.push(batch(&[6])).unwrap();
        buf.prepare(false);
        assert!(matches!(&buf.view, View::Owned(v, _) if v.as_ptr() == spare));
        assert_eq!(buf.spare_bytes, 0);
        buf.consume(1);
        buf.take_consumed();
        assert_eq!(buf.view_all(), [5, 6]);
    }

    #[test]
    fn a_large_batch_is_shown_alone_without_a_copy_and_small_ones_behind_it_gathered() {
        let mut buf = InBuf::<u64>::new();
        let large: Vec<u64> = (0..ALONE_ELEMENTS as u64).collect();
        let first = Batch::new(large.clone().into());
        let ptr = first.as_slice().as_ptr();
        buf.push(first.into_any()).unwrap();
        buf.push(batch(&[7, 8])).unwrap();
        buf.push(batch(&[9])).unwrap();
        // The large batch first, by itself: the view is that batch, not a copy of it.
        buf.prepare(false);
        assert_eq!(buf.as_slice(), large);
        assert_eq!(buf.as_slice().as_ptr(), ptr, "shown in place, not gathered");
        assert!(
            buf.has_unseen(),
            "the batches behind it wait for the next step"
        );
        buf.consume(large.len());
        buf.take_consumed();
        // Then the small ones behind it, gathered into one slice.
        buf.prepare(false);
        assert_eq!(buf.as_slice(), [7, 8, 9]);
        assert!(!buf.has_unseen());
        // An agent that left elements sees everything received as one slice, large or not.
        buf.consume(2);
        buf.take_consumed();
        buf.push(Batch::new(large.clone().into()).into_any())
            .unwrap();
        buf.prepare(false);
        assert_eq!(buf.as_slice().len(), 1 + large.len());
        assert_eq!(buf.as_slice()[0], 9);
        buf.consume(buf.as_slice().len());
        buf.take_consumed();
        // Behind small batches a large one is not gathered with them: it comes next, alone.
        buf.push(batch(&[1, 2])).unwrap();
        buf.push(batch(&[3])).unwrap();
        let behind = Batch::new(large.clone().into());
        let ptr = behind.as_slice().as_ptr();
        buf.push(behind.into_any()).unwrap();
        buf.prepare(false);
        assert_eq!(buf.as_slice(), [1, 2, 3]);
        buf.consume(3);
        buf.take_consumed();
        buf.prepare(false);
        assert_eq!(
            buf.as_slice().as_ptr(),
            ptr,
            "the large batch shown in place"
        );
        // By bytes as well as by elements.
        assert!(!travels_alone(ALONE_ELEMENTS - 1, 8));
        assert!(travels_alone(ALONE_ELEMENTS - 1, 1024));
        assert!(travels_alone(64, 1024));
        assert!(!travels_alone(63, 1024));
    }

    #[test]
    fn a_mostly_empty_output_vector_is_copied_and_keeps_its_room() {
        let mut out = OutBuf::<u64>::new();
        out.pending().reserve(4096);
        out.pending().extend(0..10u64);
        let batch = out.take_batch();
        assert_eq!(batch.as_slice(), (0..10).collect::<Vec<_>>());
        // The batch holds 10 elements' worth (rounded up to 16, for reuse), not 4096; the
        // room stays with the output.
        assert_eq!(batch.vec_capacity(), Some(16));
        assert!(out.pending().is_empty() && out.pending().capacity() >= 4096);
    }

    #[test]
    fn small_steps_reuse_their_small_vectors_and_a_small_vector_goes_whole() {
        let mut out = OutBuf::<u64>::new();
        out.pending().reserve(4096);
        out.pending().push(1);
        let first = out.take_batch();
        let (ptr, cap) = (first.as_slice().as_ptr(), first.vec_capacity());
        assert_eq!(cap, Some(1), "copied out of the large room");
        drop(first);
        // The small vector came back last: the next step appends into it, and it goes as it
        // is (moved, not copied), whatever its fill.
        out.pending().push(2);
        let second = out.take_batch();
        assert_eq!(second.as_slice(), [2]);
        assert_eq!(second.as_slice().as_ptr(), ptr, "the same vector, reused");
        drop(second);
        out.pending().extend([3, 4]);
        let grown = out.take_batch();
        let cap = grown.vec_capacity().unwrap();
        drop(grown);
        out.pending().push(5);
        assert_eq!(
            out.take_batch().vec_capacity(),
            Some(cap),
            "a few spare slots go along"
        );
    }

    /// Not shrunk in place: its room, given back to the allocator, would be made again by the
    /// next steps growing the vector (with elements of 1 KiB, a vector of a batch is mapped
    /// on its own, and each growth was a move to fresh pages).
    #[test]
    fn a_large_batch_in_a_much_larger_vector_goes_in_a_fitting_one_and_the_room_stays() {
        let mut out = OutBuf::<u64>::new();
        out.pending().reserve(16384);
        let room = out.pending().as_ptr();
        out.pending().extend(0..4096u64);
        let batch = out.take_batch();
        assert_eq!(batch.as_slice(), (0..4096).collect::<Vec<_>>());
        let held = batch
            .vec_capacity()
            .expect("a large batch is moved, not copied into an Arc<[T]>");
        assert!(held < 2 * 4096, "sent with its room: {held}");
        // The room waits for the next step, whole, while the batch travels.
        assert_eq!(
            out.pending().as_ptr(),
            room,
            "the room stays with the output"
        );
        assert!(out.pending().capacity() >= 16384, "the room was shrunk");
        // Once back, the fitting vector carries the next batch of that size: nothing is
        // allocated for it.
        let fitting = batch.as_slice().as_ptr();
        drop(batch);
        assert_eq!(out.pool.len(), 1, "the fitting vector is kept in the pool");
        out.pending().extend(0..3000u64);
        let next = out.take_batch();
        assert_eq!(
            next.as_slice().as_ptr(),
            fitting,
            "the fitting vector, reused"
        );
        assert_eq!(out.pool.len(), 1, "the room is back in the pool");
        assert_eq!(out.pending().as_ptr(), room);
    }

    #[test]
    fn idleness_right_after_a_watermark_does_not_erase_the_watermark() {
        let mut buf = InBuf::<u64>::new();
        buf.push(batch(&[3, 12])).unwrap();
        buf.push_mark(Mark::Watermark(12)).unwrap();
        // The writer went quiet: idleness follows with no element between.
        buf.push_mark(Mark::Idle).unwrap();
        let p = step(&mut buf);
        assert_eq!(p.watermark, Some(12), "the watermark before the idleness");
        assert!(p.idle);
        // Another watermark (ending the idleness) replaces it; idleness again stays one.
        for _ in 0..3 {
            buf.push_mark(Mark::Watermark(20)).unwrap();
            buf.push_mark(Mark::Idle).unwrap();
        }
        assert!(buf.marks.len() <= 2, "marks at one place stay bounded");
        buf.push_mark(Mark::Watermark(21)).unwrap();
        let p = step(&mut buf);
        assert_eq!((p.watermark, p.idle), (Some(21), false));
    }
}
