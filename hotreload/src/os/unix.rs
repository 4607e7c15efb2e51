//! Unix: `dlopen` with `RTLD_NOW | RTLD_LOCAL`; `/proc/self/maps` where there is one.

use std::path::Path;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

/// Opens `path` with every symbol resolved now (an unresolved symbol fails here, not at the
/// first call) and local visibility (two versions' symbols never interpose).
pub(crate) fn open_library(path: &Path) -> Result<libloading::Library, libloading::Error> {
    // SAFETY: loading a library runs its initialisers. The file is a private shadow copy,
    // owned by this process in a 0700 directory, of an artifact the host registered as a
    // module; Rust cdylibs built by `#[hot_module]` crates have no initialisers beyond std's.
    let library = unsafe { Library::open(Some(path), RTLD_NOW | RTLD_LOCAL) }?;
    Ok(library.into())
}

/// Whether an image loaded from `path` is mapped into this process; `None` without `/proc`.
pub(crate) fn is_mapped(path: &Path) -> Option<bool> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let path = path.to_str()?;
    Some(maps.lines().any(|line| {
        line.split_once('/')
            .map(|(_, rest)| {
                let mapped = format!("/{rest}");
                mapped == path || mapped.strip_suffix(" (deleted)") == Some(path)
            })
            .unwrap_or(false)
    }))
}
