//! The reload transaction, one file per step:
//!
//! 1. [`stage`]: read the artifact, check it is a complete shared library for this machine,
//!    write it to a unique shadow path.
//! 2. [`open`]: dlopen the shadow copy (symbols resolved now, local visibility) and find the
//!    module's descriptor.
//! 3. [`verify`]: framework ABI, module name, export-table layout, API version: before anything
//!    running is touched.
//! 4. [`prepare`]: save the running state, restore it into the new version.
//! 5. [`commit`]: publish the new version atomically.
//! 6. [`retire`]: destroy the old state with the old code, keep the old version loaded for
//!    rollback, close what falls out of the history, and record whether the OS really
//!    unmapped it.
//!
//! [`rollback`] goes back to the newest kept version, with the current state if that version
//! can read it, otherwise with the state it had when it was replaced. [`probation`] rolls
//! back by itself when a new version panics within a window after its commit.
//!
//! Steps 1 to 3 run while callers keep using the running version; steps 4 and 5 hold the
//! module's write lock. A failure at any step drops what the transaction built (closing the
//! new library and deleting its shadow copy) and leaves the running version as it was.

pub(crate) mod canary;
pub(crate) mod commit;
pub(crate) mod link;
pub(crate) mod open;
pub(crate) mod prepare;
pub(crate) mod probation;
pub(crate) mod quiesce;
pub(crate) mod retire;
pub(crate) mod rollback;
pub(crate) mod set;
pub(crate) mod stage;
pub(crate) mod verify;

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::HotError;
use crate::module::{ModuleCore, ModuleSpec, RefusedBuild};
use crate::version::{Live, LoadedVersion, RetiredVersion};
use crate::{ShadowDir, VersionInfo};

/// Time spent in each step of one transaction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StepTimings {
    /// Copying the artifact and checking the copy (it is not hashed before the swap, unless
    /// the module pins digests).
    pub stage: Duration,
    /// dlopen and descriptor lookup.
    pub open: Duration,
    /// ABI, name, layout and API version checks.
    pub verify: Duration,
    /// Looking for a moment with no call in flight, without holding new calls back (see
    /// [`Quiesce`](crate::Quiesce)).
    pub quiesce: Duration,
    /// Waiting for the calls in progress to return with new calls held back: zero unless
    /// the module's patience ran out.
    pub wait: Duration,
    /// Saving the old state and restoring it into the new version, with every caller
    /// waiting.
    pub prepare: Duration,
    /// The same, with `&self` callers going on and only `&mut self` callers waiting: when
    /// the running build declares `concurrent_save` (then `prepare` is zero).
    pub prepare_shared: Duration,
    /// Publishing the new version (callers wait).
    pub commit: Duration,
    /// The SHA-256 of the new version's bytes, for its [`VersionInfo`], after the swap
    /// (callers do not wait).
    pub hash: Duration,
    /// Destroying the old state and closing the old library (callers do not wait).
    pub retire: Duration,
}

impl StepTimings {
    /// The whole transaction.
    pub fn total(&self) -> Duration {
        self.stage
            + self.open
            + self.verify
            + self.quiesce
            + self.wait
            + self.prepare
            + self.prepare_shared
            + self.commit
            + self.hash
            + self.retire
    }

    /// How long new calls were held back: the wait (if the patience ran out), prepare and
    /// commit. No `&self` caller was blocked longer than this by the reload.
    pub fn pause(&self) -> Duration {
        self.wait + self.prepare + self.commit
    }

    /// How long new `&mut self` calls were held back: the pause, and a `prepare_shared`.
    pub fn exclusive_pause(&self) -> Duration {
        self.pause() + self.prepare_shared
    }
}

/// `stage 14.25ms, open 193.73µs, verify 520.77µs, prepare 93.51µs, commit 1.80µs, hash
/// 880.12µs, retire 310.20µs`
impl std::fmt::Display for StepTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stage {:.2?}, open {:.2?}, verify {:.2?}, ",
            self.stage, self.open, self.verify
        )?;
        if !self.quiesce.is_zero() || !self.wait.is_zero() {
            write!(f, "quiesce {:.2?}, wait {:.2?}, ", self.quiesce, self.wait)?;
        }
        if self.prepare_shared.is_zero() {
            write!(f, "prepare {:.2?}, ", self.prepare)?;
        } else {
            write!(f, "prepare {:.2?} beside calls, ", self.prepare_shared)?;
        }
        write!(
            f,
            "commit {:.2?}, hash {:.2?}, retire {:.2?}",
            self.commit, self.hash, self.retire
        )
    }
}

/// What a successful reload did.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReloadReport {
    /// The version that served before (`None` for the first load of a module registered
    /// before it was built).
    pub from: Option<VersionInfo>,
    /// The version that serves now.
    pub to: VersionInfo,
    /// Time per step.
    pub timings: StepTimings,
    /// The versions this reload closed: the previous one if the module keeps no history,
    /// otherwise the oldest one it pushed out of the history. Each says whether the OS kept
    /// it mapped after it was closed (glibc does when it registered thread-local
    /// destructors), and whether the runtime holds it open because a thread may still run
    /// in it ([`RetiredVersion::held`]).
    pub closed: Vec<RetiredVersion>,
    /// Versions held open by earlier retires that this reload found free and closed.
    pub released: Vec<RetiredVersion>,
    /// The state migrations this reload ran, in order (`v1 -> v2 (from_v1)`); empty when the
    /// new build has the running one's state schema.
    pub migrations: Vec<String>,
    /// The new build's methods that the host was not compiled with: it serves the methods
    /// the host knows, and these wait for a host that declares them.
    pub unknown_methods: Vec<String>,
    /// The new build's methods whose own source (signature and body) differs from the
    /// replaced build's, or that it did not have: each method's source digest, recorded by
    /// `#[hot_module]`, compared between the two builds. Code the methods call outside them
    /// (helpers, other crates) is not part of a method's digest. See
    /// [`method_count`](Self::method_count).
    pub changed_methods: Vec<String>,
    /// How many methods the new build exports.
    pub method_count: usize,
    /// The artifact was the build that serves: the very file the serving version was read
    /// from (same device, inode, size and times: nothing was read), or a file with the same
    /// bytes (copied and compared with the serving copy, `timings.stage`, then discarded). Nothing was loaded, `from`
    /// and `to` are the serving version, and no event was sent.
    pub unchanged: bool,
}

/// `load #1 -> load #2 in 15.77ms (stage 14.25ms, …; callers paused 95.31µs)`, or
/// `load #2 unchanged`.
impl std::fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.unchanged {
            return write!(f, "load #{} unchanged", self.to.generation);
        }
        match &self.from {
            Some(from) => write!(f, "load #{} -> ", from.generation)?,
            None => f.write_str("nothing -> ")?,
        }
        write!(
            f,
            "load #{} in {:.2?} ({}; callers paused {:.2?})",
            self.to.generation,
            self.timings.total(),
            self.timings,
            self.timings.pause()
        )
    }
}

impl ReloadReport {
    /// "2 of 14 methods changed (step, gravity)".
    pub fn changes(&self) -> String {
        let mut line = format!(
            "{} of {} method{} changed",
            self.changed_methods.len(),
            self.method_count,
            if self.method_count == 1 { "" } else { "s" }
        );
        if !self.changed_methods.is_empty() {
            line.push_str(&format!(" ({})", self.changed_methods.join(", ")));
        }
        line
    }
}

/// The methods of `new` whose source digest differs from the serving build's, or that it
/// lacks; every method when nothing serves. Under the transaction lock.
fn changed_methods(core: &ModuleCore, new: &LoadedVersion) -> Vec<String> {
    let serving = core.access.serving_descriptor();
    // SAFETY: under the reloader's transaction lock (held by every transaction): the serving
    // version is not replaced, so it stays loaded while its descriptor is read here.
    let old = serving.map(|(_, descriptor)| unsafe { descriptor.get() });
    let old_methods = old.map_or(&[][..], |old| old.methods.as_slice());
    new.descriptor()
        .methods
        .iter()
        .filter(|method| {
            !old_methods
                .iter()
                .any(|o| o.name.as_str() == method.name.as_str() && o.digest == method.digest)
        })
        .map(|method| method.name.as_str().to_owned())
        .collect()
}

/// Times one step inside its own tracing span.
fn step<R>(name: &'static str, slot: &mut Duration, f: impl FnOnce() -> R) -> R {
    let _span = tracing::debug_span!("step", step = name).entered();
    let start = Instant::now();
    let out = f();
    *slot = start.elapsed();
    out
}

/// Steps 1 to 3: a verified new version, not yet live. A library opened and then refused
/// comes back with the error, to be closed like a version that stops serving.
pub(crate) fn load_verified(
    spec: &ModuleSpec,
    shadow: &ShadowDir,
    generation: u64,
    bytes: Option<stage::ArtifactCopy>,
    timings: &mut StepTimings,
) -> Result<LoadedVersion, Box<Refused>> {
    // A copy made before the transaction (by the watcher, or by a reload that first checked
    // whether the content changed) counts in this step's time.
    let copied_before = bytes
        .as_ref()
        .map_or(Duration::ZERO, stage::ArtifactCopy::took);
    let staged = step("stage", &mut timings.stage, || {
        let mut copy = match bytes {
            Some(copy) => copy,
            None => stage::copy_artifact(spec, shadow)?,
        };
        stage::stage(spec, shadow, generation, &mut copy).map_err(|err| {
            let build = err.is_build_fault().then(|| RefusedBuild {
                len: copy.bytes().len() as u64,
                sha256: copy.sha256().to_owned(),
            });
            Box::new(Refused {
                err,
                opened: None,
                build,
            })
        })
    })?;
    timings.stage += copied_before;
    // Hashed only if the build is refused for its own fault (`open` hashes a copy it
    // cannot open before the copy goes).
    let (len, sha256) = (staged.len, staged.sha256.clone());
    let refused_build = move |err: &HotError| {
        err.is_build_fault().then(|| RefusedBuild {
            len,
            sha256: sha256.get(),
        })
    };
    let opened = step("open", &mut timings.open, || {
        open::open(spec, staged, generation)
    })
    .map_err(|err| {
        Box::new(Refused {
            build: refused_build(&err),
            err,
            opened: None,
        })
    })?;
    step("verify", &mut timings.verify, || {
        verify::verify(spec, opened)
    })
    .map_err(|refused| {
        let (err, opened) = *refused;
        Box::new(Refused {
            build: refused_build(&err),
            err,
            opened: Some(opened),
        })
    })
}

/// Closes a verified version that will not serve, like a version that stops serving: held if
/// a thread it started (in `restore`, say) may still run in it.
pub(crate) fn close_unused(
    version: LoadedVersion,
    book: &mut crate::module::Book,
    spec: &ModuleSpec,
) {
    let closed = retire::close(version, book, spec);
    if closed.held.is_some() {
        book.record_retired([closed]);
    }
}

/// Closes what a refused load opened; why it was refused, and the build if it is at fault.
pub(crate) fn close_refused(
    refused: Refused,
    book: &mut crate::module::Book,
    module: &str,
) -> (HotError, Option<RefusedBuild>) {
    let Refused { err, opened, build } = refused;
    if let Some(opened) = opened {
        let (info, image) = opened.into_refused(module);
        let closed = retire::close_unverified(info, image, book);
        if closed.held.is_some() {
            book.record_retired([closed]);
        }
    }
    (err, build)
}

/// Why a new build will not serve, with the library if it was opened and, if the build is at
/// fault, what the watcher needs to recognise it.
pub(crate) struct Refused {
    err: HotError,
    opened: Option<open::OpenedLibrary>,
    build: Option<RefusedBuild>,
}

impl From<HotError> for Box<Refused> {
    fn from(err: HotError) -> Self {
        Box::new(Refused {
            err,
            opened: None,
            build: None,
        })
    }
}

/// The first load of a module, at registration: steps 1 to 3, then a fresh state.
pub(crate) fn load_initial(spec: &ModuleSpec, shadow: &ShadowDir) -> Result<Live, HotError> {
    let generation = 1;
    let _span = tracing::info_span!("load", module = %spec.name, generation).entered();
    let mut timings = StepTimings::default();
    // No bookkeeping yet to hold a refused library in: dropping it leaves it mapped if a
    // thread may run in it (see `Image`).
    let version = load_verified(spec, shadow, generation, None, &mut timings)
        .map_err(|refused| refused.err)?;
    let state = step("prepare", &mut timings.prepare, || {
        prepare::construct(&version)
    })?;
    step("hash", &mut timings.hash, || {
        version.image.shadow.sha256.get()
    });
    tracing::info!(
        artifact = %version.info.artifact.display(),
        api_version = version.info.api_version,
        ?timings,
        "module loaded"
    );
    Ok(Live { version, state })
}

/// A whole reload of `core`'s artifact (its current bytes, or `bytes` already read from it),
/// linked to the other modules of `registry`. The caller holds the reloader's transaction
/// lock.
pub(crate) fn reload(
    core: &Arc<ModuleCore>,
    bytes: Option<stage::ArtifactCopy>,
    registry: &[Arc<ModuleCore>],
) -> Result<ReloadReport, HotError> {
    // Refused before anything is staged: another thread than a local module's owner, or
    // from inside one of the module's calls. From here on this thread counts as inside an
    // exclusive call of the module (module code run by the transaction cannot re-enter it).
    let mark = core.access.begin_transaction(&core.spec.name)?;
    core.no_canary()?;
    let mut book = core.book();
    let generation = book.next_generation;
    book.next_generation += 1;
    let _span = tracing::info_span!("reload", module = %core.spec.name, generation).entered();
    let mut timings = StepTimings::default();
    let loaded = load_verified(&core.spec, &core.shadow, generation, bytes, &mut timings);
    swap_in(core, mark, book, generation, loaded, registry, timings)
}

/// Steps 3b to 6 of a reload, for a version loaded and verified (or refused) by steps 1 to
/// 3: link it, carry the state into it, commit, retire the old one. Also how a canary is
/// promoted: its version, loaded when it started, is swapped in like a new build.
pub(crate) fn swap_in(
    core: &Arc<ModuleCore>,
    mark: crate::access::TransactionMark<'_>,
    mut book: std::sync::MutexGuard<'_, crate::module::Book>,
    generation: u64,
    loaded: Result<LoadedVersion, Box<Refused>>,
    registry: &[Arc<ModuleCore>],
    mut timings: StepTimings,
) -> Result<ReloadReport, HotError> {
    let (mut changed, mut method_count) = (Vec::new(), 0);
    let result = match loaded {
        Ok(version) => {
            // Linked before anything running is touched; counted with verification.
            let started = Instant::now();
            let linked = link::link(&[link::NewBuild::of(core, &version)], registry);
            changed = changed_methods(core, &version);
            method_count = version.descriptor().methods.len();
            timings.verify += started.elapsed();
            match linked {
                Ok(installs) => commit::commit(core, &mark, version, installs, &mut timings),
                Err(err) => Err(Box::new((err, version))),
            }
            .map_err(|refused| {
                let (err, refused) = *refused;
                core.remember_refused(&err, || {
                    Some(RefusedBuild {
                        len: refused.info.artifact_len,
                        sha256: refused.info().sha256,
                    })
                });
                close_unused(refused, &mut book, &core.spec);
                err
            })
        }
        Err(refused) => {
            let (err, build) = close_refused(*refused, &mut book, &core.spec.name);
            core.remember_refused(&err, || build);
            Err(err)
        }
    };
    let committed = match result {
        Ok(done) => done,
        Err(err) => {
            tracing::warn!("reload refused, the running version keeps serving: {err}");
            let refused = stage::shadow_path(&core.spec, &core.shadow, generation);
            if crate::os::is_mapped(&refused) == Some(true) {
                tracing::warn!(
                    shadow = %refused.display(),
                    "the refused build was closed but stays mapped (it registered thread-local \
                     destructors, or a thread it started may still run in it)"
                );
            }
            return Err(err);
        }
    };
    let to = step("hash", &mut timings.hash, || VersionInfo {
        sha256: committed.sha256.get(),
        ..committed.info
    });
    book.serving_identity = committed.identity;
    let migrations = committed.migrations;
    let unknown_methods = committed.unknown_methods;
    core.remember_refused_none();
    let from = committed.old.as_ref().map(|old| old.version.info());
    let (closed, released) = match committed.old {
        Some(old) => step("retire", &mut timings.retire, || {
            retire::retire(
                old,
                committed.snapshot,
                committed.mutations,
                &mut book,
                &core.spec,
            )
        }),
        None => (Vec::new(), Vec::new()),
    };
    book.record_retired(closed.iter().cloned());
    drop(book);
    drop(mark);
    if let Some(policy) = core.spec.probation {
        core.probation.start(policy, to.generation);
    }
    tracing::info!(
        from = from.as_ref().map(|f| f.generation),
        to = to.generation,
        pause_us = timings.pause().as_micros() as u64,
        total_us = timings.total().as_micros() as u64,
        "module reloaded"
    );
    Ok(ReloadReport {
        from,
        to,
        timings,
        closed,
        released,
        migrations,
        unknown_methods,
        changed_methods: changed,
        method_count,
        unchanged: false,
    })
}

/// A reload of the build that serves: answered without a transaction when the artifact is
/// the very file the serving version was read from (same device, inode, size and times: one
/// `stat`).
pub(crate) fn unchanged(core: &ModuleCore) -> Result<Option<ReloadReport>, HotError> {
    let book = core.book_for_query()?;
    let Some(serving) = book.serving_identity else {
        return Ok(None);
    };
    drop(book);
    let now = crate::version::ArtifactIdentity::of_path(&core.spec.artifact);
    if now != Some(serving) {
        return Ok(None);
    }
    Ok(core.version().map(unchanged_report))
}

/// A reload of a copy whose bytes are the serving version's (cargo re-linked the same build,
/// a file was touched): answered without a transaction, and the file remembered as the
/// serving one, so that the next reload of it costs one `stat`.
pub(crate) fn same_bytes(
    core: &ModuleCore,
    copy: &stage::ArtifactCopy,
) -> Result<Option<ReloadReport>, HotError> {
    let Some(current) = core.version() else {
        return Ok(None);
    };
    if !copy.same_as(&current.shadow, current.artifact_len) {
        return Ok(None);
    }
    let mut book = core.book_for_query()?;
    if core
        .version()
        .is_some_and(|v| v.generation == current.generation)
    {
        book.serving_identity = copy.identity();
    }
    drop(book);
    let mut report = unchanged_report(current);
    report.timings.stage = copy.took();
    Ok(Some(report))
}

fn unchanged_report(current: VersionInfo) -> ReloadReport {
    ReloadReport {
        changed_methods: Vec::new(),
        method_count: 0,
        from: Some(current.clone()),
        to: current,
        timings: StepTimings::default(),
        closed: Vec::new(),
        released: Vec::new(),
        migrations: Vec::new(),
        unknown_methods: Vec::new(),
        unchanged: true,
    }
}
