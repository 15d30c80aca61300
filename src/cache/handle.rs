//! The thread-safe face of the cache: a [`CacheCore`] behind one lock.

use std::sync::Arc;

use super::{AddOutcome, AppendOutcome, CacheConfig, CacheCore};
use crate::error::Result;
use crate::events::{CacheSnapshot, KvEvent};
use crate::layout::KvLayout;
use crate::metrics::CacheMetrics;
use crate::pool::{Arena, BlockId};
use crate::prefix::{BlockHash, ExtraKeys};
use crate::seq::SeqId;
use crate::sync::{Mutex, MutexGuard, lock};
use crate::table::BatchTables;

/// Exclusive access to the cache for a batch of calls (one lock per scheduler step).
pub struct CacheGuard<'a>(MutexGuard<'a, CacheCore>);

impl std::fmt::Debug for CacheGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("CacheGuard").field(&*self.0).finish()
    }
}

impl std::ops::Deref for CacheGuard<'_> {
    type Target = CacheCore;
    fn deref(&self) -> &CacheCore {
        &self.0
    }
}

impl std::ops::DerefMut for CacheGuard<'_> {
    fn deref_mut(&mut self) -> &mut CacheCore {
        &mut self.0
    }
}

/// The thread-safe KV cache: a [`CacheCore`] behind one lock. `Send + Sync`; share it with
/// an `Arc`.
pub struct KvCache {
    pub(super) core: Mutex<CacheCore>,
    pub(super) arena: Option<Arc<Arena>>,
    layout: KvLayout,
    arena_base: Option<usize>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache").field("layout", &self.layout).field("arena", &self.arena).finish_non_exhaustive()
    }
}

impl KvCache {
    /// Builds the cache.
    pub fn new(config: CacheConfig) -> Result<Self> {
        let core = CacheCore::new(config)?;
        let arena = core.arena.clone();
        let arena_base = arena.as_ref().map(|a| a.base_ptr() as usize);
        Ok(Self { layout: core.layout, arena_base, arena, core: Mutex::new(core) })
    }

    /// Takes the lock for a batch of calls.
    pub fn lock(&self) -> CacheGuard<'_> {
        CacheGuard(lock(&self.core))
    }

    /// Page layout.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }

    /// Address of page 0 of the arena (stride: `layout().page_bytes()`), for zero-copy kernels;
    /// `None` in metadata-only mode. Only pages of blocks a sequence holds may be written.
    pub fn arena_base(&self) -> Option<*const u8> {
        self.arena_base.map(|a| a as *const u8)
    }

    /// See [`CacheCore::add_sequence`].
    pub fn add_sequence(&self, tokens: &[u32], keys: &ExtraKeys) -> Result<AddOutcome> {
        self.lock().add_sequence(tokens, keys)
    }
    /// See [`CacheCore::append_tokens`].
    pub fn append_tokens(&self, seq: SeqId, tokens: &[u32]) -> Result<AppendOutcome> {
        self.lock().append_tokens(seq, tokens)
    }
    /// See [`CacheCore::commit`].
    pub fn commit(&self, seq: SeqId) -> Result<usize> {
        self.lock().commit(seq)
    }
    /// See [`CacheCore::fork`].
    pub fn fork(&self, seq: SeqId) -> Result<SeqId> {
        self.lock().fork(seq)
    }
    /// See [`CacheCore::truncate`].
    pub fn truncate(&self, seq: SeqId, len: usize) -> Result<()> {
        self.lock().truncate(seq, len)
    }
    /// See [`CacheCore::free`].
    pub fn free(&self, seq: SeqId) -> Result<()> {
        self.lock().free(seq)
    }
    /// See [`CacheCore::write_page`].
    pub fn write_page(&self, block: BlockId, data: &[u8]) -> Result<()> {
        self.lock().write_page(block, data)
    }
    /// See [`CacheCore::read_page`].
    pub fn read_page(&self, block: BlockId, out: &mut [u8]) -> Result<()> {
        self.lock().read_page(block, out)
    }
    /// See [`CacheCore::longest_prefix`].
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> usize {
        self.lock().longest_prefix(hashes)
    }
    /// See [`CacheCore::export_batch`].
    pub fn export_batch(&self, seqs: &[SeqId], out: &mut BatchTables) -> Result<()> {
        self.lock().export_batch(seqs, out)
    }
    /// See [`CacheCore::can_allocate`].
    pub fn can_allocate(&self, n: usize) -> bool {
        self.lock().can_allocate(n)
    }
    /// See [`CacheCore::metrics`].
    pub fn metrics(&self) -> CacheMetrics {
        self.lock().metrics()
    }
    /// See [`CacheCore::drain_events`].
    pub fn drain_events(&self, out: &mut Vec<KvEvent>) {
        self.lock().drain_events(out)
    }
    /// See [`CacheCore::snapshot`].
    pub fn snapshot(&self) -> CacheSnapshot {
        self.lock().snapshot()
    }
}
