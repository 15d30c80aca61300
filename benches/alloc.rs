//! alloc + free of blocks in batches of 1, 16 and 256 at pool sizes 1K, 100K and 10M.
//!
//! The free queue is churned into a random order first, so at 10M blocks every allocation
//! touches a block somewhere in the pool, as in a server that has been running for a while.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kvtier::BlockPool;

fn shuffle<T>(v: &mut [T], mut x: u64) {
    for i in (1..v.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.swap(i, (x % (i as u64 + 1)) as usize);
    }
}

/// A pool whose free queue holds every block in a random order.
fn churned_pool(n: usize) -> BlockPool {
    let mut pool = BlockPool::new(n).expect("pool");
    let mut all = Vec::with_capacity(n);
    pool.allocate(n, &mut all).expect("allocate all");
    shuffle(&mut all, 0x9e37_79b9_7f4a_7c15);
    pool.release_all(all).expect("release all");
    pool
}

fn alloc_free(c: &mut Criterion) {
    let mut group = c.benchmark_group("alloc_free");
    for n in [1_000usize, 100_000, 10_000_000] {
        let mut pool = churned_pool(n);
        for batch in [1usize, 16, 256] {
            group.throughput(Throughput::Elements(batch as u64));
            let mut blocks = Vec::with_capacity(batch);
            group.bench_function(BenchmarkId::new(format!("batch_{batch}"), n), |b| {
                b.iter(|| {
                    pool.allocate(batch, &mut blocks).expect("allocate");
                    black_box(&blocks);
                    pool.release_all(blocks.drain(..).rev()).expect("release");
                })
            });
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(1)).warm_up_time(Duration::from_millis(300)).sample_size(20);
    targets = alloc_free
}
criterion_main!(benches);
