//! Request traces in the Mooncake JSONL format.
//!
//! Public LLM serving traces (Mooncake / Kimi FAST'25 release and traces converted to its format)
//! describe one request per line: `{"timestamp": ms, "input_length": tokens, "output_length":
//! tokens, "hash_ids": [id, ...]}`. Each hash id stands for one [`TRACE_BLOCK_TOKENS`]-token block
//! of the prompt, and equal ids mean equal prefix content, so a trace carries the prefix structure
//! a KV cache can exploit without carrying any token.
//!
//! ## How a trace is read
//! 1. The bytes are split into lines (`\n` or `\r\n`); blank lines are ignored, line numbers
//!    count every line from 1. A line that is not UTF-8 is a bad line
//!    ([`TraceReason::InvalidUtf8`]), like any other.
//! 2. Each line is decoded into a [`TraceRecord`] and validated: all four fields present, lengths
//!    and ids non-negative integers, and `len(hash_ids) == ceil(input_length / 512)`.
//! 3. Timestamps must not go backwards: a line earlier than the line before it is a bad line
//!    ([`TraceReason::Backwards`]). Sim mode replays in file order and engine mode by arrival
//!    time, so an unsorted trace would mean two different workloads; sort it first (e.g.
//!    `jq -c -s 'sort_by(.timestamp)[]' in.jsonl > out.jsonl`). Equal timestamps are fine.
//! 4. The first bad line fails the whole read with [`Error::Trace`] (file, line number and a
//!    [`TraceReason`]), so no partial trace is ever replayed as if it were the whole one; with
//!    [`TraceOptions::with_skip_bad_lines`] bad lines are counted and skipped instead.
//!
//! ```
//! use kvtier_cli::trace::{Trace, TraceOptions};
//! let text = "{\"timestamp\": 0, \"input_length\": 600, \"output_length\": 9, \"hash_ids\": [7, 8]}\n";
//! let trace = Trace::parse_str(text, &TraceOptions::default())?;
//! assert_eq!(trace.records()[0].hash_ids, [7, 8]);
//! assert_eq!(trace.records()[0].block_tokens(1), 88); // the partial last block
//! # Ok::<(), kvtier_cli::Error>(())
//! ```

use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// Tokens stood for by one hash id of a Mooncake-format trace.
pub const TRACE_BLOCK_TOKENS: u32 = 512;

/// One request of a trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceRecord {
    /// Arrival time in milliseconds from the start of the trace (fractions are dropped).
    pub timestamp_ms: u64,
    /// Prompt length in tokens.
    pub input_length: u32,
    /// Generated tokens.
    pub output_length: u32,
    /// One id per [`TRACE_BLOCK_TOKENS`]-token block of the prompt; the last block may be partial.
    pub hash_ids: Vec<u64>,
}

impl TraceRecord {
    /// Tokens in block `index` of the prompt: [`TRACE_BLOCK_TOKENS`], except for a partial last
    /// block (at least 1, like kvcache-simulator counts it).
    ///
    /// ```
    /// # use kvtier_cli::trace::TraceRecord;
    /// let r = TraceRecord { timestamp_ms: 0, input_length: 1030, output_length: 1, hash_ids: vec![1, 2, 3] };
    /// assert_eq!((r.block_tokens(0), r.block_tokens(2)), (512, 6));
    /// ```
    pub fn block_tokens(&self, index: usize) -> u32 {
        let start = index as u64 * TRACE_BLOCK_TOKENS as u64;
        (self.input_length as u64).saturating_sub(start).clamp(1, TRACE_BLOCK_TOKENS as u64) as u32
    }

    /// Decodes and validates one line (without its line number).
    ///
    /// ```
    /// # use kvtier_cli::trace::{TraceReason, TraceRecord};
    /// let bad = TraceRecord::parse_line(r#"{"timestamp": 0, "input_length": -1, "output_length": 1, "hash_ids": []}"#);
    /// assert_eq!(bad, Err(TraceReason::Negative("input_length")));
    /// ```
    pub fn parse_line(line: &str) -> std::result::Result<Self, TraceReason> {
        // A serde struct also accepts a JSON array of its fields; a record must be an object.
        if !line.trim_start().starts_with('{') {
            return Err(if serde_json::from_str::<serde_json::Value>(line).is_ok() {
                TraceReason::NotAnObject
            } else {
                TraceReason::BadJson
            });
        }
        let raw: RawRecord = serde_json::from_str(line).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => classify_data_error(line),
            _ => TraceReason::BadJson,
        })?;
        let timestamp = raw.timestamp.ok_or(TraceReason::MissingField("timestamp"))?;
        let input_length = raw.input_length.ok_or(TraceReason::MissingField("input_length"))?;
        let output_length = raw.output_length.ok_or(TraceReason::MissingField("output_length"))?;
        let hash_ids = raw.hash_ids.ok_or(TraceReason::MissingField("hash_ids"))?;
        let timestamp_ms = timestamp_ms(&timestamp)?;
        let input_length = length("input_length", input_length)?;
        let output_length = length("output_length", output_length)?;
        let expected = input_length.div_ceil(TRACE_BLOCK_TOKENS) as usize;
        if hash_ids.len() != expected {
            return Err(TraceReason::BlockCount { hash_ids: hash_ids.len(), expected });
        }
        Ok(Self { timestamp_ms, input_length, output_length, hash_ids })
    }
}

/// Why a trace line was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceReason {
    /// The line is not valid JSON.
    BadJson,
    /// The line is valid JSON but not an object.
    NotAnObject,
    /// A required field is absent (or `null`).
    MissingField(&'static str),
    /// A field has the wrong JSON type (e.g. a string or fraction where an integer belongs).
    WrongType(&'static str),
    /// A length, timestamp or hash id is negative.
    Negative(&'static str),
    /// A length does not fit in 32 bits.
    TooLarge(&'static str),
    /// The line is not UTF-8 text.
    InvalidUtf8,
    /// The timestamp is earlier than the previous request's (the trace is not in arrival order).
    Backwards {
        /// The previous request's timestamp, milliseconds.
        previous_ms: u64,
        /// This line's, milliseconds.
        timestamp_ms: u64,
    },
    /// `hash_ids` does not hold one id per 512-token block of `input_length`.
    BlockCount {
        /// Ids found.
        hash_ids: usize,
        /// `ceil(input_length / 512)`.
        expected: usize,
    },
}

impl std::fmt::Display for TraceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TraceReason::BadJson => f.write_str("not valid JSON"),
            TraceReason::NotAnObject => f.write_str("not a JSON object"),
            TraceReason::InvalidUtf8 => f.write_str("not UTF-8 text"),
            TraceReason::MissingField(field) => write!(f, "missing field `{field}`"),
            TraceReason::WrongType(field) => write!(f, "field `{field}` has the wrong type"),
            TraceReason::Negative(field) => write!(f, "field `{field}` is negative"),
            TraceReason::TooLarge(field) => write!(f, "field `{field}` is too large"),
            TraceReason::Backwards { previous_ms, timestamp_ms } => write!(
                f,
                "timestamp {timestamp_ms} ms is earlier than the previous request's {previous_ms} ms (sort the trace \
                 by timestamp)"
            ),
            TraceReason::BlockCount { hash_ids, expected } => {
                write!(f, "{hash_ids} hash_ids but input_length needs {expected} ({TRACE_BLOCK_TOKENS}-token blocks)")
            }
        }
    }
}

/// How a trace is read. `Default` rejects the whole trace at its first bad line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TraceOptions {
    skip_bad_lines: bool,
}

impl TraceOptions {
    /// Skip (and count) malformed lines instead of failing. Default: `false`.
    ///
    /// ```
    /// # use kvtier_cli::trace::{Trace, TraceOptions};
    /// let opts = TraceOptions::default().with_skip_bad_lines(true);
    /// let trace = Trace::parse_str("oops\n", &opts)?;
    /// assert_eq!((trace.len(), trace.skipped_lines()), (0, 1));
    /// # Ok::<(), kvtier_cli::Error>(())
    /// ```
    pub fn with_skip_bad_lines(mut self, skip: bool) -> Self {
        self.skip_bad_lines = skip;
        self
    }

    /// Whether malformed lines are skipped.
    pub fn skip_bad_lines(&self) -> bool {
        self.skip_bad_lines
    }
}

/// A whole trace, in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    records: Vec<TraceRecord>,
    skipped_lines: usize,
    first_skipped: Option<(usize, TraceReason)>,
}

impl Trace {
    /// Parses JSONL text (see the module docs for the rules).
    ///
    /// ```
    /// # use kvtier_cli::trace::{Trace, TraceOptions, TraceReason};
    /// let text = "{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}\n{\"timestamp\": 1}\n";
    /// match Trace::parse_str(text, &TraceOptions::default()) {
    ///     Err(kvtier_cli::Error::Trace { line, reason, .. }) => {
    ///         assert_eq!((line, reason), (2, TraceReason::MissingField("input_length")))
    ///     }
    ///     other => panic!("{other:?}"),
    /// }
    /// ```
    pub fn parse_str(text: &str, options: &TraceOptions) -> Result<Self> {
        Self::parse_bytes(text.as_bytes(), options)
    }

    /// Parses JSONL bytes: as [`Trace::parse_str`], except that a line which is not UTF-8 is a
    /// bad line ([`TraceReason::InvalidUtf8`]), skipped with the others when the options say so.
    ///
    /// ```
    /// # use kvtier_cli::trace::{Trace, TraceOptions, TraceReason};
    /// let bytes = b"{\"timestamp\": 0, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}\n\xff\xfe\n";
    /// let trace = Trace::parse_bytes(bytes, &TraceOptions::default().with_skip_bad_lines(true))?;
    /// assert_eq!((trace.len(), trace.first_skipped()), (1, Some((2, TraceReason::InvalidUtf8))));
    /// # Ok::<(), kvtier_cli::Error>(())
    /// ```
    pub fn parse_bytes(bytes: &[u8], options: &TraceOptions) -> Result<Self> {
        let mut trace = Trace::default();
        for (index, line) in lines(bytes).enumerate() {
            let parsed = match std::str::from_utf8(line) {
                Ok(line) if line.trim().is_empty() => continue,
                Ok(line) => TraceRecord::parse_line(line),
                Err(_) => Err(TraceReason::InvalidUtf8),
            };
            let parsed = parsed.and_then(|record| match trace.records.last() {
                Some(previous) if record.timestamp_ms < previous.timestamp_ms => Err(TraceReason::Backwards {
                    previous_ms: previous.timestamp_ms,
                    timestamp_ms: record.timestamp_ms,
                }),
                _ => Ok(record),
            });
            match parsed {
                Ok(record) => trace.records.push(record),
                Err(reason) if options.skip_bad_lines => {
                    trace.skipped_lines += 1;
                    trace.first_skipped.get_or_insert((index + 1, reason));
                }
                Err(reason) => return Err(Error::Trace { path: None, line: index + 1, reason }),
            }
        }
        Ok(trace)
    }

    /// Reads and parses a JSONL file; errors name the file.
    pub fn read_path(path: impl AsRef<Path>, options: &TraceOptions) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|source| Error::Io { op: "read", path: path.to_path_buf(), source })?;
        Self::parse_bytes(&bytes, options).map_err(|e| e.in_file(path))
    }

    /// A trace made of already valid records (tests, generated workloads).
    ///
    /// ```
    /// # use kvtier_cli::trace::{Trace, TraceRecord};
    /// let r = TraceRecord { timestamp_ms: 0, input_length: 512, output_length: 1, hash_ids: vec![1] };
    /// assert_eq!(Trace::from_records(vec![r]).prompt_tokens(), 512);
    /// ```
    pub fn from_records(records: Vec<TraceRecord>) -> Self {
        Self { records, skipped_lines: 0, first_skipped: None }
    }

    /// The requests, in file order.
    pub fn records(&self) -> &[TraceRecord] {
        &self.records
    }

    /// Number of requests.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// True when the trace holds no request.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// The trace itself if it holds at least one request, else [`Error::EmptyTrace`] (which says
    /// when every line was bad). A replay of no request would report rates of nothing.
    ///
    /// ```
    /// # use kvtier_cli::trace::{Trace, TraceOptions};
    /// let trace = Trace::parse_str("oops\n", &TraceOptions::default().with_skip_bad_lines(true))?;
    /// assert!(matches!(trace.require_requests(), Err(kvtier_cli::Error::EmptyTrace { skipped_lines: 1, .. })));
    /// # Ok::<(), kvtier_cli::Error>(())
    /// ```
    pub fn require_requests(&self) -> Result<&Self> {
        match self.records.is_empty() {
            false => Ok(self),
            true => Err(Error::EmptyTrace {
                path: None,
                skipped_lines: self.skipped_lines,
                first_skipped: self.first_skipped,
            }),
        }
    }

    /// Malformed lines skipped (only with [`TraceOptions::with_skip_bad_lines`]).
    pub fn skipped_lines(&self) -> usize {
        self.skipped_lines
    }

    /// Line number and reason of the first skipped line.
    pub fn first_skipped(&self) -> Option<(usize, TraceReason)> {
        self.first_skipped
    }

    /// Sum of `input_length` over all requests.
    pub fn prompt_tokens(&self) -> u64 {
        self.records.iter().map(|r| r.input_length as u64).sum()
    }
}

/// The lines of `bytes` as [`str::lines`] splits text: at `\n` or `\r\n`, the last line ending
/// optional.
fn lines(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(bytes).filter(|b| !b.is_empty());
    std::iter::from_fn(move || {
        let text = rest?;
        match text.iter().position(|&b| b == b'\n') {
            Some(end) => {
                rest = Some(&text[end + 1..]).filter(|b| !b.is_empty());
                Some(text[..end].strip_suffix(b"\r").unwrap_or(&text[..end]))
            }
            None => {
                rest = None;
                Some(text)
            }
        }
    })
}

#[derive(Deserialize)]
struct RawRecord {
    timestamp: Option<serde_json::Number>,
    input_length: Option<i64>,
    output_length: Option<i64>,
    hash_ids: Option<Vec<u64>>,
}

fn timestamp_ms(n: &serde_json::Number) -> std::result::Result<u64, TraceReason> {
    if let Some(ms) = n.as_u64() {
        return Ok(ms);
    }
    match n.as_f64() {
        Some(ms) if ms < 0.0 => Err(TraceReason::Negative("timestamp")),
        Some(ms) if ms.is_finite() && ms < u64::MAX as f64 => Ok(ms as u64),
        _ => Err(TraceReason::TooLarge("timestamp")),
    }
}

fn length(field: &'static str, value: i64) -> std::result::Result<u32, TraceReason> {
    if value < 0 {
        return Err(TraceReason::Negative(field));
    }
    u32::try_from(value).map_err(|_| TraceReason::TooLarge(field))
}

/// A whole number above `max`, `i64::MAX` or `u64::MAX` (JSON reads integers past 64 bits, and
/// exponents, as floats).
fn beyond_integers(v: &serde_json::Value, max: u64) -> bool {
    match v.as_u64() {
        Some(n) => n > max,
        // (`max` is 2^k - 1, which as a float is 2^k: the first whole number past it)
        None => v.as_f64().is_some_and(|n| n >= max as f64 && n.fract() == 0.0),
    }
}

/// Finds which field made typed decoding fail; only runs on a bad line.
fn classify_data_error(line: &str) -> TraceReason {
    let Ok(serde_json::Value::Object(map)) = serde_json::from_str::<serde_json::Value>(line) else {
        return TraceReason::BadJson;
    };
    if map.get("timestamp").is_some_and(|v| !(v.is_null() || v.is_number())) {
        return TraceReason::WrongType("timestamp");
    }
    for field in ["input_length", "output_length"] {
        match map.get(field) {
            Some(v) if beyond_integers(v, i64::MAX as u64) => return TraceReason::TooLarge(field),
            Some(v) if !(v.is_null() || v.is_i64()) => return TraceReason::WrongType(field),
            _ => {}
        }
    }
    match map.get("hash_ids") {
        Some(serde_json::Value::Array(ids)) => {
            if ids.iter().any(|id| id.as_i64().is_some_and(|id| id < 0)) {
                TraceReason::Negative("hash_ids")
            } else if ids.iter().any(|id| beyond_integers(id, u64::MAX)) {
                TraceReason::TooLarge("hash_ids")
            } else {
                TraceReason::WrongType("hash_ids")
            }
        }
        Some(serde_json::Value::Null) | None => TraceReason::BadJson, // e.g. a duplicate key
        Some(_) => TraceReason::WrongType("hash_ids"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(line: &str) -> TraceReason {
        TraceRecord::parse_line(line).unwrap_err()
    }

    #[test]
    fn good_line() {
        let r = TraceRecord::parse_line(
            r#"{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 2353, 2354, 2355, 2356, 2357, 2358, 2359, 2360, 2361, 2362, 2363, 2364]}"#,
        )
        .unwrap();
        assert_eq!((r.timestamp_ms, r.input_length, r.output_length, r.hash_ids.len()), (27482, 6955, 52, 14));
        assert_eq!(r.block_tokens(12), 512);
        assert_eq!(r.block_tokens(13), 6955 - 13 * 512);
    }

    #[test]
    fn extra_fields_float_timestamp_and_empty_prompt_are_accepted() {
        let r = TraceRecord::parse_line(
            r#"{"hash_ids": [], "output_length": 3, "input_length": 0, "timestamp": 12.7, "block_size": 512}"#,
        )
        .unwrap();
        assert_eq!((r.timestamp_ms, r.input_length, r.hash_ids.len()), (12, 0, 0));
        let exact = r#"{"timestamp": 1, "input_length": 1024, "output_length": 1, "hash_ids": [1, 2]}"#;
        assert_eq!(TraceRecord::parse_line(exact).unwrap().block_tokens(1), 512);
    }

    #[test]
    fn bad_lines() {
        assert_eq!(reason(r#"{"timestamp": 1, "input_length": 5"#), TraceReason::BadJson);
        assert_eq!(reason("not json"), TraceReason::BadJson);
        assert_eq!(reason("[1, 5, 1, [1]]"), TraceReason::NotAnObject);
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5, "hash_ids": [1]}"#),
            TraceReason::MissingField("output_length")
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": null}"#),
            TraceReason::MissingField("hash_ids")
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5, "output_length": -2, "hash_ids": [1]}"#),
            TraceReason::Negative("output_length")
        );
        assert_eq!(
            reason(r#"{"timestamp": -1, "input_length": 5, "output_length": 1, "hash_ids": [1]}"#),
            TraceReason::Negative("timestamp")
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [-1]}"#),
            TraceReason::Negative("hash_ids")
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": "5", "output_length": 1, "hash_ids": [1]}"#),
            TraceReason::WrongType("input_length")
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": ["a"]}"#),
            TraceReason::WrongType("hash_ids")
        );
        assert_eq!(
            reason(r#"{"timestamp": "x", "input_length": 5, "output_length": 1, "hash_ids": [1]}"#),
            TraceReason::WrongType("timestamp")
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5000000000, "output_length": 1, "hash_ids": [1]}"#),
            TraceReason::TooLarge("input_length")
        );
        for (line, field) in [
            (
                r#"{"timestamp": 1, "input_length": 99999999999999999999, "output_length": 1, "hash_ids": [1]}"#,
                "input_length",
            ),
            (r#"{"timestamp": 1, "input_length": 5, "output_length": 1e30, "hash_ids": [1]}"#, "output_length"),
            (
                r#"{"timestamp": 1, "input_length": 5, "output_length": 9223372036854775808, "hash_ids": [1]}"#,
                "output_length",
            ),
            (
                r#"{"timestamp": 1, "input_length": 5, "output_length": 1, "hash_ids": [18446744073709551616]}"#,
                "hash_ids",
            ),
            (r#"{"timestamp": 1e300, "input_length": 5, "output_length": 1, "hash_ids": [1]}"#, "timestamp"),
        ] {
            assert_eq!(reason(line), TraceReason::TooLarge(field), "{line}");
        }
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 5.5, "output_length": 1, "hash_ids": [1]}"#),
            TraceReason::WrongType("input_length"),
            "a fraction is not too large"
        );
        assert_eq!(
            reason(r#"{"timestamp": 1, "input_length": 513, "output_length": 1, "hash_ids": [1]}"#),
            TraceReason::BlockCount { hash_ids: 1, expected: 2 }
        );
    }

    #[test]
    fn first_bad_line_fails_with_its_number_unless_skipping() {
        let good = r#"{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}"#;
        let text = format!("{good}\n\n{good}\r\n{{\"timestamp\": 2}}\n{good}\nxx\n");
        match Trace::parse_str(&text, &TraceOptions::default()) {
            Err(Error::Trace { path: None, line, reason }) => {
                assert_eq!((line, reason), (4, TraceReason::MissingField("input_length")))
            }
            other => panic!("{other:?}"),
        }
        let trace = Trace::parse_str(&text, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
        assert_eq!((trace.len(), trace.skipped_lines()), (3, 2));
        assert_eq!(trace.first_skipped(), Some((4, TraceReason::MissingField("input_length"))));
        assert_eq!(trace.prompt_tokens(), 15);
    }

    #[test]
    fn a_timestamp_earlier_than_the_previous_line_is_a_bad_line() {
        let at = |ms: u64| format!(r#"{{"timestamp": {ms}, "input_length": 5, "output_length": 1, "hash_ids": [1]}}"#);
        let text = [at(5), at(5), at(9), at(7), at(9)].join("\n");
        match Trace::parse_str(&text, &TraceOptions::default()) {
            Err(
                e @ Error::Trace { line: 4, reason: TraceReason::Backwards { previous_ms: 9, timestamp_ms: 7 }, .. },
            ) => {
                assert!(e.to_string().starts_with("trace line 4: timestamp 7 ms is earlier than"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        let trace = Trace::parse_str(&text, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
        assert_eq!((trace.len(), trace.skipped_lines()), (4, 1));
    }

    #[test]
    fn lines_are_split_as_str_lines_splits_them() {
        for text in ["", "a", "a\n", "a\r\n", "a\n\nb", "a\r", "a\rb\r\n\r\n", "\n", "\r\n\r\n", "x\r\r\n", "\n\nz"] {
            let ours: Vec<&[u8]> = lines(text.as_bytes()).collect();
            let std: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
            assert_eq!(ours, std, "{text:?}");
        }
    }

    #[test]
    fn a_line_that_is_not_utf8_is_a_bad_line_and_can_be_skipped() {
        let good = r#"{"timestamp": 0, "input_length": 5, "output_length": 1, "hash_ids": [1]}"#;
        let mut bytes = format!("{good}\n").into_bytes();
        bytes.extend_from_slice(
            b"{\"timestamp\": 1, \"input_length\": 5, \"output_length\": 1, \"hash_ids\": [1]}\xff\r\n",
        );
        bytes.extend_from_slice(format!("{good}\n").as_bytes());
        match Trace::parse_bytes(&bytes, &TraceOptions::default()) {
            Err(Error::Trace { path: None, line, reason }) => assert_eq!((line, reason), (2, TraceReason::InvalidUtf8)),
            other => panic!("{other:?}"),
        }
        let trace = Trace::parse_bytes(&bytes, &TraceOptions::default().with_skip_bad_lines(true)).unwrap();
        assert_eq!((trace.len(), trace.skipped_lines()), (2, 1));
        assert_eq!(trace.first_skipped(), Some((2, TraceReason::InvalidUtf8)));
    }
}
