//! A test double that wraps a real engine and injects faults, so that the SSD tier's handling
//! of failed and corrupted IO can be tested without a failing disk.
//!
//! Two modes: fixed patterns ([`Fault::FailEvery`], [`Fault::FailWrites`], ...) for unit tests
//! that want an exact outcome, and [`Fault::Random`] with per-kind rates and a seed for long
//! workloads. Every injected fault is tallied by kind ([`FaultCounts`]); a [`FaultTally`]
//! handle reads the tally after the backend has been handed to a tier.

use std::io;

use super::{AlignedBuf, IoBackend, IoBuf, IoKind, IoOp};
use crate::error::Result;
use crate::sync::atomic::{AtomicU64, Ordering};
use crate::sync::{Arc, Mutex, lock};

/// Which operations a [`FaultyBackend`] sabotages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every operation runs normally.
    None,
    /// Every `n`-th operation (counted across batches, from 1) fails with `EIO` without
    /// touching the file or buffer.
    FailEvery(u64),
    /// Every write fails with `ENOSPC` without touching the file.
    FailWrites,
    /// Every read fails with `EIO`.
    FailReads,
    /// Reads succeed but the first byte of every buffer read is flipped, as a torn or rotted
    /// page would look.
    CorruptReads,
    /// Each operation independently suffers at most one fault, drawn at the given rates.
    Random(FaultRates),
    /// The process aborts (`std::process::abort`) in its `submission`-th call to `submit`
    /// (counted from 1, reads and writes alike), after the first `after_ops` operations of that
    /// call ran and before the others: the crash point of a crash-ordering test. Until then
    /// every operation runs normally.
    AbortAt {
        /// The call that aborts, from 1.
        submission: u64,
        /// Operations of that call that complete before the abort.
        after_ops: usize,
    },
}

/// Rates of [`Fault::Random`], in faults per million operations of the kinds each applies to.
/// The draw for an operation depends only on `seed` and the operation's ordinal, so a
/// single-threaded run is reproducible.
///
/// - `enospc`: a write fails with `ENOSPC` and writes nothing.
/// - `eio`: a read or write fails with `EIO` and transfers nothing.
/// - `short`: only a prefix of the buffer is transferred, then the operation fails (what a
///   backend reports when it cannot complete a short transfer).
/// - `torn`: only a prefix is transferred but the operation reports success: a write leaves
///   the old tail of the slot on disk (a torn page), a read leaves the old tail of the buffer.
/// - `bit_flip`: the operation succeeds with one bit flipped: in the data that reaches the
///   disk for a write (silent media corruption), in the buffer for a read.
///
/// ```
/// use kvtier::io::FaultRates;
/// let rates = FaultRates::uniform(7, 10_000); // 1 % of each kind
/// assert_eq!(rates.total_for_writes(), 50_000);
/// assert_eq!(rates.total_for_reads(), 40_000);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultRates {
    /// Seed of the draws.
    pub seed: u64,
    /// `ENOSPC` on writes, per million writes.
    pub enospc: u32,
    /// `EIO`, per million operations.
    pub eio: u32,
    /// Short transfer reported as an error, per million operations.
    pub short: u32,
    /// Short transfer reported as complete, per million operations.
    pub torn: u32,
    /// One flipped bit, per million operations.
    pub bit_flip: u32,
}

impl FaultRates {
    /// Every kind at `per_million`.
    pub fn uniform(seed: u64, per_million: u32) -> Self {
        Self {
            seed,
            enospc: per_million,
            eio: per_million,
            short: per_million,
            torn: per_million,
            bit_flip: per_million,
        }
    }

    /// Chance of some fault on a write, per million (saturating at one million).
    pub fn total_for_writes(&self) -> u32 {
        self.enospc.saturating_add(self.total_for_reads())
    }

    /// Chance of some fault on a read, per million (saturating at one million).
    pub fn total_for_reads(&self) -> u32 {
        self.eio.saturating_add(self.short).saturating_add(self.torn).saturating_add(self.bit_flip)
    }
}

/// Faults injected so far, by kind and direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FaultCounts {
    /// Operations seen (faulty or not).
    pub operations: u64,
    /// Writes failed with `ENOSPC`.
    pub enospc: u64,
    /// Reads failed with `EIO`.
    pub eio_reads: u64,
    /// Writes failed with `EIO`.
    pub eio_writes: u64,
    /// Reads cut short and failed.
    pub short_reads: u64,
    /// Writes cut short and failed.
    pub short_writes: u64,
    /// Reads cut short but reported complete.
    pub torn_reads: u64,
    /// Writes cut short but reported complete (torn pages on disk).
    pub torn_writes: u64,
    /// Reads that returned a flipped bit (including [`Fault::CorruptReads`]).
    pub flipped_reads: u64,
    /// Writes that stored a flipped bit.
    pub flipped_writes: u64,
}

impl FaultCounts {
    /// Faults of every kind.
    pub fn total(&self) -> u64 {
        self.enospc
            + self.eio_reads
            + self.eio_writes
            + self.short_reads
            + self.short_writes
            + self.torn_reads
            + self.torn_writes
            + self.flipped_reads
            + self.flipped_writes
    }

    /// Faults that report success while the data is wrong: the checksums must catch them.
    pub fn silent(&self) -> u64 {
        self.torn_reads + self.torn_writes + self.flipped_reads + self.flipped_writes
    }
}

/// A shared view of a [`FaultyBackend`]'s tally, readable after the backend was moved into a
/// tier.
#[derive(Debug, Clone)]
pub struct FaultTally(Arc<Mutex<FaultCounts>>);

impl FaultTally {
    /// The counts so far.
    pub fn counts(&self) -> FaultCounts {
        *lock(&self.0)
    }
}

/// What happens to one operation.
#[derive(Debug)]
enum Plan {
    Pass,
    Fail(io::Error),
    /// Transfer this many leading bytes, then fail.
    Short(usize),
    /// Transfer this many leading bytes, report the whole buffer.
    Torn(usize),
    /// Write this bit flipped (a copy of the buffer goes to the disk).
    FlipWrite(usize),
    /// Flip this bit of the buffer after a successful read.
    FlipRead(usize),
    /// Flip the whole first byte after a successful read ([`Fault::CorruptReads`]).
    CorruptFirst,
}

const ENOSPC: i32 = 28;
const EIO: i32 = 5;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A prefix of `len` bytes that O_DIRECT accepts where possible: whole 4 KiB blocks, or half
/// the buffer in 512-byte sectors when the buffer is a single block.
fn partial_len(len: usize, draw: u64) -> usize {
    const BLOCK: usize = super::DIRECT_ALIGN;
    if len > BLOCK {
        let blocks = (len - 1) / BLOCK; // at least one block short
        (1 + (draw as usize) % blocks.max(1)) * BLOCK
    } else {
        (len / 2) / 512 * 512
    }
}

/// Wraps an engine and applies a [`Fault`] to the operations going through it.
///
/// ```
/// use kvtier::io::{Fault, FaultRates, FaultyBackend, IoBackend, IoConfig, PsyncBackend};
/// let inner = Box::new(PsyncBackend::new(&IoConfig::default()));
/// let backend = FaultyBackend::new(inner, Fault::Random(FaultRates::uniform(1, 1000)));
/// let tally = backend.tally(); // keep it to read the counts once the tier owns the backend
/// assert_eq!(backend.name(), "faulty");
/// assert_eq!(tally.counts().total(), 0);
/// ```
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Box<dyn IoBackend>,
    fault: Fault,
    tally: Arc<Mutex<FaultCounts>>,
    /// Calls to `submit` so far.
    submissions: AtomicU64,
}

impl FaultyBackend {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn IoBackend>, fault: Fault) -> Self {
        Self { inner, fault, tally: Arc::new(Mutex::new(FaultCounts::default())), submissions: AtomicU64::new(0) }
    }

    /// Operations seen so far.
    pub fn operations(&self) -> u64 {
        lock(&self.tally).operations
    }

    /// Faults injected so far.
    pub fn counts(&self) -> FaultCounts {
        *lock(&self.tally)
    }

    /// A handle on the tally that outlives handing the backend to a tier.
    pub fn tally(&self) -> FaultTally {
        FaultTally(Arc::clone(&self.tally))
    }

    /// Decides the fate of operation number `ordinal` (from 1) and counts it.
    fn plan(&self, op: &IoOp<'_>, ordinal: u64, counts: &mut FaultCounts) -> Plan {
        let write = op.kind() == IoKind::Write;
        let plan = match (self.fault, op.kind()) {
            (Fault::FailEvery(n), _) if n > 0 && ordinal.is_multiple_of(n) => {
                Plan::Fail(io::Error::from_raw_os_error(EIO))
            }
            (Fault::FailWrites, IoKind::Write) => Plan::Fail(io::Error::from_raw_os_error(ENOSPC)),
            (Fault::FailReads, IoKind::Read) => Plan::Fail(io::Error::from_raw_os_error(EIO)),
            (Fault::CorruptReads, IoKind::Read) => Plan::CorruptFirst,
            (Fault::Random(rates), _) => Self::draw(&rates, op, ordinal),
            _ => Plan::Pass,
        };
        let count = match (&plan, write) {
            (Plan::Pass, _) => None,
            (Plan::Fail(e), true) if e.raw_os_error() == Some(ENOSPC) => Some(&mut counts.enospc),
            (Plan::Fail(_), true) => Some(&mut counts.eio_writes),
            (Plan::Fail(_), false) => Some(&mut counts.eio_reads),
            (Plan::Short(_), true) => Some(&mut counts.short_writes),
            (Plan::Short(_), false) => Some(&mut counts.short_reads),
            (Plan::Torn(_), true) => Some(&mut counts.torn_writes),
            (Plan::Torn(_), false) => Some(&mut counts.torn_reads),
            (Plan::FlipWrite(_), _) => Some(&mut counts.flipped_writes),
            (Plan::FlipRead(_) | Plan::CorruptFirst, _) => Some(&mut counts.flipped_reads),
        };
        if let Some(c) = count {
            *c += 1;
        }
        plan
    }

    fn draw(rates: &FaultRates, op: &IoOp<'_>, ordinal: u64) -> Plan {
        let r = splitmix(rates.seed ^ ordinal.wrapping_mul(0xd6e8_feb8_6659_fd93));
        let detail = splitmix(r);
        let len = op.len();
        let mut p = (r % 1_000_000) as u32;
        let write = op.kind() == IoKind::Write;
        if write {
            if p < rates.enospc {
                return Plan::Fail(io::Error::from_raw_os_error(ENOSPC));
            }
            p -= rates.enospc;
        }
        if p < rates.eio {
            return Plan::Fail(io::Error::from_raw_os_error(EIO));
        }
        p -= rates.eio;
        if p < rates.short {
            return Plan::Short(partial_len(len, detail));
        }
        p -= rates.short;
        if p < rates.torn {
            return Plan::Torn(partial_len(len, detail));
        }
        p -= rates.torn;
        if p < rates.bit_flip && len > 0 {
            let bit = (detail % (len as u64 * 8)) as usize;
            return if write { Plan::FlipWrite(bit) } else { Plan::FlipRead(bit) };
        }
        Plan::Pass
    }
}

impl IoBackend for FaultyBackend {
    fn name(&self) -> &'static str {
        "faulty"
    }

    fn queue_depth(&self) -> usize {
        self.inner.queue_depth()
    }

    fn submit(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>) {
        // Relaxed: the count only orders calls of one thread in the tests that use it.
        let submission = self.submissions.fetch_add(1, Ordering::Relaxed) + 1;
        if let Fault::AbortAt { submission: at, after_ops } = self.fault
            && submission == at
        {
            let done = after_ops.min(ops.len());
            if done > 0 {
                self.inner.submit(&mut ops[..done], results);
            }
            std::process::abort();
        }
        let plans: Vec<Plan> = {
            let mut counts = lock(&self.tally);
            let first = counts.operations + 1;
            counts.operations += ops.len() as u64;
            ops.iter().enumerate().map(|(i, op)| self.plan(op, first + i as u64, &mut counts)).collect()
        };
        // The flipped copies of written pages, in the order of their operations. A copy that
        // cannot be mapped leaves the write unharmed (counted all the same: it was drawn).
        let mut copies: Vec<Option<AlignedBuf>> = Vec::new();
        for (op, plan) in ops.iter().zip(&plans) {
            if let Plan::FlipWrite(bit) = *plan {
                copies.push(AlignedBuf::new(op.len()).ok().map(|mut copy| {
                    copy.copy_from_slice(op.data());
                    if let Some(byte) = copy.get_mut(bit / 8) {
                        *byte ^= 1 << (bit % 8);
                    }
                    copy
                }));
            }
        }
        let lens: Vec<usize> = ops.iter().map(IoOp::len).collect();
        let mut passed = Vec::with_capacity(ops.len());
        let mut passed_ops = Vec::with_capacity(ops.len());
        let mut copy_iter = copies.iter();
        for (i, (op, plan)) in ops.iter_mut().zip(&plans).enumerate() {
            let file = op.file;
            let offset = op.offset;
            let buf = match (&mut op.buf, plan) {
                (_, Plan::Fail(_)) => continue,
                (IoBuf::Read(b), Plan::Short(k) | Plan::Torn(k)) => IoBuf::Read(&mut b[..*k]),
                (IoBuf::Write(b), Plan::Short(k) | Plan::Torn(k)) => IoBuf::Write(&b[..*k]),
                (IoBuf::Write(b), Plan::FlipWrite(_)) => match copy_iter.next() {
                    Some(Some(copy)) => IoBuf::Write(&copy[..]),
                    _ => IoBuf::Write(&b[..]),
                },
                (IoBuf::Read(b), _) => IoBuf::Read(&mut b[..]),
                (IoBuf::Write(b), _) => IoBuf::Write(&b[..]),
            };
            passed.push(i);
            passed_ops.push(IoOp { file, offset, buf });
        }
        let mut inner_results = Vec::with_capacity(passed_ops.len());
        if !passed_ops.is_empty() {
            self.inner.submit(&mut passed_ops, &mut inner_results);
        }
        for ((op, result), &i) in passed_ops.iter_mut().zip(inner_results.iter_mut()).zip(&passed) {
            match (plans.get(i), &mut op.buf) {
                (Some(Plan::FlipRead(bit)), IoBuf::Read(buf)) if result.is_ok() => {
                    if let Some(byte) = buf.get_mut(bit / 8) {
                        *byte ^= 1 << (bit % 8);
                    }
                }
                (Some(Plan::CorruptFirst), IoBuf::Read(buf)) if result.is_ok() => {
                    if let Some(first) = buf.first_mut() {
                        *first ^= 0xff;
                    }
                }
                (Some(Plan::Short(_)), _) if result.is_ok() => {
                    let kind = match op.kind() {
                        IoKind::Read => io::ErrorKind::UnexpectedEof,
                        IoKind::Write => io::ErrorKind::WriteZero,
                    };
                    *result = Err(op.error(io::Error::new(kind, "injected short transfer")));
                }
                (Some(Plan::Torn(_)), _) => *result = Ok(lens.get(i).copied().unwrap_or(0)),
                _ => {}
            }
        }
        drop(passed_ops);
        results.clear();
        results.resize_with(ops.len(), || Ok(0));
        for (i, result) in passed.into_iter().zip(inner_results) {
            if let Some(slot) = results.get_mut(i) {
                *slot = result;
            }
        }
        for (i, plan) in plans.into_iter().enumerate() {
            if let (Plan::Fail(err), Some(op), Some(slot)) = (plan, ops.get(i), results.get_mut(i)) {
                *slot = Err(op.error(err));
            }
        }
    }
}
