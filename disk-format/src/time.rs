//! Timestamps as people and records read them: RFC 3339 in UTC.

/// Formats nanoseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS` plus a
/// fraction of `digits` digits (0 to 9) and `Z`.
pub fn rfc3339(ns: u64, digits: u32) -> String {
    let digits = digits.min(9);
    let secs = ns / 1_000_000_000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let date = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}", rem / 3600, rem / 60 % 60, rem % 60);
    if digits == 0 {
        return format!("{date}Z");
    }
    let frac = (ns % 1_000_000_000) / 10u64.pow(9 - digits);
    format!("{date}.{frac:0width$}Z", width = digits as usize)
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
}
