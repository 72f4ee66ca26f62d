//! Sizes and durations on the command line.
//!
//! Sizes: `65536`, `64K`, `64KiB`, `1M`, `1MiB`; parsed by `parse-size` with
//! every unit a power of 1024. Durations: `30s`, `5m`, `1h`, `2d`, plain
//! seconds, or jiff's friendly format (`1h30m`, `90 minutes`); a day is 24
//! hours. See docs/DESIGN-NOTES.md (issue 13, part 5).

/// Parses a size; K/M/G (and T, P, E; with optional `iB`/`B`, any case) are
/// powers of 1024, so `64K`, `64KB` and `64KiB` are all 65536.
pub fn parse_size(s: &str) -> Result<u64, String> {
    use parse_size::Error;
    match parse_size::Config::new().with_binary().parse_size(s.trim()) {
        Ok(n) => Ok(n),
        Err(Error::PosOverflow) => Err(format!("{s:?} is too large")),
        Err(_) => Err(format!(
            "{s:?} is not a size: a number and an optional unit K, M or G (powers of 1024), e.g. 65536, 64KiB or 1MiB"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert!(parse_size("64 furlongs").is_err());
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    /// Every spelling the hand-written parser accepted keeps its meaning:
    /// K, M and G with or without `B`/`iB`, any case, are powers of 1024
    /// (`parse-size` on its own takes `KB` as 1000).
    #[test]
    fn every_unit_spelling_is_binary() {
        for (units, mult) in
            [(["", "b", "B"].as_slice(), 1u64), (&["k", "K", "kb", "KB", "kib", "KiB", "KIB"], 1 << 10)]
                .into_iter()
                .chain([
                    (["m", "M", "mb", "MB", "mib", "MiB"].as_slice(), 1 << 20),
                    (&["g", "G", "gb", "GB", "gib", "GiB"], 1 << 30),
                ])
        {
            for u in units {
                assert_eq!(parse_size(&format!("3{u}")), Ok(3 * mult), "3{u}");
            }
        }
        assert_eq!(parse_size(" 64KiB "), Ok(65536));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("16383G"), Ok(16383 << 30));
        assert_eq!(parse_size("17179869183G"), Ok(17_179_869_183 << 30));
        assert_eq!(parse_size("17179869184G"), Err("\"17179869184G\" is too large".to_string()));
    }

    #[test]
    fn errors_name_the_input_and_the_units() {
        let e = parse_size("lots").unwrap_err();
        assert!(e.starts_with("\"lots\" is not a size") && e.contains("64KiB"), "{e}");
        let e = parse_size("64 furlongs").unwrap_err();
        assert!(e.contains("\"64 furlongs\"") && e.contains("K, M or G"), "{e}");
        assert!(parse_size("").is_err());
        assert!(parse_size("-1K").is_err());
    }
}

/// Parses a duration in whole seconds, at least one: `30s`, `5m`, `15m`,
/// `1h`, `2d`, plain seconds (`90`), or any duration in jiff's friendly
/// format (`1h30m`, `90 minutes`); days are 24 hours.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    const TRY: &str = "try 30s, 5m, 15m, 1h or 2d";
    let t = s.trim();
    let secs = if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        // Plain seconds (jiff's formats want a unit).
        t.parse::<u64>().map_err(|_| format!("{s:?} is too long"))?
    } else {
        let span: jiff::Span = t.parse().map_err(|e| format!("{s:?} is not a duration ({TRY}): {e}"))?;
        if span.get_years() != 0 || span.get_months() != 0 {
            return Err(format!("{s:?}: months and years have no fixed length; give days (e.g. 30d)"));
        }
        let d = span
            .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|e| format!("{s:?} is not a duration ({TRY}): {e}"))?;
        if d.is_negative() {
            return Err(format!("{s:?}: a duration must be at least one second"));
        }
        if d.subsec_nanos() != 0 {
            return Err(format!("{s:?}: a duration is whole seconds ({TRY})"));
        }
        u64::try_from(d.as_secs()).map_err(|_| format!("{s:?}: a duration must be at least one second"))?
    };
    match secs {
        0 => Err(format!("{s:?}: a duration must be at least one second")),
        v => Ok(v),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::parse_duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("5m"), Ok(300));
        assert_eq!(parse_duration("15m"), Ok(900));
        assert_eq!(parse_duration("90"), Ok(90));
        assert_eq!(parse_duration("2d"), Ok(172_800));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 furlongs").is_err());
    }

    /// What the hand-written parser accepted keeps its meaning; jiff's
    /// friendly format adds spellings on top.
    #[test]
    fn old_spellings_keep_their_meaning() {
        for (unit, mult) in [("", 1u64), ("s", 1), ("m", 60), ("h", 3600), ("d", 86_400)] {
            for n in [1u64, 7, 59, 60, 3600, 100_000] {
                assert_eq!(parse_duration(&format!("{n}{unit}")), Ok(n * mult), "{n}{unit}");
            }
        }
        assert_eq!(parse_duration(" 10s "), Ok(10));
        assert_eq!(parse_duration("18446744073709551615"), Ok(u64::MAX));
        assert_eq!(parse_duration("18446744073709551616"), Err("\"18446744073709551616\" is too long".to_string()));
        for zero in ["0", "0s", "0m", "0d"] {
            assert_eq!(parse_duration(zero), Err(format!("{zero:?}: a duration must be at least one second")));
        }
    }

    #[test]
    fn friendly_durations() {
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("5 minutes"), Ok(300));
        assert_eq!(parse_duration("1w"), Ok(7 * 86_400));
        assert_eq!(parse_duration("1.5h"), Ok(5400));
        assert_eq!(parse_duration("2000ms"), Ok(2));
    }

    #[test]
    fn bad_durations_say_why() {
        let e = parse_duration("5x").unwrap_err();
        assert!(e.starts_with("\"5x\" is not a duration (try 30s"), "{e}");
        assert!(parse_duration("").unwrap_err().contains("is not a duration"));
        assert!(parse_duration("1.5s").unwrap_err().contains("whole seconds"));
        assert!(parse_duration("500ms").unwrap_err().contains("whole seconds"));
        assert!(parse_duration("-5m").unwrap_err().contains("at least one second"));
        assert!(parse_duration("5m ago").unwrap_err().contains("at least one second"));
        // Months and years have no fixed length.
        assert!(parse_duration("1mo").unwrap_err().contains("no fixed length"));
        assert!(parse_duration("1y 2d").unwrap_err().contains("no fixed length"));
    }
}
