//! Step 1: copy a complete artifact to a unique shadow path.
//!
//! Trust model: loading a library runs its initialisers, so the permission check here is the
//! gate. The artifact is opened once, and the open file and every directory above its real
//! path are checked as OpenSSH checks key files (see `os::permissions`): only this process's
//! user or root may have written it or may rename anything on the way to it, except in a
//! sticky directory owned by root such as `/tmp`. Its bytes are copied from that same
//! descriptor, once, into a new file in the private shadow directory (by the kernel:
//! `copy_file_range`), and that copy is what is checked, opened and hashed: neither a
//! file swapped in after the check nor a writer still busy with the artifact can make us open
//! something other than what was checked, and no other user can write the copy. An
//! [`ArtifactCopy`] is only made by that copy. The build output itself is never opened as a
//! library: one mapped from a file that the next build rewrites would fault (SIGBUS) on the
//! next page it touches.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use object::{Object, ObjectKind, ObjectSegment, ObjectSymbol};

use crate::ShadowDir;
use crate::error::HotError;
use crate::module::ModuleSpec;
use crate::os;
use crate::version::{ArtifactIdentity, Sha256Cell, ShadowFile};

/// A copy of an artifact in the shadow directory, mapped for reading: made only by
/// [`copy_artifact`], from a descriptor whose file and directories passed the permission
/// check. Deleted when dropped, unless [`stage`] made it a version's shadow copy.
pub(crate) struct ArtifactCopy {
    /// `None` once staged.
    path: Option<PathBuf>,
    map: Option<memmap2::Mmap>,
    /// Computed when first asked: only a pinned module, or a refused build, needs it
    /// before the swap.
    sha256: std::sync::OnceLock<String>,
    identity: Option<ArtifactIdentity>,
    /// Copying.
    took: Duration,
}

impl ArtifactCopy {
    pub(crate) fn bytes(&self) -> &[u8] {
        self.map.as_deref().unwrap_or_default()
    }

    /// SHA-256 of the bytes, in hex (hashed on the first call).
    pub(crate) fn sha256(&self) -> &str {
        self.sha256.get_or_init(|| sha256_hex(self.bytes()))
    }

    /// Whether the bytes are those of the file at `path` (a version's shadow copy) of
    /// `len` bytes: compared byte for byte, with no digest, when the lengths agree.
    pub(crate) fn same_as(&self, path: &Path, len: u64) -> bool {
        let bytes = self.bytes();
        if bytes.len() as u64 != len {
            return false;
        }
        let Ok(file) = fs::File::open(path) else {
            return false;
        };
        // SAFETY: a shadow copy, this process's own in its 0700 directory, never written
        // after it was staged; the map lives for this comparison only.
        match unsafe { memmap2::Mmap::map(&file) } {
            Ok(other) => other[..] == *bytes,
            Err(_) => false,
        }
    }

    /// Which file the bytes were copied from.
    pub(crate) fn identity(&self) -> Option<ArtifactIdentity> {
        self.identity
    }

    /// The time spent copying.
    pub(crate) fn took(&self) -> Duration {
        self.took
    }
}

impl Drop for ArtifactCopy {
    fn drop(&mut self) {
        self.map = None;
        if let Some(path) = self.path.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Stages `copy` (the artifact's bytes as just copied) as version `generation`: checks it,
/// and moves it to the version's shadow path.
pub(crate) fn stage(
    spec: &ModuleSpec,
    shadow: &ShadowDir,
    generation: u64,
    copy: &mut ArtifactCopy,
) -> Result<ShadowFile, HotError> {
    let artifact = &spec.artifact;
    if let Some(pinned) = &spec.pinned {
        let sha256 = copy.sha256();
        if !pinned.iter().any(|p| p.eq_ignore_ascii_case(sha256)) {
            return Err(HotError::NotPinned {
                module: spec.name.clone(),
                path: artifact.clone(),
                sha256: sha256.to_owned(),
            });
        }
    }
    let bytes = copy.bytes();
    let len = bytes.len() as u64;
    let file = parse_library(bytes).map_err(|reason| HotError::NotALibrary {
        module: spec.name.clone(),
        path: artifact.clone(),
        reason,
    })?;
    let descriptor_size = check_descriptor_symbol(&file, spec)?;
    let dtor_slots = os::DtorSlots::find(&file);
    let debuglink = debuglink_name(&file);
    let path = shadow_path(spec, shadow, generation);
    copy.map = None;
    let from = copy.path.as_ref().map_or_else(PathBuf::new, Clone::clone);
    fs::rename(&from, &path).map_err(|source| HotError::Shadow {
        module: spec.name.clone(),
        path: path.clone(),
        source: source.into(),
    })?;
    copy.path = None;
    let debug_files = DebugFiles::stage(artifact, &path, debuglink.as_deref());
    tracing::debug!(shadow = %path.display(), len, "staged");
    let sha256 = Sha256Cell::new(path.clone());
    if let Some(hex) = copy.sha256.get() {
        sha256.set(hex);
    }
    Ok(ShadowFile {
        path,
        artifact: artifact.clone(),
        len,
        sha256,
        descriptor_size,
        identity: copy.identity,
        dtor_slots,
        debug_files,
    })
}

/// The debug files of a shadow copy, put where debuggers look for them beside it, and
/// removed with it.
///
/// A debugger finds a library's split debug info by the library's own path, and the shadow
/// copy has another directory and name than the build: gdb (and std's backtraces) look for
/// `<library>.dwp` (`split-debuginfo = "packed"`) and for the file a `.gnu_debuglink`
/// section names in the library's directory. Staging copies the build's `<artifact>.dwp` to
/// `<shadow>.dwp`, and the debuglink file (found beside the artifact, or in `.debug/` there)
/// to the shadow directory under the name the section gives. They are copied, not
/// hard-linked: rustc rewrites a `.dwp` in place on the next build, which a link would share.
///
/// Every version of a module has the same debuglink name, and only one file can have it: each
/// version keeps a private copy (`<shadow>.debuglink`), and the name is a link to the copy of
/// the most recently staged version still loaded. A debugger loading a version as it opens
/// reads the right one (gdb checks the section's CRC and refuses a file of another build);
/// one attaching later finds the debug info of that version only. When the version holding
/// the name goes (a build refused after staging, say), the name goes back to the newest
/// version left.
///
/// With `split-debuginfo = "unpacked"` the library names its `.dwo` files by absolute path
/// in the target directory: nothing is copied, and a debugger reads whatever the last build
/// left there, so once a later build replaced them an older version's frames lose their
/// lines (gdb says "Could not find DWO CU").
///
/// A missing or unreadable debug file never fails a reload: it is left out, with a debug
/// line in the log.
#[derive(Debug, Default)]
pub(crate) struct DebugFiles {
    /// Removed when the version goes.
    own: Vec<PathBuf>,
    /// The debuglink name and this version's private copy (also in `own`).
    shared: Option<(PathBuf, PathBuf)>,
}

/// For each debuglink name in use, the private copies of the versions that have one, oldest
/// first: the name links to the last. Process-wide, so that versions staged and dropped on
/// different threads agree on who holds the name.
static DEBUGLINKS: std::sync::Mutex<Vec<(PathBuf, Vec<PathBuf>)>> =
    std::sync::Mutex::new(Vec::new());

fn debuglinks() -> std::sync::MutexGuard<'static, Vec<(PathBuf, Vec<PathBuf>)>> {
    DEBUGLINKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Points the debuglink name `name` at the private copy `copy`: a hard link (a copy where
/// links are refused) renamed over the name, so that a debugger reading the previous file
/// keeps it.
fn point(name: &Path, copy: &Path) {
    let temp = incoming(name);
    let pointed = fs::hard_link(copy, &temp)
        .or_else(|_| fs::copy(copy, &temp).map(drop))
        .and_then(|()| fs::rename(&temp, name));
    if let Err(err) = pointed {
        let _ = fs::remove_file(&temp);
        tracing::debug!(
            name = %name.display(),
            "cannot give a library's debug file its debuglink name, a debugger sees no lines \
             for it: {err}"
        );
    }
}

impl DebugFiles {
    /// Copies the debug files of the build at `artifact` beside its shadow copy at `shadow`;
    /// `debuglink` is the file name the library's `.gnu_debuglink` section gives.
    pub(crate) fn stage(artifact: &Path, shadow: &Path, debuglink: Option<&str>) -> Self {
        let mut files = DebugFiles::default();
        let dwp = with_suffix(artifact, ".dwp");
        if dwp.is_file() {
            let to = with_suffix(shadow, ".dwp");
            if place(&dwp, &to) {
                files.own.push(to);
            }
        }
        if let (Some(name), Some(from_dir), Some(to_dir)) =
            (debuglink, artifact.parent(), shadow.parent())
        {
            let found = [from_dir.join(name), from_dir.join(".debug").join(name)]
                .into_iter()
                .find(|candidate| candidate.is_file());
            match found {
                Some(from) => {
                    let copy = with_suffix(shadow, ".debuglink");
                    if place(&from, &copy) {
                        let name = to_dir.join(name);
                        let mut links = debuglinks();
                        match links.iter_mut().find(|(held, _)| *held == name) {
                            Some((_, copies)) => copies.push(copy.clone()),
                            None => links.push((name.clone(), vec![copy.clone()])),
                        }
                        point(&name, &copy);
                        files.own.push(copy.clone());
                        files.shared = Some((name, copy));
                    }
                }
                None => tracing::debug!(
                    artifact = %artifact.display(),
                    debuglink = name,
                    "the library's debug file is not beside it: a debugger sees no lines for it"
                ),
            }
        }
        files
    }
}

impl Drop for DebugFiles {
    fn drop(&mut self) {
        if let Some((name, copy)) = &self.shared {
            let mut links = debuglinks();
            if let Some(at) = links.iter().position(|(held, _)| held == name) {
                let copies = &mut links[at].1;
                let was_last = copies.last() == Some(copy);
                copies.retain(|other| other != copy);
                match copies.last() {
                    Some(newest) if was_last => point(name, newest),
                    Some(_) => {}
                    None => {
                        links.swap_remove(at);
                        let _ = fs::remove_file(name);
                    }
                }
            }
        }
        for path in &self.own {
            let _ = fs::remove_file(path);
        }
    }
}

/// Copies `from` to `to` through a temporary file renamed into place (a debugger reading the
/// previous file keeps it); whether it could (a debug line says why not).
fn place(from: &Path, to: &Path) -> bool {
    let temp = incoming(to);
    let placed = fs::copy(from, &temp).and_then(|_| fs::rename(&temp, to));
    match placed {
        Ok(()) => {
            tracing::debug!(from = %from.display(), to = %to.display(), "staged a debug file");
            true
        }
        Err(err) => {
            let _ = fs::remove_file(&temp);
            tracing::debug!(
                from = %from.display(),
                to = %to.display(),
                "cannot stage a debug file, a debugger sees no lines for this build: {err}"
            );
            false
        }
    }
}

/// A temporary name beside `path` for a file to be renamed over it, unique in the process.
fn incoming(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    with_suffix(
        path,
        &format!(".incoming-{}", NEXT.fetch_add(1, Ordering::Relaxed)),
    )
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// The file name in the library's `.gnu_debuglink` section, if it has one that is a plain
/// file name (never a path: the name is joined to directories).
fn debuglink_name(file: &object::File<'_>) -> Option<String> {
    let (name, _crc) = file.gnu_debuglink().ok()??;
    let name = std::str::from_utf8(name).ok()?;
    let plain = !name.is_empty() && !name.contains('/') && name != "." && name != "..";
    plain.then(|| name.to_owned())
}

/// The SHA-256 of `bytes`, in lower-case hex: how versions and artifacts are identified.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    // ring's SHA-256 is assembly: about 1 GB/s here in a debug build as in a release one,
    // where a pure-Rust SHA-256 compiled without optimisation (a user's debug workspace)
    // hashes a 36 MB debug module in 1.3 s.
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// The SHA-256 of the file at `path` (a shadow copy), in hex.
pub(crate) fn sha256_of_file(path: &Path) -> std::io::Result<String> {
    let file = fs::File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(sha256_hex(&[]));
    }
    // SAFETY: a shadow copy, this process's own in its 0700 directory, never written after
    // it was staged; the map lives for this hash only.
    let map = unsafe { memmap2::Mmap::map(&file) }?;
    Ok(sha256_hex(&map))
}

/// Copies the artifact into a new file of the shadow directory (after its permissions were
/// checked on the open file: the one way an artifact's bytes come in), and maps the copy.
pub(crate) fn copy_artifact(
    spec: &ModuleSpec,
    shadow: &ShadowDir,
) -> Result<ArtifactCopy, HotError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let started = Instant::now();
    let path = shadow.path().join(format!(
        "{}-incoming-{}",
        spec.name,
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let shadow_error = |path: &Path, source: std::io::Error| HotError::Shadow {
        module: spec.name.clone(),
        path: path.to_path_buf(),
        source: source.into(),
    };
    let mut file = create_private(&path).map_err(|e| shadow_error(&path, e))?;
    // From here on the file is removed when `copy` is dropped, whatever fails.
    let mut copy = ArtifactCopy {
        path: Some(path.clone()),
        map: None,
        sha256: std::sync::OnceLock::new(),
        identity: None,
        took: Duration::ZERO,
    };
    copy.identity = os::copy_trusted(&spec.name, &spec.artifact, &mut file)?;
    if file.metadata().map_err(|e| shadow_error(&path, e))?.len() > 0 {
        // SAFETY: the file is this process's own, new (`create_new`), in a 0700 directory of
        // this process's user, and nothing in this process writes, truncates or removes it
        // while the map exists: the map is dropped before the file is renamed or removed
        // (`stage`, `Drop`). Mapping an empty file fails, hence the length check.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| shadow_error(&path, e))?;
        copy.map = Some(map);
    }
    copy.took = started.elapsed();
    Ok(copy)
}

/// `<shadow dir>/<module>-<generation>-<artifact file name>`: unique per version.
pub(crate) fn shadow_path(spec: &ModuleSpec, shadow: &ShadowDir, generation: u64) -> PathBuf {
    let file_name = spec
        .artifact
        .file_name()
        .map_or_else(|| "module".into(), |n| n.to_string_lossy().into_owned());
    shadow
        .path()
        .join(format!("{}-{generation}-{file_name}", spec.name))
}

/// Creates a new file that only the owner can read, write or execute.
fn create_private(path: &Path) -> std::io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o700);
    options.open(path)
}

/// Checks that `bytes` are a whole shared library for this machine, without loading it.
pub(crate) fn check_library(bytes: &[u8]) -> Result<(), String> {
    parse_library(bytes).map(|_| ())
}

/// As [`check_library`], keeping the parsed object for further checks.
fn parse_library(bytes: &[u8]) -> Result<object::File<'_>, String> {
    if bytes.is_empty() {
        return Err("the file is empty".into());
    }
    let file = object::File::parse(bytes).map_err(|e| format!("not an object file ({e})"))?;
    if file.kind() != ObjectKind::Dynamic {
        return Err(format!(
            "it is an object of kind {:?}, not a shared library",
            file.kind()
        ));
    }
    let expected = host_architecture();
    if file.architecture() != expected {
        return Err(format!(
            "it is built for {:?}, this host runs on {expected:?}",
            file.architecture()
        ));
    }
    // A truncated file can still have a valid header; every segment the loader would map
    // must lie within it.
    for segment in file.segments() {
        let (offset, size) = segment.file_range();
        if offset.saturating_add(size) > bytes.len() as u64 {
            return Err(format!(
                "it is truncated: a segment ends at byte {}, the file has {}",
                offset.saturating_add(size),
                bytes.len()
            ));
        }
    }
    Ok(file)
}

/// Checks, in the file's dynamic symbol table and before the library is ever opened (so none
/// of its initialisers run), that it exports this module's descriptor symbol, and that the
/// symbol is large enough to read the descriptor's fixed prefix from.
fn check_descriptor_symbol(file: &object::File<'_>, spec: &ModuleSpec) -> Result<u64, HotError> {
    let symbol = hotreload_abi::descriptor_symbol(&spec.name);
    let found = file
        .dynamic_symbols()
        .find(|s| s.name_bytes().ok() == Some(symbol.as_bytes()) && s.is_definition())
        .map(|s| s.size());
    match found {
        None => Err(HotError::NoDescriptor {
            module: spec.name.clone(),
            path: spec.artifact.clone(),
            symbol,
        }),
        Some(size) if size < std::mem::size_of::<hotreload_abi::DescriptorPrefix>() as u64 => {
            Err(HotError::NotALibrary {
                module: spec.name.clone(),
                path: spec.artifact.clone(),
                reason: format!("its `{symbol}` is {size} bytes, too small to be a descriptor"),
            })
        }
        Some(size) => Ok(size),
    }
}

fn host_architecture() -> object::Architecture {
    use object::Architecture as A;
    if cfg!(target_arch = "x86_64") {
        A::X86_64
    } else if cfg!(target_arch = "aarch64") {
        A::Aarch64
    } else if cfg!(target_arch = "x86") {
        A::I386
    } else if cfg!(target_arch = "arm") {
        A::Arm
    } else if cfg!(target_arch = "riscv64") {
        A::Riscv64
    } else {
        A::Unknown
    }
}

#[cfg(test)]
mod tests {

    /// Builds `a` and then `b` of one module, each with its debuglink file beside it.
    fn two_builds(dir: &Path) -> [(PathBuf, PathBuf); 2] {
        ["a", "b"].map(|build| {
            let artifact_dir = dir.join(build);
            fs::create_dir_all(&artifact_dir).unwrap();
            fs::write(
                artifact_dir.join("libm.debug"),
                format!("debug info of {build}"),
            )
            .unwrap();
            let shadow = dir.join("shadow").join(format!("m-{build}-libm.so"));
            (artifact_dir.join("libm.so"), shadow)
        })
    }

    #[test]
    fn the_debuglink_name_goes_back_to_the_newest_version_left() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("shadow")).unwrap();
        let [(a_artifact, a_shadow), (b_artifact, b_shadow)] = two_builds(dir.path());
        let name = dir.path().join("shadow/libm.debug");
        let read = || fs::read_to_string(&name).ok();

        let a = DebugFiles::stage(&a_artifact, &a_shadow, Some("libm.debug"));
        assert_eq!(read().as_deref(), Some("debug info of a"));
        // A newer build staged, then dropped (refused, say): the name is the older one's again.
        let b = DebugFiles::stage(&b_artifact, &b_shadow, Some("libm.debug"));
        assert_eq!(read().as_deref(), Some("debug info of b"));
        drop(b);
        assert_eq!(read().as_deref(), Some("debug info of a"));
        // The older one dropped while the newer holds the name: the name stays the newer's.
        let b = DebugFiles::stage(&b_artifact, &b_shadow, Some("libm.debug"));
        drop(a);
        assert_eq!(read().as_deref(), Some("debug info of b"));
        drop(b);
        assert_eq!(read(), None, "no version left: no debuglink file");
        assert_eq!(fs::read_dir(dir.path().join("shadow")).unwrap().count(), 0);
    }

    use super::{DebugFiles, check_library};
    use std::fs;
    use std::path::{Path, PathBuf};

    #[test]
    fn empty_and_random_files_are_refused() {
        assert_eq!(check_library(&[]).unwrap_err(), "the file is empty");
        let random: Vec<u8> = (0..4096u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        assert!(
            check_library(&random)
                .unwrap_err()
                .starts_with("not an object file")
        );
    }

    #[test]
    fn a_truncated_object_is_refused() {
        // The test binary is a position-independent ELF object like a shared library; the
        // loader itself refuses to open an executable, but a truncated one must not get there.
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        for len in [exe.len() / 2, exe.len() - 1, 64] {
            let err = check_library(&exe[..len]).unwrap_err();
            assert!(
                err.contains("truncated") || err.starts_with("not an object file"),
                "{len}: {err}"
            );
        }
    }
}
