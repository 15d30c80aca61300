//! Sequence bookkeeping: token ids, page table and hash chain of each live request.

use crate::error::{Error, Result};
use crate::pool::BlockId;
use crate::prefix::{BlockHash, ExtraKeys};

/// Handle of a live sequence, issued by one cache and valid on that cache only.
///
/// An id names its slot in the cache's sequence table, the slot's generation (so that a freed
/// id stays invalid when the slot is reused) and the cache that issued it (so that an id used
/// on another cache is [`Error::ForeignSequence`] instead of naming that cache's sequence in the
/// same slot). Its fields are private: ids cannot be made up, only issued.
///
/// ```
/// use kvtier::{CacheConfig, Error, ExtraKeys, KvCache, KvLayout};
/// let layout = KvLayout::new(1, 1, 8, kvtier::Dtype::F16, 4)?;
/// let (one, two) = (KvCache::new(CacheConfig::new(layout, 8))?, KvCache::new(CacheConfig::new(layout, 8))?);
/// let a = one.add_sequence(&[1, 2, 3], &ExtraKeys::default())?.seq;
/// let b = two.add_sequence(&[1, 2, 3], &ExtraKeys::default())?.seq;
/// assert_ne!(a, b);
/// assert!(matches!(two.free(a), Err(Error::ForeignSequence(id)) if id == a));
/// one.free(a)?;
/// assert!(matches!(one.free(a), Err(Error::UnknownSequence(_)))); // ids are never reused
/// # Ok::<(), kvtier::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId {
    /// Odd: ids are only issued while their slot is live (see `Slot::generation`).
    generation: u32,
    slot: u32,
    /// `SeqTable::tag` of the issuing table.
    cache: u32,
}

impl SeqId {
    fn slot(self) -> usize {
        self.slot as usize
    }
}

/// Tags of the sequence tables made so far in this process. A plain std atomic rather than
/// `crate::sync`: it is a process-wide counter outside every modelled protocol (loom's
/// atomics cannot live in a `static`), and `Relaxed` suffices because only uniqueness matters.
static TABLES: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);

/// One sequence. Buffers are kept when the sequence is freed so that the next one reuses them.
///
/// `repr(C)`: what a decode step touches (tokens, blocks, computed count, tail flag) comes
/// first, so that with the slot header it fills the slot's first cache line.
#[derive(Default)]
#[repr(C)]
pub(crate) struct SeqState {
    pub tokens: Vec<u32>,
    pub blocks: Vec<BlockId>,
    /// Tokens whose KV the runtime has written (committed); `max_seq_len` fits a `u32`.
    pub num_computed: u32,
    /// The last block was allocated by this sequence and nobody else can reach it (not
    /// forked, not registered): appends into it need no copy-on-write check.
    pub tail_private: bool,
    /// Bumped whenever `blocks` changes other than by appending (copy-on-write of the last
    /// block, truncation), so an exported table row knows whether it is still a prefix.
    pub blocks_version: u32,
    /// Hashes of the leading full blocks (may run ahead of `committed_blocks`).
    pub hashes: Vec<BlockHash>,
    /// Leading full blocks already offered to the prefix index.
    pub committed_blocks: usize,
    pub keys: ExtraKeys,
}

impl SeqState {
    fn clear(&mut self) {
        self.tokens.clear();
        self.blocks.clear();
        self.hashes.clear();
        self.num_computed = 0;
        self.committed_blocks = 0;
        self.keys = ExtraKeys::default();
        self.tail_private = false;
        self.blocks_version = self.blocks_version.wrapping_add(1);
    }
}

/// Header first: with it the decode step's fields of [`SeqState`] fill one cache line.
#[repr(C, align(64))]
struct Slot {
    /// Odd while a sequence lives in the slot, even while it is vacant; bumped by both insert
    /// and remove, so a freed id (or one of a vacant slot) never matches.
    generation: u32,
    /// The last batch ([`SeqTable::next_batch`]) that named this sequence.
    batch: u32,
    state: SeqState,
}

impl Slot {
    #[inline(always)]
    fn live(&self) -> bool {
        self.generation & 1 == 1
    }
}

/// Slab of sequences with generation-checked ids.
pub(crate) struct SeqTable {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    live: usize,
    /// Unique among the tables of this process: carried by every id this table issues.
    tag: u32,
    /// Stamp of the current batch; 0 is never a batch, so new slots are in none.
    batch: u32,
}

impl SeqTable {
    /// An empty table with a tag no other table of this process has (until 2^32 tables).
    pub(crate) fn new() -> Self {
        let tag = TABLES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self { slots: Vec::new(), vacant: Vec::new(), live: 0, tag, batch: 0 }
    }

    pub(crate) fn len(&self) -> usize {
        self.live
    }

    /// A fresh, empty sequence (reusing a vacant slot's buffers).
    pub(crate) fn insert(&mut self) -> Result<(SeqId, &mut SeqState)> {
        let slot = match self.vacant.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.slots.len())
                    .map_err(|_| Error::InvalidConfig { field: "sequences", reason: "more than 2^32 live" })?;
                self.slots.push(Slot { generation: 0, batch: 0, state: SeqState::default() });
                s
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        self.live += 1;
        Ok((SeqId { generation: s.generation, slot, cache: self.tag }, &mut s.state))
    }

    /// The error for an id that names no live sequence of this table.
    #[cold]
    fn refuse(&self, id: SeqId) -> Error {
        if id.cache != self.tag { Error::ForeignSequence(id) } else { Error::UnknownSequence(id) }
    }

    #[inline(always)]
    fn slot_of(&self, id: SeqId) -> Option<usize> {
        let i = id.slot();
        let ok = id.cache == self.tag && self.slots.get(i).is_some_and(|s| s.generation == id.generation);
        ok.then_some(i)
    }

    pub(crate) fn get(&self, id: SeqId) -> Result<&SeqState> {
        match self.slot_of(id) {
            Some(i) => Ok(&self.slots[i].state),
            None => Err(self.refuse(id)),
        }
    }

    pub(crate) fn get_mut(&mut self, id: SeqId) -> Result<&mut SeqState> {
        match self.slot_of(id) {
            Some(i) => Ok(&mut self.slots[i].state),
            None => Err(self.refuse(id)),
        }
    }

    /// Starts a batch: [`SeqTable::get_in_batch`] then refuses a sequence named twice in it.
    pub(crate) fn next_batch(&mut self) {
        self.batch = self.batch.wrapping_add(1);
        if self.batch == 0 {
            // once in 2^32 batches: forget every stamp so that no old one equals a new batch
            for s in &mut self.slots {
                s.batch = 0;
            }
            self.batch = 1;
        }
    }

    /// [`SeqTable::get`], stamping the sequence as named in the current batch:
    /// [`Error::DuplicateSequence`] if it already was. O(1), no allocation.
    #[inline]
    pub(crate) fn get_in_batch(&mut self, id: SeqId) -> Result<&SeqState> {
        let Some(i) = self.slot_of(id) else { return Err(self.refuse(id)) };
        let s = &mut self.slots[i];
        if s.batch == self.batch {
            return Err(Error::DuplicateSequence(id));
        }
        s.batch = self.batch;
        Ok(&s.state)
    }

    /// Takes the state out for an operation that also needs the pool; put it back with
    /// [`SeqTable::put_back`].
    pub(crate) fn take(&mut self, id: SeqId) -> Result<SeqState> {
        let s = self.get_mut(id)?;
        Ok(std::mem::take(s))
    }

    pub(crate) fn put_back(&mut self, id: SeqId, state: SeqState) {
        if let Some(i) = self.slot_of(id) {
            self.slots[i].state = state;
        }
    }

    /// Ends a sequence; its id becomes invalid forever (until the 2^31st reuse of its slot).
    pub(crate) fn remove(&mut self, id: SeqId) -> Result<()> {
        let Some(i) = self.slot_of(id) else { return Err(self.refuse(id)) };
        let s = &mut self.slots[i];
        s.generation = s.generation.wrapping_add(1);
        s.state.clear();
        self.vacant.push(id.slot);
        self.live -= 1;
        Ok(())
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (SeqId, &SeqState)> {
        let cache = self.tag;
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live())
            .map(move |(i, s)| (SeqId { generation: s.generation, slot: i as u32, cache }, &s.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_are_rejected() {
        let mut t = SeqTable::new();
        let (a, _) = t.insert().unwrap();
        t.remove(a).unwrap();
        assert!(matches!(t.remove(a), Err(Error::UnknownSequence(_))));
        let (b, _) = t.insert().unwrap();
        assert_ne!(a, b);
        assert!(t.get(a).is_err());
        assert!(t.get(b).is_ok());
        assert_eq!(t.len(), 1);
        assert_eq!(t.iter().map(|(id, _)| id).collect::<Vec<_>>(), [b]);
        // issued ids have odd generations: none equals a vacant slot's (even) generation
        assert!(a.generation & 1 == 1 && b.generation & 1 == 1);
        t.remove(b).unwrap();
        assert!(matches!(t.get(b), Err(Error::UnknownSequence(_))));
        assert!(matches!(t.get(SeqId { slot: 7, ..a }), Err(Error::UnknownSequence(_))));
    }

    #[test]
    fn ids_of_another_table_are_foreign() {
        let (mut one, mut two) = (SeqTable::new(), SeqTable::new());
        let (a, _) = one.insert().unwrap();
        let (b, _) = two.insert().unwrap();
        assert_eq!((a.slot, a.generation), (b.slot, b.generation));
        assert_ne!(a, b);
        assert!(matches!(two.get(a), Err(Error::ForeignSequence(id)) if id == a));
        assert!(matches!(two.remove(a), Err(Error::ForeignSequence(_))));
        assert!(two.get(b).is_ok());
    }

    #[test]
    fn a_batch_names_each_sequence_once() {
        let mut t = SeqTable::new();
        let (a, _) = t.insert().unwrap();
        let (b, _) = t.insert().unwrap();
        t.next_batch();
        t.get_in_batch(a).unwrap();
        t.get_in_batch(b).unwrap();
        assert!(matches!(t.get_in_batch(a), Err(Error::DuplicateSequence(id)) if id == a));
        t.next_batch();
        t.get_in_batch(a).unwrap();
        // the stamps are forgotten when the batch counter wraps
        t.batch = u32::MAX;
        t.get_in_batch(b).unwrap();
        t.next_batch();
        assert_eq!(t.batch, 1);
        t.get_in_batch(b).unwrap();
        t.get_in_batch(a).unwrap();
    }
}
