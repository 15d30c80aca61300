//! The io_uring engine (Linux): one ring, up to `queue_depth` operations in flight per batch.
//!
//! This is the only module of the IO layer with unsafe code. The contract that makes it sound:
//! a buffer belongs to its operation from the moment its submission entry is pushed until its
//! completion is reaped. [`UringBackend::submit`] borrows every buffer for the whole call and
//! does not return (nor unwind) while any entry it pushed is unreaped, so no buffer can be
//! freed, moved or touched by safe code while the kernel may access it.
//!
//! Steps of one batch:
//! 1. Push entries for ready operations until `queue_depth` are in flight.
//! 2. `io_uring_enter`: submit them and wait for at least one completion.
//! 3. Reap completions: a short transfer puts the rest of the operation back in the ready queue
//!    (at its new offset), `EINTR`/`EAGAIN` retry it a bounded number of times, anything else
//!    is the operation's error.
//! 4. While entries are in flight, [`Overlap`] work runs between polls of the completion queue
//!    (see [`IoBackend::submit_overlapped`]); with none, block until the next completion.
//! 5. Repeat until nothing is ready or in flight; completions not yet reported then are
//!    reported after the ring's lock is released.

#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

use io_uring::{IoUring, Probe, opcode, types};

use super::{IoBackend, IoBuf, IoConfig, IoOp, NoOverlap, Overlap};
use crate::error::Result;
use crate::sync::{Mutex, lock};

/// io_uring transfers at most `u32::MAX` bytes per entry; larger operations go in 1 GiB steps.
const MAX_ENTRY_BYTES: usize = 1 << 30;
/// How often one operation may be retried after `EINTR`/`EAGAIN` before its error is reported.
const MAX_RETRIES: u32 = 16;
/// How often a failing `io_uring_enter` is retried while operations are in flight.
const MAX_ENTER_FAILURES: u32 = 1000;

/// io_uring engine. The ring sits behind a mutex: concurrent batches take turns.
#[derive(Debug)]
pub(crate) struct UringBackend {
    state: Mutex<RingState>,
    queue_depth: usize,
}

struct RingState {
    ring: IoUring,
    /// Per-operation progress of the current batch, kept to reuse its allocation.
    progress: Vec<Progress>,
    /// Operations waiting for a submission slot, by index.
    ready: VecDeque<usize>,
}

impl std::fmt::Debug for RingState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingState").field("entries", &self.ring.params().sq_entries()).finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    done: usize,
    retries: u32,
}

impl UringBackend {
    /// Sets up a ring of `config.queue_depth` entries and checks that the kernel supports
    /// `IORING_OP_READ`/`WRITE` (Linux 5.6); any failure means "use another engine".
    pub(crate) fn new(config: &IoConfig) -> io::Result<Self> {
        let entries =
            u32::try_from(config.queue_depth.max(1)).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let ring = IoUring::new(entries)?;
        let mut probe = Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        if !probe.is_supported(opcode::Read::CODE) || !probe.is_supported(opcode::Write::CODE) {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        let sq_entries = ring.params().sq_entries() as usize;
        Ok(Self {
            state: Mutex::new(RingState { ring, progress: Vec::new(), ready: VecDeque::new() }),
            queue_depth: config.queue_depth.min(sq_entries).max(1),
        })
    }
}

impl IoBackend for UringBackend {
    fn name(&self) -> &'static str {
        "io_uring"
    }

    fn queue_depth(&self) -> usize {
        self.queue_depth
    }

    fn submit(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>) {
        self.submit_overlapped(ops, results, &mut NoOverlap);
    }

    fn submit_overlapped(&self, ops: &mut [IoOp<'_>], results: &mut Vec<Result<usize>>, overlap: &mut dyn Overlap) {
        results.clear();
        results.resize_with(ops.len(), || Ok(0));
        // Operations complete (the empty ones from the start) but not reported yet.
        let mut unreported: VecDeque<usize> = (0..ops.len()).filter(|&i| ops[i].is_empty()).collect();
        {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            state.progress.clear();
            state.progress.resize(ops.len(), Progress::default());
            state.ready.clear();
            state.ready.extend((0..ops.len()).filter(|&i| ops.get(i).is_some_and(|op| !op.is_empty())));
            run_batch(state, self.queue_depth, ops, results, overlap, &mut unreported);
        }
        // Nothing is in flight any more and the ring is free for the next batch: the last
        // completions are reported without holding it.
        for index in unreported {
            if let (Some(op), Some(result)) = (ops.get(index), results.get(index)) {
                overlap.completed(index, op, result);
            }
        }
    }
}

/// Counts pushed-but-unreaped entries; dropping it with entries in flight (only possible by
/// unwinding from a bug, or from a panicking [`Overlap`]) aborts the process, because the
/// kernel may still write into buffers that the unwinding would free.
struct InFlight(usize);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0 != 0 {
            std::process::abort();
        }
    }
}

/// Runs the batch until nothing is ready or in flight. While entries are in flight and there
/// is overlap work (a completion to report, or idle work), the freed queue slots are refilled
/// and submitted without waiting, one unit of work runs, and the completion queue is polled
/// again; otherwise the thread blocks until the next completion. Completions not reported by
/// the end are left in `unreported`.
fn run_batch(
    state: &mut RingState,
    queue_depth: usize,
    ops: &mut [IoOp<'_>],
    results: &mut [Result<usize>],
    overlap: &mut dyn Overlap,
    unreported: &mut VecDeque<usize>,
) {
    let mut in_flight = InFlight(0);
    let mut enter_failures = 0u32;
    let mut idle_left = true;
    loop {
        let mut pushed = 0usize;
        while in_flight.0 < queue_depth {
            let Some(index) = state.ready.pop_front() else {
                break;
            };
            let (Some(op), Some(progress)) = (ops.get_mut(index), state.progress.get(index)) else {
                continue;
            };
            let entry = entry_for(op, progress.done, index);
            // SAFETY: the entry points into `op`'s buffer at `progress.done`, with a length that
            // stays inside it (`entry_for`). That buffer is borrowed by `ops` for this whole
            // call, and this function only returns once `in_flight` is zero, i.e. after the
            // completion of this entry is reaped; nothing else reads or writes this part of
            // the buffer meanwhile (an operation has at most one entry in flight, and the
            // overlap work only sees the buffers of completed operations). The file
            // descriptor is borrowed by `op` as well, so it stays open until then.
            let pushed_ok = unsafe { state.ring.submission().push(&entry) };
            if pushed_ok.is_err() {
                state.ready.push_front(index);
                break;
            }
            in_flight.0 += 1;
            pushed += 1;
        }
        if in_flight.0 == 0 {
            return;
        }
        let has_work = !unreported.is_empty() || idle_left;
        // Start the new entries without waiting (a failure is handled by the blocking path).
        if has_work && (pushed == 0 || state.ring.submit().is_ok()) {
            if let Some(index) = unreported.pop_front() {
                if let (Some(op), Some(result)) = (ops.get(index), results.get(index)) {
                    overlap.completed(index, op, result);
                }
            } else {
                idle_left = overlap.idle();
            }
            reap(state, ops, results, &mut in_flight, unreported);
            continue;
        }
        match state.ring.submit_and_wait(1) {
            Ok(_) => enter_failures = 0,
            Err(e) if is_transient(&e) => {}
            Err(_) => {
                // Entries pushed but not consumed stay in the ring and entries consumed still
                // own their buffers: returning now would be unsound. Keep trying (the kernel
                // does not normally fail `io_uring_enter` this way) and give up the process
                // only if it never recovers.
                enter_failures += 1;
                if enter_failures >= MAX_ENTER_FAILURES {
                    std::process::abort();
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        reap(state, ops, results, &mut in_flight, unreported);
    }
}

/// Takes every available completion: a short transfer or a transient error goes back to the
/// ready queue, a finished operation (success or error) to `done`.
fn reap(
    state: &mut RingState,
    ops: &[IoOp<'_>],
    results: &mut [Result<usize>],
    in_flight: &mut InFlight,
    done: &mut VecDeque<usize>,
) {
    for cqe in state.ring.completion() {
        in_flight.0 = in_flight.0.saturating_sub(1);
        let index = cqe.user_data() as usize;
        let (Some(op), Some(progress), Some(result)) =
            (ops.get(index), state.progress.get_mut(index), results.get_mut(index))
        else {
            continue;
        };
        let res = cqe.result();
        if res < 0 {
            let err = io::Error::from_raw_os_error(-res);
            if is_transient(&err) && progress.retries < MAX_RETRIES {
                progress.retries += 1;
                state.ready.push_back(index);
            } else {
                *result = Err(op.error(err));
                done.push_back(index);
            }
        } else if res == 0 {
            let kind = match op.buf {
                IoBuf::Read(_) => io::ErrorKind::UnexpectedEof,
                IoBuf::Write(_) => io::ErrorKind::WriteZero,
            };
            *result = Err(op.error(io::Error::from(kind)));
            done.push_back(index);
        } else {
            progress.done += res as usize;
            if progress.done >= op.len() {
                *result = Ok(op.len());
                done.push_back(index);
            } else {
                state.ready.push_back(index);
            }
        }
    }
}

fn is_transient(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EINTR | libc::EAGAIN | libc::EBUSY))
}

/// The submission entry for the part of `op` not yet transferred.
fn entry_for(op: &mut IoOp<'_>, done: usize, index: usize) -> io_uring::squeue::Entry {
    let fd = types::Fd(op.file.as_raw_fd());
    let len = op.len();
    let offset = op.offset.saturating_add(done as u64);
    let chunk = len.saturating_sub(done).min(MAX_ENTRY_BYTES) as u32;
    let entry = match &mut op.buf {
        IoBuf::Read(buf) => {
            let rest = buf.get_mut(done..).unwrap_or_default();
            opcode::Read::new(fd, rest.as_mut_ptr(), chunk).offset(offset).build()
        }
        IoBuf::Write(buf) => {
            let rest = buf.get(done..).unwrap_or_default();
            opcode::Write::new(fd, rest.as_ptr(), chunk).offset(offset).build()
        }
    };
    entry.user_data(index as u64)
}

/// Reserves `len` bytes of disk for `file` so that writes into it do not hit `ENOSPC`. False
/// for file systems without `fallocate` (`EOPNOTSUPP`): the file stays as sparse as it was.
pub(crate) fn preallocate(file: &File, len: u64) -> io::Result<bool> {
    let Ok(len) = libc::off_t::try_from(len) else {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    };
    if len == 0 {
        return Ok(true);
    }
    loop {
        // SAFETY: `fallocate` only reads its integer arguments; the descriptor is valid because
        // `file` is borrowed for the duration of the call.
        let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if rc == 0 {
            return Ok(true);
        }
        let err = io::Error::last_os_error();
        match err.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP) => return Ok(false),
            _ => return Err(err),
        }
    }
}
