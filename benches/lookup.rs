//! Prefix lookup of a cached 32-block prefix (per block), and lookup + acquire + release,
//! at pool sizes 1K, 100K and 10M.
//!
//! The pool is filled with 32-block prefixes allocated from a churned (random) free queue and
//! released in a random order; each iteration picks a random prefix, so lookups hit hashes
//! spread over the whole index.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvtier::testing::XorShift;
use kvtier::{BlockHash, BlockPool, ExtraKeys};

const BLOCK_TOKENS: usize = 16;
const PREFIX_BLOCKS: usize = 32;

/// A pool full of cached, evictable 32-block prefixes; returns it and every prefix's hashes.
fn cached_pool(n: usize, rng: &mut XorShift) -> (BlockPool, Vec<BlockHash>) {
    let mut pool = BlockPool::new(n).expect("pool");
    let mut all = Vec::with_capacity(n);
    pool.allocate(n, &mut all).expect("allocate");
    rng.shuffle(&mut all);
    pool.release_all(all).expect("release");
    let prefixes = n / PREFIX_BLOCKS;
    let (mut hashes, mut blocks, mut chain) = (Vec::new(), Vec::new(), Vec::new());
    let mut tokens = vec![0u32; PREFIX_BLOCKS * BLOCK_TOKENS];
    for _ in 0..prefixes {
        tokens.iter_mut().for_each(|t| *t = (rng.next_u64() % 128_000) as u32);
        chain.clear();
        BlockHash::extend_chain(&mut chain, &tokens, BLOCK_TOKENS, &ExtraKeys::default());
        let at = blocks.len();
        pool.allocate(PREFIX_BLOCKS, &mut blocks).expect("allocate prefix");
        let mut parent = None;
        for (b, h) in blocks[at..].iter().zip(&chain) {
            assert!(pool.register(*b, *h, parent, BLOCK_TOKENS as u32).expect("register"));
            parent = Some(*h);
        }
        hashes.extend_from_slice(&chain);
    }
    let mut order: Vec<usize> = (0..prefixes).collect();
    rng.shuffle(&mut order);
    for p in order {
        pool.release_all(blocks[p * PREFIX_BLOCKS..(p + 1) * PREFIX_BLOCKS].iter().rev().copied()).expect("release");
    }
    (pool, hashes)
}

fn lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("prefix");
    group.throughput(Throughput::Elements(PREFIX_BLOCKS as u64));
    for n in [1_000usize, 100_000, 10_000_000] {
        let mut rng = XorShift::new(0x9e37_79b9_7f4a_7c15);
        let (mut pool, hashes) = cached_pool(n, &mut rng);
        let prefixes = hashes.len() / PREFIX_BLOCKS;
        group.bench_function(BenchmarkId::new("longest_prefix_32", n), |b| {
            b.iter(|| {
                let p = rng.index(prefixes);
                let hit = pool.longest_prefix(black_box(&hashes[p * PREFIX_BLOCKS..(p + 1) * PREFIX_BLOCKS]));
                debug_assert_eq!(hit, PREFIX_BLOCKS);
                hit
            })
        });
        let mut held = Vec::with_capacity(PREFIX_BLOCKS);
        group.bench_function(BenchmarkId::new("lookup_acquire_release_32", n), |b| {
            b.iter(|| {
                let p = rng.index(prefixes);
                for h in &hashes[p * PREFIX_BLOCKS..(p + 1) * PREFIX_BLOCKS] {
                    let blk = pool.lookup(*h).expect("cached");
                    pool.acquire_block(blk).expect("acquire");
                    held.push(blk);
                }
                pool.release_all(held.drain(..).rev()).expect("release");
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    targets = lookup
}
criterion_main!(benches);
