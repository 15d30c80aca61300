//! kvtier embedded in a serving runtime: a tiny decoder (seeded weights, no external model) runs
//! batched requests with shared prefixes, and its attention reads K and V only through kvtier's
//! page tables. G1 is small, so prefixes are offloaded to G2/G3 and onboarded again; every
//! output token and logit must be bit-identical to a run whose G1 never onboards.
//!
//! `cargo run --release --example serve`
//!
//! What a runtime does with kvtier, step by step (see [`run`]):
//! 1. **Lookup.** A waiting request's prompt is hashed and looked up in every tier
//!    (`longest_prefix`). A prefix found in G2/G3 is onboarded (`onboard` -> ticket, `wait`).
//! 2. **Admit.** `add_sequence` shares the cached prefix (G1 hits, including what was just
//!    onboarded) and allocates blocks for the rest; the ticket is dropped afterwards.
//! 3. **Prefill.** `export_batch` gives the slots of the tokens still to compute; the model
//!    writes each token's K/V into its slot (`page_mut`) and attends over the block table.
//! 4. **Decode.** `decode_step` appends one token per running sequence and returns the flat
//!    block table and slot mapping; the model writes the new K/V and attends, as in 3.
//! 5. **Commit and free.** `commit` registers full blocks (shareable by later requests);
//!    finished requests are freed, their blocks become evictable.
//! 6. **Maintenance.** The engine offloads G1's eviction victims to G2 and spills G2 to G3.
//!
//! Page layout chosen by this runtime (kvtier only moves bytes): f32
//! `[layer][K|V][token in block][kv head][head dim]`.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};

use kvtier::io::{BackendKind, IoConfig};
use kvtier::offload::{Admission, OffloadConfig, TierMetrics, TieredCache};
use kvtier::testing::XorShift;
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::{BatchTables, BlockId, CacheConfig, CacheCore, Dtype, Error, ExtraKeys, KvLayout, PageRead, SeqId};

const VOCAB: usize = 64;
const DIM: usize = 32;
const LAYERS: usize = 2;
const HEADS: usize = 2;
const HEAD_DIM: usize = DIM / HEADS;
const HIDDEN: usize = 64;
const BLOCK: usize = 4;
/// G1 of the example's small run: three requests of at most 10 blocks fit, the four 6-block
/// prefixes do not stay.
pub const SMALL_G1: usize = 32;

/// One run of the runtime.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// G1 blocks.
    pub g1_blocks: usize,
    /// G2 pages.
    pub g2_pages: usize,
    /// G3 slots.
    pub g3_slots: usize,
    /// Directory for the G3 files (created, and removed at the end).
    pub ssd_dir: PathBuf,
    /// Requests running at once, at most.
    pub max_batch: usize,
    /// Shared prefixes ("system prompts") and their length in tokens.
    pub prefixes: usize,
    /// Tokens per shared prefix.
    pub prefix_tokens: usize,
    /// Requests; request `i` uses prefix `(i / 2) % prefixes` (prefixes come back after the
    /// others pushed them out of G1).
    pub requests: usize,
    /// Tokens generated per request, at most (request `i` generates `max - i % 4`).
    pub max_new_tokens: usize,
    /// Print one line per step.
    pub verbose: bool,
}

impl ServeConfig {
    /// The example's workload with a G1 of `g1_blocks`.
    pub fn small(g1_blocks: usize, ssd_dir: &Path) -> Self {
        Self {
            g1_blocks,
            g2_pages: 16,
            g3_slots: 512,
            ssd_dir: ssd_dir.to_path_buf(),
            max_batch: 3,
            prefixes: 4,
            prefix_tokens: 24,
            requests: 24,
            max_new_tokens: 8,
            verbose: false,
        }
    }
}

/// What a request produced: its tokens and the logits of every generated position.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Output {
    /// Generated tokens.
    pub tokens: Vec<u32>,
    /// Logits, one vector of `VOCAB` per generated token.
    pub logits: Vec<Vec<f32>>,
}

/// Outputs of a run and what moved between tiers.
pub struct ServeRun {
    /// One per request, in request order.
    pub outputs: Vec<Output>,
    /// Tier counters at the end.
    pub metrics: TierMetrics,
    /// Prompt tokens served from the cache (any tier).
    pub cached_tokens: usize,
}

/// The decoder's weights, drawn from kvtier's seeded test generator (`testing` feature).
struct Model {
    embed: Vec<f32>,
    wq: Vec<Vec<f32>>,
    wk: Vec<Vec<f32>>,
    wv: Vec<Vec<f32>>,
    wo: Vec<Vec<f32>>,
    w1: Vec<Vec<f32>>,
    w2: Vec<Vec<f32>>,
    unembed: Vec<f32>,
}

impl Model {
    fn new(seed: u64) -> Self {
        let mut rng = XorShift::new(seed | 1);
        let mut draw = |n: usize, scale: f32| -> Vec<f32> {
            (0..n).map(|_| ((rng.next_u64() >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale).collect()
        };
        let s = 1.0 / (DIM as f32).sqrt();
        let mut per_layer = |n, scale| (0..LAYERS).map(|_| draw(n, scale)).collect::<Vec<_>>();
        let (wq, wk, wv, wo) =
            (per_layer(DIM * DIM, s), per_layer(DIM * DIM, s), per_layer(DIM * DIM, s), per_layer(DIM * DIM, s));
        let (w1, w2) = (per_layer(HIDDEN * DIM, s), per_layer(DIM * HIDDEN, 1.0 / (HIDDEN as f32).sqrt()));
        Self { embed: draw(VOCAB * DIM, 1.0), wq, wk, wv, wo, w1, w2, unembed: draw(VOCAB * DIM, s) }
    }

    /// Runs token `token` at position `pos` of a sequence whose block table is `table`: writes
    /// its K/V at `slot`, attends over positions `0..=pos`, returns the logits.
    fn forward(
        &self,
        core: &mut CacheCore,
        table: &[i32],
        slot: i64,
        token: u32,
        pos: usize,
    ) -> Result<Vec<f32>, Error> {
        let mut x: Vec<f32> = self.embed[token as usize * DIM..][..DIM].to_vec();
        for (i, v) in x.iter_mut().enumerate() {
            *v += (pos as f32 / 10f32.powf(i as f32 / DIM as f32)).sin() * 0.1; // position signal
        }
        for l in 0..LAYERS {
            let h = rms_norm(&x);
            let (q, k, v) = (matvec(&self.wq[l], &h), matvec(&self.wk[l], &h), matvec(&self.wv[l], &h));
            // 1. Write this token's K and V into its slot of the paged cache.
            let (block, offset) = (BlockId((slot / BLOCK as i64) as u32), slot as usize % BLOCK);
            let mut lease = core.page_mut(block)?; // exclusive: the block is this sequence's alone
            let page: &mut [f32] = bytemuck::cast_slice_mut(&mut lease);
            page[kv_index(l, 0, offset)..][..DIM].copy_from_slice(&k);
            page[kv_index(l, 1, offset)..][..DIM].copy_from_slice(&v);
            drop(lease);
            // 2. Attend over every earlier position, reading K/V through the block table.
            let mut attn = vec![0f32; DIM];
            for head in 0..HEADS {
                let qh = &q[head * HEAD_DIM..][..HEAD_DIM];
                let mut scores = Vec::with_capacity(pos + 1);
                for p in 0..=pos {
                    let lease = read_page(core, table, p)?;
                    let page: &[f32] = bytemuck::cast_slice(&lease);
                    let kp = &page[kv_index(l, 0, p % BLOCK) + head * HEAD_DIM..][..HEAD_DIM];
                    scores.push(dot(qh, kp) / (HEAD_DIM as f32).sqrt());
                }
                let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
                let weights: Vec<f32> = scores.iter().map(|s| (s - max).exp()).collect();
                let total: f32 = weights.iter().sum();
                for (p, w) in weights.iter().enumerate() {
                    let lease = read_page(core, table, p)?;
                    let page: &[f32] = bytemuck::cast_slice(&lease);
                    let vp = &page[kv_index(l, 1, p % BLOCK) + head * HEAD_DIM..][..HEAD_DIM];
                    for (a, b) in attn[head * HEAD_DIM..][..HEAD_DIM].iter_mut().zip(vp) {
                        *a += w / total * b;
                    }
                }
            }
            for (xi, o) in x.iter_mut().zip(matvec(&self.wo[l], &attn)) {
                *xi += o;
            }
            let hidden: Vec<f32> = matvec(&self.w1[l], &rms_norm(&x)).into_iter().map(|v| v.max(0.0)).collect();
            for (xi, m) in x.iter_mut().zip(matvec(&self.w2[l], &hidden)) {
                *xi += m;
            }
        }
        Ok(matvec(&self.unembed, &rms_norm(&x)))
    }
}

/// Offset (in f32s) of K (`kv` 0) or V (`kv` 1) of layer `l`, token `offset` of a page.
fn kv_index(l: usize, kv: usize, offset: usize) -> usize {
    ((l * 2 + kv) * BLOCK + offset) * DIM
}

/// A read lease of the page holding position `p`, found through the sequence's row of the
/// block table.
fn read_page<'c>(core: &'c CacheCore, table: &[i32], p: usize) -> Result<PageRead<'c>, Error> {
    core.page(BlockId(table[p / BLOCK] as u32))
}

fn matvec(w: &[f32], x: &[f32]) -> Vec<f32> {
    w.chunks(x.len()).map(|row| dot(row, x)).collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn rms_norm(x: &[f32]) -> Vec<f32> {
    let scale = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + 1e-5).sqrt();
    x.iter().map(|v| v * scale).collect()
}

fn argmax(logits: &[f32]) -> u32 {
    (0..logits.len()).fold(0, |best, i| if logits[i] > logits[best] { i } else { best }) as u32
}

/// Prompt of request `i`: its shared prefix, then a few tokens of its own.
fn prompt(config: &ServeConfig, i: usize) -> Vec<u32> {
    let prefix = (i / 2) % config.prefixes;
    let own = 5 + i % 4;
    let shared = (0..config.prefix_tokens).map(|t| ((prefix * 31 + t * 7) % VOCAB) as u32);
    shared.chain((0..own).map(|t| ((i * 13 + t * 5 + 1) % VOCAB) as u32)).collect()
}

/// Tokens request `i` generates: requests finish at different steps, the batch changes.
fn wanted(config: &ServeConfig, i: usize) -> usize {
    config.max_new_tokens.saturating_sub(i % 4).max(1)
}

struct Running {
    request: usize,
    seq: SeqId,
    last: u32,
    out: Output,
}

/// Serves every request of `config` and returns what each produced.
pub fn run(config: &ServeConfig) -> Result<ServeRun, Box<dyn std::error::Error>> {
    let layout = KvLayout::new(LAYERS as u32, HEADS as u32, HEAD_DIM as u32, Dtype::F32, BLOCK as u32)?;
    let disk = DiskConfig::new(&config.ssd_dir)
        .with_model_id("serve-example")
        .with_capacity_slots(config.g3_slots)
        .with_io(IoConfig::default().with_backend(BackendKind::Auto));
    let offload = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(config.g2_pages).with_huge_pages(false))
        .with_disk(disk)
        .with_admission(Admission::All)
        .with_g1_low_watermark(0.3)
        .with_workers(0); // maintenance runs on this thread between steps: a reproducible run
    let tiers = TieredCache::new(CacheConfig::new(layout, config.g1_blocks).with_watermark(0.0), offload)?;
    let model = Model::new(0x5eed);
    let keys = ExtraKeys::default();
    let mut waiting: VecDeque<usize> = (0..config.requests).collect();
    let mut running: Vec<Running> = Vec::new();
    let mut outputs: Vec<Option<Output>> = vec![None; config.requests];
    let (mut tables, mut copies, mut hashes) = (BatchTables::new(), Vec::new(), Vec::new());
    let mut cached_tokens = 0;
    let mut step = 0;
    while !waiting.is_empty() || !running.is_empty() {
        let before = tiers.metrics().engine;
        // 1-2. Admit waiting requests: onboard what lives below G1, then add the sequence.
        let mut admitted = Vec::new();
        while running.len() + admitted.len() < config.max_batch {
            let Some(&request) = waiting.front() else { break };
            let tokens = prompt(config, request);
            tiers.g1().lock().hash_tokens(&tokens, &keys, &mut hashes);
            let usable = &hashes[..(tokens.len() - 1) / BLOCK]; // the last token is always computed
            let found = tiers.longest_prefix(usable);
            let busy = !running.is_empty() || !admitted.is_empty();
            // Room for the whole prompt first, by copying G1's victims down: an allocation
            // larger than the watermark's margin would otherwise evict pages no tier holds.
            tiers.make_room(tokens.len().div_ceil(BLOCK) - found.g1)?;
            let ticket = match found.g2 + found.g3 {
                0 => None,
                _ => match tiers.onboard(usable) {
                    Ok(t) => Some(t),
                    Err(Error::OutOfBlocks { .. }) if busy => break, // retry when requests finish
                    Err(e) => return Err(e.into()),
                },
            };
            if let Some(t) = &ticket {
                t.wait(); // a runtime with background workers would schedule others meanwhile
            }
            let added = match tiers.g1().lock().add_sequence(&tokens, &keys) {
                Ok(a) => a,
                Err(Error::OutOfBlocks { .. }) if busy => break,
                Err(e) => return Err(e.into()),
            };
            drop(ticket); // the sequence now holds the onboarded blocks itself
            cached_tokens += added.cached_tokens;
            waiting.pop_front();
            admitted.push((request, added.seq));
        }
        let mut core = tiers.g1().lock(); // one lock for the rest of the step
        // 3. Prefill the admitted requests: the slots of their uncomputed tokens.
        for &(request, seq) in &admitted {
            core.export_batch(&[seq], &mut tables)?;
            let tokens = core.tokens(seq)?.to_vec();
            let (row, slots) = (tables.row(0).unwrap_or_default().to_vec(), tables.slot_mapping().to_vec());
            let first = tokens.len() - slots.len();
            let mut logits = Vec::new();
            for (j, &slot) in slots.iter().enumerate() {
                logits = model.forward(&mut core, &row, slot, tokens[first + j], first + j)?;
            }
            core.commit(seq)?;
            let last = argmax(&logits);
            let out = Output { tokens: vec![last], logits: vec![logits] };
            running.push(Running { request, seq, last, out });
        }
        // 4. One decode step for every running request that still generates.
        let decoding: Vec<usize> =
            (0..running.len()).filter(|&i| running[i].out.tokens.len() < wanted(config, running[i].request)).collect();
        if !decoding.is_empty() {
            let seqs: Vec<SeqId> = decoding.iter().map(|&i| running[i].seq).collect();
            let next: Vec<u32> = decoding.iter().map(|&i| running[i].last).collect();
            core.decode_step(&seqs, &next, &mut tables, &mut copies)?;
            for (row, &i) in decoding.iter().enumerate() {
                let table = tables.row(row).unwrap_or_default().to_vec();
                let slot = tables.slot_mapping()[tables.query_start()[row] as usize];
                let pos = tables.seq_lens()[row] as usize - 1;
                let logits = model.forward(&mut core, &table, slot, running[i].last, pos)?;
                core.commit(running[i].seq)?;
                let r = &mut running[i];
                r.last = argmax(&logits);
                r.out.tokens.push(r.last);
                r.out.logits.push(logits);
            }
        }
        // 5. Finished requests free their blocks (they stay cached, evictable).
        let batch = running.len();
        let mut i = 0;
        while i < running.len() {
            if running[i].out.tokens.len() >= wanted(config, running[i].request) {
                let r = running.swap_remove(i);
                core.free(r.seq)?;
                outputs[r.request] = Some(r.out);
            } else {
                i += 1;
            }
        }
        drop(core);
        // 6. Offload and spill.
        while tiers.run_maintenance()? {}
        if config.verbose {
            let now = tiers.metrics().engine;
            println!(
                "step {step:>3}: batch {batch} (+{} admitted), G1->G2 {:>3}, G2->G3 {:>3}, G2->G1 {:>3}, G3->G1 {:>3} pages",
                admitted.len(),
                now.g1_to_g2.pages - before.g1_to_g2.pages,
                now.g2_to_g3.pages - before.g2_to_g3.pages,
                now.g2_to_g1.pages - before.g2_to_g1.pages,
                now.g3_to_g1.pages - before.g3_to_g1.pages
            );
        }
        step += 1;
    }
    tiers.check_invariants()?;
    let outputs = outputs.into_iter().map(Option::unwrap_or_default).collect();
    Ok(ServeRun { outputs, metrics: tiers.metrics(), cached_tokens })
}

/// Runs the workload with a small G1 (prefixes offloaded and onboarded again) and with a G1
/// that never onboards (it has room for everything; the engine may still copy its idle blocks
/// into free G2 slots), and checks that every token and logit is bit-identical.
pub fn equivalence(small_g1: usize, dir: &Path, verbose: bool) -> Result<(ServeRun, ServeRun), String> {
    let run_in = |g1, name: &str, verbose| {
        let d = dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        let mut config = ServeConfig::small(g1, &d);
        config.verbose = verbose;
        let r = run(&config).map_err(|e| format!("{name}: {e}"));
        let _ = std::fs::remove_dir_all(&d);
        r
    };
    let small = run_in(small_g1, "small-g1", verbose)?;
    let large = run_in(4096, "large-g1", false)?;
    let e = &small.metrics.engine;
    let l = &large.metrics.engine;
    if e.g2_to_g1.pages + e.g3_to_g1.pages == 0 || l.g2_to_g1.pages + l.g3_to_g1.pages != 0 {
        return Err(format!("the small G1 must onboard and the large one never: {e:?}"));
    }
    for (i, (a, b)) in small.outputs.iter().zip(&large.outputs).enumerate() {
        let same_logits = a.logits.len() == b.logits.len()
            && a.logits.iter().flatten().zip(b.logits.iter().flatten()).all(|(x, y)| x.to_bits() == y.to_bits());
        if a.tokens != b.tokens || !same_logits {
            return Err(format!("request {i} differs: {:?} vs {:?}", a.tokens, b.tokens));
        }
    }
    Ok((small, large))
}

#[allow(dead_code)] // a test includes this file as a module
fn main() -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("kvtier-serve-{}", std::process::id()));
    let (small, large) = equivalence(SMALL_G1, &dir, true)?;
    let _ = std::fs::remove_dir_all(&dir);
    let e = &small.metrics.engine;
    println!(
        "small G1 ({SMALL_G1} blocks): {} prompt tokens from cache; offloaded {} pages to G2, spilled {} to G3, onboarded {} from G2 and {} from G3",
        small.cached_tokens, e.g1_to_g2.pages, e.g2_to_g3.pages, e.g2_to_g1.pages, e.g3_to_g1.pages
    );
    println!("large G1 (4096 blocks): {} prompt tokens from cache, nothing offloaded", large.cached_tokens);
    let logits: usize = small.outputs.iter().map(|o| o.logits.len() * VOCAB).sum();
    println!(
        "equivalent: {} requests, {} tokens and {logits} logits bit-identical",
        small.outputs.len(),
        small.outputs.iter().map(|o| o.tokens.len()).sum::<usize>()
    );
    Ok(())
}
