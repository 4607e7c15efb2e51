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
//! its library is closed and its shadow copy deleted.
//!
//! Thread-local destructors of the version (a `thread_local!` with a `Drop` type, which std
//! itself registers in threads it starts) are the runtime's, not glibc's (see
//! `os::thread_exit`): the closing thread runs its own first, and a version whose
//! destructors are still pending on other threads is held until those threads have run them
//! (at their next call, or as they end). glibc keeps a library mapped after `dlclose` if one
//! reached it anyway, so the runtime checks whether the image really went away, and says so.

use crate::VersionInfo;
use crate::module::{Book, ModuleSpec};
use crate::os;
use crate::version::{Held, Image, Kept, Live, LoadedVersion, RetiredVersion};

/// Retires `old` (with the state `snapshot` it saved when it was replaced, after `mutations`
/// `&mut self` calls of the module), keeps it loaded
/// for rollback, and closes whatever falls out of the history, as well as held versions that
/// nothing runs in any more. Returns the versions closed or newly held, and the held ones
/// released.
pub(crate) fn retire(
    old: Live,
    snapshot: Option<Vec<u8>>,
    mutations: u64,
    book: &mut Book,
    spec: &ModuleSpec,
) -> (Vec<RetiredVersion>, Vec<RetiredVersion>) {
    let version = old.into_version();
    let released = release_held(book, spec);
    let mut closed = Vec::new();
    match snapshot {
        Some(snapshot) if spec.history > 0 => book.history.push_back(Kept {
            version,
            snapshot,
            mutations,
        }),
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
    if spec.keep_loaded {
        return hold(Held::kept(version), book);
    }
    match version.still_in_use(spec.worker_stop_timeout_ms()) {
        Some(reason) => hold(Held::version(version, reason), book),
        None => {
            let metrics = version.metrics();
            unmap(version.info(), version.image, metrics)
        }
    }
}

/// Closes a build refused before it was verified (its initialisers ran), or holds it if a
/// thread it started may still run in it.
pub(crate) fn close_unverified(info: VersionInfo, image: Image, book: &mut Book) -> RetiredVersion {
    match image.in_use() {
        Some(reason) => hold(Held::unverified(info, image, reason), book),
        None => unmap(info, image, None),
    }
}

fn hold(held: Held, book: &mut Book) -> RetiredVersion {
    tracing::warn!(
        module = %held.info.module,
        generation = held.info.generation,
        "a closed version stays mapped: {}",
        held.reason
    );
    let report = held.report();
    book.held.push(held);
    report
}

/// Closes the library of a version found free (just checked) and reports whether the OS
/// really unmapped it.
fn unmap(
    info: VersionInfo,
    image: Image,
    metrics: Option<crate::VersionMetrics>,
) -> RetiredVersion {
    image.close_checked();
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
        metrics,
    }
}

/// Closes the held versions that nothing runs in any more.
pub(crate) fn release_held(book: &mut Book, spec: &ModuleSpec) -> Vec<RetiredVersion> {
    if spec.keep_loaded || book.held.is_empty() {
        return Vec::new();
    }
    let mut released = Vec::new();
    for mut held in std::mem::take(&mut book.held) {
        if held.still_in_use() {
            book.held.push(held);
        } else {
            let (info, image, metrics) = held.into_parts();
            released.push(unmap(info, image, metrics));
        }
    }
    released
}

/// When the module goes away (its reloader and every handle dropped): retires the live
/// version, closes every kept and held version that nothing runs in, and leaves mapped for
/// the rest of the process those that something may still run in.
pub(crate) fn retire_all(
    live: Option<Live>,
    canary: Option<Box<crate::canary::Slot>>,
    book: &mut Book,
    spec: &ModuleSpec,
) {
    if let Some(slot) = canary {
        slot.trial.end();
        close(slot.live.into_version(), book, spec);
    }
    if let Some(live) = live {
        let version = live.into_version();
        close(version, book, spec);
    }
    while let Some(kept) = book.history.pop_front() {
        close(kept.version, book, spec);
    }
    release_held(book, spec);
    for held in book.held.drain(..) {
        tracing::warn!(
            module = %held.info.module,
            generation = held.info.generation,
            reason = held.reason,
            "the module is dropped while a thread may still run in this version: it stays \
             mapped until the process exits"
        );
        held.leak();
    }
}
