//! The launchers' observation channel: how one launcher shows the whole application when its
//! processes run on several hosts.
//!
//! Each host's launcher of a multi-host deployment with a secret listens on its host's
//! address and *observation port*
//! ([`HostInfo::observation_port`](crate::info::HostInfo::observation_port): `observe_port` in
//! `[hosts.NAME]`, by default the links' base port - 1), and asks every other host's launcher
//! for its view once per interval (`fetch`) to merge it into its own. Hosts not reached show
//! their processes as `unknown`; nothing waits on them for longer than [`PEER_TIMEOUT`] plus
//! [`EXCHANGE_TIMEOUT`].
//!
//! # Protocol
//!
//! Both sides prove they hold the deployment's secret, and the answer is bound to that proof,
//! so a host that does not know the secret can neither ask nor answer, nor alter an answer in
//! transit (the bytes are not encrypted: counters and names, no data of the application):
//!
//! ```text
//! server → client: "IOTSOBS1" | server nonce (32 bytes)
//! client → server: "IOTSOBS1" | client nonce (32) | request (1 byte: 0 = the view) |
//!                  HMAC(secret, CLIENT_LABEL | server nonce | client nonce | request)
//! server → client: length (u32, big-endian, ≤ MAX_ANSWER_BYTES) | JSON of an AppMetrics |
//!                  HMAC(secret, ANSWER_LABEL | server nonce | client nonce | request | length | JSON)
//! ```
//!
//! A client whose proof is wrong gets nothing and the connection is closed (the server
//! reports it once per address).
//!
//! # Bounds
//!
//! - One exchange, either side, ends within [`EXCHANGE_TIMEOUT`] of the connection (every read
//!   and write is given what is left of it), and a connection within [`PEER_TIMEOUT`]: a slow
//!   or silent peer costs that much at most, never a hang.
//! - The server answers up to [`MAX_EXCHANGES`] clients at once, each on a thread of its own,
//!   so one slow client delays no other; while that many are in progress it accepts no more
//!   (they wait in the listen queue, within their own deadlines).
//! - Anyone who can reach the port can open a connection, proof or not. So that a few
//!   connections that say nothing cannot keep the launchers from each other, a client has
//!   [`REQUEST_TIMEOUT`] after the greeting to send its request, and an address that is not
//!   one of the deployment's hosts' ([`KnownAddresses`], as the launcher last resolved them)
//!   has at most [`MAX_EXCHANGES_PER_ADDRESS`] exchanges in progress (unless the server
//!   listens on loopback, where every client is on this machine): a connection beyond that
//!   is closed at once, unanswered, and reported. A launcher asks each other one once
//!   per interval, one exchange at a time, so a host seen from another address (behind NAT)
//!   is answered too, unless more than two of them share it.
//! - An answer is at most [`MAX_ANSWER_BYTES`], refused by its announced length before any of
//!   it is read, and read as it arrives (no buffer of the announced size up front).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::observe::model::AppMetrics;
use crate::transport::tcp::auth::{nonce, tag, verify_tag, Secret};

const MAGIC: &[u8; 8] = b"IOTSOBS1";
const CLIENT_LABEL: &[u8] = b"iotstream observe client v1";
const ANSWER_LABEL: &[u8] = b"iotstream observe answer v1";
/// The request for the host's view.
const REQUEST_VIEW: u8 = 0;

/// The largest answer accepted (a view of a very large graph is a few MiB).
pub const MAX_ANSWER_BYTES: u32 = 64 << 20;

/// How long a connection to another launcher may take to be made.
pub const PEER_TIMEOUT: Duration = Duration::from_secs(2);

/// How long one exchange (greeting, request, answer) may take in all, on either side, from
/// the connection on.
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// How many clients the server answers at once.
pub const MAX_EXCHANGES: usize = 16;

/// How many of those may come from one address (IP) at once.
pub const MAX_EXCHANGES_PER_ADDRESS: usize = 2;

/// How long the server waits for a client's request once it has sent its greeting (the rest
/// of the exchange is still within [`EXCHANGE_TIMEOUT`]): a round trip, even on a slow link.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Addresses whose refusals the server remembers having reported (each kind of refusal is
/// reported once per address); once this many were, refusals from other addresses are not.
const MAX_REPORTED: usize = 1024;

/// Why a request was refused, for reporting each kind once per address (a client cannot fill
/// the report with causes of its making: I/O errors, wrong bytes).
#[derive(Clone, Copy)]
enum Refusal {
    /// Its address already has [`MAX_EXCHANGES_PER_ADDRESS`] exchanges in progress.
    Busy = 1,
    /// No request in time.
    Late = 2,
    /// A wrong proof of the secret.
    Proof = 4,
    /// Anything else: wrong bytes, a connection lost, no thread.
    Other = 8,
}

/// How many addresses [`KnownAddresses`] holds at most (a host's name may resolve to a new
/// address now and then; the first ones stay).
const MAX_KNOWN_ADDRESSES: usize = 1024;

/// How long the server's accepting thread sleeps when there is nothing to accept, or no room
/// for one more exchange: also how soon it sees that it must stop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(50);

/// Where a launcher's view comes from.
pub type ViewFn = Arc<dyn Fn() -> AppMetrics + Send + Sync>;

/// Where the server's reports go (one line each: a refused request, a failing listener).
pub type ReportFn = Arc<dyn Fn(&str) + Send + Sync>;

/// A launcher's observation endpoint; stops accepting when dropped (exchanges in progress end
/// within their deadline).
pub struct PeerServer {
    stop: Arc<AtomicBool>,
    addr: SocketAddr,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What the server's threads share.
struct Shared {
    secret: Secret,
    view: ViewFn,
    report: ReportFn,
    /// Exchanges in progress (at most [`MAX_EXCHANGES`]).
    active: AtomicUsize,
    /// Exchanges in progress per client address (at most [`MAX_EXCHANGES_PER_ADDRESS`] each;
    /// an address with none has no entry).
    by_address: Mutex<std::collections::HashMap<std::net::IpAddr, usize>>,
    /// The deployment's hosts' addresses: not held to [`MAX_EXCHANGES_PER_ADDRESS`].
    known: KnownAddresses,
    /// How long a client has for its request after the greeting ([`REQUEST_TIMEOUT`]).
    request_timeout: Duration,
    /// Refusals reported: the kinds (a bit each, [`Refusal`]) reported per address.
    reported: Mutex<std::collections::HashMap<IpAddr, u8>>,
    /// It listens on a loopback address: every client runs on this machine (the deployment's
    /// hosts too, on loopback addresses of their own, all asking from 127.0.0.1), and none is
    /// held to [`MAX_EXCHANGES_PER_ADDRESS`].
    loopback: bool,
}

/// The addresses of the deployment's other hosts, as the threads that ask their launchers
/// resolved them: the server does not hold connections from them to
/// [`MAX_EXCHANGES_PER_ADDRESS`] (several hosts may share one address: loopback, a tunnel).
/// Cloned, it is the same set.
#[derive(Clone, Default)]
pub struct KnownAddresses(Arc<Mutex<std::collections::HashSet<IpAddr>>>);

impl KnownAddresses {
    /// Adds `ip` (up to 1024 addresses; later ones are not added).
    pub fn learn(&self, ip: IpAddr) {
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if known.len() < MAX_KNOWN_ADDRESSES {
            known.insert(ip.to_canonical());
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        known.contains(&ip.to_canonical())
    }
}

impl PeerServer {
    /// Listens on `addr` and answers every authenticated request with `view()`; refusals and
    /// listener errors go to `report`. Connections from `known` addresses are not held to
    /// [`MAX_EXCHANGES_PER_ADDRESS`].
    pub(crate) fn start(
        addr: SocketAddr,
        secret: Secret,
        view: ViewFn,
        report: ReportFn,
        known: KnownAddresses,
    ) -> std::io::Result<Self> {
        let loopback = addr.ip().is_loopback();
        Self::start_with(addr, secret, view, report, known, REQUEST_TIMEOUT, loopback)
    }

    /// [`start`](Self::start), with `request_timeout` for [`REQUEST_TIMEOUT`], and whether
    /// to take every client as on this machine (`loopback`: no share per address).
    fn start_with(
        addr: SocketAddr,
        secret: Secret,
        view: ViewFn,
        report: ReportFn,
        known: KnownAddresses,
        request_timeout: Duration,
        loopback: bool,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            secret,
            view,
            report,
            active: AtomicUsize::new(0),
            by_address: Mutex::new(std::collections::HashMap::new()),
            known,
            request_timeout,
            reported: Mutex::new(std::collections::HashMap::new()),
            loopback,
        });
        let stopped = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("iotstream observe peers".into())
            .spawn(move || accept_loop(&listener, addr, &shared, &stopped))?;
        Ok(PeerServer {
            stop,
            addr,
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Accepts connections until `stop`, each answered on a thread of its own, at most
/// [`MAX_EXCHANGES`] at once. Ends when `stop` is set (looked at every [`ACCEPT_PAUSE`] at
/// most).
fn accept_loop(listener: &TcpListener, addr: SocketAddr, shared: &Arc<Shared>, stop: &AtomicBool) {
    let mut failing = None::<String>;
    while !stop.load(Ordering::SeqCst) {
        if shared.active.load(Ordering::SeqCst) >= MAX_EXCHANGES {
            std::thread::sleep(ACCEPT_PAUSE);
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(accepted) => accepted,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(ACCEPT_PAUSE);
                continue;
            }
            Err(e) => {
                // Said once per cause (a full file table would say it every pause).
                let e = e.to_string();
                if failing.as_deref() != Some(e.as_str()) {
                    (shared.report)(&format!("observation port {addr}: cannot accept: {e}"));
                    failing = Some(e);
                }
                std::thread::sleep(ACCEPT_PAUSE);
                continue;
            }
        };
        failing = None;
        let Some(slot) = Slot::take(shared, peer) else {
            // Closed unanswered (after the report, as an answered refusal): this address
            // already has all the exchanges it may have.
            shared.refused(
                peer,
                Refusal::Busy,
                &format!(
                    "{MAX_EXCHANGES_PER_ADDRESS} exchanges from this address already in progress"
                ),
            );
            drop(stream);
            continue;
        };
        let spawned = std::thread::Builder::new()
            .name("iotstream observe answer".into())
            .spawn(move || {
                let mut stream = stream;
                // Reported before the connection closes: the client learns of the refusal
                // after the report is made.
                if let Err((kind, why)) = answer(&mut stream, &slot.shared) {
                    slot.shared.refused(peer, kind, &why);
                }
                drop(stream);
                drop(slot);
            });
        if let Err(e) = spawned {
            // The closure (the connection, its slot) is dropped: the client sees it closed.
            shared.refused(
                peer,
                Refusal::Other,
                &format!("no thread to answer it: {e}"),
            );
        }
    }
}

/// One exchange in progress, counted in [`Shared::active`] and (from an address that is not
/// known) under its client's address until dropped.
struct Slot {
    shared: Arc<Shared>,
    /// The address it is counted under, if any.
    counted: Option<IpAddr>,
}

impl Slot {
    /// Counts one more exchange from `peer`; `None` if its address is not known and already
    /// has [`MAX_EXCHANGES_PER_ADDRESS`].
    fn take(shared: &Arc<Shared>, peer: SocketAddr) -> Option<Slot> {
        let ip = peer.ip().to_canonical();
        let counted = if shared.loopback || shared.known.contains(ip) {
            None
        } else {
            let mut by_address = shared.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let count = by_address.entry(ip).or_insert(0);
            if *count >= MAX_EXCHANGES_PER_ADDRESS {
                return None;
            }
            *count += 1;
            Some(ip)
        };
        shared.active.fetch_add(1, Ordering::SeqCst);
        Some(Slot {
            shared: Arc::clone(shared),
            counted,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(ip) = self.counted {
            let mut by_address = self
                .shared
                .by_address
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = by_address.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    by_address.remove(&ip);
                }
            }
        }
        self.shared.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// Reports a refused request, once per address and kind of refusal (for up to
    /// [`MAX_REPORTED`] addresses, and says when that is reached).
    fn refused(&self, peer: SocketAddr, kind: Refusal, why: &str) {
        let (first, last) = {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let ip = peer.ip().to_canonical();
            if reported.len() >= MAX_REPORTED && !reported.contains_key(&ip) {
                return;
            }
            let kinds = reported.entry(ip).or_insert(0);
            let first = *kinds & kind as u8 == 0;
            let new_address = *kinds == 0;
            *kinds |= kind as u8;
            (first, new_address && reported.len() == MAX_REPORTED)
        };
        if first {
            (self.report)(&format!(
                "observation request from {peer} refused: {why} (said once per address and kind)"
            ));
        }
        if last {
            (self.report)(&format!(
                "refusals reported from {MAX_REPORTED} addresses on the observation port: those \
                 from other addresses will not be"
            ));
        }
    }
}

/// Reads `buf` whole from `stream` before `deadline`.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant) -> std::io::Result<()> {
    let mut filled = 0;
    // Bounded: every turn reads at least one byte or ends, and the deadline ends it.
    while filled < buf.len() {
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Writes `buf` whole to `stream` before `deadline`.
fn write_by(stream: &mut TcpStream, buf: &[u8], deadline: Instant) -> std::io::Result<()> {
    let mut written = 0;
    // Bounded as `read_by`.
    while written < buf.len() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        match stream.write(&buf[written..]) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The time left before `deadline`; an error once it has passed.
fn left(deadline: Instant) -> std::io::Result<Duration> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the exchange took longer than {} s",
                    EXCHANGE_TIMEOUT.as_secs()
                ),
            )
        })
}

/// The server's side of one exchange; an error says why the request was refused.
fn answer(stream: &mut TcpStream, shared: &Shared) -> Result<(), (Refusal, String)> {
    let (secret, view) = (&shared.secret, &shared.view);
    let other = |e: &dyn std::fmt::Display| (Refusal::Other, e.to_string());
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    stream.set_nonblocking(false).map_err(|e| other(&e))?;
    let server_nonce = nonce().map_err(|e| other(&e))?;
    let mut hello = Vec::with_capacity(40);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&server_nonce);
    write_by(stream, &hello, deadline).map_err(|e| other(&e))?;
    let mut request = [0u8; 8 + 32 + 1 + 32];
    let request_by = Instant::now() + shared.request_timeout;
    read_by(stream, &mut request, request_by.min(deadline)).map_err(|e| {
        let late = matches!(
            e.kind(),
            std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
        );
        if late && request_by <= deadline {
            let within = shared.request_timeout.as_millis();
            let why = format!("no complete request within {within} ms of the greeting");
            (Refusal::Late, why)
        } else {
            (Refusal::Other, format!("no complete request: {e}"))
        }
    })?;
    if &request[..8] != MAGIC {
        return Err(other(&"not an iotstream launcher (wrong magic)"));
    }
    let client_nonce = &request[8..40];
    let kind = &request[40..41];
    if !verify_tag(
        secret,
        CLIENT_LABEL,
        &[&server_nonce, client_nonce, kind],
        &request[41..],
    ) {
        return Err((
            Refusal::Proof,
            "wrong proof: the peer does not hold this deployment's secret".into(),
        ));
    }
    if kind[0] != REQUEST_VIEW {
        return Err(other(&format!("unknown request {}", kind[0])));
    }
    let json = serde_json::to_vec(&view()).map_err(|e| other(&e))?;
    let len = u32::try_from(json.len())
        .ok()
        .filter(|&n| n <= MAX_ANSWER_BYTES)
        .ok_or_else(|| {
            other(&format!(
                "the view is too large to send ({} bytes)",
                json.len()
            ))
        })?;
    let len = len.to_be_bytes();
    let mac = tag(
        secret,
        ANSWER_LABEL,
        &[&server_nonce, client_nonce, kind, &len, &json],
    );
    let mut out = Vec::with_capacity(4 + json.len() + 32);
    out.extend_from_slice(&len);
    out.extend_from_slice(&json);
    out.extend_from_slice(&mac);
    write_by(stream, &out, deadline).map_err(|e| other(&e))
}

/// Asks the launcher at `addr` for its view, within [`PEER_TIMEOUT`] to connect and
/// [`EXCHANGE_TIMEOUT`] for the rest. The error says what went wrong, for a line such as
/// "host 'cloud' (10.0.0.2:7399): …".
pub(crate) fn fetch(addr: SocketAddr, secret: &Secret) -> Result<AppMetrics, String> {
    let mut stream = TcpStream::connect_timeout(&addr, PEER_TIMEOUT)
        .map_err(|e| format!("cannot connect: {e}"))?;
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let mut hello = [0u8; 40];
    read_by(&mut stream, &mut hello, deadline).map_err(|e| format!("no greeting: {e}"))?;
    if &hello[..8] != MAGIC {
        return Err("not an iotstream launcher's observation port (wrong greeting)".into());
    }
    let server_nonce = &hello[8..];
    let client_nonce = nonce().map_err(|e| e.to_string())?;
    let kind = [REQUEST_VIEW];
    let proof = tag(secret, CLIENT_LABEL, &[server_nonce, &client_nonce, &kind]);
    let mut request = Vec::with_capacity(73);
    request.extend_from_slice(MAGIC);
    request.extend_from_slice(&client_nonce);
    request.extend_from_slice(&kind);
    request.extend_from_slice(&proof);
    write_by(&mut stream, &request, deadline)
        .map_err(|e| format!("cannot send the request: {e}"))?;
    let mut len = [0u8; 4];
    read_by(&mut stream, &mut len, deadline).map_err(|e| {
        format!("no answer ({e}): does it hold the same secret? its launcher logs a refusal")
    })?;
    let n = u32::from_be_bytes(len);
    if n > MAX_ANSWER_BYTES {
        return Err(format!(
            "an answer of {n} bytes, above the {MAX_ANSWER_BYTES} allowed"
        ));
    }
    // Read as it comes, so that an announced length costs nothing before the bytes arrive.
    let mut json = Vec::new();
    let n = n as usize;
    while json.len() < n {
        let from = json.len();
        json.resize(from + (n - from).min(64 << 10), 0);
        read_by(&mut stream, &mut json[from..], deadline)
            .map_err(|e| format!("the answer was cut short: {e}"))?;
    }
    let mut mac = [0u8; 32];
    read_by(&mut stream, &mut mac, deadline)
        .map_err(|e| format!("the answer's tag was cut short: {e}"))?;
    if !verify_tag(
        secret,
        ANSWER_LABEL,
        &[server_nonce, &client_nonce, &kind, &len, &json],
        &mac,
    ) {
        return Err("the answer's tag is wrong: it does not come from a holder of the secret, or was altered".into());
    }
    serde_json::from_slice(&json).map_err(|e| format!("the answer is not a view: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> Secret {
        Secret::from_bytes(s.as_bytes().to_vec(), "test")
    }

    /// A server answering with a view of app "quake", and the lines it reported.
    fn serve_reporting(s: &str) -> (PeerServer, Arc<Mutex<Vec<String>>>) {
        serve_with(s, KnownAddresses::default(), REQUEST_TIMEOUT)
    }

    /// A server on loopback that holds its clients to [`MAX_EXCHANGES_PER_ADDRESS`] as if it
    /// listened on another address (clients come from 127.0.0.2, …).
    fn serve_with(
        s: &str,
        known: KnownAddresses,
        request_timeout: Duration,
    ) -> (PeerServer, Arc<Mutex<Vec<String>>>) {
        serve_as(s, known, request_timeout, false)
    }

    /// [`serve_reporting`] with `known` addresses, a client's `request_timeout`, and
    /// whether every client is taken as local (`loopback`).
    fn serve_as(
        s: &str,
        known: KnownAddresses,
        request_timeout: Duration,
        loopback: bool,
    ) -> (PeerServer, Arc<Mutex<Vec<String>>>) {
        let view: ViewFn = Arc::new(|| AppMetrics {
            app: "quake".into(),
            run: "1-2".into(),
            ..AppMetrics::default()
        });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let into = Arc::clone(&lines);
        let report: ReportFn = Arc::new(move |l: &str| into.lock().unwrap().push(l.to_string()));
        let server = PeerServer::start_with(
            "127.0.0.1:0".parse().unwrap(),
            secret(s),
            view,
            report,
            known,
            request_timeout,
            loopback,
        )
        .unwrap();
        (server, lines)
    }

    fn serve(s: &str) -> PeerServer {
        serve_reporting(s).0
    }

    #[test]
    fn a_holder_of_the_secret_gets_the_view() {
        let server = serve("0123456789abcdef-same");
        let got = fetch(server.addr(), &secret("0123456789abcdef-same")).unwrap();
        assert_eq!((got.app.as_str(), got.run.as_str()), ("quake", "1-2"));
        // And again: the server answers one request after another.
        assert_eq!(
            fetch(server.addr(), &secret("0123456789abcdef-same"))
                .unwrap()
                .app,
            "quake"
        );
    }

    #[test]
    fn a_wrong_secret_gets_nothing_and_is_reported_once() {
        let (server, reported) = serve_reporting("0123456789abcdef-right");
        for _ in 0..2 {
            let e = fetch(server.addr(), &secret("0123456789abcdef-wrong")).unwrap_err();
            assert!(e.contains("same secret"), "{e}");
        }
        let reported = reported.lock().unwrap().clone();
        assert_eq!(reported.len(), 1, "{reported:?}");
        assert!(
            reported[0].starts_with("observation request from 127.0.0.1:")
                && reported[0].ends_with(
                    "refused: wrong proof: the peer does not hold this deployment's secret \
                     (said once per address and kind)"
                ),
            "{}",
            reported[0]
        );
    }

    #[test]
    fn clients_that_say_nothing_do_not_keep_others_waiting() {
        let server = serve("0123456789abcdef-same");
        // All exchanges but one taken by clients that read the greeting and then say nothing
        // (a server answering one client at a time would wait for each of them in turn), from
        // as many addresses as that takes.
        let silent: Vec<TcpStream> = (0..MAX_EXCHANGES - 1)
            .map(|i| {
                let from = format!("127.0.0.{}", 2 + i / MAX_EXCHANGES_PER_ADDRESS);
                let mut s = connect_from(&from, server.addr());
                assert!(
                    greeted(&mut s),
                    "connection {i} from {from} was not answered"
                );
                s
            })
            .collect();
        let got = fetch(server.addr(), &secret("0123456789abcdef-same")).unwrap();
        assert_eq!(got.app, "quake");
        drop(silent);
    }

    /// A connection to `server` from `from`, a loopback address of its own (127.0.0.2, …).
    fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let local: SocketAddr = format!("{from}:0").parse().unwrap();
        socket.bind(&local.into()).unwrap();
        socket.connect(&server.into()).unwrap();
        socket.into()
    }

    /// Reads the server's greeting: false if the server closed the connection instead.
    fn greeted(s: &mut TcpStream) -> bool {
        let mut hello = [0u8; 40];
        match s.read_exact(&mut hello) {
            Ok(()) => {
                assert_eq!(&hello[..8], MAGIC);
                true
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => false,
            Err(e) => panic!("reading the greeting: {e}"),
        }
    }

    /// Connections that say nothing, all from one address, cannot take every exchange: the
    /// server closes those beyond [`MAX_EXCHANGES_PER_ADDRESS`] unanswered, and says so, and
    /// other clients are answered meanwhile. Before, 16 such connections (reopened as they
    /// timed out) kept every other launcher from this one's view.
    #[test]
    fn one_address_cannot_take_every_exchange() {
        // The held connections wait for as long as the test takes.
        let (server, reported) = serve_with(
            "0123456789abcdef-same",
            KnownAddresses::default(),
            Duration::from_secs(600),
        );
        let held: Vec<TcpStream> = (0..MAX_EXCHANGES_PER_ADDRESS)
            .map(|_| {
                let mut s = connect_from("127.0.0.2", server.addr());
                assert!(greeted(&mut s));
                s
            })
            .collect();
        let mut beyond = connect_from("127.0.0.2", server.addr());
        assert!(
            !greeted(&mut beyond),
            "a connection beyond the address's share was answered"
        );
        let got = fetch(server.addr(), &secret("0123456789abcdef-same")).unwrap();
        assert_eq!(got.app, "quake");
        // Reported by the accepting thread before it accepted the fetch's connection.
        let lines = reported.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("observation request from 127.0.0.2:")
                    && l.contains("refused: 2 exchanges from this address already in progress")),
            "{lines:?}"
        );
        // Once its exchanges end, the address is answered again.
        drop(held);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut again = connect_from("127.0.0.2", server.addr());
            if greeted(&mut again) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "127.0.0.2 was never answered again"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The deployment's hosts' addresses are not held to [`MAX_EXCHANGES_PER_ADDRESS`]
    /// (several launchers may share one: hosts on one machine, a tunnel).
    #[test]
    fn a_known_address_is_not_held_to_the_share_of_one() {
        let known = KnownAddresses::default();
        known.learn("127.0.0.4".parse().unwrap());
        let (server, _) = serve_with("0123456789abcdef-same", known, Duration::from_secs(600));
        all_greeted_from("127.0.0.4", &server, MAX_EXCHANGES_PER_ADDRESS + 2);
    }

    /// A server listening on loopback holds no address to [`MAX_EXCHANGES_PER_ADDRESS`]:
    /// every client is on this machine, the deployment's hosts too, and those on loopback
    /// addresses of their own (127.0.0.2, …) all ask from 127.0.0.1.
    #[test]
    fn on_loopback_no_address_is_held_to_the_share_of_one() {
        let (server, _) = serve_as(
            "0123456789abcdef-same",
            KnownAddresses::default(),
            Duration::from_secs(600),
            true,
        );
        all_greeted_from("127.0.0.1", &server, MAX_EXCHANGES_PER_ADDRESS + 2);
    }

    /// Opens `n` connections from `from` to `server`, each greeted while the others are open.
    fn all_greeted_from(from: &str, server: &PeerServer, n: usize) {
        let held: Vec<TcpStream> = (0..n)
            .map(|i| {
                let mut s = connect_from(from, server.addr());
                assert!(
                    greeted(&mut s),
                    "connection {i} from {from} was not answered"
                );
                s
            })
            .collect();
        drop(held);
    }

    /// A client that reads the greeting and says nothing is closed once its time for the
    /// request ([`REQUEST_TIMEOUT`], here 200 ms) has passed, and the report says so.
    #[test]
    fn a_client_that_sends_no_request_is_closed_and_named() {
        let (server, reported) = serve_with(
            "0123456789abcdef-same",
            KnownAddresses::default(),
            Duration::from_millis(200),
        );
        let mut silent = connect_from("127.0.0.3", server.addr());
        assert!(greeted(&mut silent));
        let mut rest = Vec::new();
        // Returns at the server's close (EOF), which the report comes before.
        silent.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        let lines = reported.lock().unwrap().clone();
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("observation request from 127.0.0.3:")
                    && l.contains("refused: no complete request within 200 ms of the greeting")),
            "{lines:?}"
        );
        // Another kind of refusal from the same address is reported too (a wrong proof,
        // which the first refusal must not hide), once.
        for _ in 0..2 {
            let mut wrong = connect_from("127.0.0.3", server.addr());
            assert!(greeted(&mut wrong));
            let mut request = MAGIC.to_vec();
            request.extend_from_slice(&[0u8; 32 + 1 + 32]);
            wrong.write_all(&request).unwrap();
            wrong.read_to_end(&mut rest).unwrap();
        }
        let lines = reported.lock().unwrap().clone();
        let from_3 = |what: &str| {
            lines
                .iter()
                .filter(|l| {
                    l.starts_with("observation request from 127.0.0.3:") && l.contains(what)
                })
                .count()
        };
        assert_eq!(from_3("refused: wrong proof"), 1, "{lines:?}");
        assert_eq!(from_3("refused: no complete request"), 1, "{lines:?}");
    }

    #[test]
    fn a_server_without_the_secret_cannot_answer() {
        // A fake server that greets and answers with a view but a tag made with another key.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let sn = [7u8; 32];
            s.write_all(MAGIC).unwrap();
            s.write_all(&sn).unwrap();
            let mut req = [0u8; 73];
            s.read_exact(&mut req).unwrap();
            let json = serde_json::to_vec(&AppMetrics::default()).unwrap();
            let len = (json.len() as u32).to_be_bytes();
            let mac = tag(
                &secret("another-secret-of-16"),
                ANSWER_LABEL,
                &[&sn, &req[8..40], &req[40..41], &len, &json],
            );
            s.write_all(&len).unwrap();
            s.write_all(&json).unwrap();
            s.write_all(&mac).unwrap();
        });
        let e = fetch(addr, &secret("0123456789abcdef-right")).unwrap_err();
        assert!(e.contains("tag is wrong"), "{e}");
        fake.join().unwrap();
    }

    #[test]
    fn an_oversized_answer_is_refused_before_reading_it() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(MAGIC).unwrap();
            s.write_all(&[1u8; 32]).unwrap();
            let mut req = [0u8; 73];
            s.read_exact(&mut req).unwrap();
            s.write_all(&u32::MAX.to_be_bytes()).unwrap();
        });
        let e = fetch(addr, &secret("0123456789abcdef-right")).unwrap_err();
        assert!(e.contains("above the"), "{e}");
        fake.join().unwrap();
    }

    #[test]
    fn something_else_on_the_port_is_named() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let fake = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n....................");
        });
        let e = fetch(addr, &secret("0123456789abcdef-right")).unwrap_err();
        assert!(e.contains("wrong greeting"), "{e}");
        fake.join().unwrap();
    }
}
