//! Tier speeds for the plan's replays, from a machine profile written by `kvtier probe`.
//!
//! The engine replay simulates two transfer speeds ([`EngineConfig::g2_onboard_bytes_per_sec`]
//! and [`EngineConfig::g3_onboard_bytes_per_sec`]): the time a request waits for its prefix to
//! be onboarded, and the onboard-or-recompute rule, both use them. [`TierSpeeds::from_profile`]
//! takes them from what was measured on this machine:
//! 1. G2 -> G1: the median memcpy bandwidth (host RAM to host RAM: the stand-in for G1 here; a
//!    real GPU's host-to-device copy over PCIe may be slower, and is not measured).
//! 2. G3 -> G1: the read bandwidth at full queue depth, through kvtier's own IO engine, of the
//!    measured page size nearest (by ratio) to the per-GPU page the replay moves.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::probe::Profile;
use crate::replay::engine::EngineConfig;

/// The bandwidths a plan's replays simulate, and where they come from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TierSpeeds {
    /// The profile they were read from.
    pub profile: PathBuf,
    /// G2 -> G1, bytes/s (the profile's median memcpy).
    pub g2_bytes_per_sec: f64,
    /// G3 -> G1, bytes/s (the profile's read bandwidth at `g3_page_bytes`).
    pub g3_bytes_per_sec: f64,
    /// The measured page size the G3 bandwidth is taken at.
    pub g3_page_bytes: u64,
}

impl TierSpeeds {
    /// Reads the profile at `path` ([`Profile::load`]: its errors name the path) and picks the
    /// speeds for pages of `page_bytes` (see the module docs). A profile without a positive
    /// memcpy or read bandwidth is refused ([`Error::InvalidConfig`] naming the path).
    pub fn load(path: &Path, page_bytes: usize) -> Result<Self> {
        Self::from_profile(&Profile::load(path)?, path, page_bytes)
    }

    /// The speeds `profile` (read from `path`) gives for pages of `page_bytes`.
    pub fn from_profile(profile: &Profile, path: &Path, page_bytes: usize) -> Result<Self> {
        let refuse = |reason: &str| Error::invalid("probe profile", path.display(), reason);
        let g2 = profile.memcpy.median_bytes_per_sec;
        if !(g2.is_finite() && g2 > 0.0) {
            return Err(refuse("has no positive memcpy bandwidth (run `kvtier probe` again)"));
        }
        let distance = |bytes: u64| (bytes.max(1) as f64 / page_bytes.max(1) as f64).ln().abs();
        let nearest = profile
            .io
            .pages
            .iter()
            .filter(|p| p.read.bytes_per_sec.is_finite() && p.read.bytes_per_sec > 0.0)
            .min_by(|a, b| distance(a.page_bytes).total_cmp(&distance(b.page_bytes)))
            .ok_or_else(|| refuse("has no page size with a positive read bandwidth (run `kvtier probe` again)"))?;
        Ok(Self {
            profile: path.to_path_buf(),
            g2_bytes_per_sec: g2,
            g3_bytes_per_sec: nearest.read.bytes_per_sec,
            g3_page_bytes: nearest.page_bytes,
        })
    }

    /// `config` with these bandwidths.
    pub fn apply(&self, mut config: EngineConfig) -> EngineConfig {
        config.g2_onboard_bytes_per_sec = self.g2_bytes_per_sec;
        config.g3_onboard_bytes_per_sec = self.g3_bytes_per_sec;
        config
    }
}
