//! Choosing a policy at run time without a vtable.

use super::{Adaptive, Arc, EvictionPolicy, Lhd, Lru, S3Fifo};
use crate::ids::BlockId;

/// The eviction policies a tier can be configured with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PolicyKind {
    /// Least recently released first.
    #[default]
    Lru,
    /// S3-FIFO (small + main FIFO with a ghost).
    S3Fifo,
    /// Adaptive replacement cache.
    Arc,
    /// Least hit density.
    Lhd,
    /// LRU or LHD, whichever wins on a sampled miniature replay of the tier's keys.
    Adaptive,
}

impl PolicyKind {
    /// Every kind, in report order.
    pub const ALL: [PolicyKind; 5] =
        [PolicyKind::Lru, PolicyKind::S3Fifo, PolicyKind::Arc, PolicyKind::Lhd, PolicyKind::Adaptive];

    /// Lower-case name ("lru", "s3fifo", "arc", "lhd", "adaptive").
    ///
    /// ```
    /// assert_eq!(kvtier::policy::PolicyKind::S3Fifo.name(), "s3fifo");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::Lru => "lru",
            PolicyKind::S3Fifo => "s3fifo",
            PolicyKind::Arc => "arc",
            PolicyKind::Lhd => "lhd",
            PolicyKind::Adaptive => "adaptive",
        }
    }

    /// A fresh policy of this kind over entries `0..capacity`.
    pub fn build(self, capacity: usize) -> AnyPolicy {
        self.build_for(capacity, capacity)
    }

    /// A fresh policy over entries `0..universe` for a cache of `capacity` entries.
    pub fn build_for(self, universe: usize, capacity: usize) -> AnyPolicy {
        match self {
            PolicyKind::Lru => AnyPolicy::Lru(Lru::new(universe)),
            PolicyKind::S3Fifo => AnyPolicy::S3Fifo(S3Fifo::for_universe(universe, capacity, 0.1)),
            PolicyKind::Arc => AnyPolicy::Arc(Arc::for_universe(universe, capacity)),
            PolicyKind::Lhd => AnyPolicy::Lhd(Lhd::for_universe(universe, capacity)),
            PolicyKind::Adaptive => AnyPolicy::Adaptive(Box::new(Adaptive::for_universe(universe, capacity))),
        }
    }
}

/// One of the [`PolicyKind`]s, dispatched by `match` (the branch predicts perfectly, as a
/// tier never changes policy).
pub enum AnyPolicy {
    /// [`Lru`].
    Lru(Lru),
    /// [`S3Fifo`].
    S3Fifo(S3Fifo),
    /// [`Arc`].
    Arc(Arc),
    /// [`Lhd`].
    Lhd(Lhd),
    /// [`Adaptive`] (boxed: it holds an LRU, an LHD and two mini caches).
    Adaptive(Box<Adaptive>),
}

impl std::fmt::Debug for AnyPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            AnyPolicy::Lru(_) => "Lru",
            AnyPolicy::S3Fifo(_) => "S3Fifo",
            AnyPolicy::Arc(_) => "Arc",
            AnyPolicy::Lhd(_) => "Lhd",
            AnyPolicy::Adaptive(_) => "Adaptive",
        };
        f.debug_tuple("AnyPolicy").field(&name).finish()
    }
}

macro_rules! each {
    ($self:ident, $p:ident => $e:expr) => {
        match $self {
            AnyPolicy::Lru($p) => $e,
            AnyPolicy::S3Fifo($p) => $e,
            AnyPolicy::Arc($p) => $e,
            AnyPolicy::Lhd($p) => $e,
            AnyPolicy::Adaptive($p) => $e,
        }
    };
}

impl EvictionPolicy for AnyPolicy {
    fn name(&self) -> &'static str {
        each!(self, p => p.name())
    }
    #[inline]
    fn on_register(&mut self, block: BlockId, key: u64) {
        each!(self, p => p.on_register(block, key))
    }
    #[inline]
    fn insert(&mut self, block: BlockId) {
        each!(self, p => p.insert(block))
    }
    #[inline]
    fn readmit(&mut self, block: BlockId) {
        each!(self, p => p.readmit(block))
    }
    #[inline]
    fn remove(&mut self, block: BlockId) {
        each!(self, p => p.remove(block))
    }
    #[inline]
    fn pop_victim(&mut self) -> Option<BlockId> {
        each!(self, p => p.pop_victim())
    }
    #[inline]
    fn on_hit(&mut self, block: BlockId) {
        each!(self, p => p.on_hit(block))
    }
    #[inline]
    fn on_forget(&mut self, block: BlockId) {
        each!(self, p => p.on_forget(block))
    }
    fn prefers_leaves(&self) -> bool {
        each!(self, p => p.prefers_leaves())
    }
    #[inline]
    fn len(&self) -> usize {
        each!(self, p => p.len())
    }
    fn bytes_per_entry(&self) -> usize {
        each!(self, p => p.bytes_per_entry())
    }
}
