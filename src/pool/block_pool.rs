//! Block states, refcounts, the free queue, the evictable set and the prefix index of one
//! tier's pages: G1's blocks, and the slots of G2 and G3, which keep their bookkeeping in the
//! same type (a "block" here is any page-sized slot of the tier that owns the pool).
//!
//! All per-block state lives in flat arrays indexed by [`BlockId`]: a 32-byte [`Meta`], a 4-byte
//! slot of the free-queue ring, the eviction policy's entry and a 4-byte slot (at load <= 1/2) of
//! the hash index. Nothing here allocates after construction, and every operation is O(1).

use crate::error::{BlockCondition, Error, Result};
use crate::events::{CacheSnapshot, EventLog, KvEvent, KvEventKind};
use crate::list::{IndexRing, MAX_INDEX};
use crate::policy::{EvictionPolicy, Lru};
use crate::pool::BlockId;
use crate::prefix::{BlockHash, HashIndex, Insert};

mod invariants;
mod staging;
mod tree;

use tree::Tree;

/// The state a block is in. Every block is in exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockState {
    /// In the free queue; holds nothing.
    Free,
    /// Referenced by `refcount >= 1` users.
    InUse,
    /// Cached content, no reference; can be revived or evicted.
    Evictable,
}

const HASHED: u8 = 1;
/// Clean: the content also lives in the tier below, so evicting it from here loses nothing.
const CLEAN: u8 = 2;
/// Pinned while a copy to or from another tier runs outside the owner's lock: a writeback of
/// a victim or a write-through copy reading the page, or an onboarding fill writing it.
const IN_FLIGHT: u8 = 4;
/// Rejected: the tier below declined the content (admission); evict it early.
const REJECTED: u8 = 8;
/// Logically in the ready queue.
const READY: u8 = 16;
/// Physically in the ready ring (possibly removed logically since: skipped when popped).
const QUEUED: u8 = 32;
/// Evictable, but kept out of the policy while cached children hang below it (leaves first).
const HELD: u8 = 64;
/// Cold: a tier above took this content back (promotion) and serves it from there, so this
/// copy waits on the ready queue, evicted first at no loss (mostly-exclusive tiers).
const COLD: u8 = 128;
/// Evicted hashes kept for the owner before it drains them (beyond: not recorded).
const EVICTION_LOG_CAP: usize = 1 << 16;
/// How far ahead in the free ring [`BlockPool::allocate_one`] touches metadata.
const PREFETCH_AHEAD: usize = 4;
/// Largest pool: ids must fit an `i32` block table.
const MAX_BLOCKS: usize = i32::MAX as usize;

/// 24 bytes: the hash is kept as two `u64` so that the struct needs 8-byte alignment only.
#[derive(Clone, Copy)]
struct Meta {
    hash: [u64; 2],
    refcount: u32,
    state: BlockState,
    flags: u8,
}

impl Meta {
    #[inline(always)]
    fn hash(&self) -> BlockHash {
        BlockHash(self.hash[0] as u128 | (self.hash[1] as u128) << 64)
    }
    #[inline(always)]
    fn set_hash(&mut self, h: BlockHash) {
        self.hash = [h.0 as u64, (h.0 >> 64) as u64];
    }
}

/// Counters kept by the pool.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct PoolCounters {
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub evictions: u64,
    /// Evictions of blocks whose content was not backed by a lower tier (lost).
    pub unbacked_evictions: u64,
    pub allocations: u64,
}

/// Page bookkeeping of one tier (G1's blocks, or G2's and G3's slots); single-threaded
/// (`&mut self`), see [`crate::KvCache`] for G1's shared, thread-safe front.
///
/// ```
/// use kvtier::{BlockPool, BlockHash, BlockState};
/// let mut pool = BlockPool::new(4)?;
/// let b = pool.allocate_one()?;
/// assert!(pool.register(b, BlockHash(42), None, 16)?);
/// pool.release(b)?;
/// assert_eq!(pool.state(b)?, BlockState::Evictable);
/// assert_eq!(pool.acquire_cached(BlockHash(42))?, Some(b)); // revived by a prefix hit
/// pool.release(b)?;
/// # Ok::<(), kvtier::Error>(())
/// ```
pub struct BlockPool<P: EvictionPolicy = Lru> {
    meta: Vec<Meta>,
    free: IndexRing,
    policy: P,
    /// Evictable blocks already backed below (or declined by it), evicted before the policy's
    /// victims, FIFO. Removal from the middle (a revival) is lazy: the `READY` flag is cleared
    /// and the ring entry skipped when popped, so the queue costs 4 bytes per block.
    ready: IndexRing,
    ready_len: usize,
    index: HashIndex,
    events: EventLog,
    in_use: usize,
    counters: PoolCounters,
    /// Hashes evicted since the owner last drained them, when it asked (tiers tell the tier
    /// above that a copy it counted on is gone).
    evicted: Option<Vec<BlockHash>>,
    tree: Tree,
}

impl<P: EvictionPolicy> std::fmt::Debug for BlockPool<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockPool")
            .field("capacity", &self.capacity())
            .field("free", &self.num_free())
            .field("in_use", &self.num_in_use())
            .field("evictable", &self.num_evictable())
            .finish_non_exhaustive()
    }
}

impl BlockPool<Lru> {
    /// A pool of `capacity` blocks with LRU eviction and a 64 Ki-event buffer.
    pub fn new(capacity: usize) -> Result<Self> {
        Self::with_policy(capacity, Lru::new(capacity), 1 << 16)
    }
}

impl<P: EvictionPolicy> BlockPool<P> {
    /// A pool of `capacity` blocks evicting with `policy` (built for the same capacity) and
    /// keeping up to `event_capacity` undrained events (0 disables events).
    pub fn with_policy(capacity: usize, policy: P, event_capacity: usize) -> Result<Self> {
        if capacity == 0 {
            return Err(Error::InvalidConfig { field: "num_blocks", reason: "must be non-zero" });
        }
        if capacity > MAX_BLOCKS.min(MAX_INDEX) {
            return Err(Error::InvalidConfig { field: "num_blocks", reason: "exceeds 2^31 - 1" });
        }
        let meta = vec![Meta { hash: [0; 2], refcount: 0, state: BlockState::Free, flags: 0 }; capacity];
        let tree = Tree::new(capacity, policy.prefers_leaves());
        Ok(Self {
            meta,
            free: IndexRing::full(capacity),
            policy,
            ready: IndexRing::new(capacity),
            ready_len: 0,
            index: HashIndex::new(capacity),
            events: EventLog::new(event_capacity),
            in_use: 0,
            counters: PoolCounters::default(),
            tree,
            evicted: None,
        })
    }

    /// Blocks in the pool.
    #[inline]
    pub fn capacity(&self) -> usize {
        self.meta.len()
    }
    /// Blocks in the free queue.
    #[inline]
    pub fn num_free(&self) -> usize {
        self.free.len()
    }
    /// Cached blocks without a reference.
    #[inline]
    pub fn num_evictable(&self) -> usize {
        self.policy.len() + self.ready_len + self.tree.held()
    }
    /// Evictable blocks already backed by a lower tier (evicted first, at no loss).
    #[inline]
    pub fn num_ready(&self) -> usize {
        self.ready_len
    }
    /// Blocks with at least one reference.
    #[inline]
    pub fn num_in_use(&self) -> usize {
        self.in_use
    }
    /// Blocks an allocation could get: free plus evictable.
    #[inline]
    pub fn available(&self) -> usize {
        self.free.len() + self.ready_len + self.policy.len() + self.tree.held()
    }
    /// True when `n` blocks can be allocated now.
    #[inline]
    pub fn can_allocate(&self, n: usize) -> bool {
        n <= self.available()
    }
    /// Name of the eviction policy.
    pub fn policy_name(&self) -> &'static str {
        self.policy.name()
    }

    #[inline(always)]
    fn meta(&self, b: BlockId) -> Result<&Meta> {
        self.meta.get(b.index()).ok_or(Error::InvalidBlock { block: b, capacity: self.meta.len() })
    }

    /// State of a block.
    pub fn state(&self, b: BlockId) -> Result<BlockState> {
        Ok(self.meta(b)?.state)
    }
    /// References held on a block.
    pub fn refcount(&self, b: BlockId) -> Result<u32> {
        Ok(self.meta(b)?.refcount)
    }
    /// What a block is, as [`Error::WrongBlockState`] reports it: free, cached, onboarding,
    /// copying, committed, shared or writable (the first that applies).
    ///
    /// ```
    /// use kvtier::{BlockCondition, BlockHash, BlockPool};
    /// let mut pool = BlockPool::new(2)?;
    /// let b = pool.allocate_one()?;
    /// assert_eq!(pool.condition(b)?, BlockCondition::Writable);
    /// pool.register(b, BlockHash(7), None, 16)?;
    /// assert_eq!(pool.condition(b)?, BlockCondition::Committed);
    /// pool.release(b)?;
    /// assert_eq!(pool.condition(b)?, BlockCondition::Cached);
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn condition(&self, b: BlockId) -> Result<BlockCondition> {
        let m = self.meta(b)?;
        let (hashed, staged) = (m.flags & HASHED != 0, m.flags & IN_FLIGHT != 0);
        Ok(match m.state {
            BlockState::Free => BlockCondition::Free,
            BlockState::Evictable => BlockCondition::Cached,
            BlockState::InUse if staged && !hashed => BlockCondition::Onboarding,
            BlockState::InUse if staged => BlockCondition::Copying,
            BlockState::InUse if hashed => BlockCondition::Committed,
            BlockState::InUse if m.refcount > 1 => BlockCondition::Shared,
            BlockState::InUse => BlockCondition::Writable,
        })
    }
    /// [`Error::WrongBlockState`] for `b`, which the caller found not to be `needed`.
    #[cold]
    pub(crate) fn wrong_state(&self, b: BlockId, needed: BlockCondition) -> Error {
        match self.condition(b) {
            Ok(found) => Error::WrongBlockState { block: b, found, needed },
            Err(e) => e,
        }
    }
    /// The hash a block is registered under, if any.
    pub fn hash_of(&self, b: BlockId) -> Result<Option<BlockHash>> {
        let m = self.meta(b)?;
        Ok((m.flags & HASHED != 0).then_some(m.hash()))
    }

    /// Takes one block for exclusive use (refcount 1): from the free queue, or else by evicting
    /// the policy's victim (its hash leaves the index and a `Removed` event is emitted).
    #[inline]
    pub fn allocate_one(&mut self) -> Result<BlockId> {
        let b = match self.free.pop_front() {
            Some(i) => {
                // Touch the metadata of a block a few allocations ahead: its cache miss then
                // overlaps with this allocation instead of stalling a later one (the free
                // ring's order is random after churn, so the hardware prefetcher cannot help).
                if let Some(next) = self.free.peek(PREFETCH_AHEAD) {
                    std::hint::black_box(self.meta[next as usize].state);
                }
                BlockId(i)
            }
            None => {
                let victim = match self.ready_pop() {
                    Some(b) => Some(b),
                    None => self.policy.pop_victim().or_else(|| self.pop_held()),
                };
                let Some(b) = victim else {
                    return Err(Error::OutOfBlocks { requested: 1, available: 0 });
                };
                if self.meta[b.index()].flags & (CLEAN | COLD) == 0 {
                    self.counters.unbacked_evictions += 1;
                }
                self.forget_hash(b);
                self.counters.evictions += 1;
                b
            }
        };
        let m = &mut self.meta[b.index()];
        m.refcount = 1;
        m.state = BlockState::InUse;
        self.in_use += 1;
        self.counters.allocations += 1;
        Ok(b)
    }

    /// Allocates `n` blocks into `out`, all or nothing: [`Error::NeverFits`] if `n` is more
    /// than the pool holds, [`Error::OutOfBlocks`] if that many are not free or evictable now.
    #[inline]
    pub fn allocate(&mut self, n: usize, out: &mut Vec<BlockId>) -> Result<()> {
        if n > self.capacity() {
            return Err(Error::NeverFits { requested: n, capacity: self.capacity() });
        }
        let available = self.available();
        if n > available {
            return Err(Error::OutOfBlocks { requested: n, available });
        }
        out.reserve(n);
        let start = out.len();
        for _ in 0..n {
            match self.allocate_one() {
                Ok(b) => out.push(b),
                Err(e) => {
                    // All or nothing: hand back what this call took.
                    for b in out.drain(start..) {
                        self.release(b)?;
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn forget_hash(&mut self, b: BlockId) {
        let m = &mut self.meta[b.index()];
        m.flags &= !(CLEAN | REJECTED | COLD);
        if m.flags & HASHED != 0 {
            m.flags &= !HASHED;
            let hash = m.hash();
            self.policy.on_forget(b);
            self.unlink_tree(b);
            self.index.remove(hash, b.0);
            self.events.push(KvEventKind::Removed { hash });
            if let Some(log) = self.evicted.as_mut()
                && log.len() < EVICTION_LOG_CAP
            {
                log.push(hash);
            }
        }
    }

    /// Adds a reference to a block in use (sharing it with another sequence).
    #[inline]
    pub fn retain(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.state != BlockState::InUse {
            return Err(self.wrong_state(b, BlockCondition::InUse));
        }
        m.refcount += 1;
        Ok(())
    }

    /// Drops one reference. At zero a hashed block becomes evictable (its content stays
    /// cached), an unhashed one returns to the free queue. Releasing a block that holds no
    /// reference is [`Error::DoubleFree`] and changes nothing.
    #[inline]
    pub fn release(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.state != BlockState::InUse {
            return Err(Error::DoubleFree(b));
        }
        m.refcount -= 1;
        if m.refcount == 0 {
            self.in_use -= 1;
            if m.flags & HASHED != 0 {
                m.state = BlockState::Evictable;
                self.offer(b);
            } else {
                m.state = BlockState::Free;
                self.free.push_back(b.0);
            }
        }
        Ok(())
    }

    /// Releases blocks in the order given (pass a sequence's blocks tail first). Stops at the
    /// first error; the blocks before it are released, the rest untouched.
    #[inline]
    pub fn release_all(&mut self, blocks: impl IntoIterator<Item = BlockId>) -> Result<()> {
        for b in blocks {
            self.release(b)?;
        }
        Ok(())
    }

    /// Looks a hash up without touching anything.
    #[inline]
    pub fn lookup(&self, h: BlockHash) -> Option<BlockId> {
        let meta = &self.meta;
        self.index.get(h, |e| meta[e as usize].hash()).map(BlockId)
    }

    /// Number of leading `hashes` cached in this pool (counted as prefix queries and hits).
    pub fn longest_prefix(&mut self, hashes: &[BlockHash]) -> usize {
        let n = hashes.iter().take_while(|h| self.lookup(**h).is_some()).count();
        self.count_queries(hashes.len(), n);
        n
    }

    #[inline]
    pub(crate) fn count_queries(&mut self, queried: usize, hit: usize) {
        self.counters.prefix_queries += queried as u64;
        self.counters.prefix_hits += hit as u64;
    }

    /// Takes a reference on the block cached under `h`, reviving it if it was evictable.
    #[inline]
    pub fn acquire_cached(&mut self, h: BlockHash) -> Result<Option<BlockId>> {
        let Some(b) = self.lookup(h) else { return Ok(None) };
        self.acquire_block(b)?;
        Ok(Some(b))
    }

    /// Takes a reference on a cached (hashed) block found by [`BlockPool::lookup`].
    #[inline]
    pub fn acquire_block(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        match m.state {
            BlockState::Evictable => {
                m.state = BlockState::InUse;
                m.refcount = 1;
                m.flags &= !(REJECTED | COLD);
                self.in_use += 1;
                if !self.ready_remove(b) {
                    self.unoffer(b);
                }
                self.policy.on_hit(b);
            }
            BlockState::InUse => {
                m.refcount += 1;
                self.policy.on_hit(b);
            }
            BlockState::Free => return Err(self.wrong_state(b, BlockCondition::HoldingData)),
        }
        Ok(())
    }

    /// Registers an in-use block under `h` (its content is full and final). Returns false if
    /// another block already holds `h` (the caller keeps its block unshared) or if this block
    /// is already registered.
    pub fn register(&mut self, b: BlockId, h: BlockHash, parent: Option<BlockHash>, num_tokens: u32) -> Result<bool> {
        self.register_linked(b, h, parent.map(|p| (p, None)), num_tokens)
    }

    /// [`BlockPool::register`] with the block that holds the parent's content, if the
    /// registrant holds it too (its own previous block, or one it took a reference on). The
    /// two are linked in the prefix tree when that block is the one cached under the parent
    /// hash, so a policy that prefers leaves never evicts the parent first.
    pub fn register_linked(
        &mut self,
        b: BlockId,
        h: BlockHash,
        parent: Option<(BlockHash, Option<BlockId>)>,
        num_tokens: u32,
    ) -> Result<bool> {
        let parent_block = parent.and_then(|(h, b)| Some((h, b?)));
        let parent = parent.map(|(h, _)| h);
        let m = *self.meta(b)?;
        if m.state != BlockState::InUse || m.flags & HASHED != 0 {
            return Ok(false);
        }
        self.meta[b.index()].set_hash(h);
        let meta = &self.meta;
        match self.index.insert(h, b.0, |e| meta[e as usize].hash()) {
            Insert::Inserted => {
                self.policy.on_register(b, crate::policy::hash_key(h.0));
                self.link_parent(b, parent_block);
                let m = &mut self.meta[b.index()];
                m.flags |= HASHED;
                self.events.push(KvEventKind::Stored { hash: h, parent, block: b, num_tokens });
                Ok(true)
            }
            // Already cached elsewhere, or (impossible at load <= 1/2 with one entry per block)
            // a full index: either way the block simply stays unshared.
            Insert::Present(_) | Insert::Full => {
                self.meta[b.index()].set_hash(BlockHash(0));
                Ok(false)
            }
        }
    }

    /// Drops every evictable block's content (a prefix-cache reset). Returns false and changes
    /// nothing while any block is in use, as in-use blocks may still be shared by hash.
    pub fn reset_prefix_cache(&mut self) -> bool {
        if self.in_use != 0 {
            return false;
        }
        while let Some(b) = self.ready_pop().or_else(|| self.policy.pop_victim()).or_else(|| self.pop_held()) {
            let m = &mut self.meta[b.index()];
            m.flags &= !(HASHED | CLEAN | REJECTED);
            m.state = BlockState::Free;
            self.free.push_back(b.0);
            self.policy.on_forget(b);
        }
        self.tree.clear();
        self.index.clear();
        self.events.push(KvEventKind::AllCleared);
        true
    }

    /// Moves undrained events to `out`.
    pub fn drain_events(&mut self, out: &mut Vec<KvEvent>) {
        self.events.drain_into(out);
    }

    /// Starts (or, with 0, stops) keeping up to `cap` undrained events, dropping those kept
    /// so far (for a tier that turns its events on after opening).
    pub(crate) fn set_event_capacity(&mut self, cap: usize) {
        self.events = EventLog::new(cap);
    }

    /// Every cached hash, consistent with the event stream up to `last_seq_no`.
    pub fn snapshot(&self) -> CacheSnapshot {
        let hashes = self.meta.iter().filter(|m| m.flags & HASHED != 0).map(|m| m.hash()).collect();
        CacheSnapshot { last_seq_no: self.events.last_seq_no(), hashes }
    }

    pub(crate) fn counters(&self) -> PoolCounters {
        self.counters
    }

    pub(crate) fn events_dropped(&self) -> u64 {
        self.events.dropped()
    }

    /// Bytes of bookkeeping per block: metadata, free-queue links, policy entry, index slots.
    pub fn metadata_bytes_per_block(&self) -> f64 {
        (std::mem::size_of::<Meta>()
            + 2 * IndexRing::bytes_per_element()
            + self.policy.bytes_per_entry()
            + self.tree.bytes_per_block()) as f64
            + self.index.bytes_per_entry(self.capacity())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaf_preferring_policies_evict_children_before_parents() {
        use crate::policy::PolicyKind;
        for kind in [PolicyKind::S3Fifo, PolicyKind::Arc, PolicyKind::Lhd, PolicyKind::Adaptive] {
            let mut p = BlockPool::with_policy(8, kind.build(8), 64).unwrap();
            let mut chain = Vec::new();
            p.allocate(4, &mut chain).unwrap();
            let hashes: Vec<BlockHash> = (1..=4).map(|i| BlockHash(i as u128)).collect();
            for i in 0..4usize {
                let parent = i.checked_sub(1).map(|j| (hashes[j], Some(chain[j])));
                assert!(p.register_linked(chain[i], hashes[i], parent, 16).unwrap());
            }
            // Released head first, the order LRU would get wrong: the policy sees only the leaf.
            for &b in &chain {
                p.release(b).unwrap();
            }
            assert_eq!(p.num_evictable(), 4);
            p.check_invariants().unwrap();
            let mut out = Vec::new();
            p.drain_events(&mut out);
            // Fill the free half, then every allocation evicts: leaf first, up the chain.
            let mut got = Vec::new();
            p.allocate(8, &mut got).unwrap();
            out.clear();
            p.drain_events(&mut out);
            let removed: Vec<BlockHash> = out
                .iter()
                .filter_map(|e| match e.kind {
                    KvEventKind::Removed { hash } => Some(hash),
                    _ => None,
                })
                .collect();
            assert_eq!(removed, hashes.iter().rev().copied().collect::<Vec<_>>(), "{kind:?}");
            p.check_invariants().unwrap();
            // A revived parent leaves the held set; released again, it is held again.
            p.release_all(got).unwrap();
            p.check_invariants().unwrap();
        }
    }

    #[test]
    fn alloc_free_roundtrip() {
        let mut p = BlockPool::new(4).unwrap();
        let mut v = vec![];
        p.allocate(4, &mut v).unwrap();
        assert!(matches!(p.allocate_one(), Err(Error::OutOfBlocks { .. })));
        assert!(matches!(p.allocate(1, &mut v), Err(Error::OutOfBlocks { requested: 1, available: 0 })));
        assert_eq!(v.len(), 4);
        p.release_all(v.iter().rev().copied()).unwrap();
        assert_eq!(p.num_free(), 4);
        assert!(matches!(p.release(v[0]), Err(Error::DoubleFree(_))));
        assert!(matches!(p.release(BlockId(9)), Err(Error::InvalidBlock { .. })));
        p.check_invariants().unwrap();
    }

    #[test]
    fn evicts_tail_first_and_revives() {
        let mut p = BlockPool::new(3).unwrap();
        let mut v = vec![];
        p.allocate(3, &mut v).unwrap();
        for (i, b) in v.iter().enumerate() {
            assert!(p.register(*b, BlockHash(i as u128 + 1), None, 16).unwrap());
        }
        p.release_all(v.iter().rev().copied()).unwrap(); // tail first
        assert_eq!(p.num_evictable(), 3);
        // revive the head
        assert_eq!(p.acquire_cached(BlockHash(1)).unwrap(), Some(v[0]));
        // the tail (hash 3) is evicted first
        let b = p.allocate_one().unwrap();
        assert_eq!(b, v[2]);
        assert_eq!(p.lookup(BlockHash(3)), None);
        assert_eq!(p.lookup(BlockHash(2)), Some(v[1]));
        let mut ev = vec![];
        p.drain_events(&mut ev);
        assert_eq!(ev.len(), 4);
        assert!(matches!(ev[3].kind, KvEventKind::Removed { hash: BlockHash(3) }));
        assert!(ev.windows(2).all(|w| w[1].seq_no == w[0].seq_no + 1));
        p.check_invariants().unwrap();
    }

    #[test]
    fn duplicate_hash_stays_unshared() {
        let mut p = BlockPool::new(2).unwrap();
        let a = p.allocate_one().unwrap();
        let b = p.allocate_one().unwrap();
        assert!(p.register(a, BlockHash(5), None, 16).unwrap());
        assert!(!p.register(b, BlockHash(5), None, 16).unwrap());
        p.release(b).unwrap();
        assert_eq!(p.state(b).unwrap(), BlockState::Free);
        p.check_invariants().unwrap();
    }

    #[test]
    fn reset_only_when_idle() {
        let mut p = BlockPool::new(2).unwrap();
        let a = p.allocate_one().unwrap();
        p.register(a, BlockHash(5), None, 16).unwrap();
        assert!(!p.reset_prefix_cache());
        p.release(a).unwrap();
        assert!(p.reset_prefix_cache());
        assert_eq!(p.lookup(BlockHash(5)), None);
        assert_eq!(p.num_free(), 2);
        p.check_invariants().unwrap();
    }

    #[test]
    fn metadata_fits_budget() {
        let p = BlockPool::new(1 << 20).unwrap();
        assert!(p.metadata_bytes_per_block() <= 64.0, "{}", p.metadata_bytes_per_block());
    }
}
