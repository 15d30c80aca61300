//! Block IO for the SSD tier (G3): positioned, O_DIRECT-friendly reads and writes on slab files.
//!
//! Why a trait: the SSD tier wants io_uring on Linux (many operations in flight from one thread,
//! no copy through the page cache), but io_uring is often forbidden in containers (seccomp,
//! `kernel.io_uring_disabled`) and absent elsewhere. [`IoBackend`] hides which engine runs, so
//! the tier code is written once and a test double (`FaultyBackend`, `testing` feature) can
//! inject failures.
//!
//! Lifecycle of a batch:
//! 1. The tier builds one [`IoOp`] per page: a slab file, a byte offset and a buffer it borrows
//!    (an [`AlignedBuf`] region, so O_DIRECT accepts it).
//! 2. [`IoBackend::submit`] runs the whole batch: io_uring keeps up to
//!    [`IoConfig::queue_depth`] operations in flight, psync spreads them over worker threads.
//! 3. Short transfers, `EINTR` and `EAGAIN` are retried inside the backend; a successful result
//!    always means the whole buffer was transferred.
//! 4. `submit` returns only after every operation has completed, so a buffer belongs to its
//!    operation exactly as long as the borrow checker says it does.
//! 5. Each operation gets its own result; a failure is an [`Error::Io`] with tier
//!    [`Tier::G3`], never a panic.
//!
//! One place, [`open_backend`], picks the engine from an [`IoConfig`].

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use memmap2::MmapMut;

use crate::error::{Error, Result, Tier};

#[cfg(any(test, feature = "testing"))]
mod fault;
mod psync;
#[cfg(target_os = "linux")]
mod uring;

#[cfg(any(test, feature = "testing"))]
pub use fault::{Fault, FaultCounts, FaultRates, FaultTally, FaultyBackend};
pub use psync::PsyncBackend;

/// Alignment that O_DIRECT needs for buffer addresses, file offsets and lengths.
///
/// 4 KiB covers both 512-byte and 4 KiB logical block devices.
pub const DIRECT_ALIGN: usize = 4096;

/// Which engine [`open_backend`] should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// io_uring where it works, psync otherwise.
    #[default]
    Auto,
    /// io_uring only; opening fails if it cannot be set up.
    Uring,
    /// Positioned `pread`/`pwrite` on worker threads; works everywhere.
    Psync,
}

/// Configuration of the SSD tier's IO engine.
///
/// ```
/// use kvtier::io::{BackendKind, IoConfig};
/// let config = IoConfig::default().with_backend(BackendKind::Psync).with_queue_depth(8);
/// assert!(config.validate().is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoConfig {
    /// Engine choice.
    pub backend: BackendKind,
    /// Operations kept in flight at once (io_uring ring size).
    pub queue_depth: usize,
    /// Worker threads of the psync engine.
    pub psync_threads: usize,
    /// Open slab files with O_DIRECT (bypass the page cache), falling back to buffered IO where
    /// the file system refuses it; the tier passes it to [`create_slab_file`] /
    /// [`open_slab_file`].
    pub direct: bool,
}

impl Default for IoConfig {
    fn default() -> Self {
        Self { backend: BackendKind::Auto, queue_depth: 32, psync_threads: 4, direct: true }
    }
}

/// Largest accepted queue depth (io_uring's limit on ring entries).
pub const MAX_QUEUE_DEPTH: usize = 4096;
/// Largest accepted number of psync worker threads.
pub const MAX_PSYNC_THREADS: usize = 256;

impl IoConfig {
    /// Sets the engine. Default: [`BackendKind::Auto`].
    pub fn with_backend(mut self, backend: BackendKind) -> Self {
        self.backend = backend;
        self
    }

    /// Sets how many operations are kept in flight. Default: 32.
    pub fn with_queue_depth(mut self, queue_depth: usize) -> Self {
        self.queue_depth = queue_depth;
        self
    }

    /// Sets the number of psync worker threads. Default: 4.
    pub fn with_psync_threads(mut self, threads: usize) -> Self {
        self.psync_threads = threads;
        self
    }

    /// Sets whether slab files are opened with O_DIRECT. Default: `true`.
    pub fn with_direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// Checks every field.
    ///
    /// ```
    /// use kvtier::io::IoConfig;
    /// assert!(IoConfig::default().with_queue_depth(0).validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        if self.queue_depth == 0 || self.queue_depth > MAX_QUEUE_DEPTH {
            return Err(Error::InvalidConfig { field: "queue_depth", reason: "must be between 1 and 4096" });
        }
        if self.psync_threads == 0 || self.psync_threads > MAX_PSYNC_THREADS {
            return Err(Error::InvalidConfig { field: "psync_threads", reason: "must be between 1 and 256" });
        }
        Ok(())
    }
}

/// Direction of one operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// File to memory.
    Read,
    /// Memory to file.
    Write,
}

impl IoKind {
    /// The `op` name used in [`Error::Io`].
    pub fn op_name(self) -> &'static str {
        match self {
            IoKind::Read => "read",
            IoKind::Write => "write",
        }
    }
}

/// The buffer of one operation, borrowed for as long as the operation exists.
#[derive(Debug)]
pub enum IoBuf<'a> {
    /// Filled from the file.
    Read(&'a mut [u8]),
    /// Written to the file.
    Write(&'a [u8]),
}

/// One positioned read or write of a whole buffer.
///
/// With O_DIRECT files the buffer address, `offset` and length must be multiples of
/// [`DIRECT_ALIGN`]; slices of an [`AlignedBuf`] at 4 KiB multiples are.
#[derive(Debug)]
pub struct IoOp<'a> {
    file: &'a File,
    offset: u64,
    buf: IoBuf<'a>,
}

impl<'a> IoOp<'a> {
    /// Reads `buf.len()` bytes at `offset` of `file` into `buf`.
    pub fn read(file: &'a File, offset: u64, buf: &'a mut [u8]) -> Self {
        Self { file, offset, buf: IoBuf::Read(buf) }
    }

    /// Writes all of `buf` at `offset` of `file`.
    pub fn write(file: &'a File, offset: u64, buf: &'a [u8]) -> Self {
        Self { file, offset, buf: IoBuf::Write(buf) }
    }

    /// The file operated on.
    pub fn file(&self) -> &'a File {
        self.file
    }

    /// Byte offset in the file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Read or write.
    pub fn kind(&self) -> IoKind {
        match self.buf {
            IoBuf::Read(_) => IoKind::Read,
            IoBuf::Write(_) => IoKind::Write,
        }
    }

    /// Bytes to transfer.
    pub fn len(&self) -> usize {
        match &self.buf {
            IoBuf::Read(b) => b.len(),
            IoBuf::Write(b) => b.len(),
        }
    }

    /// Whether the operation transfers nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer.
    pub fn buf_mut(&mut self) -> &mut IoBuf<'a> {
        &mut self.buf
    }

    /// The bytes of the buffer: what a completed read brought in, or what a write sends.
    pub fn data(&self) -> &[u8] {
        match &self.buf {
            IoBuf::Read(b) => b,
            IoBuf::Write(b) => b,
        }
    }

    /// Wraps an OS error of this operation as an [`Error::Io`] of tier G3.
    pub(crate) fn error(&self, source: io::Error) -> Error {
        io_error(self.kind().op_name(), source)
    }
}

fn io_error(op: &'static str, source: io::Error) -> Error {
    Error::Io { tier: Tier::G3, op, source }
}

/// An engine that runs batches of positioned reads and writes.
///
/// Implementations: io_uring (Linux), [`PsyncBackend`], and the test double `FaultyBackend`
/// (`testing` feature).
pub trait IoBackend: Send + Sync + std::fmt::Debug {
    /// Short name of the engine: `"io_uring"`, `"psync"`, ...
    fn name(&self) -> &'static str;

    /// Operations kept in flight at most.
    fn queue_depth(&self) -> usize;

    /// Runs every operation of `ops` and returns when all have completed.
    ///
    /// `results` is cleared and then holds one entry per operation, in order: `Ok(len)` when the
    /// whole buffer was transferred, an [`Error::Io`] of tier G3 otherwise (a read past the end of
    /// the file is `UnexpectedEof`). Passing the same `results` vector again avoids allocating.
    fn submit(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>);

    /// Like [`IoBackend::submit`], and runs `overlap`'s work on the calling thread while the
    /// batch's IO is in flight: [`Overlap::completed`] once per operation (in completion order,
    /// each before `submit_overlapped` returns) and [`Overlap::idle`] whenever nothing completed
    /// is waiting to be reported.
    ///
    /// io_uring reports a completion after it has refilled the queue slots that completions
    /// freed, so that checking a page read (or checksumming a page written) overlaps the IO of
    /// the pages behind it instead of following the whole batch. This default runs the batch
    /// with `submit` and then reports every operation in order (no overlap).
    fn submit_overlapped(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>, overlap: &mut dyn Overlap) {
        self.submit(ops, results);
        for (index, (op, result)) in ops.iter().zip(results.iter()).enumerate() {
            overlap.completed(index, op, result);
        }
    }
}

/// Work that [`IoBackend::submit_overlapped`] runs while a batch's IO is in flight. Each call
/// should be short (at most the transfer time of a few operations, say one page's checksum):
/// a queue slot freed meanwhile stays empty until the call returns.
pub trait Overlap {
    /// Operation `index` of the batch is complete with `result`; its buffer ([`IoOp::data`])
    /// is no longer touched by the engine. Called exactly once per operation.
    fn completed(&mut self, index: usize, op: &IoOp<'_>, result: &Result<usize>) {
        let _ = (index, op, result);
    }

    /// Does one unit of work that needs no completed operation; returns false when none is
    /// left (it is then not called again in this batch).
    fn idle(&mut self) -> bool {
        false
    }
}

/// An [`Overlap`] that does nothing: [`IoBackend::submit_overlapped`] then behaves like
/// [`IoBackend::submit`].
#[derive(Debug, Default, Clone, Copy)]
pub struct NoOverlap;

impl Overlap for NoOverlap {}

/// Opens the engine `config` asks for.
///
/// With [`BackendKind::Auto`], io_uring is tried first and psync is used when io_uring cannot
/// be set up (not Linux, `EPERM` from seccomp, `ENOSYS`, disabled by sysctl, kernel too old);
/// [`IoBackend::name`] tells which one was chosen.
///
/// ```
/// use kvtier::io::{open_backend, IoConfig};
/// let backend = open_backend(&IoConfig::default())?;
/// assert!(["io_uring", "psync"].contains(&backend.name()));
/// # Ok::<(), kvtier::Error>(())
/// ```
pub fn open_backend(config: &IoConfig) -> Result<Box<dyn IoBackend>> {
    config.validate()?;
    match config.backend {
        BackendKind::Psync => Ok(Box::new(PsyncBackend::new(config))),
        BackendKind::Uring => open_uring(config),
        BackendKind::Auto => match open_uring(config) {
            Ok(backend) => Ok(backend),
            Err(_) => Ok(Box::new(PsyncBackend::new(config))),
        },
    }
}

#[cfg(target_os = "linux")]
fn open_uring(config: &IoConfig) -> Result<Box<dyn IoBackend>> {
    match uring::UringBackend::new(config) {
        Ok(backend) => Ok(Box::new(backend)),
        Err(source) => Err(io_error("io_uring_setup", source)),
    }
}

#[cfg(not(target_os = "linux"))]
fn open_uring(_config: &IoConfig) -> Result<Box<dyn IoBackend>> {
    Err(Error::InvalidConfig { field: "backend", reason: "io_uring is only available on Linux" })
}

/// A zero-filled buffer whose address is aligned to at least [`DIRECT_ALIGN`], as O_DIRECT
/// needs. Backed by an anonymous mapping, so it is page aligned without unsafe code.
///
/// ```
/// use kvtier::io::{AlignedBuf, DIRECT_ALIGN};
/// let buf = AlignedBuf::new(8192)?;
/// assert_eq!(buf.as_ptr() as usize % DIRECT_ALIGN, 0);
/// assert_eq!(buf.len(), 8192);
/// # Ok::<(), kvtier::Error>(())
/// ```
pub struct AlignedBuf {
    map: MmapMut,
    len: usize,
}

impl AlignedBuf {
    /// Maps `len` zeroed bytes; the mapping is rounded up to whole pages.
    pub fn new(len: usize) -> Result<Self> {
        let mapped = len.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
        let map = MmapMut::map_anon(mapped).map_err(|source| Error::Map { tier: Tier::G3, bytes: len, source })?;
        Ok(Self { map, len })
    }

    /// Bytes visible through the buffer.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is zero bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.map[..self.len]
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.map[..self.len]
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf").field("ptr", &self.map.as_ptr()).field("len", &self.len).finish()
    }
}

/// A slab file of the SSD tier and whether it really is open with O_DIRECT.
#[derive(Debug)]
pub struct SlabFile {
    file: File,
    direct: bool,
}

impl SlabFile {
    /// The open file, to build [`IoOp`]s with.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Whether the file bypasses the page cache (false after a fallback to buffered IO).
    pub fn is_direct(&self) -> bool {
        self.direct
    }

    /// Current length of the file in bytes.
    pub fn len(&self) -> Result<u64> {
        self.file.metadata().map(|m| m.len()).map_err(|e| io_error("stat", e))
    }

    /// Whether the file is zero bytes long.
    pub fn is_empty(&self) -> Result<bool> {
        self.len().map(|len| len == 0)
    }

    /// Gives up the wrapper.
    pub fn into_file(self) -> File {
        self.file
    }
}

/// Creates (or reuses) the slab file at `path` with mode 0600, sizes it to `len` bytes and
/// reserves its blocks where the file system supports it, so later writes do not fail with
/// `ENOSPC` halfway through a page.
///
/// The last component of `path` is never followed: a symbolic link there is an [`Error::Io`]
/// with op `"open"` (`ELOOP`), and an existing file is checked (a regular file of this user,
/// not hard-linked elsewhere) before it is changed in any way.
///
/// With `direct`, the file is switched to O_DIRECT; if the file system rejects it (`EINVAL`,
/// as old tmpfs or some FUSE file systems do), it stays buffered and [`SlabFile::is_direct`]
/// says so.
///
/// ```
/// let path = std::env::temp_dir().join(format!("kvtier-doc-slab-{}", std::process::id()));
/// let slab = kvtier::io::create_slab_file(&path, 1 << 20, true)?;
/// assert_eq!(slab.len()?, 1 << 20);
/// # drop(slab); std::fs::remove_file(&path).ok();
/// # Ok::<(), kvtier::Error>(())
/// ```
pub fn create_slab_file(path: &Path, len: u64, direct: bool) -> Result<SlabFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nofollow_flag())
        .open(path)
        .map_err(|e| io_error("open", e))?;
    check_owned_regular(&file)?;
    slab_from_file(file, len, direct)
}

/// Opens an existing slab file for reading and writing, with O_DIRECT when `direct` and the
/// file system allows it. A symbolic link is not followed (`ELOOP`).
pub fn open_slab_file(path: &Path, direct: bool) -> Result<SlabFile> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(nofollow_flag())
        .open(path)
        .map_err(|e| io_error("open", e))?;
    check_owned_regular(&file)?;
    Ok(with_direct(file, direct))
}

/// Makes an opened (and already checked) file a slab: mode 0600, `len` bytes, blocks reserved,
/// O_DIRECT where asked for and supported.
pub(crate) fn slab_from_file(file: File, len: u64, direct: bool) -> Result<SlabFile> {
    file.set_permissions(std::fs::Permissions::from_mode(0o600)).map_err(|e| io_error("chmod", e))?;
    file.set_len(len).map_err(|e| io_error("truncate", e))?;
    reserve(&file, len).map_err(|e| io_error("fallocate", e))?;
    Ok(with_direct(file, direct))
}

/// Refuses a file that is not a regular file owned by this process's user with one link: what
/// someone else planted (a device, a FIFO, a hard link to another file) is never written.
pub(crate) fn check_owned_regular(file: &File) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = file.metadata().map_err(|e| io_error("stat", e))?;
    let reason = if !meta.is_file() {
        "is not a regular file"
    } else if effective_uid().is_some_and(|uid| meta.uid() != uid) {
        "is owned by another user"
    } else if meta.nlink() != 1 {
        "has other hard links"
    } else {
        return Ok(());
    };
    Err(Error::UntrustedPath { tier: Tier::G3, reason })
}

/// The effective user id of this process.
#[cfg(target_os = "linux")]
pub(crate) fn effective_uid() -> Option<u32> {
    Some(rustix::process::geteuid().as_raw())
}

/// The effective user id of this process: unknown without rustix (not a dependency there), in
/// which case owner checks are skipped and only type, link and mode checks apply.
#[cfg(not(target_os = "linux"))]
pub(crate) fn effective_uid() -> Option<u32> {
    None
}

/// Reserves `len` bytes of `file` on disk, so writes into it, through a mapping too, never
/// meet a full file system. Where the file system has no `fallocate`, every block is written
/// instead (with the bytes it already holds), which allocates it just the same.
pub(crate) fn reserve(file: &File, len: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if preallocate(file, len)? {
        return Ok(());
    }
    let mut chunk = vec![0u8; 64 << 10];
    let mut offset = 0u64;
    while offset < len {
        let n = chunk.len().min((len - offset) as usize);
        file.read_exact_at(&mut chunk[..n], offset)?;
        file.write_all_at(&chunk[..n], offset)?;
        offset += n as u64;
    }
    Ok(())
}

fn with_direct(file: File, direct: bool) -> SlabFile {
    if direct && set_direct(&file, true) {
        if direct_io_works(&file) {
            return SlabFile { file, direct: true };
        }
        set_direct(&file, false);
    }
    SlabFile { file, direct: false }
}

/// Some file systems accept `open(O_DIRECT)` and only refuse the IO itself; one aligned read of
/// the first block tells. An empty file cannot be probed and is trusted.
fn direct_io_works(file: &File) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(meta) = file.metadata() else {
        return true;
    };
    if meta.len() < DIRECT_ALIGN as u64 {
        return true;
    }
    let Ok(mut probe) = AlignedBuf::new(DIRECT_ALIGN) else {
        return true;
    };
    !matches!(file.read_at(&mut probe, 0), Err(e) if e.raw_os_error() == Some(EINVAL))
}

const EINVAL: i32 = 22;

/// Turns O_DIRECT on or off on an open file; false when the file system refuses it.
#[cfg(target_os = "linux")]
fn set_direct(file: &File, on: bool) -> bool {
    use rustix::fs::OFlags;
    let Ok(flags) = rustix::fs::fcntl_getfl(file) else { return false };
    let flags = if on { flags | OFlags::DIRECT } else { flags - OFlags::DIRECT };
    rustix::fs::fcntl_setfl(file, flags).is_ok()
}

#[cfg(not(target_os = "linux"))]
fn set_direct(_file: &File, _on: bool) -> bool {
    false
}

#[cfg(target_os = "linux")]
pub(crate) fn nofollow_flag() -> i32 {
    libc::O_NOFOLLOW
}

#[cfg(not(target_os = "linux"))]
pub(crate) fn nofollow_flag() -> i32 {
    0
}

/// Reserves `len` bytes of `file`; false where the file system has no `fallocate`.
#[cfg(target_os = "linux")]
fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    uring::preallocate(file, len)
}

#[cfg(not(target_os = "linux"))]
fn preallocate(_file: &File, _len: u64) -> io::Result<bool> {
    Ok(false)
}

/// Bytes moved and the time it took, from [`bench_write`] / [`bench_read`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    /// Bytes transferred.
    pub bytes: u64,
    /// Wall-clock time of the transfer.
    pub elapsed: Duration,
}

impl Throughput {
    /// Bytes per second (0 for an instantaneous run).
    pub fn bytes_per_sec(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.bytes as f64 / secs } else { 0.0 }
    }
}

/// Writes `total_bytes` (rounded down to whole blocks) sequentially from offset 0 of `file` in
/// `block_bytes` operations, `batch` operations per [`IoBackend::submit`] call, and measures the
/// throughput. The file should be preallocated ([`create_slab_file`]) and written once before,
/// so that the run measures the device, not block allocation or unwritten-extent conversion.
/// Every `submit` call drains the queue before returning, so a `batch` of a few times the
/// backend's queue depth keeps the device busier than `batch == queue_depth` (measured on a
/// virtio disk with 64 KiB blocks: about 1.4x). Fails on the first failed operation.
///
/// ```
/// use kvtier::io::{bench_write, create_slab_file, open_backend, IoConfig};
/// let path = std::env::temp_dir().join(format!("kvtier-doc-bench-{}", std::process::id()));
/// let slab = create_slab_file(&path, 1 << 20, true)?;
/// let backend = open_backend(&IoConfig::default())?;
/// let t = bench_write(backend.as_ref(), slab.file(), 1 << 20, 64 << 10, 8)?;
/// assert_eq!(t.bytes, 1 << 20);
/// # drop(slab); std::fs::remove_file(&path).ok();
/// # Ok::<(), kvtier::Error>(())
/// ```
pub fn bench_write(
    backend: &dyn IoBackend,
    file: &File,
    total_bytes: u64,
    block_bytes: usize,
    batch: usize,
) -> Result<Throughput> {
    let blocks = bench_blocks(total_bytes, block_bytes)?;
    let mut data = AlignedBuf::new(block_bytes)?;
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = (i % 251) as u8;
    }
    let batch = batch.max(1);
    let mut ops = Vec::with_capacity(batch);
    let mut results = Vec::with_capacity(batch);
    let start = Instant::now();
    let mut next = 0u64;
    while next < blocks {
        ops.clear();
        let end = (next + batch as u64).min(blocks);
        for block in next..end {
            ops.push(IoOp::write(file, block * block_bytes as u64, &data));
        }
        backend.submit(&mut ops, &mut results);
        for result in results.drain(..) {
            result?;
        }
        next = end;
    }
    Ok(Throughput { bytes: blocks * block_bytes as u64, elapsed: start.elapsed() })
}

/// Reads `total_bytes` (rounded down to whole blocks) sequentially from offset 0 of `file`, like
/// [`bench_write`] does for writes; `batch` buffers of `block_bytes` are allocated.
pub fn bench_read(
    backend: &dyn IoBackend,
    file: &File,
    total_bytes: u64,
    block_bytes: usize,
    batch: usize,
) -> Result<Throughput> {
    let blocks = bench_blocks(total_bytes, block_bytes)?;
    let batch = batch.max(1);
    let mut buffers = (0..batch).map(|_| AlignedBuf::new(block_bytes)).collect::<Result<Vec<_>>>()?;
    let mut results = Vec::with_capacity(batch);
    let start = Instant::now();
    let mut next = 0u64;
    while next < blocks {
        let end = (next + batch as u64).min(blocks);
        let mut ops: Vec<IoOp<'_>> = (next..end)
            .zip(buffers.iter_mut())
            .map(|(block, buf)| IoOp::read(file, block * block_bytes as u64, buf))
            .collect();
        backend.submit(&mut ops, &mut results);
        for result in results.drain(..) {
            result?;
        }
        next = end;
    }
    Ok(Throughput { bytes: blocks * block_bytes as u64, elapsed: start.elapsed() })
}

fn bench_blocks(total_bytes: u64, block_bytes: usize) -> Result<u64> {
    if block_bytes == 0 {
        return Err(Error::InvalidConfig { field: "block_bytes", reason: "must be non-zero" });
    }
    Ok(total_bytes / block_bytes as u64)
}

#[cfg(test)]
mod tests;
