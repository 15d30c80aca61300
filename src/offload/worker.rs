//! What the background workers do: jobs (onboard, prefetch) and maintenance passes (offload,
//! spill, retention expiry).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use super::ticket::{self, OnboardJob};
use super::{Job, Next, Shared, class_of};
use crate::error::Result;
use crate::pool::{CopyOutcome, StagedCopies};
use crate::prefix::BlockHash;
use crate::sync::lock;
use crate::tier::remote::Publish;

/// Counts a worker out of its queue when dropped (on return or unwind).
pub(crate) struct Live<'a>(pub(crate) &'a super::WorkQueue<Job>);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.remove_worker();
    }
}

/// A worker's loop: jobs first, maintenance whenever a tick has passed. Parks in
/// [`super::WorkQueue::next`] while the workers are paused.
pub(crate) fn run(shared: &Shared) {
    let mut last = Instant::now();
    loop {
        match shared.queue.next(shared.config.tick) {
            Next::Job(job) => {
                run_jobs(shared, job);
                if last.elapsed() < shared.config.tick {
                    continue;
                }
            }
            Next::Tick => {}
            Next::Stop => return,
        }
        // A failed pass is retried on the next tick; its pages stayed where they were (every
        // staged page is handed back by its batch). Counted, since nobody waits for it.
        if maintain(shared).is_err() {
            shared.worker_error();
        }
        last = Instant::now();
    }
}

/// Runs `first` and the onboarding jobs queued behind it, up to a batch of pages, as one: their
/// G3 reads go to the disk in one submission, which keeps the queue full instead of draining
/// it after every (often short) prefix. Every job taken is marked finished on the queue.
pub(crate) fn run_jobs(shared: &Shared, first: Job) {
    let mut onboards = Vec::new();
    let mut pages = 0;
    let mut next = Some(first);
    let mut prefetch_after = None;
    while let Some(job) = next.take() {
        match job {
            Job::Onboard(j) => {
                pages += j.blocks.len();
                onboards.push(j);
                if pages < shared.batch {
                    next = shared.queue.try_next();
                }
            }
            Job::Prefetch(h) => prefetch_after = Some(h),
        }
    }
    let jobs = onboards.len() as u64;
    if jobs > 0 {
        onboard_batch(shared, onboards);
        shared.queue.finish(jobs);
    }
    if let Some(h) = prefetch_after {
        prefetch(shared, &h);
        shared.queue.finish(1);
    }
}

/// One maintenance pass. Returns whether it made progress: a page moved down, declined, or a
/// victim found already backed. Deferred (write budget) or failed copies are not progress, so
/// a caller looping until no progress does not spin on a budget or a full tier.
pub(crate) fn maintain(shared: &Shared) -> Result<bool> {
    maintain_until(shared, 0)
}

/// Copies G1's next victims down until `extra` blocks beyond G1's watermark margin are free or
/// ready, G2 keeping room for them; see [`TieredCache::make_room`](super::TieredCache::make_room).
/// Returns whether it made progress.
pub(crate) fn maintain_until(shared: &Shared, extra: usize) -> Result<bool> {
    // A burst of allocations can take G1 (or G2) more than one batch below its watermark;
    // batches go on until both are back above it, or until one makes no progress. Without
    // this, a runtime calling maintenance once per step lost a fifth of G1's victims to
    // bursts with write-through off.
    let g1_want = shared.g1_target + extra;
    let rounds = 1 + g1_want.max(shared.g2_target).div_ceil(shared.batch.max(1));
    let mut did = false;
    for _ in 0..rounds {
        let progress = maintain_once(shared, g1_want)?;
        did |= progress;
        if !progress || above_watermarks(shared, g1_want) {
            break;
        }
    }
    Ok(did)
}

/// Whether G1 has `g1_want` free + ready blocks and (with an SSD tier) G2 its watermark's
/// worth of free + ready slots.
fn above_watermarks(shared: &Shared, g1_want: usize) -> bool {
    let g2_ok = shared.g3.is_none() || shared.g2.free_or_ready() >= shared.g2_target;
    g2_ok && shared.g1.lock().free_or_ready() >= g1_want
}

/// One batch of each kind of maintenance (see [`maintain`]), aiming at `g1_want` free + ready
/// G1 blocks.
fn maintain_once(shared: &Shared, g1_want: usize) -> Result<bool> {
    let batch = shared.batch;
    let mut did = false;
    demote(shared);
    propagate_evictions(shared)?;
    // Make room in G2 first, so that pages coming down from G1 do not push out pages G3 does
    // not hold yet: its watermark, or as many slots as G1 is short of its aim if more.
    if let Some(disk) = &shared.g3 {
        let g1_short = g1_want.saturating_sub(shared.g1.lock().free_or_ready());
        // With write-through, the blocks G1 makes room for are copied to G2 at their commit.
        let burst = if shared.config.write_through_g2 && g1_want > shared.g1_target { g1_want } else { 0 };
        let have = shared.g2.free_or_ready();
        let want = shared.g2_target.max(g1_short).max(burst).saturating_sub(have);
        if want > 0 {
            let (spill, examined) = shared.g2.stage_spill(want.min(batch))?;
            did |= examined > spill.len() + spill.refused();
            did |= write_g3(shared, disk, spill)? > 0;
        }
    }
    let victims = |core: &crate::cache::CacheCore| {
        let have = core.free_or_ready();
        let n = g1_want.saturating_sub(have).min(batch);
        if n == 0 {
            return 0;
        }
        // Backpressure: with G2 full of pages still owed to G3, a G1 victim stays in G1
        // rather than displacing one of them.
        if shared.g3.is_some() { n.min(shared.g2.free_or_ready()) } else { n }
    };
    let (staged, examined, victims_staged) = shared.g1.stage_copies(shared.config.write_through_g2, &victims)?;
    did |= examined > victims_staged;
    // With write-through, a victim staged here was written through at its commit already
    // (and counted as a use then); its G2 copy was dropped meanwhile, so this is the same
    // use copied again, not a new one.
    let first_copies = match shared.config.write_through_g2 {
        true => staged.len() - victims_staged,
        false => staged.len(),
    };
    did |= copy_down(shared, staged, first_copies)? > 0;
    expire_retention(shared)?;
    Ok(did)
}

/// Demotion: a page G1 evicted is now served by G2 alone, so G2's copy becomes its most
/// recently used. Without this, G2's order is that of the write-through copies (commit time),
/// and a long-running request's pages would be the first G2 drops once G1 let them go.
fn demote(shared: &Shared) {
    let mut evicted = Vec::new();
    shared.g1.lock().drain_evicted(&mut evicted);
    if !evicted.is_empty() {
        let moved = shared.g2.touch(&evicted);
        shared.stats().m.demoted += moved as u64;
    }
}

/// A page a lower tier evicted no longer backs the copies above it: G2 and G1 forget that
/// they were backed (a G1 block on the ready queue goes back to the policy and is copied down
/// again), so that an eviction later is counted as the loss it is.
fn propagate_evictions(shared: &Shared) -> Result<()> {
    let mut gone = Vec::new();
    if let Some(disk) = &shared.g3 {
        disk.drain_evicted(&mut gone);
        for &h in &gone {
            shared.g2.set_backed(h, false);
        }
        gone.retain(|h| !shared.g2.contains(*h));
    }
    shared.g2.drain_evicted(&mut gone);
    if gone.is_empty() {
        return Ok(());
    }
    let mut core = shared.g1.lock();
    for h in gone {
        if !shared.g3.as_ref().is_some_and(|d| d.contains(h)) {
            core.unback(h)?;
        }
    }
    Ok(())
}

/// G1 -> G2 for blocks staged in G1; each block is handed back (backed or not) afterwards,
/// also on an early return. Returns how many are now backed by G2.
fn copy_down(shared: &Shared, mut staged: StagedCopies<'_>, first_copies: usize) -> Result<usize> {
    if staged.is_empty() {
        return Ok(0);
    }
    let mut latencies = Vec::with_capacity(staged.len());
    let mut present = Vec::new();
    let (mut backed_count, mut failed) = (0usize, 0u64);
    for i in 0..staged.len() {
        let h = staged.hash(i);
        let t = Instant::now();
        let stored = shared.g2.store(h, |dst| {
            dst.copy_from_slice(staged.page(i));
            Ok(())
        });
        let backed = match stored {
            Ok(true) => {
                latencies.push(t.elapsed());
                true
            }
            Ok(false) if shared.g2.contains(h) => {
                // G2 kept its copy (cold since the page's promotion): reused, not copied again
                present.push(h);
                true
            }
            Ok(false) | Err(_) => false,
        };
        if i < first_copies {
            shared.record_use(h);
        }
        if backed {
            staged.set(i, CopyOutcome::Backed);
            backed_count += 1;
        } else {
            failed += 1;
        }
    }
    if shared.publishes(Publish::Offload) {
        let pages: Vec<(BlockHash, &[u8])> = (0..staged.len()).map(|i| (staged.hash(i), staged.page(i))).collect();
        shared.publish(&pages);
    }
    staged.finish()?;
    // G1 gives these pages up: G2's copy is the one that serves them from now on.
    shared.g2.touch(&present);
    let mut s = shared.stats();
    s.m.g1_to_g2.add(latencies.len() as u64, shared.page_bytes);
    s.m.offload_failed += failed;
    for l in latencies {
        s.offload.record(l);
    }
    Ok(backed_count)
}

/// G2 -> G3 for slots staged in G2, through admission and the write budget; every slot is
/// handed back with its outcome afterwards, also on an early return.
/// Returns how many staged pages were settled: written, already there, or declined.
fn write_g3(shared: &Shared, disk: &crate::tier::disk::DiskTier, mut staged: StagedCopies<'_>) -> Result<usize> {
    if staged.is_empty() {
        return Ok(0);
    }
    let (mut admitted, mut declined, mut deferred, mut present) = (Vec::new(), 0u64, 0u64, Vec::new());
    let mut in_g1 = 0u64;
    // pages that leave G2 now (admitted or not), with their class, for the reuse shadow
    let mut spilled = Vec::new();
    // While G3 has free slots, a write evicts nothing: every page is admitted, so no page is
    // lost while a lower tier has room (at most one drive fill of writes in all).
    let room = {
        let m = disk.metrics();
        m.capacity_slots.saturating_sub(m.used_slots)
    };
    let mut room = usize::try_from(room).unwrap_or(usize::MAX);
    for i in 0..staged.len() {
        let h = staged.hash(i);
        if disk.contains(h) {
            // G3 kept its copy (cold since the page's promotion): it serves the page again
            staged.set(i, CopyOutcome::Backed);
            present.push(h);
            continue;
        }
        if shared.g1.lock().holds_in_use(h) {
            // A page a running request holds in G1 costs nothing to drop from G2 (G1's block
            // is told, and copied down again once released and evicted): writing it to the
            // SSD now would only wear it.
            staged.set(i, CopyOutcome::Declined);
            in_g1 += 1;
            continue;
        }
        // every page that leaves G2 now, admitted or not, feeds the reuse shadow
        let uses = shared.uses(h);
        spilled.push((h, class_of(uses)));
        if room == 0 && !shared.admits(h, uses) {
            staged.set(i, CopyOutcome::Declined);
            declined += 1;
        } else if !lock(&shared.budget).try_take(shared.page_bytes as u64) {
            deferred += 1;
        } else {
            room = room.saturating_sub(1);
            admitted.push(i);
        }
    }
    let t = Instant::now();
    let results = {
        let batch: Vec<(BlockHash, &[u8])> = admitted.iter().map(|&i| (staged.hash(i), staged.page(i))).collect();
        disk.write_pages(&batch)
    };
    let elapsed = t.elapsed();
    if shared.publishes(Publish::Spill) {
        let leaving: HashSet<u128> = spilled.iter().map(|(h, _)| h.0).collect();
        let pages: Vec<(BlockHash, &[u8])> = (0..staged.len())
            .map(|i| (staged.hash(i), staged.page(i)))
            .filter(|(h, _)| leaving.contains(&h.0))
            .collect();
        shared.publish(&pages);
    }
    disk.touch(&present);
    let (mut written, mut failed, mut settled) = (0u64, 0u64, present.len() + (declined + in_g1) as usize);
    for (&i, r) in admitted.iter().zip(results) {
        let backed = match r {
            Ok(true) => {
                written += 1;
                true
            }
            Ok(false) => disk.contains(staged.hash(i)),
            Err(_) => {
                failed += 1;
                false
            }
        };
        if backed {
            staged.set(i, CopyOutcome::Backed);
            settled += 1;
        }
    }
    staged.finish()?;
    {
        let mut reuse = lock(&shared.reuse);
        spilled.iter().for_each(|&(h, class)| reuse.spilled(h, class));
    }
    let mut s = shared.stats();
    s.m.g2_to_g3.add(written, shared.page_bytes);
    s.m.admission_declined += declined;
    s.m.spill_skipped_in_g1 += in_g1;
    s.m.budget_deferred += deferred;
    s.m.spill_failed += failed;
    if !admitted.is_empty() {
        s.spill.record(elapsed);
    }
    Ok(settled)
}

/// Copies an onboarding job's pages into its G1 blocks, G2 first, then G3 in one batch.
pub(crate) fn onboard(shared: &Shared, job: OnboardJob) {
    onboard_batch(shared, vec![job]);
}

/// Onboards several jobs: each page from G2 if it is there, all the rest from G3 in one batch;
/// then each job is finished and its ticket completed on its own.
fn onboard_batch(shared: &Shared, jobs: Vec<OnboardJob>) {
    let mut ok: Vec<Vec<bool>> = jobs.iter().map(|j| vec![false; j.blocks.len()]).collect();
    let mut from_g3: Vec<(usize, usize)> = Vec::new();
    let mut g2_latencies = Vec::new();
    for (j, job) in jobs.iter().enumerate() {
        for (i, done) in ok[j].iter_mut().enumerate() {
            let t = Instant::now();
            // The block comes from `begin_onboard` for this job, which alone touches it until
            // `finish_onboard` below; the lease ends with this iteration.
            let Ok(mut dst) = shared.g1.onboard_page(job.blocks[i]) else { continue };
            if shared.g2.load(job.hashes[i], |src| dst.copy_from_slice(src)).is_some() {
                *done = true;
                g2_latencies.push(t.elapsed());
            } else {
                from_g3.push((j, i));
            }
        }
    }
    // What G2 did not have comes from G3 if it holds it, else from G4 (the slower tier).
    let from_g4: Vec<(usize, usize)> = match &shared.g3 {
        Some(disk) if shared.g4.is_some() => {
            let (local, remote) = from_g3.iter().partition(|&&(j, i)| disk.contains(jobs[j].hashes[i]));
            from_g3 = local;
            remote
        }
        Some(_) => Vec::new(),
        None => std::mem::take(&mut from_g3),
    };
    let mut g3_latency = None;
    if let Some(disk) = &shared.g3
        && !from_g3.is_empty()
    {
        let t = Instant::now();
        let read = |io: &mut [(BlockHash, &mut [u8])]| {
            disk.read_pages(io).into_iter().map(|r| matches!(r, Ok(true))).collect()
        };
        for (j, i, _, arrived) in read_into_g1(shared, &jobs, &from_g3, read) {
            ok[j][i] = arrived;
        }
        g3_latency = Some(t.elapsed());
    }
    if let Some(g4) = &shared.g4
        && !from_g4.is_empty()
    {
        let arrivals = read_into_g1(shared, &jobs, &from_g4, |io| g4.get_pages(io));
        let mut published = lock(&shared.published);
        for (j, i, h, arrived) in arrivals {
            ok[j][i] = arrived;
            if arrived {
                // G4 has it: not sent back when G1 gives it up
                published.insert(h);
            }
        }
    }
    {
        let mut s = shared.stats();
        for l in g2_latencies {
            s.onboard_g2.record(l);
        }
    }
    // Promotion: G1 serves the loaded pages now, so their lower copies go to the cold end of
    // their tier (evicted first, at no loss) instead of holding space as duplicates; G1's
    // blocks are not backed, and are copied down (or find these copies still there) when G1
    // gives them up.
    let mut below: Vec<Vec<bool>> = ok.iter().map(|o| vec![false; o.len()]).collect();
    for &(j, i) in &from_g3 {
        below[j][i] = true;
    }
    let (mut cold_g2, mut cold_g3) = (Vec::new(), Vec::new());
    for (j, job) in jobs.iter().enumerate() {
        for (i, &h) in job.hashes.iter().enumerate() {
            match (ok[j][i], below[j][i]) {
                (true, true) => cold_g3.push(h),
                (true, false) => cold_g2.push(h),
                (false, _) => {}
            }
        }
    }
    for (j, job) in jobs.into_iter().enumerate() {
        let of_job =
            |list: &[(usize, usize)]| list.iter().filter(|&&(jj, _)| jj == j).map(|&(_, i)| i).collect::<Vec<_>>();
        finish_job(shared, job, &ok[j], &of_job(&from_g3), &of_job(&from_g4), g3_latency);
    }
    shared.g2.make_cold(&cold_g2);
    if let Some(disk) = &shared.g3
        && shared.config.exclusive_g3
    {
        disk.make_cold(&cold_g3);
    }
}

/// Leases the G1 pages of the blocks `list` names (job, position), fills them with `read` (one
/// batch), and returns for each block leased where it is, its hash and whether it arrived. The
/// leases end before this returns, so before `finish_onboard`.
fn read_into_g1(
    shared: &Shared,
    jobs: &[OnboardJob],
    list: &[(usize, usize)],
    read: impl FnOnce(&mut [(BlockHash, &mut [u8])]) -> Vec<bool>,
) -> Vec<(usize, usize, BlockHash, bool)> {
    let mut leases = Vec::with_capacity(list.len());
    for &(j, i) in list {
        // The block comes from `begin_onboard` for job `j`, which alone touches it until
        // `finish_onboard`.
        if let Ok(dst) = shared.g1.onboard_page(jobs[j].blocks[i]) {
            leases.push((j, i, jobs[j].hashes[i], dst));
        }
    }
    let mut io: Vec<(BlockHash, &mut [u8])> = leases.iter_mut().map(|(_, _, h, d)| (*h, &mut **d)).collect();
    let arrived = read(&mut io);
    drop(io);
    leases.iter().zip(arrived).map(|((j, i, h, _), ok)| (*j, *i, *h, ok)).collect()
}

/// Registers the loaded leading blocks of a job in G1 and completes its ticket.
fn finish_job(
    shared: &Shared,
    job: OnboardJob,
    ok: &[bool],
    from_g3: &[usize],
    from_g4: &[usize],
    g3_latency: Option<Duration>,
) {
    let n = job.blocks.len();
    let loaded = ok.iter().take_while(|x| **x).count();
    let g3_loaded = from_g3.iter().filter(|&&i| i < loaded).count();
    let g4_loaded = from_g4.iter().filter(|&&i| i < loaded).count();
    let mut outcome = job.outcome;
    outcome.from_g2 = loaded - g3_loaded - g4_loaded;
    outcome.from_g3 = g3_loaded;
    outcome.from_g4 = g4_loaded;
    outcome.failed = n - loaded;
    outcome.prefix_blocks += job.g1_after[..loaded].iter().map(|g| g + 1).sum::<usize>();
    let mut held = Vec::with_capacity(loaded);
    let finished = shared.g1.lock().finish_onboard(&job.blocks, &job.hashes, &job.parents, loaded, &mut held);
    if finished.is_err() {
        shared.worker_error();
        outcome.failed = n;
        outcome.prefix_blocks = job.outcome.prefix_blocks;
    }
    {
        let mut s = shared.stats();
        s.m.g2_to_g1.add(outcome.from_g2 as u64, shared.page_bytes);
        s.m.g3_to_g1.add(outcome.from_g3 as u64, shared.page_bytes);
        s.m.g4_to_g1.add(outcome.from_g4 as u64, shared.page_bytes);
        s.m.onboard_failed += outcome.failed as u64;
        if let Some(l) = g3_latency.filter(|_| !from_g3.is_empty()) {
            s.onboard_g3.record(l);
        }
    }
    if ticket::complete(shared, &job, held, outcome).is_err() {
        shared.worker_error();
    }
}

/// G3 -> G2 for the hashes not already in G1 or G2.
pub(crate) fn prefetch(shared: &Shared, hashes: &[BlockHash]) {
    super::prefetch::run(shared, hashes); // batched reads: see offload/prefetch.rs
}

fn expire_retention(shared: &Shared) -> Result<()> {
    let now = Instant::now();
    let expired: Vec<_> = {
        let mut list = shared.retained_lock();
        let (gone, keep): (Vec<_>, Vec<_>) = list.drain(..).partition(|r| r.expires.is_some_and(|e| e <= now));
        *list = keep;
        gone
    };
    for r in expired {
        shared.drop_retention(r)?;
    }
    Ok(())
}
