//! Page memory owned by the runtime: the slots a [`SlotStore`](super::SlotStore) loads into and
//! stores from.

use crate::error::{Error, Result};
use crate::sync::{Mutex, lock};

/// Slots of equal size in memory the runtime owns (a CPU KV buffer, pinned host memory), that
/// a [`SlotStore`](super::SlotStore) reads (stores) and fills (loads) from its IO workers.
///
/// The store calls these from its worker threads, with `slots` already checked: every index is
/// below [`SlotMemory::slot_count`], and the slots of one [`SlotMemory::write_slots`] call are
/// distinct. The runtime's side of the bargain is the one vLLM's tiering framework states: a
/// slot named in a store job is not written, and a slot named in a load job is neither read
/// nor written, until the job's result has been collected
/// ([`SlotStore::take_finished`](super::SlotStore::take_finished)).
///
/// ```
/// use kvtier::external::{HeapSlots, SlotMemory};
/// let memory = HeapSlots::new(4096, 2)?;
/// memory.write_slots(&[1], &mut |pages| pages[0].fill(7))?;
/// let mut seen = 0u8;
/// memory.read_slots(&[1], &mut |pages| seen = pages[0][0])?;
/// assert_eq!(seen, 7);
/// # Ok::<(), kvtier::Error>(())
/// ```
pub trait SlotMemory: Send + Sync + std::fmt::Debug {
    /// Bytes per slot (one page).
    fn slot_bytes(&self) -> usize;
    /// Number of slots.
    fn slot_count(&self) -> usize;
    /// Calls `f` once with the pages of `slots`, in order, to be read.
    fn read_slots(&self, slots: &[usize], f: &mut dyn FnMut(&[&[u8]])) -> Result<()>;
    /// Calls `f` once with the pages of `slots` (distinct), in order, to be filled.
    fn write_slots(&self, slots: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) -> Result<()>;
}

/// A [`SlotMemory`] on the heap, for tests, examples and runtimes that let kvtier own the
/// buffer. One lock over the whole buffer: a worker's batch holds it for the batch's IO.
#[derive(Debug)]
pub struct HeapSlots {
    slot_bytes: usize,
    slot_count: usize,
    bytes: Mutex<Vec<u8>>,
}

impl HeapSlots {
    /// `slot_count` zeroed slots of `slot_bytes` each; both must be non-zero.
    pub fn new(slot_bytes: usize, slot_count: usize) -> Result<Self> {
        if slot_bytes == 0 || slot_count == 0 {
            return Err(Error::InvalidConfig { field: "slots", reason: "slot_bytes and slot_count must be non-zero" });
        }
        let total = slot_bytes
            .checked_mul(slot_count)
            .ok_or(Error::InvalidConfig { field: "slots", reason: "slot_bytes * slot_count overflows" })?;
        Ok(Self { slot_bytes, slot_count, bytes: Mutex::new(vec![0; total]) })
    }

    /// A copy of slot `slot`'s bytes, or None if it is out of range.
    pub fn slot(&self, slot: usize) -> Option<Vec<u8>> {
        let bytes = lock(&self.bytes);
        bytes.chunks(self.slot_bytes).nth(slot).map(<[u8]>::to_vec)
    }

    /// Overwrites slot `slot` with `data` (exactly one slot long).
    pub fn set_slot(&self, slot: usize, data: &[u8]) -> Result<()> {
        if data.len() != self.slot_bytes {
            return Err(Error::LayoutMismatch { expected: self.slot_bytes, actual: data.len() });
        }
        let mut bytes = lock(&self.bytes);
        let page = bytes.chunks_mut(self.slot_bytes).nth(slot).ok_or_else(|| slot_out_of_range(slot))?;
        page.copy_from_slice(data);
        Ok(())
    }
}

pub(super) fn slot_out_of_range(slot: usize) -> Error {
    Error::OutOfRange { field: "slot", value: slot.to_string(), expected: "below the slot count of the memory" }
}

impl SlotMemory for HeapSlots {
    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn slot_count(&self) -> usize {
        self.slot_count
    }

    fn read_slots(&self, slots: &[usize], f: &mut dyn FnMut(&[&[u8]])) -> Result<()> {
        let bytes = lock(&self.bytes);
        let all: Vec<&[u8]> = bytes.chunks(self.slot_bytes).collect();
        let mut pages = Vec::with_capacity(slots.len());
        for &s in slots {
            pages.push(*all.get(s).ok_or_else(|| slot_out_of_range(s))?);
        }
        f(&pages);
        Ok(())
    }

    fn write_slots(&self, slots: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) -> Result<()> {
        let mut bytes = lock(&self.bytes);
        let mut all: Vec<Option<&mut [u8]>> = bytes.chunks_mut(self.slot_bytes).map(Some).collect();
        let mut pages = Vec::with_capacity(slots.len());
        for &s in slots {
            let page = all.get_mut(s).and_then(Option::take).ok_or_else(|| slot_out_of_range(s))?;
            pages.push(page);
        }
        f(&mut pages);
        Ok(())
    }
}
