//! The G1 fast pool: page memory ([`Arena`]) and block bookkeeping ([`BlockPool`]).

mod arena;
mod block_pool;
pub(crate) mod list;
mod staged;

pub use arena::{Arena, PageRead, PageWrite};
pub(crate) use arena::{METADATA_BYTES_PER_BLOCK, check_memory};
pub use block_pool::{BlockPool, BlockState};
pub(crate) use staged::{CopyOutcome, StageOwner, StagedCopies};

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
