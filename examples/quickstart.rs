//! A scheduler's view of kvtier: requests sharing a system prompt, decode steps with flat block
//! tables, parallel sampling by fork, eviction under pressure and the KV events a router sees.
//!
//! `cargo run --release --example quickstart`

use kvtier::{BatchTables, CacheConfig, Error, ExtraKeys, KvCache, KvEvent, KvEventKind, KvLayout, SeqId};

fn main() -> Result<(), Error> {
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
    cache.lock().check_invariants().map_err(|_| Error::InvalidConfig { field: "pool", reason: "invariant broken" })?;
    Ok(())
}
