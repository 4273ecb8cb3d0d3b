//! `sink_webhook` against a real HTTP server on a free loopback port: a tiny one written here
//! (std sockets, requests parsed with httparse), which can be told to fail its first requests
//! or to answer every request with one status. The server is stopped by a guard's `Drop`, also
//! when a test fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use iotstream::{Graph, Undelivered, WebhookOptions};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Alert {
    sensor: String,
    level: f64,
    note: Option<String>,
}

fn alerts(n: usize) -> Vec<Alert> {
    (0..n)
        .map(|i| Alert {
            sensor: format!("pump-{i}"),
            level: i as f64 * 0.5,
            note: (i % 3 == 0).then(|| format!("\"quoted\" \u{e9}\n{}", "n".repeat(i % 50))),
        })
        .collect()
}

/// One request the server received.
#[derive(Clone, Debug)]
struct Request {
    method: String,
    path: String,
    content_type: Option<String>,
    authorization: Option<String>,
    body: Vec<u8>,
    /// The status it was answered with.
    status: u16,
}

struct HookState {
    requests: Mutex<Vec<Request>>,
    /// Answer the first `fail_first` requests with 500, the others with `status`.
    fail_first: usize,
    status: u16,
    seen: AtomicUsize,
}

/// A web hook on a free loopback port; stopped (threads joined) when dropped.
struct Hook {
    addr: SocketAddr,
    state: Arc<HookState>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Hook {
    fn start(fail_first: usize, status: u16) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free loopback port");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(HookState {
            requests: Mutex::new(Vec::new()),
            fail_first,
            status,
            seen: AtomicUsize::new(0),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            for conn in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (st, sp) = (Arc::clone(&st), Arc::clone(&sp));
                conns.push(std::thread::spawn(move || serve(conn, &st, &sp)));
            }
            for c in conns {
                c.join().expect("a connection thread panicked");
            }
        });
        Hook {
            addr,
            state,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }
}

impl Drop for Hook {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let joined = t.join();
            if !std::thread::panicking() {
                joined.expect("the server thread panicked");
            }
        }
    }
}

/// Serves one connection's requests (keep-alive) until the peer closes or the server stops.
fn serve(mut conn: TcpStream, state: &HookState, stop: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let mut buf: Vec<u8> = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut req = httparse::Request::new(&mut headers);
        if let httparse::Status::Complete(head) = req.parse(&buf).expect("a valid HTTP request") {
            let header = |name: &str| {
                req.headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case(name))
                    .map(|h| String::from_utf8(h.value.to_vec()).unwrap())
            };
            let len: usize = header("content-length")
                .expect("a Content-Length")
                .parse()
                .unwrap();
            if buf.len() >= head + len {
                let n = state.seen.fetch_add(1, Ordering::SeqCst);
                let status = if n < state.fail_first {
                    500
                } else {
                    state.status
                };
                state.requests.lock().unwrap().push(Request {
                    method: req.method.unwrap().to_string(),
                    path: req.path.unwrap().to_string(),
                    content_type: header("content-type"),
                    authorization: header("authorization"),
                    body: buf[head..head + len].to_vec(),
                    status,
                });
                buf.drain(..head + len);
                let answer = format!("HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n");
                if conn.write_all(answer.as_bytes()).is_err() {
                    return;
                }
                continue;
            }
        }
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

fn quick() -> WebhookOptions {
    WebhookOptions::default()
        .backoff(Duration::from_millis(1), Duration::from_millis(20))
        .timeout(Duration::from_secs(20))
}

/// Every element arrives exactly as sent, in order, through failed first requests (retried
/// with backoff), in requests bounded in elements and in bytes.
#[test]
fn webhook_delivers_every_element_in_order_through_retries() {
    let hook = Hook::start(3, 200);
    let sent = alerts(3000);
    let mut g = Graph::new("webhook");
    let s = g.source_iter("alerts", sent.clone());
    let options = quick()
        .max_elements(100)
        .max_bytes(4096)
        .attempts(5)
        .header("Authorization", "Bearer t0ken");
    g.sink_webhook_with("hook", &s, hook.url("/hooks/alerts"), options);
    let metrics = g.run().unwrap();

    let requests = hook.requests();
    let failed = requests.iter().filter(|r| r.status == 500).count();
    assert_eq!(failed, 3, "the first three requests were answered 500");
    let mut got: Vec<Alert> = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(r.method, "POST", "request {i}");
        assert_eq!(r.path, "/hooks/alerts", "request {i}");
        assert_eq!(
            r.content_type.as_deref(),
            Some("application/json"),
            "request {i}"
        );
        assert_eq!(
            r.authorization.as_deref(),
            Some("Bearer t0ken"),
            "request {i}"
        );
        assert!(r.body.len() <= 4096, "request {i}: {} bytes", r.body.len());
        let batch: Vec<Alert> = serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("request {i}: not a JSON array of alerts: {e}"));
        assert!(
            !batch.is_empty() && batch.len() <= 100,
            "request {i}: {}",
            batch.len()
        );
        if r.status == 200 {
            got.extend(batch);
        }
    }
    assert_eq!(got.len(), sent.len(), "elements lost or repeated");
    assert!(
        got == sent,
        "the elements differ from what was sent, or their order"
    );
    // The byte bound split requests below 100 elements.
    assert!(
        requests.len() > 3000 / 100 + 3,
        "{} requests",
        requests.len()
    );
    assert_eq!(metrics.agent("hook").unwrap().undelivered, 0);
}

/// A hook that keeps failing: each request is tried `attempts` times, then its elements are
/// counted undelivered (in the metrics); an answer like 400 is not tried again; an element
/// larger than `max_bytes` alone is counted, and the others still go.
#[test]
fn webhook_counts_what_it_cannot_deliver() {
    let hook = Hook::start(0, 503);
    let mut g = Graph::new("webhook_down");
    let s = g.source_iter("alerts", alerts(10));
    g.sink_webhook_with(
        "hook",
        &s,
        hook.url("/down"),
        quick().max_elements(4).attempts(3),
    );
    let metrics = g.run().unwrap();
    assert_eq!(metrics.agent("hook").unwrap().undelivered, 10);
    let requests = hook.requests();
    // Batches of at most 4 elements, each tried 3 times.
    let elements: usize = requests
        .iter()
        .map(|r| serde_json::from_slice::<Vec<Alert>>(&r.body).unwrap().len())
        .sum();
    assert_eq!(elements, 10 * 3, "every element tried three times");

    let refusing = Hook::start(0, 400);
    let mut g = Graph::new("webhook_refused");
    let s = g.source_iter_with(
        "alerts",
        alerts(5),
        iotstream::SourceOptions {
            max_batch: 5,
            ..Default::default()
        },
    );
    g.sink_webhook_with("hook", &s, refusing.url("/refuse"), quick().attempts(5));
    let metrics = g.run().unwrap();
    assert_eq!(metrics.agent("hook").unwrap().undelivered, 5);
    let requests = refusing.requests();
    let elements: usize = requests
        .iter()
        .map(|r| serde_json::from_slice::<Vec<Alert>>(&r.body).unwrap().len())
        .sum();
    assert_eq!(elements, 5, "a 400 is not tried again");

    let ok = Hook::start(0, 204);
    let mut g = Graph::new("webhook_oversize");
    let big = "b".repeat(1000);
    let s = g.source_iter("notes", ["small".to_string(), big, "after".to_string()]);
    g.sink_webhook_with("hook", &s, ok.url("/ok"), quick().max_bytes(200));
    let metrics = g.run().unwrap();
    assert_eq!(metrics.agent("hook").unwrap().undelivered, 1);
    let got: Vec<String> = ok
        .requests()
        .iter()
        .flat_map(|r| serde_json::from_slice::<Vec<String>>(&r.body).unwrap())
        .collect();
    assert_eq!(got, ["small", "after"]);
}

/// With `Undelivered::Fail`, a hook that cannot be reached stops the application with an
/// error naming the URL and the elements.
#[test]
fn webhook_fails_the_application_when_asked() {
    // A port nothing listens on: bound, then closed.
    let addr = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let url = format!("http://{addr}/nobody");
    let mut g = Graph::new("webhook_unreachable");
    let s = g.source_iter("alerts", alerts(3));
    g.sink_webhook_with(
        "hook",
        &s,
        url.clone(),
        quick().attempts(2).undelivered(Undelivered::Fail),
    );
    let err = g.run().expect_err("nobody listens");
    let msg = err.to_string();
    assert_eq!(err.agent(), Some("hook"), "{msg}");
    assert!(msg.contains(&url), "{msg}");
    assert!(msg.contains("elements 0 to 2"), "{msg}");
    assert!(msg.contains("after 2 tries"), "{msg}");

    // With a password in the URL, the error shows it as ***.
    let mut g = Graph::new("webhook_unreachable_password");
    let s = g.source_iter("alerts", alerts(1));
    g.sink_webhook_with(
        "hook",
        &s,
        format!("http://user:secret@{addr}/nobody"),
        quick().attempts(1).undelivered(Undelivered::Fail),
    );
    let msg = g.run().expect_err("nobody listens").to_string();
    assert!(
        msg.contains(&format!("http://user:***@{addr}/nobody")),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "{msg}");

    let mut g = Graph::new("webhook_bad_url");
    let s = g.source_iter("alerts", alerts(1));
    g.sink_webhook("hook", &s, "ftp://example/x");
    let msg = g.run().expect_err("not http").to_string();
    assert!(msg.contains("must start with http:// or https://"), "{msg}");
}

/// A URL that can never be posted to is a graph error naming the agent and what is wrong,
/// before anything runs. A port beyond 65535 in particular: the URL parser drops it, and the
/// requests went to port 80 ("Connection refused", or worse, another service's answer).
#[test]
fn a_webhook_url_that_cannot_work_is_reported_when_the_graph_is_built() {
    for (url, says) in [
        (
            "http://127.0.0.1:99999/x",
            "port '99999' is not a number from 1 to 65535",
        ),
        ("http://127.0.0.1:0/x", "port 0 is not a port"),
        ("https://hooks.example:80a/x", "port '80a'"),
        ("http://", "not a valid URL"),
        ("http://:8080/x", "names no host"),
        ("http://no host/x", "not a valid URL"),
    ] {
        let mut g = Graph::new("webhook_bad_url");
        let s = g.source_iter("alerts", alerts(1));
        g.sink_webhook("hook", &s, url);
        let msg = g.run().expect_err(url).to_string();
        assert!(msg.contains("not well formed"), "{url}: {msg}");
        assert!(msg.contains("sink_webhook 'hook'"), "{url}: {msg}");
        assert!(msg.contains(says), "{url}: {msg}");
    }
    // The message shows the URL without its password.
    let mut g = Graph::new("webhook_password");
    let s = g.source_iter("alerts", alerts(1));
    g.sink_webhook("hook", &s, "https://user:secret@hooks.example:99999/x?a=1");
    let msg = g.run().expect_err("port 99999").to_string();
    assert!(
        msg.contains("URL 'https://user:***@hooks.example:99999/x?a=1'"),
        "{msg}"
    );
    assert!(!msg.contains("secret"), "{msg}");
    // Ports, IPv6 hosts and user information that are valid pass.
    for url in [
        "http://127.0.0.1:65535/x",
        "http://[::1]/x",
        "http://[::1]:8080/x",
        "https://user:pw@hooks.example/x",
    ] {
        let mut g = Graph::new("webhook_good_url");
        let s = g.input::<Alert>("alerts");
        g.sink_webhook("hook", &s, url);
        assert!(iotstream::Harness::new(g).is_ok(), "{url}");
    }
}

/// An element that stops the application (too large with `Undelivered::Fail`, or not
/// writable as JSON) does not take the elements before it down with it: they are posted
/// first, then the application stops naming the element. (They were built into the request
/// and dropped without a word.)
#[test]
fn the_elements_before_one_that_stops_the_application_are_posted() {
    use std::collections::BTreeMap;

    let hook = Hook::start(0, 200);
    let mut g = Graph::new("webhook_too_large");
    let s = g.source_iter("in", ["a".to_string(), "b".to_string(), "x".repeat(100)]);
    g.sink_webhook_with(
        "hook",
        &s,
        hook.url("/large"),
        quick().max_bytes(20).undelivered(Undelivered::Fail),
    );
    let msg = g.run().expect_err("too large").to_string();
    assert!(msg.contains("element 2 is 102 bytes of JSON"), "{msg}");
    let posted: Vec<String> = hook
        .requests()
        .iter()
        .flat_map(|r| serde_json::from_slice::<Vec<String>>(&r.body).unwrap())
        .collect();
    assert_eq!(posted, ["a", "b"]);

    // Not writable as JSON (a map with tuple keys), with the default Undelivered::Count.
    let hook = Hook::start(0, 200);
    let mut g = Graph::new("webhook_not_json");
    let mut bad = BTreeMap::new();
    bad.insert((1u32, 2u32), 3u32);
    let s = g.source_iter("in", [BTreeMap::new(), BTreeMap::new(), bad]);
    g.sink_webhook_with("hook", &s, hook.url("/json"), quick());
    let msg = g.run().expect_err("not JSON").to_string();
    assert!(msg.contains("element 2 cannot be written as JSON"), "{msg}");
    let posted: Vec<serde_json::Value> = hook
        .requests()
        .iter()
        .flat_map(|r| serde_json::from_slice::<Vec<serde_json::Value>>(&r.body).unwrap())
        .collect();
    assert_eq!(posted, [serde_json::json!({}), serde_json::json!({})]);
}
