//! Behaviour tests of the G1 core through the public API only (`kvtier::...`).

use std::collections::HashSet;

use kvtier::{
    BatchTables, BlockCondition, BlockHash, BlockId, BlockPool, BlockState, CacheConfig, CacheCore, Dtype, Error,
    ExtraKeys, HASH_SEED, HASH_VERSION, KvCache, KvEvent, KvEventKind, KvLayout, MmInput, SeqId,
};

mod common;
use common::XorShift;

/// A tiny layout: 32 bytes per token (1 layer, 1 head, dim 4, f32, K and V).
fn layout(bs: u32) -> KvLayout {
    KvLayout::new(1, 1, 4, Dtype::F32, bs).unwrap()
}

fn cfg(bs: u32, blocks: usize) -> CacheConfig {
    CacheConfig::new(layout(bs), blocks).with_watermark(0.0)
}

fn cache(bs: u32, blocks: usize) -> KvCache {
    KvCache::new(cfg(bs, blocks)).unwrap()
}

fn toks(range: std::ops::Range<u32>) -> Vec<u32> {
    range.collect()
}

fn no_keys() -> ExtraKeys {
    ExtraKeys::default()
}

fn invariants(c: &KvCache) {
    c.lock().check_invariants().unwrap();
}

fn hashes(c: &KvCache, t: &[u32], k: &ExtraKeys) -> Vec<BlockHash> {
    let mut v = Vec::new();
    c.lock().hash_tokens(t, k, &mut v);
    v
}

fn drain(c: &KvCache) -> Vec<KvEvent> {
    let mut v = Vec::new();
    c.drain_events(&mut v);
    v
}

// ---------------------------------------------------------------------------------------------
// Prefix hits
// ---------------------------------------------------------------------------------------------

#[test]
fn prefix_hits_are_whole_blocks_and_keep_the_last_token() {
    let bs = 4usize;
    for len in 1..=17usize {
        let c = cache(bs as u32, 64);
        let p: Vec<u32> = (100..100 + len as u32).collect();
        let a = c.add_sequence(&p, &no_keys()).unwrap();
        assert_eq!(a.cached_tokens, 0);
        assert_eq!(a.new_blocks, len.div_ceil(bs));
        c.commit(a.seq).unwrap();
        // identical prompt: every full block except one containing the last token is shared
        let b = c.add_sequence(&p, &no_keys()).unwrap();
        assert_eq!(b.cached_tokens % bs, 0, "len {len}");
        assert!(b.cached_tokens < len, "len {len}: fully cached prompt must recompute its last token");
        assert_eq!(b.cached_tokens, (len - 1) / bs * bs, "len {len}");
        assert_eq!(b.new_blocks, len.div_ceil(bs) - b.cached_tokens / bs);
        assert_eq!(c.lock().num_computed(b.seq).unwrap(), b.cached_tokens);
        // a longer prompt with the same head gets every full committed block
        let mut longer = p.clone();
        longer.extend([7, 7, 7, 7, 7]);
        let d = c.add_sequence(&longer, &no_keys()).unwrap();
        assert_eq!(d.cached_tokens, len / bs * bs, "len {len}");
        // a prompt that differs in the first token gets nothing
        let mut other = p.clone();
        other[0] = 1;
        let e = c.add_sequence(&other, &no_keys()).unwrap();
        assert_eq!(e.cached_tokens, 0);
        invariants(&c);
        for s in [a.seq, b.seq, d.seq, e.seq] {
            c.free(s).unwrap();
        }
        invariants(&c);
    }
}

#[test]
fn prefix_hit_stops_at_first_difference() {
    let c = cache(4, 32);
    let p = toks(0..16);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    let mut q = p.clone();
    q[9] = 999; // block 2 differs, so blocks 2 and 3 (chained) miss
    let b = c.add_sequence(&q, &no_keys()).unwrap();
    assert_eq!(b.cached_tokens, 8);
    let ta = c.lock().block_table(a.seq).unwrap().to_vec();
    let tb = c.lock().block_table(b.seq).unwrap().to_vec();
    assert_eq!(&ta[..2], &tb[..2]);
    assert!(ta[2..].iter().all(|x| !tb[2..].contains(x)));
    // longest_prefix agrees and counts queries/hits
    let m0 = c.metrics();
    assert_eq!(c.longest_prefix(&hashes(&c, &q, &no_keys())), 2);
    assert_eq!(c.longest_prefix(&hashes(&c, &p, &no_keys())), 4);
    let m1 = c.metrics();
    assert_eq!(m1.prefix_queries - m0.prefix_queries, 8);
    assert_eq!(m1.prefix_hits - m0.prefix_hits, 6);
    invariants(&c);
}

#[test]
fn sharing_raises_refcounts_and_hits_revive_evictable_blocks() {
    let c = cache(4, 16);
    let p = toks(0..9); // two full blocks and one partial
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    let ta = c.lock().block_table(a.seq).unwrap().to_vec();
    let b = c.add_sequence(&p, &no_keys()).unwrap();
    assert_eq!(b.cached_tokens, 8);
    {
        let g = c.lock();
        assert_eq!(g.pool().refcount(ta[0]).unwrap(), 2);
        assert_eq!(g.pool().refcount(ta[1]).unwrap(), 2);
        assert_eq!(g.pool().refcount(ta[2]).unwrap(), 1);
        assert_ne!(g.block_table(b.seq).unwrap()[2], ta[2], "the partial block is never shared");
    }
    c.free(a.seq).unwrap();
    {
        let g = c.lock();
        assert_eq!(g.pool().refcount(ta[0]).unwrap(), 1);
        assert_eq!(g.pool().state(ta[2]).unwrap(), BlockState::Free, "unhashed partial block goes free");
    }
    c.free(b.seq).unwrap();
    let m = c.metrics();
    assert_eq!(m.evictable, 2);
    assert_eq!(m.in_use, 0);
    assert_eq!(m.free, 14);
    {
        let g = c.lock();
        assert_eq!(g.pool().state(ta[0]).unwrap(), BlockState::Evictable);
        assert_eq!(g.pool().state(ta[1]).unwrap(), BlockState::Evictable);
    }
    // a hit revives them
    let d = c.add_sequence(&p, &no_keys()).unwrap();
    assert_eq!(d.cached_tokens, 8);
    assert_eq!(&c.lock().block_table(d.seq).unwrap()[..2], &ta[..2]);
    let m = c.metrics();
    assert_eq!(m.evictable, 0);
    assert_eq!(m.in_use, 3);
    {
        let g = c.lock();
        assert_eq!(g.pool().state(ta[0]).unwrap(), BlockState::InUse);
        assert_eq!(g.pool().refcount(ta[1]).unwrap(), 1);
    }
    invariants(&c);
}

#[test]
fn free_releases_tail_first_so_eviction_takes_the_tail_before_the_head() {
    for policy in kvtier::policy::PolicyKind::ALL {
        tail_before_head(KvCache::new(cfg(4, 4).with_policy(policy)).unwrap());
    }
}

fn tail_before_head(c: KvCache) {
    // 4 blocks: A takes all of them (3 full committed + 1 partial)
    let p = toks(0..13);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    let h = hashes(&c, &p, &no_keys());
    assert_eq!(h.len(), 3);
    drain(&c);
    c.free(a.seq).unwrap();
    assert_eq!(c.metrics().evictable, 3);
    assert_eq!(c.metrics().free, 1);
    // B needs 2 blocks: the free one plus one eviction, which must be the tail (block 2)
    let b = c.add_sequence(&toks(500..505), &no_keys()).unwrap();
    assert_eq!(b.new_blocks, 2);
    assert_eq!(c.longest_prefix(&h), 2);
    let ev = drain(&c);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0].kind, KvEventKind::Removed { hash: h[2] });
    // one more block: block 1 goes next, the head survives longest
    c.append_tokens(b.seq, &[1, 2, 3, 4]).unwrap();
    assert_eq!(c.longest_prefix(&h), 1);
    let ev = drain(&c);
    assert_eq!(ev[0].kind, KvEventKind::Removed { hash: h[1] });
    assert_eq!(c.metrics().evictions, 2);
    invariants(&c);
}

// ---------------------------------------------------------------------------------------------
// Errors leave the cache unchanged
// ---------------------------------------------------------------------------------------------

fn state_fingerprint(c: &KvCache, seqs: &[SeqId]) -> (kvtier::CacheMetrics, Vec<BlockHash>, Vec<Vec<BlockId>>) {
    let g = c.lock();
    let tables = seqs.iter().map(|s| g.block_table(*s).unwrap().to_vec()).collect();
    (g.metrics(), g.snapshot().hashes, tables)
}

#[test]
fn out_of_blocks_leaves_the_cache_unchanged() {
    let c = cache(4, 8);
    let shared = toks(0..8);
    let a = c.add_sequence(&shared, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    let b = c.add_sequence(&toks(100..116), &no_keys()).unwrap(); // 4 blocks
    assert_eq!(c.metrics().free, 2);
    let live = [a.seq, b.seq];
    let before = state_fingerprint(&c, &live);

    // plain miss needing 3 blocks
    let err = c.add_sequence(&toks(200..212), &no_keys()).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 3, available: 2 }), "{err:?}");
    assert_eq!(state_fingerprint(&c, &live), before, "failed add changed the cache");
    invariants(&c);

    // a prompt with a cached prefix (2 blocks hit) that still needs 3 new blocks
    let mut long = shared.clone();
    long.extend(300..311);
    let err = c.add_sequence(&long, &no_keys()).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 3, .. }), "{err:?}");
    assert_eq!(state_fingerprint(&c, &live), before, "failed add with a prefix hit changed the cache");
    invariants(&c);

    // append beyond the pool
    let err = c.append_tokens(b.seq, &toks(0..9)).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 3, available: 2 }), "{err:?}");
    assert_eq!(state_fingerprint(&c, &live), before, "failed append changed the cache");
    assert_eq!(c.lock().tokens(b.seq).unwrap(), &toks(100..116)[..]);
    invariants(&c);

    // still usable afterwards, and the freed blocks serve a retry
    c.free(b.seq).unwrap();
    let d = c.add_sequence(&long, &no_keys()).unwrap();
    assert_eq!(d.cached_tokens, 8);
    invariants(&c);
}

#[test]
fn evictable_blocks_count_as_available() {
    let c = cache(4, 4);
    let a = c.add_sequence(&toks(0..16), &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    c.free(a.seq).unwrap();
    assert_eq!(c.metrics().evictable, 4);
    assert!(c.can_allocate(4));
    let b = c.add_sequence(&toks(50..66), &no_keys()).unwrap();
    assert_eq!(b.new_blocks, 4);
    assert_eq!(c.metrics().evictions, 4);
    assert!(c.snapshot().hashes.is_empty());
    invariants(&c);
}

#[test]
fn watermark_reserves_blocks_for_running_sequences() {
    // 100 blocks, 10 % reserve
    let c = KvCache::new(CacheConfig::new(layout(4), 100).with_watermark(0.1)).unwrap();
    assert!(c.can_allocate(90));
    assert!(!c.can_allocate(91));
    let a = c.add_sequence(&toks(0..85 * 4), &no_keys()).unwrap();
    assert_eq!(a.new_blocks, 85);
    assert!(c.can_allocate(5));
    assert!(!c.can_allocate(6));
    // a new sequence may not dip into the reserve
    let err = c.add_sequence(&toks(0..6 * 4).iter().map(|x| x + 10_000).collect::<Vec<_>>(), &no_keys()).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 6, available: 5 }), "{err:?}");
    let b = c.add_sequence(&toks(20_000..20_020), &no_keys()).unwrap();
    assert_eq!(b.new_blocks, 5);
    assert!(!c.can_allocate(1));
    assert!(c.can_allocate(0));
    let err = c.add_sequence(&[1], &no_keys()).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 1, available: 0 }), "{err:?}");
    // a running sequence may use the reserve, down to the last block
    let out = c.append_tokens(a.seq, &toks(0..40)).unwrap();
    assert_eq!(out.new_blocks, 10);
    assert_eq!(c.metrics().free, 0);
    let err = c.append_tokens(a.seq, &[1]).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 1, available: 0 }), "{err:?}");
    // an empty prompt needs nothing and is admitted even then
    let e = c.add_sequence(&[], &no_keys()).unwrap();
    assert_eq!(e.new_blocks, 0);
    invariants(&c);
}

#[test]
fn reviving_a_prefix_counts_against_the_free_space() {
    // 5 blocks, A commits 2 full blocks and frees them, C holds one: 2 evictable + 2 free.
    let c = cache(4, 5);
    let p = toks(0..8);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    c.free(a.seq).unwrap();
    let _held = c.add_sequence(&toks(500..504), &no_keys()).unwrap();
    // a prompt reviving both blocks needs 3 more: 2 free remain once the hits are revived
    // (5 blocks in all: it would fit an otherwise empty pool, so it is "not now", not "never")
    let mut q = p.clone();
    q.extend(100..110);
    let err = c.add_sequence(&q, &no_keys()).unwrap_err();
    assert!(matches!(err, Error::OutOfBlocks { requested: 3, available: 2 }), "{err:?}");
    assert_eq!(c.longest_prefix(&hashes(&c, &p, &no_keys())), 2, "failed add must not evict the prefix");
    // three tokens more need 6 blocks: never
    q.extend([7, 7, 7]);
    let err = c.add_sequence(&q, &no_keys()).unwrap_err();
    assert!(matches!(err, Error::NeverFits { requested: 6, capacity: 5 }), "{err:?}");
    q.truncate(16);
    let b = c.add_sequence(&q, &no_keys()).unwrap();
    assert_eq!((b.cached_tokens, b.new_blocks), (8, 2));
    invariants(&c);
}

#[test]
fn max_seq_len_is_enforced() {
    let c = KvCache::new(cfg(4, 32).with_max_seq_len(10)).unwrap();
    let err = c.add_sequence(&toks(0..11), &no_keys()).unwrap_err();
    assert!(matches!(err, Error::SequenceTooLong { requested: 11, max: 10 }), "{err:?}");
    let a = c.add_sequence(&toks(0..10), &no_keys()).unwrap();
    let m = c.metrics();
    let err = c.append_tokens(a.seq, &[1]).unwrap_err();
    assert!(matches!(err, Error::SequenceTooLong { requested: 11, max: 10 }), "{err:?}");
    assert_eq!(c.metrics(), m);
    c.truncate(a.seq, 8).unwrap();
    c.append_tokens(a.seq, &[1, 2]).unwrap();
    assert_eq!(c.lock().tokens(a.seq).unwrap().len(), 10);
    assert_eq!(c.metrics().sequences, 1);
    invariants(&c);
}

#[test]
fn unknown_and_freed_sequences_are_rejected() {
    let c = cache(4, 16);
    let a = c.add_sequence(&toks(0..6), &no_keys()).unwrap();
    c.free(a.seq).unwrap();
    let m = c.metrics();
    let is_unknown = |r: Result<(), Error>| matches!(r, Err(Error::UnknownSequence(s)) if s == a.seq);
    assert!(is_unknown(c.free(a.seq)), "double free of a sequence");
    assert!(is_unknown(c.append_tokens(a.seq, &[1]).map(|_| ())));
    assert!(is_unknown(c.commit(a.seq).map(|_| ())));
    assert!(is_unknown(c.lock().commit_up_to(a.seq, 0).map(|_| ())));
    assert!(is_unknown(c.fork(a.seq).map(|_| ())));
    assert!(is_unknown(c.truncate(a.seq, 0)));
    assert!(is_unknown(c.lock().tokens(a.seq).map(|_| ())));
    assert!(is_unknown(c.lock().block_table(a.seq).map(|_| ())));
    assert!(is_unknown(c.lock().num_computed(a.seq).map(|_| ())));
    assert!(is_unknown(c.export_batch(&[a.seq], &mut BatchTables::new())));
    assert_eq!(c.metrics(), m);
    // a new sequence reusing the slot does not revive the old id
    let b = c.add_sequence(&toks(0..6), &no_keys()).unwrap();
    assert_ne!(b.seq, a.seq);
    assert!(is_unknown(c.free(a.seq)));
    assert_eq!(c.lock().tokens(b.seq).unwrap().len(), 6);
    // ids cannot be made up; one issued by another cache is refused as foreign, not as ours
    let other = cache(4, 16);
    let foreign = other.add_sequence(&toks(0..6), &no_keys()).unwrap().seq;
    assert!(matches!(c.free(foreign), Err(Error::ForeignSequence(s)) if s == foreign));
    other.free(foreign).unwrap();
    invariants(&c);
    c.free(b.seq).unwrap();
    invariants(&c);
}

#[test]
fn beyond_end_is_rejected_without_change() {
    let c = cache(4, 16);
    let a = c.add_sequence(&toks(0..6), &no_keys()).unwrap();
    let m = c.metrics();
    assert!(matches!(c.truncate(a.seq, 7), Err(Error::BeyondEnd { requested: 7, len: 6 })));
    assert!(matches!(c.lock().commit_up_to(a.seq, 7), Err(Error::BeyondEnd { requested: 7, len: 6 })));
    assert_eq!(c.metrics(), m);
    assert_eq!(c.lock().num_computed(a.seq).unwrap(), 0);
    assert_eq!(c.lock().tokens(a.seq).unwrap().len(), 6);
    invariants(&c);
}

#[test]
fn block_pool_rejects_double_free_and_bad_ids() {
    let mut p = BlockPool::new(4).unwrap();
    let b = p.allocate_one().unwrap();
    p.release(b).unwrap();
    assert!(matches!(p.release(b), Err(Error::DoubleFree(x)) if x == b));
    assert_eq!(p.num_free(), 4);
    let bad = BlockId(4);
    assert!(matches!(p.release(bad), Err(Error::InvalidBlock { block, capacity: 4 }) if block == bad));
    assert!(matches!(p.retain(bad), Err(Error::InvalidBlock { .. })));
    assert!(matches!(p.state(bad), Err(Error::InvalidBlock { .. })));
    assert!(matches!(p.refcount(BlockId(u32::MAX)), Err(Error::InvalidBlock { .. })));
    assert!(matches!(p.hash_of(bad), Err(Error::InvalidBlock { .. })));
    assert!(matches!(p.acquire_block(bad), Err(Error::InvalidBlock { .. })));
    assert!(matches!(p.register(bad, BlockHash(1), None, 4), Err(Error::InvalidBlock { .. })));
    // retaining or acquiring a free block is refused (it would hand out a block nobody owns)
    assert!(p.retain(b).is_err());
    assert!(p.acquire_block(b).is_err());
    assert_eq!(p.refcount(b).unwrap(), 0);
    // a shared block needs one release per reference, then the next is a double free
    let c = p.allocate_one().unwrap();
    p.retain(c).unwrap();
    p.release(c).unwrap();
    assert_eq!(p.state(c).unwrap(), BlockState::InUse);
    p.release(c).unwrap();
    assert!(matches!(p.release(c), Err(Error::DoubleFree(_))));
    // releasing an evictable block is also a double free and changes nothing
    let d = p.allocate_one().unwrap();
    assert!(p.register(d, BlockHash(9), None, 4).unwrap());
    p.release(d).unwrap();
    assert!(matches!(p.release(d), Err(Error::DoubleFree(_))));
    assert_eq!(p.state(d).unwrap(), BlockState::Evictable);
    assert_eq!(p.lookup(BlockHash(9)), Some(d));
    p.check_invariants().unwrap();
    assert!(matches!(BlockPool::new(0), Err(Error::InvalidConfig { .. })));
}

// ---------------------------------------------------------------------------------------------
// Copy-on-write
// ---------------------------------------------------------------------------------------------

fn fill(c: &KvCache, b: BlockId, byte: u8) {
    c.lock().page_mut(b).unwrap().fill(byte);
}

fn page(c: &KvCache, b: BlockId) -> Vec<u8> {
    c.lock().page(b).unwrap().to_vec()
}

#[test]
fn fork_then_append_copies_the_shared_partial_block() {
    let c = cache(4, 16);
    let a = c.add_sequence(&toks(0..6), &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    let ta = c.lock().block_table(a.seq).unwrap().to_vec();
    // a recognisable pattern in the partial last page
    {
        let mut g = c.lock();
        let mut pg = g.page_mut(ta[1]).unwrap();
        for (i, x) in pg.iter_mut().enumerate() {
            *x = (i * 7 + 3) as u8;
        }
    }
    let expect = page(&c, ta[1]);
    let child = c.fork(a.seq).unwrap();
    assert_eq!(c.lock().block_table(child).unwrap(), &ta[..]);
    // a shared page is not writable through the safe API
    assert!(matches!(
        c.lock().page_mut(ta[1]),
        Err(Error::WrongBlockState { found: BlockCondition::Shared, needed: BlockCondition::Writable, .. })
    ));
    assert_eq!(c.lock().num_computed(child).unwrap(), 6);
    assert_eq!(c.lock().pool().refcount(ta[1]).unwrap(), 2);
    // the child writes first: it gets a private copy
    let out = c.append_tokens(child, &[42]).unwrap();
    let copy = out.copy.expect("copy-on-write of the shared partial block");
    assert_eq!(copy.src, ta[1]);
    assert_eq!(copy.tokens, 2);
    assert_ne!(copy.dst, ta[1]);
    assert_eq!(out.new_blocks, 0);
    let tc = c.lock().block_table(child).unwrap().to_vec();
    assert_eq!(tc, vec![ta[0], copy.dst]);
    assert_eq!(page(&c, copy.dst), expect, "the arena page was not copied");
    assert_eq!(c.lock().block_table(a.seq).unwrap(), &ta[..], "the parent's table changed");
    assert_eq!(c.lock().pool().refcount(ta[1]).unwrap(), 1);
    assert_eq!(c.lock().pool().refcount(ta[0]).unwrap(), 2, "full block stays shared");
    assert_eq!(c.metrics().cow_copies, 1);
    // the parent now owns its partial block alone: no copy
    let out = c.append_tokens(a.seq, &[43]).unwrap();
    assert_eq!(out.copy, None);
    // appending at a block boundary never copies
    let out = c.append_tokens(child, &[44]).unwrap();
    assert_eq!(out.copy, None);
    let g2 = c.fork(child).unwrap();
    let out = c.append_tokens(g2, &[45]).unwrap();
    assert_eq!(out.copy, None);
    assert_eq!(out.new_blocks, 1);
    // an empty append never copies either
    let g3 = c.fork(a.seq).unwrap();
    assert_eq!(c.append_tokens(g3, &[]).unwrap(), kvtier::AppendOutcome::default());
    assert_eq!(c.lock().tokens(a.seq).unwrap(), &[0, 1, 2, 3, 4, 5, 43]);
    assert_eq!(c.lock().tokens(child).unwrap(), &[0, 1, 2, 3, 4, 5, 42, 44]);
    assert_eq!(c.metrics().cow_copies, 1);
    invariants(&c);
    for s in [a.seq, child, g2, g3] {
        c.free(s).unwrap();
    }
    assert_eq!(c.metrics().in_use, 0);
    invariants(&c);
}

#[test]
fn truncate_into_a_committed_block_then_append_copies_it() {
    let c = cache(4, 16);
    let p = toks(0..8);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    let ta = c.lock().block_table(a.seq).unwrap().to_vec();
    fill(&c, ta[1], 0xAB); // the runtime computes the prompt's KV, then commits
    c.commit(a.seq).unwrap();
    let h = hashes(&c, &p, &no_keys());
    assert_eq!(c.lock().pool().hash_of(ta[1]).unwrap(), Some(h[1]));
    // a registered page is immutable through the safe API
    assert!(matches!(c.lock().page_mut(ta[1]), Err(Error::WrongBlockState { needed: BlockCondition::Writable, .. })));
    c.truncate(a.seq, 6).unwrap();
    assert_eq!(c.lock().num_computed(a.seq).unwrap(), 6);
    assert_eq!(c.lock().block_table(a.seq).unwrap(), &ta[..]);
    // the truncated block is still cached under its hash
    assert_eq!(c.longest_prefix(&h), 2);
    let out = c.append_tokens(a.seq, &[99]).unwrap();
    let copy = out.copy.expect("writing into a hashed block must copy it first");
    assert_eq!((copy.src, copy.tokens), (ta[1], 2));
    assert_eq!(page(&c, copy.dst), vec![0xAB; layout(4).page_bytes()]);
    // the runtime writes the new token into dst; the cached block keeps its content
    fill(&c, copy.dst, 0xCD);
    assert_eq!(page(&c, ta[1]), vec![0xAB; layout(4).page_bytes()]);
    assert_eq!(c.lock().pool().hash_of(ta[1]).unwrap(), Some(h[1]));
    // the old content is still served to a new request
    let mut q = p.clone();
    q.push(1000);
    let b = c.add_sequence(&q, &no_keys()).unwrap();
    assert_eq!(b.cached_tokens, 8);
    assert_eq!(&c.lock().block_table(b.seq).unwrap()[..2], &ta[..]);
    // the truncated sequence commits its new block under a different hash
    c.append_tokens(a.seq, &[100]).unwrap();
    c.commit(a.seq).unwrap();
    let ta2 = c.lock().tokens(a.seq).unwrap().to_vec();
    let ha = hashes(&c, &ta2, &no_keys());
    assert_eq!(ha[0], h[0]);
    assert_ne!(ha[1], h[1]);
    assert_eq!(c.lock().pool().hash_of(copy.dst).unwrap(), Some(ha[1]));
    invariants(&c);
}

#[test]
fn truncate_releases_blocks_and_whole_truncation_empties() {
    let c = cache(4, 16);
    let a = c.add_sequence(&toks(0..13), &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    c.truncate(a.seq, 5).unwrap();
    assert_eq!(c.lock().block_table(a.seq).unwrap().len(), 2);
    assert_eq!(c.metrics().in_use, 2);
    assert_eq!(c.metrics().evictable, 1); // block 2 was full and committed
    c.truncate(a.seq, 0).unwrap();
    assert!(c.lock().block_table(a.seq).unwrap().is_empty());
    assert_eq!(c.metrics().in_use, 0);
    c.append_tokens(a.seq, &toks(0..4)).unwrap();
    invariants(&c);
}

// ---------------------------------------------------------------------------------------------
// Flat batch exports
// ---------------------------------------------------------------------------------------------

#[test]
fn export_batch_builds_padded_tables_and_slot_mappings() {
    let bs = 4usize;
    let c = cache(bs as u32, 32);
    let a = c.add_sequence(&toks(0..10), &no_keys()).unwrap(); // 3 blocks, nothing computed
    let b = c.add_sequence(&toks(100..105), &no_keys()).unwrap(); // 2 blocks
    c.commit(b.seq).unwrap();
    c.append_tokens(b.seq, &[7]).unwrap(); // one decode token
    let d = c.add_sequence(&toks(0..9), &no_keys()).unwrap(); // nothing cached yet (a uncommitted)
    c.lock().commit_up_to(d.seq, 6).unwrap(); // chunked prefill: 6 of 9 done
    let e = c.add_sequence(&[], &no_keys()).unwrap();
    let batch = [a.seq, b.seq, d.seq, e.seq];
    let mut out = BatchTables::new();
    c.export_batch(&batch, &mut out).unwrap();

    let g = c.lock();
    assert_eq!(out.num_rows(), 4);
    assert_eq!(out.row_width(), 3);
    assert_eq!(out.block_table().len(), 12);
    let mut expect_slots = Vec::new();
    let mut expect_qs = vec![0i32];
    for (i, &s) in batch.iter().enumerate() {
        let table = g.block_table(s).unwrap();
        let row = out.row(i).unwrap();
        for (j, &x) in row.iter().enumerate() {
            match table.get(j) {
                Some(blk) => assert_eq!(x, blk.0 as i32),
                None => assert_eq!(x, BatchTables::PAD),
            }
        }
        let len = g.tokens(s).unwrap().len();
        for pos in g.num_computed(s).unwrap()..len {
            expect_slots.push((table[pos / bs].0 as usize * bs + pos % bs) as i64);
        }
        expect_qs.push(expect_slots.len() as i32);
        assert_eq!(out.seq_lens()[i], len as i32);
    }
    assert_eq!(out.slot_mapping(), &expect_slots[..]);
    assert_eq!(out.query_start(), &expect_qs[..]);
    assert_eq!(out.query_start(), &[0, 10, 11, 14, 14]);
    assert_eq!(out.seq_lens(), &[10, 6, 9, 0]);
    assert_eq!(out.row(4), None);
    // byte views are the same buffers
    assert_eq!(out.block_table_bytes().len(), 12 * 4);
    assert_eq!(out.slot_mapping_bytes().len(), expect_slots.len() * 8);
    assert_eq!(out.seq_lens_bytes().len(), 4 * 4);
    assert_eq!(out.block_table_bytes().as_ptr(), out.block_table().as_ptr() as *const u8);
    assert_eq!(&out.slot_mapping_bytes()[..8], &expect_slots[0].to_ne_bytes());
    drop(g);

    // the buffers are reused: a smaller batch leaves nothing stale behind
    c.export_batch(&[b.seq], &mut out).unwrap();
    assert_eq!(out.num_rows(), 1);
    assert_eq!(out.row_width(), 2);
    assert_eq!(out.block_table().len(), 2);
    assert_eq!(out.slot_mapping().len(), 1);
    assert_eq!(out.query_start(), &[0, 1]);
    // empty batch and a batch of empty sequences
    c.export_batch(&[], &mut out).unwrap();
    assert_eq!((out.num_rows(), out.row_width(), out.query_start()), (0, 0, &[0][..]));
    assert!(out.block_table().is_empty() && out.slot_mapping().is_empty());
    c.export_batch(&[e.seq, e.seq], &mut out).unwrap();
    assert_eq!(out.num_rows(), 2);
    assert_eq!(out.seq_lens(), &[0, 0]);
    assert_eq!(out.query_start(), &[0, 0, 0]);
    assert!(out.block_table().is_empty());
    // an unknown id fails the whole export
    let f = c.add_sequence(&[1], &no_keys()).unwrap();
    c.free(f.seq).unwrap();
    assert!(matches!(c.export_batch(&[a.seq, f.seq], &mut out), Err(Error::UnknownSequence(_))));
}

#[test]
fn export_after_prefix_hit_maps_only_new_tokens_into_private_blocks() {
    let bs = 4usize;
    let c = cache(bs as u32, 32);
    let p = toks(0..10);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    let b = c.add_sequence(&p, &no_keys()).unwrap();
    assert_eq!(b.cached_tokens, 8);
    let mut out = BatchTables::new();
    c.export_batch(&[b.seq], &mut out).unwrap();
    let tb = c.lock().block_table(b.seq).unwrap().to_vec();
    assert_eq!(out.slot_mapping(), &[(tb[2].0 as usize * bs) as i64, (tb[2].0 as usize * bs + 1) as i64]);
    let ta = c.lock().block_table(a.seq).unwrap().to_vec();
    for s in out.slot_mapping() {
        let blk = (*s as usize / bs) as u32;
        assert!(!ta.iter().any(|x| x.0 == blk), "a scheduled token would write into a shared block");
    }
}

// ---------------------------------------------------------------------------------------------
// KV events
// ---------------------------------------------------------------------------------------------

#[test]
fn events_report_stores_with_parents_and_removals_in_order() {
    let c = cache(4, 5);
    let p = toks(0..13);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    assert!(drain(&c).is_empty(), "adding alone stores nothing");
    c.lock().commit_up_to(a.seq, 6).unwrap();
    assert_eq!(c.commit(a.seq).unwrap(), 2);
    assert_eq!(c.commit(a.seq).unwrap(), 0, "commit is idempotent");
    let h = hashes(&c, &p, &no_keys());
    let ta = c.lock().block_table(a.seq).unwrap().to_vec();
    let ev = drain(&c);
    assert_eq!(ev.len(), 3);
    for (i, e) in ev.iter().enumerate() {
        assert_eq!(e.seq_no, i as u64 + 1);
        let parent = if i == 0 { None } else { Some(h[i - 1]) };
        assert_eq!(e.kind, KvEventKind::Stored { hash: h[i], parent, block: ta[i], num_tokens: 4 });
    }
    // a duplicate commit by a sharer stores nothing
    let b = c.add_sequence(&p[..9], &no_keys()).unwrap();
    assert_eq!(b.cached_tokens, 8);
    c.commit(b.seq).unwrap();
    assert!(drain(&c).is_empty());
    c.free(b.seq).unwrap();
    c.free(a.seq).unwrap();
    assert!(drain(&c).is_empty(), "freeing keeps the content cached");
    // evict everything: the two free blocks go first, then the cached ones tail first
    let d = c.add_sequence(&toks(900..920), &no_keys()).unwrap();
    let ev = drain(&c);
    let removed: Vec<_> = ev.iter().map(|e| e.kind).collect();
    assert_eq!(
        removed,
        vec![
            KvEventKind::Removed { hash: h[2] },
            KvEventKind::Removed { hash: h[1] },
            KvEventKind::Removed { hash: h[0] }
        ]
    );
    assert_eq!(ev.iter().map(|e| e.seq_no).collect::<Vec<_>>(), vec![4, 5, 6]);
    c.free(d.seq).unwrap();
    assert!(c.lock().reset_prefix_cache());
    let ev = drain(&c);
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0], KvEvent { seq_no: 7, kind: KvEventKind::AllCleared });
    assert_eq!(c.snapshot().last_seq_no, 7);
}

#[derive(Default)]
struct Router {
    view: HashSet<BlockHash>,
    last: u64,
    resyncs: usize,
}

impl Router {
    fn apply(&mut self, e: &KvEvent) {
        match e.kind {
            KvEventKind::Stored { hash, .. } => {
                self.view.insert(hash);
            }
            KvEventKind::Removed { hash } => {
                self.view.remove(&hash);
            }
            KvEventKind::AllCleared => self.view.clear(),
        }
        self.last = e.seq_no;
    }

    /// Drains; on a gap takes a snapshot and replays the events it does not include.
    fn sync(&mut self, c: &KvCache) {
        let ev = drain(c);
        let gap = ev.first().is_some_and(|e| e.seq_no != self.last + 1);
        for w in ev.windows(2) {
            assert_eq!(w[1].seq_no, w[0].seq_no + 1, "sequence numbers must be strictly +1");
        }
        if gap {
            self.resyncs += 1;
            let snap = c.snapshot();
            self.view = snap.hashes.into_iter().collect();
            self.last = snap.last_seq_no;
            // the drained events precede the snapshot; replaying those newer than it is a no-op
            for e in ev.iter().filter(|e| e.seq_no > snap.last_seq_no) {
                self.apply(e);
            }
        } else {
            for e in &ev {
                self.apply(e);
            }
        }
    }

    fn check(&self, c: &KvCache) {
        let snap = c.snapshot();
        assert_eq!(self.last, snap.last_seq_no);
        let truth: HashSet<BlockHash> = snap.hashes.iter().copied().collect();
        assert_eq!(truth.len(), snap.hashes.len(), "a hash is cached twice");
        assert_eq!(self.view, truth);
    }
}

#[test]
fn snapshot_plus_replay_reproduces_the_cached_set_after_dropped_events() {
    let c = KvCache::new(cfg(4, 24).with_event_capacity(5)).unwrap();
    let mut r = Router::default();
    let mut live: Vec<SeqId> = Vec::new();
    let mut rng = XorShift::new(0x2545_f491_4f6c_dd1d);
    let mut rnd = move |n: u64| rng.below(n);
    for step in 0..600 {
        // prompts from 4 shared heads with random tails
        let head = rnd(4) as u32;
        let mut p: Vec<u32> = (0..8).map(|i| head * 100 + i).collect();
        p.extend((0..rnd(10)).map(|_| rnd(3) as u32));
        match c.add_sequence(&p, &no_keys()) {
            Ok(a) => {
                c.commit(a.seq).unwrap();
                live.push(a.seq);
            }
            Err(Error::OutOfBlocks { .. }) => {}
            Err(e) => panic!("{e}"),
        }
        while live.len() > 3 || (!live.is_empty() && rnd(3) == 0) {
            let s = live.remove(rnd(live.len() as u64) as usize);
            c.free(s).unwrap();
        }
        if step % 97 == 96 && live.is_empty() {
            assert!(c.lock().reset_prefix_cache());
        }
        // the router only drains now and then, so the bounded buffer drops events
        if rnd(5) == 0 {
            r.sync(&c);
            r.check(&c);
        }
        invariants(&c);
    }
    r.sync(&c);
    r.check(&c);
    assert!(c.metrics().events_dropped > 0, "the test did not exercise dropped events");
    assert!(r.resyncs > 0);
}

#[test]
fn router_that_starts_late_catches_up_from_a_snapshot() {
    let c = cache(4, 16);
    let a = c.add_sequence(&toks(0..12), &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    // the router starts here: snapshot first, then the stream
    let snap = c.snapshot();
    assert_eq!(snap.last_seq_no, 3);
    assert_eq!(snap.hashes.len(), 3);
    let mut r = Router { view: snap.hashes.iter().copied().collect(), last: snap.last_seq_no, resyncs: 0 };
    let b = c.add_sequence(&toks(50..58), &no_keys()).unwrap();
    c.commit(b.seq).unwrap();
    // events before the snapshot are still buffered: skip them
    let ev = drain(&c);
    assert_eq!(ev.len(), 5);
    let start = r.last;
    for e in ev.iter().filter(|e| e.seq_no > start) {
        r.apply(e);
    }
    r.check(&c);
}

#[test]
fn disabled_events_record_nothing() {
    let c = KvCache::new(cfg(4, 8).with_event_capacity(0)).unwrap();
    let a = c.add_sequence(&toks(0..8), &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    assert!(drain(&c).is_empty());
    assert_eq!(c.metrics().events_dropped, 0);
    assert_eq!(c.snapshot().hashes.len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Extra keys: salt, LoRA, multimodal
// ---------------------------------------------------------------------------------------------

#[test]
fn salts_isolate_tenants() {
    let c = cache(4, 64);
    let p = toks(0..17);
    let ka = ExtraKeys::default().with_salt(b"tenant-a");
    let kb = ExtraKeys::default().with_salt(b"tenant-b");
    let a = c.add_sequence(&p, &ka).unwrap();
    c.commit(a.seq).unwrap();
    let n = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(n.seq).unwrap();
    let b = c.add_sequence(&p, &kb).unwrap();
    assert_eq!(b.cached_tokens, 0, "different salts must never share");
    c.commit(b.seq).unwrap();
    assert_eq!(n.cached_tokens, 0, "no salt must not share with a salt");
    let a2 = c.add_sequence(&p, &ka).unwrap();
    let b2 = c.add_sequence(&p, &kb).unwrap();
    let n2 = c.add_sequence(&p, &no_keys()).unwrap();
    assert_eq!((a2.cached_tokens, b2.cached_tokens, n2.cached_tokens), (16, 16, 16));
    let g = c.lock();
    let t = |s| g.block_table(s).unwrap().iter().copied().collect::<HashSet<_>>();
    assert!(t(a.seq).is_disjoint(&t(b.seq)));
    assert!(t(a.seq).is_disjoint(&t(n.seq)));
    assert!(t(b.seq).is_disjoint(&t(n.seq)));
    assert_eq!(g.block_table(a2.seq).unwrap()[..4], g.block_table(a.seq).unwrap()[..4]);
    assert_eq!(g.block_table(b2.seq).unwrap()[..4], g.block_table(b.seq).unwrap()[..4]);
    assert_eq!(g.block_table(n2.seq).unwrap()[..4], g.block_table(n.seq).unwrap()[..4]);
    // every hash of every chain differs across salts (the salt is carried by the chain)
    let mut ha = Vec::new();
    let mut hb = Vec::new();
    g.hash_tokens(&p, &ka, &mut ha);
    g.hash_tokens(&p, &kb, &mut hb);
    assert!(ha.iter().zip(&hb).all(|(x, y)| x != y));
    assert_eq!(g.snapshot().hashes.len(), 12);
    g.check_invariants().unwrap();
}

#[test]
fn lora_and_multimodal_inputs_change_hashes() {
    let c = cache(4, 64);
    let p = toks(0..12);
    let base = hashes(&c, &p, &no_keys());
    let l1 = hashes(&c, &p, &ExtraKeys::default().with_lora(1));
    let l2 = hashes(&c, &p, &ExtraKeys::default().with_lora(2));
    assert!(base.iter().zip(&l1).all(|(a, b)| a != b));
    assert!(l1.iter().zip(&l2).all(|(a, b)| a != b));
    // an image occupying tokens 5..7 changes block 1 and (through the chain) block 2, not block 0
    let img = MmInput { hash: 0xfeed, offset: 5, len: 2 };
    let mm = hashes(&c, &p, &ExtraKeys::default().with_mm(img));
    assert_eq!(mm[0], base[0]);
    assert_ne!(mm[1], base[1]);
    assert_ne!(mm[2], base[2]);
    let other_img = hashes(&c, &p, &ExtraKeys::default().with_mm(MmInput { hash: 0xbeef, ..img }));
    assert_eq!(other_img[0], base[0]);
    assert_ne!(other_img[1], mm[1]);
    // the same placeholder tokens with another image do not share past block 0
    let a = c.add_sequence(&p, &ExtraKeys::default().with_mm(img)).unwrap();
    c.commit(a.seq).unwrap();
    let b = c.add_sequence(&p, &ExtraKeys::default().with_mm(MmInput { hash: 0xbeef, ..img })).unwrap();
    assert_eq!(b.cached_tokens, 4);
    let d = c.add_sequence(&p, &ExtraKeys::default().with_mm(img)).unwrap();
    assert_eq!(d.cached_tokens, 8);
    // LoRA requests do not share with the base model
    let e = c.add_sequence(&p, &ExtraKeys::default().with_lora(1)).unwrap();
    assert_eq!(e.cached_tokens, 0);
    c.commit(e.seq).unwrap();
    let f = c.add_sequence(&p, &ExtraKeys::default().with_lora(1)).unwrap();
    assert_eq!(f.cached_tokens, 8);
    let g = c.add_sequence(&p, &ExtraKeys::default().with_lora(2)).unwrap();
    assert_eq!(g.cached_tokens, 0);
    invariants(&c);
}

// ---------------------------------------------------------------------------------------------
// Block hash v1 pinned against an independent implementation of the documented definition
// ---------------------------------------------------------------------------------------------

mod reference {
    use xxhash_rust::xxh3::xxh3_128_with_seed;

    pub const SEED: u64 = u64::from_be_bytes(*b"kvtier_1");

    /// (content hash, offset, length)
    pub type Mm = (u128, u32, u32);

    pub fn block(
        parent: Option<u128>,
        tokens: &[u32],
        start: usize,
        salt: Option<&[u8]>,
        lora: Option<u64>,
        mm: &[Mm],
    ) -> u128 {
        let mut content = Vec::new();
        for t in tokens {
            content.extend_from_slice(&t.to_le_bytes());
        }
        let mut b = Vec::new();
        b.extend_from_slice(&parent.unwrap_or(0).to_le_bytes());
        b.extend_from_slice(&xxh3_128_with_seed(&content, SEED).to_le_bytes());
        b.extend_from_slice(&(tokens.len() as u32).to_le_bytes());
        if parent.is_none()
            && let Some(s) = salt
        {
            b.push(0x01);
            b.extend_from_slice(&(s.len() as u32).to_le_bytes());
            b.extend_from_slice(s);
        }
        if let Some(l) = lora {
            b.push(0x02);
            b.extend_from_slice(&l.to_le_bytes());
        }
        let end = start + tokens.len();
        for &(h, off, len) in mm {
            let (s, e) = (off as usize, off as usize + len as usize);
            if s < end && start < e {
                b.push(0x03);
                b.extend_from_slice(&h.to_le_bytes());
                b.extend_from_slice(&off.to_le_bytes());
                b.extend_from_slice(&len.to_le_bytes());
            }
        }
        xxh3_128_with_seed(&b, SEED)
    }

    pub fn chain(tokens: &[u32], bs: usize, salt: Option<&[u8]>, lora: Option<u64>, mm: &[Mm]) -> Vec<u128> {
        let mut out: Vec<u128> = Vec::new();
        for i in 0..tokens.len() / bs {
            let parent = out.last().copied();
            out.push(block(parent, &tokens[i * bs..(i + 1) * bs], i * bs, salt, lora, mm));
        }
        out
    }
}

#[test]
fn block_hash_v1_matches_the_documented_definition() {
    assert_eq!(HASH_VERSION, 1);
    assert_eq!(HASH_SEED, reference::SEED);
    let mm: Vec<reference::Mm> =
        vec![(0x1111_2222_3333_4444_5555_6666_7777_8888, 3, 6), (u128::MAX - 5, 20, 1), (7, 40, 0)];
    type Case<'a> = (Option<&'a [u8]>, Option<u64>, Vec<reference::Mm>);
    let cases: Vec<Case> = vec![
        (None, None, vec![]),
        (Some(b"tenant-a"), None, vec![]),
        (Some(b""), None, vec![]),
        (None, Some(7), vec![]),
        (None, None, mm.clone()),
        (Some(b"tenant-b"), Some(u64::MAX), mm.clone()),
    ];
    for bs in [1usize, 4, 16, 200] {
        let tokens: Vec<u32> = (0..(3 * bs + 2) as u32).map(|i| i.wrapping_mul(2_654_435_761) ^ 0xdead_beef).collect();
        for (salt, lora, mm) in &cases {
            let mut keys = ExtraKeys::default();
            if let Some(s) = salt {
                keys = keys.with_salt(s);
            }
            if let Some(l) = lora {
                keys = keys.with_lora(*l);
            }
            for &(hash, offset, len) in mm {
                keys = keys.with_mm(MmInput { hash, offset, len });
            }
            let want = reference::chain(&tokens, bs, *salt, *lora, mm);
            assert_eq!(want.len(), tokens.len() / bs);
            let mut got = Vec::new();
            BlockHash::extend_chain(&mut got, &tokens, bs, &keys);
            assert_eq!(got.iter().map(|h| h.0).collect::<Vec<_>>(), want, "bs {bs} salt {salt:?} lora {lora:?}");
            // through a cache with that block size, and link by link
            if bs <= 16 {
                let c = cache(bs as u32, 8);
                assert_eq!(hashes(&c, &tokens, &keys).iter().map(|h| h.0).collect::<Vec<_>>(), want);
            }
            let mut parent = None;
            for (i, w) in want.iter().enumerate() {
                let h = BlockHash::chain(parent, &tokens[i * bs..(i + 1) * bs], i * bs, &keys);
                assert_eq!(h.0, *w);
                parent = Some(h);
            }
            // extending an existing chain gives the same hashes
            let mut ext = got[..1].to_vec();
            BlockHash::extend_chain(&mut ext, &tokens, bs, &keys);
            assert_eq!(ext, got);
        }
    }
}

#[test]
fn block_hash_v1_golden_values() {
    // Frozen outputs of the v1 definition: if one of these changes, HASH_VERSION must change.
    let t: Vec<u32> = (0..16).collect();
    let plain = BlockHash::chain(None, &t, 0, &ExtraKeys::default());
    let keyed = BlockHash::chain(
        Some(plain),
        &t,
        16,
        &ExtraKeys::default().with_salt(b"s").with_lora(3).with_mm(MmInput { hash: 9, offset: 20, len: 4 }),
    );
    assert_eq!(plain.0, reference::block(None, &t, 0, None, None, &[]));
    assert_eq!(keyed.0, reference::block(Some(plain.0), &t, 16, None, Some(3), &[(9, 20, 4)]));
    assert_eq!(format!("{plain:?}"), format!("BlockHash({:032x})", GOLDEN_PLAIN));
    assert_eq!(keyed.0, GOLDEN_KEYED);
}

const GOLDEN_PLAIN: u128 = 0x6d8e_8f4e_e0e3_f781_0285_ddb1_f8e5_7ec2;
const GOLDEN_KEYED: u128 = 0x465d_2328_2535_838d_9514_0edc_0823_7bc9;

// ---------------------------------------------------------------------------------------------
// Configuration, metadata-only mode, threads, reset
// ---------------------------------------------------------------------------------------------

#[test]
fn metadata_only_mode_has_no_arena() {
    let c = KvCache::new(cfg(4, 8).with_arena(false)).unwrap();
    assert!(c.arena_base().is_none());
    assert!(!c.lock().has_arena());
    let a = c.add_sequence(&toks(0..6), &no_keys()).unwrap();
    let b0 = c.lock().block_table(a.seq).unwrap()[0];
    assert!(matches!(c.lock().page(b0), Err(Error::NoArena)));
    assert!(matches!(c.lock().page_mut(b0), Err(Error::NoArena)));
    let pb = layout(4).page_bytes();
    assert!(matches!(c.write_page(b0, &vec![0; pb]), Err(Error::NoArena)));
    assert!(matches!(c.read_page(b0, &mut vec![0; pb]), Err(Error::NoArena)));
    // everything else works, copy-on-write is still reported
    c.commit(a.seq).unwrap();
    let b = c.fork(a.seq).unwrap();
    let out = c.append_tokens(b, &[1]).unwrap();
    assert!(out.copy.is_some());
    let d = c.add_sequence(&toks(0..6), &no_keys()).unwrap();
    assert_eq!(d.cached_tokens, 4);
    invariants(&c);
    // huge pools are fine without an arena
    let big = KvCache::new(CacheConfig::new(KvLayout::llama_3_1_70b(16).unwrap(), 1 << 20).with_arena(false)).unwrap();
    assert_eq!(big.metrics().capacity, 1 << 20);
    let with_arena = KvCache::new(cfg(4, 8)).unwrap();
    assert!(with_arena.lock().has_arena());
    assert!(with_arena.arena_base().is_some());
}

fn invalid_field(e: Error) -> &'static str {
    e.config_field().unwrap_or_else(|| panic!("expected a configuration error, got {e:?}"))
}

#[test]
fn layout_and_config_validation() {
    assert_eq!(invalid_field(KvLayout::new(0, 1, 1, Dtype::F16, 16).unwrap_err()), "layers");
    assert_eq!(invalid_field(KvLayout::new(1, 0, 1, Dtype::F16, 16).unwrap_err()), "kv_heads");
    assert_eq!(invalid_field(KvLayout::new(1, 1, 0, Dtype::F16, 16).unwrap_err()), "head_dim");
    assert_eq!(invalid_field(KvLayout::new(1, 1, 1, Dtype::F16, 0).unwrap_err()), "block_size");
    assert_eq!(invalid_field(KvLayout::new(1, 1, 1, Dtype::F16, (1 << 16) + 1).unwrap_err()), "block_size");
    assert!(KvLayout::new(1, 1, 1, Dtype::Fp8, 1 << 16).is_ok());
    assert_eq!(
        invalid_field(KvLayout::new(u32::MAX, u32::MAX, u32::MAX, Dtype::F32, 1 << 16).unwrap_err()),
        "page_bytes"
    );
    // exactly 1 GiB is accepted, one byte more per token is not
    let gib = KvLayout::new(1 << 13, 1, 1, Dtype::F32, 1 << 14).unwrap();
    assert_eq!(gib.page_bytes(), 1 << 30);
    assert_eq!(invalid_field(KvLayout::new((1 << 13) + 1, 1, 1, Dtype::F32, 1 << 14).unwrap_err()), "page_bytes");
    let l = KvLayout::new(2, 4, 8, Dtype::Bf16, 16).unwrap();
    assert_eq!(l.page_bytes(), 2 * 2 * 4 * 8 * 2 * 16);
    assert_eq!(l.bytes_per_token(), l.page_bytes() / 16);
    assert_eq!((l.layers(), l.kv_heads(), l.head_dim(), l.dtype(), l.block_size()), (2, 4, 8, Dtype::Bf16, 16));
    assert_eq!(KvLayout::preset("llama-3.1-8b", 16).unwrap(), KvLayout::llama_3_1_8b(16).unwrap());
    assert!(KvLayout::preset("gpt-5", 16).is_err());

    let ok = cfg(4, 8);
    assert!(ok.validate().is_ok());
    assert_eq!(invalid_field(KvCache::new(cfg(4, 0)).err().unwrap()), "num_blocks");
    for w in [1.0, -0.01, f64::NAN, f64::INFINITY] {
        assert_eq!(invalid_field(KvCache::new(ok.clone().with_watermark(w)).err().unwrap()), "watermark", "{w}");
    }
    assert_eq!(invalid_field(KvCache::new(ok.clone().with_max_seq_len(0)).err().unwrap()), "max_seq_len");
    let huge = CacheConfig::new(KvLayout::llama_3_1_8b(16).unwrap(), usize::MAX / 2);
    assert_eq!(invalid_field(huge.validate().unwrap_err()), "num_blocks");
    assert!(CacheCore::new(cfg(4, 0)).is_err());
    let d = CacheConfig::default();
    assert_eq!((d.num_blocks, d.arena, d.layout.page_bytes()), (1024, true, 2 << 20));
}

#[test]
fn kv_cache_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<KvCache>();
    assert_send_sync::<std::sync::Arc<KvCache>>();
    fn assert_send<T: Send>() {}
    assert_send::<CacheCore>();
    assert_send::<BlockPool>();
    assert_send::<BatchTables>();
}

#[test]
fn many_threads_share_prefixes_safely() {
    let c = KvCache::new(cfg(4, 256)).unwrap();
    let threads = 8u32;
    std::thread::scope(|s| {
        for t in 0..threads {
            let c = &c;
            s.spawn(move || {
                let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15u64 ^ (t as u64 + 1));
                let mut rnd = move |n: u64| rng.below(n);
                let mut mine: Vec<SeqId> = Vec::new();
                let mut out = BatchTables::new();
                for i in 0..400u32 {
                    // 3 prefixes shared by every thread, thread-specific tails
                    let head = rnd(3) as u32;
                    let mut p: Vec<u32> = (0..12).map(|k| head * 1000 + k).collect();
                    p.extend((0..rnd(8)).map(|k| t * 100 + k as u32 + i % 3));
                    match c.add_sequence(&p, &no_keys()) {
                        Ok(a) => {
                            assert_eq!(a.cached_tokens % 4, 0);
                            assert!(a.cached_tokens < p.len());
                            assert_eq!(c.lock().tokens(a.seq).unwrap(), &p[..]);
                            c.commit(a.seq).unwrap();
                            mine.push(a.seq);
                        }
                        Err(Error::OutOfBlocks { .. }) => {}
                        Err(e) => panic!("{e}"),
                    }
                    if let Some(&s) = mine.last() {
                        match rnd(4) {
                            0 => {
                                if let Ok(f) = c.fork(s) {
                                    mine.push(f);
                                }
                            }
                            1 => match c.append_tokens(s, &[t, i]) {
                                Ok(_) | Err(Error::OutOfBlocks { .. }) => {}
                                Err(e) => panic!("{e}"),
                            },
                            2 => {
                                let g = c.lock();
                                g.export_batch(&mine, &mut out).unwrap();
                                assert_eq!(out.num_rows(), mine.len());
                            }
                            _ => {}
                        }
                    }
                    while mine.len() > 4 {
                        let s = mine.remove(rnd(mine.len() as u64) as usize);
                        c.free(s).unwrap();
                    }
                }
                for s in mine {
                    c.free(s).unwrap();
                }
            });
        }
    });
    let g = c.lock();
    g.check_invariants().unwrap();
    let m = g.metrics();
    assert_eq!(m.sequences, 0);
    assert_eq!(m.in_use, 0);
    assert_eq!(m.free + m.evictable, m.capacity);
    assert!(m.prefix_hits > 0);
}

#[test]
fn reset_prefix_cache_only_when_idle() {
    let c = cache(4, 16);
    let p = toks(0..9);
    let a = c.add_sequence(&p, &no_keys()).unwrap();
    c.commit(a.seq).unwrap();
    assert!(!c.lock().reset_prefix_cache(), "reset while a sequence holds blocks");
    assert_eq!(c.snapshot().hashes.len(), 2);
    c.free(a.seq).unwrap();
    drain(&c);
    assert!(c.lock().reset_prefix_cache());
    let m = c.metrics();
    assert_eq!((m.free, m.evictable, m.in_use), (16, 0, 0));
    assert!(c.snapshot().hashes.is_empty());
    assert_eq!(c.longest_prefix(&hashes(&c, &p, &no_keys())), 0);
    let ev = drain(&c);
    assert_eq!(ev.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![KvEventKind::AllCleared]);
    let b = c.add_sequence(&p, &no_keys()).unwrap();
    assert_eq!(b.cached_tokens, 0);
    // the cache works normally afterwards
    c.commit(b.seq).unwrap();
    let d = c.add_sequence(&p, &no_keys()).unwrap();
    assert_eq!(d.cached_tokens, 8);
    invariants(&c);
}
