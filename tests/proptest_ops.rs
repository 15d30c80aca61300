//! Random operation sequences on a small G1 pool, checked against a reference model.
//!
//! The model keeps, per live sequence, its tokens and how many of them are computed; it cannot
//! predict exactly which prefixes are still cached (eviction order is the cache's business), so
//! it checks what must hold whatever the cache evicts:
//! - after every step the cache's invariants hold, every live sequence has the model's tokens,
//!   computed count and a page table of `ceil(len / block_size)` distinct blocks;
//! - errors happen exactly when predicted (from state observable before the call) and a failed
//!   operation changes nothing;
//! - prefix hits only cover prefixes that were committed at some point, and the hit blocks are
//!   registered under the request's own hashes;
//! - page contents: when a sequence commits tokens, the test writes into each token's slot a
//!   pattern derived from (salt, every token up to and including it), as a runtime writes KV.
//!   Every computed token of every live sequence must then read back its own pattern, and every
//!   registered block must hold the pattern of its hash. So no wrong KV is ever served through
//!   a prefix hit, a fork, a copy-on-write or a truncation;
//! - a router applying the KV event stream always sees exactly the cached set.

use std::collections::{BTreeMap, HashMap, HashSet};

use kvtier::policy::PolicyKind;
use kvtier::{
    BatchTables, BlockHash, BlockId, BlockState, CacheConfig, CacheCore, CacheMetrics, Dtype, Error, ExtraKeys,
    KvCache, KvEventKind, KvLayout, SeqId,
};
use proptest::prelude::*;

const PREFIXES: [[u32; 12]; 3] = [
    [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
    [1, 2, 3, 4, 5, 6, 50, 51, 52, 53, 54, 55],
    [100, 101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111],
];
const SALTS: [&[u8]; 2] = [b"tenant-a", b"tenant-b"];

#[derive(Debug, Clone)]
enum Op {
    Add { prefix: usize, plen: usize, tail: Vec<u32>, salt: usize },
    Append { pick: usize, tokens: Vec<u32> },
    Commit { pick: usize },
    CommitUpTo { pick: usize, n: usize },
    Fork { pick: usize },
    Truncate { pick: usize, len: usize },
    Free { pick: usize },
    Lookup { prefix: usize, plen: usize, tail: Vec<u32>, salt: usize },
    Reset,
    Export { mask: u32 },
}

fn prompt_strategy() -> impl Strategy<Value = (usize, usize, Vec<u32>, usize)> {
    (0..3usize, 0..=12usize, prop::collection::vec(0u32..4, 0..6), 0..2usize)
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prompt_strategy().prop_map(|(prefix, plen, tail, salt)| Op::Add { prefix, plen, tail, salt }),
        5 => (any::<usize>(), prop::collection::vec(0u32..4, 0..6)).prop_map(|(pick, tokens)| Op::Append { pick, tokens }),
        4 => any::<usize>().prop_map(|pick| Op::Commit { pick }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(pick, n)| Op::CommitUpTo { pick, n }),
        2 => any::<usize>().prop_map(|pick| Op::Fork { pick }),
        2 => (any::<usize>(), any::<usize>()).prop_map(|(pick, len)| Op::Truncate { pick, len }),
        3 => any::<usize>().prop_map(|pick| Op::Free { pick }),
        2 => prompt_strategy().prop_map(|(prefix, plen, tail, salt)| Op::Lookup { prefix, plen, tail, salt }),
        1 => Just(Op::Reset),
        2 => any::<u32>().prop_map(|mask| Op::Export { mask }),
    ]
}

#[derive(Debug, Clone)]
struct Setup {
    block_size: u32,
    num_blocks: usize,
    watermark: f64,
    max_seq_len: usize,
    policy: PolicyKind,
}

fn setup_strategy() -> impl Strategy<Value = Setup> {
    (
        2u32..=4,
        8usize..=40,
        prop::sample::select(vec![0.0, 0.1, 0.25]),
        12usize..=40,
        prop::sample::select(PolicyKind::ALL.to_vec()),
    )
        .prop_map(|(block_size, num_blocks, watermark, max_seq_len, policy)| Setup {
            block_size,
            num_blocks,
            watermark,
            max_seq_len,
            policy,
        })
}

#[derive(Debug, Clone)]
struct MSeq {
    tokens: Vec<u32>,
    computed: usize,
    salt: usize,
}

fn keys(salt: usize) -> ExtraKeys {
    ExtraKeys::default().with_salt(SALTS[salt])
}

/// KV "content" of every position: depends on the salt and on every token up to it.
fn patterns(salt: usize, tokens: &[u32]) -> Vec<u64> {
    let mut h = 0x5eed_0000_0000_0001u64 ^ (salt as u64) << 40;
    tokens
        .iter()
        .map(|&t| {
            let x = (h ^ (t as u64 + 1)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
            h = (x ^ (x >> 29)) | 1;
            h
        })
        .collect()
}

struct Harness {
    cache: KvCache,
    bs: usize,
    capacity: usize,
    watermark_blocks: usize,
    max_seq_len: usize,
    bytes_per_token: usize,
    page_bytes: usize,
    live: BTreeMap<SeqId, MSeq>,
    order: Vec<SeqId>,
    freed: Vec<SeqId>,
    /// Every (salt, block-aligned prefix) committed at some point.
    committed_ever: HashSet<(usize, Vec<u32>)>,
    /// Content every block registered under a hash must hold.
    known: HashMap<BlockHash, Vec<u64>>,
    router: HashSet<BlockHash>,
    last_seq_no: u64,
    out: BatchTables,
    stats: Stats,
}

#[derive(Default, Debug)]
struct Stats {
    hits: usize,
    cows: usize,
    oob: usize,
}

type Fingerprint = (CacheMetrics, Vec<BlockHash>, Vec<(SeqId, Vec<BlockId>, Vec<u32>, usize)>);

impl Harness {
    fn new(s: &Setup) -> Self {
        let layout = KvLayout::new(1, 1, 4, Dtype::F32, s.block_size).unwrap();
        let cfg = CacheConfig::new(layout, s.num_blocks)
            .with_watermark(s.watermark)
            .with_max_seq_len(s.max_seq_len)
            .with_policy(s.policy);
        let cache = KvCache::new(cfg).unwrap();
        Self {
            cache,
            bs: s.block_size as usize,
            capacity: s.num_blocks,
            watermark_blocks: (s.num_blocks as f64 * s.watermark) as usize,
            max_seq_len: s.max_seq_len,
            bytes_per_token: layout.bytes_per_token(),
            page_bytes: layout.page_bytes(),
            live: BTreeMap::new(),
            order: Vec::new(),
            freed: Vec::new(),
            committed_ever: HashSet::new(),
            known: HashMap::new(),
            router: HashSet::new(),
            last_seq_no: 0,
            out: BatchTables::new(),
            stats: Stats::default(),
        }
    }

    /// A live sequence most of the time, a freed one sometimes (or when nothing is live).
    fn pick(&self, pick: usize) -> Option<SeqId> {
        if !self.freed.is_empty() && (pick.is_multiple_of(7) || self.order.is_empty()) {
            return Some(self.freed[(pick / 7) % self.freed.len()]);
        }
        if self.order.is_empty() {
            return None;
        }
        Some(self.order[(pick / 7) % self.order.len()])
    }

    fn prompt(prefix: usize, plen: usize, tail: &[u32]) -> Vec<u32> {
        let mut p = PREFIXES[prefix][..plen].to_vec();
        p.extend_from_slice(tail);
        p
    }

    fn fingerprint(g: &CacheCore, ids: &[SeqId]) -> Fingerprint {
        let tables = ids
            .iter()
            .map(|&s| {
                (s, g.block_table(s).unwrap().to_vec(), g.tokens(s).unwrap().to_vec(), g.num_computed(s).unwrap())
            })
            .collect();
        (g.metrics(), g.snapshot().hashes, tables)
    }

    /// References to each block held by live sequences, counted from their page tables.
    fn table_refs(g: &CacheCore, ids: &[SeqId]) -> HashMap<BlockId, usize> {
        let mut refs = HashMap::new();
        for &s in ids {
            for &b in g.block_table(s).unwrap() {
                *refs.entry(b).or_insert(0) += 1;
            }
        }
        refs
    }

    fn read_slot(&self, g: &CacheCore, b: BlockId, off: usize) -> u64 {
        let page = g.page(b).unwrap();
        let at = off * self.bytes_per_token;
        u64::from_le_bytes(page[at..at + 8].try_into().unwrap())
    }

    /// The runtime computes positions `from..to` of `seq` and writes their KV.
    fn write_kv(&self, g: &mut CacheCore, seq: SeqId, m: &MSeq, from: usize, to: usize) -> Result<(), TestCaseError> {
        let pats = patterns(m.salt, &m.tokens);
        let table = g.block_table(seq).unwrap().to_vec();
        let refs = Self::table_refs(g, &self.order);
        for pos in from..to {
            let b = table[pos / self.bs];
            let off = pos % self.bs;
            let at = off * self.bytes_per_token;
            let hashed = g.pool().hash_of(b).unwrap().is_some();
            if hashed {
                // registered pages are immutable: a sharer recomputing them must find its own KV
                prop_assert_eq!(self.read_slot(g, b, off), pats[pos], "registered {:?} pos {} differs", b, pos);
            } else if refs[&b] == 1 {
                prop_assert_eq!(g.pool().refcount(b).unwrap(), 1);
                g.page_mut(b).unwrap()[at..at + 8].copy_from_slice(&pats[pos].to_le_bytes());
            } else {
                // A block shared by forks that is not registered yet: the safe API refuses it,
                // a kernel writes it through the arena base (every holder has the same tokens
                // here, which the per-sequence content check verifies).
                prop_assert!(g.page_mut(b).is_err());
                let base = self.cache.arena_base().unwrap() as *mut u8;
                let bytes = pats[pos].to_le_bytes();
                // SAFETY: `b` is held by live sequences (so it is in the arena and not being
                // reused), the cache's lock is held by `g`, no slice of the page is alive, and
                // `at + 8 <= page_bytes`.
                unsafe {
                    std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(b.index() * self.page_bytes + at), 8);
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let cache = &self.cache;
        let mut g = cache.lock();
        let ids = self.order.clone();
        let before = Self::fingerprint(&g, &ids);
        let bs = self.bs;
        // Some(error) when the op failed; the cache must then be unchanged
        let failed: Option<Error> = match op {
            Op::Add { prefix, plen, tail, salt } => {
                let p = Self::prompt(*prefix, *plen, tail);
                let k = keys(*salt);
                let mut hs = Vec::new();
                g.hash_tokens(&p, &k, &mut hs);
                let max_hit = p.len().saturating_sub(1) / bs;
                let mut hits = 0;
                let mut reviving = 0;
                for h in &hs[..max_hit] {
                    let Some(b) = g.pool().lookup(*h) else { break };
                    hits += 1;
                    reviving += (g.pool().state(b).unwrap() == BlockState::Evictable) as usize;
                }
                let need = p.len().div_ceil(bs) - hits;
                let avail = (before.0.free + before.0.evictable - reviving).saturating_sub(self.watermark_blocks);
                let most = g.pool().capacity().saturating_sub(self.watermark_blocks);
                let never = p.len().div_ceil(bs) > most;
                match g.add_sequence(&p, &k) {
                    Ok(a) => {
                        prop_assert!(p.len() <= self.max_seq_len && !never);
                        prop_assert!(need <= avail, "admitted {} blocks with {} available", need, avail);
                        prop_assert_eq!(a.cached_tokens, hits * bs);
                        prop_assert_eq!(a.new_blocks, need);
                        prop_assert!(a.cached_tokens == 0 || a.cached_tokens < p.len());
                        if a.cached_tokens > 0 {
                            self.stats.hits += 1;
                            prop_assert!(
                                self.committed_ever.contains(&(*salt, p[..a.cached_tokens].to_vec())),
                                "hit on a prefix never committed"
                            );
                        }
                        let table = g.block_table(a.seq).unwrap();
                        for i in 0..hits {
                            prop_assert_eq!(g.pool().hash_of(table[i]).unwrap(), Some(hs[i]));
                        }
                        prop_assert!(!self.live.contains_key(&a.seq) && !self.freed.contains(&a.seq), "id reused");
                        self.live.insert(a.seq, MSeq { tokens: p, computed: a.cached_tokens, salt: *salt });
                        self.order.push(a.seq);
                        None
                    }
                    Err(e) => {
                        match e {
                            Error::SequenceTooLong { requested, max } => {
                                prop_assert!(p.len() > self.max_seq_len);
                                prop_assert_eq!((requested, max), (p.len(), self.max_seq_len));
                            }
                            Error::NeverFits { requested, capacity } => {
                                prop_assert!(p.len() <= self.max_seq_len && never);
                                prop_assert_eq!((requested, capacity), (p.len().div_ceil(bs), most));
                            }
                            Error::OutOfBlocks { requested, available } => {
                                self.stats.oob += 1;
                                prop_assert!(p.len() <= self.max_seq_len && !never);
                                prop_assert!(need > avail, "refused {} blocks with {} available", need, avail);
                                prop_assert_eq!((requested, available), (need, avail));
                            }
                            ref other => prop_assert!(false, "unexpected {:?}", other),
                        }
                        Some(e)
                    }
                }
            }
            Op::Append { pick, tokens } => {
                let Some(s) = self.pick(*pick) else { return Ok(()) };
                // what the copy-on-write decision depends on, observed before the call
                let refs = Self::table_refs(&g, &ids);
                let last = g.block_table(s).ok().and_then(|t| t.last().copied());
                let last_hashed = last.is_some_and(|b| g.pool().hash_of(b).unwrap().is_some());
                let last_page = last.map(|b| g.page(b).unwrap().to_vec());
                let res = g.append_tokens(s, tokens);
                match self.live.get_mut(&s) {
                    None => {
                        prop_assert!(matches!(res, Err(Error::UnknownSequence(x)) if x == s), "{:?}", res);
                        res.err()
                    }
                    Some(m) => {
                        let old_len = m.tokens.len();
                        let new_len = old_len + tokens.len();
                        let old_table = before.2.iter().find(|t| t.0 == s).unwrap().1.clone();
                        let need = new_len.div_ceil(bs) - old_len.div_ceil(bs);
                        let partial = old_len % bs;
                        let shared = match last {
                            Some(last) if partial != 0 && !tokens.is_empty() => refs[&last] > 1 || last_hashed,
                            _ => false,
                        };
                        let want = need + shared as usize;
                        let avail = before.0.free + before.0.evictable;
                        let never = old_table.len() + want > g.pool().capacity();
                        match res {
                            Ok(out) => {
                                prop_assert!(new_len <= self.max_seq_len && !never);
                                prop_assert!(want <= avail);
                                prop_assert_eq!(out.new_blocks, need);
                                prop_assert_eq!(out.copy.is_some(), shared, "copy-on-write expected: {}", shared);
                                let table = g.block_table(s).unwrap().to_vec();
                                prop_assert_eq!(table.len(), new_len.div_ceil(bs));
                                let n_old = old_table.len();
                                if let Some(c) = out.copy {
                                    self.stats.cows += 1;
                                    prop_assert_eq!(c.src, old_table[n_old - 1]);
                                    prop_assert_eq!(c.dst, table[n_old - 1]);
                                    prop_assert_eq!(c.tokens as usize, partial);
                                    prop_assert!(!old_table.contains(&c.dst));
                                    prop_assert_eq!(&table[..n_old - 1], &old_table[..n_old - 1]);
                                    // the arena page was copied (dst is private and unwritten since)
                                    prop_assert_eq!(g.page(c.dst).unwrap(), &last_page.clone().unwrap()[..]);
                                } else {
                                    prop_assert_eq!(&table[..n_old], &old_table[..]);
                                }
                                m.tokens.extend_from_slice(tokens);
                                None
                            }
                            Err(e) => {
                                match e {
                                    Error::SequenceTooLong { .. } => prop_assert!(new_len > self.max_seq_len),
                                    Error::NeverFits { requested, .. } => {
                                        prop_assert!(new_len <= self.max_seq_len && never);
                                        prop_assert_eq!(requested, old_table.len() + want);
                                    }
                                    Error::OutOfBlocks { requested, .. } => {
                                        self.stats.oob += 1;
                                        prop_assert!(new_len <= self.max_seq_len && !never);
                                        prop_assert!(want > avail, "refused {} blocks with {} available", want, avail);
                                        prop_assert_eq!(requested, want);
                                    }
                                    ref other => prop_assert!(false, "unexpected {:?}", other),
                                }
                                Some(e)
                            }
                        }
                    }
                }
            }
            Op::Commit { pick } | Op::CommitUpTo { pick, .. } => {
                let Some(s) = self.pick(*pick) else { return Ok(()) };
                match self.live.get(&s).cloned() {
                    None => {
                        let res = g.commit(s);
                        prop_assert!(matches!(res, Err(Error::UnknownSequence(x)) if x == s), "{:?}", res);
                        res.err()
                    }
                    Some(m) => {
                        let len = m.tokens.len();
                        let n = match op {
                            Op::CommitUpTo { n, .. } => n % (len + 2),
                            _ => len,
                        };
                        if n > len {
                            let res = g.commit_up_to(s, n);
                            prop_assert!(
                                matches!(res, Err(Error::BeyondEnd { requested, len: l }) if requested == n && l == len),
                                "{:?}",
                                res
                            );
                            res.err()
                        } else {
                            if n > m.computed {
                                self.write_kv(&mut g, s, &m, m.computed, n)?;
                            }
                            let res = if n == len && matches!(op, Op::Commit { .. }) {
                                g.commit(s)
                            } else {
                                g.commit_up_to(s, n)
                            };
                            let registered = res.unwrap();
                            prop_assert!(registered <= n / bs);
                            let pats = patterns(m.salt, &m.tokens);
                            let mut hs = Vec::new();
                            g.hash_tokens(&m.tokens[..n / bs * bs], &keys(m.salt), &mut hs);
                            for (j, h) in hs.iter().enumerate() {
                                self.committed_ever.insert((m.salt, m.tokens[..(j + 1) * bs].to_vec()));
                                let want = pats[j * bs..(j + 1) * bs].to_vec();
                                let prev = self.known.entry(*h).or_insert_with(|| want.clone());
                                prop_assert_eq!(&*prev, &want, "one hash, two contents");
                            }
                            let mm = self.live.get_mut(&s).unwrap();
                            mm.computed = mm.computed.max(n);
                            None
                        }
                    }
                }
            }
            Op::Fork { pick } => {
                let Some(s) = self.pick(*pick) else { return Ok(()) };
                let res = g.fork(s);
                match self.live.get(&s).cloned() {
                    None => {
                        prop_assert!(matches!(res, Err(Error::UnknownSequence(x)) if x == s), "{:?}", res);
                        res.err()
                    }
                    Some(m) => {
                        let c = res.unwrap();
                        prop_assert_eq!(g.block_table(c).unwrap(), g.block_table(s).unwrap());
                        self.live.insert(c, m);
                        self.order.push(c);
                        None
                    }
                }
            }
            Op::Truncate { pick, len } => {
                let Some(s) = self.pick(*pick) else { return Ok(()) };
                match self.live.get_mut(&s) {
                    None => {
                        let res = g.truncate(s, *len % 8);
                        prop_assert!(matches!(res, Err(Error::UnknownSequence(x)) if x == s), "{:?}", res);
                        res.err()
                    }
                    Some(m) => {
                        let l = *len % (m.tokens.len() + 2);
                        let res = g.truncate(s, l);
                        if l > m.tokens.len() {
                            prop_assert!(matches!(res, Err(Error::BeyondEnd { .. })), "{:?}", res);
                            res.err()
                        } else {
                            res.unwrap();
                            m.tokens.truncate(l);
                            m.computed = m.computed.min(l);
                            None
                        }
                    }
                }
            }
            Op::Free { pick } => {
                let Some(s) = self.pick(*pick) else { return Ok(()) };
                let res = g.free(s);
                if self.live.remove(&s).is_some() {
                    res.unwrap();
                    self.order.retain(|x| *x != s);
                    self.freed.push(s);
                    None
                } else {
                    prop_assert!(matches!(res, Err(Error::UnknownSequence(x)) if x == s), "{:?}", res);
                    res.err()
                }
            }
            Op::Lookup { prefix, plen, tail, salt } => {
                let p = Self::prompt(*prefix, *plen, tail);
                let mut hs = Vec::new();
                g.hash_tokens(&p, &keys(*salt), &mut hs);
                prop_assert_eq!(hs.len(), p.len() / bs);
                let expect = hs.iter().take_while(|h| g.pool().lookup(**h).is_some()).count();
                let n = g.longest_prefix(&hs);
                prop_assert_eq!(n, expect);
                if n > 0 {
                    prop_assert!(self.committed_ever.contains(&(*salt, p[..n * bs].to_vec())));
                }
                let m = g.metrics();
                prop_assert_eq!(m.prefix_queries - before.0.prefix_queries, hs.len() as u64);
                prop_assert_eq!(m.prefix_hits - before.0.prefix_hits, n as u64);
                None
            }
            Op::Reset => {
                let idle = self.live.values().all(|m| m.tokens.is_empty());
                let done = g.reset_prefix_cache();
                prop_assert_eq!(done, idle);
                if done {
                    prop_assert!(g.snapshot().hashes.is_empty());
                    prop_assert_eq!(g.metrics().evictable, 0);
                    prop_assert_eq!(g.metrics().free, self.capacity);
                } else {
                    prop_assert_eq!(Self::fingerprint(&g, &ids), before.clone());
                }
                None
            }
            Op::Export { mask } => {
                let batch: Vec<SeqId> =
                    ids.iter().enumerate().filter(|(i, _)| mask & (1 << (i % 32)) != 0).map(|(_, s)| *s).collect();
                let mut out = std::mem::take(&mut self.out);
                g.export_batch(&batch, &mut out).unwrap();
                let width = batch.iter().map(|s| self.live[s].tokens.len().div_ceil(bs)).max().unwrap_or(0);
                prop_assert_eq!(out.num_rows(), batch.len());
                prop_assert_eq!(out.row_width(), width);
                prop_assert_eq!(out.block_table().len(), batch.len() * width);
                prop_assert_eq!(out.query_start().len(), batch.len() + 1);
                prop_assert_eq!(out.query_start()[0], 0);
                let mut slot = 0usize;
                for (i, s) in batch.iter().enumerate() {
                    let m = &self.live[s];
                    let table = g.block_table(*s).unwrap();
                    prop_assert_eq!(out.seq_lens()[i] as usize, m.tokens.len());
                    if width > 0 {
                        let row = out.row(i).unwrap();
                        for (j, &x) in row.iter().enumerate() {
                            prop_assert_eq!(x, table.get(j).map_or(BatchTables::PAD, |b| b.0 as i32));
                        }
                    }
                    for pos in m.computed..m.tokens.len() {
                        let want = (table[pos / bs].0 as usize * bs + pos % bs) as i64;
                        prop_assert_eq!(out.slot_mapping()[slot], want);
                        slot += 1;
                    }
                    prop_assert_eq!(out.query_start()[i + 1] as usize, slot);
                }
                prop_assert_eq!(out.slot_mapping().len(), slot);
                prop_assert_eq!(out.slot_mapping_bytes().len(), slot * 8);
                prop_assert_eq!(out.block_table_bytes().len(), batch.len() * width * 4);
                prop_assert_eq!(out.seq_lens_bytes().len(), batch.len() * 4);
                self.out = out;
                None
            }
        };
        if let Some(e) = failed {
            prop_assert_eq!(&Self::fingerprint(&g, &ids), &before, "failed op {:?} ({}) changed the cache", op, e);
        }
        drop(g);
        self.check()
    }

    /// Everything that must hold after every step.
    fn check(&mut self) -> Result<(), TestCaseError> {
        let mut g = self.cache.lock();
        if let Err(e) = g.check_invariants() {
            prop_assert!(false, "invariant broken: {}", e);
        }
        let m = g.metrics();
        prop_assert_eq!(m.sequences, self.live.len());
        prop_assert_eq!(m.free + m.in_use + m.evictable, self.capacity);
        let refs = Self::table_refs(&g, &self.order);
        prop_assert_eq!(m.in_use, refs.len());
        for (s, ms) in &self.live {
            prop_assert_eq!(g.tokens(*s).unwrap(), &ms.tokens[..]);
            prop_assert_eq!(g.num_computed(*s).unwrap(), ms.computed);
            let table = g.block_table(*s).unwrap();
            prop_assert_eq!(table.len(), ms.tokens.len().div_ceil(self.bs));
            let distinct: HashSet<_> = table.iter().collect();
            prop_assert_eq!(distinct.len(), table.len(), "a block twice in one table");
            // every computed token reads back its own KV
            let pats = patterns(ms.salt, &ms.tokens);
            for (pos, pat) in pats.iter().enumerate().take(ms.computed) {
                let b = table[pos / self.bs];
                let got = self.read_slot(&g, b, pos % self.bs);
                prop_assert_eq!(got, *pat, "{:?} pos {} in {:?}: wrong KV", s, pos, b);
            }
        }
        // every registered block holds the content of its hash
        for i in 0..self.capacity {
            let b = BlockId(i as u32);
            if let Some(h) = g.pool().hash_of(b).unwrap() {
                prop_assert!(g.pool().state(b).unwrap() != BlockState::Free);
                let want = self.known.get(&h);
                prop_assert!(want.is_some(), "{:?} registered under a hash never committed", b);
                for (off, pat) in want.unwrap().iter().enumerate() {
                    prop_assert_eq!(self.read_slot(&g, b, off), *pat, "cached {:?} slot {} was overwritten", b, off);
                }
            }
        }
        // a router following the event stream sees exactly the cached set
        let mut ev = Vec::new();
        g.drain_events(&mut ev);
        for e in &ev {
            prop_assert_eq!(e.seq_no, self.last_seq_no + 1);
            self.last_seq_no = e.seq_no;
            match e.kind {
                KvEventKind::Stored { hash, parent, block, num_tokens } => {
                    prop_assert!(self.router.insert(hash), "stored twice");
                    prop_assert_eq!(num_tokens as usize, self.bs);
                    if let Some(p) = parent {
                        prop_assert!(self.known.contains_key(&p));
                    }
                    prop_assert!(self.known.contains_key(&hash));
                    let _ = block;
                }
                KvEventKind::Removed { hash } => prop_assert!(self.router.remove(&hash), "removed unknown"),
                KvEventKind::AllCleared => self.router.clear(),
            }
        }
        let snap = g.snapshot();
        prop_assert_eq!(snap.last_seq_no, self.last_seq_no);
        let truth: HashSet<BlockHash> = snap.hashes.iter().copied().collect();
        prop_assert_eq!(truth.len(), snap.hashes.len());
        prop_assert_eq!(&truth, &self.router);
        prop_assert_eq!(m.events_dropped, 0);
        Ok(())
    }
}

fn run(setup: &Setup, ops: &[Op]) -> Result<Stats, TestCaseError> {
    let mut h = Harness::new(setup);
    for op in ops {
        h.apply(op)?;
    }
    // tear down: freeing everything leaves no block in use, and the cached set survives
    for s in std::mem::take(&mut h.order) {
        h.cache.free(s).unwrap();
        h.live.remove(&s);
        h.freed.push(s);
    }
    h.check()?;
    prop_assert_eq!(h.cache.metrics().in_use, 0);
    Ok(h.stats)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, max_shrink_iters: 4096, ..ProptestConfig::default() })]

    #[test]
    fn random_operations_match_the_model(setup in setup_strategy(), ops in prop::collection::vec(op_strategy(), 1..200)) {
        run(&setup, &ops)?;
    }
}

/// The random operations must actually reach the interesting paths.
#[test]
fn random_operations_exercise_hits_cows_and_exhaustion() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let mut total = Stats::default();
    for _ in 0..64 {
        let setup = setup_strategy().new_tree(&mut runner).unwrap().current();
        let ops = prop::collection::vec(op_strategy(), 100..120).new_tree(&mut runner).unwrap().current();
        let s = run(&setup, &ops).unwrap();
        total.hits += s.hits;
        total.cows += s.cows;
        total.oob += s.oob;
    }
    assert!(total.hits > 50, "{total:?}");
    assert!(total.cows > 20, "{total:?}");
    assert!(total.oob > 10, "{total:?}");
}
