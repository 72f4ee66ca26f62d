//! Timestamps as people and records read them: RFC 3339 in UTC.
//!
//! The calendar arithmetic is `jiff`'s (see docs/DESIGN-NOTES.md, issue 13
//! part 5); this module only fixes the format: `Z`, never an offset, and
//! exactly the number of fraction digits asked for, truncated.

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS` plus a
/// fraction of `digits` digits (0 to 9; more is taken as 9), truncated, and
/// `Z`.
pub fn rfc3339(ns: u64, digits: u32) -> String {
    let digits = digits.min(9) as usize;
    // Every u64 of nanoseconds (up to the year 2554) is inside jiff's range
    // (years -9999 to 9999), so this cannot fail.
    let t = jiff::Timestamp::from_nanosecond(i128::from(ns)).expect("a u64 of nanoseconds is a valid timestamp");
    format!("{t:.digits$}")
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn known_instants() {
        assert_eq!(rfc3339(0, 3), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_000_000_000, 0), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_795_621_980_123_456_789, 3), "2026-11-25T15:53:00.123Z");
        assert_eq!(rfc3339(1_795_621_980_123_456_789, 9), "2026-11-25T15:53:00.123456789Z");
    }

    #[test]
    fn fractions_are_truncated_and_padded() {
        // Truncated, never rounded up into the next second.
        assert_eq!(rfc3339(1_999_999_999, 3), "1970-01-01T00:00:01.999Z");
        assert_eq!(rfc3339(1_999_999_999, 0), "1970-01-01T00:00:01Z");
        // Padded to the digits asked for, even when they are zeros.
        assert_eq!(rfc3339(5_000_000_000, 9), "1970-01-01T00:00:05.000000000Z");
        assert_eq!(rfc3339(5_000_000_000, 12), "1970-01-01T00:00:05.000000000Z");
        assert_eq!(rfc3339(86_400_000_000_000 + 1, 1), "1970-01-02T00:00:00.0Z");
    }

    #[test]
    fn the_whole_u64_range_formats() {
        // The newest instant a u64 of nanoseconds holds, and a leap day.
        assert_eq!(rfc3339(u64::MAX, 9), "2554-07-21T23:34:33.709551615Z");
        assert_eq!(rfc3339(u64::MAX, 0), "2554-07-21T23:34:33Z");
        assert_eq!(rfc3339(4_107_456_000_000_000_000, 0), "2100-02-28T00:00:00Z");
        assert_eq!(rfc3339(4_107_542_400_000_000_000, 0), "2100-03-01T00:00:00Z");
    }
}
