//! Log lines on stderr that can never take the data path down (DESIGN.md,
//! invariant 9).
//!
//! `eprintln!` panics when the write fails: with stderr at `/dev/full`
//! (ENOSPC) or a pipe whose reader has gone (EPIPE: Rust ignores SIGPIPE),
//! the thread that logged dies, be it an NBD connection, the accept loop, a
//! cycle or the signal thread. Every line the filter, the shipper and the
//! `lifeboat` daemons log goes through [`line`] instead: formatted into one
//! buffer and written with one `write(2)` (so lines of different threads do
//! not interleave), and a write that fails is dropped and counted in
//! [`dropped`], which the agent reports in the disk's status.
//!
//! A stderr that blocks (a reader that stops reading without closing) still
//! blocks the thread that logs; none of the NBD request paths logs per
//! request. Issue 13 moves the library crates to `tracing`; until then this
//! is the one copy.

use std::fmt;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Lines (or progress texts) this process could not write to stderr.
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Writes `args` and a newline to stderr in one write; a failure is counted
/// in [`dropped`], never a panic. Use [`log_line!`](crate::log_line).
pub fn line(args: fmt::Arguments<'_>) {
    let mut text = fmt::format(args);
    text.push('\n');
    text_raw(&text);
}

/// Writes `text` as it is (no newline added: a progress line redrawn in
/// place), like [`line`].
pub fn text_raw(text: &str) {
    // Stderr is unbuffered: one `write_all` is one write(2) unless the
    // kernel takes part of it, and its lock keeps this process's lines whole.
    if std::io::stderr().lock().write_all(text.as_bytes()).is_err() {
        let _ = DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}

/// How many lines this process could not write to stderr so far.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// `eprintln!` that never panics: formats its arguments like `format!` and
/// writes them with [`log::line`](crate::log::line).
#[macro_export]
macro_rules! log_line {
    () => {
        $crate::log::line(::std::format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::log::line(::std::format_args!($($arg)*))
    };
}
