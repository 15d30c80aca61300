//! Python bindings of kvtier (`import kvtier`): [`kvtier::external::SlotStore`], the SSD tier
//! over a runtime-owned KV buffer, with the calls vLLM's tiering framework makes of a
//! secondary tier. The vLLM class itself is Python (`python/kvtier/vllm.py`), a thin layer
//! over the `SlotStore` class defined here.
//!
//! How a call crosses over:
//! 1. Keys arrive as `bytes` and are hashed here ([`kvtier::external::SlotStore::key_hash`] with the tenant
//!    salt); Python sees hashes as 128-bit ints.
//! 2. The primary buffer comes in once, at construction, through the buffer protocol
//!    (`buffer.rs`, zero copy); jobs name its slots by index.
//! 3. Submissions queue work for kvtier's IO workers and return; anything that can wait
//!    (`drain`, `shutdown`, opening the directory) releases the GIL.
//! 4. Errors are `kvtier.KvtierError` subclasses carrying the Rust error's message.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub, missing_debug_implementations)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[allow(unsafe_code)]
mod buffer;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvtier::external::{self as ext, EventKind, JobKind, StoreAdmission};
use kvtier::io::{BackendKind, IoConfig};
use kvtier::tier::DiskConfig;
use kvtier::tier::remote::RemoteConfig;
use kvtier::{BlockHash, Error};
use pyo3::exceptions::{PyException, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use buffer::PrimaryBuffer;

pyo3::create_exception!(kvtier, KvtierError, PyException, "Base class of every kvtier error.");
pyo3::create_exception!(
    kvtier,
    ConfigError,
    KvtierError,
    "An argument or configuration value is out of range or unknown."
);
pyo3::create_exception!(
    kvtier,
    FingerprintError,
    KvtierError,
    "The directory was written for another model, layout or geometry: its pages are never served."
);
pyo3::create_exception!(
    kvtier,
    StorageError,
    KvtierError,
    "An IO operation failed, the device is full, or a path is not trusted."
);
pyo3::create_exception!(
    kvtier,
    OutOfBlocksError,
    KvtierError,
    "More blocks were asked for than the tier can ever hold."
);
pyo3::create_exception!(kvtier, ClosedError, KvtierError, "The store was shut down.");

/// The Python exception for a kvtier error, with its message.
fn to_py(e: Error) -> PyErr {
    let msg = e.to_string();
    match e {
        Error::InvalidConfig { .. }
        | Error::OutOfRange { .. }
        | Error::UnknownName { .. }
        | Error::LayoutMismatch { .. }
        | Error::BatchMismatch { .. } => ConfigError::new_err(msg),
        Error::Fingerprint { .. } | Error::BadHeader { .. } => FingerprintError::new_err(msg),
        Error::OutOfBlocks { .. } | Error::NeverFits { .. } => OutOfBlocksError::new_err(msg),
        Error::Closed => ClosedError::new_err(msg),
        _ => StorageError::new_err(msg),
    }
}

/// The answer of `SlotStore.lookup`.
#[pyclass(module = "kvtier", eq, eq_int, hash, frozen, from_py_object)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// Stored and ready to load.
    HIT,
    /// Not stored.
    MISS,
    /// Being stored: ask again later.
    RETRY,
}

impl From<ext::Lookup> for Lookup {
    fn from(l: ext::Lookup) -> Self {
        match l {
            ext::Lookup::Hit => Lookup::HIT,
            ext::Lookup::Miss => Lookup::MISS,
            ext::Lookup::Retry => Lookup::RETRY,
        }
    }
}

/// Pins on stored blocks, from `SlotStore.prepare_load` / `lookup_pin`: they are not evicted
/// until the lease is released (or dropped).
#[pyclass(module = "kvtier")]
#[derive(Debug)]
pub struct LoadLease {
    lease: Option<ext::LoadLease>,
}

#[pymethods]
impl LoadLease {
    /// Whether each key was found and is pinned, in order.
    #[getter]
    fn pinned(&self) -> Vec<bool> {
        match &self.lease {
            Some(l) => (0..l.keys().len()).map(|i| l.is_pinned(i)).collect(),
            None => Vec::new(),
        }
    }

    /// Unpins now (idempotent).
    fn release(&mut self) {
        self.lease = None;
    }

    fn __repr__(&self) -> String {
        match &self.lease {
            Some(l) => format!("LoadLease(keys={}, pinned={})", l.keys().len(), l.pinned_count()),
            None => "LoadLease(released)".into(),
        }
    }
}

/// The outcome of one job, from `SlotStore.take_finished`.
#[pyclass(module = "kvtier", get_all, frozen)]
#[derive(Debug)]
pub struct JobResult {
    /// The id the job was submitted with.
    job_id: u64,
    /// "store" or "load".
    kind: &'static str,
    /// Whether every key succeeded.
    success: bool,
    /// Hashes (ints) of the keys loaded (loads) or written (stores).
    succeeded: Vec<u128>,
    /// Hashes of the keys that failed.
    failed: Vec<u128>,
    /// Hashes of keys a store could not place now (every slot pinned): retry later.
    refused: Vec<u128>,
    /// Seconds from submission to completion.
    transfer_time: f64,
    /// Bytes moved.
    transfer_bytes: u64,
}

#[pymethods]
impl JobResult {
    fn __repr__(&self) -> String {
        format!(
            "JobResult(job_id={}, kind={:?}, success={}, succeeded={}, failed={}, transfer_bytes={})",
            self.job_id,
            self.kind,
            self.success,
            self.succeeded.len(),
            self.failed.len(),
            self.transfer_bytes
        )
    }
}

fn hashes(v: &[BlockHash]) -> Vec<u128> {
    v.iter().map(|h| h.0).collect()
}

impl From<ext::JobResult> for JobResult {
    fn from(r: ext::JobResult) -> Self {
        Self {
            job_id: r.job_id,
            kind: match r.kind {
                JobKind::Store => "store",
                JobKind::Load => "load",
            },
            success: r.success,
            succeeded: hashes(&r.succeeded),
            failed: hashes(&r.failed),
            refused: hashes(&r.refused),
            transfer_time: r.transfer_time.as_secs_f64(),
            transfer_bytes: r.bytes,
        }
    }
}

/// Blocks stored in or removed from the tier, from `SlotStore.take_events`.
#[pyclass(module = "kvtier", get_all, frozen)]
#[derive(Debug)]
pub struct TierEvent {
    /// True when the blocks were removed (evicted, or dropped after failing verification).
    removed: bool,
    /// "G3" (SSD) for a SlotStore; vLLM's `Medium.STORAGE`.
    medium: String,
    /// Hashes (ints) of the blocks.
    hashes: Vec<u128>,
}

#[pymethods]
impl TierEvent {
    fn __repr__(&self) -> String {
        format!("TierEvent(removed={}, medium={:?}, blocks={})", self.removed, self.medium, self.hashes.len())
    }
}

/// Hashes each key of `keys` (an iterable of bytes) with the store's salt.
fn key_hashes(store: &ext::SlotStore, keys: &Bound<'_, PyAny>) -> PyResult<Vec<BlockHash>> {
    let mut out = Vec::with_capacity(keys.len().unwrap_or(0));
    for key in keys.try_iter()? {
        let key = key?;
        let bytes = key.cast::<PyBytes>().map_err(|_| PyTypeError::new_err("keys must be bytes"))?;
        out.push(store.key_hash(bytes.as_bytes()));
    }
    Ok(out)
}

/// kvtier's SSD tier over a KV buffer the caller owns.
///
/// `SlotStore(buffer, directory, capacity_blocks, *, slot_bytes=None, model_id="",
/// tenant_salt=b"", io_backend="auto", workers=2, wipe_on_mismatch=False, slots_per_file=256,
/// direct_io=True, admission="all", write_budget_bytes_per_s=None, tp_rank=0, tp_size=1,
/// queue_depth=32, read_chunk_bytes=8 MiB, max_batch_bytes=64 MiB)`
///
/// `buffer` is any C-contiguous object with the buffer protocol (memoryview, numpy array):
/// slot `i` is bytes `[i * slot_bytes, (i + 1) * slot_bytes)`; `slot_bytes` defaults to the
/// buffer's first stride. Jobs read and fill it from kvtier's IO threads, without copying it:
/// a slot named in a job must not be touched until the job is reported finished.
#[pyclass(module = "kvtier")]
#[derive(Debug)]
pub struct SlotStore {
    /// None once shut down: the directory's lock goes with the last reference (a lease still
    /// alive holds one).
    store: Mutex<Option<Arc<ext::SlotStore>>>,
}

fn backend_kind(name: &str) -> PyResult<BackendKind> {
    match name {
        "auto" => Ok(BackendKind::Auto),
        "uring" | "io_uring" => Ok(BackendKind::Uring),
        "psync" => Ok(BackendKind::Psync),
        other => Err(ConfigError::new_err(format!("unknown io_backend {other:?} (known: auto, uring, psync)"))),
    }
}

fn admission_kind(name: &str) -> PyResult<StoreAdmission> {
    match name {
        "all" => Ok(StoreAdmission::All),
        "seen_twice" => Ok(StoreAdmission::SeenTwice),
        other => Err(ConfigError::new_err(format!("unknown admission {other:?} (known: all, seen_twice)"))),
    }
}

impl SlotStore {
    /// The open store, or ClosedError after `shutdown`.
    fn open(&self) -> PyResult<Arc<ext::SlotStore>> {
        match self.store.lock() {
            Ok(guard) => guard.clone().ok_or_else(|| ClosedError::new_err("the store was shut down")),
            Err(_) => Err(ClosedError::new_err("the store was shut down")),
        }
    }
}

#[pymethods]
impl SlotStore {
    #[new]
    #[pyo3(signature = (buffer, directory, capacity_blocks, *, slot_bytes=None, model_id="", tenant_salt=b"".as_slice(),
        io_backend="auto", workers=2, wipe_on_mismatch=false, slots_per_file=256, direct_io=true,
        admission="all", write_budget_bytes_per_s=None, tp_rank=0, tp_size=1, queue_depth=32,
        read_chunk_bytes=kvtier::tier::DEFAULT_READ_CHUNK_BYTES, max_batch_bytes=64 << 20, remote_url=None,
        remote_ttl_s=None, remote_timeout_ms=250, remote_tls_ca_pem=None, curve_keys=0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        buffer: &Bound<'_, PyAny>,
        directory: PathBuf,
        capacity_blocks: usize,
        slot_bytes: Option<usize>,
        model_id: &str,
        tenant_salt: &[u8],
        io_backend: &str,
        workers: usize,
        wipe_on_mismatch: bool,
        slots_per_file: usize,
        direct_io: bool,
        admission: &str,
        write_budget_bytes_per_s: Option<u64>,
        tp_rank: u32,
        tp_size: u32,
        queue_depth: usize,
        read_chunk_bytes: usize,
        max_batch_bytes: usize,
        remote_url: Option<String>,
        remote_ttl_s: Option<f64>,
        remote_timeout_ms: u64,
        remote_tls_ca_pem: Option<Vec<u8>>,
        curve_keys: usize,
    ) -> PyResult<Self> {
        let memory = PrimaryBuffer::new(buffer, slot_bytes)?;
        let io = IoConfig::default()
            .with_backend(backend_kind(io_backend)?)
            .with_direct(direct_io)
            .with_queue_depth(queue_depth);
        let disk = DiskConfig::new(directory)
            .with_capacity_slots(capacity_blocks)
            .with_slots_per_file(slots_per_file.clamp(1, capacity_blocks.max(1)))
            .with_model_id(model_id)
            .with_tp(tp_rank, tp_size)
            .with_wipe_on_mismatch(wipe_on_mismatch)
            .with_read_chunk_bytes(read_chunk_bytes)
            .with_io(io);
        let mut config = ext::SlotStoreConfig::new(disk)
            .with_workers(workers)
            .with_tenant_salt(tenant_salt)
            .with_admission(admission_kind(admission)?)
            .with_write_budget(write_budget_bytes_per_s)
            .with_max_batch_bytes(max_batch_bytes)
            .with_curve_keys(curve_keys);
        if let Some(url) = remote_url {
            let ttl = match remote_ttl_s {
                None => None,
                Some(t) if t.is_finite() && t >= 1.0 => Some(Duration::from_secs_f64(t)),
                Some(t) => {
                    return Err(ConfigError::new_err(format!("remote_ttl_s must be at least 1 second, got {t}")));
                }
            };
            let mut remote = RemoteConfig::new(url)
                .with_tp(tp_rank, tp_size)
                .with_ttl(ttl)
                .with_timeout(Duration::from_millis(remote_timeout_ms));
            if let Some(pem) = remote_tls_ca_pem {
                remote = remote.with_tls_ca_pem(pem);
            }
            config = config.with_remote(remote);
        }
        let memory: Arc<dyn ext::SlotMemory> = Arc::new(memory);
        // Opening preallocates the slab files: it can take a while.
        let store = py.detach(move || ext::SlotStore::open(config, memory)).map_err(to_py)?;
        Ok(Self { store: Mutex::new(Some(Arc::new(store))) })
    }

    /// The 128-bit hash (an int) a key is stored under: XXH3-128 of the key, seeded by the
    /// tenant salt.
    fn key_hash(&self, key: &[u8]) -> PyResult<u128> {
        Ok(self.open()?.key_hash(key).0)
    }

    /// HIT (stored and ready), MISS, or RETRY (being stored). Pins nothing.
    fn lookup(&self, key: &[u8]) -> PyResult<Lookup> {
        let store = self.open()?;
        Ok(store.lookup(store.key_hash(key)).into())
    }

    /// Looks each key up: a list of Lookup.
    fn lookup_many(&self, keys: &Bound<'_, PyAny>) -> PyResult<Vec<Lookup>> {
        let store = self.open()?;
        Ok(key_hashes(&store, keys)?.into_iter().map(|h| store.lookup(h).into()).collect())
    }

    /// Which of `keys` the shared G4 tier holds, in one pipelined round trip (GIL released; all
    /// False without a G4 tier or while its server is unreachable: never raises for the
    /// server). Waits on the network: call it from a background thread, not the scheduler's.
    fn probe_remote(&self, py: Python<'_>, keys: &Bound<'_, PyAny>) -> PyResult<Vec<bool>> {
        let store = self.open()?;
        let keys = key_hashes(&store, keys)?;
        Ok(py.detach(move || store.probe_remote(&keys)))
    }

    /// Whether this store has a shared G4 tier.
    #[getter]
    fn has_remote(&self) -> PyResult<bool> {
        Ok(self.open()?.remote_metrics().is_some())
    }

    /// Looks a key up and, on a HIT, pins it: `(Lookup, LoadLease | None)`. A key evicted
    /// between the two steps is a MISS.
    fn lookup_pin(&self, key: &[u8]) -> PyResult<(Lookup, Option<LoadLease>)> {
        let store = self.open()?;
        let h = store.key_hash(key);
        Ok(match store.lookup(h) {
            ext::Lookup::Hit => {
                let lease = store.prepare_load(&[h]);
                if lease.all_pinned() {
                    (Lookup::HIT, Some(LoadLease { lease: Some(lease) }))
                } else {
                    (Lookup::MISS, None)
                }
            }
            other => (other.into(), None),
        })
    }

    /// Pins the stored blocks of `keys` until the lease is released.
    fn prepare_load(&self, keys: &Bound<'_, PyAny>) -> PyResult<LoadLease> {
        let store = self.open()?;
        let keys = key_hashes(&store, keys)?;
        Ok(LoadLease { lease: Some(store.prepare_load(&keys)) })
    }

    /// Marks the stored blocks of `keys` most recently used; returns how many.
    fn touch(&self, keys: &Bound<'_, PyAny>) -> PyResult<usize> {
        let store = self.open()?;
        Ok(store.touch(&key_hashes(&store, keys)?))
    }

    /// Queues writing slot `slots[i]` under `keys[i]` (keys already stored or in flight are
    /// skipped) and returns how many keys will be written. Never waits for IO.
    fn submit_store(&self, job_id: u64, keys: &Bound<'_, PyAny>, slots: Vec<usize>) -> PyResult<usize> {
        let store = self.open()?;
        let keys = key_hashes(&store, keys)?;
        store.submit_store(job_id, &keys, &slots).map_err(to_py)
    }

    /// Queues loading `keys[i]` into slot `slots[i]` (distinct slots). The keys are pinned
    /// until the job ends; `leases` (from `lookup_pin` / `prepare_load`) are released once
    /// the new pins are taken. Never waits for IO.
    #[pyo3(signature = (job_id, keys, slots, leases=None))]
    fn submit_load(
        &self,
        job_id: u64,
        keys: &Bound<'_, PyAny>,
        slots: Vec<usize>,
        leases: Option<Vec<PyRefMut<'_, LoadLease>>>,
    ) -> PyResult<()> {
        let store = self.open()?;
        let keys = key_hashes(&store, keys)?;
        let lease = store.prepare_load(&keys);
        for mut old in leases.unwrap_or_default() {
            old.lease = None;
        }
        store.submit_load(job_id, lease, &slots).map_err(to_py)
    }

    /// Results of the jobs finished since the last call.
    fn take_finished(&self) -> PyResult<Vec<JobResult>> {
        Ok(self.open()?.take_finished().into_iter().map(JobResult::from).collect())
    }

    /// Stored / removed events since the last call.
    fn take_events(&self) -> PyResult<Vec<TierEvent>> {
        Ok(self
            .open()?
            .take_events()
            .into_iter()
            .map(|e| TierEvent {
                removed: e.kind == EventKind::Removed,
                medium: e.tier.to_string(),
                hashes: hashes(&e.hashes),
            })
            .collect())
    }

    /// Whether a job is queued or running, or a result waits to be taken.
    fn has_pending_work(&self) -> bool {
        self.open().is_ok_and(|s| s.has_pending_work())
    }

    /// Waits (GIL released) until every submitted job has finished; with `timeout` (seconds)
    /// gives up then. Returns whether everything finished.
    #[pyo3(signature = (timeout=None))]
    fn drain(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<bool> {
        let store = self.open()?;
        match timeout {
            None => {
                py.detach(move || store.drain());
                Ok(true)
            }
            Some(t) if t.is_finite() && t >= 0.0 => Ok(py.detach(move || store.drain_for(Duration::from_secs_f64(t)))),
            Some(t) => Err(PyValueError::new_err(format!("timeout must be a non-negative number, got {t}"))),
        }
    }

    /// Hashes (ints) of every block the tier holds (after a warm restart: what the last run
    /// left).
    fn stored_keys(&self, py: Python<'_>) -> PyResult<Vec<u128>> {
        let store = self.open()?;
        Ok(py.detach(move || hashes(&store.stored_keys())))
    }

    /// The live hit-rate-vs-capacity estimate read at `capacities` (blocks), as a dict
    /// (`points`: list of (capacity, hit rate), `sample_rate`, `sampled_accesses`,
    /// `tracked_blocks`, `hot_blocks`), or None when the store was opened with `curve_keys=0`.
    fn live_curve<'py>(&self, py: Python<'py>, capacities: Vec<u64>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let Some(r) = self.open()?.live_curve(&capacities) else { return Ok(None) };
        let d = PyDict::new(py);
        d.set_item("points", r.points)?;
        d.set_item("sample_rate", r.sample_rate)?;
        d.set_item("sampled_accesses", r.sampled_accesses)?;
        d.set_item("tracked_blocks", r.tracked_blocks)?;
        d.set_item("hot_blocks", r.hot_blocks)?;
        Ok(Some(d))
    }

    /// Counters and gauges as a dict.
    fn metrics<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let m = self.open()?.metrics();
        let d = PyDict::new(py);
        for (k, v) in [
            ("lookups", m.lookups),
            ("lookup_hits", m.lookup_hits),
            ("load_jobs", m.load_jobs),
            ("store_jobs", m.store_jobs),
            ("jobs_finished", m.jobs_finished),
            ("keys_loaded", m.keys_loaded),
            ("keys_load_failed", m.keys_load_failed),
            ("keys_stored", m.keys_stored),
            ("keys_already_present", m.keys_already_present),
            ("keys_not_admitted", m.keys_not_admitted),
            ("keys_over_budget", m.keys_over_budget),
            ("keys_refused", m.keys_refused),
            ("keys_store_failed", m.keys_store_failed),
            ("bytes_loaded", m.bytes_loaded),
            ("bytes_stored", m.bytes_stored),
            ("queued_jobs", m.queued_jobs),
            ("running_jobs", m.running_jobs),
            ("disk_hits", m.disk.hits),
            ("disk_misses", m.disk.misses),
            ("disk_corrupt", m.disk.corrupt),
            ("disk_read_errors", m.disk.read_errors),
            ("disk_write_errors", m.disk.write_errors),
            ("disk_evictions", m.disk.evictions),
            ("disk_recovered", m.disk.recovered),
            ("disk_used_blocks", m.disk.used_slots),
            ("disk_pinned_blocks", m.disk.pinned_slots),
            ("disk_capacity_blocks", m.disk.capacity_slots),
        ] {
            d.set_item(k, v)?;
        }
        d.set_item("disk_full", m.disk.disk_full)?;
        d.set_item("keys_stored_g4", m.keys_stored_g4)?;
        d.set_item("keys_loaded_g4", m.keys_loaded_g4)?;
        if let Some(r) = self.open()?.remote_metrics() {
            for (k, v) in [
                ("g4_lookups", r.lookups),
                ("g4_lookup_found", r.lookup_found),
                ("g4_round_trips", r.round_trips),
                ("g4_get_hits", r.get_hits),
                ("g4_get_absent", r.get_absent),
                ("g4_get_rejected", r.get_rejected),
                ("g4_put_stored", r.put_stored),
                ("g4_put_rejected", r.put_rejected),
                ("g4_errors", r.errors),
                ("g4_timeouts", r.timeouts),
                ("g4_auth_failures", r.auth_failures),
                ("g4_skipped_down", r.skipped_down),
            ] {
                d.set_item(k, v)?;
            }
            d.set_item("g4_up", r.up)?;
        }
        Ok(d)
    }

    /// Stops the IO workers (GIL released): running jobs finish, queued ones are reported
    /// failed, later submissions raise ClosedError. Idempotent.
    fn shutdown(&self, py: Python<'_>) {
        let taken = match self.store.lock() {
            Ok(mut guard) => guard.take(),
            Err(_) => None,
        };
        if let Some(store) = taken {
            // Joins the workers, then drops this reference (the last one unless a lease lives):
            // the directory is unlocked when this returns.
            py.detach(move || {
                store.shutdown();
                drop(store);
            });
        }
    }

    /// Bytes per block.
    #[getter]
    fn slot_bytes(&self) -> PyResult<usize> {
        Ok(self.open()?.page_bytes())
    }

    /// Blocks the tier holds at most.
    #[getter]
    fn capacity(&self) -> PyResult<usize> {
        Ok(self.open()?.capacity())
    }

    /// The IO engine in use: "io_uring" or "psync".
    #[getter]
    fn backend(&self) -> PyResult<&'static str> {
        Ok(self.open()?.disk().backend_name())
    }

    /// Whether the slab files bypass the page cache (O_DIRECT).
    #[getter]
    fn direct_io(&self) -> PyResult<bool> {
        Ok(self.open()?.disk().is_direct())
    }

    /// The tier directory.
    #[getter]
    fn directory(&self) -> PyResult<PathBuf> {
        Ok(self.open()?.disk().dir().to_path_buf())
    }

    fn __enter__(slf: PyRef<'_, Self>) -> PyRef<'_, Self> {
        slf
    }

    fn __exit__(&self, py: Python<'_>, _t: Py<PyAny>, _v: Py<PyAny>, _tb: Py<PyAny>) -> bool {
        self.shutdown(py);
        false
    }

    fn __repr__(&self) -> String {
        match self.open() {
            Ok(store) => format!(
                "SlotStore(directory={:?}, capacity={}, slot_bytes={}, backend={:?})",
                store.disk().dir(),
                store.capacity(),
                store.page_bytes(),
                store.disk().backend_name()
            ),
            Err(_) => "SlotStore(shut down)".into(),
        }
    }
}

impl Drop for SlotStore {
    fn drop(&mut self) {
        // Joins the workers; they never need the GIL, so holding it here cannot deadlock.
        if let Ok(mut guard) = self.store.lock()
            && let Some(store) = guard.take()
        {
            store.shutdown();
        }
    }
}

/// kvtier: an SSD tier for LLM KV caches (see the package README).
#[pymodule]
fn _kvtier(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<SlotStore>()?;
    m.add_class::<LoadLease>()?;
    m.add_class::<JobResult>()?;
    m.add_class::<TierEvent>()?;
    m.add_class::<Lookup>()?;
    m.add("KvtierError", py.get_type::<KvtierError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("FingerprintError", py.get_type::<FingerprintError>())?;
    m.add("StorageError", py.get_type::<StorageError>())?;
    m.add("OutOfBlocksError", py.get_type::<OutOfBlocksError>())?;
    m.add("ClosedError", py.get_type::<ClosedError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
