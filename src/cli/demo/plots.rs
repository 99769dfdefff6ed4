//! The report's pictures (SVG, plotters): the append latency distribution of every phase with
//! writes, and the timeline of acknowledged writes with the link cut, node B's absence and
//! the giveback shaded.

use super::report::Report;
use anyhow::{anyhow, Result};
use plotters::coord::{CoordTranslate, Shift};
use plotters::prelude::*;
use std::path::Path;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("plot: {e}")
}

/// A white SVG canvas of `size` pixels.
fn canvas(path: &Path, size: (u32, u32)) -> Result<DrawingArea<SVGBackend<'_>, Shift>> {
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    Ok(root)
}

/// A chart with its caption on `root`, room for the axis labels.
fn chart_on<'a, 'b>(
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    caption: String,
) -> ChartBuilder<'a, 'b, SVGBackend<'b>> {
    let mut b = ChartBuilder::on(root);
    b.caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(65);
    b
}

/// Draws the legend and writes the file.
fn finish<'a, 'b: 'a, CT: CoordTranslate>(
    mut chart: ChartContext<'a, SVGBackend<'b>, CT>,
    root: &DrawingArea<SVGBackend<'b>, Shift>,
    position: SeriesLabelPosition,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(position)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    root.present().map_err(err)
}

/// Per phase with writes: the share of its writes in log-spaced latency buckets (10 per
/// decade), as (bucket centre µs, percent).
fn distributions(report: &Report) -> Vec<(String, Vec<(f64, f64)>)> {
    const PER_DECADE: f64 = 10.0;
    report
        .phases
        .iter()
        .filter(|p| p.writes > 0)
        .map(|p| {
            let mut buckets = std::collections::BTreeMap::<i64, u64>::new();
            for [us, n] in &p.latencies {
                let b = ((*us).max(1) as f64).log10() * PER_DECADE;
                *buckets.entry(b.floor() as i64).or_default() += n;
            }
            let total = p.writes.max(1) as f64;
            let points = buckets
                .into_iter()
                .map(|(b, n)| {
                    (
                        10f64.powf((b as f64 + 0.5) / PER_DECADE),
                        100.0 * n as f64 / total,
                    )
                })
                .collect();
            (p.name.clone(), points)
        })
        .collect()
}

/// The latency histogram.
pub fn histogram(report: &Report, path: &Path) -> Result<()> {
    let series = distributions(report);
    let pts = series.iter().flat_map(|(_, p)| p.iter());
    let (lo, hi, top) = pts.fold((f64::MAX, 1f64, 1f64), |(lo, hi, top), (x, y)| {
        (lo.min(*x), hi.max(*x), top.max(*y))
    });
    let lo = if lo == f64::MAX { 1.0 } else { lo / 1.5 };
    let root = canvas(path, (900, 500))?;
    let caption = format!(
        "Shadowed append latency per phase ({} B records, {} provider)",
        report.record_size, report.fabric
    );
    let mut chart = chart_on(&root, caption)
        .build_cartesian_2d((lo..hi * 1.5).log_scale(), 0f64..top * 1.1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("append latency (µs, log scale)")
        .y_desc("% of the phase's writes")
        .draw()
        .map_err(err)?;
    for (i, (name, points)) in series.into_iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        chart
            .draw_series(LineSeries::new(points, color.stroke_width(2)))
            .map_err(err)?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    finish(chart, &root, SeriesLabelPosition::UpperRight)
}

/// The failover/giveback timeline.
pub fn timeline(report: &Report, path: &Path) -> Result<()> {
    let end_s = report
        .events
        .iter()
        .map(|e| e.at_ms)
        .chain(report.acked_over_time.iter().map(|p| p[0]))
        .fold(1.0, f64::max)
        / 1e3;
    let top = report
        .acked_over_time
        .iter()
        .map(|p| p[1])
        .fold(10.0, f64::max)
        * 1.1;
    let root = canvas(path, (1000, 500))?;
    let caption = format!(
        "Writes acknowledged by node B: link cut, kill -9, takeover and giveback ({})",
        report.topology
    );
    let mut chart = chart_on(&root, caption)
        .build_cartesian_2d(0f64..end_s * 1.02, 0f64..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since the demo started (s)")
        .y_desc("writes acknowledged by B's writer")
        .draw()
        .map_err(err)?;
    for (i, span) in report.spans.iter().enumerate() {
        let color = COLORS[(i + 1) % COLORS.len()];
        let (a, b) = (span.from_ms / 1e3, span.to_ms / 1e3);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(a, 0.0), (b, top)],
                color.mix(0.2).filled(),
            )))
            .map_err(err)?
            .label(span.what.clone())
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], color.mix(0.4).filled())
            });
    }
    // One line per writer: a new one starts when the count drops.
    let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for [t, n] in &report.acked_over_time {
        let last = runs.last_mut().expect("one run at least");
        if last.last().is_some_and(|(_, m)| n < m) {
            runs.push(Vec::new());
        }
        runs.last_mut()
            .expect("one run at least")
            .push((t / 1e3, *n));
    }
    for (i, run) in runs.into_iter().filter(|r| !r.is_empty()).enumerate() {
        let s = chart
            .draw_series(LineSeries::new(run, COLORS[0].stroke_width(2)))
            .map_err(err)?;
        if i == 0 {
            s.label("acknowledged writes")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], COLORS[0]));
        }
    }
    for e in &report.events {
        let x = e.at_ms / 1e3;
        chart
            .draw_series(std::iter::once(PathElement::new(
                vec![(x, 0.0), (x, top)],
                BLACK.mix(0.25),
            )))
            .map_err(err)?;
    }
    finish(chart, &root, SeriesLabelPosition::UpperLeft)
}
