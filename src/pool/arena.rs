//! The G1 arena: one page-aligned anonymous mapping holding every page of the fast pool.
//!
//! This is the only place in the pool that touches raw memory. Safe callers get checked slices
//! by [`BlockId`]; a runtime's kernels get the base pointer and the page stride
//! ([`Arena::base_ptr`], [`Arena::page_bytes`]) and address page `i` at `base + i * stride`.
#![allow(unsafe_code)]

use memmap2::{Advice, MmapOptions, MmapRaw};

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
    map: MmapRaw,
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
        let arena = Self::map(pages, page_bytes, bytes, Tier::G1)?;
        // Best effort: transparent huge pages make O_DIRECT reads into G1 pin far fewer pages
        // (measured: G3->G1 onboard 0.61x -> 0.90x of a raw read loop) and cut TLB misses.
        let _ = arena.map.advise(Advice::HugePage);
        Ok(arena)
    }

    /// Like [`Arena::new`] for another tier's memory, asking the OS for transparent huge pages
    /// (best effort) and optionally locking the memory (best effort; returns whether it is).
    pub fn for_tier(
        pages: usize,
        page_bytes: usize,
        tier: Tier,
        huge_pages: bool,
        mlock: bool,
    ) -> Result<(Self, bool)> {
        if pages == 0 || page_bytes == 0 {
            return Err(Error::InvalidConfig { field: "arena", reason: "must be non-empty" });
        }
        let bytes = pages
            .checked_mul(page_bytes)
            .ok_or(Error::InvalidConfig { field: "arena", reason: "pages * page_bytes overflows" })?;
        let arena = Self::map(pages, page_bytes, bytes, tier)?;
        if huge_pages {
            // Best effort: a kernel without THP just keeps 4 KiB pages.
            let _ = arena.map.advise(Advice::HugePage);
        }
        let locked = mlock && arena.map.lock().is_ok();
        Ok((arena, locked))
    }

    fn map(pages: usize, page_bytes: usize, bytes: usize, tier: Tier) -> Result<Self> {
        let map = MmapOptions::new().len(bytes).map_anon().map_err(|source| Error::Map { tier, bytes, source })?;
        Ok(Self { map: MmapRaw::from(map), page_bytes, pages })
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

    /// A page's bytes, shared, for owners that copy pages outside their lock.
    ///
    /// # Safety
    /// While the returned slice lives, nothing may write page `block`: no `&mut` from
    /// [`Arena::page_mut`], [`Arena::page_exclusive`] or any other path. Owners uphold this by
    /// pinning the page (it cannot be reused) and only handing out hashed, immutable pages.
    pub(crate) unsafe fn page_shared(&self, block: BlockId) -> Result<&[u8]> {
        let r = self.range(block)?;
        // SAFETY: the range is inside the mapping (checked above), which lives as long as
        // `self`; the caller guarantees no concurrent writer of this page.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(r.start), r.len()) })
    }

    /// A page's bytes, exclusive, for owners that fill pages outside their lock.
    ///
    /// # Safety
    /// While the returned slice lives, no other reference to page `block` may exist and
    /// nothing else may read or write it. Owners uphold this by filling only freshly allocated,
    /// unregistered pages that they alone reference.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn page_exclusive(&self, block: BlockId) -> Result<&mut [u8]> {
        let r = self.range(block)?;
        // SAFETY: in bounds as above; `MmapRaw` hands out a mutable pointer without going
        // through a shared reference, and the caller guarantees exclusivity of this page.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(r.start), r.len()) })
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
        // SAFETY: in bounds; writers need `&mut self` (or an owner's unsafe exclusive lease,
        // whose contract forbids this read while it lives), so no write is concurrent.
        Ok(unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(r.start), r.len()) })
    }

    /// The bytes of one page, writable.
    pub fn page_mut(&mut self, block: BlockId) -> Result<&mut [u8]> {
        let r = self.range(block)?;
        // SAFETY: in bounds; `&mut self` excludes every other safe access to the mapping.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(r.start), r.len()) })
    }

    /// Copies page `src` onto page `dst` (copy-on-write of a shared partial block).
    pub fn copy_page(&mut self, src: BlockId, dst: BlockId) -> Result<()> {
        let s = self.range(src)?;
        let d = self.range(dst)?;
        if s != d {
            let (src, dst) = (self.map.as_ptr(), self.map.as_mut_ptr());
            // SAFETY: both ranges are in bounds and distinct pages of equal length, so they do
            // not overlap; `&mut self` excludes any other access.
            unsafe { std::ptr::copy_nonoverlapping(src.add(s.start), dst.add(d.start), s.len()) };
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
