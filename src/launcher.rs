//! The engine of the `iotstream` launcher binary: describe, check, run and clean.
//!
//! The binary (`src/bin/iotstream.rs`) only parses its command line and calls these functions;
//! they are public so that a program (a test, a service manager) can do the same without a
//! shell.
//!
//! # How the launcher learns an application's graph
//!
//! It never guesses: it starts the application binary with `IOTSTREAM_DESCRIBE` set to a file
//! path (and the deployment, if any: its name in the environment, its text in a sealed memfd
//! the application inherits, see [`DeploymentFile`]). [`Graph::start`](crate::Graph::start)
//! then applies the deployment, checks the graph, writes its [`GraphInfo`] (or what is wrong
//! with it) to that file as JSON, and exits, before running anything ([`describe`]). The
//! application dies with the launcher (`PR_SET_PDEATHSIG`), and a Ctrl-C, SIGTERM or SIGHUP
//! meanwhile kills it, removes the file and ends the launcher with 128 + the signal.
//!
//! # How it runs one
//!
//! [`run`] creates the shared-memory rings of the application's connections between processes,
//! then starts each process of this host as a child (the application binary, with its role and
//! the deployment's memfd in its environment, and a control channel on file descriptor 3),
//! waits for every child to report **ready** (its part of the graph built, its rings opened),
//! then tells them all **go**: no agent runs before every process is ready. It then supervises:
//!
//! - A child that exits with 0 is done. One that fails or is killed is noticed at once (its
//!   waiter thread reports it); under `restart = "on-failure"` it is started again after its
//!   backoff (doubled each time, up to the limit), and resumes from the data waiting in its input
//!   rings; otherwise the run stops, and the launcher exits with that child's status.
//! - Ctrl-C, SIGTERM or SIGHUP (a hang-up: the terminal closed, the SSH session dropped; not
//!   under `nohup`) starts a **graceful drain**: no more restarts, every child is told `stop`
//!   on its control channel (its sources end their streams, data in flight is processed, sinks
//!   flush) and exits 0. Children still alive after the drain timeout are killed and the exit is
//!   non-zero. A second signal kills everything at once (exit 128 + the signal). Children run in
//!   process groups of their own, so a terminal's Ctrl-C or hang-up reaches only the launcher.
//! - Every child's output lines are prefixed with `[process]`; the launcher's own lines with
//!   `[iotstream]`.
//! - The rings are removed on every exit of the launcher that runs code; after a SIGKILL of the
//!   launcher (its children die with it), `iotstream clean` or the next run removes them.
//!
//! # How it can be seen and steered while it runs
//!
//! - Every supervised process reports its counters on its control channel (`metrics <json>`,
//!   every `--metrics-interval`, default 1 s); the launcher keeps the latest report of each
//!   process, with its status, pid, start time and restarts, and the last output lines of
//!   each, on its [`Board`].
//! - It listens on a Unix socket in the user's runtime folder ([`socket`]), through which
//!   `iotstream list`, `stop`, `logs` and `restart` (and the functions behind them:
//!   [`socket::list`], [`socket::find`], [`Listed`]) reach it. Only the same user can: the
//!   folder is private, the socket mode 0600, and each peer's uid is checked.

pub mod board;
pub mod socket;
mod watch;

pub use board::{Board, LogBook, LogFilter, LogLine, Phase, ProcessState, Status};
pub use socket::{Listed, Listing, OpError, OpErrorKind, Reply, Request};

#[cfg(feature = "cli")]
pub mod top;

use std::ffi::OsString;
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::Signal;

use crate::deploy::{DeployError, Deployment, Problem, ProcessSettings, Restart};
use crate::error::Error;
use crate::info::GraphInfo;
use crate::launch::describe::{Described, DescribedError};
use crate::launch::signals::{self, Again, OnSignal};
use crate::launch::{self, ChildCommand, RunId, Segments};
use crate::observe::{ProcessSample, ProcessStatus};

/// How long an application may take to describe its graph.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(60);

/// The supervisor's event queue: a few events per process and signal at most are pending.
const EVENTS_BOUND: usize = 64;

/// An application binary and the arguments it is started with.
#[derive(Clone, Debug)]
pub struct AppCommand {
    /// The binary: a path, or a name looked up in `PATH`.
    pub program: PathBuf,
    /// Arguments passed to every process of the application.
    pub args: Vec<OsString>,
}

/// A deployment file, read once: its text is passed to every process, so that a restarted
/// process sees the same deployment even if the file changes meanwhile. It travels in a sealed
/// memfd the processes inherit (whatever its size: the environment would limit it to 128 KiB),
/// closed by the kernel when the last of them ends.
#[derive(Debug)]
pub struct DeploymentFile {
    /// The file's name, as given (used in messages).
    pub name: String,
    /// Its text.
    pub text: String,
    /// Its parsed content.
    pub deployment: Deployment,
    /// The text, for the application's processes.
    fd: launch::DeploymentFd,
}

impl DeploymentFile {
    /// Reads and parses `path`. Errors name the file, line and column.
    pub fn load(path: &Path) -> Result<DeploymentFile, Error> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| Error::Deployment {
            problems: vec![format!("{name}: cannot read the deployment file: {e}")],
        })?;
        let deployment = Deployment::parse(&name, &text)?;
        let fd = launch::DeploymentFd::new(&text)?;
        Ok(DeploymentFile {
            name,
            text,
            deployment,
            fd,
        })
    }

    /// The variables that tell a process where its deployment is; it must also inherit
    /// [`fd`](Self::fd).
    fn env(&self) -> [(String, String); 2] {
        [
            (launch::ENV_DEPLOY_FILE.into(), self.name.clone()),
            (launch::ENV_DEPLOY_FD.into(), self.fd.raw().to_string()),
        ]
    }

    /// The descriptor a process inherits to read the deployment.
    fn fd(&self) -> std::os::fd::RawFd {
        self.fd.raw()
    }
}

/// The bearer token the live view of a launcher running `deployment` asks for off loopback
/// (`iotstream view-token`): derived from the deployment's secret (see `docs/operations.md`),
/// so that the secret itself never travels over HTTP. An error if the deployment has no
/// `secret_file` in `[network]`, or names a file that cannot be read as a secret (naming the
/// file and what is wrong).
pub fn view_token(deployment: &DeploymentFile) -> Result<String, Error> {
    let settings = &deployment.deployment;
    let problem = |detail: String| Error::Deployment {
        problems: vec![format!(
            "{}: [network] secret_file: {detail}",
            deployment.name
        )],
    };
    let path = settings.network.secret_file.as_ref().ok_or_else(|| {
        problem(
            "not set: without a secret the live view serves loopback addresses only, and asks \
             for no token (see docs/security.md)"
                .into(),
        )
    })?;
    // Its problems at the place of `secret_file` in the file.
    settings.check_secret_file()?;
    let secret =
        crate::transport::tcp::auth::Secret::from_file(path).map_err(|e| problem(e.to_string()))?;
    Ok(crate::transport::tcp::auth::view_token(&secret))
}

/// Asks `app` for its graph, placed by `deployment` (as declared in code if `None`). Fails if
/// the application does not describe itself, or if the deployment does not fit its graph
/// (every problem with file, line and column) or the graph is not well formed.
///
/// A SIGINT, SIGTERM or SIGHUP while the application describes itself ends this process with
/// status 128 + the signal, once the application is killed and its description file removed:
/// nothing runs yet, there is nothing to drain. (The application also dies with the thread
/// that calls this, `PR_SET_PDEATHSIG`, if that ends first.)
pub fn describe(
    app: &AppCommand,
    deployment: Option<&DeploymentFile>,
) -> Result<(GraphInfo, String), Error> {
    match ask_for_graph(app, deployment)? {
        Answer::Graph(info, fingerprint) => Ok((info, fingerprint)),
        Answer::Signalled(sig) => std::process::exit(128 + sig),
    }
}

/// How [`ask_for_graph`] ended, if not with an error.
enum Answer {
    /// The application's graph and fingerprint.
    Graph(GraphInfo, String),
    /// This signal came while the application described itself: it was killed and its
    /// description file removed.
    Signalled(i32),
}

/// How long after the describing application died of SIGINT, SIGTERM or SIGHUP the launcher
/// waits to learn whether the signal was its own too (a terminal's, sent to the whole process
/// group): then it stops as a signal says, instead of reporting a failed application.
const OWN_SIGNAL_WITHIN: Duration = Duration::from_millis(500);

/// [`describe`], telling a signal that came meanwhile to the caller instead of ending the
/// process.
fn ask_for_graph(app: &AppCommand, deployment: Option<&DeploymentFile>) -> Result<Answer, Error> {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let path = std::env::temp_dir().join(format!(
        "iotstream-describe-{}-{nanos:x}.json",
        std::process::id()
    ));
    let _remove = RemoveOnDrop(path.clone());
    // Before the application starts: a signal from here on stops it (below) instead of ending
    // the launcher with the application left running. The first signal counts, later ones
    // change nothing.
    let signalled = Arc::new(AtomicI32::new(0));
    let _signals = {
        let (first, again) = (Arc::clone(&signalled), Arc::clone(&signalled));
        signals::register(OnSignal {
            terminal: true,
            first: Box::new(move |sig| {
                let _ = first.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            }),
            again: Again::Call(Box::new(move |sig| {
                let _ = again.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
            })),
            bound: None,
        })?
    };
    let mut cmd = Command::new(&app.program);
    cmd.args(&app.args)
        .env(launch::ENV_DESCRIBE, &path)
        .env_remove(launch::ENV_PROCESS)
        .env_remove(launch::ENV_CONTROL_FD)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(d) = deployment {
        // The graph it describes is the one every process builds: with `[env]`, which every
        // process gets (a graph that reads it was refused as "a different graph").
        cmd.envs(&d.deployment.env);
        cmd.envs(d.env());
        launch::inherit_fd(&mut cmd, d.fd());
    } else {
        cmd.env_remove(launch::ENV_DEPLOY_FD);
    }
    launch::die_with_us(&mut cmd);
    let shown = app.program.display().to_string();
    let mut child = cmd.spawn().map_err(|e| {
        // Executing a folder fails with EACCES, which would read as a permission problem.
        let why = if e.kind() == std::io::ErrorKind::PermissionDenied && app.program.is_dir() {
            "it is a directory, not a program".to_string()
        } else {
            e.to_string()
        };
        // A bare name is looked up in PATH, not in the current folder.
        let bare = app.program.components().count() == 1 && !shown.starts_with('.');
        let hint = match () {
            _ if e.kind() != std::io::ErrorKind::NotFound || !bare => String::new(),
            _ if app.program.is_file() => format!(
                " (a name without a '/' is looked up in PATH, not in this folder: run ./{shown})"
            ),
            _ => " (a name without a '/' is looked up in PATH)".to_string(),
        };
        Error::Runtime {
            detail: format!("cannot start the application '{shown}': {why}{hint}"),
        }
    })?;
    let stderr = child.stderr.take().expect("stderr is piped");
    // Its last 5 lines on standard error, for the message if it does not describe itself.
    let tail = std::thread::spawn(move || {
        let mut reader = launch::OutputLines::new(stderr);
        let mut last = std::collections::VecDeque::with_capacity(5);
        let mut line = Vec::new();
        while reader.next_piece(&mut line) {
            if last.len() == 5 {
                last.pop_front();
            }
            last.push_back(String::from_utf8_lossy(&line).trim_end().to_string());
        }
        Vec::from(last).join(" | ")
    });
    let deadline = Instant::now() + DESCRIBE_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| Error::Runtime {
            detail: format!("waiting for '{shown}': {e}"),
        })? {
            break status;
        }
        let sig = signalled.load(Ordering::SeqCst);
        if sig != 0 {
            let pid = child.id();
            let _ = child.kill();
            let _ = child.wait();
            // The description file goes with `_remove`, as this returns.
            log(&format!(
                "signal {sig}: stopped '{shown}' (pid {pid}) while it described its graph; \
                 nothing had started"
            ));
            return Ok(Answer::Signalled(sig));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Runtime {
                detail: format!(
                    "'{shown}' did not describe its graph within {} s: does it build its graph and call Graph::run or Graph::start without waiting for anything first?",
                    DESCRIBE_TIMEOUT.as_secs()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    // A terminal's Ctrl-C (or hang-up) reaches the application too, which is in this
    // process's group while it describes itself: it may die of that very signal before this
    // process's own handler has said so. Stopped by a signal, not failed.
    if let Some(sig) = std::os::unix::process::ExitStatusExt::signal(&status)
        .filter(|s| [libc::SIGINT, libc::SIGTERM, libc::SIGHUP].contains(s))
    {
        let until = Instant::now() + OWN_SIGNAL_WITHIN;
        while signalled.load(Ordering::SeqCst) == 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(5));
        }
        let own = signalled.load(Ordering::SeqCst);
        if own != 0 {
            log(&format!(
                "signal {own}: '{shown}' ended (signal {sig}) while it described its graph; \
                 nothing had started"
            ));
            return Ok(Answer::Signalled(own));
        }
    }
    let last = tail.join().unwrap_or_default();
    let text = match std::fs::read(&path) {
        Ok(t) => t,
        Err(_) => {
            // A program that failed and said why on standard error may well be an iotstream
            // application (one that rejects its arguments, say): its lines say what happened.
            // One that ended well or silently is asked what it is.
            let question = if status.success() || last.is_empty() {
                "is it an iotstream application that builds a Graph and calls Graph::run or Graph::start?"
            } else {
                "it ended before calling Graph::run or Graph::start."
            };
            let mut detail = format!(
                "'{shown}' did not describe its graph ({}): {question}",
                describe_status(status)
            );
            if !last.is_empty() {
                detail.push_str(&format!(" Its last lines on standard error: {last}"));
            }
            return Err(Error::Runtime { detail });
        }
    };
    let described: Described = serde_json::from_slice(&text).map_err(|e| Error::Runtime {
        detail: format!("'{shown}' wrote a description the launcher cannot read: {e}"),
    })?;
    match described {
        Described::Graph { info, fingerprint } => Ok(Answer::Graph(info, fingerprint)),
        Described::Error(DescribedError::Deployment { problems }) => {
            Err(Error::Deployment { problems })
        }
        Described::Error(DescribedError::Graph { app, problems }) => {
            Err(Error::Graph { app, problems })
        }
        Described::Error(DescribedError::Other { message }) => Err(Error::Runtime {
            detail: format!("'{shown}': {message}"),
        }),
    }
}

/// Checks `deployment` against `app` as `iotstream check` does: asks the application for its
/// graph as the file places it ([`describe`]), then checks what [`run`] checks before it
/// starts anything, reporting every problem at once: the `cpus` of the processes of this host
/// (`host`, or the one [`run`] would pick) against the CPUs this machine lets the launcher use,
/// and the secret and TLS files of `[network]`. When several hosts leave the host undecided
/// (none named `local` and no `host`), CPUs are not checked (this machine may be any of them),
/// and the TLS files are checked if any host has links to another.
pub fn check(
    app: &AppCommand,
    deployment: &DeploymentFile,
    host: Option<&str>,
) -> Result<GraphInfo, Error> {
    let (info, _) = describe(app, Some(deployment))?;
    let host = match (host, pick_host(&info, None)) {
        (Some(wanted), _) => Some(pick_host(&info, Some(wanted))?),
        (None, picked) => picked.ok(),
    };
    let settings = &deployment.deployment;
    let mut problems: Vec<Problem> = Vec::new();
    if let Some(host) = &host {
        if let Err(e) = check_cpus(&info, settings, host) {
            problems.extend(e.problems);
        }
    }
    let links = !links_between_hosts(&info, host.as_deref()).is_empty();
    problems.extend(network_file_problems(settings, links));
    if problems.is_empty() {
        return Ok(info);
    }
    problems.sort_by_key(|p| (p.line, p.column));
    Err(Error::Deployment {
        problems: problems.iter().map(Problem::to_string).collect(),
    })
}

/// The `cpus` of the processes of `host` exist on this machine: the CPUs of the launcher's
/// affinity mask (a child pinned to another fails to start with EINVAL, or is silently pinned
/// to fewer CPUs than the file says). Not checked if the mask cannot be read.
fn check_cpus(info: &GraphInfo, deployment: &Deployment, host: &str) -> Result<(), DeployError> {
    let Some(available) = available_cpus() else {
        return Ok(());
    };
    let processes: Vec<&str> = info
        .processes
        .iter()
        .filter(|p| info.host_of(p).is_none_or(|h| h.name == host))
        .map(String::as_str)
        .collect();
    deployment.check_cpus(&processes, &available)
}

/// The CPUs this process may run on (`sched_getaffinity`), or `None` if that cannot be read.
fn available_cpus() -> Option<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).ok()?;
    Some(
        (0..nix::sched::CpuSet::count())
            .filter(|&c| set.is_set(c).unwrap_or(false))
            .collect(),
    )
}

fn describe_status(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(c), _) => format!("it exited with status {c}"),
        (None, Some(s)) => format!("it was killed by signal {s}"),
        _ => "it ended abnormally".into(),
    }
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// graph

/// How `iotstream graph` prints a graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GraphFormat {
    /// For people: hosts, processes and their agents, connections and their transports.
    Text,
    /// [`GraphInfo`] as JSON, for programs.
    Json,
    /// Graphviz: hosts and processes as clusters, agents as nodes, connections as edges.
    Dot,
}

/// Renders `info` in `format`.
pub fn render(info: &GraphInfo, format: GraphFormat) -> String {
    match format {
        GraphFormat::Text => render_text(info),
        GraphFormat::Json => {
            let mut s = serde_json::to_string_pretty(info).expect("a GraphInfo serializes");
            s.push('\n');
            s
        }
        GraphFormat::Dot => render_dot(info),
    }
}

fn plural(n: usize, what: &str) -> String {
    match (n, what.ends_with('s')) {
        (1, _) => format!("{n} {what}"),
        (_, true) => format!("{n} {what}es"),
        (_, false) => format!("{n} {what}s"),
    }
}

/// One line: the application, and how many agents, connections, processes and hosts it has.
pub fn summary(info: &GraphInfo) -> String {
    format!(
        "application '{}': {}, {}, {} on {}",
        info.app,
        plural(info.agents.len(), "agent"),
        plural(info.edges.len(), "connection"),
        plural(info.processes.len(), "process"),
        plural(info.hosts.len(), "host"),
    )
}

fn render_text(info: &GraphInfo) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "{}", summary(info));
    for h in &info.hosts {
        // With several hosts the launchers ask each other for the live view there.
        let observe = match info.hosts.len() {
            1 => String::new(),
            _ => format!(", observation port {}", h.observation_port()),
        };
        let _ = writeln!(s, "\nhost {} ({}{observe})", h.name, h.address);
        for p in &h.processes {
            let agents: Vec<String> = info
                .agents
                .iter()
                .filter(|a| &a.process == p)
                .map(|a| match a.reads_stdin {
                    true => format!("{} (standard input)", a.name),
                    false => a.name.clone(),
                })
                .collect();
            let _ = writeln!(s, "  process {p}: {}", agents.join(", "));
        }
    }
    let _ = writeln!(s, "\nconnections");
    let width = info
        .edges
        .iter()
        .map(|e| e.stream.len() + e.input.len() + 4)
        .max()
        .unwrap_or(0);
    for (i, e) in info.edges.iter().enumerate() {
        let element = &info.agents[e.from_agent].outputs[e.from_port].element;
        let mut how = e.transport.clone();
        if let Some(b) = e.ring_bytes {
            how.push_str(&format!(" (ring of {})", human_bytes(b)));
        }
        let reader_host = info.host_of(&info.agents[e.to_agent].process);
        if let (true, Some(h)) = (e.transport == "tcp", reader_host) {
            how.push_str(&format!(" (to {}:{})", h.address, usize::from(h.port) + i));
        }
        let policy = serde_json::to_value(e.policy)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = writeln!(
            s,
            "  {:width$}  {how}, capacity {}, {policy}, {element}",
            format!("{} -> {}", e.stream, e.input),
            e.capacity
        );
    }
    s
}

fn human_bytes(b: usize) -> String {
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1 << 10 && b % (1 << 10) == 0 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// A dot identifier: always quoted, with `"` and `\` escaped.
fn dot_id(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn render_dot(info: &GraphInfo) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "digraph {} {{", dot_id(&info.app));
    let _ = writeln!(s, "  rankdir=LR;");
    let _ = writeln!(s, "  node [shape=box];");
    for h in &info.hosts {
        let _ = writeln!(
            s,
            "  subgraph {} {{",
            dot_id(&format!("cluster_host_{}", h.name))
        );
        let _ = writeln!(
            s,
            "    label={};",
            dot_id(&format!("host {} ({})", h.name, h.address))
        );
        for p in &h.processes {
            let _ = writeln!(
                s,
                "    subgraph {} {{",
                dot_id(&format!("cluster_process_{p}"))
            );
            let _ = writeln!(s, "      label={};", dot_id(&format!("process {p}")));
            for a in info.agents.iter().filter(|a| &a.process == p) {
                let _ = writeln!(s, "      {};", dot_id(&a.name));
            }
            let _ = writeln!(s, "    }}");
        }
        let _ = writeln!(s, "  }}");
    }
    for e in &info.edges {
        let from = &info.agents[e.from_agent];
        let to = &info.agents[e.to_agent];
        let style = match e.transport.as_str() {
            "local" => "solid",
            "shared-memory" => "bold",
            _ => "dashed",
        };
        let _ = writeln!(
            s,
            "  {} -> {} [label={}, style={style}];",
            dot_id(&from.name),
            dot_id(&to.name),
            dot_id(&format!(
                "{} -> {} ({})",
                from.outputs[e.from_port].name, to.inputs[e.to_port].name, e.transport
            ))
        );
    }
    s.push_str("}\n");
    s
}

// ---------------------------------------------------------------------------------------------
// clean

/// What [`clean`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Cleaned {
    /// The shared-memory objects removed (names with their leading `/`, in `/dev/shm`): those
    /// of runs whose owner is provably dead, each run's liveness lock included.
    pub removed: Vec<String>,
    /// Objects left alone because nothing proves their owner dead, each with the reason (no
    /// liveness lock: made by an older iotstream, say).
    pub left: Vec<(String, String)>,
}

/// Removes the shared-memory objects of iotstream applications whose owner (the starter or
/// launcher that created them) is provably dead: its run's liveness lock
/// (`/dev/shm/iotstream.<app>.<run>.lock`, which the owner holds with `flock` for the run's
/// whole life) is free. A run whose owner holds its lock is never touched, even seen from
/// another PID namespace where its pid means nothing.
pub fn clean() -> Cleaned {
    let swept = launch::sweep_stale(None);
    Cleaned {
        removed: swept.removed,
        left: swept.unproven,
    }
}

// ---------------------------------------------------------------------------------------------
// run

/// Options of [`run`].
#[derive(Debug)]
pub struct RunOptions {
    /// The host this launcher runs (its processes only). Default: the deployment's host named
    /// `local`, or its only host.
    pub host: Option<String>,
    /// How often every process reports its counters to the launcher (default 1 s; zero:
    /// never).
    pub metrics_interval: Duration,
    /// How many output lines the launcher keeps per process for `iotstream logs` (default
    /// [`board::DEFAULT_LOG_LINES`]).
    pub log_lines: usize,
    /// `--metrics ADDR`: serve Prometheus text on `/metrics` and JSON on `/api/metrics` and
    /// `/api/graph` there (`host:port`; a loopback address unless the deployment has a secret,
    /// which clients then send as a bearer token).
    pub metrics: Option<String>,
    /// `--ui ADDR`: serve the live view's web page there (and the same endpoints).
    pub ui: Option<String>,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            host: None,
            metrics_interval: launch::DEFAULT_METRICS_INTERVAL,
            log_lines: board::DEFAULT_LOG_LINES,
            metrics: None,
            ui: None,
        }
    }
}

/// Runs `app` as `deployment` places it (as declared in code if `None`) and supervises it
/// until it ends; returns the exit code the launcher should end with: 0 if every process ended
/// well, else the first failure's status (a signal `s` as `128 + s`).
pub fn run(
    app: &AppCommand,
    deployment: Option<&DeploymentFile>,
    options: &RunOptions,
) -> Result<i32, Error> {
    let (info, fingerprint) = match ask_for_graph(app, deployment)? {
        Answer::Graph(info, fingerprint) => (info, fingerprint),
        // Nothing runs yet: nothing to drain, nothing to remove.
        Answer::Signalled(sig) => return Ok(128 + sig),
    };
    let fingerprint = u64::from_str_radix(&fingerprint, 16).map_err(|_| Error::Runtime {
        detail: format!("the application reported a malformed fingerprint '{fingerprint}'"),
    })?;
    let host = pick_host(&info, options.host.as_deref())?;
    if let Some(d) = deployment {
        check_cpus(&info, &d.deployment, &host)?;
    }
    let default = Deployment::default();
    let settings = deployment.map_or(&default, |d| &d.deployment);
    check_links(&info, settings, &host)?;
    let processes: Vec<String> = info
        .processes
        .iter()
        .filter(|p| info.host_of(p).is_none_or(|h| h.name == host))
        .cloned()
        .collect();
    if processes.is_empty() {
        // Nothing to start here: "every process ended well" would be a lie that hides a
        // wrong --host (or a launcher started on the wrong machine).
        let busy: Vec<&str> = info
            .hosts
            .iter()
            .filter(|h| !h.processes.is_empty())
            .map(|h| h.name.as_str())
            .collect();
        return Err(Error::Deployment {
            problems: vec![format!(
                "host '{host}' runs none of the application's processes (they run on: {}): \
                 name the host this launcher runs with --host",
                busy.join(", ")
            )],
        });
    }

    let run = RunId::new();
    // Bounded: its senders (the signal thread, a control reader and an exit waiter per started
    // child, the control socket's connections) wait while it is full, and the supervisor is
    // always receiving.
    let (events_tx, events) = mpsc::sync_channel::<Event>(EVENTS_BOUND);
    // Before anything is made that a signal's default action would leave behind (the control
    // socket, the lock, the rings): a signal from here on is an event, which the supervisor
    // takes once the processes are started (a drain).
    let signals = install_signals(events_tx.clone())?;
    let board = Arc::new(Board::new(
        info.clone(),
        run.to_string(),
        host.clone(),
        &processes,
        options.metrics_interval,
        options.log_lines,
    ));
    // Before anything is created: a launcher that cannot be reached is refused.
    let server = socket::Server::start(Arc::clone(&board), events_tx.clone())?;
    let watch = watch::Watch::start(
        Arc::clone(&board),
        watch_options(&info, settings, &host, options)?,
    )?;
    // Said once every way in is open (a run refused above announces nothing).
    note(
        &board,
        &format!(
            "control socket {} (iotstream list, stop, logs, restart)",
            server.path().display()
        ),
    );
    for (flag, bound) in watch.addrs() {
        let what = if flag == "--ui" {
            "live view"
        } else {
            "metrics"
        };
        note(&board, &format!("{what} on http://{bound}/"));
    }
    let swept = launch::sweep_stale(Some(&info.app));
    if !swept.removed.is_empty() {
        // Its processes died with its launcher: what they held in memory is gone, and what
        // its connections held goes with these objects. Said, not silent.
        log(&format!(
            "an earlier run of '{}' on this host ended without draining (its launcher died): \
             removed what it left in shared memory ({}), and with it whatever its connections \
             still held",
            info.app,
            swept.removed.join(", ")
        ));
    }
    for (name, why) in swept.unproven {
        log(&format!("left {name}: {why}"));
    }
    let segments = Arc::new(Segments::new(&info.app, &run)?);
    create_rings(&info, &run, &segments, &host)?;
    let gauges = match crate::transport::RingGauges::open(&segments.names()) {
        Ok(g) => Some(g),
        Err(e) => {
            log(&format!(
                "warning: a stall across this host's processes will not be detected: {e}"
            ));
            None
        }
    };
    let mut sup = Supervisor {
        app,
        app_name: info.app.clone(),
        deployment,
        run,
        fingerprint,
        stdin_process: info.stdin_process().map(str::to_string),
        drain_timeout: settings.supervisor.drain_timeout,
        ready_timeout: settings.supervisor.ready_timeout,
        metrics_interval: options.metrics_interval,
        board,
        members: processes
            .iter()
            .map(|p| Member::new(p, settings.process(p)))
            .collect(),
        events_tx,
        flowing: false,
        draining: None,
        signalled: false,
        failure: None,
        stall: StallWatch::new(gauges),
    };
    let code = sup.supervise(&events);
    sup.publish();
    drop(watch);
    segments.remove_all();
    server.finish(Some(*code.as_ref().unwrap_or(&2)));
    // From here on the process's signals do what they did before this run. Not before the
    // cleanup above: a signal that came once the run's outcome was decided (a Ctrl-C just
    // after "every process ended well", a second one as a drain ends) went to the signal's
    // default action, ending the launcher with 130 and leaving its rings and socket behind.
    // Until here it is an event nobody takes any more.
    drop(signals);
    code
}

/// The host this launcher runs: `wanted`, or the one named `local`, or the only one.
fn pick_host(info: &GraphInfo, wanted: Option<&str>) -> Result<String, Error> {
    let names: Vec<&str> = info.hosts.iter().map(|h| h.name.as_str()).collect();
    match wanted {
        Some(w) if names.contains(&w) => Ok(w.to_string()),
        Some(w) => Err(Error::Deployment {
            problems: vec![format!(
                "--host '{w}' is not a host of the deployment (its hosts: {})",
                names.join(", ")
            )],
        }),
        None if names.contains(&crate::info::LOCAL_HOST) => Ok(crate::info::LOCAL_HOST.into()),
        None if names.len() == 1 => Ok(names[0].to_string()),
        None => Err(Error::Deployment {
            problems: vec![format!(
                "the deployment has several hosts ({}): say which one this is with --host",
                names.join(", ")
            )],
        }),
    }
}

/// Creates the ring of every shared-memory connection between processes of `host`, sized as the
/// application reported.
fn create_rings(
    info: &GraphInfo,
    run: &RunId,
    segments: &Segments,
    host: &str,
) -> Result<(), Error> {
    let on_host = |agent: usize| {
        info.host_of(&info.agents[agent].process)
            .is_none_or(|h| h.name == host)
    };
    let rings: Vec<(usize, &crate::info::EdgeInfo, usize)> = info
        .edges
        .iter()
        .enumerate()
        .filter(|(_, e)| on_host(e.from_agent) && on_host(e.to_agent))
        .filter_map(|(i, e)| e.ring_bytes.map(|bytes| (i, e, bytes)))
        .collect();
    let all_rings = crate::transport::rings_total(rings.iter().map(|&(_, _, bytes)| bytes));
    for (i, e, bytes) in rings {
        let name = crate::transport::ring_name(&info.app, &run.to_string(), i)?;
        let connection = format!("{} -> {}", e.stream, e.input);
        crate::transport::create_ring(&name, bytes, &connection, all_rings)?;
        segments.add(name);
    }
    Ok(())
}

/// The links between `host` and other hosts: checks before anything starts that the files of
/// `[network]` are usable ([`network_file_problems`]), every problem at once, then logs the
/// links (or warns that they run without a secret).
fn check_links(info: &GraphInfo, settings: &Deployment, host: &str) -> Result<(), Error> {
    let links = links_between_hosts(info, Some(host));
    let problems = network_file_problems(settings, !links.is_empty());
    if !problems.is_empty() {
        return Err(Error::Deployment {
            problems: problems.iter().map(Problem::to_string).collect(),
        });
    }
    if links.is_empty() {
        return Ok(());
    }
    // Without a secret: refused when the file was read, unless it says `insecure`; a
    // deployment built in code has one host.
    if settings.network.secret_file.is_none() && settings.network.insecure {
        log(
            "warning: links between hosts run WITHOUT authentication (insecure = true in \
             [network]): anyone who can reach their ports can read the streams and inject data; \
             see docs/security.md",
        );
    }
    for l in &links {
        log(&format!("link {l}"));
    }
    Ok(())
}

/// The problems [`run`] finds with the files `[network]` names before it starts anything, each
/// at the place of the field that names the file: the secret file whenever one is named (the
/// live view's token is derived from it), the TLS files when this host has `links` to others.
fn network_file_problems(settings: &Deployment, links: bool) -> Vec<Problem> {
    let mut problems = Vec::new();
    if let Err(e) = settings.check_secret_file() {
        problems.extend(e.problems);
    }
    if links {
        if let Err(e) = settings.check_tls_files() {
            problems.extend(e.problems);
        }
    }
    problems
}

/// The links between hosts that `host` is an end of (`None`: every one), as the log names
/// them: `stream -> input (host 'a' -> host 'b', address:port)`.
fn links_between_hosts(info: &GraphInfo, host: Option<&str>) -> Vec<String> {
    let host_of = |agent: usize| {
        info.host_of(&info.agents[agent].process)
            .map_or(crate::info::LOCAL_HOST, |h| h.name.as_str())
    };
    let here = |agent: usize| host.is_none_or(|h| host_of(agent) == h);
    info.edges
        .iter()
        .enumerate()
        .filter(|(_, e)| e.transport == "tcp")
        .filter(|(_, e)| here(e.from_agent) || here(e.to_agent))
        .map(|(i, e)| {
            let to = host_of(e.to_agent);
            let at = info
                .hosts
                .iter()
                .find(|h| h.name == to)
                .map(|h| format!("{}:{}", h.address, usize::from(h.port) + i))
                .unwrap_or_default();
            format!(
                "{} -> {} (host '{}' -> host '{to}', {at})",
                e.stream,
                e.input,
                host_of(e.from_agent)
            )
        })
        .collect()
}

/// What the live view serves and to whom: `--metrics` and `--ui` with the token derived from
/// the deployment's secret ([`view_token`]), and, with several hosts and a secret, the
/// observation channel with the other hosts' launchers.
fn watch_options(
    info: &GraphInfo,
    settings: &Deployment,
    host: &str,
    options: &RunOptions,
) -> Result<watch::WatchOptions, Error> {
    let problem = |detail: String| Error::Deployment {
        problems: vec![format!(
            "{}: [network] secret_file: {detail}",
            settings.file
        )],
    };
    let secret = match &settings.network.secret_file {
        Some(path) => Some(
            crate::transport::tcp::auth::Secret::from_file(path)
                .map_err(|e| problem(e.to_string()))?,
        ),
        None => None,
    };
    // Derived from the secret, never the secret itself: it travels in clear over HTTP.
    let token = match (&secret, options.metrics.is_some() || options.ui.is_some()) {
        (Some(secret), true) => Some(crate::transport::tcp::auth::view_token(secret)),
        _ => None,
    };
    let peers = match (&secret, info.hosts.len() > 1) {
        (Some(secret), true) => {
            let me = info
                .hosts
                .iter()
                .find(|h| h.name == host)
                .ok_or_else(|| Error::Runtime {
                    detail: format!("host '{host}' is not in the deployment"),
                })?;
            let listen = std::net::ToSocketAddrs::to_socket_addrs(&(
                me.address.as_str(),
                me.observation_port(),
            ))
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| Error::Runtime {
                detail: format!("host '{host}': its address {} does not resolve", me.address),
            })?;
            Some(watch::Peers {
                secret: secret.clone(),
                host: host.to_string(),
                listen,
                others: info
                    .hosts
                    .iter()
                    .filter(|h| h.name != host)
                    .map(|h| (h.name.clone(), h.address.clone(), h.observation_port()))
                    .collect(),
            })
        }
        (None, true) => {
            log(
                "note: the live view shows this host only: without a secret ([network] \
                 secret_file) the launchers of the other hosts are not asked",
            );
            None
        }
        _ => None,
    };
    Ok(watch::WatchOptions {
        metrics: options.metrics.clone(),
        ui: options.ui.clone(),
        token,
        peers,
    })
}

/// The launcher's own lines, on standard error.
fn log(line: &str) {
    let _ = writeln!(std::io::stderr().lock(), "[iotstream] {line}");
}

/// A line of the launcher's, on standard error and kept on the board (`iotstream logs`, and
/// what `iotstream stop` shows).
fn note(board: &Board, line: &str) {
    log(line);
    board.logs().push(None, true, line);
}

/// Reads child `pid`'s (process `index`, `name`) control channel until it closes: `ready`
/// once, `drain` whenever a link from another host says the application is stopping there,
/// `metrics <json>` every reporting interval (kept on the board). Nothing a child says is
/// trusted: lines are bounded ([`launch::MAX_METRICS_LINE`]), and a line that is too long or
/// not understood is warned about (once per kind and process start) and skipped.
fn read_control(
    reader: UnixStream,
    index: usize,
    name: &str,
    pid: u32,
    events: &mpsc::SyncSender<Event>,
    board: &Board,
) {
    let mut lines = BufReader::new(reader);
    let mut line = Vec::new();
    let (mut warned_long, mut warned_bad) = (false, false);
    // The child said `protocol …` (before its `ready`).
    let mut said_protocol = false;
    loop {
        match socket::read_line_bounded(&mut lines, &mut line, launch::MAX_METRICS_LINE) {
            Ok(socket::LineRead::Line) => {}
            Ok(socket::LineRead::TooLong) => {
                if !std::mem::replace(&mut warned_long, true) {
                    note(
                        board,
                        &format!(
                            "warning: process '{name}' (pid {pid}) sent a control line over {} \
                             bytes: skipped (warned once)",
                            launch::MAX_METRICS_LINE
                        ),
                    );
                }
                continue;
            }
            // A last line cut off mid-way (the child died writing it) is not a report.
            Ok(socket::LineRead::End | socket::LineRead::Unterminated) | Err(_) => return,
        }
        let text = String::from_utf8_lossy(&line);
        let event = match text.trim() {
            // A child of another protocol refuses to run by itself (it read ours).
            t if launch::parse_protocol(t).is_some() => {
                said_protocol = true;
                continue;
            }
            "ready" => {
                if !said_protocol {
                    note(
                        board,
                        &format!(
                            "warning: process '{name}' (pid {pid}) did not say its control \
                             protocol: it was built with an iotstream older than this launcher \
                             ({}), whose stall probes it does not answer (stall detection \
                             across processes is off): build the application and the launcher \
                             from the same release",
                            env!("CARGO_PKG_VERSION")
                        ),
                    );
                }
                Event::Ready { pid }
            }
            "drain" => Event::Drain { pid },
            t if t.starts_with("quiet ") || t.starts_with("busy ") => {
                match launch::parse_quiet(t) {
                    Some((round, said)) => Event::Quiet { pid, round, said },
                    None => {
                        if !std::mem::replace(&mut warned_bad, true) {
                            note(
                                board,
                                &format!(
                                    "warning: process '{name}' (pid {pid}) sent an answer to a \
                                     stall probe the launcher does not understand: skipped \
                                     (warned once)"
                                ),
                            );
                        }
                        continue;
                    }
                }
            }
            t => {
                let sample = t
                    .strip_prefix("metrics ")
                    .ok_or_else(|| "not a control message".to_string())
                    .and_then(|json| {
                        serde_json::from_str::<ProcessSample>(json).map_err(|e| e.to_string())
                    });
                match sample {
                    Ok(sample) => board.record_sample(index, pid, sample),
                    Err(why) => {
                        if !std::mem::replace(&mut warned_bad, true) {
                            let start: String = t.chars().take(40).collect();
                            note(
                                board,
                                &format!(
                                    "warning: process '{name}' (pid {pid}) sent a control line \
                                     the launcher does not understand ({why}): '{start}…' \
                                     skipped (warned once)"
                                ),
                            );
                        }
                    }
                }
                continue;
            }
        };
        if events.send(event).is_err() {
            return;
        }
    }
}

/// What the supervisor waits for.
enum Event {
    /// A child reported ready on its control channel.
    Ready { pid: u32 },
    /// A child asks for a drain of the application (another host is stopping it).
    Drain { pid: u32 },
    /// A child's answer to stall probe `round` (see [`StallWatch`]): `None` if busy.
    Quiet {
        pid: u32,
        round: u64,
        said: launch::QuietAnswer,
    },
    /// A child ended (reported by its waiter thread the moment it did).
    Exit(launch::Exit),
    /// Ctrl-C, SIGTERM or SIGHUP.
    Signal(i32),
    /// A request on the control socket (`iotstream stop`, `restart`).
    Command(socket::Command),
}

/// Ctrl-C, SIGTERM and SIGHUP go to the supervisor as events, every one of them (it drains on
/// the first and stops at once on the second), for as long as the returned registration lives
/// (see [`launch::signals`]).
fn install_signals(events: mpsc::SyncSender<Event>) -> Result<signals::Registration, Error> {
    let again = events.clone();
    signals::register(OnSignal {
        terminal: true,
        first: Box::new(move |sig| {
            let _ = events.send(Event::Signal(sig));
        }),
        again: Again::Call(Box::new(move |sig| {
            let _ = again.send(Event::Signal(sig));
        })),
        // The supervisor bounds the drain itself (`drain_timeout_ms`).
        bound: None,
    })
}

/// One process of the application, across its restarts.
struct Member {
    name: String,
    settings: ProcessSettings,
    /// The running child, if any.
    pid: Option<u32>,
    /// The launcher's end of the running child's control channel.
    control: Option<UnixStream>,
    ready: bool,
    /// When the running child must have reported ready.
    ready_by: Option<Instant>,
    restarts: u32,
    /// Restarts asked for (`iotstream restart`): not failures, not counted against
    /// `max_restarts`.
    asked_restarts: u32,
    /// When to start it again, after a failure or when asked.
    restart_at: Option<Instant>,
    /// Its last failure, while a restart is pending: the failure of the run if the restart
    /// is cancelled.
    pending_failure: Option<Failure>,
    /// It was killed to be restarted (`iotstream restart`): its death is no failure.
    killed_for_restart: bool,
    /// Who asked for its restart, told once it runs again (or why it does not).
    restart_waiters: Vec<mpsc::Sender<Result<String, String>>>,
    /// When the running child (or the last one) started.
    started_at: Option<SystemTime>,
    /// It will not run again.
    ended: bool,
    /// It ended with a failure (or was killed).
    failed: bool,
}

impl Member {
    fn new(name: &str, settings: ProcessSettings) -> Member {
        Member {
            name: name.to_string(),
            settings,
            pid: None,
            control: None,
            ready: false,
            ready_by: None,
            restarts: 0,
            asked_restarts: 0,
            restart_at: None,
            pending_failure: None,
            killed_for_restart: false,
            restart_waiters: Vec::new(),
            started_at: None,
            ended: false,
            failed: false,
        }
    }

    /// Tells whoever asked for this process's restart how it went.
    fn answer_waiters(&mut self, answer: Result<String, String>) {
        for w in self.restart_waiters.drain(..) {
            let _ = w.send(answer.clone());
        }
    }

    /// What it is doing, for the board.
    fn status(&self, draining: bool) -> ProcessStatus {
        match (self.pid, self.restart_at) {
            (Some(_), _) if draining => ProcessStatus::Draining,
            (Some(_), _) if self.ready => ProcessStatus::Running,
            (Some(_), _) => ProcessStatus::Starting,
            (None, Some(_)) => ProcessStatus::Restarting,
            (None, None) if self.failed => ProcessStatus::Failed,
            (None, None) if self.ended => ProcessStatus::Ended,
            (None, None) => ProcessStatus::Starting,
        }
    }

    /// Sends a word on the control channel. A child that died meanwhile is reported by its
    /// waiter; MSG_NOSIGNAL keeps a write to its closed socket from raising SIGPIPE here.
    fn say(&mut self, word: &str) {
        use std::os::fd::AsRawFd;
        if let Some(c) = &self.control {
            let line = format!("{word}\n");
            // SAFETY: a valid socket descriptor and a buffer of the given length.
            let _ = unsafe {
                libc::send(
                    c.as_raw_fd(),
                    line.as_ptr().cast(),
                    line.len(),
                    libc::MSG_NOSIGNAL,
                )
            };
        }
    }
}

/// A failure: the message, and the exit code it gives the launcher.
struct Failure {
    message: String,
    code: i32,
}

struct Supervisor<'a> {
    app: &'a AppCommand,
    /// The application's name (as given to `Graph::new`), for its processes' titles.
    app_name: String,
    deployment: Option<&'a DeploymentFile>,
    run: RunId,
    fingerprint: u64,
    /// The process given the launcher's standard input (its agent reads it), if any.
    stdin_process: Option<String>,
    drain_timeout: Duration,
    ready_timeout: Duration,
    /// How often children report their counters (zero: never).
    metrics_interval: Duration,
    /// What the launcher knows of the application, for the control socket.
    board: Arc<Board>,
    members: Vec<Member>,
    /// Where signals, ready reports and children's exits wake the supervisor.
    events_tx: mpsc::SyncSender<Event>,
    /// Every process of the first start reported ready and was told to go.
    flowing: bool,
    /// A drain (or stop after a failure) is on, until this deadline.
    draining: Option<Instant>,
    /// Ctrl-C, SIGTERM or SIGHUP was received: the next one stops everything at once.
    signalled: bool,
    /// The first failure: the run's result.
    failure: Option<Failure>,
    /// The stall check across this host's processes.
    stall: StallWatch,
}

/// The launcher's stall check across the processes of its host, as a starter's
/// (`runtime::watch_stalls`): while the application flows, nothing restarts and every process
/// is ready, every [`launch::STALL_PROBE_EVERY`] each running process is asked whether its
/// part is quiet but for the other processes ([`launch::probe_line`], with what the previous
/// round's answers said may free a writer); a round in which all are, and no ring moved while
/// the answers came, is a reading; two equal readings in a row (no process posted anything,
/// no ring moved in between, the same agents that may free a writer) are a stall. Processes
/// fed from other
/// hosts (TCP, a broker), or waiting on them, never say they are quiet: a stall across hosts
/// is not detected.
struct StallWatch {
    /// The positions of this host's rings (`None`: they could not be mapped; no check).
    gauges: Option<crate::transport::RingGauges>,
    round: u64,
    /// The round asked and not yet decided.
    asked: Option<StallRound>,
    /// The previous round's reading, if every process was quiet in it.
    last: Option<launch::StallReading>,
    /// What the last round's quiet answers said may free a writer ([`launch::Quiet::frees`]),
    /// sent with the next probe.
    frees: Vec<usize>,
    /// Processes that did not answer a round in time and have not answered since (a stopped
    /// one): no round is asked until they do, so that probes never pile up in a channel
    /// nobody reads (the launcher's writes to it would wait).
    owing: std::collections::BTreeSet<u32>,
    /// When to ask the next round.
    next_at: Instant,
}

/// A stall round that waits for answers.
struct StallRound {
    /// Who was asked (name, pid), and what each answered (by pid; `None`: busy).
    asked: Vec<(String, u32)>,
    answers: std::collections::BTreeMap<u32, launch::QuietAnswer>,
    /// The rings when it was asked.
    rings: Vec<u64>,
    /// Answers after this decide nothing: the round is dropped.
    until: Instant,
}

impl StallWatch {
    fn new(gauges: Option<crate::transport::RingGauges>) -> StallWatch {
        StallWatch {
            gauges,
            round: 0,
            asked: None,
            last: None,
            frees: Vec::new(),
            owing: std::collections::BTreeSet::new(),
            next_at: Instant::now() + launch::STALL_PROBE_EVERY,
        }
    }

    /// When the supervisor must look at it again.
    fn wake(&self) -> Option<Instant> {
        self.gauges.as_ref()?;
        Some(self.asked.as_ref().map_or(self.next_at, |r| r.until))
    }
}

impl Supervisor<'_> {
    fn supervise(&mut self, events: &mpsc::Receiver<Event>) -> Result<i32, Error> {
        for i in 0..self.members.len() {
            if let Err(e) = self.start(i) {
                self.kill_all(events);
                return Err(e);
            }
        }
        loop {
            self.publish();
            if self.members.iter().all(|m| m.ended) {
                break;
            }
            let now = Instant::now();
            let mut wake = now + Duration::from_secs(1);
            for m in &self.members {
                for t in [
                    m.restart_at,
                    m.ready_by.filter(|_| !m.ready && m.pid.is_some()),
                ]
                .into_iter()
                .flatten()
                {
                    wake = wake.min(t);
                }
            }
            if let Some(d) = self.draining {
                wake = wake.min(d);
            }
            if let Some(s) = self.stall.wake() {
                wake = wake.min(s);
            }
            match events.recv_timeout(wake.saturating_duration_since(now)) {
                Ok(Event::Ready { pid }) => self.on_ready(pid),
                Ok(Event::Quiet { pid, round, said }) => self.on_quiet(pid, round, said),
                Ok(Event::Drain { pid }) => {
                    if self.draining.is_none() {
                        let name = self
                            .members
                            .iter()
                            .find(|m| m.pid == Some(pid))
                            .map_or("?", |m| m.name.as_str());
                        note(
                            &self.board,
                            &format!(
                                "process '{name}' (pid {pid}): another host is stopping the \
                             application: draining"
                            ),
                        );
                        self.stop();
                    }
                }
                Ok(Event::Exit(exit)) => self.on_exit(exit),
                Ok(Event::Command(socket::Command::Stop { now: false, reply })) => {
                    let answer = if self.draining.is_none() {
                        note(
                            &self.board,
                            "asked to stop (iotstream stop): draining (sources stop, data in \
                             flight is processed)",
                        );
                        self.stop();
                        "draining: sources stop, data in flight is processed"
                    } else {
                        "already stopping"
                    };
                    let _ = reply.send(Ok(answer.to_string()));
                }
                Ok(Event::Command(socket::Command::Stop { now: true, reply })) => {
                    note(
                        &self.board,
                        "asked to stop at once (iotstream stop --now): killing every process",
                    );
                    let _ = reply.send(Ok("killing every process".into()));
                    self.kill_all(events);
                    return Ok(self.failure.as_ref().map_or(128 + 9, |f| {
                        note(&self.board, &format!("error: {}", f.message));
                        f.code
                    }));
                }
                Ok(Event::Command(socket::Command::Restart { process, reply })) => {
                    self.restart_asked(&process, reply)
                }
                Ok(Event::Signal(sig)) => {
                    if self.signalled {
                        note(
                            &self.board,
                            &format!("signal {sig} again: stopping at once"),
                        );
                        self.kill_all(events);
                        return Ok(self.failure.as_ref().map_or(128 + sig, |f| {
                            note(&self.board, &format!("error: {}", f.message));
                            f.code
                        }));
                    }
                    self.signalled = true;
                    if self.draining.is_none() {
                        note(&self.board, &format!(
                            "signal {sig}: draining (sources stop, data in flight is processed); send it again to stop at once"
                        ));
                        self.stop();
                    } else {
                        note(
                            &self.board,
                            &format!(
                                "signal {sig}: already stopping; send it again to stop at once"
                            ),
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    unreachable!("the supervisor holds a sender")
                }
            }
            self.on_timers(events);
        }
        Ok(match &self.failure {
            None => {
                note(&self.board, "every process ended well");
                0
            }
            Some(f) => {
                note(&self.board, &format!("error: {}", f.message));
                f.code
            }
        })
    }

    /// Starts (or restarts) member `i`.
    fn start(&mut self, i: usize) -> Result<(), Error> {
        let (ours, theirs) = UnixStream::pair().map_err(|e| Error::Runtime {
            detail: format!("cannot make a control channel: {e}"),
        })?;
        let reader = ours.try_clone().map_err(|e| Error::Runtime {
            detail: format!("cannot read the control channel: {e}"),
        })?;
        let m = &self.members[i];
        let mut env: Vec<(String, String)> = m.settings.env.clone().into_iter().collect();
        if let Some(d) = self.deployment {
            env.extend(d.env());
        }
        env.push((launch::ENV_SUPERVISED.into(), "1".into()));
        if m.restarts + m.asked_restarts > 0 {
            env.push((launch::ENV_RESTARTED.into(), "1".into()));
        }
        env.push((
            launch::ENV_CONTROL_FD.into(),
            launch::CONTROL_FD.to_string(),
        ));
        env.push((
            launch::ENV_METRICS_INTERVAL_MS.into(),
            self.metrics_interval.as_millis().to_string(),
        ));
        // The child believes fd 3 only if the first line on it carries this nonce.
        let nonce = launch::control_nonce();
        env.push((launch::ENV_CONTROL_NONCE.into(), nonce.clone()));
        (&ours)
            .write_all(launch::hello_lines(&nonce).as_bytes())
            .map_err(|e| Error::Runtime {
                detail: format!("cannot write on the control channel: {e}"),
            })?;
        let command = ChildCommand {
            program: self.app.program.clone(),
            args: self.app.args.clone(),
            env,
            cpus: m.settings.cpus.clone(),
            control: Some(theirs.into()),
            stdin: self.stdin_process.as_deref() == Some(m.name.as_str()),
            inherit: self.deployment.iter().map(|d| d.fd()).collect(),
            title: None,
            tap: Some({
                let board = Arc::clone(&self.board);
                let name = m.name.clone();
                Arc::new(move |stderr: bool, line: &str| {
                    board.logs().push(Some(&name), stderr, line)
                })
            }),
        }
        .role(&self.app_name, &m.name, &self.run, self.fingerprint);
        let exits = self.events_tx.clone();
        let on_exit = move |exit| {
            let _ = exits.send(Event::Exit(exit));
        };
        let child = launch::spawn_child(&m.name, command, on_exit)?;
        let pid = child.pid;
        let m = &mut self.members[i];
        m.pid = Some(pid);
        m.control = Some(ours);
        m.ready = false;
        m.ready_by = Some(Instant::now() + self.ready_timeout);
        m.restart_at = None;
        m.started_at = Some(SystemTime::now());
        note(
            &self.board,
            &format!("process '{}' started (pid {pid})", m.name),
        );
        let tx = self.events_tx.clone();
        let board = Arc::clone(&self.board);
        let name = m.name.clone();
        std::thread::Builder::new()
            .name(format!("control {}", m.name))
            .spawn(move || read_control(reader, i, &name, pid, &tx, &board))
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start a control thread: {e}"),
            })?;
        Ok(())
    }

    fn on_ready(&mut self, pid: u32) {
        let Some(i) = self.members.iter().position(|m| m.pid == Some(pid)) else {
            return; // a child that died meanwhile
        };
        self.members[i].ready = true;
        let answer = format!(
            "process '{}' is running again (pid {pid})",
            self.members[i].name
        );
        self.members[i].answer_waiters(Ok(answer));
        if self.flowing || self.draining.is_some() {
            // A restarted process joins the running application; in one that is stopping, it
            // has been told to stop already and drains at once.
            note(
                &self.board,
                &format!("process '{}' ready", self.members[i].name),
            );
            self.members[i].say("go");
            return;
        }
        if self.members.iter().all(|m| m.ready || m.ended) {
            self.flowing = true;
            note(
                &self.board,
                &format!(
                    "{} ready: data flows",
                    plural(self.members.len(), "process")
                ),
            );
            for m in &mut self.members {
                m.say("go");
            }
        }
    }

    fn on_exit(&mut self, exit: launch::Exit) {
        let Some(i) = self.members.iter().position(|m| m.pid == Some(exit.pid)) else {
            return;
        };
        let m = &mut self.members[i];
        m.pid = None;
        m.control = None;
        m.ready = false;
        let killed_for_restart = std::mem::take(&mut m.killed_for_restart);
        if exit.success() {
            m.ended = true;
            note(&self.board, &format!("process '{}' finished", m.name));
            let why = format!("process '{}' finished before it could be restarted", m.name);
            m.answer_waiters(Err(why));
            return;
        }
        if killed_for_restart {
            if self.draining.is_none() {
                // Asked for: no failure, no backoff, not counted against max_restarts.
                m.asked_restarts += 1;
                m.restart_at = Some(Instant::now());
                note(
                    &self.board,
                    &format!(
                        "process '{}' stopped for its restart: starting it again",
                        m.name
                    ),
                );
            } else {
                // The application stops meanwhile. Not restarting it would lose what waits
                // in its input rings (its writers may have ended: nobody would report it), so
                // it starts again, told to drain, and processes that before it ends.
                m.asked_restarts += 1;
                m.restart_at = Some(Instant::now());
                note(
                    &self.board,
                    &format!(
                        "process '{}' stopped for its restart while the application stops: \
                         starting it again to drain its input",
                        m.name
                    ),
                );
            }
            return;
        }
        let error = exit.to_error().to_string();
        let failure = Failure {
            message: error.clone(),
            code: exit_code(exit.status),
        };
        if self.draining.is_none() {
            if let Restart::OnFailure { max_restarts, .. } = m.settings.restart {
                if let Some(delay) = m.settings.restart.delay(m.restarts + 1) {
                    m.restarts += 1;
                    m.restart_at = Some(Instant::now() + delay);
                    m.pending_failure = Some(failure);
                    note(
                        &self.board,
                        &format!(
                            "{error}; restarting it in {} ms (restart {} of {max_restarts})",
                            delay.as_millis(),
                            m.restarts
                        ),
                    );
                    return;
                }
                note(
                    &self.board,
                    &format!("{error}; it was restarted {max_restarts} times already: giving up"),
                );
            }
        }
        m.ended = true;
        m.failed = true;
        m.answer_waiters(Err(error.clone()));
        if self.draining.is_none() {
            note(&self.board, &format!("{error}: stopping the application"));
            self.failure.get_or_insert(failure);
            self.stop();
        } else {
            note(&self.board, &error);
            self.failure.get_or_insert(failure);
        }
    }

    /// Asks a new stall round when it is time and the application may be stalled; drops a
    /// round whose answers did not all come in time (see [`StallWatch`]).
    fn stall_timers(&mut self, now: Instant) {
        if let Some(r) = self.stall.asked.take_if(|r| r.until <= now) {
            self.stall.last = None;
            let silent = r.asked.iter().map(|(_, pid)| *pid);
            self.stall
                .owing
                .extend(silent.filter(|pid| !r.answers.contains_key(pid)));
        }
        if self.stall.asked.is_some() || now < self.stall.next_at {
            return;
        }
        self.stall.next_at = now + launch::STALL_PROBE_EVERY;
        let Some(gauges) = &self.stall.gauges else {
            return;
        };
        // A process down, restarting or not ready yet: its peers wait for it, no stall.
        let settled = self.flowing
            && self.draining.is_none()
            && self.failure.is_none()
            && self
                .members
                .iter()
                .all(|m| m.restart_at.is_none() && (m.ended || (m.pid.is_some() && m.ready)))
            && self.members.iter().any(|m| m.pid.is_some());
        // A process that owes an answer is asked nothing more until it answers (or ends).
        let members = &self.members;
        self.stall
            .owing
            .retain(|pid| members.iter().any(|m| m.pid == Some(*pid)));
        if !settled || !self.stall.owing.is_empty() {
            self.stall.last = None;
            return;
        }
        self.stall.round += 1;
        let rings = gauges.positions();
        let line = launch::probe_line(self.stall.round, &self.stall.frees);
        let word = line.trim_end();
        let mut asked = Vec::new();
        for m in &mut self.members {
            if let Some(pid) = m.pid {
                m.say(word);
                asked.push((m.name.clone(), pid));
            }
        }
        self.stall.asked = Some(StallRound {
            asked,
            answers: std::collections::BTreeMap::new(),
            rings,
            until: now + launch::STALL_ANSWER_WITHIN,
        });
    }

    /// Process `pid`'s answer to stall round `round`; once every process asked has answered,
    /// decides the round (see [`StallWatch`]) and, at a stall, stops the application with it.
    fn on_quiet(&mut self, pid: u32, round: u64, said: launch::QuietAnswer) {
        self.stall.owing.remove(&pid);
        if round != self.stall.round {
            return;
        }
        let Some(r) = &mut self.stall.asked else {
            return;
        };
        if !r.asked.iter().any(|(_, p)| *p == pid) {
            return;
        }
        r.answers.insert(pid, said);
        if r.answers.len() < r.asked.len() {
            return;
        }
        let Some(r) = self.stall.asked.take() else {
            return;
        };
        // Kept even from a round not all quiet: a timer that leads to one of them is busy in
        // the next.
        self.stall.frees = launch::frees_of(r.answers.values().flatten());
        let mut posted = std::collections::BTreeMap::new();
        let mut stuck: Vec<String> = Vec::new();
        for (name, pid) in &r.asked {
            let Some(Some(q)) = r.answers.get(pid) else {
                self.stall.last = None;
                return;
            };
            posted.insert(name.clone(), q.posted);
            stuck.extend(q.stuck.iter().cloned());
        }
        let now_rings = self.stall.gauges.as_ref().map(|g| g.positions());
        if now_rings.as_ref() != Some(&r.rings) || self.draining.is_some() {
            self.stall.last = None;
            return;
        }
        let reading = launch::StallReading {
            posted,
            rings: r.rings,
            frees: self.stall.frees.clone(),
        };
        if self.stall.last.as_ref() != Some(&reading) || stuck.is_empty() {
            self.stall.last = Some(reading);
            return;
        }
        let mut seen = std::collections::BTreeSet::new();
        stuck.retain(|s| seen.insert(s.clone()));
        let message = Error::Stalled {
            detail: stuck.join("; "),
        }
        .to_string();
        note(&self.board, &format!("{message}: stopping the application"));
        self.failure.get_or_insert(Failure { message, code: 1 });
        self.stop();
        // Its blocked writers would never end their streams: every reader ends at once.
        if let Some(g) = &self.stall.gauges {
            g.fail_all();
        }
    }

    fn on_timers(&mut self, events: &mpsc::Receiver<Event>) {
        let now = Instant::now();
        self.stall_timers(now);
        for i in 0..self.members.len() {
            let m = &self.members[i];
            if m.restart_at.is_some_and(|t| t <= now) {
                if let Err(e) = self.start(i) {
                    // A restart that cannot even start is that process failing for good.
                    let m = &mut self.members[i];
                    let message = format!("process '{}' could not be restarted: {e}", m.name);
                    note(&self.board, &message);
                    m.restart_at = None;
                    m.pending_failure = None;
                    if m.pid.is_none() {
                        m.ended = true;
                        m.failed = true;
                    }
                    m.answer_waiters(Err(message.clone()));
                    self.failure.get_or_insert(Failure { message, code: 1 });
                    if self.draining.is_none() {
                        self.stop();
                    }
                } else {
                    self.members[i].pending_failure = None;
                    if self.draining.is_some() {
                        // Started while the application stops (an asked restart): it drains
                        // at once, as the others were told to.
                        self.members[i].say("final");
                        self.members[i].say("stop");
                    }
                }
                continue;
            }
            if m.pid.is_some() && !m.ready && m.ready_by.is_some_and(|t| t <= now) {
                let message = format!(
                    "process '{}' did not report ready within {} ms",
                    m.name,
                    self.ready_timeout.as_millis()
                );
                note(&self.board, &message);
                let message_for_waiters = message.clone();
                self.failure.get_or_insert(Failure { message, code: 1 });
                self.members[i].ready_by = None;
                self.members[i].answer_waiters(Err(message_for_waiters));
                if self.draining.is_none() {
                    self.stop();
                }
            }
        }
        if self.draining.is_some_and(|d| d <= now) {
            let stragglers: Vec<String> = self
                .members
                .iter()
                .filter(|m| m.pid.is_some())
                .map(|m| format!("'{}'", m.name))
                .collect();
            if !stragglers.is_empty() {
                // Another host that does not answer is the likely hold-up: a connection to it
                // waits for its acknowledgement or its reconnection. Named, as the view has it.
                let mut unreached: Vec<String> = self
                    .board
                    .view()
                    .processes
                    .iter()
                    .filter(|p| p.status == crate::observe::ProcessStatus::Unknown)
                    .map(|p| format!("'{}'", p.host))
                    .collect();
                unreached.sort();
                unreached.dedup();
                let why = match unreached.len() {
                    0 => String::new(),
                    1 => format!(
                        "; host {} is not reached (its launcher does not answer): a connection \
                         to it held the drain up",
                        unreached[0]
                    ),
                    _ => format!(
                        "; hosts {} are not reached (their launchers do not answer): a \
                         connection to one of them held the drain up",
                        unreached.join(", ")
                    ),
                };
                let message = format!(
                    "the drain did not end within {} ms: killed {}{why}",
                    self.drain_timeout.as_millis(),
                    stragglers.join(", ")
                );
                note(&self.board, &message);
                self.failure.get_or_insert(Failure { message, code: 1 });
                self.kill_all(events);
            }
            self.draining = None;
            // Nothing restarts after a stop: whatever is left has ended.
            for m in &mut self.members {
                m.ended = true;
            }
        }
    }

    /// Stops the application gracefully: no more restarts; every child is told to drain (on
    /// its control channel: no signal that could reach it before it can handle one) and exits.
    fn stop(&mut self) {
        self.draining = Some(Instant::now() + self.drain_timeout);
        for m in &mut self.members {
            if m.restart_at.is_some() && m.pending_failure.is_none() {
                // An asked restart (`iotstream restart`) under way: it goes on, and the
                // process drains once started (see `on_timers`), or what waits in its input
                // rings would be lost.
                continue;
            }
            if m.restart_at.take().is_some() {
                // Its restart is cancelled: its crash is the run's failure, not what its
                // peers report about it afterwards.
                if let Some(f) = m.pending_failure.take() {
                    m.failed = true;
                    self.failure.get_or_insert(f);
                }
                let why = format!(
                    "the application is stopping: process '{}' was not restarted",
                    m.name
                );
                m.answer_waiters(Err(why));
            }
            if m.pid.is_none() {
                m.ended = true;
                continue;
            }
            // "final" first: from now on a dead peer is an error, so nobody waits for one.
            m.say("final");
            // A child still waiting for "go" starts with its stop flag set: its sources end
            // at once and it drains like the others.
            m.say("stop");
        }
    }

    /// `iotstream restart APP PROCESS`: kills `process` (SIGKILL: nothing of it runs, so its
    /// rings are left as a crash leaves them) and starts it again at once when its waiter
    /// reports the death (see `on_exit`), whatever its restart policy; `reply` is answered once
    /// it reported ready again, or with why it was not restarted. Its peers wait for it meanwhile
    /// (the launcher has not said `final`: that is said only when the application stops).
    fn restart_asked(&mut self, process: &str, reply: mpsc::Sender<Result<String, String>>) {
        let Some(i) = self.members.iter().position(|m| m.name == process) else {
            let _ = reply.send(Err(self.board.status(false).not_here(process)));
            return;
        };
        if self.draining.is_some() {
            let _ = reply.send(Err(
                "the application is stopping: nothing is restarted".to_string()
            ));
            return;
        }
        let m = &mut self.members[i];
        if m.ended {
            let how = if m.failed { "failed" } else { "finished" };
            let _ = reply.send(Err(format!(
                "process '{process}' has {how}: it cannot be restarted (its input streams may \
                 have ended); restart the application"
            )));
            return;
        }
        m.restart_waiters.push(reply);
        if m.restart_at.is_some() {
            // A restart after a failure is pending: now rather than after its backoff.
            m.restart_at = Some(Instant::now());
            note(
                &self.board,
                &format!("process '{process}': restart asked (iotstream restart): now"),
            );
            return;
        }
        if m.killed_for_restart {
            return; // on its way already
        }
        if let Some(pid) = m.pid {
            m.killed_for_restart = true;
            note(
                &self.board,
                &format!(
                    "process '{process}' (pid {pid}): restart asked (iotstream restart): killing it"
                ),
            );
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
        }
    }

    /// Writes every process's state on the board (the control socket's view).
    fn publish(&self) {
        let draining = self.draining.is_some();
        let phase = match (self.members.iter().all(|m| m.ended), draining, self.flowing) {
            (true, _, _) => Phase::Ended,
            (_, true, _) => Phase::Draining,
            (_, _, true) => Phase::Running,
            _ => Phase::Starting,
        };
        self.board.update(|s| {
            s.phase = phase;
            for (p, m) in s.processes.iter_mut().zip(&self.members) {
                p.status = m.status(draining);
                p.pid = m.pid.unwrap_or(0);
                p.started_ms = m.started_at.map_or(0, board::epoch_ms);
                p.restarts = u64::from(m.restarts) + u64::from(m.asked_restarts);
            }
        });
    }

    /// Kills every child and waits (bounded) for their waiters to report them, so nothing
    /// outlives the launcher.
    fn kill_all(&mut self, events: &mpsc::Receiver<Event>) {
        for m in &mut self.members {
            if let Some(pid) = m.pid {
                let _ =
                    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
                m.failed = true;
            }
            m.answer_waiters(Err("the launcher is stopping everything at once".into()));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.members.iter().any(|m| m.pid.is_some()) && Instant::now() < deadline {
            if let Ok(Event::Exit(exit)) = events.recv_timeout(Duration::from_millis(50)) {
                if let Some(m) = self.members.iter_mut().find(|m| m.pid == Some(exit.pid)) {
                    m.pid = None;
                    m.control = None;
                }
            }
        }
        for m in &mut self.members {
            m.ended = true;
            m.restart_at = None;
        }
    }
}

/// The exit code for a child's status: its code, or `128 + signal`.
fn exit_code(status: ExitStatus) -> i32 {
    match (status.code(), status.signal()) {
        (Some(c), _) => c,
        (None, Some(s)) => 128 + s,
        _ => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::info::HostInfo;

    fn board() -> Board {
        let info = GraphInfo {
            app: "demo".into(),
            default_capacity: 1,
            agents: Vec::new(),
            edges: Vec::new(),
            processes: vec!["main".into()],
            hosts: Vec::new(),
        };
        Board::new(
            info,
            "1-a".into(),
            "local".into(),
            &["main".to_string()],
            Duration::from_secs(1),
            100,
        )
    }

    /// The launcher's own lines on `board` (its warnings).
    fn launcher_lines(board: &Board) -> Vec<String> {
        board
            .logs()
            .since(0, &LogFilter::Launcher)
            .into_iter()
            .map(|l| l.text)
            .collect()
    }

    #[test]
    fn a_child_is_never_trusted_on_its_control_channel() {
        let (mut child, ours) = UnixStream::pair().unwrap();
        let board = board();
        let (tx, rx) = mpsc::sync_channel(8);
        let sample = ProcessSample {
            pid: 1, // a lie: the launcher knows its child's pid
            cpu_ns: 7,
            rss_bytes: 8,
            ..ProcessSample::default()
        };
        let good = launch::metrics_line(&sample, launch::MAX_METRICS_LINE).unwrap();
        let writer = std::thread::spawn(move || {
            let huge = format!("metrics {}\n", "x".repeat(launch::MAX_METRICS_LINE + 10));
            let protocol = launch::protocol_line();
            for line in [
                protocol.as_str(),
                "ready\n",
                "metrics {not json\n",
                "hello there\n",
                huge.as_str(),
                huge.as_str(),
                good.as_str(),
                "drain\n",
            ] {
                child.write_all(line.as_bytes()).unwrap();
            }
        });
        read_control(ours, 0, "main", 4242, &tx, &board);
        writer.join().unwrap();
        assert!(matches!(rx.try_recv(), Ok(Event::Ready { pid: 4242 })));
        assert!(matches!(rx.try_recv(), Ok(Event::Drain { pid: 4242 })));
        let status = board.status(true);
        let kept = status.processes[0]
            .sample
            .as_ref()
            .expect("the good report");
        assert_eq!((kept.pid, kept.cpu_ns, kept.rss_bytes), (4242, 7, 8));
        let warnings = launcher_lines(&board);
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains(
            "process 'main' (pid 4242) sent a control line the launcher does not understand"
        ));
        assert!(warnings[1].contains("over 4194304 bytes"));
    }

    #[test]
    fn a_child_that_does_not_say_its_protocol_is_warned_about() {
        let (mut child, ours) = UnixStream::pair().unwrap();
        let board = board();
        let (tx, rx) = mpsc::sync_channel(8);
        // An application built with an older iotstream: `ready` alone.
        child.write_all(b"ready\n").unwrap();
        drop(child);
        read_control(ours, 0, "main", 4242, &tx, &board);
        assert!(matches!(rx.try_recv(), Ok(Event::Ready { pid: 4242 })));
        let warnings = launcher_lines(&board);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("process 'main' (pid 4242) did not say its control protocol")
                && warnings[0].contains("stall detection across processes is off"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_text_of_a_graph_on_several_hosts_gives_each_observation_port() {
        let host = |name: &str, address: &str, observe_port, process: &str| HostInfo {
            name: name.into(),
            address: address.into(),
            port: 7400,
            observe_port,
            processes: vec![process.into()],
        };
        let mut info = GraphInfo {
            app: "demo".into(),
            default_capacity: 1,
            agents: Vec::new(),
            edges: Vec::new(),
            processes: vec!["main".into(), "work".into()],
            hosts: vec![
                host("edge", "10.0.0.2", None, "main"),
                host("server", "10.0.0.3", Some(9000), "work"),
            ],
        };
        let text = render(&info, GraphFormat::Text);
        assert!(
            text.contains("\nhost edge (10.0.0.2, observation port 7399)\n")
                && text.contains("\nhost server (10.0.0.3, observation port 9000)\n"),
            "{text}"
        );
        // One host: no launcher to answer.
        info.hosts.truncate(1);
        let text = render(&info, GraphFormat::Text);
        assert!(text.contains("\nhost edge (10.0.0.2)\n"), "{text}");
    }

    #[test]
    fn a_report_over_the_limit_is_not_made() {
        let sample = ProcessSample::default();
        let line = launch::metrics_line(&sample, 1 << 20).unwrap();
        assert!(line.starts_with("metrics {") && line.ends_with("}\n"));
        assert_eq!(launch::metrics_line(&sample, 10), Err(line.len()));
    }
}
