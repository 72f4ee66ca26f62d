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

/// An open-file-description lock request on one byte of `file`.
fn ofd_flock(kind: libc::c_short, byte: u64) -> io::Result<libc::flock> {
    // SAFETY: `flock` is a plain C struct of integers, for which all zeroes
    // is a valid value (and l_pid must be 0 for OFD locks).
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = libc::off_t::try_from(byte).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    fl.l_len = 1;
    Ok(fl)
}

/// Takes a shared (read) open-file-description lock on byte `byte` of
/// `file` (`F_OFD_SETLK`, `F_RDLCK`), as QEMU does. It lasts until every
/// descriptor of this open file description is closed. Fails with
/// `EAGAIN`/`EACCES` if another open file description holds a write lock there.
pub(crate) fn ofd_lock_shared(file: &impl AsRawFd, byte: u64) -> io::Result<()> {
    let fl = ofd_flock(libc::F_RDLCK as libc::c_short, byte)?;
    // SAFETY: fcntl(F_OFD_SETLK) reads the `flock` we pass by pointer, which
    // lives across the call; the descriptor is kept open by the caller's borrow.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &fl) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Whether another open file description holds any lock on byte `byte` of
/// `file`: `F_OFD_GETLK` with a write-lock probe, QEMU's `qemu_lock_fd_test`.
/// Locks of this very open file description never count.
pub(crate) fn ofd_byte_locked(file: &impl AsRawFd, byte: u64) -> io::Result<bool> {
    let mut fl = ofd_flock(libc::F_WRLCK as libc::c_short, byte)?;
    // SAFETY: fcntl(F_OFD_GETLK) reads and overwrites the `flock` we pass by
    // pointer, which lives across the call; the descriptor is kept open by
    // the caller's borrow.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_GETLK, &mut fl) };
    if rc == 0 {
        Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
    } else {
        Err(io::Error::last_os_error())
    }
}
