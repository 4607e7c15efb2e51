//! A harness for testing reloads of your own modules: build edited variants of a module crate
//! with cargo, as a developer editing the source would, and get the library of each.
//!
//! Every variant is a copy of the crate with textual edits, in a scratch workspace of its
//! own; all variants build into one target directory, so the dependencies compile once.
//!
//! - **Workspace members.** A crate that inherits from its workspace builds as it does there:
//!   each `dep.workspace = true` is replaced by the workspace's `[workspace.dependencies]`
//!   entry (the member's own `features` and `optional` kept), and every `path` dependency is
//!   made absolute against the original crate, in every dependency table (dev, build and
//!   target-specific ones included). Give the workspace's lock file
//!   ([`VariantBuilder::lockfile`]) to build with the versions it pins.
//! - **Files.** `src/` (every file, as bytes: data files, non-UTF-8 ones and
//!   `include_bytes!` inputs are copied as they are) and `build.rs` are copied; an edit
//!   applies to a file read as UTF-8 text, and fails the build if its text does not occur.
//! - **Comparing with what runs.** [`check`](crate::check) builds a crate at a git revision
//!   and as it is now, and says whether the new build reloads into the old one.
//!
//! ```no_run
//! use hotreload::harness::VariantBuilder;
//!
//! let built = VariantBuilder::new("examples/game-logic", "target/variants")
//!     .variant("double", |v| v.edit("src/lib.rs", "* 1", "* 2"))
//!     .build()?;
//! let artifact = built.artifact("double");
//! # Ok::<(), hotreload::harness::HarnessError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// What can go wrong while building variants.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HarnessError {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The crate's manifest could not be understood.
    #[error("{}: {message}", path.display())]
    Manifest {
        /// The manifest.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// An edit's search text is not in the file, so the variant would equal the original.
    #[error("variant `{variant}`: `{needle}` does not occur in {file}")]
    EditNotApplied {
        /// The variant.
        variant: String,
        /// The file edited.
        file: String,
        /// The text searched for.
        needle: String,
    },
    /// git could not give the revision to build (no repository, no such revision, no main
    /// branch to compare with).
    #[error("{message}")]
    Git {
        /// What git said, or what is missing.
        message: String,
    },
    /// cargo failed; holds its output.
    #[error("cargo build failed:\n{output}")]
    Build {
        /// What cargo printed.
        output: String,
    },
}

/// One variant: a name and the edits that make it from the original crate.
#[derive(Debug, Clone)]
pub struct Variant {
    name: String,
    edits: Vec<(String, String, String)>,
}

impl Variant {
    /// Replaces every occurrence of `from` by `to` in `file` (relative to the crate's root).
    /// The build fails if `from` does not occur.
    pub fn edit(mut self, file: &str, from: &str, to: &str) -> Self {
        self.edits
            .push((file.to_owned(), from.to_owned(), to.to_owned()));
        self
    }
}

/// Builds variants of one module crate.
#[derive(Debug, Clone)]
pub struct VariantBuilder {
    crate_dir: PathBuf,
    settings: Settings,
    variants: Vec<Variant>,
}

/// Where and how a builder builds its variants.
#[derive(Debug, Clone)]
struct Settings {
    work_dir: PathBuf,
    target_dir: Option<PathBuf>,
    lockfile: Option<PathBuf>,
    release: bool,
}

impl Settings {
    fn new(work_dir: PathBuf) -> Self {
        Settings {
            work_dir,
            target_dir: None,
            lockfile: None,
            release: false,
        }
    }

    /// The target directory all variants build into.
    fn target_dir(&self) -> PathBuf {
        self.target_dir
            .clone()
            .unwrap_or_else(|| self.work_dir.join("target"))
    }

    /// The profile directory cargo writes the libraries to.
    fn profile(&self) -> PathBuf {
        self.target_dir()
            .join(if self.release { "release" } else { "debug" })
    }

    /// The `Cargo.lock` to copy into each variant, read.
    fn lock(&self) -> Result<Option<String>, HarnessError> {
        self.lockfile.as_deref().map(read).transpose()
    }
}

/// The setters of a builder's [`Settings`].
macro_rules! settings_setters {
    () => {
        /// Builds into this target directory (by default `<work_dir>/target`). Use one of
        /// its own, not the one of the cargo command running you: that one is locked while
        /// you run.
        pub fn target_dir(mut self, dir: impl Into<PathBuf>) -> Self {
            self.settings.target_dir = Some(dir.into());
            self
        }

        /// Uses this `Cargo.lock`, so the variants get the same dependency versions as the
        /// host.
        pub fn lockfile(mut self, path: impl Into<PathBuf>) -> Self {
            self.settings.lockfile = Some(path.into());
            self
        }

        /// Builds with the release profile.
        pub fn release(mut self, release: bool) -> Self {
            self.settings.release = release;
            self
        }
    };
}

/// The libraries of built variants.
#[derive(Debug, Clone)]
pub struct BuiltVariants {
    libraries: BTreeMap<String, PathBuf>,
}

impl BuiltVariants {
    /// The library of variant `name`.
    ///
    /// # Panics
    /// If no variant of that name was built.
    pub fn artifact(&self, name: &str) -> &Path {
        self.libraries
            .get(name)
            .unwrap_or_else(|| panic!("no variant named `{name}` was built"))
    }
}

impl VariantBuilder {
    /// Variants of the crate in `crate_dir`, written and built under `work_dir`.
    pub fn new(crate_dir: impl Into<PathBuf>, work_dir: impl Into<PathBuf>) -> Self {
        VariantBuilder {
            crate_dir: crate_dir.into(),
            settings: Settings::new(work_dir.into()),
            variants: Vec::new(),
        }
    }

    settings_setters!();

    /// Adds a variant named `name` (a-z, 0-9, `_`) made by `edits` from the original crate.
    pub fn variant(mut self, name: &str, edits: impl FnOnce(Variant) -> Variant) -> Self {
        let variant = Variant {
            name: name.to_owned(),
            edits: Vec::new(),
        };
        self.variants.push(edits(variant));
        self
    }

    /// Writes every variant and builds each with `cargo build`, one after another.
    pub fn build(self) -> Result<BuiltVariants, HarnessError> {
        let manifest_path = self.crate_dir.join("Cargo.toml");
        let mut manifest = read_manifest(&manifest_path)?;
        let crate_dir = fs::canonicalize(&self.crate_dir).map_err(io_err(&self.crate_dir))?;
        absolutize_path_dependencies(&mut manifest, &crate_dir);
        let package = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .ok_or_else(|| HarnessError::Manifest {
                path: manifest_path.clone(),
                message: "no package name".into(),
            })?
            .to_owned();

        let settings = &self.settings;
        fs::create_dir_all(&settings.work_dir).map_err(io_err(&settings.work_dir))?;
        let target_dir = settings.target_dir();
        let lock = settings.lock()?;
        let lib_name = lib_name(&manifest, &package);
        let profile = settings.profile();
        let mut libraries = BTreeMap::new();
        for variant in &self.variants {
            let dir = settings.work_dir.join(&variant.name);
            let mut manifest = manifest.clone();
            // Each variant is a workspace of its own: the package keeps its name (abi_stable
            // records it in every type layout), and workspace members cannot share a name.
            manifest.insert("workspace".into(), toml::Value::Table(toml::Table::new()));
            // The library gets a name of its own: cargo does not copy a fresh library to the
            // profile directory again, so one shared file name would hand out stale builds.
            // A library name is an identifier: a variant named `v2-fails` builds
            // `lib<crate>_v2_fails`.
            let variant_lib = format!("{lib_name}_{}", variant.name.replace('-', "_"));
            set_lib_name(&mut manifest, &variant_lib);
            let file_name = crate::library_file_name(&variant_lib);
            copy_sources(&crate_dir, &dir)?;
            let manifest_text = format!(
                "# Written by hotreload::harness: variant `{}` of {}\n{}",
                variant.name,
                crate_dir.display(),
                toml::to_string(&manifest).unwrap_or_default()
            );
            write_if_changed(&dir.join("Cargo.toml"), &manifest_text)?;
            if let Some(lock) = &lock {
                write_if_changed(&dir.join("Cargo.lock"), lock)?;
            }
            for (file, from, to) in &variant.edits {
                apply_edit(&variant.name, file, &dir.join(file), from, to)?;
            }
            // One target directory for all variants, so the dependencies build once; the
            // library is copied out before the next variant overwrites it.
            cargo_build(
                &dir.join("Cargo.toml"),
                &target_dir,
                settings.release,
                false,
            )?;
            let out = settings.work_dir.join("libraries").join(&variant.name);
            fs::create_dir_all(&out).map_err(io_err(&out))?;
            let built = profile.join(&file_name);
            let copy = out.join(crate::library_file_name(&lib_name));
            fs::copy(&built, &copy).map_err(io_err(&built))?;
            copy_packed_debug_info(&built, &copy)?;
            libraries.insert(variant.name.clone(), copy);
        }
        Ok(BuiltVariants { libraries })
    }
}

/// Copies the `.dwp` cargo puts beside a library built with `split-debuginfo = "packed"`
/// (`lib<name>.so.dwp`) beside the library's copy, under the copy's name, where debuggers
/// look for it; removes a stale one when the build has none.
fn copy_packed_debug_info(built: &Path, copy: &Path) -> Result<(), HarnessError> {
    let with_dwp = |path: &Path| {
        let mut name = path.as_os_str().to_owned();
        name.push(".dwp");
        PathBuf::from(name)
    };
    let (from, to) = (with_dwp(built), with_dwp(copy));
    if from.is_file() {
        fs::copy(&from, &to).map_err(io_err(&from))?;
    } else if to.exists() {
        fs::remove_file(&to).map_err(io_err(&to))?;
    }
    Ok(())
}

/// A manifest, parsed.
fn read_manifest(path: &Path) -> Result<toml::Table, HarnessError> {
    read(path)?
        .parse()
        .map_err(|e: toml::de::Error| HarnessError::Manifest {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
}

/// Replaces `from` by `to` in the file at `path` (named `file` in the error) of `variant`.
fn apply_edit(
    variant: &str,
    file: &str,
    path: &Path,
    from: &str,
    to: &str,
) -> Result<(), HarnessError> {
    let text = read(path)?;
    if !text.contains(from) {
        return Err(HarnessError::EditNotApplied {
            variant: variant.to_owned(),
            file: file.to_owned(),
            needle: from.to_owned(),
        });
    }
    write_if_changed(path, text.replace(from, to))
}

/// Marks a crate's sources changed, so that cargo builds it again.
fn touch_sources(crate_dir: &Path) -> Result<(), HarnessError> {
    for file in ["src/lib.rs", "Cargo.toml"] {
        let path = crate_dir.join(file);
        if let Ok(handle) = fs::File::options().write(true).open(&path) {
            handle
                .set_modified(std::time::SystemTime::now())
                .map_err(io_err(&path))?;
        }
    }
    Ok(())
}

/// `cargo build --lib` of the crate or workspace at `manifest` into `target_dir`. Returns the
/// directories of the packages whose `cdylib` cargo found fresh (not built by this run).
fn cargo_build(
    manifest: &Path,
    target_dir: &Path,
    release: bool,
    workspace: bool,
) -> Result<BTreeSet<PathBuf>, HarnessError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .arg("build")
        .arg("--lib")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--message-format", "json-render-diagnostics"])
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR");
    if workspace {
        command.arg("--workspace");
    }
    if release {
        command.arg("--release");
    }
    tracing::info!(?command, "building a module variant");
    let output = command.output().map_err(io_err(manifest))?;
    if output.status.success() {
        Ok(fresh_cdylibs(&String::from_utf8_lossy(&output.stdout)))
    } else {
        Err(HarnessError::Build {
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// The package directories of the `cdylib`s that cargo's JSON messages say were fresh.
fn fresh_cdylibs(messages: &str) -> BTreeSet<PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["fresh"] == true)
        .filter(|m| {
            m["target"]["kind"]
                .as_array()
                .is_some_and(|kinds| kinds.iter().any(|k| k == "cdylib"))
        })
        .filter_map(|m| {
            let manifest = PathBuf::from(m["manifest_path"].as_str()?);
            manifest.parent().map(Path::to_path_buf)
        })
        .collect()
}

fn lib_name(manifest: &toml::Table, package: &str) -> String {
    manifest
        .get("lib")
        .and_then(|lib| lib.get("name"))
        .and_then(|name| name.as_str())
        .map_or_else(|| package.replace('-', "_"), str::to_owned)
}

/// Edited variants of several crates built together: modules that call each other, or that
/// share a crate, whose builds only fit each other when made from the same sources.
///
/// Each variant is a copy of every crate, as one workspace of its own, with its edits; a path
/// dependency from one of the crates to another points to that one's copy, any other resolves
/// as in the original crate. All variants build into one target directory. Each crate that
/// builds a `cdylib` gives one library per variant.
///
/// ```no_run
/// use hotreload::harness::SetBuilder;
///
/// let built = SetBuilder::new(["modules/physics", "modules/ai"], "target/sets")
///     // `step` gains a parameter, and `ai` passes it: these two builds go together.
///     .variant("substeps", |v| {
///         v.edit("physics", "src/lib.rs", "dt: f64)", "dt: f64, substeps: u32)")
///             .edit("ai", "src/lib.rs", "step(dt)", "step(dt, 4)")
///     })
///     .build()?;
/// let physics = built.artifact("substeps", "physics");
/// let ai = built.artifact("substeps", "ai");
/// # Ok::<(), hotreload::harness::HarnessError>(())
/// ```
#[derive(Debug, Clone)]
pub struct SetBuilder {
    crates: Vec<PathBuf>,
    settings: Settings,
    variants: Vec<SetVariant>,
}

/// One variant of a [`SetBuilder`]: a name and the edits, crate by crate.
#[derive(Debug, Clone)]
pub struct SetVariant {
    name: String,
    /// Crate (its directory's name), file, from, to.
    edits: Vec<(String, String, String, String)>,
}

impl SetVariant {
    /// Replaces every occurrence of `from` by `to` in `file` (relative to the crate) of the
    /// crate whose directory is named `krate`. Building fails if `from` does not occur.
    /// An empty `krate` names the variant's workspace root, whose `Cargo.toml` (starting
    /// with `[workspace]`) is where profile settings go.
    pub fn edit(mut self, krate: &str, file: &str, from: &str, to: &str) -> Self {
        self.edits.push((
            krate.to_owned(),
            file.to_owned(),
            from.to_owned(),
            to.to_owned(),
        ));
        self
    }
}

/// The libraries a [`SetBuilder`] built: one per crate with a `cdylib`, per variant.
#[derive(Debug, Clone)]
pub struct BuiltSets {
    libraries: BTreeMap<(String, String), PathBuf>,
}

impl BuiltSets {
    /// The library of the crate whose library is named `lib` (`physics` for
    /// `libphysics.so`) in `variant`.
    ///
    /// # Panics
    /// If no such variant or library was built.
    pub fn artifact(&self, variant: &str, lib: &str) -> &Path {
        self.libraries
            .get(&(variant.to_owned(), lib.to_owned()))
            .unwrap_or_else(|| panic!("no library `{lib}` was built for variant `{variant}`"))
    }
}

impl SetBuilder {
    /// Variants of the crates at `crates`, worked on in `work_dir`. Each crate is named by
    /// its directory's name in edits.
    pub fn new(
        crates: impl IntoIterator<Item = impl Into<PathBuf>>,
        work_dir: impl Into<PathBuf>,
    ) -> Self {
        SetBuilder {
            crates: crates.into_iter().map(Into::into).collect(),
            settings: Settings::new(work_dir.into()),
            variants: Vec::new(),
        }
    }

    settings_setters!();

    /// Adds a variant named `name`, made by `edits`.
    pub fn variant(mut self, name: &str, edits: impl FnOnce(SetVariant) -> SetVariant) -> Self {
        self.variants.push(edits(SetVariant {
            name: name.to_owned(),
            edits: Vec::new(),
        }));
        self
    }

    /// Writes and builds every variant, in order; returns their libraries.
    pub fn build(self) -> Result<BuiltSets, HarnessError> {
        let originals = self
            .crates
            .iter()
            .map(|dir| fs::canonicalize(dir).map_err(io_err(dir)))
            .collect::<Result<Vec<_>, _>>()?;
        let name_of = |dir: &Path| {
            dir.file_name()
                .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
        };
        let settings = &self.settings;
        let target_dir = settings.target_dir();
        let profile = settings.profile();
        let lock = settings.lock()?;
        // Each crate: its name (its directory's), where it is, its manifest as the variants
        // use it, and the name of its `cdylib`, if it builds one.
        let mut crates = Vec::new();
        for original in &originals {
            let name = name_of(original);
            let mut manifest = read_manifest(&original.join("Cargo.toml"))?;
            absolutize_path_dependencies(&mut manifest, original);
            point_to_copies(&mut manifest, &originals, &name_of);
            let package = manifest
                .get("package")
                .and_then(|p| p.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or(&name)
                .to_owned();
            let dylib = builds_cdylib(&manifest).then(|| lib_name(&manifest, &package));
            let manifest = toml::to_string(&manifest).unwrap_or_default();
            crates.push((name, original, manifest, dylib));
        }
        let members: Vec<String> = crates
            .iter()
            .map(|(name, ..)| format!("{name:?}"))
            .collect();
        let mut libraries = BTreeMap::new();
        for variant in &self.variants {
            let dir = settings.work_dir.join(&variant.name);
            let mut dylibs = Vec::new();
            for (name, original, manifest, dylib) in &crates {
                let copy = dir.join(name);
                copy_sources(original, &copy)?;
                write_if_changed(&copy.join("Cargo.toml"), manifest)?;
                if let Some(lib) = dylib {
                    // As cargo names it in its messages.
                    let copy = fs::canonicalize(&copy).map_err(io_err(&copy))?;
                    dylibs.push((lib.clone(), copy));
                }
            }
            write_if_changed(
                &dir.join("Cargo.toml"),
                format!(
                    "# Written by hotreload::harness: variant `{}`\n[workspace]\nresolver = \"3\"\nmembers = [{}]\n",
                    variant.name,
                    members.join(", ")
                ),
            )?;
            if let Some(lock) = &lock {
                write_if_changed(&dir.join("Cargo.lock"), lock)?;
            }
            for (krate, file, from, to) in &variant.edits {
                let path = dir.join(krate).join(file);
                apply_edit(&variant.name, &format!("{krate}/{file}"), &path, from, to)?;
            }
            // A cdylib's file carries no hash: every variant's build of a crate writes the
            // same file, and a variant cargo finds fresh leaves the last one built there. Its
            // library is then the copy made when it was built (or, if that is gone, it is
            // built again).
            let out = settings.work_dir.join("libraries").join(&variant.name);
            fs::create_dir_all(&out).map_err(io_err(&out))?;
            let manifest = dir.join("Cargo.toml");
            let mut fresh = cargo_build(&manifest, &target_dir, settings.release, true)?;
            let copy_of = |lib: &str| out.join(crate::library_file_name(lib));
            let stale: Vec<&PathBuf> = dylibs
                .iter()
                .filter(|(lib, dir)| fresh.contains(dir) && !copy_of(lib).exists())
                .map(|(_, dir)| dir)
                .collect();
            if !stale.is_empty() {
                for dir in stale {
                    touch_sources(dir)?;
                }
                fresh = cargo_build(&manifest, &target_dir, settings.release, true)?;
            }
            for (lib, dir) in dylibs {
                let copy = copy_of(&lib);
                if !fresh.contains(&dir) {
                    let built = profile.join(crate::library_file_name(&lib));
                    fs::copy(&built, &copy).map_err(io_err(&built))?;
                    copy_packed_debug_info(&built, &copy)?;
                }
                libraries.insert((variant.name.clone(), lib), copy);
            }
        }
        Ok(BuiltSets { libraries })
    }
}

/// Whether the manifest's library is built as a `cdylib`.
fn builds_cdylib(manifest: &toml::Table) -> bool {
    manifest
        .get("lib")
        .and_then(|lib| lib.get("crate-type"))
        .and_then(toml::Value::as_array)
        .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")))
}

/// Points the (absolute) path dependencies on another crate of the set at its copy, the
/// sibling directory of the same name.
fn point_to_copies(
    manifest: &mut toml::Table,
    originals: &[PathBuf],
    name_of: &impl Fn(&Path) -> String,
) {
    for key in DEPENDENCY_TABLES {
        let Some(toml::Value::Table(deps)) = manifest.get_mut(key) else {
            continue;
        };
        for (_, dep) in deps.iter_mut() {
            let toml::Value::Table(dep) = dep else {
                continue;
            };
            let Some(toml::Value::String(path)) = dep.get_mut("path") else {
                continue;
            };
            let target = fs::canonicalize(&*path).unwrap_or_else(|_| PathBuf::from(&*path));
            if let Some(original) = originals.iter().find(|o| **o == target) {
                *path = format!("../{}", name_of(original));
            }
        }
    }
}

/// Puts the file `from` at `to` as a linker does: written beside `to` under a hidden name,
/// then renamed over it, so that `to` is never seen half-written. Returns once the rename has
/// returned: from then on the new build is complete at `to`.
pub fn install(from: &Path, to: &Path) -> std::io::Result<()> {
    let beside = beside(to);
    fs::copy(from, &beside)?;
    fs::rename(&beside, to)
}

/// As [`install`], with the file's bytes.
pub fn install_bytes(bytes: &[u8], to: &Path) -> std::io::Result<()> {
    let beside = beside(to);
    fs::write(&beside, bytes)?;
    fs::rename(&beside, to)
}

/// `<dir>/.<name>.incoming`: where [`install`] writes before the rename.
fn beside(to: &Path) -> PathBuf {
    let name = to
        .file_name()
        .map_or_else(|| "artifact".into(), |n| n.to_string_lossy().into_owned());
    to.with_file_name(format!(".{name}.incoming"))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> HarnessError + '_ {
    move |source| HarnessError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<String, HarnessError> {
    fs::read_to_string(path).map_err(io_err(path))
}

/// Writes only when the content differs, so cargo does not rebuild what did not change.
fn write_if_changed(path: &Path, content: impl AsRef<[u8]>) -> Result<(), HarnessError> {
    let content = content.as_ref();
    if fs::read(path).is_ok_and(|old| old == content) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(io_err(parent))?;
    }
    fs::write(path, content).map_err(io_err(path))
}

/// Copies `src/` (and `build.rs`, if any) of the crate.
fn copy_sources(crate_dir: &Path, dest: &Path) -> Result<(), HarnessError> {
    fn copy_dir(from: &Path, to: &Path) -> Result<(), HarnessError> {
        for entry in fs::read_dir(from).map_err(io_err(from))? {
            let entry = entry.map_err(io_err(from))?;
            let path = entry.path();
            let target = to.join(entry.file_name());
            if path.is_dir() {
                copy_dir(&path, &target)?;
            } else {
                // Bytes, not text: a crate's sources may hold data files (`include_bytes!`).
                write_if_changed(&target, fs::read(&path).map_err(io_err(&path))?)?;
            }
        }
        Ok(())
    }
    copy_dir(&crate_dir.join("src"), &dest.join("src"))?;
    let build_script = crate_dir.join("build.rs");
    if build_script.exists() {
        write_if_changed(&dest.join("build.rs"), read(&build_script)?)?;
    }
    Ok(())
}

fn set_lib_name(manifest: &mut toml::Table, name: &str) {
    let lib = manifest
        .entry("lib")
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    if let toml::Value::Table(lib) = lib {
        lib.insert("name".into(), name.into());
    }
}

/// Rewrites the dependencies so that the variant, a workspace of its own elsewhere, resolves
/// them as the original crate did: `path = "../x"` made absolute against the original crate's
/// directory, and `workspace = true` replaced by the entry of the original workspace's
/// `[workspace.dependencies]` (its own `features` and `optional` kept), in every dependency
/// table, target-specific ones included.
fn absolutize_path_dependencies(manifest: &mut toml::Table, crate_dir: &Path) {
    let workspace = workspace_dependencies(crate_dir);
    let mut tables: Vec<&mut toml::Table> = Vec::new();
    let (plain, targets): (Vec<_>, Vec<_>) = manifest
        .iter_mut()
        .partition(|(key, _)| key.as_str() != "target");
    for (key, value) in plain {
        if DEPENDENCY_TABLES.contains(&key.as_str()) {
            if let toml::Value::Table(deps) = value {
                tables.push(deps);
            }
        }
    }
    for (_, targets) in targets {
        let toml::Value::Table(targets) = targets else {
            continue;
        };
        for (_, target) in targets.iter_mut() {
            let toml::Value::Table(target) = target else {
                continue;
            };
            for (key, value) in target.iter_mut() {
                if DEPENDENCY_TABLES.contains(&key.as_str()) {
                    if let toml::Value::Table(deps) = value {
                        tables.push(deps);
                    }
                }
            }
        }
    }
    for deps in tables {
        for (name, dep) in deps.iter_mut() {
            let inherits = dep
                .get("workspace")
                .and_then(toml::Value::as_bool)
                .unwrap_or(false);
            if inherits {
                if let Some((inherited, root)) = workspace
                    .as_ref()
                    .and_then(|(deps, root)| Some((deps.get(name)?, root)))
                {
                    *dep = inherit(dep, inherited, root);
                    continue;
                }
            }
            if let toml::Value::Table(dep) = dep {
                if let Some(toml::Value::String(path)) = dep.get_mut("path") {
                    let absolute = crate_dir.join(&*path);
                    *path = absolute.to_string_lossy().into_owned();
                }
            }
        }
    }
}

const DEPENDENCY_TABLES: [&str; 3] = ["dependencies", "build-dependencies", "dev-dependencies"];

/// The `[workspace.dependencies]` of the workspace `crate_dir` belongs to, with its root.
fn workspace_dependencies(crate_dir: &Path) -> Option<(toml::Table, PathBuf)> {
    for dir in crate_dir.ancestors().skip(1) {
        let Ok(text) = fs::read_to_string(dir.join("Cargo.toml")) else {
            continue;
        };
        let Ok(manifest) = text.parse::<toml::Table>() else {
            continue;
        };
        if let Some(toml::Value::Table(workspace)) = manifest.get("workspace") {
            let deps = match workspace.get("dependencies") {
                Some(toml::Value::Table(deps)) => deps.clone(),
                _ => toml::Table::new(),
            };
            return Some((deps, dir.to_path_buf()));
        }
    }
    None
}

/// A `name = { workspace = true, features = [...], optional = true }` entry made whole from
/// the workspace's entry for `name` (whose path is relative to the workspace `root`).
fn inherit(member: &toml::Value, inherited: &toml::Value, root: &Path) -> toml::Value {
    let mut dep = match inherited {
        toml::Value::String(version) => {
            let mut dep = toml::Table::new();
            dep.insert("version".into(), version.clone().into());
            dep
        }
        toml::Value::Table(dep) => dep.clone(),
        _ => toml::Table::new(),
    };
    if let Some(toml::Value::String(path)) = dep.get_mut("path") {
        *path = root.join(&*path).to_string_lossy().into_owned();
    }
    if let toml::Value::Table(member) = member {
        if let Some(toml::Value::Array(extra)) = member.get("features") {
            let features = dep
                .entry("features")
                .or_insert_with(|| toml::Value::Array(Vec::new()));
            if let toml::Value::Array(features) = features {
                features.extend(extra.iter().cloned());
            }
        }
        if let Some(optional) = member.get("optional") {
            dep.insert("optional".into(), optional.clone());
        }
    }
    toml::Value::Table(dep)
}

#[cfg(test)]
mod tests {
    use super::absolutize_path_dependencies;

    #[test]
    fn workspace_and_target_specific_dependencies_resolve_from_the_variant() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(
            root.path().join("Cargo.toml"),
            "[workspace]\nmembers = [\"module\"]\n[workspace.dependencies]\n\
             serde = { version = \"1\", features = [\"derive\"] }\n\
             shared = { path = \"shared\" }\nitoa = \"1\"\n",
        )
        .unwrap();
        let crate_dir = root.path().join("module");
        let mut manifest: toml::Table = "[package]\nname = \"module\"\n\
             [dependencies]\nserde = { workspace = true, features = [\"rc\"] }\n\
             shared.workspace = true\nlocal = { path = \"../local\" }\n\
             [target.'cfg(unix)'.dependencies]\nitoa = { workspace = true, optional = true }\n\
             unixy = { path = \"../unixy\" }\n"
            .parse()
            .unwrap();
        absolutize_path_dependencies(&mut manifest, &crate_dir);
        let deps = &manifest["dependencies"];
        assert_eq!(deps["serde"]["version"].as_str(), Some("1"));
        let features: Vec<_> = deps["serde"]["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(features, ["derive", "rc"]);
        assert_eq!(
            deps["shared"]["path"].as_str().unwrap(),
            root.path().join("shared").to_str().unwrap()
        );
        assert_eq!(
            deps["local"]["path"].as_str().unwrap(),
            crate_dir.join("../local").to_str().unwrap()
        );
        let unix = &manifest["target"]["cfg(unix)"]["dependencies"];
        assert_eq!(unix["itoa"]["version"].as_str(), Some("1"));
        assert_eq!(unix["itoa"]["optional"].as_bool(), Some(true));
        assert_eq!(
            unix["unixy"]["path"].as_str().unwrap(),
            crate_dir.join("../unixy").to_str().unwrap()
        );
    }
}
