//! The host's side: [`RemoteBackend`], a [`vault::Backend`] over one HTTP/2
//! connection to a vault server (`lifeboat://HOST:PORT/VAULT`).
//!
//! Synchronous like every backend, over its own small tokio runtime (one
//! worker, which drives the connection). Many threads may call at once:
//! their requests are streams of the one connection. A broken connection is
//! reconnected before the next request; idempotent reads (GET, HEAD, list,
//! missing) are retried a few times across a break; a write is never
//! retried blindly (a conditional write that may have happened is reported,
//! not repeated). A pack streams through [`Backend::writer`]: each piece is
//! queued in a bounded channel that HTTP/2 flow control drains, so a
//! shipper building a pack is held back by the link, and the pack is never
//! held whole a second time; its name goes in the trailer `lifeboat-name`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body::{Frame, SizeHint};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;
use vault::backend::check_name;
use vault::{Backend, Kind, ObjectWriter, VaultError, Version};

use crate::protocol::{
    self, etag, object_lines, object_path, parse_etag, parse_names, parse_object_lines, ErrorBody, ErrorCode,
    MORE_HEADER, NAME_TRAILER, SIZE_HEADER,
};
use crate::server::{ChanBody, OutBody, CONNECTION_WINDOW, STREAM_WINDOW};
use crate::tls::{classify, client_config, server_name, TlsError};

/// A host's credentials for a site (PEM strings, from `lifeboat site join`).
#[derive(Clone)]
pub struct Credentials {
    /// The site CA's certificate.
    pub ca_pem: String,
    /// The host's certificate.
    pub cert_pem: String,
    /// The host's private key.
    pub key_pem: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// An answer: status, headers, body.
type Answer = (StatusCode, HeaderMap, Bytes);

/// Reads are tried this many times across broken connections.
const READ_TRIES: u32 = 3;
/// Pieces of a streamed pack queued ahead of the connection.
const WRITE_QUEUE: usize = 4;

/// How long a host waits on a vault server before it calls the link broken.
///
/// A stalled link (packets dropped, no reset) otherwise holds a cycle until
/// the kernel gives up on the TCP connection, which takes many minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To make a connection: TCP connect plus the TLS and HTTP/2 handshakes.
    pub connect: Duration,
    /// No byte received for this long while requests are open fails them:
    /// after half of it the host pings the server (HTTP/2 PING), and a ping
    /// unanswered for the other half closes the connection. A slow link
    /// that moves bytes is not cut off.
    pub progress: Duration,
}

impl Timeouts {
    /// Both limits at `secs` seconds (at least one).
    pub fn secs(secs: u64) -> Timeouts {
        let d = Duration::from_secs(secs.max(1));
        Timeouts { connect: d, progress: d }
    }
}

impl Default for Timeouts {
    /// 60 s each: generous for a WAN round trip, short enough that a dead
    /// link fails a cycle within about three minutes (the stalled request,
    /// then a retried read and one more request each wait out a limit).
    fn default() -> Timeouts {
        Timeouts::secs(60)
    }
}

/// A vault on a vault server; see the module documentation.
pub struct RemoteBackend {
    rt: tokio::runtime::Runtime,
    timeouts: Timeouts,
    host: String,
    port: u16,
    vault: String,
    tls: Arc<rustls::ClientConfig>,
    /// The connection, and how many were made (to reconnect once per break).
    conn: Mutex<(Option<Live>, u64)>,
    /// When the last connection attempt timed out, and why: requests within
    /// the connect timeout after it fail at once instead of each waiting it
    /// out again on a dead link.
    dial_failed: Mutex<Option<(std::time::Instant, String)>>,
    /// What ended the last connection that failed on TLS (a refused host
    /// certificate shows only there, after the handshake).
    cause: Arc<Mutex<Option<TlsError>>>,
}

/// A connection: its request handle and a flag its driver sets when it ends.
#[derive(Clone)]
struct Live {
    send: SendRequest<OutBody>,
    ended: watch::Receiver<bool>,
}

/// A request's failure before any answer.
enum Transport {
    /// The connection could not be made (TLS refused, no server): not retried.
    Connect(VaultError),
    /// The connection broke; the request may or may not have reached the server.
    Broken(String),
}

impl RemoteBackend {
    /// Connects to the vault `vault` of the server at `url_host:port`,
    /// checking its certificate against the site CA and `url_host`, and
    /// presenting the host's certificate. Fails with
    /// [`VaultError::Unreachable`] (its source a [`TlsError`]) or
    /// [`VaultError::Refused`] (revoked, not enrolled for the vault).
    pub fn connect(url_host: &str, port: u16, vault: &str, creds: &Credentials) -> Result<RemoteBackend, VaultError> {
        RemoteBackend::connect_with(url_host, port, vault, creds, Timeouts::default())
    }

    /// [`RemoteBackend::connect`] with explicit [`Timeouts`].
    pub fn connect_with(
        url_host: &str,
        port: u16,
        vault: &str,
        creds: &Credentials,
        timeouts: Timeouts,
    ) -> Result<RemoteBackend, VaultError> {
        let location = format!("lifeboat://{url_host}:{port}/{vault}");
        let unreachable = |source: Box<dyn std::error::Error + Send + Sync>| VaultError::Unreachable {
            location: location.clone(),
            source,
        };
        protocol::check_vault_name(vault).map_err(|e| unreachable(Box::new(e)))?;
        let tls = client_config(&creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem)))
            .map_err(|e| unreachable(Box::new(e)))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("vault-client")
            .enable_all()
            .build()
            .map_err(|e| unreachable(Box::new(e)))?;
        let b = RemoteBackend {
            rt,
            timeouts,
            host: url_host.to_string(),
            port,
            vault: vault.to_string(),
            tls,
            conn: Mutex::new((None, 0)),
            dial_failed: Mutex::new(None),
            cause: Arc::new(Mutex::new(None)),
        };
        // One request at once: TLS 1.3 delivers the server's verdict on the
        // host's certificate only after the handshake, and the server
        // answers for revocation and enrollment.
        let path = format!("/v1/vaults/{vault}/list/config?prefix=config");
        let what = "connecting";
        let (status, h, body) = b.call(Method::GET, &path, HeaderMap::new(), Bytes::new(), true, what)?;
        if !status.is_success() {
            return Err(b.error(Kind::Config, "config", what, status, &h, &body));
        }
        Ok(b)
    }

    fn location_of(&self) -> String {
        format!("lifeboat://{}:{}/{}", self.host, self.port, self.vault)
    }

    async fn dial(&self) -> Result<Live, VaultError> {
        let peer = format!("{}:{}", self.host, self.port);
        let unreachable = |e: TlsError| VaultError::Unreachable { location: self.location_of(), source: Box::new(e) };
        let limit = self.timeouts.connect;
        let tcp = tokio::time::timeout(limit, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| {
                self.timed_out(format!(
                    "no TCP connection within {} s: check the network path to the site and that `lifeboat vault \
                     serve` runs there",
                    limit.as_secs()
                ))
            })?
            .map_err(|e| VaultError::Unreachable { location: self.location_of(), source: Box::new(e) })?;
        let _ = tcp.set_nodelay(true);
        let name = server_name(&self.host).map_err(unreachable)?;
        let tls = tokio::time::timeout(limit, TlsConnector::from(self.tls.clone()).connect(name, tcp))
            .await
            .map_err(|_| {
                self.timed_out(format!(
                    "no TLS handshake with {peer} within {} s: a stalled link, or not a vault server; check the \
                     network path to the site",
                    limit.as_secs()
                ))
            })?
            .map_err(|e| unreachable(classify(&peer, &self.host, &e)))?;
        if tls.get_ref().1.alpn_protocol() != Some(protocol::ALPN_H2) {
            return Err(unreachable(TlsError::NoH2 { peer }));
        }
        let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        let _ = builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_frame_size(crate::server::MAX_FRAME)
            .max_header_list_size(protocol::MAX_HEADER_LIST)
            .keep_alive_interval(self.timeouts.progress / 2)
            .keep_alive_timeout(self.timeouts.progress / 2);
        let (send, conn) = tokio::time::timeout(limit, builder.handshake(TokioIo::new(tls)))
            .await
            .map_err(|_| self.timed_out(format!("no HTTP/2 handshake within {} s: a stalled link", limit.as_secs())))?
            .map_err(|e| VaultError::Unreachable { location: self.location_of(), source: Box::new(e) })?;
        let (done, ended) = watch::channel(false);
        let (cause, peer, host) = (self.cause.clone(), peer.clone(), self.host.clone());
        drop(tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "lifeboat: the vault server connection ended: {e}");
                if let Some(t) = tls_cause(&peer, &host, &e) {
                    *cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(t);
                }
            }
            let _ = done.send(true);
        }));
        Ok(Live { send, ended })
    }

    /// A connection attempt that timed out: remembered (see `dial_failed`).
    fn timed_out(&self, why: String) -> VaultError {
        *self.dial_failed.lock().unwrap_or_else(|p| p.into_inner()) = Some((std::time::Instant::now(), why.clone()));
        VaultError::Unreachable { location: self.location_of(), source: why.into() }
    }

    /// The current connection (made if there is none), and its number.
    async fn sender(&self) -> Result<(Live, u64), VaultError> {
        {
            let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(s), n) = &*guard {
                if !s.send.is_closed() {
                    return Ok((s.clone(), *n));
                }
            }
        }
        if let Some((at, why)) = &*self.dial_failed.lock().unwrap_or_else(|p| p.into_inner()) {
            if at.elapsed() < self.timeouts.connect {
                return Err(VaultError::Unreachable {
                    location: self.location_of(),
                    source: format!("{why} (a moment ago; not tried again yet)").into(),
                });
            }
        }
        let s = self.dial().await?;
        *self.dial_failed.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        guard.1 += 1;
        guard.0 = Some(s.clone());
        Ok((s, guard.1))
    }

    fn forget(&self, n: u64) {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1 == n {
            guard.0 = None;
        }
    }

    /// Why a request failed before an answer: the TLS or I/O cause when
    /// there is one (a refused certificate shows here, after the handshake).
    async fn transport(&self, e: &hyper::Error, mut ended: watch::Receiver<bool>) -> Transport {
        let peer = format!("{}:{}", self.host, self.port);
        let t = match tls_cause(&peer, &self.host, e) {
            Some(t) => Some(t),
            None => {
                // The connection's own error says why (its driver is ending).
                let _ = tokio::time::timeout(Duration::from_secs(5), ended.wait_for(|e| *e)).await;
                self.cause.lock().unwrap_or_else(|p| p.into_inner()).take()
            }
        };
        match t {
            Some(t) => {
                Transport::Connect(VaultError::Unreachable { location: self.location_of(), source: Box::new(t) })
            }
            None => Transport::Broken(e.to_string()),
        }
    }

    async fn send_once(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<(StatusCode, HeaderMap, Bytes), Transport> {
        let (live, n) = self.sender().await.map_err(Transport::Connect)?;
        let mut s = live.send.clone();
        let mut req = Request::builder()
            .method(method.clone())
            .uri(format!("https://{}:{}{path}", self.host, self.port))
            .body(OutBody::Full(Full::new(body)))
            .expect("a valid request");
        *req.headers_mut() = headers.clone();
        if let Err(e) = s.ready().await {
            self.forget(n);
            return Err(self.transport(&e, live.ended.clone()).await);
        }
        let resp = match s.send_request(req).await {
            Ok(r) => r,
            Err(e) => {
                self.forget(n);
                return Err(self.transport(&e, live.ended.clone()).await);
            }
        };
        let (parts, body) = resp.into_parts();
        match body.collect().await {
            Ok(c) => Ok((parts.status, parts.headers, c.to_bytes())),
            Err(e) => {
                self.forget(n);
                Err(self.transport(&e, live.ended).await)
            }
        }
    }

    /// One request; reads (`idempotent`) are tried again across a broken
    /// connection. Answers with an error status are returned as they are.
    fn call(
        &self,
        method: Method,
        path: &str,
        headers: HeaderMap,
        body: Bytes,
        idempotent: bool,
        what: &str,
    ) -> Result<(StatusCode, HeaderMap, Bytes), VaultError> {
        self.rt.block_on(async {
            let mut tries = 0;
            loop {
                tries += 1;
                match self.send_once(&method, path, &headers, body.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(Transport::Connect(e)) => return Err(e),
                    Err(Transport::Broken(why)) if idempotent && tries < READ_TRIES => {
                        tracing::debug!(%why, "lifeboat: the vault server connection broke ({why}); trying the read again");
                    }
                    Err(Transport::Broken(why)) => {
                        let what = if idempotent {
                            what.to_string()
                        } else {
                            format!("{what} (not retried: it may have been done; check, then retry)")
                        };
                        return Err(self.broken(&what, &why));
                    }
                }
            }
        })
    }

    /// A connection that broke (reset, closed, or silent past the progress
    /// timeout) while doing `what`: says what to do.
    fn broken(&self, what: &str, why: &str) -> VaultError {
        VaultError::Unreachable {
            location: self.location_of(),
            source: format!(
                "the connection broke while {what}: {why} (a link that moves no byte for {} s counts as broken; \
                 LIFEBOAT_VAULT_TIMEOUT sets that limit); check the network path to the site and that `lifeboat \
                 vault serve` runs there: the next cycle sends what the vault still lacks",
                self.timeouts.progress.as_secs()
            )
            .into(),
        }
    }

    /// Maps an error answer onto a [`VaultError`].
    fn error(
        &self,
        kind: Kind,
        name: &str,
        what: &str,
        status: StatusCode,
        headers: &HeaderMap,
        body: &[u8],
    ) -> VaultError {
        let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
        let mut message =
            parsed.as_ref().map_or_else(|| String::from_utf8_lossy(body).into_owned(), |b| b.message.clone());
        if message.trim().is_empty() {
            // A HEAD answer has no body to say why.
            message = match status.as_u16() {
                403 => "HTTP 403: the server's rights refuse it (a host reads only the objects it wrote; a GET of \
                        the same object says more)"
                    .into(),
                s => format!("HTTP {s}, no reason given"),
            };
        }
        let code = parsed.as_ref().and_then(|b| ErrorCode::from_code(&b.error));
        let object = format!("{}/{name}", kind.prefix());
        match (status.as_u16(), code) {
            (404, _) => VaultError::NotFound { kind, name: name.into() },
            (412, Some(ErrorCode::Exists)) => VaultError::AlreadyExists { kind, name: name.into() },
            (412, _) => VaultError::Conflict { kind, name: name.into() },
            (416, _) => {
                let size = headers
                    .get(http::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("bytes */"))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                let (offset, end) = parse_what_range(what);
                VaultError::ShortObject { kind, name: name.into(), size, offset, end }
            }
            (400, Some(ErrorCode::BadName)) => {
                VaultError::BadName { name: name.into(), why: "refused by the vault server" }
            }
            (401 | 403, _) => {
                VaultError::Refused { location: self.location_of(), request: what.to_string(), why: message }
            }
            (413 | 422, _) => VaultError::Invalid { object, detail: format!("the vault server refused it: {message}") },
            (507, _) => VaultError::Io {
                what: "storing on the vault server (the recovery site's disk is full: free space or grow the \
                       vault's filesystem at the site, e.g. `lifeboat vault gc` there; the next cycle retries)",
                path: PathBuf::from(self.location_of()),
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            },
            _ => VaultError::Io {
                what: "a request to the vault server",
                path: PathBuf::from(self.location_of()),
                source: std::io::Error::other(format!("{what}: {status}: {message}")),
            },
        }
    }

    fn local_name_check(kind: Kind, name: &str) -> Result<(), VaultError> {
        check_name(name)?;
        if matches!(kind, Kind::Pack | Kind::Page) && (name.len() < 3 || name.contains('/')) {
            return Err(VaultError::BadName { name: name.into(), why: "pack and page names are single hex ids" });
        }
        Ok(())
    }

    fn version_of(headers: &HeaderMap, kind: Kind, name: &str) -> Result<Version, VaultError> {
        headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_etag(v).ok())
            .map(Version::new)
            .ok_or_else(|| VaultError::Invalid {
                object: format!("{}/{name}", kind.prefix()),
                detail: "the vault server answered without an ETag".into(),
            })
    }

    fn put_with(
        &self,
        kind: Kind,
        name: &str,
        data: &[u8],
        cond: Option<(&'static str, String)>,
    ) -> Result<Version, VaultError> {
        Self::local_name_check(kind, name)?;
        let mut headers = HeaderMap::new();
        if let Some((h, v)) = cond {
            let _ = headers
                .insert(h, HeaderValue::from_str(&v).map_err(|_| VaultError::Conflict { kind, name: name.into() })?);
        }
        let what = format!("storing {}/{name}", kind.prefix());
        let path = object_path(&self.vault, kind, name);
        let (status, h, body) = self.call(Method::PUT, &path, headers, Bytes::copy_from_slice(data), false, &what)?;
        if !status.is_success() {
            return Err(self.error(kind, name, &what, status, &h, &body));
        }
        Ok(Self::version_of(&h, kind, name).unwrap_or_else(|_| Version::of_contents(data)))
    }
}

/// `(offset, end)` from a "reading bytes A..B of …" description.
fn parse_what_range(what: &str) -> (u64, u64) {
    let Some(rest) = what.strip_prefix("reading bytes ") else { return (0, 0) };
    let Some((range, _)) = rest.split_once(' ') else { return (0, 0) };
    let Some((a, b)) = range.split_once("..") else { return (0, 0) };
    (a.parse().unwrap_or(0), b.parse().unwrap_or(0))
}

impl Backend for RemoteBackend {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.put_with(kind, name, data, None).map(|_| ())
    }

    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<Version, VaultError> {
        self.put_with(kind, name, data, Some(("if-none-match", "*".into())))
    }

    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, Version), VaultError> {
        Self::local_name_check(kind, name)?;
        let what = format!("reading {}/{name}", kind.prefix());
        let path = object_path(&self.vault, kind, name);
        let (status, h, body) = self.call(Method::GET, &path, HeaderMap::new(), Bytes::new(), true, &what)?;
        if !status.is_success() {
            return Err(self.error(kind, name, &what, status, &h, &body));
        }
        let v = Self::version_of(&h, kind, name).unwrap_or_else(|_| Version::of_contents(&body));
        Ok((body.to_vec(), v))
    }

    fn replace_if(&self, kind: Kind, name: &str, data: &[u8], version: &Version) -> Result<Version, VaultError> {
        if parse_etag(&etag(version.as_str())).is_err() {
            return Err(VaultError::Conflict { kind, name: name.into() });
        }
        self.put_with(kind, name, data, Some(("if-match", etag(version.as_str()))))
    }

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        self.get_versioned(kind, name).map(|(d, _)| d)
    }

    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        Self::local_name_check(kind, name)?;
        let end = offset.saturating_add(len);
        if len == 0 {
            // HTTP cannot ask for no bytes: the size says whether the range is in the object.
            let size = self.size(kind, name)?.ok_or(VaultError::NotFound { kind, name: name.into() })?;
            if offset > size {
                return Err(VaultError::ShortObject { kind, name: name.into(), size, offset, end });
            }
            return Ok(Vec::new());
        }
        if offset.checked_add(len).is_none() {
            let size = self.size(kind, name)?.ok_or(VaultError::NotFound { kind, name: name.into() })?;
            return Err(VaultError::ShortObject { kind, name: name.into(), size, offset, end });
        }
        let what = format!("reading bytes {offset}..{end} of {}/{name}", kind.prefix());
        let mut headers = HeaderMap::new();
        let range = HeaderValue::from_str(&format!("bytes={offset}-{}", end - 1)).expect("digits");
        let _ = headers.insert(http::header::RANGE, range);
        let path = object_path(&self.vault, kind, name);
        let (status, h, body) = self.call(Method::GET, &path, headers, Bytes::new(), true, &what)?;
        if !status.is_success() {
            return Err(self.error(kind, name, &what, status, &h, &body));
        }
        if body.len() as u64 != len {
            return Err(VaultError::ShortObject {
                kind,
                name: name.into(),
                size: offset + body.len() as u64,
                offset,
                end,
            });
        }
        Ok(body.to_vec())
    }

    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        Self::local_name_check(kind, name)?;
        let what = format!("asking the size of {}/{name}", kind.prefix());
        let path = object_path(&self.vault, kind, name);
        let (status, h, body) = self.call(Method::HEAD, &path, HeaderMap::new(), Bytes::new(), true, &what)?;
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            return Err(self.error(kind, name, &what, status, &h, &body));
        }
        h.get(SIZE_HEADER).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).map(Some).ok_or_else(|| {
            VaultError::Invalid {
                object: format!("{}/{name}", kind.prefix()),
                detail: "the vault server answered without a size".into(),
            }
        })
    }

    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        if !prefix.chars().all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c)) {
            return Ok(Vec::new());
        }
        let mut out: Vec<String> = Vec::new();
        loop {
            let after = out.last().cloned().unwrap_or_default();
            let path = format!("/v1/vaults/{}/list/{}?prefix={prefix}&after={after}", self.vault, kind.prefix());
            let what = format!("listing {}", kind.prefix());
            let (status, h, body) = self.call(Method::GET, &path, HeaderMap::new(), Bytes::new(), true, &what)?;
            if !status.is_success() {
                return Err(self.error(kind, prefix, &what, status, &h, &body));
            }
            let names = parse_names(&body).map_err(|e| VaultError::Invalid {
                object: kind.prefix().into(),
                detail: format!("the vault server's listing: {e}"),
            })?;
            out.extend(names);
            if h.get(MORE_HEADER).is_none() {
                return Ok(out);
            }
        }
    }

    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        Self::local_name_check(kind, name)?;
        let what = format!("deleting {}/{name}", kind.prefix());
        let path = object_path(&self.vault, kind, name);
        let (status, h, body) = self.call(Method::DELETE, &path, HeaderMap::new(), Bytes::new(), false, &what)?;
        if !status.is_success() {
            return Err(match self.error(kind, name, &what, status, &h, &body) {
                VaultError::Refused { location, request, why } if kind != Kind::Lease => VaultError::Refused {
                    location,
                    request,
                    why: format!(
                        "{why} (hosts may delete only their own leases: the vault is append-only for hosts, and \
                         prune and garbage collection run at the site, on the vault's directory)"
                    ),
                },
                other => other,
            });
        }
        Ok(())
    }

    fn missing(&self, kind: Kind, names: &[String]) -> Result<Vec<String>, VaultError> {
        let mut missing = std::collections::HashSet::new();
        for batch in names.chunks(protocol::MAX_MISSING) {
            for n in batch {
                Self::local_name_check(kind, n)?;
            }
            let body = object_lines(batch.iter().map(|n| (kind, n.as_str())));
            let path = format!("/v1/vaults/{}/missing", self.vault);
            let what = format!("asking which {} are missing", kind.prefix());
            let (status, h, answer) =
                self.call(Method::POST, &path, HeaderMap::new(), Bytes::from(body), true, &what)?;
            if !status.is_success() {
                return Err(self.error(kind, "", &what, status, &h, &answer));
            }
            let objects = parse_object_lines(&answer).map_err(|e| VaultError::Invalid {
                object: kind.prefix().into(),
                detail: format!("the vault server's missing answer: {e}"),
            })?;
            missing.extend(objects.into_iter().map(|(_, n)| n));
        }
        Ok(names.iter().filter(|n| missing.contains(*n)).cloned().collect())
    }

    fn remote(&self) -> bool {
        true
    }

    fn location(&self) -> String {
        self.location_of()
    }
    /// The server refuses every delete and replacement from a host.
    fn protection(&self) -> Result<vault::backend::Protection, VaultError> {
        Ok(vault::backend::Protection::AppendOnly)
    }
    /// Ranged reads share the one connection as HTTP/2 streams: at a
    /// round trip of 20 ms, 16 streams of a 1 MiB window each keep about
    /// 800 MB/s in flight.
    fn reads_in_flight(&self) -> usize {
        16
    }
    /// Two packs: the server syncs one (the object, its directory, the
    /// writer's grant) while the next streams in.
    fn writes_in_flight(&self) -> usize {
        2
    }

    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        if kind != Kind::Pack {
            return Ok(None);
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let (done_tx, done_rx) = oneshot::channel();
        let path = format!("/v1/vaults/{}/{}", self.vault, kind.prefix());
        let uri = format!("https://{}:{}{path}", self.host, self.port);
        let sender = self.rt.block_on(self.sender());
        let (live, n) = sender?;
        let (mut s, ended) = (live.send, live.ended);
        drop(self.rt.spawn(async move {
            let req = Request::builder()
                .method(Method::POST)
                .uri(uri)
                .body(OutBody::Chan(ChanBody { rx, hint: SizeHint::default() }))
                .expect("a valid request");
            let r = match s.ready().await {
                Ok(()) => s.send_request(req).await,
                Err(e) => Err(e),
            };
            let r = match r {
                Ok(resp) => {
                    let (parts, body) = resp.into_parts();
                    body.collect().await.map(|c| (parts.status, parts.headers, c.to_bytes()))
                }
                Err(e) => Err(e),
            };
            let _ = done_tx.send(r);
        }));
        Ok(Some(Box::new(RemoteWriter { backend: self, tx: Some(tx), done: Some(done_rx), conn: n, ended, kind })))
    }
}

/// A pack streamed to the server ([`Backend::writer`]).
struct RemoteWriter<'a> {
    backend: &'a RemoteBackend,
    tx: Option<mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>>,
    done: Option<oneshot::Receiver<Result<Answer, hyper::Error>>>,
    conn: u64,
    ended: watch::Receiver<bool>,
    kind: Kind,
}

impl RemoteWriter<'_> {
    /// The upload's end: its answer, or why there is none.
    fn finish(&mut self, name: &str, what: &str) -> Result<(), VaultError> {
        let done = self.done.take().expect("finished once");
        let r = self.backend.rt.block_on(done);
        match r {
            Ok(Ok((status, _, _))) if status.is_success() => Ok(()),
            Ok(Ok((status, h, body))) => Err(self.backend.error(self.kind, name, what, status, &h, &body)),
            Ok(Err(e)) => {
                self.backend.forget(self.conn);
                let t = self.backend.rt.block_on(self.backend.transport(&e, self.ended.clone()));
                Err(match t {
                    Transport::Connect(e) => e,
                    Transport::Broken(why) => self.backend.broken(what, &why),
                })
            }
            Err(_) => Err(VaultError::Unreachable {
                location: self.backend.location_of(),
                source: format!("the upload task ended while {what}").into(),
            }),
        }
    }
}

impl ObjectWriter for RemoteWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        let Some(tx) = &self.tx else {
            return Err(VaultError::Unreachable {
                location: self.backend.location_of(),
                source: "an earlier write of this pack failed".into(),
            });
        };
        // Waits while the queue is full: HTTP/2 flow control, then the
        // server's disk, set the pace.
        if tx.blocking_send(Ok(Frame::data(Bytes::copy_from_slice(data)))).is_err() {
            self.tx = None;
            return self.finish("", "streaming a pack");
        }
        Ok(())
    }

    fn commit(mut self: Box<Self>, name: &str) -> Result<(), VaultError> {
        RemoteBackend::local_name_check(self.kind, name)?;
        let what = format!("storing {}/{name}", self.kind.prefix());
        let Some(tx) = self.tx.take() else { return self.finish(name, &what) };
        let mut trailers = HeaderMap::new();
        let _ = trailers.insert(NAME_TRAILER, HeaderValue::from_str(name).expect("a checked name"));
        let _ = tx.blocking_send(Ok(Frame::trailers(trailers)));
        drop(tx);
        self.finish(name, &what)
    }
}

impl Drop for RemoteWriter<'_> {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            // Resets the stream: the server drops what it staged.
            let _ = tx.try_send(Err(std::io::Error::other("the pack was abandoned")));
        }
    }
}

/// The TLS failure behind `e`, if it is one with a cause a host can act on.
fn tls_cause(peer: &str, host: &str, e: &(dyn std::error::Error + 'static)) -> Option<TlsError> {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        let io =
            c.downcast_ref::<std::io::Error>().or_else(|| c.downcast_ref::<h2::Error>().and_then(h2::Error::get_io));
        if let Some(io) = io {
            let t = classify(peer, host, io);
            if !matches!(t, TlsError::Other { .. } | TlsError::NotTls { .. } | TlsError::Closed { .. }) {
                return Some(t);
            }
        }
        cause = c.source();
    }
    None
}
