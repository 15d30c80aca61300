//! Replays of the tier policies: through the prefix-tree model with any [`EvictionPolicy`], or
//! through a real [`kvtier::BlockPool`].

use kvtier::BlockId;
use kvtier::policy::{EvictionPolicy, PolicyKind};

use super::{PrefixPlan, ROOT, SimPolicy, SimResult};

impl PrefixPlan {
    /// As [`PrefixPlan::simulate`], but tier policies run in a real pool
    /// ([`PrefixPlan::simulate_pool`]); FIFO and OPT, which exist only in the model, run there.
    pub fn simulate_in_pool(&self, policy: SimPolicy, capacity_blocks: u32) -> crate::Result<SimResult> {
        match policy.tier_policy() {
            Some(kind) if capacity_blocks > 0 => {
                let (hit_tokens, filled) = self.simulate_pool(kind, capacity_blocks)?;
                Ok(SimResult::new(policy, capacity_blocks, hit_tokens, self.measured_tokens, filled))
            }
            _ => Ok(self.simulate(policy, capacity_blocks)),
        }
    }

    /// Replays the trace with any tier [`EvictionPolicy`] built over entries
    /// `0..`[`PrefixPlan::nodes`]; returns the hit tokens and whether the cache filled during
    /// warm-up.
    ///
    /// The tree rules are those of the LRU/OPT replays: only leaves are evictable, the hit path
    /// of the current request is protected, a node whose last child is evicted becomes
    /// evictable again ([`EvictionPolicy::readmit`]). The policy sees a prefix hit on every node
    /// of the hit path ([`EvictionPolicy::on_hit`]) and registers each inserted node under a
    /// key unique to the node. With [`kvtier::policy::Lru`] this reproduces the exact LRU replay
    /// hit for hit on traces where every prompt ends in a new block (a test checks it); where a
    /// prompt ends inside the tree, a node it used can be readmitted colder than LRU would.
    pub fn simulate_with(&self, policy: &mut impl EvictionPolicy, capacity: u32) -> (u64, bool) {
        let n = self.parent.len();
        let mut present = vec![false; n];
        present[ROOT as usize] = true;
        let mut children = vec![0u32; n];
        let mut linked = vec![false; n];
        let (mut size, mut hit_tokens, mut filled) = (0u32, 0u64, false);
        for request in 0..self.requests() {
            let (mut hits, mut last) = (0usize, None);
            hit_tokens += self.lookup(request, |node, _| {
                if !present[node as usize] {
                    return false;
                }
                policy.on_hit(BlockId(node));
                hits += 1;
                last = Some(node);
                true
            });
            // The deepest hit node is the only hit node that can be a leaf: hold it.
            if let Some(l) = last
                && linked[l as usize]
            {
                policy.remove(BlockId(l));
                linked[l as usize] = false;
            }
            for e in self.events_of(request).skip(hits) {
                let node = self.node_for_event[e];
                if present[node as usize] {
                    continue;
                }
                if size >= capacity {
                    let Some(victim) = policy.pop_victim() else { break };
                    let v = victim.0 as usize;
                    linked[v] = false;
                    present[v] = false;
                    size -= 1;
                    let p = self.parent[v];
                    children[p as usize] -= 1;
                    if p != ROOT && children[p as usize] == 0 && Some(p) != last {
                        policy.readmit(BlockId(p));
                        linked[p as usize] = true;
                    }
                }
                let p = self.parent[node as usize];
                if size >= capacity || !present[p as usize] {
                    break;
                }
                if linked[p as usize] {
                    policy.remove(BlockId(p));
                    linked[p as usize] = false;
                }
                present[node as usize] = true;
                children[p as usize] += 1;
                size += 1;
                policy.on_register(BlockId(node), node as u64 + 1);
                policy.insert(BlockId(node));
                linked[node as usize] = true;
                filled |= size >= capacity && request < self.warmup_requests;
            }
            if let Some(l) = last
                && present[l as usize]
                && children[l as usize] == 0
                && !linked[l as usize]
            {
                policy.insert(BlockId(l));
                linked[l as usize] = true;
            }
        }
        (hit_tokens, filled)
    }

    /// Replays the trace through a real [`kvtier::BlockPool`] of `capacity_blocks` blocks (one per
    /// 512-token node) evicting with `kind`, instead of through the prefix-tree model: each
    /// request takes a reference on its longest cached prefix, allocates and registers the rest
    /// (evicting through the pool's policy; blocks in use are never evicted), then releases
    /// everything tail first. The pool knows nothing of the tree: a policy that gives up a
    /// parent before its child leaves the child unreachable, which costs hits here. Returns
    /// the hit tokens and whether the pool filled during warm-up.
    pub fn simulate_pool(&self, kind: PolicyKind, capacity_blocks: u32) -> crate::Result<(u64, bool)> {
        let capacity = capacity_blocks as usize;
        let mut pool = kvtier::BlockPool::with_policy(capacity, kind.build(capacity), 0)?;
        let (mut hit_tokens, mut filled) = (0u64, false);
        let hash = |node: u32| kvtier::BlockHash(node as u128 + 1);
        let mut held: Vec<BlockId> = Vec::new();
        for request in 0..self.requests() {
            held.clear();
            let events = self.events_of(request);
            let mut e = events.start;
            let mut tokens = 0u64;
            while e < events.end {
                let Some(b) = pool.lookup(hash(self.node_for_event[e])) else { break };
                pool.acquire_block(b)?;
                held.push(b);
                tokens += self.tokens[e] as u64;
                e += 1;
            }
            if request >= self.warmup_requests {
                hit_tokens += tokens;
            }
            let mut parent = e
                .checked_sub(1)
                .filter(|&p| p >= events.start)
                .map(|p| (hash(self.node_for_event[p]), held.last().copied()));
            while e < events.end {
                let Ok(b) = pool.allocate_one() else { break };
                held.push(b);
                let h = hash(self.node_for_event[e]);
                pool.register_linked(b, h, parent, self.tokens[e] as u32)?;
                parent = Some((h, Some(b)));
                e += 1;
            }
            filled |= request < self.warmup_requests && pool.num_free() == 0;
            pool.release_all(held.drain(..).rev())?;
        }
        Ok((hit_tokens, filled))
    }

    /// Prefix-tree nodes including the root: the universe a policy passed to
    /// [`PrefixPlan::simulate_with`] must cover.
    pub fn nodes(&self) -> usize {
        self.parent.len()
    }
}
