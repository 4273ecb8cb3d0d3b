//! Transports: how a connection moves batches, behind the one private link interface.
//!
//! In-process links live in `host.rs` (envelopes to the reader's mailbox, within credit). This
//! module wires shared-memory connections, between processes of one host (or forced, within one):
//!
//! - [`create_segments`]: the starter makes every ring before any process starts, so no process
//!   ever waits for a ring to appear, and only the starter removes them.
//! - The writer's end, [`ShmSender`], is a `Flavor` of the writer's link: the host encodes each
//!   batch into one frame (or more, if it exceeds the largest frame), publishes once per batch,
//!   and when the ring is full keeps the rest in the link's stash exactly like an in-process link
//!   out of credit. A **watcher thread** then sleeps on the ring's "space released" futex and
//!   posts a credit envelope to the host when the reader has made room: the host never blocks.
//! - The reader's end is a **feeder thread** ([`spawn_feeder`]): it sleeps on the "data
//!   published" futex, decodes frames (trusting nothing: see [`codec`]), and delivers batches to
//!   the reader's host within an in-process credit, like a local writer would. It counts as a
//!   source for quiescence until it has delivered the end of stream.
//! - Waits are always timed; between waits each side checks that the other process is alive, so
//!   a dead peer is an error naming the connection, never a hang.

pub(crate) mod codec;
pub(crate) mod shm;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use codec::Codec;
use shm::ring::{Consumer, Producer, SpaceWaiter, Wait};
use shm::segment::Segment;

use crate::error::Error;
use crate::graph::{Graph, LinkSpec, Policy, Resolved, ShmWiring};
use crate::host::{Envelope, Mailbox, OutSlot};
use crate::launch::{pid_alive, RunId, Segments};
use crate::metrics::{add, LinkCounters};
use crate::runtime::RunHandle;
use crate::stream::{Batch, Element};

/// How long one futex wait lasts before the waiter checks that its peer is alive.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Bytes of the ring of a connection of `capacity` elements of `T`: room for the capacity
/// (estimated for encoded types), a power of two from 4 KiB to 256 MiB. Batches larger than
/// half the ring travel as several frames.
pub(crate) fn ring_bytes<T: Element>(capacity: usize) -> usize {
    let per = Codec::<T>::new().estimate();
    capacity
        .saturating_mul(per)
        .clamp(4 << 10, 256 << 20)
        .next_power_of_two()
}

/// The name of the ring of edge `edge` of `app` in run `run`.
fn segment_name(app: &str, run: &RunId, edge: usize) -> Result<String, Error> {
    shm::segment::segment_name(app, &run.to_string(), &format!("e{edge}")).map_err(|e| {
        Error::Runtime {
            detail: e.to_string(),
        }
    })
}

/// Creates the ring of every shared-memory connection of `graph` (the starter does this before
/// any process starts); each name is recorded in `segments`, which removes them.
pub(crate) fn create_segments(
    graph: &Graph,
    run: &RunId,
    segments: &Segments,
) -> Result<(), Error> {
    for (edge, e) in graph.edges.iter().enumerate() {
        if graph.resolve(e) != Resolved::SharedMemory {
            continue;
        }
        let name = segment_name(&graph.name, run, edge)?;
        let capacity = e.conn.capacity.unwrap_or_else(|| graph.default_capacity());
        let decl = &graph.agents[e.from.agent as usize].outputs[e.from.port as usize];
        let bytes = (decl.ring_bytes)(capacity);
        let segment = Segment::create(&name, bytes).map_err(|err| Error::Runtime {
            detail: format!("cannot create the ring of connection #{edge}: {err}"),
        })?;
        segments.add(name);
        drop(segment); // the object stays until the starter removes it
    }
    Ok(())
}

/// Opens the ends of shared-memory connections in one process.
pub(crate) struct ShmTransport {
    app: String,
    run: RunId,
    handle: RunHandle,
}

impl ShmTransport {
    pub fn new(app: String, run: RunId, handle: RunHandle) -> Self {
        ShmTransport { app, run, handle }
    }
}

impl ShmWiring for ShmTransport {
    fn writer(
        &self,
        edge: usize,
        out: &mut dyn OutSlot,
        spec: LinkSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        _link: u32,
    ) -> Result<(), Error> {
        let name = segment_name(&self.app, &self.run, edge)?;
        out.add_shm_link(&name, spec, wake, output, self.handle.clone())
    }

    fn reader(
        &self,
        edge: usize,
        decl: &crate::agent::PortDecl,
        target: Arc<dyn Mailbox>,
        input: u32,
        capacity: usize,
        _policy: Policy,
        counters: Arc<LinkCounters>,
        label: String,
    ) -> Result<Arc<dyn Mailbox>, Error> {
        let segment = segment_name(&self.app, &self.run, edge)?;
        (decl.make_feeder)(FeederSpec {
            segment,
            target,
            input,
            capacity,
            counters,
            label,
            run: self.handle.clone(),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// The writer's end

/// What the writer's host and its watcher thread share.
struct Watch {
    /// The ring position the reader must release for the stashed frame to fit; `None` when
    /// nothing waits.
    armed: Mutex<Option<u64>>,
    cond: Condvar,
    /// The link is gone: the watcher ends.
    done: AtomicBool,
}

/// The writer's end of a shared-memory connection (see the module docs).
pub(crate) struct ShmSender<T> {
    producer: Producer<Arc<Segment>>,
    codec: Codec<T>,
    watch: Arc<Watch>,
}

impl<T: Element> ShmSender<T> {
    /// Opens ring `segment` as its producer and starts the watcher that posts
    /// `Credit { output, link }` to `wake` when room appears.
    pub fn open(
        segment: &str,
        label: &str,
        wake: Arc<dyn Mailbox>,
        output: u32,
        link: u32,
        run: RunHandle,
    ) -> Result<Self, Error> {
        let opened = Segment::open(segment).map_err(|e| Error::Runtime {
            detail: format!("connection {label}: {e}"),
        })?;
        let producer = Producer::new(Arc::new(opened)).map_err(|e| Error::Runtime {
            detail: format!("connection {label}: {e}"),
        })?;
        let watch = Arc::new(Watch {
            armed: Mutex::new(None),
            cond: Condvar::new(),
            done: AtomicBool::new(false),
        });
        let waiter = producer.space_waiter();
        let w = Arc::clone(&watch);
        let label = label.to_string();
        std::thread::Builder::new()
            .name(format!("ring space {output}.{link}"))
            .spawn(move || watch_space(waiter, w, wake, output, link, run, label))
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start a ring watcher thread: {e}"),
            })?;
        Ok(ShmSender {
            producer,
            codec: Codec::new(),
            watch,
        })
    }

    /// Writes as many leading elements of `items` as the ring has room for, in frames, and
    /// publishes them; returns how many. When the ring is full, arms the watcher.
    pub fn write(&mut self, items: &[T]) -> Result<usize, String> {
        let mut done = 0;
        let max = self.producer.max_frame_len();
        while done < items.len() {
            let rest = &items[done..];
            let (n, len) = self.codec.plan(rest, max)?;
            let codec = &self.codec;
            let written = self
                .producer
                .try_write(len, |buf| codec.write(rest, n, buf))
                .map_err(|e| e.to_string())?;
            if !written {
                let needed = self.producer.tail_needed(len);
                *self.watch.armed.lock().unwrap_or_else(|p| p.into_inner()) = Some(needed);
                self.watch.cond.notify_one();
                break;
            }
            done += n;
        }
        self.producer.publish();
        Ok(done)
    }

    /// Ends the stream: the reader sees it after the last frame.
    pub fn close(&mut self) {
        self.producer.close();
    }
}

impl<T> Drop for ShmSender<T> {
    fn drop(&mut self) {
        self.watch.done.store(true, Ordering::SeqCst);
        self.watch.cond.notify_one();
    }
}

/// The watcher thread: waits for room when armed, then wakes the writer's host.
fn watch_space(
    waiter: SpaceWaiter<Arc<Segment>>,
    watch: Arc<Watch>,
    wake: Arc<dyn Mailbox>,
    output: u32,
    link: u32,
    run: RunHandle,
    label: String,
) {
    loop {
        let needed = {
            let mut armed = watch.armed.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if watch.done.load(Ordering::SeqCst) || run.is_over() {
                    return;
                }
                if let Some(n) = armed.take() {
                    break n;
                }
                armed = watch
                    .cond
                    .wait_timeout(armed, WAIT_SLICE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        loop {
            if watch.done.load(Ordering::SeqCst) || run.is_over() {
                return;
            }
            match waiter.wait_for_tail(needed, WAIT_SLICE) {
                Ok(Wait::Ready) => {
                    wake.post(Envelope::Credit { output, link, n: 0 });
                    break;
                }
                Ok(Wait::TimedOut) => {
                    if let Some(pid) = waiter.consumer_pid() {
                        if !pid_alive(pid) {
                            run.fail(Error::Runtime {
                                detail: format!(
                                    "connection {label}: the reading process (pid {pid}) died"
                                ),
                            });
                            return;
                        }
                    }
                }
                Err(e) => {
                    run.fail(Error::Runtime {
                        detail: format!("connection {label}: {e}"),
                    });
                    return;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The reader's end

/// What a feeder thread needs.
pub(crate) struct FeederSpec {
    pub segment: String,
    pub target: Arc<dyn Mailbox>,
    pub input: u32,
    pub capacity: usize,
    pub counters: Arc<LinkCounters>,
    pub label: String,
    pub run: RunHandle,
}

/// Where the reader's input returns credit: the feeder's counter, and a wake-up.
///
/// The feeder's credit and its "blocked" mark (which lets the run judge itself quiescent) change
/// together under one lock: the feeder marks itself blocked only while its credit is zero, and a
/// credit post clears the mark in the same critical section. So a blocked feeder has no credit,
/// and only a handler still running (an envelope in flight) can give it some: the run is never
/// judged stalled between "credit returned" and "feeder noticed".
struct FeederMailbox {
    credit: Mutex<usize>,
    thread: std::thread::Thread,
    run: RunHandle,
    state: Arc<crate::runtime::FeederState>,
}

impl FeederMailbox {
    /// Takes up to `want` elements of credit; with none, marks the feeder blocked and returns 0.
    fn take(&self, want: usize) -> usize {
        let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
        if *credit == 0 {
            self.run.set_blocked(&self.state, true);
            return 0;
        }
        self.run.set_blocked(&self.state, false);
        let n = (*credit).min(want);
        *credit -= n;
        n
    }
}

impl Mailbox for FeederMailbox {
    fn post(&self, env: Envelope) {
        if let Envelope::Credit { n, .. } = env {
            let mut credit = self.credit.lock().unwrap_or_else(|p| p.into_inner());
            *credit += n;
            self.run.set_blocked(&self.state, false);
            drop(credit);
            self.thread.unpark();
        }
    }
}

/// Starts the feeder of ring `spec.segment` for input `spec.input` of the host behind
/// `spec.target`; returns where that input sends its credit.
pub(crate) fn spawn_feeder<T: Element>(spec: FeederSpec) -> Result<Arc<dyn Mailbox>, Error> {
    let label = spec.label.clone();
    let opened = Segment::open(&spec.segment).map_err(|e| Error::Runtime {
        detail: format!("connection {label}: {e}"),
    })?;
    let consumer = Consumer::new(Arc::new(opened)).map_err(|e| Error::Runtime {
        detail: format!("connection {label}: {e}"),
    })?;
    let feeder = spec.run.feeder(label.clone());
    let capacity = spec.capacity;
    let (run, state) = (spec.run.clone(), Arc::clone(&feeder));
    let (tx, rx) = std::sync::mpsc::channel::<Arc<FeederMailbox>>();
    let handle = std::thread::Builder::new()
        .name(format!("ring feeder {}", spec.input))
        .spawn(move || {
            let Ok(mailbox) = rx.recv() else { return };
            let run = spec.run.clone();
            if let Err(e) = feed::<T>(consumer, &spec, &mailbox, &feeder) {
                run.fail(Error::Runtime {
                    detail: format!("connection {}: {e}", spec.label),
                });
            }
            run.finished(&feeder);
        })
        .map_err(|e| Error::Runtime {
            detail: format!("cannot start a ring feeder thread: {e}"),
        })?;
    let mailbox = Arc::new(FeederMailbox {
        credit: Mutex::new(capacity),
        thread: handle.thread().clone(),
        run,
        state,
    });
    let _ = tx.send(Arc::clone(&mailbox));
    Ok(mailbox)
}

/// The feeder's loop: frames in, batches out within credit, end of stream last.
fn feed<T: Element>(
    mut consumer: Consumer<Arc<Segment>>,
    spec: &FeederSpec,
    mailbox: &FeederMailbox,
    _state: &crate::runtime::FeederState,
) -> Result<(), String> {
    let codec = Codec::<T>::new();
    let mut pending: VecDeque<Batch<T>> = VecDeque::new();
    loop {
        if spec.run.is_over() {
            return Ok(());
        }
        if let Some(front) = pending.front_mut() {
            let n = mailbox.take(front.len());
            if n == 0 {
                std::thread::park_timeout(WAIT_SLICE);
                continue;
            }
            let part = front.split_front(n);
            if front.is_empty() {
                pending.pop_front();
            }
            add(&spec.counters.elements, n as u64);
            add(&spec.counters.batches, 1);
            spec.target.post(Envelope::Data {
                input: spec.input,
                batch: Box::new(part),
            });
            continue;
        }
        match consumer.try_read(|payload| codec.decode_shared(payload)) {
            Ok(Some(Ok(items))) => {
                consumer.release();
                if !items.is_empty() {
                    pending.push_back(Batch::new(items));
                }
            }
            Ok(Some(Err(e))) => return Err(format!("corrupt data from the writing process: {e}")),
            Ok(None) => {
                if consumer.is_closed().map_err(|e| e.to_string())? {
                    spec.target.post(Envelope::Eos { input: spec.input });
                    return Ok(());
                }
                match consumer
                    .wait_for_data(WAIT_SLICE)
                    .map_err(|e| e.to_string())?
                {
                    Wait::Ready => {}
                    Wait::TimedOut => {
                        if let Some(pid) = consumer.producer_pid() {
                            if !pid_alive(pid) {
                                return Err(format!("the writing process (pid {pid}) died"));
                            }
                        }
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}
