//! Onboarding tickets: the runtime's handle on pages coming up into G1.
// Public for the loom models with the `testing` feature; crate-private in use otherwise.
#![cfg_attr(not(feature = "testing"), allow(unreachable_pub, dead_code))]

use std::time::{Duration, Instant};

use super::Shared;
use crate::error::Result;
use crate::pool::BlockId;
use crate::prefix::BlockHash;
use crate::sync::{Arc, Condvar, Mutex, MutexGuard, lock, wait, wait_timeout};

/// What an onboarding achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnboardOutcome {
    /// Leading blocks that were already in G1 (held by the ticket).
    pub g1_hits: usize,
    /// Blocks brought up from G2.
    pub from_g2: usize,
    /// Blocks brought up from G3.
    pub from_g3: usize,
    /// Blocks brought up from G4.
    pub from_g4: usize,
    /// Blocks asked for that could not be delivered (miss, corrupt or IO error): the prefix
    /// ends before the first of them.
    pub failed: usize,
    /// Leading blocks of the prefix now cached in G1 and held by the ticket.
    pub prefix_blocks: usize,
}

impl OnboardOutcome {
    /// Leading blocks of the prefix now cached in G1 and held by the ticket (what an
    /// `add_sequence` right now would share).
    pub fn cached_blocks(&self) -> usize {
        self.prefix_blocks
    }
}

#[derive(Default, Debug)]
struct Inner {
    done: Option<OnboardOutcome>,
    held: Vec<BlockId>,
    dropped: bool,
}

/// The state a [`Ticket`] shares with the worker that fills its blocks: the handoff of the
/// held blocks between the two sides. Whatever the order of [`TicketCell::complete`] (worker)
/// and [`TicketCell::abandon`] (ticket dropped), every block ends up returned by exactly one
/// of them, so the caller releases it exactly once. Exposed for the loom models
/// (`tests/loom_engine.rs`); the engine is its only other user.
///
/// ```
/// use kvtier::offload::{OnboardOutcome, TicketCell};
/// use kvtier::BlockId;
/// let cell = TicketCell::new();
/// cell.hold(vec![BlockId(0)], None);
/// assert_eq!(cell.poll(), None);
/// assert_eq!(cell.complete(OnboardOutcome::default(), vec![BlockId(1)]), None); // the ticket keeps them
/// assert!(cell.wait().failed == 0);
/// assert_eq!(cell.abandon(), vec![BlockId(0), BlockId(1)]); // dropped: release both
/// assert_eq!(cell.complete(OnboardOutcome::default(), vec![BlockId(2)]), Some(vec![BlockId(2)]));
/// ```
#[derive(Debug, Default)]
pub struct TicketCell {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl TicketCell {
    /// A pending ticket holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        lock(&self.inner)
    }

    /// Gives the ticket blocks to hold (the leading G1 hits) and, for a ticket with nothing
    /// to copy, its outcome at once.
    pub fn hold(&self, held: Vec<BlockId>, done: Option<OnboardOutcome>) {
        let mut g = self.lock();
        g.held.extend(held);
        if done.is_some() {
            g.done = done;
        }
        drop(g);
        if done.is_some() {
            self.ready.notify_all();
        }
    }

    /// The worker's side: publishes the outcome and hands over the blocks it filled. Returns
    /// them back (for the caller to release) if the ticket was already dropped.
    pub fn complete(&self, outcome: OnboardOutcome, held: Vec<BlockId>) -> Option<Vec<BlockId>> {
        let orphaned = {
            let mut g = self.lock();
            g.done = Some(outcome);
            if g.dropped {
                Some(held)
            } else {
                g.held.extend(held);
                None
            }
        };
        self.ready.notify_all();
        orphaned
    }

    /// The ticket's side when it is dropped: returns every block it holds (for the caller to
    /// release); blocks completed later are returned by [`TicketCell::complete`] instead.
    pub fn abandon(&self) -> Vec<BlockId> {
        let mut g = self.lock();
        g.dropped = true;
        std::mem::take(&mut g.held)
    }

    /// The outcome if the copies are done.
    pub fn poll(&self) -> Option<OnboardOutcome> {
        self.lock().done
    }

    /// Blocks until the copies are done.
    pub fn wait(&self) -> OnboardOutcome {
        let mut g = self.lock();
        loop {
            if let Some(o) = g.done {
                return o;
            }
            g = wait(&self.ready, g);
        }
    }

    /// Waits up to `timeout`; `None` if still pending.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<OnboardOutcome> {
        let deadline = Instant::now() + timeout;
        let mut g = self.lock();
        loop {
            if g.done.is_some() {
                return g.done;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            g = wait_timeout(&self.ready, g, left);
        }
    }
}

/// The work a worker does for one ticket.
pub(crate) struct OnboardJob {
    pub(crate) blocks: Vec<BlockId>,
    pub(crate) hashes: Vec<BlockHash>,
    /// Parent hash of each block (for its `Stored` event).
    pub(crate) parents: Vec<Option<BlockHash>>,
    /// G1 hits (held by the ticket) that follow each onboarded block in the prefix: they
    /// count towards the prefix only if that block arrives.
    pub(crate) g1_after: Vec<usize>,
    pub(crate) outcome: OnboardOutcome,
    pub(crate) state: Arc<TicketCell>,
}

/// A pending onboarding. Poll it or wait on it; once ready, admit the request (its prefix
/// now hits in G1), then drop the ticket to release the blocks it holds.
pub struct Ticket {
    state: Arc<TicketCell>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Ticket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticket").field("outcome", &self.poll()).finish()
    }
}

impl Ticket {
    /// The outcome if the copies are done.
    pub fn poll(&self) -> Option<OnboardOutcome> {
        self.state.poll()
    }

    /// True once the copies are done.
    pub fn is_ready(&self) -> bool {
        self.poll().is_some()
    }

    /// Blocks until the copies are done.
    pub fn wait(&self) -> OnboardOutcome {
        self.state.wait()
    }

    /// Waits up to `timeout`; `None` if still pending.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<OnboardOutcome> {
        self.state.wait_timeout(timeout)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let held = self.state.abandon();
        // The references are ours; a failure here would mean a broken pool, and a destructor
        // has nobody to return it to: it is counted with the engine's background errors.
        if self.shared.g1.lock().release_blocks(&held).is_err() {
            self.shared.worker_error();
        }
    }
}

/// Holds the leading G1 hits, allocates blocks for the run found only below, and returns the
/// ticket plus the job to run (none if nothing needs copying).
pub(crate) fn start(shared: &Arc<Shared>, hashes: &[BlockHash]) -> Result<(Ticket, Option<OnboardJob>)> {
    let state = Arc::new(TicketCell::new());
    let ticket = Ticket { state: state.clone(), shared: shared.clone() };
    let mut held = Vec::new();
    let mut blocks = Vec::new();
    let (mut wanted, mut parents, mut g1_after) = (Vec::new(), Vec::new(), Vec::new());
    let mut leading = 0;
    let mut parent = None;
    let mut walked = 0;
    {
        // Walk the prefix: G1 hits are held at once (so that allocating blocks for the rest
        // cannot evict them), blocks found only in G2/G3 are collected for onboarding, and the
        // walk stops at the first block no local tier has.
        let mut core = shared.g1.lock();
        for &h in hashes {
            if let Some(b) = core.hold_cached(h)? {
                held.push(b);
                match g1_after.last_mut() {
                    Some(n) => *n += 1,
                    None => leading += 1,
                }
            } else if shared.g2.contains(h) || shared.g3.as_ref().is_some_and(|d| d.contains(h)) {
                wanted.push(h);
                parents.push(parent);
                g1_after.push(0);
            } else {
                break;
            }
            parent = Some(h);
            walked += 1;
        }
    }
    if let Some(g4) = &shared.g4
        && walked < hashes.len()
    {
        // the run after it from the shared tier: one round trip, outside every lock
        for &h in &hashes[walked..walked + g4.contains_prefix(&hashes[walked..])] {
            wanted.push(h);
            parents.push(parent);
            g1_after.push(0);
            parent = Some(h);
        }
    }
    {
        let mut core = shared.g1.lock();
        if let Err(e) = core.begin_onboard(wanted.len(), &mut blocks) {
            core.release_blocks(&held)?;
            return Err(e);
        }
    }
    let outcome = OnboardOutcome { g1_hits: held.len(), prefix_blocks: leading, ..OnboardOutcome::default() };
    let run = wanted.len();
    state.hold(held, (run == 0).then_some(outcome));
    if run == 0 {
        return Ok((ticket, None));
    }
    let job = OnboardJob { blocks, hashes: wanted, parents, g1_after, outcome, state };
    Ok((ticket, Some(job)))
}

/// Publishes a finished job: the blocks now held go to the ticket, or straight back to the
/// pool if the ticket was dropped meanwhile.
pub(crate) fn complete(shared: &Shared, job: &OnboardJob, held: Vec<BlockId>, outcome: OnboardOutcome) -> Result<()> {
    match job.state.complete(outcome, held) {
        Some(h) => shared.g1.lock().release_blocks(&h),
        None => Ok(()),
    }
}
