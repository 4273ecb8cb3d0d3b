//! Watermarks cross every transport unchanged: the same small application (disordered
//! `(t, v)` readings → `watermarks` → a map → an observer recording elements and marks in
//! order) run with its map → observer connection in process, forced onto a shared-memory ring,
//! forced onto a TCP loopback link, and forced through a NATS JetStream broker (a
//! `nats-server -js` the test starts); the observed sequence must be identical.
//!
//! For the sequence to be a property of the application and not of thread timing, every piece
//! that could move a mark is pinned: the source's batches equal the capacity of the connection
//! into `watermarks` (each of its steps sees exactly one batch, so its watermarks fall in the
//! same places every run), and the map passes each mark exactly where it stands in its input
//! (the runtime's own forwarding puts a step's marks after that step's elements, which depends
//! on how many batches a step sees). What remains between the map and the observer is the
//! transport under test.

use std::sync::{Arc, Mutex};

#[path = "support/nats.rs"]
mod nats;

use iotstream::ops::event::Watermarks;
use iotstream::{
    Agent, AgentError, Connection, Graph, Input, Inputs, Mark, Outputs, SourceOptions, Stream,
    Transport,
};

/// What the observer saw, in order.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    El(u64, u32),
    M(Mark),
}

/// Records the elements and marks of its input in the order they come.
struct Observer {
    input: Input<(u64, u32)>,
    log: Arc<Mutex<Vec<Seen>>>,
}

impl Agent for Observer {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let mut log = self.log.lock().unwrap();
        let data = i.slice(&self.input);
        let mut at = 0;
        for (k, m) in i.marks(&self.input) {
            log.extend(data[at..k].iter().map(|e| Seen::El(e.0, e.1)));
            log.push(Seen::M(m));
            at = k;
        }
        log.extend(data[at..].iter().map(|e| Seen::El(e.0, e.1)));
        i.consume_all(&self.input);
        Ok(())
    }
}

/// `v → 3v + 1`, passing each mark of its input exactly where it stands.
struct ExactMap {
    input: Input<(u64, u32)>,
    out: Stream<(u64, u32)>,
}

impl Agent for ExactMap {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        let f = |e: &(u64, u32)| (e.0, e.1 * 3 + 1);
        let data = i.slice(&self.input);
        let mut at = 0;
        for (k, m) in i.marks(&self.input) {
            o.extend(&self.out, data[at..k].iter().map(f));
            o.mark(&self.out, m);
            at = k;
        }
        o.extend(&self.out, data[at..].iter().map(f));
        i.consume_all(&self.input);
        Ok(())
    }
}

/// Elements per source batch, and the capacity of every connection but the one under test.
const BATCH: usize = 16;

/// Readings every 10 time units; every 3rd comes 15 late (within the bound of 20), every 7th
/// 35 late (beyond it: a watermark goes right before it).
fn readings(n: u64) -> Vec<(u64, u32)> {
    (0..n)
        .map(|i| {
            let late = if i % 7 == 6 {
                35
            } else if i % 3 == 2 {
                15
            } else {
                0
            };
            ((10 * i + 100).saturating_sub(late), i as u32)
        })
        .collect()
}

/// Runs the application with the map → observer connection on `transport`; what the
/// observer saw.
fn observed(app: &str, transport: Transport) -> Vec<Seen> {
    observed_with(app, transport, None)
}

/// [`observed`], with the broker at `broker` named (for `Transport::Broker`).
fn observed_with(app: &str, transport: Transport, broker: Option<&str>) -> Vec<Seen> {
    let mut g = Graph::new(app);
    if let Some(url) = broker {
        g.use_broker(url);
    }
    g.set_default_capacity(BATCH);
    let opts = SourceOptions {
        max_batch: BATCH,
        ..SourceOptions::default()
    };
    let s = g.source_iter_with("readings", readings(2_000), opts);
    let timed = g.watermarks("timed", &s, Watermarks::bounded(20));
    let (input, out) = g.add_agent("map", |p| {
        p.manages_watermarks();
        let input = p.input::<(u64, u32)>("in");
        let out = p.output::<(u64, u32)>("out");
        (ExactMap { input, out }, (input, out))
    });
    g.connect(&timed, &input);
    let log = Arc::new(Mutex::new(Vec::new()));
    let l = Arc::clone(&log);
    let obs = g.add_agent("obs", |p| {
        let input = p.input::<(u64, u32)>("in");
        (Observer { input, log: l }, input)
    });
    g.connect_with(
        &out,
        &obs,
        Connection::new().capacity(64).transport(transport),
    );
    g.run().unwrap();
    log.lock().unwrap().clone()
}

/// Checks what every run must show whatever the transport: every element once, in order, and
/// watermarks that increase and that no element follows late unless it was beyond the bound.
fn check(seen: &[Seen]) {
    let want: Vec<(u64, u32)> = readings(2_000)
        .into_iter()
        .map(|(t, v)| (t, v * 3 + 1))
        .collect();
    let got: Vec<(u64, u32)> = seen
        .iter()
        .filter_map(|s| match s {
            Seen::El(t, v) => Some((*t, *v)),
            Seen::M(_) => None,
        })
        .collect();
    assert_eq!(got, want, "every element once, in order");
    let mut last: Option<u64> = None;
    let mut marks = 0;
    for s in seen {
        match s {
            Seen::M(Mark::Watermark(w)) => {
                assert!(last.is_none_or(|l| *w > l), "watermarks increase");
                last = Some(*w);
                marks += 1;
            }
            Seen::M(Mark::Idle) => panic!("nothing was idle"),
            Seen::El(t, v) => {
                let i = (v - 1) / 3;
                if let Some(w) = last {
                    assert!(*t >= w || i % 7 == 6, "element {i} (t {t}) late after {w}");
                }
            }
        }
    }
    assert!(marks > 2_000 / BATCH, "{marks} watermarks");
}

#[test]
fn watermarks_cross_a_ring_and_a_tcp_link_unchanged() {
    let local = observed("evt_local", Transport::Auto);
    check(&local);
    let shm = observed("evt_shm", Transport::SharedMemory);
    assert!(
        shm == local,
        "shared memory: the same elements and marks, in order"
    );
    let tcp = observed("evt_tcp", Transport::Tcp);
    assert!(tcp == local, "TCP: the same elements and marks, in order");
}

#[test]
fn watermarks_cross_a_broker_unchanged() {
    let local = observed("evt_local_b", Transport::Auto);
    check(&local);
    let server = nats::NatsServer::start();
    let broker = observed_with("evt_broker", Transport::Broker, Some(&server.url()));
    assert!(
        broker == local,
        "broker: the same elements and marks, in order"
    );
}
