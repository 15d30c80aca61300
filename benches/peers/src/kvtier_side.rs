//! The kvtier side.
//!
//! Block-level workloads (alloc/free, prefix match) drive the single-threaded core
//! [`kvtier::BlockPool`] directly (kvbm's numbers include its internal mutex; see the extra
//! "under a Mutex" row). Sequence-level workloads (lifecycle, admission of a cached prompt,
//! decode) go through the thread-safe [`kvtier::KvCache`] facade, metadata-only
//! (`with_arena(false)`: kvbm-logical manages no page memory either).

use std::hint::black_box;
use std::sync::Mutex;
use std::time::Instant;

use kvtier::{BatchTables, BlockHash, BlockId, BlockPool, CacheConfig, ExtraKeys, KvCache, KvLayout, SeqId};

use crate::common::*;

fn cache(blocks: usize) -> KvCache {
    let layout = KvLayout::llama_3_1_8b(BLOCK_TOKENS as u32).expect("layout");
    KvCache::new(CacheConfig::new(layout, blocks).with_arena(false)).expect("KvCache")
}

fn hashes_of(tokens: &[u32]) -> Vec<BlockHash> {
    let mut out = Vec::new();
    BlockHash::extend_chain(&mut out, tokens, BLOCK_TOKENS, &ExtraKeys::default());
    out
}

pub fn run(cfg: &Cfg, only: &dyn Fn(&str) -> bool) -> Results {
    let mut r = Results::default();
    let ek = ExtraKeys::default();

    // 1. alloc + free, batches of 1 and 16 blocks per op.
    if only("alloc") {
        let mut pool = BlockPool::new(cfg.pool).expect("pool");
        let mut ids: Vec<BlockId> = Vec::with_capacity(16);
        for (batch, slot) in [(1usize, &mut r.alloc_free_1), (16, &mut r.alloc_free_16)] {
            let ops = cfg.iters(2_000_000 / batch.max(4));
            let [v] = median_of(cfg, 2, || {
                let t = Instant::now();
                for _ in 0..ops {
                    pool.allocate(batch, &mut ids).expect("allocate");
                    black_box(&ids);
                    pool.release_all(ids.drain(..).rev()).expect("release");
                }
                [ns_since(t) / (ops * batch) as f64]
            });
            *slot = Some(v);
        }
        assert_eq!(pool.num_free(), cfg.pool);

        // The same, one lock per op, as a thread-safe caller would pay.
        let pool = Mutex::new(pool);
        let ops = cfg.iters(500_000);
        let [v] = median_of(cfg, 2, || {
            let t = Instant::now();
            for _ in 0..ops {
                let mut p = pool.lock().unwrap();
                p.allocate(1, &mut ids).expect("allocate");
                black_box(&ids);
                p.release_all(ids.drain(..)).expect("release");
            }
            [ns_since(t) / ops as f64]
        });
        r.alloc_free_1_locked = Some(v);
    }

    // 2. chained hashing of a 4096-token prompt into 256 block hashes (buffer reused).
    if only("hash") {
        let toks = tokens(1, PROMPT_BLOCKS * BLOCK_TOKENS);
        let iters = cfg.iters(4_000);
        let mut out: Vec<BlockHash> = Vec::with_capacity(PROMPT_BLOCKS);
        let [v] = median_of(cfg, 2, || {
            let t = Instant::now();
            for _ in 0..iters {
                out.clear();
                BlockHash::extend_chain(&mut out, black_box(&toks), BLOCK_TOKENS, &ek);
                black_box(&out);
            }
            [ns_since(t) / (iters * PROMPT_BLOCKS) as f64]
        });
        r.hash = Some(v);
        r.hash_raw = Some(v); // extend_chain is already the raw, allocation-free path
    }

    // 3. match a cached (evictable) 256-block prefix by hash, taking a reference on every hit
    //    (reviving it), then release the matched blocks tail first.
    if only("match") {
        let mut pool = BlockPool::new(cfg.pool).expect("pool");
        let toks = tokens(2, PROMPT_BLOCKS * BLOCK_TOKENS);
        let hashes = hashes_of(&toks);
        let mut ids = Vec::with_capacity(PROMPT_BLOCKS);
        pool.allocate(PROMPT_BLOCKS, &mut ids).expect("allocate");
        for (i, (&b, &h)) in ids.iter().zip(&hashes).enumerate() {
            let parent = i.checked_sub(1).map(|p| hashes[p]);
            assert!(pool.register(b, h, parent, BLOCK_TOKENS as u32).expect("register"));
        }
        pool.release_all(ids.drain(..).rev()).expect("release");
        assert_eq!(pool.num_evictable(), PROMPT_BLOCKS);
        let iters = cfg.iters(4_000);
        let [mt, rl] = median_of(cfg, 2, || {
            let (mut tm, mut tr) = (0.0, 0.0);
            for _ in 0..iters {
                let t0 = Instant::now();
                for h in black_box(&hashes) {
                    match pool.acquire_cached(*h).expect("acquire") {
                        Some(b) => ids.push(b),
                        None => break,
                    }
                }
                let t1 = Instant::now();
                assert_eq!(ids.len(), PROMPT_BLOCKS);
                pool.release_all(ids.drain(..).rev()).expect("release");
                tr += ns_since(t1);
                tm += (t1 - t0).as_nanos() as f64;
            }
            let n = (iters * PROMPT_BLOCKS) as f64;
            [tm / n, tr / n]
        });
        r.match_prefix = Some(mt);
        r.release_matched = Some(rl);

        // 3b. admit a fully cached 4096-token prompt through the facade (hash + match + share,
        //     allocate the last block, which is always recomputed) and free it.
        let c = cache(cfg.pool);
        let a = c.add_sequence(&toks, &ek).expect("add");
        c.commit(a.seq).expect("commit");
        c.free(a.seq).expect("free");
        let iters = cfg.iters(2_000);
        let [v] = median_of(cfg, 2, || {
            let t = Instant::now();
            for _ in 0..iters {
                let a = c.add_sequence(black_box(&toks), &ek).expect("add");
                assert_eq!(a.cached_tokens, (PROMPT_BLOCKS - 1) * BLOCK_TOKENS);
                c.free(a.seq).expect("free");
            }
            [ns_since(t) / (iters * PROMPT_BLOCKS) as f64]
        });
        r.admit_cached = Some(v);
    }

    // 4. full lifecycle per block: allocate, fill 16 tokens, hash, register, release to
    //    evictable. Unique content per request; warmup fills the pool so the timed part runs
    //    in steady state (allocation evicts the LRU cached block).
    if only("lifecycle") {
        let c = cache(cfg.pool);
        let mut toks = tokens(3, PROMPT_BLOCKS * BLOCK_TOKENS);
        let mut req = 0u64;
        let warm = cfg.pool / PROMPT_BLOCKS + 8;
        let iters = cfg.iters(400);
        for _ in 0..warm {
            req += 1;
            make_unique(&mut toks, req);
            let a = c.add_sequence(&toks, &ek).expect("add");
            c.commit(a.seq).expect("commit");
            c.free(a.seq).expect("free");
        }
        assert_eq!(c.metrics().free, 0, "warmup should leave no free blocks");

        // 4a. block at a time: append 16 tokens (allocates), commit (hash + register).
        let [v] = median_of(cfg, 1, || {
            let mut total = 0.0;
            for _ in 0..iters {
                req += 1;
                make_unique(&mut toks, req);
                let t = Instant::now();
                let seq = c.add_sequence(&[], &ek).expect("add").seq;
                for chunk in toks.chunks_exact(BLOCK_TOKENS) {
                    c.append_tokens(seq, chunk).expect("append");
                    c.commit(seq).expect("commit");
                }
                c.free(seq).expect("free");
                total += ns_since(t);
            }
            [total / (iters * PROMPT_BLOCKS) as f64]
        });
        r.lifecycle_block = Some(v);

        // 4b. a whole 256-block prompt at once.
        let [v] = median_of(cfg, 1, || {
            let t0 = Instant::now();
            for _ in 0..iters {
                req += 1;
                make_unique(&mut toks, req);
                let a = c.add_sequence(&toks, &ek).expect("add");
                c.commit(a.seq).expect("commit");
                c.free(a.seq).expect("free");
            }
            [ns_since(t0) / (iters * PROMPT_BLOCKS) as f64]
        });
        r.lifecycle_prompt = Some(v);
    }

    // 5. one decode step of 256 running sequences, one lock for the whole step: append the
    //    token sampled last step to each (allocates a block every 16th step), export the
    //    batch's block table + slot mapping, then commit (registers a block that filled).
    if only("decode") {
        let c = cache(cfg.pool);
        let seqs: Vec<SeqId> = (0..DECODE_SEQS)
            .map(|s| {
                let a = c.add_sequence(&tokens(1000 + s as u64, DECODE_PROMPT_TOKENS), &ek).expect("add");
                c.commit(a.seq).expect("prefill done");
                a.seq
            })
            .collect();
        let mut tables = BatchTables::new();
        let mut step = 1usize;
        let steps = cfg.iters(200);
        let [v, e] = median_of(cfg, 1, || {
            let mut te = 0.0;
            let mut step_tokens = vec![0u32; seqs.len()];
            let mut export_only = BatchTables::new();
            let mut copies = Vec::new();
            let mut t_total = 0.0;
            for _ in 0..steps {
                for (s, tok) in step_tokens.iter_mut().enumerate() {
                    *tok = decode_token(s, step - 1);
                }
                let t = Instant::now();
                let mut g = c.lock();
                // append + export in one pass
                g.decode_step(&seqs, &step_tokens, &mut tables, &mut copies).expect("decode step");
                black_box(&tables);
                let t_export = Instant::now();
                // the export alone, measured apart (not part of the step's time)
                g.export_batch(&seqs, &mut export_only).expect("export");
                black_box(&export_only);
                let export_ns = ns_since(t_export);
                te += export_ns;
                for &seq in &seqs {
                    g.commit(seq).expect("commit");
                }
                drop(g);
                t_total += ns_since(t) - export_ns;
                step += 1;
            }
            [t_total / steps as f64, te / steps as f64]
        });
        assert_eq!(tables.slot_mapping().len(), DECODE_SEQS);
        r.decode_step = Some(v);
        r.decode_export = Some(e);
    }
    r
}
