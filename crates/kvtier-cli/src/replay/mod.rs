//! Replaying real serving traces.
//!
//! A trace ([`crate::trace`]) lists requests with the block ids of their prompts. Replaying it
//! answers "how much prefill would a cache of this size have saved on this workload?".
//!
//! ## Hit-rate definitions
//! - **Compatible (`sim` mode, this module today)**: exactly the definition of the public
//!   kvcache-simulator 0.1.3 by the Mooncake team, so numbers compare with its published tables.
//!   Requests are replayed one at a time in file order; the first half of them only warms the
//!   cache; hit rate = tokens in the longest continuously cached prefix / all prompt tokens, over
//!   the second half; capacity counts 512-token blocks (prefix-tree nodes); LRU and OPT evict
//!   only leaves of the prefix tree. See [`sim`] for the step-by-step rules.
//! - **Engine (`engine` mode, [`engine`])**: requests run through the real G1+G2+G3 engine
//!   with simulated lifetimes (arrival, prefill, decode steps, preemption under G1 pressure);
//!   hit rate = prompt tokens served from any tier at admission / all prompt tokens, over the
//!   second half of the requests as above (the headline; also over every request), split per
//!   tier, every served page verified, compared with one G1 of the summed capacity.
//!
//! ## How a compatible replay runs
//! 1. [`PrefixPlan::build`] turns the trace into a prefix tree once.
//! 2. [`SimConfig::capacities_for`] resolves the capacities (given, or a share of the unique
//!    blocks like kvcache-simulator's sweep).
//! 3. [`SimReport::run`] replays every (capacity, policy) point and collects the results.
//!
//! ```
//! use kvtier_cli::replay::{PrefixPlan, SimConfig, SimPolicy, SimReport};
//! use kvtier_cli::trace::{Trace, TraceRecord};
//! let req = |ids: &[u64]| TraceRecord { timestamp_ms: 0, input_length: 512 * ids.len() as u32, output_length: 1, hash_ids: ids.to_vec() };
//! let trace = Trace::from_records(vec![req(&[1, 2]), req(&[3]), req(&[1, 2]), req(&[3])]);
//! let plan = PrefixPlan::build(&trace);
//! let config = SimConfig::default().with_capacities(vec![1, 3]).with_policies(vec![SimPolicy::Lru]);
//! let report = SimReport::run(&plan, &config, |_| {})?;
//! assert_eq!(report.points[0].hit_rate, 0.0); // one block: request 3 evicted everything
//! assert_eq!(report.points[1].hit_rate, 1.0); // three blocks hold both prompts
//! # Ok::<(), kvtier_cli::Error>(())
//! ```

pub mod chart;
pub mod engine;
pub mod sim;
pub mod synth;

pub use engine::report::{EngineReport, EngineTiming};
pub use engine::{EngineConfig, EngineRun, Reference};
pub use sim::{PrefixPlan, SimPolicy, SimResult};

use crate::error::{Error, Result};

/// Capacities, in percent of the trace's unique blocks, used when none are given (the sweep of
/// kvcache-simulator's published table).
pub const DEFAULT_CAPACITY_PERCENTS: [u32; 5] = [1, 5, 10, 25, 50];

/// What a compatible replay runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    capacities: Vec<u32>,
    policies: Vec<SimPolicy>,
    in_pool: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self { capacities: Vec::new(), policies: vec![SimPolicy::Lru, SimPolicy::Opt], in_pool: false }
    }
}

impl SimConfig {
    /// Capacities in 512-token blocks. Default: empty, meaning [`DEFAULT_CAPACITY_PERCENTS`] of
    /// the unique blocks (`floor`, at least 1).
    ///
    /// ```
    /// # use kvtier_cli::replay::SimConfig;
    /// assert!(SimConfig::default().with_capacities(vec![0]).validate().is_err());
    /// ```
    pub fn with_capacities(mut self, capacities: Vec<u32>) -> Self {
        self.capacities = capacities;
        self
    }

    /// Policies to replay at each capacity. Default: LRU and OPT.
    ///
    /// ```
    /// # use kvtier_cli::replay::{SimConfig, SimPolicy};
    /// assert!(SimConfig::default().with_policies(vec![SimPolicy::Fifo]).validate().is_ok());
    /// ```
    pub fn with_policies(mut self, policies: Vec<SimPolicy>) -> Self {
        self.policies = policies;
        self
    }

    /// Replays the tier policies through a real [`kvtier::BlockPool`] instead of the prefix-tree
    /// model ([`PrefixPlan::simulate_pool`]). Default: false.
    pub fn with_pool(mut self, in_pool: bool) -> Self {
        self.in_pool = in_pool;
        self
    }

    /// Policies replayed at each capacity.
    pub fn policies(&self) -> &[SimPolicy] {
        &self.policies
    }

    /// Rejects a zero capacity and an empty policy list.
    pub fn validate(&self) -> Result<()> {
        if self.capacities.contains(&0) {
            return Err(Error::invalid("capacity", 0, "must be at least 1 block"));
        }
        if self.policies.is_empty() {
            return Err(Error::invalid("policies", "(none)", "must name at least one policy"));
        }
        Ok(())
    }

    /// The capacities to replay for `plan`.
    ///
    /// ```
    /// # use kvtier_cli::replay::{PrefixPlan, SimConfig};
    /// # use kvtier_cli::trace::{Trace, TraceRecord};
    /// let ids: Vec<u64> = (0..200).collect();
    /// let r = TraceRecord { timestamp_ms: 0, input_length: 512 * 200, output_length: 1, hash_ids: ids };
    /// let plan = PrefixPlan::build(&Trace::from_records(vec![r]));
    /// assert_eq!(SimConfig::default().capacities_for(&plan), [2, 10, 20, 50, 100]);
    /// ```
    pub fn capacities_for(&self, plan: &PrefixPlan) -> Vec<u32> {
        if !self.capacities.is_empty() {
            return self.capacities.clone();
        }
        let unique = plan.unique_blocks() as u64;
        DEFAULT_CAPACITY_PERCENTS
            .iter()
            .map(|&pct| (unique * pct as u64 / 100).clamp(1, u32::MAX as u64) as u32)
            .collect()
    }
}

/// Results of a compatible replay; equal inputs give an equal report (no timings inside).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct SimReport {
    /// Requests replayed.
    pub requests: usize,
    /// Requests that only warmed the cache.
    pub warmup_requests: usize,
    /// Prompt tokens over the whole trace.
    pub prompt_tokens: u64,
    /// Prompt tokens of the measured half.
    pub measured_tokens: u64,
    /// Block ids over the whole trace.
    pub block_events: usize,
    /// Distinct prefix-tree nodes.
    pub unique_blocks: usize,
    /// Hit rate with an unbounded cache.
    pub ceiling_hit_rate: f64,
    /// One result per (capacity, policy), capacities in the order given, policies within.
    pub points: Vec<SimResult>,
}

impl SimReport {
    /// Replays every point of `config`; `on_point` is called after each (for progress).
    pub fn run(plan: &PrefixPlan, config: &SimConfig, mut on_point: impl FnMut(&SimResult)) -> Result<Self> {
        config.validate()?;
        let ceiling = plan.ceiling_hit_tokens();
        let measured = plan.measured_tokens();
        let mut points = Vec::new();
        for capacity in config.capacities_for(plan) {
            for &policy in &config.policies {
                let result = if config.in_pool {
                    plan.simulate_in_pool(policy, capacity)?
                } else {
                    plan.simulate(policy, capacity)
                };
                on_point(&result);
                points.push(result);
            }
        }
        Ok(Self {
            requests: plan.requests(),
            warmup_requests: plan.warmup_requests(),
            prompt_tokens: plan.prompt_tokens(),
            measured_tokens: measured,
            block_events: plan.block_events(),
            unique_blocks: plan.unique_blocks(),
            ceiling_hit_rate: if measured == 0 { 0.0 } else { ceiling as f64 / measured as f64 },
            points,
        })
    }
}
