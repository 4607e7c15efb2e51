//! A registered module: what the host expects of it, its live version (reached only through
//! the rules in the `access` module), and the bookkeeping of its transactions.
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

#[cfg(feature = "runtime")]
mod host;
#[cfg(feature = "runtime")]
pub(crate) use host::{Book, ModuleCore, ModuleSpec, RefusedBuild};

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
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a hot module",
    label = "not the state type of a `#[hot_module]` impl block",
    note = "`uses = [...]` and `register::<T>()` take the state type of a `#[hot_module]` impl block"
)]
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
    /// The exported methods as the source declares them, with each one's source digest (a
    /// module calling this one records them with its import).
    #[doc(hidden)]
    const DESCRIPTIONS: &'static [crate::__private::MethodDescription];
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
