//! Reload latency: from the moment a complete new artifact is in place (the rename has
//! returned) to the first call answered by the new build.

use std::time::{Duration, Instant};

use bench_module::BenchState;
use hotreload::{Event, HotReloader, Module, ModuleOptions, StepTimings, hot_fn};

use crate::Plan;
use crate::fixtures::{Fixtures, install};
use crate::hlr::{self, Instance};
use crate::report::{Report, percentile};

/// How long to wait for a reload before calling it lost.
const PATIENCE: Duration = Duration::from_secs(30);

pub fn run(
    fixtures: &Fixtures,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = plan.pick(40, 10);
    let dir = fixtures.scratch("reloads");
    let artifact = dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &artifact)?;
    let reloader = HotReloader::new();
    let module: Module<BenchState> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact))?;
    hot_fn!(module.resize(1024))?;
    let events = reloader.subscribe();
    reloader.start_watching()?;

    let mut latencies = Vec::with_capacity(rounds);
    let mut steps: Vec<StepTimings> = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let build = (round + 1) % 2;
        install(&fixtures.module[build], &artifact)?;
        let in_place = Instant::now();
        while hot_fn!(module.build())? != build as u64 + 1 {
            if in_place.elapsed() > PATIENCE {
                return Err(format!("reload {round} never happened").into());
            }
            // Both libraries are polled the same way: a call, then a yield, so that a reloader
            // thread waiting for a lock (hot-lib-reloader's `try_write`) gets its chance.
            std::thread::yield_now();
        }
        latencies.push(in_place.elapsed());
        loop {
            match events.recv_timeout(PATIENCE)? {
                Event::Reloaded { timings, .. } => break steps.push(timings),
                Event::ReloadFailed { reason, .. } => return Err(reason.into()),
                _ => {}
            }
        }
    }
    report.reload_ms = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    report.steps = steps;
    drop(reloader);

    hlr::prepare(fixtures)?;
    report.hlr_reload_ms = hlr_latencies(fixtures, Instance::Default, plan.pick(10, 3))?;
    report.hlr_fast_reload_ms = hlr_latencies(fixtures, Instance::Fast, plan.pick(30, 5))?;
    let p50 = percentile(&report.reload_ms, 50.0);
    println!("  hotreload p50 {p50:.2} ms over {rounds} reloads");
    Ok(())
}

/// hot-lib-reloader's reload latency, measured the same way.
fn hlr_latencies(
    fixtures: &Fixtures,
    instance: Instance,
    rounds: usize,
) -> Result<Vec<f64>, Box<dyn std::error::Error>> {
    let mut current = warm_up(fixtures, instance)?;
    let mut latencies = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let next = if current == 1 { 1 } else { 0 };
        hlr::install_build(fixtures, instance, next)?;
        let in_place = Instant::now();
        while instance.build() != next as u64 + 1 {
            if in_place.elapsed() > PATIENCE {
                return Err(format!("hot-lib-reloader reload {round} never happened").into());
            }
            std::thread::yield_now();
        }
        latencies.push(in_place.elapsed().as_secs_f64() * 1e3);
        current = next as u64 + 1;
    }
    Ok(latencies)
}

/// hot-lib-reloader sets up its file watch in the background at its first call: a build put
/// in place before the watch is there is never seen. One unmeasured reload, its build put in
/// place again each second until the instance has taken it, makes sure it watches. Returns
/// the build serving after it.
fn warm_up(fixtures: &Fixtures, instance: Instance) -> Result<u64, Box<dyn std::error::Error>> {
    let first = instance.build();
    let next = if first == 1 { 1 } else { 0 };
    let started = Instant::now();
    while instance.build() != next as u64 + 1 {
        if started.elapsed() > PATIENCE {
            return Err("hot-lib-reloader never took a first new build".into());
        }
        hlr::install_build(fixtures, instance, next)?;
        let put = Instant::now();
        while instance.build() != next as u64 + 1 && put.elapsed() < Duration::from_secs(1) {
            std::thread::yield_now();
        }
    }
    Ok(next as u64 + 1)
}
