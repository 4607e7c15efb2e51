//! A registered module: what the host expects of it, its live version (reached only through
//! the rules in [`access`](crate::access)), and the bookkeeping of its transactions.
//!
//! # Why a version is never unmapped while in use
//! No call can reach a replaced version: calls start only in the live version, and a
//! replacement waits for (or refuses) the calls in progress (see `access`). Every value a call
//! returned was rebuilt by the host ([`Rehome`](crate::Rehome), an `unsafe` trait only the
//! derive and the runtime implement) before the call ended, the layout read during
//! verification was turned into text at once, and the state is destroyed by its own code.
//! What is left is code the version runs by itself: threads it started. When a version is
//! closed, its workers are stopped and joined and the stacks of the process's other threads
//! are checked for addresses inside it; a version a thread may still return into stays
//! mapped (see `transaction::retire`).

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use crate::access::Access;
use crate::error::HotError;
use crate::transaction::probation::Probation;
use crate::version::{Held, Kept, Live, RetiredVersion};
use crate::{ShadowDir, VersionInfo};

/// Implemented by `#[hot_module]` for a module's state type; the host names modules by it.
///
/// # Safety
/// Only `#[hot_module]` implements this trait. The runtime trusts `Table` to be the layout of
/// the export table the module's descriptor points to, `METHODS` to describe its entries, and
/// `Proxy` to call each entry with the receiver it was generated for (`&mut self` entries only
/// through `call_exclusive`); a hand-written impl could break any of these and cause undefined
/// behaviour.
///
/// The state must be `Default + Serialize + DeserializeOwned + Send + Sync + 'static`: it is
/// made with `Default` on the first load, carried across reloads with serde, and used from
/// any host thread.
pub unsafe trait HotModule: crate::__private::HotState {
    /// The module name (by default the state type's name in snake case).
    const MODULE_NAME: &'static str;
    /// The crate the module is built from; its library is `lib<CRATE_NAME>.so`.
    const CRATE_NAME: &'static str;
    /// Where that crate's sources were when the host was compiled (for building it).
    const MANIFEST_DIR: &'static str;
    /// `#[hot_module(version = N)]`.
    const API_VERSION: u32;
    /// `#[hot_module(state_version = N)]`, 1 by default.
    const STATE_VERSION: u32;
    /// The exported methods' names and parameters, to explain layout differences.
    #[doc(hidden)]
    const METHODS: &'static [crate::__private::MethodSignature];
    /// Each method's entry in [`Table`](Self::Table): name, layout and offset. A loaded
    /// build must have an entry of the same name and layout for each.
    #[doc(hidden)]
    const ENTRIES: &'static [crate::__private::TableEntry];
    /// The export table as the host was compiled with it: the runtime fills one per loaded
    /// version with that build's entries, found by name.
    #[doc(hidden)]
    type Table: 'static;
    /// The typed call surface `hot_fn!` uses, over either kind of handle.
    #[doc(hidden)]
    type Proxy<'m, H: crate::call::CallPath<Self> + 'm>;
    #[doc(hidden)]
    fn proxy<H: crate::call::CallPath<Self>>(handle: &H) -> Self::Proxy<'_, H>;
    /// The module's retire hook (`#[hot_module(on_retire = method)]`): runs in the module, on
    /// the state of a version that stops serving, before its workers are told to stop.
    #[doc(hidden)]
    fn on_retire(&mut self) {}
    /// The state of an older schema (`#[migrate(from = k)]` steps), decoded and migrated up
    /// to this build's, one step at a time.
    #[doc(hidden)]
    fn upgrade(schema: u32, payload: &[u8]) -> Result<Self, String>
    where
        Self: Sized,
    {
        let _ = payload;
        Err(crate::__private::no_way_up::<Self>(schema))
    }
    /// The state migrated down to an older schema (`#[migrate(to = k)]` steps), encoded.
    #[doc(hidden)]
    fn downgrade(&self, schema: u32) -> Result<Vec<u8>, String> {
        Err(crate::__private::no_way_down::<Self>(schema))
    }
}

/// What the host expects of a module: fixed at registration.
pub(crate) struct ModuleSpec {
    pub name: String,
    pub artifact: PathBuf,
    /// The methods' entries in the host's table type, and that type's size.
    pub entries: &'static [crate::__private::TableEntry],
    pub table_size: usize,
    pub methods: &'static [crate::__private::MethodSignature],
    pub accepted_api: RangeInclusive<u32>,
    /// The manifest of the crate to rebuild when its sources change, if the host asked.
    pub build_manifest: Option<PathBuf>,
    /// How many replaced versions stay loaded for rollback.
    pub history: usize,
    /// The only artifact digests accepted, if the host pinned them.
    pub pinned: Option<Vec<String>>,
    /// The probation policy after each reload, if any.
    pub probation: Option<crate::Probation>,
    /// Never close a version (a thread the runtime cannot see may run in any of them).
    pub keep_loaded: bool,
    /// How long a closing version's workers get to return.
    pub worker_stop_timeout: std::time::Duration,
    /// How a reload waits for the calls in progress.
    pub quiesce: crate::Quiesce,
}

impl ModuleSpec {
    pub(crate) fn worker_stop_timeout_ms(&self) -> u64 {
        u64::try_from(self.worker_stop_timeout.as_millis()).unwrap_or(u64::MAX)
    }
}

/// How many retired versions a module remembers (`HotReloader::retired_versions`).
const RETIRED_KEPT: usize = 64;

/// Bookkeeping that only a transaction touches; its mutex serialises transactions.
pub(crate) struct Book {
    pub next_generation: u64,
    /// Closed versions, oldest first.
    pub retired: Vec<RetiredVersion>,
    /// Replaced versions still loaded, oldest first; at most `spec.history` of them.
    pub history: std::collections::VecDeque<Kept>,
    /// Which file the serving version was read from, to answer a reload of an unchanged
    /// artifact with one `stat`.
    pub serving_identity: Option<crate::version::ArtifactIdentity>,
    /// Closed versions that must stay mapped for now (a thread may still return into them),
    /// checked again at every later retire.
    pub held: Vec<Held>,
}

/// The untyped part of a module, shared by its handles and the reloader.
pub(crate) struct ModuleCore {
    pub spec: ModuleSpec,
    pub shadow: std::sync::Arc<ShadowDir>,
    /// The live version and the rules of access to it.
    pub access: Access,
    book: Mutex<Book>,
    /// The last build refused for a fault of its own (see [`HotError::is_build_fault`]):
    /// the watcher does not offer it again.
    refused_build: Mutex<Option<RefusedBuild>>,
    /// The probation in progress, if any.
    pub probation: Probation,
    /// The reloader, for a rollback the call path starts (probation) and its events.
    pub reloader: std::sync::Weak<crate::reloader::Shared>,
}

impl Drop for ModuleCore {
    fn drop(&mut self) {
        let live = self.access.take_live();
        let book = self.book.get_mut().unwrap_or_else(PoisonError::into_inner);
        crate::transaction::retire::retire_all(live, book, &self.spec);
    }
}

/// A build refused for a fault of its own, as the watcher recognises it again.
#[derive(Debug, Clone)]
pub(crate) struct RefusedBuild {
    pub len: u64,
    pub sha256: String,
}

impl Book {
    /// Remembers versions that stopped serving: the last [`RETIRED_KEPT`] of them.
    pub(crate) fn record_retired(&mut self, versions: impl IntoIterator<Item = RetiredVersion>) {
        self.retired.extend(versions);
        let excess = self.retired.len().saturating_sub(RETIRED_KEPT);
        self.retired.drain(..excess);
    }
}

impl ModuleCore {
    pub(crate) fn new(
        spec: ModuleSpec,
        shadow: std::sync::Arc<ShadowDir>,
        live: Option<Live>,
        owner: Option<ThreadId>,
        reloader: std::sync::Weak<crate::reloader::Shared>,
    ) -> Self {
        let next_generation = live.as_ref().map_or(1, |l| l.version.info.generation + 1);
        let serving_identity = live.as_ref().and_then(|l| l.version.image.shadow.identity);
        ModuleCore {
            spec,
            shadow,
            access: Access::new(live, owner),
            book: Mutex::new(Book {
                next_generation,
                retired: Vec::new(),
                history: std::collections::VecDeque::new(),
                serving_identity,
                held: Vec::new(),
            }),
            refused_build: Mutex::new(None),
            probation: Probation::default(),
            reloader,
        }
    }

    /// The version serving calls, if one is loaded.
    pub(crate) fn version(&self) -> Option<VersionInfo> {
        self.access.version()
    }

    /// Records the outcome of a failed reload of the build `refused` describes (its length
    /// and digest, asked for only if needed): remembered if the build itself is at fault,
    /// forgotten otherwise (a veto, a failed save, an I/O error: the same build is worth
    /// another try).
    pub(crate) fn remember_refused(
        &self,
        err: &HotError,
        refused: impl FnOnce() -> Option<RefusedBuild>,
    ) {
        let remembered = if err.is_build_fault() {
            refused()
        } else {
            None
        };
        *self
            .refused_build
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = remembered;
    }

    /// A build now serves: nothing refused is remembered.
    pub(crate) fn remember_refused_none(&self) {
        *self
            .refused_build
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    /// Whether `copy` holds the build last refused for its own fault (hashed only if its
    /// length is that build's).
    pub(crate) fn was_refused(&self, copy: &crate::transaction::stage::ArtifactCopy) -> bool {
        let refused = self
            .refused_build
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        refused.is_some_and(|build| {
            build.len == copy.bytes().len() as u64 && build.sha256 == copy.sha256()
        })
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bookkeeping, for a query: refused from module code that a transaction of this
    /// module runs on this thread (the transaction holds it: waiting would be for ever).
    pub(crate) fn book_for_query(&self) -> Result<MutexGuard<'_, Book>, HotError> {
        if self.access.in_transaction_here() {
            return Err(HotError::ReloadDuringCall {
                module: self.spec.name.clone(),
            });
        }
        Ok(self.book())
    }

    /// After a call, outside every lock: counts it against probation (one relaxed load when
    /// none runs), and rolls back when a call panicked during one (see `probation`).
    #[inline(always)]
    pub(crate) fn finish_call<R>(&self, result: &Result<R, HotError>) {
        if self.probation.is_on() {
            crate::transaction::probation::after_call(self, result);
        }
    }
}
