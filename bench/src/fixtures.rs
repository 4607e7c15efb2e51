//! The modules under test, built in release mode with the harness, and how to put a build
//! where a reloader watches.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use hotreload::harness::VariantBuilder;
pub use hotreload::harness::install;

pub struct Fixtures {
    /// hotreload module builds 1 and 2 (they differ in what `build()` returns).
    pub module: [PathBuf; 2],
    /// hot-lib-reloader library builds 1 and 2.
    pub hlr: [PathBuf; 2],
    /// A module that calls the hotreload module (build 1) through the host.
    pub caller: PathBuf,
    /// A scratch directory.
    pub work: PathBuf,
}

impl Fixtures {
    pub fn build(root: &Path, out: &Path) -> Result<Self, Box<dyn std::error::Error>> {
        let variants = |krate: &str, file: &str| {
            VariantBuilder::new(root.join(krate), out.join("variants").join(file))
                .lockfile(root.join("Cargo.lock"))
                .target_dir(out.join("target"))
                .release(true)
                .variant("b1", |v| v)
                .variant("b2", |v| {
                    v.edit(
                        "src/lib.rs",
                        "const BUILD: u64 = 1;",
                        "const BUILD: u64 = 2;",
                    )
                })
                .build()
        };
        let module = variants("bench/module", "module")?;
        let hlr = variants("bench/hlr", "hlr")?;
        let caller = VariantBuilder::new(root.join("bench/caller"), out.join("variants/caller"))
            .lockfile(root.join("Cargo.lock"))
            .target_dir(out.join("target"))
            .release(true)
            .variant("b1", |v| v)
            .build()?;
        let work = out.join("work");
        std::fs::create_dir_all(&work)?;
        // hot-lib-reloader's directory starts empty: it loads whatever it finds there first.
        let _ = std::fs::remove_dir_all(crate::hlr::lib_dir());
        Ok(Fixtures {
            module: [module.artifact("b1").into(), module.artifact("b2").into()],
            hlr: [hlr.artifact("b1").into(), hlr.artifact("b2").into()],
            caller: caller.artifact("b1").into(),
            work,
        })
    }

    pub fn module_len(&self) -> u64 {
        std::fs::metadata(&self.module[0]).map_or(0, |m| m.len())
    }

    /// A fresh directory for one benchmark's artifact.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.work.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        dir
    }
}

/// As [`install`] (written beside `to`, then renamed over it), returning the moment the
/// rename was called and how long it took to return. The new build is complete at the call,
/// and in place as soon as the rename takes effect; the call returns only after the replaced
/// file has been freed, which can take milliseconds, and a watcher may have reloaded by
/// then: latencies count from the call.
pub fn install_timed(from: &Path, to: &Path) -> std::io::Result<(Instant, Duration)> {
    let name = to
        .file_name()
        .map_or_else(|| "artifact".into(), |n| n.to_string_lossy().into_owned());
    let beside = to.with_file_name(format!(".{name}.incoming"));
    std::fs::copy(from, &beside)?;
    // Written out before it is put in place, as a careful writer does: on ext4 a rename
    // over a file otherwise allocates and writes the new file's blocks inside the rename
    // call (1.5 ms of it here), and the reload would be timed from a rename still busy
    // with the disk.
    std::fs::File::open(&beside)?.sync_data()?;
    let renaming = Instant::now();
    std::fs::rename(&beside, to)?;
    Ok((renaming, renaming.elapsed()))
}
