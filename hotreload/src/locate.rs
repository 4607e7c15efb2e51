//! Where a module's library is when the host names it only by type: in the Cargo target
//! directory of the profile the host was built with, and what to tell the user when it is
//! not there.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};

/// The module's library for a host in `target/<profile>/` (or in its `deps/` or `examples/`
/// folders, where tests and examples run from): `target/<profile>/deps/lib<crate_name>.so`
/// when it exists, else `target/<profile>/lib<crate_name>.so`.
///
/// `deps/` first: when the host depends on the module crate, `cargo build` or `cargo run` of
/// the host builds the module's cdylib there and does not copy it up to the profile
/// directory, so a library there may be older, or missing. `cargo build -p <module>` writes
/// `deps/` too, then links the result up.
pub(crate) fn default_artifact(crate_name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    artifact_in(&profile_dir(&exe), crate_name)
}

fn artifact_in(profile: &Path, crate_name: &str) -> PathBuf {
    let file = library_file_name(crate_name);
    let in_deps = profile.join("deps").join(&file);
    if in_deps.is_file() {
        in_deps
    } else {
        profile.join(file)
    }
}

/// What to tell a user whose module library is not where the host looked: where that was,
/// the command that builds it, and the line their manifest lacks if it builds no cdylib.
pub(crate) fn not_built_hint(path: &Path, manifest_dir: &Path) -> String {
    let manifest = manifest_dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).unwrap_or_default();
    let parsed: Option<toml::Table> = text.parse().ok();
    let package = parsed
        .as_ref()
        .and_then(|m| m.get("package")?.get("name")?.as_str().map(str::to_owned));
    let builds_cdylib = parsed.as_ref().is_some_and(|m| {
        m.get("lib")
            .and_then(|lib| lib.get("crate-type"))
            .and_then(|types| types.as_array())
            .is_some_and(|types| types.iter().any(|t| t.as_str() == Some("cdylib")))
    });
    let mut hint = match path.parent() {
        Some(dir) if dir.file_name().is_some_and(|n| n == "deps") => format!(
            "looked in {} and {}",
            dir.display(),
            dir.parent().unwrap_or(dir).display()
        ),
        Some(dir) => format!(
            "looked in {} and {}",
            dir.join("deps").display(),
            dir.display()
        ),
        None => format!("looked for {}", path.display()),
    };
    if parsed.is_some() && !builds_cdylib {
        hint.push_str(&format!(
            "; {} builds no cdylib: add `crate-type = [\"cdylib\", \"rlib\"]` under `[lib]`",
            manifest.display()
        ));
    }
    match package {
        Some(package) => {
            hint.push_str(&format!("; build it with `cargo build -p {package} --lib`"))
        }
        None => hint.push_str("; build the module crate with `cargo build --lib`"),
    }
    hint
}

/// Where cargo put a library, read back from its path: the target directory (the one holding
/// cargo's `CACHEDIR.TAG`), the profile directory's name and the target triple, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CargoLayout {
    pub target_dir: PathBuf,
    /// `debug`, `release` or a custom profile's name.
    pub profile: String,
    /// The `--target` triple for `target/<triple>/<profile>/`.
    pub triple: Option<String>,
}

impl CargoLayout {
    /// The layout of `target/[<triple>/]<profile>/[deps/]lib<name>.so`, when the directory
    /// above is a cargo target directory; `None` for a library anywhere else.
    pub(crate) fn of(library: &Path) -> Option<Self> {
        let mut dir = library.parent()?;
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir = dir.parent()?;
        }
        let profile = dir.file_name()?.to_str()?.to_owned();
        let above = dir.parent()?;
        if is_target_dir(above) {
            return Some(CargoLayout {
                target_dir: above.to_path_buf(),
                profile,
                triple: None,
            });
        }
        let triple = above.file_name()?.to_str()?.to_owned();
        let target_dir = above.parent()?;
        is_target_dir(target_dir).then(|| CargoLayout {
            target_dir: target_dir.to_path_buf(),
            profile,
            triple: Some(triple),
        })
    }

    /// Cargo's arguments that build into this layout.
    pub(crate) fn cargo_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> =
            vec!["--target-dir".into(), self.target_dir.clone().into()];
        match self.profile.as_str() {
            "debug" => {}
            "release" => args.push("--release".into()),
            other => args.extend(["--profile".into(), other.into()]),
        }
        if let Some(triple) = &self.triple {
            args.extend(["--target".into(), triple.into()]);
        }
        args
    }
}

/// Cargo marks every target directory it creates with a `CACHEDIR.TAG`.
fn is_target_dir(dir: &Path) -> bool {
    dir.join("CACHEDIR.TAG").is_file()
}

/// `lib<crate_name>.so` on Linux, `lib<crate_name>.dylib` on macOS, `<crate_name>.dll` on
/// Windows.
pub fn library_file_name(crate_name: &str) -> String {
    format!("{DLL_PREFIX}{crate_name}{DLL_SUFFIX}")
}

fn profile_dir(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or(Path::new("."));
    match dir.file_name().and_then(|n| n.to_str()) {
        Some("deps" | "examples") => dir.parent().unwrap_or(dir).to_path_buf(),
        _ => dir.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::{CargoLayout, artifact_in, library_file_name, not_built_hint, profile_dir};
    use std::path::Path;

    #[test]
    fn the_library_in_deps_is_preferred_when_it_exists() {
        let target = tempfile::tempdir().unwrap();
        let profile = target.path().join("debug");
        std::fs::create_dir_all(profile.join("deps")).unwrap();
        let file = library_file_name("game_logic");
        assert_eq!(artifact_in(&profile, "game_logic"), profile.join(&file));
        std::fs::write(profile.join("deps").join(&file), b"").unwrap();
        assert_eq!(
            artifact_in(&profile, "game_logic"),
            profile.join("deps").join(&file)
        );
    }

    #[test]
    fn the_hint_names_the_places_the_command_and_a_missing_crate_type() {
        let krate = tempfile::tempdir().unwrap();
        std::fs::write(
            krate.path().join("Cargo.toml"),
            "[package]\nname = \"word-filter\"\nversion = \"0.1.0\"\n",
        )
        .unwrap();
        let hint = not_built_hint(Path::new("/p/target/debug/libword_filter.so"), krate.path());
        assert_eq!(
            hint,
            format!(
                "looked in /p/target/debug/deps and /p/target/debug; {} builds no cdylib: add \
                 `crate-type = [\"cdylib\", \"rlib\"]` under `[lib]`; build it with `cargo \
                 build -p word-filter --lib`",
                krate.path().join("Cargo.toml").display()
            )
        );
        std::fs::write(
            krate.path().join("Cargo.toml"),
            "[package]\nname = \"word-filter\"\n[lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n",
        )
        .unwrap();
        let hint = not_built_hint(Path::new("/p/target/debug/libword_filter.so"), krate.path());
        assert_eq!(
            hint,
            "looked in /p/target/debug/deps and /p/target/debug; build it with `cargo build -p \
             word-filter --lib`"
        );
    }

    #[test]
    fn tests_and_examples_look_in_the_profile_dir() {
        let expect = Path::new("/p/target/debug");
        assert_eq!(profile_dir(Path::new("/p/target/debug/host")), expect);
        assert_eq!(profile_dir(Path::new("/p/target/debug/deps/t-123")), expect);
        assert_eq!(profile_dir(Path::new("/p/target/debug/examples/e")), expect);
    }

    #[test]
    fn a_layout_is_read_back_only_under_a_cargo_target_dir() {
        let root = tempfile::tempdir().unwrap();
        let target = root.path().join("target");
        let lib = library_file_name("game_logic");
        for dir in [
            "debug/deps",
            "fast/deps",
            "x86_64-unknown-linux-gnu/release/deps",
        ] {
            std::fs::create_dir_all(target.join(dir)).unwrap();
        }
        // Not a target directory (yet): no layout.
        assert_eq!(CargoLayout::of(&target.join("debug").join(&lib)), None);
        std::fs::write(
            target.join("CACHEDIR.TAG"),
            "Signature: 8a477f597d28d172789f06886806bc55",
        )
        .unwrap();
        let layout = |path: &str| CargoLayout::of(&target.join(path).join(&lib)).unwrap();
        assert_eq!(layout("debug").profile, "debug");
        assert_eq!(layout("debug/deps"), layout("debug"));
        assert_eq!(
            layout("debug").cargo_args(),
            ["--target-dir".into(), target.clone().into_os_string()]
        );
        assert_eq!(layout("fast/deps").cargo_args()[2..], ["--profile", "fast"]);
        let cross = layout("x86_64-unknown-linux-gnu/release/deps");
        assert_eq!(cross.target_dir, target);
        assert_eq!(
            cross.cargo_args()[2..],
            ["--release", "--target", "x86_64-unknown-linux-gnu"]
        );
        assert_eq!(
            CargoLayout::of(&root.path().join("elsewhere").join(&lib)),
            None
        );
    }
}
