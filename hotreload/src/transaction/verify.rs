//! Step 3: decide whether an opened library may serve this module, before anything running
//! is touched. Checks, in order: the descriptor's magic and framework ABI version (before any
//! other field is read), the descriptor's full size (from the file's symbol table), the panic
//! strategy (only `unwind` lets a panic come back as an error), the module name, the export
//! table's layout, the API version.

mod layout;

use std::time::SystemTime;

use abi_stable::abi_stability::abi_checking::{
    CheckingGlobals, check_layout_compatibility_with_globals,
};
use hotreload_abi::{
    ABI_VERSION, DESCRIPTOR_MAGIC, DescriptorPrefix, LifecycleEntries, ModuleDescriptor,
    PANIC_ABORT, PANIC_UNWIND,
};

use super::open::OpenedLibrary;
use crate::VersionInfo;
use crate::error::{HotError, Rejection};
use crate::module::ModuleSpec;
use crate::version::LoadedVersion;

/// The verified version, or why not with the library (opened, its initialisers run) to close.
pub(crate) fn verify(
    spec: &ModuleSpec,
    opened: OpenedLibrary,
) -> Result<LoadedVersion, Box<(HotError, OpenedLibrary)>> {
    match check(spec, &opened) {
        Ok((info, table, lifecycle)) => {
            // Before any other entry: the module's panic hook asks the host whether a panic
            // is inside a call. It cannot fail but by a panic, which it contains.
            if let abi_stable::std_types::RResult::RErr(err) =
                (lifecycle.attach)(crate::access::HOST_HOOKS)
            {
                tracing::warn!(module = %spec.name, "attaching the module failed: {err:?}");
            }
            Ok(opened.into_verified(info, table, lifecycle))
        }
        Err(err) => Err(Box::new((err, opened))),
    }
}

/// The checks, in order; what a verified version is made of.
fn check(
    spec: &ModuleSpec,
    opened: &OpenedLibrary,
) -> Result<(VersionInfo, *const std::ffi::c_void, LifecycleEntries), HotError> {
    let reject = |reason: Rejection, detail: Option<Box<str>>| HotError::Rejected {
        module: spec.name.clone(),
        path: opened.shadow().artifact.clone(),
        generation: opened.generation,
        reason,
        detail,
    };

    // SAFETY: `opened.descriptor` is the address of the exported descriptor symbol, in an
    // image that stays mapped while `opened` lives, and staging checked in the file's symbol
    // table that the symbol is at least as large as the prefix. The address may be
    // misaligned if the symbol is not really a descriptor, hence the unaligned read.
    let prefix = unsafe { std::ptr::read_unaligned(opened.descriptor.cast::<DescriptorPrefix>()) };
    if prefix.magic != DESCRIPTOR_MAGIC {
        return Err(reject(Rejection::BadMagic, None));
    }
    if prefix.abi_version != ABI_VERSION {
        return Err(reject(
            Rejection::AbiVersion {
                expected: ABI_VERSION,
                found: prefix.abi_version,
            },
            None,
        ));
    }
    let full = size_of::<ModuleDescriptor>() as u64;
    if opened.shadow().descriptor_size < full {
        return Err(reject(
            Rejection::DescriptorSize {
                abi: ABI_VERSION,
                expected: full,
                found: opened.shadow().descriptor_size,
            },
            None,
        ));
    }
    if opened
        .descriptor
        .align_offset(align_of::<ModuleDescriptor>())
        != 0
    {
        return Err(reject(Rejection::BadMagic, None));
    }
    // SAFETY: the prefix says the module was built against this very ABI version, whose
    // descriptor layout is `ModuleDescriptor`; the symbol is at least that large (its size in
    // the file's symbol table, checked just above); the address is aligned for it (checked
    // above); the image stays mapped while `opened` lives.
    let descriptor = unsafe { &*opened.descriptor };
    match descriptor.panic_strategy {
        PANIC_UNWIND => {}
        PANIC_ABORT => return Err(reject(Rejection::PanicAbort, None)),
        other => return Err(reject(Rejection::PanicStrategy(other), None)),
    }

    let found_name = descriptor.module_name.as_str();
    if found_name != spec.name {
        return Err(reject(
            Rejection::ModuleName {
                found: found_name.to_owned(),
            },
            None,
        ));
    }

    // A private `CheckingGlobals` per check: the shared one caches layouts, and the module's
    // layouts disappear when its version is unmapped. The error holds references into the
    // module too; it is turned into text here and dropped.
    let globals = CheckingGlobals::new();
    if let Err(errors) = check_layout_compatibility_with_globals(
        spec.expected_layout,
        descriptor.table_layout,
        &globals,
    ) {
        // Copied out: the descriptions live in the module's image.
        let declared = layout::Declared::copy(descriptor.methods.as_slice());
        let summary = layout::summarize(
            &errors,
            spec.expected_layout,
            descriptor.table_layout,
            spec.methods,
            &declared,
        );
        let detail = errors.to_string().into_boxed_str();
        return Err(reject(Rejection::Layout(summary), Some(detail)));
    }

    if !spec.accepted_api.contains(&descriptor.api_version) {
        return Err(reject(
            Rejection::ApiVersion {
                found: descriptor.api_version,
                accepted: spec.accepted_api.clone(),
            },
            None,
        ));
    }

    // SAFETY: the layout check above proved the table starts with `LifecycleEntries` (the
    // host's expected table does), and the table is a static in the mapped image.
    let lifecycle = unsafe { *descriptor.table.cast::<LifecycleEntries>() };
    let info = VersionInfo {
        module: spec.name.clone(),
        generation: opened.generation,
        api_version: descriptor.api_version,
        state_version: descriptor.state_version,
        artifact: opened.shadow().artifact.clone(),
        artifact_len: opened.shadow().len,
        // Filled from the shadow copy when asked (`LoadedVersion::info`).
        sha256: String::new(),
        shadow: opened.shadow().path.clone(),
        loaded_at: SystemTime::now(),
    };
    tracing::debug!(api_version = info.api_version, "verified");
    Ok((info, descriptor.table, lifecycle))
}
