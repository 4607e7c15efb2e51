//! A module that calls the benchmark module through the host: the cost of a call from one
//! module into another.

use std::hint::black_box;

use bench_module::BenchState;
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BenchCaller {}

#[hotreload::hot_module(version = 1, uses = [bench_module::BenchState])]
impl BenchCaller {
    /// Calls the benchmark module's `add` `n` times, each through the host to the module's
    /// serving build; returns the sum (so that nothing is optimised away).
    pub fn add_through(&self, n: u64) -> u64 {
        let module = Self::import::<BenchState>();
        let mut sum = 0u64;
        for i in 0..n {
            let added = hotreload::hot_fn!(module.add(black_box(i), 1)).unwrap_or(0);
            sum = sum.wrapping_add(added);
        }
        sum
    }
}
