//! What an engine replay reports: deterministic results ([`EngineReport`]) apart from the
//! wall-clock measurements ([`EngineTiming`]).

use kvtier::offload::{Admission, LatencySummary, TieredCache, Traffic};
use serde::Serialize;

use super::EngineConfig;
pub use super::reference::{Reference, SimAtCapacity};
pub use super::verify::{Mismatch, TierPages, Verification};

/// What the G4 server saw of a replay (from [`kvtier::tier::remote::RemoteMetrics`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct G4Summary {
    /// The server, credentials redacted.
    pub server: String,
    /// Pipelined round trips.
    pub round_trips: u64,
    /// Prefix lookups, and the blocks they found beyond the local tiers.
    pub lookups: u64,
    /// See [`G4Summary::lookups`].
    pub lookup_found: u64,
    /// Pages delivered (verified) and their payload bytes.
    pub get_hits: u64,
    /// See [`G4Summary::get_hits`].
    pub get_bytes: u64,
    /// Pages asked for that were gone, and values that failed verification.
    pub get_absent: u64,
    /// See [`G4Summary::get_absent`].
    pub get_rejected: u64,
    /// Pages stored and their payload bytes.
    pub put_stored: u64,
    /// See [`G4Summary::put_stored`].
    pub put_bytes: u64,
    /// Pages the server refused.
    pub put_rejected: u64,
    /// Failed round trips (each a miss), and calls skipped during a backoff.
    pub errors: u64,
    /// See [`G4Summary::errors`].
    pub skipped_down: u64,
}

/// Prompt tokens served from the cache, by the tier they were found in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TierTokens {
    /// Found in G1 (shared at once).
    pub g1: u64,
    /// Onboarded from G2.
    pub g2: u64,
    /// Onboarded from G3.
    pub g3: u64,
    /// Onboarded from G4 (the shared server, `--g4`).
    pub g4: u64,
}

impl TierTokens {
    /// All tiers.
    pub fn total(&self) -> u64 {
        self.g1 + self.g2 + self.g3 + self.g4
    }
    pub(crate) fn add(&mut self, o: &TierTokens) {
        self.g1 += o.g1;
        self.g2 += o.g2;
        self.g3 += o.g3;
        self.g4 += o.g4;
    }
}

/// Prefix hit rates (token-weighted; see the module docs of [`super`]).
///
/// The headline is [`HitRates::second_half`]: the first half of the requests only warms the
/// cache, as the `sim` mode and the public kvcache-simulator count it. The rates over all
/// requests include the cold start.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HitRates {
    /// Headline: all tiers, second half of the requests.
    pub second_half: f64,
    /// Second half, served from G1.
    pub second_half_g1: f64,
    /// Second half, onboarded from G2.
    pub second_half_g2: f64,
    /// Second half, onboarded from G3.
    pub second_half_g3: f64,
    /// Second half, onboarded from G4.
    pub second_half_g4: f64,
    /// All tiers, all requests (cold start included).
    pub all_requests: f64,
    /// All requests, served from G1.
    pub g1: f64,
    /// All requests, onboarded from G2.
    pub g2: f64,
    /// All requests, onboarded from G3.
    pub g3: f64,
    /// All requests, onboarded from G4.
    pub g4: f64,
}

/// The engine's own live estimate of hit rate against capacity ([`kvtier::curve`]): LRU stack
/// distances of a hash-sampled subset of the admitted prefixes' blocks, counted over the second
/// half of the requests (reset at its first admission), read at each tier boundary and at
/// multiples of the summed capacity. Block-weighted (a prompt's last partial block is not
/// counted), so it compares best with the simulator-compatible LRU at the same capacity.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LiveCurve {
    /// Fraction of blocks sampled at the end.
    pub sample_rate: f64,
    /// Sampled accesses counted, and distinct blocks tracked at the end.
    pub sampled_accesses: u64,
    /// Distinct blocks tracked at the end.
    pub tracked_blocks: usize,
    /// Heavy hitters tracked exactly at the end (blocks whose accesses would skew the sample).
    pub hot_blocks: usize,
    /// Estimated LRU hit rate with G1's capacity.
    pub at_g1: f64,
    /// With G1 + G2's.
    pub at_g1_g2: f64,
    /// With G1 + G2 + G3's (the summed capacity of the reference).
    pub at_summed: f64,
    /// `(capacity in blocks, estimated hit rate)` at 1/8 to 8 times the summed capacity.
    pub points: Vec<(u64, f64)>,
}

/// Onboard or recompute ([`kvtier::offload::OnboardCost::plan`] at the replay's simulated
/// speeds), for every request whose prefix was found partly below G1: what the rule chose, and
/// the simulated time to the end of the prefix under each choice. Counted whether or not the
/// replay follows the rule (`acted`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct OnboardChoices {
    /// Whether the replay followed the rule (loaded only what it chose), or loaded everything.
    pub acted: bool,
    /// Lookups that found blocks below G1.
    pub decisions: u64,
    /// Of those, the rule loaded every block found.
    pub load_all: u64,
    /// ... loaded a leading part and recomputed the rest.
    pub load_part: u64,
    /// ... loaded nothing from below (recomputed from the first block not in G1).
    pub load_none: u64,
    /// Blocks found below G1 that the rule recomputed instead.
    pub blocks_recomputed: u64,
    /// Simulated seconds to the end of the prefixes with the rule's choices, summed.
    pub seconds_rule: f64,
    /// The same loading every block found.
    pub seconds_load_all: f64,
    /// The same recomputing everything after the leading G1 blocks.
    pub seconds_load_none: f64,
}

/// What the replay wrote to the SSD tier, and the wear that implies for the drive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct SsdWear {
    /// Pages written to G3 (every path: spills, and whatever else writes there).
    pub pages_written: u64,
    /// Those pages at the model layout.
    pub bytes_written_at_model: u64,
    /// Bytes the replay actually wrote (small payload pages in 4 KiB slots, unless full data).
    pub bytes_written_on_disk: u64,
    /// `bytes_written_at_model` per hour of simulated time (the trace's span plus the drain
    /// of its last requests).
    pub bytes_per_hour: f64,
    /// The configured G3 size at the model layout.
    pub capacity_bytes: u64,
    /// Drive writes per day that rate implies for a drive of `capacity_bytes`:
    /// `bytes_per_hour * 24 / capacity_bytes`.
    pub drive_writes_per_day: f64,
}

impl SsdWear {
    /// The wear of `pages_written` pages of `model_page_bytes` over `simulated_seconds`, for
    /// a G3 of `g3_blocks`.
    ///
    /// ```
    /// use kvtier_cli::replay::engine::report::SsdWear;
    /// // a 1,000-page G3 written 500 pages in half an hour: one full drive write per hour
    /// let w = SsdWear::new(500, 500 * 4096, 4096, 1_000, 1800.0);
    /// assert_eq!((w.bytes_per_hour, w.drive_writes_per_day), (4_096_000.0, 24.0));
    /// ```
    pub fn new(pages_written: u64, bytes_on_disk: u64, model_page_bytes: u64, g3_blocks: usize, sim_secs: f64) -> Self {
        let at_model = pages_written * model_page_bytes;
        let capacity_bytes = g3_blocks as u64 * model_page_bytes;
        let bytes_per_hour = if sim_secs > 0.0 { at_model as f64 * 3600.0 / sim_secs } else { 0.0 };
        let drive_writes_per_day = if capacity_bytes > 0 { bytes_per_hour * 24.0 / capacity_bytes as f64 } else { 0.0 };
        Self {
            pages_written,
            bytes_written_at_model: at_model,
            bytes_written_on_disk: bytes_on_disk,
            bytes_per_hour,
            capacity_bytes,
            drive_writes_per_day,
        }
    }
}

/// Pages moved one way between two tiers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrafficRow {
    /// Source tier.
    pub from: &'static str,
    /// Destination tier.
    pub to: &'static str,
    /// Pages moved.
    pub pages: u64,
    /// Bytes actually moved (small payload pages).
    pub bytes_moved: u64,
    /// The same pages at the model layout.
    pub bytes_at_model: u64,
    /// `bytes_at_model` per simulated second: the bandwidth the workload asks of that link.
    pub model_bytes_per_sim_sec: f64,
}

impl TrafficRow {
    pub(crate) fn new(from: &'static str, to: &'static str, t: Traffic, model_page: u64, sim_secs: f64) -> Self {
        let at_model = t.pages * model_page;
        let rate = if sim_secs > 0.0 { at_model as f64 / sim_secs } else { 0.0 };
        Self { from, to, pages: t.pages, bytes_moved: t.bytes, bytes_at_model: at_model, model_bytes_per_sim_sec: rate }
    }
}

/// Highest occupancy seen, in blocks, checked after every step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Peaks {
    /// G1 blocks held by sequences.
    pub g1_in_use: usize,
    /// G1 blocks holding data (in use or cached-evictable).
    pub g1_resident: usize,
    /// G2 slots holding a page.
    pub g2_used: usize,
    /// G3 slots holding a page.
    pub g3_used: usize,
    /// Requests running at once.
    pub running: usize,
}

/// One point of the time series.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Sample {
    /// Simulated time, seconds.
    pub t_s: f64,
    /// Hit rate of every request admitted so far, all tiers.
    pub cumulative_hit_rate: f64,
    /// Hit rate of the second-half requests admitted so far (the headline as it builds up;
    /// 0 before the first of them).
    pub second_half_cumulative_hit_rate: f64,
    /// Hit rate of the requests admitted during the interval, all tiers.
    pub hit_rate: f64,
    /// Of which G1.
    pub g1_hit_rate: f64,
    /// Of which G2.
    pub g2_hit_rate: f64,
    /// Of which G3.
    pub g3_hit_rate: f64,
    /// G1 blocks holding data / capacity.
    pub g1_used: f64,
    /// G1 blocks held by sequences / capacity.
    pub g1_in_use: f64,
    /// G2 slots used / capacity.
    pub g2_used: f64,
    /// G3 slots used / capacity.
    pub g3_used: f64,
    /// Requests running.
    pub running: usize,
}

/// Distribution of a simulated wait, milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct WaitSummary {
    /// Requests counted.
    pub count: usize,
    /// Mean.
    pub mean_ms: f64,
    /// Median.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Longest.
    pub max_ms: f64,
}

impl WaitSummary {
    /// Summarizes waits given in microseconds (sorts them).
    pub(crate) fn of(waits_us: &mut [u64]) -> Self {
        if waits_us.is_empty() {
            return Self::default();
        }
        waits_us.sort_unstable();
        let n = waits_us.len();
        let at = |q: f64| waits_us[((n as f64 * q).ceil() as usize).clamp(1, n) - 1] as f64 / 1e3;
        let sum: u64 = waits_us.iter().sum();
        Self { count: n, mean_ms: sum as f64 / n as f64 / 1e3, p50_ms: at(0.5), p99_ms: at(0.99), max_ms: at(1.0) }
    }
}

/// Tokens of the current sampling interval.
#[derive(Debug, Default)]
pub(crate) struct Window {
    pub(crate) prompt_tokens: u64,
    pub(crate) hit: TierTokens,
}

/// Results of an engine replay; equal inputs give an equal report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EngineReport {
    /// Bytes of one page at the model layout.
    pub model_page_bytes: usize,
    /// Bytes of one page as moved (the small payload).
    pub payload_page_bytes: usize,
    /// Tokens per block.
    pub block_size: u32,
    /// Capacities in blocks.
    pub g1_blocks: usize,
    /// G2 capacity in blocks.
    pub g2_blocks: usize,
    /// G3 capacity in blocks (0: no SSD tier).
    pub g3_blocks: usize,
    /// Bytes of a G3 slot on disk.
    pub g3_slot_bytes: usize,
    /// IO engine of G3 (`io_uring` or `psync`), if any.
    pub g3_backend: Option<String>,
    /// G3 admission filter.
    pub admission: &'static str,
    /// Whether committed blocks were written through to G2.
    pub write_through_g2: bool,
    /// Whether G3 was exclusive of G1 on promotion.
    pub exclusive_g3: bool,
    /// Whether full model-size pages were moved.
    pub full_data: bool,
    /// Simulated decode step, milliseconds.
    pub decode_step_ms: f64,
    /// Simulated prefill speed, tokens per second.
    pub prefill_tokens_per_sec: f64,
    /// Requests in the trace.
    pub requests: usize,
    /// Requests that ran to the end.
    pub finished: usize,
    /// Requests whose prompt does not fit in G1.
    pub rejected: usize,
    /// Requests ended early because G1 could not hold their next token even alone.
    pub truncated: usize,
    /// Preemptions (a running request freed to let the others decode, recomputed later).
    pub preemptions: u64,
    /// Waiting requests whose prefix was prefetched from G3 to G2 (pages: the G3 -> G2 row
    /// of the traffic).
    pub prefetched_requests: u64,
    /// Scheduler steps that ran prefill or decode.
    pub steps: u64,
    /// Simulated duration, seconds.
    pub simulated_seconds: f64,
    /// Prompt tokens of every request.
    pub prompt_tokens: u64,
    /// Prompt tokens served from the cache at first admission, per tier.
    pub hit_tokens: TierTokens,
    /// Prefill tokens saved (`hit_tokens`, all tiers).
    pub prefill_tokens_saved: u64,
    /// Prefill tokens computed, recomputation after preemption included.
    pub prefill_tokens_computed: u64,
    /// Tokens decoded.
    pub decode_tokens: u64,
    /// Prompt tokens of the second half of the requests.
    pub second_half_prompt_tokens: u64,
    /// Of those, served from the cache, per tier.
    pub second_half_hit_tokens: TierTokens,
    /// Arrival of the first second-half request, simulated seconds.
    pub second_half_from_s: f64,
    /// Hit rates; the headline is `second_half`.
    pub hit_rate: HitRates,
    /// Every served page checked against what was written for its hash.
    pub verification: Verification,
    /// The same engine with one G1 of the summed capacity, and the simulator's LRU/OPT at
    /// that capacity (unless turned off).
    pub reference: Option<Reference>,
    /// The live capacity curve's estimates (none when G1's curve is off).
    pub live_curve: Option<LiveCurve>,
    /// G3 writes and the drive wear they imply (none without a G3).
    pub ssd_wear: Option<SsdWear>,
    /// Onboard-or-recompute decisions.
    pub onboard_choices: OnboardChoices,
    /// Pages moved between tiers.
    pub traffic: Vec<TrafficRow>,
    /// Simulated time from arrival to admission (waiting for G1 room and for onboarding).
    pub admission_wait: WaitSummary,
    /// Peak occupancy.
    pub peaks: Peaks,
    /// Blocks evicted from G1 (reused for other data).
    pub g1_evictions: u64,
    /// Of those, not backed by G2 (their content left the hierarchy).
    pub g1_unbacked_evictions: u64,
    /// Pages evicted from G2.
    pub g2_evictions: u64,
    /// Of those, not backed by G3.
    pub g2_unbacked_evictions: u64,
    /// Pages evicted from G3.
    pub g3_evictions: u64,
    /// Spills to G3 the admission filter declined.
    pub admission_declined: u64,
    /// The adaptive filter's threshold at the end: least use count written to G3 (5: none).
    pub admission_min_uses: Option<u8>,
    /// The adaptive filter's estimate of how often spilled pages come back within the G3
    /// lifetime its threshold gives, per use count (1, 2, 3, 4+) at spill, in thousandths.
    pub admission_reuse_per_mille: [Option<u16>; 4],
    /// Pages onboarding could not deliver.
    pub onboard_failed: u64,
    /// The shared G4 tier's side of the run (`--g4`), if configured.
    pub g4: Option<G4Summary>,
    /// Hit rate and occupancy over simulated time.
    pub samples: Vec<Sample>,
}

impl EngineReport {
    pub(crate) fn new(config: &EngineConfig, tiers: &TieredCache) -> Self {
        Self {
            model_page_bytes: config.layout.page_bytes(),
            payload_page_bytes: tiers.g1().layout().page_bytes(),
            block_size: config.layout.block_size(),
            g1_blocks: config.g1_blocks,
            g2_blocks: config.g2_blocks,
            g3_blocks: config.g3_blocks,
            g3_slot_bytes: tiers.g3().map_or(0, |d| d.slot_bytes()),
            g3_backend: None,
            admission: match config.admission {
                _ if config.admission_oracle_s.is_some() => "oracle",
                Admission::All => "all",
                Admission::SeenTwice => "seen-twice",
                Admission::Adaptive => "adaptive",
            },
            write_through_g2: config.write_through_g2,
            exclusive_g3: config.exclusive_g3,
            full_data: config.full_data,
            decode_step_ms: config.decode_step.as_secs_f64() * 1e3,
            prefill_tokens_per_sec: config.prefill_tokens_per_sec,
            requests: 0,
            finished: 0,
            rejected: 0,
            truncated: 0,
            preemptions: 0,
            prefetched_requests: 0,
            steps: 0,
            simulated_seconds: 0.0,
            prompt_tokens: 0,
            hit_tokens: TierTokens::default(),
            prefill_tokens_saved: 0,
            prefill_tokens_computed: 0,
            decode_tokens: 0,
            second_half_prompt_tokens: 0,
            second_half_hit_tokens: TierTokens::default(),
            second_half_from_s: 0.0,
            hit_rate: HitRates::default(),
            verification: Verification::default(),
            reference: None,
            live_curve: None,
            ssd_wear: None,
            onboard_choices: OnboardChoices { acted: config.onboard_rule, ..OnboardChoices::default() },
            traffic: Vec::new(),
            admission_wait: WaitSummary::default(),
            peaks: Peaks::default(),
            g1_evictions: 0,
            g1_unbacked_evictions: 0,
            g2_evictions: 0,
            g2_unbacked_evictions: 0,
            g3_evictions: 0,
            admission_declined: 0,
            admission_min_uses: None,
            admission_reuse_per_mille: [None; 4],
            onboard_failed: 0,
            g4: None,
            samples: Vec::new(),
        }
    }

    pub(crate) fn finalize(&mut self) {
        let rate = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
        let (h, s) = (self.hit_tokens, self.second_half_hit_tokens);
        let second = self.second_half_prompt_tokens;
        self.prefill_tokens_saved = h.total();
        self.hit_rate = HitRates {
            second_half: rate(s.total(), second),
            second_half_g1: rate(s.g1, second),
            second_half_g2: rate(s.g2, second),
            second_half_g3: rate(s.g3, second),
            second_half_g4: rate(s.g4, second),
            all_requests: rate(h.total(), self.prompt_tokens),
            g1: rate(h.g1, self.prompt_tokens),
            g2: rate(h.g2, self.prompt_tokens),
            g3: rate(h.g3, self.prompt_tokens),
            g4: rate(h.g4, self.prompt_tokens),
        };
    }

    /// The traffic row of one direction, if any pages moved that way.
    pub fn traffic(&self, from: &str, to: &str) -> Option<&TrafficRow> {
        self.traffic.iter().find(|t| t.from == from && t.to == to)
    }
}

/// Count and quantiles of one operation, in nanoseconds (bucket lower bounds, within 12.5 %).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OpLatency {
    /// Operations timed.
    pub count: u64,
    /// Median, ns.
    pub p50_ns: u64,
    /// 99th percentile, ns.
    pub p99_ns: u64,
}

impl From<LatencySummary> for OpLatency {
    fn from(s: LatencySummary) -> Self {
        Self { count: s.count, p50_ns: s.p50.as_nanos() as u64, p99_ns: s.p99.as_nanos() as u64 }
    }
}

/// Wall-clock measurements of an engine replay (they vary from run to run).
#[derive(Debug, Clone, Default, Serialize)]
pub struct EngineTiming {
    /// The tiered replay, seconds.
    pub wall_seconds: f64,
    /// The reference replay through one large G1, seconds (0 without a reference).
    pub reference_seconds: f64,
    /// The simulator-compatible LRU and OPT at the summed capacity, seconds.
    pub sim_reference_seconds: f64,
    /// `add_sequence` calls (admissions, including refused ones).
    pub add_sequence: OpLatency,
    /// `decode_step` calls (one per batch).
    pub decode_step: OpLatency,
    /// `free` calls.
    pub free: OpLatency,
    /// Time in the engine's maintenance (offload and spill), seconds.
    pub maintenance_seconds: f64,
    /// Time in onboarding calls, seconds.
    pub onboard_seconds: f64,
    /// Bytes offloaded (G1 -> G2 and G2 -> G3) per second of maintenance.
    pub offload_bytes_per_sec: f64,
    /// Bytes onboarded (G2/G3 -> G1) per second of onboarding.
    pub onboard_bytes_per_sec: f64,
    /// Engine: G1 -> G2 copy per page.
    pub offload_page_latency: OpLatency,
    /// Engine: G2 -> G3 write per batch.
    pub spill_batch_latency: OpLatency,
    /// Engine: G2 -> G1 onboard per page.
    pub onboard_g2_page_latency: OpLatency,
    /// Engine: G3 -> G1 onboard per batch.
    pub onboard_g3_batch_latency: OpLatency,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_quantiles() {
        let mut waits: Vec<u64> = (1..=100).rev().map(|ms| ms * 1000).collect();
        let w = WaitSummary::of(&mut waits);
        assert_eq!((w.count, w.p50_ms, w.p99_ms, w.max_ms, w.mean_ms), (100, 50.0, 99.0, 100.0, 50.5));
        assert_eq!(WaitSummary::of(&mut []), WaitSummary::default());
    }
}
