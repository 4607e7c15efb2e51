//! Probation (optional policy, after a commit): if the new version panics within a window,
//! roll back to the previous version with the state snapshot taken at the commit.
//!
//! The call that panicked starts the rollback itself, before its `hot_fn!` returns, once it
//! has released the module's lock, if no call through a shared handle (of any module) and no
//! call of this module is running on its thread: a nested call (module code calling back into
//! the host) leaves the rollback to the next call of the module that ends outside every
//! call. Events and `after_reload` hooks of that rollback run on that thread, inside that
//! `hot_fn!`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use crate::error::{HotError, ModuleFault};
use crate::module::ModuleCore;

/// The probation of one module.
#[derive(Default)]
pub(crate) struct Probation {
    window: Mutex<Option<Window>>,
    /// Whether `window` is `Some`: read on every call, written only when it changes.
    on: AtomicBool,
}

/// What probation watches after a commit.
struct Window {
    /// The version on probation.
    generation: u64,
    /// Calls left, if the window is a number of calls.
    calls_left: Option<u64>,
    /// When it ends, if the window is a duration.
    until: Option<Instant>,
    /// A call panicked: roll back from `generation` when no call of the module runs here.
    failed: Option<String>,
}

impl Probation {
    /// One relaxed load: whether a probation runs.
    #[inline(always)]
    pub(crate) fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    fn window(&self) -> MutexGuard<'_, Option<Window>> {
        self.window.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts probation for the version just committed, under `policy`.
    pub(crate) fn start(&self, policy: crate::Probation, generation: u64) {
        *self.window() = Some(Window {
            generation,
            calls_left: policy.calls,
            until: policy.duration.map(|d| Instant::now() + d),
            failed: None,
        });
        self.on.store(true, Ordering::Release);
    }

    /// Ends probation: the version serving is good (or was rolled back). Returns the
    /// generation that was on probation.
    pub(crate) fn end(&self) -> Option<u64> {
        self.on.store(false, Ordering::Release);
        self.window().take().map(|w| w.generation)
    }

    /// Counts a finished call. Returns the generation to roll back from, and why, when a
    /// call panicked during the window.
    fn count(&self, panicked: Option<String>) -> Option<(u64, String)> {
        let mut window = self.window();
        let state = window.as_mut()?;
        if let Some(reason) = panicked {
            state.failed.get_or_insert(reason);
        }
        if let Some(reason) = &state.failed {
            return Some((state.generation, reason.clone()));
        }
        if let Some(left) = &mut state.calls_left {
            *left = left.saturating_sub(1);
        }
        let calls_done = state.calls_left == Some(0);
        let time_done = state.until.is_some_and(|t| Instant::now() >= t);
        if calls_done || time_done {
            *window = None;
            self.on.store(false, Ordering::Release);
        }
        None
    }
}

/// After a call during probation: counts it, and rolls the module back when a call panicked
/// and no call of the module is running on this thread any more.
#[cold]
#[inline(never)]
pub(crate) fn after_call<R>(core: &ModuleCore, result: &Result<R, HotError>) {
    let panicked = match result {
        Err(
            err @ HotError::Call {
                fault: ModuleFault::Panicked(_),
                ..
            },
        ) => Some(format!("probation: {err}")),
        _ => None,
    };
    let Some((generation, reason)) = core.probation.count(panicked) else {
        return;
    };
    if core.access.in_call_here() || !crate::access::holds_no_module_lock() {
        // Nested in a call of this module or of another one that holds a module lock: the
        // rollback would wait for a lock while holding one. The next call that ends outside
        // every call rolls back.
        return;
    }
    let Some(reloader) = core.reloader.upgrade() else {
        return;
    };
    // The snapshot taken at the reload: the new version's state is suspect.
    if let Err(err) = reloader.rollback(core, true, Some(generation), &reason) {
        tracing::error!(module = %core.spec.name, "probation rollback failed: {err}");
    }
}
