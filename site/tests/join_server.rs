//! Enrollment end to end over the wire: a real vault server on loopback
//! (real TLS, the certificates `Site::init` made, the site directory as its
//! host directory), a host joining with `enroll::join` and
//! `enroll_client::post_enroll`, then replicating with the credentials it
//! stored; a second redemption of the same file refused; an enrollment
//! file carrying another site's CA refused before the token is sent; a
//! revocation by another process of the site cutting the open connection.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use site::client::RemoteBackend;
use site::enroll::{self, EnrollmentFile, JoinError};
use site::enroll_client::{post_enroll, EnrollSendError};
use site::server::{Server, ServerConfig};
use site::site_dir::Site;
use site::tls::TlsError;
use vault::{Backend, Kind, LocalBackend, VaultError};

struct Running {
    _tmp: tempfile::TempDir,
    site_dir: std::path::PathBuf,
    home: std::path::PathBuf,
    _server: Server,
    port: u16,
}

fn start() -> Running {
    let tmp = tempfile::tempdir().unwrap();
    let site_dir = tmp.path().join("site");
    let site = Site::init(&site_dir, "dr", &["localhost:8443".to_owned()]).unwrap();
    let (cert, key) = site.server_pem().unwrap();
    let tls = site::tls::server_config(&site.ca_pem().unwrap(), &cert, &key).unwrap();
    let vault = tmp.path().join("main");
    let _ = LocalBackend::create(&vault).unwrap();
    let config = ServerConfig {
        tls,
        vaults: vec![("main".to_owned(), vault)],
        grants: site.grants_dir(),
        hosts: Arc::new(Site::open(&site_dir).unwrap()),
    };
    let server = Server::start("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let port = server.local_addr().port();
    let home = tmp.path().join("home");
    Running { _tmp: tmp, site_dir, home, _server: server, port }
}

/// An enrollment file pointed at the running server's port.
fn enrollment(r: &Running, host: &str) -> EnrollmentFile {
    let mut file =
        Site::open(&r.site_dir).unwrap().enroll(host, &["main".to_owned()], Duration::from_secs(600)).unwrap();
    file.addresses = vec![format!("localhost:{}", r.port)];
    file
}

fn connect(home: &Path, port: u16) -> Result<RemoteBackend, VaultError> {
    let creds = enroll::credentials_for(home, "localhost", port).unwrap();
    RemoteBackend::connect("localhost", port, "main", &creds)
}

#[test]
fn a_host_joins_over_tls_replicates_and_is_cut_off_when_revoked() {
    let r = start();
    let file = enrollment(&r, "web1");
    let dir = enroll::join(&file, &r.home, post_enroll).unwrap();
    assert_eq!(dir, r.home.join(format!("sites/localhost_{}", r.port)));

    let b = connect(&r.home, r.port).unwrap();
    let page = vec![7u8; 4096];
    let name = disk_format::PageId::of(&page).to_string();
    b.put(Kind::Page, &name, &page).unwrap();
    assert_eq!(b.get(Kind::Page, &name).unwrap(), page);

    // The file works once.
    let e = enroll::join(&file, &r.home.join("again"), post_enroll).unwrap_err();
    let JoinError::Send(inner) = &e else { panic!("{e}") };
    let inner = inner.downcast_ref::<EnrollSendError>().unwrap();
    assert!(matches!(inner, EnrollSendError::Refused { status: 403, .. }), "{inner}");
    assert!(e.to_string().contains("used already"), "{e}");

    // The administrator revokes the host (another process: its own Site).
    let _ = Site::open(&r.site_dir).unwrap().revoke("web1").unwrap();
    let e = b.get(Kind::Page, &name).unwrap_err();
    assert!(matches!(&e, VaultError::Refused { .. }) && e.to_string().contains("revoked"), "{e}");
    assert!(matches!(connect(&r.home, r.port), Err(VaultError::Refused { .. })));
}

#[test]
fn re_enrolling_replaces_the_certificate_and_the_old_one_stops_working() {
    let r = start();
    enroll::join(&enrollment(&r, "web1"), &r.home, post_enroll).unwrap();
    let old = connect(&r.home, r.port).unwrap();
    let other_home = r.home.with_file_name("home2");
    enroll::join(&enrollment(&r, "web1"), &other_home, post_enroll).unwrap();
    let new = connect(&other_home, r.port).unwrap();
    let page = vec![9u8; 4096];
    let name = disk_format::PageId::of(&page).to_string();
    new.put(Kind::Page, &name, &page).unwrap();
    assert!(matches!(old.get(Kind::Page, &name), Err(VaultError::Refused { .. })));
}

#[test]
fn an_enrollment_file_with_another_sites_ca_never_sends_its_token() {
    let r = start();
    let mut file = enrollment(&r, "web1");
    let other = tempfile::tempdir().unwrap();
    file.ca = Site::init(&other.path().join("s"), "other", &["localhost:1".to_owned()]).unwrap().ca_pem().unwrap();
    let e = post_enroll(
        &file,
        &site::enroll::RedeemRequest {
            token: file.token.clone(),
            host: "web1".to_owned(),
            public_key_der: site::pki::HostKey::generate().unwrap().public_key_der(),
        },
    )
    .unwrap_err();
    assert!(matches!(e, EnrollSendError::Tls { source: TlsError::UnknownCa, .. }), "{e}");
    // The token is still good with the right CA.
    let good = enrollment(&r, "web2");
    let mut with_token = good.clone();
    with_token.token = file.token.clone();
    with_token.host = "web1".to_owned();
    enroll::join(&with_token, &r.home, post_enroll).unwrap();
}
