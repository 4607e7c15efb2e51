//! Will a new build reload into a program running an older one? Answered by doing it: the
//! older build is loaded into a real reloader that expects of later builds what a host
//! compiled against it would (its methods' layouts, its API version), and the newer build
//! is reloaded into it through the whole transaction, state and migrations included. The
//! outcome is a [`Verdict`], the same as the runtime's when the two builds meet in a running
//! program.
//!
//! ```no_run
//! use hotreload::check::{Verdict, check_reload};
//!
//! let checked = check_reload(
//!     "game_logic",
//!     "builds/main/libgame_logic.so".as_ref(),
//!     "target/debug/libgame_logic.so".as_ref(),
//! )?;
//! println!("{}", checked.verdict);
//! assert!(!matches!(checked.verdict, Verdict::Refused { .. }));
//! # Ok::<(), hotreload::HotError>(())
//! ```
//!
//! The state carried over is the older build's fresh state (`Default`): a build whose
//! restore fails only on some states passes here ([`Builds::reload`] drives the older
//! build with your calls first). Each module is checked alone, as a host calls it: the
//! links of modules that call each other (`uses = [...]`) are not checked, and a module
//! only other modules call (registered with `register_for_imports`, which accepts any API
//! version) is judged as if the host called it. Each check leaves both builds mapped for
//! the rest of the process (the expectations point into the older build's image): a check
//! costs the two libraries' memory, which matters in a long-lived process only.

mod builds;

use std::fmt;
use std::path::{Path, PathBuf};

use hotreload_abi::{ModuleDescriptor, TableEntry};

use crate::__private::MethodSignature;
use crate::error::{HotError, Rejection};
use crate::{HotReloader, ReloadReport};

pub use builds::{Builds, Compare};

/// What a program running the older build would do with the newer one.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// It reloads, the state carried over as it is.
    ReloadsCleanly,
    /// It reloads, the state migrated by the new build's steps.
    ReloadsWithMigration {
        /// The state schema the older build saves.
        from: u32,
        /// The newer build's.
        to: u32,
        /// The migration steps run, named.
        steps: Vec<String>,
    },
    /// The program refuses it and keeps the older build: it cannot take over the state, or
    /// cannot be loaded at all. A host built anew would load it only with a fresh state (or
    /// not at all).
    Refused {
        /// The runtime's one line.
        reason: String,
    },
    /// The program refuses it because the host's use of the module's API changed (a method
    /// it calls changed its signature or went away, the API version moved, the module was
    /// renamed, the framework's ABI changed): a host compiled against the new build would
    /// take it; the running one must be restarted.
    NeedsHostRestart {
        /// The runtime's one line.
        reason: String,
    },
}

impl Verdict {
    /// Whether the running program would take the new build.
    pub fn reloads(&self) -> bool {
        matches!(
            self,
            Verdict::ReloadsCleanly | Verdict::ReloadsWithMigration { .. }
        )
    }

    /// The verdict of a reload's outcome.
    fn of(outcome: &Result<ReloadReport, HotError>, from: u32) -> Verdict {
        match outcome {
            Ok(report) if report.migrations.is_empty() => Verdict::ReloadsCleanly,
            Ok(report) => Verdict::ReloadsWithMigration {
                from,
                to: report.to.state_version,
                steps: report.migrations.clone(),
            },
            Err(err) if needs_host_restart(err) => Verdict::NeedsHostRestart {
                reason: err.to_string(),
            },
            Err(err) => Verdict::Refused {
                reason: err.to_string(),
            },
        }
    }
}

/// Whether `err` refuses a build for what the host was compiled with, not for the build or
/// its state.
fn needs_host_restart(err: &HotError) -> bool {
    match err {
        HotError::Rejected { reason, .. } => matches!(
            reason,
            Rejection::Layout(_)
                | Rejection::ApiVersion { .. }
                | Rejection::ModuleName { .. }
                | Rejection::AbiVersion { .. }
                | Rejection::DescriptorSize { .. }
        ),
        // The module was renamed (its descriptor symbol carries its name): a host built
        // against the new name registers it.
        HotError::NoDescriptor { .. } => true,
        _ => false,
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::ReloadsCleanly => write!(f, "reloads cleanly"),
            Verdict::ReloadsWithMigration { from, to, steps } if steps.is_empty() => {
                write!(f, "reloads with migration v{from} -> v{to}")
            }
            // Each step names its schemas and its function: "v1 -> v2 (from_v1)".
            Verdict::ReloadsWithMigration { steps, .. } => {
                write!(f, "reloads with migration {}", steps.join(", then "))
            }
            Verdict::Refused { reason } => write!(f, "refused: {reason}"),
            Verdict::NeedsHostRestart { reason } => {
                write!(
                    f,
                    "needs a host restart (the host's use of the API changed): {reason}"
                )
            }
        }
    }
}

/// A check of one pair of builds.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Checked {
    /// What the running program would do.
    pub verdict: Verdict,
    /// The reload's report, when it reloaded: the methods whose code changed, those the
    /// older host does not know, the migrations, the time of each step.
    pub report: Option<ReloadReport>,
    /// The error, when it did not.
    pub error: Option<HotError>,
}

/// Loads `old` (a build of module `module`) as a program compiled against it would, then
/// reloads `new` into it. An error means the check itself could not run (`old` does not
/// load, a file could not be copied); the new build's fate is in the verdict.
pub fn check_reload(module: &str, old: &Path, new: &Path) -> Result<Checked, HotError> {
    let (_scratch, artifact) = artifact_dir(module)?;
    install(module, old, &artifact)?;
    let reloader = HotReloader::new();
    reloader.register_as_built(module, artifact.clone())?;
    let from = reloader
        .current_version(module)?
        .map_or(0, |version| version.state_version);
    install(module, new, &artifact)?;
    let outcome = reloader.reload_module(module);
    Ok(Checked {
        verdict: Verdict::of(&outcome, from),
        report: outcome.as_ref().ok().cloned(),
        error: outcome.err(),
    })
}

/// Loads `artifact` (a build of module `module`) as a program compiled against it would, and
/// describes it: its API and state schema versions, size and digest. Loading it is the check
/// that it is a build of `module` for this framework at all. A publisher reads what to sign
/// from it.
pub fn describe(module: &str, artifact: &Path) -> Result<crate::VersionInfo, HotError> {
    let (_scratch, copy) = artifact_dir(module)?;
    install(module, artifact, &copy)?;
    let reloader = HotReloader::new();
    reloader.register_as_built(module, copy)?;
    reloader
        .current_version(module)?
        .ok_or_else(|| HotError::NotLoaded {
            module: module.to_owned(),
            method: "describe",
        })
}

/// The hot modules a library exports (the names its descriptor symbols carry), read from the
/// file without loading it.
pub fn modules_in(artifact: &Path) -> Result<Vec<String>, HotError> {
    use object::{Object, ObjectSymbol};
    let not_a_library = |reason: String| HotError::NotALibrary {
        module: String::new(),
        path: artifact.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(artifact).map_err(|source| HotError::ReadArtifact {
        module: String::new(),
        path: artifact.to_path_buf(),
        source: source.into(),
    })?;
    let file = object::File::parse(&*bytes)
        .map_err(|err| not_a_library(format!("not an object file ({err})")))?;
    let prefix = hotreload_abi::descriptor_symbol("");
    let mut names: Vec<String> = file
        .dynamic_symbols()
        .filter(|symbol| symbol.is_definition())
        .filter_map(|symbol| {
            let name = symbol.name().ok()?;
            name.strip_prefix(prefix.as_str()).map(str::to_owned)
        })
        .collect();
    names.sort();
    names.dedup();
    Ok(names)
}

/// What a host compiled against the build `descriptor` describes expects of later builds.
/// Leaked: a module's spec holds `'static` expectations (a host's come from its code).
pub(crate) struct Expectations {
    pub entries: &'static [TableEntry],
    pub methods: &'static [MethodSignature],
    pub table_size: usize,
    pub api_version: u32,
}

pub(crate) fn expectations(descriptor: &ModuleDescriptor) -> Expectations {
    fn leak(text: &str) -> &'static str {
        Box::leak(text.to_owned().into_boxed_str())
    }
    fn leak_all<'a>(texts: impl Iterator<Item = &'a str>) -> &'static [&'static str] {
        Box::leak(texts.map(leak).collect::<Vec<_>>().into_boxed_slice())
    }
    let methods = descriptor
        .methods
        .iter()
        .map(|method| MethodSignature {
            name: leak(method.name.as_str()),
            takes_state: method.takes_state,
            exclusive: method.exclusive,
            params: leak_all(method.params.iter().map(|p| p.as_str())),
            types: leak_all(method.types.iter().map(|t| t.as_str())),
            returns: leak(method.returns.as_str()),
        })
        .collect::<Vec<_>>();
    Expectations {
        // The layouts they refer to are in the build's image, which stays mapped: the
        // module is registered `keep_loaded`.
        entries: Box::leak(descriptor.entries.as_slice().to_vec().into_boxed_slice()),
        methods: Box::leak(methods.into_boxed_slice()),
        table_size: descriptor.table_size,
        api_version: descriptor.api_version,
    }
}

impl Builds {
    /// Each hot module the older build exports, checked: what a program running the older
    /// build would do with the newer one.
    pub fn check(&self) -> Result<Vec<(String, Checked)>, HotError> {
        modules_in(&self.old)?
            .into_iter()
            .map(|module| {
                let checked = check_reload(&module, &self.old, &self.new)?;
                Ok((module, checked))
            })
            .collect()
    }

    /// Loads the older build for the host type `T` (this crate as it is now), lets `drive`
    /// make calls, then reloads the newer build into it.
    ///
    /// The older build must have `T`'s API: every method `T` has, with the same signatures,
    /// and the same API version. A change that adds a method or bumps the API version (which
    /// a running host takes, see [`check`](Self::check)) cannot be driven this way: the
    /// older build is refused at registration, and this returns that error
    /// ([`HotError::Rejected`]). A change that removes a method the running host calls is
    /// judged by [`check`](Self::check), not here (`T` no longer has it). The reload's outcome, with
    /// the handle (serving the newer build if it reloaded) to look at the state through.
    pub fn reload<T: crate::HotModule>(
        &self,
        drive: impl FnOnce(&crate::Module<T>) -> Result<(), HotError>,
    ) -> Result<Reloaded<T>, HotError> {
        let (reloader, module, dir, artifact) = self.load_old::<T>()?;
        drive(&module)?;
        let before = reloader.saved_state(T::MODULE_NAME)?;
        let resident_before = resident_kb();
        install(T::MODULE_NAME, &self.new, &artifact)?;
        let outcome = reloader.reload_module(T::MODULE_NAME);
        let resident_growth_kb = resident_kb() - resident_before;
        let state = match &outcome {
            Ok(_) => StateCarried::compare(&before, &reloader.saved_state(T::MODULE_NAME)?),
            Err(_) => StateCarried::NotReloaded,
        };
        Ok(Reloaded {
            outcome,
            state,
            resident_growth_kb,
            module,
            _reloader: reloader,
            _dir: dir,
        })
    }

    /// Reloads the newer build, then the older, then the newer..., `rounds` reloads in all,
    /// with `drive` making calls before each and `invariant` checked after each: the reports,
    /// or the first reload refused or invariant broken, said in one line.
    pub fn back_and_forth<T: crate::HotModule>(
        &self,
        rounds: usize,
        mut drive: impl FnMut(&crate::Module<T>) -> Result<(), HotError>,
        mut invariant: impl FnMut(&crate::Module<T>) -> Result<(), String>,
    ) -> Result<Vec<ReloadReport>, String> {
        let (reloader, module, _dir, artifact) =
            self.load_old::<T>().map_err(|err| err.to_string())?;
        let mut reports = Vec::new();
        for round in 0..rounds {
            let (to, which) = if round % 2 == 0 {
                (&self.new, "newer")
            } else {
                (&self.old, "older")
            };
            let at = |what: String| format!("reload {} (to the {which} build): {what}", round + 1);
            drive(&module).map_err(|err| at(format!("a call before it failed: {err}")))?;
            install(T::MODULE_NAME, to, &artifact).map_err(|err| at(err.to_string()))?;
            let report = reloader
                .reload_module(T::MODULE_NAME)
                .map_err(|err| at(format!("refused: {err}")))?;
            invariant(&module).map_err(|broken| at(format!("the invariant broke: {broken}")))?;
            reports.push(report);
        }
        Ok(reports)
    }

    /// A reloader with the older build registered for `T`, from a copy at the artifact path
    /// in a directory of its own (returned, with that path).
    #[allow(clippy::type_complexity)]
    fn load_old<T: crate::HotModule>(
        &self,
    ) -> Result<(HotReloader, crate::Module<T>, tempfile::TempDir, PathBuf), HotError> {
        let (dir, artifact) = artifact_dir(T::MODULE_NAME)?;
        install(T::MODULE_NAME, &self.old, &artifact)?;
        let reloader = HotReloader::new();
        let module =
            reloader.register_with::<T>(crate::ModuleOptions::new().artifact(&artifact))?;
        Ok((reloader, module, dir, artifact))
    }
}

/// A private directory, and the path in it where module `module`'s builds are put.
fn artifact_dir(module: &str) -> Result<(tempfile::TempDir, PathBuf), HotError> {
    let dir = tempfile::tempdir().map_err(|source| HotError::ShadowDir {
        source: source.into(),
    })?;
    let artifact = dir.path().join(crate::library_file_name(module));
    Ok((dir, artifact))
}

/// Puts a build of `module` at `to`, as a linker would (see
/// [`harness::install`](crate::harness::install)).
fn install(module: &str, from: &Path, to: &Path) -> Result<(), HotError> {
    crate::harness::install(from, to).map_err(|source| HotError::ReadArtifact {
        module: module.to_owned(),
        path: from.to_path_buf(),
        source: source.into(),
    })
}

/// This process's resident memory, in kB (0 where the platform does not say).
fn resident_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("VmRSS:"))
                .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// How the state came through a reload, by what each build saves of it: the older build
/// just before the reload, the newer one just after.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum StateCarried {
    /// Both builds save the same state, field by field, in the same schema.
    Exactly,
    /// The same schema, other values: fields the newer build added (with their defaults),
    /// values its restore changed. Both as JSON, to compare or show.
    Differently {
        /// What the older build saved.
        before: serde_json::Value,
        /// What the newer build saves.
        after: serde_json::Value,
    },
    /// The schema changed (a migration ran): compare through the module's calls.
    Migrated {
        /// The older build's schema.
        from: u32,
        /// The newer build's.
        to: u32,
    },
    /// The newer build did not reload.
    NotReloaded,
}

impl StateCarried {
    /// Compares two saved envelopes.
    fn compare(before: &[u8], after: &[u8]) -> StateCarried {
        use hotreload_abi::StateEnvelope;
        let open = |bytes: &[u8]| -> Option<(u32, serde_json::Value)> {
            let envelope: StateEnvelope = rmp_serde::from_slice(bytes).ok()?;
            let value = rmp_serde::from_slice(&envelope.payload).ok()?;
            Some((envelope.state_version, value))
        };
        match (open(before), open(after)) {
            (Some((from, _)), Some((to, _))) if from != to => StateCarried::Migrated { from, to },
            (Some((_, before)), Some((_, after))) if before == after => StateCarried::Exactly,
            (Some((_, before)), Some((_, after))) => StateCarried::Differently { before, after },
            // A payload that is no self-describing MessagePack: nothing to compare by.
            _ => StateCarried::Differently {
                before: serde_json::Value::Null,
                after: serde_json::Value::Null,
            },
        }
    }
}

/// A reload of the newer build into the older one, driven by [`Builds::reload`].
#[non_exhaustive]
pub struct Reloaded<T> {
    /// The reload's outcome: its report (the methods whose code changed, the migrations, the
    /// time of each step, the versions closed and whether they stayed mapped), or the
    /// runtime's refusal.
    pub outcome: Result<ReloadReport, HotError>,
    /// How the state came through, by what each build saves.
    pub state: StateCarried,
    /// How much this process's resident memory grew over the reload, in kB (the newer
    /// library mapped, the older kept for rollback; 0 where the platform does not say).
    pub resident_growth_kb: i64,

    /// The module: serving the newer build if it reloaded, the older one with its state if
    /// not.
    pub module: crate::Module<T>,
    _reloader: HotReloader,
    _dir: tempfile::TempDir,
}

impl<T> fmt::Debug for Reloaded<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reloaded")
            .field("outcome", &self.outcome)
            .field("state", &self.state)
            .field("resident_growth_kb", &self.resident_growth_kb)
            .finish_non_exhaustive()
    }
}

impl<T> Reloaded<T> {
    /// Panics unless the newer build reloaded; its report.
    #[track_caller]
    pub fn assert_reloaded(&self) -> &ReloadReport {
        match &self.outcome {
            Ok(report) => report,
            Err(err) => panic!("the newer build did not reload: {err}"),
        }
    }

    /// Panics unless the newer build reloaded and the state came through exactly (the same
    /// fields with the same values; see [`StateCarried`]).
    #[track_caller]
    pub fn assert_state_preserved(&self) {
        self.assert_reloaded();
        assert!(
            self.state == StateCarried::Exactly,
            "the state did not come through as it was: {:?}",
            self.state
        );
    }

    /// Panics unless the newer build was refused with a reason containing `because`.
    #[track_caller]
    pub fn assert_refused_because(&self, because: &str) {
        match &self.outcome {
            Ok(report) => panic!("the newer build reloaded ({report}), expected a refusal"),
            Err(err) if err.to_string().contains(because) => {}
            Err(err) => panic!("refused for another reason than `{because}`: {err}"),
        }
    }
}

impl Checked {
    /// Panics unless the newer build reloads (cleanly or with a migration).
    #[track_caller]
    pub fn assert_reloads(&self) {
        assert!(self.verdict.reloads(), "{}", self.verdict);
    }

    /// Panics unless the newer build needs a host restart (the host's use of the API
    /// changed).
    #[track_caller]
    pub fn assert_needs_host_restart(&self) {
        assert!(
            matches!(self.verdict, Verdict::NeedsHostRestart { .. }),
            "expected a host restart, got: {}",
            self.verdict
        );
    }

    /// Panics unless the newer build is refused (or needs a host restart) with a reason
    /// containing `because`.
    #[track_caller]
    pub fn assert_refused_because(&self, because: &str) {
        match &self.verdict {
            Verdict::Refused { reason } | Verdict::NeedsHostRestart { reason }
                if reason.contains(because) => {}
            other => panic!("expected a refusal because of `{because}`, got: {other}"),
        }
    }
}
