//! Which spilled pages come back, and so which the SSD should take: a hash-sampled shadow of
//! G2's spills that learns, per class of page, how long after leaving G2 its pages are asked
//! for again, and from that picks the admission threshold that serves the most hits for the
//! writes it costs ([`super::Admission::Adaptive`]).
//!
//! A class is the page's use count in the frequency sketch when it leaves G2 (1, 2, 3, 4 or
//! more). Every sampled spill is remembered, admitted or not (the declined ones are ghosts),
//! with the spill clock (pages that have left G2 so far) at which it left; a request for it
//! records how many spills later it came back. From these the shadow estimates `F_c(T)`: the
//! fraction of class `c`'s spills asked for again within `T` spills, over the spills at least
//! `T` old (so a page still out is never counted as dead too early).
//!
//! Candidates are "admit use counts >= k" for k = 1..=4. Admitting a fraction `w` of the spills
//! into a G3 of `H` slots keeps a page about `H / w` spills (each write evicts the oldest page),
//! so candidate `k` serves about `h_k = sum over admitted classes of share_c x F_c(H / w_k)`
//! hits per spill for `w_k` writes per spill. The shadow picks the `k` that maximises
//! `h_k - price x w_k`, where `price` is the hits a write must buy
//! ([`crate::offload::OffloadConfig::admission_hits_per_write`]). Admitting more shortens every
//! page's stay, so a class that comes back 30 % of the time but late can lose hits overall;
//! the model sees that, a fixed threshold on reuse would not. Until it has seen enough, or when
//! G3's lifetime reaches past what it has observed, it admits pages seen twice.

use std::collections::{HashMap, VecDeque};

use crate::prefix::BlockHash;

/// Classes of pages: use count 1, 2, 3, and 4 or more.
pub(crate) const CLASSES: usize = 4;

/// Sampled spills per horizon (G3's slots' worth of spills): bounds the shadow's memory
/// (about 64 horizons of them are kept: 128 Ki entries, a few MiB) whatever G3's size.
const SAMPLES_PER_HORIZON: u64 = 1 << 11;

/// How many horizons of spills the shadow remembers; a lifetime longer than that cannot be
/// judged.
const MAX_HORIZONS: u64 = 64;

/// Spills of a class at least `T` old the estimate of `F_c(T)` needs.
const MIN_COHORT: u64 = 32;

/// The class of a page whose sketch estimate is `uses`.
pub(crate) fn class_of(uses: u8) -> usize {
    usize::from(uses.clamp(1, CLASSES as u8)) - 1
}

#[derive(Clone, Copy)]
struct Spill {
    class: u8,
    /// Spill clock when the page left G2.
    at: u64,
    /// Spills between leaving and the next request for it; `u64::MAX` while not back.
    back_after: u64,
}

/// What the shadow currently concludes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Choice {
    /// Least use count admitted (1 to 4); `None` until the shadow has seen enough.
    pub(crate) min_uses: Option<u8>,
    /// Per class, the fraction of its spills asked for again within the G3 lifetime the
    /// choice implies (`None` where not enough is known).
    pub(crate) reuse: [Option<f64>; CLASSES],
}

/// A hash-sampled shadow of G2's spills (see the module docs).
pub(crate) struct ReuseShadow {
    /// A hash is sampled when its top bits under this mask are zero.
    sample_mask: u64,
    /// Sampled spills, oldest first; `first` is the sequence number of the front.
    spills: VecDeque<Spill>,
    first: u64,
    /// Sampled pages out of G2 and not asked for since: hash -> sequence number.
    out: HashMap<u128, u64>,
    /// Pages that have left G2 so far (sampled or not).
    clock: u64,
    /// G3's slots.
    horizon: u64,
    /// Writes a hit must be worth (see the module docs).
    price: f64,
    /// The clock at which the choice is next revised, and the choice.
    next_revision: u64,
    choice: Choice,
}

impl std::fmt::Debug for ReuseShadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReuseShadow")
            .field("spills", &self.spills.len())
            .field("clock", &self.clock)
            .field("choice", &self.choice)
            .finish_non_exhaustive()
    }
}

impl ReuseShadow {
    /// A shadow for a G3 of `g3_slots` pages, where a write must buy `price` hits.
    pub(crate) fn new(g3_slots: usize, price: f64) -> Self {
        let horizon = (g3_slots as u64).max(1);
        // sample 1 in 2^k hashes so that about SAMPLES_PER_HORIZON spills per horizon are kept
        let k = (horizon / SAMPLES_PER_HORIZON).max(1).ilog2().min(16);
        Self {
            sample_mask: (1u64 << k) - 1,
            spills: VecDeque::new(),
            first: 0,
            out: HashMap::new(),
            clock: 0,
            horizon,
            price,
            next_revision: 0,
            choice: Choice { min_uses: None, reuse: [None; CLASSES] },
        }
    }

    fn sampled(&self, h: BlockHash) -> bool {
        ((h.0 >> 112) as u64) & self.sample_mask == 0
    }

    /// A page of `class` left G2 (written to G3 or not).
    pub(crate) fn spilled(&mut self, h: BlockHash, class: usize) {
        self.clock += 1;
        if self.sampled(h) {
            let seq = self.first + self.spills.len() as u64;
            self.spills.push_back(Spill { class: class as u8, at: self.clock, back_after: u64::MAX });
            self.out.insert(h.0, seq);
        }
        let max_age = self.horizon.saturating_mul(MAX_HORIZONS);
        while let Some(front) = self.spills.front() {
            if self.clock - front.at <= max_age {
                break;
            }
            self.spills.pop_front();
            self.first += 1;
        }
        if self.out.len() > 2 * self.spills.len() + 1024 {
            // forget pages whose spill has left the window
            let first = self.first;
            self.out.retain(|_, seq| *seq >= first);
        }
        if self.clock >= self.next_revision {
            self.revise();
            // revised a few dozen times per horizon: each costs a pass over the window
            self.next_revision = self.clock + (self.horizon / 32).max(64);
        }
    }

    /// A request asked for these pages (found in some tier or not).
    pub(crate) fn requested(&mut self, hashes: &[BlockHash]) {
        if self.out.is_empty() {
            return;
        }
        for &h in hashes {
            if self.sampled(h)
                && let Some(seq) = self.out.remove(&h.0)
                && let Some(s) = seq.checked_sub(self.first).and_then(|i| self.spills.get_mut(i as usize))
            {
                s.back_after = self.clock - s.at;
            }
        }
    }

    /// Per class, `F_c(t)` (None below [`MIN_COHORT`]), and the same for classes `from..`
    /// taken together.
    fn reuse_within(&self, t: u64, from: usize) -> ([Option<f64>; CLASSES], Option<f64>) {
        let (mut cohort, mut back) = ([0u64; CLASSES], [0u64; CLASSES]);
        for s in &self.spills {
            if self.clock - s.at < t {
                break; // younger spills cannot tell yet
            }
            cohort[usize::from(s.class)] += 1;
            back[usize::from(s.class)] += u64::from(s.back_after <= t);
        }
        let rate = |cohort: u64, back: u64| (cohort >= MIN_COHORT).then(|| back as f64 / cohort as f64);
        let pooled = rate(cohort[from..].iter().sum(), back[from..].iter().sum());
        (std::array::from_fn(|c| rate(cohort[c], back[c])), pooled)
    }

    /// Re-picks the admission threshold (see the module docs).
    fn revise(&mut self) {
        let mut share = [0u64; CLASSES];
        for s in &self.spills {
            share[usize::from(s.class)] += 1;
        }
        let all = share.iter().sum::<u64>();
        if all == 0 {
            return;
        }
        let mut best: Option<(f64, u8, [Option<f64>; CLASSES])> = None;
        // least selective first; a later candidate must do strictly better, so a tie keeps
        // the one that admits more (the shadow's hit estimates are the uncertain part)
        for k in 0..CLASSES {
            let admitted = share[k..].iter().sum::<u64>();
            if admitted == 0 {
                // admits nothing that leaves G2: no hits, no writes
                if best.is_none_or(|(v, _, _)| 0.0 > v) {
                    best = Some((0.0, k as u8 + 1, [None; CLASSES]));
                }
                continue;
            }
            let w = admitted as f64 / all as f64;
            let lifetime = (self.horizon as f64 / w).ceil() as u64;
            let (reuse, pooled) = self.reuse_within(lifetime, k);
            let mut hits = Some(0.0);
            for c in k..CLASSES {
                // a class with too few old spills of its own counts at the candidate's pooled rate
                hits = match (hits, reuse[c].or(pooled)) {
                    (Some(h), Some(f)) => Some(h + f * share[c] as f64 / all as f64),
                    _ => None,
                };
            }
            let Some(hits) = hits else {
                if k < 2 {
                    // "every page" and "seen twice" must both be judged before anything is
                    // chosen: until then the prior (seen twice) stands
                    return;
                }
                continue;
            };
            let value = hits - self.price * w;
            if best.is_none_or(|(v, _, _)| value > v) {
                best = Some((value, k as u8 + 1, reuse));
            }
        }
        if let Some((_, min_uses, reuse)) = best {
            self.choice = Choice { min_uses: Some(min_uses), reuse };
        }
    }

    /// Whether a page of `class` is admitted (`None`: not known yet).
    pub(crate) fn admits(&self, class: usize) -> Option<bool> {
        self.choice.min_uses.map(|m| class + 1 >= usize::from(m))
    }

    /// The current choice, for the metrics.
    pub(crate) fn choice(&self) -> Choice {
        self.choice
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u64) -> BlockHash {
        BlockHash(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
    }

    /// Spills `n` pages, alternately of class 0 and 1; a page of class `c` comes back
    /// `back[c]` spills later with probability `p[c]` (by a fixed pattern).
    fn run(s: &mut ReuseShadow, n: u64, back: [u64; 2], p: [u64; 2]) {
        let mut due: std::collections::BTreeMap<u64, Vec<u64>> = Default::default();
        for i in 0..n {
            let class = (i % 2) as usize;
            s.spilled(key(i), class);
            if (i / 2) % 10 < p[class] {
                due.entry(i + back[class]).or_default().push(i);
            }
            if let Some(keys) = due.remove(&i) {
                s.requested(&keys.into_iter().map(key).collect::<Vec<_>>());
            }
        }
    }

    #[test]
    fn admits_a_class_that_comes_back_within_the_lifetime_it_would_get() {
        // G3 of 100 pages. Class 0 (seen once): 8 in 10 back after 150 spills; class 1: 9 in
        // 10 back after 50. Admitting both: lifetime 100 spills, class 0 misses it (hits 0.45
        // per spill for 1 write); admitting class 1 only: lifetime 200, hits 0.45 for 0.5
        // writes. Seen-twice wins.
        let mut s = ReuseShadow::new(100, 0.25);
        run(&mut s, 20_000, [150, 50], [8, 9]);
        assert_eq!(s.choice().min_uses, Some(2), "{:?}", s.choice());
        // Class 0 back after 80 spills instead: both fit in a lifetime of 100, hits 0.85 per
        // spill for 1 write against 0.45 for 0.5: first uses are admitted.
        let mut s = ReuseShadow::new(100, 0.25);
        run(&mut s, 20_000, [80, 50], [8, 9]);
        assert_eq!(s.choice().min_uses, Some(1), "{:?}", s.choice());
        let reuse = s.choice().reuse;
        assert!((0.75..0.85).contains(&reuse[0].unwrap()), "{reuse:?}");
        // ... unless a write must buy more than the 0.8 hits per extra write they bring
        // (0.4 more hits per spill for 0.5 more writes)
        let mut s = ReuseShadow::new(100, 0.85);
        run(&mut s, 20_000, [80, 50], [8, 9]);
        assert_eq!(s.choice().min_uses, Some(2), "{:?}", s.choice());
    }

    #[test]
    fn undecided_until_it_has_seen_enough() {
        let mut s = ReuseShadow::new(1000, 0.25);
        run(&mut s, 100, [10, 10], [9, 9]);
        assert_eq!(s.admits(0), None);
    }

    #[test]
    fn memory_is_bounded_and_large_tiers_are_sampled() {
        let mut s = ReuseShadow::new(1 << 20, 0.25);
        for i in 0..(1u64 << 22) {
            s.spilled(key(i), 3);
        }
        // 1 in 512 spills is remembered
        let kept = s.spills.len() as u64;
        assert!(((1 << 22) / 1024..(1 << 22) / 256).contains(&kept), "{kept}");
        let mut s = ReuseShadow::new(16, 0.25);
        for i in 0..100_000u64 {
            s.spilled(key(i), (i % 2) as usize);
        }
        assert!(s.spills.len() as u64 <= 16 * MAX_HORIZONS + 1 && s.out.len() <= 3 * s.spills.len() + 1024);
        assert_eq!(s.admits(0), Some(false), "nothing comes back: the fewest writes win");
    }
}
