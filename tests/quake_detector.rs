//! The quake detector of `examples/quake_detector.rs`: every injected quake is detected, within
//! half a second of its onset, and nothing else is; with the threaded runtime, with the
//! deterministic harness, over several seeds, and whatever the batch boundaries.

#[path = "../examples/quake_detector.rs"]
mod quake;

use iotstream::{Graph, Harness};
use quake::{Config, Detection, Ratio, RunningMean, Seismometer, Trigger};

/// How far a detection may be from the quake's onset.
const TOLERANCE_S: f64 = 0.5;

/// Checks that `found` holds exactly one detection per quake of `cfg`, each within the
/// tolerance of its onset (detections and quakes are both in time order).
fn assert_matches(cfg: &Config, found: &[Detection]) {
    let onsets: Vec<f64> = cfg.quakes.iter().map(|q| q.start_s).collect();
    let times: Vec<f64> = found.iter().map(|d| d.time_s).collect();
    assert_eq!(
        found.len(),
        onsets.len(),
        "seed {}: quakes at {onsets:?} s, detections at {times:?} s",
        cfg.seed
    );
    for (q, d) in cfg.quakes.iter().zip(found) {
        let delay = d.time_s - q.start_s;
        assert!(
            (-TOLERANCE_S..=TOLERANCE_S).contains(&delay),
            "seed {}: quake at {} s detected at {} s; all quakes {onsets:?}, all detections {times:?}",
            cfg.seed,
            q.start_s,
            d.time_s
        );
        assert!(d.ratio > cfg.trigger_on);
        assert_eq!(d.time_s, cfg.time_of(d.sample));
    }
}

/// Runs the detector on threads; returns its detections.
fn run_threaded(cfg: &Config) -> Vec<Detection> {
    let mut g = Graph::new("quake_detector");
    let h = quake::build(&mut g, cfg);
    let found = g.collect("detections", &h.detections);
    let metrics = g.run().expect("the detector runs to the end");
    assert_eq!(
        metrics.stream("seismometer.out").map(|s| s.elements),
        Some(cfg.samples()),
        "every sample was emitted"
    );
    assert_eq!(
        metrics.agent("sta_lta").map(|a| a.consumed),
        Some(cfg.samples()),
        "every sample was processed"
    );
    found.values()
}

/// Runs the detector under the deterministic harness; returns its detections.
fn run_harness(cfg: &Config) -> Vec<Detection> {
    let mut g = Graph::new("quake_detector");
    let h = quake::build(&mut g, cfg);
    let found = g.collect("detections", &h.detections);
    let mut harness = Harness::new(g).expect("the graph is well formed");
    harness.run().expect("runs");
    harness.finish().expect("ends cleanly");
    found.values()
}

#[test]
fn default_recording_threaded() {
    let cfg = Config::default();
    assert_eq!(cfg.samples(), 150_000);
    assert_matches(&cfg, &run_threaded(&cfg));
}

#[test]
fn default_recording_harness() {
    let cfg = Config::default();
    assert_matches(&cfg, &run_harness(&cfg));
}

#[test]
fn several_seeds_threaded_and_harness_agree() {
    for seed in [1, 2, 3, 7, 11, 2024] {
        let cfg = Config::random(seed, 600.0);
        assert!(cfg.quakes.len() >= 3, "seed {seed}: {:?}", cfg.quakes);
        let threaded = run_threaded(&cfg);
        assert_matches(&cfg, &threaded);
        assert_eq!(
            run_harness(&cfg),
            threaded,
            "seed {seed}: the executors disagree"
        );
    }
}

#[test]
fn quiet_recording_has_no_detection() {
    let cfg = Config {
        quakes: Vec::new(),
        ..Config::random(5, 600.0)
    };
    assert_eq!(run_harness(&cfg), []);
}

/// Feeds the same recording in batches of irregular sizes through an input stream: the
/// detections must be exactly those of a run from the source (results do not depend on batch
/// boundaries).
#[test]
fn detections_do_not_depend_on_batch_boundaries() {
    let cfg = Config::random(3, 300.0);
    let recording = Seismometer::recording(&cfg);
    let mut g = Graph::new("quake_batches");
    let signal = g.input("samples");
    let h = quake::build_detector(&mut g, &signal, &cfg);
    let found = g.collect("detections", &h.detections);
    let ratios = g.collect("ratios", &h.ratio);
    let mut harness = Harness::new(g).expect("well formed");
    let sizes = [1, 7, 1000, 3, 250, 4096, 2, 999];
    let mut rest = &recording[..];
    for size in sizes.iter().cycle() {
        if rest.is_empty() {
            break;
        }
        let (batch, tail) = rest.split_at((*size).min(rest.len()));
        harness
            .push(&signal, batch.iter().copied())
            .expect("pushed");
        harness.run().expect("runs");
        rest = tail;
    }
    harness.finish().expect("ends cleanly");
    assert_eq!(found.values(), run_harness(&cfg));
    assert_matches(&cfg, &found.values());
    assert_eq!(
        ratios.len() as u64,
        cfg.samples() - (cfg.lta_s * cfg.sample_rate) as u64 + 1,
        "one ratio per sample once the long window is full"
    );
}

/// The incremental STA/LTA equals the ratio of window means computed from scratch.
#[test]
fn sta_lta_matches_a_direct_computation() {
    let cfg = Config::random(11, 60.0);
    let recording = Seismometer::recording(&cfg);
    let mut g = Graph::new("sta_lta_check");
    let signal = g.input("samples");
    let h = quake::build_detector(&mut g, &signal, &cfg);
    let ratios = g.collect("ratios", &h.ratio);
    let mut harness = Harness::new(g).expect("well formed");
    harness
        .push(&signal, recording.iter().copied())
        .expect("pushed");
    harness.finish().expect("ends cleanly");

    let (sta, lta) = (
        (cfg.sta_s * cfg.sample_rate) as usize,
        (cfg.lta_s * cfg.sample_rate) as usize,
    );
    let energy: Vec<f64> = recording.iter().map(|(_, x)| x * x).collect();
    let mean =
        |end: usize, len: usize| energy[end + 1 - len..=end].iter().sum::<f64>() / len as f64;
    let ratios: Vec<Ratio> = ratios.values();
    assert_eq!(ratios.len(), recording.len() - lta + 1);
    for &(i, r) in ratios.iter().step_by(97) {
        let i = i as usize;
        let want = mean(i, sta) / mean(i, lta);
        assert!(
            (r - want).abs() <= 1e-9 * want.max(1.0),
            "sample {i}: incremental {r}, direct {want}"
        );
    }
}

#[test]
fn running_mean_keeps_the_last_values() {
    let mut m = RunningMean::new(3);
    assert_eq!(m.mean(), 0.0);
    m.push(1.0);
    m.push(2.0);
    assert!(!m.is_full());
    assert_eq!(m.mean(), 1.5);
    m.push(3.0);
    assert!(m.is_full());
    assert_eq!(m.mean(), 2.0);
    m.push(10.0);
    assert_eq!(m.mean(), 5.0);
}

#[test]
fn trigger_fires_once_per_event_and_rearms_below_off() {
    let cfg = Config::default();
    let mut t = Trigger::new(&cfg);
    let ratios = [1.0, 4.5, 6.0, 3.0, 4.5, 1.4, 1.2, 4.2, 1.0];
    let fired: Vec<u64> = ratios
        .iter()
        .enumerate()
        .filter_map(|(i, &r)| t.update((i as u64, r)))
        .map(|d| d.sample)
        .collect();
    // Fires at 1; 4.5 at sample 4 is the same event (not re-armed); re-arms at 5; fires at 7.
    assert_eq!(fired, [1, 7]);
}

#[test]
fn random_configs_are_reproducible_and_well_separated() {
    for seed in 0..50 {
        let cfg = Config::random(seed, 600.0);
        assert_eq!(cfg.quakes, Config::random(seed, 600.0).quakes);
        for pair in cfg.quakes.windows(2) {
            assert!(pair[1].start_s - pair[0].start_s >= 45.0, "seed {seed}");
        }
        for q in &cfg.quakes {
            assert!(
                q.start_s >= 20.0 && q.start_s <= cfg.duration_s - 20.0,
                "seed {seed}"
            );
        }
    }
}

#[test]
fn the_example_deployment_fits_the_application() {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/quake_detector.toml");
    let deployment = iotstream::deploy::Deployment::load(&path).unwrap();
    let info = quake::application(&Config::default(), false).info();
    let plan = deployment.plan(&info).unwrap();
    let process = |agent: &str| plan.agent_process[info.agent(agent).unwrap()].as_str();
    assert_eq!(
        ["seismometer", "sta_lta", "trigger", "alerts"].map(process),
        ["main", "detector", "trigger", "alerts"]
    );
}

#[test]
fn the_two_host_deployment_puts_the_sensor_on_the_edge_and_the_rest_on_the_server() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/quake_detector_two_hosts.toml");
    let deployment = iotstream::deploy::Deployment::load(&path).unwrap();
    let mut g = quake::application(&Config::default(), false);
    let plan = deployment.plan(&g.info()).unwrap();
    assert_eq!(plan.process_host["main"], "edge");
    assert_eq!(plan.process_host["detector"], "server");
    assert_eq!(plan.process_host["alerts"], "server");
    g.apply_plan(&plan);
    let info = g.info();
    // Only the seismometer's stream crosses hosts.
    let crossing: Vec<&str> = info
        .edges
        .iter()
        .filter(|e| e.transport == "tcp")
        .map(|e| e.stream.as_str())
        .collect();
    assert_eq!(crossing, ["seismometer.out"]);
    assert!(deployment.network.secret_file.is_some());
}
