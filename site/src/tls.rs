//! TLS for the vault server and its clients: TLS 1.3 only, ALPN `h2`,
//! mutual authentication against the site's own CA (rustls with ring; no
//! OpenSSL).
//!
//! The server verifies a client certificate against the site CA but lets a
//! connection without one through the handshake: such a connection may only
//! enroll (`POST /v1/enroll`), which `server.rs` enforces per request. Which
//! host a certificate belongs to, and whether it is revoked, is decided per
//! request by its fingerprint ([`fingerprint`]), not here, so a revocation
//! reaches open connections too.
//!
//! Failures are typed ([`TlsError`]) so that a host reads the cause: an
//! unknown CA, an expired or revoked certificate, a wrong server name, or a
//! peer that does not speak TLS at all.

use std::io;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{AlertDescription, CertificateError, ClientConfig, RootCertStore, ServerConfig};

use crate::protocol::ALPN_H2;

/// Why TLS failed, or could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file that holds no certificate or key, or a bad one.
    #[error("{what}: {why}")]
    BadPem {
        /// What it should hold, e.g. "the site CA certificate".
        what: &'static str,
        /// What is wrong.
        why: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(String),
    /// The server's certificate is not signed by the site CA this host
    /// enrolled with.
    #[error(
        "the server's certificate is not signed by this host's site CA (a different site, or a server \
         impersonating it); check the URL, or enroll again with `lifeboat site join`"
    )]
    UnknownCa,
    /// The server's certificate does not name the host of the URL.
    #[error(
        "the server's certificate does not name {name} (wrong server name): use a name or address listed in the \
         site's site.toml"
    )]
    WrongName {
        /// The name the URL gave.
        name: String,
    },
    /// The server's certificate expired (or is not valid yet).
    #[error("the server's certificate has expired (or is not valid yet): renew it at the site")]
    ServerCertificateExpired,
    /// The server refused this host's certificate as expired.
    #[error("the server refused this host's certificate as expired: enroll the host again with `lifeboat site join`")]
    HostCertificateExpired,
    /// The server refused this host's certificate: not signed by its CA, or
    /// revoked.
    #[error(
        "the server refused this host's certificate ({alert}): it is not from this site's CA, or was revoked; \
         enroll the host again"
    )]
    HostCertificateRefused {
        /// The TLS alert received.
        alert: String,
    },
    /// The connection closed in the middle of the handshake: a server
    /// stopping or overloaded, a link cut by a firewall or proxy, or a
    /// service on that port that is not a vault server.
    #[error(
        "the connection to the vault server at {peer} closed during the TLS handshake ({why}): the server may be \
         stopping or overloaded, or the link cut between here and there; check that `lifeboat vault serve` runs \
         there and the network path is open"
    )]
    Closed {
        /// The address.
        peer: String,
        /// The OS error.
        why: String,
    },
    /// The peer does not speak TLS (a plain TCP service on that port).
    #[error("the server at {peer} is not a Lifeboat vault server speaking TLS ({why})")]
    NotTls {
        /// The address.
        peer: String,
        /// What it sent.
        why: String,
    },
    /// The peer speaks TLS but not HTTP/2.
    #[error("the server at {peer} does not speak HTTP/2 (ALPN h2): it is not a Lifeboat vault server")]
    NoH2 {
        /// The address.
        peer: String,
    },
    /// Any other TLS failure.
    #[error("TLS with {peer}: {why}")]
    Other {
        /// The address.
        peer: String,
        /// What rustls said.
        why: String,
    },
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Certificates in a PEM string.
pub fn certs_from_pem(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadPem { what, why: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::BadPem { what, why: "no certificate in it".into() });
    }
    Ok(certs)
}

fn key_from_pem(what: &'static str, pem: &str) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| TlsError::BadPem { what, why: e.to_string() })
}

fn roots(ca_pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem("the site CA certificate", ca_pem)? {
        roots.add(c).map_err(|e| TlsError::BadPem { what: "the site CA certificate", why: e.to_string() })?;
    }
    Ok(Arc::new(roots))
}

/// The server's configuration: TLS 1.3, ALPN h2, client certificates
/// verified against `ca_pem` but optional.
pub fn server_config(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs_from_pem("the server certificate", cert_pem)?, key_from_pem("the server key", key_pem)?)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// A host's configuration: TLS 1.3, ALPN h2, the server verified against
/// `ca_pem`, the host's certificate presented (none for enrollment).
pub fn client_config(ca_pem: &str, cert_and_key: Option<(&str, &str)>) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots(ca_pem)?);
    let mut config = match cert_and_key {
        Some((cert, key)) => builder
            .with_client_auth_cert(certs_from_pem("the host certificate", cert)?, key_from_pem("the host key", key)?)
            .map_err(|e| TlsError::Config(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(Arc::new(config))
}

/// The name a host checks the server's certificate against.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::WrongName { name: host.to_string() })
}

/// A certificate's fingerprint: BLAKE3 of its DER, in hex (what
/// `SITE/hosts/HOST.toml` records).
pub fn fingerprint(der: &[u8]) -> String {
    blake3::hash(der).to_hex().to_string()
}

/// What a failed client handshake (or the first read after it, where TLS
/// 1.3 delivers the server's verdict on the host's certificate) means.
pub fn classify(peer: &str, server_host: &str, e: &io::Error) -> TlsError {
    let Some(tls) = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) else {
        // Past the handshake, tokio-rustls hands the alert on as text.
        let text = e.to_string();
        if let Some(alert) = text.strip_prefix("received fatal alert: ") {
            return match alert {
                "CertificateExpired" => TlsError::HostCertificateExpired,
                "NoApplicationProtocol" => TlsError::NoH2 { peer: peer.into() },
                "UnknownCA" | "BadCertificate" | "CertificateRevoked" | "CertificateUnknown" | "DecryptError" => {
                    TlsError::HostCertificateRefused { alert: alert.into() }
                }
                _ => TlsError::Other { peer: peer.into(), why: text.clone() },
            };
        }
        return match e.kind() {
            io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset => {
                TlsError::Closed { peer: peer.into(), why: e.to_string() }
            }
            _ => TlsError::Other { peer: peer.into(), why: e.to_string() },
        };
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => TlsError::UnknownCa,
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                TlsError::WrongName { name: server_host.into() }
            }
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. } => TlsError::ServerCertificateExpired,
            other => TlsError::Other { peer: peer.into(), why: format!("the server's certificate: {other:?}") },
        },
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => TlsError::HostCertificateExpired,
        rustls::Error::AlertReceived(
            a @ (AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError),
        ) => TlsError::HostCertificateRefused { alert: format!("{a:?}") },
        rustls::Error::AlertReceived(AlertDescription::NoApplicationProtocol) => TlsError::NoH2 { peer: peer.into() },
        rustls::Error::InvalidMessage(m) => {
            TlsError::NotTls { peer: peer.into(), why: format!("it answered with bytes that are not TLS: {m:?}") }
        }
        rustls::Error::InappropriateHandshakeMessage { .. } | rustls::Error::InappropriateMessage { .. } => {
            TlsError::NotTls { peer: peer.into(), why: tls.to_string() }
        }
        other => TlsError::Other { peer: peer.into(), why: other.to_string() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_closed_mid_handshake_says_so_not_that_the_server_is_another_service() {
        for kind in [io::ErrorKind::UnexpectedEof, io::ErrorKind::ConnectionReset] {
            let t = classify("127.0.0.1:7443", "127.0.0.1", &io::Error::new(kind, "gone"));
            assert!(matches!(t, TlsError::Closed { .. }), "{t:?}");
            let text = t.to_string();
            assert!(text.contains("closed during the TLS handshake") && text.contains("vault serve"), "{text}");
            assert!(!text.contains("not a Lifeboat vault server"), "{text}");
        }
    }
}
