//! The handle a module calls another hot module through (an import): compiled into the
//! calling module's library. Each call goes to the host that loaded the caller, which runs it
//! in the callee's serving version under the callee's lock (see the host's `link` module);
//! the caller's code makes the call through the table and rebuilds the result before the
//! host lets the callee's version go.

use std::ffi::c_void;
use std::marker::PhantomData;

use abi_stable::std_types::RResult;
use hotreload_abi::{EntryResult, ImportOutcome, ImportedCall, StatePtr};

use crate::error::{HotError, ModuleFault};
use crate::module::HotModule;
use crate::rehome::Rehome;

/// A handle to a hot module that this module calls: get one with the `import` function that
/// `#[hot_module(uses = [...])]` generates (`Self::import::<Physics>()`), and call it with
/// [`hot_fn!`](crate::hot_fn) as a host calls a [`Module`](crate::Module).
///
/// Each call goes to the callee's version serving at the time of the call, through the host
/// that loaded this module: the callee's version stays loaded until the call has returned
/// and its result has been rebuilt by this module's code, a panic on either side comes back
/// as [`HotError::Call`], and a callee that is not registered (yet) or was refused is
/// [`HotError::ImportUnavailable`].
pub struct Import<T> {
    index: u32,
    _callee: PhantomData<fn() -> T>,
}

impl<T> Clone for Import<T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Import<T> {}

impl<T> std::fmt::Debug for Import<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Import")
            .field("callee", &std::any::type_name::<T>())
            .field("index", &self.index)
            .finish()
    }
}

impl<T: HotModule> Import<T> {
    /// The import at `index` of the calling module's `uses = [...]` (generated code only).
    #[doc(hidden)]
    pub const fn __new(index: u32) -> Self {
        Import {
            index,
            _callee: PhantomData,
        }
    }

    /// The callee's module name.
    pub fn name(&self) -> &'static str {
        T::MODULE_NAME
    }

    #[doc(hidden)]
    pub fn __hot_proxy(&self) -> T::Proxy<'_, Self> {
        T::proxy(self)
    }

    fn call<R, C>(
        &self,
        method: &'static str,
        index: usize,
        exclusive: bool,
        call: C,
    ) -> Result<R, HotError>
    where
        R: Rehome,
        C: FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    {
        let Some(host) = crate::__private::host() else {
            return Err(unavailable::<T>(
                method,
                "this code was not loaded by a hotreload host (calls between modules go \
                 through the host that loaded the caller)",
            ));
        };
        let mut frame = Frame::<T, C, R> {
            call: Some(call),
            out: None,
            _callee: PhantomData,
        };
        let imported = ImportedCall {
            data: (&raw mut frame).cast::<c_void>(),
            run: run::<T, C, R>,
        };
        match (host.call_import)(
            host.links,
            hotreload_abi::import_target(self.index, u32::try_from(index).unwrap_or(u32::MAX)),
            exclusive,
            imported,
        ) {
            ImportOutcome::Ran {
                generation,
                api_version,
            } => match frame.out {
                Some(RResult::ROk(value)) => Ok(value),
                Some(RResult::RErr(err)) => {
                    let (fault, backtrace) = ModuleFault::with_backtrace(err);
                    Err(HotError::Call {
                        module: T::MODULE_NAME.to_owned(),
                        method,
                        generation,
                        api_version,
                        fault,
                        backtrace,
                    })
                }
                None => Err(unavailable::<T>(method, "the host did not run the call")),
            },
            ImportOutcome::NotLoaded => Err(HotError::NotLoaded {
                module: T::MODULE_NAME.to_owned(),
                method,
            }),
            ImportOutcome::Reentrant { running_exclusive } => Err(HotError::ReentrantCall {
                module: T::MODULE_NAME.to_owned(),
                method,
                exclusive,
                running_exclusive,
            }),
            ImportOutcome::Unavailable(reason) => Err(unavailable::<T>(method, reason.as_str())),
        }
    }
}

#[cold]
fn unavailable<T: HotModule>(method: &'static str, reason: &str) -> HotError {
    HotError::ImportUnavailable {
        module: T::MODULE_NAME.to_owned(),
        method,
        reason: reason.to_owned(),
    }
}

/// The caller's side of one call, on its stack while the host runs it.
struct Frame<T: HotModule, C, R> {
    call: Option<C>,
    out: Option<EntryResult<R>>,
    _callee: PhantomData<fn() -> T>,
}

/// Runs the call with the table and state the host hands over, and rebuilds the result with
/// this module's code while the callee's version is still held.
///
/// # Safety
/// `data` is the `Frame<T, C, R>` of the call that passed this function; `table` points to
/// the callee's serving export table laid out as `T::Table` (the host checked each entry this
/// build was compiled with against the callee's build), and `state` is that version's state,
/// both valid until this returns.
unsafe extern "C" fn run<T, C, R>(data: *mut c_void, table: *const c_void, state: StatePtr) -> u8
where
    T: HotModule,
    C: FnOnce(&T::Table, StatePtr) -> EntryResult<R>,
    R: Rehome,
{
    // SAFETY: `data` is the frame on the calling stack (the contract above), which waits for
    // this call to return; nothing else refers to it meanwhile.
    let frame = unsafe { &mut *data.cast::<Frame<T, C, R>>() };
    let Some(call) = frame.call.take() else {
        return hotreload_abi::CALL_ERR;
    };
    // SAFETY: `table` is the callee's table as `T::Table`, valid for this call (the contract).
    let table = unsafe { &*table.cast::<T::Table>() };
    // The arguments' conversions and the result's rebuilding are this module's code; a panic
    // there stops here, as the callee's own stop in its entries.
    let out = crate::__private::contain(move || match call(table, state) {
        RResult::ROk(value) => RResult::ROk(value.rehome()),
        // The callee's strings, rebuilt with this module's allocator while the callee's
        // version is held: dropping them later would call into its image.
        RResult::RErr(err) => RResult::RErr(rehome_error(err)),
    });
    let out = match out {
        RResult::ROk(result) => result,
        RResult::RErr(err) => RResult::RErr(err),
    };
    let ended = match &out {
        RResult::ROk(value) if value.is_err() => hotreload_abi::CALL_ERR,
        RResult::ROk(_) => hotreload_abi::CALL_RETURNED,
        RResult::RErr(hotreload_abi::EntryError::Panicked { .. }) => hotreload_abi::CALL_PANICKED,
        RResult::RErr(hotreload_abi::EntryError::Failed(_)) => hotreload_abi::CALL_ERR,
    };
    frame.out = Some(out);
    ended
}

call_path_through_table!(Import, false, true);

/// `err` with its strings owned through this image's code.
fn rehome_error(err: hotreload_abi::EntryError) -> hotreload_abi::EntryError {
    use hotreload_abi::EntryError;
    match err {
        EntryError::Panicked { message, backtrace } => EntryError::Panicked {
            message: message.as_str().into(),
            backtrace: backtrace.as_str().into(),
        },
        EntryError::Failed(message) => EntryError::Failed(message.as_str().into()),
    }
}
