//! Miniature simulations: the candidate policies replayed on a spatially sampled subset of keys.
//!
//! Why: which policy wins depends on the workload (LHD beats LRU on most of our traces and
//! loses on others), so [`super::Adaptive`] measures instead of assuming. Following SHARDS
//! (Waldspurger et al., FAST '15) and miniature simulation (Waldspurger et al., ATC '17): a key
//! is sampled when its mixed hash falls below a threshold, so a sampled key is always sampled
//! and every access to it is seen; a cache of `capacity` entries is modelled by a cache of
//! `capacity x rate` entries fed only the sampled keys. Both candidates (LRU and LHD) get such a
//! mini cache, and their hits are compared access by access.
//!
//! The decisions are sign tests on the accesses where exactly one of two caches hits: if the
//! two were equally good, each such access would favour either with probability 1/2.
//! 1. The tier starts on LRU (the baseline it must not fall below) and follows LHD once LHD's
//!    mini cache leads LRU's by [`Z_FOLLOW`] standard deviations of that null hypothesis.
//! 2. A flat mini cache undersells LHD: in the tier LHD ranks only leaves of the prefix tree.
//!    Flat LRU does not have that problem (an ancestor is always more recent than its
//!    descendants, so it keeps prefixes as the tree does). So while following LHD the tier
//!    itself, the real LHD cache, is compared with LRU's mini cache, and the tier returns to
//!    LRU when that mini cache (or the LHD one) leads by [`Z_RETURN`].
//! 3. Each return doubles the hold before LHD may be followed again (hysteresis, so that noise
//!    or the two tests disagreeing cannot make the tier flap; every switch costs a transient).
//!
//! Counts decay every epoch so that the choice follows a workload that changes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::{EvictionPolicy, Lhd, Lru};
use crate::ids::BlockId;

/// A mini cache holds at least this many entries (the sampling rate is the largest power of two
/// fraction that keeps it there; below this capacity every key is sampled).
pub(crate) const MINI_SLOTS: usize = 8192;
/// Standard deviations by which LHD's mini cache must lead LRU's before the tier returns to LHD
/// ahead of its probe.
const Z_FOLLOW: f64 = 2.0;
/// Standard deviations by which LRU's mini cache must lead the tier (or LHD's mini cache)
/// before the tier leaves LHD. Higher than [`Z_FOLLOW`]: every switch costs a transient while
/// the cache reshapes, so only a clear loss is worth one.
const Z_RETURN: f64 = 4.0;
/// An epoch is this fraction of a mini cache's capacity in sampled accesses (half).
const EPOCH_FRACTION: usize = 2;
/// Epochs on LRU before LHD may be followed again, after its first loss; doubles with every
/// loss.
const FIRST_BACKOFF_EPOCHS: u64 = 16;
const MAX_BACKOFF_EPOCHS: u64 = 1024;
/// Weight kept by the disagreement counts at the end of an epoch.
const DECAY: f64 = 0.95;

/// A sign test: does `a` lead `b` by `z` standard deviations of the null hypothesis (each
/// disagreement a fair coin)?
fn leads(a: f64, b: f64, z: f64) -> bool {
    a - b >= 1.0 && a - b > z * (a + b).sqrt()
}

/// Which candidate the tier follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Candidate {
    Lru,
    Lhd,
}

/// The fingerprint is already a mixed hash; hashing it again buys nothing.
#[derive(Default)]
struct Identity(u64);

impl Hasher for Identity {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.0 = (n as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A flat cache of `slots` entries evicting with `P`, keyed by fingerprint.
struct MiniCache<P> {
    policy: P,
    /// Twice the capacity is reserved, so removals and inserts never grow (or allocate).
    slot_of: HashMap<u32, u32, BuildHasherDefault<Identity>>,
    /// Fingerprint held by each slot (0: empty).
    key_of: Vec<u32>,
    used: usize,
}

impl<P: EvictionPolicy> MiniCache<P> {
    fn new(policy: P, slots: usize) -> Self {
        let mut slot_of = HashMap::default();
        slot_of.reserve(2 * slots);
        Self { policy, slot_of, key_of: vec![0; slots], used: 0 }
    }

    /// Replays one access to `fp` (non-zero); true on a hit.
    #[inline]
    fn access(&mut self, fp: u32) -> bool {
        if let Some(&s) = self.slot_of.get(&fp) {
            let b = BlockId(s);
            self.policy.remove(b);
            self.policy.on_hit(b);
            self.policy.insert(b);
            return true;
        }
        let s = if self.used < self.key_of.len() {
            self.used += 1;
            self.used - 1
        } else {
            match self.policy.pop_victim() {
                Some(v) => v.index(),
                None => return false,
            }
        };
        let old = std::mem::replace(&mut self.key_of[s], fp);
        if old != 0 {
            self.slot_of.remove(&old);
        }
        self.slot_of.insert(fp, s as u32);
        self.policy.on_register(BlockId(s as u32), fp as u64);
        self.policy.insert(BlockId(s as u32));
        false
    }

    fn bytes(&self) -> usize {
        self.key_of.len() * (4 + self.policy.bytes_per_entry()) + self.slot_of.capacity() * 9
    }
}

/// What the mini caches saw over a tier's life (see [`super::Adaptive::shadow_totals`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ShadowTotals {
    /// Sampled accesses replayed in each mini cache.
    pub sampled: u64,
    /// Hits of the LRU mini cache.
    pub lru_hits: u64,
    /// Hits of the LHD mini cache.
    pub lhd_hits: u64,
    /// Sampled accesses that arrived while the tier followed LHD.
    pub on_lhd: u64,
    /// Times the followed policy changed.
    pub switches: u64,
    /// Entries per mini cache.
    pub mini_slots: usize,
}

/// LRU and LHD mini caches over the sampled keys, and the decision between them.
pub(crate) struct Shadow {
    /// A key is sampled when the high 32 bits of its mix are below this (`1 << 32`: all).
    threshold: u64,
    lru: MiniCache<Lru>,
    lhd: MiniCache<Lhd>,
    /// Decayed counts of sampled accesses that hit in one mini cache only: `[lru, lhd]`.
    mini_lead: [f64; 2],
    /// Decayed counts of sampled accesses where only LRU's mini cache or only the tier hit:
    /// `[lru, tier]`.
    live_lead: [f64; 2],
    /// Sampled accesses in the current epoch, and per epoch.
    in_epoch: usize,
    epoch: usize,
    following: Candidate,
    /// Epochs so far; while following LRU, the epoch at which LHD is probed again, and the
    /// hold after LHD's next loss.
    epochs: u64,
    hold: u64,
    backoff: u64,
    /// Lifetime totals, for reports and tests.
    switches: u64,
    sampled: u64,
    hits: [u64; 2],
    /// Sampled accesses spent following LHD.
    on_lhd: u64,
}

impl Shadow {
    /// Mini caches for a tier of `capacity` entries.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        // rate = 2^-shift, the smallest that keeps `MINI_SLOTS` entries.
        let shift = (capacity / MINI_SLOTS).checked_ilog2().unwrap_or(0).min(31);
        let slots = (capacity >> shift).max(1);
        Self {
            threshold: 1u64 << (32 - shift),
            lru: MiniCache::new(Lru::new(slots), slots),
            lhd: MiniCache::new(Lhd::new(slots), slots),
            mini_lead: [0.0; 2],
            live_lead: [0.0; 2],
            in_epoch: 0,
            epoch: (slots / EPOCH_FRACTION).max(1),
            following: Candidate::Lru,
            epochs: 0,
            hold: 0,
            backoff: FIRST_BACKOFF_EPOCHS,
            switches: 0,
            sampled: 0,
            hits: [0; 2],
            on_lhd: 0,
        }
    }

    /// The fingerprint of `key` if it is sampled, else 0.
    #[inline]
    pub(crate) fn sample(&self, key: u64) -> u32 {
        // splitmix64's finaliser: keys may be sequential (as in the replay's prefix tree).
        let mut z = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if (z >> 32) < self.threshold { (z as u32) | 1 } else { 0 }
    }

    /// Replays an access to a sampled key in both mini caches; `live_hit` says whether the
    /// tier itself hit.
    #[inline]
    pub(crate) fn access(&mut self, fp: u32, live_hit: bool) {
        let lru = self.lru.access(fp);
        let lhd = self.lhd.access(fp);
        self.hits[0] += lru as u64;
        self.hits[1] += lhd as u64;
        self.on_lhd += (self.following == Candidate::Lhd) as u64;
        if lru != lhd {
            self.mini_lead[lhd as usize] += 1.0;
        }
        if lru != live_hit {
            self.live_lead[live_hit as usize] += 1.0;
        }
        self.sampled += 1;
        self.in_epoch += 1;
        if self.in_epoch >= self.epoch {
            self.in_epoch = 0;
            self.decide();
        }
    }

    fn decide(&mut self) {
        self.epochs += 1;
        let next = match self.following {
            // LHD's mini cache beats LRU's. A flat mini cache undersells LHD (in the tier it
            // only ranks leaves of the prefix tree), so this is strong evidence.
            Candidate::Lru if self.epochs >= self.hold && leads(self.mini_lead[1], self.mini_lead[0], Z_FOLLOW) => {
                Candidate::Lhd
            }
            // While following LHD the tier itself is the LHD cache (prefix tree and all), and
            // LRU's mini cache models the LRU tier closely (an ancestor is always more recent
            // than its descendants, so flat LRU keeps prefixes as the tree does): leave LHD when
            // that model beats the tier, or when LRU's mini cache leads again. Each such return
            // doubles the hold before LHD may be followed again, so disagreement between the
            // two tests cannot make the tier flip back and forth.
            Candidate::Lhd
                if leads(self.live_lead[0], self.live_lead[1], Z_RETURN)
                    || leads(self.mini_lead[0], self.mini_lead[1], Z_RETURN) =>
            {
                self.hold = self.epochs + self.backoff;
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF_EPOCHS);
                Candidate::Lru
            }
            same => same,
        };
        if next != self.following {
            self.following = next;
            self.switches += 1;
            self.live_lead = [0.0; 2];
        }
        for c in self.mini_lead.iter_mut().chain(self.live_lead.iter_mut()) {
            *c *= DECAY;
        }
    }

    #[inline]
    pub(crate) fn following(&self) -> Candidate {
        self.following
    }

    /// Lifetime totals so far.
    pub(crate) fn totals(&self) -> ShadowTotals {
        ShadowTotals {
            sampled: self.sampled,
            lru_hits: self.hits[0],
            lhd_hits: self.hits[1],
            on_lhd: self.on_lhd,
            switches: self.switches,
            mini_slots: self.lru.key_of.len(),
        }
    }

    /// Bytes held by the mini caches.
    pub(crate) fn bytes(&self) -> usize {
        self.lru.bytes() + self.lhd.bytes()
    }

    /// The sampling rate (1 = every key).
    #[cfg(test)]
    pub(crate) fn rate(&self) -> f64 {
        self.threshold as f64 / (1u64 << 32) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_keeps_mini_caches_near_their_size() {
        assert_eq!(Shadow::new(100).rate(), 1.0);
        assert_eq!(Shadow::new(MINI_SLOTS * 2).rate(), 0.5);
        let s = Shadow::new(1 << 20);
        assert_eq!(s.rate(), MINI_SLOTS as f64 / (1 << 20) as f64);
        // About rate x keys are sampled, and a sampled key always is.
        let sampled = (0..1u64 << 20).filter(|&k| s.sample(k) != 0).count();
        assert!((MINI_SLOTS * 7 / 10..MINI_SLOTS * 13 / 10).contains(&sampled), "{sampled}");
        assert!((0..1u64 << 20).filter(|&k| s.sample(k) != 0).all(|k| s.sample(k) == s.sample(k)));
    }

    #[test]
    fn mini_cache_counts_hits_and_evicts() {
        let mut m = MiniCache::new(Lru::new(2), 2);
        assert!(!m.access(1));
        assert!(!m.access(3));
        assert!(m.access(1));
        assert!(!m.access(5)); // evicts 3, the least recent
        assert!(!m.access(3));
        assert!(!m.access(1)); // 1 went when 3 came back
        assert_eq!(m.slot_of.len(), 2);
    }
}
