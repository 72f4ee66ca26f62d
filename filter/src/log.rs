//! The count of log lines this process could not write, and the transitional
//! `log_line!` shim (issue 13, part 4).
//!
//! The library crates do not print: they emit `tracing` events, and the
//! `lifeboat` binary installs the one subscriber that writes them (a human
//! line on a terminal or pipe, the journal's fields under systemd). That
//! subscriber must never take the data path down (DESIGN.md, invariant 9):
//! a write that fails (stderr at `/dev/full`, a pipe whose reader has gone)
//! is dropped and counted here with [`count_dropped`], never a panic. The
//! counter lives in this crate, the lowest that logs, so that whatever
//! writes the lines and whatever reports them (`log_lines_dropped` in a
//! disk's status) agree on one number without depending on the binary.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines (or progress texts) this process could not write.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Counts one line the log writer could not write.
pub fn count_dropped() {
    let _ = DROPPED.fetch_add(1, Ordering::Relaxed);
}

/// How many lines this process could not write to its log so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Transitional: the text of `args` as an info-level `tracing` event. Use
/// [`log_line!`](crate::log_line); new code calls `tracing::info!` (or
/// `warn!`, `error!`) directly.
///
/// A text that starts with an RFC 3339 timestamp (the agent's own `log!`
/// macro still stamps its lines) loses it: the subscriber stamps every line,
/// and the journal has its own.
pub fn line(args: fmt::Arguments<'_>) {
    let text = fmt::format(args);
    tracing::info!("{}", strip_stamp(&text));
}

/// `text` without a leading `YYYY-MM-DDTHH:MM:SS[.fff]Z ` timestamp.
fn strip_stamp(text: &str) -> &str {
    let b = text.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let shape = digits(0..4)
        && b.get(4) == Some(&b'-')
        && digits(5..7)
        && b.get(7) == Some(&b'-')
        && digits(8..10)
        && b.get(10) == Some(&b'T')
        && digits(11..13)
        && digits(14..16)
        && digits(17..19);
    if !shape {
        return text;
    }
    match text[19..].split_once("Z ") {
        Some((fraction, rest))
            if fraction.is_empty()
                || fraction
                    .strip_prefix('.')
                    .is_some_and(|f| !f.is_empty() && f.bytes().all(|d| d.is_ascii_digit())) =>
        {
            rest
        }
        _ => text,
    }
}

/// Transitional shim (issue 13, part 4): formats its arguments like
/// `format!` and emits them as one info-level `tracing` event through
/// [`log::line`](crate::log::line). Kept for the `lifeboat` files that have
/// not moved to `tracing::info!`/`warn!`/`error!` yet; remove it once none
/// calls it.
#[macro_export]
macro_rules! log_line {
    () => {
        $crate::log::line(::std::format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::log::line(::std::format_args!($($arg)*))
    };
}

#[cfg(test)]
mod tests {
    use super::strip_stamp;

    #[test]
    fn a_leading_timestamp_is_stripped_and_nothing_else() {
        assert_eq!(strip_stamp("2026-11-25T15:53:00.123Z lifeboat agent: up"), "lifeboat agent: up");
        assert_eq!(strip_stamp("2026-11-25T15:53:00Z lifeboat agent: up"), "lifeboat agent: up");
        assert_eq!(strip_stamp("lifeboat: 2026-11-25T15:53:00Z x"), "lifeboat: 2026-11-25T15:53:00Z x");
        assert_eq!(strip_stamp("2026-11-25T15:53:00.123Zlifeboat"), "2026-11-25T15:53:00.123Zlifeboat");
        assert_eq!(strip_stamp("2026-11-25T15:53:00.1 x Z y"), "2026-11-25T15:53:00.1 x Z y");
        assert_eq!(strip_stamp("2026-11-25"), "2026-11-25");
        assert_eq!(strip_stamp(""), "");
    }
}
