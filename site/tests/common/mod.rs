//! A vault server in-process on a loopback port, with real TLS and real
//! certificates from `site::pki`, hosts kept in a map.
#![allow(dead_code, clippy::cast_possible_truncation, clippy::type_complexity)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use disk_format::{BlockId, Consistency, Geometry, Keys, MasterKey, PackWriter, PageId, Root};
use site::client::{Credentials, RemoteBackend};
use site::pki::{fingerprint_pem, hex, Ca, HostKey};
use site::protocol::EnrollRequest;
use site::server::{HostDirectory, HostStatus, Server, ServerConfig};
use vault::LocalBackend;

/// Hosts by certificate fingerprint.
#[derive(Default)]
pub struct MapHosts {
    pub hosts: Mutex<HashMap<String, (String, Vec<String>, bool)>>,
    pub contacts: Mutex<HashMap<String, u64>>,
}

impl HostDirectory for MapHosts {
    fn lookup(&self, fingerprint: &str) -> HostStatus {
        match self.hosts.lock().unwrap().get(fingerprint) {
            Some((host, _, true)) => HostStatus::Revoked { host: host.clone() },
            Some((host, vaults, false)) => HostStatus::Enrolled { host: host.clone(), vaults: vaults.clone() },
            None => HostStatus::Unknown,
        }
    }
    fn redeem(&self, _request: &EnrollRequest) -> Result<String, String> {
        Err("no tokens in this test".into())
    }
    fn record_contact(&self, host: &str, bytes: u64) {
        *self.contacts.lock().unwrap().entry(host.to_string()).or_default() += bytes;
    }
}

pub struct TestSite {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub hosts: Arc<MapHosts>,
    pub server: Option<Server>,
    pub port: u16,
}

impl TestSite {
    /// A server for the vaults named (each a new vault directory).
    pub fn start(vaults: &[&str]) -> TestSite {
        TestSite::start_named(vaults, &["localhost", "127.0.0.1"])
    }

    /// A server whose certificate names `names`.
    pub fn start_named(vaults: &[&str], names: &[&str]) -> TestSite {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test").unwrap();
        let (cert, key) = ca.issue_server(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let tls = site::tls::server_config(ca.cert_pem(), &cert, &key).unwrap();
        let mut list = Vec::new();
        for v in vaults {
            let path = dir.path().join(v);
            LocalBackend::create(&path).unwrap();
            list.push((v.to_string(), path));
        }
        let hosts = Arc::new(MapHosts::default());
        let config = ServerConfig { tls, vaults: list, grants: dir.path().join("grants"), hosts: hosts.clone() };
        let server = Server::start("127.0.0.1:0".parse().unwrap(), config).unwrap();
        let port = server.local_addr().port();
        TestSite { dir, ca, hosts, server: Some(server), port }
    }

    pub fn vault_dir(&self, vault: &str) -> PathBuf {
        self.dir.path().join(vault)
    }

    /// Enrolls `host` for `vaults`: its credentials.
    pub fn enroll(&self, host: &str, vaults: &[&str]) -> Credentials {
        let key = HostKey::generate().unwrap();
        let cert = self.ca.issue_host(host, &key.public_key_der(), Duration::from_secs(3600)).unwrap();
        let fp = hex(&fingerprint_pem(&cert).unwrap());
        self.hosts.lock_insert(fp, host, vaults);
        Credentials { ca_pem: self.ca.cert_pem().to_string(), cert_pem: cert, key_pem: key.key_pem() }
    }

    pub fn revoke(&self, host: &str) {
        for (_, (h, _, revoked)) in self.hosts.hosts.lock().unwrap().iter_mut() {
            if h == host {
                *revoked = true;
            }
        }
    }

    pub fn connect(&self, creds: &Credentials, vault: &str) -> RemoteBackend {
        RemoteBackend::connect("localhost", self.port, vault, creds).unwrap()
    }
}

impl MapHosts {
    fn lock_insert(&self, fp: String, host: &str, vaults: &[&str]) {
        let _ = self
            .hosts
            .lock()
            .unwrap()
            .insert(fp, (host.to_string(), vaults.iter().map(|v| v.to_string()).collect(), false));
    }
}

/// A valid version 2 pack of `blobs` blobs of `plain` plaintext bytes each
/// (arbitrary bytes stand for sealed blocks: the server never opens them):
/// its name and bytes.
pub fn pack(seed: u64, blobs: usize, plain: usize) -> (String, Vec<u8>) {
    let mut w = PackWriter::new(Vec::new()).unwrap();
    for i in 0..blobs {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&seed.to_le_bytes());
        id[8..16].copy_from_slice(&(i as u64 + 1).to_le_bytes());
        let blob: Vec<u8> = (0..plain + 40).map(|j| (j as u64 * 31 + seed + i as u64) as u8).collect();
        w.add_blob(&BlockId(id), &blob).unwrap();
    }
    let done = w.finish().unwrap();
    (done.id.to_string(), done.out)
}

/// A map page's bytes and name (the server checks only the name).
pub fn page(seed: u64) -> (String, Vec<u8>) {
    let bytes: Vec<u8> = (0..5000u64).map(|i| (i * 7 + seed) as u8).collect();
    (PageId::of(&bytes).to_string(), bytes)
}

fn keys() -> Keys {
    Keys::derive(&MasterKey::from_bytes([7u8; 32]))
}

/// A root of chain `disk` at `sequence` (format 1: its chain is its disk name).
pub fn root(disk: &str, sequence: u64, variant: u8) -> Vec<u8> {
    let root = Root {
        consistency: Consistency::Crash,
        disk_id: [variant; 16],
        disk_name: disk.to_string(),
        host: String::new(),
        namespace: None,
        sequence,
        cut_time_ns: 1_000_000 + sequence,
        cut_generation: sequence,
        geometry: Geometry::new(65536, 65536).unwrap(),
        bytes_shipped: u64::from(variant),
        parent: None,
        pages: vec![PageId([0u8; 32])],
        page_packs: Vec::new(),
        page_pack_of: Vec::new(),
        extension: Vec::new(),
    };
    root.encode_version_1_for_tests(&keys()).unwrap()
}

pub fn root_name(disk: &str, sequence: u64) -> String {
    vault::root_name(disk, sequence)
}

/// Files under `dir/tmp` (nothing staged is left behind).
pub fn tmp_count(vault_dir: &std::path::Path) -> usize {
    std::fs::read_dir(vault_dir.join("tmp")).map(|d| d.count()).unwrap_or(0)
}

/// One request on a connection of its own, made with `config` (a client
/// without a certificate, say): the status and body, or why it failed.
pub fn raw_request(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::{BodyExt, Full};
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| e.to_string())?;
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.map_err(|e| e.to_string())?;
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .map_err(|e| e.to_string())?;
        drop(tokio::spawn(conn));
        let mut req = http::Request::builder().method(method).uri(format!("https://localhost:{port}{path}"));
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req.body(Full::new(bytes::Bytes::new())).unwrap();
        let resp = send.send_request(req).await.map_err(|e| format!("{e:?}"))?;
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes().to_vec();
        Ok((status, body))
    })
}
