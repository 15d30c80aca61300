//! Lower tiers that hold pages G1 gave up: host DRAM (G2) and SSD files (G3).

pub(crate) mod disk;
pub mod host;

pub use disk::format;
pub use disk::{DEFAULT_READ_CHUNK_BYTES, DiskConfig, DiskMetrics, DiskTier, INDEX_FILE, MAX_SLOTS};
