//! The handles with the `static` feature: the module's rlib is linked into the host and
//! `hot_fn!` calls its methods directly. No library, no table, no loading; the host's code
//! is the same as with hot reloading on. A panic in a method still comes back as
//! [`HotError::Call`] (generation 0), as it would from a loaded version.

use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::Arc;

use crossbeam_utils::sync::ShardedLock;
use hotreload_abi::{EntryResult, StatePtr};

use super::CallPath;
use crate::VersionInfo;
use crate::error::{HotError, ModuleFault};
use crate::module::HotModule;
use crate::rehome::Rehome;

/// A handle to a module linked into the host (the `static` feature). Cheap to clone;
/// `Send + Sync`: `&self` calls share the state, `&mut self` calls take it alone.
pub struct Module<T> {
    state: Arc<ShardedLock<T>>,
}

/// A handle to a module linked into the host (the `static` feature), for one thread.
pub struct LocalModule<T> {
    state: Rc<RefCell<T>>,
}

impl<T> Clone for Module<T> {
    fn clone(&self) -> Self {
        Module {
            state: Arc::clone(&self.state),
        }
    }
}

impl<T: HotModule> std::fmt::Debug for Module<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Module")
            .field("name", &T::MODULE_NAME)
            .field("linked", &true)
            .finish()
    }
}

impl<T: HotModule> std::fmt::Debug for LocalModule<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalModule")
            .field("name", &T::MODULE_NAME)
            .field("linked", &true)
            .finish()
    }
}

impl<T: HotModule> Module<T> {
    /// The same handle: a linked module has one version, so every pick reaches it.
    pub fn route(&self, _pick: crate::Pick) -> &Self {
        self
    }

    pub(crate) fn linked() -> Self {
        Module {
            state: Arc::new(ShardedLock::new(T::default())),
        }
    }
}

impl<T: HotModule> LocalModule<T> {
    pub(crate) fn linked() -> Self {
        LocalModule {
            state: Rc::new(RefCell::new(T::default())),
        }
    }
}

macro_rules! handle_common {
    ($handle:ident) => {
        impl<T: HotModule> $handle<T> {
            /// The module's name.
            pub fn name(&self) -> &str {
                T::MODULE_NAME
            }

            /// Always `None`: a linked module has no loaded version.
            pub fn version(&self) -> Option<VersionInfo> {
                None
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

/// Runs a direct call, turning a panic into the error a loaded version would give.
fn contained<T: HotModule, R>(
    method: &'static str,
    call: impl FnOnce() -> R,
) -> Result<R, HotError> {
    catch_unwind(AssertUnwindSafe(call)).map_err(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panic with a non-string payload".to_owned());
        HotError::Call {
            module: T::MODULE_NAME.to_owned(),
            method,
            generation: 0,
            api_version: T::API_VERSION,
            fault: ModuleFault::Panicked(message),
            backtrace: None,
        }
    })
}

impl<T: HotModule> super::sealed::Sealed for Module<T> {}

impl<T: HotModule> CallPath<T> for Module<T> {
    unsafe fn call_shared<A, R, F: Rehome>(
        &self,
        method: &'static str,
        _index: usize,
        args: A,
        direct: impl FnOnce(&T, A) -> R,
        _table: impl FnOnce(&T::Table, StatePtr, A) -> EntryResult<F>,
        _back: impl FnOnce(F) -> R,
    ) -> Result<R, HotError> {
        let state = self
            .state
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        contained::<T, R>(method, || direct(&state, args))
    }

    unsafe fn call_exclusive<A, R, F: Rehome>(
        &self,
        method: &'static str,
        _index: usize,
        args: A,
        direct: impl FnOnce(&mut T, A) -> R,
        _table: impl FnOnce(&T::Table, StatePtr, A) -> EntryResult<F>,
        _back: impl FnOnce(F) -> R,
    ) -> Result<R, HotError> {
        let mut state = self
            .state
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        contained::<T, R>(method, || direct(&mut state, args))
    }
}

impl<T: HotModule> super::sealed::Sealed for LocalModule<T> {}

impl<T: HotModule> CallPath<T> for LocalModule<T> {
    unsafe fn call_shared<A, R, F: Rehome>(
        &self,
        method: &'static str,
        _index: usize,
        args: A,
        direct: impl FnOnce(&T, A) -> R,
        _table: impl FnOnce(&T::Table, StatePtr, A) -> EntryResult<F>,
        _back: impl FnOnce(F) -> R,
    ) -> Result<R, HotError> {
        let state = self.borrow(method)?;
        contained::<T, R>(method, || direct(&state, args))
    }

    unsafe fn call_exclusive<A, R, F: Rehome>(
        &self,
        method: &'static str,
        _index: usize,
        args: A,
        direct: impl FnOnce(&mut T, A) -> R,
        _table: impl FnOnce(&T::Table, StatePtr, A) -> EntryResult<F>,
        _back: impl FnOnce(F) -> R,
    ) -> Result<R, HotError> {
        let mut state = self
            .state
            .try_borrow_mut()
            .map_err(|_| self.reentered(method, true))?;
        contained::<T, R>(method, || direct(&mut state, args))
    }
}

impl<T: HotModule> LocalModule<T> {
    fn borrow(&self, method: &'static str) -> Result<std::cell::Ref<'_, T>, HotError> {
        self.state
            .try_borrow()
            .map_err(|_| self.reentered(method, false))
    }

    /// A call that would alias a `&mut self` call of the same module running on this thread.
    fn reentered(&self, method: &'static str, exclusive: bool) -> HotError {
        HotError::ReentrantCall {
            module: T::MODULE_NAME.to_owned(),
            method,
            exclusive,
            running_exclusive: !exclusive,
        }
    }
}
