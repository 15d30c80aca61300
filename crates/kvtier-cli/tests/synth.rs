//! Synthetic traces from Azure rows: CSV parsing, format invariants, determinism and the prefix
//! structure each preset promises, through the public API.

use std::collections::{HashMap, HashSet};

use kvtier_cli::Error;
use kvtier_cli::replay::synth::{
    AzureRecord, SynthConfig, SynthPreset, parse_azure_csv, read_azure_csv, synthesize, trace_stats, write_jsonl,
};
use kvtier_cli::trace::{Trace, TraceOptions, TraceReason};

const HEADER: &str = "TIMESTAMP,ContextTokens,GeneratedTokens";

/// Rows with arrival gaps and lengths that vary like the Azure data, without reading it.
fn rows(n: u64) -> Vec<AzureRecord> {
    (0..n)
        .map(|i| AzureRecord {
            timestamp_ms: 1_700_000_000_000 + 180 * i + (i * 7919) % 97,
            context_tokens: 50 + ((i * 2_654_435_761) % 3_000) as u32,
            generated_tokens: 10 + ((i * 40_503) % 300) as u32,
        })
        .collect()
}

fn csv_error(text: &str) -> (usize, TraceReason) {
    match parse_azure_csv(text) {
        Err(Error::Trace { line, reason, .. }) => (line, reason),
        other => panic!("expected a trace error, got {other:?}"),
    }
}

/// Same id => same parent chain, and one id per 512-token block.
fn check_format(trace: &Trace) {
    let mut parent_of: HashMap<u64, Option<u64>> = HashMap::new();
    for r in trace.records() {
        assert_eq!(r.hash_ids.len(), r.input_length.div_ceil(512) as usize, "{r:?}");
        let mut parent = None;
        for &id in &r.hash_ids {
            let known = *parent_of.entry(id).or_insert(parent);
            assert_eq!(known, parent, "id {id} seen under two parents");
            parent = Some(id);
        }
    }
}

#[test]
fn csv_rows_parse_with_fractional_timestamps_and_any_column_order() {
    let text = format!("{HEADER}\r\n2023-11-16 18:17:03.9799600,4808,10\n\n2023-11-16 18:17:04.0319600,3180,8\n");
    let rows = parse_azure_csv(&text).unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1].timestamp_ms - rows[0].timestamp_ms, 52);
    assert_eq!((rows[0].context_tokens, rows[0].generated_tokens), (4808, 10));
    assert_eq!(rows[0].timestamp_ms % 86_400_000, ((18 * 60 + 17) * 60 + 3) * 1000 + 979);
    let swapped = parse_azure_csv("GeneratedTokens,TIMESTAMP,ContextTokens\n5,1970-01-02 00:00:00,7\n").unwrap();
    assert_eq!(swapped, [AzureRecord { timestamp_ms: 86_400_000, context_tokens: 7, generated_tokens: 5 }]);
    assert_eq!(parse_azure_csv(&format!("{HEADER}\n")).unwrap(), []);
}

#[test]
fn csv_errors_are_typed_with_their_line() {
    assert_eq!(csv_error(""), (1, TraceReason::MissingField("TIMESTAMP")));
    assert_eq!(csv_error("\n  \n"), (1, TraceReason::MissingField("TIMESTAMP")));
    assert_eq!(csv_error("TIMESTAMP,Context,GeneratedTokens\n"), (1, TraceReason::MissingField("ContextTokens")));
    let row = |cells: &str| format!("{HEADER}\n2023-11-16 18:17:03.97,10,1\n{cells}\n");
    assert_eq!(csv_error(&row("2023-11-16 18:17:04,12x,1")), (3, TraceReason::WrongType("ContextTokens")));
    assert_eq!(csv_error(&row("2023-11-16 18:17:04,,1")), (3, TraceReason::WrongType("ContextTokens")));
    assert_eq!(csv_error(&row("2023-11-16 18:17:04,5,-3")), (3, TraceReason::Negative("GeneratedTokens")));
    assert_eq!(csv_error(&row("2023-11-16 18:17:04,5000000000,3")), (3, TraceReason::TooLarge("ContextTokens")));
    assert_eq!(csv_error(&row("2023-11-16 18:17:04,5")), (3, TraceReason::MissingField("GeneratedTokens")));
    assert_eq!(csv_error(&row("2023-13-16 18:17:04,5,1")), (3, TraceReason::WrongType("TIMESTAMP")));
    assert_eq!(csv_error(&row("yesterday,5,1")), (3, TraceReason::WrongType("TIMESTAMP")));
    assert!(matches!(read_azure_csv("/nonexistent/azure.csv"), Err(Error::Io { .. })));
}

#[test]
fn every_preset_keeps_the_format_invariants_and_the_rows_clock() {
    let rows = rows(3_000);
    for preset in SynthPreset::ALL {
        let trace = synthesize(&rows, &preset.config(), 11).unwrap();
        assert_eq!(trace.len(), rows.len());
        check_format(&trace);
        for (r, row) in trace.records().iter().zip(&rows) {
            assert_eq!(r.timestamp_ms, row.timestamp_ms - rows[0].timestamp_ms);
            assert_eq!(r.output_length, row.generated_tokens);
            assert!(r.input_length <= preset.config().max_context_tokens);
        }
        // The JSONL we write is read back unchanged by the trace parser.
        let mut text = Vec::new();
        write_jsonl(&trace, &mut text).unwrap();
        let back = Trace::parse_str(std::str::from_utf8(&text).unwrap(), &TraceOptions::default()).unwrap();
        assert_eq!(back.records(), trace.records(), "{preset:?}");
    }
}

#[test]
fn the_same_seed_gives_the_same_trace_and_another_seed_does_not() {
    let rows = rows(2_000);
    for preset in SynthPreset::ALL {
        let a = synthesize(&rows, &preset.config(), 5).unwrap();
        assert_eq!(a, synthesize(&rows, &preset.config(), 5).unwrap(), "{preset:?}");
        assert_ne!(a, synthesize(&rows, &preset.config(), 6).unwrap(), "{preset:?}");
    }
}

#[test]
fn conversation_follow_ups_extend_an_earlier_whole_prompt() {
    // System prompts shorter than a block and no tool preambles: every full block then holds
    // user text, and sharing one means continuing a session.
    let config = SynthConfig { system_prompt_tokens: (100, 500), tool_share: 0.0, ..SynthPreset::Conv.config() };
    let trace = synthesize(&rows(3_000), &config, 3).unwrap();
    // A request extends an earlier one when it holds that request's last full block (ids are
    // prefix-unique, so it then holds all of them).
    let preamble_blocks = 0;
    let mut ends = HashSet::new();
    let mut extending = 0;
    for r in trace.records() {
        if r.hash_ids.iter().any(|id| ends.contains(id)) {
            extending += 1;
        }
        let full = (r.input_length / 512) as usize;
        if full > preamble_blocks {
            ends.insert(r.hash_ids[full - 1]);
        }
    }
    let share = extending as f64 / trace.len() as f64;
    assert!(share > 0.4, "only {share:.3} of requests continue an earlier prompt");
    // Follow-ups are longer than their row: the history comes first.
    let trace = synthesize(&rows(3_000), &SynthPreset::Conv.config(), 3).unwrap();
    let longer = trace.records().iter().filter(|r| r.input_length > 3_050 + 2_500 + 3_000).count();
    assert!(longer > 100, "{longer}");
}

#[test]
fn code_prompts_keep_the_row_length_and_share_repository_files() {
    let rows = rows(3_000);
    let trace = synthesize(&rows, &SynthPreset::Code.config(), 3).unwrap();
    let mut scans = 0;
    for (r, row) in trace.records().iter().zip(&rows) {
        // Code requests are exactly the row's length; the 5 % one-offs add a system prompt.
        if r.input_length != row.context_tokens {
            scans += 1;
        }
    }
    assert!(scans < rows.len() / 10, "{scans}");
    let stats = trace_stats(&trace);
    assert!(stats.reused_block_share > 0.2, "{stats:?}");
}

#[test]
fn mixed_has_more_one_off_blocks_than_conv() {
    let rows = rows(3_000);
    let seen_once = |trace: &Trace| {
        let mut count: HashMap<u64, u32> = HashMap::new();
        trace.records().iter().flat_map(|r| &r.hash_ids).for_each(|id| *count.entry(*id).or_default() += 1);
        count.values().filter(|&&n| n == 1).count() as f64 / count.len() as f64
    };
    let conv = synthesize(&rows, &SynthPreset::Conv.config(), 1).unwrap();
    let mixed = synthesize(&rows, &SynthPreset::Mixed.config(), 1).unwrap();
    assert!(seen_once(&mixed) > seen_once(&conv), "{} vs {}", seen_once(&mixed), seen_once(&conv));
}

#[test]
fn bad_configs_and_names_are_rejected() {
    let bad = |config: SynthConfig| matches!(synthesize(&rows(3), &config, 0), Err(Error::InvalidConfig { .. }));
    let base = SynthConfig::default;
    assert!(bad(SynthConfig { max_context_tokens: 1_000, ..base() }));
    assert!(bad(SynthConfig { popularity_zipf: f64::NAN, ..base() }));
    assert!(bad(SynthConfig { system_prompt_tokens: (10, 5), ..base() }));
    assert!(bad(SynthConfig { projects: 0, ..base() }));
    assert!(bad(SynthConfig { edit_prob: 1.5, ..base() }));
    let mut no_mix = base();
    no_mix.mix.chat = 0.0;
    no_mix.mix.scan = 0.0;
    assert!(bad(no_mix));
    assert!(synthesize(&[], &base(), 0).unwrap().is_empty());
    for preset in SynthPreset::ALL {
        assert_eq!(SynthPreset::from_name(preset.name()).unwrap(), preset);
    }
    assert!(matches!(SynthPreset::from_name("lru"), Err(Error::InvalidConfig { setting: "preset", .. })));
}
