//! Step 6: let go of the replaced version.
//!
//! The old state is retired by the old code (the module's retire hook, then its workers are
//! told to stop, then the state is dropped). The old version stays loaded in the module's
//! history (for rollback, without needing its artifact on disk) until newer ones push it out;
//! then it is closed, unless something may still run in it:
//! - its workers ([`crate::worker`]) are joined, waiting up to the module's
//!   `worker_stop_timeout`; one that has not returned keeps the version mapped;
//! - every other thread started while it served is checked: its program counter and its
//!   stack, from the saved stack pointer up, must hold no address inside the version's image
//!   (a thread that module code started with `std::thread` or `pthread_create` and that sleeps
//!   in it would otherwise wake up in unmapped code);
//! - a module registered with `keep_loaded` is never closed.
//!
//! A version kept for one of these reasons is "held": an event says why, and every later
//! retire checks it again and closes it once nothing runs in it. When a version is closed,
//! its library is closed and its shadow copy deleted. glibc keeps a library mapped after
//! `dlclose` once it has registered a thread-local destructor (a `thread_local!` with a `Drop`
//! type, which std itself registers in threads it starts), so the runtime then checks whether
//! the image really went away, and says so.

use crate::module::{Book, ModuleSpec};
use crate::os;
use crate::version::{Held, Kept, Live, LoadedVersion, RetiredVersion};

/// Retires `old` (with the state `snapshot` it saved when it was replaced), keeps it loaded
/// for rollback, and closes whatever falls out of the history, as well as held versions that
/// nothing runs in any more. Returns the versions closed or newly held, and the held ones
/// released.
pub(crate) fn retire(
    old: Live,
    snapshot: Option<Vec<u8>>,
    book: &mut Book,
    spec: &ModuleSpec,
) -> (Vec<RetiredVersion>, Vec<RetiredVersion>) {
    let version = old.into_version();
    let released = release_held(book, spec);
    let mut closed = Vec::new();
    match snapshot {
        Some(snapshot) if spec.history > 0 => book.history.push_back(Kept { version, snapshot }),
        _ => closed.push(close(version, book, spec)),
    }
    while book.history.len() > spec.history {
        if let Some(oldest) = book.history.pop_front() {
            closed.push(close(oldest.version, book, spec));
        }
    }
    (closed, released)
}

/// Closes a version that no longer serves and is not kept for rollback, or holds it if
/// something may still run in it.
pub(crate) fn close(version: LoadedVersion, book: &mut Book, spec: &ModuleSpec) -> RetiredVersion {
    let info = version.info.clone();
    let held = if spec.keep_loaded {
        Some("the module is registered with `keep_loaded`".to_owned())
    } else {
        version.still_in_use(spec.worker_stop_timeout_ms())
    };
    if let Some(reason) = held {
        tracing::warn!(
            module = %info.module,
            generation = info.generation,
            "a closed version stays mapped: {reason}"
        );
        let held = Held { version, reason };
        let report = held.report();
        book.held.push(held);
        return report;
    }
    unmap(version)
}

/// Closes the library of a version found free (`still_in_use` said so just before) and
/// reports whether the OS really unmapped it.
fn unmap(version: LoadedVersion) -> RetiredVersion {
    let info = version.info.clone();
    version.image.close_checked();
    let still_mapped = os::is_mapped(&info.shadow);
    if still_mapped == Some(true) {
        tracing::warn!(
            module = %info.module,
            generation = info.generation,
            shadow = %info.shadow.display(),
            "the OS kept a closed version mapped (it registered thread-local destructors); \
             its memory stays in use until the process exits"
        );
    }
    RetiredVersion {
        info,
        still_mapped,
        held: None,
    }
}

/// Closes the held versions that nothing runs in any more (their workers were given their
/// time when they were first closed: no waiting now).
pub(crate) fn release_held(book: &mut Book, spec: &ModuleSpec) -> Vec<RetiredVersion> {
    if spec.keep_loaded || book.held.is_empty() {
        return Vec::new();
    }
    let mut released = Vec::new();
    for mut held in std::mem::take(&mut book.held) {
        match held.version.still_in_use(0) {
            Some(reason) => {
                held.reason = reason;
                book.held.push(held);
            }
            None => released.push(unmap(held.version)),
        }
    }
    released
}

/// When the module goes away (its reloader and every handle dropped): retires the live
/// version, closes every kept and held version that nothing runs in, and leaves mapped for
/// the rest of the process those that something may still run in.
pub(crate) fn retire_all(live: Option<Live>, book: &mut Book, spec: &ModuleSpec) {
    if let Some(live) = live {
        let version = live.into_version();
        close(version, book, spec);
    }
    while let Some(kept) = book.history.pop_front() {
        close(kept.version, book, spec);
    }
    release_held(book, spec);
    for Held { version, reason } in book.held.drain(..) {
        tracing::warn!(
            module = %version.info.module,
            generation = version.info.generation,
            reason,
            "the module is dropped while a thread may still run in this version: it stays \
             mapped until the process exits"
        );
        version.image.leak();
    }
}
