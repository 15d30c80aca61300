//! What a [`SlotStore`](super::SlotStore) agrees to write: an admission filter (seen-twice)
//! and a write budget, applied when a store job is submitted.

use std::collections::{HashSet, VecDeque};

use crate::offload::WriteBudget;
use crate::prefix::BlockHash;

/// Which keys of a store job are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum StoreAdmission {
    /// Every key (default).
    #[default]
    All,
    /// A key is written the second time a store asks for it within the last `capacity` distinct
    /// first requests (a ghost list of hashes, 16 bytes each plus the set's overhead): pages
    /// computed once and never again never cost an SSD write.
    SeenTwice,
}

/// The admission filter and write budget of one store, under its state lock.
#[derive(Debug)]
pub(super) struct Gate {
    admission: StoreAdmission,
    ghosts: HashSet<BlockHash>,
    ghost_order: VecDeque<BlockHash>,
    ghost_capacity: usize,
    /// Bytes per second, the engine's G3 token bucket (one second of burst).
    budget: WriteBudget,
}

/// Why a key was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Admit,
    FirstSighting,
    OverBudget,
}

impl Gate {
    pub(super) fn new(admission: StoreAdmission, ghost_capacity: usize, budget: Option<u64>) -> Self {
        Self {
            admission,
            ghosts: HashSet::new(),
            ghost_order: VecDeque::new(),
            ghost_capacity: ghost_capacity.max(1),
            budget: WriteBudget::new(budget),
        }
    }

    /// Whether a page of `page_bytes` under `key` may be written now (a "yes" spends budget).
    pub(super) fn admit(&mut self, key: BlockHash, page_bytes: u64) -> Verdict {
        if self.admission == StoreAdmission::SeenTwice && !self.ghosts.remove(&key) {
            if self.ghost_order.len() >= self.ghost_capacity
                && let Some(old) = self.ghost_order.pop_front()
            {
                self.ghosts.remove(&old);
            }
            self.ghosts.insert(key);
            self.ghost_order.push_back(key);
            return Verdict::FirstSighting;
        }
        if !self.budget.try_take(page_bytes) {
            return Verdict::OverBudget;
        }
        Verdict::Admit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_twice_admits_the_second_request_only() {
        let mut gate = Gate::new(StoreAdmission::SeenTwice, 2, None);
        assert_eq!(gate.admit(BlockHash(1), 10), Verdict::FirstSighting);
        assert_eq!(gate.admit(BlockHash(1), 10), Verdict::Admit);
        assert_eq!(gate.admit(BlockHash(1), 10), Verdict::FirstSighting);
        // the ghost list is bounded: 2 and 3 push 1 out
        gate.admit(BlockHash(2), 10);
        gate.admit(BlockHash(3), 10);
        assert_eq!(gate.admit(BlockHash(1), 10), Verdict::FirstSighting);
    }

    #[test]
    fn budget_caps_bytes_per_second() {
        let mut gate = Gate::new(StoreAdmission::All, 1, Some(1000));
        let admitted = (0..20).filter(|i| gate.admit(BlockHash(*i), 100) == Verdict::Admit).count();
        assert_eq!(admitted, 10);
    }
}
