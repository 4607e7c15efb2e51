//! hot-lib-reloader, as its users set it up: `#[hot_module]` over `#[no_mangle]` functions.
//! Two instances over copies of one library: its default debounce (500 ms) and 50 ms.

use std::path::PathBuf;

use crate::fixtures::{Fixtures, install};

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
}

impl Instance {
    pub fn build(self) -> u64 {
        match self {
            Instance::Default => default::build(),
            Instance::Fast => fast::build(),
        }
    }

    pub fn add(self, a: u64, b: u64) -> u64 {
        match self {
            Instance::Default => default::add(a, b),
            Instance::Fast => fast::add(a, b),
        }
    }

    fn file(self) -> PathBuf {
        let name = match self {
            Instance::Default => "bench_hlr_default",
            Instance::Fast => "bench_hlr_fast",
        };
        lib_dir().join(hotreload::library_file_name(name))
    }
}

/// Puts build `build` (0 or 1) where `instance` watches.
pub fn install_build(fixtures: &Fixtures, instance: Instance, build: usize) -> std::io::Result<()> {
    install(&fixtures.hlr[build], &instance.file())
}

/// Puts build 1 in place for both instances, before their first call loads it.
pub fn prepare(fixtures: &Fixtures) -> std::io::Result<()> {
    std::fs::create_dir_all(lib_dir())?;
    install_build(fixtures, Instance::Default, 0)?;
    install_build(fixtures, Instance::Fast, 0)
}
