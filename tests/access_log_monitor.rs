//! The access-log monitor example (`examples/access_log_monitor.rs`): its parser, and its
//! alerts and late lines against a reference computed from the log, whatever the batches, in
//! the harness and in a threaded run over a file.

#[path = "../examples/access_log_monitor.rs"]
mod access_log_monitor;

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use access_log_monitor::{
    application, build, format_line, generate, parse_line, parse_time, Access, Alert, Config,
};
use iotstream::ops::event_window::Firing;
use iotstream::{Graph, Harness};

const T0: u64 = 1_796_212_800_000; // 2026-12-02 12:00:00 UTC

#[test]
fn lines_parse_and_bad_ones_are_refused() {
    assert_eq!(parse_time("02/Dec/2026:12:00:00 +0000"), Some(T0));
    assert_eq!(
        parse_time("02/Dec/2026:13:30:00 +0130"),
        Some(T0),
        "the zone offset is taken off"
    );
    assert_eq!(
        parse_time("29/Feb/2024:00:00:00 +0000"),
        Some(1_709_164_800_000)
    );
    for bad in [
        "02/Dez/2026:12:00:00 +0000",
        "02/Dec/2026:25:00:00 +0000",
        "02/Dec/2026:12:00 +0000",
        "02/Dec/2026:12:00:00",
        "32/Dec/2026:12:00:00 +0000",
    ] {
        assert_eq!(parse_time(bad), None, "{bad}");
    }
    let a = Access {
        vhost: "shop.example".into(),
        status: 503,
    };
    let line = format_line(T0 + 61_000, &a, "/cart");
    assert_eq!(parse_line(&line), Some((T0 + 61_000, a)));
    let nginx = r#"www.example 198.51.100.4 - - [02/Dec/2026:12:00:07 +0000] "GET /a b HTTP/1.1" 404 10 "-" "x""#;
    assert_eq!(
        parse_line(nginx),
        Some((
            T0 + 7_000,
            Access {
                vhost: "www.example".into(),
                status: 404
            }
        ))
    );
    for bad in [
        "",
        "www.example no brackets here",
        r#"www.example 1.2.3.4 - - [02/Dec/2026:12:00:07 +0000] "GET / HTTP/1.1" 999 1"#,
        r#"www.example 1.2.3.4 - - [02/Dec/2026:12:00:07 +0000] "GET / HTTP/1.1"#,
    ] {
        assert_eq!(parse_line(bad), None, "{bad}");
    }
}

/// The alerts and the late lines of `lines` by the definitions: a line is late when its 10 s
/// window ends at or before the watermark before it (the highest timestamp before it minus
/// 5 s); windows count the others.
fn reference(lines: &[String], cfg: &Config) -> (Vec<(String, u64, u64, u64)>, u64) {
    let mut max: Option<u64> = None;
    let mut late = 0;
    let mut windows: BTreeMap<(String, u64), (u64, u64)> = BTreeMap::new();
    for l in lines {
        let Some((t, a)) = parse_line(l) else {
            continue;
        };
        let start = t / cfg.window_ms * cfg.window_ms;
        let watermark = max.map(|m| m.saturating_sub(cfg.max_delay_ms));
        if watermark.is_some_and(|w| start + cfg.window_ms <= w) {
            late += 1;
        } else {
            let c = windows.entry((a.vhost.clone(), start)).or_default();
            c.0 += 1;
            c.1 += u64::from(a.status >= 500);
        }
        max = Some(max.map_or(t, |m| m.max(t)));
    }
    let alerts = windows
        .into_iter()
        .filter(|(_, (n, e))| *n >= cfg.min_requests && *e as f64 >= cfg.alert_at * *n as f64)
        .map(|((h, s), (n, e))| (h, s, n, e))
        .collect();
    (alerts, late)
}

fn key(a: &Alert) -> (String, u64, u64, u64) {
    (a.vhost.clone(), a.start, a.counts.requests, a.counts.errors)
}

#[test]
fn the_alerts_and_late_lines_match_the_reference_whatever_the_batches() {
    let cfg = Config::default();
    let (lines, beyond) = generate(T0, 6, 7);
    assert!(beyond > 0, "the generated log has lines beyond the bound");
    let (want, want_late) = reference(&lines, &cfg);
    assert!(
        want.iter().any(|a| a.0 == "shop.example"),
        "the burst raises alerts: {want:?}"
    );
    for chunk in [1usize, 7, 100, 10_000] {
        let mut g = Graph::new("access_log_monitor");
        let log = g.input::<String>("log");
        let (alerts, tally) = build(&mut g, &log, &cfg);
        let out = g.collect("out", &alerts);
        let mut h = Harness::new(g).unwrap();
        for part in lines.chunks(chunk) {
            h.push(&log, part.iter().cloned()).unwrap();
            h.run().unwrap();
        }
        h.finish().unwrap();
        let mut got: Vec<_> = out.values().iter().map(key).collect();
        got.sort();
        assert_eq!(got, want, "chunks of {chunk}");
        assert_eq!(tally.late.get(), want_late, "chunks of {chunk}");
        assert_eq!(tally.unparsed.load(Ordering::Relaxed), 0);
    }
}

#[test]
fn a_quiet_log_emits_its_open_windows_after_the_quiet_time() {
    let cfg = Config::default();
    let mut g = Graph::new("access_log_monitor");
    let log = g.input::<String>("log");
    let (alerts, _) = build(&mut g, &log, &cfg);
    let out = g.collect("out", &alerts);
    let mut h = Harness::new(g).unwrap();
    // 20 failing requests in [12:00:00, 12:00:10), then nothing: the watermark stays below the
    // window's end, so only the quiet-time trigger can emit it.
    let failing = Access {
        vhost: "api.example".into(),
        status: 502,
    };
    let lines: Vec<String> = (0..20)
        .map(|i| format_line(T0 + i * 400, &failing, "/"))
        .collect();
    h.push(&log, lines).unwrap();
    h.run().unwrap();
    assert!(out.values().is_empty(), "the window is still open");
    h.advance_clock(cfg.quiet + Duration::from_secs(1)).unwrap();
    let got = out.values();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(
        (got[0].firing, got[0].counts.requests, got[0].counts.errors),
        (Firing::Early, 20, 20)
    );
    h.finish().unwrap();
}

#[test]
fn the_application_reads_a_log_file_in_a_threaded_run() {
    let cfg = Config::default();
    let (lines, _) = generate(T0, 6, 11);
    let (want, want_late) = reference(&lines, &cfg);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let mut text = lines.join("\n");
    text.push_str("\nnot a log line\n");
    std::fs::write(&path, text).unwrap();
    let (g, tally) = application(path, &cfg);
    let metrics = g.run().unwrap();
    assert_eq!(tally.unparsed.load(Ordering::Relaxed), 1);
    assert_eq!(tally.late.get(), want_late);
    // Every alert reached the agent that prints it.
    let report = metrics.agent("report").expect("the report agent");
    assert_eq!(report.consumed, want.len() as u64);
}
