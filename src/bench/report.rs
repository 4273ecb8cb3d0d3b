//! What `iotstream bench` prints and writes: the table, the scaling table, the JSON file and
//! the SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use super::{Report, Run, ScalePoint, SIZES};

/// `1.23 M`, `456 k`, `12.3`.
fn si(x: f64) -> String {
    let (v, unit) = if x >= 1e9 {
        (x / 1e9, " G")
    } else if x >= 1e6 {
        (x / 1e6, " M")
    } else if x >= 1e3 {
        (x / 1e3, " k")
    } else {
        (x, "")
    };
    if v >= 100.0 {
        format!("{v:.0}{unit}")
    } else if v >= 10.0 {
        format!("{v:.1}{unit}")
    } else {
        format!("{v:.2}{unit}")
    }
}

/// `850 ns`, `31.2 µs`, `4.10 ms`.
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

fn ratio(x: f64) -> String {
    if x == 0.0 {
        "-".into()
    } else if x >= 10.0 {
        format!("{x:.1}×")
    } else {
        format!("{x:.2}×")
    }
}

fn size(bytes: usize) -> String {
    if bytes >= 1024 && bytes % 1024 == 0 {
        format!("{} KiB", bytes / 1024)
    } else {
        format!("{bytes} B")
    }
}

/// Lays out `rows` under `head` in columns, the first `left` of them aligned left.
fn columns(head: &[&str], rows: &[Vec<String>], left: usize) -> String {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: &mut dyn Iterator<Item = &str>, out: &mut String| {
        let mut text = String::new();
        for (i, (cell, w)) in cells.zip(&widths).enumerate() {
            let pad = w - cell.chars().count();
            if i > 0 {
                text.push_str("  ");
            }
            if i < left {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            } else {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut head.iter().copied(), &mut out);
    let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
    line(&mut rule.iter().map(String::as_str), &mut out);
    for r in rows {
        line(&mut r.iter().map(String::as_str), &mut out);
    }
    out
}

/// `all` when the throughput run's sink got every element its source sent (and so did the
/// latency run and the baselines: a failed row says FAILED).
fn delivered(r: &Run) -> String {
    if r.error.is_some() {
        "FAILED".into()
    } else if r.sent > 0 && r.delivered == r.sent {
        "all".into()
    } else {
        format!("{} of {}", r.delivered, r.sent)
    }
}

/// The table of runs, then what each ratio means, then each failed row's error.
pub fn render_table(report: &Report) -> String {
    if report.runs.is_empty() {
        return String::new();
    }
    let head = [
        "mode",
        "size",
        "pattern",
        "elements/s",
        "bytes/s",
        "p50",
        "p99",
        "p999",
        "CPU s",
        "baseline",
        "base el/s",
        "×base",
        "base p50",
        "p50/base",
        "delivered",
    ];
    let rows: Vec<Vec<String>> = report
        .runs
        .iter()
        .map(|r| {
            vec![
                r.mode.clone(),
                size(r.element_bytes),
                r.pattern.clone(),
                si(r.elements_per_s),
                format!("{}B", si(r.bytes_per_s)),
                ns(r.p50_ns),
                ns(r.p99_ns),
                ns(r.p999_ns),
                format!("{:.2}", r.cpu_s),
                r.baseline.clone(),
                si(r.baseline_elements_per_s),
                ratio(r.ratio),
                ns(r.baseline_p50_ns),
                ratio(r.latency_ratio),
                delivered(r),
            ]
        })
        .collect();
    let mut out = columns(&head, &rows, 3);
    out.push_str(
        "\nelements/s: what the sink got, first element sent to last received; latency: half a \
         ping-pong round trip, one element in flight;\n\
         CPU s: the throughput run's CPU time, every thread and process; ×base: elements/s over \
         the baseline's (above 1 is faster);\n\
         p50/base: latency p50 over the baseline's (above 1 is slower). Baselines move the same \
         bytes the same way (per batch or per element).\n",
    );
    for r in &report.runs {
        if let Some(e) = &r.error {
            let _ = writeln!(
                out,
                "FAILED {} {} {}: {e}",
                r.mode,
                size(r.element_bytes),
                r.pattern
            );
        }
    }
    out
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".into(), f)
}

fn point_row(p: &ScalePoint) -> Vec<String> {
    if let Some(e) = &p.error {
        let mut row = vec![p.shape.clone(), p.n.to_string()];
        row.extend(std::iter::repeat_n("-".to_string(), 9));
        row.push(format!("FAILED: {e}"));
        return row;
    }
    vec![
        p.shape.clone(),
        p.n.to_string(),
        format!("{:.3}", p.start_s),
        format!("{:.3}", p.total_s),
        if p.per_unit_us >= 1000.0 {
            format!("{:.2} ms", p.per_unit_us / 1000.0)
        } else {
            format!("{:.1} µs", p.per_unit_us)
        },
        opt(p.time_ratio, |r| format!("{r:.2}×")),
        opt(p.exponent, |k| format!("{k:.2}")),
        p.threads.to_string(),
        format!("{:.0} MiB", p.max_rss_kib as f64 / 1024.0),
        format!("{:.2}", p.cpu_s),
        si(p.delivered as f64),
        "all".into(),
    ]
}

/// The scaling table: each point, and its growth over the previous one.
pub fn render_scaling(report: &Report) -> String {
    if report.scaling.is_empty() {
        return String::new();
    }
    let head = [
        "shape",
        "n",
        "start s",
        "total s",
        "per unit",
        "×time",
        "k",
        "threads",
        "max RSS",
        "CPU s",
        "elements",
        "delivered",
    ];
    let rows: Vec<Vec<String>> = report.scaling.iter().map(point_row).collect();
    let mut out = columns(&head, &rows, 2);
    out.push_str(
        "\nn: agents in the chain, readers of one stream, processes in the chain. start s: until \
         Graph::start returned; total s: building to the end of the run;\n\
         per unit: total / n; ×time: total over the previous point's; k: time grows as nᵏ \
         between the two points (1 linear, 2 quadratic); threads and max RSS: the starter's.\n",
    );
    out
}

/// Writes the report as JSON (`runs`, `scaling`, `settings`) to `path`.
pub fn write_json(path: &Path, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Draws throughput and latency p50 per mode, pattern and size (baselines as thin lines) into an SVG
/// file at `path`.
pub fn write_plot(path: &Path, report: &Report) -> Result<(), String> {
    plot(path, report).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

type Series = (String, bool, Vec<(f64, f64)>);

/// One series per mode and pattern, and one per baseline and pattern (`true`: a baseline).
fn series(report: &Report, pick: impl Fn(&Run) -> (f64, f64)) -> Vec<Series> {
    let mut out: Vec<Series> = Vec::new();
    let mut add = |name: String, base: bool, x: f64, y: f64| {
        if y <= 0.0 {
            return;
        }
        match out.iter_mut().find(|(n, b, _)| *n == name && *b == base) {
            Some((_, _, pts)) => {
                if !pts.iter().any(|(px, _)| *px == x) {
                    pts.push((x, y));
                }
            }
            None => out.push((name, base, vec![(x, y)])),
        }
    };
    for r in report.runs.iter().filter(|r| r.error.is_none()) {
        let (y, by) = pick(r);
        let x = r.element_bytes as f64;
        add(format!("{} {}", r.mode, r.pattern), false, x, y);
        add(format!("{} {}", r.baseline, r.pattern), true, x, by);
    }
    for (_, _, pts) in &mut out {
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

fn plot(path: &Path, report: &Report) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let root = SVGBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let panels = [
        (
            left,
            "Throughput (elements/s)",
            "elements/s",
            series(report, |r| (r.elements_per_s, r.baseline_elements_per_s)),
        ),
        (
            right,
            "Latency p50 (one way, ns)",
            "ns",
            series(report, |r| (r.p50_ns as f64, r.baseline_p50_ns as f64)),
        ),
    ];
    let x_min = SIZES[0] as f64;
    let x_max = SIZES[SIZES.len() - 1] as f64;
    for (area, title, unit, lines) in panels {
        let ys = lines.iter().flat_map(|(_, _, p)| p.iter().map(|(_, y)| *y));
        let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
        let (lo, hi) = if hi > 0.0 {
            (lo / 2.0, hi * 2.0)
        } else {
            (1.0, 10.0)
        };
        let mut chart = ChartBuilder::on(&area)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d((x_min / 1.5..x_max * 1.5).log_scale(), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("element bytes")
            .y_desc(unit)
            .x_label_formatter(&|x| size(x.round() as usize))
            .y_label_formatter(&|y| si(*y))
            .draw()?;
        for (i, (name, base, pts)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let style = if *base {
                color.stroke_width(1)
            } else {
                color.stroke_width(3)
            };
            let label = if *base {
                format!("{name} (baseline)")
            } else {
                name.clone()
            };
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(
                pts.iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()?;
    }
    root.present()?;
    Ok(())
}
