//! The `static` build mode: a host built with it calls the module's rlib directly and loads
//! no library. The host (`tests/static-host`) lives outside the workspace so that its
//! feature does not spread to the other crates; this test builds and runs it.

use std::path::Path;
use std::process::Command;

#[test]
fn a_host_built_with_the_static_feature_calls_directly_and_loads_nothing() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("static-host/Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures/target");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let build = Command::new(cargo)
        .args(["build", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("cargo");
    assert!(
        build.status.success(),
        "building the static host failed:\n{}",
        String::from_utf8_lossy(&build.stderr)
    );
    let run = Command::new(target.join("debug/hotreload-static-host"))
        .output()
        .expect("the static host runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "the static host failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert_eq!(stdout.trim(), "static host: calls work, nothing loaded");
}
