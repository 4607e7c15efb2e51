//! `hotreload::check` over pairs of real builds: each verdict, and that it matches what the
//! runtime does when a host compiled against the older build reloads the newer one.

use std::path::Path;

use hotreload::check::{Compare, StateCarried, Verdict, check_reload};
use hotreload::{HotError, HotReloader, ModuleOptions, ReloadReport, hot_fn};
use hotreload_tests::{ledger_variants, variants};

/// The kind of a reload's outcome: `Ok`, or the error's variant (with a rejection's reason's
/// variant), without paths or load numbers.
fn kind(outcome: &Result<ReloadReport, HotError>) -> String {
    match outcome {
        Ok(_) => "Ok".to_owned(),
        Err(HotError::Rejected { reason, .. }) => {
            let reason = format!("{reason:?}");
            let end = reason.find([' ', '(', '{']).unwrap_or(reason.len());
            format!("Rejected {}", &reason[..end])
        }
        Err(err) => {
            let err = format!("{err:?}");
            let end = err.find([' ', '(', '{']).unwrap_or(err.len());
            err[..end].to_owned()
        }
    }
}

/// A real host compiled against `T`'s crate (the fixture's original source, which `old`
/// is built from), reloading `new`: its outcome.
fn real_reload<T: hotreload::HotModule>(old: &Path, new: &Path) -> Result<ReloadReport, HotError> {
    let dir = tempfile::tempdir().unwrap();
    let artifact = dir
        .path()
        .join(hotreload::library_file_name(T::MODULE_NAME));
    hotreload::harness::install(old, &artifact).unwrap();
    let reloader = HotReloader::new();
    let _module = reloader
        .register_with::<T>(ModuleOptions::new().artifact(&artifact))
        .unwrap();
    hotreload::harness::install(new, &artifact).unwrap();
    reloader.reload_module(T::MODULE_NAME)
}

/// Checks `old` -> `new` of module `T` and asserts the verdict's kind, and that a real host
/// does the same.
fn assert_check<T: hotreload::HotModule>(
    old: &Path,
    new: &Path,
    expected: fn(&Verdict) -> bool,
) -> Verdict {
    let checked = check_reload(T::MODULE_NAME, old, new).unwrap();
    assert!(expected(&checked.verdict), "{}", checked.verdict);
    let checked_outcome = match (&checked.report, &checked.error) {
        (Some(report), None) => Ok(report.clone()),
        (None, Some(err)) => Err(err.clone()),
        other => panic!("a check has a report or an error: {other:?}"),
    };
    let real = real_reload::<T>(old, new);
    assert_eq!(
        kind(&checked_outcome),
        kind(&real),
        "the check said {}, a real reload {real:?}",
        checked.verdict
    );
    if let (Ok(checked), Ok(real)) = (&checked_outcome, &real) {
        assert_eq!(checked.migrations, real.migrations);
        assert_eq!(checked.changed_methods, real.changed_methods);
        assert_eq!(checked.unknown_methods, real.unknown_methods);
    }
    checked.verdict
}

#[test]
fn each_kind_of_change_gets_the_verdict_a_running_host_would_act_on() {
    let counter = variants!();
    let v1 = counter.artifact("v1");
    let check = |variant: &str, expected: fn(&Verdict) -> bool| {
        assert_check::<counter::Counter>(v1, counter.artifact(variant), expected)
    };
    // No change, and a change of a method's body only.
    check("v1", |v| *v == Verdict::ReloadsCleanly);
    check("v2", |v| *v == Verdict::ReloadsCleanly);
    let body = check_reload("counter", v1, counter.artifact("v2")).unwrap();
    // `v2` changes a constant `add` reads (outside its body) and `build_tag`'s body.
    assert_eq!(body.report.unwrap().changed_methods, ["build_tag"]);
    // A state field added with a default, and one without.
    check("v2_field", |v| *v == Verdict::ReloadsCleanly);
    let no_default = check("restore_error", |v| matches!(v, Verdict::Refused { .. }));
    assert!(
        no_default.to_string().contains("could not restore"),
        "{no_default}"
    );
    // A schema bump without a migration: the state cannot be carried.
    check("schema_v2", |v| matches!(v, Verdict::Refused { .. }));
    // The host's use of the API: a changed signature, a method gone, the API version.
    let signature = check("bad_signature", |v| {
        matches!(v, Verdict::NeedsHostRestart { .. })
    });
    assert!(
        signature.to_string().contains("method 'add'"),
        "{signature}"
    );
    check("method_renamed", |v| {
        matches!(v, Verdict::NeedsHostRestart { .. })
    });
    check("api_v2", |v| matches!(v, Verdict::NeedsHostRestart { .. }));

    let ledger = ledger_variants(env!("CARGO_TARGET_TMPDIR"));
    let old = ledger.artifact("v1");
    // Methods added: the running host does not call them, and takes the build.
    let grown = assert_check::<ledger::Ledger>(old, ledger.artifact("v1-grown"), |v| {
        *v == Verdict::ReloadsCleanly
    });
    assert!(grown.reloads());
    // A schema bump with its migration.
    let migrated = assert_check::<ledger::Ledger>(old, ledger.artifact("v2"), |v| {
        matches!(v, Verdict::ReloadsWithMigration { from: 1, to: 2, .. })
    });
    assert_eq!(
        migrated.to_string(),
        "reloads with migration v1 -> v2 (from_v1)"
    );
}

#[test]
fn added_methods_are_reported_as_unknown_to_the_running_host() {
    let ledger = ledger_variants(env!("CARGO_TARGET_TMPDIR"));
    let checked =
        check_reload("ledger", ledger.artifact("v1"), ledger.artifact("v1-grown")).unwrap();
    let mut added = checked.report.unwrap().unknown_methods;
    added.sort();
    assert_eq!(added, ["clear", "total"]);
}

#[test]
fn a_file_that_is_no_library_is_refused_and_a_missing_old_build_is_an_error() {
    let counter = variants!();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("libcounter.so");
    std::fs::write(&junk, b"not a library").unwrap();
    let checked = check_reload("counter", counter.artifact("v1"), &junk).unwrap();
    assert!(
        matches!(
            checked.verdict,
            Verdict::Refused { ref reason } if reason.contains("is not a loadable shared library")
        ),
        "{}",
        checked.verdict
    );
    assert!(check_reload("counter", &dir.path().join("missing.so"), &junk).is_err());
}

#[test]
fn the_readme_shows_the_example_crates_reload_test_as_it_is() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let test = std::fs::read_to_string(root.join("examples/game-logic/tests/reloads.rs")).unwrap();
    let section = &readme[readme.find("## Testing your reloads").expect("the section")..];
    let block = section
        .split("```rust\n")
        .nth(1)
        .and_then(|rest| rest.split("```\n").next())
        .expect("a rust block in the section");
    assert_eq!(
        block, test,
        "README's example differs from examples/game-logic/tests/reloads.rs"
    );
}

/// The two counter builds `old` and `new`, to drive.
fn counter_builds(old: &str, new: &str) -> hotreload::check::Builds {
    let counter = variants!();
    Compare::crate_at(env!("CARGO_MANIFEST_DIR"))
        .base_artifact(counter.artifact(old))
        .new_artifact(counter.artifact(new))
        .build()
        .unwrap()
}

#[test]
fn a_driven_reload_says_how_the_state_came_through() {
    let drive = |module: &hotreload::Module<counter::Counter>| {
        hot_fn!(module.add(5))?;
        Ok(())
    };
    // A body changed: the state comes through exactly.
    let body = counter_builds("v1", "v2").reload(drive).unwrap();
    body.assert_state_preserved();
    assert_eq!(
        hot_fn!(body.module.add(1)).unwrap(),
        5 + 2,
        "the new build serves"
    );

    // A field added with a default: the same schema, a new field.
    let field = counter_builds("v1", "v2_field").reload(drive).unwrap();
    field.assert_reloaded();
    match &field.state {
        StateCarried::Differently { before, after } => {
            assert_eq!(before["total"], after["total"]);
            assert_eq!(after["bonus"], 7, "{after}");
            assert!(before.get("bonus").is_none(), "{before}");
        }
        other => panic!("{other:?}"),
    }

    // A field added without one: refused, the old build serving with its state.
    let refused = counter_builds("v1", "restore_error").reload(drive).unwrap();
    refused.assert_refused_because("could not restore");
    assert_eq!(refused.state, StateCarried::NotReloaded);
    assert_eq!(hot_fn!(refused.module.snapshot()).unwrap().total, 5);

    // A migration: compared through calls, not bytes.
    let ledger = ledger_variants(env!("CARGO_TARGET_TMPDIR"));
    let migrated = Compare::crate_at(env!("CARGO_MANIFEST_DIR"))
        .base_artifact(ledger.artifact("v1"))
        .new_artifact(ledger.artifact("v2"))
        .build()
        .unwrap()
        .reload::<ledger::Ledger>(|_| Ok(()))
        .unwrap();
    assert_eq!(migrated.state, StateCarried::Migrated { from: 1, to: 2 });
}

#[test]
fn back_and_forth_holds_the_invariant_or_says_where_it_broke() {
    let builds = counter_builds("v1", "v2");
    let made = std::cell::Cell::new(0u64);
    let reports = builds
        .back_and_forth::<counter::Counter>(
            6,
            |module| {
                made.set(made.get() + 1);
                hot_fn!(module.bump()).map(drop)
            },
            |module| {
                let calls = hot_fn!(module.calls()).map_err(|err| err.to_string())?;
                (calls == made.get())
                    .then_some(())
                    .ok_or(format!("{calls} calls counted, {} made", made.get()))
            },
        )
        .unwrap();
    let tags: Vec<u64> = reports.iter().map(|r| r.to.generation).collect();
    assert_eq!(tags, [2, 3, 4, 5, 6, 7]);

    // An invariant that breaks: the round and the reason.
    let broken = builds
        .back_and_forth::<counter::Counter>(
            4,
            |_| Ok(()),
            |module| match hot_fn!(module.build_tag()).unwrap() {
                1 => Err("back on the old build".to_owned()),
                _ => Ok(()),
            },
        )
        .unwrap_err();
    assert_eq!(
        broken,
        "reload 2 (to the older build): the invariant broke: back on the old build"
    );
}
