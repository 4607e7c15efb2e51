//! Canaries on real builds: routing by share of calls and by key, each side's state, promotion
//! and abort by hand and by policy, refusals, and calls from several threads throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use hotreload::{CanaryOptions, CanaryPolicy, Event, HotError, ModuleOptions, Pick, Split, hot_fn};
use hotreload_tests::{Sandbox, one_at_a_time, variants, wait_for};

/// Calls of `build_tag` (1 in `v1`, 2 in `v2`, 4 in `divide_fails`) answered by the canary
/// among `calls`, with `pick`.
fn tags(module: &hotreload::Module<counter::Counter>, calls: u64, tag: u32) -> u64 {
    (0..calls)
        .filter(|_| hot_fn!(module.build_tag()).unwrap() == tag)
        .count() as u64
}

#[test]
fn a_share_of_calls_reaches_the_canary_within_statistical_bounds() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let canary = reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2"))
                .share_of_calls(0.25)
                .manual(),
        )
        .unwrap();
    assert_eq!(canary.generation, 2);
    assert_eq!(module.version().unwrap().generation, 1, "v1 still serves");

    let n = 20_000;
    let to_canary = tags(&module, n, 2);
    // A quarter, within five standard deviations (61 calls).
    assert!(
        (4_694..=5_306).contains(&to_canary),
        "{to_canary} of {n} calls reached the canary"
    );
    // Each version counts its own calls.
    let status = reloader.canary("counter").unwrap().expect("a canary runs");
    assert_eq!(status.split, Split::Calls(0.25));
    assert_eq!(status.figures.canary.calls, to_canary);
    assert_eq!(status.figures.serving.calls, n - to_canary);
    assert!(
        reloader
            .status()
            .unwrap()
            .to_string()
            .contains("canary    canary load #2 beside load #1, 25.0% of calls"),
        "{}",
        reloader.status().unwrap()
    );

    let figures = reloader.abort_canary("counter").unwrap();
    assert_eq!(figures.canary.calls, to_canary);
    assert_eq!(
        tags(&module, 1_000, 2),
        0,
        "the aborted canary takes no calls"
    );
    assert!(reloader.canary("counter").unwrap().is_none());
}

#[test]
fn a_key_always_reaches_the_same_version_and_calls_without_one_stay_on_serving() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2"))
                .share_of_keys(0.3)
                .manual(),
        )
        .unwrap();
    let mut on_canary = 0;
    for user in 0..2_000u64 {
        let first = hot_fn!(module.route(Pick::key(&user)).build_tag()).unwrap();
        for _ in 0..3 {
            assert_eq!(
                hot_fn!(module.route(Pick::key(&user)).build_tag()).unwrap(),
                first,
                "user {user} moved between versions"
            );
        }
        on_canary += u64::from(first == 2);
    }
    // 30% of the keys, within five standard deviations (20.5 keys).
    assert!((498..=702).contains(&on_canary), "{on_canary} of 2000 keys");
    // The same key by any type that hashes alike, and string keys.
    let by_name = hot_fn!(module.route(Pick::key("alice")).build_tag()).unwrap();
    assert_eq!(
        hot_fn!(module.route(Pick::key(&"alice".to_owned())).build_tag()).unwrap(),
        by_name
    );
    assert_eq!(
        tags(&module, 500, 2),
        0,
        "calls without a key stay on serving"
    );
    assert_eq!(hot_fn!(module.route(Pick::Serving).build_tag()).unwrap(), 1);
    assert_eq!(hot_fn!(module.route(Pick::Canary).build_tag()).unwrap(), 2);
    reloader.abort_canary("counter").unwrap();
    assert_eq!(hot_fn!(module.route(Pick::Canary).build_tag()).unwrap(), 1);
}

#[test]
fn each_side_keeps_its_own_state_and_promotion_carries_the_serving_one() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(5)).unwrap();
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2"))
                .share_of_calls(0.0)
                .manual(),
        )
        .unwrap();
    // The canary started from a copy of the serving state; each side changes its own.
    assert_eq!(hot_fn!(module.route(Pick::Canary).add(1)).unwrap(), 5 + 2);
    assert_eq!(hot_fn!(module.route(Pick::Canary).add(1)).unwrap(), 7 + 2);
    assert_eq!(hot_fn!(module.route(Pick::Serving).add(1)).unwrap(), 5 + 1);
    assert_eq!(
        hot_fn!(module.add(10)).unwrap(),
        16,
        "a share of 0 takes no call"
    );

    let report = reloader.promote_canary("counter").unwrap();
    assert_eq!(report.from.as_ref().unwrap().generation, 1);
    assert_eq!(report.to.generation, 2);
    assert_eq!(module.version().unwrap().generation, 2);
    // The serving state (16) was carried into the canary's build; its own (9) was dropped.
    let snapshot = hot_fn!(module.snapshot()).unwrap();
    assert_eq!(snapshot.total, 16);
    assert_eq!(hot_fn!(module.add(1)).unwrap(), 18, "v2 doubles");
    assert!(reloader.canary("counter").unwrap().is_none());
    // The replaced version is kept for rollback, as after a reload.
    let back = reloader.rollback("counter").unwrap();
    assert_eq!(back.to.generation, 1);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 1);
}

#[test]
fn an_abort_leaves_the_serving_version_and_its_state_untouched() {
    // Threads busy in other tests, started while a version served, keep it mapped.
    let _alone = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(3)).unwrap();
    let before = hot_fn!(module.snapshot()).unwrap();
    let canary = reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2")).manual(),
        )
        .unwrap();
    for _ in 0..50 {
        hot_fn!(module.route(Pick::Canary).add(100)).unwrap();
    }
    reloader.abort_canary("counter").unwrap();
    assert_eq!(hot_fn!(module.snapshot()).unwrap(), before);
    assert_eq!(module.version().unwrap().generation, 1);
    // The canary's version is closed and unmapped.
    let retired = reloader.retired_versions("counter").unwrap();
    let closed = retired
        .iter()
        .find(|v| v.info.generation == canary.generation)
        .expect("the canary is among the retired versions");
    assert_eq!(closed.still_mapped, Some(false), "{closed:?}");
    // A later reload works as usual, numbered after the canary.
    sandbox.install("v2");
    let report = reloader.reload_module("counter").unwrap();
    assert_eq!(report.to.generation, 3);
    assert_eq!(hot_fn!(module.snapshot()).unwrap().total, 3);
}

#[test]
fn the_policy_promotes_a_canary_within_its_bounds() {
    // Its busy threads would keep other tests' closed versions mapped.
    let _alone = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let events = reloader.subscribe();
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2"))
                .share_of_calls(0.5)
                .policy(
                    CanaryPolicy::default()
                        .min_calls(300)
                        .min_duration(Duration::from_millis(200))
                        .check_every(Duration::from_millis(10)),
                ),
        )
        .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let caller = {
        let (module, done) = (module.clone(), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut errors = 0;
            while !done.load(Ordering::Relaxed) {
                if hot_fn!(module.divide(7, 1)).unwrap().is_err() {
                    errors += 1;
                }
            }
            errors
        })
    };
    let seen = wait_for(&events, Duration::from_secs(60), "canary promoted", |e| {
        matches!(e, Event::CanaryPromoted { .. })
    });
    done.store(true, Ordering::Relaxed);
    assert_eq!(caller.join().unwrap(), 0);
    let Some(Event::CanaryPromoted {
        canary,
        figures,
        reason,
        ..
    }) = seen.last()
    else {
        unreachable!()
    };
    assert_eq!(canary.generation, 2);
    assert!(figures.canary.calls >= 300, "{figures}");
    assert!(figures.elapsed >= Duration::from_millis(200), "{figures}");
    assert!(reason.contains("bounds"), "{reason}");
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::CanaryStarted { .. }))
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, Event::Reloaded { to, .. } if to.generation == 2))
    );
    assert_eq!(module.version().unwrap().generation, 2);
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 2);
}

/// Calls `divide(a, 1)` for a = 0, 1, 2, ... until the canary is aborted; the errors seen.
fn divide_until_aborted(
    module: &hotreload::Module<counter::Counter>,
    events: &std::sync::mpsc::Receiver<Event>,
) -> (u64, Event) {
    let mut errors = 0;
    for a in 0..1_000_000 {
        if hot_fn!(module.divide(a, 1)).unwrap().is_err() {
            errors += 1;
        }
        if let Ok(event @ Event::CanaryAborted { .. }) = events.try_recv() {
            return (errors, event);
        }
    }
    // Not aborted: wait for the event with a deadline, to say so.
    let seen = wait_for(events, Duration::from_secs(30), "canary aborted", |e| {
        matches!(e, Event::CanaryAborted { .. })
    });
    (errors, seen.last().unwrap().clone())
}

/// Starts `divide_fails` as a canary of half the calls under `policy`, and calls it until
/// the policy aborts it: the errors the calls saw, the abort's reason and figures.
fn failing_canary(
    reloader: &hotreload::HotReloader,
    module: &hotreload::Module<counter::Counter>,
    policy: CanaryPolicy,
) -> (u64, String, hotreload::CanaryFigures) {
    let events = reloader.subscribe();
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("divide_fails"))
                .share_of_calls(0.5)
                .policy(policy),
        )
        .unwrap();
    match divide_until_aborted(module, &events) {
        (
            errors,
            Event::CanaryAborted {
                reason, figures, ..
            },
        ) => (errors, reason, figures),
        (_, other) => unreachable!("{other}"),
    }
}

#[test]
fn the_policy_aborts_a_failing_canary_and_its_budget_caps_the_failures() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let policy = CanaryPolicy::default()
        .min_calls(1_000_000)
        .check_every(Duration::from_millis(10));

    // The budget: the canary stops taking calls at its 20th failure, on the call path.
    let (errors, reason, figures) = failing_canary(
        &reloader,
        &module,
        policy.error_budget(20).judge_after(1_000_000),
    );
    assert_eq!(errors, 20, "one thread calls: exactly the budget fails");
    assert!(reason.contains("error budget is spent"), "{reason}");
    assert_eq!(figures.canary.errors, 20, "{figures}");
    assert_eq!(figures.serving.errors, 0, "{figures}");
    assert_eq!(module.version().unwrap().generation, 1);
    assert_eq!(tags(&module, 200, 4), 0);

    // The rate: judged after 200 canary calls, 25% failing against none.
    let (errors, reason, figures) =
        failing_canary(&reloader, &module, policy.error_budget(0).judge_after(200));
    assert!(reason.starts_with("`divide` failed 2"), "{reason}");
    assert!(figures.canary.calls >= 200, "{figures}");
    assert!(errors >= 40, "{errors} errors before the abort");
    assert!(
        (0.15..0.35).contains(&figures.canary.failure_rate()),
        "{figures}"
    );
    assert_eq!(hot_fn!(module.divide(8, 1)).unwrap(), Ok(8));
}

#[test]
fn reloads_rollbacks_and_a_second_canary_are_refused_while_one_runs() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    sandbox.install("v2");
    reloader.reload_module("counter").unwrap();
    let v2 = hot_fn!(module.add(2)).unwrap();
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v1")).manual(),
        )
        .unwrap();
    sandbox.install("v1");
    let running = |err: HotError| matches!(err, HotError::CanaryRunning { generation: 3, .. });
    assert!(running(reloader.reload_module("counter").unwrap_err()));
    assert!(running(reloader.rollback("counter").unwrap_err()));
    let again = reloader.start_canary(
        "counter",
        CanaryOptions::new(variants!().artifact("v1")).manual(),
    );
    assert!(running(again.unwrap_err()));
    assert_eq!(module.version().unwrap().generation, 2);
    assert_eq!(hot_fn!(module.route(Pick::Serving).add(0)).unwrap(), v2);

    reloader.abort_canary("counter").unwrap();
    assert!(matches!(
        reloader.abort_canary("counter").unwrap_err(),
        HotError::NoCanary { .. }
    ));
    assert!(matches!(
        reloader.promote_canary("counter").unwrap_err(),
        HotError::NoCanary { .. }
    ));
    assert_eq!(reloader.reload_module("counter").unwrap().to.generation, 4);
}

#[test]
fn a_canary_build_that_does_not_fit_is_refused_and_nothing_changes() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    hot_fn!(module.add(4)).unwrap();
    let before = hot_fn!(module.snapshot()).unwrap();
    for (variant, expected) in [
        ("bad_signature", "Rejected"),
        ("restore_panic", "Restore"),
        ("api_v2", "Rejected"),
    ] {
        let err = reloader
            .start_canary(
                "counter",
                CanaryOptions::new(variants!().artifact(variant)).manual(),
            )
            .unwrap_err();
        assert!(
            format!("{err:?}").starts_with(expected),
            "{variant}: {err:?}"
        );
        assert!(reloader.canary("counter").unwrap().is_none());
        assert_eq!(hot_fn!(module.snapshot()).unwrap(), before);
        assert_eq!(hot_fn!(module.route(Pick::Canary).build_tag()).unwrap(), 1);
    }
    let bad_share = reloader.start_canary(
        "counter",
        CanaryOptions::new(variants!().artifact("v2")).share_of_calls(1.5),
    );
    assert!(matches!(
        bad_share.unwrap_err(),
        HotError::CanaryUnsupported { .. }
    ));

    let off = Sandbox::new(variants!());
    let (reloader, _module) = off.register_with(
        "v1",
        ModuleOptions::new().metrics(hotreload::MetricsConfig::off()),
    );
    let err = reloader
        .start_canary("counter", CanaryOptions::new(variants!().artifact("v2")))
        .unwrap_err();
    assert!(err.to_string().contains("metrics are off"), "{err}");
}

#[test]
fn a_local_module_has_no_canary() {
    let sandbox = Sandbox::new(variants!());
    sandbox.install("v1");
    let reloader = hotreload::HotReloader::new();
    let _module = reloader
        .register_local_with::<counter::Counter>(ModuleOptions::new().artifact(sandbox.artifact()))
        .unwrap();
    let err = reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2")).manual(),
        )
        .unwrap_err();
    assert!(err.to_string().contains("LocalModule"), "{err}");
}

#[test]
fn calls_from_many_threads_run_through_canaries_started_promoted_and_aborted() {
    // Its busy threads would keep other tests' closed versions mapped.
    let _alone = one_at_a_time();
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let done = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (module, done, calls) = (module.clone(), Arc::clone(&done), Arc::clone(&calls));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while !done.load(Ordering::Relaxed) {
                    let tag = hot_fn!(module.route(Pick::key(&(t, n % 64))).build_tag()).unwrap();
                    assert!(tag == 1 || tag == 2, "{tag}");
                    if n.is_multiple_of(8) {
                        hot_fn!(module.bump()).unwrap();
                    }
                    n += 1;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for round in 0..10u32 {
        let serving = hot_fn!(module.route(Pick::Serving).build_tag()).unwrap();
        let other = if serving == 1 { "v2" } else { "v1" };
        reloader
            .start_canary(
                "counter",
                CanaryOptions::new(variants!().artifact(other))
                    .share_of_keys(0.5)
                    .manual(),
            )
            .unwrap();
        let (seen, deadline) = (
            calls.load(Ordering::Relaxed),
            std::time::Instant::now() + Duration::from_secs(30),
        );
        while calls.load(Ordering::Relaxed) < seen + 2_000 {
            assert!(
                std::time::Instant::now() < deadline,
                "the callers made fewer than 2000 calls in 30 s during round {round}"
            );
            std::thread::yield_now();
        }
        if round.is_multiple_of(2) {
            reloader.promote_canary("counter").unwrap();
        } else {
            reloader.abort_canary("counter").unwrap();
        }
    }
    done.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    assert!(reloader.canary("counter").unwrap().is_none());
    assert!(hot_fn!(module.calls()).unwrap() > 0);
}

#[test]
fn a_promotion_asks_the_reload_hooks_and_a_veto_leaves_the_canary_running() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let frozen = Arc::new(AtomicBool::new(true));
    let told = Arc::new(AtomicU64::new(0));
    {
        let frozen = Arc::clone(&frozen);
        reloader.before_reload(move |request| {
            assert!(request.artifact.ends_with("libcounter.so"), "{request:?}");
            match frozen.load(Ordering::Relaxed) {
                true => Err("release freeze".to_owned()),
                false => Ok(()),
            }
        });
        let told = Arc::clone(&told);
        reloader.after_reload(move |_, outcome| {
            if let Ok(report) = outcome {
                told.store(report.to.generation, Ordering::Relaxed);
            }
        });
    }
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2")).manual(),
        )
        .unwrap();
    let err = reloader.promote_canary("counter").unwrap_err();
    assert!(matches!(err, HotError::Vetoed { ref reason, .. } if reason == "release freeze"));
    assert!(reloader.canary("counter").unwrap().is_some());
    assert_eq!(hot_fn!(module.route(Pick::Canary).build_tag()).unwrap(), 2);

    frozen.store(false, Ordering::Relaxed);
    reloader.promote_canary("counter").unwrap();
    assert_eq!(told.load(Ordering::Relaxed), 2);
}

#[test]
fn a_canary_ends_with_its_reloader_though_handles_outlive_it() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2"))
                .share_of_calls(1.0)
                .policy(CanaryPolicy::default().min_duration(Duration::from_secs(3600))),
        )
        .unwrap();
    assert_eq!(tags(&module, 100, 2), 100);
    drop(reloader);
    assert_eq!(
        tags(&module, 100, 1),
        100,
        "the serving version takes every call"
    );
}

#[test]
fn a_build_that_arrives_while_a_canary_runs_is_taken_once_it_ends() {
    let sandbox = Sandbox::new(variants!());
    let (reloader, module) = sandbox.register("v1");
    let events = reloader.subscribe();
    reloader.start_watching().unwrap();
    wait_for(&events, Duration::from_secs(30), "watching", |e| {
        matches!(e, Event::Watching { .. })
    });
    reloader
        .start_canary(
            "counter",
            CanaryOptions::new(variants!().artifact("v2")).manual(),
        )
        .unwrap();
    // A new build lands while the canary runs: refused for now.
    sandbox.install("v2_field");
    wait_for(
        &events,
        Duration::from_secs(30),
        "the new build refused while the canary runs",
        |e| {
            matches!(
                e,
                Event::ReloadFailed {
                    error: HotError::CanaryRunning { .. },
                    ..
                }
            )
        },
    );
    assert_eq!(hot_fn!(module.route(Pick::Serving).build_tag()).unwrap(), 1);
    // The canary ends: the build that came meanwhile is taken.
    reloader.abort_canary("counter").unwrap();
    wait_for(
        &events,
        Duration::from_secs(30),
        "the new build taken after the canary",
        |e| matches!(e, Event::Reloaded { to, .. } if to.generation == 3),
    );
    assert_eq!(hot_fn!(module.build_tag()).unwrap(), 3, "v2_field serves");
}
