//! IO backends for the SSD tier (in progress).
