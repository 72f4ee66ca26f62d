//! Timestamps for people and scripts: RFC 3339 in UTC.

/// Nanoseconds since the Unix epoch now (0 if the clock is before 1970).
pub fn now_ns() -> u64 {
    system::clock::now_ns()
}

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339(ns: u64) -> String {
    disk_format::time::rfc3339(ns, 3)
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(1_795_621_980_123_456_789), "2026-11-25T15:53:00.123Z");
    }
}
