//! Processes: one application, several OS processes, the same binary everywhere.
//!
//! # Roles
//!
//! An application whose agents are placed in several processes
//! ([`Graph::place_in_process`](crate::Graph::place_in_process)) is started by running its binary
//! as usual. That first process is the **starter**: it hosts the agents of the process named
//! `main` (those not placed elsewhere), and starts one child per other process by re-executing
//! its own binary with the same arguments and a role in the environment (`IOTSTREAM_PROCESS`,
//! `IOTSTREAM_RUN`, `IOTSTREAM_GRAPH`). Each child builds the same graph, sees its role, and
//! instantiates only its own agents, as in timely-dataflow. A child checks that the graph it
//! built is the starter's (same agents, ports, edges and placement: a fingerprint), so a program
//! that builds its graph differently on each run fails clearly instead of mis-wiring.
//!
//! # Supervision
//!
//! The starter watches every child: a child that exits with a failure or is killed stops the whole
//! application, and the error names the process and its exit status or signal (with the last
//! lines it wrote to standard error). Children die with the starter (`PR_SET_PDEATHSIG`).
//! Each child's output lines are prefixed with `[process]`. A stop (Ctrl-C, SIGTERM, a failure)
//! is bounded by [`drain_timeout`] (`IOTSTREAM_DRAIN_TIMEOUT_MS`, default 10 s), after which the
//! children still running are killed and named. What Ctrl-C, SIGTERM and SIGHUP do, to a
//! starter, a child, a one-process run or the launcher, is decided in one place: [`signals`].
//!
//! Each child says what it is: its `argv[0]` is `iotstream <app>/<process>` (what `ps` shows),
//! and its name, once it knows its role, `<app>/<process>` (what `top` and `ps -o comm` show;
//! [`name_this_process`]).
//!
//! The role and control variables are read once and removed from the environment
//! ([`role_env`]), so that programs the application starts do not inherit them; a control
//! descriptor is believed only if it proves to be the launcher's ([`take_control`]).
//!
//! # Shared-memory objects
//!
//! Only the starter creates and removes shared-memory objects; their names carry the application,
//! the starter's pid and a run nonce (`/iotstream.<app>.<pid>-<nonce>.e<edge>`). They are removed
//! on every exit of the starter that runs code (normal end, error, Ctrl-C / SIGTERM / SIGHUP);
//! after a SIGKILL of the starter, the next start of the same application (or `iotstream clean`)
//! removes the objects of runs whose starter is dead.
//!
//! # Liveness locks
//!
//! Whether a run's owner is dead is never judged from its pid: in another PID namespace sharing
//! `/dev/shm` (containers commonly do) the owner's pid names no process, or another one. Before
//! it creates any object, the owner creates the run's **liveness lock**,
//! `/dev/shm/iotstream.<app>.<run>.lock` (mode 0600), and holds an exclusive `flock` on it for
//! the run's whole life ([`Segments`]); the kernel releases it when the owner dies, however it
//! dies, and `flock` works across PID namespaces on the shared file. The lock is made under a
//! hidden name and renamed into place already locked, so it never appears unlocked; it is
//! close-on-exec, so children never hold it (they die with the owner anyway). It is removed
//! last, after the run's objects. (A SIGKILL between creating the hidden file and renaming it
//! leaves that empty hidden file, `.iotstream.<app>.<run>.lock.new`; no sweep touches it.)
//!
//! A sweep ([`sweep_stale`]) removes a run's objects only when it can take that lock without
//! waiting, i.e. when the owner is provably dead, and removes the lock file with them. Objects
//! without a lock file (made by an iotstream from before liveness locks, or whose lock was
//! deleted by hand) are left alone and reported: nothing proves their owner dead.

pub(crate) mod describe;
pub(crate) mod signals;

pub(crate) use crate::transport::process::{is_stopped, pid_alive};

use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::error::Error;

/// The process a child runs as.
pub(crate) const ENV_PROCESS: &str = "IOTSTREAM_PROCESS";
/// `<starter pid>-<nonce>`: names this run's shared-memory objects.
pub(crate) const ENV_RUN: &str = "IOTSTREAM_RUN";
/// The starter's graph fingerprint, in hex.
pub(crate) const ENV_GRAPH: &str = "IOTSTREAM_GRAPH";

/// Set by the launcher: a file to write the graph's description to, instead of running.
pub(crate) const ENV_DESCRIBE: &str = "IOTSTREAM_DESCRIBE";
/// Set by the launcher: the deployment file's name (for messages).
pub(crate) const ENV_DEPLOY_FILE: &str = "IOTSTREAM_DEPLOY_FILE";
/// Set by the launcher: the number of an inherited file descriptor holding the deployment
/// file's text, a sealed memfd ([`DeploymentFd`]). Not the text itself: the environment holds
/// at most 128 KiB per variable, and a descriptor leaves nothing behind however the launcher
/// ends.
pub(crate) const ENV_DEPLOY_FD: &str = "IOTSTREAM_DEPLOY_FD";
/// Set by the launcher to [`CONTROL_FD`]: the child reports ready there and waits for "go".
pub(crate) const ENV_CONTROL_FD: &str = "IOTSTREAM_CONTROL_FD";
/// Set by the launcher to `1`: a dead peer process may be restarted, so it is waited for.
pub(crate) const ENV_SUPERVISED: &str = "IOTSTREAM_SUPERVISED";
/// Set by the launcher to `1` when it starts a process again (after a failure, or asked to):
/// its peers may hold data for it that the process before it did not consume.
pub(crate) const ENV_RESTARTED: &str = "IOTSTREAM_RESTARTED";
/// Set by the launcher beside [`ENV_CONTROL_FD`]: a random nonce, per child, that the
/// launcher's first message on the control channel carries (`hello <nonce>`).
pub(crate) const ENV_CONTROL_NONCE: &str = "IOTSTREAM_CONTROL_NONCE";
/// Set by the launcher: how often a supervised child reports its counters on the control
/// channel, in milliseconds (`0`: never). See [`MetricsReporter`].
pub(crate) const ENV_METRICS_INTERVAL_MS: &str = "IOTSTREAM_METRICS_INTERVAL_MS";

/// The role and control variables: they describe this process only, so they are read once and
/// removed from the environment (see [`role_env`]).
const ROLE_VARS: [&str; 11] = [
    ENV_PROCESS,
    ENV_RUN,
    ENV_GRAPH,
    ENV_DESCRIBE,
    ENV_DEPLOY_FILE,
    ENV_DEPLOY_FD,
    ENV_CONTROL_FD,
    ENV_SUPERVISED,
    ENV_RESTARTED,
    ENV_CONTROL_NONCE,
    ENV_METRICS_INTERVAL_MS,
];

/// The value this process was started with of role or control variable `name` (one of
/// [`ROLE_VARS`]).
///
/// The first call reads them all and removes them from the process's environment, so that no
/// program the application starts inherits them: it would take itself for a member of this run
/// (or for the launcher's child, and use whatever its fd 3 is). `Graph::start` calls it first,
/// which programs do from `main`, before they start threads of their own; the runtime has
/// started none yet (removing a variable races only with C code reading the environment in
/// another thread, Rust's own accesses are locked). Applications that need their process's
/// name read `IOTSTREAM_PROCESS` before they start the graph.
pub(crate) fn role_env(name: &str) -> Option<std::ffi::OsString> {
    static VARS: std::sync::OnceLock<Vec<(&'static str, std::ffi::OsString)>> =
        std::sync::OnceLock::new();
    VARS.get_or_init(|| {
        let mut vars = Vec::new();
        for var in ROLE_VARS {
            if let Some(value) = std::env::var_os(var) {
                vars.push((var, value));
                // SAFETY: as the doc above says, this runs from `Graph::start`, which programs
                // call from `main` before they start threads of their own, and before the
                // runtime starts any; Rust's own environment accesses are locked.
                unsafe { std::env::remove_var(var) };
            }
        }
        vars
    })
    .iter()
    .find(|(var, _)| *var == name)
    .map(|(_, value)| value.clone())
}

/// [`role_env`] as UTF-8 (`None` if unset or not UTF-8).
fn role_var(name: &str) -> Option<String> {
    role_env(name).and_then(|v| v.into_string().ok())
}

/// The version of the control channel's lines (hello, `ready`, `go`, `stop`, `final`, `drain`,
/// `metrics`, the stall probes and their answers). Whoever starts a process (a starter or the
/// launcher) says it right after its hello ([`hello_lines`]), and the process says its own
/// before `ready`, both as `protocol <N> <iotstream version>`. A process started by one that
/// speaks another protocol, or none (an older iotstream), refuses to run: lines one side does
/// not understand would otherwise be skipped, and stall detection across processes would be
/// off without a word. Raise it whenever a control line changes meaning.
pub(crate) const CONTROL_PROTOCOL: u32 = 1;

/// `protocol <N> <version>`: this build's [`CONTROL_PROTOCOL`] and iotstream version.
pub(crate) fn protocol_line() -> String {
    format!(
        "protocol {CONTROL_PROTOCOL} {}\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The protocol and iotstream version a `protocol <N> <version>` line says; `None` if it is not
/// one.
pub(crate) fn parse_protocol(line: &str) -> Option<(u32, &str)> {
    let rest = line.strip_prefix("protocol ")?;
    let (n, version) = rest.split_once(' ').unwrap_or((rest, "?"));
    Some((n.parse().ok()?, version))
}

/// What a starter or the launcher writes first on a child's control channel: the hello with
/// the child's nonce (see [`take_control`]), then its protocol ([`protocol_line`]).
pub(crate) fn hello_lines(nonce: &str) -> String {
    format!("hello {nonce}\n{}", protocol_line())
}

/// Why a process started by one that said `theirs` (`None`: nothing, before `go`) must not
/// run; `None` if the protocols are the same.
fn protocol_refused(theirs: Option<(u32, &str)>) -> Option<Error> {
    let ours = env!("CARGO_PKG_VERSION");
    let who = match theirs {
        Some((n, _)) if n == CONTROL_PROTOCOL => return None,
        Some((n, version)) => format!(
            "speaks control protocol {n} (iotstream {version}), this program {CONTROL_PROTOCOL}"
        ),
        None => {
            "did not say its control protocol (an iotstream older than this program's)".to_string()
        }
    };
    Some(Error::Runtime {
        detail: format!(
            "the launcher (or starter) that started this process {who} (iotstream {ours}): \
             build the application and the launcher from the same iotstream release \
             (`iotstream --version`)"
        ),
    })
}

/// A nonce for a child's control channel: 128 random bits in hex (the standard library's
/// randomly seeded hasher keys, mixed with the time and pid).
pub(crate) fn control_nonce() -> String {
    use std::hash::{BuildHasher, Hasher};
    let word = |salt: u64| {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(salt);
        h.write_u32(std::process::id());
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        h.finish()
    };
    format!("{:016x}{:016x}", word(1), word(2))
}

pub use crate::info::MAIN_PROCESS;

/// Identifies one run of an application across its processes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RunId {
    /// The starter's pid: the owner of the run's shared-memory objects.
    pub owner: u32,
    pub nonce: u64,
}

impl RunId {
    pub fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        RunId {
            owner: std::process::id(),
            nonce: nanos & 0xffff_ffff_ffff,
        }
    }

    fn parse(s: &str) -> Option<RunId> {
        let (owner, nonce) = s.split_once('-')?;
        Some(RunId {
            owner: owner.parse().ok()?,
            nonce: u64::from_str_radix(nonce, 16).ok()?,
        })
    }
}

impl std::fmt::Display for RunId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{:x}", self.owner, self.nonce)
    }
}

/// What this process is in the application.
#[derive(Debug)]
pub(crate) enum Role {
    /// Started by the user: hosts `main`, starts and supervises the others.
    Starter,
    /// Started by a starter to host one process.
    Member {
        process: String,
        run: RunId,
        fingerprint: u64,
    },
}

/// Reads the role from the environment. A malformed role is an error naming the variable.
pub(crate) fn role() -> Result<Role, Error> {
    let Some(process) = role_env(ENV_PROCESS) else {
        return Ok(Role::Starter);
    };
    let bad = |var: &str, what: &str| Error::Runtime {
        detail: format!(
            "environment variable {var} {what} (it is set by the iotstream starter, not by hand)"
        ),
    };
    let process = process
        .into_string()
        .map_err(|_| bad(ENV_PROCESS, "is not valid UTF-8"))?;
    let run = role_var(ENV_RUN)
        .and_then(|r| RunId::parse(&r))
        .ok_or_else(|| bad(ENV_RUN, "is missing or malformed"))?;
    let fingerprint = role_var(ENV_GRAPH)
        .and_then(|f| u64::from_str_radix(&f, 16).ok())
        .ok_or_else(|| bad(ENV_GRAPH, "is missing or malformed"))?;
    Ok(Role::Member {
        process,
        run,
        fingerprint,
    })
}

/// Where shared-memory objects and liveness locks live.
const SHM_DIR: &str = "/dev/shm";

/// The last part of a liveness lock's name (`iotstream.<app>.<run>.lock`); a connection's is
/// `e<edge>`, so the two never meet.
const LOCK_PART: &str = "lock";

/// What a sweep did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Swept {
    /// Objects of runs whose owner is provably dead, removed (names with their leading `/`,
    /// liveness locks included), sorted.
    pub removed: Vec<String>,
    /// Objects left alone because nothing proves their owner dead (no liveness lock, or one
    /// that cannot be opened or locked), with the reason, sorted.
    pub unproven: Vec<(String, String)>,
}

/// Removes the shared-memory objects of iotstream runs (of application `app` only, if given)
/// whose owner is provably dead: those whose liveness lock this process can take (see the
/// [module](self) documentation). Runs whose lock is held are alive and left alone, whatever
/// their pid says; runs without a lock file, or whose lock cannot be checked, are left alone
/// and reported in [`Swept::unproven`].
pub(crate) fn sweep_stale(app: Option<&str>) -> Swept {
    use crate::transport::shm::segment::{list_segments, sanitize_app};
    let prefix = match app {
        Some(a) => format!("iotstream.{}.", sanitize_app(a)),
        None => "iotstream.".to_string(),
    };
    // Each run's objects by its name prefix `iotstream.<app>.<run>.`.
    let mut runs: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for name in list_segments(&prefix) {
        // "/iotstream.<app>.<run>.<part>": exactly four parts, the run an owner and a nonce.
        let parts: Vec<&str> = name[1..].split('.').collect();
        if parts.len() != 4 || RunId::parse(parts[2]).is_none() {
            continue;
        }
        let run = format!("{}.{}.{}.", parts[0], parts[1], parts[2]);
        runs.entry(run).or_default().push(name);
    }
    let mut swept = Swept::default();
    for (run, names) in runs {
        let lock = format!("{SHM_DIR}/{run}{LOCK_PART}");
        let proven = match owner_dead(&lock) {
            Ok(Some(held)) => held,
            Ok(None) => continue, // the owner holds it: a live run
            Err(why) => {
                swept
                    .unproven
                    .extend(names.into_iter().map(|n| (n, why.clone())));
                continue;
            }
        };
        // The owner is dead and we hold its lock: list again (the listing may predate its last
        // objects), remove the objects, then the lock file, then let go of the lock.
        for name in list_segments(&run) {
            if name.ends_with(&format!(".{LOCK_PART}")) {
                continue;
            }
            if nix::sys::mman::shm_unlink(name.as_str()).is_ok() {
                swept.removed.push(name);
            }
        }
        if std::fs::remove_file(&lock).is_ok() {
            swept.removed.push(lock[SHM_DIR.len()..].to_string());
        }
        drop(proven);
    }
    swept.removed.sort();
    swept.unproven.sort();
    swept
}

/// Takes the liveness lock at `path` without waiting: `Ok(Some(file))` holding it (the owner
/// is dead), `Ok(None)` if the owner holds it (alive), `Err(why)` if it cannot be checked.
fn owner_dead(path: &str) -> Result<Option<std::fs::File>, String> {
    use std::os::fd::AsRawFd;
    // std opens with O_CLOEXEC: a program started meanwhile does not hold the lock.
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!(
                "no liveness lock {path} (made by an older iotstream, or the lock was deleted): \
                 its owner cannot be proven dead; remove it by hand once its run is over"
            ));
        }
        Err(e) => return Err(format!("cannot open its liveness lock {path}: {e}")),
    };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(Some(file));
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
        e => Err(format!("cannot lock its liveness lock {path}: {e}")),
    }
}

/// A run's liveness lock, held by its owner (see the [module](self) documentation); the lock
/// is released when the file is closed, at the latest when the owner dies.
struct RunLock {
    /// Kept open (close-on-exec) for the lock's sake.
    _file: std::fs::File,
    /// `/dev/shm/iotstream.<app>.<run>.lock`.
    path: String,
}

impl RunLock {
    /// Creates and locks the liveness lock of run `run` of application `app`.
    fn take(app: &str, run: &RunId) -> Result<RunLock, Error> {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::OpenOptionsExt;
        let name = crate::transport::shm::segment::segment_name(app, &run.to_string(), LOCK_PART)
            .map_err(|e| Error::Runtime {
            detail: e.to_string(),
        })?;
        let path = format!("{SHM_DIR}{name}");
        // Hidden (no sweep looks at it) until locked; then renamed into place.
        let hidden = format!("{SHM_DIR}/.{}.new", &name[1..]);
        let failed = |what: &str, e: std::io::Error| Error::Runtime {
            detail: format!("cannot make the run's liveness lock {path}: {what}: {e}"),
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&hidden)
            .map_err(|e| failed("create", e))?;
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        let placed = if locked == 0 {
            std::fs::rename(&hidden, &path).map_err(|e| failed("rename", e))
        } else {
            Err(failed("flock", std::io::Error::last_os_error()))
        };
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&hidden);
            return Err(e);
        }
        Ok(RunLock { _file: file, path })
    }
}

/// The shared-memory objects of the run this process owns (as its starter or launcher), and
/// the run's liveness lock, held from [`new`](Segments::new) until the process ends; the
/// objects, then the lock file, are removed by `remove_all` (and on drop).
pub(crate) struct Segments {
    names: Mutex<Vec<String>>,
    lock: RunLock,
}

impl Segments {
    /// Takes the liveness lock of run `run` of `app`: call before creating any object.
    pub fn new(app: &str, run: &RunId) -> Result<Segments, Error> {
        Ok(Segments {
            names: Mutex::default(),
            lock: RunLock::take(app, run)?,
        })
    }

    /// The names of the objects created for the run so far.
    pub fn names(&self) -> Vec<String> {
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Records an object created for the run.
    pub fn add(&self, name: String) {
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(name);
    }
    /// Removes the run's objects, then its lock file (the lock itself is held until the
    /// process ends: a sweep that opened the file meanwhile finds nothing left to remove).
    pub fn remove_all(&self) {
        let names = std::mem::take(&mut *self.names.lock().unwrap_or_else(|p| p.into_inner()));
        for n in names {
            let _ = nix::sys::mman::shm_unlink(n.as_str());
        }
        let _ = std::fs::remove_file(&self.lock.path);
    }
}

impl Drop for Segments {
    fn drop(&mut self) {
        self.remove_all();
    }
}

/// A child process of the starter.
pub(crate) struct ChildProcess {
    pub pid: u32,
    /// The process's name in the application.
    pub name: String,
    /// Set by its waiter thread as soon as the process is reaped: from then on its pid may be
    /// another process's, which must never be signalled.
    pub reaped: Arc<AtomicBool>,
    /// Set by its waiter thread, before `reaped`, when the process ended with a failure (a
    /// status other than 0, or a signal).
    pub failed: Arc<AtomicBool>,
    /// A drain was asked for (a SIGTERM sent, or to be said at its `ready`): [`signal_all`]
    /// asks once. A child takes a second SIGTERM for "end at once" (as a second Ctrl-C), which
    /// would cut its drain, and with it the error it was about to report.
    pub term_sent: Arc<AtomicBool>,
    /// The child said `ready` on its control channel (a starter's child: see
    /// [`drain_at_ready`]). Before that its run may not take signals yet (a member registers
    /// its handler as its run starts): a SIGTERM would end it by the default action, and the
    /// starter would take that for a failure. So [`signal_all`] does not signal a child that
    /// is not ready; the drain is asked for in the answer to its `ready` instead. True from
    /// the start for a child whose channel nobody reads that way (the launcher's, which asks
    /// for drains on the channel itself).
    pub ready: Arc<AtomicBool>,
}

impl ChildProcess {
    /// True while the process has not ended (not reaped, not a zombie).
    pub fn running(&self) -> bool {
        !self.reaped.load(Ordering::SeqCst) && pid_alive(self.pid)
    }
}

/// How a child ended.
pub(crate) struct Exit {
    pub name: String,
    pub pid: u32,
    pub status: ExitStatus,
    pub last_errors: Vec<String>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// An error naming the process, how it ended, and what it last wrote to standard error.
    pub fn to_error(&self) -> Error {
        use std::os::unix::process::ExitStatusExt;
        let how = match (self.status.code(), self.status.signal()) {
            (Some(code), _) => format!("exited with status {code}"),
            (None, Some(sig)) => {
                let name = Signal::try_from(sig)
                    .map(|s| s.as_str())
                    .unwrap_or("unknown signal");
                format!("was killed by signal {sig} ({name})")
            }
            _ => "ended abnormally".to_string(),
        };
        let mut detail = how;
        if !self.last_errors.is_empty() {
            detail.push_str("; its last lines on standard error: ");
            detail.push_str(&self.last_errors.join(" | "));
        }
        Error::Process {
            process: self.name.clone(),
            detail,
        }
    }
}

/// How to start one child process.
pub(crate) struct ChildCommand {
    /// The program (an application binary).
    pub program: std::path::PathBuf,
    /// Its arguments.
    pub args: Vec<std::ffi::OsString>,
    /// Variables added to the environment (the role, a deployment's variables).
    pub env: Vec<(String, String)>,
    /// CPUs to pin the process to.
    pub cpus: Option<Vec<usize>>,
    /// The child's end of a control channel, passed as file descriptor [`CONTROL_FD`].
    pub control: Option<std::os::fd::OwnedFd>,
    /// The child is given our standard input (it holds the agent that reads it); otherwise
    /// its standard input is empty.
    pub stdin: bool,
    /// Descriptors of ours the child inherits at the same numbers (the deployment's
    /// [`DeploymentFd`]); never [`CONTROL_FD`].
    pub inherit: Vec<std::os::fd::RawFd>,
    /// Its `argv[0]`, what `ps` shows as its command (`iotstream <app>/<process>`, set by
    /// [`role`](Self::role)); `None`: the program's path. Nothing reads it back: a process
    /// finds its own program through `/proc/self/exe` ([`this_program`](Self::this_program)).
    pub title: Option<String>,
    /// Called with each output line of the child (without its prefix and line ending, and
    /// whether it came on standard error) after it is copied: the launcher keeps the last ones
    /// for `iotstream logs`.
    pub tap: Option<OutputTap>,
}

/// See [`ChildCommand::tap`]: `(on standard error, line)`.
pub(crate) type OutputTap = Arc<dyn Fn(bool, &str) + Send + Sync>;

impl ChildCommand {
    /// This same program with this process's arguments: how a starter re-executes itself.
    pub fn this_program(process: &str) -> Result<ChildCommand, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::Runtime {
            detail: format!(
                "cannot find this program's own path to start process '{process}': {e}"
            ),
        })?;
        Ok(ChildCommand {
            program: exe,
            args: std::env::args_os().skip(1).collect(),
            env: Vec::new(),
            cpus: None,
            control: None,
            stdin: false,
            inherit: Vec::new(),
            title: None,
            tap: None,
        })
    }

    /// The role variables of `process` of application `app` in run `run` of a graph with this
    /// fingerprint, and the title that names it in `ps` (`iotstream <app>/<process>`).
    pub fn role(mut self, app: &str, process: &str, run: &RunId, fingerprint: u64) -> Self {
        self.title = Some(format!("iotstream {app}/{process}"));
        self.env.push((ENV_PROCESS.into(), process.into()));
        self.env.push((ENV_RUN.into(), run.to_string()));
        self.env
            .push((ENV_GRAPH.into(), format!("{fingerprint:x}")));
        self
    }
}

/// The name `top`, `ps -o comm` and `/proc/<pid>/comm` show for process `process` of
/// application `app`: `<app>/<process>`, within the kernel's 15 bytes. What is cut is the
/// application's name first (the process's name says which of its processes this is):
/// `quake_detector/detector` shows as `quake_/detector`; a process name of 14 bytes or more
/// shows alone, cut to 15. Cuts fall between characters.
pub(crate) fn process_comm(app: &str, process: &str) -> String {
    const COMM_MAX: usize = 15;
    let app = app.replace('\0', "");
    let process = process.replace('\0', "");
    let cut = |s: &str, max: usize| -> String {
        let end = (0..=max.min(s.len()))
            .rev()
            .find(|&i| s.is_char_boundary(i))
            .unwrap_or(0);
        s[..end].to_string()
    };
    if app.len() + 1 + process.len() <= COMM_MAX {
        return format!("{app}/{process}");
    }
    match COMM_MAX.checked_sub(process.len() + 1) {
        Some(room) if room > 0 && !cut(&app, room).is_empty() => {
            format!("{}/{process}", cut(&app, room))
        }
        _ => cut(&process, COMM_MAX),
    }
}

/// Names this process `<app>/<process>` ([`process_comm`]) for `top` and `ps -o comm`: a child
/// calls it once it knows its role. `PR_SET_NAME` names the calling thread, so from another
/// thread than the main one the main thread's `/proc/self/comm` is written instead (the same
/// kernel call). Best effort: a failure changes nothing else.
pub(crate) fn name_this_process(app: &str, process: &str) {
    let comm = process_comm(app, process);
    let main_thread = nix::unistd::gettid() == nix::unistd::getpid();
    if main_thread {
        if let Ok(name) = std::ffi::CString::new(comm) {
            let _ = nix::sys::prctl::set_name(&name);
        }
    } else {
        let _ = std::fs::write("/proc/self/comm", comm);
    }
}

/// How reading a bounded line went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LineRead {
    /// A line is in the buffer, without its `\n`.
    Line,
    /// A line longer than the limit was skipped (up to and including its `\n`).
    TooLong,
    /// A last line without `\n` is in the buffer, at the end of the input (a peer that wrote
    /// it and closed; or one cut off mid-line: the caller decides). The next read says
    /// [`End`](LineRead::End).
    Unterminated,
    /// The end of the input.
    End,
}

/// Reads one line of at most `limit` bytes into `buf` (cleared first): never holds more than
/// `limit` bytes of a line that a peer sends, however long it is.
pub(crate) fn read_line_bounded(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    limit: usize,
) -> std::io::Result<LineRead> {
    buf.clear();
    let mut too_long = false;
    loop {
        let available = match reader.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if buf.is_empty() || too_long {
                LineRead::End
            } else {
                LineRead::Unterminated
            });
        }
        let (piece, found) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], Some(i + 1)),
            None => (available, None),
        };
        if !too_long && buf.len() + piece.len() > limit {
            too_long = true;
            buf.clear();
        }
        if !too_long {
            buf.extend_from_slice(piece);
        }
        let used = found.unwrap_or(available.len());
        reader.consume(used);
        if found.is_some() {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// The file descriptor a supervised child finds its control channel on.
pub(crate) const CONTROL_FD: i32 = 3;

/// Starts `process` as a child as `command` says. Its output lines are copied to ours prefixed
/// with `[process]`; `on_exit` is called with its exit, on a thread of its own, as soon as it
/// has ended and its last output lines are copied.
pub(crate) fn spawn_child(
    process: &str,
    command: ChildCommand,
    on_exit: impl FnOnce(Exit) + Send + 'static,
) -> Result<ChildProcess, Error> {
    use std::os::fd::AsRawFd;
    let parent = nix::unistd::getpid();
    let mut cmd = Command::new(&command.program);
    if let Some(title) = &command.title {
        cmd.arg0(title);
    }
    cmd.args(&command.args)
        .envs(command.env.iter().map(|(k, v)| (k, v)))
        .stdin(if command.stdin {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let control = command.control.as_ref().map(|fd| fd.as_raw_fd());
    if command.inherit.contains(&CONTROL_FD) && control.is_some() {
        return Err(Error::Runtime {
            detail: format!(
                "process '{process}': file descriptor {CONTROL_FD} is both the control channel \
                 and a descriptor to inherit"
            ),
        });
    }
    for &fd in &command.inherit {
        inherit_fd(&mut cmd, fd);
    }
    // A supervised child gets a process group of its own: a terminal's Ctrl-C and hang-up reach
    // only the launcher, which conducts the drain. Not the one that reads a terminal, though: a
    // process outside the terminal's foreground group is stopped (SIGTTIN) when it reads it. It
    // ignores a terminal's SIGINT and SIGHUP (see [`signals`]), so the launcher still conducts.
    let reads_terminal = command.stdin && std::io::IsTerminal::is_terminal(&std::io::stdin());
    let own_group = control.is_some() && !reads_terminal;
    let mut cpu_set = None;
    if let Some(cpus) = &command.cpus {
        let mut set = nix::sched::CpuSet::new();
        for &c in cpus {
            set.set(c).map_err(|e| Error::Runtime {
                detail: format!("process '{process}': cannot pin to CPU {c}: {e}"),
            })?;
        }
        cpu_set = Some(set);
    }
    let name = process.to_string();
    // SAFETY: the closure runs in the forked child before exec, allocates nothing and only makes
    // async-signal-safe system calls (prctl, getppid, setpgid, signal, dup2, fcntl,
    // sched_setaffinity, _exit).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // The starter may have died between fork and prctl: then nobody would kill us.
            if nix::unistd::getppid() != parent {
                libc::_exit(1);
            }
            if own_group && libc::setpgid(0, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            if reads_terminal {
                // In the terminal's group, a Ctrl-C or a hang-up reaches it too, maybe before its
                // own handler (which ignores both) is installed: ignored from the start (kept
                // across exec).
                libc::signal(libc::SIGINT, libc::SIG_IGN);
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
            }
            if let Some(fd) = control {
                if fd == CONTROL_FD {
                    // Already in place: only clear close-on-exec.
                    if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                        return Err(std::io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, CONTROL_FD) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(set) = &cpu_set {
                nix::sched::sched_setaffinity(Pid::from_raw(0), set)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child: Child = cmd.spawn().map_err(|e| Error::Runtime {
        detail: format!(
            "cannot start process '{name}' ({}): {e}",
            command.program.display()
        ),
    })?;
    drop(command.control);
    let pid = child.id();
    let last_errors: Arc<Mutex<VecDeque<String>>> = Arc::default();
    let out = child.stdout.take().expect("stdout is piped");
    let err = child.stderr.take().expect("stderr is piped");
    let (copied_tx, copied) = mpsc::channel::<()>();
    copy_prefixed(
        out,
        process,
        false,
        None,
        command.tap.clone(),
        copied_tx.clone(),
    );
    copy_prefixed(
        err,
        process,
        true,
        Some(Arc::clone(&last_errors)),
        command.tap.clone(),
        copied_tx,
    );
    let tail = last_errors;
    let watched = name.clone();
    let reaped = Arc::new(AtomicBool::new(false));
    let reaped_by_waiter = Arc::clone(&reaped);
    let failed = Arc::new(AtomicBool::new(false));
    let failed_by_waiter = Arc::clone(&failed);
    std::thread::Builder::new()
        .name(format!("wait {process}"))
        .spawn(move || {
            use std::os::unix::process::ExitStatusExt;
            let status = child.wait();
            let success = status.as_ref().is_ok_and(ExitStatus::success);
            failed_by_waiter.store(!success, Ordering::SeqCst);
            reaped_by_waiter.store(true, Ordering::SeqCst);
            // Let the output copiers reach the end of the pipes, so the report has the last
            // lines; bounded, since a program the child started may hold its pipes open.
            // Nothing is sent: this returns when both copiers have ended, or after 2 s.
            let _ = copied.recv_timeout(Duration::from_secs(2));
            // If waiting failed (it cannot for our own child), report a failure all the same:
            // the supervisor must hear of every child.
            let status = status.unwrap_or_else(|_| ExitStatus::from_raw(1 << 8));
            let last_errors = tail
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect();
            on_exit(Exit {
                name: watched,
                pid,
                status,
                last_errors,
            });
        })
        .map_err(|e| Error::Runtime {
            detail: format!("cannot start the thread that watches process '{name}': {e}"),
        })?;
    Ok(ChildProcess {
        pid,
        name: process.to_string(),
        reaped,
        failed,
        term_sent: Arc::new(AtomicBool::new(false)),
        ready: Arc::new(AtomicBool::new(true)),
    })
}

/// The answer to a starter's child's `ready`: `stop` if a drain was asked for while it started
/// (it then starts already draining), else `go`. `ready` is set first: a drain asked for from
/// now on is a SIGTERM ([`signal_each`] reads `ready` after it sets `term_sent`, so one of the
/// two sees the other).
pub(crate) fn drain_at_ready(ready: &AtomicBool, term_sent: &AtomicBool) -> &'static [u8] {
    ready.store(true, Ordering::SeqCst);
    if term_sent.load(Ordering::SeqCst) {
        b"stop\n"
    } else {
        b"go\n"
    }
}

/// The longest piece of a child's output line copied at once (see [`OutputLines`]).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// Reads a child's output as lines, bounded: a line longer than [`MAX_LINE`] (binary output,
/// say) comes in pieces, cut between UTF-8 characters, so what one line costs stays bounded.
pub(crate) struct OutputLines<R> {
    reader: BufReader<R>,
    /// The start of a UTF-8 character cut off at the end of the last piece.
    carry: Vec<u8>,
    /// The last piece was cut: a line ending alone next is that piece's, not an empty line.
    after_cut: bool,
}

impl<R: Read> OutputLines<R> {
    pub fn new(pipe: R) -> Self {
        OutputLines {
            reader: BufReader::new(pipe),
            carry: Vec::new(),
            after_cut: false,
        }
    }

    /// The next line or piece of one into `line` (with its `\n` if it has one); false at the end
    /// of the output.
    pub fn next_piece(&mut self, line: &mut Vec<u8>) -> bool {
        loop {
            line.clear();
            line.append(&mut self.carry);
            let room = (MAX_LINE - line.len()) as u64;
            let read = (&mut self.reader).take(room).read_until(b'\n', line);
            if matches!(read, Ok(0) | Err(_)) && line.is_empty() {
                return false;
            }
            let cut = !line.ends_with(b"\n");
            if cut && line.len() == MAX_LINE {
                // Cut by the limit, maybe inside a character: its first bytes go with the next
                // piece. (Output that ends inside a character is copied as it is.)
                let last = (line.len().saturating_sub(3)..line.len())
                    .rev()
                    .find(|&i| line[i] & 0xC0 != 0x80)
                    .unwrap_or(line.len());
                if let Err(e) = std::str::from_utf8(&line[last..]) {
                    if e.error_len().is_none() {
                        self.carry = line.split_off(last);
                    }
                }
            }
            let lone_ending = line.as_slice() == b"\n" || line.as_slice() == b"\r\n";
            let skip = self.after_cut && lone_ending;
            self.after_cut = cut;
            if !skip {
                return true;
            }
        }
    }
}

/// Copies lines from a child's pipe to our stdout or stderr, prefixed with the process name.
fn copy_prefixed(
    pipe: impl Read + Send + 'static,
    process: &str,
    to_stderr: bool,
    tail: Option<Arc<Mutex<VecDeque<String>>>>,
    tap: Option<OutputTap>,
    done: mpsc::Sender<()>,
) {
    let prefix = format!("[{process}] ");
    let _ = std::thread::Builder::new()
        .name(format!("output {process}"))
        .spawn(move || {
            // Dropped when the pipe ends: tells the waiter the output is all copied.
            let _done = done;
            let mut reader = OutputLines::new(pipe);
            let mut line = Vec::new();
            loop {
                if !reader.next_piece(&mut line) {
                    return;
                }
                let text = String::from_utf8_lossy(&line);
                let text = text.trim_end_matches(['\n', '\r']);
                if to_stderr {
                    let _ = writeln!(std::io::stderr().lock(), "{prefix}{text}");
                } else {
                    let _ = writeln!(std::io::stdout().lock(), "{prefix}{text}");
                }
                if let Some(tail) = &tail {
                    let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
                    if t.len() == 5 {
                        t.pop_front();
                    }
                    t.push_back(text.to_string());
                }
                if let Some(tap) = &tap {
                    tap(to_stderr, text);
                }
            }
        });
}

/// Sends `signal` to every child still alive (SIGTERM at most once to each).
pub(crate) fn signal_all(children: &[ChildProcess], signal: Signal) {
    signal_each(&children.iter().collect::<Vec<_>>(), signal);
}

/// [`signal_all`], for some of the children.
pub(crate) fn signal_each(children: &[&ChildProcess], signal: Signal) {
    for c in children.iter().filter(|c| !c.reaped.load(Ordering::SeqCst)) {
        if signal == Signal::SIGTERM {
            if c.term_sent.swap(true, Ordering::SeqCst) {
                continue; // asked to drain already: a second SIGTERM would cut the drain short
            }
            if !c.ready.load(Ordering::SeqCst) {
                continue; // still starting: asked at its `ready` (see `drain_at_ready`)
            }
        }
        let _ = kill(Pid::from_raw(c.pid as i32), signal);
    }
}

/// How long a graceful drain may take before stragglers are killed, by default (the launcher's
/// `drain_timeout_ms`, and a starter's [`ENV_DRAIN_TIMEOUT_MS`]).
pub(crate) const DRAIN_GRACE: Duration = Duration::from_secs(10);

/// Makes the program `cmd` starts die with this process (`PR_SET_PDEATHSIG`: SIGKILL when the
/// thread that starts it ends, as every child of ours), or not start if this process died
/// before that was set.
pub(crate) fn die_with_us(cmd: &mut Command) {
    let parent = nix::unistd::getpid();
    // SAFETY: the closure runs in the forked child before exec and only makes async-signal-safe
    // system calls (prctl, getppid, _exit).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)?;
            // We may have died between fork and prctl: then nobody would kill it.
            if nix::unistd::getppid() != parent {
                libc::_exit(1);
            }
            Ok(())
        });
    }
}

/// Lets the program `cmd` starts inherit our descriptor `fd` (close-on-exec here) at the same
/// number: its close-on-exec flag is cleared in the forked child only, just before `exec`.
pub(crate) fn inherit_fd(cmd: &mut Command, fd: std::os::fd::RawFd) {
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl, which is
    // async-signal-safe; the flag belongs to the child's own descriptor table.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The largest deployment a process reads from its [`DeploymentFd`].
pub(crate) const MAX_DEPLOYMENT_BYTES: u64 = 16 << 20;

/// A deployment file's text in a sealed memfd, for the application's processes to read: made by
/// the launcher once, inherited by every process it starts (number in [`ENV_DEPLOY_FD`]),
/// closed by the kernel when the last holder ends, so nothing is left behind on any exit, and
/// sealed (no write, no resize) so that no process can change what the others read. Kept at a
/// number of 10 or more (close-on-exec in the launcher), clear of the standard streams and of
/// [`CONTROL_FD`].
#[derive(Debug)]
pub(crate) struct DeploymentFd(std::os::fd::OwnedFd);

impl DeploymentFd {
    /// A sealed memfd holding `text`.
    pub fn new(text: &str) -> Result<DeploymentFd, Error> {
        use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
        let failed = |what: &str| Error::Runtime {
            detail: format!(
                "cannot pass the deployment to the application's processes: {what}: {}",
                std::io::Error::last_os_error()
            ),
        };
        // SAFETY: a NUL-terminated name and valid flags; the result is checked.
        let raw = unsafe {
            libc::memfd_create(
                c"iotstream-deployment".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if raw == -1 {
            return Err(failed("memfd_create"));
        }
        // SAFETY: a descriptor just made and owned by nobody else.
        let made = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: fcntl on a descriptor we own; the result is checked.
        let moved = unsafe { libc::fcntl(made.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
        if moved == -1 {
            return Err(failed("fcntl(F_DUPFD_CLOEXEC)"));
        }
        // SAFETY: as above.
        let fd = unsafe { OwnedFd::from_raw_fd(moved) };
        drop(made);
        let mut file = std::fs::File::from(fd);
        file.write_all(text.as_bytes())
            .map_err(|e| Error::Runtime {
                detail: format!("cannot pass the deployment to the application's processes: {e}"),
            })?;
        let seals =
            libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
        // SAFETY: as above.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } == -1 {
            return Err(failed("fcntl(F_ADD_SEALS)"));
        }
        Ok(DeploymentFd(file.into()))
    }

    /// Its descriptor number.
    pub fn raw(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        self.0.as_raw_fd()
    }
}

/// Reads the deployment's text from the inherited descriptor `value` names (see
/// [`ENV_DEPLOY_FD`]), checking that it is a sealed memfd of a bounded size; then marks it
/// close-on-exec, so that programs this process starts do not inherit it.
fn read_deployment_fd(value: &str) -> Result<String, Error> {
    use std::os::fd::FromRawFd;
    use std::os::unix::fs::FileExt;
    let bad = |what: String| Error::Runtime {
        detail: format!(
            "environment variable {ENV_DEPLOY_FD}={value}: {what} (it is set by the iotstream \
             launcher, not by hand)"
        ),
    };
    let fd: std::os::fd::RawFd = value
        .parse()
        .ok()
        .filter(|&fd| fd > 2)
        .ok_or_else(|| bad("not a file descriptor number above 2".into()))?;
    // SAFETY: fcntl on a number; one that is not an open descriptor only makes it fail.
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals == -1 || seals & libc::F_SEAL_WRITE == 0 {
        return Err(bad(format!(
            "file descriptor {fd} is not the launcher's sealed deployment ({})",
            if seals == -1 {
                std::io::Error::last_os_error().to_string()
            } else {
                "not sealed against writing".to_string()
            }
        )));
    }
    // SAFETY: an open descriptor (F_GET_SEALS succeeded), borrowed: never closed here, since
    // another graph of this process may read it again.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let len = file
        .metadata()
        .map_err(|e| bad(format!("cannot read file descriptor {fd}: {e}")))?
        .len();
    if len > MAX_DEPLOYMENT_BYTES {
        return Err(bad(format!(
            "the deployment is {len} bytes, more than {MAX_DEPLOYMENT_BYTES}"
        )));
    }
    let mut bytes = vec![0u8; len as usize];
    // Positional reads: the descriptor's offset is shared with every other process.
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| bad(format!("cannot read file descriptor {fd}: {e}")))?;
    // SAFETY: fcntl on an open descriptor.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    String::from_utf8(bytes).map_err(|_| bad("the deployment is not valid UTF-8".into()))
}

/// Bounds the drain of a directly started application (no launcher), in milliseconds.
pub(crate) const ENV_DRAIN_TIMEOUT_MS: &str = "IOTSTREAM_DRAIN_TIMEOUT_MS";

/// How long a starter's drain (Ctrl-C, SIGTERM, [`Running::stop`](crate::Running::stop), or
/// the stop after a failure) may take before the children still running are killed:
/// `IOTSTREAM_DRAIN_TIMEOUT_MS`, default [`DRAIN_GRACE`]. A malformed value is an error naming
/// the variable.
pub(crate) fn drain_timeout() -> Result<Duration, Error> {
    match std::env::var(ENV_DRAIN_TIMEOUT_MS) {
        Err(std::env::VarError::NotPresent) => Ok(DRAIN_GRACE),
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_millis)
            .map_err(|_| Error::Runtime {
                detail: format!(
                    "environment variable {ENV_DRAIN_TIMEOUT_MS} must be a number of milliseconds, not '{v}'"
                ),
            }),
        Err(_) => Err(Error::Runtime {
            detail: format!("environment variable {ENV_DRAIN_TIMEOUT_MS} is not valid UTF-8"),
        }),
    }
}

/// Where to write the graph's description, if the launcher asked for it.
pub(crate) fn describe_request() -> Option<std::path::PathBuf> {
    role_env(ENV_DESCRIBE).map(std::path::PathBuf::from)
}

/// The deployment the launcher passed, if any (see [`ENV_DEPLOY_FD`]).
pub(crate) fn deployment_from_env() -> Result<Option<crate::deploy::Deployment>, Error> {
    let Some(value) = role_env(ENV_DEPLOY_FD) else {
        return Ok(None);
    };
    let text = read_deployment_fd(&value.to_string_lossy())?;
    let file = role_var(ENV_DEPLOY_FILE).unwrap_or_else(|| "deployment".into());
    crate::deploy::Deployment::parse(&file, &text)
        .map(Some)
        .map_err(Error::from)
}

/// Set when the launcher says `final`: it restarts no process any more.
static NO_MORE_RESTARTS: AtomicBool = AtomicBool::new(false);

/// True while a dead peer process may come back: this process is supervised by the launcher
/// (`IOTSTREAM_SUPERVISED=1`, read once), which restarts crashed processes, and it has not said
/// `final` yet. Rings then wait for a dead peer instead of failing.
pub(crate) fn peers_may_restart() -> bool {
    static SUPERVISED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPERVISED.get_or_init(supervised_by_launcher) && !NO_MORE_RESTARTS.load(Ordering::SeqCst)
}

/// True if the launcher started this process (`IOTSTREAM_SUPERVISED` set).
pub(crate) fn supervised_by_launcher() -> bool {
    role_env(ENV_SUPERVISED).is_some()
}

/// True if the launcher started this process again, after an earlier one of the same name
/// (`IOTSTREAM_RESTARTED` set): writers on other hosts may reconnect to resume what the
/// earlier one left unconsumed.
pub(crate) fn restarted() -> bool {
    role_env(ENV_RESTARTED).is_some()
}

/// Whether the control channel was taken already (one graph per process talks to the launcher).
static CONTROL_TAKEN: AtomicBool = AtomicBool::new(false);

/// A supervised child's channel to its launcher. The child says `ready` once its part of the
/// graph is built (rings opened, agents made), then waits for `go` before any agent runs. The
/// launcher may also say `stop` (drain: the same as SIGTERM, but it cannot arrive before the
/// child is ready to handle it) and `final` (no process will be restarted any more). Once
/// running, the child may say `drain` (another host is stopping the application:
/// [`ask_launcher_to_drain`]) and says `metrics <json>` every reporting interval
/// ([`MetricsReporter`]).
pub(crate) struct Control {
    reader: BufReader<std::os::unix::net::UnixStream>,
}

/// The control channel, when started by the launcher (once per process).
///
/// `IOTSTREAM_CONTROL_FD` is only believed when fd 3 really is the launcher's channel: a Unix
/// stream socket whose peer is our parent process, on which the first line is `hello <nonce>`
/// with the nonce of `IOTSTREAM_CONTROL_NONCE` (read within [`HELLO_TIMEOUT`]; the launcher
/// writes it before it starts the child). Anything else (the variables inherited by a program
/// that no launcher started, fd 3 some file, pipe or other socket) is a warning, and the
/// descriptor is left alone: nothing is written to it or taken off it (the hello is only peeked
/// at), it is not closed, no option of it is changed, nothing waits on it
/// beyond that bound.
pub(crate) fn take_control() -> Result<Option<Control>, Error> {
    use std::os::fd::{BorrowedFd, FromRawFd};
    let Some(fd) = role_env(ENV_CONTROL_FD) else {
        return Ok(None);
    };
    let ignored = |why: &str| {
        tracing::warn!(
            "{ENV_CONTROL_FD} is set but {why}: ignored (this program was not started by the \
             iotstream launcher; the variable was inherited)"
        );
        Ok(None)
    };
    if fd.to_str() != Some(&CONTROL_FD.to_string()) {
        return ignored(&format!("is {fd:?}, not {CONTROL_FD}"));
    }
    let Some(nonce) = role_var(ENV_CONTROL_NONCE).filter(|n| !n.is_empty()) else {
        return ignored(&format!("{ENV_CONTROL_NONCE} is missing"));
    };
    if CONTROL_TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(None);
    }
    // SAFETY: only inspected while this function runs; fstat on a closed fd just fails.
    let borrowed = unsafe { BorrowedFd::borrow_raw(CONTROL_FD) };
    match nix::sys::stat::fstat(borrowed) {
        Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFSOCK => {}
        Ok(_) => return ignored(&format!("file descriptor {CONTROL_FD} is not a socket")),
        Err(e) => return ignored(&format!("file descriptor {CONTROL_FD} is not open ({e})")),
    }
    if sock_opt::<libc::c_int>(libc::SO_TYPE).ok() != Some(libc::SOCK_STREAM) {
        return ignored(&format!(
            "file descriptor {CONTROL_FD} is not a stream socket"
        ));
    }
    let parent = nix::unistd::getppid().as_raw();
    match sock_opt::<libc::ucred>(libc::SO_PEERCRED) {
        Ok(cred) if cred.pid == parent => {}
        Ok(cred) => {
            return ignored(&format!(
                "the peer of file descriptor {CONTROL_FD} is pid {}, not our parent {parent}",
                cred.pid
            ))
        }
        Err(e) => {
            return ignored(&format!(
                "file descriptor {CONTROL_FD} is not a Unix socket ({e})"
            ))
        }
    }
    // Peeked, not read: a socket that is not the launcher's keeps every byte it had.
    let hello = format!("hello {nonce}\n");
    if !peek_hello(borrowed, hello.as_bytes(), HELLO_TIMEOUT) {
        return ignored(&format!(
            "file descriptor {CONTROL_FD} did not say hello with the nonce within {} ms",
            HELLO_TIMEOUT.as_millis()
        ));
    }
    // SAFETY: fd 3 is an open stream socket (checked above) that proved to be the launcher's:
    // ours from now on.
    let stream = unsafe { std::os::unix::net::UnixStream::from_raw_fd(CONTROL_FD) };
    let mut reader = BufReader::new(stream);
    // The hello, peeked above, is taken off the channel; it is all there already.
    let mut taken = vec![0u8; hello.len()];
    reader.read_exact(&mut taken).map_err(|e| Error::Runtime {
        detail: format!("the launcher's control channel failed: {e}"),
    })?;
    // Programs this process starts must not inherit the launcher's channel.
    // SAFETY: fcntl on our own open descriptor.
    unsafe { libc::fcntl(CONTROL_FD, libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(Some(Control { reader }))
}

/// Socket option `option` (level `SOL_SOCKET`) of [`CONTROL_FD`], a plain-data value.
fn sock_opt<T: Copy>(option: libc::c_int) -> std::io::Result<T> {
    let mut value = std::mem::MaybeUninit::<T>::zeroed();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: `value` has room for `len` bytes; getsockopt writes at most that many.
    let r = unsafe {
        libc::getsockopt(
            CONTROL_FD,
            libc::SOL_SOCKET,
            option,
            value.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r == -1 {
        return Err(std::io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<T>() {
        return Err(std::io::Error::other("unexpected option size"));
    }
    // SAFETY: zero-initialised, then filled by the kernel with a value of type T (plain data).
    Ok(unsafe { value.assume_init() })
}

/// How long a child waits for the launcher's `hello` on its control channel (the launcher
/// writes it before starting the child, so it is there at once).
pub(crate) const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// True if the first bytes waiting on socket `fd` are `hello` exactly, within `timeout`. Only
/// peeks (`MSG_PEEK`): nothing is taken off a socket that turns out not
/// to be the launcher's, and no socket option of it is changed. Stops at the first byte that
/// differs.
fn peek_hello(fd: std::os::fd::BorrowedFd<'_>, hello: &[u8], timeout: Duration) -> bool {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + timeout;
    let mut buf = vec![0u8; hello.len()];
    loop {
        // SAFETY: `buf` has room for `buf.len()` bytes; recv writes at most that many.
        let n = unsafe {
            libc::recv(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            0 => return false, // the peer closed it
            n if n > 0 => {
                let n = n as usize;
                if buf[..n] != hello[..n] {
                    return false;
                }
                if n == hello.len() {
                    return true;
                }
            }
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::Interrupted
                {
                    return false;
                }
            }
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return false;
        }
        // Wait for more bytes (a peek returns the same ones at once): poll until the count
        // grows, in short slices.
        let mut fds = [nix::poll::PollFd::new(fd, nix::poll::PollFlags::POLLIN)];
        let slice = left.min(Duration::from_millis(10));
        let _ = nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(slice).unwrap_or(nix::poll::PollTimeout::ZERO),
        );
        if n > 0 {
            // Some bytes but not all: poll says readable at once, so sleep the slice.
            std::thread::sleep(slice);
        }
    }
}

/// This process's writing end of its control channel, once it said `ready` (see
/// [`ask_launcher_to_drain`]).
static CONTROL_OUT: std::sync::OnceLock<Mutex<std::os::unix::net::UnixStream>> =
    std::sync::OnceLock::new();

/// Asks the launcher that supervises this process to drain the whole application on its host
/// (as Ctrl-C would): a link from another host said the application is stopping there. False
/// if no launcher supervises this process (or its channel is gone).
pub(crate) fn ask_launcher_to_drain() -> bool {
    let Some(out) = CONTROL_OUT.get() else {
        return false;
    };
    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
    out.write_all(b"drain\n").is_ok()
}

/// The longest `metrics <json>` line a child sends on its control channel (and the launcher
/// reads): a report over it is not sent (warned about once).
pub(crate) const MAX_METRICS_LINE: usize = 4 << 20;

/// How often this process reports its counters to its launcher ([`ENV_METRICS_INTERVAL_MS`],
/// default 1 s); `None` for never (`0`). A malformed value is warned about and the default
/// kept: reporting is not worth failing the process for.
pub(crate) fn metrics_interval() -> Option<Duration> {
    let Some(value) = role_var(ENV_METRICS_INTERVAL_MS) else {
        return Some(DEFAULT_METRICS_INTERVAL);
    };
    match value.trim().parse::<u64>() {
        Ok(0) => None,
        Ok(ms) => Some(Duration::from_millis(ms)),
        Err(_) => {
            tracing::warn!(
                "{ENV_METRICS_INTERVAL_MS}={value:?} is not a number of milliseconds: reporting \
                 every {} ms",
                DEFAULT_METRICS_INTERVAL.as_millis()
            );
            Some(DEFAULT_METRICS_INTERVAL)
        }
    }
}

/// The reporting interval when nothing says otherwise.
pub(crate) const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(1);

/// A supervised process's counters, reported to its launcher: a thread writes
/// `metrics <json>\n` (an [`observe::ProcessSample`](crate::observe::ProcessSample): pid, CPU
/// time, resident memory, every counter of its agents and connections) on the control channel
/// every interval, through the same writer as `drain`, and a last one when the guard is dropped
/// (the run is over), then ends.
///
/// A report larger than [`MAX_METRICS_LINE`] is not sent (warned about once); a write that
/// fails (the launcher is gone, or does not read for [`CONTROL_WRITE_TIMEOUT`]) ends the
/// reporting.
pub(crate) struct MetricsReporter {
    /// Dropped to end the thread (its `recv_timeout` sees the disconnection at once).
    over: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How long a write on the control channel may wait for the launcher to read.
pub(crate) const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(30);

impl MetricsReporter {
    /// Starts reporting `registry`'s counters, if this process said `ready` on a launcher's
    /// control channel and reporting is on ([`metrics_interval`]).
    pub fn start(registry: Arc<crate::metrics::Registry>) -> Option<MetricsReporter> {
        let out = CONTROL_OUT.get()?;
        let interval = metrics_interval()?;
        if let Ok(s) = out.lock() {
            let _ = s.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT));
        }
        let (over, until) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("iotstream metrics".into())
            .spawn(move || {
                let mut warned = false;
                loop {
                    let last = matches!(
                        until.recv_timeout(interval),
                        Err(mpsc::RecvTimeoutError::Disconnected)
                    );
                    let sample = crate::observe::sample_this_process(registry.snapshot());
                    match metrics_line(&sample, MAX_METRICS_LINE) {
                        Ok(line) => {
                            let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                            if let Err(e) = out.write_all(line.as_bytes()) {
                                tracing::warn!(
                                    "cannot report counters to the launcher ({e}): no more reports"
                                );
                                return;
                            }
                        }
                        Err(size) if !warned => {
                            warned = true;
                            tracing::warn!(
                                "this process's counters take {size} bytes, more than the \
                                 {MAX_METRICS_LINE} a report may: not reported to the launcher \
                                 (warned once)"
                            );
                        }
                        Err(_) => {}
                    }
                    if last {
                        return;
                    }
                }
            })
            .ok()?;
        Some(MetricsReporter {
            over: Some(over),
            thread: Some(thread),
        })
    }
}

impl Drop for MetricsReporter {
    fn drop(&mut self) {
        // The thread wakes at once, sends a last report and ends.
        self.over.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `metrics <json>\n` for `sample`, or its size if that is more than `limit` bytes.
pub(crate) fn metrics_line(
    sample: &crate::observe::ProcessSample,
    limit: usize,
) -> Result<String, usize> {
    let mut line = String::from("metrics ");
    // A sample of plain values always serializes.
    line.push_str(&serde_json::to_string(sample).unwrap_or_else(|_| "{}".into()));
    line.push('\n');
    if line.len() > limit {
        Err(line.len())
    } else {
        Ok(line)
    }
}

/// How often a starter or launcher looks for a stall across the processes of its host while
/// they may be quiet. Only the pace of the rounds: a stall is decided on states, never on time.
pub(crate) const STALL_PROBE_EVERY: Duration = Duration::from_millis(50);

/// How long a stall round waits for every process's answer; a round without them decides
/// nothing.
pub(crate) const STALL_ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// One stall round's reading of the processes of a host (every one quiet): what each did so
/// far, where every ring stands, and the agents that may free a writer. Two equal readings
/// in a row: nothing moved in between.
#[derive(PartialEq, Eq)]
pub(crate) struct StallReading {
    /// Envelopes ever posted, by process.
    pub posted: std::collections::BTreeMap<String, u64>,
    /// Every ring's positions (`transport::RingGauges::positions`).
    pub rings: Vec<u64>,
    /// What every process said may free a writer ([`Quiet::frees`]), together. Equal in two
    /// readings: the second round's answers were given knowing them all.
    pub frees: Vec<usize>,
}

/// A process's answer to a stall probe: `None` while its part may still move by itself,
/// given what may free a writer in the other processes (agent indices, what the previous
/// round's answers said: [`frees_of`]; `None`: more than a probe lists, any agent may).
/// Given by the runtime, which alone knows the part.
pub(crate) type QuietProbe = Box<dyn Fn(Option<&[usize]>) -> QuietAnswer + Send>;

/// What a process answers a stall probe: `None` (busy), or its quiet part.
pub(crate) type QuietAnswer = Option<Quiet>;

/// A process's part, quiet but for the other processes of its host: only a change elsewhere
/// can move it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Quiet {
    /// Envelopes ever posted in this process: it did nothing between two readings that agree.
    pub posted: u64,
    /// The agents (indices in the graph, which every process builds alike) whose step may
    /// free a writer of this part: the readers, here or elsewhere, of the links it holds data
    /// for and cannot send. A timer in another process that leads to one of them holds the
    /// verdict there. (Not its agents fed from elsewhere that hold unconsumed elements: their
    /// writer, if it waits, names them itself; one that does not wait needs nothing of them.)
    pub frees: Vec<usize>,
    /// What it holds and cannot send, or cannot take: the one-process stall's descriptions.
    pub stuck: Vec<String>,
}

/// The agents that may free a writer, as every quiet answer of a round says, together,
/// sorted, each once: sent with the next round's probe.
pub(crate) fn frees_of<'a>(answers: impl IntoIterator<Item = &'a Quiet>) -> Vec<usize> {
    let all: std::collections::BTreeSet<usize> = answers
        .into_iter()
        .flat_map(|q| q.frees.iter().copied())
        .collect();
    all.into_iter().collect()
}

/// The longest answer to a stall probe a process sends (and its starter or launcher reads).
pub(crate) const MAX_QUIET_LINE: usize = 1 << 20;

/// The most agents that may free a writer a stall probe lists (about 60 KiB of line): more
/// are sent as `null`, any agent may (a process with any timer armed is then busy).
pub(crate) const MAX_PROBE_FREES: usize = 8192;

/// The stall probe of `round`, with what may free a writer ([`frees_of`] the round before):
/// `quiet? <round> <frees as JSON, or null>`.
pub(crate) fn probe_line(round: u64, frees: &[usize]) -> String {
    let json = if frees.len() > MAX_PROBE_FREES {
        "null".to_string()
    } else {
        // A list of numbers always serializes.
        serde_json::to_string(frees).unwrap_or_else(|_| "null".into())
    };
    format!("quiet? {round} {json}\n")
}

/// A stall probe as [`probe_line`] writes it: the round and the agents that may free a
/// writer elsewhere (`None`: any may). `None` for any other line.
pub(crate) fn parse_probe(line: &str) -> Option<(u64, Option<Vec<usize>>)> {
    let rest = line.strip_prefix("quiet? ")?;
    let (round, json) = rest.split_once(' ')?;
    Some((round.parse().ok()?, serde_json::from_str(json).ok()?))
}

/// The answer line to probe `round`: `quiet <round> <posted> <frees as JSON> <descriptions as
/// JSON>` or `busy <round>`. Descriptions beyond [`MAX_QUIET_LINE`] are cut (the first ones
/// name the connections); an answer whose agents that may free a writer alone do not fit is
/// `busy` (never a stall for want of them).
pub(crate) fn quiet_line(round: u64, quiet: QuietAnswer) -> String {
    let busy = || format!("busy {round}\n");
    let Some(mut q) = quiet else {
        return busy();
    };
    // Lists of numbers and of strings always serialize.
    let frees = serde_json::to_string(&q.frees).unwrap_or_else(|_| "[]".into());
    loop {
        let stuck = serde_json::to_string(&q.stuck).unwrap_or_else(|_| "[]".into());
        let line = format!("quiet {round} {} {frees} {stuck}\n", q.posted);
        if line.len() <= MAX_QUIET_LINE {
            return line;
        }
        if q.stuck.is_empty() {
            return busy();
        }
        q.stuck.truncate(q.stuck.len() / 2);
    }
}

/// An answer line to a stall probe, as [`quiet_line`] writes it: the round, then what the
/// process said (`None`: busy). `None` for any other line.
pub(crate) fn parse_quiet(line: &str) -> Option<(u64, QuietAnswer)> {
    if let Some(round) = line.strip_prefix("busy ") {
        return Some((round.trim().parse().ok()?, None));
    }
    let rest = line.strip_prefix("quiet ")?;
    let (round, rest) = rest.split_once(' ')?;
    let (posted, rest) = rest.split_once(' ')?;
    // The agents' indices are numbers: the list has no space in it.
    let (frees, stuck) = rest.split_once(' ')?;
    let quiet = Quiet {
        posted: posted.parse().ok()?,
        frees: serde_json::from_str(frees).ok()?,
        stuck: serde_json::from_str(stuck).ok()?,
    };
    Some((round.parse().ok()?, Some(quiet)))
}

impl Control {
    /// Says `ready`, waits for `go` (or `stop`, which sets `stop` and lets the part start
    /// already draining), then keeps listening for `stop`, `final` and stall probes
    /// ([`probe_line`], answered with what `quiet` says: [`quiet_line`]) on a thread.
    pub fn ready_then_wait_go(self, stop: Arc<AtomicBool>, quiet: QuietProbe) -> Result<(), Error> {
        let lost = |e: std::io::Error| Error::Runtime {
            detail: format!("the launcher's control channel failed: {e}"),
        };
        let mut reader = self.reader;
        if let Ok(out) = reader.get_ref().try_clone() {
            // Answers to stall probes go out here too: never a write that waits for ever.
            let _ = out.set_write_timeout(Some(CONTROL_WRITE_TIMEOUT));
            let _ = CONTROL_OUT.set(Mutex::new(out));
        }
        let said = format!("{}ready\n", protocol_line());
        reader.get_ref().write_all(said.as_bytes()).map_err(lost)?;
        let mut line = String::new();
        // What the launcher said its protocol was.
        let mut theirs: Option<(u32, String)> = None;
        loop {
            line.clear();
            if reader.read_line(&mut line).map_err(lost)? == 0 {
                return Err(Error::Runtime {
                    detail: "the launcher ended before the run started".into(),
                });
            }
            let t = line.trim();
            if matches!(t, "go" | "stop") {
                if let Some(refused) =
                    protocol_refused(theirs.as_ref().map(|(n, v)| (*n, v.as_str())))
                {
                    return Err(refused);
                }
            }
            match t {
                "go" => break,
                "stop" => {
                    stop.store(true, Ordering::SeqCst);
                    break;
                }
                "final" => NO_MORE_RESTARTS.store(true, Ordering::SeqCst),
                t if parse_protocol(t).is_some() => {
                    theirs = parse_protocol(t).map(|(n, v)| (n, v.to_string()));
                }
                t => {
                    // A stall probe before the run starts (a starter probes as soon as its
                    // own part is quiet): not quiet yet. Unanswered, the prober would wait for
                    // this answer before it asks again.
                    if let (Some((round, _)), Some(out)) = (parse_probe(t), CONTROL_OUT.get()) {
                        let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                        let _ = out.write_all(quiet_line(round, None).as_bytes());
                    }
                }
            }
        }
        std::thread::Builder::new()
            .name("iotstream control".into())
            .spawn(move || {
                let mut line = String::new();
                loop {
                    line.clear();
                    match reader.read_line(&mut line) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => match line.trim() {
                            "final" => NO_MORE_RESTARTS.store(true, Ordering::SeqCst),
                            "stop" => {
                                tracing::info!("the launcher asks for a drain");
                                stop.store(true, Ordering::SeqCst)
                            }
                            t => {
                                if let (Some((round, frees)), Some(out)) =
                                    (parse_probe(t), CONTROL_OUT.get())
                                {
                                    let answer = quiet_line(round, quiet(frees.as_deref()));
                                    let mut out = out.lock().unwrap_or_else(|p| p.into_inner());
                                    let _ = out.write_all(answer.as_bytes());
                                }
                            }
                        },
                    }
                }
            })
            .map_err(|e| Error::Runtime {
                detail: format!("cannot start the control thread: {e}"),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{
        peek_hello, process_comm, read_deployment_fd, DeploymentFd, OutputLines, MAX_LINE,
    };

    /// What a child under a launcher that wrote `from_launcher` did: its `ready_then_wait_go`
    /// result and what it wrote on the channel.
    fn child_under(from_launcher: &str) -> (Result<(), crate::error::Error>, String) {
        use std::io::{Read, Write};
        use std::sync::atomic::AtomicBool;
        use std::sync::Arc;
        let (child, mut launcher) = std::os::unix::net::UnixStream::pair().unwrap();
        launcher.write_all(from_launcher.as_bytes()).unwrap();
        let control = super::Control {
            reader: std::io::BufReader::new(child),
        };
        let result =
            control.ready_then_wait_go(Arc::new(AtomicBool::new(false)), Box::new(|_| None));
        launcher
            .set_read_timeout(Some(std::time::Duration::from_millis(200)))
            .unwrap();
        let mut said = vec![0u8; 4096];
        let n = launcher.read(&mut said).unwrap_or(0);
        (result, String::from_utf8_lossy(&said[..n]).into_owned())
    }

    #[test]
    fn a_child_runs_only_under_a_launcher_of_its_own_control_protocol() {
        use super::{parse_protocol, protocol_line, CONTROL_PROTOCOL};
        let ours = protocol_line();
        assert_eq!(
            parse_protocol(ours.trim()),
            Some((CONTROL_PROTOCOL, env!("CARGO_PKG_VERSION")))
        );
        assert_eq!(parse_protocol("protocol x 1.0"), None);
        assert_eq!(parse_protocol("ready"), None);

        let (result, said) = child_under(&format!("{ours}go\n"));
        assert!(result.is_ok(), "{result:?}");
        assert_eq!(
            said,
            format!("{ours}ready\n"),
            "the child says its protocol, then ready"
        );

        // An older launcher says nothing; a newer one another number: the child refuses.
        let (result, _) = child_under("go\n");
        let e = result.expect_err("no protocol said").to_string();
        assert!(e.contains("did not say its control protocol"), "{e}");
        assert!(e.contains("from the same iotstream release"), "{e}");
        let (result, _) = child_under(&format!("protocol {} 9.9.9\ngo\n", CONTROL_PROTOCOL + 1));
        let e = result.expect_err("another protocol").to_string();
        assert!(
            e.contains(&format!(
                "speaks control protocol {} (iotstream 9.9.9), this program {CONTROL_PROTOCOL}",
                CONTROL_PROTOCOL + 1
            )),
            "{e}"
        );
        // A drain asked for before `go` is refused the same way.
        let (result, _) = child_under("stop\n");
        assert!(result.is_err());
    }

    #[test]
    fn a_stall_probe_answer_reads_back_as_written_and_anything_else_is_none() {
        use super::{
            parse_probe, parse_quiet, probe_line, quiet_line, Quiet, MAX_PROBE_FREES,
            MAX_QUIET_LINE,
        };
        let quiet = Quiet {
            posted: 42,
            frees: vec![3, 17],
            stuck: vec![
                "a.out -> b.in: 3 elements wait".to_string(),
                "x \" y".into(),
            ],
        };
        let line = quiet_line(7, Some(quiet.clone()));
        assert_eq!(parse_quiet(line.trim()), Some((7, Some(quiet))));
        assert_eq!(parse_quiet(quiet_line(8, None).trim()), Some((8, None)));
        for bad in [
            "quiet 1 2",
            "quiet 1 2 []",
            "quiet 1 x [] []",
            "quiet 1 2 [\"a\"] []",
            "quiet 1 2 [-1] []",
            "busy x",
            "quiet? 3 []",
            "metrics {}",
        ] {
            assert_eq!(parse_quiet(bad), None, "{bad}");
        }
        assert_eq!(
            parse_probe(probe_line(9, &[1, 2]).trim()),
            Some((9, Some(vec![1, 2])))
        );
        assert_eq!(
            parse_probe(probe_line(9, &[]).trim()),
            Some((9, Some(vec![])))
        );
        // Too many to list: any agent may free a writer.
        let many: Vec<usize> = (0..=MAX_PROBE_FREES).collect();
        assert_eq!(parse_probe(probe_line(9, &many).trim()), Some((9, None)));
        for bad in ["quiet? 3", "quiet? x []", "quiet? 3 [x]", "quiet 3 []"] {
            assert_eq!(parse_probe(bad), None, "{bad}");
        }
        // Too many descriptions are cut to fit, the first ones kept.
        let many: Vec<String> = (0..100_000).map(|i| format!("connection {i}")).collect();
        let quiet = Quiet {
            stuck: many,
            ..Quiet::default()
        };
        let line = quiet_line(1, Some(quiet));
        assert!(line.len() <= MAX_QUIET_LINE);
        let (_, said) = parse_quiet(line.trim()).unwrap();
        assert_eq!(said.unwrap().stuck[0], "connection 0");
        // Agents that may free a writer are never cut: an answer they do not fit is busy.
        let quiet = Quiet {
            frees: (usize::MAX - 100_000..usize::MAX).collect(),
            ..Quiet::default()
        };
        assert_eq!(
            parse_quiet(quiet_line(2, Some(quiet)).trim()),
            Some((2, None))
        );
    }

    #[test]
    fn a_process_name_fits_the_kernels_15_bytes_cut_between_characters() {
        assert_eq!(process_comm("quake", "detector"), "quake/detector");
        // The application's name is cut first: the process's says which process this is.
        assert_eq!(process_comm("seismology", "detector"), "seismo/detector");
        assert_eq!(process_comm("quake_detector", "trigger"), "quake_d/trigger");
        // A long process name shows alone, cut.
        assert_eq!(
            process_comm("app", "a_very_long_process"),
            "a_very_long_pro"
        );
        assert_eq!(process_comm("app", "fourteen_bytes"), "fourteen_bytes");
        // The euro sign takes 3 bytes: a cut falls before it, not inside.
        assert_eq!(process_comm("ab€€€", "process"), "ab€/process");
        assert_eq!(process_comm("€", "processname_"), "processname_");
        assert_eq!(process_comm("a\0b", "c"), "ab/c");
    }

    #[test]
    fn naming_from_another_thread_than_the_main_one_names_the_process() {
        // Test threads are not the main thread: the process's (main thread's) name changes,
        // which is what `top` shows. Put back afterwards.
        let before = std::fs::read_to_string("/proc/self/comm").unwrap();
        super::name_this_process("quake", "detector");
        let after = std::fs::read_to_string("/proc/self/comm").unwrap();
        std::fs::write("/proc/self/comm", before.trim_end()).unwrap();
        assert_eq!(after.trim_end(), "quake/detector");
    }

    #[test]
    fn the_hello_check_takes_nothing_off_a_socket_that_is_not_the_launchers() {
        use std::io::{Read, Write};
        use std::os::fd::AsFd;
        use std::os::unix::net::UnixStream;
        use std::time::Duration;
        let short = Duration::from_millis(200);
        let (mut ours, theirs) = UnixStream::pair().unwrap();
        // Someone else's protocol: refused at its first differing byte, every byte kept.
        ours.write_all(b"help me\n").unwrap();
        assert!(!peek_hello(theirs.as_fd(), b"hello n0nce\n", short));
        // Nothing at all: refused once the bound is over.
        let (_quiet, silent) = UnixStream::pair().unwrap();
        assert!(!peek_hello(silent.as_fd(), b"hello n0nce\n", short));
        let mut kept = [0u8; 8];
        (&theirs).read_exact(&mut kept).unwrap();
        assert_eq!(
            &kept, b"help me\n",
            "the refused socket's bytes are all still there"
        );
        // The launcher's hello, in two pieces: accepted, and still there to be taken.
        let (mut launcher, child) = UnixStream::pair().unwrap();
        launcher.write_all(b"hello n0").unwrap();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(30));
            launcher.write_all(b"nce\n").unwrap();
            launcher
        });
        assert!(peek_hello(
            child.as_fd(),
            b"hello n0nce\n",
            Duration::from_secs(10)
        ));
        let _launcher = writer.join().unwrap();
        let mut hello = [0u8; 12];
        (&child).read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello n0nce\n");
        drop(ours);
    }

    #[test]
    fn the_deployment_travels_in_a_sealed_memfd_and_nothing_else_is_taken_for_it() {
        use std::os::fd::AsRawFd;
        let text = format!("# {}\n[env]\nA = \"b\"\n", "x".repeat(200_000));
        let fd = DeploymentFd::new(&text).unwrap();
        assert!(fd.raw() >= 10);
        assert_eq!(read_deployment_fd(&fd.raw().to_string()).unwrap(), text);
        // Read again (another graph of the same process): the same text.
        assert_eq!(read_deployment_fd(&fd.raw().to_string()).unwrap(), text);
        let plain = std::fs::File::open("/proc/self/status").unwrap();
        for (value, why) in [
            ("three".to_string(), "not a file descriptor number above 2"),
            ("1".to_string(), "not a file descriptor number above 2"),
            (
                plain.as_raw_fd().to_string(),
                "is not the launcher's sealed deployment",
            ),
            (
                "999999".to_string(),
                "is not the launcher's sealed deployment",
            ),
        ] {
            let e = read_deployment_fd(&value).unwrap_err().to_string();
            assert!(
                e.contains(&format!("IOTSTREAM_DEPLOY_FD={value}: ")) && e.contains(why),
                "{e}"
            );
        }
    }

    fn pieces(output: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = OutputLines::new(output);
        let mut line = Vec::new();
        let mut out = Vec::new();
        while lines.next_piece(&mut line) {
            out.push(line.clone());
        }
        out
    }

    #[test]
    fn lines_come_whole_with_their_endings_empty_ones_too() {
        assert_eq!(
            pieces(b"a\n\nb\r\nlast"),
            [
                b"a\n".to_vec(),
                b"\n".to_vec(),
                b"b\r\n".to_vec(),
                b"last".to_vec()
            ]
        );
    }

    #[test]
    fn a_long_line_comes_in_pieces_cut_between_characters() {
        let line = "€".repeat(30_000); // 90 000 bytes, 3 per character: MAX_LINE cuts one
        let got = pieces(format!("{line}\nnext\n").as_bytes());
        assert_eq!(
            got.len(),
            3,
            "{:?}",
            got.iter().map(Vec::len).collect::<Vec<_>>()
        );
        assert!(got[0].len() <= MAX_LINE);
        for p in &got {
            assert!(std::str::from_utf8(p).is_ok(), "a piece cut a character");
        }
        assert_eq!(
            [got[0].clone(), got[1].clone()].concat(),
            format!("{line}\n").as_bytes()
        );
        assert_eq!(got[2], b"next\n");
    }

    #[test]
    fn output_that_ends_inside_a_character_ends() {
        assert_eq!(pieces(b"abc\xE2\x82"), [b"abc\xE2\x82".to_vec()]);
        let mut cut = "x".repeat(MAX_LINE - 1).into_bytes();
        cut.extend_from_slice(b"\xE2\x82");
        let got = pieces(&cut);
        assert_eq!(got.len(), 2);
        assert_eq!(got[1], b"\xE2\x82");
    }

    #[test]
    fn an_invalid_byte_earlier_does_not_stop_the_cut_between_characters() {
        // Two bad bytes, then 3-byte characters: the limit falls inside one of them.
        let mut line = b"\xFF\xFF".to_vec();
        line.extend("€".repeat(30_000).into_bytes());
        assert_ne!((MAX_LINE - 2) % 3, 0);
        let got = pieces(&line);
        assert_eq!(got.len(), 2);
        assert_eq!(got.concat(), line);
        assert!(std::str::from_utf8(&got[1]).is_ok(), "{:?}", &got[1][..4]);
    }

    #[test]
    fn a_line_of_exactly_the_limit_gives_no_empty_line_after_it() {
        let line = "x".repeat(MAX_LINE);
        let got = pieces(format!("{line}\nnext\n").as_bytes());
        assert_eq!(got, [line.into_bytes(), b"next\n".to_vec()]);
    }
}
