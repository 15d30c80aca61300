//! The one error type of the replay and probe tools.
//!
//! Every variant says where the problem is: the file and line of a bad trace or CSV line, the
//! file and operation of a failed read or write, the setting and the value a configuration
//! refused. Errors of the kvtier library itself (building or driving the cache during an engine
//! replay) pass through unchanged as [`Error::Kvtier`].

use std::path::{Path, PathBuf};

use crate::replay::engine::verify::Mismatch;
use crate::trace::TraceReason;

/// Result alias used throughout kvtier-cli.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in the replay tools.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A line of a trace (or of an Azure CSV) is malformed; nothing of the input was used.
    #[error("{}line {line}: {reason}", at(path))]
    Trace {
        /// The file, when the input was read from one.
        path: Option<PathBuf>,
        /// 1-based line number.
        line: usize,
        /// What is wrong with the line.
        reason: TraceReason,
    },
    /// A trace holds no request: nothing to replay (see [`crate::trace::Trace::require_requests`]).
    #[error("{}{}", at(path), empty_because(*skipped_lines, first_skipped))]
    EmptyTrace {
        /// The file, when the input was read from one.
        path: Option<PathBuf>,
        /// Bad lines skipped (`--skip-bad-lines`): all of the trace's lines when non-zero.
        skipped_lines: usize,
        /// Line number and reason of the first of them.
        first_skipped: Option<(usize, TraceReason)>,
    },
    /// A model's `config.json` lacks a field the KV layout needs, or has an invalid one.
    #[error("{}: {field}: {problem}", path.display())]
    ModelConfig {
        /// The file.
        path: PathBuf,
        /// The field (`num_hidden_layers`, ...; `config.json` when the file is not JSON).
        field: &'static str,
        /// What is wrong with it.
        problem: crate::model::ConfigProblem,
    },
    /// Reading or writing a file failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "write", "create directory", ...).
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// A setting of a replay or of a synthetic trace is out of range.
    #[error("invalid {setting} {value}: {reason}")]
    InvalidConfig {
        /// The setting ("capacity", "policies", "preset", ...).
        setting: &'static str,
        /// The value given, as written (e.g. `0`, `[]`, `foo`).
        value: String,
        /// What is accepted instead.
        reason: String,
    },
    /// Drawing a chart failed.
    #[error("cannot draw chart {}: {reason}", path.display())]
    Chart {
        /// The SVG file being written.
        path: PathBuf,
        /// What the chart library reported.
        reason: String,
    },
    /// Encoding a report as JSON failed.
    #[error("cannot encode report {}: {source}", path.display())]
    Json {
        /// The report file.
        path: PathBuf,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// An engine replay served a page whose bytes were not what was written for its hash
    /// (see [`crate::replay::engine::verify`]): its hit rate cannot be trusted.
    #[error("{replay} replay served {mismatches} wrong page(s) of {checked} checked ({})", first_at(first))]
    WrongPages {
        /// Which replay (`tiered`, or the `one-large-G1 reference`).
        replay: &'static str,
        /// Served pages checked.
        checked: u64,
        /// Of those, pages that did not carry their hash's stamp.
        mismatches: u64,
        /// Where the first one was served.
        first: Option<Mismatch>,
    },
    /// A probe profile (see [`crate::probe::Profile::load`]) is not valid JSON or lacks a field.
    #[error("{}: not a kvtier probe profile: {source}", path.display())]
    BadProfile {
        /// The profile file.
        path: PathBuf,
        /// What serde_json reported.
        #[source]
        source: serde_json::Error,
    },
    /// A probe profile has another (or no) schema version: measure again with `kvtier probe`.
    #[error("{}: probe profile schema version {}, expected {expected} (run `kvtier probe` again)", path.display(), found.map_or("missing".to_string(), |v| v.to_string()))]
    ProfileVersion {
        /// The profile file.
        path: PathBuf,
        /// The version the file gives, if it gives one.
        found: Option<u64>,
        /// The version this kvtier reads ([`crate::probe::SCHEMA_VERSION`]).
        expected: u32,
    },
    /// The kvtier library refused a configuration or failed while the replay drove it.
    #[error(transparent)]
    Kvtier(#[from] kvtier::Error),
}

impl Error {
    /// Names `path` as the file a [`Error::Trace`] was read from (other errors unchanged).
    pub fn in_file(self, path: &Path) -> Self {
        match self {
            Error::Trace { path: None, line, reason } => Error::Trace { path: Some(path.to_path_buf()), line, reason },
            Error::EmptyTrace { path: None, skipped_lines, first_skipped } => {
                Error::EmptyTrace { path: Some(path.to_path_buf()), skipped_lines, first_skipped }
            }
            other => other,
        }
    }

    /// An [`Error::InvalidConfig`] for `setting`, showing `value` as it displays.
    pub(crate) fn invalid(setting: &'static str, value: impl std::fmt::Display, reason: impl Into<String>) -> Self {
        Error::InvalidConfig { setting, value: value.to_string(), reason: reason.into() }
    }
}

/// `"trace "` or `"<path>: "`, the start of a [`Error::Trace`] message.
fn at(path: &Option<PathBuf>) -> String {
    match path {
        Some(path) => format!("{}: ", path.display()),
        None => "trace ".to_string(),
    }
}

/// Why a [`Error::EmptyTrace`] is empty.
fn empty_because(skipped: usize, first: &Option<(usize, TraceReason)>) -> String {
    match first {
        Some((line, reason)) if skipped > 0 => {
            format!("no request: all {skipped} non-blank line(s) are bad (first: line {line}: {reason})")
        }
        _ => "no request (the file is empty, or the cut by --requests/--from-request left none)".to_string(),
    }
}

/// Where the first wrong page of a [`Error::WrongPages`] was served.
fn first_at(first: &Option<Mismatch>) -> String {
    match first {
        Some(m) => format!("first: request {} block {} served from {}", m.request, m.block, m.tier),
        None => "no location recorded".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_file_line_and_value() {
        let bad = Error::Trace { path: None, line: 3, reason: TraceReason::BadJson };
        assert_eq!(bad.to_string(), "trace line 3: not valid JSON");
        assert_eq!(bad.in_file(Path::new("t.jsonl")).to_string(), "t.jsonl: line 3: not valid JSON");
        let empty = Error::EmptyTrace { path: None, skipped_lines: 2, first_skipped: Some((1, TraceReason::BadJson)) };
        assert_eq!(
            empty.in_file(Path::new("t.jsonl")).to_string(),
            "t.jsonl: no request: all 2 non-blank line(s) are bad (first: line 1: not valid JSON)"
        );
        let config = Error::invalid("capacity", 0, "must be at least 1 block");
        assert_eq!(config.to_string(), "invalid capacity 0: must be at least 1 block");
    }
}
