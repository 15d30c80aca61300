//! A fixed-size memory of recently evicted keys, for policies that learn from their mistakes.

/// Remembers keys of recently evicted entries in a direct-mapped table: one `u64` per slot, the
/// slot chosen by the key's hash. Recording overwrites whatever the slot held, so the ghost
/// forgets old keys at random once it is full (on average a key survives about `slots`
/// later recordings), and lookups are one load. Each key also carries one bit of class (which
/// list it was evicted from), for ARC.
pub(crate) struct Ghost {
    slots: Vec<u64>,
    mask: usize,
    /// Keys currently remembered per class.
    counts: [usize; 2],
}

/// Bit 0 of a stored word is the class, bit 1 marks the slot as used; the key fills the rest.
const USED: u64 = 2;

impl Ghost {
    /// A ghost of at least `entries` slots (rounded up to a power of two, at least 1).
    pub(crate) fn new(entries: usize) -> Self {
        let n = entries.max(1).next_power_of_two();
        Self { slots: vec![0; n], mask: n - 1, counts: [0; 2] }
    }

    #[inline]
    fn slot(&self, key: u64) -> usize {
        (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 20) as usize & self.mask
    }

    #[inline]
    fn word(key: u64, class: u8) -> u64 {
        (key << 2) | USED | (class as u64 & 1)
    }

    /// Remembers `key` as evicted from list `class` (0 or 1).
    #[inline]
    pub(crate) fn record(&mut self, key: u64, class: u8) {
        let s = self.slot(key);
        let old = self.slots[s];
        if old & USED != 0 {
            self.counts[(old & 1) as usize] -= 1;
        }
        self.slots[s] = Self::word(key, class);
        self.counts[(class & 1) as usize] += 1;
    }

    /// If `key` is remembered, forgets it and returns its class.
    #[inline]
    pub(crate) fn take(&mut self, key: u64) -> Option<u8> {
        let s = self.slot(key);
        let w = self.slots[s];
        if w & USED == 0 || w >> 2 != key & (u64::MAX >> 2) {
            return None;
        }
        self.slots[s] = 0;
        self.counts[(w & 1) as usize] -= 1;
        Some((w & 1) as u8)
    }

    /// Keys remembered from list `class`.
    #[inline]
    pub(crate) fn count(&self, class: u8) -> usize {
        self.counts[(class & 1) as usize]
    }

    /// Bytes per slot.
    pub(crate) const fn bytes_per_slot() -> usize {
        std::mem::size_of::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_until_overwritten() {
        let mut g = Ghost::new(64);
        g.record(7, 1);
        g.record(9, 0);
        assert_eq!((g.count(0), g.count(1)), (1, 1));
        assert_eq!(g.take(7), Some(1));
        assert_eq!(g.take(7), None);
        assert_eq!(g.take(8), None);
        assert_eq!((g.count(0), g.count(1)), (1, 0));
        for k in 100..10_000 {
            g.record(k, 0);
        }
        assert!(g.count(0) <= 64 && g.count(1) == 0);
    }
}
