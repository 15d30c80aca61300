//! Eviction policies alone: a full cache turning over (evict a victim, admit new content into
//! its slot), and a prefix hit reviving an evictable entry, at 1K and 1M entries.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvtier::BlockId;
use kvtier::policy::{EvictionPolicy, PolicyKind};

/// A policy over `n` entries, all holding content and evictable, inserted in a scrambled order.
fn full(kind: PolicyKind, n: usize) -> kvtier::policy::AnyPolicy {
    let mut p = kind.build(n);
    for i in 0..n as u64 {
        let b = BlockId((i.wrapping_mul(0x9E37_79B9) % n as u64) as u32);
        p.on_register(b, i + 1);
        p.insert(b);
    }
    p
}

fn policies(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy");
    group.throughput(Throughput::Elements(1));
    for n in [1_000usize, 1_000_000] {
        for kind in PolicyKind::ALL {
            let mut p = full(kind, n);
            let mut key = n as u64 + 1;
            group.bench_function(BenchmarkId::new(format!("{}_evict_admit", kind.name()), n), |b| {
                b.iter(|| {
                    let v = p.pop_victim().expect("a full cache has a victim");
                    key += 1;
                    p.on_register(v, key);
                    p.insert(black_box(v));
                })
            });
            let mut x = 0x2545_F491_4F6C_DD1Du64;
            group.bench_function(BenchmarkId::new(format!("{}_revive", kind.name()), n), |b| {
                b.iter(|| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let t = BlockId((x % n as u64) as u32);
                    p.remove(t);
                    p.on_hit(t);
                    p.insert(black_box(t));
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, policies);
criterion_main!(benches);
