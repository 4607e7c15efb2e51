//! What goes wrong, and what is left afterwards.
//!
//! The corpus of bad builds is one table (`corpus`): each case is a name, how the bad artifact
//! is made (a variant build of the counter fixture, bytes, a `v2` made unsafe to load, or no
//! file at all) and what its refusal must say. One runner offers every case to a running v1
//! and checks the typed error and its message naming the module and what is wrong; v1 still
//! serving with its whole state equal before and after; the refused build's shadow copy
//! deleted and its image unmapped; and, once the reloader is dropped, no file descriptor and
//! no mapping left over. One test runs the cases in turn, so the process-wide counts are its
//! own.
//!
//! The other tests are faults of builds that load: a constructor that panics, which panics
//! stay quiet and which are reported, a method that panics during or after probation, and
//! rollback.

use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use abi_stable::std_types::RString;
use counter::Counter;
use hotreload::{
    Event, HotError, HotReloader, Module, ModuleFault, ModuleOptions, Probation, Rejection,
    RollbackState, hot_fn,
};
use hotreload_tests::{
    Sandbox, assert_v1_serves, one_at_a_time, open_fds, sha256_hex, variants, wait_for,
};

/// One bad build offered to a running v1.
struct Case {
    name: &'static str,
    offer: Offer,
    /// What v1 is registered with, besides its artifact path.
    options: fn() -> ModuleOptions,
    /// Checks the error of the refused reload: its variant, and a message that names what is
    /// wrong.
    check: fn(&HotError),
}

/// How the bad artifact gets to the path the module is registered at.
enum Offer {
    /// A variant of the counter fixture (`hotreload_tests::variants`).
    Variant(&'static str),
    /// Bytes made by the test.
    Bytes(fn() -> Vec<u8>),
    /// `v2`, then made unsafe to load by this change to the artifact's path.
    UnsafeV2(fn(&Path)),
    /// Nothing: v1's artifact is deleted.
    Missing,
}

impl Case {
    fn new(name: &'static str, offer: Offer, check: fn(&HotError)) -> Self {
        Case {
            name,
            offer,
            options: ModuleOptions::new,
            check,
        }
    }

    fn registered_with(self, options: fn() -> ModuleOptions) -> Self {
        Case { options, ..self }
    }
}

/// Every bad build, with what its refusal must say.
fn corpus() -> Vec<Case> {
    use Offer::{Bytes, Missing, UnsafeV2, Variant};
    vec![
        Case::new("an empty file", Bytes(Vec::new), |err| {
            assert_eq!(not_a_library(err), "the file is empty");
            assert!(err.to_string().ends_with("the file is empty"), "{err}");
        }),
        Case::new("random bytes", Bytes(random_bytes), |err| {
            let reason = not_a_library(err);
            assert!(reason.starts_with("not an object file"), "{reason}");
        }),
        Case::new(
            "the first half of a valid build",
            Bytes(|| {
                let whole = variant_bytes("v2");
                whole[..whole.len() / 2].to_vec()
            }),
            |err| {
                // Its section headers, at the end of the file, are cut off.
                let reason = not_a_library(err);
                assert!(reason.starts_with("not an object file"), "{reason}");
            },
        ),
        Case::new(
            "an ELF for another architecture",
            Bytes(|| {
                let mut elf = variant_bytes("v2");
                // e_machine, little-endian, at offset 18: AArch64 (183).
                elf[18..20].copy_from_slice(&183u16.to_le_bytes());
                elf
            }),
            |err| {
                let reason = not_a_library(err);
                assert!(reason.contains("built for Aarch64"), "{reason}");
            },
        ),
        Case::new(
            "a shared library that is not a module",
            Bytes(mapped_c_library),
            no_counter_descriptor,
        ),
        Case::new(
            "a library with an unresolved symbol",
            Variant("unresolved_symbol"),
            |err| match err {
                HotError::Open {
                    module, message, ..
                } => {
                    assert_eq!(module, "counter");
                    assert!(
                        message.contains("hotreload_symbol_that_no_library_defines"),
                        "{message}"
                    );
                }
                other => panic!("expected Open, got {other:?}"),
            },
        ),
        Case::new(
            "a build against another framework ABI",
            Variant("wrong_abi"),
            |err| {
                let abi = hotreload::__private::ABI_VERSION;
                assert_eq!(
                    rejected(err),
                    &Rejection::AbiVersion {
                        expected: abi,
                        found: 999
                    }
                );
                assert_eq!(
                    err.to_string(),
                    format!("counter rejected: framework ABI version 999, host has {abi}")
                );
            },
        ),
        Case::new(
            "a changed parameter type",
            Variant("bad_signature"),
            |err| {
                layout_mismatch(
                    err,
                    "method 'add', parameter 1 ('n'): expected i64, found f64",
                );
                let HotError::Rejected { detail, .. } = err else {
                    unreachable!()
                };
                assert!(
                    detail.as_deref().is_some_and(|d| d.lines().count() > 5),
                    "the full report is kept apart"
                );
            },
        ),
        Case::new(
            "a changed parameter type, as the sources spell it",
            Variant("param_type_changed"),
            |err| {
                layout_mismatch(
                    err,
                    "method 'join', parameter 2 ('sep'): expected &str, found String",
                )
            },
        ),
        Case::new("a parameter added", Variant("param_added"), |err| {
            layout_mismatch(err, "method 'add': takes 2 parameters, the host expects 1")
        }),
        Case::new(
            "a changed tuple parameter",
            Variant("tuple_changed"),
            |err| {
                layout_mismatch(
                    err,
                    "method 'measure', parameter 1 ('text'): expected (String, u8), found (String, u16)",
                )
            },
        ),
        Case::new("a changed return type", Variant("return_changed"), |err| {
            layout_mismatch(err, "method 'calls', return type: expected u64, found u32")
        }),
        Case::new("a renamed method", Variant("method_renamed"), |err| {
            layout_mismatch(err, "method 'calls' is missing")
        }),
        Case::new("another API version", Variant("api_v2"), |err| {
            assert_eq!(
                rejected(err),
                &Rejection::ApiVersion {
                    found: 2,
                    accepted: 1..=1
                }
            );
            assert_eq!(
                err.to_string(),
                "counter rejected: API version 2, host accepts 1"
            );
        }),
        Case::new(
            "another module's build",
            Variant("other_module"),
            no_counter_descriptor,
        ),
        Case::new(
            "a descriptor symbol that is not a descriptor",
            Variant("bad_magic"),
            |err| assert_eq!(rejected(err), &Rejection::BadMagic),
        ),
        Case::new(
            "a descriptor symbol smaller than a descriptor",
            Variant("short_descriptor"),
            |err| {
                let size = |n: usize| n as u64;
                assert_eq!(
                    rejected(err),
                    &Rejection::DescriptorSize {
                        abi: hotreload::__private::ABI_VERSION,
                        expected: size(size_of::<hotreload::__private::ModuleDescriptor>()),
                        found: size(size_of::<hotreload::__private::DescriptorPrefix>()),
                    }
                );
            },
        ),
        Case::new(
            "a build with panic = \"abort\"",
            Variant("panic_abort"),
            |err| {
                assert_eq!(rejected(err), &Rejection::PanicAbort);
                let message = err.to_string();
                assert!(
                    message.contains("panic = \"abort\"") && message.contains("panic = \"unwind\""),
                    "says how to fix it: {message}"
                );
            },
        ),
        Case::new(
            "a restore that panics",
            Variant("restore_panic"),
            |err| match err {
                HotError::Restore {
                    fault: ModuleFault::Panicked(message),
                    ..
                } => assert!(
                    message.starts_with("restore exploded on purpose (at "),
                    "{message}"
                ),
                other => panic!("expected a restore panic, got {other:?}"),
            },
        ),
        Case::new(
            "state the new build cannot decode",
            Variant("restore_error"),
            |err| match err {
                HotError::Restore {
                    generation,
                    from_generation,
                    fault: ModuleFault::Failed(message),
                    ..
                } => {
                    assert_eq!((*generation, *from_generation), (2, 1));
                    assert!(message.contains("missing field `required`"), "{message}");
                    assert!(message.contains("schema v1"), "{message}");
                }
                other => panic!("expected a restore failure, got {other:?}"),
            },
        ),
        Case::new(
            "another state schema without a migration",
            Variant("schema_v2"),
            // Refused before anything is touched: the build declares no way up.
            |err| match err {
                HotError::StateSchema {
                    from: 1,
                    to: 2,
                    reason,
                    ..
                } => assert_eq!(
                    reason,
                    "the new build (schema v2) declares no way up from v1: it needs \
                     `#[migrate(from = k)]` for every k from 1 to 1"
                ),
                other => panic!("expected a state schema refusal, got {other:?}"),
            },
        ),
        Case::new("a missing artifact", Missing, |err| {
            assert!(
                matches!(err, HotError::ArtifactNotFound { module, .. } if module == "counter"),
                "{err:?}"
            );
        }),
        Case::new(
            "a world-writable artifact",
            UnsafeV2(|artifact| set_mode(artifact, 0o666)),
            |err| {
                let reason = unsafe_artifact(err);
                assert!(
                    reason.contains("chmod go-w"),
                    "says how to fix it: {reason}"
                );
            },
        ),
        Case::new(
            "a directory writable by others without the sticky bit",
            UnsafeV2(|artifact| set_mode(artifact.parent().unwrap(), 0o777)),
            |err| {
                let reason = unsafe_artifact(err);
                assert!(
                    reason.starts_with("directory ") && reason.contains("has no sticky bit"),
                    "{reason}"
                );
            },
        ),
        Case::new(
            "an artifact whose digest is not pinned",
            Variant("v2"),
            |err| match err {
                HotError::NotPinned { sha256, .. } => {
                    assert_eq!(sha256, &sha256_hex(&variant_bytes("v2")))
                }
                other => panic!("expected NotPinned, got {other:?}"),
            },
        )
        .registered_with(|| ModuleOptions::new().pin_sha256([sha256_hex(&variant_bytes("v1"))])),
    ]
}

#[test]
fn every_bad_build_is_refused_by_name_and_loses_nothing() {
    let _serial = one_at_a_time();
    let corpus = corpus();
    let failed: Vec<String> = corpus
        .iter()
        .filter_map(|case| {
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                leaves_nothing_behind(|| {
                    let running = Running::start((case.options)());
                    (case.check)(&running.offer(&case.offer));
                    running.assert_unchanged();
                })
            }));
            outcome
                .err()
                .map(|panic| format!("{}: {}", case.name, panic_message(&*panic)))
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} cases failed:\n{}",
        failed.len(),
        corpus.len(),
        failed.join("\n")
    );
}

/// A running v1 counter with a distinctive state, registered from a sandbox of its own.
struct Running {
    sandbox: Sandbox,
    reloader: HotReloader,
    module: Module<Counter>,
    before: counter::Snapshot,
}

impl Running {
    fn start(options: ModuleOptions) -> Self {
        let sandbox = Sandbox::new(variants!());
        let (reloader, module) = sandbox.register_with("v1", options);
        for n in [3, 1, 4, 1, 5] {
            hot_fn!(module.add(n)).unwrap();
        }
        hot_fn!(module.set_label(RString::from("fault corpus"))).unwrap();
        let before = hot_fn!(module.snapshot()).unwrap();
        Running {
            sandbox,
            reloader,
            module,
            before,
        }
    }

    /// Puts `offer` at the artifact path and reloads; returns the error the reload must give.
    fn offer(&self, offer: &Offer) -> HotError {
        let artifact = self.sandbox.artifact();
        match offer {
            Offer::Variant(variant) => self.sandbox.install(variant),
            Offer::Bytes(make) => self.sandbox.install_bytes(&make()),
            Offer::UnsafeV2(spoil) => {
                self.sandbox.install("v2");
                spoil(&artifact);
            }
            Offer::Missing => std::fs::remove_file(&artifact).unwrap(),
        }
        match self.reloader.reload_module("counter") {
            Ok(report) => panic!("the reload should have been refused, got {report:?}"),
            Err(err) => err,
        }
    }

    /// v1 serves, with the state it had, and nothing of the refused build is left: its
    /// shadow copy is deleted and its image unmapped (contained panics register no
    /// thread-local destructor, so even a build that panicked really goes away).
    fn assert_unchanged(&self) {
        assert_v1_serves(&self.module, &self.before);
        let live = self.module.version().unwrap().shadow;
        let shadow_dir = live.parent().unwrap();
        let files: Vec<_> = std::fs::read_dir(shadow_dir).unwrap().collect();
        assert_eq!(
            files.len(),
            1,
            "the refused build's shadow copy is deleted: {files:?}"
        );
        let shadow_dir = shadow_dir.to_str().unwrap();
        let mapped: BTreeSet<String> = mapped_files()
            .into_iter()
            .filter(|path| path.starts_with(shadow_dir))
            .collect();
        assert_eq!(
            mapped.into_iter().collect::<Vec<_>>(),
            [live.display().to_string()],
            "mapped shadow copies"
        );
        assert!(
            self.reloader
                .retired_versions("counter")
                .unwrap()
                .is_empty()
        );
    }
}

/// Runs `body`, then checks that it left no file descriptor open and no shadow copy mapped.
fn leaves_nothing_behind(body: impl FnOnce()) {
    let fds = open_fds();
    let maps = mapped_shadow_copies();
    body();
    assert_eq!(open_fds(), fds, "file descriptors leaked");
    assert_eq!(mapped_shadow_copies(), maps, "shadow copies still mapped");
}

/// The files mapped into this process.
fn mapped_files() -> BTreeSet<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.find('/').map(|i| l[i..].to_owned()))
        .collect()
}

/// Shadow copies mapped into this process, under any reloader's shadow directory.
fn mapped_shadow_copies() -> BTreeSet<String> {
    mapped_files()
        .into_iter()
        .filter(|path| path.contains("/hotreload-") && path.contains("libcounter.so"))
        .collect()
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(a panic without a message)")
}

fn variant_bytes(variant: &str) -> Vec<u8> {
    std::fs::read(variants!().artifact(variant)).expect("variant library")
}

fn random_bytes() -> Vec<u8> {
    (0u32..100_000)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect()
}

/// The C library this process runs on: a shared library, and no module.
fn mapped_c_library() -> Vec<u8> {
    let libc = mapped_files()
        .into_iter()
        .find(|path| path.rsplit('/').next() == Some("libc.so.6"))
        .expect("glibc is mapped");
    std::fs::read(libc).unwrap()
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn not_a_library(err: &HotError) -> &str {
    match err {
        HotError::NotALibrary { module, reason, .. } => {
            assert_eq!(module, "counter");
            reason
        }
        other => panic!("expected NotALibrary, got {other:?}"),
    }
}

fn no_counter_descriptor(err: &HotError) {
    match err {
        HotError::NoDescriptor { module, symbol, .. } => {
            assert_eq!(
                (module.as_str(), symbol.as_str()),
                ("counter", "hotreload_module__counter")
            );
        }
        other => panic!("expected a missing descriptor, got {other:?}"),
    }
    assert!(
        err.to_string()
            .ends_with("it is not a build of this module"),
        "{err}"
    );
}

fn rejected(err: &HotError) -> &Rejection {
    match err {
        HotError::Rejected { module, reason, .. } => {
            assert_eq!(module, "counter");
            reason
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// A layout rejection summed up in `line`.
fn layout_mismatch(err: &HotError, line: &str) {
    assert!(matches!(rejected(err), Rejection::Layout(_)), "{err:?}");
    assert_eq!(err.to_string(), format!("counter rejected: {line}"));
}

fn unsafe_artifact(err: &HotError) -> &str {
    match err {
        HotError::UnsafeArtifact { module, reason, .. } => {
            assert_eq!(module, "counter");
            reason
        }
        other => panic!("expected UnsafeArtifact, got {other:?}"),
    }
}

/// The complement of the corpus's "another API version": a host that accepts a range takes it.
#[test]
fn another_api_version_is_taken_when_the_host_accepts_it() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) =
        sandbox.register_with("v1", ModuleOptions::new().accept_api_versions(1..=2));
    hot_fn!(module.add(4)).unwrap();
    let before = hot_fn!(module.snapshot()).unwrap();
    sandbox.install("api_v2");
    reloader
        .reload_module("counter")
        .expect("API v2 is accepted");
    assert_eq!(module.version().unwrap().api_version, 2);
    assert_eq!(hot_fn!(module.snapshot()).unwrap(), before, "state carried");
}

#[test]
fn a_constructor_that_panics_loads_nothing_and_leaks_nothing() {
    let _serial = one_at_a_time();
    leaves_nothing_behind(|| {
        let sandbox = Sandbox::new(variants!());
        let reloader = HotReloader::new();
        let module = reloader
            .register_with::<Counter>(
                ModuleOptions::new()
                    .artifact(sandbox.artifact())
                    .wait_for_artifact(),
            )
            .unwrap();
        sandbox.install("ctor_panic");
        let err = reloader.reload_module("counter").unwrap_err();
        match &err {
            HotError::Construct {
                fault: ModuleFault::Panicked(message),
                ..
            } => assert!(
                message.starts_with("the constructor fails on purpose"),
                "{message}"
            ),
            other => panic!("expected Construct, got {other:?}"),
        }
        assert!(module.version().is_none());
        assert!(matches!(
            hot_fn!(module.calls()),
            Err(HotError::NotLoaded { .. })
        ));
        sandbox.install("v1");
        reloader.reload_module("counter").unwrap();
        assert_eq!(hot_fn!(module.add(2)).unwrap(), 2);
    });
}

/// A panic that an entry contains is quiet, and its error names where it happened; a panic in
/// a thread the module started, outside every entry, reaches the hook installed before
/// hotreload's (std's, which prints it), even while that thread is inside a call it made into
/// the module through the host. Through both kinds of handle, and in a lifecycle entry.
///
/// The module's std prints to the process's stderr, which the test harness does not capture:
/// the scenario runs in a child process (this test, run again), whose stderr is read here.
#[test]
fn contained_panics_are_quiet_and_the_others_are_reported() {
    const CHILD: &str = "HOTRELOAD_TESTS_PANIC_REPORTS_CHILD";
    const NAME: &str = "contained_panics_are_quiet_and_the_others_are_reported";
    if std::env::var_os(CHILD).is_some() {
        return panic_reports_scenario();
    }
    // The child's pipes are file descriptors of this process: not while another test counts.
    let _serial = one_at_a_time();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("run the scenario in a child process");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "the scenario failed:\n{stderr}");
    for handle in ["shared", "local"] {
        // std's hook: "thread '<unnamed>' (id) panicked at src/lib.rs:140:13:\n<message>".
        let reported = "panicked at src/lib.rs:";
        assert!(
            stderr.contains(&format!(":\nthread panic ({handle})\n")) && stderr.contains(reported),
            "the thread's panic ({handle}) was not reported:\n{stderr}"
        );
        for quiet in ["contained panic", "nested panic"] {
            assert!(
                !stderr.contains(&format!("{quiet} ({handle})")),
                "a contained panic was printed:\n{stderr}"
            );
        }
    }
    assert!(
        !stderr.contains("the constructor fails on purpose"),
        "{stderr}"
    );
}

/// The child's part of `contained_panics_are_quiet_and_the_others_are_reported`.
fn panic_reports_scenario() {
    static SHARED: std::sync::OnceLock<Module<Counter>> = std::sync::OnceLock::new();
    extern "C" fn nested_shared(_: u64) -> u64 {
        let module = SHARED.get().unwrap();
        assert_contained(
            hot_fn!(module.explode(RString::from("nested panic (shared)"))),
            "nested panic (shared)",
        );
        0
    }
    extern "C" fn nothing(_: u64) -> u64 {
        0
    }

    let sandbox = Sandbox::new(variants!());
    let (_reloader, module) = sandbox.register("v1");
    let module = SHARED.get_or_init(|| module);
    assert_contained(
        hot_fn!(module.explode(RString::from("contained panic (shared)"))),
        "contained panic (shared)",
    );
    let nested = counter::HostCallback {
        func: nested_shared,
    };
    let message = RString::from("thread panic (shared)");
    assert!(hot_fn!(module.panic_in_thread(message, nested)).unwrap());

    let local_sandbox = Sandbox::new(variants!());
    local_sandbox.install("v1");
    let local_reloader = HotReloader::new();
    let local = local_reloader
        .register_local_with::<Counter>(ModuleOptions::new().artifact(local_sandbox.artifact()))
        .unwrap();
    assert_contained(
        hot_fn!(local.explode(RString::from("contained panic (local)"))),
        "contained panic (local)",
    );
    let message = RString::from("thread panic (local)");
    let nothing = counter::HostCallback { func: nothing };
    assert!(hot_fn!(local.panic_in_thread(message, nothing)).unwrap());

    let ctor_sandbox = Sandbox::new(variants!());
    ctor_sandbox.install("ctor_panic");
    let err = HotReloader::new()
        .register_with::<Counter>(ModuleOptions::new().artifact(ctor_sandbox.artifact()))
        .unwrap_err();
    match &err {
        HotError::Construct {
            fault: ModuleFault::Panicked(message),
            ..
        } => assert!(
            message.starts_with("the constructor fails on purpose (at "),
            "{message}"
        ),
        other => panic!("expected Construct, got {other:?}"),
    }
}

/// `result` is the error of a contained panic with `message`, and where it happened.
fn assert_contained<T: std::fmt::Debug>(result: Result<T, HotError>, message: &str) {
    match result {
        Err(HotError::Call {
            fault: ModuleFault::Panicked(text),
            ..
        }) => assert!(
            text.starts_with(&format!("{message} (at ")) && text.contains("lib.rs:"),
            "{text}"
        ),
        other => panic!("expected a contained panic, got {other:?}"),
    }
}

#[test]
fn a_panic_during_probation_rolls_back_with_the_snapshot() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) =
        sandbox.register_with("v1", ModuleOptions::new().probation(Probation::calls(5)));
    hot_fn!(module.add(10)).unwrap();
    let at_reload = hot_fn!(module.snapshot()).unwrap();
    let events = reloader.subscribe();

    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    // Artifact gone: rolling back must not need it.
    std::fs::remove_file(sandbox.artifact()).unwrap();
    assert_eq!(hot_fn!(module.add(1)).unwrap(), 12, "v2 doubles");
    let err = hot_fn!(module.explode(RString::from("new code is broken"))).unwrap_err();
    assert!(
        matches!(err, HotError::Call { generation: 2, .. }),
        "{err:?}"
    );

    let seen = wait_for(&events, Duration::from_secs(5), "rolled back", |e| {
        matches!(e, Event::RolledBack { .. })
    });
    let Some(Event::RolledBack {
        from,
        to,
        state,
        reason,
        ..
    }) = seen.last()
    else {
        unreachable!()
    };
    assert_eq!((from.generation, to.generation), (2, 1));
    assert!(matches!(state, RollbackState::Snapshot { .. }), "{state:?}");
    assert!(reason.contains("new code is broken"), "{reason}");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    assert_eq!(
        hot_fn!(module.snapshot()).unwrap(),
        at_reload,
        "the state at the reload"
    );
}

/// v2, reloaded over v1 with `probation` and given some state of its own.
fn v2_on_probation(sandbox: &Sandbox, probation: Probation) -> (HotReloader, Module<Counter>) {
    let (reloader, module) = sandbox.register_with("v1", ModuleOptions::new().probation(probation));
    hot_fn!(module.add(1)).unwrap();
    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert_eq!(report.to.generation, 2);
    (reloader, module)
}

/// Off probation, a panicking call is an error of load #2, and load #2 keeps serving with its
/// state: nothing is rolled back, and v1 is still kept for a rollback on request.
fn assert_a_panic_keeps_v2(
    reloader: &HotReloader,
    module: &Module<Counter>,
    events: &Receiver<Event>,
) {
    let before = hot_fn!(module.snapshot()).unwrap();
    let err = hot_fn!(module.explode(RString::from("off probation"))).unwrap_err();
    match &err {
        HotError::Call {
            generation: 2,
            fault: ModuleFault::Panicked(message),
            ..
        } => assert!(message.starts_with("off probation"), "{message}"),
        other => panic!("expected a panicked call of load #2, got {other:?}"),
    }
    assert_eq!(module.version().unwrap().generation, 2, "v2 is kept");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(
        hot_fn!(module.snapshot()).unwrap(),
        before,
        "with its state"
    );
    let rollbacks: Vec<Event> = events
        .try_iter()
        .filter(|e| matches!(e, Event::RolledBack { .. }))
        .collect();
    assert!(rollbacks.is_empty(), "{rollbacks:?}");
    assert_eq!(reloader.history("counter").unwrap().len(), 1, "v1 kept");
}

/// `ProbationEnded` events in `events` so far, by generation.
fn probations_ended(events: &Receiver<Event>) -> Vec<u64> {
    events
        .try_iter()
        .filter_map(|e| match e {
            Event::ProbationEnded { generation, .. } => Some(generation),
            _ => None,
        })
        .collect()
}

#[test]
fn a_method_that_panics_after_probation_is_an_error_and_the_version_stays() {
    let _serial = one_at_a_time();
    leaves_nothing_behind(|| {
        let sandbox = Sandbox::new(variants!());
        let (reloader, module) = v2_on_probation(&sandbox, Probation::calls(3));
        let events = reloader.subscribe();
        for n in [1, 2, 3] {
            hot_fn!(module.add(n)).unwrap();
        }
        assert_eq!(
            hot_fn!(module.snapshot()).unwrap().total,
            1 + 2 * 6,
            "v2 counted its calls"
        );
        assert_eq!(
            probations_ended(&events),
            [2],
            "one ProbationEnded for load #2"
        );
        assert_a_panic_keeps_v2(&reloader, &module, &events);
    });
}

#[test]
fn a_version_marked_good_is_off_probation() {
    let _serial = one_at_a_time();
    leaves_nothing_behind(|| {
        let sandbox = Sandbox::new(variants!());
        let (reloader, module) =
            v2_on_probation(&sandbox, Probation::duration(Duration::from_secs(3600)));
        let events = reloader.subscribe();
        hot_fn!(module.add(5)).unwrap();
        reloader.mark_good("counter").unwrap();
        assert_eq!(probations_ended(&events), [2], "marked good");
        assert_a_panic_keeps_v2(&reloader, &module, &events);
    });
}

#[test]
fn rollback_uses_the_current_state_when_the_older_version_reads_it() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(1)).unwrap();
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    hot_fn!(module.add(5)).unwrap();
    let now = hot_fn!(module.snapshot()).unwrap();
    let report = reloader.rollback("counter").unwrap();
    assert_eq!(report.state, RollbackState::Current);
    assert_eq!((report.from.generation, report.to.generation), (2, 1));
    assert_eq!(hot_fn!(module.snapshot()).unwrap(), now, "nothing lost");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    let err = reloader.rollback("counter").unwrap_err();
    assert!(matches!(err, HotError::NoHistory { .. }), "{err:?}");

    // A refused reload keeps nothing; the next reload keeps the version it replaces.
    sandbox.install("restore_error");
    let err = reloader.reload_module("counter").unwrap_err();
    assert!(matches!(err, HotError::Restore { .. }));
    assert!(reloader.history("counter").unwrap().is_empty());
    sandbox.install("v2_field");
    reloader.reload_module("counter").unwrap();
    assert_eq!(reloader.history("counter").unwrap().len(), 1);
}

#[test]
fn rollback_uses_the_snapshot_when_the_older_version_cannot_read_the_state() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    // `restore_error` has a field more, `required`, that v2 lacks: v2 reads its state (serde
    // skips the field), but it cannot read v2's.
    let (reloader, module) = sandbox.register("restore_error");
    hot_fn!(module.add(7)).unwrap();
    hot_fn!(module.set_label(RString::from("saved at the reload"))).unwrap();
    let at_reload = hot_fn!(module.snapshot()).unwrap();
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    assert_eq!(hot_fn!(module.snapshot()).unwrap(), at_reload, "v2 took it");
    hot_fn!(module.add(5)).unwrap();
    hot_fn!(module.set_label(RString::from("v2's, lost"))).unwrap();
    assert_ne!(hot_fn!(module.snapshot()).unwrap(), at_reload);
    let events = reloader.subscribe();

    let report = reloader.rollback("counter").unwrap();
    // What it loses: the two `&mut self` calls made on v2.
    assert_eq!(report.state, RollbackState::Snapshot { calls_lost: 2 });
    assert_eq!((report.from.generation, report.to.generation), (2, 1));
    let rollbacks: Vec<String> = events
        .try_iter()
        .filter(|e| matches!(e, Event::RolledBack { .. }))
        .map(|e| e.to_string())
        .collect();
    assert_eq!(
        rollbacks,
        [
            "counter: rolled back from load #2 to load #1 with the snapshot taken at the upgrade \
             (the changes of 2 `&mut self` call(s) since are lost) (requested)"
        ]
    );
    assert_eq!(module.version().unwrap().generation, 1);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    assert_eq!(
        hot_fn!(module.snapshot()).unwrap(),
        at_reload,
        "the snapshot serves"
    );
}
