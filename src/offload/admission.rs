//! Admission to the SSD tier: a frequency sketch decides whether a page is likely to be
//! reused, and a token bucket caps the bytes written per second to protect the drive.

use std::time::Instant;

use crate::prefix::BlockHash;

/// Which pages the SSD tier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Every page spilled from G2.
    All,
    /// Pages whose hash was seen at least twice (stored or hit) recently, by a count-min
    /// sketch with periodic halving (TinyLFU's aging): one-off prompts never wear the drive.
    SeenTwice,
}

/// Count-min sketch (4 probes) of saturating counters with aging, after TinyLFU: a sample of
/// `10 x capacity` additions, then every counter is halved. With 16 counters per expected
/// entry, a counter collects about 2.5 unrelated increments per sample, so the minimum over
/// four probes rarely reaches 2 for a hash seen once.
pub(crate) struct FrequencySketch {
    counters: Vec<u8>,
    mask: usize,
    additions: usize,
    reset_at: usize,
}

impl FrequencySketch {
    /// A sketch sized for about `capacity` distinct hot entries.
    pub(crate) fn new(capacity: usize) -> Self {
        let capacity = capacity.max(64);
        let width = (capacity * 16).next_power_of_two();
        Self { counters: vec![0; width], mask: width - 1, additions: 0, reset_at: capacity * 10 }
    }

    fn slots(&self, h: BlockHash) -> [usize; 4] {
        let lo = h.0 as u64;
        let hi = (h.0 >> 64) as u64;
        let mut out = [0; 4];
        for (i, o) in out.iter_mut().enumerate() {
            let mixed = lo.wrapping_add(hi.wrapping_mul(i as u64 * 2 + 1)).rotate_left(17 * i as u32);
            *o = (mixed as usize) & self.mask;
        }
        out
    }

    /// Counts one occurrence of `h`.
    pub(crate) fn record(&mut self, h: BlockHash) {
        for s in self.slots(h) {
            if self.counters[s] < 15 {
                self.counters[s] += 1;
            }
        }
        self.additions += 1;
        if self.additions >= self.reset_at {
            for c in &mut self.counters {
                *c /= 2;
            }
            self.additions /= 2;
        }
    }

    /// Estimated occurrences of `h` (never under-estimates until aged).
    pub(crate) fn estimate(&self, h: BlockHash) -> u8 {
        self.slots(h).iter().map(|&s| self.counters[s]).min().unwrap_or(0)
    }
}

/// Token bucket over bytes written to the SSD tier.
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
        let mut s = FrequencySketch::new(1024);
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
    fn budget_limits_rate() {
        let mut b = WriteBudget::new(Some(1000));
        assert!(b.try_take(600));
        assert!(!b.try_take(600));
        let mut unlimited = WriteBudget::new(None);
        assert!(unlimited.try_take(u64::MAX));
    }
}
