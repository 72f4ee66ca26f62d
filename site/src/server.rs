//! The vault server: named vault directories (each a [`LocalBackend`])
//! served over HTTP/2 on mutual TLS ("Vault server protocol" in FORMAT.md).
//!
//! The server owns a tokio runtime. Each connection is one TLS session and
//! one HTTP/2 connection carrying many streams. The host of a connection is
//! found by its certificate's fingerprint through a [`HostDirectory`] on
//! every request, so a revocation refuses an open connection's next
//! request; a sweep every second closes idle connections of revoked hosts.
//!
//! Bodies stream: an upload goes chunk by chunk through a bounded channel to
//! a blocking task that writes the vault's `tmp/`, so HTTP/2 flow control
//! (a window of [`STREAM_WINDOW`] per stream) holds the sender back while
//! the disk is slower; a download is read and sent in [`CHUNK`] pieces. No
//! side holds a whole pack. Nothing is visible until checked (`checks.rs`),
//! synced and linked or renamed; a stream reset drops the staged object.
//!
//! Shutdown ([`Shutdown::shutdown`], SIGTERM in `lifeboat vault serve`)
//! stops accepting, lets requests in flight finish (HTTP/2 GOAWAY), then
//! [`Server::wait`] returns.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use vault::{Backend, Kind, LocalBackend, VaultError, Version};

use crate::checks::{check_object, check_staged_pack, CheckError};
use crate::protocol::{
    self, etag, parse_condition, parse_object_lines, parse_range, parse_route, Condition, EnrollRequest, ErrorBody,
    ErrorCode, ProtocolError, Route, VersionAnswer, ERROR_HEADER, LIST_PAGE, MAX_HEADER_LIST, MORE_HEADER,
    NAME_TRAILER, SIZE_HEADER,
};
use crate::rights::{Grants, GrantsError, Op, Refusal};
use crate::tls::fingerprint;

/// Per-stream HTTP/2 flow-control window: at most this much of one upload
/// is in flight ahead of the disk.
pub const STREAM_WINDOW: u32 = 1 << 20;
/// Per-connection window.
pub const CONNECTION_WINDOW: u32 = 8 << 20;
/// Largest HTTP/2 DATA frame either side accepts (the protocol's default is
/// 16 KiB): an upload then reaches the disk side in fewer, larger pieces.
pub const MAX_FRAME: u32 = 256 << 10;
/// Streams one connection may have open at once.
pub const MAX_STREAMS: u32 = 64;
/// Pieces a download is read and sent in.
pub const CHUNK: u64 = 1 << 20;
/// Chunks of an upload queued for the disk (the bounded channel).
const QUEUE: usize = 4;

/// What a certificate's fingerprint says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostStatus {
    /// An enrolled host and the vaults it is enrolled for.
    Enrolled {
        /// The host's name.
        host: String,
        /// The vaults it may use.
        vaults: Vec<String>,
    },
    /// The certificate was a host's, and is revoked.
    Revoked {
        /// The host's name.
        host: String,
    },
    /// No host was issued this certificate.
    Unknown,
}

/// The site's hosts, as the server sees them (implemented by
/// `site_dir::Site` over `SITE/hosts/`; by a map in the tests).
pub trait HostDirectory: Send + Sync + 'static {
    /// The host holding the certificate of this fingerprint
    /// ([`crate::tls::fingerprint`]).
    fn lookup(&self, fingerprint: &str) -> HostStatus;
    /// Redeems an enrollment token: the host's certificate (PEM), or why not.
    fn redeem(&self, request: &EnrollRequest) -> Result<String, String>;
    /// Notes that `host` made contact and sent `bytes` of request bodies.
    fn record_contact(&self, host: &str, bytes: u64);
    /// Records a refusal in the site's audit log: `who` is the host, or the
    /// peer's IP address before a host is known; `code` the protocol's
    /// error code (or `tls`). Called on a blocking thread. The default
    /// records nothing.
    fn record_refusal(&self, who: &str, code: &str, details: serde_json::Value) {
        let _ = (who, code, details);
    }
}

/// What the server serves, and to whom.
pub struct ServerConfig {
    /// From [`crate::tls::server_config`].
    pub tls: Arc<rustls::ServerConfig>,
    /// Vault names and their directories.
    pub vaults: Vec<(String, PathBuf)>,
    /// The grants journal's directory (`SITE/grants`).
    pub grants: PathBuf,
    /// The site's hosts.
    pub hosts: Arc<dyn HostDirectory>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Binding the address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A vault directory could not be opened.
    #[error("vault {name}: {source}")]
    Vault {
        /// The vault's name.
        name: String,
        /// Why.
        #[source]
        source: Box<VaultError>,
    },
    /// A vault name that is not one name part.
    #[error("vault name: {0}")]
    BadName(#[from] ProtocolError),
    /// The grants journal.
    #[error(transparent)]
    Grants(#[from] GrantsError),
    /// The runtime could not start.
    #[error("starting the server's runtime: {0}")]
    Runtime(std::io::Error),
}

struct Shared {
    vaults: HashMap<String, Arc<LocalBackend>>,
    grants: Grants,
    hosts: Arc<dyn HostDirectory>,
    tls: TlsAcceptor,
}

/// A running server; see the module documentation.
pub struct Server {
    addr: SocketAddr,
    stop: Shutdown,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Stops a [`Server`] gracefully; cheap to clone.
#[derive(Clone)]
pub struct Shutdown(Arc<watch::Sender<bool>>);

impl Shutdown {
    /// Stops accepting, lets requests in flight finish, then the server's
    /// [`Server::wait`] returns.
    pub fn shutdown(&self) {
        let _ = self.0.send(true);
    }
}

impl Server {
    /// Binds `listen` and starts serving on the server's own runtime.
    pub fn start(listen: SocketAddr, config: ServerConfig) -> Result<Server, ServerError> {
        let mut vaults = HashMap::new();
        for (name, dir) in &config.vaults {
            protocol::check_vault_name(name)?;
            let b = LocalBackend::open(dir)
                .map_err(|source| ServerError::Vault { name: name.clone(), source: Box::new(source) })?;
            let _ = vaults.insert(name.clone(), Arc::new(b));
        }
        let shared = Arc::new(Shared {
            vaults,
            grants: Grants::open(&config.grants)?,
            hosts: config.hosts,
            tls: TlsAcceptor::from(config.tls),
        });
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("vault-server")
            .enable_all()
            .build()
            .map_err(ServerError::Runtime)?;
        let listener =
            rt.block_on(TcpListener::bind(listen)).map_err(|source| ServerError::Bind { addr: listen, source })?;
        let addr = listener.local_addr().map_err(|source| ServerError::Bind { addr: listen, source })?;
        let (tx, rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name("vault-server".into())
            .spawn(move || {
                rt.block_on(accept_loop(listener, shared, rx));
                rt.shutdown_timeout(Duration::from_secs(5));
            })
            .map_err(ServerError::Runtime)?;
        tracing::info!(%addr, "lifeboat vault serve: listening on {addr}");
        Ok(Server { addr, stop: Shutdown(Arc::new(tx)), thread: Some(thread) })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// A handle that stops it.
    pub fn shutdown_handle(&self) -> Shutdown {
        self.stop.clone()
    }

    /// Waits until it has stopped (after [`Shutdown::shutdown`]).
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = stopped(&mut stop) => break,
            r = listener.accept() => match r {
                Ok((tcp, peer)) => {
                    let _ = conns.spawn(serve_connection(tcp, peer, shared.clone(), stop.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lifeboat vault serve: accepting a connection failed: {e}");
                    // Out of file descriptors, say: back off rather than spin.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
    tracing::info!("lifeboat vault serve: stopped");
}

/// The connection's client, as far as TLS told.
struct Peer {
    addr: SocketAddr,
    fingerprint: Option<String>,
}

fn describe(shared: &Shared, fp: Option<&str>) -> String {
    match fp.map(|fp| shared.hosts.lookup(fp)) {
        None => "no certificate".into(),
        Some(HostStatus::Enrolled { host, .. }) => host,
        Some(HostStatus::Revoked { host }) => format!("{host} (revoked)"),
        Some(HostStatus::Unknown) => "an unknown certificate".into(),
    }
}

/// Records a refusal in the site's audit log off the async threads (the
/// log is fsynced); the directory rate-limits per `who` and `code`.
fn audit_refusal(shared: &Shared, who: String, code: &'static str, details: serde_json::Value) {
    let hosts = shared.hosts.clone();
    drop(tokio::task::spawn_blocking(move || hosts.record_refusal(&who, code, details)));
}

/// Refusals worth the audit log: who was kept out, and uploads that lied.
fn audited(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NoCertificate
            | ErrorCode::Forbidden
            | ErrorCode::Revoked
            | ErrorCode::NotEnrolled
            | ErrorCode::NameMismatch
    )
}

/// Closes a connection whose TLS handshake failed so that the client reads
/// the alert that says why. In TLS 1.3 a client whose certificate is
/// refused has already sent its first request; closing a socket with unread
/// bytes makes the kernel reset it, and a reset can discard the alert before
/// the client reads it (it then saw only "connection reset"). So: finish
/// sending (FIN after the alert), and read what the client sent until it
/// closes, for at most 2 s.
async fn linger(mut tcp: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tcp.shutdown().await;
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Ok(n) = tcp.read(&mut sink).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

async fn serve_connection(tcp: TcpStream, addr: SocketAddr, shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    // A TLS client speaks first, with a handshake record (0x16).
    let mut first = [0u8; 1];
    match tokio::time::timeout(Duration::from_secs(30), tcp.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == 0x16 => {}
        Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return,
        Ok(Ok(_)) => {
            tracing::info!(peer = %addr, "lifeboat vault serve: refused {addr}: a plain-TCP (not TLS) client");
            let why = "a plain-TCP (not TLS) client";
            audit_refusal(
                &shared,
                addr.ip().to_string(),
                "tls",
                serde_json::json!({ "peer": addr.to_string(), "why": why }),
            );
            return;
        }
    }
    // Answers go out as written: with Nagle's algorithm a ranged read's last
    // segment waited for the host's delayed ACK (~20 ms a read measured).
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(Duration::from_secs(30), shared.tls.accept(tcp).into_fallible()).await {
        Ok(Ok(s)) => s,
        Ok(Err((e, tcp))) => {
            tracing::info!(peer = %addr, error = %e, "lifeboat vault serve: refused {addr}: TLS handshake failed: {e}");
            let why = format!("TLS handshake failed: {e}");
            audit_refusal(
                &shared,
                addr.ip().to_string(),
                "tls",
                serde_json::json!({ "peer": addr.to_string(), "why": why }),
            );
            linger(tcp).await;
            return;
        }
        Err(_) => {
            tracing::info!(peer = %addr, "lifeboat vault serve: refused {addr}: no TLS handshake within 30 s");
            return;
        }
    };
    let fp = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| fingerprint(c));
    let who = describe(&shared, fp.as_deref());
    tracing::info!(peer = %addr, host = %who, "lifeboat vault serve: connection from {addr}: {who}");
    let peer = Arc::new(Peer { addr, fingerprint: fp.clone() });
    let svc_shared = shared.clone();
    let svc = service_fn(move |req| {
        let (shared, peer) = (svc_shared.clone(), peer.clone());
        async move { Ok::<_, Infallible>(handle(shared, peer, req).await) }
    });
    let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    let _ = builder
        .timer(TokioTimer::new())
        .max_header_list_size(MAX_HEADER_LIST)
        .max_concurrent_streams(MAX_STREAMS)
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_send_buf_size(1 << 20)
        .max_frame_size(MAX_FRAME)
        .keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(30));
    let conn = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(conn);
    let mut sweep = tokio::time::interval(Duration::from_secs(1));
    let mut closing = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::info!(peer = %addr, error = %e, "lifeboat vault serve: connection from {addr} closed on an error: {e}");
                }
                return;
            }
            () = stopped(&mut stop), if !closing => {
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = sweep.tick(), if !closing => {
                if let Some(fp) = &fp {
                    if matches!(shared.hosts.lookup(fp), HostStatus::Revoked { .. }) {
                        let who = describe(&shared, Some(fp));
                        tracing::info!(peer = %addr, host = %who, "lifeboat vault serve: closing the connection from {addr} of {who}");
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

/// A response body: whole, or streamed from a channel.
pub(crate) enum OutBody {
    Full(Full<Bytes>),
    Chan(ChanBody),
}

impl Body for OutBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.get_mut() {
            OutBody::Full(f) => Pin::new(f).poll_frame(cx).map_err(|e| match e {}),
            OutBody::Chan(c) => Pin::new(c).poll_frame(cx),
        }
    }
    fn is_end_stream(&self) -> bool {
        match self {
            OutBody::Full(f) => f.is_end_stream(),
            OutBody::Chan(_) => false,
        }
    }
    fn size_hint(&self) -> SizeHint {
        match self {
            OutBody::Full(f) => f.size_hint(),
            OutBody::Chan(c) => c.hint,
        }
    }
}

/// A body fed through a bounded channel: the sender waits while the
/// receiver (the peer, through HTTP/2 flow control) is behind. An `Err`
/// item resets the stream.
pub(crate) struct ChanBody {
    pub rx: mpsc::Receiver<Result<Frame<Bytes>, std::io::Error>>,
    pub hint: SizeHint,
}

impl Body for ChanBody {
    type Data = Bytes;
    type Error = std::io::Error;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.rx.poll_recv(cx)
    }
    fn size_hint(&self) -> SizeHint {
        self.hint
    }
}

/// A refusal or failure, as answered.
struct Fail {
    code: ErrorCode,
    message: String,
    /// `Content-Range: bytes */SIZE` of a 416.
    size: Option<u64>,
}

impl Fail {
    fn new(code: ErrorCode, message: impl Into<String>) -> Fail {
        Fail { code, message: message.into(), size: None }
    }
}

impl From<VaultError> for Fail {
    fn from(e: VaultError) -> Fail {
        let code = match &e {
            VaultError::NotFound { .. } => ErrorCode::NotFound,
            VaultError::AlreadyExists { .. } => ErrorCode::Exists,
            VaultError::Conflict { .. } => ErrorCode::Conflict,
            VaultError::BadName { .. } => ErrorCode::BadName,
            VaultError::ShortObject { size, .. } => {
                return Fail { code: ErrorCode::ShortObject, message: e.to_string(), size: Some(*size) }
            }
            VaultError::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => ErrorCode::NoSpace,
            _ => ErrorCode::Io,
        };
        Fail::new(code, e.to_string())
    }
}

impl From<ProtocolError> for Fail {
    fn from(e: ProtocolError) -> Fail {
        Fail::new(ErrorCode::from(&e), e.to_string())
    }
}

impl From<GrantsError> for Fail {
    fn from(e: GrantsError) -> Fail {
        // A full disk shows first in the grants journal for small objects.
        let code = if e.source.raw_os_error() == Some(libc::ENOSPC) { ErrorCode::NoSpace } else { ErrorCode::Io };
        Fail::new(code, e.to_string())
    }
}

impl From<Refusal> for Fail {
    fn from(e: Refusal) -> Fail {
        Fail::new(ErrorCode::Forbidden, e.0)
    }
}

impl From<CheckError> for Fail {
    fn from(e: CheckError) -> Fail {
        match e {
            CheckError::Vault(v) => v.into(),
            m @ CheckError::Mismatch { .. } => Fail::new(ErrorCode::NameMismatch, m.to_string()),
        }
    }
}

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<OutBody> {
    let mut r = Response::new(OutBody::Full(Full::new(body.into())));
    *r.status_mut() = status;
    r
}

fn with_etag(mut r: Response<OutBody>, v: &Version) -> Response<OutBody> {
    if let Ok(h) = HeaderValue::from_str(&etag(v.as_str())) {
        let _ = r.headers_mut().insert(http::header::ETAG, h);
    }
    r
}

fn fail_response(f: &Fail) -> Response<OutBody> {
    let body = serde_json::to_vec(&ErrorBody { error: f.code.as_str().into(), message: f.message.clone() })
        .unwrap_or_default();
    let mut r = full(StatusCode::from_u16(f.code.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body);
    let _ = r.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if let Some(size) = f.size {
        if let Ok(h) = HeaderValue::from_str(&format!("bytes */{size}")) {
            let _ = r.headers_mut().insert(http::header::CONTENT_RANGE, h);
        }
    }
    r
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Fail> + Send + 'static) -> Result<T, Fail> {
    tokio::task::spawn_blocking(f)
        .await
        .unwrap_or_else(|e| Err(Fail::new(ErrorCode::Io, format!("a task failed: {e}"))))
}

async fn handle(shared: Arc<Shared>, peer: Arc<Peer>, req: Request<Incoming>) -> Response<OutBody> {
    let what = format!("{} {}", req.method(), req.uri().path_and_query().map_or("", |p| p.as_str()));
    let is_head = req.method() == Method::HEAD;
    let mut host = None;
    match route(&shared, &peer, req, &mut host).await {
        Ok(r) => r,
        Err(f) => {
            if audited(f.code) {
                let who = host.clone().unwrap_or_else(|| peer.addr.ip().to_string());
                let details = serde_json::json!({
                    "host": host,
                    "peer": peer.addr.to_string(),
                    "request": what,
                    "code": f.code.as_str(),
                    "why": f.message,
                });
                audit_refusal(&shared, who, f.code.as_str(), details);
            }
            if f.code != ErrorCode::NotFound {
                let who = host.as_deref().unwrap_or("-");
                tracing::info!(
                    peer = %peer.addr,
                    host = who,
                    request = %what,
                    code = f.code.as_str(),
                    why = %f.message,
                    "lifeboat vault serve: refused {what} from {who} at {}: {} ({})",
                    peer.addr,
                    f.message,
                    f.code.as_str()
                );
            }
            let mut r = fail_response(&f);
            if is_head {
                // A HEAD answer has no body: the code goes in a header.
                *r.body_mut() = OutBody::Full(Full::new(Bytes::new()));
                let _ = r.headers_mut().insert(ERROR_HEADER, HeaderValue::from_static(f.code.as_str()));
            }
            r
        }
    }
}

/// The whole body, refused past `limit` bytes.
async fn small_body(body: Incoming, limit: u64) -> Result<Bytes, Fail> {
    let too_large = || Fail::new(ErrorCode::TooLarge, format!("the request body is over its bound of {limit} bytes"));
    if body.size_hint().lower() > limit {
        return Err(too_large());
    }
    let limited = http_body_util::Limited::new(body, usize::try_from(limit).unwrap_or(usize::MAX));
    match limited.collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Err(e) => Err(Fail::new(ErrorCode::BadRequest, format!("the request body broke off: {e}"))),
    }
}

fn header(h: &HeaderMap, name: impl http::header::AsHeaderName) -> Result<Option<&str>, Fail> {
    match h.get(name) {
        None => Ok(None),
        Some(v) => v.to_str().map(Some).map_err(|_| Fail::new(ErrorCode::BadRequest, "a header is not ASCII")),
    }
}

async fn route(
    shared: &Arc<Shared>,
    peer: &Peer,
    req: Request<Incoming>,
    host_out: &mut Option<String>,
) -> Result<Response<OutBody>, Fail> {
    let (parts, body) = req.into_parts();
    let route = parse_route(parts.method.as_str(), parts.uri.path_and_query().map_or("/", |p| p.as_str()))?;
    if parts.method == Method::HEAD && !matches!(route, Route::Head { .. }) {
        return Err(Fail::new(ErrorCode::BadRequest, "HEAD of something that is not an object"));
    }
    if route == Route::Enroll {
        let body = small_body(body, protocol::MAX_SMALL_BODY).await?;
        let request: EnrollRequest = serde_json::from_slice(&body)
            .map_err(|e| Fail::new(ErrorCode::BadRequest, format!("an enroll request is JSON: {e}")))?;
        *host_out = Some(request.host.clone());
        let hosts = shared.hosts.clone();
        let pem = blocking(move || hosts.redeem(&request).map_err(|why| Fail::new(ErrorCode::Forbidden, why))).await?;
        let answer = serde_json::to_vec(&protocol::EnrollAnswer { certificate: pem }).unwrap_or_default();
        return Ok(full(StatusCode::OK, answer));
    }
    let Some(fp) = &peer.fingerprint else {
        return Err(Fail::new(
            ErrorCode::NoCertificate,
            "this connection has no client certificate: only enrollment (POST /v1/enroll) is allowed; join the site \
             with `lifeboat site join`",
        ));
    };
    let (host, vaults) = match shared.hosts.lookup(fp) {
        HostStatus::Enrolled { host, vaults } => (host, vaults),
        HostStatus::Revoked { host } => {
            *host_out = Some(host.clone());
            return Err(Fail::new(
                ErrorCode::Revoked,
                format!("the certificate of host {host} was revoked at the site; enroll the host again"),
            ));
        }
        HostStatus::Unknown => {
            return Err(Fail::new(ErrorCode::NotEnrolled, "this certificate was issued to no enrolled host"))
        }
    };
    *host_out = Some(host.clone());
    if route == Route::Version {
        let v = VersionAnswer { protocol: protocol::PROTOCOL_VERSION, server: env!("CARGO_PKG_VERSION").into() };
        return Ok(full(StatusCode::OK, serde_json::to_vec(&v).unwrap_or_default()));
    }
    let vault_name = route.vault().expect("every other route names a vault").to_string();
    let backend = match shared.vaults.get(&vault_name) {
        Some(b) if vaults.contains(&vault_name) => b.clone(),
        _ => {
            return Err(Fail::new(
                ErrorCode::NotEnrolled,
                format!("host {host} is not enrolled for a vault {vault_name:?} on this server"),
            ))
        }
    };
    let ctx = Ctx { shared: shared.clone(), host, vault: vault_name, backend };
    let mut received = body.size_hint().exact().unwrap_or(0);
    let answer = match route {
        Route::Get { kind, name, .. } => {
            get(ctx.clone(), kind, name, header(&parts.headers, http::header::RANGE)?).await
        }
        Route::Head { kind, name, .. } => head(ctx.clone(), kind, name).await,
        Route::Put { kind, name, .. } => {
            let cond = parse_condition(
                header(&parts.headers, http::header::IF_NONE_MATCH)?,
                header(&parts.headers, http::header::IF_MATCH)?,
            )?;
            put(ctx.clone(), kind, Some(name), cond, body, &mut received).await
        }
        Route::Stream { kind, .. } => {
            if kind != Kind::Pack {
                return Err(Fail::new(ErrorCode::BadRequest, "only packs are streamed; PUT other objects by name"));
            }
            put(ctx.clone(), kind, None, Condition::None, body, &mut received).await
        }
        Route::List { kind, prefix, after, .. } => list(ctx.clone(), kind, prefix, after).await,
        Route::Missing { .. } => missing(ctx.clone(), body).await,
        Route::Delete { kind, name, .. } => delete(ctx.clone(), kind, name).await,
        Route::Version | Route::Enroll => unreachable!("answered above"),
    };
    let hosts = ctx.shared.hosts.clone();
    let h = ctx.host.clone();
    // Before the answer: `lifeboat site hosts` counts what was acknowledged.
    let _ = tokio::task::spawn_blocking(move || hosts.record_contact(&h, received)).await;
    answer
}

#[derive(Clone)]
struct Ctx {
    shared: Arc<Shared>,
    host: String,
    vault: String,
    backend: Arc<LocalBackend>,
}

impl Ctx {
    fn allow(&self, op: Op, kind: Kind, name: &str, exists: bool) -> Result<(), Fail> {
        self.shared.grants.check(&self.vault, &self.host, op, kind, name, exists)??;
        Ok(())
    }

    fn record(&self, kind: Kind, name: &str) -> Result<(), Fail> {
        Ok(self.shared.grants.record(&self.vault, &self.host, kind, name)?)
    }

    /// A read the host may not make: `403` if the object is there, `404`
    /// if not.
    fn allow_read(&self, kind: Kind, name: &str) -> Result<(), Fail> {
        match self.allow(Op::Read, kind, name, true) {
            Ok(()) => Ok(()),
            Err(f) => match self.backend.size(kind, name)? {
                Some(_) => Err(f),
                None => Err(VaultError::NotFound { kind, name: name.to_string() }.into()),
            },
        }
    }
}

async fn get(ctx: Ctx, kind: Kind, name: String, range: Option<&str>) -> Result<Response<OutBody>, Fail> {
    let range = range.map(parse_range).transpose()?;
    let (c, n) = (ctx.clone(), name.clone());
    let size = blocking(move || {
        c.allow_read(kind, &n)?;
        c.backend.size(kind, &n)?.ok_or(Fail::from(VaultError::NotFound { kind, name: n }))
    })
    .await?;
    let (offset, len, status) = match range {
        Some((a, b)) => {
            let end = b.saturating_add(1);
            if end > size {
                return Err(VaultError::ShortObject { kind, name, size, offset: a, end }.into());
            }
            (a, end - a, StatusCode::PARTIAL_CONTENT)
        }
        None if kind != Kind::Pack => {
            // Small, mutable objects: whole, with their version.
            let (data, v) = blocking(move || Ok(ctx.backend.get_versioned(kind, &name)?)).await?;
            return Ok(with_etag(full(StatusCode::OK, data), &v));
        }
        None => (0, size, StatusCode::OK),
    };
    let (tx, rx) = mpsc::channel(2);
    let backend = ctx.backend.clone();
    drop(tokio::task::spawn_blocking(move || {
        let mut at = offset;
        while at < offset + len {
            let n = CHUNK.min(offset + len - at);
            let item = backend
                .get_range(kind, &name, at, n)
                .map(|d| Frame::data(Bytes::from(d)))
                .map_err(|e| std::io::Error::other(e.to_string()));
            let stop = item.is_err();
            if tx.blocking_send(item).is_err() || stop {
                return;
            }
            at += n;
        }
    }));
    let mut r = Response::new(OutBody::Chan(ChanBody { rx, hint: SizeHint::with_exact(len) }));
    *r.status_mut() = status;
    let _ = r.headers_mut().insert(http::header::CONTENT_LENGTH, HeaderValue::from(len));
    Ok(r)
}

async fn head(ctx: Ctx, kind: Kind, name: String) -> Result<Response<OutBody>, Fail> {
    blocking(move || {
        ctx.allow_read(kind, &name)?;
        let size =
            ctx.backend.size(kind, &name)?.ok_or(Fail::from(VaultError::NotFound { kind, name: name.clone() }))?;
        let mut r = full(StatusCode::OK, Bytes::new());
        if kind != Kind::Pack {
            let (_, v) = ctx.backend.get_versioned(kind, &name)?;
            r = with_etag(r, &v);
        }
        // Not Content-Length: HTTP/2 checks that against the (empty) body.
        let _ = r.headers_mut().insert(SIZE_HEADER, HeaderValue::from(size));
        Ok(r)
    })
    .await
}

async fn put(
    ctx: Ctx,
    kind: Kind,
    name: Option<String>,
    cond: Condition,
    body: Incoming,
    counted: &mut u64,
) -> Result<Response<OutBody>, Fail> {
    let limit = protocol::max_object(kind);
    if kind != Kind::Pack {
        let name = name.expect("only packs are streamed");
        let data = small_body(body, limit).await?;
        return blocking(move || put_small(&ctx, kind, &name, cond, &data)).await;
    }
    if body.size_hint().lower() > limit {
        return Err(Fail::new(ErrorCode::TooLarge, format!("a pack is at most {limit} bytes")));
    }
    // The disk side: a blocking task writing the staged object, fed through
    // a bounded channel (the flow-control window is the rest of the bound).
    let (tx, mut rx) = mpsc::channel::<Bytes>(QUEUE);
    let (name_tx, name_rx) = tokio::sync::oneshot::channel::<Option<String>>();
    let c = ctx.clone();
    let want_version = cond == Condition::Absent;
    let writer = tokio::task::spawn_blocking(move || -> Result<Response<OutBody>, Fail> {
        let mut staged = c.backend.stage(kind)?;
        let mut hasher = want_version.then(blake3::Hasher::new);
        while let Some(chunk) = rx.blocking_recv() {
            staged.write(&chunk)?;
            if let Some(h) = hasher.as_mut() {
                let _ = h.update(&chunk);
            }
        }
        // The body is over: named (by path or trailer), or broken off.
        let Ok(Some(name)) = name_rx.blocking_recv() else {
            return Err(Fail::new(ErrorCode::BadRequest, "the upload broke off; nothing was stored"));
        };
        check_staged_pack(&mut staged, &name)?;
        c.allow(if want_version { Op::Create } else { Op::Put }, kind, &name, false)?;
        // The grant before the object (see `put_small`).
        c.record(kind, &name)?;
        match staged.create(&name) {
            Ok(()) => {}
            // Content-addressed: the same name is the same (checked) object.
            Err(VaultError::AlreadyExists { .. }) if !want_version => {}
            Err(e) => return Err(e.into()),
        }
        let r = full(StatusCode::OK, Bytes::new());
        Ok(match hasher {
            Some(h) => with_etag(r, &Version::new(format!("b3-{}", &h.finalize().to_hex()[..32]))),
            None => r,
        })
    });
    let mut body = body;
    let mut received = 0u64;
    let mut trailer_name = None;
    let broken = loop {
        match body.frame().await {
            None => break None,
            Some(Err(e)) => break Some(format!("the upload broke off: {e}")),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    received += data.len() as u64;
                    if received > limit {
                        break Some(format!("a pack is at most {limit} bytes"));
                    }
                    if tx.send(data).await.is_err() {
                        break Some("the disk side failed".into());
                    }
                }
                Err(frame) => {
                    if let Ok(trailers) = frame.into_trailers() {
                        trailer_name = trailers.get(NAME_TRAILER).and_then(|v| v.to_str().ok()).map(str::to_string);
                    }
                }
            },
        }
    };
    drop(tx);
    *counted = received;
    let final_name = match (&broken, name, trailer_name) {
        (Some(_), _, _) => None,
        (None, Some(n), _) => Some(n),
        (None, None, Some(n)) => match vault::backend::check_name(&n) {
            Ok(()) => Some(n),
            Err(e) => {
                let _ = name_tx.send(None);
                let _ = writer.await;
                return Err(e.into());
            }
        },
        (None, None, None) => None,
    };
    let named = final_name.is_some();
    let _ = name_tx.send(final_name);
    let result = writer.await.unwrap_or_else(|e| Err(Fail::new(ErrorCode::Io, format!("a task failed: {e}"))));
    match (broken, named) {
        (Some(why), _) if why.starts_with("a pack is at most") => Err(Fail::new(ErrorCode::TooLarge, why)),
        (Some(why), _) => Err(result.err().unwrap_or(Fail::new(ErrorCode::BadRequest, why))),
        (None, false) => {
            Err(Fail::new(ErrorCode::BadRequest, format!("a streamed pack ends with the trailer {NAME_TRAILER}")))
        }
        (None, true) => result,
    }
}

fn put_small(ctx: &Ctx, kind: Kind, name: &str, cond: Condition, data: &[u8]) -> Result<Response<OutBody>, Fail> {
    check_object(kind, name, data)?;
    let b = &ctx.backend;
    let exists = b.size(kind, name)?.is_some();
    let op = match cond {
        Condition::Absent => Op::Create,
        Condition::Matches(_) => Op::Replace,
        Condition::None => Op::Put,
    };
    ctx.allow(op, kind, name, exists)?;
    // The grant is durable before the object is visible. A server killed
    // between the two then leaves a grant of an object that is not there
    // (harmless: reading it is a 404, and the host's next cycle writes it),
    // never an object its writer may not read back: a page or pack stored
    // without its grant made every later cycle of that host fail, refused
    // when it asked whether the object was there.
    ctx.record(kind, name)?;
    let version = match cond {
        Condition::Absent => b.create(kind, name, data)?,
        Condition::Matches(tag) => {
            let tag = Version::new(tag);
            if kind == Kind::Audit {
                extends(ctx, kind, name, data, Some(&tag))?;
            }
            b.replace_if(kind, name, data, &tag)?
        }
        Condition::None => {
            match kind {
                // Never replaced: a create, and the same name is the same object.
                Kind::Page => match b.create(kind, name, data) {
                    Ok(v) => v,
                    Err(VaultError::AlreadyExists { .. }) => Version::of_contents(data),
                    Err(e) => return Err(e.into()),
                },
                Kind::Lease if exists => {
                    b.put(kind, name, data)?;
                    Version::of_contents(data)
                }
                Kind::Audit if exists => {
                    let (_, v) = b.get_versioned(kind, name)?;
                    extends(ctx, kind, name, data, Some(&v))?;
                    b.replace_if(kind, name, data, &v)?
                }
                _ => b.create(kind, name, data).map_err(|e| match e {
                    VaultError::AlreadyExists { .. } => Fail::new(
                        ErrorCode::Forbidden,
                        format!(
                            "{kind}/{name} exists and hosts may not replace it; the vault is append-only for hosts"
                        ),
                    ),
                    other => other.into(),
                })?,
            }
        }
    };
    Ok(with_etag(full(StatusCode::OK, Bytes::new()), &version))
}

/// An audit segment's replacement begins with the bytes stored at `version`.
fn extends(ctx: &Ctx, kind: Kind, name: &str, data: &[u8], version: Option<&Version>) -> Result<(), Fail> {
    let (old, v) = match ctx.backend.get_versioned(kind, name) {
        Ok(x) => x,
        Err(VaultError::NotFound { .. }) => return Err(VaultError::Conflict { kind, name: name.into() }.into()),
        Err(e) => return Err(e.into()),
    };
    if version.is_some_and(|want| *want != v) {
        return Err(VaultError::Conflict { kind, name: name.into() }.into());
    }
    if !data.starts_with(&old) {
        return Err(Fail::new(
            ErrorCode::NameMismatch,
            format!("{kind}/{name}: a replacement of an audit segment must begin with the bytes already stored"),
        ));
    }
    Ok(())
}

async fn list(ctx: Ctx, kind: Kind, prefix: String, after: String) -> Result<Response<OutBody>, Fail> {
    blocking(move || {
        let mut names = Vec::new();
        let mut more = false;
        for n in ctx.backend.list(kind, &prefix)? {
            if n <= after {
                continue;
            }
            if !ctx.shared.grants.readable(&ctx.vault, &ctx.host, kind, &n)? {
                continue;
            }
            if names.len() == LIST_PAGE {
                more = true;
                break;
            }
            names.push(n);
        }
        let mut body = names.join("\n");
        if !body.is_empty() {
            body.push('\n');
        }
        let mut r = full(StatusCode::OK, body);
        if more {
            let _ = r.headers_mut().insert(MORE_HEADER, HeaderValue::from_static("1"));
        }
        Ok(r)
    })
    .await
}

async fn missing(ctx: Ctx, body: Incoming) -> Result<Response<OutBody>, Fail> {
    let body = small_body(body, protocol::MAX_SMALL_BODY).await?;
    let objects = parse_object_lines(&body)?;
    blocking(move || {
        let mut out = String::new();
        for (kind, name) in objects {
            let there = ctx.shared.grants.readable(&ctx.vault, &ctx.host, kind, &name)?
                && ctx.backend.size(kind, &name)?.is_some();
            if !there {
                out.push_str(&protocol::object_lines([(kind, name.as_str())]));
            }
        }
        Ok(full(StatusCode::OK, out))
    })
    .await
}

async fn delete(ctx: Ctx, kind: Kind, name: String) -> Result<Response<OutBody>, Fail> {
    blocking(move || {
        let exists = ctx.backend.size(kind, &name)?.is_some();
        if kind == Kind::Lease && !exists {
            return Err(VaultError::NotFound { kind, name }.into());
        }
        ctx.allow(Op::Delete, kind, &name, exists)?;
        ctx.backend.delete(kind, &name)?;
        Ok(full(StatusCode::OK, Bytes::new()))
    })
    .await
}
