//! The values a version of a module goes through: its shadow file (the staged copy), its
//! image (the library opened from it), loaded (verified), live (serving, with its state), kept (replaced, still loaded for rollback), retired
//! (closed, or held mapped while a thread may still run in it).

use std::path::PathBuf;
use std::sync::Arc;

use abi_stable::std_types::RResult;
use hotreload_abi::{LifecycleEntries, StatePtr};

use crate::VersionInfo;
use crate::os;

/// Which file an artifact was, when it was read: a build put in place since (written anew,
/// renamed over it, or rewritten in place) differs in one of these. Compared before reading,
/// so that reloading an unchanged artifact costs one `stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArtifactIdentity {
    dev: u64,
    ino: u64,
    len: u64,
    /// Modification and status-change times, in nanoseconds (the status-change time cannot
    /// be set back by a writer).
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl ArtifactIdentity {
    /// When the artifact was last written (its build time, for a build cargo wrote).
    pub(crate) fn modified(&self) -> Option<std::time::SystemTime> {
        let (seconds, nanos) = self.mtime;
        let since =
            std::time::Duration::new(u64::try_from(seconds).ok()?, u32::try_from(nanos).ok()?);
        std::time::UNIX_EPOCH.checked_add(since)
    }

    /// The identity of the file at `path` now; `None` if it is not there, or where the
    /// platform does not say.
    pub(crate) fn of_path(path: &std::path::Path) -> Option<Self> {
        Self::of(&std::fs::metadata(path).ok()?)
    }

    /// The identity of the file `meta` describes; `None` where the platform does not say.
    pub(crate) fn of(meta: &std::fs::Metadata) -> Option<Self> {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Some(ArtifactIdentity {
                dev: meta.dev(),
                ino: meta.ino(),
                len: meta.len(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
            })
        }
        #[cfg(not(unix))]
        {
            let _ = meta;
            None
        }
    }
}

/// A shadow copy, deleted when dropped (after the library opened from it is closed).
#[derive(Debug)]
pub(crate) struct ShadowFile {
    pub path: PathBuf,
    pub artifact: PathBuf,
    pub len: u64,
    /// SHA-256 of the bytes staged: computed when first asked (after the swap, off the path
    /// to it), or at staging when the module pins digests.
    pub sha256: Sha256Cell,
    /// The size of the descriptor symbol in the file's symbol table: how much of it may be
    /// read once the library is open.
    pub descriptor_size: u64,
    /// Which file the artifact was when its bytes were read.
    pub identity: Option<ArtifactIdentity>,
    /// Where the library refers to the C library's thread-local destructor registration.
    pub dtor_slots: os::DtorSlots,
    /// Its split debug info beside it, removed with it.
    #[allow(dead_code, reason = "held for its `Drop`")]
    pub debug_files: crate::transaction::stage::DebugFiles,
}

/// The SHA-256 of a shadow copy, in hex: computed once, by the first to ask, from the file.
///
/// Hashing is the one step of staging that reads every byte (about 0.9 ms for a 1.5 MB
/// module here), and nothing before the swap needs the digest unless the module pins
/// digests: the transaction asks for it right after the swap, before it reports.
#[derive(Debug, Clone)]
pub(crate) struct Sha256Cell {
    hex: Arc<std::sync::OnceLock<String>>,
    path: PathBuf,
}

impl Sha256Cell {
    /// The digest of the file that `path` will name.
    pub(crate) fn new(path: PathBuf) -> Self {
        Sha256Cell {
            hex: Arc::default(),
            path,
        }
    }

    /// Records the digest of the bytes the file holds, when the caller hashed them anyway.
    pub(crate) fn set(&self, hex: &str) {
        let _ = self.hex.set(hex.to_owned());
    }

    /// The digest, hashing the file if nobody has yet (another thread asking meanwhile waits
    /// for that). Empty if the file cannot be read, which happens only to a version closed
    /// before anyone asked.
    pub(crate) fn get(&self) -> String {
        self.hex
            .get_or_init(|| {
                crate::transaction::stage::sha256_of_file(&self.path).unwrap_or_else(|err| {
                    tracing::warn!(path = %self.path.display(), "cannot hash a shadow copy: {err}");
                    String::new()
                })
            })
            .clone()
    }
}

impl Drop for ShadowFile {
    fn drop(&mut self) {
        // A library the OS keeps mapped stays valid after its file is unlinked.
        if let Err(err) = std::fs::remove_file(&self.path) {
            tracing::debug!(path = %self.path.display(), "cannot delete shadow copy: {err}");
        }
    }
}

/// A library opened from its shadow copy. Dropping it closes the library, unless a thread of
/// the process may still run in it: then the image stays mapped for the rest of the process
/// (a warning says so), because unmapping it would crash that thread. Every way a version
/// goes away passes here, refused builds included (their initialisers or their `restore`
/// may have started threads).
pub(crate) struct Image {
    /// `None` once closed or leaked.
    handle: Option<libloading::Library>,
    /// Dropped after the library is closed (fields drop after `Drop::drop`).
    pub shadow: ShadowFile,
    /// The process's threads just before the library was opened: none of them was started
    /// by its code (see `os::thread_in_image`).
    census: os::ThreadCensus,
    /// Its thread-local destructors, when the runtime took them over from the C library.
    dtors: Option<Arc<os::ImageDtors>>,
    /// Its imports (once verified): the address its code passes back to the host with each
    /// call into another module, so they live as long as the image is mapped.
    pub links: Option<Arc<crate::link::Links>>,
}

impl Image {
    pub(crate) fn new(
        (handle, dtors): (libloading::Library, Option<Arc<os::ImageDtors>>),
        shadow: ShadowFile,
        census: os::ThreadCensus,
    ) -> Self {
        Image {
            handle: Some(handle),
            shadow,
            census,
            dtors,
            links: None,
        }
    }

    pub(crate) fn handle(&self) -> &libloading::Library {
        match &self.handle {
            Some(handle) => handle,
            None => unreachable!("the handle is taken only when the image is dropped or leaked"),
        }
    }

    /// Why the image must stay mapped, if it must: a thread-local destructor of it pending
    /// on another thread (this thread's run now), or a thread that may still run in it.
    pub(crate) fn in_use(&self) -> Option<String> {
        self.dtors
            .as_ref()
            .and_then(|dtors| dtors.settle())
            .or_else(|| os::thread_in_image(&self.shadow.path, &self.census))
    }

    /// Closes the library without checking the process's threads again: for a caller that
    /// has just found nothing running in it (a second look could only be less sure: a thread
    /// busy on a CPU cannot be read, and the image would then be left mapped for good).
    pub(crate) fn close_checked(mut self) {
        self.close();
    }

    fn close(&mut self) {
        if let Some(dtors) = &self.dtors {
            dtors.release_keys();
            dtors.forget();
        }
        drop(self.handle.take());
    }

    /// Leaves the library mapped for the rest of the process (its shadow copy is deleted; a
    /// mapped image does not need its file).
    pub(crate) fn leak(mut self) {
        std::mem::forget(self.handle.take());
        std::mem::forget(self.links.take());
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.handle.is_none() {
            return;
        }
        if let Some(reason) = self.in_use() {
            tracing::warn!(
                shadow = %self.shadow.path.display(),
                "a library is left mapped for the rest of the process: {reason}"
            );
            std::mem::forget(self.handle.take());
            std::mem::forget(self.links.take());
            return;
        }
        self.close();
    }
}

/// A version's state schema and the migrations its build declares, copied out of its
/// descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Schema {
    pub version: u32,
    /// `(from, to, name)` of each step, up (`to = from + 1`) or down (`to = from - 1`).
    pub steps: Vec<(u32, u32, String)>,
    /// `#[hot_module(concurrent_save = true)]`: the build's `&self` methods do not change
    /// the state, so it may be saved while they run.
    pub concurrent_save: bool,
}

/// How a state is carried from one version to another: the schema the old build saves it as,
/// and the migration steps on the way, named (`v1 -> v2 (from_v1)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Carry {
    pub save_as: u32,
    pub steps: Vec<String>,
}

impl Schema {
    pub(crate) fn of(descriptor: &hotreload_abi::ModuleDescriptor) -> Self {
        Schema {
            version: descriptor.state_version,
            steps: descriptor
                .migrations
                .iter()
                .map(|step| (step.from, step.to, step.name.as_str().to_owned()))
                .collect(),
            concurrent_save: descriptor.concurrent_save,
        }
    }

    fn step(&self, from: u32, to: u32) -> Option<String> {
        self.steps
            .iter()
            .find(|step| step.0 == from && step.1 == to)
            .map(|step| format!("v{from} -> v{to} ({})", step.2))
    }

    /// How a state of this schema reaches `new`'s: `new` migrates it up, or this build writes
    /// it down; the reason if neither can.
    pub(crate) fn carry_to(&self, new: &Schema) -> Result<Carry, String> {
        let (old, target) = (self.version, new.version);
        if target >= old {
            let steps: Option<Vec<String>> = (old..target).map(|k| new.step(k, k + 1)).collect();
            return steps
                .map(|steps| Carry {
                    save_as: old,
                    steps,
                })
                .ok_or_else(|| {
                    format!(
                        "the new build (schema v{target}) declares no way up from v{old}: it needs \
                     `#[migrate(from = k)]` for every k from {old} to {}",
                        target - 1
                    )
                });
        }
        let steps: Option<Vec<String>> = (target..old).rev().map(|k| self.step(k + 1, k)).collect();
        steps
            .map(|steps| Carry {
                save_as: target,
                steps,
            })
            .ok_or_else(|| {
                format!(
                    "the running build (schema v{old}) declares no way down to v{target}: it \
                     needs `#[migrate(to = k)]` for every k from {} down to {target}",
                    old - 1
                )
            })
    }
}

/// A verified version: its table's layout matches the host's.
pub(crate) struct LoadedVersion {
    /// Its description, but for the digest (empty here: see [`LoadedVersion::info`]).
    pub info: VersionInfo,
    /// Its state schema and migrations.
    pub schema: Schema,
    /// The build's methods the host was not compiled with (it cannot call them).
    pub unknown_methods: Vec<String>,
    /// The export table as the host was compiled with it (`T::Table`), holding the build's
    /// function pointers.
    pub table: crate::transaction::verify::HostTable,
    /// The lifecycle entries, copied out of the table.
    pub lifecycle: LifecycleEntries,
    /// Its descriptor, in its image.
    pub descriptor: Descriptor,
    /// The library, open as long as the version exists.
    pub image: Image,
    /// Its calls' metrics, unless the host turned them off.
    pub meter: Option<Arc<crate::metrics::Meter>>,
}

/// The address of a loaded version's descriptor, in its image.
#[derive(Clone, Copy)]
pub(crate) struct Descriptor(*const hotreload_abi::ModuleDescriptor);

// SAFETY: a plain address of an immutable static in an image; it is dereferenced only while
// that image is mapped (see `LoadedVersion::descriptor`), from any thread.
unsafe impl Send for Descriptor {}
// SAFETY: see the `Send` impl.
unsafe impl Sync for Descriptor {}

impl Descriptor {
    /// The descriptor verification checked at `address`.
    pub(crate) fn new(address: *const hotreload_abi::ModuleDescriptor) -> Self {
        Descriptor(address)
    }

    /// The descriptor.
    ///
    /// # Safety
    /// The version it belongs to must stay loaded for `'a`: it serves, and the reloader's
    /// transaction lock (which every replacement holds) is held for `'a`.
    pub(crate) unsafe fn get<'a>(self) -> &'a hotreload_abi::ModuleDescriptor {
        // SAFETY: verified at this address, in an image mapped for 'a (the contract).
        unsafe { &*self.0 }
    }
}

// SAFETY: `table` is the host's copy of the build's entries (owned here and never written
// after verification), function pointers into the library's image, which
// any thread may call while the library is open, and the `LoadedVersion` owns the library
// (its `image`).
unsafe impl Send for LoadedVersion {}
// SAFETY: see the `Send` impl; nothing in a `LoadedVersion` is mutated through `&self`.
unsafe impl Sync for LoadedVersion {}

/// The version serving calls, and its state.
pub(crate) struct Live {
    pub version: LoadedVersion,
    pub state: StatePtr,
}

impl Live {
    /// Retires the state with the code that made it: the module's retire hook runs on it, the
    /// version's workers are told to stop, and the state is dropped. The version stays loaded.
    pub(crate) fn into_version(self) -> LoadedVersion {
        let info = &self.version.info;
        if let RResult::RErr(err) = (self.version.lifecycle.retire)(self.state) {
            tracing::warn!(
                module = %info.module,
                generation = info.generation,
                "the retire hook failed: {}",
                crate::error::ModuleFault::from(err)
            );
        }
        if let RResult::RErr(err) = (self.version.lifecycle.destroy)(self.state) {
            tracing::warn!(
                module = %info.module,
                generation = info.generation,
                "dropping the state failed: {}",
                crate::error::ModuleFault::from(err)
            );
        }
        self.version
    }
}

/// A replaced version kept loaded for rollback, with the state it had when it was replaced.
pub(crate) struct Kept {
    pub version: LoadedVersion,
    /// The state envelope it saved when it was replaced.
    pub snapshot: Vec<u8>,
    /// The module's count of `&mut self` calls then (see `Access::mutations`).
    pub mutations: u64,
}

/// A closed version kept mapped for now, with why: a verified version (whose workers the
/// runtime can stop), or a build refused before it was verified (whose initialisers may have
/// started threads).
pub(crate) struct Held {
    pub info: VersionInfo,
    image: Image,
    join_workers: Option<JoinWorkers>,
    pub reason: String,
    /// Its calls' metrics when it stopped serving.
    metrics: Option<crate::VersionMetrics>,
}

/// The `join_workers` entry of a verified version.
type JoinWorkers = extern "C" fn(u64) -> hotreload_abi::EntryResult<u32>;

impl Held {
    /// As the host sees it.
    pub(crate) fn report(&self) -> RetiredVersion {
        RetiredVersion {
            info: self.info.clone(),
            still_mapped: Some(true),
            held: Some(self.reason.clone()),
            metrics: self.metrics.clone(),
        }
    }

    /// A closed version held because something may still run in it.
    pub(crate) fn version(version: LoadedVersion, reason: String) -> Held {
        Held {
            info: version.info(),
            metrics: version.metrics(),
            image: version.image,
            join_workers: Some(version.lifecycle.join_workers),
            reason,
        }
    }

    /// A version of a module registered with `keep_loaded`: held for good.
    pub(crate) fn kept(version: LoadedVersion) -> Held {
        Held::version(
            version,
            "the module is registered with `keep_loaded`".to_owned(),
        )
    }

    /// A build refused before it was verified, held because a thread may run in it.
    pub(crate) fn unverified(info: VersionInfo, image: Image, reason: String) -> Held {
        Held {
            info,
            image,
            join_workers: None,
            reason,
            metrics: None,
        }
    }

    /// Looks again, updating the reason; whether something may still run in it (its
    /// workers were given their time when it was first held: no waiting now).
    pub(crate) fn still_in_use(&mut self) -> bool {
        let reason = match self.join_workers.map(|join| workers_running(join, 0)) {
            Some(Some(reason)) => Some(reason),
            _ => self.image.in_use(),
        };
        match reason {
            Some(reason) => {
                self.reason = reason;
                true
            }
            None => false,
        }
    }

    /// Its description, image and metrics, to close.
    pub(crate) fn into_parts(self) -> (VersionInfo, Image, Option<crate::VersionMetrics>) {
        (self.info, self.image, self.metrics)
    }

    /// Leaves it mapped for the rest of the process.
    pub(crate) fn leak(self) {
        self.image.leak();
    }
}

/// Raises the stop signal of a version's workers, waits up to `timeout_ms` for them, and says
/// how many still run, if any.
fn workers_running(join_workers: JoinWorkers, timeout_ms: u64) -> Option<String> {
    match join_workers(timeout_ms) {
        RResult::ROk(0) => None,
        RResult::ROk(running) => Some(format!(
            "{running} worker thread(s) did not stop within {timeout_ms} ms"
        )),
        RResult::RErr(err) => Some(format!(
            "its workers could not be stopped: {}",
            crate::error::ModuleFault::from(err)
        )),
    }
}

/// A version that no longer serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RetiredVersion {
    /// The version.
    pub info: VersionInfo,
    /// Whether its image was still mapped right after it was closed (`None`: unknown on this
    /// platform).
    pub still_mapped: Option<bool>,
    /// Why the runtime keeps it open for now, if it does: a thread may still return into it
    /// (a worker that has not stopped, a thread with an address inside it on its stack), or
    /// the module was registered with `keep_loaded`. Such a version is checked again at every
    /// later retire and closed once nothing runs in it (a [`VersionReleased`] event).
    ///
    /// [`VersionReleased`]: crate::Event::VersionReleased
    pub held: Option<String>,
    /// Its calls' metrics when it stopped serving (`None` for a build refused before it
    /// served, or with metrics off).
    pub metrics: Option<crate::VersionMetrics>,
}

impl RetiredVersion {
    /// Whether the runtime keeps this version open (see [`held`](Self::held)).
    pub fn is_held(&self) -> bool {
        self.held.is_some()
    }

    /// The shadow copy the version was loaded from (deleted, but named in `/proc/self/maps`
    /// while the image stays mapped).
    pub fn shadow(&self) -> &PathBuf {
        &self.info.shadow
    }

    /// Whether the image is mapped now.
    pub fn is_mapped_now(&self) -> Option<bool> {
        os::is_mapped(&self.info.shadow)
    }
}

impl LoadedVersion {
    /// Its descriptor: in its image, mapped for as long as the version exists.
    pub(crate) fn descriptor(&self) -> &hotreload_abi::ModuleDescriptor {
        // SAFETY: verification checked the descriptor at this address (magic, ABI version,
        // size, alignment) in the image this version owns, which stays mapped while the
        // version exists; the returned borrow is tied to the version.
        unsafe { &*self.descriptor.0 }
    }

    /// Its imports.
    pub(crate) fn links(&self) -> &Arc<crate::link::Links> {
        match &self.image.links {
            Some(links) => links,
            None => unreachable!("a verified version's image holds its links"),
        }
    }

    /// What its calls' metrics say now (`None` with metrics off).
    pub(crate) fn metrics(&self) -> Option<crate::VersionMetrics> {
        self.meter.as_ref().map(|meter| meter.snapshot(&self.info))
    }

    /// Its whole description, the digest included (see [`Sha256Cell`]).
    pub(crate) fn info(&self) -> VersionInfo {
        VersionInfo {
            sha256: self.image.shadow.sha256.get(),
            ..self.info.clone()
        }
    }

    /// Stops the version's workers (waiting up to `timeout_ms` for them) and says why it
    /// must stay mapped, if it must: a worker still running, or another thread that may
    /// return into it.
    pub(crate) fn still_in_use(&self, timeout_ms: u64) -> Option<String> {
        workers_running(self.lifecycle.join_workers, timeout_ms).or_else(|| self.image.in_use())
    }
}
