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

    /// The probation in progress, as the host sees it.
    pub(crate) fn report(&self) -> Option<crate::status::ProbationStatus> {
        self.window()
            .as_ref()
            .map(|window| crate::status::ProbationStatus {
                generation: window.generation,
                calls_left: window.calls_left,
                time_left: window
                    .until
                    .map(|until| until.saturating_duration_since(Instant::now())),
            })
    }

    /// Ends probation: the version serving is good (or was rolled back). Returns the
    /// generation that was on probation.
    pub(crate) fn end(&self) -> Option<u64> {
        self.on.store(false, Ordering::Release);
        self.window().take().map(|w| w.generation)
    }

    /// Counts a finished call: `panicked` holds the generation the call ran in and the
    /// reason when it panicked. A panic in another generation than the one on probation (a
    /// call that began before the reload) counts for nothing.
    fn count(&self, panicked: Option<(u64, String)>) -> Counted {
        let mut window = self.window();
        let Some(state) = window.as_mut() else {
            return Counted::Nothing;
        };
        match panicked {
            Some((generation, _)) if generation != state.generation => return Counted::Nothing,
            Some((_, reason)) => {
                state.failed.get_or_insert(reason);
            }
            None => {}
        }
        if let Some(reason) = &state.failed {
            return Counted::RollBack(state.generation, reason.clone());
        }
        if let Some(left) = &mut state.calls_left {
            *left = left.saturating_sub(1);
        }
        let calls_done = state.calls_left == Some(0);
        let time_done = state.until.is_some_and(|t| Instant::now() >= t);
        if calls_done || time_done {
            let generation = state.generation;
            *window = None;
            self.on.store(false, Ordering::Release);
            return Counted::Ended(generation);
        }
        Counted::Nothing
    }
}

/// What a counted call means for the probation.
#[derive(Debug, PartialEq, Eq)]
enum Counted {
    Nothing,
    /// The window ended without a panic: the version is good.
    Ended(u64),
    /// A call panicked during the window: roll back from this generation.
    RollBack(u64, String),
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
                generation,
                ..
            },
        ) => Some((*generation, format!("probation: {err}"))),
        _ => None,
    };
    let (generation, reason) = match core.probation.count(panicked) {
        Counted::Nothing => return,
        Counted::Ended(generation) => {
            if let Some(reloader) = core.reloader.upgrade() {
                reloader.events.emit(crate::Event::ProbationEnded {
                    module: core.spec.name.clone(),
                    generation,
                });
            }
            return;
        }
        Counted::RollBack(generation, reason) => (generation, reason),
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

#[cfg(test)]
mod tests {
    use super::{Counted, Probation};

    #[test]
    fn a_panic_in_another_generation_counts_for_nothing() {
        let probation = Probation::default();
        probation.start(crate::Probation::calls(2), 7);
        // A call that began in load #6, before the reload, panicked after it.
        assert_eq!(probation.count(Some((6, "old".into()))), Counted::Nothing);
        assert!(probation.is_on());
        assert_eq!(
            probation.count(Some((7, "new".into()))),
            Counted::RollBack(7, "new".into())
        );
    }

    #[test]
    fn the_window_ends_after_its_calls() {
        let probation = Probation::default();
        probation.start(crate::Probation::calls(2), 3);
        assert_eq!(probation.count(None), Counted::Nothing);
        assert_eq!(probation.count(None), Counted::Ended(3));
        assert!(!probation.is_on());
    }
}
