//! `hotreload check` as a CI job runs it: over pairs of real builds (`--old`/`--new`), and
//! in a git repository of a module crate, against its base revision.

use std::path::Path;
use std::process::{Command, Output};

use hotreload_tests::{ledger_variants, variants};

fn hotreload(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hotreload"))
        .args(args)
        .output()
        .expect("run hotreload")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// `hotreload check --old .. --new ..`: its exit status and what it printed.
fn check(old: &Path, new: &Path, json: bool) -> (i32, String) {
    let (old, new) = (old.to_string_lossy(), new.to_string_lossy());
    let mut args = vec!["check", "--old", &old, "--new", &new];
    if json {
        args.extend(["--format", "json"]);
    }
    let output = hotreload(&args);
    (output.status.code().expect("an exit status"), text(&output))
}

#[test]
fn each_verdict_has_its_exit_status() {
    let counter = variants(env!("CARGO_TARGET_TMPDIR"));
    let v1 = counter.artifact("v1");
    let cases = [
        ("v1", 0, "counter: reloads cleanly"),
        (
            "v2",
            0,
            "counter: reloads cleanly\n  code changed: build_tag",
        ),
        ("v2_field", 0, "counter: reloads cleanly"),
        ("restore_error", 1, "counter: refused: "),
        ("schema_v2", 1, "counter: refused: "),
        ("bad_signature", 2, "counter: needs a host restart"),
        ("api_v2", 2, "counter: needs a host restart"),
    ];
    for (variant, status, says) in cases {
        let (code, printed) = check(v1, counter.artifact(variant), false);
        assert_eq!(code, status, "{variant}: {printed}");
        assert!(printed.contains(says), "{variant}: {printed}");
    }

    let ledger = ledger_variants(env!("CARGO_TARGET_TMPDIR"));
    let (code, printed) = check(ledger.artifact("v1"), ledger.artifact("v2"), true);
    assert_eq!(code, 0, "{printed}");
    let document: serde_json::Value = serde_json::from_str(&printed).expect(&printed);
    let module = &document["modules"][0];
    assert_eq!(module["module"], "ledger");
    assert_eq!(module["verdict"], "reloads_with_migration");
    assert_eq!(module["state_from"], 1);
    assert_eq!(module["state_to"], 2);
    assert_eq!(module["migrations"][0], "v1 -> v2 (from_v1)");
    assert_eq!(document["exit"], 0);
    let (code, printed) = check(ledger.artifact("v1"), ledger.artifact("v1-grown"), false);
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("methods added (a host built now can call them): "),
        "{printed}"
    );

    // The check itself cannot run: status 3, and why.
    let (code, printed) = check(Path::new("/nonexistent/libcounter.so"), v1, false);
    assert_eq!(code, 3, "{printed}");
    assert!(printed.contains("/nonexistent/libcounter.so"), "{printed}");
}

/// A module crate of its own in a new git repository, depending on this workspace's
/// `hotreload` by path, with the workspace's lock file (nothing is fetched).
fn module_repository(dir: &Path) {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let hotreload = workspace.join("hotreload").canonicalize().unwrap();
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(
        dir.join("Cargo.toml"),
        format!(
            "[package]\nname = \"pricing\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [lib]\ncrate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\n\
             hotreload = {{ path = {:?}, default-features = false }}\n\
             abi_stable = \"0.11.3\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\n\n\
             [workspace]\n",
            hotreload.to_string_lossy()
        ),
    )
    .unwrap();
    std::fs::copy(workspace.join("Cargo.lock"), dir.join("Cargo.lock")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), PRICING).unwrap();
    std::fs::write(dir.join(".gitignore"), "/target\n").unwrap();
    let git = |args: &[&str]| {
        let output = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=check", "-c", "user.email=check@localhost"])
            .args(args)
            .output()
            .unwrap();
        assert!(output.status.success(), "git {args:?}: {}", text(&output));
    };
    git(&["init", "--quiet", "--initial-branch=main"]);
    git(&["add", "."]);
    git(&["commit", "--quiet", "-m", "pricing v1"]);
}

const PRICING: &str = r#"use hotreload::hot_module;
use serde::{Deserialize, Serialize};

#[derive(Default, Serialize, Deserialize)]
pub struct Pricing {
    quotes: u64,
}

#[hot_module(version = 1)]
impl Pricing {
    pub fn price(&mut self, cents: u64) -> u64 {
        self.quotes += 1;
        cents
    }
}
"#;

#[test]
fn in_a_module_repository_the_working_tree_is_checked_against_the_main_branch() {
    let repository = tempfile::tempdir().unwrap();
    let dir = repository.path();
    module_repository(dir);
    let manifest = dir.join("Cargo.toml");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR")).join("check-cli-target");
    let run = || {
        let output = hotreload(&[
            "check",
            "--manifest-path",
            &manifest.to_string_lossy(),
            "--target-dir",
            &target.to_string_lossy(),
        ]);
        (output.status.code().unwrap(), text(&output))
    };
    let source = dir.join("src/lib.rs");

    // A discount: the body changes, the build reloads.
    std::fs::write(
        &source,
        PRICING.replace("        cents\n", "        cents * 9 / 10\n"),
    )
    .unwrap();
    let (code, printed) = run();
    assert_eq!(code, 0, "{printed}");
    assert!(
        printed.contains("pricing: reloads cleanly\n  code changed: price"),
        "{printed}"
    );
    assert!(printed.contains("compared with "), "{printed}");

    // A price in another currency: the running host's calls no longer fit.
    std::fs::write(
        &source,
        PRICING
            .replace("cents: u64) -> u64", "cents: f64) -> u64")
            .replace("        cents\n", "        cents as u64\n"),
    )
    .unwrap();
    let (code, printed) = run();
    assert_eq!(code, 2, "{printed}");
    assert!(
        printed.contains("pricing: needs a host restart"),
        "{printed}"
    );
    assert!(
        printed.contains("method 'price', parameter 1 ('cents')"),
        "{printed}"
    );

    // No main branch to compare with, and no --base: the check cannot run.
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(["branch", "-m", "main", "trunk"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let (code, printed) = run();
    assert_eq!(code, 3, "{printed}");
    assert!(printed.contains("to compare with"), "{printed}");
}
