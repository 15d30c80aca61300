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
    /// by the OS, so a large arena costs nothing until pages are written; but an arena that
    /// could never be backed (more than RAM + swap, or the cgroup's limit) is refused up front
    /// with [`Error::CapacityExceeded`] whatever the kernel's overcommit mode, since filling it
    /// would end in the OOM killer rather than an error.
    pub fn new(pages: usize, page_bytes: usize) -> Result<Self> {
        if pages == 0 || page_bytes == 0 {
            return Err(Error::InvalidConfig { field: "arena", reason: "must be non-empty" });
        }
        let bytes = pages
            .checked_mul(page_bytes)
            .ok_or(Error::InvalidConfig { field: "arena", reason: "pages * page_bytes overflows" })?;
        check_memory(Tier::G1, bytes as u64)?;
        let arena = Self::map(pages, page_bytes, bytes, Tier::G1)?;
        // Best effort: transparent huge pages make O_DIRECT reads into G1 pin far fewer pages
        // (measured: G3->G1 onboard 0.61x -> 0.90x of a raw read loop) and cut TLB misses.
        let _ = arena.map.advise(Advice::HugePage);
        Ok(arena)
    }

    /// Like [`Arena::new`] for another tier's memory, asking the OS for transparent huge pages
    /// (best effort) and optionally locking the memory (best effort; returns whether it is).
    /// Locking faults every page in at once, so it is only attempted when the mapping fits in
    /// the memory available right now (`MemAvailable`); a larger one stays unlocked rather than
    /// have the OOM killer pick a process (a root process is not held back by
    /// `RLIMIT_MEMLOCK`).
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
        check_memory(tier, bytes as u64)?;
        let arena = Self::map(pages, page_bytes, bytes, tier)?;
        if huge_pages {
            // Best effort: a kernel without THP just keeps 4 KiB pages.
            let _ = arena.map.advise(Advice::HugePage);
        }
        let fits_now = memory_available().is_none_or(|available| bytes as u64 <= available);
        let locked = mlock && fits_now && arena.map.lock().is_ok();
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

/// Upper bound of the bookkeeping a block pool keeps per block (measured 53-61 bytes: state and
/// refcount, free-ring slot, policy links, hash-index slot), for checking a capacity against
/// memory before anything is allocated.
pub(crate) const METADATA_BYTES_PER_BLOCK: u64 = 64;

/// Refuses `bytes` of memory for `tier` that this machine could never back: more than RAM +
/// swap, or than the memory limit of the process's cgroup. Linux's default (heuristic)
/// overcommit refuses a single such mapping anyway, but `vm.overcommit_memory = 1` or
/// `MAP_NORESERVE` would let it "succeed" and the process be OOM-killed while filling it, and
/// block metadata (a `Vec`) would abort the process on a failed allocation. Where the limits
/// cannot be read (not Linux), nothing is checked.
pub(crate) fn check_memory(tier: Tier, bytes: u64) -> Result<()> {
    match memory_limit() {
        Some(available) if bytes > available => {
            Err(Error::CapacityExceeded { tier, resource: "memory", requested: bytes, available })
        }
        _ => Ok(()),
    }
}

/// RAM + swap, or the cgroup's memory limit if lower; None if unknown.
pub(crate) fn memory_limit() -> Option<u64> {
    let total = meminfo_bytes("MemTotal:")?.saturating_add(meminfo_bytes("SwapTotal:").unwrap_or(0));
    Some(cgroup_memory_limit().map_or(total, |limit| limit.min(total)))
}

/// Memory available now without swapping (`MemAvailable`), or the cgroup's limit if lower.
fn memory_available() -> Option<u64> {
    let available = meminfo_bytes("MemAvailable:")?;
    Some(cgroup_memory_limit().map_or(available, |limit| limit.min(available)))
}

/// A `/proc/meminfo` field in bytes.
fn meminfo_bytes(field: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text, field)
}

fn parse_meminfo(text: &str, field: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix(field))?;
    let kib: u64 = value.trim().strip_suffix("kB")?.trim().parse().ok()?;
    kib.checked_mul(1024)
}

/// The memory limit of this process's cgroup (v2 `memory.max` or v1
/// `memory.limit_in_bytes`), looked up at the cgroup's path and at the mount root (what a
/// container with its own cgroup namespace sees); None if there is none.
fn cgroup_memory_limit() -> Option<u64> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let path_of = |prefix: &str| own.lines().find_map(|l| l.split_once(prefix).map(|(_, p)| p.trim().to_string()));
    let mut files = Vec::new();
    if let Some(p) = path_of("::") {
        files.push(format!("/sys/fs/cgroup{p}/memory.max"));
    }
    if let Some(p) = path_of(":memory:") {
        files.push(format!("/sys/fs/cgroup/memory{p}/memory.limit_in_bytes"));
    }
    files.push("/sys/fs/cgroup/memory.max".into());
    files.push("/sys/fs/cgroup/memory/memory.limit_in_bytes".into());
    // "max" (v2) or a page-rounded i64::MAX (v1) mean no limit and do not parse or are huge.
    files.iter().filter_map(|f| std::fs::read_to_string(f).ok()?.trim().parse::<u64>().ok()).min()
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

    #[test]
    fn meminfo_fields_parse() {
        let text = "MemTotal:       24684092 kB\nMemFree:  1 kB\nSwapTotal:             0 kB\n";
        assert_eq!(parse_meminfo(text, "MemTotal:"), Some(24684092 * 1024));
        assert_eq!(parse_meminfo(text, "SwapTotal:"), Some(0));
        assert_eq!(parse_meminfo(text, "MemAvailable:"), None);
        assert_eq!(parse_meminfo("MemTotal: lots kB", "MemTotal:"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn arena_beyond_memory_is_refused() {
        let limit = memory_limit().unwrap();
        assert!(limit > 0);
        let pages = (limit / 4096 + 1) as usize;
        let err = Arena::new(pages, 4096).unwrap_err();
        assert!(matches!(err, Error::CapacityExceeded { tier: Tier::G1, resource: "memory", .. }), "{err}");
        assert!(check_memory(Tier::G2, limit).is_ok());
    }
}
