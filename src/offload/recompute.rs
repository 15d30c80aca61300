//! Onboard or recompute: whether loading a cached prefix from G2/G3 finishes before the GPU
//! would recompute it.
//!
//! A prefix found below G1 is worth loading only up to the point where the transfer still
//! beats the prefill it saves. [`OnboardCost::plan`] takes where each block of a found
//! prefix lives and returns how many leading blocks to use: the cache serves those (loading
//! the ones not in G1), and the runtime recomputes everything after them. The cost model is
//! linear in tokens and bytes, plus one fixed latency per tier read from:
//!
//! ```text
//! time(k) = load(first k blocks not in G1) + recompute(blocks k..n)
//! load    = g2_pages * page / g2_bw + g3_pages * page / g3_bw (+ each tier's latency if used)
//! recompute = tokens / prefill_tokens_per_sec
//! ```
//!
//! and `k` minimises `time(k)` (ties go to the longer prefix: same time, fewer GPU cycles).
//! The prefill speed is the model's on the GPU at the batch sizes the runtime serves; it
//! underestimates long prefixes, whose attention grows with the context, so the rule leans
//! towards recomputing the tail of a very long prefix a little more than a real GPU needs.

use crate::error::{Error, Result, Tier};

/// Speeds that decide whether a cached prefix is loaded or recomputed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OnboardCost {
    /// Prefill speed of the model, tokens per second (> 0).
    pub prefill_tokens_per_sec: f64,
    /// G2 -> G1 bandwidth, bytes per second (0: never load from G2).
    pub g2_bytes_per_sec: f64,
    /// G3 -> G1 bandwidth, bytes per second (0: never load from G3).
    pub g3_bytes_per_sec: f64,
    /// Fixed cost of a load that reads G2, seconds (the first transfer's setup).
    pub g2_latency_s: f64,
    /// Fixed cost of a load that reads G3, seconds (one SSD round trip).
    pub g3_latency_s: f64,
}

/// What [`OnboardCost::plan`] decided for one found prefix.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct OnboardPlan {
    /// Leading blocks of the found prefix to use (G1's as they are, the others loaded).
    pub use_blocks: usize,
    /// Of those, blocks loaded from G2 and from G3.
    pub load_g2: usize,
    /// See `load_g2`.
    pub load_g3: usize,
    /// Blocks found in a tier but recomputed, because loading them would take longer.
    pub recompute_blocks: usize,
    /// Time to the end of the prefix with this plan, seconds (load, then recompute the rest).
    pub seconds: f64,
    /// The same if every found block were used.
    pub seconds_load_all: f64,
    /// The same if only the leading G1 blocks were used and everything after recomputed.
    pub seconds_load_none: f64,
}

impl OnboardCost {
    /// Checks that every speed is finite and not negative, and the prefill speed positive.
    ///
    /// ```
    /// use kvtier::offload::OnboardCost;
    /// let c = OnboardCost { prefill_tokens_per_sec: 0.0, ..OnboardCost::default() };
    /// assert!(c.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<()> {
        let fields = [
            ("prefill_tokens_per_sec", self.prefill_tokens_per_sec),
            ("g2_bytes_per_sec", self.g2_bytes_per_sec),
            ("g3_bytes_per_sec", self.g3_bytes_per_sec),
            ("g2_latency_s", self.g2_latency_s),
            ("g3_latency_s", self.g3_latency_s),
        ];
        for (field, v) in fields {
            if !v.is_finite() || v < 0.0 || (field == "prefill_tokens_per_sec" && v == 0.0) {
                let expected = if field == "prefill_tokens_per_sec" { "finite, > 0" } else { "finite, >= 0" };
                return Err(Error::OutOfRange { field, value: format!("{v}"), expected });
            }
        }
        Ok(())
    }

    /// Decides how much of a found prefix to use. `tiers[i]` is where block `i` of the prefix
    /// lives (the fastest tier holding it), `block_tokens` the tokens per block and
    /// `page_bytes` the bytes a block moves. An invalid cost ([`OnboardCost::validate`]) uses
    /// only what G1 holds.
    ///
    /// ```
    /// use kvtier::Tier;
    /// use kvtier::offload::OnboardCost;
    /// // 2 MiB pages of 16 tokens, a GPU prefilling 10,000 tokens/s (1.6 ms per block):
    /// // DRAM at 25 GB/s (0.08 ms per page) pays off, an SSD at 1 GB/s (2.1 ms) does not.
    /// let c = OnboardCost { prefill_tokens_per_sec: 1e4, g2_bytes_per_sec: 25e9, g3_bytes_per_sec: 1e9, ..Default::default() };
    /// let p = c.plan(&[Tier::G1, Tier::G2, Tier::G2, Tier::G3, Tier::G3], 16, 2 << 20);
    /// assert_eq!((p.use_blocks, p.load_g2, p.load_g3, p.recompute_blocks), (3, 2, 0, 2));
    /// ```
    pub fn plan(&self, tiers: &[Tier], block_tokens: usize, page_bytes: usize) -> OnboardPlan {
        let per_block = block_tokens as f64 / self.prefill_tokens_per_sec;
        let load = |bw: f64| if bw > 0.0 { page_bytes as f64 / bw } else { f64::INFINITY };
        let (g2_page, g3_page) = (load(self.g2_bytes_per_sec), load(self.g3_bytes_per_sec));
        let n = tiers.len();
        // Leading G1 blocks cost nothing; after them, the first block that is not in G1 marks
        // where "load none" starts recomputing.
        let g1_lead = tiers.iter().take_while(|&&t| t == Tier::G1).count();
        let valid = self.validate().is_ok();
        let (mut best_k, mut best) = (g1_lead, (n - g1_lead) as f64 * per_block);
        let seconds_load_none = if valid { best } else { f64::INFINITY };
        let (mut loaded, mut used) = (0.0f64, [false; 2]);
        let mut time_all = best;
        for (i, &t) in tiers.iter().enumerate() {
            match t {
                Tier::G1 => {}
                Tier::G2 => {
                    loaded += g2_page + if used[0] { 0.0 } else { self.g2_latency_s };
                    used[0] = true;
                }
                Tier::G3 => {
                    loaded += g3_page + if used[1] { 0.0 } else { self.g3_latency_s };
                    used[1] = true;
                }
            }
            let k = i + 1;
            let time = loaded + (n - k) as f64 * per_block;
            time_all = time;
            if valid && k > g1_lead && time <= best {
                (best_k, best) = (k, time);
            }
        }
        if n == g1_lead {
            time_all = 0.0;
        }
        let (load_g2, load_g3) = tiers[..best_k].iter().fold((0, 0), |(a, b), t| match t {
            Tier::G1 => (a, b),
            Tier::G2 => (a + 1, b),
            Tier::G3 => (a, b + 1),
        });
        OnboardPlan {
            use_blocks: best_k,
            load_g2,
            load_g3,
            recompute_blocks: n - best_k,
            seconds: if valid { best } else { f64::INFINITY },
            seconds_load_all: time_all,
            seconds_load_none,
        }
    }
}

impl Default for OnboardCost {
    /// 100,000 prefill tokens/s, G2 25 GB/s, G3 6 GB/s, no fixed latencies: the engine
    /// replay's simulated speeds.
    fn default() -> Self {
        Self {
            prefill_tokens_per_sec: 100_000.0,
            g2_bytes_per_sec: 25e9,
            g3_bytes_per_sec: 6e9,
            g2_latency_s: 0.0,
            g3_latency_s: 0.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Tier::{G1, G2, G3};

    const PAGE: usize = 2 << 20;

    fn cost(prefill: f64, g2: f64, g3: f64) -> OnboardCost {
        OnboardCost {
            prefill_tokens_per_sec: prefill,
            g2_bytes_per_sec: g2,
            g3_bytes_per_sec: g3,
            ..Default::default()
        }
    }

    #[test]
    fn empty_and_g1_only_prefixes_load_nothing() {
        let c = OnboardCost::default();
        assert_eq!(c.plan(&[], 16, PAGE), OnboardPlan::default());
        let p = c.plan(&[G1, G1, G1], 16, PAGE);
        assert_eq!((p.use_blocks, p.load_g2, p.load_g3, p.recompute_blocks), (3, 0, 0, 0));
        assert_eq!((p.seconds, p.seconds_load_all, p.seconds_load_none), (0.0, 0.0, 0.0));
    }

    #[test]
    fn zero_bandwidth_never_loads_from_that_tier() {
        let c = cost(1e4, 0.0, 1e12);
        let p = c.plan(&[G1, G2, G3], 16, PAGE);
        assert_eq!((p.use_blocks, p.recompute_blocks), (1, 2), "a G2 block in front blocks the G3 one behind it");
        assert!(p.seconds_load_all.is_infinite());
        let p = c.plan(&[G3, G3], 16, PAGE);
        assert_eq!((p.use_blocks, p.load_g3), (2, 2));
        let none = cost(1e4, 0.0, 0.0).plan(&[G2, G3], 16, PAGE);
        assert_eq!((none.use_blocks, none.recompute_blocks), (0, 2));
        assert!((none.seconds - 2.0 * 16.0 / 1e4).abs() < 1e-12);
    }

    #[test]
    fn fixed_latency_makes_a_tiny_prefix_not_worth_loading_and_a_huge_one_worth_it() {
        // G3 at 20 GB/s (0.1 ms a page) vs 1.6 ms of prefill per block, but 50 ms to start.
        let c = OnboardCost { g3_latency_s: 0.05, ..cost(1e4, 25e9, 20e9) };
        let tiny = c.plan(&[G3; 4], 16, PAGE);
        assert_eq!((tiny.use_blocks, tiny.recompute_blocks), (0, 4), "{tiny:?}");
        let huge = c.plan(&[G3; 10_000], 16, PAGE);
        assert_eq!((huge.use_blocks, huge.load_g3), (10_000, 10_000), "{huge:?}");
        assert!(huge.seconds < huge.seconds_load_none && huge.seconds == huge.seconds_load_all);
    }

    #[test]
    fn a_slow_tail_is_recomputed_and_the_plan_is_never_worse_than_either_extreme() {
        let c = cost(1e5, 25e9, 1e9); // G2 0.08 ms/page, G3 2.1 ms/page, prefill 0.16 ms/block
        let tiers = [G1, G2, G2, G3, G3, G1, G2];
        let p = c.plan(&tiers, 16, PAGE);
        assert_eq!((p.use_blocks, p.load_g2, p.load_g3), (3, 2, 0), "{p:?}");
        assert!(p.seconds <= p.seconds_load_all && p.seconds <= p.seconds_load_none);
        // exhaustive check on every split of a few mixed prefixes
        for tiers in [&[G2, G3, G2, G3][..], &[G3, G2, G2, G2, G2, G2][..], &[G1, G3, G1, G3][..]] {
            let p = c.plan(tiers, 16, PAGE);
            for k in 0..=tiers.len() {
                let mut t = (tiers.len() - k) as f64 * 16.0 / 1e5;
                for b in &tiers[..k] {
                    t += match b {
                        G1 => 0.0,
                        G2 => PAGE as f64 / 25e9,
                        G3 => PAGE as f64 / 1e9,
                    };
                }
                assert!(p.seconds <= t + 1e-12, "{tiers:?}: k {k} takes {t}, the plan {p:?}");
            }
        }
    }

    #[test]
    fn bad_speeds_are_typed_errors_and_plan_uses_g1_only() {
        for c in [cost(0.0, 1.0, 1.0), cost(f64::NAN, 1.0, 1.0), cost(1.0, -1.0, 1.0), cost(1.0, 1.0, f64::INFINITY)] {
            assert!(matches!(c.validate(), Err(Error::OutOfRange { .. })), "{c:?}");
            let p = c.plan(&[G1, G2, G3], 16, PAGE);
            assert_eq!((p.use_blocks, p.recompute_blocks), (1, 2));
        }
    }
}
