//! Full life of one block in steady state, per block: allocate (evicting the LRU victim, as
//! the pool is full of cached blocks), write 16 tokens of K/V into its arena page, chain-hash,
//! register, release to evictable. Pool sizes 1K, 100K and 10M.
//!
//! Pages are tiny (1 layer, 1 KV head, head_dim 4, F16, 16-token blocks = 256 B; 2.5 GiB at
//! 10M blocks) and prefaulted, so page faults are not measured.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvtier::{Arena, BlockHash, BlockId, BlockPool, Dtype, ExtraKeys, KvLayout};

const BLOCK_TOKENS: usize = 16;

fn shuffle<T>(v: &mut [T], mut x: u64) {
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// Every block registered under a distinct hash and evictable, in a random LRU order.
fn full_cached_pool(n: usize) -> BlockPool {
    let mut pool = BlockPool::new(n).expect("pool");
    let mut all = Vec::with_capacity(n);
    pool.allocate(n, &mut all).expect("allocate");
    for (i, b) in all.iter().enumerate() {
        let h = BlockHash((i as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        assert!(pool.register(*b, h, None, BLOCK_TOKENS as u32).expect("register"));
    }
    shuffle(&mut all, 0x2545_f491_4f6c_dd1d);
    pool.release_all(all).expect("release");
    pool
}

fn lifecycle(c: &mut Criterion) {
    let layout = KvLayout::new(1, 1, 4, Dtype::F16, BLOCK_TOKENS as u32).expect("layout");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let stream: Vec<u32> = (0..20_000 * BLOCK_TOKENS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 128_000) as u32
        })
        .collect();
    let keys = ExtraKeys::default();
    let token_kv = [0x5au8; 64];
    let mut group = c.benchmark_group("lifecycle");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 100_000, 10_000_000] {
        let mut pool = full_cached_pool(n);
        let mut arena = Arena::new(n, layout.page_bytes()).expect("arena");
        for i in 0..n {
            arena.page_mut(BlockId(i as u32)).expect("page")[0] = 1;
        }
        let (mut cursor, mut parent) = (0usize, None);
        group.bench_function(BenchmarkId::new("alloc_fill_hash_register_release", n), |b| {
            b.iter(|| {
                let blk = pool.allocate_one().expect("allocate");
                let page = arena.page_mut(blk).expect("page");
                let per_token = page.len() / BLOCK_TOKENS;
                for chunk in page.chunks_exact_mut(per_token) {
                    chunk.copy_from_slice(&token_kv[..per_token]);
                }
                let at = cursor % 20_000 * BLOCK_TOKENS;
                cursor += 1;
                let h = BlockHash::chain(parent, &stream[at..at + BLOCK_TOKENS], at, &keys);
                black_box(pool.register(blk, h, parent, BLOCK_TOKENS as u32).expect("register"));
                pool.release(blk).expect("release");
                parent = Some(h);
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    targets = lifecycle
}
criterion_main!(benches);
