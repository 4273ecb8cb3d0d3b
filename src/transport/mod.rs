//! Transports: how a connection moves batches, behind the one private link interface.
//!
//! This is the bottom of the crate's runtime layers: it imports nothing above it (no host,
//! agent, graph, runtime or launcher; `tests/layers.rs` checks it). What a host sees of any
//! connection is in [`link`]: the writer's [`LinkTx<T>`] (one handle over private flavors) and
//! the [`Mailbox`] its envelopes go to; what a link needs from its run (a feeder counting as a
//! source, failing the run, whether a dead peer may come back) is a [`RunContext`] the runtime
//! hands down. The flavors:
//!
//! - in-process: envelopes to the reader's mailbox, within credit ([`link`]);
//! - shared memory, between processes of one host (or forced, within one): this module, with
//!   the ring in [`shm`], the frame payloads in [`codec`], and what a feeder may release in
//!   [`held`]. The starter makes every ring ([`create_ring`], named by [`ring_name`]) before any
//!   process starts, so no process ever waits for a ring to appear, and only the starter
//!   removes them;
//! - TCP, between hosts: [`tcp`] (a writer's `TcpSender`, a reader's `spawn_tcp_feeder`), with
//!   the same codec and the same "acknowledged = consumed" rule as the rings' durable credit;
//! - a broker, NATS JetStream, for fleets: [`broker`] (a writer's `BrokerSender`, a reader's
//!   `spawn_broker_feeder`), the TCP flavor's frames as messages, acknowledged once consumed.
//!
//! The shared-memory flavor, end to end:
//!
//! - The writer's end, [`ShmSender`], is a flavor of the writer's [`LinkTx`]: the host encodes each
//!   batch into one frame (or more, if it exceeds the largest frame; an element larger than a
//!   frame goes as parts, see [`codec`], written before anything else), publishes once per batch,
//!   and when the ring is full keeps the rest in the link's stash exactly like an in-process link
//!   out of credit. A frame that does not fit is replaced by a smaller one of what fits (a
//!   shorter part, for a large element): the ring is full only when not even one element fits.
//!   A **watcher thread** then sleeps on the ring's "space released" futex and posts a credit
//!   envelope to the host when the reader has made room: the host never blocks. The writer
//!   also keeps at most the connection's capacity of elements in flight, written and not yet
//!   consumed, as an in-process link does (its [`Credit`]: it splits a batch at what is left,
//!   and its watcher wakes it when the reader consumes).
//! - The reader's end is a **feeder thread** ([`spawn_feeder`]): it sleeps on the "data
//!   published" futex, copies each frame into private memory and decodes it there (trusting
//!   nothing, reassembling large elements: see [`codec`]), and delivers batches to
//!   the reader's host within an in-process credit, like a local writer would. Frames readable
//!   at once are gathered into one batch, up to that credit (one delivery, one credit return
//!   for what the writer published while the reader was busy; never a wait for more), in a
//!   vector from the feeder's pool: plain data is copied once, from the ring straight into
//!   it. It takes its credit lock once per batch; what it checks while it spins are atomics.
//!   It counts as a source for quiescence until it has delivered the end of stream.
//!   The feeder releases ring space only for elements the reading agent has consumed (see
//!   [`held`]), so that a restarted reading process takes the ring over and reads again what
//!   the dead one had not consumed: nothing is lost, an element being processed at the crash
//!   may be delivered twice.
//! - **Marks** (watermarks, idleness: `crate::stream::Mark`) travel in band: the writer's
//!   [`ShmSender::write_mark`] writes each as a 16-byte frame of its own (see [`codec`]'s
//!   "Marks"), behind any parts of a large element still owed, and when the ring is full
//!   the mark waits in the link's stash like data. The feeder delivers it as an
//!   `Envelope::Mark` after the batches read before it and before those read after it; a mark
//!   takes no credit, but waits behind data that waits for credit. Its frame is released once
//!   it is delivered and everything before it consumed ([`held`]), so a reader that takes the
//!   ring over reads it again, in order, if the dead one may not have had it.
//! - Waits are always timed; between waits each side checks that the other process is alive. A
//!   dead peer is an error naming the connection, never a hang, unless the peer may come back
//!   ([`RunContext::peers_may_restart`]: a launcher supervises this process): then the
//!   launcher restarts the peer (which takes its role in the ring over) or stops the
//!   application, and the survivor keeps waiting. A writer restarted between the
//!   parts of a large element flags its first frame; the reader drops the part it had there
//!   (see [`codec`]). A reader that is alive but releases nothing while the writer waits is
//!   warned about once ([`progress_warn_after`]), and so is a writing process that is stopped
//!   while its feeder waits for data (the feeder asks [`FeederSpec::stopped`], given by the
//!   caller).
//! - When this process's part fails, the rings it writes are marked failed at once (through
//!   [`RunContext::on_failure`]), so their readers end with an error naming the failed writer.

pub(crate) mod bounded;
pub(crate) mod broker;
pub(crate) mod codec;
pub(crate) mod framed;
pub(crate) mod held;
pub(crate) mod link;
pub(crate) mod mailbox;
pub(crate) mod process;
pub(crate) mod shm;
pub(crate) mod tcp;
#[cfg(test)]
pub(crate) mod testutil;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use codec::{Codec, Decoded, Plan, Reader};
use held::Held;
use shm::ring::{
    fail_consumer, fail_producer, Consumer, DataNudger, Holder, Producer, SpaceWaiter, Wait,
};
use shm::segment::Segment;

pub(crate) use link::{LinkSpec, LinkTx};
pub(crate) use mailbox::{
    join_waiting, link_thread, Envelope, FailureHook, FeederState, Linger, Mailbox, Run, RunContext,
};

use crate::error::Error;
use crate::metrics::{add, LinkCounters};
use crate::stream::{Batch, Element, Mark, VecPool};

/// How long one futex wait lasts before the waiter checks that its peer is alive.
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Bytes of the ring of a connection of `capacity` elements of `T`, a power of two from 8 KiB
/// to 256 MiB: at least twice what `capacity + 1` frames of one element each take
/// ([`Codec::one_element_frame`], exact for plain data, estimated for encoded types).
///
/// The reader keeps the frames of the elements it has not consumed yet, up to its credit of
/// `capacity` elements (see [`held`]); in the worst layout each is a frame of its own, and one
/// more frame's worth covers a wrap. So for plain data the reader's whole credit never takes
/// more than half the ring, and the other half is the writer's largest frame (half the ring:
/// larger batches travel as several frames). Before, the ring held twice the capacity's
/// *payload* bytes, which one-element frames (24 bytes for a `u64` of 8) exceed. Only the
/// 256 MiB bound (a capacity of millions of elements) breaks the rule.
#[cfg(test)]
pub(crate) fn ring_bytes<T: Element>(capacity: usize) -> usize {
    ring_size(capacity, one_element_frame::<T>())
}

/// [`ring_bytes`] for elements whose one-element frame takes `frame` bytes.
pub(crate) fn ring_size(capacity: usize, frame: usize) -> usize {
    capacity
        .saturating_add(1)
        .saturating_mul(frame)
        .saturating_mul(2)
        .clamp(8 << 10, 256 << 20)
        .next_power_of_two()
}

/// The ring bytes a frame of one element of `T` takes ([`Codec::one_element_frame`]): the most
/// an element can take in a ring, what a connection's byte bound counts per element there.
/// Read when the graph is resolved, not when it is built: [`Graph::plain_data`] may come
/// after `connect`.
///
/// [`Graph::plain_data`]: crate::Graph::plain_data
pub(crate) fn one_element_frame<T: Element>() -> usize {
    Codec::<T>::new().one_element_frame()
}

/// The elements a ring of connection capacity `capacity` and byte bound `capacity_bytes`
/// (see `Connection::capacity_bytes`) lets be in flight, at least 1 (an element larger than
/// the bound travels alone): each counted as a frame of its own of `frame` bytes, and the
/// one-element frame [`ring_size`] adds for a wrap counted too, so that the ring, twice what
/// these frames take, is at most twice the bound (a power of two at or above it).
pub(crate) fn ring_elements(capacity: usize, capacity_bytes: usize, frame: usize) -> usize {
    capacity.min((capacity_bytes / frame.max(1)).saturating_sub(1).max(1))
}

/// Whether the process recorded as a ring's producer or consumer is alive: its pid names a
/// live process that started when the recorded one did (not a later process given the same
/// pid: see [`Holder`]).
pub(crate) fn holder_alive(holder: Holder) -> bool {
    process::alive_since(holder.pid(), holder.started())
}

/// What one side of a connection does when its peer process looks dead.
struct PeerWatch {
    /// `"reading process 'name'"` or `"writing process 'name'"`: the peer, for messages.
    peer: String,
    label: String,
    /// The dead holder already warned about (once per process).
    warned: Option<Holder>,
}

impl PeerWatch {
    /// `role` is `"reading"` or `"writing"`, `process` the peer's process name.
    fn new(role: &str, process: &str, label: &str) -> PeerWatch {
        PeerWatch {
            peer: format!("{role} process '{process}'"),
            label: label.to_string(),
            warned: None,
        }
    }

    /// Checks the peer recorded in the ring (`holder`, `None` before it attached). A dead peer is
    /// an error, except in a supervised process that is not stopping: then it warns once per
    /// process and the caller waits on (the restarted peer records itself in the ring).
    fn check(
        &mut self,
        holder: Option<Holder>,
        alive: impl Fn(Holder) -> bool,
        supervised: bool,
        stopping: bool,
    ) -> Result<(), String> {
        let Some(holder) = holder else { return Ok(()) };
        if alive(holder) {
            return Ok(());
        }
        let pid = holder.pid();
        let peer = &self.peer;
        if !supervised || stopping {
            return Err(format!("the {peer} (pid {pid}) died"));
        }
        if self.warned != Some(holder) {
            self.warned = Some(holder);
            tracing::warn!(
                "connection {}: the {peer} (pid {pid}) died; waiting for the launcher to \
                 restart it",
                self.label
            );
        }
        Ok(())
    }
}

/// The variable that sets after how long a peer that makes no progress is warned about.
pub(crate) const ENV_PROGRESS_WARN_MS: &str = "IOTSTREAM_PROGRESS_WARN_MS";

/// The default of [`ENV_PROGRESS_WARN_MS`]: 10 s.
const PROGRESS_WARN_DEFAULT: Duration = Duration::from_secs(10);

/// After how long a writer that waits for room while its reading process releases nothing is
/// warned about: `IOTSTREAM_PROGRESS_WARN_MS` (milliseconds, 0 for never), default 10 s. Read
/// once; a malformed value is an error naming the variable (checked when a graph starts).
pub(crate) fn progress_warn_after() -> Result<Option<Duration>, String> {
    static AFTER: OnceLock<Result<Option<Duration>, String>> = OnceLock::new();
    AFTER
        .get_or_init(|| match std::env::var(ENV_PROGRESS_WARN_MS) {
            Err(std::env::VarError::NotPresent) => Ok(Some(PROGRESS_WARN_DEFAULT)),
            Ok(v) => match v.trim().parse::<u64>() {
                Ok(0) => Ok(None),
                Ok(ms) => Ok(Some(Duration::from_millis(ms))),
                Err(_) => Err(format!(
                    "environment variable {ENV_PROGRESS_WARN_MS} must be a number of \
                     milliseconds (0 for never), not '{v}'"
                )),
            },
            Err(_) => Err(format!(
                "environment variable {ENV_PROGRESS_WARN_MS} is not valid UTF-8"
            )),
        })
        .clone()
}

/// One wait of a writer for room: warns once when the reading process has released nothing for
/// [`progress_warn_after`] (stopped or hung: alive, so [`PeerWatch`] says nothing), and says so
/// again when it moves.
struct ProgressWatch {
    after: Option<Duration>,
    tail: u64,
    since: Instant,
    warned: bool,
}

impl ProgressWatch {
    fn new(after: Option<Duration>, tail: u64) -> ProgressWatch {
        ProgressWatch {
            after,
            tail,
            since: Instant::now(),
            warned: false,
        }
    }

    /// After a wait slice without enough room: `tail` is the consumer's position now, `peer`
    /// the reader (see [`PeerWatch`]) and `pid` its pid. True when it warned.
    fn check(&mut self, tail: u64, label: &str, peer: &str, pid: Option<u32>) -> bool {
        let pid = pid.map_or("not attached yet".to_string(), |p| format!("pid {p}"));
        if tail != self.tail {
            self.tail = tail;
            self.since = Instant::now();
            if std::mem::take(&mut self.warned) {
                tracing::info!("connection {label}: the {peer} ({pid}) moves again");
            }
            return false;
        }
        match self.after {
            Some(after) if !self.warned && self.since.elapsed() >= after => {
                self.warned = true;
                tracing::warn!(
                    "connection {label}: no progress for {} ms: the {peer} ({pid}) is alive but \
                     has released nothing while the writer waits for room (stopped or hung?); \
                     still waiting",
                    after.as_millis()
                );
                true
            }
            _ => false,
        }
    }
}

/// The name of the ring of connection `edge` of application `app` in run `run`.
pub(crate) fn ring_name(app: &str, run: &str, edge: usize) -> Result<String, Error> {
    shm::segment::segment_name(app, run, &format!("e{edge}")).map_err(|e| Error::Runtime {
        detail: e.to_string(),
    })
}

/// What the shared-memory objects of rings of these data sizes take in `/dev/shm`, headers
/// included: the `all_rings` of [`create_ring`].
pub(crate) fn rings_total(data_bytes: impl Iterator<Item = usize>) -> usize {
    data_bytes.map(|b| b + shm::segment::HEADER_SIZE).sum()
}

/// Creates the shared-memory object of the ring of `connection` (`"writer.port -> reader.port"`,
/// for errors), named `name`, of `bytes` bytes, its pages reserved (`all_rings`: the bytes of
/// every ring the caller makes, for the error when `/dev/shm` has no room for them). The object
/// stays until it is unlinked (by whoever created it: see `launch::Segments`).
pub(crate) fn create_ring(
    name: &str,
    bytes: usize,
    connection: &str,
    all_rings: usize,
) -> Result<(), Error> {
    Segment::create(name, bytes).map(drop).map_err(|err| {
        let hint = match err {
            shm::segment::SegmentError::NoRoom { .. } => format!(
                "; the rings between this host's processes take {all_rings} bytes in all: make \
                 /dev/shm larger than that (a container's `--shm-size`, say) or lower the \
                 connections' capacity_bytes (a ring takes at most twice its connection's)"
            ),
            _ => String::new(),
        };
        Error::Runtime {
            detail: format!("connection {connection}: cannot create its ring: {err}{hint}"),
        }
    })
}

/// The positions of a run's rings, read without taking any role in them: whether anything
/// moved on any of them between two looks (the stall check across processes).
pub(crate) struct RingGauges {
    rings: Vec<Segment>,
}

impl RingGauges {
    /// Maps the rings named `names` (a run's, made by the caller).
    pub(crate) fn open(names: &[String]) -> Result<RingGauges, Error> {
        let rings = names
            .iter()
            .map(|n| {
                Segment::open(n).map_err(|e| Error::Runtime {
                    detail: format!("ring {n}: {e}"),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RingGauges { rings })
    }

    /// Every ring's published `head`, released `tail` and `consumed`, now. `head` and `tail`
    /// only grow, and `consumed` only grows while `tail` stays: equal readings mean nothing
    /// moved in between.
    pub(crate) fn positions(&self) -> Vec<u64> {
        use shm::ring::RingMemory;
        self.rings
            .iter()
            .flat_map(|r| {
                let h = r.header();
                [
                    h.head.0.load(Ordering::Acquire),
                    h.tail.0.load(Ordering::Acquire),
                    h.consumed.0.load(Ordering::Acquire),
                ]
            })
            .collect()
    }

    /// Marks every ring as written by a failed process (see `shm::ring::fail_producer`): their
    /// readers end at once with an error instead of waiting. For a launcher that stops a
    /// stalled application, whose blocked writers would never end their streams.
    pub(crate) fn fail_all(&self) {
        for r in &self.rings {
            shm::ring::fail_producer(r);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The writer's end

/// What the watcher thread waits for, for the writer's host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Armed {
    /// Room: the consumer's `tail` at or past this position (the frame that waits fits then).
    Tail(u64),
    /// Element credit: the consumer's `tail` or `consumed` moving from these values (its
    /// reader consumed something: see [`Credit`]).
    Progress { tail: u64, consumed: u64 },
}

/// The writer's requests to its watcher.
#[derive(Default)]
struct Requests {
    /// Asked for and not yet taken by the watcher.
    next: Option<Armed>,
    /// What the watcher waits for now; `None` once it woke the writer (or before the first
    /// request). Asking for it again changes nothing: the watcher goes on with its wait and
    /// its peer checks (a writer that drops what it cannot write asks at every step).
    held: Option<Armed>,
}

/// What the writer's host and its watcher thread share.
struct Watch {
    /// What the writer asks for and what the watcher waits for.
    armed: Mutex<Requests>,
    /// Set with `Requests::next` (under its lock) and cleared when the watcher takes the
    /// request: the writer asks for something new while the watcher waits for what it asked
    /// before (it then takes the new request at once, not once the old one holds, which may
    /// be never: room for a frame the reader does not release, when the writer now waits for
    /// the consumption inside it).
    rearmed: AtomicBool,
    cond: Condvar,
    /// The link is gone: the watcher ends.
    done: AtomicBool,
}

/// The writer's element credit on a ring: at most `capacity` elements in flight, written and
/// not yet consumed by the reading agent, as on an in-process link.
///
/// The ring counts bytes; this counts elements. It keeps the frames this producer wrote and
/// has not seen released, `(end position, elements)`, and reads from the ring how many
/// elements of the frames past the released `tail` the reader has consumed (the ring's
/// `consumed`, stored by the feeder: see [`shm::ring`], "Elements consumed past the tail").
/// In flight is then what it wrote past `tail` minus that. The feeder releases a frame only
/// once all its elements are consumed, so without `consumed` a reader that consumed part of a
/// frame and waits for more elements than the rest holds would wait for a writer waiting for
/// that frame: `consumed` makes the credit as fine-grained as an in-process link's.
///
/// What it counts is never less than what is in flight (the ring's values are read tail
/// first, and only between writes), so `capacity` is never exceeded, except by elements the
/// feeder released early (its fallback, counted in `LinkStats::released_early`), which are
/// no longer counted. A producer that took the role over from a dead one counts the dead
/// one's unreleased frames as its own ([`ShmSender::open`], `codec::FrameCounter`): a restart
/// does not double what may be in flight.
struct Credit {
    /// Elements that may be in flight; `usize::MAX` for no bound (the ring's room only).
    capacity: usize,
    /// Frames written and not seen released: end position, elements. None empty (marks and
    /// other frames without elements are not kept).
    frames: VecDeque<(u64, usize)>,
    /// Elements in `frames`.
    written: usize,
    /// A large element accepted and not yet entirely written: 1, else 0 (its frame goes into
    /// `frames` once its last part is written).
    open: usize,
    /// The consumer's `consumed` last read, and the `tail` it was read with.
    consumed: u64,
    tail: u64,
    /// The most in flight right after a write (see [`ShmSender::peak_in_flight`]).
    peak: usize,
    /// `consumed` and `tail` were read again during the current write: what `in_flight`
    /// says is then what is in flight, not an old count (see [`wrote`](Self::wrote)).
    recounted: bool,
}

impl Credit {
    /// The credit of a producer whose ring holds unreleased frames from `tail` on (none
    /// counted yet: see [`inherited`](Self::inherited)).
    fn new(tail: u64) -> Credit {
        Credit {
            capacity: usize::MAX,
            frames: VecDeque::new(),
            written: 0,
            open: 0,
            consumed: 0,
            tail,
            peak: 0,
            recounted: false,
        }
    }

    /// Elements in flight as last counted.
    fn in_flight(&self) -> usize {
        let consumed = usize::try_from(self.consumed).unwrap_or(usize::MAX);
        (self.written - consumed.min(self.written)) + self.open
    }

    /// A frame of `n` elements ending at `end` that a dead producer wrote and the reader has
    /// not released: in flight as if this producer had written it.
    fn inherited(&mut self, end: u64, n: usize) {
        if n > 0 {
            self.frames.push_back((end, n));
            self.written = self.written.saturating_add(n);
        }
    }

    /// Elements that may be written now, at most `want`: counted again from the ring's
    /// `tail` and `consumed` if what was counted last does not allow `want`.
    fn available(
        &mut self,
        producer: &mut Producer<Arc<Segment>>,
        want: usize,
    ) -> Result<usize, String> {
        if self.capacity == usize::MAX {
            return Ok(want);
        }
        let free = self.capacity.saturating_sub(self.in_flight());
        if free >= want || self.in_flight() == 0 {
            return Ok(want.min(free));
        }
        let (tail, consumed) = producer.released().map_err(|e| e.to_string())?;
        (self.tail, self.consumed) = (tail, consumed);
        self.recounted = true;
        while let Some(&(end, n)) = self.frames.front() {
            if end > tail {
                break;
            }
            self.frames.pop_front();
            self.written -= n;
        }
        Ok(want.min(self.capacity.saturating_sub(self.in_flight())))
    }

    /// A frame of `n` elements was written, ending at `end`.
    ///
    /// The peak is raised only in a write whose count was read again from the ring
    /// ([`available`](Self::available) does when the credit it counted runs short): between
    /// such readings the count only grows with what is written, whatever the reader consumes,
    /// and taken as it is it made every ring link report its capacity as its most in flight
    /// once that many elements had gone through it, however promptly they were consumed. The
    /// reader's end counts what it holds at every batch and credit, and the view takes the
    /// larger of the two ends' peaks.
    fn wrote(&mut self, end: u64, n: usize) {
        if n > 0 && self.capacity != usize::MAX {
            self.frames.push_back((end, n));
            self.written += n;
            if self.recounted {
                self.peak = self.peak.max(self.in_flight());
            }
        }
    }

    /// The current write is over: the next one starts from the count as it stands.
    fn write_ended(&mut self) {
        self.recounted = false;
    }
}

/// The writer's end of a shared-memory connection (see the module docs).
pub(crate) struct ShmSender<T> {
    producer: Producer<Arc<Segment>>,
    codec: Codec<T>,
    watch: Arc<Watch>,
    /// The record of a large element accepted and not yet entirely written (see
    /// [`codec`]'s "Large elements"), and how many of its bytes are written.
    large: Vec<u8>,
    large_sent: Option<usize>,
    /// Elements in flight, within the connection's capacity.
    credit: Credit,
}

impl<T: Element> ShmSender<T> {
    /// Opens ring `segment` as its producer and starts the watcher that posts
    /// `Credit { output, link }` to `wake` when room appears. `peer` is the reader's process.
    pub fn open(
        segment: &str,
        label: &str,
        peer: &str,
        wake: Arc<dyn Mailbox>,
        output: u32,
        link: u32,
        run: Run,
    ) -> Result<Self, Error> {
        let opened = Segment::open(segment).map_err(|e| Error::Runtime {
            detail: format!("connection {label}: {e}"),
        })?;
        let mut producer =
            Producer::take_over(Arc::new(opened), holder_alive).map_err(|e| Error::Runtime {
                detail: format!("connection {label}: {e}"),
            })?;
        // A restarted writer counts what its dead predecessor left in the ring (none for a
        // new ring): what is in flight stays within the capacity across the restart.
        let (tail, _) = producer.released().map_err(|e| Error::Runtime {
            detail: format!("connection {label}: {e}"),
        })?;
        let mut credit = Credit::new(tail);
        let mut counter = codec::FrameCounter::default();
        producer
            .published_frames(|end, payload| credit.inherited(end, counter.elements(&payload)))
            .map_err(|e| Error::Runtime {
                detail: format!("connection {label}: {e}"),
            })?;
        let watch = Arc::new(Watch {
            armed: Mutex::new(Requests::default()),
            rearmed: AtomicBool::new(false),
            cond: Condvar::new(),
            done: AtomicBool::new(false),
        });
        // If this process's part fails, the reader must not wait for more, nor take what it got
        // for the whole stream: the ring is marked failed at once (unless a launcher may restart
        // this process, whose replacement takes the producer's role over).
        // The hook holds the run weakly: the run holds its hooks.
        let segment = Arc::clone(producer.memory());
        let weak_run = Arc::downgrade(&run);
        run.on_failure(Box::new(move || {
            if !weak_run.upgrade().is_some_and(|r| r.peers_may_restart()) {
                fail_producer(&segment);
            }
        }));
        let waiter = producer.space_waiter();
        let w = Arc::clone(&watch);
        let peer = PeerWatch::new("reading", peer, label);
        let label = label.to_string();
        std::thread::Builder::new()
            .name(format!("ring space {output}.{link}"))
            .spawn(move || {
                let (r, l) = (run.clone(), label.clone());
                link_thread(&r, &l, "ring space watcher", || {
                    watch_space(waiter, w, wake, output, link, run, label, peer)
                })
            })
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start a ring watcher thread: {e}"),
            })?;
        Ok(ShmSender {
            producer,
            codec: Codec::new(),
            watch,
            large: Vec::new(),
            large_sent: None,
            credit,
        })
    }

    /// Bounds the elements in flight (written, not yet consumed by the reading agent) to
    /// `capacity`, as an in-process link's credit does; unbounded (the ring's room only) until
    /// called. [`write`](Self::write) then splits a batch at the credit, as an in-process link
    /// sends a sub-range.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.credit.capacity = capacity.max(1);
    }

    /// Records in the ring how many elements the link holds for it outside the ring (a drop
    /// policy's stash), for a writer that takes the ring over if this process dies
    /// ([`Producer::note_stashed`]).
    pub(crate) fn note_stashed(&mut self, n: usize) {
        self.producer.note_stashed(n as u64);
    }

    /// Elements the dead writer this one took the ring over from held for it outside the ring
    /// and never sent ([`Producer::inherited_stash`]): a hint from another process, unbounded.
    pub(crate) fn inherited_stash(&self) -> u64 {
        self.producer.inherited_stash()
    }

    /// Elements in flight as this writer last counted them: written and not seen consumed
    /// (never less than what is really in flight, see [`Credit`]).
    pub fn in_flight(&self) -> usize {
        self.credit.in_flight()
    }

    /// The most elements in flight this writer counted right after one of its writes, in
    /// writes that read the reader's consumption again (see `Credit::wrote`): at most the
    /// capacity (a write takes only the credit left). Not the most [`in_flight`] ever
    /// returned: a reading of the ring's position and consumption may pair a position with
    /// the consumption the reader already stored for its next position (reset to that frame's
    /// start), and count a frame the reader has just released (a safe overestimate for the
    /// credit, which then waits a moment; reported as the link's most in flight, it said 9
    /// for a capacity of 7 in 2 of 30 runs of `tests/flow_control.rs`).
    ///
    /// [`in_flight`]: Self::in_flight
    pub fn peak_in_flight(&self) -> usize {
        self.credit.peak
    }

    /// Writes as many leading elements of `items` as the ring has room for, in frames, and
    /// publishes them; returns how many it accepted. A frame is as large as the room there is
    /// (up to the largest); when not even one element fits, arms the watcher for it.
    ///
    /// An element too large for one frame is accepted once its first part is written; its
    /// other parts follow, ahead of anything else, as room appears: `write` and
    /// [`flush`](Self::flush) send them first, and accept nothing more until they are all
    /// written ([`idle`](Self::idle)).
    pub fn write(&mut self, items: &[T]) -> Result<usize, String> {
        let mut done = 0;
        let max = self.producer.max_frame_len();
        let result = loop {
            match self.write_parts(max) {
                Ok(true) => {}
                Ok(false) => break Ok(done),
                Err(e) => break Err(e),
            }
            if done == items.len() {
                break Ok(done);
            }
            let allowed = match self
                .credit
                .available(&mut self.producer, items.len() - done)
            {
                Ok(0) => {
                    // Out of element credit: wake up when the reader consumes.
                    self.arm_for(Armed::Progress {
                        tail: self.credit.tail,
                        consumed: self.credit.consumed,
                    });
                    break Ok(done);
                }
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            let rest = &items[done..done + allowed];
            let (n, len) = match self.codec.plan(rest, max) {
                Ok(Plan::Frame { n, len }) => (n, len),
                Ok(Plan::Large) => {
                    self.codec.take_large(&rest[0], &mut self.large);
                    self.large_sent = Some(0);
                    self.credit.open = 1;
                    // Accepted: at least its first part fits (the ring has room for a largest
                    // frame) or the watcher is armed for it, and nothing else goes before the
                    // rest of its parts.
                    done += 1;
                    continue;
                }
                Err(e) => break Err(e),
            };
            let codec = &self.codec;
            match self
                .producer
                .try_write(len, |buf| codec.write(rest, n, buf))
            {
                Ok(true) => {
                    self.credit.wrote(self.producer.head(), n);
                    done += n;
                }
                Ok(false) => match self.write_what_fits(rest) {
                    Ok(Some(n)) => {
                        self.credit.wrote(self.producer.head(), n);
                        done += n;
                    }
                    Ok(None) => break Ok(done),
                    Err(e) => break Err(e),
                },
                Err(e) => break Err(e.to_string()),
            }
        };
        self.credit.write_ended();
        self.producer.publish();
        result
    }

    /// Whether [`write_made`](Self::write_made) may write now: plain data, and no part of a
    /// large element owed.
    pub fn makes(&self) -> bool {
        self.large_sent.is_none() && self.codec.plan_made(1, usize::MAX).is_some()
    }

    /// Writes `make(0)`, `make(1)`, … (`count` elements in all) straight into the ring, each
    /// element made in its place, as many as the credit and the ring's room take now, in
    /// frames, and publishes them; how many. The frames are those [`write`](Self::write)
    /// writes for the same elements. It never waits and never arms the watcher: the caller
    /// offers the rest to `write`, which does. Writes nothing for an encoded type (only plain
    /// data is made in place), while parts of a large element are owed, or on an error (which
    /// `write` then reports).
    ///
    /// If `make` panics, the frames before the one it panicked in are published and counted,
    /// that frame is not (its elements are as if never made), and the panic comes back with
    /// the count for the caller to resume once it has accounted for them.
    pub fn write_made(
        &mut self,
        count: usize,
        mut make: impl FnMut(usize) -> T,
    ) -> (usize, Option<Box<dyn std::any::Any + Send>>) {
        if !self.makes() {
            return (0, None);
        }
        let max = self.producer.max_frame_len();
        let mut done = 0;
        let mut panic = None;
        while done < count {
            let allowed = match self.credit.available(&mut self.producer, count - done) {
                Ok(n) if n > 0 => n,
                _ => break,
            };
            let mut limit = max;
            let written = loop {
                let Some((n, len)) = self.codec.plan_made(allowed, limit) else {
                    break Ok(None);
                };
                let (codec, producer) = (&self.codec, &mut self.producer);
                let from = done;
                let attempt = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    producer.try_write(len, |buf| codec.write_made(n, buf, |i| make(from + i)))
                }));
                match attempt {
                    Ok(Ok(true)) => break Ok(Some(n)),
                    // Less room than the largest frame: a frame of what fits, if anything does.
                    Ok(Ok(false)) if limit == max => match self.producer.room_now() {
                        Ok(Some(room)) if room < max => limit = room,
                        _ => break Ok(None),
                    },
                    Ok(_) => break Ok(None),
                    Err(p) => break Err(p),
                }
            };
            match written {
                Ok(Some(n)) => {
                    self.credit.wrote(self.producer.head(), n);
                    done += n;
                }
                Ok(None) => break,
                Err(p) => {
                    panic = Some(p);
                    break;
                }
            }
        }
        self.credit.write_ended();
        self.producer.publish();
        (done, panic)
    }

    /// Writes `mark` as a frame of its own (see [`codec`]'s "Marks") after everything written
    /// before it, and publishes it; `Ok(false)` when it cannot go now: parts of a large element
    /// still wait to be written (a mark never comes between them), or the ring has no room for
    /// its 16 bytes. The watcher is then armed, as for data, and the caller offers the mark
    /// again when woken.
    pub fn write_mark(&mut self, mark: Mark) -> Result<bool, String> {
        let max = self.producer.max_frame_len();
        let parts_done = self.write_parts(max);
        if !matches!(parts_done, Ok(true)) {
            self.producer.publish();
            return parts_done;
        }
        let frame = codec::mark_frame(mark);
        let written = self
            .producer
            .try_write(frame.len(), |buf| buf.write_at(0, &frame));
        // Whether the mark went or not: the last parts `write_parts` wrote in this call go out
        // now, since the reader must see them to finish the element and hand its room back
        // (left unpublished, they waited for the next write, which an idle mark may never get).
        self.producer.publish();
        let written = written.map_err(|e| e.to_string())?;
        if !written {
            self.arm(frame.len());
        }
        Ok(written)
    }

    /// When the largest frame planned for `items` (none of them large) does not fit: writes a
    /// frame of the leading elements that fit the room there is, and returns how many; or, if
    /// not even the first one fits, arms the watcher for a frame of that one alone and returns
    /// `None`. Waiting for the largest frame instead would keep a writer waiting while the
    /// reader holds a few unconsumed elements that pin their frames, and make the reader's
    /// feeder release them early (see [`held`]).
    fn write_what_fits(&mut self, items: &[T]) -> Result<Option<usize>, String> {
        let room = self.producer.room_now().map_err(|e| e.to_string())?;
        // Planned with the room, not the largest frame: an element that does not fit it is not
        // a large one (it fits a largest frame), so `Plan::Large` here means "wait".
        if let Some(room) = room {
            if let Plan::Frame { n, len } = self.codec.plan(items, room)? {
                if n > 0 {
                    let codec = &self.codec;
                    let written = self
                        .producer
                        .try_write(len, |buf| codec.write(items, n, buf))
                        .map_err(|e| e.to_string())?;
                    if written {
                        return Ok(Some(n));
                    }
                }
            }
        }
        match self
            .codec
            .plan(&items[..1], self.producer.max_frame_len())?
        {
            Plan::Frame { len, .. } => self.arm(len),
            // Not after a largest frame held it; a largest frame is the most to wait for.
            Plan::Large => self.arm(self.producer.max_frame_len()),
        }
        Ok(None)
    }

    /// Writes the parts of the large element in progress that fit, the last of them shortened
    /// to the room there is; true once none is left (or there was none). Arms the watcher for
    /// a part of one word otherwise.
    fn write_parts(&mut self, max: usize) -> Result<bool, String> {
        let Some(mut sent) = self.large_sent else {
            return Ok(true);
        };
        let total = self.large.len();
        while sent < total {
            let chunk = codec::part_room(max).min(total - sent);
            let header = codec::part_header(sent, total);
            let bytes = &self.large[sent..sent + chunk];
            let written = self
                .producer
                .try_write(header.len() + chunk, |buf| {
                    buf.write_at(0, &header);
                    buf.write_at(header.len(), bytes);
                })
                .map_err(|e| e.to_string())?;
            let chunk = if written {
                chunk
            } else {
                // A smaller part, if any fits: parts may have any length (see `codec`).
                let room = self.producer.room_now().map_err(|e| e.to_string())?;
                let smaller = room
                    .map_or(0, |r| r.saturating_sub(header.len()))
                    .min(total - sent);
                let bytes = &self.large[sent..sent + smaller];
                let written = smaller > 0
                    && self
                        .producer
                        .try_write(header.len() + smaller, |buf| {
                            buf.write_at(0, &header);
                            buf.write_at(header.len(), bytes);
                        })
                        .map_err(|e| e.to_string())?;
                if !written {
                    // Wake up when a part of one 8-byte word fits.
                    self.large_sent = Some(sent);
                    self.arm(header.len() + 8.min(total - sent));
                    return Ok(false);
                }
                smaller
            };
            sent += chunk;
        }
        self.large_sent = None;
        // The element's one frame, for the credit: it ends with its last part.
        self.credit.open = 0;
        self.credit.wrote(self.producer.head(), 1);
        if self.large.capacity() > 1 << 20 {
            self.large = Vec::new();
        }
        Ok(true)
    }

    /// Arms the watcher: wake the host when a frame of `len` payload bytes fits.
    fn arm(&mut self, len: usize) {
        self.arm_for(Armed::Tail(self.producer.tail_needed(len)));
    }

    /// Arms the watcher: wake the host when `what` happens.
    fn arm_for(&mut self, what: Armed) {
        {
            let mut armed = self.watch.armed.lock().unwrap_or_else(|p| p.into_inner());
            if armed.next.is_none() && armed.held == Some(what) {
                return;
            }
            armed.next = Some(what);
            self.watch.rearmed.store(true, Ordering::SeqCst);
        }
        self.watch.cond.notify_one();
        // A watcher waiting in the ring for what was asked before looks again.
        self.producer.wake_space_waiter();
    }

    /// Writes and publishes what is left of a large element already accepted; true once
    /// nothing is (the host calls this whenever the ring may have room, see `LinkTx::pump`).
    pub fn flush(&mut self) -> Result<bool, String> {
        let max = self.producer.max_frame_len();
        let done = self.write_parts(max);
        self.producer.publish();
        done
    }

    /// No part of an accepted element waits to be written: the stream may be closed.
    pub fn idle(&self) -> bool {
        self.large_sent.is_none()
    }

    /// Ends the stream: the reader sees it after the last frame. Call only when
    /// [`idle`](Self::idle): an element cut short would be an error for the reader.
    pub fn close(&mut self) {
        debug_assert!(
            self.idle(),
            "closing a ring in the middle of a large element"
        );
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
#[allow(clippy::too_many_arguments)]
fn watch_space(
    waiter: SpaceWaiter<Arc<Segment>>,
    watch: Arc<Watch>,
    wake: Arc<dyn Mailbox>,
    output: u32,
    link: u32,
    run: Run,
    label: String,
    mut peer: PeerWatch,
) {
    let warn_after = progress_warn_after().ok().flatten();
    // Since the writer began to wait (the watcher woke it last, or it never waited): whether
    // the reader releases anything, and when the reader was last looked at. Both go on when
    // the writer asks for something else meanwhile, however often it does.
    let mut episode: Option<ProgressWatch> = None;
    let mut looked = Instant::now();
    loop {
        let needed = {
            let mut armed = watch.armed.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if watch.done.load(Ordering::SeqCst) || run.is_over() {
                    return;
                }
                if let Some(n) = armed.next.take() {
                    armed.held = Some(n);
                    watch.rearmed.store(false, Ordering::SeqCst);
                    break n;
                }
                armed = watch
                    .cond
                    .wait_timeout(armed, WAIT_SLICE)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
        };
        let progress =
            episode.get_or_insert_with(|| ProgressWatch::new(warn_after, waiter.tail_hint()));
        let woke = loop {
            if watch.done.load(Ordering::SeqCst) || run.is_over() {
                return;
            }
            let rearmed = || watch.rearmed.load(Ordering::SeqCst);
            let waited = match needed {
                Armed::Tail(at_least) => waiter.wait_for_tail(at_least, WAIT_SLICE, rearmed),
                Armed::Progress { tail, consumed } => {
                    waiter.wait_for_progress(tail, consumed, WAIT_SLICE, rearmed)
                }
            };
            let due = looked.elapsed() >= WAIT_SLICE;
            if waiter.reader_failed() {
                // Its part failed and reads no more (its process may live on, supervising):
                // this writer's stream ends here, a consequence of that failure.
                let reader = waiter.consumer();
                if let Some(reader) = reader {
                    run.peer_failed(reader.pid());
                }
                let pid = reader.map_or(String::new(), |r| format!(" (pid {})", r.pid()));
                run.fail(Error::Runtime {
                    detail: format!(
                        "connection {label}: the {}{pid} failed: what waits for it is not \
                         delivered",
                        peer.peer
                    ),
                });
                return;
            }
            match waited {
                // The writer asks for something else now: that, not this, wakes it.
                Ok(Wait::Ready) if rearmed() && !due => break false,
                Ok(Wait::Ready) if !rearmed() => {
                    watch.armed.lock().unwrap_or_else(|p| p.into_inner()).held = None;
                    wake.post(Envelope::Credit { output, link, n: 0 });
                    break true;
                }
                // Timed out, or asked for something else after a slice without a look at
                // the reader.
                Ok(_) => {
                    looked = Instant::now();
                    let reader = waiter.consumer();
                    if let Err(e) = peer.check(
                        reader,
                        holder_alive,
                        run.peers_may_restart(),
                        run.stopping(),
                    ) {
                        if let Some(reader) = reader {
                            run.peer_failed(reader.pid());
                        }
                        run.fail(Error::Runtime {
                            detail: format!("connection {label}: {e}"),
                        });
                        return;
                    }
                    progress.check(
                        waiter.tail_hint(),
                        &label,
                        &peer.peer,
                        reader.map(Holder::pid),
                    );
                    if rearmed() {
                        break false;
                    }
                }
                Err(e) => {
                    run.fail(Error::Runtime {
                        detail: format!("connection {label}: {e}"),
                    });
                    return;
                }
            }
        };
        if woke {
            // The writer's wait is over; its next one is another episode.
            episode = None;
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
    /// Count delivered elements and batches in `counters` (false when the writer, in this
    /// process too, counts them).
    pub count_traffic: bool,
    pub label: String,
    /// The writer's process (for messages).
    pub peer: String,
    pub run: Run,
    /// True if a pid is stopped (SIGSTOP: alive, writes nothing); see [`StoppedWatch`].
    pub stopped: fn(u32) -> bool,
    /// How long the feeder checks the ring before it sleeps (`Connection::spin`); `None`: the
    /// ring's short default spin.
    pub spin: Option<Duration>,
}

/// What a feeder does about a writing process that is stopped: the writer side warns about a
/// reader that releases nothing ([`ProgressWatch`]), but a writer that writes nothing may just
/// have nothing to write, so the feeder asks whether its process is stopped. Warns once per
/// episode, after the writer has been stopped for [`progress_warn_after`], and says so again
/// when it goes on.
struct StoppedWatch {
    after: Option<Duration>,
    /// The stopped process and since when it was seen stopped.
    since: Option<(Holder, Instant)>,
    warned: bool,
}

impl StoppedWatch {
    fn new(after: Option<Duration>) -> StoppedWatch {
        StoppedWatch {
            after,
            since: None,
            warned: false,
        }
    }

    /// After a wait slice without data: `writer` is the writer, if attached and alive (see
    /// [`PeerWatch`] for `peer`). True when it warned.
    fn check(
        &mut self,
        writer: Option<Holder>,
        stopped: fn(u32) -> bool,
        label: &str,
        peer: &str,
    ) -> bool {
        let Some(writer) = writer.filter(|w| stopped(w.pid())) else {
            if let Some((writer, _)) = self.since.take() {
                if std::mem::take(&mut self.warned) {
                    let pid = writer.pid();
                    tracing::info!("connection {label}: the {peer} (pid {pid}) goes on");
                }
            }
            return false;
        };
        let pid = writer.pid();
        let since = match self.since {
            Some((w, since)) if w == writer => since,
            _ => {
                // Another process (a restarted writer): a new episode.
                self.warned = false;
                self.since = Some((writer, Instant::now()));
                Instant::now()
            }
        };
        match self.after {
            Some(after) if !self.warned && since.elapsed() >= after => {
                self.warned = true;
                tracing::warn!(
                    "connection {label}: the {peer} (pid {pid}) is stopped (SIGSTOP?) and has \
                     written nothing for {} ms; still waiting",
                    after.as_millis()
                );
                true
            }
            _ => false,
        }
    }
}

/// The feeder's credit, and what the reader said about its last step.
struct FeederCredit {
    /// Elements the feeder may deliver.
    credit: usize,
    /// What the reader last said it holds unconsumed after a step that saw everything it had
    /// received ([`Mailbox::reader_waits`]); cleared by credit (it consumed something since).
    waits_with: Option<usize>,
    /// Elements read from the ring and not delivered yet (as the feeder last said).
    pending: usize,
}

/// What the feeder sees of its reader's state when it finds nothing to read (one lock).
struct ReaderState {
    /// The reader could take more elements now.
    has_credit: bool,
    /// Every element delivered has been consumed (the feeder has its whole credit back).
    all_consumed: bool,
    /// The reader waits for more: its last step saw every element delivered to it (none was
    /// delivered since, no credit came back since) and left them unconsumed. Only then may
    /// the feeder release ring space early (see [`held`]): a reader that is merely slow says
    /// nothing of the kind.
    starved: bool,
}

/// Where the reader's input returns credit: the feeder's counter, and a wake-up.
///
/// The feeder's credit and its "blocked" mark (which lets the run judge itself quiescent) change
/// together under one lock: the feeder marks itself blocked only while its credit is zero, and a
/// credit post clears the mark in the same critical section. So a blocked feeder has no credit,
/// and only a handler still running (an envelope in flight) can give it some: the run is never
/// judged stalled between "credit returned" and "feeder noticed". The feeder takes that lock
/// once per batch it delivers (and once when it finds nothing to read); what it checks while
/// it spins or works (consumption to apply, a reader that says it waits) are atomics.
///
/// Credit also says what the reader consumed, which lets the feeder release ring space
/// ([`held`]): a post wakes the feeder wherever it sleeps (parked for credit, or on the ring's
/// data futex, through a nudge).
struct FeederMailbox {
    credit: Mutex<FeederCredit>,
    /// Elements the reader consumed (credited back) since the feeder last looked.
    consumed: AtomicUsize,
    /// The credit as last changed (under the lock): how much the feeder gathers into one
    /// batch. A hint: the lock's value is the one spent.
    credit_hint: AtomicUsize,
    /// Counts [`Mailbox::reader_waits`] calls: a feeder watching for a starved reader wakes
    /// when it moves.
    waits: AtomicU64,
    /// The input's capacity: the feeder's credit when nothing is delivered and not credited.
    capacity: usize,
    /// The link's counters: the reader's end counts what is in flight in its process (read
    /// from the ring and not consumed by the reading agent: waiting in the feeder, or handed
    /// to the agent).
    counters: Arc<LinkCounters>,
    thread: std::thread::Thread,
    nudger: DataNudger<Arc<Segment>>,
    run: Run,
    state: Arc<FeederState>,
}

impl FeederMailbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, FeederCredit> {
        self.credit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes up to `want` elements of credit, `unposted` elements being read from the ring and
    /// not delivered (`want` of them included); with none, marks the feeder blocked and
    /// returns 0.
    fn take(&self, want: usize, unposted: usize) -> usize {
        let mut c = self.lock();
        c.pending = unposted;
        if c.credit == 0 {
            self.note_in_flight(&c);
            self.run.set_blocked(&self.state, true);
            return 0;
        }
        self.run.set_blocked(&self.state, false);
        let n = c.credit.min(want);
        c.credit -= n;
        c.pending = c.pending.saturating_sub(n);
        self.credit_hint.store(c.credit, Ordering::Relaxed);
        self.note_in_flight(&c);
        n
    }

    /// Sets the link's in-flight gauge (and its most): read from the ring and not consumed.
    fn note_in_flight(&self, c: &FeederCredit) {
        self.counters
            .set_in_flight((self.capacity.saturating_sub(c.credit) + c.pending) as u64);
    }

    /// The elements consumed since the last call.
    fn take_consumed(&self) -> usize {
        self.consumed.swap(0, Ordering::Acquire)
    }

    /// Some consumption not taken yet.
    fn has_consumed(&self) -> bool {
        self.consumed.load(Ordering::Relaxed) > 0
    }

    /// About how many elements the reader could take now (see `credit_hint`).
    fn credit_hint(&self) -> usize {
        self.credit_hint.load(Ordering::Relaxed)
    }

    /// How many times the reader said it waits (see `waits`).
    fn waits_seen(&self) -> u64 {
        self.waits.load(Ordering::Acquire)
    }

    /// The reader's state, as [`ReaderState`] says, in one critical section.
    fn reader_state(&self) -> ReaderState {
        let c = self.lock();
        ReaderState {
            has_credit: c.credit > 0,
            all_consumed: c.credit >= self.capacity,
            starved: c.waits_with == Some(self.capacity.saturating_sub(c.credit)),
        }
    }
}

impl Mailbox for FeederMailbox {
    fn post(&self, env: Envelope) {
        if let Envelope::Credit { n, .. } = env {
            let mut c = self.lock();
            c.credit += n;
            c.waits_with = None;
            self.credit_hint.store(c.credit, Ordering::Relaxed);
            self.note_in_flight(&c);
            self.run.set_blocked(&self.state, false);
            drop(c);
            self.consumed.fetch_add(n, Ordering::Release);
            self.thread.unpark();
            self.nudger.nudge();
        }
    }

    fn reader_waits(&self, unconsumed: usize) {
        self.lock().waits_with = Some(unconsumed);
        self.waits.fetch_add(1, Ordering::Release);
        self.thread.unpark();
        self.nudger.nudge();
    }
}

/// Starts the feeder of ring `spec.segment` for input `spec.input` of the host behind
/// `spec.target`; returns where that input sends its credit.
pub(crate) fn spawn_feeder<T: Element>(spec: FeederSpec) -> Result<Arc<dyn Mailbox>, Error> {
    let label = spec.label.clone();
    let opened = Segment::open(&spec.segment).map_err(|e| Error::Runtime {
        detail: format!("connection {label}: {e}"),
    })?;
    let mut consumer =
        Consumer::take_over(Arc::new(opened), holder_alive).map_err(|e| Error::Runtime {
            detail: format!("connection {label}: {e}"),
        })?;
    if let Some(window) = spec.spin {
        consumer.spin_for(window);
    }
    // If this process's part fails, its writer must not wait for room that will never come:
    // the ring is marked at once (unless a launcher may restart this process, whose
    // replacement reads on). The hook holds the run weakly: the run holds its hooks.
    let segment = Arc::clone(consumer.memory());
    let weak_run = Arc::downgrade(&spec.run);
    spec.run.on_failure(Box::new(move || {
        if !weak_run.upgrade().is_some_and(|r| r.peers_may_restart()) {
            fail_consumer(&segment);
        }
    }));
    let nudger = consumer.nudger();
    let feeder = spec.run.feeder(label.clone());
    let head = consumer.nudger();
    let _ = feeder.published.set(Box::new(move || head.published()));
    let capacity = spec.capacity;
    let counters = Arc::clone(&spec.counters);
    let (run, state) = (spec.run.clone(), Arc::clone(&feeder));
    let (tx, rx) = std::sync::mpsc::channel::<Arc<FeederMailbox>>();
    let handle = std::thread::Builder::new()
        .name(format!("ring feeder {}", spec.input))
        .spawn(move || {
            let Ok(mailbox) = rx.recv() else { return };
            let run = spec.run.clone();
            let label = spec.label.clone();
            link_thread(&run, &label, "ring feeder", || {
                let mut held = Held::new();
                let fed = feed::<T>(&mut consumer, &spec, &mailbox, &mut held);
                feeder.idle_at.store(mailbox::NOT_IDLE, Ordering::SeqCst);
                if let Err(e) = &fed {
                    run.fail(Error::Runtime {
                        detail: format!("connection {}: {e}", spec.label),
                    });
                }
                run.finished(&feeder);
                if fed.is_ok() {
                    linger(&mut consumer, &spec, &mailbox, &mut held);
                }
            })
        })
        .map_err(|e| Error::Runtime {
            detail: format!("cannot start a ring feeder thread: {e}"),
        })?;
    let mailbox = Arc::new(FeederMailbox {
        credit: Mutex::new(FeederCredit {
            credit: capacity,
            waits_with: None,
            pending: 0,
        }),
        consumed: AtomicUsize::new(0),
        credit_hint: AtomicUsize::new(capacity),
        waits: AtomicU64::new(0),
        capacity,
        counters,
        thread: handle.thread().clone(),
        nudger,
        run,
        state,
    });
    let _ = tx.send(Arc::clone(&mailbox));
    Ok(mailbox)
}

/// Applies the consumption credited since the last call: releases the ring past every frame
/// whose elements are all consumed.
fn apply_consumed(
    consumer: &mut Consumer<Arc<Segment>>,
    mailbox: &FeederMailbox,
    held: &mut Held,
) -> Result<(), String> {
    let n = mailbox.take_consumed();
    if n > 0 {
        let pos = held.consumed(n);
        // Also without a frame to release: the writer counts what was consumed inside one.
        release(consumer, held, pos)?;
    }
    Ok(())
}

/// Releases the ring up to `pos`, if given, after telling the writer how many elements of the
/// frames still held the reader has consumed ([`Held::consumed_held`]: the ring's `consumed`,
/// which a writer bounding its elements in flight reads, see [`Credit`]).
fn release(
    consumer: &mut Consumer<Arc<Segment>>,
    held: &Held,
    pos: Option<u64>,
) -> Result<(), String> {
    consumer
        .release_consumed(held.consumed_held() as u64, pos)
        .map_err(|e| e.to_string())
}

/// What a feeder read and has not delivered yet, in ring order.
enum Pending<T> {
    /// Elements, delivered within credit.
    Data(Batch<T>),
    /// A mark, delivered as soon as everything before it is (it takes no credit).
    Mark(Mark),
}

/// The most bytes of elements a feeder gathers from consecutive frames into one batch: as much
/// as a step is shown at once anyway (`port::ALONE_BYTES`), which the per-batch cost is
/// amortised over. Beyond it the feeder's copy out of the ring fills vectors larger than the
/// core's first-level cache for no saving: with 8-byte elements in 32 KiB frames, gathering up
/// to the reader's credit (256 KiB) moved 916–933 M elements/s, 64 KiB 977–1,010 M (three
/// alternated rounds, `iotstream bench --modes processes --sizes 8 --patterns batch`).
const GATHER_AT_MOST_BYTES: usize = 64 << 10;

/// The pool a feeder's batch vectors come from and go back to when the reading agent is done
/// with them: about twice the connection's capacity of elements (what the feeder may have
/// delivered and not seen consumed, plus what it gathers), at least a default pool's bytes
/// and at most 64 MiB.
pub(crate) fn feeder_pool<T>(capacity: usize) -> VecPool<T> {
    let bytes = capacity
        .saturating_mul(std::mem::size_of::<T>())
        .saturating_mul(2)
        .clamp(VecPool::<T>::MAX_BYTES, 64 << 20);
    VecPool::with_limits(VecPool::<T>::MAX_VECS, bytes)
}

/// Moves the elements gathered in `staged` (if any) to the end of `pending`, as one batch of a
/// vector from `pool`, and starts gathering into another one from it.
fn seal<T>(staged: &mut Vec<T>, pending: &mut VecDeque<Pending<T>>, pool: &Arc<VecPool<T>>) {
    if !staged.is_empty() {
        pending.push_back(Pending::Data(Batch::pooled_replacing(staged, pool)));
    }
}

/// The feeder's loop: frames in, batches and marks out within credit (marks in order with the
/// batches), end of stream last. Ring space is
/// released only past frames whose elements the reader consumed (see [`held`]).
///
/// Consecutive frames of whole elements that are readable at once are gathered into one batch,
/// up to the reader's credit and [`GATHER_AT_MOST_BYTES`]: one delivery (one wake-up of the
/// reader, one credit return) for what the writer published while the reader was busy, never
/// a wait for more. Plain data is
/// copied once, from the ring straight into the batch's vector, which comes from the feeder's
/// pool and goes back to it when the reading agent drops the batch.
fn feed<T: Element>(
    consumer: &mut Consumer<Arc<Segment>>,
    spec: &FeederSpec,
    mailbox: &FeederMailbox,
    held: &mut Held,
) -> Result<(), String> {
    // Copies every frame into private memory before decoding it, reassembles large elements.
    let mut reader = if consumer.took_over() {
        Reader::<T>::resuming()
    } else {
        Reader::<T>::new()
    };
    let mut pending: VecDeque<Pending<T>> = VecDeque::new();
    let pool = Arc::new(feeder_pool::<T>(spec.capacity));
    // Whole elements of the frames read since `pending` was last empty and not yet in it.
    let mut staged: Vec<T> = pool.take();
    // Elements read and not delivered: in `pending` and `staged`.
    let mut unposted = 0usize;
    let mut peer = PeerWatch::new("writing", &spec.peer, &spec.label);
    // A failed writer's mark, named (the ring knows only its pid).
    let writer = peer.peer.clone();
    let failed = |e: shm::ring::RingError| match e {
        shm::ring::RingError::WriterFailed { pid } => {
            spec.run.peer_failed(pid);
            format!("the {writer} (pid {pid}) failed: its stream ends incomplete")
        }
        other => other.to_string(),
    };
    let mut warned_early = false;
    let mut stopped = StoppedWatch::new(progress_warn_after().ok().flatten());
    loop {
        if spec.run.is_over() {
            return Ok(());
        }
        if mailbox.has_consumed() {
            apply_consumed(consumer, mailbox, held)?;
        }
        if let Some(Pending::Mark(mark)) = pending.front() {
            // A mark takes no credit: it goes as soon as the data before it went.
            spec.target.post(Envelope::Mark {
                input: spec.input,
                mark: *mark,
            });
            pending.pop_front();
            if let Some(pos) = held.mark_delivered() {
                release(consumer, held, Some(pos))?;
            }
            continue;
        }
        if let Some(Pending::Data(front)) = pending.front_mut() {
            let n = mailbox.take(front.len(), unposted);
            if n == 0 {
                // A failed writer ends the stream with an error even while the reader is full.
                consumer.writer_failed().map_err(failed)?;
                std::thread::park_timeout(WAIT_SLICE);
                continue;
            }
            let part = front.split_front(n);
            if front.is_empty() {
                pending.pop_front();
            }
            unposted -= n;
            if spec.count_traffic {
                add(&spec.counters.elements, n as u64);
                add(&spec.counters.batches, 1);
            }
            spec.target.post(Envelope::Data {
                input: spec.input,
                batch: part.into_any(),
            });
            continue;
        }
        // Nothing waits to be delivered: gather what is readable, up to the reader's credit.
        if !staged.is_empty()
            && (staged.len() >= mailbox.credit_hint().max(1)
                || staged.len().saturating_mul(std::mem::size_of::<T>()) >= GATHER_AT_MOST_BYTES)
        {
            seal(&mut staged, &mut pending, &pool);
            continue;
        }
        let frame = consumer.try_read(|payload| reader.read_into(payload, &mut staged));
        if reader.take_abandoned() {
            // The writer died between the parts of a large element; the restarted one sends
            // it again: the parts read so far hold no element any more.
            if let Some(pos) = held.abandon_part() {
                release(consumer, held, Some(pos))?;
            }
        }
        match frame {
            Ok(Some(Ok(Decoded::Appended(n)))) => {
                if let Some(pos) = held.read(consumer.position(), n) {
                    release(consumer, held, Some(pos))?;
                }
                unposted += n;
            }
            Ok(Some(Ok(Decoded::Batch(items)))) => {
                // Not from `read_into`; handled all the same.
                seal(&mut staged, &mut pending, &pool);
                if let Some(pos) = held.read(consumer.position(), items.len()) {
                    release(consumer, held, Some(pos))?;
                }
                if !items.is_empty() {
                    unposted += items.len();
                    pending.push_back(Pending::Data(Batch::new(items)));
                }
            }
            Ok(Some(Ok(Decoded::Mark(mark)))) => {
                seal(&mut staged, &mut pending, &pool);
                held.read_mark(consumer.position());
                pending.push_back(Pending::Mark(mark));
            }
            Ok(Some(Ok(Decoded::Part { first, element }))) => {
                // What came before goes now, not after the rest of the element.
                seal(&mut staged, &mut pending, &pool);
                let last = element.is_some();
                if let Some(pos) = held.read_part(consumer.position(), first, last) {
                    release(consumer, held, Some(pos))?;
                }
                if let Some(items) = element {
                    unposted += items.len();
                    pending.push_back(Pending::Data(Batch::new(items)));
                }
            }
            Ok(Some(Ok(Decoded::Orphan { new }))) => {
                // The rest of an element whose start a previous reader released early: lost
                // (it was counted there, but its counters died with it), skipped to the next
                // element.
                if let Some(pos) = held.read(consumer.position(), 0) {
                    release(consumer, held, Some(pos))?;
                }
                if new {
                    released_early(spec, 1, &mut warned_early);
                }
            }
            Ok(Some(Err(e))) => return Err(format!("corrupt data from the writing process: {e}")),
            Ok(None) if !staged.is_empty() => {
                // Nothing more readable now: what was gathered goes.
                seal(&mut staged, &mut pending, &pool);
            }
            Ok(None) => {
                if consumer.is_closed().map_err(failed)? {
                    spec.target.post(Envelope::Eos { input: spec.input });
                    return Ok(());
                }
                // Nothing unread. If the reader waits for more elements (it saw everything
                // delivered and left it unconsumed: not merely slow; or it consumed everything
                // delivered and the element it needs next is a large one whose first parts are
                // held here and whose rest the writer has no room for) and could take them,
                // but the writer waits for space that only frames held here can give, release
                // the oldest ones anyway. A reader that has not consumed what it was given is
                // merely slow, whatever is held: once it consumes, the writer has room. With
                // room for any frame, the writer cannot be waiting for us: no need to watch.
                let cap = consumer.capacity() as u64;
                let read = consumer.position();
                let need = held::room_needed(cap, read % cap);
                let free = cap - (read - consumer.released());
                // Read before the state: a reader that says it waits after this wakes us.
                let waits_seen = mailbox.waits_seen();
                let reader_state = mailbox.reader_state();
                let starved = (held.is_open() && reader_state.all_consumed) || reader_state.starved;
                let watch = !held.is_empty() && free < need && starved && reader_state.has_credit;
                if watch && consumer.producer_waits_for_space() {
                    // As little as needed: the oldest frame, then a wait slice for the writer
                    // to write into what it gave (it writes what fits) or to wait again.
                    let Some((pos, unprotected)) = held.release_early(|_| true) else {
                        continue;
                    };
                    release(consumer, held, Some(pos))?;
                    released_early(spec, unprotected, &mut warned_early);
                    consumer
                        .wait_for_data_or(WAIT_SLICE, false, || mailbox.has_consumed())
                        .map_err(|e| e.to_string())?;
                    continue;
                }
                // Everything published is read and delivered: the run may see this feeder
                // as waiting for its writer, for as long as the head stays here.
                mailbox.state.idle_at.store(read, Ordering::SeqCst);
                let wait = consumer
                    .wait_for_data_or(WAIT_SLICE, watch, || {
                        // Consumption to apply; or, unless it already waits, a reader that
                        // says it waits (the loop looks at its state again).
                        mailbox.has_consumed() || (!starved && mailbox.waits_seen() != waits_seen)
                    })
                    .map_err(|e| e.to_string())?;
                if wait == Wait::TimedOut {
                    // One look at the writer's process serves both checks.
                    let writer = consumer.producer();
                    let live = writer.filter(|&w| holder_alive(w));
                    peer.check(
                        writer,
                        |_| live.is_some(),
                        spec.run.peers_may_restart(),
                        spec.run.stopping(),
                    )
                    .inspect_err(|_| {
                        if let Some(writer) = writer {
                            spec.run.peer_failed(writer.pid());
                        }
                    })?;
                    // Only a live writer: a dead one's pid may name another process by now.
                    stopped.check(live, spec.stopped, &spec.label, &peer.peer);
                }
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Counts the elements the fallback of [`held`] released before they were consumed, and warns
/// once per connection.
fn released_early(spec: &FeederSpec, unprotected: usize, warned: &mut bool) {
    if unprotected == 0 {
        return;
    }
    add(&spec.counters.released_early, unprotected as u64);
    if !*warned {
        *warned = true;
        tracing::warn!(
            "connection {}: the reading agent waits for more elements than the ring holds \
             beside the writer's next frame (the ring is full of elements it saw and left \
             unconsumed): releasing some early, counted in LinkStats::released_early; a crash \
             of this process would lose them. Raise the connection's capacity (the ring grows \
             with it) or make the agent need fewer elements at a time.",
            spec.label
        );
    }
}

/// After the end of the stream: releases the last frames as the reader consumes them, so that
/// a restarted reader would not see them again; ends when every frame is released or the run is
/// over (elements the agent never consumes keep their frames until then).
fn linger(
    consumer: &mut Consumer<Arc<Segment>>,
    spec: &FeederSpec,
    mailbox: &FeederMailbox,
    held: &mut Held,
) {
    while !held.is_empty() && !spec.run.is_over() {
        if let Err(e) = apply_consumed(consumer, mailbox, held) {
            tracing::error!("connection {}: {e}", spec.label);
            return;
        }
        if !held.is_empty() {
            std::thread::park_timeout(WAIT_SLICE);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shm::ring::RingMemory;

    use super::testutil::test_run;
    use shm::segment::UnlinkGuard;
    use std::time::Instant;

    /// What a mailbox received: elements (of `u64` batches), end of stream, other envelopes.
    #[derive(Default)]
    struct Seen {
        items: Vec<u64>,
        /// The length of each batch delivered.
        batches: Vec<usize>,
        eos: bool,
        credits: usize,
    }

    /// A host's mailbox, as the feeder (reader side) or the space watcher (writer side) sees it.
    #[derive(Default)]
    struct Inbox {
        seen: Mutex<Seen>,
        cond: Condvar,
    }

    impl Mailbox for Inbox {
        fn post(&self, env: Envelope) {
            let mut seen = self.seen.lock().unwrap();
            match env {
                Envelope::Data { batch, .. } => {
                    let batch = batch.downcast::<u64>().unwrap();
                    seen.batches.push(batch.len());
                    seen.items.extend_from_slice(batch.as_slice());
                }
                Envelope::Eos { .. } => seen.eos = true,
                Envelope::Credit { .. } => seen.credits += 1,
                _ => {}
            }
            self.cond.notify_all();
        }
    }

    impl Inbox {
        /// Waits until `done` holds (a guard of a minute keeps a bug from hanging the test).
        fn wait(&self, what: &str, done: impl Fn(&Seen) -> bool) {
            let start = Instant::now();
            let mut seen = self.seen.lock().unwrap();
            while !done(&seen) {
                assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
                seen = self.cond.wait_timeout(seen, WAIT_SLICE).unwrap().0;
            }
        }

        fn credits(&self) -> usize {
            self.seen.lock().unwrap().credits
        }
    }

    /// Polls `f` until it holds, asserting `invariant` all along (with the same guard).
    fn poll(what: &str, mut f: impl FnMut() -> bool, invariant: impl Fn()) {
        let start = Instant::now();
        loop {
            invariant();
            if f() {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(60), "never: {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn test_ring(test: &str, bytes: usize) -> (String, UnlinkGuard, Segment) {
        let name = shm::segment::segment_name(
            "iotstream-unit-tests",
            &std::process::id().to_string(),
            test,
        )
        .unwrap();
        let guard = UnlinkGuard::new(&name);
        Segment::create(&name, bytes).unwrap();
        let view = Segment::open(&name).unwrap();
        (name, guard, view)
    }

    fn feeder(name: &str, capacity: usize, reader: &Arc<Inbox>, run: &Run) -> FeederSpec {
        FeederSpec {
            segment: name.to_string(),
            target: Arc::clone(reader) as Arc<dyn Mailbox>,
            input: 0,
            capacity,
            counters: Arc::default(),
            count_traffic: true,
            label: "numbers.out -> slow.in".into(),
            peer: "numbers".into(),
            run: run.clone(),
            stopped: |_| false,
            spin: None,
        }
    }

    /// The producer end of ring `name` (read by process "slow"), and the inbox its space
    /// watcher posts credit to.
    fn open_writer<T: Element>(name: &str, run: &Run) -> (Arc<Inbox>, ShmSender<T>) {
        let writer = Arc::new(Inbox::default());
        let tx =
            ShmSender::<T>::open(name, "test", "slow", writer.clone(), 0, 0, run.clone()).unwrap();
        (writer, tx)
    }

    /// A feeder of Strings from ring `name` (written by agent `text`) to `reader`'s input 0
    /// (agent `agent`), capacity 8.
    fn strings_spec(
        name: &str,
        reader: &Arc<Strings>,
        run: &Run,
        counters: Arc<LinkCounters>,
        agent: &str,
    ) -> FeederSpec {
        FeederSpec {
            segment: name.to_string(),
            target: Arc::clone(reader) as Arc<dyn Mailbox>,
            input: 0,
            capacity: 8,
            counters,
            count_traffic: true,
            label: format!("text.out -> {agent}.in"),
            peer: "text".into(),
            run: run.clone(),
            stopped: |_| false,
            spin: None,
        }
    }

    /// A mailbox that panics at the first envelope of a kind: a defect of whatever the
    /// link's thread steps there.
    struct PanicsAt(fn(&Envelope) -> bool);

    impl Mailbox for PanicsAt {
        fn post(&self, env: Envelope) {
            if (self.0)(&env) {
                panic!("a defect where the envelope went");
            }
        }
    }

    /// Polls until the run failed; its failure.
    fn failure_of(run: &testutil::TestRun) -> String {
        poll("the run failed", || run.failure().is_some(), || ());
        run.failure().unwrap()
    }

    /// A panic on a feeder's thread (here in what it delivers to) fails the run, naming the
    /// connection and the thread, where the thread died alone before and its reader, and the
    /// run, waited for ever.
    #[test]
    fn a_panic_on_a_feeders_thread_fails_the_run_naming_the_connection() {
        let (name, _guard, _view) = test_ring("feeder-panics", 8 << 10);
        let test = Arc::new(testutil::TestRun::default());
        let run: Run = test.clone();
        let (_writer, mut tx) = open_writer::<u64>(&name, &run);
        assert_eq!(tx.write(&[1, 2, 3]).unwrap(), 3);
        let spec = FeederSpec {
            target: Arc::new(PanicsAt(|e| matches!(e, Envelope::Data { .. }))),
            ..feeder(&name, 8, &Arc::new(Inbox::default()), &run)
        };
        spawn_feeder::<u64>(spec).unwrap();
        let failure = failure_of(&test);
        assert!(
            failure.contains("connection numbers.out -> slow.in: its ring feeder thread panicked")
                && failure.contains("a defect where the envelope went"),
            "{failure}"
        );
    }

    /// The same on the writer's side: a panic on a ring's space watcher (here in the writer's
    /// step it runs as room comes back) fails the run instead of leaving the writer waiting.
    #[test]
    fn a_panic_on_a_rings_space_watcher_fails_the_run_naming_the_connection() {
        let (name, _guard, _view) = test_ring("watcher-panics", 8 << 10);
        let test = Arc::new(testutil::TestRun::default());
        let run: Run = test.clone();
        let wake = Arc::new(PanicsAt(|e| matches!(e, Envelope::Credit { .. })));
        let mut tx = ShmSender::<u64>::open(
            &name,
            "full.out -> slow.in",
            "slow",
            wake,
            0,
            0,
            run.clone(),
        )
        .unwrap();
        let items: Vec<u64> = (0..4096).collect();
        let mut written = 0;
        // Ends: the ring holds 8 KiB, fewer than 4096 u64.
        loop {
            let n = tx.write(&items).unwrap();
            if n == 0 {
                break;
            }
            written += n;
        }
        let reader = Arc::new(Inbox::default());
        let credit = spawn_feeder::<u64>(feeder(&name, 8192, &reader, &run)).unwrap();
        reader.wait("what was written delivered", |s| s.items.len() == written);
        assert!(test.failure().is_none(), "{:?}", test.failure());
        // Consumed: the ring's space comes back and its watcher wakes the writer.
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: written,
        });
        let failure = failure_of(&test);
        assert!(
            failure
                .contains("connection full.out -> slow.in: its ring space watcher thread panicked")
                && failure.contains("a defect where the envelope went"),
            "{failure}"
        );
    }

    /// A writer that waited for room (its watcher armed for the reader's tail) and now waits
    /// for consumption instead (out of element credit) is woken by the first consumption: the
    /// watcher takes the new request at once. Before, it went on waiting for the tail, which
    /// the reader does not move while it holds a frame it consumed only part of, and the
    /// writer slept until something else woke it.
    #[test]
    fn a_watcher_rearmed_for_consumption_wakes_the_writer_at_the_first_consumption() {
        let (name, _guard, view) = test_ring("watcher-rearmed", 8 << 10);
        let run = test_run();
        let (writer, mut tx) = open_writer::<u64>(&name, &run);
        // Counting what is in flight, with credit for more than the ring holds.
        tx.set_capacity(100_000);
        let items: Vec<u64> = (0..4096).collect();
        let mut written = 0;
        // Ends: the ring holds 8 KiB, fewer than 4096 u64. The last write arms the watcher
        // for room.
        loop {
            let n = tx.write(&items[written..]).unwrap();
            if n == 0 {
                break;
            }
            written += n;
        }
        poll(
            "the watcher waits for room",
            || tx.watch.armed.lock().unwrap().next.is_none(),
            || (),
        );
        // Out of element credit now: the writer asks to be woken by consumption.
        tx.set_capacity(1);
        assert_eq!(tx.write(&items[written..]).unwrap(), 0);
        let reader = Arc::new(Inbox::default());
        let credit = spawn_feeder::<u64>(feeder(&name, 8192, &reader, &run)).unwrap();
        reader.wait("what was written delivered", |s| s.items.len() == written);
        let before = writer.credits();
        // One element of the first frame consumed: the frame stays held, the tail stays.
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 1,
        });
        poll(
            "the writer woken by the consumption",
            || writer.credits() > before,
            || (),
        );
        assert_eq!(
            view.header().tail.load(Ordering::SeqCst),
            0,
            "woken by the consumption, not by room"
        );
    }

    /// A writer that asks its watcher again at every step (a writer that drops what it cannot
    /// write steps on), for the same thing or, here, alternately for room and for consumption,
    /// still has its reader looked at every slice: a dead reader fails the run. (Each request
    /// restarted the watcher's wait, and with it the slice after which it looks at the reader:
    /// asked often enough, it never looked.)
    #[test]
    fn a_writer_asking_again_and_again_still_learns_that_its_reader_died() {
        for alternate in [false, true] {
            let (name, _guard, view) = test_ring(&format!("rearmed-dead-{alternate}"), 8 << 10);
            let test = Arc::new(testutil::TestRun::default());
            let run: Run = test.clone();
            let (_writer, mut tx) = open_writer::<u64>(&name, &run);
            tx.set_capacity(100_000);
            let items: Vec<u64> = (0..4096).collect();
            // Ends: the ring holds 8 KiB, fewer than 4096 u64.
            while tx.write(&items).unwrap() > 0 {}
            // The reading process, gone: a pid that was alive and is no more.
            let mut child = std::process::Command::new("true").spawn().unwrap();
            let dead = child.id();
            child.wait().unwrap();
            view.header()
                .id
                .consumer
                .store(Holder::new(dead, 0).0, Ordering::SeqCst);
            let start = Instant::now();
            let mut room = true;
            while test.failure().is_none() {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "never failed (alternate: {alternate})"
                );
                if alternate {
                    // Room, then consumption, then room: a new request every time.
                    tx.set_capacity(if room { 100_000 } else { 1 });
                    room = !room;
                }
                assert_eq!(tx.write(&items).unwrap(), 0);
                std::thread::sleep(Duration::from_millis(1));
            }
            let failure = test.failure().unwrap();
            assert!(failure.contains(&format!("(pid {dead}) died")), "{failure}");
        }
    }

    #[test]
    fn frames_readable_at_once_go_as_one_batch_within_credit() {
        // Five frames of 10 elements wait in the ring before the feeder starts; the reader has
        // credit for 25. The feeder gathers frames while they are readable and the gathered
        // elements are fewer than the credit: 30 from three frames, delivered as one batch of
        // 25 (the credit), the 5 left over waiting for credit. Once the 25 are consumed, those
        // 5 go, then the two other frames as one batch.
        let (name, _guard, _view) = test_ring("feeder-gathers", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<u64>(&name, &run);
        for f in 0..5u64 {
            let items: Vec<u64> = (f * 10..f * 10 + 10).collect();
            assert_eq!(tx.write(&items).unwrap(), 10);
        }
        tx.close();
        let reader = Arc::new(Inbox::default());
        let credit = spawn_feeder::<u64>(feeder(&name, 25, &reader, &run)).unwrap();
        reader.wait("the credit's worth delivered", |s| s.items.len() == 25);
        std::thread::sleep(Duration::from_millis(20)); // nothing more comes without credit
        assert_eq!(reader.seen.lock().unwrap().batches, [25]);
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 25,
        });
        reader.wait("the end of the stream", |s| s.eos);
        let seen = reader.seen.lock().unwrap();
        assert_eq!(seen.items, (0..50).collect::<Vec<_>>());
        assert_eq!(seen.batches, [25, 5, 20]);
        drop(seen);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn a_writer_keeps_its_capacity_in_flight_and_sees_consumption_inside_a_frame() {
        // Capacity 7: a batch of 512 is split at the credit (the ring alone would take 511 in
        // one frame). The reader then consumes 5 of that frame's 7: the frame stays held (a
        // restarted reader must read the other 2 again), yet the writer may write 5 more, as
        // in process: a reader waiting for 3 more elements would otherwise wait forever.
        let (name, _guard, view) = test_ring("writer-credit", 8 << 10);
        let run = test_run();
        let (writer, mut tx) = open_writer::<u64>(&name, &run);
        tx.set_capacity(7);
        let items: Vec<u64> = (0..512).collect();
        assert_eq!(tx.write(&items).unwrap(), 7, "split at the credit");
        assert_eq!(tx.write(&items[7..]).unwrap(), 0, "no credit left");
        assert_eq!(tx.in_flight(), 7);
        let reader = Arc::new(Inbox::default());
        let credit = spawn_feeder::<u64>(feeder(&name, 7, &reader, &run)).unwrap();
        reader.wait("the first 7 delivered", |s| s.items.len() == 7);
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 5,
        });
        poll("the writer woken", || writer.credits() > 0, || ());
        assert_eq!(tx.write(&items[7..]).unwrap(), 5, "5 consumed: 5 more");
        assert_eq!(tx.in_flight(), 7);
        assert_eq!(
            view.header().tail.load(Ordering::SeqCst),
            0,
            "the first frame is not all consumed: held"
        );
        reader.wait("12 delivered", |s| s.items.len() == 12);
        assert_eq!(
            reader.seen.lock().unwrap().items,
            (0..12).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_writer_whose_reader_keeps_up_reports_what_was_in_flight_not_what_it_wrote() {
        // One element at a time, each consumed before the next is written: never more than
        // one in flight. The writer's peak was taken from its own count, read again from the
        // ring only when its credit ran short, so it grew with every element written and the
        // link reported its capacity (100) as its most in flight (found by a user's audit:
        // `iotstream_link_max_in_flight` equal to the capacity on a link that kept up).
        let (name, _guard, view) = test_ring("writer-peak", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<u64>(&name, &run);
        tx.set_capacity(100);
        let reader = Arc::new(Inbox::default());
        let credit = spawn_feeder::<u64>(feeder(&name, 100, &reader, &run)).unwrap();
        let header = view.header();
        for i in 0..350u64 {
            assert_eq!(tx.write(&[i]).unwrap(), 1, "element {i}: credit for it");
            reader.wait("the element delivered", |s| s.items.len() == i as usize + 1);
            credit.post(Envelope::Credit {
                output: 0,
                link: 0,
                n: 1,
            });
            let head = header.head.load(Ordering::SeqCst);
            poll(
                "the element consumed and its frame released",
                || header.tail.load(Ordering::SeqCst) == head,
                || (),
            );
        }
        assert_eq!(
            tx.peak_in_flight(),
            1,
            "one element in flight at most, counted once the credit ran short"
        );
        assert_eq!(
            reader.seen.lock().unwrap().items,
            (0..350).collect::<Vec<_>>()
        );
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn the_feeder_releases_the_ring_only_past_consumed_elements() {
        let (name, _guard, view) = test_ring("feeder-release", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<u64>(&name, &run);
        let header = view.header();
        let tail = || header.tail.load(Ordering::SeqCst);
        // Five frames of three elements; `ends[k]` is where frame k ends in the ring.
        let mut ends = Vec::new();
        for k in 0..5u64 {
            assert_eq!(tx.write(&[3 * k, 3 * k + 1, 3 * k + 2]).unwrap(), 3);
            ends.push(header.head.load(Ordering::SeqCst));
        }
        let reader = Arc::new(Inbox::default());
        let credit = spawn_feeder::<u64>(feeder(&name, 8, &reader, &run)).unwrap();
        let consumed = |n| {
            credit.post(Envelope::Credit {
                output: 0,
                link: 0,
                n,
            })
        };

        reader.wait("the capacity delivered", |s| s.items.len() == 8);
        assert_eq!(tail(), 0, "delivered, not consumed: nothing released");
        consumed(2);
        // The feeder applies consumption before it delivers with the credit that came with it.
        reader.wait("2 more delivered", |s| s.items.len() == 10);
        assert_eq!(tail(), 0, "2 of the first frame's 3 consumed: it stays");
        consumed(1);
        poll(
            "the first frame released",
            || tail() == ends[0],
            || assert!(tail() <= ends[0]),
        );
        consumed(4);
        reader.wait("everything delivered", |s| s.items.len() == 15);
        poll(
            "two frames released",
            || tail() == ends[1],
            || assert!(tail() <= ends[1]),
        );
        assert_eq!(
            reader.seen.lock().unwrap().items,
            (0..15).collect::<Vec<_>>()
        );

        // The reading process dies now: 7 elements consumed (0..=6), 8 delivered and not
        // consumed. A restarted reader takes the ring over and gets everything after the last
        // frame fully consumed: element 6 again (its frame was not finished), and 7..=14.
        run.fail(Error::Runtime {
            detail: "the test ends this reader".into(),
        });
        header
            .id
            .consumer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let mut again =
            Consumer::take_over(Arc::new(Segment::open(&name).unwrap()), holder_alive).unwrap();
        let codec = Codec::<u64>::new();
        let mut got = Vec::new();
        while let Some(items) = again
            .try_read(|p| codec.decode_shared(p, &mut Vec::new()))
            .unwrap()
        {
            got.extend_from_slice(&items.unwrap());
        }
        assert_eq!(got, (6..15).collect::<Vec<_>>());
    }

    /// Collects the strings a feeder delivers.
    #[derive(Default)]
    struct Strings(Mutex<Vec<String>>);

    impl Mailbox for Strings {
        fn post(&self, env: Envelope) {
            if let Envelope::Data { batch, .. } = env {
                let batch = batch.downcast::<String>().unwrap();
                self.0.lock().unwrap().extend_from_slice(batch.as_slice());
            }
        }
    }

    #[test]
    fn the_parts_of_a_large_element_stay_held_until_it_is_consumed() {
        // A 6000-byte string in an 8 KiB ring (largest frame 4088 bytes): two parts, then a
        // small element. Delivered and not consumed, nothing is released; a reader taking the
        // ring over then reads the whole element again. Consumed, the ring is released past
        // its last part, never to a position inside it.
        let (name, _guard, view) = test_ring("feeder-parts", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<String>(&name, &run);
        let big: String = (0..6000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let items = vec![big.clone(), "small".to_string()];
        assert_eq!(tx.write(&items).unwrap(), 2);
        assert!(tx.idle(), "both parts fit");
        let header = view.header();
        let tail = || header.tail.load(Ordering::SeqCst);
        let reader = Arc::new(Strings::default());
        let spec = strings_spec(&name, &reader, &run, Arc::default(), "copy");
        let credit = spawn_feeder::<String>(spec).unwrap();
        poll(
            "both delivered",
            || reader.0.lock().unwrap().len() == 2,
            || assert_eq!(tail(), 0),
        );
        assert_eq!(*reader.0.lock().unwrap(), items);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(tail(), 0, "delivered, not consumed: every part stays");
        // Where the big element's parts end: the small element's frame is 8 + 8 + 4 + 6 = 32
        // bytes (header, codec header, record length, postcard "small").
        let end_of_big = header.head.load(Ordering::SeqCst) - 32;
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 1,
        });
        poll(
            "the big element released",
            || tail() == end_of_big,
            || assert!(tail() == 0 || tail() == end_of_big),
        );
        // The reader dies now: a new one reads the small element again, and nothing else.
        run.fail(Error::Runtime {
            detail: "the test ends this reader".into(),
        });
        header
            .id
            .consumer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let mut again =
            Consumer::take_over(Arc::new(Segment::open(&name).unwrap()), holder_alive).unwrap();
        let mut r = Reader::<String>::new();
        let mut got = Vec::new();
        while let Some(frame) = again.try_read(|p| r.read(p)).unwrap() {
            match frame.unwrap() {
                Decoded::Batch(b) => got.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, ["small"]);
    }

    #[test]
    fn a_reader_taking_over_reads_an_unconsumed_large_element_whole() {
        let (name, _guard, view) = test_ring("feeder-parts-again", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<String>(&name, &run);
        let big = "q".repeat(6000);
        assert_eq!(tx.write(std::slice::from_ref(&big)).unwrap(), 1);
        let reader = Arc::new(Strings::default());
        let spec = strings_spec(&name, &reader, &run, Arc::default(), "copy");
        let _credit = spawn_feeder::<String>(spec).unwrap();
        poll("delivered", || reader.0.lock().unwrap().len() == 1, || ());
        run.fail(Error::Runtime {
            detail: "the test ends this reader".into(),
        });
        view.header()
            .id
            .consumer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let mut again =
            Consumer::take_over(Arc::new(Segment::open(&name).unwrap()), holder_alive).unwrap();
        let mut r = Reader::<String>::new();
        let mut got = Vec::new();
        while let Some(frame) = again.try_read(|p| r.read(p)).unwrap() {
            if let Decoded::Part {
                element: Some(e), ..
            } = frame.unwrap()
            {
                got.extend_from_slice(&e);
            }
        }
        assert_eq!(got, [big], "from its first part");
    }

    #[test]
    fn a_slow_reader_keeps_its_elements_held_while_a_large_element_waits_for_room() {
        // An 8 KiB ring, capacity 8: three 1000-byte strings, then one of 6000 bytes whose
        // second part has no room until the three are consumed. The reader is merely slow: it
        // has not consumed them and never said it waits for more. Nothing may be released
        // early (a reader taking the ring over would start after them: lost); waiting is
        // enough, since once they are consumed the part fits.
        let (name, _guard, view) = test_ring("feeder-slow-open", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<String>(&name, &run);
        let mut items: Vec<String> = (0..3).map(|i| format!("{i}").repeat(1000)).collect();
        let big = "b".repeat(6000);
        items.push(big.clone());
        assert_eq!(tx.write(&items).unwrap(), 4);
        assert!(!tx.idle(), "the large element's second part waits for room");
        let header = view.header();
        let tail = || header.tail.load(Ordering::SeqCst);
        let reader = Arc::new(Strings::default());
        let counters: Arc<LinkCounters> = Arc::default();
        let spec = strings_spec(&name, &reader, &run, Arc::clone(&counters), "slow");
        let credit = spawn_feeder::<String>(spec).unwrap();
        let early = || counters.released_early.load(Ordering::Relaxed);
        poll(
            "the small elements delivered",
            || reader.0.lock().unwrap().len() == 3,
            || (),
        );
        poll(
            "the writer waits for space (or the ring is released)",
            || header.space_wake.waiting.load(Ordering::SeqCst) != 0 || tail() > 0,
            || (),
        );
        // Give a feeder that would wrongly release early the time to do it.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            (early(), tail()),
            (0, 0),
            "a slow reader that never said it waits had elements released early \
             (released_early, tail)"
        );
        // Consumed, they are released, and the large element's last part follows.
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 3,
        });
        poll(
            "the large element written",
            || tx.flush().unwrap(),
            || assert!(!run.is_over(), "the feeder failed"),
        );
        poll(
            "the large element delivered",
            || reader.0.lock().unwrap().len() == 4,
            || assert!(!run.is_over(), "the feeder failed"),
        );
        assert_eq!(*reader.0.lock().unwrap(), items);
        run.fail(Error::Runtime {
            detail: "the test ends".into(),
        });
    }

    #[test]
    fn a_writer_restarted_between_the_parts_of_a_large_element_sends_it_again_and_the_reader_goes_on(
    ) {
        // An 8 KiB ring: a 20000-byte string goes in 5 parts of at most 4080 bytes. The writer
        // writes the first two (the ring is full) and is killed; the restarted writer takes the
        // producer role over and sends the element again from its input, then another. The
        // reader drops the interrupted element and reads both, with no error, and releases
        // the whole ring once they are consumed.
        let (name, _guard, view) = test_ring("feeder-writer-restart", 8 << 10);
        let run = test_run();
        let writer = Arc::new(Inbox::default());
        let mut tx =
            ShmSender::<String>::open(&name, "test", "r", writer.clone(), 0, 0, run.clone())
                .unwrap();
        let big: String = (0..20_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        assert_eq!(tx.write(std::slice::from_ref(&big)).unwrap(), 1);
        assert!(!tx.idle(), "three parts wait for room");
        let header = view.header();
        let reader = Arc::new(Strings::default());
        let counters: Arc<LinkCounters> = Arc::default();
        let spec = strings_spec(&name, &reader, &run, Arc::clone(&counters), "copy");
        let credit = spawn_feeder::<String>(spec).unwrap();
        // The writing process is SIGKILLed, waiting for room for its third part.
        drop(tx);
        header
            .id
            .producer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let mut tx =
            ShmSender::<String>::open(&name, "test", "r", writer.clone(), 0, 0, run.clone())
                .unwrap();
        let items = vec![big.clone(), "next".to_string()];
        let mut accepted = 0;
        poll(
            "the restarted writer's elements written",
            || {
                if tx.flush().unwrap() && accepted < items.len() {
                    accepted += tx.write(&items[accepted..]).unwrap();
                    tx.flush().unwrap();
                }
                accepted == items.len() && tx.idle()
            },
            || assert!(!run.is_over(), "the feeder failed"),
        );
        poll(
            "both delivered",
            || reader.0.lock().unwrap().len() == 2,
            || assert!(!run.is_over(), "the feeder failed"),
        );
        assert_eq!(*reader.0.lock().unwrap(), items);
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 2,
        });
        let head = header.head.load(Ordering::SeqCst);
        poll(
            "everything released once consumed",
            || header.tail.load(Ordering::SeqCst) == head,
            || assert!(!run.is_over(), "the feeder failed"),
        );
        run.fail(Error::Runtime {
            detail: "the test ends".into(),
        });
    }

    /// A next part of a large element at the start of a ring, read by the ring's first reader:
    /// no legitimate writer sends one there (a first part always comes first), so it is
    /// corrupt data, an error. Before, it was skipped as the rest of an element a previous
    /// reader had released early, and the stream ended as if whole.
    #[test]
    fn a_stray_next_part_at_the_start_of_a_ring_is_an_error() {
        let (name, _guard, view) = test_ring("stray-next-part", 8 << 10);
        let mut p = shm::ring::Producer::new(view).unwrap();
        let mut part = vec![4u8, 0, 0, 0];
        part.extend_from_slice(&8u32.to_le_bytes());
        part.extend_from_slice(&[0xee; 8]);
        assert!(p
            .try_write(part.len(), |b| b.copy_from_slice(&part))
            .unwrap());
        let mut batch = vec![1u8, 0, 0, 0];
        batch.extend_from_slice(&1u32.to_le_bytes());
        batch.extend_from_slice(&42u64.to_ne_bytes());
        assert!(p
            .try_write(batch.len(), |b| b.copy_from_slice(&batch))
            .unwrap());
        p.close();
        let test = Arc::new(testutil::TestRun::default());
        let run: Run = test.clone();
        let reader = Arc::new(Inbox::default());
        let spec = feeder(&name, 8, &reader, &run);
        spawn_feeder::<u64>(spec).unwrap();
        poll(
            "the feeder ends",
            || test.failure().is_some() || reader.seen.lock().unwrap().eos,
            || (),
        );
        let failure = test.failure();
        test.end();
        let failure = failure.expect("an error, not the end of the stream");
        assert!(failure.contains("without its first part"), "{failure}");
    }

    /// The pid of a process that surely ended: `true`, spawned and reaped.
    fn dead_pid() -> u32 {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    #[test]
    fn a_slow_reader_that_consumes_what_it_gets_never_has_elements_released_early() {
        // One-element frames (24 bytes each) in an 8 KiB ring: about 340 fit, while the reader
        // has credit for 1 000. The reader is slow: each time the writer is out of space, it
        // first waits until the feeder has delivered everything and the writer sleeps for
        // space, pauses, and only then consumes what it got. Before, the feeder took that
        // pause for a deadlock and released unconsumed frames (lost if the reader died).
        let (name, _guard, view) = test_ring("feeder-slow", 8 << 10);
        let header = view.header();
        let run = test_run();
        let (writer, mut tx) = open_writer::<u64>(&name, &run);
        let reader = Arc::new(Inbox::default());
        let spec = feeder(&name, 1_000, &reader, &run);
        let counters = Arc::clone(&spec.counters);
        let credit = spawn_feeder::<u64>(spec).unwrap();
        const N: u64 = 2_000;
        let (mut written, mut consumed) = (0u64, 0usize);
        let mut pauses = 0;
        while written < N {
            let rooms = writer.credits();
            if tx.write(&[written]).unwrap() == 1 {
                written += 1;
                continue;
            }
            reader.wait("everything written delivered", |s| {
                s.items.len() as u64 == written
            });
            poll(
                "the writer sleeping for space (or given room without consumption)",
                || {
                    header.space_wake.waiting.load(Ordering::SeqCst) != 0
                        || writer.credits() > rooms
                },
                || {},
            );
            std::thread::sleep(Duration::from_millis(20)); // a slow step
            pauses += 1;
            let delivered = reader.seen.lock().unwrap().items.len();
            credit.post(Envelope::Credit {
                output: 0,
                link: 0,
                n: delivered - consumed,
            });
            consumed = delivered;
            writer.wait("room in the ring", |s| s.credits > rooms);
        }
        tx.close();
        reader.wait("the end of the stream", |s| s.eos);
        assert!(pauses >= 5, "the ring filled up {pauses} times");
        assert_eq!(
            counters.released_early.load(Ordering::Relaxed),
            0,
            "nothing released before it was consumed"
        );
        assert_eq!(
            reader.seen.lock().unwrap().items,
            (0..N).collect::<Vec<_>>()
        );
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn a_ring_full_of_unconsumed_elements_is_released_early_when_the_writer_waits() {
        // The reader has credit for everything but consumes nothing (an agent waiting for more
        // elements than the ring holds) and says so after each step: without the fallback,
        // writer and feeder would wait for each other forever.
        let (name, _guard, view) = test_ring("feeder-fallback", 8 << 10);
        let run = test_run();
        let (writer, mut tx) = open_writer::<u64>(&name, &run);
        let reader = Arc::new(Inbox::default());
        let spec = feeder(&name, 1_000_000, &reader, &run);
        let counters = Arc::clone(&spec.counters);
        let credit = spawn_feeder::<u64>(spec).unwrap();
        const N: u64 = 20_000; // 160 KB through 8 KiB
        let items: Vec<u64> = (0..N).collect();
        let mut done = 0;
        while done < items.len() {
            let rooms = writer.credits();
            let n = tx
                .write(&items[done..done + 100.min(items.len() - done)])
                .unwrap();
            done += n;
            if n == 0 {
                // The reader's step over everything delivered consumed nothing; a report made
                // while the feeder was still delivering does not count, so say it again until
                // the writer gets room.
                writer.wait("room in the ring", |s| {
                    credit.reader_waits(reader.seen.lock().unwrap().items.len());
                    s.credits > rooms
                });
            }
        }
        tx.close();
        reader.wait("the end of the stream", |s| s.eos);
        assert_eq!(
            reader.seen.lock().unwrap().items,
            items,
            "each once, in order"
        );
        let early = counters.released_early.load(Ordering::Relaxed);
        assert!(early > 0 && early <= N, "released early: {early}");
        assert_eq!(counters.elements.load(Ordering::Relaxed), N);
        // What was never released early is still held: the last frames, unconsumed.
        assert!(
            view.header().tail.load(Ordering::SeqCst) < view.header().head.load(Ordering::SeqCst)
        );
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// An element whose decoding lets "the peer" rewrite the ring in the middle: postcard
    /// hands its visitor the string it has just validated, borrowed from the bytes it decodes;
    /// the visitor then runs `PEER` (which writes into the ring, as a racing process would)
    /// before copying the string, as serde's `String` does.
    #[derive(Clone, Debug, PartialEq, serde::Serialize)]
    struct Racy(String);

    std::thread_local! {
        static PEER: std::cell::RefCell<Option<Box<dyn Fn()>>> = const {
            std::cell::RefCell::new(None)
        };
    }

    impl<'de> serde::Deserialize<'de> for Racy {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Racy, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Racy;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Racy, E> {
                    PEER.with(|p| p.borrow().as_ref().map(|peer| peer()));
                    Ok(Racy(v.to_string()))
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Racy, E> {
                    Ok(Racy(v.to_string()))
                }
            }
            d.deserialize_str(V)
        }
    }

    use std::fmt;

    #[test]
    fn a_frame_rewritten_by_the_peer_during_decoding_decodes_as_written() {
        // A hostile peer rewrites a frame between postcard's UTF-8 check and serde's copy of a
        // string. Decoding straight from the shared bytes reads them twice and builds a string
        // from bytes that were never validated (here valid ones, "jello", so that the test
        // itself stays sound; a peer writing 0xFF plants invalid UTF-8 in a `String`). Decoding
        // reads every shared byte once, into private memory: the value is the one written.
        let ring = shm::ring::HeapRing::new(256).unwrap();
        let mut p = Producer::new(Arc::clone(&ring)).unwrap();
        let mut c = Consumer::new(Arc::clone(&ring)).unwrap();
        let mut reader = Reader::<Racy>::new();
        let items = [Racy("hello".into())];
        let mut tx = Codec::<Racy>::new();
        let Plan::Frame { n, len } = tx.plan(&items, p.max_frame_len()).unwrap() else {
            panic!("a small element")
        };
        assert!(p.try_write(len, |b| tx.write(&items, n, b)).unwrap());
        p.publish();
        // The payload (after the 8-byte frame header): codec header (8), record length (4),
        // postcard string length (1), then "hello" at data offset 21.
        let shared = Arc::clone(&ring);
        PEER.with(|peer| *peer.borrow_mut() = Some(Box::new(move || shared.poke(21, b"j"))));
        let got = c.try_read(|payload| reader.read(payload)).unwrap();
        PEER.with(|peer| *peer.borrow_mut() = None);
        let Some(Ok(Decoded::Batch(got))) = got else {
            panic!("not a batch")
        };
        assert_eq!(got[..], items[..]);
    }

    #[test]
    fn a_dead_peer_is_an_error_unless_supervised_and_not_stopping() {
        let dead = |_| false;
        let seven = Holder::new(7, 70);
        let mut w = PeerWatch::new("reading", "b", "a.out -> b.in");
        assert_eq!(w.check(None, dead, false, false), Ok(()), "no peer yet");
        assert_eq!(
            w.check(Some(seven), |_| true, false, false),
            Ok(()),
            "alive"
        );
        assert_eq!(
            w.check(Some(seven), dead, false, false),
            Err("the reading process 'b' (pid 7) died".to_string())
        );
        assert_eq!(
            w.check(Some(seven), dead, true, false),
            Ok(()),
            "supervised: wait"
        );
        assert_eq!(w.warned, Some(seven));
        assert_eq!(w.check(Some(seven), dead, true, false), Ok(()));
        assert_eq!(
            w.check(Some(seven), dead, true, true),
            Err("the reading process 'b' (pid 7) died".to_string()),
            "supervised, but the application is stopping: nobody will restart it"
        );
        // The same pid, another process (the kernel reused it): warned about again.
        let seven_again = Holder::new(7, 71);
        assert_eq!(w.check(Some(seven_again), dead, true, false), Ok(()));
        assert_eq!(
            w.warned,
            Some(seven_again),
            "a new dead process is warned about again"
        );
    }

    #[test]
    fn no_progress_is_warned_about_once_per_episode() {
        let peer = "reading process 'b'";
        let mut w = ProgressWatch::new(Some(Duration::ZERO), 64);
        assert!(
            w.check(64, "a.out -> b.in", peer, Some(7)),
            "no move: warned"
        );
        assert!(
            !w.check(64, "a.out -> b.in", peer, Some(7)),
            "once, not a flood"
        );
        assert!(
            !w.check(128, "a.out -> b.in", peer, Some(7)),
            "it moved: episode over"
        );
        assert!(
            w.check(128, "a.out -> b.in", peer, Some(7)),
            "a new episode warns again"
        );
        let mut never = ProgressWatch::new(None, 0);
        assert!(
            !never.check(0, "a.out -> b.in", peer, Some(7)),
            "0: never warns"
        );
        let mut patient = ProgressWatch::new(Some(Duration::from_secs(3600)), 0);
        assert!(!patient.check(0, "a.out -> b.in", peer, Some(7)), "not yet");
    }

    #[test]
    fn rings_are_sized_from_frames_between_8_kib_and_256_mib() {
        assert_eq!(
            ring_bytes::<u64>(1024),
            64 << 10,
            "1 025 frames of 24 bytes, twice"
        );
        assert_eq!(ring_bytes::<u64>(1), 8 << 10, "at least 8 KiB");
        assert_eq!(ring_bytes::<u64>(usize::MAX), 256 << 20, "at most 256 MiB");
    }

    /// Writes `capacity` frames of one element each into a ring of `ring_bytes::<T>(capacity)`
    /// starting at data offset `start`, with nothing released (a reader holding its whole
    /// credit unconsumed, in the worst layout), and checks that they took at most half the
    /// ring: the other half is the writer's largest frame.
    fn credit_as_single_frames_fits_half<T: Element>(capacity: usize, start: usize, item: T) {
        let bytes = ring_bytes::<T>(capacity);
        let ring = shm::ring::HeapRing::new(bytes).unwrap();
        let mut p = Producer::new(Arc::clone(&ring)).unwrap();
        let mut c = Consumer::new(Arc::clone(&ring)).unwrap();
        let start = start % bytes / 8 * 8;
        while (c.position() as usize) < start {
            let len = (start - c.position() as usize - 8).min(p.max_frame_len()) / 8 * 8;
            assert!(p.try_write(len, |_| {}).unwrap());
            p.publish();
            c.try_read(|_| ()).unwrap().unwrap();
            c.release().unwrap();
        }
        let before = c.position();
        let mut codec = Codec::<T>::new();
        let items = [item];
        for k in 0..capacity {
            let codec::Plan::Frame { n, len } = codec.plan(&items, p.max_frame_len()).unwrap()
            else {
                panic!("one small element is one frame");
            };
            let written = p.try_write(len, |buf| codec.write(&items, n, buf)).unwrap();
            assert!(
                written,
                "frame {k} of {capacity} did not fit a ring of {bytes} bytes"
            );
        }
        p.publish();
        while c.try_read(|_| ()).unwrap().is_some() {}
        let held = c.position() - before;
        assert!(
            held <= bytes as u64 / 2,
            "{capacity} one-element frames of {} took {held} of {bytes} ring bytes",
            std::any::type_name::<T>()
        );
    }

    #[test]
    fn the_credit_of_a_link_as_one_element_frames_fits_half_its_ring() {
        for capacity in [1, 4, 16, 100, 127, 128, 255, 1000, 1024, 4096, 20_000] {
            for start in [0, 8, 4096, 5000, 8176, 12_345, 40_000] {
                credit_as_single_frames_fits_half(capacity, start, 7u8);
                credit_as_single_frames_fits_half(capacity, start, 7u32);
                credit_as_single_frames_fits_half(capacity, start, 7u64);
                credit_as_single_frames_fits_half(capacity, start, 7u128);
            }
        }
    }

    /// Review finding 3: the writer waited for room for its largest frame (half the ring) even
    /// with nearly that much free before the end, while the reader's few unconsumed elements
    /// pinned their frames; the feeder then released them early. A count window of 4 on a
    /// connection of capacity 100 must get every element without any early release.
    #[test]
    fn a_window_of_4_with_capacity_100_gets_every_element_without_early_release() {
        assert_eq!(ring_bytes::<u64>(100), 8 << 10);
        let (name, _guard, view) = test_ring("window-of-4", 8 << 10);
        let run = test_run();
        let writer = Arc::new(Inbox::default());
        let mut tx =
            ShmSender::<u64>::open(&name, "test", "window4", writer.clone(), 0, 0, run.clone())
                .unwrap();
        let items: Vec<u64> = (0..2000).collect();
        assert_eq!(tx.write(&items[..1]).unwrap(), 1);
        assert_eq!(tx.write(&items[1..511]).unwrap(), 510, "one largest frame");
        // 4120 bytes written, 4072 free before the end of the ring: 507 elements fit there.
        let third = tx.write(&items[511..1021]).unwrap();
        let head = view.header().head.load(Ordering::SeqCst);
        assert_eq!(
            third, 507,
            "the writer writes what fits before the end (head {head})"
        );
        let mut sent = 511 + third;

        let reader = Arc::new(Inbox::default());
        let spec = feeder(&name, 100, &reader, &run);
        let counters = Arc::clone(&spec.counters);
        let credit = spawn_feeder::<u64>(spec).unwrap();
        // The reader: a count window of 4 (consumes whole windows, waits with the rest).
        let mut consumed = 0;
        poll(
            "every element delivered and consumed",
            || {
                if sent < items.len() {
                    sent += tx.write(&items[sent..]).unwrap();
                }
                let delivered = reader.seen.lock().unwrap().items.len();
                let upto = delivered / 4 * 4;
                if upto > consumed {
                    credit.post(Envelope::Credit {
                        output: 0,
                        link: 0,
                        n: upto - consumed,
                    });
                    consumed = upto;
                } else if delivered > consumed {
                    credit.reader_waits(delivered - consumed);
                }
                consumed == items.len()
            },
            || {
                let early = counters.released_early.load(Ordering::Relaxed);
                assert_eq!(
                    early, 0,
                    "elements released before the window consumed them"
                );
            },
        );
        assert_eq!(reader.seen.lock().unwrap().items, items);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// The fallback releases as little as the writer needs: one frame, into which the writer
    /// (which writes what fits) goes on. Before, it released frames until the ring had room for
    /// a largest frame plus a wrap: several frames' elements lost their protection for one.
    #[test]
    fn the_fallback_releases_one_frame_when_that_gives_the_writer_room() {
        let (name, _guard, view) = test_ring("fallback-one-frame", 8 << 10);
        let run = test_run();
        let (writer, mut tx) = open_writer::<u64>(&name, &run);
        // Frames of 100 elements (816 bytes) until not one element more fits.
        let items: Vec<u64> = (0..2000).collect();
        let mut sent = 0;
        while sent < items.len() {
            let n = tx
                .write(&items[sent..(sent + 100).min(items.len())])
                .unwrap();
            if n == 0 {
                break;
            }
            sent += n;
        }
        assert!(sent < items.len(), "the ring is full");
        let first_frame_end = 816;
        let reader = Arc::new(Inbox::default());
        let spec = feeder(&name, 1_000_000, &reader, &run);
        let counters = Arc::clone(&spec.counters);
        let credit = spawn_feeder::<u64>(spec).unwrap();
        reader.wait("everything written delivered", |s| s.items.len() == sent);
        // The reader consumes nothing and waits for more (as a window larger than the ring).
        writer.wait("room in the ring", |s| {
            credit.reader_waits(sent);
            s.credits > 0
        });
        assert_eq!(
            view.header().tail.load(Ordering::SeqCst),
            first_frame_end,
            "released past the first frame only"
        );
        // Counted right after the release, which the writer may see first.
        let early = || counters.released_early.load(Ordering::Relaxed);
        poll(
            "the first frame's 100 elements counted",
            || early() >= 100,
            || (),
        );
        assert_eq!(early(), 100, "the first frame's elements only");
        let more = tx.write(&items[sent..]).unwrap();
        assert!(more > 0, "the writer writes into the room it got");
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A large element's next part is shortened to the room the ring has, rather than waiting
    /// for room for a largest frame while the reader's unconsumed elements pin theirs; the
    /// reader reassembles the element from parts of any length.
    #[test]
    fn a_large_elements_part_is_shortened_to_the_room_there_is() {
        let (name, _guard, view) = test_ring("short-part", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<String>(&name, &run);
        // 3000 bytes held, then a 6000-byte element: its first part (4088 bytes) fits, the
        // rest (about 1900 bytes) does not fit the 1100 bytes left: a shorter part fills them.
        let small = "s".repeat(2980);
        let big: String = (0..6000).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let items = vec![small, big];
        assert_eq!(tx.write(&items).unwrap(), 2);
        assert!(!tx.idle(), "the last part waits for room");
        let header = view.header();
        assert_eq!(
            header.head.load(Ordering::SeqCst),
            8 << 10,
            "the ring is filled to the end"
        );
        let reader = Arc::new(Strings::default());
        let spec = strings_spec(&name, &reader, &run, Arc::default(), "copy");
        let credit = spawn_feeder::<String>(spec).unwrap();
        poll(
            "the small element delivered",
            || reader.0.lock().unwrap().len() == 1,
            || (),
        );
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 1,
        });
        poll(
            "the rest of the large element written and delivered",
            || {
                let _ = tx.flush().unwrap();
                reader.0.lock().unwrap().len() == 2
            },
            || (),
        );
        assert_eq!(*reader.0.lock().unwrap(), items);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    // -----------------------------------------------------------------------------------------
    // Marks across a ring

    /// What a host received on one input, in order.
    #[derive(Debug, Clone, PartialEq)]
    enum Ev<T> {
        El(T),
        M(Mark),
        Eos,
    }

    /// A host's mailbox that logs elements, marks and the end of stream in order.
    struct Log<T>(Mutex<Vec<Ev<T>>>);

    impl<T> Default for Log<T> {
        fn default() -> Self {
            Log(Mutex::new(Vec::new()))
        }
    }

    impl<T: Element> Mailbox for Log<T> {
        fn post(&self, env: Envelope) {
            let mut log = self.0.lock().unwrap();
            match env {
                Envelope::Data { batch, .. } => log.extend(
                    batch
                        .downcast::<T>()
                        .unwrap()
                        .as_slice()
                        .iter()
                        .cloned()
                        .map(Ev::El),
                ),
                Envelope::Mark { mark, .. } => log.push(Ev::M(mark)),
                Envelope::Eos { .. } => log.push(Ev::Eos),
                _ => {}
            }
        }
    }

    impl<T: Clone> Log<T> {
        fn get(&self) -> Vec<Ev<T>> {
            self.0.lock().unwrap().clone()
        }
        fn elements(&self) -> usize {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter(|e| matches!(e, Ev::El(_)))
                .count()
        }
    }

    /// A feeder of ring `name` to `log`'s input 0, with credit for `capacity` elements.
    fn log_feeder<T: Element>(
        name: &str,
        capacity: usize,
        log: &Arc<Log<T>>,
        run: &Run,
    ) -> FeederSpec {
        FeederSpec {
            segment: name.to_string(),
            target: Arc::clone(log) as Arc<dyn Mailbox>,
            input: 0,
            capacity,
            counters: Arc::default(),
            count_traffic: true,
            label: "timed.out -> obs.in".into(),
            peer: "timed".into(),
            run: run.clone(),
            stopped: |_| false,
            spin: None,
        }
    }

    /// Credits back every element `log` received that `consumed` does not count yet: a reader
    /// that consumes whatever it gets.
    fn consume_all<T: Clone>(log: &Log<T>, credit: &Arc<dyn Mailbox>, consumed: &mut usize) {
        let got = log.elements();
        if got > *consumed {
            credit.post(Envelope::Credit {
                output: 0,
                link: 0,
                n: got - *consumed,
            });
            *consumed = got;
        }
    }

    #[test]
    fn marks_between_batches_come_out_in_order_within_credit_and_survive_a_restarted_reader() {
        use Ev::*;
        let (name, _guard, view) = test_ring("feeder-marks", 8 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<u64>(&name, &run);
        let header = view.header();
        let head = || header.head.load(Ordering::SeqCst);
        let tail = || header.tail.load(Ordering::SeqCst);
        assert_eq!(tx.write(&[1, 2]).unwrap(), 2);
        let first = head();
        assert!(tx.write_mark(Mark::Watermark(2)).unwrap());
        assert!(tx.write_mark(Mark::Idle).unwrap());
        let marks = head();
        assert_eq!(marks - first, 2 * 24, "a mark frame: 8 + 16 bytes");
        assert_eq!(tx.write(&[3]).unwrap(), 1);
        assert!(tx.write_mark(Mark::Watermark(3)).unwrap());
        // Credit for one element: the marks wait behind the element that waits for credit.
        let log = Arc::new(Log::<u64>::default());
        let credit = spawn_feeder::<u64>(log_feeder(&name, 1, &log, &run)).unwrap();
        poll("1 delivered", || log.get() == [El(1)], || ());
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            log.get(),
            [El(1)],
            "nothing overtakes the element waiting for credit"
        );
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 1,
        });
        poll(
            "2 and the marks after it",
            || log.get() == [El(1), El(2), M(Mark::Watermark(2)), M(Mark::Idle)],
            || assert!(log.get().len() <= 4),
        );
        assert_eq!(tail(), 0, "2 delivered, not consumed: nothing released");
        credit.post(Envelope::Credit {
            output: 0,
            link: 0,
            n: 1,
        });
        poll(
            "the first frame and the two delivered marks released",
            || tail() == marks,
            || assert!(tail() == 0 || tail() == marks),
        );
        poll("everything delivered", || log.get().len() == 6, || ());
        assert_eq!(
            log.get(),
            [
                El(1),
                El(2),
                M(Mark::Watermark(2)),
                M(Mark::Idle),
                El(3),
                M(Mark::Watermark(3))
            ]
        );
        // The reading process dies with 3 delivered and not consumed: a reader taking over
        // gets 3 and the mark after it again, in order; nothing before it.
        run.fail(Error::Runtime {
            detail: "the test ends this reader".into(),
        });
        header
            .id
            .consumer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let mut again =
            Consumer::take_over(Arc::new(Segment::open(&name).unwrap()), holder_alive).unwrap();
        let mut r = Reader::<u64>::new();
        let mut got = Vec::new();
        while let Some(frame) = again.try_read(|p| r.read(p)).unwrap() {
            match frame.unwrap() {
                Decoded::Batch(b) => got.extend(b.iter().map(|&v| El(v))),
                Decoded::Mark(m) => got.push(M(m)),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got, [El(3), M(Mark::Watermark(3))]);
    }

    #[test]
    fn a_mark_behind_a_full_ring_waits_and_goes_once_there_is_room() {
        let (name, _guard, _view) = test_ring("feeder-mark-full", 8 << 10);
        let run = test_run();
        let (writer, mut tx) = open_writer::<u64>(&name, &run);
        let items: Vec<u64> = (0..10_000).collect();
        let n = tx.write(&items).unwrap();
        assert!(n > 0 && n < items.len(), "the ring takes {n}");
        assert!(!tx.write_mark(Mark::Watermark(41)).unwrap(), "no room");
        assert_eq!(writer.credits(), 0);
        let log = Arc::new(Log::<u64>::default());
        let credit = spawn_feeder::<u64>(log_feeder(&name, 1 << 20, &log, &run)).unwrap();
        let mut consumed = 0;
        poll(
            "room for the mark",
            || {
                consume_all(&log, &credit, &mut consumed);
                writer.credits() > 0 && tx.write_mark(Mark::Watermark(41)).unwrap()
            },
            || (),
        );
        tx.close();
        poll(
            "the end of stream",
            || log.get().last() == Some(&Ev::Eos),
            || (),
        );
        let mut want: Vec<Ev<u64>> = items[..n].iter().map(|&v| Ev::El(v)).collect();
        want.extend([Ev::M(Mark::Watermark(41)), Ev::Eos]);
        assert_eq!(log.get(), want);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn a_restarted_writer_counts_its_dead_predecessors_frames_in_flight() {
        let (name, _guard, view) = test_ring("credit-after-restart", 64 << 10);
        let run = test_run();
        let big = "y".repeat(20_000);
        let (_writer, mut tx) = open_writer::<String>(&name, &run);
        tx.set_capacity(4);
        // Three small elements, a mark, and a large element in parts: four in flight.
        let small: Vec<String> = (0..3).map(|i| i.to_string()).collect();
        assert_eq!(tx.write(&small).unwrap(), 3);
        assert!(tx.write_mark(Mark::Idle).unwrap());
        assert_eq!(tx.write(std::slice::from_ref(&big)).unwrap(), 1);
        assert!(tx.flush().unwrap(), "the parts fit the ring");
        assert_eq!(tx.in_flight(), 4);
        assert_eq!(tx.write(&small).unwrap(), 0, "no credit left");
        // The writing process dies; its replacement takes the ring over.
        drop(tx);
        view.header()
            .id
            .producer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let (_writer, mut tx) = open_writer::<String>(&name, &run);
        tx.set_capacity(4);
        // Before, it counted none of them and took four more (eight in flight).
        assert_eq!(tx.in_flight(), 4);
        assert_eq!(
            tx.write(&small).unwrap(),
            0,
            "the dead writer's four are in flight"
        );
        // The reader consumes the first two (as a feeder says: `consumed` past its tail): two
        // may go; once it releases every frame, four.
        let mut reader = Consumer::take_over(view, holder_alive).unwrap();
        reader.release_consumed(2, None).unwrap();
        assert_eq!(tx.write(&small).unwrap(), 2);
        while reader.try_read(|_| ()).unwrap().is_some() {}
        reader.release_consumed(0, Some(reader.position())).unwrap();
        assert_eq!(tx.write(&small).unwrap(), 3, "everything released");
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn a_mark_that_finds_no_room_after_an_elements_last_parts_still_publishes_them() {
        // Element sizes around twice the ring's: for some of them the parts that finish the
        // element (in the room the reader handed back) leave less room than a mark's frame.
        // The reader reads and hands back everything published before each offer of the mark.
        let mut finished_without_the_mark = 0;
        for extra in (0..2048).step_by(8) {
            let (name, _guard, view) = test_ring("mark-after-last-parts", 8 << 10);
            let run = test_run();
            let (_writer, mut tx) = open_writer::<String>(&name, &run);
            let big = "x".repeat(15_000 + extra);
            assert_eq!(tx.write(std::slice::from_ref(&big)).unwrap(), 1);
            let mut reader = Consumer::new(view).unwrap();
            let mut offers = 0;
            loop {
                while reader.try_read(|_| ()).unwrap().is_some() {}
                reader.release().unwrap();
                let sent = tx.write_mark(Mark::Idle).unwrap();
                assert!(
                    !tx.producer.unpublished(),
                    "element of {} bytes: written parts left unpublished",
                    big.len()
                );
                if sent {
                    break;
                }
                if tx.idle() {
                    finished_without_the_mark += 1;
                }
                offers += 1;
                assert!(offers < 1000, "the mark never went");
            }
            run.fail(Error::Runtime {
                detail: "the test is over".into(),
            });
        }
        assert!(
            finished_without_the_mark > 0,
            "no size left the mark without room after the last part: the test tests nothing"
        );
    }

    #[test]
    fn a_mark_after_a_large_element_goes_after_its_last_part() {
        let (name, _guard, _view) = test_ring("feeder-mark-large", 8 << 10);
        let run = test_run();
        let (writer, mut tx) = open_writer::<String>(&name, &run);
        let big: String = (0..20_000)
            .map(|i| (b'a' + (i % 26) as u8) as char)
            .collect();
        assert_eq!(tx.write(std::slice::from_ref(&big)).unwrap(), 1);
        assert!(!tx.idle(), "parts wait for room");
        assert!(
            !tx.write_mark(Mark::Watermark(7)).unwrap(),
            "a mark never comes between the parts"
        );
        let log = Arc::new(Log::<String>::default());
        let credit = spawn_feeder::<String>(log_feeder(&name, 8, &log, &run)).unwrap();
        let mut consumed = 0;
        let mut sent = false;
        poll(
            "the parts and the mark written",
            || {
                consume_all(&log, &credit, &mut consumed);
                if writer.credits() > 0 && !sent {
                    sent = tx.write_mark(Mark::Watermark(7)).unwrap();
                }
                sent
            },
            || assert!(log.get().len() <= 1, "nothing before the element"),
        );
        assert!(tx.idle());
        tx.close();
        poll(
            "the end of stream",
            || log.get().last() == Some(&Ev::Eos),
            || (),
        );
        assert_eq!(log.get(), [Ev::El(big), Ev::M(Mark::Watermark(7)), Ev::Eos]);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// The frames published in `reader`'s ring since its last release, decoded (elements as
    /// `Ok`, marks as `Err`), and released.
    fn read_frames(reader: &mut Consumer<Arc<Segment>>) -> Vec<Result<u64, Mark>> {
        let mut r = Reader::<u64>::new();
        let mut got = Vec::new();
        while let Some(frame) = reader.try_read(|p| r.read(p)).unwrap() {
            match frame.unwrap() {
                Decoded::Batch(b) => got.extend(b.iter().copied().map(Ok)),
                Decoded::Mark(m) => got.push(Err(m)),
                other => panic!("{other:?}"),
            }
        }
        reader.release().unwrap();
        got
    }

    /// The elements published in `reader`'s ring since its last release (no mark among them),
    /// and released.
    fn read_published(reader: &mut Consumer<Arc<Segment>>) -> Vec<u64> {
        read_frames(reader)
            .into_iter()
            .map(|frame| frame.expect("elements only"))
            .collect()
    }

    fn ring_link_spec(capacity: usize) -> LinkSpec {
        LinkSpec {
            mailbox: None,
            input: 0,
            capacity,
            capacity_bytes: usize::MAX,
            need: 0,
            policy: crate::stream::Policy::Block,
            counters: Arc::default(),
            label: "numbers.out -> slow.in".into(),
            reader: 1,
        }
    }

    /// An output of `u64` whose only link writes into a new ring of `bytes` (credit for a
    /// million elements), and the ring's reader.
    fn ring_output(
        test: &str,
        bytes: usize,
    ) -> (
        UnlinkGuard,
        Run,
        crate::port::OutBuf<u64>,
        Consumer<Arc<Segment>>,
    ) {
        let o = ring_output_with(test, bytes, 1 << 20, crate::stream::Policy::Block);
        (o._guard, o.run, o.out, o.reader)
    }

    /// An output of `u64` whose only link writes into a ring, and what a test looks at.
    struct RingOutput {
        name: String,
        _guard: UnlinkGuard,
        run: Run,
        out: crate::port::OutBuf<u64>,
        /// The link's counters.
        link: Arc<LinkCounters>,
        reader: Consumer<Arc<Segment>>,
    }

    /// [`ring_output`] with the link's element credit `capacity` and `policy`.
    fn ring_output_with(
        test: &str,
        bytes: usize,
        capacity: usize,
        policy: crate::stream::Policy,
    ) -> RingOutput {
        use crate::port::OutSlot;
        let (name, guard, view) = test_ring(test, bytes);
        let run = test_run();
        let wake: Arc<dyn Mailbox> = Arc::new(Inbox::default());
        let link: Arc<LinkCounters> = Arc::default();
        let mut out = crate::port::OutBuf::<u64>::new();
        let spec = LinkSpec {
            policy,
            counters: Arc::clone(&link),
            ..ring_link_spec(capacity)
        };
        out.add_shm_link(&name, spec, wake, 0, run.clone(), "slow")
            .unwrap();
        let reader = Consumer::new(Arc::new(view)).unwrap();
        RingOutput {
            name,
            _guard: guard,
            run,
            out,
            link,
            reader,
        }
    }

    /// Elements made in a ring take the connection's element credit as written ones do: at
    /// most `capacity` in flight; more only once the reader releases what it read.
    #[test]
    fn elements_made_in_a_ring_take_no_more_than_the_element_credit() {
        let RingOutput {
            _guard,
            run,
            mut out,
            link,
            mut reader,
            ..
        } = ring_output_with("make-credit", 64 << 10, 10, crate::stream::Policy::Block);
        let (made, panic) = out.make_through(100, |i| i as u64);
        assert!(panic.is_none());
        assert_eq!(made, 10, "the credit, not the ring's room");
        assert!(out.makes_through());
        assert_eq!(
            out.make_through(100, |i| 100 + i as u64).0,
            0,
            "no credit left"
        );
        assert_eq!(read_published(&mut reader), (0..10).collect::<Vec<u64>>());
        assert_eq!(out.make_through(100, |i| 10 + i as u64).0, 10);
        assert_eq!(read_published(&mut reader), (10..20).collect::<Vec<u64>>());
        assert_eq!(link.elements.load(Ordering::Relaxed), 20);
        assert!(link.max_in_flight.load(Ordering::Relaxed) <= 10);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A step that makes some elements in the ring and appends the rest is one batch of the
    /// stream (`StreamStats::batches`: one per step that appended anything).
    #[test]
    fn a_step_made_partly_in_a_ring_counts_one_batch() {
        use crate::port::OutSlot;
        let (_guard, run, mut out, mut reader) = ring_output("make-batches", 8 << 10);
        let counters = Arc::new(crate::metrics::StreamCounters::default());
        out.set_counters(Arc::clone(&counters));
        let count = 5_000usize;
        let (made, _) = out.make_through(count, |i| i as u64);
        assert!(made > 0 && made < count, "{made}");
        out.pending().extend((made..count).map(|i| i as u64));
        out.flush();
        assert_eq!(counters.elements.load(Ordering::Relaxed), count as u64);
        assert_eq!(
            counters.batches.load(Ordering::Relaxed),
            1,
            "one step, one batch"
        );
        // Once the stash is through, the next step counts its own.
        let mut got = Vec::new();
        while !out.makes_through() {
            got.extend(read_published(&mut reader));
            out.credit(0, 0);
            assert!(got.len() <= count, "no more than was sent");
        }
        got.extend(read_published(&mut reader));
        assert_eq!(got, (0..count as u64).collect::<Vec<_>>());
        assert_eq!(out.make_through(3, |i| i as u64).0, 3);
        out.flush();
        assert_eq!(counters.batches.load(Ordering::Relaxed), 2);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A mark set after elements made in a full ring waits behind them in the link's stash;
    /// while it waits nothing is made in the ring (it would overtake the mark); once the reader
    /// makes room the mark goes, and what is made next follows it.
    #[test]
    fn a_stashed_mark_is_never_overtaken_by_elements_made_in_the_ring() {
        use crate::port::OutSlot;
        let (_guard, run, mut out, mut reader) = ring_output("make-mark", 8 << 10);
        let (made, _) = out.make_through(100_000, |i| i as u64);
        assert!(made > 0 && made < 100_000);
        out.set_mark(Mark::Watermark(7));
        out.flush();
        assert!(!out.makes_through(), "a mark waits in the stash");
        assert_eq!(out.make_through(5, |_| 999).0, 0);
        let mut got = read_frames(&mut reader);
        out.credit(0, 0);
        assert!(out.makes_through(), "the mark went");
        assert_eq!(out.make_through(3, |i| 1_000_000 + i as u64).0, 3);
        got.extend(read_frames(&mut reader));
        let mut expected: Vec<Result<u64, Mark>> = (0..made as u64).map(Ok).collect();
        expected.push(Err(Mark::Watermark(7)));
        expected.extend((1_000_000..1_000_003).map(Ok));
        assert_eq!(got, expected);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// Under `DropNewest`, what the ring takes is made in it and what it does not take, once
    /// appended and flushed, is dropped and counted, never sent later.
    #[test]
    fn drop_newest_drops_what_a_full_ring_does_not_take_after_elements_made_in_it() {
        use crate::port::OutSlot;
        let RingOutput {
            _guard,
            run,
            mut out,
            link,
            mut reader,
            ..
        } = ring_output_with(
            "make-drop-newest",
            64 << 10,
            100,
            crate::stream::Policy::DropNewest,
        );
        let (made, _) = out.make_through(150, |i| i as u64);
        assert_eq!(made, 100);
        out.pending().extend(100..150u64);
        out.flush();
        assert_eq!(link.dropped.load(Ordering::Relaxed), 50);
        assert_eq!(link.elements.load(Ordering::Relaxed), 100);
        assert!(out.makes_through(), "nothing waits under DropNewest");
        out.credit(0, 0);
        assert_eq!(read_published(&mut reader), (0..100).collect::<Vec<u64>>());
        assert_eq!(out.make_through(2, |i| 500 + i as u64).0, 2);
        assert_eq!(read_published(&mut reader), [500, 501]);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// Under `DropOldest`, elements waiting in the stash stop elements being made in the ring;
    /// the stash keeps the newest `capacity`.
    #[test]
    fn drop_oldest_elements_waiting_in_the_stash_stop_making_in_the_ring() {
        use crate::port::OutSlot;
        let RingOutput {
            _guard,
            run,
            mut out,
            link,
            mut reader,
            ..
        } = ring_output_with(
            "make-drop-oldest",
            64 << 10,
            100,
            crate::stream::Policy::DropOldest,
        );
        assert_eq!(out.make_through(100, |i| i as u64).0, 100);
        out.flush();
        // A second step: no credit, all 300 go to the stash, the oldest 200 dropped.
        assert_eq!(out.make_through(300, |i| 100 + i as u64).0, 0);
        out.pending().extend(100..400u64);
        out.flush();
        assert_eq!(link.dropped.load(Ordering::Relaxed), 200);
        assert!(!out.makes_through(), "the newest wait in the stash");
        assert_eq!(read_published(&mut reader), (0..100).collect::<Vec<u64>>());
        out.credit(0, 0);
        assert!(out.makes_through());
        assert_eq!(
            read_published(&mut reader),
            (300..400).collect::<Vec<u64>>()
        );
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A drop policy's stash is lost with its writer's process (its agent was told the
    /// elements were taken): the writer that takes the ring over counts them as dropped, once,
    /// and never more than its capacity, whatever the ring says.
    #[test]
    fn a_restarted_writer_counts_the_drop_stash_its_dead_predecessor_lost() {
        use crate::port::OutSlot;
        let RingOutput {
            name,
            _guard,
            run,
            mut out,
            link,
            mut reader,
        } = ring_output_with(
            "stash-lost",
            64 << 10,
            100,
            crate::stream::Policy::DropOldest,
        );
        out.pending().extend(0..100u64);
        out.flush();
        // No credit left: 250 go to the stash, which keeps the newest 100.
        out.pending().extend(100..350u64);
        out.flush();
        assert_eq!(link.dropped.load(Ordering::Relaxed), 150);
        // The writing process dies with 100 in its stash; its replacement takes the ring over.
        drop(out);
        let header = reader.memory().header();
        header
            .id
            .producer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let restarted = |policy| {
            let counters: Arc<LinkCounters> = Arc::default();
            let spec = LinkSpec {
                policy,
                counters: Arc::clone(&counters),
                ..ring_link_spec(100)
            };
            let mut out = crate::port::OutBuf::<u64>::new();
            let wake: Arc<dyn Mailbox> = Arc::new(Inbox::default());
            out.add_shm_link(&name, spec, wake, 0, run.clone(), "slow")
                .unwrap();
            (out, counters)
        };
        let (out, counters) = restarted(crate::stream::Policy::DropOldest);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 100);
        // Counted once: the next writer after this one (which held nothing) counts none.
        drop(out);
        header
            .id
            .producer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let (out, counters) = restarted(crate::stream::Policy::DropOldest);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 0);
        // A wild value (another process wrote it) counts at most the capacity.
        drop(out);
        header.id.stashed.store(u64::MAX, Ordering::SeqCst);
        header
            .id
            .producer
            .store(Holder::new(dead_pid(), 0).0, Ordering::SeqCst);
        let (_out, counters) = restarted(crate::stream::Policy::DropOldest);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 100);
        // What the first writer sent is still there for the reader, in order.
        assert_eq!(read_published(&mut reader), (0..100).collect::<Vec<u64>>());
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A closed output makes nothing.
    #[test]
    fn a_closed_output_makes_nothing_in_its_ring() {
        use crate::port::OutSlot;
        let (_guard, run, mut out, mut reader) = ring_output("make-closed", 8 << 10);
        out.close();
        assert!(!out.makes_through());
        let (n, panic) = out.make_through(3, |i| i as u64);
        assert_eq!(n, 0);
        assert!(panic.is_none());
        assert!(read_frames(&mut reader).is_empty());
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A ring that turns corrupt while elements are made in it: nothing more is made, and the
    /// failure is reported by the usual path (the flush of what the step appended).
    #[test]
    fn a_ring_failure_while_making_elements_is_reported_by_the_flush() {
        use crate::port::OutSlot;
        let RingOutput {
            name,
            _guard,
            run,
            mut out,
            ..
        } = ring_output_with(
            "make-corrupt",
            8 << 10,
            1 << 20,
            crate::stream::Policy::Block,
        );
        let (made, _) = out.make_through(100_000, |i| i as u64);
        assert!(made > 0 && made < 100_000);
        // The reader's tail says something impossible.
        let other = Segment::open(&name).unwrap();
        other.header().tail.store(3, Ordering::Release);
        let (again, panic) = out.make_through(10, |i| i as u64);
        assert!(panic.is_none());
        assert_eq!(again, 0);
        out.pending().extend(0..10u64);
        out.flush();
        assert!(out.take_error().is_some(), "the ring's failure is reported");
        assert!(!out.makes_through(), "a failed link makes nothing");
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A feeder with credit for everything gathers consecutive readable frames into batches of
    /// at most about `GATHER_AT_MOST_BYTES` (the frame that reaches it is the last), in order,
    /// nothing lost or repeated.
    #[test]
    fn a_feeder_gathers_at_most_64_kib_of_frames_into_one_batch() {
        let (name, _guard, _view) = test_ring("feeder-gather-bound", 256 << 10);
        let run = test_run();
        let (_writer, mut tx) = open_writer::<u64>(&name, &run);
        for f in 0..20u64 {
            let items: Vec<u64> = (f * 1000..f * 1000 + 1000).collect();
            assert_eq!(tx.write(&items).unwrap(), 1000);
        }
        tx.close();
        let reader = Arc::new(Inbox::default());
        let _credit = spawn_feeder::<u64>(feeder(&name, 1 << 20, &reader, &run)).unwrap();
        reader.wait("the end of the stream", |s| s.eos);
        let seen = reader.seen.lock().unwrap();
        assert_eq!(seen.items, (0..20_000).collect::<Vec<_>>());
        assert_eq!(seen.batches, [9_000, 9_000, 2_000]);
        drop(seen);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// Elements made in a ring, with panics at random places (some in a frame after a wrap
    /// marker, some in the first frame of a call): the reader reads exactly the elements of the
    /// frames before each panic, whole, in order, and never a half-written frame.
    #[test]
    fn panics_while_making_elements_at_random_places_leave_the_ring_whole() {
        let RingOutput {
            _guard,
            run,
            mut out,
            link,
            mut reader,
            ..
        } = ring_output_with(
            "make-panics-random",
            8 << 10,
            1 << 20,
            crate::stream::Policy::Block,
        );
        let mut seed = 0x2545F4914F6CDD1Du64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let (mut next, mut expected, mut got, mut panics) = (0u64, Vec::new(), Vec::new(), 0);
        for _ in 0..150 {
            let count = (rnd() % 1500 + 1) as usize;
            let panic_at = (rnd() % 3 == 0).then(|| (rnd() as usize) % count);
            let base = next;
            let (made, panic) = out.make_through(count, |i| {
                assert!(Some(i) != panic_at, "element {i}");
                base + i as u64
            });
            assert!(
                panic.is_none() || panic_at.is_some(),
                "a panic only where asked"
            );
            assert!(
                panic_at.is_none_or(|p| made <= p),
                "made {made}, panic at {panic_at:?}"
            );
            panics += usize::from(panic.is_some());
            expected.extend(base..base + made as u64);
            next = base + count as u64;
            if rnd() % 2 == 0 || (made == 0 && panic.is_none()) {
                got.extend(read_published(&mut reader));
            }
        }
        got.extend(read_published(&mut reader));
        assert!(panics > 10, "{panics} panics");
        assert_eq!(got, expected);
        assert_eq!(link.elements.load(Ordering::Relaxed), expected.len() as u64);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// An output whose only reader is across a ring makes elements straight in the ring
    /// (`OutBuf::make_through`), as many as the ring has room for; what the step appends next
    /// goes the usual way, after them; the reader reads exactly what a flush of the same
    /// elements would have written, in order, and the stream counts them.
    #[test]
    fn elements_made_in_a_ring_read_back_as_written_and_before_what_follows() {
        use crate::port::OutSlot;
        let (_guard, run, mut out, mut reader) = ring_output("link-make-through", 8 << 10);
        let counters = Arc::new(crate::metrics::StreamCounters::default());
        out.set_counters(Arc::clone(&counters));
        let expected: Vec<u64> = (0..5_000u64).map(|i| i * 7).collect();
        let mut got = Vec::new();
        let mut at = 0;
        let mut steps = 0;
        while at < expected.len() {
            assert!(out.makes_through(), "nothing appended in this step yet");
            let (made, panic) = out.make_through(expected.len() - at, |i| expected[at + i]);
            assert!(panic.is_none());
            at += made;
            // The ring holds about 1,000 of them: the rest of the step's waits in the stash.
            if at < expected.len() {
                assert!(made > 0, "a ring emptied by its reader takes some");
                let next = expected[at];
                out.pending().push(next);
                assert!(!out.makes_through(), "an element appended in this step");
                at += 1;
                out.flush();
                assert!(!out.makes_through(), "an element waits in the stash");
            }
            got.extend(read_published(&mut reader));
            // The stashed element goes once the link hears of the room.
            out.credit(0, 0);
            got.extend(read_published(&mut reader));
            steps += 1;
            assert!(steps < 100, "no progress at {at}");
        }
        assert!(steps > 2, "the ring filled in some steps ({steps})");
        assert_eq!(got, expected);
        assert_eq!(
            counters.elements.load(Ordering::Relaxed),
            expected.len() as u64
        );
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// A function that panics while its elements are made in a ring: the frames before the
    /// one it panicked in are published and counted as made, that frame is not (its elements
    /// are as if never made), and the ring goes on from there.
    #[test]
    fn a_panic_while_making_elements_in_a_ring_publishes_only_the_frames_before_it() {
        let (_guard, run, mut out, mut reader) = ring_output("link-make-through-panics", 64 << 10);
        // A frame takes at most half the ring (32 KiB, about 4,000 of them): the panic comes
        // in the second.
        let (made, panic) = out.make_through(6_000, |i| {
            assert!(i != 5_000, "element 5,000");
            i as u64
        });
        assert!(panic.is_some(), "the panic comes back");
        assert!(
            (3_000..5_000).contains(&made),
            "the first frame, whole: {made}"
        );
        assert_eq!(
            read_published(&mut reader),
            (0..made as u64).collect::<Vec<u64>>()
        );
        // The link goes on with what the caller makes next.
        let (made, panic) = out.make_through(10, |i| 10_000 + i as u64);
        assert!(panic.is_none());
        assert_eq!(made, 10);
        assert_eq!(
            read_published(&mut reader),
            (10_000..10_010).collect::<Vec<u64>>()
        );
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    /// Only plain data is made in a ring; an encoded type, or a link with its reader in this
    /// process, goes the usual way.
    #[test]
    fn only_plain_data_with_its_only_reader_across_a_ring_is_made_in_it() {
        use crate::port::{OutBuf, OutSlot};
        let (name, _guard, _view) = test_ring("link-make-through-encoded", 8 << 10);
        let run = test_run();
        let wake: Arc<dyn Mailbox> = Arc::new(Inbox::default());
        let mut text = OutBuf::<String>::new();
        text.add_shm_link(
            &name,
            ring_link_spec(64),
            Arc::clone(&wake),
            0,
            run.clone(),
            "slow",
        )
        .unwrap();
        assert!(!text.makes_through());
        assert_eq!(text.make_through(3, |i| i.to_string()).0, 0);
        let mut local = OutBuf::<u64>::new();
        local.add_link(LinkSpec {
            mailbox: Some(Arc::clone(&wake)),
            ..ring_link_spec(64)
        });
        assert!(!local.makes_through());
        assert_eq!(local.make_through(3, |i| i as u64).0, 0);
        assert!(!OutBuf::<u64>::new().makes_through(), "no link at all");
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn an_output_read_only_through_rings_takes_over_a_batch_of_32_kib_instead_of_copying_it() {
        use crate::port::{
            InBuf, InSlot, OutBuf, OutSlot, MOVE_AT_LEAST_BYTES, MOVE_TO_BYTES_AT_LEAST_BYTES,
        };
        let (name, _guard, _view) = test_ring("link-move-to-ring", 1 << 20);
        let run = test_run();
        let spec = |mailbox: Option<Arc<dyn Mailbox>>| LinkSpec {
            mailbox,
            input: 0,
            capacity: 1 << 20,
            capacity_bytes: usize::MAX,
            need: 0,
            policy: crate::stream::Policy::Block,
            counters: Arc::default(),
            label: "numbers.out -> slow.in".into(),
            reader: 1,
        };
        let wake: Arc<dyn Mailbox> = Arc::new(Inbox::default());
        let mut to_ring = OutBuf::<u64>::new();
        to_ring
            .add_shm_link(&name, spec(None), Arc::clone(&wake), 0, run.clone(), "slow")
            .unwrap();
        assert_eq!(to_ring.moves_at_least(), MOVE_TO_BYTES_AT_LEAST_BYTES);
        let mut local = OutBuf::<u64>::new();
        local.add_link(spec(Some(Arc::clone(&wake))));
        assert_eq!(local.moves_at_least(), MOVE_AT_LEAST_BYTES);
        // A ring and a reader in this process: the local reader decides.
        let (mixed_name, _mixed_guard, _mixed_view) = test_ring("link-move-mixed", 1 << 20);
        let mut mixed = OutBuf::<u64>::new();
        mixed
            .add_shm_link(
                &mixed_name,
                spec(None),
                Arc::clone(&wake),
                0,
                run.clone(),
                "slow",
            )
            .unwrap();
        mixed.add_link(spec(Some(Arc::clone(&wake))));
        assert_eq!(mixed.moves_at_least(), MOVE_AT_LEAST_BYTES);
        assert_eq!(OutBuf::<u64>::new().moves_at_least(), MOVE_AT_LEAST_BYTES);

        // A source's batch of 4,096 u64 (32 KiB), as `Outputs::forward` takes it.
        let pool = Arc::new(crate::stream::VecPool::<u64>::new());
        for (out, moved) in [(&mut to_ring, true), (&mut local, false)] {
            let mut input = InBuf::<u64>::new();
            input
                .push(Batch::pooled((0..4096).collect(), &pool).into_any())
                .unwrap();
            input.prepare(false);
            let at = input.as_slice().as_ptr();
            let at_least = out.moves_at_least();
            assert_eq!(out.adopt(|empty| input.take_shown(empty, at_least)), moved);
            if moved {
                assert_eq!(out.pending().as_ptr(), at, "the batch's vector itself");
                out.pending().clear();
            }
        }
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }

    #[test]
    fn drop_newest_never_lets_data_overtake_a_mark_that_waits_for_room() {
        let (name, _guard, _view) = test_ring("link-drop-newest-mark", 8 << 10);
        let run = test_run();
        let (writer, tx) = open_writer::<u64>(&name, &run);
        let counters = Arc::new(LinkCounters::default());
        let spec = LinkSpec {
            mailbox: None,
            input: 0,
            capacity: 1 << 20,
            capacity_bytes: usize::MAX,
            need: 0,
            policy: crate::stream::Policy::DropNewest,
            counters: Arc::clone(&counters),
            label: "timed.out -> obs.in".into(),
            reader: 1,
        };
        let mut link = LinkTx::shm(tx, &spec);
        let items: Vec<u64> = (0..10_000).collect();
        link.offer(Batch::new(items.clone().into()));
        let sent = counters.elements.load(Ordering::SeqCst) as usize;
        assert!(sent > 0 && sent < items.len());
        assert_eq!(
            counters.dropped.load(Ordering::SeqCst) as usize,
            items.len() - sent
        );
        link.offer_mark(Mark::Watermark(9_999));
        assert!(link.holds_data(), "the mark waits for room");
        // Data offered now would overtake the mark: it is dropped, even once there is room.
        link.offer(Batch::new(vec![77u64].into()));
        assert_eq!(
            counters.dropped.load(Ordering::SeqCst) as usize,
            items.len() - sent + 1
        );
        let log = Arc::new(Log::<u64>::default());
        let credit = spawn_feeder::<u64>(log_feeder(&name, 1 << 20, &log, &run)).unwrap();
        let mut consumed = 0;
        poll(
            "the mark written",
            || {
                consume_all(&log, &credit, &mut consumed);
                if writer.credits() > 0 {
                    link.credit(0);
                }
                !link.holds_data()
            },
            || (),
        );
        link.offer(Batch::new(vec![88u64].into()));
        link.close();
        poll(
            "the end of stream",
            || {
                consume_all(&log, &credit, &mut consumed);
                log.get().last() == Some(&Ev::Eos)
            },
            || (),
        );
        let mut want: Vec<Ev<u64>> = items[..sent].iter().map(|&v| Ev::El(v)).collect();
        want.extend([Ev::M(Mark::Watermark(9_999)), Ev::El(88), Ev::Eos]);
        assert_eq!(log.get(), want);
        run.fail(Error::Runtime {
            detail: "the test is over".into(),
        });
    }
}
