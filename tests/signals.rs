//! Ctrl-C, SIGTERM and SIGHUP, for real: signals sent to real processes, one-process and
//! multi-process runs, and what a process is called in `ps` and `top`.
//!
//! Like `tests/processes.rs`, this test has its own `main` (`harness = false`): run as
//! `signals app NAME ARGS…` it *is* the application NAME (the starter, or, with a role in its
//! environment, one of its children). Run without arguments it runs every scenario, each
//! starting the application as a separate process, and prints `N passed, M failed`; a first
//! argument not starting with `-` runs only the scenarios whose name contains it. Waits are
//! bounded to catch a hang, never to judge speed: every scenario waits for a line the program
//! prints, not for time to pass. Every scenario kills what it started and removes the rings
//! its application may leave, even when it fails.

use std::io::{BufRead, BufReader, Read, Write};
#[path = "support/suite.rs"]
mod suite;

use std::process::{Child, Command, ExitCode, ExitStatus, Stdio, Termination};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, SourceOptions};

// ---------------------------------------------------------------------------------------------
// The applications

/// Runs application `name`.
fn app(name: &str, args: &[String]) -> Result<(), iotstream::Error> {
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match name {
        // numbers until stopped → a map → every element a line in FILE; prints EMITTED n
        "drain" => drain(&arg(0), false, true),
        // the same, but the sink's end of stream takes a minute: a drain to interrupt
        "slow_drain" => drain(&arg(0), true, true),
        // the slow end of stream in the starter, the map in process `worker`
        "slow_drain_worker" => drain_in(&arg(0), true, true, true),
        // numbers until stopped → the file sink, with `start`; the program joins 2 s after its
        // first SEEN line, long after a signal's drain ended
        "late_join" => late_join(&arg(0)),
        // the same with `handle_signals(false)`
        "unhandled" => drain(&arg(0), false, false),
        // the same with the map in process `worker`: rings between the processes
        "drain_worker" => drain_in(&arg(0), false, true, true),
        // a finite run in PROCESSES (1 or 2) processes, then a minute of other work
        "after_run" => after_run(&arg(0)),
        // numbers until stopped, in processes `main` and `detector`
        "quake" => quake(),
        other => panic!("no application named {other}"),
    }
}

/// Writes each element as a line to a file, buffered (flushed at the end of its stream);
/// prints `SEEN 1000` once it has had 1000 elements. With `slow_finish`, its end of stream prints
/// `FINISHING` and then takes a minute: a drain that a second signal must cut short.
struct FileSink {
    input: Input<u64>,
    file: std::io::BufWriter<std::fs::File>,
    seen: u64,
    slow_finish: bool,
}

impl Agent for FileSink {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        let xs = i.slice(&self.input);
        for x in xs {
            writeln!(self.file, "{x}")?;
        }
        let before = self.seen;
        self.seen += xs.len() as u64;
        if before < 1000 && self.seen >= 1000 {
            println!("SEEN 1000");
            std::io::stdout().flush()?;
        }
        i.consume_all(&self.input);
        // A slow reader: data is in flight when the signal comes.
        std::thread::sleep(Duration::from_millis(1));
        Ok(())
    }

    fn finish(&mut self, _o: &mut Outputs) -> Result<(), AgentError> {
        if self.slow_finish {
            println!("FINISHING");
            std::io::stdout().flush()?;
            std::thread::sleep(Duration::from_secs(60));
        }
        self.file.flush()?;
        println!("SINK {}", self.seen);
        Ok(())
    }
}

/// numbers 0, 1, 2, … until stopped (16 per call, a millisecond apart) → a map → [`FileSink`]
/// writing to `path`; in one process. Prints `EMITTED n` (the source's own count) when the
/// run has ended well.
fn drain(path: &str, slow_finish: bool, handle_signals: bool) -> Result<(), iotstream::Error> {
    drain_in(path, slow_finish, handle_signals, false)
}

/// [`drain`], with the map in process `worker` if `worker` (application `drain_worker`).
fn drain_in(
    path: &str,
    slow_finish: bool,
    handle_signals: bool,
    worker: bool,
) -> Result<(), iotstream::Error> {
    let name = if worker { "drain_worker" } else { "drain" };
    let (g, emitted) = drain_graph(name, path, slow_finish, handle_signals, worker)?;
    // Read before the run, which takes the role out of the environment.
    let starter = std::env::var_os("IOTSTREAM_PROCESS").is_none();
    g.run()?;
    if starter {
        println!("EMITTED {}", emitted.load(Ordering::SeqCst));
    }
    Ok(())
}

/// The graph of [`drain_in`], named `name`, and the count of what its source emitted.
fn drain_graph(
    name: &str,
    path: &str,
    slow_finish: bool,
    handle_signals: bool,
    worker: bool,
) -> Result<(Graph, Arc<AtomicU64>), iotstream::Error> {
    let mut g = Graph::new(name);
    g.handle_signals(handle_signals);
    let emitted = Arc::new(AtomicU64::new(0));
    let counted = Arc::clone(&emitted);
    let numbers = g.source_with(
        "numbers",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            std::thread::sleep(Duration::from_millis(1));
            let from = counted.load(Ordering::SeqCst);
            let n = (max as u64).min(16);
            out.extend(from..from + n);
            counted.store(from + n, Ordering::SeqCst);
            Ok(true)
        },
        SourceOptions {
            max_batch: 16,
            ..SourceOptions::default()
        },
    );
    let forwarded = g.map("forward", &numbers, |v: &u64| *v);
    let file = std::fs::File::create(path).map_err(|e| iotstream::Error::Runtime {
        detail: format!("cannot create {path}: {e}"),
    })?;
    let input = g.add_agent("write", |p| {
        let input = p.input::<u64>("in");
        let sink = FileSink {
            input,
            file: std::io::BufWriter::new(file),
            seen: 0,
            slow_finish,
        };
        (sink, input)
    });
    g.connect_with(
        &forwarded,
        &input,
        iotstream::Connection::new().capacity(256),
    );
    if worker {
        g.place_in_process("forward", "worker");
    }
    Ok((g, emitted))
}

/// [`drain`]'s graph (application `late_join`), started with `start`; the program sleeps 2 s
/// before it joins (prints `JOINED` then).
fn late_join(path: &str) -> Result<(), iotstream::Error> {
    let (g, _emitted) = drain_graph("late_join", path, false, true, false)?;
    let running = g.start()?;
    std::thread::sleep(Duration::from_secs(2));
    running.join()?;
    println!("JOINED");
    Ok(())
}

/// 0..1000 → ×2 → a count, in one process or (`processes` = 2) with the map in process
/// `worker`; then, in the starter, prints `RUN OVER` and does "other work" for a minute
/// before exiting with status 3.
fn after_run(processes: &str) -> Result<(), iotstream::Error> {
    let mut g = Graph::new("after_run");
    let numbers = g.source_iter("numbers", 0..1000u64);
    let doubled = g.map("double", &numbers, |v: &u64| v * 2);
    let count = Arc::new(AtomicU64::new(0));
    let c = Arc::clone(&count);
    g.for_each("count", &doubled, move |_: &u64| {
        c.fetch_add(1, Ordering::SeqCst);
    });
    if processes == "2" {
        g.place_in_process("double", "worker");
    }
    let starter = std::env::var_os("IOTSTREAM_PROCESS").is_none();
    g.run()?;
    if starter {
        println!("RUN OVER {}", count.load(Ordering::SeqCst));
        std::io::stdout().flush().ok();
        for _ in 0..600 {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::process::exit(3);
    }
    Ok(())
}

/// numbers until stopped (paced) in `main` → a detector in process `detector` that prints
/// `DETECTOR UP` at its first element → a count in `main`.
fn quake() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("quake");
    let numbers = g.source_with(
        "seismometer",
        |out: &mut Vec<u64>, _max: usize| -> Result<bool, AgentError> {
            std::thread::sleep(Duration::from_millis(1));
            out.push(1);
            Ok(true)
        },
        SourceOptions::default(),
    );
    let mut up = false;
    let detected = g.map("detector", &numbers, move |v: &u64| {
        if !up {
            up = true;
            println!("DETECTOR UP");
            std::io::stdout().flush().ok();
        }
        *v
    });
    g.for_each("alerts", &detected, |_: &u64| {});
    g.place_in_process("detector", "detector");
    g.run()?;
    Ok(())
}

/// A `main` that returns an `iotstream::Error`, as a user's would.
fn failing_main() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("failing");
    let numbers = g.source_iter("numbers", 0..10u64);
    g.sink_list("broken", &numbers, |_: &[u64]| Err("sensor offline".into()));
    g.run()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Running them

/// A started application whose stdout lines are collected as they come; killed (with its
/// children) and its rings removed when dropped.
struct Started {
    child: Child,
    app: String,
    lines: mpsc::Receiver<String>,
    /// Every stdout line so far.
    out: Vec<String>,
    reader: Option<std::thread::JoinHandle<()>>,
}

/// The bound on every wait: a guard against a hang, not a speed claim.
const HANG: Duration = Duration::from_secs(30);

impl Started {
    /// Runs `signals app NAME ARGS…` (this binary as the application `name`).
    fn new(name: &str, app: &str, args: &[&str]) -> Started {
        Started::with(name, app, args, |_| {})
    }

    /// [`Started::new`], with the command changed by `prepare` before it starts (a process
    /// group, a signal ignored).
    fn with(name: &str, app: &str, args: &[&str], prepare: impl FnOnce(&mut Command)) -> Started {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command
            .arg("app")
            .arg(name)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        prepare(&mut command);
        let mut child = command.spawn().expect("start the application");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Started {
            child,
            app: app.to_string(),
            lines,
            out: Vec::new(),
            reader: Some(reader),
        }
    }

    /// Waits for a stdout line containing `what`; returns it.
    fn wait_line(&mut self, what: &str) -> Result<String, String> {
        let deadline = Instant::now() + HANG;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.out.push(line.clone());
                    if line.contains(what) {
                        return Ok(line);
                    }
                }
                Err(_) => {
                    let err = self.stderr_now();
                    return Err(format!(
                        "no line with {what:?} on stdout:\n{}\nstderr:\n{err}",
                        self.out.join("\n")
                    ));
                }
            }
        }
    }

    /// Sends `signal` to the application's first process.
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, not reaped yet (it is reaped in `wait`/`drop`).
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Sends `signal` to the application's first process's process group, as a terminal does
    /// (it must have been started as the leader of a group of its own).
    fn signal_group(&self, signal: i32) {
        // SAFETY: killpg(2) on the group our own child leads, not reaped yet.
        unsafe { libc::killpg(self.child.id() as i32, signal) };
    }

    /// Waits for the end; returns the status, every stdout line and stderr.
    fn wait(mut self) -> Result<(ExitStatus, Vec<String>, String), String> {
        let deadline = Instant::now() + HANG;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                self.out.extend(self.lines.try_iter());
                let err = self.stderr_now();
                return Ok((status, std::mem::take(&mut self.out), err));
            }
            if Instant::now() > deadline {
                let err = self.stderr_now();
                return Err(format!(
                    "'{}' did not end within {HANG:?}:\n{}\nstderr:\n{err}",
                    self.app,
                    self.out.join("\n")
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Standard error so far, if the process has ended (empty while it runs: reading it then
    /// would wait for its end).
    fn stderr_now(&mut self) -> String {
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            return String::new();
        }
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut err);
        }
        err
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Started {
    fn drop(&mut self) {
        let kids = children_of(self.child.id());
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in kids {
            // SAFETY: kill(2); a child of a dead starter is killed by its PDEATHSIG anyway.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        for s in segments(&self.app) {
            let _ = std::fs::remove_file(format!("/dev/shm/{s}"));
        }
    }
}

/// Pids of the live processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) state ppid …": the comm may hold anything, so split after its last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            out.push(pid);
        }
    }
    out
}

fn segments(app: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&format!("iotstream.{app}.")))
                .collect()
        })
        .unwrap_or_default()
}

fn ensure(cond: bool, what: impl FnOnce() -> String) -> Result<(), String> {
    if cond {
        Ok(())
    } else {
        Err(what())
    }
}

/// A file in the temporary folder, removed when dropped.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let path = std::env::temp_dir().join(format!(
            "iotstream-signals-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_file(&path);
        Scratch(path)
    }

    fn arg(&self) -> &str {
        self.0.to_str().expect("a UTF-8 temporary path")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// The scenarios

/// One signal to a one-process run: sources stop, every element emitted reaches the file, the
/// sink flushes, exit 0.
fn one_signal_drains_a_one_process_run(signal: i32) -> Result<(), String> {
    one_signal_drains("drain", signal, false)
}

/// One signal to application `name` (`drain`, or `drain_worker` in two processes), to its first
/// process or (`to_group`) to its whole process group as a terminal sends it: sources stop,
/// every element emitted reaches the file, the sink flushes, exit 0, no ring left.
fn one_signal_drains(name: &str, signal: i32, to_group: bool) -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let file = Scratch::new(&format!("{name}-{signal}"));
    let mut app = Started::with(name, name, &[file.arg()], |c| {
        if to_group {
            c.process_group(0);
        }
    });
    app.wait_line("SEEN 1000")?;
    if to_group {
        app.signal_group(signal);
    } else {
        app.signal(signal);
    }
    let (status, out, err) = app.wait()?;
    ensure(status.code() == Some(0), || {
        format!(
            "exit {status} after signal {signal}:\n{}\n{err}",
            out.join("\n")
        )
    })?;
    let emitted: u64 = out
        .iter()
        .find_map(|l| l.strip_prefix("EMITTED "))
        .and_then(|n| n.trim().parse().ok())
        .ok_or_else(|| format!("no EMITTED line:\n{}", out.join("\n")))?;
    let text = std::fs::read_to_string(&file.0).map_err(|e| e.to_string())?;
    let lines: Vec<u64> = text.lines().filter_map(|l| l.parse().ok()).collect();
    ensure(emitted > 0 && text.ends_with('\n'), || {
        format!("emitted {emitted}; file of {} bytes", text.len())
    })?;
    ensure(lines.len() as u64 == emitted, || {
        format!("emitted {emitted}, the file has {} lines", lines.len())
    })?;
    ensure(lines.iter().copied().eq(0..emitted), || {
        "the file's lines are not 0, 1, 2, … in order".to_string()
    })?;
    ensure(segments(name).is_empty(), || {
        format!("shared-memory objects left: {:?}", segments(name))
    })
}

fn ctrl_c_drains_a_one_process_run() -> Result<(), String> {
    one_signal_drains_a_one_process_run(libc::SIGINT)
}

fn sigterm_drains_a_one_process_run() -> Result<(), String> {
    one_signal_drains_a_one_process_run(libc::SIGTERM)
}

/// A second signal while the drain is under way (the sink's end of stream takes a minute)
/// ends the process at once with 128 + the signal.
fn second_signal_ends_a_slow_drain(first: i32, second: i32) -> Result<(), String> {
    let file = Scratch::new(&format!("slow-{first}-{second}"));
    let mut app = Started::new("slow_drain", "drain", &[file.arg()]);
    app.wait_line("SEEN 1000")?;
    app.signal(first);
    app.wait_line("FINISHING")?;
    app.signal(second);
    let (status, out, err) = app.wait()?;
    ensure(status.code() == Some(128 + second), || {
        format!(
            "exit {status} after a second signal {second}, {} expected:\n{}\n{err}",
            128 + second,
            out.join("\n")
        )
    })?;
    ensure(!out.iter().any(|l| l.starts_with("EMITTED")), || {
        format!("the run ended normally:\n{}", out.join("\n"))
    })
}

/// One signal, and a drain that outlasts its bound (`IOTSTREAM_DRAIN_TIMEOUT_MS`, 300 ms here;
/// the sink's end of stream takes a minute, as a sink that cannot deliver or a broker that is
/// down would): the process ends with status 1 and says why, instead of draining for as long as
/// it takes (the bound held only for child processes, never for the process the user started).
/// `app` is `slow_drain` (one process) or `slow_drain_worker` (the slow sink in the starter,
/// the map in a child: the starter's own agents are what the drain waits for).
fn a_drain_that_outlasts_its_bound_ends_the_process(app: &str) -> Result<(), String> {
    let file = Scratch::new(&format!("bound-{app}"));
    let name = if app == "slow_drain" {
        "drain"
    } else {
        "drain_worker"
    };
    let mut started = Started::with(app, name, &[file.arg()], |c| {
        c.env("IOTSTREAM_DRAIN_TIMEOUT_MS", "300");
    });
    started.wait_line("SEEN 1000")?;
    started.signal(libc::SIGINT);
    started.wait_line("FINISHING")?;
    let (status, out, err) = started.wait()?;
    ensure(status.code() == Some(1), || {
        format!("exit {status}, 1 expected:\n{}\n{err}", out.join("\n"))
    })?;
    ensure(err.contains("the drain did not end within 300 ms"), || {
        format!("no word of the bound:\n{err}")
    })?;
    ensure(segments(name).is_empty(), || {
        format!("shared-memory objects left: {:?}", segments(name))
    })
}

/// A drain that ended within its bound, in a program that joins its run only later: the bound
/// leaves it alone (exit 0, `JOINED`), where it ended any process whose run was not yet
/// joined.
fn a_drain_that_ended_is_not_cut_by_its_bound_before_the_join() -> Result<(), String> {
    let file = Scratch::new("late-join");
    let mut started = Started::with("late_join", "late_join", &[file.arg()], |c| {
        c.env("IOTSTREAM_DRAIN_TIMEOUT_MS", "300");
    });
    started.wait_line("SEEN 1000")?;
    started.signal(libc::SIGINT);
    let (status, out, err) = started.wait()?;
    ensure(status.code() == Some(0), || {
        format!("exit {status}, 0 expected:\n{}\n{err}", out.join("\n"))
    })?;
    ensure(out.iter().any(|l| l == "JOINED"), || {
        format!("no JOINED line:\n{}\n{err}", out.join("\n"))
    })
}

fn a_drain_that_outlasts_its_bound_ends_a_one_process_run() -> Result<(), String> {
    a_drain_that_outlasts_its_bound_ends_the_process("slow_drain")
}

fn a_drain_that_outlasts_its_bound_ends_a_starter() -> Result<(), String> {
    a_drain_that_outlasts_its_bound_ends_the_process("slow_drain_worker")
}

fn sighup_drains_a_one_process_run() -> Result<(), String> {
    one_signal_drains_a_one_process_run(libc::SIGHUP)
}

/// A terminal's hang-up reaches the starter and the child in its process group: the child
/// waits for its starter's drain request, and the two processes drain as one.
fn sighup_to_the_process_group_drains_a_two_process_run() -> Result<(), String> {
    one_signal_drains("drain_worker", libc::SIGHUP, true)
}

/// Under `nohup` (SIGHUP ignored when the program starts) a hang-up changes nothing: the run
/// goes on, and a SIGTERM after it drains as a first signal.
fn with_sighup_ignored_a_hang_up_changes_nothing() -> Result<(), String> {
    use std::os::unix::process::CommandExt;
    let file = Scratch::new("nohup");
    let mut app = Started::with("drain", "drain", &[file.arg()], |c| {
        // SAFETY: signal(2) only, between fork and exec.
        unsafe {
            c.pre_exec(|| {
                libc::signal(libc::SIGHUP, libc::SIG_IGN);
                Ok(())
            });
        }
    });
    app.wait_line("SEEN 1000")?;
    app.signal(libc::SIGHUP);
    app.signal(libc::SIGTERM);
    let (status, out, err) = app.wait()?;
    ensure(status.code() == Some(0), || {
        format!(
            "exit {status} after SIGHUP (ignored) and SIGTERM:\n{}\n{err}",
            out.join("\n")
        )
    })?;
    ensure(
        err.contains(&format!("signal {}: draining", libc::SIGTERM))
            && !err.contains(&format!("signal {}:", libc::SIGHUP)),
        || format!("SIGHUP was not ignored:\n{err}"),
    )
}

fn a_second_ctrl_c_ends_a_slow_drain_at_once() -> Result<(), String> {
    second_signal_ends_a_slow_drain(libc::SIGINT, libc::SIGINT)
}

fn a_sigterm_after_ctrl_c_ends_a_slow_drain_at_once() -> Result<(), String> {
    second_signal_ends_a_slow_drain(libc::SIGINT, libc::SIGTERM)
}

fn a_second_sighup_ends_a_slow_drain_at_once() -> Result<(), String> {
    second_signal_ends_a_slow_drain(libc::SIGHUP, libc::SIGHUP)
}

/// `handle_signals(false)`: nothing is installed, so `signal` has its default action.
fn without_signal_handling_a_signal_kills_the_run(signal: i32) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let file = Scratch::new(&format!("unhandled-{signal}"));
    let mut app = Started::new("unhandled", "drain", &[file.arg()]);
    app.wait_line("SEEN 1000")?;
    app.signal(signal);
    let (status, out, err) = app.wait()?;
    ensure(status.signal() == Some(signal), || {
        format!(
            "exit {status}, killed by signal {signal} expected:\n{}\n{err}",
            out.join("\n")
        )
    })
}

fn without_signal_handling_ctrl_c_kills_the_run() -> Result<(), String> {
    without_signal_handling_a_signal_kills_the_run(libc::SIGINT)
}

fn without_signal_handling_sighup_kills_the_run() -> Result<(), String> {
    without_signal_handling_a_signal_kills_the_run(libc::SIGHUP)
}

/// Once a run is over, a signal does what it did before: the default action (the program is
/// killed by it), also after a multi-process run (whose handler used to leave both signals
/// ignored for the rest of the process's life).
fn after_a_run_a_signal_kills_the_program(processes: &str, signal: i32) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let mut app = Started::new("after_run", "after_run", &[processes]);
    let over = app.wait_line("RUN OVER")?;
    ensure(over == "RUN OVER 1000", || {
        format!("the run counted: {over}")
    })?;
    app.signal(signal);
    let (status, out, err) = app.wait()?;
    ensure(status.signal() == Some(signal), || {
        format!(
            "exit {status} after signal {signal} once the run was over, killed by it expected:\n{}\n{err}",
            out.join("\n")
        )
    })
}

fn after_a_multi_process_run_sigterm_kills_the_program() -> Result<(), String> {
    after_a_run_a_signal_kills_the_program("2", libc::SIGTERM)
}

fn after_a_multi_process_run_ctrl_c_kills_the_program() -> Result<(), String> {
    after_a_run_a_signal_kills_the_program("2", libc::SIGINT)
}

fn after_a_multi_process_run_sighup_kills_the_program() -> Result<(), String> {
    after_a_run_a_signal_kills_the_program("2", libc::SIGHUP)
}

fn after_a_one_process_run_ctrl_c_kills_the_program() -> Result<(), String> {
    after_a_run_a_signal_kills_the_program("1", libc::SIGINT)
}

/// A child process is `iotstream quake/detector` in `ps` (argv[0]) and `quake/detector` in
/// `top` (its comm); Ctrl-C to the starter then drains both processes.
fn a_child_says_what_it_is_in_ps_and_top() -> Result<(), String> {
    let mut app = Started::new("quake", "quake", &[]);
    app.wait_line("[detector] DETECTOR UP")?;
    let kids = children_of(app.pid());
    ensure(kids.len() == 1, || format!("children: {kids:?}"))?;
    let pid = kids[0];
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).map_err(|e| e.to_string())?;
    let argv: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).map_err(|e| e.to_string())?;
    ensure(
        argv.first().map(String::as_str) == Some("iotstream quake/detector"),
        || format!("argv of the child: {argv:?}"),
    )?;
    // Its other arguments are the starter's.
    ensure(
        argv.get(1..3) == Some(&["app".to_string(), "quake".to_string()][..]),
        || format!("argv of the child: {argv:?}"),
    )?;
    ensure(comm.trim_end() == "quake/detector", || {
        format!("comm of the child: {comm:?}")
    })?;
    app.signal(libc::SIGINT);
    let (status, out, err) = app.wait()?;
    ensure(status.code() == Some(0), || {
        format!("exit {status} after Ctrl-C:\n{}\n{err}", out.join("\n"))
    })?;
    ensure(segments("quake").is_empty(), || {
        format!("rings left: {:?}", segments("quake"))
    })
}

/// `fn main() -> Result<(), iotstream::Error>` prints the error's sentence, not a struct.
fn an_error_returned_from_main_reads_as_a_sentence() -> Result<(), String> {
    let out = Command::new(std::env::current_exe().map_err(|e| e.to_string())?)
        .args(["app", "failing_main"])
        .output()
        .map_err(|e| e.to_string())?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure(out.status.code() == Some(1), || {
        format!("exit {:?}:\n{err}", out.status)
    })?;
    ensure(
        err.contains("Error: agent 'broken' failed: sensor offline") && !err.contains("Agent {"),
        || format!("not a sentence:\n{err}"),
    )
}

/// A scenario: `Ok` or what went wrong.
type Scenario = fn() -> Result<(), String>;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("app") {
        let name = args.get(2).cloned().unwrap_or_default();
        if name == "failing_main" {
            // What the standard library does with a `main` that returns this.
            return failing_main().report();
        }
        iotstream::init_logging();
        return match app(&name, &args[3..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let scenarios: [(&str, Scenario); 19] = [
        (
            "a_drain_that_ended_is_not_cut_by_its_bound_before_the_join",
            a_drain_that_ended_is_not_cut_by_its_bound_before_the_join,
        ),
        (
            "a_drain_that_outlasts_its_bound_ends_a_one_process_run",
            a_drain_that_outlasts_its_bound_ends_a_one_process_run,
        ),
        (
            "a_drain_that_outlasts_its_bound_ends_a_starter",
            a_drain_that_outlasts_its_bound_ends_a_starter,
        ),
        (
            "ctrl_c_drains_a_one_process_run",
            ctrl_c_drains_a_one_process_run,
        ),
        (
            "sigterm_drains_a_one_process_run",
            sigterm_drains_a_one_process_run,
        ),
        (
            "sighup_drains_a_one_process_run",
            sighup_drains_a_one_process_run,
        ),
        (
            "sighup_to_the_process_group_drains_a_two_process_run",
            sighup_to_the_process_group_drains_a_two_process_run,
        ),
        (
            "with_sighup_ignored_a_hang_up_changes_nothing",
            with_sighup_ignored_a_hang_up_changes_nothing,
        ),
        (
            "a_second_ctrl_c_ends_a_slow_drain_at_once",
            a_second_ctrl_c_ends_a_slow_drain_at_once,
        ),
        (
            "a_sigterm_after_ctrl_c_ends_a_slow_drain_at_once",
            a_sigterm_after_ctrl_c_ends_a_slow_drain_at_once,
        ),
        (
            "a_second_sighup_ends_a_slow_drain_at_once",
            a_second_sighup_ends_a_slow_drain_at_once,
        ),
        (
            "without_signal_handling_ctrl_c_kills_the_run",
            without_signal_handling_ctrl_c_kills_the_run,
        ),
        (
            "without_signal_handling_sighup_kills_the_run",
            without_signal_handling_sighup_kills_the_run,
        ),
        (
            "after_a_multi_process_run_sigterm_kills_the_program",
            after_a_multi_process_run_sigterm_kills_the_program,
        ),
        (
            "after_a_multi_process_run_ctrl_c_kills_the_program",
            after_a_multi_process_run_ctrl_c_kills_the_program,
        ),
        (
            "after_a_multi_process_run_sighup_kills_the_program",
            after_a_multi_process_run_sighup_kills_the_program,
        ),
        (
            "after_a_one_process_run_ctrl_c_kills_the_program",
            after_a_one_process_run_ctrl_c_kills_the_program,
        ),
        (
            "a_child_says_what_it_is_in_ps_and_top",
            a_child_says_what_it_is_in_ps_and_top,
        ),
        (
            "an_error_returned_from_main_reads_as_a_sentence",
            an_error_returned_from_main_reads_as_a_sentence,
        ),
    ];
    if suite::run(&scenarios, &[], suite::filter().as_deref()) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
