//! Scaffolding shared by the behaviour tests: the seeded generator (the library's, `testing`
//! feature) and a scratch directory.
//!
//! Each test file that needs it declares `mod common;`; a file uses only part of it.
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

pub use kvtier::testing::XorShift;

/// The KV a page must hold in these tests: bytes derived from its hash, so every page a tier
/// serves can be checked.
pub fn pattern(h: kvtier::BlockHash, len: usize) -> Vec<u8> {
    let mut rng = XorShift::new((h.0 as u64) ^ ((h.0 >> 64) as u64) | 1);
    (0..len).map(|_| rng.next_u64() as u8).collect()
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

pub mod redis_server;
