//! Engine counters and latency histograms.

use std::time::Duration;

/// Log-linear latency histogram: 8 sub-buckets per power of two of nanoseconds, so a
/// quantile is within 12.5 % of the true value; fixed size, no allocation after creation.
/// The engine keeps its per-operation latencies in these; front ends (the replay) use the
/// same type for theirs.
///
/// ```
/// use std::time::Duration;
/// let mut h = kvtier::offload::LatencyHistogram::new();
/// (1..=100).for_each(|us| h.record(Duration::from_micros(us)));
/// let s = h.summary();
/// assert_eq!(s.count, 100);
/// assert!(s.p50 <= Duration::from_micros(50) && s.p50 >= Duration::from_micros(43));
/// ```
#[derive(Debug, Clone)]
pub struct LatencyHistogram {
    buckets: Vec<u64>,
    count: u64,
}

const SUB: u32 = 8;

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl LatencyHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self { buckets: vec![0; 64 * SUB as usize], count: 0 }
    }

    fn index(ns: u64) -> usize {
        if ns < SUB as u64 {
            return ns as usize;
        }
        let exp = 63 - ns.leading_zeros();
        let sub = (ns >> (exp - 3)) & (SUB as u64 - 1);
        (exp * SUB + sub as u32) as usize
    }

    fn lower_bound(i: usize) -> u64 {
        let (exp, sub) = (i as u32 / SUB, i as u64 % SUB as u64);
        if exp < 3 { i as u64 } else { (SUB as u64 + sub) << (exp - 3) }
    }

    /// Counts one operation that took `d`.
    pub fn record(&mut self, d: Duration) {
        let ns = d.as_nanos().min(u64::MAX as u128) as u64;
        let i = Self::index(ns).min(self.buckets.len() - 1);
        self.buckets[i] += 1;
        self.count += 1;
    }

    /// Count, median and 99th percentile (bucket lower bounds; zero when empty).
    pub fn summary(&self) -> LatencySummary {
        LatencySummary { count: self.count, p50: self.quantile(0.5), p99: self.quantile(0.99) }
    }

    fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let target = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, &c) in self.buckets.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Duration::from_nanos(Self::lower_bound(i));
            }
        }
        Duration::ZERO
    }
}

/// Count and quantiles of one kind of operation (quantiles are bucket lower bounds, within
/// 12.5 %).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySummary {
    /// Operations recorded.
    pub count: u64,
    /// Median.
    pub p50: Duration,
    /// 99th percentile.
    pub p99: Duration,
}

/// Pages and bytes moved one way between two tiers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    /// Pages moved.
    pub pages: u64,
    /// Bytes moved.
    pub bytes: u64,
}

impl Traffic {
    pub(crate) fn add(&mut self, pages: u64, page_bytes: usize) {
        self.pages += pages;
        self.bytes += pages * page_bytes as u64;
    }
}

/// Counters of the offload engine (movement between tiers, lookups, admission).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EngineMetrics {
    /// Prefix lookups across tiers.
    pub lookups: u64,
    /// Blocks found in G1, G2 and G3 by those lookups, and blocks missed.
    pub hit_blocks: [u64; 3],
    /// Blocks looked up and found in no tier.
    pub miss_blocks: u64,
    /// G1 -> G2 offloads.
    pub g1_to_g2: Traffic,
    /// G2 -> G3 spills.
    pub g2_to_g3: Traffic,
    /// G2 -> G1 onboards.
    pub g2_to_g1: Traffic,
    /// G3 -> G1 onboards.
    pub g3_to_g1: Traffic,
    /// G3 -> G2 prefetches.
    pub g3_to_g2: Traffic,
    /// Blocks found by lookups in G4 only (after the leading run the local tiers hold).
    pub g4_hit_blocks: u64,
    /// Pages stored in G4 (G1 -> G4 or G2 -> G4, by [`crate::tier::remote::Publish`]).
    pub to_g4: Traffic,
    /// G4 -> G1 onboards.
    pub g4_to_g1: Traffic,
    /// Offloads that could not be done (G2 full of pinned pages): the block stayed in G1.
    pub offload_failed: u64,
    /// Spills the admission filter declined.
    pub admission_declined: u64,
    /// The adaptive admission filter's current threshold: the least use count a page leaving
    /// G2 needs to be written to G3 (5: none is); `None` until its shadow has seen enough
    /// (it then admits pages seen twice). Kept for every filter.
    pub admission_min_uses: Option<u8>,
    /// The shadow's estimate, per use count at spill (1, 2, 3, 4+), of the fraction of spills
    /// asked for again within the G3 lifetime the threshold gives, in thousandths; `None`
    /// where not enough is known.
    pub admission_reuse_per_mille: [Option<u16>; 4],
    /// G2 pages not spilled because G1 still held them (dropped from G2 instead: G1's block
    /// is copied down again when it is evicted).
    pub spill_skipped_in_g1: u64,
    /// G2 pages made most recently used because G1 evicted its copy (demotion).
    pub demoted: u64,
    /// Spills deferred because the write budget was spent.
    pub budget_deferred: u64,
    /// Spills that failed (IO error, disk full).
    pub spill_failed: u64,
    /// Pages asked for by onboarding that no tier could deliver (miss, corrupt, IO error).
    pub onboard_failed: u64,
    /// Errors inside background work that no caller could be handed: a maintenance pass that
    /// failed (it is retried on the next tick; its pages stayed where they were), an
    /// onboarding job or ticket release whose bookkeeping failed. Non-zero means a bug or a
    /// failing tier, never a wrong byte served; the tiers' invariant checks say more.
    pub worker_errors: u64,
    /// Jobs waiting for a worker.
    pub queue_depth: u64,
    /// Prefetches dropped because [`OffloadConfig::max_queued_prefetches`](super::OffloadConfig::max_queued_prefetches)
    /// jobs were already queued or running.
    pub prefetch_dropped: u64,
    /// Pages whose G2/G3 events were dropped undrained
    /// ([`OffloadConfig::tier_event_capacity`](super::OffloadConfig::tier_event_capacity)):
    /// a router that sees this grow takes a snapshot
    /// ([`TieredCache::tier_hashes`](super::TieredCache::tier_hashes)).
    pub tier_events_dropped: u64,
    /// G1 -> G2 copy latency per page.
    pub offload_latency: LatencySummary,
    /// G2 -> G3 write latency per batch.
    pub spill_latency: LatencySummary,
    /// Onboard latency per page from G2.
    pub onboard_g2_latency: LatencySummary,
    /// Onboard latency per batch from G3.
    pub onboard_g3_latency: LatencySummary,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_within_a_bucket() {
        let mut h = LatencyHistogram::new();
        for us in 1..=100u64 {
            h.record(Duration::from_micros(us));
        }
        let s = h.summary();
        assert_eq!(s.count, 100);
        let p50 = s.p50.as_nanos() as f64;
        assert!((43_000.0..=50_000.0).contains(&p50), "{p50}");
        let p99 = s.p99.as_nanos() as f64;
        assert!((86_000.0..=99_000.0).contains(&p99), "{p99}");
        assert_eq!(LatencyHistogram::new().summary().p99, Duration::ZERO);
    }
}
