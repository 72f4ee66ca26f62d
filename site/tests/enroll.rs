//! The site directory and enrollment, through the library: tokens refused
//! when unknown, used, expired or another host's; one winner among racing
//! redemptions; revocation and re-enrollment seen by a server's cached
//! lookup; private files whatever the umask.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant, SystemTime};

use rustls_pki_types::{CertificateDer, UnixTime};
use site::enroll::{self, EnrollmentFile, RedeemError, RedeemRequest};
use site::pki::{self, HostKey};
use site::site_dir::{Lookup, Site, SiteError};

const DAY: Duration = Duration::from_secs(86_400);

fn new_site(dir: &Path) -> Site {
    Site::init(&dir.join("site"), "dr-east", &["vault.example:8443".to_owned(), "[::1]:8443".to_owned()]).unwrap()
}

fn vaults() -> Vec<String> {
    vec!["main".to_owned()]
}

fn request(file: &EnrollmentFile, key: &HostKey) -> RedeemRequest {
    RedeemRequest { token: file.token.clone(), host: file.host.clone(), public_key_der: key.public_key_der() }
}

fn fingerprint(cert_pem: &str) -> String {
    pki::hex(&pki::fingerprint_pem(cert_pem).unwrap())
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_makes_a_private_site_whatever_the_umask() {
    let _ = system::host::set_umask(0);
    let tmp = tempfile::tempdir().unwrap();
    let site = new_site(tmp.path());
    let dir = site.dir();
    assert_eq!(mode(dir), 0o700);
    for sub in ["hosts", "enroll", "grants", "contact"] {
        assert_eq!(mode(&dir.join(sub)), 0o700, "{sub}");
    }
    for f in ["ca.key", "server.key", "ca.pem", "server.pem", "site.toml"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    let file = site.enroll("web1", &vaults(), DAY).unwrap();
    let out = tmp.path().join("web1.enroll");
    file.write(&out).unwrap();
    assert_eq!(mode(&out), 0o600);
    assert_eq!(EnrollmentFile::read(&out).unwrap(), file);
    let home = tmp.path().join("home");
    let joined = enroll::join(&file, &home, |_, r| site.redeem(r)).unwrap();
    assert_eq!(joined, home.join("sites/vault.example_8443"));
    assert_eq!(mode(&home.join("sites")), 0o700);
    assert_eq!(mode(&joined), 0o700);
    assert_eq!(mode(&joined.join("host.key")), 0o600);
}

#[test]
fn init_refuses_a_non_empty_directory_and_open_a_non_site() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("something"), b"x").unwrap();
    let e = Site::init(tmp.path(), "s", &["h:1".to_owned()]).unwrap_err();
    assert!(matches!(e, SiteError::NotEmpty { .. }), "{e}");
    assert!(matches!(Site::open(tmp.path()), Err(SiteError::NotASite { .. })));
    let e = Site::init(&tmp.path().join("new"), "s", &["no-port".to_owned()]).unwrap_err();
    assert!(matches!(e, SiteError::BadAddress { .. }), "{e}");
    // An existing empty directory is fine.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    Site::init(&empty, "s", &["h:1".to_owned()]).unwrap();
    assert_eq!(Site::open(&empty).unwrap().config().addresses, ["h:1"]);
}

#[test]
fn enrolled_host_is_found_by_its_certificate_and_its_certificate_verifies() {
    let tmp = tempfile::tempdir().unwrap();
    let site = new_site(tmp.path());
    let file = site.enroll("web1", &["main".to_owned(), "db".to_owned()], DAY).unwrap();
    let key = HostKey::generate().unwrap();
    let cert = site.redeem(&request(&file, &key)).unwrap();
    assert_eq!(
        site.lookup(&fingerprint(&cert)).unwrap(),
        Lookup::Enrolled { host: "web1".to_owned(), vaults: vec!["main".to_owned(), "db".to_owned()] }
    );
    assert_eq!(site.lookup(&"0".repeat(64)).unwrap(), Lookup::Unknown);
    // A client certificate under the CA the enrollment file carries.
    let ca = pki::cert_der(&file.ca).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(&ca).unwrap();
    let der = pki::cert_der(&cert).unwrap();
    let ee = webpki::EndEntityCert::try_from(&der).unwrap();
    let now = UnixTime::since_unix_epoch(SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap());
    let none: &[CertificateDer<'_>] = &[];
    ee.verify_for_usage(
        webpki::ALL_VERIFICATION_ALGS,
        &[anchor],
        none,
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )
    .unwrap();
    // The site keeps no token, only its hash.
    for entry in walk(site.dir()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !bytes.windows(file.token.len()).any(|w| w == file.token.as_bytes()),
            "{} holds the token",
            entry.display()
        );
    }
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[test]
fn unknown_used_expired_and_other_host_tokens_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let site = new_site(tmp.path());
    let key = HostKey::generate().unwrap();

    let file = site.enroll("web1", &vaults(), DAY).unwrap();
    let mut forged = request(&file, &key);
    forged.token = "00".repeat(32);
    assert!(matches!(site.redeem(&forged), Err(RedeemError::UnknownToken)));
    forged.token = "../../site".to_owned();
    assert!(matches!(site.redeem(&forged), Err(RedeemError::UnknownToken)));

    // Another host's token: refused, and not spent.
    let mut other = request(&file, &key);
    other.host = "web2".to_owned();
    assert!(matches!(site.redeem(&other), Err(RedeemError::WrongHost { .. })));
    site.redeem(&request(&file, &key)).unwrap();
    // Used.
    let e = site.redeem(&request(&file, &HostKey::generate().unwrap())).unwrap_err();
    assert!(matches!(e, RedeemError::Used { ref host } if host == "web1"), "{e}");

    // Expired (valid for no time at all).
    let file = site.enroll("web2", &vaults(), Duration::ZERO).unwrap();
    assert!(matches!(site.redeem(&request(&file, &key)), Err(RedeemError::Expired { .. })));

    // A key the CA does not sign: refused, token not spent.
    let file = site.enroll("web3", &vaults(), DAY).unwrap();
    let mut bad = request(&file, &key);
    bad.public_key_der.truncate(20);
    assert!(matches!(site.redeem(&bad), Err(RedeemError::Key(_))));
    site.redeem(&request(&file, &key)).unwrap();
}

#[test]
fn racing_redemptions_have_one_winner() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = new_site(tmp.path()).dir().to_path_buf();
    let file = Site::open(&dir).unwrap().enroll("web1", &vaults(), DAY).unwrap();
    const N: usize = 8;
    let barrier = Arc::new(Barrier::new(N));
    let threads: Vec<_> = (0..N)
        .map(|_| {
            let (dir, file, barrier) = (dir.clone(), file.clone(), barrier.clone());
            std::thread::spawn(move || {
                // Each its own Site, as separate server processes would be.
                let site = Site::open(&dir).unwrap();
                let key = HostKey::generate().unwrap();
                let req = request(&file, &key);
                barrier.wait();
                site.redeem(&req)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert!(results.iter().filter(|r| r.is_err()).all(|r| matches!(r, Err(RedeemError::Used { .. }))), "{results:?}");
    let site = Site::open(&dir).unwrap();
    assert_eq!(site.host("web1").unwrap().unwrap().fingerprint, fingerprint(winners[0]));
}

#[test]
fn revoke_and_re_enroll_are_seen_by_a_server_that_cached_its_lookups() {
    let tmp = tempfile::tempdir().unwrap();
    let admin = new_site(tmp.path());
    // The server: its own Site, which has cached the index.
    let server = Site::open(admin.dir()).unwrap();
    let first =
        admin.redeem(&request(&admin.enroll("web1", &vaults(), DAY).unwrap(), &HostKey::generate().unwrap())).unwrap();
    let first = fingerprint(&first);
    assert!(matches!(server.lookup(&first).unwrap(), Lookup::Enrolled { .. }));

    // Re-enrollment: the new certificate works, the old one is revoked.
    let second =
        admin.redeem(&request(&admin.enroll("web1", &vaults(), DAY).unwrap(), &HostKey::generate().unwrap())).unwrap();
    let second = fingerprint(&second);
    assert!(matches!(server.lookup(&second).unwrap(), Lookup::Enrolled { .. }));
    assert_eq!(server.lookup(&first).unwrap(), Lookup::Revoked { host: "web1".to_owned() });

    let record = admin.revoke("web1").unwrap();
    assert!(record.revoked.is_some());
    assert_eq!(server.lookup(&second).unwrap(), Lookup::Revoked { host: "web1".to_owned() });
    assert!(matches!(admin.revoke("nobody"), Err(SiteError::UnknownHost { .. })));
    let listed = admin.hosts().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].record.superseded, [first]);
}

#[test]
fn contact_is_written_at_most_every_few_seconds_and_flushed() {
    let tmp = tempfile::tempdir().unwrap();
    let site = new_site(tmp.path());
    site.redeem(&request(&site.enroll("web1", &vaults(), DAY).unwrap(), &HostKey::generate().unwrap())).unwrap();
    assert_eq!(site.hosts().unwrap()[0].last_contact, None);
    let t0 = Instant::now();
    site.record_contact_at("web1", 100, t0).unwrap();
    assert_eq!(site.hosts().unwrap()[0].bytes_received, 100);
    site.record_contact_at("web1", 50, t0 + Duration::from_secs(1)).unwrap();
    assert_eq!(site.hosts().unwrap()[0].bytes_received, 100, "written again within the interval");
    site.record_contact_at("web1", 25, t0 + site::site_dir::CONTACT_WRITE_INTERVAL).unwrap();
    assert_eq!(site.hosts().unwrap()[0].bytes_received, 175);
    site.record_contact_at("web1", 5, t0 + site::site_dir::CONTACT_WRITE_INTERVAL).unwrap();
    site.flush_contacts().unwrap();
    let info = &site.hosts().unwrap()[0];
    assert_eq!(info.bytes_received, 180);
    assert!(info.last_contact.is_some());
    // A restarted server continues the total.
    let again = Site::open(site.dir()).unwrap();
    again.record_contact("web1", 20).unwrap();
    assert_eq!(again.hosts().unwrap()[0].bytes_received, 200);
}

#[test]
fn join_stores_credentials_and_never_sends_the_private_key() {
    let tmp = tempfile::tempdir().unwrap();
    let site = new_site(tmp.path());
    let file = site.enroll("web1", &vaults(), DAY).unwrap();
    let home = tmp.path().join("home");
    let mut sent = None;
    enroll::join(&file, &home, |_, r| {
        sent = Some(r.clone());
        site.redeem(r)
    })
    .unwrap();
    let creds = enroll::credentials_for(&home, "vault.example", 8443).unwrap();
    assert_eq!(creds.ca_pem, site.ca_pem().unwrap());
    let sent = sent.unwrap();
    let key_der = pki::key_der(&creds.key_pem).unwrap();
    // The request carries the public key alone (a P-256
    // SubjectPublicKeyInfo), never the private scalar (PKCS#8's ECPrivateKey
    // holds it as an OCTET STRING of 32 bytes, tag 04 20).
    let secret = key_der.secret_der();
    let at = secret.windows(2).position(|w| w == [0x04, 0x20]).unwrap() + 2;
    let scalar = &secret[at..at + 32];
    assert_eq!(sent.public_key_der.len(), 91);
    assert!(!sent.public_key_der.windows(32).any(|w| w == scalar));
    assert_eq!(
        site.lookup(&fingerprint(&creds.cert_pem)).unwrap(),
        Lookup::Enrolled { host: "web1".to_owned(), vaults: vaults() }
    );
    let joined = enroll::joined_site(&home, "vault.example", 8443).unwrap();
    assert_eq!((joined.site.as_str(), joined.vaults), ("dr-east", vaults()));
    assert!(matches!(enroll::credentials_for(&home, "other", 1), Err(SiteError::NotJoined { .. })));

    // A refused join stores nothing.
    let home2 = tmp.path().join("home2");
    let e = enroll::join(&file, &home2, |_, r| site.redeem(r)).unwrap_err();
    assert!(matches!(e, enroll::JoinError::Send(_)), "{e}");
    assert!(e.to_string().contains("used already"), "{e}");
    assert!(!home2.join("sites").exists());
}
