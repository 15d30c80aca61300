//! The replays' charts, as SVG.
//!
//! The engine replay's: hit rate over time (top) and tier occupancy (bottom) under a title that
//! names the configuration. The top panel's caption carries the headline (second-half hit rate)
//! and its ratio to the one-large-G1 reference; both second-half rates are drawn as levels over
//! the second half. A tier that is off (no G3) has no series. The sim replay's: hit rate against
//! capacity per policy. Every panel labels both axes with their units, and legends sit in a
//! column of their own beside the panels, so they never cover a line.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::engine::report::{EngineReport, Sample};
use crate::error::{Error, Result};

type Series<'a> = (&'a str, ShapeStyle, fn(&Sample) -> f64);

/// A constant drawn from a time on: (label, style, from seconds, value).
type Level = (String, ShapeStyle, f64, f64);

type Area<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

/// Width of the legend column beside the panels.
const LEGEND_WIDTH: u32 = 290;

/// Draws the report's time series into an SVG file at `path`, `title` (the configuration, one
/// line per `\n`) on top ([`Error::Chart`] naming the file when drawing or writing fails).
pub fn write_svg(report: &EngineReport, title: &str, path: &Path) -> Result<()> {
    draw(report, title, path).map_err(|e| Error::Chart { path: path.to_path_buf(), reason: e.to_string() })
}

/// Splits `root` into the title (one line per `\n` of `title`) and, below it, the plots and a
/// legend column.
fn frame<'a>(root: &Area<'a>, title: &str) -> Result<(Area<'a>, Area<'a>), Box<dyn std::error::Error>> {
    root.fill(&WHITE)?;
    let lines: Vec<&str> = title.lines().collect();
    let (head, body) = root.split_vertically(12 + 22 * lines.len().max(1) as u32);
    for (i, line) in lines.iter().enumerate() {
        let style = TextStyle::from(("sans-serif", 16).into_font()).pos(Pos::new(HPos::Center, VPos::Top));
        head.draw(&Text::new(line.to_string(), (head.dim_in_pixel().0 as i32 / 2, 8 + 22 * i as i32), style))?;
    }
    let width = body.dim_in_pixel().0;
    Ok(body.split_horizontally(width.saturating_sub(LEGEND_WIDTH)))
}

/// One legend entry: a line sample and its label.
pub(crate) type LegendEntry = (String, ShapeStyle);

/// Draws `entries` in a legend column from `y` down, under `heading`; returns the next free y.
pub(crate) fn legend_column(
    area: &Area<'_>,
    heading: &str,
    entries: &[LegendEntry],
    mut y: i32,
) -> Result<i32, Box<dyn std::error::Error>> {
    let font = ("sans-serif", 14).into_font();
    area.draw(&Text::new(heading.to_string(), (8, y), font.clone()))?;
    y += 22;
    for (label, style) in entries {
        area.draw(&PathElement::new(vec![(8, y + 7), (32, y + 7)], *style))?;
        area.draw(&Text::new(label.clone(), (40, y), font.clone()))?;
        y += 20;
    }
    Ok(y)
}

fn draw(report: &EngineReport, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 760)).into_drawing_area();
    let (plots, legends) = frame(&root, title)?;
    let (top, bottom) = plots.split_vertically(362);
    let (top_legend, bottom_legend) = legends.split_vertically(362);
    let g3_on = report.g3_blocks > 0;
    let end = report.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let thin = |c: RGBColor| c.mix(0.7).stroke_width(1);
    let hit: Vec<Series> = vec![
        ("second half, cumulative (headline)", MAGENTA.stroke_width(3), |s| s.second_half_cumulative_hit_rate),
        ("all tiers, cumulative", BLACK.stroke_width(2), |s| s.cumulative_hit_rate),
        ("all tiers, per interval", thin(BLACK), |s| s.hit_rate),
        ("G1", thin(BLUE), |s| s.g1_hit_rate),
        ("G2", thin(GREEN), |s| s.g2_hit_rate),
        ("G3", thin(RED), |s| s.g3_hit_rate),
    ];
    let hit: Vec<Series> = hit.into_iter().filter(|(name, ..)| g3_on || *name != "G3").collect();
    let from = report.second_half_from_s;
    let h = report.hit_rate.second_half;
    let mut levels: Vec<Level> =
        vec![(format!("tiered, second half: {h:.3}"), MAGENTA.mix(0.5).stroke_width(1), from, h)];
    let title = match &report.reference {
        Some(r) => {
            let orange = RGBColor(230, 120, 0);
            levels.push((
                format!("one G1 of {} blocks, second half: {:.3}", r.g1_blocks, r.second_half),
                orange.stroke_width(2),
                from,
                r.second_half,
            ));
            let ratio = r.ratio.map_or("n/a".to_string(), |x| format!("{x:.2}x"));
            format!(
                "hit rate, second half {h:.3} = {ratio} one large G1 ({:.3}); sim LRU {:.3} / OPT {:.3}",
                r.second_half, r.sim.lru, r.sim.opt
            )
        }
        None => format!("prefix hit rate of the requests admitted; second half {h:.3}"),
    };
    // Hit rates are small next to 1: the axis ends well above the cumulative rates and the
    // levels (per-interval spikes above that are cut off).
    let cumulative = report.samples.iter().flat_map(|s| hit[..2].iter().map(move |(_, _, value)| value(s)));
    let highest = cumulative.chain(levels.iter().map(|l| l.3)).fold(0.0, f64::max);
    let top_end = (highest * 1.6).clamp(0.05, 1.0);
    let axes = ("simulated time (s)", "hit rate (share of prompt tokens)");
    panel(&top, &title, axes, (end, top_end), &report.samples, &hit, &levels)?;
    let mut entries: Vec<LegendEntry> = hit.iter().map(|(name, style, _)| (name.to_string(), *style)).collect();
    entries.extend(levels.iter().map(|(name, style, ..)| (name.clone(), *style)));
    legend_column(&top_legend, "hit rate", &entries, 40)?;
    let used: Vec<Series> = vec![
        ("G1 holding data", BLUE.stroke_width(2), |s| s.g1_used),
        ("G1 held by running requests", CYAN.stroke_width(2), |s| s.g1_in_use),
        ("G2", GREEN.stroke_width(2), |s| s.g2_used),
        ("G3", RED.stroke_width(2), |s| s.g3_used),
    ];
    let used: Vec<Series> = used.into_iter().filter(|(name, ..)| g3_on || *name != "G3").collect();
    let axes = ("simulated time (s)", "used / capacity");
    panel(&bottom, "tier occupancy", axes, (end, 1.0), &report.samples, &used, &[])?;
    let entries: Vec<LegendEntry> = used.iter().map(|(name, style, _)| (name.to_string(), *style)).collect();
    legend_column(&bottom_legend, "occupancy", &entries, 40)?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &Area<'_>,
    title: &str,
    (x_desc, y_desc): (&str, &str),
    (end, y_end): (f64, f64),
    samples: &[Sample],
    series: &[Series],
    levels: &[Level],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..end, 0.0..y_end)?;
    chart.configure_mesh().x_desc(x_desc).y_desc(y_desc).draw()?;
    for &(_, style, value) in series {
        chart.draw_series(LineSeries::new(samples.iter().map(|s| (s.t_s, value(s))), style))?;
    }
    for &(_, style, from, value) in levels {
        chart.draw_series(LineSeries::new([(from.min(end), value), (end, value)], style))?;
    }
    Ok(())
}

/// Draws a compatible replay's hit rate against capacity, one line per policy (and the
/// unbounded-cache ceiling), into an SVG file at `path`, `title` (the configuration, one line
/// per `\n`) on top
/// ([`Error::Chart`] naming it on failure).
pub fn write_sim_svg(report: &super::SimReport, title: &str, path: &Path) -> Result<()> {
    draw_sim(report, title, path).map_err(|e| Error::Chart { path: path.to_path_buf(), reason: e.to_string() })
}

fn draw_sim(report: &super::SimReport, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (1100, 560)).into_drawing_area();
    let (plot, legend) = frame(&root, title)?;
    let unique = report.unique_blocks.max(1) as f64;
    let share = |blocks: u32| 100.0 * blocks as f64 / unique;
    let x_end = report.points.iter().map(|p| share(p.capacity_blocks)).fold(1.0, f64::max);
    let y_end = (report.ceiling_hit_rate * 1.1).clamp(0.05, 1.0);
    let mut chart = ChartBuilder::on(&plot)
        .caption("prefix hit rate (second half) vs cache capacity", ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..x_end, 0.0..y_end)?;
    chart
        .configure_mesh()
        .x_desc("capacity (% of the unique 512-token blocks of the trace)")
        .y_desc("hit rate (share of prompt tokens)")
        .draw()?;
    let mut entries: Vec<LegendEntry> = Vec::new();
    let mut policies: Vec<super::SimPolicy> = Vec::new();
    for p in &report.points {
        if !policies.contains(&p.policy) {
            policies.push(p.policy);
        }
    }
    // one color per policy (there are seven)
    let colors = [BLACK, BLUE, GREEN, MAGENTA, RED, CYAN, RGBColor(230, 120, 0), RGBColor(120, 70, 20)];
    for (i, &policy) in policies.iter().enumerate() {
        let style = colors[i % colors.len()].stroke_width(2);
        let line: Vec<(f64, f64)> = report
            .points
            .iter()
            .filter(|p| p.policy == policy)
            .map(|p| (share(p.capacity_blocks), p.hit_rate))
            .collect();
        chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, style.filled())))?;
        chart.draw_series(LineSeries::new(line, style))?;
        entries.push((policy.name().to_string(), style));
    }
    let ceiling = RGBColor(140, 140, 140).stroke_width(1);
    chart.draw_series(LineSeries::new([(0.0, report.ceiling_hit_rate), (x_end, report.ceiling_hit_rate)], ceiling))?;
    entries.push((format!("unbounded cache: {:.3}", report.ceiling_hit_rate), ceiling));
    legend_column(&legend, "policies", &entries, 40)?;
    root.present()?;
    Ok(())
}
