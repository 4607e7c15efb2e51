//! Step 3: decide whether an opened library may serve this module, before anything running
//! is touched. Checks, in order: the descriptor's magic and framework ABI version (before any
//! other field is read), the descriptor's full size (from the file's symbol table), the panic
//! strategy (only `unwind` lets a panic come back as an error), the module name, the layout
//! of each method the host was compiled with (found by name: a build may add methods), the
//! API version.

pub(crate) mod layout;

use std::time::SystemTime;

use abi_stable::abi_stability::abi_checking::{
    CheckingGlobals, check_layout_compatibility_with_globals,
};
use abi_stable::type_layout::TypeLayout;
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
        Ok(checked) => {
            // Before any other entry: the module's panic hook asks the host whether a panic
            // is inside a call, and its calls into other modules come through its links. It
            // cannot fail but by a panic, which it contains.
            if let abi_stable::std_types::RResult::RErr(err) =
                (checked.lifecycle.attach)(crate::link::hooks(&checked.links))
            {
                tracing::warn!(module = %spec.name, "attaching the module failed: {err:?}");
            }
            let meter = spec.metrics.is_on().then(|| {
                std::sync::Arc::new(crate::metrics::Meter::new(
                    metered_methods(spec, &opened),
                    spec.metrics,
                ))
            });
            Ok(opened.into_verified(checked, meter))
        }
        Err(err) => Err(Box::new((err, opened))),
    }
}

/// The methods a version's metrics count: the host's, in its order (a host call names one by
/// its place), then the build's others, which only other modules call.
fn metered_methods(spec: &ModuleSpec, opened: &OpenedLibrary) -> Box<[Box<str>]> {
    let host = spec.methods.iter().map(|method| method.name);
    // SAFETY: verification checked the descriptor at this address in the image `opened`
    // keeps mapped; its method names are copied here.
    let descriptor = unsafe { &*opened.descriptor };
    let others = descriptor
        .methods
        .iter()
        .map(|method| method.name.as_str())
        .filter(|name| !spec.methods.iter().any(|host| host.name == *name));
    host.chain(others).map(Box::from).collect()
}

/// The checks, in order; what a verified version is made of.
fn check(spec: &ModuleSpec, opened: &OpenedLibrary) -> Result<Checked, HotError> {
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

    let expected = Expected {
        entries: spec.entries,
        table_size: spec.table_size,
        methods: layout::Declared::host(spec.methods),
        expected_by: "the host",
    };
    let (table, mut unknown_methods) =
        fill_table(&expected, descriptor).map_err(|(summary, detail)| {
            reject(
                Rejection::Layout(summary),
                detail.map(String::into_boxed_str),
            )
        })?;

    if !spec.accepted_api.contains(&descriptor.api_version) {
        return Err(reject(
            Rejection::ApiVersion {
                found: descriptor.api_version,
                accepted: spec.accepted_api.clone(),
            },
            None,
        ));
    }

    if !spec.host_calls {
        // Only other modules call it: none of its methods is the host's to know.
        unknown_methods.clear();
    }
    let lifecycle = table.lifecycle();
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
    Ok(Checked {
        links: std::sync::Arc::new(crate::link::Links::of(
            &spec.name,
            opened.generation,
            descriptor,
            spec.forward_logs,
        )),
        info,
        lifecycle,
        schema: crate::version::Schema::of(descriptor),
        table,
        unknown_methods,
        descriptor: crate::version::Descriptor::new(opened.descriptor),
    })
}

/// What verification found a version to be.
pub(crate) struct Checked {
    pub info: VersionInfo,
    pub lifecycle: LifecycleEntries,
    pub schema: crate::version::Schema,
    pub table: HostTable,
    /// The build's methods that the host was not compiled with.
    pub unknown_methods: Vec<String>,
    /// Its descriptor, in its image.
    pub descriptor: crate::version::Descriptor,
    /// Its imports, not linked yet.
    pub links: std::sync::Arc<crate::link::Links>,
}

/// A version's export table as the host was compiled with it (`T::Table`), filled with the
/// build's entries: the lifecycle entries, then each method the host knows, found by name.
/// Owned by the host, so the build's own table may have more methods, in any order.
pub(crate) struct HostTable(Box<[usize]>);

impl HostTable {
    /// The table, for the call path to read as `T::Table` (inlined into the caller's
    /// `hot_fn!`: a function of this crate is not, across crates, without the attribute).
    #[inline(always)]
    pub(crate) fn as_ptr(&self) -> *const std::ffi::c_void {
        self.0.as_ptr().cast()
    }

    fn lifecycle(&self) -> LifecycleEntries {
        // SAFETY: `table` wrote a whole `LifecycleEntries` (function pointers, word-sized and
        // word-aligned) at the start of the words, which are at least that many.
        unsafe { std::ptr::read(self.0.as_ptr().cast::<LifecycleEntries>()) }
    }
}

/// A table as one side was compiled with it: the host (`T::Table`), or a module calling
/// another.
pub(crate) struct Expected<'a> {
    /// Each method's entry: name, layout and offset.
    pub entries: &'a [hotreload_abi::TableEntry],
    /// The size of the table type.
    pub table_size: usize,
    /// The methods as that side's source declares them, for messages.
    pub methods: layout::Declared,
    /// That side, for messages: "the host", "`ai`".
    pub expected_by: &'a str,
}

/// The table `expected` describes for this build, and the build's methods it does not know;
/// or the first difference in the expected side's terms, with abi_stable's full report.
pub(crate) fn fill_table(
    expected_side: &Expected<'_>,
    descriptor: &ModuleDescriptor,
) -> Result<(HostTable, Vec<String>), (String, Option<String>)> {
    const WORD: usize = size_of::<usize>();
    // Copied out: the descriptions live in the module's image.
    let declared = layout::Declared::copy(descriptor.methods.as_slice());
    // A private `CheckingGlobals` per verification: the shared one caches layouts, and the
    // module's layouts disappear when its version is unmapped. Errors hold references into
    // the module too; they are turned into text here and dropped.
    let globals = CheckingGlobals::new();
    let compare = |expected: &'static TypeLayout, found: &'static TypeLayout| {
        check_layout_compatibility_with_globals(expected, found, &globals).map_err(|errors| {
            let summary = layout::summarize(
                &errors,
                &expected_side.methods,
                &declared,
                expected_side.expected_by,
            );
            (summary, Some(errors.to_string()))
        })
    };
    compare(
        <LifecycleEntries as abi_stable::StableAbi>::LAYOUT,
        descriptor.lifecycle_layout,
    )
    .map_err(|(_, detail)| ("the lifecycle entries' layout differs".to_owned(), detail))?;
    let lifecycle_words = size_of::<LifecycleEntries>() / WORD;
    let table_words = descriptor.table_size / WORD;
    let found = descriptor.entries.as_slice();
    let malformed = |what: String| (format!("the export table is malformed: {what}"), None);
    if descriptor.table.is_null()
        || table_words < lifecycle_words
        || descriptor.table.align_offset(WORD) != 0
    {
        return Err(malformed(format!("{} bytes", descriptor.table_size)));
    }
    // The expected side's table: the host's own type, or what a calling module declares in
    // its image (checked like the build's).
    let expected_words = expected_side.table_size / WORD;
    let fits = |offset: usize| {
        offset % WORD == 0 && offset / WORD >= lifecycle_words && offset / WORD < expected_words
    };
    if expected_side.table_size % WORD != 0
        || expected_words < lifecycle_words
        || expected_side.entries.iter().any(|e| !fits(e.offset))
    {
        return Err((
            format!(
                "{} describes a malformed export table ({} bytes)",
                expected_side.expected_by, expected_side.table_size
            ),
            None,
        ));
    }
    let mut words = vec![0usize; expected_words].into_boxed_slice();
    // SAFETY: the build's table is a static in its mapped image, aligned (checked above) and
    // at least `table_size >= size_of::<LifecycleEntries>()` bytes (checked above), and
    // starts with `LifecycleEntries` (its layout was checked just above); `words` has room
    // for them (`expected_words >= lifecycle_words`, checked above).
    unsafe {
        std::ptr::copy_nonoverlapping(
            descriptor.table.cast::<usize>(),
            words.as_mut_ptr(),
            lifecycle_words,
        );
    }
    for expected in expected_side.entries {
        let name = expected.name.as_str();
        let Some(entry) = found.iter().find(|entry| entry.name.as_str() == name) else {
            return Err((format!("method '{name}' is missing"), None));
        };
        compare(expected.layout, entry.layout)?;
        if let Some(difference) =
            expected_side
                .methods
                .receiver_difference(&declared, name, expected_side.expected_by)
        {
            return Err((difference, None));
        }
        if entry.offset % WORD != 0
            || entry.offset / WORD < lifecycle_words
            || entry.offset / WORD >= table_words
        {
            return Err(malformed(format!(
                "method '{name}' at byte {} of {}",
                entry.offset, descriptor.table_size
            )));
        }
        // SAFETY: inside the build's table (checked just above: aligned, and before its
        // end), a static of its image; the word is a function pointer of the layout just
        // checked against the host's for this method.
        let function = unsafe {
            descriptor
                .table
                .cast::<usize>()
                .add(entry.offset / WORD)
                .read()
        };
        // In bounds, and past the lifecycle entries: checked above.
        words[expected.offset / WORD] = function;
    }
    let unknown = found
        .iter()
        .map(|entry| entry.name.as_str())
        .filter(|name| {
            !expected_side
                .entries
                .iter()
                .any(|e| e.name.as_str() == *name)
        })
        .map(str::to_owned)
        .collect();
    Ok((HostTable(words), unknown))
}
