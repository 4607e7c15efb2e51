//! The same trivial functions for hot-lib-reloader, which loads `#[no_mangle]` functions.

/// Which build this is; the benchmark builds variants that differ here.
const BUILD: u64 = 1;

#[unsafe(no_mangle)]
pub fn add(a: u64, b: u64) -> u64 {
    a.wrapping_add(b)
}

#[unsafe(no_mangle)]
pub fn build() -> u64 {
    BUILD
}
