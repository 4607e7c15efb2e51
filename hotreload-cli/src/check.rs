//! `hotreload check`: build the base revision and the working tree (or take two libraries),
//! check each hot module, print the verdicts, exit with the worst.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use hotreload::check::{Verdict, check_reload, modules_in};
use serde_json::json;

use crate::{CheckArgs, Format};

/// Why the check could not run.
type Failure = String;

pub(crate) fn run(args: CheckArgs) -> ExitCode {
    match compare(&args) {
        Ok(outcome) => {
            print(&args, &outcome);
            ExitCode::from(outcome.worst())
        }
        Err(failure) => {
            match args.format {
                Format::Text => eprintln!("hotreload check: {failure}"),
                Format::Json => println!("{}", json!({ "error": failure })),
            }
            ExitCode::from(3)
        }
    }
}

/// The builds compared and each module's verdict.
struct Outcome {
    base: Option<String>,
    old: PathBuf,
    new: PathBuf,
    modules: Vec<(String, hotreload::check::Checked)>,
    /// Keeps the built libraries until they are checked.
    _scratch: Option<tempfile::TempDir>,
}

impl Outcome {
    /// The exit status: the worst verdict's.
    fn worst(&self) -> u8 {
        self.modules
            .iter()
            .map(|(_, checked)| match checked.verdict {
                Verdict::NeedsHostRestart { .. } => 2,
                Verdict::Refused { .. } => 1,
                _ => 0,
            })
            .max()
            .unwrap_or(0)
    }
}

fn compare(args: &CheckArgs) -> Result<Outcome, Failure> {
    let (base, old, new, scratch) = match (&args.old, &args.new) {
        (Some(old), Some(new)) => (None, old.clone(), new.clone(), None),
        _ => {
            let (base, old, new, scratch) = build_both(args)?;
            (Some(base), old, new, Some(scratch))
        }
    };
    let modules = match &args.module {
        Some(module) => vec![module.clone()],
        None => {
            let found = modules_in(&old).map_err(|err| err.to_string())?;
            if found.is_empty() {
                return Err(format!(
                    "{} exports no hot module (no `#[hot_module]` in the crate?)",
                    old.display()
                ));
            }
            found
        }
    };
    let mut checked = Vec::new();
    for module in modules {
        let verdict = check_reload(&module, &old, &new).map_err(|err| {
            format!("the base build of `{module}` could not be loaded to check against: {err}")
        })?;
        checked.push((module, verdict));
    }
    Ok(Outcome {
        base,
        old,
        new,
        modules: checked,
        _scratch: scratch,
    })
}

fn print(args: &CheckArgs, outcome: &Outcome) {
    match args.format {
        Format::Text => {
            if let Some(base) = &outcome.base {
                println!("compared with {base}");
            }
            for (module, checked) in &outcome.modules {
                println!("{module}: {}", checked.verdict);
                if let Some(report) = &checked.report {
                    if !report.changed_methods.is_empty() {
                        println!("  code changed: {}", report.changed_methods.join(", "));
                    }
                    if !report.unknown_methods.is_empty() {
                        println!(
                            "  methods added (a host built now can call them): {}",
                            report.unknown_methods.join(", ")
                        );
                    }
                }
            }
        }
        Format::Json => {
            let modules: Vec<_> = outcome
                .modules
                .iter()
                .map(|(module, checked)| {
                    let (kind, reason, from, to, steps) = match &checked.verdict {
                        Verdict::ReloadsCleanly => ("reloads_cleanly", None, None, None, None),
                        Verdict::ReloadsWithMigration { from, to, steps } => (
                            "reloads_with_migration",
                            None,
                            Some(*from),
                            Some(*to),
                            Some(steps.clone()),
                        ),
                        Verdict::Refused { reason } => {
                            ("refused", Some(reason.clone()), None, None, None)
                        }
                        Verdict::NeedsHostRestart { reason } => {
                            ("needs_host_restart", Some(reason.clone()), None, None, None)
                        }
                        _ => ("unknown", None, None, None, None),
                    };
                    let report = checked.report.as_ref();
                    json!({
                        "module": module,
                        "verdict": kind,
                        "summary": checked.verdict.to_string(),
                        "reason": reason,
                        "state_from": from,
                        "state_to": to,
                        "migrations": steps,
                        "changed_methods": report.map(|r| r.changed_methods.clone()),
                        "added_methods": report.map(|r| r.unknown_methods.clone()),
                    })
                })
                .collect();
            let document = json!({
                "base": outcome.base,
                "old": outcome.old,
                "new": outcome.new,
                "modules": modules,
                "exit": outcome.worst(),
            });
            println!("{document:#}");
        }
    }
}

/// Builds the crate at the base revision (in a git worktree of its own) and as it is; the two
/// libraries, copied out of their target directories.
fn build_both(args: &CheckArgs) -> Result<(String, PathBuf, PathBuf, tempfile::TempDir), Failure> {
    let manifest = std::path::absolute(&args.manifest_path)
        .map_err(|err| format!("{}: {err}", args.manifest_path.display()))?;
    if !manifest.is_file() {
        return Err(format!("no manifest at {}", manifest.display()));
    }
    let crate_dir = manifest.parent().unwrap_or(Path::new("."));
    let top = git(crate_dir, &["rev-parse", "--show-toplevel"])?;
    let top = PathBuf::from(top.trim());
    let relative = manifest
        .strip_prefix(&top)
        .map_err(|_| format!("{} is not inside {}", manifest.display(), top.display()))?
        .to_path_buf();
    let base = match &args.base {
        Some(base) => base.clone(),
        None => default_base(&top)?,
    };
    let commit = git(
        &top,
        &["rev-parse", "--verify", &format!("{base}^{{commit}}")],
    )
    .map_err(|err| format!("base revision `{base}`: {err}"))?;
    let commit = commit.trim().to_owned();

    let scratch = tempfile::Builder::new()
        .prefix("hotreload-check-")
        .tempdir()
        .map_err(|err| format!("a scratch directory: {err}"))?;
    let target = match &args.target_dir {
        Some(dir) => dir.clone(),
        None => workspace_target(&manifest)?.join("hotreload-check"),
    };
    let tree = scratch.path().join("base");
    git(
        &top,
        &[
            "worktree",
            "add",
            "--detach",
            "--quiet",
            &tree.to_string_lossy(),
            &commit,
        ],
    )?;
    // One target directory per tree: both build the same package, whose cdylib's file name
    // carries no hash, and cargo would take one tree's library for the other's when it
    // finds its own build fresh.
    let old = build(
        &tree.join(&relative),
        &target.join("base"),
        args.release,
        &scratch.path().join("old"),
    );
    // The worktree goes whatever the build did.
    let _ = git(
        &top,
        &["worktree", "remove", "--force", &tree.to_string_lossy()],
    );
    let old = old.map_err(|err| {
        format!(
            "building {base} ({}): {err}",
            &commit[..12.min(commit.len())]
        )
    })?;
    let new = build(
        &manifest,
        &target.join("working-tree"),
        args.release,
        &scratch.path().join("new"),
    )
    .map_err(|err| format!("building the working tree: {err}"))?;
    Ok((
        format!("{base} ({})", &commit[..12.min(commit.len())]),
        old,
        new,
        scratch,
    ))
}

/// The merge base of HEAD with the first main branch that exists.
fn default_base(top: &Path) -> Result<String, Failure> {
    for branch in ["origin/main", "main", "origin/master", "master"] {
        if git(top, &["rev-parse", "--verify", "--quiet", branch]).is_ok() {
            let base = git(top, &["merge-base", "HEAD", branch])?;
            return Ok(base.trim().to_owned());
        }
    }
    Err(
        "no main branch (origin/main, main, origin/master, master) to compare with: give --base"
            .into(),
    )
}

/// The target directory cargo uses for `manifest`'s workspace.
fn workspace_target(manifest: &Path) -> Result<PathBuf, Failure> {
    let output = Command::new(cargo())
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|err| format!("running cargo metadata: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)
        .map_err(|err| format!("cargo metadata's output: {err}"))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata named no target directory".into())
}

/// Builds the library of the crate at `manifest` into `target` and copies it to `to`.
fn build(manifest: &Path, target: &Path, release: bool, to: &Path) -> Result<PathBuf, Failure> {
    let mut command = Command::new(cargo());
    command
        .args([
            "build",
            "--lib",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(manifest)
        .arg("--target-dir")
        .arg(target);
    if release {
        command.arg("--release");
    }
    let output = command
        .output()
        .map_err(|err| format!("running cargo: {err}"))?;
    if !output.status.success() {
        return Err(format!(
            "cargo build failed:\n{}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let library =
        cdylib_of(&String::from_utf8_lossy(&output.stdout), manifest).ok_or_else(|| {
            format!(
                "{} builds no cdylib (crate-type = [\"cdylib\"])",
                manifest.display()
            )
        })?;
    std::fs::create_dir_all(to).map_err(|err| format!("{}: {err}", to.display()))?;
    let copy = to.join(library.file_name().unwrap_or_default());
    std::fs::copy(&library, &copy).map_err(|err| format!("{}: {err}", library.display()))?;
    Ok(copy)
}

/// The cdylib cargo's JSON messages say it built for the package at `manifest`.
fn cdylib_of(messages: &str, manifest: &Path) -> Option<PathBuf> {
    let manifest = manifest.canonicalize().ok()?;
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter(|message| {
            message["manifest_path"]
                .as_str()
                .and_then(|path| Path::new(path).canonicalize().ok())
                .is_some_and(|path| path == manifest)
        })
        .flat_map(|message| message["filenames"].as_array().cloned().unwrap_or_default())
        .filter_map(|file| file.as_str().map(PathBuf::from))
        .find(|file| {
            file.extension()
                .is_some_and(|ext| ext == std::env::consts::DLL_EXTENSION)
        })
}

/// `git` in `dir`: its output, or what it said.
fn git(dir: &Path, args: &[&str]) -> Result<String, Failure> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .map_err(|err| format!("running git: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "git {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// The cargo that runs this (cargo sets `CARGO` for what it runs), else `cargo`.
fn cargo() -> std::ffi::OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}
