//! What the offload engine needs from a pool: staging eviction victims (and write-through
//! blocks) for a copy down while they stay shareable, the ready queue of victims a lower tier
//! already holds, and IO marks for blocks filled outside the owner's lock.

use super::{BlockPool, BlockState, CLEAN, COLD, HASHED, IN_FLIGHT, QUEUED, READY, REJECTED};
use crate::error::{BlockCondition, Error, Result};
use crate::policy::EvictionPolicy;
use crate::pool::BlockId;
use crate::prefix::BlockHash;

impl<P: EvictionPolicy> BlockPool<P> {
    /// Prepares the next victims for eviction without loss: pops up to `n` victims from the
    /// policy; those already backed below move to the ready list (evicted first), the others
    /// are pinned (kept in the index, shareable, but not evictable) and returned in `out` for
    /// the caller to copy down. Each returned block must be handed back with
    /// [`BlockPool::finish_staged`]. Returns the number of victims examined.
    pub fn stage_victims(&mut self, n: usize, out: &mut Vec<(BlockId, BlockHash)>) -> usize {
        let mut seen = 0;
        while seen < n {
            // Leaves first; then blocks held for their children (which may be staged or
            // ready themselves: a copy down does not wait for the eviction order).
            let Some(b) = self.policy.pop_victim().or_else(|| self.pop_held()) else { break };
            seen += 1;
            let m = &mut self.meta[b.index()];
            if m.flags & (CLEAN | REJECTED) != 0 {
                // backed: evicting it loses nothing; declined: the tier below chose not to
                // keep it (admission, or its own eviction), so copying it again would only
                // push out something the tier below preferred
                self.ready_push(b);
            } else {
                m.state = BlockState::InUse;
                m.refcount = 1;
                m.flags |= IN_FLIGHT;
                self.in_use += 1;
                out.push((b, m.hash()));
            }
        }
        seen
    }

    /// Pins a hashed block so its page can be copied down (write-through). Returns its hash,
    /// or `None` if the block is not hashed, already backed or already staged.
    pub fn stage_block(&mut self, b: BlockId) -> Result<Option<BlockHash>> {
        let m = *self.meta(b)?;
        if m.flags & HASHED == 0 || m.flags & (CLEAN | IN_FLIGHT) != 0 || m.state == BlockState::Free {
            return Ok(None);
        }
        self.acquire_block(b)?;
        self.meta[b.index()].flags |= IN_FLIGHT;
        Ok(Some(m.hash()))
    }

    /// Ends a copy started by [`BlockPool::stage_victims`] or [`BlockPool::stage_block`]:
    /// `backed` says whether the lower tier now holds the content. The pin is released; a
    /// block left without references goes to the ready list if backed, else back to the policy.
    pub fn finish_staged(&mut self, b: BlockId, backed: bool) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.flags & IN_FLIGHT == 0 || m.state != BlockState::InUse {
            return Err(self.wrong_state(b, BlockCondition::Copying));
        }
        m.flags &= !IN_FLIGHT;
        if backed {
            m.flags |= CLEAN;
        }
        m.refcount -= 1;
        if m.refcount == 0 {
            self.in_use -= 1;
            m.state = BlockState::Evictable;
            if backed {
                self.ready_push(b);
            } else {
                self.offer(b);
            }
        }
        Ok(())
    }

    /// Ends a copy whose target declined the content (admission): the block is released to
    /// the ready list without being backed, so it is evicted before the policy's victims.
    pub fn decline_staged(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.flags & IN_FLIGHT == 0 || m.state != BlockState::InUse {
            return Err(self.wrong_state(b, BlockCondition::Copying));
        }
        m.flags = (m.flags & !IN_FLIGHT) | REJECTED;
        m.refcount -= 1;
        if m.refcount == 0 {
            self.in_use -= 1;
            m.state = BlockState::Evictable;
            self.ready_push(b);
        }
        Ok(())
    }

    /// Ends the staged copies of `done`, each with its outcome (see [`crate::pool::StagedCopies`]).
    pub(crate) fn end_copies(&mut self, done: &[(BlockId, crate::pool::CopyOutcome)]) -> Result<()> {
        use crate::pool::CopyOutcome;
        let mut first_error = None;
        for &(b, outcome) in done {
            let ended = match outcome {
                CopyOutcome::Kept => self.finish_staged(b, false),
                CopyOutcome::Backed => self.finish_staged(b, true),
                CopyOutcome::Declined => self.decline_staged(b),
            };
            // Every page is handed back even if one fails.
            if let Err(e) = ended {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Marks a block's content as backed (or not) by a lower tier.
    pub fn set_backed(&mut self, b: BlockId, backed: bool) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if !backed {
            return self.unback(b);
        }
        if m.flags & HASHED != 0 {
            m.flags |= CLEAN;
        }
        Ok(())
    }

    /// A tier above took `b`'s content back and serves it (promotion): this copy leaves the
    /// policy for the ready queue, evicted before any policy victim and not counted as a loss.
    /// It stays cached: if the tier above gives the content up again, it reuses this copy
    /// ([`BlockPool::acquire_block`] clears the mark; a release then offers it as just used).
    /// Returns false, changing nothing, unless `b` is evictable and not ready already.
    pub fn make_cold(&mut self, b: BlockId) -> Result<bool> {
        let m = *self.meta(b)?;
        if m.state != BlockState::Evictable || m.flags & READY != 0 {
            return Ok(false);
        }
        self.unoffer(b);
        self.meta[b.index()].flags |= COLD;
        self.ready_push(b);
        Ok(true)
    }

    /// Re-offers an evictable block to the policy as just used (a cold mark cleared): the
    /// copy the tier above leaned on is gone, so this one serves the content now. Returns false,
    /// changing nothing, unless `b` is evictable (in use, free or in flight stay as they are).
    pub fn touch(&mut self, b: BlockId) -> Result<bool> {
        if self.meta(b)?.state != BlockState::Evictable {
            return Ok(false);
        }
        // Taking and dropping a reference re-offers the block as just used; neither can fail
        // on a block found evictable here.
        self.acquire_block(b)?;
        self.release(b)?;
        Ok(true)
    }

    /// Marks an in-use block as being filled by an IO outside the owner's lock.
    pub fn begin_io(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.state != BlockState::InUse || m.flags & (IN_FLIGHT | HASHED) != 0 {
            return Err(self.wrong_state(b, BlockCondition::Writable));
        }
        m.flags |= IN_FLIGHT;
        Ok(())
    }

    /// Ends [`BlockPool::begin_io`] (the reference stays with the caller).
    pub fn end_io(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.flags & IN_FLIGHT == 0 || m.flags & HASHED != 0 {
            return Err(self.wrong_state(b, BlockCondition::Onboarding));
        }
        m.flags &= !IN_FLIGHT;
        Ok(())
    }

    /// True when a block is pinned by a copy in flight.
    pub fn is_staged(&self, b: BlockId) -> Result<bool> {
        Ok(self.meta(b)?.flags & IN_FLIGHT != 0)
    }

    /// True when a block's content is backed by a lower tier.
    pub fn is_backed(&self, b: BlockId) -> Result<bool> {
        Ok(self.meta(b)?.flags & CLEAN != 0)
    }

    #[inline]
    pub(super) fn ready_push(&mut self, b: BlockId) {
        let m = &mut self.meta[b.index()];
        if m.flags & READY != 0 {
            return;
        }
        m.flags |= READY;
        self.ready_len += 1;
        if m.flags & QUEUED == 0 {
            m.flags |= QUEUED;
            // Cannot fail: every block is physically queued at most once (QUEUED).
            self.ready.push_back(b.0);
        }
    }

    #[inline]
    pub(super) fn ready_remove(&mut self, b: BlockId) -> bool {
        let m = &mut self.meta[b.index()];
        if m.flags & READY == 0 {
            return false;
        }
        m.flags &= !READY;
        self.ready_len -= 1;
        true
    }

    #[inline]
    pub(super) fn ready_pop(&mut self) -> Option<BlockId> {
        while self.ready_len > 0 {
            let i = self.ready.pop_front()?;
            let m = &mut self.meta[i as usize];
            m.flags &= !QUEUED;
            if m.flags & READY != 0 {
                m.flags &= !READY;
                self.ready_len -= 1;
                return Some(BlockId(i));
            }
        }
        None
    }

    /// Starts (or stops) recording the hashes this pool evicts.
    pub fn log_evictions(&mut self, on: bool) {
        self.evicted = on.then(Vec::new);
    }

    /// Moves the hashes evicted since the last call into `out`.
    pub fn drain_evicted(&mut self, out: &mut Vec<BlockHash>) {
        if let Some(log) = self.evicted.as_mut() {
            out.append(log);
        }
    }

    /// The lower tier evicted its copy of `b`: evicting `b` is no longer free, and is counted
    /// as a loss when it happens. The block is marked declined rather than copied down again:
    /// the tier below chose to keep something else (its LRU put this page last), and copying
    /// it back would evict that in turn, for ever when the tier below is the smaller one. A
    /// prefix hit that revives the block clears the mark, so a block in use again is offered
    /// to the tier below again.
    ///
    /// A block still in use is only marked unbacked: the tier below let its copy go because
    /// this one serves it (mostly-exclusive tiers), and once the block is released and
    /// evicted it is copied down again (demoted) like any victim. That happens once per use,
    /// never in a loop of maintenance passes.
    pub fn unback(&mut self, b: BlockId) -> Result<()> {
        let capacity = self.meta.len();
        let m = self.meta.get_mut(b.index()).ok_or(Error::InvalidBlock { block: b, capacity })?;
        if m.flags & CLEAN == 0 {
            return Ok(());
        }
        m.flags &= !CLEAN;
        if m.state != BlockState::InUse {
            m.flags |= REJECTED;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::*;

    #[test]
    fn staged_victims_are_pinned_then_evicted_first() {
        let mut p = BlockPool::new(4).unwrap();
        let mut v = vec![];
        p.allocate(4, &mut v).unwrap();
        for (i, b) in v.iter().enumerate() {
            p.register(*b, BlockHash(i as u128 + 1), None, 16).unwrap();
        }
        p.release_all(v.iter().rev().copied()).unwrap();
        let mut staged = vec![];
        assert_eq!(p.stage_victims(2, &mut staged), 2);
        assert_eq!(staged.len(), 2);
        // staged blocks are still shareable but not evictable
        assert_eq!(p.num_evictable(), 2);
        assert_eq!(p.lookup(staged[0].1), Some(staged[0].0));
        assert!(p.is_staged(staged[0].0).unwrap());
        p.check_invariants().unwrap();
        // a prefix hit during the copy shares the block
        p.acquire_block(staged[1].0).unwrap();
        p.finish_staged(staged[0].0, true).unwrap();
        p.finish_staged(staged[1].0, true).unwrap();
        assert!(matches!(
            p.finish_staged(staged[0].0, true),
            Err(Error::WrongBlockState { needed: BlockCondition::Copying, .. })
        ));
        assert_eq!(p.num_ready(), 1);
        p.check_invariants().unwrap();
        // the backed block goes first, and it is not counted as a loss
        let b = p.allocate_one().unwrap();
        assert_eq!(b, staged[0].0);
        assert_eq!(p.counters().unbacked_evictions, 0);
        let _ = p.allocate_one().unwrap();
        assert_eq!(p.counters().unbacked_evictions, 1);
        p.release(staged[1].0).unwrap();
        // a released block is recently used again: it goes back to the policy, still backed,
        // and the next staging pass moves it to the ready list without copying
        assert_eq!(p.num_ready(), 0);
        assert!(p.is_backed(staged[1].0).unwrap());
        let mut again = vec![];
        assert_eq!(p.stage_victims(4, &mut again), 2);
        assert_eq!(again.len(), 1, "only the unbacked victim needs a copy");
        assert_eq!(p.num_ready(), 1);
        p.check_invariants().unwrap();
        p.finish_staged(again[0].0, false).unwrap();
        p.check_invariants().unwrap();
    }

    #[test]
    fn failed_copy_returns_to_policy_and_write_through_staging() {
        let mut p = BlockPool::new(2).unwrap();
        let a = p.allocate_one().unwrap();
        assert_eq!(p.stage_block(a).unwrap(), None, "unhashed blocks are not staged");
        p.register(a, BlockHash(9), None, 16).unwrap();
        assert_eq!(p.stage_block(a).unwrap(), Some(BlockHash(9)));
        assert_eq!(p.stage_block(a).unwrap(), None, "already staged");
        p.release(a).unwrap();
        assert_eq!(p.state(a).unwrap(), BlockState::InUse, "the copy still pins it");
        p.finish_staged(a, false).unwrap();
        assert_eq!(p.state(a).unwrap(), BlockState::Evictable);
        assert_eq!(p.num_ready(), 0);
        p.check_invariants().unwrap();
    }
}
