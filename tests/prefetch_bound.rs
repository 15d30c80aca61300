//! Issue 15, item 5: prefetch behind a slow disk. A caller issuing prefetches far faster than the
//! disk serves them must not grow the engine's queue without bound, a prefetch must read its
//! pages in batches (one disk submission per batch, not one per page), and dropping the cache
//! must cancel queued prefetches instead of running each one first.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvtier::io::{IoBackend, IoConfig, IoOp, PsyncBackend};
use kvtier::offload::{OffloadConfig, TieredCache};
use kvtier::tier::host::HostConfig;
use kvtier::tier::{DiskConfig, DiskTier};
use kvtier::{BlockHash, CacheConfig, Dtype, KvLayout};

mod common;
use common::{TestDir, pattern};

const PAGES: u128 = 64;

fn layout() -> KvLayout {
    KvLayout::new(2, 2, 8, Dtype::F16, 4).unwrap() // 512-byte pages
}

fn disk_config(dir: &Path) -> DiskConfig {
    DiskConfig::new(dir).with_model_id("prefetch").with_capacity_slots(256)
}

/// A psync backend that counts its submissions and sleeps `delay_ms` in each.
#[derive(Debug)]
struct SlowBackend {
    inner: PsyncBackend,
    submissions: Arc<AtomicU64>,
    delay_ms: Arc<AtomicU64>,
}

impl IoBackend for SlowBackend {
    fn name(&self) -> &'static str {
        "slow"
    }
    fn queue_depth(&self) -> usize {
        self.inner.queue_depth()
    }
    fn submit(&self, ops: &mut [IoOp<'_>], results: &mut Vec<kvtier::Result<usize>>) {
        self.submissions.fetch_add(1, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(self.delay_ms.load(Ordering::Relaxed)));
        self.inner.submit(ops, results);
    }
}

/// A G3 directory holding pages 0..PAGES, and an engine on it whose disk is a [`SlowBackend`].
fn engine(dir: &Path, offload: OffloadConfig, g2_pages: usize) -> (TieredCache, Arc<AtomicU64>, Arc<AtomicU64>) {
    {
        let tier = DiskTier::open(&layout(), disk_config(dir)).unwrap();
        let pages: Vec<Vec<u8>> = (0..PAGES).map(|h| pattern(BlockHash(h), layout().page_bytes())).collect();
        let batch: Vec<(BlockHash, &[u8])> =
            pages.iter().enumerate().map(|(h, p)| (BlockHash(h as u128), &p[..])).collect();
        assert!(tier.write_pages(&batch).iter().all(|r| matches!(r, Ok(true))));
    }
    let submissions = Arc::new(AtomicU64::new(0));
    let delay_ms = Arc::new(AtomicU64::new(0));
    let backend = SlowBackend {
        inner: PsyncBackend::new(&IoConfig::default()),
        submissions: Arc::clone(&submissions),
        delay_ms: Arc::clone(&delay_ms),
    };
    let offload = offload
        .with_host(HostConfig::default().with_capacity_pages(g2_pages).with_huge_pages(false))
        .with_disk(disk_config(dir));
    let cache = TieredCache::with_disk_backend(CacheConfig::new(layout(), 64), offload, Box::new(backend)).unwrap();
    assert_eq!(cache.g3().unwrap().metrics().recovered, PAGES as u64);
    (cache, submissions, delay_ms)
}

fn hashes() -> Vec<BlockHash> {
    (0..PAGES).map(BlockHash).collect()
}

/// 64 G3-only pages with batches of 16: 4 disk submissions (there were 64, one per page), and
/// every page lands in G2 intact.
#[test]
fn prefetch_reads_in_batches() {
    let dir = TestDir::new("prefetch-batches");
    let offload = OffloadConfig::default().with_workers(0).with_batch_pages(16);
    let (cache, submissions, _) = engine(dir.path(), offload, 256);
    let before = submissions.load(Ordering::Relaxed);
    cache.prefetch(&hashes());
    let used = submissions.load(Ordering::Relaxed) - before;
    assert!(used <= 4, "{used} submissions for 64 pages in batches of 16");
    assert_eq!(cache.metrics().engine.g3_to_g2.pages, PAGES as u64);
    for h in hashes() {
        let same = cache.g2().load(h, |page| page == &pattern(h, layout().page_bytes())[..]);
        assert_eq!(same, Some(true), "{h:?}");
    }
    // A prefix that stops being stored stops the prefetch: nothing past the gap is read.
    let mut gap = vec![BlockHash(1000)];
    gap.extend(hashes());
    let before = submissions.load(Ordering::Relaxed);
    cache.prefetch(&gap);
    assert_eq!(submissions.load(Ordering::Relaxed), before);
}

/// 500 prefetches of the whole prefix behind a disk taking 20 ms per submission, G2 too small
/// to keep them (so every job reads): at most `max_queued_prefetches` (16) jobs wait, the rest
/// are counted drops, and dropping the cache cancels what is queued (it ran every job: ~40 s
/// for 500 unbounded ones).
#[test]
fn prefetch_queue_is_bounded_and_drop_cancels_it() {
    let dir = TestDir::new("prefetch-bound");
    let offload = OffloadConfig::default().with_workers(1).with_batch_pages(16).with_max_queued_prefetches(16);
    let (cache, _, delay_ms) = engine(dir.path(), offload, 8);
    delay_ms.store(20, Ordering::Relaxed);
    let all = hashes();
    let started = Instant::now();
    for _ in 0..500 {
        cache.prefetch(&all);
    }
    assert!(started.elapsed() < Duration::from_secs(2), "prefetch blocked: {:?}", started.elapsed());
    let m = cache.metrics().engine;
    assert!(m.queue_depth <= 16, "{} jobs queued", m.queue_depth);
    assert!(m.prefetch_dropped >= 500 - 16 - 1, "{} dropped", m.prefetch_dropped);
    std::thread::sleep(Duration::from_millis(100));
    assert!(cache.metrics().engine.g3_to_g2.pages > 0, "the worker runs prefetches");
    let started = Instant::now();
    drop(cache);
    // The job in flight finishes (4 submissions, 80 ms); the 15 queued would take 1.2 s more.
    assert!(started.elapsed() < Duration::from_millis(500), "drop ran queued prefetches: {:?}", started.elapsed());
}
