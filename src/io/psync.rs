//! The portable engine: positioned `pread`/`pwrite` (`FileExt::read_at`/`write_at`).
//!
//! Blocking calls only overlap when several threads make them, so a batch is spread over up to
//! [`IoConfig::psync_threads`] scoped threads (the caller's thread is one of them); each takes
//! the next operation from a shared iterator until none is left. Scoped threads may borrow the
//! batch, which keeps this engine free of unsafe code. A batch of one operation, or a
//! single-thread configuration, runs inline.

use std::os::unix::fs::FileExt;

use super::{IoBackend, IoBuf, IoConfig, IoOp, Overlap};
use crate::error::Result;
use crate::sync::{Mutex, lock};

/// Positioned reads and writes on a few worker threads; compiles and works everywhere.
///
/// ```
/// use kvtier::io::{IoBackend, IoConfig, PsyncBackend};
/// let backend = PsyncBackend::new(&IoConfig::default());
/// assert_eq!(backend.name(), "psync");
/// ```
#[derive(Debug, Clone)]
pub struct PsyncBackend {
    threads: usize,
    queue_depth: usize,
}

impl PsyncBackend {
    /// An engine with `config.psync_threads` threads (at least one).
    pub fn new(config: &IoConfig) -> Self {
        Self { threads: config.psync_threads.max(1), queue_depth: config.queue_depth.max(1) }
    }
}

impl IoBackend for PsyncBackend {
    fn name(&self) -> &'static str {
        "psync"
    }

    fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    fn submit(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>) {
        results.clear();
        results.resize_with(ops.len(), || Ok(0));
        let workers = self.threads.min(ops.len());
        if workers <= 1 {
            for (op, result) in ops.iter_mut().zip(results.iter_mut()) {
                *result = run(op);
            }
            return;
        }
        let work = Mutex::new(ops.iter_mut().zip(results.iter_mut()));
        std::thread::scope(|scope| {
            for _ in 1..workers {
                // A thread that cannot be spawned only means less parallelism: the caller's
                // thread drains whatever is left.
                let _ = std::thread::Builder::new().name("kvtier-psync".into()).spawn_scoped(scope, || drain(&work));
            }
            drain(&work);
        });
    }

    /// With more than one operation and thread, every IO runs on worker threads while the
    /// caller's thread does the idle work, then drains what is left of the batch itself;
    /// completions are reported at the end, in order.
    fn submit_overlapped(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>, overlap: &mut dyn Overlap) {
        results.clear();
        results.resize_with(ops.len(), || Ok(0));
        let workers = self.threads.min(ops.len());
        if workers <= 1 {
            for (op, result) in ops.iter_mut().zip(results.iter_mut()) {
                *result = run(op);
            }
        } else {
            let work = Mutex::new(ops.iter_mut().zip(results.iter_mut()));
            std::thread::scope(|scope| {
                for _ in 0..workers {
                    let _ =
                        std::thread::Builder::new().name("kvtier-psync".into()).spawn_scoped(scope, || drain(&work));
                }
                while overlap.idle() {}
                drain(&work);
            });
        }
        for (index, (op, result)) in ops.iter().zip(results.iter()).enumerate() {
            overlap.completed(index, op, result);
        }
    }
}

fn drain<'a, 'b: 'a, I>(work: &Mutex<I>)
where
    I: Iterator<Item = (&'a mut IoOp<'b>, &'a mut Result<usize>)>,
{
    loop {
        let next = lock(work).next();
        let Some((op, result)) = next else {
            return;
        };
        *result = run(op);
    }
}

/// One whole transfer; `read_exact_at`/`write_all_at` already retry short transfers and `EINTR`.
fn run(op: &mut IoOp<'_>) -> Result<usize> {
    let file = op.file;
    let offset = op.offset;
    let outcome = match &mut op.buf {
        IoBuf::Read(buf) => file.read_exact_at(buf, offset).map(|()| buf.len()),
        IoBuf::Write(buf) => file.write_all_at(buf, offset).map(|()| buf.len()),
    };
    outcome.map_err(|e| op.error(e))
}
