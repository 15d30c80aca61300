//! Admission to the SSD tier: a frequency sketch decides whether a page is likely to be
//! reused, and a token bucket caps the bytes written per second to protect the drive.

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use crate::prefix::BlockHash;

/// Which pages the SSD tier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Every page spilled from G2.
    All,
    /// Pages whose hash was seen at least twice (computed or hit), by a count-min sketch
    /// with periodic halving (TinyLFU's aging) sized from the tiers' capacities
    /// ([`crate::offload::OffloadConfig::admission_window_turnovers`]); every page while G3
    /// has free slots. On the Mooncake conversation trace it writes about a fifth of the
    /// bytes [`Admission::All`] writes and serves more hits (G3 keeps what comes back).
    SeenTwice,
    /// Pages whose use count (1, 2, 3, 4 or more when they leave G2, from the frequency
    /// sketch) is at least a threshold picked from the workload: a hash-sampled shadow of
    /// every spill, admitted or declined, learns how long after leaving G2 pages of each
    /// count are asked for again, predicts the hits and SSD writes of each threshold (a
    /// lower one admits more and so shortens every page's stay in G3), and keeps the one
    /// with the most hits for its writes
    /// ([`crate::offload::OffloadConfig::admission_hits_per_write`] prices a write). Until it
    /// has seen enough it admits pages seen twice; every page while G3 has free slots.
    /// Declines pages predicted dead rather than pages seen once: where pages used once
    /// mostly come back in time (a chat whose every turn returns soon), it admits them; where
    /// most never do, it declines them as the seen-twice filter does.
    Adaptive,
}

/// A caller's own G3 admission rule, consulted instead of [`Admission`] for each page leaving
/// G2 while G3 is full: `(hash, use count 1..=15 from the frequency sketch) -> admit`.
///
/// For a runtime that knows more than the cache can (a session it has closed, a tenant whose
/// pages are not worth an SSD write), and for offline bounds: `kvtier replay --admission
/// oracle` admits exactly the pages the rest of the trace asks for again. It runs on the
/// offload worker with no lock held; it must be cheap and must not call back into the cache.
///
/// ```
/// use kvtier::offload::{AdmissionHook, OffloadConfig};
/// let hook = AdmissionHook::new(|_hash, uses| uses >= 3);
/// let config = OffloadConfig::default().with_admission_hook(Some(hook));
/// assert!(config.admission_hook.is_some());
/// ```
#[derive(Clone)]
pub struct AdmissionHook(Arc<dyn Fn(BlockHash, u8) -> bool + Send + Sync>);

impl AdmissionHook {
    /// Wraps `admit(hash, uses)`.
    pub fn new(admit: impl Fn(BlockHash, u8) -> bool + Send + Sync + 'static) -> Self {
        Self(Arc::new(admit))
    }

    /// Whether G3 should take the page `h`, seen `uses` times.
    pub fn admits(&self, h: BlockHash, uses: u8) -> bool {
        (self.0)(h, uses)
    }
}

impl fmt::Debug for AdmissionHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdmissionHook(..)")
    }
}

/// Count-min sketch (4 probes) of saturating 4-bit counters with aging, after TinyLFU.
///
/// Sized from what it must remember: `window` additions (the engine passes a number of full
/// turnovers of the whole hierarchy, G1 + G2 + G3, so a page seen once is still remembered
/// when it comes back long after every tier dropped it). After `window` additions every
/// counter is halved. Four counters per addition keep the load of a counter at or below one
/// increment per sample, so a page seen once reaches an estimate of 2 on all four probes
/// (and is admitted as if seen twice) for about 2 % of pages on average over a sample.
///
/// Why not the tier's own size: sized with G2's page count and aged every 10x that many
/// additions (its first version), it forgot pages after about 4 minutes of the Mooncake
/// conversation trace, while nearly all first reuses come later than 30 s and a third later
/// than 300 s; its collisions then admitted pages no lookup could reach.
pub(crate) struct FrequencySketch {
    /// Two 4-bit counters per byte.
    counters: Vec<u8>,
    mask: usize,
    additions: usize,
    reset_at: usize,
}

impl FrequencySketch {
    /// Most counters (2^28: 128 MiB), whatever the window.
    const MAX_COUNTERS: usize = 1 << 28;

    /// A sketch that remembers about `window` additions.
    pub(crate) fn new(window: usize) -> Self {
        let window = window.max(64);
        let width = window.saturating_mul(4).next_power_of_two().min(Self::MAX_COUNTERS);
        Self { counters: vec![0; width / 2], mask: width - 1, additions: 0, reset_at: window.min(width / 4) }
    }

    /// Bytes of counters.
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> usize {
        self.counters.len()
    }

    fn slots(&self, h: BlockHash) -> [usize; 4] {
        let lo = h.0 as u64;
        let hi = (h.0 >> 64) as u64;
        let mut out = [0; 4];
        for (i, o) in out.iter_mut().enumerate() {
            let mixed = lo.wrapping_add(hi.wrapping_mul(i as u64 * 2 + 1)).rotate_left(17 * i as u32);
            *o = (mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16) as usize & self.mask;
        }
        out
    }

    fn get(&self, slot: usize) -> u8 {
        (self.counters[slot >> 1] >> ((slot & 1) * 4)) & 15
    }

    /// Counts one occurrence of `h`.
    pub(crate) fn record(&mut self, h: BlockHash) {
        for s in self.slots(h) {
            if self.get(s) < 15 {
                self.counters[s >> 1] += 1 << ((s & 1) * 4);
            }
        }
        self.additions += 1;
        if self.additions >= self.reset_at {
            for c in &mut self.counters {
                // halve both nibbles
                *c = (*c >> 1) & 0x77;
            }
            self.additions /= 2;
        }
    }

    /// Estimated occurrences of `h` (never under-estimates until aged).
    pub(crate) fn estimate(&self, h: BlockHash) -> u8 {
        self.slots(h).iter().map(|&s| self.get(s)).min().unwrap_or(0)
    }
}

/// Token bucket over bytes written to the SSD tier.
#[derive(Debug)]
pub(crate) struct WriteBudget {
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl WriteBudget {
    /// `rate` bytes per second (None: unlimited), bursts of up to one second's worth.
    pub(crate) fn new(rate: Option<u64>) -> Self {
        let burst = rate.unwrap_or(0) as f64;
        Self { rate: rate.map(|r| r as f64), burst, tokens: burst, last: Instant::now() }
    }

    /// Takes `bytes` if the budget allows.
    pub(crate) fn try_take(&mut self, bytes: u64) -> bool {
        let Some(rate) = self.rate else { return true };
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(self.burst.max(bytes as f64));
        self.last = now;
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_counts_and_ages() {
        let mut s = FrequencySketch::new(100_000);
        let key = |i: u128| BlockHash(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ (i << 64));
        let a = key(u128::MAX / 3);
        assert_eq!(s.estimate(a), 0);
        s.record(a);
        assert_eq!(s.estimate(a), 1);
        s.record(a);
        assert!(s.estimate(a) >= 2);
        // a long stream of one-off keys: few of them look "seen twice"
        for i in 0..100_000u128 {
            s.record(key(i));
        }
        let false_twice = (0..1000u128).filter(|&i| s.estimate(key(i + 50_000)) >= 2).count();
        assert!(false_twice < 150, "{false_twice} of 1000 one-off keys admitted");
        let unseen = (0..1000u128).filter(|&i| s.estimate(key(i + 10_000_000)) >= 2).count();
        assert!(unseen < 150, "{unseen} of 1000 unseen keys admitted");
    }

    #[test]
    fn sketch_remembers_a_page_over_its_window() {
        let mut s = FrequencySketch::new(10_000);
        let key = |i: u128| BlockHash(i.wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835) ^ (i << 64));
        s.record(key(1));
        for i in 100..9_000u128 {
            s.record(key(i));
        }
        s.record(key(1));
        assert!(s.estimate(key(1)) >= 2, "seen twice within the window");
        // nibbles saturate at 15 and halve without touching their neighbours
        for _ in 0..40 {
            s.record(key(2));
        }
        assert_eq!(s.estimate(key(2)), 15);
        assert!(s.bytes() <= 1 << 27);
    }

    #[test]
    fn budget_limits_rate() {
        let mut b = WriteBudget::new(Some(1000));
        assert!(b.try_take(600));
        assert!(!b.try_take(600));
        let mut unlimited = WriteBudget::new(None);
        assert!(unlimited.try_take(u64::MAX));
    }
}
