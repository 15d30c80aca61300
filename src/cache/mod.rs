//! The page-table API a serving runtime drives: sequences over the G1 pool with prefix sharing.
//!
//! [`CacheCore`] holds everything and works through `&mut self`; [`KvCache`] wraps it in one
//! lock so several runtime threads can share it. A scheduler that issues many calls per step
//! takes the lock once with [`KvCache::lock`] and calls [`CacheCore`] methods on the guard.

mod handle;
mod step;
mod tiering;

pub use handle::{CacheGuard, KvCache};

use std::sync::Arc;

use crate::curve::CapacityCurve;
use crate::error::{BlockCondition, Error, Result};
use crate::events::{CacheSnapshot, KvEvent};
use crate::layout::KvLayout;
use crate::metrics::CacheMetrics;
use crate::policy::{AnyPolicy, PolicyKind};
use crate::pool::{Arena, BlockId, BlockPool, BlockState};
use crate::prefix::{BlockHash, ExtraKeys};
use crate::seq::{SeqId, SeqState, SeqTable};
use crate::table::BatchTables;

/// Configuration of a [`KvCache`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheConfig {
    /// Page shape. Default: Llama-3.1-8B, 16-token blocks (2 MiB pages).
    pub layout: KvLayout,
    /// Blocks in the G1 pool. Default: 1024. More than RAM + swap can hold is refused
    /// ([`Error::CapacityExceeded`], see [`CacheConfig::validate`]).
    pub num_blocks: usize,
    /// Fraction of the pool kept free for running sequences: a new sequence is admitted only
    /// if that many blocks remain afterwards. Default: 0.01.
    pub watermark: f64,
    /// Longest sequence, in tokens. Default: 1 Mi tokens.
    pub max_seq_len: usize,
    /// Whether to map page memory (false: metadata only, for simulation). Default: true.
    pub arena: bool,
    /// Undrained KV events kept before the oldest are dropped (0 disables). Default: 65536.
    pub event_capacity: usize,
    /// Which cached block to evict first. Default: [`PolicyKind::Adaptive`]: LRU or LHD,
    /// whichever wins on miniature simulations over a hash-sampled subset of this pool's keys.
    /// LHD alone beat LRU on most traces we replayed but lost on some (docs/measurements.md, "Eviction
    /// policies"); the adaptive default follows LHD only on evidence and returns to LRU when LRU
    /// leads, for about 30 bytes per block more than LRU and a mini-cache access per sampled
    /// access. [`PolicyKind::Lru`] gives the cheapest evictions.
    pub policy: PolicyKind,
    /// Blocks the live hit-rate-vs-capacity estimate tracks ([`crate::curve::CapacityCurve`],
    /// fed the prefix of every admitted request; 0 turns it off), read in
    /// [`crate::offload::TierMetrics::live_curve`]. Default: 0 (off). Exact LRU when it tracks
    /// every distinct block; at 65,536 blocks (about 10 MiB) its largest error against that
    /// was 0.003 on the bundled sample and on the Mooncake conversation trace.
    pub curve_keys: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        let layout = match KvLayout::llama_3_1_8b(16) {
            Ok(l) => l,
            Err(_) => unreachable!("the Llama-3.1-8B preset is valid"),
        };
        Self::new(layout, 1024)
    }
}

impl CacheConfig {
    /// Defaults for everything but the layout and the pool size.
    pub fn new(layout: KvLayout, num_blocks: usize) -> Self {
        Self {
            layout,
            num_blocks,
            watermark: 0.01,
            max_seq_len: 1 << 20,
            arena: true,
            event_capacity: 1 << 16,
            policy: PolicyKind::Adaptive,
            curve_keys: 0,
        }
    }
    /// Sets how many blocks the live capacity curve tracks (default 0: off).
    pub fn with_curve_keys(mut self, keys: usize) -> Self {
        self.curve_keys = keys;
        self
    }
    /// Sets the eviction policy (default [`PolicyKind::Adaptive`]).
    pub fn with_policy(mut self, policy: PolicyKind) -> Self {
        self.policy = policy;
        self
    }
    /// Sets the admission watermark fraction (default 0.01).
    pub fn with_watermark(mut self, fraction: f64) -> Self {
        self.watermark = fraction;
        self
    }
    /// Sets the maximum sequence length in tokens (default 1 Mi).
    pub fn with_max_seq_len(mut self, tokens: usize) -> Self {
        self.max_seq_len = tokens;
        self
    }
    /// Maps page memory or not (default true).
    pub fn with_arena(mut self, arena: bool) -> Self {
        self.arena = arena;
        self
    }
    /// Sets the event buffer size (default 65536; 0 disables events).
    pub fn with_event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events;
        self
    }
    /// Checks the configuration: every field in range, no size that overflows, and a pool
    /// (pages unless metadata-only, plus about 64 bytes of bookkeeping per block) that this
    /// machine can hold: more than RAM + swap, or the cgroup's memory limit, is
    /// [`Error::CapacityExceeded`] instead of an abort or the OOM killer later.
    pub fn validate(&self) -> Result<()> {
        let out_of_range = |field, value: &dyn std::fmt::Display, expected| {
            Err(Error::OutOfRange { field, value: value.to_string(), expected })
        };
        if self.num_blocks == 0 {
            return out_of_range("num_blocks", &self.num_blocks, "at least 1");
        }
        if !(0.0..1.0).contains(&self.watermark) {
            return out_of_range("watermark", &self.watermark, "in [0, 1)");
        }
        if self.max_seq_len == 0 || self.max_seq_len > u32::MAX as usize {
            return out_of_range("max_seq_len", &self.max_seq_len, "1..=2^32-1");
        }
        let overflow = || Error::InvalidConfig { field: "num_blocks", reason: "arena size overflows" };
        let page_bytes = if self.arena { self.layout.page_bytes() } else { 0 };
        // The arena must be addressable; pages plus bookkeeping are then checked against memory.
        self.num_blocks.checked_mul(page_bytes).ok_or_else(overflow)?;
        let bytes = (self.num_blocks as u64)
            .checked_mul(page_bytes as u64 + crate::pool::METADATA_BYTES_PER_BLOCK)
            .ok_or_else(overflow)?;
        crate::pool::check_memory(crate::error::Tier::G1, bytes)
    }
}

/// Result of [`CacheCore::add_sequence`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddOutcome {
    /// The new sequence.
    pub seq: SeqId,
    /// Leading prompt tokens whose KV is already cached (a multiple of the block size; at most
    /// `len - 1`, as the last token is always computed to produce logits).
    pub cached_tokens: usize,
    /// Blocks newly allocated for the rest of the prompt.
    pub new_blocks: usize,
}

/// A page copy the runtime must perform before writing into `dst` (copy-on-write).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockCopy {
    /// Shared block to copy from.
    pub src: BlockId,
    /// Private block to copy into.
    pub dst: BlockId,
    /// Valid tokens at the start of `src`.
    pub tokens: u32,
}

/// Result of [`CacheCore::append_tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AppendOutcome {
    /// Blocks newly allocated.
    pub new_blocks: usize,
    /// Copy-on-write of a shared partial last block. kvtier has already copied the page in its
    /// own arena; a runtime with page memory elsewhere (a GPU) performs the same copy.
    pub copy: Option<BlockCopy>,
}

/// Sequences, page tables and the prefix cache over the G1 pool (single-threaded core).
pub struct CacheCore {
    layout: KvLayout,
    block_size: usize,
    /// `log2(block_size)` when it is a power of two: the hot paths divide by shifting.
    block_shift: Option<u32>,
    watermark: usize,
    max_seq_len: usize,
    pool: BlockPool<AnyPolicy>,
    arena: Option<Arc<Arena>>,
    seqs: SeqTable,
    cow_copies: u64,
    /// Blocks pinned for write-through, waiting for the engine (when it asked for them).
    committed: Option<Vec<(BlockId, BlockHash)>>,
    /// References held outside sequences (onboarding tickets, retention), per block.
    engine_refs: std::collections::HashMap<BlockId, u32>,
    /// Live hit rate against capacity, from the admitted requests' prefixes.
    curve: Option<CapacityCurve>,
}

impl std::fmt::Debug for CacheCore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheCore")
            .field("layout", &self.layout)
            .field("pool", &self.pool)
            .field("arena", &self.arena.is_some())
            .finish_non_exhaustive()
    }
}

impl CacheCore {
    /// Builds the pool (and its arena unless metadata-only).
    pub fn new(config: CacheConfig) -> Result<Self> {
        config.validate()?;
        let arena = match config.arena {
            true => Some(Arc::new(Arena::new(config.num_blocks, config.layout.page_bytes())?)),
            false => None,
        };
        let pool =
            BlockPool::with_policy(config.num_blocks, config.policy.build(config.num_blocks), config.event_capacity)?;
        Ok(Self {
            layout: config.layout,
            block_size: config.layout.block_size() as usize,
            block_shift: {
                let bs = config.layout.block_size();
                bs.is_power_of_two().then(|| bs.trailing_zeros())
            },
            watermark: (config.num_blocks as f64 * config.watermark) as usize,
            max_seq_len: config.max_seq_len,
            pool,
            arena,
            seqs: SeqTable::new(),
            cow_copies: 0,
            committed: None,
            engine_refs: std::collections::HashMap::new(),
            curve: (config.curve_keys > 0).then(|| CapacityCurve::new(config.curve_keys)),
        })
    }

    /// The live estimate of this workload's hit rate against cache capacity (LRU, in blocks),
    /// from the prefix blocks of every request admitted so far; `None` when turned off
    /// ([`CacheConfig::curve_keys`]). Read at G1's, G1 + G2's and G1 + G2 + G3's capacity it
    /// says what each tier would serve as part of one LRU cache (`kvtier replay` reports that).
    pub fn capacity_curve(&self) -> Option<&CapacityCurve> {
        self.curve.as_ref()
    }

    /// The live capacity curve, to reset its counts ([`CapacityCurve::reset_counts`]).
    pub fn capacity_curve_mut(&mut self) -> Option<&mut CapacityCurve> {
        self.curve.as_mut()
    }

    /// Page layout.
    pub fn layout(&self) -> &KvLayout {
        &self.layout
    }
    /// The block pool, for inspection.
    pub fn pool(&self) -> &BlockPool<AnyPolicy> {
        &self.pool
    }
    /// True unless the cache is metadata-only.
    pub fn has_arena(&self) -> bool {
        self.arena.is_some()
    }

    /// Copies `data` (exactly one page) into the page of `block`; see [`CacheCore::page_mut`].
    /// The block must be [`BlockCondition::Writable`]: held by one sequence and not committed.
    /// Any other block of the pool is [`Error::WrongBlockState`] (saying what it is), an id
    /// outside the pool [`Error::InvalidBlock`].
    ///
    /// ```
    /// use kvtier::{BlockCondition, CacheConfig, Error, ExtraKeys, KvCache, KvLayout};
    /// let cache = KvCache::new(CacheConfig::new(KvLayout::new(1, 1, 8, kvtier::Dtype::F16, 4)?, 8))?;
    /// let page = vec![1u8; cache.layout().page_bytes()];
    /// let s = cache.add_sequence(&[1, 2, 3, 4, 5], &ExtraKeys::default())?.seq;
    /// let first = cache.lock().block_table(s)?[0];
    /// cache.write_page(first, &page)?; // the runtime writes the KV it computed
    /// cache.commit(s)?; // the first block is full: registered, its content final
    /// let refused = cache.write_page(first, &page);
    /// assert!(matches!(refused, Err(Error::WrongBlockState { found: BlockCondition::Committed, .. })));
    /// # Ok::<(), kvtier::Error>(())
    /// ```
    pub fn write_page(&mut self, block: BlockId, data: &[u8]) -> Result<()> {
        let expected = self.layout.page_bytes();
        if data.len() != expected {
            return Err(Error::LayoutMismatch { expected, actual: data.len() });
        }
        if self.arena.is_some() && self.pool.condition(block)? != BlockCondition::Writable {
            return Err(self.pool.wrong_state(block, BlockCondition::Writable));
        }
        self.page_mut(block)?.copy_from_slice(data);
        Ok(())
    }

    /// Copies the page of `block` into `out` (exactly one page); see [`CacheCore::page`]. The
    /// block must hold data no copy is filling ([`BlockCondition::Readable`]), else
    /// [`Error::WrongBlockState`].
    pub fn read_page(&self, block: BlockId, out: &mut [u8]) -> Result<()> {
        let expected = self.layout.page_bytes();
        if out.len() != expected {
            return Err(Error::LayoutMismatch { expected, actual: out.len() });
        }
        if self.arena.is_some()
            && matches!(self.pool.condition(block)?, BlockCondition::Free | BlockCondition::Onboarding)
        {
            return Err(self.pool.wrong_state(block, BlockCondition::Readable));
        }
        out.copy_from_slice(&self.page(block)?);
        Ok(())
    }

    fn blocks_for(&self, tokens: usize) -> usize {
        tokens.div_ceil(self.block_size)
    }

    /// `(pos / block_size, pos % block_size)` without a hardware divide for the usual sizes.
    #[inline(always)]
    fn split(&self, pos: usize) -> (usize, usize) {
        match self.block_shift {
            Some(s) => (pos >> s, pos & ((1 << s) - 1)),
            None => (pos / self.block_size, pos % self.block_size),
        }
    }

    /// True if a new sequence needing `n` blocks would be admitted now (watermark included).
    pub fn can_allocate(&self, n: usize) -> bool {
        n + self.watermark <= self.pool.available()
    }

    /// Hashes of the full blocks of `tokens` under `keys`, into `out` (cleared first).
    pub fn hash_tokens(&self, tokens: &[u32], keys: &ExtraKeys, out: &mut Vec<BlockHash>) {
        out.clear();
        BlockHash::extend_chain(out, tokens, self.block_size, keys);
    }

    /// Number of leading `hashes` cached in G1.
    pub fn longest_prefix(&mut self, hashes: &[BlockHash]) -> usize {
        self.pool.longest_prefix(hashes)
    }

    /// Admits a request: shares its longest cached prefix and allocates blocks for the rest of
    /// the prompt. Fails (changing nothing) with [`Error::NeverFits`] if the whole sequence
    /// needs more blocks than the pool less the watermark reserve (it never will fit), and with
    /// [`Error::OutOfBlocks`] if the blocks it needs now plus the reserve are not available
    /// (retry when sequences finish).
    pub fn add_sequence(&mut self, tokens: &[u32], keys: &ExtraKeys) -> Result<AddOutcome> {
        if tokens.len() > self.max_seq_len {
            return Err(Error::SequenceTooLong { requested: tokens.len(), max: self.max_seq_len });
        }
        let bs = self.block_size;
        let total_blocks = self.blocks_for(tokens.len());
        let most = self.pool.capacity().saturating_sub(self.watermark);
        if total_blocks > most {
            return Err(Error::NeverFits { requested: total_blocks, capacity: most });
        }
        let (seq, st) = self.seqs.insert()?;
        st.tokens.extend_from_slice(tokens);
        st.keys.clone_from(keys);
        BlockHash::extend_chain(&mut st.hashes, tokens, bs, keys);
        let max_hit = tokens.len().saturating_sub(1) / bs;
        let mut reviving = 0;
        for h in &st.hashes[..max_hit] {
            let Some(b) = self.pool.lookup(*h) else { break };
            reviving += (self.pool.state(b)? == BlockState::Evictable) as usize;
            st.blocks.push(b);
        }
        let hits = st.blocks.len();
        let need = total_blocks - hits;
        let available = (self.pool.available() - reviving).saturating_sub(self.watermark);
        if need > available {
            st.blocks.clear();
            self.seqs.remove(seq)?;
            return Err(Error::OutOfBlocks { requested: need, available });
        }
        // counted only once admitted, so a scheduler retrying a refused request does not inflate them
        self.pool.count_queries(max_hit, hits);
        if let Some(curve) = &mut self.curve {
            curve.observe(&st.hashes[..max_hit]);
        }
        for &b in &st.blocks {
            self.pool.acquire_block(b)?;
        }
        self.pool.allocate(need, &mut st.blocks)?;
        st.tail_private = need > 0;
        st.num_computed = (hits * bs) as u32;
        st.committed_blocks = hits;
        Ok(AddOutcome { seq, cached_tokens: hits * bs, new_blocks: need })
    }

    /// Appends tokens to a running sequence (prefill chunk or decode), allocating blocks as
    /// needed. Running sequences may use the watermark reserve.
    pub fn append_tokens(&mut self, seq: SeqId, tokens: &[u32]) -> Result<AppendOutcome> {
        self.append_inner(seq, tokens).map(|(out, _)| out)
    }

    /// [`CacheCore::append_tokens`], also handing back the sequence for the caller to export.
    /// Inlined: returning this through memory costs a store-forwarding stall per call.
    #[inline(always)]
    fn append_inner(&mut self, seq: SeqId, tokens: &[u32]) -> Result<(AppendOutcome, &SeqState)> {
        let bs = self.block_size;
        let st = self.seqs.get_mut(seq)?;
        let old_len = st.tokens.len();
        let new_len = old_len + tokens.len();
        if new_len > self.max_seq_len {
            return Err(Error::SequenceTooLong { requested: new_len, max: self.max_seq_len });
        }
        let (full, rem) = match self.block_shift {
            Some(s) => (new_len >> s, new_len & ((1 << s) - 1)),
            None => (new_len / bs, new_len % bs),
        };
        let need = full + (rem != 0) as usize - st.blocks.len();
        let partial = match self.block_shift {
            Some(s) => old_len & ((1 << s) - 1),
            None => old_len % bs,
        };
        let shared_tail = match st.blocks.last() {
            Some(&last) if partial != 0 && !tokens.is_empty() && !st.tail_private => {
                self.pool.refcount(last)? > 1 || self.pool.hash_of(last)?.is_some()
            }
            _ => false,
        };
        let want = need + shared_tail as usize;
        if st.blocks.len() + want > self.pool.capacity() {
            // the sequence alone (and the copy of a shared last block) outgrows the pool
            return Err(Error::NeverFits { requested: st.blocks.len() + want, capacity: self.pool.capacity() });
        }
        if want > self.pool.available() {
            return Err(Error::OutOfBlocks { requested: want, available: self.pool.available() });
        }
        let mut out = AppendOutcome { new_blocks: need, copy: None };
        if shared_tail {
            let last = st.blocks.len() - 1;
            let src = st.blocks[last];
            let dst = self.pool.allocate_one()?;
            tiering::copy_page(self.arena.as_deref(), src, dst)?;
            // The new blocks are taken before `src` is released, so that `src` (which may
            // become evictable) cannot be handed back in this same call, before a runtime
            // with its own page memory has performed the reported copy.
            self.pool.allocate(need, &mut st.blocks)?;
            self.pool.release(src)?;
            st.blocks[last] = dst;
            st.blocks_version = st.blocks_version.wrapping_add(1);
            self.cow_copies += 1;
            out.copy = Some(BlockCopy { src, dst, tokens: partial as u32 });
            st.tail_private = true;
        } else if need > 0 {
            self.pool.allocate(need, &mut st.blocks)?;
            st.tail_private = true;
        }
        st.tokens.extend_from_slice(tokens);
        Ok((out, st))
    }

    /// Marks every token of `seq` as computed and registers its full blocks in the prefix
    /// cache. Returns the number of blocks newly registered.
    pub fn commit(&mut self, seq: SeqId) -> Result<usize> {
        let len = self.seqs.get(seq)?.tokens.len();
        self.commit_up_to(seq, len)
    }

    /// Marks the first `num_tokens` tokens as computed (chunked prefill) and registers the full
    /// blocks among them. Returns the number of blocks newly registered.
    pub fn commit_up_to(&mut self, seq: SeqId, num_tokens: usize) -> Result<usize> {
        let bs = self.block_size;
        let st = self.seqs.get_mut(seq)?;
        if num_tokens > st.tokens.len() {
            return Err(Error::BeyondEnd { requested: num_tokens, len: st.tokens.len() });
        }
        let full = num_tokens / bs;
        if st.hashes.len() < full {
            BlockHash::extend_chain(&mut st.hashes, &st.tokens[..full * bs], bs, &st.keys);
        }
        let mut registered = 0;
        for i in st.committed_blocks..full {
            let parent = i.checked_sub(1).map(|p| (st.hashes[p], Some(st.blocks[p])));
            if self.pool.register_linked(st.blocks[i], st.hashes[i], parent, bs as u32)? {
                registered += 1;
                if let Some(log) = self.committed.as_mut()
                    && let Some(h) = self.pool.stage_block(st.blocks[i])?
                {
                    log.push((st.blocks[i], h));
                }
            }
        }
        st.committed_blocks = st.committed_blocks.max(full);
        st.num_computed = st.num_computed.max(num_tokens as u32);
        Ok(registered)
    }

    /// Forks a sequence (parallel sampling, beam search): the child shares every block; the
    /// partial last block is copied on the first write by either side.
    pub fn fork(&mut self, parent: SeqId) -> Result<SeqId> {
        let mut p = self.seqs.take(parent)?;
        let result = self.fork_from(&mut p);
        self.seqs.put_back(parent, p);
        result
    }

    fn fork_from(&mut self, p: &mut SeqState) -> Result<SeqId> {
        p.tail_private = false;
        for &b in &p.blocks {
            self.pool.retain(b)?;
        }
        let (child, c) = self.seqs.insert()?;
        c.tokens.extend_from_slice(&p.tokens);
        c.blocks.extend_from_slice(&p.blocks);
        c.hashes.extend_from_slice(&p.hashes);
        c.keys.clone_from(&p.keys);
        c.num_computed = p.num_computed;
        c.committed_blocks = p.committed_blocks;
        c.tail_private = false;
        Ok(child)
    }

    /// Shortens a sequence to `len` tokens, releasing the blocks past it (tail first).
    pub fn truncate(&mut self, seq: SeqId, len: usize) -> Result<()> {
        let bs = self.block_size;
        let st = self.seqs.get_mut(seq)?;
        if len > st.tokens.len() {
            return Err(Error::BeyondEnd { requested: len, len: st.tokens.len() });
        }
        let keep = len.div_ceil(bs);
        self.pool.release_all(st.blocks[keep..].iter().rev().copied())?;
        st.blocks.truncate(keep);
        st.blocks_version = st.blocks_version.wrapping_add(1);
        st.tail_private = false;
        st.tokens.truncate(len);
        st.hashes.truncate(len / bs);
        st.committed_blocks = st.committed_blocks.min(len / bs);
        st.num_computed = st.num_computed.min(len as u32);
        Ok(())
    }

    /// Ends a sequence: its blocks are released tail first (cached ones become evictable, tail
    /// before head) and its id becomes invalid.
    pub fn free(&mut self, seq: SeqId) -> Result<()> {
        let st = self.seqs.get(seq)?;
        self.pool.release_all(st.blocks.iter().rev().copied())?;
        self.seqs.remove(seq)
    }

    /// Tokens of a sequence.
    pub fn tokens(&self, seq: SeqId) -> Result<&[u32]> {
        Ok(&self.seqs.get(seq)?.tokens)
    }
    /// Page table of a sequence (zero copy).
    pub fn block_table(&self, seq: SeqId) -> Result<&[BlockId]> {
        Ok(&self.seqs.get(seq)?.blocks)
    }
    /// Tokens of a sequence whose KV has been committed.
    pub fn num_computed(&self, seq: SeqId) -> Result<usize> {
        Ok(self.seqs.get(seq)?.num_computed as usize)
    }

    /// Fills `out` with the flat block table, slot mapping and lengths of a batch. The slot
    /// mapping covers each sequence's uncommitted tokens (the tokens this step computes).
    pub fn export_batch(&self, seqs: &[SeqId], out: &mut BatchTables) -> Result<()> {
        out.clear();
        let mut width = 0;
        for &s in seqs {
            width = width.max(self.seqs.get(s)?.blocks.len());
        }
        out.row_width = width;
        out.block_table.reserve(seqs.len() * width);
        let bs = self.block_size as i64;
        for &s in seqs {
            let st = self.seqs.get(s)?;
            // rows are written once: the ids, then the padding (no pre-fill of the table)
            out.block_table.extend_from_slice(bytemuck::cast_slice(&st.blocks));
            out.block_table.resize(out.block_table.len() + width - st.blocks.len(), BatchTables::PAD);
            for pos in st.num_computed as usize..st.tokens.len() {
                let (i, off) = self.split(pos);
                out.slot_mapping.push(st.blocks[i].0 as i64 * bs + off as i64);
            }
            out.seq_lens.push(st.tokens.len() as i32);
            out.query_start.push(out.slot_mapping.len() as i32);
        }
        Ok(())
    }

    /// Counters and occupancy.
    pub fn metrics(&self) -> CacheMetrics {
        let c = self.pool.counters();
        CacheMetrics {
            capacity: self.pool.capacity(),
            free: self.pool.num_free(),
            in_use: self.pool.num_in_use(),
            evictable: self.pool.num_evictable(),
            sequences: self.seqs.len(),
            prefix_queries: c.prefix_queries,
            prefix_hits: c.prefix_hits,
            evictions: c.evictions,
            unbacked_evictions: c.unbacked_evictions,
            allocations: c.allocations,
            cow_copies: self.cow_copies,
            events_dropped: self.pool.events_dropped(),
        }
    }

    /// Moves undrained KV events to `out`.
    pub fn drain_events(&mut self, out: &mut Vec<KvEvent>) {
        self.pool.drain_events(out);
    }

    /// Every cached hash, consistent with the event stream.
    pub fn snapshot(&self) -> CacheSnapshot {
        self.pool.snapshot()
    }

    /// Drops every cached block if no block is in use; false otherwise.
    pub fn reset_prefix_cache(&mut self) -> bool {
        self.pool.reset_prefix_cache()
    }

    /// Checks the pool invariants and that refcounts equal the references held by sequences.
    ///
    /// A debugging aid (O(capacity), see [`crate::offload::TieredCache::check_invariants`]);
    /// `Err` describes the first broken invariant for a human to read.
    pub fn check_invariants(&self) -> std::result::Result<(), String> {
        self.pool.check_invariants()?;
        let mut refs = vec![0u32; self.pool.capacity()];
        for (id, st) in self.seqs.iter() {
            if st.blocks.len() != self.blocks_for(st.tokens.len()) {
                return Err(format!("{id:?}: {} blocks for {} tokens", st.blocks.len(), st.tokens.len()));
            }
            if st.committed_blocks > st.hashes.len() || st.num_computed as usize > st.tokens.len() {
                return Err(format!("{id:?}: committed past the end"));
            }
            for (i, &b) in st.blocks.iter().enumerate() {
                refs[b.index()] += 1;
                if i < st.committed_blocks
                    && self.pool.is_staged(b).unwrap_or(false)
                    && self.pool.hash_of(b).ok().flatten().is_none()
                {
                    return Err(format!("{id:?}: block {i} is being onboarded while a sequence holds it"));
                }
                if i < st.committed_blocks
                    && let Ok(Some(h)) = self.pool.hash_of(b)
                    && h != st.hashes[i]
                {
                    return Err(format!("{id:?}: block {i} holds another prefix's hash"));
                }
            }
        }
        for (&b, &n) in &self.engine_refs {
            refs[b.index()] += n;
        }
        for (i, r) in refs.iter_mut().enumerate() {
            let b = BlockId(i as u32);
            // a staged block carries the reference of the copy in flight
            *r += self.pool.is_staged(b).unwrap_or(false) as u32;
            let r = *r;
            let rc = self.pool.refcount(b).map_err(|e| e.to_string())?;
            if rc != r {
                return Err(format!("{b:?}: refcount {rc} but {r} references"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::Dtype;

    fn cache(blocks: usize) -> CacheCore {
        let layout = KvLayout::new(1, 1, 4, Dtype::F16, 4).unwrap();
        CacheCore::new(CacheConfig::new(layout, blocks).with_watermark(0.0)).unwrap()
    }

    #[test]
    fn checked_page_access() {
        let mut c = cache(4);
        let s = c.add_sequence(&[1, 2, 3], &ExtraKeys::default()).unwrap().seq;
        let b = c.block_table(s).unwrap()[0];
        let page = vec![9u8; c.layout().page_bytes()];
        c.write_page(b, &page).unwrap();
        assert!(matches!(c.write_page(b, &page[1..]), Err(Error::LayoutMismatch { .. })));
        let free: Result<()> = Err(Error::WrongBlockState {
            block: BlockId(3),
            found: BlockCondition::Free,
            needed: BlockCondition::Writable,
        });
        assert_eq!(format!("{:?}", c.write_page(BlockId(3), &page)), format!("{free:?}"));
        assert!(matches!(c.write_page(BlockId(99), &page), Err(Error::InvalidBlock { .. })));
        let mut out = vec![0u8; page.len()];
        c.read_page(b, &mut out).unwrap();
        assert_eq!(out, page);
        c.free(s).unwrap();
        assert!(c.read_page(b, &mut out).is_err(), "a freed unhashed block is not readable");
    }

    #[test]
    fn add_that_fails_changes_nothing() {
        let mut c = cache(2);
        let a = c.add_sequence(&[1, 2, 3, 4, 5], &ExtraKeys::default()).unwrap();
        c.commit(a.seq).unwrap();
        let before = c.metrics();
        // 3 blocks in a pool of 2: never
        let err = c.add_sequence(&[7; 9], &ExtraKeys::default()).unwrap_err();
        assert!(matches!(err, Error::NeverFits { requested: 3, capacity: 2 }), "{err:?}");
        assert_eq!(c.metrics(), before);
        // 2 blocks while the first sequence holds both: not now
        let err = c.add_sequence(&[7; 5], &ExtraKeys::default()).unwrap_err();
        assert!(matches!(err, Error::OutOfBlocks { requested: 2, available: 0 }), "{err:?}");
        assert_eq!(c.metrics(), before);
        c.check_invariants().unwrap();
    }
}
