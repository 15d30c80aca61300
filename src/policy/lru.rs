//! Least-recently-released first, over an intrusive list.

use super::EvictionPolicy;
use crate::ids::BlockId;
use crate::list::IndexList;

/// LRU eviction: the entry released longest ago goes first.
///
/// A sequence releases its blocks tail first, so within one prefix the tail is older than the
/// head and is evicted before it: the head (shared by more requests) survives longest.
///
/// ```
/// use kvtier::policy::{EvictionPolicy, Lru};
/// use kvtier::BlockId;
/// let mut lru = Lru::new(4);
/// lru.insert(BlockId(2));
/// lru.insert(BlockId(0));
/// lru.remove(BlockId(2));
/// assert_eq!(lru.pop_victim(), Some(BlockId(0)));
/// assert_eq!(lru.pop_victim(), None);
/// ```
pub struct Lru {
    order: IndexList,
}

impl std::fmt::Debug for Lru {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lru").finish_non_exhaustive()
    }
}

impl Lru {
    /// An empty LRU over entries `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        Self { order: IndexList::new(capacity) }
    }
}

impl EvictionPolicy for Lru {
    fn name(&self) -> &'static str {
        "lru"
    }
    #[inline]
    fn insert(&mut self, block: BlockId) {
        self.order.push_back(block.0);
    }
    #[inline]
    fn on_register(&mut self, block: BlockId, _key: u64) {
        self.order.remove(block.0); // new content is not evictable until released
    }
    #[inline]
    fn on_forget(&mut self, block: BlockId) {
        self.order.remove(block.0);
    }
    #[inline]
    fn readmit(&mut self, block: BlockId) {
        self.order.push_front(block.0);
    }
    #[inline]
    fn remove(&mut self, block: BlockId) {
        self.order.remove(block.0);
    }
    #[inline]
    fn pop_victim(&mut self) -> Option<BlockId> {
        self.order.pop_front().map(BlockId)
    }
    fn prefers_leaves(&self) -> bool {
        false
    }
    #[inline]
    fn len(&self) -> usize {
        self.order.len()
    }
    fn bytes_per_entry(&self) -> usize {
        IndexList::bytes_per_element()
    }
}
