//! Step 6: let go of the replaced version.
//!
//! The old state is destroyed by the old code. The old version stays loaded in the module's
//! history (for rollback, without needing its artifact on disk) until newer ones push it out;
//! then its library is closed and its shadow copy deleted. glibc keeps a library mapped after `dlclose` once it has registered a
//! thread-local destructor (a `thread_local!` with a `Drop` type, which std itself can
//! register), so the runtime then checks whether the image really went away, and says so.

use std::path::PathBuf;

use crate::VersionInfo;
use crate::module::{Book, Kept, Live};
use crate::os;
use crate::transaction::LoadedVersion;

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

/// Destroys `old`'s state with its own code, keeps the version loaded for rollback (with the
/// state `snapshot` it saved when it was replaced), and closes whatever falls out of the
/// history. Returns the versions closed.
pub(crate) fn retire(
    old: Live,
    snapshot: Option<Vec<u8>>,
    book: &mut Book,
    keep: usize,
) -> Vec<RetiredVersion> {
    let version = old.into_version();
    let mut closed = Vec::new();
    match snapshot {
        Some(snapshot) if keep > 0 => book.history.push_back(Kept { version, snapshot }),
        _ => closed.push(close(version)),
    }
    while book.history.len() > keep {
        if let Some(oldest) = book.history.pop_front() {
            closed.push(close(oldest.version));
        }
    }
    closed
}

/// Closes a version's library, deletes its shadow copy, and reports what the OS did.
pub(crate) fn close(version: LoadedVersion) -> RetiredVersion {
    let info = version.info.clone();
    drop(version);
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
    RetiredVersion { info, still_mapped }
}
