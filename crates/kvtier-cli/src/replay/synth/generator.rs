//! The generator behind [`super::synthesize`]: sessions, content segments and block interning,
//! driven by one seeded random stream.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::{DECODE_MS_PER_TOKEN, Mix, SynthConfig};
use crate::trace::{TRACE_BLOCK_TOKENS, TraceRecord};

/// SplitMix64: small, fast, and the same stream on every platform.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Uniform in `lo..=hi` (`lo <= hi`).
    fn between(&mut self, (lo, hi): (u32, u32)) -> u32 {
        lo + (self.next_u64() % (hi.saturating_sub(lo) as u64 + 1)) as u32
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }

    fn log_normal(&mut self, median: f64, sigma: f64) -> f64 {
        let normal = (-2.0 * (1.0 - self.unit()).ln()).sqrt() * (std::f64::consts::TAU * self.unit()).cos();
        median * (sigma * normal).exp()
    }
}

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Zipf(s) over `0..n` by inverse CDF.
struct Zipf(Vec<f64>);

impl Zipf {
    fn new(n: u32, s: f64) -> Self {
        let mut total = 0.0;
        Self(
            (1..=n.max(1))
                .map(|rank| {
                    total += (rank as f64).powf(-s);
                    total
                })
                .collect(),
        )
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit() * self.0.last().copied().unwrap_or(0.0);
        self.0.partition_point(|&c| c <= u).min(self.0.len().saturating_sub(1))
    }
}

/// A run of tokens of one content item; a prefix of it stands for the item's first tokens.
#[derive(Debug, Clone, Copy)]
struct Segment {
    content: u64,
    tokens: u32,
}

/// Interns 512-token blocks by (parent id, content), so ids are prefix-unique by construction.
#[derive(Default)]
struct Blocks(HashMap<(u64, u64), u64>);

impl Blocks {
    const ROOT: u64 = u64::MAX;

    fn hash_ids(&mut self, segments: &[Segment], tokens: u32) -> Vec<u64> {
        let mut ids = Vec::with_capacity(tokens.div_ceil(TRACE_BLOCK_TOKENS) as usize);
        let (mut parent, mut content, mut filled) = (Self::ROOT, 0u64, 0u32);
        for segment in segments {
            let mut offset = 0;
            while offset < segment.tokens {
                let take = (segment.tokens - offset).min(TRACE_BLOCK_TOKENS - filled);
                content = mix64(content ^ mix64(segment.content) ^ ((offset as u64) << 32 | take as u64));
                (offset, filled) = (offset + take, filled + take);
                if filled == TRACE_BLOCK_TOKENS {
                    parent = self.intern(parent, content);
                    ids.push(parent);
                    (content, filled) = (0, 0);
                }
            }
        }
        if filled > 0 {
            ids.push(self.intern(parent, content));
        }
        ids
    }

    fn intern(&mut self, parent: u64, content: u64) -> u64 {
        let next = self.0.len() as u64;
        *self.0.entry((parent, content)).or_insert(next)
    }
}

#[derive(Clone, Copy)]
enum Pool {
    System,
    Tool,
    Document,
}

enum Session {
    Chat { segments: Vec<Segment>, tokens: u64 },
    Code { project: usize, preamble: Segment },
}

pub(super) struct Generator<'a> {
    config: &'a SynthConfig,
    rng: Rng,
    next_content: u64,
    system: Vec<Segment>,
    tools: Vec<Segment>,
    documents: Vec<Segment>,
    projects: Vec<Vec<Segment>>,
    system_zipf: Zipf,
    tool_zipf: Zipf,
    project_zipf: Zipf,
    document_zipf: Zipf,
    sessions: Vec<Option<Session>>,
    /// (due time, session index): the index breaks ties deterministically.
    due: BinaryHeap<Reverse<(u64, usize)>>,
    blocks: Blocks,
}

impl<'a> Generator<'a> {
    pub(super) fn new(config: &'a SynthConfig, seed: u64) -> Self {
        let s = config.popularity_zipf;
        let mut generator = Self {
            config,
            rng: Rng(mix64(seed ^ 0x6b76_7469_6572)),
            next_content: 0,
            system: Vec::new(),
            tools: Vec::new(),
            documents: Vec::new(),
            projects: vec![Vec::new(); config.projects as usize],
            system_zipf: Zipf::new(config.system_prompts, s),
            tool_zipf: Zipf::new(config.tool_preambles, s),
            project_zipf: Zipf::new(config.projects, s),
            document_zipf: Zipf::new(config.documents, s),
            sessions: Vec::new(),
            due: BinaryHeap::new(),
            blocks: Blocks::default(),
        };
        generator.system =
            (0..config.system_prompts).map(|_| generator.fresh_in(config.system_prompt_tokens)).collect();
        generator.tools = (0..config.tool_preambles).map(|_| generator.fresh_in(config.tool_preamble_tokens)).collect();
        generator.documents = (0..config.documents).map(|_| generator.fresh_in(config.document_tokens)).collect();
        generator
    }

    fn fresh(&mut self, tokens: u32) -> Segment {
        self.next_content += 1;
        Segment { content: self.next_content, tokens }
    }

    fn fresh_in(&mut self, range: (u32, u32)) -> Segment {
        let tokens = self.rng.between(range);
        self.fresh(tokens)
    }

    fn file(&mut self) -> Segment {
        let tokens = self.rng.log_normal(self.config.file_tokens as f64, 0.8).clamp(32.0, 8192.0) as u32;
        self.fresh(tokens)
    }

    fn pick(&mut self, pool: Pool) -> Segment {
        let (zipf, items) = match pool {
            Pool::System => (&self.system_zipf, &self.system),
            Pool::Tool => (&self.tool_zipf, &self.tools),
            Pool::Document => (&self.document_zipf, &self.documents),
        };
        items.get(zipf.sample(&mut self.rng)).copied().unwrap_or(Segment { content: 0, tokens: 0 })
    }

    /// One request in the slot at `now` (ms since the first row).
    pub(super) fn request(&mut self, now: u64, context: u32, generated: u32) -> TraceRecord {
        if let Some(&Reverse((due, index))) = self.due.peek()
            && due <= now
        {
            self.due.pop();
            if let Some(record) = self.follow_up(index, now, context, generated) {
                return record;
            }
        }
        self.open(now, context, generated)
    }

    fn follow_up(&mut self, index: usize, now: u64, context: u32, generated: u32) -> Option<TraceRecord> {
        let max = self.config.max_context_tokens as u64;
        match self.sessions.get_mut(index)?.take()? {
            Session::Chat { mut segments, tokens } if tokens + context as u64 <= max => {
                segments.push(self.fresh(context));
                Some(self.chat_turn(index, segments, now, generated))
            }
            Session::Chat { .. } => None, // the window is full: the session ends
            Session::Code { project, preamble } => {
                Some(self.code_request(index, project, preamble, now, context, generated))
            }
        }
    }

    fn open(&mut self, now: u64, context: u32, generated: u32) -> TraceRecord {
        let Mix { chat, code, scan, document } = self.config.mix;
        let pick = self.rng.unit() * (chat + code + scan + document);
        let index = self.sessions.len();
        let max = self.config.max_context_tokens;
        let system = self.pick(Pool::System);
        if pick < chat {
            let mut segments = vec![system];
            if self.rng.chance(self.config.tool_share) {
                segments.push(self.pick(Pool::Tool));
            }
            let used: u32 = segments.iter().map(|s| s.tokens).sum();
            segments.push(self.fresh(context.min(max - used)));
            self.sessions.push(None);
            self.chat_turn(index, segments, now, generated)
        } else if pick < chat + code {
            let project = self.project_zipf.sample(&mut self.rng);
            let preamble = self.pick(Pool::Tool);
            self.sessions.push(None);
            self.code_request(index, project, preamble, now, context, generated)
        } else if pick < chat + code + scan {
            let tokens = (context as f64 * self.config.scan_scale).round().min((max - system.tokens) as f64) as u32;
            let segments = [system, self.fresh(tokens)];
            self.record(&segments, now, generated)
        } else {
            let document = self.pick(Pool::Document);
            let question = context.min(max - system.tokens - document.tokens);
            let segments = [system, document, self.fresh(question)];
            self.record(&segments, now, generated)
        }
    }

    fn chat_turn(&mut self, index: usize, mut segments: Vec<Segment>, now: u64, generated: u32) -> TraceRecord {
        let record = self.record(&segments, now, generated);
        if self.rng.chance(1.0 - 1.0 / self.config.chat_turns) {
            segments.push(self.fresh(generated));
            let tokens = segments.iter().map(|s| s.tokens as u64).sum();
            self.schedule(index, Session::Chat { segments, tokens }, now, generated);
        }
        record
    }

    fn code_request(
        &mut self,
        index: usize,
        project: usize,
        preamble: Segment,
        now: u64,
        context: u32,
        generated: u32,
    ) -> TraceRecord {
        let files = self.project_files(project);
        let tail = ((context as f64 * self.config.tail_fraction).round() as u32).clamp(context.min(1), context);
        let mut budget = context - tail;
        let mut segments = Vec::new();
        for segment in std::iter::once(preamble).chain(files) {
            if budget == 0 {
                break;
            }
            let take = segment.tokens.min(budget);
            segments.push(Segment { content: segment.content, tokens: take });
            budget -= take;
        }
        segments.push(self.fresh(tail + budget));
        let record = self.record(&segments, now, generated);
        if self.rng.chance(1.0 - 1.0 / self.config.code_turns) {
            self.schedule(index, Session::Code { project, preamble }, now, generated);
        }
        record
    }

    /// The project's files after this request's edits (created on first use).
    fn project_files(&mut self, project: usize) -> Vec<Segment> {
        let mut files = self.projects.get_mut(project).map(std::mem::take).unwrap_or_default();
        if files.is_empty() {
            let count = self.rng.between(self.config.project_files);
            files = (0..count).map(|_| self.file()).collect();
        } else {
            if self.rng.chance(self.config.edit_prob) {
                let old = files.remove(self.rng.below(files.len()));
                let tokens = (old.tokens as f64 * (0.9 + 0.3 * self.rng.unit())).clamp(32.0, 8192.0) as u32;
                let edited = self.fresh(tokens);
                files.push(edited);
            }
            if self.rng.chance(self.config.edit_prob / 2.0) {
                let opened = self.file();
                files.push(opened);
            }
            if files.len() > self.config.max_files as usize {
                files.remove(self.rng.below(files.len()));
            }
        }
        if let Some(slot) = self.projects.get_mut(project) {
            slot.clone_from(&files);
        }
        files
    }

    fn schedule(&mut self, index: usize, session: Session, now: u64, generated: u32) {
        let think = self.rng.log_normal(self.config.think_time_ms, self.config.think_sigma).min(1e12) as u64;
        if let Some(slot) = self.sessions.get_mut(index) {
            *slot = Some(session);
            self.due.push(Reverse((now + generated as u64 * DECODE_MS_PER_TOKEN + think, index)));
        }
    }

    fn record(&mut self, segments: &[Segment], now: u64, generated: u32) -> TraceRecord {
        let input_length: u32 = segments.iter().map(|s| s.tokens).sum();
        let hash_ids = self.blocks.hash_ids(segments, input_length);
        TraceRecord { timestamp_ms: now, input_length, output_length: generated, hash_ids }
    }
}
