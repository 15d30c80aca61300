//! The G1 fast pool: page memory ([`Arena`]) and block bookkeeping ([`BlockPool`]).

mod arena;
mod block_pool;
mod staged;

pub use arena::{Arena, PageRead, PageWrite};
pub(crate) use arena::{METADATA_BYTES_PER_BLOCK, check_memory};
pub use block_pool::{BlockPool, BlockState};
pub(crate) use staged::{CopyOutcome, StageOwner, StagedCopies};

pub use crate::ids::BlockId;
