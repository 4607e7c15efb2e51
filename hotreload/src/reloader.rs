//! The reloader: registers modules and runs reload transactions on request.

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use abi_stable::StableAbi;

use crate::error::HotError;
use crate::module::{HotModule, Module, ModuleCore, ModuleSpec};
use crate::transaction::{self, ReloadReport, retire::RetiredVersion};
use crate::{ShadowDir, VersionInfo, locate};

/// How to register a module: where its library is and which API versions to accept.
#[derive(Debug, Clone, Default)]
pub struct ModuleOptions {
    artifact: Option<PathBuf>,
    accepted_api: Option<RangeInclusive<u32>>,
}

impl ModuleOptions {
    /// The defaults: the library beside the host's executable, exactly the API version the
    /// host was compiled with.
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
}

/// Loads hot modules and reloads them on request.
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
#[derive(Default)]
pub struct HotReloader {
    shadow: OnceLock<Arc<ShadowDir>>,
    modules: Mutex<BTreeMap<String, Arc<ModuleCore>>>,
}

impl std::fmt::Debug for HotReloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HotReloader")
            .field("shadow", &self.shadow.get().map(|s| s.path().to_path_buf()))
            .field("modules", &self.module_names())
            .finish()
    }
}

impl HotReloader {
    /// A reloader with no modules. Its private shadow directory is made at first use.
    pub fn new() -> Self {
        Self::default()
    }

    fn shadow(&self) -> Result<Arc<ShadowDir>, HotError> {
        if let Some(shadow) = self.shadow.get() {
            return Ok(Arc::clone(shadow));
        }
        let made = Arc::new(ShadowDir::create()?);
        Ok(Arc::clone(self.shadow.get_or_init(|| made)))
    }

    /// Loads module `T` from the Cargo target directory of the host's profile
    /// (`lib<crate>.so` beside the host's executable) and registers it under its name.
    pub fn register<T: HotModule>(&self) -> Result<Module<T>, HotError> {
        self.register_with::<T>(ModuleOptions::new())
    }

    /// Loads module `T` as `options` say and registers it under its name.
    pub fn register_with<T: HotModule>(
        &self,
        options: ModuleOptions,
    ) -> Result<Module<T>, HotError> {
        let name = T::MODULE_NAME.to_owned();
        if self.lock_modules().contains_key(&name) {
            return Err(HotError::AlreadyRegistered { module: name });
        }
        let spec = ModuleSpec {
            artifact: options
                .artifact
                .unwrap_or_else(|| locate::default_artifact(T::CRATE_NAME)),
            expected_layout: <T::Table as StableAbi>::LAYOUT,
            methods: T::METHODS,
            accepted_api: options
                .accepted_api
                .unwrap_or(T::API_VERSION..=T::API_VERSION),
            name: name.clone(),
        };
        let shadow = self.shadow()?;
        let live = transaction::load_initial(&spec, &shadow)?;
        let core = Arc::new(ModuleCore::new(spec, shadow, live));
        let mut modules = self.lock_modules();
        if modules.contains_key(&name) {
            return Err(HotError::AlreadyRegistered { module: name });
        }
        modules.insert(name, Arc::clone(&core));
        Ok(Module::from_core(core))
    }

    /// Reloads module `name` from its artifact: one whole transaction (stage, open, verify,
    /// prepare, commit, retire). On error the running version keeps serving, state intact.
    pub fn reload_module(&self, name: &str) -> Result<ReloadReport, HotError> {
        let core = self.core(name)?;
        transaction::reload(&core)
    }

    /// The names of the registered modules, sorted.
    pub fn module_names(&self) -> Vec<String> {
        self.lock_modules().keys().cloned().collect()
    }

    /// The version of module `name` serving now.
    pub fn current_version(&self, name: &str) -> Result<VersionInfo, HotError> {
        Ok(self.core(name)?.read_live().version.info.clone())
    }

    /// The versions of module `name` that were replaced, oldest first, with whether the OS
    /// kept each one mapped.
    pub fn retired_versions(&self, name: &str) -> Result<Vec<RetiredVersion>, HotError> {
        Ok(self.core(name)?.book().retired.clone())
    }

    fn core(&self, name: &str) -> Result<Arc<ModuleCore>, HotError> {
        self.lock_modules()
            .get(name)
            .cloned()
            .ok_or_else(|| HotError::UnknownModule {
                module: name.to_owned(),
            })
    }

    fn lock_modules(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<ModuleCore>>> {
        self.modules.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
