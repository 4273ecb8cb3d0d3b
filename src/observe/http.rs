//! The live view over HTTP: [`Server`].
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | the Prometheus text format ([`prometheus_text`]) |
//! | `GET /api/metrics` | the [`AppMetrics`] as JSON |
//! | `GET /api/graph` | the [`GraphInfo`] as JSON (what `iotstream graph --format json` prints) |
//! | `GET /` | the live-view page ([`ui::PAGE`](crate::observe::ui::PAGE)) |
//!
//! Any other path is 404; any method but `GET` (or `HEAD`) is 405. The data comes from a
//! [`ViewSource`] at each request.
//!
//! # Who may ask
//!
//! The server listens on the address it is given, `127.0.0.1:PORT` by default in the
//! launcher: only users of this host can reach it. An address that is not a loopback address
//! (another interface, `0.0.0.0`) needs a token (the launcher's is derived from the
//! deployment's secret, `iotstream view-token`; never the secret itself): every request must
//! then carry `Authorization: Bearer <token>` (compared in constant time), except that the
//! page (`/`) may also be opened as `/?token=<token>` (percent-encoded) from a browser; the
//! page passes the token on to its API calls as the header. Starting on such an address
//! without a token is an error. A token given with a loopback address is required too.
//!
//! Without a token, a request whose `Host` header names a domain (not an IP address, nor
//! `localhost`) is refused with 403: a web page the user visits could otherwise point a name
//! of its own at 127.0.0.1 and read the view through the user's browser (DNS rebinding).
//!
//! # What a client can make it spend
//!
//! The server is our own small one on std sockets and threads (`observe/bounded.rs`), with
//! [`httparse`] to parse the requests: the application's actors run on actix's runtime, and the
//! live view needs nothing more than a few requests a second, but it must stay bounded when
//! the address is reachable by others (tiny_http, used before, was not). Each connection carries
//! one request (every answer says `Connection: close`) and is served within
//! [`REQUEST_DEADLINE`] from its accept; a request head is at most [`MAX_HEAD_BYTES`] (beyond:
//! 431, the connection closed; a head still incomplete at the deadline: 408); at most
//! [`MAX_CONNECTIONS`] are open at once (one more takes the place of the oldest whose head has
//! not come, or is closed at once, unanswered, if all are being answered); [`WORKERS`] threads
//! answer, fed by a bounded queue, besides one that accepts and reads each connection's head,
//! without blocking, as its bytes come (idle and slow clients hold no worker). The server
//! stops when the [`Server`] is dropped: its threads are joined, the port is free again.

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::info::GraphInfo;
use crate::observe::bounded::{Limits, Listener, Request, Response};
use crate::observe::model::AppMetrics;
use crate::observe::prometheus::{prometheus_text, PROMETHEUS_CONTENT_TYPE};

/// Where the served data comes from: called at each request, from the server's threads.
pub trait ViewSource: Send + Sync {
    /// The application's graph, as placed.
    fn graph(&self) -> GraphInfo;
    /// The application's counters and rates now.
    fn metrics(&self) -> AppMetrics;
}

/// How many threads answer requests (besides the one that accepts connections).
pub const WORKERS: usize = 4;

/// The most bytes of a request head (request line and headers); a longer one is answered 431.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// The most connections open at once; one more takes the place of the oldest whose request
/// head has not come (closed unanswered), or, if every one is being answered, is closed at
/// once, unanswered.
pub const MAX_CONNECTIONS: usize = 64;

/// The most time a connection is served, from its accept to the last byte of its answer.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);

/// How a program serves its own live view ([`Graph::serve_metrics_with`](crate::Graph::serve_metrics_with)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeOptions {
    /// The token requests must carry (see the [module docs](self)); required on an address
    /// that is not a loopback address. Default: none.
    pub token: Option<String>,
    /// How often the counters are read and the rates computed. Default: 1 s.
    pub interval: std::time::Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            token: None,
            interval: std::time::Duration::from_secs(1),
        }
    }
}

impl ServeOptions {
    /// Requests must carry `token`.
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_string());
        self
    }

    /// Reads the counters every `interval` (at least 10 ms).
    pub fn interval(mut self, interval: std::time::Duration) -> Self {
        self.interval = interval.max(std::time::Duration::from_millis(10));
        self
    }
}

/// A running HTTP server of the live view. See the [module docs](self). Stops when dropped.
pub struct Server {
    http: Listener,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("addr", &self.http.local_addr())
            .finish()
    }
}

/// The socket address a server asked for on `addr` listens on: a port alone is that port on
/// the loopback interface (`127.0.0.1`), anything else is `host:port` and its first address
/// (a name is resolved). The error says why `addr` names no address.
pub fn listen_address(addr: &str) -> Result<SocketAddr, String> {
    let addr = match addr.parse::<u16>() {
        Ok(port) => format!("127.0.0.1:{port}"),
        Err(_) => addr.to_string(),
    };
    addr.to_socket_addrs()
        .map_err(|e| format!("not an address (host:port): {e}"))?
        .next()
        .ok_or_else(|| "the name resolves to no address".to_string())
}

impl Server {
    /// Serves the live view of `source` on `addr` (`host:port`, or a port alone for
    /// `127.0.0.1:port`; port 0 picks a free one, see
    /// [`local_addr`](Self::local_addr)). `token` is required on an address that is not a
    /// loopback address (see the [module docs](self)). Errors name the address: one that does
    /// not resolve, one without a token where it needs one, one that cannot be bound.
    pub fn start(
        addr: &str,
        token: Option<&str>,
        source: Arc<dyn ViewSource>,
    ) -> Result<Server, Error> {
        let fail = |why: String| Error::Runtime {
            detail: format!("cannot serve the live view on '{addr}': {why}"),
        };
        let resolved = listen_address(addr).map_err(fail)?;
        let token = match token {
            Some("") => return Err(fail("the token is empty".into())),
            Some(t) => Some(digest(t.as_bytes())),
            None if !resolved.ip().is_loopback() => {
                return Err(fail(format!(
                    "{} is not a loopback address, so anyone who can reach it could read the \
                     application's metrics: give a token (clients then send \
                     'Authorization: Bearer <token>'), or listen on 127.0.0.1",
                    resolved.ip()
                )))
            }
            None => None,
        };
        let listener = TcpListener::bind(resolved).map_err(|e| fail(e.to_string()))?;
        let limits = Limits {
            max_head: MAX_HEAD_BYTES,
            max_connections: MAX_CONNECTIONS,
            workers: WORKERS,
            deadline: REQUEST_DEADLINE,
        };
        let handler = move |request: &Request| answer(request, &*source, token.as_ref());
        let http = Listener::start(listener, limits, Arc::new(handler), "http")
            .map_err(|e| fail(format!("cannot start the server: {e}")))?;
        let bound = http.local_addr();
        tracing::info!("live view on http://{bound}/");
        Ok(Server { http })
    }

    /// The address the server listens on (with the port chosen, if 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.http.local_addr()
    }
}

/// An answer: status, content type, body and extra headers.
struct Reply {
    status: u16,
    content_type: &'static str,
    body: Vec<u8>,
    headers: Vec<(&'static str, &'static str)>,
}

impl Reply {
    fn ok(content_type: &'static str, body: impl Into<Vec<u8>>) -> Reply {
        Reply {
            status: 200,
            content_type,
            body: body.into(),
            headers: Vec::new(),
        }
    }

    fn text(status: u16, body: String) -> Reply {
        Reply {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into_bytes(),
            headers: Vec::new(),
        }
    }

    fn with(mut self, name: &'static str, value: &'static str) -> Reply {
        self.headers.push((name, value));
        self
    }

    fn into_response(self) -> Response {
        let common = [
            ("Content-Type", self.content_type),
            ("Cache-Control", "no-store"),
            ("X-Content-Type-Options", "nosniff"),
            // The page may be opened with its token in the query: never pass it on.
            ("Referrer-Policy", "no-referrer"),
        ];
        Response {
            status: self.status,
            headers: common
                .into_iter()
                .chain(self.headers)
                .map(|(name, value)| (name, value.to_string()))
                .collect(),
            body: self.body,
        }
    }
}

/// A request target's authority, path and query. The authority is there only in absolute
/// form (`http://host:port/path?query`, RFC 9112 3.2.2, as a proxy or some clients send it),
/// where it stands for the Host header; in origin form (`/path?query`) it is `None`. An empty
/// path is `/`.
fn split_target(target: &str) -> (Option<&str>, &str, &str) {
    let absolute = target.find("://").and_then(|end| {
        let scheme = &target[..end];
        (scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
            .then(|| &target[end + 3..])
    });
    let (authority, rest) = match absolute {
        Some(rest) => {
            let end = rest.find(['/', '?']).unwrap_or(rest.len());
            (Some(&rest[..end]), &rest[end..])
        }
        None => (None, target),
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    (authority, if path.is_empty() { "/" } else { path }, query)
}

fn answer(request: &Request, source: &dyn ViewSource, token: Option<&[u8; 32]>) -> Response {
    let (authority, path, query) = split_target(request.target());
    let authorized = token.is_none_or(|expected| {
        let bearer = request
            .headers("Authorization")
            .filter_map(|v| std::str::from_utf8(v).ok())
            .filter_map(bearer_token)
            .any(|t| same_token(t.as_bytes(), expected));
        let query =
            path == "/" && query_token(query).is_some_and(|t| same_token(t.as_bytes(), expected));
        bearer || query
    });
    // Without a token, the loopback address is all that keeps others out, and a web page the
    // user visits could get round it by pointing a name of its own at 127.0.0.1 (DNS
    // rebinding): its requests name that domain as their Host, and are refused (as is a Host
    // that is not text).
    let rebound = token.is_none()
        && match authority {
            Some(a) => !names_this_host(a),
            None => request
                .headers("Host")
                .any(|v| std::str::from_utf8(v).map_or(true, |h| !names_this_host(h))),
        };
    let reply = if rebound {
        Reply::text(
            403,
            "refused: the Host header names a domain; without a token this server answers \
             only requests to an address (127.0.0.1:PORT) or to localhost\n"
                .into(),
        )
    } else if !authorized {
        Reply::text(
            401,
            "a token is required: send 'Authorization: Bearer <token>'\n".into(),
        )
        .with("WWW-Authenticate", "Bearer realm=\"iotstream\"")
    } else if !matches!(request.method(), "GET" | "HEAD") {
        Reply::text(405, format!("{} is not allowed here\n", request.method()))
            .with("Allow", "GET, HEAD")
    } else {
        catch_unwind(AssertUnwindSafe(|| route(path, source))).unwrap_or_else(|p| {
            let why = crate::error::panic_message(&*p);
            tracing::error!("live view: {path}: {why}");
            Reply::text(500, format!("internal error: {why}\n"))
        })
    };
    reply.into_response()
}

fn route(path: &str, source: &dyn ViewSource) -> Reply {
    let json = |r: serde_json::Result<String>| match r {
        Ok(body) => Reply::ok("application/json", body),
        Err(e) => Reply::text(500, format!("internal error: {e}\n")),
    };
    match path {
        "/" => Reply::ok("text/html; charset=utf-8", crate::observe::ui::PAGE),
        "/metrics" => Reply::ok(PROMETHEUS_CONTENT_TYPE, prometheus_text(&source.metrics())),
        "/api/metrics" => json(serde_json::to_string(&source.metrics())),
        "/api/graph" => json(serde_json::to_string(&source.graph())),
        _ => Reply::text(
            404,
            "not found: the live view serves /, /metrics, /api/metrics and /api/graph\n".into(),
        ),
    }
}

/// Whether a `Host` header value names this host the way a local client does: an IP address
/// or `localhost`, with or without a port (not a domain that may have been pointed at it).
fn names_this_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // `[v6]` or `[v6]:port`
        match rest.split_once(']') {
            Some((v6, port)) if port.is_empty() || port.starts_with(':') => v6,
            _ => return false,
        }
    } else {
        host.rsplit_once(':').map_or(host, |(name, _port)| name)
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// `token` is the expected one (whose digest is `expected`), compared in constant time: the
/// digests, of equal length whatever the token, are compared in full.
fn same_token(token: &[u8], expected: &[u8; 32]) -> bool {
    let given = digest(token);
    let diff = given
        .iter()
        .zip(expected)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(diff) == 0
}

/// The token of an `Authorization: Bearer <token>` header value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The percent-decoded value of `token=` in a query string.
fn query_token(query: &str) -> Option<String> {
    let raw = query.split('&').find_map(|kv| kv.strip_prefix("token="))?;
    percent_decode(raw)
}

/// `%XX` decoded; `None` on a malformed escape or a result that is not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            // Two hex digits, nothing else (`from_str_radix` alone takes "+f" as 15).
            let hex = bytes.get(i + 1..i + 3)?;
            let digit = |b: u8| (b as char).to_digit(16);
            out.push((digit(hex[0])? * 16 + digit(hex[1])?) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::model::StreamView;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// A source whose stream count goes up at each request for metrics.
    struct Fixed {
        calls: AtomicU64,
    }

    impl ViewSource for Fixed {
        fn graph(&self) -> GraphInfo {
            let mut g = crate::Graph::new("fixed");
            let xs = g.source_iter("numbers", 0..3u64);
            g.for_each("print", &xs, |_: &u64| {});
            g.info()
        }

        fn metrics(&self) -> AppMetrics {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            AppMetrics {
                app: "fixed".into(),
                streams: vec![StreamView {
                    name: "numbers.out".into(),
                    elements: n,
                    ..StreamView::default()
                }],
                ..AppMetrics::default()
            }
        }
    }

    fn source() -> Arc<dyn ViewSource> {
        Arc::new(Fixed {
            calls: AtomicU64::new(0),
        })
    }

    /// A response: status, headers (lower-case names), body.
    struct Got {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Got {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// Sends one HTTP/1.1 request on a new connection and reads the whole answer.
    fn request(addr: SocketAddr, method: &str, target: &str, headers: &[&str]) -> Got {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut req = format!("{method} {target} HTTP/1.1\r\nConnection: close\r\n");
        if !headers
            .iter()
            .any(|h| h.to_ascii_lowercase().starts_with("host:"))
        {
            req.push_str(&format!("Host: {addr}\r\n"));
        }
        for h in headers {
            req.push_str(h);
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).expect("read the answer");
        let text = String::from_utf8(raw).expect("utf-8");
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        Got {
            status,
            headers,
            body: body.to_string(),
        }
    }

    fn get(addr: SocketAddr, target: &str) -> Got {
        request(addr, "GET", target, &[])
    }

    #[test]
    fn every_route_answers_with_its_content_type() {
        let server = Server::start("127.0.0.1:0", None, source()).unwrap();
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback() && addr.port() != 0);

        let m = get(addr, "/metrics");
        assert_eq!(m.status, 200);
        assert_eq!(
            m.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        assert!(m
            .body
            .contains("iotstream_stream_elements_total{app=\"fixed\",stream=\"numbers.out\""));
        assert!(prom_text_format_parser::Scrape::parse(&m.body).is_ok());

        let j = get(addr, "/api/metrics");
        assert_eq!(j.status, 200);
        assert_eq!(j.header("content-type"), Some("application/json"));
        let view: AppMetrics = serde_json::from_str(&j.body).expect("AppMetrics JSON");
        assert_eq!(view.app, "fixed");
        assert_eq!(view.streams[0].elements, 2, "a new view at each request");

        let g = get(addr, "/api/graph");
        assert_eq!(g.status, 200);
        assert_eq!(g.header("content-type"), Some("application/json"));
        let info: GraphInfo = serde_json::from_str(&g.body).expect("GraphInfo JSON");
        assert_eq!(info.agents.len(), 2);
        assert_eq!(info.agents[1].name, "print");

        let page = get(addr, "/");
        assert_eq!(page.status, 200);
        assert_eq!(
            page.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(page.body, crate::observe::ui::PAGE);
        assert_eq!(page.header("cache-control"), Some("no-store"));
        assert_eq!(page.header("referrer-policy"), Some("no-referrer"));

        let head = request(addr, "HEAD", "/metrics", &[]);
        assert_eq!(head.status, 200);
        assert_eq!(head.body, "", "no body for HEAD");
    }

    #[test]
    fn unknown_paths_are_404_and_other_methods_405() {
        let server = Server::start("127.0.0.1:0", None, source()).unwrap();
        let addr = server.local_addr();
        let missing = get(addr, "/api/nothing");
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(get(addr, "/metrics/").status, 404);
        let post = request(addr, "POST", "/metrics", &["Content-Length: 0"]);
        assert_eq!(post.status, 405);
        assert_eq!(post.header("allow"), Some("GET, HEAD"));
        assert_eq!(request(addr, "DELETE", "/", &[]).status, 405);
        // A query string does not change the route.
        assert_eq!(get(addr, "/api/metrics?x=1").status, 200);
    }

    #[test]
    fn a_token_is_required_when_given() {
        let server = Server::start("127.0.0.1:0", Some("s3cret+/="), source()).unwrap();
        let addr = server.local_addr();
        let none = get(addr, "/metrics");
        assert_eq!(none.status, 401);
        assert_eq!(
            none.header("www-authenticate"),
            Some("Bearer realm=\"iotstream\"")
        );
        assert!(!none.body.contains("iotstream_"), "nothing leaks");
        let wrong = request(addr, "GET", "/metrics", &["Authorization: Bearer s3cret"]);
        assert_eq!(wrong.status, 401);
        let basic = request(addr, "GET", "/metrics", &["Authorization: Basic s3cret+/="]);
        assert_eq!(basic.status, 401);
        for route in ["/metrics", "/api/metrics", "/api/graph", "/"] {
            let ok = request(addr, "GET", route, &["Authorization: Bearer s3cret+/="]);
            assert_eq!(ok.status, 200, "{route}");
        }
        // Unknown paths and other methods only after the token.
        assert_eq!(get(addr, "/nothing").status, 401);
        assert_eq!(
            request(addr, "POST", "/", &["Content-Length: 0"]).status,
            401
        );
        let auth = ["authorization: bearer s3cret+/="];
        assert_eq!(request(addr, "GET", "/nothing", &auth).status, 404);
        // The page also takes it from the query, percent-encoded; the API does not.
        assert_eq!(get(addr, "/?token=s3cret%2B%2F%3D").status, 200);
        assert_eq!(get(addr, "/?a=b&token=s3cret%2B%2F%3D").status, 200);
        assert_eq!(get(addr, "/?token=s3cret").status, 401);
        assert_eq!(get(addr, "/?token=%zz").status, 401);
        assert_eq!(get(addr, "/api/metrics?token=s3cret%2B%2F%3D").status, 401);
    }

    #[test]
    fn an_address_that_is_not_loopback_needs_a_token() {
        let e = Server::start("0.0.0.0:0", None, source()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("'0.0.0.0:0'"), "{msg}");
        assert!(msg.contains("not a loopback address"), "{msg}");
        assert!(msg.contains("token"), "{msg}");
        // With one it starts, and asks for it.
        let server = Server::start("0.0.0.0:0", Some("secret"), source()).unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], server.local_addr().port()));
        assert_eq!(get(addr, "/metrics").status, 401);
        let ok = request(addr, "GET", "/metrics", &["Authorization: Bearer secret"]);
        assert_eq!(ok.status, 200);
    }

    #[test]
    fn bad_addresses_and_tokens_are_errors_naming_the_address() {
        let e = Server::start("not an address", None, source()).unwrap_err();
        assert!(e.to_string().contains("'not an address'"), "{e}");
        let e = Server::start("127.0.0.1:0", Some(""), source()).unwrap_err();
        assert!(e.to_string().contains("token is empty"), "{e}");
        let first = Server::start("127.0.0.1:0", None, source()).unwrap();
        let taken = first.local_addr().to_string();
        let e = Server::start(&taken, None, source()).unwrap_err();
        assert!(e.to_string().contains(&format!("'{taken}'")), "{e}");
    }

    #[test]
    fn a_port_alone_is_served_on_loopback() {
        let server = Server::start("0", None, source()).unwrap();
        let addr = server.local_addr();
        assert!(addr.ip().is_loopback(), "{addr}");
        assert_eq!(get(addr, "/metrics").status, 200);
    }

    #[test]
    fn the_server_stops_when_dropped() {
        let server = Server::start("127.0.0.1:0", None, source()).unwrap();
        let addr = server.local_addr();
        assert_eq!(get(addr, "/metrics").status, 200);
        drop(server);
        // Its threads are joined, the listener closed with them: the port is free again
        // (bounded wait, should the system keep it a moment).
        let mut again = None;
        for _ in 0..500 {
            match Server::start(&addr.to_string(), None, source()) {
                Ok(s) => {
                    again = Some(s);
                    break;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
        let again = again.expect("the port is free again");
        assert_eq!(again.local_addr(), addr);
        assert_eq!(get(addr, "/api/graph").status, 200);
    }

    #[test]
    fn without_a_token_only_requests_naming_this_host_by_address_are_answered() {
        // A web page the user visits may point a name of its own at 127.0.0.1 (DNS
        // rebinding) and read the view from the browser: such a request names that domain in
        // its Host header, and is refused. Addresses and `localhost` are answered.
        let server = Server::start("127.0.0.1:0", None, source()).unwrap();
        let addr = server.local_addr();
        let port = addr.port();
        for host in [
            format!("127.0.0.1:{port}"),
            format!("localhost:{port}"),
            "LOCALHOST".to_string(),
            format!("[::1]:{port}"),
            "10.1.2.3".to_string(),
        ] {
            let got = request(addr, "GET", "/api/metrics", &[&format!("Host: {host}")]);
            assert_eq!(got.status, 200, "Host: {host}");
        }
        for host in [
            format!("attacker.example:{port}"),
            "attacker.example".to_string(),
            "127.0.0.1.nip.io".to_string(),
        ] {
            for route in ["/api/metrics", "/api/graph", "/metrics", "/"] {
                let got = request(addr, "GET", route, &[&format!("Host: {host}")]);
                assert_eq!(got.status, 403, "Host: {host} {route}");
                assert!(got.body.contains("Host"), "{}", got.body);
                assert!(!got.body.contains("iotstream_"), "nothing leaks");
            }
        }
        // With a token, the token is what counts.
        let server = Server::start("127.0.0.1:0", Some("tok"), source()).unwrap();
        let got = request(
            server.local_addr(),
            "GET",
            "/metrics",
            &["Host: metrics.example.org", "Authorization: Bearer tok"],
        );
        assert_eq!(got.status, 200);
    }

    #[test]
    fn tokens_compare_by_content() {
        let d = digest(b"abc");
        assert!(same_token(b"abc", &d));
        assert!(!same_token(b"abd", &d));
        assert!(!same_token(b"ab", &d));
        assert!(!same_token(b"", &d));
        assert_eq!(bearer_token("Bearer  xyz "), Some("xyz"));
        assert_eq!(bearer_token("bearer xyz"), Some("xyz"));
        assert_eq!(bearer_token("Bearer "), None);
        assert_eq!(bearer_token("Token xyz"), None);
        assert_eq!(percent_decode("a%20b%2b"), Some("a b+".into()));
        assert_eq!(percent_decode("a%2"), None);
        assert_eq!(percent_decode("%ff"), None);
        // A sign is not a digit: "%+f" is not the byte 15, "%-0" not 0.
        assert_eq!(percent_decode("a%+f"), None);
        assert_eq!(percent_decode("a%-0"), None);
        assert_eq!(percent_decode("%41%7e%7E"), Some("A~~".into()));
    }

    /// Sends `raw` on a new connection, then reads until the server closes (at most 20 s).
    fn exchange(addr: SocketAddr, raw: &[u8]) -> std::io::Result<String> {
        let mut s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(20)))?;
        s.write_all(raw)?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    #[test]
    fn one_request_per_connection_and_heads_beyond_the_limits_are_refused() {
        let server = Server::start("127.0.0.1:0", None, source()).unwrap();
        let addr = server.local_addr();
        // Two requests on one connection: one answer, saying the connection closes.
        let two = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\n\r\n").repeat(2);
        let got = exchange(addr, two.as_bytes()).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{got}");
        assert!(got.contains("\r\nConnection: close\r\n"), "{got}");
        // HTTP/1.0 is answered too.
        let got = exchange(addr, b"GET /api/graph HTTP/1.0\r\n\r\n").unwrap();
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        // A head just within the limit is answered; one past it is 431.
        let head = |len: usize| {
            let start = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nX-Pad: ");
            let pad = "p".repeat(len - start.len() - 4);
            format!("{start}{pad}\r\n\r\n")
        };
        let got = exchange(addr, head(MAX_HEAD_BYTES).as_bytes()).unwrap();
        assert!(got.starts_with("HTTP/1.1 200 "), "{got}");
        let got = exchange(addr, head(MAX_HEAD_BYTES + 1).as_bytes()).unwrap();
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
        assert!(got.contains("Connection: close"), "{got}");
        // Too many headers: 431 as well.
        let many = format!(
            "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{}\r\n",
            "X-A: b\r\n".repeat(100)
        );
        let got = exchange(addr, many.as_bytes()).unwrap();
        assert!(got.starts_with("HTTP/1.1 431 "), "{got}");
        // Not HTTP: 400.
        let got = exchange(addr, b"HELLO THERE\r\n\r\n").unwrap();
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
        let got = exchange(addr, b"GET / HTTP/1.1\r\nBad Header\r\n\r\n").unwrap();
        assert!(got.starts_with("HTTP/1.1 400 "), "{got}");
        // A body sent with a request is not read, and does not lose the answer.
        let post = format!(
            "POST /metrics HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 100000\r\n\r\n{}",
            "x".repeat(100_000)
        );
        let got = exchange(addr, post.as_bytes()).unwrap();
        assert!(got.starts_with("HTTP/1.1 405 "), "{got}");
    }
}
