//! Watching artifacts (and sources) and starting reloads (and builds) when they change.
//!
//! One thread, `hotreload-watch`, receives the file events (inotify through `notify`) and the
//! ends of builds. A trigger for an artifact (it was closed after writing, created or renamed
//! into place) is checked at once, after the events already queued (one rename comes as
//! several); a removal, or a write in progress, waits a short settle time for the rest of its
//! burst, and an artifact gone for [`MISSING_GRACE`] is reported missing. The check copies the
//! artifact once; a file that is not a complete library yet (a writer paused halfway) is not
//! loaded, and the next close or rename triggers again. A complete artifact identical to the
//! version serving (or to the last build refused for a fault of its own) is ignored, so one
//! burst of a linker's or cargo's writes, renames and links gives one reload. A reload that
//! gave up waiting for a moment without calls ([`HotError::Busy`]) is tried again after the
//! module's quiesce patience.
//!
//! Who runs what:
//! - [`Apply::Background`]: the watcher thread runs the whole reload transaction; callers on
//!   other threads wait only for prepare and commit.
//! - [`Apply::OnPoll`]: the watcher thread only detects; the host's thread runs the
//!   transaction inside `HotReloader::poll()`, at a point it chooses.
//! - Builds run on a thread of their own each (`hotreload-build-<module>`); events and hook
//!   callbacks are delivered on the thread that produced them.

mod anchors;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Weak;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher as _};

use crate::build::{BuildDone, Builds};
use crate::error::HotError;
use crate::events::Event;
use crate::reloader::Shared;
use crate::transaction::stage::{check_library, copy_artifact};

/// Where reloads found by the watcher are applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Apply {
    /// At once, on the watcher thread.
    #[default]
    Background,
    /// When the host calls `HotReloader::poll()`, on the host's thread.
    OnPoll,
}

/// How the watcher behaves.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    apply: Apply,
    settle: Duration,
    build_settle: Duration,
}

impl Default for WatchOptions {
    fn default() -> Self {
        WatchOptions {
            apply: Apply::Background,
            settle: Duration::from_millis(2),
            // An editor's save is one close after writing, or a rename into place; a "save
            // all" comes within a few milliseconds. Every millisecond here is one more of the
            // edit loop a developer waits through.
            build_settle: Duration::from_millis(10),
        }
    }
}

impl WatchOptions {
    /// Background reloads, a 2 ms settle time for artifacts being written or removed and
    /// 10 ms for sources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Where reloads are applied.
    pub fn apply(mut self, apply: Apply) -> Self {
        self.apply = apply;
        self
    }

    /// How long after an artifact's removal (or while it is being written) its check waits
    /// for further events of the same burst. A close after writing, a create or a rename into
    /// place is checked at once: completeness is checked on the file itself, and a build
    /// identical to the one serving is not reloaded again.
    pub fn settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// How long after a source file's last event a build waits (editors write in bursts too).
    pub fn build_settle(mut self, settle: Duration) -> Self {
        self.build_settle = settle;
        self
    }
}

/// Messages to the watcher thread.
pub(crate) enum Msg {
    Fs(notify::Result<notify::Event>),
    Build(BuildDone),
    Rescan,
    /// Check a module's artifact again now (a build it refused for the moment: one that came
    /// while its canary ran).
    Recheck(String),
    Stop,
}

/// The running watcher; stopping it (dropping it) joins its thread.
pub(crate) struct Watcher {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Watcher {
    /// Tells the watcher the set of modules changed.
    pub(crate) fn modules_changed(&self) {
        let _ = self.tx.send(Msg::Rescan);
    }

    /// Where to ask the watcher to check a module's artifact again ([`Msg::Recheck`]).
    pub(crate) fn sender(&self) -> Sender<Msg> {
        self.tx.clone()
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(thread) = self.thread.take() {
            if thread.thread().id() != std::thread::current().id() {
                let _ = thread.join();
            }
        }
    }
}

pub(crate) fn start(shared: Weak<Shared>, options: WatchOptions) -> Result<Watcher, HotError> {
    let (tx, rx) = channel();
    let fs_tx = tx.clone();
    let fs = notify::recommended_watcher(move |event| {
        let _ = fs_tx.send(Msg::Fs(event));
    })
    .map_err(|e| HotError::Watch {
        message: e.to_string(),
    })?;
    let mut state = WatchLoop {
        shared,
        options,
        fs,
        anchors: anchors::Anchors::default(),
        builds: Builds::default(),
        tx: tx.clone(),
        due: BTreeMap::new(),
        build_due: BTreeMap::new(),
        missing: BTreeSet::new(),
        gone_since: BTreeMap::new(),
        batches: Vec::new(),
    };
    let thread = std::thread::Builder::new()
        .name("hotreload-watch".into())
        .spawn(move || {
            let _runtime = crate::os::RuntimeThread::enter();
            state.run(rx)
        })
        .map_err(|e| HotError::Watch {
            message: e.to_string(),
        })?;
    Ok(Watcher {
        tx,
        thread: Some(thread),
    })
}

/// A pending check: when the burst began and when to check if nothing else comes.
#[derive(Clone, Copy)]
struct Due {
    first: Instant,
    at: Instant,
}

/// The longest a burst can delay a check.
const MAX_SETTLE: Duration = Duration::from_millis(250);

/// How long an artifact may be gone before it is reported missing: a linker removes the old
/// file and writes the new one, cargo removes and re-links its copy up, and a large debug
/// library can take a second or more in between.
const MISSING_GRACE: Duration = Duration::from_secs(2);

struct WatchLoop {
    shared: Weak<Shared>,
    options: WatchOptions,
    fs: notify::RecommendedWatcher,
    anchors: anchors::Anchors,
    builds: Builds,
    /// The loop's own channel, for build threads to report on.
    tx: Sender<Msg>,
    /// Artifact checks waiting for their burst to settle.
    due: BTreeMap<String, Due>,
    /// Builds waiting for their burst of edits to settle.
    build_due: BTreeMap<String, Due>,
    /// Modules whose artifact was reported missing (reported once until it reappears).
    missing: BTreeSet<String>,
    /// When each module's artifact was first found gone, until it is back.
    gone_since: BTreeMap<String, Instant>,
    /// Modules rebuilt for one change (a path dependency they share): their new builds are
    /// reloaded together, once every one of them has built (see `on_build_done`).
    batches: Vec<Batch>,
}

/// Modules rebuilt for one change, and which of them have built since.
struct Batch {
    members: BTreeSet<String>,
    built: BTreeSet<String>,
}

impl WatchLoop {
    fn run(&mut self, rx: Receiver<Msg>) {
        self.rescan();
        loop {
            let next = self
                .due
                .values()
                .chain(self.build_due.values())
                .map(|d| d.at)
                .min();
            let message = match next {
                Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let mut stop = match message {
                Ok(message) => self.handle(message),
                Err(RecvTimeoutError::Disconnected) => true,
                Err(RecvTimeoutError::Timeout) => false,
            };
            // Everything already queued first (one rename comes as several events): the checks
            // that are due then see the whole burst at once.
            while !stop {
                let Ok(message) = rx.try_recv() else { break };
                stop = self.handle(message);
            }
            if stop || self.shared.strong_count() == 0 {
                break;
            }
            self.run_due();
        }
        self.builds.stop();
    }

    /// Handles one message; `true` when the loop must stop.
    fn handle(&mut self, message: Msg) -> bool {
        match message {
            Msg::Stop => return true,
            Msg::Fs(Ok(event)) => self.on_fs_event(event),
            Msg::Fs(Err(err)) => self.emit(Event::WatchError {
                message: err.to_string(),
            }),
            Msg::Rescan => self.rescan(),
            Msg::Recheck(module) => self.schedule_now(&module),
            Msg::Build(done) => self.on_build_done(done),
        }
        false
    }

    fn emit(&self, event: Event) {
        if let Some(shared) = self.shared.upgrade() {
            shared.events.emit(event);
        }
    }

    /// Brings watches in line with the registered modules.
    fn rescan(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut added = Vec::new();
        for core in shared.modules() {
            let name = &core.spec.name;
            if self.anchors.add(name, &core.spec.artifact) {
                added.push(core.clone());
                // A build that appeared before watching began, or while the module was
                // registered without one.
                self.schedule_now(name);
            }
            if let Some(manifest) = &core.spec.build_manifest {
                if !self.builds.knows(name) {
                    match self.builds.add(name, manifest, &core.spec.artifact) {
                        Ok(roots) => {
                            // Bring the artifact up to date with the sources now (cargo does
                            // nothing when it is), so the host never runs a stale build.
                            let now = Instant::now();
                            self.build_due.insert(
                                name.clone(),
                                Due {
                                    first: now,
                                    at: now,
                                },
                            );
                            for (path, recursive) in roots.0 {
                                let mode = if recursive {
                                    RecursiveMode::Recursive
                                } else {
                                    RecursiveMode::NonRecursive
                                };
                                if let Err(err) = self.fs.watch(&path, mode) {
                                    self.emit(Event::WatchError {
                                        message: format!("{}: {err}", path.display()),
                                    });
                                }
                            }
                        }
                        Err(message) => self.emit(Event::WatchError { message }),
                    }
                }
            }
        }
        self.reanchor();
        // Said once the watches are in place: from here on, no change is missed.
        for core in added {
            self.emit(Event::Watching {
                module: core.spec.name.clone(),
                path: core.spec.artifact.clone(),
            });
        }
    }

    /// Watches, for every artifact, its directory or the deepest ancestor that exists.
    ///
    /// Planned again after each change of watches until nothing changes: a directory created
    /// inside an anchor before the anchor's watch was in place sent no event, so it is looked
    /// for once the watch is there (and a later one sends an event).
    fn reanchor(&mut self) {
        loop {
            let (add, remove) = self.anchors.plan();
            if add.is_empty() && remove.is_empty() {
                break;
            }
            tracing::trace!(?add, ?remove, "re-anchoring");
            for dir in remove {
                let _ = self.fs.unwatch(&dir);
                self.anchors.unwatched(&dir);
            }
            for dir in add {
                match self.fs.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => self.anchors.watched(dir),
                    // Removed since it was planned: the next plan picks an ancestor.
                    Err(_) if !dir.is_dir() => {}
                    Err(err) => {
                        self.emit(Event::WatchError {
                            message: format!("{}: {err}", dir.display()),
                        });
                        // Not watchable although it exists: planning again would only fail
                        // again.
                        self.schedule_all_reachable();
                        return;
                    }
                }
            }
            self.schedule_all_reachable();
        }
    }

    /// Directories that became watched may already hold an artifact.
    fn schedule_all_reachable(&mut self) {
        for module in self.anchors.newly_reachable() {
            self.schedule_now(&module);
        }
    }

    fn on_fs_event(&mut self, event: notify::Event) {
        tracing::trace!(?event, "file event");
        let mut reanchor = false;
        for (index, path) in event.paths.iter().enumerate() {
            if let Some(module) = self.anchors.module_of(path) {
                if self.builds.is_running(&module) {
                    // The build's own writes: its end checks the artifact, complete by then.
                    continue;
                }
                match artifact_change(&event.kind, index) {
                    // One such event can prove the file complete: the check reads it at once
                    // (and tells a complete library from a partial one itself).
                    Change::Complete => self.schedule_now(&module),
                    Change::Writing => self.extend(&module),
                    // Cargo removes the old library and links the new one at once: look after
                    // the burst, and say "missing" only if it is still gone.
                    Change::Gone => self.schedule(&module),
                    Change::None => {}
                }
            } else if self.anchors.concerns(path) {
                if matches!(
                    event.kind,
                    EventKind::Remove(_) | EventKind::Modify(ModifyKind::Name(_))
                ) && self.anchors.is_watched(path)
                {
                    // The watch died with the directory; a directory of the same name may
                    // exist again by now, and must be watched anew.
                    let _ = self.fs.unwatch(path);
                    self.anchors.unwatched(path);
                    self.anchors.forget_reachable(path);
                }
                reanchor = true;
            }
            if is_edit(&event.kind) {
                let affected = self.builds.note_change(path);
                if affected.len() > 1 {
                    self.join_batch(&affected);
                }
                for module in affected {
                    let now = Instant::now();
                    let due = self.build_due.entry(module).or_insert(Due {
                        first: now,
                        at: now,
                    });
                    due.at = (now + self.options.build_settle).min(due.first + MAX_SETTLE);
                }
            }
        }
        if reanchor {
            self.reanchor();
        }
    }

    /// Puts `modules` in one batch, with every batch they meet: each builds again before the
    /// batch reloads.
    fn join_batch(&mut self, modules: &[String]) {
        let mut batch = Batch {
            members: modules.iter().cloned().collect(),
            built: BTreeSet::new(),
        };
        self.batches.retain_mut(|other| {
            if other.members.is_disjoint(&batch.members) {
                return true;
            }
            // Those built already and not rebuilt for this change stay built.
            let rebuilt: BTreeSet<String> = modules.iter().cloned().collect();
            batch
                .built
                .extend(other.built.difference(&rebuilt).cloned());
            batch.members.append(&mut other.members);
            false
        });
        self.batches.push(batch);
    }

    /// Records a member's successful build; the batch, once each member has built, to reload.
    fn batch_built(&mut self, module: &str) -> Option<Option<BTreeSet<String>>> {
        let index = self
            .batches
            .iter()
            .position(|batch| batch.members.contains(module))?;
        let batch = &mut self.batches[index];
        batch.built.insert(module.to_owned());
        if batch.built.len() < batch.members.len() {
            return Some(None);
        }
        Some(Some(self.batches.swap_remove(index).members))
    }

    fn schedule(&mut self, module: &str) {
        let now = Instant::now();
        let due = self.due.entry(module.to_owned()).or_insert(Due {
            first: now,
            at: now,
        });
        due.at = (now + self.options.settle).min(due.first + MAX_SETTLE);
    }

    fn schedule_now(&mut self, module: &str) {
        let now = Instant::now();
        self.due.insert(
            module.to_owned(),
            Due {
                first: now,
                at: now,
            },
        );
    }

    /// A write to an artifact whose check is pending pushes the check back.
    fn extend(&mut self, module: &str) {
        if self.due.contains_key(module) {
            self.schedule(module);
        }
    }

    fn run_due(&mut self) {
        let now = Instant::now();
        for module in take_due(&mut self.build_due, now) {
            self.start_build(&module);
        }
        for module in take_due(&mut self.due, now) {
            self.check(&module);
        }
    }

    fn start_build(&mut self, module: &str) {
        let tx = self.tx.clone();
        let done = move |done| {
            let _ = tx.send(Msg::Build(done));
        };
        if let Some(package) = self.builds.request(module, done) {
            self.emit(Event::BuildStarted {
                module: module.to_owned(),
                package,
            });
        }
    }

    fn on_build_done(&mut self, mut done: BuildDone) {
        let Some((package, again)) = self.builds.finished(&mut done) else {
            return;
        };
        match done.result {
            Ok(built) => {
                self.emit(Event::BuildFinished {
                    module: done.module.clone(),
                    package,
                    duration: built.duration,
                    replayed: built.replayed,
                });
                // The artifact is complete: checked at once, with no settle time. A member of
                // a batch waits for the others (a member whose build fails holds the batch
                // until it builds), then they are checked and reloaded together.
                self.due.remove(&done.module);
                match self.batch_built(&done.module) {
                    None => self.check(&done.module),
                    Some(None) => {}
                    Some(Some(members)) if again => {
                        // Built again at once: the batch waits for that build.
                        let mut built = members.clone();
                        built.remove(&done.module);
                        self.batches.push(Batch { members, built });
                    }
                    Some(Some(members)) => self.check_set(members),
                }
            }
            Err(message) => {
                self.emit(Event::BuildFailed {
                    module: done.module.clone(),
                    package,
                    message,
                });
                // The artifact's events were not looked at while the build ran: another
                // writer's may have come meanwhile. The check is idempotent.
                self.schedule(&done.module);
            }
        }
        if again {
            self.start_build(&done.module);
        }
    }

    fn report_missing(&mut self, module: &str, path: PathBuf) {
        if path.exists() {
            return;
        }
        let now = Instant::now();
        let since = *self.gone_since.entry(module.to_owned()).or_insert(now);
        if now < since + MISSING_GRACE {
            // Most likely a build replacing it: look again when the grace has passed (an event
            // of the new file checks sooner).
            self.due.entry(module.to_owned()).or_insert(Due {
                first: now,
                at: since + MISSING_GRACE,
            });
            return;
        }
        if self.missing.insert(module.to_owned()) {
            self.emit(Event::ArtifactMissing {
                module: module.to_owned(),
                path,
            });
        }
    }

    /// As [`check`](Self::check), for the members of a batch: those with a complete new build
    /// (not the serving one, nor the last refused) reload together, in one set transaction;
    /// one alone reloads as usual. Modules bound to one thread, or an `OnPoll` watcher, queue
    /// them for `poll()`, which applies them together too.
    fn check_set(&mut self, members: BTreeSet<String>) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let mut copies = Vec::new();
        let mut local = false;
        for module in &members {
            let Ok(core) = shared.core(module) else {
                continue;
            };
            let copy = match copy_artifact(&core.spec, &core.shadow) {
                Ok(copy) => copy,
                Err(_) => {
                    // Reported, and retried, the usual way.
                    self.check(module);
                    continue;
                }
            };
            if let Err(reason) = check_library(copy.bytes()) {
                self.emit(Event::ArtifactIncomplete {
                    module: module.clone(),
                    path: core.spec.artifact.clone(),
                    reason,
                });
                continue;
            }
            let serving = crate::transaction::same_bytes(&core, &copy).ok().flatten();
            if serving.is_some() || core.was_refused(&copy) {
                continue;
            }
            local |= core.access.has_owner();
            copies.push((module.clone(), copy));
        }
        match copies.len() {
            0 => {}
            1 => self.check(&copies[0].0),
            _ if local || self.options.apply == Apply::OnPoll => {
                let names: Vec<String> = copies.iter().map(|(module, _)| module.clone()).collect();
                shared.mark_pending_set(&names);
            }
            _ => {
                let names = copies.iter().map(|(module, _)| module.clone()).collect();
                // Events and hooks report the outcome, for each member.
                if let Err(err) = shared.reload_set(names, copies) {
                    tracing::warn!("the set reload after a shared change failed: {err}");
                }
            }
        }
    }

    /// Reads the artifact once (through the same permission check as every read) and, if it
    /// is a complete library different from the version serving (and from the last one
    /// refused), reloads it or queues it for `poll()`. An artifact refused for its
    /// permissions goes to the transaction too, which reads and refuses it again itself and
    /// reports the refusal as it reports every failed reload: with its event and hooks.
    fn check(&mut self, module: &str) {
        if self
            .batches
            .iter()
            .any(|batch| batch.members.contains(module))
        {
            // Its batch checks it, with the others, once they have all built.
            return;
        }
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let Ok(core) = shared.core(module) else {
            return;
        };
        let path = core.spec.artifact.clone();
        let read = match copy_artifact(&core.spec, &core.shadow) {
            Ok(read) => Some(read),
            Err(HotError::ArtifactNotFound { .. }) => return self.report_missing(module, path),
            Err(HotError::UnsafeArtifact { .. }) => None,
            Err(err) => {
                return self.emit(Event::WatchError {
                    message: err.to_string(),
                });
            }
        };
        self.missing.remove(module);
        self.gone_since.remove(module);
        if let Some(read) = &read {
            if let Err(reason) = check_library(read.bytes()) {
                return self.emit(Event::ArtifactIncomplete {
                    module: module.to_owned(),
                    path,
                    reason,
                });
            }
            let serving = crate::transaction::same_bytes(&core, read).ok().flatten();
            if serving.is_some() || core.was_refused(read) {
                tracing::debug!(module, "artifact unchanged, or the build last refused");
                return;
            }
        }
        match self.options.apply {
            // A module bound to one thread reloads there only: at its `poll()`. Whoever runs
            // the reload, a build refused for a fault of its own is remembered by the module
            // and not offered again; after a veto, a failed save or an I/O error, the same
            // build is tried again at its next change event.
            Apply::Background if !core.access.has_owner() => {
                // Events and hooks report the outcome. A reload that gave up waiting for a
                // moment without calls is tried again after the same patience.
                if let Err(HotError::Busy { .. }) = shared.reload(&core, read) {
                    let now = Instant::now();
                    self.due.insert(
                        module.to_owned(),
                        Due {
                            first: now,
                            at: now + core.spec.quiesce.patience,
                        },
                    );
                }
            }
            Apply::Background | Apply::OnPoll => shared.mark_pending(module),
        }
    }
}

/// Removes and returns the modules whose time has come.
fn take_due(due: &mut BTreeMap<String, Due>, now: Instant) -> Vec<String> {
    let ready: Vec<String> = due
        .iter()
        .filter(|(_, d)| d.at <= now)
        .map(|(module, _)| module.clone())
        .collect();
    for module in &ready {
        due.remove(module);
    }
    ready
}

/// What an event says about an artifact.
enum Change {
    /// Closed after writing, created, or renamed into place: worth a check.
    Complete,
    /// Being written.
    Writing,
    /// Removed or renamed away.
    Gone,
    None,
}

fn artifact_change(kind: &EventKind, path_index: usize) -> Change {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) | EventKind::Create(_) => {
            Change::Complete
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::To)) => Change::Complete,
        // A rename within one watched directory: paths are [from, to].
        EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
            if path_index == 0 {
                Change::Gone
            } else {
                Change::Complete
            }
        }
        EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
            Change::Gone
        }
        EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => Change::Writing,
        _ => Change::None,
    }
}

/// Whether an event on a source file is an edit worth building for (not a mere open or read;
/// not a write still in progress: its close comes after).
fn is_edit(kind: &EventKind) -> bool {
    matches!(
        kind,
        EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(_)
            | EventKind::Remove(_)
            | EventKind::Modify(ModifyKind::Name(_))
    )
}
