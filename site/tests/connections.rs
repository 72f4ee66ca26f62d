//! Connections the vault server must end, alone: one that breaks HTTP/2,
//! one that asks for HTTP/1.1, and an idle one of a host revoked since.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::TestSite;
use vault::{Backend, Kind};

/// A TLS connection to the test server with `config`, on `rt`.
fn tls_connect(
    rt: &tokio::runtime::Runtime,
    port: u16,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(config).connect(name, tcp).await
    })
}

fn host_config(creds: &site::client::Credentials) -> Arc<rustls::ClientConfig> {
    site::tls::client_config(&creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem))).unwrap()
}

#[test]
fn a_connection_that_breaks_http2_is_closed_and_the_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let b = site.connect(&creds, "v");
    b.put(Kind::Lease, "kept", b"still here").unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut tls = tls_connect(&rt, site.port, host_config(&creds)).unwrap();
    let closed = rt.block_on(async {
        // The HTTP/2 preface, then a SETTINGS frame on stream 1 (settings
        // belong to stream 0) of a length no SETTINGS frame has: malformed.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        tls.write_all(&[0x00, 0x00, 0x07, 0x04, 0x00, 0x00, 0x00, 0x00, 0x01]).await.unwrap();
        tls.write_all(&[0xab; 7]).await.unwrap();
        let mut buf = vec![0u8; 4096];
        tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                match tls.read(&mut buf).await {
                    Ok(0) | Err(_) => return true,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or(false)
    });
    assert!(closed, "the server kept a connection that broke HTTP/2 open");
    assert_eq!(b.get(Kind::Lease, "kept").unwrap(), b"still here");
    assert_eq!(site.connect(&creds, "v").get(Kind::Lease, "kept").unwrap(), b"still here");
}

#[test]
fn http1_over_tls_is_refused() {
    let site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let mut http1 = (*host_config(&creds)).clone();
    http1.alpn_protocols = vec![b"http/1.1".to_vec()];
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let Err(e) = tls_connect(&rt, site.port, Arc::new(http1)) else { panic!("an HTTP/1.1 client was let in") };
    assert!(e.to_string().contains("NoApplicationProtocol"), "{e}");
}

#[test]
fn an_idle_connection_of_a_revoked_host_is_closed_by_the_server() {
    use http_body_util::{BodyExt, Full};
    let site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let tls = tls_connect(&rt, site.port, host_config(&creds)).unwrap();
    let ended = rt.block_on(async {
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        drop(tokio::spawn(async move {
            let _ = conn.await;
            let _ = done_tx.send(());
        }));
        let req = http::Request::get(format!("https://localhost:{}/v1/version", site.port))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let _ = resp.into_body().collect().await.unwrap();
        // Idle from here on: only the server's sweep can end it.
        site.revoke("alpha");
        tokio::time::timeout(Duration::from_secs(20), done_rx).await.is_ok()
    });
    assert!(ended, "an idle connection of a revoked host stayed open");
}
