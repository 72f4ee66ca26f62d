//! The commands' output on stdout, which a failed write never turns into a
//! panic (`println!` panics: `lifeboat status >/dev/full` exited 101 with a
//! backtrace, and `lifeboat points | head -1` could too).
//!
//! [`outln!`] and [`out!`] write and flush at once; after the first failure
//! the rest of the output is dropped and the command's work goes on (a
//! failover or a plan must not stop half-way because its reader went away).
//! `main` then decides the exit code with [`failure`]: a reader that closed
//! the pipe is quiet, as with `ls | head`; any other failure (a full disk)
//! is an error. The daemons log to stderr through `filter::log` instead.

use std::io::{self, Write};
use std::sync::OnceLock;

static FAILED: OnceLock<io::Error> = OnceLock::new();

/// Writes `text` to stdout and flushes, unless an earlier write failed.
pub fn write(text: &str) {
    if FAILED.get().is_some() {
        return;
    }
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        let _ = FAILED.set(e);
    }
}

/// The first failed write to stdout, if any.
pub fn failure() -> Option<&'static io::Error> {
    FAILED.get()
}

/// `println!` that never panics (see the module docs).
macro_rules! outln {
    () => {
        $crate::stdout::write("\n")
    };
    ($($arg:tt)*) => {
        $crate::stdout::write(&::std::format!("{}\n", ::std::format_args!($($arg)*)))
    };
}

/// `print!` that never panics (see the module docs).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::stdout::write(&::std::format!($($arg)*))
    };
}
