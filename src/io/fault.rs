//! A test double that wraps a real engine and injects faults, so that the SSD tier's handling
//! of failed and corrupted IO can be tested without a failing disk.

use std::io;

use super::{IoBackend, IoBuf, IoKind, IoOp};
use crate::error::Result;
use crate::sync::{Mutex, lock};

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
}

/// Wraps an engine and applies a [`Fault`] to the operations going through it.
///
/// ```
/// use kvtier::io::{Fault, FaultyBackend, IoBackend, IoConfig, PsyncBackend};
/// let inner = Box::new(PsyncBackend::new(&IoConfig::default()));
/// let backend = FaultyBackend::new(inner, Fault::FailWrites);
/// assert_eq!(backend.name(), "faulty");
/// ```
#[derive(Debug)]
pub struct FaultyBackend {
    inner: Box<dyn IoBackend>,
    fault: Fault,
    seen: Mutex<u64>,
}

impl FaultyBackend {
    /// Wraps `inner`.
    pub fn new(inner: Box<dyn IoBackend>, fault: Fault) -> Self {
        Self { inner, fault, seen: Mutex::new(0) }
    }

    /// Operations seen so far.
    pub fn operations(&self) -> u64 {
        *lock(&self.seen)
    }

    fn injected(&self, op: &IoOp<'_>, ordinal: u64) -> Option<io::Error> {
        let eio = || io::Error::from_raw_os_error(5);
        match (self.fault, op.kind()) {
            (Fault::FailEvery(n), _) if n > 0 && ordinal.is_multiple_of(n) => Some(eio()),
            (Fault::FailWrites, IoKind::Write) => Some(io::Error::from_raw_os_error(28)),
            (Fault::FailReads, IoKind::Read) => Some(eio()),
            _ => None,
        }
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
        let first = {
            let mut seen = lock(&self.seen);
            let first = *seen + 1;
            *seen += ops.len() as u64;
            first
        };
        let mut failures = Vec::new();
        let mut passed = Vec::with_capacity(ops.len());
        let mut passed_ops = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter_mut().enumerate() {
            match self.injected(op, first + i as u64) {
                Some(err) => failures.push((i, op.error(err))),
                None => {
                    passed.push(i);
                    passed_ops.push(IoOp {
                        file: op.file,
                        offset: op.offset,
                        buf: match &mut op.buf {
                            IoBuf::Read(b) => IoBuf::Read(&mut b[..]),
                            IoBuf::Write(b) => IoBuf::Write(&b[..]),
                        },
                    });
                }
            }
        }
        let mut inner_results = Vec::with_capacity(passed_ops.len());
        self.inner.submit(&mut passed_ops, &mut inner_results);
        if self.fault == Fault::CorruptReads {
            for (op, result) in passed_ops.iter_mut().zip(&inner_results) {
                if let (IoBuf::Read(buf), Ok(_)) = (&mut op.buf, result)
                    && let Some(first) = buf.first_mut()
                {
                    *first ^= 0xff;
                }
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
        for (i, err) in failures {
            if let Some(slot) = results.get_mut(i) {
                *slot = Err(err);
            }
        }
    }
}
