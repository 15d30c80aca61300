//! The pool's invariant check: a debugging aid for tests and fuzzing, kept apart from the
//! operations it checks.

use super::{BlockPool, BlockState, CLEAN, COLD, HASHED, HELD, IN_FLIGHT, READY, REJECTED};
use crate::policy::EvictionPolicy;
use crate::pool::BlockId;

impl<P: EvictionPolicy> BlockPool<P> {
    /// Checks every pool invariant; returns a description of the first one broken. A
    /// debugging aid: O(capacity), not for the hot path.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        let (mut free, mut used, mut evictable, mut hashed, mut held) = (0, 0, 0, 0, 0);
        let mut children = vec![0u32; self.meta.len()];
        let mut queued = vec![false; self.meta.len()];
        for i in self.free.iter() {
            match queued.get_mut(i as usize) {
                Some(q) if !*q => *q = true,
                _ => return Err(format!("BlockId({i}) queued twice or out of range in the free queue")),
            }
        }
        for (i, m) in self.meta.iter().enumerate() {
            let b = BlockId(i as u32);
            let in_free = queued[i];
            match m.state {
                BlockState::Free => {
                    free += 1;
                    if m.refcount != 0 || !in_free || m.flags & HASHED != 0 {
                        return Err(format!("{b:?} free but refcount {} / in queue {in_free} / hashed", m.refcount));
                    }
                }
                BlockState::InUse => {
                    used += 1;
                    if m.refcount == 0 || in_free {
                        return Err(format!("{b:?} in use with refcount 0 or in the free queue"));
                    }
                }
                BlockState::Evictable => {
                    evictable += 1;
                    if m.refcount != 0 || in_free || m.flags & HASHED == 0 || m.flags & IN_FLIGHT != 0 {
                        return Err(format!("{b:?} evictable but referenced, queued, staged or unhashed"));
                    }
                    if m.flags & READY != 0 && m.flags & (CLEAN | REJECTED | COLD) == 0 {
                        return Err(format!("{b:?} ready for eviction but neither backed, declined nor cold"));
                    }
                    if m.flags & HELD != 0
                        && (m.flags & READY != 0 || self.tree.children.get(i).is_none_or(|&c| c == 0))
                    {
                        return Err(format!("{b:?} held but ready or without children"));
                    }
                }
            }
            if m.flags & HASHED != 0 {
                hashed += 1;
                if self.lookup(m.hash()) != Some(b) {
                    return Err(format!("{b:?} hashed but the index points elsewhere"));
                }
                if let Some(p) = self.tree.parent_of(i) {
                    children[p] += 1;
                    if self.meta[p].flags & HASHED == 0 {
                        return Err(format!("{b:?} linked below unhashed BlockId({p})"));
                    }
                }
            } else if self.tree.children.get(i).is_some_and(|&c| c != 0) || self.tree.parent_of(i).is_some() {
                return Err(format!("{b:?} unhashed but linked in the prefix tree"));
            }
            if m.flags & HELD != 0 {
                held += 1;
            }
        }
        if (self.tree.on && children != self.tree.children) || held != self.tree.held() {
            return Err("prefix tree child counts or held count out of date".into());
        }
        if free != self.free.len() || evictable != self.num_evictable() || used != self.in_use {
            return Err(format!(
                "counts: free {free}/{} evictable {evictable}/{} used {used}/{}",
                self.free.len(),
                self.num_evictable(),
                self.in_use
            ));
        }
        if free + used + evictable != self.capacity() || hashed != self.index.len() {
            return Err(format!("states do not sum to capacity or index size {} != {hashed}", self.index.len()));
        }
        Ok(())
    }
}
