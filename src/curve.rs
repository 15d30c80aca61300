//! Hit rate against capacity, estimated live from the lookups a cache serves, so an operator
//! can size DRAM and SSD from real traffic without a trace.
//!
//! [`CapacityCurve`] keeps LRU stack distances of a spatially sampled subset of block hashes
//! (SHARDS: Waldspurger et al., "Efficient MRC Construction with SHARDS", FAST '15; the
//! miniature-simulation idea of "Cache Modeling and Optimization using Miniature Simulations",
//! USENIX ATC '17). A block is sampled when its hash falls under a threshold; the threshold
//! starts at "every block" and is lowered whenever more than `max_keys` distinct blocks are
//! tracked (the block with the highest hash leaves, fixed-size SHARDS), so memory is bounded
//! (about 140 bytes per tracked block with the sketch below) whatever the traffic. The stack distance of a sampled
//! access (distinct sampled blocks used since its previous use) is a Fenwick-tree count over
//! access times, O(log max_keys); scaled by the inverse of the sampling rate it estimates the
//! distance among all blocks, so the share of accesses at a distance below `C` estimates the
//! hit rate of an LRU cache of `C` blocks. Each access weighs the inverse of the rate it was
//! sampled at, so a lowered threshold does not skew the counts.
//!
//! Heavy hitters: in prefix-cache traffic a few blocks (a shared system prompt) carry a large
//! share of all accesses, and whether their hashes fall under the threshold moved the whole
//! estimate (the bundled sample read 0.39 where exact LRU reads 0.17). So a count-min sketch
//! with aging watches every access once sampling has begun; a block whose recent accesses reach
//! 1 / rate (the number of blocks each sampled one stands for) is tracked exactly from then on,
//! with weight 1, outside the sample ([`CapacityCurve::observe`]).
//!
//! The cache core feeds it the prefix blocks of every admitted request
//! ([`crate::CacheCore::capacity_curve`]); for prefix caches whose requests reuse whole
//! prefixes, an LRU cache of blocks is what the simulator-compatible replay models.

use std::collections::{BinaryHeap, HashMap};

use crate::prefix::BlockHash;

/// Sub-buckets per power of two of the distance histogram (a bucket spans 12.5 % of its
/// distance at most).
const SUB: u64 = 8;
/// The histogram has `OCTAVES x SUB` buckets: distances below SUB exactly, then SUB per power
/// of two (up to 2^49 blocks).
const OCTAVES: u64 = 48;
/// The frequency sketch halves its counts every this many times its width in accesses.
const AGE_EVERY: u64 = 8;

/// A [`CapacityCurve`] read at chosen capacities ([`CapacityCurve::read`]), for metrics and
/// reports.
#[derive(Debug, Clone, PartialEq)]
pub struct CurveReading {
    /// `(capacity in blocks, estimated LRU hit rate)`, in the order asked.
    pub points: Vec<(u64, f64)>,
    /// Fraction of blocks sampled now.
    pub sample_rate: f64,
    /// Accesses counted since the last [`CapacityCurve::reset_counts`] (sampled or hot).
    pub sampled_accesses: u64,
    /// Distinct sampled blocks tracked now.
    pub tracked_blocks: usize,
    /// Heavy hitters tracked exactly now.
    pub hot_blocks: usize,
}

impl CurveReading {
    /// The estimate at `blocks` if it was read there.
    pub fn at(&self, blocks: u64) -> Option<f64> {
        self.points.iter().find(|(c, _)| *c == blocks).map(|&(_, h)| h)
    }
}

/// A live hit-rate-vs-capacity curve (see the module docs).
#[derive(Debug, Clone)]
pub struct CapacityCurve {
    max_keys: usize,
    /// A block is sampled when its hash's value is at most this.
    threshold: u64,
    /// Tracked blocks: hash -> time of last access (1-based).
    last: HashMap<u128, u32>,
    /// Tracked blocks by value, highest first (the next to leave when over `max_keys`); may
    /// hold blocks that left for `hot` (skipped when popped).
    by_value: BinaryHeap<(u64, u128)>,
    /// Fenwick tree over access times: 1 at the last access of each sampled block.
    tree: Vec<i32>,
    /// Heavy hitters, tracked exactly whatever their hash: hash -> time of last access.
    hot: HashMap<u128, u32>,
    max_hot: usize,
    /// Fenwick tree over the same access times: 1 at the last access of each hot block.
    hot_tree: Vec<i32>,
    /// Count-min sketch of recent accesses (4 rows), halved every `AGE_EVERY x` its width
    /// accesses: how a block is found to be hot.
    sketch: Vec<u16>,
    sketch_mask: usize,
    sketch_ops: u64,
    now: u32,
    /// Weighted accesses per distance bucket, first accesses, and all accesses.
    hist: Vec<f64>,
    cold: f64,
    total: f64,
    sampled_accesses: u64,
}

impl CapacityCurve {
    /// A curve tracking at most `max_keys` sampled blocks (at least 64) and up to `max_keys / 8`
    /// heavy hitters (at least 16). The estimate's error shrinks as this grows, and capacities
    /// below about 1 / rate blocks are below its resolution. Unsampled (more keys than
    /// distinct blocks) it is exact LRU.
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(64);
        let max_hot = (max_keys / 8).max(16);
        let width = (4 * max_keys).next_power_of_two();
        Self {
            max_keys,
            threshold: u64::MAX,
            last: HashMap::new(),
            by_value: BinaryHeap::new(),
            tree: vec![0; 4 * (max_keys + max_hot) + 1],
            hot: HashMap::new(),
            max_hot,
            hot_tree: vec![0; 4 * (max_keys + max_hot) + 1],
            sketch: vec![0; 4 * width],
            sketch_mask: width - 1,
            sketch_ops: 0,
            now: 0,
            hist: vec![0.0; (OCTAVES * SUB) as usize],
            cold: 0.0,
            total: 0.0,
            sampled_accesses: 0,
        }
    }

    fn value(h: BlockHash) -> u64 {
        (h.0 >> 64) as u64 ^ (h.0 as u64).rotate_left(29)
    }

    /// The fraction of blocks currently sampled.
    pub fn sample_rate(&self) -> f64 {
        (self.threshold as f64 + 1.0) / 2f64.powi(64)
    }

    /// Accesses recorded (sampled ones only), and distinct blocks tracked now.
    pub fn sampled(&self) -> (u64, usize) {
        (self.sampled_accesses, self.last.len())
    }

    /// Blocks tracked exactly as heavy hitters now (at most `max_keys / 8`, at least 16).
    pub fn hot_blocks(&self) -> usize {
        self.hot.len()
    }

    /// Records one access to each of `hashes`, in order.
    ///
    /// Heavy hitters: once sampling has begun, a block whose recent accesses (a count-min
    /// sketch with aging) reach the number of blocks each sampled block stands for (1 / rate)
    /// is tracked exactly, with weight 1, and leaves the sample. A block of a shared system
    /// prompt, used by most requests, would otherwise move the whole estimate by its share
    /// depending on whether its hash happens to be sampled. Distances count both sets: the
    /// sampled blocks in between scaled by 1 / rate, the hot ones as they are.
    pub fn observe(&mut self, hashes: &[BlockHash]) {
        for &h in hashes {
            if self.hot.contains_key(&h.0) {
                self.access(h.0, true);
                continue;
            }
            let v = Self::value(h);
            if self.threshold < u64::MAX {
                let seen = self.count(h.0);
                // once, as the count reaches the mark (not on every later access)
                if f64::from(seen) == (1.0 / self.sample_rate()).ceil().clamp(2.0, f64::from(u16::MAX)) {
                    self.promote(h.0);
                    continue;
                }
            }
            if v <= self.threshold {
                self.access(h.0, false);
            }
        }
    }

    /// Counts an access in the sketch; the block's estimated recent accesses.
    fn count(&mut self, key: u128) -> u16 {
        self.sketch_ops += 1;
        let width = self.sketch_mask + 1;
        if self.sketch_ops >= AGE_EVERY * width as u64 {
            self.sketch_ops = 0;
            self.sketch.iter_mut().for_each(|c| *c >>= 1);
        }
        let mut least = u16::MAX;
        for row in 0..4 {
            let i = row * width + ((key >> (32 * row)) as usize & self.sketch_mask);
            if let Some(c) = self.sketch.get_mut(i) {
                *c = c.saturating_add(1);
                least = least.min(*c);
            }
        }
        least
    }

    /// Makes `key` a heavy hitter at this access (which is not counted: it was represented by
    /// the sample until now). When the hot set is full, the one used longest ago goes back
    /// to being an ordinary block (to the sample, keeping its last access, if its hash is
    /// sampled).
    fn promote(&mut self, key: u128) {
        if self.hot.len() >= self.max_hot {
            let Some((&old, &t)) = self.hot.iter().min_by_key(|(_, t)| **t) else { return };
            self.hot.remove(&old);
            Self::add(&mut self.hot_tree, t, -1);
            let v = Self::value(BlockHash(old));
            if v <= self.threshold {
                self.last.insert(old, t);
                Self::add(&mut self.tree, t, 1);
                self.by_value.push((v, old));
                self.shrink();
            }
        }
        if let Some(t) = self.last.remove(&key) {
            Self::add(&mut self.tree, t, -1);
        }
        self.tick();
        self.hot.insert(key, self.now);
        Self::add(&mut self.hot_tree, self.now, 1);
    }

    /// Advances the clock, renumbering first if the trees are full.
    fn tick(&mut self) {
        if self.now as usize + 1 >= self.tree.len() {
            self.compact();
        }
        self.now += 1;
    }

    fn access(&mut self, key: u128, hot: bool) {
        let rate_weight = 1.0 / self.sample_rate();
        let weight = if hot { 1.0 } else { rate_weight };
        self.total += weight;
        self.sampled_accesses += 1;
        let previous = if hot { self.hot.get(&key) } else { self.last.get(&key) }.copied();
        match previous {
            Some(t) => {
                // blocks used after time t (the block itself, at t, is not counted)
                let sampled = Self::prefix(&self.tree, self.now) - Self::prefix(&self.tree, t);
                let heavy = Self::prefix(&self.hot_tree, self.now) - Self::prefix(&self.hot_tree, t);
                let mine = if hot { &mut self.hot_tree } else { &mut self.tree };
                Self::add(mine, t, -1);
                // the smallest LRU cache this access hits in: one block more than the distance
                let fits = sampled as f64 * rate_weight + heavy as f64 + 1.0;
                self.hist[bucket(fits)] += weight;
            }
            None => {
                self.cold += weight;
                if !hot {
                    self.by_value.push((Self::value(BlockHash(key)), key));
                }
            }
        }
        self.tick();
        if hot {
            self.hot.insert(key, self.now);
            Self::add(&mut self.hot_tree, self.now, 1);
        } else {
            self.last.insert(key, self.now);
            Self::add(&mut self.tree, self.now, 1);
            self.shrink();
        }
    }

    /// Fixed-size SHARDS: while more than `max_keys` blocks are sampled, the one with the
    /// highest hash value leaves and the threshold drops below it.
    fn shrink(&mut self) {
        while self.last.len() > self.max_keys {
            let Some((v, k)) = self.by_value.pop() else { break };
            let Some(t) = self.last.remove(&k) else { continue }; // it became hot
            Self::add(&mut self.tree, t, -1);
            // from now on only blocks below the one that left are sampled
            self.threshold = v.saturating_sub(1);
        }
    }

    /// Renumbers the tracked blocks' last accesses (sampled and hot) 1..=n in their order, so
    /// the trees stay `4 x` the tracked blocks long: O(n log n) once every 3n or more accesses.
    fn compact(&mut self) {
        let mut order: Vec<(u32, u128, bool)> = self.last.iter().map(|(&k, &t)| (t, k, false)).collect();
        order.extend(self.hot.iter().map(|(&k, &t)| (t, k, true)));
        order.sort_unstable();
        self.tree.iter_mut().for_each(|x| *x = 0);
        self.hot_tree.iter_mut().for_each(|x| *x = 0);
        self.now = 0;
        for (_, k, hot) in order {
            self.now += 1;
            let (map, tree) = if hot { (&mut self.hot, &mut self.hot_tree) } else { (&mut self.last, &mut self.tree) };
            map.insert(k, self.now);
            Self::add(tree, self.now, 1);
        }
    }

    fn add(tree: &mut [i32], t: u32, d: i32) {
        let mut i = t as usize;
        while let Some(x) = tree.get_mut(i) {
            *x += d;
            i += i & i.wrapping_neg();
        }
    }

    fn prefix(tree: &[i32], t: u32) -> i64 {
        let (mut i, mut s) = (t as usize, 0i64);
        while i > 0 {
            s += tree.get(i).map_or(0, |&x| i64::from(x));
            i &= i - 1;
        }
        s
    }

    /// Estimated hit rate of an LRU cache of `blocks` blocks over the accesses recorded (0
    /// when none were).
    pub fn hit_ratio(&self, blocks: u64) -> f64 {
        if self.total <= 0.0 {
            return 0.0;
        }
        let c = blocks as f64;
        let mut hits = 0.0;
        for (i, &w) in self.hist.iter().enumerate() {
            // the bucket holds accesses needing lo..hi blocks (integers, hi excluded)
            let (lo, hi) = bounds(i);
            if c >= hi - 1.0 {
                hits += w;
            } else if c >= lo {
                hits += w * (c - lo + 1.0) / (hi - lo);
            } else {
                break;
            }
        }
        hits / self.total
    }

    /// The estimates at each of `capacities` (blocks), with the sample's state.
    ///
    /// ```
    /// use kvtier::BlockHash;
    /// use kvtier::curve::CapacityCurve;
    /// let mut c = CapacityCurve::new(1024);
    /// let loop_of_8: Vec<BlockHash> = (0..8u128).map(|k| BlockHash(k << 70 | k)).collect();
    /// for _ in 0..4 {
    ///     c.observe(&loop_of_8);
    /// }
    /// let r = c.read(&[4, 8]);
    /// assert_eq!(r.at(4), Some(0.0)); // a loop of 8 misses every time in LRU of 4
    /// assert_eq!(r.at(8), Some(0.75)); // and hits after the first pass in LRU of 8
    /// ```
    pub fn read(&self, capacities: &[u64]) -> CurveReading {
        CurveReading {
            points: capacities.iter().map(|&c| (c, self.hit_ratio(c))).collect(),
            sample_rate: self.sample_rate(),
            sampled_accesses: self.sampled_accesses,
            tracked_blocks: self.last.len(),
            hot_blocks: self.hot.len(),
        }
    }

    /// Forgets the accesses counted so far but keeps the blocks' order, so the next counts
    /// start warm (a replay counting its second half, a rolling window of live traffic).
    pub fn reset_counts(&mut self) {
        self.hist.iter_mut().for_each(|x| *x = 0.0);
        self.cold = 0.0;
        self.total = 0.0;
        self.sampled_accesses = 0;
    }
}

/// Histogram bucket of the capacity (in blocks) an access needs to hit.
fn bucket(blocks: f64) -> usize {
    let d = blocks.max(0.0).round() as u64;
    let i = if d < SUB {
        d
    } else {
        // the octave [2^exp, 2^(exp+1)) for exp >= 3 in SUB buckets, right after 0..SUB
        let exp = 63 - u64::from(d.leading_zeros());
        (exp - 2) * SUB + ((d >> (exp - 3)) & (SUB - 1))
    };
    (i as usize).min((OCTAVES * SUB) as usize - 1)
}

/// The capacities (in blocks) bucket `i` spans: its accesses need `lo..hi` blocks.
fn bounds(i: usize) -> (f64, f64) {
    let i = i as u64;
    let lower = |i: u64| -> f64 {
        if i < SUB {
            return i as f64;
        }
        let (exp, sub) = (i / SUB + 2, i % SUB);
        ((SUB + sub) << (exp - 3)) as f64
    };
    (lower(i), lower(i + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockHash {
        BlockHash(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ u128::from(i))
    }

    /// Exact LRU hit rate of a cache of `c` blocks over `trace`.
    fn exact_lru(trace: &[u64], c: usize) -> f64 {
        let mut stack: Vec<u64> = Vec::new();
        let mut hits = 0;
        for &k in trace {
            if let Some(p) = stack.iter().position(|&x| x == k) {
                hits += usize::from(stack.len() - 1 - p < c);
                stack.remove(p);
            }
            stack.push(k);
        }
        hits as f64 / trace.len() as f64
    }

    #[test]
    fn unsampled_it_is_exact_lru() {
        // a loop over 100 blocks, then a random mix: distances exact when nothing is sampled out
        let mut x = 7u64;
        let mut trace: Vec<u64> = (0..5).flat_map(|_| 0..100).collect();
        for _ in 0..3000 {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            trace.push((x >> 33) % 300);
        }
        let mut c = CapacityCurve::new(1000);
        c.observe(&trace.iter().map(|&k| key(k)).collect::<Vec<_>>());
        assert_eq!(c.sample_rate(), 1.0);
        for cap in [8, 50, 150, 250, 400] {
            let (est, exact) = (c.hit_ratio(cap), exact_lru(&trace, cap as usize));
            // exact below 8 blocks and at a bucket's last capacity, interpolated in between
            // (wrong inside the bucket of a point mass: the loop's 100-block distance)
            assert!((est - exact).abs() < 0.03, "capacity {cap}: {est} vs {exact}");
        }
        for cap in [1, 2, 7, 95, 399] {
            let (est, exact) = (c.hit_ratio(cap), exact_lru(&trace, cap as usize));
            assert!((est - exact).abs() < 1e-9, "capacity {cap} (a bucket's last): {est} vs {exact}");
        }
    }

    #[test]
    fn sampled_estimate_stays_close_with_bounded_memory() {
        // half the accesses over 20,000 hot blocks, half over 200,000: far more than the 2,048
        // tracked (a single block carrying a large share of all accesses is SHARDS's weak
        // spot: sampled or not, it moves the estimate by its share)
        let mut x = 11u64;
        let trace: Vec<u64> = (0..600_000)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                let r = x >> 33;
                if r & 1 == 0 { (r >> 1) % 20_000 } else { 20_000 + (r >> 1) % 200_000 }
            })
            .collect();
        let hashes: Vec<BlockHash> = trace.iter().map(|&k| key(k)).collect();
        let mut sampled = CapacityCurve::new(2048);
        let mut exact = CapacityCurve::new(1 << 20);
        sampled.observe(&hashes);
        exact.observe(&hashes);
        assert!(sampled.sample_rate() < 0.05, "{}", sampled.sample_rate());
        assert!(sampled.sampled().1 <= 2048);
        assert_eq!(exact.sample_rate(), 1.0);
        for cap in [1_000, 10_000, 30_000, 100_000, 250_000] {
            let (e, x) = (sampled.hit_ratio(cap), exact.hit_ratio(cap));
            assert!((e - x).abs() < 0.03, "capacity {cap}: sampled {e} vs exact {x}");
        }
    }

    /// Prefix-cache traffic: every request walks a shared 4-block system prompt, then a few
    /// blocks of one of many conversations, then blocks of its own.
    fn prefix_traffic(requests: u64, seed: u64) -> Vec<u64> {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
            x >> 33
        };
        let mut trace = Vec::new();
        let mut fresh = 1_000_000u64;
        for _ in 0..requests {
            trace.extend(0..4); // the system prompt: a large share of every access
            let conversation = next() % 3_000;
            trace.extend((0..8).map(|b| 10_000 + conversation * 100 + b));
            for _ in 0..4 {
                fresh += 1;
                trace.push(fresh);
            }
        }
        trace
    }

    #[test]
    fn a_few_blocks_carrying_a_large_share_of_accesses_do_not_skew_the_estimate() {
        // SHARDS's weak spot: sampled, each system-prompt block's accesses would count 1/rate
        // times; unsampled, not at all (errors of up to 0.24 here before heavy hitters were
        // tracked). They are tracked exactly instead, for several seeds (the hash-based sample
        // differs with the keys). Capacities start well above 1/rate blocks (the sample's
        // resolution).
        for seed in [1, 2, 3, 4] {
            let trace = prefix_traffic(40_000, seed);
            let hashes: Vec<BlockHash> = trace.iter().map(|&k| key(k ^ (seed << 40))).collect();
            let mut sampled = CapacityCurve::new(1024);
            let mut exact = CapacityCurve::new(1 << 20);
            sampled.observe(&hashes);
            exact.observe(&hashes);
            assert!(sampled.sample_rate() < 0.01, "{}", sampled.sample_rate());
            assert!((4..=128).contains(&sampled.hot_blocks()), "{} hot", sampled.hot_blocks());
            assert_eq!(exact.sample_rate(), 1.0);
            assert_eq!(exact.hot_blocks(), 0, "nothing is hot while every block is sampled");
            for cap in [1_000, 3_000, 10_000, 30_000, 100_000] {
                let (e, x) = (sampled.hit_ratio(cap), exact.hit_ratio(cap));
                assert!((e - x).abs() < 0.02, "seed {seed}, capacity {cap}: sampled {e} vs exact {x}");
            }
        }
    }

    #[test]
    fn capacities_between_8_and_23_blocks_see_longer_distances() {
        // a loop of 10 blocks needs 10 of them; the histogram once left buckets 8..24 unused,
        // and their bounds ended the walk before it reached the bucket holding those accesses
        let mut c = CapacityCurve::new(64);
        for _ in 0..5 {
            c.observe(&(0..10).map(key).collect::<Vec<_>>());
        }
        for cap in [10, 12, 16, 23, 40] {
            assert!((c.hit_ratio(cap) - 0.8).abs() < 1e-9, "capacity {cap}: {}", c.hit_ratio(cap));
        }
        assert_eq!(c.hit_ratio(9), 0.0);
    }

    #[test]
    fn reset_keeps_the_order_and_compaction_keeps_distances() {
        let mut c = CapacityCurve::new(64);
        let loop_of = |n: u64| (0..n).map(key).collect::<Vec<_>>();
        c.observe(&loop_of(48));
        c.reset_counts();
        assert_eq!(c.hit_ratio(1000), 0.0);
        // many passes force compactions; every access after the first pass needs 48 blocks
        for _ in 0..20 {
            c.observe(&loop_of(48));
        }
        assert!((c.hit_ratio(51) - 1.0).abs() < 1e-9, "{}", c.hit_ratio(51));
        assert_eq!(c.hit_ratio(47), 0.0);
    }
}
