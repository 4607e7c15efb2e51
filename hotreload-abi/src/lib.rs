//! The types a hotreload host and a hot-reloadable module must agree on.
//!
//! Everything here crosses the boundary between two separately compiled binaries, so every
//! type is `#[repr(C)]` and, where its shape can be checked at load time, derives
//! [`abi_stable::StableAbi`]. The crate holds no logic beyond what both sides need; a change to
//! any type in it is a change of [`ABI_VERSION`].
//!
//! A module exports one [`ModuleDescriptor`] under the symbol that [`descriptor_symbol`] names.
//! The host reads the descriptor's fixed prefix (magic and ABI version) before it trusts
//! anything else in it, then checks the export table's layout with abi_stable.

use std::ffi::c_void;

use abi_stable::StableAbi;
use abi_stable::std_types::{RResult, RSlice, RStr, RString, RVec};
use abi_stable::type_layout::TypeLayout;
use serde::{Deserialize, Serialize};

/// Version of the contract between host and module defined by this crate.
///
/// Raised whenever a type in this crate, the calling convention of the export table, or the
/// major version of `abi_stable` (whose `TypeLayout` the descriptor points to) changes. The host
/// refuses a module built against any other value before reading past [`ModuleDescriptor::abi_version`].
pub const ABI_VERSION: u32 = 8;

/// The first eight bytes of every descriptor: proof that the symbol really is a descriptor.
pub const DESCRIPTOR_MAGIC: [u8; 8] = *b"HOTRLD\0\x01";

/// Prefix of the exported descriptor symbol; the module name follows it.
pub const DESCRIPTOR_SYMBOL_PREFIX: &str = "hotreload_module__";

/// The symbol under which the module called `module_name` exports its [`ModuleDescriptor`].
///
/// The name is unique per module so that two modules loaded into one process never collide,
/// and so that a build of another module placed at this module's path is recognised as such.
pub fn descriptor_symbol(module_name: &str) -> String {
    format!("{DESCRIPTOR_SYMBOL_PREFIX}{module_name}")
}

/// What a module exports so that a host can find, verify and use it.
///
/// The first two fields never move: a host reads `magic` and `abi_version` first and stops
/// there if they are not what it expects, because the remainder of the layout is only known
/// for the ABI version it was compiled with.
#[repr(C)]
pub struct ModuleDescriptor {
    /// Always [`DESCRIPTOR_MAGIC`].
    pub magic: [u8; 8],
    /// The [`ABI_VERSION`] the module was built against.
    pub abi_version: u32,
    /// The API version given in `#[hot_module(version = N)]`.
    pub api_version: u32,
    /// The version of the state schema, recorded in every state envelope the module writes.
    pub state_version: u32,
    /// The state migrations the module declares (`#[migrate(from = k)]` up, `#[migrate(to =
    /// k)]` down): with them its `restore` reads older schemas and its `save` writes older
    /// ones. Up steps run `k -> k + 1`, down steps `k + 1 -> k`; each chain is contiguous.
    pub migrations: RSlice<'static, MigrationStep>,
    /// `#[hot_module(concurrent_save = true)]`: the module's `&self` methods never change its
    /// state (no interior mutability written through `&self`), so the host may save the
    /// state while `&self` calls run.
    pub concurrent_save: bool,
    /// The panic strategy the module was built with: [`PANIC_UNWIND`] or [`PANIC_ABORT`].
    /// Panics can only be contained (returned to the host as errors) with `unwind`.
    pub panic_strategy: u32,
    /// The module's name (by default the state type's name in snake case).
    pub module_name: RStr<'static>,
    /// The name of the crate the module was built from.
    pub crate_name: RStr<'static>,
    /// The exported methods as the module's source declares them, in Rust spelling: what a
    /// refusal names when the export table's layout differs. The layout check decides.
    pub methods: RSlice<'static, MethodDescription>,
    /// The `StableAbi` layout of [`LifecycleEntries`], the first field of the export table.
    ///
    /// Layouts live inside the module's image: they must not be kept past the lifetime of
    /// the loaded library, whatever their `'static` says.
    pub lifecycle_layout: &'static TypeLayout,
    /// Each exported method's entry in the table: its name, layout and place. The host
    /// looks up each method it was compiled with by name and checks its layout alone, so a
    /// build may add methods (and declare them in any order).
    pub entries: RSlice<'static, TableEntry>,
    /// The size of the export table in bytes.
    pub table_size: usize,
    /// Points to the export table, a `#[repr(C)]` struct of [`LifecycleEntries`] then one
    /// `extern "C" fn` pointer per method, at the offsets `entries` give.
    pub table: *const c_void,
    /// The hot modules this module calls (`#[hot_module(uses(...))]`), each as this build
    /// was compiled with it; a call names one by its index here.
    pub imports: RSlice<'static, ImportDescription>,
}

/// A hot module that a module calls, as the caller was compiled with it: the host checks the
/// callee's build against it (API version, then each entry's layout, found by name) when
/// either side loads.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct ImportDescription {
    /// The callee's module name.
    pub module_name: RStr<'static>,
    /// The callee's API version the caller was compiled with.
    pub api_version: u32,
    /// The callee's entries as the caller was compiled with them.
    pub entries: RSlice<'static, TableEntry>,
    /// The callee's methods as the caller was compiled with them (for messages).
    pub methods: RSlice<'static, MethodDescription>,
    /// The size of the callee's export table as the caller was compiled with it.
    pub table_size: usize,
}

/// A call a module makes into another module (an import), handed to the host: the host
/// takes the callee's lock for the call, then runs `run` with the callee's serving table
/// (laid out as the caller was compiled with it) and state.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct ImportedCall {
    /// The caller's frame for the call (arguments in, result out); only `run` reads it.
    pub data: *mut c_void,
    /// Makes the call through the table and rebuilds its result with the caller's code,
    /// while the host holds the callee's version live; says how it ended
    /// ([`CALL_RETURNED`], [`CALL_ERR`] or [`CALL_PANICKED`]), for the callee's metrics.
    /// Never unwinds.
    pub run: unsafe extern "C" fn(data: *mut c_void, table: *const c_void, state: StatePtr) -> u8,
}

/// The `target` of [`HostHooks::call_import`]: the import's place in
/// [`ModuleDescriptor::imports`] (low 32 bits) and the method's in its `methods` (high 32).
pub const fn import_target(import: u32, method: u32) -> u64 {
    (import as u64) | ((method as u64) << 32)
}

/// The import and the method an [`import_target`] names.
pub const fn import_and_method(target: u64) -> (u32, u32) {
    (target as u32, (target >> 32) as u32)
}

/// [`ImportedCall::run`]: the method returned a value (not an `Err`).
pub const CALL_RETURNED: u8 = 0;
/// [`ImportedCall::run`]: the method returned `Err(..)`, or its entry failed.
pub const CALL_ERR: u8 = 1;
/// [`ImportedCall::run`]: the method panicked (contained).
pub const CALL_PANICKED: u8 = 2;

/// What the host did with an [`ImportedCall`].
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum ImportOutcome {
    /// `run` ran, in this version of the callee.
    Ran {
        /// The callee version's load number.
        generation: u64,
        /// Its API version.
        api_version: u32,
    },
    /// The callee is registered but no build of it is loaded yet.
    NotLoaded,
    /// The call would alias the callee's state with a call of it running on this thread.
    Reentrant {
        /// Whether the running call (or transaction) takes the state exclusively.
        running_exclusive: bool,
    },
    /// The callee cannot be called: not registered, or the reason.
    Unavailable(RString),
}

/// One method's entry in an export table.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct TableEntry {
    /// The method's name.
    pub name: RStr<'static>,
    /// The `StableAbi` layout of a `#[repr(C)]` struct whose one field, named after the
    /// method, has the entry's function pointer type.
    pub layout: &'static TypeLayout,
    /// Where the function pointer is in the table, in bytes.
    pub offset: usize,
}

/// One state migration a module declares, for the host to check and name.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug, PartialEq, Eq)]
pub struct MigrationStep {
    /// The schema it reads.
    pub from: u32,
    /// The schema it makes: `from + 1` (up) or `from - 1` (down).
    pub to: u32,
    /// The function that does it, as the source names it.
    pub name: RStr<'static>,
}

/// [`ModuleDescriptor::panic_strategy`] of a module built with `panic = "unwind"`.
pub const PANIC_UNWIND: u32 = 1;
/// [`ModuleDescriptor::panic_strategy`] of a module built with `panic = "abort"`.
pub const PANIC_ABORT: u32 = 2;

/// One exported method as its source declares it, for messages: "method 'add', parameter 1
/// ('n'): expected i64, found f64".
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct MethodDescription {
    /// The method's name (also its export-table field).
    pub name: RStr<'static>,
    /// Whether the entry's first parameter is the state (`&self` or `&mut self`).
    pub takes_state: bool,
    /// Whether it takes `&mut self`: the host calls its entry only with no other call of the
    /// module running. The entry's layout is the same as for `&self`, so this is checked on
    /// its own.
    pub exclusive: bool,
    /// The parameters' names, in order.
    pub params: RSlice<'static, RStr<'static>>,
    /// The parameters' types as written in the source.
    pub types: RSlice<'static, RStr<'static>>,
    /// The return type as written (`()` for none).
    pub returns: RStr<'static>,
    /// A digest of the method's source tokens (signature and body): two builds whose
    /// digests differ changed the method's own code.
    pub digest: u64,
}

/// The part of [`ModuleDescriptor`] that every ABI version shares: read it first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DescriptorPrefix {
    /// Always [`DESCRIPTOR_MAGIC`].
    pub magic: [u8; 8],
    /// The [`ABI_VERSION`] the module was built against.
    pub abi_version: u32,
}

// SAFETY: the descriptor is immutable after construction; `table` points to a `static` export
// table of `extern "C"` function pointers, which any thread may read.
unsafe impl Sync for ModuleDescriptor {}

/// An owned, type-erased pointer to a module's state (a `Box<T>` made by the module).
///
/// Only the module that created it knows `T`; the host passes it back to the same module's
/// entries and never dereferences it.
#[repr(transparent)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatePtr(pub *mut c_void);

// SAFETY: a `StatePtr` is a plain address. Access to what it points to is synchronised by the
// host (shared calls under a read lock, mutating calls and reloads under a write lock), and the
// generated module code requires the state type to be `Send + Sync`.
unsafe impl Send for StatePtr {}
// SAFETY: see the `Send` impl above.
unsafe impl Sync for StatePtr {}

/// Why an entry of the export table did not return a value.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, PartialEq, Eq)]
pub enum EntryError {
    /// The module code panicked; the panic was caught inside the module.
    Panicked {
        /// The panic's message and, when known, where it happened.
        message: RString,
        /// The backtrace captured where it happened, resolved to text by the module while
        /// its image was mapped; empty unless the host's environment has
        /// `HOTRELOAD_BACKTRACE=1`.
        backtrace: RString,
    },
    /// The entry failed without panicking (for example, state that cannot be decoded).
    Failed(RString),
}

/// The return type of every fallible export-table entry.
pub type EntryResult<T> = RResult<T, EntryError>;

/// The entries every export table starts with: they create, destroy, save and restore the
/// module's state. Generated export tables hold this struct as their first field, so a host
/// can reach these entries without knowing the module's methods.
#[repr(C)]
#[derive(StableAbi, Clone, Copy)]
pub struct LifecycleEntries {
    /// Makes a fresh state (`T::default()`).
    pub construct: extern "C" fn() -> EntryResult<StatePtr>,
    /// Drops a state made by this module.
    pub destroy: extern "C" fn(state: StatePtr) -> EntryResult<()>,
    /// Encodes the state as a MessagePack [`StateEnvelope`] of schema `schema`: the module's
    /// own, or an older one it declares a way down to (its down migrations run first).
    pub save: extern "C" fn(state: StatePtr, schema: u32) -> EntryResult<RVec<u8>>,
    /// Decodes a [`StateEnvelope`] into a new state: of the module's own schema, or of an
    /// older one it declares a way up from (its up migrations run, one step at a time).
    pub restore: extern "C" fn(envelope: RSlice<'_, u8>) -> EntryResult<StatePtr>,
    /// Runs the module's retire hook on a state whose version stops serving (before it is
    /// destroyed), then raises the stop signal of the version's workers.
    pub retire: extern "C" fn(state: StatePtr) -> EntryResult<()>,
    /// Raises the stop signal of the version's workers, waits up to `timeout_ms` for them to
    /// end, joins those that ended and returns how many still run.
    pub join_workers: extern "C" fn(timeout_ms: u64) -> EntryResult<u32>,
    /// Lowers the stop signal: the version serves again (a rollback), and may start workers.
    pub resume_workers: extern "C" fn() -> EntryResult<()>,
    /// Gives the module what it may ask the host that loaded it. Called once, after
    /// verification and before any other entry.
    pub attach: extern "C" fn(host: HostHooks) -> EntryResult<()>,
}

/// What a module may ask the host that loaded it, from any of the module's threads, for as
/// long as the module is loaded.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct HostHooks {
    /// Whether the calling thread is inside a call the host is making into a module (a method
    /// through either kind of handle) or inside a reload of one. Asked by the module's panic
    /// hook, only when a panic happens: module code runs on a thread the host is calling from
    /// only inside an entry, which contains the panic; a panic on a thread the module started
    /// itself, outside every entry, is not contained and is reported as usual. Never panics.
    pub in_call: extern "C" fn() -> bool,
    /// Runs a call of this module into one of the modules it lists in its
    /// [`ModuleDescriptor::imports`] (the callee's serving version, under the callee's
    /// lock). `target` ([`import_target`]) names the import and the method called (its place
    /// in that import's `methods`, for the callee's metrics), in one argument: a sixth
    /// argument register measurably slowed every call. `links` is [`HostHooks::links`]. Never unwinds.
    pub call_import: extern "C" fn(
        links: *const c_void,
        target: u64,
        exclusive: bool,
        call: ImportedCall,
    ) -> ImportOutcome,
    /// The host's record of this loaded version's imports, passed back to `call_import`;
    /// valid for as long as the version's image is mapped.
    pub links: *const c_void,
    /// Where the module's `tracing` events and spans and `log` records go: the host's
    /// subscriber.
    pub log: LogHooks,
}

/// The host's side of a module's logging: the module's own copies of `tracing` and `log`
/// send what its code emits here, and the host hands it to its subscriber as its own, with
/// the module's name and load number as fields. Every function never unwinds.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LogHooks {
    /// The host's record of this loaded version (name, load number, callsites seen), passed
    /// back to each function; valid for as long as the version's image is mapped.
    pub context: *const c_void,
    /// The most verbose level the host's subscribers may want, when the module was attached
    /// ([`LOG_LEVEL_OFF`] for none): a bound the module checks before asking anything.
    pub max_level: u8,
    /// A callsite is hit for the first time: what the host's subscribers want of it
    /// ([`LOG_INTEREST_NEVER`], [`LOG_INTEREST_SOMETIMES`], [`LOG_INTEREST_ALWAYS`]). The
    /// module remembers the answer, so a callsite the host never wants costs nothing more.
    pub register: extern "C" fn(context: *const c_void, callsite: &LogCallsite<'_>) -> u8,
    /// Whether the host's subscriber wants this event or span now (for a callsite whose
    /// interest is "sometimes").
    pub enabled: extern "C" fn(context: *const c_void, callsite: &LogCallsite<'_>) -> bool,
    /// An event (or a `log` record, as an event with a `message`).
    pub event: extern "C" fn(
        context: *const c_void,
        callsite: &LogCallsite<'_>,
        fields: RSlice<'_, LogField<'_>>,
    ),
    /// A new span; returns the host's id for it (0 if the host made none).
    pub new_span: extern "C" fn(
        context: *const c_void,
        callsite: &LogCallsite<'_>,
        fields: RSlice<'_, LogField<'_>>,
    ) -> u64,
    /// The thread enters the span with this host id.
    pub enter: extern "C" fn(span: u64),
    /// The thread leaves it.
    pub exit: extern "C" fn(span: u64),
    /// One more handle to the span; returns the id to use for it.
    pub clone_span: extern "C" fn(span: u64) -> u64,
    /// One handle to the span is dropped; whether the span closed.
    pub close_span: extern "C" fn(span: u64) -> bool,
}

/// [`LogHooks::register`]: the host never wants this callsite.
pub const LOG_INTEREST_NEVER: u8 = 0;
/// [`LogHooks::register`]: ask [`LogHooks::enabled`] each time.
pub const LOG_INTEREST_SOMETIMES: u8 = 1;
/// [`LogHooks::register`]: always send it.
pub const LOG_INTEREST_ALWAYS: u8 = 2;

/// Levels, from the most verbose: `TRACE` is 0, `ERROR` 4.
pub const LOG_LEVEL_TRACE: u8 = 0;
/// [`LogHooks::max_level`]: the host wants nothing.
pub const LOG_LEVEL_OFF: u8 = 5;

/// [`LogCallsite::kind`] of an event or `log` record.
pub const LOG_KIND_EVENT: u8 = 0;
/// [`LogCallsite::kind`] of a span.
pub const LOG_KIND_SPAN: u8 = 1;

/// Where an event or span comes from in the module's code: its `tracing` metadata.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LogCallsite<'a> {
    /// The address of the module's metadata for it (the same for every hit while the image is
    /// mapped), or 0 for a `log` record, which has none.
    pub key: usize,
    /// [`LOG_KIND_EVENT`] or [`LOG_KIND_SPAN`].
    pub kind: u8,
    /// Its level, [`LOG_LEVEL_TRACE`] (0) to `ERROR` (4).
    pub level: u8,
    /// Its line, or 0.
    pub line: u32,
    /// Its name.
    pub name: RStr<'a>,
    /// Its target.
    pub target: RStr<'a>,
    /// Its module path, or empty.
    pub module_path: RStr<'a>,
    /// Its file, or empty.
    pub file: RStr<'a>,
    /// The names of its fields, in order.
    pub fields: RSlice<'a, RStr<'a>>,
}

/// One field's value in an event or a new span.
#[repr(C)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub struct LogField<'a> {
    /// The field's place in [`LogCallsite::fields`].
    pub index: u32,
    /// Its value.
    pub value: LogValue<'a>,
}

/// A field's value, as `tracing` visits it.
#[repr(u8)]
#[derive(StableAbi, Clone, Copy, Debug)]
pub enum LogValue<'a> {
    /// A signed integer.
    I64(i64),
    /// An unsigned integer.
    U64(u64),
    /// A float.
    F64(f64),
    /// A boolean.
    Bool(bool),
    /// A string.
    Str(RStr<'a>),
    /// Anything else, formatted by the module (`Debug`, or `Display` for `%value`), shown as
    /// it is.
    Text(RStr<'a>),
}

// SAFETY: `context` is an address the host keeps valid (and synchronises access behind) for
// as long as the image that holds these hooks is mapped; the functions may be called from any
// thread.
unsafe impl Send for LogHooks {}
// SAFETY: see the `Send` impl.
unsafe impl Sync for LogHooks {}

// SAFETY: `links` is an address the host keeps valid (and synchronises access behind) for as
// long as the image that holds these hooks is mapped; the functions may be called from any
// thread.
unsafe impl Send for HostHooks {}
// SAFETY: see the `Send` impl.
unsafe impl Sync for HostHooks {}

/// The envelope around a module's serialized state.
///
/// Encoded with MessagePack by the module that saves, decoded by the module that restores.
/// It records who wrote the payload so that a restore can refuse state that is not its own.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct StateEnvelope {
    /// The module name of the writer.
    pub module: String,
    /// The writer's state schema version.
    pub state_version: u32,
    /// The API version of the writer.
    pub api_version: u32,
    /// The state itself, MessagePack with named fields.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}
