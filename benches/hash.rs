//! Chained hashing of 16-token blocks: one block, and a 1024-block chain.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kvtier::{BlockHash, ExtraKeys};

const BLOCK_TOKENS: usize = 16;

fn hashing(c: &mut Criterion) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let tokens: Vec<u32> = (0..1024 * BLOCK_TOKENS)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 128_000) as u32
        })
        .collect();
    let keys = ExtraKeys::default();
    let mut group = c.benchmark_group("hash");
    group.throughput(Throughput::Elements(1));
    let parent = Some(BlockHash(0x1234_5678_9abc_def0_0fed_cba9_8765_4321));
    group.bench_function("chain_one_block", |b| {
        b.iter(|| BlockHash::chain(black_box(parent), black_box(&tokens[..BLOCK_TOKENS]), 0, &keys))
    });
    group.throughput(Throughput::Elements(1024));
    let mut out = Vec::with_capacity(1024);
    group.bench_function("extend_chain_1024_blocks", |b| {
        b.iter(|| {
            out.clear();
            BlockHash::extend_chain(&mut out, black_box(&tokens), BLOCK_TOKENS, &keys);
            black_box(&out);
        })
    });
    let salted = ExtraKeys::default().with_salt(b"tenant-42").with_lora(7);
    group.bench_function("extend_chain_1024_blocks_salt_lora", |b| {
        b.iter(|| {
            out.clear();
            BlockHash::extend_chain(&mut out, black_box(&tokens), BLOCK_TOKENS, &salted);
            black_box(&out);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    targets = hashing
}
criterion_main!(benches);
