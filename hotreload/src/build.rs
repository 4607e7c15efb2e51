//! Building modules with cargo while watching: which sources belong to which module, and at
//! most one build per module at a time.
//!
//! For each module registered with `build_with_cargo`, `cargo metadata` gives the module's
//! package and the local (path) packages it depends on, transitively. Their library sources
//! (`src/`, recursively), `build.rs` and `Cargo.toml` are watched; a change to a package
//! rebuilds every module whose closure holds it, and no other. A change during a build marks
//! the module dirty, and one more build follows when the running one ends.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc::Sender;
use std::time::{Duration, Instant};

use cargo_metadata::{DependencyKind, Metadata, MetadataCommand, PackageId};

/// The result of one build, sent back to the watcher thread.
pub(crate) struct BuildDone {
    pub module: String,
    pub result: Result<Duration, String>,
}

/// What a module's build needs to know.
struct ModuleBuild {
    package: String,
    manifest: PathBuf,
    closure: BTreeSet<PackageId>,
    target_dir: Option<PathBuf>,
    profile: Vec<String>,
    running: bool,
    dirty: bool,
}

/// A watched source location and the package it belongs to.
struct SourceRoot {
    path: PathBuf,
    recursive: bool,
    package: PackageId,
}

/// Every module the watcher builds.
#[derive(Default)]
pub(crate) struct Builds {
    modules: BTreeMap<String, ModuleBuild>,
    roots: Vec<SourceRoot>,
}

/// What the watcher must do after `Builds` changed its plan.
pub(crate) struct NewRoots(pub Vec<(PathBuf, bool)>);

impl Builds {
    /// Whether `module` is already planned.
    pub(crate) fn knows(&self, module: &str) -> bool {
        self.modules.contains_key(module)
    }

    /// Plans builds of `module` from the crate at `manifest`, its library expected at
    /// `artifact`. Returns the source locations to watch.
    pub(crate) fn add(
        &mut self,
        module: &str,
        manifest: &Path,
        artifact: &Path,
    ) -> Result<NewRoots, String> {
        let metadata = MetadataCommand::new()
            .manifest_path(manifest)
            .exec()
            .map_err(|e| format!("cargo metadata for {}: {e}", manifest.display()))?;
        let manifest = manifest
            .canonicalize()
            .unwrap_or_else(|_| manifest.to_path_buf());
        let package = metadata
            .packages
            .iter()
            .find(|p| p.manifest_path.as_std_path() == manifest)
            .ok_or_else(|| format!("no package with manifest {}", manifest.display()))?;
        let closure = local_closure(&metadata, &package.id);
        let mut new_roots = Vec::new();
        for id in &closure {
            if self.roots.iter().any(|r| &r.package == id) {
                continue;
            }
            let Some(pkg) = metadata.packages.iter().find(|p| &p.id == id) else {
                continue;
            };
            let dir = pkg
                .manifest_path
                .parent()
                .map(|d| d.as_std_path().to_path_buf());
            let Some(dir) = dir else { continue };
            let mut add = |path: PathBuf, recursive: bool| {
                new_roots.push((path.clone(), recursive));
                self.roots.push(SourceRoot {
                    path,
                    recursive,
                    package: id.clone(),
                });
            };
            // The package directory itself, not recursively: `Cargo.toml` and `build.rs`
            // (its `target/`, if any, must not trigger builds).
            add(dir.clone(), false);
            let lib_dirs: BTreeSet<PathBuf> = pkg
                .targets
                .iter()
                .filter(|t| t.is_lib() || t.is_cdylib() || t.is_rlib() || t.is_dylib())
                .filter_map(|t| t.src_path.parent().map(|p| p.as_std_path().to_path_buf()))
                .collect();
            for lib_dir in lib_dirs {
                add(lib_dir, true);
            }
        }
        let (target_dir, profile) = target_and_profile(artifact);
        self.modules.insert(
            module.to_owned(),
            ModuleBuild {
                package: package.name.to_string(),
                manifest,
                closure,
                target_dir,
                profile,
                running: false,
                dirty: false,
            },
        );
        Ok(NewRoots(new_roots))
    }

    /// The modules a change at `path` must rebuild.
    pub(crate) fn affected_by(&self, path: &Path) -> Vec<String> {
        let packages: BTreeSet<&PackageId> = self
            .roots
            .iter()
            .filter(|root| {
                if root.recursive {
                    path.strip_prefix(&root.path).is_ok_and(is_source_change)
                } else {
                    path.parent() == Some(root.path.as_path())
                        && matches!(
                            path.file_name().and_then(|n| n.to_str()),
                            Some("Cargo.toml" | "build.rs")
                        )
                }
            })
            .map(|root| &root.package)
            .collect();
        self.modules
            .iter()
            .filter(|(_, build)| packages.iter().any(|p| build.closure.contains(*p)))
            .map(|(module, _)| module.clone())
            .collect()
    }

    /// Starts a build of `module`, or marks it dirty if one is running. Returns the package
    /// name when a build started.
    pub(crate) fn request(&mut self, module: &str, done: &Sender<BuildDone>) -> Option<String> {
        let build = self.modules.get_mut(module)?;
        if build.running {
            build.dirty = true;
            return None;
        }
        build.running = true;
        let mut command = cargo_command(build);
        let module = module.to_owned();
        let done = done.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("hotreload-build-{module}"))
            .spawn(move || {
                let _runtime = crate::os::RuntimeThread::enter();
                let started = Instant::now();
                let result = run(&mut command).map(|()| started.elapsed());
                let _ = done.send(BuildDone { module, result });
            });
        match spawned {
            Ok(_) => Some(build.package.clone()),
            Err(err) => {
                build.running = false;
                tracing::error!("cannot start a build thread: {err}");
                None
            }
        }
    }

    /// Records the end of a build. Returns the package, and whether another build must follow
    /// (sources changed while it ran).
    pub(crate) fn finished(&mut self, module: &str) -> Option<(String, bool)> {
        let build = self.modules.get_mut(module)?;
        build.running = false;
        let again = std::mem::take(&mut build.dirty);
        Some((build.package.clone(), again))
    }
}

/// The local packages `root` depends on (normal and build dependencies), and itself.
fn local_closure(metadata: &Metadata, root: &PackageId) -> BTreeSet<PackageId> {
    let local: BTreeSet<&PackageId> = metadata
        .packages
        .iter()
        .filter(|p| p.source.is_none())
        .map(|p| &p.id)
        .collect();
    let Some(resolve) = &metadata.resolve else {
        return BTreeSet::from([root.clone()]);
    };
    let mut closure = BTreeSet::new();
    let mut stack = vec![root.clone()];
    while let Some(id) = stack.pop() {
        if !closure.insert(id.clone()) {
            continue;
        }
        let Some(node) = resolve.nodes.iter().find(|n| n.id == id) else {
            continue;
        };
        for dep in &node.deps {
            let runtime = dep
                .dep_kinds
                .iter()
                .any(|k| k.kind != DependencyKind::Development);
            if runtime && local.contains(&dep.pkg) {
                stack.push(dep.pkg.clone());
            }
        }
    }
    closure
}

/// `target/<profile>/lib<name>.so`: the target directory, and cargo's flags for the profile.
fn target_and_profile(artifact: &Path) -> (Option<PathBuf>, Vec<String>) {
    let Some(profile_dir) = artifact.parent() else {
        return (None, Vec::new());
    };
    let target_dir = profile_dir.parent().map(Path::to_path_buf);
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => Vec::new(),
        Some("release") => vec!["--release".to_owned()],
        Some(other) => vec!["--profile".to_owned(), other.to_owned()],
        None => Vec::new(),
    };
    (target_dir, profile)
}

fn cargo_command(build: &ModuleBuild) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--lib", "--message-format", "short", "-p"])
        .arg(&build.package)
        .arg("--manifest-path")
        .arg(&build.manifest)
        .args(&build.profile)
        .env_remove("CARGO_TARGET_DIR");
    if let Some(target_dir) = &build.target_dir {
        command.arg("--target-dir").arg(target_dir);
    }
    command
}

/// Runs cargo; on failure, its messages without the progress lines.
fn run(command: &mut Command) -> Result<(), String> {
    tracing::info!(?command, "building");
    let output = command
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let message: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            ![
                "Compiling",
                "Checking",
                "Blocking",
                "Finished",
                "Building",
                "Locking",
            ]
            .iter()
            .any(|progress| line.starts_with(progress))
        })
        .collect();
    Err(message.join("\n"))
}

/// Whether a change at `relative` (to a source root) can change a build: not editor
/// droppings or hidden files.
fn is_source_change(relative: &Path) -> bool {
    let path = relative;
    let hidden = path.components().any(|c| {
        c.as_os_str()
            .to_str()
            .is_some_and(|s| s.starts_with('.') && s.len() > 1 && s != "..")
    });
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    !hidden && !name.ends_with('~') && !name.ends_with(".swp") && name != "4913"
}
