//! LHD: evict the entry with the least expected hits per unit of cache space-time.

use super::EvictionPolicy;
use crate::ids::BlockId;

/// Coarse age bins per class; together they span at least [`AGE_SPAN`] times the capacity in
/// events (a bin is a power-of-two number of events, so an age is a shift).
const BINS: usize = 256;
const AGE_SPAN: usize = 4;
/// Classes: hits since the content arrived, 0..=3+.
const CLASSES: usize = 4;
/// Candidates compared per eviction. 16 beat 32 at every capacity of the seven traces in the
/// policy table in docs/measurements.md (and 32 fell below LRU once); 64 tracks LRU more closely still.
const SAMPLES: usize = 16;
/// Weight kept by old statistics at each re-estimate.
const DECAY: f64 = 0.9;
const NOT_LINKED: u32 = u32::MAX;
const RESIDENT: u8 = 0x80;

#[derive(Clone, Copy)]
struct Entry {
    /// Policy clock at the entry's arrival or last hit.
    stamp: u64,
    /// Position in `linked`, or `NOT_LINKED`.
    pos: u32,
    /// `RESIDENT` bit plus hits since arrival (saturating).
    state: u8,
}

/// Least Hit Density eviction (Beckmann, Chen & Cidon, "LHD: Improving Cache Hit Rate by
/// Maximizing Hit Density", NSDI '18), over evictable entries.
///
/// The policy learns from the workload instead of assuming that older means colder. Each entry
/// has an age (policy events since it was last released or hit, in coarse bins) and a
/// class (how often it was hit since it arrived, 0 to 3+). For every class and age the policy
/// counts the hits and evictions it observes, and from them estimates an entry's *hit density*:
/// the hits it can still expect divided by the cache space-time it will still occupy. To evict,
/// it samples 16 evictable entries at random and drops the one of lowest density (the least
/// recently used among equals).
/// The estimates are recomputed (older counts decayed) every quarter capacity of evictions.
///
/// Where reuse becomes likelier with age for a while, as when a conversation's next turn
/// arrives after a typical think time, or where content hit before comes back sooner, LHD keeps
/// what LRU would give up (see the policy table in docs/measurements.md). Every operation is O(1): an
/// eviction costs a constant number of samples, a re-estimate 1,024 steps per quarter
/// capacity of evictions.
///
/// ```
/// use kvtier::policy::{EvictionPolicy, Lhd};
/// use kvtier::BlockId;
/// let mut p = Lhd::new(8);
/// for b in 0..4 {
///     p.on_register(BlockId(b), 1 + b as u64);
///     p.insert(BlockId(b));
/// }
/// let v = p.pop_victim().unwrap();
/// assert!(v.0 < 4);
/// assert_eq!(p.len(), 3);
/// ```
pub struct Lhd {
    /// Evictable entries, in no order (sampled at random; swap-removed).
    linked: Vec<u32>,
    /// Per entry, packed so that a sample touches one cache line.
    entries: Vec<Entry>,
    clock: u64,
    /// log2 of the clock ticks per age bin.
    granularity_shift: u32,
    hits: Box<[[f64; BINS]; CLASSES]>,
    evictions: Box<[[f64; BINS]; CLASSES]>,
    density: Box<[[f64; BINS]; CLASSES]>,
    evictions_since_estimate: usize,
    estimate_every: usize,
    rng: u64,
}

impl std::fmt::Debug for Lhd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lhd").finish_non_exhaustive()
    }
}

impl Lhd {
    /// An empty policy over entries `0..capacity`.
    pub fn new(capacity: usize) -> Self {
        Self::for_universe(capacity, capacity)
    }

    /// A policy over entries `0..universe` for a cache that holds at most `capacity` of them.
    pub fn for_universe(universe: usize, capacity: usize) -> Self {
        let capacity = capacity.clamp(1, universe.max(1));
        let mut density = Box::new([[0.0; BINS]; CLASSES]);
        // Before anything is learned, younger is denser: LRU order.
        for class in density.iter_mut() {
            for (age, d) in class.iter_mut().enumerate() {
                *d = 1.0 / (1 + age) as f64;
            }
        }
        Self {
            linked: Vec::with_capacity(capacity),
            entries: vec![Entry { stamp: 0, pos: NOT_LINKED, state: 0 }; universe],
            clock: 0,
            granularity_shift: ((AGE_SPAN * capacity) / BINS).max(1).next_power_of_two().trailing_zeros(),
            hits: Box::new([[0.0; BINS]; CLASSES]),
            evictions: Box::new([[0.0; BINS]; CLASSES]),
            density,
            evictions_since_estimate: 0,
            estimate_every: (capacity / 4).max(128),
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    #[inline]
    fn class_of(e: &Entry) -> usize {
        ((e.state & !RESIDENT) as usize).min(CLASSES - 1)
    }

    #[inline]
    fn age_of(&self, e: &Entry) -> usize {
        (((self.clock - e.stamp) >> self.granularity_shift) as usize).min(BINS - 1)
    }

    #[inline]
    fn admit(&mut self, i: usize) {
        self.unlink(i);
        self.entries[i].stamp = self.clock;
        self.entries[i].state = RESIDENT;
    }

    #[inline]
    fn link(&mut self, i: usize) {
        if self.entries[i].pos == NOT_LINKED {
            self.entries[i].pos = self.linked.len() as u32;
            self.linked.push(i as u32);
        }
    }

    #[inline]
    fn unlink(&mut self, i: usize) -> bool {
        let p = self.entries[i].pos;
        if p == NOT_LINKED {
            return false;
        }
        self.entries[i].pos = NOT_LINKED;
        let last = self.linked.pop();
        if let Some(last) = last
            && last as usize != i
        {
            self.linked[p as usize] = last;
            self.entries[last as usize].pos = p;
        }
        true
    }

    #[inline]
    fn next_random(&mut self) -> u64 {
        // xorshift64*: deterministic, so replays are reproducible.
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Re-estimates every class's density by age from the decayed hit and eviction counts: for
    /// an entry of age `a`, the hits still expected (hits at ages >= `a`) over the space-time
    /// still expected (each later hit or eviction at age `x` holds the entry `x - a + 1` bins).
    fn estimate(&mut self) {
        for c in 0..CLASSES {
            let (mut hits_up, mut events_up, mut lifetime_up) = (0.0, 0.0, 0.0);
            for a in (0..BINS).rev() {
                hits_up += self.hits[c][a];
                events_up += self.hits[c][a] + self.evictions[c][a];
                lifetime_up += events_up;
                self.density[c][a] = if lifetime_up > 0.0 { hits_up / lifetime_up } else { 0.0 };
                self.hits[c][a] *= DECAY;
                self.evictions[c][a] *= DECAY;
            }
            // The last bin gathers every age beyond the span; an entry there has outstayed what
            // the estimates know about, and counting it as valuable would let it stay forever.
            self.density[c][BINS - 1] = 0.0;
        }
    }
}

impl Lhd {
    /// `block` was evicted by another policy's choice (see [`super::Adaptive`]): it leaves the
    /// evictable set, and its age and class are learned from as if LHD had chosen it.
    #[inline]
    pub(crate) fn evict(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.entries.len() && self.entries[i].pos != NOT_LINKED {
            self.evicted(i);
        }
    }

    #[inline]
    fn evicted(&mut self, i: usize) {
        let e = self.entries[i];
        let (c, a) = (Self::class_of(&e), self.age_of(&e));
        self.evictions[c][a] += 1.0;
        // The entry stays resident (age and hits kept) until its content is really dropped
        // (`on_forget`) or replaced (`on_register`): a tier may stage a victim, copy it down and
        // put it back, and hits on it must still be learned.
        self.unlink(i);
        self.evictions_since_estimate += 1;
        if self.evictions_since_estimate >= self.estimate_every {
            self.evictions_since_estimate = 0;
            self.estimate();
        }
    }
}

impl EvictionPolicy for Lhd {
    fn name(&self) -> &'static str {
        "lhd"
    }

    #[inline]
    fn on_register(&mut self, block: BlockId, _key: u64) {
        if block.index() < self.entries.len() {
            self.admit(block.index());
        }
    }

    /// A release is the end of a use: the age restarts, one clock tick apart per release, so
    /// a sequence released tail first ages its tail first and (among equal densities) gives it
    /// up before its head, as LRU does.
    #[inline]
    fn insert(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.entries.len() {
            if self.entries[i].state & RESIDENT == 0 {
                self.admit(i);
            }
            self.clock += 1;
            self.entries[i].stamp = self.clock;
            self.link(i);
        }
    }

    /// Evictable again without a use (a prefix-tree node whose last child went): its age runs
    /// on from its last use.
    #[inline]
    fn readmit(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.entries.len() {
            if self.entries[i].state & RESIDENT == 0 {
                self.admit(i);
            }
            self.link(i);
        }
    }

    #[inline]
    fn remove(&mut self, block: BlockId) {
        if block.index() < self.entries.len() {
            self.unlink(block.index());
        }
    }

    #[inline]
    fn on_hit(&mut self, block: BlockId) {
        let Some(&e) = self.entries.get(block.index()) else { return };
        if e.state & RESIDENT != 0 {
            self.clock += 1;
            let (c, a) = (Self::class_of(&e), self.age_of(&e));
            self.hits[c][a] += 1.0;
            let e = &mut self.entries[block.index()];
            e.stamp = self.clock;
            if e.state & !RESIDENT < 0x7f {
                e.state += 1;
            }
        }
    }

    #[inline]
    fn on_forget(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.entries.len() {
            self.unlink(i);
            self.entries[i].state = 0;
        }
    }

    fn pop_victim(&mut self) -> Option<BlockId> {
        let n = self.linked.len();
        if n == 0 {
            return None;
        }
        // Lowest density first; among equals (nothing learned that tells them apart), the
        // least recently used. The candidates are drawn first so that their cache misses
        // overlap instead of queueing behind one another.
        let k = SAMPLES.min(n);
        let mut candidates = [0u32; SAMPLES];
        for c in candidates.iter_mut().take(k) {
            // Multiply-shift maps the random word onto 0..n without a division.
            let r = ((self.next_random() as u128 * n as u128) >> 64) as usize;
            *c = self.linked[r];
        }
        let mut best = (f64::INFINITY, u64::MAX, 0usize);
        for &c in &candidates[..k] {
            let e = &self.entries[c as usize];
            let d = self.density[Self::class_of(e)][self.age_of(e)];
            if d < best.0 || (d == best.0 && e.stamp < best.1) {
                best = (d, e.stamp, c as usize);
            }
        }
        self.evicted(best.2);
        Some(BlockId(best.2 as u32))
    }

    #[inline]
    fn len(&self) -> usize {
        self.linked.len()
    }

    fn bytes_per_entry(&self) -> usize {
        std::mem::size_of::<Entry>() + std::mem::size_of::<u32>()
    }
}
