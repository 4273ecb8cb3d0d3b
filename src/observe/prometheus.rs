//! The Prometheus text exposition format (version 0.0.4) of an [`AppMetrics`].
//!
//! Names follow Prometheus conventions: the `iotstream_` prefix, the thing measured, its unit
//! in the name (`_seconds`, `_bytes`), `_total` on counters. Every sample carries the label
//! `app`; then, by family:
//!
//! | family | labels |
//! |---|---|
//! | `iotstream_process_*` | `process`, `host` |
//! | `iotstream_agent_*` | `agent`, `process`, `host` |
//! | `iotstream_stream_*` | `stream` (`agent.port`), `process`, `host` (the writer's) |
//! | `iotstream_link_*` | `stream`, `reader`, `input`, `transport` |
//!
//! Counters only grow (across restarts too: see [`Aggregator`](crate::observe::Aggregator));
//! let Prometheus compute rates (`rate(iotstream_link_elements_total[1m])`). The run id is
//! on one sample, `iotstream_app_info{app, run} 1`, not on every series, so that series keep
//! their identity when the application is started again.

use std::fmt::Write;

use crate::observe::model::{AppMetrics, ProcessStatus};

/// The `Content-Type` of [`prometheus_text`]'s output.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A family's kind.
#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// Writes families: `# HELP`, `# TYPE`, then samples. A family without samples is left out
/// (as Prometheus's own clients do).
struct Text {
    out: String,
    /// The family whose header waits for its first sample.
    pending: Option<(&'static str, Kind, &'static str)>,
}

impl Text {
    fn family(&mut self, name: &'static str, kind: Kind, help: &'static str) {
        self.pending = Some((name, kind, help));
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        if let Some((family, kind, help)) = self.pending.take() {
            debug_assert_eq!(family, name, "a sample of the family announced");
            let kind = match kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
            };
            let _ = writeln!(self.out, "# HELP {family} {}", escape_help(help));
            let _ = writeln!(self.out, "# TYPE {family} {kind}");
        }
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        value.write_to(&mut self.out);
        self.out.push('\n');
    }
}

/// A sample's value.
trait Value {
    fn write_to(&self, out: &mut String);
}

impl Value for u64 {
    fn write_to(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write_to(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            // Rust prints finite floats without an exponent, as Go's ParseFloat reads them.
            let _ = write!(out, "{self}");
        }
    }
}

/// A label value: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> String {
    escape(v, true)
}

/// A help text: backslash and line feed escaped.
fn escape_help(v: &str) -> String {
    escape(v, false)
}

fn escape(v: &str, quote: bool) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '\n' => s.push_str("\\n"),
            '"' if quote => s.push_str("\\\""),
            c => s.push(c),
        }
    }
    s
}

fn ns_to_s(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The process is there: started, running or draining.
fn up(status: ProcessStatus) -> u64 {
    u64::from(matches!(
        status,
        ProcessStatus::Starting | ProcessStatus::Running | ProcessStatus::Draining
    ))
}

/// `view` in the Prometheus text format (see the [module docs](self)); serve it with
/// [`PROMETHEUS_CONTENT_TYPE`].
///
/// ```
/// use iotstream::observe::{prometheus_text, AppMetrics, StreamView};
///
/// let view = AppMetrics {
///     app: "quake".into(),
///     streams: vec![StreamView {
///         name: "sensor.out".into(),
///         process: "main".into(),
///         host: "local".into(),
///         elements: 42,
///         ..Default::default()
///     }],
///     ..Default::default()
/// };
/// let text = prometheus_text(&view);
/// assert!(text.contains(
///     "iotstream_stream_elements_total{app=\"quake\",stream=\"sensor.out\",process=\"main\",host=\"local\"} 42\n"
/// ));
/// ```
pub fn prometheus_text(view: &AppMetrics) -> String {
    let mut t = Text {
        out: String::with_capacity(256 * (1 + view.links.len() + view.agents.len())),
        pending: None,
    };
    let app = view.app.as_str();

    t.family(
        "iotstream_app_info",
        Kind::Gauge,
        "The application and its run id (always 1).",
    );
    t.sample(
        "iotstream_app_info",
        &[("app", app), ("run", &view.run)],
        1u64,
    );

    // Processes.
    let process_families: [(&str, Kind, &str); 4] = [
        (
            "iotstream_process_up",
            Kind::Gauge,
            "1 if the process is starting, running or draining, 0 if it ended, failed, is being restarted or is not known.",
        ),
        (
            "iotstream_process_cpu_seconds_total",
            Kind::Counter,
            "User and system CPU time used by the process, over every incarnation, in seconds.",
        ),
        (
            "iotstream_process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory of the process, in bytes.",
        ),
        (
            "iotstream_process_restarts_total",
            Kind::Counter,
            "Times the process was started again, after a failure or asked for (iotstream restart).",
        ),
    ];
    for (i, (name, kind, help)) in process_families.iter().enumerate() {
        t.family(name, *kind, help);
        for p in &view.processes {
            let labels = [("app", app), ("process", &p.process), ("host", &p.host)];
            match i {
                0 => t.sample(name, &labels, up(p.status)),
                1 => t.sample(name, &labels, p.cpu_s),
                2 => t.sample(name, &labels, p.rss_bytes),
                _ => t.sample(name, &labels, p.restarts),
            }
        }
    }

    // Agents.
    let agent_families: [(&str, &str); 5] = [
        ("iotstream_agent_steps_total", "Steps the agent ran."),
        (
            "iotstream_agent_consumed_total",
            "Elements the agent consumed, over all its inputs.",
        ),
        (
            "iotstream_agent_busy_seconds_total",
            "Time the agent spent in its steps, the step going on included, in seconds.",
        ),
        (
            "iotstream_agent_late_total",
            "Elements the agent found late (event time) and dropped or routed aside.",
        ),
        (
            "iotstream_agent_undelivered_total",
            "Elements a sink could not deliver to the outside world and gave up on.",
        ),
    ];
    for (i, (name, help)) in agent_families.iter().enumerate() {
        t.family(name, Kind::Counter, help);
        for a in &view.agents {
            let labels = [
                ("app", app),
                ("agent", &a.name),
                ("process", &a.process),
                ("host", &a.host),
            ];
            match i {
                0 => t.sample(name, &labels, a.steps),
                1 => t.sample(name, &labels, a.consumed),
                2 => t.sample(name, &labels, ns_to_s(a.busy_ns)),
                3 => t.sample(name, &labels, a.late),
                _ => t.sample(name, &labels, a.undelivered),
            }
        }
    }

    // Streams.
    let stream_families: [(&str, Kind, &str); 3] = [
        (
            "iotstream_stream_elements_total",
            Kind::Counter,
            "Elements appended to the stream by its writer.",
        ),
        (
            "iotstream_stream_batches_total",
            Kind::Counter,
            "Batches appended to the stream (one per step that appended anything).",
        ),
        (
            "iotstream_stream_watermark",
            Kind::Gauge,
            "The last watermark sent on the stream, in its event time's units (event-time streams only).",
        ),
    ];
    for (i, (name, kind, help)) in stream_families.iter().enumerate() {
        t.family(name, *kind, help);
        for s in &view.streams {
            let labels = [
                ("app", app),
                ("stream", &s.name),
                ("process", &s.process),
                ("host", &s.host),
            ];
            match i {
                0 => t.sample(name, &labels, s.elements),
                1 => t.sample(name, &labels, s.batches),
                _ => {
                    if let Some(w) = s.watermark {
                        t.sample(name, &labels, w);
                    }
                }
            }
        }
    }

    // Connections.
    let link_families: [(&str, Kind, &str); 11] = [
        (
            "iotstream_link_elements_total",
            Kind::Counter,
            "Elements delivered to the reading agent over the connection.",
        ),
        (
            "iotstream_link_batches_total",
            Kind::Counter,
            "Batches delivered to the reading agent over the connection.",
        ),
        (
            "iotstream_link_dropped_total",
            Kind::Counter,
            "Elements dropped by the connection's drop policy.",
        ),
        (
            "iotstream_link_blocked_seconds_total",
            Kind::Counter,
            "Time the writer waited with data it could not send on the connection (never on one that drops), the wait going on included, in seconds.",
        ),
        (
            "iotstream_link_in_flight",
            Kind::Gauge,
            "Elements sent on the connection and not yet consumed by the reader: the backlog.",
        ),
        (
            "iotstream_link_max_in_flight",
            Kind::Gauge,
            "The most elements ever in flight at once on the connection.",
        ),
        (
            "iotstream_link_capacity",
            Kind::Gauge,
            "Elements that may be in flight on the connection.",
        ),
        (
            "iotstream_link_bytes_total",
            Kind::Counter,
            "Payload bytes moved over a TCP connection.",
        ),
        (
            "iotstream_link_reconnects_total",
            Kind::Counter,
            "Times a TCP connection was established again after a break.",
        ),
        (
            "iotstream_link_unacked_bytes",
            Kind::Gauge,
            "Payload bytes a TCP writer sent and the reader has not acknowledged.",
        ),
        (
            "iotstream_link_released_early_total",
            Kind::Counter,
            "Elements whose ring space the reader released before its agent consumed them.",
        ),
    ];
    for (i, (name, kind, help)) in link_families.iter().enumerate() {
        t.family(name, *kind, help);
        for l in &view.links {
            let labels = [
                ("app", app),
                ("stream", &l.stream),
                ("reader", &l.reader),
                ("input", &l.input),
                ("transport", &l.transport),
            ];
            match i {
                0 => t.sample(name, &labels, l.elements),
                1 => t.sample(name, &labels, l.batches),
                2 => t.sample(name, &labels, l.dropped),
                3 => t.sample(name, &labels, ns_to_s(l.blocked_ns)),
                4 => t.sample(name, &labels, l.in_flight),
                5 => t.sample(name, &labels, l.max_in_flight),
                6 => t.sample(name, &labels, l.capacity),
                7 => t.sample(name, &labels, l.bytes),
                8 => t.sample(name, &labels, l.reconnects),
                9 => t.sample(name, &labels, l.unacked_bytes),
                _ => t.sample(name, &labels, l.released_early),
            }
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::model::{AgentView, LinkView, ProcessView, StreamView};
    use std::collections::{BTreeMap, BTreeSet};

    fn view() -> AppMetrics {
        AppMetrics {
            app: "quake".into(),
            run: "1234-ab".into(),
            time_ms: 1,
            interval_ms: 1000,
            processes: vec![
                ProcessView {
                    process: "main".into(),
                    host: "local".into(),
                    pid: 10,
                    status: ProcessStatus::Running,
                    cpu_s: 1.25,
                    rss_bytes: 5 << 20,
                    restarts: 2,
                    ..Default::default()
                },
                ProcessView {
                    process: "detector".into(),
                    host: "local".into(),
                    status: ProcessStatus::Failed,
                    ..Default::default()
                },
            ],
            agents: vec![AgentView {
                // Every character a label value must escape.
                name: "odd \"name\" with \\ and\nnewline".into(),
                process: "main".into(),
                host: "local".into(),
                steps: 7,
                consumed: 70,
                busy_ns: 1_500_000_000,
                late: 3,
                undelivered: 2,
                ..Default::default()
            }],
            streams: vec![
                StreamView {
                    name: "sensor.out".into(),
                    writer: "sensor".into(),
                    process: "main".into(),
                    host: "local".into(),
                    elements: 1000,
                    batches: 10,
                    watermark: Some(123_456),
                    ..Default::default()
                },
                StreamView {
                    name: "count.out".into(),
                    writer: "count".into(),
                    process: "main".into(),
                    host: "local".into(),
                    ..Default::default()
                },
            ],
            links: vec![LinkView {
                edge: 0,
                stream: "sensor.out".into(),
                reader: "detector".into(),
                input: "in".into(),
                transport: "shared-memory".into(),
                capacity: 1024,
                elements: 990,
                batches: 9,
                dropped: 4,
                blocked_ns: 250_000_000,
                in_flight: 10,
                max_in_flight: 1024,
                bytes: 0,
                reconnects: 0,
                unacked_bytes: 0,
                released_early: 1,
                ..Default::default()
            }],
        }
    }

    /// A careful reading of the text format: every line is a comment of a known kind or a
    /// sample `name{labels} value`; every family has one HELP and one TYPE before its
    /// samples; names and label names are valid; label values are properly quoted; no
    /// series appears twice. Returns the samples by series.
    fn check(text: &str) -> BTreeMap<String, f64> {
        fn valid_name(n: &str) -> bool {
            let mut cs = n.chars();
            cs.next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
                && cs.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
        }
        assert!(text.ends_with('\n'), "the text ends with a line feed");
        let mut helped = BTreeSet::new();
        let mut typed: BTreeMap<String, String> = BTreeMap::new();
        let mut sampled = BTreeSet::new();
        let mut series = BTreeMap::new();
        let mut current: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, _) = rest.split_once(' ').expect("HELP name text");
                assert!(valid_name(name), "{line}");
                assert!(helped.insert(name.to_string()), "HELP twice: {line}");
                assert!(!sampled.contains(name), "HELP after samples: {line}");
                current = Some(name.to_string());
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name kind");
                assert!(["counter", "gauge"].contains(&kind), "{line}");
                assert_eq!(current.as_deref(), Some(name), "TYPE right after HELP");
                assert!(typed.insert(name.into(), kind.into()).is_none(), "{line}");
                continue;
            }
            assert!(!line.starts_with('#'), "unknown comment {line}");
            // name{labels} value
            let name_end = line.find(['{', ' ']).expect("a sample has a value");
            let name = &line[..name_end];
            assert!(valid_name(name), "{line}");
            assert_eq!(
                current.as_deref(),
                Some(name),
                "a sample of its family: {line}"
            );
            if name.ends_with("_total") {
                assert_eq!(typed[name], "counter", "{name}");
            }
            sampled.insert(name.to_string());
            let mut rest = &line[name_end..];
            let mut labels = Vec::new();
            if let Some(r) = rest.strip_prefix('{') {
                let mut r = r;
                loop {
                    let eq = r.find('=').expect("label=");
                    let lname = &r[..eq];
                    assert!(valid_name(lname) && !lname.contains(':'), "{line}");
                    r = r[eq + 1..].strip_prefix('"').expect("quoted value");
                    let mut value = String::new();
                    let mut chars = r.char_indices();
                    let end = loop {
                        let (i, c) = chars.next().expect("closing quote");
                        match c {
                            '"' => break i,
                            '\\' => match chars.next().expect("escape").1 {
                                '\\' => value.push('\\'),
                                '"' => value.push('"'),
                                'n' => value.push('\n'),
                                e => panic!("bad escape \\{e} in {line}"),
                            },
                            '\n' => panic!("raw newline"),
                            c => value.push(c),
                        }
                    };
                    labels.push(format!("{lname}={value:?}"));
                    r = &r[end + 1..];
                    if let Some(more) = r.strip_prefix(',') {
                        r = more;
                    } else {
                        r = r.strip_prefix('}').expect("labels end with }");
                        break;
                    }
                }
                rest = r;
            }
            let value = rest.strip_prefix(' ').expect("a space before the value");
            let v: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a number: {line}"));
            let key = format!("{name}{{{}}}", labels.join(","));
            assert!(series.insert(key, v).is_none(), "series twice: {line}");
        }
        assert_eq!(helped.len(), typed.len());
        series
    }

    #[test]
    fn the_text_reads_back_with_a_careful_checker() {
        let text = prometheus_text(&view());
        let s = check(&text);
        let get = |k: &str| {
            *s.get(k)
                .unwrap_or_else(|| panic!("no series {k} in\n{text}"))
        };
        assert_eq!(
            get(
                r#"iotstream_stream_elements_total{app="quake",stream="sensor.out",process="main",host="local"}"#
            ),
            1000.0
        );
        assert_eq!(
            get(
                r#"iotstream_stream_watermark{app="quake",stream="sensor.out",process="main",host="local"}"#
            ),
            123_456.0
        );
        assert!(
            !text.contains(r#"iotstream_stream_watermark{app="quake",stream="count.out""#),
            "no watermark sample for a stream without one"
        );
        let link = r#"{app="quake",stream="sensor.out",reader="detector",input="in",transport="shared-memory"}"#;
        assert_eq!(get(&format!("iotstream_link_elements_total{link}")), 990.0);
        assert_eq!(get(&format!("iotstream_link_dropped_total{link}")), 4.0);
        assert_eq!(
            get(&format!("iotstream_link_blocked_seconds_total{link}")),
            0.25
        );
        assert_eq!(get(&format!("iotstream_link_in_flight{link}")), 10.0);
        assert_eq!(get(&format!("iotstream_link_capacity{link}")), 1024.0);
        assert_eq!(get(&format!("iotstream_link_bytes_total{link}")), 0.0);
        assert_eq!(get(&format!("iotstream_link_reconnects_total{link}")), 0.0);
        assert_eq!(
            get(&format!("iotstream_link_released_early_total{link}")),
            1.0
        );
        let agent = r#"{app="quake",agent="odd \"name\" with \\ and\nnewline",process="main",host="local"}"#;
        assert_eq!(get(&format!("iotstream_agent_steps_total{agent}")), 7.0);
        assert_eq!(get(&format!("iotstream_agent_consumed_total{agent}")), 70.0);
        assert_eq!(
            get(&format!("iotstream_agent_busy_seconds_total{agent}")),
            1.5
        );
        assert_eq!(get(&format!("iotstream_agent_late_total{agent}")), 3.0);
        assert_eq!(
            get(&format!("iotstream_agent_undelivered_total{agent}")),
            2.0
        );
        let main = r#"{app="quake",process="main",host="local"}"#;
        let detector = r#"{app="quake",process="detector",host="local"}"#;
        assert_eq!(get(&format!("iotstream_process_up{main}")), 1.0);
        assert_eq!(get(&format!("iotstream_process_up{detector}")), 0.0);
        assert_eq!(
            get(&format!("iotstream_process_cpu_seconds_total{main}")),
            1.25
        );
        assert_eq!(
            get(&format!("iotstream_process_resident_memory_bytes{main}")),
            (5 << 20) as f64
        );
        assert_eq!(get(&format!("iotstream_process_restarts_total{main}")), 2.0);
        assert_eq!(get(r#"iotstream_app_info{app="quake",run="1234-ab"}"#), 1.0);
    }

    #[test]
    fn the_text_parses_with_an_independent_parser() {
        use prom_text_format_parser::{Scrape, Type};
        let text = prometheus_text(&view());
        let scrape = Scrape::parse(&text).expect("valid Prometheus text");
        let family = |name: &str| {
            scrape
                .metrics
                .iter()
                .find(|m| m.name == name)
                .unwrap_or_else(|| panic!("no family {name}"))
        };
        // Every family: documented, typed as its name says.
        assert_eq!(scrape.metrics.len(), 1 + 4 + 5 + 3 + 11);
        for m in &scrape.metrics {
            assert!(
                m.help_desc.as_deref().is_some_and(|h| !h.is_empty()),
                "{}",
                m.name
            );
            let kind = if m.name.ends_with("_total") {
                Type::Counter
            } else {
                Type::Gauge
            };
            assert_eq!(m.kind, kind, "{}", m.name);
        }
        let value = |name: &str, label: (&str, &str)| {
            family(name)
                .samples
                .iter()
                .find(|s| {
                    s.labels
                        .iter()
                        .any(|l| l.key == label.0 && l.value == label.1)
                })
                .unwrap_or_else(|| panic!("{name} with {label:?}"))
                .value
                .value
                .as_f64()
        };
        assert_eq!(
            value("iotstream_link_elements_total", ("reader", "detector")),
            990.0
        );
        assert_eq!(
            value("iotstream_link_in_flight", ("transport", "shared-memory")),
            10.0
        );
        assert_eq!(value("iotstream_process_up", ("process", "detector")), 0.0);
        assert_eq!(
            value("iotstream_stream_watermark", ("stream", "sensor.out")),
            123_456.0
        );
        // Label values stay escaped in this parser's output: the escapes are valid ones.
        let odd = r#"odd \"name\" with \\ and\nnewline"#;
        assert_eq!(value("iotstream_agent_late_total", ("agent", odd)), 3.0);
        let labels: Vec<&str> = family("iotstream_link_dropped_total").samples[0]
            .labels
            .iter()
            .map(|l| l.key.as_str())
            .collect();
        assert_eq!(labels, ["app", "stream", "reader", "input", "transport"]);
    }

    #[test]
    fn an_empty_view_is_valid_text_too() {
        let text = prometheus_text(&AppMetrics::default());
        let s = check(&text);
        assert_eq!(s.len(), 1, "only the app info: {text}");
        assert!(
            prom_text_format_parser::Scrape::parse(&text).is_ok(),
            "{text}"
        );
        assert!(
            !text.contains("iotstream_link_"),
            "families without samples are left out"
        );
    }
}
