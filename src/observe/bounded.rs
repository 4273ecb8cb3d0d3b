//! The small HTTP/1.x server under the live view ([`Server`](crate::observe::Server)), bounded
//! in everything a client can make it spend.
//!
//! [`httparse`] parses each request head; the rest is here, on std sockets and threads:
//!
//! | what | bound |
//! |---|---|
//! | a request head (request line and headers) | [`Limits::max_head`] bytes, at most [`MAX_HEADERS`] headers: beyond, `431` (`400` for a head that does not parse) and the connection is closed |
//! | requests per connection | one: every answer says `Connection: close`; a request body is never read |
//! | time | [`Limits::deadline`] per connection, from its accept to the last byte of the answer: before each write the socket's timeout is set to the time left (at most [`SLICE`], so that a stop is seen soon). A head not complete by then is answered `408` (nothing, if not a byte came) and the connection closed |
//! | open connections | [`Limits::max_connections`], counted from the accept to the close. One accepted beyond that takes the place of the oldest connection whose head is not complete (closed unanswered: a silent or slow client's), or, if every one has reached a worker, is closed at once, unanswered (not left in the backlog, where it would wait unseen) |
//! | threads | one accept thread and [`Limits::workers`] workers, fed by a bounded queue. The accept thread reads every head, without blocking, as its bytes come: a worker gets a connection only with its head complete (or an error to answer), so clients that send nothing, or a head a byte at a time, hold no worker |
//! | memory | one head buffer per connection that has sent something, up to [`Limits::max_head`] |
//!
//! After an error answer, or when the client sent more than the head, the server stops
//! writing and reads what still comes (thrown away) until the client closes, the deadline, or
//! [`LINGER`] after the answer: closing with unread data would reset the connection, and the
//! client could lose the answer before reading it.
//!
//! The accept loop never ends on an error: each kind of error is logged as a warning the first
//! time (debug after), and after running out of file descriptors or memory it pauses briefly.
//! Dropping the [`Listener`] stops it: the accept thread is woken (a connection to itself; it
//! also looks at the stop flag every [`SLICE`]), the workers end their current connection at
//! their next read or write and close the queued ones unanswered; all threads are joined.

use std::collections::HashSet;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use nix::poll::{poll, PollFd, PollFlags};

/// The most headers a request may have.
pub(crate) const MAX_HEADERS: usize = 64;

/// The longest a thread blocks before it looks at the stop flag again.
pub(crate) const SLICE: Duration = Duration::from_millis(250);

/// How long an error answer may take to write once the deadline has passed.
const LATE_GRACE: Duration = Duration::from_millis(100);

/// How long a worker reads what a client still sends after its answer, at most.
const LINGER: Duration = Duration::from_millis(500);

/// What the server lets a client spend. See the [module docs](self).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// The most bytes of a request head.
    pub max_head: usize,
    /// The most connections open at once.
    pub max_connections: usize,
    /// The threads that answer.
    pub workers: usize,
    /// The most time a connection is served, from its accept.
    pub deadline: Duration,
}

/// A request head, parsed.
#[derive(Debug)]
pub(crate) struct Request {
    method: String,
    target: String,
    headers: Vec<(String, Vec<u8>)>,
}

impl Request {
    fn of(r: &httparse::Request<'_, '_>) -> Request {
        Request {
            method: r.method.unwrap_or_default().to_string(),
            target: r.path.unwrap_or_default().to_string(),
            headers: r
                .headers
                .iter()
                .map(|h| (h.name.to_string(), h.value.to_vec()))
                .collect(),
        }
    }

    /// The method, as sent (`GET`, `HEAD`, …).
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The request target: path and query.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// The values of the headers named `name` (case-insensitive), in their order.
    pub fn headers<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// Whether the request says it has a body.
    fn has_body(&self) -> bool {
        self.headers("transfer-encoding").next().is_some()
            || self
                .headers("content-length")
                .any(|v| v.iter().any(|b| !matches!(b, b'0' | b' ' | b'\t')))
    }
}

/// An answer. `Content-Length` and `Connection: close` are added; the body is left out for
/// `HEAD`.
#[derive(Debug)]
pub(crate) struct Response {
    /// The status code.
    pub status: u16,
    /// Headers besides `Content-Length` and `Connection`.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// A plain-text answer.
    pub fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            headers: vec![
                ("Content-Type", "text/plain; charset=utf-8".into()),
                ("Cache-Control", "no-store".into()),
            ],
            body: body.as_bytes().to_vec(),
        }
    }

    /// The bytes sent: status line, headers, and the body unless `head_only`.
    fn encode(&self, head_only: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (name, value) in &self.headers {
            // Never split the head: a value with a line break is left out.
            if !value.contains(['\r', '\n']) {
                out.push_str(&format!("{name}: {value}\r\n"));
            }
        }
        out.push_str(&format!(
            "Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.body.len()
        ));
        let mut out = out.into_bytes();
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// What answers a request; called on the workers' threads.
pub(crate) type Handler = dyn Fn(&Request) -> Response + Send + Sync;

/// A running server. See the [module docs](self). Stops when dropped.
pub(crate) struct Listener {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    workers: Vec<JoinHandle<()>>,
}

/// An accepted connection, counted as open until dropped.
struct Conn {
    stream: TcpStream,
    accepted: Instant,
    _open: OpenSlot,
}

/// One of the open connections: the count goes down when it is dropped.
struct OpenSlot(Arc<AtomicUsize>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Listener {
    /// Serves `listener` with `handler` within `limits`, on threads named `{name} …`.
    pub fn start(
        listener: TcpListener,
        limits: Limits,
        handler: Arc<Handler>,
        name: &str,
    ) -> io::Result<Listener> {
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = Listener {
            addr,
            stop: Arc::clone(&stop),
            accept: None,
            workers: Vec::with_capacity(limits.workers),
        };
        let (tx, rx) = crossbeam_channel::bounded::<Job>(limits.max_connections.max(1));
        for i in 0..limits.workers.max(1) {
            let (rx, stop, handler) = (rx.clone(), Arc::clone(&stop), Arc::clone(&handler));
            let worker = std::thread::Builder::new()
                .name(format!("{name} {i}"))
                .spawn(move || work(&rx, &*handler, &limits, &stop))?;
            // Kept at once: a failure to start the next thread drops `server`, which stops it.
            server.workers.push(worker);
        }
        drop(rx);
        let accept = {
            let stop = Arc::clone(&stop);
            std::thread::Builder::new()
                .name(format!("{name} accept"))
                .spawn(move || accept_loop(&listener, &tx, &limits, &stop))?
        };
        server.accept = Some(accept);
        Ok(server)
    }

    /// The address listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(accept) = self.accept.take() {
            // Wake the accept thread now rather than at its next look at the flag.
            let mut wake = self.addr;
            if wake.ip().is_unspecified() {
                wake.set_ip(match wake {
                    SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                    SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
                });
            }
            let _ = TcpStream::connect_timeout(&wake, SLICE);
            let _ = accept.join();
        }
        // The queue's sender went with the accept thread: each worker ends once the queue is
        // empty, closing what is left in it unanswered.
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A connection in the accept thread's poll set: its head so far.
struct Pending {
    conn: Conn,
    /// The head's bytes so far: empty (no allocation) until the first byte comes.
    head: Vec<u8>,
}

/// What a worker is given: a connection and what to answer.
enum Job {
    /// A request to answer; `unread`: the client sent (or said it would send) more than the
    /// head.
    Request {
        conn: Conn,
        request: Request,
        unread: bool,
    },
    /// An error answer, then (with `linger`) what still comes read and thrown away;
    /// `late`: the deadline has passed (the answer gets [`LATE_GRACE`]).
    Refusal {
        conn: Conn,
        response: Response,
        linger: bool,
        late: bool,
    },
}

/// What reading a pending connection came to.
enum HeadRead {
    /// Not complete yet: it waits on.
    More,
    /// The client left, or sent nothing in time: closed unanswered.
    Gone,
    /// A request to answer (see [`Job::Request`]).
    Request(Request, bool),
    /// An error to answer; `late`: the deadline has passed.
    Refuse(Response, bool),
}

/// Accepts connections and reads their heads until the stop. A connection waits here, in this
/// thread's poll set, while its head comes (read without blocking, into a buffer of its own);
/// only a complete head (or an error to answer: too large, not HTTP, too late after some
/// bytes) goes to the workers' queue. So idle connections (a browser's spare ones, a flood of
/// silent ones) and slow ones hold no worker: at most `max_connections` are open, and a new
/// one beyond that takes the place of the oldest that has not completed its head.
fn accept_loop(listener: &TcpListener, queue: &Sender<Job>, limits: &Limits, stop: &AtomicBool) {
    let open = Arc::new(AtomicUsize::new(0));
    let mut waiting: Vec<Pending> = Vec::new();
    let mut logged: HashSet<String> = HashSet::new();
    let mut log_once = |what: String, detail: String| {
        if logged.insert(what) {
            tracing::warn!("live view: {detail} (said once)");
        } else {
            tracing::debug!("live view: {detail}");
        }
    };
    while !stop.load(Ordering::SeqCst) {
        let ms = u16::try_from(SLICE.as_millis()).unwrap_or(u16::MAX);
        let (acceptable, ready) = {
            let mut fds = Vec::with_capacity(1 + waiting.len());
            fds.push(PollFd::new(listener.as_fd(), PollFlags::POLLIN));
            for p in &waiting {
                fds.push(PollFd::new(p.conn.stream.as_fd(), PollFlags::POLLIN));
            }
            let polled = poll(&mut fds, ms);
            let seen =
                |f: &PollFd<'_>| polled.is_ok() && f.revents().is_some_and(|r| !r.is_empty());
            let ready: Vec<bool> = fds[1..].iter().map(seen).collect();
            (seen(&fds[0]), ready)
        };
        // Readable (or closed, or failed) are read; those past their deadline are answered
        // 408 if they sent something, closed if not; the others wait on.
        let now = Instant::now();
        let mut still = Vec::with_capacity(waiting.len());
        for (mut pending, ready) in waiting.drain(..).zip(ready) {
            let past = now.duration_since(pending.conn.accepted) >= limits.deadline;
            let read = match (ready, past) {
                (true, false) => read_more(&mut pending, limits),
                // Past the deadline, even if bytes keep coming (one every poll would otherwise
                // keep it here): 408 if it sent something; an error found now is answered
                // within the grace of a late answer.
                (true, true) => match read_more(&mut pending, limits) {
                    HeadRead::More | HeadRead::Request(..) => late(&pending, limits),
                    HeadRead::Refuse(response, _) => HeadRead::Refuse(response, true),
                    HeadRead::Gone => HeadRead::Gone,
                },
                (false, true) => late(&pending, limits),
                (false, false) => HeadRead::More,
            };
            let job = match read {
                HeadRead::More => {
                    still.push(pending);
                    continue;
                }
                HeadRead::Gone => continue,
                HeadRead::Request(request, unread) => Job::Request {
                    conn: pending.conn,
                    request,
                    unread,
                },
                HeadRead::Refuse(response, late) => Job::Refusal {
                    conn: pending.conn,
                    response,
                    linger: !late,
                    late,
                },
            };
            // Never full: it holds at most the open connections.
            let _ = queue.try_send(job);
        }
        waiting = still;
        if !acceptable {
            continue;
        }
        match listener.accept() {
            Ok((stream, peer)) => {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                if open.load(Ordering::SeqCst) >= limits.max_connections {
                    if waiting.is_empty() {
                        log_once(
                            "full".into(),
                            format!(
                                "{} connections open, all being answered: one from {peer} \
                                 closed unanswered",
                                limits.max_connections
                            ),
                        );
                        continue;
                    }
                    // The oldest head still coming makes room (its slot is freed as it drops).
                    // The oldest that has sent nothing, else the oldest.
                    let at = waiting.iter().position(|p| p.head.is_empty()).unwrap_or(0);
                    let oldest = waiting.remove(at);
                    log_once(
                        "evicted".into(),
                        format!(
                            "{} connections open: the oldest whose request had not come ({}) \
                             closed unanswered for one from {peer}",
                            limits.max_connections,
                            oldest
                                .conn
                                .stream
                                .peer_addr()
                                .map_or_else(|_| "?".to_string(), |a| a.to_string())
                        ),
                    );
                }
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                open.fetch_add(1, Ordering::SeqCst);
                waiting.push(Pending {
                    conn: Conn {
                        stream,
                        accepted: Instant::now(),
                        _open: OpenSlot(Arc::clone(&open)),
                    },
                    head: Vec::new(),
                });
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                let errno = e.raw_os_error();
                log_once(
                    format!("{:?}/{errno:?}", e.kind()),
                    format!("cannot accept a connection: {e}; going on"),
                );
                let short_of_resources = matches!(
                    errno,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                // Out of descriptors or memory the next accept fails the same way at once:
                // give what holds them time to let go.
                let pause = if short_of_resources { 100 } else { 10 };
                std::thread::sleep(Duration::from_millis(pause));
            }
        }
    }
}

/// Reads what has come on `pending` (without blocking) and looks at its head once a blank
/// line ends it (or the buffer is full). Each byte is looked at about once, however the head
/// is cut into reads.
fn read_more(pending: &mut Pending, limits: &Limits) -> HeadRead {
    let max = limits.max_head.max(1);
    let before = pending.head.len();
    let mut chunk = [0u8; 4096];
    // The client closed its side: what came is all there will be (a head sent whole, then
    // the close, as `printf … | nc` does, is answered).
    let mut ended_by_client = false;
    loop {
        let room = (max - pending.head.len()).min(chunk.len());
        if room == 0 {
            break;
        }
        match (&pending.conn.stream).read(&mut chunk[..room]) {
            Ok(0) => {
                ended_by_client = true;
                break;
            }
            Ok(n) => {
                if pending.head.capacity() == 0 {
                    // Once, and exactly: growth by doubling would overshoot the bound.
                    pending.head.reserve_exact(max);
                }
                pending.head.extend_from_slice(&chunk[..n]);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => return HeadRead::Gone,
        }
    }
    let head = &pending.head;
    // A blank line ends a head ("\n\n" or "\n\r\n"): look only where the new bytes
    // may complete one.
    let new = &head[before.saturating_sub(2)..];
    let ended = new.windows(2).any(|w| w == b"\n\n") || new.windows(3).any(|w| w == b"\n\r\n");
    // The request line's end is looked at too: what is not HTTP (a TLS greeting, a wrong
    // line) is refused at once, not at the deadline.
    let first_line = !head[..before].contains(&b'\n') && new.contains(&b'\n');
    if !ended && !first_line && head.len() < max {
        // Not a whole head: wait for more, or, the client gone, answer nothing.
        return match ended_by_client {
            true => HeadRead::Gone,
            false => HeadRead::More,
        };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(head) {
        Ok(httparse::Status::Complete(n)) => {
            let unread = n < head.len();
            let request = Request::of(&request);
            let unread = unread || request.has_body();
            HeadRead::Request(request, unread)
        }
        // Only the request line, or a blank line that does not end the head yet: wait.
        Ok(httparse::Status::Partial) if head.len() < max && !ended_by_client => HeadRead::More,
        Ok(httparse::Status::Partial) if head.len() < max => HeadRead::Gone,
        Ok(httparse::Status::Partial) | Err(httparse::Error::TooManyHeaders) => {
            HeadRead::Refuse(too_large(limits), false)
        }
        Err(e) => HeadRead::Refuse(
            Response::text(400, &format!("not an HTTP/1.x request: {e}\n")),
            false,
        ),
    }
}

/// A connection past its deadline before its head was complete: `408` if it sent something.
fn late(pending: &Pending, limits: &Limits) -> HeadRead {
    if pending.head.is_empty() {
        return HeadRead::Gone;
    }
    let response = Response::text(
        408,
        &format!(
            "the request head did not come within {} s\n",
            limits.deadline.as_secs_f64()
        ),
    );
    HeadRead::Refuse(response, true)
}

/// The answer to a head too large.
fn too_large(limits: &Limits) -> Response {
    Response::text(
        431,
        &format!(
            "request head too large: at most {} bytes and {MAX_HEADERS} headers\n",
            limits.max_head
        ),
    )
}
/// A worker: serves connections from the queue until it is empty and its sender gone.
fn work(queue: &Receiver<Job>, handler: &Handler, limits: &Limits, stop: &AtomicBool) {
    let mut buf = vec![0u8; 4096];
    while let Ok(job) = queue.recv() {
        if !stop.load(Ordering::SeqCst) {
            serve(job, &mut buf, handler, limits, stop);
        }
    }
}

/// Why a read or write ended without its bytes.
enum Cut {
    /// The deadline passed.
    Late,
    /// The server stops.
    Stop,
    /// The connection failed.
    Failed,
}

/// Reads into `buf` within `deadline`: the bytes read, 0 at the end of the stream.
fn read_by(
    stream: &mut TcpStream,
    buf: &mut [u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<usize, Cut> {
    loop {
        if stop.load(Ordering::SeqCst) {
            return Err(Cut::Stop);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Cut::Late);
        }
        let wait = left.clamp(Duration::from_millis(1), SLICE);
        stream
            .set_read_timeout(Some(wait))
            .map_err(|_| Cut::Failed)?;
        match stream.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Err(Cut::Failed),
        }
    }
}

/// Writes all of `bytes` within `deadline`.
fn write_by(
    stream: &mut TcpStream,
    mut bytes: &[u8],
    deadline: Instant,
    stop: &AtomicBool,
) -> Result<(), Cut> {
    while !bytes.is_empty() {
        if stop.load(Ordering::SeqCst) {
            return Err(Cut::Stop);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Cut::Late);
        }
        let wait = left.clamp(Duration::from_millis(1), SLICE);
        stream
            .set_write_timeout(Some(wait))
            .map_err(|_| Cut::Failed)?;
        match stream.write(bytes) {
            Ok(0) => return Err(Cut::Failed),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if is_timeout(&e) => {}
            Err(_) => return Err(Cut::Failed),
        }
    }
    Ok(())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Serves one connection whose head the accept thread has read: one answer, the close.
fn serve(job: Job, buf: &mut [u8], handler: &Handler, limits: &Limits, stop: &AtomicBool) {
    let (conn, response, head_only, linger, late) = match job {
        Job::Request {
            conn,
            request,
            unread,
        } => {
            let response =
                catch_unwind(AssertUnwindSafe(|| handler(&request))).unwrap_or_else(|p| {
                    let why = crate::error::panic_message(&*p);
                    tracing::error!("live view: {}: {why}", request.target());
                    Response::text(500, &format!("internal error: {why}\n"))
                });
            (conn, response, request.method() == "HEAD", unread, false)
        }
        Job::Refusal {
            conn,
            response,
            linger,
            late,
        } => (conn, response, false, linger, late),
    };
    let Conn {
        mut stream,
        accepted,
        _open,
    } = conn;
    let deadline = match late {
        true => Instant::now() + LATE_GRACE,
        false => accepted + limits.deadline,
    };
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let _ = stream.set_nodelay(true);
    if write_by(&mut stream, &response.encode(head_only), deadline, stop).is_err() {
        return;
    }
    if linger {
        // Read what still comes (thrown away) until the client closes, briefly: closing on
        // unread bytes would reset the connection, and the client might lose the answer.
        let _ = stream.shutdown(Shutdown::Write);
        let deadline = deadline.min(Instant::now() + LINGER);
        while let Ok(n) = read_by(&mut stream, buf, deadline, stop) {
            if n == 0 {
                break;
            }
        }
    }
}
