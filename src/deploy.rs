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

// ---- TEMPORARY STUB (replaced by the real parser from branch `deploy`) ----
use std::time::Duration;
#[derive(Debug)]
pub struct Deployment {
    pub file: String,
    pub supervisor: SupervisorSettings,
}
impl Default for Deployment {
    fn default() -> Self {
        Deployment {
            file: String::new(),
            supervisor: SupervisorSettings {
                drain_timeout: Duration::from_secs(10),
                ready_timeout: Duration::from_secs(30),
            },
        }
    }
}
#[derive(Debug, Clone)]
pub struct SupervisorSettings {
    pub drain_timeout: Duration,
    pub ready_timeout: Duration,
}
#[derive(Debug, Clone, PartialEq)]
pub enum Restart {
    Never,
    OnFailure {
        max_restarts: u32,
        backoff: Duration,
        max_backoff: Duration,
    },
}
#[derive(Debug, Clone)]
pub struct ProcessSettings {
    pub restart: Restart,
    pub env: BTreeMap<String, String>,
    pub cpus: Option<Vec<usize>>,
}
#[derive(Debug)]
pub struct DeployError {
    pub problems: Vec<String>,
}
impl std::fmt::Display for DeployError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.problems.join("\n"))
    }
}
impl std::error::Error for DeployError {}
impl Deployment {
    pub fn load(path: &std::path::Path) -> Result<Deployment, DeployError> {
        let text = std::fs::read_to_string(path).map_err(|e| DeployError {
            problems: vec![format!("{}: {e}", path.display())],
        })?;
        Self::parse(&path.display().to_string(), &text)
    }
    pub fn parse(file: &str, _text: &str) -> Result<Deployment, DeployError> {
        Ok(Deployment {
            file: file.to_string(),
            ..Default::default()
        })
    }
    pub fn plan(&self, info: &crate::info::GraphInfo) -> Result<Plan, DeployError> {
        Ok(Plan {
            agent_process: info.agents.iter().map(|a| a.process.clone()).collect(),
            edges: info.edges.iter().map(|e| (e.capacity, e.policy)).collect(),
            hosts: vec![],
            process_host: info
                .processes
                .iter()
                .map(|p| (p.clone(), "local".to_string()))
                .collect(),
        })
    }
    pub fn process(&self, _name: &str) -> ProcessSettings {
        ProcessSettings {
            restart: Restart::Never,
            env: BTreeMap::new(),
            cpus: None,
        }
    }
}
