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
//! reader) and what happens when the reader falls that far behind ([`Policy`]).
//!
//! # Mistakes
//!
//! Building never panics on a wiring mistake: problems (a duplicate name, an input connected
//! twice or never, a capacity too small for a window) are collected and returned together by
//! [`Graph::run`], [`Graph::start`] or [`Harness::new`](crate::Harness::new) as
//! [`Error::Graph`](crate::Error::Graph).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use crate::agent::{Agent, PortDecl, Ports};
use crate::error::Error;
use crate::host::{CreditRoute, Driver, Host, LinkSpec, Mailbox};
use crate::metrics::{LinkEntry, Registry};
use crate::ops::source::ExternalAny;
use crate::stream::{Element, Input, PortId, Stream};

/// Elements that may be in flight on a connection unless it says otherwise.
pub const DEFAULT_CAPACITY: usize = 16 * 1024;

/// What a writer does when a reader has `capacity` elements in flight and more arrive.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, serde::Serialize, serde::Deserialize)]
pub enum Policy {
    /// The writer waits (lossless; the default).
    #[default]
    Block,
    /// The oldest waiting elements are dropped, keeping at most `capacity` waiting at the
    /// writer (for sensors where the freshest reading matters most). Drops are counted.
    DropOldest,
    /// Elements that find no room are dropped. Drops are counted.
    DropNewest,
}

/// Options of one connection: capacity and back-pressure policy.
///
/// ```
/// use iotstream::{Connection, Policy};
/// let c = Connection::new().capacity(256).policy(Policy::DropOldest);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Connection {
    pub(crate) capacity: Option<usize>,
    pub(crate) policy: Policy,
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
    /// What happens when the capacity is reached.
    pub fn policy(mut self, policy: Policy) -> Self {
        self.policy = policy;
        self
    }
}

pub(crate) struct AgentDecl {
    pub name: String,
    pub inputs: Vec<PortDecl>,
    pub outputs: Vec<PortDecl>,
    pub driver: Option<Driver>,
    pub thread: Option<String>,
}

struct Edge {
    from: PortId,
    to: PortId,
    conn: Connection,
}

static NEXT_GRAPH: AtomicU32 = AtomicU32::new(1);

/// An application under construction. See the [module docs](self).
pub struct Graph {
    pub(crate) name: String,
    pub(crate) id: u32,
    pub(crate) agents: Vec<AgentDecl>,
    edges: Vec<Edge>,
    problems: Vec<String>,
    default_capacity: usize,
    /// Senders of external inputs ([`Graph::input`]), by the stream they feed.
    pub(crate) externals: HashMap<PortId, Box<dyn ExternalAny>>,
}

impl Graph {
    /// An empty application named `name` (used in logs, errors and shared-memory names).
    pub fn new(name: &str) -> Self {
        Graph {
            name: name.to_string(),
            id: NEXT_GRAPH.fetch_add(1, Ordering::Relaxed),
            agents: Vec::new(),
            edges: Vec::new(),
            problems: Vec::new(),
            default_capacity: DEFAULT_CAPACITY,
            externals: HashMap::new(),
        }
    }

    /// The application's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the capacity of connections that do not set their own.
    pub fn set_default_capacity(&mut self, elements: usize) -> &mut Self {
        self.default_capacity = elements;
        self
    }

    /// Adds an agent named `name`: `build` declares its ports with [`Ports`] and returns the
    /// agent and whatever handles the caller needs to wire it (usually its inputs and outputs).
    /// See [`Agent`] for an example.
    pub fn add_agent<A: Agent, H>(&mut self, name: &str, build: impl FnOnce(&mut Ports) -> (A, H)) -> H {
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
        } else if self.agents.iter().any(|a| a.name == name) {
            self.problems.push(format!("agent name '{name}' is used twice"));
        }
        for (kind, decls) in [("input", &ports.inputs), ("output", &ports.outputs)] {
            let mut seen = HashSet::new();
            for d in decls {
                if !seen.insert(d.name.as_str()) {
                    self.problems.push(format!("agent '{name}' declares {kind} '{}' twice", d.name));
                }
            }
        }
        self.agents.push(AgentDecl {
            name: name.to_string(),
            inputs: ports.inputs,
            outputs: ports.outputs,
            driver: Some(driver),
            thread: None,
        });
    }

    /// Records a problem found while building; it is reported with the others when the graph
    /// is checked.
    pub(crate) fn problem(&mut self, msg: String) {
        self.problems.push(msg)
    }

    /// Wires `stream` to `input` with the default [`Connection`].
    pub fn connect<T: Element>(&mut self, stream: &Stream<T>, input: &Input<T>) {
        self.connect_with(stream, input, Connection::new());
    }

    /// Wires `stream` to `input` with the given capacity and policy.
    pub fn connect_with<T: Element>(&mut self, stream: &Stream<T>, input: &Input<T>, conn: Connection) {
        if stream.id.graph != self.id || input.id.graph != self.id {
            self.problems.push(format!(
                "connect: a {} handle from another graph was used in '{}'",
                if stream.id.graph != self.id { "stream" } else { "input" },
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

    /// Runs `agent` on the thread (actix arbiter) named `thread`; agents given the same thread
    /// name share it. Agents not placed get a thread each.
    pub fn place_on_thread(&mut self, agent: &str, thread: &str) -> &mut Self {
        match self.agents.iter_mut().find(|a| a.name == agent) {
            Some(a) => a.thread = Some(thread.to_string()),
            None => self.problems.push(format!("place_on_thread: no agent named '{agent}'")),
        }
        self
    }

    /// The full name of a stream: `"agent.port"`.
    pub fn stream_name<T>(&self, stream: &Stream<T>) -> String {
        self.port_name(stream.id, true)
    }

    fn port_name(&self, id: PortId, output: bool) -> String {
        let a = &self.agents[id.agent as usize];
        let ports = if output { &a.outputs } else { &a.inputs };
        format!("{}.{}", a.name, ports[id.port as usize].name)
    }

    /// Checks the graph; all problems at once.
    pub(crate) fn validate(&self) -> Result<(), Error> {
        let mut problems = self.problems.clone();
        let mut fed: HashMap<PortId, usize> = HashMap::new();
        for e in &self.edges {
            *fed.entry(e.to).or_default() += 1;
            let cap = e.conn.capacity.unwrap_or(self.default_capacity);
            let reader = &self.agents[e.to.agent as usize];
            let need = reader.inputs[e.to.port as usize].min_capacity;
            let what = format!(
                "connection {} -> {}",
                self.port_name(e.from, true),
                self.port_name(e.to, false)
            );
            if cap == 0 {
                problems.push(format!("{what}: capacity must be at least 1"));
            } else if cap < need {
                problems.push(format!(
                    "{what}: capacity {cap} is smaller than the {need} elements agent '{}' needs to make progress; raise it with Connection::capacity",
                    reader.name
                ));
            }
        }
        for (ai, a) in self.agents.iter().enumerate() {
            for (pi, p) in a.inputs.iter().enumerate() {
                let id = PortId { graph: self.id, agent: ai as u32, port: pi as u32 };
                match fed.get(&id) {
                    None => problems.push(format!("input '{}.{}' is not connected to any stream", a.name, p.name)),
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
            Err(Error::Graph { app: self.name.clone(), problems })
        }
    }

    /// Builds one host per agent; `mailboxes[i]` reaches agent `i`.
    pub(crate) fn instantiate(&mut self, mailboxes: &[Arc<dyn Mailbox>]) -> Result<(Vec<Host>, Registry), Error> {
        self.validate()?;
        let mut registry = Registry::default();
        let mut hosts = Vec::with_capacity(self.agents.len());
        for (i, a) in self.agents.iter_mut().enumerate() {
            let mut outputs: Vec<_> = a.outputs.iter().map(|p| (p.make_out)()).collect();
            for (o, p) in outputs.iter_mut().zip(&a.outputs) {
                let c = Arc::default();
                o.set_counters(Arc::clone(&c));
                registry.streams.push((format!("{}.{}", a.name, p.name), a.name.clone(), c));
            }
            let inputs = a.inputs.iter().map(|p| (p.make_in)()).collect();
            let counters = Arc::default();
            registry.agents.push((a.name.clone(), Arc::clone(&counters)));
            let driver = a.driver.take().ok_or_else(|| Error::Runtime {
                detail: format!("graph '{}' was already instantiated", self.name),
            })?;
            hosts.push(Host::new(a.name.as_str().into(), (self.id, i as u32), driver, inputs, outputs, counters));
        }
        for e in &self.edges {
            let writer = e.from.agent as usize;
            let reader = e.to.agent as usize;
            let capacity = e.conn.capacity.unwrap_or(self.default_capacity);
            let counters = Arc::default();
            let stream = self.port_name(e.from, true);
            let input = &self.agents[reader].inputs[e.to.port as usize].name;
            let label = format!("{stream} -> {}.{input}", self.agents[reader].name);
            registry.links.push(LinkEntry {
                stream,
                reader: self.agents[reader].name.clone(),
                input: input.clone(),
                policy: e.conn.policy,
                capacity,
                counters: Arc::clone(&counters),
            });
            let out = &mut hosts[writer].outputs[e.from.port as usize];
            let link = out_links(out.as_mut());
            out.add_link(LinkSpec {
                mailbox: Arc::clone(&mailboxes[reader]),
                input: e.to.port,
                capacity,
                policy: e.conn.policy,
                counters,
                label,
            });
            hosts[reader].inputs[e.to.port as usize].set_credit_route(CreditRoute {
                mailbox: Arc::clone(&mailboxes[writer]),
                output: e.from.port,
                link,
            });
        }
        Ok((hosts, registry))
    }
}

/// How many links an output has so far (the index the next one gets).
fn out_links(out: &mut dyn crate::host::OutSlot) -> u32 {
    out.link_count() as u32
}
