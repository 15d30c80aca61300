//! What every engine replay measures besides its own hit rate, through the public API: the
//! second-half headline, the one-large-G1 reference and its ratio, the verification of every
//! page served (and that a wrong page fails the replay), and the SSD wear.

use std::path::PathBuf;

use kvtier::io::BackendKind;
use kvtier::offload::Admission;
use kvtier_cli::Error;
use kvtier_cli::replay::engine::verify::Mismatch;
use kvtier_cli::replay::{EngineConfig, PrefixPlan, SimPolicy, engine};
use kvtier_cli::trace::{Trace, TraceRecord};

fn timed(ms: u64, ids: &[u64]) -> TraceRecord {
    TraceRecord { timestamp_ms: ms, input_length: 512 * ids.len() as u32, output_length: 1, hash_ids: ids.to_vec() }
}

fn tmp(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("measure-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Two conversations, each coming back once, the returns in the second half:
/// r0 [1 2], r1 [5 6] | r2 [1 2 7], r3 [5 6 8]. Each request ends before the next arrives.
fn two_conversations() -> Trace {
    Trace::from_records(vec![
        timed(0, &[1, 2]),
        timed(10_000, &[5, 6]),
        timed(20_000, &[1, 2, 7]),
        timed(30_000, &[5, 6, 8]),
    ])
}

#[test]
fn the_headline_is_the_second_half_and_the_reference_comes_with_its_ratio() {
    let dir = tmp("reference");
    let trace = two_conversations();
    // Room for everything: r2 and r3 each find their two-block history (1,024 of 1,536 tokens).
    let roomy = EngineConfig::default().with_capacities(1000, 1000, 0).with_ssd_dir(&dir);
    let r = engine::run(&trace, &roomy, |_| {}).unwrap().report;
    assert_eq!((r.second_half_prompt_tokens, r.second_half_hit_tokens.total()), (3072, 2048));
    assert_eq!(r.hit_rate.second_half, 2048.0 / 3072.0);
    assert_eq!(r.hit_rate.all_requests, 2048.0 / 5120.0, "the cold start counts only here");
    assert_eq!(r.second_half_from_s, 20.0);
    let reference = r.reference.as_ref().unwrap();
    assert_eq!(reference.g1_blocks, 2000);
    assert_eq!((reference.second_half, reference.all_requests), (2048.0 / 3072.0, 2048.0 / 5120.0));
    assert_eq!((reference.ratio, reference.ratio_all_requests), (Some(1.0), Some(1.0)));

    // A G1 of 100 blocks and a G2 of 10: the first conversation's pages leave G1 while the
    // second runs and G2 keeps only a few of them. The flat 110-block G1 keeps more.
    let tight = EngineConfig::default().with_capacities(100, 10, 0).with_ssd_dir(&dir);
    let r = engine::run(&trace, &tight, |_| {}).unwrap().report;
    let reference = r.reference.as_ref().unwrap();
    assert_eq!(reference.g1_blocks, 110);
    assert!(reference.second_half > r.hit_rate.second_half, "{} vs {reference:?}", r.hit_rate.second_half);
    assert_eq!(reference.ratio, Some(r.hit_rate.second_half / reference.second_half));
    assert!(reference.ratio.unwrap() < 1.0);
    // The simulator-compatible rates are at the same capacity in 512-token blocks: 110 x 16 / 512.
    let plan = PrefixPlan::build(&trace);
    assert_eq!(reference.sim.capacity_blocks, 3);
    assert_eq!(reference.sim.lru, plan.simulate(SimPolicy::Lru, 3).hit_rate);
    assert_eq!(reference.sim.opt, plan.simulate(SimPolicy::Opt, 3).hit_rate);
    // ... and can be left out.
    let r = engine::run(&trace, &tight.clone().with_reference(false), |_| {}).unwrap().report;
    assert!(r.reference.is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn every_page_served_from_any_tier_is_checked() {
    let dir = tmp("verify");
    let trace = two_conversations();
    // A 100-block G1 that gives up most of each conversation while the other runs, a 64-page
    // G2, a G3 that takes every spill. (That every tier serves, and is checked, on a real
    // trace: tests/replay.rs, `engine_replay_is_deterministic_and_uses_every_tier`.)
    let config = EngineConfig::default()
        .with_capacities(100, 64, 1000)
        .with_admission(Admission::All)
        .with_ssd_dir(&dir)
        .with_io_backend(BackendKind::Psync);
    let r = engine::run(&trace, &config, |_| {}).unwrap().report;
    let v = r.verification;
    assert_eq!(r.preemptions, 0);
    // Each served block is checked once (no preemption, so every admission is a first one),
    // split by tier as the hit tokens are.
    let blocks = |tokens: u64| tokens / 16;
    assert_eq!(v.pages_checked.g1, blocks(r.hit_tokens.g1));
    assert_eq!(v.pages_checked.g2, blocks(r.hit_tokens.g2));
    assert_eq!(v.pages_checked.g3, blocks(r.hit_tokens.g3));
    assert!(v.pages_checked.total() > 0, "{v:?}");
    assert_eq!((v.mismatches, v.first_mismatch, v.stamp_bytes), (0, None, 64));
    // Every full block computed was stamped: prompts, plus decode blocks that filled (none here).
    assert_eq!(v.pages_stamped, blocks(r.prompt_tokens - r.hit_tokens.total()));
    assert!(r.reference.unwrap().verification.pages_checked.total() > 0);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_page_with_the_wrong_content_fails_the_replay() {
    let dir = tmp("wrong");
    // r0 [1 2], r1 [5 6], r2 [1 2]: r0's first block is written with another hash's bytes, and
    // r2 is served that page from G1 (roomy), from G2 (a 65-block G1 gives all of r0 up to
    // run r1's 65 blocks), or from G3 (and a G2 that only holds r1's pages).
    let trace = Trace::from_records(vec![timed(0, &[1, 2]), timed(10_000, &[5, 6]), timed(20_000, &[1, 2])]);
    let roomy = EngineConfig::default().with_capacities(1000, 1000, 0);
    let g2 = EngineConfig::default().with_capacities(65, 1000, 0);
    let g3 = EngineConfig::default().with_capacities(65, 64, 1000).with_admission(Admission::All);
    for (config, tier) in [(roomy, "G1"), (g2, "G2"), (g3, "G3")] {
        let config = config.with_ssd_dir(&dir).with_io_backend(BackendKind::Psync);
        // the same run without the fault is clean
        let clean = engine::run(&trace, &config, |_| {}).unwrap().report;
        assert_eq!(clean.verification.mismatches, 0);
        match engine::run(&trace, &config.clone().with_wrong_stamp(0), |_| {}) {
            Err(Error::WrongPages { replay, checked, mismatches, first }) => {
                assert_eq!((replay, mismatches), ("tiered", 1), "{tier}");
                assert!(checked >= 1, "{tier}: {checked}");
                assert_eq!(first, Some(Mismatch { request: 2, block: 0, tier }));
            }
            other => panic!("{tier}: a wrong page went unnoticed: {other:?}"),
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn ssd_wear_is_what_g3_wrote_per_hour_and_per_drive() {
    let dir = tmp("wear");
    let trace = two_conversations();
    let config = EngineConfig::default()
        .with_capacities(100, 64, 1000)
        .with_admission(Admission::All)
        .with_ssd_dir(&dir)
        .with_io_backend(BackendKind::Psync)
        .with_reference(false);
    let r = engine::run(&trace, &config, |_| {}).unwrap().report;
    let w = r.ssd_wear.unwrap();
    assert!(w.pages_written > 0 && w.pages_written >= r.traffic("G2", "G3").unwrap().pages, "{w:?}");
    let page = 2u64 << 20;
    assert_eq!((w.bytes_written_at_model, w.capacity_bytes), (w.pages_written * page, 1000 * page));
    let per_hour = w.bytes_written_at_model as f64 * 3600.0 / r.simulated_seconds;
    assert!((w.bytes_per_hour - per_hour).abs() <= 1e-6 * per_hour);
    assert!((w.drive_writes_per_day - per_hour * 24.0 / (1000 * page) as f64).abs() < 1e-9);
    let no_g3 = engine::run(&trace, &config.with_capacities(100, 64, 0), |_| {}).unwrap().report;
    assert!(no_g3.ssd_wear.is_none());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn the_admission_oracle_keeps_what_returns_and_writes_less_than_admitting_all() {
    let dir = tmp("oracle");
    // A conversation (3 trace blocks = 96 pages), ten one-off prompts of 64 pages each that
    // nothing asks for again, then the conversation returns. G3 holds 200 pages: admitting
    // every spill lets the one-offs push the conversation out; the oracle declines them once
    // G3 is full (it admits everything while G3 has room, as every filter does). G1 holds the
    // conversation and one one-off.
    let mut records = vec![timed(0, &[1, 2, 3])];
    records.extend((0..10).map(|k| timed(10_000 * (k + 1), &[100 + 2 * k, 101 + 2 * k])));
    records.push(timed(200_000, &[1, 2, 3, 4]));
    let trace = Trace::from_records(records);
    let config = EngineConfig::default()
        .with_capacities(160, 64, 200)
        .with_ssd_dir(&dir)
        .with_io_backend(BackendKind::Psync)
        .with_reference(false);
    let all = engine::run(&trace, &config.clone().with_admission(Admission::All), |_| {}).unwrap().report;
    let oracle =
        engine::run(&trace, &config.clone().with_admission_oracle(Some(f64::INFINITY)), |_| {}).unwrap().report;
    assert_eq!(oracle.admission, "oracle");
    let written = |r: &kvtier_cli::replay::EngineReport| r.ssd_wear.as_ref().unwrap().pages_written;
    assert!(written(&oracle) < written(&all), "{} vs {}", written(&oracle), written(&all));
    assert!(oracle.admission_declined > 0);
    // the return finds its whole history in G3; admitting all lost it
    let last = oracle.hit_tokens.total();
    assert_eq!((last, oracle.hit_tokens.g3, all.hit_tokens.total()), (1536, 1536, 0));
    assert_eq!(oracle.verification.mismatches, 0);
    let _ = std::fs::remove_dir_all(dir);
}
