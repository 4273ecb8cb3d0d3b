//! Shared-memory connections forced inside one process: the ring, the codec, the watcher and
//! the feeder, without child processes. Results must equal the in-process run.

use iotstream::{Connection, Graph, Transport};
use serde::{Deserialize, Serialize};

fn leftovers(app: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("iotstream.{app}.")))
                .collect()
        })
        .unwrap_or_default()
}

fn pipeline(app: &str, n: u64, shm: bool, capacity: usize) -> Vec<u64> {
    let mut g = Graph::new(app);
    let s = g.source_iter("numbers", 0..n);
    let conn = if shm {
        Connection::new()
            .capacity(capacity)
            .transport(Transport::SharedMemory)
    } else {
        Connection::new().capacity(capacity)
    };
    let (input, out) = g.add_agent("triple", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        (Triple { input, out }, (input, out))
    });
    g.connect_with(&s, &input, conn);
    let f = g.filter("odd", &out, |v: &u64| v % 2 == 1);
    let c = g.collect("out", &f);
    g.run().unwrap();
    c.values()
}

struct Triple {
    input: iotstream::Input<u64>,
    out: iotstream::Stream<u64>,
}

impl iotstream::Agent for Triple {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        o: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        o.extend(&self.out, i.slice(&self.input).iter().map(|v| v * 3));
        i.consume_all(&self.input);
        Ok(())
    }
}

#[test]
fn u64_through_a_small_ring_wraps_and_matches_local() {
    let local = pipeline("shm_u64_local", 1_000_000, false, 1024);
    let shm = pipeline("shm_u64", 1_000_000, true, 1024);
    assert_eq!(local.len(), 500_000);
    assert_eq!(shm, local);
    assert!(
        leftovers("shm_u64").is_empty(),
        "{:?}",
        leftovers("shm_u64")
    );
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Reading {
    sensor: String,
    t: u64,
    value: f64,
}

#[test]
fn serde_structs_with_strings_cross_a_ring() {
    let run = |shm: bool| {
        let mut g = Graph::new("shm_serde");
        let s = g.source_iter(
            "readings",
            (0..50_000u64).map(|t| Reading {
                sensor: format!("s{}", t % 7).repeat((t % 5) as usize + 1),
                t,
                value: t as f64 / 7.0,
            }),
        );
        let (input, out) = g.add_agent("copy", |p| {
            let input = p.input::<Reading>("in");
            let out = p.output::<Reading>("out");
            (PassOn { input, out }, (input, out))
        });
        let conn = Connection::new().capacity(300);
        g.connect_with(
            &s,
            &input,
            if shm {
                conn.transport(Transport::SharedMemory)
            } else {
                conn
            },
        );
        let c = g.collect("out", &out);
        g.run().unwrap();
        c.values()
    };
    let local = run(false);
    assert_eq!(run(true), local);
    assert_eq!(local.len(), 50_000);
    assert!(leftovers("shm_serde").is_empty());
}

/// Passes every element on unchanged.
struct PassOn<T> {
    input: iotstream::Input<T>,
    out: iotstream::Stream<T>,
}

impl<T: iotstream::Element> iotstream::Agent for PassOn<T> {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        o: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        o.vec(&self.out).extend_from_slice(i.slice(&self.input));
        i.consume_all(&self.input);
        Ok(())
    }
}

#[derive(
    Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable, Serialize, Deserialize,
)]
#[repr(C)]
struct Vibration {
    t_ms: u64,
    x: f32,
    y: f32,
}

/// A declared plain-data struct crosses a ring as its bytes and arrives intact.
#[test]
fn declared_plain_data_structs_cross_a_ring_as_bytes() {
    let run = |shm: bool| {
        let mut g = Graph::new("shm_plain");
        g.plain_data::<Vibration>();
        let s = g.source_iter(
            "accelerometer",
            (0..200_000u64).map(|t| Vibration {
                t_ms: t,
                x: t as f32 * 0.5,
                y: -(t as f32),
            }),
        );
        let (input, out) = g.add_agent("pass", |p| {
            let input = p.input::<Vibration>("in");
            let out = p.output::<Vibration>("out");
            (PassOn { input, out }, (input, out))
        });
        let conn = Connection::new().capacity(512);
        g.connect_with(
            &s,
            &input,
            if shm {
                conn.transport(Transport::SharedMemory)
            } else {
                conn
            },
        );
        let c = g.collect("out", &out);
        g.run().unwrap();
        c.values()
    };
    let local = run(false);
    assert_eq!(local.len(), 200_000);
    assert_eq!(run(true), local);
    assert!(leftovers("shm_plain").is_empty());
}

/// Drop policies on a ring: what the slow reader did not get was dropped and counted, and what
/// it got is in order; the writer did not wait for the reader.
#[test]
fn drop_policies_across_a_ring_account_for_every_element() {
    for policy in [iotstream::Policy::DropNewest, iotstream::Policy::DropOldest] {
        const N: u64 = 200_000;
        let seen: std::sync::Arc<std::sync::Mutex<Vec<u64>>> = std::sync::Arc::default();
        let mut g = Graph::new("shm_drops");
        // Batches smaller than the capacity: a writer waiting for room would drop nothing.
        let batches = iotstream::SourceOptions {
            max_batch: 256,
            ..Default::default()
        };
        let s = g.source_iter_with("sensor", 0..N, batches);
        let log = std::sync::Arc::clone(&seen);
        let input = g.add_agent("slow", |p| {
            let input = p.input::<u64>("in");
            (SlowSink { input, log }, input)
        });
        g.connect_with(
            &s,
            &input,
            Connection::new()
                .capacity(1024)
                .policy(policy)
                .transport(Transport::SharedMemory),
        );
        let m = g.run().unwrap();
        let got = seen.lock().unwrap().clone();
        seen.lock().unwrap().clear();
        let link = m.link("sensor.out", "slow").unwrap();
        assert_eq!(
            got.len() as u64 + link.dropped,
            N,
            "{policy:?}: delivered + dropped"
        );
        assert!(
            got.windows(2).all(|w| w[0] < w[1]),
            "{policy:?}: out of order"
        );
        // A connection that drops does not hold its writer to the reader's pace: the source
        // (its thread steps the writing agent) went on and the slow reader missed some. They
        // were none when the source's thread waited for the ring whatever the policy.
        assert!(link.dropped > 0, "{policy:?}: nothing dropped");
        assert!(leftovers("shm_drops").is_empty());
    }
}

struct SlowSink {
    input: iotstream::Input<u64>,
    log: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
}

impl iotstream::Agent for SlowSink {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        _: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        std::thread::sleep(std::time::Duration::from_micros(300));
        self.log
            .lock()
            .unwrap()
            .extend_from_slice(i.slice(&self.input));
        i.consume_all(&self.input);
        Ok(())
    }
}

/// Consumes its input only in whole groups of `size` elements, emitting each group's first
/// element: while a group is incomplete it waits for more.
struct Groups {
    input: iotstream::Input<String>,
    out: iotstream::Stream<String>,
    size: usize,
}

impl iotstream::Agent for Groups {
    fn step(
        &mut self,
        i: &mut iotstream::Inputs,
        o: &mut iotstream::Outputs,
    ) -> Result<(), iotstream::AgentError> {
        let xs = i.slice(&self.input);
        let whole = xs.len() / self.size * self.size;
        o.extend(&self.out, xs[..whole].iter().step_by(self.size).cloned());
        i.consume(&self.input, whole);
        Ok(())
    }
}

#[test]
fn an_agent_waiting_for_more_than_its_ring_holds_gets_it_counted_as_released_early() {
    // Groups of 64 Strings of 2 000 bytes (128 KB) through a ring sized for 64 small elements
    // (8 KiB): the reader can only get a group if the feeder releases frames it has not
    // consumed. The one case left for the fallback: it must not deadlock, and it is counted.
    const N: usize = 640;
    const GROUP: usize = 64;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut g = Graph::new("shm_groups");
        let s = g.source_iter(
            "words",
            (0..N).map(|i| format!("{i:04}{}", "w".repeat(2_000))),
        );
        let (input, out) = g.add_agent("groups", |p| {
            let input = p.input::<String>("in");
            let out = p.output::<String>("out");
            let agent = Groups {
                input,
                out,
                size: GROUP,
            };
            (agent, (input, out))
        });
        g.connect_with(
            &s,
            &input,
            Connection::new()
                .capacity(GROUP)
                .transport(Transport::SharedMemory),
        );
        let c = g.collect("firsts", &out);
        let m = g
            .run()
            .map(|m| m.link("words.out", "groups").unwrap().released_early);
        let _ = tx.send((m, c.values()));
    });
    // A guard against a deadlock, not a speed claim.
    let (early, firsts) = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("the run ended (no deadlock between a waiting reader and a full ring)");
    let early = early.unwrap();
    let want: Vec<String> = (0..N)
        .step_by(GROUP)
        .map(|i| format!("{i:04}{}", "w".repeat(2_000)))
        .collect();
    assert_eq!(firsts, want);
    assert!(early > 0, "released early: {early}");
    assert!(leftovers("shm_groups").is_empty());
}

/// Strings through a forced ring (small: its default size for the capacity), and what arrived.
fn strings_through_a_ring(
    app: &str,
    strings: Vec<String>,
) -> Result<Vec<String>, iotstream::Error> {
    let mut g = Graph::new(app);
    let s = g.source_iter("text", strings);
    let (input, out) = g.add_agent("copy", |p| {
        let input = p.input::<String>("in");
        let out = p.output::<String>("out");
        (PassOn { input, out }, (input, out))
    });
    g.connect_with(
        &s,
        &input,
        Connection::new()
            .capacity(16)
            .transport(Transport::SharedMemory),
    );
    let c = g.collect("out", &out);
    let run = g.run();
    assert!(leftovers(app).is_empty(), "{:?}", leftovers(app));
    run.map(|_| c.values())
}

/// Elements up to `MAX_ELEMENT_BYTES` encoded (a 16 MiB line, the line sources' limit, and a
/// 1.1 MB one) cross a ring far smaller than they are, split into parts, between small ones.
#[test]
fn elements_up_to_the_largest_cross_a_small_ring() {
    let max_line = 16 << 20;
    let strings: Vec<String> = [3, 1_100_000, 0, max_line, 7, 1_100_000]
        .iter()
        .enumerate()
        .map(|(i, &len)| {
            (0..len)
                .map(|j| (b'a' + ((i + j) % 26) as u8) as char)
                .collect()
        })
        .collect();
    let got = strings_through_a_ring("shm_large", strings.clone()).unwrap();
    assert_eq!(got.len(), strings.len());
    for (i, (got, want)) in got.iter().zip(&strings).enumerate() {
        assert!(
            got == want,
            "string {i}: {} bytes, expected {}",
            got.len(),
            want.len()
        );
    }
}

/// An element whose encoding exceeds `MAX_ELEMENT_BYTES` is an error in the writing process,
/// naming the connection, its size and the limit.
#[test]
fn an_element_over_the_largest_is_an_error_naming_the_connection() {
    let too_long = "x".repeat(iotstream::MAX_ELEMENT_BYTES);
    let err = strings_through_a_ring("shm_too_large", vec!["a".into(), too_long])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("connection text.out -> copy.in")
            && err.contains(&format!("{} bytes", iotstream::MAX_ELEMENT_BYTES + 4))
            && err.contains(&format!("({} bytes", iotstream::MAX_ELEMENT_BYTES)),
        "{err}"
    );
}
