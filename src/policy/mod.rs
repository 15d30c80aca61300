//! Eviction policies: which cached-evictable block to give up first.
//!
//! Every tier keeps its evictable entries (refcount zero, content still valid) in an
//! [`EvictionPolicy`]. The tier tells the policy when an entry becomes evictable
//! ([`EvictionPolicy::insert`]), when it is taken back by a prefix hit
//! ([`EvictionPolicy::remove`]), and asks it for a victim when it needs space
//! ([`EvictionPolicy::pop_victim`]). Every operation must be O(1).

mod lru;

pub use lru::Lru;

use crate::pool::BlockId;

/// Chooses victims among evictable entries. Entries are indices `0..capacity` of one tier.
pub trait EvictionPolicy: Send {
    /// Short name for reports ("lru", ...).
    fn name(&self) -> &'static str;
    /// `block` became evictable (it was released by its last user). Called in release order;
    /// a sequence releases its blocks tail first.
    fn insert(&mut self, block: BlockId);
    /// `block` is no longer evictable (revived by a prefix hit, or invalidated).
    fn remove(&mut self, block: BlockId);
    /// Picks a victim, removes it from the policy and returns it.
    fn pop_victim(&mut self) -> Option<BlockId>;
    /// A prefix hit touched `block` while it was in use (no-op for recency-only policies).
    fn on_hit(&mut self, _block: BlockId) {}
    /// Number of evictable entries tracked.
    fn len(&self) -> usize;
    /// True when nothing is evictable.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Bytes of policy state per entry, for the metadata report.
    fn bytes_per_entry(&self) -> usize;
}
