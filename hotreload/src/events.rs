//! What the runtime tells the host: an event stream, and hooks around each reload.
//!
//! Events are delivered on the thread where they happen: the caller's for `reload_module` and
//! `poll`, the watcher thread for automatic reloads and builds. Channel subscribers never
//! block that thread; callbacks run on it, so keep them short.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::error::HotError;
use crate::{ReloadReport, StepTimings, VersionInfo};

/// Something that happened to a module.
#[derive(Debug, Clone)]
#[non_exhaustive]
// A few events a second at most: boxing the versions would cost readability, not memory.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// The watcher watches this module's artifact.
    Watching {
        /// The module.
        module: String,
        /// Its artifact.
        path: PathBuf,
    },
    /// The artifact is not there (not built yet, deleted, renamed away, its directory gone).
    /// The running version, if any, keeps serving; the module reloads when it reappears.
    ArtifactMissing {
        /// The module.
        module: String,
        /// Where the artifact should be.
        path: PathBuf,
    },
    /// The artifact changed but is not a complete library yet; the watcher waits for the
    /// writer to finish.
    ArtifactIncomplete {
        /// The module.
        module: String,
        /// The artifact.
        path: PathBuf,
        /// What is missing.
        reason: String,
    },
    /// A complete new artifact is waiting for the host's next `poll()`.
    ReloadPending {
        /// The module.
        module: String,
    },
    /// A reload transaction began.
    ReloadStarted {
        /// The module.
        module: String,
        /// The version serving until it ends.
        current: Option<VersionInfo>,
    },
    /// A new version serves.
    Reloaded {
        /// The module.
        module: String,
        /// The version that served before.
        from: Option<VersionInfo>,
        /// The version that serves now.
        to: VersionInfo,
        /// Time per step.
        timings: StepTimings,
    },
    /// A reload was refused or failed; the running version keeps serving.
    ReloadFailed {
        /// The module.
        module: String,
        /// One line saying why.
        reason: String,
        /// The error itself.
        error: HotError,
    },
    /// The module went back to an older version.
    RolledBack {
        /// The module.
        module: String,
        /// The version rolled back from (now closed).
        from: VersionInfo,
        /// The version serving now.
        to: VersionInfo,
        /// Which state it was given.
        state: crate::RollbackState,
        /// The state migrations run on the current state, in order.
        migrations: Vec<String>,
        /// Why: "requested", or the panic that ended a probation.
        reason: String,
    },
    /// A canary started: a new build serves a share of the calls beside the serving version.
    CanaryStarted {
        /// The module.
        module: String,
        /// The version serving beside it.
        serving: VersionInfo,
        /// The canary's version.
        canary: VersionInfo,
        /// Which calls it takes.
        split: crate::Split,
    },
    /// A canary was promoted: its build serves every call now, with the serving state carried
    /// into it (a [`Reloaded`](Event::Reloaded) event came just before).
    CanaryPromoted {
        /// The module.
        module: String,
        /// The version promoted.
        canary: VersionInfo,
        /// Why: "requested", or the policy's bounds met.
        reason: String,
        /// Both versions' figures over the canary's time.
        figures: crate::CanaryFigures,
    },
    /// A canary was aborted: its version is closed, and the serving version, which never
    /// stopped serving, keeps its state.
    CanaryAborted {
        /// The module.
        module: String,
        /// The canary's version.
        canary: VersionInfo,
        /// Why: "requested", the bound the policy found exceeded, or the failed promotion.
        reason: String,
        /// Both versions' figures over the canary's time.
        figures: crate::CanaryFigures,
    },
    /// A version's probation ended without a panic (or the host marked it good).
    ProbationEnded {
        /// The module.
        module: String,
        /// The version now trusted.
        generation: u64,
    },
    /// A closed version stays mapped because a thread may still return into it (a worker that
    /// did not stop in time, or a thread whose stack holds an address inside it), or because
    /// the module was registered with `keep_loaded`. It is checked again at every later
    /// retire and closed once nothing runs in it.
    VersionHeld {
        /// The module.
        module: String,
        /// The version held.
        generation: u64,
        /// Why.
        reason: String,
    },
    /// A version held earlier was closed: nothing ran in it any more.
    VersionReleased {
        /// The module.
        module: String,
        /// The version closed.
        generation: u64,
    },
    /// A build of the module started (cargo, or a replay of its rustc command).
    BuildStarted {
        /// The module.
        module: String,
        /// The package built.
        package: String,
    },
    /// The module was built.
    BuildFinished {
        /// The module.
        module: String,
        /// The package built.
        package: String,
        /// How long the build took.
        duration: Duration,
        /// `true` when only the module's own sources had changed and the runtime ran the
        /// rustc command cargo used for it last time, without cargo; `false` for a cargo
        /// build.
        replayed: bool,
    },
    /// The module's build failed (cargo's, or a replay of rustc's command that found an
    /// error in the module's own code); the running version keeps serving.
    BuildFailed {
        /// The module.
        module: String,
        /// The package.
        package: String,
        /// The compiler's messages.
        message: String,
    },
    /// The watcher hit an error of its own (from the OS or from `cargo metadata`).
    WatchError {
        /// What went wrong.
        message: String,
    },
    /// Modules reloaded together, in one set transaction (each also has its
    /// [`Reloaded`](Event::Reloaded) event, sent before this one).
    SetReloaded {
        /// The modules, sorted by name.
        modules: Vec<String>,
    },
}

impl Event {
    /// [`Event::ReloadFailed`] for `module`, with `error` and its one line.
    pub(crate) fn failed(module: &str, error: &HotError) -> Event {
        Event::ReloadFailed {
            module: module.to_owned(),
            reason: error.to_string(),
            error: error.clone(),
        }
    }

    /// The module the event is about, if any.
    pub fn module(&self) -> Option<&str> {
        match self {
            Event::Watching { module, .. }
            | Event::ArtifactMissing { module, .. }
            | Event::ArtifactIncomplete { module, .. }
            | Event::ReloadPending { module }
            | Event::ReloadStarted { module, .. }
            | Event::Reloaded { module, .. }
            | Event::ReloadFailed { module, .. }
            | Event::RolledBack { module, .. }
            | Event::ProbationEnded { module, .. }
            | Event::CanaryStarted { module, .. }
            | Event::CanaryPromoted { module, .. }
            | Event::CanaryAborted { module, .. }
            | Event::VersionHeld { module, .. }
            | Event::VersionReleased { module, .. }
            | Event::BuildStarted { module, .. }
            | Event::BuildFinished { module, .. }
            | Event::BuildFailed { module, .. } => Some(module),
            Event::WatchError { .. } | Event::SetReloaded { .. } => None,
        }
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Watching { module, path } => write!(f, "{module}: watching {}", path.display()),
            Event::ArtifactMissing { module, path } => {
                write!(f, "{module}: artifact missing at {}", path.display())
            }
            Event::ArtifactIncomplete { module, reason, .. } => {
                write!(f, "{module}: artifact incomplete ({reason}), waiting")
            }
            Event::ReloadPending { module } => {
                write!(f, "{module}: new build ready, reloads at the next poll")
            }
            Event::ReloadStarted { module, .. } => write!(f, "{module}: reload started"),
            Event::Reloaded {
                module,
                from,
                to,
                timings,
            } => {
                let from = from
                    .as_ref()
                    .map_or("nothing".into(), |v| format!("load #{}", v.generation));
                write!(
                    f,
                    "{module}: reloaded {from} -> load #{} in {:.2?} (callers paused {:.2?})",
                    to.generation,
                    timings.total(),
                    timings.pause()
                )
            }
            Event::ReloadFailed { reason, .. } => write!(f, "{reason}"),
            Event::RolledBack {
                module,
                from,
                to,
                state,
                migrations,
                reason,
            } => write!(
                f,
                "{module}: rolled back from load #{} to load #{} with the {} ({reason})",
                from.generation,
                to.generation,
                match state {
                    crate::RollbackState::Snapshot { calls_lost } => format!(
                        "snapshot taken at the upgrade (the changes of {calls_lost} `&mut self` \
                         call(s) since are lost)"
                    ),
                    _ if migrations.is_empty() => "current state".to_owned(),
                    _ => format!("current state, migrated {}", migrations.join(", ")),
                }
            ),
            Event::CanaryStarted {
                module,
                serving,
                canary,
                split,
            } => write!(
                f,
                "{module}: canary load #{} takes {split} beside load #{}",
                canary.generation, serving.generation
            ),
            Event::CanaryPromoted {
                module,
                canary,
                reason,
                figures,
            } => write!(
                f,
                "{module}: canary load #{} promoted ({reason}), {figures}",
                canary.generation
            ),
            Event::CanaryAborted {
                module,
                canary,
                reason,
                figures,
            } => write!(
                f,
                "{module}: canary load #{} aborted: {reason}; {figures}",
                canary.generation
            ),
            Event::ProbationEnded { module, generation } => {
                write!(f, "{module}: load #{generation} passed probation")
            }
            Event::VersionHeld {
                module,
                generation,
                reason,
            } => write!(f, "{module}: load #{generation} stays mapped: {reason}"),
            Event::VersionReleased { module, generation } => {
                write!(
                    f,
                    "{module}: load #{generation} closed, nothing runs in it any more"
                )
            }
            Event::BuildStarted { module, package } => write!(f, "{module}: building {package}"),
            Event::BuildFinished {
                module,
                duration,
                replayed,
                ..
            } => {
                let how = if *replayed { "rustc" } else { "cargo" };
                write!(f, "{module}: built in {duration:.2?} ({how})")
            }
            Event::BuildFailed {
                module, message, ..
            } => write!(f, "{module}: build failed:\n{message}"),
            Event::WatchError { message } => write!(f, "watcher: {message}"),
            Event::SetReloaded { modules } => {
                write!(f, "{}: reloaded together", modules.join(", "))
            }
        }
    }
}

type Callback = Box<dyn Fn(&Event) + Send + Sync>;

/// How many events a subscriber's channel holds before new ones are dropped for it.
pub(crate) const EVENT_BUFFER: usize = 4096;

/// Everyone who listens.
#[derive(Default)]
pub(crate) struct EventBus {
    channels: Mutex<Vec<SyncSender<Event>>>,
    callbacks: RwLock<Vec<Callback>>,
    /// Events not delivered to a subscriber whose channel was full.
    dropped: AtomicU64,
    /// Each module's last refused reload or failed build, for `HotReloader::status`.
    last_refusals: Mutex<std::collections::BTreeMap<String, crate::status::Refusal>>,
}

impl EventBus {
    /// A bounded channel: a subscriber that never reads costs at most [`EVENT_BUFFER`]
    /// events of memory, and never blocks the thread that emits.
    pub(crate) fn subscribe(&self) -> Receiver<Event> {
        let (tx, rx) = sync_channel(EVENT_BUFFER);
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }

    /// Module `module`'s last refused reload or failed build.
    pub(crate) fn last_refusal(&self, module: &str) -> Option<crate::status::Refusal> {
        self.last_refusals
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(module)
            .cloned()
    }

    pub(crate) fn on_event(&self, callback: Callback) {
        self.callbacks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(callback);
    }

    pub(crate) fn emit(&self, event: Event) {
        tracing::debug!(%event, "event");
        let refusal = match &event {
            Event::ReloadFailed { module, reason, .. } => Some((module, reason.clone())),
            Event::BuildFailed {
                module, message, ..
            } => Some((
                module,
                format!("the build failed: {}", first_error(message)),
            )),
            _ => None,
        };
        if let Some((module, reason)) = refusal {
            self.last_refusals
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    module.clone(),
                    crate::status::Refusal {
                        at: std::time::SystemTime::now(),
                        reason,
                    },
                );
        }
        for callback in self
            .callbacks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            callback(&event);
        }
        // Receivers that were dropped are forgotten; a full one misses this event.
        self.channels
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    if self.dropped.fetch_add(1, Ordering::Relaxed) == 0 {
                        tracing::warn!(
                            "an event subscriber does not keep up: events are dropped for it \
                             (see `HotReloader::dropped_events`)"
                        );
                    }
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            });
    }

    /// How many events were not delivered because a subscriber's channel was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// What a `before_reload` hook is told.
#[derive(Debug)]
#[non_exhaustive]
pub struct ReloadRequest<'a> {
    /// The module.
    pub module: &'a str,
    /// The artifact the new version would come from.
    pub artifact: &'a Path,
    /// The version serving now.
    pub current: Option<&'a VersionInfo>,
}

type BeforeHook = Box<dyn Fn(&ReloadRequest<'_>) -> Result<(), String> + Send + Sync>;
type AfterHook = Box<dyn Fn(&str, &Result<ReloadReport, HotError>) + Send + Sync>;

/// The host's hooks around every reload, manual or automatic.
#[derive(Default)]
pub(crate) struct Hooks {
    before: RwLock<Vec<BeforeHook>>,
    after: RwLock<Vec<AfterHook>>,
}

impl Hooks {
    pub(crate) fn add_before(&self, hook: BeforeHook) {
        self.before
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    pub(crate) fn add_after(&self, hook: AfterHook) {
        self.after
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(hook);
    }

    /// The first veto, if any hook refuses.
    pub(crate) fn before(&self, request: &ReloadRequest<'_>) -> Result<(), String> {
        self.before
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .try_for_each(|hook| hook(request))
    }

    pub(crate) fn after(&self, module: &str, outcome: &Result<ReloadReport, HotError>) {
        for hook in self
            .after
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            hook(module, outcome);
        }
    }
}

/// The first line of a compiler's output that says `error`, or its first line.
fn first_error(message: &str) -> &str {
    message
        .lines()
        .find(|line| line.trim_start().starts_with("error"))
        .or_else(|| message.lines().next())
        .unwrap_or("")
        .trim()
}
