//! The runtime's primary KV buffer (any object with the buffer protocol: memoryview, numpy
//! array, bytearray, a torch tensor's numpy view) as kvtier slot memory, zero copy.
//!
//! This is the only module of the crate with `unsafe`: the IO workers read and fill the
//! buffer's memory without the GIL, through slices made from the pointer the buffer protocol
//! gave. What makes that sound:
//! - The `PyUntypedBuffer` is held for as long as this value lives: the exporter keeps the
//!   memory alive and in place while an export is open (numpy and bytearray refuse to resize),
//!   and the pointer, length and contiguity are those checked at construction.
//! - Every slice stays inside the buffer: slots are checked against the slot count, which is
//!   `len_bytes / slot_bytes`.
//! - No two slices made here alias mutably: each slot has a lease word (readers count up,
//!   a writer takes it exclusively), taken before a slice is made and given back after the
//!   callback returns; a conflicting job fails instead of aliasing.
//! - The runtime does not touch a slot named in a job while the job runs (the contract of
//!   vLLM's tiering framework, and of [`kvtier::external::SlotMemory`]). Python code that
//!   breaks it races with the IO; it can get torn pages (which a later load's checksum may
//!   then refuse), but no slice outlives the buffer.

use std::sync::atomic::{AtomicU32, Ordering};

use kvtier::external::SlotMemory;
use kvtier::{Error, Result};
use pyo3::buffer::PyUntypedBuffer;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The lease word of a slot held by a writer.
const WRITER: u32 = u32::MAX;

/// A C-contiguous buffer cut into equal slots.
pub(crate) struct PrimaryBuffer {
    buffer: PyUntypedBuffer,
    slot_bytes: usize,
    slot_count: usize,
    leases: Vec<AtomicU32>,
}

impl std::fmt::Debug for PrimaryBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrimaryBuffer")
            .field("slot_bytes", &self.slot_bytes)
            .field("slot_count", &self.slot_count)
            .field("readonly", &self.buffer.readonly())
            .finish()
    }
}

impl PrimaryBuffer {
    /// Takes a buffer export of `obj`; `slot_bytes` defaults to its first stride (vLLM's
    /// primary view: one block per row).
    pub(crate) fn new(obj: &Bound<'_, PyAny>, slot_bytes: Option<usize>) -> PyResult<Self> {
        let buffer = PyUntypedBuffer::get(obj)?;
        if !buffer.is_c_contiguous() {
            return Err(PyValueError::new_err("the KV buffer must be C-contiguous"));
        }
        let slot_bytes = match slot_bytes {
            Some(b) => b,
            None => buffer.strides().first().and_then(|s| usize::try_from(*s).ok()).unwrap_or(0),
        };
        let len = buffer.len_bytes();
        if slot_bytes == 0 || len == 0 || !len.is_multiple_of(slot_bytes) {
            return Err(PyValueError::new_err(format!(
                "the KV buffer ({len} bytes) is not a whole number of blocks of {slot_bytes} bytes"
            )));
        }
        let slot_count = len / slot_bytes;
        let leases = (0..slot_count).map(|_| AtomicU32::new(0)).collect();
        Ok(Self { buffer, slot_bytes, slot_count, leases })
    }

    /// Whether the buffer may be written (loads need it).
    pub(crate) fn writable(&self) -> bool {
        !self.buffer.readonly()
    }

    fn busy(slot: usize) -> Error {
        Error::OutOfRange {
            field: "slot",
            value: format!("{slot} (used by another job)"),
            expected: "a slot no other running job reads or fills",
        }
    }

    /// Takes a shared lease on each slot (all or none).
    fn lease_read(&self, slots: &[usize]) -> Result<()> {
        for (i, &s) in slots.iter().enumerate() {
            let word = self.leases.get(s).ok_or_else(|| Self::busy(s))?;
            // Acquire pairs with the writer's Release in `release_write`: its bytes are
            // visible to this reader.
            let taken =
                word.fetch_update(Ordering::Acquire, Ordering::Relaxed, |n| (n < WRITER - 1).then_some(n + 1)).is_ok();
            if !taken {
                self.release_read(&slots[..i]);
                return Err(Self::busy(s));
            }
        }
        Ok(())
    }

    fn release_read(&self, slots: &[usize]) {
        for &s in slots {
            if let Some(word) = self.leases.get(s) {
                word.fetch_sub(1, Ordering::Release);
            }
        }
    }

    /// Takes the exclusive lease on each slot (all or none; a slot named twice fails).
    fn lease_write(&self, slots: &[usize]) -> Result<()> {
        for (i, &s) in slots.iter().enumerate() {
            let word = self.leases.get(s).ok_or_else(|| Self::busy(s))?;
            if word.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_err() {
                self.release_write(&slots[..i]);
                return Err(Self::busy(s));
            }
        }
        Ok(())
    }

    fn release_write(&self, slots: &[usize]) {
        for &s in slots {
            if let Some(word) = self.leases.get(s) {
                word.store(0, Ordering::Release);
            }
        }
    }

    fn base(&self) -> *mut u8 {
        self.buffer.buf_ptr().cast::<u8>()
    }
}

impl SlotMemory for PrimaryBuffer {
    fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    fn slot_count(&self) -> usize {
        self.slot_count
    }

    fn read_slots(&self, slots: &[usize], f: &mut dyn FnMut(&[&[u8]])) -> Result<()> {
        self.lease_read(slots)?;
        let base = self.base();
        let pages: Vec<&[u8]> = slots
            .iter()
            .map(|&s| {
                // SAFETY: `s < slot_count` (lease_read found its word), so the range
                // [s * slot_bytes, (s + 1) * slot_bytes) lies inside the `len_bytes` the export
                // reported; the export is held by `self`, which outlives `pages`; the shared
                // lease keeps every writer of this module off the slot until released below.
                unsafe { std::slice::from_raw_parts(base.add(s * self.slot_bytes), self.slot_bytes) }
            })
            .collect();
        f(&pages);
        drop(pages);
        self.release_read(slots);
        Ok(())
    }

    fn write_slots(&self, slots: &[usize], f: &mut dyn FnMut(&mut [&mut [u8]])) -> Result<()> {
        if !self.writable() {
            return Err(Error::InvalidConfig { field: "buffer", reason: "is read-only: loads cannot fill it" });
        }
        self.lease_write(slots)?;
        let base = self.base();
        let mut pages: Vec<&mut [u8]> = slots
            .iter()
            .map(|&s| {
                // SAFETY: in bounds as in `read_slots`; the export is writable (checked above);
                // the exclusive lease on each slot (taken for distinct slots only: a repeat
                // fails `lease_write`) means no other slice of it exists until released below.
                unsafe { std::slice::from_raw_parts_mut(base.add(s * self.slot_bytes), self.slot_bytes) }
            })
            .collect();
        f(&mut pages);
        drop(pages);
        self.release_write(slots);
        Ok(())
    }
}
