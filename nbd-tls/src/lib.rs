//! NBD over TLS for Lifeboat's filter: X.509 credentials in the directory
//! layout of QEMU's `tls-creds-x509`, rustls (ring, blocking I/O), and mutual
//! authentication.
//!
//! The filter runs the NBD side of `NBD_OPT_STARTTLS` (the TLS-required mode,
//! the option state machine) and knows no encryption (DESIGN.md); it is given
//! a [`filter::nbd::TlsUpgrade`], and this crate's [`ServerCreds`] is that.
//!
//! - [`ServerCreds::load`] reads `DIR/ca-cert.pem`, `DIR/server-cert.pem` and
//!   `DIR/server-key.pem` (what `-object tls-creds-x509,dir=DIR,endpoint=server`
//!   reads) and refuses, naming the file and the fix: a missing or unparsable
//!   file, a key readable by group or others, a server certificate not signed
//!   by the CA, expired or not yet valid, a key that does not match the
//!   certificate, and an expired CA certificate.
//! - Clients must present a certificate signed by `ca-cert.pem`, as QEMU's
//!   server does with `verify-peer=on` (its default): one without, or with one
//!   from another CA, is refused during the TLS handshake.
//! - TLS 1.3 and 1.2, rustls's default ring cipher suites.
//!
//! After the handshake the TLS connection is pumped to a local socket pair on
//! two threads (one per direction), so the filter serves the plaintext end as
//! it serves a unix socket: its reader and its reply writers work in parallel,
//! and EOF or an error on either side closes both.

use std::fmt;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig, ServerConnection};

/// The CA certificate file in a credentials directory (QEMU's name).
pub const CA_CERT: &str = "ca-cert.pem";
/// The server certificate file (QEMU's name).
pub const SERVER_CERT: &str = "server-cert.pem";
/// The server's private key file (QEMU's name).
pub const SERVER_KEY: &str = "server-key.pem";

/// Bytes read from either side of the pump at a time.
const PUMP_BUFFER: usize = 256 * 1024;

/// A credentials directory that cannot be used, with what to do about it.
#[derive(Debug)]
pub struct CredsError(String);

impl fmt::Display for CredsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CredsError {}

/// The server side of NBD TLS, loaded from a QEMU-style credentials
/// directory; give it to the filter as [`filter::nbd::Options::tls`].
pub struct ServerCreds {
    dir: PathBuf,
    config: Arc<ServerConfig>,
}

impl fmt::Debug for ServerCreds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerCreds").field("dir", &self.dir).finish()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// What every error about the directory ends with.
fn layout_hint(dir: &Path) -> String {
    format!(
        "{} must hold {CA_CERT} (the CA that signs the server's and the clients' certificates), {SERVER_CERT} and \
         {SERVER_KEY} (mode 0600), as for QEMU's -object tls-creds-x509,dir={},endpoint=server",
        dir.display(),
        dir.display()
    )
}

impl ServerCreds {
    /// Load and check `dir` (see the crate docs for what is checked).
    pub fn load(dir: &Path) -> Result<ServerCreds, CredsError> {
        let err = |msg: String| CredsError(format!("TLS credentials {}: {msg}", dir.display()));
        let meta = fs::metadata(dir).map_err(|e| err(format!("{e}; {}", layout_hint(dir))))?;
        if !meta.is_dir() {
            return Err(err(format!("not a directory; {}", layout_hint(dir))));
        }
        let ca_path = dir.join(CA_CERT);
        let cert_path = dir.join(SERVER_CERT);
        let key_path = dir.join(SERVER_KEY);
        for path in [&ca_path, &cert_path, &key_path] {
            if let Err(e) = fs::metadata(path) {
                return Err(err(format!("{}: {e}; {}", path.display(), layout_hint(dir))));
            }
        }
        // Before reading the key: a key others can read is no secret.
        let key_meta = fs::metadata(&key_path).map_err(|e| err(format!("{}: {e}", key_path.display())))?;
        let mode = key_meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "{} can be read by {} (mode {mode:04o}): anyone who reads it can pose as this server; run `chmod 600 \
                 {}`, and make a new key and certificate if other users may have read it",
                key_path.display(),
                if mode & 0o007 != 0 { "other users" } else { "its group" },
                key_path.display()
            )));
        }

        let cas = read_certs(&ca_path).map_err(err)?;
        let chain = read_certs(&cert_path).map_err(err)?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| {
            err(format!("{}: no private key could be read ({e}); it must be a PEM private key", key_path.display()))
        })?;

        let now = UnixTime::now();
        let expired = |cert: &CertificateDer<'_>| not_after(cert).filter(|&t| t < now.as_secs());
        if let Some(t) = cas.iter().find_map(expired) {
            return Err(err(format!(
                "{} expired on {}; make a new CA and certificates signed by it (for the server and every client)",
                ca_path.display(),
                date(t)
            )));
        }
        if let Some(t) = expired(&chain[0]) {
            return Err(err(format!(
                "{} expired on {}; make a new server certificate signed by {CA_CERT}",
                cert_path.display(),
                date(t)
            )));
        }
        let mut roots = RootCertStore::empty();
        for ca in &cas {
            roots.add(ca.clone()).map_err(|e| {
                err(format!(
                    "{}: not a usable CA certificate ({e}); it must be the CA's PEM certificate",
                    ca_path.display()
                ))
            })?;
        }
        let roots = Arc::new(roots);

        // The server certificate must chain to the CA and be valid now:
        // else every client refuses it, each with a less clear message.
        let anchors: Vec<_> = roots.roots.clone();
        let leaf = webpki::EndEntityCert::try_from(&chain[0])
            .map_err(|e| err(format!("{}: not a usable X.509 certificate ({e})", cert_path.display())))?;
        let algs = provider().signature_verification_algorithms.all;
        leaf.verify_for_usage(algs, &anchors, &chain[1..], now, webpki::KeyUsage::server_auth(), None, None).map_err(
            |e| match e {
                webpki::Error::CertExpired { not_after, .. } => err(format!(
                    "{} expired on {}; make a new server certificate signed by {CA_CERT}",
                    cert_path.display(),
                    date(not_after.as_secs())
                )),
                webpki::Error::CertNotValidYet { not_before, .. } => err(format!(
                    "{} is valid only from {} (is this host's clock right?)",
                    cert_path.display(),
                    date(not_before.as_secs())
                )),
                webpki::Error::UnknownIssuer => err(format!(
                    "{} is not signed by {}; sign the server certificate with that CA (or put the CA that signed it \
                     in {CA_CERT})",
                    cert_path.display(),
                    ca_path.display()
                )),
                other => err(format!(
                    "{} does not verify against {} as a TLS server certificate: {other}",
                    cert_path.display(),
                    ca_path.display()
                )),
            },
        )?;

        // No CA names in the certificate request: a client then presents
        // what it has, and one from another CA is refused by name
        // (UnknownIssuer) rather than silently sending none.
        let verifier = WebPkiClientVerifier::builder_with_provider(Arc::clone(&roots), provider())
            .clear_root_hint_subjects()
            .build()
            .map_err(|e| err(format!("{}: cannot verify clients with it: {e}", ca_path.display())))?;
        let config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| err(format!("TLS setup: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .map_err(|e| {
                err(format!(
                    "{} does not go with {}: {e}; give the key the certificate was made for",
                    key_path.display(),
                    cert_path.display()
                ))
            })?;
        Ok(ServerCreds { dir: dir.to_owned(), config: Arc::new(config) })
    }

    /// The directory the credentials came from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Result<Vec<_>, _> =
        CertificateDer::pem_file_iter(path).map_err(|e| format!("{}: {e}", path.display()))?.collect();
    let certs = certs.map_err(|e| format!("{}: not a PEM certificate file ({e})", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(certs)
}

impl filter::nbd::TlsUpgrade for ServerCreds {
    fn upgrade(&self, sock: TcpStream, peer: &str, deadline: Instant) -> io::Result<UnixStream> {
        let mut conn = ServerConnection::new(Arc::clone(&self.config)).map_err(io::Error::other)?;
        {
            let mut timed = Deadline { sock: &sock, deadline };
            while conn.is_handshaking() {
                match conn.complete_io(&mut timed) {
                    Ok(_) => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => return Err(e),
                    Err(e) => {
                        return Err(io::Error::new(
                            e.kind(),
                            format!(
                                "{peer}: {e} (clients must present a certificate signed by {})",
                                self.dir.join(CA_CERT).display()
                            ),
                        ))
                    }
                }
            }
        }
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        // The pump bounds what it hands rustls by its own reads.
        conn.set_buffer_limit(None);
        let (plain, inner) = UnixStream::pair()?;
        let shared = Arc::new(Pump { conn: Mutex::new(conn), out: Mutex::new(sock.try_clone()?) });
        let (tcp_in, inner_out, inner_in) = (sock.try_clone()?, inner.try_clone()?, inner);
        let from_net = Arc::clone(&shared);
        thread::Builder::new().name("nbd-tls-in".into()).spawn(move || from_net.net_to_plain(tcp_in, inner_out))?;
        thread::Builder::new().name("nbd-tls-out".into()).spawn(move || shared.plain_to_net(inner_in, sock))?;
        Ok(plain)
    }
}

/// A socket whose reads and writes fail with `TimedOut` once `deadline` has
/// passed: its timeout is set to the time left before each one, so a client
/// that drips bytes gets no longer than one that says nothing.
struct Deadline<'a> {
    sock: &'a TcpStream,
    deadline: Instant,
}

impl Deadline<'_> {
    fn left(&self) -> io::Result<Option<Duration>> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "NBD handshake timed out (in TLS)"));
        }
        Ok(Some(left))
    }
}

impl Read for Deadline<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.set_read_timeout(self.left()?)?;
        (&mut &*self.sock).read(buf)
    }
}

impl Write for Deadline<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.sock.set_write_timeout(self.left()?)?;
        (&mut &*self.sock).write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One TLS connection between its socket and the plaintext socket pair.
/// `conn` is held only to feed or drain rustls; the encrypted bytes go out
/// under `out`, taken before `conn` is released, so records leave in the
/// order rustls sealed them while the other direction goes on.
struct Pump {
    conn: Mutex<ServerConnection>,
    out: Mutex<TcpStream>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Pump {
    /// Move what rustls has to send to the socket; `conn` is released
    /// before the (maybe blocking) write.
    fn flush(&self, mut conn: MutexGuard<'_, ServerConnection>) -> io::Result<()> {
        let mut sealed = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut sealed)?;
        }
        let mut out = lock(&self.out);
        drop(conn);
        out.write_all(&sealed)
    }

    /// Client to filter: decrypt what arrives and pass it on. Ends at EOF,
    /// a TLS error or close_notify, and then closes the filter's read side.
    fn net_to_plain(&self, mut tcp: TcpStream, mut plain: UnixStream) {
        let mut buf = vec![0u8; PUMP_BUFFER];
        let mut clear = Vec::new();
        // The handshake may have read application data already: drain first.
        let mut fed: &[u8] = &[];
        loop {
            clear.clear();
            let mut conn = lock(&self.conn);
            let mut done = false;
            // rustls holds at most a few records of plaintext: feed it the
            // bytes read and drain it in turns.
            loop {
                match drain(&mut conn, &mut clear) {
                    Ok(false) => {}
                    Ok(true) | Err(_) => {
                        done = true;
                        break;
                    }
                }
                if fed.is_empty() {
                    break;
                }
                if conn.read_tls(&mut fed).is_err() || conn.process_new_packets().is_err() {
                    // rustls queued an alert for the client, if it could.
                    done = true;
                    break;
                }
            }
            let flushed = self.flush(conn);
            if plain.write_all(&clear).is_err() || flushed.is_err() || done {
                break;
            }
            let n = match tcp.read(&mut buf) {
                // An EOF without close_notify: what was decrypted went on.
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            fed = &buf[..n];
        }
        let _ = plain.shutdown(Shutdown::Write);
        let _ = tcp.shutdown(Shutdown::Read);
    }

    /// Filter to client: encrypt the replies. Ends when the filter closes its
    /// end or the socket fails; says close_notify and closes the socket.
    fn plain_to_net(&self, mut plain: UnixStream, tcp: TcpStream) {
        let mut buf = vec![0u8; PUMP_BUFFER];
        loop {
            let n = match plain.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut conn = lock(&self.conn);
            if conn.writer().write_all(&buf[..n]).is_err() || self.flush(conn).is_err() {
                let _ = plain.shutdown(Shutdown::Both);
                let _ = tcp.shutdown(Shutdown::Both);
                return;
            }
        }
        let mut conn = lock(&self.conn);
        conn.send_close_notify();
        let _ = self.flush(conn);
        let _ = tcp.shutdown(Shutdown::Both);
        let _ = plain.shutdown(Shutdown::Both);
    }
}

/// Append the plaintext rustls has decrypted to `clear`. `Ok(true)`: the
/// client said close_notify.
fn drain(conn: &mut ServerConnection, clear: &mut Vec<u8>) -> io::Result<bool> {
    loop {
        let at = clear.len();
        clear.resize(at + 64 * 1024, 0);
        let read = conn.reader().read(&mut clear[at..]);
        match read {
            Ok(0) => {
                clear.truncate(at);
                return Ok(true);
            }
            Ok(n) => clear.truncate(at + n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                clear.truncate(at);
                return Ok(false);
            }
            Err(e) => {
                clear.truncate(at);
                return Err(e);
            }
        }
    }
}

/// The notAfter of a DER certificate, in seconds since the epoch; `None` if
/// it cannot be found (rustls and webpki then judge the certificate).
fn not_after(cert: &[u8]) -> Option<u64> {
    // Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version OPTIONAL,
    //   serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter }, ... } }
    let (_, cert_body, _) = der(cert)?;
    let (_, mut tbs, _) = der(cert_body)?;
    let (tag, _) = skip(&mut tbs)?;
    if tag == 0xa0 {
        skip(&mut tbs)?; // serial
    }
    skip(&mut tbs)?; // signature algorithm
    skip(&mut tbs)?; // issuer
    let (_, validity) = skip(&mut tbs)?;
    let (_, _, rest) = der(validity)?;
    let (tag, time, _) = der(rest)?;
    parse_time(tag, time)
}

/// The next DER element of `data`, which moves past it: (tag, contents).
fn skip<'a>(data: &mut &'a [u8]) -> Option<(u8, &'a [u8])> {
    let (tag, body, rest) = der(data)?;
    *data = rest;
    Some((tag, body))
}

/// One DER element: (tag, contents, what follows).
fn der(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *data.first()?;
    let first = *data.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for b in data.get(2..2 + n)? {
            len = (len << 8) | usize::from(*b);
        }
        (len, 2 + n)
    };
    let body = data.get(header..header.checked_add(len)?)?;
    Some((tag, body, &data[header + len..]))
}

/// UTCTime (0x17, YYMMDDHHMMSSZ) or GeneralizedTime (0x18, YYYYMMDDHHMMSSZ).
fn parse_time(tag: u8, t: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(t).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = s.get(0..2)?.parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, s.get(2..)?)
        }
        0x18 => (s.get(0..4)?.parse().ok()?, s.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    // The calendar is jiff's (civil dates, so 9999-12-31 too); a date that
    // does not exist (say February 30) is `None`, and webpki judges.
    let (y, m, d) = (i16::try_from(year).ok()?, i8::try_from(month).ok()?, i8::try_from(day).ok()?);
    let midnight = jiff::civil::Date::new(y, m, d).ok()?.duration_since(jiff::civil::date(1970, 1, 1)).as_secs();
    u64::try_from(midnight + hour * 3600 + min * 60 + sec).ok()
}

/// RFC 3339 (UTC, whole seconds) of seconds since the epoch.
fn date(secs: u64) -> String {
    disk_format::time::rfc3339(secs.saturating_mul(1_000_000_000), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_round_trip() {
        assert_eq!(date(0), "1970-01-01T00:00:00Z");
        assert_eq!(parse_time(0x17, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(date(2_524_607_999), "2049-12-31T23:59:59Z");
        assert_eq!(parse_time(0x18, b"20000229120000Z").map(date).as_deref(), Some("2000-02-29T12:00:00Z"));
        assert_eq!(parse_time(0x17, b"700101000000Z"), Some(0));
        assert_eq!(parse_time(0x18, b"99991231235959Z"), Some(253_402_300_799));
        assert_eq!(parse_time(0x18, b"21000301000000Z"), Some(4_107_542_400));
        // Before the epoch, or not a time: no date (webpki judges).
        assert_eq!(parse_time(0x17, b"691231235959Z"), None);
        assert_eq!(parse_time(0x18, b"2000022912000"), None);
        assert_eq!(parse_time(0x18, b"20001301120000Z"), None);
        assert_eq!(parse_time(0x05, b"20000229120000Z"), None);
    }
}
