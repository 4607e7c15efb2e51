//! The host's record of a registered module: its spec, its live version and its book.

use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread::ThreadId;

use crate::access::Access;
use crate::error::HotError;
use crate::transaction::probation::Probation;
use crate::version::{Held, Kept, Live, RetiredVersion};
use crate::{ShadowDir, VersionInfo};

/// What the host expects of a module: fixed at registration.
#[derive(Clone)]
pub(crate) struct ModuleSpec {
    pub name: String,
    pub artifact: PathBuf,
    /// The methods' entries in the host's table type, and that type's size.
    pub entries: &'static [crate::__private::TableEntry],
    pub table_size: usize,
    pub methods: &'static [crate::__private::MethodSignature],
    pub accepted_api: RangeInclusive<u32>,
    /// Whether the host calls the module (it has a handle): otherwise only other modules do,
    /// and `entries` is empty.
    pub host_calls: bool,
    /// The manifest of the crate to rebuild when its sources change, if the host asked.
    pub build_manifest: Option<PathBuf>,
    /// The directory of the module's crate (where it was when the host was compiled, or the
    /// one holding `build_manifest`).
    pub manifest_dir: PathBuf,
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
    /// How each version's calls are measured.
    pub metrics: crate::MetricsConfig,
    /// Whether the module's `tracing` and `log` output goes to the host's subscriber.
    pub forward_logs: bool,
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
    /// The live version and the rules of access to it. Allocated for the rest of the process
    /// (a few hundred bytes per registered module, not per reload): calls from other
    /// modules reach it through their links without touching a reference count (a shared
    /// count written by every call would make calls from several cores contend), so it must
    /// outlive every version that may call it. When the module goes away its live version is
    /// taken out, and such calls find nothing to call.
    pub access: &'static Access,
    book: Mutex<Book>,
    /// The last build refused for a fault of its own (see [`HotError::is_build_fault`]):
    /// the watcher does not offer it again.
    refused_build: Mutex<Option<RefusedBuild>>,
    /// The probation in progress, if any.
    pub probation: Probation,
    /// The canary running beside the serving version, if any. Set and cleared by the
    /// canary's transactions (under the reloader's transaction lock), with its slot in
    /// `access`.
    pub canary: Mutex<Option<std::sync::Arc<crate::canary::Trial>>>,
    /// The reloader, for a rollback the call path starts (probation) and its events.
    pub reloader: std::sync::Weak<crate::reloader::Shared>,
}

impl Drop for ModuleCore {
    fn drop(&mut self) {
        let (live, canary) = self.access.take_live();
        let book = self.book.get_mut().unwrap_or_else(PoisonError::into_inner);
        crate::transaction::retire::retire_all(live, canary, book, &self.spec);
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
            access: Box::leak(Box::new(Access::new(live, owner))),
            book: Mutex::new(Book {
                next_generation,
                retired: Vec::new(),
                history: std::collections::VecDeque::new(),
                serving_identity,
                held: Vec::new(),
            }),
            refused_build: Mutex::new(None),
            probation: Probation::default(),
            canary: Mutex::new(None),
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

    /// The canary running now, if any.
    pub(crate) fn canary(&self) -> Option<std::sync::Arc<crate::canary::Trial>> {
        self.canary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Refuses a transaction that replaces the serving version while a canary runs beside
    /// it: promote or abort the canary first.
    pub(crate) fn no_canary(&self) -> Result<(), HotError> {
        match self.canary() {
            None => Ok(()),
            Some(trial) => Err(HotError::CanaryRunning {
                module: self.spec.name.clone(),
                generation: trial.canary.generation,
            }),
        }
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bookkeeping, for a query: refused from module code that a transaction of this
    /// module runs on this thread (the transaction holds it: waiting would be for ever), and
    /// not waited for from inside a call of any module while another thread's transaction
    /// holds it (that transaction may be waiting for this very call to end).
    pub(crate) fn book_for_query(&self) -> Result<MutexGuard<'_, Book>, HotError> {
        if self.access.in_transaction_here() {
            return Err(HotError::ReloadDuringCall {
                module: self.spec.name.clone(),
            });
        }
        if crate::access::holds_no_module_lock() {
            return Ok(self.book());
        }
        match self.book.try_lock() {
            Ok(book) => Ok(book),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => Ok(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(HotError::TransactionRunning {
                module: self.spec.name.clone(),
                same_thread: false,
            }),
        }
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
