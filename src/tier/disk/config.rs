//! Configuration and metrics of the SSD tier (G3).

use std::path::PathBuf;
use std::time::Duration;

use std::path::Path;

use super::format::{Header, MAX_MODEL_ID_BYTES};
use crate::error::{Error, Result, Tier};
use crate::io::IoConfig;

/// Largest number of slots of one directory.
pub const MAX_SLOTS: usize = i32::MAX as usize;

/// Default of [`DiskConfig::read_chunk_bytes`]: 64 MiB (a whole batch of 32 pages of 2 MiB,
/// 1,024 of 64 KiB). Each page is verified as its read completes, so a submission's only
/// checksum after the IO is its last page's, and fewer, larger submissions keep the queue
/// full: on this VM's virtio disk, loads of 2 MiB pages through the vLLM tier ran at 0.82 and
/// 0.87 of fio's random reads with 64 MiB against 0.71 and 0.68 with 8 MiB (two runs, three
/// interleaved rounds each; 64 KiB pages: 0.82 either way).
pub const DEFAULT_READ_CHUNK_BYTES: usize = 64 << 20;

/// Configuration of the SSD tier.
///
/// ```
/// use kvtier::tier::DiskConfig;
/// let config = DiskConfig::new("/var/cache/kvtier/g3").with_capacity_slots(4096).with_model_id("llama-3.1-8b");
/// assert!(config.validate().is_ok());
/// assert!(DiskConfig::default().validate().is_err()); // no directory
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    /// Directory of the index and slab files; created (0700) if missing.
    pub dir: PathBuf,
    /// Slots (pages) in the tier. Default: 1024. Their slab files are preallocated at open, so
    /// [`DiskTier::open`](super::DiskTier::open) refuses a capacity beyond the file system's
    /// free space (or whose bookkeeping exceeds memory) with [`Error::CapacityExceeded`].
    pub capacity_slots: usize,
    /// Slots per slab file.
    pub slots_per_file: usize,
    /// IO engine settings.
    pub io: IoConfig,
    /// Model identifier recorded in the fingerprint (at most 256 bytes).
    pub model_id: String,
    /// Tensor-parallel rank of this process.
    pub tp_rank: u32,
    /// Tensor-parallel world size.
    pub tp_size: u32,
    /// Wipe a directory written under another fingerprint or geometry instead of failing.
    pub wipe_on_mismatch: bool,
    /// How long writes are refused after the device reported `ENOSPC`.
    pub enospc_backoff: Duration,
    /// Most bytes of a read batch per submission to the IO engine. Each page is verified as
    /// its read completes, while the reads queued behind it run; a submission ends by waiting
    /// for its last reads, so larger submissions keep the queue full longer.
    /// Default: [`DEFAULT_READ_CHUNK_BYTES`] (64 MiB).
    pub read_chunk_bytes: usize,
    /// Which slot to evict first (slots whose copy was dropped always go before the policy's
    /// victims). Default: [`crate::policy::PolicyKind::Lru`] (LHD lost hit rate here in the
    /// engine replay, 0.091 -> 0.086, for the reason given at
    /// [`crate::tier::host::HostConfig::policy`]).
    pub policy: crate::policy::PolicyKind,
}

impl Default for DiskConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            capacity_slots: 1024,
            slots_per_file: 256,
            io: IoConfig::default(),
            model_id: String::new(),
            tp_rank: 0,
            tp_size: 1,
            wipe_on_mismatch: false,
            enospc_backoff: Duration::from_secs(1),
            read_chunk_bytes: DEFAULT_READ_CHUNK_BYTES,
            policy: crate::policy::PolicyKind::default(),
        }
    }
}

impl DiskConfig {
    /// The default configuration for directory `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into(), ..Self::default() }
    }
    /// Sets the eviction policy (default LRU).
    pub fn with_policy(mut self, policy: crate::policy::PolicyKind) -> Self {
        self.policy = policy;
        self
    }
    /// Sets the directory. Default: empty (must be set).
    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.dir = dir.into();
        self
    }
    /// Sets the capacity in slots. Default: 1024.
    pub fn with_capacity_slots(mut self, slots: usize) -> Self {
        self.capacity_slots = slots;
        self
    }
    /// Sets the slots per slab file. Default: 256.
    pub fn with_slots_per_file(mut self, slots: usize) -> Self {
        self.slots_per_file = slots;
        self
    }
    /// Sets the IO engine settings. Default: [`IoConfig::default`] (Auto backend, O_DIRECT).
    pub fn with_io(mut self, io: IoConfig) -> Self {
        self.io = io;
        self
    }
    /// Sets the model id of the fingerprint. Default: empty.
    pub fn with_model_id(mut self, model_id: impl Into<String>) -> Self {
        self.model_id = model_id.into();
        self
    }
    /// Sets the tensor-parallel rank and world size. Default: rank 0 of 1.
    pub fn with_tp(mut self, rank: u32, size: u32) -> Self {
        self.tp_rank = rank;
        self.tp_size = size;
        self
    }
    /// Wipes a mismatching directory instead of failing. Default: false.
    pub fn with_wipe_on_mismatch(mut self, wipe: bool) -> Self {
        self.wipe_on_mismatch = wipe;
        self
    }
    /// Sets how long writes are refused after `ENOSPC`. Default: 1 s.
    pub fn with_enospc_backoff(mut self, backoff: Duration) -> Self {
        self.enospc_backoff = backoff;
        self
    }

    /// Sets the most bytes of a read batch per submission. Default: 64 MiB.
    pub fn with_read_chunk_bytes(mut self, bytes: usize) -> Self {
        self.read_chunk_bytes = bytes;
        self
    }

    /// Checks every field.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field, reason| Err(Error::InvalidConfig { field, reason });
        if self.dir.as_os_str().is_empty() {
            return invalid("dir", "must be set");
        }
        if self.capacity_slots == 0 || self.capacity_slots > MAX_SLOTS {
            return invalid("capacity_slots", "must be between 1 and 2^31 - 1");
        }
        if self.slots_per_file == 0 {
            return invalid("slots_per_file", "must be non-zero");
        }
        if self.read_chunk_bytes == 0 {
            return invalid("read_chunk_bytes", "must be non-zero");
        }
        if self.model_id.len() > MAX_MODEL_ID_BYTES {
            return invalid("model_id", "longer than 256 bytes");
        }
        if self.tp_size == 0 || self.tp_rank >= self.tp_size {
            return invalid("tp_rank", "must be below tp_size (which must be non-zero)");
        }
        self.io.validate()
    }

    /// Checks that this machine can hold a tier of geometry `header` in `self.dir` (which must
    /// exist), before anything is allocated: its bookkeeping (about 128 bytes per slot) must fit
    /// in memory, and the slab files and index it still has to allocate in the file system's
    /// free space (`statvfs` `f_bavail`, what an unprivileged writer may use), counting what
    /// the directory's own slab and index files already hold. Either shortfall is
    /// [`Error::CapacityExceeded`]. Why refuse instead of degrading: slabs are preallocated
    /// (`fallocate`) at open, so an oversized tier would fill the file system that the rest of
    /// the machine shares and then fail half-created; a tier that opened keeps its space.
    /// Where space is not reserved (a file system without `fallocate`, or the disk filling up
    /// behind an earlier tier's sparse files), writes that hit `ENOSPC` are [`Error::DiskFull`]
    /// and refused for [`DiskConfig::enospc_backoff`].
    pub(crate) fn check_capacity(&self, header: &Header) -> Result<()> {
        let metadata = header.slot_count.saturating_mul(2 * crate::pool::METADATA_BYTES_PER_BLOCK);
        crate::pool::check_memory(Tier::G3, metadata)?;
        let Some(free) = free_disk_bytes(&self.dir) else { return Ok(()) };
        let needed = header.slot_count.saturating_mul(header.slot_bytes).saturating_add(header.index_file_bytes());
        let held = held_bytes(&self.dir);
        if needed.saturating_sub(held) > free {
            return Err(Error::CapacityExceeded {
                tier: Tier::G3,
                resource: "disk space",
                requested: needed,
                available: free.saturating_add(held),
            });
        }
        Ok(())
    }
}

/// Bytes allocated on disk by the tier's own files in `dir` (slabs and index), which a reopen
/// reuses and an initialization frees first.
fn held_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name == super::INDEX_FILE || (name.starts_with("slab-") && name.ends_with(".kvt"))
        })
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks().saturating_mul(512))
        .fold(0, u64::saturating_add)
}

/// Free bytes of the file system holding `dir` for an unprivileged writer; None if unknown.
#[cfg(target_os = "linux")]
fn free_disk_bytes(dir: &Path) -> Option<u64> {
    let stat = rustix::fs::statvfs(dir).ok()?;
    Some(stat.f_bavail.saturating_mul(stat.f_frsize))
}

#[cfg(not(target_os = "linux"))]
fn free_disk_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Counters and gauges of the SSD tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiskMetrics {
    /// Pages read and verified.
    pub hits: u64,
    /// Reads that returned no page (absent, corrupt or failed).
    pub misses: u64,
    /// Reads whose checksum did not match (a subset of `misses`).
    pub corrupt: u64,
    /// Reads that failed with an IO error (a subset of `misses`).
    pub read_errors: u64,
    /// Pages written.
    pub pages_written: u64,
    /// Bytes of pages written.
    pub bytes_written: u64,
    /// Pages read and verified.
    pub pages_read: u64,
    /// Bytes of pages read and verified.
    pub bytes_read: u64,
    /// Writes that failed with an IO error (including `ENOSPC`).
    pub write_errors: u64,
    /// Writes refused without IO because the device was recently full.
    pub enospc_refusals: u64,
    /// Writes refused because every slot was pinned or in flight.
    pub no_slot_refusals: u64,
    /// Valid pages evicted to make room.
    pub evictions: u64,
    /// Valid pages recovered by the last [`DiskTier::open`](super::DiskTier::open).
    pub recovered: u64,
    /// Slots holding a valid page.
    pub used_slots: u64,
    /// Slots pinned by [`DiskTier::pin`](super::DiskTier::pin).
    pub pinned_slots: u64,
    /// Slots in the tier.
    pub capacity_slots: u64,
    /// Whether writes are currently refused after `ENOSPC`.
    pub disk_full: bool,
}
