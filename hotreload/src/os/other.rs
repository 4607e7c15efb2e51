//! Platforms other than Unix: untested; the loader's defaults, and no mapping information.

use std::path::Path;

pub(crate) fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: as for Unix: the file is a private shadow copy of a registered module.
    unsafe { libloading::Library::new(path) }
}

pub(crate) fn is_mapped(_path: &Path) -> Option<bool> {
    None
}
