//! Reload latency: from the rename that puts a complete new artifact in place (timed from
//! the call: see [`install_timed`]) to the first call answered by the new build. Each
//! library's watcher is known to be watching, and has taken one unmeasured reload, before
//! the first measured one.

use std::path::Path;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use bench_module::BenchState;
use hotreload::{Event, HotReloader, Module, ModuleOptions, StepTimings, hot_fn};

use crate::fixtures::{Fixtures, install, install_timed};
use crate::hlr::{self, Instance};
use crate::report::{Report, percentile};
use crate::{PATIENCE, Plan, await_event};

/// The bench module's name, as the events name it.
const MODULE: &str = "bench_state";

pub fn run(
    fixtures: &Fixtures,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = plan.pick(200, 20);
    let dir = fixtures.scratch("reloads");
    let artifact = dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &artifact)?;
    let reloader = HotReloader::new();
    let module: Module<BenchState> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact))?;
    hot_fn!(module.resize(1024))?;
    let events = reloader.subscribe();
    reloader.start_watching()?;
    wait_until_watching(&events, &artifact)?;
    reload(
        fixtures,
        &module,
        &events,
        &artifact,
        1,
        "the unmeasured first reload",
    )?;

    for round in 0..rounds {
        let build = round % 2;
        let what = format!("reload {} of {rounds}", round + 1);
        let measured = reload(fixtures, &module, &events, &artifact, build, &what)?;
        report.reload_ms.push(measured.latency.as_secs_f64() * 1e3);
        report.rename_us.push(measured.rename.as_secs_f64() * 1e6);
        report.steps.push(measured.steps);
    }
    drop(reloader);

    hlr::prepare(fixtures)?;
    report.hlr_reload_ms = hlr_latencies(fixtures, Instance::Default, plan.pick(10, 3))?;
    report.hlr_fast_reload_ms = hlr_latencies(fixtures, Instance::Fast, plan.pick(30, 5))?;
    let p50 = percentile(&report.reload_ms, 50.0);
    println!("  hotreload p50 {p50:.2} ms over {rounds} reloads");
    Ok(())
}

/// Waits for the watcher to say it watches the artifact: from then on no change is missed.
fn wait_until_watching(
    events: &Receiver<Event>,
    artifact: &Path,
) -> Result<(), Box<dyn std::error::Error>> {
    let what = format!("hotreload's watcher watching {}", artifact.display());
    await_event(events, &what, |event| match event {
        Event::Watching { module, .. } if module == MODULE => Some(Ok(())),
        Event::WatchError { message } => Some(Err(format!("{what} failed: {message}"))),
        _ => None,
    })
}

/// One reload as measured.
struct Measured {
    /// From the rename's call to the first answer from the new build.
    latency: Duration,
    /// The rename's call to its return.
    rename: Duration,
    steps: StepTimings,
}

/// Puts module build `build` (0 or 1) in place, polls until a call answers from it, then
/// takes the reload's step timings from its `Reloaded` event. `what` names the reload in
/// errors.
fn reload(
    fixtures: &Fixtures,
    module: &Module<BenchState>,
    events: &Receiver<Event>,
    artifact: &Path,
    build: usize,
    what: &str,
) -> Result<Measured, Box<dyn std::error::Error>> {
    let serves = build as u64 + 1;
    let (in_place, rename) = install_timed(&fixtures.module[build], artifact)?;
    while hot_fn!(module.build())? != serves {
        if in_place.elapsed() > PATIENCE {
            let refused = events.try_iter().find_map(|event| match event {
                Event::ReloadFailed { reason, .. } => Some(reason),
                _ => None,
            });
            return Err(format!(
                "hotreload did not serve build {serves} within {PATIENCE:?} of it being put in \
                 place ({what}){}",
                refused.map_or_else(String::new, |r| format!("; it refused it: {r}"))
            )
            .into());
        }
        // Both libraries are polled the same way: a call, then a yield, so that a reloader
        // thread waiting for a lock (hot-lib-reloader's `try_write`) gets its chance.
        std::thread::yield_now();
    }
    let latency = in_place.elapsed();
    let what = format!("hotreload's Reloaded event after serving build {serves} ({what})");
    await_event(events, &what, |event| match event {
        Event::Reloaded { timings, .. } => Some(Ok(Measured {
            latency,
            rename,
            steps: timings,
        })),
        Event::ReloadFailed { reason, .. } => Some(Err(format!("{what}: failed: {reason}"))),
        _ => None,
    })
}

/// hot-lib-reloader's reload latency, measured the same way, each build put in place once
/// its watcher watches the file there.
fn hlr_latencies(
    fixtures: &Fixtures,
    instance: Instance,
    rounds: usize,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    warm_up(fixtures, instance)?;
    let mut latencies = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        hlr::wait_until_watching(instance)?;
        let latency = hlr::reload(fixtures, instance)?;
        latencies.push(latency.as_secs_f64() * 1e3);
    }
    Ok(latencies)
}

/// The instance's first call loads its library and starts its watcher (if an earlier
/// benchmark has not); once the watcher watches, one unmeasured reload.
fn warm_up(fixtures: &Fixtures, instance: Instance) -> Result<(), Box<dyn std::error::Error>> {
    instance.build();
    hlr::wait_until_watching(instance)?;
    hlr::reload(fixtures, instance)?;
    Ok(())
}
