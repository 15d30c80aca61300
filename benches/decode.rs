//! One decode step of 256 running sequences: take the lock once (`cache.lock()`), append one
//! token to each and export the block tables with `export_batch`. The commit that follows a
//! step in a runtime is done outside the timed region; every 32 steps the sequences are
//! truncated back (untimed) so the context stays in range. Metadata-only cache (no arena).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvtier::{BatchTables, CacheConfig, Dtype, ExtraKeys, KvCache, KvLayout, SeqId};

const SEQS: usize = 256;

fn running(n: usize, ctx: (usize, usize)) -> (KvCache, Vec<SeqId>, Vec<usize>) {
    let layout = KvLayout::new(1, 1, 4, Dtype::F16, 16).expect("layout");
    let cache = KvCache::new(CacheConfig::new(layout, n).with_arena(false)).expect("cache");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (mut seqs, mut lens) = (Vec::new(), Vec::new());
    let mut g = cache.lock();
    for _ in 0..SEQS {
        let len = ctx.0 + (next() % (ctx.1 - ctx.0 + 1) as u64) as usize;
        let prompt: Vec<u32> = (0..len).map(|_| (next() % 128_000) as u32).collect();
        let s = g.add_sequence(&prompt, &ExtraKeys::default()).expect("add").seq;
        g.commit(s).expect("commit");
        seqs.push(s);
        lens.push(len);
    }
    drop(g);
    (cache, seqs, lens)
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode_step_256");
    for (name, n, ctx) in [("ctx_1_16", 1_000usize, (1, 16)), ("ctx_512_1536", 100_000, (512, 1536))] {
        let (cache, seqs, lens) = running(n, ctx);
        let mut tables = BatchTables::new();
        let mut token = 0u32;
        let mut steps = 0;
        group.bench_function(BenchmarkId::new(name, n), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    token = token.wrapping_add(1);
                    let start = Instant::now();
                    {
                        let mut g = cache.lock();
                        for &s in &seqs {
                            g.append_tokens(s, &[token]).expect("append");
                        }
                        g.export_batch(&seqs, &mut tables).expect("export");
                    }
                    total += start.elapsed();
                    black_box(&tables);
                    let mut g = cache.lock();
                    for &s in &seqs {
                        g.commit(s).expect("commit");
                    }
                    steps += 1;
                    if steps % 16 == 0 {
                        for (&s, &len) in seqs.iter().zip(&lens) {
                            g.truncate(s, len).expect("truncate");
                        }
                    }
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    targets = decode
}
criterion_main!(benches);
