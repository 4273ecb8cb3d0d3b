//! The live view of a real application, end to end: the `iotstream` launcher runs the quake
//! detector example (`examples/quake_detector.rs`, its own binary, paced at 250 samples/s) as
//! `examples/quake_detector.toml` deploys it: four processes (`main`, `detector`, `trigger`,
//! `alerts`), one agent each. The tests look at what the launcher serves while it runs:
//!
//! - the web page (`--ui`) in headless Chromium: every agent and process shown, and counts and
//!   rates that follow the application between two loads; the screenshots go to
//!   `<target>/test-artifacts/live_view_quake_{1,2}.png`;
//! - `iotstream top` in a tmux session of fixed size: every agent shown in its process with a
//!   rate above 0, `b` sorts by backlog, `q` quits and gives the terminal back; the screens go
//!   to `<target>/test-artifacts/top_quake.txt`;
//! - `--metrics`: valid Prometheus text, every process up, counters that grow, `/api/graph`;
//!   `iotstream restart` of a process counted once with no counter going back; an address off
//!   loopback refused before anything starts without the deployment's secret, and served only
//!   to requests that bear it with one.
//!
//! The example binary is built by the first test that needs it (`cargo build --example
//! quake_detector`, which does nothing when it is up to date) into this test's target folder.
//! Each run has its own runtime folder (`XDG_RUNTIME_DIR`: its own control sockets) and serves
//! on ports the system picks (`127.0.0.1:0`, read from what the launcher prints). Whatever
//! happens, the launcher's process group and every process of its run are killed and its
//! shared memory removed when the test ends; so are the tmux server and the browsers.
//! Chromium and tmux are found on the `PATH` (`.ci/run` installs them); without them the
//! tests that need them say why and pass.

#[path = "support/browser.rs"]
mod browser;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use iotstream::info::GraphInfo;
use iotstream::observe::{AppMetrics, LinkView, ProcessStatus, ProcessView};
use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use browser::{elements_with, Browser};

/// The application's name, as the example gives it to `Graph::new`.
const APP: &str = "quake_detector";

/// Each agent of the quake detector and the process `examples/quake_detector.toml` puts it in.
const PLACED: [(&str, &str); 4] = [
    ("seismometer", "main"),
    ("sta_lta", "detector"),
    ("trigger", "trigger"),
    ("alerts", "alerts"),
];

/// The processes of the deployment.
const PROCESSES: [&str; 4] = ["main", "detector", "trigger", "alerts"];

/// The sensor's connection (seismometer → sta_lta): data flows on it from the start.
const SENSOR: &str = "seismometer.out";

/// The detector's connection (sta_lta → trigger): data flows on it once the detector's long
/// window (10 s of samples) is full.
const RATIO: &str = "sta_lta.ratio";

/// The bound on every wait: a guard against a hang, not a measure of speed.
const PATIENCE: Duration = Duration::from_secs(90);

// ---------------------------------------------------------------------------------------------
// The programs under test

fn launcher_exe() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_iotstream"))
}

fn deployment() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quake_detector.toml")
}

/// The quake detector's binary, built once per run of this test binary.
fn quake_exe() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(build_quake)
        .clone()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// `cargo build --example quake_detector` with this test's profile, into its target folder:
/// this test is `<target>/<profile>/deps/live_view-…`, the example lands in
/// `<target>/<profile>/examples/`.
fn build_quake() -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or_else(|| format!("{} is not in <target>/<profile>/deps", exe.display()))?;
    let target = profile_dir
        .parent()
        .ok_or_else(|| format!("{} has no parent", profile_dir.display()))?;
    let mut cargo = Command::new(env!("CARGO"));
    cargo
        .args(["build", "--quiet", "--example", "quake_detector"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", target);
    // The features this test was built with (`cargo test --all-features` or not), so that the
    // example links the library already built for the tests instead of building another
    // ("default" too: cargo counts it in the library's feature set).
    let features: Vec<&str> = [
        ("default", cfg!(feature = "default")),
        ("cli", cfg!(feature = "cli")),
        ("mqtt-tls", cfg!(feature = "mqtt-tls")),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    cargo.args(["--no-default-features", "--features", &features.join(",")]);
    // Not what cargo set for this test (the package's name, version, manifest folder): some
    // build scripts (ring's) ask to be run again when one of these changes, so inherited they
    // would rebuild ring and everything above it here, and again in the next cargo command.
    for (name, _) in std::env::vars_os() {
        if let Some(name) = name.to_str() {
            if name.starts_with("CARGO_PKG_")
                || name.starts_with("CARGO_MANIFEST_")
                || [
                    "CARGO_CRATE_NAME",
                    "CARGO_PRIMARY_PACKAGE",
                    "CARGO_TARGET_TMPDIR",
                ]
                .contains(&name)
            {
                cargo.env_remove(name);
            }
        }
    }
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cargo.arg("--release");
        }
        Some(other) => {
            cargo.args(["--profile", other]);
        }
    }
    let out = cargo
        .output()
        .map_err(|e| format!("cannot run cargo to build the quake detector: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build --example quake_detector failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let built = profile_dir.join("examples/quake_detector");
    if built.is_file() {
        Ok(built)
    } else {
        Err(format!(
            "cargo build --example quake_detector made no {}",
            built.display()
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// A run under the launcher

/// `iotstream run <quake detector> --deploy FILE OPTIONS -- --realtime --minutes 10`, with a
/// runtime folder of its own and its output collected as it comes. Dropped, it kills the
/// launcher's process group and every process of its run, and removes the run's shared memory.
struct Run {
    child: Child,
    xdg: tempfile::TempDir,
    out: Arc<Mutex<String>>,
    err: Arc<Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

impl Run {
    /// The quake detector as `examples/quake_detector.toml` deploys it, with `options`.
    fn start(options: &[&str]) -> Run {
        Run::start_with(&deployment(), options)
    }

    fn start_with(deploy: &Path, options: &[&str]) -> Run {
        let quake = quake_exe();
        let xdg = tempfile::Builder::new()
            .prefix("iotstream-live-view-")
            .tempdir()
            .expect("a runtime folder");
        let mut child = Command::new(launcher_exe())
            .arg("run")
            .arg(&quake)
            .arg("--deploy")
            .arg(deploy)
            .args(options)
            .args(["--", "--realtime", "--minutes", "10"])
            .env("XDG_RUNTIME_DIR", xdg.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start iotstream run");
        let out = Arc::new(Mutex::new(String::new()));
        let err = Arc::new(Mutex::new(String::new()));
        let readers = vec![
            collect(child.stdout.take().expect("piped"), Arc::clone(&out)),
            collect(child.stderr.take().expect("piped"), Arc::clone(&err)),
        ];
        Run {
            child,
            xdg,
            out,
            err,
            readers,
            exited: None,
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stderr(&self) -> String {
        self.err.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits (bounded) until `cond` holds on the launcher's standard error; returns it.
    fn wait_stderr(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let err = self.stderr();
            if cond(&err) {
                return err;
            }
            assert!(
                Instant::now() < deadline,
                "never saw {what} on the launcher's stderr:\n{err}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until every process runs and data flows.
    fn wait_flowing(&self) {
        self.wait_stderr("'data flows'", |e| e.contains("data flows"));
    }

    /// Where the launcher said it serves `what` (`metrics` or `live view`): the address to
    /// connect to (loopback for an address that listens on every interface).
    fn served(&self, what: &str) -> SocketAddr {
        let key = format!("[iotstream] {what} on http://");
        let err = self.wait_stderr(&format!("'{key}…'"), |e| e.contains(&key));
        let addr = err
            .lines()
            .find_map(|l| l.split_once(&key).map(|(_, rest)| rest))
            .and_then(|rest| rest.strip_suffix('/'))
            .unwrap_or_else(|| panic!("no address after '{key}':\n{err}"));
        let mut addr: SocketAddr = addr
            .parse()
            .unwrap_or_else(|e| panic!("'{addr}' is no address ({e}):\n{err}"));
        if addr.ip().is_unspecified() {
            addr.set_ip([127, 0, 0, 1].into());
        }
        addr
    }

    /// `iotstream ARGS` as the user who runs this application (its runtime folder).
    fn command(&self, args: &[&str]) -> Output {
        Command::new(launcher_exe())
            .args(args)
            .env("XDG_RUNTIME_DIR", self.xdg.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run iotstream {args:?}: {e}"))
    }

    /// Waits (bounded) for the launcher's exit and checks that it left nothing behind: no
    /// process of its run, no shared memory, no control socket. Returns its status.
    fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the launcher") {
                break status;
            }
            assert!(
                Instant::now() < deadline,
                "the launcher did not exit; stderr:\n{}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.exited = Some(status);
        for r in self.readers.drain(..) {
            let _ = r.join();
        }
        let (pids, rings, sockets) = (
            run_pids(self.pid()),
            segments(self.pid()),
            sockets(self.xdg.path()),
        );
        assert!(
            pids.is_empty() && rings.is_empty() && sockets.is_empty(),
            "the launcher ended ({status}) but left processes {pids:?}, shared memory {rings:?} \
             and sockets {sockets:?}:\n{}",
            self.stderr()
        );
        status
    }

    /// `iotstream stop`: the application drains, the launcher exits with 0 and leaves nothing.
    fn stop(mut self) {
        let said = self.command(&["stop", APP]);
        let status = self.wait_exit();
        assert!(
            said.status.success() && status.success(),
            "iotstream stop: {said:?}\nthe launcher: {status}\n{}",
            self.stderr()
        );
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let launcher = self.pid();
        if self.exited.is_none() {
            let _ = killpg(Pid::from_raw(launcher as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        // Its children die with it (PR_SET_PDEATHSIG); any still there are killed (bounded).
        for _ in 0..100 {
            let left = run_pids(launcher);
            if left.is_empty() {
                break;
            }
            for pid in left {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        for name in segments(launcher) {
            let _ = std::fs::remove_file(Path::new("/dev/shm").join(name));
        }
        if !std::thread::panicking() {
            return;
        }
        // A failing test: what the application said helps.
        eprintln!(
            "--- the launcher's stdout:\n{}--- its stderr:\n{}",
            self.out.lock().unwrap_or_else(|p| p.into_inner()),
            self.stderr()
        );
    }
}

fn collect(
    pipe: impl Read + Send + 'static,
    into: Arc<Mutex<String>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { return };
            let mut s = into.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    })
}

/// The processes of the run the launcher `owner` started (their `IOTSTREAM_RUN` starts with
/// its pid).
fn run_pids(owner: u32) -> Vec<u32> {
    let prefix = format!("IOTSTREAM_RUN={owner}-");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                env.split(|b| *b == 0)
                    .any(|v| v.starts_with(prefix.as_bytes()))
            })
        })
        .collect()
}

/// The shared-memory objects of the launcher `owner`'s run.
fn segments(owner: u32) -> Vec<String> {
    let prefix = format!("iotstream.{APP}.{owner}-");
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The control sockets in runtime folder `xdg`.
fn sockets(xdg: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(xdg.join("iotstream"))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------------------------
// HTTP and the view

/// One GET (HTTP/1.0, so the body ends with the connection): the status and the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> (u16, String) {
    let fail = |e: std::io::Error| -> ! { panic!("GET http://{addr}{path}: {e}") };
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap_or_else(|e| fail(e));
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap_or_else(|e| fail(e));
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{auth}\r\n").unwrap_or_else(|e| fail(e));
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap_or_else(|e| fail(e));
    let raw = text(&raw);
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("GET http://{addr}{path}: no head and body in {raw:?}"));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("GET http://{addr}{path}: no status in {head:?}"));
    (status, body.to_string())
}

/// `/api/metrics`.
fn view(addr: SocketAddr) -> AppMetrics {
    let (status, body) = get(addr, "/api/metrics", None);
    assert_eq!(status, 200, "/api/metrics: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/metrics is no view ({e}): {body}"))
}

/// Polls `/api/metrics` until `cond` holds (bounded); checks on the way that no counter goes
/// back. Returns the view that satisfied `cond`.
fn wait_view(addr: SocketAddr, what: &str, cond: impl FnMut(&AppMetrics) -> bool) -> AppMetrics {
    wait_view_after(addr, None, what, cond)
}

/// [`wait_view`], checking from `start` on that no counter goes back.
fn wait_view_after(
    addr: SocketAddr,
    start: Option<&AppMetrics>,
    what: &str,
    mut cond: impl FnMut(&AppMetrics) -> bool,
) -> AppMetrics {
    let deadline = Instant::now() + PATIENCE;
    let mut last: Option<AppMetrics> = start.cloned();
    loop {
        let v = view(addr);
        if let Some(prev) = &last {
            assert_counters_grow(prev, &v);
        }
        if cond(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "the live view never showed {what}; the last view:\n{}",
            serde_json::to_string_pretty(&v).unwrap_or_default()
        );
        last = Some(v);
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn link<'a>(v: &'a AppMetrics, stream: &str) -> &'a LinkView {
    v.links
        .iter()
        .find(|l| l.stream == stream)
        .unwrap_or_else(|| panic!("no connection of {stream} in the view: {:?}", v.links))
}

fn process<'a>(v: &'a AppMetrics, name: &str) -> &'a ProcessView {
    v.processes
        .iter()
        .find(|p| p.process == name)
        .unwrap_or_else(|| panic!("no process {name} in the view: {:?}", v.processes))
}

/// Every counter of the view, by a name that says where it is.
fn counters(v: &AppMetrics) -> BTreeMap<String, f64> {
    let mut c = BTreeMap::new();
    for p in &v.processes {
        c.insert(format!("process {} cpu_s", p.process), p.cpu_s);
        c.insert(format!("process {} restarts", p.process), p.restarts as f64);
    }
    for a in &v.agents {
        for (k, n) in [
            ("steps", a.steps),
            ("consumed", a.consumed),
            ("busy_ns", a.busy_ns),
            ("late", a.late),
        ] {
            c.insert(format!("agent {} {k}", a.name), n as f64);
        }
    }
    for s in &v.streams {
        for (k, n) in [("elements", s.elements), ("batches", s.batches)] {
            c.insert(format!("stream {} {k}", s.name), n as f64);
        }
    }
    for l in &v.links {
        for (k, n) in [
            ("elements", l.elements),
            ("batches", l.batches),
            ("dropped", l.dropped),
            ("blocked_ns", l.blocked_ns),
            ("bytes", l.bytes),
            ("reconnects", l.reconnects),
            ("released_early", l.released_early),
        ] {
            c.insert(
                format!("connection {} → {} {k}", l.stream, l.reader),
                n as f64,
            );
        }
    }
    c
}

fn assert_counters_grow(before: &AppMetrics, after: &AppMetrics) {
    let (b, a) = (counters(before), counters(after));
    for (name, was) in &b {
        let now = a.get(name).copied().unwrap_or(f64::NAN);
        assert!(
            now >= *was,
            "{name} went back from {was} to {now} (views at {} and {} ms)",
            before.time_ms,
            after.time_ms
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The web page

/// What the page showed of the application.
struct Shown {
    /// `data-updates`: the metrics reports the page has shown.
    updates: u64,
    /// `#updated[data-time-ms]`: the time of the last one.
    time_ms: u64,
    /// Each connection's `data-rate` and `data-elements`, by stream.
    edges: BTreeMap<String, (f64, u64)>,
}

impl Shown {
    fn edge(&self, stream: &str) -> (f64, u64) {
        *self
            .edges
            .get(stream)
            .unwrap_or_else(|| panic!("no edge of {stream} on the page: {:?}", self.edges))
    }
}

/// Loads the page in Chromium and checks that it shows the whole application as deployed,
/// every process running, the API reached and nothing written to the console.
fn load(browser: &Browser, url: &str) -> Shown {
    let page = browser.dump_dom(url, 2500).expect("the page loads");
    assert_eq!(page.console, Vec::<String>::new(), "the page logged");
    let dom = page.dom;
    let one = |attr: &str| -> BTreeMap<String, String> {
        elements_with(&dom, attr)
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("no element with {attr} on the page:\n{dom}"))
    };
    assert_eq!(one("data-app")["data-app"], APP);
    assert_eq!(one("data-api")["data-api"], "ok", "the API reached:\n{dom}");
    let updates: u64 = one("data-updates")["data-updates"]
        .parse()
        .expect("data-updates is a count");
    assert!(updates >= 1, "the page showed no report:\n{dom}");
    let time_ms: u64 = one("data-time-ms")["data-time-ms"]
        .parse()
        .expect("data-time-ms is a time");

    let mut agents: Vec<(String, String)> = elements_with(&dom, "data-agent")
        .into_iter()
        .map(|a| (a["data-agent"].clone(), a["data-process"].clone()))
        .collect();
    agents.sort();
    let mut placed: Vec<(String, String)> = PLACED
        .iter()
        .map(|(a, p)| (a.to_string(), p.to_string()))
        .collect();
    placed.sort();
    assert_eq!(agents, placed, "the agents shown, in their processes");

    let mut processes: Vec<(String, String)> = elements_with(&dom, "data-process")
        .into_iter()
        .filter(|p| p.get("class").is_some_and(|c| c == "proc"))
        .map(|p| (p["data-process"].clone(), p["data-status"].clone()))
        .collect();
    processes.sort();
    let mut running: Vec<(String, String)> = PROCESSES
        .iter()
        .map(|p| (p.to_string(), "running".to_string()))
        .collect();
    running.sort();
    assert_eq!(processes, running, "the processes shown, each running");

    let edges: BTreeMap<String, (f64, u64)> = elements_with(&dom, "data-edge")
        .into_iter()
        .map(|e| {
            let rate = e["data-rate"]
                .parse()
                .unwrap_or_else(|_| panic!("edge {e:?}: no rate"));
            let elements = e["data-elements"]
                .parse()
                .unwrap_or_else(|_| panic!("edge {e:?}: no element count"));
            (e["data-stream"].clone(), (rate, elements))
        })
        .collect();
    let streams: Vec<&str> = edges.keys().map(String::as_str).collect();
    assert_eq!(
        streams,
        [SENSOR, RATIO, "trigger.out"],
        "the connections shown"
    );
    Shown {
        updates,
        time_ms,
        edges,
    }
}

/// A screenshot as wide as the page's graph and as high as what it shows (for the docs too).
fn screenshot(browser: &Browser, url: &str, name: &str) {
    let png = browser::artifacts_dir().join(name);
    browser
        .screenshot_sized(url, 2500, (1400, 330), &png)
        .expect("a screenshot");
    let head = std::fs::read(&png).expect("read the screenshot");
    assert!(head.starts_with(b"\x89PNG"), "{} is no PNG", png.display());
    println!("screenshot: {}", png.display());
}

#[test]
fn the_page_shows_every_agent_of_the_running_detector_and_follows_it() {
    let browser = match Browser::find_or_install() {
        Ok(b) => b,
        Err(why) => {
            println!("skipped: {why}");
            return;
        }
    };
    let run = Run::start(&["--ui", "127.0.0.1:0"]);
    let ui = run.served("live view");
    run.wait_flowing();
    // Rates need two reports of a process: the page's first load has them.
    wait_view(ui, "a rate on the sensor's connection", |v| {
        link(v, SENSOR).elements_per_s.is_some_and(|r| r > 0.0)
    });
    let url = format!("http://{ui}/");

    let first = load(&browser, &url);
    screenshot(&browser, &url, "live_view_quake_1.png");
    let (rate, sensor_first) = first.edge(SENSOR);
    assert!(
        rate > 0.0 && sensor_first > 0,
        "the sensor's connection: {:?}",
        first.edges
    );

    // The detector's output flows once its long window is full; the page follows.
    wait_view(
        ui,
        "data on the detector's connection and more from the sensor",
        |v| {
            link(v, RATIO).elements_per_s.is_some_and(|r| r > 0.0)
                && link(v, SENSOR).elements > sensor_first
        },
    );
    let second = load(&browser, &url);
    screenshot(&browser, &url, "live_view_quake_2.png");
    let (rate, sensor_second) = second.edge(SENSOR);
    assert!(
        rate > 0.0 && sensor_second > sensor_first,
        "the sensor's connection: {:?} then {:?}",
        first.edges,
        second.edges
    );
    let (rate, ratios) = second.edge(RATIO);
    assert!(
        rate > 0.0 && ratios > 0,
        "the detector's connection: {:?} then {:?}",
        first.edges,
        second.edges
    );
    assert_ne!(
        first.edges, second.edges,
        "the same rates and counts in two loads"
    );
    assert!(second.time_ms > first.time_ms && second.updates >= 1);
    run.stop();
}

// ---------------------------------------------------------------------------------------------
// iotstream top in tmux

/// A tmux server of our own (its socket in a folder of ours) with one detached session of
/// 160×45 running a plain shell; killed, with what runs in it, when dropped.
struct Tmux {
    dir: tempfile::TempDir,
    /// Every screen captured, for the artifact.
    screens: Vec<(String, String)>,
}

impl Tmux {
    /// A session whose shell has `env` (names and values) in its environment.
    fn start(env: &[(&str, &Path)]) -> Tmux {
        let dir = tempfile::Builder::new()
            .prefix("iotstream-tmux-")
            .tempdir()
            .expect("a folder for tmux's socket");
        let tmux = Tmux {
            dir,
            screens: Vec::new(),
        };
        let mut shell: Vec<String> = vec!["env".into(), "PS1=e2e$ ".into()];
        shell.extend(env.iter().map(|(k, v)| format!("{k}={}", v.display())));
        shell.push("sh".into());
        let mut args: Vec<String> = [
            "new-session",
            "-d",
            "-s",
            "e2e",
            "-x",
            "160",
            "-y",
            "45",
            "--",
        ]
        .map(String::from)
        .into();
        args.extend(shell);
        tmux.ok(&args.iter().map(String::as_str).collect::<Vec<_>>());
        tmux
    }

    fn command(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-u")
            .arg("-f")
            .arg("/dev/null")
            .arg("-S")
            .arg(self.dir.path().join("socket"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tmux {args:?}: {e}"))
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.command(args);
        assert!(out.status.success(), "tmux {args:?}: {out:?}");
        text(&out.stdout)
    }

    /// Types `line` in the pane and presses Enter.
    fn type_line(&self, line: &str) {
        self.ok(&["send-keys", "-t", "e2e", "-l", line]);
        self.ok(&["send-keys", "-t", "e2e", "Enter"]);
    }

    fn key(&self, key: &str) {
        self.ok(&["send-keys", "-t", "e2e", key]);
    }

    /// The pane's text now.
    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "e2e"])
    }

    /// Captures the pane until `cond` holds (bounded); keeps that screen under `title`.
    fn wait_screen(&mut self, title: &str, cond: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let screen = self.screen();
            if cond(&screen) {
                self.screens.push((title.to_string(), screen.clone()));
                return screen;
            }
            if Instant::now() > deadline {
                self.save();
                panic!("the pane never showed {title}:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Writes the screens kept to `<target>/test-artifacts/top_quake.txt`.
    fn save(&self) {
        let mut all = String::new();
        for (title, screen) in &self.screens {
            all.push_str(&format!("===== {title}\n{}\n", screen.trim_end()));
        }
        let path = browser::artifacts_dir().join("top_quake.txt");
        std::fs::write(&path, all).expect("write the screens");
        println!("screens: {}", path.display());
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.command(&["kill-server"]);
    }
}

/// The word after `sort: ` in top's header.
fn sort_marker(screen: &str) -> Option<&str> {
    let first = screen.lines().next()?;
    let (_, rest) = first.split_once("sort: ")?;
    rest.split_whitespace().next()
}

/// A row of one of top's tables whose first cells are `first` and `second`.
fn has_row(screen: &str, first: &str, second: &str) -> bool {
    screen.lines().any(|l| {
        l.split('│').any(|cell| {
            let mut words = cell.split_whitespace();
            words.next() == Some(first) && words.next() == Some(second)
        })
    })
}

/// The rate top shows for the connection `stream → input` (the column after the transport).
fn top_rate(screen: &str, stream: &str, input: &str) -> Option<f64> {
    let line = screen
        .lines()
        .find(|l| l.contains(&format!("{stream} → {input} ")))?;
    let (_, rest) = line.split_once(input)?;
    let mut words = rest.split_whitespace();
    let _transport = words.next()?;
    let rate = words.next()?;
    let (digits, scale) = match rate.char_indices().last()? {
        (i, 'k') => (&rate[..i], 1e3),
        (i, 'M') => (&rate[..i], 1e6),
        (i, 'G') => (&rate[..i], 1e9),
        _ => (rate, 1.0),
    };
    digits.parse::<f64>().ok().map(|r| r * scale)
}

#[test]
fn top_in_tmux_shows_every_agent_sorts_and_gives_the_terminal_back() {
    if Command::new("tmux").arg("-V").output().is_err() {
        println!("skipped: tmux is not installed");
        return;
    }
    let run = Run::start(&[]);
    run.wait_flowing();
    let mut tmux = Tmux::start(&[("XDG_RUNTIME_DIR", run.xdg.path())]);
    tmux.wait_screen("the shell", |s| s.contains("e2e$"));
    tmux.type_line(&format!(
        "{} top {APP}; echo top-exited-$?",
        launcher_exe().display()
    ));
    let live = tmux.wait_screen(
        "iotstream top: every agent in its process, data flowing",
        |s| {
            PLACED.iter().all(|(a, p)| has_row(s, a, p))
                && PROCESSES.iter().all(|p| has_row(s, p, "local"))
                && top_rate(s, SENSOR, "sta_lta.samples").is_some_and(|r| r > 0.0)
        },
    );
    assert!(
        live.starts_with(&format!(" iotstream top │ {APP} │")),
        "the header:\n{live}"
    );
    assert_eq!(
        sort_marker(&live),
        Some("rate"),
        "sorted by rate first:\n{live}"
    );

    tmux.key("b");
    tmux.wait_screen("after b: sorted by backlog", |s| {
        sort_marker(s) == Some("backlog")
    });

    tmux.key("q");
    let after = tmux.wait_screen("after q: the shell again", |s| {
        s.lines().any(|l| l.trim() == "top-exited-0")
    });
    assert!(
        !after.contains("iotstream top │"),
        "top's screen is still shown:\n{after}"
    );
    assert_eq!(
        tmux.ok(&["display-message", "-p", "-t", "e2e", "#{alternate_on}"])
            .trim(),
        "0",
        "the pane is still on the alternate screen"
    );
    // The terminal is back in its normal mode: the shell reads a line, and stty says so.
    tmux.type_line(r#"echo "tty-$(stty -a | grep -q -- -icanon && echo raw || echo cooked)""#);
    let tty = tmux.wait_screen("the terminal's mode after top", |s| {
        s.lines().any(|l| l.starts_with("tty-"))
    });
    tmux.save();
    assert!(
        tty.lines().any(|l| l.trim() == "tty-cooked"),
        "top left the terminal raw:\n{tty}"
    );
    drop(tmux);
    run.stop();
}

// ---------------------------------------------------------------------------------------------
// --metrics through the launcher

/// `/metrics`, parsed by an independent reader of the text format (strict about names, labels,
/// escapes and HELP/TYPE before samples): each series, `name{label="value",…}` as the labels
/// come, with its value.
fn scrape(addr: SocketAddr, token: Option<&str>) -> BTreeMap<String, f64> {
    let (status, body) = get(addr, "/metrics", token);
    assert_eq!(status, 200, "/metrics: {body}");
    let parsed = prom_text_format_parser::Scrape::parse(&body)
        .unwrap_or_else(|e| panic!("/metrics is no valid Prometheus text ({e:?}):\n{body}"));
    let mut series = BTreeMap::new();
    for family in &parsed.metrics {
        for s in &family.samples {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|l| format!("{}=\"{}\"", l.key, l.value))
                .collect();
            let key = format!("{}{{{}}}", family.name, labels.join(","));
            series.insert(key, s.value.value.as_f64());
        }
    }
    series
}

/// The one series of family `name` whose labels include each of `labels`.
fn series(scraped: &BTreeMap<String, f64>, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found: Vec<(&String, &f64)> = scraped
        .iter()
        .filter(|(k, _)| {
            k.starts_with(&format!("{name}{{"))
                && labels
                    .iter()
                    .all(|(l, v)| k.contains(&format!("{l}=\"{v}\"")))
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one {name} with {labels:?} wanted, found {found:?}"
    );
    *found[0].1
}

#[test]
fn metrics_show_every_process_grow_and_survive_a_restart() {
    let run = Run::start(&[
        "--metrics",
        "127.0.0.1:0",
        "--ui",
        "127.0.0.1:0",
        "--metrics-interval",
        "250ms",
    ]);
    let metrics = run.served("metrics");
    let ui = run.served("live view");
    run.wait_flowing();

    let (status, graph) = get(metrics, "/api/graph", None);
    assert_eq!(status, 200, "/api/graph: {graph}");
    let graph: GraphInfo = serde_json::from_str(&graph).expect("/api/graph is a GraphInfo");
    let mut agents: Vec<(&str, &str)> = graph
        .agents
        .iter()
        .map(|a| (a.name.as_str(), a.process.as_str()))
        .collect();
    agents.sort();
    let mut placed = PLACED.to_vec();
    placed.sort();
    assert_eq!(agents, placed, "/api/graph: the agents in their processes");
    assert_eq!(graph.processes, PROCESSES);
    let (status, page) = get(ui, "/", None);
    assert!(
        status == 200 && page.starts_with("<!doctype html>"),
        "{status}: {page}"
    );

    // Two scrapes: every process up, the sensor's count grows, no counter goes back.
    let sensor = [("stream", SENSOR), ("reader", "sta_lta")];
    let elements = |s: &BTreeMap<String, f64>| series(s, "iotstream_link_elements_total", &sensor);
    wait_view(metrics, "data on the sensor's connection", |v| {
        link(v, SENSOR).elements > 0
    });
    let first = scrape(metrics, None);
    for p in PROCESSES {
        let labels = [("app", APP), ("process", p), ("host", "local")];
        assert_eq!(
            series(&first, "iotstream_process_up", &labels),
            1.0,
            "{p} up"
        );
    }
    let ups = first
        .keys()
        .filter(|k| k.starts_with("iotstream_process_up{"))
        .count();
    assert_eq!(ups, PROCESSES.len(), "one iotstream_process_up per process");
    let deadline = Instant::now() + PATIENCE;
    let second = loop {
        let s = scrape(metrics, None);
        if elements(&s) > elements(&first) {
            break s;
        }
        assert!(Instant::now() < deadline, "{SENSOR}'s count never grew");
        std::thread::sleep(Duration::from_millis(50));
    };
    for (name, was) in first.iter().filter(|(k, _)| k.contains("_total{")) {
        let now = second.get(name).copied().unwrap_or(f64::NAN);
        assert!(now >= *was, "{name} went back from {was} to {now}");
    }

    // A restart of the trigger, once data flows into it: counted once, nothing goes back.
    let before = wait_view(metrics, "data flowing into the trigger", |v| {
        link(v, RATIO).elements > 0 && process(v, "trigger").status == ProcessStatus::Running
    });
    let said = run.command(&["restart", APP, "trigger"]);
    let said_out = text(&said.stdout);
    let pid: u32 = said_out
        .split_once("is running again (pid ")
        .and_then(|(_, r)| r.split(')').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("iotstream restart: {said:?}"));
    assert!(said.status.success(), "iotstream restart: {said:?}");
    let after = wait_view_after(
        metrics,
        Some(&before),
        "the restarted trigger counting on",
        |v| {
            let t = process(v, "trigger");
            t.restarts == 1
                && t.pid == pid
                && t.status == ProcessStatus::Running
                && link(v, RATIO).elements > link(&before, RATIO).elements
        },
    );
    assert_counters_grow(&before, &after);
    for p in PROCESSES.iter().filter(|p| **p != "trigger") {
        assert_eq!(process(&after, p).restarts, 0, "{p} was not restarted");
    }
    let third = scrape(metrics, None);
    let restarts = |p: &str| {
        series(
            &third,
            "iotstream_process_restarts_total",
            &[("process", p)],
        )
    };
    assert_eq!(restarts("trigger"), 1.0);
    assert_eq!(restarts("detector"), 0.0);
    for (name, was) in second.iter().filter(|(k, _)| k.contains("_total{")) {
        let now = third.get(name).copied().unwrap_or(f64::NAN);
        assert!(
            now >= *was,
            "{name} went back from {was} to {now} over the restart"
        );
    }
    run.stop();
}

#[test]
fn an_address_off_loopback_needs_the_deployments_secret() {
    // Without a secret: refused before any process starts, naming the address and the rule.
    for flag in ["--metrics", "--ui"] {
        let mut run = Run::start(&[flag, "0.0.0.0:0"]);
        let status = run.wait_exit();
        let err = run.stderr();
        assert_eq!(status.code(), Some(2), "{flag} 0.0.0.0:0: {status}\n{err}");
        for needed in [
            flag,
            "'0.0.0.0:0'",
            "not a loopback address",
            "secret_file",
            "Authorization: Bearer",
        ] {
            assert!(err.contains(needed), "{needed:?} not said:\n{err}");
        }
        assert_eq!(
            err.matches("runtime error").count(),
            1,
            "said once, plainly:\n{err}"
        );
        assert!(
            !err.contains("started") && !err.contains("control socket"),
            "something started:\n{err}"
        );
    }

    // With the deployment's secret: served, to requests that bear it.
    let dir = tempfile::tempdir().expect("a folder");
    let secret = "k3ep-this-0ff-the-page-and-the-logs";
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, format!("{secret}\n")).expect("write the secret");
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))
        .expect("secret mode 600");
    let deploy = dir.path().join("quake.toml");
    let text = std::fs::read_to_string(deployment()).expect("the example's deployment");
    std::fs::write(
        &deploy,
        format!("{text}\n[network]\nsecret_file = \"secret\"\n"),
    )
    .expect("write the deployment");
    // Without a secret there is no token to print: the error says where it would come from.
    let none = Command::new(launcher_exe())
        .args(["view-token", "--deploy"])
        .arg(deployment())
        .output()
        .expect("run iotstream view-token");
    assert!(!none.status.success());
    let said = String::from_utf8_lossy(&none.stderr);
    assert!(
        said.contains("quake_detector.toml") && said.contains("[network] secret_file: not set"),
        "{said}"
    );
    // The token is derived from the secret: `iotstream view-token` prints it.
    let printed = Command::new(launcher_exe())
        .args(["view-token", "--deploy"])
        .arg(&deploy)
        .output()
        .expect("run iotstream view-token");
    assert!(printed.status.success(), "{printed:?}");
    let token = String::from_utf8(printed.stdout).expect("text");
    let token = token.trim();
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "a hex token: {token:?}"
    );
    assert!(!token.contains(secret));
    let run = Run::start_with(&deploy, &["--metrics", "0.0.0.0:0"]);
    let addr = run.served("metrics");
    run.wait_flowing();
    for (bearer, want) in [
        (None, 401),
        (Some("not-the-secret"), 401),
        // The secret itself is not the token: it never travels over HTTP.
        (Some(secret), 401),
        (Some(token), 200),
    ] {
        for path in ["/metrics", "/api/metrics", "/api/graph"] {
            let (status, body) = get(addr, path, bearer);
            assert_eq!(status, want, "{path} with token {bearer:?}: {body}");
        }
    }
    let scraped = scrape(addr, Some(token));
    series(&scraped, "iotstream_process_up", &[("process", "trigger")]);
    run.stop();
}
