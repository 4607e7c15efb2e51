//! State evolution on real builds of `tests/fixtures/ledger`: its state changes shape over
//! three schemas (a field renamed and one added in v2, a field's type changed in v3), and each
//! build declares its migrations with `#[migrate]`.

use std::path::PathBuf;

use hotreload::{
    HotError, HotReloader, Module, ModuleOptions, ReloadReport, RollbackState, hot_fn,
};
use hotreload_tests::ledger_variants;

/// A ledger module registered from a private directory.
struct Ledger {
    _dir: tempfile::TempDir,
    artifact: PathBuf,
    reloader: HotReloader,
    module: Module<ledger::Ledger>,
}

impl Ledger {
    fn start(variant: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let artifact = dir.path().join(hotreload::library_file_name("ledger"));
        install(variant, &artifact);
        let reloader = HotReloader::new();
        let module = reloader
            .register_with::<ledger::Ledger>(ModuleOptions::new().artifact(&artifact))
            .unwrap_or_else(|err| panic!("registering the ledger failed: {err}"));
        Ledger {
            _dir: dir,
            artifact,
            reloader,
            module,
        }
    }

    fn reload(&self, variant: &str) -> Result<ReloadReport, HotError> {
        install(variant, &self.artifact);
        self.reloader.reload_module("ledger")
    }

    fn describe(&self) -> String {
        hot_fn!(self.module.describe()).unwrap().into()
    }

    fn add(&self, amount: i64) -> u64 {
        hot_fn!(self.module.add(amount)).unwrap()
    }

    fn set_owner(&self, name: &str) {
        hot_fn!(self.module.set_owner(name.into())).unwrap();
    }
}

fn install(variant: &str, artifact: &std::path::Path) {
    let built = ledger_variants(env!("CARGO_TARGET_TMPDIR"));
    hotreload::harness::install(built.artifact(variant), artifact).unwrap();
}

#[test]
fn a_chain_of_migrations_carries_the_state_through_each_schema() {
    let ledger = Ledger::start("v1");
    ledger.set_owner("ada (uk)");
    ledger.add(3);
    ledger.add(4);
    assert_eq!(ledger.describe(), "v1 owner=ada (uk) entries=[3, 4]");

    // v2: `owner` renamed `holder`, and a currency computed from the owner.
    let report = ledger.reload("v2").unwrap();
    assert_eq!(report.migrations, ["v1 -> v2 (from_v1)"]);
    assert_eq!(report.to.state_version, 2);
    assert_eq!(
        ledger.describe(),
        "v2 holder=ada (uk) currency=GBP entries=[3, 4]"
    );
    ledger.add(5);

    // v3: each amount becomes cents.
    let report = ledger.reload("v3").unwrap();
    assert_eq!(report.migrations, ["v2 -> v3 (from_v2)"]);
    assert_eq!(
        ledger.describe(),
        "v3 holder=ada (uk) currency=GBP cents=[300, 400, 500]"
    );
    assert_eq!(
        ledger.add(6),
        4,
        "the new build goes on from the migrated state"
    );

    // The same schema again: nothing to migrate.
    let report = ledger.reload("v3-no-down").unwrap();
    assert!(report.migrations.is_empty(), "{:?}", report.migrations);
    assert_eq!(
        ledger.describe(),
        "v3 holder=ada (uk) currency=GBP cents=[300, 400, 500, 600]"
    );
}

#[test]
fn a_build_two_schemas_ahead_migrates_through_both_steps() {
    let ledger = Ledger::start("v1");
    ledger.set_owner("grace");
    ledger.add(7);
    let report = ledger.reload("v3").unwrap();
    assert_eq!(
        report.migrations,
        ["v1 -> v2 (from_v1)", "v2 -> v3 (from_v2)"]
    );
    assert_eq!(
        ledger.describe(),
        "v3 holder=grace currency=EUR cents=[700]"
    );
}

#[test]
fn a_migration_that_fails_or_panics_is_refused_with_the_state_intact() {
    let ledger = Ledger::start("v1");
    for amount in [1, 2, 3] {
        ledger.add(amount);
    }
    let before = ledger.describe();

    let err = ledger.reload("v2-fails").unwrap_err();
    assert!(matches!(err, HotError::Restore { .. }), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("state schema v1 -> v2: from_v1 failed: 3 entries: too many to convert"),
        "{message}"
    );
    assert_eq!(ledger.describe(), before, "v1 serves on with its state");

    // Through two steps: the first succeeds, the second panics; the step is named.
    let err = ledger.reload("v3-panics").unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("state schema v2 -> v3: from_v2 panicked: cannot convert 3 entries"),
        "{message}"
    );
    assert_eq!(ledger.describe(), before, "v1 serves on with its state");
    assert_eq!(ledger.add(4), 4);
}

#[test]
fn a_schema_the_build_cannot_reach_is_refused_before_anything_is_touched() {
    let ledger = Ledger::start("v3");
    ledger.set_owner("edsger");
    ledger.add(1);
    let before = ledger.describe();
    // v3 declares a way down to v2 only; v1 declares no way up from anything newer.
    let err = ledger.reload("v1").unwrap_err();
    let HotError::StateSchema {
        from, to, reason, ..
    } = &err
    else {
        panic!("expected a state schema refusal, got {err:?}");
    };
    assert_eq!((*from, *to), (3, 1));
    assert!(reason.contains("no way down to v1"), "{reason}");
    assert_eq!(ledger.describe(), before);

    // v3 without its way down cannot go to v2 either.
    ledger.reload("v3-no-down").unwrap();
    let err = ledger.reload("v2").unwrap_err();
    assert!(
        err.to_string().contains("declares no way down to v2"),
        "{err}"
    );
    assert_eq!(ledger.describe(), before);
}

#[test]
fn a_reload_to_an_older_schema_goes_down_when_the_running_build_has_a_way() {
    let ledger = Ledger::start("v3");
    ledger.set_owner("barbara");
    ledger.add(2);
    let report = ledger.reload("v2").unwrap();
    assert_eq!(report.migrations, ["v3 -> v2 (to_v2)"]);
    assert_eq!(ledger.describe(), "v2 holder=barbara currency= entries=[2]");
}

#[test]
fn rollback_carries_the_current_state_down_when_the_newer_build_has_a_way() {
    let ledger = Ledger::start("v2");
    ledger.set_owner("alan");
    ledger.add(1);
    ledger.reload("v3").unwrap();
    ledger.add(2);
    let report = ledger.reloader.rollback("ledger").unwrap();
    assert_eq!(report.state, RollbackState::Current);
    assert_eq!(report.migrations, ["v3 -> v2 (to_v2)"]);
    assert_eq!(ledger.describe(), "v2 holder=alan currency= entries=[1, 2]");
}

#[test]
fn rollback_without_a_way_down_uses_the_snapshot_and_counts_the_calls_it_loses() {
    let ledger = Ledger::start("v2");
    ledger.set_owner("alan");
    ledger.add(1);
    ledger.reload("v3-no-down").unwrap();
    ledger.add(2);
    ledger.add(3);
    let _ = hot_fn!(ledger.module.describe()).unwrap();
    let report = ledger.reloader.rollback("ledger").unwrap();
    assert_eq!(report.state, RollbackState::Snapshot { calls_lost: 2 });
    assert!(report.migrations.is_empty());
    assert_eq!(ledger.describe(), "v2 holder=alan currency= entries=[1]");
}

#[test]
fn a_build_that_adds_methods_is_accepted_and_the_known_ones_keep_working() {
    let ledger = Ledger::start("v1");
    ledger.set_owner("ken");
    ledger.add(1);
    // Two methods more, declared between the ones the host knows: their table offsets moved.
    let report = ledger.reload("v1-grown").unwrap();
    assert_eq!(report.unknown_methods, ["total", "clear"]);
    assert_eq!(ledger.add(2), 2);
    ledger.set_owner("dennis");
    assert_eq!(ledger.describe(), "v1 owner=dennis entries=[1, 2]");
    // And back: the host's methods are all there.
    let report = ledger.reload("v1").unwrap();
    assert!(report.unknown_methods.is_empty());
    assert_eq!(ledger.describe(), "v1 owner=dennis entries=[1, 2]");
}

#[test]
fn a_build_without_a_method_the_host_calls_is_refused_naming_it() {
    let ledger = Ledger::start("v1");
    ledger.add(5);
    let err = ledger.reload("v1-without-set-owner").unwrap_err();
    assert!(
        err.to_string().contains("method 'set_owner' is missing"),
        "{err}"
    );
    assert_eq!(ledger.describe(), "v1 owner= entries=[5]");
}

#[test]
fn a_state_saved_beside_shared_calls_loses_no_change() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    // The ledger declares `concurrent_save`: `&self` calls go on while it is saved, and
    // `&mut self` calls wait from the save to the swap.
    let ledger = Ledger::start("v1");
    let stop = Arc::new(AtomicBool::new(false));
    let added = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..2)
        .map(|i| {
            let module = ledger.module.clone();
            let (stop, added) = (Arc::clone(&stop), Arc::clone(&added));
            std::thread::spawn(move || {
                let mut calls = 0u64;
                while !stop.load(Ordering::Acquire) {
                    if i == 0 {
                        hot_fn!(module.add(1)).unwrap();
                        added.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let _ = hot_fn!(module.describe()).unwrap();
                    }
                    calls += 1;
                }
                calls
            })
        })
        .collect();
    let mut shared = 0;
    for round in 0..20 {
        let report = ledger
            .reload(if round % 2 == 0 { "v1-grown" } else { "v1" })
            .unwrap();
        assert!(report.timings.prepare.is_zero(), "{}", report.timings);
        shared += u32::from(!report.timings.prepare_shared.is_zero());
    }
    stop.store(true, Ordering::Release);
    let calls: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(shared, 20, "every reload saved beside the calls");
    assert!(calls.iter().all(|&c| c > 0), "{calls:?}");
    // Every `&mut self` call made before, during and after the reloads is in the state.
    let entries = ledger.add(1) - 1;
    assert_eq!(entries, added.load(Ordering::Relaxed));
}
