//! Caller stall: the longest single call a calling thread makes while a reload is in
//! progress, beside the longest call in a window of equal length without a reload. A
//! hotreload window is one `reload_module` (the new build already in place); a
//! hot-lib-reloader window runs from putting the build in place to its first answer. In both
//! kinds of window the thread that reloads is busy (in the baseline it copies memory, as
//! staging a library does), so that both see the same number of busy threads on the cores.

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bench_module::BenchState;
use hotreload::{HotReloader, Module, ModuleOptions, hot_fn};

use crate::Plan;
use crate::fixtures::{Fixtures, install};
use crate::hlr::{self, Instance};
use crate::report::{Report, Stall, tail};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// No window: before the first and after the last.
const NONE: u64 = u64::MAX;

/// What a window is, from its number: round * 4 + kind.
const RELOAD: u64 = 1;
const BASELINE: u64 = 2;

/// The windows the caller attributes its calls to.
struct Windows {
    current: AtomicU64,
    stop: AtomicBool,
    /// (window, longest call in it, in µs)
    longest: Mutex<Vec<(u64, f64)>>,
}

impl Windows {
    fn new() -> Arc<Self> {
        Arc::new(Windows {
            current: AtomicU64::new(NONE),
            stop: AtomicBool::new(false),
            longest: Mutex::new(Vec::new()),
        })
    }

    fn open(&self, round: usize, kind: u64) {
        self.current
            .store(round as u64 * 4 + kind, Ordering::Release);
    }

    /// Calls `call` in a loop, recording the longest call of each window. A call that spans
    /// the end of a window counts in the window it began in.
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
                    if window != NONE {
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

    /// Each round: `ready` outside any window, `reload` in a reload window, then a baseline
    /// window as long, in which this thread stays as busy. A call that outlasts a whole window
    /// leaves that window unrecorded, so rounds go on until `windows` of each kind are
    /// recorded (or twice as many rounds have run).
    fn measure(
        &self,
        windows: usize,
        busy: &mut Busy,
        mut ready: impl FnMut(usize) -> Result<()>,
        mut reload: impl FnMut(usize) -> Result<()>,
    ) -> Result<()> {
        for round in 0..2 * windows {
            if round >= windows {
                // Let the caller record the last window before counting.
                std::thread::sleep(Duration::from_millis(2));
                if self.recorded(RELOAD).min(self.recorded(BASELINE)) >= windows {
                    break;
                }
            }
            ready(round)?;
            self.open(round, RELOAD);
            let started = Instant::now();
            reload(round)?;
            let took = started.elapsed();
            self.open(round, BASELINE);
            busy.run_for(took);
            // Between rounds: no window.
            self.open(round, 0);
        }
        self.current.store(NONE, Ordering::Release);
        Ok(())
    }

    /// Windows of `kind` recorded so far.
    fn recorded(&self, kind: u64) -> usize {
        let longest = self.longest.lock().unwrap();
        longest.iter().filter(|(w, _)| w % 4 == kind).count()
    }

    fn finish(&self, caller: std::thread::JoinHandle<()>) -> Result<Stall> {
        // Let the caller close the last window, then stop it.
        std::thread::sleep(Duration::from_millis(5));
        self.stop.store(true, Ordering::Release);
        caller
            .join()
            .map_err(|_| "the calling thread panicked: a call failed during a reload")?;
        let longest = self.longest.lock().unwrap();
        let pick = |kind: u64| -> Vec<f64> {
            longest
                .iter()
                .filter(|(w, _)| w % 4 == kind)
                .map(|(_, us)| *us)
                .collect()
        };
        Ok(Stall {
            during_reload_us: pick(RELOAD),
            baseline_us: pick(BASELINE),
        })
    }
}

/// Keeps a thread busy for a while the way staging a library does: copying a buffer of the
/// library's size, a chunk at a time.
struct Busy {
    from: Vec<u8>,
    to: Vec<u8>,
}

impl Busy {
    fn new(bytes: usize) -> Self {
        Busy {
            from: vec![0x5a; bytes.max(1)],
            to: vec![0; bytes.max(1)],
        }
    }

    fn run_for(&mut self, span: Duration) {
        let started = Instant::now();
        let chunk = 64 << 10;
        let mut at = 0;
        while started.elapsed() < span {
            let end = (at + chunk).min(self.from.len());
            self.to[at..end].copy_from_slice(&self.from[at..end]);
            black_box(&mut self.to[at..end]);
            at = if end == self.from.len() { 0 } else { end };
        }
    }
}

pub fn run(fixtures: &Fixtures, plan: Plan, report: &mut Report) -> Result<()> {
    // (name, bytes of state, windows of each kind, whether the caller's method is `&self`).
    // The module declares `concurrent_save`: a `&self` caller goes on while the state is
    // saved and restored, a `&mut self` caller (`bump`) waits for it.
    let sizes: &[(&str, u64, usize, bool)] = if plan.quick {
        &[
            ("1kb", 1 << 10, 20, false),
            ("1mb", 1 << 20, 20, false),
            ("1mb_shared", 1 << 20, 20, true),
        ]
    } else {
        // 64 MB reloads take a few hundred milliseconds each: fewer of them.
        &[
            ("1kb", 1 << 10, 200, false),
            ("1mb", 1 << 20, 200, false),
            ("64mb", 64 << 20, 40, false),
            ("64mb_shared", 64 << 20, 40, true),
        ]
    };
    let mut busy = Busy::new(fixtures.module_len() as usize);
    for &(name, bytes, wanted, shared) in sizes {
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
            if shared {
                hot_fn!(calling.build()).expect("no call fails during a reload");
            } else {
                hot_fn!(calling.bump()).expect("no call fails during a reload");
            }
        });
        let mut prepare = Vec::new();
        let measured = windows.measure(
            wanted,
            &mut busy,
            // The reload reads the new build from its file: put there before the window.
            |round| Ok(install(&fixtures.module[(round + 1) % 2], &artifact)?),
            |_| {
                let done = reloader.reload_module("bench_state")?;
                prepare.push(done.timings.prepare + done.timings.prepare_shared);
                Ok(())
            },
        );
        let stall = windows.finish(caller)?;
        measured?;
        prepare.sort();
        let median = prepare[prepare.len() / 2].as_secs_f64();
        // Save and restore each pass over the state once.
        let mb_s = 2.0 * bytes as f64 / 1e6 / median;
        let (during, baseline) = (tail(&stall.during_reload_us), tail(&stall.baseline_us));
        println!(
            "  {name}: stall {:.1} µs ({}), baseline {:.1} µs ({}), save+restore {:.0} MB/s",
            during.value,
            during.label(),
            baseline.value,
            baseline.label(),
            mb_s
        );
        report.stalls.push((name, stall));
        if name == "64mb" || (plan.quick && name == "1mb") {
            // The exclusive pause: what `&mut self` callers wait (and `&self` ones, for a
            // module without `concurrent_save`).
            report.state_mb_s = mb_s;
        }
    }

    let windows = Windows::new();
    let caller = Arc::clone(&windows).caller(|| {
        black_box(Instance::Fast.add(1, 2));
    });
    let measured = windows.measure(
        plan.pick(20, 4),
        &mut busy,
        // Its watcher reloads when the build is put in place: that is in the window.
        |_| hlr::wait_until_watching(Instance::Fast),
        |_| hlr::reload(fixtures, Instance::Fast).map(drop),
    );
    let stall = windows.finish(caller)?;
    measured?;
    report.hlr_stall = Some(stall);
    Ok(())
}
