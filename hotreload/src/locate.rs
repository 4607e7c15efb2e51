//! Where a module's library is when the host names it only by type: beside the host's own
//! executable, in the Cargo target directory of the profile the host was built with.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::path::{Path, PathBuf};

/// `target/<profile>/lib<crate_name>.so` for a host in `target/<profile>/` (or in its `deps/`
/// or `examples/` folders, where tests and examples run from).
pub(crate) fn default_artifact(crate_name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    profile_dir(&exe).join(library_file_name(crate_name))
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
    use super::profile_dir;
    use std::path::Path;

    #[test]
    fn tests_and_examples_look_in_the_profile_dir() {
        let expect = Path::new("/p/target/debug");
        assert_eq!(profile_dir(Path::new("/p/target/debug/host")), expect);
        assert_eq!(profile_dir(Path::new("/p/target/debug/deps/t-123")), expect);
        assert_eq!(profile_dir(Path::new("/p/target/debug/examples/e")), expect);
    }
}
