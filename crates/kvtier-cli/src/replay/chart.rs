//! The engine replay's chart: hit rate over time (top) and tier occupancy (bottom), as SVG.
//! The top panel's title carries the headline (second-half hit rate) and its ratio to the
//! one-large-G1 reference; both second-half rates are drawn as levels over the second half.

use std::path::Path;

use plotters::prelude::*;

use super::engine::report::{EngineReport, Sample};
use crate::error::{Error, Result};

type Series<'a> = (&'a str, ShapeStyle, fn(&Sample) -> f64);

/// A constant drawn from a time on: (label, style, from seconds, value).
type Level = (String, ShapeStyle, f64, f64);

/// Draws the report's time series into an SVG file at `path` ([`Error::Chart`] naming it when
/// drawing or writing fails).
pub fn write_svg(report: &EngineReport, path: &Path) -> Result<()> {
    draw(report, path).map_err(|e| Error::Chart { path: path.to_path_buf(), reason: e.to_string() })
}

fn draw(report: &EngineReport, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let (top, bottom) = root.split_vertically(360);
    let end = report.samples.last().map_or(1.0, |s| s.t_s).max(1.0);
    let thin = |c: RGBColor| c.mix(0.7).stroke_width(1);
    let hit: [Series; 6] = [
        ("second half, cumulative (headline)", MAGENTA.stroke_width(3), |s| s.second_half_cumulative_hit_rate),
        ("all tiers, cumulative", BLACK.stroke_width(2), |s| s.cumulative_hit_rate),
        ("all tiers, per interval", thin(BLACK), |s| s.hit_rate),
        ("G1", thin(BLUE), |s| s.g1_hit_rate),
        ("G2", thin(GREEN), |s| s.g2_hit_rate),
        ("G3", thin(RED), |s| s.g3_hit_rate),
    ];
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
    panel(&top, &title, (end, top_end), &report.samples, &hit, &levels)?;
    let used: [Series; 4] = [
        ("G1 holding data", BLUE.stroke_width(2), |s| s.g1_used),
        ("G1 held by running requests", CYAN.stroke_width(2), |s| s.g1_in_use),
        ("G2", GREEN.stroke_width(2), |s| s.g2_used),
        ("G3", RED.stroke_width(2), |s| s.g3_used),
    ];
    panel(&bottom, "tier occupancy (fraction of capacity)", (end, 1.0), &report.samples, &used, &[])?;
    root.present()?;
    Ok(())
}

fn panel(
    area: &DrawingArea<SVGBackend<'_>, plotters::coord::Shift>,
    title: &str,
    (end, y_end): (f64, f64),
    samples: &[Sample],
    series: &[Series],
    levels: &[Level],
) -> Result<(), Box<dyn std::error::Error>> {
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(48)
        .build_cartesian_2d(0.0..end, 0.0..y_end)?;
    chart.configure_mesh().x_desc("simulated time (s)").draw()?;
    for &(name, style, value) in series {
        chart
            .draw_series(LineSeries::new(samples.iter().map(|s| (s.t_s, value(s))), style))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    for (name, style, from, value) in levels {
        let style = *style;
        chart
            .draw_series(LineSeries::new([(from.min(end), *value), (end, *value)], style))?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    Ok(())
}

/// Draws a compatible replay's hit rate against capacity, one line per policy (and the
/// unbounded-cache ceiling), into an SVG file at `path` ([`Error::Chart`] naming it on failure).
pub fn write_sim_svg(report: &super::SimReport, title: &str, path: &Path) -> Result<()> {
    draw_sim(report, title, path).map_err(|e| Error::Chart { path: path.to_path_buf(), reason: e.to_string() })
}

fn draw_sim(report: &super::SimReport, title: &str, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let root = SVGBackend::new(path, (960, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let unique = report.unique_blocks.max(1) as f64;
    let share = |blocks: u32| 100.0 * blocks as f64 / unique;
    let x_end = report.points.iter().map(|p| share(p.capacity_blocks)).fold(1.0, f64::max);
    let y_end = (report.ceiling_hit_rate * 1.1).clamp(0.05, 1.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(format!("prefix hit rate vs capacity: {title}"), ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(52)
        .build_cartesian_2d(0.0..x_end, 0.0..y_end)?;
    chart.configure_mesh().x_desc("capacity (% of unique blocks)").y_desc("hit rate").draw()?;
    let mut policies: Vec<super::SimPolicy> = Vec::new();
    for p in &report.points {
        if !policies.contains(&p.policy) {
            policies.push(p.policy);
        }
    }
    let colors = [BLACK, BLUE, GREEN, MAGENTA, RED, CYAN];
    for (i, &policy) in policies.iter().enumerate() {
        let style = colors[i % colors.len()].stroke_width(2);
        let line: Vec<(f64, f64)> = report
            .points
            .iter()
            .filter(|p| p.policy == policy)
            .map(|p| (share(p.capacity_blocks), p.hit_rate))
            .collect();
        chart.draw_series(line.iter().map(|&(x, y)| Circle::new((x, y), 3, style.filled())))?;
        chart
            .draw_series(LineSeries::new(line, style))?
            .label(policy.name())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], style));
    }
    let ceiling = RGBColor(140, 140, 140).stroke_width(1);
    chart
        .draw_series(LineSeries::new([(0.0, report.ceiling_hit_rate), (x_end, report.ceiling_hit_rate)], ceiling))?
        .label("unbounded cache")
        .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], ceiling));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
