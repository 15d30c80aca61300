//! Eviction policies: which cached-evictable block to give up first.
//!
//! Every tier keeps its evictable entries (refcount zero, content still valid) in an
//! [`EvictionPolicy`]. The tier tells the policy when an entry takes new content
//! ([`EvictionPolicy::on_register`]), when it becomes evictable ([`EvictionPolicy::insert`]),
//! when it is taken back by a prefix hit ([`EvictionPolicy::remove`] then
//! [`EvictionPolicy::on_hit`]), and asks it for a victim when it needs space
//! ([`EvictionPolicy::pop_victim`]). Every operation is O(1) (amortised for the second-chance
//! moves of [`S3Fifo`]).
//!
//! The policies:
//! - [`Lru`]: least recently released first (the baseline every serving stack uses).
//! - [`S3Fifo`]: a small probation FIFO for new content, a main FIFO with second chances, and a
//!   ghost of recent evictions (Yang et al., SOSP '23). Scan resistant.
//! - [`Arc`]: adaptive replacement (Megiddo & Modha, FAST '03): recency and frequency lists
//!   whose split adapts to hits in ghosts of both.
//!
//! [`PolicyKind`] names them for configs and CLIs; [`AnyPolicy`] dispatches without a vtable.
//! Belady's offline OPT exists only in the replay tool ([`crate::replay::sim`]), where the future
//! is known.

mod any;
mod arc;
mod ghost;
mod lru;
mod s3fifo;

pub use any::{AnyPolicy, PolicyKind};
pub use arc::Arc;
pub use lru::Lru;
pub use s3fifo::S3Fifo;

use crate::pool::BlockId;

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
