//! The trace reader on arbitrary text: never panics, rejects a trace at exactly its first bad
//! line (with that line's number and reason), counts skipped lines exactly, and every record it
//! accepts is valid and reads back the same when written out again.
#![no_main]

use kvtier::Error;
use kvtier::trace::{TRACE_BLOCK_TOKENS, Trace, TraceOptions, TraceRecord};
use libfuzzer_sys::fuzz_target;

fn check_record(r: &TraceRecord) {
    assert_eq!(r.hash_ids.len(), r.input_length.div_ceil(TRACE_BLOCK_TOKENS) as usize);
    for i in 0..r.hash_ids.len() {
        let t = r.block_tokens(i);
        assert!((1..=TRACE_BLOCK_TOKENS).contains(&t));
    }
    let ids: Vec<String> = r.hash_ids.iter().map(|id| id.to_string()).collect();
    let line = format!(
        "{{\"timestamp\": {}, \"input_length\": {}, \"output_length\": {}, \"hash_ids\": [{}]}}",
        r.timestamp_ms,
        r.input_length,
        r.output_length,
        ids.join(", ")
    );
    assert_eq!(TraceRecord::parse_line(&line).as_ref(), Ok(r), "{line}");
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    // what each line is on its own
    let verdicts: Vec<Option<Result<TraceRecord, _>>> =
        lines.iter().map(|l| (!l.trim().is_empty()).then(|| TraceRecord::parse_line(l))).collect();
    let first_bad = verdicts.iter().position(|v| matches!(v, Some(Err(_))));
    let good: Vec<&TraceRecord> = verdicts.iter().filter_map(|v| v.as_ref()?.as_ref().ok()).collect();
    for r in &good {
        check_record(r);
    }

    match (Trace::parse_str(&text, &TraceOptions::default()), first_bad) {
        (Ok(trace), None) => {
            assert_eq!(trace.len(), good.len());
            assert!(trace.records().iter().zip(&good).all(|(a, b)| a == *b));
            assert_eq!(trace.skipped_lines(), 0);
        }
        (Err(Error::Trace { line, reason }), Some(i)) => {
            assert_eq!(line, i + 1, "error names the wrong line");
            assert_eq!(verdicts[i].as_ref().unwrap().as_ref().unwrap_err(), &reason);
            assert!(!reason.to_string().is_empty());
        }
        (other, first_bad) => panic!("parse_str gave {other:?}, first bad line index {first_bad:?}"),
    }

    let skipping = Trace::parse_str(&text, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
    assert_eq!(skipping.len(), good.len());
    let bad = verdicts.iter().filter(|v| matches!(v, Some(Err(_)))).count();
    assert_eq!(skipping.skipped_lines(), bad);
    match first_bad {
        Some(i) => {
            let (line, reason) = skipping.first_skipped().expect("a skipped line is reported");
            assert_eq!(line, i + 1);
            assert_eq!(verdicts[i].as_ref().unwrap().as_ref().unwrap_err(), &reason);
        }
        None => assert_eq!(skipping.first_skipped(), None),
    }
    assert_eq!(skipping.prompt_tokens(), good.iter().map(|r| u64::from(r.input_length)).sum::<u64>());
});
