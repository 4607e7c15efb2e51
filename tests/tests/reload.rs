//! Reloading real builds of the counter fixture: new behaviour, state carried over exactly.

use abi_stable::std_types::RString;
use counter::Snapshot;
use hotreload::{HotError, ModuleFault, hot_fn};
use hotreload_tests::{Sandbox, variants};

/// Gives the counter a state in which every field has a distinctive value.
fn fill(module: &hotreload::Module<counter::Counter>) -> Snapshot {
    for n in [5, -3, 1_000_000_007, 42] {
        hot_fn!(module.add(n)).unwrap();
    }
    hot_fn!(module.set_label(RString::from("snø ☃ label"))).unwrap();
    hot_fn!(module.snapshot()).unwrap()
}

#[test]
fn new_behaviour_is_observed_and_every_state_value_is_kept() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let before = fill(&module);
    assert_eq!(before.total, 5 - 3 + 1_000_000_007 + 42);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);

    sandbox.install("v2");
    let report = reloader.reload_module("counter").expect("v2 loads");
    assert_eq!(
        (report.from.unwrap().generation, report.to.generation),
        (1, 2)
    );
    assert_eq!(module.version().unwrap().generation, 2);

    assert_eq!(
        hot_fn!(module.snapshot()).unwrap(),
        before,
        "state carried over exactly"
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(
        hot_fn!(module.add(10)).unwrap(),
        before.total + 20,
        "v2 doubles"
    );
    assert_eq!(
        hot_fn!(module.greet(RString::from("Zoë")))
            .unwrap()
            .as_str(),
        "hello Zoë from build 2"
    );

    // And back: the state written by v2 restores into v1.
    sandbox.install("v1");
    reloader.reload_module("counter").expect("v1 loads again");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
    assert_eq!(hot_fn!(module.add(1)).unwrap(), before.total + 21);
    assert_eq!(hot_fn!(module.calls()).unwrap(), before.calls + 2);
}

#[test]
fn an_added_field_with_a_serde_default_starts_at_its_default() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let before = fill(&module);
    assert_eq!(before.extra, -1);

    sandbox.install("v2_field");
    reloader.reload_module("counter").expect("v2_field loads");
    let after = hot_fn!(module.snapshot()).unwrap();
    assert_eq!(after.extra, 7, "the new field holds its serde default");
    assert_eq!(Snapshot { extra: -1, ..after }, before, "old values kept");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 3);
}

#[test]
fn a_panicking_method_returns_an_error_and_the_next_call_works() {
    let sandbox = Sandbox::new(variants!());
    let (_reloader, module) = sandbox.register("v1");
    let before = fill(&module);

    let err = hot_fn!(module.explode(RString::from("kaboom"))).unwrap_err();
    match &err {
        HotError::Call {
            module,
            method,
            generation,
            fault: ModuleFault::Panicked(message),
            ..
        } => {
            assert_eq!(
                (module.as_str(), *method, *generation),
                ("counter", "explode", 1)
            );
            assert!(message.starts_with("kaboom (at "), "{message}");
            assert!(
                message.contains("lib.rs:"),
                "the panic's location: {message}"
            );
        }
        other => panic!("expected a call error, got {other:?}"),
    }
    assert!(
        err.to_string()
            .starts_with("counter (load #1, API v1): method `explode` panicked: kaboom (at "),
        "{err}"
    );
    assert_eq!(hot_fn!(module.snapshot()).unwrap(), before);
    assert_eq!(hot_fn!(module.add(1)).unwrap(), before.total + 1);
}

#[test]
fn versions_beyond_the_history_are_closed_and_their_shadow_copies_deleted() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) =
        sandbox.register_with("v1", hotreload::ModuleOptions::new().history(1));
    let first = module.version().unwrap();
    assert!(first.shadow.exists());
    assert_ne!(
        first.shadow,
        sandbox.artifact(),
        "the build output is never opened in place"
    );

    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert!(report.closed.is_empty(), "load #1 is kept for rollback");
    assert!(first.shadow.exists());
    assert_eq!(reloader.history("counter").unwrap()[0].generation, 1);

    sandbox.install("v1");
    let report = reloader.reload_module("counter").unwrap();
    assert_eq!(
        report.closed.len(),
        1,
        "load #1 falls out of a history of one"
    );
    assert_eq!(report.closed[0].info.generation, 1);
    assert_eq!(
        report.closed[0].still_mapped,
        Some(false),
        "and the OS unmapped it: {:?}",
        report.closed[0]
    );
    assert!(!first.shadow.exists(), "its shadow copy is deleted");
    assert_eq!(reloader.retired_versions("counter").unwrap().len(), 1);
    let history: Vec<u64> = reloader
        .history("counter")
        .unwrap()
        .iter()
        .map(|v| v.generation)
        .collect();
    assert_eq!(history, [2]);

    let shadow_dir = module
        .version()
        .unwrap()
        .shadow
        .parent()
        .unwrap()
        .to_path_buf();
    let files = std::fs::read_dir(&shadow_dir).unwrap().count();
    assert_eq!(
        files, 2,
        "the live version's shadow copy and the kept one's"
    );
}

#[test]
fn reloading_an_unknown_module_is_an_error_that_lists_the_registered_ones() {
    let reloader = hotreload::HotReloader::new();
    let err = reloader.reload_module("nope").unwrap_err();
    assert!(matches!(err, HotError::UnknownModule { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        "no module named `nope` is registered (none is)"
    );

    let sandbox = Sandbox::new(variants!());
    let (reloader, _module) = sandbox.register("v1");
    let err = reloader.reload_module("counterr").unwrap_err();
    assert_eq!(
        err.to_string(),
        "no module named `counterr` is registered (registered: counter)"
    );
}

#[test]
fn a_local_module_calls_without_a_lock_and_reloads_on_its_thread_only() {
    let sandbox = Sandbox::new(variants!());
    sandbox.install("v1");
    let reloader = std::sync::Arc::new(hotreload::HotReloader::new());
    let module = reloader
        .register_local_with::<counter::Counter>(
            hotreload::ModuleOptions::new().artifact(sandbox.artifact()),
        )
        .unwrap();
    assert_eq!(hot_fn!(module.add(7)).unwrap(), 7);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);

    sandbox.install("v2");
    // Another thread may not reload it: its calls take no lock.
    let elsewhere = std::sync::Arc::clone(&reloader);
    let err = std::thread::spawn(move || elsewhere.reload_module("counter").unwrap_err())
        .join()
        .unwrap();
    assert!(matches!(err, HotError::WrongThread { .. }), "{err:?}");
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1, "untouched");

    // Its own thread may, between calls.
    reloader.reload_module("counter").unwrap();
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
    assert_eq!(hot_fn!(module.add(1)).unwrap(), 9, "state kept, v2 doubles");
    let err = hot_fn!(module.explode(RString::from("local"))).unwrap_err();
    assert!(matches!(err, HotError::Call { .. }), "{err:?}");
    assert_eq!(hot_fn!(module.calls()).unwrap(), 2);
}

#[test]
fn reloading_an_unchanged_artifact_costs_one_stat_and_changes_nothing() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(5)).unwrap();
    let events = reloader.subscribe();

    const SAMPLES: usize = 200;
    let mut took: Vec<std::time::Duration> = (0..SAMPLES)
        .map(|_| {
            let started = std::time::Instant::now();
            let report = reloader.reload_module("counter").unwrap();
            let took = started.elapsed();
            assert!(report.unchanged, "{report:?}");
            assert_eq!(
                (report.from.unwrap().generation, report.to.generation),
                (1, 1)
            );
            took
        })
        .collect();
    took.sort();
    let (p50, p99) = (took[SAMPLES / 2], took[SAMPLES * 99 / 100]);
    println!("reload_module of an unchanged artifact, {SAMPLES} samples: p50 {p50:?}, p99 {p99:?}");
    assert!(p50 < std::time::Duration::from_millis(1), "p50 {p50:?}");
    assert!(
        events.try_iter().next().is_none(),
        "no event for a reload with nothing to do"
    );
    assert_eq!(
        hot_fn!(module.calls()).unwrap(),
        1,
        "the state is untouched"
    );

    // The same bytes touched in place (or re-linked by cargo) are another file with the same
    // content: copied and hashed, not loaded; the next reload of that file is one `stat`.
    let file = std::fs::File::options()
        .append(true)
        .open(sandbox.artifact())
        .unwrap();
    file.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(1))
        .unwrap();
    drop(file);
    let report = reloader.reload_module("counter").unwrap();
    assert!(report.unchanged, "{report:?}");
    assert!(
        report.timings.stage > std::time::Duration::ZERO,
        "it was hashed"
    );
    assert_eq!(report.to.generation, 1);
    let again = reloader.reload_module("counter").unwrap();
    assert!(again.unchanged);
    assert_eq!(again.timings.stage, std::time::Duration::ZERO, "one stat");
    assert!(events.try_iter().next().is_none(), "still no event");

    // A changed build loads. This test binary is a debug build, as a user's host is: staging
    // a debug module (about 36 MB) copies it in the kernel and hashes the copy (ring's
    // assembly SHA-256) at about disk speed. A SHA-256 compiled without optimisation took
    // 1.3 s for it alone.
    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert!(!report.unchanged);
    assert_eq!(report.to.generation, 2);
    println!(
        "reload of a {:.1} MB debug module: stage {:?}, total {:?}",
        report.to.artifact_len as f64 / 1e6,
        report.timings.stage,
        report.timings.total()
    );
    assert!(
        report.timings.stage < std::time::Duration::from_millis(500),
        "stage {:?}",
        report.timings.stage
    );

    // After a rollback the serving version is not the artifact's: a reload loads it again.
    reloader.rollback("counter").unwrap();
    let report = reloader.reload_module("counter").unwrap();
    assert!(!report.unchanged);
    assert_eq!(report.to.generation, 3);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
}
