//! The count of log lines this process could not write (issue 13, part 4).
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
