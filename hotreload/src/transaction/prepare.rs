//! Step 4: build the new version's state: from scratch on a first load, from the running
//! version's state on a reload (save with the old code, restore with the new).

use abi_stable::std_types::{RResult, RSlice};
use hotreload_abi::StatePtr;

use crate::error::HotError;
use crate::version::{Live, LoadedVersion};

/// A fresh state (`T::default()`) made by `version`.
pub(crate) fn construct(version: &LoadedVersion) -> Result<StatePtr, HotError> {
    match (version.lifecycle.construct)() {
        RResult::ROk(state) => Ok(state),
        RResult::RErr(err) => Err(HotError::Construct {
            module: version.info.module.clone(),
            path: version.info.artifact.clone(),
            generation: version.info.generation,
            fault: err.into(),
        }),
    }
}

/// The running state as an envelope of schema `schema` (the version's own, or an older one
/// it declares a way down to), copied into the host's memory.
///
/// The caller holds the module's write lock, or (a running build that declares
/// `concurrent_save`) excludes `&mut self` calls while `&self` calls, which only read the
/// state, go on: no call changes the state after this.
pub(crate) fn save(live: &Live, schema: u32) -> Result<Vec<u8>, HotError> {
    match (live.version.lifecycle.save)(live.state, schema) {
        // Copied out: the RVec's buffer is freed through the old version's code, now.
        RResult::ROk(bytes) => Ok(bytes.as_slice().to_vec()),
        RResult::RErr(err) => Err(HotError::Save {
            module: live.version.info.module.clone(),
            generation: live.version.info.generation,
            fault: err.into(),
        }),
    }
}

/// A new state made by `version` from an envelope saved by load `from_generation`.
pub(crate) fn restore(
    version: &LoadedVersion,
    envelope: &[u8],
    from_generation: u64,
) -> Result<StatePtr, HotError> {
    match (version.lifecycle.restore)(RSlice::from_slice(envelope)) {
        RResult::ROk(state) => Ok(state),
        RResult::RErr(err) => Err(HotError::Restore {
            module: version.info.module.clone(),
            path: version.info.artifact.clone(),
            generation: version.info.generation,
            from_generation,
            fault: err.into(),
        }),
    }
}
