//! Lower tiers that hold pages G1 gave up: host DRAM (G2) and SSD files (G3).

pub mod host;
