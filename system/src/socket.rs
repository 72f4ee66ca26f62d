//! Unix and TCP sockets beyond `std`: waking a thread blocked in `accept`
//! (`shutdown(2)` on the listener), binding a unix socket only its owner can
//! connect to, and asking a unix socket's peer who it is (`SO_PEERCRED`).
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::Path;

/// Shuts a listening socket down, which makes a thread blocked in `accept`
/// on it return (EINVAL on Linux, for unix and TCP sockets alike). Unlike
/// connecting to the listener's address, this cannot reach another process
/// that has since bound the same path.
pub fn shutdown_listener(listener: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: shutdown(2) takes a descriptor number and a flag, no memory of
    // ours; the caller's borrow of `listener` keeps that descriptor open (and
    // so not reused for another file) for the length of the call.
    let rc = unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The longest unix socket path `bind_private_unix` takes, in bytes
/// (`sun_path` holds 108 with the terminating NUL).
pub const MAX_UNIX_PATH: usize = 107;

/// Binds a unix stream socket at `path` that only its owner (and root) can
/// connect to, whatever the umask, and listens on it.
///
/// `UnixListener::bind` binds and listens in one call, so the socket file
/// would accept connections for a moment with the mode the umask gave it.
/// Here the order is bind, `chmod 0600`, listen: until `listen(2)` a
/// `connect(2)` to the path is refused (ECONNREFUSED) whatever the file's
/// mode, so no client can connect before the mode is private. The
/// permission to connect is checked at `connect(2)`, against the mode then.
pub fn bind_private_unix(path: &Path) -> io::Result<UnixListener> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un { sun_family: 0, sun_path: [0; 108] };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path {} is longer than {MAX_UNIX_PATH} bytes; choose a shorter home", path.display()),
        ));
    }
    addr.sun_family = libc::sa_family_t::try_from(libc::AF_UNIX).expect("AF_UNIX fits sa_family_t");
    for (dst, src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = libc::c_char::from_ne_bytes([*src]);
    }
    // SAFETY: socket(2) takes no memory of ours; the result is checked below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open, and nothing else
    // owns it: the OwnedFd is its only owner and closes it exactly once.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1)
        .expect("a sockaddr_un's length fits socklen_t");
    // SAFETY: `addr` is an initialised sockaddr_un that lives across the
    // call, and `len` (family + path + NUL) is within its size (the path
    // length was checked above), so the kernel reads only memory of `addr`.
    let rc = unsafe { libc::bind(sock.as_raw_fd(), (&raw const addr).cast::<libc::sockaddr>(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    // SAFETY: listen(2) on the descriptor `sock` owns (open for the whole
    // call); no memory is passed.
    if unsafe { libc::listen(sock.as_raw_fd(), 128) } != 0 {
        let e = io::Error::last_os_error();
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(UnixListener::from(sock))
}

/// Who is at the other end of a unix socket, as the kernel recorded it when
/// the connection was made (for a client's socket: the process that
/// listened).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCredentials {
    /// Its pid; `None` when the kernel cannot name it here (the peer is in
    /// another pid namespace, where it reports 0).
    pub pid: Option<u32>,
    /// Its effective uid.
    pub uid: u32,
    /// Its effective gid.
    pub gid: u32,
}

/// The credentials of the peer of a connected unix socket (`SO_PEERCRED`).
pub fn peer_credentials(sock: &impl AsRawFd) -> io::Result<PeerCredentials> {
    let mut cred = libc::ucred { pid: 0, uid: u32::MAX, gid: u32::MAX };
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::ucred>()).expect("ucred fits a socklen_t");
    // SAFETY: `cred` is a live, writable `ucred` on our stack and `len` holds
    // its exact size, so the kernel writes at most that many bytes into it;
    // the caller's borrow keeps the descriptor open across the call.
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
    Ok(PeerCredentials { pid: u32::try_from(cred.pid).ok().filter(|&p| p > 0), uid: cred.uid, gid: cred.gid })
}

/// Makes closing `stream` abort the connection with a TCP RST instead of
/// an orderly FIN (`SO_LINGER` with a zero timeout): what a peer sees when
/// a middlebox or a crashed host drops a connection mid-transfer. The
/// reset is sent when the last descriptor of the socket is closed.
pub fn abort_on_close(stream: &std::net::TcpStream) -> io::Result<()> {
    let linger = libc::linger { l_onoff: 1, l_linger: 0 };
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).expect("a linger fits a socklen_t");
    // SAFETY: setsockopt(2) reads `len` bytes from the pointer, which points
    // at `linger`, a live local of exactly that size; the borrow of
    // `stream` keeps the descriptor open for the call.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            std::ptr::from_ref(&linger).cast::<libc::c_void>(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_private_socket_names_its_peer_and_its_accept_wakes_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let old = crate::host::set_umask(0);
        let bound = bind_private_unix(&path);
        crate::host::set_umask(old);
        let listener = bound.unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a socket bound under umask 0 must still be private");
        let client = UnixStream::connect(&path).unwrap();
        let (server, _) = listener.accept().unwrap();
        let me = PeerCredentials { pid: Some(std::process::id()), uid: crate::host::effective_uid(), gid: u32::MAX };
        for sock in [&client, &server] {
            let cred = peer_credentials(sock).unwrap();
            assert_eq!((cred.pid, cred.uid), (me.pid, me.uid));
        }
        std::thread::scope(|s| {
            let waiting = s.spawn(|| listener.accept().map(drop));
            shutdown_listener(&listener).unwrap();
            assert!(waiting.join().unwrap().is_err(), "accept returned a connection after shutdown");
        });
        let long = dir.path().join("x".repeat(MAX_UNIX_PATH));
        assert_eq!(bind_private_unix(&long).unwrap_err().kind(), io::ErrorKind::InvalidInput);
    }
}
