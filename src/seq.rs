//! Sequence bookkeeping: token ids, page table and hash chain of each live request.

use crate::error::{Error, Result};
use crate::pool::BlockId;
use crate::prefix::{BlockHash, ExtraKeys};

/// Handle of a live sequence. Ids are never reused: a freed id stays invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeqId(pub u64);

impl SeqId {
    fn new(slot: u32, generation: u32) -> Self {
        SeqId((generation as u64) << 32 | slot as u64)
    }
    fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn generation(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

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

#[repr(C, align(64))]
struct Slot {
    generation: u32,
    live: bool,
    state: SeqState,
}

/// Slab of sequences with generation-checked ids.
#[derive(Default)]
pub(crate) struct SeqTable {
    slots: Vec<Slot>,
    vacant: Vec<u32>,
    live: usize,
}

impl SeqTable {
    pub fn len(&self) -> usize {
        self.live
    }

    /// A fresh, empty sequence (reusing a vacant slot's buffers).
    pub fn insert(&mut self) -> Result<(SeqId, &mut SeqState)> {
        let slot = match self.vacant.pop() {
            Some(s) => s,
            None => {
                let s = u32::try_from(self.slots.len())
                    .map_err(|_| Error::InvalidConfig { field: "sequences", reason: "more than 2^32 live" })?;
                self.slots.push(Slot { generation: 0, live: false, state: SeqState::default() });
                s
            }
        };
        let s = &mut self.slots[slot as usize];
        s.live = true;
        self.live += 1;
        Ok((SeqId::new(slot, s.generation), &mut s.state))
    }

    pub fn get(&self, id: SeqId) -> Result<&SeqState> {
        match self.slots.get(id.slot()) {
            Some(s) if s.live && s.generation == id.generation() => Ok(&s.state),
            _ => Err(Error::UnknownSequence(id)),
        }
    }

    pub fn get_mut(&mut self, id: SeqId) -> Result<&mut SeqState> {
        match self.slots.get_mut(id.slot()) {
            Some(s) if s.live && s.generation == id.generation() => Ok(&mut s.state),
            _ => Err(Error::UnknownSequence(id)),
        }
    }

    /// Takes the state out for an operation that also needs the pool; put it back with
    /// [`SeqTable::put_back`].
    pub fn take(&mut self, id: SeqId) -> Result<SeqState> {
        let s = self.get_mut(id)?;
        Ok(std::mem::take(s))
    }

    pub fn put_back(&mut self, id: SeqId, state: SeqState) {
        if let Some(s) = self.slots.get_mut(id.slot()) {
            s.state = state;
        }
    }

    /// Ends a sequence; its id becomes invalid forever (until the 2^32nd reuse of its slot).
    pub fn remove(&mut self, id: SeqId) -> Result<()> {
        self.get(id)?;
        let s = &mut self.slots[id.slot()];
        s.live = false;
        s.generation = s.generation.wrapping_add(1);
        s.state.clear();
        self.vacant.push(id.slot() as u32);
        self.live -= 1;
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = (SeqId, &SeqState)> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.live)
            .map(|(i, s)| (SeqId::new(i as u32, s.generation), &s.state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_ids_are_rejected() {
        let mut t = SeqTable::default();
        let (a, _) = t.insert().unwrap();
        t.remove(a).unwrap();
        assert!(matches!(t.remove(a), Err(Error::UnknownSequence(_))));
        let (b, _) = t.insert().unwrap();
        assert_ne!(a, b);
        assert!(t.get(a).is_err());
        assert!(t.get(b).is_ok());
        assert_eq!(t.len(), 1);
        assert!(t.get(SeqId(12345)).is_err());
    }
}
