//! Onboarding tickets: the runtime's handle on pages coming up into G1.

use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use super::Shared;
use crate::error::Result;
use crate::pool::BlockId;
use crate::prefix::BlockHash;

/// What an onboarding achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OnboardOutcome {
    /// Leading blocks that were already in G1 (held by the ticket).
    pub g1_hits: usize,
    /// Blocks brought up from G2.
    pub from_g2: usize,
    /// Blocks brought up from G3.
    pub from_g3: usize,
    /// Blocks asked for that could not be delivered (miss, corrupt or IO error): the prefix
    /// ends before the first of them.
    pub failed: usize,
}

impl OnboardOutcome {
    /// Leading blocks of the prefix now cached in G1 and held by the ticket.
    pub fn cached_blocks(&self) -> usize {
        self.g1_hits + self.from_g2 + self.from_g3
    }
}

#[derive(Default)]
struct Inner {
    done: Option<OnboardOutcome>,
    held: Vec<BlockId>,
    dropped: bool,
}

pub(crate) struct TicketState {
    inner: Mutex<Inner>,
    ready: Condvar,
}

impl TicketState {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }
}

/// The work a worker does for one ticket.
pub(crate) struct OnboardJob {
    pub(crate) blocks: Vec<BlockId>,
    pub(crate) hashes: Vec<BlockHash>,
    pub(crate) parent: Option<BlockHash>,
    pub(crate) outcome: OnboardOutcome,
    pub(crate) state: Arc<TicketState>,
}

/// A pending onboarding. Poll it or wait on it; once ready, admit the request (its prefix
/// now hits in G1), then drop the ticket to release the blocks it holds.
pub struct Ticket {
    state: Arc<TicketState>,
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
        self.state.lock().done
    }

    /// True once the copies are done.
    pub fn is_ready(&self) -> bool {
        self.poll().is_some()
    }

    /// Blocks until the copies are done.
    pub fn wait(&self) -> OnboardOutcome {
        let mut g = self.state.lock();
        loop {
            if let Some(o) = g.done {
                return o;
            }
            g = match self.state.ready.wait(g) {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
        }
    }

    /// Waits up to `timeout`; `None` if still pending.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<OnboardOutcome> {
        let g = self.state.lock();
        let (g, _) = match self.state.ready.wait_timeout_while(g, timeout, |i| i.done.is_none()) {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        g.done
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let held = {
            let mut g = self.state.lock();
            g.dropped = true;
            std::mem::take(&mut g.held)
        };
        // The references are ours; a failure here would mean a broken pool, already reported
        // by the invariant checks, and a destructor has nobody to return it to.
        let _ = self.shared.g1.lock().release_blocks(&held);
    }
}

/// Holds the leading G1 hits, allocates blocks for the run found only below, and returns the
/// ticket plus the job to run (none if nothing needs copying).
pub(crate) fn start(shared: &Arc<Shared>, hashes: &[BlockHash]) -> Result<(Ticket, Option<OnboardJob>)> {
    let state = Arc::new(TicketState { inner: Mutex::new(Inner::default()), ready: Condvar::new() });
    let ticket = Ticket { state: state.clone(), shared: shared.clone() };
    let mut held = Vec::new();
    let mut blocks = Vec::new();
    let (g1_hits, run) = {
        let mut core = shared.g1.lock();
        for &h in hashes {
            match core.hold_cached(h)? {
                Some(b) => held.push(b),
                None => break,
            }
        }
        let g1_hits = held.len();
        let run = hashes[g1_hits..]
            .iter()
            .take_while(|&&h| {
                !core.contains(h) && (shared.g2.contains(h) || shared.g3.as_ref().is_some_and(|d| d.contains(h)))
            })
            .count();
        if let Err(e) = core.begin_onboard(run, &mut blocks) {
            core.release_blocks(&held)?;
            return Err(e);
        }
        (g1_hits, run)
    };
    let outcome = OnboardOutcome { g1_hits, ..OnboardOutcome::default() };
    {
        let mut g = state.lock();
        g.held = held;
        if run == 0 {
            g.done = Some(outcome);
        }
    }
    if run == 0 {
        return Ok((ticket, None));
    }
    let job = OnboardJob {
        blocks,
        hashes: hashes[g1_hits..g1_hits + run].to_vec(),
        parent: g1_hits.checked_sub(1).map(|i| hashes[i]),
        outcome,
        state,
    };
    Ok((ticket, Some(job)))
}

/// Publishes a finished job: the blocks now held go to the ticket, or straight back to the
/// pool if the ticket was dropped meanwhile.
pub(crate) fn complete(shared: &Shared, job: &OnboardJob, held: Vec<BlockId>, outcome: OnboardOutcome) -> Result<()> {
    let orphaned = {
        let mut g = job.state.lock();
        g.done = Some(outcome);
        if g.dropped {
            Some(held)
        } else {
            g.held.extend(held);
            None
        }
    };
    job.state.ready.notify_all();
    match orphaned {
        Some(h) => shared.g1.lock().release_blocks(&h),
        None => Ok(()),
    }
}
