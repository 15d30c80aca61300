//! What the engine stores in the shared G4 tier, and what it does not send again.

use std::collections::{HashSet, VecDeque};

use super::Shared;
use crate::prefix::BlockHash;
use crate::sync::lock;
use crate::tier::remote::Publish;

/// A bounded set of recent hashes (the oldest forgotten first): the pages this engine stored
/// in G4 or loaded from it lately.
pub(crate) struct Recent {
    set: HashSet<u128>,
    order: VecDeque<u128>,
    cap: usize,
}

impl Recent {
    pub(crate) fn new(cap: usize) -> Self {
        Self { set: HashSet::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    pub(crate) fn contains(&self, h: BlockHash) -> bool {
        self.set.contains(&h.0)
    }

    pub(crate) fn insert(&mut self, h: BlockHash) {
        if self.set.insert(h.0) {
            self.order.push_back(h.0);
            while self.order.len() > self.cap {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

impl Shared {
    /// Whether pages moving the way `policy` names go to G4 (a G4 tier publishing by it).
    pub(crate) fn publishes(&self, policy: Publish) -> bool {
        self.g4.is_some() && self.config.remote.as_ref().is_some_and(|r| r.publish == policy)
    }

    /// Stores in G4 the pages among `pages` it was not given lately, in one pipelined batch;
    /// a page the server refused is tried again next time it comes by. The caller checked
    /// [`Shared::publishes`].
    pub(crate) fn publish(&self, pages: &[(BlockHash, &[u8])]) {
        let Some(g4) = &self.g4 else { return };
        let fresh: Vec<(BlockHash, &[u8])> = {
            let published = lock(&self.published);
            pages.iter().filter(|(h, _)| !published.contains(*h)).copied().collect()
        };
        if fresh.is_empty() {
            return;
        }
        let stored = g4.put_pages(&fresh);
        let mut n = 0;
        {
            let mut published = lock(&self.published);
            for ((h, _), ok) in fresh.iter().zip(stored) {
                if ok {
                    published.insert(*h);
                    n += 1;
                }
            }
        }
        self.stats().m.to_g4.add(n, self.page_bytes);
    }
}
