//! The call path: the two kinds of handle `hot_fn!` calls through. `loaded.rs` holds them as
//! they are normally, calling into a loaded version; `linked.rs` as they are with the
//! `static` feature, calling the module's rlib directly.
//!
//! - [`Module`]: `Send + Sync`, cheap to clone; each call holds the module's lock (read for
//!   `&self` methods and associated functions, write for `&mut self`), so calls from any
//!   thread and reloads on any thread (the watcher's, say) interleave safely.
//! - [`LocalModule`]: bound to the thread that registered it; calls take no lock and write
//!   nothing shared. Reloads happen on that thread, between calls: at `poll()` or
//!   `reload_module` (the watcher only detects them). For game loops and other
//!   single-threaded hosts.

use hotreload_abi::{EntryResult, StatePtr};

use crate::error::HotError;
use crate::module::HotModule;
use crate::rehome::Rehome;

/// Only the runtime's handles implement [`CallPath`]: its contract (which lock or permit a
/// call holds) is the runtime's.
pub(crate) mod sealed {
    pub trait Sealed {}
}

/// The handles that call through the loaded version's table (`Module`, `LocalModule`, and a
/// module's `Import`) make the call the same way, each with its own `call(method, access,
/// ..)`, given `$shared` or `$exclusive` for the access; the `direct` path is the `static`
/// build mode's.
macro_rules! call_path_through_table {
    ($handle:ident $(<$lt:lifetime>)?, $shared:expr, $exclusive:expr) => {
        impl<$($lt,)? T: $crate::module::HotModule> $crate::call::sealed::Sealed
            for $handle<$($lt,)? T>
        {
        }

        impl<$($lt,)? T: $crate::module::HotModule> $crate::call::CallPath<T>
            for $handle<$($lt,)? T>
        {
            #[inline(always)]
            unsafe fn call_shared<A, R, F: $crate::rehome::Rehome>(
                &self,
                method: &'static str,
                index: usize,
                args: A,
                _direct: impl FnOnce(&T, A) -> R,
                table: impl FnOnce(
                    &T::Table,
                    ::hotreload_abi::StatePtr,
                    A,
                ) -> ::hotreload_abi::EntryResult<F>,
                back: impl FnOnce(F) -> R,
            ) -> Result<R, $crate::error::HotError> {
                self.call(method, index, $shared, |t, s| table(t, s, args))
                    .map(back)
            }

            #[inline(always)]
            unsafe fn call_exclusive<A, R, F: $crate::rehome::Rehome>(
                &self,
                method: &'static str,
                index: usize,
                args: A,
                _direct: impl FnOnce(&mut T, A) -> R,
                table: impl FnOnce(
                    &T::Table,
                    ::hotreload_abi::StatePtr,
                    A,
                ) -> ::hotreload_abi::EntryResult<F>,
                back: impl FnOnce(F) -> R,
            ) -> Result<R, $crate::error::HotError> {
                self.call(method, index, $exclusive, |t, s| table(t, s, args))
                    .map(back)
            }
        }
    };
}

// The handle a module calls another module through: the module's side.
mod import;
pub use import::Import;

// The handles: the host's side only.
#[cfg(feature = "static")]
mod linked;
#[cfg(all(feature = "runtime", not(feature = "static")))]
mod loaded;

#[cfg(feature = "static")]
pub use linked::{LocalModule, Module};
#[cfg(all(feature = "runtime", not(feature = "static")))]
pub use loaded::{LocalModule, Module, Routed};

/// How a handle gets a call to the module. Implemented by [`Module`] and [`LocalModule`] only
/// (the trait is sealed);
/// the code `#[hot_module]` generates calls through it, giving both ways to make the call:
/// `direct` on the state itself (the `static` build mode, where the module is linked in) and
/// `table` through the loaded version's export table (with `back` turning the FFI-safe result
/// into the method's own return type). A handle uses exactly one of them. `index` is the
/// method's place in [`HotModule::METHODS`] (for its metrics).
pub trait CallPath<T: HotModule>: sealed::Sealed {
    /// A call that takes the state by shared reference (or not at all).
    ///
    /// # Safety
    /// `table` may only invoke entries that take the state by shared reference (or not at
    /// all): two of these calls can run at once.
    #[doc(hidden)]
    unsafe fn call_shared<A, R, F: Rehome>(
        &self,
        method: &'static str,
        index: usize,
        args: A,
        direct: impl FnOnce(&T, A) -> R,
        table: impl FnOnce(&T::Table, StatePtr, A) -> EntryResult<F>,
        back: impl FnOnce(F) -> R,
    ) -> Result<R, HotError>;

    /// A call that takes the state by exclusive reference.
    ///
    /// # Safety
    /// None beyond the entries' own contract: the call is exclusive.
    #[doc(hidden)]
    unsafe fn call_exclusive<A, R, F: Rehome>(
        &self,
        method: &'static str,
        index: usize,
        args: A,
        direct: impl FnOnce(&mut T, A) -> R,
        table: impl FnOnce(&T::Table, StatePtr, A) -> EntryResult<F>,
        back: impl FnOnce(F) -> R,
    ) -> Result<R, HotError>;
}
