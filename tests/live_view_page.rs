//! The live view's web page in a real headless browser, against a fake metrics server: a small
//! HTTP server serving [`iotstream::observe::ui::PAGE`], a fixed graph (the quake detector on
//! two hosts, with an archive that drops and a tuner feeding thresholds back to the trigger) and
//! metrics whose counters and rates change with every call.
//!
//! Checks: the page shows every agent and every connection, with rates that differ between two
//! loads; the blocked link, the dropping link and the restarting process are marked; it sends
//! the `?token=` as a bearer token, and says so when the API refuses it. Screenshots go to
//! `<target>/test-artifacts/live_view_*.png`.
//!
//! Needs Chromium: found on the `PATH` or installed with `apt-get` (as root); the test says
//! why and passes only if neither works.

#[path = "support/browser.rs"]
mod browser;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use iotstream::info::{AgentInfo, EdgeInfo, GraphInfo, HostInfo, PortInfo};
use iotstream::observe::{AgentView, AppMetrics, LinkView, ProcessStatus, ProcessView};
use iotstream::{Policy, Transport};

use browser::{elements_with, Browser};

/// With a '+' and a '/', as a base64 token has: the page must send it as it is.
const TOKEN: &str = "s3cret+token/=";

fn port(name: &str) -> PortInfo {
    PortInfo {
        name: name.into(),
        element: "f64".into(),
        min_capacity: 1,
    }
}

fn agent(name: &str, process: &str, inputs: &[&str], outputs: &[&str]) -> AgentInfo {
    AgentInfo {
        name: name.into(),
        process: process.into(),
        thread: None,
        inputs: inputs.iter().map(|p| port(p)).collect(),
        outputs: outputs.iter().map(|p| port(p)).collect(),
        reads_stdin: false,
    }
}

fn fake_graph() -> GraphInfo {
    let agents = vec![
        agent("seismometer", "main", &[], &["out"]),
        agent("sta_lta", "detector", &["in"], &["out"]),
        agent("trigger", "detector", &["in", "thresholds"], &["out"]),
        agent("alerts", "alerts", &["in"], &[]),
        agent("archive", "alerts", &["in"], &[]),
        agent("tuner", "tuning", &["in"], &["out"]),
    ];
    // (writer, reader, reader's port index, transport, capacity, policy)
    let wiring = [
        (0, 1, 0, "shared-memory", 1024, Policy::Block),
        (1, 2, 0, "local", 1024, Policy::Block),
        (2, 3, 0, "tcp", 256, Policy::Block),
        (0, 4, 0, "tcp", 512, Policy::DropOldest),
        (2, 5, 0, "tcp", 64, Policy::Block),
        (5, 2, 1, "tcp", 64, Policy::Block),
    ];
    let edges = wiring
        .iter()
        .map(|&(from, to, to_port, transport, capacity, policy)| {
            let writer: &AgentInfo = &agents[from];
            let reader: &AgentInfo = &agents[to];
            EdgeInfo {
                from_agent: from,
                from_port: 0,
                to_agent: to,
                to_port,
                stream: format!("{}.out", writer.name),
                input: format!("{}.{}", reader.name, reader.inputs[to_port].name),
                capacity,
                capacity_bytes: iotstream::DEFAULT_CAPACITY_BYTES,
                element_bytes: 8,
                credit: capacity,
                policy,
                forced: Transport::Auto,
                transport: transport.into(),
                ring_bytes: (transport == "shared-memory").then_some(1 << 20),
            }
        })
        .collect();
    let host = |name: &str, address: &str, processes: &[&str]| HostInfo {
        name: name.into(),
        address: address.into(),
        port: 7000,
        observe_port: None,
        processes: processes.iter().map(|p| p.to_string()).collect(),
    };
    GraphInfo {
        app: "quake".into(),
        default_capacity: 1024,
        agents,
        edges,
        processes: ["main", "detector", "alerts", "tuning"]
            .map(String::from)
            .into(),
        hosts: vec![
            host("field", "10.0.0.2", &["main", "detector"]),
            host("cloud", "10.0.0.3", &["alerts", "tuning"]),
        ],
    }
}

/// The application as seen at the `n`th call: every counter and rate grows with `n`.
fn fake_metrics(graph: &GraphInfo, n: u64) -> AppMetrics {
    let nf = n as f64;
    let host_of = |process: &str| graph.host_of(process).map_or("", |h| &h.name).to_string();
    let processes = graph
        .processes
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let restarting = p == "tuning";
            ProcessView {
                process: p.clone(),
                host: host_of(p),
                pid: if restarting { 0 } else { 4100 + i as u32 },
                status: if restarting {
                    ProcessStatus::Restarting
                } else {
                    ProcessStatus::Running
                },
                up_s: 3600.0 + 75.0 + nf,
                cpu_s: 12.0 + nf * 0.3,
                cpu_share: Some(0.05 + 0.1 * i as f64 + 0.001 * nf),
                rss_bytes: (14 + 6 * i as u64) << 20,
                restarts: if restarting {
                    2
                } else {
                    u64::from(p == "alerts")
                },
            }
        })
        .collect();
    let agents = graph
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| AgentView {
            name: a.name.clone(),
            process: a.process.clone(),
            host: host_of(&a.process),
            steps: 1000 * (i as u64 + 1) + 37 * n,
            consumed: 50_000 + 2000 * n,
            busy_ns: 1_000_000 * n,
            late: 0,
            undelivered: 0,
            busy_share: Some(if a.name == "sta_lta" {
                0.93
            } else {
                0.04 * (i as f64 + 1.0)
            }),
        })
        .collect();
    let links = graph
        .edges
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let rate = 2500.0 / (i as f64 + 1.0) + 37.0 * nf;
            let blocked = e.stream == "trigger.out" && e.input == "alerts.in";
            let dropping = e.input == "archive.in";
            LinkView {
                edge: i,
                stream: e.stream.clone(),
                reader: graph.agents[e.to_agent].name.clone(),
                input: e.input.clone(),
                transport: e.transport.clone(),
                capacity: e.capacity as u64,
                elements: 100_000 + (rate as u64) * n,
                batches: 100 + n,
                dropped: if dropping { 40 * n } else { 0 },
                blocked_ns: if blocked { 800_000_000 * n } else { 0 },
                in_flight: if blocked {
                    e.capacity as u64
                } else {
                    3 + n % 5
                },
                max_in_flight: e.capacity as u64,
                bytes: 8 * (rate as u64) * n,
                reconnects: 0,
                unacked_bytes: 0,
                elements_per_s: Some(rate),
                dropped_per_s: Some(if dropping { 40.0 } else { 0.0 }),
                blocked_share: Some(if blocked { 0.82 } else { 0.0 }),
                ..LinkView::default()
            }
        })
        .collect();
    AppMetrics {
        app: graph.app.clone(),
        run: "4100-7f3a".into(),
        time_ms: 1_750_000_000_000 + 1000 * n,
        interval_ms: 1000,
        processes,
        agents,
        streams: Vec::new(),
        links,
    }
}

/// The fake metrics server: serves until dropped. Test-only and trusting its one client (the
/// browser): std sockets, [`httparse`] for the requests, a thread per connection (the browser
/// may keep one open and idle), one request per connection.
struct FakeServer {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    port: u16,
    /// `/api/*` calls refused for a missing or wrong token.
    refused: Arc<AtomicU64>,
    /// `/api/metrics` calls answered.
    metrics_calls: Arc<AtomicU64>,
}

impl FakeServer {
    fn start() -> FakeServer {
        FakeServer::failing_after(u64::MAX)
    }

    /// A server whose `/api/metrics` answers 503 from its `ok_calls`th call on.
    fn failing_after(ok_calls: u64) -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let port = listener.local_addr().expect("an address").port();
        let stop = Arc::new(AtomicBool::new(false));
        let refused = Arc::new(AtomicU64::new(0));
        let metrics_calls = Arc::new(AtomicU64::new(0));
        let thread = {
            let (stop, refused, calls) = (stop.clone(), refused.clone(), metrics_calls.clone());
            std::thread::spawn(move || {
                let graph = Arc::new(fake_graph());
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let (graph, refused, calls) =
                                (graph.clone(), refused.clone(), calls.clone());
                            std::thread::spawn(move || {
                                serve(stream, &graph, &refused, &calls, ok_calls)
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            })
        };
        FakeServer {
            stop,
            thread: Some(thread),
            port,
            refused,
            metrics_calls,
        }
    }

    fn url(&self, query: &str) -> String {
        format!("http://127.0.0.1:{}/{query}", self.port)
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers the one request of `stream`.
fn serve(
    mut stream: TcpStream,
    graph: &GraphInfo,
    refused: &AtomicU64,
    calls: &AtomicU64,
    ok_calls: u64,
) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut buf = vec![0u8; 64 * 1024];
    let mut len = 0;
    let (path, authorized) = loop {
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return,
            Ok(n) => len += n,
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&buf[..len]) {
            Ok(httparse::Status::Complete(_)) => {
                let path = request.path.unwrap_or("").split('?').next().unwrap_or("");
                let authorized = request.headers.iter().any(|h| {
                    h.name.eq_ignore_ascii_case("Authorization")
                        && h.value == format!("Bearer {TOKEN}").as_bytes()
                });
                break (path.to_string(), authorized);
            }
            Ok(httparse::Status::Partial) if len < buf.len() => {}
            _ => return,
        }
    };
    let (status, kind, body) = match path.as_str() {
        "/" => (
            "200 OK",
            "text/html; charset=utf-8",
            iotstream::observe::ui::PAGE.to_string(),
        ),
        "/api/graph" | "/api/metrics" if !authorized => {
            refused.fetch_add(1, Ordering::SeqCst);
            (
                "401 Unauthorized",
                "text/plain",
                "a bearer token is needed".to_string(),
            )
        }
        "/api/graph" => (
            "200 OK",
            "application/json",
            serde_json::to_string(graph).unwrap(),
        ),
        "/api/metrics" if calls.load(Ordering::SeqCst) >= ok_calls => (
            "503 Service Unavailable",
            "text/plain",
            "the launcher is gone".to_string(),
        ),
        "/api/metrics" => {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            let m = fake_metrics(graph, n);
            (
                "200 OK",
                "application/json",
                serde_json::to_string(&m).unwrap(),
            )
        }
        _ => ("404 Not Found", "text/plain", "not found".to_string()),
    };
    let answer = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nCache-Control: no-store\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(answer.as_bytes());
}

/// `data-rate` of every edge, by edge index.
fn rates(dom: &str) -> Vec<(String, String)> {
    elements_with(dom, "data-edge")
        .into_iter()
        .map(|a| {
            (
                a["data-edge"].clone(),
                a.get("data-rate").cloned().unwrap_or_default(),
            )
        })
        .collect()
}

fn attr_of(dom: &str, key: &str, value: &str, attr: &str) -> String {
    elements_with(dom, key)
        .into_iter()
        .find(|a| a[key] == value)
        .unwrap_or_else(|| panic!("no element with {key}={value:?}"))
        .get(attr)
        .cloned()
        .unwrap_or_default()
}

#[test]
fn the_live_view_shows_every_agent_and_live_rates() {
    let browser = match Browser::find_or_install() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let server = FakeServer::start();
    let graph = fake_graph();
    let page = server.url(&format!("?token={TOKEN}"));
    let artifacts = browser::artifacts_dir();

    let first = browser.dump_dom(&page, 3000).expect("first load");
    assert_eq!(first.console, Vec::<String>::new(), "the page logged");
    let first = first.dom;
    let shown = |dom: &str| -> Vec<String> {
        elements_with(dom, "data-agent")
            .into_iter()
            .map(|a| a["data-agent"].clone())
            .collect()
    };
    let body = elements_with(&first, "data-updates");
    let updates: u64 = body[0]["data-updates"].parse().expect("a count");
    assert!(updates >= 1, "the page showed no metrics report:\n{first}");
    let mut agents = shown(&first);
    agents.sort();
    let mut expected: Vec<String> = graph.agents.iter().map(|a| a.name.clone()).collect();
    expected.sort();
    assert_eq!(agents, expected, "agents shown");

    let rates1 = rates(&first);
    assert_eq!(rates1.len(), graph.edges.len(), "edges shown: {rates1:?}");
    assert!(
        rates1.iter().all(|(_, r)| r.parse::<f64>().is_ok()),
        "rates {rates1:?}"
    );
    assert_eq!(
        attr_of(&first, "data-edge", "2", "data-state"),
        "bad",
        "blocked, backlog full"
    );
    assert_eq!(
        attr_of(&first, "data-edge", "3", "data-state"),
        "bad",
        "dropping"
    );
    assert_eq!(attr_of(&first, "data-edge", "0", "data-state"), "ok");
    assert_eq!(attr_of(&first, "data-edge", "3", "data-transport"), "tcp");
    assert_eq!(
        attr_of(&first, "data-process", "tuning", "data-status"),
        "restarting"
    );
    assert_eq!(
        attr_of(&first, "data-process", "tuning", "data-state"),
        "warn"
    );
    assert_eq!(attr_of(&first, "data-process", "main", "data-state"), "ok");
    assert_eq!(
        attr_of(&first, "data-agent", "sta_lta", "data-state"),
        "warn",
        "busy 93%"
    );
    assert_eq!(
        attr_of(&first, "data-agent", "sta_lta", "data-busy"),
        "0.93"
    );
    let hosts: Vec<String> = elements_with(&first, "data-host")
        .into_iter()
        .filter(|a| a.get("class").is_some_and(|c| c == "host"))
        .map(|a| a["data-host"].clone())
        .collect();
    assert_eq!(hosts, ["field", "cloud"]);
    let problems = elements_with(&first, "data-problem");
    assert!(
        problems.iter().any(|p| p["data-problem"] == "bad"),
        "no problem listed"
    );
    assert_eq!(attr_of(&first, "data-app", "quake", "data-app"), "quake");

    let second = browser.dump_dom(&page, 3000).expect("second load").dom;
    assert_eq!(shown(&second).len(), graph.agents.len());
    let rates2 = rates(&second);
    assert_eq!(rates2.len(), rates1.len());
    for ((edge, r1), (_, r2)) in rates1.iter().zip(&rates2) {
        assert_ne!(r1, r2, "edge {edge}: the same rate in two loads");
    }
    assert_eq!(
        server.refused.load(Ordering::SeqCst),
        0,
        "a call went without the token"
    );
    assert!(server.metrics_calls.load(Ordering::SeqCst) >= 2);

    for name in ["live_view_1.png", "live_view_2.png"] {
        let png = artifacts.join(name);
        browser.screenshot(&page, 3000, &png).expect("screenshot");
        let head = std::fs::read(&png).expect("read the screenshot");
        assert!(head.starts_with(b"\x89PNG"), "{} is no PNG", png.display());
        println!("screenshot: {}", png.display());
    }
}

#[test]
fn without_its_token_the_page_says_the_api_cannot_be_reached() {
    let browser = match Browser::find_or_install() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let server = FakeServer::start();
    let dom = browser.dump_dom(&server.url(""), 2000).expect("load").dom;
    assert_eq!(attr_of(&dom, "id", "api", "data-api"), "down", "{dom}");
    assert!(dom.contains("HTTP 401"), "the note gives the cause:\n{dom}");
    assert!(server.refused.load(Ordering::SeqCst) >= 1);
    assert_eq!(server.metrics_calls.load(Ordering::SeqCst), 0);
    let png = browser::artifacts_dir().join("live_view_unreachable.png");
    browser
        .screenshot(&server.url(""), 2000, &png)
        .expect("screenshot");
}

#[test]
fn when_the_api_goes_away_the_last_data_stay_shown_and_greyed() {
    let browser = match Browser::find_or_install() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let server = FakeServer::failing_after(1);
    let url = server.url(&format!("?token={TOKEN}"));
    let dom = browser.dump_dom(&url, 3000).expect("load").dom;
    assert_eq!(server.metrics_calls.load(Ordering::SeqCst), 1);
    assert_eq!(elements_with(&dom, "data-updates")[0]["data-updates"], "1");
    assert_eq!(
        elements_with(&dom, "data-agent").len(),
        fake_graph().agents.len()
    );
    assert_eq!(attr_of(&dom, "id", "api", "data-api"), "down");
    assert_eq!(attr_of(&dom, "data-updates", "1", "class"), "stale");
    assert!(dom.contains("HTTP 503"), "the note gives the cause:\n{dom}");
    assert!(
        dom.contains("Showing the data of"),
        "the note says the data are old:\n{dom}"
    );
}
