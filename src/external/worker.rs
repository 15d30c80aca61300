//! The IO workers of a [`SlotStore`](super::SlotStore): each takes one job at a time (loads
//! first), runs its batch through the SSD tier, and posts the result and the events.

use std::collections::HashSet;

use super::{Job, JobKind, JobResult, Shared, State};
use crate::error::Tier;
use crate::external::{EventKind, TierEvent};
use crate::prefix::BlockHash;
use crate::sync::{MutexGuard, lock, wait};

/// The worker loop: runs jobs until the store is closed and its queues are empty. A worker
/// takes the oldest job (loads first) and every queued job of the same kind behind it, up to
/// `max_batch_bytes`, and runs them as one batch: the SSD tier's io_uring ring serves one
/// batch at a time, so small jobs one by one would leave it mostly idle.
pub(super) fn run(shared: &Shared) {
    loop {
        let batch = {
            let mut st = lock(&shared.state);
            loop {
                let batch = take_batch(&mut st, shared.max_batch_pages);
                if !batch.is_empty() {
                    st.running += batch.len();
                    break batch;
                }
                if st.closed {
                    return;
                }
                st = wait(&shared.work, st);
            }
        };
        let jobs = batch.len();
        match batch[0].kind {
            JobKind::Store => store(shared, batch),
            JobKind::Load => load(shared, batch),
        }
        let mut st = lock(&shared.state);
        st.running -= jobs;
        drop(st);
        shared.idle.notify_all();
    }
}

/// The next batch: the first queued job (loads first), then the jobs queued behind it while
/// they fit in `max_pages` (always the first one) and, for loads, fill slots no job of the
/// batch fills.
fn take_batch(st: &mut State, max_pages: usize) -> Vec<Job> {
    let queue = if st.loads.is_empty() { &mut st.stores } else { &mut st.loads };
    let mut batch: Vec<Job> = Vec::new();
    let mut pages = 0;
    let mut filled: HashSet<usize> = HashSet::new();
    while let Some(next) = queue.front() {
        let fits = batch.is_empty() || pages + next.keys.len() <= max_pages;
        let disjoint = next.kind == JobKind::Store || next.slots.iter().all(|s| !filled.contains(s));
        if !fits || !disjoint {
            break;
        }
        let Some(job) = queue.pop_front() else { break };
        pages += job.keys.len();
        if job.kind == JobKind::Load {
            filled.extend(job.slots.iter().copied());
        }
        batch.push(job);
    }
    batch
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

/// Feeds the live capacity curve the uses of a batch's jobs (here, off the runtime's thread):
/// every key of a load (found here), the new keys of a store (not found).
fn count_uses(st: &mut MutexGuard<'_, State>, jobs: &[Job]) {
    if let Some(curve) = &mut st.curve {
        for job in jobs {
            curve.observe(match job.kind {
                JobKind::Load => &job.keys,
                JobKind::Store => &job.uses,
            });
        }
    }
}

fn finish(st: &mut MutexGuard<'_, State>, result: JobResult) {
    st.m.jobs_finished += 1;
    st.finished.push(result);
}

fn store(shared: &Shared, jobs: Vec<Job>) {
    let page_bytes = shared.disk.page_bytes() as u64;
    let keys: Vec<BlockHash> = jobs.iter().flat_map(|j| j.keys.iter().copied()).collect();
    let slots: Vec<usize> = jobs.iter().flat_map(|j| j.slots.iter().copied()).collect();
    let mut outcomes = Vec::new();
    let mut to_g4 = 0u64;
    let read = shared.memory.read_slots(&slots, &mut |pages| {
        let batch: Vec<(BlockHash, &[u8])> = keys.iter().copied().zip(pages.iter().copied()).collect();
        outcomes = shared.disk.write_pages(&batch);
        if let Some(g4) = &shared.g4 {
            // the shared copy: other pods (and this one after a restart elsewhere) find it there
            to_g4 = g4.put_pages(&batch).iter().filter(|ok| **ok).count() as u64;
        }
    });
    let mut evicted = Vec::new();
    shared.disk.drain_evicted(&mut evicted);
    let mut results = Vec::with_capacity(jobs.len());
    let mut at = 0;
    for job in &jobs {
        let mut result = JobResult::empty(job.id, JobKind::Store);
        for key in &job.keys {
            match (&read, outcomes.get(at)) {
                (Ok(()), Some(Ok(true))) => result.succeeded.push(*key),
                // Not written: another writer got there first (stored now), or no slot was free.
                (Ok(()), Some(Ok(false))) if shared.disk.contains(*key) => {}
                (Ok(()), Some(Ok(false))) => {
                    result.refused.push(*key);
                    result.failed.push(*key);
                }
                _ => result.failed.push(*key),
            }
            at += 1;
        }
        result.settle(job, page_bytes);
        results.push(result);
    }
    let mut st = lock(&shared.state);
    count_uses(&mut st, &jobs);
    st.m.keys_stored_g4 += to_g4;
    end_in_flight(&mut st, &keys);
    if !evicted.is_empty() {
        st.events.push(TierEvent { kind: EventKind::Removed, tier: Tier::G3, hashes: evicted });
    }
    for result in results {
        st.m.keys_stored += result.succeeded.len() as u64;
        st.m.keys_refused += result.refused.len() as u64;
        st.m.keys_store_failed += (result.failed.len() - result.refused.len()) as u64;
        st.m.bytes_stored += result.bytes;
        if !result.succeeded.is_empty() {
            st.events.push(TierEvent { kind: EventKind::Stored, tier: Tier::G3, hashes: result.succeeded.clone() });
        }
        finish(&mut st, result);
    }
}

fn load(shared: &Shared, jobs: Vec<Job>) {
    let page_bytes = shared.disk.page_bytes() as u64;
    let keys: Vec<BlockHash> = jobs.iter().flat_map(|j| j.keys.iter().copied()).collect();
    let slots: Vec<usize> = jobs.iter().flat_map(|j| j.slots.iter().copied()).collect();
    let mut outcomes = Vec::new();
    let mut from_g4 = vec![false; keys.len()];
    let written = shared.memory.write_slots(&slots, &mut |pages| {
        let mut batch: Vec<(BlockHash, &mut [u8])> =
            keys.iter().copied().zip(pages.iter_mut().map(|p| &mut **p)).collect();
        outcomes = shared.disk.read_pages(&mut batch);
        if let Some(g4) = &shared.g4 {
            // what the SSD tier does not hold comes from G4, verified, in one pipelined batch
            let (at, mut rest): (Vec<usize>, Vec<(BlockHash, &mut [u8])>) = batch
                .into_iter()
                .enumerate()
                .filter(|(i, (key, _))| !matches!(outcomes.get(*i), Some(Ok(true))) && !shared.disk.contains(*key))
                .unzip();
            for (i, ok) in at.into_iter().zip(g4.get_pages(&mut rest)) {
                from_g4[i] = ok;
            }
        }
    });
    let mut results = Vec::with_capacity(jobs.len());
    let mut dropped = Vec::new();
    let mut at = 0;
    for job in &jobs {
        unpin(shared, job);
        let mut result = JobResult::empty(job.id, JobKind::Load);
        for (i, key) in job.keys.iter().enumerate() {
            if written.is_ok() && (matches!(outcomes.get(at), Some(Ok(true))) || from_g4[at]) {
                result.succeeded.push(*key);
            } else {
                result.failed.push(*key);
                // A page that was there and failed its read or checksum is dropped from the tier.
                if job.pinned.get(i).copied().unwrap_or(false) && !shared.disk.contains(*key) {
                    dropped.push(*key);
                }
            }
            at += 1;
        }
        result.settle(job, page_bytes);
        results.push(result);
    }
    let mut st = lock(&shared.state);
    count_uses(&mut st, &jobs);
    if !dropped.is_empty() {
        st.events.push(TierEvent { kind: EventKind::Removed, tier: Tier::G3, hashes: dropped });
    }
    st.m.keys_loaded_g4 += from_g4.iter().filter(|x| **x).count() as u64;
    for result in results {
        st.m.keys_loaded += result.succeeded.len() as u64;
        st.m.keys_load_failed += result.failed.len() as u64;
        st.m.bytes_loaded += result.bytes;
        finish(&mut st, result);
    }
}

impl JobResult {
    /// Success, bytes moved and time since submission, once every key of `job` is sorted
    /// into succeeded or failed.
    fn settle(&mut self, job: &Job, page_bytes: u64) {
        self.success = self.failed.is_empty();
        self.bytes = self.succeeded.len() as u64 * page_bytes;
        self.transfer_time = job.submitted.elapsed();
    }
}
