//! Small system calls std does not offer, each behind a safe function.

use std::io;
use std::os::unix::io::AsRawFd;

/// Shuts a listening socket down, which makes a thread blocked in `accept`
/// on it return (EINVAL on Linux, for unix and TCP sockets alike). Unlike
/// connecting to the listener's address, this cannot reach another process
/// that has since bound the same path.
pub(crate) fn shutdown_listener(listener: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) on a descriptor the caller's borrow keeps open; it
    // touches no memory of ours.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn open_files_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit(2) writes one `rlimit` into the struct we pass, which
    // lives on our stack for the whole call.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The process's limit on open files, before and after
/// [`raise_open_files_limit`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpenFilesLimit {
    /// The soft limit found at start.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// The hard limit (the ceiling an unprivileged process may raise to).
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit, but not past
/// [`OPEN_FILES_CEILING`]: children the process starts (hooks, qemu-img)
/// inherit the soft limit, and some of them still close every descriptor up
/// to it one by one. Never lowers it.
pub fn raise_open_files_limit() -> io::Result<OpenFilesLimit> {
    let (soft, hard) = open_files_limit()?;
    let want = hard.min(OPEN_FILES_CEILING).max(soft);
    if want > soft {
        let lim = libc::rlimit { rlim_cur: want, rlim_max: hard };
        // SAFETY: setrlimit(2) reads one `rlimit` from the struct we pass,
        // which lives on our stack for the whole call.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(OpenFilesLimit { before: soft, now: want, hard })
}

/// The highest soft limit on open files [`raise_open_files_limit`] sets.
pub const OPEN_FILES_CEILING: u64 = 65_536;

/// How many more files this process may open before it reaches its soft
/// `RLIMIT_NOFILE`, counted from `/proc/self/fd` (without the descriptor the
/// count itself uses). `None` when either cannot be read.
pub(crate) fn open_files_left() -> Option<u64> {
    let (soft, _) = open_files_limit().ok()?;
    let open = std::fs::read_dir("/proc/self/fd").ok()?.count().saturating_sub(1);
    Some(soft.saturating_sub(u64::try_from(open).unwrap_or(u64::MAX)))
}
