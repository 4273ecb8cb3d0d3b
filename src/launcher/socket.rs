//! The launcher's control socket: how `iotstream list`, `stop`, `logs` and `restart` reach a
//! running application, and only the user who started it.
//!
//! # Where
//!
//! Every `iotstream run` listens on a Unix socket in a per-user **runtime folder**:
//! `$XDG_RUNTIME_DIR/iotstream/` when `XDG_RUNTIME_DIR` names a folder that exists (systemd
//! sets it to `/run/user/<uid>`), else `/tmp/iotstream-<uid>/` (a variable naming no folder,
//! left over from a session that ended, falls back there, as the XDG specification asks).
//! The socket is named after the application and the launcher's pid, `<app>.<pid>.sock` (the
//! application's name reduced to letters, digits, `_` and `-`, at most 32 of them: the exact
//! name is in the `status` answer). A command finds an application by asking every socket
//! there for its `status`.
//!
//! # Who may talk to it
//!
//! - The folder is created with mode 0700, and is refused (a clear error, nothing is created in
//!   it or read from it) if it exists but is not a folder, is not owned by the user, or is open
//!   to the group or others ([`check_runtime_dir`]). So another local user can neither list nor
//!   reach the sockets: the kernel refuses them the folder.
//! - The socket itself is mode 0600, and the launcher checks each connection's peer
//!   (`SO_PEERCRED`): a uid other than its own is closed without an answer (defence in depth:
//!   root can pass the folder's permissions).
//! - The socket is removed on every exit of the launcher that runs code (an end, an error,
//!   Ctrl-C, `iotstream stop`). After a SIGKILL of the launcher it stays, refusing connections:
//!   `iotstream list` removes such stale sockets.
//!
//! # Protocol
//!
//! One JSON request per line ([`Request`]); each answer is one JSON line ([`Reply`]). A
//! connection may carry several requests, one after the other. Requests, by their `cmd`:
//!
//! | request | answer |
//! |---|---|
//! | `{"cmd":"status"}` | `{"status":{…}}`: a [`Status`] without the processes' counters |
//! | `{"cmd":"metrics"}` | `{"metrics":{…}}`: a [`Status`] with each process's latest report |
//! | `{"cmd":"graph"}` | `{"graph":{…}}`: the [`GraphInfo`] as placed |
//! | `{"cmd":"view"}` | `{"view":{…}}`: the live view, an [`AppMetrics`] (every process, agent, stream and connection with counters and rates; other hosts' merged in) |
//! | `{"cmd":"stop","now":false}` | `{"ok":{"message":…}}`, then the launcher's own lines as `{"line":{…}}` until `{"end":{"message":…,"exit_code":N}}` as it exits |
//! | `{"cmd":"logs","process":null,"follow":false}` | the kept lines as `{"line":{…}}` ([`LogLine`], in arrival order; of one process if `process` names one), then `{"end":…}`; with `follow`, new lines as they come until the application ends |
//! | `{"cmd":"restart","process":"work"}` | `{"ok":{"message":…}}` once the process runs again (it reported ready), or `{"error":…}` |
//!
//! Anything wrong (a malformed request, an unknown process) is `{"error":{"message":…}}`; the
//! connection stays usable. A request line is at most [`MAX_REQUEST`] bytes.
//!
//! `stop` drains exactly as the launcher's first Ctrl-C does (sources stop, data in flight is
//! processed, sinks flush, exit 0); with `now`, every process is killed at once, as a second
//! Ctrl-C does (the launcher then exits with 137, or the code of an earlier failure).
//!
//! `restart` kills the process (SIGKILL: nothing of it runs, so its peers see a process that
//! may come back, exactly as after a crash) and starts it again at once, as a restart after a
//! failure: it resumes from the data waiting in its input rings. It does not count against the
//! process's `max_restarts`, and it is done whatever the restart policy, `never` included (the
//! user asked): while the launcher may still restart processes (it has not said `final`, which
//! it says only when the application stops), peers wait for a dead peer instead of failing, so
//! its death is not the application's failure. A process that has ended, or an application that
//! is stopping, is not restarted (an error says so).

use std::io::{BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::board::{Board, LogFilter, LogLine, Phase, Status};
use crate::error::Error;
use crate::info::GraphInfo;
pub(crate) use crate::launch::{read_line_bounded, LineRead};
use crate::observe::{AppMetrics, ProcessStatus};

/// The longest request line the launcher reads.
pub const MAX_REQUEST: usize = 64 * 1024;

/// The longest answer line a command reads (a `metrics` answer holds every process's report).
pub const MAX_REPLY: usize = 64 << 20;

/// The most connections a launcher serves at once; more are answered with an error.
const MAX_CONNECTIONS: usize = 32;

/// How long the launcher waits for a request line, and for a command to read an answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a command waits for a `stop` or `restart` to be done.
const LONG_WAIT: Duration = Duration::from_secs(600);

/// A request on the control socket (see the [module](self) docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case")]
pub enum Request {
    /// The application's state, without counters.
    Status,
    /// The application's graph as placed.
    Graph,
    /// The state with each process's latest counters.
    Metrics,
    /// The live view: every process, agent, stream and connection with counters and rates,
    /// the other hosts' merged in (what `iotstream top` shows).
    View,
    /// Drain the application (`now`: kill every process at once).
    Stop {
        /// Kill at once instead of draining.
        #[serde(default)]
        now: bool,
    },
    /// The kept output lines (of one process, or all), and new ones if `follow`.
    Logs {
        /// One process's lines only.
        #[serde(default)]
        process: Option<String>,
        /// Keep the connection and send new lines until the application ends.
        #[serde(default)]
        follow: bool,
    },
    /// Kill a process and start it again.
    Restart {
        /// The process.
        process: String,
    },
}

/// One answer line on the control socket (see the [module](self) docs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    /// The answer to `status`.
    Status(Status),
    /// The answer to `metrics`.
    Metrics(Status),
    /// The answer to `graph`.
    Graph(GraphInfo),
    /// The answer to `view`.
    View(Box<AppMetrics>),
    /// Done (`stop`, `restart`).
    Ok {
        /// What was done.
        message: String,
    },
    /// The request failed.
    Error {
        /// Why.
        message: String,
    },
    /// An output line (`logs`, `stop`).
    Line(LogLine),
    /// The end of a stream of lines.
    End {
        /// Why it ended (empty after the kept lines of a `logs` without `follow`).
        message: String,
        /// The launcher's exit code, when it ended because the launcher is exiting.
        exit_code: Option<i32>,
    },
}

/// What went wrong with an operating command.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OpError {
    /// What kind of problem.
    pub kind: OpErrorKind,
    /// A sentence for people, naming what was wrong and where.
    pub message: String,
}

/// What kind of problem an [`OpError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpErrorKind {
    /// The runtime folder or the socket belongs to another user, or is unsafe.
    PermissionDenied,
    /// No such application, run or process.
    NotFound,
    /// Several runs match: say which.
    Ambiguous,
    /// The launcher refused or could not do it, or could not be reached.
    Failed,
}

impl OpError {
    fn new(kind: OpErrorKind, message: impl Into<String>) -> OpError {
        OpError {
            kind,
            message: message.into(),
        }
    }
    fn failed(message: impl Into<String>) -> OpError {
        OpError::new(OpErrorKind::Failed, message)
    }
}

// ---------------------------------------------------------------------------------------------
// The runtime folder

/// This user's runtime folder: `$XDG_RUNTIME_DIR/iotstream` if that variable names a folder
/// by an absolute path, else `/tmp/iotstream-<uid>`.
pub fn runtime_dir() -> PathBuf {
    runtime_dir_for(std::env::var_os("XDG_RUNTIME_DIR").as_deref(), my_uid())
}

/// [`runtime_dir`] for the value `xdg` of `XDG_RUNTIME_DIR` and user `uid`. A value naming no
/// folder (a session's folder removed when it ended, a typo) falls back to `/tmp`, as the XDG
/// specification asks: the control socket is there to reach the run, and a run refused for
/// want of it would be the worse outcome.
fn runtime_dir_for(xdg: Option<&std::ffi::OsStr>, uid: u32) -> PathBuf {
    match xdg.map(Path::new) {
        Some(d) if d.is_absolute() && d.is_dir() => d.join("iotstream"),
        _ => PathBuf::from(format!("/tmp/iotstream-{uid}")),
    }
}

/// This process's effective uid.
fn my_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that `dir` is safe to keep control sockets in: a folder (not a symbolic link) owned
/// by this user, closed to the group and others. `Err` with kind
/// [`NotFound`](OpErrorKind::NotFound) if it does not exist.
pub fn check_runtime_dir(dir: &Path) -> Result<(), OpError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(OpError::new(
                OpErrorKind::NotFound,
                format!("{} does not exist", dir.display()),
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(OpError::new(
                OpErrorKind::PermissionDenied,
                format!(
                    "permission denied: cannot look at the runtime folder {}: {e}",
                    dir.display()
                ),
            ))
        }
        Err(e) => {
            return Err(OpError::failed(format!(
                "cannot look at the runtime folder {}: {e}",
                dir.display()
            )))
        }
    };
    check_owner_and_mode(
        dir,
        meta.file_type().is_dir(),
        meta.uid(),
        meta.mode(),
        my_uid(),
    )
}

/// [`check_runtime_dir`]'s rule on what `stat` says of `dir`.
fn check_owner_and_mode(
    dir: &Path,
    is_dir: bool,
    owner: u32,
    mode: u32,
    me: u32,
) -> Result<(), OpError> {
    let dir = dir.display();
    if !is_dir {
        return Err(OpError::new(
            OpErrorKind::PermissionDenied,
            format!(
                "refusing to use the runtime folder {dir}: it is not a folder (a symbolic link \
                 or a file); remove it, or set XDG_RUNTIME_DIR to a folder of your own"
            ),
        ));
    }
    if owner != me {
        return Err(OpError::new(
            OpErrorKind::PermissionDenied,
            format!(
                "permission denied: the runtime folder {dir} belongs to uid {owner}, not to you \
                 (uid {me}): another user's applications are not yours to see or stop (set \
                 XDG_RUNTIME_DIR to a folder of your own if this is not another user's)"
            ),
        ));
    }
    if mode & 0o077 != 0 {
        return Err(OpError::new(
            OpErrorKind::PermissionDenied,
            format!(
                "refusing to use the runtime folder {dir}: other users may use it (mode {:o}, \
                 it must be 700): run chmod 700 {dir}, or remove it",
                mode & 0o7777
            ),
        ));
    }
    Ok(())
}

/// Creates `dir` (mode 0700) if it does not exist, then checks it ([`check_runtime_dir`]).
fn make_runtime_dir(dir: &Path) -> Result<(), OpError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(OpError::failed(format!(
                "cannot create the runtime folder {}: {e}",
                dir.display()
            )))
        }
    }
    check_runtime_dir(dir)
}

/// The socket's file name for application `app` and launcher `pid`.
fn socket_name(app: &str, pid: u32) -> String {
    format!("{}.{pid}.sock", socket_app(app))
}

/// Application `app`'s name as its sockets' names carry it: letters, digits, `_` and `-`
/// (anything else becomes `_`), at most 32 of them.
fn socket_app(app: &str) -> String {
    app.chars()
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '_' | '-' => c,
            _ => '_',
        })
        .take(32)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The launcher's side

/// What the control socket asks of the supervisor.
pub(super) enum Command {
    /// Drain (or kill at once); the answer says what is done.
    Stop {
        now: bool,
        reply: mpsc::Sender<Result<String, String>>,
    },
    /// Restart a process; answered once it runs again.
    Restart {
        process: String,
        reply: mpsc::Sender<Result<String, String>>,
    },
}

/// What a connection's thread shares.
struct Shared {
    board: Arc<Board>,
    events: mpsc::SyncSender<super::Event>,
    /// The launcher is exiting.
    over: AtomicBool,
    /// Connections being served.
    active: AtomicUsize,
}

/// The launcher's control socket, served by a thread of its own (and one per connection) from
/// [`start`](Server::start) until it is dropped, which removes it.
pub(super) struct Server {
    path: PathBuf,
    shared: Arc<Shared>,
    accept: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    /// Listens on this user's runtime folder ([`runtime_dir`], made if needed and checked), in
    /// a socket named after the board's application and this process's pid.
    pub fn start(
        board: Arc<Board>,
        events: mpsc::SyncSender<super::Event>,
    ) -> Result<Server, Error> {
        let dir = runtime_dir();
        let refused = |e: OpError| Error::Runtime {
            detail: format!("the control socket: {e}"),
        };
        make_runtime_dir(&dir).map_err(refused)?;
        let app = board.graph().app.clone();
        let name = socket_name(&app, std::process::id());
        let path = dir.join(&name);
        // Made under a hidden name and renamed once it listens: `list` never finds a socket
        // that refuses connections because it is not listening yet (it would remove it).
        let hidden = dir.join(format!(".{name}.new"));
        let _ = std::fs::remove_file(&hidden);
        let failed = |what: &str, e: std::io::Error| Error::Runtime {
            detail: format!(
                "cannot make the control socket {}: {what}: {e}",
                path.display()
            ),
        };
        let listener = UnixListener::bind(&hidden).map_err(|e| failed("bind", e))?;
        let placed = std::fs::set_permissions(&hidden, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| failed("chmod 600", e))
            .and_then(|()| {
                listener
                    .set_nonblocking(true)
                    .map_err(|e| failed("listen", e))
            })
            .and_then(|()| std::fs::rename(&hidden, &path).map_err(|e| failed("rename", e)));
        if let Err(e) = placed {
            let _ = std::fs::remove_file(&hidden);
            return Err(e);
        }
        let shared = Arc::new(Shared {
            board,
            events,
            over: AtomicBool::new(false),
            active: AtomicUsize::new(0),
        });
        let accepting = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("iotstream control socket".into())
            .spawn(move || accept_loop(listener, accepting));
        match accept {
            Ok(t) => Ok(Server {
                path,
                shared,
                accept: Some(t),
            }),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(failed("thread", e))
            }
        }
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The launcher is exiting with `exit_code`: followers are told so as the socket closes.
    pub fn finish(self, exit_code: Option<i32>) {
        self.shared.board.update(|s| s.exit_code = exit_code);
        drop(self);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // No new connection; every follower is told the end; then the socket goes.
        let _ = std::fs::remove_file(&self.path);
        self.shared.board.update(|s| s.phase = Phase::Ended);
        self.shared.over.store(true, Ordering::SeqCst);
        self.shared.board.logs().end();
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
        // Connections finish their last answer (bounded: a client that does not read is left).
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while self.shared.active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn accept_loop(listener: UnixListener, shared: Arc<Shared>) {
    use std::os::fd::AsFd;
    while !shared.over.load(Ordering::SeqCst) {
        let mut fds = [nix::poll::PollFd::new(
            listener.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(100u8));
        let conn = match listener.accept() {
            Ok((c, _)) => c,
            Err(_) => continue, // nothing there (WouldBlock), or a client that left already
        };
        if let Err(why) = peer_is(&conn, my_uid()) {
            super::log(&format!("control socket: refused a connection: {why}"));
            continue;
        }
        let _ = conn.set_nonblocking(false);
        if shared.active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            shared.active.fetch_sub(1, Ordering::SeqCst);
            let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
            let mut conn = conn;
            let _ = send(
                &mut conn,
                &Reply::Error {
                    message: format!(
                        "the launcher serves {MAX_CONNECTIONS} connections at most: try again"
                    ),
                },
            );
            continue;
        }
        let serving = Arc::clone(&shared);
        let spawned = std::thread::Builder::new()
            .name("iotstream control connection".into())
            .spawn(move || {
                serve(conn, &serving);
                serving.active.fetch_sub(1, Ordering::SeqCst);
            });
        if spawned.is_err() {
            shared.active.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// `Ok` if the peer of `conn` runs as uid `uid` (`SO_PEERCRED`), else why not.
pub(crate) fn peer_is(conn: &UnixStream, uid: u32) -> Result<(), String> {
    match nix::sys::socket::getsockopt(conn, nix::sys::socket::sockopt::PeerCredentials) {
        Ok(cred) if cred.uid() == uid => Ok(()),
        Ok(cred) => Err(format!(
            "its peer (pid {}) runs as uid {}, not as uid {uid}",
            cred.pid(),
            cred.uid()
        )),
        Err(e) => Err(format!("cannot read its peer's credentials: {e}")),
    }
}

/// Writes `reply` as one line.
fn send(conn: &mut UnixStream, reply: &Reply) -> std::io::Result<()> {
    let mut line = serde_json::to_string(reply).map_err(std::io::Error::other)?;
    line.push('\n');
    conn.write_all(line.as_bytes())
}

/// Serves one connection: requests one after the other until the client leaves.
fn serve(conn: UnixStream, shared: &Shared) {
    let _ = conn.set_read_timeout(Some(IO_TIMEOUT));
    let _ = conn.set_write_timeout(Some(IO_TIMEOUT));
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut conn = conn;
    let mut line = Vec::new();
    loop {
        match read_line_bounded(&mut reader, &mut line, MAX_REQUEST) {
            // A last request without its newline (`printf '{"cmd":"status"}' | socat ...`)
            // is answered too: the next read ends the connection.
            Ok(LineRead::Line | LineRead::Unterminated) => {}
            Ok(LineRead::TooLong) => {
                let _ = send(
                    &mut conn,
                    &Reply::Error {
                        message: format!("a request is at most {MAX_REQUEST} bytes"),
                    },
                );
                return;
            }
            Ok(LineRead::End) | Err(_) => return,
        }
        let request = match serde_json::from_slice::<Request>(&line) {
            Ok(r) => r,
            Err(e) => {
                let message = format!(
                    "not a request ({e}): send one JSON object per line, such as {{\"cmd\":\"status\"}}"
                );
                if send(&mut conn, &Reply::Error { message }).is_err() {
                    return;
                }
                continue;
            }
        };
        if answer(request, &mut conn, shared).is_err() {
            return;
        }
    }
}

/// Answers one request; `Err` once the connection is of no more use.
fn answer(request: Request, conn: &mut UnixStream, shared: &Shared) -> Result<(), ()> {
    let board = &shared.board;
    let io = |r: std::io::Result<()>| r.map_err(|_| ());
    match request {
        Request::Status => io(send(conn, &Reply::Status(board.status(false)))),
        Request::Metrics => io(send(conn, &Reply::Metrics(board.status(true)))),
        Request::Graph => io(send(conn, &Reply::Graph(board.graph().clone()))),
        Request::View => io(send(conn, &Reply::View(Box::new(board.view())))),
        Request::Stop { now } => {
            let after = board.logs().last_seq();
            let (reply, answered) = mpsc::channel();
            let done = post(shared, super::Event::Command(Command::Stop { now, reply }))
                .then(|| answered.recv_timeout(IO_TIMEOUT).ok())
                .flatten();
            match done {
                Some(Ok(message)) => io(send(conn, &Reply::Ok { message }))?,
                Some(Err(message)) => return io(send(conn, &Reply::Error { message })),
                None => io(send(
                    conn,
                    &Reply::Ok {
                        message: format!(
                            "asked; the launcher did not confirm within {} s (it is busy, or \
                             exiting already)",
                            IO_TIMEOUT.as_secs()
                        ),
                    },
                ))?,
            }
            follow(conn, shared, after, &LogFilter::Launcher)
        }
        Request::Logs {
            process,
            follow: keep,
        } => {
            let filter = match process {
                None => LogFilter::All,
                Some(p) if board.processes().contains(&p) => LogFilter::Process(p),
                Some(p) => {
                    let message = board.status(false).not_here(&p);
                    return io(send(conn, &Reply::Error { message }));
                }
            };
            let lines = board.logs().since(0, &filter);
            let mut after = 0;
            for l in lines {
                after = l.seq;
                io(send(conn, &Reply::Line(l)))?;
            }
            if keep {
                follow(conn, shared, after, &filter)
            } else {
                io(send(
                    conn,
                    &Reply::End {
                        message: String::new(),
                        exit_code: None,
                    },
                ))
            }
        }
        Request::Restart { process } => {
            let (reply, answered) = mpsc::channel();
            let posted = post(
                shared,
                super::Event::Command(Command::Restart { process, reply }),
            );
            let message = match posted.then(|| answered.recv_timeout(LONG_WAIT)) {
                Some(Ok(Ok(message))) => Reply::Ok { message },
                Some(Ok(Err(message))) => Reply::Error { message },
                _ => Reply::Error {
                    message: "the launcher is exiting: nothing restarts".into(),
                },
            };
            io(send(conn, &message))
        }
    }
}

/// Sends the lines after `after` that `filter` wants as they come, until the launcher exits
/// (then `end`, with its exit code) or the client leaves. Always `Err`: the connection ends.
fn follow(
    conn: &mut UnixStream,
    shared: &Shared,
    mut after: u64,
    filter: &LogFilter,
) -> Result<(), ()> {
    loop {
        let (lines, ended) =
            shared
                .board
                .logs()
                .wait_since(after, filter, Duration::from_millis(500));
        for l in lines {
            after = l.seq;
            send(conn, &Reply::Line(l)).map_err(|_| ())?;
        }
        if ended {
            let status = shared.board.status(false);
            let message = match status.exit_code {
                Some(c) => format!("the launcher exited with code {c}"),
                None => "the launcher exited".to_string(),
            };
            let _ = send(
                conn,
                &Reply::End {
                    message,
                    exit_code: status.exit_code,
                },
            );
            return Err(());
        }
        if client_left(conn) {
            return Err(());
        }
    }
}

/// True if the client closed its end (checked without taking anything off the socket).
fn client_left(conn: &UnixStream) -> bool {
    use std::os::fd::AsRawFd;
    let mut byte = [0u8; 1];
    // SAFETY: a valid socket descriptor and a one-byte buffer.
    let n = unsafe {
        libc::recv(
            conn.as_raw_fd(),
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n == 0
}

/// Posts `event` to the supervisor, waiting while its queue is full; false if the launcher is
/// exiting.
fn post(shared: &Shared, mut event: super::Event) -> bool {
    loop {
        match shared.events.try_send(event) {
            Ok(()) => return true,
            Err(mpsc::TrySendError::Disconnected(_)) => return false,
            Err(mpsc::TrySendError::Full(e)) => {
                if shared.over.load(Ordering::SeqCst) {
                    return false;
                }
                event = e;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The commands' side

/// A running application found in the runtime folder.
#[derive(Clone, Debug)]
pub struct Listed {
    /// Its launcher's control socket.
    pub socket: PathBuf,
    /// Its state when it was listed.
    pub status: Status,
}

/// A launcher that takes connections on its control socket but does not answer (stopped by
/// SIGSTOP, or stuck): it runs, but cannot be asked anything.
#[derive(Clone, Debug)]
pub struct Silent {
    /// Its control socket.
    pub socket: PathBuf,
    /// Its application's name as the socket's name carries it (see the
    /// [module](self) documentation: letters, digits, `_` and `-`, at most 32 of them).
    pub app: String,
    /// The launcher's pid, from the socket's name.
    pub pid: Option<u32>,
    /// What asking it gave.
    pub why: String,
}

impl Silent {
    /// `'APP' (pid N)`, or `'APP'` when the socket's name carries no pid.
    fn describe(&self) -> String {
        match self.pid {
            Some(pid) => format!("'{}' (pid {pid})", self.app),
            None => format!("'{}'", self.app),
        }
    }
}

/// What [`list`] found.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// The applications running, sorted by name and start.
    pub apps: Vec<Listed>,
    /// The launchers that took a connection but did not answer: running, but not answering.
    pub silent: Vec<Silent>,
    /// Sockets that could not be asked (other than those of launchers gone), with why.
    pub problems: Vec<String>,
    /// Stale sockets removed (their launcher is gone).
    pub removed: Vec<PathBuf>,
}

impl Listing {
    /// Adds what the launcher behind the socket file `name` at `path` answered to `status`.
    fn add_answer(&mut self, name: &str, path: PathBuf, answer: Result<Reply, OpError>) {
        match answer {
            Ok(Reply::Status(status)) => self.apps.push(Listed {
                socket: path,
                status,
            }),
            // It runs, and said why it cannot answer (it serves a bounded number of
            // connections): not a launcher that is gone.
            Ok(Reply::Error { message }) => {
                self.silent
                    .push(silent(name, path, format!("{BUSY}: {message}")))
            }
            Ok(other) => self
                .problems
                .push(format!("{}: unexpected answer {other:?}", path.display())),
            // It took the connection: its launcher runs, but does not answer.
            Err(e) => self.silent.push(silent(name, path, e.message)),
        }
    }
}

/// The applications this user runs on this host: asks each socket of [`runtime_dir`] for its
/// status, and removes the sockets of launchers that are gone (connection refused).
pub fn list() -> Result<Listing, OpError> {
    list_in(&runtime_dir())
}

/// [`list`] in the runtime folder `dir`.
pub fn list_in(dir: &Path) -> Result<Listing, OpError> {
    match check_runtime_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind == OpErrorKind::NotFound => return Ok(Listing::default()),
        Err(e) => return Err(e),
    }
    let entries = std::fs::read_dir(dir).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::PermissionDenied => OpErrorKind::PermissionDenied,
            _ => OpErrorKind::Failed,
        };
        OpError::new(
            kind,
            format!("cannot read the runtime folder {}: {e}", dir.display()),
        )
    })?;
    let mut listing = Listing::default();
    // Connecting is quick (a launcher's socket accepts at once, or refuses); the answer may
    // not be: each launcher is asked on a thread of its own, a group at a time, so that a
    // launcher that does not answer costs the listing IO_TIMEOUT once, not once per launcher.
    let mut asked: Vec<(String, PathBuf, UnixStream)> = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".sock") {
            continue;
        }
        let path = entry.path();
        match UnixStream::connect(&path) {
            Ok(conn) => asked.push((name, path, conn)),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // Nobody listens: its launcher is gone (a SIGKILL left it).
                if std::fs::remove_file(&path).is_ok() {
                    listing.removed.push(path);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(OpError::new(
                    OpErrorKind::PermissionDenied,
                    format!("permission denied: {}: {e}", path.display()),
                ))
            }
            Err(e) => listing.problems.push(format!("{}: {e}", path.display())),
        }
    }
    let mut asked = asked.into_iter().peekable();
    while asked.peek().is_some() {
        let group: Vec<_> = asked.by_ref().take(ASKED_AT_ONCE).collect();
        for (name, path, answer) in ask_status_at_once(group) {
            listing.add_answer(&name, path, answer);
        }
    }
    listing.apps.sort_by(|a, b| {
        (&a.status.app, a.status.started_ms).cmp(&(&b.status.app, b.status.started_ms))
    });
    Ok(listing)
}

/// How many launchers [`list_in`] asks at once, each on a thread of its own.
const ASKED_AT_ONCE: usize = 16;

/// Asks each launcher of `group` (its socket's file name, path, connection) for its status,
/// all at once: each answer, in `group`'s order. A launcher whose thread cannot be started is
/// asked on this one.
fn ask_status_at_once(
    group: Vec<(String, PathBuf, UnixStream)>,
) -> Vec<(String, PathBuf, Result<Reply, OpError>)> {
    std::thread::scope(|scope| {
        let asking: Vec<_> = group
            .into_iter()
            .map(|(name, path, conn)| {
                // The thread gets a duplicate: if it cannot start, `conn` is still here.
                let thread = conn.try_clone().ok().and_then(|dup| {
                    std::thread::Builder::new()
                        .name("iotstream list".into())
                        .spawn_scoped(scope, move || one_answer(dup, &Request::Status))
                        .ok()
                });
                (name, path, conn, thread)
            })
            .collect();
        asking
            .into_iter()
            .map(|(name, path, conn, thread)| {
                let answer = match thread {
                    Some(t) => {
                        drop(conn);
                        t.join().unwrap_or_else(|_| {
                            Err(OpError::failed("asking the launcher panicked"))
                        })
                    }
                    None => one_answer(conn, &Request::Status),
                };
                (name, path, answer)
            })
            .collect()
    })
}

/// The running application named `app` (its name in [`Graph::new`](crate::Graph::new)), run
/// `run` if given (needed when several runs of it are running).
///
/// An application whose launcher does not answer is not said not to run: that is an error
/// of its own, naming the launcher's pid and socket.
pub fn find(app: &str, run: Option<&str>) -> Result<Listed, OpError> {
    let listing = list()?;
    pick(listing.apps, app, run).map_err(|e| match e.kind {
        OpErrorKind::NotFound => silent_instead(e, &listing.silent, app),
        _ => e,
    })
}

/// `not_found` (no answering launcher of `app`), unless launchers of `app` were found that do
/// not answer: then an error naming them.
fn silent_instead(not_found: OpError, silent: &[Silent], app: &str) -> OpError {
    let named: Vec<String> = silent
        .iter()
        .filter(|s| s.app == socket_app(app))
        .map(|s| {
            format!(
                "the launcher of {} does not answer on {}: {}",
                s.describe(),
                s.socket.display(),
                s.why
            )
        })
        .collect();
    if named.is_empty() {
        return not_found;
    }
    let busy = silent.iter().all(|s| s.why.starts_with(BUSY));
    OpError::failed(if busy {
        format!("{}; it runs", named.join("; "))
    } else {
        format!(
            "{}; it runs, but cannot be asked anything (stopped, by SIGSTOP say, or stuck)",
            named.join("; ")
        )
    })
}

/// How [`Silent::why`] begins for a launcher that answered it cannot take the connection.
const BUSY: &str = "it refused the connection";

/// A launcher that runs but gave no status, from its socket's file `name` at `path`.
fn silent(name: &str, path: PathBuf, why: String) -> Silent {
    let stem = name.trim_end_matches(".sock");
    let (app, pid) = match stem.rsplit_once('.') {
        Some((app, pid)) => (app.to_string(), pid.parse().ok()),
        None => (stem.to_string(), None),
    };
    Silent {
        socket: path,
        app,
        pid,
        why,
    }
}

/// [`find`] among `apps`.
fn pick(apps: Vec<Listed>, app: &str, run: Option<&str>) -> Result<Listed, OpError> {
    let describe = |l: &Listed| format!("'{}' (run {})", l.status.app, l.status.run);
    if apps.is_empty() {
        return Err(OpError::new(
            OpErrorKind::NotFound,
            format!("no application '{app}' is running: no iotstream application is running"),
        ));
    }
    let named: Vec<&Listed> = apps.iter().filter(|l| l.status.app == app).collect();
    if named.is_empty() {
        return Err(OpError::new(
            OpErrorKind::NotFound,
            format!(
                "no application '{app}' is running; running: {}",
                apps.iter().map(describe).collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    // Each run with its host when the application has several: two hosts' launchers may
    // share a machine (a test bench), and the ids alone do not say which is which.
    let runs = |ls: &[&Listed]| {
        ls.iter()
            .map(|l| match l.status.hosts.len() {
                0 | 1 => l.status.run.clone(),
                _ => format!("{} (host '{}')", l.status.run, l.status.host),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let chosen: Vec<&Listed> = match run {
        Some(r) => named
            .iter()
            .copied()
            .filter(|l| l.status.run == r)
            .collect(),
        None => named.clone(),
    };
    match (chosen.len(), run) {
        (1, _) => Ok(chosen[0].clone()),
        (0, Some(r)) => Err(OpError::new(
            OpErrorKind::NotFound,
            format!(
                "application '{app}' has no run {r}; its runs: {}",
                runs(&named)
            ),
        )),
        _ => Err(OpError::new(
            OpErrorKind::Ambiguous,
            format!(
                "{} runs of application '{app}' are running: {}; say which with --run ID",
                chosen.len(),
                runs(&chosen)
            ),
        )),
    }
}

/// Connects to `socket` (a running launcher's).
fn connect(socket: &Path) -> Result<UnixStream, OpError> {
    UnixStream::connect(socket).map_err(|e| {
        let kind = match e.kind() {
            std::io::ErrorKind::PermissionDenied => OpErrorKind::PermissionDenied,
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
                OpErrorKind::NotFound
            }
            _ => OpErrorKind::Failed,
        };
        let why = match kind {
            OpErrorKind::PermissionDenied => "permission denied",
            OpErrorKind::NotFound => "its launcher has exited",
            _ => "cannot connect",
        };
        OpError::new(kind, format!("{why}: {}: {e}", socket.display()))
    })
}

/// Sends `request` on `conn` and reads one answer.
fn one_answer(conn: UnixStream, request: &Request) -> Result<Reply, OpError> {
    let mut answer = None;
    exchange(conn, request, IO_TIMEOUT, |r| {
        answer = Some(r);
        false
    })?;
    answer.ok_or_else(|| OpError::failed("the launcher closed the connection without answering"))
}

/// Sends `request` on `conn` and gives each answer line to `on_reply` until it returns false
/// or the launcher closes the connection; each line must come within `wait` (`None`: no bound).
fn exchange(
    conn: UnixStream,
    request: &Request,
    wait: impl Into<Option<Duration>>,
    mut on_reply: impl FnMut(Reply) -> bool,
) -> Result<(), OpError> {
    let wait = wait.into();
    let lost = |e: std::io::Error| match (e.kind(), wait) {
        // The read timed out.
        (std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut, Some(w)) => {
            OpError::failed(format!("no answer within {} ms", w.as_millis()))
        }
        _ => OpError::failed(format!("the launcher's control socket: {e}")),
    };
    conn.set_read_timeout(wait).map_err(lost)?;
    conn.set_write_timeout(Some(IO_TIMEOUT)).map_err(lost)?;
    let mut line = serde_json::to_string(request).map_err(|e| OpError::failed(e.to_string()))?;
    line.push('\n');
    // A launcher that cannot serve the connection (it serves MAX_CONNECTIONS at most) answers
    // why and closes it without reading: the request then meets a closed socket (EPIPE), but
    // the answer is there to read. Only a write error with nothing to read is the error.
    let written = (&conn).write_all(line.as_bytes());
    let mut reader = BufReader::new(conn);
    let mut buf = Vec::new();
    if let Err(e) = written {
        return match read_line_bounded(&mut reader, &mut buf, MAX_REPLY) {
            Ok(LineRead::Line) => match serde_json::from_slice::<Reply>(&buf) {
                Ok(reply) => {
                    on_reply(reply);
                    Ok(())
                }
                Err(_) => Err(lost(e)),
            },
            _ => Err(lost(e)),
        };
    }
    loop {
        match read_line_bounded(&mut reader, &mut buf, MAX_REPLY).map_err(lost)? {
            // A reply cut off mid-way: the launcher went away.
            LineRead::End | LineRead::Unterminated => return Ok(()),
            LineRead::TooLong => {
                return Err(OpError::failed(format!(
                    "the launcher answered a line over {MAX_REPLY} bytes"
                )))
            }
            LineRead::Line => {}
        }
        let reply: Reply = serde_json::from_slice(&buf).map_err(|e| {
            OpError::failed(format!("the launcher's answer is not understood: {e}"))
        })?;
        if !on_reply(reply) {
            return Ok(());
        }
    }
}

/// How a `stop` ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stopped {
    /// What the launcher said when asked.
    pub message: String,
    /// Its exit code, if it said it before exiting.
    pub exit_code: Option<i32>,
}

impl Listed {
    /// Sends `request` and gives every answer line to `on_reply` until it returns false or the
    /// launcher closes the connection (no bound on the wait: for a `logs` with `follow`).
    pub fn request(
        &self,
        request: &Request,
        on_reply: impl FnMut(Reply) -> bool,
    ) -> Result<(), OpError> {
        exchange(connect(&self.socket)?, request, None, on_reply)
    }

    /// The application's state with each process's latest counters.
    pub fn metrics(&self) -> Result<Status, OpError> {
        match one_answer(connect(&self.socket)?, &Request::Metrics)? {
            Reply::Metrics(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// The live view now (see [`Request::View`]).
    pub fn view(&self) -> Result<AppMetrics, OpError> {
        match one_answer(connect(&self.socket)?, &Request::View)? {
            Reply::View(v) => Ok(*v),
            other => Err(unexpected(other)),
        }
    }

    /// The application's graph as placed.
    pub fn graph(&self) -> Result<GraphInfo, OpError> {
        match one_answer(connect(&self.socket)?, &Request::Graph)? {
            Reply::Graph(g) => Ok(g),
            other => Err(unexpected(other)),
        }
    }

    /// Stops the application (a drain; `now`: kills it), gives the launcher's lines to
    /// `on_line` as it prints them, and returns once the launcher has exited.
    pub fn stop(&self, now: bool, mut on_line: impl FnMut(&LogLine)) -> Result<Stopped, OpError> {
        let mut stopped = Stopped {
            message: String::new(),
            exit_code: None,
        };
        let mut refused = None;
        let conn = connect(&self.socket)?;
        // The launcher's start, read while it surely runs (it has just taken the connection):
        // a process given its pid after it exits is not mistaken for it below.
        let pid = self.status.launcher_pid;
        let started = crate::transport::process::start_stamp(pid).unwrap_or(0);
        exchange(
            conn,
            &Request::Stop { now },
            LONG_WAIT,
            |reply| match reply {
                Reply::Ok { message } => {
                    stopped.message = message;
                    true
                }
                Reply::Line(l) => {
                    on_line(&l);
                    true
                }
                Reply::End { exit_code, .. } => {
                    stopped.exit_code = exit_code;
                    false
                }
                Reply::Error { message } => {
                    refused = Some(message);
                    false
                }
                _ => true,
            },
        )?;
        if let Some(message) = refused {
            return Err(OpError::failed(message));
        }
        // The socket closes just before the launcher exits: wait for the process itself
        // (bounded: it has nothing left to do but return from `main`).
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while crate::transport::process::alive_since(pid, started) {
            if std::time::Instant::now() > deadline {
                return Err(OpError::failed(format!(
                    "the launcher (pid {pid}) said it stopped, but is still running"
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(stopped)
    }

    /// Gives the kept output lines (of `process` only, if given) to `on_line`, in arrival
    /// order; with `follow`, then new lines as they come until the application ends.
    pub fn logs(
        &self,
        process: Option<&str>,
        follow: bool,
        mut on_line: impl FnMut(&LogLine),
    ) -> Result<Option<String>, OpError> {
        let mut refused = None;
        let mut end = None;
        let request = Request::Logs {
            process: process.map(str::to_string),
            follow,
        };
        let wait = if follow { None } else { Some(IO_TIMEOUT) };
        exchange(
            connect(&self.socket)?,
            &request,
            wait,
            |reply| match reply {
                Reply::Line(l) => {
                    on_line(&l);
                    true
                }
                Reply::End { message, .. } => {
                    end = Some(message);
                    false
                }
                Reply::Error { message } => {
                    refused = Some(message);
                    false
                }
                _ => true,
            },
        )?;
        match refused {
            Some(message) => Err(OpError::new(OpErrorKind::NotFound, message)),
            None => Ok(end.filter(|m| !m.is_empty())),
        }
    }

    /// `process` is one of this launcher's processes (as listed); an error naming them if
    /// not, as the launcher's own answer to a restart of it would.
    pub fn check_process(&self, process: &str) -> Result<(), OpError> {
        let names: Vec<String> = self
            .status
            .processes
            .iter()
            .map(|p| p.process.clone())
            .collect();
        if names.iter().any(|n| n == process) {
            return Ok(());
        }
        Err(OpError::new(
            OpErrorKind::NotFound,
            self.status.not_here(process),
        ))
    }

    /// Kills `process` and starts it again; returns once it runs again (what the launcher
    /// said).
    pub fn restart(&self, process: &str) -> Result<String, OpError> {
        let request = Request::Restart {
            process: process.to_string(),
        };
        let mut answer = None;
        exchange(connect(&self.socket)?, &request, LONG_WAIT, |r| {
            answer = Some(r);
            false
        })?;
        match answer {
            Some(Reply::Ok { message }) => Ok(message),
            Some(Reply::Error { message }) => Err(OpError::failed(message)),
            Some(other) => Err(unexpected(other)),
            None => Err(OpError::failed(
                "the launcher closed the connection without answering (it exited?)",
            )),
        }
    }
}

fn unexpected(reply: Reply) -> OpError {
    match reply {
        Reply::Error { message } => OpError::failed(message),
        other => OpError::failed(format!("unexpected answer from the launcher: {other:?}")),
    }
}

/// `iotstream list`'s table: a header, then one line per application.
pub fn render_list(apps: &[Listed], now_ms: u64) -> String {
    let mut rows = vec![[
        "APP".to_string(),
        "RUN".to_string(),
        "PROCESSES".to_string(),
        "HOSTS".to_string(),
        "UP".to_string(),
        "STATUS".to_string(),
    ]];
    for l in apps {
        let s = &l.status;
        let (running, total) = s.running();
        let hosts = match s.hosts.len() {
            0 | 1 => s.host.clone(),
            n => format!("{} (1 of {n})", s.host),
        };
        rows.push([
            s.app.clone(),
            s.run.clone(),
            format!("{running}/{total}"),
            hosts,
            human_duration(now_ms.saturating_sub(s.started_ms) / 1000),
            app_status(s),
        ]);
    }
    let widths: Vec<usize> = (0..6)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (c, cell) in r.iter().enumerate() {
            if c + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[c]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The application's status in a few words: its phase, and its processes that are not well.
fn app_status(s: &Status) -> String {
    let mut text = match s.phase {
        Phase::Starting => "starting",
        Phase::Running => "running",
        Phase::Draining => "draining",
        Phase::Ended => "ended",
    }
    .to_string();
    for (status, word) in [
        (ProcessStatus::Restarting, "restarting"),
        (ProcessStatus::Failed, "failed"),
    ] {
        let n = s.processes.iter().filter(|p| p.status == status).count();
        if n > 0 {
            text.push_str(&format!(", {n} {word}"));
        }
    }
    text
}

/// `s` seconds as `45s`, `3m12s`, `2h05m`, `3d04h`.
pub fn human_duration(s: u64) -> String {
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_runtime_folder_falls_back_to_tmp_unless_xdg_names_a_folder() {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let xdg = |v: &std::path::Path| super::runtime_dir_for(Some(v.as_os_str()), 7);
        assert_eq!(xdg(dir.path()), dir.path().join("iotstream"));
        let tmp = std::path::PathBuf::from("/tmp/iotstream-7");
        assert_eq!(
            xdg(&dir.path().join("gone")),
            tmp,
            "a folder that does not exist"
        );
        assert_eq!(xdg(std::path::Path::new("relative")), tmp);
        assert_eq!(super::runtime_dir_for(None, 7), tmp);
    }

    use super::*;
    use std::io::BufRead;
    use std::sync::{Condvar, Mutex};

    #[test]
    fn the_runtime_folder_must_be_ours_and_closed_to_others() {
        let me = 1000;
        let dir = Path::new("/run/user/1000/iotstream");
        assert!(check_owner_and_mode(dir, true, me, 0o40700, me).is_ok());
        assert!(check_owner_and_mode(dir, true, me, 0o40500, me).is_ok());
        for mode in [0o40750, 0o40705, 0o40777, 0o40710] {
            let e = check_owner_and_mode(dir, true, me, mode, me).unwrap_err();
            assert_eq!(e.kind, OpErrorKind::PermissionDenied);
            assert!(e.message.contains("other users may use it"), "{e}");
            assert!(
                e.message.contains(&format!("mode {:o}", mode & 0o777)),
                "{e}"
            );
        }
        let e = check_owner_and_mode(dir, true, 0, 0o40700, me).unwrap_err();
        assert!(
            e.message.starts_with("permission denied: the runtime folder /run/user/1000/iotstream belongs to uid 0, not to you (uid 1000)"),
            "{e}"
        );
        let e = check_owner_and_mode(dir, false, me, 0o120777, me).unwrap_err();
        assert!(e.message.contains("is not a folder"), "{e}");
    }

    #[test]
    fn real_folders_are_made_private_and_unsafe_ones_refused() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("iotstream");
        make_runtime_dir(&dir).unwrap();
        let mode = std::fs::metadata(&dir).unwrap().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Made already: used as it is.
        make_runtime_dir(&dir).unwrap();
        // Opened to others: refused, left as it is.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = make_runtime_dir(&dir).unwrap_err();
        assert_eq!(e.kind, OpErrorKind::PermissionDenied);
        assert_eq!(std::fs::metadata(&dir).unwrap().mode() & 0o777, 0o755);
        // A symbolic link to a good folder: refused.
        let good = base.path().join("good");
        make_runtime_dir(&good).unwrap();
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&good, &link).unwrap();
        assert!(make_runtime_dir(&link)
            .unwrap_err()
            .message
            .contains("not a folder"));
        // Another user's (only root can make one here).
        if my_uid() == 0 {
            let theirs = base.path().join("theirs");
            make_runtime_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let e = make_runtime_dir(&theirs).unwrap_err();
            assert!(e.message.contains("belongs to uid 65534"), "{e}");
        } else {
            eprintln!("not root: the other-owner case is checked on stat values only");
        }
        // Missing: NotFound for a command (nothing is running).
        let e = check_runtime_dir(&base.path().join("none")).unwrap_err();
        assert_eq!(e.kind, OpErrorKind::NotFound);
        assert!(list_in(&base.path().join("none")).unwrap().apps.is_empty());
    }

    #[test]
    fn the_peer_check_compares_uids() {
        let (a, _b) = UnixStream::pair().unwrap();
        let me = my_uid();
        assert!(peer_is(&a, me).is_ok());
        let e = peer_is(&a, me.wrapping_add(1)).unwrap_err();
        assert!(e.contains(&format!("runs as uid {me}")), "{e}");
    }

    #[test]
    fn lines_are_read_bounded_and_long_ones_skipped() {
        let long = "y".repeat(100);
        let text = format!("short\n{long}\nnext\nunfinished");
        let mut r = BufReader::with_capacity(7, text.as_bytes());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        loop {
            match read_line_bounded(&mut r, &mut buf, 10).unwrap() {
                LineRead::Line => got.push(String::from_utf8(buf.clone()).unwrap()),
                LineRead::TooLong => got.push("<too long>".into()),
                LineRead::Unterminated => {
                    got.push(format!("{} (unterminated)", String::from_utf8_lossy(&buf)))
                }
                LineRead::End => break,
            }
            assert!(buf.len() <= 10);
        }
        assert_eq!(
            got,
            ["short", "<too long>", "next", "unfinished (unterminated)"]
        );
        // A long last line without its newline is skipped, as any long line.
        let text = format!("ok\n{long}");
        let mut r = BufReader::with_capacity(7, text.as_bytes());
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 10).unwrap(),
            LineRead::Line
        );
        assert_eq!(
            read_line_bounded(&mut r, &mut buf, 10).unwrap(),
            LineRead::End
        );
    }

    #[test]
    fn requests_read_as_documented() {
        let parse = |s: &str| serde_json::from_str::<Request>(s).unwrap();
        assert_eq!(parse(r#"{"cmd":"status"}"#), Request::Status);
        assert_eq!(parse(r#"{"cmd":"stop"}"#), Request::Stop { now: false });
        assert_eq!(
            parse(r#"{"cmd":"stop","now":true}"#),
            Request::Stop { now: true }
        );
        assert_eq!(
            parse(r#"{"cmd":"logs","process":"work","follow":true}"#),
            Request::Logs {
                process: Some("work".into()),
                follow: true
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"logs"}"#),
            Request::Logs {
                process: None,
                follow: false
            }
        );
        assert_eq!(
            parse(r#"{"cmd":"restart","process":"sink"}"#),
            Request::Restart {
                process: "sink".into()
            }
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"restart"}"#).is_err());
        let ok = serde_json::to_string(&Reply::Ok {
            message: "draining".into(),
        })
        .unwrap();
        assert_eq!(ok, r#"{"ok":{"message":"draining"}}"#);
    }

    fn listed(app: &str, run: &str) -> Listed {
        Listed {
            socket: PathBuf::from(format!("/x/{app}.{run}.sock")),
            status: Status {
                app: app.into(),
                run: run.into(),
                ..Status::default()
            },
        }
    }

    #[test]
    fn a_launcher_that_serves_no_more_connections_is_listed_as_running_with_its_reason() {
        // A launcher at MAX_CONNECTIONS answers why and closes at once, without reading the
        // request: `list` (and so `stop`, `restart`...) must show it as running, with its
        // words, not as gone ("no application is running") nor as a broken pipe.
        let dir = std::env::temp_dir().join(format!("iotstream-busy-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let path = dir.join("busy_app.4242.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let busy = format!(
            "{{\"error\":{{\"message\":\"the launcher serves {MAX_CONNECTIONS} connections at most: try again\"}}}}\n"
        );
        let serving = std::thread::spawn(move || {
            for _ in 0..20 {
                let (mut c, _) = listener.accept().unwrap();
                let _ = c.write_all(busy.as_bytes());
            }
        });
        for _ in 0..20 {
            let listing = list_in(&dir).unwrap();
            assert!(
                listing.apps.is_empty() && listing.problems.is_empty(),
                "{listing:?}"
            );
            assert_eq!(listing.silent.len(), 1, "{listing:?}");
            let s = &listing.silent[0];
            assert_eq!((s.app.as_str(), s.pid), ("busy_app", Some(4242)));
            assert!(
                s.why.contains(&format!(
                    "serves {MAX_CONNECTIONS} connections at most: try again"
                )),
                "{}",
                s.why
            );
        }
        serving.join().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn launchers_are_asked_at_once_so_a_silent_one_does_not_hold_up_the_others() {
        // Three launchers, each of which answers only once all three were asked: asked one
        // after the other, the first waits for the second until the ask times out, and so
        // on (two of them listed as silent, after twice IO_TIMEOUT); asked at once, all three
        // answer.
        const LAUNCHERS: usize = 3;
        let dir = std::env::temp_dir().join(format!("iotstream-at-once-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let asked = Arc::new((Mutex::new(0usize), Condvar::new()));
        let launchers: Vec<_> = (0..LAUNCHERS)
            .map(|i| {
                let listener =
                    UnixListener::bind(dir.join(format!("app{i}.{}.sock", 100 + i))).unwrap();
                let asked = Arc::clone(&asked);
                std::thread::spawn(move || {
                    let (conn, _) = listener.accept().unwrap();
                    let mut request = String::new();
                    let _ = BufReader::new(&conn).read_line(&mut request);
                    let (count, all) = &*asked;
                    let mut n = count.lock().unwrap();
                    *n += 1;
                    all.notify_all();
                    let bound = Duration::from_secs(60);
                    let (n, _) = all
                        .wait_timeout_while(n, bound, |n| *n < LAUNCHERS)
                        .unwrap();
                    drop(n);
                    let status = Status {
                        app: format!("app{i}"),
                        run: format!("{i}"),
                        ..Status::default()
                    };
                    let mut line = serde_json::to_string(&Reply::Status(status)).unwrap();
                    line.push('\n');
                    let _ = (&conn).write_all(line.as_bytes());
                })
            })
            .collect();
        let listing = list_in(&dir).unwrap();
        for l in launchers {
            l.join().unwrap();
        }
        std::fs::remove_dir_all(&dir).unwrap();
        let apps: Vec<&str> = listing.apps.iter().map(|l| l.status.app.as_str()).collect();
        assert_eq!(apps, ["app0", "app1", "app2"], "{listing:?}");
        assert!(
            listing.silent.is_empty() && listing.problems.is_empty(),
            "{listing:?}"
        );
    }

    #[test]
    fn an_application_is_found_by_name_and_run() {
        let apps = vec![
            listed("quake", "1-a"),
            listed("quake", "2-b"),
            listed("logs", "3-c"),
        ];
        assert_eq!(pick(apps.clone(), "logs", None).unwrap().status.run, "3-c");
        assert_eq!(
            pick(apps.clone(), "quake", Some("2-b")).unwrap().status.run,
            "2-b"
        );
        let e = pick(apps.clone(), "quake", None).unwrap_err();
        assert_eq!(e.kind, OpErrorKind::Ambiguous);
        assert!(
            e.message.contains("1-a, 2-b") && e.message.contains("--run"),
            "{e}"
        );
        let e = pick(apps.clone(), "quak", None).unwrap_err();
        assert_eq!(e.kind, OpErrorKind::NotFound);
        assert!(
            e.message.contains("'quake' (run 1-a)") && e.message.contains("'logs' (run 3-c)"),
            "{e}"
        );
        let e = pick(apps, "quake", Some("9-z")).unwrap_err();
        assert!(e.message.contains("no run 9-z"), "{e}");
        // The two hosts' launchers of one application on one machine: each run says its host.
        let on = |run: &str, host: &str| {
            let mut l = listed("plant", run);
            l.status.host = host.into();
            l.status.hosts = vec!["pi".into(), "cloud".into()];
            l
        };
        let e = pick(vec![on("4-d", "pi"), on("5-e", "cloud")], "plant", None).unwrap_err();
        assert!(
            e.message.contains("4-d (host 'pi'), 5-e (host 'cloud')"),
            "{e}"
        );
        // A process of the other host: which host runs it, not only this host's processes.
        let mut pi = on("4-d", "pi");
        pi.status.elsewhere = vec![("sink".into(), "cloud".into())];
        let e = pi.check_process("sink").unwrap_err();
        assert!(
            e.message.contains(
                "process 'sink' of 'plant' runs on host 'cloud', not on this host ('pi')"
            ),
            "{e}"
        );
        let e = pi.check_process("nowhere").unwrap_err();
        assert!(e.message.contains("no process 'nowhere'"), "{e}");
        let e = pick(Vec::new(), "quake", None).unwrap_err();
        assert!(
            e.message.contains("no iotstream application is running"),
            "{e}"
        );
    }

    #[test]
    fn the_list_is_a_table_with_a_header() {
        let mut a = listed("quake_detector", "123-abc");
        a.status.host = "local".into();
        a.status.hosts = vec!["local".into()];
        a.status.phase = Phase::Running;
        a.status.started_ms = 1_000;
        a.status.processes = vec![
            crate::launcher::board::ProcessState {
                status: ProcessStatus::Running,
                ..Default::default()
            },
            crate::launcher::board::ProcessState {
                status: ProcessStatus::Restarting,
                ..Default::default()
            },
        ];
        let text = render_list(&[a], 66_000);
        assert_eq!(
            text,
            "APP             RUN      PROCESSES  HOSTS  UP     STATUS\n\
             quake_detector  123-abc  1/2        local  1m05s  running, 1 restarting\n"
        );
        assert_eq!(human_duration(7_500), "2h05m");
        assert_eq!(human_duration(3 * 86_400 + 4 * 3_600), "3d04h");
    }

    #[test]
    fn socket_names_are_safe_and_short() {
        assert_eq!(
            socket_name("quake detector/1", 42),
            "quake_detector_1.42.sock"
        );
        assert_eq!(socket_name(&"a".repeat(100), 7).len(), 32 + ".7.sock".len());
    }
}
