//! What `iotstream bench` prints and writes: the table, the scaling table, the JSON file and
//! the SVG plot.

use std::fmt::Write as _;
use std::path::Path;

use super::{Report, Run, ScalePoint};

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

/// A rate in `unit` per second (`1.23 M`, `3.92 GB`), or `-` for a run that has none: a run
/// that failed has 0 there.
fn rate(x: f64, unit: &str) -> String {
    if x == 0.0 {
        "-".into()
    } else {
        format!("{}{unit}", si(x))
    }
}

/// CPU seconds, or a dash for a run that has none (it failed or was killed).
fn cpu(seconds: f64) -> String {
    if seconds == 0.0 {
        "-".into()
    } else {
        format!("{seconds:.2}")
    }
}

/// `850 ns`, `31.2 µs`, `4.10 ms`, or `-` for a run that has none: a latency run that failed
/// (or was not measured) has 0 there, and no round trip takes 0 ns.
fn ns(x: u64) -> String {
    let x = x as f64;
    if x == 0.0 {
        "-".into()
    } else if x < 1e3 {
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
                r.pattern_label(),
                rate(r.elements_per_s, ""),
                rate(r.bytes_per_s, "B"),
                ns(r.p50_ns),
                ns(r.p99_ns),
                ns(r.p999_ns),
                cpu(r.cpu_s),
                r.baseline.clone(),
                rate(r.baseline_elements_per_s, ""),
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
         ping-pong round trip, one element in flight, back to back or paced (@N/s: the next ping \
         at the next tick of N per second);\n\
         CPU s: the throughput run's CPU time, every thread and process; ×base: elements/s over \
         the baseline's (above 1 is faster);\n\
         p50/base: latency p50 over the baseline's (above 1 is slower). Baselines move the same \
         bytes the same way (per batch or per element).\n",
    );
    out.push_str(&render_split_cost(report));
    for r in &report.runs {
        if let Some(e) = &r.error {
            let _ = writeln!(
                out,
                "FAILED {} {} {}: {e}",
                r.mode,
                size(r.element_bytes),
                r.pattern_label()
            );
        }
    }
    out
}

/// What splitting the graph costs: each cross-process mode's elements/s over `pool`'s (the
/// same graph in one process, not placed) of the same cell, when both ran. Empty otherwise.
fn render_split_cost(report: &Report) -> String {
    let mut out = String::new();
    for mode in ["processes", "spin", "tcp", "broker"] {
        let cells: Vec<String> = report
            .runs
            .iter()
            .filter(|r| r.mode == mode && r.error.is_none())
            .filter_map(|r| {
                let local = report.runs.iter().find(|l| {
                    l.mode == "pool"
                        && l.error.is_none()
                        && l.element_bytes == r.element_bytes
                        && l.pattern == r.pattern
                        && l.rate_per_s == r.rate_per_s
                })?;
                // Rows of one cell at several rates share its throughput: once per cell.
                let first = report.runs.iter().find(|o| {
                    o.mode == r.mode && o.element_bytes == r.element_bytes && o.pattern == r.pattern
                });
                if !first.is_some_and(|o| std::ptr::eq(o, r)) || local.elements_per_s <= 0.0 {
                    return None;
                }
                Some(format!(
                    "{} {} {}",
                    size(r.element_bytes),
                    r.pattern,
                    ratio(r.elements_per_s / local.elements_per_s)
                ))
            })
            .collect();
        if !cells.is_empty() {
            let _ = writeln!(
                out,
                "{mode} over pool (the same graph in one process), elements/s: {}",
                cells.join(", ")
            );
        }
    }
    out
}

fn opt(x: Option<f64>, f: impl Fn(f64) -> String) -> String {
    x.map_or_else(|| "-".into(), f)
}

/// Microseconds, or milliseconds from 1000 µs.
fn us(x: f64) -> String {
    if x >= 1000.0 {
        format!("{:.2} ms", x / 1000.0)
    } else {
        format!("{x:.1} µs")
    }
}

/// KiB, or MiB from 1024 KiB.
fn kib(x: f64) -> String {
    if x >= 1024.0 {
        format!("{:.1} MiB", x / 1024.0)
    } else {
        format!("{x:.1} KiB")
    }
}

fn point_row(p: &ScalePoint) -> Vec<String> {
    if let Some(e) = &p.error {
        let mut row = vec![p.shape.clone(), p.n.to_string()];
        row.extend(std::iter::repeat_n("-".to_string(), 13));
        row.push(if e.starts_with("skipped") {
            "skipped".into()
        } else {
            "FAILED".into()
        });
        return row;
    }
    vec![
        p.shape.clone(),
        p.n.to_string(),
        format!("{:.3}", p.start_s),
        format!("{:.3}", p.total_s),
        us(p.per_unit_us),
        opt(p.time_ratio, |r| format!("{r:.2}×")),
        opt(p.exponent, |k| format!("{k:.2}")),
        us(p.start_per_unit_us),
        p.threads.to_string(),
        format!("{:.0} MiB", p.max_rss_kib as f64 / 1024.0),
        kib(p.idle_kib_per_unit),
        kib(p.peak_kib_per_unit),
        cpu(p.cpu_s),
        si(p.delivered as f64),
        p.min_batches.to_string(),
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
        "start/unit",
        "threads",
        "max RSS",
        "idle/unit",
        "peak/unit",
        "CPU s",
        "elements",
        "batches",
        "delivered",
    ];
    let rows: Vec<Vec<String>> = report.scaling.iter().map(point_row).collect();
    let mut out = columns(&head, &rows, 2);
    out.push_str(
        "\nn: agents in the chain, readers of one stream, processes in the chain. start s: until \
         Graph::start returned; total s: building to the end of the run;\n\
         per unit: total / n; ×time: total over the previous point's; k: time grows as nᵏ \
         between the two points (1 linear, 2 quadratic); start/unit: start s / n; threads and \
         max RSS: the starter's;\n\
         idle/unit: the starter's resident memory once started, before the first element, over \
         its own before building, / n; peak/unit: its peak over the same, / n; batches: the \
         fewest batches a stream of the starter carried.\n",
    );
    for p in &report.scaling {
        if let Some(e) = &p.error {
            let _ = writeln!(out, "FAILED scaling {} {}: {e}", p.shape, p.n);
        }
    }
    out
}

/// Checks, before anything runs, that `path` (the file of `flag`, `--json` or `--plot`) can be
/// written: not a folder, in a folder that exists and this process may write into. A typo then
/// costs nothing, where it would otherwise be found once every cell had run.
pub fn check_output(flag: &str, path: &Path) -> Result<(), String> {
    let named = path.display();
    if path.is_dir() {
        return Err(format!("{flag} {named}: is a folder; name a file"));
    }
    let folder = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !folder.is_dir() {
        return Err(format!(
            "{flag} {named}: the folder {} does not exist",
            folder.display()
        ));
    }
    let writable = |p: &Path| nix::unistd::access(p, nix::unistd::AccessFlags::W_OK);
    if let Err(e) = writable(folder) {
        return Err(format!(
            "{flag} {named}: cannot write into {}: {}",
            folder.display(),
            e.desc()
        ));
    }
    if path.exists() {
        if let Err(e) = writable(path) {
            return Err(format!("{flag} {named}: cannot write it: {}", e.desc()));
        }
    }
    Ok(())
}

/// Writes the report as JSON (`runs`, `scaling`, `settings`, and `interrupted` when a signal
/// stopped the bench) to `path`.
pub fn write_json(path: &Path, report: &Report) -> Result<(), String> {
    let text = serde_json::to_string_pretty(report).map_err(|e| e.to_string())?;
    std::fs::write(path, text + "\n").map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// Draws throughput and latency p50 per mode, pattern and size (baselines as thin lines) into an SVG
/// file at `path`.
pub fn write_plot(path: &Path, report: &Report) -> Result<(), String> {
    plot(path, report).map_err(|e| format!("cannot draw {}: {e}", path.display()))
}

/// One line of a panel: its legend, its colour's key (mode or baseline), whether it is a
/// baseline, whether it is the `single` pattern, whether it is a paced latency (`@N/s`), and
/// its points (x: index of the size).
struct Line {
    label: String,
    key: String,
    baseline: bool,
    single: bool,
    paced: bool,
    points: Vec<(f64, f64)>,
}

/// One line per mode and pattern, and one per baseline and pattern; with `by_rate` (latency),
/// one per rate too (rows of several rates share their throughput figures).
fn lines(
    report: &Report,
    sizes: &[usize],
    by_rate: bool,
    pick: impl Fn(&Run) -> (f64, f64),
) -> Vec<Line> {
    let mut out: Vec<Line> = Vec::new();
    let mut add = |key: &str, r: &Run, baseline: bool, x: f64, y: f64| {
        if y <= 0.0 {
            return;
        }
        let paced = by_rate && r.rate_per_s > 0;
        let pattern = if paced {
            r.pattern_label()
        } else {
            r.pattern.clone()
        };
        let label = if baseline {
            format!("{key} {pattern} (baseline)")
        } else {
            format!("{key} {pattern}")
        };
        match out.iter_mut().find(|l| l.label == label) {
            Some(l) => {
                if !l.points.iter().any(|(px, _)| *px == x) {
                    l.points.push((x, y));
                }
            }
            None => out.push(Line {
                label,
                key: key.to_string(),
                baseline,
                single: r.pattern == "single",
                paced,
                points: vec![(x, y)],
            }),
        }
    };
    for r in report.runs.iter().filter(|r| r.error.is_none()) {
        let (y, by) = pick(r);
        let x = sizes
            .iter()
            .position(|s| *s == r.element_bytes)
            .unwrap_or(0) as f64;
        add(&r.mode, r, false, x, y);
        add(&r.baseline, r, true, x, by);
    }
    for l in &mut out {
        l.points.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    out
}

/// A colour per mode and per baseline.
fn colour(key: &str) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match key {
        "thread" => RGBColor(31, 119, 180),
        "threads" => RGBColor(255, 127, 14),
        "pool" => RGBColor(188, 189, 34),
        "processes" => RGBColor(44, 160, 44),
        "tcp" => RGBColor(214, 39, 40),
        "spin" => RGBColor(23, 190, 207),
        "crossbeam" => RGBColor(148, 103, 189),
        "shm-ring" => RGBColor(140, 86, 75),
        "raw-tcp" => RGBColor(90, 90, 90),
        "broker" => RGBColor(227, 119, 194),
        "raw-nats" => RGBColor(127, 127, 127),
        _ => RGBColor(0, 0, 0),
    }
}

fn plot(path: &Path, report: &Report) -> Result<(), Box<dyn std::error::Error>> {
    use plotters::prelude::*;
    let mut sizes: Vec<usize> = report.runs.iter().map(|r| r.element_bytes).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let root = SVGBackend::new(path, (1500, 600)).into_drawing_area();
    root.fill(&WHITE)?;
    let (charts, legend) = root.split_horizontally(1220);
    let (left, right) = charts.split_horizontally(610);
    let tput = lines(report, &sizes, false, |r| {
        (r.elements_per_s, r.baseline_elements_per_s)
    });
    let latency = lines(report, &sizes, true, |r| {
        (r.p50_ns as f64, r.baseline_p50_ns as f64)
    });
    draw_panel(&left, "Throughput", "elements/s", &tput, &sizes, si)?;
    draw_panel(&right, "Latency p50 (one way)", "", &latency, &sizes, |y| {
        ns(y.round() as u64)
    })?;
    // The legend, beside the charts: colour = mode or baseline, thick = iotstream, thin =
    // baseline, solid = batch, dashed = single, triangles = paced latency. Every line of
    // either panel, once.
    let font = ("sans-serif", 14).into_font();
    legend.draw(&Text::new(
        "solid: batch, dashed: single",
        (10, 30),
        font.clone(),
    ))?;
    legend.draw(&Text::new(
        "thick: iotstream, thin: baseline",
        (10, 50),
        font.clone(),
    ))?;
    legend.draw(&Text::new(
        "triangles: paced latency (@N/s)",
        (10, 70),
        font.clone(),
    ))?;
    let mut shown: Vec<&Line> = tput.iter().collect();
    for l in &latency {
        if !shown.iter().any(|s| s.label == l.label) {
            shown.push(l);
        }
    }
    for (i, l) in shown.iter().enumerate() {
        let y = 104 + i as i32 * 22;
        let style = colour(&l.key).stroke_width(if l.baseline { 1 } else { 3 });
        if l.single {
            for k in 0..3 {
                legend.draw(&PathElement::new(
                    vec![(10 + k * 12, y), (18 + k * 12, y)],
                    style,
                ))?;
            }
        } else {
            legend.draw(&PathElement::new(vec![(10, y), (42, y)], style))?;
        }
        if l.paced {
            legend.draw(&TriangleMarker::new((26, y), 5, colour(&l.key).filled()))?;
        }
        legend.draw(&Text::new(l.label.clone(), (50, y - 7), font.clone()))?;
    }
    root.present()?;
    Ok(())
}

/// One chart: `lines` over the sizes (as categories), a log scale of `unit`.
fn draw_panel<DB: plotters::prelude::DrawingBackend>(
    area: &plotters::prelude::DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    unit: &str,
    panel: &[Line],
    sizes: &[usize],
    format_y: fn(f64) -> String,
) -> Result<(), Box<dyn std::error::Error>>
where
    DB::ErrorType: 'static,
{
    use plotters::prelude::*;
    let x_max = sizes.len().max(1) as f64 - 0.5;
    let ys = panel.iter().flat_map(|l| l.points.iter().map(|(_, y)| *y));
    let (lo, hi) = ys.fold((f64::MAX, 0f64), |(lo, hi), y| (lo.min(y), hi.max(y)));
    let (lo, hi) = if hi > 0.0 {
        (lo / 2.0, hi * 2.0)
    } else {
        (1.0, 10.0)
    };
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(14)
        .x_label_area_size(40)
        .y_label_area_size(80)
        .build_cartesian_2d(-0.5..x_max, (lo..hi).log_scale())?;
    let size_label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            sizes.get(i as usize).map_or(String::new(), |s| size(*s))
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .x_labels(sizes.len().max(1) * 2 + 1)
        .x_label_formatter(&size_label)
        .disable_x_mesh()
        .x_desc("element size")
        .y_desc(unit)
        .y_label_formatter(&|y| format_y(*y))
        .draw()?;
    for l in panel {
        let style = colour(&l.key).stroke_width(if l.baseline { 1 } else { 3 });
        if l.single {
            chart.draw_series(DashedLineSeries::new(l.points.iter().copied(), 8, 5, style))?;
        } else {
            chart.draw_series(LineSeries::new(l.points.iter().copied(), style))?;
        }
        let radius = if l.baseline { 2 } else { 4 };
        if l.paced {
            chart.draw_series(
                l.points.iter().map(|&(x, y)| {
                    TriangleMarker::new((x, y), radius + 2, colour(&l.key).filled())
                }),
            )?;
        } else {
            chart.draw_series(
                l.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), radius, colour(&l.key).filled())),
            )?;
        }
    }
    Ok(())
}
