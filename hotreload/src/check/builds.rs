//! The two builds a check compares: built from a module crate at a git revision and as it
//! is now, or from two source trees, or taken as they are.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::HarnessError;

/// Where the builds to compare come from: a module crate as it is now against a base.
///
/// ```no_run
/// use hotreload::check::Compare;
///
/// // The crate as it is now, against its build at the merge base with the main branch.
/// let builds = Compare::crate_at(env!("CARGO_MANIFEST_DIR")).build()?;
/// for (module, checked) in builds.check()? {
///     println!("{module}: {}", checked.verdict);
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct Compare {
    crate_dir: PathBuf,
    base: Base,
    new_artifact: Option<PathBuf>,
    target_dir: Option<PathBuf>,
    release: bool,
}

/// The older build.
#[derive(Debug, Clone)]
enum Base {
    /// The merge base of HEAD with the main branch.
    MainBranch,
    Revision(String),
    Tree(PathBuf),
    Artifact(PathBuf),
}

impl Compare {
    /// The module crate in `crate_dir` (holding its `Cargo.toml`), as it is now, against its
    /// build at the merge base of HEAD with the main branch (`origin/main`, `main`,
    /// `origin/master` or `master`, the first that exists).
    pub fn crate_at(crate_dir: impl Into<PathBuf>) -> Self {
        Compare {
            crate_dir: crate_dir.into(),
            base: Base::MainBranch,
            new_artifact: None,
            target_dir: None,
            release: false,
        }
    }

    /// Against the crate at git revision `revision` (a branch, a tag, a commit), built from a
    /// worktree of the repository.
    pub fn base_revision(mut self, revision: impl Into<String>) -> Self {
        self.base = Base::Revision(revision.into());
        self
    }

    /// Against another source tree of the crate (its directory, holding its `Cargo.toml`).
    pub fn base_tree(mut self, crate_dir: impl Into<PathBuf>) -> Self {
        self.base = Base::Tree(crate_dir.into());
        self
    }

    /// Against a library already built (the one running in production, say).
    pub fn base_artifact(mut self, artifact: impl Into<PathBuf>) -> Self {
        self.base = Base::Artifact(artifact.into());
        self
    }

    /// Takes this library as the new build instead of building the crate.
    pub fn new_artifact(mut self, artifact: impl Into<PathBuf>) -> Self {
        self.new_artifact = Some(artifact.into());
        self
    }

    /// Where cargo builds both trees [default: `hotreload-check` in the crate's workspace's
    /// target directory].
    pub fn target_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.target_dir = Some(dir.into());
        self
    }

    /// Builds with `--release`.
    pub fn release(mut self, release: bool) -> Self {
        self.release = release;
        self
    }

    /// Builds what needs building; the two libraries.
    pub fn build(self) -> Result<Builds, HarnessError> {
        let manifest =
            std::path::absolute(self.crate_dir.join("Cargo.toml")).map_err(|source| {
                HarnessError::Io {
                    path: self.crate_dir.clone(),
                    source,
                }
            })?;
        let scratch = tempfile::Builder::new()
            .prefix("hotreload-check-")
            .tempdir()
            .map_err(|source| HarnessError::Io {
                path: std::env::temp_dir(),
                source,
            })?;
        let target = || -> Result<PathBuf, HarnessError> {
            Ok(match &self.target_dir {
                Some(dir) => dir.clone(),
                None => workspace_target(&manifest)?.join("hotreload-check"),
            })
        };
        // One target directory for both trees (the dependencies compile once); each build
        // cleans the module's own package first (see `build`).
        let (base, old) = match &self.base {
            Base::Artifact(artifact) => (None, artifact.clone()),
            Base::Tree(dir) => {
                let old = build(
                    &dir.join("Cargo.toml"),
                    &target()?,
                    self.release,
                    &scratch.path().join("old"),
                )?;
                (Some(dir.display().to_string()), old)
            }
            Base::MainBranch | Base::Revision(_) => {
                let revision = match &self.base {
                    Base::Revision(revision) => Some(revision.as_str()),
                    _ => None,
                };
                let (named, old) = build_revision(
                    &manifest,
                    revision,
                    &target()?,
                    self.release,
                    scratch.path(),
                )?;
                (Some(named), old)
            }
        };
        let new = match self.new_artifact {
            Some(artifact) => artifact,
            None => build(
                &manifest,
                &target()?,
                self.release,
                &scratch.path().join("new"),
            )?,
        };
        Ok(Builds {
            base,
            old,
            new,
            _scratch: scratch,
        })
    }
}

/// Two builds of a module crate, ready to compare (see [`Compare`]).
#[derive(Debug)]
pub struct Builds {
    /// What the older build was made from: the revision (with its commit) or the tree.
    pub base: Option<String>,
    /// The older build's library.
    pub old: PathBuf,
    /// The newer build's.
    pub new: PathBuf,
    /// Holds the libraries built.
    _scratch: tempfile::TempDir,
}

/// Builds the crate of `manifest` at `revision` (default: the merge base with the main
/// branch) in the kept worktree (see `base_tree`), and copies the library under `scratch`;
/// the revision's name with its commit, and the library.
fn build_revision(
    manifest: &Path,
    revision: Option<&str>,
    target: &Path,
    release: bool,
    scratch: &Path,
) -> Result<(String, PathBuf), HarnessError> {
    let crate_dir = manifest.parent().unwrap_or(Path::new("."));
    let top = PathBuf::from(git(crate_dir, &["rev-parse", "--show-toplevel"])?.trim());
    // Both resolved: git names the top without symbolic links.
    let (top, manifest) = (canonical(&top)?, canonical(manifest)?);
    let relative = manifest
        .strip_prefix(&top)
        .map_err(|_| HarnessError::Git {
            message: format!("{} is not inside {}", manifest.display(), top.display()),
        })?
        .to_path_buf();
    let revision = match revision {
        Some(revision) => revision.to_owned(),
        None => main_merge_base(&top)?,
    };
    let commit = git(
        &top,
        &["rev-parse", "--verify", &format!("{revision}^{{commit}}")],
    )?;
    let commit = commit.trim().to_owned();
    let tree = base_tree(&top, target, &commit)?;
    let built = build(&tree.join(&relative), target, release, &scratch.join("old"))?;
    let short = &commit[..12.min(commit.len())];
    Ok((format!("{revision} ({short})"), built))
}

/// The worktree of the repository at `top` that the base revision builds in, at `commit`:
/// `<target>/base-tree`, kept between checks and moved to each one's commit, so that only
/// the files that differ change (cargo rebuilds what changed, not every path dependency).
/// A directory there that is no worktree of this repository is replaced.
fn base_tree(top: &Path, target: &Path, commit: &str) -> Result<PathBuf, HarnessError> {
    // Worktrees whose directories are gone (a check interrupted, a target cleaned) are
    // forgotten first.
    let _ = git(top, &["worktree", "prune"]);
    let tree = target.join("base-tree");
    let listed = git(top, &["worktree", "list", "--porcelain"])?;
    let registered = tree.canonicalize().is_ok_and(|tree| {
        listed
            .lines()
            .filter_map(|line| line.strip_prefix("worktree "))
            .any(|path| {
                Path::new(path)
                    .canonicalize()
                    .is_ok_and(|path| path == tree)
            })
    });
    if registered {
        git(
            &tree,
            &["checkout", "--detach", "--force", "--quiet", commit],
        )?;
        // Untracked files left by a build script, say; ignored ones (a `target/`) stay.
        git(&tree, &["clean", "-d", "--force", "--quiet"])?;
        return Ok(tree);
    }
    if tree.exists() {
        std::fs::remove_dir_all(&tree).map_err(|source| HarnessError::Io {
            path: tree.clone(),
            source,
        })?;
    }
    if let Some(parent) = tree.parent() {
        std::fs::create_dir_all(parent).map_err(|source| HarnessError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let tree_arg = tree.to_string_lossy().into_owned();
    git(
        top,
        &["worktree", "add", "--detach", "--quiet", &tree_arg, commit],
    )?;
    Ok(tree)
}

/// The merge base of HEAD with the first main branch that exists.
fn main_merge_base(top: &Path) -> Result<String, HarnessError> {
    for branch in ["origin/main", "main", "origin/master", "master"] {
        if git(top, &["rev-parse", "--verify", "--quiet", branch]).is_ok() {
            return match git(top, &["merge-base", "HEAD", branch]) {
                Ok(base) => Ok(base.trim().to_owned()),
                Err(_)
                    if git(top, &["rev-parse", "--is-shallow-repository"])
                        .is_ok_and(|shallow| shallow.trim() == "true") =>
                {
                    Err(HarnessError::Git {
                        message: format!(
                            "no merge base of HEAD and {branch}: the clone is shallow (fetch \
                             the whole history: `fetch-depth: 0`, or `git fetch --unshallow`)"
                        ),
                    })
                }
                Err(err) => Err(err),
            };
        }
    }
    Err(HarnessError::Git {
        message: "no main branch (origin/main, main, origin/master, master) to compare with: \
                  give a base revision"
            .into(),
    })
}

/// The target directory cargo uses for `manifest`'s workspace.
fn workspace_target(manifest: &Path) -> Result<PathBuf, HarnessError> {
    cargo_metadata::MetadataCommand::new()
        .cargo_path(cargo())
        .manifest_path(manifest)
        .no_deps()
        .exec()
        .map(|metadata| metadata.target_directory.into_std_path_buf())
        .map_err(|err| HarnessError::Manifest {
            path: manifest.to_path_buf(),
            message: format!("cargo metadata: {err}"),
        })
}

/// Builds the library of the crate at `manifest` into `target` and copies it into `to`.
///
/// The two trees build the same package, whose cdylib's file name carries no hash: when
/// cargo finds one tree's build fresh it would hand out the library the other tree wrote
/// last. So the package itself (not its dependencies) is cleaned before each build.
fn build(
    manifest: &Path,
    target: &Path,
    release: bool,
    to: &Path,
) -> Result<PathBuf, HarnessError> {
    let package = package_name(manifest)?;
    let mut clean = Command::new(cargo());
    clean
        .args(["clean", "--quiet", "--package", &package, "--manifest-path"])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target);
    if release {
        clean.arg("--release");
    }
    // Nothing to clean the first time: whatever it says, the build decides.
    let _ = clean.output();
    let mut command = Command::new(cargo());
    // From the crate's directory: its `.cargo/config.toml` applies, not the caller's.
    if let Some(dir) = manifest.parent() {
        command.current_dir(dir);
    }
    command
        .args(["build", "--lib", "--message-format=json-render-diagnostics"])
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target);
    if release {
        command.arg("--release");
    }
    let output = command.output().map_err(|source| HarnessError::Io {
        path: PathBuf::from("cargo"),
        source,
    })?;
    if !output.status.success() {
        return Err(HarnessError::Build {
            output: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    let library = cdylib_of(&output.stdout, manifest).ok_or_else(|| HarnessError::Manifest {
        path: manifest.to_path_buf(),
        message: "the crate builds no cdylib (`crate-type = [\"cdylib\", \"rlib\"]`)".into(),
    })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HarnessError::Io { path, source }
    };
    std::fs::create_dir_all(to).map_err(io(to))?;
    let copy = to.join(library.file_name().unwrap_or_default());
    std::fs::copy(&library, &copy).map_err(io(&library))?;
    Ok(copy)
}

/// The cdylib cargo's JSON messages say it built for the package at `manifest`.
fn cdylib_of(messages: &[u8], manifest: &Path) -> Option<PathBuf> {
    let manifest = manifest.canonicalize().ok()?;
    cargo_metadata::Message::parse_stream(messages)
        .filter_map(Result::ok)
        .filter_map(|message| match message {
            cargo_metadata::Message::CompilerArtifact(artifact) => Some(artifact),
            _ => None,
        })
        .filter(|artifact| {
            artifact
                .manifest_path
                .canonicalize()
                .is_ok_and(|path| path == manifest)
        })
        .flat_map(|artifact| artifact.filenames)
        .map(|file| file.into_std_path_buf())
        .find(|file| {
            file.extension()
                .is_some_and(|ext| ext == std::env::consts::DLL_EXTENSION)
        })
}

/// `git` in `dir`: its output, or what it said.
fn git(dir: &Path, args: &[&str]) -> Result<String, HarnessError> {
    // A git hook's environment names its own repository: not the one asked about.
    let output = Command::new("git")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|source| HarnessError::Io {
            path: PathBuf::from("git"),
            source,
        })?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(HarnessError::Git {
            message: format!(
                "git {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ),
        })
    }
}

/// The name of the package whose manifest is `manifest`.
fn package_name(manifest: &Path) -> Result<String, HarnessError> {
    let metadata = cargo_metadata::MetadataCommand::new()
        .cargo_path(cargo())
        .manifest_path(manifest)
        .no_deps()
        .exec()
        .map_err(|err| HarnessError::Manifest {
            path: manifest.to_path_buf(),
            message: format!("cargo metadata: {err}"),
        })?;
    let wanted = canonical(manifest)?;
    metadata
        .packages
        .into_iter()
        .find(|package| {
            package
                .manifest_path
                .canonicalize()
                .is_ok_and(|path| path == wanted)
        })
        .map(|package| package.name.to_string())
        .ok_or_else(|| HarnessError::Manifest {
            path: manifest.to_path_buf(),
            message: "no package has this manifest (a virtual workspace manifest?)".into(),
        })
}

/// `path` with every symbolic link resolved.
fn canonical(path: &Path) -> Result<PathBuf, HarnessError> {
    path.canonicalize().map_err(|source| HarnessError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The cargo that runs this (cargo sets `CARGO` for what it runs), else `cargo`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
