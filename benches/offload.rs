//! The engine's per-page copies for one 64 KiB page: G1 -> G2 copy-down (one maintenance pass
//! that offloads one committed, freed block) and G2 -> G1 onboard (ticket from `onboard` to
//! `wait`, no background workers). Compare with `memcpy` of 64 KiB (a few microseconds): what
//! is above it is the engine's bookkeeping per page.

use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kvtier::offload::{OffloadConfig, TieredCache};
use kvtier::tier::host::HostConfig;
use kvtier::{BlockHash, CacheConfig, Dtype, ExtraKeys, KvLayout};

const G1_BLOCKS: usize = 64;

fn layout() -> KvLayout {
    KvLayout::new(32, 1, 64, Dtype::Bf16, 8).expect("64 KiB layout")
}

/// An engine whose maintenance offloads every cached block at once (watermark just below 1).
fn engine() -> TieredCache {
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(256))
        .with_g1_low_watermark(0.99)
        .with_workers(0);
    TieredCache::new(CacheConfig::new(layout(), G1_BLOCKS).with_watermark(0.0), config).expect("engine")
}

/// Writes one full block of a new prompt, commits and frees it: G1 now has one block to offload.
fn one_cached_block(t: &TieredCache, n: u32) {
    let block = layout().block_size();
    let tokens: Vec<u32> = (n * block..(n + 1) * block).collect();
    let mut core = t.g1().lock();
    let added = core.add_sequence(&tokens, &ExtraKeys::default()).expect("add");
    let b = core.block_table(added.seq).expect("table")[0];
    core.page_mut(b).expect("page").fill(n as u8);
    core.commit(added.seq).expect("commit");
    core.free(added.seq).expect("free");
}

fn offload(c: &mut Criterion) {
    let page = layout().page_bytes();
    let mut group = c.benchmark_group("offload_64k");
    group.throughput(Throughput::Bytes(page as u64));
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));

    let t = engine();
    while t.run_maintenance().expect("maintain") {}
    let mut n = 0u32;
    group.bench_function("g1_to_g2_copy_down", |b| {
        b.iter_batched(
            || {
                n += 1;
                one_cached_block(&t, n);
            },
            |()| t.run_maintenance().expect("maintain"),
            BatchSize::PerIteration,
        )
    });

    let t = engine();
    let data = vec![5u8; page];
    let mut h = 0u128;
    group.bench_function("g2_to_g1_onboard", |b| {
        b.iter_batched(
            || {
                h += 1;
                let hash = BlockHash(h.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
                t.store(hash, |p| {
                    p.copy_from_slice(&data);
                    Ok(())
                })
                .expect("store");
                hash
            },
            |hash| {
                let ticket = t.onboard(&[hash]).expect("onboard");
                assert_eq!(ticket.wait().from_g2, 1);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, offload);
criterion_main!(benches);
