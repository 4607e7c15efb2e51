//! Builds that must be refused: each gives a typed error naming what is wrong, and the running
//! version keeps serving with its state unchanged.

use abi_stable::std_types::RString;
use hotreload::{HotError, ModuleFault, ModuleOptions, Rejection, hot_fn};
use hotreload_tests::{Sandbox, one_at_a_time, variants};

/// A registered v1 counter with some state, and a check that it is untouched.
struct Running {
    /// The checks below read process-wide mappings; a test thread running on a CPU beside
    /// them could also make the runtime hold a refused build (it cannot tell where such a
    /// thread runs), so these tests run one at a time.
    _serial: std::sync::MutexGuard<'static, ()>,
    sandbox: Sandbox,
    reloader: hotreload::HotReloader,
    module: hotreload::Module<counter::Counter>,
    before: counter::Snapshot,
}

impl Running {
    fn start() -> Self {
        let serial = one_at_a_time();
        let sandbox = Sandbox::new(variants!());
        let (reloader, module) = sandbox.register("v1");
        for n in [11, 22, 33] {
            hot_fn!(module.add(n)).unwrap();
        }
        hot_fn!(module.set_label(RString::from("still here"))).unwrap();
        let before = hot_fn!(module.snapshot()).unwrap();
        Running {
            _serial: serial,
            sandbox,
            reloader,
            module,
            before,
        }
    }

    /// Installs `variant`, reloads, and returns the error the reload must give.
    fn reload_variant(&self, variant: &str) -> HotError {
        self.sandbox.install(variant);
        self.reload_err()
    }

    fn reload_err(&self) -> HotError {
        match self.reloader.reload_module("counter") {
            Ok(report) => panic!("the reload should have been refused, got {report:?}"),
            Err(err) => err,
        }
    }

    /// v1 is serving, with the state it had, and nothing of the refused build is left: its
    /// shadow copy is deleted and its image unmapped (contained panics register no
    /// thread-local destructor, so even a build that panicked really goes away).
    fn assert_unchanged(&self) {
        hotreload_tests::assert_v1_serves(&self.module, &self.before);
        let m = &self.module;
        let shadow_dir = m.version().unwrap().shadow.parent().unwrap().to_path_buf();
        let files: Vec<_> = std::fs::read_dir(&shadow_dir).unwrap().collect();
        assert_eq!(
            files.len(),
            1,
            "the refused build's shadow copy is deleted: {files:?}"
        );
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let shadow_dir = shadow_dir.to_str().unwrap();
        let mapped: std::collections::BTreeSet<_> = maps
            .lines()
            .filter(|l| l.contains(shadow_dir))
            .filter_map(|l| l.find('/').map(|i| &l[i..]))
            .collect();
        let live = m.version().unwrap().shadow.display().to_string();
        assert_eq!(
            mapped.into_iter().collect::<Vec<_>>(),
            [live],
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

fn rejection(err: &HotError) -> &Rejection {
    match err {
        HotError::Rejected { reason, module, .. } => {
            assert_eq!(module, "counter");
            reason
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

#[test]
fn a_changed_parameter_type_is_named_in_one_line() {
    let running = Running::start();
    let err = running.reload_variant("bad_signature");
    assert!(matches!(rejection(&err), Rejection::Layout(_)));
    assert_eq!(
        err.to_string(),
        "counter rejected: method 'add', parameter 1 ('n'): expected i64, found f64"
    );
    let HotError::Rejected { detail, .. } = &err else {
        unreachable!()
    };
    assert!(
        detail.as_deref().is_some_and(|d| d.lines().count() > 5),
        "the full report is kept apart"
    );
    running.assert_unchanged();
}

#[test]
fn a_changed_return_type_is_named_in_one_line() {
    let running = Running::start();
    let err = running.reload_variant("return_changed");
    assert_eq!(
        err.to_string(),
        "counter rejected: method 'calls', return type: expected u64, found u32"
    );
    running.assert_unchanged();
}

#[test]
fn a_renamed_method_is_named_in_one_line() {
    let running = Running::start();
    let err = running.reload_variant("method_renamed");
    assert_eq!(
        err.to_string(),
        "counter rejected: method 'calls' is missing"
    );
    running.assert_unchanged();
}

#[test]
fn another_api_version_is_refused_unless_the_host_accepts_it() {
    let running = Running::start();
    let err = running.reload_variant("api_v2");
    assert_eq!(
        rejection(&err),
        &Rejection::ApiVersion {
            found: 2,
            accepted: 1..=1
        }
    );
    assert_eq!(
        err.to_string(),
        "counter rejected: API version 2, host accepts 1"
    );
    running.assert_unchanged();

    // A host that accepts a range takes it.
    let reloader = hotreload::HotReloader::new();
    let module = reloader
        .register_with::<counter::Counter>(
            ModuleOptions::new()
                .artifact(running.sandbox.artifact())
                .accept_api_versions(1..=2),
        )
        .expect("API v2 is accepted");
    assert_eq!(module.version().unwrap().api_version, 2);
}

#[test]
fn state_that_cannot_be_decoded_is_refused() {
    let running = Running::start();
    let err = running.reload_variant("restore_error");
    match &err {
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
    }
    running.assert_unchanged();
}

#[test]
fn a_restore_that_panics_is_refused() {
    let running = Running::start();
    let err = running.reload_variant("restore_panic");
    match &err {
        HotError::Restore {
            fault: ModuleFault::Panicked(message),
            ..
        } => assert!(
            message.starts_with("restore exploded on purpose (at "),
            "{message}"
        ),
        other => panic!("expected a restore panic, got {other:?}"),
    }
    running.assert_unchanged();
}

#[test]
fn random_bytes_are_not_a_library() {
    let running = Running::start();
    let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
    let random: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    running.sandbox.install_bytes(&random);
    let err = running.reload_err();
    assert!(matches!(err, HotError::NotALibrary { .. }), "{err:?}");
    assert!(err.to_string().contains("not an object file"), "{err}");
    running.assert_unchanged();
}

#[test]
fn the_first_half_of_a_valid_build_is_not_a_library() {
    let running = Running::start();
    let whole = running.sandbox.variant_bytes("v2");
    running.sandbox.install_bytes(&whole[..whole.len() / 2]);
    let err = running.reload_err();
    assert!(matches!(err, HotError::NotALibrary { .. }), "{err:?}");
    running.assert_unchanged();
}

#[test]
fn an_empty_file_is_not_a_library() {
    let running = Running::start();
    running.sandbox.install_bytes(&[]);
    let err = running.reload_err();
    assert!(err.to_string().ends_with("the file is empty"), "{err}");
    running.assert_unchanged();
}

#[test]
fn a_missing_artifact_is_reported() {
    let running = Running::start();
    std::fs::remove_file(running.sandbox.artifact()).unwrap();
    let err = running.reload_err();
    assert!(matches!(err, HotError::ArtifactNotFound { .. }), "{err:?}");
    running.assert_unchanged();
}

#[test]
fn another_modules_build_is_refused() {
    let running = Running::start();
    let err = running.reload_variant("other_module");
    match &err {
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
    running.assert_unchanged();
}

#[test]
fn a_build_against_another_framework_abi_is_refused_before_its_descriptor_is_read() {
    let running = Running::start();
    let err = running.reload_variant("wrong_abi");
    assert_eq!(
        rejection(&err),
        &Rejection::AbiVersion {
            expected: hotreload_abi_version(),
            found: 999
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "counter rejected: framework ABI version 999, host has {}",
            hotreload_abi_version()
        )
    );
    running.assert_unchanged();
}

#[test]
fn a_symbol_that_is_not_a_descriptor_is_refused() {
    let running = Running::start();
    let err = running.reload_variant("bad_magic");
    assert_eq!(rejection(&err), &Rejection::BadMagic);
    running.assert_unchanged();
}

fn hotreload_abi_version() -> u32 {
    hotreload::__private::ABI_VERSION
}

#[test]
fn a_descriptor_symbol_smaller_than_a_descriptor_is_refused_before_it_is_read() {
    let running = Running::start();
    let err = running.reload_variant("short_descriptor");
    let expected = std::mem::size_of::<hotreload::__private::ModuleDescriptor>() as u64;
    let found = std::mem::size_of::<hotreload::__private::DescriptorPrefix>() as u64;
    assert_eq!(
        rejection(&err),
        &Rejection::DescriptorSize {
            abi: hotreload_abi_version(),
            expected,
            found,
        }
    );
    running.assert_unchanged();
}

#[test]
fn a_build_with_panic_abort_is_refused_with_the_fix() {
    let running = Running::start();
    let err = running.reload_variant("panic_abort");
    assert_eq!(rejection(&err), &Rejection::PanicAbort);
    let message = err.to_string();
    assert!(
        message.contains("panic = \"abort\"") && message.contains("panic = \"unwind\""),
        "{message}"
    );
    running.assert_unchanged();
}

#[test]
fn another_state_schema_without_a_migration_is_refused_never_decoded() {
    let running = Running::start();
    let err = running.reload_variant("schema_v2");
    match &err {
        HotError::Restore {
            fault: ModuleFault::Failed(message),
            ..
        } => assert_eq!(
            message,
            "state schema v1 (saved by API v1) cannot be restored by a build of schema v2: no \
             migration between them"
        ),
        other => panic!("expected a Restore failure, got {other:?}"),
    }
    running.assert_unchanged();
}

#[test]
fn a_changed_parameter_is_named_with_both_types_as_the_sources_spell_them() {
    let running = Running::start();
    for (variant, line) in [
        (
            "param_type_changed",
            "method 'join', parameter 2 ('sep'): expected &str, found String",
        ),
        (
            "param_added",
            "method 'add': takes 2 parameters, the host expects 1",
        ),
        (
            "tuple_changed",
            "method 'measure', parameter 1 ('text'): expected (String, u8), found (String, u16)",
        ),
    ] {
        let err = running.reload_variant(variant);
        assert_eq!(
            err.to_string(),
            format!("counter rejected: {line}"),
            "{variant}"
        );
        running.assert_unchanged();
    }
}
