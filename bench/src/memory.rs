//! Memory over many reloads: shadow copies still mapped, and resident memory growth, for a
//! module that registers no thread-local destructor and for one that does.

use bench_module::BenchState;
use hotreload::{HotReloader, Module, ModuleOptions, hot_fn};

use crate::Plan;
use crate::fixtures::{Fixtures, install};
use crate::report::{Memory, Report};

/// Replaced versions each module keeps loaded for rollback (the default, spelled out: the
/// memory target allows this many mapped copies plus the live one).
const HISTORY: usize = 3;

fn resident_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Distinct files under `dir` mapped into this process.
fn mapped_under(dir: &str) -> usize {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let files: std::collections::BTreeSet<&str> = maps
        .lines()
        .filter_map(|l| l.find('/').map(|i| &l[i..]))
        .filter(|path| path.starts_with(dir))
        .collect();
    files.len()
}

fn scenario(
    fixtures: &Fixtures,
    reloads: usize,
    touch_thread_local: bool,
) -> Result<Memory, Box<dyn std::error::Error>> {
    let dir = fixtures.scratch("memory");
    let artifact = dir.join(hotreload::library_file_name("bench_module"));
    install(&fixtures.module[0], &artifact)?;
    let reloader = HotReloader::new();
    let module: Module<BenchState> =
        reloader.register_with(ModuleOptions::new().artifact(&artifact).history(HISTORY))?;
    // Counted from each reload's report: the reloader remembers only its last retired
    // versions.
    let reported = std::cell::Cell::new(0usize);
    let reload = |i: usize| -> Result<(), Box<dyn std::error::Error>> {
        install(&fixtures.module[(i + 1) % 2], &artifact)?;
        let report = reloader.reload_module("bench_state")?;
        let still_mapped = report.closed.iter().chain(&report.released);
        reported.set(
            reported.get()
                + still_mapped
                    .filter(|r| r.still_mapped == Some(true))
                    .count(),
        );
        if touch_thread_local {
            hot_fn!(module.touch_thread_local())?;
        }
        Ok(())
    };
    // Warm up the allocator and the page cache before the first reading.
    for i in 0..10 {
        reload(i)?;
    }
    let before = resident_kb();
    for i in 10..10 + reloads {
        reload(i)?;
    }
    let after = resident_kb();
    let shadow_dir = module.version().expect("loaded").shadow;
    let shadow_dir = shadow_dir
        .parent()
        .expect("shadow dir")
        .to_string_lossy()
        .into_owned();
    Ok(Memory {
        reloads,
        history: HISTORY,
        mapped_copies: mapped_under(&shadow_dir),
        rss_growth_kb: after.saturating_sub(before) as i64,
        still_mapped_reported: reported.get(),
    })
}

pub fn run(
    fixtures: &Fixtures,
    plan: Plan,
    report: &mut Report,
) -> Result<(), Box<dyn std::error::Error>> {
    let reloads = plan.pick(1000, 100);
    report.memory_plain = Some(scenario(fixtures, reloads, false)?);
    report.memory_tls = Some(scenario(fixtures, reloads, true)?);
    Ok(())
}
