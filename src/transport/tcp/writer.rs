//! The writer's end of a TCP link: [`TcpSender`], a flavor of the host's `LinkTx` (see the
//! [module docs](super) for the protocol and the resume rules).
//!
//! Three parts share one [`State`] under a mutex:
//!
//! - the host's thread calls [`TcpSender::write`], which encodes batches into Data frames and
//!   queues them within the unacknowledged-bytes budget, and [`TcpSender::close`];
//! - the link's **I/O thread** connects (bounded by `connect_wait`), handshakes, writes the
//!   queued frames (several per write call), heartbeats, sends Stop, and reconnects after a
//!   break (bounded by `reconnect_limit`); it ends when the End is acknowledged, the run
//!   fails, or the run is over or the sender dropped with no End owed (below). It is notified
//!   only while it waits for work (a notify is a system call even when nobody waits), and
//!   Acks notify it only for the End;
//! - per connection, an **ack thread** reads what the reader sends (Acks, Heartbeats, Stop,
//!   Goodbye), frees acknowledged frames, posts a credit envelope to the host when that makes
//!   room (or acknowledges the End), and watches the reader's silence.
//!
//! Either connection thread that meets an error records it and cuts the connection, which
//! wakes the other out of any blocked read or write.
//!
//! # The Goodbye after the run
//!
//! A host with a TCP output is done once its End is acknowledged, and a run ends with its
//! last host: so the writing run often ends the very moment the acknowledgement arrives. The
//! Goodbye that confirms it must still go out, or the reader's feeder lingers for a writer
//! that never comes back, holding its process's exit for `reconnect_limit` (see the feeder's
//! "The last word after a normal end"). So, once the End is acknowledged, the
//! acknowledgement reader reads on until the reader closes (or is silent for `peer_timeout`,
//! or the linger's deadline passes), whatever the run: before, it saw the run over and cut
//! the connection, often before the I/O thread's Goodbye was out.
//!
//! And the link **lingers**: it registers a [`Linger`] with its run, released when its I/O
//! thread ends, so that the process does not exit before the Goodbye is out; and while its
//! End is queued and not acknowledged it goes on (connection, reconnection, acknowledgement
//! reader) after the run's end or the sender's drop, until the acknowledgement comes (then
//! Goodbye) or the linger's deadline passes (`reconnect_limit` after the run's end, less after
//! a drain), with a warning naming the reader's host and no failure. A failed run does not
//! linger: the link ends at once.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::handshake::{self, HandshakeError};
use super::stream::{Conn, ConnRead, ConnWrite, Cutter, HandshakeDeadline};
use super::tls::TlsError;
use super::wire::{self, Frame, FrameDecoder, Hello};
use super::{
    secs, set_gauge, sleep_while, timed_out, Backoff, LinkIdentity, PeerStop, StopHook,
    TcpSettings, BUSY_REASON, DATA_OVERHEAD_BYTES, FRAME_COST_BYTES, HANDSHAKE_TIMEOUT, SLICE,
    TARGET_PAYLOAD_BYTES, WAIT_LOG_EVERY,
};
use crate::error::Error;
use crate::metrics::{add, LinkCounters};
use crate::stream::{Element, Mark};
use crate::transport::framed::{DataFrame, FrameEncoder, Outbox};
use crate::transport::mailbox::{link_thread, Envelope, Linger, LingerGuard, Mailbox, Run};

/// The least time a dial gives a handshake, however little of the connect wait is left.
const MIN_HANDSHAKE_WAIT: Duration = Duration::from_secs(1);

/// How long one TCP connect attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest pause between two connect attempts while a writer waits for its reader's host
/// to start (after a break, [`super::BACKOFF_MAX`] applies).
const START_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The most bytes of frames the I/O thread takes from the queue for one round of writes.
const WRITE_ROUND_BYTES: usize = 1 << 20;

/// What the writer's I/O thread needs to reach its reader.
pub(crate) struct TcpWriterSpec {
    /// What the handshake says and checks.
    pub id: LinkIdentity,
    /// The reader's host, for messages.
    pub peer_host: String,
    /// The reader's listening address, `"addr:port"` (a name is resolved at each attempt).
    pub connect_to: String,
    /// The deployment's TCP settings.
    pub settings: Arc<TcpSettings>,
    /// The link's counters (`bytes`, `reconnects`, `unacked_bytes` here; `LinkTx` counts
    /// elements and batches).
    pub counters: Arc<LinkCounters>,
    /// Called once if the reader says its application is stopping.
    pub on_peer_stop: StopHook,
}

/// What the host's thread, the I/O thread and the ack thread share.
struct State {
    /// Every frame taken and not acknowledged, in seq order; the budget's count of their
    /// cost (`unacked`: payload and [`FRAME_COST_BYTES`] a frame); `full`: `write` stopped
    /// short for the budget, so a credit envelope is posted when room comes; `closed`: the
    /// End is queued; `finished`: the End is acknowledged.
    out: Outbox<Arc<Vec<u8>>>,
    /// Every seq below is acknowledged.
    acked: u64,
    /// The next seq to write on the current connection.
    send_from: u64,
    /// Every seq below was handed to some connection: an Ack beyond is a protocol error.
    written: u64,
    /// The current connection's number (0: none yet); a thread of an older one stops.
    conn: u64,
    /// Why the current connection broke, set by whichever of its threads saw it first.
    broken: Option<String>,
    /// Cuts the current connection.
    cutter: Option<Cutter>,
    /// The reader's last Goodbye reason on the current connection.
    goodbye: Option<String>,
    /// A Stop was sent.
    stop_sent: bool,
    /// The I/O thread waits on [`Shared::cond`] for work: only then does new work notify it
    /// (a notification costs a system call even when nobody waits).
    io_waiting: bool,
}

struct Shared {
    state: Mutex<State>,
    /// Signals the I/O thread: frames queued, a connection broke, the End acknowledged.
    cond: Condvar,
    /// The [`TcpSender`] is gone: the I/O thread ends, unless it owes the End (see the module
    /// docs, "The Goodbye after the run").
    dropped: AtomicBool,
    /// Holds the process's exit after the run's end until the Goodbye is out (or the End's
    /// acknowledgement is given up on); released when the I/O thread ends.
    linger: Arc<Linger>,
    /// The linger's deadline passed and the warning was given.
    gave_up: AtomicBool,
    /// The connection and the reader's host, for messages.
    label: String,
    host: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the link has work left, with the state `st` in hand: the run goes on and the
    /// sender exists; or, the run not failed, the End is queued and not acknowledged and, once
    /// the run is over, the linger's deadline has not passed (see the module docs).
    fn has_work(&self, st: &State, run: &Run) -> bool {
        if run.failed() {
            return false;
        }
        let over = run.is_over();
        if !over && !self.dropped.load(Ordering::SeqCst) {
            return true;
        }
        if !st.out.closed || st.out.finished {
            return false;
        }
        if !over {
            // The sender is gone but the run goes on: the End is owed as long as it runs.
            return true;
        }
        if Instant::now() < self.linger.start(None) {
            return true;
        }
        if !self.gave_up.swap(true, Ordering::SeqCst) {
            tracing::warn!(
                "connection {}: host '{}' did not acknowledge the end of stream by the end of \
                 the wait after the run's end (at most {}); ending anyway: it consumed \
                 everything before it",
                self.label,
                self.host,
                secs(self.linger.limit())
            );
        }
        false
    }
}

/// The writer's end of a TCP link (see the [module docs](self)).
pub(crate) struct TcpSender<T> {
    shared: Arc<Shared>,
    encoder: FrameEncoder<T>,
    /// Acknowledged frames lent by the outbox, which the encoder writes over.
    spare: Vec<Arc<Vec<u8>>>,
    /// The frames of one pass of [`write`](Self::write) (kept for its capacity).
    frames: Vec<DataFrame<Arc<Vec<u8>>>>,
    counters: Arc<LinkCounters>,
    /// The budget of unacknowledged bytes (payload and [`FRAME_COST_BYTES`] a frame).
    budget: usize,
}

impl<T: Element> TcpSender<T> {
    /// Starts the link's I/O thread, which connects in the background (see the module docs);
    /// returns at once. The thread posts `Credit { output, link, n: 0 }` to `wake` when
    /// acknowledgements make room after a short [`write`](Self::write), and when the End is
    /// acknowledged.
    pub(crate) fn open(
        spec: TcpWriterSpec,
        wake: Arc<dyn Mailbox>,
        output: u32,
        link: u32,
        run: Run,
    ) -> Result<Self, Error> {
        let label = spec.id.label.clone();
        let epoch_bytes = super::auth::nonce().map_err(|e| Error::Runtime {
            detail: format!("connection {label}: {e}"),
        })?;
        let epoch = u64::from_le_bytes(epoch_bytes[..8].try_into().expect("8 bytes"));
        let linger = Linger::new(label.clone(), spec.settings.reconnect_limit);
        // Registered before the run can end; released when the I/O thread ends.
        run.linger(Arc::clone(&linger));
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                out: Outbox::new(FRAME_COST_BYTES),
                acked: 0,
                send_from: 0,
                written: 0,
                conn: 0,
                broken: None,
                cutter: None,
                goodbye: None,
                stop_sent: false,
                io_waiting: false,
            }),
            cond: Condvar::new(),
            dropped: AtomicBool::new(false),
            linger,
            gave_up: AtomicBool::new(false),
            label: label.clone(),
            host: spec.peer_host.clone(),
        });
        let settings = Arc::clone(&spec.settings);
        let io = Io {
            shared: Arc::clone(&shared),
            hello: spec.id.hello(epoch, settings.secret.is_some()),
            label: label.clone(),
            host: spec.peer_host.clone(),
            addr: spec.connect_to.clone(),
            stop: PeerStop::new(spec.on_peer_stop, &spec.peer_host),
            settings: Arc::clone(&settings),
            counters: Arc::clone(&spec.counters),
            wake,
            output,
            link,
            run,
        };
        let release = LingerGuard(Arc::clone(&shared.linger));
        std::thread::Builder::new()
            .name(format!("tcp link {output}.{link}"))
            .spawn(move || {
                let _release = release;
                let (run, label) = (Arc::clone(&io.run), io.label.clone());
                link_thread(&run, &label, "TCP link", || io.run())
            })
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start a TCP link thread: {e}"),
            })?;
        // The largest payload a frame may carry.
        let max_payload =
            settings.frame_limit() as usize - (DATA_OVERHEAD_BYTES - wire::HEADER_BYTES);
        Ok(TcpSender {
            shared,
            encoder: FrameEncoder::new(TARGET_PAYLOAD_BYTES, max_payload, "frame"),
            spare: Vec::new(),
            frames: Vec::new(),
            counters: spec.counters,
            budget: settings.unacked_bytes,
        })
    }

    /// Takes as many leading elements of `items` as the unacknowledged-bytes budget allows,
    /// encoded into Data frames, and returns how many; always at least one frame's worth when
    /// nothing is unacknowledged. 0 means full: the I/O thread posts a credit envelope when
    /// acknowledgements make room. An element whose encoding exceeds `MAX_ELEMENT_BYTES` is an
    /// error naming its size.
    pub(crate) fn write(&mut self, items: &[T]) -> Result<usize, String> {
        if self.join_last(items)? {
            return Ok(items.len());
        }
        let mut done = 0;
        let budget = self.budget;
        // Ends: each pass takes at least one element, or returns.
        loop {
            // Only this sender queues frames: the next seq stays until it queues these.
            let (unacked, next_seq) = {
                let mut st = self.shared.lock();
                st.out.lend_spare(&mut self.spare);
                (st.out.unacked, st.out.next_seq)
            };
            let n = self.encoder.encode(
                &items[done..],
                next_seq,
                &mut self.spare,
                &mut self.frames,
                |n, b| {
                    let cost = b + n * FRAME_COST_BYTES;
                    unacked + cost == 0 || unacked + cost < budget
                },
            )?;
            done += n;
            let mut st = self.shared.lock();
            st.out.push_data(&mut self.frames);
            set_gauge(&self.counters, st.out.unacked);
            if st.io_waiting {
                self.shared.cond.notify_all();
            }
            if done == items.len() {
                return Ok(done);
            }
            if st.out.unacked < self.budget {
                // Acknowledgements came while this call encoded: go on.
                continue;
            }
            // Set under the lock the ack thread takes: it cannot free room unseen.
            st.out.full = true;
            return Ok(done);
        }
    }

    /// Appends `items` to the last frame queued, if it is a Data frame that no connection has
    /// taken yet and they fit in it ([`FrameEncoder::join`]) within the budget; true if they
    /// went there. While the I/O thread is busy (writing, or not running), a burst of small
    /// writes thus fills a few frames instead of one frame, and one buffer, per write; a
    /// frame it has taken is never touched (a connection may have sent it, and a resent frame
    /// must be the same).
    fn join_last(&mut self, items: &[T]) -> Result<bool, String> {
        let budget = self.budget;
        let mut st = self.shared.lock();
        let st = &mut *st;
        let unacked = st.out.unacked;
        let Some(last) = st.out.queue.back_mut() else {
            return Ok(false);
        };
        if last.end || last.elements == 0 || last.seq < st.written {
            return Ok(false);
        }
        let Some(frame) = Arc::get_mut(&mut last.frame) else {
            return Ok(false);
        };
        let Some(added) = self
            .encoder
            .join(items, frame, |added| unacked + added < budget)?
        else {
            return Ok(false);
        };
        last.elements += items.len();
        last.payload += added;
        last.cost += added;
        st.out.unacked += added;
        set_gauge(&self.counters, st.out.unacked);
        if st.io_waiting {
            self.shared.cond.notify_all();
        }
        Ok(true)
    }

    /// Test hook: the frames queued (not acknowledged), and how many of them no connection
    /// has taken yet.
    #[cfg(test)]
    pub(crate) fn queued_frames(&self) -> (usize, u64) {
        let st = self.shared.lock();
        (
            st.out.queue.len(),
            st.out.next_seq.saturating_sub(st.written),
        )
    }

    /// Queues `mark` as a Mark frame after everything written before it, with the next seq
    /// (acknowledged, resent and deduplicated like a Data frame); `Ok(false)` when the budget
    /// of unacknowledged bytes is used up: the I/O thread then posts a credit envelope when
    /// acknowledgements make room, as after a short [`write`](Self::write).
    ///
    /// A mark costs the budget its frame's [`wire::MARK_FRAME_BYTES`] (22, counted as payload
    /// in `bytes`) and [`FRAME_COST_BYTES`], as a Data frame does: so marks without data
    /// between them, which the reader acknowledges only once delivered, are bounded by the
    /// budget as data is.
    pub(crate) fn write_mark(&mut self, mark: Mark) -> Result<bool, String> {
        let mut st = self.shared.lock();
        st.out.check_open()?;
        if st.out.unacked != 0 && st.out.unacked >= self.budget {
            // Set under the lock the ack thread takes: it cannot free room unseen.
            st.out.full = true;
            return Ok(false);
        }
        st.out.push_mark(mark);
        set_gauge(&self.counters, st.out.unacked);
        if st.io_waiting {
            self.shared.cond.notify_all();
        }
        Ok(true)
    }

    /// Ends the stream: an End frame after everything written. Closing twice is harmless.
    pub(crate) fn close(&mut self) {
        let mut st = self.shared.lock();
        if st.out.push_end() {
            self.shared.cond.notify_all();
        }
    }

    /// The End is acknowledged: the reader consumed every element.
    pub(crate) fn finished(&self) -> bool {
        self.shared.lock().out.finished
    }

    /// Test hook: what cuts the current connection, as a network failure would.
    #[cfg(test)]
    pub(crate) fn cutter(&self) -> impl Fn() + Send + Sync + 'static + use<T> {
        let shared = Arc::clone(&self.shared);
        move || {
            if let Some(c) = &shared.lock().cutter {
                c.cut();
            }
        }
    }
}

impl<T> Drop for TcpSender<T> {
    fn drop(&mut self) {
        self.shared.dropped.store(true, Ordering::SeqCst);
        self.shared.cond.notify_all();
    }
}

/// Why an attempt to connect failed.
enum DialError {
    /// Worth another attempt (nobody listens yet, a reset, a busy reader).
    Transient(String),
    /// The reader refused this writer for a reason another attempt does not change.
    Fatal(String),
}

/// How a connection ended.
enum Outcome {
    /// The End is acknowledged and the Goodbye sent.
    Finished,
    /// The link is done otherwise (run over, sender dropped).
    Ended,
    /// It broke, for this reason: reconnect.
    Broken(String),
}

/// Whether two dial errors say the same thing but for numbers (ports, addresses, os error
/// codes): a new kind of answer is logged at once, the same one every few seconds.
pub(super) fn same_kind(a: &str, b: &str) -> bool {
    let shape = |s: &str| -> String { s.chars().filter(|c| !c.is_ascii_digit()).collect() };
    shape(a) == shape(b)
}

/// The I/O thread's view of the link.
struct Io {
    shared: Arc<Shared>,
    hello: Hello,
    label: String,
    host: String,
    addr: String,
    stop: Arc<PeerStop>,
    settings: Arc<TcpSettings>,
    counters: Arc<LinkCounters>,
    wake: Arc<dyn Mailbox>,
    output: u32,
    link: u32,
    run: Run,
}

impl Io {
    /// The link still has work: the run goes on and the sender exists, or the End's
    /// acknowledgement is owed ([`Shared::has_work`]).
    fn alive(&self) -> bool {
        self.shared.has_work(&self.shared.lock(), &self.run)
    }

    fn fail(&self, detail: String) {
        self.run.fail(Error::Runtime { detail });
    }

    fn run(self) {
        let Some(mut conn) = self.connect_first() else {
            return;
        };
        // Ends: each pass is one connection; the loop returns when the link is done or
        // reconnection fails.
        loop {
            match self.drive(conn) {
                Outcome::Finished | Outcome::Ended => return,
                Outcome::Broken(error) => {
                    tracing::warn!(
                        "connection {}: the link to host '{}' ({}) broke: {error}; reconnecting \
                         for up to {}",
                        self.label,
                        self.host,
                        self.addr,
                        secs(self.settings.reconnect_limit)
                    );
                    let since = Instant::now();
                    let Some(next) = self.reconnect(since, error) else {
                        return;
                    };
                    add(&self.counters.reconnects, 1);
                    let from = self.shared.lock().send_from;
                    tracing::info!(
                        "connection {}: reconnected to host '{}' ({}) after {}; resuming at \
                         batch {from}",
                        self.label,
                        self.host,
                        self.addr,
                        secs(since.elapsed())
                    );
                    conn = next;
                }
            }
        }
    }

    /// At start: retries for `connect_wait`, saying every few seconds what it waits for.
    fn connect_first(&self) -> Option<Conn> {
        let start = Instant::now();
        let wait = self.settings.connect_wait;
        let mut backoff = Backoff::new();
        // What was last said, and when: a new kind of answer (a refusal after "connection
        // refused", say) is said at once, the same one again every few seconds.
        let mut said: Option<(Instant, String)> = None;
        // Ends: each pass dials once; the deadline or the end of the run returns.
        loop {
            if !self.alive() {
                return None;
            }
            let error = match self.dial(wait.saturating_sub(start.elapsed())) {
                Ok(conn) => return Some(conn),
                Err(DialError::Fatal(e)) => {
                    self.fail(format!(
                        "connection {}: host '{}' ({}) refused the link: {e}",
                        self.label, self.host, self.addr
                    ));
                    return None;
                }
                Err(DialError::Transient(e)) => e,
            };
            let waited = start.elapsed();
            if waited >= wait && self.run.is_over() && !self.run.failed() {
                // Lingering for the End's acknowledgement after a normal end: nothing fails.
                tracing::warn!(
                    "connection {}: host '{}' ({}) did not accept the connection within {} for \
                     the acknowledgement of the end of stream; ending anyway; last error: {error}",
                    self.label,
                    self.host,
                    self.addr,
                    secs(wait)
                );
                return None;
            }
            if waited >= wait {
                self.fail(format!(
                    "connection {}: host '{}' ({}) did not accept the connection within {}; \
                     last error: {error}",
                    self.label,
                    self.host,
                    self.addr,
                    secs(wait)
                ));
                return None;
            }
            if said
                .as_ref()
                .is_none_or(|(t, e)| t.elapsed() >= WAIT_LOG_EVERY || !same_kind(e, &error))
            {
                said = Some((Instant::now(), error.clone()));
                tracing::warn!(
                    "connection {}: waiting for host '{}' ({}) to listen ({error})",
                    self.label,
                    self.host,
                    self.addr
                );
            }
            let pause = backoff.pause().min(START_BACKOFF_MAX).min(wait - waited);
            if !sleep_while(pause, || self.alive()) {
                return None;
            }
        }
    }

    /// After a break: retries with backoff until `reconnect_limit` has passed since `since`,
    /// saying every few seconds what it last heard.
    fn reconnect(&self, since: Instant, mut last: String) -> Option<Conn> {
        let limit = self.settings.reconnect_limit;
        let mut backoff = Backoff::new();
        let mut said = (Instant::now(), last.clone());
        // Ends: each pass dials once; the limit or the end of the run returns.
        loop {
            let left = limit.saturating_sub(since.elapsed());
            if left.is_zero() && self.run.is_over() && !self.run.failed() {
                // Lingering for the End's acknowledgement after a normal end: nothing fails.
                tracing::warn!(
                    "connection {}: lost host '{}' ({}) after the run's end and could not \
                     reconnect within {} for the acknowledgement of the end of stream; ending \
                     anyway: it consumed everything before it; last error: {last}",
                    self.label,
                    self.host,
                    self.addr,
                    secs(limit)
                );
                return None;
            }
            if left.is_zero() {
                self.fail(format!(
                    "connection {}: lost host '{}' ({}) and could not reconnect within {}; last \
                     error: {last}",
                    self.label,
                    self.host,
                    self.addr,
                    secs(limit)
                ));
                return None;
            }
            if !sleep_while(backoff.pause().min(left), || self.alive()) {
                return None;
            }
            match self.dial(limit.saturating_sub(since.elapsed())) {
                Ok(conn) => return Some(conn),
                Err(DialError::Fatal(e)) => {
                    self.fail(format!(
                        "connection {}: host '{}' ({}) refused the link: {e}",
                        self.label, self.host, self.addr
                    ));
                    return None;
                }
                Err(DialError::Transient(e)) => {
                    if said.0.elapsed() >= WAIT_LOG_EVERY || !same_kind(&said.1, &e) {
                        said = (Instant::now(), e.clone());
                        tracing::warn!(
                            "connection {}: still reconnecting to host '{}' ({}) after {} ({e})",
                            self.label,
                            self.host,
                            self.addr,
                            secs(since.elapsed())
                        );
                    }
                    last = e;
                }
            }
        }
    }

    /// The TLS handshake (with TLS) and iotstream's over a connected `stream`.
    ///
    /// A failure before the server proved who it is (its certificate, or its proof of the
    /// secret) is transient: whoever answered may not be the reader at all (something else on
    /// its port while it restarts, an impostor), and must not end the run with one forged
    /// refusal; the dial is retried within the connect wait or the reconnect limit, whose
    /// error then quotes it. Without a secret nothing is proved, and a refusal ends the link.
    fn handshake(&self, stream: TcpStream) -> Result<(Conn, handshake::Accept), DialError> {
        let io_error =
            |e: std::io::Error| DialError::Transient(format!("cannot set up the connection: {e}"));
        let mut conn = Conn::client(
            stream,
            self.settings.tls.as_ref(),
            &self.addr,
            HANDSHAKE_TIMEOUT,
        )
        .map_err(|e| match e {
            // A server name that the address cannot be is this side's own mistake.
            TlsError::BadServerName { .. } | TlsError::Config(_) => DialError::Fatal(e.to_string()),
            // Anything else may come from whoever answered, not proved to be the reader.
            e => DialError::Transient(e.to_string()),
        })?;
        conn.set_timeouts(Some(HANDSHAKE_TIMEOUT), Some(HANDSHAKE_TIMEOUT))
            .map_err(io_error)?;
        let accept =
            handshake::client_handshake(&mut conn, &self.hello, self.settings.secret.as_deref())
                .map_err(|e| match &e {
                    // Under TLS the server proved its certificate before this first read: an
                    // alert there is its refusal of this host's certificate (below).
                    HandshakeError::Unproven(inner)
                        if self.settings.tls.is_some()
                            && matches!(&**inner, HandshakeError::Io(io)
                                if io.kind() == std::io::ErrorKind::InvalidData) =>
                    {
                        DialError::Fatal(e.to_string())
                    }
                    HandshakeError::Unproven(_) => DialError::Transient(e.to_string()),
                    // Under TLS 1.3 the server checks this host's certificate after the
                    // client's handshake is over: its refusal arrives as an alert at the first
                    // read, as InvalidData (`TlsError`). A retry would only repeat it.
                    HandshakeError::Io(io) if io.kind() == std::io::ErrorKind::InvalidData => {
                        DialError::Fatal(e.to_string())
                    }
                    HandshakeError::Io(_) | HandshakeError::Closed => {
                        DialError::Transient(e.to_string())
                    }
                    HandshakeError::Refused { reason, .. } if reason.starts_with(BUSY_REASON) => {
                        DialError::Transient(e.to_string())
                    }
                    _ => DialError::Fatal(e.to_string()),
                })?;
        Ok((conn, accept))
    }

    /// One attempt, with `left` of the time to connect: connect, handshake, apply the
    /// reader's resume point.
    fn dial(&self, left: Duration) -> Result<Conn, DialError> {
        let addrs: Vec<SocketAddr> = self
            .addr
            .to_socket_addrs()
            .map_err(|e| DialError::Transient(format!("cannot resolve the address: {e}")))?
            .collect();
        let mut last = DialError::Transient("the address resolves to nothing".into());
        let mut stream = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = DialError::Transient(format!("cannot connect: {e}")),
            }
        }
        let Some(stream) = stream else {
            return Err(last);
        };
        let io_error =
            |e: std::io::Error| DialError::Transient(format!("cannot set up the connection: {e}"));
        // The whole handshake within its bound, and within the time left to connect.
        let within = HANDSHAKE_TIMEOUT.min(left.max(MIN_HANDSHAKE_WAIT));
        let deadline = HandshakeDeadline::start(&stream, within).map_err(io_error)?;
        let shaken = self.handshake(stream);
        if deadline.finish() {
            return Err(DialError::Transient(format!(
                "the server did not finish its handshake within {}",
                secs(within)
            )));
        }
        let (conn, accept) = shaken?;
        let mut st = self.shared.lock();
        if accept.resume_from > st.out.next_seq {
            return Err(DialError::Transient(format!(
                "the reader resumes at batch {} but only {} were ever sent",
                accept.resume_from, st.out.next_seq
            )));
        }
        // A fresh reader (0) gets everything not acknowledged; a reader that has frames up to
        // `resume_from` gets the rest. Frames it has stay queued until acknowledged.
        st.send_from = accept.resume_from.max(st.acked);
        Ok(conn)
    }

    /// Runs one connection until it breaks or the link is done.
    fn drive(&self, conn: Conn) -> Outcome {
        let setup = (|| {
            conn.set_timeouts(Some(SLICE), Some(self.settings.peer_timeout))?;
            let mine = conn.cutter()?;
            let theirs = conn.cutter()?;
            let (r, w) = conn.split()?;
            Ok::<_, std::io::Error>((mine, theirs, r, w))
        })();
        let (cutter, shared_cutter, r, mut w) = match setup {
            Ok(parts) => parts,
            Err(e) => return Outcome::Broken(format!("cannot set up the connection: {e}")),
        };
        let conn_no = {
            let mut st = self.shared.lock();
            st.conn += 1;
            st.broken = None;
            st.goodbye = None;
            st.cutter = Some(shared_cutter);
            st.conn
        };
        let acks = {
            let reader = AckReader {
                shared: Arc::clone(&self.shared),
                conn_no,
                label: self.label.clone(),
                host: self.host.clone(),
                stop: Arc::clone(&self.stop),
                budget: self.settings.unacked_bytes,
                peer_timeout: self.settings.peer_timeout,
                counters: Arc::clone(&self.counters),
                wake: Arc::clone(&self.wake),
                output: self.output,
                link: self.link,
                run: Arc::clone(&self.run),
            };
            std::thread::Builder::new()
                .name(format!("tcp acks {}.{}", self.output, self.link))
                .spawn(move || {
                    let (run, label) = (Arc::clone(&reader.run), reader.label.clone());
                    link_thread(&run, &label, "TCP acknowledgement reader", || reader.run(r))
                })
        };
        let acks = match acks {
            Ok(handle) => handle,
            Err(e) => {
                cutter.cut();
                return Outcome::Broken(format!("cannot start a thread: {e}"));
            }
        };
        let outcome = self.pump(&mut w);
        if let Outcome::Finished = outcome {
            // An orderly close: no more writes; the ack thread reads until the reader, which
            // got the Goodbye, closes too (closing with its bytes unread would reset the
            // connection, and the reader could lose the Goodbye).
            cutter.close_writes();
        } else {
            cutter.cut();
        }
        // The ack thread sees the cut (or its stale connection number) within a slice.
        let _ = acks.join();
        let mut st = self.shared.lock();
        st.cutter = None;
        outcome
    }

    /// Writes what is queued, heartbeats and Stop on one connection until it breaks or the link
    /// is done.
    fn pump(&self, w: &mut ConnWrite) -> Outcome {
        let heartbeat = self.settings.heartbeat;
        let mut last_send = Instant::now();
        // Reused from round to round: the control frames' bytes, a buffer to gather small
        // frames in (TLS), the control frames and the queued frames of a round.
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let mut control = Vec::new();
        let mut frames: Vec<Arc<Vec<u8>>> = Vec::new();
        // Ends: each pass writes something or waits a slice; every exit condition is checked
        // at each pass.
        loop {
            control.clear();
            let mut payload = 0;
            {
                let mut st = self.shared.lock();
                // Ends: each pass returns, breaks with work, or waits at most a slice.
                loop {
                    if let Some(e) = st.broken.take() {
                        return Outcome::Broken(e);
                    }
                    if st.out.finished {
                        drop(st);
                        let mut bye = Vec::new();
                        wire::encode_frame(
                            &Frame::Goodbye {
                                reason: "the stream ended and the reader consumed it".into(),
                            },
                            &mut bye,
                        );
                        // Best effort: the reader ends without it once its peer is gone.
                        let _ = w.write_all(&bye).and_then(|()| w.flush());
                        return Outcome::Finished;
                    }
                    if self.run.draining() && !st.stop_sent {
                        st.stop_sent = true;
                        control.push(Frame::Stop);
                    }
                    if control.is_empty() && !self.shared.has_work(&st, &self.run) {
                        return Outcome::Ended;
                    }
                    if st.send_from < st.out.next_seq {
                        let first = st.out.queue.front().map_or(st.out.next_seq, |q| q.seq);
                        let skip = (st.send_from.max(first) - first) as usize;
                        let mut bytes = 0;
                        let mut upto = st.send_from;
                        for q in st.out.queue.iter().skip(skip) {
                            if bytes >= WRITE_ROUND_BYTES {
                                break;
                            }
                            bytes += q.frame.len();
                            payload += q.payload;
                            frames.push(Arc::clone(&q.frame));
                            upto = q.seq + 1;
                        }
                        st.send_from = upto;
                        // Handed to this connection before it is written: an Ack for it may
                        // come back before `write` returns.
                        st.written = st.written.max(st.send_from);
                    }
                    if !frames.is_empty() || !control.is_empty() {
                        break;
                    }
                    let since = last_send.elapsed();
                    if since >= heartbeat {
                        control.push(Frame::Heartbeat);
                        break;
                    }
                    st.io_waiting = true;
                    st = self
                        .shared
                        .cond
                        .wait_timeout(st, SLICE.min(heartbeat - since))
                        .unwrap_or_else(|p| p.into_inner())
                        .0;
                    st.io_waiting = false;
                }
            }
            out.clear();
            for f in &control {
                wire::encode_frame(f, &mut out);
            }
            let pieces = std::iter::once(out.as_slice()).chain(frames.iter().map(|f| f.as_slice()));
            let written = w
                .write_pieces(pieces, &mut scratch)
                .and_then(|()| w.flush());
            // Let go of the frames at once: an acknowledged frame that nothing else holds is
            // written over by a later one. One acknowledged while it was being written (this
            // thread was slow to get here) is this thread's alone now: kept too.
            if frames.iter().any(|f| Arc::strong_count(f) == 1) {
                let mut st = self.shared.lock();
                for f in frames.drain(..) {
                    if Arc::strong_count(&f) == 1 {
                        st.out.keep_spare(f);
                    }
                }
            }
            frames.clear();
            if let Err(e) = written {
                let mut st = self.shared.lock();
                let why = st
                    .broken
                    .take()
                    .unwrap_or_else(|| format!("cannot write: {e}"));
                return Outcome::Broken(why);
            }
            add(&self.counters.bytes, payload as u64);
            last_send = Instant::now();
        }
    }
}

/// The thread that reads what the reader sends on one connection.
struct AckReader {
    shared: Arc<Shared>,
    conn_no: u64,
    label: String,
    host: String,
    stop: Arc<PeerStop>,
    budget: usize,
    peer_timeout: Duration,
    counters: Arc<LinkCounters>,
    wake: Arc<dyn Mailbox>,
    output: u32,
    link: u32,
    run: Run,
}

impl AckReader {
    fn run(self, mut r: ConnRead) {
        let error = self.read(&mut r);
        let mut st = self.shared.lock();
        if st.conn == self.conn_no {
            if let (None, Some(e)) = (&st.broken, error) {
                st.broken = Some(e);
            }
            if let Some(c) = &st.cutter {
                c.cut();
            }
        }
        self.shared.cond.notify_all();
    }

    /// Reads until the connection fails, and returns why; `None` when it ends because the link
    /// is done or the connection was replaced.
    fn read(&self, r: &mut ConnRead) -> Option<String> {
        // Only small frames come from a reader: Acks, Heartbeats, Stop, a Goodbye.
        let mut dec = FrameDecoder::new(wire::HANDSHAKE_MAX_BYTES);
        let mut heard = Instant::now();
        // Ends: each pass reads for at most a slice; a stale connection or the end of the run
        // returns.
        loop {
            {
                let st = self.shared.lock();
                if st.conn != self.conn_no || st.broken.is_some() {
                    return None;
                }
                // Once finished, reads on until the reader closes (see `drive` and the module
                // docs), within the linger's deadline after the run's end; before, while the
                // link has work (the End's acknowledgement may still be owed after the run's
                // end).
                let reads_on = if st.out.finished {
                    !self.run.is_over() || Instant::now() < self.shared.linger.start(None)
                } else {
                    self.shared.has_work(&st, &self.run)
                };
                if self.run.failed() || !reads_on {
                    return None;
                }
            }
            match dec.read_from(r) {
                Ok(0) => {
                    if self.shared.lock().out.finished {
                        return None;
                    }
                    let goodbye = self.shared.lock().goodbye.clone();
                    return Some(match (goodbye, dec.finish()) {
                        // A frame cut off by the end of the connection: the reader's
                        // process ended, or the network cut it; not a protocol breach.
                        (_, Err(e)) => format!(
                            "the reader's connection ended: {e} (its process ended, or the \
                             network cut it)"
                        ),
                        (Some(reason), Ok(())) => {
                            format!("the reader closed the connection: {reason}")
                        }
                        (None, Ok(())) => "the reader closed the connection".into(),
                    });
                }
                Ok(_) => {
                    heard = Instant::now();
                    // Ends: each pass takes a frame out of the bounded buffer.
                    loop {
                        match dec.next() {
                            Ok(Some(f)) => {
                                if let Err(e) = self.on_frame(f) {
                                    return Some(e);
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                return Some(format!(
                                    "the reader sent bytes that break the protocol: {e}"
                                ))
                            }
                        }
                    }
                }
                Err(e) if timed_out(&e) => {
                    if heard.elapsed() >= self.peer_timeout {
                        return Some(format!(
                            "the reader was silent for {}",
                            secs(self.peer_timeout)
                        ));
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Some(format!("cannot read: {e}")),
            }
        }
    }

    fn on_frame(&self, f: Frame) -> Result<(), String> {
        match f {
            Frame::Ack { next } => self.on_ack(next),
            Frame::Heartbeat => Ok(()),
            Frame::Stop => {
                self.stop.fire(&self.label);
                Ok(())
            }
            Frame::Goodbye { reason } => {
                let reason: String = reason.chars().take(200).collect();
                tracing::info!(
                    "connection {}: host '{}' closes the connection: {}",
                    self.label,
                    self.host,
                    reason.escape_debug()
                );
                self.shared.lock().goodbye = Some(reason);
                Ok(())
            }
            Frame::Data { .. } | Frame::End { .. } | Frame::Mark { .. } => {
                Err("the reader sent a Data, End or Mark frame, which only a writer sends".into())
            }
        }
    }

    fn on_ack(&self, next: u64) -> Result<(), String> {
        let mut st = self.shared.lock();
        if next > st.written {
            return Err(format!(
                "the reader acknowledged batches up to {next} but only {} were sent",
                st.written
            ));
        }
        if next <= st.acked {
            return Ok(());
        }
        let ended = st.out.release_below(next).end;
        st.acked = next;
        st.send_from = st.send_from.max(next);
        set_gauge(&self.counters, st.out.unacked);
        let mut wake = false;
        if st.out.full && st.out.unacked < self.budget {
            st.out.full = false;
            wake = true;
        }
        if ended {
            wake = true;
        }
        // Only the End's acknowledgement gives the I/O thread work (the Goodbye).
        let notify = ended && st.io_waiting;
        drop(st);
        if notify {
            self.shared.cond.notify_all();
        }
        if wake {
            self.wake.post(Envelope::Credit {
                output: self.output,
                link: self.link,
                n: 0,
            });
        }
        Ok(())
    }
}
