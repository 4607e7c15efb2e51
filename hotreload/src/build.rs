//! Building modules with cargo while watching: which sources belong to which module, and at
//! most one build per module at a time.
//!
//! For each module registered with `build_with_cargo`, `cargo metadata` gives the module's
//! package and the local (path) packages it depends on, transitively. Their library sources
//! (`src/`, recursively), `build.rs` and `Cargo.toml` are watched; a change to a package
//! rebuilds every module whose closure holds it, and no other. A change during a build marks
//! the module dirty, and one more build follows when the running one ends.
//!
//! Cargo builds into the host's target directory, profile and target triple, read from where
//! the module's library is expected (`target/[<triple>/]<profile>/[deps/]`, see
//! [`CargoLayout`]); a library expected anywhere else is built where the module's own
//! workspace builds. Cargo's JSON messages name the library each build produced: a build that
//! produced no library, or one other than the file the module loads, is reported as a failed
//! build that says so, rather than leaving the host waiting for a file that never changes.
//! Stopping the watcher kills the running builds and joins their threads.

mod replay;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cargo_metadata::{DependencyKind, Message, Metadata, MetadataCommand, PackageId};

use crate::locate::CargoLayout;
use replay::{ConfigStamps, Replay, ReplayFailed, Unit};

/// The result of one build, sent back to the watcher thread.
pub(crate) struct BuildDone {
    pub module: String,
    pub result: Result<Built, String>,
    /// What cargo did, if it ran (rather than only a replay of rustc).
    cargo: Option<CargoRan>,
}

/// What a cargo build did with the module.
enum CargoRan {
    /// It compiled the module: its rustc command, if cargo's output showed it.
    Compiled(Option<Replay>),
    /// It found the module fresh: the command it would run is the last one. The
    /// configuration files as stamped before cargo read them.
    Fresh(ConfigStamps),
    /// It failed, or said nothing of the module.
    Failed,
}

/// A build's process, and whether watching stopped the build: a stopped build starts no
/// other process.
#[derive(Default)]
pub(super) struct Slot {
    child: Option<Child>,
    stopped: bool,
}

impl Slot {
    pub(super) fn stopped(slot: &Mutex<Slot>) -> bool {
        slot.lock().unwrap_or_else(PoisonError::into_inner).stopped
    }
}

/// A build that produced the module's library.
pub(crate) struct Built {
    pub duration: Duration,
    /// Whether rustc's command was replayed without cargo ([`replay`]).
    pub replayed: bool,
}

/// What a module's build needs to know.
struct ModuleBuild {
    package: String,
    package_id: PackageId,
    manifest: PathBuf,
    closure: BTreeSet<PackageId>,
    /// The file the module loads.
    artifact: PathBuf,
    /// `--target-dir`, profile and `--target` of the host's layout.
    layout_args: Vec<OsString>,
    /// The library's crate name, the package's directory and its workspace's root.
    crate_name: String,
    package_dir: PathBuf,
    workspace_root: PathBuf,
    /// The rustc command cargo ran for the module last, while it may be run again: never for
    /// a package with a build script.
    replay: Option<Replay>,
    /// Whether a change since the last cargo build touched more than the module's own
    /// sources.
    cargo_needed: bool,
    /// Whether the package has a build script: cargo builds it every time.
    build_script: bool,
    running: Option<RunningBuild>,
    dirty: bool,
}

/// A build in progress: its process (to kill when watching stops) and its thread.
struct RunningBuild {
    slot: Arc<Mutex<Slot>>,
    thread: JoinHandle<()>,
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
        let layout_args = CargoLayout::of(artifact)
            .map(|layout| layout.cargo_args())
            .unwrap_or_default();
        let crate_name = package.targets.iter().find(|t| t.is_cdylib()).map_or_else(
            || package.name.replace('-', "_"),
            |t| t.name.replace('-', "_"),
        );
        let build_script = package.targets.iter().any(|t| t.is_custom_build());
        self.modules.insert(
            module.to_owned(),
            ModuleBuild {
                package: package.name.to_string(),
                package_id: package.id.clone(),
                package_dir: manifest.parent().map(Path::to_path_buf).unwrap_or_default(),
                manifest,
                closure,
                artifact: artifact.to_path_buf(),
                layout_args,
                crate_name,
                workspace_root: metadata.workspace_root.clone().into_std_path_buf(),
                replay: None,
                cargo_needed: false,
                build_script,
                running: None,
                dirty: false,
            },
        );
        Ok(NewRoots(new_roots))
    }

    /// The modules a change at `path` must rebuild. Each one notes whether the change was
    /// to its own library sources only (a replay of rustc can build it) or needs cargo.
    pub(crate) fn note_change(&mut self, path: &Path) -> Vec<String> {
        // Each package the path belongs to, and whether as a library source.
        let packages: BTreeMap<&PackageId, bool> = self
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
            .map(|root| (&root.package, root.recursive))
            .collect();
        let mut affected = Vec::new();
        for (module, build) in &mut self.modules {
            let mut touched = false;
            for (package, source) in &packages {
                if build.closure.contains(*package) {
                    touched = true;
                    build.cargo_needed |= !(*source && **package == build.package_id);
                }
            }
            if touched {
                affected.push(module.clone());
            }
        }
        affected
    }

    /// Starts a build of `module`, or marks it dirty if one is running. Returns the package
    /// name when a build started; `done` receives the outcome, on the build's thread.
    pub(crate) fn request(
        &mut self,
        module: &str,
        done: impl FnOnce(BuildDone) + Send + 'static,
    ) -> Option<String> {
        let build = self.modules.get_mut(module)?;
        if build.running.is_some() {
            build.dirty = true;
            return None;
        }
        let mut command = cargo_command(build);
        let expected = Expected {
            name: build.package.clone(),
            package: build.package_id.clone(),
            artifact: build.artifact.clone(),
        };
        let unit = Unit {
            crate_name: build.crate_name.clone(),
            package_dir: build.package_dir.clone(),
            workspace_root: build.workspace_root.clone(),
        };
        let replay = match (&build.replay, build.cargo_needed || build.build_script) {
            (Some(replay), false) => match replay.still_valid() {
                Ok(()) => Some(replay.clone()),
                Err(why) => {
                    tracing::debug!(module, "cargo builds: {why}");
                    None
                }
            },
            _ => None,
        };
        if replay.is_none() {
            // Whatever changed before now, this cargo build sees.
            build.cargo_needed = false;
        }
        let slot = Arc::new(Mutex::new(Slot::default()));
        let in_thread = Arc::clone(&slot);
        let module = module.to_owned();
        let spawned = std::thread::Builder::new()
            .name(format!("hotreload-build-{module}"))
            .spawn(move || {
                let _runtime = crate::os::RuntimeThread::enter();
                let started = Instant::now();
                let replayed = replay.map(|replay| {
                    replay.run(&in_thread).and_then(|libraries| {
                        // Linked up somewhere else than the module loads (a separate
                        // build directory, say): cargo knows where.
                        expected.check(&libraries).map_err(ReplayFailed::Other)
                    })
                });
                let replayed = match replayed {
                    Some(Ok(())) => Some(Ok(())),
                    Some(Err(ReplayFailed::Compile(messages))) => Some(Err(messages)),
                    Some(Err(ReplayFailed::Other(why))) => {
                        tracing::info!(module, "replaying rustc failed, cargo builds: {why}");
                        None
                    }
                    None => None,
                };
                let (result, cargo) = match replayed {
                    Some(result) => (result, None),
                    None => {
                        let (result, ran) = run(&mut command, &in_thread, &expected, &unit);
                        (result.and_then(|l| expected.check(&l)), Some(ran))
                    }
                };
                let result = result.map(|()| Built {
                    duration: started.elapsed(),
                    replayed: cargo.is_none(),
                });
                done(BuildDone {
                    module,
                    result,
                    cargo,
                });
            });
        match spawned {
            Ok(thread) => {
                build.running = Some(RunningBuild { slot, thread });
                Some(build.package.clone())
            }
            Err(err) => {
                tracing::error!("cannot start a build thread: {err}");
                None
            }
        }
    }

    /// Whether a build of `module` is running: its artifact's events are its own writes,
    /// and its end says when the artifact is complete.
    pub(crate) fn is_running(&self, module: &str) -> bool {
        self.modules
            .get(module)
            .is_some_and(|build| build.running.is_some())
    }

    /// Records the end of a build and joins its thread. Returns the package, and whether
    /// another build must follow (sources changed while it ran).
    pub(crate) fn finished(&mut self, done: &mut BuildDone) -> Option<(String, bool)> {
        let build = self.modules.get_mut(&done.module)?;
        if let Some(running) = build.running.take() {
            // It has sent its outcome: what is left of it is returning.
            let _ = running.thread.join();
        }
        match done.cargo.take() {
            // Cargo compiled the module: the command it showed is the one to replay (none
            // shown: none to replay).
            Some(CargoRan::Compiled(captured)) => build.replay = captured,
            // Cargo found the module fresh: the command it would run is still the last one.
            Some(CargoRan::Fresh(config)) => {
                build.replay = build.replay.take().map(|r| r.restamped(config));
            }
            // Whatever it did not get through (a dependency that does not compile, say), the
            // next build asks cargo again.
            Some(CargoRan::Failed) => build.cargo_needed = true,
            None => {}
        }
        let again = std::mem::take(&mut build.dirty);
        Some((build.package.clone(), again))
    }

    /// Kills the running builds and joins their threads (watching stops).
    pub(crate) fn stop(&mut self) {
        for build in self.modules.values_mut() {
            let Some(running) = build.running.take() else {
                continue;
            };
            let mut slot = running.slot.lock().unwrap_or_else(PoisonError::into_inner);
            slot.stopped = true;
            if let Some(child) = slot.child.as_mut() {
                // Cargo's own compiler processes finish the crate they are on and exit.
                let _ = child.kill();
            }
            drop(slot);
            let _ = running.thread.join();
        }
    }
}

/// What a build of a module must produce.
struct Expected {
    name: String,
    package: PackageId,
    artifact: PathBuf,
}

impl Expected {
    /// Whether the module's artifact is among the libraries cargo says it built (as one of
    /// the paths, or the same file under another name: cargo hard-links `deps/` up).
    fn check(&self, libraries: &[PathBuf]) -> Result<(), String> {
        if libraries.is_empty() {
            return Err(format!(
                "cargo built no dynamic library for {}: add `crate-type = [\"cdylib\", \"rlib\"]` \
                 under `[lib]` in its Cargo.toml",
                self.name
            ));
        }
        // Cargo names the library it linked up beside `deps/`; the module may load the one in
        // `deps/` (a hard link of it, or the file it was copied from).
        let same_file = |library: &PathBuf| {
            let in_deps = library
                .parent()
                .zip(library.file_name())
                .map(|(dir, name)| dir.join("deps").join(name));
            library == &self.artifact
                || in_deps.as_ref() == Some(&self.artifact)
                || crate::os::same_file(library, &self.artifact)
        };
        if libraries.iter().any(same_file) {
            return Ok(());
        }
        let built: Vec<String> = libraries.iter().map(|l| l.display().to_string()).collect();
        Err(format!(
            "cargo built {}, but the module loads {}: register it with \
             `ModuleOptions::artifact({:?})`",
            built.join(", "),
            self.artifact.display(),
            libraries[0].display().to_string()
        ))
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

fn cargo_command(build: &ModuleBuild) -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args([
            "build",
            "--lib",
            // Prints each rustc command with its environment: the module's can be replayed.
            "-vv",
            "--message-format",
            "json-render-diagnostics",
            "-p",
        ])
        .arg(&build.package)
        .arg("--manifest-path")
        .arg(&build.manifest)
        .args(&build.layout_args)
        .env_remove("CARGO_TARGET_DIR")
        // Cargo's configuration and rustup's toolchain are looked up from here, as for a
        // developer building in the workspace; a replay runs here too.
        .current_dir(&build.workspace_root)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// A finished process's exit status and output.
pub(super) struct Collected {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to its end, keeping its process in `slot` while it runs (stopping the
/// watcher kills it), and collects both of its outputs. A stopped build runs nothing, and a
/// process killed by the stop is an error, not an outcome.
pub(super) fn collect(command: &mut Command, slot: &Mutex<Slot>) -> Result<Collected, String> {
    const STOPPED: &str = "the build was stopped";
    let program = command.get_program().to_string_lossy().into_owned();
    let (stdout, stderr) = {
        let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
        if slot.stopped {
            return Err(STOPPED.into());
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("cannot run {program}: {e}"))?;
        let pipes = (child.stdout.take(), child.stderr.take());
        slot.child = Some(child);
        pipes
    };
    let (stdout, stderr) = std::thread::scope(|scope| {
        let stderr = scope.spawn(|| read_all(stderr));
        (read_all(stdout), stderr.join().unwrap_or_default())
    });
    // Both pipes are closed: the process has exited (or is exiting), and is reaped here.
    let mut slot = slot.lock().unwrap_or_else(PoisonError::into_inner);
    let status = slot.child.take().map(|mut child| child.wait());
    match status {
        _ if slot.stopped => Err(STOPPED.into()),
        Some(Ok(status)) => Ok(Collected {
            status,
            stdout,
            stderr,
        }),
        Some(Err(err)) => Err(format!("waiting for {program}: {err}")),
        None => Err(STOPPED.into()),
    }
}

/// What a pipe carried until it closed, as text.
fn read_all(pipe: Option<impl Read>) -> String {
    let mut text = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut text);
    }
    String::from_utf8_lossy(&text).into_owned()
}

/// Runs cargo. Returns the dynamic libraries its JSON messages say the build produced for the
/// module's package (on failure, the compiler's messages without progress lines), and what
/// it did with the module.
fn run(
    command: &mut Command,
    slot: &Mutex<Slot>,
    expected: &Expected,
    unit: &Unit,
) -> (Result<Vec<PathBuf>, String>, CargoRan) {
    tracing::info!(?command, "building");
    // Stamped before cargo reads them: a change while it runs is seen at the next build.
    let config = Replay::stamp_config(unit);
    let collected = match collect(command, slot) {
        Ok(collected) => collected,
        Err(err) => return (Err(err), CargoRan::Failed),
    };
    if !collected.status.success() {
        return (Err(compiler_messages(&collected.stderr)), CargoRan::Failed);
    }
    let built = module_artifacts(collected.stdout.as_bytes(), &expected.package);
    let ran = match built.fresh {
        Some(true) => CargoRan::Fresh(config),
        Some(false) => CargoRan::Compiled(Replay::capture(&collected.stderr, unit, config)),
        None => CargoRan::Failed,
    };
    (Ok(built.libraries), ran)
}

/// What cargo's JSON messages say of the module's package.
struct ModuleArtifacts {
    /// The files of its `cdylib` artifacts, in order.
    libraries: Vec<PathBuf>,
    /// Whether cargo found it fresh (`None`: no message about it).
    fresh: Option<bool>,
}

/// The module package's `cdylib` artifacts in cargo's JSON messages. Lines that are not JSON
/// (a build script's output, say) are skipped.
fn module_artifacts(messages: impl std::io::BufRead, package: &PackageId) -> ModuleArtifacts {
    let mut built = ModuleArtifacts {
        libraries: Vec::new(),
        fresh: None,
    };
    for message in Message::parse_stream(messages).filter_map(Result::ok) {
        let Message::CompilerArtifact(artifact) = message else {
            continue;
        };
        if !artifact.target.is_cdylib() || &artifact.package_id != package {
            continue;
        }
        built.fresh = Some(built.fresh.unwrap_or(true) && artifact.fresh);
        built.libraries.extend(
            artifact
                .filenames
                .into_iter()
                .filter(|file| {
                    file.file_name()
                        .is_some_and(|name| name.ends_with(std::env::consts::DLL_SUFFIX))
                })
                .map(PathBuf::from),
        );
    }
    built
}

/// Cargo's stderr without its progress lines.
fn compiler_messages(stderr: &str) -> String {
    let message: Vec<&str> = stderr
        .lines()
        .filter(|line| {
            let line = line.trim_start();
            // `-vv` adds each command, each fresh unit and each build script's output.
            ![
                "Compiling",
                "Checking",
                "Blocking",
                "Finished",
                "Building",
                "Locking",
                "Running",
                "Fresh",
                "Dirty",
                "[",
            ]
            .iter()
            .any(|progress| line.starts_with(progress))
        })
        .collect();
    message.join("\n")
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

#[cfg(test)]
mod tests {
    use super::{Expected, module_artifacts};
    use cargo_metadata::PackageId;
    use std::path::PathBuf;

    const GREETER: &str = "path+file:///w/greeter#greeter@0.1.0";

    /// Two artifacts as cargo 1.95 prints them (trimmed), a dependency's cdylib, and a line
    /// that is not JSON.
    fn messages() -> String {
        let artifact = |id: &str, kinds: &str, files: &str| {
            format!(
                r#"{{"reason":"compiler-artifact","package_id":"{id}","manifest_path":"/w/Cargo.toml","target":{{"kind":[{kinds}],"crate_types":[{kinds}],"name":"x","src_path":"/w/src/lib.rs","edition":"2024","doc":true,"doctest":true,"test":true}},"profile":{{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":false}},"features":[],"filenames":[{files}],"executable":null,"fresh":false}}"#
            )
        };
        [
            artifact(
                "path+file:///w/shared#shared@0.1.0",
                r#""cdylib""#,
                r#""/w/target/debug/libshared.so""#,
            ),
            "a build script's line".to_owned(),
            artifact(
                GREETER,
                r#""cdylib","rlib""#,
                r#""/w/target/debug/libgreeter.so","/w/target/debug/libgreeter.rlib""#,
            ),
            r#"{"reason":"build-finished","success":true}"#.to_owned(),
        ]
        .join("\n")
    }

    #[test]
    fn the_package_s_own_dynamic_library_is_read_from_cargo_s_messages() {
        let package = PackageId {
            repr: GREETER.into(),
        };
        let built = module_artifacts(messages().as_bytes(), &package);
        assert_eq!(
            built.libraries,
            [PathBuf::from("/w/target/debug/libgreeter.so")]
        );
        assert_eq!(built.fresh, Some(false));
    }

    #[test]
    fn a_build_must_produce_the_file_the_module_loads() {
        let expected = |artifact: &str| Expected {
            name: "greeter".into(),
            package: PackageId {
                repr: GREETER.into(),
            },
            artifact: artifact.into(),
        };
        let built = [PathBuf::from("/w/target/debug/libgreeter.so")];
        assert_eq!(
            expected("/w/target/debug/libgreeter.so").check(&built),
            Ok(())
        );
        assert_eq!(
            expected("/w/target/debug/deps/libgreeter.so").check(&built),
            Ok(())
        );
        let elsewhere = expected("/opt/game/libgreeter.so")
            .check(&built)
            .unwrap_err();
        assert_eq!(
            elsewhere,
            "cargo built /w/target/debug/libgreeter.so, but the module loads \
             /opt/game/libgreeter.so: register it with \
             `ModuleOptions::artifact(\"/w/target/debug/libgreeter.so\")`"
        );
        let none = expected("/w/target/debug/libgreeter.so")
            .check(&[])
            .unwrap_err();
        assert!(
            none.contains("crate-type = [\"cdylib\", \"rlib\"]"),
            "{none}"
        );
    }
}
