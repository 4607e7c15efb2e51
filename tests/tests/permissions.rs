//! Loading a library runs its initialisers, so an artifact that another user could have
//! written, or swapped through any directory on the way to it, is refused before it is read:
//! through a symbolic link, through a directory above the library's own, by the library's own
//! bits or owner. Each refusal names the path at fault and the command that fixes it; the
//! running version keeps serving with its state, and the same artifact loads once fixed. The
//! shadow directory is private to the user and swept of directories that processes which no
//! longer run left behind.
//!
//! Cases that need a file of another user make one with `chown`, which takes root (the
//! project's tests run as root); without it they say so and skip that case.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use abi_stable::std_types::RString;
use counter::Counter;
use hotreload::{Event, HotError, HotReloader, Module, ModuleOptions, hot_fn};
use hotreload_tests::{Sandbox, variants, wait_for};

/// A user other than this process's and root (`nobody`), for files of another user.
const OTHER_USER: u32 = 65534;

/// A v1 counter loaded from `artifact`, with some state, and a check that it is untouched.
struct Running {
    artifact: PathBuf,
    reloader: HotReloader,
    module: Module<Counter>,
    before: counter::Snapshot,
}

impl Running {
    /// The counter registered from a sandbox, as the other tests register it.
    fn in_sandbox(sandbox: &Sandbox) -> Self {
        let (reloader, module) = sandbox.register("v1");
        Self::with_state(sandbox.artifact(), reloader, module)
    }

    /// The counter registered from `artifact`, where v1 is installed first.
    fn at(artifact: &Path) -> Self {
        install("v1", artifact);
        let reloader = HotReloader::new();
        let module = reloader
            .register_with::<Counter>(ModuleOptions::new().artifact(artifact))
            .unwrap_or_else(|err| panic!("registering the counter failed: {err}"));
        Self::with_state(artifact.to_path_buf(), reloader, module)
    }

    fn with_state(artifact: PathBuf, reloader: HotReloader, module: Module<Counter>) -> Self {
        for n in [4, 8, 15] {
            hot_fn!(module.add(n)).unwrap();
        }
        hot_fn!(module.set_label(RString::from("before the refusal"))).unwrap();
        let before = hot_fn!(module.snapshot()).unwrap();
        Running {
            artifact,
            reloader,
            module,
            before,
        }
    }

    /// Reloads, which must be refused for the artifact's permissions; returns why.
    fn refused(&self) -> String {
        match self.reloader.reload_module("counter") {
            Ok(report) => panic!("the reload should have been refused, got {report:?}"),
            Err(HotError::UnsafeArtifact {
                module,
                path,
                reason,
            }) => {
                assert_eq!(
                    (module.as_str(), path.as_path()),
                    ("counter", &*self.artifact)
                );
                reason
            }
            Err(other) => panic!("expected an unsafe artifact, got {other:?}"),
        }
    }

    /// v1 is serving, with the state it had.
    fn assert_unchanged(&self) {
        hotreload_tests::assert_v1_serves(&self.module, &self.before);
    }

    /// Reloads, which must now load v2 and keep the state.
    fn assert_reloads_v2(&self) {
        let report = self
            .reloader
            .reload_module("counter")
            .unwrap_or_else(|err| panic!("the fixed artifact should load: {err}"));
        assert_eq!(report.from.map(|v| v.generation), Some(1), "from v1");
        assert_eq!(hot_fn!(self.module.build_tag()).unwrap(), 2);
        assert_eq!(
            hot_fn!(self.module.snapshot()).unwrap().total,
            self.before.total,
            "state kept"
        );
    }
}

/// Puts a built variant at `to` as a linker would (write beside, rename).
fn install(variant: &str, to: &Path) {
    hotreload::harness::install(variants!().artifact(variant), to).expect("install a variant");
}

fn chmod(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// Gives `path` to `uid`; `false` when this process may not (it is not root).
fn chown(path: &Path, uid: u32) -> bool {
    match std::os::unix::fs::chown(path, Some(uid), Some(uid)) {
        Ok(()) => true,
        Err(err) if err.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "skipped: giving {} to another user takes root",
                path.display()
            );
            false
        }
        Err(err) => panic!("chown {}: {err}", path.display()),
    }
}

/// A fresh private directory (0700, in the temp dir), with its real path.
fn private_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let real = dir.path().canonicalize().unwrap();
    (dir, real)
}

#[test]
fn a_symlink_to_a_library_in_a_directory_everyone_may_write_is_refused() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    let (_elsewhere, elsewhere) = private_dir();
    let open = elsewhere.join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let target = open.join("libcounter.so");
    install("v2", &target);
    fs::remove_file(sandbox.artifact()).unwrap();
    std::os::unix::fs::symlink(&target, sandbox.artifact()).unwrap();

    let reason = running.refused();
    assert_eq!(
        reason,
        format!(
            "it resolves to {target}; directory {open} is writable by its group and every user \
             and has no sticky bit (a directory others may write is safe only with the sticky \
             bit and owned by root, as /tmp is); fix with `chmod go-w {open}`",
            target = target.display(),
            open = open.display()
        )
    );
    running.assert_unchanged();

    chmod(&open, 0o755);
    running.assert_reloads_v2();
}

#[test]
fn a_symlink_in_a_directory_everyone_may_write_is_refused_even_to_a_safe_library() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    // The library itself is in a safe place; the link to it is where others may write, so
    // they could point it at another file.
    let (_safe, safe) = private_dir();
    let target = safe.join("libcounter.so");
    install("v2", &target);
    let open = sandbox.path().join("open");
    fs::create_dir(&open).unwrap();
    chmod(&open, 0o777);
    let link = open.join("libcounter.so");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    fs::remove_file(sandbox.artifact()).unwrap();
    std::os::unix::fs::symlink(&link, sandbox.artifact()).unwrap();

    let reason = running.refused();
    assert!(
        reason.starts_with("the link to it is in an unsafe place: directory")
            && reason.contains(&open.canonicalize().unwrap().display().to_string()),
        "{reason}"
    );
    running.assert_unchanged();

    chmod(&open, 0o755);
    running.assert_reloads_v2();
}

#[test]
fn a_safe_directory_under_one_everyone_may_write_is_refused() {
    let (_root, root) = private_dir();
    let outer = root.join("outer");
    let inner = outer.join("inner");
    fs::create_dir_all(&inner).unwrap();
    chmod(&outer, 0o755);
    chmod(&inner, 0o755);
    let running = Running::at(&inner.join("libcounter.so"));

    // Others may rename `inner` away and put a directory of theirs in its place.
    chmod(&outer, 0o757);
    install("v2", &running.artifact);
    let reason = running.refused();
    assert!(
        reason.starts_with(&format!(
            "directory {outer} is writable by every user and has no sticky bit",
            outer = outer.display()
        )),
        "names the parent, not the library's own directory: {reason}"
    );
    assert!(
        reason.ends_with(&format!("fix with `chmod o-w {}`", outer.display())),
        "{reason}"
    );
    running.assert_unchanged();

    chmod(&outer, 0o755);
    running.assert_reloads_v2();
}

#[test]
fn a_library_its_group_may_write_is_refused() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    sandbox.install("v2");
    chmod(&sandbox.artifact(), 0o664);
    let artifact = sandbox.artifact().canonicalize().unwrap();

    let reason = running.refused();
    assert_eq!(
        reason,
        format!(
            "{artifact} is writable by its group; fix with `chmod g-w {artifact}`",
            artifact = artifact.display()
        )
    );
    running.assert_unchanged();

    chmod(&sandbox.artifact(), 0o644);
    running.assert_reloads_v2();
}

#[test]
fn a_library_of_another_user_is_refused() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    sandbox.install("v2");
    if !chown(&sandbox.artifact(), OTHER_USER) {
        return;
    }
    let artifact = sandbox.artifact().canonicalize().unwrap();

    let reason = running.refused();
    assert!(
        reason.starts_with(&format!(
            "{} belongs to user {OTHER_USER}, neither this process's user",
            artifact.display()
        )),
        "{reason}"
    );
    assert!(reason.contains("`chown "), "says how to fix it: {reason}");
    running.assert_unchanged();

    assert!(chown(&sandbox.artifact(), 0));
    running.assert_reloads_v2();
}

#[test]
fn a_directory_under_a_sticky_directory_of_root_is_accepted_and_of_another_user_is_not() {
    let (_root, root) = private_dir();
    let sticky = root.join("shared");
    let mine = sticky.join("mine");
    fs::create_dir_all(&mine).unwrap();
    chmod(&sticky, 0o1777);
    chmod(&mine, 0o755);
    if fs::metadata(&sticky).unwrap().uid() != 0 {
        eprintln!("skipped: a directory owned by root takes root to make");
        return;
    }
    // Loads through a sticky directory of root, as everything under /tmp does.
    let running = Running::at(&mine.join("libcounter.so"));

    if !chown(&sticky, OTHER_USER) {
        return;
    }
    install("v2", &running.artifact);
    let reason = running.refused();
    assert_eq!(
        reason,
        format!(
            "directory {sticky} is writable by its group and every user and, though it has the \
             sticky bit, belongs to user {OTHER_USER}, not root (a directory others may write \
             is safe only with the sticky bit and owned by root, as /tmp is); fix with `chmod \
             go-w {sticky}`",
            sticky = sticky.display()
        )
    );
    running.assert_unchanged();

    assert!(chown(&sticky, 0));
    running.assert_reloads_v2();
}

#[test]
fn the_watcher_reads_through_the_same_check() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    let events = running.reloader.subscribe();
    running.reloader.start_watching().unwrap();
    let timeout = Duration::from_secs(30);
    wait_for(&events, timeout, "watching", |e| {
        matches!(e, Event::Watching { .. })
    });

    // A complete build that its group may write, renamed into place.
    let beside = sandbox.path().join(".libcounter.so.new");
    fs::write(&beside, sandbox.variant_bytes("v2")).unwrap();
    chmod(&beside, 0o664);
    fs::rename(&beside, sandbox.artifact()).unwrap();
    let seen = wait_for(&events, timeout, "refused", |e| {
        matches!(e, Event::ReloadFailed { .. } | Event::Reloaded { .. })
    });
    match seen.last() {
        Some(Event::ReloadFailed {
            error: HotError::UnsafeArtifact { reason, .. },
            ..
        }) => assert!(reason.contains("chmod g-w"), "{reason}"),
        other => panic!("expected an unsafe artifact, got {other:?}"),
    }
    running.assert_unchanged();

    sandbox.install("v2");
    wait_for(&events, timeout, "reloaded", |e| {
        matches!(e, Event::Reloaded { .. })
    });
    assert_eq!(hot_fn!(running.module.build_tag()).unwrap(), 2);
}

/// This process's marker in a shadow directory's name: its start time (field 22 of
/// `/proc/self/stat`) and the inode of its pid namespace.
fn own_marker() -> (u64, u64) {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let after_name = stat.rsplit_once(')').unwrap().1;
    let start = after_name
        .split_whitespace()
        .nth(19)
        .unwrap()
        .parse()
        .unwrap();
    let namespace = fs::read_link("/proc/self/ns/pid").unwrap();
    let namespace = namespace.to_str().unwrap();
    let namespace = namespace
        .strip_prefix("pid:[")
        .and_then(|n| n.strip_suffix(']'))
        .unwrap()
        .parse()
        .unwrap();
    (start, namespace)
}

/// The reloader's shadow directory, from where its module's live version was copied.
fn shadow_dir(module: &Module<Counter>) -> PathBuf {
    module
        .version()
        .unwrap()
        .shadow
        .parent()
        .unwrap()
        .to_path_buf()
}

fn this_user() -> u32 {
    tempfile::tempfile().unwrap().metadata().unwrap().uid()
}

#[test]
fn the_shadow_directory_and_its_parent_are_private() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    let dir = shadow_dir(&running.module);
    let parent = dir.parent().unwrap();
    let me = this_user();
    assert_eq!(
        parent.file_name().unwrap().to_str().unwrap(),
        format!("hotreload-{me}")
    );
    for path in [&dir, parent] {
        let meta = fs::symlink_metadata(path).unwrap();
        assert!(meta.is_dir(), "{}", path.display());
        assert_eq!(meta.mode() & 0o7777, 0o700, "{}", path.display());
        assert_eq!(meta.uid(), me, "{}", path.display());
    }
    let (start, namespace) = own_marker();
    let name = dir.file_name().unwrap().to_str().unwrap();
    let marker = format!("{}-{start}-{namespace}-", std::process::id());
    assert!(name.starts_with(&marker), "{name} has the marker {marker}");
}

/// Removes the directories a test made, even when it fails.
struct Made(Vec<PathBuf>);

impl Drop for Made {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn a_new_reloader_removes_shadow_directories_of_processes_that_no_longer_run() {
    let first = Sandbox::new(variants!());
    let running = Running::in_sandbox(&first);
    let mine = shadow_dir(&running.module);
    let parent = mine.parent().unwrap();
    let pid = std::process::id();
    let (start, namespace) = own_marker();
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();

    let made = Made(
        [
            // Left by a process that was killed.
            format!("{dead}-{start}-{namespace}-killed"),
            // This pid, but a process that started at another time.
            format!("{pid}-{}-{namespace}-reused", start + 1),
            // This process: another reloader of it.
            format!("{pid}-{start}-{namespace}-alive"),
            // Another pid namespace: its pids are not ours to judge.
            format!("{dead}-{start}-{}-elsewhere", namespace + 1),
            // Not a marker.
            format!("{dead}-notes"),
        ]
        .iter()
        .map(|name| parent.join(name))
        .collect(),
    );
    for dir in &made.0 {
        fs::create_dir(dir).unwrap();
        fs::write(dir.join("counter-1-libcounter.so"), b"a shadow copy").unwrap();
    }
    let [killed, reused, alive, elsewhere, notes] = &made.0[..] else {
        unreachable!()
    };

    // A reloader makes its shadow directory at its first registration.
    let second = Sandbox::new(variants!());
    let (_reloader, module) = second.register("v1");

    assert!(!killed.exists(), "a dead process's directory is removed");
    assert!(!reused.exists(), "a reused pid's directory is removed");
    assert!(alive.exists(), "a live process's directory is kept");
    assert!(elsewhere.exists(), "another namespace's directory is kept");
    assert!(notes.exists(), "a directory without a marker is kept");
    assert!(mine.exists(), "the first reloader's directory is kept");
    assert_eq!(shadow_dir(&module).parent(), Some(parent));
    assert_eq!(hot_fn!(running.module.build_tag()).unwrap(), 1);
}

#[test]
fn a_fifo_at_the_artifact_path_is_refused_without_waiting_for_a_writer() {
    let sandbox = Sandbox::new(variants!());
    let running = Running::in_sandbox(&sandbox);
    fs::remove_file(sandbox.artifact()).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(sandbox.artifact())
        .status()
        .unwrap();
    assert!(made.success());

    // If the reload waits for a writer, this one comes after a while to let it go on.
    let (done, finished) = std::sync::mpsc::channel::<()>();
    let fifo = sandbox.artifact();
    let watchdog = std::thread::spawn(move || {
        let waited = finished.recv_timeout(Duration::from_secs(20)).is_err();
        if waited {
            drop(fs::OpenOptions::new().write(true).open(&fifo));
        }
        waited
    });
    let outcome = running.reloader.reload_module("counter");
    let _ = done.send(());
    assert!(
        !watchdog.join().unwrap(),
        "the reload waited for a writer to the FIFO"
    );
    match outcome {
        Err(HotError::UnsafeArtifact { reason, .. }) => {
            assert!(reason.contains("not a regular file"), "{reason}")
        }
        other => panic!("expected an unsafe artifact, got {other:?}"),
    }
    running.assert_unchanged();
}
