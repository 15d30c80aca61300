//! The replays' charts: the configuration in the title, units on every axis, legends beside the
//! panels (never over a line), and no series for a tier that is off.

use kvtier::io::BackendKind;
use kvtier_cli::replay::{EngineConfig, PrefixPlan, SimConfig, SimPolicy, SimReport, chart, engine};
use kvtier_cli::trace::{Trace, TraceOptions};

const SAMPLE: &str = include_str!("../data/conversation_sample.jsonl");

/// Every text of an SVG with its x position, in document order.
fn texts(svg: &str) -> Vec<(f64, String)> {
    svg.split("<text")
        .skip(1)
        .filter_map(|t| {
            let x = t.split("x=\"").nth(1)?.split('"').next()?.parse().ok()?;
            let body = t.split_once('>')?.1.split("</text>").next()?.trim().to_string();
            Some((x, body))
        })
        .collect()
}

fn sample(n: usize) -> Trace {
    let all = Trace::parse_str(SAMPLE, &TraceOptions::default()).unwrap();
    Trace::from_records(all.records()[..n].to_vec())
}

#[test]
fn the_engine_chart_names_its_configuration_and_axes_and_omits_a_tier_that_is_off() {
    let dir = tempfile::tempdir().unwrap();
    let draw = |g3: usize| {
        let config = EngineConfig::default()
            .with_capacities(3000, 2000, g3)
            .with_ssd_dir(dir.path())
            .with_io_backend(BackendKind::Psync)
            .with_reference(false);
        let run = engine::run(&sample(200), &config, |_| {}).unwrap();
        let path = dir.path().join(format!("chart-{g3}.svg"));
        chart::write_svg(&run.report, "kvtier replay: test configuration\nsecond line", &path).unwrap();
        texts(&std::fs::read_to_string(path).unwrap())
    };
    let off = draw(0);
    let labels: Vec<&str> = off.iter().map(|(_, t)| t.as_str()).collect();
    for expected in ["kvtier replay: test configuration", "second line", "used / capacity", "G2"] {
        assert!(labels.contains(&expected), "{expected:?} missing from {labels:?}");
    }
    assert_eq!(labels.iter().filter(|t| **t == "simulated time (s)").count(), 2, "both panels label x");
    assert_eq!(labels.iter().filter(|t| t.starts_with("hit rate (share of prompt tokens)")).count(), 1);
    assert!(!labels.contains(&"G3"), "no G3 series without a G3: {labels:?}");
    let on = draw(500);
    assert_eq!(on.iter().filter(|(_, t)| t == "G3").count(), 2, "G3 in both legends when it is on");
    // legends are in the column right of the panels (the plots end 290 px before the right edge)
    for (x, label) in on.iter().filter(|(_, t)| ["G1", "G2", "G3", "G1 holding data"].contains(&t.as_str())) {
        assert!(*x >= 1100.0 - 290.0, "legend entry {label} at x = {x} lies over a panel");
    }
}

#[test]
fn the_sim_chart_has_a_title_units_and_one_color_per_policy() {
    let dir = tempfile::tempdir().unwrap();
    let plan = PrefixPlan::build(&sample(300));
    let config = SimConfig::default().with_capacities(vec![50, 500]).with_policies(SimPolicy::ALL.to_vec());
    let report = SimReport::run(&plan, &config, |_| {}).unwrap();
    let path = dir.path().join("sim.svg");
    chart::write_sim_svg(&report, "kvtier replay --mode sim: test", &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    let labels: Vec<String> = texts(&svg).into_iter().map(|(_, t)| t).collect();
    for expected in ["kvtier replay --mode sim: test", "capacity (% of the unique 512-token blocks of the trace)"] {
        assert!(labels.iter().any(|l| l == expected), "{expected:?} missing from {labels:?}");
    }
    assert!(labels.iter().any(|l| l.starts_with("hit rate (share of prompt tokens)")));
    // the legend's line samples: one stroke color per policy, and one for the ceiling
    let strokes: Vec<&str> =
        svg.split("<polyline").skip(1).filter_map(|p| p.split("stroke=\"").nth(1)?.split('"').next()).collect();
    let legend = &strokes[strokes.len() - (SimPolicy::ALL.len() + 1)..];
    let mut distinct = legend.to_vec();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), legend.len(), "colors repeat: {legend:?}");
}
