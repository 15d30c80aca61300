//! Synthetic Mooncake-format traces built from the Azure LLM inference traces.
//!
//! The Azure traces (`AzureLLMInferenceTrace_{code,conv}.csv`: `TIMESTAMP, ContextTokens,
//! GeneratedTokens`) carry real arrival times and lengths but no prefix information. This module
//! keeps those and adds an explicit, documented model of where prompts share content, so that
//! eviction policies can be compared on workloads shaped unlike the one real prefix trace we
//! have. Everything is deterministic for a given seed and runs in O(rows + emitted blocks).
//!
//! ## How a trace is made
//! 1. [`read_azure_csv`] / [`parse_azure_csv`] read the CSV into [`AzureRecord`]s (typed
//!    [`Error::Trace`] on a bad header, cell or empty input).
//! 2. [`synthesize`] walks the rows in file order. Each row is one request *slot*: its timestamp
//!    (ms since the earliest row) and its `GeneratedTokens` are kept as they are.
//! 3. A slot is taken by the oldest *due* follow-up of an open session (one whose think time has
//!    elapsed); when none is due, the slot opens something new, drawn from the [`Mix`]: a chat
//!    session, a code session, a one-off scan or a one-off document question. Sessions therefore
//!    never change the arrival process, and a backlog of due follow-ups crowds out new sessions
//!    until it drains.
//! 4. The prompt is built as a list of content segments; block ids are interned per (parent id,
//!    content of the 512-token block), so equal prefixes get equal ids, an id always has the same
//!    parent chain, and `len(hash_ids) == ceil(input_length / 512)`.
//! 5. [`write_jsonl_path`] writes the result for `kvtier replay` or `refsim.sh`.
//!
//! ## The prefix model (every knob is a field of [`SynthConfig`])
//! - **Shared preambles.** `system_prompts` system prompts (lengths uniform in
//!   `system_prompt_tokens`) and `tool_preambles` tool preambles (`tool_preamble_tokens`), each
//!   picked with Zipf popularity of exponent `popularity_zipf` (the same skew is used for every
//!   popularity choice below, so there is one skew knob, not one per pool).
//! - **Chat sessions.** Turn 1 = system prompt, then (with probability `tool_share`) a tool
//!   preamble, then the user text. Turn k+1 = the whole previous prompt, the previous answer
//!   (`GeneratedTokens` of that turn), then new user text, so the prefix chain continues. **The
//!   row's `ContextTokens` is always the new user text**, so a follow-up's `input_length` is the
//!   session's history plus the row's count. A session has a geometric number of turns of mean
//!   `chat_turns`; the next turn is due `25 ms x answer tokens + think time` after the previous
//!   one, the think time log-normal with median `think_time_ms` and sigma `think_sigma` (heavy
//!   tailed: some users come back many minutes later, when LRU has long dropped their history).
//!   A turn that would exceed `max_context_tokens` ends the session and its slot opens something
//!   new instead.
//! - **Code sessions.** A session works on one of `projects` repositories (Zipf). A project is an
//!   ordered list of files (initially uniform in `project_files`, lengths log-normal with median
//!   `file_tokens` and sigma 0.8, 32..8192 tokens). Before each request, with probability
//!   `edit_prob` one file (uniform position) gets a new version and moves to the end of the list
//!   (recently edited files last, stable ones first), with probability `edit_prob / 2` a new file
//!   is opened (appended), and past `max_files` a uniform file is closed. A request's prompt is
//!   exactly `ContextTokens` long: a tool preamble (the IDE instructions), then the project's files
//!   in order, the last one truncated to fit, then `tail_fraction` of the prompt (at least one
//!   token) of unique text (the code around the cursor). Requests of one project therefore share
//!   a prefix up to the first file edited since, across sessions too. Sessions have a geometric
//!   number of requests of mean `code_turns`.
//! - **Scans.** A one-off prompt: system prompt + unique text of `scan_scale x ContextTokens`
//!   tokens (capped by the context window); nothing after the system prompt is ever reused.
//! - **Document questions.** A one-off prompt: system prompt + one of `documents` documents
//!   (Zipf, lengths uniform in `document_tokens`) + the question (`ContextTokens`): popular
//!   documents recur at long reuse distances.
//!
//! ## Presets ([`SynthPreset`])
//! - `conv` (the [`Default`]): 90 % chat sessions (mean 4 turns, think time median 30 s, sigma
//!   1.5), 10 % plain one-offs; 16 system prompts of 300-2,500 tokens, 8 tool preambles of
//!   500-3,000 used by 30 % of sessions; Zipf 1.0; 32K window. Reuse is recency-shaped, like the
//!   Mooncake conversation trace.
//! - `code`: 95 % code sessions over 150 projects (4-24 files of median 700 tokens, mean 8
//!   requests, think time median 10 s, edit probability 0.25, 15 % unique tail), 5 % one-offs;
//!   4 IDE preambles of 200-800 tokens; prompt lengths exactly the CSV's. Reuse is
//!   frequency-shaped: popular repositories come back across sessions with partly changed files.
//! - `mixed`: 40 % chat, 15 % code, 30 % scans four times the row's length, 15 % questions over
//!   400 documents of 2K-16K tokens: a scan-polluted workload where recency alone misleads.
//!
//! ```
//! use kvtier_cli::replay::synth::{AzureRecord, SynthPreset, synthesize};
//! let rows: Vec<AzureRecord> = (0..50)
//!     .map(|i| AzureRecord { timestamp_ms: 1_000 * i, context_tokens: 700, generated_tokens: 90 })
//!     .collect();
//! let trace = synthesize(&rows, &SynthPreset::Conv.config(), 7)?;
//! assert_eq!(trace.len(), 50);
//! let r = &trace.records()[0];
//! assert_eq!(r.hash_ids.len(), r.input_length.div_ceil(512) as usize);
//! # Ok::<(), kvtier_cli::Error>(())
//! ```

use std::collections::HashSet;
use std::io::Write;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::trace::Trace;

mod azure;
mod generator;

pub use azure::{AZURE_COLUMNS, AzureRecord, parse_azure_csv, read_azure_csv};
use generator::Generator;

/// Decode time assumed per generated token before a session's think time starts.
pub const DECODE_MS_PER_TOKEN: u64 = 25;

/// Weights of what a free slot opens (normalised; at least one must be positive).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mix {
    /// Chat sessions.
    pub chat: f64,
    /// Code sessions.
    pub code: f64,
    /// One-off scans.
    pub scan: f64,
    /// One-off document questions.
    pub document: f64,
}

/// Parameters of the prefix model (see the module docs for what each one does). A plain struct:
/// start from [`SynthConfig::default`] (the `conv` preset) or [`SynthPreset::config`] and change
/// fields; [`SynthConfig::validate`] (called by [`synthesize`]) checks them.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthConfig {
    /// What free slots open. Default: chat 0.9, scan 0.1.
    pub mix: Mix,
    /// Zipf exponent of every popularity choice (prompts, preambles, projects, documents). Default 1.0.
    pub popularity_zipf: f64,
    /// Distinct system prompts. Default 16.
    pub system_prompts: u32,
    /// Inclusive token range of a system prompt. Default 300..=2500.
    pub system_prompt_tokens: (u32, u32),
    /// Distinct tool preambles (also the code sessions' IDE instructions). Default 8.
    pub tool_preambles: u32,
    /// Inclusive token range of a tool preamble. Default 500..=3000.
    pub tool_preamble_tokens: (u32, u32),
    /// Probability that a chat session carries a tool preamble. Default 0.3.
    pub tool_share: f64,
    /// Mean turns of a chat session (geometric, >= 1). Default 4.
    pub chat_turns: f64,
    /// Mean requests of a code session (geometric, >= 1). Default 8.
    pub code_turns: f64,
    /// Median think time between a session's requests, ms (log-normal). Default 30,000.
    pub think_time_ms: f64,
    /// Sigma of the log-normal think time (0 = always the median). Default 1.5: most users
    /// answer within a minute, a few percent come back after ten.
    pub think_sigma: f64,
    /// Longest prompt; a chat turn that would exceed it ends its session. Default 32,768.
    pub max_context_tokens: u32,
    /// Repositories code sessions work on. Default 150.
    pub projects: u32,
    /// Inclusive range of a project's initial file count. Default 4..=24.
    pub project_files: (u32, u32),
    /// Median tokens of a source file (log-normal, sigma 0.8). Default 700.
    pub file_tokens: u32,
    /// Probability that a code request follows an edit of one file. Default 0.25.
    pub edit_prob: f64,
    /// Most files open in a project. Default 32.
    pub max_files: u32,
    /// Share of a code prompt that is unique text at its end. Default 0.15.
    pub tail_fraction: f64,
    /// Length of a scan as a multiple of the row's `ContextTokens`. Default 1.0.
    pub scan_scale: f64,
    /// Documents questions are asked about. Default 2,000.
    pub documents: u32,
    /// Inclusive token range of a document. Default 2,000..=16,000.
    pub document_tokens: (u32, u32),
}

impl Default for SynthConfig {
    fn default() -> Self {
        Self {
            mix: Mix { chat: 0.9, code: 0.0, scan: 0.1, document: 0.0 },
            popularity_zipf: 1.0,
            system_prompts: 16,
            system_prompt_tokens: (300, 2500),
            tool_preambles: 8,
            tool_preamble_tokens: (500, 3000),
            tool_share: 0.3,
            chat_turns: 4.0,
            code_turns: 8.0,
            think_time_ms: 30_000.0,
            think_sigma: 1.5,
            max_context_tokens: 32_768,
            projects: 150,
            project_files: (4, 24),
            file_tokens: 700,
            edit_prob: 0.25,
            max_files: 32,
            tail_fraction: 0.15,
            scan_scale: 1.0,
            documents: 2_000,
            document_tokens: (2_000, 16_000),
        }
    }
}

impl SynthConfig {
    /// Checks every field ([`Error::InvalidConfig`] names the first bad one).
    ///
    /// ```
    /// # use kvtier_cli::replay::synth::SynthConfig;
    /// assert!(SynthConfig { chat_turns: 0.5, ..SynthConfig::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let bad = |setting, value: &dyn std::fmt::Debug, reason: &str| {
            Err(Error::invalid(setting, format!("{value:?}"), reason))
        };
        let weights = [self.mix.chat, self.mix.code, self.mix.scan, self.mix.document];
        if weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || weights.iter().sum::<f64>() <= 0.0 {
            return bad("mix", &self.mix, "weights must be finite, >= 0 and not all 0");
        }
        if !(self.popularity_zipf.is_finite() && self.popularity_zipf >= 0.0) {
            return bad("popularity_zipf", &self.popularity_zipf, "must be finite and >= 0");
        }
        let pools = [
            ("system_prompts", self.system_prompts),
            ("tool_preambles", self.tool_preambles),
            ("projects", self.projects),
            ("documents", self.documents),
            ("file_tokens", self.file_tokens),
            ("max_files", self.max_files),
        ];
        if let Some((setting, value)) = pools.into_iter().find(|(_, value)| *value == 0) {
            return bad(setting, &value, "must be >= 1");
        }
        let ranges = [
            ("system_prompt_tokens", self.system_prompt_tokens),
            ("tool_preamble_tokens", self.tool_preamble_tokens),
            ("project_files", self.project_files),
            ("document_tokens", self.document_tokens),
        ];
        if let Some((setting, range)) = ranges.into_iter().find(|(_, (lo, hi))| lo > hi || *hi == 0) {
            return bad(setting, &range, "needs 0 < hi and lo <= hi");
        }
        let shares =
            [("tool_share", self.tool_share), ("edit_prob", self.edit_prob), ("tail_fraction", self.tail_fraction)];
        if let Some((setting, share)) = shares.into_iter().find(|(_, p)| !(0.0..=1.0).contains(p)) {
            return bad(setting, &share, "must be in 0..=1");
        }
        let turns = [("chat_turns", self.chat_turns), ("code_turns", self.code_turns)];
        if let Some((setting, mean)) = turns.into_iter().find(|(_, t)| !(t.is_finite() && *t >= 1.0)) {
            return bad(setting, &mean, "must be finite and >= 1");
        }
        if !(self.think_time_ms.is_finite() && self.think_time_ms >= 0.0) {
            return bad("think_time_ms", &self.think_time_ms, "must be finite and >= 0");
        }
        if !(0.0..=8.0).contains(&self.think_sigma) {
            return bad("think_sigma", &self.think_sigma, "must be in 0..=8");
        }
        if !(self.scan_scale.is_finite() && self.scan_scale > 0.0) {
            return bad("scan_scale", &self.scan_scale, "must be finite and > 0");
        }
        let preamble =
            self.system_prompt_tokens.1 as u64 + self.tool_preamble_tokens.1.max(self.document_tokens.1) as u64;
        if self.max_context_tokens > 1 << 24 || preamble >= self.max_context_tokens as u64 {
            return bad(
                "max_context_tokens",
                &self.max_context_tokens,
                &format!("must exceed the longest system prompt + preamble or document ({preamble}), at most 2^24"),
            );
        }
        Ok(())
    }
}

/// Named workloads (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SynthPreset {
    /// Multi-turn chat: recency-shaped reuse.
    Conv,
    /// Coding sessions over shared repositories: frequency-shaped reuse with partial overlap.
    Code,
    /// Chat + code + long one-off scans + popular documents: scan pollution.
    Mixed,
}

impl SynthPreset {
    /// Every preset, in a stable order.
    pub const ALL: [SynthPreset; 3] = [SynthPreset::Conv, SynthPreset::Code, SynthPreset::Mixed];

    /// The preset's name (`conv`, `code`, `mixed`).
    pub fn name(self) -> &'static str {
        match self {
            SynthPreset::Conv => "conv",
            SynthPreset::Code => "code",
            SynthPreset::Mixed => "mixed",
        }
    }

    /// The preset named `name` ([`Error::InvalidConfig`] naming the presets for an unknown one).
    ///
    /// ```
    /// # use kvtier_cli::replay::synth::SynthPreset;
    /// assert_eq!(SynthPreset::from_name("code")?, SynthPreset::Code);
    /// assert!(SynthPreset::from_name("zip").is_err());
    /// # Ok::<(), kvtier_cli::Error>(())
    /// ```
    pub fn from_name(name: &str) -> Result<Self> {
        Self::ALL
            .into_iter()
            .find(|preset| preset.name() == name)
            .ok_or_else(|| Error::invalid("preset", name, "unknown preset (expected conv, code or mixed)"))
    }

    /// The preset's parameters.
    pub fn config(self) -> SynthConfig {
        let base = SynthConfig::default();
        match self {
            SynthPreset::Conv => base,
            SynthPreset::Code => SynthConfig {
                mix: Mix { chat: 0.0, code: 0.95, scan: 0.05, document: 0.0 },
                tool_preambles: 4,
                tool_preamble_tokens: (200, 800),
                think_time_ms: 10_000.0,
                ..base
            },
            SynthPreset::Mixed => SynthConfig {
                mix: Mix { chat: 0.4, code: 0.15, scan: 0.3, document: 0.15 },
                scan_scale: 4.0,
                documents: 400,
                ..base
            },
        }
    }
}

/// Builds a Mooncake-format trace from Azure rows (see the module docs for the model): one
/// request per row, in row order, timestamps in ms since the earliest row, output lengths from
/// the rows. Deterministic for a given `seed`. Fails only on an invalid `config`.
pub fn synthesize(records: &[AzureRecord], config: &SynthConfig, seed: u64) -> Result<Trace> {
    config.validate()?;
    let mut generator = Generator::new(config, seed);
    let start = records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0);
    let mut out = Vec::with_capacity(records.len());
    for row in records {
        out.push(generator.request(row.timestamp_ms - start, row.context_tokens, row.generated_tokens));
    }
    Ok(Trace::from_records(out))
}

/// Writes a trace as Mooncake JSONL (`timestamp`, `input_length`, `output_length`, `hash_ids`).
pub fn write_jsonl<W: Write>(trace: &Trace, mut out: W) -> std::io::Result<()> {
    #[derive(Serialize)]
    struct Line<'a> {
        timestamp: u64,
        input_length: u32,
        output_length: u32,
        hash_ids: &'a [u64],
    }
    for r in trace.records() {
        let line = Line {
            timestamp: r.timestamp_ms,
            input_length: r.input_length,
            output_length: r.output_length,
            hash_ids: &r.hash_ids,
        };
        serde_json::to_writer(&mut out, &line)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Writes a trace as Mooncake JSONL to a file ([`Error::Io`] on failure).
pub fn write_jsonl_path(trace: &Trace, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    let io = |source| Error::Io { op: "write", path: path.to_path_buf(), source };
    let file = std::fs::File::create(path).map_err(io)?;
    write_jsonl(trace, std::io::BufWriter::new(file)).map_err(io)
}

/// Size and reuse of a trace.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceStats {
    /// Requests.
    pub requests: usize,
    /// Prompt blocks over all requests.
    pub blocks: u64,
    /// Distinct block ids.
    pub unique_blocks: u64,
    /// Prompt tokens over all requests.
    pub prompt_tokens: u64,
    /// Share of prompt blocks whose id appeared earlier in the trace (an unlimited cache's
    /// block hit rate, ignoring the longest-prefix rule).
    pub reused_block_share: f64,
}

/// Counts [`TraceStats`] for a trace.
///
/// ```
/// # use kvtier_cli::trace::{Trace, TraceRecord};
/// # use kvtier_cli::replay::synth::trace_stats;
/// let r = |ids: &[u64]| TraceRecord { timestamp_ms: 0, input_length: 512 * ids.len() as u32, output_length: 1, hash_ids: ids.to_vec() };
/// let stats = trace_stats(&Trace::from_records(vec![r(&[1, 2]), r(&[1, 3])]));
/// assert_eq!((stats.blocks, stats.unique_blocks, stats.reused_block_share), (4, 3, 0.25));
/// ```
pub fn trace_stats(trace: &Trace) -> TraceStats {
    let mut seen = HashSet::new();
    let mut blocks = 0u64;
    for id in trace.records().iter().flat_map(|r| &r.hash_ids) {
        blocks += 1;
        seen.insert(*id);
    }
    let unique_blocks = seen.len() as u64;
    let reused_block_share = if blocks == 0 { 0.0 } else { (blocks - unique_blocks) as f64 / blocks as f64 };
    TraceStats {
        requests: trace.len(),
        blocks,
        unique_blocks,
        prompt_tokens: trace.prompt_tokens(),
        reused_block_share,
    }
}
