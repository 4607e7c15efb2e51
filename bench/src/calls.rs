//! Call overhead: nanoseconds per call of `add(u64, u64) -> u64`, each way there is to call it.
//! Each figure is a median over rounds, with the fastest and slowest round beside it, in wall
//! time and in the calling threads' CPU time (which a busy machine's other work does not
//! inflate).

use std::hint::black_box;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use bench_caller::BenchCaller;
use bench_module::BenchState;
use hotreload::{
    CanaryOptions, HotReloader, LocalModule, MetricsConfig, Module, ModuleOptions, Pick, hot_fn,
};

use crate::Plan;
use crate::fixtures::{Fixtures, install};
use crate::hlr::{self, Instance};
use crate::report::{CallCost, Report};

/// The CPU time this thread has used.
fn thread_cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec, and CLOCK_THREAD_CPUTIME_ID is a clock
    // every Linux has; on failure `now` stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// Wall and CPU nanoseconds per call of one round.
#[derive(Clone, Copy)]
struct Round {
    wall_ns: f64,
    cpu_ns: f64,
}

/// `rounds` rounds of `iters` calls, after `iters / 10` unmeasured ones; `before_round` runs
/// before each (a barrier, for rounds that several threads run at once).
fn rounds_of(
    rounds: usize,
    iters: u64,
    call: &mut impl FnMut(u64) -> u64,
    mut before_round: impl FnMut(),
) -> Vec<Round> {
    let mut sink = 0u64;
    for i in 0..iters / 10 {
        sink = sink.wrapping_add(call(black_box(i)));
    }
    let measured = (0..rounds)
        .map(|_| {
            before_round();
            let cpu = thread_cpu_time();
            let started = Instant::now();
            for i in 0..iters {
                sink = sink.wrapping_add(call(black_box(i)));
            }
            let wall = started.elapsed();
            let cpu = thread_cpu_time().saturating_sub(cpu);
            Round {
                wall_ns: wall.as_nanos() as f64 / iters as f64,
                cpu_ns: cpu.as_nanos() as f64 / iters as f64,
            }
        })
        .collect();
    black_box(sink);
    measured
}

/// One thread calling.
fn one_thread(
    key: &'static str,
    label: &'static str,
    rounds: usize,
    iters: u64,
    mut call: impl FnMut(u64) -> u64,
) -> CallCost {
    let measured = rounds_of(rounds, iters, &mut call, || {});
    CallCost {
        key,
        label,
        threads: 1,
        wall_ns: measured.iter().map(|r| r.wall_ns).collect(),
        cpu_ns: measured.iter().map(|r| r.cpu_ns).collect(),
    }
}

/// A figure of calls that each made `inner` calls inside the module: per inner call.
fn per_inner_call(mut cost: CallCost, inner: u64) -> CallCost {
    for ns in cost.wall_ns.iter_mut().chain(cost.cpu_ns.iter_mut()) {
        *ns /= inner as f64;
    }
    cost
}

/// `threads` threads calling at once, each round started together; a round's figure is the
/// mean over the threads of their cost per call.
fn threads_at_once<F>(
    key: &'static str,
    label: &'static str,
    threads: usize,
    rounds: usize,
    iters: u64,
    make: impl Fn() -> F,
) -> CallCost
where
    F: FnMut(u64) -> u64 + Send + 'static,
{
    let start = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let mut call = make();
            let start = Arc::clone(&start);
            std::thread::spawn(move || {
                rounds_of(rounds, iters, &mut call, || {
                    start.wait();
                })
            })
        })
        .collect();
    let per_thread: Vec<Vec<Round>> = handles
        .into_iter()
        .map(|h| h.join().expect("a calling thread panicked"))
        .collect();
    let mean = |round: usize, pick: fn(&Round) -> f64| {
        per_thread.iter().map(|t| pick(&t[round])).sum::<f64>() / threads as f64
    };
    CallCost {
        key,
        label,
        threads,
        wall_ns: (0..rounds).map(|r| mean(r, |r| r.wall_ns)).collect(),
        cpu_ns: (0..rounds).map(|r| mean(r, |r| r.cpu_ns)).collect(),
    }
}

pub fn run(
    fixtures: &Fixtures,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = plan.pick(9, 5);
    let iters = plan.pick(20_000_000, 2_000_000) as u64;
    let cores = report.cores;

    let direct = one_thread("direct", "direct static call (rlib)", rounds, iters, |i| {
        BenchState::add(i, 1)
    });

    // SAFETY: the bench module's library runs no initialisers beyond std's; `bench_raw_add`
    // is `extern "C" fn(u64, u64) -> u64` in its source, and the library outlives the calls.
    let library = unsafe { libloading::Library::new(&fixtures.module[0]) }?;
    // SAFETY: as above: the symbol has this exact type.
    let raw: extern "C" fn(u64, u64) -> u64 = unsafe { *library.get(b"bench_raw_add\0")? };
    let fn_ptr = one_thread(
        "fn_ptr",
        "cached raw function pointer into the dylib",
        rounds,
        iters,
        |i| raw(i, 1),
    );

    let dir = fixtures.scratch("calls");
    let artifact = dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &artifact)?;
    let reloader = HotReloader::new();
    let module: Module<BenchState> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact))?;
    let shared = one_thread(
        "hot_fn_shared",
        "hot_fn! through a shared Module handle, 1 thread",
        rounds,
        iters,
        |i| hot_fn!(module.add(i, 1)).unwrap(),
    );
    let local_dir = fixtures.scratch("calls-local");
    let local_artifact = local_dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &local_artifact)?;
    let local_reloader = HotReloader::new();
    let local: LocalModule<BenchState> =
        local_reloader.register_local_with(ModuleOptions::new().artifact(&local_artifact))?;
    let local_cost = one_thread(
        "hot_fn",
        "hot_fn! through a LocalModule (one thread, no lock)",
        rounds,
        iters,
        |i| hot_fn!(local.add(i, 1)).unwrap(),
    );
    let all_cores = threads_at_once(
        "hot_fn_all_cores",
        "hot_fn! shared handle, all cores at once (per thread)",
        cores,
        rounds,
        iters,
        || {
            let module = module.clone();
            move |i| hot_fn!(module.add(i, 1)).unwrap()
        },
    );

    // The same calls with each version's metrics off, and with every call timed (the
    // handles above count every call and time a sample: the default).
    let (_off_reloader, off): (_, Module<BenchState>) =
        register_with_metrics(fixtures, "calls-metrics-off", MetricsConfig::off())?;
    let shared_off = one_thread(
        "hot_fn_shared_metrics_off",
        "hot_fn! shared handle, metrics off",
        rounds,
        iters,
        |i| hot_fn!(off.add(i, 1)).unwrap(),
    );
    let local_off_dir = fixtures.scratch("calls-local-metrics-off");
    let local_off_artifact = local_off_dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &local_off_artifact)?;
    let local_off_reloader = HotReloader::new();
    let local_off: LocalModule<BenchState> = local_off_reloader.register_local_with(
        ModuleOptions::new()
            .artifact(&local_off_artifact)
            .metrics(MetricsConfig::off()),
    )?;
    let local_off_cost = one_thread(
        "hot_fn_metrics_off",
        "hot_fn! LocalModule, metrics off",
        rounds,
        iters,
        |i| hot_fn!(local_off.add(i, 1)).unwrap(),
    );
    let (_timed_reloader, timed): (_, Module<BenchState>) = register_with_metrics(
        fixtures,
        "calls-every-call-timed",
        MetricsConfig::every_call(),
    )?;
    let shared_timed = one_thread(
        "hot_fn_shared_every_call_timed",
        "hot_fn! shared handle, every call timed",
        rounds,
        iters,
        |i| hot_fn!(timed.add(i, 1)).unwrap(),
    );

    // A canary beside the serving version (the same build): plain calls drawn for it, half
    // of them, and calls routed by a key, half of the keys.
    let (canary_reloader, canaried): (_, Module<BenchState>) =
        register_with_metrics(fixtures, "calls-canary", MetricsConfig::default())?;
    canary_reloader.start_canary(
        canaried.name(),
        CanaryOptions::new(&fixtures.module[0])
            .share_of_calls(0.1)
            .manual(),
    )?;
    let canary_calls = one_thread(
        "hot_fn_shared_canary_tenth_calls",
        "hot_fn! shared handle, canary on a tenth of the calls",
        rounds,
        iters,
        |i| hot_fn!(canaried.add(i, 1)).unwrap(),
    );
    canary_reloader.abort_canary(canaried.name())?;
    canary_reloader.start_canary(
        canaried.name(),
        CanaryOptions::new(&fixtures.module[0])
            .share_of_keys(0.5)
            .manual(),
    )?;
    let canary_keys = one_thread(
        "hot_fn_shared_canary_half_keys",
        "hot_fn! shared handle, canary on half the keys (Pick::key(&u64))",
        rounds,
        iters,
        |i| hot_fn!(canaried.route(Pick::key(&i)).add(i, 1)).unwrap(),
    );

    // A module calling another through the host (the same `add`, from the caller's code).
    let caller_dir = fixtures.scratch("calls-between-modules");
    let caller_artifact = caller_dir.join(hotreload::library_file_name("bench_caller"));
    install(&fixtures.caller, &caller_artifact)?;
    let caller: Module<BenchCaller> =
        reloader.register_with(ModuleOptions::new().artifact(&caller_artifact))?;
    // Each call of the caller makes `INNER` calls between modules: the host's own call is
    // spread over them.
    const INNER: u64 = 1000;
    let between = per_inner_call(
        one_thread(
            "module_to_module",
            "hot_fn! from one module into another (through the host)",
            rounds,
            iters / INNER,
            |_| hot_fn!(caller.add_through(INNER)).unwrap(),
        ),
        INNER,
    );
    let between_all = per_inner_call(
        threads_at_once(
            "module_to_module_all_cores",
            "hot_fn! module into module, all cores at once (per thread)",
            cores,
            rounds,
            iters / INNER,
            || {
                let caller = caller.clone();
                move |_| hot_fn!(caller.add_through(INNER)).unwrap()
            },
        ),
        INNER,
    );

    hlr::prepare(fixtures)?;
    let hlr_iters = iters / 10;
    let hlr_one = one_thread(
        "hot_lib_reloader",
        "hot-lib-reloader, 1 thread",
        rounds,
        hlr_iters,
        |i| Instance::Fast.add(i, 1),
    );
    let hlr_two = threads_at_once(
        "hot_lib_reloader_2_threads",
        "hot-lib-reloader, 2 threads at once (per thread)",
        2,
        rounds,
        hlr_iters,
        || |i| Instance::Fast.add(i, 1),
    );

    report.calls = vec![
        direct,
        fn_ptr,
        local_cost,
        local_off_cost,
        shared,
        shared_off,
        shared_timed,
        canary_calls,
        canary_keys,
        all_cores,
        between,
        between_all,
        hlr_one,
        hlr_two,
    ];
    drop(library);
    Ok(())
}

/// The bench module registered (shared handle) from a copy of its own, with `metrics`.
fn register_with_metrics(
    fixtures: &Fixtures,
    scratch: &str,
    metrics: MetricsConfig,
) -> Result<(HotReloader, Module<BenchState>), Box<dyn std::error::Error>> {
    let dir = fixtures.scratch(scratch);
    let artifact = dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &artifact)?;
    let reloader = HotReloader::new();
    let module =
        reloader.register_with(ModuleOptions::new().artifact(&artifact).metrics(metrics))?;
    Ok((reloader, module))
}
