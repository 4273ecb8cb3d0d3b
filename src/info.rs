//! A plain description of an application's graph, as resolved for one deployment.
//!
//! [`GraphInfo`] is what the `iotstream` launcher learns from an application binary (the binary
//! reports it when started with `IOTSTREAM_DESCRIBE` set; see [`crate::launcher`]), what
//! `iotstream graph` prints (as text, JSON or Graphviz dot), and what a deployment file is
//! checked against ([`crate::deploy`]). It holds names, types and numbers only: no code.
//!
//! ```
//! use iotstream::Graph;
//!
//! let mut g = Graph::new("tiny");
//! let xs = g.source_iter("numbers", 0..10u64);
//! let doubled = g.map("double", &xs, |x: &u64| x * 2);
//! g.for_each("print", &doubled, |_: &u64| {});
//! g.place_in_process("print", "printer");
//!
//! let info = g.info();
//! assert_eq!(info.processes, ["main", "printer"]);
//! assert_eq!(info.edges[1].stream, "double.out");
//! assert_eq!(info.edges[1].transport, "shared-memory");
//! ```

use serde::{Deserialize, Serialize};

use crate::stream::{Policy, Transport};

/// The process that hosts the agents not placed elsewhere, and starts the others.
pub const MAIN_PROCESS: &str = "main";

/// The host every process runs on when no deployment file names hosts.
pub const LOCAL_HOST: &str = "local";

/// An application's agents, streams, connections, processes and hosts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GraphInfo {
    /// The application's name ([`Graph::new`](crate::Graph::new)).
    pub app: String,
    /// The capacity of connections that do not set their own.
    pub default_capacity: usize,
    /// Every agent, in the order they were added (edges refer to them by index).
    pub agents: Vec<AgentInfo>,
    /// Every connection, in the order `connect` was called.
    pub edges: Vec<EdgeInfo>,
    /// Every process: `main` first, then in order of first placement.
    pub processes: Vec<String>,
    /// Every host, and the processes placed on it.
    pub hosts: Vec<HostInfo>,
}

/// One agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its unique name.
    pub name: String,
    /// The process it runs in.
    pub process: String,
    /// The thread it was placed on with [`Graph::place_on_thread`](crate::Graph::place_on_thread), if any.
    pub thread: Option<String>,
    /// Its input ports.
    pub inputs: Vec<PortInfo>,
    /// Its output ports (the streams it owns).
    pub outputs: Vec<PortInfo>,
    /// It reads standard input ([`Graph::source_stdin`](crate::Graph::source_stdin)): its process is the one given the
    /// standard input of whoever starts the application.
    #[serde(default)]
    pub reads_stdin: bool,
}

/// One port of an agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// The port's name (a stream is named `agent.port` after its output port).
    pub name: String,
    /// The element type, as Rust names it.
    pub element: String,
    /// For an input: the fewest elements the agent needs buffered to make progress (a window's
    /// size); a connection's capacity may not be smaller. 1 for outputs.
    pub min_capacity: usize,
}

/// One connection from a stream to an input.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    /// The writer's index in [`GraphInfo::agents`].
    pub from_agent: usize,
    /// The writer's output port index.
    pub from_port: usize,
    /// The reader's index in [`GraphInfo::agents`].
    pub to_agent: usize,
    /// The reader's input port index.
    pub to_port: usize,
    /// The stream, `agent.port`.
    pub stream: String,
    /// The input, `agent.port`.
    pub input: String,
    /// The element bound asked for: the connection's capacity, or the graph's default.
    pub capacity: usize,
    /// The byte bound asked for: the connection's `capacity_bytes`, or the graph's default
    /// (see [`Connection::capacity_bytes`](crate::Connection::capacity_bytes)).
    #[serde(default)]
    pub capacity_bytes: usize,
    /// `size_of` of the element type: what the byte bound counts per element in process.
    #[serde(default)]
    pub element_bytes: usize,
    /// Elements that may be in flight between writer and reader: what both bounds allow on
    /// the chosen transport (see [`graph`](crate::graph), "Capacity"), as
    /// [`LinkStats::capacity`](crate::LinkStats::capacity) reports it.
    #[serde(default)]
    pub credit: usize,
    /// What happens when the capacity is reached.
    pub policy: Policy,
    /// The transport the connection forces, or `auto`.
    pub forced: Transport,
    /// The transport `connect` chose: `local` (in-process messages), `shared-memory` (a ring
    /// between processes of one host) or `tcp` (between hosts).
    pub transport: String,
    /// For a shared-memory connection: the ring's size in bytes.
    pub ring_bytes: Option<usize>,
}

/// One host and its processes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostInfo {
    /// The host's name in the deployment.
    pub name: String,
    /// Its network address (an IP address or a DNS name).
    pub address: String,
    /// Its base port: the link of connection `i` into this host listens on `port + i`.
    pub port: u16,
    /// The port its launcher's observation channel listens on, as the deployment file sets it
    /// (`observe_port` in `[hosts.NAME]`); `None`: the default, `port - 1`. Read
    /// [`HostInfo::observation_port`] for the port in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observe_port: Option<u16>,
    /// The processes placed on it.
    pub processes: Vec<String>,
}

impl HostInfo {
    /// The port its launcher's observation channel listens on: `observe_port` if the
    /// deployment sets it, else the port just below the links' base port. With several hosts
    /// and a secret, every other host's launcher asks it there for this host's part of the
    /// live view (see [`crate::observe::peers`]).
    pub fn observation_port(&self) -> u16 {
        self.observe_port
            .unwrap_or_else(|| self.port.saturating_sub(1))
    }
}

impl GraphInfo {
    /// The index of the agent named `name`.
    pub fn agent(&self, name: &str) -> Option<usize> {
        self.agents.iter().position(|a| a.name == name)
    }

    /// The process whose agent reads standard input, if any ([`AgentInfo::reads_stdin`]).
    pub fn stdin_process(&self) -> Option<&str> {
        self.agents
            .iter()
            .find(|a| a.reads_stdin)
            .map(|a| a.process.as_str())
    }

    /// The host process `process` runs on.
    pub fn host_of(&self, process: &str) -> Option<&HostInfo> {
        self.hosts
            .iter()
            .find(|h| h.processes.iter().any(|p| p == process))
    }
}

/// The strongly connected component of each of `n` agents joined by the connections `edges`
/// (writer, reader): two agents share one exactly when each reaches the other, i.e. they are in
/// one feedback loop. Kosaraju's algorithm, iterative (no recursion, whatever the graph's
/// depth): linear in agents and connections. Used by the graph (which inputs a quiet loop
/// closes) and by deployment files (a loop split across processes, at its line).
pub(crate) fn loop_components(n: usize, edges: impl Iterator<Item = (usize, usize)>) -> Vec<usize> {
    let mut next: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut prev: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (from, to) in edges {
        next[from].push(to);
        prev[to].push(from);
    }
    // First pass: the agents in the order their depth-first search finished.
    let mut order = Vec::with_capacity(n);
    let mut seen = vec![false; n];
    for root in 0..n {
        if std::mem::replace(&mut seen[root], true) {
            continue;
        }
        let mut stack = vec![(root, 0usize)];
        while let Some(&(a, k)) = stack.last() {
            if let Some(&b) = next[a].get(k) {
                if let Some(top) = stack.last_mut() {
                    top.1 += 1;
                }
                if !std::mem::replace(&mut seen[b], true) {
                    stack.push((b, 0));
                }
            } else {
                order.push(a);
                stack.pop();
            }
        }
    }
    // Second pass, on the reversed graph in reverse finishing order: one component each.
    let mut component = vec![usize::MAX; n];
    for (c, &root) in order.iter().rev().enumerate() {
        if component[root] != usize::MAX {
            continue;
        }
        component[root] = c;
        let mut stack = vec![root];
        while let Some(a) = stack.pop() {
            for &b in &prev[a] {
                if component[b] == usize::MAX {
                    component[b] = c;
                    stack.push(b);
                }
            }
        }
    }
    component
}
