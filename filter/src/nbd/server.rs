//! Listeners, the accept loop, one thread per connection, and shutdown.
//!
//! Guards ([`Options`]): a TCP address that is not loopback is refused at
//! bind unless [`Options::insecure_tcp`] or [`Options::tls`] (then every TCP
//! client must start TLS; see `handshake`); a connection past
//! [`Options::max_connections`], or one that would leave fewer than
//! [`Options::fd_reserve`] file descriptors for the rest of the process (the
//! replication cycle), is closed as soon as it is accepted, never queued; a
//! client that has not finished the handshake within
//! [`Options::handshake_timeout`] is dropped. So the threads and memory of a
//! server are bounded whatever its clients do: one thread per connection under
//! the cap, plus the workers a connection starts only when its requests need
//! them.
//!
//! Shutdown: [`ShutdownHandle::shutdown`] marks the server as stopping and
//! shuts down the read side of every open connection, so each reader sees EOF
//! (requests it had read but not yet started get `NBD_ESHUTDOWN`), its
//! in-flight requests finish and their replies go out, and the connection
//! closes. [`Server::run`] then wakes its accept threads by shutting their
//! listening sockets down, and returns once every connection thread has finished. A
//! client that stops reading replies cannot hold that up for more than the
//! shutdown grace ([`Server::with_shutdown_grace`]): its socket is then shut down entirely so the blocked reply
//! fails, while its export calls still complete.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::io::{self, BufReader, Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::handshake::{self, ExportSpec, Outcome, Tls};
use super::{proto, transmission, Export};

/// Size of each connection's read buffer: many small requests per `read`.
const READ_BUFFER: usize = 128 * 1024;
/// How long [`Server::run`] lets connections drain after shutdown before it
/// shuts their sockets down entirely, unless [`Server::with_shutdown_grace`].
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// At most one line per this long about refused connections (with a count).
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

/// How a [`Server`] guards the host against its clients. The defaults suit
/// a VM disk: QEMU opens one connection per disk, `nbdcopy` up to 4-8.
#[derive(Clone, Debug)]
pub struct Options {
    /// Connections open at once (in the handshake or after it), over every
    /// listener of the server; one more is closed as soon as it is accepted.
    /// Default 16.
    pub max_connections: usize,
    /// A client must finish the NBD handshake within this long or is
    /// dropped. Only the handshake is timed: a quiet VM in the transmission
    /// phase is never cut off. Default 10 s.
    pub handshake_timeout: Duration,
    /// A new connection is closed at once when fewer than this many file
    /// descriptors would be left under the process's `RLIMIT_NOFILE`, so a
    /// flood of clients cannot starve the rest of the process (the
    /// replication cycle opens the state file, the image, vault files,
    /// sockets). Default 64.
    pub fd_reserve: u64,
    /// Bind TCP addresses that are not loopback without TLS. NBD then has neither
    /// authentication nor encryption: anyone who reaches such an address can
    /// read and overwrite the disk. Default false: [`Server::bind_with`]
    /// refuses them.
    pub insecure_tcp: bool,
    /// TLS for TCP listeners. With it, every TCP client must start TLS
    /// (`NBD_OPT_STARTTLS`) before anything else and authenticate as the
    /// upgrade decides (no plaintext fallback), and a TCP address that is not
    /// loopback may be bound without [`Options::insecure_tcp`]. Unix sockets
    /// stay plaintext (only root and the server's user reach them). Default
    /// none: STARTTLS is refused with `NBD_REP_ERR_POLICY`.
    pub tls: Option<Arc<dyn TlsUpgrade>>,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            max_connections: 16,
            handshake_timeout: Duration::from_secs(10),
            fd_reserve: 64,
            insecure_tcp: false,
            tls: None,
        }
    }
}

/// The TLS side of `NBD_OPT_STARTTLS`, given to the server in
/// [`Options::tls`]. The filter knows no encryption (DESIGN.md): it runs the
/// NBD option state machine and hands the socket over here once it has
/// acknowledged STARTTLS.
pub trait TlsUpgrade: Send + Sync + fmt::Debug {
    /// Run the server side of the TLS handshake on `sock` (authenticating the
    /// client as the implementation requires) and have it done by `deadline`
    /// (the rest of the NBD handshake's time); then return a local stream
    /// that carries the session's plaintext both ways, for as long as the
    /// TLS connection lasts: EOF or an error on either side ends both. The
    /// server keeps its own handle on `sock` (a duplicate descriptor) and
    /// shuts it down to end the connection. An error (a client without a
    /// valid certificate, a failed or stalled handshake) ends the connection;
    /// its message says what went wrong, and `peer` is for the
    /// implementation's own messages.
    fn upgrade(&self, sock: TcpStream, peer: &str, deadline: Instant) -> io::Result<UnixStream>;
}

/// Whether `ip` is a loopback address (an IPv4-mapped one counts as IPv4).
fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where the server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A unix socket at this path (a stale socket file there is replaced).
    Unix(PathBuf),
    /// A TCP `host:port` (`[v6]:port` for IPv6 literals); port 0 picks one.
    Tcp(String),
}

/// A listen address that is neither `unix:PATH` nor `tcp:HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid listen address {given:?}: {reason}; expected unix:PATH or tcp:HOST:PORT \
         (for example unix:/run/lifeboat/disk0.sock or tcp:127.0.0.1:10809)"
)]
pub struct ParseListenError {
    /// What was given.
    pub given: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl FromStr for Listen {
    type Err = ParseListenError;

    fn from_str(s: &str) -> Result<Listen, ParseListenError> {
        let err = |reason| ParseListenError { given: s.to_owned(), reason };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("the socket path is empty"));
            }
            return Ok(Listen::Unix(PathBuf::from(path)));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            let (host, port) = addr.rsplit_once(':').ok_or_else(|| err("no port"))?;
            if host.is_empty() {
                return Err(err("the host is empty"));
            }
            port.parse::<u16>().map_err(|_| err("the port is not a number from 0 to 65535"))?;
            return Ok(Listen::Tcp(addr.to_owned()));
        }
        Err(err("unknown scheme"))
    }
}

impl Listen {
    /// The addresses a TCP listen address resolves to that are not loopback
    /// (`0.0.0.0`, `::`, a LAN address, a host name that resolves to one);
    /// empty for loopback-only addresses and unix sockets. Errors when the
    /// host name does not resolve.
    pub fn non_loopback_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Listen::Unix(_) => Ok(Vec::new()),
            Listen::Tcp(addr) => {
                let resolved = addr.as_str().to_socket_addrs().map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot resolve the host of listen address tcp:{addr}: {e}"))
                })?;
                Ok(resolved.filter(|a| !is_loopback(a.ip())).collect())
            }
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Unix(path) => write!(f, "unix:{}", path.display()),
            Listen::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// An address the server is bound to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LocalAddr {
    /// A unix socket path.
    Unix(PathBuf),
    /// A TCP address (with the real port when `:0` was asked for).
    Tcp(SocketAddr),
}

impl LocalAddr {
    /// True for a TCP address that is not loopback: reachable from other
    /// hosts, with no authentication.
    pub fn is_exposed(&self) -> bool {
        matches!(self, LocalAddr::Tcp(addr) if !is_loopback(addr.ip()))
    }

    /// The NBD URI of the default export at this address, as libnbd and
    /// qemu accept it (`nbd+unix:///?socket=PATH`, `nbd://HOST:PORT/`).
    pub fn uri(&self) -> String {
        match self {
            LocalAddr::Unix(path) => format!("nbd+unix:///?socket={}", path.display()),
            LocalAddr::Tcp(addr) => format!("nbd://{addr}/"),
        }
    }
}

impl fmt::Display for LocalAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LocalAddr::Unix(path) => write!(f, "unix:{}", path.display()),
            LocalAddr::Tcp(addr) => write!(f, "tcp:{addr}"),
        }
    }
}

/// A connected client socket.
#[derive(Debug)]
pub(crate) enum Socket {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Socket {
    pub(crate) fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.shutdown(how),
            Socket::Tcp(s) => s.shutdown(how),
        }
    }

    /// `SO_RCVTIMEO`; `None` blocks for ever.
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_read_timeout(t),
            Socket::Tcp(s) => s.set_read_timeout(t),
        }
    }

    /// `SO_SNDTIMEO`; `None` blocks for ever.
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Socket::Unix(s) => s.set_write_timeout(t),
            Socket::Tcp(s) => s.set_write_timeout(t),
        }
    }
}

impl Read for &Socket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Socket::Unix(s) => (&mut &*s).read(buf),
            Socket::Tcp(s) => (&mut &*s).read(buf),
        }
    }
}

impl Write for &Socket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Socket::Unix(s) => (&mut &*s).write(buf),
            Socket::Tcp(s) => (&mut &*s).write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Socket::Unix(s) => (&mut &*s).write_vectored(bufs),
            Socket::Tcp(s) => (&mut &*s).write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A unix listener that removes its socket file when dropped, if the file is
/// still the one it created.
struct UnixSocketFile {
    listener: UnixListener,
    path: PathBuf,
    ino: Option<(u64, u64)>,
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let same = fs::symlink_metadata(&self.path).ok().map(|m| (m.dev(), m.ino())) == self.ino;
        if same && self.ino.is_some() {
            let _ = fs::remove_file(&self.path);
        }
    }
}

enum Listener {
    Unix(UnixSocketFile),
    Tcp(TcpListener),
}

impl std::os::unix::io::AsRawFd for Listener {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        match self {
            Listener::Unix(u) => u.listener.as_raw_fd(),
            Listener::Tcp(t) => t.as_raw_fd(),
        }
    }
}

impl Listener {
    fn local_addr(&self) -> LocalAddr {
        match self {
            Listener::Unix(u) => LocalAddr::Unix(u.path.clone()),
            Listener::Tcp(t) => match t.local_addr() {
                Ok(addr) => LocalAddr::Tcp(addr),
                // cannot happen for a bound listener; keep a placeholder
                Err(_) => LocalAddr::Tcp(SocketAddr::from(([0, 0, 0, 0], 0))),
            },
        }
    }

    fn accept(&self) -> io::Result<(Socket, String)> {
        match self {
            Listener::Unix(u) => loop {
                let (s, _) = u.listener.accept()?;
                // Only root and the server's own user may reach the disk, checked
                // before the handshake: the socket file is 0600 as well, but a
                // mode can be loosened by hand; the peer's credentials cannot.
                match crate::sys::peer_uid(&s) {
                    Ok(uid) if crate::sys::peer_allowed(uid) => {
                        return Ok((Socket::Unix(s), format!("unix:{}", u.path.display())));
                    }
                    Ok(uid) => tracing::warn!(
                        "nbd: refused a connection from uid {uid} on {}: only root and the server's own user may connect",
                        u.path.display()
                    ),
                    Err(e) => tracing::warn!("nbd: refused a connection on {}: its peer credentials: {e}", u.path.display()),
                }
                let _ = s.shutdown(Shutdown::Both);
            },
            Listener::Tcp(t) => loop {
                let (s, peer) = t.accept()?;
                // A loopback peer is a process of this host: like on the unix
                // socket, only root and the server's own user may reach the
                // disk (the kernel's socket table says whose socket it is). A
                // remote peer (only with --insecure-tcp) cannot be asked.
                if peer.ip().is_loopback() || is_mapped_loopback(&peer) {
                    let uid = s.local_addr().ok().and_then(|local| loopback_peer_uid(peer, local));
                    match uid {
                        Some(uid) if crate::sys::peer_allowed(uid) => {}
                        Some(uid) => {
                            tracing::warn!(
                                "nbd: refused a connection from uid {uid} on tcp:{peer}: only root and the server's \
                                 own user may connect"
                            );
                            let _ = s.shutdown(Shutdown::Both);
                            continue;
                        }
                        None => {
                            tracing::warn!("nbd: refused a connection from tcp:{peer}: its owner cannot be found");
                            let _ = s.shutdown(Shutdown::Both);
                            continue;
                        }
                    }
                }
                // Replies are written whole; never hold one back for Nagle.
                let _ = s.set_nodelay(true);
                return Ok((Socket::Tcp(s), format!("tcp:{peer}")));
            },
        }
    }
}

/// What the server, its accept threads, its connections and every
/// [`ShutdownHandle`] share. It holds no reference to the export: once
/// [`Server::run`] returns, nothing of the server keeps the export alive (the
/// caller may `Arc::try_unwrap` it), even while a handle lives on.
struct Control {
    name: Arc<str>,
    options: Options,
    stopping: AtomicBool,
    registry: Mutex<Registry>,
    changed: Condvar,
    next_id: AtomicU64,
    refusals: Mutex<Refusals>,
}

/// Connections closed at accept since the last line about them.
#[derive(Default)]
struct Refusals {
    unlogged: u64,
    last_line: Option<Instant>,
}

/// Whether an accepted connection may stay.
enum Admission {
    Registered,
    Stopping,
    Full,
}

#[derive(Default)]
struct Registry {
    stopping: bool,
    connections: HashMap<u64, Arc<Socket>>,
}

impl Control {
    /// Record a new connection, unless the server is stopping or has
    /// [`Options::max_connections`] already.
    fn register(&self, id: u64, sock: &Arc<Socket>) -> Admission {
        let mut reg = lock(&self.registry);
        if reg.stopping {
            return Admission::Stopping;
        }
        if reg.connections.len() >= self.options.max_connections {
            return Admission::Full;
        }
        reg.connections.insert(id, Arc::clone(sock));
        Admission::Registered
    }

    /// Count a connection closed at accept; say so on stderr at most once
    /// per [`REFUSAL_LOG_EVERY`], so a flood cannot flood the log.
    fn refused(&self, peer: &str, why: &str) {
        let mut r = lock(&self.refusals);
        r.unlogged += 1;
        let now = Instant::now();
        if r.last_line.is_none_or(|at| now.duration_since(at) >= REFUSAL_LOG_EVERY) {
            tracing::warn!(
                disk = %self.name,
                %peer,
                "nbd[{}]: refused {} connection(s) (the last from {peer}): {why}; further refusals are counted \
                 here at most every {} s",
                self.name,
                r.unlogged,
                REFUSAL_LOG_EVERY.as_secs()
            );
            r.unlogged = 0;
            r.last_line = Some(now);
        }
    }

    fn unregister(&self, id: u64) {
        let mut reg = lock(&self.registry);
        reg.connections.remove(&id);
        self.changed.notify_all();
    }
}

/// An NBD server for one export (see the [module docs](super)).
pub struct Server {
    listeners: Vec<Listener>,
    control: Arc<Control>,
    export: Arc<dyn Export>,
    grace: Duration,
}

/// Stops a [`Server`] from any thread.
#[derive(Clone)]
pub struct ShutdownHandle {
    control: Arc<Control>,
}

impl fmt::Debug for ShutdownHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShutdownHandle").field("export", &self.control.name).finish()
    }
}

impl ShutdownHandle {
    /// Stop accepting connections; make every open connection finish its
    /// in-flight requests and close. Returns at once; [`Server::run`] returns
    /// when all of that is done. Calling it again does nothing.
    pub fn shutdown(&self) {
        let mut reg = lock(&self.control.registry);
        if reg.stopping {
            return;
        }
        reg.stopping = true;
        self.control.stopping.store(true, Ordering::SeqCst);
        for sock in reg.connections.values() {
            let _ = sock.shutdown(Shutdown::Read);
        }
        self.control.changed.notify_all();
    }

    /// True once [`ShutdownHandle::shutdown`] has been called.
    pub fn is_shutting_down(&self) -> bool {
        self.control.stopping.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server").field("export", &self.control.name).field("addrs", &self.local_addrs()).finish()
    }
}

impl Server {
    /// [`Server::bind_with`] the default [`Options`] (loopback TCP only).
    pub fn bind(listens: &[Listen], name: &str, export: Arc<dyn Export>) -> io::Result<Server> {
        Server::bind_with(listens, name, export, Options::default())
    }

    /// Bind every listen address and get ready to serve `export` under `name`
    /// and under the default (empty) export name, as qemu-nbd does. A stale
    /// unix socket file (nobody listening) is replaced; a live one, or a
    /// file that is not a socket, is an error. A TCP address that binds to
    /// anything but loopback is refused (`PermissionDenied`) unless
    /// [`Options::insecure_tcp`]. Errors name the address.
    pub fn bind_with(listens: &[Listen], name: &str, export: Arc<dyn Export>, options: Options) -> io::Result<Server> {
        if listens.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no listen address given for the NBD server"));
        }
        if name.len() > proto::MAX_STRING_LEN || name.contains('\0') {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("export name {name:?} is not a valid NBD export name (at most 4096 bytes, no NUL)"),
            ));
        }
        let mut listeners = Vec::with_capacity(listens.len());
        for listen in listens {
            // Checked on what the host resolves to before binding (nothing
            // exposed is bound even for a moment), and on the bound address.
            let guarded = matches!(listen, Listen::Tcp(_)) && options.tls.is_some();
            if !options.insecure_tcp && !guarded {
                if let Some(addr) = listen.non_loopback_addrs()?.first() {
                    return Err(exposed_error(listen, &addr.ip().to_string(), name));
                }
            }
            let bound = match listen {
                Listen::Unix(path) => bind_unix(path).map(Listener::Unix),
                Listen::Tcp(addr) => TcpListener::bind(addr.as_str()).map(Listener::Tcp),
            };
            let listener = bound.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))?;
            let local = listener.local_addr();
            if local.is_exposed() && !options.insecure_tcp && !guarded {
                return Err(exposed_error(listen, &local.to_string(), name));
            }
            listeners.push(listener);
        }
        let control = Arc::new(Control {
            name: Arc::from(name),
            options,
            stopping: AtomicBool::new(false),
            registry: Mutex::new(Registry::default()),
            changed: Condvar::new(),
            next_id: AtomicU64::new(1),
            refusals: Mutex::new(Refusals::default()),
        });
        Ok(Server { listeners, control, export, grace: SHUTDOWN_GRACE })
    }

    /// The addresses the server is bound to, in the order given to [`Server::bind`].
    pub fn local_addrs(&self) -> Vec<LocalAddr> {
        self.listeners.iter().map(Listener::local_addr).collect()
    }

    /// How long [`Server::run`] lets connections drain after shutdown before
    /// closing the sockets of clients that do not read their replies
    /// (default 10 s). Their in-flight requests finish either way.
    pub fn with_shutdown_grace(mut self, grace: Duration) -> Server {
        self.grace = grace;
        self
    }

    /// A handle that stops the server from another thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle { control: Arc::clone(&self.control) }
    }

    /// Accept and serve connections until [`ShutdownHandle::shutdown`]. Returns
    /// only after every connection has finished its in-flight requests (every
    /// write it accepted has returned from the export) and closed, so the
    /// caller may then mark its state clean. A connection whose client does
    /// not read its replies has its socket closed once the shutdown grace
    /// has passed (its requests still finish). Unix socket files are removed.
    pub fn run(self) -> io::Result<()> {
        let Server { listeners, control, export, grace } = self;
        // Accept threads hold the export weakly: one that could not be woken
        // at shutdown must not keep it alive after run() returns.
        let weak_export = Arc::downgrade(&export);
        let mut accepters: Vec<(Arc<Listener>, JoinHandle<()>)> = Vec::new();
        let mut spawn_error = None;
        for listener in listeners {
            let listener = Arc::new(listener);
            let addr = listener.local_addr();
            let for_thread = Arc::clone(&listener);
            let control_for_thread = Arc::clone(&control);
            let export_for_thread = Weak::clone(&weak_export);
            let spawned = thread::Builder::new()
                .name("nbd-accept".to_owned())
                .spawn(move || accept_loop(&for_thread, &control_for_thread, &export_for_thread));
            match spawned {
                Ok(handle) => accepters.push((listener, handle)),
                Err(e) => {
                    spawn_error =
                        Some(io::Error::new(e.kind(), format!("cannot start the NBD accept thread for {addr}: {e}")));
                    ShutdownHandle { control: Arc::clone(&control) }.shutdown();
                    break;
                }
            }
        }
        let mut reg = lock(&control.registry);
        while !reg.stopping {
            reg = control.changed.wait(reg).unwrap_or_else(|p| p.into_inner());
        }
        drop(reg);

        // Shutting the listening socket down wakes its accept thread. (Waking
        // it by connecting to its address could reach another filter that has
        // since bound the same unix socket path.) Our Arc keeps the descriptor
        // open until the thread has returned.
        for (listener, handle) in accepters {
            match crate::sys::shutdown_listener(&*listener) {
                Ok(()) => {
                    let _ = handle.join();
                }
                Err(e) => {
                    tracing::warn!("nbd: cannot wake the accept thread on {} ({e}); leaving it", listener.local_addr())
                }
            }
        }

        // Connections finish their in-flight requests and close. One whose
        // client stopped reading replies could block in a write forever: after
        // a grace period its socket is shut down entirely, which fails the
        // write; its export calls still run to completion before it ends.
        let deadline = Instant::now() + grace;
        let mut reg = lock(&control.registry);
        let mut forced = false;
        while !reg.connections.is_empty() {
            let now = Instant::now();
            if now >= deadline && !forced {
                tracing::warn!(
                    "nbd: {} connection(s) still busy {:?} after shutdown; closing their sockets",
                    reg.connections.len(),
                    grace
                );
                for sock in reg.connections.values() {
                    let _ = sock.shutdown(Shutdown::Both);
                }
                forced = true;
            }
            let wait = if forced { Duration::from_secs(3600) } else { deadline - now };
            reg = control.changed.wait_timeout(reg, wait).unwrap_or_else(|p| p.into_inner()).0;
        }
        drop(reg);
        drop(export);
        spawn_error.map_or(Ok(()), Err)
    }
}

/// The refusal of a TCP address that is not loopback (without TLS).
fn exposed_error(listen: &Listen, addr: &str, name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "refusing to listen on {listen} ({addr}): it is not a loopback address, and without TLS this NBD server has no \
             authentication or encryption, so anyone who can reach it could read and overwrite disk {name:?}; listen \
             on a unix socket or on 127.0.0.1 (reach it from another host through an ssh tunnel: ssh -L \
             PORT:127.0.0.1:PORT HOST), require TLS with client certificates (--tls-creds DIR), or accept the risk \
             on an isolated network with --insecure-tcp"
        ),
    )
}

fn bind_unix(path: &Path) -> io::Result<UnixSocketFile> {
    // Private whatever the umask: see `sys::bind_private_unix`.
    let listener = match crate::sys::bind_private_unix(path) {
        Ok(l) => l,
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let meta = fs::symlink_metadata(path)?;
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    "the path exists and is not a socket; remove it or choose another path",
                ));
            }
            if UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(io::ErrorKind::AddrInUse, "another server is listening on this socket"));
            }
            fs::remove_file(path)?;
            crate::sys::bind_private_unix(path)?
        }
        Err(e) => return Err(e),
    };
    let ino = fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()));
    Ok(UnixSocketFile { listener, path: path.to_owned(), ino })
}

/// Connect to our own listener so its blocked `accept` returns.
fn accept_loop(listener: &Listener, control: &Arc<Control>, export: &Weak<dyn Export>) {
    let mut failures = 0u32;
    loop {
        let accepted = listener.accept();
        if control.stopping.load(Ordering::SeqCst) {
            return;
        }
        let (sock, peer) = match accepted {
            Ok(conn) => {
                failures = 0;
                conn
            }
            Err(e) => {
                // Out of file descriptors and the like: say so, back off, retry.
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!("nbd: accept on {} failed: {e}", listener.local_addr());
                }
                thread::sleep(Duration::from_millis(10 * u64::from(failures.min(50))));
                continue;
            }
        };
        let Some(export) = export.upgrade() else { return };
        let id = control.next_id.fetch_add(1, Ordering::Relaxed);
        let sock = Arc::new(sock);
        // A refused connection is closed here (its last Arc drops): the
        // client sees EOF before the greeting.
        match control.register(id, &sock) {
            Admission::Registered => {}
            Admission::Stopping => return,
            Admission::Full => {
                let max = control.options.max_connections;
                control.refused(&peer, &format!("the disk has its limit of {max} open connections"));
                continue;
            }
        }
        let registration = Registration { control: Arc::clone(control), id };
        let reserve = control.options.fd_reserve;
        if let Some(left) = crate::sys::open_files_left().filter(|&left| left < reserve) {
            drop(registration);
            control.refused(
                &peer,
                &format!(
                    "only {left} file descriptors are left under the open-files limit (RLIMIT_NOFILE), and {reserve} \
                     are kept for replication; close idle NBD clients or raise the limit (LimitNOFILE= in the \
                     service unit, ulimit -n)"
                ),
            );
            continue;
        }
        let spawned = thread::Builder::new().name(format!("nbd-conn-{id}")).spawn(move || {
            // The export is dropped inside serve_connection, before the
            // registration: run() never returns while a connection thread
            // still holds it.
            serve_connection(id, sock, &peer, export, &registration.control);
            drop(registration);
        });
        if let Err(e) = spawned {
            // the closure, and with it the registration, is dropped
            tracing::error!("nbd: cannot start a thread for connection {id}: {e}; dropping it");
        }
    }
}

/// Unregisters a connection when dropped, however its thread ends.
struct Registration {
    control: Arc<Control>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.control.unregister(self.id);
    }
}

fn serve_connection(id: u64, sock: Arc<Socket>, peer: &str, export: Arc<dyn Export>, control: &Control) {
    let label = format!("nbd[{}#{id}]", control.name);
    tracing::info!(disk = %control.name, %peer, "{label}: connection from {peer}");
    let stopping = || control.stopping.load(Ordering::SeqCst);
    let spec = ExportSpec { name: &control.name, export: &*export, shutting_down: &stopping };
    let session = Session { label: &label, export: &*export, control };
    let deadline = Instant::now() + control.options.handshake_timeout;
    let tls = match (&*sock, &control.options.tls) {
        (Socket::Tcp(tcp), Some(upgrade)) => Some((tcp, upgrade)),
        _ => None,
    };
    let mode = if tls.is_some() { Tls::Required } else { Tls::Unavailable };
    let mut reader = BufReader::with_capacity(READ_BUFFER, &*sock);
    let outcome = timed(&sock, &mut reader, deadline, |r, w| handshake::negotiate(r, w, &spec, mode));
    match (outcome, tls) {
        (Ok(Outcome::StartTls(client)), Some((tcp, upgrade))) => {
            // Bytes the client sent after STARTTLS and before its TLS hello
            // would be plaintext smuggled into the encrypted session (the
            // STARTTLS injection of other protocols): refuse them.
            let upgraded = if !reader.buffer().is_empty() {
                Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the client sent data after NBD_OPT_STARTTLS before TLS",
                ))
            } else {
                tcp.try_clone().and_then(|tcp| upgrade.upgrade(tcp, peer, deadline))
            };
            match upgraded {
                Ok(plain) => {
                    let plain = Socket::Unix(plain);
                    let mut reader = BufReader::with_capacity(READ_BUFFER, &plain);
                    let outcome = timed(&plain, &mut reader, deadline, |r, w| {
                        handshake::options(r, w, &spec, client, Tls::Active)
                    });
                    session.finish(outcome, &plain, &mut reader);
                    let _ = plain.shutdown(Shutdown::Both);
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    session.finish(Err(e), &sock, &mut reader)
                }
                // Rate-limited: a scanner must not flood the log.
                Err(e) => control.refused(peer, &format!("TLS handshake failed: {e}")),
            }
        }
        (outcome, _) => session.finish(outcome, &sock, &mut reader),
    }
    let _ = sock.shutdown(Shutdown::Both);
}

/// Run a handshake step over `sock` under the handshake deadline.
fn timed<'s, T>(
    sock: &'s Socket,
    reader: &mut BufReader<&'s Socket>,
    deadline: Instant,
    f: impl FnOnce(&mut Timed<'_, &mut BufReader<&'s Socket>>, &mut Timed<'_, &'s Socket>) -> io::Result<T>,
) -> io::Result<T> {
    let mut r = Timed { inner: reader, sock, deadline };
    let mut w = Timed { inner: sock, sock, deadline };
    f(&mut r, &mut w)
}

/// What a connection's last steps need.
struct Session<'a> {
    label: &'a str,
    export: &'a dyn Export,
    control: &'a Control,
}

impl Session<'_> {
    /// After the handshake: serve the transmission phase, or say why not.
    fn finish(&self, outcome: io::Result<Outcome>, sock: &Socket, reader: &mut BufReader<&Socket>) {
        let label = self.label;
        let stopping = || self.control.stopping.load(Ordering::SeqCst);
        // The transmission phase is never timed: a VM may be quiet for hours.
        let untimed = sock.set_read_timeout(None).and_then(|()| sock.set_write_timeout(None));
        let outcome = match (outcome, untimed) {
            (Ok(Outcome::Transmission { .. }), Err(e)) => Err(e),
            (outcome, _) => outcome,
        };
        match outcome {
            Ok(Outcome::Transmission { size }) => {
                let ending = transmission::serve(sock, reader, self.export, size, &stopping, label);
                let ending = match ending {
                    transmission::Ending::Eof if stopping() => "closed for server shutdown".to_owned(),
                    other => other.to_string(),
                };
                tracing::info!("{label}: {ending}");
            }
            Ok(Outcome::Aborted) => tracing::info!("{label}: client ended the handshake (NBD_OPT_ABORT)"),
            Ok(Outcome::StartTls(_)) => tracing::warn!("{label}: STARTTLS acknowledged on a listener without TLS"),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                tracing::info!("{label}: client left during the handshake")
            }
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                tracing::warn!(
                    "{label}: client did not finish the handshake within {} s; dropped it",
                    self.control.options.handshake_timeout.as_secs_f64()
                )
            }
            Err(e) => tracing::warn!("{label}: handshake failed: {e}"),
        }
    }
}

/// A handshake reader or writer that fails with `TimedOut` once `deadline`
/// has passed: before each socket read or write it sets the socket's timeout
/// to the time left, so a client dripping one byte at a time gets no longer
/// than one that says nothing.
struct Timed<'a, T> {
    inner: T,
    sock: &'a Socket,
    deadline: Instant,
}

impl<T> Timed<'_, T> {
    fn time_left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "NBD handshake timed out"));
        }
        Ok(left)
    }
}

impl Read for Timed<'_, &mut BufReader<&Socket>> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Bytes already buffered need no socket read and no timeout.
        if self.inner.buffer().is_empty() {
            self.sock.set_read_timeout(Some(self.time_left()?))?;
        }
        self.inner.read(buf)
    }
}

impl Write for Timed<'_, &Socket> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(Some(self.time_left()?))?;
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn is_mapped_loopback(a: &SocketAddr) -> bool {
    match a.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        std::net::IpAddr::V4(_) => false,
    }
}

/// The uid owning the client socket of a loopback TCP connection whose
/// client end is `peer` and server end `local`, from the kernel's socket
/// tables (`/proc/net/tcp`, `/proc/net/tcp6`: the client's entry has `peer`
/// as its local address and `local` as its remote one). `None` if no entry
/// matches (the client already closed).
pub(crate) fn loopback_peer_uid(peer: SocketAddr, local: SocketAddr) -> Option<u32> {
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().find_map(|table| {
        let text = std::fs::read_to_string(table).ok()?;
        text.lines().skip(1).find_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (l, r, uid) = (parse_proc_addr(f.get(1)?)?, parse_proc_addr(f.get(2)?)?, f.get(7)?);
            (same_endpoint(l, peer) && same_endpoint(r, local)).then(|| uid.parse().ok()).flatten()
        })
    })
}

/// `ADDR:PORT` as `/proc/net/tcp{,6}` prints it: the address as 32-bit words
/// in the kernel's byte order (each printed as hex of its in-memory value),
/// the port in hex.
fn parse_proc_addr(s: &str) -> Option<SocketAddr> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(u32::from_str_radix(addr.get(8 * i..8 * i + 8)?, 16).ok()?.to_ne_bytes())
    };
    let ip: std::net::IpAddr = match addr.len() {
        8 => std::net::Ipv4Addr::from(word(0)?).into(),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            std::net::Ipv6Addr::from(b).into()
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Equal endpoints, seeing an IPv4 address and its IPv4-mapped IPv6 form as one.
fn same_endpoint(a: SocketAddr, b: SocketAddr) -> bool {
    let canon = |x: SocketAddr| match x.ip() {
        std::net::IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(x.ip(), std::net::IpAddr::V4),
        ip => ip,
    };
    a.port() == b.port() && canon(a) == canon(b)
}

#[cfg(test)]
mod loopback_tests {
    use super::*;

    #[test]
    fn a_loopback_client_is_found_with_its_uid() {
        use std::os::unix::fs::MetadataExt;
        // /proc/self belongs to this process's effective uid.
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (s, peer) = l.accept().unwrap();
        assert_eq!(peer, c.local_addr().unwrap());
        assert_eq!(loopback_peer_uid(peer, s.local_addr().unwrap()), Some(me));
        // Another port is nobody's connection.
        let other = SocketAddr::new(peer.ip(), peer.port().wrapping_add(1));
        assert_eq!(loopback_peer_uid(other, s.local_addr().unwrap()), None);
        assert_eq!(parse_proc_addr("0100007F:1F90"), Some("127.0.0.1:8080".parse().unwrap()));
        assert_eq!(parse_proc_addr("00000000000000000000000001000000:0016"), Some("[::1]:22".parse().unwrap()));
        assert_eq!(parse_proc_addr("zz:1"), None);
    }
}
