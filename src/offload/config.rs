//! Configuration of the offload engine.

use std::time::Duration;

use super::{Admission, AdmissionHook};
use crate::error::{Error, Result};
use crate::tier::disk::DiskConfig;
use crate::tier::host::HostConfig;
use crate::tier::remote::RemoteConfig;

/// Configuration of the offload engine.
#[derive(Debug, Clone)]
pub struct OffloadConfig {
    /// The host tier. Default: [`HostConfig::default`].
    pub host: HostConfig,
    /// The SSD tier; `None` for G1 + G2 only. Default: none. Its
    /// [`DiskConfig::model_id`] must be set: the directory's pages are only served back to
    /// the model that wrote them.
    pub disk: Option<DiskConfig>,
    /// The shared remote tier (G4) on a Valkey/Redis server; `None` for none. Needs the `g4`
    /// feature ([`crate::tier::remote`]). Default: none.
    pub remote: Option<RemoteConfig>,
    /// G1 free + ready blocks below this fraction of the pool start offloading. Default 0.1.
    pub g1_low_watermark: f64,
    /// G2 free + ready slots below this fraction start spilling to G3. Default 0.1.
    pub g2_low_watermark: f64,
    /// Copy every committed G1 block to G2 at once. Default: false.
    pub write_through_g2: bool,
    /// A page promoted from G3 to G1 leaves its G3 copy at the cold end of G3 (evicted first,
    /// so G3 holds other pages instead of a duplicate). Default: false, the copy stays where a
    /// hit puts it: a page G1 gives up again then costs no second SSD write. Measured on
    /// synthetic conversation traces (`kvtier synth --preset conv`, seeds 1 and 11): exclusive
    /// G3 raised the tiered / one-large-G1 hit-rate ratio from 0.962 to 0.977 but wrote 1.6x
    /// the SSD bytes. G2 is always exclusive: a promoted page's G2 copy goes cold.
    pub exclusive_g3: bool,
    /// Which pages G3 accepts. Default: [`Admission::Adaptive`].
    pub admission: Admission,
    /// The caller's own admission rule; when set, it decides instead of
    /// [`OffloadConfig::admission`]. Default: none.
    pub admission_hook: Option<AdmissionHook>,
    /// The price of an SSD write in hits for the adaptive filter ([`Admission::Adaptive`]):
    /// it admits the classes of pages that maximise `hits - price x writes` (per page leaving
    /// G2, as its shadow predicts them), so admitting more must bring at least this many more
    /// hits per extra write (0.25: at most four writes per page it brings back). Lower admits
    /// more (more hits, more wear); 0 maximises hits alone. Default: 0.25.
    pub admission_hits_per_write: f64,
    /// How long the seen-twice filter remembers a page, in full turnovers of the hierarchy:
    /// its frequency sketch is halved after `turnovers x (G1 + G2 + G3 pages)` recorded uses,
    /// and holds four 4-bit counters per use it remembers, rounded up to a power of two (32 MiB
    /// for 229,376 pages x 64, 0.007 % of those pages at 2 MiB each). Default: 64, chosen on
    /// the bundled conversation sample: 16 gave a second-half hit rate of 0.158, 64 gave 0.175
    /// (one G1 of the summed size: 0.172); on the Mooncake conversation trace a third of
    /// first reuses come more than 300 s after first use, dozens of turnovers later.
    pub admission_window_turnovers: usize,
    /// Cap on bytes written to G3 per second. Default: none.
    pub write_budget_bytes_per_sec: Option<u64>,
    /// Cap on G3 writes in drive writes per day of the configured G3 size (G3 slots x page
    /// bytes); the smaller of this and [`OffloadConfig::write_budget_bytes_per_sec`] applies.
    /// Default: none. A datacenter NVMe drive is typically rated for 1 to 3 DWPD over five
    /// years, and the cache shares it with nothing else only if sized so.
    pub write_budget_dwpd: Option<f64>,
    /// Background workers; 0 runs everything on the caller's thread (tests). Default: 2.
    pub workers: usize,
    /// Most pages moved per batch. Default: 1024.
    pub batch_pages: usize,
    /// Bytes moved per batch: a batch takes `batch_bytes / page_bytes` pages (at least one, at
    /// most `batch_pages`), so small pages travel in as many bytes per disk submission as big
    /// ones and the drain at the end of each submission stays a small share of it.
    /// Default: 64 MiB (32 pages of 2 MiB, 1024 of 64 KiB).
    pub batch_bytes: usize,
    /// How often idle workers check the watermarks. Default: 1 ms.
    pub tick: Duration,
    /// Most [`TieredCache::prefetch`](super::TieredCache::prefetch) jobs queued or running at
    /// once; a prefetch beyond it is dropped (a prefetch is only a hint) and counted in
    /// [`EngineMetrics::prefetch_dropped`](super::EngineMetrics::prefetch_dropped). Bounds the
    /// memory a caller can make the engine hold behind a slow disk. Default: 64.
    pub max_queued_prefetches: usize,
    /// Undrained page events kept per tier, G2 and G3
    /// ([`TieredCache::take_tier_events`](super::TieredCache::take_tier_events)); beyond it the
    /// oldest are dropped and counted in
    /// [`EngineMetrics::tier_events_dropped`](super::EngineMetrics::tier_events_dropped). 0
    /// turns the events off. Default: 65,536 (a few MiB per tier at most).
    pub tier_event_capacity: usize,
}

impl Default for OffloadConfig {
    fn default() -> Self {
        Self {
            host: HostConfig::default(),
            disk: None,
            remote: None,
            g1_low_watermark: 0.1,
            g2_low_watermark: 0.1,
            write_through_g2: false,
            exclusive_g3: false,
            admission: Admission::Adaptive,
            admission_hook: None,
            admission_hits_per_write: 0.25,
            admission_window_turnovers: 64,
            write_budget_bytes_per_sec: None,
            write_budget_dwpd: None,
            workers: 2,
            batch_pages: 1024,
            batch_bytes: 64 << 20,
            tick: Duration::from_millis(1),
            max_queued_prefetches: 64,
            tier_event_capacity: 1 << 16,
        }
    }
}

impl OffloadConfig {
    /// Sets the host tier (default [`HostConfig::default`]).
    pub fn with_host(mut self, host: HostConfig) -> Self {
        self.host = host;
        self
    }
    /// Adds an SSD tier (default none); [`OffloadConfig::validate`] requires its model id.
    pub fn with_disk(mut self, disk: DiskConfig) -> Self {
        self.disk = Some(disk);
        self
    }
    /// Adds the shared remote tier (default none).
    pub fn with_remote(mut self, remote: RemoteConfig) -> Self {
        self.remote = Some(remote);
        self
    }
    /// Sets the G1 low watermark fraction (default 0.1).
    pub fn with_g1_low_watermark(mut self, f: f64) -> Self {
        self.g1_low_watermark = f;
        self
    }
    /// Sets the G2 low watermark fraction (default 0.1).
    pub fn with_g2_low_watermark(mut self, f: f64) -> Self {
        self.g2_low_watermark = f;
        self
    }
    /// Enables write-through from G1 to G2 (default off).
    pub fn with_write_through_g2(mut self, on: bool) -> Self {
        self.write_through_g2 = on;
        self
    }
    /// Makes G3 exclusive of G1 on promotion (default off, see [`OffloadConfig::exclusive_g3`]).
    pub fn with_exclusive_g3(mut self, on: bool) -> Self {
        self.exclusive_g3 = on;
        self
    }
    /// Sets the G3 admission filter (default adaptive).
    pub fn with_admission(mut self, a: Admission) -> Self {
        self.admission = a;
        self
    }
    /// Sets (or clears) the caller's own admission rule (default none).
    pub fn with_admission_hook(mut self, hook: Option<AdmissionHook>) -> Self {
        self.admission_hook = hook;
        self
    }
    /// Sets the adaptive filter's price of a write in hits (default 0.25).
    pub fn with_admission_hits_per_write(mut self, fraction: f64) -> Self {
        self.admission_hits_per_write = fraction;
        self
    }

    /// Sets how many hierarchy turnovers the admission filter remembers a page (default 64).
    pub fn with_admission_window_turnovers(mut self, turnovers: usize) -> Self {
        self.admission_window_turnovers = turnovers;
        self
    }
    /// Caps G3 writes in drive writes per day of the G3 size (default unlimited).
    ///
    /// ```
    /// use kvtier::offload::OffloadConfig;
    /// let c = OffloadConfig::default().with_write_budget_dwpd(Some(3.0));
    /// // 3 DWPD of 1,024 pages of 2 MiB: 6 GiB a day
    /// assert_eq!(c.write_budget(2 << 20, 1024), Some(3 * 1024 * (2 << 20) / 86_400));
    /// assert!(c.validate().is_ok());
    /// ```
    pub fn with_write_budget_dwpd(mut self, dwpd: Option<f64>) -> Self {
        self.write_budget_dwpd = dwpd;
        self
    }
    /// The G3 write budget in bytes per second for pages of `page_bytes` and a G3 of
    /// `g3_pages` pages: the smaller of the byte rate and the DWPD cap, `None` if neither.
    pub fn write_budget(&self, page_bytes: usize, g3_pages: u64) -> Option<u64> {
        let dwpd =
            self.write_budget_dwpd.map(|d| ((page_bytes as f64) * (g3_pages as f64) * d / 86_400.0).max(1.0) as u64);
        match (self.write_budget_bytes_per_sec, dwpd) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
    /// Caps G3 writes in bytes per second (default unlimited).
    pub fn with_write_budget(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.write_budget_bytes_per_sec = bytes_per_sec;
        self
    }
    /// Sets the number of background workers (default 2; 0 = caller's thread).
    pub fn with_workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }
    /// Sets the most prefetch jobs queued or running at once (default 64; 0 drops every
    /// prefetch while workers run).
    pub fn with_max_queued_prefetches(mut self, n: usize) -> Self {
        self.max_queued_prefetches = n;
        self
    }
    /// Sets how many undrained page events each of G2 and G3 keeps (default 65,536; 0: off).
    pub fn with_tier_event_capacity(mut self, pages: usize) -> Self {
        self.tier_event_capacity = pages;
        self
    }
    /// Sets the most pages per batch (default 1024).
    pub fn with_batch_pages(mut self, n: usize) -> Self {
        self.batch_pages = n;
        self
    }
    /// Sets the bytes per batch (default 64 MiB).
    pub fn with_batch_bytes(mut self, bytes: usize) -> Self {
        self.batch_bytes = bytes;
        self
    }
    /// Pages per batch for pages of `page_bytes`.
    pub fn pages_per_batch(&self, page_bytes: usize) -> usize {
        (self.batch_bytes / page_bytes.max(1)).clamp(1, self.batch_pages.max(1))
    }
    /// Checks the configuration: every field in range ([`Error::OutOfRange`]), the tiers'
    /// own configurations, and an SSD tier's model id set ([`Error::InvalidConfig`] with
    /// field `"model_id"`).
    ///
    /// ```
    /// use kvtier::offload::OffloadConfig;
    /// use kvtier::tier::DiskConfig;
    /// let anonymous = OffloadConfig::default().with_disk(DiskConfig::new("/var/cache/kvtier/g3"));
    /// assert_eq!(anonymous.validate().unwrap_err().config_field(), Some("model_id"));
    /// let named = OffloadConfig::default().with_disk(DiskConfig::new("/var/cache/kvtier/g3").with_model_id("llama-3.1-8b"));
    /// assert!(named.validate().is_ok());
    /// ```
    pub fn validate(&self) -> Result<()> {
        self.host.validate()?;
        if let Some(d) = &self.disk {
            d.validate()?;
            if d.model_id.is_empty() {
                // Pages are told apart by hash and fingerprint only: two models of one shape
                // without a model id would share a directory and serve each other's pages.
                return Err(Error::InvalidConfig { field: "model_id", reason: "must name the model for an SSD tier" });
            }
        }
        if let Some(r) = &self.remote {
            r.validate()?;
            if r.publish == crate::tier::remote::Publish::Spill && self.disk.is_none() {
                // without G3, G2's evictions are not staged: nothing would ever be published
                return Err(Error::InvalidConfig { field: "remote.publish", reason: "Spill needs an SSD tier" });
            }
        }
        let out_of_range = |field, value: &dyn std::fmt::Display, expected| {
            Err(Error::OutOfRange { field, value: value.to_string(), expected })
        };
        for (field, v) in [("g1_low_watermark", self.g1_low_watermark), ("g2_low_watermark", self.g2_low_watermark)] {
            if !(0.0..1.0).contains(&v) {
                return out_of_range(field, &v, "in [0, 1)");
            }
        }
        if let Some(d) = self.write_budget_dwpd
            && !(d.is_finite() && d > 0.0)
        {
            return out_of_range("write_budget_dwpd", &d, "positive and finite");
        }
        if !(0.0..=1.0).contains(&self.admission_hits_per_write) {
            return out_of_range("admission_hits_per_write", &self.admission_hits_per_write, "in [0, 1]");
        }
        if self.admission_window_turnovers == 0 {
            return out_of_range("admission_window_turnovers", &self.admission_window_turnovers, "at least 1");
        }
        if self.batch_pages == 0 {
            return out_of_range("batch_pages", &self.batch_pages, "at least 1");
        }
        if self.batch_bytes == 0 {
            return out_of_range("batch_bytes", &self.batch_bytes, "at least 1");
        }
        if self.workers > 64 {
            return out_of_range("workers", &self.workers, "0..=64");
        }
        Ok(())
    }
}
