//! Caller stall: the longest single call a calling thread makes while a reload is in
//! progress, beside the longest call in a window of equal length without a reload.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench_module::BenchState;
use hotreload::{HotReloader, Module, ModuleOptions, hot_fn};

use crate::Plan;
use crate::fixtures::{Fixtures, install};
use crate::hlr::{self, Instance};
use crate::report::{Report, Stall};

/// Windows: even numbers are reloads, odd numbers the baseline window after each.
struct Windows {
    current: AtomicU64,
    stop: AtomicBool,
    /// (window, longest call in it, in µs)
    longest: Mutex<Vec<(u64, f64)>>,
}

impl Windows {
    fn new() -> Arc<Self> {
        Arc::new(Windows {
            current: AtomicU64::new(u64::MAX),
            stop: AtomicBool::new(false),
            longest: Mutex::new(Vec::new()),
        })
    }

    /// Calls `call` in a loop, recording the longest call of each window.
    fn caller(
        self: Arc<Self>,
        mut call: impl FnMut() + Send + 'static,
    ) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let mut window = self.current.load(Ordering::Acquire);
            let mut longest = Duration::ZERO;
            while !self.stop.load(Ordering::Acquire) {
                let started = Instant::now();
                call();
                longest = longest.max(started.elapsed());
                let now = self.current.load(Ordering::Acquire);
                if now != window {
                    if window != u64::MAX {
                        self.longest
                            .lock()
                            .unwrap()
                            .push((window, longest.as_secs_f64() * 1e6));
                    }
                    window = now;
                    longest = Duration::ZERO;
                }
            }
        })
    }

    /// Runs `reload` in window 2i, then a window of the same length without one.
    fn measure(&self, rounds: usize, mut reload: impl FnMut(usize)) {
        for round in 0..rounds {
            self.current.store(2 * round as u64, Ordering::Release);
            let started = Instant::now();
            reload(round);
            let took = started.elapsed();
            self.current.store(2 * round as u64 + 1, Ordering::Release);
            // The baseline window: as long as the reload took, with nothing happening.
            std::thread::sleep(took);
        }
        self.current.store(u64::MAX - 1, Ordering::Release);
    }

    fn finish(&self, caller: std::thread::JoinHandle<()>) -> Stall {
        // Let the caller close the last window, then stop it.
        std::thread::sleep(Duration::from_millis(5));
        self.stop.store(true, Ordering::Release);
        caller.join().unwrap();
        let longest = self.longest.lock().unwrap();
        let pick = |parity: u64| -> Vec<f64> {
            longest
                .iter()
                .filter(|(w, _)| *w < u64::MAX - 1 && w % 2 == parity)
                .map(|(_, us)| *us)
                .collect()
        };
        Stall {
            during_reload_us: pick(0),
            baseline_us: pick(1),
        }
    }
}

pub fn run(
    fixtures: &Fixtures,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let rounds = plan.pick(40, 8);
    let sizes: &[(&str, u64)] = if plan.quick {
        &[("1kb", 1 << 10), ("1mb", 1 << 20)]
    } else {
        &[("1kb", 1 << 10), ("1mb", 1 << 20), ("64mb", 64 << 20)]
    };
    for &(name, bytes) in sizes {
        let dir = fixtures.scratch("stall");
        let artifact = dir.join(hotreload::library_file_name("bench_module"));
        install(&fixtures.module[0], &artifact)?;
        let reloader = HotReloader::new();
        let module: Module<BenchState> =
            reloader.register_with(ModuleOptions::new().artifact(&artifact))?;
        hot_fn!(module.resize(bytes))?;
        let windows = Windows::new();
        let calling = module.clone();
        let caller = Arc::clone(&windows).caller(move || {
            hot_fn!(calling.bump()).expect("no call fails during a reload");
        });
        let mut prepare = Vec::new();
        windows.measure(rounds, |round| {
            install(&fixtures.module[(round + 1) % 2], &artifact).unwrap();
            let done = reloader.reload_module("bench_state").expect("reload");
            prepare.push(done.timings.prepare);
        });
        let stall = windows.finish(caller);
        prepare.sort();
        let median = prepare[prepare.len() / 2].as_secs_f64();
        // Save and restore each pass over the state once.
        let mb_s = 2.0 * bytes as f64 / 1e6 / median;
        println!(
            "  {name}: p99 stall {:.1} µs (baseline {:.1} µs), save+restore {:.0} MB/s",
            crate::report::percentile(&stall.during_reload_us, 99.0),
            crate::report::percentile(&stall.baseline_us, 99.0),
            mb_s
        );
        report.stalls.push((name, stall));
        if name == "64mb" || (plan.quick && name == "1mb") {
            report.state_mb_s = mb_s;
        }
    }

    let windows = Windows::new();
    let caller = Arc::clone(&windows).caller(|| {
        std::hint::black_box(Instance::Fast.add(1, 2));
    });
    let mut current = Instance::Fast.build();
    windows.measure(plan.pick(20, 4), |_| {
        let next = if current == 1 { 1 } else { 0 };
        hlr::install_build(fixtures, Instance::Fast, next).unwrap();
        while Instance::Fast.build() != next as u64 + 1 {
            std::thread::yield_now();
        }
        current = next as u64 + 1;
    });
    report.hlr_stall = Some(windows.finish(caller));
    Ok(())
}
