//! The link: the writer's end of a connection, whatever carries it.
//!
//! The writer's end is a [`LinkTx<T>`]: one handle over private flavors (in-process envelopes, a
//! shared-memory ring, a TCP connection, a broker), as crossbeam-channel hides its array, list
//! and zero flavors behind one `Sender`. It keeps the link's credit, its stash and its
//! back-pressure [`Policy`], and counts what it moves. It sits above the transports it picks
//! from; what they deliver to (a [`Mailbox`] of [`Envelope`]s) is below them all, in
//! [`mailbox`](super::mailbox).

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::broker::BrokerSender;
use super::mailbox::{Envelope, Mailbox};
use super::tcp::TcpSender;
use super::ShmSender;
use crate::metrics::{add, LinkCounters};
use crate::stream::{heap, Batch, Element, Mark, Policy};

// ---------------------------------------------------------------------------------------------
// The writer's end

/// What the graph tells an output about one of its readers.
pub(crate) struct LinkSpec {
    /// The reader's mailbox (in-process links only).
    pub mailbox: Option<Arc<dyn Mailbox>>,
    pub input: u32,
    pub capacity: usize,
    /// The connection's byte bound: what elements that own heap memory may hold in flight on
    /// an in-process link (see [`HeapBound`]).
    pub capacity_bytes: usize,
    /// Elements the reader needs in flight to make progress: sent whatever the byte bound says.
    pub need: usize,
    pub policy: Policy,
    pub counters: Arc<LinkCounters>,
    pub label: String,
    /// The reading agent's index in the graph (for the stall check: `Host::blocked_readers`).
    pub reader: usize,
}

/// The byte bound of an in-process link whose elements own heap memory (a `String`, a
/// `Vec<u8>`, a type declared with [`Graph::heap_bytes`](crate::Graph::heap_bytes)).
///
/// The element credit counts each element as `size_of::<T>()` bytes, which for such a type
/// says nothing of what it holds: 32 Ki `Vec<u8>`s of 64 KiB are 2 GiB. This bound counts each
/// element's `size_of` and its heap bytes when it is sent, and a batch's bytes until the reader
/// consumed every element of it (the batch's memory is held until then): the writer sends
/// only the elements that fit under the bound, always one at least when nothing is in flight
/// (an element larger than the bound travels alone), and always up to the `need` the reader
/// has to make progress. The other links (a ring, a socket, a broker) carry bytes and bound
/// those.
struct HeapBound<T> {
    count: heap::Counter<T>,
    /// The bound, in bytes.
    max: usize,
    /// Elements always allowed in flight (the reader's need).
    need: usize,
    /// Bytes of the batches sent and not wholly consumed.
    bytes: usize,
    /// Elements sent, and consumed (as the reader last stored it in
    /// [`LinkCounters::consumed`]), since the link began.
    sent: u64,
    consumed: u64,
    /// The batches sent and not wholly consumed: the count of elements sent up to its end,
    /// and its bytes. At most one entry per element in flight.
    batches: VecDeque<(u64, usize)>,
    /// The bytes of the first element [`fits`](Self::fits) found no room for (for a stall's
    /// description).
    next_bytes: usize,
    /// The bytes the last [`sent`](Self::sent) counted.
    last_sent: usize,
    /// Bytes of the elements waiting in a `DropOldest` link's stash, which is held to the
    /// bound as well (the oldest are dropped).
    stashed: usize,
}

impl<T> HeapBound<T> {
    /// How many leading elements of `items` may be sent now, and their bytes.
    fn fits(&mut self, items: &[T]) -> (usize, usize) {
        let in_flight = (self.sent - self.consumed) as usize;
        let (mut n, mut bytes) = (0, 0);
        for x in items {
            let b = self.element_bytes(x);
            let room = self.bytes + bytes + b <= self.max;
            if !(room || in_flight + n < self.need.max(1)) {
                self.next_bytes = b;
                break;
            }
            n += 1;
            bytes += b;
        }
        (n, bytes)
    }

    /// What `x` counts: its `size_of` and its heap bytes.
    fn element_bytes(&self, x: &T) -> usize {
        std::mem::size_of::<T>() + (self.count)(x)
    }

    fn sent(&mut self, n: usize, bytes: usize) {
        self.sent += n as u64;
        self.bytes += bytes;
        self.last_sent = bytes;
        self.batches.push_back((self.sent, bytes));
    }

    /// The reader has consumed `total` elements since the link began.
    fn consumed_upto(&mut self, total: u64) {
        self.consumed = total.clamp(self.consumed, self.sent);
        while let Some(&(end, bytes)) = self.batches.front() {
            if end > self.consumed {
                break;
            }
            self.bytes -= bytes;
            self.batches.pop_front();
        }
    }
}

/// How a link reaches its reader. One variant per transport; agents never see which.
enum Flavor<T> {
    /// Same process: envelopes to the reader's mailbox, within the link's credit.
    Local {
        mailbox: Arc<dyn Mailbox>,
        input: u32,
    },
    /// Another process (or a forced ring): frames in a shared-memory ring, within its room.
    Shm(ShmSender<T>),
    /// Another host: frames on a TCP connection, within the budget of unacknowledged bytes.
    // Built by `LinkTx::tcp` once the runtime wires TCP links (issue 10).
    #[allow(dead_code)]
    Tcp(TcpSender<T>),
    /// Through a broker: messages in a JetStream stream, within the bound of publishes
    /// awaiting the server's acknowledgement.
    Broker(BrokerSender<T>),
}

/// What waits in a link's stash: data, or a mark between data.
enum Piece<T> {
    Data(Batch<T>),
    Mark(Mark),
}

/// The writer's end of one connection: credit, stash, policy.
///
/// In-process, the reader grants `capacity` elements of credit up front and returns credit as its
/// agent consumes, so at most `capacity` elements are ever in flight (sent, not consumed). Across
/// processes the ring keeps the same bound (its writer counts what the reader consumed, see
/// [`ShmSender::set_capacity`]) and its room bounds the bytes; across hosts the TCP link's
/// budget of unacknowledged bytes plays the part of the credit. Data that cannot be sent now waits in
/// the stash (`Block`: the writer's agent does not step again until the stash is sent), is
/// dropped (`DropNewest`), or waits while the oldest stashed elements beyond `capacity` are
/// dropped (`DropOldest`). Drops are counted.
///
/// # Marks
///
/// A [`Mark`] (a watermark, or idleness) takes no credit and is never dropped: it goes after
/// everything offered before it, and waits in the stash behind data that waits. Marks that
/// wait next to each other are merged into what they say together: the last watermark, then
/// idleness if the last of them is idleness (idleness does not erase the watermark before
/// it), so the stash holds at most two marks per stashed batch, plus two.
pub(crate) struct LinkTx<T> {
    flavor: Flavor<T>,
    capacity: usize,
    credit: usize,
    /// In process, for elements that own heap memory: the byte bound.
    heap: Option<HeapBound<T>>,
    policy: Policy,
    stash: VecDeque<Piece<T>>,
    /// Elements in the stash.
    stashed: usize,
    close_pending: bool,
    eos_sent: bool,
    /// When the writer started waiting with data it cannot send ([`LinkCounters::blocked`]).
    blocked_since: Option<u64>,
    counters: Arc<LinkCounters>,
    label: String,
    /// The reading agent's index in the graph.
    reader: usize,
    /// The first transport failure (a corrupt ring, an element too large for a frame).
    error: Option<String>,
}

impl<T> Drop for LinkTx<T> {
    fn drop(&mut self) {
        // A writer gone while it waited (a failed or torn-down run): its wait is over, and a
        // snapshot must not go on counting it.
        if let Some(since) = self.blocked_since.take() {
            self.counters.unblocked(since);
        }
    }
}

/// Sends as much of the front of `batch` as the transport takes now; returns how many elements.
fn transmit<T: Element>(
    flavor: &mut Flavor<T>,
    credit: &mut usize,
    heap: &mut Option<HeapBound<T>>,
    capacity: usize,
    counters: &LinkCounters,
    batch: &mut Batch<T>,
) -> Result<usize, String> {
    match flavor {
        Flavor::Local { mailbox, input } => {
            let mut n = (*credit).min(batch.len());
            if let Some(h) = heap.as_mut() {
                // What the reader consumed frees bytes, whether or not its credit came back
                // yet (it comes back in groups).
                h.consumed_upto(counters.consumed.load(Ordering::Acquire));
                let (mut fit, mut bytes) = h.fits(&batch.as_slice()[..n]);
                if fit < n {
                    // The byte bound stops it: say so, then look once more (see
                    // `LinkCounters::writer_waits_bytes`): either this sees what the reader
                    // consumed since, or the reader sees the flag and sends its credit now.
                    counters.writer_waits_bytes.store(true, Ordering::SeqCst);
                    h.consumed_upto(counters.consumed.load(Ordering::SeqCst));
                    (fit, bytes) = h.fits(&batch.as_slice()[..n]);
                }
                n = fit;
                if n > 0 {
                    h.sent(n, bytes);
                }
            }
            if n == 0 {
                return Ok(0);
            }
            *credit -= n;
            // All of it: the batch itself, so that the reader holds the only reference.
            let part = if n == batch.len() {
                batch.take_all()
            } else {
                batch.split_front(n)
            };
            // Counted before the post: the reader, which may consume them at once, never
            // says it consumed more than was sent (the backlog is computed when read, sent
            // less consumed: see `LinkCounters::local_backlog`).
            counters
                .elements
                .fetch_add(n as u64, std::sync::atomic::Ordering::Release);
            add(&counters.batches, 1);
            mailbox.post(Envelope::Data {
                input: *input,
                batch: part.into_any(),
            });
            counters.max_in_flight.fetch_max(
                counters.local_backlog((capacity - *credit) as u64),
                std::sync::atomic::Ordering::Relaxed,
            );
            Ok(n)
        }
        _ => {
            let n = write_bytes(flavor, counters, batch.as_slice())?;
            batch.advance(n);
            Ok(n)
        }
    }
}

/// Writes the leading elements of `items` that a transport of bytes (a ring, a socket, a
/// broker) takes now; how many. Nothing for an in-process link, which moves batches.
fn write_bytes<T: Element>(
    flavor: &mut Flavor<T>,
    counters: &LinkCounters,
    items: &[T],
) -> Result<usize, String> {
    let n = match flavor {
        Flavor::Local { .. } => return Ok(0),
        Flavor::Shm(tx) => {
            let n = tx.write(items)?;
            // The most ever in flight, as the writer counts it right after its writes
            // (written, not seen consumed); the reader's end keeps the gauge (see `LinkEnds`).
            counters.max_in_flight.fetch_max(
                tx.peak_in_flight() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            n
        }
        Flavor::Tcp(tx) => tx.write(items)?,
        Flavor::Broker(tx) => tx.write(items)?,
    };
    if n > 0 {
        add(&counters.elements, n as u64);
        add(&counters.batches, 1);
    }
    Ok(n)
}

/// Hands `mark` to the transport; `Ok(false)` if it has no room for it now (a full ring).
fn transmit_mark<T: Element>(flavor: &mut Flavor<T>, mark: Mark) -> Result<bool, String> {
    match flavor {
        Flavor::Local { mailbox, input } => {
            mailbox.post(Envelope::Mark {
                input: *input,
                mark,
            });
            Ok(true)
        }
        Flavor::Shm(tx) => tx.write_mark(mark),
        Flavor::Tcp(tx) => tx.write_mark(mark),
        Flavor::Broker(tx) => tx.write_mark(mark),
    }
}

/// Puts `mark` at the back of `stash`, merged with the marks already there with no data
/// between: idleness after idleness says nothing new; a watermark replaces the idleness (it
/// ends it) and the watermark before; idleness after a watermark is kept beside it, since the
/// watermark still says where the stream stands.
fn stash_mark<T>(stash: &mut VecDeque<Piece<T>>, mark: Mark) {
    match mark {
        Mark::Idle => {
            if !matches!(stash.back(), Some(Piece::Mark(Mark::Idle))) {
                stash.push_back(Piece::Mark(mark));
            }
        }
        Mark::Watermark(_) => {
            if matches!(stash.back(), Some(Piece::Mark(Mark::Idle))) {
                stash.pop_back();
            }
            match stash.back_mut() {
                Some(Piece::Mark(m)) => *m = mark,
                _ => stash.push_back(Piece::Mark(mark)),
            }
        }
    }
}

impl<T: Element> LinkTx<T> {
    /// A link to a reader in this process: batches go to `spec.mailbox` as envelopes.
    pub(crate) fn local(spec: &LinkSpec) -> Self {
        let mailbox = Arc::clone(
            spec.mailbox
                .as_ref()
                .expect("an in-process link has the reader's mailbox"),
        );
        Self::new(
            Flavor::Local {
                mailbox,
                input: spec.input,
            },
            spec,
        )
    }

    /// A link that writes into a shared-memory ring, opened by [`ShmSender::open`]: at most
    /// `spec.capacity` elements in flight, as in process (see [`ShmSender::set_capacity`]).
    ///
    /// A writer that took the ring over from a dead process counts what that process held in
    /// its drop policy's stash as dropped (at most `spec.capacity`), and says so: its writer
    /// had been told they were taken (see [`note_stash`](Self::note_stash)).
    pub(crate) fn shm(mut tx: ShmSender<T>, spec: &LinkSpec) -> Self {
        tx.set_capacity(spec.capacity);
        let lost = tx.inherited_stash().min(spec.capacity as u64);
        if lost > 0 {
            add(&spec.counters.dropped, lost);
            tracing::warn!(
                "connection {}: {lost} elements waiting for room in the ring were lost with \
                 the writing process that died (its drop policy had taken them from its \
                 agent); counted in LinkStats::dropped",
                spec.label
            );
        }
        Self::new(Flavor::Shm(tx), spec)
    }

    /// A link to a reader on another host, through [`TcpSender::open`]'s connection.
    // Called by the runtime once it wires TCP links (issue 10).
    #[allow(dead_code)]
    pub(crate) fn tcp(tx: TcpSender<T>, spec: &LinkSpec) -> Self {
        Self::new(Flavor::Tcp(tx), spec)
    }

    /// A link through a broker, through [`BrokerSender::open`]'s publishing task.
    pub(crate) fn broker(tx: BrokerSender<T>, spec: &LinkSpec) -> Self {
        Self::new(Flavor::Broker(tx), spec)
    }

    fn new(flavor: Flavor<T>, spec: &LinkSpec) -> Self {
        let heap = match &flavor {
            Flavor::Local { .. } if spec.capacity_bytes < usize::MAX => {
                heap::counter::<T>().map(|count| HeapBound {
                    count,
                    max: spec.capacity_bytes,
                    need: spec.need,
                    bytes: 0,
                    sent: 0,
                    consumed: 0,
                    batches: VecDeque::new(),
                    next_bytes: 0,
                    last_sent: 0,
                    stashed: 0,
                })
            }
            _ => None,
        };
        LinkTx {
            flavor,
            capacity: spec.capacity,
            credit: spec.capacity,
            heap,
            policy: spec.policy,
            stash: VecDeque::new(),
            stashed: 0,
            close_pending: false,
            eos_sent: false,
            blocked_since: None,
            counters: Arc::clone(&spec.counters),
            label: spec.label.clone(),
            reader: spec.reader,
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
            &mut self.heap,
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

    /// Sends `batch` now as far as the credit (or the ring's room) allows; the rest waits in
    /// the stash, or is dropped, as the link's policy says.
    pub(crate) fn offer(&mut self, mut batch: Batch<T>) {
        match self.policy {
            Policy::Block => {
                self.stashed += batch.len();
                self.stash.push_back(Piece::Data(batch));
                self.pump();
            }
            Policy::DropNewest => {
                // Only marks ever wait here: data may not overtake them.
                self.pump();
                if self.stash.is_empty() {
                    self.send_now(&mut batch);
                }
                add(&self.counters.dropped, batch.len() as u64);
            }
            Policy::DropOldest => {
                self.stashed += batch.len();
                if let Some(h) = self.heap.as_mut() {
                    h.stashed += batch
                        .as_slice()
                        .iter()
                        .map(|x| h.element_bytes(x))
                        .sum::<usize>();
                }
                self.stash.push_back(Piece::Data(batch));
                self.pump();
                self.drop_oldest_excess();
            }
        }
        self.note_blocked();
    }

    /// Whether this link writes the elements it is offered as bytes ([`offer_slice`]: a ring,
    /// a socket, a broker) rather than passing batches on (an in-process link).
    ///
    /// [`offer_slice`]: Self::offer_slice
    pub(crate) fn writes_bytes(&self) -> bool {
        !matches!(self.flavor, Flavor::Local { .. })
    }

    /// Offers the elements of `items` without a batch: a transport of bytes (a ring, a socket,
    /// a broker) with nothing waiting before them writes what it takes now straight from the
    /// slice. Returns how many leading elements the link is done with; the caller
    /// [`offer`](Self::offer)s the rest as a batch (all of them for an in-process link, which
    /// moves batches, or while anything waits in the stash). Under `DropNewest` the link is
    /// done with all of them: what the transport did not take is dropped (and counted), as
    /// `offer` would.
    pub(crate) fn offer_slice(&mut self, items: &[T]) -> usize {
        if matches!(self.flavor, Flavor::Local { .. })
            || !self.stash.is_empty()
            || self.error.is_some()
        {
            return 0;
        }
        // Parts of a large element still owed go first (`write` sends them before anything).
        let n = match write_bytes(&mut self.flavor, &self.counters, items) {
            Ok(n) => n,
            Err(e) => {
                self.error = Some(format!("connection {}: {e}", self.label));
                return 0;
            }
        };
        if n < items.len() && self.policy == Policy::DropNewest {
            add(&self.counters.dropped, (items.len() - n) as u64);
            return items.len();
        }
        n
    }

    /// Whether [`offer_made`](Self::offer_made) can make elements in a ring now: a ring link
    /// of plain data with nothing waiting in its stash or owed of a large element, and no
    /// failure.
    pub(crate) fn makes_in_ring(&self) -> bool {
        match &self.flavor {
            Flavor::Shm(tx) => self.stash.is_empty() && self.error.is_none() && tx.makes(),
            _ => false,
        }
    }

    /// Makes elements straight in a ring: `make(0)`, `make(1)`, … (`count` in all), as many as
    /// the ring takes now ([`ShmSender::write_made`]); how many, and `make`'s panic if it
    /// panicked. Nothing for any other transport, while anything waits in the stash, or after
    /// a failure: the caller makes the rest into a vector and offers it as usual.
    pub(crate) fn offer_made(
        &mut self,
        count: usize,
        make: impl FnMut(usize) -> T,
    ) -> (usize, Option<Box<dyn std::any::Any + Send>>) {
        let Flavor::Shm(tx) = &mut self.flavor else {
            return (0, None);
        };
        if !self.stash.is_empty() || self.error.is_some() {
            return (0, None);
        }
        let (n, panic) = tx.write_made(count, make);
        if n > 0 {
            self.counters.max_in_flight.fetch_max(
                tx.peak_in_flight() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            add(&self.counters.elements, n as u64);
            add(&self.counters.batches, 1);
        }
        (n, panic)
    }

    /// Drops the oldest stashed elements beyond `capacity` (`DropOldest`), and, for elements
    /// that own heap memory, beyond the byte bound (the newest element stays); marks stay.
    fn drop_oldest_excess(&mut self) {
        let over_bytes = |h: &Option<HeapBound<T>>, stashed: usize| {
            h.as_ref().is_some_and(|h| h.stashed > h.max && stashed > 1)
        };
        if self.stashed <= self.capacity && !over_bytes(&self.heap, self.stashed) {
            return;
        }
        for piece in self.stash.iter_mut() {
            let Piece::Data(b) = piece else { continue };
            let excess = self.stashed.saturating_sub(self.capacity).min(b.len());
            if excess > 0 {
                if let Some(h) = self.heap.as_mut() {
                    let gone: usize = b.as_slice()[..excess]
                        .iter()
                        .map(|x| h.element_bytes(x))
                        .sum();
                    h.stashed = h.stashed.saturating_sub(gone);
                }
                b.advance(excess);
                self.stashed -= excess;
                add(&self.counters.dropped, excess as u64);
            }
            // Then one at a time while the stash is over the byte bound.
            while !b.is_empty() && over_bytes(&self.heap, self.stashed) {
                if let Some(h) = self.heap.as_mut() {
                    let gone = h.element_bytes(&b.as_slice()[0]);
                    h.stashed = h.stashed.saturating_sub(gone);
                }
                b.advance(1);
                self.stashed -= 1;
                add(&self.counters.dropped, 1);
            }
            if self.stashed <= self.capacity && !over_bytes(&self.heap, self.stashed) {
                break;
            }
        }
        self.stash
            .retain(|p| !matches!(p, Piece::Data(b) if b.is_empty()));
        self.merge_marks();
    }

    /// Merges marks that wait next to each other (see [`stash_mark`]).
    fn merge_marks(&mut self) {
        let mut merged: VecDeque<Piece<T>> = VecDeque::with_capacity(self.stash.len());
        for p in self.stash.drain(..) {
            match p {
                Piece::Mark(m) => stash_mark(&mut merged, m),
                data => merged.push_back(data),
            }
        }
        self.stash = merged;
    }

    /// Sends `mark` after everything offered before it: now if nothing waits, else behind
    /// what waits.
    pub(crate) fn offer_mark(&mut self, mark: Mark) {
        stash_mark(&mut self.stash, mark);
        self.pump();
        self.note_blocked();
    }

    fn pump(&mut self) {
        // A ring may still owe parts of a large element it accepted: they go first.
        if let (Flavor::Shm(tx), None) = (&mut self.flavor, &self.error) {
            if let Err(e) = tx.flush() {
                self.error = Some(format!("connection {}: {e}", self.label));
            }
        }
        while let Some(front) = self.stash.pop_front() {
            match front {
                Piece::Data(mut batch) => {
                    let n = self.send_now(&mut batch);
                    self.stashed -= n;
                    if let (Some(h), true) = (self.heap.as_mut(), n > 0) {
                        h.stashed = h.stashed.saturating_sub(h.last_sent);
                    }
                    if !batch.is_empty() {
                        self.stash.push_front(Piece::Data(batch));
                    }
                    if n == 0 {
                        break;
                    }
                }
                Piece::Mark(mark) => {
                    if self.error.is_some() {
                        break;
                    }
                    match transmit_mark(&mut self.flavor, mark) {
                        Ok(true) => {}
                        Ok(false) => {
                            self.stash.push_front(Piece::Mark(mark));
                            break;
                        }
                        Err(e) => {
                            self.error = Some(format!("connection {}: {e}", self.label));
                            self.stash.push_front(Piece::Mark(mark));
                            break;
                        }
                    }
                }
            }
        }
        if self.stash.is_empty() && self.close_pending && !self.eos_sent && self.transport_idle() {
            self.eos_sent = true;
            match &mut self.flavor {
                Flavor::Local { mailbox, input } => mailbox.post(Envelope::Eos { input: *input }),
                Flavor::Shm(tx) => tx.close(),
                Flavor::Tcp(tx) => tx.close(),
                Flavor::Broker(tx) => tx.close(),
            }
        }
        self.note_blocked();
    }

    /// Nothing accepted waits in the transport (a ring's large element written entirely), or
    /// the link failed: the stream may be closed. A TCP link queues its End behind what it
    /// took, in order, so it may always be closed.
    fn transport_idle(&self) -> bool {
        match &self.flavor {
            Flavor::Local { .. } | Flavor::Tcp(_) | Flavor::Broker(_) => true,
            Flavor::Shm(tx) => tx.idle() || self.error.is_some(),
        }
    }

    /// Times the writer's waits: while a link that blocks holds data it cannot send. A link
    /// that drops instead never holds its writer back, whatever it holds (a drop-oldest link
    /// keeps the newest elements for when room comes): not blocked.
    fn note_blocked(&mut self) {
        self.note_stash();
        let waits = !self.stash.is_empty() && self.policy == Policy::Block;
        match (waits, self.blocked_since) {
            (true, None) => self.blocked_since = Some(self.counters.blocked()),
            (false, Some(since)) => {
                self.counters.unblocked(since);
                self.blocked_since = None;
            }
            _ => {}
        }
    }

    /// Records in a ring how many elements a drop policy's stash holds: its writer was told
    /// they were taken (the policy never holds it back), so if this process dies they are
    /// lost, and the writer that takes the ring over counts them as dropped ([`shm`]). A
    /// `Block` stash needs no record: its writer's input is not done with them, and gives
    /// them again.
    ///
    /// [`shm`]: Self::shm
    fn note_stash(&mut self) {
        if let (Flavor::Shm(tx), Policy::DropOldest | Policy::DropNewest) =
            (&mut self.flavor, self.policy)
        {
            tx.note_stashed(self.stashed);
        }
    }

    /// The reader consumed `n` elements (a ring: there may be room again); sends what waits.
    pub(crate) fn credit(&mut self, n: usize) {
        if let Flavor::Local { .. } = self.flavor {
            // The backlog is computed when read (`LinkCounters::local_backlog`).
            self.credit = (self.credit + n).min(self.capacity);
        }
        // For a ring, a credit envelope means "there may be room again".
        self.pump();
    }

    /// Closes the stream: the end of stream follows what waits, once it is sent.
    pub(crate) fn close(&mut self) {
        self.close_pending = true;
        self.pump();
    }

    /// The end of stream is sent. Across hosts: sent and acknowledged, i.e. the reader consumed
    /// every element, so that a process does not exit with data only it holds (the link posts a
    /// credit envelope when the acknowledgement comes).
    pub(crate) fn eos_sent(&self) -> bool {
        match &self.flavor {
            Flavor::Tcp(tx) => self.eos_sent && tx.finished(),
            Flavor::Broker(tx) => self.eos_sent && tx.finished(),
            _ => self.eos_sent,
        }
    }

    /// The link's back-pressure policy.
    pub(crate) fn policy(&self) -> Policy {
        self.policy
    }

    /// Data accepted and not yet handed to the transport: a stash, or parts of a large element
    /// still owed to a ring.
    pub(crate) fn holds_data(&self) -> bool {
        !(self.stash.is_empty() && self.transport_idle())
    }

    /// It holds data for a transport that waits on another process (a ring, a TCP link), not
    /// on this one; or, across hosts, its end of stream waits for the reader's acknowledgement.
    pub(crate) fn waits_on_peer(&self) -> bool {
        match &self.flavor {
            Flavor::Local { .. } => false,
            Flavor::Shm(_) => self.holds_data(),
            Flavor::Tcp(tx) => self.holds_data() || (self.eos_sent && !tx.finished()),
            Flavor::Broker(tx) => self.holds_data() || (self.eos_sent && !tx.finished()),
        }
    }

    /// It waits on a peer that no ring shows (a TCP link, a broker: possibly on another host):
    /// the part of [`waits_on_peer`](Self::waits_on_peer) that a stall check across the
    /// processes of one host cannot see move.
    pub(crate) fn waits_off_ring(&self) -> bool {
        match &self.flavor {
            Flavor::Local { .. } | Flavor::Shm(_) => false,
            Flavor::Tcp(_) | Flavor::Broker(_) => self.waits_on_peer(),
        }
    }

    /// The first transport failure, taken.
    pub(crate) fn take_error(&mut self) -> Option<String> {
        self.error.take()
    }

    /// Its reader's index in the graph, if it holds data it cannot send (a `Block` link).
    pub(crate) fn blocked_reader(&self) -> Option<usize> {
        (!self.stash.is_empty() && self.policy == Policy::Block).then_some(self.reader)
    }

    /// One line about the data it cannot send, if it holds any.
    pub(crate) fn stalled(&self) -> Option<String> {
        (!self.stash.is_empty()).then(|| {
            let in_flight = match (&self.flavor, &self.heap) {
                (Flavor::Shm(tx), _) => tx.in_flight(),
                (Flavor::Broker(tx), _) => tx.pending(),
                // What the reader consumed and its credit, which comes back in groups, has
                // not said yet.
                (Flavor::Local { .. }, Some(h)) => (h.sent - h.consumed) as usize,
                _ => self.capacity - self.credit,
            };
            // A reader that holds all it may and consumes none of it either waits on a
            // connection of its own (which the stall names too) or needs more at once than this
            // one lets through: say so, and what to do then. (Only the reader knows which.)
            let full = match &self.heap {
                _ if in_flight >= self.capacity => ": its reader holds all the connection lets \
                     through and consumes none of it; unless that reader is itself held up by \
                     another connection named here, it needs more than that at once (a window \
                     longer than the capacity): give this connection a larger capacity \
                     (Connection::capacity, or `capacity` in the deployment's [[connections]])"
                    .to_string(),
                Some(h) if in_flight > 0 && h.bytes + h.next_bytes > h.max => format!(
                    ": those hold {} bytes with what they own on the heap, and the next {} more, \
                     past the connection's byte bound of {}; unless that reader is itself held \
                     up by another connection named here, it needs more than that at once (a zip \
                     or a join waiting for its other input): give this connection a larger byte \
                     bound (Connection::capacity_bytes, Graph::set_default_capacity_bytes, or \
                     `capacity_bytes` in the deployment's [[connections]])",
                    h.bytes, h.next_bytes, h.max
                ),
                _ => String::new(),
            };
            format!(
                "{}: {} elements wait at the writer, {in_flight} in flight unconsumed by the reader (capacity {}){full}",
                self.label, self.stashed, self.capacity
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    /// What the reader of an in-process link received, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Ev {
        El(u64),
        M(Mark),
        Eos,
    }

    #[derive(Default)]
    struct Log(Mutex<Vec<Ev>>);

    impl Mailbox for Log {
        fn post(&self, env: Envelope) {
            let mut log = self.0.lock().unwrap();
            match env {
                Envelope::Data { batch, .. } => log.extend(
                    batch
                        .downcast::<u64>()
                        .unwrap()
                        .as_slice()
                        .iter()
                        .map(|&v| Ev::El(v)),
                ),
                Envelope::Mark { mark, .. } => log.push(Ev::M(mark)),
                Envelope::Eos { .. } => log.push(Ev::Eos),
                _ => {}
            }
        }
    }

    /// An in-process link of `capacity` with `policy` to a logging reader.
    fn link(capacity: usize, policy: Policy) -> (LinkTx<u64>, Arc<Log>, Arc<LinkCounters>) {
        let log = Arc::new(Log::default());
        let counters = Arc::new(LinkCounters::default());
        let spec = LinkSpec {
            mailbox: Some(Arc::clone(&log) as Arc<dyn Mailbox>),
            input: 0,
            capacity,
            capacity_bytes: usize::MAX,
            need: 0,
            policy,
            counters: Arc::clone(&counters),
            label: "a.out -> b.in".into(),
            reader: 1,
        };
        (LinkTx::local(&spec), log, counters)
    }

    fn batch(items: &[u64]) -> Batch<u64> {
        Batch::new(items.to_vec().into())
    }

    #[test]
    fn marks_wait_behind_a_block_stash_and_adjacent_ones_merge() {
        use Ev::*;
        let (mut tx, log, _) = link(2, Policy::Block);
        tx.offer(batch(&[1, 2]));
        tx.offer_mark(Mark::Watermark(2));
        assert_eq!(
            *log.0.lock().unwrap(),
            [El(1), El(2), M(Mark::Watermark(2))],
            "nothing waits: the mark goes at once, without credit"
        );
        tx.offer(batch(&[3]));
        tx.offer_mark(Mark::Watermark(3));
        tx.offer_mark(Mark::Idle);
        tx.offer(batch(&[4]));
        assert!(tx.holds_data());
        assert_eq!(log.0.lock().unwrap().len(), 3, "all of it waits behind 3");
        tx.credit(1);
        assert_eq!(
            log.0.lock().unwrap()[3..],
            [El(3), M(Mark::Watermark(3)), M(Mark::Idle)],
            "3, then its watermark and the idleness after it, then 4 waits for credit"
        );
        tx.close();
        tx.credit(1);
        assert_eq!(log.0.lock().unwrap()[6..], [El(4), Eos]);
    }

    #[test]
    fn waiting_marks_merge_into_what_they_say_together() {
        use Ev::*;
        let (mut tx, log, _) = link(1, Policy::Block);
        tx.offer(batch(&[1]));
        tx.offer(batch(&[2]));
        // Everything from here waits behind 2: idleness must not erase the watermark 2 before
        // it, and repeated marks with no element between stay two at most.
        for _ in 0..100 {
            tx.offer_mark(Mark::Watermark(2));
            tx.offer_mark(Mark::Idle);
        }
        assert!(tx.stash.len() <= 3, "stash: {} pieces", tx.stash.len());
        tx.credit(1);
        assert_eq!(
            *log.0.lock().unwrap(),
            [El(1), El(2), M(Mark::Watermark(2)), M(Mark::Idle)]
        );
    }

    #[test]
    fn drop_oldest_drops_data_but_never_marks() {
        use Ev::*;
        let (mut tx, log, counters) = link(2, Policy::DropOldest);
        tx.offer(batch(&[1, 2]));
        tx.offer(batch(&[3, 4]));
        tx.offer_mark(Mark::Watermark(4));
        tx.offer(batch(&[5]));
        tx.offer_mark(Mark::Watermark(5));
        tx.offer(batch(&[6, 7]));
        // 5 stashed, capacity 2: 3, 4 and 5 dropped; the marks stay, merged once no element
        // is left between them.
        assert_eq!(counters.dropped.load(Ordering::SeqCst), 3);
        tx.credit(2);
        assert_eq!(
            *log.0.lock().unwrap(),
            [El(1), El(2), M(Mark::Watermark(5)), El(6), El(7)]
        );
    }

    #[test]
    fn drop_newest_sends_marks_at_once_in_process() {
        use Ev::*;
        let (mut tx, log, counters) = link(1, Policy::DropNewest);
        tx.offer(batch(&[1, 2]));
        tx.offer_mark(Mark::Watermark(2));
        tx.offer(batch(&[3]));
        assert_eq!(counters.dropped.load(Ordering::SeqCst), 2);
        tx.credit(1);
        tx.offer(batch(&[4]));
        assert_eq!(
            *log.0.lock().unwrap(),
            [El(1), M(Mark::Watermark(2)), El(4)]
        );
    }
}
