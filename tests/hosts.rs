//! Applications across hosts, end to end: one `iotstream` launcher per host, each run as
//! `iotstream run APP --deploy FILE --host NAME` with the same deployment file, in Linux network
//! namespaces joined by a veth pair (`tests/support/netns.rs`; distinct loopback addresses where
//! namespaces cannot be made, said on stderr). Real processes, real sockets, real signals.
//!
//! Like `tests/launcher.rs`, this test has its own `main` (`harness = false`): run as
//! `hosts app NAME ARGS…` it *is* the application NAME, started by the launchers. Run without
//! arguments it runs every scenario (or those whose name contains the first argument) on a
//! thread of its own with a deadline, and prints `N passed, M failed`.
//!
//! # The two hosts
//!
//! Host 0 is `sensorbox` (the source, process `main`), host 1 is `cloudbox` (the sink, process
//! `sink`, or the quake detector's `detector` and `alerts`). Each host has a folder of its own
//! (`<scratch>/<host>/`) holding its copy of the deployment file (the same text on both: the
//! handshake compares its digest), its secret file (mode 600), its TLS files and the sink's
//! output (`out.txt`, named by `$OUT`), as on two machines.
//!
//! # Clean-up, checked
//!
//! Every namespace, scratch folder and launcher a scenario makes is registered. When a scenario
//! ends, passed or failed, its guards have removed them (launchers killed with every process of
//! their run, their shared-memory objects removed, namespaces deleted, folders removed), and the
//! runner checks that nothing registered is left: a scenario that leaves anything fails. Waits
//! inside a scenario end at its deadline; a scenario still running well past it is abandoned,
//! the runner removes what it registered, and the test exits.

#[path = "support/netns.rs"]
mod netns;

#[path = "support/nats.rs"]
mod nats;

// The detector of the example; this file runs it, not the example's `main` nor its arguments.
// (The example allows dead code itself under cfg(test), which clippy sets here.)
#[cfg_attr(not(test), allow(dead_code))]
#[path = "../examples/quake_detector.rs"]
mod quake;

use std::cell::Cell;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use iotstream::observe::{AgentView, AppMetrics, LinkView, ProcessStatus, ProcessView};
use iotstream::{Agent, AgentError, Graph, Inputs, LinkEnds, Outputs};
use netns::Hosts;

// ---------------------------------------------------------------------------------------------
// The applications

fn app(name: &str, args: &[String]) -> Result<(), iotstream::Error> {
    let arg = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(0) };
    match name {
        // N PACE [STEP_MS]: indices 0..N, PACE per 5 ms step (0: full speed) → record each
        // index to $OUT, sleeping STEP_MS per step (default 0)
        "indexed" => indexed("hosts_indexed", arg(0), arg(1), arg(2)),
        // PACE: indices until stopped, PACE per 5 ms step → record
        "endless" => indexed("hosts_endless", u64::MAX, arg(0).max(1), 0),
        // the quake detector as the example builds it; `single`: in one process; `live`: in
        // its processes, paced (see `live_quakes`)
        "quake" => {
            let single = args.first().is_some_and(|a| a == "single");
            let cfg = match args.first().is_some_and(|a| a == "live") {
                true => live_quakes(),
                false => quake::Config::default(),
            };
            quake::application(&cfg, single).run().map(|_| ())
        }
        // `single`: in one process; otherwise the windows run in process `sink`
        "event" => event_windows(args.first().is_some_and(|a| a == "single")),
        other => panic!("no application named {other}"),
    }
}

/// The quake detector's recording for watching it run: paced in real time at 2 000 samples/s
/// for five minutes, short windows (STA 50 ms, LTA 1 s) and a quake every 2.5 s, so that every
/// agent has something to do every few seconds from the start.
fn live_quakes() -> quake::Config {
    let quakes = (0..120)
        .map(|k| quake::Quake {
            start_s: 2.0 + 2.5 * f64::from(k),
            amplitude: 20.0,
            decay_s: 0.2,
            freq_hz: 8.0,
            phase: 0.0,
        })
        .collect();
    quake::Config {
        sample_rate: 2000.0,
        duration_s: 300.0,
        quakes,
        sta_s: 0.05,
        lta_s: 1.0,
        realtime: true,
        ..quake::Config::default()
    }
}

/// Timestamped readings of 50 keys, out of order within 40 ms and a few beyond, through
/// `watermarks(bounded(50))` in process `main`, then keyed tumbling windows of 100 ms in
/// process `sink` (on the other host: the marks cross the TCP link); the windows' process
/// prints every window (`WINDOW key start end count firing`) and the late count (`LATE n`).
fn event_windows(single: bool) -> Result<(), iotstream::Error> {
    use iotstream::ops::event::Watermarks;
    use iotstream::ops::event_window::{EventWindow, KeyedWindow};
    let mut g = Graph::new("hosts_event");
    let n = 60_000u64;
    let readings: Vec<(u64, u32)> = (0..n)
        .map(|i| {
            // In order, but every 10th reading 1 to 39 ms late, every 1000th 200 ms late.
            let t = i / 10;
            let t = if i % 1000 == 999 {
                t.saturating_sub(200)
            } else if i % 10 == 9 {
                t.saturating_sub(1 + i % 39)
            } else {
                t
            };
            (t, (i % 50) as u32)
        })
        .collect();
    let s = g.source_iter("readings", readings);
    let timed = g.watermarks("timed", &s, Watermarks::bounded(50));
    let w = g.keyed_event_window(
        "windows",
        &timed,
        |e: &(u64, u32)| e.1,
        EventWindow::tumbling(100),
        |xs: &[(u64, u32)]| xs.len() as u64,
    );
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&lines);
    g.for_each("print", &w.windows, move |k: &KeyedWindow<u32, u64>| {
        out.lock().unwrap().push(format!(
            "WINDOW {} {} {} {} {:?}",
            k.key, k.start, k.end, k.value, k.firing
        ));
    });
    if !single {
        g.place_in_process("windows", "sink");
        g.place_in_process("print", "sink");
    }
    let in_sink = single || std::env::var("IOTSTREAM_PROCESS").as_deref() == Ok("sink");
    g.run()?;
    if in_sink {
        for l in lines.lock().unwrap().iter() {
            println!("{l}");
        }
        println!("LATE {}", w.late_count.get());
    }
    Ok(())
}

/// `numbers` (0..n, `pace` per step and a 5 ms sleep per step when `pace` > 0) → `record`
/// (sleeping `step_ms` per step); the process running `numbers` prints `EMITTED <count>` at
/// the end.
fn indexed(app: &str, n: u64, pace: u64, step_ms: u64) -> Result<(), iotstream::Error> {
    let mut g = Graph::new(app);
    let mut next = 0u64;
    let numbers = g.source(
        "numbers",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            let take = if pace > 0 {
                pace.min(max as u64)
            } else {
                max as u64
            };
            let end = next.saturating_add(take).min(n);
            out.extend(next..end);
            next = end;
            if pace > 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(next < n)
        },
    );
    let input = g.add_agent("record", |p| {
        let input = p.input::<u64>("in");
        let file = open_out();
        let agent = Record {
            input,
            file,
            count: 0,
            step: Duration::from_millis(step_ms),
        };
        (agent, input)
    });
    g.connect(&numbers, &input);
    let metrics = g.run()?;
    if let Some(s) = metrics.stream("numbers.out") {
        println!("EMITTED {}", s.elements);
    }
    Ok(())
}

/// Opens `$OUT` for appending. A SIGKILL in the middle of a write may have left half a line:
/// it is ended with a mark (`#torn`), so it stays a line of its own (its elements were not
/// acknowledged: they come again).
fn open_out() -> std::fs::File {
    let path = std::env::var_os("OUT").expect("$OUT names the output file");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(path)
        .expect("open $OUT");
    let mut last = [0u8; 1];
    if f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n' {
        f.write_all(b"#torn\n").expect("write $OUT");
    }
    f
}

/// Writes the index of every element as a line to `$OUT`, one write per step, before it
/// consumes them (so what it consumed is in the file), after sleeping `step`; prints
/// `RESULT count=<n>` at the end.
struct Record {
    input: iotstream::Input<u64>,
    file: std::fs::File,
    count: u64,
    step: Duration,
}

impl Agent for Record {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        if !self.step.is_zero() {
            std::thread::sleep(self.step);
        }
        let xs = i.slice(&self.input);
        let mut text = String::with_capacity(xs.len() * 8);
        for x in xs {
            text.push_str(&x.to_string());
            text.push('\n');
        }
        self.file.write_all(text.as_bytes())?;
        self.count += xs.len() as u64;
        i.consume_all(&self.input);
        Ok(())
    }

    fn finish(&mut self, _o: &mut Outputs) -> Result<(), AgentError> {
        println!("RESULT count={}", self.count);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// Deadlines and the registry of what scenarios make

thread_local! {
    /// The running scenario's deadline (set on its thread by the runner).
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// The running scenario's deadline; two minutes from now outside a scenario.
fn deadline() -> Instant {
    DEADLINE
        .with(Cell::get)
        .unwrap_or_else(|| Instant::now() + Duration::from_secs(120))
}

/// What scenarios made and must have removed when they end.
struct Registry {
    /// Pids of the launchers started (each names its run: `IOTSTREAM_RUN=<pid>-...`).
    launchers: Vec<u32>,
    /// Scratch folders.
    dirs: Vec<PathBuf>,
    /// Network namespaces.
    namespaces: Vec<String>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    launchers: Vec::new(),
    dirs: Vec::new(),
    namespaces: Vec::new(),
});

fn registry() -> std::sync::MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// What of `reg` is still there: each a sentence.
fn leftovers(reg: &Registry) -> Vec<String> {
    let mut left = Vec::new();
    for d in &reg.dirs {
        if d.exists() {
            left.push(format!("folder {}", d.display()));
        }
    }
    for ns in &reg.namespaces {
        if Path::new("/run/netns").join(ns).exists() {
            left.push(format!("network namespace {ns}"));
        }
    }
    for &pid in &reg.launchers {
        if is_child_alive(pid) {
            left.push(format!("launcher {pid}"));
        }
        let pids = run_pids(pid);
        if !pids.is_empty() {
            left.push(format!("processes {pids:?} of launcher {pid}'s run"));
        }
        let segs = segments_of(pid);
        if !segs.is_empty() {
            left.push(format!("shared-memory objects {segs:?}"));
        }
    }
    left
}

/// Removes by force what `reg` names (a scenario abandoned at its deadline).
fn force_clean(reg: &Registry) {
    for &pid in &reg.launchers {
        if is_child_alive(pid) {
            kill(pid, libc::SIGKILL);
        }
        for p in run_pids(pid) {
            kill(p, libc::SIGKILL);
        }
    }
    std::thread::sleep(Duration::from_millis(200));
    for &pid in &reg.launchers {
        remove_segments_of(pid);
    }
    for ns in &reg.namespaces {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
    for d in &reg.dirs {
        let _ = std::fs::remove_dir_all(d);
    }
}

/// Whether `pid` is a live (not zombie) child of this test process.
fn is_child_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (comm) state ppid ...": comm may hold spaces, so read after the last ')'.
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("");
    let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    ppid == std::process::id() && state != "Z"
}

fn kill(pid: u32, signal: i32) {
    // SAFETY: kill has no memory preconditions; a stale pid gives ESRCH.
    unsafe {
        libc::kill(pid as i32, signal);
    }
}

/// Pids of the processes of the run owned by launcher `owner` (their `IOTSTREAM_RUN`).
fn run_pids(owner: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    let prefix = format!("IOTSTREAM_RUN={owner}-");
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        if env
            .split(|b| *b == 0)
            .any(|v| v.starts_with(prefix.as_bytes()))
        {
            out.push(pid);
        }
    }
    out
}

/// The shared-memory objects of runs owned by `owner`: `iotstream.<app>.<owner>-<nonce>.<part>`.
fn segments_of(owner: u32) -> Vec<String> {
    let marker = format!(".{owner}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("iotstream.") && n.contains(&marker))
                .collect()
        })
        .unwrap_or_default()
}

fn remove_segments_of(owner: u32) {
    for s in segments_of(owner) {
        let _ = std::fs::remove_file(format!("/dev/shm/{s}"));
    }
}

// ---------------------------------------------------------------------------------------------
// Scratch folders, hosts, launchers

fn launcher_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iotstream"))
}

fn own_exe() -> PathBuf {
    std::env::current_exe().expect("own path")
}

/// A scratch folder, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "iotstream-hosts-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        registry().dirs.push(dir.clone());
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The names of the two hosts, by index.
const HOST_NAMES: [&str; 2] = ["sensorbox", "cloudbox"];
/// The host of the source.
const SOURCE: usize = 0;
/// The host of the sink.
const SINK: usize = 1;

/// A secret both hosts share (at least 16 bytes).
const SECRET: &str = "a shared secret of the two hosts\n";

/// The `[network]` lines of most scenarios: a secret, and short waits and timeouts.
const NETWORK: &str = "secret_file = \"secret\"\nconnect_wait_ms = 20000\nheartbeat_ms = 200\n\
                       peer_timeout_ms = 1000\nreconnect_limit_ms = 20000\n";

/// The indexed apps: the source on `sensorbox`, the recording sink on `cloudbox`.
const INDEXED_PROCESSES: &str = "[processes.main]\nhost = \"sensorbox\"\n\n\
                                 [processes.sink]\nhost = \"cloudbox\"\nagents = [\"record\"]\n";

/// The quake detector: the seismometer (process `main`) on `sensorbox`, detection
/// (`detector`: `sta_lta`, `trigger`) and `alerts` on `cloudbox`.
const QUAKE_PROCESSES: &str = "[processes.main]\nhost = \"sensorbox\"\n\n\
                               [processes.detector]\nhost = \"cloudbox\"\nrestart = \"on-failure\"\n\n\
                               [processes.alerts]\nhost = \"cloudbox\"\nrestart = \"on-failure\"\n";

/// Two hosts, a scratch folder with a folder per host, and a base port.
struct Net {
    // Dropped in this order: the scratch folder, then the namespaces.
    dir: Scratch,
    hosts: Hosts,
    port: u16,
}

impl Net {
    fn new(name: &str) -> Net {
        let hosts = Hosts::new(2);
        registry().namespaces.extend(hosts.names());
        let dir = Scratch::new(name);
        for host in HOST_NAMES {
            std::fs::create_dir_all(dir.0.join(host)).expect("host folder");
        }
        // Namespaces have ports of their own; the loopback flavor shares this machine's.
        let port = 20_000 + (std::process::id() % 20_000) as u16;
        Net { dir, hosts, port }
    }

    /// Host `i`'s folder.
    fn site(&self, i: usize) -> PathBuf {
        self.dir.0.join(HOST_NAMES[i])
    }

    /// Host `i`'s runtime folder (its launchers' control sockets), mode 0700.
    fn runtime(&self, i: usize) -> PathBuf {
        let d = self.site(i).join("run");
        let _ = std::fs::create_dir_all(&d);
        let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
        d
    }

    /// `iotstream ARGS…` run in host `i` (its runtime folder), killed after `limit`: (exit
    /// code, stdout, stderr, seconds taken, whether it had to be killed).
    fn cli(
        &self,
        i: usize,
        args: &[&str],
        limit: Duration,
    ) -> (Option<i32>, String, String, f64, bool) {
        let mut cmd = self.hosts.command(i, launcher_exe());
        cmd.args(args)
            .env("XDG_RUNTIME_DIR", self.runtime(i))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = cmd.spawn().expect("start iotstream");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let r1 = collect(child.stdout.take().unwrap(), Arc::clone(&out));
        let r2 = collect(child.stderr.take().unwrap(), Arc::clone(&err));
        let mut hung = false;
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if started.elapsed() > limit {
                hung = true;
                let _ = child.kill();
                break child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let _ = (r1.join(), r2.join());
        let (o, e) = (out.lock().unwrap().clone(), err.lock().unwrap().clone());
        (status.code(), o, e, started.elapsed().as_secs_f64(), hung)
    }

    /// Host `i`'s output file (`$OUT`).
    fn out(&self, i: usize) -> PathBuf {
        self.site(i).join("out.txt")
    }

    /// A deployment file's text: the two hosts (this base port on each), `[network]` with
    /// `network`, then `processes`.
    fn file(&self, network: &str, processes: &str) -> String {
        let mut text = String::from("[supervisor]\ndrain_timeout_ms = 20000\n\n");
        for (i, name) in HOST_NAMES.iter().enumerate() {
            text.push_str(&format!(
                "[hosts.{name}]\naddress = \"{}\"\nport = {}\n\n",
                self.hosts.addr(i),
                self.port
            ));
        }
        text.push_str(&format!("[network]\n{network}\n{processes}"));
        text
    }

    /// Writes `text` as `deploy.toml` in each host's folder, and `secrets[i]` (mode 600) as
    /// host `i`'s `secret`.
    fn deploy(&self, text: &str, secrets: [&str; 2]) {
        for (i, secret) in secrets.iter().enumerate() {
            std::fs::write(self.site(i).join("deploy.toml"), text).expect("write deploy.toml");
            write_private(&self.site(i).join("secret"), secret.as_bytes());
        }
    }

    /// `iotstream run <this test> --deploy <host i's file> --host <name> -- app APP ARGS…`,
    /// in host `i`, with `$OUT` in host `i`'s folder.
    fn launch(&self, i: usize, app: &str, args: &[&str]) -> Launched {
        self.launch_with(i, &[], app, args)
    }

    /// As [`Net::launch`], with `options` for `iotstream run` (before `--`).
    fn launch_with(&self, i: usize, options: &[&str], app: &str, args: &[&str]) -> Launched {
        let site = self.site(i);
        let mut cmd = self.hosts.command(i, launcher_exe());
        cmd.arg("run")
            .arg(own_exe())
            .arg("--deploy")
            .arg(site.join("deploy.toml"))
            .args(["--host", HOST_NAMES[i]])
            .args(options)
            .args(["--", "app", app])
            .args(args)
            .env("OUT", self.out(i))
            .env("RUST_BACKTRACE", "0")
            .env("XDG_RUNTIME_DIR", self.runtime(i))
            .current_dir(&site);
        Launched::start(cmd, HOST_NAMES[i])
    }
}

/// A NATS server with JetStream (`nats-server -js`) in one host, on that host's address:
/// killed and waited for when dropped (registered, so a scenario that leaves it running
/// fails).
struct HostNats {
    child: Child,
    /// `nats://ADDRESS:PORT`, as the other hosts reach it.
    url: String,
}

impl HostNats {
    /// Starts it in host `i` of `net`, its store and log in that host's folder; waits until it
    /// accepts connections.
    fn start(net: &Net, i: usize) -> Result<HostNats, String> {
        let addr = net.hosts.addr(i);
        // A free port on that address, as seen from inside the host (namespaces have ports of
        // their own; the loopback flavor shares this machine's).
        let port = net.hosts.in_host(i, || {
            std::net::TcpListener::bind((addr, 0))
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        });
        let port = port.map_err(|e| format!("a free port on {addr}: {e}"))?;
        let site = net.site(i);
        let log = std::fs::File::create(site.join("nats.log")).map_err(|e| e.to_string())?;
        let mut cmd = net.hosts.command(i, nats::binary());
        cmd.args(["-js", "-sd"])
            .arg(site.join("nats-store"))
            .args(["-p", &port.to_string(), "-a", &addr.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log);
        let child = cmd.spawn().map_err(|e| format!("start nats-server: {e}"))?;
        let pid = child.id();
        registry().launchers.push(pid);
        let nats = HostNats {
            child,
            url: format!("nats://{addr}:{port}"),
        };
        wait_until(
            &format!("nats-server listening on {addr}:{port}"),
            || {
                net.hosts.in_host(i, || {
                    TcpStream::connect_timeout(&SocketAddr::new(addr, port), Duration::from_secs(1))
                        .is_ok()
                })
            },
            || std::fs::read_to_string(site.join("nats.log")).unwrap_or_default(),
            || is_child_alive(pid),
        )?;
        Ok(nats)
    }
}

impl Drop for HostNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Writes a file readable by its owner only (as secrets and keys must be).
fn write_private(path: &Path, bytes: &[u8]) {
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .expect("create a private file");
    f.write_all(bytes).expect("write a private file");
}

/// A running launcher whose output is collected as it comes; killed (with every process of its
/// run) and its shared-memory objects removed when dropped.
struct Launched {
    child: Child,
    host: &'static str,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Its shared-memory objects are left where they are when it is dropped, as a SIGKILL
    /// leaves them (for the next run on its host to find).
    leave_memory: bool,
}

impl Launched {
    fn start(mut cmd: Command, host: &'static str) -> Launched {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start iotstream");
        registry().launchers.push(child.id());
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("stdout"), Arc::clone(&out)),
            collect(child.stderr.take().expect("stderr"), Arc::clone(&err)),
        ];
        Launched {
            child,
            host,
            out,
            err,
            readers,
            leave_memory: false,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stdout(&self) -> String {
        self.out.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Its last lines on stderr, labelled with its host, for failure messages.
    fn tail(&self) -> String {
        tail_of(self.host, &self.stderr())
    }

    /// Whether the launcher still runs (it has not exited).
    fn alive(&self) -> bool {
        is_child_alive(self.pid())
    }

    /// Waits (until the deadline, or the launcher's end) for its stderr to satisfy `pred`.
    fn wait_stderr(&self, what: &str, pred: impl Fn(&str) -> bool) -> Result<(), String> {
        wait_until(
            what,
            || pred(&self.stderr()),
            || self.tail(),
            || self.alive(),
        )
    }

    /// Sends `signal` to the launcher.
    fn signal(&self, signal: i32) {
        kill(self.pid(), signal);
    }

    /// Waits (until the deadline) for the end; returns the status, stdout and stderr. Checks
    /// that the launcher left no process of its run and no shared-memory object behind.
    fn wait(mut self) -> Result<(ExitStatus, String, String), String> {
        let deadline = deadline();
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let (out, err) = (self.stdout(), self.stderr());
                let (pids, segs) = (run_pids(self.pid()), segments_of(self.pid()));
                if !pids.is_empty() || !segs.is_empty() {
                    return Err(format!(
                        "the launcher of {} ended ({status}) but left processes {pids:?} and \
                         shared-memory objects {segs:?}\n{}",
                        self.host,
                        tail_of(self.host, &err)
                    ));
                }
                return Ok((status, out, err));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the launcher of {} did not end before the deadline\n{}",
                    self.host,
                    self.tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// [`killed`](Self::killed), leaving its run's shared-memory objects as the SIGKILL did:
    /// the next launcher of the application on its host finds them (and must remove them:
    /// what is left at the end of the scenario is reported).
    fn killed_leaving_its_memory(mut self) -> Result<ExitStatus, String> {
        self.leave_memory = true;
        self.killed()
    }

    /// Waits (until the deadline) for the end of a launcher killed on purpose, and for the
    /// processes of its run, which die with it; returns its status. What it could not remove
    /// (its shared-memory objects) goes when it is dropped.
    fn killed(mut self) -> Result<ExitStatus, String> {
        let host = self.host;
        let status = loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                break status;
            }
            if Instant::now() > deadline() {
                return Err(format!("the killed launcher of {host} did not end"));
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let launcher = self.pid();
        wait_until(
            &format!("the end of the processes of {host}'s killed launcher"),
            || run_pids(launcher).is_empty(),
            || format!("left: {:?}\n{}", run_pids(launcher), self.tail()),
            || true,
        )?;
        Ok(status)
    }
}

/// Whether a launcher's end was a success: exit 0, and every process it started finished.
fn succeeded(host: &str, status: ExitStatus, err: &str) -> Result<(), String> {
    ensure(status.code() == Some(0), || {
        format!("{host}: exit {status}")
    })?;
    let started = processes_started(err);
    let unfinished: Vec<&String> = started
        .iter()
        .filter(|p| !err.contains(&format!("process '{p}' finished\n")))
        .collect();
    ensure(!started.is_empty() && unfinished.is_empty(), || {
        format!("{host}: processes {started:?} started, {unfinished:?} did not finish")
    })
}

/// Waits for both launchers and checks both succeeded (see [`succeeded`]); returns
/// their stdout and stderr in argument order. A failure shows both hosts' last lines.
fn both_succeed(a: Launched, b: Launched) -> Result<[(String, String); 2], String> {
    let (host_a, host_b) = (a.host, b.host);
    let ra = a.wait();
    let rb = b.wait();
    let (ra, rb) = match (ra, rb) {
        (Ok(ra), Ok(rb)) => (ra, rb),
        (ra, rb) => {
            let e = [ra.err(), rb.err()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>();
            return Err(e.join("\n"));
        }
    };
    let problems: Vec<String> = [(host_a, &ra), (host_b, &rb)]
        .iter()
        .filter_map(|(host, (status, _, err))| succeeded(host, *status, err).err())
        .collect();
    ensure(problems.is_empty(), || {
        format!(
            "{}\n{}\n{}",
            problems.join("\n"),
            tail_of(host_a, &ra.2),
            tail_of(host_b, &rb.2)
        )
    })?;
    Ok([(ra.1, ra.2), (rb.1, rb.2)])
}

impl Drop for Launched {
    fn drop(&mut self) {
        let launcher = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in run_pids(launcher) {
            kill(pid, libc::SIGKILL);
        }
        // A child killed just now may not be gone yet; its objects are removed once it is.
        let until = Instant::now() + Duration::from_secs(5);
        while !run_pids(launcher).is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !self.leave_memory {
            remove_segments_of(launcher);
        }
    }
}

fn collect(
    pipe: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            let mut s = into.lock().unwrap_or_else(|e| e.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    })
}

/// The last 40 lines of `text`, under a heading naming `host`.
fn tail_of(host: &str, text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(40);
    format!(
        "--- {host}, stderr (last lines):\n{}",
        lines[from..].join("\n")
    )
}

/// Polls `cond` every 10 ms until it holds; gives up when the scenario's deadline passes or
/// `live` says what it waits on has ended (a launcher that exited).
fn wait_until(
    what: &str,
    cond: impl Fn() -> bool,
    context: impl Fn() -> String,
    live: impl Fn() -> bool,
) -> Result<(), String> {
    let deadline = deadline();
    loop {
        if cond() {
            return Ok(());
        }
        if !live() {
            // One last look: it may have become true just before the end.
            if cond() {
                return Ok(());
            }
            return Err(format!("never saw {what}: a launcher ended\n{}", context()));
        }
        if Instant::now() > deadline {
            return Err(format!("never saw {what}\n{}", context()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// Both launchers' last lines.
fn tails(a: &Launched, b: &Launched) -> String {
    format!("{}\n{}", a.tail(), b.tail())
}

/// The names of the processes a launcher started (each once), from its stderr.
fn processes_started(err: &str) -> Vec<String> {
    let mut names: Vec<String> = err
        .lines()
        .filter_map(|l| l.split_once("process '")?.1.split_once("' started (pid "))
        .map(|(name, _)| name.to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

/// A warning (a line saying "warn", in any case) naming host `host` in quotes, in `text`.
fn warning_naming<'a>(text: &'a str, host: &str) -> Option<&'a str> {
    let quoted = format!("'{host}'");
    text.lines()
        .find(|l| l.contains(&quoted) && l.to_lowercase().contains("warn"))
}

/// An error (a line saying "error" or "fail", in any case) naming host `host` in quotes.
fn error_naming<'a>(text: &'a str, host: &str) -> Option<&'a str> {
    let quoted = format!("'{host}'");
    text.lines().find(|l| {
        let lower = l.to_lowercase();
        l.contains(&quoted) && (lower.contains("error") || lower.contains("fail"))
    })
}

// ---------------------------------------------------------------------------------------------
// Checking what the sink recorded

/// The size of the lines `0\n` to `(k-1)\n`: how long the output is once k indices arrived.
fn bytes_of_first(k: u64) -> u64 {
    let mut total = 0;
    let (mut from, mut digits) = (0u64, 1u64);
    while from < k {
        let to = (from.max(1) * 10).min(k);
        total += (to - from) * (digits + 1);
        from = to;
        digits += 1;
    }
    total
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// Waits until `out` holds at least `k` lines' worth of indices.
fn wait_recorded(out: &Path, k: u64, launched: (&Launched, &Launched)) -> Result<(), String> {
    let bytes = bytes_of_first(k);
    wait_until(
        &format!("{k} indices recorded"),
        || file_len(out) >= bytes,
        || {
            format!(
                "{} bytes recorded\n{}",
                file_len(out),
                tails(launched.0, launched.1)
            )
        },
        || launched.0.alive() && launched.1.alive(),
    )
}

/// The recorded lines: indices, and `None` for a torn line's mark.
fn recorded(out: &Path) -> Result<Vec<Option<u64>>, String> {
    let text = std::fs::read_to_string(out).map_err(|e| format!("{}: {e}", out.display()))?;
    text.lines()
        .map(|l| match l {
            "#torn" => Ok(None),
            l => l
                .parse()
                .map(Some)
                .map_err(|_| format!("a bad line in the output: {l:?}")),
        })
        .collect()
}

/// The output is exactly 0..n, each once, in order.
fn exactly_once_in_order(out: &Path, n: u64) -> Result<(), String> {
    let got = recorded(out)?;
    for (i, v) in got.iter().enumerate() {
        if *v != Some(i as u64) {
            let from = i.saturating_sub(3);
            return Err(format!(
                "line {i} is {v:?}, expected {i} (lines {from}..: {:?}); {} lines, {n} expected",
                &got[from..got.len().min(i + 4)],
                got.len()
            ));
        }
    }
    ensure(got.len() as u64 == n, || {
        format!("{} indices recorded, {n} expected", got.len())
    })
}

/// Every index of 0..n is in the output, and with later copies removed (elements delivered
/// again after a restart) the sequence is 0..n in order; returns how many came again.
fn each_at_least_once_in_order(out: &Path, n: u64) -> Result<usize, String> {
    let got = recorded(out)?;
    let mut seen = vec![false; n as usize];
    let mut first = Vec::with_capacity(n as usize);
    let mut again = 0;
    for v in got.iter().flatten() {
        let i = *v as usize;
        ensure(i < seen.len(), || format!("index {i} recorded, beyond {n}"))?;
        if seen[i] {
            again += 1;
        } else {
            seen[i] = true;
            first.push(*v);
        }
    }
    let missing: Vec<usize> = (0..n as usize).filter(|&i| !seen[i]).collect();
    ensure(missing.is_empty(), || {
        format!(
            "{} of {n} indices lost (first {:?})",
            missing.len(),
            &missing[..missing.len().min(10)]
        )
    })?;
    if let Some(k) = first.iter().enumerate().position(|(i, v)| *v != i as u64) {
        return Err(format!(
            "out of order after removing copies: position {k} holds {}",
            first[k]
        ));
    }
    Ok(again)
}

/// `RESULT count=N` from the process `process` in `stdout`.
fn result_count(stdout: &str, process: &str) -> Option<u64> {
    let key = format!("[{process}] RESULT count=");
    stdout
        .lines()
        .rev()
        .find_map(|l| l.split_once(&key).and_then(|(_, n)| n.trim().parse().ok()))
}

/// `EMITTED N` from the process `process` in `stdout`.
fn emitted(stdout: &str, process: &str) -> Option<u64> {
    let key = format!("[{process}] EMITTED ");
    stdout
        .lines()
        .find_map(|l| l.split_once(&key).and_then(|(_, n)| n.trim().parse().ok()))
}

/// The pid of the last start of `process` in a launcher's stderr.
fn pid_of(stderr: &str, process: &str) -> Option<u32> {
    let key = format!("process '{process}' started (pid ");
    stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once(&key).map(|(_, r)| r))
        .and_then(|r| r.trim_end_matches(')').parse().ok())
}

// ---------------------------------------------------------------------------------------------
// The scenarios

/// Either host may start first: the run ends on both hosts with every process finished,
/// exit 0, and every index once.
fn runs_to_the_end_whichever_host_starts_first() -> Result<(), String> {
    for first in [SOURCE, SINK] {
        let net = Net::new(&format!("order-{first}"));
        net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
        let n = 200_000u64;
        let count = n.to_string();
        let args = [count.as_str(), "0"];
        let early = net.launch(first, "indexed", &args);
        early.wait_stderr("data flowing on the first host", |e| {
            e.contains("ready: data flows")
        })?;
        // Not a measurement: the first host's link is left alone for a while (the writer's
        // first attempts fail, or the reader listens with nobody there) before the other host
        // starts.
        std::thread::sleep(Duration::from_millis(1_000));
        let late = net.launch(1 - first, "indexed", &args);
        let (source, sink) = if first == SOURCE {
            (early, late)
        } else {
            (late, early)
        };
        let [(source_out, _), (sink_out, _)] = both_succeed(source, sink)?;
        exactly_once_in_order(&net.out(SINK), n)?;
        ensure(result_count(&sink_out, "sink") == Some(n), || {
            format!("the sink's result: {sink_out}")
        })?;
        ensure(emitted(&source_out, "main") == Some(n), || {
            format!("the source's count: {source_out}")
        })?;
    }
    Ok(())
}

/// A host started alone says, with the default logging, that it waits for the other host,
/// naming it; started then, the other host completes the run. Checked for both hosts first.
fn the_host_started_first_says_which_host_it_waits_for() -> Result<(), String> {
    let network = "secret_file = \"secret\"\nconnect_wait_ms = 8000\nheartbeat_ms = 200\n\
                   peer_timeout_ms = 1000\nreconnect_limit_ms = 8000\n";
    let mut wrong = Vec::new();
    for first in [SOURCE, SINK] {
        let net = Net::new(&format!("waits-{first}"));
        net.deploy(&net.file(network, INDEXED_PROCESSES), [SECRET, SECRET]);
        let args = ["1000", "0"];
        let early = net.launch(first, "indexed", &args);
        let other = HOST_NAMES[1 - first];
        let said = early.wait_stderr(
            &format!("{} saying it waits for '{other}'", HOST_NAMES[first]),
            |e| {
                e.lines()
                    .any(|l| l.contains(&format!("'{other}'")) && l.contains("wait"))
            },
        );
        if let Err(e) = said {
            wrong.push(e);
            continue;
        }
        let late = net.launch(1 - first, "indexed", &args);
        both_succeed(early, late)?;
    }
    ensure(wrong.is_empty(), || wrong.join("\n"))
}

/// Ctrl-C on either host drains the application on both: both launchers exit 0, every process
/// finished, and what the source emitted is what the sink recorded, in order, once.
fn ctrl_c_on_either_host_drains_both() -> Result<(), String> {
    for stopped in [SOURCE, SINK] {
        let net = Net::new(&format!("ctrl-c-{stopped}"));
        net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
        let sink = net.launch(SINK, "endless", &["200"]);
        let source = net.launch(SOURCE, "endless", &["200"]);
        wait_recorded(&net.out(SINK), 5_000, (&source, &sink))?;
        [&source, &sink][stopped].signal(libc::SIGINT);
        let [(source_out, source_err), (sink_out, sink_err)] = both_succeed(source, sink)?;
        let sent = emitted(&source_out, "main")
            .ok_or_else(|| format!("no EMITTED line:\n{source_out}\n{source_err}"))?;
        let got = result_count(&sink_out, "sink")
            .ok_or_else(|| format!("no RESULT line:\n{sink_out}\n{sink_err}"))?;
        ensure(sent == got && sent >= 5_000, || {
            format!(
                "Ctrl-C on {}: {sent} emitted, {got} received",
                HOST_NAMES[stopped]
            )
        })?;
        exactly_once_in_order(&net.out(SINK), sent)?;
    }
    Ok(())
}

/// Ctrl-C on the sink host while the source host was never started drains it at once: its
/// TCP input, which no writer ever reached, ends empty; the launcher exits 0, every process
/// finished, the sink recorded nothing. Before, the drain waited for a writer that could not
/// come until its timeout, killed the processes and exited 1 (found by a user's audit).
fn ctrl_c_on_a_host_whose_peer_never_started_drains_it() -> Result<(), String> {
    let net = Net::new("ctrl-c-alone");
    net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
    let sink = net.launch(SINK, "endless", &["200"]);
    let other = HOST_NAMES[SOURCE];
    sink.wait_stderr(&format!("the sink host waiting for '{other}'"), |e| {
        e.lines()
            .any(|l| l.contains(&format!("'{other}'")) && l.contains("wait"))
    })?;
    sink.signal(libc::SIGINT);
    let host = sink.host;
    let (status, out, err) = sink.wait()?;
    succeeded(host, status, &err)?;
    let got = result_count(&out, "sink").ok_or_else(|| format!("no RESULT line:\n{out}\n{err}"))?;
    ensure(got == 0, || {
        format!("the sink recorded {got} elements from nowhere")
    })
}

/// The sink host's launcher is killed (SIGKILL; its processes die with it) mid-run: the source
/// host warns, naming it; the sink host is started again and the run completes, every index
/// recorded (those being recorded at the kill perhaps twice), in order.
fn a_killed_sink_host_started_again_completes_the_run() -> Result<(), String> {
    let net = Net::new("killed-sink-host");
    net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
    let n = 300_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "300"];
    let source = net.launch(SOURCE, "indexed", &args);
    let sink = net.launch(SINK, "indexed", &args);
    wait_recorded(&net.out(SINK), n / 4, (&source, &sink))?;
    let seen_before = source.stderr().len();
    sink.signal(libc::SIGKILL);
    let status = sink.killed_leaving_its_memory()?;
    ensure(status.code().is_none(), || {
        format!("the sink host: {status}")
    })?;
    source.wait_stderr("a warning naming the sink host", |e| {
        warning_naming(&e[seen_before..], "cloudbox").is_some()
    })?;
    let sink = net.launch(SINK, "indexed", &args);
    let [_, (_, sink_err)] = both_succeed(source, sink)?;
    let again = each_at_least_once_in_order(&net.out(SINK), n)
        .map_err(|e| format!("{e}\n{}", tail_of("cloudbox", &sink_err)))?;
    println!("  ({again} indices recorded again after the sink host's restart)");
    // The new run says that the killed one's memory is gone, and that the source host resumed
    // past what that run had acknowledged (here the recording agent was the link's reader,
    // so all of it had left the host; behind a relay it would be lost).
    ensure(
        sink_err.contains("on this host ended without draining (its launcher died)"),
        || {
            format!(
                "no word of the killed run:\n{}",
                tail_of("cloudbox", &sink_err)
            )
        },
    )?;
    ensure(
        sink_err.contains("host 'sensorbox' resumes at batch")
            && sink_err.contains("an earlier run of this host acknowledged"),
        || {
            format!(
                "no word of the resumption:\n{}",
                tail_of("cloudbox", &sink_err)
            )
        },
    )?;
    Ok(())
}

/// The source host's launcher is killed mid-run: the sink host warns, naming it; the source
/// host is started again, its source starts over, and the run completes: the sink recorded
/// the first run's indices up to some k, then 0..n, in order.
fn a_killed_source_host_started_again_completes_the_run() -> Result<(), String> {
    let net = Net::new("killed-source-host");
    net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
    let n = 200_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "300"];
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    wait_recorded(&net.out(SINK), n / 4, (&source, &sink))?;
    let seen_before = sink.stderr().len();
    source.signal(libc::SIGKILL);
    let status = source.killed()?;
    ensure(status.code().is_none(), || {
        format!("the source host: {status}")
    })?;
    sink.wait_stderr("a warning naming the source host", |e| {
        warning_naming(&e[seen_before..], "sensorbox").is_some()
    })?;
    let source = net.launch(SOURCE, "indexed", &args);
    both_succeed(source, sink)?;
    let got = recorded(&net.out(SINK))?;
    let got: Vec<u64> = got.into_iter().flatten().collect();
    // The restarted run is the last 0 and what follows it.
    let restart = got.iter().rposition(|&v| v == 0).unwrap_or(0);
    let (before, after) = got.split_at(restart);
    ensure(restart > 0, || "the first run recorded nothing".to_string())?;
    ensure(
        before.iter().enumerate().all(|(i, &v)| v == i as u64),
        || "the first run's indices are not 0..k in order".to_string(),
    )?;
    ensure(
        after.len() as u64 == n && after.iter().enumerate().all(|(i, &v)| v == i as u64),
        || {
            format!(
                "after the restart {} indices, not 0..{n} in order",
                after.len()
            )
        },
    )?;
    println!(
        "  (the first run recorded {} indices before its host was killed)",
        before.len()
    );
    Ok(())
}

/// 1 000 000 indices while the link is cut (veth down, shorter and longer than the peer
/// timeout, then up) and its sockets killed (`ss -K`) several times: every index once, in order.
fn link_cuts_and_killed_sockets_lose_and_duplicate_nothing() -> Result<(), String> {
    let net = Net::new("cuts");
    // A small budget of unacknowledged bytes (32 768 indices): the source waits while the link
    // is down, so every cut and kill falls in the middle of the stream.
    let network = format!("{NETWORK}unacked_bytes = 262144\n");
    net.deploy(&net.file(&network, INDEXED_PROCESSES), [SECRET, SECRET]);
    let n = 1_000_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "1000"];
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    let out = net.out(SINK);
    let (mut cuts, mut kills) = (0, 0);
    // The link of connection 0 into the sink host listens on its base port.
    let port = net.port;
    for (step, at) in [1u64, 2, 3, 4, 5, 6].iter().enumerate() {
        wait_recorded(&out, n * at / 8, (&source, &sink))?;
        match step % 3 {
            // Shorter than the peer timeout: TCP carries on after the heal.
            0 => {
                if net.hosts.cut(SINK) {
                    std::thread::sleep(Duration::from_millis(300));
                    let _ = net.hosts.heal(SINK);
                    cuts += 1;
                }
            }
            // Longer than the peer timeout: both ends give the connection up and reconnect.
            1 => {
                if net.hosts.cut(SINK) {
                    std::thread::sleep(Duration::from_millis(2_500));
                    let _ = net.hosts.heal(SINK);
                    cuts += 1;
                }
            }
            // The link may be reconnecting after a cut: kill it once it is up again.
            _ => {
                let outcome = Cell::new(None);
                wait_until(
                    "a link connection to kill",
                    || match net.hosts.kill_tcp(SINK, port) {
                        Ok(0) => false,
                        r => {
                            outcome.set(Some(r));
                            true
                        }
                    },
                    || tails(&source, &sink),
                    || source.alive() && sink.alive(),
                )?;
                kills += outcome.take().unwrap_or(Ok(0))?;
            }
        }
    }
    let [(_, source_err), (_, sink_err)] = both_succeed(source, sink)?;
    exactly_once_in_order(&out, n)?;
    ensure(kills > 0, || {
        "ss -K killed no connection: this kernel cannot destroy sockets (CONFIG_INET_DIAG_DESTROY)"
            .to_string()
    })?;
    if !net.hosts.isolated() {
        println!("  (loopback flavor: the link could not be cut, only its sockets killed)");
    }
    let broken = |e: &str| e.lines().filter(|l| l.contains("WARN")).count();
    println!(
        "  ({cuts} cuts, {kills} sockets killed; {} + {} warnings)",
        broken(&source_err),
        broken(&sink_err)
    );
    Ok(())
}

/// The whole stream, its end included, has reached the sink host (whose sink is slow) when the
/// link is cut; the sink consumes the rest while the link is down, and the link comes back:
/// both hosts still end well (the source host learns that its end of stream was consumed),
/// every index once, in order.
fn a_link_cut_after_the_last_element_arrived_still_ends_well() -> Result<(), String> {
    let net = Net::new("cut-at-end");
    if !net.hosts.isolated() {
        println!("  (skipped: the loopback flavor cannot cut a link)");
        return Ok(());
    }
    let network = "secret_file = \"secret\"\nconnect_wait_ms = 20000\nheartbeat_ms = 200\n\
                   peer_timeout_ms = 1000\nreconnect_limit_ms = 10000\n";
    let processes = format!(
        "{INDEXED_PROCESSES}\n[[connections]]\nstream = \"numbers.out\"\ncapacity = 1000\n"
    );
    net.deploy(&net.file(network, &processes), [SECRET, SECRET]);
    // 20 000 indices at full speed; the sink takes 1 000 per step, 100 ms each.
    let n = 20_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "0", "100"];
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    let out = net.out(SINK);
    wait_recorded(&out, 1_000, (&source, &sink))?;
    // Not a measurement: 160 kB cross a veth in far less; the sink needs 2 s for them.
    std::thread::sleep(Duration::from_millis(300));
    ensure(file_len(&out) < bytes_of_first(n), || {
        "the sink recorded everything before the cut".to_string()
    })?;
    ensure(net.hosts.cut(SINK), || "no link to cut".to_string())?;
    let consumed = wait_recorded(&out, n, (&source, &sink));
    // Give a sink process that would end now the time to do so, then heal.
    std::thread::sleep(Duration::from_millis(500));
    let _ = net.hosts.heal(SINK);
    consumed?;
    both_succeed(source, sink)?;
    exactly_once_in_order(&out, n)
}

/// The sink process is killed (SIGKILL) twice mid-stream and restarted by its launcher
/// (`restart = "on-failure"`): every index recorded, in order once later copies are removed.
fn a_killed_sink_process_restarted_by_its_launcher_loses_nothing() -> Result<(), String> {
    let net = Net::new("sink-restart");
    let processes =
        format!("{INDEXED_PROCESSES}restart = \"on-failure\"\nmax_restarts = 3\nbackoff_ms = 50\n");
    net.deploy(&net.file(NETWORK, &processes), [SECRET, SECRET]);
    let n = 300_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "500"];
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    let out = net.out(SINK);
    for (kill_no, at) in [1u64, 2].iter().enumerate() {
        wait_recorded(&out, n * at / 4, (&source, &sink))?;
        let pid = pid_of(&sink.stderr(), "sink").ok_or_else(|| sink.tail())?;
        kill(pid, libc::SIGKILL);
        sink.wait_stderr("the sink restarted", |e| {
            e.contains(&format!("restart {} of 3", kill_no + 1))
                && pid_of(e, "sink").is_some_and(|p| p != pid)
        })?;
    }
    let [_, (_, sink_err)] = both_succeed(source, sink)?;
    ensure(
        sink_err
            .matches("process 'sink' was killed by signal 9")
            .count()
            == 2,
        || {
            format!(
                "two kills of 'sink' not reported\n{}",
                tail_of("cloudbox", &sink_err)
            )
        },
    )?;
    let again = each_at_least_once_in_order(&out, n)?;
    println!("  ({again} indices recorded again after two restarts)");
    Ok(())
}

/// Different secrets on the two hosts: the link is refused, each side says "wrong secret", and
/// after the connect wait both runs fail, each naming the other host.
fn a_wrong_secret_is_refused_on_both_sides() -> Result<(), String> {
    let net = Net::new("wrong-secret");
    let network = "secret_file = \"secret\"\nconnect_wait_ms = 3000\nheartbeat_ms = 200\n\
                   peer_timeout_ms = 1000\nreconnect_limit_ms = 3000\n";
    net.deploy(
        &net.file(network, INDEXED_PROCESSES),
        [SECRET, "another secret, not the same one\n"],
    );
    let args = ["1000", "0"];
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    let (source_status, _, source_err) = source.wait()?;
    let (sink_status, _, sink_err) = sink.wait()?;
    let both = format!(
        "{}\n{}",
        tail_of("sensorbox", &source_err),
        tail_of("cloudbox", &sink_err)
    );
    ensure(
        source_err.contains("wrong secret") && sink_err.contains("wrong secret"),
        || format!("\"wrong secret\" is not logged on both sides\n{both}"),
    )?;
    ensure(!source_status.success() && !sink_status.success(), || {
        format!("sensorbox {source_status}, cloudbox {sink_status}\n{both}")
    })?;
    ensure(
        error_naming(&source_err, "cloudbox").is_some()
            && error_naming(&sink_err, "sensorbox").is_some(),
        || format!("the failures do not name the peer host\n{both}"),
    )?;
    ensure(file_len(&net.out(SINK)) == 0, || {
        "data crossed a link with a wrong secret".to_string()
    })
}

/// Several hosts and no secret: refused before anything starts, saying how to fix it; a secret
/// file others may read: refused, naming it and `chmod 600`; `insecure = true`: runs, warning
/// on both hosts that the links are not authenticated.
fn no_secret_refused_unless_insecure() -> Result<(), String> {
    let net = Net::new("insecure");
    let args = ["10000", "0"];
    // No secret.
    net.deploy(
        &net.file("connect_wait_ms = 3000\n", INDEXED_PROCESSES),
        [SECRET, SECRET],
    );
    let (status, _, err) = net.launch(SOURCE, "indexed", &args).wait()?;
    ensure(status.code() == Some(2), || {
        format!("no secret: exit {status}\n{err}")
    })?;
    ensure(
        err.contains("set secret_file in [network]") && !err.contains("started (pid"),
        || format!("no secret: not refused as expected\n{err}"),
    )?;
    // A secret file readable by others.
    net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
    let secret = net.site(SOURCE).join("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    let (status, _, err) = net.launch(SOURCE, "indexed", &args).wait()?;
    ensure(!status.success(), || {
        format!("a readable secret: {status}\n{err}")
    })?;
    ensure(
        err.contains(&secret.display().to_string()) && err.contains("chmod 600"),
        || format!("a readable secret: not refused as expected\n{err}"),
    )?;
    // Insecure, on purpose.
    let network = "insecure = true\nconnect_wait_ms = 20000\nheartbeat_ms = 200\n\
                   peer_timeout_ms = 1000\nreconnect_limit_ms = 20000\n";
    net.deploy(&net.file(network, INDEXED_PROCESSES), [SECRET, SECRET]);
    let _ = std::fs::remove_file(net.out(SINK));
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    let [(_, source_err), (_, sink_err)] = both_succeed(source, sink)?;
    for (host, err) in [("sensorbox", &source_err), ("cloudbox", &sink_err)] {
        ensure(err.contains("WITHOUT authentication"), || {
            format!(
                "{host} did not warn about insecure links\n{}",
                tail_of(host, err)
            )
        })?;
    }
    exactly_once_in_order(&net.out(SINK), 10_000)
}

/// Mutual TLS: with certificates from the CA both hosts trust, the run completes. A host
/// whose certificate comes from another CA (it trusts both, the other host only its own) is
/// refused: the refusing side names its CA file, the refused side hears so, nothing crosses,
/// and the run fails. A host whose own certificate its own CA file does not sign is refused
/// before it starts anything. Needs the `openssl` command (skipped, said so, without it).
fn tls_refuses_a_certificate_from_an_unknown_ca() -> Result<(), String> {
    let openssl_works = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !openssl_works {
        println!("  (skipped: no openssl command to make certificates with)");
        return Ok(());
    }
    let network = "secret_file = \"secret\"\nconnect_wait_ms = 5000\nheartbeat_ms = 200\n\
                   peer_timeout_ms = 1000\nreconnect_limit_ms = 5000\n\
                   tls_cert = \"tls.pem\"\ntls_key = \"tls.key\"\ntls_ca = \"ca.pem\"\n";
    // Which host (if any) has a certificate from a CA the other host does not trust.
    let mut wrong = Vec::new();
    for rogue in [None, Some(SOURCE), Some(SINK)] {
        if let Err(e) = tls_case(network, rogue) {
            wrong.push(e);
        }
    }
    ensure(wrong.is_empty(), || wrong.join("\n"))
}

/// One case of [`tls_refuses_a_certificate_from_an_unknown_ca`]: `rogue` is the host whose
/// certificate comes from the CA the other does not trust, if any.
fn tls_case(network: &str, rogue: Option<usize>) -> Result<(), String> {
    let label = rogue.map_or("trusted".to_string(), |r| format!("rogue-{r}"));
    let net = Net::new(&format!("tls-{label}"));
    let pki = net.dir.0.join("pki");
    std::fs::create_dir_all(&pki).map_err(|e| e.to_string())?;
    make_ca(&pki, "trusted-ca")?;
    make_ca(&pki, "rogue-ca")?;
    let read = |name: &str| std::fs::read(pki.join(name)).map_err(|e| e.to_string());
    for i in [SOURCE, SINK] {
        let ca = if rogue == Some(i) {
            "rogue-ca"
        } else {
            "trusted-ca"
        };
        let name = HOST_NAMES[i];
        make_cert(&pki, ca, name, &net.hosts.addr(i).to_string())?;
        let site = net.site(i);
        write_private(&site.join("tls.pem"), &read(&format!("{name}.pem"))?);
        write_private(&site.join("tls.key"), &read(&format!("{name}.key"))?);
        write_private(&site.join("ca.pem"), &read("trusted-ca.pem")?);
    }
    net.deploy(&net.file(network, INDEXED_PROCESSES), [SECRET, SECRET]);
    let n = 20_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "0"];
    let Some(rogue) = rogue else {
        let sink = net.launch(SINK, "indexed", &args);
        let source = net.launch(SOURCE, "indexed", &args);
        both_succeed(source, sink)?;
        return exactly_once_in_order(&net.out(SINK), n);
    };
    let site = net.site(rogue);
    if rogue == SOURCE {
        // Its own CA file does not sign its certificate: refused before anything starts.
        let (status, _, err) = net.launch(rogue, "indexed", &args).wait()?;
        let want = format!(
            "[network] tls_cert: the certificate in {} is refused by the CA in {}",
            site.join("tls.pem").display(),
            site.join("ca.pem").display()
        );
        ensure(
            !status.success() && err.contains(&want) && !err.contains("started (pid"),
            || format!("{label}: exit {status}, no \"{want}\" before any start\n{err}"),
        )?;
    }
    // The rogue host trusts both CAs; the other host only its own.
    let mut bundle = read("trusted-ca.pem")?;
    bundle.extend(read("rogue-ca.pem")?);
    write_private(&site.join("ca.pem"), &bundle);
    let sink = net.launch(SINK, "indexed", &args);
    let source = net.launch(SOURCE, "indexed", &args);
    let (source_status, _, source_err) = source.wait()?;
    let (sink_status, _, sink_err) = sink.wait()?;
    let errs = [&source_err, &sink_err];
    let both = format!(
        "{}\n{}",
        tail_of("sensorbox", &source_err),
        tail_of("cloudbox", &sink_err)
    );
    ensure(!source_status.success() && !sink_status.success(), || {
        format!("{label}: sensorbox {source_status}, cloudbox {sink_status}\n{both}")
    })?;
    let want = format!(
        "TLS: the peer's certificate is not signed by the CA in '{}' (UnknownIssuer)",
        net.site(1 - rogue).join("ca.pem").display()
    );
    ensure(errs[1 - rogue].contains(&want), || {
        format!("{label}: no \"{want}\"\n{both}")
    })?;
    let refused = "TLS: the peer refused this host's certificate (alert UnknownCA)";
    ensure(errs[rogue].contains(refused), || {
        format!("{label}: no \"{refused}\"\n{both}")
    })?;
    ensure(file_len(&net.out(SINK)) == 0, || {
        format!("{label}: data crossed a link with an untrusted certificate")
    })
}

/// Runs `openssl` in `dir` with `args` (words separated by spaces).
fn openssl(dir: &Path, args: &str) -> Result<(), String> {
    let out = Command::new("openssl")
        .args(args.split_whitespace())
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    ensure(out.status.success(), || {
        format!(
            "openssl {args}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The part of `openssl req` making a P-256 key without a passphrase.
const NEW_KEY: &str = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";

/// A self-signed CA: `NAME.pem`, `NAME.key` in `dir`.
fn make_ca(dir: &Path, name: &str) -> Result<(), String> {
    openssl(
        dir,
        &format!("req -x509 {NEW_KEY} -days 2 -subj /CN={name} -keyout {name}.key -out {name}.pem"),
    )
}

/// A host certificate for address `ip` signed by CA `ca`: `NAME.pem`, `NAME.key` in `dir`.
fn make_cert(dir: &Path, ca: &str, name: &str, ip: &str) -> Result<(), String> {
    std::fs::write(
        dir.join(format!("{name}.ext")),
        format!(
            "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\n\
             extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:{ip}\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    openssl(
        dir,
        &format!("req -new {NEW_KEY} -subj /CN={name} -keyout {name}.key -out {name}.csr"),
    )?;
    openssl(
        dir,
        &format!(
            "x509 -req -in {name}.csr -CA {ca}.pem -CAkey {ca}.key -CAcreateserial -days 2 \
             -extfile {name}.ext -out {name}.pem"
        ),
    )
}

/// The quake detector with the sensor on `edge` and detection and alerts on `server` prints
/// the same detections as the detector in one process.
fn the_quake_detector_across_two_hosts_detects_as_in_one_process() -> Result<(), String> {
    let quakes = |text: &str, prefix: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|l| l.starts_with("QUAKE "))
            .map(str::to_string)
            .collect()
    };
    let one = Command::new(own_exe())
        .args(["app", "quake", "single"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(one.status.success(), || format!("one process: {one:?}"))?;
    let want = quakes(&String::from_utf8_lossy(&one.stdout), "");
    ensure(!want.is_empty(), || "one process: no detection".to_string())?;

    let net = Net::new("quake");
    net.deploy(&net.file(NETWORK, QUAKE_PROCESSES), [SECRET, SECRET]);
    let server = net.launch(SINK, "quake", &[]);
    let edge = net.launch(SOURCE, "quake", &[]);
    let [_, (server_out, _)] = both_succeed(edge, server)?;
    let got = quakes(&server_out, "[alerts] ");
    ensure(got == want, || {
        format!(
            "two hosts printed:\n{}\none process printed:\n{}",
            got.join("\n"),
            want.join("\n")
        )
    })
}

// ---------------------------------------------------------------------------------------------
// The live view across hosts

/// `iotstream run` options: the live view served on the host's loopback, on a port the system
/// picks (each launcher prints it), processes reporting every 250 ms.
const VIEW_OPTIONS: [&str; 4] = ["--metrics", "127.0.0.1:0", "--metrics-interval", "250ms"];

/// The `[network]` of the live-view scenarios: a secret, a reader stopped for a few seconds
/// is not taken as gone, a host killed is waited for a minute, and a writer may keep at most
/// 64 KiB unacknowledged (filled in about a second by the paced quake detector).
const VIEW_NETWORK: &str =
    "secret_file = \"secret\"\nconnect_wait_ms = 20000\nheartbeat_ms = 200\n\
                            peer_timeout_ms = 10000\nreconnect_limit_ms = 60000\n\
                            unacked_bytes = 65536\n";

/// The processes and agents of each host in the quake detector ([`QUAKE_PROCESSES`]).
const QUAKE_PARTS: [(&[&str], &[&str]); 2] = [
    (&["main"], &["seismometer"]),
    (&["detector", "alerts"], &["sta_lta", "trigger", "alerts"]),
];

/// The address a launcher serves its live view at (`--metrics 127.0.0.1:0`), from the line it
/// prints at start.
fn metrics_addr(l: &Launched) -> Result<SocketAddr, String> {
    const KEY: &str = "[iotstream] metrics on http://";
    l.wait_stderr("the live view's address", |e| e.contains(KEY))?;
    l.stderr()
        .lines()
        .find_map(|line| line.split_once(KEY))
        .and_then(|(_, rest)| rest.trim_end_matches('/').parse().ok())
        .ok_or_else(|| format!("no address in the launcher's line\n{}", l.tail()))
}

/// `GET /api/metrics` of the live view at `addr`, a loopback address of host `i`: asked from
/// inside host `i`, without a token (on loopback the view asks for none, whatever the
/// deployment's secret: `docs/operations.md`).
fn view_of(net: &Net, i: usize, addr: SocketAddr) -> Result<AppMetrics, String> {
    net.hosts.in_host(i, || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET /api/metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| format!("ask {addr}: {e}"))?;
        let mut raw = String::new();
        s.read_to_string(&mut raw)
            .map_err(|e| format!("read from {addr}: {e}"))?;
        let (head, body) = raw
            .split_once("\r\n\r\n")
            .ok_or_else(|| format!("no HTTP answer: {raw:?}"))?;
        ensure(head.starts_with("HTTP/1.1 200 "), || {
            format!("{addr}: {}", head.lines().next().unwrap_or(""))
        })?;
        serde_json::from_str(body).map_err(|e| format!("{addr}: not a view: {e}"))
    })
}

/// A view in a few lines, for failure messages.
fn view_text(v: &AppMetrics) -> String {
    let mut out = format!("view at {} ms:", v.time_ms);
    for p in &v.processes {
        out.push_str(&format!(
            "\n  process {} on {}: {:?}, pid {}, up {:.1} s",
            p.process, p.host, p.status, p.pid, p.up_s
        ));
    }
    for a in &v.agents {
        out.push_str(&format!(
            "\n  agent {} on {}: {} steps",
            a.name, a.host, a.steps
        ));
    }
    for l in &v.links {
        out.push_str(&format!(
            "\n  link {} -> {}.{} ({}): ends {:?}, {} elements, max in flight {}, blocked {} ns, \
             unacked {} B",
            l.stream,
            l.reader,
            l.input,
            l.transport,
            l.ends,
            l.elements,
            l.max_in_flight,
            l.blocked_ns,
            l.unacked_bytes
        ));
    }
    out
}

/// Asks host `i`'s live view (every 50 ms, until the deadline or the end of a launcher of
/// `running`) until `done` holds of it; returns that view.
fn wait_view(
    net: &Net,
    (i, addr): (usize, SocketAddr),
    what: &str,
    running: &[&Launched],
    done: impl Fn(&AppMetrics) -> bool,
) -> Result<AppMetrics, String> {
    let deadline = deadline();
    loop {
        let last = match view_of(net, i, addr) {
            Ok(v) if done(&v) => return Ok(v),
            Ok(v) => view_text(&v),
            Err(e) => e,
        };
        let ended = running.iter().any(|l| !l.alive());
        if ended || Instant::now() > deadline {
            let tails: Vec<String> = running.iter().map(|l| l.tail()).collect();
            return Err(format!(
                "{}'s live view never showed {what}{}; last:\n{last}\n{}",
                HOST_NAMES[i],
                if ended { " (a launcher ended)" } else { "" },
                tails.join("\n")
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn process<'a>(v: &'a AppMetrics, name: &str) -> Option<&'a ProcessView> {
    v.processes.iter().find(|p| p.process == name)
}

fn agent<'a>(v: &'a AppMetrics, name: &str) -> Option<&'a AgentView> {
    v.agents.iter().find(|a| a.name == name)
}

/// The connection between the hosts: the seismometer's samples into `sta_lta`.
fn tcp_link(v: &AppMetrics) -> Option<&LinkView> {
    v.links.iter().find(|l| l.stream == "seismometer.out")
}

/// Every process and agent of host `h` in `v`, on `h`, with status `status` (and a pid when
/// running).
fn host_shown(v: &AppMetrics, h: usize, status: ProcessStatus) -> bool {
    let (processes, agents) = QUAKE_PARTS[h];
    processes.iter().all(|p| {
        process(v, p).is_some_and(|p| {
            p.host == HOST_NAMES[h]
                && p.status == status
                && (status != ProcessStatus::Running || p.pid != 0)
        })
    }) && agents
        .iter()
        .all(|a| agent(v, a).is_some_and(|a| a.host == HOST_NAMES[h]))
}

/// Whether every process of host `h` has been up longer, and every agent of host `h` has
/// stepped more, in `now` than in `before`.
fn host_grew(before: &AppMetrics, now: &AppMetrics, h: usize) -> bool {
    let (processes, agents) = QUAKE_PARTS[h];
    processes.iter().all(
        |p| matches!((process(before, p), process(now, p)), (Some(b), Some(n)) if n.up_s > b.up_s),
    ) && agents.iter().all(
        |a| matches!((agent(before, a), agent(now, a)), (Some(b), Some(n)) if n.steps > b.steps),
    )
}

/// The quake detector on two hosts, each launcher serving its live view: each shows the other
/// host's processes and agents running, with counters that grow, and the link between the
/// hosts with both ends put together, each counter from its end (`max_in_flight` only the
/// reader counts, unacknowledged bytes and time blocked only the writer: a reader stopped for
/// a moment makes the writer wait). Then the sink host's launcher is SIGKILLed: the source
/// host shows its processes `unknown`, their counters as last heard, and its own view goes
/// on.
fn each_launcher_shows_both_hosts_and_a_killed_host_as_unknown() -> Result<(), String> {
    let net = Net::new("view");
    net.deploy(&net.file(VIEW_NETWORK, QUAKE_PROCESSES), [SECRET, SECRET]);
    let server = net.launch_with(SINK, &VIEW_OPTIONS, "quake", &["live"]);
    let edge = net.launch_with(SOURCE, &VIEW_OPTIONS, "quake", &["live"]);
    let views = [
        (SOURCE, metrics_addr(&edge)?),
        (SINK, metrics_addr(&server)?),
    ];
    let both = [&edge, &server];

    // Each launcher: the other host's every process running, every agent stepping (alerts
    // too: a quake every 2.5 s), the link with both ends (max_in_flight: the reader's).
    let mut seen = Vec::new();
    for (i, at) in views {
        let other = 1 - i;
        let first = wait_view(&net, (i, at), "the other host running", &both, |v| {
            host_shown(v, other, ProcessStatus::Running)
                && QUAKE_PARTS[other]
                    .1
                    .iter()
                    .all(|a| agent(v, a).is_some_and(|a| a.steps > 0))
                && tcp_link(v).is_some_and(|l| {
                    l.transport == "tcp"
                        && l.ends == Some(LinkEnds::Both)
                        && l.elements > 0
                        && l.max_in_flight > 0
                })
        })?;
        let later = wait_view(
            &net,
            (i, at),
            "the other host's counters growing",
            &both,
            |v| host_shown(v, other, ProcessStatus::Running) && host_grew(&first, v, other),
        )?;
        seen.push(later);
    }

    // The reader stopped: the writer fills its unacknowledged budget, and the sink host's
    // launcher, which holds the reader's end, shows it from the source host's report.
    let detector = pid_of(&server.stderr(), "detector")
        .ok_or_else(|| format!("no pid for the detector\n{}", server.tail()))?;
    kill(detector, libc::SIGSTOP);
    let full = wait_view(&net, views[1], "the writer's full budget", &both, |v| {
        tcp_link(v).is_some_and(|l| l.unacked_bytes >= 65536)
    });
    kill(detector, libc::SIGCONT);
    full?;
    // Going on again, the writer has counted the time it waited: both launchers show it.
    for view in views {
        wait_view(&net, view, "the writer's time blocked", &both, |v| {
            tcp_link(v).is_some_and(|l| l.blocked_ns > 0 && l.ends == Some(LinkEnds::Both))
        })?;
    }

    // The sink host's launcher killed: its processes die with it, and the source host's
    // launcher shows them unknown, with what it last heard of them.
    server.signal(libc::SIGKILL);
    server.killed()?;
    let before = view_of(&net, SOURCE, views[0].1)?;
    let lost = wait_view(&net, views[0], "the killed host unknown", &[&edge], |v| {
        host_shown(v, SINK, ProcessStatus::Unknown)
    })?;
    for a in QUAKE_PARTS[SINK].1 {
        let (b, l) = (agent(&before, a), agent(&lost, a));
        ensure(
            matches!((b, l), (Some(b), Some(l)) if l.steps >= b.steps && l.steps > 0),
            || {
                format!(
                    "agent {a}'s counters went back:\n{}\n{}",
                    view_text(&before),
                    view_text(&lost)
                )
            },
        )?;
    }
    edge.wait_stderr("a warning that cloudbox's view cannot be had", |e| {
        e.contains("host 'cloudbox' (") && e.contains("its launcher's view cannot be had")
    })?;
    // The source host's own view goes on: made again and again, its own process running.
    let mut last = lost;
    for _ in 0..2 {
        let prev = last;
        last = wait_view(&net, views[0], "its own view going on", &[&edge], |v| {
            v.time_ms > prev.time_ms
                && host_shown(v, SOURCE, ProcessStatus::Running)
                && host_shown(v, SINK, ProcessStatus::Unknown)
                && matches!(
                    (process(&prev, "main"), process(v, "main")),
                    (Some(a), Some(b)) if b.up_s > a.up_s
                )
        })?;
    }
    drop(seen);
    Ok(())
}

/// A wrong secret on one host: each launcher refuses the other's requests for its view and
/// says so, says it cannot have the other's view, shows the other host's processes
/// `unknown`, and goes on running. (The link is refused too, which fails the source process
/// at once: here it is started again and again, so that its launcher stays.)
fn a_wrong_secret_leaves_the_other_host_unknown_in_the_view() -> Result<(), String> {
    let net = Net::new("view-secret");
    let processes = QUAKE_PROCESSES.replace(
        "[processes.main]\nhost = \"sensorbox\"\n",
        "[processes.main]\nhost = \"sensorbox\"\nrestart = \"on-failure\"\nmax_restarts = 1000\n\
         backoff_ms = 200\nmax_backoff_ms = 200\n",
    );
    net.deploy(
        &net.file(VIEW_NETWORK, &processes),
        [SECRET, "another secret, not the same one\n"],
    );
    let server = net.launch_with(SINK, &VIEW_OPTIONS, "quake", &["live"]);
    let edge = net.launch_with(SOURCE, &VIEW_OPTIONS, "quake", &["live"]);
    let views = [
        (SOURCE, metrics_addr(&edge)?),
        (SINK, metrics_addr(&server)?),
    ];
    let both = [&edge, &server];
    for (l, other) in [(&edge, SINK), (&server, SOURCE)] {
        // On loopback addresses a connection comes from 127.0.0.1, whatever the host.
        let from = match net.hosts.isolated() {
            true => format!("observation request from {}:", net.hosts.addr(other)),
            false => "observation request from ".to_string(),
        };
        l.wait_stderr("a refused request for its view", |e| {
            e.lines()
                .any(|line| line.contains(&from) && line.contains("refused: wrong proof"))
        })?;
        l.wait_stderr("a warning that the other's view cannot be had", |e| {
            e.contains(&format!("host '{}' (", HOST_NAMES[other]))
                && e.contains("its launcher's view cannot be had")
        })?;
    }
    for (i, at) in views {
        wait_view(&net, (i, at), "the other host unknown", &both, |v| {
            host_shown(v, 1 - i, ProcessStatus::Unknown)
        })?;
    }
    ensure(edge.alive() && server.alive(), || {
        format!("a launcher ended\n{}", tails(&edge, &server))
    })
}

/// Watermarks cross the TCP link between hosts in order with the data: the keyed event-time
/// windows computed on the second host are exactly those of one process, late count included.
fn event_time_windows_across_two_hosts_are_those_of_one_process() -> Result<(), String> {
    let pick = |text: &str, prefix: &str| -> Vec<String> {
        text.lines()
            .filter_map(|l| l.strip_prefix(prefix))
            .filter(|l| l.starts_with("WINDOW ") || l.starts_with("LATE "))
            .map(str::to_string)
            .collect()
    };
    let one = Command::new(own_exe())
        .args(["app", "event", "single"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(one.status.success(), || format!("one process: {one:?}"))?;
    let want = pick(&String::from_utf8_lossy(&one.stdout), "");
    ensure(want.len() > 1_000, || {
        format!("one process printed only {} lines", want.len())
    })?;
    ensure(want.last().is_some_and(|l| l != "LATE 0"), || {
        "the run has late readings".to_string()
    })?;

    let net = Net::new("event");
    let processes = "[processes.main]\nhost = \"sensorbox\"\n\n\
                     [processes.sink]\nhost = \"cloudbox\"\n";
    net.deploy(&net.file(NETWORK, processes), [SECRET, SECRET]);
    let server = net.launch(SINK, "event", &[]);
    let edge = net.launch(SOURCE, "event", &[]);
    let [_, (server_out, _)] = both_succeed(edge, server)?;
    let got = pick(&server_out, "[sink] ");
    ensure(got == want, || {
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        format!(
            "two hosts printed {} lines, one process {}; first difference at {first:?}",
            got.len(),
            want.len()
        )
    })
}

/// The harness itself: a scenario that fails (a panic) while launchers run in both hosts, with
/// processes, shared-memory rings and files, leaves nothing behind once its guards are dropped.
/// The launchers here run the app on one host each (no link between hosts), so this holds
/// whatever the state of the TCP transport.
fn a_failing_scenario_leaves_nothing_behind() -> Result<(), String> {
    let before = registry().launchers.len();
    const ON_PURPOSE: &str = "a scenario failing on purpose";
    // The panic on purpose prints nothing; any other is this scenario's failure.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let failed = std::panic::catch_unwind(|| {
        let net = Net::new("failing");
        // One host runs the whole app in two processes: a ring between them, and its lock.
        let file = "[hosts.sensorbox]\naddress = \"127.0.0.1\"\n\n\
                    [processes.work]\nagents = [\"record\"]\n";
        net.deploy(file, [SECRET, SECRET]);
        let a = net.launch(SOURCE, "endless", &["50"]);
        a.wait_stderr("data flowing", |e| e.contains("data flows"))
            .expect("the one-host run starts");
        assert!(!segments_of(a.pid()).is_empty(), "the run has rings");
        assert!(!run_pids(a.pid()).is_empty(), "the run has processes");
        panic!("{ON_PURPOSE}");
    });
    std::panic::set_hook(hook);
    match failed {
        Ok(()) => return Err("the scenario did not fail".to_string()),
        Err(payload) => {
            let what = panic_message(payload.as_ref());
            ensure(what == ON_PURPOSE, || format!("panicked: {what}"))?;
        }
    }
    let reg = registry();
    ensure(reg.launchers.len() > before, || {
        "no launcher was started".to_string()
    })?;
    let left = leftovers(&reg);
    ensure(left.is_empty(), || format!("left behind: {left:?}"))
}

/// The connection between the hosts crosses a NATS server (JetStream, `[broker] between`)
/// instead of a direct link: the source host runs to its end alone (the sink host is not up;
/// the broker keeps what was written), then the sink host, started afterwards, records every
/// index once, in order. The hosts never reach each other, only the server.
fn a_broker_between_the_hosts_keeps_what_the_sink_host_reads_later() -> Result<(), String> {
    let net = Net::new("broker");
    let nats = HostNats::start(&net, SOURCE)?;
    let broker = format!(
        "[broker]\nurl = \"{}\"\nbetween = [[\"sensorbox\", \"cloudbox\"]]\n\
         connect_wait_ms = 20000\nmax_messages = 100000\n\n",
        nats.url
    );
    net.deploy(
        &net.file(NETWORK, &format!("{broker}{INDEXED_PROCESSES}")),
        [SECRET, SECRET],
    );
    let n = 100_000u64;
    let count = n.to_string();
    let args = [count.as_str(), "0"];
    let source = net.launch(SOURCE, "indexed", &args);
    let (status, source_out, source_err) = source.wait()?;
    succeeded("sensorbox", status, &source_err)?;
    ensure(emitted(&source_out, "main") == Some(n), || {
        format!("the source's count: {source_out}")
    })?;
    ensure(!net.out(SINK).exists(), || {
        "the sink recorded something before its host started".to_string()
    })?;
    let sink = net.launch(SINK, "indexed", &args);
    let (status, sink_out, sink_err) = sink.wait()?;
    succeeded("cloudbox", status, &sink_err)?;
    exactly_once_in_order(&net.out(SINK), n)
        .map_err(|e| format!("{e}\n{}", tail_of("cloudbox", &sink_err)))?;
    ensure(result_count(&sink_out, "sink") == Some(n), || {
        format!("the sink's result: {sink_out}")
    })?;
    drop(nats);
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// How long a scenario may run before its waits give up.
const SCENARIO_DEADLINE: Duration = Duration::from_secs(90);
/// How long past its deadline a scenario may take to clean up before it is abandoned.
const GRACE: Duration = Duration::from_secs(30);

type Scenario = fn() -> Result<(), String>;

// ---------------------------------------------------------------------------------------------
// Operating commands across two hosts (found by an audit, 2026-12-07)

type Cli = (Option<i32>, String, String, f64, bool);

fn show(what: &str, r: &Cli) -> String {
    format!(
        "  {what}: exit {:?} after {:.1} s{}\n    stdout: {}\n    stderr: {}",
        r.0,
        r.3,
        if r.4 {
            " (KILLED: still running at the limit)"
        } else {
            ""
        },
        r.1.trim().replace('\n', "\n            "),
        r.2.trim().replace('\n', "\n            ")
    )
}

/// `iotstream restart APP sink` and `iotstream logs APP sink` asked on the source host, where
/// `sink` does not run: refused, and the refusal says which host runs it (`'cloudbox'`).
fn restart_or_logs_of_another_hosts_process_names_its_host() -> Result<(), String> {
    let net = Net::new("other-host");
    net.deploy(&net.file(NETWORK, INDEXED_PROCESSES), [SECRET, SECRET]);
    let sink = net.launch(SINK, "endless", &["200"]);
    let source = net.launch(SOURCE, "endless", &["200"]);
    wait_recorded(&net.out(SINK), 2_000, (&source, &sink))?;
    let restart = net.cli(
        SOURCE,
        &["restart", "hosts_endless", "sink"],
        Duration::from_secs(30),
    );
    let logs = net.cli(
        SOURCE,
        &["logs", "hosts_endless", "sink"],
        Duration::from_secs(30),
    );
    println!(
        "{}\n{}",
        show("restart sink on sensorbox", &restart),
        show("logs sink on sensorbox", &logs)
    );
    source.signal(libc::SIGINT);
    both_succeed(source, sink)?;
    let mut wrong = Vec::new();
    for (what, r) in [("restart", &restart), ("logs", &logs)] {
        if r.0 == Some(0) || r.4 || !r.2.contains("'cloudbox'") {
            wrong.push(format!(
                "{what} of 'sink' on sensorbox does not name host 'cloudbox':\n{}",
                show(what, r)
            ));
        }
    }
    ensure(wrong.is_empty(), || wrong.join("\n"))
}

/// The source host started alone (the sink host never comes): `iotstream stop` on it ends
/// in bounded time, and what it says names host 'cloudbox'.
fn a_stop_on_a_host_whose_reader_host_never_started_names_it() -> Result<(), String> {
    let net = Net::new("alone");
    net.deploy(
        &net.file(NETWORK, INDEXED_PROCESSES)
            .replace("drain_timeout_ms = 20000", "drain_timeout_ms = 10000"),
        [SECRET, SECRET],
    );
    let source = net.launch(SOURCE, "endless", &["200"]);
    source.wait_stderr("waiting for 'cloudbox'", |e| {
        e.lines()
            .any(|l| l.contains("'cloudbox'") && l.contains("wait"))
    })?;
    let r = net.cli(SOURCE, &["stop", "hosts_endless"], Duration::from_secs(40));
    println!("{}", show("stop on sensorbox, cloudbox never started", &r));
    let (st, out, err) = source.wait()?;
    println!(
        "  sensorbox ended: {st}\n{out}\n{}",
        tail_of("sensorbox", &err)
    );
    let stop_text = format!("{}{}", r.1, r.2);
    ensure(
        !r.4 && st.code() == Some(0)
            || stop_text
                .lines()
                .any(|l| l.contains("error") && l.contains("'cloudbox'")),
        || {
            format!(
                "the stop failed without naming host 'cloudbox' in its error:\n{}",
                show("stop", &r)
            )
        },
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("app") {
        let name = args.get(2).expect("usage: hosts app NAME ARGS…");
        if let Err(e) = app(name, &args[3..]) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    // libtest-style filtering: `cargo test --test hosts -- NAME` runs the scenarios whose name
    // contains NAME.
    let filter: Option<&str> = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(String::as_str);
    let scenarios: &[(&str, Scenario)] = &[
        (
            "a_stop_on_a_host_whose_reader_host_never_started_names_it",
            a_stop_on_a_host_whose_reader_host_never_started_names_it,
        ),
        (
            "restart_or_logs_of_another_hosts_process_names_its_host",
            restart_or_logs_of_another_hosts_process_names_its_host,
        ),
        (
            "a_failing_scenario_leaves_nothing_behind",
            a_failing_scenario_leaves_nothing_behind,
        ),
        (
            "runs_to_the_end_whichever_host_starts_first",
            runs_to_the_end_whichever_host_starts_first,
        ),
        (
            "the_host_started_first_says_which_host_it_waits_for",
            the_host_started_first_says_which_host_it_waits_for,
        ),
        (
            "ctrl_c_on_either_host_drains_both",
            ctrl_c_on_either_host_drains_both,
        ),
        (
            "ctrl_c_on_a_host_whose_peer_never_started_drains_it",
            ctrl_c_on_a_host_whose_peer_never_started_drains_it,
        ),
        (
            "the_quake_detector_across_two_hosts_detects_as_in_one_process",
            the_quake_detector_across_two_hosts_detects_as_in_one_process,
        ),
        (
            "each_launcher_shows_both_hosts_and_a_killed_host_as_unknown",
            each_launcher_shows_both_hosts_and_a_killed_host_as_unknown,
        ),
        (
            "a_wrong_secret_leaves_the_other_host_unknown_in_the_view",
            a_wrong_secret_leaves_the_other_host_unknown_in_the_view,
        ),
        (
            "event_time_windows_across_two_hosts_are_those_of_one_process",
            event_time_windows_across_two_hosts_are_those_of_one_process,
        ),
        (
            "link_cuts_and_killed_sockets_lose_and_duplicate_nothing",
            link_cuts_and_killed_sockets_lose_and_duplicate_nothing,
        ),
        (
            "a_link_cut_after_the_last_element_arrived_still_ends_well",
            a_link_cut_after_the_last_element_arrived_still_ends_well,
        ),
        (
            "a_killed_sink_process_restarted_by_its_launcher_loses_nothing",
            a_killed_sink_process_restarted_by_its_launcher_loses_nothing,
        ),
        (
            "a_killed_sink_host_started_again_completes_the_run",
            a_killed_sink_host_started_again_completes_the_run,
        ),
        (
            "a_killed_source_host_started_again_completes_the_run",
            a_killed_source_host_started_again_completes_the_run,
        ),
        (
            "a_wrong_secret_is_refused_on_both_sides",
            a_wrong_secret_is_refused_on_both_sides,
        ),
        (
            "no_secret_refused_unless_insecure",
            no_secret_refused_unless_insecure,
        ),
        (
            "tls_refuses_a_certificate_from_an_unknown_ca",
            tls_refuses_a_certificate_from_an_unknown_ca,
        ),
        (
            "a_broker_between_the_hosts_keeps_what_the_sink_host_reads_later",
            a_broker_between_the_hosts_keeps_what_the_sink_host_reads_later,
        ),
    ];
    let (mut passed, mut failed) = (0, 0);
    for &(name, f) in scenarios {
        if filter.is_some_and(|f| !name.contains(f)) {
            continue;
        }
        let started = Instant::now();
        match run_scenario(name, f) {
            Ok(()) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.1} s)",
                    started.elapsed().as_secs_f64()
                );
            }
            Err(e) => {
                failed += 1;
                println!(
                    "test {name} ... FAILED ({:.1} s)\n{e}",
                    started.elapsed().as_secs_f64()
                );
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed > 0 || passed == 0 {
        std::process::exit(1);
    }
}

/// A panic's message, when it is a string.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// Runs one scenario on a thread of its own (the processes it starts die with that thread at
/// the latest), with a deadline; then checks it left nothing behind.
fn run_scenario(name: &str, f: Scenario) -> Result<(), String> {
    let deadline = Instant::now() + SCENARIO_DEADLINE;
    let (done, result) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            DEADLINE.with(|d| d.set(Some(deadline)));
            let r = std::panic::catch_unwind(f)
                .unwrap_or_else(|payload| Err(format!("panicked: {}", panic_message(&*payload))));
            let _ = done.send(r);
        })
        .expect("spawn a scenario thread");
    let outcome = match result.recv_timeout(SCENARIO_DEADLINE + GRACE) {
        Ok(r) => r,
        Err(_) => {
            // Abandoned: remove what it made, and stop here (its thread cannot be stopped).
            let reg = registry();
            force_clean(&reg);
            println!(
                "test {name} ... FAILED: still running {} s after its deadline; removed what it \
                 made, stopping",
                GRACE.as_secs()
            );
            std::process::exit(1);
        }
    };
    let _ = thread.join();
    let mut reg = registry();
    let left = leftovers(&reg);
    if !left.is_empty() {
        force_clean(&reg);
    }
    *reg = Registry {
        launchers: Vec::new(),
        dirs: Vec::new(),
        namespaces: Vec::new(),
    };
    match (outcome, left.is_empty()) {
        (r, true) => r,
        (Ok(()), false) => Err(format!("left behind: {left:?}")),
        (Err(e), false) => Err(format!("{e}\nand left behind: {left:?}")),
    }
}
