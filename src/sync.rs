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
