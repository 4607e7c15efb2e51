//! hot-lib-reloader, as its users set it up: `#[hot_module]` over `#[no_mangle]` functions.
//! Two instances over copies of one library: its default debounce (500 ms) and 50 ms.
//!
//! It watches its library file from a thread it starts at the first call, and watches it
//! again after every change it is told of (the watch is on the file, which a rename
//! replaces). A build put in place before the watch exists is never seen; one put in place
//! while it re-arms the watch can leave it watching nothing (notify 6, which it uses, drops
//! the new watch when the replaced file's removal is reported after it). So every build is
//! put in place only once the file there is watched: [`wait_until_watching`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::PATIENCE;
use crate::fixtures::{Fixtures, install, install_timed};

#[hot_lib_reloader::hot_module(
    dylib = "bench_hlr_default",
    lib_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/hotreload-bench/hlr")
)]
pub mod default {
    hot_functions_from_file!("bench/hlr/src/lib.rs");
}

#[hot_lib_reloader::hot_module(
    dylib = "bench_hlr_fast",
    lib_dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/hotreload-bench/hlr"),
    file_watch_debounce = 50
)]
pub mod fast {
    hot_functions_from_file!("bench/hlr/src/lib.rs");
}

/// The edit loop's instance: over the debug build of a copy of `bench/hlr` (library
/// `bench_hlr_live`) in the edit benchmark's target directory, as its users point it at
/// `target/debug`; default debounce.
#[hot_lib_reloader::hot_module(
    dylib = "bench_hlr_live",
    lib_dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/hotreload-bench/edit/target/debug"
    )
)]
pub mod edit {
    hot_functions_from_file!("bench/hlr/src/lib.rs");
}

/// Where both instances find their library.
pub fn lib_dir() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../target/hotreload-bench/hlr"
    ))
}

/// Which instance.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Instance {
    Default,
    Fast,
    /// The edit loop's.
    Edit,
}

impl Instance {
    pub fn build(self) -> u64 {
        match self {
            Instance::Default => default::build(),
            Instance::Fast => fast::build(),
            Instance::Edit => edit::build(),
        }
    }

    pub fn add(self, a: u64, b: u64) -> u64 {
        match self {
            Instance::Default => default::add(a, b),
            Instance::Fast => fast::add(a, b),
            Instance::Edit => edit::add(a, b),
        }
    }

    fn debounce(self) -> Duration {
        match self {
            Instance::Default | Instance::Edit => Duration::from_millis(500),
            Instance::Fast => Duration::from_millis(50),
        }
    }

    fn file(self) -> PathBuf {
        let (dir, name) = match self {
            Instance::Default => (lib_dir(), "bench_hlr_default"),
            Instance::Fast => (lib_dir(), "bench_hlr_fast"),
            Instance::Edit => (
                PathBuf::from(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/../target/hotreload-bench/edit/target/debug"
                )),
                "bench_hlr_live",
            ),
        };
        dir.join(hotreload::library_file_name(name))
    }
}

impl std::fmt::Display for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "hot-lib-reloader ({} ms debounce)",
            self.debounce().as_millis()
        )
    }
}

/// Puts build `build` (0 or 1) where `instance` watches.
pub fn install_build(fixtures: &Fixtures, instance: Instance, build: usize) -> std::io::Result<()> {
    install(&fixtures.hlr[build], &instance.file())
}

/// Puts build 1 in place for each instance that has no library yet, before its first call
/// loads it. An instance already running is left alone: replacing its file would start a
/// reload nobody waits for.
pub fn prepare(fixtures: &Fixtures) -> std::io::Result<()> {
    std::fs::create_dir_all(lib_dir())?;
    for instance in [Instance::Default, Instance::Fast] {
        if !instance.file().exists() {
            install_build(fixtures, instance, 0)?;
        }
    }
    Ok(())
}

/// Waits until `instance`'s watcher watches the file now in place (after its first call, or
/// after the last change it reloaded), so that the next build put there is seen.
pub fn wait_until_watching(instance: Instance) -> Result<(), Box<dyn std::error::Error>> {
    let file = instance.file();
    let started = Instant::now();
    loop {
        match watched(&file)? {
            Some(true) => return Ok(()),
            Some(false) if started.elapsed() > PATIENCE => {
                return Err(format!(
                    "{instance} never watched {}: no inotify watch on it {PATIENCE:?} after it \
                     started or last reloaded",
                    file.display()
                )
                .into());
            }
            Some(false) => std::thread::sleep(Duration::from_millis(1)),
            // This process's inotify watches cannot be listed: give the watcher a debounce
            // and a generous second to be ready instead.
            None => {
                std::thread::sleep(instance.debounce() + Duration::from_secs(1));
                return Ok(());
            }
        }
    }
}

/// Puts the build `instance` does not serve in place and waits until it answers with it.
/// Returns the time from the rename (its call) to that first answer. Call
/// [`wait_until_watching`] first.
pub fn reload(
    fixtures: &Fixtures,
    instance: Instance,
) -> Result<Duration, Box<dyn std::error::Error>> {
    let next = if instance.build() == 1 { 1 } else { 0 };
    let (in_place, _) = install_timed(&fixtures.hlr[next], &instance.file())?;
    while instance.build() != next as u64 + 1 {
        if in_place.elapsed() > PATIENCE {
            return Err(format!(
                "{instance} did not serve build {} within {PATIENCE:?} of it being put in place \
                 at {}, though it watched the file",
                next + 1,
                instance.file().display()
            )
            .into());
        }
        // Polled as hotreload is: a call, then a yield, so that the reloader thread waiting
        // for its lock (`try_write`) gets its chance.
        std::thread::yield_now();
    }
    Ok(in_place.elapsed())
}

/// Whether an inotify watch of this process is on the file now at `path` (same device and
/// inode); `None` when this process's inotify watches cannot be listed (no procfs).
fn watched(path: &Path) -> std::io::Result<Option<bool>> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return Ok(None);
    };
    // fdinfo gives the kernel's device number: major in the bits above 20, minor below.
    let (major, minor) = device_numbers(meta.dev());
    let device = (major << 20) | minor;
    for fd in fds.flatten() {
        let is_inotify = std::fs::read_link(fd.path())
            .is_ok_and(|target| target.as_os_str() == "anon_inode:inotify");
        if !is_inotify {
            continue;
        }
        let Ok(info) = std::fs::read_to_string(Path::new("/proc/self/fdinfo").join(fd.file_name()))
        else {
            continue;
        };
        let on_file = info
            .lines()
            .filter_map(|line| line.strip_prefix("inotify "))
            .any(|watch| {
                let field = |name: &str| {
                    watch
                        .split_whitespace()
                        .find_map(|f| f.strip_prefix(name))
                        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
                };
                field("ino:") == Some(meta.ino()) && field("sdev:") == Some(device)
            });
        if on_file {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

/// glibc's `major` and `minor` of a `st_dev`.
fn device_numbers(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}
