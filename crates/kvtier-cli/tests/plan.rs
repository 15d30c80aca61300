//! `kvtier plan` through the public API: the split of a cluster trace over instances, the
//! multi-GPU sweep, the tier speeds from a probe profile, and the chart.

use kvtier_cli::Error;
use kvtier_cli::plan::profile::TierSpeeds;
use kvtier_cli::plan::route::{AFFINITY_SLACK, Route, assign, split};
use kvtier_cli::plan::{Cluster, PlanConfig, chart, sweep};
use kvtier_cli::probe::{ProbeConfig, Profile, run as probe};
use kvtier_cli::replay::engine::{self, EngineConfig};
use kvtier_cli::trace::{Trace, TraceOptions, TraceRecord};

const SAMPLE: &str = include_str!("../data/conversation_sample.jsonl");

fn sample(requests: usize) -> Trace {
    let trace = Trace::parse_str(SAMPLE, &TraceOptions::default()).expect("the bundled sample parses");
    Trace::from_records(trace.records()[..requests].to_vec())
}

/// `sessions` conversations of `turns` requests, interleaved turn by turn: every request
/// starts with the shared block 0 (a system prompt), then its session's blocks so far.
fn sessions(sessions: u64, turns: u64) -> Trace {
    let mut records = Vec::new();
    for turn in 0..turns {
        for s in 0..sessions {
            let mut ids = vec![0];
            ids.extend((0..=turn).map(|t| 1 + s * 1000 + t));
            let input_length = 512 * ids.len() as u32;
            records.push(TraceRecord { timestamp_ms: turn * 1000 + s, input_length, output_length: 4, hash_ids: ids });
        }
    }
    Trace::from_records(records)
}

#[test]
fn round_robin_balances_the_requests() {
    let trace = sample(301);
    for n in [1, 2, 3, 4, 7] {
        let to = assign(&trace, n, Route::RoundRobin);
        assert!(to.iter().enumerate().all(|(i, &k)| k == i % n));
        let parts = split(&trace, n, Route::RoundRobin);
        assert_eq!(parts.len(), n);
        let counts: Vec<usize> = parts.iter().map(Trace::len).collect();
        assert_eq!(counts.iter().sum::<usize>(), 301);
        assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1, "{counts:?}");
        for part in &parts {
            assert!(part.records().windows(2).all(|w| w[0].timestamp_ms <= w[1].timestamp_ms), "arrival order");
        }
    }
}

#[test]
fn prefix_affinity_keeps_a_session_together() {
    let trace = sessions(8, 6);
    let to = assign(&trace, 4, Route::PrefixAffinity);
    for s in 0..8 {
        let of_session: Vec<usize> = (0..6).map(|turn| to[turn * 8 + s]).collect();
        assert!(of_session.iter().all(|&k| k == of_session[0]), "session {s} went to {of_session:?}");
    }
    let mut counts = [0; 4];
    to.iter().for_each(|&k| counts[k] += 1);
    assert_eq!(counts, [12; 4], "two sessions per instance");
    // round robin scatters the same sessions (8 sessions over 4 instances: each turn shifts)
    let rr = assign(&trace, 3, Route::RoundRobin);
    assert!((0..8).any(|s| (0..6).any(|t| rr[t * 8 + s] != rr[s])));
}

#[test]
fn prefix_affinity_stays_within_its_load_bound() {
    // every request shares one long prefix: affinity alone would send all of them to one
    // instance; the bound spreads them
    let r = |i: u64| TraceRecord {
        timestamp_ms: i,
        input_length: 512 * 5,
        output_length: 1,
        hash_ids: vec![0, 1, 2, 3, 100 + i],
    };
    let trace = Trace::from_records((0..400).map(r).collect());
    let n = 4;
    let to = assign(&trace, n, Route::PrefixAffinity);
    let mut routed = vec![0usize; n];
    for (i, &k) in to.iter().enumerate() {
        assert!(routed[k] as f64 <= AFFINITY_SLACK * i as f64 / n as f64 + 1.0, "request {i} over the bound");
        routed[k] += 1;
    }
    assert!(routed.iter().all(|&c| c >= 60), "{routed:?}");
    // deterministic
    assert_eq!(to, assign(&trace, n, Route::PrefixAffinity));
}

#[test]
fn one_gpu_is_one_replay_of_the_whole_trace() {
    let trace = sample(300);
    assert_eq!(split(&trace, 1, Route::PrefixAffinity), vec![trace.clone()]);
    let dir = tempfile::tempdir().unwrap();
    let base = EngineConfig::default().with_capacities(2000, 1, 0).with_ssd_dir(dir.path());
    let mut config = PlanConfig::new(base.clone(), vec![1000, 4000], vec![0]);
    config.threads = 2;
    let report = sweep(&trace, &config, |_| {}).unwrap();
    assert_eq!(report.instance_requests, [300]);
    for (p, g2) in report.points.iter().zip([1000, 4000]) {
        let direct =
            engine::run(&trace, &base.clone().with_capacities(2000, g2, 0).with_reference(false), |_| {}).unwrap();
        let r = &direct.report;
        assert_eq!(p.hit_rate, r.hit_rate.second_half);
        assert_eq!([p.hit_rate_g1, p.hit_rate_g2], [r.hit_rate.second_half_g1, r.hit_rate.second_half_g2]);
        assert_eq!(p.prefill_tokens_saved, r.prefill_tokens_saved);
        assert_eq!(p.mean_wait_ms, r.admission_wait.mean_ms);
        assert_eq!(p.p99_wait_ms, r.admission_wait.p99_ms);
        assert_eq!(p.cost_per_hour, p.cluster_cost_per_hour);
    }
    assert!(report.points[1].hit_rate >= report.points[0].hit_rate);
}

#[test]
fn many_gpus_sum_their_instances() {
    let trace = sample(300);
    let dir = tempfile::tempdir().unwrap();
    let base = EngineConfig::default().with_capacities(500, 1, 0).with_ssd_dir(dir.path());
    for route in [Route::RoundRobin, Route::PrefixAffinity] {
        let mut config = PlanConfig::new(base.clone(), vec![2000], vec![0]).with_cluster(Cluster::new(4, 2, route));
        config.threads = 2;
        let report = sweep(&trace, &config, |_| {}).unwrap();
        assert_eq!(report.instance_requests.len(), 2);
        assert_eq!(report.instance_requests.iter().sum::<usize>(), 300);
        let p = &report.points[0];
        assert_eq!(p.instances.len(), 2);
        assert_eq!(p.prefill_tokens_saved, p.instances.iter().map(|i| i.prefill_tokens_saved).sum::<u64>());
        let (hits, tokens) = p
            .instances
            .iter()
            .fold((0, 0), |(h, t), i| (h + i.second_half_hit_tokens, t + i.second_half_prompt_tokens));
        assert_eq!(p.hit_rate, hits as f64 / tokens as f64);
        assert_eq!(p.cluster_cost_per_hour, p.cost_per_hour * 4.0);
        // TP 2 halves the per-GPU page of Llama-3.1-8B (8 KV heads)
        assert_eq!(report.per_gpu_page_bytes * 2, base.layout.page_bytes());
        // each instance is one replay of its share
        let parts = split(&trace, 2, route);
        let per_gpu = Cluster::new(4, 2, route).per_gpu_layout(base.layout).unwrap();
        let engine_config = base.clone().with_layout(per_gpu).with_capacities(500, 2000, 0).with_reference(false);
        let first = engine::run(&parts[0], &engine_config, |_| {}).unwrap();
        assert_eq!(p.instances[0].hit_rate, first.report.hit_rate.second_half);
    }
}

#[test]
fn tensor_parallel_must_divide_the_gpus_and_heads() {
    let base = EngineConfig::default();
    let bad = [Cluster::new(6, 4, Route::RoundRobin), Cluster::new(16, 16, Route::RoundRobin)];
    for cluster in bad {
        let config = PlanConfig::new(base.clone(), vec![100], vec![0]).with_cluster(cluster);
        assert!(matches!(config.validate(), Err(Error::InvalidConfig { setting: "tensor parallel", .. })));
    }
}

#[test]
fn profile_speeds_replace_the_defaults_and_a_bad_profile_names_its_path() {
    let dir = tempfile::tempdir().unwrap();
    let config = ProbeConfig::new(dir.path())
        .with_seconds(0.01)
        .with_scratch_bytes(4 << 20)
        .with_memcpy_bytes(1 << 20)
        .with_page_sizes(vec![2 << 20, 64 << 10]);
    let profile = probe(&config).unwrap();
    let path = dir.path().join("profile.json");
    profile.save(&path).unwrap();
    // (compared with the profile as read back: JSON need not round-trip the last bit of a float)
    let profile = Profile::load(&path).unwrap();
    let speeds = TierSpeeds::load(&path, 1 << 20).unwrap();
    assert_eq!(speeds.g2_bytes_per_sec, profile.memcpy.median_bytes_per_sec);
    assert_eq!(speeds.g3_page_bytes, 2 << 20, "1 MiB pages are nearer 2 MiB than 64 KiB");
    let engine = speeds.apply(EngineConfig::default());
    assert_eq!(engine.g3_onboard_bytes_per_sec, profile.io.pages[0].read.bytes_per_sec);
    assert!(engine.validate().is_ok());
    // a profile measuring nothing is refused, naming the file
    let mut empty = profile.clone();
    empty.io.pages.clear();
    let empty_path = dir.path().join("empty.json");
    empty.save(&empty_path).unwrap();
    let e = TierSpeeds::load(&empty_path, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("empty.json"), "{e}");
    // unreadable and malformed profiles name the file too
    let missing = dir.path().join("missing.json");
    let e = TierSpeeds::load(&missing, 1 << 20).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("missing.json"), "{e}");
    let garbage = dir.path().join("garbage.json");
    std::fs::write(&garbage, "not json").unwrap();
    let e = TierSpeeds::load(&garbage, 1 << 20).unwrap_err();
    assert!(e.to_string().contains("garbage.json"), "{e}");
}

#[test]
fn the_chart_has_a_title_axes_and_the_cheapest_point() {
    let trace = sample(200);
    let dir = tempfile::tempdir().unwrap();
    let base = EngineConfig::default().with_capacities(1000, 1, 0).with_ssd_dir(dir.path());
    let mut config = PlanConfig::new(base, vec![500, 2000], vec![0]);
    config.threads = 2;
    let report = sweep(&trace, &config, |_| {}).unwrap();
    let path = dir.path().join("plan.svg");
    chart::write_svg(&report, "kvtier plan: test title", &path).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    for text in [
        "kvtier plan: test title",
        "GiB, log scale",
        "hit rate (share of prompt tokens)",
        "cost per GPU-hour (price units)",
        "no G3",
        "cheapest at 95 % of the best",
    ] {
        assert!(svg.contains(text), "missing {text:?}");
    }
    assert!(!svg.contains("G3 0 GiB"), "no line for a G3 that is off");
    let mut empty = report.clone();
    empty.points.clear();
    assert!(matches!(chart::write_svg(&empty, "t", &path), Err(Error::Chart { .. })));
}

#[test]
fn an_empty_trace_is_refused_and_idle_instances_report_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let base = EngineConfig::default().with_capacities(1000, 1, 0).with_ssd_dir(dir.path());
    let config = PlanConfig::new(base.clone(), vec![500], vec![0]);
    assert!(matches!(sweep(&Trace::default(), &config, |_| {}), Err(Error::EmptyTrace { skipped_lines: 0, .. })));
    let config = PlanConfig::new(base, vec![500], vec![0]).with_cluster(Cluster::new(8, 1, Route::RoundRobin));
    let report = sweep(&sample(5), &config, |_| {}).unwrap();
    assert_eq!(report.instance_requests, [1, 1, 1, 1, 1, 0, 0, 0]);
    assert_eq!(report.points[0].instances[7].requests, 0);
}

fn kvtier(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_kvtier")).args(args).output().expect("the kvtier binary runs")
}

#[test]
fn the_command_splits_over_gpus_and_writes_the_report_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let out_arg = out.to_str().unwrap();
    let common = ["plan", "--requests", "120", "--g1", "500", "--g2-sizes", "200,800", "--g3-sizes", "0", "--out"];
    let run = kvtier(&[&common[..], &[out_arg, "--gpus", "4", "--tp", "2", "--route", "prefix-affinity"]].concat());
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{stdout}{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("4 GPU(s) = 2 instance(s) x tensor-parallel 2, prefix-affinity"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("plan.json")).unwrap()).unwrap();
    assert_eq!(json["plan"]["cluster"]["route"], "prefix-affinity");
    assert_eq!(json["plan"]["points"][0]["instances"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        json["plan"]["instance_requests"].as_array().unwrap().iter().filter_map(|v| v.as_u64()).sum::<u64>(),
        120
    );
    assert!(std::fs::read_to_string(out.join("plan.svg")).unwrap().contains("prefix-affinity"));
    // refused before the run, naming the flag or the file
    let bad = kvtier(&[&common[..], &[out_arg, "--gpus", "6", "--tp", "4"]].concat());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--tp 4"));
    let missing = dir.path().join("no-profile.json");
    let bad = kvtier(&[&common[..], &[out_arg, "--profile", missing.to_str().unwrap()]].concat());
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no-profile.json"));
}

#[test]
fn a_coarse_sweep_holds_the_same_bytes_and_confirms_the_deciding_points_at_the_layout_blocks() {
    let trace = sample(300);
    let dir = tempfile::tempdir().unwrap();
    let base = EngineConfig::default().with_capacities(2000, 1, 0).with_ssd_dir(dir.path());
    let mut config = PlanConfig::new(base.clone(), vec![1000, 4000], vec![0, 8000]).with_sweep_block_tokens(128);
    config.threads = 2;
    assert_eq!(config.replays(), 4 + 2);
    let report = sweep(&trace, &config, |_| {}).unwrap();
    assert_eq!((report.block_tokens, report.sweep_block_tokens), (16, 128));
    // every point is a replay with 8x larger blocks, 1/8 as many: the same bytes per tier
    let coarse_layout = kvtier::KvLayout::llama_3_1_8b(128).unwrap();
    for (p, (g2, g3)) in report.points.iter().zip([(1000, 0), (1000, 8000), (4000, 0), (4000, 8000)]) {
        assert_eq!([p.g1_blocks, p.g2_blocks, p.g3_blocks], [2000, g2, g3], "capacities stay in layout blocks");
        assert_eq!(p.g2_gib, (g2 * base.layout.page_bytes()) as f64 / (1u64 << 30) as f64);
        let engine = base.clone().with_layout(coarse_layout).with_capacities(250, g2 / 8, g3 / 8).with_reference(false);
        let direct = engine::run(&trace, &engine, |_| {}).unwrap();
        assert_eq!(p.hit_rate, direct.report.hit_rate.second_half);
        assert_eq!(p.mean_wait_ms, direct.report.admission_wait.mean_ms);
    }
    // the best point and the cheapest at target, replayed at the layout's 16-token blocks
    let (best, cheapest) = (report.best().unwrap(), report.cheapest.unwrap());
    let mut expected = vec![best, cheapest];
    expected.dedup();
    assert_eq!(report.confirmed.iter().map(|c| c.index).collect::<Vec<_>>(), expected);
    for c in &report.confirmed {
        let p = &report.points[c.index];
        let engine = base.clone().with_capacities(p.g1_blocks, p.g2_blocks, p.g3_blocks).with_reference(false);
        let direct = engine::run(&trace, &engine, |_| {}).unwrap();
        assert_eq!(c.point.hit_rate, direct.report.hit_rate.second_half);
        assert_eq!(c.point.g2_blocks, p.g2_blocks);
    }
    let fine = |i: usize| report.confirmed.iter().find(|c| c.index == i).unwrap().point.hit_rate;
    assert_eq!(report.confirmation_holds(), Some(fine(cheapest) >= 0.95 * fine(best)));

    // no confirmation when asked for none, or when the sweep already uses the layout's blocks
    config.confirm = false;
    assert!(sweep(&trace, &config, |_| {}).unwrap().confirmed.is_empty());
    let same = PlanConfig::new(base.clone(), vec![1000], vec![0]);
    assert_eq!(same.sweep_block_tokens, 16);
    let report = sweep(&trace, &same, |_| {}).unwrap();
    assert!(report.confirmed.is_empty());
    assert_eq!(report.confirmation_holds(), None);
}

#[test]
fn a_sweep_block_must_be_a_multiple_of_the_layout_block_dividing_the_trace_block() {
    let base = EngineConfig::default();
    for tokens in [0, 8, 24, 1024] {
        let config = PlanConfig::new(base.clone(), vec![100], vec![0]).with_sweep_block_tokens(tokens);
        assert!(
            matches!(config.validate(), Err(Error::InvalidConfig { setting: "sweep block tokens", .. })),
            "{tokens}"
        );
    }
    for tokens in [16, 32, 128, 512] {
        assert!(PlanConfig::new(base.clone(), vec![100], vec![0]).with_sweep_block_tokens(tokens).validate().is_ok());
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let bad = kvtier(&[
        "plan",
        "--requests",
        "50",
        "--g2-sizes",
        "200",
        "--g3-sizes",
        "0",
        "--sweep-block-tokens",
        "24",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("--sweep-block-tokens 24"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}
