//! The handles when modules are loaded from libraries (the default build).

use std::marker::PhantomData;
use std::sync::Arc;

use abi_stable::std_types::RResult;
use hotreload_abi::{EntryError, EntryResult, StatePtr};

use crate::VersionInfo;
use crate::access::{Access, Listing, Mode, Refused, Target};
use crate::canary::Pick;
use crate::error::{HotError, ModuleFault};
use crate::metrics::Outcome;
use crate::module::{HotModule, ModuleCore};
use crate::rehome::Rehome;
use crate::version::Live;

/// A handle to a registered module, typed by its state type. Cheap to clone; `Send + Sync`.
///
/// Call its methods with [`hot_fn!`](crate::hot_fn). Each call runs wholly in one version:
/// the one loaded when the call began.
pub struct Module<T> {
    pub(crate) core: Arc<ModuleCore>,
    /// `core.access`, kept here so that a call reaches the lock with one load.
    access: &'static Access,
    _state: PhantomData<fn() -> T>,
}

/// A handle to a module bound to one thread: calls take no lock. Not `Send`, not `Clone`.
///
/// Made by [`HotReloader::register_local`](crate::HotReloader::register_local). Reloads run
/// on this thread only, between calls: [`HotReloader::poll`](crate::HotReloader::poll) at a
/// safe point (the watcher queues what it finds) or `reload_module`. Elsewhere, or from
/// inside one of its calls, a reload is refused with a typed error.
pub struct LocalModule<T> {
    /// Lists the module on this thread for the panic hooks of modules. Declared before
    /// `core`, so it is dropped first: the listed `Access` lives in `core`.
    _listing: Listing,
    core: Arc<ModuleCore>,
    /// `core.access`, kept here so that a call reaches its counter with one load.
    access: &'static Access,
    // A raw pointer: neither `Send` nor `Sync`.
    _state: PhantomData<*const T>,
}

impl<T> Clone for Module<T> {
    fn clone(&self) -> Self {
        Module {
            core: Arc::clone(&self.core),
            access: self.access,
            _state: PhantomData,
        }
    }
}

impl<T> std::fmt::Debug for Module<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &self.core.spec.name)
            .field("version", &self.core.version())
            .finish()
    }
}

impl<T> std::fmt::Debug for LocalModule<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModule")
            .field("name", &self.core.spec.name)
            .field("version", &self.core.version())
            .finish()
    }
}

impl<T: HotModule> Module<T> {
    pub(crate) fn from_core(core: Arc<ModuleCore>) -> Self {
        Module {
            access: core.access,
            core,
            _state: PhantomData,
        }
    }
}

impl<T: HotModule> LocalModule<T> {
    /// On the owner thread of `core`'s module (`register_local` makes it there).
    pub(crate) fn from_core(core: Arc<ModuleCore>) -> Self {
        // SAFETY: `register_local` calls this on the thread it made the owner; the `Access` is
        // allocated for the rest of the process, so it neither moves nor goes away.
        let listing = unsafe { core.access.list_locally() };
        LocalModule {
            _listing: listing,
            access: core.access,
            core,
            _state: PhantomData,
        }
    }
}

macro_rules! handle_common {
    ($handle:ident) => {
        impl<T: HotModule> $handle<T> {
            /// The module's name.
            pub fn name(&self) -> &str {
                &self.core.spec.name
            }

            /// The version serving calls now; `None` before the module's first build loaded.
            pub fn version(&self) -> Option<VersionInfo> {
                self.core.version()
            }

            #[doc(hidden)]
            pub fn __hot_proxy(&self) -> T::Proxy<'_, Self> {
                T::proxy(self)
            }
        }
    };
}

handle_common!(Module);
handle_common!(LocalModule);

impl<T: HotModule> Module<T> {
    /// A handle to make calls with `pick`, the version they go to while a canary runs:
    /// `hot_fn!(module.route(Pick::key(&user)).method(..))`. Plain calls
    /// (`hot_fn!(module.method(..))`) follow the canary's split; with no canary running,
    /// every call goes to the serving version.
    pub fn route(&self, pick: Pick) -> Routed<'_, T> {
        Routed { module: self, pick }
    }

    #[inline(always)]
    fn call<R: Rehome>(
        &self,
        method: &'static str,
        index: usize,
        mode: Mode,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        self.call_picked(method, index, mode, None, call)
    }

    #[inline(always)]
    fn call_picked<R: Rehome>(
        &self,
        method: &'static str,
        index: usize,
        mode: Mode,
        pick: Option<Pick>,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        let core = &*self.core;
        let result = match self.access.shared_call(mode, pick, |target| {
            run::<T, R>(target, core, method, index, call)
        }) {
            Ok(result) => result,
            Err(refused) => Err(refusal(core, method, refused)),
        };
        finish(core, result)
    }
}

/// A [`Module`] handle whose calls go to the version a [`Pick`] chooses (see
/// [`Module::route`]).
pub struct Routed<'a, T> {
    module: &'a Module<T>,
    pick: Pick,
}

impl<T: HotModule> Routed<'_, T> {
    #[doc(hidden)]
    pub fn __hot_proxy(&self) -> T::Proxy<'_, Self> {
        T::proxy(self)
    }

    #[inline(always)]
    fn call<R: Rehome>(
        &self,
        method: &'static str,
        index: usize,
        mode: Mode,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        self.module
            .call_picked(method, index, mode, Some(self.pick), call)
    }
}

impl<T: HotModule> LocalModule<T> {
    /// The whole call, inlined into the caller's `hot_fn!`: the re-entry counter, the live
    /// version, the table entry, the result; everything else is out of line, on the paths
    /// that fail.
    #[inline(always)]
    fn call<R: Rehome>(
        &self,
        method: &'static str,
        index: usize,
        mode: Mode,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        let core = &*self.core;
        // SAFETY: a `LocalModule` exists only for a module with an owner thread (it is made
        // by `register_local`), and it is neither `Send` nor `Sync`, so this is that thread.
        let result = match unsafe { self.access.local_call(mode) } {
            Ok(entered) => {
                // Canaries run beside shared handles only: a local module has none.
                let target = Target {
                    live: entered.live(),
                    canary: None,
                };
                run::<T, R>(target, core, method, index, call)
            }
            Err(refused) => Err(refusal(core, method, refused)),
        };
        finish(core, result)
    }
}

call_path_through_table!(Module, Mode::Shared, Mode::Exclusive);
call_path_through_table!(LocalModule, Mode::Shared, Mode::Exclusive);
call_path_through_table!(Routed<'a>, Mode::Shared, Mode::Exclusive);

/// The call in the live version. A failure comes back boxed: while the call's guards drop,
/// the result stays two words (in registers when `R` is small).
#[inline(always)]
fn run<T: HotModule, R: Rehome>(
    target: Target<'_>,
    core: &ModuleCore,
    method: &'static str,
    index: usize,
    call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
) -> Result<R, Box<HotError>> {
    let Some(live) = target.live else {
        return Err(not_loaded(core, method));
    };
    // SAFETY: the version's table is the host's `T::Table`, filled by verification with the
    // build's entry for each of the host's methods after checking that entry's layout against
    // the host's; its function pointers point into the version's image, which stays mapped
    // for the call: the caller's guard from `access` keeps the version live until the call
    // has returned.
    let table = unsafe { &*live.version.table.as_ptr().cast::<T::Table>() };
    let probe = match &live.version.meter {
        Some(meter) => meter.start(index),
        None => None,
    };
    let result = call(table, live.state);
    let outcome = || match &result {
        RResult::ROk(value) if value.is_err() => Outcome::Error,
        RResult::ROk(_) => Outcome::Ok,
        RResult::RErr(EntryError::Panicked { .. }) => Outcome::Panic,
        RResult::RErr(EntryError::Failed(_)) => Outcome::Error,
    };
    if let Some(probe) = probe {
        probe.finish(outcome());
    }
    if let Some(trial) = target.canary {
        trial.after_call(outcome());
    }
    match result {
        // Rebuilt with the host's code while the version is still held (see `rehome`).
        RResult::ROk(value) => Ok(value.rehome()),
        RResult::RErr(err) => Err(failed(live, method, err)),
    }
}

/// After a call, outside every lock: the thread's thread-local destructors of closed
/// versions, if one was closed since its last call (a relaxed load otherwise; see
/// `os::thread_exit`), probation's accounting (one relaxed load when none runs), then the
/// error, if any, out of its box. Until here a result is two words, so that it stays in
/// registers while the call's guards drop and the caller takes it apart.
#[inline(always)]
fn finish<R>(core: &ModuleCore, result: Result<R, Box<HotError>>) -> Result<R, HotError> {
    crate::os::catch_up();
    let result = if core.probation.is_on() {
        finish_on_probation(core, result)
    } else {
        result
    };
    result.map_err(|failed| *failed)
}

#[cold]
#[inline(never)]
fn finish_on_probation<R>(
    core: &ModuleCore,
    result: Result<R, Box<HotError>>,
) -> Result<R, Box<HotError>> {
    let result = result.map_err(|failed| *failed);
    core.finish_call(&result);
    result.map_err(Box::new)
}

#[cold]
#[inline(never)]
fn refusal(core: &ModuleCore, method: &'static str, refused: Refused) -> Box<HotError> {
    Box::new(refused.into_error(&core.spec.name, method))
}

#[cold]
#[inline(never)]
fn not_loaded(core: &ModuleCore, method: &'static str) -> Box<HotError> {
    Box::new(HotError::NotLoaded {
        module: core.spec.name.clone(),
        method,
    })
}

/// The error of a call whose entry returned `err`; made while the version is still held (the
/// message is copied out of the module's memory).
#[cold]
#[inline(never)]
fn failed(live: &Live, method: &'static str, err: EntryError) -> Box<HotError> {
    let (fault, backtrace) = ModuleFault::with_backtrace(err);
    Box::new(HotError::Call {
        module: live.version.info.module.clone(),
        method,
        generation: live.version.info.generation,
        api_version: live.version.info.api_version,
        fault,
        backtrace,
    })
}
