//! The G1 arena: one page-aligned anonymous mapping holding every page of the fast pool.
//!
//! This is the only place in the pool that touches raw memory. Safe callers get checked slices
//! by [`BlockId`]; a runtime's kernels get the base pointer and the page stride
//! ([`Arena::base_ptr`], [`Arena::page_bytes`]) and address page `i` at `base + i * stride`.
#![allow(unsafe_code)]

use memmap2::{MmapMut, MmapOptions};

use crate::error::{Error, Result, Tier};
use crate::pool::BlockId;

/// Page memory of the fast pool.
///
/// ```
/// let mut arena = kvtier::Arena::new(4, 256)?;
/// arena.page_mut(kvtier::BlockId(3))?.fill(7);
/// assert_eq!(arena.page(kvtier::BlockId(3))?[255], 7);
/// assert!(arena.page(kvtier::BlockId(4)).is_err());
/// # Ok::<(), kvtier::Error>(())
/// ```
pub struct Arena {
    map: MmapMut,
    page_bytes: usize,
    pages: usize,
}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena").field("pages", &self.pages).field("page_bytes", &self.page_bytes).finish()
    }
}

impl Arena {
    /// Maps `pages * page_bytes` bytes of zeroed anonymous memory. Memory is committed lazily
    /// by the OS, so a large arena costs nothing until pages are written.
    pub fn new(pages: usize, page_bytes: usize) -> Result<Self> {
        if pages == 0 || page_bytes == 0 {
            return Err(Error::InvalidConfig { field: "arena", reason: "must be non-empty" });
        }
        let bytes = pages
            .checked_mul(page_bytes)
            .ok_or(Error::InvalidConfig { field: "arena", reason: "pages * page_bytes overflows" })?;
        let map =
            MmapOptions::new().len(bytes).map_anon().map_err(|source| Error::Map { tier: Tier::G1, bytes, source })?;
        Ok(Self { map, page_bytes, pages })
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Bytes per page; also the stride between consecutive pages.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// Base address of page 0, for zero-copy kernels. The mapping never moves while the arena
    /// lives. Writing through it is the caller's responsibility: only write pages of blocks the
    /// caller holds, as the pool does not lock page memory.
    pub fn base_ptr(&self) -> *const u8 {
        self.map.as_ptr()
    }

    fn range(&self, block: BlockId) -> Result<std::ops::Range<usize>> {
        let i = block.index();
        if i >= self.pages {
            return Err(Error::InvalidBlock { block, capacity: self.pages });
        }
        let start = i * self.page_bytes;
        Ok(start..start + self.page_bytes)
    }

    /// The bytes of one page.
    pub fn page(&self, block: BlockId) -> Result<&[u8]> {
        let r = self.range(block)?;
        Ok(&self.map[r])
    }

    /// The bytes of one page, writable.
    pub fn page_mut(&mut self, block: BlockId) -> Result<&mut [u8]> {
        let r = self.range(block)?;
        Ok(&mut self.map[r])
    }

    /// Copies page `src` onto page `dst` (copy-on-write of a shared partial block).
    pub fn copy_page(&mut self, src: BlockId, dst: BlockId) -> Result<()> {
        let s = self.range(src)?;
        let d = self.range(dst)?;
        if s != d {
            self.map.copy_within(s, d.start);
        }
        Ok(())
    }

    /// Two distinct pages at once, the first read-only and the second writable.
    pub fn page_pair_mut(&mut self, src: BlockId, dst: BlockId) -> Result<(&[u8], &mut [u8])> {
        let s = self.range(src)?;
        let d = self.range(dst)?;
        if s == d {
            return Err(Error::InvalidConfig { field: "page_pair_mut", reason: "src == dst" });
        }
        let len = self.page_bytes;
        let base = self.map.as_mut_ptr();
        // SAFETY: both ranges were bounds-checked against the mapping above and are distinct
        // page-aligned ranges of equal length, so they do not overlap; the returned borrows are
        // tied to `&mut self`, so no other access to the mapping can exist while they live.
        unsafe {
            Ok((
                std::slice::from_raw_parts(base.add(s.start), len),
                std::slice::from_raw_parts_mut(base.add(d.start), len),
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_disjoint_and_checked() {
        let mut a = Arena::new(3, 64).unwrap();
        for i in 0..3u32 {
            a.page_mut(BlockId(i)).unwrap().fill(i as u8 + 1);
        }
        for i in 0..3u32 {
            assert!(a.page(BlockId(i)).unwrap().iter().all(|&b| b == i as u8 + 1));
        }
        assert!(matches!(a.page(BlockId(3)), Err(Error::InvalidBlock { .. })));
        a.copy_page(BlockId(0), BlockId(2)).unwrap();
        assert!(a.page(BlockId(2)).unwrap().iter().all(|&b| b == 1));
        let (s, d) = a.page_pair_mut(BlockId(1), BlockId(0)).unwrap();
        d.copy_from_slice(s);
        assert!(a.page(BlockId(0)).unwrap().iter().all(|&b| b == 2));
        assert!(a.page_pair_mut(BlockId(1), BlockId(1)).is_err());
        assert_eq!(a.base_ptr() as usize % 4096, 0);
    }

    #[test]
    fn rejects_empty_and_overflow() {
        assert!(Arena::new(0, 64).is_err());
        assert!(Arena::new(usize::MAX, 2).is_err());
    }
}
