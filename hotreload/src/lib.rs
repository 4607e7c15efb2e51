//! Swap new builds of a module into a running program, keeping its state, refusing builds
//! that do not fit, and never taking the program down.
//!
//! A module is a `cdylib` crate (also built as an `rlib`, so the host can use its types)
//! whose state type carries `#[hot_module]`:
//!
//! ```
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Default, Serialize, Deserialize)]
//! pub struct GameLogic {
//!     score: i64,
//! }
//!
//! #[hotreload::hot_module(version = 1)]
//! impl GameLogic {
//!     pub fn tick(&mut self, dt: f32) -> i64 {
//!         self.score += (dt * 100.0) as i64;
//!         self.score
//!     }
//!
//!     pub fn score(&self) -> i64 {
//!         self.score
//!     }
//! }
//! ```
//!
//! The host registers it, calls it with [`hot_fn!`] (checked at compile time against the
//! signatures above), and reloads it whenever it likes:
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize)] pub struct GameLogic { score: i64 }
//! # #[hotreload::hot_module(version = 1)]
//! # impl GameLogic { pub fn tick(&mut self, dt: f32) -> i64 { self.score } }
//! use hotreload::{HotReloader, hot_fn};
//!
//! fn main() -> Result<(), hotreload::HotError> {
//!     let reloader = HotReloader::new();
//!     let game = reloader.register::<GameLogic>()?; // target/<profile>/[deps/]lib<crate>.so
//!     let score = hot_fn!(game.tick(0.016))?;
//!     match reloader.reload_module("game_logic") {
//!         Ok(report) => println!("now load #{}, paused calls {:?}", report.to.generation, report.timings.pause()),
//!         Err(err) => println!("still running the old version: {err}"),
//!     }
//!     Ok(())
//! }
//! ```
//!
//! # Guarantees
//! - **The build output is never opened in place.** Each version is read once, checked to be
//!   a complete shared library for this machine, and opened from a private shadow copy.
//! - **Nothing running is touched before the new build is verified**: framework ABI version,
//!   module name, the export table's layout (every method's parameter and return types,
//!   through abi_stable) and the API version. A refusal is a [`HotError::Rejected`] whose
//!   message is one line naming what differs.
//! - **State is carried over**: saved by the old code as MessagePack, restored by the new. A
//!   failure or panic there discards the new version; the old one keeps its state.
//! - **Calls are never lost**: each call runs wholly in the version that was live when it
//!   began; a reload waits for calls in progress, swaps, and lets the waiting calls through.
//! - **Panics stay in the module**: a panicking method returns [`HotError::Call`]; the next
//!   call works. A build made with `panic = "abort"`, which could not keep this promise, is
//!   refused.
//! - **Re-entry is an error, never undefined behaviour or a deadlock**: module code that calls
//!   back into the host, which calls the same module again on that thread, gets
//!   [`HotError::ReentrantCall`] when the call would alias the state, and a reload, rollback
//!   or `mark_good` from there gets [`HotError::ReloadDuringCall`].
//! - **No version is unmapped while code may run in it**: values a call returns are rebuilt
//!   by the host ([`Rehome`]); a version's [`worker`]s are stopped and joined; other threads
//!   started while it served are checked for addresses inside it; a version something may
//!   still run in is held, reported, and closed later (or never, with
//!   [`ModuleOptions::keep_loaded`]).
//! - **Modules that change together move together**: a set reload
//!   ([`HotReloader::reload_modules`], or the watcher after a change to a crate several
//!   modules depend on by path) stages, verifies and links every member's new build, then
//!   commits them in one step under all their locks: every member serves its new build, or
//!   none does and all keep their old ones with their state.
//! - **Going back is always possible**: the last versions stay loaded for
//!   [`HotReloader::rollback`], and a [`Probation`] rolls back by itself on a panic.
//!
//! # Calls between modules
//! A module names the modules it calls in `#[hot_module(uses = [...])]` and calls them with
//! `hot_fn!` through `Self::import::<T>()`:
//!
//! ```
//! # mod physics {
//! #     #[derive(Default, serde::Serialize, serde::Deserialize)] pub struct Physics;
//! #     #[hotreload::hot_module(version = 1)]
//! #     impl Physics { pub fn step(&mut self, dt: f64) -> f64 { dt } }
//! # }
//! use hotreload::hot_fn;
//! use physics::Physics;
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Default, Serialize, Deserialize)] pub struct Ai { seen: f64 }
//!
//! #[hotreload::hot_module(version = 1, uses = [physics::Physics])]
//! impl Ai {
//!     pub fn think(&mut self, dt: f64) -> Result<f64, String> {
//!         let physics = Self::import::<Physics>();
//!         let fallen = hot_fn!(physics.step(dt)).map_err(|err| err.to_string())?;
//!         self.seen += fallen;
//!         Ok(fallen)
//!     }
//! }
//! ```
//!
//! Each call goes through the host that loaded the caller to the callee's version serving at
//! that moment, under the callee's lock, with the same re-entry rules as a host's call. The
//! host checks every caller against every callee (API version, and the layout of each method
//! the caller was compiled with) whenever either side loads; a callee's build that does not
//! fit a serving caller is refused, unless the caller's matching build comes in the same
//! [`HotReloader::reload_modules`], which commits all its modules or none. A module only other
//! modules call is registered with [`HotReloader::register_for_imports`];
//! [`HotReloader::graph`] shows who calls whom.
//!
//! Reloads happen on request ([`HotReloader::reload_module`]), at the host's safe points
//! ([`HotReloader::poll`]) or by themselves ([`HotReloader::start_watching`]), optionally
//! building the module with cargo first ([`ModuleOptions::build_with_cargo`]). Every step is
//! reported as an [`Event`].
//!
//! # Known limits
//! - Statics, `thread_local!`s and logging globals inside a module are the module's own and
//!   start fresh with every version.
//! - Thread-local destructors a module registers (a `thread_local!` with a `Drop` type,
//!   `rand`'s thread RNG, std's threads) are kept by the runtime, not by glibc, and run on
//!   their own threads: when their version closes (the closing thread's), at a thread's next
//!   call through a handle (another thread's; the version stays held until then), or when
//!   the thread ends. One registered where the runtime cannot take it (during its thread's
//!   exit, or by a library the module itself opened) goes to glibc, which then keeps the
//!   library mapped; [`RetiredVersion::still_mapped`] (in [`ReloadReport::closed`]) says
//!   when that happened. The pthread keys a version creates with a destructor of its own
//!   (std's, behind `std::thread::current()`) are deleted before it is unmapped; the
//!   closing thread's value is run, other threads' are left (a small leak).
//! - Loading a library runs its initialisers: the permission check on the artifact (its file
//!   and every directory up to `/`, on the opened descriptor) and
//!   [`ModuleOptions::pin_sha256`] are the gate. A module is code you run, not a sandbox.
//! - The check for threads running in a closed version sees stacks and program counters, not
//!   pointers kept elsewhere (a module callback stored by a C library and called later from
//!   an older thread): register such a module with [`ModuleOptions::keep_loaded`].
//! - Module code that blocks on another thread which then calls the same module's
//!   `&mut self` methods or reloads it still deadlocks: the runtime sees re-entry on one
//!   thread only.
//! - A calling module is checked against every method of its callee that it was compiled
//!   with, not only those it calls. Calls from other modules do not count toward a callee's
//!   [`Probation`]. With the `static` feature, calls between modules are not supported.
//! - Each registered module keeps its rules of access (a few hundred bytes) for the rest of
//!   the process, so that calls from other modules reach it without a shared reference count.
//! - Built and tested on Linux (glibc, x86_64) only.

#![warn(missing_docs)]
// With the `static` feature, modules are linked in: the loading machinery stays compiled (the
// API is the same) but is not reached.
#![cfg_attr(feature = "static", allow(dead_code))]
#![cfg_attr(docsrs, feature(doc_cfg))]

// What runs inside a module as well as in the host: the export table's entries and their
// panic containment, the state's codec, workers, and the traits and errors the generated
// code names.
mod call;
mod error;
mod logs;
mod module;
mod rehome;
pub mod worker;

#[doc(hidden)]
pub mod __private;

// The host's runtime (the `runtime` feature, on by default; module crates turn it off).
#[cfg(feature = "runtime")]
mod access;
#[cfg(feature = "runtime")]
mod build;
#[cfg(feature = "runtime")]
mod canary;
#[cfg(feature = "harness")]
pub mod check;
#[cfg(feature = "runtime")]
mod events;
#[cfg(feature = "runtime")]
mod graph;
#[cfg(feature = "harness")]
pub mod harness;
#[cfg(feature = "runtime")]
mod link;
#[cfg(feature = "runtime")]
mod locate;
#[cfg(feature = "runtime")]
mod metrics;
#[cfg(feature = "runtime")]
mod os;
#[cfg(feature = "runtime")]
mod reloader;
#[cfg(feature = "runtime")]
mod shadow;
#[cfg(feature = "runtime")]
mod status;
#[cfg(feature = "runtime")]
mod transaction;
#[cfg(feature = "runtime")]
mod version;
#[cfg(feature = "runtime")]
mod watch;

use std::path::PathBuf;
use std::time::SystemTime;

#[cfg(all(feature = "runtime", not(feature = "static")))]
pub use call::Routed;
pub use call::{CallPath, Import};
#[cfg(feature = "runtime")]
pub use call::{LocalModule, Module};
#[cfg(feature = "runtime")]
pub use canary::{
    CanaryFigures, CanaryOptions, CanaryPolicy, CanaryStatus, Pick, SideFigures, Split,
};
pub use error::{HotError, ModuleFault, Rejection};
#[cfg(feature = "runtime")]
pub use events::{Event, ReloadRequest};
#[cfg(feature = "runtime")]
pub use graph::{EdgeKind, GraphEdge, GraphNode, ModuleGraph, NodeKind};
#[cfg(feature = "runtime")]
pub use locate::library_file_name;
#[cfg(feature = "runtime")]
pub use metrics::{Latency, MethodMetrics, MetricsConfig, VersionMetrics};
pub use module::HotModule;
pub use rehome::Rehome;
#[cfg(feature = "runtime")]
pub use reloader::{HotReloader, ModuleOptions, Probation, Quiesce, WhenBusy};
#[cfg(feature = "metrics")]
pub use status::metric_names;
#[cfg(feature = "runtime")]
pub use status::{ModuleStatus, ProbationStatus, Refusal, Status, VersionStatus};
#[cfg(feature = "runtime")]
pub use transaction::rollback::{RollbackReport, RollbackState};
#[cfg(feature = "runtime")]
pub use transaction::{ReloadReport, StepTimings};
#[cfg(feature = "runtime")]
pub use version::RetiredVersion;
#[cfg(feature = "runtime")]
pub use watch::{Apply, WatchOptions};

#[cfg(feature = "runtime")]
pub(crate) use shadow::ShadowDir;

/// Turns an inherent impl block into a hot-reloadable module.
///
/// The state type is the impl's self type; it must be `Default + Serialize +
/// DeserializeOwned + Send + Sync + 'static`. Every `pub fn` becomes an entry of the module's
/// export table; other items stay ordinary Rust.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Inventory {
///     items: Vec<(String, u32)>,
/// }
///
/// #[hotreload::hot_module(version = 2, name = "inventory", state_version = 1)]
/// impl Inventory {
///     /// `&mut self`: runs alone.
///     pub fn add(&mut self, name: &str, count: u32) -> usize {
///         self.items.push((name.to_owned(), count));
///         self.items.len()
///     }
///
///     /// `&self`: may run while other `&self` calls do.
///     pub fn find(&self, name: String) -> Option<u32> {
///         self.items.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
///     }
///
///     /// No receiver: an associated function.
///     pub fn limits() -> (u32, u32) {
///         (1, 99)
///     }
///
///     /// Not exported: not `pub`.
///     fn total(&self) -> u32 {
///         self.items.iter().map(|(_, c)| c).sum()
///     }
/// }
/// ```
///
/// # Arguments
/// - `version = N` (required): the API version. By default a host accepts only the version it
///   was compiled with (`ModuleOptions::accept_api_versions` widens that).
/// - `name = "..."`: the module name (`a-z`, `0-9`, `_`); by default the state type's name in
///   snake case (`GameLogic` → `game_logic`). The descriptor is exported as
///   `hotreload_module__<name>`, so two modules never collide.
/// - `state_version = N`: the state schema version recorded in every saved state (1 by
///   default). A build restores a state of its own schema; an older one only through the
///   `#[migrate]` steps below, a newer one only if the running build writes it down to this
///   one. Any other pair is refused before anything is touched (`HotError::StateSchema`).
/// - `concurrent_save = true`: promises that no `&self` method changes the state (no
///   `Mutex`, atomic or other interior mutability written through `&self`). A reload then
///   saves and restores the state while `&self` calls go on; only `&mut self` calls wait for
///   it (`StepTimings::prepare_shared`), and `&self` callers wait only for the swap. The
///   state swapped out is exactly the one saved: no `&mut self` call runs in between. A
///   `&self` method that did change the state could have that change lost in a reload.
/// - `uses = [path::Callee, ...]`: the hot modules this module calls, by state type (their
///   crates are dependencies of this one). The macro generates `Self::import::<Callee>()`,
///   whose [`Import`] handle `hot_fn!` calls like a host's handle (see [Calls between
///   modules](crate#calls-between-modules)).
/// - `on_retire = method`: a method of the same impl block (it may be private), shaped
///   `fn method(&mut self)`; the hook runs on the old version's state when it stops serving,
///   before its workers ([`worker::spawn`]) are told to stop; it is where the module stops what
///   it started.
///
/// # State migrations
/// Functions of the block marked `#[migrate(...)]` are the steps between state schemas; they
/// are not exported. The old shapes need only serde (`#[derive(Deserialize)]` to read one,
/// `Serialize` to write one down):
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Default, Serialize, Deserialize)]
/// pub struct Player {
///     name: String,
///     health: u32, // schema v1 called it `hp`
///     shield: u32, // new in schema v3
/// }
///
/// #[derive(Serialize, Deserialize)]
/// pub struct PlayerV1 { name: String, hp: u32 }
/// #[derive(Serialize, Deserialize)]
/// pub struct PlayerV2 { name: String, health: u32 }
///
/// #[hotreload::hot_module(version = 1, state_version = 3)]
/// impl Player {
///     /// Schema v1 -> v2: `hp` renamed.
///     #[migrate(from = 1)]
///     fn from_v1(old: PlayerV1) -> PlayerV2 {
///         PlayerV2 { name: old.name, health: old.hp }
///     }
///
///     /// Schema v2 -> v3 (this build's): a field computed from the old ones. A step may
///     /// fail: return `Result<_, E: Display>`.
///     #[migrate(from = 2)]
///     fn from_v2(old: PlayerV2) -> Result<Player, String> {
///         let shield = old.health / 10;
///         Ok(Player { name: old.name, health: old.health, shield })
///     }
///
///     /// Schema v3 -> v2, for a rollback (or a reload of an older build) that keeps the
///     /// current state: the first step down takes `&self`, the next ones the step before.
///     #[migrate(to = 2)]
///     fn to_v2(&self) -> PlayerV2 {
///         PlayerV2 { name: self.name.clone(), health: self.health }
///     }
///
///     pub fn health(&self) -> u32 {
///         self.health
///     }
/// }
/// ```
///
/// A state of schema 1 restored by this build runs `from_v1` then `from_v2`, each named in
/// [`ReloadReport::migrations`] and in the error if it fails or panics ("state schema v2 ->
/// v3: from_v2 failed: ..."); the old version keeps serving with its state then. The steps up
/// must go one schema at a time to the build's own, the steps down one at a time from it:
/// a gap is a compile error, and the compiler checks that each step's output is the next
/// one's input.
///
/// # Types in signatures
/// | you write | crosses as |
/// |---|---|
/// | primitives (`u8`…`u128`, `i8`…`i128`, `usize`, `isize`, `f32`, `f64`, `bool`), `()` | themselves |
/// | `String`, `&str` | `RString`, `RStr<'_>` |
/// | `Vec<T>`, `&[T]` (`T` crossing as itself) | `RVec<T>`, `RSlice<'_, T>` |
/// | `Option<T>`, `Result<T, E>`, `Box<T>` | `ROption`, `RResult`, `RBox` |
/// | `HashMap<K, V>`, `HashMap<K, V, S>`, `BTreeMap<K, V>` | `RVec<Tuple2<K, V>>`, collected back into the map type written |
/// | tuples of 2 to 4 | `Tuple2` … `Tuple4` |
/// | abi_stable's types, your `#[derive(StableAbi)]` types | themselves |
///
/// Conversions nest (`Option<Result<Vec<String>, String>>`, `HashMap<String, Vec<String>>`)
/// and move owned buffers rather than copy them where abi_stable allows. A map crosses as its
/// entries and is rebuilt on the other side with its own hasher (`S: Default`) or order. The export table is written with the forms on the
/// right, so the layout check at load covers them. A type a method returns that is not
/// converted must also implement [`Rehome`] (derive it).
///
/// # Errors you can meet
/// Every misuse is reported together, each on its tokens, with the impl block kept so that
/// completion keeps working. For example a generic method:
///
/// ```compile_fail
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] pub struct S;
/// #[hotreload::hot_module(version = 1)]
/// impl S {
///     pub fn take<T: Into<u64>>(&self, value: T) {} // a hot method cannot be generic
/// }
/// ```
///
/// Likewise: a missing or non-integer `version`, an unknown or repeated argument, a generic
/// or lifetime-generic impl, a `where` clause, a trait impl, `async`, `unsafe` or `extern`
/// methods, variadics, `self` by value, `impl Trait` arguments, references other than `&str`
/// and `&[T]`, returned references or borrowed types at any depth (`Option<&str>`,
/// `RStr<'static>`), `Rc`/`Arc`/`Cow` (with the abi_stable type to use instead), an
/// `on_retire` naming no method of the block or one not shaped `fn(&mut self)`, and a state
/// type that is not serde-serializable. `ui-tests/` holds one compile-fail case for each.
#[doc(inline)]
pub use hotreload_macros::hot_module;

/// Calls a method of a hot module through the version loaded now, checked at compile time
/// against the module crate's own signature: `hot_fn!(handle.method(args...))` returns
/// `Result<R, HotError>`, where `R` is the method's return type.
///
/// `handle` is a [`Module`] or a [`LocalModule`] (or a reference to one). The call runs
/// wholly in one version; a panic in it comes back as [`HotError::Call`].
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] pub struct Inventory { n: u32 }
/// # #[hotreload::hot_module(version = 1)]
/// # impl Inventory { pub fn add(&mut self, name: &str, count: u32) -> usize { 0 } }
/// # fn main() -> Result<(), hotreload::HotError> {
/// let reloader = hotreload::HotReloader::new();
/// let inventory = reloader.register::<Inventory>()?;
/// let len: usize = hotreload::hot_fn!(inventory.add("apple", 3))?;
/// # Ok(()) }
/// ```
///
/// A misspelt method, a wrong number of arguments or a wrong argument type is the compiler's
/// ordinary error for that call, pointing at your tokens:
///
/// ```compile_fail,E0308
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] pub struct Inventory { n: u32 }
/// # #[hotreload::hot_module(version = 1)]
/// # impl Inventory { pub fn add(&mut self, name: &str, count: u32) -> usize { 0 } }
/// # fn call(inventory: &hotreload::Module<Inventory>) {
/// let len = hotreload::hot_fn!(inventory.add("apple", "three")); // expected `u32`
/// # }
/// ```
///
/// A method of the block without `pub` is a helper the module keeps to itself; calling it is
/// an error saying that it must be `pub` to be called through `hot_fn!`:
///
/// ```compile_fail,E0277
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Default, Serialize, Deserialize)] pub struct Inventory { n: u32 }
/// #[hotreload::hot_module(version = 1)]
/// impl Inventory {
///     fn total(&self) -> u32 { self.n }
/// }
/// # fn call(inventory: &hotreload::Module<Inventory>) {
/// let total = hotreload::hot_fn!(inventory.total()); // `total` must be `pub`
/// # }
/// ```
#[doc(inline)]
pub use hotreload_macros::hot_fn;

/// Derives [`Rehome`](trait@Rehome) for a `#[derive(StableAbi)]` type returned by a hot
/// method: the value is rebuilt field by field with the host's code before the version that
/// made it can be unloaded.
///
/// The derive is how to implement the `unsafe` trait: every field must implement `Rehome`
/// itself, so a borrowed field (`RStr<'static>`, `RSlice`) is a compile error, and a type with
/// lifetime parameters or a union is refused.
///
/// ```
/// use abi_stable::StableAbi;
/// use abi_stable::std_types::RString;
///
/// #[repr(C)]
/// #[derive(StableAbi, hotreload::Rehome)]
/// pub struct Report {
///     pub title: RString,
///     pub score: i64,
/// }
/// ```
#[doc(inline)]
pub use hotreload_macros::Rehome;

/// One loaded version of a module.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct VersionInfo {
    /// The module's name.
    pub module: String,
    /// The load number: 1 for the first load, one more for each reload attempt.
    pub generation: u64,
    /// The API version from `#[hot_module(version = N)]`.
    pub api_version: u32,
    /// The state schema version.
    pub state_version: u32,
    /// The artifact it was loaded from.
    pub artifact: PathBuf,
    /// The artifact's size in bytes.
    pub artifact_len: u64,
    /// The SHA-256 of the artifact's bytes as loaded, in hex.
    pub sha256: String,
    /// The private shadow copy it was opened from.
    pub shadow: PathBuf,
    /// When it was verified.
    pub loaded_at: SystemTime,
}
