//! Read-only views of the engine's lower tiers ([`super::TieredCache::g2`],
//! [`super::TieredCache::g3`]).
//!
//! The engine's workers stage, spill and evict pages of these tiers and count on the tiers'
//! eviction notices: a caller holding the tier itself could pin, unpin or drain those behind
//! the engine's back. A view offers what is safe to ask while the engine runs: lookups,
//! copies out, counters and invariant checks.

use std::path::Path;

use crate::prefix::BlockHash;
use crate::tier::disk::format::Fingerprint;
use crate::tier::disk::{DiskMetrics, DiskTier};
use crate::tier::host::{HostMetrics, HostTier};

/// Read-only view of the engine's host tier (G2).
#[derive(Debug, Clone, Copy)]
pub struct HostView<'a>(pub(super) &'a HostTier);

impl HostView<'_> {
    /// True if `h` is stored in G2.
    pub fn contains(&self, h: BlockHash) -> bool {
        self.0.contains(h)
    }
    /// Number of leading `hashes` stored in G2.
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> usize {
        self.0.longest_prefix(hashes)
    }
    /// Reads the page stored under `h` with `read` (a copy out under a read lease); `None`
    /// on a miss.
    pub fn load<R>(&self, h: BlockHash, read: impl FnOnce(&[u8]) -> R) -> Option<R> {
        self.0.load(h, read)
    }
    /// Counters and occupancy.
    pub fn metrics(&self) -> HostMetrics {
        self.0.metrics()
    }
    /// Bytes per page.
    pub fn page_bytes(&self) -> usize {
        self.0.page_bytes()
    }
    /// Whether the memory is locked (mlock succeeded).
    pub fn is_locked(&self) -> bool {
        self.0.is_locked()
    }
    /// Checks the slot bookkeeping (the full check, with leaks, is
    /// [`super::TieredCache::check_invariants`] with the workers paused).
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.0.check_invariants(false)
    }
}

/// Read-only view of the engine's SSD tier (G3).
#[derive(Debug, Clone, Copy)]
pub struct DiskView<'a>(pub(super) &'a DiskTier);

impl DiskView<'_> {
    /// Whether a valid page is stored in G3 under `hash`.
    pub fn contains(&self, hash: BlockHash) -> bool {
        self.0.contains(hash)
    }
    /// Number of leading `hashes` stored in G3.
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> usize {
        self.0.longest_prefix(hashes)
    }
    /// Reads and verifies the pages of `reqs` into the caller's buffers (a copy out; see
    /// [`DiskTier::read_pages`]).
    pub fn read_pages(&self, reqs: &mut [(BlockHash, &mut [u8])]) -> Vec<crate::Result<bool>> {
        self.0.read_pages(reqs)
    }
    /// Counters and gauges.
    pub fn metrics(&self) -> DiskMetrics {
        self.0.metrics()
    }
    /// Name of the IO backend in use ("io_uring", "psync", ...).
    pub fn backend_name(&self) -> &'static str {
        self.0.backend_name()
    }
    /// Whether every slab file bypasses the page cache (O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.0.is_direct()
    }
    /// Bytes of one page.
    pub fn page_bytes(&self) -> usize {
        self.0.page_bytes()
    }
    /// Bytes of one slot on disk (page bytes rounded up to 4096).
    pub fn slot_bytes(&self) -> usize {
        self.0.slot_bytes()
    }
    /// Slots in the tier.
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
    /// The fingerprint the directory was opened with.
    pub fn fingerprint(&self) -> &Fingerprint {
        self.0.fingerprint()
    }
    /// The tier directory.
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }
    /// Checks the slot bookkeeping (the full check, with leaks, is
    /// [`super::TieredCache::check_invariants`] with the workers paused).
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.0.check_invariants(false)
    }
}
