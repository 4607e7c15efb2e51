//! A registered module: the live version and its state, and the call path into them.
//!
//! # Why a version is never unmapped while in use
//! Every call holds the module's lock for its whole duration (read for `&self` and
//! associated functions, write for `&mut self`), and the table pointer and state it uses are
//! read under that lock. A reload publishes the new version by replacing [`Live`] under the
//! write lock, which it can only take once every call in progress has returned. After the
//! replacement no call can reach the old version: its state is destroyed by its own code, every
//! value a call returned was rebuilt by the host ([`Rehome`]) before the lock was released, and
//! the layout read during verification was turned into text at once. Only then is the old
//! library closed.

use std::marker::PhantomData;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use abi_stable::StableAbi;
use abi_stable::std_types::RResult;
use abi_stable::type_layout::TypeLayout;
use hotreload_abi::{EntryResult, StatePtr};

use crate::error::HotError;
use crate::rehome::Rehome;
use crate::transaction::LoadedVersion;
use crate::transaction::retire::RetiredVersion;
use crate::{ShadowDir, VersionInfo};

/// Implemented by `#[hot_module]` for a module's state type; the host names modules by it.
///
/// The state must be `Default + Serialize + DeserializeOwned + Send + Sync + 'static`: it is
/// made with `Default` on the first load, carried across reloads with serde, and used from
/// any host thread.
pub trait HotModule: crate::__private::HotState {
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
    /// The typed call surface `hot_fn!` uses.
    #[doc(hidden)]
    type Proxy<'m>;
    #[doc(hidden)]
    fn proxy(module: &Module<Self>) -> Self::Proxy<'_>;
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
}

/// The version serving calls, and its state.
pub(crate) struct Live {
    pub version: LoadedVersion,
    pub state: StatePtr,
}

impl Drop for Live {
    fn drop(&mut self) {
        // The state was made by this version's code and must be freed by it, before the
        // version's library is closed (when `self.version` drops right after this).
        if let RResult::RErr(err) = (self.version.lifecycle.destroy)(self.state) {
            tracing::warn!(
                module = %self.version.info.module,
                generation = self.version.info.generation,
                "dropping the state failed: {}",
                crate::error::ModuleFault::from(err)
            );
        }
    }
}

/// Bookkeeping that only a transaction touches; its mutex serialises transactions.
pub(crate) struct Book {
    pub next_generation: u64,
    pub retired: Vec<RetiredVersion>,
}

/// The untyped part of a module, shared by its handles and the reloader.
pub(crate) struct ModuleCore {
    pub spec: ModuleSpec,
    pub shadow: Arc<ShadowDir>,
    /// `None` until a first build has loaded (a module registered before it was built).
    live: RwLock<Option<Live>>,
    book: Mutex<Book>,
}

impl ModuleCore {
    pub(crate) fn new(spec: ModuleSpec, shadow: Arc<ShadowDir>, live: Option<Live>) -> Self {
        let next_generation = live.as_ref().map_or(1, |l| l.version.info.generation + 1);
        ModuleCore {
            spec,
            shadow,
            live: RwLock::new(live),
            book: Mutex::new(Book {
                next_generation,
                retired: Vec::new(),
            }),
        }
    }

    // A poisoned lock only means a host-side panic (in `Rehome`, say) while it was held;
    // `Live` is replaced in one assignment, so it is never left half-updated.
    pub(crate) fn read_live(&self) -> RwLockReadGuard<'_, Option<Live>> {
        self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn write_live(&self) -> RwLockWriteGuard<'_, Option<Live>> {
        self.live.write().unwrap_or_else(PoisonError::into_inner)
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
}

/// A handle to a registered module, typed by its state type. Cheap to clone; `Send + Sync`.
///
/// Call its methods with [`hot_fn!`](crate::hot_fn). Each call runs wholly in one version:
/// the one loaded when the call began.
pub struct Module<T> {
    pub(crate) core: Arc<ModuleCore>,
    _state: PhantomData<fn() -> T>,
}

impl<T> Clone for Module<T> {
    fn clone(&self) -> Self {
        Module {
            core: Arc::clone(&self.core),
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

impl<T: HotModule> Module<T> {
    pub(crate) fn from_core(core: Arc<ModuleCore>) -> Self {
        Module {
            core,
            _state: PhantomData,
        }
    }

    /// The module's name.
    pub fn name(&self) -> &str {
        &self.core.spec.name
    }

    /// The version serving calls now; `None` before the module's first build has loaded.
    pub fn version(&self) -> Option<VersionInfo> {
        self.core.version()
    }

    #[doc(hidden)]
    pub fn __hot_proxy(&self) -> T::Proxy<'_> {
        T::proxy(self)
    }

    /// Runs `call` on the live version's table with the module's lock held for reading.
    ///
    /// # Safety
    /// `call` may only invoke entries that take the state by shared reference (or not at
    /// all): two of these calls can run at once.
    #[doc(hidden)]
    pub unsafe fn call_shared<R: Rehome>(
        &self,
        method: &'static str,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        Self::run(
            self.core.read_live().as_ref(),
            &self.core.spec.name,
            method,
            call,
        )
    }

    /// Runs `call` on the live version's table with the module's lock held for writing.
    ///
    /// # Safety
    /// None beyond the entries' own contract: the write lock makes the call exclusive.
    #[doc(hidden)]
    pub unsafe fn call_exclusive<R: Rehome>(
        &self,
        method: &'static str,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        Self::run(
            self.core.write_live().as_ref(),
            &self.core.spec.name,
            method,
            call,
        )
    }

    #[inline(always)]
    fn run<R: Rehome>(
        live: Option<&Live>,
        module: &str,
        method: &'static str,
        call: impl FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    ) -> Result<R, HotError> {
        let Some(live) = live else {
            return Err(HotError::NotLoaded {
                module: module.to_owned(),
                method,
            });
        };
        // SAFETY: this module was registered with `T::Table`'s layout as the expected layout,
        // and no version is made live before verification found its table's layout compatible
        // with it; the table is a static in the version's image, which stays mapped while the
        // caller holds the lock guarding `live`.
        let table = unsafe { &*live.version.table.cast::<T::Table>() };
        match call(table, live.state) {
            // Rebuilt with the host's code while the version is still held (see module docs).
            RResult::ROk(value) => Ok(value.rehome()),
            RResult::RErr(err) => Err(HotError::Call {
                module: live.version.info.module.clone(),
                method,
                generation: live.version.info.generation,
                api_version: live.version.info.api_version,
                fault: err.into(),
            }),
        }
    }
}
