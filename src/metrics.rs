//! Counters of the G1 pool and its prefix cache.

/// A point-in-time copy of the cache's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CacheMetrics {
    /// Blocks in the pool.
    pub capacity: usize,
    /// Blocks in the free queue.
    pub free: usize,
    /// Blocks referenced by at least one sequence.
    pub in_use: usize,
    /// Cached blocks with no reference (revivable, evictable).
    pub evictable: usize,
    /// Live sequences.
    pub sequences: usize,
    /// Full blocks looked up in the prefix cache.
    pub prefix_queries: u64,
    /// Of those, blocks found.
    pub prefix_hits: u64,
    /// Cached blocks whose content was dropped to reuse the block.
    pub evictions: u64,
    /// Of those, blocks whose content no lower tier held (lost to the hierarchy; always all
    /// of them without an offload engine).
    pub unbacked_evictions: u64,
    /// Blocks handed out.
    pub allocations: u64,
    /// Copy-on-write copies requested.
    pub cow_copies: u64,
    /// Events dropped because nobody drained them in time.
    pub events_dropped: u64,
}

impl CacheMetrics {
    /// Fraction of blocks in use (0..=1).
    pub fn usage(&self) -> f64 {
        if self.capacity == 0 { 0.0 } else { self.in_use as f64 / self.capacity as f64 }
    }

    /// Fraction of queried blocks that hit.
    pub fn hit_rate(&self) -> f64 {
        if self.prefix_queries == 0 { 0.0 } else { self.prefix_hits as f64 / self.prefix_queries as f64 }
    }
}
