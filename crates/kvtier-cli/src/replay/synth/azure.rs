//! Reading the Azure LLM inference traces (`AzureLLMInferenceTrace_{code,conv}.csv`).

use std::path::Path;

use crate::error::{Error, Result};
use crate::trace::TraceReason;

/// The three columns of an Azure LLM inference trace, in their usual order.
pub const AZURE_COLUMNS: [&str; 3] = ["TIMESTAMP", "ContextTokens", "GeneratedTokens"];

/// One row of an Azure LLM inference trace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AzureRecord {
    /// Arrival time, milliseconds since the Unix epoch (the CSV's clock, sub-ms dropped).
    pub timestamp_ms: u64,
    /// Prompt tokens of the request.
    pub context_tokens: u32,
    /// Generated tokens of the request.
    pub generated_tokens: u32,
}

/// Parses an Azure trace CSV: a header naming the three [`AZURE_COLUMNS`] (any order, extra
/// columns ignored), then one row per request with a `YYYY-MM-DD HH:MM:SS[.fraction]` timestamp.
/// Blank lines are skipped. Errors are [`Error::Trace`] with the 1-based line: an empty input or
/// a header without a column is `MissingField(column)` on line 1, a short row `MissingField`, an
/// unreadable cell `WrongType(column)`, a negative count `Negative`, a count over `u32`
/// `TooLarge`.
///
/// ```
/// # use kvtier_cli::replay::synth::parse_azure_csv;
/// let rows = parse_azure_csv("TIMESTAMP,ContextTokens,GeneratedTokens\n1970-01-01 00:00:01.5,300,20\n")?;
/// assert_eq!((rows[0].timestamp_ms, rows[0].context_tokens, rows[0].generated_tokens), (1_500, 300, 20));
/// # Ok::<(), kvtier_cli::Error>(())
/// ```
pub fn parse_azure_csv(text: &str) -> Result<Vec<AzureRecord>> {
    let mut lines = text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty());
    let Some((header_index, header)) = lines.next() else {
        return Err(Error::Trace { path: None, line: 1, reason: TraceReason::MissingField(AZURE_COLUMNS[0]) });
    };
    let names: Vec<&str> = header.trim_start_matches('\u{feff}').split(',').map(str::trim).collect();
    let mut at = [0usize; 3];
    for (slot, column) in at.iter_mut().zip(AZURE_COLUMNS) {
        *slot = names.iter().position(|name| *name == column).ok_or(Error::Trace {
            path: None,
            line: header_index + 1,
            reason: TraceReason::MissingField(column),
        })?;
    }
    let mut records = Vec::new();
    for (index, line) in lines {
        let cells: Vec<&str> = line.split(',').map(str::trim).collect();
        let bad = |reason| Error::Trace { path: None, line: index + 1, reason };
        let cell = |column: usize| cells.get(at[column]).ok_or(bad(TraceReason::MissingField(AZURE_COLUMNS[column])));
        let timestamp_ms = parse_timestamp_ms(cell(0)?).ok_or(bad(TraceReason::WrongType(AZURE_COLUMNS[0])))?;
        let context_tokens = parse_count(AZURE_COLUMNS[1], cell(1)?).map_err(bad)?;
        let generated_tokens = parse_count(AZURE_COLUMNS[2], cell(2)?).map_err(bad)?;
        records.push(AzureRecord { timestamp_ms, context_tokens, generated_tokens });
    }
    Ok(records)
}

/// Reads and parses an Azure trace CSV file ([`Error::Io`] when it cannot be read or is not
/// UTF-8; errors of its lines name the file).
pub fn read_azure_csv(path: impl AsRef<Path>) -> Result<Vec<AzureRecord>> {
    let path = path.as_ref();
    let text =
        std::fs::read_to_string(path).map_err(|source| Error::Io { op: "read", path: path.to_path_buf(), source })?;
    parse_azure_csv(&text).map_err(|e| e.in_file(path))
}

fn parse_count(column: &'static str, cell: &str) -> std::result::Result<u32, TraceReason> {
    let (negative, digits) = match cell.strip_prefix('-') {
        Some(digits) => (true, digits),
        None => (false, cell),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(TraceReason::WrongType(column));
    }
    if negative {
        return Err(TraceReason::Negative(column));
    }
    digits.parse::<u32>().map_err(|_| TraceReason::TooLarge(column))
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.fraction]` (UTC assumed) to ms since the Unix epoch.
fn parse_timestamp_ms(cell: &str) -> Option<u64> {
    let (date, time) = cell.split_once([' ', 'T'])?;
    let number = |s: &str, max: u32| -> Option<i64> {
        let digits = !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        let n: u32 = s.parse().ok().filter(|n| digits && *n <= max)?;
        Some(n as i64)
    };
    let mut date = date.split('-');
    let (year, month, day) = (number(date.next()?, 9999)?, number(date.next()?, 12)?, number(date.next()?, 31)?);
    let mut time = time.split(':');
    let (hour, minute, seconds) = (number(time.next()?, 23)?, number(time.next()?, 59)?, time.next()?);
    if date.next().is_some() || time.next().is_some() || month == 0 || day == 0 || year < 1970 {
        return None;
    }
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, ""));
    let second = number(whole, 60)?;
    if !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let millis =
        fraction.bytes().chain(std::iter::repeat(b'0')).take(3).fold(0i64, |ms, b| ms * 10 + (b - b'0') as i64);
    // Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    let y = if month <= 2 { year - 1 } else { year };
    let (era, year_of_era) = (y.div_euclid(400), y.rem_euclid(400));
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let ms = ((days * 24 + hour) * 60 + minute) * 60_000 + second * 1_000 + millis;
    u64::try_from(ms).ok()
}
