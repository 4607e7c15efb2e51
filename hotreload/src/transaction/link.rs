//! Step 3b: link the new builds of a transaction to the modules they call and to the
//! serving modules that call them, before anything running is touched (see `crate::link`).
//!
//! Each new build's imports are filled against its callees: a build of the same transaction,
//! or the serving version. Each serving caller outside the transaction that calls a module
//! of it is checked against the new build; its import is repointed at the commit, under the
//! callee's write lock. The first that does not fit refuses the build it is about.
//!
//! Runs under the reloader's transaction lock: no serving version changes meanwhile.

use std::sync::Arc;

use hotreload_abi::ModuleDescriptor;

use crate::VersionInfo;
use crate::error::HotError;
use crate::link::{self, Callee, Install, Links};
use crate::module::ModuleCore;
use crate::version::LoadedVersion;

/// A new build of one module of the transaction.
pub(crate) struct NewBuild<'a> {
    pub core: &'a Arc<ModuleCore>,
    pub info: &'a VersionInfo,
    pub descriptor: &'a ModuleDescriptor,
    pub links: &'a Links,
}

impl<'a> NewBuild<'a> {
    pub(crate) fn of(core: &'a Arc<ModuleCore>, version: &'a LoadedVersion) -> Self {
        NewBuild {
            core,
            info: &version.info,
            descriptor: version.descriptor(),
            links: version.links(),
        }
    }

    fn callee(&self) -> Callee<'a> {
        Callee {
            core: self.core,
            generation: self.info.generation,
            descriptor: self.descriptor,
        }
    }
}

/// Links `set` (the new builds) among themselves and to `registry` (every registered module:
/// members of the set are skipped there). Returns the serving callers' imports to repoint
/// when the set commits.
pub(crate) fn link(
    set: &[NewBuild<'_>],
    registry: &[Arc<ModuleCore>],
) -> Result<Vec<Install>, HotError> {
    let member = |name: &str| set.iter().find(|build| build.core.spec.name == name);
    let outside = || {
        registry
            .iter()
            .filter(|core| member(&core.spec.name).is_none())
    };
    for build in set {
        let find = |name: &str| -> Option<Callee<'_>> {
            if let Some(new) = member(name) {
                return Some(new.callee());
            }
            let core = outside().find(|core| core.spec.name == name)?;
            let (generation, descriptor) = core.access.serving_descriptor()?;
            Some(Callee {
                core,
                generation,
                // SAFETY: this step runs under the reloader's transaction lock, which every
                // replacement of a serving version holds: that version stays loaded while
                // the callee is used here.
                descriptor: unsafe { descriptor.get() },
            })
        };
        let registered = |name: &str| registry.iter().find(|c| c.spec.name == name).cloned();
        link::link_own(build.links, find, registered)
            .map_err(|reason| link::rejected(build.info, reason))?;
    }
    let callers: Vec<Arc<Links>> = outside()
        .filter_map(|core| core.access.serving_links())
        .collect();
    let mut installs = Vec::new();
    for build in set {
        let planned = link::plan_callers(&build.callee(), callers.iter())
            .map_err(|reason| link::rejected(build.info, reason))?;
        installs.extend(planned);
    }
    Ok(installs)
}
