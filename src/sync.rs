//! The one switch between std/parking_lot and loom.
//!
//! Code in kvtier imports its synchronisation primitives from here only, so that the loom
//! models in `tests/loom_*.rs` (built with `RUSTFLAGS="--cfg loom"`) check exactly the code that
//! ships.

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::Arc;
#[cfg(loom)]
pub(crate) use loom::sync::{Mutex, MutexGuard};

#[cfg(not(loom))]
pub(crate) use parking_lot::{Mutex, MutexGuard};
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use std::sync::Arc;

/// Locks a mutex; parking_lot and loom disagree on whether `lock` returns a `Result`.
#[cfg(not(loom))]
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

/// Locks a mutex; a poisoned loom mutex means another model thread panicked, which already
/// fails the model, so the poison is ignored here.
#[cfg(loom)]
#[inline]
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

#[cfg(loom)]
#[allow(unused_imports)]
pub(crate) use loom::sync::Condvar;
#[cfg(not(loom))]
#[allow(unused_imports)]
pub(crate) use parking_lot::Condvar;

/// Atomics, from loom under `--cfg loom`.
#[allow(unused_imports)]
pub(crate) mod atomic {
    #[cfg(loom)]
    pub(crate) use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    #[cfg(not(loom))]
    pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
}

/// Waits on a condition variable; parking_lot and loom disagree on how a guard is passed.
#[cfg(not(loom))]
#[inline]
pub(crate) fn wait<'a, T>(cv: &Condvar, mut guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    cv.wait(&mut guard);
    guard
}

/// Waits on a condition variable; poison is ignored as in [`lock`].
#[cfg(loom)]
#[inline]
pub(crate) fn wait<'a, T>(cv: &Condvar, guard: MutexGuard<'a, T>) -> MutexGuard<'a, T> {
    match cv.wait(guard) {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Waits on a condition variable for at most `timeout` (loom never times out: it explores
/// the notifications instead).
#[cfg(not(loom))]
#[inline]
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    mut guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    cv.wait_for(&mut guard, timeout);
    guard
}

/// Waits on a condition variable for at most `timeout` (loom never times out: it explores
/// the notifications instead).
#[cfg(loom)]
#[inline]
pub(crate) fn wait_timeout<'a, T>(
    cv: &Condvar,
    guard: MutexGuard<'a, T>,
    timeout: std::time::Duration,
) -> MutexGuard<'a, T> {
    match cv.wait_timeout(guard, timeout) {
        Ok((g, _)) => g,
        Err(poisoned) => poisoned.into_inner().0,
    }
}
