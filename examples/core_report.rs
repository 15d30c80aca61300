//! Hot-path report of the G1 core: ns per block for each workload at pool sizes 1K, 100K and
//! 10M blocks, against the performance targets.
//!
//! `cargo run --release --example core_report [-- --quick]`
//!
//! Every cell is the median of several repeats (timed with `Instant`, after a warm-up). The
//! workloads avoid being cache-friendly by accident: before measuring, the free queue is
//! churned into a random order, cached prefixes are allocated from that random queue, the
//! evictable (LRU) order is shuffled, lookups pick random prefixes over the whole index and the
//! decode sequences are spread over the pool. Per-op time should stay flat from 1K to 10M
//! (every operation is O(1)); what grows is the share of cache misses.

use std::hint::black_box;
use std::time::Instant;

use kvtier::policy::{EvictionPolicy, Lru, PolicyKind};
use kvtier::testing::XorShift;
use kvtier::{
    Arena, BatchTables, BlockHash, BlockId, BlockPool, CacheConfig, Dtype, ExtraKeys, KvCache, KvLayout, SeqId,
};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

const BLOCK_TOKENS: usize = 16;
const PREFIX_BLOCKS: usize = 32;
const DECODE_SEQS: usize = 256;

/// Settings of one run.
struct Plan {
    sizes: Vec<usize>,
    repeats: usize,
    /// Scales every workload's operations per repeat.
    scale: f64,
}

/// Median and relative spread of one measurement.
#[derive(Clone, Copy)]
struct Cell {
    median: f64,
    spread: f64,
}

/// Runs `sample` (returning the ns per op of one repeat) once to warm up, then `repeats`
/// times; keeps the median and (max - min) / median.
fn measure(repeats: usize, mut sample: impl FnMut() -> f64) -> Cell {
    sample();
    let mut v: Vec<f64> = (0..repeats).map(|_| sample()).collect();
    v.sort_by(f64::total_cmp);
    let median = v[v.len() / 2];
    Cell { median, spread: (v[v.len() - 1] - v[0]) / median.max(1e-9) }
}

fn ns_per(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn ops(plan: &Plan, base: usize) -> usize {
    ((base as f64 * plan.scale) as usize).max(1)
}

/// The tiny page used wherever page memory is written: 1 layer, 1 KV head, head_dim 4, F16,
/// 16-token blocks = 256 B pages (2.5 GiB at 10M blocks, prefaulted before timing).
fn tiny_layout() -> Result<KvLayout> {
    Ok(KvLayout::new(1, 1, 4, Dtype::F16, BLOCK_TOKENS as u32)?)
}

/// A pool whose free queue holds every block in a random order.
fn churned_pool(n: usize, rng: &mut XorShift, events: usize) -> Result<BlockPool> {
    churned_pool_with(n, rng, events, Lru::new(n))
}

/// [`churned_pool`] evicting with `policy`.
fn churned_pool_with<P: EvictionPolicy>(
    n: usize,
    rng: &mut XorShift,
    events: usize,
    policy: P,
) -> Result<BlockPool<P>> {
    let mut pool = BlockPool::with_policy(n, policy, events)?;
    let mut all = Vec::with_capacity(n);
    pool.allocate(n, &mut all)?;
    rng.shuffle(&mut all);
    pool.release_all(all)?;
    Ok(pool)
}

/// alloc + free of `batch` blocks, ns per block.
fn alloc_free(pool: &mut BlockPool, batch: usize, total_blocks: usize) -> Result<f64> {
    let rounds = (total_blocks / batch).max(1);
    let mut blocks = Vec::with_capacity(batch);
    let start = Instant::now();
    for _ in 0..rounds {
        pool.allocate(batch, &mut blocks)?;
        black_box(&blocks);
        pool.release_all(blocks.drain(..).rev())?;
    }
    Ok(ns_per(start, rounds * batch))
}

/// `n / 32` cached prefixes of 32 blocks filling the whole pool: blocks come from a churned
/// (random) free queue and become evictable in a random prefix order (tail first, as a
/// finishing sequence releases them). Returns the pool and every prefix's hashes.
fn cached_pool(n: usize, rng: &mut XorShift) -> Result<(BlockPool, Vec<BlockHash>)> {
    cached_pool_with_events(n, rng, 1 << 16)
}

/// [`cached_pool`] with a given KV event buffer (0: events off).
fn cached_pool_with_events(n: usize, rng: &mut XorShift, events: usize) -> Result<(BlockPool, Vec<BlockHash>)> {
    cached_pool_with(n, rng, events, Lru::new(n))
}

/// [`cached_pool_with_events`] evicting with `policy`.
fn cached_pool_with<P: EvictionPolicy>(
    n: usize,
    rng: &mut XorShift,
    events: usize,
    policy: P,
) -> Result<(BlockPool<P>, Vec<BlockHash>)> {
    let mut pool = churned_pool_with(n, rng, events, policy)?;
    let prefixes = n / PREFIX_BLOCKS;
    let keys = ExtraKeys::default();
    let mut hashes = Vec::with_capacity(prefixes * PREFIX_BLOCKS);
    let mut tokens = vec![0u32; PREFIX_BLOCKS * BLOCK_TOKENS];
    let mut blocks = Vec::with_capacity(prefixes * PREFIX_BLOCKS);
    let mut chain = Vec::with_capacity(PREFIX_BLOCKS);
    for _ in 0..prefixes {
        tokens.iter_mut().for_each(|t| *t = rng.next_u64() as u32 % 128_000);
        chain.clear();
        BlockHash::extend_chain(&mut chain, &tokens, BLOCK_TOKENS, &keys);
        let at = blocks.len();
        pool.allocate(PREFIX_BLOCKS, &mut blocks)?;
        let mut parent = None;
        for (b, h) in blocks[at..].iter().zip(&chain) {
            if !pool.register(*b, *h, parent, BLOCK_TOKENS as u32)? {
                return Err("duplicate hash while filling the cache".into());
            }
            parent = Some(*h);
        }
        hashes.extend_from_slice(&chain);
    }
    assert_eq!(pool.num_in_use(), prefixes * PREFIX_BLOCKS, "every prefix block registered");
    let mut order: Vec<usize> = (0..prefixes).collect();
    rng.shuffle(&mut order);
    for p in order {
        let own = &blocks[p * PREFIX_BLOCKS..(p + 1) * PREFIX_BLOCKS];
        pool.release_all(own.iter().rev().copied())?;
    }
    Ok((pool, hashes))
}

/// Longest-prefix lookup of random cached 32-block prefixes, ns per block.
fn lookup(pool: &mut BlockPool, hashes: &[BlockHash], queries: usize, rng: &mut XorShift) -> f64 {
    let prefixes = hashes.len() / PREFIX_BLOCKS;
    let picks: Vec<usize> = (0..queries).map(|_| rng.index(prefixes)).collect();
    let start = Instant::now();
    let mut hit = 0;
    for p in picks {
        hit += pool.longest_prefix(black_box(&hashes[p * PREFIX_BLOCKS..(p + 1) * PREFIX_BLOCKS]));
    }
    assert_eq!(hit, queries * PREFIX_BLOCKS, "every prefix is cached");
    ns_per(start, queries * PREFIX_BLOCKS)
}

/// Prefix hit taken and dropped: lookup + acquire_block per block, then release tail first.
fn acquire_release(pool: &mut BlockPool, hashes: &[BlockHash], queries: usize, rng: &mut XorShift) -> Result<f64> {
    let prefixes = hashes.len() / PREFIX_BLOCKS;
    let picks: Vec<usize> = (0..queries).map(|_| rng.index(prefixes)).collect();
    let mut held = Vec::with_capacity(PREFIX_BLOCKS);
    let start = Instant::now();
    for p in picks {
        for h in &hashes[p * PREFIX_BLOCKS..(p + 1) * PREFIX_BLOCKS] {
            let b = pool.lookup(*h).ok_or("prefix not cached")?;
            pool.acquire_block(b)?;
            held.push(b);
        }
        pool.release_all(held.drain(..).rev())?;
    }
    Ok(ns_per(start, queries * PREFIX_BLOCKS))
}

/// One block's life in steady state (the pool is full of cached blocks, so every allocation
/// evicts the LRU victim): allocate, write 16 tokens of K/V into its page, chain-hash,
/// register, release to evictable. ns per block.
fn lifecycle<P: EvictionPolicy>(
    pool: &mut BlockPool<P>,
    arena: &mut Arena,
    stream: &[u32],
    blocks: usize,
    cursor: &mut usize,
    parent: &mut Option<BlockHash>,
) -> Result<f64> {
    let keys = ExtraKeys::default();
    let token_kv = [0x5au8; 64];
    let start = Instant::now();
    for _ in 0..blocks {
        let b = pool.allocate_one()?;
        let page = arena.page_mut(b)?;
        let per_token = page.len() / BLOCK_TOKENS;
        for chunk in page.chunks_exact_mut(per_token) {
            chunk.copy_from_slice(&token_kv[..per_token]);
        }
        // Tokens come from a sequence's token vector written earlier (as in a runtime); the
        // chain through `parent` keeps every hash distinct.
        let at = *cursor % (stream.len() / BLOCK_TOKENS) * BLOCK_TOKENS;
        *cursor += 1;
        let h = BlockHash::chain(*parent, &stream[at..at + BLOCK_TOKENS], at, &keys);
        black_box(pool.register(b, h, *parent, BLOCK_TOKENS as u32)?);
        pool.release(b)?;
        *parent = Some(h);
    }
    Ok(ns_per(start, blocks))
}

/// Chained hashing of 16-token blocks over a long token stream, ns per block.
fn hashing(tokens: &[u32], out: &mut Vec<BlockHash>) -> f64 {
    out.clear();
    let start = Instant::now();
    BlockHash::extend_chain(out, black_box(tokens), BLOCK_TOKENS, &ExtraKeys::default());
    black_box(&out);
    ns_per(start, tokens.len() / BLOCK_TOKENS)
}

/// `DECODE_SEQS` running sequences with context lengths in `ctx`, committed (prefill done),
/// their blocks spread over the whole pool: between sequences a filler sequence grows over a
/// gap of blocks and is truncated, so those blocks go to the back of the free queue.
fn decode_cache(n: usize, ctx: (usize, usize), rng: &mut XorShift) -> Result<(KvCache, Vec<SeqId>, Vec<usize>)> {
    let seq_blocks = DECODE_SEQS * ctx.1.div_ceil(BLOCK_TOKENS);
    let gap = (n * 9 / 10).saturating_sub(2 * seq_blocks) / DECODE_SEQS;
    let config =
        CacheConfig::new(tiny_layout()?, n).with_arena(false).with_max_seq_len((gap * BLOCK_TOKENS + 1).max(1 << 20));
    let cache = KvCache::new(config)?;
    let keys = ExtraKeys::default();
    let mut g = cache.lock();
    let filler = g.add_sequence(&[1], &keys)?.seq;
    let filler_tokens = vec![3u32; gap * BLOCK_TOKENS];
    let (mut seqs, mut lens) = (Vec::new(), Vec::new());
    for _ in 0..DECODE_SEQS {
        if gap > 0 {
            g.append_tokens(filler, &filler_tokens)?;
            g.truncate(filler, 1)?;
        }
        let len = ctx.0 + rng.index(ctx.1 - ctx.0 + 1);
        let prompt: Vec<u32> = (0..len).map(|_| rng.next_u64() as u32 % 128_000).collect();
        let s = g.add_sequence(&prompt, &keys)?.seq;
        g.commit(s)?;
        seqs.push(s);
        lens.push(len);
    }
    g.free(filler)?;
    drop(g);
    Ok((cache, seqs, lens))
}

/// `steps` decode steps, each: take the lock once and run `decode_step` (append one token to
/// every sequence and export the batch tables in one pass; timed); then commit every sequence
/// (timed separately, as the runtime does it after the forward pass). Sequences are truncated back afterwards. Returns µs per step
/// for (append + export, commit).
fn decode(cache: &KvCache, seqs: &[SeqId], lens: &[usize], steps: usize, token: &mut u32) -> Result<(f64, f64)> {
    let mut tables = BatchTables::new();
    let mut copies = Vec::new();
    let (mut step_ns, mut commit_ns) = (0u128, 0u128);
    for _ in 0..steps {
        *token = token.wrapping_add(1);
        let step_tokens = vec![*token; seqs.len()];
        let start = Instant::now();
        {
            let mut g = cache.lock();
            g.decode_step(seqs, &step_tokens, &mut tables, &mut copies)?;
        }
        step_ns += start.elapsed().as_nanos();
        black_box(&tables);
        let start = Instant::now();
        {
            let mut g = cache.lock();
            for &s in seqs {
                g.commit(s)?;
            }
        }
        commit_ns += start.elapsed().as_nanos();
    }
    let mut g = cache.lock();
    for (&s, &len) in seqs.iter().zip(lens) {
        g.truncate(s, len)?;
    }
    Ok((step_ns as f64 / steps as f64 / 1e3, commit_ns as f64 / steps as f64 / 1e3))
}

/// One row of the report: a cell per pool size.
struct Row {
    name: &'static str,
    unit: &'static str,
    target: Option<f64>,
    cells: Vec<Option<Cell>>,
}

fn run_size(n: usize, plan: &Plan, rows: &mut [Row], meta_bytes: &mut Vec<(f64, f64)>) -> Result<()> {
    let col = |rows: &mut [Row], i: usize, c: Option<Cell>| rows[i].cells.push(c);
    let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let t0 = Instant::now();

    // 1. alloc + free on a churned free queue.
    let mut pool = churned_pool(n, &mut rng, 1 << 16)?;
    let adaptive = BlockPool::with_policy(n, kvtier::policy::Adaptive::new(n), 0)?.metadata_bytes_per_block();
    meta_bytes.push((pool.metadata_bytes_per_block(), adaptive));
    for (i, batch) in [1usize, 16, 256].into_iter().enumerate() {
        let total = ops(plan, 200_000);
        let c = measure(plan.repeats, || alloc_free(&mut pool, batch, total).unwrap_or(f64::NAN));
        col(rows, i, Some(c));
    }
    drop(pool);

    // 2. hashing (pool independent; measured per column to show noise).
    let stream: Vec<u32> = (0..ops(plan, 20_000) * BLOCK_TOKENS).map(|_| rng.next_u64() as u32 % 128_000).collect();
    let mut out = Vec::with_capacity(stream.len() / BLOCK_TOKENS);
    col(rows, 3, Some(measure(plan.repeats, || hashing(&stream, &mut out))));

    // 3. lookup, acquire/release and lifecycle on a pool full of cached prefixes.
    let (mut pool, hashes) = cached_pool(n, &mut rng)?;
    let queries = ops(plan, 4_000);
    col(rows, 4, Some(measure(plan.repeats, || lookup(&mut pool, &hashes, queries, &mut rng))));
    let c = measure(plan.repeats, || acquire_release(&mut pool, &hashes, queries, &mut rng).unwrap_or(f64::NAN));
    col(rows, 5, Some(c));
    drop(hashes);
    let mut arena = Arena::new(n, tiny_layout()?.page_bytes())?;
    for i in 0..n {
        arena.page_mut(BlockId(i as u32))?[0] = 1; // prefault: no page faults while timing
    }
    let (mut cursor, mut parent) = (0, None);
    let blocks = ops(plan, 100_000);
    let c = measure(plan.repeats, || {
        lifecycle(&mut pool, &mut arena, &stream, blocks, &mut cursor, &mut parent).unwrap_or(f64::NAN)
    });
    col(rows, 6, Some(c));
    drop(pool);
    // the same without KV events (a pool whose owner has no router to feed)
    let (mut pool, hashes) = cached_pool_with_events(n, &mut rng, 0)?;
    drop(hashes);
    let c = measure(plan.repeats, || {
        lifecycle(&mut pool, &mut arena, &stream, blocks, &mut cursor, &mut parent).unwrap_or(f64::NAN)
    });
    col(rows, 11, Some(c));
    drop(pool);
    // the same evicting with LHD instead of LRU
    let (mut pool, hashes) = cached_pool_with(n, &mut rng, 1 << 16, kvtier::policy::Lhd::new(n))?;
    drop(hashes);
    let c = measure(plan.repeats, || {
        lifecycle(&mut pool, &mut arena, &stream, blocks, &mut cursor, &mut parent).unwrap_or(f64::NAN)
    });
    col(rows, 17, Some(c));
    drop(pool);
    // the same with the adaptive policy (G1's default)
    let (mut pool, hashes) = cached_pool_with(n, &mut rng, 1 << 16, kvtier::policy::Adaptive::new(n))?;
    drop(hashes);
    let c = measure(plan.repeats, || {
        lifecycle(&mut pool, &mut arena, &stream, blocks, &mut cursor, &mut parent).unwrap_or(f64::NAN)
    });
    col(rows, 18, Some(c));
    drop((pool, arena));

    // 4. decode steps of 256 sequences, short and (where the pool holds them) long contexts.
    for (row, ctx, steps) in [(7, (1usize, 16usize), 16usize), (9, (512, 1536), 32)] {
        let need = DECODE_SEQS * (ctx.1 + steps).div_ceil(BLOCK_TOKENS) * 11 / 10;
        if need > n {
            col(rows, row, None);
            col(rows, row + 1, None);
            continue;
        }
        let (cache, seqs, lens) = decode_cache(n, ctx, &mut rng)?;
        let mut token = 0;
        let mut commits = Vec::new();
        let steps = ops(plan, steps).max(4);
        let c = measure(plan.repeats, || match decode(&cache, &seqs, &lens, steps, &mut token) {
            Ok((step, commit)) => {
                commits.push(commit);
                step
            }
            Err(_) => f64::NAN,
        });
        commits.sort_by(f64::total_cmp);
        col(rows, row, Some(c));
        col(rows, row + 1, Some(Cell { median: commits[commits.len() / 2], spread: 0.0 }));
    }
    // 5. eviction policies alone: a full cache turning over (victim out, new content in, one
    // in four operations a prefix hit reviving a random evictable entry).
    for (i, kind) in PolicyKind::ALL.into_iter().enumerate() {
        let c = measure(plan.repeats, || policy_churn(kind, n, ops(plan, 200_000), &mut rng));
        col(rows, 12 + i, Some(c));
    }
    eprintln!("  pool {:>10} blocks measured in {:.1} s", n, t0.elapsed().as_secs_f64());
    Ok(())
}

/// ns per policy operation (evict + admit, or revive) on a full cache of `n` entries.
fn policy_churn(kind: PolicyKind, n: usize, total: usize, rng: &mut XorShift) -> f64 {
    let mut p = kind.build(n);
    let mut order: Vec<u32> = (0..n as u32).collect();
    rng.shuffle(&mut order);
    let mut key = 1u64;
    for &b in &order {
        p.on_register(BlockId(b), key);
        p.insert(BlockId(b));
        key += 1;
    }
    let targets: Vec<u32> = (0..total).map(|_| rng.index(n) as u32).collect();
    let start = Instant::now();
    for (i, &t) in targets.iter().enumerate() {
        if i % 4 == 3 {
            // A prefix hit on an evictable entry (a no-op remove if it is not linked).
            p.remove(BlockId(t));
            p.on_hit(BlockId(t));
            p.insert(BlockId(t));
        } else if let Some(v) = p.pop_victim() {
            // Reuse with new content; every 8th key is an old one coming back (ghost hits).
            key += 1;
            let k = if key.is_multiple_of(8) { key.saturating_sub(n as u64 / 2).max(1) } else { key };
            p.on_register(v, k);
            p.insert(v);
        }
    }
    black_box(p.len());
    ns_per(start, total)
}

fn size_name(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1_000 && n % 1_000 == 0 => format!("{}K", n / 1_000),
        n => n.to_string(),
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let plan = if quick {
        Plan { sizes: vec![1_000, 100_000], repeats: 3, scale: 0.05 }
    } else {
        Plan { sizes: vec![1_000, 100_000, 10_000_000], repeats: 7, scale: 1.0 }
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("kvtier core report{}", if quick { " (--quick: smoke run, numbers are rough)" } else { "" });
    println!(
        "machine: {} | {} cores | {} build",
        cpu_model(),
        cores,
        if cfg!(debug_assertions) { "DEBUG" } else { "release" }
    );
    let t0 = Instant::now();
    let row = |name, unit, target| Row { name, unit, target, cells: Vec::new() };
    let mut rows = vec![
        row("alloc+free, batch 1", "ns/block", Some(10.0)),
        row("alloc+free, batch 16", "ns/block", Some(10.0)),
        row("alloc+free, batch 256", "ns/block", Some(10.0)),
        row("chained hash, 16-token block", "ns/block", Some(25.0)),
        row("prefix lookup, 32-block prefix", "ns/block", Some(20.0)),
        row("  lookup+acquire+release", "ns/block", None),
        row("lifecycle (alloc/fill/hash/reg/rel)", "ns/block", Some(60.0)),
        row("decode 256 seqs, ctx 1-16 tok", "us/step", Some(5.0)),
        row("  + commit after the step", "us/step", None),
        row("decode 256 seqs, ctx 512-1536 tok", "us/step", Some(5.0)),
        row("  + commit after the step", "us/step", None),
        row("lifecycle, KV events off", "ns/block", Some(60.0)),
        row("policy lru: evict+admit / revive", "ns/op", None),
        row("policy s3fifo: evict+admit / revive", "ns/op", None),
        row("policy arc: evict+admit / revive", "ns/op", None),
        row("policy lhd: evict+admit / revive", "ns/op", None),
        row("policy adaptive: evict+admit / revive", "ns/op", None),
        row("lifecycle evicting with LHD", "ns/block", None),
        row("lifecycle evicting with adaptive (G1)", "ns/block", None),
    ];
    let mut meta_bytes = Vec::new();
    for &n in &plan.sizes {
        run_size(n, &plan, &mut rows, &mut meta_bytes)?;
    }

    let w = 36;
    print!("\n{:<w$} {:>9}", "workload", "unit");
    for &n in &plan.sizes {
        print!(" {:>12}", format!("{} blocks", size_name(n)));
    }
    println!(" {:>8}  verdict", "target");
    let mut worst = (0.0, "");
    let mut spreads = Vec::new();
    for r in &rows {
        print!("{:<w$} {:>9}", r.name, r.unit);
        let mut fails = Vec::new();
        for (c, &n) in r.cells.iter().zip(&plan.sizes) {
            match c {
                Some(c) => {
                    let over = r.target.is_some_and(|t| c.median > t);
                    let mark = match r.target {
                        Some(_) if over => "✗",
                        Some(_) => "✓",
                        None => " ",
                    };
                    print!(" {:>10.1} {mark}", c.median);
                    if over {
                        fails.push(size_name(n));
                    }
                    if c.spread > 0.0 {
                        spreads.push(c.spread);
                        if c.spread > worst.0 {
                            worst = (c.spread, r.name);
                        }
                    }
                }
                None => print!(" {:>12}", "n/a"),
            }
        }
        match r.target {
            Some(t) if fails.is_empty() => println!(" {:>8}  PASS", format!("<= {t}")),
            Some(t) => println!(" {:>8}  FAIL at {}", format!("<= {t}"), fails.join(", ")),
            None => println!(),
        }
    }
    print!("{:<w$} {:>9}", "metadata per block", "bytes");
    for (b, _) in &meta_bytes {
        print!(" {b:>10.1}  ");
    }
    println!();
    print!("{:<w$} {:>9}", "  ... with adaptive (G1 default)", "bytes");
    for (_, b) in &meta_bytes {
        print!(" {b:>10.1}  ");
    }
    println!();
    spreads.sort_by(f64::total_cmp);
    let median_spread = spreads.get(spreads.len() / 2).copied().unwrap_or(0.0);
    println!(
        "\nnoise: cells are medians of {} repeats; (max-min)/median is {:.0}% typical, {:.0}% worst ({}).",
        plan.repeats,
        median_spread * 100.0,
        worst.0 * 100.0,
        worst.1.trim()
    );
    println!("pages: 1 layer, 1 KV head, head_dim 4, F16, 16-token blocks = 256 B (lifecycle writes them;");
    println!("       the arena is prefaulted). alloc/lookup use BlockPool alone; decode is metadata-only.");
    println!("decode: n/a where the pool cannot hold 256 sequences of that context.");
    println!("total {:.1} s", t0.elapsed().as_secs_f64());
    Ok(())
}
