//! An offline bound for G3 admission: a rule that knows the rest of the trace.
//!
//! [`Oracle`] admits a page leaving G2 exactly when a request not yet admitted asks for it
//! again within a horizon of simulated time (any later request without one). No online filter
//! can beat it at its own write count by much, so a sweep of horizons answers "how few SSD
//! writes can reach this hit rate at all" on a given trace. It is built from every request's
//! prompt block hashes up front (about 24 bytes per prompt block of the trace), and it reads
//! the replay's clock, which the scheduler moves ([`OracleClock`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use kvtier::offload::AdmissionHook;
use kvtier::{BlockHash, ExtraKeys};

use super::prompt_tokens;
use crate::trace::Trace;

/// Where the replay is: its simulated time and the first request not admitted yet.
#[derive(Debug, Default)]
pub(crate) struct OracleClock {
    now_us: AtomicU64,
    first_pending: AtomicU32,
}

impl OracleClock {
    /// Moves the clock (relaxed: the replay runs the engine on its own thread).
    pub(crate) fn set(&self, now_us: u64, first_pending: u32) {
        self.now_us.store(now_us, Ordering::Relaxed);
        self.first_pending.store(first_pending, Ordering::Relaxed);
    }
}

/// Every use of every prompt block, by request index.
pub(crate) struct Oracle {
    uses: HashMap<u128, Vec<u32>>,
    arrival_us: Vec<u64>,
    horizon_us: u64,
    clock: Arc<OracleClock>,
}

impl Oracle {
    /// Indexes `trace`'s prompts in blocks of `block_size` tokens; `horizon_s` of `None`
    /// admits a page any later request asks for.
    pub(crate) fn new(trace: &Trace, block_size: usize, horizon_s: Option<f64>) -> Self {
        let keys = ExtraKeys::default();
        let (mut tokens, mut hashes) = (Vec::new(), Vec::new());
        let mut uses: HashMap<u128, Vec<u32>> = HashMap::new();
        for (i, record) in trace.records().iter().enumerate() {
            prompt_tokens(record, &mut tokens);
            hashes.clear();
            BlockHash::extend_chain(&mut hashes, &tokens, block_size, &keys);
            for h in &hashes {
                uses.entry(h.0).or_default().push(i as u32);
            }
        }
        let arrival_us = trace.records().iter().map(|r| r.timestamp_ms * 1000).collect();
        let horizon_us = horizon_s.map_or(u64::MAX, |s| (s * 1e6) as u64);
        Self { uses, arrival_us, horizon_us, clock: Arc::default() }
    }

    /// The clock the scheduler moves.
    pub(crate) fn clock(&self) -> Arc<OracleClock> {
        Arc::clone(&self.clock)
    }

    /// Whether a request not admitted yet asks for `h` within the horizon.
    pub(crate) fn admits(&self, h: BlockHash) -> bool {
        let Some(list) = self.uses.get(&h.0) else { return false };
        let first = self.clock.first_pending.load(Ordering::Relaxed);
        let now = self.clock.now_us.load(Ordering::Relaxed);
        let next = list.partition_point(|&i| i < first);
        list.get(next).is_some_and(|&i| self.arrival_us[i as usize] <= now.saturating_add(self.horizon_us))
    }

    /// The oracle as the engine's admission rule.
    pub(crate) fn hook(self: Arc<Self>) -> AdmissionHook {
        AdmissionHook::new(move |h, _uses| self.admits(h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceRecord;

    fn record(t_ms: u64, ids: &[u64]) -> TraceRecord {
        TraceRecord {
            timestamp_ms: t_ms,
            input_length: 512 * ids.len() as u32,
            output_length: 1,
            hash_ids: ids.to_vec(),
        }
    }

    #[test]
    fn admits_what_a_pending_request_asks_for_within_the_horizon() {
        let trace = Trace::from_records(vec![record(0, &[1, 2]), record(1_000, &[1]), record(100_000, &[1, 2])]);
        let oracle = Oracle::new(&trace, 16, Some(10.0));
        let hashes = |i: usize| {
            let mut tokens = Vec::new();
            prompt_tokens(&trace.records()[i], &mut tokens);
            let mut h = Vec::new();
            BlockHash::extend_chain(&mut h, &tokens, 16, &ExtraKeys::default());
            h
        };
        let (first, second) = (hashes(0), hashes(2));
        // block 0 of the first id: request 1 at 1 s; the second id's blocks only at 100 s
        let (head, tail) = (first[0], first[40]);
        oracle.clock.set(0, 1);
        assert!(oracle.admits(head));
        assert!(!oracle.admits(tail), "100 s is beyond a 10 s horizon");
        oracle.clock.set(95_000_000, 2);
        assert!(oracle.admits(head) && oracle.admits(second[40]));
        oracle.clock.set(100_000_000, 3);
        assert!(!oracle.admits(head), "nothing asks for it any more");
        assert!(!oracle.admits(BlockHash(7)), "never asked for");
        let unbounded = Oracle::new(&trace, 16, None);
        unbounded.clock.set(0, 1);
        assert!(unbounded.admits(tail));
    }
}
