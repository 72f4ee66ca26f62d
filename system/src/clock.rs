//! The wall clock.

use std::time::{SystemTime, UNIX_EPOCH};

/// Nanoseconds since the Unix epoch by the system clock (0 before 1970,
/// `u64::MAX` after 2554).
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    #[test]
    fn is_after_2026_and_moves_forward() {
        let a = super::now_ns();
        assert!(a > 1_767_225_600_000_000_000, "{a}");
        assert!(super::now_ns() >= a);
    }
}
