//! Capacity planning: how much DRAM (G2) and SSD (G3) behind a GPU, from a trace.
//!
//! [`sweep`] replays one trace through the real engine ([`crate::replay::engine::run`], the
//! one-large-G1 reference off) once per point of a G2 x G3 grid, on as many threads as asked,
//! and reports per point the second-half hit rate per tier, the prefill tokens and GPU-seconds
//! saved, the queueing effect, the bytes written to the SSD per hour with the drive writes per
//! day they mean for that G3, and a cost per hour from prices per GB-hour of each memory.
//! [`PlanReport::cheapest`] is the least costly point reaching a share of the best hit rate.
//!
//! The prices are the operator's: the defaults ([`Prices::default`]) are purchase prices
//! spread over three years of service, only to make the column mean something out of the box.
//!
//! Not built yet (issue 12): splitting a cluster trace over N GPUs with a routing rule, a
//! search instead of a grid, an SVG chart, and live curves from sampled production lookups.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use serde::Serialize;

use crate::replay::engine::{self, EngineConfig};
use crate::trace::Trace;
use crate::{Error, Result};

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
    /// The engine configuration every point starts from (G1, layout, speeds, policies);
    /// its G2/G3 capacities are replaced by each point's.
    pub base: EngineConfig,
    /// G2 sizes to try, in blocks.
    pub g2_blocks: Vec<usize>,
    /// G3 sizes to try, in blocks (0: no G3).
    pub g3_blocks: Vec<usize>,
    /// Replays run at once (at least 1).
    pub threads: usize,
    /// Capacity prices.
    pub prices: Prices,
    /// [`PlanReport::cheapest`] reaches this share of the best hit rate found. Default 0.95.
    pub target: f64,
}

impl PlanConfig {
    /// A grid of `g2 x g3` points from `base`, on all available cores, default prices, 95 %.
    pub fn new(base: EngineConfig, g2_blocks: Vec<usize>, g3_blocks: Vec<usize>) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self { base, g2_blocks, g3_blocks, threads, prices: Prices::default(), target: 0.95 }
    }

    /// Checks the grid, the target and the prices.
    pub fn validate(&self) -> Result<()> {
        if self.g2_blocks.is_empty() || self.g3_blocks.is_empty() {
            return Err(Error::invalid("plan grid", "empty", "needs at least one G2 and one G3 size"));
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
        self.base.validate()
    }
}

/// One replayed point of the grid.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanPoint {
    /// G1 blocks (the same at every point).
    pub g1_blocks: usize,
    /// G2 blocks.
    pub g2_blocks: usize,
    /// G3 blocks.
    pub g3_blocks: usize,
    /// G1, G2 and G3 at the model layout, GiB.
    pub g1_gib: f64,
    /// See `g1_gib`.
    pub g2_gib: f64,
    /// See `g1_gib`.
    pub g3_gib: f64,
    /// Prompt tokens served from the cache over the second half of the requests.
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
    /// the time-to-first-token effect before the prefill itself.
    pub mean_wait_ms: f64,
    /// 99th percentile of that wait.
    pub p99_wait_ms: f64,
    /// Bytes written to G3 per hour of simulated time, at the model layout.
    pub ssd_bytes_per_hour: f64,
    /// Drive writes per day for a drive of this G3's size.
    pub ssd_dwpd: f64,
    /// Cost of the point's G1 + G2 + G3 per hour at [`PlanConfig::prices`].
    pub cost_per_hour: f64,
    /// Wall time of this replay, seconds.
    pub replay_seconds: f64,
}

/// The grid, replayed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanReport {
    /// Every point, G2-major in the order given.
    pub points: Vec<PlanPoint>,
    /// The prices used.
    pub prices: Prices,
    /// The share of the best hit rate [`PlanReport::cheapest`] must reach.
    pub target: f64,
    /// Index of the cheapest point reaching `target x` the best hit rate.
    pub cheapest: Option<usize>,
    /// Replays run at once.
    pub threads: usize,
    /// Wall time of the whole sweep, seconds.
    pub elapsed_seconds: f64,
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

/// Replays `trace` at every point of `config`'s grid, `config.threads` at a time; `progress`
/// gets the number of points done after each.
pub fn sweep(trace: &Trace, config: &PlanConfig, progress: impl Fn(usize) + Sync) -> Result<PlanReport> {
    config.validate()?;
    let started = Instant::now();
    let grid: Vec<(usize, usize)> =
        config.g2_blocks.iter().flat_map(|&g2| config.g3_blocks.iter().map(move |&g3| (g2, g3))).collect();
    let results: Mutex<Vec<Option<Result<PlanPoint>>>> = Mutex::new((0..grid.len()).map(|_| None).collect());
    let (next, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
    std::thread::scope(|s| {
        for _ in 0..config.threads.clamp(1, grid.len().max(1)) {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(g2, g3)) = grid.get(i) else { break };
                    let point = run_point(trace, config, g2, g3);
                    let failed = point.is_err();
                    if let Ok(mut r) = results.lock() {
                        r[i] = Some(point);
                    }
                    progress(done.fetch_add(1, Ordering::Relaxed) + 1);
                    if failed {
                        next.store(grid.len(), Ordering::Relaxed); // stop handing out points
                    }
                }
            });
        }
    });
    let results = results.into_inner().map_err(|_| Error::invalid("plan", "sweep", "a replay thread panicked"))?;
    let mut points = Vec::with_capacity(grid.len());
    for r in results {
        match r {
            Some(Ok(p)) => points.push(p),
            Some(Err(e)) => return Err(e),
            None => {} // not run: another point failed first
        }
    }
    let cheapest = cheapest_reaching(&points, config.target);
    Ok(PlanReport {
        points,
        prices: config.prices,
        target: config.target,
        cheapest,
        threads: config.threads,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    })
}

fn run_point(trace: &Trace, config: &PlanConfig, g2: usize, g3: usize) -> Result<PlanPoint> {
    let started = Instant::now();
    let base = &config.base;
    let engine = base.clone().with_capacities(base.g1_blocks, g2, g3).with_reference(false);
    let r = engine::run(trace, &engine, |_| {})?.report;
    let page = base.layout.page_bytes() as f64;
    let gib = |blocks: usize| blocks as f64 * page / GIB;
    let gb = |blocks: usize| blocks as f64 * page / GB;
    let p = config.prices;
    let wear = r.ssd_wear.unwrap_or_default();
    Ok(PlanPoint {
        g1_blocks: base.g1_blocks,
        g2_blocks: g2,
        g3_blocks: g3,
        g1_gib: gib(base.g1_blocks),
        g2_gib: gib(g2),
        g3_gib: gib(g3),
        hit_rate: r.hit_rate.second_half,
        hit_rate_g1: r.hit_rate.second_half_g1,
        hit_rate_g2: r.hit_rate.second_half_g2,
        hit_rate_g3: r.hit_rate.second_half_g3,
        prefill_tokens_saved: r.prefill_tokens_saved,
        gpu_seconds_saved: r.prefill_tokens_saved as f64 / base.prefill_tokens_per_sec,
        mean_wait_ms: r.admission_wait.mean_ms,
        p99_wait_ms: r.admission_wait.p99_ms,
        ssd_bytes_per_hour: wear.bytes_per_hour,
        ssd_dwpd: wear.drive_writes_per_day,
        cost_per_hour: gb(base.g1_blocks) * p.hbm_per_gb_hour
            + gb(g2) * p.dram_per_gb_hour
            + gb(g3) * p.ssd_per_gb_hour,
        replay_seconds: started.elapsed().as_secs_f64(),
    })
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
        let mut c = PlanConfig::new(base, vec![8], vec![0]);
        c.prices.ssd_per_gb_hour = f64::NAN;
        assert!(c.validate().is_err());
    }
}
