//! `lifeboat site` through the real binary (issue 14, enrollment): init,
//! enroll, revoke and hosts against a site directory, with the redemption
//! a server would make done through the library in between; and the errors
//! an administrator meets first (no site, an unknown host, a used
//! directory, a bad address).

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use site::enroll::{EnrollmentFile, RedeemRequest};
use site::pki::HostKey;
use site::site_dir::Site;
use vm_tests::lifeboat::Scratch;

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn hosts_json(s: &Scratch, site: &str) -> Vec<serde_json::Value> {
    let out = s.home.run_ok(&["site", "hosts", "--json", "--site", site]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

#[test]
fn init_enroll_revoke_and_hosts_through_the_binary() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-site-");
    let dir = s.path("site");
    let site = dir.to_str().unwrap();
    s.home.run_ok(&["site", "init", site, "--address", "dr.example:8443", "--address", "[::1]:8443", "--name", "dr"]);
    assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
    assert_eq!(std::fs::metadata(dir.join("ca.key")).unwrap().permissions().mode() & 0o777, 0o600);

    let file = s.path("web1.enroll");
    let out = s.home.run_ok(&[
        "site",
        "enroll",
        "web1",
        "--vault",
        "main",
        "--vault",
        "db",
        "--out",
        file.to_str().unwrap(),
        "--valid",
        "1h",
        "--site",
        site,
    ]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("lifeboat site join"), "{out:?}");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    let enrollment = EnrollmentFile::read(&file).unwrap();
    assert_eq!((enrollment.site.as_str(), enrollment.host.as_str()), ("dr", "web1"));
    assert_eq!(enrollment.vaults, ["main", "db"]);
    assert_eq!(enrollment.addresses, ["dr.example:8443", "[::1]:8443"]);
    let expires: jiff::Timestamp = enrollment.expires.parse().unwrap();
    let left = expires.duration_since(jiff::Timestamp::now()).as_secs();
    assert!((3500..=3600).contains(&left), "expires in {left} s");
    assert!(hosts_json(&s, site).is_empty());

    // What the server does on POST /v1/enroll.
    let key = HostKey::generate().unwrap();
    let request =
        RedeemRequest { token: enrollment.token.clone(), host: "web1".into(), public_key_der: key.public_key_der() };
    Site::open(&dir).unwrap().redeem(&request).unwrap();

    let hosts = hosts_json(&s, site);
    assert_eq!(hosts.len(), 1);
    assert_eq!(hosts[0]["host"], "web1");
    assert_eq!(hosts[0]["vaults"], serde_json::json!(["main", "db"]));
    assert_eq!(hosts[0]["revoked"], serde_json::Value::Null);
    assert_eq!(hosts[0]["last_contact"], serde_json::Value::Null);
    assert_eq!(hosts[0]["bytes_received"], 0);
    let table = String::from_utf8(s.home.run_ok(&["site", "hosts", "--site", site]).stdout).unwrap();
    assert!(table.contains("web1") && table.contains("enrolled") && table.contains("never"), "{table}");

    // A server's contact shows in the list.
    let server = Site::open(&dir).unwrap();
    server.record_contact("web1", 3 << 20).unwrap();
    assert_eq!(hosts_json(&s, site)[0]["bytes_received"], 3 << 20);
    let table = String::from_utf8(s.home.run_ok(&["site", "hosts", "--site", site]).stdout).unwrap();
    assert!(table.contains("3.0 MiB"), "{table}");

    let out = s.home.run_ok(&["site", "revoke", "web1", "--site", site]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("revoked"), "{out:?}");
    let hosts = hosts_json(&s, site);
    assert!(hosts[0]["revoked"].is_string(), "{hosts:?}");
    let table = String::from_utf8(s.home.run_ok(&["site", "hosts", "--site", site]).stdout).unwrap();
    assert!(table.contains("revoked"), "{table}");
}

#[test]
fn the_site_directory_defaults_to_lifeboat_site_then_home_site() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-site-default-");
    // HOME/site.
    s.home.run_ok(&["site", "init", "--address", "127.0.0.1:8443"]);
    assert!(s.home.dir.join("site/site.toml").exists());
    s.home.run_ok(&["site", "enroll", "h1", "--vault", "v", "--out", s.path("h1.enroll").to_str().unwrap()]);
    // $LIFEBOAT_SITE, for init and for the others.
    let other = s.path("other");
    let run = |args: &[&str]| s.home.command().env("LIFEBOAT_SITE", &other).args(args).output().unwrap();
    assert!(run(&["site", "init", "--address", "127.0.0.1:9443"]).status.success());
    assert!(other.join("site.toml").exists());
    let out = run(&["site", "hosts", "--json"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
}

#[test]
fn errors_say_what_to_do() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-site-errors-");
    let site = s.path("site");
    let site = site.to_str().unwrap();
    let out_file = s.path("x.enroll");

    // Enroll before init.
    let out =
        s.home.run(&["site", "enroll", "web1", "--vault", "main", "--out", out_file.to_str().unwrap(), "--site", site]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("not a site directory") && stderr(&out).contains("lifeboat site init"),
        "{}",
        stderr(&out)
    );
    assert!(!out_file.exists());

    // A bad address.
    let out = s.home.run(&["site", "init", site, "--address", "dr.example"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("HOST:PORT"), "{}", stderr(&out));

    s.home.run_ok(&["site", "init", site, "--address", "dr.example:8443"]);
    // Init again over it.
    let out = s.home.run(&["site", "init", site, "--address", "dr.example:8443"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("not empty"), "{}", stderr(&out));

    // Revoke a host never enrolled.
    let out = s.home.run(&["site", "revoke", "ghost", "--site", site]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("no host \"ghost\"") && stderr(&out).contains("site hosts"), "{}", stderr(&out));

    // A host name that cannot be a file name.
    let out =
        s.home.run(&["site", "enroll", "../x", "--vault", "main", "--out", out_file.to_str().unwrap(), "--site", site]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot name a host"), "{}", stderr(&out));

    // Enroll without a vault is a usage error.
    let out = s.home.run(&["site", "enroll", "web1", "--out", out_file.to_str().unwrap(), "--site", site]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn join_through_the_binary_gets_a_certificate_from_a_real_server() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-site-join-");
    let dir = s.path("site");
    let site_arg = dir.to_str().unwrap();
    s.home.run_ok(&["site", "init", site_arg, "--address", "localhost:8443"]);
    // The vault server, in this process, over the site directory.
    let site = Site::open(&dir).unwrap();
    let (cert, key) = site.server_pem().unwrap();
    let vault_dir = s.path("main");
    let _ = vault::LocalBackend::create(&vault_dir).unwrap();
    let config = site::server::ServerConfig {
        tls: site::tls::server_config(&site.ca_pem().unwrap(), &cert, &key).unwrap(),
        vaults: vec![("main".to_owned(), vault_dir)],
        grants: site.grants_dir(),
        hosts: std::sync::Arc::new(site),
    };
    let server = site::server::Server::start("127.0.0.1:0".parse().unwrap(), config).unwrap();
    let port = server.local_addr().port();

    let file = s.path("web1.enroll");
    s.home.run_ok(&["site", "enroll", "web1", "--vault", "main", "--out", file.to_str().unwrap(), "--site", site_arg]);
    // The server listens on a port chosen now: point the file at it.
    let mut enrollment = EnrollmentFile::read(&file).unwrap();
    enrollment.addresses = vec![format!("localhost:{port}")];
    enrollment.write(&file).unwrap();
    let copy = s.path("copy.enroll");
    std::fs::copy(&file, &copy).unwrap();

    let host = vm_tests::lifeboat::Home::new(env!("CARGO_BIN_EXE_lifeboat"), s.path("host-home"));
    let out = host.run_ok(&["site", "join", file.to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(&format!("lifeboat://localhost:{port}/main")), "{stdout}");
    assert!(!file.exists(), "the used enrollment file is deleted");
    let joined = s.path(&format!("host-home/sites/localhost_{port}"));
    assert_eq!(std::fs::metadata(joined.join("host.key")).unwrap().permissions().mode() & 0o777, 0o600);
    let creds = site::enroll::credentials_for(&s.path("host-home"), "localhost", port).unwrap();
    let _ = site::client::RemoteBackend::connect("localhost", port, "main", &creds).unwrap();
    let hosts = hosts_json(&s, site_arg);
    assert_eq!(hosts[0]["host"], "web1");

    // A second join with the same token: refused, saying why.
    let out = host.run(&["site", "join", copy.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("used already") && stderr(&out).contains("new enrollment file"), "{}", stderr(&out));
    drop(server);
}
