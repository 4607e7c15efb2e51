//! The runtime's one error type.

use std::fmt;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::Arc;

/// Everything that can go wrong in the runtime, one variant per cause.
///
/// Every variant names the module; those that concern a build name its path and the load
/// number (`load #N`, counted from 1 per module) it would have had or had. Whatever the
/// variant, a failed reload changed nothing: the version that was serving keeps serving, with
/// its state.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum HotError {
    /// No artifact exists where the module was expected.
    #[error("module `{module}`: no artifact at {}", path.display())]
    ArtifactNotFound {
        /// The module.
        module: String,
        /// Where it was looked for.
        path: PathBuf,
    },

    /// The module's library was not found where the host looked for it by default (it was
    /// registered without `ModuleOptions::artifact`): where that was, and how to build it.
    #[error("module `{module}`: no library {}: {hint}", path.display())]
    LibraryNotBuilt {
        /// The module.
        module: String,
        /// The library it looked for last.
        path: PathBuf,
        /// Where it looked, the command that builds it, and the manifest line the crate
        /// lacks if it builds no cdylib.
        hint: String,
    },

    /// The artifact could not be read.
    #[error("module `{module}`: cannot read {}: {source}", path.display())]
    ReadArtifact {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },

    /// The artifact is not a complete shared object for this machine (empty, truncated,
    /// random bytes, an executable, another architecture...). It was never opened.
    #[error("module `{module}`: {} is not a loadable shared library: {reason}", path.display())]
    NotALibrary {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },

    /// The shadow directory or a shadow copy could not be written.
    #[error("module `{module}`: cannot write shadow copy {}: {source}", path.display())]
    Shadow {
        /// The module.
        module: String,
        /// The shadow path.
        path: PathBuf,
        /// The I/O error.
        source: Arc<std::io::Error>,
    },

    /// The dynamic loader refused the shadow copy (for example, an unresolved symbol).
    #[error("module `{module}`: cannot load {} (load #{generation}): {message}", path.display())]
    Open {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// The load number it would have had.
        generation: u64,
        /// The loader's message.
        message: String,
    },

    /// The library exports no descriptor for this module: it is not a hotreload module, or it
    /// is a build of another module.
    #[error(
        "module `{module}`: {} exports no `{symbol}`; it is not a build of this module",
        path.display()
    )]
    NoDescriptor {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// The symbol looked for.
        symbol: String,
    },

    /// The build was loaded but does not fit the host; nothing running was touched.
    #[error("{module} rejected: {reason}")]
    Rejected {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// The load number it would have had.
        generation: u64,
        /// What differs, in one line.
        reason: Rejection,
        /// A full account (abi_stable's layout report), when there is one.
        detail: Option<Box<str>>,
    },

    /// The new version could not build its initial state.
    #[error("module `{module}`: load #{generation} ({}) could not construct its state: {fault}", path.display())]
    Construct {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// The load number it would have had.
        generation: u64,
        /// What the module reported.
        fault: ModuleFault,
    },

    /// The running version could not save its state; it keeps running.
    #[error("module `{module}`: load #{generation} could not save its state: {fault}")]
    Save {
        /// The module.
        module: String,
        /// The running version's load number.
        generation: u64,
        /// What the module reported.
        fault: ModuleFault,
    },

    /// The new version could not restore the running version's state; it was discarded.
    #[error(
        "module `{module}`: load #{generation} ({}) could not restore the state of load #{from_generation}: {fault}",
        path.display()
    )]
    Restore {
        /// The module.
        module: String,
        /// The new build.
        path: PathBuf,
        /// The load number the new version would have had.
        generation: u64,
        /// The running version's load number.
        from_generation: u64,
        /// What the module reported.
        fault: ModuleFault,
    },

    /// The running version's state cannot be carried to the new build's state schema (no
    /// migration between them); refused before anything was touched.
    #[error(
        "module `{module}`: load #{generation} ({}) cannot take the state of load #{from_generation}, schema v{from} -> v{to}: {reason}",
        path.display()
    )]
    StateSchema {
        /// The module.
        module: String,
        /// The new build.
        path: PathBuf,
        /// The load number the new version would have had.
        generation: u64,
        /// The running version's load number.
        from_generation: u64,
        /// The running version's state schema.
        from: u32,
        /// The new build's state schema.
        to: u32,
        /// Which migration is missing.
        reason: String,
    },

    /// A method call did not return a value. The module stays loaded and usable.
    #[error("{module} (load #{generation}, API v{api_version}): method `{method}` {fault}")]
    Call {
        /// The module.
        module: String,
        /// The method.
        method: &'static str,
        /// The version that ran the call.
        generation: u64,
        /// Its API version.
        api_version: u32,
        /// What the module reported.
        fault: ModuleFault,
        /// Where the module panicked, resolved by the module while its build was mapped: set
        /// when the process runs with `HOTRELOAD_BACKTRACE=1`; also through
        /// [`HotError::backtrace`].
        backtrace: Option<String>,
    },

    /// The module is registered but no build of it has loaded yet.
    #[error("module `{module}`: method `{method}` called before any build was loaded")]
    NotLoaded {
        /// The module.
        module: String,
        /// The method.
        method: &'static str,
    },

    /// A call from one module into another (an [`Import`](crate::Import)) found no callee to
    /// run in: it is not registered (yet), or its serving build does not fit the caller's.
    #[error("call into module `{module}`: method `{method}`: {reason}")]
    ImportUnavailable {
        /// The callee.
        module: String,
        /// The method.
        method: &'static str,
        /// Why.
        reason: String,
    },

    /// A `before_reload` hook refused the reload.
    #[error("module `{module}`: reload vetoed: {reason}")]
    Vetoed {
        /// The module.
        module: String,
        /// The hook's reason.
        reason: String,
    },

    /// The file watcher could not be started.
    #[error("cannot watch for new builds: {message}")]
    Watch {
        /// What the OS or notify said.
        message: String,
    },

    /// A module registered as a `LocalModule` was asked to reload on another thread.
    #[error(
        "module `{module}` is bound to one thread; reload it there (`poll` or `reload_module`)"
    )]
    WrongThread {
        /// The module.
        module: String,
    },

    /// A reload, rollback or registration was asked for while another transaction of the
    /// reloader runs, from where waiting for it could deadlock: on the thread running it (a
    /// hook, an event callback or module code that called back into the host), or on a thread
    /// inside a call of a module (which that transaction may be waiting for). Nothing
    /// changed; ask again once it has ended.
    #[error(
        "module `{module}`: another reload, rollback or registration runs, and this thread          {}; nothing changed",
        if *same_thread { "is running it" } else { "is inside a module's call that it may wait for" }
    )]
    TransactionRunning {
        /// The module.
        module: String,
        /// Whether the transaction runs on this very thread.
        same_thread: bool,
    },

    /// A reload, rollback or `mark_good` was asked for from inside a call into the same module
    /// on the same thread (module code calling back into the host): it would replace the code
    /// that is running, or wait for ever for that call to end.
    #[error(
        "module `{module}`: cannot reload, roll back or end probation from inside one of its \
         own calls"
    )]
    ReloadDuringCall {
        /// The module.
        module: String,
    },

    /// A reload found no moment without a call in flight within its patience, and the
    /// module's [`Quiesce`](crate::Quiesce) policy says to give up: nothing changed.
    #[error(
        "module `{module}`: calls were in flight for all of {waited:?}; the reload gave up and \
         the running version keeps serving"
    )]
    Busy {
        /// The module.
        module: String,
        /// How long it looked for a moment without calls.
        waited: std::time::Duration,
    },

    /// Module code called back into the host, which called the same module again on the same
    /// thread in a way that would make two references to its state, one of them mutable: a
    /// call inside a `&mut self` call, or a `&mut self` call inside any call.
    #[error(
        "module `{module}`: `{method}` was called from inside {} call of the same module on this \
         thread; {}",
        if *running_exclusive { "a `&mut self`" } else { "another" },
        if *exclusive {
            "a `&mut self` method must run alone"
        } else {
            "it would read the state while it is being changed"
        }
    )]
    ReentrantCall {
        /// The module.
        module: String,
        /// The method refused.
        method: &'static str,
        /// Whether the refused method takes `&mut self`.
        exclusive: bool,
        /// Whether the call already running takes `&mut self`.
        running_exclusive: bool,
    },

    /// A reload, rollback or new canary of a module was asked for while a canary of it runs
    /// beside the serving version: promote or abort the canary first. Nothing changed.
    #[error(
        "module `{module}`: canary load #{generation} runs beside the serving version; promote \
         or abort it first"
    )]
    CanaryRunning {
        /// The module.
        module: String,
        /// The canary's load number.
        generation: u64,
    },

    /// A canary was to be promoted or aborted, but none runs.
    #[error("module `{module}`: no canary runs")]
    NoCanary {
        /// The module.
        module: String,
    },

    /// A canary cannot start for this module or build; nothing changed.
    #[error("module `{module}`: cannot start a canary: {reason}")]
    CanaryUnsupported {
        /// The module.
        module: String,
        /// Why.
        reason: String,
    },

    /// A rollback was asked for, but no earlier version is kept.
    #[error("module `{module}`: no earlier version to roll back to")]
    NoHistory {
        /// The module.
        module: String,
    },

    /// The artifact may not be loaded: anyone could have written it.
    #[error("module `{module}`: refusing {}: {reason}", path.display())]
    UnsafeArtifact {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// Why, and how to fix it.
        reason: String,
    },

    /// The artifact's digest is not one the host pinned.
    #[error("module `{module}`: {} has SHA-256 {sha256}, which is not pinned", path.display())]
    NotPinned {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// Its digest.
        sha256: String,
    },

    /// The module is linked into the host (the `static` feature): there is nothing to reload.
    #[error("module `{module}` is linked into the host (the `static` feature); it cannot reload")]
    Linked {
        /// The module.
        module: String,
    },

    /// No module of that name is registered.
    #[error(
        "no module named `{module}` is registered ({})",
        if registered.is_empty() {
            "none is".to_owned()
        } else {
            format!("registered: {}", registered.join(", "))
        }
    )]
    UnknownModule {
        /// The name asked for.
        module: String,
        /// The names registered, sorted.
        registered: Vec<String>,
    },

    /// A module of that name is registered already.
    #[error("a module named `{module}` is registered already")]
    AlreadyRegistered {
        /// The name.
        module: String,
    },

    /// The reloader's private shadow directory could not be created.
    #[error("cannot create the shadow directory: {source}")]
    ShadowDir {
        /// The I/O error.
        source: Arc<std::io::Error>,
    },

    /// A directory the shadow directory would be made in could let another user replace the
    /// copies before they are loaded.
    #[error("refusing shadow directory {}: {reason}", path.display())]
    UnsafeShadowDir {
        /// The directory the reloader's shadow directory would be made in.
        path: PathBuf,
        /// Why, and how to fix it.
        reason: String,
    },
}

impl HotError {
    /// The backtrace of a module's panic, one frame per entry with its file and line in the
    /// build that panicked: captured for a failed call when the process runs with
    /// `HOTRELOAD_BACKTRACE=1` (not `RUST_BACKTRACE`: resolving it keeps the version's
    /// shadow copy mapped for the rest of the process). The error's `Display` stays one line.
    pub fn backtrace(&self) -> Option<&str> {
        match self {
            HotError::Call { backtrace, .. } => backtrace.as_deref(),
            _ => None,
        }
    }

    /// Whether the build itself is at fault (it is not a library, not this module, does not
    /// fit, or fails with this state), so that offering the same bytes again cannot succeed;
    /// a veto, a failed save, a wrong thread or an I/O error may pass another time.
    #[cfg(feature = "runtime")]
    pub(crate) fn is_build_fault(&self) -> bool {
        matches!(
            self,
            HotError::NotALibrary { .. }
                | HotError::NoDescriptor { .. }
                | HotError::Open { .. }
                | HotError::Construct { .. }
                | HotError::Restore { .. }
                | HotError::StateSchema { .. }
                | HotError::NotPinned { .. }
        ) || matches!(self, HotError::Rejected { reason, .. } if !reason.depends_on_others())
    }
}

/// What a module reported from an entry that did not return a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleFault {
    /// The module panicked; the panic was caught inside the module.
    Panicked(String),
    /// The module returned an error.
    Failed(String),
}

impl fmt::Display for ModuleFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModuleFault::Panicked(message) => write!(f, "panicked: {message}"),
            ModuleFault::Failed(message) => write!(f, "failed: {message}"),
        }
    }
}

impl From<hotreload_abi::EntryError> for ModuleFault {
    fn from(err: hotreload_abi::EntryError) -> Self {
        match err {
            hotreload_abi::EntryError::Panicked { message, .. } => {
                ModuleFault::Panicked(message.into_string())
            }
            hotreload_abi::EntryError::Failed(m) => ModuleFault::Failed(m.into_string()),
        }
    }
}

impl ModuleFault {
    /// The fault and the backtrace (if the module captured one) of an entry's error.
    pub(crate) fn with_backtrace(err: hotreload_abi::EntryError) -> (Self, Option<String>) {
        let backtrace = match &err {
            hotreload_abi::EntryError::Panicked { backtrace, .. } if !backtrace.is_empty() => {
                Some(backtrace.to_string())
            }
            _ => None,
        };
        (err.into(), backtrace)
    }
}

/// Why a loaded build was refused, in one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Rejection {
    /// The descriptor symbol does not point to a descriptor.
    #[error("the descriptor has no hotreload magic number")]
    BadMagic,
    /// Built against another version of the host/module contract.
    #[error("framework ABI version {found}, host has {expected}")]
    AbiVersion {
        /// The host's.
        expected: u32,
        /// The module's.
        found: u32,
    },
    /// The descriptor symbol is smaller than the descriptor of this framework ABI version.
    #[error("the descriptor symbol is {found} bytes, a version {abi} descriptor is {expected}")]
    DescriptorSize {
        /// The framework ABI version both claim.
        abi: u32,
        /// The size of the host's descriptor type.
        expected: u64,
        /// The size of the symbol in the library.
        found: u64,
    },
    /// Built with `panic = "abort"`: a panic in module code would abort the whole process
    /// instead of coming back to the host as an error.
    #[error(
        "built with `panic = \"abort\"`: a panic in it would abort the host; build it with \
         `panic = \"unwind\"` (remove `panic = \"abort\"` from the profile in Cargo.toml)"
    )]
    PanicAbort,
    /// The descriptor records a panic strategy this host does not know.
    #[error("unknown panic strategy {0} in the descriptor")]
    PanicStrategy(u32),
    /// The descriptor names another module.
    #[error("the library is module `{found}`")]
    ModuleName {
        /// The module's name in the library.
        found: String,
    },
    /// The export table's layout differs from the host's; the message names the first item.
    #[error("{0}")]
    Layout(String),
    /// The API version is not one the host accepts.
    #[error("API version {found}, host accepts {}", ApiVersions(accepted))]
    ApiVersion {
        /// The module's.
        found: u32,
        /// What the host accepts.
        accepted: RangeInclusive<u32>,
    },
    /// The build calls a module whose serving build (or its build in the same set) does not
    /// have what the caller was compiled with.
    #[error("it calls `{callee}`, whose build does not fit: {reason}")]
    Import {
        /// The module it calls.
        callee: String,
        /// The first difference.
        reason: Box<str>,
    },
    /// A module that calls this one, serving now (and not replaced in the same set), was
    /// compiled with something this build drops or changes.
    #[error("`{caller}` calls it, and its serving build does not fit: {reason}")]
    Caller {
        /// The calling module.
        caller: String,
        /// The first difference.
        reason: Box<str>,
    },
}

impl Rejection {
    /// Whether the refusal is about another module's build (a caller or callee), which a
    /// build of that module in the same set could resolve: not the build's own fault.
    pub fn depends_on_others(&self) -> bool {
        matches!(self, Rejection::Import { .. } | Rejection::Caller { .. })
    }
}

struct ApiVersions<'a>(&'a RangeInclusive<u32>);

impl fmt::Display for ApiVersions<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = (self.0.start(), self.0.end());
        if lo == hi {
            write!(f, "{lo}")
        } else {
            write!(f, "{lo} to {hi}")
        }
    }
}
