//! Cross-process one-way latency, iotstream against iceoryx2, in one run (issue 13).
//!
//! Every variant is a ping-pong between two processes with one 8-byte message in flight; half
//! of each round trip is one sample, and p50/p99/p999 are over the samples after the first
//! [`WARM_UP`] (the same nearest-rank percentiles as `iotstream bench`). Each runs back to back
//! and at 1,000 messages/s (the next ping at the next millisecond tick, never before the pong
//! is back: [`Pace`], as `iotstream bench --rate`):
//!
//! - **iceoryx2 event**: publish/subscribe of a `u64` plus an event service per direction; the
//!   sender publishes and notifies, the receiver sleeps in `Listener::blocking_wait_one` (the
//!   parent in `timed_wait_one`) and then takes the sample: blocking wake-ups, as in iceoryx2's
//!   "event-based communication" example (notifier and listener beside publisher and
//!   subscriber), without its WaitSet (one listener to wait on needs no multiplexing);
//! - **iceoryx2 polling**: the same publish/subscribe, each side busy-looping on `receive`
//!   (the echo process spins all the time, also between the paced pings);
//! - **iotstream processes** and **iotstream spin**: the built `iotstream` binary, as
//!   `iotstream bench --modes processes,spin --sizes 8 --patterns single --rate 0,1000`: ping
//!   (an input of the graph, one `InputSender::push` per ping) → echo in a second process over
//!   shared-memory rings → pong; back to back the pong agent pushes the next ping from its
//!   step, paced the program's thread does at each tick (as the iceoryx2 parent does); in the default
//!   (blocking) mode and in low-latency mode (`Connection::spin`); and the command's own
//!   baseline, a raw shared-memory ring with a futex wake-up after 100 spins (`shm-ring`).
//!
//! The iceoryx2 echo process is this bench binary re-executed with [`CHILD_VAR`] naming the
//! variant. iceoryx2 keeps its files under a root folder and a name prefix of this run's own
//! (a folder in the temporary directory, `iotlat<pid>_`), so that cleaning up is removing
//! them: [`Scratch`] does it when dropped, on success, error, panic or Ctrl-C (SIGINT and
//! SIGTERM end the run as an error), after killing the echo process and removing the resources
//! of dead nodes; the bench then checks that nothing is left.
//!
//! The table gives, per rate, each row's p50/p99/p999, `processes ÷ row` and `spin ÷ row`:
//! iotstream's p50 in that mode over that row's p50 at the same rate (above 1: iotstream is
//! slower). Issue 13's bars: processes at or below 1 against iceoryx2 event (blocking mode);
//! spin within 2 of iceoryx2 polling (low-latency mode). Results: `docs/benchmarks.md`.
//!
//! `cargo bench --bench ipc_latency`; `IPC_LATENCY_SECS` sets each latency run's seconds
//! (default 2; the whole bench takes about 12 times that, the iotstream command running its
//! throughput cells too). Run without `--bench` (`cargo test --benches`), the default is
//! 0.05 s: a smoke test that every variant runs and cleans up.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use iceoryx2::port::listener::Listener;
use iceoryx2::port::notifier::Notifier;
use iceoryx2::port::publisher::Publisher;
use iceoryx2::port::subscriber::Subscriber;
use iceoryx2::prelude::*;
use iotstream::bench::{percentiles, Pace, WARM_UP};

/// Set in the echo process: the variant it echoes for (`event` or `polling`).
const CHILD_VAR: &str = "IPC_LATENCY_CHILD";
/// The run's iceoryx2 root folder, handed to the echo process.
const ROOT_VAR: &str = "IPC_LATENCY_ROOT";
/// The run's iceoryx2 file-name prefix, handed to the echo process.
const PREFIX_VAR: &str = "IPC_LATENCY_PREFIX";
/// The variant's service name, handed to the echo process.
const SERVICE_VAR: &str = "IPC_LATENCY_SERVICE";
/// Seconds of each latency run.
const SECS_VAR: &str = "IPC_LATENCY_SECS";

/// The paced rate, messages per second.
const RATE: u32 = 1000;
/// The ping that ends the echo process (echoed first).
const STOP: u64 = u64::MAX;
/// The pings of the handshake, before any sample.
const HELLO: u64 = u64::MAX - 1;
/// How long a pong may take before the run fails.
const PONG_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the echo process may take to connect.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// The longest a wait goes without looking at [`interrupted`].
const WAIT_SLICE: Duration = Duration::from_millis(100);

/// Set by SIGINT or SIGTERM (registered in `main`).
static STOP_FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();

/// True once SIGINT or SIGTERM came: the run ends as an error, and cleans up.
fn interrupted() -> bool {
    STOP_FLAG.get().is_some_and(|f| f.load(Ordering::Relaxed))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Polling,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Event => "event",
            Kind::Polling => "polling",
        }
    }
}

/// One row of the table.
struct Row {
    name: String,
    rate: u32,
    samples: u64,
    p50: u64,
    p99: u64,
    p999: u64,
    error: Option<String>,
}

impl Row {
    fn failed(name: &str, rate: u32, error: String) -> Row {
        Row {
            name: name.into(),
            rate,
            samples: 0,
            p50: 0,
            p99: 0,
            p999: 0,
            error: Some(error),
        }
    }
}

/// iceoryx2's files of this run: a root folder and a name prefix of its own. Dropped: the
/// echo process (if any) is killed, dead nodes' resources removed, and every file of the run
/// (the root folder, `/dev/shm/<prefix>*`) deleted.
struct Scratch {
    root: PathBuf,
    prefix: String,
    child: Option<Child>,
}

impl Scratch {
    fn new() -> Scratch {
        let pid = std::process::id();
        Scratch {
            root: std::env::temp_dir().join(format!("iotstream-ipc-latency-{pid}")),
            prefix: format!("iotlat{pid}_"),
            child: None,
        }
    }

    fn config(&self) -> Result<Config, String> {
        config(&self.root.to_string_lossy(), &self.prefix)
    }

    /// What is left of the run's files (empty once cleaned).
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        if self.root.exists() {
            left.push(self.root.display().to_string());
        }
        if let Ok(dir) = std::fs::read_dir("/dev/shm") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(&self.prefix) {
                    left.push(format!("/dev/shm/{name}"));
                }
            }
        }
        left
    }

    fn kill_child(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn clean(&mut self) {
        self.kill_child();
        if let Ok(cfg) = self.config() {
            let _ = Node::<ipc::Service>::list(&cfg, |state| {
                if let NodeState::Dead(view) = state {
                    let _ = view.try_remove_stale_resources();
                }
                CallbackProgression::Continue
            });
        }
        for path in self.leftovers() {
            let p = std::path::Path::new(&path);
            let _ = if p.is_dir() {
                std::fs::remove_dir_all(p)
            } else {
                std::fs::remove_file(p)
            };
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.clean();
    }
}

fn config(root: &str, prefix: &str) -> Result<Config, String> {
    let mut cfg = Config::default();
    let mut root = root.to_string();
    if !root.ends_with('/') {
        root.push('/');
    }
    cfg.global.set_root_path(
        &Path::new(root.as_bytes()).map_err(|e| format!("iceoryx2 root path {root}: {e:?}"))?,
    );
    cfg.global.prefix =
        FileName::new(prefix.as_bytes()).map_err(|e| format!("iceoryx2 prefix {prefix}: {e:?}"))?;
    Ok(cfg)
}

fn node(cfg: &Config) -> Result<Node<ipc::Service>, String> {
    NodeBuilder::new()
        .config(cfg)
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<ipc::Service>()
        .map_err(|e| format!("iceoryx2 node: {e:?}"))
}

/// One direction: a publisher or subscriber of `u64`, with a notifier or listener for the
/// event variant.
struct Ends {
    publisher: Publisher<ipc::Service, u64, ()>,
    subscriber: Subscriber<ipc::Service, u64, ()>,
    notifier: Option<Notifier<ipc::Service>>,
    listener: Option<Listener<ipc::Service>>,
}

/// Opens the ping and pong services of `service` and this side's ports: the parent publishes
/// pings and subscribes to pongs, the echo the other way round.
fn ends(
    node: &Node<ipc::Service>,
    service: &str,
    kind: Kind,
    parent: bool,
) -> Result<Ends, String> {
    let open = |dir: &str| -> Result<_, String> {
        let name: ServiceName = format!("{service}/{dir}")
            .as_str()
            .try_into()
            .map_err(|e| format!("service name {service}/{dir}: {e:?}"))?;
        let pubsub = node
            .service_builder(&name)
            .publish_subscribe::<u64>()
            .open_or_create()
            .map_err(|e| format!("pub/sub service {service}/{dir}: {e:?}"))?;
        let event = match kind {
            Kind::Event => Some(
                node.service_builder(&name)
                    .event()
                    .open_or_create()
                    .map_err(|e| format!("event service {service}/{dir}: {e:?}"))?,
            ),
            Kind::Polling => None,
        };
        Ok((pubsub, event))
    };
    let (ping, ping_ev) = open("ping")?;
    let (pong, pong_ev) = open("pong")?;
    let (out, out_ev, inn, in_ev) = if parent {
        (ping, ping_ev, pong, pong_ev)
    } else {
        (pong, pong_ev, ping, ping_ev)
    };
    Ok(Ends {
        publisher: out
            .publisher_builder()
            .create()
            .map_err(|e| format!("publisher: {e:?}"))?,
        subscriber: inn
            .subscriber_builder()
            .create()
            .map_err(|e| format!("subscriber: {e:?}"))?,
        notifier: match out_ev {
            Some(e) => Some(
                e.notifier_builder()
                    .create()
                    .map_err(|e| format!("notifier: {e:?}"))?,
            ),
            None => None,
        },
        listener: match in_ev {
            Some(e) => Some(
                e.listener_builder()
                    .create()
                    .map_err(|e| format!("listener: {e:?}"))?,
            ),
            None => None,
        },
    })
}

impl Ends {
    fn send(&self, v: u64) -> Result<(), String> {
        self.publisher
            .send_copy(v)
            .map_err(|e| format!("send: {e:?}"))?;
        if let Some(n) = &self.notifier {
            n.notify().map_err(|e| format!("notify: {e:?}"))?;
        }
        Ok(())
    }

    fn try_receive(&self) -> Result<Option<u64>, String> {
        match self.subscriber.receive() {
            Ok(Some(s)) => Ok(Some(*s)),
            Ok(None) => Ok(None),
            Err(e) => Err(format!("receive: {e:?}")),
        }
    }

    /// Waits for the pong `want` (older ones are skipped), until `deadline`: sleeping on the
    /// listener (event) or spinning (polling).
    fn receive(&self, want: u64, deadline: Instant) -> Result<(), String> {
        let mut spins = 0u32;
        loop {
            while let Some(v) = self.try_receive()? {
                if v == want {
                    return Ok(());
                }
            }
            match &self.listener {
                Some(l) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    l.timed_wait_one(left.min(WAIT_SLICE))
                        .map_err(|e| format!("wait: {e:?}"))?;
                }
                None => std::hint::spin_loop(),
            }
            spins = spins.wrapping_add(1);
            if spins % 1024 == 0 || self.listener.is_some() {
                if interrupted() {
                    return Err("interrupted".into());
                }
                if Instant::now() >= deadline {
                    return Err(format!("no pong {want} in time"));
                }
            }
        }
    }
}

/// The echo process: sends back every ping, until [`STOP`].
fn echo(kind: Kind) -> Result<(), String> {
    // SAFETY: prctl with constant arguments: this process dies with the bench.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    let var = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let cfg = config(&var(ROOT_VAR)?, &var(PREFIX_VAR)?)?;
    let node = node(&cfg)?;
    let ends = ends(&node, &var(SERVICE_VAR)?, kind, false)?;
    loop {
        while let Some(v) = ends.try_receive()? {
            ends.send(v)?;
            if v == STOP {
                return Ok(());
            }
        }
        match &ends.listener {
            Some(l) => {
                l.blocking_wait_one().map_err(|e| format!("wait: {e:?}"))?;
            }
            None => std::hint::spin_loop(),
        }
    }
}

/// One iceoryx2 variant at one rate, its echo process started and stopped here.
fn iceoryx2_run(scratch: &mut Scratch, kind: Kind, rate: u32, secs: f64) -> Result<Row, String> {
    let cfg = scratch.config()?;
    let service = format!("iotstream/ipc_latency/{}/{}", scratch.prefix, kind.name());
    let service = format!("{service}/{rate}");
    let node = node(&cfg)?;
    let ends = ends(&node, &service, kind, true)?;
    let exe = std::env::current_exe().map_err(|e| format!("the bench binary: {e}"))?;
    scratch.child = Some(
        Command::new(exe)
            .env(CHILD_VAR, kind.name())
            .env(ROOT_VAR, &scratch.root)
            .env(PREFIX_VAR, &scratch.prefix)
            .env(SERVICE_VAR, &service)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the echo process: {e}"))?,
    );
    // Handshake: HELLO every millisecond until one comes back (both directions connected).
    let connect_by = Instant::now() + CONNECT_TIMEOUT;
    loop {
        ends.send(HELLO)?;
        if ends
            .receive(HELLO, Instant::now() + Duration::from_millis(1))
            .is_ok()
        {
            break;
        }
        if interrupted() {
            return Err("interrupted".into());
        }
        if Instant::now() >= connect_by {
            return Err(format!(
                "the echo process did not answer within {CONNECT_TIMEOUT:?}"
            ));
        }
    }
    std::thread::sleep(Duration::from_millis(20));
    while ends.try_receive()?.is_some() {}

    let mut pace = Pace::new(rate);
    let mut samples = Vec::new();
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut seq = 0u64;
    loop {
        pace.wait();
        if interrupted() {
            return Err("interrupted".into());
        }
        if Instant::now() >= end {
            break;
        }
        let t0 = Instant::now();
        ends.send(seq)?;
        ends.receive(seq, t0 + PONG_TIMEOUT)?;
        samples.push(t0.elapsed().as_nanos() as u64 / 2);
        seq += 1;
    }
    ends.send(STOP)?;
    ends.receive(STOP, Instant::now() + PONG_TIMEOUT)?;
    if let Some(mut c) = scratch.child.take() {
        let status = c.wait().map_err(|e| format!("waiting for the echo: {e}"))?;
        if !status.success() {
            return Err(format!("the echo process ended with {status}"));
        }
    }
    if samples.len() as u64 != seq {
        return Err(format!("{} pongs for {seq} pings", samples.len()));
    }
    if samples.len() > 2 * WARM_UP {
        samples.drain(..WARM_UP);
    }
    let (p50, p99, p999) = percentiles(&mut samples);
    Ok(Row {
        name: format!("iceoryx2 {}", kind.name()),
        rate,
        samples: samples.len() as u64,
        p50,
        p99,
        p999,
        error: None,
    })
}

/// `iotstream bench` in processes mode (blocking) and spin mode (low-latency) at both rates;
/// their rows and the shm-ring baseline's (measured beside the processes mode).
fn iotstream_rows(secs: f64) -> Vec<Row> {
    let json =
        std::env::temp_dir().join(format!("iotstream-ipc-latency-{}.json", std::process::id()));
    let fail = |e: String| {
        [0, RATE]
            .iter()
            .flat_map(|&r| {
                [
                    Row::failed("iotstream processes", r, e.clone()),
                    Row::failed("iotstream spin", r, e.clone()),
                    Row::failed("shm-ring (raw, futex)", r, e.clone()),
                ]
            })
            .collect::<Vec<_>>()
    };
    let out = Command::new(env!("CARGO_BIN_EXE_iotstream"))
        .args([
            "bench",
            "--modes",
            "processes,spin",
            "--sizes",
            "8",
            "--patterns",
            "single",
            "--rate",
            &format!("0,{RATE}"),
            "--duration",
            &format!("{}", 2.0 * secs),
            "--json",
        ])
        .arg(&json)
        .env_remove("IOTSTREAM_BENCH_CELL")
        .stdin(Stdio::null())
        .output();
    let text = std::fs::read_to_string(&json);
    let _ = std::fs::remove_file(&json);
    let out = match out {
        Ok(o) => o,
        Err(e) => return fail(format!("cannot run iotstream bench: {e}")),
    };
    let report: serde_json::Value = match text.map(|t| serde_json::from_str(&t)) {
        Ok(Ok(v)) => v,
        _ => {
            return fail(format!(
                "iotstream bench wrote no JSON ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let mut rows = Vec::new();
    for run in report["runs"].as_array().into_iter().flatten() {
        let u = |k: &str| run[k].as_u64().unwrap_or(0);
        let rate = u("rate_per_s") as u32;
        let error = run["error"].as_str().map(str::to_string);
        let mode = run["mode"].as_str().unwrap_or("?");
        rows.push(Row {
            name: format!("iotstream {mode}"),
            rate,
            samples: u("latency_samples"),
            p50: u("p50_ns"),
            p99: u("p99_ns"),
            p999: u("p999_ns"),
            error: error.clone(),
        });
        if mode != "processes" {
            continue;
        }
        rows.push(Row {
            name: "shm-ring (raw, futex)".into(),
            rate,
            samples: 0,
            p50: u("baseline_p50_ns"),
            p99: u("baseline_p99_ns"),
            p999: u("baseline_p999_ns"),
            error,
        });
    }
    if rows.is_empty() {
        return fail("iotstream bench reported no run".into());
    }
    rows
}

fn ns(x: u64) -> String {
    let x = x as f64;
    if x < 1e3 {
        format!("{x:.0} ns")
    } else if x < 1e6 {
        format!("{:.1} µs", x / 1e3)
    } else {
        format!("{:.2} ms", x / 1e6)
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:>9} {:>8} {:>9} {:>9} {:>9} {:>16} {:>12}",
        "variant", "rate", "samples", "p50", "p99", "p999", "processes ÷ row", "spin ÷ row"
    );
    let _ = writeln!(out, "{}", "-".repeat(90));
    for rate in [0, RATE] {
        let ours = |name: &str| {
            rows.iter()
                .find(|r| r.rate == rate && r.name == name && r.error.is_none())
                .map(|r| r.p50)
        };
        let (blocking, spinning) = (ours("iotstream processes"), ours("iotstream spin"));
        for r in rows.iter().filter(|r| r.rate == rate) {
            let rate = if rate == 0 {
                "b2b".to_string()
            } else {
                format!("{rate}/s")
            };
            if let Some(e) = &r.error {
                let _ = writeln!(out, "{:<24} {:>9} FAILED: {e}", r.name, rate);
                continue;
            }
            let ratio = |ours: Option<u64>| match ours {
                Some(o) if r.p50 > 0 => match o as f64 / r.p50 as f64 {
                    x if x < 0.1 => format!("{x:.4}×"),
                    x => format!("{x:.2}×"),
                },
                _ => "-".into(),
            };
            let samples = if r.samples > 0 {
                r.samples.to_string()
            } else {
                "-".into()
            };
            let _ = writeln!(
                out,
                "{:<24} {:>9} {:>8} {:>9} {:>9} {:>9} {:>16} {:>12}",
                r.name,
                rate,
                samples,
                ns(r.p50),
                ns(r.p99),
                ns(r.p999),
                ratio(blocking),
                ratio(spinning)
            );
        }
    }
    out.push_str(
        "\nOne-way latency: half a round trip, one 8-byte message in flight, two processes; b2b: \
         back to back; 1000/s: the next ping at the next millisecond tick.\n\
         processes ÷ row, spin ÷ row: the p50 of iotstream's processes mode (blocking, the \
         default) or spin mode (low-latency: Connection::spin) over the row's p50 at the same \
         rate (above 1: iotstream slower). Bars (issue 13): processes ≤ 1 against iceoryx2 \
         event, spin ≤ 2 against iceoryx2 polling.\n",
    );
    out
}

fn main() {
    if let Ok(kind) = std::env::var(CHILD_VAR) {
        let kind = if kind == "event" {
            Kind::Event
        } else {
            Kind::Polling
        };
        set_log_level(LogLevel::Error);
        if let Err(e) = echo(kind) {
            eprintln!("ipc_latency echo: {e}");
            std::process::exit(1);
        }
        return;
    }
    set_log_level(LogLevel::Error);
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        if let Err(e) = signal_hook::flag::register(signal, Arc::clone(&flag)) {
            eprintln!("ipc_latency: cannot handle signal {signal}: {e}");
        }
    }
    let _ = STOP_FLAG.set(flag);
    // `cargo bench` passes `--bench`; without it (`cargo test --benches`) the run is a smoke
    // test of every variant and of the clean-up, 0.05 s each.
    let default_secs = if std::env::args().any(|a| a == "--bench") {
        2.0
    } else {
        0.05
    };
    let secs: f64 = std::env::var(SECS_VAR)
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|s: &f64| s.is_finite() && *s >= 0.05)
        .unwrap_or(default_secs);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut scratch = Scratch::new();
    for kind in [Kind::Event, Kind::Polling] {
        for rate in [0, RATE] {
            eprintln!("ipc_latency: iceoryx2 {} at {rate}/s ...", kind.name());
            let row = iceoryx2_run(&mut scratch, kind, rate, secs)
                .unwrap_or_else(|e| Row::failed(&format!("iceoryx2 {}", kind.name()), rate, e));
            scratch.kill_child();
            rows.push(row);
        }
    }
    scratch.clean();
    if interrupted() {
        let left = scratch.leftovers();
        drop(scratch);
        eprintln!("ipc_latency: interrupted; iceoryx2 files left: {left:?}");
        std::process::exit(130);
    }
    let left = scratch.leftovers();
    drop(scratch);
    eprintln!("ipc_latency: iotstream bench --modes processes ...");
    rows.extend(iotstream_rows(secs));
    print!("{}", table(&rows));
    println!(
        "({:.0} s; {secs} s per latency run; set {SECS_VAR} to change)",
        started.elapsed().as_secs_f64()
    );
    if !left.is_empty() {
        eprintln!("ipc_latency: error: iceoryx2 files left behind: {left:?}");
        std::process::exit(1);
    }
    if rows.iter().any(|r| r.error.is_some()) {
        std::process::exit(1);
    }
}
