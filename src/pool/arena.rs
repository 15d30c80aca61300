//! Page memory: one page-aligned anonymous mapping holding every page of a tier (G1's fast
//! pool, G2's host slots), and the only code in kvtier that touches raw page memory.
//!
//! ## Leases
//! Pages are shared between a tier's owner (under its lock) and the offload workers (outside
//! it). Rather than trusting callers to follow a staging protocol, the arena enforces
//! exclusivity itself, as `RefCell` does for one value: every page has a lease word, and
//! page bytes are only reachable through
//! - [`PageRead`], a shared lease (any number at once), or
//! - [`PageWrite`], an exclusive lease (no other lease of that page at the same time),
//!
//! whose lifetimes bound the borrow of the bytes. A lease that would overlap a conflicting one
//! is refused with [`Error::PageBusy`] instead of aliasing the page, so no sequence of safe
//! calls can read a page while it is written, whatever the owners' bookkeeping says. The
//! owners' protocols (staging a page for a copy, onboarding) are built on these leases, and
//! under `--cfg loom` every lease also holds a loom-tracked cell access, so a model in which a
//! page is read while it is written fails. `&mut Arena` gives direct, unchecked access
//! ([`Arena::page_mut`]): no lease can be alive while it exists.
//!
//! A runtime's kernels get the base pointer and the page stride ([`Arena::base_ptr`],
//! [`Arena::page_bytes`]) and address page `i` at `base + i * stride`; accesses through that
//! pointer are outside the leases, the caller's own unsafe code and responsibility.
#![allow(unsafe_code)]

use std::ops::{Deref, DerefMut};

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::error::{Error, Result, Tier};
use crate::pool::BlockId;
use crate::sync::atomic::{AtomicU32, Ordering};

/// Lease word of a page held by a writer; any other value counts the readers.
const WRITER: u32 = u32::MAX;

/// Page memory of one tier.
///
/// ```
/// let mut arena = kvtier::Arena::new(4, 256)?;
/// arena.page_mut(kvtier::BlockId(3))?.fill(7);
/// assert_eq!(arena.read(kvtier::BlockId(3))?[255], 7);
/// assert!(arena.read(kvtier::BlockId(4)).is_err());
/// // a page is never written while it is read: the write lease is refused, not aliased
/// let reading = arena.read(kvtier::BlockId(3))?;
/// assert!(matches!(arena.write(kvtier::BlockId(3)), Err(kvtier::Error::PageBusy { .. })));
/// drop(reading);
/// arena.write(kvtier::BlockId(3))?.fill(9);
/// # Ok::<(), kvtier::Error>(())
/// ```
///
/// A lease borrows the arena, so `&mut` access cannot overlap it:
///
/// ```compile_fail
/// let mut arena = kvtier::Arena::new(4, 256)?;
/// let page = arena.read(kvtier::BlockId(0))?;
/// arena.page_mut(kvtier::BlockId(0))?.fill(1); // error: `arena` is borrowed by `page`
/// assert_eq!(page[0], 1);
/// # Ok::<(), kvtier::Error>(())
/// ```
pub struct Arena {
    map: MmapRaw,
    page_bytes: usize,
    pages: usize,
    tier: Tier,
    /// Per page: readers holding a [`PageRead`], or [`WRITER`].
    leases: Box<[AtomicU32]>,
    /// Per page, under loom: the cell each lease accesses, so loom checks page accesses.
    #[cfg(loom)]
    cells: Box<[loom::cell::UnsafeCell<()>]>,
}

// SAFETY: under loom the arena holds loom cells, which are `!Sync` only because loom cannot
// know how they are shared; every access to them goes through a lease, whose exclusivity the
// lease words enforce (and loom checks exactly that). Without loom, `Arena` is `Sync` by its
// fields (`MmapRaw`, atomics) and this impl does not exist.
#[cfg(loom)]
unsafe impl Sync for Arena {}

impl std::fmt::Debug for Arena {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arena")
            .field("tier", &self.tier)
            .field("pages", &self.pages)
            .field("page_bytes", &self.page_bytes)
            .finish()
    }
}

impl Arena {
    /// Maps `pages * page_bytes` bytes of zeroed anonymous memory for G1. Memory is committed
    /// lazily by the OS, so a large arena costs nothing until pages are written; but an arena
    /// that could never be backed (more than RAM + swap, or the cgroup's limit) is refused up
    /// front with [`Error::CapacityExceeded`] whatever the kernel's overcommit mode, since
    /// filling it would end in the OOM killer rather than an error.
    pub fn new(pages: usize, page_bytes: usize) -> Result<Self> {
        let arena = Self::map(pages, page_bytes, Tier::G1)?;
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
        let arena = Self::map(pages, page_bytes, tier)?;
        if huge_pages {
            // Best effort: a kernel without THP just keeps 4 KiB pages.
            let _ = arena.map.advise(Advice::HugePage);
        }
        let bytes = (pages * page_bytes) as u64;
        let fits_now = memory_available().is_none_or(|available| bytes <= available);
        let locked = mlock && fits_now && arena.map.lock().is_ok();
        Ok((arena, locked))
    }

    fn map(pages: usize, page_bytes: usize, tier: Tier) -> Result<Self> {
        if pages == 0 || page_bytes == 0 {
            return Err(Error::InvalidConfig { field: "arena", reason: "must be non-empty" });
        }
        let bytes = pages
            .checked_mul(page_bytes)
            .ok_or(Error::InvalidConfig { field: "arena", reason: "pages * page_bytes overflows" })?;
        // Pages plus the lease words must be backable.
        check_memory(tier, (bytes as u64).saturating_add(4 * pages as u64))?;
        let map = MmapOptions::new().len(bytes).map_anon().map_err(|source| Error::Map { tier, bytes, source })?;
        Ok(Self {
            map: MmapRaw::from(map),
            page_bytes,
            pages,
            tier,
            leases: (0..pages).map(|_| AtomicU32::new(0)).collect(),
            #[cfg(loom)]
            cells: (0..pages).map(|_| loom::cell::UnsafeCell::new(())).collect(),
        })
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.pages
    }

    /// Bytes per page; also the stride between consecutive pages.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// The tier this memory belongs to (named in errors).
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Base address of page 0, for zero-copy kernels. The mapping never moves while the arena
    /// lives. Accesses through it bypass the leases: a runtime must only write pages of blocks
    /// it holds privately, and only read pages of blocks it holds.
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

    /// A shared lease of one page: any number may be held at once, none while the page is
    /// written. [`Error::PageBusy`] if a [`PageWrite`] of it is alive.
    pub fn read(&self, block: BlockId) -> Result<PageRead<'_>> {
        let r = self.range(block)?;
        let word = &self.leases[block.index()];
        let mut seen = word.load(Ordering::Relaxed);
        loop {
            if seen >= WRITER - 1 {
                return Err(Error::PageBusy { tier: self.tier, block });
            }
            // Acquire pairs with the Release of the last writer's drop: its bytes are visible.
            match word.compare_exchange_weak(seen, seen + 1, Ordering::Acquire, Ordering::Relaxed) {
                Ok(_) => break,
                Err(now) => seen = now,
            }
        }
        // SAFETY: the range is inside the mapping (checked above), which lives as long as
        // `self`, and the lease word now counts this reader: no `PageWrite` of this page can
        // be created until it is dropped, and `&mut self` access cannot coexist with the
        // `&self` borrow this lease holds. So nothing writes these bytes while they are shared.
        let bytes = unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(r.start), r.len()) };
        Ok(PageRead {
            word,
            bytes,
            #[cfg(loom)]
            _access: self.cells[block.index()].get(),
        })
    }

    /// An exclusive lease of one page. [`Error::PageBusy`] if any other lease of it is alive.
    pub fn write(&self, block: BlockId) -> Result<PageWrite<'_>> {
        let r = self.range(block)?;
        let word = &self.leases[block.index()];
        // Acquire pairs with the Release of the previous leases' drops: their accesses happen
        // before ours.
        if word.compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed).is_err() {
            return Err(Error::PageBusy { tier: self.tier, block });
        }
        // SAFETY: in bounds as above; the lease word went from "no lease" to WRITER, so no
        // other lease of this page exists or can be created until this one is dropped, and
        // `&mut self` access cannot coexist with this `&self` borrow: these bytes are ours
        // alone. `MmapRaw` hands out a mutable pointer without going through a shared reference.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(r.start), r.len()) };
        Ok(PageWrite {
            word,
            bytes,
            #[cfg(loom)]
            _access: self.cells[block.index()].get_mut(),
        })
    }

    /// Whether any lease of `block` is alive (false for an id outside the arena).
    pub fn is_leased(&self, block: BlockId) -> bool {
        self.leases.get(block.index()).is_some_and(|w| w.load(Ordering::Acquire) != 0)
    }

    /// The bytes of one page, writable, through exclusive access to the whole arena.
    pub fn page_mut(&mut self, block: BlockId) -> Result<&mut [u8]> {
        let r = self.range(block)?;
        // SAFETY: in bounds; `&mut self` excludes every lease (each borrows `&self`) and every
        // other safe access to the mapping for as long as the returned borrow lives.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(r.start), r.len()) })
    }

    /// Copies page `src` onto page `dst` under leases: [`Error::PageBusy`] if `src` is being
    /// written or `dst` is leased at all; `src == dst` is a no-op.
    pub fn copy_page(&self, src: BlockId, dst: BlockId) -> Result<()> {
        if src == dst {
            self.range(src)?;
            return Ok(());
        }
        let from = self.read(src)?;
        let mut to = self.write(dst)?;
        to.copy_from_slice(&from);
        Ok(())
    }
}

/// A shared lease of one page ([`Arena::read`]): derefs to the page's bytes, which nothing
/// writes while it lives. Dropping it ends the lease.
pub struct PageRead<'a> {
    word: &'a AtomicU32,
    bytes: &'a [u8],
    #[cfg(loom)]
    _access: loom::cell::ConstPtr<()>,
}

/// An exclusive lease of one page ([`Arena::write`]): derefs to the page's bytes, which
/// nothing else reads or writes while it lives. Dropping it ends the lease.
pub struct PageWrite<'a> {
    word: &'a AtomicU32,
    bytes: &'a mut [u8],
    #[cfg(loom)]
    _access: loom::cell::MutPtr<()>,
}

impl Deref for PageRead<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl Deref for PageWrite<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.bytes
    }
}

impl DerefMut for PageWrite<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.bytes
    }
}

impl Drop for PageRead<'_> {
    fn drop(&mut self) {
        // Release: our reads happen before a later writer's Acquire.
        self.word.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for PageWrite<'_> {
    fn drop(&mut self) {
        // Release: our writes are visible to the next lease's Acquire.
        self.word.store(0, Ordering::Release);
    }
}

impl std::fmt::Debug for PageRead<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageRead").field("bytes", &self.bytes.len()).finish()
    }
}

impl std::fmt::Debug for PageWrite<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageWrite").field("bytes", &self.bytes.len()).finish()
    }
}

impl PartialEq<[u8]> for PageRead<'_> {
    fn eq(&self, other: &[u8]) -> bool {
        self.bytes == other
    }
}

impl PartialEq<&[u8]> for PageRead<'_> {
    fn eq(&self, other: &&[u8]) -> bool {
        self.bytes == *other
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
            assert!(a.read(BlockId(i)).unwrap().iter().all(|&b| b == i as u8 + 1));
        }
        assert!(matches!(a.read(BlockId(3)), Err(Error::InvalidBlock { .. })));
        assert!(matches!(a.write(BlockId(3)), Err(Error::InvalidBlock { .. })));
        a.copy_page(BlockId(0), BlockId(2)).unwrap();
        assert!(a.read(BlockId(2)).unwrap().iter().all(|&b| b == 1));
        a.copy_page(BlockId(1), BlockId(1)).unwrap();
        assert_eq!(a.base_ptr() as usize % 4096, 0);
    }

    #[test]
    fn leases_exclude_each_other() {
        let a = Arena::new(2, 64).unwrap();
        let r1 = a.read(BlockId(0)).unwrap();
        let r2 = a.read(BlockId(0)).unwrap();
        assert!(a.is_leased(BlockId(0)));
        assert!(matches!(a.write(BlockId(0)), Err(Error::PageBusy { tier: Tier::G1, block: BlockId(0) })));
        assert!(matches!(a.copy_page(BlockId(1), BlockId(0)), Err(Error::PageBusy { .. })));
        // another page is independent
        a.write(BlockId(1)).unwrap().fill(5);
        a.copy_page(BlockId(0), BlockId(1)).unwrap();
        drop(r1);
        assert!(a.write(BlockId(0)).is_err(), "one reader left");
        drop(r2);
        assert!(!a.is_leased(BlockId(0)));
        let mut w = a.write(BlockId(0)).unwrap();
        w.fill(9);
        assert!(matches!(a.read(BlockId(0)), Err(Error::PageBusy { .. })));
        assert!(matches!(a.write(BlockId(0)), Err(Error::PageBusy { .. })));
        drop(w);
        assert!(a.read(BlockId(0)).unwrap().iter().all(|&b| b == 9));
        assert!(!a.is_leased(BlockId(0)) && !a.is_leased(BlockId(7)));
    }

    #[test]
    fn leases_across_threads_never_tear() {
        let a = Arena::new(1, 4096).unwrap();
        std::thread::scope(|s| {
            for t in 0..3u8 {
                let a = &a;
                s.spawn(move || {
                    for i in 0..2000u32 {
                        if (i + t as u32).is_multiple_of(3) {
                            if let Ok(mut w) = a.write(BlockId(0)) {
                                w.fill((i % 251) as u8);
                            }
                        } else if let Ok(r) = a.read(BlockId(0)) {
                            assert!(r.iter().all(|&b| b == r[0]), "a page changed while it was read");
                        }
                    }
                });
            }
        });
        assert!(!a.is_leased(BlockId(0)));
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
