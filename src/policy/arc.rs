//! ARC: adaptive replacement between a recency list and a frequency list.

use super::EvictionPolicy;
use super::ghost::Ghost;
use crate::ids::BlockId;
use crate::list::IndexList;

const RECENT: u8 = 0;
const FREQUENT: u8 = 1;
const LIST: u8 = 0b01;
const RESIDENT: u8 = 0b10;

/// Adaptive Replacement Cache (Megiddo & Modha, FAST '03) over evictable entries.
///
/// Content used once lives in the recency list T1, content hit again in the frequency list
/// T2 (each evicts its oldest evictable entry first). Evicted keys are remembered in ghosts
/// B1 / B2; a ghost hit on re-registration moves the target size `p` of T1 towards the list
/// that would have kept it, by the ratio of the ghost sizes as in the paper, and the content
/// enters T2. A victim comes from T1 while T1 holds more than `p` resident entries, else from
/// T2. Only evictable entries are linked; counts cover every resident entry.
///
/// ```
/// use kvtier::policy::{Arc, EvictionPolicy};
/// use kvtier::BlockId;
/// let mut p = Arc::new(4);
/// for b in 0..3 {
///     p.on_register(BlockId(b), 10 + b as u64);
///     p.insert(BlockId(b));
/// }
/// p.on_hit(BlockId(0)); // moves to the frequency list
/// assert_eq!(p.pop_victim(), Some(BlockId(1))); // T1 first while p = 0
/// # assert_eq!(p.len(), 2);
/// ```
pub struct Arc {
    lists: [IndexList; 2],
    state: Vec<u8>,
    keys: Vec<u64>,
    ghost: Ghost,
    resident: [usize; 2],
    /// Target number of resident entries in T1.
    p: f64,
    capacity: f64,
    /// List of the last victim: a readmitted parent continues its chain's eviction there.
    last_victim_list: u8,
}

impl std::fmt::Debug for Arc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Arc").finish_non_exhaustive()
    }
}

impl Arc {
    /// An empty policy over entries `0..capacity`, with ghosts remembering about `capacity`
    /// keys in all.
    pub fn new(capacity: usize) -> Self {
        Self::for_universe(capacity, capacity)
    }

    /// A policy over entries `0..universe` for a cache that holds at most `capacity` of them.
    pub fn for_universe(universe: usize, capacity: usize) -> Self {
        let capacity = capacity.min(universe);
        Self {
            lists: [IndexList::new(universe), IndexList::new(universe)],
            state: vec![0; universe],
            keys: vec![0; universe],
            ghost: Ghost::new(capacity),
            resident: [0; 2],
            p: 0.0,
            capacity: capacity as f64,
            last_victim_list: RECENT,
        }
    }

    /// Current target size of the recency list (for reports and tests).
    pub fn target_recent(&self) -> f64 {
        self.p
    }

    #[inline]
    fn list_of(&self, i: usize) -> usize {
        (self.state[i] & LIST) as usize
    }

    #[inline]
    fn admit(&mut self, i: usize, key: u64) {
        self.end(i);
        let list = match (key != 0).then(|| self.ghost.take(key)).flatten() {
            Some(RECENT) => {
                let (b1, b2) = (self.ghost.count(RECENT) as f64 + 1.0, self.ghost.count(FREQUENT) as f64);
                self.p = (self.p + (b2 / b1).max(1.0)).min(self.capacity);
                FREQUENT
            }
            Some(_) => {
                let (b1, b2) = (self.ghost.count(RECENT) as f64, self.ghost.count(FREQUENT) as f64 + 1.0);
                self.p = (self.p - (b1 / b2).max(1.0)).max(0.0);
                FREQUENT
            }
            None => RECENT,
        };
        self.resident[list as usize] += 1;
        self.state[i] = RESIDENT | list;
        self.keys[i] = key;
    }

    #[inline]
    fn end(&mut self, i: usize) {
        if self.state[i] & RESIDENT != 0 {
            let l = self.list_of(i);
            self.resident[l] -= 1;
            self.lists[l].remove(i as u32);
            self.state[i] = 0;
        }
    }

    #[inline]
    fn ensure_resident(&mut self, i: usize) {
        if self.state[i] & RESIDENT == 0 {
            self.admit(i, 0);
        }
    }
}

impl EvictionPolicy for Arc {
    fn name(&self) -> &'static str {
        "arc"
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
        if i < self.state.len() {
            self.ensure_resident(i);
            let l = self.list_of(i);
            self.lists[l].push_back(block.0);
        }
    }

    /// The parent of the victim just popped joins the front of the victim's list, so a cold
    /// chain is eaten from the tail as one unit whatever list its older nodes were in.
    #[inline]
    fn readmit(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.state.len() {
            self.ensure_resident(i);
            let old = self.list_of(i);
            self.lists[old].remove(block.0);
            self.resident[old] -= 1;
            let l = self.last_victim_list;
            self.resident[l as usize] += 1;
            self.state[i] = RESIDENT | l;
            self.lists[l as usize].push_front(block.0);
        }
    }

    #[inline]
    fn remove(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.state.len() && self.state[i] & RESIDENT != 0 {
            let l = self.list_of(i);
            self.lists[l].remove(block.0);
        }
    }

    #[inline]
    fn on_hit(&mut self, block: BlockId) {
        let i = block.index();
        if i < self.state.len() && self.state[i] & RESIDENT != 0 && self.list_of(i) == RECENT as usize {
            self.resident[RECENT as usize] -= 1;
            self.resident[FREQUENT as usize] += 1;
            self.state[i] = RESIDENT | FREQUENT;
            if self.lists[RECENT as usize].remove(block.0) {
                self.lists[FREQUENT as usize].push_back(block.0);
            }
        }
    }

    #[inline]
    fn on_forget(&mut self, block: BlockId) {
        if block.index() < self.state.len() {
            self.end(block.index());
        }
    }

    fn pop_victim(&mut self) -> Option<BlockId> {
        let [t1, t2] = &self.lists;
        let list =
            if !t1.is_empty() && (self.resident[0] as f64 > self.p || t2.is_empty()) { RECENT } else { FREQUENT };
        let b = self.lists[list as usize].pop_front()?;
        let i = b as usize;
        let key = self.keys[i];
        self.end(i);
        if key != 0 {
            self.ghost.record(key, list);
        }
        self.last_victim_list = list;
        Some(BlockId(b))
    }

    #[inline]
    fn len(&self) -> usize {
        self.lists[0].len() + self.lists[1].len()
    }

    fn bytes_per_entry(&self) -> usize {
        2 * IndexList::bytes_per_element() + 1 + 8 + Ghost::bytes_per_slot()
    }
}
