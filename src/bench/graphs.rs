//! The measured graphs: what one cell of `iotstream bench` runs through iotstream.
//!
//! - **Throughput**: source → map → sink over [`Payload<N>`], the source feeding for the cell's
//!   duration as fast as the graph takes it: through a [`Source`](crate::Source) handing over
//!   batches (`batch`), or through [`Graph::input`] and one
//!   [`InputSender::send`](crate::InputSender::send) per element (`single`). The sink counts.
//! - **Latency**: a ping-pong pair, ping → echo → pong, one element in flight: the pong agent
//!   measures the round trip and lets the ping side send the next element. The ping enters
//!   the way the pattern's elements do (a `Source` returning one element per call, or one
//!   `InputSender::send` per element). Half a round trip is reported as the one-way latency.
//!   At a rate (`--rate`), the ping side sleeps until the next tick before each ping
//!   ([`Pace`]); the clock of a round trip starts when the ping leaves. With `batch`, a
//!   source's thread sends the pings, woken by the pong; with `single`, the pong agent itself
//!   waits for the tick and pushes the next ping from its step (through the `InputSender`):
//!   one thread per side receives and sends, as in iceoryx2's ping-pong
//!   (`benches/ipc_latency.rs`), with no hand-off to a pinging thread.
//!
//! A mode only changes placement and transports: `thread` puts every agent on one thread,
//! `threads` gives each agent a thread of its own, `processes` moves the sink (the echo) to
//! another process over shared memory, `tcp` forces the map → sink connection (both
//! connections of the echo) onto a TCP link on loopback inside one process.
//!
//! Each process of a cell prints what it knows as one result line (see
//! [`emit`](super::emit)): the source side `sent` and `start_ns`, the sink side `delivered`
//! and `end_ns`, both on `CLOCK_MONOTONIC`, which every process of the host shares.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use serde_json::json;

use super::element::Payload;
use super::{emit, now_ns, percentiles, Mode, Pace, Params, Pattern, CLOCK_EVERY, WARM_UP};
use crate::agent::{Agent, Inputs, Outputs};
use crate::error::{AgentError, Error};
use crate::graph::{Connection, Graph, Transport};
use crate::ops::source::SourceOptions;
use crate::stream::{Input, Stream};

/// How long the ping side waits for its pong before the cell fails.
const PONG_TIMEOUT: Duration = Duration::from_secs(10);

/// The process this one runs as in a multi-process cell (`None`: the starter, "main").
fn role() -> Option<String> {
    std::env::var(crate::launch::ENV_PROCESS).ok()
}

/// Puts the agents where `mode` says (`far` goes to another process in `processes`).
fn place(g: &mut Graph, mode: Mode, agents: &[&str], far: &str) {
    match mode {
        Mode::Thread => {
            for a in agents {
                g.place_on_thread(a, "bench");
            }
        }
        Mode::Threads => {
            for a in agents {
                g.place_on_thread(a, a);
            }
        }
        Mode::Processes | Mode::Spin => {
            g.place_in_process(far, far);
        }
        Mode::Pool | Mode::Tcp | Mode::Broker => {}
    }
}

/// The application's name: `base`, and for the `broker` mode this process's id after it, so
/// that each cell has JetStream streams of its own (the bench deletes them once the cell
/// ended: [`broker_stream_prefixes`]).
fn app_name(mode: Mode, base: &str) -> String {
    match mode {
        Mode::Broker => broker_app(base, std::process::id()),
        _ => base.to_string(),
    }
}

/// A `broker` cell's application name, from its base and its process's id.
fn broker_app(base: &str, pid: u32) -> String {
    format!("{base}_{pid}")
}

/// The throughput graph's application name before [`app_name`].
fn throughput_base(mode: Mode, size: usize) -> String {
    format!("bench_{}_{size}", mode.name())
}

/// The latency pair's application name before [`app_name`].
fn latency_base(mode: Mode, size: usize) -> String {
    format!("bench_latency_{}_{size}", mode.name())
}

/// What the names of the JetStream streams of a `broker` cell of `size`-byte elements whose
/// process was `pid` start with (a broker link's stream is `IOTSTREAM_<app>_…`): its
/// throughput graph's and its latency pair's.
pub(crate) fn broker_stream_prefixes(size: usize, pid: u32) -> [String; 2] {
    [
        throughput_base(Mode::Broker, size),
        latency_base(Mode::Broker, size),
    ]
    .map(|base| format!("IOTSTREAM_{}_", broker_app(&base, pid)))
}

/// Names the `broker` mode's server (`--nats`) in `g`.
fn use_broker(g: &mut Graph, mode: Mode, p: &Params) -> Result<(), Error> {
    if mode == Mode::Broker {
        let url = p.nats.as_deref().ok_or_else(|| Error::Runtime {
            detail: "the broker mode needs a NATS server: --nats nats://host:4222".into(),
        })?;
        g.use_broker(url);
    }
    Ok(())
}

/// The connection to and from the far agent: the transport `mode` forces, low-latency mode
/// for `spin`.
fn connection(mode: Mode) -> Connection {
    match mode {
        Mode::Tcp => Connection::new().transport(Transport::Tcp),
        Mode::Broker => Connection::new().transport(Transport::Broker),
        Mode::Spin => Connection::new().spin(super::SPIN_WINDOW),
        _ => Connection::new(),
    }
}

/// The latency pair's echo: a map stage (`Payload::mapped`) added by hand so that its input's
/// transport can be forced (the throughput graph's map is the library's
/// [`Graph::map_in_place`]). It maps what it is shown in place, in its output ([`Outputs::forward`]): a batch of at
/// least 64 KiB that only it holds becomes its output without a copy (its source's batches of
/// 1 KiB elements, whole), anything else is copied once (`extend(iter.map(Payload::mapped))` copies each element twice, through a
/// temporary, which at 1 KiB was half of the stage's time). The baselines' map stages do the
/// same (`src/bench/raw.rs`: the crossbeam map maps the vector it received, the raw ring's
/// producer makes and maps each element in place).
struct MapStage<const N: usize> {
    input: Input<Payload<N>>,
    out: Stream<Payload<N>>,
}

impl<const N: usize> Agent for MapStage<N> {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        o.forward(&self.out, i, &self.input)
            .iter_mut()
            .for_each(Payload::map_in_place);
        Ok(())
    }
}

fn map_stage<const N: usize>(
    g: &mut Graph,
    name: &str,
    from: &Stream<Payload<N>>,
    conn: Connection,
) -> Stream<Payload<N>> {
    let (input, out) = g.add_agent(name, |p| {
        let input = p.input::<Payload<N>>("in");
        let out = p.output::<Payload<N>>("out");
        (MapStage { input, out }, (input, out))
    });
    g.connect_with(from, &input, conn);
    out
}

/// What the throughput sink saw.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    end_ns: AtomicU64,
}

/// The throughput sink: counts, and notes when the last elements came.
struct CountSink<const N: usize> {
    input: Input<Payload<N>>,
    tally: Arc<Tally>,
}

impl<const N: usize> Agent for CountSink<N> {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len();
        if n > 0 {
            self.tally.delivered.fetch_add(n as u64, Ordering::Relaxed);
            self.tally.end_ns.store(now_ns(), Ordering::Relaxed);
            i.consume(&self.input, n);
        }
        Ok(())
    }
}

/// The source side of a throughput cell: hands out elements until its duration, counted from
/// its first element, is over.
struct Feed {
    next: u64,
    duration: Duration,
    deadline: Option<Instant>,
    sent: Arc<AtomicU64>,
    start_ns: Arc<AtomicU64>,
}

impl Feed {
    fn new(duration: Duration, sent: Arc<AtomicU64>, start_ns: Arc<AtomicU64>) -> Feed {
        Feed {
            next: 0,
            duration,
            deadline: None,
            sent,
            start_ns,
        }
    }

    /// True while the duration is not over (starting the clock on the first call).
    fn going(&mut self) -> bool {
        let now = Instant::now();
        match self.deadline {
            None => {
                self.start_ns.store(now_ns(), Ordering::Relaxed);
                self.deadline = Some(now + self.duration);
                true
            }
            Some(d) => now < d,
        }
    }
}

/// The source of the `batch` pattern: `max` elements per call.
struct BatchSource<const N: usize>(Feed);

impl<const N: usize> crate::ops::source::Source<Payload<N>> for BatchSource<N> {
    fn fill(&mut self, out: &mut Vec<Payload<N>>, max: usize) -> Result<bool, AgentError> {
        let feed = &mut self.0;
        if !feed.going() {
            return Ok(false);
        }
        let start = feed.next;
        out.extend((start..start + max as u64).map(Payload::new));
        feed.next += max as u64;
        feed.sent.store(feed.next, Ordering::Relaxed);
        Ok(true)
    }
}

/// source → map → sink for the cell's duration, placed as `mode` says. Every process prints
/// its side of the result.
pub(crate) fn throughput<const N: usize>(mode: Mode, p: &Params) -> Result<(), Error> {
    let role = role();
    let mut g = Graph::new(&app_name(mode, &throughput_base(mode, N)));
    use_broker(&mut g, mode, p)?;
    g.plain_data::<Payload<N>>();
    g.set_default_capacity(p.capacity);
    // Signals belong to the bench command (the starter's children still take part).
    g.handle_signals(false);
    let sent = Arc::new(AtomicU64::new(0));
    let start_ns = Arc::new(AtomicU64::new(0));
    let source = match p.pattern {
        Pattern::Batch => g.source_with(
            "source",
            BatchSource::<N>(Feed::new(
                p.duration,
                Arc::clone(&sent),
                Arc::clone(&start_ns),
            )),
            SourceOptions {
                max_batch: p.batch,
                interval: None,
            },
        ),
        Pattern::Single => g.input::<Payload<N>>("source"),
    };
    // The library's map in place (what a user would write): in front of a ring it changes
    // each element on its way into the ring.
    let mapped = g.map_in_place("map", &source, Payload::map_in_place);
    let tally = Arc::new(Tally::default());
    let t = Arc::clone(&tally);
    let input = g.add_agent("sink", |ports| {
        let input = ports.input::<Payload<N>>("in");
        (CountSink { input, tally: t }, input)
    });
    g.connect_with(&mapped, &input, connection(mode));
    place(&mut g, mode, &["source", "map", "sink"], "sink");
    let here_sink = !mode.two_processes() || role.as_deref() == Some("sink");
    let here_source = role.is_none();

    let mut running = g.start()?;
    if here_source && p.pattern == Pattern::Single {
        let tx = running.input(&source)?;
        let mut feed = Feed::new(p.duration, Arc::clone(&sent), Arc::clone(&start_ns));
        let mut going = feed.going();
        while going {
            for _ in 0..CLOCK_EVERY {
                tx.push(Payload::new(feed.next))?;
                feed.next += 1;
            }
            going = feed.going();
        }
        sent.store(feed.next, Ordering::Relaxed);
        drop(tx);
    }
    running.join()?;
    if here_source {
        emit(json!({
            "sent": sent.load(Ordering::Relaxed),
            "start_ns": start_ns.load(Ordering::Relaxed),
        }));
    }
    if here_sink {
        emit(json!({
            "delivered": tally.delivered.load(Ordering::Relaxed),
            "end_ns": tally.end_ns.load(Ordering::Relaxed),
        }));
    }
    Ok(())
}

/// What the ping and pong sides of a latency cell share (both run in the starter).
struct PingPong {
    /// When the element in flight was sent (`CLOCK_MONOTONIC`, ns).
    sent_at: AtomicU64,
    /// Half of each round trip, ns.
    samples: Mutex<Vec<u64>>,
    /// One message per pong: the ping side may send the next element.
    back: Sender<()>,
}

/// The pong agent: notes each round trip and lets the ping side go on.
struct Pong<const N: usize> {
    input: Input<Payload<N>>,
    shared: Arc<PingPong>,
    /// Back to back with the `single` pattern: the pong sends the next ping itself.
    relay: Arc<Mutex<Option<Relay<N>>>>,
}

/// The `single` pattern's ping side, inside the pong agent: the thread that steps the pong
/// waits for the next tick of the pace (none back to back) and sends the next ping through
/// the [`InputSender`], as the one thread of each side of iceoryx2's ping-pong does, instead
/// of waking another thread to send it.
///
/// [`InputSender`]: crate::InputSender
struct Relay<const N: usize> {
    feed: Feed,
    pace: Pace,
    tx: crate::InputSender<Payload<N>>,
}

impl<const N: usize> Relay<N> {
    /// Sends the next ping at the next tick, stamped; `false` once the duration is over (or
    /// the graph stopped).
    fn ping(&mut self, shared: &PingPong) -> bool {
        self.pace.wait();
        if !self.feed.going() {
            return false;
        }
        let seq = self.feed.next;
        self.feed.next += 1;
        self.feed.sent.store(self.feed.next, Ordering::Relaxed);
        shared.sent_at.store(now_ns(), Ordering::Release);
        self.tx.push(Payload::new(seq)).is_ok()
    }
}

impl<const N: usize> Agent for Pong<N> {
    fn step(&mut self, i: &mut Inputs, _: &mut Outputs) -> Result<(), AgentError> {
        let n = i.slice(&self.input).len();
        for _ in 0..n {
            let now = now_ns();
            let rtt = now.saturating_sub(self.shared.sent_at.load(Ordering::Acquire));
            self.shared
                .samples
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(rtt / 2);
            let mut relay = self.relay.lock().unwrap_or_else(|p| p.into_inner());
            match relay.as_mut() {
                Some(r) => {
                    if !r.ping(&self.shared) {
                        // Over: the ping input ends, and the program stops waiting.
                        *relay = None;
                        let _ = self.shared.back.send(());
                    }
                }
                None => {
                    let _ = self.shared.back.send(());
                }
            }
        }
        i.consume(&self.input, n);
        Ok(())
    }
}

/// The ping side: one element per round trip (at most one per tick of its pace), until the
/// duration is over.
struct Pinger {
    feed: Feed,
    shared: Arc<PingPong>,
    back: Receiver<()>,
    pace: Pace,
}

impl Pinger {
    /// Waits for the previous pong (not before the first ping) and for the next tick of the
    /// pace, then says whether to send another, stamping it.
    fn next(&mut self) -> Result<Option<u64>, String> {
        if self.feed.deadline.is_some() && self.back.recv_timeout(PONG_TIMEOUT).is_err() {
            return Err(format!(
                "element {} did not come back within {PONG_TIMEOUT:?}",
                self.feed.next.saturating_sub(1)
            ));
        }
        self.pace.wait();
        if !self.feed.going() {
            return Ok(None);
        }
        let seq = self.feed.next;
        self.feed.next += 1;
        self.feed.sent.store(self.feed.next, Ordering::Relaxed);
        self.shared.sent_at.store(now_ns(), Ordering::Release);
        Ok(Some(seq))
    }
}

/// The `batch` pattern's ping: a source returning one element per call.
struct PingSource<const N: usize>(Pinger);

impl<const N: usize> crate::ops::source::Source<Payload<N>> for PingSource<N> {
    fn fill(&mut self, out: &mut Vec<Payload<N>>, _max: usize) -> Result<bool, AgentError> {
        match self.0.next()? {
            Some(seq) => {
                out.push(Payload::new(seq));
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

/// ping → echo → pong for the cell's duration, one element in flight; the starter prints the
/// one-way latencies' percentiles.
pub(crate) fn latency<const N: usize>(mode: Mode, p: &Params) -> Result<(), Error> {
    let role = role();
    let mut g = Graph::new(&app_name(mode, &latency_base(mode, N)));
    use_broker(&mut g, mode, p)?;
    g.plain_data::<Payload<N>>();
    g.set_default_capacity(p.capacity);
    g.handle_signals(false);
    let (back_tx, back_rx) = crossbeam_channel::bounded(1);
    let shared = Arc::new(PingPong {
        sent_at: AtomicU64::new(0),
        samples: Mutex::new(Vec::new()),
        back: back_tx,
    });
    let sent = Arc::new(AtomicU64::new(0));
    let start_ns = Arc::new(AtomicU64::new(0));
    let ping = match p.pattern {
        Pattern::Batch => {
            let pinger = Pinger {
                feed: Feed::new(p.duration, Arc::clone(&sent), Arc::clone(&start_ns)),
                shared: Arc::clone(&shared),
                back: back_rx.clone(),
                pace: Pace::new(p.rate),
            };
            g.source_with(
                "ping",
                PingSource::<N>(pinger),
                SourceOptions {
                    max_batch: 1,
                    interval: None,
                },
            )
        }
        Pattern::Single => g.input::<Payload<N>>("ping"),
    };
    let conn = connection(mode);
    let echoed = map_stage(&mut g, "echo", &ping, conn);
    let s = Arc::clone(&shared);
    let relay: Arc<Mutex<Option<Relay<N>>>> = Arc::default();
    let r = Arc::clone(&relay);
    let input = g.add_agent("pong", |ports| {
        let input = ports.input::<Payload<N>>("in");
        let pong = Pong {
            input,
            shared: s,
            relay: r,
        };
        (pong, input)
    });
    g.connect_with(&echoed, &input, conn);
    place(&mut g, mode, &["ping", "echo", "pong"], "echo");
    let starter = role.is_none();

    let mut running = g.start()?;
    if starter && p.pattern == Pattern::Single {
        // The first ping from here, every next one from the pong's step.
        let relay_ = Relay {
            feed: Feed::new(p.duration, Arc::clone(&sent), Arc::clone(&start_ns)),
            pace: Pace::new(p.rate),
            tx: running.input(&ping)?,
        };
        let mut slot = relay.lock().unwrap_or_else(|e| e.into_inner());
        let first = slot.insert(relay_).ping(&shared);
        drop(slot);
        // The pong clears the relay (ending the ping input) once the duration is over.
        let over = first && back_rx.recv_timeout(p.duration + PONG_TIMEOUT).is_ok();
        let lost = relay.lock().unwrap_or_else(|e| e.into_inner()).take();
        if !over {
            let next = lost.map_or(0, |r| r.feed.next);
            running.stop();
            let _ = running.join();
            return Err(Error::Runtime {
                detail: format!(
                    "element {} did not come back within {PONG_TIMEOUT:?}",
                    next.saturating_sub(1)
                ),
            });
        }
    }
    running.join()?;
    if starter {
        let mut samples =
            std::mem::take(&mut *shared.samples.lock().unwrap_or_else(|p| p.into_inner()));
        let received = samples.len() as u64;
        if samples.len() > 2 * WARM_UP {
            samples.drain(..WARM_UP);
        }
        let (p50, p99, p999) = percentiles(&mut samples);
        emit(json!({
            "sent": sent.load(Ordering::Relaxed),
            "delivered": received,
            "samples": samples.len(),
            "p50_ns": p50,
            "p99_ns": p99,
            "p999_ns": p999,
        }));
    }
    Ok(())
}
