//! Lower tiers that hold pages G1 gave up: host DRAM (G2) and SSD files (G3).

pub mod disk;
mod disk_config;
pub mod disk_format;
mod disk_index;
pub mod host;

pub use disk::{DiskConfig, DiskMetrics, DiskTier};
pub use disk_format::{Fingerprint, Header, SlotRecord, parse_header};
