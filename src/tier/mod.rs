//! Lower tiers that hold pages G1 gave up: host DRAM (G2), SSD files (G3) and, with the `g4`
//! feature, a Valkey/Redis server shared by many processes (G4).

pub(crate) mod disk;
pub mod host;
pub mod remote;

pub use disk::format;
pub use disk::{DEFAULT_READ_CHUNK_BYTES, DiskConfig, DiskMetrics, DiskTier, INDEX_FILE, MAX_SLOTS};
