//! Many modules: modules calling each other through the host, builds that only fit together
//! reloaded as one set (all or nothing), the graph of who calls whom, and no deadlock when
//! calls cross modules while a set reloads. Real cargo builds of the mesh fixtures (`physics`,
//! `ai` calling it, `planner` calling both, `ping` and `pong` calling each other).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use ai::Ai;
use hotreload::{HotError, HotReloader, Module, ModuleOptions, Rejection, hot_fn};
use hotreload_tests::{MeshBuilds, mesh_builds};
use physics::Physics;
use pingpong::{Ping, Pong};
use planner::Planner;

/// The modules' artifacts in a directory of their own, installed from the mesh builds.
struct Sandbox {
    builds: &'static MeshBuilds,
    dir: tempfile::TempDir,
}

impl Sandbox {
    fn new() -> Self {
        Sandbox {
            builds: mesh_builds(env!("CARGO_TARGET_TMPDIR")),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn artifact(&self, krate: &str) -> PathBuf {
        self.dir.path().join(hotreload::library_file_name(krate))
    }

    /// Puts `variant`'s build of each of `crates` in place, as a finished build would be.
    fn install(&self, variant: &str, crates: &[&str]) {
        for krate in crates {
            hotreload::harness::install(
                &self.builds.artifact(variant, krate),
                &self.artifact(krate),
            )
            .unwrap();
        }
    }

    fn options(&self, krate: &str) -> ModuleOptions {
        ModuleOptions::new().artifact(self.artifact(krate))
    }
}

/// `physics` for the other modules only, `ai` and `planner` with handles.
struct Mesh {
    sandbox: Sandbox,
    reloader: HotReloader,
    ai: Module<Ai>,
    planner: Module<Planner>,
}

fn mesh() -> Mesh {
    let sandbox = Sandbox::new();
    sandbox.install("v1", &["physics", "ai", "planner"]);
    let reloader = HotReloader::new();
    reloader
        .register_for_imports::<Physics>(sandbox.options("physics"))
        .unwrap();
    let ai = reloader.register_with::<Ai>(sandbox.options("ai")).unwrap();
    let planner = reloader
        .register_with::<Planner>(sandbox.options("planner"))
        .unwrap();
    Mesh {
        sandbox,
        reloader,
        ai,
        planner,
    }
}

fn tags(planner: &Module<Planner>) -> (u32, u32, u32) {
    hot_fn!(planner.tags()).unwrap().unwrap()
}

#[test]
fn a_call_between_modules_reaches_the_callee_s_serving_build() {
    let mesh = mesh();
    assert_eq!(hot_fn!(mesh.planner.plan(0.1)).unwrap(), Ok(1));
    assert_eq!(tags(&mesh.planner), (1, 1, 1));
    let ai_before = mesh.ai.version().unwrap().generation;

    // A body-only change of `physics`: only `physics` reloads, and the next call of `ai`
    // reaches the new code.
    mesh.sandbox.install("tag2", &["physics"]);
    let report = mesh.reloader.reload_module("physics").unwrap();
    assert_eq!(report.changed_methods, ["tag"], "{}", report.changes());
    assert_eq!(report.method_count, 6);
    assert_eq!(report.changes(), "1 of 6 methods changed (tag)");
    assert_eq!(hot_fn!(mesh.ai.physics_tag()).unwrap(), Ok(2));
    assert_eq!(tags(&mesh.planner), (1, 1, 2));
    assert_eq!(mesh.ai.version().unwrap().generation, ai_before);
    // The state of `physics` came along: the step counted before is still there.
    assert_eq!(
        hot_fn!(mesh.ai.think(0.1)).unwrap().unwrap(),
        units::fall(0.1)
    );

    // A panic in `physics` comes back to `ai` as a typed error, and `ai` goes on.
    let failed = hot_fn!(mesh.ai.think(-1.0)).unwrap().unwrap_err();
    assert!(
        failed.contains("physics")
            && failed.contains("panicked")
            && failed.contains("back in time"),
        "{failed}"
    );
    assert!(hot_fn!(mesh.ai.think(0.1)).unwrap().is_ok());

    // Calls between modules count in the callee version's metrics, as the host's own do:
    // `physics` (which only other modules call) counted three steps of `ai` in load #2, one
    // of which panicked; `ai` (load #1 throughout) counted the `Err` that panic became, among
    // its three calls from the host and one from `planner`.
    let physics = mesh.reloader.metrics("physics").unwrap().unwrap();
    assert_eq!(physics.generation, 2);
    let step = physics.method("step").unwrap();
    assert_eq!(
        (step.calls, step.errors, step.panics),
        (3, 0, 1),
        "{physics:?}"
    );
    let think = mesh.reloader.metrics("ai").unwrap().unwrap();
    let think = think.method("think").unwrap();
    assert_eq!((think.calls, think.errors, think.panics), (4, 1, 0));
}

#[test]
fn a_callee_that_breaks_a_caller_is_refused_alone_and_taken_with_it() {
    let mesh = mesh();
    hot_fn!(mesh.planner.plan(0.1)).unwrap().unwrap();
    let thoughts = hot_fn!(mesh.ai.thoughts()).unwrap();

    // `gravity` takes `&mut self` now: the same entry layout, but the calls compiled for
    // `&self` would run it beside others. Refused, naming the receiver.
    mesh.sandbox.install("gravity_mut", &["physics"]);
    let err = mesh.reloader.reload_module("physics").unwrap_err();
    assert!(
        err.to_string()
            .contains("method 'gravity': takes `&mut self`, `ai` expects `&self`"),
        "{err}"
    );

    // `step` takes a new parameter: `ai`'s serving build calls the old one.
    mesh.sandbox.install("substeps", &["physics"]);
    let err = mesh.reloader.reload_module("physics").unwrap_err();
    match &err {
        HotError::Rejected {
            module,
            reason: Rejection::Caller { caller, reason, .. },
            ..
        } => {
            assert_eq!(module, "physics");
            assert_eq!(caller, "ai");
            assert!(reason.contains("step"), "{err}");
        }
        other => panic!("expected a refusal naming the caller, got {other}"),
    }
    assert_eq!(tags(&mesh.planner), (1, 1, 1), "nothing changed");

    // With `ai`'s matching build in the same set: `planner` was compiled with the old
    // `physics` too (a caller is checked against all it was compiled with of its callee).
    mesh.sandbox.install("substeps", &["ai"]);
    let err = mesh
        .reloader
        .reload_modules(&["physics", "ai"])
        .unwrap_err();
    assert!(
        matches!(
            &err,
            HotError::Rejected { reason: Rejection::Caller { caller, .. }, .. } if caller == "planner"
        ),
        "{err}"
    );
    assert_eq!(tags(&mesh.planner), (1, 1, 1), "nothing changed");

    // With every caller's build made against the new `physics`, the set is taken.
    mesh.sandbox.install("substeps", &["planner"]);
    let reports = mesh
        .reloader
        .reload_modules(&["physics", "ai", "planner"])
        .unwrap();
    let modules: Vec<&str> = reports.iter().map(|r| r.to.module.as_str()).collect();
    assert_eq!(modules, ["ai", "physics", "planner"]);
    assert!(reports.iter().all(|r| !r.unchanged));
    assert_eq!(tags(&mesh.planner), (1, 1, 3));
    assert_eq!(hot_fn!(mesh.planner.plan(0.1)).unwrap(), Ok(2));
    assert_eq!(hot_fn!(mesh.ai.thoughts()).unwrap(), thoughts + 1);

    // Going back with `physics` alone would break `ai`'s serving build again.
    let err = mesh.reloader.rollback("physics").unwrap_err();
    assert!(
        matches!(
            &err,
            HotError::Rejected {
                reason: Rejection::Caller { .. },
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(tags(&mesh.planner), (1, 1, 3));

    // The set goes back as it came: together, each with its current state.
    let back = mesh
        .reloader
        .rollback_modules(&["physics", "ai", "planner"])
        .unwrap();
    assert_eq!(back.len(), 3);
    assert!(
        back.iter()
            .all(|r| r.state == hotreload::RollbackState::Current),
        "{back:?}"
    );
    assert_eq!(tags(&mesh.planner), (1, 1, 1));
    assert_eq!(hot_fn!(mesh.planner.plan(0.1)).unwrap(), Ok(3));
    assert_eq!(hot_fn!(mesh.ai.thoughts()).unwrap(), thoughts + 2);
}

#[test]
fn a_call_waiting_for_a_thread_that_calls_another_member_never_deadlocks_a_set() {
    let (sandbox, reloader, ping, _pong) = pingpong();
    assert_eq!(hot_fn!(ping.bounce_on_a_thread(4)).unwrap(), Ok(5));
    // While a set waits for `ping`'s calls to end, each of them waits for a thread whose first
    // call goes to `pong`: the gate lets such a thread through after the patience, so nothing
    // waits for ever. Under this traffic (a call of `ping` always in flight) the set may find
    // no moment and give up (`Busy`), and no call fails either way.
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let (calls, failures) = under_load(
        2,
        || {
            let sum = hot_fn!(ping.bounce_on_a_thread(4)).map_err(|e| e.to_string())??;
            if sum != 5 && sum != 10 {
                return Err(format!("a bounce saw a mix of builds: {sum}"));
            }
            Ok(())
        },
        || {
            for i in 0..4 {
                sandbox.install(if i % 2 == 0 { "tag2" } else { "v1" }, &["pingpong"]);
                outcomes.push(reloader.reload_modules(&["ping", "pong"]));
            }
        },
    );
    assert_no_failures(calls, &failures);
    for outcome in &outcomes {
        assert!(
            matches!(outcome, Ok(_) | Err(HotError::Busy { .. })),
            "{outcome:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "4 set reloads took {:?}",
        started.elapsed()
    );
    // Once the traffic stops, the set goes through.
    sandbox.install("tag2", &["pingpong"]);
    reloader.reload_modules(&["ping", "pong"]).unwrap();
    assert_eq!(hot_fn!(ping.bounce_on_a_thread(4)).unwrap(), Ok(10));
}

#[test]
fn the_graph_shows_who_calls_whom_and_the_crates_they_share() {
    let mesh = mesh();
    let graph = mesh.reloader.graph();
    assert!(graph.notes.is_empty(), "{:?}", graph.notes);
    assert_eq!(graph.callees_of("planner"), ["ai", "physics"]);
    assert_eq!(graph.callers_of("physics"), ["ai", "planner"]);
    let dot = graph.to_dot();
    for line in [
        "\"planner\" -> \"ai\" [label=\"calls\"];",
        "\"ai\" -> \"physics\" [label=\"calls\"];",
        // The crates' path dependencies, from cargo metadata.
        "\"ai\" -> \"physics\" [style=dashed, color=gray40];",
        "\"physics\" -> \"hotreload-fixture-units\" [style=dashed, color=gray40];",
        "\"hotreload-fixture-units\" [shape=ellipse, style=dashed];",
        "\"planner\" [shape=box, label=\"planner\\nload #1\"];",
    ] {
        assert!(dot.contains(line), "missing {line} in:\n{dot}");
    }
    assert!(dot.starts_with("digraph modules {"), "{dot}");
}

#[test]
fn a_set_with_one_failing_member_leaves_every_member_as_it_was() {
    let sandbox = Sandbox::new();
    sandbox.install("v1", &["physics", "ai", "planner"]);
    let reloader = HotReloader::new();
    let physics = reloader
        .register_with::<Physics>(sandbox.options("physics"))
        .unwrap();
    let ai = reloader.register_with::<Ai>(sandbox.options("ai")).unwrap();
    let planner = reloader
        .register_with::<Planner>(sandbox.options("planner"))
        .unwrap();
    for _ in 0..5 {
        hot_fn!(planner.plan(0.25)).unwrap().unwrap();
    }
    let checksums = || {
        (
            hot_fn!(physics.checksum()).unwrap(),
            hot_fn!(ai.checksum()).unwrap(),
            hot_fn!(planner.plans()).unwrap(),
        )
    };
    let before = checksums();
    let versions = || {
        reloader
            .module_names()
            .iter()
            .map(|name| reloader.current_version(name).unwrap().unwrap().generation)
            .collect::<Vec<_>>()
    };
    let generations = versions();
    let all = ["physics", "ai", "planner"];

    // A half-written `planner` beside good builds of the others: refused at staging.
    sandbox.install("tag2", &["physics", "ai"]);
    let whole = std::fs::read(sandbox.builds.artifact("tag2", "planner")).unwrap();
    hotreload::harness::install_bytes(&whole[..whole.len() / 2], &sandbox.artifact("planner"))
        .unwrap();
    let err = reloader.reload_modules(&all).unwrap_err();
    assert!(err.to_string().contains("planner"), "{err}");
    assert_eq!(tags(&planner), (1, 1, 1));
    assert_eq!(checksums(), before);
    assert_eq!(versions(), generations);

    // `physics` fails at prepare, after the others' states were restored: none serves.
    sandbox.install("tag2", &["planner"]);
    sandbox.install("restore_fails", &["physics"]);
    let err = reloader.reload_modules(&all).unwrap_err();
    assert!(
        matches!(&err, HotError::Restore { module, .. } if module == "physics"),
        "{err}"
    );
    assert_eq!(tags(&planner), (1, 1, 1));
    assert_eq!(checksums(), before);
    assert_eq!(versions(), generations);

    // A host with a handle to `physics` checks the receivers too: `gravity` was `&self`.
    sandbox.install("gravity_mut", &["physics"]);
    let err = reloader.reload_module("physics").unwrap_err();
    assert!(
        err.to_string()
            .contains("method 'gravity': takes `&mut self`, the host expects `&self`"),
        "{err}"
    );
    assert_eq!(checksums(), before);

    // All good: all move, with their states.
    sandbox.install("tag2", &["physics"]);
    let reports = reloader.reload_modules(&all).unwrap();
    assert_eq!(reports.len(), 3);
    assert_eq!(tags(&planner), (2, 2, 2));
    assert_eq!(checksums(), before);

    // Nothing changed since: every member is reported unchanged, nothing reloads.
    let again = reloader.reload_modules(&all).unwrap();
    assert!(again.iter().all(|r| r.unchanged));
}

#[test]
fn a_module_registered_before_its_callee_waits_for_it() {
    let sandbox = Sandbox::new();
    sandbox.install("v1", &["physics", "ai"]);
    let reloader = HotReloader::new();
    let ai = reloader.register_with::<Ai>(sandbox.options("ai")).unwrap();
    let err = hot_fn!(ai.physics_tag()).unwrap().unwrap_err();
    assert!(err.contains("`physics` is not registered"), "{err}");
    reloader
        .register_for_imports::<Physics>(sandbox.options("physics"))
        .unwrap();
    assert_eq!(hot_fn!(ai.physics_tag()).unwrap(), Ok(1));
}

/// `ping` and `pong`, two modules of one library calling each other, registered from `v1`.
fn pingpong() -> (Sandbox, HotReloader, Module<Ping>, Module<Pong>) {
    let sandbox = Sandbox::new();
    sandbox.install("v1", &["pingpong"]);
    let reloader = HotReloader::new();
    let ping = reloader
        .register_with::<Ping>(sandbox.options("pingpong"))
        .unwrap();
    let pong = reloader
        .register_with::<Pong>(sandbox.options("pingpong"))
        .unwrap();
    (sandbox, reloader, ping, pong)
}

/// Fails with the first few failures of the `calls` made under load, if any.
fn assert_no_failures(calls: u64, failures: &[String]) {
    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}

/// Runs `threads` callers of `call` until `stop`, counting calls and failures, while `body`
/// runs on this thread; fails if the callers do not stop within a deadline.
fn under_load(
    threads: usize,
    call: impl Fn() -> Result<(), String> + Sync,
    body: impl FnOnce(),
) -> (u64, Vec<String>) {
    /// Stops the callers when the body ends, also when it fails (the scope then joins them
    /// before the failure goes on).
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let stop = AtomicBool::new(false);
    let calls = AtomicU64::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    if let Err(failure) = call() {
                        failures.lock().unwrap().push(failure);
                    }
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        body();
    });
    (calls.into_inner(), failures.into_inner().unwrap())
}

#[test]
fn calls_through_planner_never_fail_during_200_set_reloads() {
    let mesh = mesh();
    let all = ["physics", "ai", "planner"];
    let deadline = Instant::now() + Duration::from_secs(240);
    let (calls, failures) = under_load(
        4,
        || {
            hot_fn!(mesh.planner.plan(0.001))
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("plan: {e}"))?;
            // One call of `planner` sees one build of each module: a set commits at once.
            let (p, a, f) = hot_fn!(mesh.planner.tags())
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("tags: {e}"))?;
            if p != a || a != f {
                return Err(format!("a call saw a mix of builds: {p}, {a}, {f}"));
            }
            Ok(())
        },
        || {
            for i in 0..200 {
                assert!(Instant::now() < deadline, "200 set reloads took over 240 s");
                mesh.sandbox
                    .install(if i % 2 == 0 { "tag2" } else { "v1" }, &all);
                let reports = mesh.reloader.reload_modules(&all).unwrap();
                assert!(reports.iter().all(|r| !r.unchanged), "reload {i}");
            }
        },
    );
    assert_no_failures(calls, &failures);
    assert!(calls > 200, "the callers ran: {calls} calls");
    assert_eq!(tags(&mesh.planner), (1, 1, 1));
    let plans = hot_fn!(mesh.planner.plans()).unwrap();
    assert!(
        plans >= calls / 2,
        "{plans} plans kept over the reloads ({calls} calls)"
    );
}

#[test]
fn modules_calling_each_other_reload_as_a_set_without_deadlock() {
    let (sandbox, reloader, ping, pong) = pingpong();
    assert_eq!(hot_fn!(ping.bounce(6)).unwrap(), Ok(7));
    let deadline = Instant::now() + Duration::from_secs(120);
    let (calls, failures) = under_load(
        2,
        || {
            // Each bounce holds both modules until it returns: it sees one build of both.
            for (sum, depth) in [(hot_fn!(ping.bounce(6)), 7), (hot_fn!(pong.bounce(5)), 6)] {
                let sum = sum.map_err(|e| e.to_string())??;
                if sum != depth && sum != 2 * depth {
                    return Err(format!("a bounce saw a mix of builds: {sum}"));
                }
            }
            Ok(())
        },
        || {
            for i in 0..50 {
                assert!(
                    Instant::now() < deadline,
                    "50 set reloads of a cycle took over 120 s"
                );
                sandbox.install(if i % 2 == 0 { "tag2" } else { "v1" }, &["pingpong"]);
                let reports = reloader.reload_modules(&["ping", "pong"]).unwrap();
                assert_eq!(reports.len(), 2);
            }
        },
    );
    assert_no_failures(calls, &failures);
    assert!(calls > 50, "the callers ran: {calls} calls");
    assert_eq!(hot_fn!(ping.bounce(1)).unwrap(), Ok(2));
}

#[test]
fn a_shared_crate_edit_rebuilds_its_dependents_and_reloads_them_as_one_set() {
    use hotreload::Event;
    use hotreload_tests::{FixtureWorkspace, wait_for};
    const BUILD_TIMEOUT: Duration = Duration::from_secs(240);
    let workspace = FixtureWorkspace::create_with(
        env!("CARGO_TARGET_TMPDIR"),
        "mesh-watch",
        &["units", "physics", "ai", "planner"],
    );
    let options = |krate: &str| {
        ModuleOptions::new()
            .artifact(workspace.artifact(krate))
            .build_with_cargo_manifest(workspace.manifest(krate))
    };
    let reloader = HotReloader::new();
    reloader
        .register_for_imports::<Physics>(options("physics"))
        .unwrap();
    let ai = reloader.register_with::<Ai>(options("ai")).unwrap();
    let planner = reloader
        .register_with::<Planner>(options("planner"))
        .unwrap();
    let events = reloader.subscribe();
    reloader.start_watching().unwrap();
    let mut built = 0;
    wait_for(&events, BUILD_TIMEOUT, "three initial builds", |e| {
        built += usize::from(matches!(e, Event::BuildFinished { .. }));
        built == 3
    });
    assert_eq!(hot_fn!(planner.plan(0.1)).unwrap(), Ok(1));
    assert_eq!(Planner::units_revision(), 1);

    workspace.edit(
        "units",
        "pub const REVISION: u32 = 1;",
        "pub const REVISION: u32 = 2;",
    );
    let seen = wait_for(
        &events,
        BUILD_TIMEOUT,
        "the three dependents reloaded as one set",
        |e| matches!(e, Event::SetReloaded { .. }),
    );
    let Some(Event::SetReloaded { modules }) = seen.last() else {
        unreachable!()
    };
    assert_eq!(modules, &["ai", "physics", "planner"]);
    let reloads: Vec<&str> = seen
        .iter()
        .filter_map(|e| match e {
            Event::Reloaded { module, .. } => Some(module.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(
        reloads,
        ["ai", "physics", "planner"],
        "one reload each: {seen:#?}"
    );
    assert!(
        !seen.iter().any(|e| matches!(e, Event::ReloadFailed { .. })),
        "{seen:#?}"
    );
    assert_eq!(hot_fn!(ai.units_revision()).unwrap(), 2);
    assert_eq!(hot_fn!(planner.units_revision()).unwrap(), 2);
    // The states came along.
    assert_eq!(hot_fn!(planner.plan(0.1)).unwrap(), Ok(2));
    assert_eq!(hot_fn!(ai.thoughts()).unwrap(), 2);
}

#[test]
fn a_callback_asking_for_a_reload_during_a_transaction_is_told_not_now() {
    use std::sync::{Arc, Mutex};
    let sandbox = Sandbox::new();
    sandbox.install("v1", &["ai", "physics"]);
    let reloader = Arc::new(HotReloader::new());
    reloader
        .register_for_imports::<Physics>(sandbox.options("physics"))
        .unwrap();
    // Registration reports a missing artifact from inside its transaction; a callback that
    // asks for a reload there must not wait for that transaction (on its own thread).
    let answers = Arc::new(Mutex::new(Vec::new()));
    let weak = Arc::downgrade(&reloader);
    let seen = Arc::clone(&answers);
    reloader.on_event(move |event| {
        if let (hotreload::Event::ArtifactMissing { .. }, Some(reloader)) = (event, weak.upgrade())
        {
            seen.lock().unwrap().push(reloader.reload_module("physics"));
        }
    });
    // A new build of `physics` in place: reloading it takes a transaction.
    sandbox.install("tag2", &["physics"]);
    let missing = sandbox.dir.path().join("not-built-yet.so");
    reloader
        .register_with::<Ai>(ModuleOptions::new().artifact(&missing).wait_for_artifact())
        .unwrap();
    let answers = answers.lock().unwrap();
    assert_eq!(answers.len(), 1);
    assert!(
        matches!(
            &answers[0],
            Err(HotError::TransactionRunning {
                same_thread: true,
                ..
            })
        ),
        "{:?}",
        answers[0]
    );
}
