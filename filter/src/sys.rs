//! Small system calls std does not offer, each behind a safe function:
//! waking a listener, binding a private unix socket, asking a socket's peer
//! who it is.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;

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

/// Binds a unix stream socket at `path` that only its owner (and root) can
/// connect to, whatever the umask, and listens on it.
///
/// `UnixListener::bind` binds and listens in one call, so the socket file
/// would accept connections for a moment with the mode the umask gave it.
/// Here the order is bind, `chmod 0600`, listen: until `listen(2)` a
/// `connect(2)` to the path is refused (ECONNREFUSED) whatever the file's
/// mode, so no client can connect before the mode is private. The
/// permission to connect is checked at `connect(2)`, against the mode then.
pub(crate) fn bind_private_unix(path: &Path) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} is longer than {} bytes; choose a shorter home", path.display(), 107),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: socket(2) takes no memory of ours; the result is checked.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un that lives across the call, and
    // `len` (family + path + NUL) is within its size (checked above).
    let rc =
        unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast::<libc::sockaddr>(), len as libc::socklen_t) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    // SAFETY: listen(2) on the descriptor `sock` owns; no memory is passed.
    if unsafe { libc::listen(sock.as_raw_fd(), 128) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(sock))
}

/// The uid of the process at the other end of a unix socket (SO_PEERCRED:
/// the credentials it had when it connected).
pub(crate) fn peer_uid(sock: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`, which is a
    // ucred on our stack that outlives the call; `len` is its size.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Whether a peer with `uid` may use this process's sockets: root, or the
/// user this process runs as (the administrator who started it).
pub(crate) fn peer_allowed(uid: u32) -> bool {
    // SAFETY: geteuid(2) cannot fail and touches no memory.
    uid == 0 || uid == unsafe { libc::geteuid() }
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
