//! The log monitor example (`examples/log_monitor.rs`): severities, windows and alerts, with the
//! deterministic harness (between pushes) and a threaded run.

#[path = "../examples/log_monitor.rs"]
mod log_monitor;

use iotstream::{Graph, Harness};
use log_monitor::{application, build, severity, Burst, Config, Severity};

#[test]
fn severity_is_the_first_level_word() {
    assert_eq!(severity("2026-12-02 ERROR db timeout"), Severity::Error);
    assert_eq!(severity("[error] disk full"), Severity::Error);
    assert_eq!(
        severity("level=fatal msg=\"out of memory\""),
        Severity::Error
    );
    assert_eq!(
        severity("WARNING: fan slow, no ERROR yet"),
        Severity::Warning
    );
    assert_eq!(severity("INFO retrying after ERROR"), Severity::Info);
    assert_eq!(severity("request served in 3 ms"), Severity::Info);
    assert_eq!(severity("errors=0 terror"), Severity::Info);
}

/// `n` lines of `level`.
fn lines(level: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{level} event {i}")).collect()
}

#[test]
fn a_burst_alerts_once_and_rearms_after_quiet() {
    let mut g = Graph::new("log_monitor");
    let log = g.input::<String>("log");
    let bursts = build(&mut g, &log, &Config::default());
    let out = g.collect("report", &bursts);
    let mut h = Harness::new(g).unwrap();

    h.push(&log, lines("INFO", 300)).unwrap();
    h.run().unwrap();
    assert!(out.is_empty());

    // 60 errors after 300 quiet lines: windows are lines 1-100, 51-150, …; the first to reach
    // 20 % errors is 251-350 (50 of its lines are errors).
    h.push(&log, lines("ERROR", 60)).unwrap();
    h.run().unwrap();
    assert_eq!(
        out.values(),
        [Burst {
            first_line: 251,
            last_line: 350,
            error_share: 0.5
        }]
    );

    // Still bursting: no second alert. Then quiet long enough for a window below 5 %, then a
    // second burst: a second alert.
    h.push(&log, lines("WARN", 240)).unwrap();
    h.push(&log, lines("ERROR", 30)).unwrap();
    h.push(&log, lines("INFO", 70)).unwrap();
    h.finish().unwrap();
    let all = out.values();
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!((all[1].first_line, all[1].last_line), (551, 650));
    assert!((all[1].error_share - 0.3).abs() < 1e-9, "{all:?}");
}

#[test]
fn threaded_run_gives_the_harness_result() {
    let input: Vec<String> = [
        lines("INFO", 500),
        lines("ERROR", 100),
        lines("INFO", 500),
        lines("CRITICAL", 40),
        lines("INFO", 100),
    ]
    .concat();
    let run = |threaded: bool| -> Vec<Burst> {
        let mut g = Graph::new("log_monitor");
        let log = g.source_iter("log", input.clone());
        let bursts = build(&mut g, &log, &Config::default());
        let out = g.collect("report", &bursts);
        if threaded {
            g.run().unwrap();
        } else {
            Harness::new(g).unwrap().finish().unwrap();
        }
        out.values()
    };
    let threaded = run(true);
    assert_eq!(threaded.len(), 2, "{threaded:?}");
    assert_eq!(threaded, run(false));
}

#[test]
fn the_example_deployment_fits_the_application() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/log_monitor.toml");
    let deployment = iotstream::deploy::Deployment::load(&path).unwrap();
    let info = application(&Config::default()).info();
    let plan = deployment.plan(&info).unwrap();
    let process = |agent: &str| plan.agent_process[info.agent(agent).unwrap()].as_str();
    assert_eq!(process("log"), "reader");
    assert_eq!(process("severity"), "reader");
    assert_eq!(process("report"), "main");
}
