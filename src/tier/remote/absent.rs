//! Without the `g4` feature there is no client: [`RemoteTier::open`] says so, and no value of
//! the type can exist, so the engine's G4 paths are never taken.

use std::convert::Infallible;

use super::{RemoteConfig, RemoteMetrics};
use crate::error::{Error, Result};
use crate::layout::KvLayout;
use crate::prefix::BlockHash;

/// The G4 tier; this build has none (enable the `g4` feature).
#[derive(Debug)]
pub struct RemoteTier {
    never: Infallible,
}

impl RemoteTier {
    /// Always [`Error::InvalidConfig`]: this kvtier was built without the `g4` feature.
    pub fn open(_layout: &KvLayout, config: RemoteConfig) -> Result<Self> {
        config.validate()?;
        Err(Error::InvalidConfig { field: "remote", reason: "this kvtier was built without the g4 feature" })
    }
    /// See the `g4` build.
    pub fn key(&self, _h: BlockHash) -> String {
        match self.never {}
    }
    /// See the `g4` build.
    pub fn page_bytes(&self) -> usize {
        match self.never {}
    }
    /// See the `g4` build.
    pub fn metrics(&self) -> RemoteMetrics {
        match self.never {}
    }
    /// See the `g4` build.
    pub fn contains_prefix(&self, _hashes: &[BlockHash]) -> usize {
        match self.never {}
    }
    /// See the `g4` build.
    pub fn contains_each(&self, _hashes: &[BlockHash]) -> Vec<bool> {
        match self.never {}
    }
    /// See the `g4` build.
    pub fn get_pages(&self, _reqs: &mut [(BlockHash, &mut [u8])]) -> Vec<bool> {
        match self.never {}
    }
    /// See the `g4` build.
    pub fn put_pages(&self, _pages: &[(BlockHash, &[u8])]) -> Vec<bool> {
        match self.never {}
    }
}
