//! The live view of a program that runs without the launcher (`Graph::serve_metrics`), and the
//! counters it shows: time in steps, late elements, watermarks, connection ends.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use iotstream::info::GraphInfo;
use iotstream::observe::{AppMetrics, ServeOptions};
use iotstream::ops::event::Watermarks;
use iotstream::ops::event_window::EventWindow;
use iotstream::{
    Agent, AgentError, Connection, Graph, Harness, Input, Inputs, LinkEnds, Outputs, Stream,
    Transport,
};

/// One HTTP/1.1 GET on a new connection: status and body.
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the live view");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = String::new();
    s.read_to_string(&mut raw).expect("an answer");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, body.to_string())
}

/// The value of the one sample of `/metrics` that starts with `series`.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Polls `/api/metrics` until `done` holds (bounded: 20 s).
fn wait_for(addr: SocketAddr, done: impl Fn(&AppMetrics) -> bool) -> AppMetrics {
    for _ in 0..2000 {
        let (status, body) = get(addr, "/api/metrics");
        assert_eq!(status, 200);
        let view: AppMetrics = serde_json::from_str(&body).expect("AppMetrics JSON");
        if done(&view) {
            return view;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("the live view never showed what was sent");
}

#[test]
fn a_program_serves_its_live_view_while_it_runs() {
    let mut g = Graph::new("served");
    let readings = g.input::<u64>("readings");
    let doubled = g.map("double", &readings, |x: &u64| x * 2);
    let plus = g.map("plus_one", &doubled, |x: &u64| x + 1);
    g.for_each("print", &plus, |_: &u64| {});
    g.serve_metrics_with(
        "127.0.0.1:0",
        ServeOptions::default().interval(Duration::from_millis(20)),
    );
    let mut running = g.start().unwrap();
    let addr = running.metrics_addr().expect("the live view is served");
    assert!(addr.ip().is_loopback());
    let sender = running.input(&readings).unwrap();

    let (status, graph) = get(addr, "/api/graph");
    assert_eq!(status, 200);
    let info: GraphInfo = serde_json::from_str(&graph).expect("GraphInfo JSON");
    let agents: Vec<&str> = info.agents.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(agents, ["readings", "double", "plus_one", "print"]);

    sender.send((0..1000).collect()).unwrap();
    let view = wait_for(addr, |v| v.links[2].elements == 1000);
    assert_eq!(view.app, "served");
    assert_eq!(view.processes[0].process, "main");
    assert_eq!(view.processes[0].pid, std::process::id());
    assert!(view.processes[0].rss_bytes > 0);
    let (status, first) = get(addr, "/metrics");
    assert_eq!(status, 200);
    let series = r#"iotstream_link_elements_total{app="served",stream="plus_one.out",reader="print",input="in",transport="local"}"#;
    assert_eq!(sample(&first, series), 1000.0);
    let steps =
        r#"iotstream_agent_steps_total{app="served",agent="double",process="main",host="local"}"#;
    let steps_first = sample(&first, steps);
    assert!(steps_first >= 1.0);

    sender.send((0..500).collect()).unwrap();
    wait_for(addr, |v| v.links[2].elements == 1500);
    let (_, second) = get(addr, "/metrics");
    assert_eq!(sample(&second, series), 1500.0, "counters grow");
    assert!(sample(&second, steps) > steps_first);
    let stream = r#"iotstream_stream_elements_total{app="served",stream="double.out",process="main",host="local"}"#;
    assert_eq!(sample(&second, stream), 1500.0);
    assert_eq!(
        sample(
            &second,
            r#"iotstream_process_up{app="served",process="main",host="local"}"#
        ),
        1.0
    );

    let (status, page) = get(addr, "/");
    assert_eq!(status, 200);
    assert!(page.starts_with("<!doctype html>"));

    sender.close();
    running.join().unwrap();
    // The server ended with the run: nothing accepts on its port any more, or soon not.
    let free = (0..500).any(|_| {
        let ok = TcpListener::bind(addr).is_ok();
        if !ok {
            std::thread::sleep(Duration::from_millis(10));
        }
        ok
    });
    assert!(free, "the port of the live view is released after the run");
}

#[test]
fn an_address_that_cannot_be_served_fails_the_start_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let mut g = Graph::new("unserved");
    let xs = g.source_iter("numbers", 0..10u64);
    g.for_each("print", &xs, |_: &u64| {});
    g.serve_metrics(&addr);
    let e = g.run().unwrap_err().to_string();
    assert!(e.contains(&format!("'{addr}'")), "{e}");

    let mut g = Graph::new("unserved");
    let xs = g.source_iter("numbers", 0..10u64);
    g.for_each("print", &xs, |_: &u64| {});
    g.serve_metrics("0.0.0.0:0");
    let e = g.run().unwrap_err().to_string();
    assert!(
        e.contains("'0.0.0.0:0'") && e.contains("not a loopback address"),
        "{e}"
    );
}

#[test]
fn late_elements_watermarks_and_time_in_steps_are_counted() {
    let mut g = Graph::new("late");
    let x = g.input::<(u64, u32)>("x");
    let timed = g.watermarks("timed", &x, Watermarks::bounded(0));
    let w = g.event_window(
        "w",
        &timed,
        EventWindow::tumbling(5),
        |e: &[(u64, u32)]| e.len(),
    );
    let _windows = g.collect("windows", &w.windows);
    let _late = g.collect("late", &w.late);
    let mut h = Harness::new(g).unwrap();
    // 2 and 3 come after 10 has closed the window [0, 5): late.
    h.push(&x, [(1, 0), (10, 0), (2, 0), (3, 0), (11, 0)])
        .unwrap();
    h.run().unwrap();
    let m = h.metrics();
    assert_eq!(w.late_count.get(), 2);
    assert_eq!(m.agent("w").unwrap().late, 2, "counted on the agent too");
    assert_eq!(m.agent("timed").unwrap().late, 0);
    assert_eq!(m.stream("timed.out").unwrap().watermark, Some(11));
    assert_eq!(m.stream("x.out").unwrap().watermark, None);
    let busy = m.agent("w").unwrap().busy;
    assert!(busy > Duration::ZERO, "time in steps is measured");
    // Every connection of a one-process run has both ends here, and its graph index.
    let edges: Vec<(usize, LinkEnds)> = m.links.iter().map(|l| (l.edge, l.ends)).collect();
    assert_eq!(
        edges,
        [
            (0, LinkEnds::Both),
            (1, LinkEnds::Both),
            (2, LinkEnds::Both),
            (3, LinkEnds::Both)
        ]
    );
    h.finish().unwrap();
}

#[test]
fn the_reader_of_a_ring_counts_what_is_in_flight() {
    let mut g = Graph::new("observe_ring");
    let xs = g.source_iter("numbers", 0..20_000u64);
    let doubled = g.map("double", &xs, |x: &u64| x * 2);
    let conn = Connection::new()
        .capacity(256)
        .transport(Transport::SharedMemory);
    let (input, slow) = g.add_agent("slow", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        (Slow { input, out }, (input, out))
    });
    g.connect_with(&doubled, &input, conn);
    g.for_each("print", &slow, |_: &u64| {});
    let m = g.run().unwrap();
    let ring = m.link("double.out", "slow").unwrap();
    assert_eq!(ring.elements, 20_000);
    assert_eq!(ring.ends, LinkEnds::Both);
    assert_eq!(ring.edge, 1);
    // Counted by the ring's reader (its writer cannot see the reading agent's backlog).
    assert!(
        ring.max_in_flight > 0 && ring.max_in_flight <= 256,
        "{}",
        ring.max_in_flight
    );
    assert_eq!(ring.in_flight, 0, "everything was consumed");
}

/// Consumes at most 10 elements a step, so that some wait.
struct Slow {
    input: Input<u64>,
    out: Stream<u64>,
}

impl Agent for Slow {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len().min(10);
        o.extend(&self.out, i.slice(&self.input)[..n].iter().copied());
        i.consume(&self.input, n);
        Ok(())
    }
}

/// An agent in a long step shows as busy while it is in it, and a writer that waits with data
/// it cannot send shows that wait while it lasts. Both were counted only once over (a user's
/// audit saw an agent in steps of 1.5 s shown idle in alternate seconds, and a writer whose
/// reader was stopped shown 0 % blocked for as long as the stop lasted).
#[test]
fn a_long_step_and_a_long_wait_show_while_they_last() {
    let gate = Arc::new(AtomicBool::new(false));
    let mut g = Graph::new("long_step");
    let x = g.input::<u64>("x");
    // A map's step writes what its step was shown, thousands of elements, into a connection
    // of 16: it holds the rest, and waits, as long as the reader's first step lasts.
    let xs = g.map("numbers", &x, |v: &u64| v + 1);
    let (input, out) = g.add_agent("stuck", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        let stuck = Stuck {
            input,
            out,
            gate: Arc::clone(&gate),
        };
        (stuck, (input, out))
    });
    g.connect_with(&xs, &input, Connection::new().capacity(16));
    // Its long step holds its own thread, not a worker the others need.
    g.place_on_thread("stuck", "stuck");
    g.for_each("sink", &out, |_: &u64| {});
    let mut running = g.start().unwrap();
    let sender = running.input(&x).unwrap();
    sender.send((0..10_000u64).collect()).unwrap();
    drop(sender);
    let enough = Duration::from_millis(50);
    let start = Instant::now();
    let shown = loop {
        let m = running.metrics();
        let busy = m.agent("stuck").unwrap().busy;
        let blocked = m.link("numbers.out", "stuck").unwrap().blocked;
        if busy >= enough && blocked >= enough {
            break true;
        }
        if start.elapsed() > Duration::from_secs(30) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let m = running.metrics();
    gate.store(true, Ordering::SeqCst);
    let done = running.join().unwrap();
    assert!(
        shown,
        "in the first step (busy {:?}) and waiting (blocked {:?}) for 30 s: not shown",
        m.agent("stuck").unwrap().busy,
        m.link("numbers.out", "stuck").unwrap().blocked
    );
    // Never less than said before: counters that go on from where they were.
    assert!(done.agent("stuck").unwrap().busy >= m.agent("stuck").unwrap().busy);
    assert!(
        done.link("numbers.out", "stuck").unwrap().blocked
            >= m.link("numbers.out", "stuck").unwrap().blocked
    );
    assert_eq!(done.link("numbers.out", "stuck").unwrap().elements, 10_000);
}

/// Stays in its first step with data until the gate opens, then forwards everything.
struct Stuck {
    input: Input<u64>,
    out: Stream<u64>,
    gate: Arc<AtomicBool>,
}

impl Agent for Stuck {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len();
        if n == 0 {
            return Ok(());
        }
        while !self.gate.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(1));
        }
        o.extend(&self.out, i.slice(&self.input).iter().copied());
        i.consume(&self.input, n);
        Ok(())
    }
}

/// An in-process connection whose reader has consumed everything shows no backlog, though its
/// credit goes back to the writer in groups of a quarter of its capacity: it showed what was
/// consumed and not yet credited as in flight (a user's audit saw 6,016 of 32,768 on each
/// connection of an idle pipeline).
#[test]
fn an_idle_in_process_connection_shows_no_backlog() {
    let mut g = Graph::new("idle_backlog");
    let x = g.input::<u64>("x");
    let doubled = g.map("double", &x, |v: &u64| v * 2);
    let seen = Arc::new(AtomicU64::new(0));
    let s = Arc::clone(&seen);
    g.for_each("sink", &doubled, move |_: &u64| {
        s.fetch_add(1, Ordering::SeqCst);
    });
    let mut running = g.start().unwrap();
    let sender = running.input(&x).unwrap();
    for v in 0..1_000u64 {
        sender.push(v).unwrap();
    }
    // Consumed, and the consumption stored after the step: the backlog then is 0 (and stays
    // at 1,000 without the fix, far below the credit's group of 8,192).
    let links = [("x.out", "double"), ("double.out", "sink")];
    let start = Instant::now();
    loop {
        let m = running.metrics();
        let backlog: Vec<u64> = links
            .iter()
            .map(|(stream, reader)| m.link(stream, reader).unwrap().in_flight)
            .collect();
        if seen.load(Ordering::SeqCst) == 1_000 && backlog == [0, 0] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{} consumed; backlog {backlog:?} with everything consumed",
            seen.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let m = running.metrics();
    for (stream, reader) in links {
        assert_eq!(m.link(stream, reader).unwrap().elements, 1_000, "{stream}");
    }
    drop(sender);
    running.join().unwrap();
}

/// A reader that consumes nothing.
struct Hoarder {
    input: Input<u64>,
}

impl Agent for Hoarder {
    fn step(&mut self, _: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let _ = &self.input;
        Ok(())
    }
}

/// A connection whose byte bound is smaller than its element bound has a credit of the byte
/// bound's worth of elements (`LinkStats::capacity`, graph.rs "Capacity"). The live view and
/// `/metrics` show that as the connection's capacity: it is what the backlog can reach, and
/// what "backlog full" (red) is measured against. They showed the 1,000 asked for (found by
/// an audit: a backlog at its real bound never showed as full).
#[test]
fn the_live_view_shows_the_capacity_the_connection_really_has() {
    let mut g = Graph::new("view_capacity");
    let x = g.input::<u64>("x");
    let input = g.add_agent("stalled", |p| {
        let input = p.input::<u64>("in");
        (Hoarder { input }, input)
    });
    // 1,000 elements asked for, but 800 bytes of u64: a credit of 100.
    g.connect_with(
        &x,
        &input,
        Connection::new().capacity(1000).capacity_bytes(800),
    );
    g.serve_metrics_with(
        "127.0.0.1:0",
        ServeOptions::default().interval(Duration::from_millis(20)),
    );
    let mut running = g.start().unwrap();
    let addr = running.metrics_addr().unwrap();
    let sender = running.input(&x).unwrap();
    let feeding = std::thread::spawn(move || sender.send((0..500).collect()).is_ok());
    let deadline = Instant::now() + Duration::from_secs(60);
    let real = loop {
        let l = running.metrics().link("x.out", "stalled").unwrap().clone();
        if l.in_flight == l.capacity as u64 {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "the backlog never reached the credit: {l:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(real.capacity, 100, "LinkStats: the credit");
    let view = wait_for(addr, |v| v.links[0].in_flight == 100);
    let (_, prom) = get(addr, "/metrics");
    // The reader is never stepped again (nothing new comes): the run ends by its drop.
    drop(running);
    let _ = feeding.join();
    let link = &view.links[0];
    assert_eq!((link.in_flight, link.capacity), (100, 100), "{link:?}");
    assert_eq!(sample(&prom, "iotstream_link_capacity{"), 100.0, "{prom}");
}
