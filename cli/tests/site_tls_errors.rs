//! TLS failures between a protected host and its vault server through the
//! CLI (issue 14, point 4), with real processes and the certificates a real
//! site makes (`site init` / `enroll` / `join`): each is a clear error that
//! names its cause and says what to do, exit status 1, and the server logs
//! one line for the refusal and keeps serving. The CLI issues no expired
//! certificate, so that test signs one with the site's own CA through the
//! `site` library and puts it where `site join` put the host's.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::site::{free_port, Site};

const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn arg(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 test path")
}

/// Site A serving vault `main`, and a host `web1` joined to it.
struct World {
    s: Scratch,
    site: Site,
    host: Home,
    key: String,
}

impl World {
    fn new(prefix: &str) -> World {
        let s = Scratch::new(BIN, prefix);
        let root = s.path("a");
        fs::create_dir_all(&root).unwrap();
        let mut site = Site::init(Path::new(BIN), &root);
        let vault = s.path("vaults/main");
        fs::create_dir_all(&vault).unwrap();
        site.serve(&[("main", &vault)]);
        let host = Home::new(BIN, s.path("host-home"));
        site.join("web1", &["main"], &host);
        let key = s.path("k.key");
        host.run_ok(&["key", "new", "--out", arg(&key)]);
        let key = arg(&key).to_string();
        World { s, site, host, key }
    }

    /// `lifeboat vault init URL` from `home`: it must fail.
    fn init_fails(&self, home: &Home, url: &str, what: &str) -> String {
        let o = home.run(&["vault", "init", url, "--key", &self.key]);
        assert_eq!(o.status.code(), Some(1), "{what}: {}", stderr(&o));
        stderr(&o)
    }

    /// Server log lines that refuse something.
    fn refusals(&self) -> usize {
        self.site.log().iter().filter(|l| l.contains("lifeboat vault serve: refused")).count()
    }

    /// The server still serves its enrolled host.
    fn still_serves(&self) {
        let o = self.host.run(&["vault", "init", &self.site.url("main"), "--key", &self.key]);
        let text = stderr(&o);
        assert!(o.status.success() || text.contains("already"), "the server stopped serving: {text}");
    }
}

#[test]
fn a_host_of_another_site_is_told_the_server_is_not_signed_by_its_ca() {
    let w = World::new("lb-tls-ca-");
    // Site B claims site A's address too: its host has credentials for it,
    // from another CA.
    let root_b = w.s.path("b");
    fs::create_dir_all(&root_b).unwrap();
    let mut b = Site::init_on(Path::new(BIN), &root_b, free_port(), &[w.site.port]);
    let vault_b = w.s.path("vaults/b");
    fs::create_dir_all(&vault_b).unwrap();
    b.serve(&[("main", &vault_b)]);
    let other = Home::new(BIN, w.s.path("other-home"));
    b.join("db1", &["main"], &other);
    let before = w.refusals();
    let err = w.init_fails(&other, &w.site.url("main"), "unknown CA");
    assert!(err.contains("not signed by this host's site CA"), "{err}");
    assert!(err.contains(&w.site.url("main")), "the error names the server: {err}");
    assert!(w.site.wait_log("TLS handshake failed", Duration::from_secs(10)), "{:?}", w.site.log());
    assert_eq!(w.refusals(), before + 1, "one log line per refusal: {:?}", w.site.log());
    w.still_serves();
}

#[test]
fn a_revoked_host_is_told_so() {
    let w = World::new("lb-tls-revoked-");
    w.host.run_ok(&["vault", "init", &w.site.url("main"), "--key", &w.key]);
    w.site.home.run_ok(&["site", "revoke", "web1", "--site", arg(&w.site.dir)]);
    let before = w.refusals();
    let err = w.init_fails(&w.host, &w.site.url("main"), "revoked");
    assert!(err.contains("revoked"), "{err}");
    assert!(err.contains(&w.site.url("main")), "the error names the server: {err}");
    assert_eq!(w.refusals(), before + 1, "one log line per refusal: {:?}", w.site.log());
}

#[test]
fn a_wrong_server_name_is_named() {
    let w = World::new("lb-tls-name-");
    // The host reaches the site as `localhost`, which the server's
    // certificate does not name (it names 127.0.0.1): its credentials are
    // the site's, filed under that name.
    let sites = w.host.dir.join("sites");
    let joined = sites.join(format!("127.0.0.1_{}", w.site.port));
    let alias = sites.join(format!("localhost_{}", w.site.port));
    fs::create_dir_all(&alias).unwrap();
    for e in fs::read_dir(&joined).unwrap() {
        let e = e.unwrap();
        fs::copy(e.path(), alias.join(e.file_name())).unwrap();
    }
    let url = format!("lifeboat://localhost:{}/main", w.site.port);
    let before = w.refusals();
    let err = w.init_fails(&w.host, &url, "wrong name");
    assert!(err.contains("does not name localhost (wrong server name)"), "{err}");
    assert!(w.site.wait_log("TLS handshake failed", Duration::from_secs(10)), "{:?}", w.site.log());
    assert_eq!(w.refusals(), before + 1, "one log line per refusal: {:?}", w.site.log());
    w.still_serves();
}

#[test]
fn a_plain_tcp_client_is_refused_and_logged_and_the_server_keeps_serving() {
    let w = World::new("lb-tls-plain-");
    let before = w.refusals();
    let mut c = TcpStream::connect(("127.0.0.1", w.site.port)).unwrap();
    c.write_all(b"GET /v1/version HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut answer = Vec::new();
    let _ = c.read_to_end(&mut answer); // the server closes it
    assert!(!answer.starts_with(b"HTTP/"), "a plain-TCP client got an HTTP answer");
    assert!(w.site.wait_log("a plain-TCP (not TLS) client", Duration::from_secs(10)), "{:?}", w.site.log());
    assert_eq!(w.refusals(), before + 1, "one log line per refusal: {:?}", w.site.log());
    w.still_serves();
}

#[test]
fn an_expired_host_certificate_is_told_to_join_again() {
    let w = World::new("lb-tls-expired-");
    w.host.run_ok(&["vault", "init", &w.site.url("main"), "--key", &w.key]);
    // web1's credentials, replaced by a certificate of the same site's CA
    // that expired an hour ago (and its key).
    let ca = site::site_dir::Site::open(&w.site.dir).unwrap().ca().unwrap();
    let key = site::pki::HostKey::generate().unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let cert =
        ca.issue_host_between("web1", &key.public_key_der(), long_ago, long_ago + Duration::from_secs(3600)).unwrap();
    let creds = w.host.dir.join(format!("sites/127.0.0.1_{}", w.site.port));
    fs::write(creds.join("host.pem"), cert).unwrap();
    fs::write(creds.join("host.key"), key.key_pem()).unwrap();
    let before = w.refusals();
    let err = w.init_fails(&w.host, &w.site.url("main"), "expired");
    assert!(err.contains("refused this host's certificate as expired"), "{err}");
    assert!(err.contains("lifeboat site join"), "the error says what to do: {err}");
    assert!(err.contains(&w.site.url("main")), "the error names the server: {err}");
    assert!(w.site.wait_log("TLS handshake failed", Duration::from_secs(10)), "{:?}", w.site.log());
    // In TLS 1.3 the server judges the client's certificate after the
    // client has finished its handshake: the client's first read may see
    // the connection close before the alert and try the read again (reads
    // are tried up to 3 times across a broken connection), so the server
    // refuses each of those connections once, and logs each.
    let refused = w.refusals() - before;
    assert!((1..=3).contains(&refused), "one log line per refused connection: {:?}", w.site.log());
}
