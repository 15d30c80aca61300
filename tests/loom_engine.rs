//! loom models of the offload engine's concurrent structures: the onboarding ticket handoff
//! ([`TicketCell`]), the worker queue with its pause ([`WorkQueue`]), and pinning against
//! eviction in G1 (pages staged for a copy, blocks held by a ticket) and G2 (retention pins).
//! The engine builds these on `crate::sync`, so the models check the code that ships. Run with
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom cargo test --release --test loom_engine`.
#![cfg(loom)]

use std::time::Duration;

use kvtier::offload::{Next, OffloadConfig, OnboardOutcome, TicketCell, TieredCache, WorkQueue};
use kvtier::tier::host::{HostConfig, HostTier};
use kvtier::{BlockHash, BlockId, CacheConfig, Dtype, ExtraKeys, KvLayout};
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

/// Runs a model and prints how many interleavings loom explored.
fn model(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = runs.clone();
    let started = std::time::Instant::now();
    loom::model(move || {
        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "[loom_engine] {name}: {} interleavings in {:.2?}",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
}

fn pattern(h: BlockHash, len: usize) -> Vec<u8> {
    (0..len).map(|i| (h.0 as u8).wrapping_mul(31).wrapping_add(i as u8)).collect()
}

/// The worker completes a ticket while the runtime drops it: every block (the leading hits
/// the ticket held from the start and the ones the worker filled) is handed back exactly once,
/// by whichever side came second.
#[test]
fn ticket_complete_races_drop() {
    model("ticket_complete_races_drop", || {
        let cell = Arc::new(TicketCell::new());
        cell.hold(vec![BlockId(0)], None);
        let worker = {
            let cell = cell.clone();
            thread::spawn(move || cell.complete(OnboardOutcome::default(), vec![BlockId(1), BlockId(2)]))
        };
        let runtime = {
            let cell = cell.clone();
            thread::spawn(move || {
                let _ = cell.poll();
                cell.abandon()
            })
        };
        let orphaned = worker.join().unwrap().unwrap_or_default();
        let mut released = runtime.join().unwrap();
        released.extend(orphaned);
        released.sort_by_key(|b| b.0);
        assert_eq!(released, vec![BlockId(0), BlockId(1), BlockId(2)], "each block released exactly once");
    });
}

/// A runtime waiting on a ticket is always woken by the completion (no lost wakeup), sees the
/// outcome, and then owns every block.
#[test]
fn ticket_wait_is_woken() {
    model("ticket_wait_is_woken", || {
        let cell = Arc::new(TicketCell::new());
        let waiter = {
            let cell = cell.clone();
            thread::spawn(move || {
                let outcome = cell.wait();
                (outcome, cell.abandon())
            })
        };
        let done = OnboardOutcome { from_g2: 1, prefix_blocks: 1, ..OnboardOutcome::default() };
        assert_eq!(cell.complete(done, vec![BlockId(5)]), None, "the ticket was not dropped yet");
        let (outcome, held) = waiter.join().unwrap();
        assert_eq!(outcome, done);
        assert_eq!(held, vec![BlockId(5)]);
    });
}

/// A worker loop as the engine runs it: jobs until the queue closes (the caller counted it in
/// with `add_worker`).
fn worker_loop(queue: &WorkQueue<u32>, ran: &AtomicUsize, running: &AtomicUsize) {
    loop {
        match queue.next(Duration::from_millis(1)) {
            Next::Job(_) => {
                running.fetch_add(1, Ordering::SeqCst);
                ran.fetch_add(1, Ordering::SeqCst);
                running.fetch_sub(1, Ordering::SeqCst);
                queue.finish(1);
            }
            Next::Tick => {}
            Next::Stop => return queue.remove_worker(),
        }
    }
}

/// Jobs pushed by the runtime are each run exactly once by one of two workers, `wait_idle`
/// returns only once all of them finished, and closing stops both workers.
#[test]
fn queue_handoff_runs_every_job_once() {
    model("queue_handoff_runs_every_job_once", || {
        let queue = Arc::new(WorkQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (queue, ran, running) = (queue.clone(), ran.clone(), running.clone());
                queue.add_worker();
                thread::spawn(move || worker_loop(&queue, &ran, &running))
            })
            .collect();
        queue.push(1).unwrap();
        queue.push(2).unwrap();
        queue.wait_idle();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        assert_eq!(queue.pending(), 0);
        queue.close();
        assert_eq!(queue.push(3), Err(3));
        for w in workers {
            w.join().unwrap();
        }
        assert_eq!(ran.load(Ordering::SeqCst), 2);
    });
}

/// `pause` returns only once the worker is parked: nothing runs while paused, even a job
/// pushed meanwhile; after `resume` the job runs.
#[test]
fn pause_parks_the_worker() {
    model("pause_parks_the_worker", || {
        let queue = Arc::new(WorkQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        let worker = {
            let (queue, ran, running) = (queue.clone(), ran.clone(), running.clone());
            queue.add_worker();
            thread::spawn(move || worker_loop(&queue, &ran, &running))
        };
        queue.push(1).unwrap();
        queue.pause();
        let before = ran.load(Ordering::SeqCst);
        assert_eq!(running.load(Ordering::SeqCst), 0, "a job runs while paused");
        queue.push(2).unwrap();
        thread::yield_now();
        assert_eq!(ran.load(Ordering::SeqCst), before, "a job ran while paused");
        assert_eq!(running.load(Ordering::SeqCst), 0);
        queue.resume();
        queue.wait_idle();
        assert_eq!(ran.load(Ordering::SeqCst), 2);
        queue.close();
        worker.join().unwrap();
    });
}

/// A worker that exits (a panic in a pass, say) while a pause waits for it does not hold the
/// pause up; the one that parks does.
#[test]
fn pause_does_not_wait_for_a_dead_worker() {
    model("pause_does_not_wait_for_a_dead_worker", || {
        let queue: Arc<WorkQueue<u32>> = Arc::new(WorkQueue::new());
        let ran = Arc::new(AtomicUsize::new(0));
        let running = Arc::new(AtomicUsize::new(0));
        queue.add_worker();
        queue.add_worker();
        let dying = {
            let queue = queue.clone();
            thread::spawn(move || queue.remove_worker())
        };
        let alive = {
            let (queue, ran, running) = (queue.clone(), ran.clone(), running.clone());
            thread::spawn(move || worker_loop(&queue, &ran, &running))
        };
        queue.pause();
        queue.resume();
        queue.close();
        dying.join().unwrap();
        alive.join().unwrap();
    });
}

/// A G2 page pinned by a retention is never evicted by stores that need its slot, and its
/// bytes stay intact while a reader copies them out.
#[test]
fn g2_pin_versus_eviction() {
    model("g2_pin_versus_eviction", || {
        let g2 =
            Arc::new(HostTier::new(64, HostConfig::default().with_capacity_pages(2).with_huge_pages(false)).unwrap());
        let fill = |h: BlockHash| {
            move |p: &mut [u8]| {
                p.copy_from_slice(&pattern(h, 64));
                Ok(())
            }
        };
        assert!(g2.store(BlockHash(1), fill(BlockHash(1))).unwrap());
        let retainer = {
            let g2 = g2.clone();
            thread::spawn(move || {
                let pinned = g2.pin(BlockHash(1));
                if pinned {
                    let ok = g2.load(BlockHash(1), |p| p == pattern(BlockHash(1), 64).as_slice());
                    assert_eq!(ok, Some(true), "a pinned page was evicted or overwritten");
                    assert!(g2.unpin(BlockHash(1)));
                }
                pinned
            })
        };
        let writer = {
            let g2 = g2.clone();
            thread::spawn(move || {
                for h in [2u128, 3] {
                    let _ = g2.store(BlockHash(h), fill(BlockHash(h))).unwrap();
                }
            })
        };
        let _ = retainer.join().unwrap();
        writer.join().unwrap();
        for h in [1u128, 2, 3] {
            if let Some(ok) = g2.load(BlockHash(h), |p| p == pattern(BlockHash(h), 64).as_slice()) {
                assert!(ok, "G2 holds wrong bytes for {h}");
            }
        }
        g2.check_invariants(true).unwrap();
    });
}

fn tiny_engine(g1_blocks: usize, g2_pages: usize, g1_low_watermark: f64) -> Arc<TieredCache> {
    let layout = KvLayout::new(1, 1, 2, Dtype::F16, 2).unwrap(); // 16-byte pages of 2 tokens
    let cache = CacheConfig::new(layout, g1_blocks).with_watermark(0.0).with_event_capacity(16);
    let config = OffloadConfig::default()
        .with_host(HostConfig::default().with_capacity_pages(g2_pages).with_huge_pages(false))
        .with_g1_low_watermark(g1_low_watermark)
        .with_workers(0);
    Arc::new(TieredCache::new(cache, config).unwrap())
}

/// Writes, commits and frees a request whose pages hold their hash's pattern.
fn serve(t: &TieredCache, tokens: &[u32]) -> bool {
    let mut core = t.g1().lock();
    let mut hashes = Vec::new();
    core.hash_tokens(tokens, &ExtraKeys::default(), &mut hashes);
    let Ok(added) = core.add_sequence(tokens, &ExtraKeys::default()) else { return false };
    let table = core.block_table(added.seq).unwrap().to_vec();
    let page = core.layout().page_bytes();
    for (i, b) in table.iter().enumerate().skip(added.cached_tokens / 2) {
        let data = hashes.get(i).map_or_else(|| vec![0xEE; page], |h| pattern(*h, page));
        core.write_page(*b, &data).unwrap();
    }
    core.commit(added.seq).unwrap();
    core.free(added.seq).unwrap();
    true
}

/// A maintenance pass copies G1's victims to G2 outside every lock while the runtime admits a
/// new request that needs blocks: a block being copied (staged, pinned) is never handed out or
/// overwritten, so G2 only ever receives the right bytes, and no block leaks.
#[test]
fn g1_staged_copy_versus_eviction() {
    model("g1_staged_copy_versus_eviction", || {
        let t = tiny_engine(3, 4, 0.5);
        assert!(serve(&t, &[1, 2, 3, 4, 9])); // two full blocks, now evictable
        let maintainer = {
            let t = t.clone();
            thread::spawn(move || {
                t.run_maintenance().unwrap();
            })
        };
        let runtime = {
            let t = t.clone();
            thread::spawn(move || serve(&t, &[7, 8, 9]))
        };
        maintainer.join().unwrap();
        let _ = runtime.join().unwrap();
        let mut hashes = Vec::new();
        t.g1().lock().hash_tokens(&[1, 2, 3, 4, 7, 8], &ExtraKeys::default(), &mut hashes);
        for h in hashes {
            if let Some(ok) = t.g2().load(h, |p| p == pattern(h, p.len()).as_slice()) {
                assert!(ok, "G2 received wrong bytes");
            }
        }
        t.check_invariants().unwrap();
    });
}

/// Onboarding from G2 (inline, as with no workers) races a request that needs G1 blocks: the
/// ticket's blocks are never evicted under it, a prefix hit serves the right bytes, and once
/// the ticket is dropped nothing stays referenced.
#[test]
fn onboard_versus_eviction() {
    model("onboard_versus_eviction", || {
        let t = tiny_engine(3, 4, 0.9); // both blocks of the prompt go down to G2
        let prompt = [1u32, 2, 3, 4, 9];
        assert!(serve(&t, &prompt));
        let mut hashes = Vec::new();
        t.g1().lock().hash_tokens(&prompt, &ExtraKeys::default(), &mut hashes);
        // Copy both blocks down, then push them out of G1 with an unrelated request.
        t.quiesce().unwrap();
        assert!(serve(&t, &[5, 6, 7, 8, 9]));
        assert_eq!(t.longest_prefix(&hashes).g2, 2);
        let onboarder = {
            let (t, hashes) = (t.clone(), hashes.clone());
            thread::spawn(move || {
                let Ok(ticket) = t.onboard(&hashes) else { return };
                let outcome = ticket.wait();
                assert_eq!(outcome.from_g2 + outcome.failed, 2 - outcome.g1_hits);
                let mut core = t.g1().lock();
                if let Ok(added) = core.add_sequence(&prompt, &ExtraKeys::default()) {
                    let table = core.block_table(added.seq).unwrap().to_vec();
                    let page = core.layout().page_bytes();
                    assert!(added.cached_tokens / 2 >= outcome.cached_blocks().min(2));
                    for (b, h) in table.iter().zip(&hashes).take(added.cached_tokens / 2) {
                        assert!(core.page(*b).unwrap() == pattern(*h, page).as_slice(), "wrong bytes onboarded");
                    }
                    core.free(added.seq).unwrap();
                }
                drop(core);
                drop(ticket);
            })
        };
        let runtime = {
            let t = t.clone();
            thread::spawn(move || serve(&t, &[11, 12, 13]))
        };
        onboarder.join().unwrap();
        let _ = runtime.join().unwrap();
        t.check_invariants().unwrap();
        assert_eq!(t.metrics().g1.in_use, 0, "a block stayed referenced");
    });
}

/// All three at once: a maintenance pass copying G1 victims down, an onboarding of a prefix
/// that lives in G2, and a request that needs blocks. Whatever the interleaving: right bytes in
/// G1 and G2, no leak once everything is released.
#[test]
fn copy_onboard_and_admit_together() {
    model("copy_onboard_and_admit_together", || {
        let t = tiny_engine(4, 4, 0.9);
        let prompt = [1u32, 2, 3, 4, 9];
        assert!(serve(&t, &prompt));
        let mut hashes = Vec::new();
        t.g1().lock().hash_tokens(&prompt, &ExtraKeys::default(), &mut hashes);
        t.quiesce().unwrap();
        assert!(serve(&t, &[5, 6, 7, 8, 9, 10, 11])); // pushes the prompt out of G1, into G2 only
        let onboarder = {
            let (t, hashes) = (t.clone(), hashes.clone());
            thread::spawn(move || {
                let Ok(ticket) = t.onboard(&hashes) else { return };
                ticket.wait();
                let mut core = t.g1().lock();
                if let Ok(added) = core.add_sequence(&prompt, &ExtraKeys::default()) {
                    let table = core.block_table(added.seq).unwrap().to_vec();
                    for (b, h) in table.iter().zip(&hashes).take(added.cached_tokens / 2) {
                        let page = core.page(*b).unwrap();
                        assert!(page == pattern(*h, page.len()).as_slice(), "wrong bytes onboarded");
                    }
                    core.free(added.seq).unwrap();
                }
            })
        };
        let maintainer = {
            let t = t.clone();
            thread::spawn(move || {
                t.run_maintenance().unwrap();
            })
        };
        let _ = serve(&t, &[21, 22, 23]);
        onboarder.join().unwrap();
        maintainer.join().unwrap();
        t.check_invariants().unwrap();
        assert_eq!(t.metrics().g1.in_use, 0, "a block stayed referenced");
        for h in hashes {
            if let Some(ok) = t.g2().load(h, |p| p == pattern(h, p.len()).as_slice()) {
                assert!(ok, "G2 holds wrong bytes");
            }
        }
    });
}
