//! The fleet subcommands against a real `nats-server` (loopback, a free port, JetStream in a
//! temporary directory): keys, publishing real builds, status, rollout and rollback, and
//! their exit statuses. The nodes' side is tested in `tests/tests/fleet.rs`.

use std::process::{Command, Output};

use hotreload_tests::nats::NatsServer;
use hotreload_tests::variants;

/// Runs `hotreload <args>` against the server at `url`, bucket `cli`.
fn hotreload(url: &str, args: &[&str]) -> (i32, String) {
    let output: Output = Command::new(env!("CARGO_BIN_EXE_hotreload"))
        .args(args)
        .env("HOTRELOAD_NATS", url)
        .env("HOTRELOAD_BUCKET", "cli")
        .output()
        .expect("run hotreload");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.code().expect("an exit status"), text)
}

#[test]
fn keygen_publish_status_rollout_and_rollback_from_the_command_line() {
    let counter = variants(env!("CARGO_TARGET_TMPDIR"));
    let (v1, v2) = (
        counter.artifact("v1").to_string_lossy().into_owned(),
        counter.artifact("v2").to_string_lossy().into_owned(),
    );
    let dir = tempfile::tempdir().expect("a temporary directory");
    let server = NatsServer::start(dir.path());
    let url = server.url();
    let secret = dir
        .path()
        .join("release.key")
        .to_string_lossy()
        .into_owned();
    let public = dir
        .path()
        .join("release.pub")
        .to_string_lossy()
        .into_owned();

    let (code, said) = hotreload(&url, &["keygen", "--secret", &secret, "--public", &public]);
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("key "), "{said}");
    let (code, said) = hotreload(&url, &["keygen", "--secret", &secret, "--public", &public]);
    assert_eq!(code, 3, "existing key files are kept: {said}");

    let publish = |build: &str| {
        hotreload(
            &url,
            &["publish", "--key", &secret, "--module", "counter", build],
        )
    };
    let (code, said) = publish(&v1);
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("counter: release 1 (build), "), "{said}");
    let (code, said) = publish(&v2);
    assert_eq!(code, 0, "{said}");
    assert!(said.starts_with("counter: release 2 (build), "), "{said}");

    // A file that is no build of the module: refused before anything is uploaded.
    let (code, said) = publish(&public);
    assert_eq!(code, 3, "{said}");
    assert!(said.contains(&format!("build {public}")), "{said}");
    let (code, said) = hotreload(
        &url,
        &["publish", "--key", &public, "--module", "counter", &v1],
    );
    assert_eq!(code, 3, "a public key does not sign: {said}");

    let (code, said) = hotreload(&url, &["status"]);
    assert_eq!(code, 0, "{said}");
    assert!(said.contains("(no node has reported)"), "{said}");
    let (code, said) = hotreload(&url, &["rollout", "--key", &secret, "--module", "counter"]);
    assert_eq!(code, 3, "no node to roll out to: {said}");
    assert!(said.contains("a live node"), "{said}");

    let (code, said) = hotreload(
        &url,
        &[
            "rollback", "--key", &secret, "--module", "counter", "--wait", "0",
        ],
    );
    assert_eq!(code, 0, "{said}");
    assert!(
        said.starts_with("counter: release 3 (rollback of release 2), "),
        "{said}"
    );
    let (code, said) = hotreload(
        &url,
        &[
            "publish", "--key", &secret, "--module", "counter", &v1, "--waves", "0",
        ],
    );
    assert_eq!(code, 2, "clap refuses a wave of no node: {said}");
}
