//! What the filter asks of the operating system beyond `std`, all of it
//! through the `system` crate (where the `unsafe` calls are fenced and
//! argued): waking a listener, binding a private unix socket, asking a
//! socket's peer who it is, QEMU's image locks, the open-files limit.

use std::io;
use std::os::unix::io::AsRawFd;

pub(crate) use system::limits::open_files_left;
pub use system::limits::{raise_open_files_limit, OpenFilesLimit, OPEN_FILES_CEILING};
pub(crate) use system::lock::{ofd_byte_locked, ofd_lock_shared};
pub(crate) use system::socket::{bind_private_unix, shutdown_listener};

/// The uid of the process at the other end of a unix socket (SO_PEERCRED:
/// the credentials it had when it connected).
pub(crate) fn peer_uid(sock: &impl AsRawFd) -> io::Result<u32> {
    Ok(system::socket::peer_credentials(sock)?.uid)
}

/// Whether a peer with `uid` may use this process's sockets: root, or the
/// user this process runs as (the administrator who started it).
pub(crate) fn peer_allowed(uid: u32) -> bool {
    uid == 0 || uid == system::host::effective_uid()
}
