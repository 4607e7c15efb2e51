//! The module the benchmarks load: a trivial function to time calls, a counter to time
//! mutating calls, and a state whose size the benchmark sets.

use std::cell::RefCell;

use serde::{Deserialize, Serialize};

/// Which build this is; the benchmark builds variants that differ here.
const BUILD: u64 = 1;

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BenchState {
    calls: u64,
    #[serde(with = "serde_bytes")]
    payload: Vec<u8>,
}

std::thread_local! {
    // Left untouched unless `touch_thread_local` runs: a thread-local with a destructor keeps
    // the library mapped after it is closed (glibc), which the memory benchmark measures.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

// No `&self` method changes the state: a reload may save it while they run.
#[hotreload::hot_module(version = 1, concurrent_save = true)]
impl BenchState {
    /// The call the overhead benchmark times.
    pub fn add(a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }

    /// Which build is serving.
    pub fn build() -> u64 {
        BUILD
    }

    /// A mutating call: the stall benchmark's callers use it.
    pub fn bump(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }

    /// Sets the size of the state carried across reloads.
    pub fn resize(&mut self, bytes: u64) {
        self.payload = (0..bytes).map(|i| (i % 251) as u8).collect();
    }

    /// Registers a thread-local destructor in this build.
    pub fn touch_thread_local(&self) -> u64 {
        SCRATCH.with(|s| {
            s.borrow_mut().push(1);
            s.borrow().len() as u64
        })
    }
}

/// About 720 KiB of data, so that the release library weighs about 1.5 MB like a small real
/// module: copying, hashing and mapping it is part of what a reload costs.
static PADDING: [u8; 720 * 1024] = [0x5a; 720 * 1024];

/// Keeps the padding in the library.
#[unsafe(no_mangle)]
pub extern "C" fn bench_padding_byte(i: usize) -> u8 {
    PADDING[i % PADDING.len()]
}

/// The baseline: a plain exported function, called through a cached raw pointer.
#[unsafe(no_mangle)]
pub extern "C" fn bench_raw_add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}
