//! The prefix tree over cached blocks, kept for policies that want leaves evicted first.

use super::{BlockPool, BlockState, HASHED, HELD};
use crate::list::IndexList;
use crate::policy::EvictionPolicy;
use crate::pool::BlockId;
use crate::prefix::BlockHash;

/// No parent link.
const NO_PARENT: u32 = u32::MAX;

/// The prefix tree over cached blocks, so that eviction takes leaves first.
///
/// A block registered under a parent hash whose block its registrant holds is linked to that
/// block; a block with cached children is not offered to the policy when it becomes
/// evictable (it is `HELD`), and is offered ([`EvictionPolicy::readmit`]) when its last
/// child goes. Without this, a policy that does not follow release order (anything but LRU)
/// evicts prefix heads and strands their tails, cached but unreachable. Links carry the
/// parent's generation, bumped whenever a block's content is dropped, so a link to content
/// that is gone is recognised and ignored.
pub(super) struct Tree {
    parent: Vec<u32>,
    parent_gen: Vec<u32>,
    pub(super) children: Vec<u32>,
    generation: Vec<u32>,
    /// The held blocks, oldest first: taken (stranding their children) only when nothing else
    /// can be evicted, which happens while a child is pinned by a copy in flight. So every
    /// evictable block stays obtainable, and [`BlockPool::available`] stays exact.
    held_list: IndexList,
    /// Whether the policy wants leaves first ([`EvictionPolicy::prefers_leaves`]); if not,
    /// nothing is linked or held and the pool behaves as without a tree.
    pub(super) on: bool,
}

impl Tree {
    pub(super) fn new(capacity: usize, on: bool) -> Self {
        let capacity = if on { capacity } else { 0 };
        Self {
            on,
            parent: vec![NO_PARENT; capacity],
            parent_gen: vec![0; capacity],
            children: vec![0; capacity],
            generation: vec![0; capacity],
            held_list: IndexList::new(capacity),
        }
    }

    /// The live parent of `b`, if its link is still valid.
    #[inline]
    pub(super) fn parent_of(&self, b: usize) -> Option<usize> {
        let p = *self.parent.get(b)?;
        (p != NO_PARENT && self.generation[p as usize] == self.parent_gen[b]).then_some(p as usize)
    }

    /// Blocks held out of the policy.
    #[inline]
    pub(super) fn held(&self) -> usize {
        self.held_list.len()
    }

    /// Drops every link, once all content is gone (nothing is held then).
    pub(super) fn clear(&mut self) {
        debug_assert_eq!(self.held(), 0);
        for g in self.generation.iter_mut() {
            *g = g.wrapping_add(1);
        }
        self.parent.fill(NO_PARENT);
        self.children.fill(0);
    }

    pub(super) fn bytes_per_block(&self) -> usize {
        if self.on { 4 * std::mem::size_of::<u32>() + IndexList::bytes_per_element() } else { 0 }
    }
}

impl<P: EvictionPolicy> BlockPool<P> {
    /// A block without references that is still cached becomes evictable: offered to the
    /// policy, or held while cached children hang below it.
    #[inline]
    pub(super) fn offer(&mut self, b: BlockId) {
        if self.tree.on && self.tree.children[b.index()] > 0 {
            self.meta[b.index()].flags |= HELD;
            self.tree.held_list.push_back(b.0);
        } else {
            self.policy.insert(b);
        }
    }

    /// Takes an evictable block out of the policy (or out of the held set).
    #[inline]
    pub(super) fn unoffer(&mut self, b: BlockId) {
        if !self.unhold(b) {
            self.policy.remove(b);
        }
    }

    /// Takes `b` out of the held set; false if it was not held.
    #[inline]
    pub(super) fn unhold(&mut self, b: BlockId) -> bool {
        let m = &mut self.meta[b.index()];
        if m.flags & HELD == 0 {
            return false;
        }
        m.flags &= !HELD;
        self.tree.held_list.remove(b.0);
        true
    }

    /// The oldest held block, when nothing else can be evicted (its children are pinned).
    pub(super) fn pop_held(&mut self) -> Option<BlockId> {
        let b = BlockId(self.tree.held_list.front()?);
        self.unhold(b);
        Some(b)
    }

    /// `b`'s content is being dropped: it leaves its parent (which, if that was its last
    /// cached child and it is held, goes to the policy) and its own links die.
    pub(super) fn unlink_tree(&mut self, b: BlockId) {
        let i = b.index();
        if !self.tree.on {
            return;
        }
        if let Some(p) = self.tree.parent_of(i) {
            self.tree.children[p] -= 1;
            if self.tree.children[p] == 0 && self.unhold(BlockId(p as u32)) {
                self.policy.readmit(BlockId(p as u32));
            }
        }
        self.tree.parent[i] = NO_PARENT;
        self.tree.children[i] = 0;
        self.tree.generation[i] = self.tree.generation[i].wrapping_add(1);
    }

    /// Links a newly registered `b` below `parent` = (hash, block the registrant holds), if
    /// that block is the one cached under the hash. Whoever holds `b` then holds its parent
    /// too (prefix walks and forks take whole chains), so a held parent's children are
    /// evictable, except while pinned by a copy.
    pub(super) fn link_parent(&mut self, b: BlockId, parent: Option<(BlockHash, BlockId)>) {
        if !self.tree.on {
            return;
        }
        let Some((h, p)) = parent else { return };
        let Some(pm) = self.meta.get(p.index()) else { return };
        if p == b || pm.state != BlockState::InUse || pm.flags & HASHED == 0 || pm.hash() != h {
            return;
        }
        let (i, pi) = (b.index(), p.index());
        self.tree.parent[i] = p.0;
        self.tree.parent_gen[i] = self.tree.generation[pi];
        self.tree.children[pi] += 1;
    }
}
