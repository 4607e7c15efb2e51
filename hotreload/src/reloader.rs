//! The reloader: registers modules, runs reload transactions (on request, at the host's safe
//! points, or from the watcher), and tells the host what happened.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use crate::call::{LocalModule, Module};
use crate::error::HotError;
use crate::events::{Event, EventBus, Hooks, ReloadRequest};
use crate::module::{HotModule, ModuleCore, ModuleSpec};
use crate::transaction::rollback::{self, RollbackReport};
use crate::transaction::{self, ReloadReport};
use crate::version::RetiredVersion;
use crate::watch::{self, WatchOptions, Watcher};
use crate::{ShadowDir, VersionInfo, locate};

mod canary;

/// How to register a module: where its library is, which API versions to accept, whether it
/// may be missing at first, and whether the reloader builds it.
#[derive(Debug, Clone)]
pub struct ModuleOptions {
    artifact: Option<PathBuf>,
    accepted_api: Option<RangeInclusive<u32>>,
    wait_for_artifact: bool,
    build: Option<Option<PathBuf>>,
    history: usize,
    pinned: Option<Vec<String>>,
    probation: Option<Probation>,
    keep_loaded: bool,
    worker_stop_timeout: std::time::Duration,
    quiesce: Quiesce,
    metrics: crate::MetricsConfig,
    forward_logs: bool,
}

impl Default for ModuleOptions {
    fn default() -> Self {
        ModuleOptions {
            artifact: None,
            accepted_api: None,
            wait_for_artifact: false,
            build: None,
            history: 3,
            pinned: None,
            probation: None,
            keep_loaded: false,
            worker_stop_timeout: std::time::Duration::from_secs(1),
            quiesce: Quiesce::default(),
            metrics: crate::MetricsConfig::default(),
            forward_logs: true,
        }
    }
}

/// How a reload gets the module to itself for prepare and commit (saving the state with the
/// old code, restoring it with the new one, and the swap), which no call may overlap.
///
/// First it looks for a moment with no call in flight, without holding anyone back: new calls
/// keep starting and running on the old version while it looks (trying, and backing off from
/// a few hundred nanoseconds up to a millisecond between tries). A module whose calls are
/// short gets such a moment at once. If `patience` passes without one (a long call, or calls
/// overlapping without a gap), it does what `then` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quiesce {
    /// How long to look for a moment with no call in flight.
    pub patience: std::time::Duration,
    /// What to do when there was none.
    pub then: WhenBusy,
}

impl Default for Quiesce {
    /// 100 ms, then [`WhenBusy::Block`].
    fn default() -> Self {
        Quiesce {
            patience: std::time::Duration::from_millis(100),
            then: WhenBusy::Block,
        }
    }
}

/// What a reload does when its [`Quiesce::patience`] ran out with calls still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WhenBusy {
    /// Hold new calls back and wait for the calls in progress to return (they are counted in
    /// [`StepTimings::wait`](crate::StepTimings::wait) and the pause).
    Block,
    /// Give up with [`HotError::Busy`]: nothing changed, and the watcher tries again after
    /// the same patience (a `reload_module` caller decides for itself).
    GiveUp,
}

/// A window after each reload during which a panic in the new version rolls the module back
/// to the previous version, with the state it had at the reload.
///
/// The call that panicked rolls back before its `hot_fn!` returns, after it has released
/// the module's lock and once no other call of the module runs on its thread (a call nested
/// in one, through a host callback, leaves it to the outermost call): the rollback's events
/// and `after_reload` hooks run there, on the caller's thread. Likewise the call that ends the
/// window sends [`Event::ProbationEnded`](crate::Event::ProbationEnded). A panic of a call
/// that began in the previous version, before the reload, does not count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probation {
    pub(crate) calls: Option<u64>,
    pub(crate) duration: Option<std::time::Duration>,
}

impl Probation {
    /// For the first `calls` calls after the reload.
    pub fn calls(calls: u64) -> Self {
        Probation {
            calls: Some(calls),
            duration: None,
        }
    }

    /// For `duration` after the reload.
    pub fn duration(duration: std::time::Duration) -> Self {
        Probation {
            calls: None,
            duration: Some(duration),
        }
    }
}

impl ModuleOptions {
    /// The defaults: the library in the target directory of the host's profile (see
    /// [`HotReloader::register`]), exactly the API version the host was compiled with, an error
    /// if the library does not exist, no building.
    pub fn new() -> Self {
        Self::default()
    }

    /// Loads the module from this path instead of the Cargo target directory.
    pub fn artifact(mut self, path: impl Into<PathBuf>) -> Self {
        self.artifact = Some(path.into());
        self
    }

    /// Accepts builds whose API version is in `versions` (by default only the host's own).
    ///
    /// The export table's layout is checked whatever the API version: a range lets a host
    /// accept builds that renumbered their API without changing a signature.
    pub fn accept_api_versions(mut self, versions: RangeInclusive<u32>) -> Self {
        self.accepted_api = Some(versions);
        self
    }

    /// Registers the module even if its library does not exist yet; it loads when a complete
    /// library appears (with watching) or at the first `reload_module`. Until then calls
    /// return [`HotError::NotLoaded`].
    pub fn wait_for_artifact(mut self) -> Self {
        self.wait_for_artifact = true;
        self
    }

    /// While watching, rebuilds the module with `cargo build` whenever the sources of its
    /// crate or of its path dependencies change. The crate is the one the module was compiled
    /// from; the profile is the host's (the name of the directory its library is in).
    pub fn build_with_cargo(mut self) -> Self {
        self.build = Some(None);
        self
    }

    /// Keeps the last `versions` replaced versions loaded for [`HotReloader::rollback`]
    /// (3 by default; 0 closes each replaced version at once).
    pub fn history(mut self, versions: usize) -> Self {
        self.history = versions;
        self
    }

    /// Accepts only artifacts whose SHA-256 (hex) is in `digests`, for production hosts;
    /// anything else is refused with its digest in the error.
    pub fn pin_sha256<S: Into<String>>(mut self, digests: impl IntoIterator<Item = S>) -> Self {
        self.pinned = Some(digests.into_iter().map(Into::into).collect());
        self
    }

    /// Puts each new version on probation: a panic in it within the window rolls the module
    /// back (see [`Probation`]). [`HotReloader::mark_good`] ends a probation early.
    pub fn probation(mut self, probation: Probation) -> Self {
        self.probation = Some(probation);
        self
    }

    /// Never unmaps a version of this module: each replaced version stays mapped for the rest
    /// of the process (its memory too).
    ///
    /// Choose it when the module's code runs on threads the runtime cannot see: the runtime
    /// stops and joins workers started with [`worker::spawn`](crate::worker::spawn), and
    /// before it closes a version it checks every thread started while that version served
    /// (its program counter, and its stack from the saved stack pointer up) for addresses
    /// inside it. What that check cannot see is a pointer into the version kept elsewhere: a
    /// callback of the module stored by a C library or by the host and called later from a
    /// thread that existed before, or a timer that calls it.
    pub fn keep_loaded(mut self) -> Self {
        self.keep_loaded = true;
        self
    }

    /// How long the workers of a version that is being closed get to return once they are
    /// told to stop (1 s by default). A version whose workers have not returned by then stays
    /// mapped (a [`VersionHeld`](crate::Event::VersionHeld) event) and is closed at a later
    /// retire once they have.
    pub fn worker_stop_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.worker_stop_timeout = timeout;
        self
    }

    /// How a reload waits for the calls in progress before it swaps versions (see
    /// [`Quiesce`]): by default it waits up to 100 ms for a moment with no call in flight
    /// without holding back new calls, then holds them back until the calls in progress have
    /// returned.
    pub fn quiesce(mut self, quiesce: Quiesce) -> Self {
        self.quiesce = quiesce;
        self
    }

    /// How each loaded version's calls are measured (see [`MetricsConfig`](crate::MetricsConfig)):
    /// by default calls, errors and panics are counted and a sample of calls timed, per
    /// method and per version; read them with
    /// [`HotReloader::metrics`](crate::HotReloader::metrics) and
    /// [`HotReloader::status`](crate::HotReloader::status).
    pub fn metrics(mut self, metrics: crate::MetricsConfig) -> Self {
        self.metrics = metrics;
        self
    }

    /// Whether the module's `tracing` events and spans and `log` records go to the host's
    /// subscriber, with `module` and `generation` fields (the default), or the module's
    /// logging is left alone (its own copies of `tracing` and `log`, with nothing installed
    /// unless its code installs something). See the README's "Logs, metrics and the live
    /// system".
    pub fn forward_logs(mut self, forward: bool) -> Self {
        self.forward_logs = forward;
        self
    }

    /// As [`build_with_cargo`](Self::build_with_cargo), for the crate whose manifest is at
    /// `manifest` (a copy of the module crate elsewhere, say).
    pub fn build_with_cargo_manifest(mut self, manifest: impl Into<PathBuf>) -> Self {
        self.build = Some(Some(manifest.into()));
        self
    }
}

/// Loads hot modules and reloads them: on request, at the host's safe points, or by itself.
///
/// ```no_run
/// # use hotreload::{HotReloader, hot_fn};
/// # #[derive(Default, serde::Serialize, serde::Deserialize)] pub struct GameLogic { score: i64 }
/// # #[hotreload::hot_module(version = 1)] impl GameLogic { pub fn score(&self) -> i64 { self.score } }
/// # fn main() -> Result<(), hotreload::HotError> {
/// let reloader = HotReloader::new();
/// let game = reloader.register::<GameLogic>()?;
/// let score = hot_fn!(game.score())?;
/// let report = reloader.reload_module("game_logic")?;
/// println!("now running load #{}", report.to.generation);
/// # Ok(()) }
/// ```
pub struct HotReloader {
    shared: Arc<Shared>,
    watcher: Mutex<Option<Watcher>>,
}

/// What the reloader, its watcher thread and the host's calls share.
#[derive(Default)]
pub(crate) struct Shared {
    shadow: OnceLock<Arc<ShadowDir>>,
    modules: Mutex<BTreeMap<String, Arc<ModuleCore>>>,
    pub(crate) events: EventBus,
    pub(crate) hooks: Hooks,
    /// Modules with a complete new build, waiting for `poll()`.
    pending: Mutex<Pending>,
    /// Modules linked into the host (the `static` feature).
    linked: Mutex<BTreeSet<String>>,
    /// Held by every transaction (reload, set reload, rollback, registration): the modules'
    /// links to each other are checked and repointed under it, so no serving version changes
    /// meanwhile. Taken before any module's book or lock (see `Shared::transaction_lock`).
    transactions: Mutex<()>,
    /// The thread holding `transactions`, if any.
    transaction_thread: Mutex<Option<std::thread::ThreadId>>,
    /// The watcher's inbox while it runs: for a check it should make again (a build that
    /// came while a canary ran, once the canary has ended).
    pub(crate) watcher: Mutex<Option<std::sync::mpsc::Sender<watch::Msg>>>,
}

/// Reloads waiting for `poll()`.
#[derive(Default)]
struct Pending {
    modules: BTreeSet<String>,
    /// Those to reload together (their builds were made for one change); sets that share a
    /// module are merged.
    sets: Vec<BTreeSet<String>>,
}

/// The reloader's transaction lock, held (see [`Shared::transaction_lock`]).
pub(crate) struct TransactionLock<'a> {
    _guard: MutexGuard<'a, ()>,
    thread: &'a Mutex<Option<std::thread::ThreadId>>,
}

impl Drop for TransactionLock<'_> {
    fn drop(&mut self) {
        *self.thread.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}

impl Default for HotReloader {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for HotReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotReloader")
            .field(
                "shadow",
                &self.shared.shadow.get().map(|s| s.path().to_path_buf()),
            )
            .field("modules", &self.module_names())
            .field("watching", &self.is_watching())
            .finish()
    }
}

impl Drop for HotReloader {
    fn drop(&mut self) {
        // Canaries end with their reloader (handles may outlive it): the serving versions
        // take every call again, and the canaries' judges stop.
        for core in self.shared.modules() {
            if core.canary().is_some() {
                let _ = self
                    .shared
                    .abort_canary(&core.spec.name, None, "the reloader was dropped");
            }
        }
        // Stops and joins the watcher thread before the modules can go away.
        self.stop_watching();
    }
}

impl HotReloader {
    /// A reloader with no modules. Its private shadow directory is made at first use.
    pub fn new() -> Self {
        HotReloader {
            shared: Arc::new(Shared::default()),
            watcher: Mutex::new(None),
        }
    }

    /// Loads module `T` from the Cargo target directory of the host's profile and registers it
    /// under its name: `deps/lib<crate>.so` there (where `cargo build` or `cargo run` of a
    /// host that depends on the module crate puts it), else `lib<crate>.so` beside the host's
    /// executable. When neither exists, [`HotError::LibraryNotBuilt`] says where it looked,
    /// the command that builds it, and the manifest line a crate that builds no cdylib lacks.
    pub fn register<T: HotModule>(&self) -> Result<Module<T>, HotError> {
        self.register_with::<T>(ModuleOptions::new())
    }

    /// Loads module `T` as `options` say and registers it under its name.
    pub fn register_with<T: HotModule>(
        &self,
        options: ModuleOptions,
    ) -> Result<Module<T>, HotError> {
        self.new_module::<T>(options)
    }

    /// Loads module `T` for this thread alone: its [`LocalModule`] handle calls without any
    /// lock (the fastest way to call), and the module reloads on this thread only, between
    /// calls: in [`poll`](Self::poll) or [`reload_module`](Self::reload_module). The watcher,
    /// whatever its [`Apply`](crate::Apply) mode, only queues this module's reloads for
    /// `poll`.
    pub fn register_local<T: HotModule>(&self) -> Result<LocalModule<T>, HotError> {
        self.register_local_with::<T>(ModuleOptions::new())
    }

    /// [`register_local`](Self::register_local) with options.
    pub fn register_local_with<T: HotModule>(
        &self,
        options: ModuleOptions,
    ) -> Result<LocalModule<T>, HotError> {
        self.new_local_module::<T>(options)
    }

    /// Registers module `T` for other modules to call (those that name it in `#[hot_module(
    /// uses = [...])]`), with no handle for the host: the host makes no calls to it, so its
    /// builds are checked against what the modules calling it were built with (their imports)
    /// rather than against the host's copy of its methods, and its API may change together
    /// with theirs in one [`reload_modules`](Self::reload_modules). Any API version is
    /// accepted unless `options` narrow it.
    pub fn register_for_imports<T: HotModule>(
        &self,
        options: ModuleOptions,
    ) -> Result<(), HotError> {
        #[cfg(not(feature = "static"))]
        {
            self.register_core::<T>(options, None, false).map(drop)
        }
        #[cfg(feature = "static")]
        {
            let _ = options;
            self.shared.link(T::MODULE_NAME)
        }
    }

    #[cfg(not(feature = "static"))]
    fn new_module<T: HotModule>(&self, options: ModuleOptions) -> Result<Module<T>, HotError> {
        self.register_core::<T>(options, None, true)
            .map(Module::from_core)
    }

    #[cfg(not(feature = "static"))]
    fn new_local_module<T: HotModule>(
        &self,
        options: ModuleOptions,
    ) -> Result<LocalModule<T>, HotError> {
        let owner = std::thread::current().id();
        self.register_core::<T>(options, Some(owner), true)
            .map(LocalModule::from_core)
    }

    /// With the `static` feature the module is linked in: nothing to load, options unused.
    #[cfg(feature = "static")]
    fn new_module<T: HotModule>(&self, _options: ModuleOptions) -> Result<Module<T>, HotError> {
        self.shared.link(T::MODULE_NAME)?;
        Ok(Module::linked())
    }

    #[cfg(feature = "static")]
    fn new_local_module<T: HotModule>(
        &self,
        _options: ModuleOptions,
    ) -> Result<LocalModule<T>, HotError> {
        self.shared.link(T::MODULE_NAME)?;
        Ok(LocalModule::linked())
    }

    #[cfg_attr(feature = "static", allow(dead_code))]
    fn register_core<T: HotModule>(
        &self,
        options: ModuleOptions,
        owner: Option<std::thread::ThreadId>,
        host_calls: bool,
    ) -> Result<Arc<ModuleCore>, HotError> {
        let name = T::MODULE_NAME.to_owned();
        // Registration links the module to those it calls and those calling it.
        let _transactions = self.shared.transaction_lock(&name)?;
        if self.shared.lock_modules().contains_key(&name) {
            return Err(HotError::AlreadyRegistered { module: name });
        }
        let located = options.artifact.is_none();
        let spec = ModuleSpec {
            artifact: absolute(
                options
                    .artifact
                    .unwrap_or_else(|| locate::default_artifact(T::CRATE_NAME)),
            ),
            entries: if host_calls { T::ENTRIES } else { &[] },
            table_size: if host_calls {
                std::mem::size_of::<T::Table>()
            } else {
                std::mem::size_of::<hotreload_abi::LifecycleEntries>()
            },
            methods: if host_calls { T::METHODS } else { &[] },
            accepted_api: options.accepted_api.unwrap_or(if host_calls {
                T::API_VERSION..=T::API_VERSION
            } else {
                0..=u32::MAX
            }),
            host_calls,
            manifest_dir: match &options.build {
                Some(Some(manifest)) => manifest
                    .parent()
                    .map_or_else(|| PathBuf::from(T::MANIFEST_DIR), PathBuf::from),
                _ => PathBuf::from(T::MANIFEST_DIR),
            },
            build_manifest: options.build.map(|manifest| {
                manifest.unwrap_or_else(|| PathBuf::from(T::MANIFEST_DIR).join("Cargo.toml"))
            }),
            history: options.history,
            pinned: options.pinned,
            probation: options.probation,
            keep_loaded: options.keep_loaded,
            worker_stop_timeout: options.worker_stop_timeout,
            quiesce: options.quiesce,
            metrics: options.metrics,
            forward_logs: options.forward_logs,
            name: name.clone(),
        };
        let shadow = self.shared.shadow()?;
        let live = match transaction::load_initial(&spec, &shadow) {
            Ok(live) => Some(live),
            Err(HotError::ArtifactNotFound { path, .. }) if options.wait_for_artifact => {
                if located {
                    // Waiting is what the host asked for; a crate that builds no cdylib would
                    // make it wait for ever, so say so now.
                    let hint = locate::not_built_hint(&path, std::path::Path::new(T::MANIFEST_DIR));
                    tracing::warn!(module = %name, "no library yet: {hint}");
                }
                self.shared.events.emit(Event::ArtifactMissing {
                    module: name.clone(),
                    path: spec.artifact.clone(),
                });
                None
            }
            Err(HotError::ArtifactNotFound { module, path }) if located => {
                let hint = locate::not_built_hint(&path, std::path::Path::new(T::MANIFEST_DIR));
                return Err(HotError::LibraryNotBuilt { module, path, hint });
            }
            Err(err) => return Err(err),
        };
        let core = Arc::new(ModuleCore::new(
            spec,
            shadow,
            live,
            owner,
            Arc::downgrade(&self.shared),
        ));
        link_registered(&core, &self.shared.modules())?;
        {
            let mut modules = self.shared.lock_modules();
            if modules.contains_key(&name) {
                return Err(HotError::AlreadyRegistered { module: name });
            }
            modules.insert(name, Arc::clone(&core));
        }
        if let Some(watcher) = self.lock_watcher().as_ref() {
            watcher.modules_changed();
        }
        Ok(core)
    }

    /// Registers module `name` from the build at `artifact`, expecting of every later build
    /// what a host compiled against that build would: its methods' layouts, its API version
    /// (a host with the module's crate at that build). For [`check`](crate::check), which
    /// answers whether a new build would reload into a program running this one; no handle
    /// calls it. Its versions stay mapped for the rest of the process (`keep_loaded`): the
    /// expectations point into the first build's image.
    #[cfg(feature = "harness")]
    pub(crate) fn register_as_built(&self, name: &str, artifact: PathBuf) -> Result<(), HotError> {
        let _transactions = self.shared.transaction_lock(name)?;
        let defaults = ModuleOptions::new();
        // Loaded first as a module only other modules call (nothing expected of it), to read
        // what its build exports.
        let provisional = ModuleSpec {
            name: name.to_owned(),
            manifest_dir: artifact.parent().map(PathBuf::from).unwrap_or_default(),
            artifact: absolute(artifact),
            entries: &[],
            table_size: std::mem::size_of::<hotreload_abi::LifecycleEntries>(),
            methods: &[],
            accepted_api: 0..=u32::MAX,
            host_calls: false,
            build_manifest: None,
            history: defaults.history,
            pinned: None,
            probation: None,
            keep_loaded: true,
            worker_stop_timeout: defaults.worker_stop_timeout,
            quiesce: defaults.quiesce,
            metrics: crate::MetricsConfig::off(),
            forward_logs: false,
        };
        let shadow = self.shared.shadow()?;
        let live = transaction::load_initial(&provisional, &shadow)?;
        let expected = crate::check::expectations(live.version.descriptor());
        let spec = ModuleSpec {
            entries: expected.entries,
            table_size: expected.table_size,
            methods: expected.methods,
            accepted_api: expected.api_version..=expected.api_version,
            host_calls: true,
            ..provisional
        };
        let core = Arc::new(ModuleCore::new(
            spec,
            shadow,
            Some(live),
            None,
            Arc::downgrade(&self.shared),
        ));
        let mut modules = self.shared.lock_modules();
        if modules.contains_key(name) {
            return Err(HotError::AlreadyRegistered {
                module: name.to_owned(),
            });
        }
        modules.insert(name.to_owned(), core);
        Ok(())
    }

    /// Module `name`'s serving state, saved by its build in its own schema (the whole
    /// envelope), with `&mut self` calls held back while it is saved: for checks.
    #[cfg(feature = "harness")]
    pub(crate) fn saved_state(&self, name: &str) -> Result<Vec<u8>, HotError> {
        let core = self.shared.core(name)?;
        let _transactions = self.shared.transaction_lock(name)?;
        let mark = core.access.begin_transaction(name)?;
        let sharing = core.access.permit_share(&mark);
        let live = sharing.live().ok_or_else(|| HotError::NotLoaded {
            module: name.to_owned(),
            method: "save",
        })?;
        transaction::prepare::save(live, live.version.schema.version)
    }

    /// Reloads module `name` from its artifact now, on this thread: one whole transaction
    /// (stage, open, verify, prepare, commit, retire). On error the running version keeps
    /// serving, state intact.
    pub fn reload_module(&self, name: &str) -> Result<ReloadReport, HotError> {
        self.shared.not_linked(name)?;
        let core = self.shared.core(name)?;
        self.shared.reload(&core, None)
    }

    /// Reloads modules `names` together, on this thread: their new builds are staged,
    /// verified and linked to each other and to the other modules together, and committed in
    /// one step. Either every one of them serves its new build, or none does and all keep
    /// their old ones with their state (the error names the member and what failed). This is
    /// how to take builds that only fit each other: a module whose API changed with the
    /// modules that call it (alone, its build is refused because a serving caller uses what
    /// it changed). A member whose artifact is the build that serves is left out and
    /// reported unchanged. Returns one report per module, sorted by name.
    pub fn reload_modules(&self, names: &[&str]) -> Result<Vec<ReloadReport>, HotError> {
        let names: Vec<String> = names.iter().map(|&name| name.to_owned()).collect();
        self.shared.reload_set(names, Vec::new())
    }

    /// Applies, on this thread, the reloads the watcher found ready since the last call (in
    /// [`Apply::OnPoll`](crate::Apply::OnPoll) mode). Call it where no call into the modules
    /// is in progress, between two frames of a game loop say. Returns each module's outcome,
    /// leaving out a queued reload that found the serving build (the watcher can queue one
    /// build twice: an event it handled while the first reload of it was being applied).
    pub fn poll(&self) -> Vec<(String, Result<ReloadReport, HotError>)> {
        let Pending {
            modules: mut pending,
            sets,
        } = std::mem::take(
            &mut *self
                .shared
                .pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // Builds the watcher found together (after a change to a crate they share) are
        // applied together.
        let mut outcomes = Vec::new();
        for set in sets {
            let names: Vec<String> = set.into_iter().filter(|n| pending.remove(n)).collect();
            match self.shared.reload_set(names.clone(), Vec::new()) {
                Ok(reports) => outcomes.extend(
                    reports
                        .into_iter()
                        .filter(|report| !report.unchanged)
                        .map(|report| (report.to.module.clone(), Ok(report))),
                ),
                Err(err) => {
                    if not_now(&err) {
                        self.shared.mark_pending_set(&names);
                    }
                    outcomes.extend(names.into_iter().map(|name| (name, Err(err.clone()))));
                }
            }
        }
        outcomes.extend(pending.into_iter().filter_map(|name| {
            let core = self.shared.core(&name).ok()?;
            let outcome = self.shared.reload(&core, None);
            if outcome.as_ref().is_err_and(not_now) {
                self.shared.mark_pending(&name);
            }
            if outcome.as_ref().is_ok_and(|report| report.unchanged) {
                return None;
            }
            Some((name, outcome))
        }));
        outcomes
    }

    /// Watches every registered module's artifact (and, for modules registered with
    /// [`ModuleOptions::build_with_cargo`], their sources) and reloads on a background thread
    /// when a complete new build appears.
    pub fn start_watching(&self) -> Result<(), HotError> {
        self.start_watching_with(WatchOptions::new())
    }

    /// Watches as `options` say. Calling it again replaces the running watcher.
    pub fn start_watching_with(&self, options: WatchOptions) -> Result<(), HotError> {
        self.stop_watching();
        let watcher = watch::start(Arc::downgrade(&self.shared), options)?;
        *self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(watcher.sender());
        *self.lock_watcher() = Some(watcher);
        Ok(())
    }

    /// Stops the watcher thread, if one runs, and waits for it to finish.
    pub fn stop_watching(&self) {
        *self
            .shared
            .watcher
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
        let watcher = self.lock_watcher().take();
        drop(watcher);
    }

    /// Whether a watcher is running.
    pub fn is_watching(&self) -> bool {
        self.lock_watcher().is_some()
    }

    /// A channel that receives every event from now on. It holds up to 4,096 events: when a
    /// subscriber does not read and it is full, further events are dropped for that
    /// subscriber (and counted in [`dropped_events`](Self::dropped_events)) rather than
    /// growing memory or blocking the thread that emits them. Dropping the receiver
    /// unsubscribes.
    pub fn subscribe(&self) -> Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// How many events were not delivered because a subscriber's channel was full.
    pub fn dropped_events(&self) -> u64 {
        self.shared.events.dropped()
    }

    /// Calls `callback` with every event, on the thread where the event happens.
    pub fn on_event(&self, callback: impl Fn(&Event) + Send + Sync + 'static) {
        self.shared.events.on_event(Box::new(callback));
    }

    /// Runs `hook` before every reload; an `Err(reason)` vetoes the reload
    /// ([`HotError::Vetoed`]), and the running version keeps serving. It is asked before the
    /// artifact is read: a `reload_module` that then finds the serving build's bytes in a
    /// touched or re-linked file does nothing more (an unchanged report, no event).
    pub fn before_reload(
        &self,
        hook: impl Fn(&ReloadRequest<'_>) -> Result<(), String> + Send + Sync + 'static,
    ) {
        self.shared.hooks.add_before(Box::new(hook));
    }

    /// Runs `hook` after every reload, with its outcome.
    pub fn after_reload(
        &self,
        hook: impl Fn(&str, &Result<ReloadReport, HotError>) + Send + Sync + 'static,
    ) {
        self.shared.hooks.add_after(Box::new(hook));
    }

    /// Goes back to the previous version of module `name`, kept loaded (its artifact need not
    /// exist any more), with the current state if that version can read it, otherwise with
    /// the state it had when it was replaced. The version rolled back from is closed.
    pub fn rollback(&self, name: &str) -> Result<RollbackReport, HotError> {
        self.shared.not_linked(name)?;
        let core = self.shared.core(name)?;
        self.shared
            .rollback(&core, false, None, "requested")?
            .ok_or_else(|| HotError::NoHistory {
                module: name.to_owned(),
            })
    }

    /// Rolls modules `names` back together, each to its newest kept version, as one
    /// transaction (the way back from a [`reload_modules`](Self::reload_modules)): every
    /// older build is checked against the others' and against the serving modules that call
    /// them, and either all go back (each with its current state if its older build can read
    /// it, else with the state it had when it was replaced) or none does. Returns one report
    /// per module, sorted by name.
    pub fn rollback_modules(&self, names: &[&str]) -> Result<Vec<RollbackReport>, HotError> {
        let mut names: Vec<&str> = names.to_vec();
        names.sort_unstable();
        names.dedup();
        let cores = names
            .iter()
            .map(|name| {
                self.shared.not_linked(name)?;
                self.shared.core(name)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = names.first() else {
            return Ok(Vec::new());
        };
        let outcome = self
            .shared
            .transaction_lock(first)
            .and_then(|_transactions| rollback::rollback_set(&cores, &self.shared.modules()));
        match &outcome {
            Ok(reports) => {
                for report in reports {
                    let module = &report.to.module;
                    let closed = std::slice::from_ref(&report.closed);
                    self.shared.emit_retired(module, closed, &[]);
                    self.shared.events.emit(Event::RolledBack {
                        module: module.clone(),
                        from: report.from.clone(),
                        to: report.to.clone(),
                        state: report.state,
                        migrations: report.migrations.clone(),
                        reason: "requested, with the set".to_owned(),
                    });
                }
            }
            Err(error) => {
                for name in &names {
                    self.shared.events.emit(Event::failed(name, error));
                }
            }
        }
        outcome
    }

    /// The modules and what they depend on: which serving build calls which module (its
    /// `uses = [...]`), modules called but not registered, and the crates the modules depend
    /// on by path (read with `cargo metadata` from each module's crate). Print it with
    /// [`ModuleGraph::to_dot`](crate::ModuleGraph::to_dot).
    pub fn graph(&self) -> crate::ModuleGraph {
        crate::graph::of(&self.shared.modules())
    }

    /// Ends the probation of module `name`'s current version: it is good.
    ///
    /// From inside a call of the same module on this thread it returns
    /// [`HotError::ReloadDuringCall`]: a call cannot vouch for the version it runs in.
    pub fn mark_good(&self, name: &str) -> Result<(), HotError> {
        let core = self.shared.core(name)?;
        core.access.may_replace_here(name)?;
        if let Some(generation) = core.probation.end() {
            self.shared.events.emit(Event::ProbationEnded {
                module: name.to_owned(),
                generation,
            });
        }
        Ok(())
    }

    /// The replaced versions of module `name` still loaded for rollback, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<VersionInfo>, HotError> {
        let core = self.shared.core(name)?;
        let book = core.book_for_query()?;
        Ok(book.history.iter().map(|k| k.version.info()).collect())
    }

    /// The names of the registered modules, sorted.
    pub fn module_names(&self) -> Vec<String> {
        self.shared.lock_modules().keys().cloned().collect()
    }

    /// The version of module `name` serving now (`None` before its first build loaded).
    pub fn current_version(&self, name: &str) -> Result<Option<VersionInfo>, HotError> {
        Ok(self.shared.core(name)?.version())
    }

    /// The versions of module `name` that were replaced (the last 64), oldest first, with
    /// whether the OS kept each one mapped.
    pub fn retired_versions(&self, name: &str) -> Result<Vec<RetiredVersion>, HotError> {
        Ok(self.shared.core(name)?.book_for_query()?.retired.clone())
    }

    /// The closed versions of module `name` that the runtime keeps mapped for now, because a
    /// thread may still run in them (or the module is registered with
    /// [`keep_loaded`](ModuleOptions::keep_loaded)), each with the latest reason.
    pub fn held_versions(&self, name: &str) -> Result<Vec<RetiredVersion>, HotError> {
        Ok(self
            .shared
            .core(name)?
            .book_for_query()?
            .held
            .iter()
            .map(|h| h.report())
            .collect())
    }

    /// What each module serves, keeps and holds mapped, its probation, its last refusal and
    /// its calls' metrics; `Display` it for a terminal.
    ///
    /// From inside a call of a module while another thread's transaction runs, it returns
    /// [`HotError::TransactionRunning`] rather than wait (see
    /// [`history`](Self::history)).
    pub fn status(&self) -> Result<crate::Status, HotError> {
        let modules = self
            .shared
            .modules()
            .iter()
            .map(|core| self.shared.module_status(core))
            .collect::<Result<_, _>>()?;
        Ok(crate::Status { modules })
    }

    /// Writes every module's status and its loaded versions' call metrics to the `metrics`
    /// crate's recorder (the exporter the host installed, Prometheus or another): see
    /// [`Status::export`](crate::Status::export) for the names. Reading the counters costs the
    /// calls nothing; call it as often as the exporter is scraped, from a timer say.
    #[cfg(feature = "metrics")]
    pub fn export_metrics(&self) -> Result<(), HotError> {
        self.status()?.export();
        Ok(())
    }

    /// The metrics of module `name`'s serving version (`None` before its first build loaded,
    /// or with metrics [off](crate::MetricsConfig::off)). Replaced versions' metrics are in
    /// [`status`](Self::status) (kept versions) and
    /// [`retired_versions`](Self::retired_versions) (as they were when each stopped serving).
    pub fn metrics(&self, name: &str) -> Result<Option<crate::VersionMetrics>, HotError> {
        Ok(self.shared.core(name)?.access.serving_metrics())
    }

    fn lock_watcher(&self) -> MutexGuard<'_, Option<Watcher>> {
        self.watcher.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A reload refused as not this thread's or this moment's to apply: still pending.
fn not_now(err: &HotError) -> bool {
    matches!(
        err,
        HotError::WrongThread { .. }
            | HotError::ReloadDuringCall { .. }
            | HotError::Busy { .. }
            | HotError::TransactionRunning { .. }
    )
}

/// Links a module being registered (not reachable yet) to the modules it calls and to the
/// serving modules that call it, or refuses it: a serving caller it does not fit. Under the
/// transaction lock.
fn link_registered(core: &Arc<ModuleCore>, registry: &[Arc<ModuleCore>]) -> Result<(), HotError> {
    let (Some(info), Some((_, descriptor)), Some(links)) = (
        core.version(),
        core.access.serving_descriptor(),
        core.access.serving_links(),
    ) else {
        // Not loaded yet: linked when its first build loads.
        return Ok(());
    };
    let build = transaction::link::NewBuild {
        core,
        info: &info,
        // SAFETY: the module is not registered yet, so nothing replaces its serving version
        // while this runs.
        descriptor: unsafe { descriptor.get() },
        links: &links,
    };
    for install in transaction::link::link(&[build], registry)? {
        // The callers' imports of this module: nothing could call through them before.
        install.apply(false);
    }
    Ok(())
}

/// Watch events name absolute paths: so must the artifact path.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

impl Shared {
    /// Records a module linked into the host (the `static` feature).
    #[cfg_attr(not(feature = "static"), allow(dead_code))]
    fn link(&self, name: &str) -> Result<(), HotError> {
        let mut linked = self.linked.lock().unwrap_or_else(PoisonError::into_inner);
        if linked.insert(name.to_owned()) {
            Ok(())
        } else {
            Err(HotError::AlreadyRegistered {
                module: name.to_owned(),
            })
        }
    }

    /// Refuses to reload a linked module.
    fn not_linked(&self, name: &str) -> Result<(), HotError> {
        let linked = self.linked.lock().unwrap_or_else(PoisonError::into_inner);
        if linked.contains(name) {
            return Err(HotError::Linked {
                module: name.to_owned(),
            });
        }
        Ok(())
    }

    fn shadow(&self) -> Result<Arc<ShadowDir>, HotError> {
        if let Some(shadow) = self.shadow.get() {
            return Ok(Arc::clone(shadow));
        }
        let made = Arc::new(ShadowDir::create()?);
        Ok(Arc::clone(self.shadow.get_or_init(|| made)))
    }

    pub(crate) fn lock_modules(&self) -> MutexGuard<'_, BTreeMap<String, Arc<ModuleCore>>> {
        self.modules.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every registered module, in name order.
    pub(crate) fn modules(&self) -> Vec<Arc<ModuleCore>> {
        self.lock_modules().values().cloned().collect()
    }

    fn module_status(&self, core: &ModuleCore) -> Result<crate::ModuleStatus, HotError> {
        let built_at = |identity: Option<crate::version::ArtifactIdentity>| {
            identity.and_then(|identity| identity.modified())
        };
        let book = core.book_for_query()?;
        let serving = core.version().map(|info| crate::VersionStatus {
            info,
            built_at: built_at(book.serving_identity),
            metrics: core.access.serving_metrics(),
        });
        let kept = book
            .history
            .iter()
            .map(|kept| crate::VersionStatus {
                info: kept.version.info(),
                built_at: built_at(kept.version.image.shadow.identity),
                metrics: kept.version.metrics(),
            })
            .collect();
        let held = book
            .held
            .iter()
            .map(|held| held.report())
            .chain(
                book.retired
                    .iter()
                    .filter(|retired| !retired.is_held() && retired.is_mapped_now() == Some(true))
                    .cloned(),
            )
            .collect();
        drop(book);
        Ok(crate::ModuleStatus {
            name: core.spec.name.clone(),
            artifact: core.spec.artifact.clone(),
            serving,
            kept,
            held,
            probation: core.probation.report(),
            canary: core.canary().map(|trial| trial.status()),
            last_refusal: self.events.last_refusal(&core.spec.name),
        })
    }

    pub(crate) fn core(&self, name: &str) -> Result<Arc<ModuleCore>, HotError> {
        let modules = self.lock_modules();
        match modules.get(name) {
            Some(core) => Ok(Arc::clone(core)),
            None => Err(HotError::UnknownModule {
                module: name.to_owned(),
                registered: modules.keys().cloned().collect(),
            }),
        }
    }

    /// Queues a reload for the host's next `poll()`.
    pub(crate) fn mark_pending(&self, name: &str) {
        self.mark_pending_set(std::slice::from_ref(&name.to_owned()));
    }

    /// Queues the reload of `names` together (one alone: on its own) for the host's next
    /// `poll()`; the events are sent once all are queued.
    pub(crate) fn mark_pending_set(&self, names: &[String]) {
        let mut newly = Vec::new();
        {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            for name in names {
                if pending.modules.insert(name.clone()) {
                    newly.push(name.clone());
                }
            }
            if names.len() > 1 {
                let mut set: BTreeSet<String> = names.iter().cloned().collect();
                pending.sets.retain_mut(|other| {
                    if other.is_disjoint(&set) {
                        return true;
                    }
                    set.append(other);
                    false
                });
                pending.sets.push(set);
            }
        }
        for module in newly {
            self.events.emit(Event::ReloadPending { module });
        }
    }

    /// One rollback with its event.
    pub(crate) fn rollback(
        &self,
        core: &ModuleCore,
        snapshot_only: bool,
        only_from: Option<u64>,
        reason: &str,
    ) -> Result<Option<RollbackReport>, HotError> {
        let outcome = self
            .transaction_lock(&core.spec.name)
            .and_then(|_transactions| {
                let registry = self.modules();
                let core = registry
                    .iter()
                    .find(|c| std::ptr::eq(&***c, core))
                    .ok_or_else(|| HotError::UnknownModule {
                        module: core.spec.name.clone(),
                        registered: registry.iter().map(|c| c.spec.name.clone()).collect(),
                    })?;
                rollback::rollback(core, snapshot_only, only_from, &registry)
            });
        match &outcome {
            Ok(Some(report)) => {
                let closed = std::slice::from_ref(&report.closed);
                self.emit_retired(&core.spec.name, closed, &[]);
                self.events.emit(Event::RolledBack {
                    module: core.spec.name.clone(),
                    from: report.from.clone(),
                    to: report.to.clone(),
                    state: report.state,
                    migrations: report.migrations.clone(),
                    reason: reason.to_owned(),
                })
            }
            Ok(None) => {}
            Err(error) => self.events.emit(Event::failed(&core.spec.name, error)),
        }
        outcome
    }

    /// Events for the versions a transaction held open or released.
    fn emit_retired(&self, module: &str, closed: &[RetiredVersion], released: &[RetiredVersion]) {
        for version in closed {
            if let Some(reason) = &version.held {
                self.events.emit(Event::VersionHeld {
                    module: module.to_owned(),
                    generation: version.info.generation,
                    reason: reason.clone(),
                });
            }
        }
        for version in released {
            self.events.emit(Event::VersionReleased {
                module: module.to_owned(),
                generation: version.info.generation,
            });
        }
    }

    /// The transaction lock. Waited for only by a thread that is inside no call of a module
    /// and does not hold it already: one inside a call (module code that called back into
    /// the host, which reloads) could wait for a transaction that waits for that very call
    /// to end, and the thread running a transaction (a hook or callback asking for another)
    /// would wait for itself; both get [`HotError::TransactionRunning`] when it is taken.
    pub(crate) fn transaction_lock(&self, module: &str) -> Result<TransactionLock<'_>, HotError> {
        let here = std::thread::current().id();
        let running = |same_thread| HotError::TransactionRunning {
            module: module.to_owned(),
            same_thread,
        };
        if *self
            .transaction_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            == Some(here)
        {
            return Err(running(true));
        }
        let guard = if crate::access::holds_no_module_lock() {
            self.transactions
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
        } else {
            match self.transactions.try_lock() {
                Ok(guard) => guard,
                Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Err(running(false)),
            }
        };
        *self
            .transaction_thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(here);
        Ok(TransactionLock {
            _guard: guard,
            thread: &self.transaction_thread,
        })
    }

    /// A set reload with its hooks and events around it: `names`, with the artifact copies
    /// already read of some (`copies`).
    pub(crate) fn reload_set(
        &self,
        mut names: Vec<String>,
        mut copies: Vec<(String, crate::transaction::stage::ArtifactCopy)>,
    ) -> Result<Vec<ReloadReport>, HotError> {
        names.sort();
        names.dedup();
        let mut unchanged = Vec::new();
        let mut members: Vec<(Arc<ModuleCore>, Option<transaction::stage::ArtifactCopy>)> =
            Vec::new();
        for name in &names {
            self.not_linked(name)?;
            let core = self.core(name)?;
            core.access.may_replace_here(name)?;
            let given = copies
                .iter()
                .position(|(module, _)| module == name)
                .map(|i| copies.swap_remove(i).1);
            let copy = match given {
                Some(copy) => Some(copy),
                None => {
                    if let Some(report) = transaction::unchanged(&core)? {
                        unchanged.push(report);
                        continue;
                    }
                    transaction::stage::copy_artifact(&core.spec, &core.shadow).ok()
                }
            };
            if let Some(copy) = &copy {
                if let Some(report) = transaction::same_bytes(&core, copy)? {
                    unchanged.push(report);
                    continue;
                }
            }
            members.push((core, copy));
        }
        // Every member checked: the hooks are asked now, so that each asked hears the outcome.
        for (i, (core, _)) in members.iter().enumerate() {
            let name = &core.spec.name;
            let current = core.version();
            let request = ReloadRequest {
                module: name,
                artifact: &core.spec.artifact,
                current: current.as_ref(),
            };
            if let Err(reason) = self.hooks.before(&request) {
                let vetoed = HotError::Vetoed {
                    module: name.clone(),
                    reason,
                };
                for (asked, _) in &members[..=i] {
                    self.hooks.after(&asked.spec.name, &Err(vetoed.clone()));
                }
                self.events.emit(Event::failed(name, &vetoed));
                return Err(vetoed);
            }
        }
        if members.is_empty() {
            return Ok(unchanged);
        }
        let modules: Vec<String> = members.iter().map(|(c, _)| c.spec.name.clone()).collect();
        for (core, _) in &members {
            self.events.emit(Event::ReloadStarted {
                module: core.spec.name.clone(),
                current: core.version(),
            });
        }
        let outcome = self
            .transaction_lock(&modules[0])
            .and_then(|_transactions| transaction::set::reload_set(members, &self.modules()));
        match &outcome {
            Ok(reports) => {
                for report in reports {
                    let module = &report.to.module;
                    self.emit_retired(module, &report.closed, &report.released);
                    self.events.emit(Event::Reloaded {
                        module: module.clone(),
                        from: report.from.clone(),
                        to: report.to.clone(),
                        timings: report.timings,
                    });
                    self.hooks.after(module, &Ok(report.clone()));
                }
                self.events.emit(Event::SetReloaded {
                    modules: modules.clone(),
                });
            }
            Err(error) => {
                for module in &modules {
                    self.events.emit(Event::failed(module, error));
                    self.hooks.after(module, &Err(error.clone()));
                }
            }
        }
        let mut reports = outcome?;
        reports.extend(unchanged);
        reports.sort_by(|a, b| a.to.module.cmp(&b.to.module));
        Ok(reports)
    }

    /// One reload with its hooks and events around it.
    pub(crate) fn reload(
        &self,
        core: &Arc<ModuleCore>,
        bytes: Option<crate::transaction::stage::ArtifactCopy>,
    ) -> Result<ReloadReport, HotError> {
        let module = core.spec.name.clone();
        let current = core.version();
        let request = ReloadRequest {
            module: &module,
            artifact: &core.spec.artifact,
            current: current.as_ref(),
        };
        // An unchanged artifact costs one `stat` and sends no event (the watcher, which
        // passes the copy it made, has made the same checks).
        let permitted = core.access.may_replace_here(&module);
        if permitted.is_ok() && bytes.is_none() {
            if let Some(report) = transaction::unchanged(core)? {
                return Ok(report);
            }
        }
        // Asked before anything is read: a veto costs nothing.
        let allowed = permitted.and_then(|()| {
            self.hooks
                .before(&request)
                .map_err(|reason| HotError::Vetoed {
                    module: module.clone(),
                    reason,
                })
        });
        let mut bytes = bytes;
        if allowed.is_ok() && bytes.is_none() {
            // Another file, or the same one touched: the same bytes are still no reload (and
            // send no event). A copy that fails is made again, and reported, by the
            // transaction.
            if let Ok(copy) = transaction::stage::copy_artifact(&core.spec, &core.shadow) {
                if let Some(report) = transaction::same_bytes(core, &copy)? {
                    return Ok(report);
                }
                bytes = Some(copy);
            }
        }
        let outcome = match allowed {
            Err(refused) => Err(refused),
            Ok(()) => {
                self.events.emit(Event::ReloadStarted {
                    module: module.clone(),
                    current,
                });
                self.transaction_lock(&module)
                    .and_then(|_transactions| transaction::reload(core, bytes, &self.modules()))
            }
        };
        if let Ok(report) = &outcome {
            self.emit_retired(&module, &report.closed, &report.released);
        }
        self.events.emit(match &outcome {
            Ok(report) => Event::Reloaded {
                module: module.clone(),
                from: report.from.clone(),
                to: report.to.clone(),
                timings: report.timings,
            },
            Err(error) => Event::failed(&module, error),
        });
        self.hooks.after(&module, &outcome);
        outcome
    }
}
