//! The trace reader on arbitrary bytes: never panics, rejects a trace at exactly its first bad
//! line (with that line's number and reason), counts skipped lines exactly, and every record it
//! accepts is valid and reads back the same when written out again. As text (`parse_str` of the
//! lossy UTF-8 decoding) and as bytes (`parse_bytes`, where a line that is not UTF-8 is one bad
//! line and the others read as in the text). A line is bad on its own (`parse_line`) or because
//! its timestamp is below the last accepted record's (`TraceReason::Backwards`).
#![no_main]

use kvtier_cli::Error;
use kvtier_cli::trace::{TRACE_BLOCK_TOKENS, Trace, TraceOptions, TraceReason, TraceRecord};
use libfuzzer_sys::fuzz_target;

/// What one line is on its own: `None` for a blank line.
type Verdict = Option<Result<TraceRecord, TraceReason>>;

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

/// The lines of `data` split at `\n` and `\r\n`, the last line ending optional (as `str::lines`).
fn raw_lines(data: &[u8]) -> Vec<&[u8]> {
    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    let last = lines.pop().filter(|l| !l.is_empty());
    let mut lines: Vec<&[u8]> = lines.into_iter().map(|l| l.strip_suffix(b"\r").unwrap_or(l)).collect();
    lines.extend(last);
    lines
}

/// The verdicts of a trace's lines from their verdicts on their own: a record whose timestamp
/// is below the last accepted record's is `Backwards` (and not accepted).
fn in_sequence(alone: Vec<Verdict>) -> Vec<Verdict> {
    let mut last: Option<u64> = None;
    alone
        .into_iter()
        .map(|v| match v {
            Some(Ok(r)) => match last {
                Some(previous_ms) if r.timestamp_ms < previous_ms => {
                    Some(Err(TraceReason::Backwards { previous_ms, timestamp_ms: r.timestamp_ms }))
                }
                _ => {
                    last = Some(r.timestamp_ms);
                    Some(Ok(r))
                }
            },
            other => other,
        })
        .collect()
}

/// Checks a reader (`parse`, with and without skipping) against the verdicts of its lines.
fn check_reader(verdicts: &[Verdict], parse: impl Fn(&TraceOptions) -> Result<Trace, Error>) {
    let first_bad = verdicts.iter().position(|v| matches!(v, Some(Err(_))));
    let good: Vec<&TraceRecord> = verdicts.iter().filter_map(|v| v.as_ref()?.as_ref().ok()).collect();
    let reason_of = |i: usize| verdicts[i].as_ref().and_then(|v| v.as_ref().err()).copied();

    match (parse(&TraceOptions::default()), first_bad) {
        (Ok(trace), None) => {
            assert_eq!(trace.len(), good.len());
            assert!(trace.records().iter().zip(&good).all(|(a, b)| a == *b));
            assert_eq!(trace.skipped_lines(), 0);
        }
        (Err(Error::Trace { path: None, line, reason }), Some(i)) => {
            assert_eq!(line, i + 1, "error names the wrong line");
            assert_eq!(reason_of(i), Some(reason));
            assert!(!reason.to_string().is_empty());
        }
        (other, first_bad) => panic!("the reader gave {other:?}, first bad line index {first_bad:?}"),
    }

    let skipping = parse(&TraceOptions::default().with_skip_bad_lines(true)).unwrap();
    assert_eq!(skipping.len(), good.len());
    let bad = verdicts.iter().filter(|v| matches!(v, Some(Err(_)))).count();
    assert_eq!(skipping.skipped_lines(), bad);
    match first_bad {
        Some(i) => {
            let (line, reason) = skipping.first_skipped().expect("a skipped line is reported");
            assert_eq!(line, i + 1);
            assert_eq!(reason_of(i), Some(reason));
        }
        None => assert_eq!(skipping.first_skipped(), None),
    }
    assert_eq!(skipping.prompt_tokens(), good.iter().map(|r| u64::from(r.input_length)).sum::<u64>());
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines: Vec<&str> = text.lines().collect();
    let alone: Vec<Verdict> =
        lines.iter().map(|l| (!l.trim().is_empty()).then(|| TraceRecord::parse_line(l))).collect();
    for r in alone.iter().filter_map(|v| v.as_ref()?.as_ref().ok()) {
        check_record(r);
    }
    let verdicts = in_sequence(alone.clone());
    check_reader(&verdicts, |options| Trace::parse_str(&text, options));

    // Lossy decoding keeps every ASCII byte, so the raw lines are the text's lines.
    let raw = raw_lines(data);
    assert_eq!(raw.len(), lines.len());
    let byte_verdicts = in_sequence(
        raw.iter()
            .zip(&alone)
            .map(|(line, verdict)| match std::str::from_utf8(line) {
                Ok(_) => verdict.clone(),
                Err(_) => Some(Err(TraceReason::InvalidUtf8)),
            })
            .collect(),
    );
    check_reader(&byte_verdicts, |options| Trace::parse_bytes(data, options));
});
