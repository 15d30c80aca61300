//! A storage tier for memory the runtime owns: "store these slots under these keys" and "load
//! these keys into these slots", asynchronously, on kvtier's IO workers.
//!
//! Why: [`crate::offload::TieredCache`] moves pages between kvtier's own G1/G2/G3 pools. A
//! runtime that keeps its own KV buffers (vLLM's CPU offloading tier, a GPU runtime with
//! pinned host staging) needs the SSD tier alone, driven from its scheduler thread by calls
//! that never wait on IO. [`SlotStore`] is that: a [`DiskTier`] (slab files, O_DIRECT through
//! io_uring or pread/pwrite, a checksum on every page, fingerprinted warm restart, bounded
//! capacity with eviction) plus worker threads, over the runtime's [`SlotMemory`].
//!
//! Lifecycle of a load (vLLM's lookup -> prepare_load -> complete_load):
//! 1. [`SlotStore::lookup`] says whether a key is stored (`Hit`), being stored (`Retry`) or not
//!    (`Miss`); it pins nothing.
//! 2. [`SlotStore::prepare_load`] pins the keys it finds in a [`LoadLease`]: they are never
//!    evicted while the lease lives; dropping it unpins them.
//! 3. [`SlotStore::submit_load`] hands the lease and the destination slots to the workers and
//!    returns at once. A worker reads every page, verifies its checksum, and reports the job
//!    through [`SlotStore::take_finished`] with the keys that loaded; a page that fails
//!    verification is a failed key, its slot is zeroed (never left with unverified bytes), and
//!    the page is dropped from the tier. The pins go when the job ends (complete_load).
//!
//! Lifecycle of a store (prepare_store -> complete_store):
//! 1. [`SlotStore::submit_store`] skips keys stored or being stored, marks the rest in flight
//!    (lookups answer `Retry`) and queues the job; it returns at once.
//! 2. A worker reads the source slots, evicts the least recently used unpinned pages for room,
//!    writes the batch in one submission and checksums it while the IO runs.
//! 3. The job is reported through [`SlotStore::take_finished`]; the keys written are stored
//!    from then on ([`EventKind::Stored`]), the pages evicted for them are
//!    [`EventKind::Removed`] ([`SlotStore::take_events`]).
//!
//! Keys: a runtime's key bytes become a [`BlockHash`] through [`SlotStore::key_hash`]: XXH3-128
//! of the key seeded by the store's tenant salt, so two tenants (salts) never see each other's
//! pages. After a restart with the same fingerprint, [`SlotStore::stored_keys`] lists what the
//! tier holds; with another fingerprint the directory is refused ([`Error::Fingerprint`]) or
//! wiped, never served.
//!
//! ```
//! use std::sync::Arc;
//! use kvtier::external::{HeapSlots, Lookup, SlotStore, SlotStoreConfig};
//! use kvtier::tier::DiskConfig;
//! let dir = std::env::temp_dir().join(format!("kvtier-doc-slots-{}", std::process::id()));
//! let memory = Arc::new(HeapSlots::new(4096, 4)?);
//! memory.set_slot(0, &[5u8; 4096])?;
//! let disk = DiskConfig::new(&dir).with_capacity_slots(16).with_model_id("doc-model");
//! let store = SlotStore::open(SlotStoreConfig::new(disk), memory.clone())?;
//! let key = store.key_hash(b"block 0");
//! store.submit_store(1, &[key], &[0])?; // slot 0 -> SSD, in the background
//! store.drain();
//! assert_eq!(store.take_finished().len(), 1);
//! assert_eq!(store.lookup(key), Lookup::Hit);
//! let lease = store.prepare_load(&[key]);
//! store.submit_load(2, lease, &[3])?; // SSD -> slot 3, verified
//! store.drain();
//! assert!(store.take_finished()[0].success);
//! assert_eq!(memory.slot(3), Some(vec![5u8; 4096]));
//! # drop(store); std::fs::remove_dir_all(&dir).ok();
//! # Ok::<(), kvtier::Error>(())
//! ```

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::{xxh3_64_with_seed, xxh3_128_with_seed};

mod admit;
mod memory;
mod types;
mod worker;

use crate::curve::{CapacityCurve, CurveReading};
use crate::error::{Error, Result, Tier};
pub use crate::events::{TierEvent, TierEventKind as EventKind};
use crate::layout::{Dtype, KvLayout};
use crate::prefix::BlockHash;
use crate::sync::{Condvar, Mutex, lock, wait};
use crate::tier::DiskTier;
use crate::tier::remote::{RemoteMetrics, RemoteTier};
pub use admit::StoreAdmission;
use admit::{Gate, Verdict};
use memory::slot_out_of_range;
pub use memory::{HeapSlots, SlotMemory};
pub use types::{JobKind, JobResult, Lookup, SlotStoreConfig, StoreMetrics};

/// Seed of the tenant-salt hash that seeds [`SlotStore::key_hash`] ("kvtslots").
const KEY_SEED: u64 = 0x6b76_7473_6c6f_7473;

/// An SSD tier over runtime-owned slots; see the module docs. `Send + Sync`: every method takes
/// `&self` and none waits on IO except [`SlotStore::drain`] and [`SlotStore::shutdown`].
pub struct SlotStore {
    shared: Arc<Shared>,
    workers: Mutex<Vec<JoinHandle<()>>>,
}

impl std::fmt::Debug for SlotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotStore").field("disk", &self.shared.disk).field("memory", &self.shared.memory).finish()
    }
}

pub(crate) struct Shared {
    pub(crate) disk: DiskTier,
    /// The shared G4 tier, if configured.
    pub(crate) g4: Option<RemoteTier>,
    pub(crate) memory: Arc<dyn SlotMemory>,
    key_seed: u64,
    /// Pages one worker batch takes at most (from `max_batch_bytes`).
    pub(crate) max_batch_pages: usize,
    pub(crate) state: Mutex<State>,
    /// Workers wait here for jobs.
    pub(crate) work: Condvar,
    /// [`SlotStore::drain`] waits here for the queues to empty.
    pub(crate) idle: Condvar,
}

/// A queued job: its keys, the slots they go to or come from, and (loads) which keys it pins.
pub(crate) struct Job {
    pub(crate) id: u64,
    pub(crate) kind: JobKind,
    pub(crate) keys: Vec<BlockHash>,
    pub(crate) slots: Vec<usize>,
    pub(crate) pinned: Vec<bool>,
    pub(crate) submitted: Instant,
    /// Stores only: the new keys (admitted or not) the live capacity curve counts when the
    /// job has run (a load's are its `keys`).
    pub(crate) uses: Vec<BlockHash>,
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) loads: VecDeque<Job>,
    pub(crate) stores: VecDeque<Job>,
    pub(crate) running: usize,
    /// Keys queued or being written, with how many jobs carry each.
    pub(crate) in_flight: HashMap<BlockHash, u32>,
    pub(crate) finished: Vec<JobResult>,
    pub(crate) events: Vec<TierEvent>,
    pub(crate) closed: bool,
    pub(crate) m: StoreMetrics,
    gate: Option<Gate>,
    /// The live capacity curve, fed the keys of every load (hits) and the new keys of every
    /// store (misses), if configured.
    pub(crate) curve: Option<CapacityCurve>,
}

/// Pins on the pages of some keys, taken by [`SlotStore::prepare_load`]: none of them is evicted
/// while the lease lives. Dropping it unpins them; [`SlotStore::submit_load`] takes it over
/// and unpins them when the load is done.
pub struct LoadLease {
    shared: Arc<Shared>,
    keys: Vec<BlockHash>,
    pinned: Vec<bool>,
}

impl std::fmt::Debug for LoadLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadLease").field("keys", &self.keys.len()).field("pinned", &self.pinned_count()).finish()
    }
}

impl LoadLease {
    /// The keys of the lease, in order.
    pub fn keys(&self) -> &[BlockHash] {
        &self.keys
    }

    /// Whether the page of the `i`-th key was found and is pinned.
    pub fn is_pinned(&self, i: usize) -> bool {
        self.pinned.get(i).copied().unwrap_or(false)
    }

    /// How many keys were found and are pinned.
    pub fn pinned_count(&self) -> usize {
        self.pinned.iter().filter(|p| **p).count()
    }

    /// Whether every key was found and is pinned.
    pub fn all_pinned(&self) -> bool {
        self.pinned.iter().all(|p| *p)
    }

    /// Appends `other`'s keys and pins to this lease (both from the same store; a lease of
    /// another store is given back as the error).
    pub fn append(&mut self, mut other: LoadLease) -> std::result::Result<(), LoadLease> {
        if !Arc::ptr_eq(&self.shared, &other.shared) {
            return Err(other);
        }
        self.keys.append(&mut other.keys);
        self.pinned.append(&mut other.pinned);
        Ok(())
    }

    /// Hands the pins over (to a job); the lease then unpins nothing.
    fn take(mut self) -> (Vec<BlockHash>, Vec<bool>) {
        (std::mem::take(&mut self.keys), std::mem::take(&mut self.pinned))
    }
}

impl Drop for LoadLease {
    fn drop(&mut self) {
        for (key, pinned) in self.keys.iter().zip(&self.pinned) {
            if *pinned {
                self.shared.disk.unpin(*key);
            }
        }
    }
}

/// A page layout of exactly `page_bytes` (even, at most 1 GiB): one layer, one head of FP8
/// elements, one token; the fingerprint's model id is what tells two models apart then.
fn raw_layout(page_bytes: usize) -> Result<KvLayout> {
    let half = u32::try_from(page_bytes / 2)
        .map_err(|_| Error::InvalidConfig { field: "slot_bytes", reason: "exceeds 1 GiB" })?;
    if !page_bytes.is_multiple_of(2) || half == 0 {
        return Err(Error::OutOfRange {
            field: "slot_bytes",
            value: page_bytes.to_string(),
            expected: "an even number of bytes, at least 2",
        });
    }
    KvLayout::new(1, 1, half, Dtype::Fp8, 1)
}

impl SlotStore {
    /// Opens (or warm-reopens) the tier directory `config.disk` names for pages of
    /// `memory.slot_bytes()` bytes and starts the IO workers. Errors are those of
    /// [`DiskTier::open`] ([`Error::Fingerprint`] for a directory of another model id, layout
    /// or geometry, [`Error::CapacityExceeded`], ...), [`Error::LayoutMismatch`] when
    /// `config.layout` does not match the memory's slot size, and [`Error::Io`] (op `"spawn"`)
    /// if a worker cannot be started.
    pub fn open(config: SlotStoreConfig, memory: Arc<dyn SlotMemory>) -> Result<Self> {
        config.validate()?;
        let layout = match config.layout {
            Some(layout) if layout.page_bytes() != memory.slot_bytes() => {
                return Err(Error::LayoutMismatch { expected: layout.page_bytes(), actual: memory.slot_bytes() });
            }
            Some(layout) => layout,
            None => raw_layout(memory.slot_bytes())?,
        };
        let g4 = match &config.remote {
            Some(r) => {
                let mut r = r.clone();
                if r.model_id.is_empty() {
                    r.model_id = config.disk.model_id.clone();
                }
                if r.tenant_salt.is_empty() {
                    r.tenant_salt = config.tenant_salt.clone();
                }
                Some(RemoteTier::open(&layout, r)?)
            }
            None => None,
        };
        let disk = DiskTier::open(&layout, config.disk.clone())?;
        disk.log_evictions(true);
        let shared = Arc::new(Shared {
            disk,
            g4,
            memory,
            key_seed: xxh3_64_with_seed(&config.tenant_salt, KEY_SEED),
            max_batch_pages: (config.max_batch_bytes / layout.page_bytes()).max(1),
            state: Mutex::new(State {
                gate: Some(Gate::new(config.admission, config.disk.capacity_slots, config.write_budget)),
                curve: (config.curve_keys > 0).then(|| CapacityCurve::new(config.curve_keys)),
                ..State::default()
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
        });
        let store = Self { shared, workers: Mutex::new(Vec::new()) };
        for i in 0..config.workers {
            let shared = Arc::clone(&store.shared);
            let handle = std::thread::Builder::new()
                .name(format!("kvtier-slots-{i}"))
                .spawn(move || worker::run(&shared))
                .map_err(|source| Error::Io { tier: Tier::G3, op: "spawn", source })?;
            lock(&store.workers).push(handle);
        }
        Ok(store)
    }

    /// The [`BlockHash`] a runtime key (any bytes: vLLM's offload key is the block hash
    /// followed by the 4-byte group index) is stored under: XXH3-128 of the key, seeded by the
    /// XXH3-64 of the tenant salt. Pure and cheap (no lock).
    pub fn key_hash(&self, key: &[u8]) -> BlockHash {
        BlockHash(xxh3_128_with_seed(key, self.shared.key_seed))
    }

    /// Bytes per page (the memory's slot size).
    pub fn page_bytes(&self) -> usize {
        self.shared.disk.page_bytes()
    }

    /// Pages the tier holds at most.
    pub fn capacity(&self) -> usize {
        self.shared.disk.capacity()
    }

    /// The SSD tier underneath (read-only uses: its directory, backend, fingerprint).
    pub fn disk(&self) -> &DiskTier {
        &self.shared.disk
    }

    /// Whether `key` is stored and ready (`Hit`), queued or being written (`Retry`), or not
    /// stored (`Miss`). Pins nothing: between a `Hit` and [`SlotStore::prepare_load`] the page
    /// may be evicted, which `prepare_load` then reports.
    pub fn lookup(&self, key: BlockHash) -> Lookup {
        let in_flight = {
            let mut st = lock(&self.shared.state);
            st.m.lookups += 1;
            st.in_flight.contains_key(&key)
        };
        if in_flight {
            return Lookup::Retry;
        }
        if self.shared.disk.contains(key) {
            lock(&self.shared.state).m.lookup_hits += 1;
            Lookup::Hit
        } else {
            Lookup::Miss
        }
    }

    /// Which of `keys` the shared G4 tier holds, in one pipelined round trip (all false without
    /// one, or while it is unreachable). This call waits on the network: it is meant for a
    /// runtime's background lookup thread (vLLM's `AsyncLookupManager.batch_lookup`), not its
    /// scheduler. G4 is lossy: a key found here may be gone when its load runs, and is then a
    /// failed key of that load.
    pub fn probe_remote(&self, keys: &[BlockHash]) -> Vec<bool> {
        match &self.shared.g4 {
            Some(g4) => g4.contains_each(keys),
            None => vec![false; keys.len()],
        }
    }

    /// The shared G4 tier's counters, if one is configured.
    pub fn remote_metrics(&self) -> Option<RemoteMetrics> {
        self.shared.g4.as_ref().map(RemoteTier::metrics)
    }

    /// Pins the pages of `keys` that are stored, in a lease that keeps them from eviction
    /// until it is dropped or its load is done ([`LoadLease::is_pinned`] tells which were found).
    pub fn prepare_load(&self, keys: &[BlockHash]) -> LoadLease {
        let pinned = keys.iter().map(|k| self.shared.disk.pin(*k)).collect();
        LoadLease { shared: Arc::clone(&self.shared), keys: keys.to_vec(), pinned }
    }

    /// Marks the stored pages of `keys` most recently used; returns how many moved.
    pub fn touch(&self, keys: &[BlockHash]) -> usize {
        self.shared.disk.touch(keys)
    }

    /// Every key the tier holds now (after a warm restart: what the last run left that still
    /// has an intact record; every page is still verified when loaded).
    pub fn stored_keys(&self) -> Vec<BlockHash> {
        let mut out = Vec::new();
        self.shared.disk.stored_hashes(&mut out);
        out
    }

    /// Checks a job's slots: as many as keys, each in range, and distinct when `distinct`.
    fn check_slots(&self, keys: usize, slots: &[usize], distinct: bool) -> Result<()> {
        if keys != slots.len() {
            return Err(Error::OutOfRange {
                field: "slots",
                value: format!("{} slots for {keys} keys", slots.len()),
                expected: "one slot per key",
            });
        }
        let count = self.shared.memory.slot_count();
        let mut seen = HashSet::with_capacity(if distinct { slots.len() } else { 0 });
        for &s in slots {
            if s >= count {
                return Err(slot_out_of_range(s));
            }
            if distinct && !seen.insert(s) {
                return Err(Error::OutOfRange {
                    field: "slots",
                    value: format!("slot {s} twice"),
                    expected: "distinct destination slots",
                });
            }
        }
        Ok(())
    }

    /// Queues a job storing the page in `slots[i]` under `keys[i]`, for every key not already
    /// stored or in flight (those count as done), and returns how many keys it will write. Its
    /// result comes through [`SlotStore::take_finished`], also when nothing was left to write.
    /// The slots must not be written until then. Errors, with nothing queued: the store is
    /// shut down ([`Error::Closed`]), slots do not match the keys or are out of range
    /// ([`Error::OutOfRange`]), or the new keys outnumber the tier's capacity
    /// ([`Error::NeverFits`], whereas a key refused because every slot is pinned is reported
    /// in [`JobResult::refused`] and may fit later).
    pub fn submit_store(&self, job_id: u64, keys: &[BlockHash], slots: &[usize]) -> Result<usize> {
        self.check_slots(keys.len(), slots, false)?;
        let mut st = lock(&self.shared.state);
        if st.closed {
            return Err(Error::Closed);
        }
        let mut job = Job {
            id: job_id,
            kind: JobKind::Store,
            keys: Vec::with_capacity(keys.len()),
            slots: Vec::with_capacity(keys.len()),
            pinned: Vec::new(),
            submitted: Instant::now(),
            uses: Vec::new(),
        };
        // Keys neither stored nor in flight; more of them than the tier holds can never fit.
        let mut fresh: Vec<(BlockHash, usize)> = Vec::with_capacity(keys.len());
        let mut seen: HashSet<BlockHash> = HashSet::with_capacity(keys.len());
        for (&key, &slot) in keys.iter().zip(slots) {
            let known = st.in_flight.contains_key(&key) || self.shared.disk.contains(key);
            if !known && seen.insert(key) {
                fresh.push((key, slot));
            }
        }
        if fresh.len() > self.capacity() {
            return Err(Error::NeverFits { requested: fresh.len(), capacity: self.capacity() });
        }
        let skipped = keys.len() - fresh.len();
        if st.curve.is_some() {
            // a key the runtime stores is one it used and this tier did not have
            job.uses = fresh.iter().map(|&(key, _)| key).collect();
        }
        let page_bytes = self.page_bytes() as u64;
        for (key, slot) in fresh {
            match st.gate.as_mut().map_or(Verdict::Admit, |g| g.admit(key, page_bytes)) {
                Verdict::Admit => {
                    job.keys.push(key);
                    job.slots.push(slot);
                }
                Verdict::FirstSighting => st.m.keys_not_admitted += 1,
                Verdict::OverBudget => st.m.keys_over_budget += 1,
            }
        }
        st.m.store_jobs += 1;
        st.m.keys_already_present += skipped as u64;
        let queued = job.keys.len();
        if queued == 0 {
            if let Some(curve) = &mut st.curve {
                curve.observe(&job.uses); // no worker will run this job
            }
            st.m.jobs_finished += 1;
            st.finished.push(JobResult::empty(job_id, JobKind::Store));
            return Ok(0);
        }
        for key in &job.keys {
            *st.in_flight.entry(*key).or_insert(0) += 1;
        }
        st.stores.push_back(job);
        drop(st);
        self.shared.work.notify_one();
        Ok(queued)
    }

    /// Queues a job loading the page of each key of `lease` into `slots[i]` (distinct), and
    /// returns at once; its result (the keys that loaded) comes through
    /// [`SlotStore::take_finished`], and the lease's pins go when it is done. A key the lease
    /// did not pin is tried all the same and is a failed key if absent. Errors, with the lease
    /// dropped (unpinned) and nothing queued: [`Error::Closed`], [`Error::OutOfRange`] for
    /// slots, or [`Error::OutOfRange`] (field `"lease"`) for a lease of another store.
    pub fn submit_load(&self, job_id: u64, lease: LoadLease, slots: &[usize]) -> Result<()> {
        if !Arc::ptr_eq(&lease.shared, &self.shared) {
            return Err(Error::OutOfRange {
                field: "lease",
                value: "a lease of another store".into(),
                expected: "a lease from this store's prepare_load",
            });
        }
        self.check_slots(lease.keys.len(), slots, true)?;
        let mut st = lock(&self.shared.state);
        if st.closed {
            return Err(Error::Closed);
        }
        let (keys, pinned) = lease.take();
        st.m.load_jobs += 1;
        st.loads.push_back(Job {
            id: job_id,
            kind: JobKind::Load,
            keys,
            slots: slots.to_vec(),
            pinned,
            submitted: Instant::now(),
            uses: Vec::new(),
        });
        drop(st);
        self.shared.work.notify_one();
        Ok(())
    }

    /// Results of the jobs finished since the last call, oldest first.
    pub fn take_finished(&self) -> Vec<JobResult> {
        std::mem::take(&mut lock(&self.shared.state).finished)
    }

    /// Events since the last call: pages stored, and pages removed (evicted for room, or
    /// dropped after failing verification), in order.
    pub fn take_events(&self) -> Vec<TierEvent> {
        std::mem::take(&mut lock(&self.shared.state).events)
    }

    /// Whether a job is queued or running, or a result waits to be taken.
    pub fn has_pending_work(&self) -> bool {
        let st = lock(&self.shared.state);
        !st.loads.is_empty() || !st.stores.is_empty() || st.running > 0 || !st.finished.is_empty()
    }

    /// Waits until every submitted job has finished (its result is then in
    /// [`SlotStore::take_finished`]); no IO touches the runtime's memory after it returns.
    pub fn drain(&self) {
        let mut st = lock(&self.shared.state);
        while !st.loads.is_empty() || !st.stores.is_empty() || st.running > 0 {
            st = wait(&self.shared.idle, st);
        }
    }

    /// Like [`SlotStore::drain`] but gives up after `timeout`; returns whether it drained.
    pub fn drain_for(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = lock(&self.shared.state);
        while !st.loads.is_empty() || !st.stores.is_empty() || st.running > 0 {
            if self.shared.idle.wait_until(&mut st, deadline).timed_out() {
                return false;
            }
        }
        true
    }

    /// This tier's live hit-rate-vs-capacity estimate ([`SlotStoreConfig::curve_keys`]; None
    /// when off), read at `capacities` (blocks): the share of the blocks the runtime loaded
    /// or stored that an LRU tier of each size would have held. Its accesses are the keys of
    /// every load job (found here) and the new keys of every store job (not found), so it
    /// sizes this tier behind whatever tiers the runtime keeps in front of it; looked-up keys
    /// count only once they are loaded or stored, so repeated lookups do not inflate it.
    pub fn live_curve(&self, capacities: &[u64]) -> Option<CurveReading> {
        lock(&self.shared.state).curve.as_ref().map(|c| c.read(capacities))
    }

    /// Counters and gauges, with the SSD tier's own.
    pub fn metrics(&self) -> StoreMetrics {
        let disk = self.shared.disk.metrics();
        let st = lock(&self.shared.state);
        let mut m = st.m;
        m.queued_jobs = (st.loads.len() + st.stores.len()) as u64;
        m.running_jobs = st.running as u64;
        m.disk = disk;
        m
    }

    /// Stops the workers: jobs running finish, queued jobs are cancelled and reported failed
    /// (their keys in [`JobResult::failed`]), and later submissions fail with
    /// [`Error::Closed`]. Waits for the running jobs; calling it again does nothing.
    pub fn shutdown(&self) {
        let cancelled: Vec<Job> = {
            let mut st = lock(&self.shared.state);
            st.closed = true;
            let mut jobs: Vec<Job> = st.loads.drain(..).collect();
            jobs.extend(st.stores.drain(..));
            jobs
        };
        for job in cancelled {
            worker::cancel(&self.shared, job);
        }
        self.shared.work.notify_all();
        let workers = std::mem::take(&mut *lock(&self.workers));
        for handle in workers {
            let _ = handle.join();
        }
        self.shared.idle.notify_all();
    }
}

impl Drop for SlotStore {
    fn drop(&mut self) {
        self.shutdown();
    }
}
