//! The plan's chart: hit rate (top) and cost per GPU-hour (bottom) against the capacity behind
//! each GPU, as SVG.
//!
//! The x axis is G2 + G3 per GPU in GiB on a log scale (drawn as log2, labelled in GiB at the
//! powers of two); each line is one G3 size (and one G1 size, when G1 is swept too), its points
//! the G2 sizes. The cheapest point reaching the target
//! is ringed on both panels and named in the legend, which has a column of its own beside the
//! panels (it covers no point). Only lines with points are drawn.

use std::path::Path;

use plotters::prelude::*;

use super::{PlanPoint, PlanReport};
use crate::error::{Error, Result};
use crate::replay::chart::{LegendEntry, legend_column};

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

/// Colors of the lines, in order.
const COLORS: [RGBColor; 6] = [BLUE, RED, GREEN, MAGENTA, CYAN, BLACK];
/// The ring around the cheapest point.
const RING: RGBColor = RGBColor(230, 120, 0);

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn draw(report: &PlanReport, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1040, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(36);
    head.titled(title, ("sans-serif", 17))?;
    // the legend gets its own column, so that it never covers a point
    let (plots, legend_area) = body.split_horizontally(760);
    let (top, bottom) = plots.split_vertically(362);
    let lines = lines(report);
    // x is drawn as log2(GiB) on a linear axis, labelled in GiB at the powers of two
    let xs = report.points.iter().map(|p| offload_gib(p).max(1e-3).log2());
    let (x_min, x_max) = xs.fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(x), hi.max(x)));
    let x_range = (x_min - 0.5, x_max + 0.5);
    let hit_end = (report.best_hit_rate() * 1.25).clamp(0.05, 1.0);
    let cost_end = report.points.iter().map(|p| p.cost_per_hour).fold(0.0, f64::max).max(1e-6) * 1.2;
    let cheapest = report.cheapest();
    let hit: Panel =
        ("prefix hit rate (second half, all instances)", "hit rate (share of prompt tokens)", hit_end, |p| p.hit_rate);
    panel(&top, hit, x_range, &lines, cheapest)?;
    let cost: Panel =
        ("cost of one GPU's G1 + G2 + G3", "cost per GPU-hour (price units)", cost_end, |p| p.cost_per_hour);
    panel(&bottom, cost, x_range, &lines, cheapest)?;
    legend(&legend_area, report, &lines)?;
    root.present()?;
    Ok(())
}

/// A panel: caption, y axis label, y axis end, the value drawn.
type Panel = (&'static str, &'static str, f64, fn(&PlanPoint) -> f64);

fn panel(
    area: &Area<'_>,
    (caption, y_desc, y_end, value): Panel,
    (x_lo, x_hi): (f64, f64),
    lines: &[Line],
    cheapest: Option<&PlanPoint>,
) -> Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d(x_lo..x_hi, 0.0..y_end)?;
    let gib_label = |x: &f64| {
        let whole = x.round();
        if (x - whole).abs() < 1e-6 { format!("{}", 2f64.powf(whole)) } else { String::new() }
    };
    chart
        .configure_mesh()
        .x_desc("G2 + G3 per GPU (GiB, log scale)")
        .y_desc(y_desc)
        .x_labels(((x_hi - x_lo).ceil() as usize + 1).max(2))
        .x_label_formatter(&gib_label)
        .draw()?;
    for (i, (_, points)) in lines.iter().enumerate() {
        let style = COLORS[i % COLORS.len()].stroke_width(2);
        let xy: Vec<(f64, f64)> = points.iter().map(|&(x, p)| (x.max(1e-3).log2(), value(p))).collect();
        chart.draw_series(xy.iter().map(|&(x, y)| Circle::new((x, y), 3, style.filled())))?;
        chart.draw_series(LineSeries::new(xy, style))?;
    }
    if let Some(p) = cheapest {
        let at = (offload_gib(p).max(1e-3).log2(), value(p));
        chart.draw_series([Circle::new(at, 9, RING.stroke_width(3))])?;
    }
    Ok(())
}

/// The legend column: one entry per line, then the cheapest point.
fn legend(area: &Area<'_>, report: &PlanReport, lines: &[Line]) -> Result<(), Box<dyn std::error::Error>> {
    let font = ("sans-serif", 14).into_font();
    let entries: Vec<LegendEntry> = lines
        .iter()
        .enumerate()
        .map(|(i, (label, _))| (label.clone(), COLORS[i % COLORS.len()].stroke_width(2)))
        .collect();
    let mut y = legend_column(area, "lines (points: G2 sizes)", &entries, 36)?;
    if let Some(p) = report.cheapest() {
        y += 12;
        area.draw(&Circle::new((20, y + 7), 7, RING.stroke_width(3)))?;
        let g3 = if p.g3_blocks == 0 { "no G3".to_string() } else { format!("G3 {:.0} GiB", p.g3_gib) };
        let text = [
            format!("cheapest at {:.0} % of the best", report.target * 100.0),
            format!("G1 {:.0} GiB, G2 {:.0} GiB, {g3}", p.g1_gib, p.g2_gib),
            format!("hit rate {:.3}, {:.4} per GPU-hour", p.hit_rate, p.cost_per_hour),
        ];
        for line in text {
            area.draw(&Text::new(line, (40, y), font.clone()))?;
            y += 18;
        }
    }
    Ok(())
}
