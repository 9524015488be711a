//! One clock for the whole tool: nanoseconds since the tool started.
//!
//! Send times travel inside event bodies and come back through the daemon to the sink, so the
//! generator and the sink must read the same monotonic clock. Both live in this process, so one
//! process-wide `Instant` is enough, and a `u64` of nanoseconds fits in a JSON number exactly
//! (well below 2^53 for any run shorter than a hundred days).

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the first call (made at startup by `main`).
pub fn now_ns() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// The clock's zero as `CLOCK_MONOTONIC` seconds (what `perf record -k mono` stamps samples
/// with), so a stall seen in a timeline can be found in a profile. `Instant` is a `timespec`
/// on Linux and its `Debug` shows it.
pub fn zero_monotonic() -> Option<f64> {
    let text = format!("{:?}", START.get_or_init(Instant::now));
    let num = |key: &str| -> Option<f64> {
        text.split(key)
            .nth(1)?
            .trim_start_matches([':', ' '])
            .split(|c: char| !c.is_ascii_digit())
            .next()?
            .parse()
            .ok()
    };
    Some(num("tv_sec")? + num("tv_nsec")? / 1e9)
}

/// Seconds between two clock readings.
pub fn secs(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}
