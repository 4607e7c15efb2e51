//! Call overhead: nanoseconds per call of `add(u64, u64) -> u64`, each way there is to call it.

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use bench_module::BenchState;
use hotreload::{HotReloader, LocalModule, Module, ModuleOptions, hot_fn};

use crate::Plan;
use crate::fixtures::{Fixtures, install};
use crate::hlr::{self, Instance};
use crate::report::Report;

/// Median over `rounds` of the mean time per call of `iters` calls.
fn ns_per_call(rounds: usize, iters: u64, mut call: impl FnMut(u64) -> u64) -> f64 {
    let mut sink = 0u64;
    for i in 0..iters / 10 {
        sink = sink.wrapping_add(call(black_box(i)));
    }
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for i in 0..iters {
                sink = sink.wrapping_add(call(black_box(i)));
            }
            started.elapsed().as_nanos() as f64 / iters as f64
        })
        .collect();
    black_box(sink);
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Per-thread ns per call with `threads` threads calling at once.
fn ns_per_call_threads<F>(threads: usize, rounds: usize, iters: u64, make: impl Fn() -> F) -> f64
where
    F: FnMut(u64) -> u64 + Send + 'static,
{
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut call = make();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                start.wait();
                ns_per_call(rounds, iters, &mut call)
            })
        })
        .collect();
    let per_thread: Vec<f64> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    per_thread.iter().sum::<f64>() / per_thread.len() as f64
}

pub fn run(
    fixtures: &Fixtures,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = plan.pick(9, 3);
    let iters = plan.pick(20_000_000, 2_000_000) as u64;
    let cores = report.cores;

    let direct = ns_per_call(rounds, iters, |i| BenchState::add(i, 1));

    // SAFETY: the bench module's library runs no initialisers beyond std's; `bench_raw_add`
    // is `extern "C" fn(u64, u64) -> u64` in its source, and the library outlives the calls.
    let library = unsafe { libloading::Library::new(&fixtures.module[0]) }?;
    // SAFETY: as above: the symbol has this exact type.
    let raw: extern "C" fn(u64, u64) -> u64 = unsafe { *library.get(b"bench_raw_add\0")? };
    let fn_ptr = ns_per_call(rounds, iters, |i| raw(i, 1));

    let dir = fixtures.scratch("calls");
    let artifact = dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &artifact)?;
    let reloader = HotReloader::new();
    let module: Module<BenchState> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact))?;
    let shared = ns_per_call(rounds, iters, |i| hot_fn!(module.add(i, 1)).unwrap());
    let local_dir = fixtures.scratch("calls-local");
    let local_artifact = local_dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &local_artifact)?;
    let local_reloader = HotReloader::new();
    let local: LocalModule<BenchState> =
        local_reloader.register_local_with(ModuleOptions::new().artifact(&local_artifact))?;
    let local_ns = ns_per_call(rounds, iters, |i| hot_fn!(local.add(i, 1)).unwrap());
    let all_cores = ns_per_call_threads(cores, rounds, iters, || {
        let module = module.clone();
        move |i| hot_fn!(module.add(i, 1)).unwrap()
    });

    hlr::prepare(fixtures)?;
    let hlr_iters = iters / 10;
    let hlr_one = ns_per_call(rounds, hlr_iters, |i| Instance::Fast.add(i, 1));
    let hlr_two = ns_per_call_threads(2, rounds, hlr_iters, || |i| Instance::Fast.add(i, 1));

    report.calls = vec![
        ("direct", "direct static call (rlib)", direct),
        (
            "fn_ptr",
            "cached raw function pointer into the dylib",
            fn_ptr,
        ),
        (
            "hot_fn",
            "hot_fn! through a LocalModule (one thread, no lock)",
            local_ns,
        ),
        (
            "hot_fn_shared",
            "hot_fn! through a shared Module handle, 1 thread",
            shared,
        ),
        (
            "hot_fn_all_cores",
            "hot_fn! shared handle, all cores at once (per thread)",
            all_cores,
        ),
        ("hot_lib_reloader", "hot-lib-reloader, 1 thread", hlr_one),
        (
            "hot_lib_reloader_2_threads",
            "hot-lib-reloader, 2 threads at once (per thread)",
            hlr_two,
        ),
    ];
    drop(library);
    Ok(())
}
