//! # kvtier
//!
//! kvtier manages the key/value cache of an LLM inference server the way PagedAttention does:
//! KV lives in fixed-size pages ("blocks") of a fast pool (G1, standing in for GPU HBM), every
//! request owns an ordered page table of [`BlockId`]s, and full blocks are content-addressed by a
//! chained [`BlockHash`] so that requests with a common prefix share pages instead of recomputing
//! them.
//!
//! ## Lifecycle of a block
//! 1. **free**: in the free queue, holds nothing.
//! 2. **in use**: allocated to one or more sequences (refcount >= 1).
//! 3. **full and hashed**: once the runtime has written all `block_size` tokens and committed
//!    them, the block is registered under its [`BlockHash`] and can be shared by a prefix hit.
//! 4. **cached-evictable**: refcount fell to 0 but the content is kept, in eviction order; a
//!    prefix hit revives it.
//! 5. **evicted**: reused for new data; its hash leaves the index (an event tells routers).
//!
//! ## How a runtime drives it
//! 1. [`KvCache::add_sequence`] with the prompt: the cached prefix is shared, the rest allocated.
//! 2. [`KvCache::append_tokens`] for each decode token (may report a copy-on-write).
//! 3. [`KvCache::export_batch`] gives flat block tables / slot mappings for the kernel.
//! 4. [`KvCache::commit`] after the step registers the blocks that became full.
//! 5. [`KvCache::free`] when the request ends: blocks become evictable, tail first.
//!
//! ```
//! use kvtier::{CacheConfig, ExtraKeys, KvCache, KvLayout};
//! let layout = KvLayout::new(2, 2, 8, kvtier::Dtype::F16, 4)?;
//! let cache = KvCache::new(CacheConfig::new(layout, 64))?;
//! let prompt: Vec<u32> = (0..10).collect();
//! let a = cache.add_sequence(&prompt, &ExtraKeys::default())?;
//! assert_eq!(a.cached_tokens, 0);
//! cache.commit(a.seq)?; // the runtime ran prefill: blocks 0 and 1 are full
//! let b = cache.add_sequence(&prompt, &ExtraKeys::default())?;
//! assert_eq!(b.cached_tokens, 8); // two full blocks shared
//! cache.free(a.seq)?;
//! cache.free(b.seq)?;
//! # Ok::<(), kvtier::Error>(())
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]
#![warn(unreachable_pub, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

mod cache;
pub mod curve;
mod error;
mod events;
#[cfg(not(loom))]
pub mod external;
mod ids;
pub mod io;
mod layout;
mod list;
mod metrics;
pub mod offload;
pub mod policy;
mod pool;
mod prefix;
mod seq;
mod sync;
mod table;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod tier;

pub use cache::{AddOutcome, AppendOutcome, BlockCopy, CacheConfig, CacheCore, CacheGuard, KvCache};
pub use error::{BlockCondition, Error, Result, Tier};
pub use events::{CacheSnapshot, KvEvent, KvEventKind, TierEvent, TierEventKind};
pub use layout::{Dtype, KvLayout, MAX_PAGE_BYTES};
pub use metrics::CacheMetrics;
pub use pool::{Arena, BlockId, BlockPool, BlockState, PageRead, PageWrite};
pub use prefix::{BlockHash, ExtraKeys, HASH_SEED, HASH_VERSION, HashIndex, Insert, MmInput};
pub use seq::SeqId;
pub use table::BatchTables;
