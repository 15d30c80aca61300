//! G3: the SSD tier, a directory of slab files with 4 KiB-aligned fixed-size page slots.
//!
//! Why: host DRAM holds hundreds of GB, an NVMe drive TBs; a prefix found on SSD costs one read
//! instead of a prefill, and the directory survives a restart of the server.
//!
//! Layout of the directory (see [`crate::tier::disk_format`] for the bytes):
//! - `g3.index`: a header with the model [`Fingerprint`] and geometry, then one checked 64-byte
//!   [`SlotRecord`](super::SlotRecord) per slot (hash, length, xxh3 checksum, generation, state), mapped with
//!   memmap2; it is locked (advisory, exclusive) while a tier has it open.
//! - `slab-00000.kvt`, ...: `slots_per_file` slots of `slot_bytes` each, read and written with
//!   O_DIRECT through an [`IoBackend`] (io_uring or psync): a write batch in one submission,
//!   whose pages are checksummed on the same thread while their IO runs; a read batch in
//!   submissions of at most [`DiskConfig::read_chunk_bytes`], each page verified as its read
//!   completes while the reads behind it run.
//!
//! Lifecycle of a page write (survives SIGKILL at any instant):
//! 1. Under the lock: the hash gets a slot (a free one, or the least recently used unpinned one
//!    is evicted), the slot is pinned and its record is marked WRITING with a new generation.
//! 2. Without the lock: the data IO runs; lookups and reads of other pages proceed.
//! 3. Under the lock, only once the data IO has completed: on success the record's fields are
//!    written, then its state VALID last; on failure the slot is dropped (its record cleared)
//!    and the error is reported per page. A crash at any submission never leaves a VALID
//!    record over data that was not written (tests/crash_points.rs tries every one).
//!
//! What is durable when:
//! - Process crash (SIGKILL, abort): everything `write_pages` reported stored survives, with or
//!   without [`DiskTier::sync`]: the data IO completed and the records sit in the page cache.
//! - Power loss: [`DiskTier::sync`] fsyncs every slab's data first, then flushes the index
//!   (msync), so every page reported stored before the call is durable once it returns. Without
//!   it (or for a page committed while it runs), the kernel writes records and data back in no
//!   particular order: a record may reach the disk without its data. Such a slot fails its
//!   checksum on the first read and is a counted miss (`corrupt`), dropped, never served.
//!
//! Lifecycle of a page read: pin the slot under the lock, read without it, verify the xxh3
//! checksum, unpin. A checksum mismatch, short read or IO error is a miss (counted, slot dropped),
//! never wrong bytes. On [`DiskTier::open`] of an existing directory with the same fingerprint,
//! the VALID records whose check value verifies are the index, in LRU order by generation.

use std::fs::File;
#[cfg(test)]
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use xxhash_rust::xxh3::xxh3_64;

mod config;
mod files;
pub mod format;
mod index;

use crate::error::{Error, Result, Tier};
use crate::io::{AlignedBuf, DIRECT_ALIGN, IoBackend, IoOp, Overlap, SlabFile, open_backend, reserve, slab_from_file};
use crate::layout::KvLayout;
use crate::pool::BlockId;
use crate::prefix::BlockHash;
use crate::sync::{Mutex, lock};
pub use config::{DEFAULT_READ_CHUNK_BYTES, DiskConfig, DiskMetrics, MAX_SLOTS};
use files::TierDir;
use format::{Fingerprint, HEADER_BYTES, Header, is_blank, parse_header, slot_bytes_for};
use index::{Inner, SlotState, io_err, map_index};

/// Name of the index file inside the tier directory.
pub const INDEX_FILE: &str = "g3.index";
/// Bounce areas (one mapping of a batch's bounce slots each) kept for reuse between batches.
const MAX_CACHED_BOUNCE: usize = 4;

/// The G3 SSD tier. `Send + Sync`; see the module docs for the write and read lifecycles.
///
/// ```
/// use kvtier::{BlockHash, Dtype, KvLayout};
/// use kvtier::tier::{DiskConfig, DiskTier};
/// let dir = std::env::temp_dir().join(format!("kvtier-doc-g3-{}", std::process::id()));
/// let layout = KvLayout::new(2, 2, 8, Dtype::F16, 4)?;
/// let tier = DiskTier::open(&layout, DiskConfig::new(&dir).with_capacity_slots(8))?;
/// let page = vec![7u8; layout.page_bytes()];
/// assert!(tier.write_pages(&[(BlockHash(1), &page)])[0].as_ref().is_ok_and(|w| *w));
/// let mut out = vec![0u8; layout.page_bytes()];
/// assert!(tier.read_pages(&mut [(BlockHash(1), &mut out[..])])[0].as_ref().is_ok_and(|hit| *hit));
/// assert_eq!(out, page);
/// # drop(tier); std::fs::remove_dir_all(&dir).ok();
/// # Ok::<(), kvtier::Error>(())
/// ```
pub struct DiskTier {
    header: Header,
    dir: PathBuf,
    page_bytes: usize,
    slot_bytes: usize,
    enospc_backoff: Duration,
    backend: Box<dyn IoBackend>,
    slabs: Vec<SlabFile>,
    inner: Mutex<Inner>,
    bounce: Mutex<Vec<AlignedBuf>>,
    /// Bytes per chunk of a pipelined read batch.
    read_chunk_bytes: usize,
    /// Held open (and locked) for as long as the mapping lives.
    _index_file: File,
}

impl std::fmt::Debug for DiskTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskTier")
            .field("dir", &self.dir)
            .field("backend", &self.backend.name())
            .field("slots", &self.header.slot_count)
            .finish()
    }
}

fn is_enospc(e: &Error) -> bool {
    matches!(e, Error::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull || source.raw_os_error() == Some(28))
}

/// [`Error::DiskFull`] for `ENOSPC`, the error as it is otherwise.
fn full_or_same(e: Error) -> Error {
    if is_enospc(&e) { Error::DiskFull { tier: Tier::G3 } } else { e }
}

/// Wraps an OS error with `wrap`, or makes it [`Error::DiskFull`] for `ENOSPC`.
fn full_or(wrap: impl FnOnce(io::Error) -> Error) -> impl FnOnce(io::Error) -> Error {
    move |source| full_or_same(wrap(source))
}

/// Takes the directory's exclusive lock. A lock held by a process that is only exiting, or by
/// a child forked by another thread of this process between `fork` and `exec` (it inherits the
/// descriptor for that instant), goes away quickly: retry for up to half a second before
/// reporting the directory as in use.
fn lock_index(index_file: &File) -> Result<()> {
    for _ in 0..50 {
        match index_file.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(10)),
            Err(std::fs::TryLockError::Error(source)) => return Err(io_err("lock")(source)),
        }
    }
    Err(io_err("lock")(io::ErrorKind::WouldBlock.into()))
}

fn slab_name(i: u64) -> String {
    format!("slab-{i:05}.kvt")
}

fn is_slab_name(name: &str) -> bool {
    name.strip_prefix("slab-")
        .and_then(|n| n.strip_suffix(".kvt"))
        .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
}

impl DiskTier {
    /// Opens (or creates) the tier directory with the engine `config.io` asks for.
    ///
    /// An existing directory with the same fingerprint and geometry is reopened warm: every
    /// intact VALID slot is served again. Another fingerprint or geometry is
    /// [`Error::Fingerprint`] (or the directory is wiped with `wipe_on_mismatch`); an index
    /// file that is not a kvtier header is [`Error::BadHeader`]; a directory already open in
    /// another tier is [`Error::Io`] with op `"lock"`.
    ///
    /// Nothing already in the directory is trusted: a directory not owned by this user or
    /// writable by group or others, and an index or slab that is a symbolic link, a hard link
    /// or not a regular file of this user, is [`Error::UntrustedPath`] (new files are created
    /// with `O_EXCL`). The index and slabs are allocated on disk before open returns, so a file
    /// system that fills up later never fails a write of this tier; one already too full is
    /// [`Error::CapacityExceeded`] or [`Error::DiskFull`] here.
    pub fn open(layout: &KvLayout, config: DiskConfig) -> Result<Self> {
        config.validate()?;
        let backend = open_backend(&config.io)?;
        Self::open_with_backend(layout, config, backend)
    }

    /// Like [`DiskTier::open`] with a given IO backend (for example the `testing` feature's
    /// `FaultyBackend`).
    pub fn open_with_backend(layout: &KvLayout, config: DiskConfig, backend: Box<dyn IoBackend>) -> Result<Self> {
        config.validate()?;
        let page_bytes = layout.page_bytes();
        let expected = Header {
            fingerprint: Fingerprint::new(&config.model_id, layout, config.tp_rank, config.tp_size),
            slot_bytes: slot_bytes_for(page_bytes as u64),
            slot_count: config.capacity_slots as u64,
            slots_per_file: config.slots_per_file.min(config.capacity_slots) as u64,
        };
        if expected.slot_bytes.checked_mul(expected.slots_per_file).is_none_or(|b| b > i64::MAX as u64) {
            return Err(Error::InvalidConfig { field: "slots_per_file", reason: "slab file would exceed 2^63 bytes" });
        }
        let dir = TierDir::open(&config.dir)?;
        let (index_file, _created) = dir.open_or_create(INDEX_FILE)?;
        // Checked (a regular file of this user, one link) before the first change.
        index_file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(io_err("chmod"))?;
        lock_index(&index_file)?;

        let fresh = Self::check_existing(&index_file, &expected, config.wipe_on_mismatch)?;
        config.check_capacity(&expected)?;
        let mut lost_files = Vec::new();
        let slabs = if fresh {
            Self::initialize(&config, &dir, &index_file, &expected)?
        } else {
            Self::open_slabs(&config, &dir, &expected, &mut lost_files)?
        };
        // Every block of the index is allocated before it is mapped: a record written through
        // the mapping on a full file system would otherwise be a SIGBUS, not an error.
        reserve(&index_file, expected.index_file_bytes()).map_err(full_or(io_err("fallocate")))?;
        let index = map_index(&index_file)?;
        let inner = Inner::recover(index, &expected, page_bytes, &lost_files, config.policy)?;
        Ok(Self {
            slot_bytes: expected.slot_bytes as usize,
            header: expected,
            dir: config.dir,
            page_bytes,
            enospc_backoff: config.enospc_backoff,
            backend,
            slabs,
            inner: Mutex::new(inner),
            bounce: Mutex::new(Vec::new()),
            read_chunk_bytes: config.read_chunk_bytes,
            _index_file: index_file,
        })
    }

    /// Decides whether the directory must be (re)initialized: true for a new or blank index, or
    /// a mismatching one when `wipe` allows it.
    fn check_existing(index_file: &File, expected: &Header, wipe: bool) -> Result<bool> {
        let len = index_file.metadata().map_err(io_err("stat"))?.len();
        if len == 0 {
            return Ok(true);
        }
        let mut head = vec![0u8; HEADER_BYTES.min(len as usize)];
        index_file.read_exact_at(&mut head, 0).map_err(io_err("read"))?;
        if is_blank(&head) {
            return Ok(true); // creation was interrupted before the header was written
        }
        // With `wipe`, whatever keeps the directory from being used as it is (another
        // fingerprint, a corrupt header, a truncated index) starts it over.
        let found = match parse_header(&head) {
            Ok(found) => found,
            Err(_) if wipe => return Ok(true),
            Err(e) => return Err(e),
        };
        if let Some(field) = found.first_difference(expected) {
            return if wipe { Ok(true) } else { Err(Error::Fingerprint { tier: Tier::G3, field }) };
        }
        if len < expected.index_file_bytes() {
            return if wipe {
                Ok(true)
            } else {
                Err(Error::BadHeader { tier: Tier::G3, reason: "index file is shorter than its slot count" })
            };
        }
        Ok(false)
    }

    fn slots_in_file(header: &Header, file: u64) -> u64 {
        (header.slot_count - file * header.slots_per_file).min(header.slots_per_file)
    }

    /// Writes a new, empty directory: old slab files removed, index zeroed, slabs created, and
    /// the header written last so that an interrupted creation leaves a blank (not a bad) index.
    fn initialize(config: &DiskConfig, dir: &TierDir, index_file: &File, header: &Header) -> Result<Vec<SlabFile>> {
        dir.remove_matching(is_slab_name)?;
        index_file.set_len(0).map_err(io_err("truncate"))?;
        index_file.set_len(header.index_file_bytes()).map_err(io_err("truncate"))?;
        reserve(index_file, header.index_file_bytes()).map_err(full_or(io_err("fallocate")))?;
        let mut slabs = Vec::with_capacity(header.slab_files() as usize);
        for i in 0..header.slab_files() {
            let len = Self::slots_in_file(header, i) * header.slot_bytes;
            let file = dir.create_file(&slab_name(i))?;
            slabs.push(slab_from_file(file, len, config.io.direct).map_err(full_or_same)?);
        }
        index_file.write_all_at(&header.encode()?, 0).map_err(io_err("write"))?;
        index_file.sync_all().map_err(io_err("fsync"))?;
        Ok(slabs)
    }

    /// Opens the slab files of an existing directory; a missing or short one is recreated and its
    /// index noted in `lost` (its slots' records are then ignored).
    fn open_slabs(config: &DiskConfig, dir: &TierDir, header: &Header, lost: &mut Vec<u64>) -> Result<Vec<SlabFile>> {
        let mut slabs = Vec::with_capacity(header.slab_files() as usize);
        for i in 0..header.slab_files() {
            let name = slab_name(i);
            let len = Self::slots_in_file(header, i) * header.slot_bytes;
            let file = match dir.open_existing(&name)? {
                Some(file) => {
                    if file.metadata().map_err(io_err("stat"))?.len() < len {
                        lost.push(i);
                    }
                    file
                }
                None => {
                    lost.push(i);
                    dir.create_file(&name)?
                }
            };
            slabs.push(slab_from_file(file, len, config.io.direct).map_err(full_or_same)?);
        }
        Ok(slabs)
    }

    /// Bytes of one page.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }
    /// Bytes of one slot on disk (page bytes rounded up to 4096).
    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }
    /// Slots in the tier.
    pub fn capacity(&self) -> usize {
        self.header.slot_count as usize
    }
    /// The fingerprint the directory was opened with.
    pub fn fingerprint(&self) -> &Fingerprint {
        &self.header.fingerprint
    }
    /// The decoded directory header (fingerprint and geometry).
    pub fn header(&self) -> &Header {
        &self.header
    }
    /// The tier directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// Name of the IO engine in use ("io_uring", "psync", ...).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }
    /// Whether every slab file bypasses the page cache (O_DIRECT).
    pub fn is_direct(&self) -> bool {
        self.slabs.iter().all(SlabFile::is_direct)
    }

    /// Whether a valid page is stored under `hash`.
    pub fn contains(&self, hash: BlockHash) -> bool {
        lock(&self.inner).valid_slot(hash).is_some()
    }

    /// Number of leading `hashes` stored.
    pub fn longest_prefix(&self, hashes: &[BlockHash]) -> usize {
        let inner = lock(&self.inner);
        hashes.iter().take_while(|h| inner.valid_slot(**h).is_some()).count()
    }

    /// Pins the page under `hash` so it is never evicted (for example a system prompt); pins
    /// nest and do not survive a restart. Returns false if no valid page is stored.
    pub fn pin(&self, hash: BlockHash) -> bool {
        let mut inner = lock(&self.inner);
        let Some(b) = inner.valid_slot(hash) else { return false };
        if inner.pool.acquire_block(b).is_err() {
            return false;
        }
        let slot = &mut inner.slots[b.index()];
        slot.user_pins += 1;
        if slot.user_pins == 1 {
            inner.m.pinned_slots += 1;
        }
        true
    }

    /// Drops one pin taken by [`DiskTier::pin`]. Returns false if `hash` holds no pin.
    pub fn unpin(&self, hash: BlockHash) -> bool {
        let mut inner = lock(&self.inner);
        let Some(b) = inner.pool.lookup(hash) else { return false };
        let slot = &mut inner.slots[b.index()];
        if slot.user_pins == 0 {
            return false;
        }
        slot.user_pins -= 1;
        if slot.user_pins == 0 {
            inner.m.pinned_slots -= 1;
        }
        inner.pool.release(b).is_ok()
    }

    /// Drops the page under `hash` (its slot is reused first). Returns false if none is stored.
    pub fn remove(&self, hash: BlockHash) -> bool {
        let mut inner = lock(&self.inner);
        let Some(b) = inner.pool.lookup(hash) else { return false };
        if !matches!(inner.slots[b.index()].state, SlotState::Valid | SlotState::Writing) {
            return false;
        }
        inner.drop_slot(b);
        true
    }

    /// Makes the valid pages of `hashes` this tier's most recently used (a tier above gave its
    /// copy up and this one serves them now). Pinned pages and pages being read or written are
    /// left where they are. Returns how many moved.
    pub(crate) fn touch(&self, hashes: &[BlockHash]) -> usize {
        let mut inner = lock(&self.inner);
        let mut moved = 0;
        for &h in hashes {
            if let Some(b) = inner.valid_slot(h)
                && matches!(inner.pool.touch(b), Ok(true))
            {
                moved += 1;
            }
        }
        moved
    }

    /// The valid pages of `hashes` were promoted to a tier above, which serves them now: each
    /// slot is evicted first, at no loss, unless the page comes back down before (then it is
    /// found here and not written again). Returns how many moved.
    pub(crate) fn make_cold(&self, hashes: &[BlockHash]) -> usize {
        let mut inner = lock(&self.inner);
        let mut moved = 0;
        for &h in hashes {
            if let Some(b) = inner.valid_slot(h)
                && matches!(inner.pool.make_cold(b), Ok(true))
            {
                moved += 1;
            }
        }
        moved
    }

    /// Starts recording the hashes this tier evicts to make room (for the tiers above, whose
    /// copies counted on them); drain them with [`DiskTier::drain_evicted`].
    pub(crate) fn log_evictions(&self, on: bool) {
        lock(&self.inner).pool.log_evictions(on);
    }

    /// Moves the hashes evicted since the last call into `out`.
    pub(crate) fn drain_evicted(&self, out: &mut Vec<BlockHash>) {
        lock(&self.inner).pool.drain_evicted(out);
    }

    /// Keeps up to `cap` undrained stored / removed events of this tier, in order (0: none).
    pub(crate) fn log_events(&self, cap: usize) {
        lock(&self.inner).pool.set_event_capacity(cap);
    }

    /// Moves the undrained events into `out`.
    pub(crate) fn drain_events(&self, out: &mut Vec<crate::KvEvent>) {
        lock(&self.inner).pool.drain_events(out);
    }

    /// Events dropped undrained.
    pub(crate) fn events_dropped(&self) -> u64 {
        lock(&self.inner).pool.events_dropped()
    }

    /// Counters and gauges.
    pub fn metrics(&self) -> DiskMetrics {
        let inner = lock(&self.inner);
        let mut m = inner.m;
        m.disk_full = inner.disk_full_until.is_some_and(|t| Instant::now() < t);
        m
    }

    /// Checks the slot bookkeeping: every slot is in exactly one pool state and they sum to
    /// the capacity, a VALID or WRITING slot is indexed under its hash, the gauges match the
    /// slots. With `idle` (no read or write in flight), also that no slot is WRITING and every
    /// slot in use is explained by [`DiskTier::pin`]s alone: anything else is a leaked pin.
    #[doc(hidden)]
    pub fn check_invariants(&self, idle: bool) -> std::result::Result<(), String> {
        use crate::pool::BlockState;
        let inner = lock(&self.inner);
        inner.pool.check_invariants()?;
        let (mut valid, mut pinned) = (0u64, 0u64);
        for (i, slot) in inner.slots.iter().enumerate() {
            let b = BlockId(i as u32);
            let state = inner.pool.state(b).map_err(|e| e.to_string())?;
            let refs = inner.pool.refcount(b).map_err(|e| e.to_string())?;
            if matches!(slot.state, SlotState::Valid | SlotState::Writing) {
                let hash = inner.pool.hash_of(b).map_err(|e| e.to_string())?;
                if hash.is_none_or(|h| inner.pool.lookup(h) != Some(b)) || state == BlockState::Free {
                    return Err(format!("slot {i} is {:?} but not indexed ({state:?})", slot.state));
                }
            }
            valid += (slot.state == SlotState::Valid) as u64;
            pinned += (slot.user_pins > 0) as u64;
            if refs < slot.user_pins {
                return Err(format!("slot {i}: {} pins but refcount {refs}", slot.user_pins));
            }
            if idle && (refs != slot.user_pins || slot.state == SlotState::Writing) {
                return Err(format!(
                    "slot {i} ({:?}): refcount {refs} with {} pins and nothing in flight",
                    slot.state, slot.user_pins
                ));
            }
        }
        if valid != inner.m.used_slots || pinned != inner.m.pinned_slots {
            return Err(format!(
                "gauges: used {} for {valid} valid slots, pinned {} for {pinned}",
                inner.m.used_slots, inner.m.pinned_slots
            ));
        }
        Ok(())
    }

    /// Makes every page that `write_pages` reported stored before this call durable against
    /// power loss: slab data is fsynced first, then the index records are flushed, so no record
    /// reaches stable storage through this call ahead of its data. A killed process loses
    /// nothing reported stored even without it; see the module docs for what a power loss
    /// without it can leave (checksummed misses, never wrong bytes).
    pub fn sync(&self) -> Result<()> {
        for slab in &self.slabs {
            slab.file().sync_data().map_err(io_err("fsync"))?;
        }
        lock(&self.inner).index.flush().map_err(io_err("msync"))
    }
}

mod batch;
mod listing;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{BackendKind, IoConfig};
    use crate::layout::Dtype;

    fn page(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    /// A batch read in chunks of one and of three pages, into aligned (direct) and unaligned
    /// (bounce) buffers: every page is verified, the one with a flipped byte is a miss.
    #[test]
    fn chunked_reads_verify_every_page() {
        let layout = KvLayout::new(4, 4, 64, Dtype::F16, 2).unwrap(); // 8 KiB pages
        let pb = layout.page_bytes();
        for backend in [BackendKind::Psync, BackendKind::Uring] {
            for chunk_pages in [1, 3, 100] {
                for aligned in [true, false] {
                    let dir = std::env::temp_dir()
                        .join(format!("kvtier-chunked-{}-{backend:?}-{chunk_pages}-{aligned}", std::process::id()));
                    let _ = std::fs::remove_dir_all(&dir);
                    let config = DiskConfig::new(&dir)
                        .with_capacity_slots(16)
                        .with_slots_per_file(5)
                        .with_read_chunk_bytes(chunk_pages * pb)
                        .with_io(IoConfig::default().with_backend(backend).with_queue_depth(2));
                    let Ok(tier) = DiskTier::open(&layout, config) else {
                        assert_eq!(backend, BackendKind::Uring); // io_uring may be unavailable
                        continue;
                    };
                    let pages: Vec<Vec<u8>> = (0..10).map(|i| page(i + 1, pb)).collect();
                    let batch: Vec<(BlockHash, &[u8])> =
                        pages.iter().enumerate().map(|(i, p)| (BlockHash(i as u128), &p[..])).collect();
                    assert!(tier.write_pages(&batch).iter().all(|r| matches!(r, Ok(true))));
                    // Flip a byte of page 4 on disk.
                    let b = lock(&tier.inner).pool.lookup(BlockHash(4)).unwrap();
                    let spf = tier.header.slots_per_file as usize;
                    let path = dir.join(slab_name((b.index() / spf) as u64));
                    let offset = (b.index() % spf * tier.slot_bytes + 17) as u64;
                    let file = OpenOptions::new().read(true).write(true).open(&path).unwrap();
                    let mut byte = [0u8; 1];
                    file.read_exact_at(&mut byte, offset).unwrap();
                    byte[0] ^= 0x40;
                    file.write_all_at(&byte, offset).unwrap();
                    file.sync_all().unwrap();

                    let mut bufs: Vec<AlignedBuf> = (0..10).map(|_| AlignedBuf::new(pb + 1).unwrap()).collect();
                    let mut reqs: Vec<(BlockHash, &mut [u8])> = bufs
                        .iter_mut()
                        .enumerate()
                        .map(|(i, b)| (BlockHash(i as u128), if aligned { &mut b[..pb] } else { &mut b[1..] }))
                        .collect();
                    let results = tier.read_pages(&mut reqs);
                    for (i, r) in results.iter().enumerate() {
                        let hit = matches!(r, Ok(true));
                        assert_eq!(hit, i != 4, "page {i} {backend:?} chunk {chunk_pages} aligned {aligned}");
                        if hit {
                            assert!(reqs[i].1[..] == pages[i][..]);
                        } else if aligned {
                            assert!(reqs[i].1.iter().all(|&x| x == 0)); // no unverified bytes left
                        }
                    }
                    let m = tier.metrics();
                    assert_eq!((m.hits, m.corrupt, m.misses), (9, 1, 1));
                    assert!(!tier.contains(BlockHash(4)));
                    drop(reqs);
                    drop(tier);
                    let _ = std::fs::remove_dir_all(&dir);
                }
            }
        }
    }
}
