//! The live view's data: what `/api/metrics` returns, what `iotstream top` and the web page
//! show, what the Prometheus text is made from. Plain, serde-serializable values.
//!
//! Counters (`*_total`-like fields: `elements`, `steps`, `blocked_ns`, …) only grow during a
//! run (a restarted process starts its own from 0 again; the aggregate keeps what the dead one
//! had reported). Rates (`*_per_s`) and shares are computed by the aggregator between two
//! reports, `None` before the second one.

use serde::{Deserialize, Serialize};

use crate::metrics::{LinkEnds, Metrics};

/// One process's report: its counters and what it costs. A process sends one every
/// reporting interval (default 1 s) to its launcher or starter.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessSample {
    /// The process's pid.
    pub pid: u32,
    /// When the sample was taken, milliseconds since the Unix epoch (0: unknown, taken as
    /// the time it is received). Rates are computed between two samples' times.
    #[serde(default)]
    pub time_ms: u64,
    /// User plus system CPU time used so far, in nanoseconds.
    pub cpu_ns: u64,
    /// Resident memory now, in bytes.
    pub rss_bytes: u64,
    /// Every counter of the agents and connections of this process.
    pub metrics: Metrics,
}

/// What a process is doing, as its supervisor sees it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProcessStatus {
    /// Started, not yet ready (building its part of the graph).
    #[default]
    Starting,
    /// Running its agents.
    Running,
    /// Draining after a stop: sources stopped, data in flight being processed.
    Draining,
    /// Failed and about to be started again (its restart policy says so).
    Restarting,
    /// Ended normally.
    Ended,
    /// Ended with a failure (and will not be restarted).
    Failed,
    /// Runs on another host whose launcher was not reached: nothing is known of it now.
    Unknown,
}

/// An application as seen now: every process, agent, stream and connection, with counters
/// and rates. Served as `/api/metrics`; rendered as Prometheus text on `/metrics`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AppMetrics {
    /// The application's name ([`Graph::new`](crate::Graph::new)).
    pub app: String,
    /// The run's id (`<starter or launcher pid>-<nonce>`), empty when unknown.
    pub run: String,
    /// When this view was made, milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The reporting interval, in milliseconds.
    pub interval_ms: u64,
    /// Every process of the application (of every host reached).
    pub processes: Vec<ProcessView>,
    /// Every agent.
    pub agents: Vec<AgentView>,
    /// Every stream (agent output).
    pub streams: Vec<StreamView>,
    /// Every connection (stream → reader input), one entry per edge of the graph, the writer's
    /// and the reader's counters put together.
    pub links: Vec<LinkView>,
}

/// One process.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct ProcessView {
    /// The process's name in the graph (`main`, or as placed).
    pub process: String,
    /// The host it runs on.
    pub host: String,
    /// Its pid now (0 when not running).
    pub pid: u32,
    /// What it is doing.
    pub status: ProcessStatus,
    /// Seconds since it (last) started.
    pub up_s: f64,
    /// CPU seconds used, over every incarnation of the process.
    pub cpu_s: f64,
    /// CPU seconds per second over the last interval (1.0 = one core busy).
    pub cpu_share: Option<f64>,
    /// Resident memory now, in bytes.
    pub rss_bytes: u64,
    /// Times it was restarted after a failure.
    pub restarts: u64,
}

/// One agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct AgentView {
    /// The agent's name.
    pub name: String,
    /// The process it runs in.
    pub process: String,
    /// The host it runs on.
    pub host: String,
    /// Steps run.
    pub steps: u64,
    /// Elements consumed, over every input.
    pub consumed: u64,
    /// Time spent in its steps, in nanoseconds.
    pub busy_ns: u64,
    /// Elements it found late (event time) and dropped or routed aside.
    pub late: u64,
    /// Elements a sink could not deliver to the outside world and gave up on.
    #[serde(default)]
    pub undelivered: u64,
    /// Share of the last interval spent in its steps (0.0 to 1.0).
    pub busy_share: Option<f64>,
}

/// One stream.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct StreamView {
    /// `agent.port`.
    pub name: String,
    /// The agent that writes it.
    pub writer: String,
    /// The writer's process.
    pub process: String,
    /// The writer's host.
    pub host: String,
    /// Elements appended.
    pub elements: u64,
    /// Batches appended.
    pub batches: u64,
    /// The last watermark sent on it (event time streams only).
    pub watermark: Option<u64>,
    /// Elements appended per second over the last interval.
    pub elements_per_s: Option<f64>,
}

/// One connection, both ends' counters together.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct LinkView {
    /// Its index in the graph's edges ([`GraphInfo::edges`](crate::info::GraphInfo::edges)).
    pub edge: usize,
    /// The stream read, `agent.port`.
    pub stream: String,
    /// The reading agent.
    pub reader: String,
    /// The reader's input port.
    pub input: String,
    /// `local`, `shared-memory` or `tcp`.
    pub transport: String,
    /// Elements that may be in flight.
    pub capacity: u64,
    /// Elements delivered to the reader.
    pub elements: u64,
    /// Batches delivered to the reader.
    pub batches: u64,
    /// Elements dropped by a drop policy.
    pub dropped: u64,
    /// Time the writer held data it could not send, in nanoseconds.
    pub blocked_ns: u64,
    /// Elements in flight now (sent, not consumed): the backlog.
    pub in_flight: u64,
    /// The most elements ever in flight at once.
    pub max_in_flight: u64,
    /// TCP: payload bytes moved.
    pub bytes: u64,
    /// TCP: connections re-established.
    pub reconnects: u64,
    /// TCP writer: bytes sent and not acknowledged.
    pub unacked_bytes: u64,
    /// Shared memory: elements whose ring space the reader released before its agent
    /// consumed them ([`LinkStats::released_early`](crate::metrics::LinkStats::released_early)).
    #[serde(default)]
    pub released_early: u64,
    /// Which ends' reports this view was made from: both, or only the writer's or the
    /// reader's (the other process has not reported yet, or runs on a host not reached);
    /// `None` before either reported. The [aggregator](crate::observe::Aggregator) takes each
    /// counter from the end that knows it.
    #[serde(default)]
    pub ends: Option<LinkEnds>,
    /// Elements delivered per second over the last interval.
    pub elements_per_s: Option<f64>,
    /// Elements dropped per second over the last interval.
    pub dropped_per_s: Option<f64>,
    /// Share of the last interval the writer was blocked on this connection (0.0 to 1.0).
    pub blocked_share: Option<f64>,
}
