//! The kvcache-simulator-compatible hit-rate model.
//!
//! This reproduces the definition of the public `kvcache-simulator` 0.1.3 (Mooncake team), so
//! that numbers compare with its published tables:
//! 1. The trace is turned into a prefix tree: a request's `hash_ids` are a path from the root,
//!    one node per 512-token block; node ids are dense and handed out in order of first
//!    appearance in the file.
//! 2. Requests are replayed one at a time in file order. The first `floor(n / 2)` requests only
//!    warm the cache.
//! 3. For each request the longest prefix of present nodes is a hit: in the measured half its
//!    tokens count as hit tokens (the partial last block counts its real tokens), every prompt
//!    token counts in the denominator. LRU refreshes the hit nodes root first; OPT records when
//!    each is next needed.
//! 4. The hit path is protected, then the missing nodes are inserted in order. Capacity counts
//!    nodes. When full, the least recently used (LRU) or latest needed (OPT) unprotected *leaf*
//!    is evicted; if no leaf can go (or, for OPT, every candidate is needed sooner than the block
//!    being inserted) the rest of the request is not cached.
//!
//! LRU runs in O(1) per block: node state lives in one flat array, and the leaves are kept in an
//! intrusive list threaded through it, ordered by last use. A node whose last child is evicted
//! becomes a leaf with an older stamp than every unprotected leaf, so it is placed at (or within a
//! step or two of) the cold end. OPT keeps a lazily invalidated heap, as the reference does.

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use kvtier::policy::PolicyKind;

use crate::trace::Trace;

mod tier;

/// Index of the prefix-tree root (the empty prefix; always present, never evicted).
const ROOT: u32 = 0;

/// An eviction policy of the compatible model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SimPolicy {
    /// First in, first out over blocks, ignoring the tree (as the reference's FIFO does).
    Fifo,
    /// Least recently used leaf of the prefix tree.
    Lru,
    /// Belady: evict the leaf needed latest; do not cache a block needed later than all of them.
    Opt,
    /// [`kvtier::policy::S3Fifo`] over the evictable leaves.
    S3Fifo,
    /// [`kvtier::policy::Arc`] over the evictable leaves.
    Arc,
    /// [`kvtier::policy::Lhd`] over the evictable leaves.
    Lhd,
    /// [`kvtier::policy::Adaptive`] (LRU or LHD, as sampled mini caches say) over the leaves.
    Adaptive,
}

impl SimPolicy {
    /// Lower-case name (`fifo`, `lru`, `opt`).
    ///
    /// ```
    /// assert_eq!(kvtier_cli::replay::SimPolicy::Opt.name(), "opt");
    /// ```
    pub fn name(self) -> &'static str {
        match self {
            SimPolicy::Fifo => "fifo",
            SimPolicy::Lru => "lru",
            SimPolicy::Opt => "opt",
            SimPolicy::S3Fifo => "s3fifo",
            SimPolicy::Arc => "arc",
            SimPolicy::Lhd => "lhd",
            SimPolicy::Adaptive => "adaptive",
        }
    }

    /// Every policy, online ones first and the offline bound last.
    pub const ALL: [SimPolicy; 7] = [
        SimPolicy::Fifo,
        SimPolicy::Lru,
        SimPolicy::S3Fifo,
        SimPolicy::Arc,
        SimPolicy::Lhd,
        SimPolicy::Adaptive,
        SimPolicy::Opt,
    ];

    /// The tier policy this replays, if it is one ([`SimPolicy::Fifo`] and [`SimPolicy::Opt`]
    /// exist only here).
    pub fn tier_policy(self) -> Option<PolicyKind> {
        match self {
            SimPolicy::Lru => Some(PolicyKind::Lru),
            SimPolicy::S3Fifo => Some(PolicyKind::S3Fifo),
            SimPolicy::Arc => Some(PolicyKind::Arc),
            SimPolicy::Lhd => Some(PolicyKind::Lhd),
            SimPolicy::Adaptive => Some(PolicyKind::Adaptive),
            SimPolicy::Fifo | SimPolicy::Opt => None,
        }
    }
}

/// Hit rate of one policy at one capacity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct SimResult {
    /// The policy replayed.
    pub policy: SimPolicy,
    /// Cache capacity in prefix-tree nodes (512-token blocks).
    pub capacity_blocks: u32,
    /// Tokens of the measured half served from the cached prefix.
    pub hit_tokens: u64,
    /// All prompt tokens of the measured half.
    pub measured_tokens: u64,
    /// `hit_tokens / measured_tokens` (0 when nothing is measured).
    pub hit_rate: f64,
    /// The cache never filled during warm-up. kvcache-simulator reports such a point as
    /// "underfilled" without a rate; we still give the rate.
    pub underfilled: bool,
}

impl SimResult {
    fn new(policy: SimPolicy, capacity_blocks: u32, hit_tokens: u64, measured_tokens: u64, filled: bool) -> Self {
        let hit_rate = if measured_tokens == 0 { 0.0 } else { hit_tokens as f64 / measured_tokens as f64 };
        Self { policy, capacity_blocks, hit_tokens, measured_tokens, hit_rate, underfilled: !filled }
    }
}

/// A trace flattened into a prefix tree, ready to be replayed at any capacity.
#[derive(Debug, Clone)]
pub struct PrefixPlan {
    /// Parent of each node; the root is its own parent.
    parent: Vec<u32>,
    /// Tree node of each block event, in file order.
    node_for_event: Vec<u32>,
    /// Tokens of each block event.
    tokens: Vec<u16>,
    /// End (exclusive) of each request's events.
    request_ends: Vec<u32>,
    /// For each event, the next request that uses its node (`never` if none).
    next_request: Vec<u32>,
    warmup_requests: usize,
    measured_tokens: u64,
    prompt_tokens: u64,
}

impl PrefixPlan {
    /// Builds the prefix tree of `trace`; the first `floor(len / 2)` requests are warm-up.
    ///
    /// ```
    /// use kvtier_cli::replay::{PrefixPlan, SimPolicy};
    /// use kvtier_cli::trace::{Trace, TraceRecord};
    /// let req = |ids: &[u64]| TraceRecord { timestamp_ms: 0, input_length: 512 * ids.len() as u32, output_length: 1, hash_ids: ids.to_vec() };
    /// let plan = PrefixPlan::build(&Trace::from_records(vec![req(&[1, 2]), req(&[1, 3])]));
    /// assert_eq!(plan.unique_blocks(), 3);
    /// let r = plan.simulate(SimPolicy::Lru, 2);
    /// assert_eq!((r.hit_tokens, r.measured_tokens), (512, 1024)); // block 1 is shared
    /// ```
    pub fn build(trace: &Trace) -> Self {
        let events: usize = trace.records().iter().map(|r| r.hash_ids.len()).sum();
        assert!(events < u32::MAX as usize && trace.len() < (u32::MAX - 1) as usize, "trace too large for u32 ids");
        let mut parent = vec![ROOT];
        let mut node_for_event = Vec::with_capacity(events);
        let mut tokens = Vec::with_capacity(events);
        let mut request_ends = Vec::with_capacity(trace.len());
        let mut edges: HashMap<(u32, u64), u32, BuildHasherDefault<FxHasher>> = HashMap::default();
        edges.reserve(events);
        for record in trace.records() {
            let mut at = ROOT;
            for (index, &id) in record.hash_ids.iter().enumerate() {
                at = *edges.entry((at, id)).or_insert_with(|| {
                    parent.push(at);
                    (parent.len() - 1) as u32
                });
                node_for_event.push(at);
                tokens.push(record.block_tokens(index) as u16);
            }
            request_ends.push(node_for_event.len() as u32);
        }
        let warmup_requests = trace.len() / 2;
        let start = if warmup_requests == 0 { 0 } else { request_ends[warmup_requests - 1] as usize };
        let measured_tokens = tokens[start..].iter().map(|&t| t as u64).sum();
        let prompt_tokens = tokens.iter().map(|&t| t as u64).sum();
        let mut plan = Self {
            parent,
            node_for_event,
            tokens,
            request_ends,
            next_request: Vec::new(),
            warmup_requests,
            measured_tokens,
            prompt_tokens,
        };
        plan.next_request = plan.next_uses();
        plan
    }

    fn next_uses(&self) -> Vec<u32> {
        let never = self.never();
        let mut last_use = vec![never; self.parent.len()];
        let mut next = vec![never; self.node_for_event.len()];
        for request in (0..self.requests()).rev() {
            let events = self.events_of(request);
            for e in events.clone() {
                next[e] = last_use[self.node_for_event[e] as usize];
            }
            for e in events {
                last_use[self.node_for_event[e] as usize] = request as u32;
            }
        }
        next
    }

    fn never(&self) -> u32 {
        self.requests() as u32 + 1
    }

    fn events_of(&self, request: usize) -> std::ops::Range<usize> {
        let start = if request == 0 { 0 } else { self.request_ends[request - 1] as usize };
        start..self.request_ends[request] as usize
    }

    /// Requests in the trace.
    pub fn requests(&self) -> usize {
        self.request_ends.len()
    }

    /// Requests that only warm the cache (`floor(requests / 2)`).
    pub fn warmup_requests(&self) -> usize {
        self.warmup_requests
    }

    /// Block events (hash ids) over the whole trace.
    pub fn block_events(&self) -> usize {
        self.node_for_event.len()
    }

    /// Distinct prefix-tree nodes (blocks) in the trace.
    pub fn unique_blocks(&self) -> usize {
        self.parent.len() - 1
    }

    /// Prompt tokens over the whole trace.
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt_tokens
    }

    /// Prompt tokens of the measured half (the hit-rate denominator).
    pub fn measured_tokens(&self) -> u64 {
        self.measured_tokens
    }

    /// Hit tokens with an unbounded cache (every block ever seen stays).
    pub fn ceiling_hit_tokens(&self) -> u64 {
        let mut seen = vec![false; self.parent.len()];
        let mut hit_tokens = 0;
        for request in 0..self.requests() {
            let events = self.events_of(request);
            if request >= self.warmup_requests {
                for e in events.clone() {
                    if !seen[self.node_for_event[e] as usize] {
                        break;
                    }
                    hit_tokens += self.tokens[e] as u64;
                }
            }
            for e in events {
                seen[self.node_for_event[e] as usize] = true;
            }
        }
        hit_tokens
    }

    /// Replays the trace with `policy` and a cache of `capacity_blocks` nodes.
    pub fn simulate(&self, policy: SimPolicy, capacity_blocks: u32) -> SimResult {
        if capacity_blocks == 0 || self.node_for_event.is_empty() {
            return SimResult::new(policy, capacity_blocks, 0, self.measured_tokens, true);
        }
        let (hit_tokens, filled) = match policy {
            SimPolicy::Fifo => self.fifo(capacity_blocks),
            SimPolicy::Lru => Lru::new(self.parent.len()).run(self, capacity_blocks),
            SimPolicy::Opt => self.opt(capacity_blocks),
            SimPolicy::S3Fifo | SimPolicy::Arc | SimPolicy::Lhd | SimPolicy::Adaptive => {
                let kind = policy.tier_policy().unwrap_or_default();
                self.simulate_with(&mut kind.build_for(self.parent.len(), capacity_blocks as usize), capacity_blocks)
            }
        };
        SimResult::new(policy, capacity_blocks, hit_tokens, self.measured_tokens, filled)
    }

    /// Counts the hit tokens of the longest present prefix of `request` (if measured) and calls
    /// `on_hit` for each node of that prefix.
    #[inline]
    fn lookup(&self, request: usize, mut present: impl FnMut(u32, usize) -> bool) -> u64 {
        let mut hit_tokens = 0;
        for e in self.events_of(request) {
            if !present(self.node_for_event[e], e) {
                break; // nodes below a missing one are never present
            }
            hit_tokens += self.tokens[e] as u64;
        }
        if request >= self.warmup_requests { hit_tokens } else { 0 }
    }

    fn fifo(&self, capacity: u32) -> (u64, bool) {
        let mut cached = vec![false; self.parent.len()];
        let mut queue = VecDeque::with_capacity(capacity as usize);
        let (mut hit_tokens, mut filled) = (0, false);
        for request in 0..self.requests() {
            // FIFO caches blocks independently of the tree, so a hit stops at the first miss.
            hit_tokens += self.lookup(request, |node, _| cached[node as usize]);
            for e in self.events_of(request) {
                let node = self.node_for_event[e];
                if cached[node as usize] {
                    continue;
                }
                if queue.len() >= capacity as usize
                    && let Some(victim) = queue.pop_front()
                {
                    cached[victim as usize] = false;
                }
                cached[node as usize] = true;
                queue.push_back(node);
                filled |= queue.len() >= capacity as usize && request < self.warmup_requests;
            }
        }
        (hit_tokens, filled)
    }

    fn opt(&self, capacity: u32) -> (u64, bool) {
        let mut state = vec![OptNode::default(); self.parent.len()];
        state[ROOT as usize].present = true;
        let mut heap = BinaryHeap::new();
        let mut skipped = Vec::new();
        let (mut size, mut hit_tokens, mut filled) = (0u32, 0, false);
        let push_leaf = |state: &mut [OptNode], heap: &mut BinaryHeap<(u32, u32, u32)>, node: u32| {
            let s = &mut state[node as usize];
            if node != ROOT && s.present && s.children == 0 {
                s.version = s.version.wrapping_add(1);
                heap.push((s.key, node, s.version));
            }
        };
        for request in 0..self.requests() {
            let mark = request as u32 + 1;
            hit_tokens += self.lookup(request, |node, e| {
                if !state[node as usize].present {
                    return false;
                }
                state[node as usize].key = self.next_request[e];
                state[node as usize].mark = mark;
                push_leaf(&mut state, &mut heap, node);
                true
            });
            for e in self.events_of(request) {
                let node = self.node_for_event[e];
                if state[node as usize].present {
                    continue;
                }
                if size >= capacity {
                    // Evict the unprotected leaf needed latest, unless it is needed sooner than `node`.
                    let candidate = self.next_request[e];
                    let mut evicted = false;
                    while let Some(top @ (key, victim, version)) = heap.pop() {
                        let s = state[victim as usize];
                        if !s.present || s.children != 0 || s.version != version || s.key != key {
                            continue;
                        }
                        if s.mark == mark {
                            skipped.push(top);
                            continue;
                        }
                        if key <= candidate {
                            heap.push(top);
                            break;
                        }
                        state[victim as usize].present = false;
                        size -= 1;
                        let p = self.parent[victim as usize];
                        state[p as usize].children -= 1;
                        push_leaf(&mut state, &mut heap, p);
                        evicted = true;
                        break;
                    }
                    heap.extend(skipped.drain(..));
                    if !evicted {
                        break;
                    }
                }
                let p = self.parent[node as usize];
                if size >= capacity || !state[p as usize].present {
                    break;
                }
                state[node as usize].present = true;
                state[node as usize].key = self.next_request[e];
                state[p as usize].children += 1;
                size += 1;
                push_leaf(&mut state, &mut heap, node);
                filled |= size >= capacity && request < self.warmup_requests;
            }
        }
        (hit_tokens, filled)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct OptNode {
    /// Next request that needs this node.
    key: u32,
    version: u32,
    children: u32,
    /// Request (+1) whose hit path holds this node; such nodes are not evicted for it.
    mark: u32,
    present: bool,
}

/// LRU state: one entry per tree node; leaves form a circular list through `prev`/`next` with
/// the root as its sentinel (the root is never a leaf candidate). `ROOT.next` is the coldest leaf.
struct Lru {
    nodes: Vec<LruNode>,
    clock: u64,
    size: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct LruNode {
    /// Clock of the last hit or insertion; a parent's stamp is always older than its children's.
    stamp: u64,
    prev: u32,
    next: u32,
    children: u32,
    /// Request (+1) whose hit path holds this node; such nodes are not evicted for it.
    mark: u32,
    present: bool,
}

impl Lru {
    fn new(nodes: usize) -> Self {
        let mut nodes = vec![LruNode::default(); nodes];
        nodes[ROOT as usize].present = true;
        Self { nodes, clock: 0, size: 0 }
    }

    fn run(mut self, plan: &PrefixPlan, capacity: u32) -> (u64, bool) {
        let (mut hit_tokens, mut filled) = (0, false);
        for request in 0..plan.requests() {
            let mark = request as u32 + 1;
            hit_tokens += plan.lookup(request, |node, _| {
                if !self.nodes[node as usize].present {
                    return false;
                }
                self.nodes[node as usize].mark = mark;
                self.touch(node);
                true
            });
            for e in plan.events_of(request) {
                let node = plan.node_for_event[e];
                if self.nodes[node as usize].present {
                    continue;
                }
                if self.size >= capacity && !self.evict(plan, mark) {
                    break;
                }
                let p = plan.parent[node as usize];
                if self.size >= capacity || !self.nodes[p as usize].present {
                    break;
                }
                self.insert(node, p);
                filled |= self.size >= capacity && request < plan.warmup_requests;
            }
        }
        (hit_tokens, filled)
    }

    #[inline]
    fn touch(&mut self, node: u32) {
        self.clock += 1;
        self.nodes[node as usize].stamp = self.clock;
        if self.nodes[node as usize].children == 0 {
            self.unlink(node);
            self.link_before(node, ROOT);
        }
    }

    #[inline]
    fn insert(&mut self, node: u32, parent: u32) {
        let p = &mut self.nodes[parent as usize];
        p.children += 1;
        if p.children == 1 && parent != ROOT {
            self.unlink(parent);
        }
        self.clock += 1;
        let n = &mut self.nodes[node as usize];
        n.present = true;
        n.stamp = self.clock;
        self.size += 1;
        self.link_before(node, ROOT);
    }

    /// Evicts the coldest leaf not on the current hit path; false if there is none.
    #[inline]
    fn evict(&mut self, plan: &PrefixPlan, mark: u32) -> bool {
        let mut victim = self.nodes[ROOT as usize].next;
        while victim != ROOT && self.nodes[victim as usize].mark == mark {
            victim = self.nodes[victim as usize].next;
        }
        if victim == ROOT {
            return false;
        }
        self.unlink(victim);
        self.nodes[victim as usize].present = false;
        self.size -= 1;
        let parent = plan.parent[victim as usize];
        self.nodes[parent as usize].children -= 1;
        if parent != ROOT && self.nodes[parent as usize].children == 0 {
            // Keep the list in stamp order; the parent is older than its evicted child, which was
            // the coldest unprotected leaf, so this stops after at most the protected leaf.
            let stamp = self.nodes[parent as usize].stamp;
            let mut at = self.nodes[ROOT as usize].next;
            while at != ROOT && self.nodes[at as usize].stamp < stamp {
                at = self.nodes[at as usize].next;
            }
            self.link_before(parent, at);
        }
        true
    }

    #[inline]
    fn unlink(&mut self, node: u32) {
        // Only present leaves are linked, and only they are ever unlinked.
        let LruNode { prev, next, .. } = self.nodes[node as usize];
        self.nodes[prev as usize].next = next;
        self.nodes[next as usize].prev = prev;
    }

    #[inline]
    fn link_before(&mut self, node: u32, at: u32) {
        let prev = self.nodes[at as usize].prev;
        self.nodes[node as usize].prev = prev;
        self.nodes[node as usize].next = at;
        self.nodes[prev as usize].next = node;
        self.nodes[at as usize].prev = node;
    }
}

/// FxHash (rustc's hasher): the edge map is keyed by small integers, so SipHash's DoS
/// resistance buys nothing and costs most of the plan-building time.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.write_u64(n as u64);
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests;
