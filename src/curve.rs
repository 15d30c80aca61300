//! Hit rate against capacity, estimated live from the lookups a cache serves, so an operator
//! can size DRAM and SSD from real traffic without a trace.
//!
//! [`CapacityCurve`] keeps LRU stack distances of a spatially sampled subset of block hashes
//! (SHARDS: Waldspurger et al., "Efficient MRC Construction with SHARDS", FAST '15; the
//! miniature-simulation idea of "Cache Modeling and Optimization using Miniature Simulations",
//! USENIX ATC '17). A block is sampled when its hash falls under a threshold; the threshold
//! starts at "every block" and is lowered whenever more than `max_keys` distinct blocks are
//! tracked (the block with the highest hash leaves, fixed-size SHARDS), so memory is bounded
//! (about 100 bytes per tracked block) whatever the traffic. The stack distance of a sampled
//! access (distinct sampled blocks used since its previous use) is a Fenwick-tree count over
//! access times, O(log max_keys); scaled by the inverse of the sampling rate it estimates the
//! distance among all blocks, so the share of accesses at a distance below `C` estimates the
//! hit rate of an LRU cache of `C` blocks. Each access weighs the inverse of the rate it was
//! sampled at, so a lowered threshold does not skew the counts.
//!
//! The cache core feeds it the prefix blocks of every admitted request
//! ([`crate::CacheCore::capacity_curve`]); for prefix caches whose requests reuse whole
//! prefixes, an LRU cache of blocks is what the simulator-compatible replay models.

use std::collections::{BinaryHeap, HashMap};

use crate::prefix::BlockHash;

/// Sub-buckets per power of two of the distance histogram (a bucket spans 12.5 % of its
/// distance at most).
const SUB: u64 = 8;
/// Powers of two of distance the histogram covers (2^48 blocks).
const OCTAVES: u64 = 48;

/// A live hit-rate-vs-capacity curve (see the module docs).
#[derive(Debug, Clone)]
pub struct CapacityCurve {
    max_keys: usize,
    /// A block is sampled when its hash's value is at most this.
    threshold: u64,
    /// Tracked blocks: hash -> time of last access (1-based).
    last: HashMap<u128, u32>,
    /// Tracked blocks by value, highest first (the next to leave when over `max_keys`).
    by_value: BinaryHeap<(u64, u128)>,
    /// Fenwick tree over access times: 1 at the last access of each tracked block.
    tree: Vec<i32>,
    now: u32,
    /// Weighted accesses per distance bucket, first accesses, and all accesses.
    hist: Vec<f64>,
    cold: f64,
    total: f64,
    sampled_accesses: u64,
}

impl CapacityCurve {
    /// A curve tracking at most `max_keys` sampled blocks (at least 64). The estimate's error
    /// shrinks as this grows; prefix caches need many: a block of a shared system prompt is
    /// used by a large share of all requests, and whether such blocks are sampled moves the
    /// estimate (SHARDS's weak spot). Unsampled (more keys than distinct blocks) it is exact LRU.
    pub fn new(max_keys: usize) -> Self {
        let max_keys = max_keys.max(64);
        Self {
            max_keys,
            threshold: u64::MAX,
            last: HashMap::new(),
            by_value: BinaryHeap::new(),
            tree: vec![0; 4 * max_keys + 1],
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

    /// Records one access to each of `hashes`, in order.
    pub fn observe(&mut self, hashes: &[BlockHash]) {
        for &h in hashes {
            let v = Self::value(h);
            if v <= self.threshold {
                self.access(h.0, v);
            }
        }
    }

    fn access(&mut self, key: u128, value: u64) {
        let weight = 1.0 / self.sample_rate();
        self.total += weight;
        self.sampled_accesses += 1;
        if self.now as usize + 1 >= self.tree.len() {
            self.compact();
        }
        match self.last.get(&key).copied() {
            Some(t) => {
                let distance = self.prefix(self.now) - self.prefix(t);
                self.add(t, -1);
                // the smallest LRU cache this access hits in: one block more than the distance
                let fits = distance as f64 * weight + 1.0;
                self.hist[bucket(fits)] += weight;
            }
            None => {
                self.cold += weight;
                self.by_value.push((value, key));
            }
        }
        self.now += 1;
        self.last.insert(key, self.now);
        self.add(self.now, 1);
        while self.last.len() > self.max_keys {
            let Some((v, k)) = self.by_value.pop() else { break };
            if let Some(t) = self.last.remove(&k) {
                self.add(t, -1);
            }
            // from now on only blocks below the one that left are sampled
            self.threshold = v.saturating_sub(1);
        }
    }

    /// Renumbers the tracked blocks' last accesses 1..=n in their order, so the tree stays
    /// `4 x max_keys` long: O(n log n) once every 3n or more accesses.
    fn compact(&mut self) {
        let mut order: Vec<(u32, u128)> = self.last.iter().map(|(&k, &t)| (t, k)).collect();
        order.sort_unstable();
        self.tree.iter_mut().for_each(|x| *x = 0);
        self.now = 0;
        for (_, k) in order {
            self.now += 1;
            self.last.insert(k, self.now);
            self.add(self.now, 1);
        }
    }

    fn add(&mut self, t: u32, d: i32) {
        let mut i = t as usize;
        while i < self.tree.len() {
            self.tree[i] += d;
            i += i & i.wrapping_neg();
        }
    }

    fn prefix(&self, t: u32) -> i64 {
        let (mut i, mut s) = (t as usize, 0i64);
        while i > 0 {
            s += i64::from(self.tree[i]);
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
        let exp = 63 - u64::from(d.leading_zeros());
        exp * SUB + ((d >> (exp - 3)) & (SUB - 1))
    };
    (i as usize).min((OCTAVES * SUB) as usize - 1)
}

/// The capacities (in blocks) bucket `i` spans: its accesses need `lo..hi` blocks.
fn bounds(i: usize) -> (f64, f64) {
    let i = i as u64;
    let lower = |i: u64| -> f64 {
        let (exp, sub) = (i / SUB, i % SUB);
        if exp < 3 { i as f64 } else { ((SUB + sub) << (exp - 3)) as f64 }
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
