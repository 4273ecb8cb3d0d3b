//! Building an application: agents, `connect`, placement, and running it.
//!
//! # A graph
//!
//! A [`Graph`] is the whole application: its agents (each with a unique name), the streams they
//! own, and the connections from streams to inputs. Operators ([`Graph::map`], [`Graph::zip`],
//! …) add an agent and connect its inputs in one call and return its output streams; a
//! hand-written [`Agent`] is added with [`Graph::add_agent`] and wired with [`Graph::connect`].
//!
//! # Connections
//!
//! [`Graph::connect`] is the one wiring call. Where both agents run decides the transport; the
//! [`Connection`] options decide the capacity (elements in flight between the writer and this
//! reader, and the bytes they may take: see "Capacity") and what happens when the reader falls
//! that far behind ([`Policy`]).
//!
//! # Capacity
//!
//! A connection bounds what is in flight on it (sent by the writer, not yet consumed by the
//! reader) twice: in elements ([`Connection::capacity`], default [`DEFAULT_CAPACITY`]) and in
//! bytes ([`Connection::capacity_bytes`], default [`DEFAULT_CAPACITY_BYTES`]). The link's
//! credit is the smaller of the two, counted in elements, the same on every transport:
//!
//! - in process, each element counts `size_of::<T>()` bytes: what the shared batches hold;
//!   an element that owns heap memory counts that too, if its type has a counter: built in for
//!   `String`, `Box<str>`, `Box<[u8]>`, `Vec<String>` and the `Vec`s of primitive numbers,
//!   declared with [`Graph::heap_bytes`] for other types. Such a link sends what fits the byte
//!   bound as it goes (the credit in elements, fixed before the run, cannot know the sizes),
//!   and a source of such elements keeps each batch to an eighth of the smallest byte bound it
//!   feeds (at least 256 KiB), so that the elements are not made thousands at a time before
//!   any bound could count them. A type with heap memory and no counter counts its
//!   `size_of` only: declare it, or bound such streams in elements. An agent that holds one
//!   input while it waits for another (a zip whose other side lags, a join) holds at most the
//!   byte bound of it: a lag of more than that is a stall whose error names the connection,
//!   its bytes and the bound to raise;
//! - on a shared-memory ring, each element counts the bytes it takes in the ring at most (a
//!   frame of its own: its encoding, up to 24 bytes more), and the ring is made twice what the
//!   credit takes (room for the writer's next frame), so a ring is at most twice the bound,
//!   rounded up to a power of two (8 KiB at least);
//! - over TCP, as in process; the deployment's `unacked_bytes` bounds the bytes there, as
//!   encoded (a reader acknowledges what its agent consumed);
//! - through a broker, as in process; the reader also stops pulling while the messages it
//!   holds unacknowledged have the byte bound's worth of payload.
//!
//! A source's batches are kept to an eighth of the smallest credit it feeds, or to 256 KiB of
//! elements if that is more, so that several are in flight at once
//! ([`SourceOptions::max_batch`](crate::SourceOptions::max_batch)).
//! A batch larger than the credit is split (what fits goes, the rest waits), and the credit is
//! never less than one element (an element larger than the bound travels alone) nor less than
//! what the reading agent needs to make progress ([`Ports::needs_at_least`]: a bound set on
//! the connection that cannot hold that many is an error; the default is raised to it).
//! [`LinkStats::capacity`](crate::LinkStats::capacity) is the credit in elements.
//!
//! # Mistakes
//!
//! Building never panics on a wiring mistake: problems (a duplicate name, two ports whose
//! `agent.port` names read the same, an input connected twice or never, a capacity too small
//! for a window) are collected and returned together by [`Graph::run`], [`Graph::start`] or
//! [`Harness::new`](crate::Harness::new) as [`Error::Graph`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::agent::{Agent, PortDecl, Ports};
use crate::deploy::HostPlan;
use crate::error::Error;
use crate::host::{Driver, Host};
use crate::metrics::{LinkEnds, LinkEntry, Registry};
use crate::port::CreditRoute;
use crate::stream::{Element, Input, PortId, Stream};
pub use crate::stream::{Policy, Transport};
pub(crate) use crate::transport::LinkSpec;
use crate::transport::Mailbox;

/// Elements that may be in flight on a connection unless it says otherwise.
pub const DEFAULT_CAPACITY: usize = 32 * 1024;

/// Bytes of elements that may be in flight on a connection unless it says otherwise: 1 MiB
/// (see the module docs, "Capacity", for how they are counted).
///
/// The element bound alone let a connection of 1 KiB elements hold 32 MiB in process (and a
/// 128 MiB ring across processes): ten such connections would fill a small Raspberry Pi.
/// 1 MiB keeps every in-process connection of elements up to 32 bytes at its element bound
/// (32 Ki × 32 B; a ring counts each element's frame, a little more); it holds 1 024 elements
/// of 1 KiB, 16 of 64 KiB, and a ring of 2 MiB for elements up to half a megabyte. Throughput
/// does not need more, and gains from less: in flight is what a round trip of credit (tens of
/// microseconds) must cover, and what is in flight should stay in a core's cache between
/// being written and being read. Against 4 MiB, the bound until 2026-12-07, `iotstream bench`
/// moved more with 1 MiB in every mode within one host at 1 KiB (two processes: 11.2
/// against 7.9 M elements/s; one process: 17.2 against 14.7; docs/benchmarks-journal.md).
/// Raise it for a link with a long round trip (a broker or a host far away: 1 MiB per
/// 100 ms of round trip is 10 MB/s; through a local NATS server 1 KiB elements moved 160 k/s
/// against about 200 k/s at 4 MiB), per connection ([`Connection::capacity_bytes`]), per
/// graph ([`Graph::set_default_capacity_bytes`]) or in the deployment file.
pub const DEFAULT_CAPACITY_BYTES: usize = 1 << 20;

/// Options of one connection: capacity (in elements and in bytes) and back-pressure policy.
///
/// ```
/// use iotstream::{Connection, Policy};
/// let c = Connection::new()
///     .capacity(256)
///     .capacity_bytes(64 << 10)
///     .policy(Policy::DropOldest);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    pub(crate) capacity: Option<usize>,
    pub(crate) capacity_bytes: Option<usize>,
    pub(crate) policy: Policy,
    pub(crate) transport: Transport,
    pub(crate) spin: Option<Duration>,
}

impl Connection {
    /// The defaults: the graph's default capacity, [`Policy::Block`].
    pub fn new() -> Self {
        Self::default()
    }
    /// Elements that may be in flight (sent, not yet consumed) between writer and reader.
    pub fn capacity(mut self, elements: usize) -> Self {
        self.capacity = Some(elements);
        self
    }
    /// Bytes of elements that may be in flight between writer and reader, besides the element
    /// bound: the smaller of the two is the link's credit (see the [module docs](self),
    /// "Capacity", for how elements are counted). At least 1; it must hold as many elements as
    /// the reader needs to make progress. Default: the graph's
    /// ([`DEFAULT_CAPACITY_BYTES`] unless [`Graph::set_default_capacity_bytes`] says
    /// otherwise).
    pub fn capacity_bytes(mut self, bytes: usize) -> Self {
        self.capacity_bytes = Some(bytes);
        self
    }
    /// What happens when the capacity is reached.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
    /// Forces a transport instead of choosing it from placement.
    pub fn transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }
    /// Low-latency mode, for a connection between two processes (a shared-memory ring): the
    /// reading side keeps checking the ring for up to `window` before it goes to sleep, so
    /// data written within that window is taken without a wake-up (a few microseconds less
    /// per hop), at the price of a core busy for that long after each batch.
    /// `Duration::MAX` spins always: the reading thread never sleeps (for cores set aside for
    /// it). Without it (the default, blocking mode), the reader sleeps and costs no CPU while
    /// the stream is quiet; it keeps checking only after a wait that ended within 50 µs (messages
    /// back to back, a reply to a request), for up to twice that gap, so a stream paced slower
    /// than that (1,000 messages per second) never spins (its reader sleeps as soon as it finds
    /// the ring empty) and a busy one takes no wake-up per message. `Duration::ZERO` sleeps
    /// after a few microseconds of checks, always (the least CPU, a wake-up per message).
    /// Other transports ignore it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use iotstream::Connection;
    ///
    /// // Use it with `Graph::connect_with` on a link between two processes.
    /// let fast = Connection::new().spin(Duration::from_micros(50));
    /// let dedicated = Connection::new().spin(Duration::MAX);
    /// # let _ = (fast, dedicated);
    /// ```
    pub fn spin(mut self, window: Duration) -> Self {
        self.spin = Some(window);
        self
    }
}

/// The transport an edge resolved to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Resolved {
    /// Both agents in one process: envelopes.
    Local,
    /// Two processes of one host (or forced): a shared-memory ring.
    SharedMemory,
    /// Two hosts: a TCP link.
    Tcp,
    /// Through a broker (NATS JetStream), wherever the two agents run.
    Broker,
}

pub(crate) struct AgentDecl {
    pub name: String,
    pub inputs: Vec<PortDecl>,
    pub outputs: Vec<PortDecl>,
    pub driver: Option<Driver>,
    pub thread: Option<String>,
    /// It talks to the outside world (a file, standard output): unless placed, it runs on a
    /// thread of its own instead of the worker pool, so that its I/O never holds up agents.
    pub own_thread: bool,
    pub process: Option<String>,
    /// It reads this program's standard input ([`Graph::source_stdin`]): its process is given
    /// the standard input of whoever starts the application.
    pub reads_stdin: bool,
    /// It sends its outputs' marks itself ([`Ports::manages_watermarks`]).
    pub manages_watermarks: bool,
    /// Its outputs carry watermarks whatever its inputs ([`Ports::originates_watermarks`]).
    pub originates_watermarks: bool,
}

pub(crate) struct Edge {
    pub from: PortId,
    pub to: PortId,
    pub conn: Connection,
}

/// How many of a source's batches its connections' credit holds at least: a source's batch
/// is kept to this fraction of the smallest credit it feeds (see
/// [`SourceOptions::max_batch`](crate::SourceOptions::max_batch)), unless that is less than
/// [`SMALL_BATCH_BYTES`].
const BATCHES_IN_FLIGHT: usize = 8;

/// A batch this small stays in a core's cache and is cheap to wait for: a source's batches
/// are never kept below it (nor above `max_batch`) for the sake of [`BATCHES_IN_FLIGHT`]. A
/// small credit of small elements (a capacity of 3 u64s) splits the source's batches as it
/// always did, and they travel as their source made them.
const SMALL_BATCH_BYTES: usize = 256 << 10;

/// What a connection's two bounds come to (see the module docs, "Capacity").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bounds {
    /// The element bound asked for (the connection's, or the graph's default).
    pub capacity: usize,
    /// The byte bound asked for (the connection's, or the graph's default).
    pub capacity_bytes: usize,
    /// The byte bound was set on the connection (or by a deployment), not the default.
    pub bytes_set: bool,
    /// Elements the byte bound holds, counted as in process (`size_of`), at least 1.
    pub by_bytes: usize,
    /// The link's credit in elements: what both bounds allow on its transport, at least 1 and
    /// at least what the reader needs.
    pub elements: usize,
}

/// An external input's channel (`ops::source::ExternalInput<T>`) of unknown `T`, as the graph
/// stores it until a run hands out its sender.
pub(crate) trait ExternalAny: Send {
    fn agent(&self) -> usize;
    fn as_any(&self) -> &dyn std::any::Any;
    /// The threaded runtime's [`InputSender<T>`](crate::InputSender) of the stream `name`,
    /// boxed.
    fn into_sender(
        self: Box<Self>,
        wake: Arc<dyn Mailbox>,
        name: String,
    ) -> Box<dyn std::any::Any + Send>;
}

static NEXT_GRAPH: AtomicU32 = AtomicU32::new(1);

/// An application under construction. See the [module docs](self).
pub struct Graph {
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) agents: Vec<AgentDecl>,
    pub(crate) edges: Vec<Edge>,
    problems: Vec<String>,
    default_capacity: usize,
    default_capacity_bytes: usize,
    /// The deployment's `[network]` section and its digest, when a launcher started this
    /// process with a deployment file: how links between hosts are set up.
    pub(crate) network: Option<(crate::deploy::NetworkSettings, [u8; 32])>,
    /// The broker that `Transport::Broker` connections cross ([`Graph::use_broker`], or the
    /// deployment's `[broker]` section).
    pub(crate) broker: Option<crate::transport::broker::BrokerSettings>,
    /// What is wrong with the options given to [`Graph::use_broker_with`] (reported by the
    /// graph's checks at start).
    broker_problems: Vec<String>,
    /// Senders of external inputs ([`Graph::input`]), by the stream they feed.
    pub(crate) externals: HashMap<PortId, Box<dyn ExternalAny>>,
    /// Hosts; one, [`LOCAL_HOST`](crate::info::LOCAL_HOST), unless a deployment names others.
    pub(crate) hosts: Vec<HostPlan>,
    /// The host of each process a deployment placed; others run on the first host.
    pub(crate) process_hosts: HashMap<String, String>,
    /// Ctrl-C, SIGTERM and SIGHUP drain the run (see [`Graph::handle_signals`]).
    pub(crate) handle_signals: bool,
    /// Where the program serves its own live view ([`Graph::serve_metrics`]).
    pub(crate) serve_metrics: Option<(String, crate::observe::ServeOptions)>,
    /// Worker threads of a threaded run ([`Graph::worker_threads`]); `None`: one per core.
    pub(crate) workers: Option<usize>,
    /// Worker threads of the processes a deployment sets them for (`workers`), which win
    /// over `workers` in those processes.
    process_workers: BTreeMap<String, usize>,
    /// Each agent's index by name (the first, if a name is used twice): a name is looked up
    /// in constant time, so adding n agents takes linear time, not quadratic.
    by_name: HashMap<String, usize>,
}

impl Graph {
    /// An empty application named `name` (used in logs, errors and shared-memory names).
    pub fn new(name: &str) -> Self {
        // Reported when the application is built, as every graph problem (a thread's name,
        // a file's, a ring's cannot hold a NUL byte: the run would panic).
        let problems = if name.contains('\0') {
            vec![format!(
                "the application's name '{}' holds a NUL byte",
                name.escape_debug()
            )]
        } else {
            Vec::new()
        };
        Graph {
            name: name.to_string(),
            id: NEXT_GRAPH.fetch_add(1, Ordering::Relaxed),
            agents: Vec::new(),
            edges: Vec::new(),
            problems,
            default_capacity: DEFAULT_CAPACITY,
            default_capacity_bytes: DEFAULT_CAPACITY_BYTES,
            workers: None,
            process_workers: BTreeMap::new(),
            by_name: HashMap::new(),
            externals: HashMap::new(),
            network: None,
            broker: None,
            broker_problems: Vec::new(),
            hosts: vec![HostPlan {
                name: crate::info::LOCAL_HOST.to_string(),
                address: "127.0.0.1".to_string(),
                port: crate::deploy::DEFAULT_PORT,
                observe_port: None,
            }],
            process_hosts: HashMap::new(),
            handle_signals: true,
            serve_metrics: None,
        }
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The capacity of connections that do not set their own.
    pub fn default_capacity(&self) -> usize {
        self.default_capacity
    }

    /// Sets the capacity of connections that do not set their own.
    pub fn set_default_capacity(&mut self, elements: usize) -> &mut Self {
        self.default_capacity = elements;
        self
    }

    /// The byte bound of connections that do not set their own ([`Connection::capacity_bytes`]).
    pub fn default_capacity_bytes(&self) -> usize {
        self.default_capacity_bytes
    }

    /// Sets the byte bound of connections that do not set their own (see the
    /// [module docs](self), "Capacity"); at least 1. Unlike a connection's own bound, the
    /// default never makes a connection too small for its reader: it is raised to what the
    /// reader needs.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("pi");
    /// g.set_default_capacity_bytes(256 << 10);
    /// let frames = g.source_iter("camera", (0..3u64).map(|i| [i; 32]));
    /// let out = g.collect("frames", &frames);
    /// assert_eq!(g.info().edges[0].capacity_bytes, 256 << 10);
    /// let metrics = g.run().unwrap();
    /// // 256 KiB of 256-byte elements: 1024 in flight at most.
    /// assert_eq!(metrics.links[0].capacity, 1024);
    /// assert_eq!(out.values().len(), 3);
    /// ```
    pub fn set_default_capacity_bytes(&mut self, bytes: usize) -> &mut Self {
        self.default_capacity_bytes = bytes.max(1);
        self
    }

    /// Names the NATS server (JetStream on) that connections forced to [`Transport::Broker`]
    /// cross: `nats://host:port`, with defaults for everything else (no credentials, no TLS,
    /// 256 MiB per connection's JetStream stream). A deployment file's `[broker]` section
    /// says the same with every option (credentials, token, TLS, limits) and replaces it.
    /// Every process of the application builds the same graph, so each names the same server.
    ///
    /// ```no_run
    /// use iotstream::{Connection, Graph, Transport};
    ///
    /// let mut g = Graph::new("fleet");
    /// g.use_broker("nats://127.0.0.1:4222");
    /// let readings = g.source_iter("sensor", 0..1000u64);
    /// let (input, out) = g.add_agent("double", |p| {
    ///     let input = p.input::<u64>("in");
    ///     let out = p.output::<u64>("out");
    ///     (Double { input, out }, (input, out))
    /// });
    /// g.connect_with(&readings, &input, Connection::new().transport(Transport::Broker));
    /// let doubled = g.collect("doubled", &out);
    /// g.run().unwrap();
    /// assert_eq!(doubled.values().len(), 1000);
    ///
    /// struct Double {
    ///     input: iotstream::Input<u64>,
    ///     out: iotstream::Stream<u64>,
    /// }
    /// impl iotstream::Agent for Double {
    ///     fn step(
    ///         &mut self,
    ///         i: &mut iotstream::Inputs,
    ///         o: &mut iotstream::Outputs,
    ///     ) -> Result<(), iotstream::AgentError> {
    ///         o.extend(&self.out, i.slice(&self.input).iter().map(|v| v * 2));
    ///         i.consume_all(&self.input);
    ///         Ok(())
    ///     }
    /// }
    /// ```
    pub fn use_broker(&mut self, url: &str) -> &mut Self {
        self.use_broker_with(BrokerOptions::new(url))
    }

    /// As [`use_broker`](Graph::use_broker), with credentials, TLS and limits: what a
    /// deployment file's `[broker]` section says, in code (a deployment's section still
    /// replaces it). What is wrong with the options (a bad URL, two ways to authenticate, a
    /// limit out of range) is an error of [`start`](Graph::start) naming it.
    ///
    /// ```no_run
    /// use iotstream::{BrokerOptions, Graph};
    /// use std::time::Duration;
    ///
    /// let mut g = Graph::new("fleet");
    /// g.use_broker_with(
    ///     BrokerOptions::new("tls://nats.example.org:4222")
    ///         .token(std::fs::read_to_string("/etc/iotstream/nats.token").unwrap().trim())
    ///         .tls_ca("/etc/iotstream/nats-ca.pem")
    ///         .max_messages(100_000)
    ///         .connect_wait(Duration::from_secs(10)),
    /// );
    /// ```
    pub fn use_broker_with(&mut self, options: BrokerOptions) -> &mut Self {
        self.broker_problems = options.problems();
        self.broker = Some(options.settings);
        self
    }

    /// The broker of a deployment file's `[broker]` section, which replaces the code's (and
    /// what was wrong with the code's options).
    pub(crate) fn replace_broker(&mut self, settings: crate::transport::broker::BrokerSettings) {
        self.broker_problems.clear();
        self.broker = Some(settings);
    }

    /// Whether Ctrl-C (SIGINT), SIGTERM and SIGHUP (a hang-up: the terminal closed, the SSH
    /// session dropped) drain the application while it runs (default: yes).
    ///
    /// With `true`, the first of them drains the run [`start`](Graph::start)ed here (sources
    /// stop, data in flight is processed, sinks flush, [`run`](Graph::run) returns `Ok`) and
    /// forwards the drain to its child processes; a second one, while it drains, ends the
    /// process at once with status 128 + the signal (130 for Ctrl-C, 143 for SIGTERM, 129 for
    /// SIGHUP), killing its child processes and removing their shared-memory rings. Once the
    /// run is over, the signals do what they did before (by default, end the program). SIGHUP
    /// is left alone if it was ignored when the run started (under `nohup`).
    ///
    /// A program that owns its signals (one that embeds iotstream in a larger service, say)
    /// passes `false`: nothing is installed, and it stops the run itself with
    /// [`Running::stop`](crate::Running::stop). This applies to the process the user started;
    /// the processes a multi-process run starts always take their starter's (or the
    /// launcher's) request to drain, and the [`Harness`](crate::Harness) never handles signals.
    /// (Tests that call `run` under `cargo test` therefore take a Ctrl-C as a drain of the runs
    /// in progress, and the test binary goes on with its other tests: use the `Harness` there,
    /// or `false`.)
    ///
    /// ```
    /// # use iotstream::Graph;
    /// let mut g = Graph::new("embedded");
    /// g.handle_signals(false);
    /// let numbers = g.source_iter("numbers", 0..3u64);
    /// let all = g.collect("all", &numbers);
    /// g.run().unwrap();
    /// assert_eq!(all.values(), [0, 1, 2]);
    /// ```
    pub fn handle_signals(&mut self, on: bool) -> &mut Self {
        self.handle_signals = on;
        self
    }

    /// Adds an agent named `name`: `build` declares its ports with [`Ports`] and returns the
    /// agent and whatever handles the caller needs to wire it (usually its inputs and outputs).
    /// See [`Agent`] for an example.
    pub fn add_agent<A: Agent, H>(
        &mut self,
        name: &str,
        build: impl FnOnce(&mut Ports) -> (A, H),
    ) -> H {
        let mut ports = self.ports();
        let (agent, handles) = build(&mut ports);
        self.push_agent(name, ports, Driver::Agent(Box::new(agent)));
        handles
    }

    pub(crate) fn ports(&self) -> Ports {
        Ports {
            graph: self.id,
            agent: self.agents.len() as u32,
            inputs: Vec::new(),
            outputs: Vec::new(),
            manages_watermarks: false,
            originates_watermarks: false,
            misuse: Vec::new(),
        }
    }

    pub(crate) fn push_agent(&mut self, name: &str, ports: Ports, driver: Driver) {
        assert_eq!(
            ports.agent as usize,
            self.agents.len(),
            "ports were declared for another agent"
        );
        if name.is_empty() {
            self.problems.push("an agent has an empty name".into());
        } else if name.contains('\0') {
            // A thread's name cannot hold one: the run would panic naming no agent.
            self.problems.push(format!(
                "agent name '{}' holds a NUL byte",
                name.escape_debug()
            ));
        } else if self.by_name.contains_key(name) {
            self.problems
                .push(format!("agent name '{name}' is used twice"));
        } else {
            self.by_name.insert(name.to_string(), self.agents.len());
        }
        for misuse in &ports.misuse {
            self.problems.push(format!("agent '{name}': {misuse}"));
        }
        for (kind, decls) in [("input", &ports.inputs), ("output", &ports.outputs)] {
            let mut seen = HashSet::new();
            for d in decls {
                if !seen.insert(d.name.as_str()) {
                    self.problems
                        .push(format!("agent '{name}' declares {kind} '{}' twice", d.name));
                }
            }
        }
        self.agents.push(AgentDecl {
            name: name.to_string(),
            inputs: ports.inputs,
            outputs: ports.outputs,
            driver: Some(driver),
            thread: None,
            own_thread: false,
            process: None,
            reads_stdin: false,
            manages_watermarks: ports.manages_watermarks,
            originates_watermarks: ports.originates_watermarks,
        });
    }

    /// Records a problem found while building (an operator's bad parameter, say). It is reported
    /// with every other problem when the application is built. The message should name the
    /// agent and what is wrong.
    pub(crate) fn problem(&mut self, msg: String) {
        self.problems.push(msg);
    }

    /// Wires `stream` to `input` with the default [`Connection`].
    pub fn connect<T: Element>(&mut self, stream: &Stream<T>, input: &Input<T>) {
        self.connect_with(stream, input, Connection::new());
    }

    /// Wires `stream` to `input` with the given capacity and policy.
    pub fn connect_with<T: Element>(
        &mut self,
        stream: &Stream<T>,
        input: &Input<T>,
        conn: Connection,
    ) {
        if stream.id.graph != self.id || input.id.graph != self.id {
            self.problems.push(format!(
                "connect: a {} handle from another graph was used in '{}'",
                if stream.id.graph != self.id {
                    "stream"
                } else {
                    "input"
                },
                self.name
            ));
            return;
        }
        self.edges.push(Edge {
            from: stream.id,
            to: input.id,
            conn,
        });
    }

    /// Runs `agent` on a thread of its own named `thread` (an actix arbiter), instead of the
    /// worker pool; agents given the same thread name share it.
    ///
    /// Agents not placed run on a pool of worker threads (see [`Graph::worker_threads`]), each
    /// agent always on the same worker, so a step should not block: an agent whose step waits
    /// (on a lock, a socket, a slow device) belongs on a thread of its own. The sinks that
    /// write to the outside world ([`Graph::to_file`], [`Graph::to_stdout`]) and sources'
    /// work ([`Source::fill`](crate::Source::fill)) get a thread of their own anyway.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("placed");
    /// let s = g.source_iter("numbers", 0..10u64);
    /// let out = g.collect("out", &s);
    /// g.place_on_thread("out", "collector");
    /// g.run().unwrap();
    /// assert_eq!(out.len(), 10);
    /// ```
    pub fn place_on_thread(&mut self, agent: &str, thread: &str) -> &mut Self {
        match self.by_name.get(agent).map(|&i| &mut self.agents[i]) {
            Some(_) if thread.contains('\0') => self.problems.push(format!(
                "place_on_thread: thread name '{}' holds a NUL byte",
                thread.escape_debug()
            )),
            Some(a) => a.thread = Some(thread.to_string()),
            None => self
                .problems
                .push(format!("place_on_thread: no agent named '{agent}'")),
        }
        self
    }

    /// How many worker threads run the agents not placed on a thread of their own
    /// ([`Graph::place_on_thread`]) in a threaded run, per process: by default one per core
    /// (`std::thread::available_parallelism`). Each agent always runs on the same worker. The
    /// stages of a chain (an agent that is the only reader of the one agent it reads) run on
    /// the worker of the chain's first stage, so light stages pass batches in one core's cache
    /// without waking another thread; every other agent (a source, the readers of a fan-out, a
    /// merge) starts on the next worker in turn, so independent chains and branches spread over
    /// the cores. A stage heavy enough to deserve a core of its own goes on a thread of its own
    /// with [`Graph::place_on_thread`]. A pool keeps the number of threads
    /// (and their memory and file descriptors) fixed however many agents there are. A
    /// deployment file's `workers = N` in a process's section wins over this in that process.
    ///
    /// ```
    /// use iotstream::Graph;
    /// let mut g = Graph::new("small");
    /// g.worker_threads(1);
    /// let s = g.source_iter("numbers", 0..100u64);
    /// let doubled = g.map("double", &s, |v: &u64| v * 2);
    /// let out = g.collect("out", &doubled);
    /// g.run().unwrap();
    /// assert_eq!(out.len(), 100);
    /// ```
    pub fn worker_threads(&mut self, n: usize) -> &mut Self {
        if n == 0 {
            self.problems
                .push("worker_threads: at least one worker thread is needed, not 0".into());
        } else {
            self.workers = Some(n);
        }
        self
    }

    /// Gives the agent added last a thread of its own unless it is placed (a sink that does
    /// I/O).
    pub(crate) fn last_agent_on_own_thread(&mut self) {
        if let Some(a) = self.agents.last_mut() {
            a.own_thread = true;
        }
    }

    /// Declares `T` plain data: batches of `T` then cross processes as their bytes, with no
    /// encoding (as the primitive numbers always do), instead of as postcard records.
    /// `bytemuck::Pod` guarantees what makes that sound: no padding, any bit pattern valid.
    /// Every process builds the graph, so every process makes the same declaration. A
    /// zero-sized type stays encoded (a frame of plain data could then claim any number of
    /// elements in no bytes).
    ///
    /// ```
    /// use iotstream::Graph;
    /// #[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable, serde::Serialize, serde::Deserialize)]
    /// #[repr(C)]
    /// struct Vibration { t_ms: u64, x: f32, y: f32 }
    ///
    /// let mut g = Graph::new("plain");
    /// g.plain_data::<Vibration>();
    /// ```
    pub fn plain_data<T: Element + bytemuck::Pod>(&mut self) -> &mut Self {
        crate::transport::codec::declare_plain::<T>();
        self
    }

    /// Declares how many bytes an element of `T` owns on the heap, for the byte bound of the
    /// connections that carry `T` in process (see "Capacity" in the [module docs](self)).
    ///
    /// A connection's byte bound counts `size_of::<T>()` per element, which for a type that
    /// holds a vector or a string says nothing of its contents (a `Vec<u8>` counts 24 bytes
    /// whatever its length). `String`, `Box<str>`, `Box<[u8]>`, `Vec<String>`, the `Vec`s
    /// of primitive numbers and the messages of an MQTT source `with_topic` are counted
    /// without a declaration; declare your own types that
    /// own heap memory, so that a connection of large elements holds what its byte bound says
    /// and not its element capacity of them. `count` runs once per element sent on such a
    /// connection: keep it to lengths and capacities. Like [`plain_data`](Self::plain_data),
    /// the declaration holds for the whole process, and the last one for a type holds.
    ///
    /// ```
    /// use iotstream::Graph;
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct Image { camera: u16, jpeg: Vec<u8> }
    ///
    /// let mut g = Graph::new("cameras");
    /// g.heap_bytes::<Image>(|i| i.jpeg.capacity());
    /// // At most 512 KiB of images in flight on each connection (two of these), not 32 Ki.
    /// g.set_default_capacity_bytes(512 << 10);
    /// let shots = (0..64).map(|n| Image { camera: n, jpeg: vec![0; 256 << 10] });
    /// let images = g.source_iter("shots", shots);
    /// let sizes = g.map("size", &images, |i: &Image| i.jpeg.len() as u64);
    /// let total = g.collect("total", &sizes);
    /// g.run().unwrap();
    /// assert_eq!(total.take().len(), 64);
    /// ```
    pub fn heap_bytes<T: Element>(
        &mut self,
        count: impl Fn(&T) -> usize + Send + Sync + 'static,
    ) -> &mut Self {
        crate::stream::heap::declare::<T>(Arc::new(count));
        self
    }

    /// Serves the running application's live view on `addr` (`127.0.0.1:PORT`; port 0
    /// picks a free one, see [`Running::metrics_addr`](crate::Running::metrics_addr)), for
    /// programs that run without the `iotstream` launcher: `/metrics` (Prometheus text),
    /// `/api/metrics` and `/api/graph` (JSON) and the live-view page on `/` (see
    /// [`observe`](crate::observe)). The counters are read every second.
    ///
    /// Takes effect when the application starts ([`Graph::run`], [`Graph::start`]), which
    /// fails if the address cannot be served (naming it), and lasts until the run ends. An
    /// address that is not a loopback address needs a token: see
    /// [`serve_metrics_with`](Self::serve_metrics_with). Only the process the user started
    /// serves: in a run with several processes, the processes it starts report their counters
    /// to it every interval over a control channel, and it serves them all; processes started
    /// by the launcher leave serving to the launcher (`iotstream run --metrics`).
    ///
    /// ```
    /// use iotstream::Graph;
    ///
    /// let mut g = Graph::new("served");
    /// let xs = g.source_iter("numbers", 0..1000u64);
    /// g.for_each("print", &xs, |_: &u64| {});
    /// g.serve_metrics("127.0.0.1:0");
    /// let running = g.start().unwrap();
    /// let addr = running.metrics_addr().expect("serving");
    /// assert!(addr.ip().is_loopback());
    /// running.join().unwrap();
    /// ```
    pub fn serve_metrics(&mut self, addr: &str) -> &mut Self {
        self.serve_metrics_with(addr, crate::observe::ServeOptions::default())
    }

    /// [`serve_metrics`](Self::serve_metrics) with a token (required on an address that is
    /// not a loopback address: requests then carry `Authorization: Bearer <token>`) or
    /// another interval.
    pub fn serve_metrics_with(
        &mut self,
        addr: &str,
        options: crate::observe::ServeOptions,
    ) -> &mut Self {
        self.serve_metrics = Some((addr.to_string(), options));
        self
    }

    /// Runs `agent` in the OS process named `process` (on this host). Agents not placed run in
    /// the process named [`MAIN_PROCESS`](crate::MAIN_PROCESS), the one started by the user,
    /// which starts the others. Connections between agents in different processes become
    /// shared-memory rings; agent code does not change, and neither does the output.
    pub fn place_in_process(&mut self, agent: &str, process: &str) -> &mut Self {
        let valid = !process.is_empty()
            && process.len() <= 64
            && process
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid {
            self.problems.push(format!(
                "place_in_process: process name '{process}' (for agent '{agent}') must be 1 to 64 letters, digits, '_' or '-'"
            ));
            return self;
        }
        match self.by_name.get(agent).map(|&i| &mut self.agents[i]) {
            Some(a) => a.process = Some(process.to_string()),
            None => self
                .problems
                .push(format!("place_in_process: no agent named '{agent}'")),
        }
        self
    }

    /// The process agent `i` runs in.
    pub(crate) fn process_of(&self, agent: usize) -> &str {
        self.agents[agent]
            .process
            .as_deref()
            .unwrap_or(crate::info::MAIN_PROCESS)
    }

    /// The host `process` runs on.
    pub(crate) fn host_of(&self, process: &str) -> &str {
        self.process_hosts
            .get(process)
            .map(String::as_str)
            .unwrap_or(self.hosts[0].name.as_str())
    }

    /// Applies a deployment's placement, connection options and worker threads (see
    /// [`crate::deploy`]), as every process started by the launcher does; the plan must have
    /// been made from this graph's [`info`](Graph::info), so that its indices match.
    ///
    /// ```
    /// use iotstream::deploy::Deployment;
    /// use iotstream::Graph;
    ///
    /// let mut g = Graph::new("plant");
    /// let xs = g.source_iter("sensor", 0..10u64);
    /// g.for_each("log", &xs, |_: &u64| {});
    /// let d = Deployment::parse("d.toml", "[processes.logger]\nagents = [\"log\"]\n").unwrap();
    /// let plan = d.plan(&g.info()).unwrap();
    /// g.apply_plan(&plan);
    /// assert_eq!(g.info().edges[0].transport, "shared-memory");
    /// ```
    pub fn apply_plan(&mut self, plan: &crate::deploy::Plan) {
        for (a, p) in self.agents.iter_mut().zip(&plan.agent_process) {
            a.process = (p != crate::info::MAIN_PROCESS).then(|| p.clone());
        }
        for (e, (capacity, policy)) in self.edges.iter_mut().zip(&plan.edges) {
            e.conn.capacity = Some(*capacity);
            e.conn.policy = *policy;
        }
        for (e, bytes) in self.edges.iter_mut().zip(&plan.capacity_bytes) {
            if let Some(bytes) = bytes {
                e.conn.capacity_bytes = Some(*bytes);
            }
        }
        for (e, us) in self.edges.iter_mut().zip(&plan.spin_us) {
            match *us {
                None => {}
                Some(0) => e.conn.spin = None,
                Some(u64::MAX) => e.conn.spin = Some(Duration::MAX),
                Some(us) => e.conn.spin = Some(Duration::from_micros(us)),
            }
        }
        for (e, broker) in self.edges.iter_mut().zip(&plan.broker) {
            if *broker {
                e.conn.transport = Transport::Broker;
            }
        }
        if !plan.hosts.is_empty() {
            self.hosts = plan.hosts.clone();
        }
        self.process_hosts = plan.process_host.clone().into_iter().collect();
        self.process_workers = plan.process_workers.clone();
    }

    /// The worker threads of `process` as set: by a deployment for that process, else by
    /// [`Graph::worker_threads`]; `None`: one per core.
    pub(crate) fn workers_in(&self, process: &str) -> Option<usize> {
        self.process_workers.get(process).copied().or(self.workers)
    }

    /// The process whose agent reads standard input ([`Graph::source_stdin`]), if any: the
    /// process that is given the standard input of whoever starts the application.
    pub(crate) fn stdin_process(&self) -> Option<&str> {
        let i = self.agents.iter().position(|a| a.reads_stdin)?;
        Some(self.process_of(i))
    }

    /// Every process of the application: `main` first, then in order of first placement.
    pub(crate) fn processes(&self) -> Vec<String> {
        let mut out = vec![crate::info::MAIN_PROCESS.to_string()];
        for i in 0..self.agents.len() {
            let p = self.process_of(i);
            if !out.iter().any(|q| q == p) {
                out.push(p.to_string());
            }
        }
        out
    }

    /// For each agent, the most elements a batch of its stream may hold if it is a source: an
    /// eighth of the smallest credit among the connections it feeds ([`BATCHES_IN_FLIGHT`]),
    /// or [`SMALL_BATCH_BYTES`] of its elements if that is more; `None` if it feeds none. With
    /// it, the most bytes such a batch may hold: an eighth of the smallest byte bound, or
    /// [`SMALL_BATCH_BYTES`] (what elements that own heap memory are held to, counted as the
    /// source makes them: see [`Graph::heap_bytes`]).
    fn source_batch_limits(&self) -> Vec<Option<(usize, usize)>> {
        let mut limits = vec![None; self.agents.len()];
        for e in &self.edges {
            let decl = &self.agents[e.from.agent as usize].outputs[e.from.port as usize];
            let small = SMALL_BATCH_BYTES / decl.element_bytes.max(1);
            let bounds = self.bounds(e);
            let share = (bounds.elements / BATCHES_IN_FLIGHT).max(small).max(1);
            let bytes = (bounds.capacity_bytes / BATCHES_IN_FLIGHT).max(SMALL_BATCH_BYTES);
            let limit = &mut limits[e.from.agent as usize];
            *limit = Some(limit.map_or((share, bytes), |(l, b): (usize, usize)| {
                (l.min(share), b.min(bytes))
            }));
        }
        limits
    }

    /// What edge `e`'s element and byte bounds come to (see the module docs, "Capacity").
    pub(crate) fn bounds(&self, e: &Edge) -> Bounds {
        let capacity = e.conn.capacity.unwrap_or(self.default_capacity);
        let capacity_bytes = e.conn.capacity_bytes.unwrap_or(self.default_capacity_bytes);
        let decl = &self.agents[e.from.agent as usize].outputs[e.from.port as usize];
        let need = self.agents[e.to.agent as usize].inputs[e.to.port as usize].min_capacity;
        let by_bytes = (capacity_bytes / decl.element_bytes.max(1)).max(1);
        let elements = match self.resolve(e) {
            Resolved::SharedMemory => {
                crate::transport::ring_elements(capacity, capacity_bytes, (decl.ring_frame)())
            }
            Resolved::Local | Resolved::Tcp | Resolved::Broker => capacity.min(by_bytes),
        };
        Bounds {
            capacity,
            capacity_bytes,
            bytes_set: e.conn.capacity_bytes.is_some(),
            by_bytes,
            elements: elements.max(need).max(1),
        }
    }

    /// The bytes of edge `e`'s ring, if it is a shared-memory connection: twice what its
    /// credit takes as one-element frames (see [`crate::transport::ring_size`]).
    pub(crate) fn ring_bytes(&self, e: &Edge) -> Option<usize> {
        (self.resolve(e) == Resolved::SharedMemory).then(|| {
            let decl = &self.agents[e.from.agent as usize].outputs[e.from.port as usize];
            crate::transport::ring_size(self.bounds(e).elements, (decl.ring_frame)())
        })
    }

    /// The transport of edge `e`, from placement and the connection's forced transport.
    pub(crate) fn resolve(&self, e: &Edge) -> Resolved {
        let (from, to) = (
            self.process_of(e.from.agent as usize),
            self.process_of(e.to.agent as usize),
        );
        if e.conn.transport == Transport::Broker {
            return Resolved::Broker;
        }
        if self.host_of(from) != self.host_of(to) || e.conn.transport == Transport::Tcp {
            // A forced Local or SharedMemory across hosts is reported by `validate`.
            return Resolved::Tcp;
        }
        match (e.conn.transport, from == to) {
            (Transport::Tcp, _) => Resolved::Tcp,
            (Transport::Broker, _) => Resolved::Broker,
            (Transport::SharedMemory, _) | (Transport::Auto, false) => Resolved::SharedMemory,
            // A forced Local across processes is reported by `validate`.
            (Transport::Local, _) | (Transport::Auto, true) => Resolved::Local,
        }
    }

    /// Where the reading end of a link between hosts listens: its host's address, at the
    /// host's port plus the connection's index.
    pub(crate) fn listen_address(&self, edge: usize) -> String {
        let e = &self.edges[edge];
        let host = self.host_of(self.process_of(e.to.agent as usize));
        let h = self
            .hosts
            .iter()
            .find(|h| h.name == host)
            .unwrap_or(&self.hosts[0]);
        let port = usize::from(h.port) + edge;
        match h.address.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{}]:{port}", h.address),
            Err(_) => format!("{}:{port}", h.address),
        }
    }

    /// A digest of everything that must be identical in every process of one run: agents, their
    /// ports and types, placement, edges and their options.
    pub(crate) fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.name.hash(&mut h);
        for (i, a) in self.agents.iter().enumerate() {
            a.name.hash(&mut h);
            self.process_of(i).hash(&mut h);
            self.host_of(self.process_of(i)).hash(&mut h);
            for p in a.inputs.iter().chain(&a.outputs) {
                p.name.hash(&mut h);
                p.type_name.hash(&mut h);
            }
        }
        for e in &self.edges {
            (e.from.agent, e.from.port, e.to.agent, e.to.port).hash(&mut h);
            let b = self.bounds(e);
            (b.capacity, b.capacity_bytes, b.elements).hash(&mut h);
            format!("{:?}{:?}", e.conn.policy, e.conn.transport).hash(&mut h);
        }
        h.finish()
    }

    /// The feedback loop of each agent (`info::loop_components`): two agents are in one
    /// loop exactly when their components are equal.
    fn loop_components(&self) -> Vec<usize> {
        crate::info::loop_components(
            self.agents.len(),
            self.edges
                .iter()
                .map(|e| (e.from.agent as usize, e.to.agent as usize)),
        )
    }

    /// For every agent, which of its inputs are fed from a feedback loop it is part of: the
    /// writer is in the same strongly connected component of the graph as the reader. These
    /// are the inputs closed when a run goes quiet with loops still open
    /// (`Envelope::ForceClose`); the rest end by their writers' end of stream.
    fn loop_inputs(&self) -> Vec<Vec<bool>> {
        let component = self.loop_components();
        let mut loops: Vec<Vec<bool>> = self
            .agents
            .iter()
            .map(|a| vec![false; a.inputs.len()])
            .collect();
        for e in &self.edges {
            if component[e.from.agent as usize] == component[e.to.agent as usize] {
                loops[e.to.agent as usize][e.to.port as usize] = true;
            }
        }
        loops
    }

    /// The JetStream stream that carries a connection through the broker in application
    /// `app`: from output `port` of agent `agent` to input `input` of agent `reader` (for
    /// `nats stream info` and the like; see docs/deployment.md, "Broker").
    ///
    /// ```
    /// let name = iotstream::Graph::broker_stream_name("quake", "detect", "out", "alerts", "in");
    /// assert_eq!(name, "IOTSTREAM_quake_detect_out__alerts_in");
    /// ```
    pub fn broker_stream_name(
        app: &str,
        agent: &str,
        port: &str,
        reader: &str,
        input: &str,
    ) -> String {
        crate::transport::broker::BrokerNames::new(app, agent, port, reader, input).stream
    }

    /// The full name of a stream: `"agent.port"`.
    pub fn stream_name<T>(&self, stream: &Stream<T>) -> String {
        self.port_name(stream.id, true)
    }

    /// The full name of every stream of the graph (`"agent.port"`), by its id.
    pub(crate) fn output_names(&self) -> HashMap<PortId, String> {
        let mut names = HashMap::new();
        for (ai, a) in self.agents.iter().enumerate() {
            for pi in 0..a.outputs.len() {
                let id = PortId {
                    graph: self.id,
                    agent: ai as u32,
                    port: pi as u32,
                };
                names.insert(id, self.port_name(id, true));
            }
        }
        names
    }

    /// The full name of the stream output `id` writes: `"agent.port"`.
    pub(crate) fn output_name(&self, id: PortId) -> String {
        self.port_name(id, true)
    }

    /// The connection `e` as messages name it: `"writer.port -> reader.port"`.
    pub(crate) fn edge_name(&self, e: &Edge) -> String {
        format!(
            "{} -> {}",
            self.port_name(e.from, true),
            self.port_name(e.to, false)
        )
    }

    fn port_name(&self, id: PortId, output: bool) -> String {
        let a = &self.agents[id.agent as usize];
        let ports = if output { &a.outputs } else { &a.inputs };
        format!("{}.{}", a.name, ports[id.port as usize].name)
    }

    /// Checks the graph; all problems at once.
    /// Ports whose full names (`agent.port`) read the same, outputs and inputs apart (agent
    /// `a` port `b.out`, agent `a.b` port `out`): they would be one stream in the live view,
    /// the metrics and deployment files, which name ports that way. A problem for each.
    fn ports_named_alike(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for kind in ["output", "input"] {
            let mut first: HashMap<String, (&str, &str)> = HashMap::new();
            for a in &self.agents {
                let ports = if kind == "input" {
                    &a.inputs
                } else {
                    &a.outputs
                };
                for port in ports {
                    let full = format!("{}.{}", a.name, port.name);
                    match first.get(&full) {
                        // The same agent name twice is a problem of its own.
                        Some(&(agent, _)) if agent == a.name => {}
                        Some(&(agent, other)) => problems.push(format!(
                            "{kind} '{full}' names two {kind}s: '{other}' of agent '{agent}' \
                             and '{}' of agent '{}' (the live view, the metrics and deployment \
                             files name a port agent.port): rename one",
                            port.name, a.name
                        )),
                        None => {
                            first.insert(full, (&a.name, &port.name));
                        }
                    }
                }
            }
        }
        problems
    }

    pub(crate) fn validate(&self) -> Result<(), Error> {
        let mut problems = self.problems.clone();
        problems.extend(self.ports_named_alike());
        problems.extend(self.broker_problems.iter().cloned());
        let mut fed: HashMap<PortId, usize> = HashMap::new();
        let component = self.loop_components();
        for e in &self.edges {
            *fed.entry(e.to).or_default() += 1;
            let bounds = self.bounds(e);
            let cap = bounds.capacity;
            let reader = &self.agents[e.to.agent as usize];
            let need = reader.inputs[e.to.port as usize].min_capacity;
            let what = format!(
                "connection {} -> {}",
                self.port_name(e.from, true),
                self.port_name(e.to, false)
            );
            let crosses =
                self.process_of(e.from.agent as usize) != self.process_of(e.to.agent as usize);
            if crosses && e.conn.transport == Transport::Local {
                problems.push(format!(
                    "{what}: forced Transport::Local, but '{}' runs in process '{}' and '{}' in process '{}'",
                    self.agents[e.from.agent as usize].name,
                    self.process_of(e.from.agent as usize),
                    reader.name,
                    self.process_of(e.to.agent as usize)
                ));
            }
            let (from_host, to_host) = (
                self.host_of(self.process_of(e.from.agent as usize)),
                self.host_of(self.process_of(e.to.agent as usize)),
            );
            if from_host != to_host && e.conn.transport == Transport::SharedMemory {
                problems.push(format!(
                    "{what}: forced Transport::SharedMemory, but '{}' runs on host '{from_host}' and '{}' on host '{to_host}'",
                    self.agents[e.from.agent as usize].name, reader.name
                ));
            }
            if e.conn.transport == Transport::Broker && self.broker.is_none() {
                problems.push(format!(
                    "{what}: forced Transport::Broker, but no broker is named: call Graph::use_broker, or add a [broker] section to the deployment file"
                ));
            }
            if self.resolve(e) != Resolved::Local
                && component[e.to.agent as usize] == component[e.from.agent as usize]
            {
                problems.push(format!(
                    "{what}: is part of a feedback loop and crosses processes (or is forced to shared memory); keep every agent of a loop in one process"
                ));
            }
            if cap == 0 {
                problems.push(format!("{what}: capacity must be at least 1"));
            } else if cap < need {
                problems.push(format!(
                    "{what}: capacity {cap} is smaller than the {need} elements agent '{}' needs to make progress; raise it with Connection::capacity",
                    reader.name
                ));
            }
            if bounds.bytes_set && bounds.capacity_bytes == 0 {
                problems.push(format!("{what}: capacity_bytes must be at least 1"));
            } else if bounds.bytes_set && bounds.by_bytes < need {
                let size =
                    self.agents[e.from.agent as usize].outputs[e.from.port as usize].element_bytes;
                problems.push(format!(
                    "{what}: capacity_bytes {} holds {} elements of {size} bytes, fewer than the {need} elements agent '{}' needs to make progress; raise it with Connection::capacity_bytes",
                    bounds.capacity_bytes, bounds.by_bytes, reader.name
                ));
            }
        }
        let stdin_readers: Vec<String> = self
            .agents
            .iter()
            .filter(|a| a.reads_stdin)
            .map(|a| format!("'{}'", a.name))
            .collect();
        if stdin_readers.len() > 1 {
            problems.push(format!(
                "agents {} all read standard input, which only one agent can read: read it with one source_stdin and connect its stream to each reader",
                stdin_readers.join(", ")
            ));
        }
        for (ai, a) in self.agents.iter().enumerate() {
            for (pi, p) in a.inputs.iter().enumerate() {
                let id = PortId {
                    graph: self.id,
                    agent: ai as u32,
                    port: pi as u32,
                };
                match fed.get(&id) {
                    None => problems.push(format!(
                        "input '{}.{}' (of {}) is not connected to any stream",
                        a.name, p.name, p.type_name
                    )),
                    Some(n) if *n > 1 => problems.push(format!(
                        "input '{}.{}' is connected {n} times; an input reads one stream (use a merge operator to combine streams)",
                        a.name, p.name
                    )),
                    _ => {}
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Graph {
                app: self.name.clone(),
                problems,
            })
        }
    }

    /// Builds the hosts of the agents in `part`; `mailboxes[i]` reaches agent `i` (`None` for an
    /// agent of another process). Connections between two local agents become in-process links;
    /// shared-memory connections are wired through `part.shm`.
    /// Which agents' outputs carry watermarks: those of watermark generators
    /// ([`Ports::originates_watermarks`]), and of every agent with an input connected to such
    /// an output. Every process computes the same from the same graph.
    pub(crate) fn timed_agents(&self) -> Vec<bool> {
        let mut timed: Vec<bool> = self
            .agents
            .iter()
            .map(|a| a.originates_watermarks)
            .collect();
        // Ends: each pass marks at least one more agent, or stops.
        loop {
            let mut changed = false;
            for e in &self.edges {
                let (w, r) = (e.from.agent as usize, e.to.agent as usize);
                if timed[w] && !timed[r] {
                    timed[r] = true;
                    changed = true;
                }
            }
            if !changed {
                return timed;
            }
        }
    }

    pub(crate) fn instantiate(
        &mut self,
        mailboxes: &[Option<Arc<dyn Mailbox>>],
        part: &Part<'_>,
    ) -> Result<(Vec<(usize, Host)>, Registry), Error> {
        self.validate()?;
        let local: Vec<bool> = (0..self.agents.len())
            .map(|i| part.process.is_none_or(|p| self.process_of(i) == p))
            .collect();
        let timed = self.timed_agents();
        let batch_limits = self.source_batch_limits();
        let mut loop_inputs = self.loop_inputs();
        let mut registry = Registry::default();
        let mut hosts: Vec<Option<Host>> = Vec::with_capacity(self.agents.len());
        for (i, a) in self.agents.iter_mut().enumerate() {
            if !local[i] {
                hosts.push(None);
                continue;
            }
            let mut outputs: Vec<_> = a.outputs.iter().map(|p| (p.make_out)()).collect();
            for (o, p) in outputs.iter_mut().zip(&a.outputs) {
                let c = Arc::default();
                o.set_counters(Arc::clone(&c));
                registry
                    .streams
                    .push((format!("{}.{}", a.name, p.name), a.name.clone(), c));
            }
            let inputs = a.inputs.iter().map(|p| (p.make_in)()).collect();
            let counters = Arc::default();
            registry
                .agents
                .push((a.name.clone(), Arc::clone(&counters)));
            let mut driver = a.driver.take().ok_or_else(|| Error::Runtime {
                detail: format!("graph '{}' was already instantiated", self.name),
            })?;
            if let (Driver::Source(source), Some(limit)) = (&mut driver, batch_limits[i]) {
                source.limit_batch(limit.0, limit.1);
            }
            let mut host = Host::new(
                a.name.as_str().into(),
                (self.id, i as u32),
                driver,
                inputs,
                outputs,
                counters,
            );
            host.forward_marks = !a.manages_watermarks;
            host.loop_inputs = Some(std::mem::take(&mut loop_inputs[i]));
            hosts.push(Some(host));
        }
        for (edge, e) in self.edges.iter().enumerate() {
            let writer = e.from.agent as usize;
            let reader = e.to.agent as usize;
            if !local[writer] && !local[reader] {
                continue;
            }
            let bounds = self.bounds(e);
            let capacity = bounds.elements;
            let counters: Arc<crate::metrics::LinkCounters> = Arc::default();
            let stream = self.port_name(e.from, true);
            let input = &self.agents[reader].inputs[e.to.port as usize].name;
            let label = format!("{stream} -> {}.{input}", self.agents[reader].name);
            registry.links.push(LinkEntry {
                edge,
                ends: match (local[writer], local[reader]) {
                    (true, true) => LinkEnds::Both,
                    (true, false) => LinkEnds::Writer,
                    _ => LinkEnds::Reader,
                },
                stream,
                reader: self.agents[reader].name.clone(),
                input: input.clone(),
                policy: e.conn.policy,
                capacity,
                counters: Arc::clone(&counters),
            });
            let resolved = self.resolve(e);
            // A TCP link within this process (forced, for tests and benchmarks) listens on a
            // free loopback port rather than on its host's port plan.
            let loopback = if resolved == Resolved::Tcp && local[writer] && local[reader] {
                Some(free_loopback_port().map_err(|e| Error::Runtime {
                    detail: format!("connection {label}: no free port on 127.0.0.1: {e}"),
                })?)
            } else {
                None
            };
            // The writer's end.
            let link = if local[writer] {
                let out = &mut hosts[writer].as_mut().expect("local").outputs[e.from.port as usize];
                let link = out.link_count() as u32;
                let spec = LinkSpec {
                    mailbox: None,
                    input: e.to.port,
                    capacity,
                    capacity_bytes: bounds.capacity_bytes,
                    need: self.agents[reader].inputs[e.to.port as usize].min_capacity,
                    policy: e.conn.policy,
                    counters: Arc::clone(&counters),
                    label: label.clone(),
                    reader,
                };
                match resolved {
                    Resolved::Local => out.add_link(LinkSpec {
                        mailbox: Some(Arc::clone(
                            mailboxes[reader].as_ref().expect("local reader"),
                        )),
                        ..spec
                    }),
                    Resolved::SharedMemory | Resolved::Tcp | Resolved::Broker => {
                        let wiring = part.wiring.ok_or_else(|| no_wiring(&self.name, &label))?;
                        let wake = Arc::clone(mailboxes[writer].as_ref().expect("local writer"));
                        let remote = self.remote(edge, resolved, reader, loopback.as_ref());
                        let decl = &self.agents[writer].outputs[e.from.port as usize];
                        let at = (e.from.port, link);
                        wiring.writer(edge, decl, out.as_mut(), spec, wake, at, &remote)?;
                    }
                }
                link
            } else {
                0
            };
            // The reader's end: where its credit goes.
            if local[reader] {
                hosts[reader].as_mut().expect("local").inputs[e.to.port as usize]
                    .set_timed(timed[writer]);
                let target = Arc::clone(mailboxes[reader].as_ref().expect("local reader"));
                // An in-process link's reader stores its consumption in the link's counters.
                let local_counters = (resolved == Resolved::Local).then(|| {
                    counters
                        .local
                        .store(true, std::sync::atomic::Ordering::Relaxed);
                    Arc::clone(&counters)
                });
                let credit_to = match resolved {
                    Resolved::Local => {
                        Arc::clone(mailboxes[writer].as_ref().expect("local writer"))
                    }
                    Resolved::SharedMemory | Resolved::Tcp | Resolved::Broker => {
                        let wiring = part.wiring.ok_or_else(|| no_wiring(&self.name, &label))?;
                        let decl = &self.agents[reader].inputs[e.to.port as usize];
                        // A writer in this process counts the traffic itself.
                        let count_traffic = !local[writer];
                        wiring.reader(
                            edge,
                            decl,
                            target,
                            e.to.port,
                            ReaderBounds {
                                elements: capacity,
                                bytes: bounds.capacity_bytes,
                                need: self.agents[reader].inputs[e.to.port as usize].min_capacity,
                            },
                            counters,
                            count_traffic,
                            label,
                            &self.remote(edge, resolved, writer, loopback.as_ref()),
                        )?
                    }
                };
                let writer_output = if resolved == Resolved::Local {
                    e.from.port
                } else {
                    0
                };
                hosts[reader].as_mut().expect("local").inputs[e.to.port as usize].set_credit_route(
                    CreditRoute {
                        mailbox: credit_to,
                        output: writer_output,
                        link: if resolved == Resolved::Local { link } else { 0 },
                        capacity,
                        policy: e.conn.policy,
                        // A ring's feeder, a TCP link and a broker link release or
                        // acknowledge only what the reader consumed.
                        durable: resolved != Resolved::Local,
                        local: local_counters,
                    },
                );
            }
        }
        let hosts = hosts
            .into_iter()
            .enumerate()
            .filter_map(|(i, h)| h.map(|h| (i, h)))
            .collect();
        Ok((hosts, registry))
    }
}

/// Which agents an executor instantiates, and how it makes the ends of connections that leave
/// the process.
pub(crate) struct Part<'a> {
    /// Only the agents of this process (`None`: every agent).
    pub process: Option<&'a str>,
    /// Makes the ends of rings and TCP links (`None`: this executor has none).
    pub wiring: Option<&'a dyn Wiring>,
}

impl Part<'_> {
    /// Every agent, in-process links only.
    pub fn whole() -> Part<'static> {
        Part {
            process: None,
            wiring: None,
        }
    }
}

/// The other end of a connection that leaves this process.
pub(crate) enum Remote<'a> {
    /// Another process of this host: a shared-memory ring.
    Ring {
        /// The other end's process (for messages).
        process: &'a str,
        /// How long the reader spins before it sleeps ([`Connection::spin`]).
        spin: Option<Duration>,
    },
    /// Another host: a TCP link.
    Tcp {
        /// The other end's host (for messages).
        host: &'a str,
        /// Where the reading end listens, `address:port` (the writer connects there).
        at: String,
    },
    /// A broker: the connection's NATS names.
    Broker {
        names: crate::transport::broker::BrokerNames,
    },
}

impl Graph {
    /// The other end of connection `edge`, whose end in this process talks to agent `peer`.
    /// `loopback`: a free port of 127.0.0.1 for a TCP link whose two ends are in this process.
    fn remote(
        &self,
        edge: usize,
        resolved: Resolved,
        peer: usize,
        loopback: Option<&String>,
    ) -> Remote<'_> {
        let process = self.process_of(peer);
        let e = &self.edges[edge];
        match resolved {
            Resolved::Broker => Remote::Broker {
                names: crate::transport::broker::BrokerNames::new(
                    &self.name,
                    &self.agents[e.from.agent as usize].name,
                    &self.agents[e.from.agent as usize].outputs[e.from.port as usize].name,
                    &self.agents[e.to.agent as usize].name,
                    &self.agents[e.to.agent as usize].inputs[e.to.port as usize].name,
                ),
            },
            Resolved::Tcp => Remote::Tcp {
                host: self.host_of(process),
                at: loopback
                    .cloned()
                    .unwrap_or_else(|| self.listen_address(edge)),
            },
            _ => Remote::Ring {
                process,
                spin: self.edges[edge].conn.spin,
            },
        }
    }
}

/// `127.0.0.1:PORT` with a port free now (the link's reader binds it right after).
fn free_loopback_port() -> std::io::Result<String> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?.to_string())
}

/// Makes the two ends of a connection between processes (implemented by the runtime).
pub(crate) trait Wiring {
    /// Adds to `out` (the output declared as `decl`) a link that writes connection `edge` to
    /// `remote`; `wake` reaches the writer's host (for "room again"), which knows this link as
    /// `at = (output, link)`.
    #[allow(clippy::too_many_arguments)]
    fn writer(
        &self,
        edge: usize,
        decl: &crate::agent::PortDecl,
        out: &mut dyn crate::port::OutSlot,
        spec: LinkSpec,
        wake: Arc<dyn Mailbox>,
        at: (u32, u32),
        remote: &Remote<'_>,
    ) -> Result<(), Error>;

    /// Starts the receiver of connection `edge` from `remote`, which delivers to input `input`
    /// of the host behind `target`; returns where that input sends its credit.
    #[allow(clippy::too_many_arguments)]
    fn reader(
        &self,
        edge: usize,
        decl: &crate::agent::PortDecl,
        target: Arc<dyn Mailbox>,
        input: u32,
        bounds: ReaderBounds,
        counters: Arc<crate::metrics::LinkCounters>,
        count_traffic: bool,
        label: String,
        remote: &Remote<'_>,
    ) -> Result<Arc<dyn Mailbox>, Error>;
}

/// What the reading end of a connection between processes is held to.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ReaderBounds {
    /// The link's credit: the most elements delivered and not consumed.
    pub elements: usize,
    /// The connection's byte bound.
    pub bytes: usize,
    /// Elements the reading agent needs to make progress.
    pub need: usize,
}

fn no_wiring(app: &str, label: &str) -> Error {
    Error::Runtime {
        detail: format!(
            "application '{app}': connection {label} leaves the process (a shared-memory ring, a TCP link or a broker link), which the deterministic harness does not provide; run it with Graph::run"
        ),
    }
}

impl Graph {
    /// Describes the graph as built and placed so far. See [`crate::info`].
    pub fn info(&self) -> crate::info::GraphInfo {
        let agents = self
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| crate::info::AgentInfo {
                name: a.name.clone(),
                process: self.process_of(i).to_string(),
                thread: a.thread.clone(),
                inputs: a
                    .inputs
                    .iter()
                    .map(|p| crate::info::PortInfo {
                        name: p.name.clone(),
                        element: p.type_name.to_string(),
                        min_capacity: p.min_capacity,
                    })
                    .collect(),
                outputs: a
                    .outputs
                    .iter()
                    .map(|p| crate::info::PortInfo {
                        name: p.name.clone(),
                        element: p.type_name.to_string(),
                        min_capacity: 1,
                    })
                    .collect(),
                reads_stdin: a.reads_stdin,
            })
            .collect();
        let processes = self.processes();
        let edges = self
            .edges
            .iter()
            .map(|e| {
                let (fa, fp) = (e.from.agent as usize, e.from.port as usize);
                let (ta, tp) = (e.to.agent as usize, e.to.port as usize);
                let bounds = self.bounds(e);
                let transport = match self.resolve(e) {
                    Resolved::Tcp => "tcp",
                    Resolved::Local => "local",
                    Resolved::SharedMemory => "shared-memory",
                    Resolved::Broker => "broker",
                };
                crate::info::EdgeInfo {
                    from_agent: fa,
                    from_port: fp,
                    to_agent: ta,
                    to_port: tp,
                    stream: format!(
                        "{}.{}",
                        self.agents[fa].name, self.agents[fa].outputs[fp].name
                    ),
                    input: format!(
                        "{}.{}",
                        self.agents[ta].name, self.agents[ta].inputs[tp].name
                    ),
                    capacity: bounds.capacity,
                    capacity_bytes: bounds.capacity_bytes,
                    element_bytes: self.agents[fa].outputs[fp].element_bytes,
                    credit: bounds.elements,
                    policy: e.conn.policy,
                    forced: e.conn.transport,
                    transport: transport.to_string(),
                    ring_bytes: self.ring_bytes(e),
                }
            })
            .collect();
        let hosts = self
            .hosts
            .iter()
            .map(|h| crate::info::HostInfo {
                name: h.name.clone(),
                address: h.address.clone(),
                port: h.port,
                observe_port: h.observe_port,
                processes: processes
                    .iter()
                    .filter(|p| self.host_of(p) == h.name.as_str())
                    .cloned()
                    .collect(),
            })
            .collect();
        crate::info::GraphInfo {
            app: self.name.clone(),
            default_capacity: self.default_capacity(),
            agents,
            edges,
            processes,
            hosts,
        }
    }
}

/// A NATS server with JetStream for the connections that cross a broker
/// ([`Transport::Broker`]), with its credentials, TLS and stream limits: in code what a
/// deployment file's `[broker]` section says (docs/deployment.md, "Broker"). Given to
/// [`Graph::use_broker_with`]. Its `Debug` shows the URL, never a secret.
///
/// ```
/// use iotstream::BrokerOptions;
/// let options = BrokerOptions::new("nats://10.0.0.5:4222")
///     .user("fleet", "a password read from somewhere safe")
///     .max_messages(50_000);
/// assert!(!format!("{options:?}").contains("password read"));
/// ```
#[derive(Clone)]
pub struct BrokerOptions {
    settings: crate::transport::broker::BrokerSettings,
    /// Ways to authenticate given (at most one may be).
    auth: Vec<&'static str>,
    /// What a setter found out of range.
    problems: Vec<String>,
}

impl std::fmt::Debug for BrokerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerOptions")
            .field("url", &self.settings.url)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

impl BrokerOptions {
    /// The server (`nats://HOST:PORT`, `tls://HOST:PORT` for TLS, or several separated by
    /// commas: a cluster's seeds), with the defaults of `[broker]`: no credentials, no TLS,
    /// 256 MiB per connection's stream, 64 publishes awaiting the server's acknowledgement,
    /// 60 s to reach the server at start.
    pub fn new(url: &str) -> Self {
        BrokerOptions {
            settings: crate::transport::broker::BrokerSettings::new(url),
            auth: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Authenticates with this token (`token_file`).
    pub fn token(mut self, token: &str) -> Self {
        self.auth.push("token");
        self.settings.token = Some(token.to_string());
        self
    }

    /// Authenticates as this user with this password (`user`, `password_file`).
    pub fn user(mut self, user: &str, password: &str) -> Self {
        self.auth.push("user");
        self.settings.user = Some((user.to_string(), password.to_string()));
        self
    }

    /// Authenticates with this NATS credentials file: JWT and nkey seed (`creds`).
    pub fn creds_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.auth.push("creds_file");
        self.settings.creds = Some(path.into());
        self
    }

    /// TLS towards the server, checked against this CA (PEM; `tls_ca`). The system's roots are
    /// not used.
    pub fn tls_ca(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.settings.tls.get_or_insert_with(Default::default).ca = Some(path.into());
        self
    }

    /// This client's certificate and key (PEM), for a server that asks for one (`tls_cert`,
    /// `tls_key`).
    pub fn client_cert(
        mut self,
        cert: impl Into<std::path::PathBuf>,
        key: impl Into<std::path::PathBuf>,
    ) -> Self {
        let tls = self.settings.tls.get_or_insert_with(Default::default);
        tls.cert = Some(cert.into());
        tls.key = Some(key.into());
        self
    }

    /// Each connection's JetStream stream holds at most this many bytes (`max_bytes`; at least
    /// 1 MiB). A publish refused there follows the connection's [`Policy`].
    pub fn max_bytes(mut self, bytes: u64) -> Self {
        if bytes < 1 << 20 {
            self.problems
                .push(format!("max_bytes must be at least 1048576, found {bytes}"));
        }
        self.settings.max_bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self
    }

    /// Each connection's JetStream stream holds at most this many messages (`max_messages`;
    /// a message is one of the writer's batches). A publish refused there follows the
    /// connection's [`Policy`].
    pub fn max_messages(mut self, messages: u64) -> Self {
        if messages == 0 {
            self.problems
                .push("max_messages must be at least 1, found 0".to_string());
        }
        self.settings.max_messages = Some(i64::try_from(messages).unwrap_or(i64::MAX));
        self
    }

    /// The server discards messages older than this (`max_age_s`; zero: none).
    pub fn max_age(mut self, age: std::time::Duration) -> Self {
        self.settings.max_age = (!age.is_zero()).then_some(age);
        self
    }

    /// Messages per connection published and not yet acknowledged by the server: the
    /// writer's back-pressure (`max_pending`; 1 to 65536).
    pub fn max_pending(mut self, messages: usize) -> Self {
        if !(1..=65_536).contains(&messages) {
            self.problems
                .push(format!("max_pending must be 1 to 65536, found {messages}"));
        }
        self.settings.max_pending = messages.clamp(1, 65_536);
        self
    }

    /// How long a link waits for the server at start before the application fails naming it
    /// (`connect_wait_ms`).
    pub fn connect_wait(mut self, wait: std::time::Duration) -> Self {
        self.settings.connect_wait = wait;
        self
    }

    /// What is wrong, each naming the option (empty if nothing).
    fn problems(&self) -> Vec<String> {
        let mut problems: Vec<String> = Vec::new();
        if let Some(p) = crate::transport::broker::url_problem(&self.settings.url) {
            problems.push(format!("url {p}"));
        }
        if self.auth.len() > 1 {
            problems.push(format!(
                "one way to authenticate: token, user or creds_file; found {}",
                self.auth.join(" and ")
            ));
        }
        problems.extend(self.problems.iter().cloned());
        problems
            .into_iter()
            .map(|p| format!("BrokerOptions: {p}"))
            .collect()
    }
}
