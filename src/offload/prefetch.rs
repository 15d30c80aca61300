//! Prefetch: pulling the G3-only part of a waiting request's prefix into G2 ahead of its
//! onboarding.
//!
//! Why bounded: a prefetch is a hint, and a caller can issue them far faster than a disk serves
//! them. Lifecycle of one:
//! 1. [`TieredCache::prefetch`](super::TieredCache::prefetch) takes a slot of
//!    [`OffloadConfig::max_queued_prefetches`](super::OffloadConfig::max_queued_prefetches)
//!    (a [`PrefetchJob`] holds it), or drops the prefetch and counts it when none is free.
//! 2. A worker runs the job ([`run`]): the prefix's G3-only pages are read in batches of
//!    [`Shared::batch`] pages, one `read_pages` call (one disk submission) per batch, and stored
//!    in G2 as backed copies.
//! 3. The job is dropped once run, or without running when the engine is dropped (queued
//!    prefetches are cancelled, not run): either way its slot is given back.

use super::Shared;
use crate::io::AlignedBuf;
use crate::prefix::BlockHash;
use crate::sync::Arc;
use crate::sync::atomic::{AtomicU64, Ordering};

/// A queued prefetch: its hashes and its slot of the queue's bound, given back on drop.
pub(crate) struct PrefetchJob {
    hashes: Vec<BlockHash>,
    queued: Arc<AtomicU64>,
}

impl PrefetchJob {
    /// Takes a slot of `queued` (at most `max` taken) for `hashes`; None when all are taken.
    pub(crate) fn try_new(hashes: &[BlockHash], queued: &Arc<AtomicU64>, max: usize) -> Option<Self> {
        // AcqRel on the count alone: it guards no other memory, only how many jobs exist.
        let taken = queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max as u64).then_some(n + 1));
        taken.ok().map(|_| Self { hashes: hashes.to_vec(), queued: Arc::clone(queued) })
    }
}

impl std::ops::Deref for PrefetchJob {
    type Target = [BlockHash];
    fn deref(&self) -> &[BlockHash] {
        &self.hashes
    }
}

impl Drop for PrefetchJob {
    fn drop(&mut self) {
        self.queued.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Copies the G3-only pages of the prefix `hashes` into G2, in batches of one disk submission
/// each; stops at the first hash no tier holds, or at the first page that cannot be read or
/// stored.
pub(crate) fn run(shared: &Shared, hashes: &[BlockHash]) {
    let Some(disk) = &shared.g3 else { return };
    let pb = shared.page_bytes;
    let per_batch = shared.batch.max(1).min(hashes.len().max(1));
    // Aligned, so the disk reads straight into it where the page size allows (no bounce copy).
    let Ok(mut buf) = AlignedBuf::new(per_batch * pb) else { return };
    let mut moved = 0;
    let mut wanted: Vec<BlockHash> = Vec::with_capacity(per_batch);
    let mut rest = hashes.iter().copied();
    'batches: loop {
        wanted.clear();
        let mut prefix_ends = true;
        for h in rest.by_ref() {
            if shared.g1.lock().contains(h) || shared.g2.contains(h) {
                continue;
            }
            if !disk.contains(h) {
                break;
            }
            wanted.push(h);
            if wanted.len() == per_batch {
                prefix_ends = false;
                break;
            }
        }
        if wanted.is_empty() {
            break;
        }
        let results = {
            let mut reqs: Vec<(BlockHash, &mut [u8])> = wanted.iter().copied().zip(buf.chunks_mut(pb)).collect();
            disk.read_pages(&mut reqs)
        };
        for (i, (&h, read)) in wanted.iter().zip(&results).enumerate() {
            if !matches!(read, Ok(true)) {
                break 'batches;
            }
            let page = &buf[i * pb..(i + 1) * pb];
            match shared.g2.store(h, |dst| {
                dst.copy_from_slice(page);
                Ok(())
            }) {
                Ok(true) => {
                    shared.g2.set_backed(h, true);
                    if shared.config.exclusive_g3 {
                        disk.make_cold(&[h]); // G2 serves it now
                    }
                    moved += 1;
                }
                Ok(false) => {}
                Err(_) => break 'batches,
            }
        }
        if prefix_ends {
            break;
        }
    }
    shared.stats().m.g3_to_g2.add(moved, pb);
}
