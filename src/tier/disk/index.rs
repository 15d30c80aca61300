//! Slot bookkeeping of the SSD tier (G3): which slot holds which hash, in which state, in which
//! eviction order, mirrored in the checked records of the mapped index file.

use std::fs::File;
use std::sync::atomic::{Ordering, compiler_fence};
use std::time::Instant;

use memmap2::MmapMut;

use super::config::DiskMetrics;
use super::format::{HEADER_BYTES, Header, RECORD_BYTES, STATE_VALID, STATE_WRITING, SlotRecord};
use crate::error::{Error, Result, Tier};
use crate::list::IndexList;
use crate::policy::{AnyPolicy, EvictionPolicy, PolicyKind};
use crate::pool::{BlockId, BlockPool, BlockState};
use crate::prefix::BlockHash;
use crate::sync::{Arc, Mutex, lock};

/// Wraps an OS error of a G3 operation.
pub(super) fn io_err(op: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { tier: Tier::G3, op, source }
}

/// Per-slot state in memory (the durable copy is the record in the index file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SlotState {
    /// Free or never written.
    Empty,
    /// Data IO in flight; not served.
    Writing,
    /// Served after verification.
    Valid,
    /// Dropped (removed, corrupt, failed write) but still registered in the pool until reused.
    Dead,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Slot {
    pub(super) state: SlotState,
    pub(super) generation: u64,
    pub(super) checksum: u64,
    pub(super) user_pins: u32,
}

/// The tier's eviction policy over slots, with dropped ("doomed") slots jumping the queue so
/// they are reused first.
///
/// The pool owns the policy, so the doomed flags are shared with the tier through a mutex that is
/// only ever taken while the tier's own lock is held (no lock-order cycle).
pub(super) struct SlotPolicy {
    inner: AnyPolicy,
    doomed_first: IndexList,
    doomed: Arc<Mutex<Vec<bool>>>,
}

impl EvictionPolicy for SlotPolicy {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn on_register(&mut self, block: BlockId, key: u64) {
        self.inner.on_register(block, key);
    }
    fn insert(&mut self, block: BlockId) {
        if lock(&self.doomed).get(block.index()).copied().unwrap_or(false) {
            self.inner.on_forget(block);
            self.doomed_first.push_back(block.0);
        } else {
            self.inner.insert(block);
        }
    }
    fn readmit(&mut self, block: BlockId) {
        self.inner.readmit(block);
    }
    fn remove(&mut self, block: BlockId) {
        if !self.doomed_first.remove(block.0) {
            self.inner.remove(block);
        }
    }
    fn pop_victim(&mut self) -> Option<BlockId> {
        self.doomed_first.pop_front().map(BlockId).or_else(|| self.inner.pop_victim())
    }
    fn on_hit(&mut self, block: BlockId) {
        self.inner.on_hit(block);
    }
    fn on_forget(&mut self, block: BlockId) {
        self.inner.on_forget(block);
    }
    fn prefers_leaves(&self) -> bool {
        self.inner.prefers_leaves()
    }
    fn len(&self) -> usize {
        self.doomed_first.len() + self.inner.len()
    }
    fn bytes_per_entry(&self) -> usize {
        self.inner.bytes_per_entry() + IndexList::bytes_per_element() + 1
    }
}

/// Bookkeeping guarded by the tier's lock.
pub(super) struct Inner {
    pub(super) pool: BlockPool<SlotPolicy>,
    pub(super) slots: Vec<Slot>,
    doomed: Arc<Mutex<Vec<bool>>>,
    pub(super) index: MmapMut,
    next_generation: u64,
    pub(super) disk_full_until: Option<Instant>,
    pub(super) m: DiskMetrics,
}

/// Maps the whole index file read-write.
#[allow(unsafe_code)]
pub(super) fn map_index(file: &File) -> Result<MmapMut> {
    // SAFETY: memmap2 requires that nothing else truncates or writes the file while it is mapped.
    // The index file is created 0600 in the tier's directory, sized before it is mapped and never
    // resized afterwards; the `DiskTier` keeps it open and holds an exclusive advisory lock on it
    // for the mapping's whole life, so no other kvtier instance opens it; and this process only
    // touches it through this mapping, under the tier's mutex (`&mut MmapMut`).
    unsafe { MmapMut::map_mut(file) }.map_err(io_err("mmap"))
}

fn record_offset(slot: usize) -> usize {
    HEADER_BYTES + slot * RECORD_BYTES
}

fn read_record(index: &MmapMut, slot: usize) -> Option<SlotRecord> {
    let off = record_offset(slot);
    let bytes = index.get(off..off + RECORD_BYTES)?;
    bytemuck::try_pod_read_unaligned(bytes).ok()
}

/// Writes a record with its `state` field stored last, so a process killed mid-way leaves a
/// record whose check value does not match (the check covers the state).
fn write_record(index: &mut MmapMut, slot: usize, record: &SlotRecord) {
    let off = record_offset(slot);
    let Some(dst) = index.get_mut(off..off + RECORD_BYTES) else { return };
    let state_at = std::mem::offset_of!(SlotRecord, state);
    let mut staged = *record;
    staged.state = STATE_WRITING;
    dst.copy_from_slice(bytemuck::bytes_of(&staged));
    compiler_fence(Ordering::SeqCst);
    dst[state_at..state_at + 4].copy_from_slice(&record.state.to_ne_bytes());
}

impl Inner {
    /// Rebuilds the in-memory index from the records: intact VALID slots become evictable in
    /// generation order (oldest first out), everything else is cleared and freed.
    pub(super) fn recover(
        mut index: MmapMut,
        header: &Header,
        page_bytes: usize,
        lost_files: &[u64],
        kind: PolicyKind,
    ) -> Result<Self> {
        let capacity = header.slot_count as usize;
        let doomed = Arc::new(Mutex::new(vec![false; capacity]));
        let policy = SlotPolicy {
            inner: kind.build(capacity),
            doomed_first: IndexList::new(capacity),
            doomed: Arc::clone(&doomed),
        };
        let mut pool = BlockPool::with_policy(capacity, policy, 0)?;
        let empty = Slot { state: SlotState::Empty, generation: 0, checksum: 0, user_pins: 0 };
        let mut slots = vec![empty; capacity];
        let mut all = Vec::with_capacity(capacity);
        pool.allocate(capacity, &mut all)?;
        let mut valid = Vec::new();
        let mut max_generation = 0;
        for slot in 0..capacity {
            let Some(record) = read_record(&index, slot) else {
                return Err(Error::BadHeader { tier: Tier::G3, reason: "index file is shorter than its slot count" });
            };
            max_generation = max_generation.max(record.generation);
            let lost = lost_files.contains(&(slot as u64 / header.slots_per_file));
            if record.is_valid_at(slot as u64) && record.len as usize == page_bytes && !lost {
                valid.push((record.generation, slot));
            } else if record != bytemuck::Zeroable::zeroed() {
                write_record(&mut index, slot, &bytemuck::Zeroable::zeroed());
            }
        }
        valid.sort_unstable_by(|a, b| b.cmp(a)); // newest first wins a (never expected) duplicate hash
        let mut kept = Vec::with_capacity(valid.len());
        for &(generation, slot) in &valid {
            let Some(record) = read_record(&index, slot) else { continue };
            if pool.register(BlockId(slot as u32), record.hash(), None, 0)? {
                slots[slot] = Slot { state: SlotState::Valid, generation, checksum: record.checksum, user_pins: 0 };
                kept.push(slot);
            } else {
                write_record(&mut index, slot, &bytemuck::Zeroable::zeroed());
            }
        }
        for (slot, s) in slots.iter().enumerate() {
            if s.state == SlotState::Empty {
                pool.release(BlockId(slot as u32))?;
            }
        }
        for &slot in kept.iter().rev() {
            pool.release(BlockId(slot as u32))?; // oldest generation first: first to be evicted
        }
        let m = DiskMetrics {
            recovered: kept.len() as u64,
            used_slots: kept.len() as u64,
            capacity_slots: capacity as u64,
            ..DiskMetrics::default()
        };
        Ok(Self { pool, slots, doomed, index, next_generation: max_generation + 1, disk_full_until: None, m })
    }

    /// The slot of a valid page under `hash`.
    pub(super) fn valid_slot(&self, hash: BlockHash) -> Option<BlockId> {
        self.pool.lookup(hash).filter(|b| self.slots[b.index()].state == SlotState::Valid)
    }

    fn set_doomed(&self, b: BlockId, doomed: bool) {
        if let Some(flag) = lock(&self.doomed).get_mut(b.index()) {
            *flag = doomed;
        }
    }

    fn set_state(&mut self, b: BlockId, state: SlotState) {
        let slot = &mut self.slots[b.index()];
        if slot.state == SlotState::Valid {
            self.m.used_slots -= 1;
        }
        if state == SlotState::Valid {
            self.m.used_slots += 1;
        }
        slot.state = state;
    }

    /// Gives `hash` a pinned slot whose record is marked WRITING, or None when the hash is
    /// already stored or in flight, or no slot can be had.
    pub(super) fn claim_slot(&mut self, hash: BlockHash) -> Option<(BlockId, u64)> {
        let b = match self.pool.lookup(hash) {
            Some(b) => {
                // A dropped slot still holds the hash in the pool: rewrite in place if unused.
                let dead = self.slots[b.index()].state == SlotState::Dead;
                if !dead || self.pool.state(b).ok()? != BlockState::Evictable {
                    if dead {
                        self.m.no_slot_refusals += 1;
                    }
                    return None;
                }
                self.pool.acquire_block(b).ok()?;
                b
            }
            None => {
                let Ok(b) = self.pool.allocate_one() else {
                    self.m.no_slot_refusals += 1;
                    return None;
                };
                if self.slots[b.index()].state == SlotState::Valid {
                    self.m.evictions += 1;
                }
                if !matches!(self.pool.register(b, hash, None, 0), Ok(true)) {
                    self.set_state(b, SlotState::Empty);
                    let _ = self.pool.release(b);
                    return None;
                }
                b
            }
        };
        self.set_doomed(b, false);
        let generation = self.next_generation;
        self.next_generation += 1;
        self.set_state(b, SlotState::Writing);
        let slot = &mut self.slots[b.index()];
        slot.generation = generation;
        slot.checksum = 0;
        let record = SlotRecord::new(b.0 as u64, hash, generation, 0, 0, STATE_WRITING);
        write_record(&mut self.index, b.index(), &record);
        Some((b, generation))
    }

    /// Marks a written slot VALID if it was not dropped meanwhile. Returns whether it was.
    pub(super) fn commit_write(
        &mut self,
        b: BlockId,
        hash: BlockHash,
        generation: u64,
        checksum: u64,
        len: usize,
    ) -> bool {
        let slot = self.slots[b.index()];
        if slot.state != SlotState::Writing || slot.generation != generation {
            return false;
        }
        let record = SlotRecord::new(b.0 as u64, hash, generation, checksum, len as u32, STATE_VALID);
        write_record(&mut self.index, b.index(), &record);
        self.set_state(b, SlotState::Valid);
        self.slots[b.index()].checksum = checksum;
        self.m.pages_written += 1;
        self.m.bytes_written += len as u64;
        true
    }

    /// Drops a slot's content: its record is cleared, it is never served again and it moves to
    /// the front of the eviction order (at once if unreferenced, else when its last pin goes).
    pub(super) fn drop_slot(&mut self, b: BlockId) {
        write_record(&mut self.index, b.index(), &bytemuck::Zeroable::zeroed());
        self.set_state(b, SlotState::Dead);
        self.set_doomed(b, true);
        if self.pool.state(b).ok() == Some(BlockState::Evictable) && self.pool.acquire_block(b).is_ok() {
            let _ = self.pool.release(b);
        }
    }
}
