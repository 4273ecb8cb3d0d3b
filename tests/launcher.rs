//! The `iotstream` launcher, end to end: the built binary runs this test binary as the
//! application, in real processes, with real signals and shared memory.
//!
//! Like `tests/processes.rs`, this test has its own `main` (`harness = false`): run as
//! `launcher app NAME ARGS…` it *is* the application NAME (started by the launcher, once to
//! describe its graph, then once per process). Run without arguments it runs every scenario,
//! each with a deadline, and prints `N passed, M failed`. Every scenario removes what it may
//! leave behind (processes, shared-memory objects, files), even when it fails.

// The detector of the example; this file runs it (app `quake`), not the example's `main` nor
// its arguments. (The example allows dead code itself under cfg(test), which clippy sets here.)
#[cfg_attr(not(test), allow(dead_code))]
#[path = "../examples/quake_detector.rs"]
mod quake;

#[path = "support/suite.rs"]
mod suite;
#[path = "support/ticker.rs"]
mod ticker;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use iotstream::{Agent, AgentError, Graph, Inputs, Outputs};
use ticker::{fast_and_ticks, FAST_TICKS};

// ---------------------------------------------------------------------------------------------
// The applications

fn app(name: &str, args: &[String]) -> Result<(), iotstream::Error> {
    let arg = |i: usize| -> u64 { args.get(i).and_then(|a| a.parse().ok()).unwrap_or(0) };
    match name {
        // numbers 0..N (paced if a pace is given: elements per 5 ms) → ×3 → record to $OUT
        "relay" => relay("relay", arg(0), arg(1) as usize),
        // numbers until stopped, paced → ×3 → record
        "endless" => relay("endless", u64::MAX, 200),
        "failing" => failing(),
        // nums → thirds, zip(nums, thirds) → out, capacity 64: stalls (zip moved by the file)
        "stallx" => stallx(),
        // numbers → double → a sink sleeping 1 ms per element, capacity 2: slow, never stalled
        "slow_progress" => slow_progress(),
        // zip(fast, ticks), a tick every 150 ms, 12 of them, capacity 4: slow, never stalled
        "ticker_zip" => ticker_zip(),
        // KIND N CAPACITY STEP_MS: indexed elements of KIND (u64, string, struct) 0..N, one
        // per source step → a slow record of their indices to $OUT (STEP_MS per element)
        "lossless" => lossless(
            args.first().map_or("u64", String::as_str),
            arg(1),
            arg(2) as usize,
            arg(3),
        ),
        "stubborn" => stubborn(),
        // standard input's lines → parse → ×3 → record to $OUT
        "lines" => lines(),
        // numbers, 200 per second, until stopped → `tick` (prints `TICK v` for every 20th) →
        // record
        "chatty" => chatty(),
        // the quake detector as the example builds it, paced at 250 samples/s (ten minutes)
        "quake" => {
            let cfg = quake::Config {
                realtime: true,
                ..quake::Config::default()
            };
            quake::application(&cfg, false).run().map(|_| ())
        }
        // one line of 150 000 characters on stdout, then a tiny graph
        "long_line" => {
            println!("{}", "x".repeat(150_000));
            relay("long_line", 10, 0)
        }
        // N STEP_US: numbers 0..N → `mid` → `record`, which sleeps STEP_US per element and
        // writes each as a line to $OUT as it goes
        "chain" => chain_app(arg(0), arg(1)),
        other => panic!("no application named {other}"),
    }
}

/// A slow sink: sleeps its `step` per element and writes each element's values as lines to
/// its file as it goes, before the step consumes them.
struct LineRecord {
    input: iotstream::Input<Vec<u64>>,
    file: std::fs::File,
    step: Duration,
}

impl Agent for LineRecord {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        for xs in i.slice(&self.input) {
            std::thread::sleep(self.step);
            let text: String = xs.iter().map(|x| format!("{x}\n")).collect();
            self.file.write_all(text.as_bytes())?;
        }
        i.consume_all(&self.input);
        Ok(())
    }
}

/// numbers 0..n → `mid` (each as a one-element vector) → `record`, a [`LineRecord`] of
/// `step_us` per element writing to `$OUT`. With `$HOLD_PIPES` set, the process first starts
/// a program that shares its output pipes and outlives it by seconds (a logger, say): its
/// launcher then hears of its exit up to 2 s after it died (it waits for the pipes' ends).
fn chain_app(n: u64, step_us: u64) -> Result<(), iotstream::Error> {
    if std::env::var_os("HOLD_PIPES").is_some() {
        let _ = Command::new("/bin/sleep").arg("4").env_clear().spawn();
    }
    let mut g = Graph::new("chain");
    let numbers = g.source_iter("numbers", 0..n);
    let mid = g.map("mid", &numbers, |v: &u64| vec![*v]);
    let input = g.add_agent("record", |p| {
        let input = p.input::<Vec<u64>>("in");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(std::env::var_os("OUT").expect("$OUT"))
            .expect("open $OUT");
        let step = Duration::from_micros(step_us);
        (LineRecord { input, file, step }, input)
    });
    g.connect(&mid, &input);
    g.run().map(drop)
}

/// The values of 0..n that no line of `out` holds (a line that is not such a value is an
/// error).
fn missing_in(out: &Path, n: u64) -> Result<Vec<u64>, String> {
    let text = std::fs::read_to_string(out).map_err(|e| e.to_string())?;
    let mut seen = vec![false; n as usize];
    for line in text.lines() {
        match line.parse::<u64>() {
            Ok(i) if i < n => seen[i as usize] = true,
            _ => return Err(format!("a bad line in the output: {line:?}")),
        }
    }
    Ok((0..n).filter(|&i| !seen[i as usize]).collect())
}

/// Writes every element as a line to the file named by `$OUT`, one write per step (so what a
/// step consumed is in the file before the step returns); prints `RESULT count=… sum=…` at the
/// end of its stream.
struct Record {
    input: iotstream::Input<u64>,
    file: Option<std::fs::File>,
    count: u64,
    sum: u64,
}

impl Agent for Record {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        let xs = i.slice(&self.input);
        if let Some(f) = &mut self.file {
            let mut text = String::with_capacity(xs.len() * 8);
            for x in xs {
                text.push_str(&x.to_string());
                text.push('\n');
            }
            f.write_all(text.as_bytes())?;
        }
        for &x in xs {
            self.count += 1;
            self.sum = self.sum.wrapping_add(x);
        }
        i.consume_all(&self.input);
        Ok(())
    }

    fn finish(&mut self, _o: &mut Outputs) -> Result<(), AgentError> {
        println!("RESULT count={} sum={}", self.count, self.sum);
        Ok(())
    }
}

fn relay(app: &str, n: u64, pace: usize) -> Result<(), iotstream::Error> {
    if std::env::var_os("RELAY_REPORT").is_some() {
        // What the launcher gave this process: its role, a deployment variable, its CPUs.
        let cpus = std::fs::read_to_string("/proc/self/status")
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Cpus_allowed_list:")
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_default();
        println!(
            "REPORT process={} tag={} cpus={cpus}",
            std::env::var("IOTSTREAM_PROCESS").unwrap_or_default(),
            std::env::var("RELAY_TAG").unwrap_or_default()
        );
    }
    let mut g = Graph::new(app);
    // A deployment's `[env]` may change the graph: every process, and its description, get it.
    let capacity = std::env::var("RELAY_CAPACITY").map_or(1024, |c| c.parse().expect("a number"));
    g.set_default_capacity(capacity);
    let mut next = 0u64;
    let numbers = g.source(
        "numbers",
        move |out: &mut Vec<u64>, max: usize| -> Result<bool, AgentError> {
            let take = if pace > 0 { max.min(pace) } else { max };
            let end = next.saturating_add(take as u64).min(n);
            out.extend(next..end);
            next = end;
            if pace > 0 {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(next < n)
        },
    );
    let tripled = g.map("triple", &numbers, |v: &u64| v.wrapping_mul(3));
    let input = record(&mut g);
    g.connect(&tripled, &input);
    let metrics = g.run()?;
    if let Some(s) = metrics.stream("numbers.out") {
        println!("EMITTED {}", s.elements);
    }
    Ok(())
}

/// The `record` agent: writes every element to `$OUT` (see [`Record`]).
fn record(g: &mut Graph) -> iotstream::Input<u64> {
    g.add_agent("record", |p| {
        let input = p.input::<u64>("in");
        let file = std::env::var_os("OUT").map(|path| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .read(true)
                .append(true)
                .open(path)
                .expect("open $OUT");
            // A SIGKILL in the middle of a write may leave half a line: end it with a mark, so
            // it stays a line of its own (the elements in it were not acknowledged: they come
            // again).
            use std::io::{Read, Seek, SeekFrom};
            let mut last = [0u8; 1];
            if f.seek(SeekFrom::End(-1)).is_ok()
                && f.read_exact(&mut last).is_ok()
                && last[0] != b'\n'
            {
                f.write_all(b"#torn\n").expect("write $OUT");
            }
            f
        });
        (
            Record {
                input,
                file,
                count: 0,
                sum: 0,
            },
            input,
        )
    })
}

/// An element of the `lossless` app with a `Vec` and a `String` (postcard-encoded, some
/// thousands of bytes: far more than its `size_of`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Reading {
    index: u64,
    samples: Vec<u32>,
    label: String,
}

/// The element of index `i` of the `lossless` app, for each kind.
trait Indexed: iotstream::Element + PartialEq {
    fn make(i: u64) -> Self;
    fn index(&self) -> u64;
}

impl Indexed for u64 {
    fn make(i: u64) -> u64 {
        i
    }
    fn index(&self) -> u64 {
        *self
    }
}

impl Indexed for String {
    fn make(i: u64) -> String {
        // 1 500 to 3 500 bytes (under the 4 KiB frame of the smallest ring): the ring's size
        // estimate for a String is far below.
        format!("{i} {}", "s".repeat(1_500 + (i as usize * 7) % 2_000))
    }
    fn index(&self) -> u64 {
        self.split(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(u64::MAX)
    }
}

impl Indexed for Reading {
    fn make(i: u64) -> Reading {
        Reading {
            index: i,
            // 500 to 749 samples of mostly 5 postcard bytes: up to 3.8 KB encoded.
            samples: (0..500 + i % 250)
                .map(|k| (i as u32).wrapping_mul(2_654_435_761) ^ k as u32)
                .collect(),
            label: format!("sensor-{}", i % 13),
        }
    }
    fn index(&self) -> u64 {
        self.index
    }
}

/// Records the index of every element to `$OUT`, one write per element after sleeping `step`
/// for it, then consumes the step's elements: a slow consumer that makes steady progress
/// however many elements a step gets (adaptive batching hands a busy reader everything that
/// waits). A kill in the middle of a step leaves the step's elements unconsumed: they come
/// again. An element that differs from the one its index names is recorded as `corrupt I`.
struct SlowRecord<T> {
    input: iotstream::Input<T>,
    file: std::fs::File,
    step: Duration,
}

impl<T: Indexed> Agent for SlowRecord<T> {
    fn step(&mut self, i: &mut Inputs, _o: &mut Outputs) -> Result<(), AgentError> {
        for x in i.slice(&self.input) {
            std::thread::sleep(self.step);
            let k = x.index();
            let line = if *x != T::make(k) {
                format!("corrupt {k}\n")
            } else {
                format!("{k}\n")
            };
            self.file.write_all(line.as_bytes())?;
        }
        i.consume_all(&self.input);
        Ok(())
    }
}

fn lossless(kind: &str, n: u64, capacity: usize, step_ms: u64) -> Result<(), iotstream::Error> {
    match kind {
        "u64" => lossless_of::<u64>(n, capacity, step_ms),
        "string" => lossless_of::<String>(n, capacity, step_ms),
        "struct" => lossless_of::<Reading>(n, capacity, step_ms),
        other => panic!("no element kind {other}"),
    }
}

/// `numbers` (one element per source step: one frame each) → `record` ([`SlowRecord`]); a
/// capacity of 0 keeps the default.
fn lossless_of<T: Indexed>(n: u64, capacity: usize, step_ms: u64) -> Result<(), iotstream::Error> {
    let mut g = Graph::new("lossless");
    if capacity > 0 {
        g.set_default_capacity(capacity);
    }
    let mut next = 0u64;
    let numbers = g.source(
        "numbers",
        move |out: &mut Vec<T>, _max: usize| -> Result<bool, AgentError> {
            if next < n {
                out.push(T::make(next));
                next += 1;
            }
            Ok(next < n)
        },
    );
    let input = g.add_agent("record", |p| {
        let input = p.input::<T>("in");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(std::env::var_os("OUT").expect("$OUT"))
            .expect("open $OUT");
        let agent = SlowRecord {
            input,
            file,
            step: Duration::from_millis(step_ms),
        };
        (agent, input)
    });
    g.connect(&numbers, &input);
    let metrics = g.run()?;
    if let Some(l) = metrics.link("numbers.out", "record") {
        println!("RELEASED_EARLY {}", l.released_early);
    }
    Ok(())
}

/// Numbers paced at 200 per second until stopped → `tick`, which prints `TICK v` for every
/// 20th → record.
fn chatty() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("chatty");
    let mut next = 0u64;
    let numbers = g.source(
        "numbers",
        move |out: &mut Vec<u64>, _max: usize| -> Result<bool, AgentError> {
            out.push(next);
            next += 1;
            std::thread::sleep(Duration::from_millis(5));
            Ok(true)
        },
    );
    let ticked = g.map("tick", &numbers, |v: &u64| {
        if v % 20 == 0 {
            println!("TICK {v}");
        }
        *v
    });
    let input = record(&mut g);
    g.connect(&ticked, &input);
    g.run().map(|_| ())
}

/// Standard input's lines, parsed → ×3 → record.
fn lines() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("lines");
    let text = g.source_stdin("stdin");
    let numbers = g.filter_map("parse", &text, |l: &String| l.parse::<u64>().ok());
    let tripled = g.map("triple", &numbers, |v: &u64| v.wrapping_mul(3));
    let input = record(&mut g);
    g.connect(&tripled, &input);
    g.run().map(|_| ())
}

/// A sink that never finishes its first step: a drain cannot complete.
fn stubborn() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("stubborn");
    let s = g.source_fn("numbers", Duration::from_millis(1), None, || 1u64);
    g.for_each("sleepy", &s, |_: &u64| {
        std::thread::sleep(Duration::from_secs(3600))
    });
    g.run().map(|_| ())
}

/// A capacity too small for the graph: `zip` needs a third of the numbers on `in1` for every
/// one on `in0`, whose 64 fill at once. The deployment moves `zip` to another process.
fn stallx() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("stallx");
    g.set_default_capacity(64);
    let s = g.source_iter("nums", 0..10_000u64);
    let f = g.filter("thirds", &s, |v: &u64| v % 3 == 0);
    let z = g.zip("zip", &s, &f);
    g.for_each("out", &z, |_: &(u64, u64)| {});
    g.run().map(|_| ())
}

/// Slow but moving over tiny capacities; the deployment spreads it over three processes.
fn slow_progress() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("slow_progress");
    g.set_default_capacity(2);
    let s = g.source_iter("numbers", 0..600u64);
    let m = g.map("double", &s, |v: &u64| 2 * v);
    let mut sum = 0u64;
    g.sink_list("slow", &m, move |xs: &[u64]| {
        for &v in xs {
            std::thread::sleep(Duration::from_millis(1));
            sum += v;
        }
        if sum == 359_400 {
            println!("RESULT {sum}");
        }
        Ok(())
    });
    g.run().map(|_| ())
}

/// A zip whose fast side (capacity 4, one element at a time) waits for a ticker's ticks,
/// every 150 ms (three stall probes), 12 of them, relayed by a map: between two ticks
/// nothing moves, but the next tick will move it. The ticker also reads `fast`, which keeps
/// it running while `fast` waits; once `fast` ends, it sends the ticks left at once. The
/// deployment puts the ticker, the relay and the rest in three processes. The sink prints
/// the sum of the pairs once the 12 are in.
fn ticker_zip() -> Result<(), iotstream::Error> {
    let (mut g, fast, ticks) = fast_and_ticks("ticker_zip");
    let relayed = g.map("relay", &ticks, |v: &u64| *v);
    let zipped = g.zip("zip", &fast, &relayed);
    let (mut pairs, mut sum) = (0u64, 0u64);
    g.sink_list("out", &zipped, move |xs: &[(u64, u64)]| {
        for (a, b) in xs {
            pairs += 1;
            sum += a + b;
        }
        if pairs == FAST_TICKS {
            println!("RESULT {pairs} {sum}");
        }
        Ok(())
    });
    g.run().map(|_| ())
}

/// An agent fails on element 5000.
fn failing() -> Result<(), iotstream::Error> {
    let mut g = Graph::new("failing");
    let s = g.source_iter("numbers", 0..100_000u64);
    let m = g.try_map("fragile", &s, |v: &u64| {
        if *v == 5_000 {
            Err(format!("bad reading {v}"))
        } else {
            Ok(*v)
        }
    });
    g.for_each("sink", &m, |_: &u64| {});
    g.run().map(|_| ())
}

// ---------------------------------------------------------------------------------------------
// Running the launcher

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
            "iotstream-launcher-test-{}-{name}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch folder");
        Scratch(dir)
    }

    fn file(&self, name: &str, text: &str) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, text).expect("write scratch file");
        p
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running `iotstream` command whose output is collected as it comes; killed (with every
/// process of its run) and its rings removed when dropped.
struct Launched {
    child: Child,
    app: String,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    /// Keeps a [`Feed::KeepOpen`] pipe open while it lives.
    _stdin_open: mpsc::Sender<()>,
}

/// What the launcher under test gets on its standard input.
enum Feed {
    /// Nothing: its standard input is empty.
    Nothing,
    /// These bytes, then the end of input.
    All(Vec<u8>),
    /// These bytes, and the pipe stays open (no more input, no end) until the test ends.
    KeepOpen(Vec<u8>),
}

impl Launched {
    /// Starts `iotstream ARGS` with `feed` written to its standard input by a thread.
    fn start(args: &[&std::ffi::OsStr], env: &[(&str, &Path)], app: &str, feed: Feed) -> Launched {
        let mut cmd = Command::new(launcher_exe());
        cmd.args(args)
            .stdin(match feed {
                Feed::Nothing => Stdio::null(),
                _ => Stdio::piped(),
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start iotstream");
        let (hold, held) = mpsc::channel::<()>();
        if let Some(mut stdin) = child.stdin.take() {
            std::thread::spawn(move || {
                let (bytes, keep_open) = match feed {
                    Feed::Nothing => return,
                    Feed::All(b) => (b, false),
                    Feed::KeepOpen(b) => (b, true),
                };
                let _ = stdin.write_all(&bytes);
                if keep_open {
                    // Returns when the `Launched` is dropped (its sender with it).
                    let _ = held.recv();
                }
            });
        }
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().unwrap(), Arc::clone(&out)),
            collect(child.stderr.take().unwrap(), Arc::clone(&err)),
        ];
        Launched {
            child,
            app: app.to_string(),
            out,
            err,
            readers,
            _stdin_open: hold,
        }
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap().clone()
    }

    /// Waits (bounded: a guard against a hang, not a speed claim) until `cond` holds on stderr.
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
                // Whatever the outcome, the launcher must leave nothing behind: checked here,
                // before `drop` cleans up for the next scenario.
                let (pids, rings) = (run_pids(self.pid()), self.own_segments());
                if !pids.is_empty() || !rings.is_empty() {
                    return Err(format!(
                        "iotstream ended ({status}) but left processes {pids:?} and rings {rings:?}:\n{err}"
                    ));
                }
                return Ok((status, out, err));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "iotstream did not end within 120 s; stderr:\n{}",
                    self.stderr()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The shared-memory objects of this launcher's run (their names carry its pid: another
    /// run of the same application may be on).
    fn own_segments(&self) -> Vec<String> {
        let run = format!("iotstream.{}.{}-", self.app, self.pid());
        segments(&self.app)
            .into_iter()
            .filter(|s| s.starts_with(&run))
            .collect()
    }
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

impl Drop for Launched {
    fn drop(&mut self) {
        let launcher = self.child.id();
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in run_pids(launcher) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
        for s in self.own_segments() {
            let _ = std::fs::remove_file(format!("/dev/shm/{s}"));
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

/// `iotstream run <this binary> [--deploy FILE] -- app NAME ARGS…` with `$OUT` set.
fn run_relay(app: &str, args: &[&str], deploy: Option<&Path>, out: &Path) -> Launched {
    run_app(app, args, deploy, out, Feed::Nothing)
}

/// [`run_relay`] with `feed` on the launcher's standard input.
fn run_app(app: &str, args: &[&str], deploy: Option<&Path>, out: &Path, feed: Feed) -> Launched {
    launch(app, args, deploy, &[("OUT", out)], feed)
}

/// `iotstream run <this binary> [--deploy FILE] -- app NAME ARGS…` with `env` added to its
/// environment and `feed` on its standard input.
fn launch(
    app: &str,
    args: &[&str],
    deploy: Option<&Path>,
    env: &[(&str, &Path)],
    feed: Feed,
) -> Launched {
    let exe = own_exe();
    let mut a: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), exe.as_os_str()];
    if let Some(d) = deploy {
        a.push("--deploy".as_ref());
        a.push(d.as_os_str());
    }
    a.push("--".as_ref());
    a.push("app".as_ref());
    a.push(app.as_ref());
    for x in args {
        a.push(x.as_ref());
    }
    Launched::start(&a, env, app, feed)
}

/// Waits (bounded: a hang guard) until `out` has `lines` lines, sends the launcher one Ctrl-C
/// (SIGINT), waits for its end and checks that it exited with 0; returns its stdout and stderr.
fn ctrl_c_once_recorded(
    run: Launched,
    out: &Path,
    lines: usize,
) -> Result<(String, String), String> {
    signal_once_recorded(run, out, lines, "INT")
}

/// [`ctrl_c_once_recorded`] with signal `signal` (its name for `kill`: `INT`, `HUP`…).
fn signal_once_recorded(
    run: Launched,
    out: &Path,
    lines: usize,
    signal: &str,
) -> Result<(String, String), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines_of(out).len() < lines && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(run.pid().to_string())
        .status();
    let (status, stdout, stderr) = run.wait()?;
    ensure(status.code() == Some(0), || {
        format!("exit {status} after SIG{signal}:\n{stderr}")
    })?;
    Ok((stdout, stderr))
}

fn lines_of(path: &Path) -> Vec<u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect()
}

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

const MOVED: &str = r#"
[processes.work]
agents = ["triple"]

[processes.sink]
agents = ["record"]
"#;

fn moving_agents_by_deployment_gives_identical_output() -> Result<(), String> {
    let dir = Scratch::new("moved");
    let deploy = dir.file("moved.toml", MOVED);
    let (one, many) = (dir.path("one.txt"), dir.path("many.txt"));
    let (status, out1, err1) = run_relay("relay", &["200000"], None, &one).wait()?;
    ensure(status.success(), || {
        format!("as declared: {status}\n{err1}")
    })?;
    let (status, out3, err3) = run_relay("relay", &["200000"], Some(&deploy), &many).wait()?;
    ensure(status.success(), || format!("deployed: {status}\n{err3}"))?;
    for p in ["main", "work", "sink"] {
        ensure(err3.contains(&format!("process '{p}' started")), || {
            format!("process '{p}' was not started:\n{err3}")
        })?;
    }
    ensure(!err1.contains("process 'work'"), || err1.clone())?;
    let (a, b) = (lines_of(&one), lines_of(&many));
    ensure(a.len() == 200_000, || {
        format!("{} lines as declared", a.len())
    })?;
    ensure(a == b, || {
        format!("outputs differ: {} vs {} lines", a.len(), b.len())
    })?;
    let result = |out: &str| {
        out.lines()
            .find(|l| l.contains("RESULT"))
            .map(|l| l.split_once("RESULT").unwrap().1.to_string())
    };
    ensure(
        result(&out1).is_some() && result(&out1) == result(&out3),
        || format!("results differ:\n{out1}\n{out3}"),
    )
}

fn ctrl_c_drains_every_element_and_exits_0() -> Result<(), String> {
    let dir = Scratch::new("ctrlc");
    let deploy = dir.file("moved.toml", MOVED);
    let out = dir.path("out.txt");
    let run = run_relay("endless", &[], Some(&deploy), &out);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    // Every process says what it is in `ps` (argv[0]) and `top` (comm).
    let mut titles: Vec<(String, String)> = run_pids(run.pid())
        .into_iter()
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (
                String::from_utf8_lossy(argv0).into_owned(),
                comm.trim_end().to_string(),
            )
        })
        .collect();
    titles.sort();
    let expected: Vec<(String, String)> = ["main", "sink", "work"]
        .iter()
        .map(|p| (format!("iotstream endless/{p}"), format!("endless/{p}")))
        .collect();
    ensure(titles == expected, || {
        format!("the processes' argv[0] and comm: {titles:?}")
    })?;
    // Let data flow for a moment, so the drain has something in flight.
    let (stdout, _stderr) = ctrl_c_once_recorded(run, &out, 5_000)?;
    every_emitted_element_recorded(&stdout, &out)
}

/// The `endless` relay's stdout says it emitted as many elements as its `record` received, as
/// many as the lines of `out`, and at least 5 000.
fn every_emitted_element_recorded(stdout: &str, out: &Path) -> Result<(), String> {
    let emitted = stdout
        .lines()
        .find_map(|l| l.split_once("EMITTED ").map(|(_, n)| n.to_string()))
        .ok_or_else(|| format!("no EMITTED line:\n{stdout}"))?;
    let received = stdout
        .lines()
        .find_map(|l| {
            l.split_once("RESULT count=")
                .and_then(|(_, r)| r.split(' ').next().map(str::to_string))
        })
        .ok_or_else(|| format!("no RESULT line:\n{stdout}"))?;
    ensure(emitted == received, || {
        format!("emitted {emitted}, received {received}")
    })?;
    ensure(lines_of(out).len().to_string() == received, || {
        format!(
            "{} lines in the file, {received} received",
            lines_of(out).len()
        )
    })?;
    ensure(emitted.parse::<u64>().unwrap_or(0) >= 5_000, || {
        format!("only {emitted} emitted")
    })
}

/// A hang-up (SIGHUP: the terminal closed, the SSH session dropped) drains as Ctrl-C does:
/// every element emitted is recorded, the exit is 0, and neither the control socket nor a ring
/// nor the run's liveness lock is left behind (`Launched::wait` checks the rings and the lock).
fn sighup_drains_every_element_and_leaves_nothing_behind() -> Result<(), String> {
    let xdg = Scratch::new("sighup");
    let deploy = xdg.file("moved.toml", MOVED);
    let out = xdg.path("out.txt");
    let run = launch_in(&xdg.0, "endless", &[], Some(&deploy), &[], &[("OUT", &out)]);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    socket_of(&xdg.0, run.pid())?;
    let (stdout, stderr) = signal_once_recorded(run, &out, 5_000, "HUP")?;
    ensure(stderr.contains("signal 1: draining"), || {
        format!("the hang-up did not start a drain:\n{stderr}")
    })?;
    every_emitted_element_recorded(&stdout, &out)?;
    ensure(sockets(&xdg.0).is_empty(), || {
        format!("sockets left: {:?}", sockets(&xdg.0))
    })
}

/// `producer | iotstream run APP --deploy FILE`: the launcher's standard input reaches the
/// agent that reads it, which the file moves to a process of its own; every line, once.
fn stdin_reaches_the_agent_that_reads_it_wherever_it_is_placed() -> Result<(), String> {
    let dir = Scratch::new("stdin");
    let deploy = dir.file("stdin.toml", READER_MOVED);
    let graph = Command::new(launcher_exe())
        .arg("graph")
        .arg(own_exe())
        .arg("--deploy")
        .arg(&deploy)
        .args(["--", "app", "lines"])
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&graph.stdout);
    ensure(
        text.contains("process reader: stdin (standard input), parse"),
        || format!("the graph does not show who reads standard input:\n{text}"),
    )?;
    let out = dir.path("out.txt");
    let n = 100_000u64;
    let run = run_lines(&deploy, &out, n, Feed::All);
    let (status, stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    each_line_recorded_once(&out, n, &stdout, &stderr)
}

/// Ctrl-C while the process reading standard input waits for more (the producer is quiet, the
/// pipe open): the drain does not wait for input that may never come. Every line that was sent
/// is recorded, once, and the exit is 0.
fn ctrl_c_while_standard_input_is_quiet_drains_and_exits_0() -> Result<(), String> {
    let dir = Scratch::new("stdin-quiet");
    let deploy = dir.file("stdin.toml", READER_MOVED);
    let out = dir.path("out.txt");
    let n = 20_000u64;
    let run = run_lines(&deploy, &out, n, Feed::KeepOpen);
    let (stdout, stderr) = ctrl_c_once_recorded(run, &out, n as usize)?;
    // The line source saw the stop itself (it waits for input in short slices): it was not
    // abandoned in the middle of a read.
    ensure(!stderr.contains("is still waiting for input"), || {
        format!("the standard input source had to be abandoned:\n{stderr}")
    })?;
    each_line_recorded_once(&out, n, &stdout, &stderr)
}

/// The `lines` app with its reader of standard input (`stdin`, `parse`) and its `record` in
/// processes of their own.
const READER_MOVED: &str = r#"
[processes.reader]
agents = ["stdin", "parse"]

[processes.sink]
agents = ["record"]
"#;

/// The `lines` app as `deploy` places it, fed the numbers 0..n as lines on its standard input
/// (`feed`: [`Feed::All`] or [`Feed::KeepOpen`]), recording to `out`.
fn run_lines(deploy: &Path, out: &Path, n: u64, feed: fn(Vec<u8>) -> Feed) -> Launched {
    let input: String = (0..n).map(|v| format!("{v}\n")).collect();
    run_app("lines", &[], Some(deploy), out, feed(input.into_bytes()))
}

/// The `lines` app recorded the numbers 0..n (×3) in `out`, in order, once each, and its sink
/// process reported n of them.
fn each_line_recorded_once(out: &Path, n: u64, stdout: &str, stderr: &str) -> Result<(), String> {
    let got = lines_of(out);
    let want: Vec<u64> = (0..n).map(|v| v * 3).collect();
    ensure(got == want, || {
        format!(
            "{} lines recorded, {n} expected (first {:?})\n{stderr}",
            got.len(),
            &got[..got.len().min(5)]
        )
    })?;
    ensure(
        stdout.contains(&format!("[sink] RESULT count={n} ")),
        || format!("no RESULT line from process 'sink':\n{stdout}"),
    )
}

/// SIGKILL of `victim` mid-run under on-failure: it is restarted and the output has no gap.
fn sigkill_under_on_failure_restarts_without_gap(victim: &str) -> Result<(), String> {
    let dir = Scratch::new(&format!("restart-{victim}"));
    let restart = "restart = \"on-failure\"\nmax_restarts = 2\nbackoff_ms = 50\n";
    let (work, sink) = if victim == "sink" {
        ("", restart)
    } else {
        (restart, "")
    };
    let deploy = dir.file(
        "restart.toml",
        &format!(
            "[processes.work]\nagents = [\"triple\"]\n{work}\n[processes.sink]\nagents = [\"record\"]\n{sink}"
        ),
    );
    let out = dir.path("out.txt");
    // Paced batches of 200: when the kill lands, the victim usually holds elements delivered
    // and not yet acknowledged (a ring input acknowledges after each step), delivered again
    // after the restart.
    let n = 150_000u64;
    let run = run_relay("relay", &[&n.to_string(), "200"], Some(&deploy), &out);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines_of(&out).len() < 10_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = pid_of(&run.stderr(), victim).ok_or_else(|| run.stderr())?;
    let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
    let (status, _stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    ensure(
        stderr.contains(&format!("process '{victim}' was killed by signal 9")),
        || format!("the kill was not reported:\n{stderr}"),
    )?;
    ensure(stderr.contains("restart 1 of 2"), || {
        format!("no restart reported:\n{stderr}")
    })?;
    let second = pid_of(&stderr, victim);
    ensure(second.is_some_and(|p| p != pid), || {
        format!("'{victim}' was not started again:\n{stderr}")
    })?;
    let mut got = lines_of(&out);
    let total = got.len();
    got.sort_unstable();
    got.dedup();
    let want: Vec<u64> = (0..n).map(|v| v * 3).collect();
    let missing = want.len() - want.iter().filter(|v| got.binary_search(v).is_ok()).count();
    ensure(missing == 0, || {
        format!(
            "{missing} elements lost ({} distinct of {n}, {total} lines)",
            got.len()
        )
    })?;
    ensure(got.len() == want.len(), || {
        format!("unexpected values: {} distinct", got.len())
    })?;
    eprintln!(
        "  ({victim} killed and restarted: {} duplicates delivered again)",
        total - want.len()
    );
    Ok(())
}

/// A slow sink process under `restart = "on-failure"` is killed with SIGKILL `KILLS` times
/// while a source sends `n` indexed elements of `kind` on a connection of `capacity` (0: the
/// default): every index arrives (again after a restart, at least once), the launcher exits 0,
/// and no ring space was released before its elements were consumed.
fn repeated_sigkills_of_a_slow_sink_lose_nothing(
    kind: &str,
    n: u64,
    capacity: usize,
) -> Result<(), String> {
    const KILLS: usize = 3;
    let dir = Scratch::new(&format!("lossless-{kind}-{capacity}"));
    let deploy = dir.file(
        "lossless.toml",
        "[processes.sink]\nagents = [\"record\"]\nrestart = \"on-failure\"\nmax_restarts = 5\nbackoff_ms = 20\n",
    );
    let out = dir.path("out.txt");
    let args = [kind, &n.to_string(), &capacity.to_string(), "2"];
    let run = run_app("lossless", &args, Some(&deploy), &out, Feed::Nothing);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let recorded = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
    };
    for kill in 1..=KILLS {
        // Kill once the sink has made some progress since it (re)started, while it still
        // has most of the stream ahead of it.
        let pid = pid_of(&run.stderr(), "sink").ok_or_else(|| run.stderr())?;
        let from = recorded();
        let deadline = Instant::now() + Duration::from_secs(60);
        while recorded() < from + n as usize / 8 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        if kill < KILLS {
            run.wait_stderr("the sink restarted", |e| {
                pid_of(e, "sink").is_some_and(|p| p != pid)
            })?;
        }
    }
    let (status, stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    let kills = stderr
        .matches("process 'sink' was killed by signal 9")
        .count();
    ensure(kills == KILLS, || {
        format!("{kills} kills of 'sink' reported, {KILLS} made:\n{stderr}")
    })?;
    let text = std::fs::read_to_string(&out).map_err(|e| e.to_string())?;
    let mut seen = vec![0u32; n as usize];
    for line in text.lines() {
        match line.parse::<u64>() {
            Ok(i) if i < n => seen[i as usize] += 1,
            _ => ensure(line == "#torn" || line.is_empty(), || {
                format!("a bad line in the output: {line:?}")
            })?,
        }
    }
    let missing: Vec<usize> = (0..n as usize).filter(|&i| seen[i] == 0).collect();
    ensure(missing.is_empty(), || {
        format!(
            "{} of {n} elements lost (first {:?}); the launcher reported success:\n{}",
            missing.len(),
            &missing[..missing.len().min(10)],
            stderr
                .lines()
                .filter(|l| l.contains("early"))
                .take(3)
                .collect::<Vec<_>>()
                .join("\n")
        )
    })?;
    ensure(!stderr.contains("releasing some early"), || {
        format!("ring space released before consumption:\n{stderr}")
    })?;
    ensure(stdout.contains("[sink] RELEASED_EARLY 0"), || {
        format!("the last sink did not report 0 elements released early:\n{stdout}")
    })?;
    let again: u32 = seen.iter().map(|&c| c - 1).sum();
    eprintln!("  ({kind}, capacity {capacity}: {KILLS} kills, {again} delivered again)");
    Ok(())
}

fn a_drain_that_times_out_kills_the_stragglers_and_fails() -> Result<(), String> {
    let dir = Scratch::new("stubborn");
    let deploy = dir.file(
        "stubborn.toml",
        "[supervisor]\ndrain_timeout_ms = 300\n\n[processes.sleeper]\nagents = [\"sleepy\"]\n",
    );
    let run = launch("stubborn", &[], Some(&deploy), &[], Feed::Nothing);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    std::thread::sleep(Duration::from_millis(200));
    let launcher = run.pid();
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(launcher.to_string())
        .status();
    let (status, _out, err) = run.wait()?;
    ensure(status.code() == Some(1), || {
        format!("expected exit 1 after a timed-out drain, got {status}:\n{err}")
    })?;
    ensure(
        err.contains("the drain did not end within 300 ms: killed") && err.contains("'sleeper'"),
        || format!("the stragglers are not named:\n{err}"),
    )?;
    ensure(run_pids(launcher).is_empty(), || {
        format!("processes left: {:?}", run_pids(launcher))
    })
}

/// `[env]` and a process's own `env` reach the processes, and `[env]` the describing run too (the
/// graph reads `RELAY_CAPACITY`: described without it, every process was refused as "a
/// different graph").
fn deployment_env_and_cpus_reach_the_processes() -> Result<(), String> {
    let dir = Scratch::new("env");
    // The first CPU this test may run on (CPU 0 may be outside its set).
    let cpu: usize = std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| v.trim().split([',', '-']).next()?.parse().ok())
        .ok_or("cannot read this process's CPUs")?;
    let deploy = dir.file(
        "env.toml",
        &format!("[env]\nRELAY_TAG = \"everyone\"\nRELAY_CAPACITY = \"64\"\n\n[processes.work]\nagents = [\"triple\"]\ncpus = [{cpu}]\nenv = {{ RELAY_TAG = \"worker\" }}\n\n[processes.sink]\nagents = [\"record\"]\n"),
    );
    let out = dir.path("out.txt");
    let run = launch(
        "relay",
        &["1000"],
        Some(&deploy),
        &[("OUT", &out), ("RELAY_REPORT", Path::new("1"))],
        Feed::Nothing,
    );
    let (status, stdout, err) = run.wait()?;
    ensure(status.success(), || format!("{status}:\n{err}"))?;
    for want in [
        format!("[work] REPORT process=work tag=worker cpus={cpu}\n"),
        "[main] REPORT process=main tag=everyone cpus=".to_string(),
        "[sink] REPORT process=sink tag=everyone cpus=".to_string(),
    ] {
        ensure(stdout.contains(&want), || {
            format!("no '{want}' in:\n{stdout}")
        })?;
    }
    ensure(lines_of(&out).len() == 1000, || {
        format!("{} lines", lines_of(&out).len())
    })
}

/// A valid deployment file of 300 KiB (a long comment, and 1000 variables in `[env]`): more
/// than one environment variable may hold (128 KiB), which is how the file used to travel. It
/// is checked, and runs, end to end.
fn a_deployment_file_over_128_kib_runs() -> Result<(), String> {
    let dir = Scratch::new("large");
    let mut text = String::from(MOVED);
    text.push_str("\n[env]\n");
    for i in 0..1000 {
        text.push_str(&format!("RELAY_PAD_{i} = \"{}\"\n", "p".repeat(100)));
    }
    text.push_str("RELAY_TAG = \"from the large file\"\n");
    while text.len() < 300 * 1024 {
        text.push_str(
            "# padding: a deployment file may be long, with comments and generated parts\n",
        );
    }
    let deploy = dir.file("large.toml", &text);
    let exe = own_exe();
    let check = Command::new(launcher_exe())
        .args([
            "check".as_ref(),
            deploy.as_os_str(),
            "--app".as_ref(),
            exe.as_os_str(),
        ])
        .args(["--", "app", "relay", "10"])
        .output()
        .map_err(|e| e.to_string())?;
    ensure(check.status.success(), || format!("check: {check:?}"))?;
    let out = dir.path("out.txt");
    let run = launch(
        "relay",
        &["1000"],
        Some(&deploy),
        &[("OUT", &out), ("RELAY_REPORT", Path::new("1"))],
        Feed::Nothing,
    );
    let (status, stdout, err) = run.wait()?;
    ensure(status.success(), || format!("{status}:\n{err}"))?;
    for p in ["main", "work", "sink"] {
        ensure(
            stdout.contains(&format!(
                "[{p}] REPORT process={p} tag=from the large file "
            )),
            || format!("process '{p}' did not get the file's [env]:\n{stdout}"),
        )?;
    }
    ensure(lines_of(&out).len() == 1000, || {
        format!("{} lines", lines_of(&out).len())
    })
}

/// A program that is not an iotstream application (here: one that panics before building a
/// graph), and one that does not exist: refused with exit 2 and a message that says why.
fn a_program_that_does_not_describe_itself_is_refused_clearly() -> Result<(), String> {
    // The panic message is among the last lines only without a backtrace after it.
    let run = launch(
        "no_such_app",
        &[],
        None,
        &[("RUST_BACKTRACE", Path::new("0"))],
        Feed::Nothing,
    );
    let (status, _out, err) = run.wait()?;
    ensure(status.code() == Some(2), || {
        format!("exit {status}:\n{err}")
    })?;
    ensure(
        err.contains("did not describe its graph (it exited with status 101)")
            && err.contains("Its last lines on standard error:")
            && err.contains("no application named no_such_app"),
        || format!("the refusal does not say why:\n{err}"),
    )?;
    // It failed and said why (as an application rejecting its arguments does): it is not
    // asked whether it is an iotstream application. A program that ends well without
    // describing itself is.
    ensure(
        !err.contains("is it an iotstream application")
            && err.contains("it ended before calling Graph::run or Graph::start"),
        || format!("a failing application is asked what it is:\n{err}"),
    )?;
    let run = Launched::start(
        &["run".as_ref(), "true".as_ref()],
        &[],
        "true",
        Feed::Nothing,
    );
    let (status, _out, err) = run.wait()?;
    ensure(
        status.code() == Some(2) && err.contains("is it an iotstream application"),
        || format!("true: exit {status}:\n{err}"),
    )?;
    // A folder is not a program; it is not a permission problem either.
    let dir = Scratch::new("a-folder");
    let run = Launched::start(
        &["run".as_ref(), dir.0.as_os_str()],
        &[],
        "a_folder",
        Feed::Nothing,
    );
    let (status, _out, err) = run.wait()?;
    ensure(
        status.code() == Some(2)
            && err.contains(&format!(
                "cannot start the application '{}': it is a directory, not a program",
                dir.0.display()
            )),
        || format!("a folder: exit {status}:\n{err}"),
    )?;
    let run = Launched::start(
        &["run".as_ref(), "/no/such/program".as_ref()],
        &[],
        "no_such_program",
        Feed::Nothing,
    );
    let (status, _out, err) = run.wait()?;
    ensure(status.code() == Some(2), || {
        format!("exit {status}:\n{err}")
    })?;
    ensure(
        err.contains("cannot start the application '/no/such/program'"),
        || format!("the refusal does not name the program:\n{err}"),
    )
}

/// The pid of a live child of `parent` whose name (comm) is `name`.
fn child_named(parent: u32, name: &str) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    dir.flatten().find_map(|e| {
        let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // "pid (comm) state ppid …": the comm may hold anything, so split after its last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?;
        let ppid = fields.next()?.parse::<u32>().ok()?;
        (ppid == parent && comm == name && state != "Z").then_some(pid)
    })
}

/// Whether process `pid` is alive and named `name` (not a zombie, not another program that
/// took its pid).
fn alive_as(pid: u32, name: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next().map(str::to_string));
        let comm = stat
            .split_once('(')
            .and_then(|(_, r)| r.rsplit_once(')').map(|(c, _)| c.to_string()));
        comm.as_deref() == Some(name) && state.as_deref() != Some("Z")
    })
}

/// A `sleep` this test found running: SIGKILLed when dropped if it still is, so that a failed
/// scenario leaves nothing running.
struct Sleeper(u32);

impl Drop for Sleeper {
    fn drop(&mut self) {
        if alive_as(self.0, "sleep") {
            let _ = Command::new("kill")
                .arg("-KILL")
                .arg(self.0.to_string())
                .status();
        }
    }
}

/// `signal` (its number) to the launcher while it waits for the application to describe itself
/// (a program that never does: it starts its description file, then sleeps): the launcher
/// stops the program, removes the file and exits with 128 + the signal, leaving nothing running.
/// SIGKILL, which the launcher cannot see, ends the program all the same (it dies with the
/// launcher); only the file may be left then. With `terminal`, the program gets the signal too,
/// first (a terminal's Ctrl-C reaches the whole process group, and the program may die of it
/// before the launcher hears of its own): still a stop, not a program that failed to
/// describe itself.
fn a_signal_while_the_app_describes_itself_stops_it(
    signal: i32,
    terminal: bool,
) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let tmp = Scratch::new(&format!("describe-{signal}"));
    let script = r#"printf partial > "$IOTSTREAM_DESCRIBE"; exec sleep 1000"#;
    let run = Launched::start(
        &[
            "run".as_ref(),
            "/bin/sh".as_ref(),
            "--".as_ref(),
            "-c".as_ref(),
            script.as_ref(),
        ],
        &[("TMPDIR", &tmp.0)],
        "describe_signal",
        Feed::Nothing,
    );
    let described = || -> Vec<PathBuf> {
        std::fs::read_dir(&tmp.0)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().contains("iotstream-describe-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let sleeper = loop {
        if let Some(pid) = child_named(run.pid(), "sleep") {
            if !described().is_empty() {
                break Sleeper(pid);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the program describing itself never started; stderr:\n{}",
                run.stderr()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if terminal {
        let _ = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(sleeper.0.to_string())
            .status();
        // The program's death comes first, as when it handles the signal faster.
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(run.pid().to_string())
        .status();
    let (status, _out, err) = run.wait()?;
    if signal == libc::SIGKILL {
        ensure(status.signal() == Some(signal), || {
            format!("exit {status} after SIGKILL during describe:\n{err}")
        })?;
        // The kernel kills it as the launcher dies: bounded, a guard against a hang.
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive_as(sleeper.0, "sleep") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        return ensure(!alive_as(sleeper.0, "sleep"), || {
            format!(
                "the program describing itself (pid {}) outlived its killed launcher",
                sleeper.0
            )
        });
    }
    ensure(status.code() == Some(128 + signal), || {
        format!(
            "exit {status} after signal {signal} during describe, {} expected:\n{err}",
            128 + signal
        )
    })?;
    ensure(!alive_as(sleeper.0, "sleep"), || {
        format!(
            "the program describing itself (pid {}) still runs after the launcher exited:\n{err}",
            sleeper.0
        )
    })?;
    ensure(!err.contains("did not describe"), || {
        format!("a stop reported as a failed program:\n{err}")
    })?;
    ensure(described().is_empty(), || {
        format!("description files left: {:?}", described())
    })
}

/// A child's output line longer than the launcher copies at once arrives in prefixed pieces,
/// none of it lost.
fn a_very_long_output_line_is_copied_in_prefixed_pieces() -> Result<(), String> {
    let run = launch("long_line", &[], None, &[], Feed::Nothing);
    let (status, out, err) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{err}"))?;
    let pieces: Vec<&str> = out
        .lines()
        .filter_map(|l| l.strip_prefix("[main] "))
        .filter(|l| l.starts_with('x'))
        .collect();
    ensure(
        pieces.len() == 3 && pieces.iter().map(|p| p.len()).sum::<usize>() == 150_000,
        || {
            format!(
                "pieces of {:?} characters",
                pieces.iter().map(|p| p.len()).collect::<Vec<_>>()
            )
        },
    )
}

fn a_failed_process_is_named_and_its_status_returned() -> Result<(), String> {
    let dir = Scratch::new("failing");
    let deploy = dir.file(
        "failing.toml",
        "[processes.worker]\nagents = [\"fragile\"]\n",
    );
    let run = launch("failing", &[], Some(&deploy), &[], Feed::Nothing);
    let (status, _out, err) = run.wait()?;
    ensure(status.code() == Some(1), || {
        format!("expected the worker's status 1, got {status}:\n{err}")
    })?;
    ensure(
        err.contains("process 'worker' exited with status 1")
            && err.contains("agent 'fragile' failed")
            && err.contains("bad reading 5000"),
        || format!("stderr does not name the process and agent:\n{err}"),
    )
}

/// A stall whose halves the deployment puts in two processes is the launcher's failure,
/// status 1, naming the connection, instead of a hang (the wait is a hang guard).
fn a_stall_across_processes_fails_the_run() -> Result<(), String> {
    let dir = Scratch::new("stallx");
    let deploy = dir.file("stallx.toml", "[processes.p1]\nagents = [\"zip\"]\n");
    let run = launch("stallx", &[], Some(&deploy), &[], Feed::Nothing);
    let (status, _out, err) = run.wait()?;
    ensure(status.code() == Some(1), || {
        format!("expected status 1, got {status}:\n{err}")
    })?;
    ensure(
        err.contains("application stalled") && err.contains("nums.out -> zip.in0"),
        || format!("stderr does not name the stall:\n{err}"),
    )
}

/// A slow application spread over three processes ends well: no stall is declared.
fn a_slow_application_is_no_stall() -> Result<(), String> {
    let dir = Scratch::new("slow_progress");
    let deploy = dir.file(
        "slow.toml",
        "[processes.p1]\nagents = [\"double\"]\n[processes.p2]\nagents = [\"slow\"]\n",
    );
    let run = launch("slow_progress", &[], Some(&deploy), &[], Feed::Nothing);
    let (status, out, err) = run.wait()?;
    ensure(status.success(), || format!("{status}:\n{err}"))?;
    ensure(
        !err.contains("stalled") && out.contains("RESULT 359400"),
        || format!("{out}\n{err}"),
    )
}

/// A ticker in one process whose ticks, relayed by a second, free a writer in a third is no
/// stall under the launcher either: every pair comes out. (Before: "application stalled:
/// fast.out -> zip.in0" after the first pair.)
fn a_ticker_feeding_a_zip_through_processes_is_no_stall() -> Result<(), String> {
    let dir = Scratch::new("ticker_zip");
    let deploy = dir.file(
        "ticker.toml",
        "[processes.p1]\nagents = [\"ticker\"]\n[processes.p2]\nagents = [\"relay\"]\n",
    );
    let run = launch("ticker_zip", &[], Some(&deploy), &[], Feed::Nothing);
    let (status, out, err) = run.wait()?;
    ensure(status.success(), || format!("{status}:\n{err}"))?;
    // 12 pairs (i, i): twice 0 + … + 11.
    ensure(
        !err.contains("stalled") && out.contains("RESULT 12 132"),
        || format!("{out}\n{err}"),
    )
}

fn restarts_stop_at_the_limit() -> Result<(), String> {
    let dir = Scratch::new("limit");
    let deploy = dir.file(
        "limit.toml",
        "[processes.worker]\nagents = [\"fragile\"]\nrestart = \"on-failure\"\nmax_restarts = 2\nbackoff_ms = 10\n",
    );
    let run = launch("failing", &[], Some(&deploy), &[], Feed::Nothing);
    let (status, _out, err) = run.wait()?;
    ensure(!status.success(), || format!("succeeded:\n{err}"))?;
    ensure(
        err.contains("restart 1 of 2")
            && err.contains("restart 2 of 2")
            && err.contains("giving up"),
        || format!("restarts not as configured:\n{err}"),
    )?;
    ensure(err.matches("process 'worker' started").count() == 3, || {
        format!("expected 3 starts of 'worker':\n{err}")
    })
}

/// Bad deployment files: `iotstream check` exits 2 and prints exactly these problems, each with
/// the file, line, column and the offending name.
const BAD_FILES: &[(&str, &str)] = &[
    (
        "[processes.work\nagents = [\"triple\"]\n",
        "1:16: invalid TOML: unclosed table, expected `]`",
    ),
    (
        "[processes.work]\nagents = [\"triple\"]\nrestrat = \"never\"\n",
        "3:1: unknown field 'restrat' in process 'work' (did you mean 'restart'?); the accepted fields are 'host', 'agents', 'restart', 'max_restarts', 'backoff_ms', 'max_backoff_ms', 'cpus', 'workers' and 'env'",
    ),
    (
        "[[connections]]\nstream = \"numbers.out\"\ncapacity = \"big\"\n",
        "3:12: 'capacity' in connection 'numbers.out' must be an integer, found string \"big\"",
    ),
    (
        "[processes.work]\nagents = [\"tripel\"]\n",
        "2:11: unknown agent 'tripel' in process 'work' (did you mean 'triple'?); the app's agents are 'numbers', 'triple' and 'record'",
    ),
    (
        "[processes.a]\nagents = [\"triple\"]\n\n[processes.b]\nagents = [\"triple\"]\n",
        "5:11: agent 'triple' is placed twice: in process 'b' here, and in process 'a' on line 2",
    ),
    (
        "[processes.work]\nhost = \"pi\"\nagents = [\"triple\"]\n",
        "2:8: unknown host 'pi' in process 'work'; the hosts are 'local' (the default; declare hosts with [hosts.NAME])",
    ),
    (
        "[processes.spare]\nrestart = \"on-failure\"\n",
        "1:12: process 'spare' is not a process of the app and is given no agents; the app's processes are 'main' (a new process needs agents = [...])",
    ),
    (
        "[[connections]]\nstream = \"numbers.out\"\npolicy = \"drop-some\"\n",
        "3:10: unknown policy 'drop-some' in connection 'numbers.out'; expected 'block', 'drop-oldest' or 'drop-newest'",
    ),
    (
        "[processes.work]\nagents = [\"triple\"]\nrestart = \"sometimes\"\n",
        "3:11: unknown restart 'sometimes' in process 'work'; expected 'never' or 'on-failure'",
    ),
    (
        "[[connections]]\nstream = \"triple.out\"\nto = \"record.in\"\ncapacity = 0\n",
        "4:12: 'capacity' in connection 'triple.out -> record.in' must be at least 1, found 0",
    ),
    (
        "[[connections]]\nstream = \"numbers.output\"\ncapacity = 8\n",
        "2:10: unknown stream 'numbers.output' (did you mean 'numbers.out'?); the app's connected streams are 'numbers.out' and 'triple.out'",
    ),
    (
        "[processes.work]\nagents = [\"triple\"]\nmax_restarts = 2\n",
        "3:1: 'max_restarts' in process 'work' only applies with restart = \"on-failure\" (restart is \"never\")",
    ),
    (
        "[processes.work]\nagents = [\"triple\"]\nagents = [\"record\"]\n",
        "3:1: invalid TOML: duplicate key 'agents'",
    ),
    (
        "[processes.\"my process\"]\nagents = [\"triple\"]\n",
        "1:12: invalid process name 'my process': a process name is 1 to 64 ASCII letters, digits, '_' or '-'",
    ),
    (
        "[processes.work]\nagents = [\"triple\"]\ncpus = [1024]\n",
        "3:9: a CPU index in the 'cpus' of process 'work' must be at most 1023, found 1024",
    ),
    (
        "[env]\nRUST_LOG = \"info\"\nIOTSTREAM_DESCRIBE = \"/tmp/elsewhere.json\"\n",
        "3:1: environment variable 'IOTSTREAM_DESCRIBE' in [env] is reserved: names starting with IOTSTREAM_ are set by iotstream itself",
    ),
    (
        "[processes.work]\nagents = [\"triple\"]\nenv = { IOTSTREAM_PROCESS = \"main\" }\n",
        "3:9: environment variable 'IOTSTREAM_PROCESS' in the env of process 'work' is reserved: names starting with IOTSTREAM_ are set by iotstream itself",
    ),
    (
        // No machine this runs on has CPU 1023 (the highest index the file accepts).
        "[processes.work]\nagents = [\"triple\"]\ncpus = [0, 1023]\n",
        "3:12: CPU 1023 in the 'cpus' of process 'work' is not available on this machine; its CPUs are {cpus}",
    ),
    (
        // Every problem at once, in file order.
        "[processes.work]\nagents = [\"triple\", \"recrod\"]\n\n[[connections]]\nstream = \"triple.out\"\nto = \"numbers.in\"\n",
        "2:21: unknown agent 'recrod' in process 'work' (did you mean 'record'?); the app's agents are 'numbers', 'triple' and 'record'\n\
         {file}:6:6: 'numbers.in' does not read stream 'triple.out'; its readers are 'record.in'",
    ),
];

/// `iotstream check PATH --app <this test binary> -- app relay 10`: its output.
fn check_relay(path: &Path) -> Result<std::process::Output, String> {
    Command::new(launcher_exe())
        .args([
            "check".as_ref(),
            path.as_os_str(),
            "--app".as_ref(),
            own_exe().as_os_str(),
        ])
        .args(["--", "app", "relay", "10"])
        .output()
        .map_err(|e| e.to_string())
}

fn bad_deployment_files_are_rejected_with_file_line_column_and_name() -> Result<(), String> {
    let dir = Scratch::new("bad");
    let check = check_relay;
    let mut wrong = Vec::new();
    for (i, (text, expected)) in BAD_FILES.iter().enumerate() {
        let path = dir.file(&format!("bad{i}.toml"), text);
        let file = path.display().to_string();
        let expected = format!(
            "{file}:{}\n",
            expected
                .replace("{file}", &file)
                .replace("{cpus}", &allowed_cpus()?)
        );
        let out = check(&path)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() != Some(2) || stderr != expected {
            wrong.push(format!(
                "file #{i} ({text:?}): exit {:?}\nexpected: {expected}got:      {stderr}",
                out.status.code()
            ));
        }
    }
    // And a good file is good.
    let good = dir.file("good.toml", MOVED);
    let out = check(&good)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success()
        || !stdout
            .contains("good: application 'relay': 3 agents, 2 connections, 3 processes on 1 host")
    {
        wrong.push(format!("the good file: {out:?}"));
    }
    ensure(wrong.is_empty(), || wrong.join("\n\n"))
}

/// `check` refuses the files `run` refuses before it starts anything: a secret file that is
/// missing or open to others, a TLS file that is missing; every such problem at once, each at
/// the line and column of the field that names the file. (It said "good" to all of them.)
fn check_refuses_the_secret_and_tls_files_that_run_refuses() -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let dir = Scratch::new("check-files");
    let check = check_relay;
    // `record` on another host: a TCP link from this one, which needs the secret and TLS.
    let two_hosts = "[hosts.local]\naddress = \"127.0.0.1\"\nport = 7600\n\n\
                     [hosts.far]\naddress = \"127.0.0.2\"\nport = 7700\n\n\
                     [processes.sink]\nhost = \"far\"\nagents = [\"record\"]\n\n\
                     [network]\nsecret_file = \"secret\"\n";
    let tls = "tls_cert = \"host.pem\"\ntls_key = \"host.key\"\ntls_ca = \"ca.pem\"\n";
    let with_tls = dir.file("tls.toml", &format!("{two_hosts}{tls}"));
    let file = with_tls.display().to_string();
    let out = check(&with_tls)?;
    let want = format!(
        "{file}:14:1: [network] secret_file: the secret file {} does not exist\n\
         {file}:15:1: [network] tls_cert: the TLS certificate file {} does not exist\n",
        dir.path("secret").display(),
        dir.path("host.pem").display()
    );
    let stderr = text(&out.stderr);
    ensure(out.status.code() == Some(2) && stderr == want, || {
        format!(
            "missing files: exit {:?}\nexpected: {want}got:      {stderr}",
            out.status.code()
        )
    })?;
    let plain = dir.file("plain.toml", two_hosts);
    let file = plain.display().to_string();
    let secret = dir.file("secret", "0123456789abcdef0123\n");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    let out = check(&plain)?;
    let stderr = text(&out.stderr);
    ensure(
        out.status.code() == Some(2)
            && stderr.starts_with(&format!(
                "{file}:14:1: [network] secret_file: permissions 0644 for the secret file"
            )),
        || format!("a secret open to others: {out:?}"),
    )?;
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    let out = check(&plain)?;
    ensure(
        out.status.success() && text(&out.stdout).contains("good: application 'relay'"),
        || format!("a good secret: {out:?}"),
    )
}

/// `--host` naming a host of the deployment that runs none of its processes: refused, naming
/// the hosts that do, not a run that starts nothing and says every process ended well.
fn a_host_that_runs_no_process_is_refused() -> Result<(), String> {
    let dir = Scratch::new("idle-host");
    let file = dir.file(
        "far.toml",
        "[hosts.local]\naddress = \"127.0.0.1\"\nport = 7600\n\n\
         [hosts.far]\naddress = \"127.0.0.2\"\nport = 7700\n\n\
         [network]\ninsecure = true\n\n\
         [processes.main]\nhost = \"far\"\n\n\
         [processes.sink]\nhost = \"far\"\nagents = [\"record\"]\n",
    );
    let exe = own_exe();
    let out = Command::new(launcher_exe())
        .args(["run".as_ref(), exe.as_os_str(), "--deploy".as_ref()])
        .arg(&file)
        .args(["--host", "local", "--", "app", "relay", "10"])
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = text(&out.stderr);
    ensure(
        out.status.code() == Some(2)
            && stderr.contains("host 'local' runs none of the application's processes")
            && stderr.contains("(they run on: far)")
            && !stderr.contains("ended well"),
        || format!("exit {:?}:\n{stderr}", out.status.code()),
    )
}

/// This process's CPUs as the kernel lists them (`0-1`), which the launcher it starts inherits.
fn allowed_cpus() -> Result<String, String> {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| "cannot read this process's CPUs".to_string())
}

/// `run` refuses what `check` refuses, before starting anything: a reserved variable in
/// `[env]` (which used to make every process describe itself and exit 0, so nothing ran) and
/// a CPU the machine does not have (which used to fail the start with "Invalid argument").
fn run_refuses_reserved_variables_and_missing_cpus_before_starting() -> Result<(), String> {
    let dir = Scratch::new("run-refuses");
    let cases = [
        (
            "env.toml",
            "[env]\nIOTSTREAM_DESCRIBE = \"/tmp/elsewhere.json\"\n\n[processes.work]\nagents = [\"triple\"]\n",
            "2:1: environment variable 'IOTSTREAM_DESCRIBE' in [env] is reserved".to_string(),
        ),
        (
            "cpus.toml",
            "[processes.work]\nagents = [\"triple\"]\ncpus = [1023]\n",
            format!(
                "3:9: CPU 1023 in the 'cpus' of process 'work' is not available on this machine; its CPUs are {}",
                allowed_cpus()?
            ),
        ),
    ];
    for (name, text, want) in cases {
        let deploy = dir.file(name, text);
        let out = dir.path("out.txt");
        let (status, _stdout, err) = run_relay("relay", &["100"], Some(&deploy), &out).wait()?;
        ensure(status.code() == Some(2), || {
            format!("{name}: exit {status}, expected 2:\n{err}")
        })?;
        ensure(
            err.contains(&format!("{}:{want}", deploy.display())),
            || format!("{name}: no '{want}' in:\n{err}"),
        )?;
        ensure(!err.contains("started (pid"), || {
            format!("{name}: a process was started:\n{err}")
        })?;
        // (Describing itself, the application opens $OUT: it may exist, but stays empty.)
        ensure(lines_of(&out).is_empty(), || {
            format!("{name}: the application ran")
        })?;
    }
    Ok(())
}

/// `iotstream clean` removes a run's objects only when its owner is provably dead (its liveness
/// lock is free), never by its pid alone: here every run's owner pid is dead (as a live owner's
/// pid looks from another PID namespace), and only the run whose lock nobody holds is removed.
fn clean_removes_only_rings_whose_owner_is_provably_dead() -> Result<(), String> {
    use std::os::fd::AsRawFd;
    // A surely dead pid: a child that has exited and been reaped.
    let mut child = Command::new("true").spawn().map_err(|e| e.to_string())?;
    let dead = child.id();
    child.wait().map_err(|e| e.to_string())?;
    let shm = |run: u32, part: &str| format!("/dev/shm/iotstream.cleantest.{dead}-{run}.{part}");
    // Run 1: its owner died (lock free). Run 2: its owner lives (this test holds the lock).
    // Run 3: no liveness lock at all (an older iotstream's): nothing proves its owner dead.
    let (stale, stale_lock) = (shm(1, "e0"), shm(1, "lock"));
    let (live, live_lock) = (shm(2, "e0"), shm(2, "lock"));
    let legacy = shm(3, "e0");
    let all = [&stale, &stale_lock, &live, &live_lock, &legacy];
    let result = (|| {
        for f in all {
            std::fs::write(f, b"").map_err(|e| format!("{f}: {e}"))?;
        }
        let held = std::fs::File::open(&live_lock).map_err(|e| e.to_string())?;
        // SAFETY: flock on a descriptor we own.
        let locked = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        ensure(locked == 0, || format!("cannot lock {live_lock}"))?;
        let output = Command::new(launcher_exe())
            .arg("clean")
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure(output.status.success(), || format!("{output:?}"))?;
        for gone in [&stale, &stale_lock] {
            ensure(!Path::new(gone).exists(), || {
                format!("{gone} (a dead owner's) is still there:\n{text}")
            })?;
            ensure(text.contains(&format!("removed {gone}\n")), || {
                format!("removal of {gone} not printed:\n{text}")
            })?;
        }
        for kept in [&live, &live_lock, &legacy] {
            ensure(Path::new(kept).exists(), || {
                format!("{kept} was removed though its owner is not provably dead:\n{text}")
            })?;
        }
        ensure(
            text.contains(&format!("left {legacy}: no liveness lock")),
            || format!("the object without a lock is not reported:\n{text}"),
        )?;
        drop(held);
        Ok(())
    })();
    for f in all {
        let _ = std::fs::remove_file(f);
    }
    result
}

/// Whether `unshare FLAGS true` works here: an error as root (where it must), false (said as
/// a skipped scenario) otherwise.
fn unshare_works(flags: &[&str]) -> Result<bool, String> {
    let usable = Command::new("unshare")
        .args(flags)
        .arg("true")
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if usable {
        return Ok(true);
    }
    let flags = flags.join(" ");
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } == 0 {
        return Err(format!("unshare {flags} does not work here, as root"));
    }
    println!("  (skipped: unshare {flags} needs root)");
    Ok(false)
}

/// A run is live; `iotstream clean` runs in another PID namespace sharing /dev/shm (where the
/// run's pids name nothing): the run's rings survive, a killed process of the run is restarted
/// on them, and the run drains and exits 0. Needs `unshare` (root); skipped, said so, without.
fn a_sweep_from_another_pid_namespace_leaves_a_live_run_alone() -> Result<(), String> {
    if !unshare_works(&["--pid", "--fork"])? {
        return Ok(());
    }
    let dir = Scratch::new("namespace");
    let deploy = dir.file(
        "restart.toml",
        "[processes.work]\nagents = [\"triple\"]\n\n[processes.sink]\nagents = [\"record\"]\nrestart = \"on-failure\"\nbackoff_ms = 10\n",
    );
    let out = dir.path("out.txt");
    let run = run_relay("endless", &[], Some(&deploy), &out);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let rings = run.own_segments();
    let connections = rings.iter().filter(|r| !r.ends_with(".lock")).count();
    ensure(connections == 2, || {
        format!("objects of the run: {rings:?}")
    })?;
    let clean = Command::new("unshare")
        .args(["--pid", "--fork"])
        .arg(launcher_exe())
        .arg("clean")
        .output()
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&clean.stdout).into_owned();
    ensure(clean.status.success(), || format!("{clean:?}"))?;
    let after = run.own_segments();
    ensure(rings.iter().all(|r| after.contains(r)), || {
        format!("the live run's rings were removed: {rings:?} before, {after:?} after:\n{text}")
    })?;
    // A restart opens the rings again by name: it works only if they are still there.
    let sink = pid_of(&run.stderr(), "sink").ok_or_else(|| run.stderr())?;
    let _ = Command::new("kill")
        .arg("-9")
        .arg(sink.to_string())
        .status();
    run.wait_stderr("the restarted sink ready", |e| {
        e.contains("restart 1 of 3") && e.contains("process 'sink' ready")
    })?;
    let recorded = lines_of(&out).len();
    let (_stdout, stderr) = ctrl_c_once_recorded(run, &out, recorded + 1_000)?;
    ensure(!stderr.contains("restart 2 of 3"), || {
        format!("the restarted sink failed:\n{stderr}")
    })
}

/// `/dev/shm` without room for the rings (a container's default 64 MiB, a small board's tmpfs):
/// the launcher refuses to start, naming the connection, the room the rings need and the fix,
/// before any process starts, and leaves nothing there. (The rings' pages were allocated as
/// they were first touched: the process that touched one with no room behind it died of
/// SIGBUS.) The launcher runs in a mount namespace of its own whose `/dev/shm` is a 16 KiB
/// tmpfs (`unshare -m`: root); skipped, said so, without.
fn a_dev_shm_without_room_for_the_rings_is_refused_before_anything_starts() -> Result<(), String> {
    if !unshare_works(&["-m"])? {
        return Ok(());
    }
    let dir = Scratch::new("shm-room");
    let deploy = dir.file("moved.toml", MOVED);
    let out = dir.path("out.txt");
    // What the launcher leaves in /dev/shm is listed once it ended: the tmpfs ends with the
    // namespace.
    let script = "mount -t tmpfs -o size=16k iotstream-test /dev/shm || exit 97\n\
                  \"$@\"; rc=$?\n\
                  echo \"LEFT[$(ls -A /dev/shm | tr '\\n' ' ')]\"\n\
                  exit $rc";
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(launcher_exe())
        .arg("run")
        .arg(own_exe())
        .arg("--deploy")
        .arg(&deploy)
        .args(["--", "app", "relay", "100000"])
        .env("OUT", &out)
        .stdin(Stdio::null());
    let run = cmd.output().map_err(|e| format!("unshare: {e}"))?;
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    let said = || format!("exit {}\nstdout:\n{stdout}\nstderr:\n{stderr}", run.status);
    ensure(run.status.code() == Some(2), said)?;
    ensure(
        stderr.contains(
            "connection numbers.out -> triple.in: cannot create its ring: no room in /dev/shm",
        ) && stderr.contains("the rings between this host's processes take")
            && stderr.contains("--shm-size"),
        said,
    )?;
    ensure(
        !stderr.contains("SIGBUS") && !stderr.contains("started (pid"),
        said,
    )?;
    ensure(stdout.contains("LEFT[]"), said)?;
    ensure(lines_of(&out).is_empty(), said)
}

// ---------------------------------------------------------------------------------------------
// Operating a running application: list, stop, logs, restart, over the control socket

/// `iotstream ARGS` with `XDG_RUNTIME_DIR=xdg` (each scenario has a runtime folder of its own),
/// as uid 65534 if `nobody`; waits for its end.
fn ops(xdg: &Path, args: &[&str], nobody: bool) -> Result<std::process::Output, String> {
    let mut cmd = if nobody {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(launcher_exe());
        c
    } else {
        Command::new(launcher_exe())
    };
    cmd.args(args)
        .env("XDG_RUNTIME_DIR", xdg)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("iotstream {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `iotstream ARGS` succeeded; its stdout.
fn ops_ok(xdg: &Path, args: &[&str]) -> Result<String, String> {
    let out = ops(xdg, args, false)?;
    ensure(out.status.success(), || {
        format!(
            "iotstream {args:?}: {}\nstdout:\n{}stderr:\n{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        )
    })?;
    Ok(text(&out.stdout))
}

/// `iotstream ARGS` failed with exit 1 and a message containing every one of `want`.
fn ops_refused(xdg: &Path, args: &[&str], nobody: bool, want: &[&str]) -> Result<(), String> {
    let out = ops(xdg, args, nobody)?;
    let err = text(&out.stderr);
    ensure(
        out.status.code() == Some(1) && want.iter().all(|w| err.contains(w)),
        || {
            format!(
                "iotstream {args:?} (as uid {}): {}, expected exit 1 and {want:?}; stderr:\n{err}stdout:\n{}",
                if nobody { 65534 } else { 0 },
                out.status,
                text(&out.stdout)
            )
        },
    )
}

/// `iotstream run <this binary> [--deploy FILE] [RUN_ARGS] -- app NAME ARGS…` with
/// `XDG_RUNTIME_DIR=xdg` and `env`.
fn launch_in(
    xdg: &Path,
    app: &str,
    args: &[&str],
    deploy: Option<&Path>,
    run_args: &[&str],
    env: &[(&str, &Path)],
) -> Launched {
    let exe = own_exe();
    let mut a: Vec<&std::ffi::OsStr> = vec!["run".as_ref(), exe.as_os_str()];
    if let Some(d) = deploy {
        a.push("--deploy".as_ref());
        a.push(d.as_os_str());
    }
    for r in run_args
        .iter()
        .copied()
        .chain(["--", "app", app])
        .chain(args.iter().copied())
    {
        a.push(std::ffi::OsStr::new(r));
    }
    let mut env = env.to_vec();
    env.push(("XDG_RUNTIME_DIR", xdg));
    // The name its graph has (its rings carry it).
    let graph = if app == "quake" {
        "quake_detector"
    } else {
        app
    };
    Launched::start(&a, &env, graph, Feed::Nothing)
}

/// The control sockets in runtime folder `xdg`.
fn sockets(xdg: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(xdg.join("iotstream"))
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default()
}

/// The control socket of the launcher `pid` in `xdg`.
fn socket_of(xdg: &Path, pid: u32) -> Result<PathBuf, String> {
    sockets(xdg)
        .into_iter()
        .find(|p| p.to_string_lossy().ends_with(&format!(".{pid}.sock")))
        .ok_or_else(|| format!("no control socket of launcher {pid}: {:?}", sockets(xdg)))
}

/// Sends one JSON request line on `socket`, as any client may, and reads one answer line.
fn ask(socket: &Path, request: &str) -> Result<serde_json::Value, String> {
    exchange(socket, &format!("{request}\n"), false)
}

/// Sends `request` without a newline, closes the connection's writing half and reads the
/// answer, a JSON line.
fn ask_unterminated(socket: &Path, request: &str) -> Result<serde_json::Value, String> {
    exchange(socket, request, true)
}

/// Writes `bytes` on `socket` (then closes the writing half if `close_writes`) and reads one
/// answer line, as JSON.
fn exchange(socket: &Path, bytes: &str, close_writes: bool) -> Result<serde_json::Value, String> {
    let conn = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect {}: {e}", socket.display()))?;
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    (&conn)
        .write_all(bytes.as_bytes())
        .map_err(|e| e.to_string())?;
    if close_writes {
        conn.shutdown(std::net::Shutdown::Write)
            .map_err(|e| e.to_string())?;
    }
    let mut line = String::new();
    BufReader::new(&conn)
        .read_line(&mut line)
        .map_err(|e| format!("{bytes:?}: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("{bytes:?}: {e}: {line:?}"))
}

/// The `process` entry of a `status` or `metrics` answer.
fn process_entry<'a>(
    answer: &'a serde_json::Value,
    kind: &str,
    process: &str,
) -> Option<&'a serde_json::Value> {
    answer[kind]["processes"]
        .as_array()?
        .iter()
        .find(|p| p["process"] == process)
}

/// The example quake detector under the launcher, as its deployment file places it:
/// `iotstream list` shows it (and nothing before it starts), every process reports its
/// counters on the control channel (the `metrics` request has each one's report), and
/// `iotstream stop` drains it: exit 0, the launcher gone, its socket removed.
fn list_shows_a_running_application_and_stop_drains_it() -> Result<(), String> {
    let xdg = Scratch::new("list");
    let listed = ops_ok(&xdg.0, &["list"])?;
    ensure(listed == "no iotstream application is running\n", || {
        format!("before any run: {listed:?}")
    })?;
    // A socket left by a launcher that was killed: nobody listens. `list` removes it.
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(xdg.0.join("iotstream"))
            .map_err(|e| e.to_string())?;
    }
    let ghost = xdg.0.join("iotstream/ghost.1.sock");
    drop(std::os::unix::net::UnixListener::bind(&ghost).map_err(|e| e.to_string())?);
    let out = ops(&xdg.0, &["list"], false)?;
    ensure(
        out.status.success()
            && text(&out.stdout) == "no iotstream application is running\n"
            && text(&out.stderr).contains("ghost.1.sock: its launcher is gone")
            && !ghost.exists(),
        || format!("a stale socket: {out:?}"),
    )?;
    let deploy = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quake_detector.toml");
    let run = launch_in(
        &xdg.0,
        "quake",
        &[],
        Some(&deploy),
        &["--metrics-interval", "100ms"],
        &[],
    );
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let launcher = run.pid();
    let listed = ops_ok(&xdg.0, &["list"])?;
    let lines: Vec<Vec<&str>> = listed
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    ensure(
        lines.len() == 2
            && lines[0] == ["APP", "RUN", "PROCESSES", "HOSTS", "UP", "STATUS"]
            && lines[1][0] == "quake_detector"
            && lines[1][1].starts_with(&format!("{launcher}-"))
            && lines[1][2..4] == ["4/4", "local"]
            && lines[1][5] == "running",
        || format!("list:\n{listed}"),
    )?;

    // Every process's report arrives, with its own pid and counters.
    let socket = socket_of(&xdg.0, launcher)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let answer = ask(&socket, r#"{"cmd":"metrics"}"#)?;
        let reported = ["main", "detector", "trigger", "alerts"].iter().all(|p| {
            process_entry(&answer, "metrics", p).is_some_and(|e| {
                e["sample"]["pid"] == e["pid"]
                    && Some(e["pid"].as_u64().unwrap_or(0) as u32) == pid_of(&run.stderr(), p)
                    && e["sample"]["rss_bytes"].as_u64().unwrap_or(0) > 0
            })
        });
        let samples = process_entry(&answer, "metrics", "main")
            .and_then(|e| e["sample"]["metrics"]["streams"].as_array().cloned())
            .and_then(|streams| {
                streams
                    .iter()
                    .find(|s| s["name"] == "seismometer.out")
                    .and_then(|s| s["elements"].as_u64())
            })
            .unwrap_or(0);
        if reported && samples > 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("no report of every process: {answer}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let stopped = ops_ok(&xdg.0, &["stop", "quake_detector"])?;
    ensure(
        stopped.contains("[iotstream] every process ended well")
            && stopped.contains("stopped: its launcher exited with code 0"),
        || format!("stop said:\n{stopped}"),
    )?;
    // The launcher has exited already (stop waits for it): its status is there at once.
    let (status, _stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("launcher: {status}\n{stderr}"))?;
    ensure(
        stderr.contains("asked to stop (iotstream stop)")
            && stderr.contains("every process ended well"),
        || format!("the drain did not run to its end:\n{stderr}"),
    )?;
    ensure(sockets(&xdg.0).is_empty(), || {
        format!("sockets left: {:?}", sockets(&xdg.0))
    })?;
    let listed = ops_ok(&xdg.0, &["list"])?;
    ensure(listed == "no iotstream application is running\n", || {
        format!("after the stop: {listed:?}")
    })
}

/// Two runs of one application: `stop APP` refuses to choose and lists both runs, an unknown
/// APP is refused with the running ones listed, `stop APP --run ID` drains that run (exit 0,
/// every element emitted recorded), and `stop APP --now` kills the other at once.
fn stop_picks_a_run_drains_it_and_now_kills() -> Result<(), String> {
    let xdg = Scratch::new("stop");
    let deploy = xdg.file("moved.toml", MOVED);
    let (out_a, out_b) = (xdg.path("a.txt"), xdg.path("b.txt"));
    let a = launch_in(
        &xdg.0,
        "endless",
        &[],
        Some(&deploy),
        &[],
        &[("OUT", &out_a)],
    );
    let b = launch_in(
        &xdg.0,
        "endless",
        &[],
        Some(&deploy),
        &[],
        &[("OUT", &out_b)],
    );
    a.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    b.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let status = |l: &Launched| ask(&socket_of(&xdg.0, l.pid())?, r#"{"cmd":"status"}"#);
    let run_a = status(&a)?["status"]["run"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let run_b = status(&b)?["status"]["run"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ops_refused(
        &xdg.0,
        &["stop", "endless"],
        false,
        &[
            "2 runs of application 'endless' are running",
            &run_a,
            &run_b,
            "--run ID",
        ],
    )?;
    ops_refused(
        &xdg.0,
        &["stop", "endles"],
        false,
        &[
            "no application 'endles' is running",
            &format!("'endless' (run {run_a})"),
        ],
    )?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines_of(&out_a).len() < 5_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopped = ops_ok(&xdg.0, &["stop", "endless", "--run", &run_a])?;
    ensure(stopped.contains("exited with code 0"), || stopped.clone())?;
    let (status_a, stdout, stderr) = a.wait()?;
    ensure(status_a.success(), || {
        format!("run a: {status_a}\n{stderr}")
    })?;
    let number = |key: &str| {
        stdout
            .lines()
            .find_map(|l| l.split_once(key).map(|(_, r)| r.to_string()))
            .and_then(|r| r.split(' ').next().and_then(|n| n.parse::<u64>().ok()))
    };
    let (emitted, received) = (number("EMITTED "), number("RESULT count="));
    ensure(
        emitted.is_some() && emitted == received && received == Some(lines_of(&out_a).len() as u64),
        || {
            format!(
                "emitted {emitted:?}, received {received:?}, {} recorded:\n{stdout}",
                lines_of(&out_a).len()
            )
        },
    )?;
    // Run b is alone now: no --run needed; killed at once.
    let killed = ops_ok(&xdg.0, &["stop", "endless", "--now"])?;
    ensure(
        killed.contains("killing every process") && killed.contains("killed: its launcher exited"),
        || format!("stop --now said:\n{killed}"),
    )?;
    let (status_b, _, stderr) = b.wait()?;
    ensure(status_b.code() == Some(137), || {
        format!("run b after stop --now: {status_b}\n{stderr}")
    })?;
    ensure(sockets(&xdg.0).is_empty(), || {
        format!("sockets left: {:?}", sockets(&xdg.0))
    })
}

const CHATTY: &str = r#"
[processes.work]
agents = ["tick"]

[processes.sink]
agents = ["record"]
"#;

/// The last `TICK v` value in `text`.
fn last_tick(text: &str) -> Option<u64> {
    text.lines().rev().find_map(|l| {
        l.split_once("TICK ")
            .and_then(|(_, v)| v.trim().parse().ok())
    })
}

/// `iotstream logs APP PROCESS` prints that process's kept lines (and only its); `logs APP`
/// every process's and the launcher's; `--follow` sees new lines, and ends with the application.
fn logs_shows_a_process_lines_and_follows_new_ones() -> Result<(), String> {
    let xdg = Scratch::new("logs");
    let deploy = xdg.file("chatty.toml", CHATTY);
    let out = xdg.path("out.txt");
    let run = launch_in(&xdg.0, "chatty", &[], Some(&deploy), &[], &[("OUT", &out)]);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !run.out.lock().unwrap().contains("[work] TICK 100\n") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let work = ops_ok(&xdg.0, &["logs", "chatty", "work"])?;
    ensure(
        work.starts_with("[work] TICK 0\n")
            && work.contains("[work] TICK 100\n")
            && work.lines().all(|l| l.starts_with("[work] TICK ")),
        || format!("logs chatty work:\n{work}"),
    )?;
    let all = ops(&xdg.0, &["logs", "chatty"], false)?;
    ensure(
        all.status.success()
            && text(&all.stdout).contains("[work] TICK 100\n")
            && text(&all.stderr).contains("[iotstream] process 'sink' started"),
        || format!("logs chatty: {all:?}"),
    )?;
    ops_refused(
        &xdg.0,
        &["logs", "chatty", "wrok"],
        false,
        &["no process 'wrok'", "'main', 'work', 'sink'"],
    )?;

    // Follow: lines after the last one seen above arrive.
    let seen = last_tick(&work).ok_or("no TICK")?;
    let mut follow = Command::new(launcher_exe())
        .args(["logs", "chatty", "work", "--follow"])
        .env("XDG_RUNTIME_DIR", &xdg.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let followed = Arc::new(Mutex::new(String::new()));
    let followed_err = Arc::new(Mutex::new(String::new()));
    let readers = [
        collect(follow.stdout.take().unwrap(), Arc::clone(&followed)),
        collect(follow.stderr.take().unwrap(), Arc::clone(&followed_err)),
    ];
    let deadline = Instant::now() + Duration::from_secs(60);
    while last_tick(&followed.lock().unwrap()).is_none_or(|t| t <= seen + 40)
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let got = followed.lock().unwrap().clone();
    if last_tick(&got).is_none_or(|t| t <= seen + 40) {
        let _ = follow.kill();
        let _ = follow.wait();
        return Err(format!(
            "--follow saw no new line after TICK {seen}:\n{got}"
        ));
    }
    // The application ends: so does the follower, by itself.
    ops_ok(&xdg.0, &["stop", "chatty"])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let ended = loop {
        match follow.try_wait().map_err(|e| e.to_string())? {
            Some(status) => break Some(status),
            None if Instant::now() > deadline => break None,
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let Some(ended) = ended else {
        let _ = follow.kill();
        let _ = follow.wait();
        return Err("logs --follow did not end with the application".into());
    };
    for r in readers {
        let _ = r.join();
    }
    let err = followed_err.lock().unwrap().clone();
    ensure(
        ended.success() && err.contains("the launcher exited with code 0"),
        || format!("logs --follow ended with {ended}:\n{err}"),
    )?;
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || format!("{status}\n{stderr}"))
}

/// `iotstream restart APP PROCESS` kills a process whose restart policy is `never` and starts
/// it again: a new pid, 1 restart, no failure, and no element lost.
fn restart_restarts_a_process_and_loses_nothing() -> Result<(), String> {
    let xdg = Scratch::new("restart");
    let deploy = xdg.file("moved.toml", MOVED);
    let out = xdg.path("out.txt");
    // Paced: 40 000 elements per second, so that the run is still on when the restart lands.
    let n = 300_000u64;
    let run = launch_in(
        &xdg.0,
        "relay",
        &[&n.to_string(), "200"],
        Some(&deploy),
        &[],
        &[("OUT", &out)],
    );
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while lines_of(&out).len() < 10_000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let before = pid_of(&run.stderr(), "work").ok_or_else(|| run.stderr())?;
    // A process the launcher starts again is told so (its TCP inputs then wait for writers
    // that may hold what the one before left unconsumed); the first one is not.
    ensure(!restarted_env(before), || {
        format!("the first 'work' (pid {before}) was started as restarted")
    })?;
    ops_refused(
        &xdg.0,
        &["restart", "relay", "wrok"],
        false,
        &["no process 'wrok'", "'main', 'work', 'sink'"],
    )?;
    // Refused before anything is said to be restarting.
    let wrong = ops(&xdg.0, &["restart", "relay", "wrok"], false)?;
    ensure(wrong.stdout.is_empty(), || {
        format!("a refused restart said: {}", text(&wrong.stdout))
    })?;
    let said = ops_ok(&xdg.0, &["restart", "relay", "work"])?;
    let after = pid_of(&run.stderr(), "work");
    ensure(
        after.is_some_and(|p| p != before)
            && said.contains(&format!(
                "process 'work' is running again (pid {})",
                after.unwrap_or(0)
            )),
        || format!("restart said:\n{said}\n{}", run.stderr()),
    )?;
    ensure(after.is_some_and(restarted_env), || {
        format!("the restarted 'work' ({after:?}) has no IOTSTREAM_RESTARTED=1")
    })?;
    let socket = socket_of(&xdg.0, run.pid())?;
    let status = ask(&socket, r#"{"cmd":"status"}"#)?;
    // The same request without its newline, the client's writing half closed after it (as
    // `printf '{"cmd":"status"}' | socat - UNIX-CONNECT:...` sends it): answered too. Before,
    // it was dropped without a word.
    let unterminated = ask_unterminated(&socket, r#"{"cmd":"status"}"#)?;
    ensure(
        unterminated["status"]["run"] == status["status"]["run"],
        || format!("an unterminated request got {unterminated}"),
    )?;
    let work = process_entry(&status, "status", "work").ok_or("no 'work' in the status")?;
    ensure(
        work["restarts"] == 1 && work["status"] == "running" && work["pid"] == after.unwrap_or(0),
        || format!("status after the restart: {work}"),
    )?;
    let (status, _stdout, stderr) = run.wait()?;
    ensure(status.success(), || format!("exit {status}:\n{stderr}"))?;
    let mut got = lines_of(&out);
    got.sort_unstable();
    got.dedup();
    let want: Vec<u64> = (0..n).map(|v| v * 3).collect();
    ensure(got == want, || {
        format!(
            "{} distinct values of {n} after the restart:\n{stderr}",
            got.len()
        )
    })
}

// AUDIT scenarios ---------------------------------------------------------------------------

/// `iotstream restart APP sink`, then Ctrl-C before the launcher heard of the killed sink's
/// exit (its process shares its pipes with a program that outlives it: the exit is reported
/// up to 2 s later). Its writer had ended (its ring closed) and it still held 280 elements it
/// had not consumed. The stop cancelled the restart: they were lost and the run exited 0
/// (found by an audit). The sink now starts again, told to drain, and processes them.
fn an_asked_restart_cut_short_by_a_stop_drains_the_process_again() -> Result<(), String> {
    let xdg = Scratch::new("asked-drain");
    let n = 300u64;
    let deploy = xdg.file(
        "d.toml",
        "[processes.work]\nagents = [\"numbers\", \"mid\"]\n\n[processes.sink]\nagents = [\"record\"]\nenv = { HOLD_PIPES = \"1\" }\n",
    );
    let out = xdg.path("out.txt");
    let run = launch_in(
        &xdg.0,
        "chain",
        &[&n.to_string(), "2000"],
        Some(&deploy),
        &[],
        &[("OUT", &out)],
    );
    run.wait_stderr("work finished", |e| e.contains("process 'work' finished"))?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines_of(&out).len() < 20 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let dir = xdg.0.clone();
    let asked = std::thread::spawn(move || ops(&dir, &["restart", "chain", "sink"], false));
    run.wait_stderr("the restart's kill", |e| {
        e.contains("restart asked (iotstream restart): killing it")
    })?;
    let _ = Command::new("kill")
        .args(["-INT", &run.pid().to_string()])
        .status();
    let (status, stdout, stderr) = run.wait()?;
    let _ = asked.join();
    let missing = missing_in(&out, n)?;
    ensure(missing.is_empty() && status.success(), || {
        format!(
            "{} of {n} elements never reached the sink (first {:?}), exit {status}:\n{stdout}\n{stderr}",
            missing.len(),
            &missing[..missing.len().min(10)]
        )
    })?;
    ensure(
        stderr.contains("starting it again to drain its input"),
        || format!("the sink was not started again to drain:\n{stderr}"),
    )
}

/// Whether process `pid` was started with `IOTSTREAM_RESTARTED=1` (its /proc environ).
fn restarted_env(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .any(|var| var == b"IOTSTREAM_RESTARTED=1")
}

/// Another local user (uid 65534) can neither list nor stop our applications: the runtime
/// folder is ours and closed to others, so the commands say "permission denied" and a direct
/// connection to the socket is refused by the kernel; the application runs on unharmed.
fn another_user_can_neither_list_nor_stop_an_application() -> Result<(), String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("  (skipped: not root, so no second uid can be taken with setpriv)");
        return Ok(());
    }
    if Command::new("setpriv").arg("--version").output().is_err() {
        println!("  (skipped: setpriv is not installed)");
        return Ok(());
    }
    let xdg = Scratch::new("other-user");
    let deploy = xdg.file("moved.toml", MOVED);
    let out = xdg.path("out.txt");
    let run = launch_in(&xdg.0, "endless", &[], Some(&deploy), &[], &[("OUT", &out)]);
    run.wait_stderr("data flowing", |e| e.contains("data flows"))?;
    let socket = socket_of(&xdg.0, run.pid())?;
    ops_refused(
        &xdg.0,
        &["list"],
        true,
        &["permission denied", "belongs to uid 0"],
    )?;
    ops_refused(&xdg.0, &["stop", "endless"], true, &["permission denied"])?;
    let direct = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(own_exe())
        .arg("connect")
        .arg(&socket)
        .output()
        .map_err(|e| e.to_string())?;
    ensure(
        direct.status.code() == Some(1) && text(&direct.stdout).contains("Permission denied"),
        || format!("a direct connection as uid 65534: {direct:?}"),
    )?;
    // Still running, and ours to stop.
    let listed = ops_ok(&xdg.0, &["list"])?;
    ensure(
        listed.contains("endless") && listed.contains("running"),
        || listed.clone(),
    )?;
    ops_ok(&xdg.0, &["stop", "endless"])?;
    let (status, _, stderr) = run.wait()?;
    ensure(status.success(), || format!("{status}\n{stderr}"))
}

/// A launcher that does not answer (stopped by SIGSTOP, say; here a socket whose listener
/// never accepts) is listed as running but not answering, with its application, pid and
/// socket, and `stop` says that it does not answer (exit 1): neither says that nothing runs.
fn a_launcher_that_does_not_answer_is_not_taken_for_gone() -> Result<(), String> {
    let xdg = Scratch::new("silent");
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(xdg.0.join("iotstream"))
            .map_err(|e| e.to_string())?;
    }
    let pid = std::process::id();
    let socket = xdg.0.join(format!("iotstream/mute.{pid}.sock"));
    // Listening, never accepting: a connection waits in its queue and gets no answer.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).map_err(|e| e.to_string())?;
    let listed = ops_ok(&xdg.0, &["list"])?;
    ensure(
        !listed.contains("no iotstream application is running")
            && listed.contains(&format!(
                "mute: its launcher (pid {pid}) runs but does not answer on {}",
                socket.display()
            )),
        || format!("list said:\n{listed}"),
    )?;
    ops_refused(
        &xdg.0,
        &["stop", "mute"],
        false,
        &[
            &format!("the launcher of 'mute' (pid {pid}) does not answer"),
            &socket.display().to_string(),
        ],
    )?;
    ensure(socket.exists(), || {
        "the socket of a launcher that runs was removed".to_string()
    })
}

/// `launcher connect SOCKET`: connects and asks for the status, printing what happened; exits
/// 1 if the connection failed (run as another uid by the scenario above).
fn connect_mode(socket: &str) -> ! {
    match std::os::unix::net::UnixStream::connect(socket) {
        Ok(conn) => {
            let _ = (&conn).write_all(b"{\"cmd\":\"status\"}\n");
            let mut line = String::new();
            let _ = BufReader::new(&conn).read_line(&mut line);
            println!("connected: {line}");
            std::process::exit(0)
        }
        Err(e) => {
            println!("connect: {e}");
            std::process::exit(1)
        }
    }
}

/// The structure of a Graphviz dot graph, checked by a small parser of the subset the
/// launcher writes: statements, clusters, quoted ids, edges with attributes.
fn graph_dot_output_parses() -> Result<(), String> {
    let dir = Scratch::new("dot");
    let deploy = dir.file("moved.toml", MOVED);
    let exe = own_exe();
    let output = Command::new(launcher_exe())
        .args([
            "graph".as_ref(),
            exe.as_os_str(),
            "--deploy".as_ref(),
            deploy.as_os_str(),
        ])
        .args(["--format", "dot", "--", "app", "relay", "10"])
        .output()
        .map_err(|e| e.to_string())?;
    let dot = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure(output.status.success(), || format!("{output:?}"))?;
    let parsed = dot::parse(&dot).map_err(|e| format!("{e}\n{dot}"))?;
    ensure(parsed.name == "relay", || {
        format!("graph named {}", parsed.name)
    })?;
    // Nodes: each agent once, inside its process cluster, inside the host cluster.
    let placed: Vec<(String, String)> = parsed
        .nodes
        .iter()
        .map(|(node, path)| (node.clone(), path.join("/")))
        .collect();
    let want = [
        ("numbers", "cluster_host_local/cluster_process_main"),
        ("triple", "cluster_host_local/cluster_process_work"),
        ("record", "cluster_host_local/cluster_process_sink"),
    ];
    ensure(
        placed.len() == 3
            && want
                .iter()
                .all(|(n, p)| placed.iter().any(|(a, b)| a == n && b == p)),
        || format!("nodes and clusters: {placed:?}"),
    )?;
    ensure(
        parsed.edges
            == [
                ("numbers".to_string(), "triple".to_string()),
                ("triple".to_string(), "record".to_string()),
            ],
        || format!("edges: {:?}", parsed.edges),
    )?;
    ensure(dot.contains("(shared-memory)"), || dot.clone())?;

    // And the JSON form names the same placement.
    let output = Command::new(launcher_exe())
        .args([
            "graph".as_ref(),
            exe.as_os_str(),
            "--deploy".as_ref(),
            deploy.as_os_str(),
        ])
        .args(["--format", "json", "--", "app", "relay", "10"])
        .output()
        .map_err(|e| e.to_string())?;
    let info: iotstream::info::GraphInfo =
        serde_json::from_slice(&output.stdout).map_err(|e| e.to_string())?;
    let process = |a: &str| info.agents[info.agent(a).unwrap()].process.clone();
    ensure(
        process("numbers") == "main" && process("triple") == "work" && process("record") == "sink",
        || format!("{info:?}"),
    )?;
    ensure(
        info.edges
            .iter()
            .all(|e| e.transport == "shared-memory" && e.ring_bytes.is_some()),
        || format!("{:?}", info.edges),
    )
}

mod dot {
    //! A parser for the dot subset the launcher writes; it rejects anything else.

    pub struct Dot {
        pub name: String,
        /// Each node and the clusters it is declared in, outermost first.
        pub nodes: Vec<(String, Vec<String>)>,
        pub edges: Vec<(String, String)>,
    }

    #[derive(Debug, PartialEq)]
    enum Tok {
        Id(String),
        Sym(char),
        Arrow,
    }

    fn lex(s: &str) -> Result<Vec<Tok>, String> {
        let mut out = Vec::new();
        let mut it = s.chars().peekable();
        while let Some(c) = it.next() {
            match c {
                c if c.is_whitespace() => {}
                '"' => {
                    let mut id = String::new();
                    loop {
                        match it.next() {
                            Some('\\') => id.push(it.next().ok_or("dangling escape")?),
                            Some('"') => break,
                            Some(c) => id.push(c),
                            None => return Err("unterminated string".into()),
                        }
                    }
                    out.push(Tok::Id(id));
                }
                '-' if it.peek() == Some(&'>') => {
                    it.next();
                    out.push(Tok::Arrow);
                }
                '{' | '}' | '[' | ']' | ';' | '=' | ',' => out.push(Tok::Sym(c)),
                c if c.is_ascii_alphanumeric() || c == '_' => {
                    let mut id = c.to_string();
                    while let Some(&d) = it.peek() {
                        if d.is_ascii_alphanumeric() || d == '_' {
                            id.push(d);
                            it.next();
                        } else {
                            break;
                        }
                    }
                    out.push(Tok::Id(id));
                }
                other => return Err(format!("unexpected character {other:?}")),
            }
        }
        Ok(out)
    }

    pub fn parse(s: &str) -> Result<Dot, String> {
        let toks = lex(s)?;
        let mut i = 0;
        let expect = |i: &mut usize, t: Tok| -> Result<(), String> {
            if toks.get(*i) == Some(&t) {
                *i += 1;
                Ok(())
            } else {
                Err(format!(
                    "expected {t:?} at token {i}, found {:?}",
                    toks.get(*i)
                ))
            }
        };
        let id = |i: &mut usize| -> Result<String, String> {
            match toks.get(*i) {
                Some(Tok::Id(s)) => {
                    *i += 1;
                    Ok(s.clone())
                }
                other => Err(format!("expected an id at token {i}, found {other:?}")),
            }
        };
        if id(&mut i)? != "digraph" {
            return Err("not a digraph".into());
        }
        let name = id(&mut i)?;
        expect(&mut i, Tok::Sym('{'))?;
        let mut dot = Dot {
            name,
            nodes: Vec::new(),
            edges: Vec::new(),
        };
        let mut clusters: Vec<String> = Vec::new();
        loop {
            match toks.get(i) {
                Some(Tok::Sym('}')) => {
                    i += 1;
                    if clusters.pop().is_none() {
                        break;
                    }
                }
                Some(Tok::Id(kw)) if kw == "subgraph" => {
                    i += 1;
                    let c = id(&mut i)?;
                    if !c.starts_with("cluster_") {
                        return Err(format!("subgraph {c} is not a cluster"));
                    }
                    expect(&mut i, Tok::Sym('{'))?;
                    clusters.push(c);
                }
                Some(Tok::Id(_)) => {
                    let first = id(&mut i)?;
                    match toks.get(i) {
                        Some(Tok::Sym('=')) => {
                            i += 1;
                            id(&mut i)?;
                        }
                        Some(Tok::Arrow) => {
                            i += 1;
                            let to = id(&mut i)?;
                            dot.edges.push((first, to));
                            attrs(&toks, &mut i)?;
                        }
                        Some(Tok::Sym('[')) => attrs(&toks, &mut i)?,
                        _ => {
                            if dot.nodes.iter().any(|(n, _)| *n == first) {
                                return Err(format!("node {first} declared twice"));
                            }
                            dot.nodes.push((first, clusters.clone()));
                        }
                    }
                    expect(&mut i, Tok::Sym(';'))?;
                }
                other => return Err(format!("unexpected {other:?} at token {i}")),
            }
        }
        if i != toks.len() {
            return Err("text after the graph".into());
        }
        for (a, b) in &dot.edges {
            for n in [a, b] {
                if !dot.nodes.iter().any(|(m, _)| m == n) {
                    return Err(format!("edge endpoint {n} is not a declared node"));
                }
            }
        }
        Ok(dot)
    }

    fn attrs(toks: &[Tok], i: &mut usize) -> Result<(), String> {
        if toks.get(*i) != Some(&Tok::Sym('[')) {
            return Ok(());
        }
        *i += 1;
        loop {
            match (toks.get(*i), toks.get(*i + 1), toks.get(*i + 2)) {
                (Some(Tok::Id(_)), Some(Tok::Sym('=')), Some(Tok::Id(_))) => *i += 3,
                _ => return Err(format!("bad attribute at token {i}")),
            }
            match toks.get(*i) {
                Some(Tok::Sym(',')) => *i += 1,
                Some(Tok::Sym(']')) => {
                    *i += 1;
                    return Ok(());
                }
                other => return Err(format!("expected , or ] in attributes, found {other:?}")),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("connect") {
        connect_mode(args.get(2).map_or("", String::as_str));
    }
    if args.get(1).map(String::as_str) == Some("app") {
        let name = args.get(2).expect("usage: launcher app NAME ARGS…");
        if let Err(e) = app(name, &args[3..]) {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
        return;
    }
    // libtest-style filtering: `cargo test --test launcher -- NAME` runs the scenarios whose
    // name contains NAME.
    let filter = suite::filter();
    let filter = filter.as_deref();
    type Scenario = Box<dyn Fn() -> Result<(), String>>;
    let scenarios: Vec<(&str, Scenario)> = vec![
        (
            "an_asked_restart_cut_short_by_a_stop_drains_the_process_again",
            Box::new(an_asked_restart_cut_short_by_a_stop_drains_the_process_again),
        ),
        (
            "moving_agents_by_deployment_gives_identical_output",
            Box::new(moving_agents_by_deployment_gives_identical_output),
        ),
        (
            "stdin_reaches_the_agent_that_reads_it_wherever_it_is_placed",
            Box::new(stdin_reaches_the_agent_that_reads_it_wherever_it_is_placed),
        ),
        (
            "ctrl_c_while_standard_input_is_quiet_drains_and_exits_0",
            Box::new(ctrl_c_while_standard_input_is_quiet_drains_and_exits_0),
        ),
        (
            "ctrl_c_drains_every_element_and_exits_0",
            Box::new(ctrl_c_drains_every_element_and_exits_0),
        ),
        (
            "sighup_drains_every_element_and_leaves_nothing_behind",
            Box::new(sighup_drains_every_element_and_leaves_nothing_behind),
        ),
        (
            "ctrl_c_while_the_app_describes_itself_stops_it",
            Box::new(|| a_signal_while_the_app_describes_itself_stops_it(libc::SIGINT, false)),
        ),
        (
            "a_host_that_runs_no_process_is_refused",
            Box::new(a_host_that_runs_no_process_is_refused),
        ),
        (
            "a_terminal_ctrl_c_while_the_app_describes_itself_stops_it",
            Box::new(|| a_signal_while_the_app_describes_itself_stops_it(libc::SIGINT, true)),
        ),
        (
            "sigterm_while_the_app_describes_itself_stops_it",
            Box::new(|| a_signal_while_the_app_describes_itself_stops_it(libc::SIGTERM, false)),
        ),
        (
            "sighup_while_the_app_describes_itself_stops_it",
            Box::new(|| a_signal_while_the_app_describes_itself_stops_it(libc::SIGHUP, false)),
        ),
        (
            "sigkill_while_the_app_describes_itself_stops_it",
            Box::new(|| a_signal_while_the_app_describes_itself_stops_it(libc::SIGKILL, false)),
        ),
        (
            "sigkill_of_the_sink_under_on_failure_restarts_without_gap",
            Box::new(|| sigkill_under_on_failure_restarts_without_gap("sink")),
        ),
        (
            "sigkill_of_a_middle_process_under_on_failure_restarts_without_gap",
            Box::new(|| sigkill_under_on_failure_restarts_without_gap("work")),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_u64_tiny_capacity",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("u64", 600, 16)),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_u64_capacity_1024",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("u64", 2_000, 1024)),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_u64_default_capacity",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("u64", 2_000, 0)),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_string_tiny_capacity",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("string", 600, 4)),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_string_default_capacity",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("string", 2_000, 0)),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_struct_tiny_capacity",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("struct", 600, 16)),
        ),
        (
            "repeated_sigkills_of_a_slow_sink_lose_no_struct_default_capacity",
            Box::new(|| repeated_sigkills_of_a_slow_sink_lose_nothing("struct", 2_000, 0)),
        ),
        (
            "a_stall_across_processes_fails_the_run",
            Box::new(a_stall_across_processes_fails_the_run),
        ),
        (
            "a_slow_application_is_no_stall",
            Box::new(a_slow_application_is_no_stall),
        ),
        (
            "a_ticker_feeding_a_zip_through_processes_is_no_stall",
            Box::new(a_ticker_feeding_a_zip_through_processes_is_no_stall),
        ),
        (
            "a_failed_process_is_named_and_its_status_returned",
            Box::new(a_failed_process_is_named_and_its_status_returned),
        ),
        (
            "a_program_that_does_not_describe_itself_is_refused_clearly",
            Box::new(a_program_that_does_not_describe_itself_is_refused_clearly),
        ),
        (
            "a_very_long_output_line_is_copied_in_prefixed_pieces",
            Box::new(a_very_long_output_line_is_copied_in_prefixed_pieces),
        ),
        (
            "restarts_stop_at_the_limit",
            Box::new(restarts_stop_at_the_limit),
        ),
        (
            "a_drain_that_times_out_kills_the_stragglers_and_fails",
            Box::new(a_drain_that_times_out_kills_the_stragglers_and_fails),
        ),
        (
            "deployment_env_and_cpus_reach_the_processes",
            Box::new(deployment_env_and_cpus_reach_the_processes),
        ),
        (
            "a_deployment_file_over_128_kib_runs",
            Box::new(a_deployment_file_over_128_kib_runs),
        ),
        (
            "clean_removes_only_rings_whose_owner_is_provably_dead",
            Box::new(clean_removes_only_rings_whose_owner_is_provably_dead),
        ),
        (
            "a_sweep_from_another_pid_namespace_leaves_a_live_run_alone",
            Box::new(a_sweep_from_another_pid_namespace_leaves_a_live_run_alone),
        ),
        (
            "a_dev_shm_without_room_for_the_rings_is_refused_before_anything_starts",
            Box::new(a_dev_shm_without_room_for_the_rings_is_refused_before_anything_starts),
        ),
        ("graph_dot_output_parses", Box::new(graph_dot_output_parses)),
        (
            "list_shows_a_running_application_and_stop_drains_it",
            Box::new(list_shows_a_running_application_and_stop_drains_it),
        ),
        (
            "stop_picks_a_run_drains_it_and_now_kills",
            Box::new(stop_picks_a_run_drains_it_and_now_kills),
        ),
        (
            "logs_shows_a_process_lines_and_follows_new_ones",
            Box::new(logs_shows_a_process_lines_and_follows_new_ones),
        ),
        (
            "restart_restarts_a_process_and_loses_nothing",
            Box::new(restart_restarts_a_process_and_loses_nothing),
        ),
        (
            "another_user_can_neither_list_nor_stop_an_application",
            Box::new(another_user_can_neither_list_nor_stop_an_application),
        ),
        (
            "run_refuses_reserved_variables_and_missing_cpus_before_starting",
            Box::new(run_refuses_reserved_variables_and_missing_cpus_before_starting),
        ),
        (
            "check_refuses_the_secret_and_tls_files_that_run_refuses",
            Box::new(check_refuses_the_secret_and_tls_files_that_run_refuses),
        ),
        (
            "bad_deployment_files_are_rejected_with_file_line_column_and_name",
            Box::new(bad_deployment_files_are_rejected_with_file_line_column_and_name),
        ),
    ];
    // Two answers it waits for in vain, 10 s each.
    let beside: [suite::Beside; 1] = [(
        "a_launcher_that_does_not_answer_is_not_taken_for_gone",
        a_launcher_that_does_not_answer_is_not_taken_for_gone,
    )];
    if !suite::run(&scenarios, &beside, filter) {
        std::process::exit(1);
    }
}
