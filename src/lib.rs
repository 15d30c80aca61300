//! kvtier
