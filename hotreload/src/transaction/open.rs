//! Step 2: dlopen the shadow copy and find the module's descriptor.

use hotreload_abi::{ModuleDescriptor, descriptor_symbol};

use crate::VersionInfo;
use crate::error::HotError;
use crate::module::ModuleSpec;
use crate::os;
use crate::version::{Image, LoadedVersion, ShadowFile};

/// A library opened from a shadow copy, not yet verified.
pub(crate) struct OpenedLibrary {
    /// Points into the library's image: valid while `handle` is open. Nothing but its
    /// fixed prefix may be read before [`verify`](super::verify) has checked that prefix.
    pub descriptor: *const ModuleDescriptor,
    pub generation: u64,
    image: Image,
}

impl OpenedLibrary {
    /// Called by verification once the descriptor and table are known to be sound.
    pub(crate) fn into_verified(
        self,
        checked: super::verify::Checked,
        meter: Option<std::sync::Arc<crate::metrics::Meter>>,
    ) -> LoadedVersion {
        let super::verify::Checked {
            info,
            lifecycle,
            schema,
            table,
            unknown_methods,
            descriptor,
            links,
        } = checked;
        let mut image = self.image;
        image.links = Some(links);
        LoadedVersion {
            info,
            schema,
            unknown_methods,
            table,
            lifecycle,
            descriptor,
            image,
            meter,
        }
    }

    pub(crate) fn shadow(&self) -> &ShadowFile {
        &self.image.shadow
    }

    /// A library refused by verification: its description (API and schema versions unknown:
    /// 0) and its image, to close.
    pub(crate) fn into_refused(self, module: &str) -> (VersionInfo, Image) {
        let shadow = &self.image.shadow;
        let info = VersionInfo {
            module: module.to_owned(),
            generation: self.generation,
            api_version: 0,
            state_version: 0,
            artifact: shadow.artifact.clone(),
            artifact_len: shadow.len,
            sha256: shadow.sha256.get(),
            shadow: shadow.path.clone(),
            loaded_at: std::time::SystemTime::now(),
        };
        (info, self.image)
    }
}

/// The loader's message with its causes: libloading keeps the dynamic loader's own words
/// (which symbol is missing, say) in the source.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

pub(crate) fn open(
    spec: &ModuleSpec,
    shadow: ShadowFile,
    generation: u64,
) -> Result<OpenedLibrary, HotError> {
    let census = os::thread_census().unwrap_or_default();
    // A copy refused here is hashed before it goes (see `Sha256Cell`): the watcher
    // recognises the refused build by its digest.
    let handle = os::open_library(&shadow.path, &shadow.dtor_slots).map_err(|err| {
        shadow.sha256.get();
        HotError::Open {
            module: spec.name.clone(),
            path: shadow.artifact.clone(),
            generation,
            message: error_chain(&err),
        }
    })?;
    let symbol = descriptor_symbol(&spec.name);
    let image = Image::new(handle, shadow, census);
    // SAFETY: a data symbol's value is its address; `*const ModuleDescriptor` is only a
    // pointer type here and nothing is read through it until verification has checked the
    // descriptor's fixed prefix.
    let descriptor = unsafe {
        image
            .handle()
            .get::<*const ModuleDescriptor>(symbol.as_bytes())
    }
    .map(|sym| *sym)
    .map_err(|_| {
        image.shadow.sha256.get();
        HotError::NoDescriptor {
            module: spec.name.clone(),
            path: image.shadow.artifact.clone(),
            symbol: symbol.clone(),
        }
    })?;
    tracing::debug!(symbol, "descriptor found");
    Ok(OpenedLibrary {
        descriptor,
        generation,
        image,
    })
}
