//! Trace reading, the kvcache-simulator-compatible replay and the engine replay, through the
//! public API and the `kvtier` command.

use std::path::PathBuf;
use std::process::Command;

use kvtier::io::BackendKind;
use kvtier_cli::Error;
use kvtier_cli::replay::{EngineConfig, PrefixPlan, SimConfig, SimPolicy, SimReport, engine};
use kvtier_cli::trace::{Trace, TraceOptions, TraceReason, TraceRecord};

const SAMPLE: &str = include_str!("../data/conversation_sample.jsonl");

fn record(ids: &[u64]) -> TraceRecord {
    TraceRecord { timestamp_ms: 0, input_length: 512 * ids.len() as u32, output_length: 1, hash_ids: ids.to_vec() }
}

fn line(input_length: i64, ids: &str) -> String {
    format!(r#"{{"timestamp": 10, "input_length": {input_length}, "output_length": 7, "hash_ids": [{ids}]}}"#)
}

#[test]
fn parser_reads_good_lines_and_names_the_first_bad_one() {
    let good = [line(1000, "0, 1"), line(512, "0"), line(1, "5")].join("\n");
    let trace = Trace::parse_str(&good, &TraceOptions::default()).unwrap();
    assert_eq!(trace.len(), 3);
    assert_eq!(
        trace.records()[0],
        TraceRecord { timestamp_ms: 10, input_length: 1000, output_length: 7, hash_ids: vec![0, 1] }
    );
    assert_eq!(trace.prompt_tokens(), 1513);

    let cases: [(String, TraceReason); 5] = [
        ("{\"timestamp\": 10, \"input_length\": 3,".to_string(), TraceReason::BadJson),
        (
            r#"{"timestamp": 10, "output_length": 7, "hash_ids": [1]}"#.to_string(),
            TraceReason::MissingField("input_length"),
        ),
        (line(-512, "1"), TraceReason::Negative("input_length")),
        (line(1025, "1, 2"), TraceReason::BlockCount { hash_ids: 2, expected: 3 }),
        (line(512, "\"x\""), TraceReason::WrongType("hash_ids")),
    ];
    for (bad, reason) in cases {
        let text = format!("{good}\n\n{bad}\n{}\n", line(512, "9"));
        match Trace::parse_str(&text, &TraceOptions::default()) {
            Err(Error::Trace { line, reason: got, .. }) => assert_eq!((line, got), (5, reason), "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
        let skipped = Trace::parse_str(&text, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
        assert_eq!((skipped.len(), skipped.skipped_lines(), skipped.first_skipped()), (4, 1, Some((5, reason))));
    }
}

#[test]
fn reading_a_missing_file_is_an_io_error() {
    let err = Trace::read_path("/nonexistent/kvtier/trace.jsonl", &TraceOptions::default()).unwrap_err();
    assert!(matches!(err, Error::Io { .. }), "{err:?}");
}

#[test]
fn same_trace_and_config_give_the_same_report() {
    let trace = Trace::parse_str(SAMPLE, &TraceOptions::default()).unwrap();
    let config = SimConfig::default().with_policies(vec![SimPolicy::Fifo, SimPolicy::Lru, SimPolicy::Opt]);
    let run = || SimReport::run(&PrefixPlan::build(&trace), &config, |_| {}).unwrap();
    let first = run();
    assert_eq!(first, run());
    assert_eq!(serde_json::to_string(&first).unwrap(), serde_json::to_string(&run()).unwrap());
    assert_eq!(first.points.len(), 15);
}

#[test]
fn bundled_sample_shows_eviction_and_reuse() {
    let trace = Trace::parse_str(SAMPLE, &TraceOptions::default()).unwrap();
    assert_eq!(trace.len(), 3000);
    let plan = PrefixPlan::build(&trace);
    let report = SimReport::run(&plan, &SimConfig::default(), |_| {}).unwrap();
    assert_eq!((report.requests, report.warmup_requests, report.unique_blocks), (3000, 1500, 55_287));
    let lru: Vec<f64> = report.points.iter().filter(|p| p.policy == SimPolicy::Lru).map(|p| p.hit_rate).collect();
    let opt: Vec<f64> = report.points.iter().filter(|p| p.policy == SimPolicy::Opt).map(|p| p.hit_rate).collect();
    // Hit tokens of kvcache-simulator 0.1.3 on this very file
    // (`../shared/tools/refsim.sh data/conversation_sample.jsonl 512 1,5,10,25,50`).
    let reference = [
        (552, 776_192, 2_880_474),
        (2764, 1_202_782, 5_845_510),
        (5528, 2_556_378, 7_300_877),
        (13821, 5_172_742, 7_300_877),
        (27643, 6_706_589, 7_300_877),
    ];
    for (pair, (capacity, lru_hits, opt_hits)) in report.points.chunks(2).zip(reference) {
        assert_eq!((pair[0].capacity_blocks, pair[0].hit_tokens), (capacity, lru_hits));
        assert_eq!((pair[1].capacity_blocks, pair[1].hit_tokens), (capacity, opt_hits));
    }
    assert!((report.ceiling_hit_rate - 0.3730941204925743).abs() < 1e-12);
    // More cache never hurts; LRU <= OPT <= the unbounded ceiling; the small caches evict.
    assert!(lru.windows(2).all(|w| w[0] <= w[1]) && opt.windows(2).all(|w| w[0] <= w[1]));
    assert!(lru.iter().zip(&opt).all(|(l, o)| l <= o && *o <= report.ceiling_hit_rate + 1e-12));
    assert!(lru[0] < 0.5 * report.ceiling_hit_rate && report.points.iter().all(|p| !p.underfilled));
}

#[test]
fn hand_checked_trace() {
    // Two conversations sharing system prompt 0, each turn extending its own history; one-block
    // prompt 9 in between. Warm-up = the first 3 requests.
    //   r0 [0 1]     r1 [0 2]     r2 [9]       | measured:
    //   r3 [0 1 3]   r4 [0 2 4]   r5 [9]
    let trace = Trace::from_records(
        [&[0, 1][..], &[0, 2], &[9], &[0, 1, 3], &[0, 2, 4], &[9]].iter().map(|ids| record(ids)).collect(),
    );
    let plan = PrefixPlan::build(&trace);
    assert_eq!((plan.unique_blocks(), plan.measured_tokens()), (6, 512 * 7));
    let hits = |policy, capacity| plan.simulate(policy, capacity).hit_tokens / 512;
    // Unbounded: r3 hits 0 1, r4 hits 0 2, r5 hits 9 -> 5 of 7 blocks.
    assert_eq!(plan.ceiling_hit_tokens() / 512, 5);
    // 4 blocks hold {0 1 2 9} after warm-up. r3 hits 0 1, then 3 evicts the coldest leaf 2.
    // r4 hits 0 only; inserting 2 evicts 9 (coldest), inserting 4 evicts 3. r5 misses.
    assert_eq!(hits(SimPolicy::Lru, 4), 3);
    // OPT at 4: r3 hits 0 1 and skips 3 (never needed again); r4 hits 0 2 and skips 4; r5 hits 9.
    assert_eq!(hits(SimPolicy::Opt, 4), 5);
    // 2 blocks: warm-up ends with {0 9}. r3 hits 0; inserting 1 evicts 9, inserting 3 can only
    // evict 1 (0 is on the hit path), which cuts 3 off: the rest of r3 is not cached. r4 hits 0,
    // caches 2, and again cannot keep 4. r5 misses -> 2 blocks.
    assert_eq!(hits(SimPolicy::Lru, 2), 2);
    let rate = plan.simulate(SimPolicy::Lru, 4).hit_rate;
    assert!((rate - 3.0 / 7.0).abs() < 1e-12);
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("replay-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn timed(ms: u64, output: u32, ids: &[u64]) -> TraceRecord {
    TraceRecord {
        timestamp_ms: ms,
        input_length: 512 * ids.len() as u32,
        output_length: output,
        hash_ids: ids.to_vec(),
    }
}

#[test]
fn engine_replay_is_deterministic_and_uses_every_tier() {
    let all = Trace::parse_str(SAMPLE, &TraceOptions::default()).unwrap();
    let trace = Trace::from_records(all.records()[..400].to_vec());
    let dir = tmp("engine-determinism");
    // G2 keeps what G1 gives up (the most recent 65,536 pages, ~80 requests' worth), so all
    // three tiers serve hits here (with 32,768 G2 pages every reuse comes after G2 turned over).
    let config = EngineConfig::default()
        .with_capacities(4096, 65_536, 16_384)
        .with_write_through_g2(false)
        .with_ssd_dir(&dir)
        .with_io_backend(BackendKind::Psync)
        .with_samples(20)
        .with_prefetch_waiting(0); // prefetched pages are found in G2: no G3 hit would be left
    let a = engine::run(&trace, &config, |_| {}).unwrap();
    let b = engine::run(&trace, &config, |_| {}).unwrap();
    assert_eq!(a.report, b.report, "same trace and configuration, different report");
    assert_eq!(serde_json::to_string(&a.report).unwrap(), serde_json::to_string(&b.report).unwrap());
    let r = &a.report;
    assert_eq!((r.requests, r.finished + r.rejected), (400, 400));
    assert_eq!(r.prompt_tokens, trace.prompt_tokens());
    assert_eq!(r.prefill_tokens_saved, r.hit_tokens.total());
    assert!(r.hit_tokens.g1 > 0 && r.hit_tokens.g2 > 0 && r.hit_tokens.g3 > 0, "{:?}", r.hit_tokens);
    assert!((r.hit_rate.all_requests - (r.hit_rate.g1 + r.hit_rate.g2 + r.hit_rate.g3)).abs() < 1e-12);
    let h = &r.hit_rate;
    assert!((h.second_half - (h.second_half_g1 + h.second_half_g2 + h.second_half_g3)).abs() < 1e-12);
    assert_eq!(r.verification.mismatches, 0);
    // every page served, from every tier, was checked (re-admissions after a preemption too)
    let checked = r.verification.pages_checked;
    assert!(checked.g1 >= r.hit_tokens.g1 / 16 && checked.g2 >= r.hit_tokens.g2 / 16, "{checked:?}");
    assert!(checked.g3 >= r.hit_tokens.g3 / 16 && checked.g3 > 0, "{checked:?}");
    let down = r.traffic("G1", "G2").unwrap();
    assert!(down.pages > 0);
    assert_eq!((down.bytes_moved, down.bytes_at_model), (down.pages * 64, down.pages * (2 << 20)));
    assert!(r.traffic("G3", "G1").unwrap().pages > 0);
    assert!(r.peaks.g1_in_use <= 4096 && r.peaks.g2_used <= 65_536 && r.peaks.g3_used <= 16_384);
    assert!(!r.samples.is_empty() && r.samples.iter().all(|s| (0.0..=1.0).contains(&s.hit_rate)));
    assert!(a.timing.decode_step.count > 0 && a.timing.add_sequence.count >= 400 - r.rejected as u64);
    // With prefetch, waiting requests find their G3 pages in G2 (verified like every page).
    let p = engine::run(&trace, &config.clone().with_prefetch_waiting(8), |_| {}).unwrap().report;
    assert!(p.prefetched_requests > 0 && p.traffic("G3", "G2").unwrap().pages > 0, "{:?}", p.traffic);
    assert!(
        p.hit_tokens.g2 > r.hit_tokens.g2 && p.hit_tokens.g3 < r.hit_tokens.g3,
        "{:?} {:?}",
        p.hit_tokens,
        r.hit_tokens
    );
    assert_eq!(p.verification.mismatches, 0);
    assert_eq!(r.traffic("G3", "G2").unwrap().pages, 0);
    // the G3 directory made for the run is gone
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn engine_replay_shares_in_g1_and_onboards_from_g2() {
    let dir = tmp("engine-hand");
    // 1. r1 arrives after r0 ended: r0's two trace blocks (64 blocks of 16 tokens) hit in G1.
    let trace = Trace::from_records(vec![timed(0, 2, &[1, 2]), timed(10_000, 2, &[1, 2, 3])]);
    let config = EngineConfig::default().with_capacities(1000, 1000, 0).with_ssd_dir(&dir);
    let r = engine::run(&trace, &config, |_| {}).unwrap().report;
    assert_eq!((r.hit_tokens.g1, r.hit_tokens.g2, r.hit_tokens.g3), (1024, 0, 0));
    assert_eq!(r.prefill_tokens_computed, 1024 + 512);
    assert_eq!(r.decode_tokens, 4);
    // 2. A 100-block G1: r1 pushes r0's prefix out of G1 (written through to G2); r2 onboards
    //    it from G2 (also the blocks its own onboarding pushed out: a second round).
    let trace =
        Trace::from_records(vec![timed(0, 1, &[1, 2]), timed(10_000, 1, &[5, 6]), timed(20_000, 1, &[1, 2, 7])]);
    let config = EngineConfig::default().with_capacities(100, 1000, 0).with_ssd_dir(&dir);
    let r = engine::run(&trace, &config, |_| {}).unwrap().report;
    assert!(r.hit_tokens.g2 > 0, "{:?}", r.hit_tokens);
    assert_eq!(r.hit_tokens.total(), 1024, "the whole shared prefix is served");
    assert_eq!(r.traffic("G2", "G1").unwrap().pages, r.hit_tokens.g2 / 16);
    assert_eq!(r.g1_unbacked_evictions, 0, "write-through: G1 evictions lose nothing");
    // 2b. The same with full-size pages (a 4 KiB layout here): bytes moved are the model's.
    let layout = kvtier::KvLayout::new(1, 2, 32, kvtier::Dtype::F16, 16).unwrap();
    let full = config.clone().with_layout(layout).with_full_data(true);
    let f = engine::run(&trace, &full, |_| {}).unwrap().report;
    assert_eq!((f.hit_tokens, f.payload_page_bytes, f.model_page_bytes), (r.hit_tokens, 4096, 4096));
    let up = f.traffic("G2", "G1").unwrap();
    assert_eq!((up.pages, up.bytes_moved, up.bytes_at_model), (up.pages, up.pages * 4096, up.pages * 4096));
    // 3. A prompt larger than G1 is rejected, the others still run.
    let trace = Trace::from_records(vec![timed(0, 1, &[1, 2, 3, 4]), timed(5, 1, &[9])]);
    let config = EngineConfig::default().with_capacities(100, 100, 0).with_ssd_dir(&dir);
    let r = engine::run(&trace, &config, |_| {}).unwrap().report;
    assert_eq!((r.rejected, r.finished, r.prompt_tokens), (1, 1, 5 * 512));
    // 4. ... also when its prefix was onboarded first (the ticket's blocks are given back).
    let trace = Trace::from_records(vec![
        timed(0, 1, &[1, 2]),
        timed(10_000, 1, &[5, 6]),
        timed(20_000, 1, &[1, 2, 3, 4, 7, 8, 9]),
        timed(30_000, 1, &[1, 2]),
    ]);
    let config = EngineConfig::default().with_capacities(100, 1000, 0).with_ssd_dir(&dir);
    let r = engine::run(&trace, &config, |_| {}).unwrap().report;
    assert_eq!((r.rejected, r.finished), (1, 3));
    assert!(r.traffic("G2", "G1").unwrap().pages > 0);
    let _ = std::fs::remove_dir_all(dir);
}

fn kvtier(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_kvtier")).args(args).output().unwrap()
}

/// An unusable `--out` or `--ssd-dir` is refused before the replay runs, naming the flag and
/// the path (it used to fail after the whole replay with a bare OS error).
#[test]
fn unusable_output_directories_are_refused_up_front() {
    let dir = tmp("cli-out");
    let file = dir.join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let below_a_file = file.join("out");
    let below = below_a_file.to_str().unwrap();
    for (args, flag) in [
        (vec!["replay", "--mode", "sim", "--out", below], "--out"),
        (vec!["replay", "--mode", "engine", "--out", dir.to_str().unwrap(), "--ssd-dir", below], "--ssd-dir"),
        (vec!["plan", "--out", below], "--out"),
    ] {
        let out = kvtier(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} succeeded");
        assert!(err.contains(flag) && err.contains(below), "{args:?}: {err}");
        // refused before replaying anything: no report, no progress output
        assert!(out.stdout.is_empty(), "{args:?} ran: {}", String::from_utf8_lossy(&out.stdout));
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn malformed_trace_fails_with_its_line_number_and_writes_nothing() {
    let dir = tmp("cli-bad");
    let bad = dir.join("bad.jsonl");
    std::fs::write(&bad, [line(1000, "0, 1"), line(512, "0"), line(-3, "1")].join("\n")).unwrap();
    for mode in ["sim", "engine", "both"] {
        let out = dir.join(format!("out-{mode}"));
        let o = kvtier(&["replay", "--mode", mode, "--trace", bad.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(!o.status.success(), "{mode}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        let expected = format!("{}: line 3: field `input_length` is negative", bad.display());
        assert!(stderr.contains(&expected), "{mode}: {stderr}");
        assert!(!out.exists(), "{mode}: a failed run left {}", out.display());
    }
    // Bad flags are refused before anything runs or is written, too, and the error says which
    // flag, which value, and what it accepts.
    let good = dir.join("good.jsonl");
    std::fs::write(&good, [line(1000, "0, 1"), line(512, "0")].join("\n")).unwrap();
    let out = dir.join("out-flags");
    let cases: [(&[&str], &[&str]); 6] = [
        (&["--g1", "4XB"], &["--g1", "4XB", "unknown unit"]),
        (&["--g1", "0"], &["--g1 0", "at least 1 block"]),
        (&["--g2", "1KiB"], &["--g2 1024B (0 blocks)", "at least 1 block"]),
        (&["--capacity", "0"], &["--capacity 0", "at least 1 block"]),
        (&["--layout", "foo"], &["--layout", "foo", "llama-3.1-8b", "mistral-7b"]),
        (&["--block-size", "24"], &["--block-size 24", "must divide 512"]),
    ];
    for (flags, expected) in cases {
        let mut args = vec!["--mode", "both", "--trace", good.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(flags);
        let o = kvtier(&args);
        assert!(!o.status.success(), "{flags:?}");
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(expected.iter().all(|e| stderr.contains(e)), "{flags:?}: {stderr}");
        assert!(!out.exists());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_line_that_is_not_utf8_is_a_bad_line_the_reader_and_the_command_can_skip() {
    let dir = tmp("utf8");
    let path = dir.join("latin1.jsonl");
    let mut bytes = [line(1000, "0, 1"), line(512, "0")].join("\n").into_bytes();
    bytes.extend_from_slice(b"\n{\"timestamp\": 1, \"note\": \"caf\xe9\"}\n");
    bytes.extend_from_slice(line(512, "0").as_bytes());
    std::fs::write(&path, &bytes).unwrap();
    match Trace::read_path(&path, &TraceOptions::default()) {
        Err(Error::Trace { path: Some(p), line, reason }) => {
            assert_eq!((p, line, reason), (path.clone(), 3, TraceReason::InvalidUtf8))
        }
        other => panic!("{other:?}"),
    }
    let trace = Trace::read_path(&path, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
    assert_eq!((trace.len(), trace.skipped_lines()), (3, 1));
    assert_eq!(trace.first_skipped(), Some((3, TraceReason::InvalidUtf8)));
    let last = TraceRecord { timestamp_ms: 10, input_length: 512, output_length: 7, hash_ids: vec![0] };
    assert_eq!(trace.records()[2], last, "the line after the skipped one is read");

    let out = dir.join("out");
    let (path, out_dir) = (path.to_str().unwrap(), out.to_str().unwrap());
    let o =
        kvtier(&["replay", "--mode", "sim", "--skip-bad-lines", "--capacity", "4", "--trace", path, "--out", out_dir]);
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{stderr}");
    assert!(stdout.contains("requests     3 (1 warm-up, 2 measured), bad lines skipped: 1"), "{stdout}");
    assert!(stdout.contains("first skipped: line 3: not UTF-8 text"), "{stdout}");
    let o = kvtier(&["replay", "--mode", "sim", "--capacity", "4", "--trace", path, "--out", out_dir]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{path}: line 3: not UTF-8 text")));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn engine_mode_writes_report_and_chart() {
    let dir = tmp("cli-engine");
    let trace = dir.join("t.jsonl");
    std::fs::write(&trace, [line(1000, "0, 1"), line(1500, "0, 1, 2"), line(512, "7")].join("\n")).unwrap();
    let out = dir.join("out");
    let o = kvtier(&[
        "--mode",
        "engine",
        "--g1",
        "4GiB",
        "--g3",
        "64MiB",
        "--trace",
        trace.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("hit rate") && stdout.contains("G1->G2"), "{stdout}");
    assert!(stdout.contains("second half (headline") && stdout.contains("tiered / one large G1 = "), "{stdout}");
    assert!(stdout.contains("0 wrong") && stdout.contains("drive writes per day"), "{stdout}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("replay_engine.json")).unwrap()).unwrap();
    let report = &json["report"];
    assert_eq!(report["g1_blocks"], 2048); // 4 GiB of 2 MiB Llama-3.1-8B blocks
    assert_eq!(report["g3_blocks"], 32);
    assert_eq!(report["requests"], 3);
    // r1 finds r0's 62 full blocks (1000 tokens) in G1: the second half (r1, r2) hits 992 of 2012
    let second_half = report["hit_rate"]["second_half"].as_f64().unwrap();
    assert!((second_half - 992.0 / 2012.0).abs() < 1e-12, "{second_half}");
    assert_eq!(report["reference"]["g1_blocks"], 2048 + 65_536 + 32);
    assert_eq!(report["reference"]["ratio"], 1.0);
    assert_eq!(report["reference"]["sim"]["capacity_blocks"], (2048 + 65_536 + 32) * 16 / 512);
    assert_eq!(report["verification"]["pages_checked"]["g1"], 62);
    assert_eq!(report["verification"]["mismatches"], 0);
    assert!(report["ssd_wear"]["drive_writes_per_day"].is_number());
    let svg = std::fs::read_to_string(out.join("replay_engine.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("1.00x one large G1"), "the chart shows the ratio");
    let leftovers: Vec<_> = std::fs::read_dir(&out).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    // --no-reference skips it
    let args =
        ["--mode", "engine", "--no-reference", "--trace", trace.to_str().unwrap(), "--out", out.to_str().unwrap()];
    let o = kvtier(&args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("replay_engine.json")).unwrap()).unwrap();
    assert!(json["report"]["reference"].is_null());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn policy_all_compares_every_policy_and_charts_them() {
    let dir = tmp("cli-policies");
    let out = dir.join("out");
    let o = kvtier(&["--mode", "sim", "--policy", "all", "--capacity", "100,400", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    for name in ["fifo", "lru", "s3fifo", "arc", "lhd", "adaptive", "opt"] {
        assert!(stdout.contains(name), "{name} missing: {stdout}");
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("replay_sim.json")).unwrap()).unwrap();
    let points = json["report"]["points"].as_array().unwrap();
    let n = SimPolicy::ALL.len();
    assert_eq!(points.len(), 2 * n);
    // OPT bounds every online policy at each capacity.
    for row in points.chunks(n) {
        let opt = row[n - 1]["hit_rate"].as_f64().unwrap();
        assert_eq!(row[n - 1]["policy"], "opt");
        assert!(row.iter().all(|p| p["hit_rate"].as_f64().unwrap() <= opt + 1e-12), "{row:?}");
    }
    assert!(std::fs::read_to_string(out.join("replay_sim.svg")).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn synth_writes_a_trace_the_replay_reads() {
    let dir = tmp("cli-synth");
    let csv = dir.join("a.csv");
    let rows: Vec<String> = (0..200)
        .map(|i| format!("2023-11-16 18:{:02}:{:02}.0000000,{},{}", i / 60, i % 60, 300 + 37 * (i % 20), 50 + i % 90))
        .collect();
    std::fs::write(&csv, format!("TIMESTAMP,ContextTokens,GeneratedTokens\n{}\n", rows.join("\n"))).unwrap();
    let trace = dir.join("t.jsonl");
    let o = kvtier(&["synth", "--csv", csv.to_str().unwrap(), "--preset", "conv", "--out", trace.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = Trace::read_path(&trace, &TraceOptions::default()).unwrap();
    assert_eq!(t.len(), 200);
    let plan = PrefixPlan::build(&t);
    assert!(plan.unique_blocks() < plan.block_events(), "a conversation workload reuses blocks");
    let bad = kvtier(&["synth", "--csv", trace.to_str().unwrap(), "--out", dir.join("x").to_str().unwrap()]);
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("TIMESTAMP"));
    let _ = std::fs::remove_dir_all(dir);
}

/// Issue 15, item 3: the replay's G3 directory is made under an unpredictable name (mode 0700)
/// and only what the replay made is removed: a user's directory with the old predictable name
/// (`kvtier-replay-g3-<pid>-<n>`, which the replay deleted at start and exit) survives, the
/// parents of a nested `--ssd-dir` that the replay created are gone afterwards, a parent that
/// existed stays, and a directory everyone may write without the sticky bit is refused.
#[test]
fn replay_scratch_dir_is_unpredictable_and_removes_only_its_own() {
    use std::os::unix::fs::PermissionsExt;
    let all = Trace::parse_str(SAMPLE, &TraceOptions::default()).unwrap();
    let trace = Trace::from_records(all.records()[..40].to_vec());
    let base = tmp("scratch");
    for n in 0..64 {
        let user = base.join(format!("kvtier-replay-g3-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&user).unwrap();
        std::fs::write(user.join("keep"), b"a user's file").unwrap();
    }
    let config = |dir: &std::path::Path| {
        EngineConfig::default()
            .with_capacities(64, 64, 256)
            .with_ssd_dir(dir)
            .with_io_backend(BackendKind::Psync)
            .with_reference(false)
    };
    // Watch the directory while the replay runs.
    let mut seen = Vec::new();
    engine::run(&trace, &config(&base), |_| {
        for e in std::fs::read_dir(&base).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            if std::fs::metadata(e.path().join("keep")).is_err() && !seen.iter().any(|(n, _)| *n == name) {
                seen.push((name, e.metadata().unwrap().permissions().mode() & 0o7777));
            }
        }
    })
    .unwrap();
    assert_eq!(seen.len(), 1, "one G3 directory of the replay: {seen:?}");
    let (name, mode) = &seen[0];
    let suffix = name.strip_prefix("kvtier-replay-g3-").unwrap();
    assert!(!suffix.starts_with(&std::process::id().to_string()), "{name} is predictable");
    assert_eq!(*mode, 0o700, "{name}");
    // Afterwards: the replay's directory is gone, every user directory is still there.
    assert_eq!(std::fs::read_dir(&base).unwrap().count(), 64);
    for n in 0..64 {
        let keep = base.join(format!("kvtier-replay-g3-{}-{n}", std::process::id())).join("keep");
        assert_eq!(std::fs::read(keep).unwrap(), b"a user's file");
    }
    // A nested --ssd-dir: the parents the replay created go, the one that existed stays.
    let nested = base.join("a").join("b").join("c");
    engine::run(&trace, &config(&nested), |_| {}).unwrap();
    assert!(!base.join("a").exists(), "created parents are removed");
    assert!(base.is_dir());
    // Writable by everyone without the sticky bit: refused; with it (as /tmp): fine.
    let open = base.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = engine::run(&trace, &config(&open), |_| {}).unwrap_err();
    assert!(matches!(err, Error::InvalidConfig { setting: "ssd dir", .. }), "{err}");
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    engine::run(&trace, &config(&open), |_| {}).unwrap();
    assert_eq!(std::fs::read_dir(&open).unwrap().count(), 0);
    let _ = std::fs::remove_dir_all(base);
}

/// Issue 15, item 2 through the command, with two unprivileged users where this runs as root:
/// in a shared 1777 `--ssd-dir`, an attacker (`nobody`) has planted 1777 directories
/// `kvtier-replay-g3-<pid>-0` for the next pids with `g3.index` linked to the victim's file.
/// The victim's replay (uid 54321, through `setpriv`) could not remove them or the links
/// (sticky bits), used one and wrote a G3 header into its own file through the link. Now it
/// succeeds in a directory of its own; the victim's file and the planted ones are untouched.
#[test]
fn another_user_cannot_plant_the_replay_directory() {
    use std::os::unix::fs::PermissionsExt;
    const VICTIM: u32 = 54321;
    const NOBODY: u32 = 65534;
    let dir = tmp("two-users");
    let shared = dir.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, b"").unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = dir.join("out");
    std::fs::create_dir(&out).unwrap();
    if std::os::unix::fs::chown(&victim, Some(VICTIM), Some(VICTIM)).is_err()
        || std::os::unix::fs::chown(&out, Some(VICTIM), Some(VICTIM)).is_err()
    {
        eprintln!("skipped: cannot act as other users here (needs root)");
        let _ = std::fs::remove_dir_all(dir);
        return;
    }
    // Planted as root and handed to the attacker (planting as `nobody` through a shell would
    // use up the very pids it plants for).
    let first = std::process::id();
    for n in first..first + 400 {
        let d = shared.join(format!("kvtier-replay-g3-{n}-0"));
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("g3.index")).unwrap();
        std::os::unix::fs::lchown(d.join("g3.index"), Some(NOBODY), Some(NOBODY)).unwrap();
        std::os::unix::fs::lchown(&d, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let trace = dir.join("t.jsonl");
    std::fs::write(&trace, [line(1000, "0, 1"), line(1500, "0, 1, 2"), line(512, "7")].join("\n")).unwrap();
    let run = Command::new("setpriv")
        .args([&format!("--reuid={VICTIM}"), &format!("--regid={VICTIM}"), "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_kvtier"))
        .args(["--mode", "engine", "--g3", "64MiB", "--trace"])
        .arg(&trace)
        .arg("--out")
        .arg(&out)
        .arg("--ssd-dir")
        .arg(&shared)
        .output();
    let Ok(o) = run else {
        eprintln!("skipped: no setpriv here");
        let _ = std::fs::remove_dir_all(dir);
        return;
    };
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let written = std::fs::read(&victim).unwrap().len();
    assert_eq!(written, 0, "{written} bytes written into the victim's file through a planted link");
    assert_eq!(std::fs::metadata(&victim).unwrap().permissions().mode() & 0o7777, 0o644);
    let entries: Vec<_> = std::fs::read_dir(&shared).unwrap().map(|e| e.unwrap()).collect();
    assert_eq!(entries.len(), 400, "the planted directories stay, the replay's own is gone");
    for e in entries {
        assert!(std::fs::symlink_metadata(e.path().join("g3.index")).unwrap().file_type().is_symlink());
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn onboard_rule_loads_only_what_beats_recomputing() {
    let dir = tmp("engine-rule");
    // r2 finds r0's 64-block prefix in G2 (r1 pushed it out of a 100-block G1).
    let trace =
        Trace::from_records(vec![timed(0, 1, &[1, 2]), timed(10_000, 1, &[5, 6]), timed(20_000, 1, &[1, 2, 7])]);
    let fast = EngineConfig::default().with_capacities(100, 1000, 0).with_ssd_dir(&dir).with_prefetch_waiting(0);
    let mut slow = fast.clone();
    slow.g2_onboard_bytes_per_sec = 1e6; // 2 s a page against 0.16 ms of prefill per block
    // Counted, not followed: the slow G2 is still read, the rule says it should not have been.
    let counted = engine::run(&trace, &slow, |_| {}).unwrap().report;
    let c = counted.onboard_choices;
    assert!(!c.acted && counted.hit_tokens.g2 > 0, "{:?}", counted.hit_tokens);
    assert!(c.decisions >= 1 && c.load_none >= 1 && c.blocks_recomputed > 0, "{c:?}");
    assert!(c.seconds_rule < c.seconds_load_all, "{c:?}");
    // Followed: nothing comes from G2, the prefix below G1 is recomputed.
    let followed = engine::run(&trace, &slow.clone().with_onboard_rule(true), |_| {}).unwrap().report;
    assert!(followed.onboard_choices.acted);
    assert_eq!(followed.hit_tokens.g2, 0, "{:?}", followed.hit_tokens);
    assert_eq!(followed.traffic("G2", "G1").unwrap().pages, 0);
    assert!(followed.prefill_tokens_computed > counted.prefill_tokens_computed);
    // A fast G2 is loaded with the rule on, as without it.
    let f = engine::run(&trace, &fast.with_onboard_rule(true), |_| {}).unwrap().report;
    assert!(f.hit_tokens.g2 > 0 && f.onboard_choices.load_all >= 1, "{:?}", f.onboard_choices);
    assert_eq!(f.onboard_choices.blocks_recomputed, 0);
    assert_eq!(f.verification.mismatches + followed.verification.mismatches, 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn g4_and_from_request_misuse_is_refused_before_the_run_naming_the_flag() {
    let out = std::env::temp_dir().join(format!("kvtier-g4-flags-{}", std::process::id()));
    let out = out.to_str().unwrap();
    let cases: [(&[&str], &str); 6] = [
        (&["replay", "--mode", "engine", "--oracle-horizon", "60", "--out", out], "--oracle-horizon"),
        (
            &["replay", "--mode", "engine", "--admission", "oracle", "--oracle-horizon", "0", "--out", out],
            "--oracle-horizon",
        ),
        (&["replay", "--mode", "engine", "--g4", "http://127.0.0.1:6379", "--out", out], "--g4"),
        (&["replay", "--mode", "engine", "--g4", "redis://", "--out", out], "--g4"),
        (&["replay", "--mode", "engine", "--from-request", "3000", "--out", out], "--from-request"),
        (&["plan", "--g4", "redis://:hunter2@127.0.0.1:6379", "--out", out], "--g4"),
    ];
    for (args, flag) in cases {
        let o = kvtier(args);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} ran");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
        assert!(!stderr.contains("hunter2"), "a password was printed: {stderr}");
    }
    assert!(!std::path::Path::new(out).exists(), "a refused run wrote its output directory");
}
