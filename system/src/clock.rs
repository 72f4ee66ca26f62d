//! The clocks: the wall clock, and the monotonic clock other processes
//! (a test's Python writer) can read too.
#![allow(unsafe_code)]

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch by the system clock (0 before 1970,
/// `u64::MAX` after 2554).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `CLOCK_MONOTONIC` in nanoseconds: the clock Python's
/// `time.monotonic_ns()` reads, so timestamps of two processes compare.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime(2) writes one timespec into `ts`, which is valid,
    // exclusively borrowed and on our stack for the whole call; it reads
    // nothing else. CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC)");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_monotonic_clock_never_goes_back() {
        let a = super::monotonic_ns();
        assert!(a > 0 && super::monotonic_ns() >= a);
    }

    #[test]
    fn is_after_2026_and_moves_forward() {
        let a = super::now_ns();
        assert!(a > 1_767_225_600_000_000_000, "{a}");
        assert!(super::now_ns() >= a);
    }
}
