//! KV events for routers: what entered and left the prefix cache, in order.
//!
//! Every event carries a sequence number that increases by one per event. A router drains
//! events and applies them to its view; when it sees a gap (it started late, or the bounded
//! buffer dropped events it did not drain in time) it takes a [`CacheSnapshot`], which is taken
//! atomically with the event stream and names the last sequence number it includes, and then
//! applies only events with a greater number.
//!
//! Because hashes are chained, a hash identifies its whole prefix: a router matches a request
//! by looking up its hashes one by one, so a flat set of cached hashes is a complete view.

use std::collections::VecDeque;

use crate::error::Tier;
use crate::ids::BlockId;
use crate::prefix::BlockHash;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvEventKind {
    /// A full block was registered under `hash`.
    Stored {
        /// Hash of the block.
        hash: BlockHash,
        /// Hash of the previous block of the prefix (`None` for a first block).
        parent: Option<BlockHash>,
        /// Where it lives in G1.
        block: BlockId,
        /// Tokens in the block.
        num_tokens: u32,
    },
    /// The block with `hash` left the cache (evicted or reset).
    Removed {
        /// Hash of the block.
        hash: BlockHash,
    },
    /// Everything was dropped.
    AllCleared,
}

/// One event with its sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KvEvent {
    /// Sequence number, starting at 1, one more than the previous event's.
    pub seq_no: u64,
    /// What happened.
    pub kind: KvEventKind,
}

/// The set of hashes cached in G1 at one point of the event stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSnapshot {
    /// Sequence number of the last event reflected in `hashes` (0 if none yet).
    pub last_seq_no: u64,
    /// Every cached hash (in use or evictable), in block-id order.
    pub hashes: Vec<BlockHash>,
}

/// Bounded buffer of undrained events; the oldest are dropped (and counted) when full.
pub(crate) struct EventLog {
    buf: VecDeque<KvEvent>,
    cap: usize,
    last_seq_no: u64,
    dropped: u64,
}

impl EventLog {
    pub(crate) fn new(cap: usize) -> Self {
        Self { buf: VecDeque::new(), cap, last_seq_no: 0, dropped: 0 }
    }

    #[inline]
    pub(crate) fn push(&mut self, kind: KvEventKind) {
        if self.cap == 0 {
            return;
        }
        self.last_seq_no += 1;
        if self.buf.len() == self.cap {
            self.buf.pop_front();
            self.dropped += 1;
        }
        self.buf.push_back(KvEvent { seq_no: self.last_seq_no, kind });
    }

    pub(crate) fn drain_into(&mut self, out: &mut Vec<KvEvent>) {
        // Two slice copies; `extend(drain(..))` goes element by element.
        let (a, b) = self.buf.as_slices();
        out.extend_from_slice(a);
        out.extend_from_slice(b);
        self.buf.clear();
    }

    pub(crate) fn last_seq_no(&self) -> u64 {
        self.last_seq_no
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Whether pages arrived in or left a tier below G1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TierEventKind {
    /// Stored: loadable from now on.
    Stored,
    /// Removed: evicted for room, or dropped after failing verification.
    Removed,
}

/// Pages stored in or removed from a tier below G1 ([`Tier::G2`] host memory, [`Tier::G3`]
/// SSD), from [`TieredCache::take_tier_events`](crate::offload::TieredCache::take_tier_events)
/// or [`SlotStore::take_events`](crate::external::SlotStore::take_events): a KV-aware router
/// learns where prefixes live beyond HBM (vLLM's KV events carry the same "medium").
///
/// Apply them as set updates (a Stored of a page already known, or a Removed of one not
/// known, changes nothing): then a snapshot of a tier's pages taken after draining the events
/// ([`TieredCache::tier_hashes`](crate::offload::TieredCache::tier_hashes)), followed by the
/// events drained after it, gives the tier's content even across a dropped event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierEvent {
    /// Stored or removed.
    pub kind: TierEventKind,
    /// The medium.
    pub tier: Tier,
    /// The pages' hashes.
    pub hashes: Vec<BlockHash>,
}
