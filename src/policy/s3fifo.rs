//! S3-FIFO: a small probation queue, a main queue with second chances, and a ghost.

use super::EvictionPolicy;
use super::ghost::Ghost;
use crate::ids::BlockId;
use crate::list::IndexList;

const SMALL: u8 = 0;
const MAIN: u8 = 1;
/// Per-entry state: bits 0-1 hit count (saturating at 3), bit 2 queue, bit 3 resident.
const FREQ: u8 = 0b0011;
const QUEUE: u8 = 0b0100;
const RESIDENT: u8 = 0b1000;

/// S3-FIFO eviction (Yang et al., "FIFO queues are all you need for cache eviction", SOSP '23).
///
/// New content enters a small FIFO (10 % of the capacity). When the small FIFO is over its
/// share, its oldest evictable entry leaves: to the main FIFO if it was hit since it entered,
/// else out of the cache, its key remembered in a ghost. Content whose key is in the ghost
/// enters the main FIFO directly. The main FIFO evicts its oldest evictable entry, unless that
/// entry was hit since it was last examined: then the hit count drops by one and the entry
/// goes to the back (a second chance).
///
/// Only evictable entries are linked; entries in use keep their queue and hit count, and
/// re-enter the back of their queue when released. Every operation is O(1), `pop_victim`
/// amortised (each hit buys at most one extra move).
///
/// ```
/// use kvtier::policy::{EvictionPolicy, S3Fifo};
/// use kvtier::BlockId;
/// let mut p = S3Fifo::new(10);
/// for b in 0..3 {
///     p.on_register(BlockId(b), 100 + b as u64);
///     p.insert(BlockId(b));
/// }
/// p.on_hit(BlockId(0)); // 0 was used again: it gets promoted instead of evicted
/// assert_eq!(p.pop_victim(), Some(BlockId(1)));
/// // The small queue (target 1 entry) is within its share now: the main queue's oldest goes.
/// assert_eq!(p.pop_victim(), Some(BlockId(0)));
/// assert_eq!(p.pop_victim(), Some(BlockId(2)));
/// assert_eq!(p.pop_victim(), None);
/// ```
pub struct S3Fifo {
    small: IndexList,
    main: IndexList,
    state: Vec<u8>,
    keys: Vec<u64>,
    ghost: Ghost,
    /// Resident entries (evictable or not) whose queue is the small one.
    small_resident: usize,
    small_target: usize,
    /// Queue of the last victim: a readmitted parent continues its chain's eviction there.
    last_victim_queue: u8,
}

impl std::fmt::Debug for S3Fifo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Fifo").finish_non_exhaustive()
    }
}

impl S3Fifo {
    /// An empty policy over entries `0..capacity`, the small queue at 10 % of it and a ghost
    /// as large as the main queue.
    pub fn new(capacity: usize) -> Self {
        Self::for_universe(capacity, capacity, 0.1)
    }

    /// A policy over entries `0..universe` for a cache that holds at most `capacity` of them
    /// at once (a replay over a prefix tree numbers every node it will ever see), with the
    /// small queue at `share` of the capacity (clamped to 0..=1).
    pub fn for_universe(universe: usize, capacity: usize, share: f64) -> Self {
        let capacity = capacity.min(universe);
        let share = if share.is_finite() { share.clamp(0.0, 1.0) } else { 0.1 };
        let small_target = ((capacity as f64 * share) as usize).max(1);
        Self {
            small: IndexList::new(universe),
            main: IndexList::new(universe),
            state: vec![0; universe],
            keys: vec![0; universe],
            ghost: Ghost::new(capacity.saturating_sub(small_target).max(1)),
            small_resident: 0,
            small_target,
            last_victim_queue: SMALL,
        }
    }

    #[inline]
    fn queue(&self, i: usize) -> u8 {
        (self.state[i] & QUEUE) >> 2
    }

    /// Starts a residency for entry `i` (new content with `key`, 0 meaning unknown).
    #[inline]
    fn admit(&mut self, i: usize, key: u64) {
        self.end(i);
        let queue = if key != 0 && self.ghost.take(key).is_some() { MAIN } else { SMALL };
        if queue == SMALL {
            self.small_resident += 1;
        }
        self.state[i] = RESIDENT | (queue << 2);
        self.keys[i] = key;
    }

    /// Ends entry `i`'s residency (unlinking it) without remembering it.
    #[inline]
    fn end(&mut self, i: usize) {
        if self.state[i] & RESIDENT != 0 {
            if self.queue(i) == SMALL {
                self.small_resident -= 1;
            }
            self.small.remove(i as u32);
            self.main.remove(i as u32);
            self.state[i] = 0;
        }
    }

    #[inline]
    fn list(&mut self, i: usize) -> &mut IndexList {
        if self.queue(i) == SMALL { &mut self.small } else { &mut self.main }
    }
}

impl EvictionPolicy for S3Fifo {
    fn name(&self) -> &'static str {
        "s3fifo"
    }

    #[inline]
    fn on_register(&mut self, block: BlockId, key: u64) {
        if block.index() < self.state.len() {
            self.admit(block.index(), key);
        }
    }

    #[inline]
    fn insert(&mut self, block: BlockId) {
        let i = block.index();
        if i >= self.state.len() {
            return;
        }
        if self.state[i] & RESIDENT == 0 {
            self.admit(i, 0);
        }
        self.list(i).push_back(block.0);
    }

    /// The parent of the victim just popped: it joins the front of the victim's queue with its
    /// hits cleared, so a cold chain is eaten from the tail as one unit. (Given its own second
    /// chances, every node of a once-popular prefix would return to the back in turn and the
    /// dead chain would outlive everything new.)
    #[inline]
    fn readmit(&mut self, block: BlockId) {
        let i = block.index();
        if i >= self.state.len() {
            return;
        }
        if self.state[i] & RESIDENT == 0 {
            self.admit(i, 0);
        }
        self.list(i).remove(block.0);
        if self.queue(i) == SMALL {
            self.small_resident -= 1;
        }
        let queue = self.last_victim_queue;
        if queue == SMALL {
            self.small_resident += 1;
        }
        self.state[i] = RESIDENT | (queue << 2);
        self.list(i).push_front(block.0);
    }

    #[inline]
    fn remove(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.state.len() {
            self.list(i).remove(block.0);
        }
    }

    #[inline]
    fn on_hit(&mut self, block: BlockId) {
        if let Some(s) = self.state.get_mut(block.index())
            && *s & RESIDENT != 0
            && *s & FREQ < FREQ
        {
            *s += 1;
        }
    }

    #[inline]
    fn on_forget(&mut self, block: BlockId) {
        if block.index() < self.state.len() {
            self.end(block.index());
        }
    }

    fn pop_victim(&mut self) -> Option<BlockId> {
        loop {
            let from_small =
                !self.small.is_empty() && (self.small_resident > self.small_target || self.main.is_empty());
            if from_small {
                let b = self.small.pop_front()?;
                let i = b as usize;
                if self.state[i] & FREQ != 0 {
                    // Used while on probation: promote, hits cleared.
                    self.small_resident -= 1;
                    self.state[i] = RESIDENT | (MAIN << 2);
                    self.main.push_back(b);
                    continue;
                }
                let key = self.keys[i];
                self.end(i);
                if key != 0 {
                    self.ghost.record(key, SMALL);
                }
                self.last_victim_queue = SMALL;
                return Some(BlockId(b));
            }
            let b = self.main.pop_front()?;
            let i = b as usize;
            if self.state[i] & FREQ != 0 {
                self.state[i] -= 1;
                self.main.push_back(b);
                continue;
            }
            self.end(i);
            self.last_victim_queue = MAIN;
            return Some(BlockId(b));
        }
    }

    #[inline]
    fn len(&self) -> usize {
        self.small.len() + self.main.len()
    }

    fn bytes_per_entry(&self) -> usize {
        2 * IndexList::bytes_per_element() + 1 + 8 + Ghost::bytes_per_slot()
    }
}
