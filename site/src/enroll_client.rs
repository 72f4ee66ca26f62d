//! The host's half of `POST /v1/enroll`: the `send` that
//! [`crate::enroll::join`] calls in `lifeboat site join`.
//!
//! One request on a connection of its own, over TLS 1.3 and HTTP/2, with no
//! client certificate (the host has none yet), the server checked against
//! the CA in the enrollment file and the HOST of its first address: a
//! stolen file sent to another server gives that server nothing it can
//! use (it cannot answer as the site without the site's key, so the host
//! refuses it before the token is sent).

use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::enroll::{EnrollmentFile, RedeemRequest};
use crate::protocol::{self, EnrollAnswer, EnrollRequest, ErrorBody};
use crate::site_dir::{split_address, SiteError};
use crate::tls::{classify, client_config, server_name, TlsError};

/// How long the whole exchange may take.
pub const ENROLL_TIMEOUT: Duration = Duration::from_secs(60);

/// Why the enrollment request got no certificate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollSendError {
    /// The enrollment file names no usable address.
    #[error(transparent)]
    Address(#[from] SiteError),
    /// No connection to the server.
    #[error("cannot reach the vault server at {address}: {source}")]
    Unreachable {
        /// `HOST:PORT`.
        address: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TLS handshake failed (an unknown CA, a wrong name, not TLS).
    #[error("vault server at {address}: {source}")]
    Tls {
        /// `HOST:PORT`.
        address: String,
        /// The cause.
        source: TlsError,
    },
    /// The server refused the token or the request.
    #[error("the vault server at {address} refused the enrollment ({status}): {message}")]
    Refused {
        /// `HOST:PORT`.
        address: String,
        /// The HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The exchange broke or the answer made no sense.
    #[error("enrolling with the vault server at {address}: {detail}")]
    Protocol {
        /// `HOST:PORT`.
        address: String,
        /// What went wrong.
        detail: String,
    },
}

/// Posts `request` to the server at the first address of `file`, trusting
/// only `file.ca`; returns the host's certificate, PEM.
pub fn post_enroll(file: &EnrollmentFile, request: &RedeemRequest) -> Result<String, EnrollSendError> {
    let address = file.addresses.first().cloned().unwrap_or_default();
    let (host, port) = split_address(&address)?;
    let protocol_error = |detail: String| EnrollSendError::Protocol { address: address.clone(), detail };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| protocol_error(format!("starting the client runtime: {e}")))?;
    let exchange = exchange(&address, &host, port, file, request);
    rt.block_on(async {
        tokio::time::timeout(ENROLL_TIMEOUT, exchange)
            .await
            .unwrap_or_else(|_| Err(protocol_error(format!("no answer within {} s", ENROLL_TIMEOUT.as_secs()))))
    })
}

async fn exchange(
    address: &str,
    host: &str,
    port: u16,
    file: &EnrollmentFile,
    request: &RedeemRequest,
) -> Result<String, EnrollSendError> {
    let tls_error = |source| EnrollSendError::Tls { address: address.to_owned(), source };
    let protocol_error = |detail: String| EnrollSendError::Protocol { address: address.to_owned(), detail };
    let config = client_config(&file.ca, None).map_err(tls_error)?;
    let name = server_name(host).map_err(tls_error)?;
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| EnrollSendError::Unreachable { address: address.to_owned(), source })?;
    let _ = tcp.set_nodelay(true);
    let tls =
        TlsConnector::from(config).connect(name, tcp).await.map_err(|e| tls_error(classify(address, host, &e)))?;
    if tls.get_ref().1.alpn_protocol() != Some(protocol::ALPN_H2) {
        return Err(tls_error(TlsError::NoH2 { peer: address.to_owned() }));
    }
    let mut builder = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
    let _ = builder.timer(TokioTimer::new()).max_header_list_size(protocol::MAX_HEADER_LIST);
    let (mut send, conn) =
        builder.handshake(TokioIo::new(tls)).await.map_err(|e| protocol_error(format!("HTTP/2: {e}")))?;
    let connection = tokio::spawn(conn);
    let body = serde_json::to_vec(&EnrollRequest {
        token: request.token.clone(),
        host: request.host.clone(),
        public_key: crate::pki::hex(&request.public_key_der),
    })
    .map_err(|e| protocol_error(e.to_string()))?;
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("https://{address}/v1/enroll"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| protocol_error(e.to_string()))?;
    let resp = send.send_request(req).await.map_err(|e| protocol_error(format!("sending the request: {e}")))?;
    let status = resp.status();
    let limit = usize::try_from(protocol::MAX_SMALL_BODY).unwrap_or(usize::MAX);
    let bytes = Limited::new(resp.into_body(), limit)
        .collect()
        .await
        .map_err(|e| protocol_error(format!("reading the answer: {e}")))?
        .to_bytes();
    connection.abort();
    if status == StatusCode::OK {
        let answer: EnrollAnswer =
            serde_json::from_slice(&bytes).map_err(|e| protocol_error(format!("the answer is not JSON: {e}")))?;
        return Ok(answer.certificate);
    }
    let message = serde_json::from_slice::<ErrorBody>(&bytes)
        .map(|b| b.message)
        .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
    Err(EnrollSendError::Refused { address: address.to_owned(), status: status.as_u16(), message })
}
