//! Staged copies: pages pinned by their owner (G1's cache, G2's host tier) while a worker
//! copies them down a tier, expressed as a lease type.
//!
//! 1. The owner stages a batch under its lock (the pages stay registered and shareable, but
//!    cannot be evicted or reused) and hands it out as [`StagedCopies`], which holds a
//!    [`PageRead`] lease of every page: the pages cannot be written while it lives.
//! 2. The worker reads the pages through it ([`StagedCopies::page`]: the borrow cannot
//!    outlive the batch) and records each page's [`CopyOutcome`].
//! 3. [`StagedCopies::finish`] (or dropping the batch, on any early return or unwind) first
//!    ends every page lease, then hands every page back to its owner with its outcome under
//!    one lock. A page can therefore never be unstaged while it is read, and an error in the
//!    middle of a copy loop can no longer leave pages pinned forever.

use crate::error::Result;
use crate::pool::{Arena, BlockId, PageRead};
use crate::prefix::BlockHash;

/// How a staged copy ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum CopyOutcome {
    /// Not copied (failed, deferred, or not attempted): the page goes back to its owner's
    /// eviction order, still owed to the tier below.
    #[default]
    Kept,
    /// The tier below holds the content now: the page can be evicted at no loss.
    Backed,
    /// The tier below declined the content (admission): the page is evicted early.
    Declined,
}

/// The owner of staged pages: takes them back when their copies end.
pub(crate) trait StageOwner: Sync {
    /// Ends the copies of `done` (block, outcome) under one acquisition of the owner's lock.
    fn end_copies(&self, done: &[(BlockId, CopyOutcome)]) -> Result<()>;
}

struct Staged<'a> {
    block: BlockId,
    hash: BlockHash,
    page: PageRead<'a>,
    outcome: CopyOutcome,
}

/// A batch of staged pages, each under a read lease; see the module docs.
pub(crate) struct StagedCopies<'a> {
    owner: &'a dyn StageOwner,
    staged: Vec<Staged<'a>>,
    /// Pages handed back already (their lease was refused).
    refused: usize,
}

impl<'a> StagedCopies<'a> {
    /// Takes a read lease of every staged page of `arena`. A page whose lease is refused (a
    /// bookkeeping bug would have to let a writer at it) is handed back at once as
    /// [`CopyOutcome::Kept`] and left out of the batch.
    pub(crate) fn lease(
        owner: &'a dyn StageOwner,
        arena: &'a Arena,
        staged: Vec<(BlockId, BlockHash)>,
    ) -> Result<Self> {
        let mut leased = Vec::with_capacity(staged.len());
        let mut refused = Vec::new();
        for (block, hash) in staged {
            match arena.read(block) {
                Ok(page) => leased.push(Staged { block, hash, page, outcome: CopyOutcome::Kept }),
                Err(_) => refused.push((block, CopyOutcome::Kept)),
            }
        }
        let batch = Self { owner, staged: leased, refused: refused.len() };
        if !refused.is_empty() {
            owner.end_copies(&refused)?;
        }
        Ok(batch)
    }

    /// Pages in the batch.
    pub(crate) fn len(&self) -> usize {
        self.staged.len()
    }

    /// Whether the batch holds no page.
    pub(crate) fn is_empty(&self) -> bool {
        self.staged.is_empty()
    }

    /// Pages staged but handed back at once because their lease was refused.
    pub(crate) fn refused(&self) -> usize {
        self.refused
    }

    /// Hash of page `i`.
    pub(crate) fn hash(&self, i: usize) -> BlockHash {
        self.staged[i].hash
    }

    /// Bytes of page `i`; immutable while the batch lives.
    pub(crate) fn page(&self, i: usize) -> &[u8] {
        &self.staged[i].page
    }

    /// Records how the copy of page `i` ended (default [`CopyOutcome::Kept`]).
    pub(crate) fn set(&mut self, i: usize, outcome: CopyOutcome) {
        self.staged[i].outcome = outcome;
    }

    /// Ends every lease, then hands every page back to its owner with its outcome.
    pub(crate) fn finish(mut self) -> Result<()> {
        self.end()
    }

    fn end(&mut self) -> Result<()> {
        if self.staged.is_empty() {
            return Ok(());
        }
        // Draining drops each page's lease before the owner may reuse the page.
        let done: Vec<(BlockId, CopyOutcome)> = self.staged.drain(..).map(|s| (s.block, s.outcome)).collect();
        self.owner.end_copies(&done)
    }
}

impl Drop for StagedCopies<'_> {
    fn drop(&mut self) {
        // Reached with pages left only on an early return or unwind: the error that caused
        // it is already on its way to the caller, and a failure here can only mean the
        // owner's bookkeeping is broken, which its invariant checks report.
        let ended = self.end();
        debug_assert!(ended.is_ok(), "staged copies could not be handed back: {ended:?}");
    }
}

impl std::fmt::Debug for StagedCopies<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StagedCopies").field("pages", &self.staged.len()).finish()
    }
}
