//! Step 6: let go of the replaced version.
//!
//! The old state is destroyed by the old code, then the old library is closed and its shadow
//! copy deleted. glibc keeps a library mapped after `dlclose` once it has registered a
//! thread-local destructor (a `thread_local!` with a `Drop` type, which std itself can
//! register), so the runtime then checks whether the image really went away, and says so.

use std::path::PathBuf;

use crate::VersionInfo;
use crate::module::Live;
use crate::os;

/// A version that no longer serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetiredVersion {
    /// The version.
    pub info: VersionInfo,
    /// Whether its image was still mapped right after it was closed (`None`: unknown on this
    /// platform).
    pub still_mapped: Option<bool>,
}

impl RetiredVersion {
    /// The shadow copy the version was loaded from (deleted, but named in `/proc/self/maps`
    /// while the image stays mapped).
    pub fn shadow(&self) -> &PathBuf {
        &self.info.shadow
    }

    /// Whether the image is mapped now.
    pub fn is_mapped_now(&self) -> Option<bool> {
        os::is_mapped(&self.info.shadow)
    }
}

/// Destroys `old`'s state, closes its library, and reports what the OS did.
pub(crate) fn retire(old: Live) -> RetiredVersion {
    let info = old.version.info.clone();
    // `Live`'s drop destroys the state with the old code, then drops the version, which
    // closes the library and deletes the shadow copy.
    drop(old);
    let still_mapped = os::is_mapped(&info.shadow);
    if still_mapped == Some(true) {
        tracing::warn!(
            module = %info.module,
            generation = info.generation,
            shadow = %info.shadow.display(),
            "the OS kept the previous version mapped after it was closed (it registered \
             thread-local destructors); its memory stays in use until the process exits"
        );
    }
    RetiredVersion { info, still_mapped }
}
