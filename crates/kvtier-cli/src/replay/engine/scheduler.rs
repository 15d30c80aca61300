//! The scheduler loop of the engine replay (see [`super`] for what it models).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kvtier::offload::{LatencyHistogram, OnboardCost, OnboardOutcome, Ticket, TieredCache};
use kvtier::tier::remote::redact;
use kvtier::{BatchTables, BlockHash, Error, ExtraKeys, Result, SeqId, Tier};

use super::oracle::OracleClock;
use super::report::{
    EngineReport, EngineTiming, G4Summary, LiveCurve, Sample, SsdWear, TierTokens, TrafficRow, WaitSummary, Window,
};
use super::verify::Verifier;
use super::{EngineConfig, EngineRun, decode_token, prompt_tokens};
use crate::trace::{Trace, TraceRecord};

/// Maintenance passes after each step at most (each moves up to a batch of pages down).
const MAINTENANCE_PASSES: usize = 2;

/// Onboarding rounds per request at most (see `Replay::probe`).
const ONBOARD_ROUNDS: usize = 4;

struct Request {
    index: u32,
    arrival_us: u64,
    /// Prompt plus generated tokens; empty while the request waits (built at admission by
    /// [`Replay::tokens_of`], dropped again at a preemption), so a long waiting queue holds no
    /// token lists.
    tokens: Vec<u32>,
    prompt_len: usize,
    output: u32,
    generated: u32,
    seq: Option<SeqId>,
    /// Block hashes of the full blocks of `tokens` (computed at the lookup, kept while it
    /// waits and runs, extended as decode fills blocks; cleared at a preemption).
    hashes: Vec<BlockHash>,
    admitted_once: bool,
    /// Looked up in the tiers since it last entered the queue.
    probed: bool,
    /// Its prefix's G3 pages were prefetched to G2 while it waited.
    prefetched: bool,
}

struct Onboarding {
    req: Request,
    outcome: OnboardOutcome,
    ready_at_us: u64,
    /// Held until the request is admitted: they keep its prefix in G1.
    _tickets: Vec<Ticket>,
}

pub(crate) struct Replay<'a> {
    trace: &'a Trace,
    config: &'a EngineConfig,
    tiers: &'a TieredCache,
    bs: usize,
    now_us: u64,
    report: EngineReport,
    add_latency: LatencyHistogram,
    decode_latency: LatencyHistogram,
    free_latency: LatencyHistogram,
    maintenance: Duration,
    onboard_time: Duration,
    window: Window,
    /// Simulated time from arrival to first admission (queueing plus onboarding), per request.
    waits_us: Vec<u64>,
    sample_every_us: u64,
    next_sample_us: u64,
    keys: ExtraKeys,
    verifier: Verifier,
    /// Index of the first request of the second half (the measured half).
    second_half_from: usize,
    /// Whether admissions make room first ([`TieredCache::make_room`]): not in the one-large-G1
    /// reference, whose single G2 page is not a tier.
    room: bool,
    /// The offline admission oracle's view of the replay, moved every step.
    oracle_clock: Option<Arc<OracleClock>>,
}

impl<'a> Replay<'a> {
    pub(crate) fn new(trace: &'a Trace, config: &'a EngineConfig, tiers: &'a TieredCache, room: bool) -> Self {
        let last_ms = trace.records().last().map_or(0, |r| r.timestamp_ms);
        let sample_every_us = (last_ms * 1000 / config.samples.max(1) as u64).max(1_000_000);
        let mut report = EngineReport::new(config, tiers);
        report.requests = trace.len();
        let second_half_from = trace.len() / 2;
        report.second_half_from_s = trace.records().get(second_half_from).map_or(0.0, |r| r.timestamp_ms as f64 / 1e3);
        Self {
            trace,
            config,
            tiers,
            bs: config.layout.block_size() as usize,
            now_us: 0,
            report,
            add_latency: LatencyHistogram::default(),
            decode_latency: LatencyHistogram::default(),
            free_latency: LatencyHistogram::default(),
            maintenance: Duration::ZERO,
            onboard_time: Duration::ZERO,
            window: Window::default(),
            waits_us: Vec::new(),
            sample_every_us,
            next_sample_us: sample_every_us,
            keys: ExtraKeys::default(),
            room,
            verifier: Verifier::new(tiers.g1().layout().page_bytes(), config.wrong_stamp_for),
            second_half_from,
            oracle_clock: None,
        }
    }

    /// Lets the admission oracle follow this replay.
    pub(crate) fn set_oracle_clock(&mut self, clock: Option<Arc<OracleClock>>) {
        self.oracle_clock = clock;
    }

    pub(crate) fn run(&mut self, mut progress: impl FnMut(usize)) -> Result<()> {
        let records = self.trace.records();
        let mut next = 0;
        let mut done = 0;
        let mut waiting: VecDeque<Request> = VecDeque::new();
        let mut onboarding: Vec<Onboarding> = Vec::new();
        let mut running: Vec<Request> = Vec::new();
        let (mut seqs, mut tokens) = (Vec::new(), Vec::new());
        let (mut tables, mut copies) = (BatchTables::new(), Vec::new());
        loop {
            while next < records.len() && records[next].timestamp_ms * 1000 <= self.now_us {
                waiting.push_back(self.request(next as u32, &records[next]));
                next += 1;
            }
            if running.is_empty() && waiting.is_empty() && onboarding.is_empty() {
                match records.get(next) {
                    Some(r) => {
                        self.now_us = r.timestamp_ms * 1000;
                        continue;
                    }
                    None => break,
                }
            }
            if let Some(clock) = &self.oracle_clock {
                let pending = waiting.iter().chain(onboarding.iter().map(|o| &o.req)).map(|r| r.index).min();
                clock.set(self.now_us, pending.unwrap_or(next as u32));
            }
            let mut prefill = 0;
            // 1. Requests whose onboarding is done (in simulated time) are admitted.
            let mut i = 0;
            while i < onboarding.len() {
                if onboarding[i].ready_at_us <= self.now_us {
                    let o = &mut onboarding[i];
                    if let Some(computed) = self.admit(&mut o.req, Some(o.outcome))? {
                        prefill += computed;
                        running.push(onboarding.swap_remove(i).req);
                        continue;
                    }
                }
                i += 1;
            }
            // 2. Waiting requests, first come first served.
            while running.len() + onboarding.len() < self.config.max_batch {
                let Some(req) = waiting.front_mut() else { break };
                let idle = running.is_empty() && onboarding.is_empty();
                if !req.probed {
                    req.probed = true;
                    if let Some((tickets, outcome)) = self.probe(req, idle)? {
                        let ready_at_us = self.now_us + self.transfer_us(&outcome);
                        let Some(req) = waiting.pop_front() else { break };
                        onboarding.push(Onboarding { req, outcome, ready_at_us, _tickets: tickets });
                        continue;
                    }
                    if !req.probed {
                        break; // G1 had no room to onboard into: retry next step
                    }
                }
                match self.admit(req, None)? {
                    Some(computed) => {
                        prefill += computed;
                        running.extend(waiting.pop_front());
                    }
                    None if idle => {
                        // G1 holds nothing else and still cannot take it: it never will.
                        let Some(req) = waiting.pop_front() else { break };
                        self.reject(&req);
                        done += 1;
                        progress(done);
                    }
                    None => break,
                }
            }
            // 2b. Nothing runs, yet onboarded requests could not be admitted: G1 is held by
            //     onboarding tickets alone. The oldest ready one goes on, the others give their
            //     blocks back and wait again; if the oldest alone does not fit, it never will.
            if running.is_empty() && prefill == 0 && onboarding.iter().any(|o| o.ready_at_us <= self.now_us) {
                onboarding.sort_by_key(|o| (o.ready_at_us > self.now_us, std::cmp::Reverse(o.req.index)));
                let first_ready = onboarding.iter().rposition(|o| o.ready_at_us <= self.now_us);
                if let Some(mut oldest) = first_ready.map(|i| onboarding.remove(i)) {
                    onboarding.sort_by_key(|o| std::cmp::Reverse(o.req.index));
                    for o in onboarding.drain(..) {
                        let mut req = o.req;
                        req.probed = false;
                        waiting.push_front(req);
                    }
                    match self.admit(&mut oldest.req, Some(oldest.outcome))? {
                        Some(computed) => {
                            prefill += computed;
                            running.push(oldest.req);
                        }
                        None => {
                            self.reject(&oldest.req);
                            done += 1;
                            progress(done);
                        }
                    }
                }
            }
            // 2c. The next requests in the queue have their prefix brought up from G3 to G2
            //     while they wait, so their onboarding reads DRAM instead of the SSD.
            for req in waiting.iter_mut().take(self.config.prefetch_waiting) {
                if !req.prefetched {
                    self.prefetch(req);
                }
            }
            // 3. One decode step for every running sequence that still generates.
            let decoded = self.decode(&mut running, &mut waiting, &mut seqs, &mut tokens, &mut tables, &mut copies)?;
            // 4. Finished requests release their blocks.
            let mut i = 0;
            while i < running.len() {
                if running[i].generated >= running[i].output {
                    let req = running.remove(i);
                    if let Some(seq) = req.seq {
                        let t0 = Instant::now();
                        self.tiers.g1().free(seq)?;
                        self.free_latency.record(t0.elapsed());
                    }
                    self.report.finished += 1;
                    done += 1;
                    progress(done);
                } else {
                    i += 1;
                }
            }
            // 5. The engine's maintenance: offload G1 -> G2, spill G2 -> G3.
            let t0 = Instant::now();
            for _ in 0..MAINTENANCE_PASSES {
                if !self.tiers.run_maintenance()? {
                    break;
                }
            }
            self.maintenance += t0.elapsed();
            // 6. The clock.
            let worked = prefill > 0 || decoded > 0;
            let step_us = if worked {
                self.report.steps += 1;
                self.config.decode_step.as_micros() as u64
                    + (prefill as f64 * 1e6 / self.config.prefill_tokens_per_sec) as u64
            } else {
                0
            };
            let mut next_event = self.now_us + step_us;
            if !worked {
                let arrival = records.get(next).map(|r| r.timestamp_ms * 1000);
                let ready = onboarding.iter().map(|o| o.ready_at_us).min();
                next_event = match (arrival, ready) {
                    (Some(a), Some(r)) => a.min(r),
                    (a, r) => a.or(r).unwrap_or(self.now_us + 1),
                }
                .max(self.now_us + 1);
            }
            self.observe(running.len(), next_event);
            self.now_us = next_event;
        }
        self.report.simulated_seconds = self.now_us as f64 / 1e6;
        Ok(())
    }

    fn request(&self, index: u32, record: &TraceRecord) -> Request {
        let prompt_len = (0..record.hash_ids.len()).map(|i| record.block_tokens(i) as usize).sum();
        Request {
            index,
            arrival_us: record.timestamp_ms * 1000,
            prompt_len,
            tokens: Vec::new(),
            output: record.output_length,
            generated: 0,
            seq: None,
            hashes: Vec::new(),
            admitted_once: false,
            probed: false,
            prefetched: false,
        }
    }

    /// Builds the request's tokens (its prompt, then what it generated before a preemption) if
    /// it holds none: they are derived from the trace, so a waiting request need not keep them.
    fn tokens_of(&self, req: &mut Request) {
        if req.tokens.len() == req.prompt_len + req.generated as usize {
            return;
        }
        let Some(record) = self.trace.records().get(req.index as usize) else { return };
        let mut tokens = Vec::with_capacity(req.prompt_len + req.output as usize);
        prompt_tokens(record, &mut tokens);
        tokens.extend((0..req.generated).map(|i| decode_token(req.index, i)));
        req.tokens = tokens;
    }

    /// Looks the request up in every tier; onboards the part of its prefix that lives only in
    /// G2/G3. Leaves `req.probed` false if G1 has no room to onboard into yet.
    ///
    /// A ticket holds the leading G1 hits and the run it brings up, not G1 blocks further on,
    /// which its own allocations may evict (they are written through, so they are still below):
    /// like a runtime, look again and onboard the next run, a few rounds at most.
    fn probe(&mut self, req: &mut Request, idle: bool) -> Result<Option<(Vec<Ticket>, OnboardOutcome)>> {
        self.tokens_of(req);
        self.tiers.g1().lock().hash_tokens(&req.tokens, &self.keys, &mut req.hashes);
        let max_hit = (req.tokens.len().saturating_sub(1) / self.bs).min(req.hashes.len());
        let mut tickets = Vec::new();
        let mut total = OnboardOutcome::default();
        let t0 = Instant::now();
        for round in 0..ONBOARD_ROUNDS {
            let hit = self.tiers.longest_prefix(&req.hashes[..max_hit]);
            if hit.g2 + hit.g3 + hit.g4 == 0 {
                break;
            }
            if round == 0 {
                // Room for everything the request will allocate (onboarded and computed
                // blocks), made by copying G1's victims down rather than losing them.
                self.make_room(req.tokens.len().div_ceil(self.bs) - hit.g1)?;
            }
            let end = if round == 0 { self.choose(&req.hashes[..max_hit], hit.total) } else { max_hit };
            if end <= hit.g1 {
                break; // the rule recomputes what lies below: nothing to onboard
            }
            let ticket = match self.tiers.onboard(&req.hashes[..end]) {
                Ok(t) => t,
                Err(Error::OutOfBlocks { .. } | Error::NeverFits { .. }) if round == 0 => {
                    req.probed = idle; // with nothing else in G1, try a plain admission instead
                    return Ok(None);
                }
                Err(Error::OutOfBlocks { .. } | Error::NeverFits { .. }) => break,
                Err(e) => return Err(e),
            };
            let outcome = ticket.wait(); // no background workers: already done
            if round == 0 {
                total.g1_hits = outcome.g1_hits;
            }
            total.from_g2 += outcome.from_g2;
            total.from_g3 += outcome.from_g3;
            total.from_g4 += outcome.from_g4;
            total.failed += outcome.failed;
            tickets.push(ticket);
            if outcome.from_g2 + outcome.from_g3 + outcome.from_g4 == 0 {
                break;
            }
        }
        self.onboard_time += t0.elapsed();
        Ok((!tickets.is_empty()).then_some((tickets, total)))
    }

    /// Onboard or recompute for a prefix whose first `found` blocks some tier holds: counts
    /// the rule's choice and returns how many leading hashes to onboard (all of `hashes`
    /// unless the replay follows the rule).
    fn choose(&mut self, hashes: &[BlockHash], found: usize) -> usize {
        let tiers: Vec<Tier> = {
            let core = self.tiers.g1().lock();
            let g2 = self.tiers.g2();
            hashes[..found]
                .iter()
                .map(|&h| match () {
                    _ if core.contains(h) => Tier::G1,
                    _ if g2.contains(h) => Tier::G2,
                    _ => Tier::G3,
                })
                .collect()
        };
        let cost = OnboardCost {
            prefill_tokens_per_sec: self.config.prefill_tokens_per_sec,
            g2_bytes_per_sec: self.config.g2_onboard_bytes_per_sec,
            g3_bytes_per_sec: self.config.g3_onboard_bytes_per_sec,
            ..OnboardCost::default()
        };
        let plan = cost.plan(&tiers, self.bs, self.config.layout.page_bytes());
        let c = &mut self.report.onboard_choices;
        c.decisions += 1;
        let below = tiers.iter().filter(|&&t| t != Tier::G1).count();
        match plan.load_g2 + plan.load_g3 {
            n if n == below => c.load_all += 1,
            0 => c.load_none += 1,
            _ => c.load_part += 1,
        }
        c.blocks_recomputed += (below - plan.load_g2 - plan.load_g3) as u64;
        c.seconds_rule += plan.seconds;
        c.seconds_load_all += plan.seconds_load_all;
        c.seconds_load_none += plan.seconds_load_none;
        if self.config.onboard_rule { plan.use_blocks } else { hashes.len() }
    }

    /// Prefetches the G3-only part of a waiting request's prefix to G2, if G2 has room for
    /// it among its free and ready (backed) slots: a prefetch must not push out a page no
    /// tier below holds. The reads are not charged to the simulated clock (the SSD is
    /// assumed idle while requests queue); the onboarding that follows is, at G2's speed.
    fn prefetch(&mut self, req: &mut Request) {
        req.prefetched = true;
        let Some(g2) = self.room.then(|| self.tiers.g2().metrics()) else { return };
        let keep_tokens = !req.tokens.is_empty();
        self.tokens_of(req);
        self.tiers.g1().lock().hash_tokens(&req.tokens, &self.keys, &mut req.hashes);
        if !keep_tokens {
            req.tokens = Vec::new(); // rebuilt at admission: the queue holds no token lists
        }
        let max_hit = (req.prompt_len.saturating_sub(1) / self.bs).min(req.hashes.len());
        let hit = self.tiers.longest_prefix(&req.hashes[..max_hit]);
        let room = g2.capacity - g2.used + g2.ready;
        if hit.g3 > 0 && hit.g3 <= room {
            let t0 = Instant::now();
            self.tiers.prefetch(&req.hashes[..hit.total]);
            self.maintenance += t0.elapsed();
            self.report.prefetched_requests += 1;
        }
    }

    /// [`TieredCache::make_room`] for `blocks` blocks, timed as maintenance.
    fn make_room(&mut self, blocks: usize) -> Result<()> {
        if !self.room {
            return Ok(());
        }
        let t0 = Instant::now();
        self.tiers.make_room(blocks)?;
        self.maintenance += t0.elapsed();
        Ok(())
    }

    /// Simulated time to bring the onboarded pages up at the model layout.
    fn transfer_us(&self, o: &OnboardOutcome) -> u64 {
        let page = self.config.layout.page_bytes() as f64;
        let secs = o.from_g2 as f64 * page / self.config.g2_onboard_bytes_per_sec
            + o.from_g3 as f64 * page / self.config.g3_onboard_bytes_per_sec
            + o.from_g4 as f64 * page / self.config.g4_onboard_bytes_per_sec;
        (secs * 1e6).ceil() as u64
    }

    /// Admits a request into G1 (its prefill runs this step); `None` if G1 has no room now.
    /// Returns the prompt tokens computed.
    fn admit(&mut self, req: &mut Request, onboarded: Option<OnboardOutcome>) -> Result<Option<usize>> {
        self.tokens_of(req);
        let blocks = req.tokens.len().div_ceil(self.bs);
        let known = req.hashes.len() == req.tokens.len() / self.bs;
        let max_hit = req.tokens.len().saturating_sub(1) / self.bs;
        let cached = if known { self.tiers.g1().lock().longest_prefix(&req.hashes[..max_hit]) } else { 0 };
        // Like a runtime that admits a prefill larger than the offload watermark's margin: G1's
        // victims are copied down first, so that the allocation evicts no page left nowhere.
        // (Making room evicts nothing from G1: `cached` still holds afterwards.)
        self.make_room(blocks - cached)?;
        let mut core = self.tiers.g1().lock();
        // A request that waits is retried every step: a cheap check spares the full call.
        if known && !core.can_allocate(blocks - cached) {
            return Ok(None);
        }
        let t0 = Instant::now();
        let added = core.add_sequence(&req.tokens, &self.keys);
        self.add_latency.record(t0.elapsed());
        let added = match added {
            Ok(a) => a,
            // (a request that never fits is rejected once G1 is idle, as before NeverFits existed)
            Err(Error::OutOfBlocks { .. } | Error::NeverFits { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        // What the request is served is checked; what its prefill computes is stamped, before
        // the commit makes it shareable (and queues its copy down).
        if req.hashes.len() != req.tokens.len() / self.bs {
            core.hash_tokens(&req.tokens, &self.keys, &mut req.hashes);
        }
        let served = added.cached_tokens / self.bs;
        self.verifier.check_served(&core, req.index, added.seq, &req.hashes, served, onboarded)?;
        self.verifier.stamp_computed(&mut core, req.index, added.seq, &req.hashes, served)?;
        core.commit(added.seq)?;
        drop(core);
        req.seq = Some(added.seq);
        let computed = req.tokens.len() - added.cached_tokens;
        self.report.prefill_tokens_computed += computed as u64;
        if !req.admitted_once {
            req.admitted_once = true;
            self.waits_us.push(self.now_us - req.arrival_us);
            self.account_prompt(req, added.cached_tokens / self.bs, onboarded);
        }
        Ok(Some(computed))
    }

    /// Gives up on a request G1 cannot hold even alone.
    fn reject(&mut self, req: &Request) {
        if req.admitted_once {
            self.report.truncated += 1; // preempted, and now too long to come back
        } else {
            self.account_prompt(req, 0, None);
            self.report.rejected += 1;
        }
    }

    /// Counts a request's prompt and where its cached blocks came from (first admission only).
    fn account_prompt(&mut self, req: &Request, blocks: usize, onboarded: Option<OnboardOutcome>) {
        let mut left = blocks;
        let mut take = |n: usize| {
            let t = n.min(left);
            left -= t;
            (t * self.bs) as u64
        };
        let hit = match onboarded {
            Some(o) => {
                let g1 = take(o.g1_hits);
                let (g2, g3, g4) = (take(o.from_g2), take(o.from_g3), take(o.from_g4));
                TierTokens { g1: g1 + take(usize::MAX), g2, g3, g4 }
            }
            None => TierTokens { g1: take(usize::MAX), ..TierTokens::default() },
        };
        let prompt = req.prompt_len as u64;
        self.report.prompt_tokens += prompt;
        self.report.hit_tokens.add(&hit);
        self.window.prompt_tokens += prompt;
        self.window.hit.add(&hit);
        if req.index as usize >= self.second_half_from {
            if self.report.second_half_prompt_tokens == 0 {
                // the live curve counts the second half too (from this admission on)
                if let Some(c) = self.tiers.g1().lock().capacity_curve_mut() {
                    c.reset_counts();
                }
            }
            self.report.second_half_prompt_tokens += prompt;
            self.report.second_half_hit_tokens.add(&hit);
        }
    }

    /// One decode step over the running sequences; preempts the latest admitted while G1 runs
    /// out. Returns the tokens decoded.
    #[allow(clippy::too_many_arguments)]
    fn decode(
        &mut self,
        running: &mut Vec<Request>,
        waiting: &mut VecDeque<Request>,
        seqs: &mut Vec<SeqId>,
        tokens: &mut Vec<u32>,
        tables: &mut BatchTables,
        copies: &mut Vec<kvtier::BlockCopy>,
    ) -> Result<usize> {
        loop {
            seqs.clear();
            tokens.clear();
            for r in running.iter().filter(|r| r.generated < r.output) {
                seqs.extend(r.seq);
                tokens.push(decode_token(r.index, r.generated));
            }
            if seqs.is_empty() {
                return Ok(0);
            }
            let mut core = self.tiers.g1().lock();
            let t0 = Instant::now();
            let stepped = core.decode_step(seqs, tokens, tables, copies);
            self.decode_latency.record(t0.elapsed());
            match stepped {
                Ok(()) => {
                    for r in running.iter_mut().filter(|r| r.generated < r.output) {
                        r.tokens.push(decode_token(r.index, r.generated));
                        r.generated += 1;
                        let Some(seq) = r.seq else { continue };
                        // A block the token filled is stamped before the commit registers it.
                        let full = r.hashes.len();
                        BlockHash::extend_chain(&mut r.hashes, &r.tokens, self.bs, &self.keys);
                        self.verifier.stamp_computed(&mut core, r.index, seq, &r.hashes, full)?;
                        core.commit(seq)?;
                    }
                    copies.clear();
                    self.report.decode_tokens += seqs.len() as u64;
                    return Ok(seqs.len());
                }
                Err(Error::OutOfBlocks { .. }) => {
                    // Preempt the most recently admitted request: it is recomputed later.
                    let Some(mut victim) = running.pop() else { return Ok(0) };
                    if let Some(seq) = victim.seq.take() {
                        core.free(seq)?;
                    }
                    drop(core);
                    if running.iter().all(|r| r.generated >= r.output) && victim.generated < victim.output {
                        // It cannot grow even alone: G1 is too small for it; end it here.
                        self.report.truncated += 1;
                        victim.generated = victim.output;
                        victim.seq = None;
                        running.push(victim);
                        return Ok(0);
                    }
                    self.report.preemptions += 1;
                    victim.probed = false;
                    victim.hashes.clear();
                    victim.tokens = Vec::new(); // rebuilt at its next admission
                    waiting.push_front(victim);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Peaks every step, a time-series point every sampling interval.
    fn observe(&mut self, running: usize, until_us: u64) {
        let g1 = self.tiers.g1().metrics();
        let g2 = self.tiers.g2().metrics();
        let g3 = self.tiers.g3().map_or(0, |d| d.metrics().used_slots as usize);
        let p = &mut self.report.peaks;
        p.g1_in_use = p.g1_in_use.max(g1.in_use);
        p.g1_resident = p.g1_resident.max(g1.in_use + g1.evictable);
        p.g2_used = p.g2_used.max(g2.used);
        p.g3_used = p.g3_used.max(g3);
        p.running = p.running.max(running);
        while self.next_sample_us <= until_us {
            let w = std::mem::take(&mut self.window);
            let rate = |t: u64| if w.prompt_tokens == 0 { 0.0 } else { t as f64 / w.prompt_tokens as f64 };
            self.report.samples.push(Sample {
                t_s: self.next_sample_us as f64 / 1e6,
                cumulative_hit_rate: match self.report.prompt_tokens {
                    0 => 0.0,
                    all => self.report.hit_tokens.total() as f64 / all as f64,
                },
                second_half_cumulative_hit_rate: match self.report.second_half_prompt_tokens {
                    0 => 0.0,
                    all => self.report.second_half_hit_tokens.total() as f64 / all as f64,
                },
                hit_rate: rate(w.hit.total()),
                g1_hit_rate: rate(w.hit.g1),
                g2_hit_rate: rate(w.hit.g2),
                g3_hit_rate: rate(w.hit.g3),
                g1_used: (g1.in_use + g1.evictable) as f64 / g1.capacity.max(1) as f64,
                g1_in_use: g1.in_use as f64 / g1.capacity.max(1) as f64,
                g2_used: g2.used as f64 / g2.capacity.max(1) as f64,
                g3_used: g3 as f64 / self.config.g3_blocks.max(1) as f64,
                running,
            });
            self.next_sample_us += self.sample_every_us;
        }
    }

    pub(crate) fn finish(mut self, started: Instant) -> Result<EngineRun> {
        let m = self.tiers.metrics();
        let model_page = self.config.layout.page_bytes() as u64;
        let e = &m.engine;
        self.report.traffic = [
            ("G1", "G2", e.g1_to_g2),
            ("G2", "G3", e.g2_to_g3),
            ("G2", "G1", e.g2_to_g1),
            ("G3", "G1", e.g3_to_g1),
            ("G3", "G2", e.g3_to_g2),
            ("G2", "G4", e.to_g4),
            ("G4", "G1", e.g4_to_g1),
        ]
        .iter()
        .map(|&(from, to, t)| TrafficRow::new(from, to, t, model_page, self.report.simulated_seconds))
        .collect();
        let r = &mut self.report;
        r.g1_evictions = m.g1.evictions;
        r.g1_unbacked_evictions = m.g1.unbacked_evictions;
        r.g2_evictions = m.g2.evictions;
        r.g2_unbacked_evictions = m.g2.unbacked_evictions;
        r.g3_evictions = m.g3.map_or(0, |d| d.evictions);
        r.admission_declined = e.admission_declined;
        r.admission_min_uses = e.admission_min_uses;
        r.admission_reuse_per_mille = e.admission_reuse_per_mille;
        r.onboard_failed = e.onboard_failed;
        r.g4 = m.g4.map(|g| G4Summary {
            server: self.config.g4_url.as_deref().map(redact).unwrap_or_default(),
            round_trips: g.round_trips,
            lookups: g.lookups,
            lookup_found: g.lookup_found,
            get_hits: g.get_hits,
            get_bytes: g.get_bytes,
            get_absent: g.get_absent,
            get_rejected: g.get_rejected,
            put_stored: g.put_stored,
            put_bytes: g.put_bytes,
            put_rejected: g.put_rejected,
            errors: g.errors,
            skipped_down: g.skipped_down,
        });
        r.live_curve = self.tiers.metrics().live_curve.map(|c| {
            // read at G1, G1 + G2, [G1 + G2 + G3,] then 1/8, 1/4, 1/2, 2, 4, 8 x the summed
            let (tiers, multiples) = c.points.split_at(c.points.len().saturating_sub(6));
            let at = |i: usize| tiers.get(i).map_or(0.0, |&(_, h)| h);
            let summed = tiers.last().copied().unwrap_or_default();
            let (below, above) = multiples.split_at(multiples.len().min(3));
            LiveCurve {
                sample_rate: c.sample_rate,
                sampled_accesses: c.sampled_accesses,
                tracked_blocks: c.tracked_blocks,
                hot_blocks: c.hot_blocks,
                at_g1: at(0),
                at_g1_g2: at(1),
                at_summed: summed.1,
                points: below.iter().chain([&summed]).chain(above).copied().collect(),
            }
        });
        r.g3_backend = self.tiers.g3().map(|d| d.backend_name().to_string());
        r.admission_wait = WaitSummary::of(&mut self.waits_us);
        r.verification = self.verifier.counts;
        r.ssd_wear = m.g3.map(|d| {
            SsdWear::new(d.pages_written, d.bytes_written, model_page, self.config.g3_blocks, r.simulated_seconds)
        });
        r.finalize();
        let offloaded = e.g1_to_g2.bytes + e.g2_to_g3.bytes;
        let onboarded = e.g2_to_g1.bytes + e.g3_to_g1.bytes + e.g4_to_g1.bytes;
        let per_sec = |bytes: u64, d: Duration| if d.is_zero() { 0.0 } else { bytes as f64 / d.as_secs_f64() };
        let timing = EngineTiming {
            wall_seconds: started.elapsed().as_secs_f64(),
            reference_seconds: 0.0,
            sim_reference_seconds: 0.0,
            add_sequence: self.add_latency.summary().into(),
            decode_step: self.decode_latency.summary().into(),
            free: self.free_latency.summary().into(),
            maintenance_seconds: self.maintenance.as_secs_f64(),
            onboard_seconds: self.onboard_time.as_secs_f64(),
            offload_bytes_per_sec: per_sec(offloaded, self.maintenance),
            onboard_bytes_per_sec: per_sec(onboarded, self.onboard_time),
            offload_page_latency: e.offload_latency.into(),
            spill_batch_latency: e.spill_latency.into(),
            onboard_g2_page_latency: e.onboard_g2_latency.into(),
            onboard_g3_batch_latency: e.onboard_g3_latency.into(),
        };
        Ok(EngineRun { report: self.report, timing })
    }
}

#[cfg(test)]
mod tests {
    use kvtier::CacheConfig;
    use kvtier::offload::OffloadConfig;
    use kvtier::tier::host::HostConfig;

    use super::*;
    use crate::trace::TraceOptions;

    /// Issue 15, item 5: a waiting request holds no token list (the replay held every waiting
    /// request's, 642 MB on the conversation trace behind a slow prefill); its tokens are built
    /// when it is looked up or admitted, with what it generated before a preemption.
    #[test]
    fn waiting_requests_hold_no_tokens() {
        let sample = include_str!("../../../data/conversation_sample.jsonl");
        let trace = Trace::parse_str(sample, &TraceOptions::default()).unwrap();
        let config = EngineConfig::default().with_capacities(64, 64, 0);
        let host = HostConfig::default().with_capacity_pages(64).with_huge_pages(false);
        let cache = CacheConfig::new(config.payload_layout().unwrap(), 64);
        let tiers = TieredCache::new(cache, OffloadConfig::default().with_host(host).with_workers(0)).unwrap();
        let replay = Replay::new(&trace, &config, &tiers, true);
        let record = &trace.records()[3];
        let mut req = replay.request(3, record);
        assert_eq!(req.tokens.capacity(), 0, "a waiting request holds no tokens");
        let mut expected = Vec::new();
        prompt_tokens(record, &mut expected);
        assert!(!expected.is_empty());
        assert_eq!(req.prompt_len, expected.len());
        replay.tokens_of(&mut req);
        assert_eq!(req.tokens, expected);
        // Preempted after 5 tokens: dropped while it waits, rebuilt with them.
        req.generated = 5;
        req.tokens = Vec::new();
        replay.tokens_of(&mut req);
        expected.extend((0..5).map(|i| decode_token(3, i)));
        assert_eq!(req.tokens, expected);
    }
}
