//! TCP links forced inside one process (`Transport::Tcp`): the writer, the feeder, the codec
//! and the acknowledgements over a real loopback socket, without a second host. Results must
//! equal the in-process run, and the link's counters must say what crossed.

use iotstream::{Connection, Graph, Transport};
use serde::{Deserialize, Serialize};

/// numbers 0..n → ×3 (over the connection under test) → odd ones, collected.
fn pipeline(app: &str, n: u64, transport: Transport, capacity: usize) -> (Vec<u64>, u64) {
    let mut g = Graph::new(app);
    let s = g.source_iter("numbers", 0..n);
    let tripled = g.map("triple", &s, |v: &u64| v * 3);
    let (input, out) = g.add_agent("odd", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        (Odd { input, out }, (input, out))
    });
    let conn = Connection::new().capacity(capacity).transport(transport);
    g.connect_with(&tripled, &input, conn);
    let c = g.collect("out", &out);
    let metrics = g.run().unwrap();
    let bytes = metrics.link("triple.out", "odd").map_or(0, |l| l.bytes);
    (c.values(), bytes)
}

struct Odd {
    input: iotstream::Input<u64>,
    out: iotstream::Stream<u64>,
}

impl iotstream::Agent for Odd {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        o: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        o.extend(
            &self.out,
            i.slice(&self.input).iter().copied().filter(|v| v % 2 == 1),
        );
        i.consume_all(&self.input);
        Ok(())
    }
}

#[test]
fn u64_over_a_loopback_link_matches_local() {
    let (local, local_bytes) = pipeline("tcp_u64_local", 1_000_000, Transport::Auto, 1024);
    let (tcp, tcp_bytes) = pipeline("tcp_u64", 1_000_000, Transport::Tcp, 1024);
    assert_eq!(local.len(), 500_000);
    assert!(tcp == local, "the same elements, in the same order");
    assert_eq!(local_bytes, 0, "an in-process link moves no bytes");
    // Plain data crosses as its bytes: 8 per element, plus the frames' few bytes per batch.
    assert!(tcp_bytes >= 8_000_000, "{tcp_bytes}");
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    at: u64,
    values: Vec<f32>,
}

#[test]
fn serde_structs_cross_a_loopback_link() {
    let make = |i: u64| Reading {
        sensor: format!("s{}", i % 7),
        at: i,
        values: (0..(i % 5)).map(|v| v as f32 * 0.5).collect(),
    };
    let run = |transport: Transport| {
        let mut g = Graph::new("tcp_structs");
        let s = g.source_iter("readings", (0..50_000).map(make));
        let kept = g.filter("kept", &s, |r: &Reading| r.at % 3 != 0);
        let (input, out) = g.add_agent("pass", |p| {
            let input = p.input::<Reading>("in");
            let out = p.output::<Reading>("out");
            (Pass { input, out }, (input, out))
        });
        g.connect_with(&kept, &input, Connection::new().transport(transport));
        let c = g.collect("out", &out);
        g.run().unwrap();
        c.values()
    };
    let local = run(Transport::Auto);
    assert_eq!(local.len(), 33_333);
    assert_eq!(run(Transport::Tcp), local);
}

struct Pass {
    input: iotstream::Input<Reading>,
    out: iotstream::Stream<Reading>,
}

impl iotstream::Agent for Pass {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        o: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        o.extend(&self.out, i.slice(&self.input).iter().cloned());
        i.consume_all(&self.input);
        Ok(())
    }
}

#[test]
fn a_tiny_capacity_still_delivers_everything() {
    let (tcp, _) = pipeline("tcp_tiny", 20_000, Transport::Tcp, 1);
    assert_eq!(
        tcp,
        (0..20_000u64)
            .map(|v| v * 3)
            .filter(|v| v % 2 == 1)
            .collect::<Vec<_>>()
    );
}

/// Sums of three: consumes whole windows only, so the last one or two elements of the stream
/// are never consumed (as `map_window` leaves a last partial window).
struct SumsOfThree {
    input: iotstream::Input<u64>,
    out: iotstream::Stream<u64>,
}

impl iotstream::Agent for SumsOfThree {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        o: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        let whole = i.slice(&self.input).len() / 3 * 3;
        let sums: Vec<u64> = i.slice(&self.input)[..whole]
            .chunks(3)
            .map(|w| w.iter().sum())
            .collect();
        o.extend(&self.out, sums);
        i.consume(&self.input, whole);
        Ok(())
    }
}

/// A reader that ends with elements it never consumed (a last partial window) ends the link:
/// what it left goes back as consumed, so the writer's End is acknowledged. Found by audit D:
/// the writer waited for ever for those elements' acknowledgement, so the run never ended
/// (between two hosts, each waiting for the other: both hung).
#[test]
fn a_reader_that_leaves_a_partial_window_ends_the_link() {
    for transport in [Transport::Auto, Transport::Tcp] {
        let mut g = Graph::new("tcp_partial_window");
        let s = g.source_iter("numbers", 0..10u64);
        let (input, out) = g.add_agent("sums", |p| {
            let input = p.input::<u64>("in");
            let out = p.output::<u64>("out");
            (SumsOfThree { input, out }, (input, out))
        });
        g.connect_with(&s, &input, Connection::new().transport(transport));
        let c = g.collect("out", &out);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(g.run().map(|m| m.agent("sums").map(|a| a.consumed)));
        });
        let ended = rx.recv_timeout(std::time::Duration::from_secs(20));
        let consumed = ended
            .unwrap_or_else(|_| panic!("{transport:?}: the run did not end within 20 s"))
            .unwrap();
        assert_eq!(c.values(), [3, 12, 21], "{transport:?}");
        // The agent's counter says what it consumed, not what was dropped at its end.
        assert_eq!(consumed, Some(9), "{transport:?}");
    }
}
