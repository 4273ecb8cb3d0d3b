//! Earthquake detection with the classic STA/LTA trigger.
//!
//! A synthetic accelerometer samples at 250 Hz: Gaussian noise, plus a few quakes injected at
//! known times. The application is four agents:
//!
//! ```text
//! seismometer ──▶ sta_lta ──▶ trigger ──▶ alerts
//!  (Source)      (Agent)     (filter_map)  (for_each)
//! ```
//!
//! - `sta_lta` computes, for every sample, the ratio of the mean energy (x²) over a short window
//!   (STA, 0.5 s) to the mean energy over a long window (LTA, 10 s), in O(1) per sample with
//!   running sums over two ring buffers;
//! - `trigger` emits a [`Detection`] when the ratio rises above 4, and re-arms once it falls
//!   below 1.5;
//! - `alerts` prints each detection; `main` prints a one-line summary at the end.
//!
//! ```text
//! cargo run --release --example quake_detector                  # 10 minutes of data, at full speed
//! cargo run --release --example quake_detector -- --realtime    # paced at 250 samples/s
//! cargo run --release --example quake_detector -- --seed 7 --minutes 30
//! ```
//!
//! `tests/quake_detector.rs` compiles this file as a module (`#[path]`) and checks that every
//! injected quake, and nothing else, is detected, with the threaded runtime and the harness.

// Compiled as a module of tests/quake_detector.rs too, which uses only part of it (not `main`,
// not the argument parsing).
#![cfg_attr(test, allow(dead_code))]

use std::f64::consts::PI;
use std::time::{Duration, Instant};

use iotstream::{Agent, AgentError, Graph, Input, Inputs, Outputs, Source, Stream};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// One accelerometer reading: (sample index, acceleration in units of the noise level).
pub type Sample = (u64, f64);

/// One STA/LTA value: (sample index, STA / LTA).
pub type Ratio = (u64, f64);

/// A quake injected into the synthetic signal.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Quake {
    /// Onset, in seconds from the start of the recording.
    pub start_s: f64,
    /// Peak amplitude, in units of the noise's standard deviation.
    pub amplitude: f64,
    /// Time constant of the exponential decay of the shaking, in seconds.
    pub decay_s: f64,
    /// Frequency of the shaking, in Hz.
    pub freq_hz: f64,
    /// Phase of the shaking at onset, in radians.
    pub phase: f64,
}

impl Quake {
    /// The quake's contribution to the acceleration `t` seconds after the recording started.
    pub fn at(&self, t: f64) -> f64 {
        let tau = t - self.start_s;
        if tau < 0.0 {
            return 0.0;
        }
        // 50 ms rise, then exponential decay.
        let envelope = (1.0 - (-tau / 0.05).exp()) * (-tau / self.decay_s).exp();
        self.amplitude * envelope * (2.0 * PI * self.freq_hz * tau + self.phase).sin()
    }
}

/// Everything the detector and its synthetic signal depend on.
#[derive(Clone, Debug)]
pub struct Config {
    /// Seed of the noise generator.
    pub seed: u64,
    /// Samples per second.
    pub sample_rate: f64,
    /// Length of the recording, in seconds.
    pub duration_s: f64,
    /// The injected quakes, in order of onset.
    pub quakes: Vec<Quake>,
    /// Short-term window, in seconds.
    pub sta_s: f64,
    /// Long-term window, in seconds.
    pub lta_s: f64,
    /// STA/LTA ratio above which a detection starts.
    pub trigger_on: f64,
    /// STA/LTA ratio below which the trigger re-arms.
    pub trigger_off: f64,
    /// Pace the signal at `sample_rate` in wall-clock time instead of generating it at once.
    pub realtime: bool,
}

impl Default for Config {
    /// Ten minutes at 250 Hz, seed 42, four quakes at fixed times.
    fn default() -> Self {
        let quake = |start_s, amplitude, decay_s, freq_hz| Quake {
            start_s,
            amplitude,
            decay_s,
            freq_hz,
            phase: 0.0,
        };
        Config {
            seed: 42,
            sample_rate: 250.0,
            duration_s: 600.0,
            quakes: vec![
                quake(75.0, 12.0, 3.0, 4.0),
                quake(212.4, 6.0, 2.0, 7.5),
                quake(333.3, 20.0, 4.0, 2.5),
                quake(488.8, 8.0, 1.5, 5.0),
            ],
            sta_s: 0.5,
            lta_s: 10.0,
            trigger_on: 4.0,
            trigger_off: 1.5,
            realtime: false,
        }
    }
}

impl Config {
    /// A recording of `duration_s` seconds with quakes whose number (3 to 6 per ten minutes),
    /// times, sizes and shapes are drawn from `seed`. Quakes start at least 45 s apart and at
    /// least 20 s from either end of the recording.
    pub fn random(seed: u64, duration_s: f64) -> Config {
        let mut cfg = Config {
            seed,
            duration_s,
            quakes: Vec::new(),
            ..Config::default()
        };
        // A generator of its own, so drawing the quakes does not shift the noise sequence.
        let mut rng = StdRng::seed_from_u64(seed ^ 0x5eed_0f0a_4e00);
        let per_ten_minutes: f64 = rng.random_range(3.0..=6.0);
        let wanted = (per_ten_minutes * duration_s / 600.0).round() as usize;
        let (first, last) = (20.0, duration_s - 20.0);
        // Bounded: a recording too short for `wanted` well-separated quakes gets fewer.
        for _ in 0..10_000 {
            if cfg.quakes.len() >= wanted || first >= last {
                break;
            }
            let start_s: f64 = rng.random_range(first..last);
            if cfg
                .quakes
                .iter()
                .any(|q| (q.start_s - start_s).abs() < 45.0)
            {
                continue;
            }
            cfg.quakes.push(Quake {
                start_s: (start_s * 1000.0).round() / 1000.0,
                amplitude: rng.random_range(6.0..20.0),
                decay_s: rng.random_range(1.0..4.0),
                freq_hz: rng.random_range(2.0..10.0),
                phase: rng.random_range(0.0..2.0 * PI),
            });
        }
        cfg.quakes.sort_by(|a, b| a.start_s.total_cmp(&b.start_s));
        cfg
    }

    /// Samples in the whole recording.
    pub fn samples(&self) -> u64 {
        (self.duration_s * self.sample_rate).round() as u64
    }

    /// The time of sample `index`, in seconds.
    pub fn time_of(&self, index: u64) -> f64 {
        index as f64 / self.sample_rate
    }

    fn window(&self, seconds: f64) -> usize {
        ((seconds * self.sample_rate).round() as usize).max(1)
    }
}

// ---------------------------------------------------------------------------------------------
// The synthetic accelerometer

/// The synthetic accelerometer: seeded Gaussian noise plus the configured quakes.
pub struct Seismometer {
    cfg: Config,
    rng: StdRng,
    next: u64,
    total: u64,
    /// Wall-clock time of sample 0, when paced.
    started: Option<Instant>,
}

impl Seismometer {
    /// A seismometer that produces the recording `cfg` describes.
    pub fn new(cfg: &Config) -> Self {
        Seismometer {
            cfg: cfg.clone(),
            rng: StdRng::seed_from_u64(cfg.seed),
            next: 0,
            total: cfg.samples(),
            started: None,
        }
    }

    /// One standard normal deviate (Box–Muller).
    fn gaussian(&mut self) -> f64 {
        let u1: f64 = 1.0 - self.rng.random::<f64>(); // (0, 1]: ln is finite
        let u2: f64 = self.rng.random();
        (-2.0 * u1.ln()).sqrt() * (2.0 * PI * u2).cos()
    }

    /// The next sample.
    fn sample(&mut self) -> Sample {
        let i = self.next;
        self.next += 1;
        let t = self.cfg.time_of(i);
        let shaking: f64 = self.cfg.quakes.iter().map(|q| q.at(t)).sum();
        (i, self.gaussian() + shaking)
    }

    /// How many samples may be emitted now: all that are left, or, when paced, those whose
    /// time has come (waiting until at least one has).
    fn due(&mut self, max: usize) -> usize {
        let left = (self.total - self.next).min(max as u64) as usize;
        if !self.cfg.realtime || left == 0 {
            return left;
        }
        let started = *self.started.get_or_insert_with(Instant::now);
        let next_at = started + Duration::from_secs_f64(self.cfg.time_of(self.next));
        if let Some(wait) = next_at.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        // Samples 0..=floor(elapsed × rate) are due by now.
        let due_now = (started.elapsed().as_secs_f64() * self.cfg.sample_rate) as u64 + 1;
        (due_now.saturating_sub(self.next) as usize).clamp(1, left)
    }

    /// The whole recording at once (for tests that feed it in batches of their choosing).
    pub fn recording(cfg: &Config) -> Vec<Sample> {
        let mut s = Seismometer::new(cfg);
        (0..s.total).map(|_| s.sample()).collect()
    }
}

impl Source<Sample> for Seismometer {
    fn fill(&mut self, out: &mut Vec<Sample>, max: usize) -> Result<bool, AgentError> {
        for _ in 0..self.due(max) {
            let s = self.sample();
            out.push(s);
        }
        Ok(self.next < self.total)
    }
}

// ---------------------------------------------------------------------------------------------
// STA/LTA

/// The mean of the last `len` values pushed, in O(1) per value.
pub struct RunningMean {
    ring: Vec<f64>,
    pos: usize,
    filled: bool,
    sum: f64,
}

impl RunningMean {
    /// A mean over the last `len` values (`len` ≥ 1).
    pub fn new(len: usize) -> Self {
        RunningMean {
            ring: vec![0.0; len.max(1)],
            pos: 0,
            filled: false,
            sum: 0.0,
        }
    }

    /// Adds `x`, evicting the oldest value once the window is full.
    pub fn push(&mut self, x: f64) {
        self.sum += x - self.ring[self.pos];
        self.ring[self.pos] = x;
        self.pos += 1;
        if self.pos == self.ring.len() {
            self.pos = 0;
            self.filled = true;
            // Once per window, recompute the sum exactly so rounding errors cannot build up
            // (still O(1) per value, amortised).
            self.sum = self.ring.iter().sum();
        }
    }

    /// True once `len` values have been pushed.
    pub fn is_full(&self) -> bool {
        self.filled
    }

    /// The mean of the values in the window (of those pushed so far, before it is full).
    pub fn mean(&self) -> f64 {
        let n = if self.filled {
            self.ring.len()
        } else {
            self.pos
        };
        if n == 0 {
            0.0
        } else {
            self.sum / n as f64
        }
    }
}

/// The STA/LTA agent: for every sample once the long window is full, `(index, STA / LTA)` of the
/// signal's energy.
pub struct StaLta {
    input: Input<Sample>,
    out: Stream<Ratio>,
    sta: RunningMean,
    lta: RunningMean,
}

impl Agent for StaLta {
    fn step(&mut self, inputs: &mut Inputs, outputs: &mut Outputs) -> Result<(), AgentError> {
        let new = inputs.slice(&self.input);
        let out = outputs.vec(&self.out);
        for &(i, x) in new {
            let energy = x * x;
            self.sta.push(energy);
            self.lta.push(energy);
            if self.lta.is_full() {
                let lta = self.lta.mean();
                let ratio = if lta > 0.0 {
                    self.sta.mean() / lta
                } else {
                    0.0
                };
                out.push((i, ratio));
            }
        }
        let n = new.len();
        inputs.consume(&self.input, n);
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The trigger

/// The start of one detection.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    /// Index of the sample at which the ratio crossed `trigger_on`.
    pub sample: u64,
    /// That sample's time, in seconds from the start of the recording.
    pub time_s: f64,
    /// The STA/LTA ratio at that sample.
    pub ratio: f64,
}

/// A trigger with hysteresis: fires when the ratio rises above `on`, re-arms when it falls
/// below `off`.
#[derive(Clone, Debug)]
pub struct Trigger {
    on: f64,
    off: f64,
    sample_rate: f64,
    armed: bool,
}

impl Trigger {
    /// A trigger armed and waiting for a ratio above `cfg.trigger_on`.
    pub fn new(cfg: &Config) -> Self {
        Trigger {
            on: cfg.trigger_on,
            off: cfg.trigger_off,
            sample_rate: cfg.sample_rate,
            armed: true,
        }
    }

    /// Feeds one ratio; returns a detection if this sample starts one.
    pub fn update(&mut self, (sample, ratio): Ratio) -> Option<Detection> {
        if self.armed && ratio > self.on {
            self.armed = false;
            Some(Detection {
                sample,
                time_s: sample as f64 / self.sample_rate,
                ratio,
            })
        } else {
            if !self.armed && ratio < self.off {
                self.armed = true;
            }
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The application

/// The streams of a detector, for sinks and tests to read.
pub struct Handles {
    /// The accelerometer's samples.
    pub signal: Stream<Sample>,
    /// STA/LTA for every sample after the first long window.
    pub ratio: Stream<Ratio>,
    /// One element per detection.
    pub detections: Stream<Detection>,
}

/// Adds the STA/LTA agent (`sta_lta`) and the trigger (`trigger`) reading `signal`.
pub fn build_detector(g: &mut Graph, signal: &Stream<Sample>, cfg: &Config) -> Handles {
    let (sta, lta) = (cfg.window(cfg.sta_s), cfg.window(cfg.lta_s));
    let (input, ratio) = g.add_agent("sta_lta", |p| {
        let input = p.input::<Sample>("samples");
        let out = p.output::<Ratio>("ratio");
        let agent = StaLta {
            input,
            out,
            sta: RunningMean::new(sta),
            lta: RunningMean::new(lta),
        };
        (agent, (input, out))
    });
    g.connect(signal, &input);
    let mut trigger = Trigger::new(cfg);
    let detections = g.filter_map("trigger", &ratio, move |r: &Ratio| trigger.update(*r));
    Handles {
        signal: *signal,
        ratio,
        detections,
    }
}

/// Adds the synthetic accelerometer (`seismometer`) and the detector reading it.
pub fn build(g: &mut Graph, cfg: &Config) -> Handles {
    let signal = g.source("seismometer", Seismometer::new(cfg));
    build_detector(g, &signal, cfg)
}

/// The whole application: the detector, `alerts` printing each detection, and (unless
/// `single`) its placement in three processes.
pub fn application(cfg: &Config, single: bool) -> Graph {
    let mut g = Graph::new("quake_detector");
    let h = build(&mut g, cfg);
    let mut detections = 0u64;
    g.for_each("alerts", &h.detections, move |d: &Detection| {
        detections += 1;
        println!(
            "QUAKE at {:8.2} s (sample {}, STA/LTA {:.1}), detection #{detections}",
            d.time_s, d.sample, d.ratio
        );
    });
    if !single {
        g.place_in_process("sta_lta", "detector");
        g.place_in_process("trigger", "detector");
        g.place_in_process("alerts", "alerts");
    }
    g
}

/// Reads `--seed N` (random quakes instead of the default ones), `--minutes M`, `--realtime`
/// and `--single-process`.
fn config_from_args() -> Result<(Config, bool), String> {
    let usage = "usage: quake_detector [--seed N] [--minutes M] [--realtime] [--single-process]";
    let (mut seed, mut minutes, mut realtime, mut single) = (None, None, false, false);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| -> Result<String, String> {
            args.next().ok_or(format!("{name} needs a value\n{usage}"))
        };
        match arg.as_str() {
            "--seed" => {
                let v = value("--seed")?;
                seed = Some(
                    v.parse::<u64>()
                        .map_err(|_| format!("--seed: not a number: {v}"))?,
                );
            }
            "--minutes" => {
                let v = value("--minutes")?;
                let m = v
                    .parse::<f64>()
                    .map_err(|_| format!("--minutes: not a number: {v}"))?;
                if !(m > 0.0 && m.is_finite()) {
                    return Err(format!("--minutes must be positive, not {v}"));
                }
                minutes = Some(m);
            }
            "--realtime" => realtime = true,
            "--single-process" => single = true,
            _ => return Err(format!("unknown argument {arg}\n{usage}")),
        }
    }
    let duration_s = minutes.map_or(Config::default().duration_s, |m| m * 60.0);
    let mut cfg = match seed {
        Some(seed) => Config::random(seed, duration_s),
        None => Config {
            duration_s,
            ..Config::default()
        },
    };
    cfg.quakes.retain(|q| q.start_s + 20.0 <= duration_s);
    cfg.realtime = realtime;
    Ok((cfg, single))
}

fn main() {
    iotstream::init_logging(); // tracing output on stderr, filtered by RUST_LOG
    if let Err(e) = run() {
        // For people: the error's own words (Display), not its Rust value.
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), iotstream::Error> {
    let (cfg, single) = config_from_args().unwrap_or_else(|e| {
        eprintln!("{e}");
        std::process::exit(2)
    });
    // This program runs as three processes (unless --single-process): the one you start runs the
    // sensor and starts `detector` and `alerts` by running itself again; each builds the same
    // graph and runs its own agents. Only the starter prints the introduction.
    let role = std::env::var("IOTSTREAM_PROCESS").ok();
    if role.is_none() {
        println!(
            "{} quakes injected at {:?} s; STA {} s, LTA {} s, trigger on {} / off {}; {}",
            cfg.quakes.len(),
            cfg.quakes.iter().map(|q| q.start_s).collect::<Vec<_>>(),
            cfg.sta_s,
            cfg.lta_s,
            cfg.trigger_on,
            cfg.trigger_off,
            if single {
                "one process"
            } else {
                "three processes: sensor (this one), detector, alerts"
            }
        );
    }
    let g = application(&cfg, single);
    let started = Instant::now();
    let metrics = g.run()?;
    let elapsed = started.elapsed().as_secs_f64();
    // Each process has the counters of its own agents: the starter reports the samples.
    if let Some(samples) = metrics.stream("seismometer.out").map(|s| s.elements) {
        let detections = metrics
            .stream("trigger.out")
            .map(|s| format!(", {} detections", s.elements));
        println!(
            "{samples} samples ({:.0} s of signal) in {elapsed:.3} s: {:.0} samples/s{}",
            cfg.time_of(samples),
            samples as f64 / elapsed,
            detections.unwrap_or_default()
        );
    }
    Ok(())
}
