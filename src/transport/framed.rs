//! What the two flavors that move the wire's frames between processes share: TCP links
//! ([`super::tcp`]) and broker links ([`super::broker`]). How the frames travel (a socket of
//! their own, or messages through NATS JetStream) and how they are acknowledged stay with each
//! flavor; this module knows nothing of either, nor of hosts or graphs.
//!
//! - The writer's end: [`FrameEncoder`] encodes a batch's leading elements into numbered Data
//!   frames (the rings' codec, at most a target payload a frame, an element larger than that
//!   in a frame of its own), and [`Outbox`] queues Data, Mark and End frames until the flavor
//!   says they are acknowledged, counting what they cost the flavor's budget (their payload,
//!   and a flavor's cost per frame). A flavor holds a frame's bytes in a [`FrameBytes`]: an
//!   acknowledged frame that nothing else holds is kept (up to [`SPARE_BYTES`] of them) and
//!   written over by a later frame, so a steady stream allocates nothing per frame.
//! - The reader's end: [`FeederMailbox`] is the input's credit, which comes back as the reading
//!   agent consumes (so credit is consumption, which the flavor turns into acknowledgements);
//!   [`take_within_credit`] takes what that credit covers from the frames received, in order,
//!   and [`post_items`] hands it to the reading host; [`start_feeder`] starts the thread that
//!   does so, registered with the run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard};
use std::thread::Thread;

use super::codec::{Codec, Plan, PAYLOAD_HEADER_BYTES};
use super::mailbox::{link_thread, Envelope, FeederState, Linger, LingerGuard, Mailbox, Run};
use super::tcp::wire::{self, Frame};
use crate::error::Error;
use crate::metrics::{add, LinkCounters};
use crate::stream::{Batch, Element, Mark};

/// The bytes of a Data frame besides its payload: length prefix, kind, seq and element count.
pub(crate) const DATA_OVERHEAD_BYTES: usize = wire::HEADER_BYTES + 1 + 8 + 4;

// ---------------------------------------------------------------------------------------------
// The writer's end

/// How many acknowledged frames an [`Outbox`] keeps for reuse at most. A reader acknowledges
/// every millisecond or so (see the TCP feeder's `ACK_DELAY`): the frames of one such pause,
/// one element each at tens of µs apart, are reused in the next.
const SPARE_FRAMES: usize = 1024;

/// The bytes of the buffers an [`Outbox`] keeps for reuse at most: 1 MiB a link (and as much
/// again lent to the encoder).
const SPARE_BYTES: usize = 1 << 20;

/// The largest buffer an [`Outbox`] keeps for reuse: a frame of a TCP link's target payload
/// (256 KiB) and its header fit, so that a stream of big batches writes some of its frames
/// over kept buffers (three fit in [`SPARE_BYTES`]; before, every such frame was allocated
/// and its pages faulted in anew). Larger frames (large elements) are freed once
/// acknowledged.
const SPARE_FRAME_BYTES: usize = 512 << 10;

/// A reused buffer keeps at most twice its frame's bytes and this much more: a spare of a
/// large frame written over by a small one is shrunk, so that a frame's memory stays near
/// its size (which the budget counts) whatever frame its buffer held before.
const SPARE_SLACK_BYTES: usize = 128;

/// A Data frame that later writes joined ([`FrameEncoder::join`]) carries at most this much
/// payload: well within a reused buffer's bound ([`SPARE_FRAME_BYTES`]), so that it too is
/// written over once acknowledged.
pub(crate) const JOINED_PAYLOAD_BYTES: usize = 16 << 10;

/// Only a write of at most this much payload joins a frame ([`FrameEncoder::join`]): a few
/// elements, for which a frame of their own (its header, its buffer, its share of a write
/// and of an acknowledgement) costs more than they do. Larger writes are frames of their own.
pub(crate) const JOIN_WRITE_BYTES: usize = 1 << 10;

/// How a flavor holds a queued frame's bytes (see the [module docs](self)).
pub(crate) trait FrameBytes: Sized {
    /// A frame that `fill` writes into an empty buffer: `spare`'s (a frame [`reclaim`]ed)
    /// when given, shrunk if much larger than what `fill` wrote (see [`SPARE_SLACK_BYTES`]),
    /// else a new one.
    ///
    /// [`reclaim`]: FrameBytes::reclaim
    fn write(spare: Option<Self>, fill: impl FnOnce(&mut Vec<u8>)) -> Self;

    /// This frame, to be written over later, when nothing else holds its bytes and its buffer
    /// is at most [`SPARE_FRAME_BYTES`]; `None` frees it.
    fn reclaim(self) -> Option<Self>;

    /// The bytes its buffer holds, used or not.
    fn capacity(&self) -> usize;
}

/// TCP's frames, shared with the link's I/O thread while it writes them.
impl FrameBytes for Arc<Vec<u8>> {
    fn write(spare: Option<Self>, fill: impl FnOnce(&mut Vec<u8>)) -> Self {
        let mut frame = spare.unwrap_or_default();
        let bytes = Arc::get_mut(&mut frame).expect("a spare frame is held by nothing else");
        bytes.clear();
        fill(bytes);
        if bytes.capacity() > 2 * bytes.len() + SPARE_SLACK_BYTES {
            bytes.shrink_to_fit();
        }
        frame
    }

    fn reclaim(mut self) -> Option<Self> {
        match Arc::get_mut(&mut self) {
            Some(bytes) if bytes.capacity() <= SPARE_FRAME_BYTES => Some(self),
            _ => None,
        }
    }

    fn capacity(&self) -> usize {
        Vec::capacity(self)
    }
}

/// The broker's messages, handed to its client (which may hold them on): never reused.
impl FrameBytes for bytes::Bytes {
    fn write(spare: Option<Self>, fill: impl FnOnce(&mut Vec<u8>)) -> Self {
        debug_assert!(spare.is_none(), "Bytes are never reclaimed");
        let mut bytes = Vec::new();
        fill(&mut bytes);
        bytes.into()
    }

    fn reclaim(self) -> Option<Self> {
        None
    }

    fn capacity(&self) -> usize {
        self.len()
    }
}

/// A Data frame encoded and numbered, not yet queued.
pub(crate) struct DataFrame<F> {
    /// Its seq: the one [`Outbox::push_data`] must give it next.
    seq: u64,
    /// The whole frame, length prefix included.
    bytes: F,
    /// The elements it holds.
    elements: usize,
    /// Its payload bytes.
    payload: usize,
}

/// Encodes a link's elements into Data frames (see the [module docs](self)).
pub(crate) struct FrameEncoder<T> {
    codec: Codec<T>,
    /// The payload a frame holds at most when elements are small.
    target: usize,
    /// The payload of a frame of one large element at most.
    max: usize,
    /// What a frame is called in an error: "frame", "message".
    unit: &'static str,
}

impl<T: Element> FrameEncoder<T> {
    /// Frames of at most `target` payload bytes; one element up to `max` bytes in a frame of
    /// its own; `unit` names a frame in errors.
    pub(crate) fn new(target: usize, max: usize, unit: &'static str) -> Self {
        FrameEncoder {
            codec: Codec::new(),
            target: target.min(max),
            max,
            unit,
        }
    }

    /// Encodes leading elements of `items` into Data frames numbered from `first_seq` (the
    /// outbox's next seq: only the writer queues frames), into `frames` (empty), while
    /// `room(frames, payload)`, given the frames made so far and their payload bytes, allows
    /// another; frames reuse the buffers of `spare` (see [`Outbox::lend_spare`]) while it
    /// has some. Returns how many elements the frames hold. An element whose encoding exceeds
    /// `max` is an error naming the size, and leaves `frames` empty.
    pub(crate) fn encode<F: FrameBytes>(
        &mut self,
        items: &[T],
        first_seq: u64,
        spare: &mut Vec<F>,
        frames: &mut Vec<DataFrame<F>>,
        mut room: impl FnMut(usize, usize) -> bool,
    ) -> Result<usize, String> {
        debug_assert!(frames.is_empty(), "frames not queued");
        let (mut done, mut payload) = (0, 0);
        while done < items.len() && room(frames.len(), payload) {
            let rest = &items[done..];
            let (n, len) = match self.plan(rest) {
                Ok(planned) => planned,
                Err(e) => {
                    frames.clear();
                    return Err(e);
                }
            };
            let seq = first_seq + frames.len() as u64;
            let codec = &mut self.codec;
            let bytes = F::write(spare.pop(), |bytes| {
                bytes.reserve(DATA_OVERHEAD_BYTES + len);
                wire::data_header(seq, n as u32, len, bytes);
                codec.append(rest, n, bytes);
                debug_assert_eq!(bytes.len(), DATA_OVERHEAD_BYTES + len);
            });
            frames.push(DataFrame {
                seq,
                bytes,
                elements: n,
                payload: len,
            });
            payload += len;
            done += n;
        }
        Ok(done)
    }

    /// Appends all of `items` to `frame`, a whole Data frame this encoder made and nobody has
    /// sent yet, when they are few ([`JOIN_WRITE_BYTES`]), fit in it within
    /// [`JOINED_PAYLOAD_BYTES`] of payload, and `room(added)` allows the payload they add. Returns that payload, or `None` with `frame`
    /// untouched (the caller encodes them into frames of their own).
    ///
    /// The frame keeps its seq: the elements go where they would have gone in a frame of
    /// their own right behind it, and they are acknowledged with it.
    pub(crate) fn join(
        &mut self,
        items: &[T],
        frame: &mut Vec<u8>,
        room: impl FnOnce(usize) -> bool,
    ) -> Result<Option<usize>, String> {
        let payload = frame.len().saturating_sub(DATA_OVERHEAD_BYTES);
        let Some(free) = JOINED_PAYLOAD_BYTES.min(self.target).checked_sub(payload) else {
            return Ok(None);
        };
        let free = free.min(JOIN_WRITE_BYTES);
        if items.is_empty() {
            return Ok(None);
        }
        // With their own payload header: the planned length is what a frame of them would
        // carry, and joining saves that header.
        let len = match self.codec.plan(items, free + PAYLOAD_HEADER_BYTES)? {
            Plan::Frame { n, len } if n == items.len() => len,
            _ => return Ok(None),
        };
        let added = len - PAYLOAD_HEADER_BYTES;
        if !room(added)
            || !self
                .codec
                .append_joined(items, items.len(), frame, DATA_OVERHEAD_BYTES)
        {
            return Ok(None);
        }
        wire::data_frame_grown(frame, items.len() as u32);
        Ok(Some(added))
    }

    /// The next frame for the leading elements of `rest`: how many, and the payload's bytes.
    fn plan(&mut self, rest: &[T]) -> Result<(usize, usize), String> {
        match self.codec.plan(rest, self.target)? {
            Plan::Frame { n, len } if n > 0 => Ok((n, len)),
            // An element larger than a usual frame goes in a frame of its own, up to `max`,
            // which any element within `MAX_ELEMENT_BYTES` fits.
            _ => match self.codec.plan(&rest[..1], self.max)? {
                Plan::Frame { n: 1, len } => Ok((1, len)),
                _ => Err(format!(
                    "an element does not fit a {} of {} bytes",
                    self.unit, self.max
                )),
            },
        }
    }
}

/// A frame queued and not yet acknowledged.
pub(crate) struct Queued<F> {
    pub seq: u64,
    /// The whole frame, length prefix included.
    pub frame: F,
    /// Its elements (0 for a Mark or the End).
    pub elements: usize,
    /// Its payload bytes: a Data frame's payload, a Mark frame's whole size, 0 for the End.
    pub payload: usize,
    /// What it costs the budget: its payload and the outbox's cost per frame (so that marks
    /// without data between them, and frames of one small element each, are bounded too); 0
    /// for the End.
    pub cost: usize,
    pub end: bool,
}

/// A writer's frames, numbered in order and kept until acknowledged (see the
/// [module docs](self)); `F` is how the flavor holds a frame's bytes.
pub(crate) struct Outbox<F> {
    /// Every frame queued and not acknowledged, in seq order.
    pub queue: VecDeque<Queued<F>>,
    /// The seq of the next frame queued.
    pub next_seq: u64,
    /// The cost of `queue` (see [`Queued::cost`]): what the flavor's budget bounds.
    pub unacked: usize,
    /// What a frame costs besides its payload.
    frame_cost: usize,
    /// The writer stopped short for room: the flavor posts a credit envelope when room comes.
    pub full: bool,
    /// The End is queued.
    pub closed: bool,
    /// The End is acknowledged.
    pub finished: bool,
    /// Acknowledged frames kept to be written over (at most [`SPARE_FRAMES`] and
    /// [`SPARE_BYTES`]).
    spare: Vec<F>,
    /// The capacity of `spare`'s buffers.
    spare_bytes: usize,
}

impl<F: FrameBytes> Outbox<F> {
    /// An empty outbox whose Data and Mark frames each cost `frame_cost` bytes besides their
    /// payload.
    pub(crate) fn new(frame_cost: usize) -> Self {
        Outbox {
            queue: VecDeque::new(),
            next_seq: 0,
            unacked: 0,
            frame_cost,
            full: false,
            closed: false,
            finished: false,
            spare: Vec::new(),
            spare_bytes: 0,
        }
    }

    /// Hands the frames kept for reuse to the writer's encoder, when `to` has none left: the
    /// two lists trade places, so neither allocates once both have grown.
    pub(crate) fn lend_spare(&mut self, to: &mut Vec<F>) {
        if to.is_empty() {
            std::mem::swap(&mut self.spare, to);
            self.spare_bytes = 0;
        }
    }

    /// Queues `frames`, leaving the list empty for the next call. Each must carry the next
    /// seq: [`FrameEncoder::encode`] was given [`Outbox::next_seq`].
    pub(crate) fn push_data(&mut self, frames: &mut Vec<DataFrame<F>>) {
        for f in frames.drain(..) {
            assert_eq!(f.seq, self.next_seq, "Data frames are queued in seq order");
            self.push(f.bytes, f.elements, f.payload, false);
        }
    }

    /// A mark may follow: the End is not queued.
    pub(crate) fn check_open(&self) -> Result<(), String> {
        if self.closed {
            return Err("a mark after the end of stream".into());
        }
        Ok(())
    }

    /// Queues a Mark frame of `mark`; its whole size, [`wire::MARK_FRAME_BYTES`], counts as
    /// its payload.
    pub(crate) fn push_mark(&mut self, mark: Mark) {
        let seq = self.next_seq;
        let bytes = F::write(self.take_spare(), |bytes| {
            wire::encode_frame(&Frame::Mark { seq, mark }, bytes);
            debug_assert_eq!(bytes.len(), wire::MARK_FRAME_BYTES);
        });
        self.push(bytes, 0, wire::MARK_FRAME_BYTES, false);
    }

    /// Queues the End frame; false if it was queued already.
    pub(crate) fn push_end(&mut self) -> bool {
        if self.closed {
            return false;
        }
        self.closed = true;
        let seq = self.next_seq;
        let bytes = F::write(self.take_spare(), |bytes| {
            wire::encode_frame(&Frame::End { seq }, bytes)
        });
        self.push(bytes, 0, 0, true);
        true
    }

    /// Keeps `frame`, freed from the queue, for reuse if nothing else holds it and the spares
    /// have room; else drops it.
    pub(crate) fn keep_spare(&mut self, frame: F) {
        if self.spare.len() < SPARE_FRAMES && self.spare_bytes + frame.capacity() <= SPARE_BYTES {
            if let Some(frame) = frame.reclaim() {
                self.spare_bytes += frame.capacity();
                self.spare.push(frame);
            }
        }
    }

    /// A frame kept for reuse, for a Mark or the End.
    fn take_spare(&mut self) -> Option<F> {
        let frame = self.spare.pop()?;
        self.spare_bytes -= frame.capacity();
        Some(frame)
    }

    fn push(&mut self, frame: F, elements: usize, payload: usize, end: bool) {
        let seq = self.next_seq;
        self.next_seq += 1;
        let cost = if end { 0 } else { payload + self.frame_cost };
        self.queue.push_back(Queued {
            seq,
            frame,
            elements,
            payload,
            cost,
            end,
        });
        self.unacked += cost;
    }

    /// Frees every frame numbered below `next` (acknowledged, or given up), keeping a few for
    /// reuse. Freeing the End sets `finished`.
    pub(crate) fn release_below(&mut self, next: u64) -> Released {
        let mut r = Released {
            elements: 0,
            end: false,
        };
        while self.queue.front().is_some_and(|q| q.seq < next) {
            let q = self.queue.pop_front().expect("a front");
            self.unacked -= q.cost;
            r.elements += q.elements;
            r.end |= q.end;
            self.keep_spare(q.frame);
        }
        self.finished |= r.end;
        r
    }
}

/// What [`Outbox::release_below`] freed.
pub(crate) struct Released {
    /// The elements of the Data frames freed.
    pub elements: usize,
    /// The End was among them.
    pub end: bool,
}

// ---------------------------------------------------------------------------------------------
// The reader's end

/// Received, not yet delivered.
pub(crate) enum Item<T> {
    Data(Batch<T>),
    /// A mark: delivered as soon as everything before it was (it takes no credit).
    Mark(Mark),
    End,
}

/// The feeder's credit, and the consumption it has not yet turned into acknowledgements.
struct Credit {
    credit: usize,
    consumed: usize,
}

/// Where the reader's input returns credit; credit is consumption, which the feeder turns into
/// acknowledgements. Its lock is held only to count.
pub(crate) struct FeederMailbox {
    credit: Mutex<Credit>,
    /// The input's capacity: the feeder's credit when nothing is delivered and not credited.
    capacity: usize,
    /// The link's counters: the reader's end counts what is in flight (handed to the reading
    /// agent, not consumed), which the writer's end cannot see.
    counters: Arc<LinkCounters>,
    /// Every post wakes the feeder thread; otherwise only a post to a feeder out of credit
    /// does.
    pub eager: AtomicBool,
    /// The feeder thread.
    pub thread: Thread,
    run: Run,
    /// The feeder's entry in the run (a source for quiescence).
    pub state: Arc<FeederState>,
}

impl FeederMailbox {
    /// The credit of an input of `capacity` elements, fed by `thread`.
    pub(crate) fn new(
        capacity: usize,
        counters: Arc<LinkCounters>,
        eager: bool,
        thread: Thread,
        run: Run,
        state: Arc<FeederState>,
    ) -> Self {
        FeederMailbox {
            credit: Mutex::new(Credit {
                credit: capacity,
                consumed: 0,
            }),
            capacity,
            counters,
            eager: AtomicBool::new(eager),
            thread,
            run,
            state,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Credit> {
        self.credit.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn note_in_flight(&self, c: &Credit) {
        self.counters
            .set_in_flight(self.capacity.saturating_sub(c.credit) as u64);
    }

    /// Takes up to `want` elements of credit; with none, marks the feeder blocked, returns 0.
    pub(crate) fn take(&self, want: usize) -> usize {
        let mut c = self.lock();
        if c.credit == 0 {
            self.run.set_blocked(&self.state, true);
            return 0;
        }
        self.run.set_blocked(&self.state, false);
        let n = c.credit.min(want);
        c.credit -= n;
        self.note_in_flight(&c);
        n
    }

    /// Takes up to `want` elements of credit without marking the feeder blocked when there is
    /// none (it has taken some in this pass already, not yet posted).
    pub(crate) fn take_if_any(&self, want: usize) -> usize {
        let mut c = self.lock();
        let n = c.credit.min(want);
        c.credit -= n;
        self.note_in_flight(&c);
        n
    }

    /// The elements consumed since the last call.
    pub(crate) fn take_consumed(&self) -> usize {
        std::mem::take(&mut self.lock().consumed)
    }

    /// Whether consumption was posted and not taken yet.
    pub(crate) fn consumed_waits(&self) -> bool {
        self.lock().consumed > 0
    }
}

impl Mailbox for FeederMailbox {
    fn post(&self, env: Envelope) {
        if let Envelope::Credit { n, .. } = env {
            let mut c = self.lock();
            let starved = c.credit == 0;
            c.credit += n;
            c.consumed += n;
            self.note_in_flight(&c);
            self.run.set_blocked(&self.state, false);
            drop(c);
            // Read after the lock: a feeder that turned eager before it last looked at
            // `consumed` is seen eager here, or it saw this consumption.
            if starved || self.eager.load(Ordering::SeqCst) {
                self.thread.unpark();
            }
        }
    }
}

/// Starts a reader's feeder thread, named `name`: registers the feeder with the run (a
/// source for quiescence until it delivers the end of stream) and `linger`, which is released
/// when the thread ends, or at once if it does not start; the thread runs `body` with what
/// the caller sends it on the returned channel once the rest of the link is made (nothing, if
/// the channel is dropped). Returns the input's credit, fed by that thread. A thread that
/// cannot start is an error saying `what` it was, and the run no longer waits for it.
pub(crate) fn start_feeder<S: Send + 'static>(
    run: &Run,
    label: &str,
    linger: &Arc<Linger>,
    capacity: usize,
    counters: &Arc<LinkCounters>,
    (name, what): (String, &str),
    body: impl FnOnce(S) + Send + 'static,
) -> Result<(Arc<FeederMailbox>, mpsc::Sender<S>), Error> {
    let feeder_state = run.feeder(label.to_string());
    // Registered before anything can end the run.
    run.linger(Arc::clone(linger));
    let release = LingerGuard(Arc::clone(linger));
    let (tx, rx) = mpsc::channel::<S>();
    let (thread_run, thread_label, thread) = (Arc::clone(run), label.to_string(), what.to_string());
    let started = std::thread::Builder::new().name(name).spawn(move || {
        let _release = release;
        if let Ok(start) = rx.recv() {
            link_thread(&thread_run, &thread_label, &thread, || body(start));
        }
    });
    let handle = match started {
        Ok(h) => h,
        Err(e) => {
            run.finished(&feeder_state);
            return Err(Error::Runtime {
                detail: format!("cannot start a {what} thread: {e}"),
            });
        }
    };
    let mailbox = Arc::new(FeederMailbox::new(
        capacity,
        Arc::clone(counters),
        true,
        handle.thread().clone(),
        Arc::clone(run),
        feeder_state,
    ));
    Ok((mailbox, tx))
}

/// What stopped [`take_within_credit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// Nothing more is pending.
    Nothing,
    /// The End comes next (left in place: the flavor delivers it).
    End,
    /// A batch waits for credit.
    NoCredit,
}

/// What [`take_within_credit`] took.
pub(crate) struct Taken {
    /// Elements of the batches (or their parts) taken.
    pub elements: usize,
    /// Marks taken.
    pub marks: usize,
    pub next: Next,
}

/// Moves from `pending` into `out` the batches (or their parts) that `credit` covers, and the
/// marks between them, up to the End (left in place). The caller posts `out` before anything
/// else is delivered to the input.
///
/// Only a call that takes nothing may mark the feeder blocked: marking it checks for a stall,
/// which must not see the reader idle while batches taken here are not posted yet.
pub(crate) fn take_within_credit<T: Element>(
    pending: &mut VecDeque<Item<T>>,
    credit: &FeederMailbox,
    out: &mut Vec<Item<T>>,
) -> Taken {
    let start = out.len();
    let mut taken = Taken {
        elements: 0,
        marks: 0,
        next: Next::Nothing,
    };
    // Ends: each pass takes a batch (or its part) or a mark, or returns.
    loop {
        match pending.front_mut() {
            Some(Item::Data(batch)) => {
                let n = if out.len() == start {
                    credit.take(batch.len())
                } else {
                    credit.take_if_any(batch.len())
                };
                if n == 0 {
                    taken.next = Next::NoCredit;
                    return taken;
                }
                out.push(Item::Data(batch.split_front(n)));
                if batch.is_empty() {
                    pending.pop_front();
                }
                taken.elements += n;
            }
            // A mark takes no credit; it goes after the data before it.
            Some(Item::Mark(mark)) => {
                out.push(Item::Mark(*mark));
                pending.pop_front();
                taken.marks += 1;
            }
            Some(Item::End) => {
                taken.next = Next::End;
                return taken;
            }
            None => return taken,
        }
    }
}

/// Posts `items` (batches and marks: the End is delivered apart) to input `input` behind
/// `target`, in order, counting elements and batches in `counters` when `count`; leaves
/// `items` empty, with its capacity, for the next delivery.
pub(crate) fn post_items<T: Element>(
    items: &mut Vec<Item<T>>,
    target: &dyn Mailbox,
    input: u32,
    counters: &LinkCounters,
    count: bool,
) {
    for item in items.drain(..) {
        match item {
            Item::Data(part) => {
                if count {
                    add(&counters.elements, part.len() as u64);
                    add(&counters.batches, 1);
                }
                target.post(Envelope::Data {
                    input,
                    batch: part.into_any(),
                });
            }
            Item::Mark(mark) => target.post(Envelope::Mark { input, mark }),
            Item::End => unreachable!("the End is delivered apart"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::Mark;
    use crate::transport::tcp::wire::FrameDecoder;

    type Frames = Outbox<Arc<Vec<u8>>>;

    /// Encodes `items` whole into `out`'s next frames, as a writer does.
    fn write(
        enc: &mut FrameEncoder<u64>,
        out: &mut Frames,
        spare: &mut Vec<Arc<Vec<u8>>>,
        items: &[u64],
    ) {
        out.lend_spare(spare);
        let mut frames = Vec::new();
        let n = enc
            .encode(items, out.next_seq, spare, &mut frames, |_, _| true)
            .unwrap();
        assert_eq!(n, items.len());
        out.push_data(&mut frames);
        assert!(frames.is_empty());
    }

    /// The frame queued with `seq`.
    fn frame(out: &Frames, seq: u64) -> Arc<Vec<u8>> {
        Arc::clone(&out.queue.iter().find(|q| q.seq == seq).unwrap().frame)
    }

    fn decode(bytes: &[u8]) -> Frame {
        let mut dec = FrameDecoder::new(wire::DEFAULT_MAX_FRAME_BYTES);
        dec.push(bytes);
        let f = dec.next().unwrap().expect("a whole frame");
        assert!(dec.next().unwrap().is_none(), "one frame");
        f
    }

    /// A Data frame that a later write joined decodes as one frame of all their elements,
    /// with its seq; a joined frame stays within its bounds.
    #[test]
    fn a_joined_frame_decodes_as_all_its_elements_plain_or_postcard() {
        fn joined<T: Element + PartialEq + std::fmt::Debug>(first: &[T], later: &[&[T]]) {
            let mut enc = FrameEncoder::<T>::new(1 << 20, 1 << 20, "frame");
            let (mut frames, mut spare) = (Vec::new(), Vec::<Arc<Vec<u8>>>::new());
            enc.encode(first, 7, &mut spare, &mut frames, |_, _| true)
                .unwrap();
            let mut frame = frames.pop().unwrap();
            let bytes = Arc::get_mut(&mut frame.bytes).unwrap();
            let mut payload = frame.payload;
            for items in later {
                let added = enc.join(items, bytes, |_| true).unwrap().unwrap();
                payload += added;
            }
            let all: Vec<T> = first
                .iter()
                .chain(later.iter().flat_map(|l| l.iter()))
                .cloned()
                .collect();
            match decode(bytes) {
                Frame::Data {
                    seq: 7,
                    elements,
                    payload: p,
                } => {
                    assert_eq!(elements as usize, all.len());
                    assert_eq!(p.len(), payload, "the payload the joins counted");
                    assert_eq!(Codec::<T>::new().decode(&p).unwrap(), all);
                }
                other => panic!("{other:?}"),
            }
        }
        joined::<u64>(&[1], &[&[2], &[3, 4]]);
        joined::<String>(&["a".into()], &[&["bb".into()], &["ccc".into(), "".into()]]);

        let mut enc = FrameEncoder::<u64>::new(1 << 20, 1 << 20, "frame");
        let (mut frames, mut spare) = (Vec::new(), Vec::<Arc<Vec<u8>>>::new());
        enc.encode(&[0], 0, &mut spare, &mut frames, |_, _| true)
            .unwrap();
        let mut frame = frames.pop().unwrap();
        let bytes = Arc::get_mut(&mut frame.bytes).unwrap();
        let before = bytes.clone();
        // Refused, the frame untouched: no room in the budget, a write too large to join.
        assert_eq!(enc.join(&[1], bytes, |_| false).unwrap(), None);
        let large = vec![0u64; JOIN_WRITE_BYTES / 8 + 1];
        assert_eq!(enc.join(&large, bytes, |_| true).unwrap(), None);
        assert_eq!(*bytes, before);
        // Joins stop at the joined frame's bound.
        let mut n = 1;
        while enc.join(&[n as u64], bytes, |_| true).unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, (JOINED_PAYLOAD_BYTES - PAYLOAD_HEADER_BYTES) / 8);
    }

    #[test]
    fn frames_are_numbered_in_order_across_data_marks_and_the_end() {
        let mut enc = FrameEncoder::<u64>::new(1 << 10, 1 << 20, "frame");
        let (mut out, mut spare) = (Frames::new(100), Vec::new());
        write(&mut enc, &mut out, &mut spare, &[1, 2]);
        out.push_mark(Mark::Watermark(7));
        // 200 elements of 8 bytes: two frames of at most 1 KiB.
        let many: Vec<u64> = (0..200).collect();
        write(&mut enc, &mut out, &mut spare, &many);
        assert!(out.push_end());
        let seqs: Vec<u64> = out
            .queue
            .iter()
            .map(|q| match decode(&q.frame) {
                Frame::Data { seq, .. } | Frame::Mark { seq, .. } | Frame::End { seq } => seq,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(seqs, [0, 1, 2, 3, 4]);
        assert_eq!(out.queue.iter().map(|q| q.seq).collect::<Vec<_>>(), seqs);
        assert_eq!(out.queue.iter().map(|q| q.elements).sum::<usize>(), 202);
        // Each Data and Mark frame costs its payload and 100; the End nothing.
        let payload: usize = out.queue.iter().map(|q| q.payload).sum();
        assert_eq!(out.unacked, payload + 4 * 100);
        let released = out.release_below(5);
        assert!(released.end && out.finished);
        assert_eq!(out.unacked, 0);
    }

    #[test]
    fn an_acknowledged_frame_nothing_holds_is_written_over_by_a_later_one() {
        let mut enc = FrameEncoder::<u64>::new(1 << 10, 1 << 20, "frame");
        let (mut out, mut spare) = (Frames::new(0), Vec::new());
        write(&mut enc, &mut out, &mut spare, &[1]);
        write(&mut enc, &mut out, &mut spare, &[2]);
        let first_at = Arc::as_ptr(&frame(&out, 0));
        // The I/O thread still holds the second frame (it is being written).
        let writing = frame(&out, 1);
        assert_eq!(out.release_below(2).elements, 2);
        drop(writing);
        // Only the first came back; the next frame is written into it.
        write(&mut enc, &mut out, &mut spare, &[3]);
        let third = frame(&out, 2);
        assert_eq!(Arc::as_ptr(&third), first_at);
        match decode(&third) {
            Frame::Data {
                seq: 2,
                elements: 1,
                payload,
            } => assert!(payload.ends_with(&3u64.to_le_bytes())),
            other => panic!("{other:?}"),
        }
        // The second was freed, not kept: the one after is new.
        write(&mut enc, &mut out, &mut spare, &[4]);
        assert!(spare.is_empty() && out.spare.is_empty());
    }

    #[test]
    fn a_small_frame_written_over_a_large_spare_shrinks_it() {
        let mut enc = FrameEncoder::<u64>::new(1 << 20, 1 << 20, "frame");
        let (mut out, mut spare) = (Frames::new(0), Vec::new());
        let many: Vec<u64> = (0..4096).collect();
        write(&mut enc, &mut out, &mut spare, &many);
        let large = frame(&out, 0).capacity();
        assert!(large >= 8 * 4096, "{large}");
        out.release_below(1);
        assert_eq!(out.spare_bytes, large);
        write(&mut enc, &mut out, &mut spare, &[7]);
        let small = frame(&out, 1);
        assert!(
            small.capacity() <= 2 * small.len() + SPARE_SLACK_BYTES,
            "a frame of {} bytes in a buffer of {}",
            small.len(),
            small.capacity()
        );
        drop(small);
        // The same size again reuses the buffer as it is.
        out.release_below(2);
        let at = Arc::as_ptr(out.spare.last().expect("a spare frame"));
        write(&mut enc, &mut out, &mut spare, &[8]);
        assert_eq!(Arc::as_ptr(&frame(&out, 2)), at);
        // A Mark takes a spare too, and the count of spare bytes follows.
        out.release_below(3);
        assert!(out.spare_bytes > 0);
        out.push_mark(Mark::Idle);
        assert_eq!(out.spare_bytes, 0);
    }

    #[test]
    fn frames_of_big_batches_are_written_over_once_acknowledged() {
        // A TCP link's frames: 256 KiB of payload each, four of them a batch.
        let mut enc = FrameEncoder::<u64>::new(256 << 10, 1 << 20, "frame");
        let (mut out, mut spare) = (Frames::new(0), Vec::new());
        let batch: Vec<u64> = (0..(256 << 10) / 8 * 4).collect();
        let buffers = |out: &Frames, seqs: std::ops::Range<u64>| -> Vec<*const u8> {
            seqs.map(|seq| frame(out, seq))
                .filter(|f| f.len() > 200 << 10)
                .map(|f| f.as_ptr())
                .collect()
        };
        write(&mut enc, &mut out, &mut spare, &batch);
        let first = buffers(&out, 0..out.next_seq);
        assert!(first.len() >= 3, "{} big frames", first.len());
        out.release_below(out.next_seq);
        assert!(out.spare_bytes <= SPARE_BYTES);
        let kept = out.spare.iter().filter(|f| f.len() > 200 << 10).count();
        assert!(kept >= 3, "{kept} big frames kept of {}", first.len());
        let from = out.next_seq;
        write(&mut enc, &mut out, &mut spare, &batch);
        let again = buffers(&out, from..out.next_seq);
        let reused = again.iter().filter(|b| first.contains(b)).count();
        // Before: frames over 64 KiB were freed once acknowledged, and each new one allocated.
        assert!(
            reused >= 3,
            "{reused} of the {} big frames written over a kept buffer",
            again.len()
        );
    }

    #[test]
    fn large_frames_are_freed_and_spares_stay_bounded() {
        let mut enc = FrameEncoder::<u64>::new(1 << 20, 1 << 20, "frame");
        let (mut out, mut spare) = (Frames::new(0), Vec::new());
        // A frame larger than the largest buffer kept.
        let big: Vec<u64> = (0..(SPARE_FRAME_BYTES as u64 / 8 + 1)).collect();
        write(&mut enc, &mut out, &mut spare, &big);
        out.release_below(out.next_seq);
        assert!(out.spare.is_empty());
        // More small frames acknowledged at once than are kept.
        for v in 0..SPARE_FRAMES as u64 + 10 {
            write(&mut enc, &mut out, &mut spare, &[v]);
        }
        out.release_below(out.next_seq);
        assert_eq!(out.spare.len(), SPARE_FRAMES);
        assert!(out.spare_bytes <= SPARE_BYTES);
        assert_eq!(out.unacked, 0);
    }
}
