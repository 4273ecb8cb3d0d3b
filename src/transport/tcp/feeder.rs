//! The reader's end of a TCP link: [`spawn_tcp_feeder`] (see the [module docs](super) for the
//! protocol and the resume rules).
//!
//! Threads, all ending when the feeder thread ends (the others look at least every slice):
//!
//! - the **acceptor** polls the listening port and hands each connection to a handshake
//!   thread, at most [`MAX_HANDSHAKES`] at once: one more closes the oldest handshake still
//!   in progress of the address that holds the most ([`to_close`], logged) and takes its
//!   place, so that connectors that say nothing, or a flood from a few addresses, cannot keep
//!   the link's writer out, whose handshake takes a few round trips (a writer that proved
//!   itself is no longer one that may be closed); beyond twice that many
//!   threads (closed ones not ended yet), a connection is closed at once, and logged;
//! - a **connection thread** runs the handshake (10 s at most), then, if the writer was
//!   accepted, reads its frames: checks each seq, decodes each batch into private memory and
//!   queues it; after each read (or a few, while more bytes wait in the socket: the reading
//!   host is then woken once for all) it delivers, itself, what the input's credit covers
//!   (no hand-off on the way), and wakes the feeder thread only for what the feeder owns: the
//!   End, a batch left without credit, an Ack that is due. It ends when its connection
//!   breaks or is replaced;
//! - the **feeder thread** delivers what waited for credit once credit comes back (a starved
//!   input's credit wakes it), delivers the End, turns credit coming back (consumption) into
//!   cumulative Acks (coalesced under load, see [`Feeder::ack_due`]), sends Heartbeats and
//!   Stop on the current connection, and watches how long the writer has been away. It ends
//!   when the link has ended (the writer said Goodbye after its End was acknowledged), when
//!   the writer stayed away too long, or when the run is over, but see below.
//!
//! Both threads deliver under one delivery lock, held across "take from the queue + post", so
//! batches reach the input in order whichever thread posts them.
//!
//! # The last word after a normal end
//!
//! When the reading process's run ends normally, the End it delivered must still be
//! acknowledged to the writer: otherwise the writer, which keeps its stream until then,
//! reconnects in vain and fails. The End acknowledgement counts as **delivered** once the
//! writer said Goodbye (it says it only after the acknowledgement of its End reached it).
//! Until then the feeder **lingers**: it holds the process's exit (a [`Linger`] registered
//! with the run), keeps the port accepting, and answers the writer, on its current connection
//! and on every reconnection (which resumes past the End), with `Ack {end + 1}` and Goodbye.
//! It gives up `reconnect_limit` after the run's end (less after a drain, as the runtime
//! says), with a warning naming the writer's host; the process still ends well, as everything
//! was consumed. A failed run does not linger: its writer keeps the stream for a restarted
//! reader.
//!
//! # A drain before any writer came
//!
//! A run that drains (Ctrl-C, `iotstream stop`, another host's Stop) while no writer has ever
//! claimed the link ends the stream empty once no handshake is in progress and
//! [`UNCLAIMED_GRACE`] has passed since the feeder started: a writer that is up retries its
//! connection more often than that, so none is coming (its host is not up), and the drain need
//! not wait out its timeout for it. A writer that comes later is refused (the stream has
//! ended). Not in a process its launcher restarted ([`RunContext::restarted`](crate::transport::mailbox::RunContext::restarted)):
//! its writer may come back to resume what it sent to the process before it.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::Thread;
use std::time::{Duration, Instant};

use super::handshake;
use super::stream::{Conn, ConnRead, ConnWrite, Cutter, HandshakeDeadline};
use super::wire::{Frame, FrameDecoder, FrameRef, Hello, MARK_FRAME_BYTES};
use super::{
    secs, timed_out, LinkIdentity, PeerStop, StopHook, TcpSettings, BUSY_REASON, FRAME_COST_BYTES,
    HANDSHAKE_TIMEOUT, SLICE, WAIT_LOG_EVERY,
};
use crate::error::Error;
use crate::metrics::{add, LinkCounters};
use crate::stream::{Batch, Element, Mark, VecPool};
use crate::transport::codec::Codec;
use crate::transport::framed::{
    post_items, start_feeder, take_within_credit, FeederMailbox, Item, Next,
};
use crate::transport::mailbox::{link_thread, Envelope, FeederState, Linger, Mailbox, Run};

/// The most handshakes one listening port runs at once: a few connectors that say nothing
/// cannot hold more threads than this (twice this while the ones closed to make room end),
/// for [`HANDSHAKE_TIMEOUT`] each. One more connection takes the place of the oldest (see
/// [`Shared::make_room`]).
pub(crate) const MAX_HANDSHAKES: usize = 4;

/// How often the acceptor looks for a new connection.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// How long a draining reader waits, from its start, for a writer that has never connected
/// before it ends the input empty (see "A drain before any writer came"): longer than a
/// writer's longest pause between two attempts to connect ([`BACKOFF_MAX`](super::BACKOFF_MAX)),
/// so that a writer that is up and holds data for this input (its host started first, or this
/// host was started again by hand while it kept the stream) claims the link within it; shorter
/// than the default drain bound (10 s).
pub(super) const UNCLAIMED_GRACE: Duration = Duration::from_secs(6);

/// How long the feeder holds back an Ack while nothing arrives: consumption is acknowledged
/// in bursts under load, and at most this late once the stream pauses (see
/// [`Feeder::ack_due`]).
const ACK_DELAY: Duration = Duration::from_millis(1);

/// The frames consumed after which an Ack is sent without waiting for [`ACK_DELAY`]: a writer
/// keeps every frame until acknowledged, and small frames (one element each, at a sensor's
/// pace) would otherwise pile up by the thousand before a quarter of its byte budget is
/// consumed. Once acknowledged, the writer writes later frames over them.
const ACK_EVERY_FRAMES: usize = 128;

/// The most reads a connection thread makes before it delivers what they brought, while more
/// bytes wait in the socket.
const MAX_READS_HELD: usize = 4;

/// The most refusals a feeder remembers (for tests and diagnostics; each is logged too).
const REFUSALS_KEPT: usize = 64;

/// What a reader's feeder needs.
pub(crate) struct TcpFeederSpec {
    /// What the handshake checks.
    pub id: LinkIdentity,
    /// The writer's host, for messages.
    pub peer_host: String,
    /// Where to listen, `"addr:port"`.
    pub listen: String,
    /// The deployment's TCP settings.
    pub settings: Arc<TcpSettings>,
    /// The reading host's mailbox.
    pub target: Arc<dyn Mailbox>,
    /// The reading input's index on that host.
    pub input: u32,
    /// The input's capacity: the most elements delivered and not consumed.
    pub capacity: usize,
    /// The link's counters.
    pub counters: Arc<LinkCounters>,
    /// Count elements, batches, bytes and reconnects here (false when the writer, in this
    /// process too, counts them).
    pub count_traffic: bool,
    /// The connection's label, for messages and the run's feeder list.
    pub label: String,
    /// The run of this process.
    pub run: Run,
    /// Called once if the writer says its application is stopping.
    pub on_peer_stop: StopHook,
}

/// A frame received and not yet entirely consumed, in delivery order.
struct Held {
    seq: u64,
    /// Which writer sequence it belongs to (a new writer epoch starts a new one).
    stream: u64,
    elements: usize,
    /// What it costs the writer's budget: its payload and [`FRAME_COST_BYTES`].
    cost: usize,
    end: bool,
    /// A Mark frame: its number among the marks received (see [`State::marks_delivered`]).
    mark: Option<u64>,
}

/// What the feeder's threads share.
struct State<T> {
    /// The writer epoch of the current sequence.
    epoch: Option<u64>,
    /// Counts writer sequences; tags [`Held`] frames.
    stream: u64,
    /// The next seq expected; `None` for a fresh sequence (any first seq is taken).
    next: Option<u64>,
    /// The End of the current sequence was received.
    end_seq: Option<u64>,
    pending: VecDeque<Item<T>>,
    held: VecDeque<Held>,
    /// Elements of `held.front()` consumed.
    front_consumed: usize,
    /// The cost of `held` (see [`Held::cost`]).
    held_cost: usize,
    /// What to acknowledge (every seq below is consumed), for the current sequence.
    ack: Option<u64>,
    /// The cost of the frames consumed since the last Ack sent (see [`Feeder::ack_due`]).
    ack_bytes: usize,
    /// Frames consumed since the last Ack sent (see [`Feeder::ack_due`]).
    ack_frames: usize,
    eos_posted: bool,
    end_acked: bool,
    /// Marks received, and marks delivered: a held Mark frame numbered below
    /// `marks_delivered` was delivered (marks are delivered in the order received).
    marks_received: u64,
    marks_delivered: u64,
    /// The current connection's number; threads of older ones stop.
    conn_no: u64,
    /// A connection thread of number `conn_no` runs.
    connected: bool,
    /// The writing half of a new connection, for the feeder thread.
    incoming: Option<(u64, ConnWrite)>,
    cutter: Option<Cutter>,
    peer_addr: Option<SocketAddr>,
    /// Since when no writer is connected, and why, after a break.
    broken: Option<(Instant, String)>,
    ever_connected: bool,
    /// The writer said Goodbye on the current connection.
    goodbye: bool,
    /// A writer resumed here what a reader of an earlier run acknowledged (said once; see
    /// [`Shared::received`]).
    resumed_after_earlier_run: bool,
}

/// What does not change, and what every thread of the feeder shares.
struct Shared<T> {
    state: Mutex<State<T>>,
    id: LinkIdentity,
    settings: Arc<TcpSettings>,
    label: String,
    host: String,
    listen: String,
    /// The address the port is bound to (the port chosen, if `listen` said 0).
    #[cfg_attr(not(test), allow(dead_code))] // read by the tests' probe
    bound: SocketAddr,
    run: Run,
    counters: Arc<LinkCounters>,
    count_traffic: bool,
    stop: Arc<PeerStop>,
    feeder: Thread,
    /// Handshake threads running (those closed to make room included, until they end).
    handshakes: AtomicUsize,
    /// The handshakes in progress that may be closed to make room, the oldest first: each
    /// slot's number, its peer, when it was accepted and its socket.
    in_handshake: Mutex<VecDeque<(u64, SocketAddr, Instant, TcpStream)>>,
    /// Numbers the handshake slots.
    slots: AtomicU64,
    /// The last Ack sent (for tests and diagnostics).
    acked: AtomicU64,
    /// The feeder thread ended: the other threads end and the port closes.
    done: AtomicBool,
    /// The feeder holds the process's exit after a normal end (see the module docs).
    linger: Arc<Linger>,
    /// The feeder is lingering now (for tests and diagnostics).
    lingering: AtomicBool,
    /// The deadline at which the linger ended, the writer not having confirmed (for tests and
    /// diagnostics: the bound was waited out, not skipped).
    gave_up_at: Mutex<Option<Instant>>,
    /// The reasons connections were refused, the latest last.
    refusals: Mutex<Vec<String>>,
    /// Where the reading input returns credit.
    mailbox: Arc<FeederMailbox>,
    /// The vectors frames are decoded into, back when the reading agent drops their batches.
    pool: Arc<VecPool<T>>,
    /// The reading host's mailbox.
    target: Arc<dyn Mailbox>,
    /// The reading input's index on that host.
    input: u32,
    /// Held across "take from `pending` + post to `target`" by whichever thread delivers (the
    /// connection thread after a read, the feeder thread when credit comes back), so that
    /// batches reach the input in order. Taken before `state`, never after.
    delivery: Mutex<Vec<Item<T>>>,
    /// Batches delivered so far, by either thread: the feeder tells a pause from load by it.
    delivered: AtomicU64,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The feeder thread has ended: every other thread of the link ends.
    fn ended(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }

    fn refused(&self, addr: SocketAddr, reason: &str) {
        tracing::warn!(
            "connection {}: refused a connection from {addr}: {reason}",
            self.label
        );
        let mut r = self.refusals.lock().unwrap_or_else(|p| p.into_inner());
        if r.len() == REFUSALS_KEPT {
            r.remove(0);
        }
        r.push(reason.to_string());
    }

    /// Takes frame `seq` (in order, see `Reading::in_order`) as received.
    ///
    /// The first frame of a fresh sequence numbered above 0 comes from a writer that an
    /// earlier reader on this port acknowledged up to there: a reading process its launcher
    /// restarted (its outputs, rings of the same run, kept what it consumed: nothing is lost),
    /// or, in a process that was not restarted, a reader of an **earlier run of this host**
    /// (its launcher was killed and started again): what that run had consumed here and not
    /// yet passed out of this host (in its rings and queues) ended with it. That cannot be
    /// made good here; it is said, as an error naming the link and the writer's host, once.
    fn received(&self, st: &mut State<T>, seq: u64) {
        if st.next.is_none() && seq > 0 && !self.run.restarted() && !st.resumed_after_earlier_run {
            st.resumed_after_earlier_run = true;
            tracing::error!(
                "connection {}: host '{}' resumes at batch {seq}: an earlier run of this host \
                 acknowledged the batches before it (its launcher ended without draining); \
                 whatever of them that run had not yet passed out of this host is lost",
                self.label,
                self.host
            );
        }
        st.next = Some(seq + 1);
    }

    /// Connection `conn_no` broke (`why`; `None` for an orderly close): unless a newer one
    /// replaced it, the link waits for the writer to come back.
    fn broke(&self, conn_no: u64, why: Option<String>) {
        let mut st = self.lock();
        if st.conn_no != conn_no || !st.connected {
            return;
        }
        st.connected = false;
        if let Some(c) = st.cutter.take() {
            c.cut();
        }
        let why = why.unwrap_or_else(|| "the writer closed the connection".into());
        let ended = st.eos_posted || st.goodbye || self.ended() || self.run.is_over();
        if !ended {
            let addr = st
                .peer_addr
                .map_or_else(|| "?".to_string(), |a| a.to_string());
            tracing::warn!(
                "connection {}: the link from host '{}' ({addr}) broke: {why}; waiting up to {} \
                 for it to reconnect",
                self.label,
                self.host,
                secs(self.settings.reconnect_limit)
            );
        }
        st.broken = Some((Instant::now(), why));
        drop(st);
        self.feeder.unpark();
    }
}

impl<T: Element> Shared<T> {
    /// Holds the delivery lock (see [`Shared::delivery`]).
    fn delivering(&self) -> MutexGuard<'_, Vec<Item<T>>> {
        self.delivery.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves from `st.pending` into `out` the batches (or their parts) the input's credit
    /// covers, up to the End (left in place, for the feeder thread: [`Next::End`]). Called
    /// with the delivery lock held; the caller posts `out` before releasing it.
    fn take_deliveries(&self, st: &mut State<T>, out: &mut Vec<Item<T>>) -> Next {
        let taken = take_within_credit(&mut st.pending, &self.mailbox, out);
        st.marks_delivered += taken.marks as u64;
        taken.next
    }

    /// Posts `items` (batches and marks) to the reading input, in order (the delivery lock is
    /// held).
    fn post_deliveries(&self, items: &mut Vec<Item<T>>) {
        if items.is_empty() {
            return;
        }
        self.delivered
            .fetch_add(items.len() as u64, Ordering::SeqCst);
        post_items(
            items,
            &*self.target,
            self.input,
            &self.counters,
            self.count_traffic,
        );
    }
}

/// Listens on `spec.listen` and starts the feeder of input `spec.input` of the host behind
/// `spec.target`; returns where that input sends its credit. A port that cannot be bound is
/// an error naming it.
pub(crate) fn spawn_tcp_feeder<T: Element>(spec: TcpFeederSpec) -> Result<Arc<dyn Mailbox>, Error> {
    spawn::<T>(spec).map(|(mailbox, _)| mailbox)
}

/// What a test sees of a running feeder.
#[cfg(test)]
pub(crate) struct FeederProbe(Arc<dyn Probe>);

#[cfg(test)]
trait Probe: Send + Sync {
    fn refusals(&self) -> Vec<String>;
    fn finished(&self) -> bool;
    fn bound(&self) -> SocketAddr;
    fn acked(&self) -> u64;
    fn connected(&self) -> bool;
    fn lingering(&self) -> bool;
    fn gave_up_at(&self) -> Option<Instant>;
    fn resumed_after_earlier_run(&self) -> bool;
    fn handshakes(&self) -> usize;
}

#[cfg(test)]
impl<T: Element> Probe for Shared<T> {
    fn refusals(&self) -> Vec<String> {
        self.refusals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
    fn finished(&self) -> bool {
        self.done.load(Ordering::SeqCst)
    }
    fn bound(&self) -> SocketAddr {
        self.bound
    }
    fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }
    fn connected(&self) -> bool {
        self.lock().connected
    }
    fn lingering(&self) -> bool {
        self.lingering.load(Ordering::SeqCst)
    }
    fn gave_up_at(&self) -> Option<Instant> {
        *self.gave_up_at.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn resumed_after_earlier_run(&self) -> bool {
        self.lock().resumed_after_earlier_run
    }
    fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
impl FeederProbe {
    /// The reasons connections were refused so far.
    pub(crate) fn refusals(&self) -> Vec<String> {
        self.0.refusals()
    }
    /// The feeder thread has ended (its port is closed or closing).
    pub(crate) fn finished(&self) -> bool {
        self.0.finished()
    }
    /// The address the feeder listens on.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.0.bound()
    }
    /// The last Ack sent: every batch below it is consumed.
    pub(crate) fn acked(&self) -> u64 {
        self.0.acked()
    }
    /// A writer's connection is accepted and not broken.
    pub(crate) fn connected(&self) -> bool {
        self.0.connected()
    }
    /// The run ended normally and the feeder waits to give its writer the End's
    /// acknowledgement.
    pub(crate) fn lingering(&self) -> bool {
        self.0.lingering()
    }
    /// The deadline at which the linger ended (`reconnect_limit` after the run's end), the
    /// writer not having come back to confirm; `None` if it did not end so.
    pub(crate) fn gave_up_at(&self) -> Option<Instant> {
        self.0.gave_up_at()
    }
    /// A writer resumed here past batches a reader of an earlier run acknowledged (said as
    /// an error).
    pub(crate) fn resumed_after_earlier_run(&self) -> bool {
        self.0.resumed_after_earlier_run()
    }
    /// Handshake threads running.
    pub(crate) fn handshakes(&self) -> usize {
        self.0.handshakes()
    }
}

/// [`spawn_tcp_feeder`], with a probe for tests.
#[cfg(test)]
pub(crate) fn spawn_probed<T: Element>(
    spec: TcpFeederSpec,
) -> Result<(Arc<dyn Mailbox>, FeederProbe), Error> {
    spawn::<T>(spec).map(|(m, s)| (m, FeederProbe(s)))
}

/// A running feeder: where its input returns credit, and what its threads share.
type Spawned<T> = (Arc<dyn Mailbox>, Arc<Shared<T>>);

fn spawn<T: Element>(spec: TcpFeederSpec) -> Result<Spawned<T>, Error> {
    let label = spec.label.clone();
    let listener = TcpListener::bind(&spec.listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| Error::Runtime {
            detail: format!("connection {label}: cannot listen on {}: {e}", spec.listen),
        })?;
    let bound = listener.local_addr().map_err(|e| Error::Runtime {
        detail: format!("connection {label}: cannot listen on {}: {e}", spec.listen),
    })?;
    // Released when the feeder thread ends, whichever way.
    let linger = Linger::new(label.clone(), spec.settings.reconnect_limit);
    let input = spec.input;
    let (mailbox, tx) = start_feeder(
        &spec.run,
        &label,
        &linger,
        spec.capacity,
        &spec.counters,
        (format!("tcp feeder {input}"), "TCP feeder"),
        |(mailbox, shared): (Arc<FeederMailbox>, Arc<Shared<T>>)| {
            let mut feeder = Feeder {
                state: Arc::clone(&mailbox.state),
                shared,
                mailbox,
                reported: false,
                wire: Cell::new(Vec::new()),
            };
            feeder.run();
        },
    )?;
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            epoch: None,
            stream: 0,
            next: None,
            end_seq: None,
            pending: VecDeque::new(),
            held: VecDeque::new(),
            front_consumed: 0,
            held_cost: 0,
            ack: None,
            ack_bytes: 0,
            ack_frames: 0,
            eos_posted: false,
            end_acked: false,
            marks_received: 0,
            marks_delivered: 0,
            conn_no: 0,
            connected: false,
            incoming: None,
            cutter: None,
            peer_addr: None,
            broken: None,
            ever_connected: false,
            goodbye: false,
            resumed_after_earlier_run: false,
        }),
        stop: PeerStop::new(spec.on_peer_stop, &spec.peer_host),
        id: spec.id,
        settings: spec.settings,
        label,
        host: spec.peer_host,
        listen: spec.listen,
        bound,
        run: Arc::clone(&spec.run),
        counters: spec.counters,
        count_traffic: spec.count_traffic,
        feeder: mailbox.thread.clone(),
        handshakes: AtomicUsize::new(0),
        in_handshake: Mutex::new(VecDeque::new()),
        slots: AtomicU64::new(0),
        acked: AtomicU64::new(0),
        done: AtomicBool::new(false),
        linger,
        lingering: AtomicBool::new(false),
        gave_up_at: Mutex::new(None),
        refusals: Mutex::new(Vec::new()),
        mailbox: Arc::clone(&mailbox),
        pool: Arc::new(crate::transport::feeder_pool(spec.capacity)),
        target: spec.target,
        input: spec.input,
        delivery: Mutex::new(Vec::new()),
        delivered: AtomicU64::new(0),
    });
    let acceptor = Arc::clone(&shared);
    let accepting = std::thread::Builder::new()
        .name(format!("tcp accept {input}"))
        .spawn(move || {
            let (run, label) = (Arc::clone(&acceptor.run), acceptor.label.clone());
            link_thread(&run, &label, "TCP accept", || {
                accept_loop(listener, acceptor)
            })
        });
    if let Err(e) = accepting {
        // The feeder thread gets nothing, ends, and the run no longer waits for it.
        drop(tx);
        spec.run.finished(&mailbox.state);
        return Err(Error::Runtime {
            detail: format!("cannot start a TCP accept thread: {e}"),
        });
    }
    let _ = tx.send((Arc::clone(&mailbox), Arc::clone(&shared)));
    Ok((mailbox, shared))
}

/// Frees a handshake slot when dropped: the slot's number and the shared state.
struct Slot<T>(u64, Arc<Shared<T>>);

impl<T> Drop for Slot<T> {
    fn drop(&mut self) {
        let mut pending = self
            .1
            .in_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        pending.retain(|(no, ..)| *no != self.0);
        drop(pending);
        self.1.handshakes.fetch_sub(1, Ordering::SeqCst);
    }
}

impl<T> Shared<T> {
    /// Every handshake slot is taken and a connection from `addr` came: closes the oldest
    /// handshake still in progress so that the newcomer takes its place, unless twice
    /// [`MAX_HANDSHAKES`] threads still run (closed ones that have not ended yet). Whether
    /// there is room now.
    ///
    /// Without it, [`MAX_HANDSHAKES`] connections that say nothing, from anyone who reaches
    /// the port (no secret needed), kept the link's own writer out for as long as they were
    /// reopened: at start and after every break, until the application failed. A writer's
    /// handshake takes a few round trips; the silent ones are the oldest. The one closed is
    /// the oldest of the address that holds the most (see [`to_close`]): connections from one
    /// address, however many and however fast, never close another address's.
    fn make_room(&self, addr: SocketAddr) -> bool {
        if self.handshakes.load(Ordering::SeqCst) >= 2 * MAX_HANDSHAKES {
            return false;
        }
        let closed = {
            let mut pending = self.in_handshake.lock().unwrap_or_else(|p| p.into_inner());
            let peers: Vec<IpAddr> = pending.iter().map(|(_, a, ..)| a.ip()).collect();
            to_close(&peers, addr.ip()).and_then(|i| pending.remove(i))
        };
        let Some((_, old, since, stream)) = closed else {
            return false;
        };
        let _ = stream.shutdown(std::net::Shutdown::Both);
        self.refused(
            old,
            &format!(
                "its handshake was not done after {:.1} s and {MAX_HANDSHAKES} were in \
                 progress: closed to make room for a connection from {addr}",
                since.elapsed().as_secs_f64()
            ),
        );
        true
    }
}

/// Which handshake to close to make room for a connection from `newcomer`, given the peers'
/// addresses of those in progress, the oldest first: the oldest of the address that holds the
/// most, the newcomer counted with its own (so that a flood from any number of addresses
/// closes its own connections first: the writer's host holds one). IPv6 addresses count by
/// their /64 network, which one attacker commonly holds whole.
pub(super) fn to_close(peers: &[IpAddr], newcomer: IpAddr) -> Option<usize> {
    let group = |ip: IpAddr| -> IpAddr {
        match ip {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let s = v6.segments();
                    IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
                }
            },
            v4 => v4,
        }
    };
    let held = |ip: IpAddr| {
        let g = group(ip);
        peers.iter().filter(|p| group(**p) == g).count() + usize::from(group(newcomer) == g)
    };
    let most = peers.iter().map(|p| held(*p)).max()?;
    peers.iter().position(|p| held(*p) == most)
}

fn accept_loop<T: Element>(listener: TcpListener, shared: Arc<Shared<T>>) {
    // Ends: when the feeder thread ends (checked at each pass, a pass waits at most
    // ACCEPT_POLL), which it does within a slice of the run's end unless it lingers; dropping
    // the listener closes the port.
    loop {
        if shared.ended() {
            return;
        }
        match listener.accept() {
            Ok((stream, addr)) => {
                if shared.handshakes.load(Ordering::SeqCst) >= MAX_HANDSHAKES
                    && !shared.make_room(addr)
                {
                    shared.refused(
                        addr,
                        &format!("{MAX_HANDSHAKES} handshakes are already in progress"),
                    );
                    continue;
                }
                // A second handle, to close it if room must be made (a handshake not listed
                // could not claim the link).
                let clone = match stream.try_clone() {
                    Ok(c) => c,
                    Err(e) => {
                        shared.refused(addr, &format!("cannot take the connection: {e}"));
                        continue;
                    }
                };
                shared.handshakes.fetch_add(1, Ordering::SeqCst);
                let no = shared.slots.fetch_add(1, Ordering::SeqCst);
                shared
                    .in_handshake
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push_back((no, addr, Instant::now(), clone));
                let slot = Slot(no, Arc::clone(&shared));
                let serving = Arc::clone(&shared);
                let started = std::thread::Builder::new()
                    .name("tcp handshake".into())
                    .spawn(move || {
                        let (run, label) = (Arc::clone(&serving.run), serving.label.clone());
                        link_thread(&run, &label, "TCP handshake", || {
                            serve(serving, stream, addr, slot)
                        })
                    });
                if let Err(e) = started {
                    shared.refused(addr, &format!("cannot start a thread: {e}"));
                }
            }
            Err(e) if timed_out(&e) => std::thread::sleep(ACCEPT_POLL),
            Err(e) => {
                tracing::warn!(
                    "connection {}: cannot accept on {}: {e}",
                    shared.label,
                    shared.listen
                );
                std::thread::sleep(SLICE);
            }
        }
    }
}

/// The reader's answer to an authenticated writer's Hello: refused, or the seq to resume at
/// (see "Resuming after a break" in the module docs). Claims the link for the new connection.
fn claim<T>(
    shared: &Shared<T>,
    hello: &Hello,
    slot: u64,
    claimed: &mut Option<u64>,
) -> Result<u64, String> {
    shared.id.check(hello)?;
    // An authenticated writer: no longer one of the handshakes that may be closed to make
    // room (closed, its socket would break the link it is about to own). Already closed: it
    // lost its place.
    {
        let mut pending = shared
            .in_handshake
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let before = pending.len();
        pending.retain(|(no, ..)| *no != slot);
        if pending.len() == before {
            return Err("its connection was closed to make room for another".into());
        }
    }
    let mut st = shared.lock();
    // A run that ended normally may still answer its writer (see "The last word after a
    // normal end"); a failed one takes nothing more.
    if shared.ended() || shared.run.failed() {
        return Err("the link has ended".into());
    }
    let same = st.epoch == Some(hello.writer_epoch);
    if st.connected && !same {
        return Err(format!(
            "{BUSY_REASON} (a writer of another epoch, from {})",
            st.peer_addr
                .map_or_else(|| "?".to_string(), |a| a.to_string())
        ));
    }
    if !same {
        if st.end_seq.is_some() || st.eos_posted {
            return Err(
                "the stream on this link has ended: a new writer cannot start it again".into(),
            );
        }
        st.epoch = Some(hello.writer_epoch);
        st.stream += 1;
        st.next = None;
        st.ack = None;
    }
    // The same writer again: its previous connection is stale (it reconnects only after a
    // break it saw first).
    if let Some(c) = st.cutter.take() {
        c.cut();
    }
    st.conn_no += 1;
    st.connected = true;
    *claimed = Some(st.conn_no);
    Ok(st.next.unwrap_or(0))
}

/// One accepted connection: the handshake, then the writer's frames.
fn serve<T: Element>(shared: Arc<Shared<T>>, stream: TcpStream, addr: SocketAddr, slot: Slot<T>) {
    // Accepted sockets are blocking on Linux; said here so that it holds everywhere.
    if let Err(e) = stream.set_nonblocking(false) {
        return shared.refused(addr, &format!("cannot set up the connection: {e}"));
    }
    // The whole handshake within its bound: a client sending a byte now and then must not
    // keep its slot (the sockets' timeouts bound one read each).
    let deadline = match HandshakeDeadline::start(&stream, HANDSHAKE_TIMEOUT) {
        Ok(d) => d,
        Err(e) => return shared.refused(addr, &format!("cannot set up the connection: {e}")),
    };
    let mut claimed = None;
    let result = (|| {
        let conn = Conn::server(stream, shared.settings.tls.as_ref(), HANDSHAKE_TIMEOUT)
            .map_err(|e| e.to_string())?;
        let mut conn = conn
            .set_timeouts(Some(HANDSHAKE_TIMEOUT), Some(HANDSHAKE_TIMEOUT))
            .map(|()| conn)
            .map_err(|e| format!("cannot set up the connection: {e}"))?;
        let secret = shared.settings.secret.clone();
        let (_, resume) = handshake::server_handshake(&mut conn, secret.as_deref(), |hello| {
            claim(&shared, hello, slot.0, &mut claimed)
        })
        .map_err(|e| e.to_string())?;
        Ok::<_, String>((conn, resume))
    })();
    let result = match deadline.finish() {
        true => Err(format!(
            "the client did not finish its handshake within {}",
            secs(HANDSHAKE_TIMEOUT)
        )),
        false => result,
    };
    let (conn, resume) = match result {
        Ok(done) => done,
        Err(e) => {
            if let Some(conn_no) = claimed {
                shared.broke(conn_no, Some(format!("the handshake failed: {e}")));
            }
            return shared.refused(addr, &e);
        }
    };
    drop(slot);
    let conn_no = claimed.expect("an accepted writer claimed the link");
    let setup = (|| {
        conn.set_timeouts(Some(SLICE), Some(shared.settings.peer_timeout))?;
        let cutter = conn.cutter()?;
        let (r, w) = conn.split()?;
        Ok::<_, std::io::Error>((cutter, r, w))
    })();
    let (cutter, r, w) = match setup {
        Ok(parts) => parts,
        Err(e) => return shared.broke(conn_no, Some(format!("cannot set up the connection: {e}"))),
    };
    {
        let mut st = shared.lock();
        if st.conn_no != conn_no {
            return;
        }
        st.cutter = Some(cutter);
        st.incoming = Some((conn_no, w));
        st.peer_addr = Some(addr);
        st.goodbye = false;
        if let Some((since, _)) = st.broken.take() {
            tracing::info!(
                "connection {}: host '{}' ({addr}) reconnected after {}; resuming at batch \
                 {resume}",
                shared.label,
                shared.host,
                secs(since.elapsed())
            );
            if shared.count_traffic {
                add(&shared.counters.reconnects, 1);
            }
        } else if !st.ever_connected {
            tracing::info!(
                "connection {}: host '{}' connected from {addr}",
                shared.label,
                shared.host
            );
        }
        st.ever_connected = true;
    }
    shared.feeder.unpark();
    let reading = Reading {
        shared: &shared,
        conn_no,
        codec: Codec::new(),
    };
    let why = reading.read(r);
    // Frames taken in before the end (a break, a stale connection) are delivered all the same.
    reading.deliver();
    shared.broke(conn_no, why);
}

/// A connection thread after the handshake.
struct Reading<'a, T> {
    shared: &'a Shared<T>,
    conn_no: u64,
    codec: Codec<T>,
}

/// Why a frame ends the connection: `None` when it is merely stale (replaced).
type Stop = Option<String>;

impl<T: Element> Reading<'_, T> {
    /// Reads frames until the connection breaks (returns why) or is replaced or the link ends
    /// (returns `None`).
    fn read(&self, mut r: ConnRead) -> Option<String> {
        let shared = self.shared;
        let mut dec = FrameDecoder::new(shared.settings.frame_limit());
        let mut heard = Instant::now();
        let timeout = shared.settings.peer_timeout;
        // Reads whose frames wait for the next delivery.
        let mut reads_held = 0;
        // Ends: each pass reads for at most a slice; a stale connection or the end of the link
        // returns.
        loop {
            if shared.ended() || shared.lock().conn_no != self.conn_no {
                return None;
            }
            match dec.read_from(&mut r) {
                Ok(0) => {
                    if let Err(e) = dec.finish() {
                        // A frame cut off by the end of the connection is what a writer
                        // process that ended (or a network cut) leaves, not a protocol breach.
                        return Some(format!(
                            "the writer's connection ended: {e} (its process ended, or the \
                             network cut it)"
                        ));
                    }
                    return if shared.lock().goodbye {
                        None
                    } else {
                        Some("the writer closed the connection".into())
                    };
                }
                Ok(_) => {
                    heard = Instant::now();
                    // The frames of one read are queued, then delivered after it (or after a
                    // few reads, while more bytes wait: see below).
                    let taken = (|| {
                        // Ends: each pass takes a frame out of the bounded buffer.
                        loop {
                            match dec.next_ref() {
                                Ok(Some(FrameRef::Data {
                                    seq,
                                    elements,
                                    payload,
                                })) => self.on_data(seq, elements, payload)?,
                                Ok(Some(FrameRef::Other(f))) => self.on_frame(f)?,
                                Ok(None) => return Ok(()),
                                Err(e) => {
                                    return Err(Some(format!(
                                        "the writer sent bytes that break the protocol: {e}"
                                    )))
                                }
                            }
                        }
                    })();
                    if let Err(why) = taken {
                        // What came before is delivered as the thread ends (see `serve`).
                        return why;
                    }
                    // More frames wait in the socket: read them first, and wake the reading
                    // host once for all (up to a bound, so that it starts on some).
                    if reads_held < MAX_READS_HELD && r.readable_now() {
                        reads_held += 1;
                        continue;
                    }
                    reads_held = 0;
                    self.deliver();
                }
                Err(e) if timed_out(&e) => {
                    if reads_held > 0 {
                        reads_held = 0;
                        self.deliver();
                    }
                    if heard.elapsed() >= timeout {
                        return Some(format!("the writer was silent for {}", secs(timeout)));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(format!("cannot read: {e}")),
            }
        }
    }

    /// Delivers what the frames just read brought, within the input's credit, on this thread
    /// (no hand-off to the feeder thread on the way). Wakes the feeder thread only for what it
    /// owns: the End, credit that ran out (it delivers when credit comes back; a starved
    /// input's credit wakes it too), and an Ack that is due.
    fn deliver(&self) {
        let shared = self.shared;
        // The delivery lock guards the list of parts, reused from one delivery to the next.
        let mut parts = shared.delivering();
        let wake = {
            let mut st = shared.lock();
            st.consume(shared.mailbox.take_consumed());
            let next = shared.take_deliveries(&mut st, &mut parts);
            next != Next::Nothing || st.ack_is_large(&shared.settings)
        };
        shared.post_deliveries(&mut parts);
        drop(parts);
        if wake {
            shared.feeder.unpark();
        }
    }

    /// Handles one frame; `Err(Some(why))` breaks the connection, `Err(None)` it is stale.
    fn on_frame(&self, f: Frame) -> Result<(), Stop> {
        let shared = self.shared;
        match f {
            Frame::Data {
                seq,
                elements,
                payload,
            } => self.on_data(seq, elements, &payload),
            Frame::End { seq } => {
                let mut st = shared.lock();
                if st.conn_no != self.conn_no {
                    return Err(None);
                }
                if !self.in_order(&st, seq)? {
                    return Ok(());
                }
                shared.received(&mut st, seq);
                st.end_seq = Some(seq);
                let stream = st.stream;
                st.pending.push_back(Item::End);
                st.held.push_back(Held {
                    seq,
                    stream,
                    elements: 0,
                    cost: 0,
                    end: true,
                    mark: None,
                });
                Ok(())
            }
            Frame::Mark { seq, mark } => self.on_mark(seq, mark),
            Frame::Ack { .. } => Err(Some(
                "the writer sent an Ack frame, which only a reader sends".into(),
            )),
            Frame::Heartbeat => Ok(()),
            Frame::Stop => {
                shared.stop.fire(&shared.label);
                Ok(())
            }
            Frame::Goodbye { reason } => {
                let reason: String = reason.chars().take(200).collect();
                tracing::info!(
                    "connection {}: host '{}' closes the connection: {}",
                    shared.label,
                    shared.host,
                    reason.escape_debug()
                );
                shared.lock().goodbye = true;
                shared.feeder.unpark();
                Ok(())
            }
        }
    }

    /// Whether frame `seq` is the next one (true), one already received (false: dropped), or
    /// after a gap (an error). Nothing may follow the End.
    fn in_order(&self, st: &State<T>, seq: u64) -> Result<bool, Stop> {
        if seq == u64::MAX {
            // Nothing could follow it (the next number would not fit): a writer never gets
            // there, so a peer that says it does breaks the protocol.
            return Err(Some(format!(
                "batch {seq} is past the last batch number ({})",
                u64::MAX - 1
            )));
        }
        match st.next {
            Some(next) if seq < next => return Ok(false),
            Some(next) if seq > next => {
                return Err(Some(format!(
                    "batch {seq} came where batch {next} was expected (a gap)"
                )))
            }
            _ => {}
        }
        if let Some(end) = st.end_seq {
            return Err(Some(format!(
                "batch {seq} came after the end of stream (batch {end})"
            )));
        }
        Ok(true)
    }

    /// A Mark frame: queued in order, held as a frame of no element (it costs the budget
    /// its frame's bytes and [`FRAME_COST_BYTES`], as at the writer) until it is delivered
    /// and everything before it consumed.
    fn on_mark(&self, seq: u64, mark: Mark) -> Result<(), Stop> {
        let shared = self.shared;
        // As the writer counts it.
        let cost = MARK_FRAME_BYTES + FRAME_COST_BYTES;
        let mut st = shared.lock();
        if st.conn_no != self.conn_no {
            return Err(None);
        }
        if !self.in_order(&st, seq)? {
            return Ok(());
        }
        let bound = shared.settings.unacked_bytes + shared.settings.frame_limit() as usize;
        if st.held_cost + cost > bound {
            return Err(Some(format!(
                "the writer sent more than {bound} bytes not acknowledged (its bound and a \
                 frame, each frame counting its payload and {FRAME_COST_BYTES} bytes)"
            )));
        }
        shared.received(&mut st, seq);
        let (stream, no) = (st.stream, st.marks_received);
        st.marks_received += 1;
        st.held.push_back(Held {
            seq,
            stream,
            elements: 0,
            cost,
            end: false,
            mark: Some(no),
        });
        st.held_cost += cost;
        st.pending.push_back(Item::Mark(mark));
        drop(st);
        if shared.count_traffic {
            add(&shared.counters.bytes, MARK_FRAME_BYTES as u64);
        }
        Ok(())
    }

    fn on_data(&self, seq: u64, elements: u32, payload: &[u8]) -> Result<(), Stop> {
        let shared = self.shared;
        {
            let st = shared.lock();
            if st.conn_no != self.conn_no {
                return Err(None);
            }
            if !self.in_order(&st, seq)? {
                return Ok(());
            }
            let bound = shared.settings.unacked_bytes + shared.settings.frame_limit() as usize;
            if st.held_cost + payload.len() + FRAME_COST_BYTES > bound {
                return Err(Some(format!(
                    "the writer sent more than {bound} bytes not acknowledged (its bound and \
                     a frame, each frame counting its payload and {FRAME_COST_BYTES} bytes)"
                )));
            }
        }
        // Decoded outside the lock, in this connection's private memory.
        // Decoded into a vector of the pool (plain data copied once, straight into it).
        let mut items = shared.pool.take();
        self.codec.decode_into(payload, &mut items).map_err(|e| {
            Some(format!(
                "batch {seq} does not decode as {}: {e}",
                shared.id.type_name
            ))
        })?;
        if items.len() != elements as usize {
            return Err(Some(format!(
                "batch {seq} says it holds {elements} elements but holds {}",
                items.len()
            )));
        }
        let mut st = shared.lock();
        // Only this thread adds frames while its connection is current.
        if st.conn_no != self.conn_no {
            return Err(None);
        }
        shared.received(&mut st, seq);
        let stream = st.stream;
        let n = items.len();
        st.held.push_back(Held {
            seq,
            stream,
            elements: n,
            cost: payload.len() + FRAME_COST_BYTES,
            end: false,
            mark: None,
        });
        st.held_cost += payload.len() + FRAME_COST_BYTES;
        // A small frame joins the batch before it, if that one waits unshared (adaptive
        // batching: frames that arrive while the reader is busy go to it as one batch, not
        // one batch and one of the pool's vectors each).
        let joined = match st.pending.back_mut() {
            Some(Item::Data(last)) => last.join(&items),
            _ => false,
        };
        if n > 0 && !joined {
            st.pending
                .push_back(Item::Data(Batch::pooled(items, &shared.pool)));
        } else {
            shared.pool.put(items);
        }
        drop(st);
        if shared.count_traffic {
            add(&shared.counters.bytes, payload.len() as u64);
        }
        Ok(())
    }
}

impl<T> State<T> {
    /// The consumption not acknowledged yet is worth an Ack at once: a quarter of the writer's
    /// budget, or [`ACK_EVERY_FRAMES`] frames.
    fn ack_is_large(&self, settings: &TcpSettings) -> bool {
        self.ack_bytes >= settings.unacked_bytes / 4 || self.ack_frames >= ACK_EVERY_FRAMES
    }

    /// The reader consumed `n` more elements: frames whose every element is consumed leave
    /// `held` and, if of the current sequence, move the acknowledgement past them. The End
    /// and marks leave once they were delivered.
    fn consume(&mut self, mut n: usize) {
        // Ends: each pass removes a frame or breaks.
        while let Some(front) = self.held.front() {
            if front.end {
                if !self.eos_posted {
                    break;
                }
            } else if front.mark.is_some_and(|k| k >= self.marks_delivered) {
                // Not delivered yet.
                break;
            } else {
                let k = (front.elements - self.front_consumed).min(n);
                self.front_consumed += k;
                n -= k;
                if self.front_consumed < front.elements {
                    break;
                }
            }
            let done = self.held.pop_front().expect("a front");
            self.front_consumed = 0;
            self.held_cost -= done.cost;
            if done.stream == self.stream {
                self.ack = Some(done.seq + 1);
                self.ack_bytes += done.cost;
                self.ack_frames += 1;
                self.end_acked |= done.end;
            }
        }
    }
}

/// The feeder thread.
struct Feeder<T> {
    shared: Arc<Shared<T>>,
    mailbox: Arc<FeederMailbox>,
    state: Arc<FeederState>,
    /// `run.finished` was called.
    reported: bool,
    /// The bytes of the last frames sent, kept for their capacity (see [`Feeder::send`]).
    wire: Cell<Vec<u8>>,
}

impl<T: Element> Feeder<T> {
    fn run(&mut self) {
        let shared = Arc::clone(&self.shared);
        let fed = self.feed();
        shared.lingering.store(false, Ordering::SeqCst);
        if let Err(e) = &fed {
            shared.run.fail(Error::Runtime {
                detail: format!("connection {}: {e}", shared.label),
            });
        }
        if !self.reported {
            shared.run.finished(&self.state);
        }
        // Before `done`: a feeder seen finished holds the exit no more (its thread's guard
        // releases it again when it ends, which does nothing more).
        shared.linger.release();
        shared.done.store(true, Ordering::SeqCst);
        let cutter = shared.lock().cutter.take();
        if let Some(c) = cutter {
            c.cut();
        }
    }

    /// Sends `frames` on the current connection; a failure breaks it.
    fn send(&self, writer: &mut Option<(u64, ConnWrite)>, frames: &[Frame]) -> bool {
        let Some((conn_no, w)) = writer else {
            return false;
        };
        let mut out = self.wire.take();
        out.clear();
        for f in frames {
            super::wire::encode_frame(f, &mut out);
        }
        let written = w.write_all(&out).and_then(|()| w.flush());
        self.wire.set(out);
        if let Err(e) = written {
            let conn_no = *conn_no;
            *writer = None;
            self.shared
                .broke(conn_no, Some(format!("cannot write: {e}")));
            return false;
        }
        true
    }

    fn feed(&mut self) -> Result<(), String> {
        let shared = Arc::clone(&self.shared);
        let settings = Arc::clone(&shared.settings);
        let start = Instant::now();
        let mut writer: Option<(u64, ConnWrite)> = None;
        let mut acked_sent: Option<u64> = None;
        let mut last_send = Instant::now();
        let mut stop_sent = false;
        let mut said: Option<Instant> = None;
        // Since when passes delivered nothing (`None`: the last pass delivered).
        let mut quiet_since: Option<Instant> = None;
        // `shared.delivered` as this thread last saw it.
        let mut seen_delivered = 0;
        // An Ack is held back (see `ack_due`).
        let mut ack_waits;
        // The frames to send in a pass (kept for its capacity).
        let mut out = Vec::new();
        // Frames delivered and not all consumed.
        let mut awaits_consumption;
        // Ends: when the run is over, the link ended (End acknowledged and the writer gone),
        // or the writer stayed away too long; each pass delivers or waits at most a slice.
        loop {
            if shared.run.is_over() {
                self.end_of_run(&mut writer);
                return Ok(());
            }
            let mut eos = false;
            let mut ended_unclaimed = false;
            out.clear();
            // The delivery lock guards the list of parts, reused from one delivery to the next.
            let mut deliver = shared.delivering();
            {
                let mut st = shared.lock();
                // The connection thread delivers what arrives while there is credit: that is
                // load too, not a pause.
                let delivered = shared.delivered.load(Ordering::SeqCst);
                if delivered != seen_delivered {
                    seen_delivered = delivered;
                    quiet_since = None;
                    if !st.eos_posted {
                        self.mailbox.eager.store(false, Ordering::SeqCst);
                    }
                }
                if let Some(w) = st.incoming.take() {
                    writer = Some(w);
                    // The writer may have missed the last Ack: say it again.
                    acked_sent = None;
                    last_send = Instant::now();
                }
                if writer
                    .as_ref()
                    .is_some_and(|(n, _)| *n != st.conn_no || !st.connected)
                {
                    writer = None;
                }
                st.consume(self.mailbox.take_consumed());
                if shared.take_deliveries(&mut st, &mut deliver) == Next::End {
                    st.pending.pop_front();
                    st.eos_posted = true;
                    eos = true;
                }
                if shared.run.draining()
                    && st.epoch.is_none()
                    && !st.eos_posted
                    && !shared.run.restarted()
                    && start.elapsed() >= UNCLAIMED_GRACE
                    && shared.handshakes.load(Ordering::SeqCst) == 0
                {
                    // This run drains and no writer has claimed the link, none is in a
                    // handshake, and one that were up would have tried within the grace (its
                    // host is not up, say): the stream ends empty here rather than hold the
                    // drain until its timeout. Under the lock a claim takes: a writer that
                    // comes later is told the stream has ended. Not in a restarted process:
                    // its writer, which was sending to the process before it, may still come
                    // back to resume.
                    tracing::warn!(
                        "connection {}: the run drains and host '{}' never connected to {}: \
                         the stream ends here, with nothing received",
                        shared.label,
                        shared.host,
                        shared.listen
                    );
                    st.eos_posted = true;
                    eos = true;
                    ended_unclaimed = true;
                }
                st.consume(0);
                // Consumption to come would move the acknowledgement (or, for the End, end
                // the link).
                awaits_consumption = !st.held.is_empty();
                let fresh = st.ack.filter(|&a| acked_sent.is_none_or(|s| a > s));
                ack_waits = false;
                if writer.is_some() {
                    if let Some(a) = fresh {
                        if Self::ack_due(&st, acked_sent, &settings, quiet_since) {
                            out.push(Frame::Ack { next: a });
                            acked_sent = Some(a);
                            st.ack_bytes = 0;
                            st.ack_frames = 0;
                        } else {
                            ack_waits = true;
                        }
                    }
                    if shared.run.draining() && !stop_sent && !st.eos_posted {
                        stop_sent = true;
                        out.push(Frame::Stop);
                    }
                    if out.is_empty() && last_send.elapsed() >= settings.heartbeat {
                        out.push(Frame::Heartbeat);
                    }
                }
                if st.end_acked && st.goodbye {
                    return Ok(());
                }
                if st.connected {
                    said = None;
                } else {
                    let (since, limit, why) = match &st.broken {
                        Some((t, why)) => (*t, settings.reconnect_limit, Some(why.clone())),
                        None => (start, settings.connect_wait, None),
                    };
                    if since.elapsed() >= limit {
                        if st.eos_posted {
                            // Everything came; only acknowledgements were left to give.
                            return Ok(());
                        }
                        return Err(match why {
                            None => format!(
                                "host '{}' did not connect to {} within {}",
                                shared.host,
                                shared.listen,
                                secs(limit)
                            ),
                            Some(why) => format!(
                                "host '{}' did not reconnect within {} after the link broke: \
                                 {why}",
                                shared.host,
                                secs(limit)
                            ),
                        });
                    }
                    if st.broken.is_some() && said.is_none() {
                        // The break was just logged: the next word in a while.
                        said = Some(since);
                    }
                    if !st.eos_posted && said.is_none_or(|t| t.elapsed() >= WAIT_LOG_EVERY) {
                        said = Some(Instant::now());
                        tracing::warn!(
                            "connection {}: waiting for host '{}' to connect to {}",
                            shared.label,
                            shared.host,
                            shared.listen
                        );
                    }
                }
            }
            let progressed = !deliver.is_empty() || eos;
            shared.post_deliveries(&mut deliver);
            // Its own deliveries are not news to this thread.
            seen_delivered = shared.delivered.load(Ordering::SeqCst).max(seen_delivered);
            if eos {
                shared.target.post(Envelope::Eos {
                    input: shared.input,
                });
                shared.run.finished(&self.state);
                self.reported = true;
                if ended_unclaimed {
                    // No writer to acknowledge the End to.
                    return Ok(());
                }
            }
            drop(deliver);
            if !out.is_empty() && self.send(&mut writer, &out) {
                last_send = Instant::now();
                for f in &out {
                    if let Frame::Ack { next } = f {
                        shared.acked.store(*next, Ordering::SeqCst);
                    }
                }
            }
            // Under load, the feeder wakes when consumption reaches the Ack threshold (the
            // connection thread sees it), when credit comes back to a starved input, and at
            // least every `ACK_DELAY`; once no frame was delivered for `ACK_DELAY` (a pause, the
            // end), every post of credit wakes it (`eager`), so that its Acks come promptly.
            if progressed {
                quiet_since = None;
                // After the End, only its acknowledgement is left to give: at once.
                self.mailbox.eager.store(eos, Ordering::SeqCst);
            } else {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                let left = ACK_DELAY.saturating_sub(since.elapsed());
                if (ack_waits || awaits_consumption) && !left.is_zero() {
                    std::thread::park_timeout(left);
                } else {
                    self.mailbox.eager.store(true, Ordering::SeqCst);
                    if !self.mailbox.consumed_waits() {
                        std::thread::park_timeout(SLICE.min(settings.heartbeat));
                    }
                }
            }
        }
    }

    /// Whether the consumption acknowledged by `st.ack` is to be sent now rather than held back
    /// (one Ack per batch would wake the writer for each): always on a new connection (the
    /// writer may have missed the last one) and for the End; otherwise once a quarter of the
    /// writer's budget or [`ACK_EVERY_FRAMES`] frames are consumed, or once no frame was
    /// delivered for [`ACK_DELAY`] (the stream pauses, or the reader waits for what only the
    /// writer's budget lets come).
    fn ack_due(
        st: &State<T>,
        acked_sent: Option<u64>,
        settings: &TcpSettings,
        quiet_since: Option<Instant>,
    ) -> bool {
        acked_sent.is_none()
            || st.end_acked
            || st.ack_is_large(settings)
            || quiet_since.is_some_and(|t| t.elapsed() >= ACK_DELAY)
    }

    /// The run is over. A failed process just closes, so that its writer keeps everything for
    /// a restarted reader. A process ending normally acknowledges the End it delivered (what
    /// its agents left unconsumed never will be) and says Goodbye; if the writer has not
    /// confirmed the End's acknowledgement yet (its Goodbye), the feeder lingers until it does
    /// (see "The last word after a normal end" in the module docs).
    fn end_of_run(&self, writer: &mut Option<(u64, ConnWrite)>) {
        let shared = &self.shared;
        if shared.run.failed() {
            return;
        }
        let (end, confirmed) = {
            let st = shared.lock();
            let end = st.end_seq.filter(|_| st.eos_posted);
            // The writer says Goodbye only once its End is acknowledged.
            (end, st.goodbye)
        };
        let Some(end) = end.filter(|_| !confirmed) else {
            self.send(
                writer,
                &[Frame::Goodbye {
                    reason: "the reading process ended".into(),
                }],
            );
            return;
        };
        let deadline = shared.linger.start(None);
        shared.lingering.store(true, Ordering::SeqCst);
        let last_word = [
            Frame::Ack { next: end + 1 },
            Frame::Goodbye {
                reason: "the reading process ended".into(),
            },
        ];
        let heartbeat = shared.settings.heartbeat;
        // The connection the last word was sent on.
        let mut told: Option<u64> = None;
        let mut last_send = Instant::now();
        let mut said = false;
        // Ends: the writer confirms, the run fails, or the deadline passes; each pass waits at
        // most a slice.
        loop {
            if shared.run.failed() {
                return;
            }
            {
                let mut st = shared.lock();
                if st.goodbye {
                    tracing::info!(
                        "connection {}: host '{}' has the acknowledgement of its end of stream",
                        shared.label,
                        shared.host
                    );
                    return;
                }
                if let Some(w) = st.incoming.take() {
                    *writer = Some(w);
                }
                if writer
                    .as_ref()
                    .is_some_and(|(n, _)| *n != st.conn_no || !st.connected)
                {
                    *writer = None;
                }
            }
            // The deadline may have been brought nearer (a drain).
            let deadline = shared.linger.deadline().unwrap_or(deadline);
            if Instant::now() >= deadline {
                *shared.gave_up_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
                tracing::warn!(
                    "connection {}: host '{}' did not come back for the acknowledgement of its \
                     end of stream ({}); ending anyway: everything it sent was consumed",
                    shared.label,
                    shared.host,
                    if told.is_some() {
                        "sent, not confirmed"
                    } else {
                        "not sent: no connection"
                    }
                );
                return;
            }
            if let Some(conn_no) = writer.as_ref().map(|(n, _)| *n) {
                if told != Some(conn_no) {
                    if self.send(writer, &last_word) {
                        told = Some(conn_no);
                        last_send = Instant::now();
                        shared.acked.store(end + 1, Ordering::SeqCst);
                    }
                } else if last_send.elapsed() >= heartbeat && self.send(writer, &[Frame::Heartbeat])
                {
                    last_send = Instant::now();
                }
            } else if !said {
                said = true;
                tracing::info!(
                    "connection {}: the run ended; waiting up to {} for host '{}' to reconnect \
                     and take the acknowledgement of its end of stream",
                    shared.label,
                    secs(deadline.saturating_duration_since(Instant::now())),
                    shared.host
                );
            }
            std::thread::park_timeout(SLICE.min(heartbeat));
        }
    }
}
