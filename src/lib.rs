//! # iotstream
//!
//! Streaming applications as **agents** that read input streams and append to the output
//! streams they own, wired with **one `connect` call**, run in one thread, on many threads, or
//! across processes (placed in code, or by a deployment file and the `iotstream` launcher),
//! with no change to agent code.
//!
//! ```
//! use iotstream::Graph;
//!
//! let mut g = Graph::new("quickstart");
//! let readings = g.source_iter("sensor", [20.5, 21.0, 35.2, 21.5, 22.0, 36.1]);
//! let hot = g.filter("too_hot", &readings, |t: &f64| *t > 30.0);
//! let alerts = g.map("alert", &hot, |t: &f64| format!("ALERT {t:.1} °C"));
//! let out = g.collect("alerts", &alerts);
//! g.run().unwrap();
//! assert_eq!(out.values(), ["ALERT 35.2 °C", "ALERT 36.1 °C"]);
//! ```
//!
//! ## Guide
//!
//! - [`stream`]: streams, ports and elements.
//! - [`agent`]: writing an agent (state plus a step).
//! - [`graph`]: building an application, `connect`, capacities and back-pressure.
//! - [`ops`]: the operator library.
//! - [`runtime`]: running on threads, and how a run ends.
//! - [`testing`]: the deterministic harness for tests.
//! - [`metrics`]: counters of every stream, connection and agent.
//! - [`observe`]: the live view: counters of every process put together, Prometheus text,
//!   JSON, the HTTP endpoints ([`Graph::serve_metrics`]).
//! - [`deploy`]: deployment files: placement, capacities, restarts, without recompiling.
//! - [`launcher`]: what the `iotstream` binary does (describe, check, run, clean).
//! - `bench`: `iotstream bench`, the concurrency modes measured against raw baselines
//!   (feature `cli`).
//! - [`info`]: a graph's plain description (what `iotstream graph` prints).
//! - [`init_logging`]: `tracing` output on standard error, filtered by `RUST_LOG`.

pub mod agent;
#[cfg(feature = "cli")]
pub mod bench;
pub mod deploy;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod graph;
mod host;
pub mod info;
mod launch;
pub mod launcher;
mod logging;
pub mod metrics;
pub mod observe;
pub mod ops;
mod port;
pub mod runtime;
pub mod stream;
pub mod testing;
mod transport;

pub use agent::{Agent, Inputs, Outputs, Ports};
pub use error::{AgentError, Error};
pub use graph::{
    BrokerOptions, Connection, Graph, Policy, Transport, DEFAULT_CAPACITY, DEFAULT_CAPACITY_BYTES,
};
pub use info::MAIN_PROCESS;
pub use logging::init_logging;
pub use metrics::{AgentStats, LinkEnds, LinkStats, Metrics, StreamStats};
pub use ops::follow::{FollowOptions, FollowStart, InvalidUtf8, LongLines, FOLLOW_MAX_LINE_BYTES};
pub use ops::merge::LateCounter;
pub use ops::rolling::{Rolling, RollingAggregate, RollingValue};
pub use ops::sink::{Collected, FileMode};
pub use ops::source::{InputSender, Source, SourceOptions, SOURCE_STOP_GRACE};
pub use ops::timed::TimedWindow;
pub use ops::webhook::{Undelivered, WebhookOptions};
pub use runtime::Running;
pub use stream::{Element, Input, Mark, Stream, MAX_ELEMENT_BYTES};
pub use testing::Harness;

/// The README's examples, compiled and run as doctests so that they stay true.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
