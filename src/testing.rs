//! Scaffolding shared by kvtier's own tests, examples and benches (the `testing` feature):
//! one seeded generator, so that a failing run repeats exactly and no test file carries its
//! own copy.

/// xorshift64 (13, 7, 17): tiny, seeded, the same stream on every platform. Not for anything
/// but tests and benchmarks.
///
/// ```
/// use kvtier::testing::XorShift;
/// let (mut a, mut b) = (XorShift::new(7), XorShift::new(7));
/// assert_eq!(a.next_u64(), b.next_u64());
/// assert!(a.below(10) < 10);
/// let mut v: Vec<u32> = (0..100).collect();
/// a.shuffle(&mut v);
/// v.sort();
/// assert_eq!(v, (0..100).collect::<Vec<_>>());
/// ```
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator starting from `seed`; 0 (which xorshift never leaves) is replaced by a
    /// fixed non-zero seed.
    pub fn new(seed: u64) -> Self {
        Self(if seed == 0 { 0x9e37_79b9_7f4a_7c15 } else { seed })
    }

    /// The next value of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next value reduced to `0..n` (`0` when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// The next value reduced to `0..n`, as an index (`0` when `n` is 0).
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Shuffles `v` in place (Fisher-Yates).
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i as u64 + 1) as usize);
        }
    }
}
