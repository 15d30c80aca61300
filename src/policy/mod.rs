//! Eviction policies: which cached-evictable block to give up first.
//!
//! Every tier keeps its evictable entries (refcount zero, content still valid) in an
//! [`EvictionPolicy`]. The tier tells the policy when an entry takes new content
//! ([`EvictionPolicy::on_register`]), when it becomes evictable ([`EvictionPolicy::insert`]),
//! when it is taken back by a prefix hit ([`EvictionPolicy::remove`] then
//! [`EvictionPolicy::on_hit`]), and asks it for a victim when it needs space
//! ([`EvictionPolicy::pop_victim`]). Every operation is O(1) (amortised for the second-chance
//! moves of [`S3Fifo`], a constant number of samples for [`Lhd`]).
//!
//! The policies:
//! - [`Lru`]: least recently released first (the baseline every serving stack uses).
//! - [`S3Fifo`]: a small probation FIFO for new content, a main FIFO with second chances, and a
//!   ghost of recent evictions (Yang et al., SOSP '23). Scan resistant.
//! - [`Arc`]: adaptive replacement (Megiddo & Modha, FAST '03): recency and frequency lists
//!   whose split adapts to hits in ghosts of both.
//! - [`Lhd`]: least hit density (Beckmann et al., NSDI '18): learns, per age and hit count, the
//!   hits an entry can still expect per unit of space-time, and evicts the lowest of a sample.
//! - [`Adaptive`]: LRU or LHD, whichever scores more hits on miniature simulations of both over
//!   a hash-sampled subset of the tier's keys (SHARDS-style), switching with hysteresis.
//!
//! [`PolicyKind`] names them for configs and CLIs; [`AnyPolicy`] dispatches without a vtable.
//! Belady's offline OPT exists only in the replay tool (`kvtier_cli::replay::sim`, in the
//! workspace's `kvtier-cli` crate), where the future is known.

mod adaptive;
mod any;
mod arc;
mod ghost;
mod lhd;
mod lru;
mod s3fifo;
mod shadow;

pub use adaptive::Adaptive;
pub use any::{AnyPolicy, PolicyKind};
pub use arc::Arc;
pub use lhd::Lhd;
pub use lru::Lru;
pub use s3fifo::S3Fifo;
pub use shadow::ShadowTotals;

use crate::ids::BlockId;

/// Chooses victims among evictable entries. Entries are indices `0..capacity` of one tier.
///
/// Callers may call these in any order; a policy never panics on an unexpected sequence
/// (e.g. removing an entry it does not hold is a no-op).
pub trait EvictionPolicy: Send {
    /// Short name for reports ("lru", ...).
    fn name(&self) -> &'static str;
    /// `block` took new content identified by `key` (a fold of its block hash). Policies that
    /// remember evicted keys (ghosts) use this to recognise content that comes back. An entry
    /// inserted without a registration is treated as new content with an unknown key.
    fn on_register(&mut self, _block: BlockId, _key: u64) {}
    /// `block` became evictable (it was released by its last user). Called in release order;
    /// a sequence releases its blocks tail first.
    fn insert(&mut self, block: BlockId);
    /// `block` became evictable again without being used: in a prefix tree, a node whose last
    /// child was just evicted. It is as old as that child, so policies place it at the cold end
    /// of its list. Defaults to [`EvictionPolicy::insert`].
    fn readmit(&mut self, block: BlockId) {
        self.insert(block);
    }
    /// `block` is no longer evictable (revived by a prefix hit, or invalidated).
    fn remove(&mut self, block: BlockId);
    /// Picks a victim, removes it from the policy and returns it. Its content is gone.
    fn pop_victim(&mut self) -> Option<BlockId>;
    /// A prefix hit used `block` (whether it was evictable or already in use).
    fn on_hit(&mut self, _block: BlockId) {}
    /// `block`'s content was dropped outside [`EvictionPolicy::pop_victim`] (it is not evictable
    /// now); its per-entry state ends.
    fn on_forget(&mut self, _block: BlockId) {}
    /// Whether a pool should keep prefix-tree parents out of this policy until their cached
    /// children are gone (leaves first). LRU does not need it: a sequence releases its blocks
    /// tail first and holds its whole prefix while in use, so LRU order already takes leaves
    /// first. Policies that rank by anything else do.
    fn prefers_leaves(&self) -> bool {
        true
    }
    /// Number of evictable entries tracked.
    fn len(&self) -> usize;
    /// True when nothing is evictable.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of policy state per entry, for the metadata report.
    fn bytes_per_entry(&self) -> usize;
}

/// Folds a 128-bit block hash into the 64-bit key policies remember.
///
/// ```
/// use kvtier::policy::hash_key;
/// assert_ne!(hash_key(1 << 64), hash_key(1));
/// ```
#[inline]
pub fn hash_key(hash: u128) -> u64 {
    (hash as u64) ^ ((hash >> 64) as u64).rotate_left(29)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Random call sequences (including ones a tier never makes) against a model of the
    /// evictable set: a victim is always an evictable entry, `len` always matches, draining
    /// returns every entry once, and nothing panics.
    #[test]
    fn every_policy_tracks_exactly_the_evictable_set() {
        for kind in PolicyKind::ALL {
            for seed in 0..30u64 {
                let n = 1 + (seed as usize % 7) * 5;
                let mut p = kind.build_for(n, (n / 2).max(1));
                let mut model = BTreeSet::new();
                let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                let mut next = |bound: u64| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    state % bound
                };
                for _ in 0..2000 {
                    let b = BlockId(next(n as u64 + 1) as u32); // sometimes out of range
                    let valid = b.index() < n;
                    match next(8) {
                        0 => {
                            p.on_register(b, next(4 * n as u64));
                            model.remove(&b.0);
                        }
                        1 | 2 => {
                            p.insert(b);
                            if valid {
                                model.insert(b.0);
                            }
                        }
                        3 => {
                            p.readmit(b);
                            if valid {
                                model.insert(b.0);
                            }
                        }
                        4 => {
                            p.remove(b);
                            model.remove(&b.0);
                        }
                        5 => p.on_hit(b),
                        6 => {
                            p.on_forget(b);
                            model.remove(&b.0);
                        }
                        _ => match p.pop_victim() {
                            Some(v) => assert!(model.remove(&v.0), "{kind:?} seed {seed}: {v:?} was not evictable"),
                            None => assert!(model.is_empty(), "{kind:?} seed {seed}: no victim among {model:?}"),
                        },
                    }
                    assert_eq!(p.len(), model.len(), "{kind:?} seed {seed}");
                }
                while let Some(v) = p.pop_victim() {
                    assert!(model.remove(&v.0));
                }
                assert!(model.is_empty() && p.is_empty(), "{kind:?} seed {seed}");
            }
        }
    }

    /// Hits of a flat cache of `slots` entries replaying `keys` with policy `p` (also used by
    /// the adaptive policy's tests).
    pub(super) fn flat_hits(p: &mut impl EvictionPolicy, slots: usize, keys: &[u64]) -> usize {
        let mut slot_of = std::collections::HashMap::new();
        let mut key_of = vec![None; slots];
        let mut hits = 0;
        for &k in keys {
            if let Some(&s) = slot_of.get(&k) {
                hits += 1;
                p.remove(BlockId(s));
                p.on_hit(BlockId(s));
                p.insert(BlockId(s));
                continue;
            }
            let s = match key_of.iter().position(Option::is_none) {
                Some(s) => s as u32,
                None => p.pop_victim().expect("a full flat cache has a victim").0,
            };
            if let Some(old) = key_of[s as usize].replace(k) {
                slot_of.remove(&old);
            }
            slot_of.insert(k, s);
            p.on_register(BlockId(s), k);
            p.insert(BlockId(s));
        }
        hits
    }

    #[test]
    fn lhd_learns_a_loop_that_lru_always_misses() {
        // 100 keys in a loop through 80 slots: LRU evicts each key just before it comes back.
        let keys: Vec<u64> = (0..200).flat_map(|_| 1..=100).collect();
        assert_eq!(flat_hits(&mut PolicyKind::Lru.build(80), 80, &keys), 0);
        let lhd = flat_hits(&mut PolicyKind::Lhd.build(80), 80, &keys);
        assert!(lhd > keys.len() / 4, "LHD hit {lhd} of {}", keys.len());
    }

    #[test]
    fn s3fifo_sends_ghost_hits_to_main_and_arc_adapts() {
        // S3-FIFO: a key evicted from the small queue comes back straight into the main queue,
        // so it outlives new content.
        let mut s = S3Fifo::new(10);
        s.on_register(BlockId(0), 42);
        s.insert(BlockId(0));
        assert_eq!(s.pop_victim(), Some(BlockId(0)));
        s.on_register(BlockId(0), 42); // back: main queue
        s.insert(BlockId(0));
        for b in 1..4 {
            s.on_register(BlockId(b), 100 + b as u64);
            s.insert(BlockId(b));
        }
        // The small queue (3 resident, target 1) goes first.
        assert_eq!(s.pop_victim(), Some(BlockId(1)));
        // ARC: a hit in the recency ghost grows the recency target.
        let mut a = Arc::new(10);
        a.on_register(BlockId(0), 7);
        a.insert(BlockId(0));
        assert_eq!(a.pop_victim(), Some(BlockId(0)));
        assert_eq!(a.target_recent(), 0.0);
        a.on_register(BlockId(1), 7);
        assert!(a.target_recent() >= 1.0);
    }
}
