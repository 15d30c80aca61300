//! The one error type of kvtier.
//!
//! Every variant is structured so that a caller can act on it (retry after preempting, drop a
//! request, report a corrupt slot) without parsing a message.

use crate::ids::BlockId;
use crate::prefix::BlockHash;
use crate::seq::SeqId;

/// Result alias used throughout kvtier.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which storage tier an error or metric refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tier {
    /// The fast pool (stands in for GPU HBM).
    G1,
    /// Host DRAM.
    G2,
    /// SSD-backed slab files.
    G3,
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Tier::G1 => "G1",
            Tier::G2 => "G2",
            Tier::G3 => "G3",
        })
    }
}

/// What a G1 block is, as far as a call on it cares: what [`Error::WrongBlockState`] found,
/// and what the call needed. [`crate::BlockPool::condition`] tells a block's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BlockCondition {
    /// In the free queue: holds nothing, nobody may touch its page.
    Free,
    /// Cached without a reference (evictable): its content is final, a prefix hit revives it.
    Cached,
    /// Held by exactly one reference and not committed: its holder writes its KV.
    Writable,
    /// Held by more than one reference (a prefix hit or a fork): read-only.
    Shared,
    /// Committed: registered under its hash and in use; its content is final.
    Committed,
    /// Pinned by a copy down to a lower tier.
    Copying,
    /// Being filled by an onboarding copy from a lower tier.
    Onboarding,
    /// (needed) Held by at least one reference.
    InUse,
    /// (needed) Holding data: in use or cached.
    HoldingData,
    /// (needed) Holding data that no copy is filling: in use or cached, not onboarding.
    Readable,
}

impl std::fmt::Display for BlockCondition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BlockCondition::Free => "free",
            BlockCondition::Cached => "cached without a reference",
            BlockCondition::Writable => "writable (held by one reference, not committed)",
            BlockCondition::Shared => "shared (held by more than one reference)",
            BlockCondition::Committed => "committed (its content is final)",
            BlockCondition::Copying => "pinned by a copy to a lower tier",
            BlockCondition::Onboarding => "being filled from a lower tier",
            BlockCondition::InUse => "in use",
            BlockCondition::HoldingData => "holding data (in use or cached)",
            BlockCondition::Readable => "readable (in use or cached, not being filled)",
        })
    }
}

/// Everything that can go wrong in kvtier.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A layout or configuration field is zero, out of range or overflows. Where the value is
    /// known, [`Error::OutOfRange`] or [`Error::UnknownName`] is given instead, with the value
    /// and what is accepted; [`Error::config_field`] covers all three.
    #[error("invalid configuration: {field} {reason}")]
    InvalidConfig {
        /// The offending field.
        field: &'static str,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// A configuration field has a value outside what is accepted.
    #[error("invalid configuration: {field} = {value} is not accepted (expected {expected})")]
    OutOfRange {
        /// The offending field.
        field: &'static str,
        /// The value given, as it would be written in the configuration.
        value: String,
        /// What is accepted, as a range or a rule ("1..=64", "in [0, 1)").
        expected: &'static str,
    },
    /// A name (a layout preset, ...) is not one kvtier knows.
    #[error("invalid configuration: unknown {field} {name:?} (known: {})", known.join(", "))]
    UnknownName {
        /// What the name names ("layout preset", ...).
        field: &'static str,
        /// The name given.
        name: String,
        /// Every name accepted.
        known: &'static [&'static str],
    },
    /// Not enough free or evictable blocks now; nothing was changed. Waiting helps: blocks held
    /// by running sequences, or pinned while the engine copies them to a lower tier, come back
    /// when those finish. A request that could never fit is [`Error::NeverFits`] instead.
    #[error("out of blocks: requested {requested}, available {available}")]
    OutOfBlocks {
        /// Blocks the operation needed.
        requested: usize,
        /// Blocks that could have been handed out (free + evictable, minus reserve).
        available: usize,
    },
    /// More blocks than the tier could hand out even with nothing else in it (its capacity,
    /// less the reserve kept for running sequences where one applies); nothing was changed.
    /// Waiting does not help: the request must be refused or split.
    #[error("never fits: requested {requested} blocks, the most this tier can ever hand out is {capacity}")]
    NeverFits {
        /// Blocks the operation needed.
        requested: usize,
        /// The most it could ever be given.
        capacity: usize,
    },
    /// The sequence was already freed (ids are never reused).
    #[error("unknown or freed sequence {0:?}")]
    UnknownSequence(SeqId),
    /// The sequence id was issued by another cache: ids are only valid on the cache that
    /// issued them.
    #[error("sequence {0:?} belongs to another cache")]
    ForeignSequence(SeqId),
    /// A batch call named the same sequence more than once; nothing was changed.
    #[error("sequence {0:?} appears more than once in the batch")]
    DuplicateSequence(SeqId),
    /// The block id is outside the pool.
    #[error("invalid block id {block:?} (pool has {capacity} blocks)")]
    InvalidBlock {
        /// The id given.
        block: BlockId,
        /// Number of blocks in the pool.
        capacity: usize,
    },
    /// The block exists but is not in the state the call needs (a write to a committed,
    /// shared or free block, a read of a free one, ...); nothing was changed.
    #[error("block {block:?} is {found}, but this call needs it {needed}")]
    WrongBlockState {
        /// The block.
        block: BlockId,
        /// What it is now.
        found: BlockCondition,
        /// What the call needs it to be.
        needed: BlockCondition,
    },
    /// A block was released that holds no reference.
    #[error("block {0:?} freed twice (refcount already zero)")]
    DoubleFree(BlockId),
    /// Appending would make the sequence longer than the configured maximum.
    #[error("sequence too long: {requested} tokens, max {max}")]
    SequenceTooLong {
        /// Length the sequence would have had.
        requested: usize,
        /// Configured maximum length.
        max: usize,
    },
    /// A truncate or commit named a position beyond the sequence's current length.
    #[error("position {requested} is beyond the end of a sequence of {len} tokens")]
    BeyondEnd {
        /// Length asked for.
        requested: usize,
        /// Current length.
        len: usize,
    },
    /// A batch call got lists of different lengths.
    #[error("batch mismatch: {sequences} sequences but {items} items")]
    BatchMismatch {
        /// Sequences given.
        sequences: usize,
        /// Items (tokens, ...) given.
        items: usize,
    },
    /// Data built for one layout was given to a cache or tier with another.
    #[error("layout mismatch: expected {expected} bytes per page, got {actual}")]
    LayoutMismatch {
        /// Page size this object was built with.
        expected: usize,
        /// Page size of what was given.
        actual: usize,
    },
    /// The cache was built without a page arena (metadata-only mode).
    #[error("this cache has no page memory (metadata-only mode)")]
    NoArena,
    /// A page lease conflicts with one alive: a write while the page is leased, or a read
    /// while it is written. Nothing was accessed; the page's owner is moving it (a copy to or
    /// from another tier is in flight), so retry once that is done.
    #[error("{tier} page {block:?} is in use by a conflicting lease")]
    PageBusy {
        /// Tier of the page.
        tier: Tier,
        /// The page.
        block: BlockId,
    },
    /// Mapping memory for a tier failed.
    #[error("cannot map {bytes} bytes for {tier}: {source}")]
    Map {
        /// Tier being mapped.
        tier: Tier,
        /// Size requested.
        bytes: usize,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// An IO operation on a tier failed.
    #[error("{tier} {op} failed: {source}")]
    Io {
        /// Tier of the failed operation.
        tier: Tier,
        /// What was being done ("read", "write", "open", ...).
        op: &'static str,
        /// OS error.
        #[source]
        source: std::io::Error,
    },
    /// An SSD tier directory was written for another model, layout, tensor-parallel shard, hash
    /// version or geometry; its pages are never served. Reopen with `wipe_on_mismatch` to start
    /// over, or point the tier at another directory.
    #[error("{tier} directory fingerprint mismatch: {field} differs")]
    Fingerprint {
        /// Tier whose directory was opened.
        tier: Tier,
        /// First field that differs ("model_id", "layers", "slot_count", ...).
        field: &'static str,
    },
    /// An on-disk header is truncated or is not a kvtier header of a supported version.
    #[error("bad {tier} header: {reason}")]
    BadHeader {
        /// Tier whose header was read.
        tier: Tier,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The device ran out of space (`ENOSPC`); the tier refuses writes for a while.
    #[error("{tier} device is full")]
    DiskFull {
        /// Tier that ran out of space.
        tier: Tier,
    },
    /// A tier's directory or one of its files is not one this process may trust: a symbolic
    /// link, not a regular file (or not a directory), owned by another user, writable by group
    /// or others, or hard-linked elsewhere. Nothing in it was changed; fix its owner or mode,
    /// remove it, or point the tier at another directory.
    #[error("{tier} refuses a path that {reason}")]
    UntrustedPath {
        /// Tier whose directory or file was opened.
        tier: Tier,
        /// What is wrong with it ("is a symbolic link", "is owned by another user", ...).
        reason: &'static str,
    },
    /// A stored page failed verification; it is treated as a miss.
    #[error("corrupt page in {tier} slot {slot}")]
    Corrupt {
        /// Tier holding the page.
        tier: Tier,
        /// The slot whose page failed verification. Never made up: where no slot is known,
        /// the error is [`Error::PageMiss`].
        slot: u64,
    },
    /// A tier could not serve the page of a hash it was asked for: absent (evicted meanwhile),
    /// failed verification or unreadable. Nothing wrong was served; it counts as a miss.
    #[error("{tier} could not serve the page of {hash:?}")]
    PageMiss {
        /// Tier that was asked.
        tier: Tier,
        /// Hash of the page asked for.
        hash: BlockHash,
    },
    /// The object was shut down (a [`crate::external::SlotStore`] after `shutdown`): nothing
    /// was queued.
    #[error("shut down: no more jobs are accepted")]
    Closed,
    /// A tier's capacity exceeds what this machine can hold: its memory (pages plus block
    /// metadata) is more than RAM + swap (or the cgroup's memory limit), or its SSD slots need
    /// more than the file system's free space. Nothing was allocated; lower the capacity.
    #[error("{tier} capacity needs {requested} bytes of {resource} but only {available} are there")]
    CapacityExceeded {
        /// Tier being built.
        tier: Tier,
        /// What runs short: `"memory"` or `"disk space"`.
        resource: &'static str,
        /// Bytes the configuration needs.
        requested: u64,
        /// Bytes the machine offers (see the variant's docs for how it is measured).
        available: u64,
    },
}

impl Error {
    /// The configuration field an [`Error::InvalidConfig`], [`Error::OutOfRange`] or
    /// [`Error::UnknownName`] refers to; `None` for every other error.
    ///
    /// ```
    /// use kvtier::KvLayout;
    /// let err = KvLayout::preset("llama-4", 16).unwrap_err();
    /// assert_eq!(err.config_field(), Some("layout preset"));
    /// assert!(err.to_string().contains("qwen2.5-7b")); // the message lists what is known
    /// ```
    pub fn config_field(&self) -> Option<&'static str> {
        match self {
            Error::InvalidConfig { field, .. } | Error::OutOfRange { field, .. } | Error::UnknownName { field, .. } => {
                Some(field)
            }
            _ => None,
        }
    }
}
