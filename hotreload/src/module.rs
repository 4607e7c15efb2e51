//! A registered module: its live version and state, and who may touch them when.
//!
//! # Who touches `live`
//! The live version sits in an `UnsafeCell`, next to a read-write lock that orders access:
//! - A shared [`Module`](crate::Module) handle holds the lock for each call's whole duration
//!   (read for `&self` and associated functions, write for `&mut self`).
//! - A reload replaces the live version under the write lock, which it gets only once every
//!   call through a shared handle has returned.
//! - A module registered for one thread ([`LocalModule`](crate::LocalModule)) has an owner
//!   thread. Its handle cannot leave that thread, its calls take no lock, and it is reloaded
//!   only on that thread and only between calls (`ReloadDuringCall` otherwise): so none of its
//!   calls can overlap a replacement, and the lock is only taken by the reload itself and by
//!   readers on other threads (version queries), which never write.
//!
//! # Why a version is never unmapped while in use
//! After a replacement no call can reach the old version: no call was in progress (above), its
//! state is destroyed by its own code, every value a call returned was rebuilt by the host
//! ([`Rehome`](crate::Rehome)) before the call ended, and the layout read during verification
//! was turned into text at once. Only then is the old library closed.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut, RangeInclusive};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};
use std::thread::ThreadId;

use abi_stable::StableAbi;
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TypeLayout;
use hotreload_abi::StatePtr;

use crate::error::HotError;
use crate::transaction::LoadedVersion;
use crate::transaction::retire::RetiredVersion;
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
    /// The export table, whose layout every loaded build must match.
    #[doc(hidden)]
    type Table: StableAbi + 'static;
    /// The typed call surface `hot_fn!` uses, over either kind of handle.
    #[doc(hidden)]
    type Proxy<'m, H: crate::call::CallPath<Self> + 'm>;
    #[doc(hidden)]
    fn proxy<H: crate::call::CallPath<Self>>(handle: &H) -> Self::Proxy<'_, H>;
    /// The module's retire hook (`#[hot_module(on_retire = method)]`): runs in the module, on
    /// the state of a version that stops serving, before its workers are told to stop.
    #[doc(hidden)]
    fn on_retire(&mut self) {}
}

/// What the host expects of a module: fixed at registration.
pub(crate) struct ModuleSpec {
    pub name: String,
    pub artifact: PathBuf,
    pub expected_layout: &'static TypeLayout,
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
}

/// The version serving calls, and its state.
pub(crate) struct Live {
    pub version: LoadedVersion,
    pub state: StatePtr,
}

impl Live {
    /// Frees the state with the code that made it; the version stays loaded.
    pub(crate) fn into_version(self) -> LoadedVersion {
        if let RResult::RErr(err) = (self.version.lifecycle.destroy)(self.state) {
            tracing::warn!(
                module = %self.version.info.module,
                generation = self.version.info.generation,
                "dropping the state failed: {}",
                crate::error::ModuleFault::from(err)
            );
        }
        self.version
    }
}

/// A replaced version kept loaded for rollback, with the state it had when it was replaced.
pub(crate) struct Kept {
    pub version: LoadedVersion,
    /// The state envelope it saved when it was replaced.
    pub snapshot: Vec<u8>,
}

/// What probation watches after a commit.
pub(crate) struct ProbationState {
    /// The version on probation.
    pub generation: u64,
    /// Calls left, if the window is a number of calls.
    pub calls_left: Option<u64>,
    /// When it ends, if the window is a duration.
    pub until: Option<std::time::Instant>,
}

/// Bookkeeping that only a transaction touches; its mutex serialises transactions.
pub(crate) struct Book {
    pub next_generation: u64,
    /// Closed versions, oldest first.
    pub retired: Vec<RetiredVersion>,
    /// Replaced versions still loaded, oldest first; at most `spec.history` of them.
    pub history: std::collections::VecDeque<Kept>,
}

/// The untyped part of a module, shared by its handles and the reloader.
pub(crate) struct ModuleCore {
    pub spec: ModuleSpec,
    pub shadow: std::sync::Arc<ShadowDir>,
    /// Orders access to `live` (see the module docs). Sharded: a reader locks only its own
    /// thread's shard, so calls from several cores do not write one shared counter.
    lock: ShardedLock<()>,
    /// `None` until a first build has loaded (a module registered before it was built).
    live: UnsafeCell<Option<Live>>,
    /// The thread a `LocalModule` is bound to, if this module was registered as one.
    owner: Option<ThreadId>,
    /// Calls in progress through the `LocalModule`; written and read on `owner` only.
    local_calls: AtomicU32,
    book: Mutex<Book>,
    /// The probation in progress, if any.
    probation: Mutex<Option<ProbationState>>,
    /// Whether `probation` is `Some`: read on every call, written only when it changes.
    on_probation: std::sync::atomic::AtomicBool,
    /// The reloader, for a rollback the call path starts (probation) and its events.
    reloader: std::sync::Weak<crate::reloader::Shared>,
}

impl Drop for ModuleCore {
    fn drop(&mut self) {
        // The live state is freed by its own code before its library is closed.
        if let Some(live) = self.live.get_mut().take() {
            drop(live.into_version());
        }
    }
}

// SAFETY: `live` is only reached through `read_live`/`write_live` (which hold `lock`) or, for
// a module with an owner thread, by its `LocalModule` on that thread while no reload can run
// (see the module docs); `Live` itself is `Send + Sync`.
unsafe impl Sync for ModuleCore {}
// SAFETY: see above; nothing in a `ModuleCore` is tied to the thread that made it.
unsafe impl Send for ModuleCore {}

/// Read access to the live version, under the module's lock.
pub(crate) struct LiveRead<'a> {
    _guard: ShardedLockReadGuard<'a, ()>,
    live: &'a Option<Live>,
}

impl Deref for LiveRead<'_> {
    type Target = Option<Live>;
    fn deref(&self) -> &Option<Live> {
        self.live
    }
}

/// Write access to the live version, under the module's lock.
pub(crate) struct LiveWrite<'a> {
    _guard: ShardedLockWriteGuard<'a, ()>,
    live: &'a mut Option<Live>,
}

impl Deref for LiveWrite<'_> {
    type Target = Option<Live>;
    fn deref(&self) -> &Option<Live> {
        self.live
    }
}

impl DerefMut for LiveWrite<'_> {
    fn deref_mut(&mut self) -> &mut Option<Live> {
        self.live
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
        ModuleCore {
            spec,
            shadow,
            lock: ShardedLock::new(()),
            live: UnsafeCell::new(live),
            owner,
            local_calls: AtomicU32::new(0),
            book: Mutex::new(Book {
                next_generation,
                retired: Vec::new(),
                history: std::collections::VecDeque::new(),
            }),
            probation: Mutex::new(None),
            on_probation: std::sync::atomic::AtomicBool::new(false),
            reloader,
        }
    }

    // A poisoned lock only means a host-side panic (in `Rehome`, say) while it was held;
    // `Live` is replaced in one assignment, so it is never left half-updated.
    pub(crate) fn read_live(&self) -> LiveRead<'_> {
        let guard = self.lock.read().unwrap_or_else(PoisonError::into_inner);
        LiveRead {
            _guard: guard,
            // SAFETY: shared access under the read lock; the only writer without the lock
            // does not exist (writes take the write lock, see the module docs).
            live: unsafe { &*self.live.get() },
        }
    }

    /// The caller must have checked [`may_reload_here`](Self::may_reload_here) when this is
    /// for a reload.
    pub(crate) fn write_live(&self) -> LiveWrite<'_> {
        let guard = self.lock.write().unwrap_or_else(PoisonError::into_inner);
        LiveWrite {
            _guard: guard,
            // SAFETY: the write lock excludes every shared-handle call and reader; a
            // `LocalModule` call cannot be in progress, because writes for an owned module
            // happen on its owner thread between its calls (`may_reload_here`).
            live: unsafe { &mut *self.live.get() },
        }
    }

    /// The live version as a `LocalModule` call sees it: no lock.
    ///
    /// # Safety
    /// Only on the owner thread of a module that has one, and the reference must not outlive
    /// the call (a reload may follow it).
    pub(crate) unsafe fn live_unlocked(&self) -> &Option<Live> {
        debug_assert_eq!(self.owner, Some(std::thread::current().id()));
        // SAFETY: by the contract above, nothing writes `live` while this reference lives.
        unsafe { &*self.live.get() }
    }

    /// Refuses a reload of an owned module from another thread, or from inside one of its
    /// calls (module code calling back into the host).
    pub(crate) fn may_reload_here(&self) -> Result<(), HotError> {
        let Some(owner) = self.owner else {
            return Ok(());
        };
        if owner != std::thread::current().id() {
            return Err(HotError::WrongThread {
                module: self.spec.name.clone(),
            });
        }
        if self.local_calls.load(Ordering::Relaxed) > 0 {
            return Err(HotError::ReloadDuringCall {
                module: self.spec.name.clone(),
            });
        }
        Ok(())
    }

    /// Whether this module reloads only on its owner thread.
    pub(crate) fn has_owner(&self) -> bool {
        self.owner.is_some()
    }

    /// Counts a `LocalModule` call in progress until the returned guard drops.
    pub(crate) fn enter_local_call(&self) -> LocalCall<'_> {
        // Only the owner thread writes this counter: plain loads and stores suffice.
        let depth = self.local_calls.load(Ordering::Relaxed);
        self.local_calls.store(depth + 1, Ordering::Relaxed);
        LocalCall { core: self, depth }
    }

    /// The version serving calls, if one is loaded.
    pub(crate) fn version(&self) -> Option<VersionInfo> {
        self.read_live()
            .as_ref()
            .map(|live| live.version.info.clone())
    }

    pub(crate) fn book(&self) -> MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Starts probation for the version just committed, if the module has a policy.
    pub(crate) fn start_probation(&self, generation: u64) {
        let Some(policy) = self.spec.probation else {
            return;
        };
        let state = ProbationState {
            generation,
            calls_left: policy.calls,
            until: policy.duration.map(|d| std::time::Instant::now() + d),
        };
        *self.lock_probation() = Some(state);
        self.on_probation.store(true, Ordering::Release);
    }

    /// Ends probation: the version serving is good.
    pub(crate) fn end_probation(&self) -> Option<u64> {
        self.on_probation.store(false, Ordering::Release);
        self.lock_probation().take().map(|p| p.generation)
    }

    /// After a call returned: counts it against the probation window. Returns the generation
    /// to roll back from when the call panicked during probation. Costs one load when no
    /// probation runs.
    pub(crate) fn after_call(&self, panicked: bool) -> Option<u64> {
        if !self.on_probation.load(Ordering::Acquire) {
            return None;
        }
        let mut probation = self.lock_probation();
        let state = probation.as_mut()?;
        if panicked {
            return Some(state.generation);
        }
        let calls_done = state.calls_left.is_some_and(|left| left <= 1);
        if let Some(left) = &mut state.calls_left {
            *left = left.saturating_sub(1);
        }
        let time_done = state.until.is_some_and(|t| std::time::Instant::now() >= t);
        if calls_done || time_done {
            *probation = None;
            self.on_probation.store(false, Ordering::Release);
        }
        None
    }

    /// After a call, outside every lock: counts it against probation, and rolls back if it
    /// panicked during one. One relaxed load when no probation runs.
    #[inline(always)]
    pub(crate) fn finish_call<R>(&self, result: &Result<R, HotError>) {
        if self.on_probation.load(Ordering::Relaxed) {
            self.finish_call_on_probation(result);
        }
    }

    #[cold]
    #[inline(never)]
    fn finish_call_on_probation<R>(&self, result: &Result<R, HotError>) {
        let panicked = matches!(
            result,
            Err(HotError::Call {
                fault: crate::error::ModuleFault::Panicked(_),
                ..
            })
        );
        let Some(generation) = self.after_call(panicked) else {
            return;
        };
        let Some(reloader) = self.reloader.upgrade() else {
            return;
        };
        let reason = match result {
            Err(err) => format!("probation: {err}"),
            Ok(_) => "probation".to_owned(),
        };
        // The snapshot taken at the reload: the new version's state is suspect.
        if let Err(err) = reloader.rollback(self, true, Some(generation), &reason) {
            tracing::error!("probation rollback failed: {err}");
        }
    }

    fn lock_probation(&self) -> MutexGuard<'_, Option<ProbationState>> {
        self.probation
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A `LocalModule` call in progress.
pub(crate) struct LocalCall<'a> {
    core: &'a ModuleCore,
    depth: u32,
}

impl Drop for LocalCall<'_> {
    fn drop(&mut self) {
        self.core.local_calls.store(self.depth, Ordering::Relaxed);
    }
}
