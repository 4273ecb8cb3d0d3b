//! Deployment files: where agents run is configuration, not code. (Being written.)

use std::collections::BTreeMap;

use crate::graph::Policy;

/// What a deployment changes in a graph, resolved against its [`GraphInfo`](crate::info::GraphInfo).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// For each agent, by its index in [`GraphInfo::agents`](crate::info::GraphInfo::agents):
    /// the process it runs in.
    pub agent_process: Vec<String>,
    /// For each connection, by its index in [`GraphInfo::edges`](crate::info::GraphInfo::edges):
    /// its capacity and policy.
    pub edges: Vec<(usize, Policy)>,
    /// Every host `(name, address)`, in the file's order (empty: the one local host).
    pub hosts: Vec<(String, String)>,
    /// The host of every process.
    pub process_host: BTreeMap<String, String>,
}
