//! The corpus of bad artifacts and failing modules. For each case: a typed error (or event)
//! naming the module and what is wrong; the running version serving with its state
//! unchanged (a checksum of the whole state before and after); no file descriptor and no
//! mapping leaked. One test runs the cases in turn, so the process-wide counts are its own.

use std::collections::BTreeSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;

use abi_stable::std_types::RString;
use counter::Counter;
use hotreload::{
    Event, HotError, HotReloader, Module, ModuleFault, ModuleOptions, Probation, Rejection,
    RollbackState, hot_fn,
};
use hotreload_tests::{Sandbox, one_at_a_time, open_fds, variants, wait_for};

/// Shadow copies mapped into this process, under any reloader's shadow directory.
fn mapped_shadow_copies() -> BTreeSet<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .filter_map(|l| l.find('/').map(|i| l[i..].to_owned()))
        .filter(|path| path.contains("/hotreload-") && path.contains("libcounter.so"))
        .collect()
}

fn checksum(module: &Module<Counter>) -> u64 {
    let snapshot = hot_fn!(module.snapshot()).unwrap();
    let mut hasher = DefaultHasher::new();
    format!("{snapshot:?}").hash(&mut hasher);
    hasher.finish()
}

/// A running v1 counter with a distinctive state.
struct Running {
    sandbox: Sandbox,
    reloader: HotReloader,
    module: Module<Counter>,
    checksum: u64,
}

impl Running {
    fn start(options: ModuleOptions) -> Self {
        let sandbox = Sandbox::new(variants!());
        let (reloader, module) = sandbox.register_with("v1", options);
        for n in [3, 1, 4, 1, 5] {
            hot_fn!(module.add(n)).unwrap();
        }
        hot_fn!(module.set_label(RString::from("fault corpus"))).unwrap();
        let checksum = checksum(&module);
        Running {
            sandbox,
            reloader,
            module,
            checksum,
        }
    }

    fn reload_bytes(&self, bytes: &[u8]) -> HotError {
        self.sandbox.install_bytes(bytes);
        self.reloader
            .reload_module("counter")
            .expect_err("the reload must be refused")
    }

    fn assert_unchanged(&self, case: &str) {
        assert_eq!(
            self.module.version().unwrap().generation,
            1,
            "{case}: still load #1"
        );
        assert_eq!(hot_fn!(self.module.build_tag()).unwrap(), 1, "{case}");
        assert_eq!(
            checksum(&self.module),
            self.checksum,
            "{case}: state unchanged"
        );
    }
}

/// Runs `case` against a fresh running counter; checks the outcome, the state, and that no
/// descriptor or mapping outlives it.
fn case(name: &str, options: ModuleOptions, check: impl FnOnce(&Running)) {
    let fds = open_fds();
    let maps = mapped_shadow_copies();
    {
        let running = Running::start(options);
        check(&running);
        running.assert_unchanged(name);
    }
    assert_eq!(open_fds(), fds, "{name}: file descriptors leaked");
    assert_eq!(
        mapped_shadow_copies(),
        maps,
        "{name}: shadow copies still mapped"
    );
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

fn rejected(err: &HotError) -> &Rejection {
    match err {
        HotError::Rejected { module, reason, .. } => {
            assert_eq!(module, "counter");
            reason
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn system_library() -> Option<Vec<u8>> {
    [
        "/lib/x86_64-linux-gnu/libm.so.6",
        "/usr/lib/x86_64-linux-gnu/libm.so.6",
        "/lib64/libm.so.6",
    ]
    .iter()
    .find_map(|p| std::fs::read(p).ok())
}

#[test]
fn every_fault_is_typed_and_loses_nothing() {
    let _serial = one_at_a_time();
    let v = variants!();
    let defaults = ModuleOptions::new;
    let bytes = |variant: &str| std::fs::read(v.artifact(variant)).unwrap();

    case("empty file", defaults(), |r| {
        assert_eq!(not_a_library(&r.reload_bytes(&[])), "the file is empty");
    });
    case("random bytes", defaults(), |r| {
        let random: Vec<u8> = (0u32..100_000)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
            .collect();
        assert!(not_a_library(&r.reload_bytes(&random)).starts_with("not an object file"));
    });
    case("first half of a valid build", defaults(), |r| {
        let whole = bytes("v2");
        let err = r.reload_bytes(&whole[..whole.len() / 2]);
        not_a_library(&err);
    });
    case("ELF for another architecture", defaults(), |r| {
        let mut elf = bytes("v2");
        // e_machine, little-endian, at offset 18: AArch64 (183).
        elf[18..20].copy_from_slice(&183u16.to_le_bytes());
        let err = r.reload_bytes(&elf);
        assert!(not_a_library(&err).contains("built for Aarch64"), "{err}");
    });
    if let Some(libm) = system_library() {
        case("a shared library that is not a module", defaults(), |r| {
            let err = r.reload_bytes(&libm);
            assert!(matches!(err, HotError::NoDescriptor { .. }), "{err:?}");
        });
    }
    case("an unresolved symbol", defaults(), |r| {
        let err = r.reload_bytes(&bytes("unresolved_symbol"));
        match &err {
            HotError::Open { message, .. } => {
                assert!(
                    message.contains("hotreload_symbol_that_no_library_defines"),
                    "{message}"
                )
            }
            other => panic!("expected Open, got {other:?}"),
        }
    });
    case("another framework ABI", defaults(), |r| {
        let err = r.reload_bytes(&bytes("wrong_abi"));
        assert!(matches!(
            rejected(&err),
            Rejection::AbiVersion { found: 999, .. }
        ));
    });
    case("a layout mismatch", defaults(), |r| {
        let err = r.reload_bytes(&bytes("bad_signature"));
        assert!(matches!(rejected(&err), Rejection::Layout(_)));
    });
    case("an API version mismatch", defaults(), |r| {
        let err = r.reload_bytes(&bytes("api_v2"));
        assert!(matches!(
            rejected(&err),
            Rejection::ApiVersion { found: 2, .. }
        ));
    });
    case("another module's build", defaults(), |r| {
        let err = r.reload_bytes(&bytes("other_module"));
        assert!(matches!(err, HotError::NoDescriptor { .. }), "{err:?}");
    });
    case("restore panics", defaults(), |r| {
        let err = r.reload_bytes(&bytes("restore_panic"));
        assert!(
            matches!(
                err,
                HotError::Restore {
                    fault: ModuleFault::Panicked(_),
                    ..
                }
            ),
            "{err:?}"
        );
    });
    case(
        "state cannot be decoded (restore returns an error)",
        defaults(),
        |r| {
            let err = r.reload_bytes(&bytes("restore_error"));
            assert!(
                matches!(
                    err,
                    HotError::Restore {
                        fault: ModuleFault::Failed(_),
                        ..
                    }
                ),
                "{err:?}"
            );
        },
    );
    case("a world-writable artifact", defaults(), |r| {
        use std::os::unix::fs::PermissionsExt;
        r.sandbox.install("v2");
        let path = r.sandbox.artifact();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        let err = r.reloader.reload_module("counter").unwrap_err();
        assert!(matches!(err, HotError::UnsafeArtifact { .. }), "{err:?}");
        assert!(
            err.to_string().contains("chmod go-w"),
            "says how to fix it: {err}"
        );
    });
    case(
        "a directory writable by others without the sticky bit",
        defaults(),
        |r| {
            use std::os::unix::fs::PermissionsExt;
            r.sandbox.install("v2");
            let dir = r.sandbox.path().to_path_buf();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
            let err = r.reloader.reload_module("counter").unwrap_err();
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
            assert!(matches!(err, HotError::UnsafeArtifact { .. }), "{err:?}");
        },
    );
    let pinned_v1 = hotreload_tests::sha256_hex(&bytes("v1"));
    case(
        "an artifact whose digest is not pinned",
        defaults().pin_sha256([pinned_v1]),
        |r| {
            let v2 = bytes("v2");
            let err = r.reload_bytes(&v2);
            match &err {
                HotError::NotPinned { sha256, .. } => {
                    assert_eq!(sha256, &hotreload_tests::sha256_hex(&v2))
                }
                other => panic!("expected NotPinned, got {other:?}"),
            }
        },
    );
    case(
        "a method that panics after probation",
        defaults().probation(Probation::calls(2)),
        |r| {
            // The first load is not on probation: only reloads are.
            let err = hot_fn!(r.module.explode(RString::from("boom"))).unwrap_err();
            assert!(matches!(
                err,
                HotError::Call {
                    fault: ModuleFault::Panicked(_),
                    ..
                }
            ));
            assert_eq!(r.module.version().unwrap().generation, 1, "version kept");
        },
    );
}

#[test]
fn a_constructor_that_panics_loads_nothing_and_leaks_nothing() {
    let _serial = one_at_a_time();
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
    assert_eq!(*state, RollbackState::Snapshot);
    assert!(reason.contains("new code is broken"), "{reason}");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    assert_eq!(
        hot_fn!(module.snapshot()).unwrap(),
        at_reload,
        "the state at the reload"
    );
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

    // A newer version whose state the older one cannot read: the snapshot serves.
    sandbox.install("restore_error");
    let err = reloader.reload_module("counter").unwrap_err();
    assert!(matches!(err, HotError::Restore { .. }));
    sandbox.install("v2_field");
    reloader.reload_module("counter").unwrap();
    assert_eq!(reloader.history("counter").unwrap().len(), 1);
}

#[test]
fn a_version_marked_good_is_off_probation() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register_with(
        "v1",
        ModuleOptions::new().probation(Probation::duration(Duration::from_secs(3600))),
    );
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    reloader.mark_good("counter").unwrap();
    let err = hot_fn!(module.explode(RString::from("after"))).unwrap_err();
    assert!(matches!(err, HotError::Call { .. }));
    assert_eq!(
        module.version().unwrap().generation,
        2,
        "kept: its probation ended"
    );
}

#[test]
fn a_probation_that_ends_by_itself_says_so() {
    let _serial = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) =
        sandbox.register_with("v1", ModuleOptions::new().probation(Probation::calls(3)));
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    let events = reloader.subscribe();
    for _ in 0..3 {
        hot_fn!(module.bump()).unwrap();
    }
    let ended: Vec<u64> = events
        .try_iter()
        .filter_map(|e| match e {
            Event::ProbationEnded { generation, .. } => Some(generation),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [2], "one ProbationEnded for load #2");
    // Off probation: a panic now is an error, not a rollback.
    hot_fn!(module.explode(RString::from("after"))).unwrap_err();
    assert_eq!(module.version().unwrap().generation, 2);
}
