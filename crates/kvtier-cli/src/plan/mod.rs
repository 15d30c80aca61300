//! Capacity planning: how much DRAM (G2) and SSD (G3) behind a GPU, from a trace.
//!
//! [`sweep`] replays one trace through the real engine ([`crate::replay::engine::run`], the
//! one-large-G1 reference off) once per point of a G1 x G2 x G3 grid, on as many threads as
//! asked, and reports per point the second-half hit rate per tier, the prefill tokens and
//! GPU-seconds saved, the queueing effect, the bytes written to the SSD per hour with the drive
//! writes per day they mean for that G3, and a cost per hour from prices per GB-hour of each
//! memory. [`PlanReport::cheapest`] is the least costly point reaching a share of the best hit
//! rate; [`chart::write_svg`] draws the sweep. [`profile::TierSpeeds`] takes the simulated
//! G2/G3 bandwidths from a `kvtier probe` profile. With many GPUs each point is one replay per
//! serving instance:
//!
//! ## Many GPUs ([`Cluster`])
//! The trace is taken as a whole cluster's traffic. What is modelled:
//! 1. `gpus` GPUs form `gpus / tp` serving instances of `tp` GPUs each (tensor parallelism).
//! 2. The trace is split over the instances by a routing rule ([`route`]: round robin, or
//!    prefix affinity with a load bound); each instance replays its share through its own
//!    engine, at the share's own arrival times.
//! 3. Tensor parallelism shards the KV heads: each GPU of an instance holds `1 / tp` of every
//!    block, so the per-GPU page is the layout's with `kv_heads / tp` heads (`tp` must divide
//!    the KV heads; replicated heads are not modelled). Every capacity is *per GPU*: a G1, G2
//!    or G3 of B bytes per GPU holds `B / per-GPU page` blocks, and so does the instance (its
//!    `tp` GPUs hold the other shards of the same blocks). The bandwidths move per-GPU pages:
//!    each GPU loads its shard over its own link, in parallel with the others.
//! 4. The prefill speed is the instance's (its `tp` GPUs together): GPU-seconds saved are the
//!    instance-seconds saved times `tp`.
//! 5. Per point: each instance's hit rate, wait, SSD writes (per GPU of the instance) and the
//!    cluster totals: the hit rate over every instance's second-half prompt tokens, the tokens
//!    and GPU-seconds saved summed, the mean wait over requests, the worst instance's p99 wait,
//!    the mean SSD writes per GPU, the cost per GPU and for the whole cluster.
//!
//! With one GPU (the default) the plan is exactly one replay of the whole trace per point.
//!
//! ## Coarse sweep, confirmed ([`PlanConfig::sweep_block_tokens`])
//! A replay's cost grows with the blocks it moves, and a trace names its prefixes per 512-token
//! block ([`TRACE_BLOCK_TOKENS`]): two requests that share a trace block share all of its tokens.
//! So the sweep may replay every point with coarser blocks (up to 512 tokens) holding the same
//! bytes per tier (a 16-token layout's capacities divided by 8 at 128 tokens), and then replay
//! the points the answer rests on (the best hit rate, and the cheapest point reaching the
//! target) at the layout's own block size ([`PlanReport::confirmed`]). What coarse blocks
//! change: eviction and admission move whole runs of tokens, and a request's last block and
//! its decode block waste more of G1, so fewer requests run at once and an overloaded server
//! queues longer. Measured on the full conversation trace (12,031 requests, G1 64 GiB): hit
//! rates within 0.5 % of the 16-token replay at 64, 128 and 512 tokens; mean wait +4 % / +12 % /
//! +67 % at an overloaded point (G2 16 GiB, no G3), +3 % at 128 tokens on a lightly queued one
//! (G2 64 GiB, G3 256 GiB); replay time 45 s at 16 tokens, 15 / 7.5 / 4 s. The report carries
//! both numbers for the confirmed points, so the error is measured on every run, not assumed.
//!
//! The prices are the operator's: the defaults ([`Prices::default`]) are purchase prices
//! spread over three years of service, only to make the column mean something out of the box.
//!
//! Not built yet (issue 12): a search instead of a grid, and live curves from sampled
//! production lookups.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use kvtier::KvLayout;

use crate::replay::engine::report::EngineReport;
use crate::replay::engine::{self, EngineConfig};
use crate::trace::{TRACE_BLOCK_TOKENS, Trace};
use crate::{Error, Result};

pub mod chart;
mod cluster;
pub mod profile;
pub mod route;

pub use cluster::Cluster;
pub use route::Route;

/// One GiB.
const GIB: f64 = (1u64 << 30) as f64;
/// One GB (prices are per decimal GB).
const GB: f64 = 1e9;

/// Prices of capacity, in currency units per GB per hour of service.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Prices {
    /// HBM left for KV on the GPU (G1).
    pub hbm_per_gb_hour: f64,
    /// Host DRAM (G2).
    pub dram_per_gb_hour: f64,
    /// SSD (G3).
    pub ssd_per_gb_hour: f64,
}

impl Default for Prices {
    /// Illustrative purchase prices over three years (26,280 hours): HBM at 20 per GB (a GPU's
    /// price over its memory), server DRAM at 4 per GB, datacenter NVMe at 0.10 per GB.
    fn default() -> Self {
        let hours = 3.0 * 8760.0;
        Self { hbm_per_gb_hour: 20.0 / hours, dram_per_gb_hour: 4.0 / hours, ssd_per_gb_hour: 0.10 / hours }
    }
}

/// What to sweep.
#[derive(Debug, Clone)]
pub struct PlanConfig {
    /// The engine configuration every point starts from (model layout, speeds, policies); its
    /// capacities are replaced by each point's, its layout by the per-GPU one.
    pub base: EngineConfig,
    /// G1 sizes to try, in blocks (per GPU, see [`Cluster`]). [`PlanConfig::new`] takes the
    /// base's.
    pub g1_blocks: Vec<usize>,
    /// G2 sizes to try, in blocks.
    pub g2_blocks: Vec<usize>,
    /// G3 sizes to try, in blocks (0: no G3).
    pub g3_blocks: Vec<usize>,
    /// The GPUs serving the trace. Default: one GPU.
    pub cluster: Cluster,
    /// Replays run at once (at least 1).
    pub threads: usize,
    /// Capacity prices.
    pub prices: Prices,
    /// [`PlanReport::cheapest`] reaches this share of the best hit rate found. Default 0.95.
    pub target: f64,
    /// Tokens per block of the sweep's replays: the layout's block size (the default of
    /// [`PlanConfig::new`]), or a multiple of it dividing the trace block (512) to sweep with
    /// coarser blocks holding the same bytes (see the module docs).
    pub sweep_block_tokens: u32,
    /// After a sweep with coarser blocks, replay the best point and the cheapest point reaching
    /// the target at the layout's block size ([`PlanReport::confirmed`]). Default: true.
    pub confirm: bool,
}

impl PlanConfig {
    /// A grid of `g2 x g3` points at the base's G1, from `base`, on one GPU, on all available
    /// cores, default prices, 95 %.
    pub fn new(base: EngineConfig, g2_blocks: Vec<usize>, g3_blocks: Vec<usize>) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let g1_blocks = vec![base.g1_blocks];
        Self {
            g1_blocks,
            g2_blocks,
            g3_blocks,
            cluster: Cluster::default(),
            threads,
            prices: Prices::default(),
            target: 0.95,
            sweep_block_tokens: base.layout.block_size(),
            confirm: true,
            base,
        }
    }

    /// Sweeps with blocks of `tokens` tokens (see [`PlanConfig::sweep_block_tokens`]).
    pub fn with_sweep_block_tokens(mut self, tokens: u32) -> Self {
        self.sweep_block_tokens = tokens;
        self
    }

    /// How many replays [`sweep`] runs at most: every point on every instance, plus two
    /// confirmations per instance after a coarser sweep.
    pub fn replays(&self) -> usize {
        let points = self.g1_blocks.len() * self.g2_blocks.len() * self.g3_blocks.len();
        let confirmations = if self.coarsening() > 1 && self.confirm { 2 } else { 0 };
        (points + confirmations) * self.cluster.instances()
    }

    /// Layout blocks per sweep block (1: no coarsening).
    fn coarsening(&self) -> usize {
        (self.sweep_block_tokens / self.base.layout.block_size().max(1)).max(1) as usize
    }

    /// Serves the trace by `cluster` (default one GPU).
    pub fn with_cluster(mut self, cluster: Cluster) -> Self {
        self.cluster = cluster;
        self
    }

    /// Checks the grid, the cluster, the target and the prices.
    pub fn validate(&self) -> Result<()> {
        if self.g1_blocks.is_empty() || self.g2_blocks.is_empty() || self.g3_blocks.is_empty() {
            return Err(Error::invalid("plan grid", "empty", "needs at least one G1, one G2 and one G3 size"));
        }
        if let Some(&g1) = self.g1_blocks.iter().find(|&&b| b == 0) {
            return Err(Error::invalid("G1 size", g1, "must be at least 1 block"));
        }
        if let Some(&g2) = self.g2_blocks.iter().find(|&&b| b == 0) {
            return Err(Error::invalid("G2 size", g2, "must be at least 1 block (the engine needs a G2)"));
        }
        if !(self.target > 0.0 && self.target <= 1.0) {
            return Err(Error::invalid("target", self.target, "must be in (0, 1]"));
        }
        let p = self.prices;
        for (name, v) in
            [("HBM price", p.hbm_per_gb_hour), ("DRAM price", p.dram_per_gb_hour), ("SSD price", p.ssd_per_gb_hour)]
        {
            if !v.is_finite() || v < 0.0 {
                return Err(Error::invalid(name, v, "must be a finite price, >= 0"));
            }
        }
        let block = self.base.layout.block_size();
        let tokens = self.sweep_block_tokens;
        if tokens == 0 || !tokens.is_multiple_of(block) || !TRACE_BLOCK_TOKENS.is_multiple_of(tokens) {
            return Err(Error::invalid(
                "sweep block tokens",
                tokens,
                format!("must be a multiple of the layout's {block}-token block that divides {TRACE_BLOCK_TOKENS}"),
            ));
        }
        self.cluster.validate()?;
        self.cluster.per_gpu_layout(self.base.layout)?;
        self.base.validate()
    }

    /// The grid's points, G1-major, then G2, then G3, in the orders given.
    fn grid(&self) -> Vec<[usize; 3]> {
        let mut grid = Vec::new();
        for &g1 in &self.g1_blocks {
            for &g2 in &self.g2_blocks {
                grid.extend(self.g3_blocks.iter().map(|&g3| [g1, g2, g3]));
            }
        }
        grid
    }
}

/// One serving instance's replay at one point.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InstancePoint {
    /// Requests routed to this instance.
    pub requests: usize,
    /// Prompt tokens served from the cache over the second half of this instance's requests.
    pub hit_rate: f64,
    /// Of `hit_rate`, from each tier.
    pub hit_rate_g1: f64,
    /// See `hit_rate_g1`.
    pub hit_rate_g2: f64,
    /// See `hit_rate_g1`.
    pub hit_rate_g3: f64,
    /// Second-half prompt tokens (the weight of `hit_rate` in the cluster's).
    pub second_half_prompt_tokens: u64,
    /// Of those, served from the cache.
    pub second_half_hit_tokens: u64,
    /// ... from G1, G2, G3.
    pub second_half_hit_tokens_per_tier: [u64; 3],
    /// Prompt tokens not recomputed, all of this instance's requests.
    pub prefill_tokens_saved: u64,
    /// The GPU time (all `tp` GPUs of the instance) those tokens would have taken.
    pub gpu_seconds_saved: f64,
    /// Mean simulated wait from arrival to admission, milliseconds.
    pub mean_wait_ms: f64,
    /// 99th percentile of that wait.
    pub p99_wait_ms: f64,
    /// Bytes each GPU of the instance writes to its G3 per hour of simulated time.
    pub ssd_bytes_per_hour: f64,
    /// Drive writes per day that means for the point's G3 per GPU.
    pub ssd_dwpd: f64,
    /// Wall time of this replay, seconds.
    pub replay_seconds: f64,
}

impl InstancePoint {
    /// An instance the router sent nothing.
    fn idle() -> Self {
        Self {
            requests: 0,
            hit_rate: 0.0,
            hit_rate_g1: 0.0,
            hit_rate_g2: 0.0,
            hit_rate_g3: 0.0,
            second_half_prompt_tokens: 0,
            second_half_hit_tokens: 0,
            second_half_hit_tokens_per_tier: [0; 3],
            prefill_tokens_saved: 0,
            gpu_seconds_saved: 0.0,
            mean_wait_ms: 0.0,
            p99_wait_ms: 0.0,
            ssd_bytes_per_hour: 0.0,
            ssd_dwpd: 0.0,
            replay_seconds: 0.0,
        }
    }

    fn from_report(r: &EngineReport, config: &EngineConfig, tp: usize, replay_seconds: f64) -> Self {
        let wear = r.ssd_wear.unwrap_or_default();
        let s = r.second_half_hit_tokens;
        Self {
            requests: r.requests,
            hit_rate: r.hit_rate.second_half,
            hit_rate_g1: r.hit_rate.second_half_g1,
            hit_rate_g2: r.hit_rate.second_half_g2,
            hit_rate_g3: r.hit_rate.second_half_g3,
            second_half_prompt_tokens: r.second_half_prompt_tokens,
            second_half_hit_tokens: s.total(),
            second_half_hit_tokens_per_tier: [s.g1, s.g2, s.g3],
            prefill_tokens_saved: r.prefill_tokens_saved,
            gpu_seconds_saved: r.prefill_tokens_saved as f64 / config.prefill_tokens_per_sec * tp as f64,
            mean_wait_ms: r.admission_wait.mean_ms,
            p99_wait_ms: r.admission_wait.p99_ms,
            ssd_bytes_per_hour: wear.bytes_per_hour,
            ssd_dwpd: wear.drive_writes_per_day,
            replay_seconds,
        }
    }
}

/// One point of the grid, replayed on every instance. Capacities and cost are per GPU; the
/// hit rates, tokens, GPU-seconds and waits are the cluster's (equal to the one instance's
/// on one GPU).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanPoint {
    /// G1 blocks per GPU.
    pub g1_blocks: usize,
    /// G2 blocks.
    pub g2_blocks: usize,
    /// G3 blocks.
    pub g3_blocks: usize,
    /// G1, G2 and G3 per GPU at the per-GPU model layout, GiB.
    pub g1_gib: f64,
    /// See `g1_gib`.
    pub g2_gib: f64,
    /// See `g1_gib`.
    pub g3_gib: f64,
    /// Prompt tokens served from the cache over the second half of each instance's requests,
    /// all instances together.
    pub hit_rate: f64,
    /// Of `hit_rate`, from each tier.
    pub hit_rate_g1: f64,
    /// See `hit_rate_g1`.
    pub hit_rate_g2: f64,
    /// See `hit_rate_g1`.
    pub hit_rate_g3: f64,
    /// Prompt tokens not recomputed, whole trace.
    pub prefill_tokens_saved: u64,
    /// The GPU time those tokens would have taken at the configured prefill speed.
    pub gpu_seconds_saved: f64,
    /// Mean simulated wait from arrival to admission (queue and onboarding), milliseconds:
    /// the time-to-first-token effect before the prefill itself (over every request).
    pub mean_wait_ms: f64,
    /// 99th percentile of that wait (the worst instance's).
    pub p99_wait_ms: f64,
    /// Bytes written to G3 per GPU per hour of simulated time (mean over the instances).
    pub ssd_bytes_per_hour: f64,
    /// Drive writes per day for a drive of this G3's size (mean over the instances).
    pub ssd_dwpd: f64,
    /// Cost of one GPU's G1 + G2 + G3 per hour at [`PlanConfig::prices`].
    pub cost_per_hour: f64,
    /// `cost_per_hour` times the GPUs.
    pub cluster_cost_per_hour: f64,
    /// Each instance's replay (one on one GPU).
    pub instances: Vec<InstancePoint>,
    /// Wall time of this point's replays, summed, seconds.
    pub replay_seconds: f64,
}

/// The grid, replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    /// Every point, G1-major then G2 in the order given.
    pub points: Vec<PlanPoint>,
    /// The GPUs and the routing rule.
    pub cluster: Cluster,
    /// Requests routed to each instance.
    pub instance_requests: Vec<usize>,
    /// Bytes of one block on one GPU (the layout's page divided by the tensor-parallel degree).
    pub per_gpu_page_bytes: usize,
    /// The prices used.
    pub prices: Prices,
    /// The share of the best hit rate [`PlanReport::cheapest`] must reach.
    pub target: f64,
    /// Index of the cheapest point reaching `target x` the best hit rate.
    pub cheapest: Option<usize>,
    /// Replays run at once.
    pub threads: usize,
    /// Tokens per block of the layout (the capacities' blocks).
    pub block_tokens: u32,
    /// Tokens per block the sweep's replays used (`block_tokens`, or coarser).
    pub sweep_block_tokens: u32,
    /// After a coarser sweep: the best point and the cheapest point at target, replayed again
    /// at the layout's block size (empty when the sweep used the layout's blocks or
    /// confirmation was off).
    pub confirmed: Vec<ConfirmedPoint>,
    /// Wall time of the whole sweep, seconds.
    pub elapsed_seconds: f64,
}

/// A point of a coarser sweep replayed again at the layout's block size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConfirmedPoint {
    /// Its index in [`PlanReport::points`].
    pub index: usize,
    /// The point's numbers at the layout's block size.
    pub point: PlanPoint,
}

impl PlanReport {
    /// The best hit rate of any point (0 if none).
    pub fn best_hit_rate(&self) -> f64 {
        self.points.iter().map(|p| p.hit_rate).fold(0.0, f64::max)
    }

    /// The cheapest point reaching `target x` the best hit rate (ties: the higher hit rate).
    pub fn cheapest(&self) -> Option<&PlanPoint> {
        self.cheapest.and_then(|i| self.points.get(i))
    }

    /// The index of the point with the best hit rate (the first of equals).
    pub fn best(&self) -> Option<usize> {
        best_index(&self.points)
    }

    /// After a confirmed coarse sweep: whether, at the layout's block size, the cheapest point
    /// still reaches `target x` the best point's hit rate. None without confirmations.
    pub fn confirmation_holds(&self) -> Option<bool> {
        let fine = |i: Option<usize>| self.confirmed.iter().find(|c| Some(c.index) == i).map(|c| c.point.hit_rate);
        Some(fine(self.cheapest)? >= self.target * fine(self.best())?)
    }
}

fn best_index(points: &[PlanPoint]) -> Option<usize> {
    points
        .iter()
        .enumerate()
        .fold(None, |best: Option<(usize, f64)>, (i, p)| match best {
            Some((_, rate)) if rate >= p.hit_rate => best,
            _ => Some((i, p.hit_rate)),
        })
        .map(|(i, _)| i)
}

/// The index of the cheapest of `points` reaching `target x` their best hit rate.
pub fn cheapest_reaching(points: &[PlanPoint], target: f64) -> Option<usize> {
    let best = points.iter().map(|p| p.hit_rate).fold(0.0, f64::max);
    points
        .iter()
        .enumerate()
        .filter(|(_, p)| p.hit_rate >= target * best)
        .min_by(|(_, a), (_, b)| a.cost_per_hour.total_cmp(&b.cost_per_hour).then(b.hit_rate.total_cmp(&a.hit_rate)))
        .map(|(i, _)| i)
}

/// Replays `trace` at every point of `config`'s grid, split over the cluster's instances,
/// `config.threads` replays at a time, with blocks of [`PlanConfig::sweep_block_tokens`]; after
/// a coarser sweep, replays the best and the cheapest point at target again at the layout's
/// block size ([`PlanReport::confirmed`]). `progress` gets the number of replays done after
/// each. An empty trace is refused ([`Error::InvalidConfig`]); an instance the router sends
/// nothing (more instances than requests) reports zeros.
pub fn sweep(trace: &Trace, config: &PlanConfig, progress: impl Fn(usize) + Sync) -> Result<PlanReport> {
    config.validate()?;
    trace.require_requests()?;
    let started = Instant::now();
    let cluster = config.cluster;
    let parts = route::split(trace, cluster.instances(), cluster.route);
    let layout = cluster.per_gpu_layout(config.base.layout)?;
    let fine = config.base.clone().with_layout(layout).with_reference(false);
    let factor = config.coarsening();
    let coarse = fine.clone().with_layout(with_block_size(layout, config.sweep_block_tokens)?);
    let grid = config.grid();
    let runner = Runner { parts: &parts, tp: cluster.tp, threads: config.threads, done: AtomicUsize::new(0) };
    let coarse_grid: Vec<[usize; 3]> = grid.iter().map(|&g| coarsen(g, factor)).collect();
    let page = layout.page_bytes() as f64;
    let per_point = runner.run(&coarse, &coarse_grid, &progress)?;
    let points: Vec<PlanPoint> =
        grid.iter().zip(per_point).map(|(&g, instances)| point(g, instances, page, config)).collect();
    let cheapest = cheapest_reaching(&points, config.target);
    let mut confirmed = Vec::new();
    if factor > 1 && config.confirm {
        let mut picks: Vec<usize> = best_index(&points).into_iter().chain(cheapest).collect();
        picks.dedup();
        let fine_grid: Vec<[usize; 3]> = picks.iter().map(|&i| grid[i]).collect();
        let replayed = runner.run(&fine, &fine_grid, &progress)?;
        for ((&index, &g), instances) in picks.iter().zip(&fine_grid).zip(replayed) {
            confirmed.push(ConfirmedPoint { index, point: point(g, instances, page, config) });
        }
    }
    Ok(PlanReport {
        points,
        cluster,
        instance_requests: parts.iter().map(Trace::len).collect(),
        per_gpu_page_bytes: layout.page_bytes(),
        prices: config.prices,
        target: config.target,
        cheapest,
        threads: config.threads,
        block_tokens: layout.block_size(),
        sweep_block_tokens: config.sweep_block_tokens,
        confirmed,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

/// `layout` with `tokens`-token blocks.
fn with_block_size(layout: KvLayout, tokens: u32) -> Result<KvLayout> {
    if tokens == layout.block_size() {
        return Ok(layout);
    }
    Ok(KvLayout::new(layout.layers(), layout.kv_heads(), layout.head_dim(), layout.dtype(), tokens)?)
}

/// Capacities in layout blocks as blocks `factor` times larger holding about the same bytes
/// (rounded to the nearest; G1 and G2 keep at least one block, a G3 of 0 stays off).
fn coarsen([g1, g2, g3]: [usize; 3], factor: usize) -> [usize; 3] {
    let scale = |b: usize| (b + factor / 2) / factor;
    [scale(g1).max(1), scale(g2).max(1), if g3 == 0 { 0 } else { scale(g3).max(1) }]
}

/// Runs replays of every instance's share at points of a grid on a pool of threads.
struct Runner<'t> {
    parts: &'t [Trace],
    tp: usize,
    threads: usize,
    /// Replays done so far, over every `run`.
    done: AtomicUsize,
}

impl Runner<'_> {
    /// Each point of `grid` (capacities in `base`'s blocks) replayed on every instance that
    /// received requests; idle instances report zeros.
    fn run(
        &self,
        base: &EngineConfig,
        grid: &[[usize; 3]],
        progress: &(impl Fn(usize) + Sync),
    ) -> Result<Vec<Vec<InstancePoint>>> {
        let parts = self.parts;
        let jobs: Vec<(usize, usize)> = (0..grid.len())
            .flat_map(|p| parts.iter().enumerate().filter(|(_, t)| !t.is_empty()).map(move |(k, _)| (p, k)))
            .collect();
        let results: Mutex<Vec<Option<Result<InstancePoint>>>> = Mutex::new((0..jobs.len()).map(|_| None).collect());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..self.threads.clamp(1, jobs.len().max(1)) {
                s.spawn(|| {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(&(p, k)) = jobs.get(i) else { break };
                        let [g1, g2, g3] = grid[p];
                        let engine = base.clone().with_capacities(g1, g2, g3);
                        let replay_started = Instant::now();
                        let instance = engine::run(&parts[k], &engine, |_| {}).map(|run| {
                            InstancePoint::from_report(
                                &run.report,
                                &engine,
                                self.tp,
                                replay_started.elapsed().as_secs_f64(),
                            )
                        });
                        let failed = instance.is_err();
                        if let Ok(mut r) = results.lock() {
                            r[i] = Some(instance);
                        }
                        progress(self.done.fetch_add(1, Ordering::Relaxed) + 1);
                        if failed {
                            next.store(jobs.len(), Ordering::Relaxed); // stop handing out replays
                        }
                    }
                });
            }
        });
        let results = results.into_inner().map_err(|_| Error::invalid("plan", "sweep", "a replay thread panicked"))?;
        let mut per_point: Vec<Vec<InstancePoint>> =
            grid.iter().map(|_| parts.iter().map(|_| InstancePoint::idle()).collect()).collect();
        for (&(p, k), r) in jobs.iter().zip(results) {
            match r {
                Some(Ok(instance)) => per_point[p][k] = instance,
                Some(Err(e)) => return Err(e),
                None => return Err(Error::invalid("plan", "sweep", "a replay was not run")),
            }
        }
        Ok(per_point)
    }
}

/// The mean of `values` weighted by `weights` (the value itself for one instance, so one GPU
/// reports exactly its replay's numbers; 0 with no weight).
fn weighted_mean(values: impl Iterator<Item = (f64, f64)>) -> f64 {
    let pairs: Vec<(f64, f64)> = values.collect();
    if let [(value, _)] = pairs[..] {
        return value;
    }
    let total: f64 = pairs.iter().map(|&(_, w)| w).sum();
    if total > 0.0 { pairs.iter().map(|&(v, w)| v * w).sum::<f64>() / total } else { 0.0 }
}

/// One grid point from its instances' replays, with capacities and cost per GPU.
fn point([g1, g2, g3]: [usize; 3], instances: Vec<InstancePoint>, page: f64, config: &PlanConfig) -> PlanPoint {
    let gib = |blocks: usize| blocks as f64 * page / GIB;
    let gb = |blocks: usize| blocks as f64 * page / GB;
    let p = config.prices;
    let rate = |n: u64, d: u64| if d == 0 { 0.0 } else { n as f64 / d as f64 };
    let second: u64 = instances.iter().map(|i| i.second_half_prompt_tokens).sum();
    let tier = |t: usize| instances.iter().map(|i| i.second_half_hit_tokens_per_tier[t]).sum::<u64>();
    let hits: u64 = instances.iter().map(|i| i.second_half_hit_tokens).sum();
    let cost_per_hour = gb(g1) * p.hbm_per_gb_hour + gb(g2) * p.dram_per_gb_hour + gb(g3) * p.ssd_per_gb_hour;
    PlanPoint {
        g1_blocks: g1,
        g2_blocks: g2,
        g3_blocks: g3,
        g1_gib: gib(g1),
        g2_gib: gib(g2),
        g3_gib: gib(g3),
        hit_rate: rate(hits, second),
        hit_rate_g1: rate(tier(0), second),
        hit_rate_g2: rate(tier(1), second),
        hit_rate_g3: rate(tier(2), second),
        prefill_tokens_saved: instances.iter().map(|i| i.prefill_tokens_saved).sum(),
        gpu_seconds_saved: instances.iter().map(|i| i.gpu_seconds_saved).sum(),
        mean_wait_ms: weighted_mean(instances.iter().map(|i| (i.mean_wait_ms, i.requests as f64))),
        p99_wait_ms: instances.iter().map(|i| i.p99_wait_ms).fold(0.0, f64::max),
        ssd_bytes_per_hour: weighted_mean(instances.iter().map(|i| (i.ssd_bytes_per_hour, 1.0))),
        ssd_dwpd: weighted_mean(instances.iter().map(|i| (i.ssd_dwpd, 1.0))),
        cost_per_hour,
        cluster_cost_per_hour: cost_per_hour * config.cluster.gpus as f64,
        replay_seconds: instances.iter().map(|i| i.replay_seconds).sum(),
        instances,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(hit_rate: f64, cost_per_hour: f64) -> PlanPoint {
        PlanPoint {
            g1_blocks: 1,
            g2_blocks: 1,
            g3_blocks: 0,
            g1_gib: 0.0,
            g2_gib: 0.0,
            g3_gib: 0.0,
            hit_rate,
            hit_rate_g1: hit_rate,
            hit_rate_g2: 0.0,
            hit_rate_g3: 0.0,
            prefill_tokens_saved: 0,
            gpu_seconds_saved: 0.0,
            mean_wait_ms: 0.0,
            p99_wait_ms: 0.0,
            ssd_bytes_per_hour: 0.0,
            ssd_dwpd: 0.0,
            cost_per_hour,
            cluster_cost_per_hour: cost_per_hour,
            instances: Vec::new(),
            replay_seconds: 0.0,
        }
    }

    #[test]
    fn cheapest_reaching_picks_the_least_cost_above_the_target() {
        let points = [point(0.10, 1.0), point(0.19, 3.0), point(0.20, 9.0), point(0.195, 3.0)];
        // best 0.20: 95 % is 0.19, reached by points 1, 2 and 3; 1 and 3 cost the same, 3 hits more
        assert_eq!(cheapest_reaching(&points, 0.95), Some(3));
        assert_eq!(cheapest_reaching(&points, 1.0), Some(2));
        assert_eq!(cheapest_reaching(&points, 0.5), Some(0));
        assert_eq!(cheapest_reaching(&[], 0.95), None);
    }

    #[test]
    fn bad_grids_and_prices_are_errors() {
        let base = EngineConfig::default();
        assert!(PlanConfig::new(base.clone(), vec![], vec![0]).validate().is_err());
        assert!(PlanConfig::new(base.clone(), vec![0], vec![0]).validate().is_err());
        let mut c = PlanConfig::new(base.clone(), vec![8], vec![0]);
        c.target = 1.5;
        assert!(c.validate().is_err());
        let mut c = PlanConfig::new(base.clone(), vec![8], vec![0]);
        c.prices.ssd_per_gb_hour = f64::NAN;
        assert!(c.validate().is_err());
        let c = PlanConfig::new(base.clone(), vec![8], vec![0]).with_cluster(Cluster::new(4, 3, Route::RoundRobin));
        assert!(c.validate().is_err(), "3 does not divide 4 GPUs");
        let c = PlanConfig::new(base, vec![8], vec![0]).with_cluster(Cluster::new(0, 1, Route::RoundRobin));
        assert!(c.validate().is_err(), "no GPU");
    }
}
