//! `kvtier probe`: how fast this machine moves KV pages, written down once for the planners.
//!
//! Why: whether loading a cached prefix from host RAM or SSD beats recomputing it, and how much
//! of each tier a GPU needs, depends on bandwidths that differ by orders of magnitude between
//! machines. A [`Profile`] records them, measured through kvtier's own IO engines
//! ([`kvtier::io`]) rather than a generic disk benchmark, so the numbers include what kvtier adds.
//!
//! How a probe runs ([`run`]):
//! 1. Checks the [`ProbeConfig`] and that the directory exists.
//! 2. Copies a buffer larger than the last-level cache with `copy_from_slice`, pass after pass
//!    for the time bound, and keeps the best and the median pass.
//! 3. Creates a scratch file in a new directory under an unpredictable name inside the directory
//!    ([`crate::scratch`]: removed when the probe ends, also on error or a signal), opens it with O_DIRECT where the file system allows it
//!    (buffered otherwise, and the profile says so) and fills it once.
//! 4. For each page size (the layout's page and 64 KiB): sequential writes, then sequential
//!    reads, each once with a full queue (batches of the engine's queue depth: bandwidth, and
//!    each operation's time from the batch's submission to its completion) and once at queue
//!    depth 1 (the latency of one page alone), each for the time bound.
//! 5. Returns the [`Profile`]; [`Profile::save`] writes it as JSON and [`Profile::load`] reads
//!    it back, refusing another schema version.
//!
//! ```
//! use kvtier_cli::probe::{run, ProbeConfig};
//! let dir = tempfile::tempdir()?;
//! let config = ProbeConfig::new(dir.path())
//!     .with_seconds(0.01)
//!     .with_scratch_bytes(4 << 20)
//!     .with_memcpy_bytes(1 << 20)
//!     .with_page_sizes(vec![64 << 10]);
//! let profile = run(&config)?;
//! assert!(profile.memcpy.best_bytes_per_sec > 0.0);
//! assert!(profile.io.pages[0].read.bytes_per_sec > 0.0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kvtier::io::{AlignedBuf, BackendKind, IoBackend, IoConfig, IoOp, Overlap, create_slab_file, open_backend};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::scratch::{ScratchDir, ScratchKind};

/// Version of the [`Profile`] format; [`Profile::load`] refuses any other.
pub const SCHEMA_VERSION: u32 = 1;

/// The second page size every probe measures besides the layout's: a small transfer, where
/// per-operation cost dominates.
pub const SMALL_PAGE_BYTES: u64 = 64 << 10;

/// What to measure and for how long.
///
/// ```
/// use kvtier_cli::probe::ProbeConfig;
/// let config = ProbeConfig::new("/tmp").with_seconds(0.5);
/// assert!(config.validate().is_ok());
/// assert!(config.clone().with_seconds(0.0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ProbeConfig {
    /// Directory the scratch file goes into; must exist.
    pub dir: PathBuf,
    /// Page sizes to measure, bytes.
    pub page_sizes: Vec<u64>,
    /// IO engine and queue depth.
    pub io: IoConfig,
    /// Time bound of each measurement, seconds.
    pub seconds: f64,
    /// Size of the scratch file, bytes.
    pub scratch_bytes: u64,
    /// Size of each memcpy buffer, bytes; `None` picks four times the last-level cache.
    pub memcpy_bytes: Option<u64>,
}

/// Largest accepted time bound per measurement.
const MAX_SECONDS: f64 = 3600.0;
/// Largest accepted memcpy buffer (two are allocated).
const MAX_MEMCPY_BYTES: u64 = 16 << 30;
/// Memcpy buffer when the last-level cache size cannot be read.
const DEFAULT_MEMCPY_BYTES: u64 = 256 << 20;

impl ProbeConfig {
    /// A probe of `dir`: the llama-3.1-8b 16-token page (2 MiB) and 64 KiB, the default
    /// [`IoConfig`] (io_uring where it works, queue depth 32, O_DIRECT), 2 s per measurement,
    /// a 256 MiB scratch file.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            page_sizes: vec![2 << 20, SMALL_PAGE_BYTES],
            io: IoConfig::default(),
            seconds: 2.0,
            scratch_bytes: 256 << 20,
            memcpy_bytes: None,
        }
    }

    /// Sets the page sizes (duplicates are measured once). Default: 2 MiB and 64 KiB.
    pub fn with_page_sizes(mut self, page_sizes: Vec<u64>) -> Self {
        self.page_sizes = page_sizes;
        self
    }

    /// Sets the IO engine. Default: [`BackendKind::Auto`].
    pub fn with_backend(mut self, backend: BackendKind) -> Self {
        self.io = self.io.with_backend(backend);
        self
    }

    /// Sets the time bound of each measurement. Default: 2 s.
    pub fn with_seconds(mut self, seconds: f64) -> Self {
        self.seconds = seconds;
        self
    }

    /// Sets the scratch file size. Default: 256 MiB.
    pub fn with_scratch_bytes(mut self, bytes: u64) -> Self {
        self.scratch_bytes = bytes;
        self
    }

    /// Sets the memcpy buffer size. Default: four times the last-level cache (256 MiB if
    /// unknown), at least 64 MiB.
    pub fn with_memcpy_bytes(mut self, bytes: u64) -> Self {
        self.memcpy_bytes = Some(bytes);
        self
    }

    /// Checks every setting (the directory is checked when the probe runs).
    pub fn validate(&self) -> Result<()> {
        if !(self.seconds > 0.0 && self.seconds <= MAX_SECONDS) {
            return Err(Error::invalid("seconds", self.seconds, "must be more than 0 and at most 3600"));
        }
        let largest = self.page_sizes.iter().copied().max().unwrap_or(0);
        if self.page_sizes.is_empty() || self.page_sizes.contains(&0) {
            return Err(Error::invalid(
                "page sizes",
                format!("{:?}", self.page_sizes),
                "must be non-zero, at least one",
            ));
        }
        if self.scratch_bytes < largest {
            return Err(Error::invalid("scratch size", self.scratch_bytes, format!("must hold a page of {largest} B")));
        }
        if let Some(bytes) = self.memcpy_bytes.filter(|&b| b == 0 || b > MAX_MEMCPY_BYTES) {
            return Err(Error::invalid("memcpy size", bytes, "must be more than 0 B and at most 16 GiB"));
        }
        self.io.validate()?;
        Ok(())
    }

    fn budget(&self) -> Duration {
        Duration::try_from_secs_f64(self.seconds.clamp(0.0, MAX_SECONDS)).unwrap_or(Duration::from_secs(2))
    }
}

/// A machine's measured speeds, as `kvtier probe` writes them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Format version, [`SCHEMA_VERSION`] when written by this kvtier.
    pub schema_version: u32,
    /// Version of kvtier-cli that measured.
    pub kvtier_version: String,
    /// What the machine is.
    pub machine: Machine,
    /// Main-memory copy speed.
    pub memcpy: Memcpy,
    /// SSD tier speeds.
    pub io: IoProfile,
}

/// Facts about the machine, each `None` where it could not be read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    /// Cores this process may run on.
    pub cores: usize,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: Option<String>,
    /// CPU model (`/proc/cpuinfo`).
    pub cpu: Option<String>,
    /// Last-level cache, bytes (sysfs).
    pub llc_bytes: Option<u64>,
    /// Physical memory, bytes (`/proc/meminfo`).
    pub mem_bytes: Option<u64>,
}

/// Memcpy bandwidth: bytes copied per second (each byte is read once and written once).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memcpy {
    /// Size of the source (and of the destination) buffer, bytes.
    pub buffer_bytes: u64,
    /// Passes timed.
    pub passes: u32,
    /// Fastest pass.
    pub best_bytes_per_sec: f64,
    /// Median pass.
    pub median_bytes_per_sec: f64,
}

/// SSD tier measurements of one directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoProfile {
    /// The directory probed.
    pub dir: PathBuf,
    /// Its file system type (`/proc/self/mounts`).
    pub fs_type: Option<String>,
    /// IO engine: `io_uring` or `psync`.
    pub backend: String,
    /// Operations in flight in the full-queue measurements.
    pub queue_depth: usize,
    /// Whether the scratch file bypassed the page cache (O_DIRECT).
    pub direct: bool,
    /// Why the numbers may not be what the SSD tier sees, if anything.
    pub note: Option<String>,
    /// Size of the scratch file, bytes.
    pub scratch_bytes: u64,
    /// One entry per page size.
    pub pages: Vec<PageProfile>,
}

/// Speeds at one page size; sequential offsets through the scratch file, wrapping around.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PageProfile {
    /// Bytes per operation.
    pub page_bytes: u64,
    /// Writes at the full queue depth.
    pub write: IoStats,
    /// Reads at the full queue depth.
    pub read: IoStats,
    /// Writes one at a time.
    pub write_qd1: IoStats,
    /// Reads one at a time.
    pub read_qd1: IoStats,
}

/// One timed run of reads or writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IoStats {
    /// Operations in flight (batch size).
    pub queue_depth: usize,
    /// Operations completed.
    pub ops: u64,
    /// Wall-clock time, seconds.
    pub seconds: f64,
    /// Bytes transferred per second.
    pub bytes_per_sec: f64,
    /// Median time from a batch's submission to the operation's completion, microseconds.
    pub latency_p50_us: f64,
    /// 99th percentile of the same, microseconds.
    pub latency_p99_us: f64,
}

impl Profile {
    /// Reads a profile written by [`Profile::save`]: [`Error::Io`] if the file cannot be read,
    /// [`Error::ProfileVersion`] for another (or no) schema version, [`Error::BadProfile`] if
    /// the JSON does not parse or lacks a field.
    ///
    /// ```
    /// use kvtier_cli::{Error, probe::Profile};
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("profile.json");
    /// std::fs::write(&path, r#"{"schema_version": 999}"#)?;
    /// assert!(matches!(Profile::load(&path), Err(Error::ProfileVersion { found: Some(999), .. })));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: &Path) -> Result<Profile> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let bad = |source| Error::BadProfile { path: path.to_path_buf(), source };
        let value: serde_json::Value = serde_json::from_str(&text).map_err(bad)?;
        let found = value.get("schema_version").and_then(serde_json::Value::as_u64);
        if found != Some(u64::from(SCHEMA_VERSION)) {
            return Err(Error::ProfileVersion { path: path.to_path_buf(), found, expected: SCHEMA_VERSION });
        }
        serde_json::from_value(value).map_err(bad)
    }

    /// Writes the profile as JSON to `path` through a temporary file and a rename, creating the
    /// parent directory if needed.
    pub fn save(&self, path: &Path) -> Result<()> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { op, path, source }
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io("create directory", parent))?;
        }
        let text = serde_json::to_string_pretty(self).map_err(|source| Error::Json { path: path.into(), source })?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        std::fs::write(&tmp, text + "\n").map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, path).map_err(io("write", path))
    }
}

/// Runs the probe (see the module docs for the steps).
pub fn run(config: &ProbeConfig) -> Result<Profile> {
    config.validate()?;
    let dir = &config.dir;
    let meta =
        std::fs::metadata(dir).map_err(|source| Error::Io { op: "probe directory", path: dir.clone(), source })?;
    if !meta.is_dir() {
        return Err(Error::invalid("dir", dir.display(), "is not a directory"));
    }
    let machine = machine();
    let memcpy_bytes = config.memcpy_bytes.unwrap_or_else(|| match machine.llc_bytes {
        Some(llc) => (4 * llc).clamp(64 << 20, 1 << 30),
        None => DEFAULT_MEMCPY_BYTES,
    });
    let memcpy = measure_memcpy(memcpy_bytes, config.budget())?;
    let io = measure_io(config)?;
    Ok(Profile {
        schema_version: SCHEMA_VERSION,
        kvtier_version: env!("CARGO_PKG_VERSION").to_string(),
        machine,
        memcpy,
        io,
    })
}

fn measure_memcpy(bytes: u64, budget: Duration) -> Result<Memcpy> {
    let len = usize::try_from(bytes).map_err(|_| Error::invalid("memcpy size", bytes, "too large"))?;
    let buffer = || {
        let mut buf: Vec<u8> = Vec::new();
        buf.try_reserve_exact(len).map_err(|_| Error::invalid("memcpy size", bytes, "cannot allocate two buffers"))?;
        buf.extend((0..len).map(|i| (i % 251) as u8));
        Ok::<_, Error>(buf)
    };
    let source = buffer()?;
    let mut destination = buffer()?;
    let mut rates = Vec::new();
    let started = Instant::now();
    while rates.len() < 3 || started.elapsed() < budget {
        let pass = Instant::now();
        destination.copy_from_slice(std::hint::black_box(&source));
        std::hint::black_box(&mut destination);
        rates.push(rate(bytes, pass.elapsed()));
    }
    rates.sort_by(f64::total_cmp);
    Ok(Memcpy {
        buffer_bytes: bytes,
        passes: rates.len() as u32,
        best_bytes_per_sec: rates.last().copied().unwrap_or(0.0),
        median_bytes_per_sec: rates.get(rates.len() / 2).copied().unwrap_or(0.0),
    })
}

fn measure_io(config: &ProbeConfig) -> Result<IoProfile> {
    let backend = open_backend(&config.io)?;
    // A scratch directory (see `crate::scratch`): dropping it removes the file, on every path
    // out of this function, and a signal handler or the next probe removes it after a kill.
    let scratch = ScratchDir::new(&config.dir, ScratchKind::Probe)?;
    let slab = create_slab_file(&scratch.path().join("slab"), config.scratch_bytes, config.io.direct)?;
    let file = slab.file();
    let largest = config.page_sizes.iter().copied().max().unwrap_or(SMALL_PAGE_BYTES);
    let fill = IoRun { backend: backend.as_ref(), file, file_bytes: config.scratch_bytes, page_bytes: largest };
    fill.pass(IoDirection::Write, backend.queue_depth())?;
    let budget = config.budget();
    let mut sizes: Vec<u64> = Vec::with_capacity(config.page_sizes.len());
    for &size in &config.page_sizes {
        if !sizes.contains(&size) {
            sizes.push(size);
        }
    }
    let mut pages = Vec::with_capacity(sizes.len());
    for page_bytes in sizes {
        let io = IoRun { backend: backend.as_ref(), file, file_bytes: config.scratch_bytes, page_bytes };
        let depth = backend.queue_depth();
        pages.push(PageProfile {
            page_bytes,
            write: io.timed(IoDirection::Write, depth, budget)?,
            read: io.timed(IoDirection::Read, depth, budget)?,
            write_qd1: io.timed(IoDirection::Write, 1, budget)?,
            read_qd1: io.timed(IoDirection::Read, 1, budget)?,
        });
    }
    let direct = slab.is_direct();
    let mut note = (!direct)
        .then(|| "O_DIRECT refused by the file system: buffered IO, reads may come from the page cache".to_string());
    if backend.name() != "io_uring" {
        let psync = "psync reports completions at the end of each batch: full-queue latencies are batch times";
        note = Some(match note {
            Some(n) => format!("{n}; {psync}"),
            None => psync.to_string(),
        });
    }
    Ok(IoProfile {
        dir: config.dir.clone(),
        fs_type: fs_type(&config.dir),
        backend: backend.name().to_string(),
        queue_depth: backend.queue_depth(),
        direct,
        note,
        scratch_bytes: config.scratch_bytes,
        pages,
    })
}

#[derive(Clone, Copy, PartialEq)]
enum IoDirection {
    Read,
    Write,
}

/// Sequential page-sized operations over the first whole pages of a file.
struct IoRun<'a> {
    backend: &'a dyn IoBackend,
    file: &'a File,
    file_bytes: u64,
    page_bytes: u64,
}

/// Records each operation's time since its batch was submitted.
struct Latencies {
    batch_start: Instant,
    samples: Vec<Duration>,
}

impl Overlap for Latencies {
    fn completed(&mut self, _index: usize, _op: &IoOp<'_>, _result: &kvtier::Result<usize>) {
        self.samples.push(self.batch_start.elapsed());
    }
}

impl IoRun<'_> {
    fn pages(&self) -> u64 {
        self.file_bytes / self.page_bytes
    }

    /// Writes (or reads) every page once; untimed.
    fn pass(&self, direction: IoDirection, depth: usize) -> Result<()> {
        let mut next = 0;
        let mut latencies = Latencies { batch_start: Instant::now(), samples: Vec::new() };
        let mut buffers = self.buffers(direction, depth)?;
        while next < self.pages() {
            let batch = (self.pages() - next).min(depth as u64) as usize;
            self.batch(direction, next, batch, &mut buffers, &mut latencies)?;
            next += batch as u64;
        }
        Ok(())
    }

    /// Runs batches of `depth` operations for `budget` (at least one batch).
    fn timed(&self, direction: IoDirection, depth: usize, budget: Duration) -> Result<IoStats> {
        let depth = depth.clamp(1, usize::try_from(self.pages()).unwrap_or(usize::MAX).max(1));
        let mut buffers = self.buffers(direction, depth)?;
        let mut latencies = Latencies { batch_start: Instant::now(), samples: Vec::new() };
        let mut next = 0;
        let started = Instant::now();
        loop {
            self.batch(direction, next, depth, &mut buffers, &mut latencies)?;
            next = (next + depth as u64) % self.pages().max(1);
            if started.elapsed() >= budget {
                break;
            }
        }
        let elapsed = started.elapsed();
        let ops = latencies.samples.len() as u64;
        latencies.samples.sort_unstable();
        let percentile = |p: f64| {
            let samples = &latencies.samples;
            let index = ((samples.len() as f64 * p) as usize).min(samples.len().saturating_sub(1));
            samples.get(index).map_or(0.0, |d| d.as_secs_f64() * 1e6)
        };
        Ok(IoStats {
            queue_depth: depth,
            ops,
            seconds: elapsed.as_secs_f64(),
            bytes_per_sec: rate(ops * self.page_bytes, elapsed),
            latency_p50_us: percentile(0.5),
            latency_p99_us: percentile(0.99),
        })
    }

    /// One buffer per operation in flight for reads; writes share one.
    fn buffers(&self, direction: IoDirection, depth: usize) -> Result<Vec<AlignedBuf>> {
        let len =
            usize::try_from(self.page_bytes).map_err(|_| Error::invalid("page size", self.page_bytes, "too large"))?;
        let count = if direction == IoDirection::Read { depth } else { 1 };
        let mut buffers = (0..count).map(|_| AlignedBuf::new(len)).collect::<kvtier::Result<Vec<_>>>()?;
        for buf in &mut buffers {
            for (i, byte) in buf.iter_mut().enumerate() {
                *byte = (i % 251) as u8;
            }
        }
        Ok(buffers)
    }

    /// Submits `count` operations starting at page `first` (wrapping) and checks every result.
    /// Reads fill one buffer each (`buffers` has at least `count`); writes all send the first.
    fn batch(
        &self,
        direction: IoDirection,
        first: u64,
        count: usize,
        buffers: &mut [AlignedBuf],
        latencies: &mut Latencies,
    ) -> Result<()> {
        let pages = self.pages().max(1);
        let offset = |i: usize| ((first + i as u64) % pages) * self.page_bytes;
        let mut ops: Vec<IoOp<'_>> = match direction {
            IoDirection::Read => buffers
                .iter_mut()
                .take(count)
                .enumerate()
                .map(|(i, buf)| IoOp::read(self.file, offset(i), buf))
                .collect(),
            IoDirection::Write => match buffers.first() {
                Some(buf) => (0..count).map(|i| IoOp::write(self.file, offset(i), buf)).collect(),
                None => Vec::new(),
            },
        };
        let mut results = Vec::with_capacity(ops.len());
        latencies.batch_start = Instant::now();
        self.backend.submit_overlapped(&mut ops, &mut results, latencies);
        for result in results {
            result?;
        }
        Ok(())
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 { bytes as f64 / secs } else { 0.0 }
}

fn machine() -> Machine {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let cpu = read("/proc/cpuinfo").and_then(|text| {
        text.lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
    });
    let mem_bytes = read("/proc/meminfo").and_then(|text| {
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        line.split_whitespace().nth(1)?.parse::<u64>().ok().map(|kib| kib << 10)
    });
    Machine {
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        kernel: read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()),
        cpu,
        llc_bytes: llc_bytes(),
        mem_bytes,
    }
}

/// The largest cache of CPU 0 (sysfs), e.g. `32768K`.
fn llc_bytes() -> Option<u64> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|entry| std::fs::read_to_string(entry.ok()?.path().join("size")).ok())
        .filter_map(|size| parse_cache_size(size.trim()))
        .max()
}

fn parse_cache_size(size: &str) -> Option<u64> {
    let (number, scale) = match size.chars().last()? {
        'K' => (&size[..size.len() - 1], 1 << 10),
        'M' => (&size[..size.len() - 1], 1 << 20),
        'G' => (&size[..size.len() - 1], 1 << 30),
        _ => (size, 1),
    };
    number.parse::<u64>().ok().map(|n| n * scale)
}

/// The type of the file system `dir` is on: the longest mount point of `/proc/self/mounts`
/// that contains it.
fn fs_type(dir: &Path) -> Option<String> {
    let dir = dir.canonicalize().ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (_, point, kind) = (fields.next()?, fields.next()?, fields.next()?);
            let point = point.replace("\\040", " ");
            dir.starts_with(&point).then(|| (point.len(), kind.to_string()))
        })
        .max_by_key(|(len, _)| *len)
        .map(|(_, kind)| kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_sizes_parse() {
        assert_eq!(parse_cache_size("32768K"), Some(32 << 20));
        assert_eq!(parse_cache_size("2M"), Some(2 << 20));
        assert_eq!(parse_cache_size("512"), Some(512));
        assert_eq!(parse_cache_size("x"), None);
        assert_eq!(parse_cache_size(""), None);
    }

    #[test]
    fn settings_are_checked() {
        let config = ProbeConfig::new("/tmp");
        assert!(config.validate().is_ok());
        assert!(config.clone().with_seconds(f64::NAN).validate().is_err());
        assert!(config.clone().with_page_sizes(vec![]).validate().is_err());
        assert!(config.clone().with_scratch_bytes(1 << 20).validate().is_err(), "smaller than a 2 MiB page");
        assert!(config.with_memcpy_bytes(0).validate().is_err());
    }
}
