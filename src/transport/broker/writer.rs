//! The writer's end of a broker link: [`BrokerSender`], a flavor of the host's `LinkTx` (see
//! the [module docs](super)).
//!
//! The host's thread encodes frames and queues them in [`State`] (bounded: `max_pending`
//! messages and `max_pending_bytes` of payload awaiting PubAcks); a task on the broker's
//! runtime publishes them in order, awaits their PubAcks in order, and frees them.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use bytes::Bytes;

use super::{
    connect, ensure_stream, msg_id, runtime, BrokerNames, BrokerSettings, ELEMENT_TYPE,
    EXPECTED_LAST_ID, MSG_ID, PREV, PUBLISH_TIMEOUT, SLICE, TARGET_PAYLOAD_BYTES,
};
use crate::error::Error;
use crate::metrics::{add, LinkCounters};
use crate::stream::{Element, Mark, Policy};
use crate::transport::framed::{DataFrame, FrameEncoder, Outbox};
use crate::transport::mailbox::{Envelope, Mailbox, Run};

/// What a writer's end needs.
pub(crate) struct BrokerWriterSpec {
    /// The connection's NATS names.
    pub names: BrokerNames,
    /// The broker's settings.
    pub settings: Arc<BrokerSettings>,
    /// The link's counters (`bytes`, `reconnects`, `unacked_bytes`, `dropped` at the stream's
    /// limit here; `LinkTx` counts elements and batches).
    pub counters: Arc<LinkCounters>,
    /// The connection's policy: what a publish refused at the stream's limit does.
    pub policy: Policy,
    /// The connection, for messages.
    pub label: String,
}

/// What the host's thread and the publishing task share: the frames queued and not yet
/// acknowledged by the server (`finished`: the End's PubAck came).
type State = Outbox<Bytes>;

struct Shared {
    state: Mutex<State>,
    /// Wakes the publishing task: a frame was queued, or the sender is gone.
    notify: tokio::sync::Notify,
    dropped: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The writer's end of a broker link (see the [module docs](super)).
pub(crate) struct BrokerSender<T> {
    shared: Arc<Shared>,
    encoder: FrameEncoder<T>,
    /// Never filled: the broker's messages are not reused (see `FrameBytes`).
    spare: Vec<Bytes>,
    /// The frames of one [`write`](Self::write) (kept for its capacity).
    frames: Vec<DataFrame<Bytes>>,
    counters: Arc<LinkCounters>,
    max_pending: usize,
    max_pending_bytes: usize,
}

impl<T: Element> BrokerSender<T> {
    /// Starts the link's publishing task on the broker runtime; returns at once. The task posts
    /// `Credit { output, link, n: 0 }` to `wake` when PubAcks make room after a short
    /// [`write`](Self::write), and when the End is acknowledged.
    pub(crate) fn open(
        spec: BrokerWriterSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        link: u32,
        run: Run,
    ) -> Result<Self, Error> {
        let rt = runtime().map_err(|detail| Error::Runtime { detail })?;
        let mut epoch_bytes = [0u8; 8];
        getrandom::fill(&mut epoch_bytes).map_err(|e| Error::Runtime {
            detail: format!("connection {}: no random epoch: {e}", spec.label),
        })?;
        let shared = Arc::new(Shared {
            // Messages are bounded by count too (`max_pending`): only payload counts as bytes.
            state: Mutex::new(Outbox::new(0)),
            notify: tokio::sync::Notify::new(),
            dropped: AtomicBool::new(false),
        });
        let settings = Arc::clone(&spec.settings);
        let publisher = Publisher {
            shared: Arc::clone(&shared),
            epoch: u64::from_le_bytes(epoch_bytes),
            element_type: format!("{:016x}", crate::transport::codec::type_fingerprint::<T>()),
            names: spec.names,
            settings: Arc::clone(&settings),
            counters: Arc::clone(&spec.counters),
            drops: spec.policy != Policy::Block,
            label: spec.label,
            wake,
            output,
            link,
            run,
        };
        let (run, label) = (Arc::clone(&publisher.run), publisher.label.clone());
        super::spawn_link_task(rt, run, label, "broker publisher", publisher.run());
        Ok(BrokerSender {
            shared,
            encoder: FrameEncoder::new(
                TARGET_PAYLOAD_BYTES,
                crate::stream::MAX_ELEMENT_BYTES + 1024,
                "message",
            ),
            spare: Vec::new(),
            frames: Vec::new(),
            counters: spec.counters,
            max_pending: settings.max_pending.max(1),
            max_pending_bytes: settings.max_pending_bytes,
        })
    }

    /// Whether another message may be queued now: fewer than `max_pending` messages and
    /// `max_pending_bytes` await PubAcks (one always may when none does).
    fn room(&self, msgs: usize, bytes: usize) -> bool {
        room(self.max_pending, self.max_pending_bytes, msgs, bytes)
    }

    /// Takes as many leading elements of `items` as the budget allows, encoded into Data
    /// frames, and returns how many; 0 means full (a credit envelope comes when PubAcks make
    /// room). An element whose encoding exceeds `MAX_ELEMENT_BYTES` is an error naming its
    /// size.
    pub(crate) fn write(&mut self, items: &[T]) -> Result<usize, String> {
        // Only the task frees room meanwhile: counting from here errs on the safe side. Only
        // this sender queues frames: the next seq stays until it queues these.
        let (msgs, bytes, next_seq) = {
            let st = self.shared.lock();
            (st.queue.len(), st.unacked, st.next_seq)
        };
        let (max_msgs, max_bytes) = (self.max_pending, self.max_pending_bytes);
        let done = self.encoder.encode(
            items,
            next_seq,
            &mut self.spare,
            &mut self.frames,
            |n, b| room(max_msgs, max_bytes, msgs + n, bytes + b),
        )?;
        let mut st = self.shared.lock();
        st.push_data(&mut self.frames);
        self.counters
            .unacked_bytes
            .store(st.unacked as u64, Ordering::Relaxed);
        if done < items.len() {
            // Set under the lock the task takes: it cannot free room unseen.
            st.full = true;
        }
        drop(st);
        self.shared.notify.notify_one();
        Ok(done)
    }

    /// Queues `mark` after everything written before it; `Ok(false)` when the budget is used
    /// up (a credit envelope comes when PubAcks make room).
    pub(crate) fn write_mark(&mut self, mark: Mark) -> Result<bool, String> {
        let mut st = self.shared.lock();
        st.check_open()?;
        if !self.room(st.queue.len(), st.unacked) {
            st.full = true;
            return Ok(false);
        }
        st.push_mark(mark);
        drop(st);
        self.shared.notify.notify_one();
        Ok(true)
    }

    /// Ends the stream: an End frame after everything written. Closing twice is harmless.
    pub(crate) fn close(&mut self) {
        let queued = self.shared.lock().push_end();
        if queued {
            self.shared.notify.notify_one();
        }
    }

    /// The End's PubAck came: the broker holds the whole stream.
    pub(crate) fn finished(&self) -> bool {
        self.shared.lock().finished
    }

    /// Messages awaiting PubAcks (for the stall description).
    pub(crate) fn pending(&self) -> usize {
        self.shared.lock().queue.len()
    }
}

/// The bytes `headers` take in a message, as the server counts them against its
/// `max_payload` (`NATS/1.0` line, one `Name: value` line each, the blank line).
fn header_bytes(headers: &async_nats::HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|v| AsRef::<[u8]>::as_ref(name).len() + 2 + v.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// Whether another message may be queued with `msgs` messages of `bytes` payload awaiting
/// PubAcks (one always may when none does).
fn room(max_msgs: usize, max_bytes: usize, msgs: usize, bytes: usize) -> bool {
    msgs == 0 || (msgs < max_msgs && bytes < max_bytes)
}

impl<T> Drop for BrokerSender<T> {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::SeqCst);
        self.shared.notify.notify_one();
    }
}

/// What a failed publish means.
enum Failure {
    /// The stream is at its limit (max bytes, messages or age with "discard new").
    Full(String),
    /// The frame before it did not land (its expected last id differs): publish again from
    /// the first unconfirmed frame.
    OutOfOrder,
    /// The server did not answer in time, the connection broke: publish again.
    Transient(String),
    /// No stream holds the subject: the server lost it (restarted without its store). Make
    /// it again, then publish again.
    Gone,
    /// Anything else: the run fails.
    Fatal(String),
}

fn classify(e: async_nats::jetstream::context::PublishError) -> Failure {
    let text = e.to_string();
    match e.kind() {
        PublishErrorKind::WrongLastMessageId => Failure::OutOfOrder,
        PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe => Failure::Transient(text),
        PublishErrorKind::MaxAckPending => Failure::Transient(text),
        _ if text.contains("maximum") || text.contains("exceeded") => Failure::Full(text),
        PublishErrorKind::StreamNotFound => Failure::Gone,
        _ => Failure::Fatal(text),
    }
}

/// The publishing task of one link.
struct Publisher {
    shared: Arc<Shared>,
    epoch: u64,
    /// The element type's fingerprint, 16 hex digits ([`ELEMENT_TYPE`]).
    element_type: String,
    names: BrokerNames,
    settings: Arc<BrokerSettings>,
    counters: Arc<LinkCounters>,
    /// The connection drops at the stream's limit (a drop policy) instead of waiting.
    drops: bool,
    label: String,
    wake: Arc<dyn Mailbox>,
    output: u32,
    link: u32,
    run: Run,
}

impl Publisher {
    fn alive(&self) -> bool {
        !self.run.is_over() && !self.shared.dropped.load(Ordering::SeqCst)
    }

    fn fail(&self, detail: String) {
        if !self.run.is_over() {
            self.run.fail(Error::Runtime {
                detail: format!("connection {}: {detail}", self.label),
            });
        }
    }

    async fn run(self) {
        let client = match connect(&self.settings, &self.label).await {
            Ok(c) => c,
            Err(e) => return self.fail(e),
        };
        let server = client.clone();
        let mut js = async_nats::jetstream::new(client);
        js.set_timeout(PUBLISH_TIMEOUT);
        if let Err(e) = ensure_stream(&js, &self.names, &self.settings, || !self.alive()).await {
            return self.fail(e);
        }
        self.publish_loop(&js, &server).await;
    }

    /// The error of a message of `size` bytes (payload and headers) that the server, whose
    /// `max_payload` is `max`, would refuse: it closes the connection on such a message, so
    /// that publishing it again would fail forever (the client saw only timeouts).
    fn too_large(&self, size: usize, max: usize) -> String {
        format!(
            "a message of {size} bytes (a batch, or one element, and the headers) is larger than \
             the NATS server {} accepts (max_payload {max} bytes), for JetStream stream '{}': \
             raise max_payload in the server's configuration (at most 64 MiB) or send smaller \
             elements",
            self.settings.url, self.names.stream
        )
    }

    /// Publishes queued frames in order, at most `max_pending` at once, and frees each once
    /// its PubAck came.
    async fn publish_loop(&self, js: &async_nats::jetstream::Context, server: &async_nats::Client) {
        // The seq of the next frame to publish.
        let mut next: u64 = 0;
        // Every frame before `next` that is not in flight is confirmed: the next publish
        // needs no expected last id.
        let mut confirmed_before_next = true;
        // The seq of the frame before `next` that the stream is to hold (dropped frames are
        // left out): what the next frame says in its `PREV` header.
        let mut prev: Option<u64> = None;
        let mut in_flight: VecDeque<(u64, Option<u64>, PublishAckFuture)> = VecDeque::new();
        let mut warned_full = false;
        let mut warned_transient = false;
        // Ends: when the run is over or the sender dropped (checked every pass; a pass waits
        // at most a slice or a PubAck timeout), or once the End is acknowledged.
        loop {
            if !self.alive() {
                return;
            }
            // Publish what is queued and not in flight, up to the window.
            while in_flight.len() < self.settings.max_pending.max(1) {
                let frame = {
                    let st = self.shared.lock();
                    let first = st.queue.front().map_or(st.next_seq, |q| q.seq);
                    if next < first {
                        next = first;
                    }
                    st.queue
                        .get((next - first) as usize)
                        .map(|q| q.frame.clone())
                };
                let Some(frame) = frame else { break };
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(MSG_ID, msg_id(self.epoch, next).as_str());
                headers.insert(ELEMENT_TYPE, self.element_type.as_str());
                if !confirmed_before_next && next > 0 {
                    headers.insert(EXPECTED_LAST_ID, msg_id(self.epoch, next - 1).as_str());
                }
                if let Some(p) = prev {
                    headers.insert(PREV, p.to_string().as_str());
                }
                let size = frame.len() + header_bytes(&headers);
                let max = server.server_info().max_payload;
                if max > 0 && size > max {
                    return self.fail(self.too_large(size, max));
                }
                match js
                    .publish_with_headers(self.names.subject.clone(), headers, frame)
                    .await
                {
                    Ok(ack) => {
                        in_flight.push_back((next, prev, ack));
                        prev = Some(next);
                        next += 1;
                        confirmed_before_next = false;
                    }
                    Err(e) => {
                        // Once per episode, as for a failed PubAck.
                        if !warned_transient {
                            warned_transient = true;
                            tracing::warn!("connection {}: cannot publish: {e}", self.label);
                        }
                        tokio::time::sleep(SLICE).await;
                        break;
                    }
                }
            }
            let Some((seq, seq_prev, ack)) = in_flight.pop_front() else {
                // Nothing in flight: wait for a frame (or a look at the run).
                let _ = tokio::time::timeout(SLICE, self.shared.notify.notified()).await;
                continue;
            };
            let failure = match ack.await {
                Ok(_) => None,
                Err(e) => Some(classify(e)),
            };
            match failure {
                None => {
                    if warned_transient || warned_full {
                        tracing::info!("connection {}: publishing again", self.label);
                        warned_transient = false;
                        warned_full = false;
                    }
                    self.confirm(seq, false);
                    if in_flight.is_empty() {
                        confirmed_before_next = true;
                    }
                }
                Some(f) => {
                    // Whatever was in flight after it is published again from `seq`
                    // (duplicates are dropped by id, an out-of-order one was refused).
                    in_flight.clear();
                    next = seq;
                    prev = seq_prev;
                    confirmed_before_next = true;
                    match f {
                        Failure::OutOfOrder => {}
                        Failure::Full(why) => {
                            if self.drops && !self.is_mark_or_end(seq) {
                                self.confirm(seq, true);
                                next = seq + 1;
                            } else {
                                if !warned_full {
                                    warned_full = true;
                                    tracing::warn!(
                                        "connection {}: the JetStream stream '{}' is at its limit \
                                         ({why}); waiting for its reader",
                                        self.label,
                                        self.names.stream
                                    );
                                }
                                tokio::time::sleep(SLICE).await;
                            }
                        }
                        Failure::Transient(why) => {
                            if !warned_transient {
                                warned_transient = true;
                                add(&self.counters.reconnects, 1);
                                tracing::warn!(
                                    "connection {}: publishing to {} failed ({why}); trying again",
                                    self.label,
                                    self.settings.url
                                );
                            }
                            tokio::time::sleep(SLICE).await;
                        }
                        Failure::Gone => {
                            tracing::error!(
                                "connection {}: the JetStream stream '{}' is gone from {} (a \
                                 server restarted without its store?): making it again; what \
                                 it held and its reader had not consumed is lost, and the \
                                 reader will say so",
                                self.label,
                                self.names.stream,
                                self.settings.url
                            );
                            if let Err(e) =
                                ensure_stream(js, &self.names, &self.settings, || !self.alive())
                                    .await
                            {
                                return self.fail(e);
                            }
                        }
                        Failure::Fatal(why) => {
                            return self.fail(format!(
                                "the NATS server {} refused a message for stream '{}' (subject \
                                 '{}'): {why}",
                                self.settings.url, self.names.stream, self.names.subject
                            ));
                        }
                    }
                }
            }
            if self.shared.lock().finished {
                return;
            }
        }
    }

    fn is_mark_or_end(&self, seq: u64) -> bool {
        let st = self.shared.lock();
        st.queue
            .front()
            .is_none_or(|q| q.seq != seq || q.elements == 0)
    }

    /// Frame `seq` (the queue's front) is acknowledged, or dropped at the stream's limit
    /// (`dropped`): frees it, and wakes the host if it waited for room or this was the End.
    fn confirm(&self, seq: u64, dropped: bool) {
        let mut st = self.shared.lock();
        let Some(front) = st.queue.front().filter(|q| q.seq == seq) else {
            return;
        };
        // Counted once stored, not at each attempt (a publish is retried at the stream's
        // limit, and again after a lost PubAck).
        if !dropped {
            add(&self.counters.bytes, front.payload as u64);
        }
        let freed = st.release_below(seq + 1);
        self.counters
            .unacked_bytes
            .store(st.unacked as u64, Ordering::Relaxed);
        if dropped {
            add(&self.counters.dropped, freed.elements as u64);
        }
        let mut wake = freed.end;
        if st.full {
            st.full = false;
            wake = true;
        }
        drop(st);
        if wake {
            self.wake.post(Envelope::Credit {
                output: self.output,
                link: self.link,
                n: 0,
            });
        }
    }
}
