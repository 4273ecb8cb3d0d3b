//! The live view's HTTP server ([`iotstream::observe::Server`]) against clients that try to
//! make it spend without bound, over real sockets: a header line of many MiB, hundreds of idle
//! connections, clients that send requests and never read, a client that sends its head one
//! byte at a time. Each gets an answer or is cut; memory and threads stay bounded; others are
//! still answered.
//!
//! The tests that measure the whole process (its resident memory, its threads) run alone in a
//! process of their own: this test binary started again on that one test.
//!
//! No assertion is on time: each wait is bounded, and fails with what was awaited.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotstream::info::GraphInfo;
use iotstream::observe::http::{MAX_CONNECTIONS, MAX_HEAD_BYTES, REQUEST_DEADLINE, WORKERS};
use iotstream::observe::{AppMetrics, Server, ViewSource};
use iotstream::Graph;

/// A fixed application.
struct Fixed;

impl ViewSource for Fixed {
    fn graph(&self) -> GraphInfo {
        let mut g = Graph::new("fixed");
        let xs = g.source_iter("numbers", 0..3u64);
        g.for_each("print", &xs, |_: &u64| {});
        g.info()
    }

    fn metrics(&self) -> AppMetrics {
        AppMetrics {
            app: "fixed".into(),
            ..AppMetrics::default()
        }
    }
}

fn start() -> Server {
    Server::start("127.0.0.1:0", None, Arc::new(Fixed)).expect("start the live view")
}

/// The environment variable that tells a child run which test to run for real.
const ALONE: &str = "IOTSTREAM_HTTP_TEST_ALONE";

/// Whether this is the run of test `name` in a process of its own. If not, runs it so (this
/// test binary again, that test only, one thread) and checks that it ran and passed.
fn alone(name: &str) -> bool {
    if std::env::var(ALONE).is_ok_and(|v| v == name) {
        return true;
    }
    let exe = std::env::current_exe().expect("own path");
    let out = Command::new(exe)
        .args([name, "--exact", "--test-threads=1", "--nocapture"])
        .env(ALONE, name)
        .output()
        .expect("run the test in a process of its own");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name}, run alone, failed:\n{stdout}\n{stderr}"
    );
    false
}

/// A line of `/proc/self/status`, in its unit (kB for memory).
fn proc_status(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/self/status"))
}

/// One request on a new connection: the status, or why there is none (the connection closed
/// unanswered, …). Waits at most 20 s for the answer.
fn status_of(addr: SocketAddr, path: &str) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("send: {e}"))?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)
        .map_err(|e| format!("read: {e}"))?;
    raw.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| format!("no status in {raw:?}"))
}

/// [`status_of`], tried again while the connection is closed unanswered, for at most `bound`.
fn status_within(addr: SocketAddr, path: &str, bound: Duration, mut between: impl FnMut()) -> u16 {
    let until = Instant::now() + bound;
    loop {
        match status_of(addr, path) {
            Ok(status) => return status,
            Err(why) if Instant::now() < until => {
                let _ = why;
                between();
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(why) => panic!("{path} not answered within {bound:?}: {why}"),
        }
    }
}

#[test]
fn a_header_line_of_many_mib_is_refused_in_bounded_memory() {
    if !alone("a_header_line_of_many_mib_is_refused_in_bounded_memory") {
        return;
    }
    let server = start();
    let addr = server.local_addr();
    assert_eq!(status_of(addr, "/metrics"), Ok(200));
    const MIB: usize = 1 << 20;
    const SENT_MIB: usize = 64;
    let chunk = vec![b'a'; MIB];
    // This process's resident memory now and at its peak (`VmRSS`, `VmHWM`: a peak that
    // came and went counts too).
    let (rss0, peak0) = (proc_status("VmRSS") * 1024, proc_status("VmHWM") * 1024);

    // One header line of 64 MiB, no CRLF anywhere in it, written while the answer is read.
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut w = s.try_clone().expect("a second handle");
    w.set_write_timeout(Some(Duration::from_secs(60))).unwrap();
    let writer = std::thread::spawn(move || {
        let mut sent = 0;
        let head = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Long: ");
        if w.write_all(head.as_bytes()).is_ok() {
            for _ in 0..SENT_MIB {
                if w.write_all(&chunk).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        let _ = w.shutdown(Shutdown::Write);
        sent
    });
    let mut answer = Vec::new();
    let read = s.read_to_end(&mut answer);
    let sent = writer.join().expect("the writer");
    let (rss1, peak1) = (proc_status("VmRSS") * 1024, proc_status("VmHWM") * 1024);
    let grown = rss1.saturating_sub(rss0) / 1024;
    let peak_grown = peak1.saturating_sub(peak0) / 1024;
    println!("{sent} MiB sent; resident memory grew by {grown} KiB, its peak by {peak_grown} KiB");
    // Memory first: the point of the test.
    assert!(grown < 8 * 1024, "resident memory grew by {grown} KiB");
    assert!(
        peak_grown < 8 * 1024,
        "peak resident memory grew by {peak_grown} KiB"
    );
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 431 ") || text.starts_with("HTTP/1.1 400 "),
        "an error answer to a head of more than {MAX_HEAD_BYTES} bytes ({sent} MiB sent, \
         read: {read:?}): {text:?}"
    );
    assert!(text.contains("Connection: close"), "{text}");

    // Still serving.
    assert_eq!(status_of(addr, "/metrics"), Ok(200));
}

#[test]
fn idle_connections_take_no_threads_and_a_request_is_still_answered() {
    if !alone("idle_connections_take_no_threads_and_a_request_is_still_answered") {
        return;
    }
    let server = start();
    let addr = server.local_addr();
    assert_eq!(status_of(addr, "/metrics"), Ok(200));
    // This process's threads with the server running: the test's, the accept thread, the
    // workers.
    let base = proc_status("Threads");
    assert!(base > WORKERS as u64);

    let idle: Vec<TcpStream> = (0..200)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    let mut most = proc_status("Threads");
    // A request made after them all: answered once the server has accepted them (each beyond
    // its limit takes the place of the oldest silent one).
    let status = status_within(addr, "/api/graph", Duration::from_secs(120), || {
        most = most.max(proc_status("Threads"));
    });
    most = most.max(proc_status("Threads"));
    assert_eq!(status, 200);
    println!(
        "{} idle connections (the server keeps at most {MAX_CONNECTIONS}): {most} threads at most, {base} before",
        idle.len()
    );
    assert!(
        most <= base,
        "the idle connections took threads: {most}, {base} before"
    );
    drop(idle);
}

#[test]
fn idle_connections_hold_no_worker() {
    let server = start();
    let addr = server.local_addr();
    // More idle connections than workers, fewer than the limit: they wait in the accept
    // thread's poll set, so a request is answered while every one of them is still open
    // (before, each held a worker until its deadline and the request waited for them).
    let idle: Vec<TcpStream> = (0..3 * WORKERS)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    assert_eq!(status_of(addr, "/api/graph"), Ok(200));
    for (i, c) in idle.iter().enumerate() {
        c.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let still_open = matches!(
            (&*c).read(&mut byte),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        assert!(
            still_open,
            "idle connection {i} was closed before the request was answered"
        );
    }
}

#[test]
fn clients_that_never_read_do_not_stop_the_others() {
    let server = start();
    let addr = server.local_addr();
    // Two clients that send many requests on one connection (answers far larger than the
    // sockets' buffers) and never read.
    let requests = format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(2000);
    let mut clients = Vec::new();
    let mut writers = Vec::new();
    for _ in 0..2 {
        let s = TcpStream::connect(addr).expect("connect");
        let mut w = s.try_clone().expect("a second handle");
        w.set_write_timeout(Some(Duration::from_secs(30))).unwrap();
        let requests = requests.clone();
        writers.push(std::thread::spawn(move || {
            let _ = w.write_all(requests.as_bytes());
        }));
        clients.push(s);
    }
    // Both are being answered: a worker has taken each (what came is looked at, not read).
    for s in &clients {
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut first = [0u8; 12];
        let n = s.peek(&mut first).expect("an answer starts");
        assert!(n > 0);
    }
    // A third client is answered.
    assert_eq!(status_of(addr, "/metrics"), Ok(200));
    assert_eq!(status_of(addr, "/"), Ok(200));
    drop(clients);
    for w in writers {
        let _ = w.join();
    }
}

#[test]
fn a_client_sending_one_byte_at_a_time_is_cut_while_others_are_answered() {
    let server = start();
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").as_bytes())
        .unwrap();
    // One byte every 100 ms (the read's timeout paces it), for at most 60 s.
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut cut = None;
    let mut answered = 0;
    for i in 0..600 {
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => {
                cut = Some("closed");
                break;
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => {
                cut = Some("reset");
                break;
            }
        }
        if slow.write_all(b"a").is_err() {
            cut = Some("refused a byte");
            break;
        }
        if i % 10 == 0 {
            assert_eq!(status_of(addr, "/metrics"), Ok(200), "others are answered");
            answered += 1;
        }
    }
    let got = String::from_utf8_lossy(&got);
    println!("the slow client: {cut:?} after {answered} other requests answered; got {got:?}");
    assert!(cut.is_some(), "the slow client was never cut");
    assert!(
        got.is_empty() || got.starts_with("HTTP/1.1 408 "),
        "a slow head is answered 408 if at all: {got:?}"
    );
    assert!(answered >= 1);
}

/// Whether `c` is still open: nothing to read yet, no close.
fn still_open(c: &TcpStream) -> bool {
    c.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let open = matches!((&*c).read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock);
    c.set_nonblocking(false).unwrap();
    open
}

/// Clients that send the start of a head and then nothing hold no worker: the accept thread
/// reads heads as their bytes come, and a worker gets a connection only with its head whole.
/// Before, each such client held a worker until its deadline: more of them than workers,
/// renewed every few seconds, and no request was answered.
#[test]
fn clients_that_stop_inside_their_head_hold_no_worker() {
    let server = start();
    let addr = server.local_addr();
    let started = Instant::now();
    let slow: Vec<TcpStream> = (0..2 * WORKERS)
        .map(|_| {
            let mut c = TcpStream::connect(addr).expect("connect");
            c.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n").as_bytes())
                .unwrap();
            c
        })
        .collect();
    // Their bytes are at the server before the request below is made (each was written
    // before it connects; the accept thread reads them as it polls).
    assert_eq!(status_of(addr, "/api/graph"), Ok(200));
    // Until their deadline they must be open; a machine so slow that it has passed already
    // tells nothing (they were answered 408 and closed as they should).
    if !within_their_deadline(started) {
        return;
    }
    for (i, c) in slow.iter().enumerate() {
        assert!(
            still_open(c),
            "slow client {i} was answered or closed before the request was answered: it \
             held a worker"
        );
    }
}

/// With every connection open and none yet with its head, a new one takes the place of the
/// oldest silent one, and is answered. Before, it was closed at once, unanswered: silent
/// connections renewed every few seconds kept every scraper out.
#[test]
fn a_new_connection_takes_the_place_of_the_oldest_silent_one() {
    let server = start();
    let addr = server.local_addr();
    let started = Instant::now();
    let silent: Vec<TcpStream> = (0..MAX_CONNECTIONS)
        .map(|_| TcpStream::connect(addr).expect("connect"))
        .collect();
    // Accepted, all of them, before the request below (the server takes connections in the
    // order they came): the first request may still find the last of them not yet accepted.
    let status = status_within(addr, "/metrics", Duration::from_secs(60), || {});
    assert_eq!(status, 200);
    let first = &silent[0];
    first
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut rest = Vec::new();
    assert!(
        (&*first).read_to_end(&mut rest).is_ok() && rest.is_empty(),
        "the oldest silent connection was not closed unanswered: {rest:?}"
    );
    if !within_their_deadline(started) {
        return;
    }
    assert!(
        still_open(&silent[MAX_CONNECTIONS - 1]),
        "the newest silent one was closed"
    );
}

/// A client that sends its whole head and closes its side at once (`printf … | nc`) is
/// answered.
#[test]
fn a_head_sent_whole_then_half_closed_is_answered() {
    let server = start();
    let addr = server.local_addr();
    let head = format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n");
    let answer = answer_to(addr, head.as_bytes(), true);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
}

/// A request target in absolute form (`GET http://host:port/metrics`, RFC 9112 3.2.2: a
/// server must accept it) is served as its path; its authority stands for the Host header, so
/// a domain there is refused as in Host (DNS rebinding). It was a 404 (found by an audit).
#[test]
fn a_request_target_in_absolute_form_is_served_and_its_authority_checked() {
    let server = start();
    let addr = server.local_addr();
    let asked = |target: &str, host: &str| {
        let head = format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        answer_to(addr, head.as_bytes(), false)
    };
    let metrics = asked(&format!("http://{addr}/metrics"), &addr.to_string());
    assert!(metrics.starts_with("HTTP/1.1 200 "), "{metrics:?}");
    assert!(metrics.contains("text/plain; version=0.0.4"), "{metrics:?}");
    let page = asked(&format!("HTTP://{addr}"), &addr.to_string());
    assert!(
        page.starts_with("HTTP/1.1 200 ") && page.contains("<html"),
        "{page:?}"
    );
    // The authority wins over Host, either way.
    let rebound = asked("http://evil.example/metrics", &addr.to_string());
    assert!(rebound.starts_with("HTTP/1.1 403 "), "{rebound:?}");
    let named = asked(&format!("http://{addr}/api/graph"), "evil.example");
    assert!(named.starts_with("HTTP/1.1 200 "), "{named:?}");
}

/// What the server answers to `bytes` (sent whole, then the client's side closed if
/// `half_close`), up to its close: bounded by a 30 s read timeout.
fn answer_to(addr: SocketAddr, bytes: &[u8], half_close: bool) -> String {
    let mut c = TcpStream::connect(addr).expect("connect");
    c.write_all(bytes).unwrap();
    if half_close {
        c.shutdown(Shutdown::Write).unwrap();
    }
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

/// Whether connections made at `started` are still within their deadline
/// ([`REQUEST_DEADLINE`], less a second): if not, says that what a test checks of them until
/// then cannot be checked on a machine this slow.
fn within_their_deadline(started: Instant) -> bool {
    let within = started.elapsed() < REQUEST_DEADLINE - Duration::from_secs(1);
    if !within {
        println!("too slow a machine: the connections' deadline may have passed; not checked");
    }
    within
}

/// A first line that is not HTTP is refused at once (400), not held to the deadline and
/// answered 408 for want of a blank line.
#[test]
fn a_first_line_that_is_not_http_is_refused_at_once() {
    let server = start();
    let addr = server.local_addr();
    let tls_hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n";
    for garbage in [&b"HELLO THERE\r\n"[..], &tls_hello[..]] {
        let answer = answer_to(addr, garbage, false);
        assert!(
            answer.starts_with("HTTP/1.1 400 "),
            "{garbage:?}: {answer:?}"
        );
    }
}

/// A client alone on the server that sends its head a byte at a time, never finishing it, is
/// answered 408 and cut at its deadline, though a byte is there to read at every look.
/// Before, with no other client to wake the server's poll at another moment, it was read on
/// and on (a 16 KiB head at 10 bytes/s: 27 minutes).
#[test]
fn a_lone_client_trickling_its_head_is_cut_at_its_deadline() {
    let server = start();
    let addr = server.local_addr();
    let mut slow = TcpStream::connect(addr).expect("connect");
    slow.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
        .unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    // One byte every 100 ms, for at most 60 s (twelve deadlines).
    for _ in 0..600 {
        let mut buf = [0u8; 512];
        match slow.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
        if slow.write_all(b"a").is_err() {
            break;
        }
    }
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 408 "), "{got:?}");
}
