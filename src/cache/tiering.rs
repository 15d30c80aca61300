//! Page access and the hooks the offload engine uses to copy pages outside the cache's lock.
//!
//! Page memory is shared between the cache (under its lock) and the offload workers (outside
//! it). Every access goes through a page lease of the arena ([`crate::PageRead`],
//! [`crate::PageWrite`]), which refuses overlap by itself; on top of that, two marks in the
//! pool say who may take which lease:
//! - a block **staged** for a copy down is pinned and hashed: its page is immutable, so the
//!   worker reads it ([`KvCache::stage_copies`]) while the runtime may still share it;
//! - a block **onboarding** is freshly allocated, unregistered and staged: only the worker
//!   that fills it touches its page until it is finished.
//!
//! Page access for the runtime ([`CacheCore::page`], [`CacheCore::page_mut`]) refuses whatever
//! would break those rules.

use super::{CacheCore, KvCache};
use crate::error::BlockCondition;
use crate::error::{Error, Result};
use crate::pool::{BlockId, BlockState, CopyOutcome, PageRead, PageWrite, StageOwner, StagedCopies};
use crate::prefix::BlockHash;
use crate::sync::lock;

impl CacheCore {
    /// A shared lease of the page of a block that holds data (in use or cached). Refused while
    /// a worker fills it.
    pub fn page(&self, block: BlockId) -> Result<PageRead<'_>> {
        let arena = self.arena.as_ref().ok_or(Error::NoArena)?;
        let state = self.pool.state(block)?;
        let onboarding = self.pool.is_staged(block)? && self.pool.hash_of(block)?.is_none();
        if state == BlockState::Free || onboarding {
            return Err(self.pool.wrong_state(block, BlockCondition::Readable));
        }
        arena.read(block)
    }

    /// An exclusive lease of the page of a block for writing KV: the block must be held by
    /// exactly one sequence, not yet registered (registered pages are immutable, shared by
    /// hash) and not being copied.
    pub fn page_mut(&mut self, block: BlockId) -> Result<PageWrite<'_>> {
        let arena = self.arena.as_ref().ok_or(Error::NoArena)?;
        let private = self.pool.state(block)? == BlockState::InUse && self.pool.refcount(block)? == 1;
        if !private || self.pool.hash_of(block)?.is_some() || self.pool.is_staged(block)? {
            return Err(self.pool.wrong_state(block, BlockCondition::Writable));
        }
        arena.write(block)
    }

    /// Starts (or stops) write-through: every block registered by a commit is pinned at once
    /// (it cannot be evicted before its copy is done) and queued for the engine.
    pub(crate) fn set_commit_log(&mut self, on: bool) {
        self.committed = on.then(Vec::new);
    }

    /// Moves the blocks pinned for write-through since the last call into `out`.
    fn stage_committed(&mut self, out: &mut Vec<(BlockId, BlockHash)>) {
        if let Some(log) = self.committed.as_mut() {
            out.append(log);
        }
    }

    /// Pins up to `n` eviction victims that no lower tier holds yet (see
    /// [`crate::BlockPool::stage_victims`]).
    fn stage_victims(&mut self, n: usize, out: &mut Vec<(BlockId, BlockHash)>) -> usize {
        self.pool.stage_victims(n, out)
    }

    /// Free plus ready (loss-free) blocks.
    pub(crate) fn free_or_ready(&self) -> usize {
        self.pool.num_free() + self.pool.num_ready()
    }

    /// Allocates `n` blocks to be filled by an onboarding worker, all or nothing, with the
    /// watermark reserve respected (onboarding serves requests not yet admitted).
    pub(crate) fn begin_onboard(&mut self, n: usize, out: &mut Vec<BlockId>) -> Result<()> {
        let most = self.pool.capacity().saturating_sub(self.watermark);
        if n > most {
            return Err(Error::NeverFits { requested: n, capacity: most });
        }
        let available = self.pool.available().saturating_sub(self.watermark);
        if n > available {
            return Err(Error::OutOfBlocks { requested: n, available });
        }
        let start = out.len();
        self.pool.allocate(n, out)?;
        for &b in &out[start..] {
            self.pool.begin_io(b)?;
        }
        Ok(())
    }

    /// Ends onboarding: the first `loaded` blocks hold `hashes[..loaded]` and are registered
    /// (`parents[i]` is block `i`'s parent for the event; not backed below, see the engine's promotion); the rest are returned. The blocks kept for the caller (one reference
    /// each, to release later) are pushed to `held`: the onboarded block, or the block that
    /// already held the same hash if another path registered it meanwhile.
    pub(crate) fn finish_onboard(
        &mut self,
        blocks: &[BlockId],
        hashes: &[BlockHash],
        parents: &[Option<BlockHash>],
        loaded: usize,
        held: &mut Vec<BlockId>,
    ) -> Result<()> {
        for (i, &b) in blocks.iter().enumerate() {
            let parent = parents.get(i).copied().flatten();
            self.pool.end_io(b)?;
            let h = hashes.get(i).copied();
            match h {
                Some(h) if i < loaded => {
                    // The ticket holds the whole chain above, so the block cached under the
                    // parent hash is one it holds.
                    let linked = parent.map(|p| (p, self.pool.lookup(p)));
                    if self.pool.register_linked(b, h, linked, self.block_size as u32)? {
                        // Not backed: the tier it came from keeps its copy only as a cold one
                        // (promotion), so giving the block up copies it down again or finds
                        // that copy still there.
                        self.hold(b);
                        held.push(b);
                    } else {
                        self.pool.release(b)?;
                        if let Some(existing) = self.pool.acquire_cached(h)? {
                            self.hold(existing);
                            held.push(existing);
                        }
                    }
                }
                _ => self.pool.release(b)?,
            }
        }
        Ok(())
    }

    fn hold(&mut self, b: BlockId) {
        *self.engine_refs.entry(b).or_insert(0) += 1;
    }

    /// Drops references taken by onboarding or retention (tail first).
    pub(crate) fn release_blocks(&mut self, blocks: &[BlockId]) -> Result<()> {
        for &b in blocks.iter().rev() {
            match self.engine_refs.get_mut(&b) {
                Some(n) if *n > 1 => *n -= 1,
                Some(_) => {
                    self.engine_refs.remove(&b);
                }
                None => return Err(Error::DoubleFree(b)),
            }
            self.pool.release(b)?;
        }
        Ok(())
    }

    /// Takes a reference on the cached block of `h` (retention of a prefix, or a G1 hit an
    /// onboarding ticket holds until the request is admitted).
    pub(crate) fn hold_cached(&mut self, h: BlockHash) -> Result<Option<BlockId>> {
        let b = self.pool.acquire_cached(h)?;
        if let Some(b) = b {
            self.hold(b);
        }
        Ok(b)
    }

    /// The lower tiers lost their copy of `h`: G1's block (if any) is no longer loss-free.
    pub(crate) fn unback(&mut self, h: BlockHash) -> Result<()> {
        match self.pool.lookup(h) {
            Some(b) => self.pool.unback(b),
            None => Ok(()),
        }
    }

    /// Starts (or stops) recording the hashes G1 evicts, for the engine to drain.
    pub(crate) fn log_evictions(&mut self, on: bool) {
        self.pool.log_evictions(on);
    }

    /// Moves the hashes G1 evicted since the last call into `out`.
    pub(crate) fn drain_evicted(&mut self, out: &mut Vec<BlockHash>) {
        self.pool.drain_evicted(out);
    }

    /// Whether `h` is cached in G1 in a block some sequence (or copy) holds: it stays in G1
    /// at least until released, and a lower copy dropped meanwhile is made again on eviction.
    pub(crate) fn holds_in_use(&self, h: BlockHash) -> bool {
        self.pool.lookup(h).is_some_and(|b| self.pool.state(b).ok() == Some(BlockState::InUse))
    }

    /// Whether `h` is cached in G1 (counts no query and changes no block's recency).
    pub fn contains(&self, h: BlockHash) -> bool {
        self.pool.lookup(h).is_some()
    }
}

/// How many G1 victims to stage for a copy down, decided under the cache's lock.
pub(crate) type VictimCount<'f> = &'f dyn Fn(&CacheCore) -> usize;

impl KvCache {
    /// Stages blocks for a copy down under one lock: the write-through backlog (if
    /// `write_through`) and up to `victims(core)` of the policy's next victims that no lower
    /// tier holds. Returns the batch, under read leases ([`StagedCopies`]: every block goes
    /// back when it is finished or dropped), and how many victims were examined (those
    /// already backed went to the ready list instead) and how many of them were staged.
    pub(crate) fn stage_copies(
        &self,
        write_through: bool,
        victims: VictimCount<'_>,
    ) -> Result<(StagedCopies<'_>, usize, usize)> {
        let arena = self.arena.as_deref().ok_or(Error::NoArena)?;
        let mut staged = Vec::new();
        let (examined, victims_staged) = {
            let mut core = lock(&self.core);
            if write_through {
                core.stage_committed(&mut staged);
            }
            let n = victims(&core);
            let before = staged.len();
            let examined = core.stage_victims(n, &mut staged);
            (examined, staged.len() - before)
        };
        Ok((StagedCopies::lease(self, arena, staged)?, examined, victims_staged))
    }

    /// An exclusive lease of a block being onboarded, for the worker that fills it; released
    /// before [`CacheCore::finish_onboard`] hands the block to the cache.
    pub(crate) fn onboard_page(&self, block: BlockId) -> Result<PageWrite<'_>> {
        self.arena.as_deref().ok_or(Error::NoArena)?.write(block)
    }
}

impl StageOwner for KvCache {
    fn end_copies(&self, done: &[(BlockId, CopyOutcome)]) -> Result<()> {
        lock(&self.core).pool.end_copies(done)
    }
}

/// Copy-on-write of a shared partial block into a freshly allocated one.
pub(super) fn copy_page(arena: Option<&crate::pool::Arena>, src: BlockId, dst: BlockId) -> Result<()> {
    let Some(arena) = arena else { return Ok(()) };
    if src == dst {
        return Err(Error::InvalidBlock { block: dst, capacity: arena.pages() });
    }
    arena.copy_page(src, dst)
}
