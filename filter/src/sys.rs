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
