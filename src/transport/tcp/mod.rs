//! TCP links between hosts: the wire protocol, its authenticated handshake, and the link that
//! drives them (a writer's [`TcpSender`], a reader's feeder from [`spawn_tcp_feeder`]).
//!
//! A TCP link carries one edge of the graph from a writing process on one host to a reading
//! process on another. The writer's side is the **client** (it connects), the reader's side
//! the **server** (it listens, one port per reading link). [`wire`] and [`handshake`] are the
//! protocol (bytes in, bytes out, over any `Read + Write`); [`stream`] the connection under it
//! (plain TCP; TLS slots in there); [`writer`] and [`feeder`] the two ends of a link, which
//! mirror the shared-memory flavor's `ShmSender` and `spawn_feeder`.
//!
//! # The link, end to end
//!
//! - **Writer** ([`TcpSender`], a flavor of the host's `LinkTx`). `write` encodes batches into Data
//!   frames on the host's thread (the rings' codec: plain bytes for numbers and declared `Pod`
//!   types, postcard otherwise; at most 256 KiB of payload a frame, a single element of up to
//!   `MAX_ELEMENT_BYTES` always fits one) and queues them, each with the next seq. A frame stays
//!   queued until the reader acknowledges it; `write` takes nothing more once `unacked_bytes` wait
//!   for acknowledgement, counting each frame's payload and [`FRAME_COST_BYTES`] (but always at
//!   least one frame when none does): that bound is the link's back-pressure, exactly like an
//!   out-of-credit local link, and the I/O thread posts a credit envelope to the host when
//!   acknowledgements make room. An **I/O thread** connects, handshakes, writes queued frames
//!   (several per write call), heartbeats, and reconnects; a second thread per connection reads the
//!   reader's acknowledgements. (Writing from the host's thread when the socket has room was tried
//!   and measured: on loopback it was no faster, the host's thread then paying for the receiver's
//!   side of each `send`; see `docs/benchmarks-journal.md`, issue 10.) `close` queues an End frame after
//!   the data; the stream counts as ended for the host only once the End is acknowledged
//!   ([`TcpSender::finished`]), i.e. once the reading agent consumed every element, so a writing
//!   process never exits with data only it holds.
//! - **Reader** ([`spawn_tcp_feeder`]). An accepting thread hands each connection to a
//!   handshake thread (at most 4 at once, 10 s each), which, once the writer is accepted,
//!   reads its frames, checks their seq and decodes them into private memory (an element
//!   count that does not match, or a payload that does not decode, is a protocol error
//!   naming the link and the peer), and delivers them to the reading host itself, after each
//!   read, within the input's credit, like a local writer. A **feeder thread** delivers what
//!   waited for credit once credit comes back, and the end of stream; it sends the Acks,
//!   heartbeats and Stop, and counts as a source for quiescence until it has delivered the end
//!   of stream. Both deliver under one lock, in order.
//! - **Acknowledgements mean "consumed"**. Credit coming back from the reading agent is
//!   consumption (the shm feeder's durable credit); the feeder acknowledges, cumulatively, the
//!   frames whose every element was consumed. Under load it holds Acks back until a quarter
//!   of `unacked_bytes` or 128 frames are consumed (one Ack per batch would wake the writer
//!   for each; the connection thread wakes the feeder when that much is consumed; the frame
//!   count keeps the frames a writer holds few when each carries one element); once no frame
//!   was delivered for a millisecond, and on a new connection, it acknowledges at once. The
//!   End is acknowledged once it was delivered and everything before it was consumed, at
//!   once.
//!
//! # Marks
//!
//! A mark (`crate::stream::Mark`) is a frame of its own, sequenced like Data and End, so it
//! crosses a reconnection as they do: resent if unacknowledged, dropped by the reader if it
//! already has its seq, never lost or repeated. [`TcpSender::write_mark`] queues it behind
//! everything written before it; it costs the unacknowledged-bytes budget its 22 bytes of
//! frame and [`FRAME_COST_BYTES`], as any frame (so marks with no data between them are
//! bounded like data; the 22 bytes are counted in `bytes`), and when the budget is used up
//! it waits in the link's stash like data. The feeder queues it in order with the batches
//! and delivers it as soon as the batches before it went (it takes no credit, but waits
//! behind a batch that waits for credit); it acknowledges it as a frame of no element, once
//! delivered and everything before it consumed.
//!
//! # Resuming after a break
//!
//! Any break (a read or write error, the peer silent for `peer_timeout`, bytes that break the
//! protocol) closes the connection. The writer logs it once (warn, naming the host and
//! address) and reconnects, backing off from 100 ms to 5 s, until `reconnect_limit` has
//! passed since the break; then the run fails naming the link, the host, its address and the
//! last error. The reader logs the break too and waits for the writer as long, then fails
//! naming the writer's host. A resumption is logged (info) and counted (`reconnects`).
//!
//! `Accept {resume_from}` says which seq the writer sends first on the new connection:
//!
//! - A reader that knows this writer (same **writer epoch**, drawn at random by each
//!   `TcpSender`) answers the seq it expects next: it has every frame before it. The writer
//!   skips those (it keeps them until they are acknowledged: they may be unconsumed) and
//!   resends the rest in order.
//! - A **fresh reader** (a restarted reading process: a new feeder on the same port knows
//!   nothing) answers `resume_from = 0`: "send everything you hold". The writer resends every
//!   frame not yet acknowledged, from the oldest, and the fresh reader takes the first seq it
//!   gets as its start. Acknowledgements covered only consumed elements, so nothing is lost;
//!   only elements the dead reader had received but whose frames were not all consumed come
//!   again. That holds for a reading process restarted within its run (what it consumed went
//!   on into its outputs, which outlive it). A fresh reader in a process that was not
//!   restarted, resumed past seq 0, belongs to a new run of its host: the run that
//!   acknowledged the earlier frames ended without draining, and what it had not passed on
//!   ended with it; the reader says so, as an error naming the link and the writer's host.
//! - A writer with a **new epoch** (a restarted writing process) starts a fresh sequence at the
//!   reader (`resume_from = 0`, any first seq accepted); what the old writer's frames brought
//!   is still delivered.
//!
//! The reader drops a seq it already has (no duplicate); a gap is a protocol error (the
//! writer reconnects and resends from where the reader is). A writer whose Accept names a seq
//! it never sent, or an Ack beyond what it sent, breaks the connection the same way.
//!
//! # Start order, heartbeats, stopping
//!
//! - The writer retries connecting for `connect_wait`, logging every 5 s that it waits for the
//!   reader's host to listen, then fails naming the host and address; the reader waits as
//!   long for its writer's first connection.
//! - Each side sends a Heartbeat when it has sent nothing for `heartbeat`; a peer silent for
//!   `peer_timeout` is a break.
//! - When this process's run is stopping (polled every 100 ms) and the link has not ended,
//!   either side sends a Stop frame, once; a side that receives one calls its `on_peer_stop`
//!   hook with the peer's host name, once.
//! - A writer whose End was acknowledged says Goodbye and closes; its reader then ends. A
//!   reading process that ends normally says Goodbye too (acknowledging the End if it had
//!   it); one that fails just closes, and its writer waits for a restarted one.
//! - A reading process that ends normally with the End delivered but its acknowledgement not
//!   confirmed (no Goodbye from the writer yet: the connection broke just before) does not
//!   exit yet: its feeder keeps the port open and answers the writer's reconnection
//!   (`resume_from` past the End) with the End's Ack and Goodbye, until the writer's Goodbye
//!   or `reconnect_limit` after the run's end (see the feeder's "The last word after a normal
//!   end").
//!
//! # Bad peers
//!
//! A connection to a reader's port that fails the handshake (wrong secret, application,
//! deployment, edge, type or version, bytes that are not iotstream's, a second writer while one
//! is connected, silence for 10 s) is refused and logged (warn, naming the peer's address and
//! the reason); it never touches the running link. A writer refused for a reason that will
//! not change fails its run at once, naming it; refused as "busy" it retries as after a break.
//! Frames after the handshake are decoded with a hard memory bound, and a reader never holds
//! more unacknowledged frames than the writer may send (`unacked_bytes` and a frame, each
//! frame counting its payload and [`FRAME_COST_BYTES`]): more is a protocol error, not an
//! allocation.
//!
//! # Behaviour at the time of writing
//!
//! - Frames carry at most 256 KiB of payload unless one element needs more; a writer hands at
//!   most 1 MiB of frames to one round of writes: over plain TCP as they are queued
//!   (`writev`), under TLS small frames copied into one buffer (a record per write).
//! - Every link thread looks at its run and its link at least every 100 ms; the acceptor polls
//!   every 20 ms; a connect attempt lasts at most 3 s.
//! - The reader does not acknowledge early: a reading agent that waits for more elements than
//!   `unacked_bytes` holds (a count window of more than 16 MiB of elements by default, each
//!   frame counting 128 bytes more: about 116,000 frames of one 8-byte element) waits
//!   forever, as its writer does for room. Size `unacked_bytes` above the largest window a
//!   reader of the link needs (the shared-memory flavor releases early instead, see
//!   `transport::held`).
//! - Threads per link: writer, one I/O thread and one ack thread per connection; reader, the
//!   acceptor, the feeder thread and one thread per connection (at most 4 in handshake). Under
//!   load a batch crosses two hand-offs besides the socket: the writing host's thread to the
//!   I/O thread (woken only while it waits for work), and the connection thread posting it to
//!   the reading host.
//!
//! # Frames
//!
//! Everything on the connection, handshake included, is a frame: a `u32` little-endian length
//! of what follows, a kind byte, a body ([`wire`] lists them all). After the handshake:
//!
//! - **Data** `{seq, elements, payload}`: one encoded batch (the shm rings' codec), several per
//!   write when they wait ([`wire::encode_data`] appends one from a borrowed payload);
//! - **End** `{seq}`: end of stream, in band after the last batch, with a seq of its own;
//! - **Mark** `{seq, mark}`: a watermark or idleness, in band between the batches around it,
//!   with a seq of its own (see "Marks" above);
//! - **Ack** `{next}`: from the reader, every seq below `next` is consumed (cumulative);
//! - **Heartbeat**: either side, when it has sent nothing for a while;
//! - **Goodbye** `{reason}`: either side, before an orderly close; the peer logs the reason;
//! - **Stop**: either side, once, when its application is stopping: the peer drains too.
//!
//! A receiver reads them with a [`wire::FrameDecoder`], which checks each length against its
//! limit (64 MiB unless configured) before it awaits or allocates anything, holds at most one
//! largest frame, and turns any malformed input into a [`wire::WireError`] naming what was
//! wrong, never a panic.
//!
//! # Handshake
//!
//! ```text
//! client                                          server
//!   Hello {magic "IOTSTRM1", version, app,
//!          deployment digest, edge, link label,
//!          type name, type fingerprint,
//!          writer epoch, authenticated, nonce}  ->
//!                                               <-  Refuse {reason}
//!                                                 | Challenge {server nonce, server proof}
//!   Refuse {reason} | Proof {client proof}      ->
//!                                               <-  Refuse {reason} | Accept {resume_from}
//! ```
//!
//! - Handshake messages are capped at 64 KiB, whatever the frame limit.
//! - The server refuses another protocol version (naming both), a Hello that says
//!   `authenticated` when it has no secret or the reverse (naming the side without one), and,
//!   once the client proved the secret, what its `check` refuses (application, deployment,
//!   edge, type). A peer whose first bytes are not a handshake (an HTTP request, say) is
//!   "not an iotstream process", with its first bytes shown escaped.
//! - Whoever refuses sends a Refuse with the reason and returns the same reason as its error,
//!   so both sides' logs say what was wrong ([`handshake::HandshakeError`]).
//! - `Accept` carries the seq the reader expects next: the writer resumes there, so a
//!   reconnection neither loses nor repeats a batch.
//! - The length prefix, the Hello's magic and version, and the Refuse message never change
//!   between versions, so that two versions can always tell each other why they disagree.
//!
//! # What the HMAC covers
//!
//! With a shared [`auth::Secret`], the server's proof is
//! `HMAC-SHA256(secret, "iotstream server v1" || Hello body || server nonce)` and the client's
//! the same with `"iotstream client v1"`. The Hello body is every field of the Hello as sent
//! (magic, version, application, deployment digest, edge, link, type, epoch, the authenticated
//! flag, the client's nonce). So each proof binds the secret, the role (a proof cannot be
//! reflected back), what the client claims to be, and both sides' fresh nonces (neither
//! proof can be replayed on another connection). Proofs are compared in constant time. The
//! client checks the server's proof first and gives none of its own to a server that failed.
//!
//! Not covered: the Refuse and Accept messages, and every frame after the handshake. The
//! handshake authenticates the peers; it neither encrypts nor protects the stream itself.
//! Someone able to alter traffic between the hosts can alter or cut it after the handshake;
//! TLS (rustls, under the same drivers, which take any `Read + Write`) is what protects it.
//! Without a secret (`insecure = true` on both sides) the Challenge and Proof carry zeros,
//! nothing is checked, and any process that can reach the port can connect.

pub(crate) mod auth;
pub(crate) mod feeder;
pub(crate) mod handshake;
pub(crate) mod stream;
pub(crate) mod tls;
pub(crate) mod wire;
pub(crate) mod writer;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

// The runtime's entry points (issue 10: the lead wires them in).
#[allow(unused_imports)]
pub(crate) use feeder::{spawn_tcp_feeder, TcpFeederSpec};
#[allow(unused_imports)]
pub(crate) use writer::{TcpSender, TcpWriterSpec};

use super::codec;
use crate::metrics::LinkCounters;
use crate::stream::{Element, MAX_ELEMENT_BYTES};
use wire::Hello;

/// How a TCP link behaves; from the deployment file, the same on every host.
#[derive(Debug, Clone)]
pub(crate) struct TcpSettings {
    /// The shared secret (`None`: the deployment says `insecure = true`).
    pub secret: Option<Arc<auth::Secret>>,
    /// TLS on the link (`None`: plain TCP).
    pub tls: Option<tls::TlsConfig>,
    /// How long a writer waits, at start, for its reader's host to listen (and a reader for its
    /// writer's first connection). Default 60 s.
    pub connect_wait: Duration,
    /// A side that has sent nothing for this long sends a Heartbeat. Default 1 s.
    pub heartbeat: Duration,
    /// A peer silent for this long is taken as gone: the connection is broken. Default 5 s.
    pub peer_timeout: Duration,
    /// How long a broken link is retried (writer) or waited for (reader) before the run fails
    /// naming the peer's host. Default 60 s.
    pub reconnect_limit: Duration,
    /// The largest frame (kind + body) either side sends or accepts. Raised to
    /// [`MIN_FRAME_BYTES`] if set lower, so that any element fits one frame. Default
    /// [`wire::DEFAULT_MAX_FRAME_BYTES`].
    pub max_frame_bytes: u32,
    /// The writer's bound on bytes sent and not acknowledged (the back-pressure): each frame's
    /// payload and [`FRAME_COST_BYTES`] for the frame itself; the reader refuses to hold more
    /// than this and a frame. Default 16 MiB.
    pub unacked_bytes: usize,
}

impl Default for TcpSettings {
    fn default() -> Self {
        TcpSettings {
            secret: None,
            tls: None,
            connect_wait: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            reconnect_limit: Duration::from_secs(60),
            max_frame_bytes: wire::DEFAULT_MAX_FRAME_BYTES,
            unacked_bytes: 16 << 20,
        }
    }
}

/// The smallest frame limit a link uses: one element of [`MAX_ELEMENT_BYTES`] with its
/// encoding's and the Data frame's headers fits, with room to spare.
pub(crate) const MIN_FRAME_BYTES: u32 = (MAX_ELEMENT_BYTES + 1024) as u32;

/// The payload a writer puts in one Data frame when elements are small: large enough that a
/// frame's fixed cost does not matter, small enough that a few frames keep the pipe full.
const TARGET_PAYLOAD_BYTES: usize = 256 << 10;

/// What a Data or Mark frame costs the budget of bytes not acknowledged (`unacked_bytes`),
/// on both ends, besides its payload: about what holding it costs in memory (its header, the
/// writer's queue entry and buffer, the reader's record and batch). Without it, frames of one
/// small element each would be bounded only by their payload: 16 MiB of 8-byte elements is
/// two million frames, a quarter of a gigabyte held.
pub(crate) const FRAME_COST_BYTES: usize = 128;

// Bytes of a Data frame besides its payload (shared with the broker links).
use crate::transport::framed::DATA_OVERHEAD_BYTES;

/// How long a connection's handshake may last, from its accept: a silent connector cannot
/// keep a handshake slot longer.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest any thread of a link blocks before it looks at its run and its link again.
const SLICE: Duration = Duration::from_millis(100);

/// The first pause between two reconnection attempts; it doubles up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_millis(100);

/// The longest pause between two reconnection attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// How often a side that waits for its peer says so.
const WAIT_LOG_EVERY: Duration = Duration::from_secs(5);

/// How a reader refuses a second writer while one is connected; a writer refused so retries.
const BUSY_REASON: &str = "another writer is connected to this link";

impl TcpSettings {
    /// The frame limit in force: `max_frame_bytes`, at least [`MIN_FRAME_BYTES`].
    pub(crate) fn frame_limit(&self) -> u32 {
        self.max_frame_bytes.max(MIN_FRAME_BYTES)
    }
}

/// What the handshake checks: both ends of one link compute the same.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkIdentity {
    /// The application's name.
    pub app: String,
    /// A digest of the deployment (the same file on every host).
    pub deployment: [u8; 32],
    /// The edge's index in the graph.
    pub edge: u32,
    /// The link's label, as "sensor.out -> detector.in".
    pub label: String,
    /// The element type's name.
    pub type_name: String,
    /// The element type's fingerprint: its name, size and encoding (see [`LinkIdentity::new`]).
    pub type_fingerprint: u64,
}

impl LinkIdentity {
    /// The identity of edge `edge`, labelled `label`, carrying `T` (its fingerprint:
    /// [`codec::type_fingerprint`]).
    pub(crate) fn new<T: Element>(app: &str, deployment: [u8; 32], edge: u32, label: &str) -> Self {
        LinkIdentity {
            app: app.to_string(),
            deployment,
            edge,
            label: label.to_string(),
            type_name: std::any::type_name::<T>().to_string(),
            type_fingerprint: codec::type_fingerprint::<T>(),
        }
    }

    /// The writer's Hello (the client handshake draws its nonce).
    fn hello(&self, writer_epoch: u64, authenticated: bool) -> Hello {
        Hello {
            magic: wire::MAGIC,
            version: wire::VERSION,
            app: self.app.clone(),
            deployment: self.deployment,
            edge: self.edge,
            link: self.label.clone(),
            type_name: self.type_name.clone(),
            type_fingerprint: self.type_fingerprint,
            writer_epoch,
            authenticated,
            nonce: [0; 32],
        }
    }

    /// The reader's check of a writer's Hello: why it is refused, if it is.
    fn check(&self, hello: &Hello) -> Result<(), String> {
        if hello.app != self.app {
            return Err(format!(
                "wrong application: the reader runs '{}', the writer '{}'",
                self.app, hello.app
            ));
        }
        if hello.deployment != self.deployment {
            return Err(
                "wrong deployment: the two hosts run different deployment files (their digests \
                 differ)"
                    .to_string(),
            );
        }
        if hello.edge != self.edge || hello.link != self.label {
            return Err(format!(
                "wrong connection: this port is for connection #{} '{}', the writer sends \
                 connection #{} '{}'",
                self.edge, self.label, hello.edge, hello.link
            ));
        }
        if hello.type_name != self.type_name || hello.type_fingerprint != self.type_fingerprint {
            return Err(format!(
                "wrong type: the reader takes {} (fingerprint {:016x}), the writer sends {} \
                 (fingerprint {:016x})",
                self.type_name, self.type_fingerprint, hello.type_name, hello.type_fingerprint
            ));
        }
        Ok(())
    }
}

/// Called, once per link, when the peer says its application is stopping; the argument is the
/// peer's host name.
pub(crate) type StopHook = Arc<dyn Fn(String) + Send + Sync>;

/// A [`StopHook`] that fires at most once, shared by a link's threads.
struct PeerStop {
    hook: StopHook,
    host: String,
    fired: AtomicBool,
}

impl PeerStop {
    fn new(hook: StopHook, host: &str) -> Arc<PeerStop> {
        Arc::new(PeerStop {
            hook,
            host: host.to_string(),
            fired: AtomicBool::new(false),
        })
    }

    /// A Stop frame arrived: calls the hook unless it was called already.
    fn fire(&self, label: &str) {
        if !self.fired.swap(true, Ordering::SeqCst) {
            tracing::info!(
                "connection {label}: host '{}' says its application is stopping",
                self.host
            );
            (self.hook)(self.host.clone());
        }
    }
}

/// Pauses between reconnection attempts: from [`BACKOFF_FIRST`], doubling, up to
/// [`BACKOFF_MAX`].
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Backoff {
        Backoff {
            next: BACKOFF_FIRST,
        }
    }

    /// The pause before the next attempt.
    fn pause(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        now
    }
}

/// Sleeps `d` in slices of at most [`SLICE`], returning early (false) once `go_on` is false.
fn sleep_while(d: Duration, go_on: impl Fn() -> bool) -> bool {
    let until = Instant::now() + d;
    // Ends: each pass sleeps until `until` comes nearer by up to a slice, or returns.
    loop {
        if !go_on() {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(SLICE));
    }
}

/// Seconds with up to three decimals, for messages ("60 s", "0.25 s").
fn secs(d: Duration) -> String {
    format!("{} s", d.as_millis() as f64 / 1000.0)
}

/// Whether an I/O error is a read or write timeout (the socket's slice ran out).
fn timed_out(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// The counters a link updates, for the I/O threads.
fn set_gauge(c: &LinkCounters, unacked: usize) {
    c.unacked_bytes
        .store(unacked as u64, std::sync::atomic::Ordering::Relaxed);
}
