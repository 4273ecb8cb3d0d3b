//! Deployment files: where agents run is configuration, not code.
//!
//! An application's code declares its agents, their connections and, optionally, processes
//! ([`Graph::place_in_process`](crate::Graph::place_in_process)). A deployment file, written in
//! TOML and read by the `iotstream` launcher, says how to run it: on which hosts, which agents go
//! in which process, how each process is supervised and restarted, and the capacity and policy
//! of connections. Every section and field is optional: an empty file runs the application as
//! declared in code, in one process per declared process, on this host.
//!
//! ```toml
//! [supervisor]
//! drain_timeout_ms = 10000     # default 10000: bound on a graceful drain (Ctrl-C/SIGTERM), then stragglers are killed
//! ready_timeout_ms = 30000     # default 30000: how long a process has to report ready
//!
//! [env]                        # default empty: environment variables for every process
//! RUST_LOG = "info"
//!
//! [hosts.local]                # default: one host "local", address "127.0.0.1"
//! address = "127.0.0.1"        # required in each [hosts.NAME]: an IP address or a DNS name
//! port = 7400                  # default 7400: the link of connection i into this host listens on port + i
//! observe_port = 7399          # default port - 1: where this host's launcher answers the other hosts' (several hosts and a secret only)
//!
//! [network]                    # links between hosts (only with several hosts)
//! secret_file = "secret"       # required with several hosts (unless insecure = true); relative to this file; mode 600
//! insecure = false             # default false: true runs links without authentication (warned on every start)
//! tls_cert = "host.pem"        # tls_cert, tls_key, tls_ca: all three or none; TLS (mutual) on every link
//! tls_key = "host.key"
//! tls_ca = "ca.pem"
//! connect_wait_ms = 60000      # default 60000: how long a link waits at start for the other host
//! heartbeat_ms = 1000          # default 1000: a silent link says it is alive this often
//! peer_timeout_ms = 5000       # default 5000: a peer silent this long is taken as gone (> heartbeat_ms)
//! reconnect_limit_ms = 60000   # default 60000: a broken link is retried this long, then the application fails
//! unacked_bytes = 16777216     # default 16 MiB, at least 64 KiB: bytes sent and not yet acknowledged per link (payload + 128 a frame)
//!
//! [broker]                     # a NATS server with JetStream, for connections marked transport = "broker"
//! url = "nats://10.0.0.5:4222" # required: nats:// or tls://, several separated by commas
//! creds = "fleet.creds"        # default none: a NATS credentials file (JWT + nkey seed); relative to this file
//! token_file = "nats.token"    # default none: a file holding a token (not with creds or user)
//! user = "fleet"               # default none: a user name, with password_file (not with creds or token_file)
//! password_file = "nats.pass"  # the file holding that user's password; both or none
//! tls_ca = "nats-ca.pem"       # default none: TLS to the server, checked against this CA
//! tls_cert = "client.pem"      # tls_cert, tls_key: both or none, for a server that asks for a client certificate
//! tls_key = "client.key"
//! max_bytes = 268435456        # default 256 MiB, at least 1 MiB: each connection's JetStream stream at most
//! max_age_s = 0                # default 0 (none): messages older than this are discarded by the server
//! max_messages = 100000        # default none: each connection's JetStream stream at most this many messages
//! max_pending = 64             # default 64, 1..=65536: messages per connection awaiting the server's acknowledgement
//! connect_wait_ms = 60000      # default 60000: how long a link waits for the server at start
//! between = [["edge", "server"]] # default none: every connection between these two hosts goes through the broker
//!
//! [processes.detector]         # a process declared in code, or a new one
//! host = "local"               # default: host "local" if it exists, else the only host; required when there are several hosts and none is "local"
//! agents = ["detector"]        # default []: agents moved into this process (overrides code placement)
//! restart = "on-failure"       # "never" (default) | "on-failure"
//! max_restarts = 3             # default 3; only with restart = "on-failure"
//! backoff_ms = 100             # default 100: wait before the first restart, doubled each restart
//! max_backoff_ms = 5000        # default 5000: the longest wait
//! cpus = [2, 3]                # default: not pinned; CPU indices 0..=1023, non-empty, no duplicates, on this machine
//! workers = 2                  # default: as in code (Graph::worker_threads), else one per core; 1..=1024
//! env = { KEY = "value" }      # default empty: added to (and overriding) [env]; no IOTSTREAM_* names
//!
//! [[connections]]              # options of existing connections
//! stream = "sensor.out"        # required: the writer's stream, "agent.port"
//! to = "detector.in"           # default: every connection from that stream; else the reader's input
//! capacity = 1024              # default: as in code; >= 1 and >= the reader's min_capacity
//! capacity_bytes = 1048576     # default: as in code (1 MiB unless set); >= 1; must hold min_capacity elements
//! policy = "drop-oldest"       # "block" | "drop-oldest" | "drop-newest"; default: as in code
//! spin_us = 200                # low-latency mode of a ring (Connection::spin): microseconds the
//!                              # reader checks before it sleeps, 0..=60000000 (0: off, the
//!                              # default blocking mode), or "always" (never sleeps);
//!                              # default: as in code
//! transport = "broker"         # "direct" (default: a ring or a TCP link, from placement) or
//!                              # "broker" (through the [broker]; needs that section)
//! ```
//!
//! Reading a file is two steps. [`Deployment::parse`] (or [`Deployment::load`]) checks what can
//! be checked from the file alone: TOML syntax, field names and types, names, CPU lists,
//! environment variables, hosts. [`Deployment::plan`] checks the file against the application's
//! [`GraphInfo`] (its agents, streams and processes) and resolves it into a [`Plan`]: the process
//! of every agent, the capacity and policy of every connection, the host of every process. Each
//! step reports every problem it finds at once, sorted by position, each naming the file, line
//! and column, like a compiler (whether the CPUs of `cpus` exist depends on the machine: the
//! launcher checks them with [`Deployment::check_cpus`]):
//!
//! ```text
//! deploy.toml:4:20: agent 'detector' is placed twice: in process 'b' here, and in process 'a' on line 2
//! deploy.toml:6:18: agent 'log' is listed twice in process 'c' (first on line 6)
//! ```
//!
//! ```
//! use iotstream::deploy::{Deployment, Restart};
//! use iotstream::{Graph, Policy};
//! use std::time::Duration;
//!
//! let mut g = Graph::new("plant");
//! let readings = g.source_iter("sensor", 0..100u64);
//! let alarms = g.map("detector", &readings, |x: &u64| x % 7 == 0);
//! g.for_each("alarm", &alarms, |_: &bool| {});
//!
//! let file = r#"
//!     [processes.detector]
//!     agents = ["detector"]
//!     restart = "on-failure"
//!
//!     [[connections]]
//!     stream = "sensor.out"
//!     capacity = 1024
//!     policy = "drop-oldest"
//! "#;
//! let deployment = Deployment::parse("deploy.toml", file).unwrap();
//! let plan = deployment.plan(&g.info()).unwrap();
//! assert_eq!(plan.agent_process, ["main", "detector", "main"]);
//! assert_eq!(plan.edges[0], (1024, Policy::DropOldest));
//! assert_eq!(plan.process_host["detector"], "local");
//! assert_eq!(
//!     deployment.process("detector").restart,
//!     Restart::OnFailure {
//!         max_restarts: 3,
//!         backoff: Duration::from_millis(100),
//!         max_backoff: Duration::from_millis(5000),
//!     }
//! );
//!
//! let wrong = Deployment::parse("deploy.toml", "[processes.detector]\nrestrat = \"never\"\n");
//! assert_eq!(
//!     wrong.unwrap_err().to_string(),
//!     "deploy.toml:2:1: unknown field 'restrat' in process 'detector' (did you mean 'restart'?); \
//!      the accepted fields are 'host', 'agents', 'restart', 'max_restarts', 'backoff_ms', \
//!      'max_backoff_ms', 'cpus', 'workers' and 'env'"
//! );
//! ```
//!
//! The file format, every field's default and the rules are in `docs/deployment.md`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use toml::de::{DeString, DeTable, DeValue};
use toml::Spanned;

use crate::error::Error;
use crate::info::{GraphInfo, LOCAL_HOST, MAIN_PROCESS};
use crate::stream::Policy;

/// What a deployment changes in a graph, resolved against its [`GraphInfo`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// For each agent, by its index in [`GraphInfo::agents`](crate::info::GraphInfo::agents):
    /// the process it runs in.
    pub agent_process: Vec<String>,
    /// For each connection, by its index in [`GraphInfo::edges`](crate::info::GraphInfo::edges):
    /// its capacity and policy.
    pub edges: Vec<(usize, Policy)>,
    /// For each connection, as `edges`: the byte bound the file sets
    /// ([`Connection::capacity_bytes`](crate::Connection::capacity_bytes)), `None` where it
    /// sets none (the code's bound, or the graph's default, stays).
    pub capacity_bytes: Vec<Option<usize>>,
    /// For each connection, as `edges`: the low-latency window the file sets
    /// ([`Connection::spin`](crate::Connection::spin)) in microseconds, `Some(0)` to turn it
    /// off, `Some(u64::MAX)` for always; `None` where it sets none (the code's stays).
    pub spin_us: Vec<Option<u64>>,
    /// For each connection, as `edges`: it goes through the `[broker]` (`transport =
    /// "broker"`, or a pair of hosts in `between`).
    pub broker: Vec<bool>,
    /// Every host, in the file's order (empty: the one local host).
    pub hosts: Vec<HostPlan>,
    /// The host of every process.
    pub process_host: BTreeMap<String, String>,
    /// The worker threads of each process whose section sets `workers` (see
    /// [`Graph::worker_threads`](crate::Graph::worker_threads)); the others keep the code's.
    pub process_workers: BTreeMap<String, usize>,
}

/// One host of a [`Plan`]: where the links into its processes listen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPlan {
    /// The host's name (`[hosts.NAME]`).
    pub name: String,
    /// Its IP address or DNS name.
    pub address: String,
    /// Its base port: the link of connection `i` into this host listens on `port + i`.
    pub port: u16,
    /// Where its launcher answers the other hosts' launchers (the live view across hosts), as
    /// the file sets it; `None`: `port - 1`
    /// ([`HostInfo::observation_port`](crate::info::HostInfo::observation_port)).
    pub observe_port: Option<u16>,
}

/// The default [`SupervisorSettings::drain_timeout`]: 10 s.
const DRAIN_TIMEOUT_MS: u64 = 10_000;
/// The default [`SupervisorSettings::ready_timeout`]: 30 s.
const READY_TIMEOUT_MS: u64 = 30_000;
/// The default `max_restarts` with `restart = "on-failure"`.
const MAX_RESTARTS: u32 = 3;
/// The default `backoff_ms`.
const BACKOFF_MS: u64 = 100;
/// The default `max_backoff_ms`.
const MAX_BACKOFF_MS: u64 = 5_000;
/// The address of the default host.
const LOCAL_ADDRESS: &str = "127.0.0.1";
/// The highest CPU index `cpus` accepts.
const MAX_CPU: u64 = 1023;
/// The most worker threads `workers` accepts.
pub const MAX_WORKERS: usize = 1024;
/// Environment variables whose names start with this are iotstream's own (roles, the
/// deployment, the control channel): a deployment file may not set them.
pub(crate) const RESERVED_ENV_PREFIX: &str = "IOTSTREAM_";
/// The largest integer TOML can write.
const TOML_MAX: u64 = i64::MAX as u64;

const SECTIONS: &[&str] = &[
    "supervisor",
    "env",
    "network",
    "hosts",
    "processes",
    "connections",
    "broker",
];
const BROKER_FIELDS: &[&str] = &[
    "url",
    "creds",
    "token_file",
    "user",
    "password_file",
    "tls_ca",
    "tls_cert",
    "tls_key",
    "max_bytes",
    "max_age_s",
    "max_messages",
    "max_pending",
    "connect_wait_ms",
    "between",
];
const TRANSPORTS: &[&str] = &["direct", "broker"];
const SUPERVISOR_FIELDS: &[&str] = &["drain_timeout_ms", "ready_timeout_ms"];
const HOST_FIELDS: &[&str] = &["address", "port", "observe_port"];
const NETWORK_FIELDS: &[&str] = &[
    "secret_file",
    "insecure",
    "tls_cert",
    "tls_key",
    "tls_ca",
    "connect_wait_ms",
    "heartbeat_ms",
    "peer_timeout_ms",
    "reconnect_limit_ms",
    "unacked_bytes",
];
/// The default base port of a host (`port` in `[hosts.NAME]`).
pub const DEFAULT_PORT: u16 = 7400;
const PROCESS_FIELDS: &[&str] = &[
    "host",
    "agents",
    "restart",
    "max_restarts",
    "backoff_ms",
    "max_backoff_ms",
    "cpus",
    "workers",
    "env",
];
const CONNECTION_FIELDS: &[&str] = &[
    "stream",
    "to",
    "capacity",
    "capacity_bytes",
    "policy",
    "spin_us",
    "transport",
];

/// The largest `spin_us` as a number: a minute.
const MAX_SPIN_US: u64 = 60_000_000;
const RESTARTS: &[&str] = &["never", "on-failure"];
const POLICIES: &[&str] = &["block", "drop-oldest", "drop-newest"];

/// A deployment file, parsed and checked on its own (see the [module](self) documentation).
///
/// [`Deployment::default()`] is what an empty file gives: the application as declared in code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Deployment {
    /// The file's name as given to [`load`](Deployment::load) or [`parse`](Deployment::parse)
    /// (empty for the default); problems found by [`plan`](Deployment::plan) name it.
    pub file: String,
    /// The `[supervisor]` section.
    pub supervisor: SupervisorSettings,
    /// The `[env]` section: environment variables for every process
    /// ([`process`](Deployment::process) merges them with a process's own).
    pub env: BTreeMap<String, String>,
    /// The `[network]` section: how links between hosts are secured and kept alive.
    pub network: NetworkSettings,
    /// The `[broker]` section, if any: the NATS server that connections marked
    /// `transport = "broker"` cross.
    pub broker: Option<BrokerSection>,
    /// The file has a `[broker]` section, valid or not (`broker` is `None` when it is not):
    /// its own problems are reported, and a connection through it is not told it is missing.
    broker_written: bool,
    /// Where `[network]` names its files, for the problems found when they are read.
    network_at: NetworkFilesAt,
    /// SHA-256 of the file's text: every host must run the same deployment, and the links
    /// between hosts check it in their handshake.
    pub digest: [u8; 32],
    hosts: Vec<HostEntry>,
    processes: Vec<ProcessEntry>,
    connections: Vec<ConnectionEntry>,
}

/// How the supervisor treats every process (the `[supervisor]` section).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SupervisorSettings {
    /// How long a graceful drain (on Ctrl-C, SIGTERM or SIGHUP) may take before the processes still
    /// running are killed (`drain_timeout_ms`, default 10 s).
    pub drain_timeout: Duration,
    /// How long a started process has to report ready (`ready_timeout_ms`, default 30 s).
    pub ready_timeout: Duration,
}

impl Default for SupervisorSettings {
    fn default() -> Self {
        SupervisorSettings {
            drain_timeout: Duration::from_millis(DRAIN_TIMEOUT_MS),
            ready_timeout: Duration::from_millis(READY_TIMEOUT_MS),
        }
    }
}

/// How links between hosts are secured and kept alive (the `[network]` section). Read only
/// when the deployment has several hosts; see `docs/deployment.md` and `docs/security.md`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkSettings {
    /// The shared secret's file (`secret_file`), relative paths taken from the deployment
    /// file's folder. Links authenticate each other with it (HMAC-SHA256 challenge-response).
    pub secret_file: Option<PathBuf>,
    /// `insecure = true`: links between hosts run without a secret (warned on every start).
    pub insecure: bool,
    /// TLS on every link between hosts (`tls_cert`, `tls_key`, `tls_ca`: all three or none).
    pub tls: Option<TlsPaths>,
    /// How long a link waits at start for the other host (`connect_wait_ms`, default 60 s).
    pub connect_wait: Duration,
    /// A link says it is alive after this long without traffic (`heartbeat_ms`, default 1 s).
    pub heartbeat: Duration,
    /// A peer silent this long is taken as gone (`peer_timeout_ms`, default 5 s).
    pub peer_timeout: Duration,
    /// How long a broken link is retried before the application fails naming the other host
    /// (`reconnect_limit_ms`, default 60 s).
    pub reconnect_limit: Duration,
    /// The most bytes a writer keeps sent and not yet acknowledged on one link
    /// (`unacked_bytes`, default 16 MiB), each frame counting its payload and 128 bytes for
    /// itself: a writer out of room waits.
    pub unacked_bytes: usize,
}

/// The `[broker]` section: a NATS server with JetStream (see `docs/deployment.md`, "Broker").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerSection {
    /// The server(s), `nats://host:port` or `tls://host:port`, separated by commas (`url`).
    pub url: String,
    /// A NATS credentials file (`creds`), relative paths from the deployment file's folder.
    pub creds: Option<PathBuf>,
    /// A file holding a token (`token_file`), read when the application starts.
    pub token_file: Option<PathBuf>,
    /// A user name (`user`) and the file holding its password (`password_file`, read when the
    /// application starts): both or none.
    pub user: Option<(String, PathBuf)>,
    /// The CA that signed the server's certificate (`tls_ca`): TLS to the server.
    pub tls_ca: Option<PathBuf>,
    /// This client's certificate and key (`tls_cert`, `tls_key`), for a server that asks.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Each connection's JetStream stream at most this many bytes (`max_bytes`, default
    /// 256 MiB); a publish refused there follows the connection's policy.
    pub max_bytes: u64,
    /// Messages older than this are discarded by the server (`max_age_s`; `None`: never).
    pub max_age: Option<Duration>,
    /// Each connection's JetStream stream at most this many messages (`max_messages`; `None`:
    /// no such limit); a publish refused there follows the connection's policy.
    pub max_messages: Option<u64>,
    /// Messages per connection awaiting the server's acknowledgement (`max_pending`, 64).
    pub max_pending: usize,
    /// How long a link waits for the server at start (`connect_wait_ms`, default 60 s).
    pub connect_wait: Duration,
    /// Pairs of hosts all of whose connections go through the broker (`between`).
    pub between: Vec<(String, String)>,
    /// Where each pair of `between` is written, for problems found by `plan`.
    between_at: Vec<Pos>,
    /// The deployment file's name, and where `token_file` and `password_file` are written:
    /// for the problems found when those files are read.
    file: String,
    token_file_at: Pos,
    password_file_at: Pos,
    /// Where `creds`, `tls_ca`, `tls_cert` and `tls_key` are written.
    creds_at: Pos,
    tls_ca_at: Pos,
    tls_client_at: (Pos, Pos),
}

/// The largest file a `[broker]` field may name: a token or password (4 KiB, as the
/// `[network]` secret), a credentials file or a PEM file (1 MiB).
const BROKER_SECRET_MAX_BYTES: usize = 4096;
const BROKER_FILE_MAX_BYTES: usize = 1 << 20;

impl BrokerSection {
    /// The settings broker links use; reads the token and password files (an error names the
    /// field and the file).
    pub(crate) fn settings(&self) -> Result<crate::transport::broker::BrokerSettings, Error> {
        let mut s = crate::transport::broker::BrokerSettings::new(&self.url);
        if let Some(path) = &self.token_file {
            s.token = Some(self.read_secret("token_file", path, self.token_file_at)?);
        }
        if let Some((user, path)) = &self.user {
            let password = self.read_secret("password_file", path, self.password_file_at)?;
            s.user = Some((user.clone(), password));
        }
        // The other files are read by the NATS client when a link connects, in a process
        // already running: each is checked here, when every process starts (and by `iotstream
        // check`), so that a missing or unsafe one is named with its field before anything
        // runs. A credentials file holds a private key, as `tls_key` does: only its owner may
        // read it.
        if let Some(path) = &self.creds {
            self.read_file("creds", path, self.creds_at, BROKER_FILE_MAX_BYTES, true)?;
        }
        if let Some(path) = &self.tls_ca {
            self.read_file("tls_ca", path, self.tls_ca_at, BROKER_FILE_MAX_BYTES, false)?;
        }
        if let Some((cert, key)) = &self.tls_client {
            let (cert_at, key_at) = self.tls_client_at;
            self.read_file("tls_cert", cert, cert_at, BROKER_FILE_MAX_BYTES, false)?;
            self.read_file("tls_key", key, key_at, BROKER_FILE_MAX_BYTES, true)?;
        }
        s.creds = self.creds.clone();
        if self.tls_ca.is_some() || self.tls_client.is_some() {
            s.tls = Some(crate::transport::broker::BrokerTls {
                ca: self.tls_ca.clone(),
                cert: self.tls_client.as_ref().map(|c| c.0.clone()),
                key: self.tls_client.as_ref().map(|c| c.1.clone()),
            });
        }
        s.max_bytes = i64::try_from(self.max_bytes).unwrap_or(i64::MAX);
        s.max_age = self.max_age;
        s.max_messages = self
            .max_messages
            .map(|n| i64::try_from(n).unwrap_or(i64::MAX));
        s.max_pending = self.max_pending;
        s.connect_wait = self.connect_wait;
        Ok(s)
    }

    /// The secret in the file `path` that `[broker]` field `field` names (written at `at`),
    /// without the white space around it; an error names the deployment file, the field's line
    /// and column, the field and the file, never the secret.
    fn read_secret(&self, field: &str, path: &Path, at: Pos) -> Result<String, Error> {
        let bytes = self.read_file(field, path, at, BROKER_SECRET_MAX_BYTES, true)?;
        let text = String::from_utf8(bytes).map_err(|_| {
            self.file_problem(field, at, format!("{} is not UTF-8 text", path.display()))
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(self.file_problem(field, at, format!("{} is empty", path.display())));
        }
        Ok(secret.to_string())
    }

    /// The file `path` that `[broker]` field `field` names (written at `at`), read as a link
    /// reads its own files (`auth::read_local_file`): a regular file of at most `max` bytes,
    /// opened without blocking (a named pipe does not hang the start), and, if `private`, one
    /// that group and others may neither read nor write.
    fn read_file(
        &self,
        field: &str,
        path: &Path,
        at: Pos,
        max: usize,
        private: bool,
    ) -> Result<Vec<u8>, Error> {
        use crate::transport::tcp::auth::{read_local_file, FileProblem};
        read_local_file(path, max, private).map_err(|p| {
            let shown = path.display();
            let why = match p {
                FileProblem::Missing => format!("{shown} does not exist"),
                FileProblem::Unreadable(e) => format!("cannot read {shown}: {e}"),
                FileProblem::NotAFile => format!("{shown} is not a regular file"),
                FileProblem::TooOpen(mode) => format!(
                    "{shown} may be read by others (mode {mode:o}): it holds a secret; make it \
                     private with chmod 600 {shown}"
                ),
                FileProblem::TooLarge => format!("{shown} is larger than {max} bytes"),
            };
            self.file_problem(field, at, why)
        })
    }

    /// A problem with the file of `[broker]` field `field`, at `at` in the deployment file.
    fn file_problem(&self, field: &str, at: Pos, message: String) -> Error {
        let mut problems = Problems::new(&self.file);
        problems.add(at, format!("[broker] {field}: {message}"));
        Error::from(problems.into_error())
    }
}

/// The files of TLS on links between hosts (PEM): this host's certificate and key, and the
/// certificate authority every host's certificate is checked against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsPaths {
    /// This host's certificate (`tls_cert`).
    pub cert: PathBuf,
    /// Its private key (`tls_key`; refused if readable by group or others).
    pub key: PathBuf,
    /// The certificate authority (`tls_ca`).
    pub ca: PathBuf,
}

impl Default for NetworkSettings {
    fn default() -> Self {
        NetworkSettings {
            secret_file: None,
            insecure: false,
            tls: None,
            connect_wait: Duration::from_secs(60),
            heartbeat: Duration::from_secs(1),
            peer_timeout: Duration::from_secs(5),
            reconnect_limit: Duration::from_secs(60),
            unacked_bytes: 16 << 20,
        }
    }
}

/// What the supervisor does when a process fails (the `restart` field of a process).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Restart {
    /// The failure ends the run (`restart = "never"`, the default).
    #[default]
    Never,
    /// The process is started again, up to `max_restarts` times in a run
    /// (`restart = "on-failure"`).
    OnFailure {
        /// How many times it may be restarted (`max_restarts`, default 3).
        max_restarts: u32,
        /// The wait before the first restart, doubled before each next one (`backoff_ms`,
        /// default 100 ms).
        backoff: Duration,
        /// The longest wait (`max_backoff_ms`, default 5 s).
        max_backoff: Duration,
    },
}

impl Restart {
    /// The wait before restart number `n` (1 for the first): `backoff` doubled `n - 1` times, at
    /// most `max_backoff`; `None` when restart `n` is not allowed (`Never`, `n` is 0, or `n` is
    /// more than `max_restarts`).
    ///
    /// ```
    /// use iotstream::deploy::Restart;
    /// use std::time::Duration;
    ///
    /// let r = Restart::OnFailure {
    ///     max_restarts: 4,
    ///     backoff: Duration::from_millis(100),
    ///     max_backoff: Duration::from_millis(300),
    /// };
    /// let waits: Vec<_> = (1..=5).map(|n| r.delay(n).map(|d| d.as_millis())).collect();
    /// assert_eq!(waits, [Some(100), Some(200), Some(300), Some(300), None]);
    /// ```
    pub fn delay(&self, n: u32) -> Option<Duration> {
        match self {
            Restart::Never => None,
            Restart::OnFailure {
                max_restarts,
                backoff,
                max_backoff,
            } => {
                if n == 0 || n > *max_restarts {
                    return None;
                }
                let factor = 1u32.checked_shl(n - 1).unwrap_or(u32::MAX);
                Some(backoff.saturating_mul(factor).min(*max_backoff))
            }
        }
    }
}

/// The settings of one process, with defaults for whatever the file does not say.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcessSettings {
    /// What happens when it fails.
    pub restart: Restart,
    /// Its environment variables: `[env]`, then the process's own `env` (which wins).
    pub env: BTreeMap<String, String>,
    /// The CPUs it is pinned to (`None`: not pinned).
    pub cpus: Option<Vec<usize>>,
    /// Its worker threads (`None`: as in code, else one per core).
    pub workers: Option<usize>,
}

/// Why a deployment file was rejected: every problem found, sorted by position.
///
/// Its `Debug` output is its message, one problem per line (as `Display`), so that a `main`
/// that returns one prints the problems, not a struct; `{:#?}` shows the fields.
#[derive(Clone, PartialEq, Eq)]
pub struct DeployError {
    /// The problems, at least one.
    pub problems: Vec<Problem>,
}

/// One problem in a deployment file.
///
/// Displayed as `FILE:LINE:COLUMN: message` (or `FILE: message` when the file could not be
/// read, with `line` and `column` 0).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file's name.
    pub file: String,
    /// The line, from 1 (0 when the problem is not at a place in the file).
    pub line: usize,
    /// The column in characters, from 1 (0 when `line` is 0).
    pub column: usize,
    /// What is wrong, naming the offending field, value, agent, stream or process in quotes.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file, self.line, self.column, self.message
            )
        }
    }
}

impl fmt::Display for DeployError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

/// The readable message (as `Display`); with `{:#?}`, the fields.
impl fmt::Debug for DeployError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if f.alternate() {
            f.debug_struct("DeployError")
                .field("problems", &self.problems)
                .finish()
        } else {
            fmt::Display::fmt(self, f)
        }
    }
}

impl std::error::Error for DeployError {}

/// A deployment's problems, one per line, become [`Error::Deployment`].
impl From<DeployError> for Error {
    fn from(e: DeployError) -> Self {
        Error::Deployment {
            problems: e.to_string().lines().map(str::to_string).collect(),
        }
    }
}

/// A position in the file (1-based line and column).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Pos {
    line: usize,
    column: usize,
}

/// Where `[network]` names its files (the field's key).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct NetworkFilesAt {
    /// `secret_file`.
    secret_file: Pos,
    /// `tls_cert`, `tls_key` and `tls_ca`.
    tls: [Pos; 3],
}

/// One `[hosts.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct HostEntry {
    name: String,
    at: Pos,
    /// The address and where it is written.
    address: String,
    address_at: Pos,
    port: u16,
    port_at: Option<Pos>,
    /// `observe_port`, if the file sets it, and where.
    observe_port: Option<(u16, Pos)>,
}

impl HostEntry {
    /// The port its launcher's observation channel listens on, and where the file says so
    /// (`None` for `port - 1` with `port` left out); `None` as the port when `port - 1` is 0.
    fn observation_port(&self) -> (Option<u16>, Option<Pos>) {
        match self.observe_port {
            Some((p, at)) => (Some(p), Some(at)),
            None => (self.port.checked_sub(1).filter(|&p| p > 0), self.port_at),
        }
    }
}

/// One `[processes.NAME]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ProcessEntry {
    name: String,
    at: Pos,
    host: Option<(String, Pos)>,
    agents: Vec<(String, Pos)>,
    restart: Restart,
    /// Each CPU with its place in the file.
    cpus: Option<Vec<(usize, Pos)>>,
    workers: Option<usize>,
    env: BTreeMap<String, String>,
}

/// One `[[connections]]`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct ConnectionEntry {
    stream: (String, Pos),
    to: Option<(String, Pos)>,
    capacity: Option<(usize, Pos)>,
    capacity_bytes: Option<(usize, Pos)>,
    policy: Option<Policy>,
    /// Microseconds, `u64::MAX` for "always".
    spin_us: Option<u64>,
    /// `transport`: `true` for "broker", `false` for "direct", and where it is written.
    broker: Option<(bool, Pos)>,
}

impl ConnectionEntry {
    /// `'stream'` or `'stream -> to'`.
    fn label(&self) -> String {
        connection_label(&self.stream.0, self.to.as_ref().map(|t| t.0.as_str()))
    }
}

fn connection_label(stream: &str, to: Option<&str>) -> String {
    match to {
        Some(to) => format!("'{stream} -> {to}'"),
        None => format!("'{stream}'"),
    }
}

impl Deployment {
    /// Reads and parses the deployment file at `path` (see [`parse`](Deployment::parse)); a
    /// file that cannot be read is one problem naming the path.
    pub fn load(path: &Path) -> Result<Deployment, DeployError> {
        let file = path.display().to_string();
        match std::fs::read_to_string(path) {
            Ok(text) => Deployment::parse(&file, &text),
            Err(e) => Err(DeployError {
                problems: vec![Problem {
                    file,
                    line: 0,
                    column: 0,
                    message: format!("cannot read the deployment file: {e}"),
                }],
            }),
        }
    }

    /// Parses the text of a deployment file named `file` (the name is only used in messages),
    /// checking everything that does not need the application: TOML syntax, unknown fields,
    /// types and ranges, process and host names, `restart` options, CPU lists, environment
    /// variables, hosts of processes, agents listed twice, connections configured twice.
    ///
    /// A TOML syntax error stops there: only syntax errors are reported then.
    pub fn parse(file: &str, text: &str) -> Result<Deployment, DeployError> {
        let mut r = Reader::new(file, text);
        let (root, errors) = DeTable::parse_recoverable(text);
        if !errors.is_empty() {
            for e in &errors {
                r.toml_error(e);
            }
            return Err(r.problems.into_error());
        }
        let mut d = Deployment {
            file: file.to_string(),
            ..Deployment::default()
        };
        for (key, value) in r.fields(root.get_ref(), SECTIONS, "at the top level") {
            match key.get_ref().as_ref() {
                "supervisor" => r.supervisor(value, &mut d.supervisor),
                "env" => d.env = r.env(value, "'env'", "in [env]"),
                "network" => r.network(
                    value,
                    &mut d.network,
                    &mut d.network_at,
                    Path::new(file).parent(),
                ),
                "broker" => {
                    d.broker_written = true;
                    d.broker = r.broker(value, Path::new(file).parent());
                }
                "hosts" => d.hosts = r.hosts(value),
                "processes" => d.processes = r.processes(value),
                _ => d.connections = r.connections(value),
            }
        }
        d.check_hosts(&mut r.problems);
        d.check_network(&mut r.problems);
        d.check_addresses(&mut r.problems);
        d.digest = Sha256::digest(text.as_bytes()).into();
        d.check_agents_placed_once(&mut r.problems);
        d.check_connections_once(&mut r.problems);
        d.check_broker(&mut r.problems);
        r.problems.finish()?;
        Ok(d)
    }

    /// Checks the file against an application's graph and resolves it: which agents exist, which
    /// streams and inputs, which processes, whether capacities suit the readers, which host each
    /// process runs on, and that no two listeners of one address (links into a host, the
    /// launchers' observation ports) share a port. Every problem is reported, sorted by
    /// position.
    pub fn plan(&self, info: &GraphInfo) -> Result<Plan, DeployError> {
        let mut problems = Problems::new(&self.file);

        let mut agent_process: Vec<String> =
            info.agents.iter().map(|a| a.process.clone()).collect();
        for p in &self.processes {
            for (agent, at) in &p.agents {
                match info.agent(agent) {
                    Some(i) => agent_process[i] = p.name.clone(),
                    None => problems.add(
                        *at,
                        format!(
                            "unknown agent '{agent}' in process '{}'{}; {}",
                            p.name,
                            did_you_mean(agent, info.agents.iter().map(|a| a.name.as_str())),
                            app_agents(info)
                        ),
                    ),
                }
            }
            let known = p.name == MAIN_PROCESS || info.processes.contains(&p.name);
            if p.agents.is_empty() && !known {
                problems.add(
                    p.at,
                    format!(
                        "process '{}' is not a process of the app and is given no agents{}; the \
                         app's processes are {} (a new process needs agents = [...])",
                        p.name,
                        did_you_mean(&p.name, info.processes.iter().map(String::as_str)),
                        list(&info.processes, "and")
                    ),
                );
            }
        }

        self.check_loops_kept_together(info, &agent_process, &mut problems);

        let mut edges: Vec<(usize, Policy)> =
            info.edges.iter().map(|e| (e.capacity, e.policy)).collect();
        let mut capacity_bytes: Vec<Option<usize>> = vec![None; info.edges.len()];
        let mut spin_us: Vec<Option<u64>> = vec![None; info.edges.len()];
        let mut broker: Vec<bool> = vec![false; info.edges.len()];
        // Where the capacity and byte bound each connection ends with were written.
        let mut capacity_at: Vec<Option<Pos>> = vec![None; info.edges.len()];
        let mut capacity_bytes_at: Vec<Option<Pos>> = vec![None; info.edges.len()];
        // Entries for a whole stream first, so that an entry for one connection wins.
        let stream_wide = self.connections.iter().filter(|c| c.to.is_none());
        let one = self.connections.iter().filter(|c| c.to.is_some());
        for c in stream_wide.chain(one) {
            let (stream, at) = &c.stream;
            let from: Vec<usize> = (0..info.edges.len())
                .filter(|&i| info.edges[i].stream == *stream)
                .collect();
            if from.is_empty() {
                problems.add(*at, unknown_stream(stream, info));
                continue;
            }
            let targets: Vec<usize> = match &c.to {
                None => from.clone(),
                Some((to, at)) => {
                    let hit: Vec<usize> = from
                        .iter()
                        .copied()
                        .filter(|&i| info.edges[i].input == *to)
                        .collect();
                    if hit.is_empty() {
                        let readers: Vec<&str> =
                            from.iter().map(|&i| info.edges[i].input.as_str()).collect();
                        problems.add(
                            *at,
                            format!(
                                "'{to}' does not read stream '{stream}'{}; its readers are {}",
                                did_you_mean(to, readers.iter().copied()),
                                list(&readers, "and")
                            ),
                        );
                    }
                    hit
                }
            };
            for i in targets {
                // Checked below, once every entry is applied: the value that won.
                if let Some((capacity, at)) = c.capacity {
                    edges[i].0 = capacity;
                    capacity_at[i] = Some(at);
                }
                if let Some((bytes, at)) = c.capacity_bytes {
                    capacity_bytes[i] = Some(bytes);
                    capacity_bytes_at[i] = Some(at);
                }
                if let Some(policy) = c.policy {
                    edges[i].1 = policy;
                }
                if let Some(us) = c.spin_us {
                    spin_us[i] = Some(us);
                }
                if let Some((b, _)) = c.broker {
                    broker[i] = b;
                }
            }
        }

        let mut processes = vec![MAIN_PROCESS.to_string()];
        for p in &agent_process {
            if !processes.contains(p) {
                processes.push(p.clone());
            }
        }
        let mut process_host = BTreeMap::new();
        for process in processes {
            let entry = self.processes.iter().find(|p| p.name == process);
            match entry.and_then(|p| p.host.as_ref()) {
                Some((host, _)) => {
                    process_host.insert(process, host.clone());
                }
                None => match self.default_host() {
                    Some(host) => {
                        process_host.insert(process, host.to_string());
                    }
                    None => {
                        let at = entry.map_or(self.hosts[0].at, |p| p.at);
                        let hint = match entry {
                            Some(_) => "add host = \"...\"".to_string(),
                            None => format!("add [processes.{process}] with host = \"...\""),
                        };
                        problems.add(
                            at,
                            format!(
                                "process '{process}' needs a host: there are several hosts and \
                                 none is named 'local' ({hint}); the hosts are {}",
                                list(&self.host_names(), "and")
                            ),
                        );
                    }
                },
            }
        }

        // The capacities a file gives, each against what its reader needs: the value that won
        // (an entry with `to` wins over its stream's entry, whatever their order).
        for (i, e) in info.edges.iter().enumerate() {
            let reader = &info.agents[e.to_agent];
            let input = &reader.inputs[e.to_port];
            if let Some(at) = capacity_at[i] {
                let capacity = edges[i].0;
                if capacity < input.min_capacity {
                    problems.add(
                        at,
                        format!(
                            "capacity {capacity} of connection {} is less than {}, the fewest \
                             elements agent '{}' needs on its input '{}'",
                            connection_label(&e.stream, Some(&e.input)),
                            input.min_capacity,
                            reader.name,
                            input.name
                        ),
                    );
                }
            }
            if let (Some(at), Some(bytes)) = (capacity_bytes_at[i], capacity_bytes[i]) {
                // As the graph counts it (see `graph`, "Capacity"): `size_of` each.
                let holds = (bytes / e.element_bytes.max(1)).max(1);
                if holds < input.min_capacity {
                    problems.add(
                        at,
                        format!(
                            "capacity_bytes {bytes} of connection {} holds {holds} elements of \
                             {} bytes, fewer than {}, the fewest elements agent '{}' needs on \
                             its input '{}'",
                            connection_label(&e.stream, Some(&e.input)),
                            e.element_bytes,
                            input.min_capacity,
                            reader.name,
                            input.name
                        ),
                    );
                }
            }
        }

        // Connections between two hosts that `between` pairs go through the broker, unless
        // their own entry says "direct".
        if let Some(b) = &self.broker {
            for (e, edge) in info.edges.iter().enumerate() {
                let host = |agent: usize| process_host.get(&agent_process[agent]);
                let (Some(from), Some(to)) = (host(edge.from_agent), host(edge.to_agent)) else {
                    continue;
                };
                let paired = from != to
                    && b.between
                        .iter()
                        .any(|(x, y)| (x == from && y == to) || (x == to && y == from));
                let said = self.connections.iter().any(|c| {
                    c.broker.is_some()
                        && c.stream.0 == edge.stream
                        && c.to.as_ref().is_none_or(|t| t.0 == edge.input)
                });
                if paired && !said {
                    broker[e] = true;
                }
            }
        }

        self.check_ports(info, &agent_process, &process_host, &broker, &mut problems);

        problems.finish()?;
        Ok(Plan {
            agent_process,
            edges,
            capacity_bytes,
            spin_us,
            broker,
            hosts: self
                .hosts
                .iter()
                .map(|h| HostPlan {
                    name: h.name.clone(),
                    address: h.address.clone(),
                    port: h.port,
                    observe_port: h.observe_port.map(|(p, _)| p),
                })
                .collect(),
            process_host,
            process_workers: self
                .processes
                .iter()
                .filter_map(|p| Some((p.name.clone(), p.workers?)))
                .collect(),
        })
    }

    /// Whether the launchers of this deployment answer each other on their observation ports:
    /// with several hosts and a secret to prove their requests.
    fn observed(&self) -> bool {
        self.hosts.len() > 1 && self.network.secret_file.is_some()
    }

    /// The ports every host listens on: the link of connection `i` into a host from another
    /// host on the host's `port + i` (within 65535), and, when the launchers [observe each
    /// other](Self::observed), each launcher on its observation port. Two of them on one port
    /// of one address cannot both listen: each such clash is a problem.
    fn check_ports(
        &self,
        info: &GraphInfo,
        agent_process: &[String],
        process_host: &BTreeMap<String, String>,
        broker: &[bool],
        problems: &mut Problems,
    ) {
        // Who listens on a port of an address: the first one named there, as a phrase.
        let mut taken: HashMap<(&str, usize), String> = HashMap::new();
        for (i, e) in info.edges.iter().enumerate() {
            // A connection through the broker has no listener: it takes no port.
            if broker[i] {
                continue;
            }
            let host_of = |agent: usize| process_host.get(&agent_process[agent]);
            let (Some(from), Some(to)) = (host_of(e.from_agent), host_of(e.to_agent)) else {
                continue;
            };
            let Some(h) = self.hosts.iter().find(|h| &h.name == to) else {
                continue;
            };
            if from == to {
                continue;
            }
            let port = usize::from(h.port) + i;
            let link = format!(
                "connection {} -> {} into host '{}' ({} + {i})",
                e.stream, e.input, h.name, h.port
            );
            if port > usize::from(u16::MAX) {
                problems.add(
                    h.at,
                    format!(
                        "host '{}': connection {} -> {} would listen on port {} + {i}, beyond \
                         65535; choose a lower 'port'",
                        h.name, e.stream, e.input, h.port
                    ),
                );
            } else if let Some(first) = taken.get(&(h.address.as_str(), port)) {
                problems.add(
                    h.port_at.unwrap_or(h.at),
                    format!(
                        "port {port} of {} is taken twice: by {first}, and by {link}; give the \
                         hosts of one address port ranges that do not overlap",
                        h.address
                    ),
                );
            } else {
                taken.insert((h.address.as_str(), port), link);
            }
        }
        if !self.observed() {
            return;
        }
        for h in &self.hosts {
            let (port, at) = h.observation_port();
            let at = at.unwrap_or(h.at);
            let Some(port) = port else {
                problems.add(
                    at,
                    format!(
                        "host '{}': port 1 leaves no port below it for the launcher's \
                         observation channel (port - 1 by default); set 'observe_port', or a \
                         'port' above 1",
                        h.name
                    ),
                );
                continue;
            };
            let observe = format!("the observation port of host '{}'", h.name);
            match taken.get(&(h.address.as_str(), usize::from(port))) {
                Some(first) => problems.add(
                    at,
                    format!(
                        "port {port} of {} is taken twice: by {first}, and by {observe}; set \
                         'observe_port' of host '{}' to a free port",
                        h.address, h.name
                    ),
                ),
                None => {
                    taken.insert((h.address.as_str(), usize::from(port)), observe);
                }
            }
        }
    }

    /// The settings of process `name`, with defaults for what the file does not say (also for a
    /// process the file does not mention): its restart policy, its environment (`[env]` with
    /// the process's own `env` on top) and its CPUs.
    pub fn process(&self, name: &str) -> ProcessSettings {
        let mut env = self.env.clone();
        match self.processes.iter().find(|p| p.name == name) {
            Some(p) => {
                env.extend(p.env.iter().map(|(k, v)| (k.clone(), v.clone())));
                ProcessSettings {
                    restart: p.restart.clone(),
                    env,
                    cpus: p
                        .cpus
                        .as_ref()
                        .map(|c| c.iter().map(|&(cpu, _)| cpu).collect()),
                    workers: p.workers,
                }
            }
            None => ProcessSettings {
                env,
                ..ProcessSettings::default()
            },
        }
    }

    /// Checks the `cpus` of the processes named in `processes` against `available`, the CPUs
    /// this machine lets the launcher use (its affinity mask): pinning a process to another
    /// CPU fails when it starts, so each such CPU is a problem at its place in the file.
    ///
    /// Only the machine knows its CPUs, so [`parse`](Deployment::parse) and
    /// [`plan`](Deployment::plan) cannot check this; the launcher does, for the processes of
    /// the host it checks or runs (those of other hosts are checked on their own machine).
    pub fn check_cpus(&self, processes: &[&str], available: &[usize]) -> Result<(), DeployError> {
        let mut problems = Problems::new(&self.file);
        for p in self
            .processes
            .iter()
            .filter(|p| processes.contains(&p.name.as_str()))
        {
            for &(cpu, at) in p.cpus.iter().flatten() {
                if !available.contains(&cpu) {
                    problems.add(
                        at,
                        format!(
                            "CPU {cpu} in the 'cpus' of process '{}' is not available on this \
                             machine; its CPUs are {}",
                            p.name,
                            cpu_ranges(available)
                        ),
                    );
                }
            }
        }
        problems.finish()
    }

    /// Reads the `[network]` secret file as a run does before it starts anything (links between
    /// hosts prove themselves with it; the live view's token is derived from it): it must
    /// exist, be a regular file only its owner may read or write, and hold a secret. A problem
    /// is at the place of `secret_file` in the file. Nothing to check without one.
    ///
    /// Only the machine that runs a host has its files: [`parse`](Deployment::parse) does not
    /// read them; the launcher calls this (`check` and `run`).
    pub fn check_secret_file(&self) -> Result<(), DeployError> {
        let mut problems = Problems::new(&self.file);
        if let Some(path) = &self.network.secret_file {
            if let Err(e) = crate::transport::tcp::auth::Secret::from_file(path) {
                problems.add(
                    self.network_at.secret_file,
                    format!("[network] secret_file: {e}"),
                );
            }
        }
        problems.finish()
    }

    /// Loads the `[network]` TLS files as a run does before it starts links between hosts: the
    /// certificate, the key (only its owner may read it) and the CA, the certificate signed by
    /// the CA. A problem is at the place of the field naming the file at fault (`tls_cert`
    /// when the certificate and key do not match; the first TLS field for any other refusal).
    /// Nothing to check without TLS.
    pub fn check_tls_files(&self) -> Result<(), DeployError> {
        use crate::transport::tcp::tls::{FileKind, TlsConfig, TlsFiles};
        let Some(t) = &self.network.tls else {
            return Ok(());
        };
        let mut problems = Problems::new(&self.file);
        let files = TlsFiles {
            cert: t.cert.clone(),
            key: t.key.clone(),
            ca: t.ca.clone(),
        };
        if let Err(e) = TlsConfig::load(&files) {
            let at = &self.network_at.tls;
            let (field, at) = match e.file() {
                Some(FileKind::Cert) => ("tls_cert", at[0]),
                Some(FileKind::Key) => ("tls_key", at[1]),
                Some(FileKind::Ca) => ("tls_ca", at[2]),
                None => ("TLS", at.iter().copied().min().unwrap_or_default()),
            };
            problems.add(at, format!("[network] {field}: {e}"));
        }
        problems.finish()
    }

    /// Every host `(name, address)` in the file's order; when the file names none, the one
    /// default host `("local", "127.0.0.1")`.
    pub fn hosts(&self) -> Vec<(&str, &str)> {
        if self.hosts.is_empty() {
            vec![(LOCAL_HOST, LOCAL_ADDRESS)]
        } else {
            self.hosts
                .iter()
                .map(|h| (h.name.as_str(), h.address.as_str()))
                .collect()
        }
    }

    fn host_names(&self) -> Vec<&str> {
        self.hosts().into_iter().map(|(name, _)| name).collect()
    }

    /// The host of a process without `host`: `local` if it exists, else the only host.
    fn default_host(&self) -> Option<&str> {
        let names = self.host_names();
        if names.contains(&LOCAL_HOST) {
            Some(LOCAL_HOST)
        } else if names.len() == 1 {
            Some(names[0])
        } else {
            None
        }
    }

    fn check_hosts(&self, problems: &mut Problems) {
        let names = self.host_names();
        for p in &self.processes {
            if let Some((host, at)) = &p.host {
                if !names.contains(&host.as_str()) {
                    let default = if self.hosts.is_empty() {
                        " (the default; declare hosts with [hosts.NAME])"
                    } else {
                        ""
                    };
                    problems.add(
                        *at,
                        format!(
                            "unknown host '{host}' in process '{}'{}; the hosts are {}{default}",
                            p.name,
                            did_you_mean(host, names.iter().copied()),
                            list(&names, "and")
                        ),
                    );
                }
            }
        }
    }

    /// `transport = "broker"` needs a `[broker]`; `between` names hosts of the file. A
    /// `[broker]` that is written but wrong has problems of its own: nothing more is said here.
    fn check_broker(&self, problems: &mut Problems) {
        if self.broker.is_none() {
            if self.broker_written {
                return;
            }
            for c in &self.connections {
                if let Some((true, at)) = c.broker {
                    problems.add(
                        at,
                        format!(
                            "'transport' in connection {} is \"broker\", but the file has no [broker] section (add one with url = \"nats://host:4222\")",
                            c.label()
                        ),
                    );
                }
            }
            return;
        }
        let b = self.broker.as_ref().expect("checked");
        let names = self.host_names();
        for ((x, y), at) in b.between.iter().zip(&b.between_at) {
            for h in [x, y] {
                if !names.contains(&h.as_str()) {
                    problems.add(
                        *at,
                        format!(
                            "unknown host '{h}' in 'between' in [broker]{}; the hosts are {}",
                            did_you_mean(h, names.iter().copied()),
                            list(&names, "and")
                        ),
                    );
                }
            }
        }
    }

    /// Links between hosts need a secret, unless the file says they may run without one.
    fn check_network(&self, problems: &mut Problems) {
        if self.hosts.len() < 2 || self.network.secret_file.is_some() || self.network.insecure {
            return;
        }
        problems.add(
            self.hosts[1].at,
            format!(
                "the deployment has several hosts ({}) but no secret for the links between \
                 them: set secret_file in [network] (see docs/security.md), or insecure = true \
                 to run them without authentication",
                list(&self.host_names(), "and")
            ),
        );
    }

    /// With several hosts, each host's address is where the others connect (its links, its
    /// launcher's observation port): an address that means "every interface" (`0.0.0.0`,
    /// `::`) names no host to connect to (the others would reach themselves).
    fn check_addresses(&self, problems: &mut Problems) {
        if self.hosts.len() < 2 {
            return;
        }
        for h in &self.hosts {
            if h.address
                .parse::<std::net::IpAddr>()
                .is_ok_and(|a| a.is_unspecified())
            {
                problems.add(
                    h.address_at,
                    format!(
                        "'address' in host '{}' is {}, which the other hosts cannot connect to: \
                         give an address of the host's own (its listeners bind it, the other \
                         hosts connect to it)",
                        h.name, h.address
                    ),
                );
            }
        }
    }

    fn check_agents_placed_once(&self, problems: &mut Problems) {
        let mut placed: Vec<(&str, &str, Pos)> = self
            .processes
            .iter()
            .flat_map(|p| {
                p.agents
                    .iter()
                    .map(|(a, at)| (a.as_str(), p.name.as_str(), *at))
            })
            .collect();
        placed.sort_by_key(|&(_, _, at)| at);
        let mut first: HashMap<&str, (&str, Pos)> = HashMap::new();
        for (agent, process, at) in placed {
            match first.get(agent) {
                None => {
                    first.insert(agent, (process, at));
                }
                Some(&(p, first_at)) if p == process => problems.add(
                    at,
                    format!(
                        "agent '{agent}' is listed twice in process '{process}' (first on line {})",
                        first_at.line
                    ),
                ),
                Some(&(p, first_at)) => problems.add(
                    at,
                    format!(
                        "agent '{agent}' is placed twice: in process '{process}' here, and in \
                         process '{p}' on line {}",
                        first_at.line
                    ),
                ),
            }
        }
    }

    /// A feedback loop must stay in one process: an agent this file moves away from another
    /// agent of its loop is reported at the line that moves it (the graph's own check would
    /// only name the connection, with no line of the file).
    fn check_loops_kept_together(
        &self,
        info: &GraphInfo,
        agent_process: &[String],
        problems: &mut Problems,
    ) {
        let moved: HashMap<usize, Pos> = self
            .processes
            .iter()
            .flat_map(|p| p.agents.iter())
            .filter_map(|(agent, at)| info.agent(agent).map(|i| (i, *at)))
            .collect();
        if moved.is_empty() {
            return;
        }
        let component = crate::info::loop_components(
            info.agents.len(),
            info.edges.iter().map(|e| (e.from_agent, e.to_agent)),
        );
        let mut reported: HashSet<usize> = HashSet::new();
        for e in &info.edges {
            let (from, to) = (e.from_agent, e.to_agent);
            if component[from] != component[to] || agent_process[from] == agent_process[to] {
                continue;
            }
            // Reported at the agent this file moved (the later line if it moved both).
            let Some((agent, at)) = [from, to]
                .into_iter()
                .filter_map(|a| moved.get(&a).map(|at| (a, *at)))
                .max_by_key(|&(_, at)| at)
            else {
                continue;
            };
            if !reported.insert(agent) {
                continue;
            }
            let other = if agent == from { to } else { from };
            problems.add(
                at,
                format!(
                    "agent '{}' is in a feedback loop with agent '{}', which runs in process \
                     '{}', not '{}': connection {} -> {} would cross processes; keep every \
                     agent of a loop in one process",
                    info.agents[agent].name,
                    info.agents[other].name,
                    agent_process[other],
                    agent_process[agent],
                    e.stream,
                    e.input
                ),
            );
        }
    }

    fn check_connections_once(&self, problems: &mut Problems) {
        let mut seen: HashMap<(&str, Option<&str>), Pos> = HashMap::new();
        for c in &self.connections {
            let key = (c.stream.0.as_str(), c.to.as_ref().map(|t| t.0.as_str()));
            match seen.get(&key) {
                None => {
                    seen.insert(key, c.stream.1);
                }
                Some(first) => problems.add(
                    c.stream.1,
                    format!(
                        "connection {} is configured twice (first on line {})",
                        c.label(),
                        first.line
                    ),
                ),
            }
        }
    }
}

/// The message for a `[[connections]]` stream that has no connections.
fn unknown_stream(stream: &str, info: &GraphInfo) -> String {
    let is_output = info.agents.iter().any(|a| {
        a.outputs
            .iter()
            .any(|o| stream == format!("{}.{}", a.name, o.name))
    });
    if is_output {
        return format!("stream '{stream}' has no connections: no agent reads it");
    }
    let mut streams: Vec<&str> = Vec::new();
    for e in &info.edges {
        if !streams.contains(&e.stream.as_str()) {
            streams.push(&e.stream);
        }
    }
    let listed = if streams.len() <= 12 {
        format!("the app's connected streams are {}", list(&streams, "and"))
    } else {
        format!("the app has {} connected streams", streams.len())
    };
    format!(
        "unknown stream '{stream}'{}; {listed}",
        did_you_mean(stream, streams.iter().copied())
    )
}

/// "the app's agents are 'a', 'b' and 'c'" (or their number, when there are many).
fn app_agents(info: &GraphInfo) -> String {
    let names: Vec<&str> = info.agents.iter().map(|a| a.name.as_str()).collect();
    if names.len() <= 12 {
        format!("the app's agents are {}", list(&names, "and"))
    } else {
        format!(
            "the app has {} agents (`iotstream graph` lists them)",
            names.len()
        )
    }
}

/// `'a', 'b' and 'c'` (or with `or`).
fn list<S: AsRef<str>>(names: &[S], last: &str) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("'{}'", n.as_ref())).collect();
    match quoted.split_last() {
        None => "none".to_string(),
        Some((only, [])) => only.clone(),
        Some((end, rest)) => format!("{} {last} {end}", rest.join(", ")),
    }
}

/// ` (did you mean 'x'?)` for the candidate closest to `name`, if it is close; else empty.
fn did_you_mean<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let limit = (name.chars().count() / 3).clamp(1, 3);
    candidates
        .map(|c| (distance(name, c), c))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, c)| format!(" (did you mean '{c}'?)"))
        .unwrap_or_default()
}

/// The edit distance between `a` and `b` in characters: insertions, deletions, substitutions
/// and swaps of two neighbours (a typo such as `egde` is one edit from `edge`).
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    d[0] = (0..=b.len()).collect();
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// CPU numbers as ranges: `0-3,6,8-9` (`none` for an empty list).
fn cpu_ranges(cpus: &[usize]) -> String {
    let mut sorted = cpus.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < sorted.len() {
        let start = sorted[i];
        while i + 1 < sorted.len() && sorted[i + 1] == sorted[i] + 1 {
            i += 1;
        }
        out.push(match sorted[i] {
            end if end == start => start.to_string(),
            end => format!("{start}-{end}"),
        });
        i += 1;
    }
    if out.is_empty() {
        "none".to_string()
    } else {
        out.join(",")
    }
}

/// An IP address, or a DNS name (letters, digits, '-' and '.', labels of 1 to 63) whose last
/// label is not all digits (RFC 3696, 2): the resolver reads "192.168.1", "127.1" or
/// "10.0.0.010" (octal) as other IPv4 addresses, so such a name would reach another machine
/// than the one it seems to name.
fn valid_address(address: &str) -> bool {
    address.parse::<std::net::IpAddr>().is_ok()
        || (address.len() <= 253
            && address.split('.').all(|label| {
                (1..=63).contains(&label.len())
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            })
            && !address
                .rsplit('.')
                .next()
                .is_some_and(|last| last.chars().all(|c| c.is_ascii_digit())))
}

/// Whether `name` is a valid process or host name: 1 to 64 ASCII letters, digits, `_` or `-`
/// (the rule of [`Graph::place_in_process`](crate::Graph::place_in_process)).
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Problems found so far, with their positions.
struct Problems {
    file: String,
    list: Vec<(Pos, String)>,
}

impl Problems {
    fn new(file: &str) -> Self {
        Problems {
            file: file.to_string(),
            list: Vec::new(),
        }
    }

    /// Adds a problem; its message stays on one line whatever names it quotes.
    fn add(&mut self, at: Pos, message: String) {
        let message = message.replace('\n', "\\n").replace('\r', "\\r");
        self.list.push((at, message));
    }

    /// The problems sorted by position (keeping the order of those at one position), each once.
    fn into_error(mut self) -> DeployError {
        self.list.sort_by_key(|&(at, _)| at);
        let mut seen = std::collections::HashSet::new();
        self.list.retain(|p| seen.insert(p.clone()));
        DeployError {
            problems: self
                .list
                .into_iter()
                .map(|(at, message)| Problem {
                    file: self.file.clone(),
                    line: at.line,
                    column: at.column,
                    message,
                })
                .collect(),
        }
    }

    fn finish(self) -> Result<(), DeployError> {
        if self.list.is_empty() {
            Ok(())
        } else {
            Err(self.into_error())
        }
    }
}

type Key<'i> = Spanned<DeString<'i>>;
type Value<'i> = Spanned<DeValue<'i>>;

/// Walks the parsed TOML, collecting settings and problems.
struct Reader<'a> {
    text: &'a str,
    line_starts: Vec<usize>,
    problems: Problems,
}

impl<'a> Reader<'a> {
    fn new(file: &str, text: &'a str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Reader {
            text,
            line_starts,
            problems: Problems::new(file),
        }
    }

    /// The line and column of byte `offset`.
    fn pos(&self, offset: usize) -> Pos {
        let line = self.line_starts.partition_point(|&s| s <= offset);
        let start = self.line_starts[line - 1];
        let column = self
            .text
            .get(start..offset)
            .map_or(offset.saturating_sub(start), |s| s.chars().count());
        Pos {
            line,
            column: column + 1,
        }
    }

    fn error(&mut self, span: Range<usize>, message: String) {
        let at = self.pos(span.start);
        self.problems.add(at, message);
    }

    fn toml_error(&mut self, e: &toml::de::Error) {
        let span = e.span().unwrap_or(0..0);
        // One line per problem: the parser's message, without its own position and snippet.
        let mut message = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
        if message == "duplicate key" {
            if let Some(key) = self.text.get(span.clone()).filter(|k| !k.is_empty()) {
                message = format!("duplicate key '{}'", key.trim_matches(['"', '\'']));
            }
        }
        self.error(span, format!("invalid TOML: {message}"));
    }

    /// What a value is, for "found ...": its type, and its text when short.
    fn found(&self, v: &Value<'_>) -> String {
        match v.get_ref() {
            DeValue::Table(_) => "a table".to_string(),
            DeValue::Array(_) => "an array".to_string(),
            other => {
                let text = self.text.get(v.span()).unwrap_or("");
                if text.is_empty() || text.len() > 40 || text.contains('\n') {
                    other.type_str().to_string()
                } else {
                    format!("{} {text}", other.type_str())
                }
            }
        }
    }

    /// The entries of `table` named in `accepted`, in the file's order; each other one is a
    /// problem.
    fn fields<'t, 'i>(
        &mut self,
        table: &'t DeTable<'i>,
        accepted: &[&str],
        place: &str,
    ) -> Vec<(&'t Key<'i>, &'t Value<'i>)> {
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        entries.retain(|(k, _)| {
            let name: &str = k.get_ref();
            if accepted.contains(&name) {
                return true;
            }
            self.error(
                k.span(),
                format!(
                    "unknown field '{name}' {place}{}; the accepted fields are {}",
                    did_you_mean(name, accepted.iter().copied()),
                    list(accepted, "and")
                ),
            );
            false
        });
        entries
    }

    fn table<'t, 'i>(&mut self, v: &'t Value<'i>, what: &str) -> Option<&'t DeTable<'i>> {
        match v.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                let found = self.found(v);
                self.error(v.span(), format!("{what} must be a table, found {found}"));
                None
            }
        }
    }

    fn array<'t, 'i>(&mut self, v: &'t Value<'i>, what: &str) -> Option<&'t [Value<'i>]> {
        match v.get_ref() {
            DeValue::Array(a) => Some(a),
            _ => {
                let found = self.found(v);
                self.error(v.span(), format!("{what} must be an array, found {found}"));
                None
            }
        }
    }

    fn string(&mut self, v: &Value<'_>, what: &str) -> Option<String> {
        match v.get_ref() {
            DeValue::String(s) => Some(s.to_string()),
            _ => {
                let found = self.found(v);
                self.error(v.span(), format!("{what} must be a string, found {found}"));
                None
            }
        }
    }

    /// An integer from `min` to `max`.
    fn int(&mut self, v: &Value<'_>, what: &str, min: u64, max: u64) -> Option<u64> {
        let DeValue::Integer(i) = v.get_ref() else {
            let found = self.found(v);
            self.error(
                v.span(),
                format!("{what} must be an integer, found {found}"),
            );
            return None;
        };
        match i128::from_str_radix(i.as_str(), i.radix()) {
            Ok(n) if n < i128::from(min) => {
                self.error(
                    v.span(),
                    format!("{what} must be at least {min}, found {n}"),
                );
                None
            }
            Ok(n) if n <= i128::from(max) => Some(n as u64),
            _ => {
                let text = self.text.get(v.span()).unwrap_or_default();
                self.error(
                    v.span(),
                    format!("{what} must be at most {max}, found {text}"),
                );
                None
            }
        }
    }

    /// One of `accepted`, by index.
    fn choice(
        &mut self,
        v: &Value<'_>,
        field: &str,
        place: &str,
        accepted: &[&str],
    ) -> Option<usize> {
        let s = self.string(v, &format!("'{field}' {place}"))?;
        let found = accepted.iter().position(|a| *a == s);
        if found.is_none() {
            self.error(
                v.span(),
                format!(
                    "unknown {field} '{s}' {place}{}; expected {}",
                    did_you_mean(&s, accepted.iter().copied()),
                    list(accepted, "or")
                ),
            );
        }
        found
    }

    /// Checks a process or host name (the key), naming it `kind`.
    fn name(&mut self, key: &Key<'_>, kind: &str) {
        let name: &str = key.get_ref();
        if !valid_name(name) {
            self.error(
                key.span(),
                format!(
                    "invalid {kind} name '{name}': a {kind} name is 1 to 64 ASCII letters, \
                     digits, '_' or '-'"
                ),
            );
        }
    }

    fn supervisor(&mut self, v: &Value<'_>, s: &mut SupervisorSettings) {
        let Some(t) = self.table(v, "'supervisor'") else {
            return;
        };
        for (key, value) in self.fields(t, SUPERVISOR_FIELDS, "in [supervisor]") {
            let field: &str = key.get_ref();
            let what = format!("'{field}' in [supervisor]");
            if field == "drain_timeout_ms" {
                if let Some(ms) = self.int(value, &what, 0, TOML_MAX) {
                    s.drain_timeout = Duration::from_millis(ms);
                }
            } else if let Some(ms) = self.int(value, &what, 1, TOML_MAX) {
                s.ready_timeout = Duration::from_millis(ms);
            }
        }
    }

    fn network(
        &mut self,
        v: &Value<'_>,
        n: &mut NetworkSettings,
        at_files: &mut NetworkFilesAt,
        folder: Option<&Path>,
    ) {
        let Some(t) = self.table(v, "'network'") else {
            return;
        };
        let mut tls: [Option<(PathBuf, Pos)>; 3] = [None, None, None];
        for (key, value) in self.fields(t, NETWORK_FIELDS, "in [network]") {
            let field: &str = key.get_ref();
            let what = format!("'{field}' in [network]");
            let ms = |r: &mut Self, min| {
                r.int(value, &what, min, TOML_MAX)
                    .map(Duration::from_millis)
            };
            match field {
                "secret_file" | "tls_cert" | "tls_key" | "tls_ca" => {
                    let Some(s) = self.string(value, &what) else {
                        continue;
                    };
                    if s.is_empty() {
                        self.error(value.span(), format!("{what} must not be empty"));
                        continue;
                    }
                    // Relative to the deployment file, wherever the launcher is started.
                    let path = match folder {
                        Some(f) if Path::new(&s).is_relative() => f.join(&s),
                        _ => PathBuf::from(&s),
                    };
                    let at = self.pos(key.span().start);
                    match field {
                        "secret_file" => {
                            n.secret_file = Some(path);
                            at_files.secret_file = at;
                        }
                        "tls_cert" => tls[0] = Some((path, at)),
                        "tls_key" => tls[1] = Some((path, at)),
                        _ => tls[2] = Some((path, at)),
                    }
                }
                "insecure" => match value.get_ref() {
                    DeValue::Boolean(b) => n.insecure = *b,
                    _ => {
                        let found = self.found(value);
                        self.error(
                            value.span(),
                            format!("{what} must be true or false, found {found}"),
                        );
                    }
                },
                "connect_wait_ms" => n.connect_wait = ms(self, 0).unwrap_or(n.connect_wait),
                "heartbeat_ms" => n.heartbeat = ms(self, 10).unwrap_or(n.heartbeat),
                "peer_timeout_ms" => n.peer_timeout = ms(self, 10).unwrap_or(n.peer_timeout),
                "reconnect_limit_ms" => {
                    n.reconnect_limit = ms(self, 0).unwrap_or(n.reconnect_limit)
                }
                _ => {
                    // A link always sends one batch when nothing is unacknowledged, whatever
                    // its size: the bound need not hold the largest element.
                    if let Some(b) = self.int(value, &what, 64 << 10, 1 << 40) {
                        n.unacked_bytes = b as usize;
                    }
                }
            }
        }
        let given: Vec<&str> = ["tls_cert", "tls_key", "tls_ca"]
            .iter()
            .zip(&tls)
            .filter(|(_, t)| t.is_some())
            .map(|(name, _)| *name)
            .collect();
        match tls {
            [Some(cert), Some(key), Some(ca)] => {
                at_files.tls = [cert.1, key.1, ca.1];
                n.tls = Some(TlsPaths {
                    cert: cert.0,
                    key: key.0,
                    ca: ca.0,
                })
            }
            [None, None, None] => {}
            _ => {
                let at = tls
                    .iter()
                    .flatten()
                    .map(|t| t.1)
                    .min()
                    .expect("one is given");
                let missing: Vec<&str> = ["tls_cert", "tls_key", "tls_ca"]
                    .into_iter()
                    .filter(|f| !given.contains(f))
                    .collect();
                self.problems.add(
                    at,
                    format!(
                        "TLS in [network] needs 'tls_cert', 'tls_key' and 'tls_ca' together: \
                         {} missing",
                        list(&missing, "and")
                    ),
                );
            }
        }
        if n.peer_timeout <= n.heartbeat {
            let at = self.pos(v.span().start);
            self.problems.add(
                at,
                format!(
                    "'peer_timeout_ms' in [network] ({} ms) must be longer than 'heartbeat_ms' \
                     ({} ms): a peer would be taken as gone between two heartbeats",
                    n.peer_timeout.as_millis(),
                    n.heartbeat.as_millis()
                ),
            );
        }
    }

    /// Environment variables; `what` names the table, `place` says where a variable is.
    fn env(&mut self, v: &Value<'_>, what: &str, place: &str) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        let Some(t) = self.table(v, what) else {
            return env;
        };
        let mut entries: Vec<_> = t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            let name: &str = key.get_ref();
            if name.is_empty() {
                self.error(
                    key.span(),
                    format!("empty environment variable name {place}"),
                );
                continue;
            }
            if name.contains(['=', '\0']) {
                self.error(
                    key.span(),
                    format!(
                        "environment variable name '{}' {place} must not contain '=' or NUL",
                        name.escape_debug()
                    ),
                );
                continue;
            }
            if name.starts_with(RESERVED_ENV_PREFIX) {
                // The launcher sets these to tell a process its role: one set by the file would
                // change what the process does (IOTSTREAM_DESCRIBE: describe and exit, say).
                self.error(
                    key.span(),
                    format!(
                        "environment variable '{name}' {place} is reserved: names starting with \
                         {RESERVED_ENV_PREFIX} are set by iotstream itself"
                    ),
                );
                continue;
            }
            let Some(s) = self.string(value, &format!("environment variable '{name}' {place}"))
            else {
                continue;
            };
            if s.contains('\0') {
                self.error(
                    value.span(),
                    format!(
                        "the value of environment variable '{name}' {place} must not contain NUL"
                    ),
                );
                continue;
            }
            env.insert(name.to_string(), s);
        }
        env
    }

    fn hosts(&mut self, v: &Value<'_>) -> Vec<HostEntry> {
        let mut hosts = Vec::new();
        let Some(t) = self.table(v, "'hosts'") else {
            return hosts;
        };
        let mut entries: Vec<_> = t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            self.name(key, "host");
            let name = key.get_ref().to_string();
            let place = format!("in host '{name}'");
            let Some(t) = self.table(value, &format!("host '{name}'")) else {
                continue;
            };
            let mut address = None;
            let mut address_at = self.pos(key.span().start);
            let mut port = DEFAULT_PORT;
            let mut port_at = None;
            let mut observe_port = None;
            for (key, value) in self.fields(t, HOST_FIELDS, &place) {
                let field: &str = key.get_ref();
                let what = format!("'{field}' {place}");
                let at = self.pos(value.span().start);
                match field {
                    "port" => {
                        if let Some(p) = self.int(value, &what, 1, u64::from(u16::MAX)) {
                            port = p as u16;
                            port_at = Some(at);
                        }
                        continue;
                    }
                    "observe_port" => {
                        if let Some(p) = self.int(value, &what, 1, u64::from(u16::MAX)) {
                            observe_port = Some((p as u16, at));
                        }
                        continue;
                    }
                    _ => {}
                }
                address_at = at;
                address = self.string(value, &what);
                match address.as_deref() {
                    Some("") => self.error(value.span(), format!("{what} must not be empty")),
                    Some(a) if !valid_address(a) => {
                        let numeric = a.rsplit('.').next().is_some_and(|last| {
                            !last.is_empty() && last.chars().all(|c| c.is_ascii_digit())
                        });
                        let why = if numeric && !a.contains(':') {
                            ": not an IPv4 address (four numbers 0-255, no leading zero), and \
                             a host name cannot end in a number (a resolver would read it as \
                             another address)"
                        } else {
                            ""
                        };
                        self.error(
                            value.span(),
                            format!(
                                "{what} must be an IP address or a host name, without a port \
                                 (set 'port'), found '{}'{why}",
                                a.escape_debug()
                            ),
                        )
                    }
                    _ => {}
                }
            }
            if !t.iter().any(|(k, _)| k.get_ref() == "address") {
                self.error(
                    key.span(),
                    format!("host '{name}' has no 'address' (it is required)"),
                );
            }
            hosts.push(HostEntry {
                at: self.pos(key.span().start),
                name,
                address: address.unwrap_or_default(),
                address_at,
                port,
                port_at,
                observe_port,
            });
        }
        hosts
    }

    fn processes(&mut self, v: &Value<'_>) -> Vec<ProcessEntry> {
        let mut processes = Vec::new();
        let Some(t) = self.table(v, "'processes'") else {
            return processes;
        };
        let mut entries: Vec<_> = t.iter().collect();
        entries.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in entries {
            self.name(key, "process");
            let name = key.get_ref().to_string();
            let place = format!("in process '{name}'");
            let mut p = ProcessEntry {
                name,
                at: self.pos(key.span().start),
                host: None,
                agents: Vec::new(),
                restart: Restart::Never,
                cpus: None,
                workers: None,
                env: BTreeMap::new(),
            };
            let Some(t) = self.table(value, &format!("process '{}'", p.name)) else {
                continue;
            };
            // `None`: absent; `Some(None)`: invalid.
            let mut restart: Option<Option<usize>> = None;
            // The key's span and the value, if valid.
            let mut max_restarts: Option<(Range<usize>, Option<u64>)> = None;
            let mut backoff: Option<(Range<usize>, Option<u64>)> = None;
            let mut max_backoff: Option<(Range<usize>, Option<u64>)> = None;
            for (key, value) in self.fields(t, PROCESS_FIELDS, &place) {
                let field: &str = key.get_ref();
                let what = format!("'{field}' {place}");
                match field {
                    "host" => {
                        p.host = self
                            .string(value, &what)
                            .map(|h| (h, self.pos(value.span().start)));
                    }
                    "agents" => p.agents = self.agents(value, &place),
                    "restart" => restart = Some(self.choice(value, field, &place, RESTARTS)),
                    "max_restarts" => {
                        let n = self.int(value, &what, 0, u64::from(u32::MAX));
                        max_restarts = Some((key.span(), n));
                    }
                    "backoff_ms" => {
                        backoff = Some((key.span(), self.int(value, &what, 0, TOML_MAX)))
                    }
                    "max_backoff_ms" => {
                        max_backoff = Some((key.span(), self.int(value, &what, 0, TOML_MAX)));
                    }
                    "cpus" => p.cpus = self.cpus(value, &what, &p.name),
                    "workers" => {
                        p.workers = self
                            .int(value, &what, 1, MAX_WORKERS as u64)
                            .map(|n| n as usize);
                    }
                    _ => {
                        p.env = self.env(
                            value,
                            &format!("'env' {place}"),
                            &format!("in the env of process '{}'", p.name),
                        );
                    }
                }
            }
            match restart {
                Some(Some(1)) => {
                    let value = |o: &Option<(Range<usize>, Option<u64>)>, default| {
                        o.as_ref().and_then(|(_, v)| *v).unwrap_or(default)
                    };
                    let (b, mb) = (
                        value(&backoff, BACKOFF_MS),
                        value(&max_backoff, MAX_BACKOFF_MS),
                    );
                    // A field given with an invalid value is reported already.
                    let given = |o: &Option<(Range<usize>, Option<u64>)>| match o {
                        Some((span, Some(_))) => Some(span.clone()),
                        _ => None,
                    };
                    if mb < b {
                        match (given(&backoff), given(&max_backoff)) {
                            (b_given, Some(span)) => {
                                let default = if b_given.is_some() {
                                    ""
                                } else {
                                    ", the default"
                                };
                                self.error(
                                    span,
                                    format!(
                                        "'max_backoff_ms' {place} ({mb}) is less than \
                                         'backoff_ms' ({b}{default})"
                                    ),
                                );
                            }
                            (Some(span), None) if max_backoff.is_none() => self.error(
                                span,
                                format!(
                                    "'backoff_ms' {place} ({b}) is more than 'max_backoff_ms' \
                                     ({mb}, the default)"
                                ),
                            ),
                            _ => {}
                        }
                    }
                    p.restart = Restart::OnFailure {
                        max_restarts: value(&max_restarts, u64::from(MAX_RESTARTS)) as u32,
                        backoff: Duration::from_millis(b),
                        max_backoff: Duration::from_millis(mb),
                    };
                }
                Some(None) => {} // an invalid `restart` is reported already
                _ => {
                    let options = [
                        ("max_restarts", max_restarts),
                        ("backoff_ms", backoff),
                        ("max_backoff_ms", max_backoff),
                    ];
                    for (field, option) in options {
                        if let Some((span, _)) = option {
                            self.error(
                                span,
                                format!(
                                    "'{field}' {place} only applies with restart = \"on-failure\" \
                                     (restart is \"never\")"
                                ),
                            );
                        }
                    }
                }
            }
            processes.push(p);
        }
        processes
    }

    fn agents(&mut self, v: &Value<'_>, place: &str) -> Vec<(String, Pos)> {
        let Some(items) = self.array(v, &format!("'agents' {place}")) else {
            return Vec::new();
        };
        let what = format!("an agent name in 'agents' {place}");
        items
            .iter()
            .filter_map(|item| {
                let name = self.string(item, &what)?;
                Some((name, self.pos(item.span().start)))
            })
            .collect()
    }

    /// `what` names the field; `process` is the process's name.
    fn cpus(&mut self, v: &Value<'_>, what: &str, process: &str) -> Option<Vec<(usize, Pos)>> {
        let items = self.array(v, what)?;
        if items.is_empty() {
            self.error(
                v.span(),
                format!("{what} is empty: list at least one CPU, or leave 'cpus' out to not pin"),
            );
            return None;
        }
        let index = format!("a CPU index in the 'cpus' of process '{process}'");
        let mut cpus = Vec::new();
        for item in items {
            let Some(cpu) = self.int(item, &index, 0, MAX_CPU) else {
                continue;
            };
            let cpu = cpu as usize;
            if cpus.iter().any(|&(c, _)| c == cpu) {
                self.error(
                    item.span(),
                    format!("CPU {cpu} is listed twice in the 'cpus' of process '{process}'"),
                );
            } else {
                cpus.push((cpu, self.pos(item.span().start)));
            }
        }
        Some(cpus)
    }

    fn broker(&mut self, v: &Value<'_>, folder: Option<&Path>) -> Option<BrokerSection> {
        let t = self.table(v, "'broker'")?;
        let mut b = BrokerSection {
            url: String::new(),
            creds: None,
            token_file: None,
            user: None,
            tls_ca: None,
            tls_client: None,
            max_bytes: 256 << 20,
            max_age: None,
            max_messages: None,
            max_pending: 64,
            connect_wait: Duration::from_secs(60),
            between: Vec::new(),
            between_at: Vec::new(),
            file: self.problems.file.clone(),
            token_file_at: Pos::default(),
            password_file_at: Pos::default(),
            creds_at: Pos::default(),
            tls_ca_at: Pos::default(),
            tls_client_at: (Pos::default(), Pos::default()),
        };
        let mut client: [Option<(PathBuf, Pos)>; 2] = [None, None];
        // `user` and `password_file`, each with where it is written.
        let mut user_name: Option<(String, Pos)> = None;
        let mut password: Option<(PathBuf, Pos)> = None;
        let mut url = false;
        for (key, value) in self.fields(t, BROKER_FIELDS, "in [broker]") {
            let field: &str = key.get_ref();
            let what = format!("'{field}' in [broker]");
            match field {
                "url" => {
                    let Some(u) = self.string(value, &what) else {
                        continue;
                    };
                    url = true;
                    match crate::transport::broker::url_problem(&u) {
                        Some(problem) => self.error(value.span(), format!("{what} {problem}")),
                        None => b.url = u,
                    }
                }
                "user" => {
                    let Some(name) = self.string(value, &what) else {
                        continue;
                    };
                    if name.is_empty() {
                        self.error(value.span(), format!("{what} must not be empty"));
                        continue;
                    }
                    user_name = Some((name, self.pos(key.span().start)));
                }
                "creds" | "token_file" | "password_file" | "tls_ca" | "tls_cert" | "tls_key" => {
                    let Some(s) = self.string(value, &what) else {
                        continue;
                    };
                    if s.is_empty() {
                        self.error(value.span(), format!("{what} must not be empty"));
                        continue;
                    }
                    let path = match folder {
                        Some(f) if Path::new(&s).is_relative() => f.join(&s),
                        _ => PathBuf::from(&s),
                    };
                    let at = self.pos(key.span().start);
                    match field {
                        "creds" => {
                            b.creds = Some(path);
                            b.creds_at = at;
                        }
                        "token_file" => {
                            b.token_file = Some(path);
                            b.token_file_at = at;
                        }
                        "password_file" => password = Some((path, at)),
                        "tls_ca" => {
                            b.tls_ca = Some(path);
                            b.tls_ca_at = at;
                        }
                        "tls_cert" => client[0] = Some((path, at)),
                        _ => client[1] = Some((path, at)),
                    }
                }
                "max_bytes" => {
                    if let Some(n) = self.int(value, &what, 1 << 20, i64::MAX as u64) {
                        b.max_bytes = n;
                    }
                }
                "max_age_s" => {
                    if let Some(n) = self.int(value, &what, 0, 100 * 365 * 86_400) {
                        b.max_age = (n > 0).then(|| Duration::from_secs(n));
                    }
                }
                "max_messages" => {
                    if let Some(n) = self.int(value, &what, 1, i64::MAX as u64) {
                        b.max_messages = Some(n);
                    }
                }
                "max_pending" => {
                    if let Some(n) = self.int(value, &what, 1, 65_536) {
                        b.max_pending = n as usize;
                    }
                }
                "connect_wait_ms" => {
                    if let Some(n) = self.int(value, &what, 0, TOML_MAX) {
                        b.connect_wait = Duration::from_millis(n);
                    }
                }
                _ => {
                    let Some(pairs) = self.array(value, &what) else {
                        continue;
                    };
                    for pair in pairs {
                        let at = self.pos(pair.span().start);
                        let names: Option<Vec<String>> = match pair.get_ref() {
                            DeValue::Array(a) if a.len() == 2 => a
                                .iter()
                                .map(|h| h.get_ref().as_str().map(str::to_string))
                                .collect(),
                            _ => None,
                        };
                        match names {
                            // A pair is of two hosts: connections within one host never go
                            // through the broker by `between`.
                            Some(n) if n[0] == n[1] => self.error(
                                pair.span(),
                                format!(
                                    "{what} pairs two different hosts, found host '{}' twice",
                                    n[0].escape_debug()
                                ),
                            ),
                            Some(n) => {
                                b.between.push((n[0].clone(), n[1].clone()));
                                b.between_at.push(at);
                            }
                            None => {
                                let found = self.found(pair);
                                self.error(
                                    pair.span(),
                                    format!(
                                        "{what} must list pairs of host names, as [[\"edge\", \"server\"]], found {found}"
                                    ),
                                );
                            }
                        }
                    }
                }
            }
        }
        match client {
            [Some(cert), Some(key)] => {
                b.tls_client = Some((cert.0, key.0));
                b.tls_client_at = (cert.1, key.1);
            }
            [None, None] => {}
            [Some((_, at)), None] | [None, Some((_, at))] => self.problems.add(
                at,
                "TLS in [broker] needs 'tls_cert' and 'tls_key' together".to_string(),
            ),
        }
        match (user_name, password) {
            (Some((name, _)), Some((path, at))) => {
                b.user = Some((name, path));
                b.password_file_at = at;
            }
            (None, None) => {}
            (Some((_, at)), None) | (None, Some((_, at))) => self.problems.add(
                at,
                "[broker] needs 'user' and 'password_file' together".to_string(),
            ),
        }
        let ways = [
            ("creds", b.creds.is_some()),
            ("token_file", b.token_file.is_some()),
            ("user", b.user.is_some()),
        ];
        let named: Vec<&str> = ways.iter().filter(|w| w.1).map(|w| w.0).collect();
        if named.len() > 1 {
            let at = self.pos(v.span().start);
            self.problems.add(
                at,
                format!(
                    "[broker] takes one way to authenticate: 'creds', 'token_file', or 'user' \
                     with 'password_file'; found {}",
                    named
                        .iter()
                        .map(|n| format!("'{n}'"))
                        .collect::<Vec<_>>()
                        .join(" and ")
                ),
            );
        }
        if !url {
            let at = self.pos(v.span().start);
            self.problems.add(
                at,
                "[broker] has no 'url' (it is required: the NATS server, as \"nats://host:4222\")"
                    .to_string(),
            );
            return None;
        }
        (!b.url.is_empty()).then_some(b)
    }

    fn connections(&mut self, v: &Value<'_>) -> Vec<ConnectionEntry> {
        let mut connections = Vec::new();
        let Some(items) = self.array(v, "'connections' (written [[connections]])") else {
            return connections;
        };
        for (n, item) in items.iter().enumerate() {
            let entry = format!("[[connections]] entry {}", n + 1);
            let Some(t) = self.table(item, &entry) else {
                continue;
            };
            let text = |field: &str| {
                t.iter()
                    .find(|(k, _)| k.get_ref() == field)
                    .and_then(|(_, v)| v.get_ref().as_str())
            };
            let place = match text("stream") {
                Some(stream) => format!("in connection {}", connection_label(stream, text("to"))),
                None => format!("in {entry}"),
            };
            let mut stream = None;
            let mut c = ConnectionEntry {
                stream: (String::new(), Pos::default()),
                to: None,
                capacity: None,
                capacity_bytes: None,
                policy: None,
                spin_us: None,
                broker: None,
            };
            for (key, value) in self.fields(t, CONNECTION_FIELDS, &place) {
                let field: &str = key.get_ref();
                let what = format!("'{field}' {place}");
                let at = self.pos(value.span().start);
                match field {
                    "stream" => stream = self.string(value, &what).map(|s| (s, at)),
                    "to" => c.to = self.string(value, &what).map(|s| (s, at)),
                    "capacity" => {
                        c.capacity = self
                            .int(value, &what, 1, TOML_MAX)
                            .map(|n| (n as usize, at));
                    }
                    "capacity_bytes" => {
                        c.capacity_bytes = self
                            .int(value, &what, 1, TOML_MAX)
                            .map(|n| (n as usize, at));
                    }
                    "spin_us" => {
                        c.spin_us = match value.get_ref() {
                            DeValue::String(s) if s.as_ref() == "always" => Some(u64::MAX),
                            DeValue::String(_) => {
                                let found = self.found(value);
                                self.error(
                                    value.span(),
                                    format!(
                                        "{what} must be a number of microseconds \
                                         (0..={MAX_SPIN_US}, 0: off) or \"always\", found {found}"
                                    ),
                                );
                                None
                            }
                            _ => self.int(value, &what, 0, MAX_SPIN_US),
                        };
                    }
                    "transport" => {
                        c.broker = self
                            .choice(value, field, &place, TRANSPORTS)
                            .map(|i| (i == 1, at));
                    }
                    _ => {
                        c.policy = self
                            .choice(value, field, &place, POLICIES)
                            .map(|i| [Policy::Block, Policy::DropOldest, Policy::DropNewest][i]);
                    }
                }
            }
            if !t.iter().any(|(k, _)| k.get_ref() == "stream") {
                self.error(
                    item.span(),
                    format!("{entry} has no 'stream' (it is required: the writer's stream, \"agent.port\")"),
                );
            }
            if let Some(stream) = stream {
                c.stream = stream;
                connections.push(c);
            }
        }
        connections
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Graph;

    /// sensor -> detector -> alarm; sensor -> average (window of 8) -> log, in process `logger`.
    fn host(name: &str, address: &str, port: u16) -> HostPlan {
        HostPlan {
            name: name.to_string(),
            address: address.to_string(),
            port,
            observe_port: None,
        }
    }

    fn app() -> GraphInfo {
        app_graph().info()
    }

    fn app_graph() -> Graph {
        let mut g = Graph::new("plant");
        let s = g.source_iter("sensor", 0..10u64);
        let d = g.map("detector", &s, |x: &u64| *x);
        let avg = g.map_window("average", &s, 8, 8, |w: &[u64]| w.iter().sum::<u64>());
        g.for_each("alarm", &d, |_: &u64| {});
        g.for_each("log", &avg, |_: &u64| {});
        g.place_in_process("log", "logger");
        g
    }

    /// The error of parsing `text`, then planning it against [`app`].
    fn error(text: &str) -> String {
        match Deployment::parse("deploy.toml", text) {
            Err(e) => e.to_string(),
            Ok(d) => d.plan(&app()).expect_err("a problem").to_string(),
        }
    }

    #[test]
    fn the_test_app_is_as_the_tests_assume() {
        let info = app();
        let edges: Vec<(&str, &str)> = info
            .edges
            .iter()
            .map(|e| (e.stream.as_str(), e.input.as_str()))
            .collect();
        assert_eq!(
            edges,
            [
                ("sensor.out", "detector.in"),
                ("sensor.out", "average.in"),
                ("detector.out", "alarm.in"),
                ("average.out", "log.in"),
            ]
        );
        assert_eq!(info.agents[2].inputs[0].min_capacity, 8);
        assert_eq!(info.processes, ["main", "logger"]);
    }

    /// Each problem of `text` on its own line.
    fn lines(text: &str) -> Vec<String> {
        error(text).lines().map(str::to_string).collect()
    }

    #[test]
    fn workers_are_set_per_process_and_applied_there() {
        let d = Deployment::parse(
            "deploy.toml",
            "[processes.main]\nworkers = 1\n[processes.logger]\nworkers = 1024\n",
        )
        .unwrap();
        assert_eq!(d.process("main").workers, Some(1));
        assert_eq!(d.process("logger").workers, Some(1024));
        assert_eq!(d.process("other").workers, None);
        let plan = d.plan(&app()).unwrap();
        assert_eq!(
            plan.process_workers,
            BTreeMap::from([("logger".to_string(), 1024), ("main".to_string(), 1)])
        );
        let mut g = app_graph();
        g.worker_threads(3);
        g.apply_plan(&plan);
        assert_eq!(g.workers_in("main"), Some(1));
        assert_eq!(g.workers_in("logger"), Some(1024));
        // A process the file gives no `workers` keeps the code's.
        let plan = Deployment::parse("deploy.toml", "[processes.logger]\nworkers = 2\n")
            .unwrap()
            .plan(&app())
            .unwrap();
        let mut g = app_graph();
        g.worker_threads(3);
        g.apply_plan(&plan);
        assert_eq!(g.workers_in("main"), Some(3));
        assert_eq!(g.workers_in("logger"), Some(2));
    }

    #[test]
    fn workers_out_of_range_or_not_an_integer_are_named_with_their_place() {
        assert_eq!(
            lines(
                "[processes.main]\nworkers = 0\n[processes.logger]\nworkers = 1025\n\
                 [processes.x]\nagents = [\"alarm\"]\nworkers = \"4\"\n"
            ),
            [
                "deploy.toml:2:11: 'workers' in process 'main' must be at least 1, found 0",
                "deploy.toml:4:11: 'workers' in process 'logger' must be at most 1024, found 1025",
                "deploy.toml:7:11: 'workers' in process 'x' must be an integer, found string \"4\"",
            ]
        );
    }

    #[test]
    fn toml_syntax_error() {
        assert_eq!(
            error("[processes.detector\nhost = \"local\"\n"),
            "deploy.toml:1:20: invalid TOML: unclosed table, expected `]`"
        );
    }

    #[test]
    fn several_toml_syntax_errors_each_once() {
        assert_eq!(
            lines("a = \nb = [1,\n"),
            [
                "deploy.toml:1:5: invalid TOML: string values must be quoted, expected literal \
                 string",
                "deploy.toml:2:8: invalid TOML: unclosed array, expected `]`",
            ]
        );
    }

    #[test]
    fn duplicate_key() {
        assert_eq!(
            lines(
                "[[connections]]\nstream = \"sensor.out\"\ncapacity = 10\ncapacity = 20\n\
                 [processes.logger]\n[processes.logger]\n"
            ),
            [
                "deploy.toml:4:1: invalid TOML: duplicate key 'capacity'",
                "deploy.toml:6:12: invalid TOML: duplicate key 'logger'",
            ]
        );
    }

    #[test]
    fn unknown_fields() {
        assert_eq!(
            lines("[proceses.x]\n[processes.detector]\nrestrat = \"never\"\n[[connections]]\nstream = \"sensor.out\"\n  capacty = 5\n"),
            [
                "deploy.toml:1:2: unknown field 'proceses' at the top level (did you mean \
                 'processes'?); the accepted fields are 'supervisor', 'env', 'network', 'hosts', \
                 'processes', 'connections' and 'broker'",
                "deploy.toml:3:1: unknown field 'restrat' in process 'detector' (did you mean \
                 'restart'?); the accepted fields are 'host', 'agents', 'restart', \
                 'max_restarts', 'backoff_ms', 'max_backoff_ms', 'cpus', 'workers' and 'env'",
                "deploy.toml:6:3: unknown field 'capacty' in connection 'sensor.out' (did you \
                 mean 'capacity'?); the accepted fields are 'stream', 'to', 'capacity', \
                 'capacity_bytes', 'policy', 'spin_us' and 'transport'",
            ]
        );
    }

    #[test]
    fn wrong_types() {
        assert_eq!(
            lines(
                "[[connections]]\nstream = \"sensor.out\"\ncapacity = \"big\"\n\n\
                 [processes.logger]\nrestart = \"on-failure\"\nmax_restarts = -1\nagents = \"log\"\n\
                 [supervisor]\nready_timeout_ms = 1.5\n"
            ),
            [
                "deploy.toml:3:12: 'capacity' in connection 'sensor.out' must be an integer, \
                 found string \"big\"",
                "deploy.toml:7:16: 'max_restarts' in process 'logger' must be at least 0, found -1",
                "deploy.toml:8:10: 'agents' in process 'logger' must be an array, found string \
                 \"log\"",
                "deploy.toml:10:20: 'ready_timeout_ms' in [supervisor] must be an integer, found \
                 float 1.5",
            ]
        );
    }

    #[test]
    fn unknown_agent() {
        assert_eq!(
            error("[processes.detector]\nagents = [\"sensor\", \"detektor\"]\n"),
            "deploy.toml:2:21: unknown agent 'detektor' in process 'detector' (did you mean \
             'detector'?); the app's agents are 'sensor', 'detector', 'average', 'alarm' and 'log'"
        );
    }

    /// Found by audit D: a file that split a feedback loop was reported by the graph's check,
    /// naming the connections but no line of the file.
    #[test]
    fn a_loop_split_by_the_file_is_reported_at_the_line_that_splits_it() {
        let mut g = Graph::new("countdown");
        let seed = g.source_iter("seed", [3u64]);
        let (back, looped) = g.feedback::<u64>("back");
        let merged = g.blend("merge", &[seed, looped]);
        let next = g.filter_map("next", &merged, |v: &u64| v.checked_sub(1));
        g.connect(&next, &back);
        g.for_each("print", &merged, |_: &u64| {});
        let info = g.info();
        let plan = |text: &str| {
            Deployment::parse("deploy.toml", text)
                .unwrap()
                .plan(&info)
                .map(|_| ())
                .map_err(|e| e.to_string())
        };
        assert_eq!(
            plan("[processes.far]\nagents = [\"print\"]\n[processes.q]\nagents = [\"next\"]\n"),
            Err(
                "deploy.toml:4:11: agent 'next' is in a feedback loop with agent 'merge', which \
                 runs in process 'main', not 'q': connection merge.out -> next.in would cross \
                 processes; keep every agent of a loop in one process"
                    .to_string()
            )
        );
        // The whole loop moved together: fine.
        assert_eq!(
            plan("[processes.q]\nagents = [\"next\", \"merge\", \"back\"]\n"),
            Ok(())
        );
    }

    #[test]
    fn agent_placed_twice() {
        assert_eq!(
            lines(
                "[processes.a]\nagents = [\"detector\"]\n[processes.b]\nagents = [\"alarm\", \
                 \"detector\"]\n[processes.c]\nagents = [\"log\", \"log\"]\n"
            ),
            [
                "deploy.toml:4:20: agent 'detector' is placed twice: in process 'b' here, and in \
                 process 'a' on line 2",
                "deploy.toml:6:18: agent 'log' is listed twice in process 'c' (first on line 6)",
            ]
        );
    }

    #[test]
    fn unknown_host() {
        assert_eq!(
            error(
                "[hosts.edge]\naddress = \"10.0.0.2\"\n[hosts.cloud]\naddress = \"10.0.0.3\"\n\
                 [processes.logger]\nhost = \"egde\"\n[network]\ninsecure = true\n"
            ),
            "deploy.toml:6:8: unknown host 'egde' in process 'logger' (did you mean 'edge'?); \
             the hosts are 'edge' and 'cloud'"
        );
        assert_eq!(
            error("[processes.logger]\nhost = \"edge\"\n"),
            "deploy.toml:2:8: unknown host 'edge' in process 'logger'; the hosts are 'local' \
             (the default; declare hosts with [hosts.NAME])"
        );
    }

    #[test]
    fn network_section() {
        let text = "[hosts.pi]\naddress = \"10.0.0.2\"\nport = 9000\n[hosts.cloud]\n\
                    address = \"cloud.example.org\"\n[network]\nsecret_file = \"secret\"\n\
                    tls_cert = \"/etc/iot/host.pem\"\ntls_key = \"host.key\"\ntls_ca = \"ca.pem\"\n\
                    connect_wait_ms = 2000\nheartbeat_ms = 200\npeer_timeout_ms = 1000\n\
                    reconnect_limit_ms = 0\nunacked_bytes = 33554432\n";
        let d = Deployment::parse("site/deploy.toml", text).unwrap();
        let n = &d.network;
        // Relative paths are taken from the deployment file's folder.
        assert_eq!(n.secret_file.as_deref(), Some(Path::new("site/secret")));
        assert_eq!(
            n.tls,
            Some(TlsPaths {
                cert: "/etc/iot/host.pem".into(),
                key: "site/host.key".into(),
                ca: "site/ca.pem".into(),
            })
        );
        assert!(!n.insecure);
        assert_eq!(n.connect_wait, Duration::from_millis(2000));
        assert_eq!(n.heartbeat, Duration::from_millis(200));
        assert_eq!(n.peer_timeout, Duration::from_millis(1000));
        assert_eq!(n.reconnect_limit, Duration::ZERO);
        assert_eq!(n.unacked_bytes, 32 << 20);
        let plan = d.plan(&app()).unwrap_err();
        // Two hosts and no 'local': every process needs one (the check before the plan).
        assert!(plan.to_string().contains("needs a host"), "{plan}");
        assert_eq!(
            Deployment::parse("deploy.toml", "").unwrap().network,
            NetworkSettings::default()
        );
        // The same file gives the same digest; any change another.
        let again = Deployment::parse("elsewhere.toml", text).unwrap();
        assert_eq!(d.digest, again.digest);
        let other = Deployment::parse("deploy.toml", &text.replace("9000", "9001")).unwrap();
        assert_ne!(d.digest, other.digest);
    }

    #[test]
    fn network_problems() {
        assert_eq!(
            lines(
                "[hosts.pi]\naddress = \"10.0.0.2:80\"\nport = 0\n[hosts.cloud]\n\
                 address = \"a b\"\n[network]\ninsecure = \"yes\"\ntls_cert = \"c.pem\"\n\
                 heartbeat_ms = 5000\nunacked_bytes = 1024\n"
            ),
            [
                "deploy.toml:2:11: 'address' in host 'pi' must be an IP address or a host name, \
                 without a port (set 'port'), found '10.0.0.2:80'",
                "deploy.toml:3:8: 'port' in host 'pi' must be at least 1, found 0",
                "deploy.toml:4:8: the deployment has several hosts ('pi' and 'cloud') but no \
                 secret for the links between them: set secret_file in [network] (see \
                 docs/security.md), or insecure = true to run them without authentication",
                "deploy.toml:5:11: 'address' in host 'cloud' must be an IP address or a host \
                 name, without a port (set 'port'), found 'a b'",
                "deploy.toml:6:1: 'peer_timeout_ms' in [network] (5000 ms) must be longer than \
                 'heartbeat_ms' (5000 ms): a peer would be taken as gone between two heartbeats",
                "deploy.toml:7:12: 'insecure' in [network] must be true or false, found string \
                 \"yes\"",
                "deploy.toml:8:1: TLS in [network] needs 'tls_cert', 'tls_key' and 'tls_ca' \
                 together: 'tls_key' and 'tls_ca' missing",
                "deploy.toml:10:17: 'unacked_bytes' in [network] must be at least 65536, found \
                 1024",
            ]
        );
        // One host: no secret needed.
        assert!(Deployment::parse("d.toml", "[hosts.pi]\naddress = \"10.0.0.2\"\n").is_ok());
    }

    #[test]
    fn network_files_are_checked_at_the_line_and_column_that_name_them() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("deploy.toml").display().to_string();
        let text = "[hosts.a]\naddress = \"10.0.0.1\"\n[hosts.b]\naddress = \"10.0.0.2\"\n\
                    [network]\n  secret_file = \"secret\"\ntls_cert = \"host.pem\"\n\
                    tls_key = \"host.key\"\ntls_ca = \"ca.pem\"\n";
        let d = Deployment::parse(&name, text).unwrap();
        let at = |path: &str| dir.path().join(path).display().to_string();
        let secret = dir.path().join("secret");
        assert_eq!(
            d.check_secret_file().unwrap_err().to_string(),
            format!(
                "{name}:6:3: [network] secret_file: the secret file {} does not exist",
                at("secret")
            )
        );
        std::fs::write(&secret, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = d.check_secret_file().unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "{name}:6:3: [network] secret_file: permissions 0644 for the secret file"
            )),
            "{e}"
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        d.check_secret_file().unwrap();
        // Each TLS file at its own field: the certificate, then (a certificate there) the key.
        assert_eq!(
            d.check_tls_files().unwrap_err().to_string(),
            format!(
                "{name}:7:1: [network] tls_cert: the TLS certificate file {} does not exist",
                at("host.pem")
            )
        );
        std::fs::write(
            dir.path().join("host.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert_eq!(
            d.check_tls_files().unwrap_err().to_string(),
            format!(
                "{name}:8:1: [network] tls_key: the TLS key file {} does not exist",
                at("host.key")
            )
        );
        // Without a [network] section there is nothing to check.
        let none = Deployment::parse(&name, "").unwrap();
        none.check_secret_file().unwrap();
        none.check_tls_files().unwrap();
    }

    #[test]
    fn a_host_port_leaves_room_for_every_connection_into_it() {
        let text = "[hosts.local]\naddress = \"127.0.0.1\"\n[hosts.edge]\naddress = \
                    \"10.0.0.7\"\nport = 65535\n[processes.logger]\nhost = \"edge\"\n\
                    [network]\ninsecure = true\n";
        let err = Deployment::parse("deploy.toml", text)
            .unwrap()
            .plan(&app())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "deploy.toml:3:8: host 'edge': connection average.out -> log.in would listen on \
             port 65535 + 3, beyond 65535; choose a lower 'port'"
        );
    }

    /// Two hosts (`local` with `main`, `edge` with `logger`, so `average.out -> log.in`,
    /// connection 3, listens on edge's port + 3), `[hosts.*]` lines as given, and a secret
    /// (the launchers observe each other) or not.
    fn two_hosts(local: &str, edge: &str, secret: bool) -> String {
        let network = match secret {
            true => "secret_file = \"secret\"",
            false => "insecure = true",
        };
        format!(
            "[hosts.local]\n{local}\n[hosts.edge]\n{edge}\n[processes.logger]\nhost = \"edge\"\n\
             [network]\n{network}\n"
        )
    }

    #[test]
    fn the_observation_port_is_port_minus_1_unless_set() {
        let text = two_hosts(
            "address = \"10.0.0.1\"",
            "address = \"10.0.0.7\"\nport = 9000\nobserve_port = 8000",
            true,
        );
        let d = Deployment::parse("deploy.toml", &text).unwrap();
        let mut g = app_graph();
        let plan = d.plan(&g.info()).unwrap();
        let observe: Vec<Option<u16>> = plan.hosts.iter().map(|h| h.observe_port).collect();
        assert_eq!(observe, [None, Some(8000)]);
        g.apply_plan(&plan);
        let info = g.info();
        let ports: Vec<(u16, u16)> = info
            .hosts
            .iter()
            .map(|h| (h.port, h.observation_port()))
            .collect();
        assert_eq!(ports, [(DEFAULT_PORT, DEFAULT_PORT - 1), (9000, 8000)]);
        // What an older application binary reports (no `observe_port`) means port - 1.
        let json = serde_json::to_string(&info.hosts[0]).unwrap();
        assert!(!json.contains("observe_port"), "{json}");
        let old: crate::info::HostInfo = serde_json::from_str(&json).unwrap();
        assert_eq!(old.observation_port(), DEFAULT_PORT - 1);
        assert_eq!(
            error("[hosts.local]\naddress = \"10.0.0.1\"\nobserve_port = 0\n"),
            "deploy.toml:3:16: 'observe_port' in host 'local' must be at least 1, found 0"
        );
        assert_eq!(
            error("[hosts.local]\naddress = \"10.0.0.1\"\nobserve_prot = 7000\n"),
            "deploy.toml:3:1: unknown field 'observe_prot' in host 'local' (did you mean \
             'observe_port'?); the accepted fields are 'address', 'port' and 'observe_port'"
        );
    }

    #[test]
    fn ports_taken_twice_on_one_address_are_named() {
        let same = "address = \"10.0.0.7\"";
        // edge's link 3 listens on 7396 + 3 = 7399: local's observation port (7400 - 1).
        assert_eq!(
            error(&two_hosts(same, &format!("{same}\nport = 7396"), true)),
            "deploy.toml:1:8: port 7399 of 10.0.0.7 is taken twice: by connection average.out \
             -> log.in into host 'edge' (7396 + 3), and by the observation port of host 'local'; \
             set 'observe_port' of host 'local' to a free port"
        );
        // The same ports without a secret: the launchers do not observe each other.
        let insecure = Deployment::parse(
            "deploy.toml",
            &two_hosts(same, &format!("{same}\nport = 7396"), false),
        )
        .unwrap();
        assert!(insecure.plan(&app()).is_ok());
        // An observation port set on a host's own link; another on the other's.
        assert_eq!(
            lines(&two_hosts(
                &format!("{same}\nobserve_port = 8002"),
                &format!("{same}\nport = 8000\nobserve_port = 8003"),
                true
            )),
            [
                "deploy.toml:7:16: port 8003 of 10.0.0.7 is taken twice: by connection \
                 average.out -> log.in into host 'edge' (8000 + 3), and by the observation port \
                 of host 'edge'; set 'observe_port' of host 'edge' to a free port",
            ]
        );
        assert_eq!(
            error(&two_hosts(
                &format!("{same}\nport = 8000"),
                &format!("{same}\nport = 9000\nobserve_port = 7999"),
                true
            )),
            "deploy.toml:7:16: port 7999 of 10.0.0.7 is taken twice: by the observation port of \
             host 'local', and by the observation port of host 'edge'; set 'observe_port' of \
             host 'edge' to a free port"
        );
        // Two hosts of one address whose links would listen on one port.
        let text = "[hosts.a]\naddress = \"10.0.0.7\"\n[hosts.b]\naddress = \"10.0.0.7\"\n\
                    port = 7000\n[hosts.c]\naddress = \"10.0.0.7\"\nport = 7001\n\
                    [processes.main]\nhost = \"a\"\n[processes.logger]\nhost = \"b\"\n\
                    [processes.p]\nhost = \"c\"\nagents = [\"alarm\"]\n[network]\ninsecure = true\n";
        assert_eq!(
            error(text),
            "deploy.toml:5:8: port 7003 of 10.0.0.7 is taken twice: by connection \
             detector.out -> alarm.in into host 'c' (7001 + 2), and by connection average.out -> \
             log.in into host 'b' (7000 + 3); give the hosts of one address port ranges that do \
             not overlap"
        );
        // Port 1 leaves no default observation port.
        assert_eq!(
            error(&two_hosts(
                "address = \"10.0.0.1\"\nport = 1",
                "address = \"10.0.0.7\"",
                true
            )),
            "deploy.toml:3:8: host 'local': port 1 leaves no port below it for the launcher's \
             observation channel (port - 1 by default); set 'observe_port', or a 'port' above 1"
        );
    }

    #[test]
    fn several_hosts_need_addresses_the_others_can_connect_to() {
        assert_eq!(
            lines(&two_hosts(
                "address = \"0.0.0.0\"",
                "address = \"::\"",
                true
            )),
            [
                "deploy.toml:2:11: 'address' in host 'local' is 0.0.0.0, which the other hosts \
                 cannot connect to: give an address of the host's own (its listeners bind it, \
                 the other hosts connect to it)",
                "deploy.toml:4:11: 'address' in host 'edge' is ::, which the other hosts cannot \
                 connect to: give an address of the host's own (its listeners bind it, the \
                 other hosts connect to it)",
            ]
        );
        // One host has no other to be reached from.
        assert!(Deployment::parse("d.toml", "[hosts.local]\naddress = \"0.0.0.0\"\n").is_ok());
    }

    #[test]
    fn host_entries() {
        assert_eq!(
            lines(
                "[hosts.edge]\n[hosts.cloud]\naddress = \"\"\n[hosts.\"x y\"]\naddress = \"h\"\n\
                 [network]\ninsecure = true\n"
            ),
            [
                "deploy.toml:1:8: host 'edge' has no 'address' (it is required)",
                "deploy.toml:3:11: 'address' in host 'cloud' must not be empty",
                "deploy.toml:4:8: invalid host name 'x y': a host name is 1 to 64 ASCII \
                 letters, digits, '_' or '-'",
            ]
        );
    }

    #[test]
    fn process_that_is_neither_in_the_app_nor_given_agents() {
        assert_eq!(
            error("[processes.spare]\nrestart = \"on-failure\"\n"),
            "deploy.toml:1:12: process 'spare' is not a process of the app and is given no \
             agents; the app's processes are 'main' and 'logger' (a new process needs agents = \
             [...])"
        );
        assert_eq!(
            error("[processes.loger]\nagents = []\n"),
            "deploy.toml:1:12: process 'loger' is not a process of the app and is given no \
             agents (did you mean 'logger'?); the app's processes are 'main' and 'logger' (a new \
             process needs agents = [...])"
        );
    }

    #[test]
    fn bad_policy_and_restart() {
        assert_eq!(
            lines(
                "[[connections]]\nstream = \"sensor.out\"\npolicy = \"drop-some\"\n\
                 [processes.logger]\nrestart = \"on_failure\"\n"
            ),
            [
                "deploy.toml:3:10: unknown policy 'drop-some' in connection 'sensor.out'; \
                 expected 'block', 'drop-oldest' or 'drop-newest'",
                "deploy.toml:5:11: unknown restart 'on_failure' in process 'logger' (did you \
                 mean 'on-failure'?); expected 'never' or 'on-failure'",
            ]
        );
    }

    #[test]
    fn capacity_zero() {
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\nto = \"detector.in\"\ncapacity = 0\n"),
            "deploy.toml:4:12: 'capacity' in connection 'sensor.out -> detector.in' must be at \
             least 1, found 0"
        );
    }

    #[test]
    fn a_broker_section_and_broker_connections() {
        let text = "[hosts.edge]\naddress = \"10.0.0.7\"\n[hosts.server]\naddress = \"10.0.0.8\"\n\
                    [network]\ninsecure = true\n\
                    [broker]\nurl = \"nats://10.0.0.5:4222, tls://10.0.0.6:4222\"\n\
                    token_file = \"nats.token\"\nmax_bytes = 2097152\nmax_age_s = 3600\n\
                    max_messages = 500\nmax_pending = 16\nconnect_wait_ms = 500\nbetween = [[\"edge\", \"server\"]]\n\
                    [processes.p]\nhost = \"server\"\nagents = [\"detector\"]\n\
                    [processes.main]\nhost = \"edge\"\n";
        let d = Deployment::parse("/etc/d/deploy.toml", text).unwrap();
        let b = d.broker.as_ref().unwrap();
        assert_eq!(b.url, "nats://10.0.0.5:4222, tls://10.0.0.6:4222");
        assert_eq!(b.token_file, Some(PathBuf::from("/etc/d/nats.token")));
        assert_eq!(b.max_bytes, 2 << 20);
        assert_eq!(b.max_age, Some(Duration::from_secs(3600)));
        assert_eq!(b.max_messages, Some(500));
        assert_eq!(
            (b.max_pending, b.connect_wait),
            (16, Duration::from_millis(500))
        );
        assert_eq!(b.between, [("edge".to_string(), "server".to_string())]);
        // A token file that cannot be read is an error naming it, when the run starts.
        let e = b.settings().unwrap_err().to_string();
        assert!(
            e.contains("token_file") && e.contains("/etc/d/nats.token"),
            "{e}"
        );
        // Every connection between the two hosts goes through the broker.
        let mut g = Graph::new("between");
        let s = g.source_iter("sensor", 0..3u64);
        let a = g.map("detector", &s, |v: &u64| *v);
        let _ = g.map("log", &a, |v: &u64| *v);
        let plan = d.plan(&g.info()).unwrap();
        assert_eq!(plan.broker, [true, true]);
        g.apply_plan(&plan);
        assert_eq!(g.edges[0].conn.transport, crate::Transport::Broker);

        // One connection, on one host; "direct" keeps the other one as placed.
        let d = Deployment::parse(
            "deploy.toml",
            "[broker]\nurl = \"nats://127.0.0.1:4222\"\n\
             [[connections]]\nstream = \"sensor.out\"\ntransport = \"broker\"\n\
             [[connections]]\nstream = \"detector.out\"\ntransport = \"direct\"\n",
        )
        .unwrap();
        assert_eq!(d.plan(&g.info()).unwrap().broker, [true, false]);
        assert_eq!(
            d.broker.unwrap().settings().unwrap().url,
            "nats://127.0.0.1:4222"
        );
    }

    #[test]
    fn broker_problems_name_file_line_and_field() {
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\ntransport = \"broker\"\n"),
            "deploy.toml:3:13: 'transport' in connection 'sensor.out' is \"broker\", but the \
             file has no [broker] section (add one with url = \"nats://host:4222\")"
        );
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\ntransport = \"nats\"\n"),
            "deploy.toml:3:13: unknown transport 'nats' in connection 'sensor.out'; expected \
             'direct' or 'broker'"
        );
        assert_eq!(
            error("[broker]\nmax_pending = 0\n"),
            "deploy.toml:1:1: [broker] has no 'url' (it is required: the NATS server, as \
             \"nats://host:4222\")\n\
             deploy.toml:2:15: 'max_pending' in [broker] must be at least 1, found 0"
        );
        assert_eq!(
            error("[broker]\nurl = \"http://x:4222\"\ntls_cert = \"c.pem\"\n"),
            "deploy.toml:2:7: 'url' in [broker] must be nats://HOST:PORT or tls://HOST:PORT \
             (several separated by commas), found 'http://x:4222'\n\
             deploy.toml:3:1: TLS in [broker] needs 'tls_cert' and 'tls_key' together"
        );
        assert_eq!(
            error("[broker]\nurl = \"nats://a:1\"\nbetween = [[\"a\", \"b\"]]\nmax_bytes = 5\n"),
            "deploy.toml:3:12: unknown host 'a' in 'between' in [broker]; the hosts are 'local'\n\
             deploy.toml:3:12: unknown host 'b' in 'between' in [broker]; the hosts are 'local'\n\
             deploy.toml:4:13: 'max_bytes' in [broker] must be at least 1048576, found 5"
        );
    }

    #[test]
    fn a_broker_section_that_is_wrong_is_not_said_to_be_missing() {
        let through_broker = "[[connections]]\nstream = \"sensor.out\"\ntransport = \"broker\"\n";
        // The section is there, its url is wrong: the url is the one problem.
        assert_eq!(
            error(&format!(
                "[broker]\nurl = \"nats://user:pw@127.0.0.1:4222\"\n{through_broker}"
            )),
            "deploy.toml:2:7: 'url' in [broker] must not hold a user or password (USER@HOST): \
             name them apart (the deployment's 'user' and 'password_file', or BrokerOptions::user)"
        );
        // Without its url, or not a table: likewise.
        assert_eq!(
            error(&format!("[broker]\nmax_pending = 4\n{through_broker}")),
            "deploy.toml:1:1: [broker] has no 'url' (it is required: the NATS server, as \
             \"nats://host:4222\")"
        );
        assert_eq!(
            error(&format!("broker = 3\n{through_broker}")),
            "deploy.toml:1:10: 'broker' must be a table, found integer 3"
        );
    }

    /// Writes `text` to `path`, a file only its owner may read (as secrets must be).
    fn write_private(path: &Path, text: &str) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, text).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }

    #[test]
    fn broker_user_and_password_file() {
        let dir = tempfile::tempdir().unwrap();
        let deploy = dir.path().join("deploy.toml");
        let text = "[broker]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"fleet\"\n\
                    password_file = \"nats.pass\"\n";
        let d = Deployment::parse(deploy.to_str().unwrap(), text).unwrap();
        let b = d.broker.as_ref().unwrap();
        assert_eq!(
            b.user,
            Some(("fleet".to_string(), dir.path().join("nats.pass")))
        );
        // The password file is read when the run starts: missing, then empty, then there.
        let e = b.settings().unwrap_err().to_string();
        assert!(
            e.contains("password_file") && e.contains("nats.pass"),
            "{e}"
        );
        write_private(&dir.path().join("nats.pass"), " \n");
        let e = b.settings().unwrap_err().to_string();
        assert!(e.contains("password_file") && e.contains("is empty"), "{e}");
        write_private(&dir.path().join("nats.pass"), "s3cret\n");
        let s = b.settings().unwrap();
        assert_eq!(s.user, Some(("fleet".to_string(), "s3cret".to_string())));
        assert_eq!(s.token, None);
    }

    #[test]
    fn broker_secret_files_are_named_with_the_deployment_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("deploy.toml").display().to_string();
        let token = dir.path().join("nats.token");
        let d = Deployment::parse(
            &name,
            "[broker]\nurl = \"nats://127.0.0.1:4222\"\ntoken_file = \"nats.token\"\n",
        )
        .unwrap();
        let b = d.broker.as_ref().unwrap();
        assert_eq!(
            b.settings().unwrap_err().to_string(),
            format!(
                "{name}:3:1: [broker] token_file: {} does not exist",
                token.display()
            )
        );
        write_private(&token, "\n");
        assert_eq!(
            b.settings().unwrap_err().to_string(),
            format!(
                "{name}:3:1: [broker] token_file: {} is empty",
                token.display()
            )
        );
        let d = Deployment::parse(
            &name,
            "[broker]\nurl = \"nats://127.0.0.1:4222\"\nuser = \"fleet\"\n  password_file = \"p\"\n",
        )
        .unwrap();
        assert_eq!(
            d.broker.unwrap().settings().unwrap_err().to_string(),
            format!(
                "{name}:4:3: [broker] password_file: {} does not exist",
                dir.path().join("p").display()
            )
        );
    }

    #[test]
    fn broker_authentication_problems() {
        assert_eq!(
            error("[broker]\nurl = \"nats://a:1\"\nuser = \"fleet\"\n"),
            "deploy.toml:3:1: [broker] needs 'user' and 'password_file' together"
        );
        assert_eq!(
            error("[broker]\nurl = \"nats://a:1\"\npassword_file = \"p\"\nuser = \"\"\n"),
            "deploy.toml:3:1: [broker] needs 'user' and 'password_file' together\n\
             deploy.toml:4:8: 'user' in [broker] must not be empty"
        );
        assert_eq!(
            error(
                "[broker]\nurl = \"nats://a:1\"\ntoken_file = \"t\"\nuser = \"u\"\n\
                 password_file = \"p\"\ncreds = \"c\"\n"
            ),
            "deploy.toml:1:1: [broker] takes one way to authenticate: 'creds', 'token_file', \
             or 'user' with 'password_file'; found 'creds' and 'token_file' and 'user'"
        );
        // A user or password in the URL would be ignored by the client: refused, not shown.
        let e = error("[broker]\nurl = \"nats://a:1, nats://fleet:s3cret@b:2\"\n");
        assert_eq!(
            e,
            "deploy.toml:2:7: 'url' in [broker] must not hold a user or password (USER@HOST): \
             name them apart (the deployment's 'user' and 'password_file', or BrokerOptions::user)"
        );
        assert!(!e.contains("s3cret"));
    }

    #[test]
    fn spin_us_is_microseconds_or_always() {
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\nspin_us = -1\n"),
            "deploy.toml:3:11: 'spin_us' in connection 'sensor.out' must be at least 0, found -1"
        );
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\nspin_us = \"often\"\n"),
            "deploy.toml:3:11: 'spin_us' in connection 'sensor.out' must be a number of \
             microseconds (0..=60000000, 0: off) or \"always\", found string \"often\""
        );
        assert!(
            error("[[connections]]\nstream = \"sensor.out\"\nspin_us = 60000001\n")
                .contains("must be at most 60000000")
        );
        // Applied: 0 turns the code's spin off, a number sets the window.
        let mut g = Graph::new("spin_plan");
        let s = g.source_iter("sensor", 0..3u64);
        let a = g.map("a", &s, |v: &u64| *v);
        let _ = g.map("b", &a, |v: &u64| *v);
        let d = Deployment::parse(
            "deploy.toml",
            "[[connections]]\nstream = \"sensor.out\"\nspin_us = 250\n\n\
             [[connections]]\nstream = \"a.out\"\nspin_us = 0\n",
        )
        .unwrap();
        let plan = d.plan(&g.info()).unwrap();
        assert_eq!(plan.spin_us, [Some(250), Some(0)]);
        g.apply_plan(&plan);
        assert_eq!(g.edges[0].conn.spin, Some(Duration::from_micros(250)));
        assert_eq!(g.edges[1].conn.spin, None);
    }

    #[test]
    fn capacity_bytes_zero_or_below_the_readers_min_capacity() {
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\ncapacity_bytes = 0\n"),
            "deploy.toml:3:18: 'capacity_bytes' in connection 'sensor.out' must be at least 1, \
             found 0"
        );
        // The window of 8 u64 needs 64 bytes.
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\ncapacity_bytes = 63\n"),
            "deploy.toml:3:18: capacity_bytes 63 of connection 'sensor.out -> average.in' holds \
             7 elements of 8 bytes, fewer than 8, the fewest elements agent 'average' needs on \
             its input 'in'"
        );
        let d = Deployment::parse(
            "deploy.toml",
            "[[connections]]\nstream = \"sensor.out\"\ncapacity_bytes = 64\n",
        )
        .unwrap();
        let mut g = app_graph();
        g.apply_plan(&d.plan(&g.info()).unwrap());
        let info = g.info();
        assert_eq!(
            info.edges
                .iter()
                .map(|e| (e.capacity_bytes, e.credit))
                .collect::<Vec<_>>(),
            [
                (64, 8),
                (64, 8),
                (crate::DEFAULT_CAPACITY_BYTES, crate::DEFAULT_CAPACITY),
                (crate::DEFAULT_CAPACITY_BYTES, crate::DEFAULT_CAPACITY),
            ],
            "8 u64 in 64 bytes; the others as in code"
        );
    }

    #[test]
    fn capacity_below_the_readers_min_capacity() {
        assert_eq!(
            error("[[connections]]\nstream = \"sensor.out\"\ncapacity = 4\n"),
            "deploy.toml:3:12: capacity 4 of connection 'sensor.out -> average.in' is less than \
             8, the fewest elements agent 'average' needs on its input 'in'"
        );
    }

    #[test]
    fn unknown_stream_and_input() {
        assert_eq!(
            lines(
                "[[connections]]\nstream = \"sensr.out\"\ncapacity = 10\n[[connections]]\n\
                 stream = \"detector.out\"\nto = \"log.in\"\n"
            ),
            [
                "deploy.toml:2:10: unknown stream 'sensr.out' (did you mean 'sensor.out'?); the \
                 app's connected streams are 'sensor.out', 'detector.out' and 'average.out'",
                "deploy.toml:6:6: 'log.in' does not read stream 'detector.out'; its readers are \
                 'alarm.in'",
            ]
        );
        let mut g = Graph::new("unread");
        let s = g.source_iter("sensor", 0..3u64);
        g.map("twice", &s, |x: &u64| x * 2);
        let d =
            Deployment::parse("deploy.toml", "[[connections]]\nstream = \"twice.out\"\n").unwrap();
        assert_eq!(
            d.plan(&g.info()).unwrap_err().to_string(),
            "deploy.toml:2:10: stream 'twice.out' has no connections: no agent reads it"
        );
    }

    #[test]
    fn connection_entries() {
        assert_eq!(
            lines(
                "[[connections]]\ncapacity = 3\n[[connections]]\nstream = \"sensor.out\"\n\
                 [[connections]]\nstream = \"sensor.out\"\nconnections = 5\n"
            ),
            [
                "deploy.toml:1:1: [[connections]] entry 1 has no 'stream' (it is required: the \
                 writer's stream, \"agent.port\")",
                "deploy.toml:6:10: connection 'sensor.out' is configured twice (first on line 4)",
                "deploy.toml:7:1: unknown field 'connections' in connection 'sensor.out'; the \
                 accepted fields are 'stream', 'to', 'capacity', 'capacity_bytes', 'policy', \
                 'spin_us' and 'transport'",
            ]
        );
    }

    #[test]
    fn restart_options_without_on_failure() {
        assert_eq!(
            lines(
                "[processes.logger]\nmax_restarts = 5\nbackoff_ms = 10\n[processes.main]\n\
                 restart = \"never\"\nmax_backoff_ms = 10\n[processes.x]\nagents = [\"alarm\"]\n\
                 restart = \"on-failure\"\nbackoff_ms = 500\nmax_backoff_ms = 200\n"
            ),
            [
                "deploy.toml:2:1: 'max_restarts' in process 'logger' only applies with restart \
                 = \"on-failure\" (restart is \"never\")",
                "deploy.toml:3:1: 'backoff_ms' in process 'logger' only applies with restart = \
                 \"on-failure\" (restart is \"never\")",
                "deploy.toml:6:1: 'max_backoff_ms' in process 'main' only applies with restart \
                 = \"on-failure\" (restart is \"never\")",
                "deploy.toml:11:1: 'max_backoff_ms' in process 'x' (200) is less than \
                 'backoff_ms' (500)",
            ]
        );
        let on_failure = "[processes.main]\nrestart = \"on-failure\"\n";
        assert_eq!(
            lines(&format!(
                "{on_failure}max_backoff_ms = 50\n[processes.logger]\nrestart = \"on-failure\"\n\
                 backoff_ms = 6000\n"
            )),
            [
                "deploy.toml:3:1: 'max_backoff_ms' in process 'main' (50) is less than \
                 'backoff_ms' (100, the default)",
                "deploy.toml:6:1: 'backoff_ms' in process 'logger' (6000) is more than \
                 'max_backoff_ms' (5000, the default)",
            ]
        );
    }

    #[test]
    fn invalid_process_names() {
        let long = "p".repeat(65);
        assert_eq!(
            lines(&format!(
                "[processes.\"my process\"]\nagents = [\"log\"]\n[processes.{long}]\n\
                 agents = [\"alarm\"]\n"
            )),
            [
                "deploy.toml:1:12: invalid process name 'my process': a process name is 1 to 64 \
                 ASCII letters, digits, '_' or '-'"
                    .to_string(),
                format!(
                    "deploy.toml:3:12: invalid process name '{long}': a process name is 1 to 64 \
                     ASCII letters, digits, '_' or '-'"
                ),
            ]
        );
    }

    #[test]
    fn bad_cpus() {
        assert_eq!(
            lines(
                "[processes.a]\nagents = [\"alarm\"]\ncpus = []\n[processes.b]\n\
                 agents = [\"log\"]\ncpus = [0, 1024, 3, 0, -1]\n"
            ),
            [
                "deploy.toml:3:8: 'cpus' in process 'a' is empty: list at least one CPU, or \
                 leave 'cpus' out to not pin",
                "deploy.toml:6:12: a CPU index in the 'cpus' of process 'b' must be at most \
                 1023, found 1024",
                "deploy.toml:6:21: CPU 0 is listed twice in the 'cpus' of process 'b'",
                "deploy.toml:6:24: a CPU index in the 'cpus' of process 'b' must be at least 0, \
                 found -1",
            ]
        );
    }

    #[test]
    fn cpus_the_machine_does_not_have_are_named_with_their_place() {
        let d = Deployment::parse(
            "deploy.toml",
            "[processes.a]\nagents = [\"alarm\"]\ncpus = [1, 7]\n\
             [processes.logger]\ncpus = [0, 1023, 2]\n",
        )
        .unwrap();
        let available = [0, 1, 2, 3, 5];
        assert_eq!(
            d.check_cpus(&["a", "logger"], &available)
                .unwrap_err()
                .to_string()
                .lines()
                .collect::<Vec<_>>(),
            [
                "deploy.toml:3:12: CPU 7 in the 'cpus' of process 'a' is not available on this \
                 machine; its CPUs are 0-3,5",
                "deploy.toml:5:12: CPU 1023 in the 'cpus' of process 'logger' is not available \
                 on this machine; its CPUs are 0-3,5",
            ]
        );
        // Processes of other hosts are not checked here.
        assert_eq!(d.check_cpus(&["main"], &available), Ok(()));
        assert_eq!(d.check_cpus(&["a"], &[1, 7]), Ok(()));
        assert_eq!(cpu_ranges(&[]), "none");
        assert_eq!(cpu_ranges(&[4, 0, 1, 9, 2]), "0-2,4,9");
    }

    #[test]
    fn reserved_env_names_are_rejected_where_they_are() {
        assert_eq!(
            lines(
                "[env]\nIOTSTREAM_DESCRIBE = \"/tmp/x\"\nIOTSTREAMING = \"fine\"\n\
                 [processes.logger]\nenv = { IOTSTREAM_PROCESS = \"main\", iotstream_run = \"ok\" }\n"
            ),
            [
                "deploy.toml:2:1: environment variable 'IOTSTREAM_DESCRIBE' in [env] is reserved: \
                 names starting with IOTSTREAM_ are set by iotstream itself",
                "deploy.toml:5:9: environment variable 'IOTSTREAM_PROCESS' in the env of process \
                 'logger' is reserved: names starting with IOTSTREAM_ are set by iotstream itself",
            ]
        );
    }

    #[test]
    fn bad_env() {
        // The column counts characters: 'é' is one.
        assert_eq!(
            lines(
                "[env]\n\"\" = \"x\"\nN = 5\n[processes.logger]\n\
                 env = { \"café\" = \"x\", \"A=B\" = \"y\", Z = \"a\\u0000b\" }\n"
            ),
            [
                "deploy.toml:2:1: empty environment variable name in [env]",
                "deploy.toml:3:5: environment variable 'N' in [env] must be a string, found \
                 integer 5",
                "deploy.toml:5:23: environment variable name 'A=B' in the env of process \
                 'logger' must not contain '=' or NUL",
                "deploy.toml:5:40: the value of environment variable 'Z' in the env of process \
                 'logger' must not contain NUL",
            ]
        );
    }

    #[test]
    fn several_hosts_without_local_need_a_host_per_process() {
        assert_eq!(
            lines(
                "[hosts.edge]\naddress = \"10.0.0.2\"\n[hosts.cloud]\naddress = \"10.0.0.3\"\n\
                 [processes.logger]\nagents = [\"log\"]\n[network]\ninsecure = true\n"
            ),
            [
                "deploy.toml:1:8: process 'main' needs a host: there are several hosts and none \
                 is named 'local' (add [processes.main] with host = \"...\"); the hosts are \
                 'edge' and 'cloud'",
                "deploy.toml:5:12: process 'logger' needs a host: there are several hosts and \
                 none is named 'local' (add host = \"...\"); the hosts are 'edge' and 'cloud'",
            ]
        );
        // The only host is the default.
        let d = Deployment::parse("deploy.toml", "[hosts.edge]\naddress = \"10.0.0.2\"\n").unwrap();
        let plan = d.plan(&app()).unwrap();
        assert_eq!(plan.hosts, [host("edge", "10.0.0.2", DEFAULT_PORT)]);
        assert_eq!(plan.process_host["main"], "edge");
        assert_eq!(plan.process_host["logger"], "edge");
    }

    #[test]
    fn unreadable_file() {
        let e = Deployment::load(Path::new("/nonexistent/deploy.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "/nonexistent/deploy.toml: cannot read the deployment file: No such file or \
             directory (os error 2)"
        );
        assert_eq!((e.problems[0].line, e.problems[0].column), (0, 0));
    }

    #[test]
    fn problems_carry_file_line_and_column() {
        let e = Deployment::parse("site/deploy.toml", "[processes.a]\n  agents = 3\n").unwrap_err();
        assert_eq!(
            e.problems,
            [Problem {
                file: "site/deploy.toml".to_string(),
                line: 2,
                column: 12,
                message: "'agents' in process 'a' must be an array, found integer 3".to_string(),
            }]
        );
    }

    #[test]
    fn empty_file_deploys_as_declared_in_code() {
        let d = Deployment::parse("deploy.toml", "# nothing\n").unwrap();
        assert_eq!(
            d,
            Deployment {
                file: "deploy.toml".to_string(),
                digest: Sha256::digest(b"# nothing\n").into(),
                ..Deployment::default()
            }
        );
        assert_eq!(d.supervisor.drain_timeout, Duration::from_secs(10));
        assert_eq!(d.supervisor.ready_timeout, Duration::from_secs(30));
        assert_eq!(d.hosts(), [("local", "127.0.0.1")]);
        assert_eq!(d.process("main"), ProcessSettings::default());
        assert_eq!(d.process("main").restart, Restart::Never);

        let info = app();
        let plan = d.plan(&info).unwrap();
        let placed: Vec<&str> = info.agents.iter().map(|a| a.process.as_str()).collect();
        assert_eq!(plan.agent_process, placed);
        let edges: Vec<(usize, Policy)> =
            info.edges.iter().map(|e| (e.capacity, e.policy)).collect();
        assert_eq!(plan.edges, edges);
        assert!(plan.hosts.is_empty());
        let hosts: BTreeMap<String, String> = [("main", "local"), ("logger", "local")]
            .map(|(p, h)| (p.to_string(), h.to_string()))
            .into();
        assert_eq!(plan.process_host, hosts);
    }

    #[test]
    fn full_file() {
        let text = r#"
[supervisor]
drain_timeout_ms = 2500
ready_timeout_ms = 40000

[env]
RUST_LOG = "info"
SHARED = "global"

[hosts.local]
address = "127.0.0.1"

[hosts.edge]
address = "10.0.0.7"

[processes.detector]
host = "local"
agents = ["detector", "alarm"]
restart = "on-failure"
max_restarts = 5
backoff_ms = 50
max_backoff_ms = 1000
cpus = [1, 0]
workers = 2
env = { KEY = "value", SHARED = "mine" }

[processes.logger]
host = "edge"

[processes.main]
restart = "on-failure"

[[connections]]
stream = "sensor.out"
to = "average.in"
capacity = 64
capacity_bytes = 4096
policy = "drop-newest"
spin_us = 150

[[connections]]
stream = "sensor.out"
capacity = 1024
policy = "drop-oldest"
spin_us = "always"

[network]
insecure = true
"#;
        let d = Deployment::parse("deploy.toml", text).unwrap();
        assert_eq!(d.file, "deploy.toml");
        assert_eq!(
            d.supervisor,
            SupervisorSettings {
                drain_timeout: Duration::from_millis(2500),
                ready_timeout: Duration::from_millis(40000),
            }
        );
        assert_eq!(d.hosts(), [("local", "127.0.0.1"), ("edge", "10.0.0.7")]);
        let env = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(d.env, env(&[("RUST_LOG", "info"), ("SHARED", "global")]));
        assert_eq!(
            d.process("detector"),
            ProcessSettings {
                restart: Restart::OnFailure {
                    max_restarts: 5,
                    backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(1000),
                },
                env: env(&[("KEY", "value"), ("RUST_LOG", "info"), ("SHARED", "mine")]),
                cpus: Some(vec![1, 0]),
                workers: Some(2),
            }
        );
        assert_eq!(
            d.process("main"),
            ProcessSettings {
                restart: Restart::OnFailure {
                    max_restarts: 3,
                    backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_millis(5000),
                },
                env: env(&[("RUST_LOG", "info"), ("SHARED", "global")]),
                cpus: None,
                workers: None,
            }
        );
        assert_eq!(
            d.process("logger"),
            ProcessSettings {
                restart: Restart::Never,
                env: env(&[("RUST_LOG", "info"), ("SHARED", "global")]),
                cpus: None,
                workers: None,
            }
        );
        assert_eq!(d.process("not-in-the-file"), d.process("logger"));

        let info = app();
        let plan = d.plan(&info).unwrap();
        let default = info.default_capacity;
        assert_eq!(
            plan,
            Plan {
                // sensor, detector, average, alarm, log
                agent_process: ["main", "detector", "main", "detector", "logger"]
                    .map(String::from)
                    .into(),
                // The entry naming one connection wins over the one for its whole stream.
                edges: vec![
                    (1024, Policy::DropOldest),
                    (64, Policy::DropNewest),
                    (default, Policy::Block),
                    (default, Policy::Block),
                ],
                capacity_bytes: vec![None, Some(4096), None, None],
                broker: vec![false; 4],
                spin_us: vec![Some(u64::MAX), Some(150), None, None],
                hosts: vec![
                    host("local", "127.0.0.1", DEFAULT_PORT),
                    host("edge", "10.0.0.7", DEFAULT_PORT),
                ],
                process_host: [("main", "local"), ("detector", "local"), ("logger", "edge")]
                    .map(|(p, h)| (p.to_string(), h.to_string()))
                    .into(),
                process_workers: [("detector".to_string(), 2)].into(),
            }
        );
    }

    #[test]
    fn moving_every_agent_out_of_a_code_process_drops_it() {
        let d = Deployment::parse("deploy.toml", "[processes.main]\nagents = [\"log\"]\n").unwrap();
        let plan = d.plan(&app()).unwrap();
        assert_eq!(plan.agent_process, ["main"; 5]);
        assert_eq!(plan.process_host.keys().collect::<Vec<_>>(), ["main"]);
    }

    #[test]
    fn restart_delays_double_up_to_the_limit() {
        let r = Restart::OnFailure {
            max_restarts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(5000),
        };
        let waits: Vec<_> = (0..=4).map(|n| r.delay(n)).collect();
        let ms = |n| Some(Duration::from_millis(n));
        assert_eq!(waits, [None, ms(100), ms(200), ms(400), None]);
        assert_eq!(Restart::Never.delay(1), None);
        let many = Restart::OnFailure {
            max_restarts: u32::MAX,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(5000),
        };
        assert_eq!(many.delay(40), ms(5000));
    }

    #[test]
    fn a_plan_applies_to_its_graph() {
        let text = "[hosts.edge]\naddress = \"10.0.0.7\"\n[hosts.local]\naddress = \"127.0.0.1\"\n\
                    [processes.logger]\nhost = \"edge\"\n[processes.work]\nagents = [\"detector\"]\n\
                    [[connections]]\nstream = \"sensor.out\"\nto = \"average.in\"\ncapacity = 16\n\
                    policy = \"drop-oldest\"\n[network]\ninsecure = true\n";
        let d = Deployment::parse("deploy.toml", text).unwrap();
        let mut g = app_graph();
        let plan = d.plan(&g.info()).unwrap();
        g.apply_plan(&plan);
        let info = g.info();
        let placed: Vec<&str> = info.agents.iter().map(|a| a.process.as_str()).collect();
        assert_eq!(placed, plan.agent_process);
        assert_eq!(placed, ["main", "work", "main", "main", "logger"]);
        let edges: Vec<(usize, Policy)> =
            info.edges.iter().map(|e| (e.capacity, e.policy)).collect();
        assert_eq!(edges, plan.edges);
        assert_eq!(edges[1], (16, Policy::DropOldest));
        let hosts: Vec<(&str, &str, Vec<&str>)> = info
            .hosts
            .iter()
            .map(|h| {
                let processes = h.processes.iter().map(String::as_str).collect();
                (h.name.as_str(), h.address.as_str(), processes)
            })
            .collect();
        assert_eq!(
            hosts,
            [
                ("edge", "10.0.0.7", vec!["logger"]),
                ("local", "127.0.0.1", vec!["main", "work"]),
            ]
        );
    }

    /// The example of `docs/deployment.md` is valid for an app with the agents it names.
    #[test]
    fn the_documented_example_is_valid() {
        let doc = include_str!("../docs/deployment.md");
        let start = doc.find("```toml\n").expect("a TOML example") + "```toml\n".len();
        let example = &doc[start..start + doc[start..].find("```").expect("its end")];
        let d = Deployment::parse("deployment.md", example).unwrap();
        let mut g = Graph::new("doc");
        let s = g.source_iter("sensor", 0..10u64);
        let alarms = g.map("detector", &s, |x: &u64| *x > 5);
        g.for_each("alarm", &alarms, |_: &bool| {});
        let plan = d.plan(&g.info()).unwrap();
        assert_eq!(plan.agent_process, ["main", "detector", "main"]);
        assert_eq!(plan.edges[0], (1024, Policy::DropOldest));
        assert_eq!(d.process("detector").cpus, Some(vec![2, 3]));
        assert_eq!(d.process("detector").env["RUST_LOG"], "info");
    }

    #[test]
    fn an_address_the_resolver_would_read_as_another_ip_is_refused() {
        // None of these is an IP address (`IpAddr` refuses each), and none is a host name
        // (a name's last label is never all digits): the C resolver the links use reads them
        // as *other* addresses (inet_aton: "192.168.1" is 192.168.0.1, "10.0.0.010" is
        // 10.0.0.8, octal) or as nothing at all ("10.0.0.256"). Each is a typo, refused where
        // it is written.
        for address in ["192.168.1", "10.0.0.010", "10.0.0.256", "127.1"] {
            let text = format!("[hosts.local]\naddress = \"{address}\"\n");
            let got = Deployment::parse("deploy.toml", &text);
            let e = match got {
                Ok(_) => panic!("address = \"{address}\" was accepted"),
                Err(e) => e.to_string(),
            };
            assert!(
                e.starts_with(
                    "deploy.toml:2:11: 'address' in host 'local' must be an IP address or a \
                     host name"
                ) && e.contains(address)
                    && e.contains("a host name cannot end in a number"),
                "{address}: {e}"
            );
        }
    }

    #[test]
    fn between_a_host_and_itself_is_refused() {
        // `between` pairs two hosts: connections between processes on the two cross the
        // broker. A pair naming one host twice is a mistake, and was accepted: it put every
        // connection of that host through the broker, even those inside one process.
        let text =
            "[broker]\nurl = \"nats://127.0.0.1:4222\"\nbetween = [[\"local\", \"local\"]]\n";
        match Deployment::parse("deploy.toml", text) {
            Err(e) => assert!(
                e.to_string().starts_with("deploy.toml:3:12: ")
                    && e.to_string().contains("'local'"),
                "{e}"
            ),
            Ok(d) => {
                let plan = d.plan(&app()).unwrap();
                // sensor.out -> detector.in: both agents in process 'main'.
                panic!(
                    "accepted; connections through the broker: {:?} (sensor.out -> detector.in, \
                     inside process 'main', is {})",
                    plan.broker, plan.broker[0]
                );
            }
        }
    }

    #[test]
    fn a_connection_through_the_broker_takes_no_port_of_its_host() {
        // average.out -> log.in (connection 3) crosses the broker, by `between` or by its own
        // entry: no listener of `edge` serves it, so edge's `port` need not leave room for it.
        let hosts = "[hosts.local]\naddress = \"127.0.0.1\"\n[hosts.edge]\naddress = \"10.0.0.7\"\n\
                     port = 65535\n[processes.logger]\nhost = \"edge\"\n[network]\ninsecure = true\n\
                     [broker]\nurl = \"nats://10.0.0.5:4222\"\n";
        for routed in [
            "between = [[\"local\", \"edge\"]]\n",
            "[[connections]]\nstream = \"average.out\"\ntransport = \"broker\"\n",
        ] {
            let text = format!("{hosts}{routed}");
            let d = Deployment::parse("deploy.toml", &text).unwrap();
            match d.plan(&app()) {
                Ok(plan) => assert!(plan.broker[3]),
                Err(e) => panic!("{routed:?}: refused: {e}"),
            }
        }
    }

    #[test]
    fn an_entry_with_to_wins_over_its_streams_entry_in_the_capacity_checks_too() {
        // "an entry with `to` sets that one connection and wins over an entry for the whole
        // stream, whatever their order": average.in gets 8 (or 64 bytes, 8 elements), what
        // agent 'average' needs; detector.in gets the stream's 4. Refused, for the 4 that
        // the `to` entry replaces.
        for text in [
            "[[connections]]\nstream = \"sensor.out\"\ncapacity = 4\n\
             [[connections]]\nstream = \"sensor.out\"\nto = \"average.in\"\ncapacity = 8\n",
            "[[connections]]\nstream = \"sensor.out\"\ncapacity_bytes = 32\n\
             [[connections]]\nstream = \"sensor.out\"\nto = \"average.in\"\ncapacity_bytes = 64\n",
        ] {
            let d = Deployment::parse("deploy.toml", text).unwrap();
            let plan = match d.plan(&app()) {
                Ok(plan) => plan,
                Err(e) => panic!("refused:\n{e}\nfor:\n{text}"),
            };
            if text.contains("capacity = 4") {
                assert_eq!((plan.edges[0].0, plan.edges[1].0), (4, 8));
            } else {
                assert_eq!(plan.capacity_bytes[..2], [Some(32), Some(64)]);
            }
        }
    }

    #[test]
    fn broker_creds_and_tls_files_are_checked_when_the_run_starts() {
        // As token_file and password_file are: a file that is not there is named with the
        // deployment file, line and column when the run starts (before any process does),
        // not by a link once the application runs.
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("deploy.toml").display().to_string();
        for (text, at) in [
            (
                "[broker]\nurl = \"nats://127.0.0.1:4222\"\ncreds = \"app.creds\"\n",
                "3:1: [broker] creds",
            ),
            (
                "[broker]\nurl = \"tls://127.0.0.1:4222\"\ntls_ca = \"ca.pem\"\n",
                "3:1: [broker] tls_ca",
            ),
        ] {
            let d = Deployment::parse(&name, text).unwrap();
            match d.broker.as_ref().unwrap().settings() {
                Ok(_) => panic!("{text:?}: a missing file was taken"),
                Err(e) => assert!(e.to_string().starts_with(&format!("{name}:{at}")), "{e}"),
            }
        }
    }

    #[test]
    fn broker_token_and_password_files_are_checked_as_the_network_secret_is() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let name = dir.path().join("deploy.toml").display().to_string();
        let d = Deployment::parse(
            &name,
            "[broker]\nurl = \"nats://127.0.0.1:4222\"\ntoken_file = \"nats.token\"\n",
        )
        .unwrap();
        let token = dir.path().join("nats.token");
        // Readable by every user of the machine: the [network] secret is refused so, as an
        // ssh key is; the NATS token that gives the same access to the streams is taken.
        std::fs::write(&token, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        match d.broker.as_ref().unwrap().settings() {
            Ok(_) => panic!("a token file of mode 0644 was taken"),
            Err(e) => assert!(
                e.to_string()
                    .starts_with(&format!("{name}:3:1: [broker] token_file")),
                "{e}"
            ),
        }
        // A named pipe named by mistake: the [network] secret is opened without waiting for
        // a writer ("not a regular file"); the token's read waits for one forever (the
        // describe step then ends, after 60 s, with "did not describe its graph").
        std::fs::remove_file(&token).unwrap();
        nix::unistd::mkfifo(&token, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let b = d.broker.clone().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(b.settings().map(|_| ()).map_err(|e| e.to_string()));
        });
        match rx.recv_timeout(Duration::from_secs(10)) {
            Ok(r) => assert!(
                r.is_err_and(|e| e.contains("token_file")),
                "a FIFO was taken"
            ),
            Err(_) => {
                // Unblock the reader so that the test process ends.
                let _ = std::fs::OpenOptions::new().write(true).open(&token);
                panic!("reading a token_file that is a named pipe did not return in 10 s");
            }
        }
    }
}
