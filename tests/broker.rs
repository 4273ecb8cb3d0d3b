//! Broker links (NATS JetStream) for real: a `nats-server -js` started by each scenario on a
//! free loopback port with a temporary store (`support/nats.rs`, always stopped), and the
//! application as separate processes (the starter, or the `iotstream` launcher with a
//! deployment file).
//!
//! This test has its own `main` (`harness = false`): run as `broker app NAME ARGS…` this binary
//! *is* the application NAME. Without arguments it runs every scenario and prints
//! `N passed, M failed`; `cargo test --test broker -- NAME` runs those whose name contains NAME.

#[path = "support/nats.rs"]
mod nats;
#[path = "support/suite.rs"]
mod suite;

#[path = "../examples/quake_detector.rs"]
mod quake;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use iotstream::{
    Agent, AgentError, BrokerOptions, Connection, Graph, Inputs, Outputs, SourceOptions, Transport,
};
use nats::NatsServer;

// ---------------------------------------------------------------------------------------------
// The applications

fn app(name: &str, args: &[String]) -> Result<(), iotstream::Error> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let num = |i: usize| arg(i).parse::<u64>().unwrap_or(0);
    match name {
        // pipe URL|- N CAPACITY STEP_MS
        "pipe" => pipe(&arg(0), num(1), num(2) as usize, num(3)),
        // big URL N BYTES: N elements of BYTES bytes each through the broker at URL.
        "big" => big(&arg(0), num(1), num(2) as usize),
        "quake" => quake::application(&quake::Config::default(), false)
            .run()
            .map(|_| ()),
        other => panic!("no application named {other}"),
    }
}

/// Records every element's index to `$OUT`, one line each, written once per step, after
/// sleeping `step`; then consumes the step's elements. A kill in the middle of a step leaves
/// them unconsumed (they come again) and may leave half a line (ended with `#torn` at the next
/// start).
struct Record {
    input: iotstream::Input<u64>,
    file: std::fs::File,
    step: Duration,
}

impl Agent for Record {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        let xs = i.slice(&self.input);
        if xs.is_empty() {
            return Ok(());
        }
        std::thread::sleep(self.step);
        let mut text = String::with_capacity(xs.len() * 8);
        for x in xs {
            text.push_str(&x.to_string());
            text.push('\n');
        }
        self.file.write_all(text.as_bytes())?;
        i.consume_all(&self.input);
        Ok(())
    }
}

/// Set for the `pipe` application: the token it gives the broker in code
/// ([`BrokerOptions::token`]).
const TOKEN_ENV: &str = "IOTSTREAM_TEST_BROKER_TOKEN";

/// `numbers` (0..n, batches of at most 100) → `record` (in process `sink`). With a URL, the
/// connection is forced through that broker in code; with `-`, a deployment file says how.
fn pipe(url: &str, n: u64, capacity: usize, step_ms: u64) -> Result<(), iotstream::Error> {
    let mut g = Graph::new("broker_pipe");
    let opts = SourceOptions {
        max_batch: 100,
        ..SourceOptions::default()
    };
    let numbers = g.source_iter_with("numbers", 0..n, opts);
    let input = g.add_agent("record", |p| {
        let input = p.input::<u64>("in");
        let file = open_out();
        let agent = Record {
            input,
            file,
            step: Duration::from_millis(step_ms),
        };
        (agent, input)
    });
    let mut conn = Connection::new().capacity(capacity.max(1));
    if url != "-" {
        match std::env::var(TOKEN_ENV) {
            // The token in code (every process of the run inherits the variable, so each
            // builds the same graph).
            Ok(token) => g.use_broker_with(
                BrokerOptions::new(url)
                    .token(&token)
                    .connect_wait(Duration::from_secs(600)),
            ),
            Err(_) => g.use_broker(url),
        };
        conn = conn.transport(Transport::Broker);
    }
    g.connect_with(&numbers, &input, conn);
    g.place_in_process("record", "sink");
    let metrics = g.run()?;
    if let Some(l) = metrics.link("numbers.out", "record") {
        println!("LINK dropped {}", l.dropped);
        println!("LINK elements {}", l.elements);
        println!("LINK bytes {}", l.bytes);
    }
    Ok(())
}

/// `blobs` (n elements of `bytes` bytes) → `count`, in one process, through the broker at
/// `url`.
fn big(url: &str, n: u64, bytes: usize) -> Result<(), iotstream::Error> {
    let mut g = Graph::new("broker_big");
    let blobs = g.source_iter("blobs", (0..n).map(move |i| vec![i as u8; bytes]));
    let seen = g.add_agent("count", |p| {
        let input = p.input::<Vec<u8>>("in");
        (Count { input }, input)
    });
    g.use_broker(url);
    g.connect_with(
        &blobs,
        &seen,
        Connection::new().transport(Transport::Broker),
    );
    g.run().map(|_| ())
}

/// Consumes everything it is given.
struct Count {
    input: iotstream::Input<Vec<u8>>,
}

impl Agent for Count {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        i.consume_all(&self.input);
        Ok(())
    }
}

/// `$OUT`, opened for appending; a torn last line (a kill mid-write) is ended with `#torn`.
fn open_out() -> std::fs::File {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(std::env::var_os("OUT").expect("$OUT"))
        .expect("open $OUT");
    let mut last = [0u8; 1];
    if f.seek(SeekFrom::End(-1)).is_ok() && f.read_exact(&mut last).is_ok() && last[0] != b'\n' {
        f.write_all(b"#torn\n").expect("write $OUT");
    }
    f
}

// ---------------------------------------------------------------------------------------------
// Running applications

fn own_exe() -> PathBuf {
    std::env::current_exe().expect("own path")
}

/// A started command whose output is collected as it comes; killed (with every process of its
/// run) when dropped.
struct Running {
    child: Child,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

fn collect(
    pipe: impl std::io::Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            let mut s = into.lock().unwrap();
            s.push_str(&line);
            s.push('\n');
        }
    })
}

impl Running {
    /// `program ARGS` with `OUT=out` (and `RUST_LOG=info`, for the launcher's process lines).
    fn start(program: &Path, args: &[&str], out: &Path) -> Running {
        Running::start_with_env(program, args, out, &[])
    }

    /// As [`Running::start`], with environment variables `env` set.
    fn start_with_env(program: &Path, args: &[&str], out: &Path, env: &[(&str, &str)]) -> Running {
        let mut child = Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .env("OUT", out)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the application");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&out)),
            collect(child.stderr.take().unwrap(), Arc::clone(&err)),
        ];
        Running {
            child,
            out,
            err,
            readers,
        }
    }

    /// This binary as application `name` (the starter runs its other processes itself).
    fn app(name: &str, args: &[&str], out: &Path) -> Running {
        Running::app_with_env(name, args, out, &[])
    }

    /// As [`Running::app`], with environment variables `env` set.
    fn app_with_env(name: &str, args: &[&str], out: &Path, env: &[(&str, &str)]) -> Running {
        let mut a = vec!["app", name];
        a.extend_from_slice(args);
        Running::start_with_env(&own_exe(), &a, out, env)
    }

    /// `iotstream run <this binary> --deploy FILE -- app NAME ARGS…`.
    fn launched(name: &str, args: &[&str], deploy: &Path, out: &Path) -> Running {
        let exe = own_exe();
        let deploy = deploy.to_str().expect("a UTF-8 path");
        let mut a = vec![
            "run",
            exe.to_str().expect("a UTF-8 path"),
            "--deploy",
            deploy,
            "--",
            "app",
            name,
        ];
        a.extend_from_slice(args);
        Running::start(Path::new(env!("CARGO_BIN_EXE_iotstream")), &a, out)
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits (bounded: a hang guard, not a speed claim) until `cond` holds on stderr.
    fn wait_stderr(&self, what: &str, cond: impl Fn(&str) -> bool) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if cond(&self.stderr()) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Err(format!("never saw {what} on stderr:\n{}", self.stderr()))
    }

    /// Waits for the end (bounded); returns the status, stdout and stderr.
    fn wait(mut self) -> Result<(ExitStatus, String, String), String> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                let out = self.out.lock().unwrap().clone();
                let err = self.err.lock().unwrap().clone();
                return Ok((status, out, err));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "the application did not end within 120 s; stderr:\n{}",
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let owner = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in run_pids(owner) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// Pids of the processes of the run owned by `owner` (their role names its run).
fn run_pids(owner: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
            continue;
        };
        let run = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .find_map(|v| v.strip_prefix("IOTSTREAM_RUN=").map(str::to_string));
        if run.is_some_and(|r| r.split('-').next() == Some(&owner.to_string())) {
            out.push(pid);
        }
    }
    out
}

/// The pid the launcher last reported for `process`.
fn pid_of(stderr: &str, process: &str) -> Option<u32> {
    let key = format!("process '{process}' started (pid ");
    stderr
        .lines()
        .rev()
        .find_map(|l| l.split_once(&key).map(|(_, r)| r))
        .and_then(|r| r.trim_end_matches(')').parse().ok())
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

fn recorded(out: &Path) -> usize {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .count()
}

/// The indices recorded in `out` (torn lines left out), in order.
fn indices(out: &Path) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(out).map_err(|e| e.to_string())?;
    let mut v = Vec::new();
    for line in text.lines() {
        match line.parse::<u64>() {
            Ok(i) => v.push(i),
            Err(_) => ensure(line == "#torn" || line.is_empty(), || {
                format!("a bad line in the output: {line:?}")
            })?,
        }
    }
    Ok(v)
}

/// Every index of 0..n recorded in `out` exactly once, in order (no restart, nothing lost).
fn exactly_once_in_order(out: &Path, n: u64) -> Result<(), String> {
    let seen = indices(out)?;
    check_indices(&seen, n, 0, 0)?;
    ensure(seen.len() == n as usize, || {
        format!("{} lines for {n} elements", seen.len())
    })
}

/// Checks that `seen` holds every index below `n`, and that it is 0, 1, 2, … in order except
/// where a restarted reader went back: at most `restarts` times, each time by at most `bound`
/// elements (those not acknowledged when it died). Returns the elements delivered again.
fn check_indices(seen: &[u64], n: u64, restarts: usize, bound: u64) -> Result<u64, String> {
    let mut expected = 0u64;
    let mut back = 0;
    let mut again = 0;
    for (at, &i) in seen.iter().enumerate() {
        if i == expected {
            expected += 1;
            continue;
        }
        ensure(i < expected, || {
            format!(
                "element {i} at line {at} after {}: {} lost",
                expected - 1,
                i - expected
            )
        })?;
        back += 1;
        ensure(back <= restarts, || {
            format!(
                "the stream went back at line {at} ({i} after {}): more than {restarts} restarts",
                expected - 1
            )
        })?;
        let dup = expected - i;
        ensure(dup <= bound, || {
            format!(
                "a restart went back {dup} elements (from {} to {i}), over the bound {bound}",
                expected - 1
            )
        })?;
        again += dup;
        expected = i + 1;
    }
    ensure(expected == n, || {
        format!(
            "{} of {n} elements arrived (the last {})",
            expected,
            expected.saturating_sub(1)
        )
    })?;
    Ok(again)
}

// ---------------------------------------------------------------------------------------------
// The scenarios

/// In one process, a connection forced through the broker gives what an in-process one gives,
/// and its counters say what crossed.
fn forced_in_one_process_matches_local() -> Result<(), String> {
    let server = NatsServer::start();
    let run = |broker: Option<&str>| -> Result<(Vec<u64>, u64, u64), String> {
        let mut g = Graph::new("broker_forced");
        let s = g.source_iter("numbers", 0..200_000u64);
        let tripled = g.map("triple", &s, |v: &u64| v * 3);
        let (input, out) = g.add_agent("odd", |p| {
            let input = p.input::<u64>("in");
            let out = p.output::<u64>("out");
            (Odd { input, out }, (input, out))
        });
        let mut conn = Connection::new().capacity(1024);
        if let Some(url) = broker {
            g.use_broker(url);
            conn = conn.transport(Transport::Broker);
        }
        g.connect_with(&tripled, &input, conn);
        let c = g.collect("out", &out);
        let metrics = g.run().map_err(|e| e.to_string())?;
        let l = metrics
            .link("triple.out", "odd")
            .ok_or("no counters for the link")?;
        Ok((c.values(), l.bytes, l.elements))
    };
    let (local, local_bytes, _) = run(None)?;
    let (broker, bytes, elements) = run(Some(&server.url()))?;
    ensure(local.len() == 100_000, || {
        format!("{} odd numbers", local.len())
    })?;
    ensure(broker == local, || {
        "not the same elements in the same order".into()
    })?;
    ensure(local_bytes == 0, || {
        "an in-process link moves no bytes".into()
    })?;
    ensure(elements == 200_000, || {
        format!("{elements} elements counted")
    })?;
    // Plain data crosses as its bytes: 8 per element (counted by the writer).
    ensure(bytes >= 1_600_000, || format!("{bytes} bytes counted"))?;
    Ok(())
}

struct Odd {
    input: iotstream::Input<u64>,
    out: iotstream::Stream<u64>,
}

impl Agent for Odd {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        o.extend(
            &self.out,
            i.slice(&self.input).iter().copied().filter(|v| v % 2 == 1),
        );
        i.consume_all(&self.input);
        Ok(())
    }
}

/// Two processes (the starter runs `sink` itself): every element arrives, in order, once,
/// then the end of stream, and both processes end well.
fn two_processes_deliver_everything_in_order() -> Result<(), String> {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let n = 200_000u64;
    let run = Running::app("pipe", &[&server.url(), &n.to_string(), "1024", "0"], &out);
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    exactly_once_in_order(&out, n)
}

/// The deployment file of the pipe under the launcher: the sink restarts on failure and the
/// connection goes through the broker at `url`.
fn pipe_deployment(url: &str) -> String {
    format!(
        "[broker]\nurl = \"{url}\"\n\n[processes.sink]\nagents = [\"record\"]\n\
         restart = \"on-failure\"\nmax_restarts = 5\nbackoff_ms = 20\n\n\
         [[connections]]\nstream = \"numbers.out\"\ntransport = \"broker\"\n"
    )
}

/// 1 000 000 indexed elements; the reading process is SIGKILLed twice and restarted by the
/// launcher: nothing is lost, the order is kept, and each restart repeats at most what the
/// broker had not had acknowledged (see `transport::broker`: at most the consumer's
/// `max_ack_pending` messages of at most 100 elements each here).
fn reader_killed_twice_loses_nothing() -> Result<(), String> {
    const KILLS: usize = 2;
    let server = NatsServer::start();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let deploy = dir.path().join("pipe.toml");
    std::fs::write(&deploy, pipe_deployment(&server.url())).map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let (n, capacity) = (1_000_000u64, 1024u64);
    let run = Running::launched(
        "pipe",
        &["-", &n.to_string(), &capacity.to_string(), "2"],
        &deploy,
        &out,
    );
    for kill in 1..=KILLS {
        run.wait_stderr("the sink started", |e| pid_of(e, "sink").is_some())?;
        let pid = pid_of(&run.stderr(), "sink").ok_or_else(|| run.stderr())?;
        // Kill once the sink made progress since it (re)started, with most of the stream left.
        let from = recorded(&out);
        let deadline = Instant::now() + Duration::from_secs(60);
        while recorded(&out) < from + n as usize / 5 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        if kill < KILLS {
            run.wait_stderr("the sink restarted", |e| {
                pid_of(e, "sink").is_some_and(|p| p != pid)
            })?;
        }
    }
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    let kills = stderr
        .matches("process 'sink' was killed by signal 9")
        .count();
    ensure(kills == KILLS, || {
        format!("{kills} kills of 'sink' reported, {KILLS} made:\n{stderr}")
    })?;
    // What a killed reader may not have had acknowledged: the consumer's max_ack_pending
    // (capacity + 2 pulls of 64) messages of at most 100 elements.
    let bound = (capacity + 2 * 64) * 100;
    let again = check_indices(&indices(&out)?, n, KILLS, bound)?;
    eprintln!("  ({KILLS} kills, {again} elements delivered again, bound {bound} per kill)");
    Ok(())
}

/// A scratch folder with `pipe.toml`: `numbers.out` through `server`, its stream limited to
/// 128 messages (so that the writer waits at that limit), the sink in a process of its own.
fn pipe_limited_to_128_messages(
    server: &NatsServer,
) -> Result<(tempfile::TempDir, PathBuf), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let deploy = dir.path().join("pipe.toml");
    std::fs::write(
        &deploy,
        format!(
            "[broker]\nurl = \"{}\"\nmax_messages = 128\nmax_pending = 8\n\n\
             [processes.sink]\nagents = [\"record\"]\n\n\
             [[connections]]\nstream = \"numbers.out\"\ntransport = \"broker\"\n",
            server.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    Ok((dir, deploy))
}

/// The NATS server stopped and started again (same port, same store) while the stream flows,
/// with the connection's JetStream stream limited to 128 messages (of 3 000), so that the
/// writer waits at that limit (policy `block`) and publishes across the restart too:
/// nothing is lost, nothing repeated, the order kept.
fn server_restarted_mid_run_loses_nothing() -> Result<(), String> {
    let mut server = NatsServer::start();
    let (dir, deploy) = pipe_limited_to_128_messages(&server)?;
    let out = dir.path().join("out.txt");
    let n = 300_000u64;
    let run = Running::launched("pipe", &["-", &n.to_string(), "1024", "3"], &deploy, &out);
    run.wait_stderr("the writer waiting at the stream's limit", |e| {
        e.contains("is at its limit")
    })?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while recorded(&out) < 30_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    ensure(recorded(&out) < n as usize / 2, || {
        "the stream was half over before the server could be restarted".into()
    })?;
    server.restart();
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || {
        format!("exit {status}:\n{stderr}\nserver log:\n{}", server.log())
    })?;
    exactly_once_in_order(&out, n)
}

/// At the stream's limit (128 messages, of 3 000; the writer's own bound, 4096 messages or
/// 16 MiB awaiting PubAcks, is far above it) a drop policy drops what the server
/// refuses and counts it instead of waiting: what arrives is in order and never twice, and what arrived plus
/// what the writer counted as dropped is everything sent.
fn a_drop_policy_drops_and_counts_at_the_streams_limit() -> Result<(), String> {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let deploy = dir.path().join("pipe.toml");
    std::fs::write(
        &deploy,
        format!(
            "[broker]\nurl = \"{}\"\nmax_messages = 128\nmax_pending = 4096\n\n\
             [processes.sink]\nagents = [\"record\"]\n\n\
             [[connections]]\nstream = \"numbers.out\"\ntransport = \"broker\"\n\
             policy = \"drop-newest\"\n",
            server.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let n = 300_000u64;
    let run = Running::launched("pipe", &["-", &n.to_string(), "1024", "3"], &deploy, &out);
    let (status, stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    let dropped: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[main] LINK dropped "))
        .and_then(|d| d.trim().parse().ok())
        .ok_or_else(|| format!("the writer reported no drop count:\n{stdout}"))?;
    let seen = indices(&out)?;
    ensure(seen.windows(2).all(|w| w[0] < w[1]), || {
        "what arrived is not in order, or came twice".into()
    })?;
    ensure(dropped > 0, || {
        format!(
            "nothing dropped although the stream was at its limit ({} arrived)",
            seen.len()
        )
    })?;
    ensure(seen.len() as u64 + dropped == n, || {
        format!("{} arrived + {dropped} dropped, {n} sent", seen.len())
    })?;
    eprintln!("  ({} arrived, {dropped} dropped)", seen.len());
    Ok(())
}

/// The quake detector with its detection stage behind the broker (a deployment file): the same
/// detections as in one process.
fn quake_detector_behind_the_broker_detects_as_in_one_process() -> Result<(), String> {
    let cfg = quake::Config::default();
    let mut g = Graph::new("quake_detector");
    let h = quake::build(&mut g, &cfg);
    let found = g.collect("detections", &h.detections);
    g.run().map_err(|e| e.to_string())?;
    let expected: Vec<u64> = found.values().iter().map(|d| d.sample).collect();
    ensure(!expected.is_empty(), || {
        "no detection in one process".into()
    })?;

    let server = NatsServer::start();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let deploy = dir.path().join("quake.toml");
    std::fs::write(
        &deploy,
        format!(
            "[broker]\nurl = \"{}\"\n\n[[connections]]\nstream = \"seismometer.out\"\n\
             transport = \"broker\"\n",
            server.url()
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = dir.path().join("unused.txt");
    let run = Running::launched("quake", &[], &deploy, &out);
    let (status, stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    let samples: Vec<u64> = stdout
        .lines()
        .filter(|l| l.contains("QUAKE at"))
        .filter_map(|l| {
            l.split_once("(sample ")
                .and_then(|(_, r)| r.split(',').next())
                .and_then(|s| s.trim().parse().ok())
        })
        .collect();
    ensure(samples == expected, || {
        format!("detections at samples {samples:?}, in one process {expected:?}:\n{stdout}")
    })?;
    let stream =
        Graph::broker_stream_name("quake_detector", "seismometer", "out", "sta_lta", "samples");
    ensure(server.has_stream(&stream), || {
        format!("the samples did not cross the broker: no JetStream stream {stream}")
    })
}

// ---------------------------------------------------------------------------------------------
// Authentication and TLS towards the server

/// The pipe through the broker at `url` with `broker` (more `[broker]` lines: credentials,
/// TLS) from a deployment file in `dir`; `connect_wait_ms` is long, so that a failure that
/// waited for it instead of failing at once would be caught by `wait`'s hang guard.
fn run_pipe_with(
    dir: &Path,
    url: &str,
    broker: &str,
    n: u64,
) -> Result<(ExitStatus, String, String), String> {
    let deploy = dir.join("pipe.toml");
    std::fs::write(
        &deploy,
        format!(
            "[broker]\nurl = \"{url}\"\nconnect_wait_ms = 600000\n{broker}\n\n\
             [processes.sink]\nagents = [\"record\"]\n\n\
             [[connections]]\nstream = \"numbers.out\"\ntransport = \"broker\"\n"
        ),
    )
    .map_err(|e| e.to_string())?;
    let out = dir.join("out.txt");
    let _ = std::fs::remove_file(&out);
    Running::launched("pipe", &["-", &n.to_string(), "1024", "0"], &deploy, &out).wait()
}

/// The right secret: every element arrives, in order, once, and the writer counted them.
fn delivers_with(dir: &Path, url: &str, broker: &str) -> Result<(), String> {
    let n = 20_000u64;
    let (status, stdout, stderr) = run_pipe_with(dir, url, broker, n)?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    exactly_once_in_order(&dir.join("out.txt"), n)?;
    let counted: Option<u64> = stdout
        .lines()
        .find_map(|l| l.strip_prefix("[main] LINK elements "))
        .and_then(|d| d.trim().parse().ok());
    ensure(counted == Some(n), || {
        format!("the writer counted {counted:?} elements, {n} sent:\n{stdout}")
    })
}

/// A wrong or missing secret: the application fails (at once: `connect_wait_ms` is 10 min,
/// `wait` gives up after 2) with an error naming the server and each of `says`; nothing
/// arrives.
fn refused_with(dir: &Path, url: &str, broker: &str, says: &[&str]) -> Result<(), String> {
    let (status, _, stderr) = run_pipe_with(dir, url, broker, 1_000)?;
    ensure(!status.success(), || {
        format!("the run succeeded with [broker] {broker:?}:\n{stderr}")
    })?;
    let line = stderr
        .lines()
        .find(|l| l.contains("error") && l.contains(url))
        .ok_or_else(|| format!("no error naming the server {url}:\n{stderr}"))?;
    for s in says {
        ensure(line.contains(s), || {
            format!("the error does not say '{s}': {line}\nstderr:\n{stderr}")
        })?;
    }
    ensure(recorded(&dir.join("out.txt")) == 0, || {
        "elements arrived although the server refused the client".into()
    })?;
    eprintln!("  ({})", line.trim());
    Ok(())
}

/// A private file (mode 600) in `dir` holding `text`; its path, for a deployment file.
fn secret_file(dir: &Path, name: &str, text: &str) -> Result<String, String> {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, text).map_err(|e| e.to_string())?;
    // Only its owner may read a secret (the launcher refuses it otherwise).
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok(p.to_str().ok_or("a UTF-8 path")?.to_string())
}

/// A server that asks for a token: the right one (from `token_file`) delivers; a wrong one
/// and none fail at once, naming the server and what was wrong.
fn token_right_delivers_wrong_or_missing_fails_clearly() -> Result<(), String> {
    let server = NatsServer::start_with("authorization { token: \"fleet-token-1\" }\n");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let right = secret_file(dir.path(), "right.token", "fleet-token-1\n")?;
    let wrong = secret_file(dir.path(), "wrong.token", "fleet-token-2\n")?;
    let url = server.url();
    delivers_with(dir.path(), &url, &format!("token_file = \"{right}\""))?;
    refused_with(
        dir.path(),
        &url,
        &format!("token_file = \"{wrong}\""),
        &[
            "refused the credentials",
            "authorization violation",
            "token_file",
        ],
    )?;
    refused_with(
        dir.path(),
        &url,
        "",
        &["refused the credentials", "no credentials", "token_file"],
    )
}

/// The same in code, without a deployment file (`Graph::use_broker_with` with
/// `BrokerOptions::token`, in both processes of the run): the right token delivers, a wrong
/// one fails at once naming the server; and what is wrong with the options is an error of
/// `start` naming each problem, never showing a secret.
fn token_in_code_right_delivers_wrong_fails_and_bad_options_are_named() -> Result<(), String> {
    let server = NatsServer::start_with("authorization { token: \"fleet-token-1\" }\n");
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let url = server.url();
    let n = 20_000u64;
    let args = [url.as_str(), &n.to_string(), "1024", "0"].map(str::to_string);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = Running::app_with_env("pipe", &args, &out, &[(TOKEN_ENV, "fleet-token-1")]);
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    exactly_once_in_order(&out, n)?;

    let _ = std::fs::remove_file(&out);
    let run = Running::app_with_env("pipe", &args, &out, &[(TOKEN_ENV, "fleet-token-2")]);
    let (status, _, stderr) = run.wait()?;
    ensure(!status.success(), || {
        format!("a wrong token in code succeeded:\n{stderr}")
    })?;
    ensure(
        stderr
            .lines()
            .any(|l| l.contains(&url) && l.contains("refused the credentials")),
        || format!("no error naming {url} and the refusal:\n{stderr}"),
    )?;
    ensure(recorded(&out) == 0, || {
        "elements arrived with a wrong token".into()
    })?;

    let mut g = Graph::new("bad_options");
    g.use_broker_with(
        BrokerOptions::new("nats://fleet:s3cret@127.0.0.1:1")
            .token("t0ken-secret")
            .user("fleet", "pa55word")
            .max_bytes(5)
            .max_pending(0),
    );
    let numbers = g.source_iter("numbers", 0..10u64);
    let sink = g.add_agent("record", |p| {
        let input = p.input::<u64>("in");
        (Drain(input), input)
    });
    g.connect_with(
        &numbers,
        &sink,
        Connection::new().transport(Transport::Broker),
    );
    let err = match g.start() {
        Ok(_) => return Err("bad broker options were accepted".into()),
        Err(e) => e.to_string(),
    };
    for says in [
        "BrokerOptions: url must not hold a user or password",
        "one way to authenticate: token, user or creds_file; found token and user",
        "max_bytes must be at least 1048576, found 5",
        "max_pending must be 1 to 65536, found 0",
    ] {
        ensure(err.contains(says), || {
            format!("the error does not say '{says}': {err}")
        })?;
    }
    for secret in ["s3cret", "t0ken-secret", "pa55word"] {
        ensure(!err.contains(secret), || {
            format!("the error shows a secret: {err}")
        })?;
    }
    Ok(())
}

/// Consumes and drops everything.
struct Drain(iotstream::Input<u64>);

impl Agent for Drain {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        i.consume_all(&self.0);
        Ok(())
    }
}

/// A server with users: the right user and password (from `password_file`) deliver; a wrong
/// password fails at once, naming the server and the user.
fn user_and_password_right_delivers_wrong_fails_clearly() -> Result<(), String> {
    let server = NatsServer::start_with(
        "authorization { users = [ { user: \"fleet\", password: \"pass-1\" } ] }\n",
    );
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let right = secret_file(dir.path(), "right.pass", "pass-1\n")?;
    let wrong = secret_file(dir.path(), "wrong.pass", "pass-2\n")?;
    let url = server.url();
    delivers_with(
        dir.path(),
        &url,
        &format!("user = \"fleet\"\npassword_file = \"{right}\""),
    )?;
    refused_with(
        dir.path(),
        &url,
        &format!("user = \"fleet\"\npassword_file = \"{wrong}\""),
        &[
            "refused the credentials",
            "authorization violation",
            "user 'fleet'",
        ],
    )
}

/// A CA and a server certificate for 127.0.0.1 it signed, and another CA, as PEM files in
/// `dir`: (ca, server cert, server key, other ca).
fn tls_files(dir: &Path) -> Result<[String; 4], String> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let e = |e: rcgen::Error| e.to_string();
    let ca = |name: &str| -> Result<(CertificateParams, KeyPair, String), String> {
        let key = KeyPair::generate().map_err(e)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).map_err(e)?.pem();
        Ok((params, key, pem))
    };
    let (ca_params, ca_key, ca_pem) = ca("nats test CA")?;
    let (_, _, other_pem) = ca("another CA")?;
    let key = KeyPair::generate().map_err(e)?;
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .map_err(e)?
        .signed_by(&key, &Issuer::from_params(&ca_params, &ca_key))
        .map_err(e)?;
    Ok([
        secret_file(dir, "ca.pem", &ca_pem)?,
        secret_file(dir, "server.pem", &cert.pem())?,
        secret_file(dir, "server.key", &key.serialize_pem())?,
        secret_file(dir, "other-ca.pem", &other_pem)?,
    ])
}

/// A server that speaks only TLS: the CA that signed its certificate (`tls_ca`) delivers, with
/// a `nats://` or a `tls://` URL; no `tls_ca` and another CA fail at once, naming the server
/// and TLS.
fn tls_right_ca_delivers_missing_or_other_ca_fails_clearly() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let [ca, cert, key, other] = tls_files(dir.path())?;
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n"
    ));
    let url = server.url();
    let tls_url = format!("tls://127.0.0.1:{}", server.port);
    delivers_with(dir.path(), &url, &format!("tls_ca = \"{ca}\""))?;
    delivers_with(dir.path(), &tls_url, &format!("tls_ca = \"{ca}\""))?;
    refused_with(dir.path(), &url, "", &["TLS", "tls_ca"])?;
    refused_with(
        dir.path(),
        &tls_url,
        &format!("tls_ca = \"{other}\""),
        &["TLS", "UnknownIssuer", "tls_ca"],
    )
}

/// Runs one after the other on one server (over TLS, where acknowledgements take longest to
/// go out) each get exactly the elements of their own run: the reading process of a run that
/// ended well exits only once its last acknowledgements reached the server (else the broker
/// keeps those messages, and the next run's reader gets them first).
fn consecutive_runs_each_get_exactly_their_own_elements() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let [ca, cert, key, _] = tls_files(dir.path())?;
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n"
    ));
    for run in 1..=4 {
        delivers_with(dir.path(), &server.url(), &format!("tls_ca = \"{ca}\""))
            .map_err(|e| format!("run {run}: {e}"))?;
    }
    Ok(())
}

/// A client that asks for TLS (`tls_ca`) of a server without TLS fails at once, naming the
/// server and TLS; a server that asks for a token and TLS at once takes both.
fn tls_towards_a_plain_server_fails_clearly_and_tls_with_a_token_delivers() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let [ca, cert, key, _] = tls_files(dir.path())?;
    let plain = NatsServer::start();
    refused_with(
        dir.path(),
        &plain.url(),
        &format!("tls_ca = \"{ca}\""),
        &["TLS", "does the server speak TLS"],
    )?;
    drop(plain);
    let server = NatsServer::start_with(&format!(
        "tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n\
         authorization {{ token: \"fleet-token-1\" }}\n"
    ));
    let token = secret_file(dir.path(), "right.token", "fleet-token-1")?;
    delivers_with(
        dir.path(),
        &server.url(),
        &format!("tls_ca = \"{ca}\"\ntoken_file = \"{token}\""),
    )
}

/// A NATS JWT (the `ed25519-nkey` kind nsc writes): `claims` of `subject`, signed by `issuer`.
fn nats_jwt(
    issuer: &nkeys::KeyPair,
    subject: &str,
    name: &str,
    nats: serde_json::Value,
) -> Result<String, String> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let iat = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let claims = serde_json::json!({
        "jti": format!("{name}{iat}"),
        "iat": iat,
        "iss": issuer.public_key(),
        "name": name,
        "sub": subject,
        "nats": nats,
    });
    let signed = format!(
        "{}.{}",
        b64(br#"{"typ":"JWT","alg":"ed25519-nkey"}"#),
        b64(claims.to_string().as_bytes())
    );
    let signature = issuer.sign(signed.as_bytes()).map_err(|e| e.to_string())?;
    Ok(format!("{signed}.{}", b64(&signature)))
}

/// An operator-mode server setup, as nsc makes one: an operator, an account it signed (with
/// JetStream), and the server's configuration trusting them; `user_creds` writes a user of an
/// account into a credentials file (its JWT and its seed, nsc's format).
struct Operator {
    operator: nkeys::KeyPair,
    /// The server's own account (JetStream needs one).
    system: nkeys::KeyPair,
    account: nkeys::KeyPair,
}

impl Operator {
    fn new() -> Operator {
        Operator {
            operator: nkeys::KeyPair::new_operator(),
            system: nkeys::KeyPair::new_account(),
            account: nkeys::KeyPair::new_account(),
        }
    }

    /// The server's configuration: the operator's JWT, the system account and the account
    /// preloaded.
    fn server_config(&self) -> Result<String, String> {
        let op = self.operator.public_key();
        let system = self.system.public_key();
        let operator_jwt = nats_jwt(
            &self.operator,
            &op,
            "fleet-operator",
            serde_json::json!({ "system_account": system, "type": "operator", "version": 2 }),
        )?;
        let system_jwt = nats_jwt(
            &self.operator,
            &system,
            "SYS",
            serde_json::json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2
            }),
        )?;
        let account = self.account.public_key();
        let account_jwt = nats_jwt(
            &self.operator,
            &account,
            "fleet",
            serde_json::json!({
                "limits": {
                    "subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                    "wildcards": true, "conn": -1, "leaf": -1,
                    "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1
                },
                "default_permissions": { "pub": {}, "sub": {} },
                "type": "account",
                "version": 2
            }),
        )?;
        Ok(format!(
            "operator: \"{operator_jwt}\"\nsystem_account: {system}\nresolver: MEMORY\n\
             resolver_preload: {{\n  {system}: \"{system_jwt}\"\n  {account}: \"{account_jwt}\"\n}}\n"
        ))
    }

    /// A credentials file in `dir` for a new user signed by `account`.
    fn user_creds(dir: &Path, file: &str, account: &nkeys::KeyPair) -> Result<String, String> {
        let user = nkeys::KeyPair::new_user();
        let jwt = nats_jwt(
            account,
            &user.public_key(),
            "sensor",
            serde_json::json!({
                "pub": {}, "sub": {}, "subs": -1, "data": -1, "payload": -1,
                "type": "user", "version": 2
            }),
        )?;
        let seed = user.seed().map_err(|e| e.to_string())?;
        secret_file(
            dir,
            file,
            &format!(
                "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
                 ************************* IMPORTANT *************************\n\
                 NKEY Seed printed below can be used to sign and prove identity.\n\
                 NKEYs are sensitive and should be treated as secrets.\n\n\
                 -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
                 *************************************************************\n"
            ),
        )
    }
}

/// A server in operator mode (JWT authentication, as `nsc` sets one up): a credentials file of
/// a user of its account (`creds`) delivers; a user of an account the server does not know,
/// and a file that is no credentials file, fail at once, naming the server and the file.
fn creds_of_the_account_deliver_another_accounts_fail_clearly() -> Result<(), String> {
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let setup = Operator::new();
    let server = NatsServer::start_with(&setup.server_config()?);
    let right = Operator::user_creds(dir.path(), "sensor.creds", &setup.account)?;
    let stranger =
        Operator::user_creds(dir.path(), "stranger.creds", &nkeys::KeyPair::new_account())?;
    let garbage = secret_file(dir.path(), "garbage.creds", "not a credentials file\n")?;
    let url = server.url();
    delivers_with(dir.path(), &url, &format!("creds = \"{right}\""))
        .map_err(|e| format!("{e}\nserver log:\n{}", server.log()))?;
    refused_with(
        dir.path(),
        &url,
        &format!("creds = \"{stranger}\""),
        &["refused the credentials", "stranger.creds"],
    )?;
    // Not a credentials file: an error naming the file and what is wrong with it, nothing sent.
    let (status, _, stderr) =
        run_pipe_with(dir.path(), &url, &format!("creds = \"{garbage}\""), 1_000)?;
    ensure(!status.success(), || {
        format!("the run succeeded with a garbage credentials file:\n{stderr}")
    })?;
    ensure(
        stderr.lines().any(|l| {
            l.contains("error")
                && l.contains("credentials file")
                && l.contains(&garbage)
                && l.contains("cannot parse")
        }),
        || format!("no error naming the credentials file and the problem:\n{stderr}"),
    )?;
    ensure(recorded(&dir.path().join("out.txt")) == 0, || {
        "elements arrived with a garbage credentials file".into()
    })
}

/// An element larger than the server's `max_payload` (1 MiB by default) fails the run with an
/// error naming the stream, the sizes and the fix (found by an audit: the server closed the
/// connection at each publish, and the writer retried it every 5 s for ever, saying only "timed
/// out: didn't receive ack in time"; a drain then waited for it for ever too).
fn an_element_larger_than_the_servers_max_payload_fails_naming_it() -> Result<(), String> {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let run = Running::app("big", &[&server.url(), "2", "2000000"], &out);
    let (status, _, stderr) = run.wait()?;
    ensure(!status.success(), || {
        format!("the run succeeded:\n{stderr}")
    })?;
    let line = stderr
        .lines()
        .find(|l| l.contains("max_payload") && l.contains("error"))
        .ok_or_else(|| format!("no error naming max_payload:\n{stderr}"))?;
    for says in [
        &Graph::broker_stream_name("broker_big", "blobs", "out", "count", "in"),
        "1048576",
        &server.url(),
    ] {
        ensure(line.contains(says), || {
            format!("the error does not say '{says}': {line}")
        })?;
    }
    Ok(())
}

/// Blobs alive in the process, and the most ever alive at once.
static BLOBS_ALIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static BLOBS_PEAK: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// 64 KiB of a camera that counts how many of it are alive (made, cloned or decoded).
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(from = "BlobParts")]
struct Blob {
    n: u32,
    bytes: Vec<u8>,
}

#[derive(serde::Deserialize)]
struct BlobParts {
    n: u32,
    bytes: Vec<u8>,
}

impl From<BlobParts> for Blob {
    fn from(p: BlobParts) -> Self {
        Blob::counted(p.n, p.bytes)
    }
}

impl Blob {
    fn counted(n: u32, bytes: Vec<u8>) -> Self {
        let alive = BLOBS_ALIVE.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        BLOBS_PEAK.fetch_max(alive, std::sync::atomic::Ordering::SeqCst);
        Blob { n, bytes }
    }
}

impl Clone for Blob {
    fn clone(&self) -> Self {
        Blob::counted(self.n, self.bytes.clone())
    }
}

impl Drop for Blob {
    fn drop(&mut self) {
        BLOBS_ALIVE.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A reader behind the broker holds what the connection's byte bound says of heap-owning
/// elements, not its element capacity of them (found by an audit: a slow reader held the whole
/// JetStream stream, 267 MB, awaiting acknowledgement; here, before the fix, 303 blobs of
/// 64 KiB alive at once under a 1 MiB bound: every one published while the reader paused).
fn a_slow_reader_holds_what_the_byte_bound_says() -> Result<(), String> {
    let server = NatsServer::start();
    let mut g = Graph::new("broker_bytes");
    g.use_broker(&server.url());
    g.heap_bytes::<Blob>(|b| b.bytes.capacity());
    let blobs = g.source_iter(
        "camera",
        (0..300u32).map(|n| Blob::counted(n, vec![n as u8; 64 << 10])),
    );
    let (input, out) = g.add_agent("slow", |p| {
        let input = p.input::<Blob>("in");
        let out = p.output::<u32>("out");
        let paused = false;
        (Slow { input, out, paused }, (input, out))
    });
    g.connect_with(
        &blobs,
        &input,
        Connection::new()
            .transport(Transport::Broker)
            .capacity_bytes(1 << 20),
    );
    let seen = g.collect("seen", &out);
    g.run().map_err(|e| e.to_string())?;
    ensure(seen.values() == (0..300).collect::<Vec<_>>(), || {
        format!("{} blobs, not 0..300 in order", seen.len())
    })?;
    // The source's side (its batches and what waits for its agent, about 1.3 MiB: 21), the
    // reader's 1 MiB of payload and the message that crossed it (960 KiB: 30 in all): 51;
    // 40 seen.
    let peak = BLOBS_PEAK.load(std::sync::atomic::Ordering::SeqCst);
    ensure(peak <= 51, || {
        format!("{peak} blobs of 64 KiB alive at once under a 1 MiB bound")
    })
}

/// Pauses a second at its first step (while the writer publishes everything), then takes
/// what comes.
struct Slow {
    input: iotstream::Input<Blob>,
    out: iotstream::Stream<u32>,
    paused: bool,
}

impl Agent for Slow {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        if !self.paused {
            self.paused = true;
            std::thread::sleep(Duration::from_secs(1));
        }
        for b in i.slice(&self.input) {
            o.push(&self.out, b.n);
        }
        i.consume_all(&self.input);
        Ok(())
    }
}

/// A server restarted without its store mid-run (the streams gone with it): the links make
/// their stream again, and the reader fails the run naming the stream and what the broker lost
/// (found by an audit: both ends retried for ever, the writer saying once "timed out", the
/// reader once "stream not found").
fn a_server_restarted_without_its_store_says_what_it_lost() -> Result<(), String> {
    let mut server = NatsServer::start();
    let (dir, deploy) = pipe_limited_to_128_messages(&server)?;
    // Once the reader has failed, its writer waits at the stream's limit for a reader that
    // will not come, until the drain's bound (10 s by default) kills it: 2 s is enough here.
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&deploy)
        .map_err(|e| e.to_string())?;
    file.write_all(b"\n[supervisor]\ndrain_timeout_ms = 2000\n")
        .map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let n = 300_000u64;
    // A slow reader (50 ms a step): the full stream holds seconds of its work when the server
    // stops, so the restart surely loses some.
    let run = Running::launched("pipe", &["-", &n.to_string(), "1024", "50"], &deploy, &out);
    // The stream full: it holds what the reader has not consumed yet.
    run.wait_stderr("the writer waiting at the stream's limit", |e| {
        e.contains("is at its limit")
    })?;
    server.restart_without_store();
    let (status, _, stderr) = run.wait()?;
    ensure(!status.success(), || {
        format!("the run succeeded although the broker lost the stream:\n{stderr}")
    })?;
    let line = stderr
        .lines()
        .find(|l| l.contains("error") && l.contains("the broker lost"))
        .ok_or_else(|| format!("no error saying what the broker lost:\n{stderr}"))?;
    ensure(
        line.contains(&Graph::broker_stream_name(
            "broker_pipe",
            "numbers",
            "out",
            "record",
            "in",
        )),
        || format!("the error does not name the stream: {line}"),
    )
}

/// Runs `f` against the server at `url` with a JetStream context (on a runtime of its own).
fn with_jetstream<R>(
    url: &str,
    f: impl AsyncFnOnce(async_nats::jetstream::Context) -> Result<R, String>,
) -> Result<R, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        f(async_nats::jetstream::new(client)).await
    })
}

/// A stream that already exists with settings of its own (made beforehand by hand, as
/// docs/deployment.md invites, or by a run with other limits): another retention fails the run
/// naming the stream and the difference, other limits are changed to the `[broker]` ones
/// (found by an audit: the stream was used as it was, silently; with limits retention the
/// second run's reader got the first run's elements again, then failed with "data arrived
/// after the end of stream"; changed limits were never applied).
fn a_stream_made_with_other_settings_is_refused_or_given_the_limits() -> Result<(), String> {
    use async_nats::jetstream::stream::{Config, DiscardPolicy, RetentionPolicy};
    let server = NatsServer::start();
    let url = server.url();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    let name = &Graph::broker_stream_name("broker_pipe", "numbers", "out", "record", "in");
    let config = |retention| Config {
        name: name.to_string(),
        subjects: vec!["iotstream.broker_pipe.numbers.out.record.in".to_string()],
        retention,
        discard: DiscardPolicy::New,
        max_messages: 5,
        ..Default::default()
    };
    with_jetstream(&url, async |js| {
        js.create_stream(config(RetentionPolicy::Limits))
            .await
            .map_err(|e| e.to_string())
    })?;
    let run = Running::app("pipe", &[&url, "100", "1024", "0"], &out);
    let (status, _, stderr) = run.wait()?;
    ensure(!status.success(), || {
        format!("the run succeeded:\n{stderr}")
    })?;
    let line = stderr
        .lines()
        .find(|l| l.contains("error") && l.contains(name))
        .ok_or_else(|| format!("no error naming the stream:\n{stderr}"))?;
    ensure(line.contains("retention Limits"), || {
        format!("the error does not say the retention: {line}")
    })?;
    // Work-queue retention, but a limit the application does not ask for.
    with_jetstream(&url, async |js| {
        js.delete_stream(name).await.map_err(|e| e.to_string())?;
        js.create_stream(config(RetentionPolicy::WorkQueue))
            .await
            .map_err(|e| e.to_string())
    })?;
    let _ = std::fs::remove_file(&out);
    let run = Running::app("pipe", &[&url, "100", "1024", "0"], &out);
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    exactly_once_in_order(&out, 100)?;
    let limit = with_jetstream(&url, async |js| {
        let mut stream = js.get_stream(name).await.map_err(|e| e.to_string())?;
        let info = stream.info().await.map_err(|e| e.to_string())?;
        Ok(info.config.max_messages)
    })?;
    ensure(limit == -1, || {
        format!("the stream still has max_messages {limit}, which [broker] does not set")
    })
}

// ---------------------------------------------------------------------------------------------
// Found by an audit of the broker links (2026-12-07)

/// LinkStats::bytes of a broker link counts what crossed, once: at the stream's limit (the
/// writer retries a refused publish every 100 ms) the writer must not count each attempt.
fn a_writers_bytes_are_counted_once_at_the_streams_limit() -> Result<(), String> {
    let server = NatsServer::start();
    let n = 20_000u64;
    let mut g = Graph::new("audit_bytes");
    let s = g.source_iter_with(
        "numbers",
        0..n,
        SourceOptions {
            max_batch: 100,
            ..SourceOptions::default()
        },
    );
    let (input, out) = g.add_agent("slowodd", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        (SlowOdd { input, out }, (input, out))
    });
    if std::env::var_os("AUDIT_NOLIMIT").is_some() {
        g.use_broker(&server.url());
    } else {
        g.use_broker_with(BrokerOptions::new(&server.url()).max_messages(4));
    }
    g.connect_with(
        &s,
        &input,
        Connection::new().capacity(100).transport(Transport::Broker),
    );
    let c = g.collect("out", &out);
    let metrics = g.run().map_err(|e| e.to_string())?;
    let l = metrics
        .link("numbers.out", "slowodd")
        .ok_or("no counters for the link")?;
    ensure(c.values().len() == n as usize, || {
        format!("{} elements", c.len())
    })?;
    eprintln!(
        "  elements {} bytes {} (8 x n = {})",
        l.elements,
        l.bytes,
        8 * n
    );
    // Each message's payload also counts 8 bytes besides its elements (161 600 without a
    // limit): a tenth of slack.
    ensure(l.bytes <= 8 * n * 11 / 10, || {
        format!(
            "LinkStats::bytes = {} for {} elements of 8 bytes ({} expected): every refused \
             publish at the stream's limit was counted again",
            l.bytes,
            l.elements,
            8 * n
        )
    })
}

struct SlowOdd {
    input: iotstream::Input<u64>,
    out: iotstream::Stream<u64>,
}

impl Agent for SlowOdd {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        std::thread::sleep(Duration::from_millis(5));
        o.extend(&self.out, i.slice(&self.input).iter().copied());
        i.consume_all(&self.input);
        Ok(())
    }
}

/// `app` → agent `src` → `sink`: 100 u64 through the broker.
fn named_pipe(url: &str, app: &str, agent: &str) -> Result<Vec<u64>, String> {
    let mut g = Graph::new(app);
    let s = g.source_iter(agent, 0..100u64);
    let (input, out) = g.add_agent("sink", |p| {
        let input = p.input::<u64>("in");
        let out = p.output::<u64>("out");
        (SlowOdd { input, out }, (input, out))
    });
    g.use_broker(url);
    g.connect_with(&s, &input, Connection::new().transport(Transport::Broker));
    let c = g.collect("out", &out);
    g.run().map_err(|e| e.to_string())?;
    Ok(c.values())
}

/// App `a_b` with agent `c` and app `a` with agent `b_c` name one stream (`_` joins the parts)
/// with two subjects: the second is refused with an error saying why and what to do, not told
/// to delete the first one's stream.
fn two_applications_whose_names_join_alike_are_told_apart() -> Result<(), String> {
    let server = NatsServer::start();
    let first = named_pipe(&server.url(), "a_b", "c").map_err(|e| format!("app a_b: {e}"))?;
    ensure(first == (0..100).collect::<Vec<_>>(), || {
        "app a_b: wrong output".into()
    })?;
    match named_pipe(&server.url(), "a", "b_c") {
        Ok(_) => Err("app 'a' (agent 'b_c') ran on app 'a_b''s stream".into()),
        Err(e) => ensure(
            e.contains("belongs to another connection") && e.contains("Rename one of them"),
            || format!("app 'a' refused without saying why: {e}"),
        ),
    }
}

/// Fails at its first step, consuming nothing: what was published stays in the broker.
struct FailFirst {
    input: iotstream::Input<u64>,
}

impl Agent for FailFirst {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        if i.slice(&self.input).is_empty() {
            return Ok(());
        }
        Err("stop".into())
    }
}

/// A message of another element type in the stream (left by an earlier version of the
/// application whose stream carried u64; this one carries f64) is refused with an error
/// naming the stream, never decoded as f64.
fn a_message_of_another_element_type_is_refused_naming_the_stream() -> Result<(), String> {
    let server = NatsServer::start();
    // Run 1: u64 published; its reader fails before consuming any.
    {
        let mut g = Graph::new("audit_types");
        let s = g.source_iter("src", 1_000_000u64..100_000_000);
        let input = g.add_agent("sink", |p| {
            let input = p.input::<u64>("in");
            (FailFirst { input }, input)
        });
        g.use_broker(&server.url());
        g.connect_with(&s, &input, Connection::new().transport(Transport::Broker));
        let r = g.run();
        ensure(r.is_err(), || "run 1 did not fail".into())?;
    }
    // Run 2: same names, element type f64.
    let mut g = Graph::new("audit_types");
    let s = g.source_iter("src", vec![1.5f64, 2.5]);
    let (input, out) = g.add_agent("sink", |p| {
        let input = p.input::<f64>("in");
        let out = p.output::<f64>("out");
        (PassF64 { input, out }, (input, out))
    });
    g.use_broker(&server.url());
    g.connect_with(&s, &input, Connection::new().transport(Transport::Broker));
    let c = g.collect("out", &out);
    match g.run() {
        Err(e) => ensure(e.to_string().contains("IOTSTREAM_audit_types"), || {
            format!("run 2 failed without naming the stream: {e}")
        }),
        Ok(_) => {
            let v = c.values();
            Err(format!(
                "run 2 succeeded and its f64 reader got {} elements, the first {:?}: u64 \
                 messages of the earlier run decoded as f64",
                v.len(),
                &v[..v.len().min(3)]
            ))
        }
    }
}

struct PassF64 {
    input: iotstream::Input<f64>,
    out: iotstream::Stream<f64>,
}

impl Agent for PassF64 {
    fn step(&mut self, i: &mut Inputs, o: &mut Outputs) -> Result<(), AgentError> {
        o.extend(&self.out, i.slice(&self.input).iter().copied());
        i.consume_all(&self.input);
        Ok(())
    }
}

/// A reader process whose step outlasts the consumer's acknowledgement wait (5 s): the broker
/// sends the held messages again, the reader recognises and drops them; its LinkStats::bytes
/// must count each message once.
fn a_readers_bytes_are_counted_once_across_redeliveries() -> Result<(), String> {
    let server = NatsServer::start();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let deploy = dir.path().join("pipe.toml");
    std::fs::write(&deploy, pipe_deployment(&server.url())).map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    // One message of 100 elements, one step longer than the consumer's 5 s acknowledgement
    // wait: the broker delivers the message again while the step runs.
    let n = 100u64;
    let run = Running::launched(
        "pipe",
        &["-", &n.to_string(), "1000", "6500"],
        &deploy,
        &out,
    );
    let (status, stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    exactly_once_in_order(&out, n)?;
    let counts: Vec<u64> = stdout
        .lines()
        .filter_map(|l| {
            l.split_once("LINK bytes ")
                .map(|(_, b)| b.trim().parse().unwrap_or(0))
        })
        .collect();
    eprintln!("  LINK bytes per process: {counts:?}");
    let max = counts.iter().copied().max().unwrap_or(0);
    // 8 bytes an element and 8 a message.
    ensure(max <= 8 * n + 8, || {
        format!(
            "a process counted {max} bytes for {n} elements of 8 bytes ({} expected): the \
             broker's redeliveries, recognised and dropped, were counted again ({counts:?})",
            8 * n + 8
        )
    })
}

/// A message larger than a reader's pull (32 MiB), which the server would never hand it
/// (the reader waited for the pull to expire, then the message was skipped without an error),
/// is refused by the link's stream when published.
fn a_message_larger_than_a_pull_is_refused_by_the_links_stream() -> Result<(), String> {
    let server = NatsServer::start_with("max_payload: 67108864\nmax_pending: 134217728\n");
    let url = server.url();
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let out = dir.path().join("out.txt");
    // A run makes the link's stream.
    let (status, _, stderr) = Running::app("pipe", &[&url, "10", "1024", "0"], &out).wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    let subject = "iotstream.broker_pipe.numbers.out.record.in";
    let refused = with_jetstream(&url, async |js| {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", "00000000000000ab-0");
        let published = js
            .publish_with_headers(subject, headers, vec![7u8; 40 << 20].into())
            .await;
        Ok(match published {
            Err(e) => Some(e.to_string()),
            Ok(ack) => ack.await.err().map(|e| e.to_string()),
        })
    })?;
    ensure(refused.is_some(), || {
        "the link's stream took a 40 MiB message, which no pull of its reader can take".into()
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("app") {
        iotstream::init_logging();
        let name = args.get(2).cloned().unwrap_or_default();
        match app(&name, &args[3..]) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        }
    }
    type Scenario = fn() -> Result<(), String>;
    let scenarios: [(&str, Scenario); 22] = [
        (
            "a_message_larger_than_a_pull_is_refused_by_the_links_stream",
            a_message_larger_than_a_pull_is_refused_by_the_links_stream,
        ),
        (
            "a_readers_bytes_are_counted_once_across_redeliveries",
            a_readers_bytes_are_counted_once_across_redeliveries,
        ),
        (
            "a_writers_bytes_are_counted_once_at_the_streams_limit",
            a_writers_bytes_are_counted_once_at_the_streams_limit,
        ),
        (
            "two_applications_whose_names_join_alike_are_told_apart",
            two_applications_whose_names_join_alike_are_told_apart,
        ),
        (
            "a_message_of_another_element_type_is_refused_naming_the_stream",
            a_message_of_another_element_type_is_refused_naming_the_stream,
        ),
        (
            "a_slow_reader_holds_what_the_byte_bound_says",
            a_slow_reader_holds_what_the_byte_bound_says,
        ),
        (
            "a_server_restarted_without_its_store_says_what_it_lost",
            a_server_restarted_without_its_store_says_what_it_lost,
        ),
        (
            "a_stream_made_with_other_settings_is_refused_or_given_the_limits",
            a_stream_made_with_other_settings_is_refused_or_given_the_limits,
        ),
        (
            "an_element_larger_than_the_servers_max_payload_fails_naming_it",
            an_element_larger_than_the_servers_max_payload_fails_naming_it,
        ),
        (
            "forced_in_one_process_matches_local",
            forced_in_one_process_matches_local,
        ),
        (
            "two_processes_deliver_everything_in_order",
            two_processes_deliver_everything_in_order,
        ),
        (
            "reader_killed_twice_loses_nothing",
            reader_killed_twice_loses_nothing,
        ),
        (
            "server_restarted_mid_run_loses_nothing",
            server_restarted_mid_run_loses_nothing,
        ),
        (
            "a_drop_policy_drops_and_counts_at_the_streams_limit",
            a_drop_policy_drops_and_counts_at_the_streams_limit,
        ),
        (
            "quake_detector_behind_the_broker_detects_as_in_one_process",
            quake_detector_behind_the_broker_detects_as_in_one_process,
        ),
        (
            "token_right_delivers_wrong_or_missing_fails_clearly",
            token_right_delivers_wrong_or_missing_fails_clearly,
        ),
        (
            "token_in_code_right_delivers_wrong_fails_and_bad_options_are_named",
            token_in_code_right_delivers_wrong_fails_and_bad_options_are_named,
        ),
        (
            "user_and_password_right_delivers_wrong_fails_clearly",
            user_and_password_right_delivers_wrong_fails_clearly,
        ),
        (
            "tls_right_ca_delivers_missing_or_other_ca_fails_clearly",
            tls_right_ca_delivers_missing_or_other_ca_fails_clearly,
        ),
        (
            "consecutive_runs_each_get_exactly_their_own_elements",
            consecutive_runs_each_get_exactly_their_own_elements,
        ),
        (
            "tls_towards_a_plain_server_fails_clearly_and_tls_with_a_token_delivers",
            tls_towards_a_plain_server_fails_clearly_and_tls_with_a_token_delivers,
        ),
        (
            "creds_of_the_account_deliver_another_accounts_fail_clearly",
            creds_of_the_account_deliver_another_accounts_fail_clearly,
        ),
    ];
    if !suite::run(&scenarios, &[], suite::filter().as_deref()) {
        std::process::exit(1);
    }
}
