//! Platforms other than Unix: untested; the loader's defaults, and no mapping information.

use std::path::Path;

pub(crate) fn open_library(
    path: &Path,
    _slots: &DtorSlots,
) -> Result<(libloading::Library, Option<std::sync::Arc<ImageDtors>>), libloading::Error> {
    // SAFETY: as for Unix: the file is a private shadow copy of a registered module.
    unsafe { libloading::Library::new(path) }.map(|library| (library, None))
}

/// Thread-local destructors stay the platform's: nothing to find.
#[derive(Debug, Clone, Default)]
pub(crate) struct DtorSlots;

impl DtorSlots {
    pub(crate) fn find(_file: &object::File<'_>) -> DtorSlots {
        DtorSlots
    }
}

/// Never made on this platform.
#[derive(Debug)]
pub(crate) struct ImageDtors;

impl ImageDtors {
    pub(crate) fn settle(&self) -> Option<String> {
        None
    }

    pub(crate) fn release_keys(&self) {}

    pub(crate) fn forget(self: &std::sync::Arc<Self>) {}
}

pub(crate) fn catch_up() {}

/// Whether `a` and `b` name one file, as far as their canonical paths tell.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b)
}

/// No build-directory lock where `flock` is not: cargo's own builds are not excluded.
pub(crate) fn try_lock_exclusive(_file: &std::fs::File) -> std::io::Result<bool> {
    Ok(true)
}

pub(crate) fn is_mapped(_path: &Path) -> Option<bool> {
    None
}

/// No thread census on this platform.
#[derive(Debug, Clone, Default)]
pub(crate) struct ThreadCensus;

pub(crate) fn thread_census() -> Option<ThreadCensus> {
    None
}

/// Without a way to look at other threads, a closed version is assumed to be in use: it stays
/// mapped.
pub(crate) fn thread_in_image(_path: &Path, _census: &ThreadCensus) -> Option<String> {
    Some("this platform cannot check where the process's threads are".into())
}

/// Marks the calling thread as one of the runtime's own (nothing to mark on this platform).
pub(crate) struct RuntimeThread;

impl RuntimeThread {
    pub(crate) fn enter() -> Self {
        RuntimeThread
    }
}
