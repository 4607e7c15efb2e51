//! The reloader's private directory of shadow copies: where each version's library is copied
//! before it is opened.

use std::path::Path;

use crate::error::HotError;

/// The reloader's private directory of shadow copies, mode 0700, removed when the last
/// version opened from it is gone.
pub(crate) struct ShadowDir(tempfile::TempDir);

impl ShadowDir {
    pub(crate) fn create() -> Result<Self, HotError> {
        tempfile::Builder::new()
            .prefix("hotreload-")
            .tempdir()
            .map(ShadowDir)
            .map_err(|source| HotError::ShadowDir {
                source: source.into(),
            })
    }

    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }
}
