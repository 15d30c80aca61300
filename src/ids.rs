//! Identifiers at the bottom of the crate: every layer above (policies, pool, tiers, errors)
//! names blocks by these, and none of them imports the pool to do so.

/// Index of a block (page) in the fast pool. Never a raw pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, bytemuck::Pod, bytemuck::Zeroable)]
#[repr(transparent)]
pub struct BlockId(pub u32);

impl BlockId {
    /// The id as an array index.
    #[inline(always)]
    pub fn index(self) -> usize {
        self.0 as usize
    }
}
