//! The handoff between the runtime and the background workers: a job queue that also counts
//! unfinished jobs and can park every worker (for `pause_workers` and `quiesce`).
//!
//! Lifecycle of a job:
//! 1. The runtime [`WorkQueue::push`]es it: it is queued and counted as pending.
//! 2. A worker takes it with [`WorkQueue::next`] (or [`WorkQueue::try_next`] to batch it
//!    with the one it holds) and runs it.
//! 3. The worker calls [`WorkQueue::finish`]: it no longer counts as pending, and
//!    [`WorkQueue::wait_idle`] wakes up once nothing is pending.
//!
//! Workers are counted ([`WorkQueue::add_worker`] before one starts, [`WorkQueue::remove_worker`]
//! when it exits, even by unwinding). A pause ([`WorkQueue::pause`]) returns once every live
//! worker is parked in `next`, so that no job or maintenance pass is running until
//! [`WorkQueue::resume`]; jobs pushed meanwhile stay queued. A worker that died does not hold a
//! pause up. [`WorkQueue::close`] wakes everyone up for good.
//!
//! Built on `crate::sync`, so `tests/loom_engine.rs` checks this very code.
// Public for the loom models with the `testing` feature; crate-private in use otherwise.
#![cfg_attr(not(feature = "testing"), allow(unreachable_pub, dead_code))]

use std::collections::VecDeque;
use std::time::Duration;

use crate::sync::{Condvar, Mutex, lock, wait, wait_timeout};

/// What [`WorkQueue::next`] hands a worker.
#[derive(Debug, PartialEq, Eq)]
pub enum Next<T> {
    /// A job to run; call [`WorkQueue::finish`] when it is done.
    Job(T),
    /// No job came within the tick: time for a maintenance pass.
    Tick,
    /// The queue is closed: the worker exits.
    Stop,
}

#[derive(Debug)]
struct State<T> {
    jobs: VecDeque<T>,
    /// Jobs pushed and not finished (queued or running).
    pending: u64,
    closed: bool,
    /// Outstanding pause requests; workers stay parked while there is one.
    pauses: usize,
    /// Workers parked in `next`.
    parked: usize,
    /// Workers started and not exited.
    workers: usize,
}

/// A job queue shared by the runtime and the workers. `Send + Sync` for `T: Send`.
///
/// ```
/// use kvtier::offload::{Next, WorkQueue};
/// use std::time::Duration;
/// let q = WorkQueue::new();
/// q.push(7).unwrap();
/// assert_eq!(q.pending(), 1);
/// assert_eq!(q.next(Duration::ZERO), Next::Job(7));
/// q.finish(1);
/// q.wait_idle();
/// assert_eq!(q.next(Duration::ZERO), Next::Tick);
/// q.close();
/// assert_eq!(q.push(8), Err(8));
/// assert_eq!(q.next(Duration::ZERO), Next::Stop);
/// ```
#[derive(Debug)]
pub struct WorkQueue<T> {
    state: Mutex<State<T>>,
    /// Signalled on every change: a job pushed, finished, a pause or resume, a worker parked,
    /// the queue closed. Waiters re-check their own condition.
    changed: Condvar,
}

impl<T> Default for WorkQueue<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> WorkQueue<T> {
    /// An empty, open queue.
    pub fn new() -> Self {
        let state = State { jobs: VecDeque::new(), pending: 0, closed: false, pauses: 0, parked: 0, workers: 0 };
        Self { state: Mutex::new(state), changed: Condvar::new() }
    }

    /// Queues a job; gives it back if the queue is closed.
    pub fn push(&self, job: T) -> std::result::Result<(), T> {
        let mut st = lock(&self.state);
        if st.closed {
            return Err(job);
        }
        st.jobs.push_back(job);
        st.pending += 1;
        drop(st);
        self.changed.notify_all();
        Ok(())
    }

    /// A worker's wait for work: parks while a pause is requested, then returns a job, or
    /// [`Next::Tick`] once `tick` passed without one, or [`Next::Stop`] once closed.
    pub fn next(&self, tick: Duration) -> Next<T> {
        let mut st = lock(&self.state);
        let mut waited = false;
        loop {
            if st.closed {
                return Next::Stop;
            }
            if st.pauses > 0 {
                st.parked += 1;
                self.changed.notify_all();
                while st.pauses > 0 && !st.closed {
                    st = wait(&self.changed, st);
                }
                st.parked -= 1;
                continue;
            }
            if let Some(job) = st.jobs.pop_front() {
                return Next::Job(job);
            }
            if waited || tick.is_zero() {
                return Next::Tick;
            }
            st = wait_timeout(&self.changed, st, tick);
            waited = true;
        }
    }

    /// Takes a queued job without waiting (to batch it with one already taken).
    pub fn try_next(&self) -> Option<T> {
        lock(&self.state).jobs.pop_front()
    }

    /// Marks `n` taken jobs as done.
    pub fn finish(&self, n: u64) {
        let mut st = lock(&self.state);
        st.pending = st.pending.saturating_sub(n);
        let idle = st.pending == 0;
        drop(st);
        if idle {
            self.changed.notify_all();
        }
    }

    /// Jobs pushed and not finished.
    pub fn pending(&self) -> u64 {
        lock(&self.state).pending
    }

    /// Blocks until no job is pending. Jobs only finish if some thread runs them: with every
    /// worker paused, take them with [`WorkQueue::try_next`] first.
    ///
    /// No pending job does not mean idle workers: a worker may be in the middle of a
    /// maintenance pass, which is no job. To wait for that too, [`WorkQueue::pause`]: it
    /// returns once every worker is parked between two units of work.
    pub fn wait_idle(&self) {
        let mut st = lock(&self.state);
        while st.pending > 0 && !st.closed {
            st = wait(&self.changed, st);
        }
    }

    /// Counts one more worker; call it before the worker starts, so that a pause right after
    /// waits for it.
    pub fn add_worker(&self) {
        lock(&self.state).workers += 1;
    }

    /// Counts a worker out (it exited, or failed to start).
    pub fn remove_worker(&self) {
        let mut st = lock(&self.state);
        st.workers = st.workers.saturating_sub(1);
        drop(st);
        self.changed.notify_all();
    }

    /// Asks every worker to park and waits until all live ones are parked in
    /// [`WorkQueue::next`]. Pauses nest; each needs its [`WorkQueue::resume`].
    pub fn pause(&self) {
        let mut st = lock(&self.state);
        st.pauses += 1;
        self.changed.notify_all();
        while st.parked < st.workers && !st.closed {
            st = wait(&self.changed, st);
        }
    }

    /// Ends one pause; the workers go on once none is left.
    pub fn resume(&self) {
        let mut st = lock(&self.state);
        st.pauses = st.pauses.saturating_sub(1);
        drop(st);
        self.changed.notify_all();
    }

    /// Whether a pause is in force.
    pub fn is_paused(&self) -> bool {
        lock(&self.state).pauses > 0
    }

    /// Closes the queue: pushes are refused, workers and waiters are woken up and stop.
    /// Jobs still queued can be taken with [`WorkQueue::try_next`].
    pub fn close(&self) {
        lock(&self.state).closed = true;
        self.changed.notify_all();
    }
}
