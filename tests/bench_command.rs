//! `iotstream bench` end to end, through the built binary: the JSON it writes (its structure,
//! and that every mode and every baseline delivered every element it sent: counts, never
//! timings), its table, its plot, paced latency runs (`--rate`: a row per rate), a failing
//! cell reported as a row and an error exit naming it, and bad flag values refused naming the
//! flag.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

#[path = "support/nats.rs"]
mod nats;

fn iotstream() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_iotstream"));
    c.env_remove("IOTSTREAM_DRAIN_TIMEOUT_MS")
        .env_remove("IOTSTREAM_BENCH_CELL");
    c
}

/// A folder of the test's own, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "iotstream-bench-test-{name}-{}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch folder");
        Scratch(dir)
    }
    fn path(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn text(out: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).expect("the JSON file was written");
    serde_json::from_str(&text).expect("the JSON file parses")
}

fn u(run: &Value, key: &str) -> u64 {
    run[key]
        .as_u64()
        .unwrap_or_else(|| panic!("'{key}' is not a count in {run}"))
}

#[test]
fn every_mode_and_baseline_delivers_every_element_and_the_json_has_every_key() {
    let dir = Scratch::new("all");
    let (json, svg) = (dir.path("bench.json"), dir.path("bench.svg"));
    let out = iotstream()
        .args([
            "bench",
            "--modes",
            "thread,threads,pool,processes,tcp,spin,scaling",
            "--sizes",
            "8,1024",
            "--duration",
            "0.1",
            "--agents",
            "1,10",
            "--readers",
            "1,3",
            "--procs",
            "1,2",
            "--json",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run iotstream bench");
    assert!(out.status.success(), "{}", text(&out));
    let report = read_json(&json);

    let runs = report["runs"].as_array().expect("a runs array");
    assert_eq!(runs.len(), 6 * 2 * 2, "one run per mode × size × pattern");
    let mut seen = Vec::new();
    for run in runs {
        for key in [
            "elements_per_s",
            "bytes_per_s",
            "baseline_elements_per_s",
            "ratio",
            "cpu_s",
        ] {
            assert!(run[key].is_number(), "'{key}' in {run}");
        }
        for key in ["p50_ns", "p99_ns", "p999_ns", "element_bytes"] {
            u(run, key);
        }
        assert_eq!(u(run, "rate_per_s"), 0, "back to back by default: {run}");
        assert!(run["error"].is_null(), "{run}");
        let (mode, size, pattern) = (
            run["mode"].as_str().expect("a mode"),
            u(run, "element_bytes"),
            run["pattern"].as_str().expect("a pattern"),
        );
        seen.push(format!("{mode} {size} {pattern}"));
        // Counts, never timings: everything sent arrived, in the graph and in the baseline.
        let sent = u(run, "sent");
        assert!(sent > 0, "{run}");
        assert_eq!(u(run, "delivered"), sent, "{run}");
        let base = u(run, "baseline_sent");
        assert!(base > 0, "{run}");
        assert_eq!(u(run, "baseline_delivered"), base, "{run}");
        let pings = u(run, "latency_sent");
        assert!(pings > 0, "{run}");
        assert_eq!(u(run, "latency_delivered"), pings, "{run}");
        let baseline = run["baseline"].as_str().expect("a baseline");
        let want = match mode {
            "thread" | "threads" | "pool" => "crossbeam",
            "processes" | "spin" => "shm-ring",
            "tcp" => "raw-tcp",
            other => panic!("unexpected mode {other}"),
        };
        assert_eq!(baseline, want);
    }
    seen.sort();
    let mut want = Vec::new();
    for mode in ["thread", "threads", "pool", "processes", "tcp", "spin"] {
        for size in [8, 1024] {
            for pattern in ["batch", "single"] {
                want.push(format!("{mode} {size} {pattern}"));
            }
        }
    }
    want.sort();
    assert_eq!(seen, want);

    let points = report["scaling"].as_array().expect("a scaling array");
    let shapes: Vec<(String, u64)> = points
        .iter()
        .map(|p| (p["shape"].as_str().unwrap_or("?").to_string(), u(p, "n")))
        .collect();
    assert_eq!(
        shapes,
        [
            ("chain".into(), 1),
            ("chain".into(), 10),
            ("fan-out".into(), 1),
            ("fan-out".into(), 3),
            ("processes".into(), 1),
            ("processes".into(), 2)
        ]
    );
    for p in points {
        assert!(p["error"].is_null(), "{p}");
        assert!(u(p, "expected") > 0, "{p}");
        assert_eq!(u(p, "delivered"), u(p, "expected"), "{p}");
        assert!(
            p["total_s"].is_number() && p["per_unit_us"].is_number(),
            "{p}"
        );
    }
    // The fan-out's readers each got every element.
    assert_eq!(u(&points[3], "expected"), 3 * u(&points[3], "sent"));
    // A second point has its growth over the first.
    assert!(points[1]["time_ratio"].is_number(), "{}", points[1]);

    let stdout = String::from_utf8_lossy(&out.stdout);
    for word in [
        "elements/s",
        "p999",
        "×base",
        "shm-ring",
        "fan-out",
        "delivered",
    ] {
        assert!(stdout.contains(word), "'{word}' in the table:\n{stdout}");
    }
    // What splitting the graph costs, for each cross-process mode and every cell.
    for mode in ["processes", "spin", "tcp"] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{mode} over pool")))
            .unwrap_or_else(|| panic!("no '{mode} over pool' line:\n{stdout}"));
        for cell in ["8 B batch", "8 B single", "1 KiB batch", "1 KiB single"] {
            assert!(line.contains(cell), "'{cell}' in '{line}'");
        }
    }
    let svg = std::fs::read_to_string(&svg).expect("the plot was drawn");
    assert!(svg.contains("<svg") && svg.contains("Throughput"), "{svg}");
}

#[test]
fn each_rate_is_a_row_of_its_own_sharing_the_throughput_run() {
    let dir = Scratch::new("rate");
    let (json, svg) = (dir.path("bench.json"), dir.path("bench.svg"));
    let out = iotstream()
        .args([
            "bench",
            "--modes",
            "threads,processes",
            "--sizes",
            "8",
            "--rate",
            "0,1000",
            "--duration",
            "0.1",
            "--json",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .output()
        .expect("run iotstream bench");
    assert!(out.status.success(), "{}", text(&out));
    let report = read_json(&json);
    assert_eq!(report["settings"]["rates"], serde_json::json!([0, 1000]));
    let runs = report["runs"].as_array().expect("a runs array");
    assert_eq!(runs.len(), 2 * 2 * 2, "one run per mode × pattern × rate");
    let mut seen = Vec::new();
    for pair in runs.chunks(2) {
        let (fast, paced) = (&pair[0], &pair[1]);
        assert_eq!((u(fast, "rate_per_s"), u(paced, "rate_per_s")), (0, 1000));
        for key in ["mode", "pattern", "element_bytes"] {
            assert_eq!(fast[key], paced[key], "{key}");
        }
        seen.push(format!("{} {}", fast["mode"], fast["pattern"]));
        // The rows of one cell share its throughput run: the same counts.
        for key in ["sent", "delivered", "baseline_sent", "baseline_delivered"] {
            assert_eq!(u(fast, key), u(paced, key), "{key}");
        }
        for run in pair {
            assert!(run["error"].is_null(), "{run}");
            let pings = u(run, "latency_sent");
            assert!(pings > 0, "{run}");
            assert_eq!(u(run, "latency_delivered"), pings, "{run}");
            assert!(u(run, "latency_samples") > 0, "{run}");
            assert_eq!(u(run, "delivered"), u(run, "sent"), "{run}");
        }
    }
    assert_eq!(
        seen,
        [
            r#""threads" "batch""#,
            r#""threads" "single""#,
            r#""processes" "batch""#,
            r#""processes" "single""#
        ]
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    for word in ["batch @1000/s", "single @1000/s"] {
        assert!(stdout.contains(word), "'{word}' in the table:\n{stdout}");
    }
    let svg = std::fs::read_to_string(&svg).expect("the plot was drawn");
    assert!(svg.contains("@1000/s"), "the paced lines in the legend");
}

#[test]
fn a_failing_cell_is_a_row_with_its_error_and_an_error_exit_naming_it() {
    // A malformed drain timeout fails every multi-process start (naming the variable), and
    // nothing else: the processes cells fail, the threads cells run.
    let dir = Scratch::new("fail");
    let json = dir.path("bench.json");
    let out = iotstream()
        .env("IOTSTREAM_DRAIN_TIMEOUT_MS", "soon")
        .args([
            "bench",
            "--modes",
            "threads,processes",
            "--sizes",
            "8",
            "--patterns",
            "single",
            "--duration",
            "0.05",
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run iotstream bench");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("processes 8 B single") && stderr.contains("IOTSTREAM_DRAIN_TIMEOUT_MS"),
        "{}",
        text(&out)
    );
    assert!(!stderr.contains("panicked"), "{}", text(&out));
    assert!(!stderr.contains("threads 8 B"), "{}", text(&out));
    let report = read_json(&json);
    let runs = report["runs"].as_array().expect("a runs array");
    assert_eq!(runs.len(), 2);
    assert!(runs[0]["error"].is_null(), "{}", runs[0]);
    assert_eq!(u(&runs[0], "delivered"), u(&runs[0], "sent"));
    let error = runs[1]["error"]
        .as_str()
        .expect("the processes row's error");
    assert!(error.contains("IOTSTREAM_DRAIN_TIMEOUT_MS"), "{error}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("FAILED"));
}

/// `--nats URL`: the broker mode (every connection through a JetStream server the test
/// starts) and its raw async-nats baseline, both delivering every element; without a server
/// the broker mode is refused naming the flag.
#[test]
fn the_broker_mode_and_its_raw_nats_baseline_deliver_every_element() {
    let server = nats::NatsServer::start();
    let dir = Scratch::new("broker");
    let json = dir.path("bench.json");
    let out = iotstream()
        .args([
            "bench",
            "--modes",
            "broker,tcp",
            "--sizes",
            "64",
            "--duration",
            "0.2",
            "--nats",
            &server.url(),
            "--json",
        ])
        .arg(&json)
        .output()
        .expect("run iotstream bench");
    assert!(out.status.success(), "{}", text(&out));
    let report = read_json(&json);
    let runs = report["runs"].as_array().expect("a runs array");
    assert_eq!(runs.len(), 2 * 2, "broker and tcp × two patterns");
    for run in runs {
        assert!(run["error"].is_null(), "{run}");
        let sent = u(run, "sent");
        assert!(sent > 0, "{run}");
        assert_eq!(u(run, "delivered"), sent, "{run}");
        let base = u(run, "baseline_sent");
        assert!(base > 0, "{run}");
        assert_eq!(u(run, "baseline_delivered"), base, "{run}");
        let pings = u(run, "latency_sent");
        assert!(pings > 0, "{run}");
        assert_eq!(u(run, "latency_delivered"), pings, "{run}");
        assert!(run["ratio"].is_number(), "{run}");
        let want = match run["mode"].as_str() {
            Some("broker") => "raw-nats",
            Some("tcp") => "raw-tcp",
            other => panic!("unexpected mode {other:?}"),
        };
        assert_eq!(run["baseline"].as_str(), Some(want), "{run}");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("raw-nats"),
        "the table names the baseline:\n{stdout}"
    );
    // Every cell's streams are deleted once it ended (the server keeps them otherwise).
    assert_eq!(
        server.stream_names(),
        Vec::<String>::new(),
        "{}",
        text(&out)
    );

    let refused = iotstream()
        .args(["bench", "--modes", "broker"])
        .output()
        .expect("run iotstream bench");
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("iotstream bench: error:") && said.contains("--nats"),
        "{}",
        text(&refused)
    );
}

#[test]
fn bad_flag_values_are_refused_naming_the_flag() {
    for (flag, value, says) in [
        ("--sizes", "8,100", "100 bytes"),
        ("--modes", "thread,fast", "'fast'"),
        ("--patterns", "burst", "'burst'"),
        ("--duration", "0", "10ms"),
        ("--rate", "0,fast", "'fast'"),
        ("--agents", "10,1", "increasing"),
        ("--procs", "100", "from 1 to 64"),
        // A negative number reaches the flag's own check.
        ("--duration", "-1", "10ms"),
        ("--rate", "-5", "'-5'"),
        // Files and servers that cannot be used are found before anything runs.
        ("--json", "/nonexistent-folder/bench.json", "does not exist"),
        ("--json", "/", "is a folder"),
        ("--plot", "bench.png", ".svg"),
        ("--nats", "127.0.0.1:4222", "nats://HOST:PORT"),
        ("--nats", "nats://127.0.0.1:1", "cannot reach"),
    ] {
        let out = iotstream()
            .args(["bench", flag, value])
            .output()
            .expect("run iotstream bench");
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(flag) && stderr.contains(says),
            "{flag} {value}: {}",
            text(&out)
        );
        assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out));
    }
    // Nothing to draw: the scaling mode alone has no throughput or latency run.
    let out = iotstream()
        .args(["bench", "--modes", "scaling", "--plot", "scaling.svg"])
        .output()
        .expect("run iotstream bench");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--plot"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty(), "nothing ran: {}", text(&out));
}

/// `/dev/shm` entries whose names start with `prefix`.
fn shm_entries(prefix: &str) -> Vec<String> {
    std::fs::read_dir("/dev/shm")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|stat| {
                // The parent's pid follows the name in parentheses and the state.
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(pid)
            })
        })
        .collect()
}

/// Ctrl-C (SIGINT to the bench's process alone, as a terminal's reaches it: the cells run in
/// process groups of their own) while a two-process cell runs: that cell is ended and its
/// rings removed, the table shows the rows that ran whole, the JSON is not written over with
/// a part of the run, and the command exits 130.
#[test]
fn a_signal_stops_the_bench_keeping_the_rows_that_ran_and_leaving_no_ring() {
    let dir = Scratch::new("signal");
    let json = dir.path("bench.json");
    let mut bench = iotstream()
        .args([
            "bench",
            "--modes",
            "thread,processes",
            "--sizes",
            "8",
            "--patterns",
            "batch",
            "--duration",
            "2",
            "--json",
        ])
        .arg(&json)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start iotstream bench");
    let bench_pid = bench.id();
    // The `processes` throughput cell, once its rings exist.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let cell = loop {
        let found = children_of(bench_pid)
            .into_iter()
            .find(|c| !shm_entries(&format!("iotstream.bench_processes_8.{c}-")).is_empty());
        if let Some(c) = found {
            break c;
        }
        if std::time::Instant::now() > deadline || bench.try_wait().ok().flatten().is_some() {
            let _ = bench.kill();
            let out = bench.wait_with_output().expect("the bench's output");
            panic!("the processes cell never ran: {}", text(&out));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    };
    let sent = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(bench_pid as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    assert!(sent.is_ok(), "{sent:?}");
    // Bounded: a bench that does not end is killed, and the test fails.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while bench.try_wait().expect("wait for the bench").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = bench.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let out = bench.wait_with_output().expect("the bench's output");
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("interrupted by SIGINT"), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("thread ")),
        "the row that ran whole: {}",
        text(&out)
    );
    assert!(
        !stdout.lines().any(|l| l.starts_with("processes ")),
        "no row for the cell cut short: {}",
        text(&out)
    );
    assert!(!json.exists(), "no JSON of a part of the run");
    assert_eq!(
        shm_entries(&format!("iotstream.bench_processes_8.{cell}-")),
        Vec::<String>::new(),
        "the interrupted cell's rings are removed"
    );
    assert!(
        nix::sys::signal::killpg(nix::unistd::Pid::from_raw(cell as i32), None).is_err(),
        "no process of the interrupted cell is left"
    );
}
