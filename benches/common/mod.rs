//! Helpers the benchmarks share: when to run, the medians they print, and the CPU time of the
//! benchmark process.

// Each benchmark is its own crate and uses only some of these.
#![allow(dead_code)]

use std::time::Duration;

/// True when `cargo bench` runs the benchmark (it passes `--bench`); under
/// `cargo test --all-targets` a benchmark checks this and does nothing.
pub fn requested() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The median of `values` (the upper one of an even count); panics on an empty list.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// CPU time (user + system) this process, all its threads, has used so far.
pub fn own_cpu_time() -> Duration {
    // SAFETY: getrusage only writes the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}
