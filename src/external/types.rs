//! Configuration, results, events and metrics of a [`SlotStore`](super::SlotStore).

use std::time::Duration;

use super::StoreAdmission;
use crate::error::{Error, Result};
use crate::layout::KvLayout;
use crate::prefix::BlockHash;
use crate::tier::remote::RemoteConfig;
use crate::tier::{DiskConfig, DiskMetrics};

/// Largest number of IO workers of one store.
const MAX_WORKERS: usize = 64;

/// Configuration of a [`SlotStore`](super::SlotStore).
///
/// ```
/// use kvtier::external::SlotStoreConfig;
/// use kvtier::tier::DiskConfig;
/// let config = SlotStoreConfig::new(DiskConfig::new("/var/cache/kvtier").with_model_id("m"))
///     .with_workers(2)
///     .with_tenant_salt(b"tenant-a");
/// assert!(config.validate().is_ok());
/// assert!(config.with_workers(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotStoreConfig {
    /// The SSD tier: directory, capacity in pages, IO backend, model id (fingerprint).
    pub disk: DiskConfig,
    /// IO worker threads; each runs one job (one batched submission) at a time, loads before
    /// stores. Default: 2.
    pub workers: usize,
    /// Mixed into every [`SlotStore::key_hash`](super::SlotStore::key_hash): stores with
    /// different salts share no page even in one directory. Default: empty.
    pub tenant_salt: Vec<u8>,
    /// The model's page layout, recorded in the directory's fingerprint. Default: None, a raw
    /// layout of the memory's slot size (the model id then tells models apart).
    pub layout: Option<KvLayout>,
    /// Which keys of a store job are written. Default: [`StoreAdmission::All`].
    pub admission: StoreAdmission,
    /// Bytes per second the store may write (a one-second bucket); keys beyond it are dropped
    /// when their job is submitted. Default: None (unbounded).
    pub write_budget: Option<u64>,
    /// Bytes of queued jobs of one kind that a worker runs as one batch (one submission to the
    /// SSD tier; a single larger job still runs whole). Default: 64 MiB.
    pub max_batch_bytes: usize,
    /// A shared G4 tier on a Valkey/Redis server (feature `g4`): every page a store job writes
    /// is also stored there, and a load job reads the keys this store does not hold from it
    /// (verified). Its model id defaults to the disk's, its tenant salt to this store's.
    /// Default: none.
    pub remote: Option<RemoteConfig>,
    /// Blocks the live hit-rate-vs-capacity estimate of this tier tracks
    /// ([`crate::curve::CapacityCurve`]; 0: off), read by
    /// [`SlotStore::live_curve`](super::SlotStore::live_curve). Default: 0.
    pub curve_keys: usize,
}

impl SlotStoreConfig {
    /// A configuration over `disk` with the defaults.
    pub fn new(disk: DiskConfig) -> Self {
        Self {
            disk,
            workers: 2,
            tenant_salt: Vec::new(),
            layout: None,
            admission: StoreAdmission::All,
            write_budget: None,
            max_batch_bytes: 64 << 20,
            remote: None,
            curve_keys: 0,
        }
    }

    /// Turns on the live capacity curve, tracking `keys` sampled blocks (0: off).
    pub fn with_curve_keys(mut self, keys: usize) -> Self {
        self.curve_keys = keys;
        self
    }

    /// Sets the number of IO workers (1..=64). Default: 2.
    pub fn with_workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Sets the tenant salt. Default: empty.
    pub fn with_tenant_salt(mut self, salt: &[u8]) -> Self {
        self.tenant_salt = salt.to_vec();
        self
    }

    /// Sets the page layout recorded in the fingerprint. Default: None (a raw layout).
    pub fn with_layout(mut self, layout: KvLayout) -> Self {
        self.layout = Some(layout);
        self
    }

    /// Sets the admission filter. Default: [`StoreAdmission::All`].
    pub fn with_admission(mut self, admission: StoreAdmission) -> Self {
        self.admission = admission;
        self
    }

    /// Sets the write budget in bytes per second. Default: None (unbounded).
    pub fn with_write_budget(mut self, bytes_per_second: Option<u64>) -> Self {
        self.write_budget = bytes_per_second;
        self
    }

    /// Sets how many bytes of queued jobs a worker batches. Default: 64 MiB.
    pub fn with_max_batch_bytes(mut self, bytes: usize) -> Self {
        self.max_batch_bytes = bytes;
        self
    }

    /// Adds a shared G4 tier (see [`SlotStoreConfig::remote`]).
    pub fn with_remote(mut self, remote: RemoteConfig) -> Self {
        self.remote = Some(remote);
        self
    }

    /// Checks every field (the disk's too).
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_WORKERS).contains(&self.workers) {
            return Err(Error::OutOfRange { field: "workers", value: self.workers.to_string(), expected: "1..=64" });
        }
        if self.max_batch_bytes == 0 {
            return Err(Error::OutOfRange { field: "max_batch_bytes", value: "0".into(), expected: "at least 1" });
        }
        if self.write_budget == Some(0) {
            return Err(Error::OutOfRange {
                field: "write_budget",
                value: "0".into(),
                expected: "at least 1 byte per second, or None",
            });
        }
        if let Some(r) = &self.remote {
            r.validate()?;
        }
        self.disk.validate()
    }
}

/// Answer of [`SlotStore::lookup`](super::SlotStore::lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Lookup {
    /// Stored and ready to load.
    Hit,
    /// Not stored.
    Miss,
    /// Being stored: ask again later.
    Retry,
}

/// What a job did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobKind {
    /// Runtime slots to the tier.
    Store,
    /// The tier to runtime slots.
    Load,
}

/// The outcome of one job, from [`SlotStore::take_finished`](super::SlotStore::take_finished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobResult {
    /// The id the job was submitted with.
    pub job_id: u64,
    /// Store or load.
    pub kind: JobKind,
    /// Whether every key succeeded (loaded; or, for a store, is stored now, by this job or
    /// before it).
    pub success: bool,
    /// Loads: the keys now in their slots, verified. Stores: the keys this job wrote.
    pub succeeded: Vec<BlockHash>,
    /// Keys that failed: not found, failed verification, IO error, or cancelled by
    /// [`SlotStore::shutdown`](super::SlotStore::shutdown).
    pub failed: Vec<BlockHash>,
    /// Stores: keys not written because no slot could be had now (every slot pinned or being
    /// written, or the device recently full): worth retrying later. A subset of `failed`.
    pub refused: Vec<BlockHash>,
    /// From submission to completion.
    pub transfer_time: Duration,
    /// Bytes moved.
    pub bytes: u64,
}

impl JobResult {
    pub(crate) fn empty(job_id: u64, kind: JobKind) -> Self {
        Self {
            job_id,
            kind,
            success: true,
            succeeded: Vec::new(),
            failed: Vec::new(),
            refused: Vec::new(),
            transfer_time: Duration::ZERO,
            bytes: 0,
        }
    }
}

/// Counters (since open) and gauges of a [`SlotStore`](super::SlotStore).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreMetrics {
    /// Calls of `lookup`.
    pub lookups: u64,
    /// Lookups that answered `Hit`.
    pub lookup_hits: u64,
    /// Load jobs submitted.
    pub load_jobs: u64,
    /// Store jobs submitted.
    pub store_jobs: u64,
    /// Jobs finished (reported or waiting in `take_finished`).
    pub jobs_finished: u64,
    /// Keys loaded and verified.
    pub keys_loaded: u64,
    /// Keys whose load failed.
    pub keys_load_failed: u64,
    /// Keys written by store jobs.
    pub keys_stored: u64,
    /// Keys of store jobs skipped because they were stored or in flight already.
    pub keys_already_present: u64,
    /// Keys of store jobs not written because the admission filter saw them for the first time.
    pub keys_not_admitted: u64,
    /// Keys of store jobs not written because the write budget was spent.
    pub keys_over_budget: u64,
    /// Keys of store jobs refused for want of a slot (every slot pinned or being written).
    pub keys_refused: u64,
    /// Keys of store jobs whose write failed (IO error, cancelled).
    pub keys_store_failed: u64,
    /// Bytes loaded into the runtime's slots.
    pub bytes_loaded: u64,
    /// Bytes written from the runtime's slots.
    pub bytes_stored: u64,
    /// Of the keys loaded, those read from G4 ([`SlotStoreConfig::remote`]).
    pub keys_loaded_g4: u64,
    /// Pages of store jobs the G4 server took.
    pub keys_stored_g4: u64,
    /// Jobs queued now.
    pub queued_jobs: u64,
    /// Jobs running now.
    pub running_jobs: u64,
    /// The SSD tier's own counters.
    pub disk: DiskMetrics,
}
