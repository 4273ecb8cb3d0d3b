//! The reader's end of a broker link: [`spawn_broker_feeder`] (see the [module docs](super)).
//!
//! - A **pulling task** on the broker runtime creates the durable consumer afresh, pulls
//!   messages while the reading process holds less than the input's capacity, validates and
//!   decodes each into private memory, and queues it.
//! - A **feeder thread** delivers what is queued to the reading host within the input's
//!   credit, in order, and turns credit coming back (consumption) into acknowledgements of the
//!   messages all of whose elements came back (see "Where the reader acknowledges"). It counts
//!   as a source for quiescence until it delivered the end of stream.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;

use super::{
    connect, ensure_stream, parse_msg_id, runtime, BrokerNames, BrokerSettings, ELEMENT_TYPE,
    MSG_ID, PREV, PULL_BATCH, PULL_BYTES, SLICE,
};
use crate::error::Error;
use crate::metrics::{add, LinkCounters};
use crate::stream::{Batch, Element, MAX_ELEMENT_BYTES};
use crate::transport::codec::Codec;
use crate::transport::framed::{
    post_items, start_feeder, take_within_credit, FeederMailbox, Item, Next,
};
use crate::transport::mailbox::{Envelope, Linger, Mailbox, Run};
use crate::transport::tcp::wire::{Frame, FrameDecoder, FrameRef};

/// How long the broker waits for the reader's acknowledgement before it sends a message again.
/// A message this reader holds is then recognised and not taken twice; one lost on the way
/// (the server restarted, the connection broke) comes again after at most this long.
const ACK_WAIT: Duration = Duration::from_secs(5);

/// How long the reader's last acknowledgements may take to go out (the last flush is bounded
/// by 2 s of it): the longest a normal end of the run waits for them before the process exits.
const LAST_ACKS_WAIT: Duration = Duration::from_secs(3);

/// What a reader's end needs.
pub(crate) struct BrokerFeederSpec {
    /// The connection's NATS names.
    pub names: BrokerNames,
    /// The broker's settings.
    pub settings: Arc<BrokerSettings>,
    /// The reading host's mailbox.
    pub target: Arc<dyn Mailbox>,
    /// The reading input's index on that host.
    pub input: u32,
    /// The input's capacity: the most elements delivered and not consumed.
    pub capacity: usize,
    /// The connection's byte bound: the reader stops pulling while the messages it holds
    /// unacknowledged (pulled, delivered or being consumed) have this many bytes of payload...
    pub capacity_bytes: usize,
    /// ... and at least this many elements not consumed (what the reading agent needs to make
    /// progress).
    pub need: usize,
    /// The link's counters.
    pub counters: Arc<LinkCounters>,
    /// Count elements, batches and bytes here (false when the writer, in this process too,
    /// counts them).
    pub count_traffic: bool,
    /// The connection, for messages and the run's feeder list.
    pub label: String,
    /// The run of this process.
    pub run: Run,
}

/// A message received and not yet acknowledged, in order.
struct Held {
    /// Its sequence number in the JetStream stream.
    stream_seq: u64,
    /// Its elements not yet consumed (0 for a mark or the End).
    left: usize,
    /// Its payload's bytes (0 for a mark or the End).
    bytes: usize,
    /// A mark or the End: delivered (it is acknowledged once delivered and everything before
    /// it consumed).
    delivered: bool,
    /// A mark or the End.
    empty: bool,
    /// Where its acknowledgement goes.
    reply: Option<async_nats::Subject>,
}

struct State<T> {
    pending: VecDeque<Item<T>>,
    /// Elements in `pending`.
    pending_elements: usize,
    held: VecDeque<Held>,
    /// The payload bytes of the messages in `held`, and their elements not consumed.
    held_bytes: usize,
    held_left: usize,
    /// The `(writer epoch, seq)` of the last message taken: a repeat is dropped.
    last: Option<(u64, u64)>,
    /// The stream sequence of the last message taken: a redelivery is dropped.
    last_stream_seq: u64,
    /// The consumer (delivery) sequence of the last message delivered, 0 for a fresh
    /// consumer: deliveries are numbered one by one, redeliveries included, so a jump means
    /// one was lost on the way.
    last_delivery: u64,
    eos_posted: bool,
    /// The End's acknowledgement was sent: the link is done.
    done: bool,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    names: BrokerNames,
    settings: Arc<BrokerSettings>,
    label: String,
    capacity: usize,
    capacity_bytes: usize,
    need: usize,
    counters: Arc<LinkCounters>,
    count_traffic: bool,
    run: Run,
    target: Arc<dyn Mailbox>,
    input: u32,
    mailbox: Arc<FeederMailbox>,
    /// Wakes the pulling task: room again, or the link is done.
    room: tokio::sync::Notify,
    /// The connection, once made (the last acknowledgements go through it).
    client: OnceLock<async_nats::Client>,
    /// Where acknowledgements wait for the one task that publishes them, in order
    /// ([`publish_in_order`]), once connected. Unbounded in type only: a reader holds at most
    /// the consumer's `max_ack_pending` messages unacknowledged, and acknowledges each once,
    /// plus once more for each redelivery of one already consumed (at most one per message
    /// per `ACK_WAIT`).
    acks: OnceLock<tokio::sync::mpsc::UnboundedSender<async_nats::Subject>>,
    /// Acknowledgements handed over and not yet queued on the connection: the last flush
    /// waits for them (else it may go first, and they are lost at exit).
    acks_pending: Arc<AtomicUsize>,
    /// The feeder thread ended.
    ended: AtomicBool,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn over(&self) -> bool {
        self.run.is_over() || self.ended.load(Ordering::SeqCst)
    }

    /// The reader holds enough to stop pulling: the input's capacity of elements waiting for
    /// credit, or the byte bound's worth of payload unacknowledged (with what the reading
    /// agent needs to make progress). Heap-owning elements (a `Vec<u8>`, a `String`) count
    /// their bytes here, not the `size_of` the element credit counts: 32 Ki elements of
    /// 64 KiB are 2 GiB.
    fn full(&self, st: &State<T>) -> bool {
        st.pending_elements >= self.capacity
            || (st.held_bytes >= self.capacity_bytes && st.held_left >= self.need.max(1))
    }

    /// Fails the run with `detail` about this link.
    fn fail(&self, detail: String) {
        if !self.run.is_over() {
            self.run.fail(Error::Runtime {
                detail: format!("connection {}: {detail}", self.label),
            });
        }
    }

    /// Sends the acknowledgement of a message, after every one sent before it (fire and
    /// forget: [`publish_in_order`] publishes them on the broker runtime).
    fn ack(&self, reply: async_nats::Subject) {
        let Some(acks) = self.acks.get() else {
            return;
        };
        self.acks_pending.fetch_add(1, Ordering::SeqCst);
        if acks.send(reply).is_err() {
            self.acks_pending.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Starts the reader's end of a broker link feeding input `spec.input` of the host behind
/// `spec.target`; returns where that input sends its credit.
pub(crate) fn spawn_broker_feeder<T: Element>(
    spec: BrokerFeederSpec,
) -> Result<Arc<dyn Mailbox>, Error> {
    let rt = runtime().map_err(|detail| Error::Runtime { detail })?;
    // Released when the feeder thread ends, once its last acknowledgements are flushed.
    // Without it a process whose run ended could exit before they went out: the broker would
    // keep the messages, and the next run's reader would get them again. Every post of credit
    // wakes the feeder thread: its acknowledgements go out promptly.
    let linger = Linger::new(spec.label.clone(), LAST_ACKS_WAIT);
    let (mailbox, tx) = start_feeder(
        &spec.run,
        &spec.label,
        &linger,
        spec.capacity,
        &spec.counters,
        (format!("broker feeder {}", spec.input), "broker feeder"),
        |shared: Arc<Shared<T>>| {
            feed(&shared);
            shared.ended.store(true, Ordering::SeqCst);
            shared.room.notify_one();
        },
    )?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            pending: VecDeque::new(),
            pending_elements: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            held_left: 0,
            last: None,
            last_stream_seq: 0,
            last_delivery: 0,
            eos_posted: false,
            done: false,
        }),
        names: spec.names,
        settings: spec.settings,
        label: spec.label,
        capacity: spec.capacity,
        capacity_bytes: spec.capacity_bytes,
        need: spec.need,
        counters: spec.counters,
        count_traffic: spec.count_traffic,
        run: spec.run,
        target: spec.target,
        input: spec.input,
        mailbox: Arc::clone(&mailbox),
        room: tokio::sync::Notify::new(),
        client: OnceLock::new(),
        acks: OnceLock::new(),
        acks_pending: Arc::new(AtomicUsize::new(0)),
        ended: AtomicBool::new(false),
    });
    super::spawn_link_task(
        rt,
        Arc::clone(&shared.run),
        shared.label.clone(),
        "broker reader",
        pull(Arc::clone(&shared), Codec::<T>::new()),
    );
    let _ = tx.send(shared);
    Ok(mailbox)
}

/// The feeder thread: delivers within credit, acknowledges what was consumed.
fn feed<T: Element>(shared: &Shared<T>) {
    let mb = &shared.mailbox;
    // Ends: once the End is delivered and acknowledged, the run is over, or a drain ended
    // the input (each pass parks at most a slice).
    loop {
        if shared.run.is_over() {
            break;
        }
        let consumed = mb.take_consumed();
        let mut out = Vec::new();
        let mut acks = Vec::new();
        let mut end_now = false;
        {
            let mut st = shared.lock();
            settle(&mut st, consumed, &mut acks);
            // Deliver within credit, in order.
            let taken = take_within_credit(&mut st.pending, mb, &mut out);
            st.pending_elements -= taken.elements;
            for _ in 0..taken.marks {
                mark_delivered(&mut st);
            }
            if taken.next == Next::End {
                st.pending.pop_front();
                mark_delivered(&mut st);
                st.eos_posted = true;
                end_now = true;
            }
            // A drain ends the input after what was delivered: the rest stays in the broker.
            if !st.eos_posted && st.pending.is_empty() && shared.run.draining() {
                st.eos_posted = true;
                st.done = true;
                end_now = true;
            }
            settle(&mut st, 0, &mut acks);
        }
        for reply in acks {
            shared.ack(reply);
        }
        post_items(
            &mut gather(out),
            &*shared.target,
            shared.input,
            &shared.counters,
            shared.count_traffic,
        );
        if end_now {
            shared.target.post(Envelope::Eos {
                input: shared.input,
            });
            shared.run.finished(&mb.state);
        }
        let (room, done) = {
            let st = shared.lock();
            (!shared.full(&st), st.done)
        };
        if done {
            break;
        }
        if room {
            shared.room.notify_one();
        }
        std::thread::park_timeout(SLICE);
    }
    // What was consumed last is acknowledged before the thread ends, and the connection
    // flushed (bounded) once every acknowledgement sent before is queued on it, so that none
    // is lost at exit (a message whose acknowledgement is lost stays in the stream, and the
    // next run's reader would get it first).
    let mut acks = Vec::new();
    let eos_posted = {
        let mut st = shared.lock();
        settle(&mut st, mb.take_consumed(), &mut acks);
        st.eos_posted
    };
    if let (Some(client), Ok(rt)) = (shared.client.get(), runtime()) {
        let client = client.clone();
        let pending = Arc::clone(&shared.acks_pending);
        rt.block_on(async move {
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                // Ends: each pass waits a millisecond; the timeout bounds the whole.
                while pending.load(Ordering::SeqCst) > 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                for reply in acks {
                    let _ = client
                        .publish(reply, bytes::Bytes::from_static(b"+ACK"))
                        .await;
                }
                let _ = client.flush().await;
            })
            .await;
        });
    }
    if !eos_posted {
        // The run is over without the end of stream: the run no longer waits for it.
        shared.run.finished(&mb.state);
    }
}

/// Consecutive batches taken in one pass become one (one delivery, one step, one credit
/// return for what piled up while the reader was busy, as a ring's feeder gathers frames).
fn gather<T: Element>(items: Vec<Item<T>>) -> Vec<Item<T>> {
    let mut out: Vec<Item<T>> = Vec::with_capacity(items.len());
    let mut run: Vec<Batch<T>> = Vec::new();
    let flush = |run: &mut Vec<Batch<T>>, out: &mut Vec<Item<T>>| match run.len() {
        0 => {}
        1 => out.push(Item::Data(run.pop().expect("one"))),
        _ => {
            let total = run.iter().map(Batch::len).sum();
            let mut v: Vec<T> = Vec::with_capacity(total);
            for b in run.drain(..) {
                v.extend_from_slice(b.as_slice());
            }
            out.push(Item::Data(Batch::new(v.into())));
        }
    };
    for item in items {
        match item {
            Item::Data(b) => run.push(b),
            other => {
                flush(&mut run, &mut out);
                out.push(other);
            }
        }
    }
    flush(&mut run, &mut out);
    out
}

/// The first held mark or End not yet delivered is delivered now.
fn mark_delivered<T>(st: &mut State<T>) {
    if let Some(h) = st.held.iter_mut().find(|h| h.empty && !h.delivered) {
        h.delivered = true;
    }
}

/// Applies `consumed` elements to the held messages, front first, and moves the replies of
/// those now done (every element consumed; a mark or End delivered with everything before
/// it) into `acks`. The End's acknowledgement ends the link.
fn settle<T>(st: &mut State<T>, mut consumed: usize, acks: &mut Vec<async_nats::Subject>) {
    // Ends: each pass removes the front or breaks.
    while let Some(front) = st.held.front_mut() {
        if front.empty {
            if !front.delivered {
                break;
            }
        } else {
            let n = consumed.min(front.left);
            front.left -= n;
            consumed -= n;
            st.held_left -= n;
            if front.left > 0 {
                break;
            }
        }
        let h = st.held.pop_front().expect("front");
        st.held_bytes -= h.bytes;
        if h.empty && st.eos_posted && st.held.is_empty() && st.pending.is_empty() {
            st.done = true;
        }
        acks.extend(h.reply);
    }
    debug_assert_eq!(consumed, 0, "credit beyond what was delivered");
}

/// Publishes the acknowledgements `queued`, one after the other, in the order they were made
/// (then counts each off `pending`). A task per acknowledgement published them in whatever
/// order the runtime ran the tasks: a reader killed between two of them had acknowledged a
/// message and not the one before it, which its successor then found in the stream followed
/// by a gap, and took for a message the broker lost (`tests/broker.rs` failed so once).
async fn publish_in_order<F, Fut>(
    mut queued: tokio::sync::mpsc::UnboundedReceiver<async_nats::Subject>,
    pending: Arc<AtomicUsize>,
    mut publish: F,
) where
    F: FnMut(async_nats::Subject) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(reply) = queued.recv().await {
        publish(reply).await;
        pending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The pulling task (see the module docs).
async fn pull<T: Element>(shared: Arc<Shared<T>>, codec: Codec<T>) {
    let client = match connect(&shared.settings, &shared.label).await {
        Ok(c) => c,
        Err(e) => return shared.fail(e),
    };
    let _ = shared.client.set(client.clone());
    let (acks, queued) = tokio::sync::mpsc::unbounded_channel();
    let _ = shared.acks.set(acks);
    let publisher = client.clone();
    tokio::spawn(publish_in_order(
        queued,
        Arc::clone(&shared.acks_pending),
        move |reply| {
            let client = publisher.clone();
            async move {
                let _ = client
                    .publish(reply, bytes::Bytes::from_static(b"+ACK"))
                    .await;
            }
        },
    ));
    let js = async_nats::jetstream::new(client);
    let stream = match ensure_stream(&js, &shared.names, &shared.settings, || shared.over()).await {
        Ok(s) => s,
        Err(e) => return shared.fail(e),
    };
    // A former reader's consumer would hold back what it had been sent until its
    // acknowledgement wait ran out: made afresh, it starts at the first message nobody
    // acknowledged (work-queue retention removed the others).
    // When the stream was made: a stream made again (the server lost it) differs.
    let mut created = stream.cached_info().created;
    let mut messages = match fresh_consumer(&shared, &stream).await {
        Ok(m) => m,
        Err(e) => return shared.fail(e),
    };
    let mut warned = false;
    // Ends: when the link or the run is over (checked every pass; a pass waits at most a
    // slice).
    loop {
        if shared.over() || shared.lock().done {
            return;
        }
        if shared.full(&shared.lock()) {
            let _ = tokio::time::timeout(SLICE, shared.room.notified()).await;
            continue;
        }
        let next = match tokio::time::timeout(SLICE, messages.next()).await {
            Err(_) => continue,
            Ok(n) => n,
        };
        let resync = match next {
            // The pull ended (the connection broke for good, the consumer went away).
            None => true,
            // The server lost the stream or the consumer (restarted without its store): made
            // again below.
            Some(Err(e))
                if gone(&e.to_string()) || e.to_string().contains("consumer not found") =>
            {
                true
            }
            Some(Err(e)) => {
                if !warned {
                    warned = true;
                    tracing::warn!(
                        "connection {}: pulling from JetStream stream '{}': {e}",
                        shared.label,
                        shared.names.stream
                    );
                }
                false
            }
            Some(Ok(msg)) => {
                warned = false;
                let taken = match take(&shared, &codec, msg) {
                    Ok(t) => t,
                    Err(e) => {
                        return shared.fail(format!(
                            "JetStream stream '{}' (subject '{}'): {e}",
                            shared.names.stream, shared.names.subject
                        ))
                    }
                };
                shared.mailbox.thread.unpark();
                matches!(taken, Taken::Resync)
            }
        };
        if resync {
            tracing::info!(
                "connection {}: pulling again from JetStream stream '{}'",
                shared.label,
                shared.names.stream
            );
            tokio::time::sleep(SLICE).await;
            match fresh_consumer(&shared, &stream).await {
                Ok(m) => {
                    messages = m;
                    // Made again since (by this reader or its writer): the new stream numbers
                    // its messages from 1 again, which are no redeliveries of the old one's.
                    if let Ok(info) = stream.get_info().await {
                        if info.created != created {
                            tracing::error!(
                                "connection {}: the JetStream stream '{}' on {} was made again \
                                 (a server restarted without its store?): what the old one held \
                                 and this reader had not consumed is lost",
                                shared.label,
                                shared.names.stream,
                                shared.settings.url
                            );
                            created = info.created;
                            shared.lock().last_stream_seq = 0;
                        }
                    }
                }
                Err(e) if gone(&e) => {
                    if let Err(e) =
                        ensure_stream(&js, &shared.names, &shared.settings, || shared.over()).await
                    {
                        return shared.fail(e);
                    }
                }
                Err(e) => tracing::warn!("connection {}: {e}; trying again", shared.label),
            }
        }
    }
}

/// Whether a pull or consumer error says the stream does not exist (any more).
fn gone(error: &str) -> bool {
    error.contains("stream not found")
}

/// Deletes the reader's durable consumer if it exists and creates it again (deliver all:
/// what work-queue retention left is what nobody acknowledged); its message stream.
async fn fresh_consumer<T>(
    shared: &Shared<T>,
    stream: &async_nats::jetstream::stream::Stream,
) -> Result<async_nats::jetstream::consumer::pull::Stream, String> {
    use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy};
    let _ = stream.delete_consumer(&shared.names.consumer).await;
    shared.lock().last_delivery = 0;
    let config = pull::Config {
        durable_name: Some(shared.names.consumer.clone()),
        filter_subject: shared.names.subject.clone(),
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        deliver_policy: DeliverPolicy::All,
        max_ack_pending: (shared.capacity + 2 * PULL_BATCH).min(1 << 20) as i64,
        ..Default::default()
    };
    let consumer = stream.create_consumer(config).await.map_err(|e| {
        format!(
            "cannot create the consumer '{}' of JetStream stream '{}' on {}: {e}",
            shared.names.consumer, shared.names.stream, shared.settings.url
        )
    })?;
    consumer
        .stream()
        .max_messages_per_batch(PULL_BATCH)
        .max_bytes_per_batch(PULL_BYTES)
        .messages()
        .await
        .map_err(|e| {
            format!(
                "cannot pull from the consumer '{}' of JetStream stream '{}': {e}",
                shared.names.consumer, shared.names.stream
            )
        })
}

/// What [`take`] made of a message.
enum Taken {
    /// Queued, or recognised as a repeat.
    Done,
    /// Not taken: a delivery before it was lost. The pulling task deletes and re-creates the
    /// consumer: the broker then sends again, in stream order, every message not acknowledged;
    /// those this reader holds or consumed are recognised by their stream sequence.
    Resync,
}

/// Validates and decodes one message, and queues what it holds (a repeat is acknowledged or
/// left, and dropped).
fn take<T: Element>(
    shared: &Shared<T>,
    codec: &Codec<T>,
    msg: async_nats::jetstream::Message,
) -> Result<Taken, String> {
    let (stream_seq, delivery) = msg
        .info()
        .map(|i| (i.stream_sequence, i.consumer_sequence))
        .map_err(|e| format!("no delivery information: {e}"))?;
    {
        let mut st = shared.lock();
        if st.last_delivery != 0 && delivery != st.last_delivery + 1 {
            // A delivery was lost on the way (a broken connection, a restarted server): the
            // consumer is made afresh before anything after it is taken, so that what was
            // lost comes again in order (see `Taken::Resync`).
            return Ok(Taken::Resync);
        }
        st.last_delivery = delivery;
    }
    let id = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(MSG_ID))
        .map(|v| v.as_str().to_string())
        .ok_or_else(|| format!("message {stream_seq} has no {MSG_ID} header"))?;
    let (epoch, seq) = parse_msg_id(&id)
        .ok_or_else(|| format!("message {stream_seq} has a malformed {MSG_ID} '{id}'"))?;
    // Messages of iotstream's before this header was added have none: taken as they are.
    if let Some(v) = msg.headers.as_ref().and_then(|h| h.get(ELEMENT_TYPE)) {
        let want = crate::transport::codec::type_fingerprint::<T>();
        if u64::from_str_radix(v.as_str(), 16).ok() != Some(want) {
            return Err(format!(
                "message {stream_seq} holds elements of another type (fingerprint '{}'; this \
                 reader takes {}, fingerprint {want:016x}): left by another version of the \
                 application? Delete the stream (nats stream rm {}) if what it holds may go",
                v.as_str()
                    .chars()
                    .take(32)
                    .collect::<String>()
                    .escape_default(),
                std::any::type_name::<T>(),
                shared.names.stream
            ));
        }
    }
    let prev = match msg.headers.as_ref().and_then(|h| h.get(PREV)) {
        None => None,
        Some(v) => Some(v.as_str().parse::<u64>().map_err(|_| {
            format!(
                "message {stream_seq} has a malformed {PREV} header '{}'",
                v.as_str()
            )
        })?),
    };
    let mut dec = FrameDecoder::new((MAX_ELEMENT_BYTES + 4096) as u32);
    if dec.push(&msg.payload) != msg.payload.len() {
        return Err(format!("message {stream_seq} is larger than any frame"));
    }
    let (elements, bytes, item) = match dec.next_ref() {
        Ok(Some(FrameRef::Data {
            seq: fseq,
            elements,
            payload,
        })) => {
            if fseq != seq {
                return Err(format!(
                    "message {stream_seq}: its frame says seq {fseq}, its id {id}"
                ));
            }
            let items = codec.decode_shared_private(payload).map_err(|e| {
                format!(
                    "message {stream_seq} does not decode as {}: {e}",
                    std::any::type_name::<T>()
                )
            })?;
            if items.len() != elements as usize {
                return Err(format!(
                    "message {stream_seq} says it holds {elements} elements but holds {}",
                    items.len()
                ));
            }
            (items.len(), payload.len(), Item::Data(Batch::new(items)))
        }
        Ok(Some(FrameRef::Other(Frame::Mark { seq: fseq, mark }))) if fseq == seq => {
            (0, 0, Item::Mark(mark))
        }
        Ok(Some(FrameRef::Other(Frame::End { seq: fseq }))) if fseq == seq => (0, 0, Item::End),
        Ok(Some(FrameRef::Other(f))) => {
            return Err(format!(
                "message {stream_seq} holds an unexpected frame {f:?}"
            ))
        }
        Ok(None) => return Err(format!("message {stream_seq} holds no whole frame")),
        Err(e) => return Err(format!("message {stream_seq}: {e}")),
    };
    if dec.finish().is_err() || dec.buffered_bytes() != 0 {
        return Err(format!("message {stream_seq} holds bytes after its frame"));
    }
    let reply = msg.message.reply.clone();
    let mut st = shared.lock();
    if stream_seq <= st.last_stream_seq {
        // Sent again by the broker (its acknowledgement wait ran out): if this reader still
        // holds it, its acknowledgement goes to the latest delivery once consumed; if it was
        // consumed, its acknowledgement was lost: send it again.
        match st.held.iter_mut().find(|h| h.stream_seq == stream_seq) {
            Some(h) => h.reply = reply,
            None => {
                drop(st);
                if let Some(r) = reply {
                    shared.ack(r);
                }
            }
        }
        return Ok(Taken::Done);
    }
    st.last_stream_seq = stream_seq;
    if matches!(st.last, Some((e, s)) if e == epoch && seq <= s) {
        // Published twice by its writer (a retry outside the duplicate window): drop it.
        drop(st);
        if let Some(r) = reply {
            shared.ack(r);
        }
        return Ok(Taken::Done);
    }
    if let (Some((e, s)), Some(p)) = (st.last, prev) {
        if e == epoch && p != s {
            // Not a drop at the stream's limit (the writer leaves those out of `PREV`): the
            // broker lost what was published between them.
            return Err(format!(
                "message {stream_seq} follows the writer's frame {p}, but the last frame \
                 received was {s}: the broker lost {} published message(s) (a server \
                 restarted without its store, or one that discards messages at its byte limit \
                 although told to refuse new ones: use max_messages, or a newer nats-server)",
                p.saturating_sub(s)
            ));
        }
    }
    st.last = Some((epoch, seq));
    // Counted once taken: not for a redelivery or a duplicate, dropped above.
    if shared.count_traffic {
        add(&shared.counters.bytes, bytes as u64);
    }
    let empty = elements == 0;
    if empty && !matches!(item, Item::Data(_)) {
        st.held.push_back(Held {
            stream_seq,
            left: 0,
            bytes: 0,
            delivered: false,
            empty: true,
            reply,
        });
        st.pending.push_back(item);
    } else if elements > 0 {
        st.held.push_back(Held {
            stream_seq,
            left: elements,
            bytes,
            delivered: false,
            empty: false,
            reply,
        });
        st.held_bytes += bytes;
        st.held_left += elements;
        st.pending_elements += elements;
        st.pending.push_back(item);
    } else if let Some(r) = reply {
        // A Data message of no element: nothing to deliver.
        drop(st);
        shared.ack(r);
    }
    Ok(Taken::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Acknowledgements reach the connection in the order they were made, however long each
    /// publication takes and however many workers the runtime has.
    #[test]
    fn acknowledgements_are_published_in_the_order_they_were_made() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_time()
            .build()
            .unwrap();
        let published = Arc::new(Mutex::new(Vec::new()));
        let pending = Arc::new(AtomicUsize::new(0));
        let (acks, queued) = tokio::sync::mpsc::unbounded_channel();
        let seen = Arc::clone(&published);
        rt.spawn(publish_in_order(
            queued,
            Arc::clone(&pending),
            move |reply: async_nats::Subject| {
                let seen = Arc::clone(&seen);
                async move {
                    // Earlier ones take longer: any reordering would show.
                    let n: u64 = reply.as_str().parse().unwrap();
                    tokio::time::sleep(Duration::from_micros(200 - n)).await;
                    seen.lock().unwrap().push(n);
                }
            },
        ));
        for n in 0..200u64 {
            pending.fetch_add(1, Ordering::SeqCst);
            acks.send(async_nats::Subject::from(n.to_string())).unwrap();
        }
        rt.block_on(async {
            while pending.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        assert_eq!(*published.lock().unwrap(), (0..200).collect::<Vec<_>>());
    }
}
