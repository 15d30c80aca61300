//! Scaffolding shared by the behaviour tests: a seeded generator and a scratch directory.
//!
//! Each test file that needs it declares `mod common;`; a file uses only part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// xorshift64 (13, 7, 17): tiny, seeded, the same stream on every platform, so a failing run
/// repeats exactly.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// A generator starting from `seed`, which must not be 0 (xorshift never leaves 0).
    pub fn new(seed: u64) -> Self {
        assert_ne!(seed, 0, "xorshift needs a non-zero seed");
        Self(seed)
    }

    /// The next value of the stream.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// The next value reduced to `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// A scratch directory under the target's tmp dir, absent at first (a tier or the test makes
/// it) and removed on drop, also when the test panics. Names carry the process id and a
/// counter, so tests running in parallel never share one.
#[derive(Debug)]
pub struct TestDir(PathBuf);

impl TestDir {
    /// `<target tmp>/<tag>-<pid>-<n>`, with whatever an earlier run left there removed.
    pub fn new(tag: &str) -> Self {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        Self(path)
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
