//! The tiered offload engine: G1 pages that must be given up move down to host DRAM (G2) and
//! SSD (G3) instead of being lost, and come back on a prefix hit.
//!
//! ## How it works
//! 1. **Offload (write-back).** Background workers keep G1's *free + ready* blocks above a low
//!    watermark: they take the eviction policy's next victims, pin them (still shareable by
//!    prefix hits, but not evictable), copy their pages into G2 outside every lock, and put
//!    them on G1's ready list, evicted first and at no loss. A pass goes on until the
//!    watermark is met, so a burst between two passes is covered up to the watermark; a
//!    runtime admitting more than that at once calls [`TieredCache::make_room`] first. With
//!    write-through, every block is copied as soon as it is committed, so eviction from G1
//!    never waits.
//! 2. **Mostly-exclusive tiers.** A page G1 evicts is *demoted*: its G2 copy becomes G2's most
//!    recently used, so G2's order is that of G1's evictions, not of the copies (a
//!    write-through copy made at commit would otherwise be the first G2 drops). G2 pages that
//!    a running request holds in G1 are dropped from G2 rather than written to the SSD; G1's
//!    block learns it and is copied down again when it is evicted.
//! 3. **Promotion.** A page onboarded to G1 is G1's alone: its G2 copy goes to the cold end
//!    of G2 (evicted first, at no loss), so G2 holds other pages instead of duplicates, and
//!    G1's block is not backed. When G1 gives it up, the copy-down finds the cold copy still
//!    there (and makes it most recent again) or copies the page anew. A G3 copy stays at the
//!    recent end unless [`OffloadConfig::exclusive_g3`]: keeping it spares the drive a second
//!    write of a page that returns.
//! 4. **Spill.** The same workers keep G2 above its own watermark by writing its LRU pages to
//!    G3 in batches, through the admission filter (every page while G3 has free slots)
//!    and the write budget ([`OffloadConfig::write_budget_dwpd`]). The default filter
//!    ([`Admission::Adaptive`]) classes a page by its use count, which a frequency sketch
//!    remembers over many turnovers of the whole hierarchy, and admits the use counts that a
//!    hash-sampled shadow of every spill predicts will bring the most hits for the SSD
//!    writes they cost: pages predicted dead are declined, not pages seen once. A page it
//!    declines is evicted early from G2 (counted).
//! 5. **Lookup.** [`TieredCache::longest_prefix`] sees every tier. With a shared G4
//!    ([`OffloadConfig::remote`]) it asks the server, in one pipelined round trip outside every
//!    lock, for the run after the last block a local tier holds: the one call that can wait on
//!    the network, bounded by [`crate::tier::remote::RemoteConfig::timeout`] and skipped at
//!    once while G4 is backing off after a failure. Onboarding does the same for the blocks it
//!    brings up, and reads G4's part in one pipelined batch after G2's and G3's.
//! 6. **Onboard.** [`TieredCache::onboard`] allocates and pins G1 blocks for the part of a
//!    prefix found only below, copies asynchronously, and returns a [`Ticket`]. When it
//!    completes, the blocks are registered in G1 and held by the ticket until the runtime
//!    admits the request with [`KvCache::add_sequence`] (which then hits them) and drops it.
//! 7. **Backpressure.** A page is only ever dropped by eviction, and every eviction of a page
//!    no lower tier holds is counted; a page being copied stays where it is until the copy
//!    is done. Nothing is ever served that was not verified (G3 checksums every page).
//!
//! The runtime's thread never blocks on a disk: it only takes short locks on bookkeeping (and,
//! with G4, waits for the lookup round trips above).

mod admission;
mod config;
mod metrics;
mod prefetch;
mod publish;
mod queue;
mod recompute;
mod retention;
mod reuse;
mod ticket;
mod tier_events;
mod views;
mod worker;

pub use admission::{Admission, AdmissionHook};
pub use config::OffloadConfig;
pub use metrics::{EngineMetrics, LatencyHistogram, LatencySummary, Traffic};
#[cfg(feature = "testing")]
pub use queue::{Next, WorkQueue};
#[cfg(not(feature = "testing"))]
pub(crate) use queue::{Next, WorkQueue};
pub use recompute::{OnboardCost, OnboardPlan};
#[cfg(feature = "testing")]
pub use ticket::TicketCell;
pub use ticket::{OnboardOutcome, Ticket};
pub use views::{DiskView, HostView};

use std::thread::JoinHandle;
use std::time::Duration;

use crate::io::IoBackend;
use crate::sync::atomic::AtomicU64;
use crate::sync::{Arc, Mutex, MutexGuard, lock};

use crate::cache::{CacheConfig, KvCache};
use crate::curve::CurveReading;
use crate::error::{Error, Result, Tier};
use crate::metrics::CacheMetrics;
use crate::prefix::BlockHash;
use crate::tier::disk::{DiskMetrics, DiskTier};
use crate::tier::host::{HostMetrics, HostTier};
use crate::tier::remote::{RemoteMetrics, RemoteTier};

use admission::FrequencySketch;
pub(crate) use admission::WriteBudget;
use publish::Recent;
use retention::Retention;
use reuse::ReuseShadow;
pub(crate) use reuse::class_of;

/// Where a prefix was found: how many leading blocks some tier holds, and of those how many
/// are in each tier (a block counts in the fastest tier that has it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PrefixHit {
    /// Blocks found, counted from the start, in any tier.
    pub total: usize,
    /// Of those, in G1 (not necessarily all leading: a head evicted before its tail is found
    /// below, the tail still in G1).
    pub g1: usize,
    /// Of those, only in G2.
    pub g2: usize,
    /// Of those, only in G3.
    pub g3: usize,
    /// Of those, only in G4 (the run after the last block a local tier holds; G4 is lossy,
    /// so onboarding may find fewer).
    pub g4: usize,
}

/// Every tier's counters plus the engine's.
#[derive(Debug, Clone)]
pub struct TierMetrics {
    /// G1 pool and prefix cache.
    pub g1: CacheMetrics,
    /// Host tier.
    pub g2: HostMetrics,
    /// SSD tier, if configured.
    pub g3: Option<DiskMetrics>,
    /// Shared remote tier, if configured.
    pub g4: Option<RemoteMetrics>,
    /// Movement between tiers.
    pub engine: EngineMetrics,
    /// G1's live hit-rate-vs-capacity estimate ([`crate::CacheConfig::curve_keys`], None when
    /// off), read at G1's capacity, G1 + G2's, G1 + G2 + G3's (with a G3), then 1/8, 1/4,
    /// 1/2, 2, 4 and 8 times the summed capacity (blocks): an LRU cache of each size would
    /// have hit that share of the blocks looked up since it was last reset.
    pub live_curve: Option<CurveReading>,
}

/// Handle of a retained prefix ([`TieredCache::retain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetentionId(u64);

pub(crate) enum Job {
    Onboard(ticket::OnboardJob),
    Prefetch(prefetch::PrefetchJob),
}

/// State shared by the handle, the tickets and the workers.
pub(crate) struct Shared {
    pub(crate) g1: KvCache,
    pub(crate) g2: HostTier,
    pub(crate) g3: Option<DiskTier>,
    pub(crate) g4: Option<RemoteTier>,
    /// Pages this engine stored in G4 or loaded from it lately: not sent again.
    pub(crate) published: Mutex<Recent>,
    pub(crate) config: OffloadConfig,
    pub(crate) g1_target: usize,
    pub(crate) g2_target: usize,
    pub(crate) page_bytes: usize,
    /// Pages per maintenance batch ([`OffloadConfig::pages_per_batch`]).
    pub(crate) batch: usize,
    pub(crate) sketch: Mutex<FrequencySketch>,
    /// Which use counts of spilled pages are worth an SSD write (the adaptive filter).
    pub(crate) reuse: Mutex<ReuseShadow>,
    pub(crate) budget: Mutex<WriteBudget>,
    pub(crate) stats: Mutex<Stats>,
    pub(crate) retained: Mutex<Vec<Retention>>,
    pub(crate) next_retention: AtomicU64,
    /// Jobs for the background workers.
    pub(crate) queue: WorkQueue<Job>,
    /// Prefetch jobs queued or running ([`OffloadConfig::max_queued_prefetches`] at most).
    pub(crate) queued_prefetches: Arc<AtomicU64>,
}

#[derive(Clone)]
pub(crate) struct Stats {
    pub(crate) m: EngineMetrics,
    pub(crate) offload: LatencyHistogram,
    pub(crate) spill: LatencyHistogram,
    pub(crate) onboard_g2: LatencyHistogram,
    pub(crate) onboard_g3: LatencyHistogram,
}

/// G1 + G2 (+ G3) with background offload and onboarding. `Send + Sync`.
pub struct TieredCache {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for TieredCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TieredCache")
            .field("g1", &self.shared.g1)
            .field("g2", &self.shared.g2)
            .field("g3", &self.shared.g3)
            .field("workers", &self.workers.len())
            .finish_non_exhaustive()
    }
}

/// Keeps the background workers parked ([`TieredCache::pause_workers`]); they go on when it
/// is dropped.
#[must_use = "the workers resume as soon as the guard is dropped"]
pub struct PauseGuard<'a> {
    cache: &'a TieredCache,
}

impl Drop for PauseGuard<'_> {
    fn drop(&mut self) {
        self.cache.shared.queue.resume();
    }
}

impl std::fmt::Debug for PauseGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PauseGuard").field("workers", &self.cache.workers.len()).finish()
    }
}

impl TieredCache {
    /// Builds every tier and starts the workers. G1 must have page memory.
    pub fn new(cache: CacheConfig, config: OffloadConfig) -> Result<Self> {
        Self::build(cache, config, None)
    }

    /// Like [`TieredCache::new`], with the SSD tier's IO going through `backend` (for example
    /// the `testing` feature's `FaultyBackend` injecting faults) instead of the backend
    /// `config.disk.io` asks for. Fails with [`Error::InvalidConfig`] without an SSD tier.
    ///
    /// ```
    /// use kvtier::io::{Fault, FaultRates, FaultyBackend, IoConfig, open_backend};
    /// use kvtier::offload::{OffloadConfig, TieredCache};
    /// use kvtier::tier::DiskConfig;
    /// use kvtier::{CacheConfig, Dtype, KvLayout};
    /// let dir = std::env::temp_dir().join(format!("kvtier-doc-faulty-{}", std::process::id()));
    /// let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4)?;
    /// let faulty = FaultyBackend::new(open_backend(&IoConfig::default())?, Fault::Random(FaultRates::uniform(1, 1000)));
    /// let tally = faulty.tally();
    /// let disk = DiskConfig::new(&dir).with_capacity_slots(16).with_model_id("doc-model");
    /// let config = OffloadConfig::default().with_disk(disk);
    /// let t = TieredCache::with_disk_backend(CacheConfig::new(layout, 16), config, Box::new(faulty))?;
    /// assert_eq!(t.g3().unwrap().backend_name(), "faulty");
    /// # drop(t); std::fs::remove_dir_all(&dir).ok();
    /// # let _ = tally.counts();
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn with_disk_backend(cache: CacheConfig, config: OffloadConfig, backend: Box<dyn IoBackend>) -> Result<Self> {
        if config.disk.is_none() {
            return Err(Error::InvalidConfig { field: "disk", reason: "a G3 backend needs an SSD tier" });
        }
        Self::build(cache, config, Some(backend))
    }

    fn build(cache: CacheConfig, config: OffloadConfig, backend: Option<Box<dyn IoBackend>>) -> Result<Self> {
        cache.validate()?;
        config.validate()?;
        if !cache.arena {
            return Err(Error::NoArena);
        }
        let page_bytes = cache.layout.page_bytes();
        let g3 = match (&config.disk, backend) {
            (Some(d), Some(backend)) => Some(DiskTier::open_with_backend(&cache.layout, d.clone(), backend)?),
            (Some(d), None) => Some(DiskTier::open(&cache.layout, d.clone())?),
            (None, _) => None,
        };
        let g4 = match &config.remote {
            Some(r) => Some(RemoteTier::open(&cache.layout, r.clone())?),
            None => None,
        };
        let g2 = HostTier::new(page_bytes, config.host.clone())?;
        g2.log_evictions(true);
        g2.log_events(config.tier_event_capacity);
        if let Some(d) = &g3 {
            d.log_evictions(true);
            d.log_events(config.tier_event_capacity);
        }
        let g1_pages = cache.num_blocks;
        let g1_target = (cache.num_blocks as f64 * config.g1_low_watermark).ceil() as usize;
        let g2_target = (config.host.capacity_pages as f64 * config.g2_low_watermark).ceil() as usize;
        let g1 = KvCache::new(cache)?;
        if config.write_through_g2 {
            g1.lock().set_commit_log(true);
        }
        // G1's evictions tell G2 which of its copies just became the only one (demotion).
        g1.lock().log_evictions(true);
        let g3_pages = config.disk.as_ref().map_or(0, |d| d.capacity_slots);
        // The filter remembers a page over whole turnovers of the hierarchy, not of one tier.
        let hierarchy = g1_pages.saturating_add(config.host.capacity_pages).saturating_add(g3_pages);
        let sketch_window = match g3_pages {
            0 => 0, // no admission to decide
            _ => hierarchy.saturating_mul(config.admission_window_turnovers),
        };
        let budget = config.write_budget(page_bytes, g3_pages as u64);
        let shared = Arc::new(Shared {
            g1,
            g2,
            g3,
            g4,
            published: Mutex::new(Recent::new(hierarchy.max(1 << 16))),
            g1_target,
            g2_target,
            page_bytes,
            batch: config.pages_per_batch(page_bytes),
            sketch: Mutex::new(FrequencySketch::new(sketch_window)),
            reuse: Mutex::new(ReuseShadow::new(g3_pages, config.admission_hits_per_write)),
            budget: Mutex::new(WriteBudget::new(budget)),
            stats: Mutex::new(Stats {
                m: EngineMetrics::default(),
                offload: LatencyHistogram::new(),
                spill: LatencyHistogram::new(),
                onboard_g2: LatencyHistogram::new(),
                onboard_g3: LatencyHistogram::new(),
            }),
            retained: Mutex::new(Vec::new()),
            next_retention: AtomicU64::new(1),
            queue: WorkQueue::new(),
            queued_prefetches: Arc::new(AtomicU64::new(0)),

            config,
        });
        let mut me = Self { shared, workers: Vec::new() };
        for i in 0..me.shared.config.workers {
            let shared = me.shared.clone();
            me.shared.queue.add_worker();
            let spawned = std::thread::Builder::new().name(format!("kvtier-offload-{i}")).spawn(move || {
                // Counted out however the worker ends, so that a pause never waits for it.
                let _live = worker::Live(&shared.queue);
                worker::run(&shared);
            });
            match spawned {
                Ok(handle) => me.workers.push(handle),
                Err(source) => {
                    me.shared.queue.remove_worker();
                    return Err(Error::Io { tier: Tier::G2, op: "spawn worker", source });
                }
            }
        }
        Ok(me)
    }

    /// The G1 page-table API (sequences, block tables, events).
    pub fn g1(&self) -> &KvCache {
        &self.shared.g1
    }
    /// A read-only view of the host tier (lookups, copies out, counters): its staging, pins
    /// and eviction notices belong to the engine.
    pub fn g2(&self) -> HostView<'_> {
        HostView(&self.shared.g2)
    }
    /// A read-only view of the SSD tier, if configured.
    pub fn g3(&self) -> Option<DiskView<'_>> {
        self.shared.g3.as_ref().map(DiskView)
    }

    /// Stores a page computed outside G1 (restored from elsewhere, or by another runtime) in
    /// G2 under `h`, filled by `fill`; lookups and onboarding find it there, and it moves down
    /// like any other G2 page. Returns false if `h` is already in G2 or every slot is pinned.
    /// If `fill` fails nothing is stored and the error is passed on.
    ///
    /// ```
    /// use kvtier::offload::{OffloadConfig, TieredCache};
    /// use kvtier::{BlockHash, CacheConfig, Dtype, KvLayout};
    /// let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4)?;
    /// let t = TieredCache::new(CacheConfig::new(layout, 16), OffloadConfig::default().with_workers(0))?;
    /// assert!(t.store(BlockHash(7), |page| { page.fill(3); Ok(()) })?);
    /// assert_eq!(t.longest_prefix(&[BlockHash(7)]).g2, 1);
    /// assert_eq!(t.g2().load(BlockHash(7), |page| page[0]), Some(3));
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn store(&self, h: BlockHash, fill: impl FnOnce(&mut [u8]) -> Result<()>) -> Result<bool> {
        let stored = self.shared.g2.store(h, fill)?;
        if stored {
            self.shared.record_use(h);
        }
        Ok(stored)
    }

    /// How many leading `hashes` are cached, and in which tier each was found first.
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> PrefixHit {
        self.shared.longest_prefix(hashes)
    }

    /// Starts bringing the part of `hashes` that lives only in G2/G3 into G1. The leading G1
    /// hits and the onboarded blocks are held by the returned [`Ticket`] until it is dropped;
    /// admit the request (`g1().add_sequence`) once it is ready, then drop it. Fails with
    /// [`Error::OutOfBlocks`] (nothing changed) if G1 cannot take the blocks now, and with
    /// [`Error::NeverFits`] if they are more than G1 less its reserve could ever take.
    pub fn onboard(&self, hashes: &[BlockHash]) -> Result<Ticket> {
        let (ticket, job) = ticket::start(&self.shared, hashes)?;
        if let Some(job) = job {
            if self.workers.is_empty() {
                worker::onboard(&self.shared, job);
            } else if let Err(Job::Onboard(job)) = self.shared.queue.push(Job::Onboard(job)) {
                worker::onboard(&self.shared, job);
            }
        }
        Ok(ticket)
    }

    /// Pulls the G3-only part of a waiting request's prefix into G2 ahead of time, in batches
    /// of one disk submission each. With workers, the job is queued; when
    /// [`OffloadConfig::max_queued_prefetches`] are already queued or running, this one is
    /// dropped (a prefetch is only a hint) and counted in [`EngineMetrics::prefetch_dropped`].
    /// Prefetches still queued when the cache is dropped are cancelled, not run.
    pub fn prefetch(&self, hashes: &[BlockHash]) {
        if self.workers.is_empty() {
            worker::prefetch(&self.shared, hashes);
            return;
        }
        let max = self.shared.config.max_queued_prefetches;
        match prefetch::PrefetchJob::try_new(hashes, &self.shared.queued_prefetches, max) {
            // A closed queue means the engine is shutting down: the job is dropped with it.
            Some(job) => drop(self.shared.queue.push(Job::Prefetch(job))),
            None => self.shared.stats().m.prefetch_dropped += 1,
        }
    }

    /// Keeps a prefix (a system prompt, say) in every tier that holds it: its G1 blocks are
    /// referenced and its G2/G3 pages pinned, until [`TieredCache::release`] or `ttl`.
    pub fn retain(&self, hashes: &[BlockHash], ttl: Option<Duration>) -> Result<RetentionId> {
        self.shared.retain(hashes, ttl)
    }

    /// Ends a retention; returns false if it already ended.
    pub fn release(&self, id: RetentionId) -> Result<bool> {
        self.shared.release(id.0)
    }

    /// Runs one maintenance pass on the caller's thread (offload, spill, expiry); workers
    /// do this on their own every tick. Returns whether there was work.
    pub fn run_maintenance(&self) -> Result<bool> {
        worker::maintain(&self.shared)
    }

    /// Makes room for an allocation of `blocks` G1 blocks at no loss, on the caller's thread:
    /// copies G1's next eviction victims down (G2 spilling to G3 as needed) until `blocks`
    /// blocks beyond the low watermark's margin are free or ready (backed below, evicted
    /// first), or no more progress can be made. Returns the free + ready blocks afterwards.
    ///
    /// The background workers keep G1 above its low watermark; a runtime that admits a
    /// request larger than that margin calls this first, or the allocation evicts blocks no
    /// lower tier holds (counted as unbacked evictions). The margin stays for what follows
    /// before the next maintenance pass (the decode steps): without it, the first decode
    /// block after a large admission evicts a prefix's last cached block unbacked, and every
    /// page below it becomes unreachable. The blocks stay in G1 and are still hits until
    /// something is allocated in their place.
    ///
    /// ```
    /// use kvtier::offload::{OffloadConfig, TieredCache};
    /// use kvtier::{CacheConfig, Dtype, ExtraKeys, KvLayout};
    /// let layout = KvLayout::new(1, 1, 8, Dtype::F16, 4)?;
    /// let t = TieredCache::new(CacheConfig::new(layout, 16), OffloadConfig::default().with_workers(0))?;
    /// let tokens: Vec<u32> = (0..64).collect();
    /// let s = t.g1().add_sequence(&tokens, &ExtraKeys::default())?.seq;
    /// t.g1().commit(s)?;
    /// t.g1().free(s)?; // 16 blocks, all evictable, none backed
    /// assert_eq!(t.make_room(16)?, 16);
    /// assert_eq!(t.g2().metrics().stores, 16);
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn make_room(&self, blocks: usize) -> Result<usize> {
        worker::maintain_until(&self.shared, blocks)?;
        Ok(self.shared.g1.lock().free_or_ready())
    }

    /// Brings the engine to rest: returns once every job queued before the call is done, no
    /// worker is in the middle of a maintenance pass (so no G1 block or G2 slot is pinned by a
    /// copy), and a pass on the caller's thread found nothing to do. Afterwards only the
    /// runtime's own references (sequences, tickets, retentions) hold G1 blocks.
    ///
    /// The workers are paused meanwhile ([`TieredCache::pause_workers`]): a pass a worker has
    /// begun runs to its end first, then queued jobs and passes run on the caller's thread.
    /// Waiting for queued jobs alone is not enough: a worker's pass pins the blocks it copies
    /// down without any job being pending. The workers go on when this returns.
    ///
    /// ```
    /// use kvtier::offload::{OffloadConfig, TieredCache};
    /// use kvtier::{CacheConfig, Dtype, ExtraKeys, KvLayout};
    /// let layout = KvLayout::new(1, 1, 8, Dtype::F16, 4)?;
    /// let config = OffloadConfig::default().with_write_through_g2(true).with_workers(1);
    /// let t = TieredCache::new(CacheConfig::new(layout, 16), config)?;
    /// let s = t.g1().add_sequence(&[1, 2, 3, 4, 5], &ExtraKeys::default())?.seq;
    /// t.g1().commit(s)?; // its full block is pinned until it is copied to G2
    /// t.g1().free(s)?;
    /// t.quiesce()?;
    /// assert_eq!(t.g1().metrics().in_use, 0);
    /// assert_eq!(t.g2().metrics().stores, 1);
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn quiesce(&self) -> Result<()> {
        let _paused = self.pause_workers();
        // Every worker is parked between two units of work: pending jobs are all still queued.
        while let Some(job) = self.shared.queue.try_next() {
            worker::run_jobs(&self.shared, job);
        }
        while worker::maintain(&self.shared)? {}
        Ok(())
    }

    /// Parks every background worker and returns once all of them are parked between two
    /// units of work (a job batch or a maintenance pass), so that nothing moves between tiers
    /// behind the caller's back until the guard is dropped: tier invariants can then be checked
    /// in full ([`TieredCache::check_invariants`] checks that no G2 slot is held by a copy).
    ///
    /// While paused, onboarding jobs stay queued: do not wait on a [`Ticket`] issued meanwhile
    /// (or call [`TieredCache::quiesce`], which runs them on the caller's thread). The
    /// runtime's own calls, including [`TieredCache::run_maintenance`], go on as usual. Pauses
    /// nest. With no workers this returns at once.
    ///
    /// ```
    /// use kvtier::offload::{OffloadConfig, TieredCache};
    /// use kvtier::{CacheConfig, Dtype, KvLayout};
    /// let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4)?;
    /// let t = TieredCache::new(CacheConfig::new(layout, 16), OffloadConfig::default().with_workers(2))?;
    /// {
    ///     let _paused = t.pause_workers();
    ///     assert!(t.check_invariants().is_ok()); // workers are parked: the full check runs
    /// } // workers resume here
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn pause_workers(&self) -> PauseGuard<'_> {
        self.shared.queue.pause();
        PauseGuard { cache: self }
    }

    /// Every tier's counters.
    pub fn metrics(&self) -> TierMetrics {
        let stats = self.shared.stats_snapshot();
        let mut engine = stats.m;
        engine.queue_depth = self.shared.queue.pending();
        engine.offload_latency = stats.offload.summary();
        engine.spill_latency = stats.spill.summary();
        engine.onboard_g2_latency = stats.onboard_g2.summary();
        engine.onboard_g3_latency = stats.onboard_g3.summary();
        let choice = lock(&self.shared.reuse).choice();
        engine.admission_min_uses = choice.min_uses;
        engine.admission_reuse_per_mille = choice.reuse.map(|r| r.map(|f| (f * 1000.0).round() as u16));
        engine.tier_events_dropped =
            self.shared.g2.events_dropped() + self.shared.g3.as_ref().map_or(0, DiskTier::events_dropped);
        let g1 = self.shared.g1.metrics();
        let g2 = self.shared.g2.metrics();
        let g3 = self.shared.g3.as_ref().map(|d| d.metrics());
        let mut tiers = vec![g1.capacity as u64, (g1.capacity + g2.capacity) as u64];
        if let Some(d) = &self.shared.g3 {
            tiers.push((g1.capacity + g2.capacity + d.capacity()) as u64);
        }
        let summed = tiers.last().copied().unwrap_or(0);
        tiers.extend([8, 4, 2].map(|d| summed / d).into_iter().chain([2, 4, 8].map(|m| summed * m)));
        let live_curve = self.shared.g1.lock().capacity_curve().map(|c| c.read(&tiers));
        TierMetrics { g1, g2, g3, g4: self.shared.g4.as_ref().map(|r| r.metrics()), engine, live_curve }
    }

    /// Checks the invariants of every tier: each tier's free + used + evictable equals its
    /// capacity, every G1 refcount is explained by a sequence, a ticket, a retention or a copy
    /// in flight, and G3's slot states agree with its index. With the workers paused
    /// ([`TieredCache::pause_workers`]) or absent, also that no G2 or G3 slot is held by
    /// anything but a retention: any other reference would be a leak. The caller must not run
    /// engine calls on other threads meanwhile for that part to hold.
    ///
    /// A debugging aid, for tests and for a runtime chasing a leak: it walks every block and
    /// slot under the tiers' locks (O(capacity)), so it does not belong on a scheduler's hot
    /// path. `Err` describes the first broken invariant, for a human to read; it is a bug in
    /// kvtier (or memory corruption), never a state a caller is expected to handle.
    ///
    /// ```
    /// use kvtier::offload::{OffloadConfig, TieredCache};
    /// use kvtier::{CacheConfig, Dtype, ExtraKeys, KvLayout};
    /// let layout = KvLayout::new(1, 1, 8, Dtype::F16, 4)?;
    /// let t = TieredCache::new(CacheConfig::new(layout, 16), OffloadConfig::default().with_workers(0))?;
    /// let s = t.g1().add_sequence(&[1, 2, 3, 4, 5], &ExtraKeys::default())?.seq;
    /// assert_eq!(t.check_invariants(), Ok(()));
    /// t.g1().free(s)?;
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let idle = self.workers.is_empty() || self.shared.queue.is_paused();
        self.shared.g1.lock().check_invariants()?;
        self.shared.g2.check_invariants(idle).map_err(|e| format!("G2: {e}"))?;
        if let Some(d) = &self.shared.g3 {
            d.check_invariants(idle).map_err(|e| format!("G3: {e}"))?;
        }
        Ok(())
    }
}

impl Drop for TieredCache {
    fn drop(&mut self) {
        self.shared.queue.close();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        // Jobs still queued: onboarding ones hold G1 blocks for their tickets, so they run and
        // those complete; prefetches are hints nobody waits for any more, so they are cancelled
        // (dropped unrun). All are taken first, so running one never picks up a prefetch.
        let mut onboards = Vec::new();
        while let Some(job) = self.shared.queue.try_next() {
            if let Job::Onboard(_) = job {
                onboards.push(job);
            }
        }
        for job in onboards {
            worker::run_jobs(&self.shared, job);
        }
    }
}

impl Shared {
    pub(crate) fn stats(&self) -> MutexGuard<'_, Stats> {
        lock(&self.stats)
    }

    /// Counts an error of background work ([`EngineMetrics::worker_errors`]).
    pub(crate) fn worker_error(&self) {
        self.stats().m.worker_errors += 1;
    }

    fn stats_snapshot(&self) -> Stats {
        self.stats().clone()
    }

    /// Whether G3 should take the page of `h`.
    /// Whether G3 takes a page used `uses` times (the sketch's estimate, [`Shared::uses`]).
    pub(crate) fn admits(&self, h: BlockHash, uses: u8) -> bool {
        if let Some(hook) = &self.config.admission_hook {
            return hook.admits(h, uses);
        }
        match self.config.admission {
            Admission::All => true,
            Admission::SeenTwice => uses >= 2,
            Admission::Adaptive => lock(&self.reuse).admits(class_of(uses)).unwrap_or(uses >= 2),
        }
    }

    /// How often `h` was used, as far as the admission sketch remembers.
    pub(crate) fn uses(&self, h: BlockHash) -> u8 {
        lock(&self.sketch).estimate(h)
    }

    pub(crate) fn record_use(&self, h: BlockHash) {
        lock(&self.sketch).record(h);
    }

    fn longest_prefix(&self, hashes: &[BlockHash]) -> PrefixHit {
        let mut hit = PrefixHit::default();
        {
            // the same walk as onboarding: each block counts in the first tier that has it
            let core = self.g1.lock();
            for &h in hashes {
                if core.contains(h) {
                    hit.g1 += 1;
                } else if self.g2.contains(h) {
                    hit.g2 += 1;
                } else if self.g3.as_ref().is_some_and(|d| d.contains(h)) {
                    hit.g3 += 1;
                } else {
                    break;
                }
                hit.total += 1;
            }
        }
        if let Some(g4) = &self.g4
            && hit.total < hashes.len()
        {
            // one round trip, outside every lock
            hit.g4 = g4.contains_prefix(&hashes[hit.total..]);
            hit.total += hit.g4;
        }
        for h in &hashes[..hit.total] {
            self.record_use(*h);
        }
        if self.g3.is_some() {
            lock(&self.reuse).requested(hashes);
        }
        let mut s = self.stats();
        s.m.lookups += 1;
        s.m.hit_blocks[0] += hit.g1 as u64;
        s.m.hit_blocks[1] += hit.g2 as u64;
        s.m.hit_blocks[2] += hit.g3 as u64;
        s.m.g4_hit_blocks += hit.g4 as u64;
        s.m.miss_blocks += (hashes.len() - hit.total) as u64;
        hit
    }
}
