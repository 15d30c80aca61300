//! The IO workers of a [`SlotStore`](super::SlotStore): each takes one job at a time (loads
//! first), runs its batch through the SSD tier, and posts the result and the events.

use std::time::Instant;

use super::{Job, JobKind, JobResult, Shared, State};
use crate::error::Tier;
use crate::external::{EventKind, TierEvent};
use crate::prefix::BlockHash;
use crate::sync::{MutexGuard, lock, wait};

/// The worker loop: runs jobs until the store is closed and its queues are empty.
pub(super) fn run(shared: &Shared) {
    loop {
        let job = {
            let mut st = lock(&shared.state);
            loop {
                if let Some(job) = st.loads.pop_front().or_else(|| st.stores.pop_front()) {
                    st.running += 1;
                    break job;
                }
                if st.closed {
                    return;
                }
                st = wait(&shared.work, st);
            }
        };
        match job.kind {
            JobKind::Store => store(shared, job),
            JobKind::Load => load(shared, job),
        }
        let mut st = lock(&shared.state);
        st.running -= 1;
        drop(st);
        shared.idle.notify_all();
    }
}

/// Reports a queued job as failed without running it (shutdown), releasing its pins and
/// in-flight marks.
pub(super) fn cancel(shared: &Shared, job: Job) {
    unpin(shared, &job);
    let mut st = lock(&shared.state);
    let mut result = JobResult::empty(job.id, job.kind);
    result.success = job.keys.is_empty();
    result.transfer_time = job.submitted.elapsed();
    match job.kind {
        JobKind::Store => {
            end_in_flight(&mut st, &job.keys);
            st.m.keys_store_failed += job.keys.len() as u64;
        }
        JobKind::Load => st.m.keys_load_failed += job.keys.len() as u64,
    }
    result.failed = job.keys;
    finish(&mut st, result);
}

fn unpin(shared: &Shared, job: &Job) {
    for (key, pinned) in job.keys.iter().zip(&job.pinned) {
        if *pinned {
            shared.disk.unpin(*key);
        }
    }
}

fn end_in_flight(st: &mut MutexGuard<'_, State>, keys: &[BlockHash]) {
    for key in keys {
        if let Some(n) = st.in_flight.get_mut(key) {
            *n -= 1;
            if *n == 0 {
                st.in_flight.remove(key);
            }
        }
    }
}

fn finish(st: &mut MutexGuard<'_, State>, result: JobResult) {
    st.m.jobs_finished += 1;
    st.finished.push(result);
}

fn store(shared: &Shared, job: Job) {
    let page_bytes = shared.disk.page_bytes() as u64;
    let mut outcomes = Vec::new();
    let read = shared.memory.read_slots(&job.slots, &mut |pages| {
        let batch: Vec<(BlockHash, &[u8])> = job.keys.iter().copied().zip(pages.iter().copied()).collect();
        outcomes = shared.disk.write_pages(&batch);
    });
    let mut evicted = Vec::new();
    shared.disk.drain_evicted(&mut evicted);
    let mut result = JobResult::empty(job.id, JobKind::Store);
    for (i, key) in job.keys.iter().enumerate() {
        match (&read, outcomes.get(i)) {
            (Ok(()), Some(Ok(true))) => result.succeeded.push(*key),
            // Not written: another writer got there first (stored now), or no slot was free.
            (Ok(()), Some(Ok(false))) if shared.disk.contains(*key) => {}
            (Ok(()), Some(Ok(false))) => {
                result.refused.push(*key);
                result.failed.push(*key);
            }
            _ => result.failed.push(*key),
        }
    }
    result.success = result.failed.is_empty();
    result.bytes = result.succeeded.len() as u64 * page_bytes;
    result.transfer_time = job.submitted.elapsed();
    let mut st = lock(&shared.state);
    end_in_flight(&mut st, &job.keys);
    st.m.keys_stored += result.succeeded.len() as u64;
    st.m.keys_refused += result.refused.len() as u64;
    st.m.keys_store_failed += (result.failed.len() - result.refused.len()) as u64;
    st.m.bytes_stored += result.bytes;
    if !evicted.is_empty() {
        st.events.push(TierEvent { kind: EventKind::Removed, tier: Tier::G3, hashes: evicted });
    }
    if !result.succeeded.is_empty() {
        st.events.push(TierEvent { kind: EventKind::Stored, tier: Tier::G3, hashes: result.succeeded.clone() });
    }
    finish(&mut st, result);
}

fn load(shared: &Shared, job: Job) {
    let started = Instant::now();
    let page_bytes = shared.disk.page_bytes() as u64;
    let mut outcomes = Vec::new();
    let written = shared.memory.write_slots(&job.slots, &mut |pages| {
        let mut batch: Vec<(BlockHash, &mut [u8])> =
            job.keys.iter().copied().zip(pages.iter_mut().map(|p| &mut **p)).collect();
        outcomes = shared.disk.read_pages(&mut batch);
    });
    unpin(shared, &job);
    let mut result = JobResult::empty(job.id, JobKind::Load);
    let mut dropped = Vec::new();
    for (i, key) in job.keys.iter().enumerate() {
        if written.is_ok() && matches!(outcomes.get(i), Some(Ok(true))) {
            result.succeeded.push(*key);
        } else {
            result.failed.push(*key);
            // A page that was there and failed its read or checksum is dropped from the tier.
            if job.pinned.get(i).copied().unwrap_or(false) && !shared.disk.contains(*key) {
                dropped.push(*key);
            }
        }
    }
    result.success = result.failed.is_empty();
    result.bytes = result.succeeded.len() as u64 * page_bytes;
    result.transfer_time = job.submitted.elapsed().max(started.elapsed());
    let mut st = lock(&shared.state);
    st.m.keys_loaded += result.succeeded.len() as u64;
    st.m.keys_load_failed += result.failed.len() as u64;
    st.m.bytes_loaded += result.bytes;
    if !dropped.is_empty() {
        st.events.push(TierEvent { kind: EventKind::Removed, tier: Tier::G3, hashes: dropped });
    }
    finish(&mut st, result);
}
