//! Trace reading and the kvcache-simulator-compatible replay, through the public API.

use kvtier::Error;
use kvtier::replay::{PrefixPlan, SimConfig, SimPolicy, SimReport};
use kvtier::trace::{Trace, TraceOptions, TraceReason, TraceRecord};

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
            Err(Error::Trace { line, reason: got }) => assert_eq!((line, got), (5, reason), "{bad}"),
            other => panic!("{bad}: {other:?}"),
        }
        let skipped = Trace::parse_str(&text, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
        assert_eq!((skipped.len(), skipped.skipped_lines(), skipped.first_skipped()), (4, 1, Some((5, reason))));
    }
}

#[test]
fn reading_a_missing_file_is_an_io_error() {
    let err = Trace::read_path("/nonexistent/kvtier/trace.jsonl", &TraceOptions::default()).unwrap_err();
    assert!(matches!(err, Error::TraceIo { .. }), "{err:?}");
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
