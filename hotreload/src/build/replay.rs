//! Rebuilding a module without cargo: the rustc command cargo ran for it last time, run again.
//!
//! An edit to a module's own sources changes nothing cargo decides: the same rustc runs with
//! the same arguments, environment and incremental directory. What cargo adds on top is its
//! walk over every unit's fingerprint, a few hundred milliseconds in a large workspace. So
//! each cargo build of a module runs with `-vv`, which prints every rustc command in full
//! with the environment cargo gave it; the module's command is kept ([`Replay::capture`]),
//! and the next edit that touches only the module's own sources runs it directly.
//!
//! Anything else goes back to cargo ([`Replay::still_valid`] names what changed): a manifest,
//! a build script (a package with one is never replayed: its script may read any file), a
//! dependency's library, the toolchain (the `rustc` binary, `rust-toolchain` files, rustup's
//! settings), cargo configuration or the lock file. A replay that fails for any reason other
//! than an error in the module's own code goes back to cargo too. A replay ends as cargo's
//! build would: rustc writes the library into `deps/`, and it is linked up beside `deps/`
//! under the same name, as cargo does. Cargo's own fingerprint is not touched: the next
//! `cargo build` sees sources newer than its record and compiles the module once more. A
//! replay holds cargo's lock on the profile's directory while it runs, so that it never
//! writes beside a cargo build.
//!
//! The command line is parsed with `shlex`: cargo quotes each word as a POSIX shell would.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::SystemTime;

use super::{Collected, Slot, collect};

/// A file's identity as far as a rebuild is concerned: absent, or its length and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Stamp(Option<(u64, SystemTime)>);

/// The configuration files that can change what cargo runs, stamped.
pub(crate) type ConfigStamps = Vec<(PathBuf, Stamp)>;

impl Stamp {
    fn of(path: &Path) -> Stamp {
        Stamp(
            std::fs::metadata(path)
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?))),
        )
    }
}

/// The rustc command cargo ran for a module's library, and the files whose change means cargo
/// must decide again.
#[derive(Debug, Clone)]
pub(crate) struct Replay {
    cwd: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The package's directory: errors in files under it are the module's own.
    package_dir: PathBuf,
    /// The compiler and the dependencies' libraries, as cargo left them.
    inputs: Vec<(PathBuf, Stamp)>,
    /// The configuration, as it was before the cargo build that showed the command.
    config: ConfigStamps,
}

/// How a replay failed.
#[derive(Debug)]
pub(crate) enum ReplayFailed {
    /// The module's own code does not compile: cargo would say the same. The compiler's
    /// messages.
    Compile(String),
    /// Anything else: cargo must build.
    Other(String),
}

/// What a module's build needs to know to capture and check its command.
pub(crate) struct Unit {
    /// The library's crate name (`game_logic`).
    pub crate_name: String,
    pub package_dir: PathBuf,
    pub workspace_root: PathBuf,
}

impl Replay {
    /// Stamps the configuration files of `unit` ([`config_files`]): before cargo runs.
    pub(crate) fn stamp_config(unit: &Unit) -> ConfigStamps {
        stamp_all(config_files(unit))
    }

    /// The module's rustc command among the `Running` lines cargo printed with `-vv`, if cargo
    /// compiled the module in this build; `config` as stamped before cargo ran.
    pub(crate) fn capture(cargo_stderr: &str, unit: &Unit, config: ConfigStamps) -> Option<Replay> {
        let mut replay = cargo_stderr
            .lines()
            .filter_map(|line| {
                let line = line.trim_start().strip_prefix("Running `")?;
                line.strip_suffix('`')
            })
            .filter_map(shlex::split)
            .find_map(|words| Replay::from_words(words, unit))?;
        replay.config = config;
        Some(replay)
    }

    fn from_words(words: Vec<String>, unit: &Unit) -> Option<Replay> {
        let assignments = words.iter().take_while(|w| is_assignment(w)).count();
        let (env, rest) = words.split_at(assignments);
        let (program, args) = rest.split_first()?;
        let env: Vec<(String, String)> = env
            .iter()
            .filter_map(|w| w.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            // A jobserver's descriptors belonged to that cargo process.
            .filter(|(k, _)| !matches!(k.as_str(), "CARGO_MAKEFLAGS" | "MAKEFLAGS" | "MFLAGS"))
            .collect();
        let value_of = |flag: &str| {
            args.windows(2)
                .filter(|pair| pair[0] == flag)
                .map(|pair| pair[1].as_str())
                .collect::<Vec<_>>()
        };
        let manifest_dir = env
            .iter()
            .find(|(k, _)| k == "CARGO_MANIFEST_DIR")
            .map(|(_, v)| Path::new(v));
        let is_module = value_of("--crate-name") == [unit.crate_name.as_str()]
            && value_of("--crate-type").contains(&"cdylib")
            && !args.iter().any(|a| a == "--test")
            && manifest_dir.is_some_and(|dir| same_dir(dir, &unit.package_dir));
        if !is_module {
            return None;
        }
        let args: Vec<String> = args.iter().map(|a| plain_diagnostics(a)).collect();
        let mut inputs: Vec<PathBuf> = vec![PathBuf::from(program)];
        inputs.extend(
            value_of("--extern")
                .into_iter()
                .filter_map(|e| e.split_once('=').map(|(_, path)| PathBuf::from(path))),
        );
        Some(Replay {
            cwd: unit.workspace_root.to_path_buf(),
            program: PathBuf::from(program),
            args,
            env,
            package_dir: unit.package_dir.to_path_buf(),
            inputs: stamp_all(inputs),
            config: ConfigStamps::new(),
        })
    }

    /// The same command with the compiler and dependencies as they are now and `config` as
    /// stamped before cargo ran: after a cargo build that found the module fresh, the
    /// command cargo would run is still this one.
    pub(crate) fn restamped(mut self, config: ConfigStamps) -> Replay {
        for (path, stamp) in &mut self.inputs {
            *stamp = Stamp::of(path);
        }
        self.config = config;
        self
    }

    /// `Ok` if nothing but the module's own sources can have changed since the command was
    /// captured; otherwise the file that changed.
    pub(crate) fn still_valid(&self) -> Result<(), String> {
        match self
            .inputs
            .iter()
            .chain(&self.config)
            .find(|(path, stamp)| &Stamp::of(path) != stamp)
        {
            None => Ok(()),
            Some((path, _)) => Err(format!("{} changed", path.display())),
        }
    }

    /// Runs the command, keeping the compiler's process in `slot` while it runs. Returns the
    /// dynamic libraries it wrote, linked up beside `deps/` as cargo does.
    pub(crate) fn run(&self, slot: &Mutex<Slot>) -> Result<Vec<PathBuf>, ReplayFailed> {
        let mut command = Command::new(&self.program);
        command
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            // As cargo ran it: the host's environment without this, plus what cargo set.
            .env_remove("CARGO_TARGET_DIR")
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        tracing::info!(program = %self.program.display(), "replaying rustc");
        // Cargo's lock on the profile's directory, as cargo takes it: a `cargo build` started
        // by hand waits for the replay, and the replay for it.
        let _lock = self
            .lock_build_directory(slot)
            .map_err(ReplayFailed::Other)?;
        let Collected { status, stderr, .. } =
            collect(&mut command, slot).map_err(ReplayFailed::Other)?;
        let messages = RustcMessages::parse(&stderr, &self.cwd, &self.package_dir);
        if !status.success() {
            return Err(if messages.own_errors {
                ReplayFailed::Compile(messages.rendered)
            } else {
                ReplayFailed::Other(format!("rustc failed ({status}): {}", messages.rendered))
            });
        }
        let libraries: Vec<PathBuf> = messages
            .artifacts
            .into_iter()
            .filter(|file| {
                file.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.ends_with(std::env::consts::DLL_SUFFIX))
            })
            .collect();
        if libraries.is_empty() {
            return Err(ReplayFailed::Other(
                "rustc reported no dynamic library".into(),
            ));
        }
        let mut all = libraries.clone();
        for library in &libraries {
            match uplift(library) {
                Ok(Some(up)) => all.push(up),
                Ok(None) => {}
                Err(err) => {
                    return Err(ReplayFailed::Other(format!(
                        "linking {} up: {err}",
                        library.display()
                    )));
                }
            }
        }
        Ok(all)
    }

    /// Takes cargo's lock on the profile's directory, waiting for whoever holds it (a
    /// `cargo build` by hand, an editor's `cargo check`) unless watching stops meanwhile.
    fn lock_build_directory(&self, slot: &Mutex<Slot>) -> Result<Option<std::fs::File>, String> {
        let out_dir = self
            .args
            .windows(2)
            .find(|pair| pair[0] == "--out-dir")
            .map(|pair| self.cwd.join(&pair[1]));
        let Some(profile_dir) = out_dir.as_deref().and_then(Path::parent) else {
            return Ok(None);
        };
        let path = profile_dir.join(".cargo-lock");
        let file = std::fs::File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        // `flock` cannot wait with a deadline or be interrupted from another thread: it is
        // tried, and tried again every few milliseconds.
        loop {
            match crate::os::try_lock_exclusive(&file) {
                Ok(true) => return Ok(Some(file)),
                Ok(false) if Slot::stopped(slot) => return Err("the build was stopped".into()),
                Ok(false) => std::thread::sleep(std::time::Duration::from_millis(5)),
                Err(e) => return Err(format!("locking {}: {e}", path.display())),
            }
        }
    }
}

/// What rustc said on stderr (`--error-format=json`): the files it wrote, its diagnostics as
/// text, and whether one of them is an error in the package's own files.
struct RustcMessages {
    artifacts: Vec<PathBuf>,
    rendered: String,
    own_errors: bool,
}

impl RustcMessages {
    fn parse(stderr: &str, cwd: &Path, package_dir: &Path) -> RustcMessages {
        let mut messages = RustcMessages {
            artifacts: Vec::new(),
            rendered: String::new(),
            own_errors: false,
        };
        for line in stderr.lines() {
            let Ok(value) = serde_json::from_str::<serde_json::Value>(line) else {
                // Not JSON: a linker's or the compiler's own plain output.
                messages.rendered.push_str(line);
                messages.rendered.push('\n');
                continue;
            };
            match value["$message_type"].as_str() {
                Some("artifact") => {
                    if let Some(path) = value["artifact"].as_str() {
                        messages.artifacts.push(cwd.join(path));
                    }
                }
                Some("diagnostic") => {
                    if let Some(text) = value["rendered"].as_str() {
                        messages.rendered.push_str(text);
                    }
                    let error = value["level"]
                        .as_str()
                        .is_some_and(|l| l.starts_with("error"));
                    let own = value["spans"].as_array().is_some_and(|spans| {
                        spans.iter().any(|span| {
                            span["file_name"]
                                .as_str()
                                .is_some_and(|f| cwd.join(f).starts_with(package_dir))
                        })
                    });
                    messages.own_errors |= error && own;
                }
                _ => {}
            }
        }
        messages
    }
}

/// Links `deps/<name>` up to `<name>` beside `deps/`, replacing what is there in one rename,
/// as cargo does after each build. `None` when the library is not in a `deps/` directory.
fn uplift(library: &Path) -> std::io::Result<Option<PathBuf>> {
    let (Some(deps), Some(name)) = (library.parent(), library.file_name()) else {
        return Ok(None);
    };
    let Some(up) = deps
        .parent()
        .filter(|_| deps.file_name().is_some_and(|n| n == "deps"))
    else {
        return Ok(None);
    };
    let target = up.join(name);
    let mut temporary = name.to_os_string();
    temporary.push(".hotreload-uplift");
    let temporary = up.join(temporary);
    let _ = std::fs::remove_file(&temporary);
    if std::fs::hard_link(library, &temporary).is_err() {
        std::fs::copy(library, &temporary)?;
    }
    std::fs::rename(&temporary, &target)?;
    Ok(Some(target))
}

/// `KEY=value`, as cargo prints the environment before the program.
fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(key, _)| {
        !key.is_empty()
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && !key.starts_with(|c: char| c.is_ascii_digit())
    })
}

/// Rustc's `--json=...` without colour codes in the rendered diagnostics: the text goes to an
/// event, not a terminal. The library rustc writes does not depend on it.
fn plain_diagnostics(arg: &str) -> String {
    match arg.strip_prefix("--json=") {
        Some(kinds) => {
            let kinds: Vec<&str> = kinds
                .split(',')
                .filter(|k| *k != "diagnostic-rendered-ansi")
                .collect();
            format!("--json={}", kinds.join(","))
        }
        None => arg.to_owned(),
    }
}

fn stamp_all(paths: Vec<PathBuf>) -> Vec<(PathBuf, Stamp)> {
    paths
        .into_iter()
        .map(|path| {
            let stamp = Stamp::of(&path);
            (path, stamp)
        })
        .collect()
}

fn same_dir(a: &Path, b: &Path) -> bool {
    a == b || crate::os::same_file(a, b)
}

/// Files outside the module's package whose change can change what cargo runs: the
/// workspace's manifest and lock file, `rust-toolchain` files, cargo's configuration in the
/// workspace's directories and in `CARGO_HOME`, and rustup's settings (the default toolchain
/// and directory overrides). The package's own manifest and build script are watched and
/// stamped too.
fn config_files(unit: &Unit) -> Vec<PathBuf> {
    let mut files = vec![
        unit.package_dir.join("Cargo.toml"),
        unit.package_dir.join("build.rs"),
        unit.workspace_root.join("Cargo.toml"),
        unit.workspace_root.join("Cargo.lock"),
    ];
    for dir in unit.package_dir.ancestors() {
        files.push(dir.join("rust-toolchain"));
        files.push(dir.join("rust-toolchain.toml"));
        files.push(dir.join(".cargo/config.toml"));
        files.push(dir.join(".cargo/config"));
    }
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
    let rustup_home = std::env::var_os("RUSTUP_HOME")
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".rustup")));
    if let Some(dir) = cargo_home {
        files.push(dir.join("config.toml"));
        files.push(dir.join("config"));
    }
    if let Some(dir) = rustup_home {
        files.push(dir.join("settings.toml"));
    }
    files
}

#[cfg(test)]
mod tests {
    use super::{Replay, Unit, plain_diagnostics};
    use std::path::Path;

    const LINE: &str = "     Running `CARGO=/t/bin/cargo CARGO_CRATE_NAME=game_logic \
        CARGO_MANIFEST_DIR=/w/game-logic CARGO_PKG_DESCRIPTION='A game'\\''s logic' \
        CARGO_PKG_NAME=game-logic LD_LIBRARY_PATH='/w/target/debug/deps:/t/lib' \
        /t/bin/rustc --crate-name game_logic --edition=2024 game-logic/src/lib.rs \
        --error-format=json --json=diagnostic-rendered-ansi,artifacts,future-incompat \
        --crate-type cdylib --crate-type rlib --emit=dep-info,link -C debuginfo=2 \
        --check-cfg 'cfg(docsrs,test)' --out-dir /w/target/debug/deps \
        -C incremental=/w/target/debug/incremental \
        --extern serde=/w/target/debug/deps/libserde-1.rlib`";

    fn unit() -> Unit {
        Unit {
            crate_name: "game_logic".into(),
            package_dir: "/w/game-logic".into(),
            workspace_root: "/w".into(),
        }
    }

    #[test]
    fn the_module_s_command_is_read_from_cargo_s_running_lines() {
        let stderr = format!(
            "   Compiling serde v1.0.0\n     Running `/t/bin/rustc --crate-name serde x.rs`\n{LINE}\n"
        );
        let replay =
            Replay::capture(&stderr, &unit(), Replay::stamp_config(&unit())).expect("captured");
        assert_eq!(replay.program, Path::new("/t/bin/rustc"));
        assert_eq!(replay.cwd, Path::new("/w"));
        assert!(
            replay
                .env
                .contains(&("CARGO_PKG_DESCRIPTION".into(), "A game's logic".into())),
            "{:?}",
            replay.env
        );
        assert_eq!(replay.args[0], "--crate-name");
        assert!(replay.args.contains(&"cfg(docsrs,test)".to_owned()));
        assert!(
            replay
                .args
                .contains(&"--json=artifacts,future-incompat".to_owned())
        );
        let inputs: Vec<&Path> = replay
            .inputs
            .iter()
            .chain(&replay.config)
            .map(|(p, _)| p.as_path())
            .collect();
        assert!(inputs.contains(&Path::new("/t/bin/rustc")));
        assert!(inputs.contains(&Path::new("/w/target/debug/deps/libserde-1.rlib")));
        assert!(inputs.contains(&Path::new("/w/game-logic/Cargo.toml")));
    }

    #[test]
    fn other_crates_and_test_builds_are_not_the_module() {
        let test_build = LINE.replace("--crate-type cdylib", "--test");
        assert!(Replay::capture(&test_build, &unit(), Vec::new()).is_none());
        let other_dir = LINE.replace("CARGO_MANIFEST_DIR=/w/game-logic", "CARGO_MANIFEST_DIR=/x");
        assert!(Replay::capture(&other_dir, &unit(), Vec::new()).is_none());
        assert!(Replay::capture("   Compiling game-logic v0.1.0", &unit(), Vec::new()).is_none());
    }

    #[test]
    fn only_the_colour_of_diagnostics_changes() {
        assert_eq!(
            plain_diagnostics("--json=diagnostic-rendered-ansi,artifacts"),
            "--json=artifacts"
        );
        assert_eq!(plain_diagnostics("-Cdebuginfo=2"), "-Cdebuginfo=2");
    }
}
