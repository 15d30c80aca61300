//! A scheduler's view of kvtier: requests sharing a system prompt, decode steps with flat block
//! tables, parallel sampling by fork, eviction under pressure and the KV events a router sees;
//! then the same cache with tiers below it (G1 -> host RAM -> SSD): pages pushed out of G1 are
//! found again by `longest_prefix` in G2 or G3 and onboarded back through a ticket.
//!
//! `cargo run --release --example quickstart`

use std::path::{Path, PathBuf};

use kvtier::offload::{Admission, OffloadConfig, TieredCache};
use kvtier::tier::DiskConfig;
use kvtier::tier::host::HostConfig;
use kvtier::{BatchTables, BlockHash, CacheConfig, Dtype, ExtraKeys, KvCache, KvEvent, KvEventKind, KvLayout, SeqId};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn main() -> Result<()> {
    g1_only()?;
    let dir = scratch_dir()?;
    let tiered = with_tiers(&dir);
    std::fs::remove_dir_all(&dir)?;
    tiered
}

fn g1_only() -> Result<()> {
    // Llama-3.1-8B pages of 16 tokens are 2 MiB; 64 of them make a 128 MiB pool.
    let layout = KvLayout::llama_3_1_8b(16)?;
    let cache = KvCache::new(CacheConfig::new(layout, 64))?;
    println!("pool: 64 blocks x {} KiB (Llama-3.1-8B, 16-token blocks)", layout.page_bytes() >> 10);

    let system: Vec<u32> = (1000..1000 + 96).collect(); // a 96-token system prompt: 6 blocks
    let prompt = |user: u32| -> Vec<u32> { system.iter().copied().chain((0..40).map(|t| user * 100 + t)).collect() };
    let keys = ExtraKeys::default();

    // 1. Requests arrive; each prefill is computed and committed.
    let mut running: Vec<SeqId> = Vec::new();
    for user in 0..3 {
        let p = prompt(user);
        let added = cache.add_sequence(&p, &keys)?;
        println!(
            "request {user}: {} prompt tokens, {} cached, {} new blocks",
            p.len(),
            added.cached_tokens,
            added.new_blocks
        );
        cache.commit(added.seq)?;
        running.push(added.seq);
    }

    // 2. Parallel sampling: fork the last request; the shared partial block is copied on write.
    let sample = cache.fork(running[2])?;
    running.push(sample);

    // 3. Decode steps: one token per sequence, one lock per step, flat tables for the kernel.
    let mut tables = BatchTables::new();
    for step in 0..20u32 {
        let mut core = cache.lock();
        for (i, &s) in running.iter().enumerate() {
            let out = core.append_tokens(s, &[step * 10 + i as u32])?;
            if let Some(copy) = out.copy {
                println!("step {step}: copy-on-write {:?} -> {:?} ({} tokens)", copy.src, copy.dst, copy.tokens);
            }
        }
        core.export_batch(&running, &mut tables)?;
        if step == 0 {
            println!(
                "decode batch: {} rows x {} blocks, {} slots, lens {:?}",
                tables.num_rows(),
                tables.row_width(),
                tables.slot_mapping().len(),
                tables.seq_lens()
            );
        }
        for &s in &running {
            core.commit(s)?;
        }
    }

    // 4. Requests finish: their blocks become evictable (tail first) but stay cached.
    for s in running.drain(..) {
        cache.free(s)?;
    }
    let m = cache.metrics();
    println!("after finishing: {} free, {} evictable (cached), {} in use", m.free, m.evictable, m.in_use);

    // 5. A big unrelated request forces evictions; the system prompt (released last, so most
    //    recently) survives and the next user still hits it.
    let big: Vec<u32> = (50_000..50_000 + 16 * 56).collect();
    let b = cache.add_sequence(&big, &keys)?;
    cache.commit(b.seq)?;
    cache.free(b.seq)?;
    let again = cache.add_sequence(&prompt(7), &keys)?;
    println!("new user after pressure: {} of {} tokens cached", again.cached_tokens, prompt(7).len());
    cache.free(again.seq)?;

    // 6. What a router saw.
    let mut events: Vec<KvEvent> = Vec::new();
    cache.drain_events(&mut events);
    let stored = events.iter().filter(|e| matches!(e.kind, KvEventKind::Stored { .. })).count();
    let removed = events.iter().filter(|e| matches!(e.kind, KvEventKind::Removed { .. })).count();
    let m = cache.metrics();
    println!(
        "events: {stored} stored, {removed} removed; prefix hit rate {:.2} ({} of {} blocks); {} evictions, {} CoW copies",
        m.hit_rate(),
        m.prefix_hits,
        m.prefix_queries,
        m.evictions,
        m.cow_copies
    );
    cache.lock().check_invariants()?;
    Ok(())
}

/// G1 of 8 blocks over G2 of 8 pages over an SSD directory; small pages (16 KiB) so that the
/// SSD files stay small. No background workers: pages move when `quiesce` runs the engine's
/// maintenance on this thread, so the output is the same on every run.
fn with_tiers(dir: &Path) -> Result<()> {
    println!("\n-- with tiers: G1 (8 blocks) -> G2 host RAM (8 pages) -> G3 SSD ({}) --", dir.display());
    let layout = KvLayout::new(2, 2, 64, Dtype::Bf16, 16)?;
    let disk = DiskConfig::new(dir).with_model_id("quickstart-model").with_capacity_slots(64);
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(8).with_huge_pages(false))
        .with_disk(disk)
        .with_admission(Admission::All) // G3 takes every page (the default waits for a second use)
        .with_g1_low_watermark(0.5)
        .with_g2_low_watermark(0.5)
        .with_workers(0);
    let t = TieredCache::new(CacheConfig::new(layout, 8).with_watermark(0.0), config)?;
    let page = layout.page_bytes();
    let keys = ExtraKeys::default();

    // 1. Six requests of 3 full blocks (+1 token) each; the runtime writes each block's KV.
    let prompts: Vec<Vec<u32>> = (0..6u32).map(|r| (0..49).map(|i| r * 1000 + i).collect()).collect();
    let mut hashes: Vec<Vec<BlockHash>> = Vec::new();
    for p in &prompts {
        let mut h = Vec::new();
        t.g1().lock().hash_tokens(p, &keys, &mut h);
        let mut core = t.g1().lock();
        let added = core.add_sequence(p, &keys)?;
        let table = core.block_table(added.seq)?.to_vec();
        for (&block, &hash) in table.iter().zip(&h) {
            core.write_page(block, &kv_of(hash, page))?;
        }
        core.commit(added.seq)?;
        core.free(added.seq)?;
        drop(core);
        t.quiesce()?; // offload to G2 and spill to G3 until the watermarks hold
        hashes.push(h);
    }
    let m = t.metrics();
    println!("moved down: {} pages G1 -> G2, {} pages G2 -> G3", m.engine.g1_to_g2.pages, m.engine.g2_to_g3.pages);

    // 2. Where is each request's prefix now? Each block counts in the fastest tier holding it.
    for (r, h) in hashes.iter().enumerate() {
        let hit = t.longest_prefix(h);
        println!(
            "request {r}: {} of {} blocks cached: G1 {}, G2 {}, G3 {}",
            hit.total,
            h.len(),
            hit.g1,
            hit.g2,
            hit.g3
        );
    }

    // 3. Request 0 comes back: onboard what lives below G1, wait on the ticket, then admit it.
    let ticket = t.onboard(&hashes[0])?;
    let outcome = ticket.wait();
    println!(
        "onboarded request 0: {} from G2, {} from G3, {} already in G1, {} failed",
        outcome.from_g2, outcome.from_g3, outcome.g1_hits, outcome.failed
    );
    let mut core = t.g1().lock();
    let again = core.add_sequence(&prompts[0], &keys)?;
    let table = core.block_table(again.seq)?.to_vec();
    let mut out = vec![0u8; page];
    let mut same = 0;
    for (&block, &hash) in table.iter().zip(&hashes[0]).take(again.cached_tokens / 16) {
        core.read_page(block, &mut out)?;
        same += (out == kv_of(hash, page)) as usize;
    }
    println!(
        "admitted: {} of {} tokens cached, {same} pages byte-identical to what was written",
        again.cached_tokens,
        prompts[0].len()
    );
    core.free(again.seq)?;
    drop(core);
    drop(ticket); // the ticket held the onboarded blocks until the request was admitted

    let m = t.metrics();
    let g3 = m.g3.map_or(0, |d| d.used_slots);
    println!(
        "now: G1 {} cached, G2 {} pages, G3 {g3} pages; nothing lost: {} unbacked G1 evictions",
        m.g1.evictable, m.g2.used, m.g1.unbacked_evictions
    );
    t.check_invariants()?;
    Ok(())
}

/// The KV a runtime would have computed for the block of `hash` (here: bytes derived from it).
fn kv_of(hash: BlockHash, len: usize) -> Vec<u8> {
    let mut x = hash.0 as u64 | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A new directory of our own under the system's temp dir (created, not reused: 0700, and
/// refused if the name exists).
fn scratch_dir() -> Result<PathBuf> {
    use std::os::unix::fs::DirBuilderExt;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.subsec_nanos();
    let dir = std::env::temp_dir().join(format!("kvtier-quickstart-{}-{nanos:09}", std::process::id()));
    std::fs::DirBuilder::new().mode(0o700).create(&dir)?;
    Ok(dir)
}
