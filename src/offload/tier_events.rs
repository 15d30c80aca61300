//! G2 and G3 stored / removed events, and per-tier snapshots, for routers.

use super::TieredCache;
use crate::error::Tier;
use crate::events::{KvEvent, KvEventKind, TierEvent, TierEventKind};
use crate::prefix::BlockHash;

impl TieredCache {
    /// G2 and G3 stored / removed events since the last call, oldest first (at most
    /// [`OffloadConfig::tier_event_capacity`](super::OffloadConfig::tier_event_capacity) pages; more are dropped and counted in
    /// [`EngineMetrics::tier_events_dropped`](super::EngineMetrics::tier_events_dropped)). Stored: a page is loadable from that tier
    /// from now on (a G1 copy reached G2, a spill reached G3, a prefetch brought a page up to
    /// G2); removed: the tier evicted it. A page promoted to G1 keeps its lower copies, so
    /// promotion is no event. Apply them as set updates ([`crate::TierEvent`]).
    pub fn take_tier_events(&self) -> Vec<TierEvent> {
        let mut raw = Vec::new();
        let mut out = Vec::new();
        self.shared.g2.drain_events(&mut raw);
        tier_events(Tier::G2, &raw, &mut out);
        if let Some(disk) = &self.shared.g3 {
            raw.clear();
            disk.drain_events(&mut raw);
            tier_events(Tier::G3, &raw, &mut out);
        }
        out
    }

    /// Every page `tier` holds now (G2 or G3; empty for a tier this engine does not have):
    /// the snapshot a router starts from, or rebuilds from after dropped events. Take it
    /// after draining [`TieredCache::take_tier_events`] and apply the events drained later
    /// on top of it.
    pub fn tier_hashes(&self, tier: Tier) -> Vec<BlockHash> {
        let mut out = Vec::new();
        match (tier, &self.shared.g3) {
            (Tier::G2, _) => self.shared.g2.stored_hashes(&mut out),
            (Tier::G3, Some(disk)) => disk.stored_hashes(&mut out),
            _ => {}
        }
        out
    }
}

/// A lower tier's pool events as tier events: runs of stores or removals, in order.
fn tier_events(tier: Tier, raw: &[KvEvent], out: &mut Vec<TierEvent>) {
    let start = out.len();
    for e in raw {
        let (kind, hash) = match e.kind {
            KvEventKind::Stored { hash, .. } => (TierEventKind::Stored, hash),
            KvEventKind::Removed { hash } => (TierEventKind::Removed, hash),
            // a lower tier is never reset while the engine runs
            KvEventKind::AllCleared => continue,
        };
        let len = out.len();
        match out.last_mut() {
            Some(last) if len > start && last.kind == kind => last.hashes.push(hash),
            _ => out.push(TierEvent { kind, tier, hashes: vec![hash] }),
        }
    }
}
