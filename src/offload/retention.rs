//! Retentions: a prefix (a system prompt, say) kept in every tier that holds it, its G1
//! blocks referenced and its G2/G3 pages pinned, until released or expired.

use std::time::{Duration, Instant};

use super::{RetentionId, Shared};
use crate::error::Result;
use crate::pool::BlockId;
use crate::prefix::BlockHash;
use crate::sync::atomic::Ordering;
use crate::sync::{MutexGuard, lock};

/// What one retention holds in each tier.
pub(crate) struct Retention {
    id: u64,
    g1_blocks: Vec<BlockId>,
    g2: Vec<BlockHash>,
    g3: Vec<BlockHash>,
    pub(crate) expires: Option<Instant>,
}

impl Shared {
    pub(super) fn retain(&self, hashes: &[BlockHash], ttl: Option<Duration>) -> Result<RetentionId> {
        let id = self.next_retention.fetch_add(1, Ordering::Relaxed);
        let mut r = Retention { id, g1_blocks: Vec::new(), g2: Vec::new(), g3: Vec::new(), expires: None };
        r.expires = ttl.map(|t| Instant::now() + t);
        {
            let mut core = self.g1.lock();
            for &h in hashes {
                match core.hold_cached(h)? {
                    Some(b) => r.g1_blocks.push(b),
                    None => break,
                }
            }
        }
        for &h in hashes {
            if self.g2.pin(h) {
                r.g2.push(h);
            }
            if let Some(d) = &self.g3
                && d.pin(h)
            {
                r.g3.push(h);
            }
        }
        self.retained_lock().push(r);
        Ok(RetentionId(id))
    }

    pub(crate) fn retained_lock(&self) -> MutexGuard<'_, Vec<Retention>> {
        lock(&self.retained)
    }

    pub(super) fn release(&self, id: u64) -> Result<bool> {
        let r = {
            let mut list = self.retained_lock();
            let Some(pos) = list.iter().position(|r| r.id == id) else { return Ok(false) };
            list.swap_remove(pos)
        };
        self.drop_retention(r)?;
        Ok(true)
    }

    pub(crate) fn drop_retention(&self, r: Retention) -> Result<()> {
        self.g1.lock().release_blocks(&r.g1_blocks)?;
        for h in r.g2 {
            self.g2.unpin(h);
        }
        if let Some(d) = &self.g3 {
            for h in r.g3 {
                d.unpin(h);
            }
        }
        Ok(())
    }
}
