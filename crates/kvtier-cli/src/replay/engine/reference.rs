//! The reference every engine replay is measured against.
//!
//! A tiered cache exists to keep the prefixes G1 cannot hold; it pays off when G1 + G2 + G3
//! serve as much as one cache of their summed size would. So every engine replay (unless
//! [`EngineConfig::reference`] is off) also:
//! 1. replays the same trace with the same scheduler, layout, policy and speeds through one G1
//!    of `g1 + g2 + g3` blocks with no tier below it (a flat cache: nothing is offloaded, an
//!    evicted page is gone), with the same page verification;
//! 2. replays the simulator-compatible LRU and OPT ([`crate::replay::sim`]) at that capacity
//!    converted to 512-token trace blocks, which bound what an eviction policy can do with it
//!    (without request lifetimes or decode blocks);
//! 3. reports both, and the ratio tiered / one large G1 of the second-half hit rates: 1.0
//!    means the hierarchy works as well as one cache of its summed size.

use serde::Serialize;

use super::EngineConfig;
use super::report::EngineReport;
use super::verify::Verification;
use crate::replay::{PrefixPlan, SimPolicy};
use crate::trace::{TRACE_BLOCK_TOKENS, Trace};

/// The simulator-compatible hit rates (second half) at the summed capacity.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SimAtCapacity {
    /// The summed capacity in 512-token trace blocks: `(g1 + g2 + g3) * block_size / 512`,
    /// rounded down, at least 1.
    pub capacity_blocks: u32,
    /// LRU over the leaves of the prefix tree (kvcache-simulator's LRU).
    pub lru: f64,
    /// Belady's OPT: the most any eviction policy can keep at that capacity.
    pub opt: f64,
}

/// The one-large-G1 reference of an engine replay and how the tiered run compares with it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reference {
    /// Blocks of the one G1 (the tiered run's G1 + G2 + G3).
    pub g1_blocks: usize,
    /// Its hit rate over the second half of the requests (compare with the tiered headline).
    pub second_half: f64,
    /// Its hit rate over all requests.
    pub all_requests: f64,
    /// Tiered / one large G1, second-half hit rates: the share of a flat cache's hits the
    /// hierarchy delivers (`None` when the reference hits nothing).
    pub ratio: Option<f64>,
    /// The same over all requests.
    pub ratio_all_requests: Option<f64>,
    /// The simulator-compatible LRU and OPT at the summed capacity.
    pub sim: SimAtCapacity,
    /// Preemptions in the reference replay.
    pub preemptions: u64,
    /// Requests the reference rejected (larger than its G1).
    pub rejected: usize,
    /// The reference replay's page verification.
    pub verification: Verification,
}

impl Reference {
    pub(crate) fn new(tiered: &EngineReport, flat: &EngineReport, sim: SimAtCapacity) -> Self {
        let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
        Self {
            g1_blocks: flat.g1_blocks,
            second_half: flat.hit_rate.second_half,
            all_requests: flat.hit_rate.all_requests,
            ratio: ratio(tiered.hit_rate.second_half, flat.hit_rate.second_half),
            ratio_all_requests: ratio(tiered.hit_rate.all_requests, flat.hit_rate.all_requests),
            sim,
            preemptions: flat.preemptions,
            rejected: flat.rejected,
            verification: flat.verification,
        }
    }
}

/// Blocks of the one G1: G1 + G2 + G3.
pub(crate) fn summed_blocks(config: &EngineConfig) -> usize {
    config.g1_blocks.saturating_add(config.g2_blocks).saturating_add(config.g3_blocks)
}

/// The configuration of the reference replay: one G1 of the summed capacity, the engine's
/// one mandatory G2 page left unused (no write-through; the flat build turns offloading off),
/// no G3, small payload pages whatever `config` moves (only hit rates are compared).
pub(crate) fn flat_config(config: &EngineConfig) -> EngineConfig {
    let mut flat = config.clone().with_capacities(summed_blocks(config), 1, 0).with_write_through_g2(false);
    flat.full_data = false;
    flat.reference = false;
    flat.wrong_stamp_for = None;
    flat
}

/// The summed capacity in 512-token trace blocks (at least 1).
pub(crate) fn sim_capacity(config: &EngineConfig) -> u32 {
    let tokens = summed_blocks(config) as u64 * config.layout.block_size() as u64;
    (tokens / TRACE_BLOCK_TOKENS as u64).clamp(1, u32::MAX as u64) as u32
}

/// The simulator-compatible LRU and OPT hit rates at the summed capacity.
pub(crate) fn sim_at_capacity(trace: &Trace, config: &EngineConfig) -> SimAtCapacity {
    let plan = PrefixPlan::build(trace);
    let capacity_blocks = sim_capacity(config);
    let lru = plan.simulate(SimPolicy::Lru, capacity_blocks).hit_rate;
    let opt = plan.simulate(SimPolicy::Opt, capacity_blocks).hit_rate;
    SimAtCapacity { capacity_blocks, lru, opt }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_has_the_summed_capacity_and_nothing_below() {
        let config = EngineConfig::default();
        let flat = flat_config(&config);
        assert_eq!((flat.g1_blocks, flat.g2_blocks, flat.g3_blocks), (229_376, 1, 0));
        assert!(!flat.write_through_g2 && !flat.reference && !flat.full_data);
        assert_eq!(sim_capacity(&config), 7_168); // 229,376 x 16 tokens / 512
        assert_eq!(sim_capacity(&config.clone().with_capacities(1, 1, 0)), 1);
        assert!(flat_config(&config.with_full_data(true)).validate().is_ok());
    }
}
