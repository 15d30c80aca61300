//! The plan's chart: hit rate (top) and cost per GPU-hour (bottom) against the capacity behind
//! each GPU, as SVG.
//!
//! The x axis is G2 + G3 per GPU in GiB on a log scale; each line is one G3 size (and one G1
//! size, when G1 is swept too), its points the G2 sizes. The cheapest point reaching the target
//! is ringed on both panels and named in the legend. Only lines with points are drawn.

use std::path::Path;

use plotters::prelude::*;

use super::{PlanPoint, PlanReport};
use crate::error::{Error, Result};

/// One line: its label and its points `(x GiB, point)`, sorted by x.
type Line<'a> = (String, Vec<(f64, &'a PlanPoint)>);

/// Draws `report` into an SVG file at `path`, `title` (the configuration) on top
/// ([`Error::Chart`] naming the file when drawing or writing fails, or when there is no point).
pub fn write_svg(report: &PlanReport, title: &str, path: &Path) -> Result<()> {
    let chart_error = |reason: String| Error::Chart { path: path.to_path_buf(), reason };
    if report.points.is_empty() {
        return Err(chart_error("the plan has no point to draw".into()));
    }
    draw(report, title, path).map_err(|e| chart_error(e.to_string()))
}

/// The x of a point: the offload capacity behind one GPU.
fn offload_gib(p: &PlanPoint) -> f64 {
    p.g2_gib + p.g3_gib
}

fn lines(report: &PlanReport) -> Vec<Line<'_>> {
    let many_g1 = report.points.iter().any(|p| p.g1_blocks != report.points[0].g1_blocks);
    let mut out: Vec<(usize, usize, Line)> = Vec::new();
    for p in &report.points {
        let key = (p.g1_blocks, p.g3_blocks);
        let at = match out.iter().position(|(g1, g3, _)| (*g1, *g3) == key) {
            Some(i) => i,
            None => {
                let g3 = if p.g3_blocks == 0 { "no G3".to_string() } else { format!("G3 {:.0} GiB", p.g3_gib) };
                let label = if many_g1 { format!("G1 {:.0} GiB, {g3}", p.g1_gib) } else { g3 };
                out.push((key.0, key.1, (label, Vec::new())));
                out.len() - 1
            }
        };
        out[at].2.1.push((offload_gib(p), p));
    }
    out.into_iter()
        .map(|(_, _, (label, mut points))| {
            points.sort_by(|a, b| a.0.total_cmp(&b.0));
            (label, points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect()
}

fn draw(report: &PlanReport, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1000, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(36);
    head.titled(title, ("sans-serif", 17))?;
    let (top, bottom) = body.split_vertically(362);
    let lines = lines(report);
    let xs = report.points.iter().map(offload_gib);
    let (x_min, x_max) = xs.fold((f64::MAX, 0.0_f64), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let x_range = (x_min.max(1e-3) / 1.5, x_max.max(1e-3) * 1.5);
    let hit_end = (report.best_hit_rate() * 1.25).clamp(0.05, 1.0);
    let cost_end = report.points.iter().map(|p| p.cost_per_hour).fold(0.0, f64::max).max(1e-6) * 1.2;
    let cheapest = report.cheapest();
    let mark = cheapest.map(|p| {
        let g3 = if p.g3_blocks == 0 { "no G3".to_string() } else { format!("G3 {:.0} GiB", p.g3_gib) };
        format!(
            "cheapest at {:.0} % of the best: G2 {:.0} GiB, {g3}, hit {:.3}, {:.4}/h",
            report.target * 100.0,
            p.g2_gib,
            p.hit_rate,
            p.cost_per_hour
        )
    });
    panel(
        &top,
        "prefix hit rate (second half, all instances)",
        "hit rate",
        x_range,
        hit_end,
        &lines,
        |p| p.hit_rate,
        cheapest,
        mark.as_deref(),
    )?;
    panel(
        &bottom,
        "cost of one GPU's G1 + G2 + G3",
        "cost per GPU-hour",
        x_range,
        cost_end,
        &lines,
        |p| p.cost_per_hour,
        cheapest,
        mark.as_deref(),
    )?;
    root.present()?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    y_desc: &str,
    (x_lo, x_hi): (f64, f64),
    y_end: f64,
    lines: &[Line],
    value: fn(&PlanPoint) -> f64,
    cheapest: Option<&PlanPoint>,
    mark: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0..y_end)?;
    chart
        .configure_mesh()
        .x_desc("G2 + G3 per GPU (GiB, log scale)")
        .y_desc(y_desc)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .draw()?;
    let colors = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
    for (i, (label, points)) in lines.iter().enumerate() {
        let style = colors[i % colors.len()].stroke_width(2);
        let xy: Vec<(f64, f64)> = points.iter().map(|&(x, p)| (x, value(p))).collect();
        chart.draw_series(xy.iter().map(|&(x, y)| Circle::new((x, y), 3, style.filled())))?;
        chart
            .draw_series(LineSeries::new(xy, style))?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    if let (Some(p), Some(mark)) = (cheapest, mark) {
        let ring = RGBColor(230, 120, 0).stroke_width(3);
        chart
            .draw_series([Circle::new((offload_gib(p), value(p)), 9, ring)])?
            .label(mark)
            .legend(move |(x, y)| Circle::new((x + 8, y), 5, ring));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}
