//! The vault server and its client backend over real TLS on loopback:
//! the backend contract with valid objects, rights between hosts,
//! refusals of bad clients, uploads cut off, and graceful shutdown.

mod common;

use std::time::{Duration, Instant};

use common::{pack, page, raw_request, root, root_name, tmp_count, TestSite};
use site::client::RemoteBackend;
use site::tls::TlsError;
use vault::{Backend, Kind, VaultError, Version};

fn tls_cause(e: &VaultError) -> &TlsError {
    match e {
        VaultError::Unreachable { source, .. } => {
            source.downcast_ref::<TlsError>().unwrap_or_else(|| panic!("not a TLS error: {e}"))
        }
        other => panic!("not Unreachable: {other}"),
    }
}

/// Waits (bounded) until the server has removed what an abandoned upload
/// staged: the server learns of a reset asynchronously.
fn until_tmp_empty(dir: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tmp_count(dir) != 0 {
        assert!(Instant::now() < deadline, "a staged upload was left in {}", dir.display());
        std::thread::yield_now();
    }
}

#[test]
fn remote_backend_keeps_the_backend_contract_with_valid_objects() {
    let site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let b = site.connect(&creds, "v");
    assert_eq!(b.location(), format!("lifeboat://localhost:{}/v", site.port));

    // Packs: put, streamed, read whole and by range, size, listed, missing.
    let (p1, bytes1) = pack(1, 40, 70_000);
    b.put(Kind::Pack, &p1, &bytes1).unwrap();
    assert_eq!(b.get(Kind::Pack, &p1).unwrap(), bytes1);
    assert_eq!(b.size(Kind::Pack, &p1).unwrap(), Some(bytes1.len() as u64));
    assert_eq!(b.get_range(Kind::Pack, &p1, 100, 5000).unwrap(), &bytes1[100..5100]);
    assert_eq!(b.get_range(Kind::Pack, &p1, bytes1.len() as u64, 0).unwrap(), b"");
    let e = b.get_range(Kind::Pack, &p1, bytes1.len() as u64 - 2, 4).unwrap_err();
    assert!(matches!(e, VaultError::ShortObject { size, .. } if size == bytes1.len() as u64), "{e}");
    assert!(matches!(b.get_range(Kind::Pack, &p1, u64::MAX, 2), Err(VaultError::ShortObject { .. })));
    // The same pack again (a cycle resending it) is the same object.
    b.put(Kind::Pack, &p1, &bytes1).unwrap();
    let (p2, bytes2) = pack(2, 300, 65_536);
    assert!(bytes2.len() > 16 << 20, "a pack larger than the flow-control windows");
    let mut w = b.writer(Kind::Pack).unwrap().expect("packs stream");
    for chunk in bytes2.chunks(1 << 20) {
        w.write(chunk).unwrap();
    }
    assert!(b.list(Kind::Pack, &p2).unwrap().is_empty(), "visible before its commit");
    w.commit(&p2).unwrap();
    assert_eq!(b.get(Kind::Pack, &p2).unwrap(), bytes2);
    let mut listed = b.list(Kind::Pack, "").unwrap();
    let mut want = vec![p1.clone(), p2.clone()];
    want.sort();
    listed.sort();
    assert_eq!(listed, want);
    let (p3, _) = pack(3, 1, 100);
    let asked = vec![p2.clone(), p3.clone(), p1.clone()];
    assert_eq!(b.missing(Kind::Pack, &asked).unwrap(), vec![p3.clone()]);
    assert!(matches!(b.get(Kind::Pack, &p3), Err(VaultError::NotFound { kind: Kind::Pack, .. })));
    assert_eq!(b.size(Kind::Pack, &p3).unwrap(), None);

    // Pages.
    let (g, gbytes) = page(1);
    b.put(Kind::Page, &g, &gbytes).unwrap();
    b.put(Kind::Page, &g, &gbytes).unwrap();
    assert_eq!(b.get(Kind::Page, &g).unwrap(), gbytes);

    // Roots: created, listed by chain, never replaced.
    for seq in [2, 1] {
        b.create(Kind::Root, &root_name("web", seq), &root("web", seq, 1)).unwrap();
    }
    b.create(Kind::Root, &root_name("db", 1), &root("db", 1, 1)).unwrap();
    assert_eq!(b.list(Kind::Root, "web/").unwrap(), vec![root_name("web", 1), root_name("web", 2)]);
    let e = b.create(Kind::Root, &root_name("web", 1), &root("web", 1, 2)).unwrap_err();
    assert!(matches!(&e, VaultError::AlreadyExists { kind: Kind::Root, .. }), "{e}");
    assert_eq!(b.get(Kind::Root, &root_name("web", 1)).unwrap(), root("web", 1, 1));
    let e = b.put(Kind::Root, &root_name("web", 1), &root("web", 1, 3)).unwrap_err();
    assert!(matches!(&e, VaultError::Refused { .. }), "{e}");
    let e = b.delete(Kind::Root, &root_name("web", 1)).unwrap_err();
    assert!(matches!(&e, VaultError::Refused { .. }), "{e}");
    assert!(e.to_string().contains("append-only") && e.to_string().contains("at the site"), "{e}");

    // The config: created once, read, never replaced.
    let v = b.create(Kind::Config, "config", b"a config").unwrap();
    assert_eq!(b.get_versioned(Kind::Config, "config").unwrap(), (b"a config".to_vec(), v.clone()));
    assert!(matches!(b.create(Kind::Config, "config", b"x"), Err(VaultError::AlreadyExists { .. })));
    assert!(matches!(b.replace_if(Kind::Config, "config", b"x", &v), Err(VaultError::Refused { .. })));

    // Leases: create, replace-if-unchanged, conflicts, delete.
    let name = "cycle/0123456789abcdef";
    let v1 = b.create(Kind::Lease, name, b"generation 1").unwrap();
    let v2 = b.replace_if(Kind::Lease, name, b"generation 2", &v1).unwrap();
    assert_ne!(v1, v2);
    assert_eq!(b.get_versioned(Kind::Lease, name).unwrap(), (b"generation 2".to_vec(), v2.clone()));
    let e = b.replace_if(Kind::Lease, name, b"stale", &v1).unwrap_err();
    assert!(matches!(&e, VaultError::Conflict { kind: Kind::Lease, .. }), "{e}");
    assert!(matches!(b.replace_if(Kind::Lease, name, b"x", &Version::new("bogus")), Err(VaultError::Conflict { .. })));
    b.delete(Kind::Lease, name).unwrap();
    assert!(matches!(b.replace_if(Kind::Lease, name, b"x", &v2), Err(VaultError::Conflict { .. })));
    assert!(matches!(b.delete(Kind::Lease, name), Err(VaultError::NotFound { .. })));

    // Audit segments only grow.
    b.put(Kind::Audit, "alpha/0001", b"line 1\n").unwrap();
    b.put(Kind::Audit, "alpha/0001", b"line 1\nline 2\n").unwrap();
    assert!(matches!(b.put(Kind::Audit, "alpha/0001", b"rewritten\n"), Err(VaultError::Invalid { .. })));
    assert_eq!(b.get(Kind::Audit, "alpha/0001").unwrap(), b"line 1\nline 2\n");

    // Names never escape, whatever the kind.
    for bad in ["", "../x", "a//b", ".hidden", "sp ace"] {
        assert!(matches!(b.put(Kind::Lease, bad, b"x"), Err(VaultError::BadName { .. })), "{bad:?}");
        assert!(matches!(b.get(Kind::Root, bad), Err(VaultError::BadName { .. })), "{bad:?}");
    }
    // Packs are not deleted from a host.
    let e = b.delete(Kind::Pack, &p1).unwrap_err();
    assert!(matches!(&e, VaultError::Refused { .. }) && e.to_string().contains("append-only"), "{e}");
    assert_eq!(tmp_count(&site.vault_dir("v")), 0);
    // The grants journal records what alpha wrote.
    let grants = std::fs::read_to_string(site.dir.path().join("grants/v/alpha")).unwrap();
    assert!(grants.contains(&format!("packs/{p2}\n")) && grants.contains("roots/web/"), "{grants}");
    // Bytes received are counted, streamed packs included.
    let received = site.hosts.contacts.lock().unwrap()["alpha"];
    assert!(received >= (2 * bytes1.len() + bytes2.len()) as u64, "{received}");
}

#[test]
fn concurrent_conditional_writes_have_one_winner_and_lose_no_update() {
    let site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let b = site.connect(&creds, "v");
    // Eight creators of one root at once: one wins, whole.
    let name = root_name("race", 1);
    let results: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8u8)
            .map(|i| {
                let (b, name) = (&b, &name);
                s.spawn(move || b.create(Kind::Root, name, &root("race", 1, i)))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let winners: Vec<usize> = (0..8).filter(|&i| results[i].is_ok()).collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    assert_eq!(b.get(Kind::Root, &name).unwrap(), root("race", 1, u8::try_from(winners[0]).unwrap()));
    // Four counters of one lease: read, add, replace-if; no update lost.
    let counter = "counter/0000000000000000";
    b.create(Kind::Lease, counter, b"0").unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..10 {
                    loop {
                        let (data, v) = b.get_versioned(Kind::Lease, counter).unwrap();
                        let n: u64 = std::str::from_utf8(&data).unwrap().parse().unwrap();
                        match b.replace_if(Kind::Lease, counter, (n + 1).to_string().as_bytes(), &v) {
                            Ok(_) => break,
                            Err(VaultError::Conflict { .. }) => continue,
                            Err(e) => panic!("{e}"),
                        }
                    }
                }
            });
        }
    });
    assert_eq!(b.get(Kind::Lease, counter).unwrap(), b"40");
}

#[test]
fn host_a_cannot_read_list_replace_or_delete_host_bs_objects() {
    let site = TestSite::start(&["v"]);
    let a = site.connect(&site.enroll("alpha", &["v"]), "v");
    let b = site.connect(&site.enroll("beta", &["v"]), "v");
    let (p, pbytes) = pack(9, 3, 1000);
    let (g, gbytes) = page(9);
    b.put(Kind::Pack, &p, &pbytes).unwrap();
    b.put(Kind::Page, &g, &gbytes).unwrap();
    b.create(Kind::Root, &root_name("bdisk", 1), &root("bdisk", 1, 1)).unwrap();
    b.put(Kind::Audit, "beta/0001", b"beta's line\n").unwrap();
    b.create(Kind::Lease, "cycle/beta", b"beta holds").unwrap();

    for (kind, name) in [
        (Kind::Pack, p.as_str()),
        (Kind::Page, g.as_str()),
        (Kind::Root, "bdisk/00000000000000000001"),
        (Kind::Audit, "beta/0001"),
    ] {
        let e = a.get(kind, name).unwrap_err();
        assert!(matches!(&e, VaultError::Refused { .. }), "{kind}/{name}: {e}");
        assert!(matches!(a.get_range(kind, name, 0, 1), Err(VaultError::Refused { .. })), "{kind}/{name}");
        assert!(a.list(kind, "").unwrap().is_empty(), "alpha lists beta's {kind}");
        assert_eq!(a.missing(kind, &[name.to_string()]).unwrap(), vec![name.to_string()]);
        assert!(matches!(a.delete(kind, name), Err(VaultError::Refused { .. })), "{kind}/{name}");
    }
    // No replacing beta's root, chain, audit segment or lease.
    assert!(matches!(a.put(Kind::Root, &root_name("bdisk", 1), &root("bdisk", 1, 5)), Err(VaultError::Refused { .. })));
    assert!(matches!(
        a.create(Kind::Root, &root_name("bdisk", 2), &root("bdisk", 2, 5)),
        Err(VaultError::Refused { .. })
    ));
    assert!(matches!(a.put(Kind::Audit, "beta/0001", b"beta's line\nforged\n"), Err(VaultError::Refused { .. })));
    let (_, v) = a.get_versioned(Kind::Lease, "cycle/beta").expect("leases are read by every host");
    assert!(matches!(a.replace_if(Kind::Lease, "cycle/beta", b"stolen", &v), Err(VaultError::Refused { .. })));
    assert!(matches!(a.delete(Kind::Lease, "cycle/beta"), Err(VaultError::Refused { .. })));
    // Beta cannot delete its own root or pack either.
    assert!(matches!(b.delete(Kind::Root, &root_name("bdisk", 1)), Err(VaultError::Refused { .. })));
    assert!(matches!(b.delete(Kind::Pack, &p), Err(VaultError::Refused { .. })));
    assert_eq!(b.get(Kind::Root, &root_name("bdisk", 1)).unwrap(), root("bdisk", 1, 1));
    assert_eq!(b.get(Kind::Audit, "beta/0001").unwrap(), b"beta's line\n");
    // Alpha uploading the same pack itself may read it from then on.
    a.put(Kind::Pack, &p, &pbytes).unwrap();
    assert_eq!(a.get(Kind::Pack, &p).unwrap(), pbytes);
    // A host not enrolled for a vault is refused there.
    let gamma = site.enroll("gamma", &["other"]);
    let e = RemoteBackend::connect("localhost", site.port, "v", &gamma).err().expect("refused");
    assert!(matches!(&e, VaultError::Refused { .. }) && e.to_string().contains("not enrolled"), "{e}");
}

#[test]
fn a_pack_whose_bytes_do_not_match_its_name_is_refused_and_leaves_nothing() {
    let site = TestSite::start(&["v"]);
    let b = site.connect(&site.enroll("alpha", &["v"]), "v");
    let (p1, bytes1) = pack(1, 5, 2000);
    let (p2, _) = pack(2, 5, 2000);
    let e = b.put(Kind::Pack, &p2, &bytes1).unwrap_err();
    assert!(matches!(&e, VaultError::Invalid { .. }), "{e}");
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&bytes1).unwrap();
    let e = w.commit(&p2).unwrap_err();
    assert!(matches!(&e, VaultError::Invalid { .. }), "{e}");
    // A flipped bit in a blob: the name (header, index, trailer) still
    // matches, the blob's CRC does not.
    let mut flipped = bytes1.clone();
    flipped[100] ^= 1;
    let e = b.put(Kind::Pack, &p1, &flipped).unwrap_err();
    assert!(e.to_string().contains("CRC") || e.to_string().contains("checksum"), "{e}");
    // A page or root under the wrong name.
    let (g, _) = page(1);
    assert!(matches!(b.put(Kind::Page, &g, b"other bytes"), Err(VaultError::Invalid { .. })));
    assert!(matches!(b.create(Kind::Root, &root_name("web", 2), &root("web", 1, 1)), Err(VaultError::Invalid { .. })));
    assert!(b.list(Kind::Pack, "").unwrap().is_empty());
    assert!(b.list(Kind::Page, "").unwrap().is_empty());
    assert!(b.list(Kind::Root, "").unwrap().is_empty());
    assert!(vault::LocalBackend::open(&site.vault_dir("v")).unwrap().list(Kind::Pack, "").unwrap().is_empty());
    assert_eq!(tmp_count(&site.vault_dir("v")), 0);
    // The right bytes then go through.
    b.put(Kind::Pack, &p1, &bytes1).unwrap();
}

#[test]
fn a_stream_reset_mid_pack_leaves_nothing_and_the_next_upload_succeeds() {
    let site = TestSite::start(&["v"]);
    let b = site.connect(&site.enroll("alpha", &["v"]), "v");
    let (p, bytes) = pack(4, 100, 65_536);
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&bytes[..bytes.len() / 2]).unwrap();
    drop(w);
    until_tmp_empty(&site.vault_dir("v"));
    assert!(b.list(Kind::Pack, "").unwrap().is_empty());
    assert_eq!(b.missing(Kind::Pack, std::slice::from_ref(&p)).unwrap(), vec![p.clone()]);
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&bytes).unwrap();
    w.commit(&p).unwrap();
    assert_eq!(b.get(Kind::Pack, &p).unwrap(), bytes);
}

#[test]
fn oversized_and_malformed_requests_fail_alone_and_the_server_keeps_serving() {
    let site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let b = site.connect(&creds, "v");
    // A lease over its bound: 413, only that stream.
    let e = b.put(Kind::Lease, "big", &vec![0u8; 100_000]).unwrap_err();
    assert!(matches!(&e, VaultError::Invalid { .. }) && e.to_string().contains("bound"), "{e}");
    b.put(Kind::Lease, "small", b"fine").unwrap();
    // Headers over 16 KiB on a connection of their own: refused, and the
    // other connection goes on.
    let config = site::tls::client_config(&creds.ca_pem, Some((&creds.cert_pem, &creds.key_pem))).unwrap();
    let huge = "x".repeat(40_000);
    let r = raw_request(site.port, config.clone(), "GET", "/v1/vaults/v/leases/small", &[("x-big", huge)]);
    assert!(!matches!(r, Ok((200, _))), "an oversized header list was served: {r:?}");
    // Paths that do not route: 400, with the JSON error body.
    for path in ["/v1/vaults/v/nokind/x", "/v1/vaults/../leases/x", "/v2/version", "/v1/vaults/v/leases/a%2Fb"] {
        let (status, body) = raw_request(site.port, config.clone(), "GET", path, &[]).unwrap();
        assert_eq!(status, 400, "{path}");
        let body: site::protocol::ErrorBody = serde_json::from_slice(&body).unwrap();
        assert!(body.error == "bad-request" || body.error == "bad-name", "{path}: {body:?}");
    }
    let (status, _) =
        raw_request(site.port, config.clone(), "GET", "/v1/vaults/v/leases/small", &[("range", "bytes=9-1".into())])
            .unwrap();
    assert_eq!(status, 400);
    assert_eq!(b.get(Kind::Lease, "small").unwrap(), b"fine");
    let other = site.connect(&creds, "v");
    assert_eq!(other.get(Kind::Lease, "small").unwrap(), b"fine");
}

#[test]
fn clients_without_a_certificate_may_only_enroll() {
    let site = TestSite::start(&["v"]);
    let config = site::tls::client_config(site.ca.cert_pem(), None).unwrap();
    let (status, body) = raw_request(site.port, config.clone(), "GET", "/v1/vaults/v/list/packs", &[]).unwrap();
    assert_eq!(status, 401, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("no-certificate"));
    // Enrollment is reached (and refused here, for its token).
    let (status, _) = raw_request(site.port, config, "POST", "/v1/enroll", &[]).unwrap();
    assert_eq!(status, 400, "an empty enroll body is not JSON");
}

#[test]
fn tls_failures_name_their_cause() {
    let site = TestSite::start(&["v"]);
    // A host certificate from another CA.
    let other = TestSite::start(&["v"]);
    let mut foreign = other.enroll("alpha", &["v"]);
    foreign.ca_pem = site.ca.cert_pem().to_string();
    let e = RemoteBackend::connect("localhost", site.port, "v", &foreign).err().expect("refused");
    assert!(matches!(tls_cause(&e), TlsError::HostCertificateRefused { .. }), "{e}");
    // A server of another site.
    let creds = site.enroll("alpha", &["v"]);
    let e = RemoteBackend::connect("localhost", other.port, "v", &creds).err().expect("refused");
    assert!(matches!(tls_cause(&e), TlsError::UnknownCa), "{e}");
    // A name the server's certificate does not hold.
    let named = TestSite::start_named(&["v"], &["vault.example"]);
    let creds_named = named.enroll("alpha", &["v"]);
    let e = RemoteBackend::connect("localhost", named.port, "v", &creds_named).err().expect("refused");
    assert!(matches!(tls_cause(&e), TlsError::WrongName { .. }), "{e}");
    // An expired host certificate.
    let key = site::pki::HostKey::generate().unwrap();
    let long_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    let cert =
        site.ca.issue_host_between("old", &key.public_key_der(), long_ago, long_ago + Duration::from_secs(60)).unwrap();
    let old = site::client::Credentials { ca_pem: site.ca.cert_pem().into(), cert_pem: cert, key_pem: key.key_pem() };
    let e = RemoteBackend::connect("localhost", site.port, "v", &old).err().expect("refused");
    assert!(matches!(tls_cause(&e), TlsError::HostCertificateExpired), "{e}");
    // A plain TCP service on the port.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut s, _) = plain.accept().unwrap();
        let mut buf = [0u8; 512];
        let _ = s.read(&mut buf);
        let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
    });
    let e = RemoteBackend::connect("localhost", port, "v", &creds).err().expect("refused");
    assert!(matches!(tls_cause(&e), TlsError::NotTls { .. }), "{e}");
    assert!(e.to_string().contains("is not a Lifeboat vault server speaking TLS"), "{e}");
    t.join().unwrap();
}

#[test]
fn a_revoked_host_is_cut_off_at_its_next_request_on_the_same_connection() {
    let site = TestSite::start(&["v"]);
    let b = site.connect(&site.enroll("alpha", &["v"]), "v");
    let (g, gbytes) = page(3);
    b.put(Kind::Page, &g, &gbytes).unwrap();
    site.revoke("alpha");
    let e = b.get(Kind::Page, &g).unwrap_err();
    assert!(matches!(&e, VaultError::Refused { .. }) && e.to_string().contains("revoked"), "{e}");
    let (g2, g2bytes) = page(4);
    assert!(matches!(b.put(Kind::Page, &g2, &g2bytes), Err(VaultError::Refused { .. })));
}

#[test]
fn shutdown_finishes_uploads_in_flight_then_stops() {
    let mut site = TestSite::start(&["v"]);
    let creds = site.enroll("alpha", &["v"]);
    let b = site.connect(&creds, "v");
    let (p, bytes) = pack(5, 50, 65_536);
    let mut w = b.writer(Kind::Pack).unwrap().unwrap();
    w.write(&bytes[..1 << 20]).unwrap();
    let server = site.server.take().unwrap();
    server.shutdown_handle().shutdown();
    w.write(&bytes[1 << 20..]).unwrap();
    w.commit(&p).unwrap();
    server.wait();
    assert!(vault::LocalBackend::open(&site.vault_dir("v")).unwrap().get(Kind::Pack, &p).unwrap() == bytes);
    assert!(RemoteBackend::connect("localhost", site.port, "v", &creds).is_err());
}

/// A host's grant is durable before its object is visible: a server that
/// cannot record the grant (or is killed before it does) leaves nothing
/// the host may not read back. (Stored first and granted after, a SIGKILL in
/// between left a page its writer was refused reading, and every later
/// cycle of that host failed asking whether it was there.) Beta's journal
/// cannot be opened here: a directory stands where it goes.
#[test]
fn an_object_never_becomes_visible_without_its_writers_grant() {
    let site = TestSite::start(&["v"]);
    let alpha = site.connect(&site.enroll("alpha", &["v"]), "v");
    let (a, abytes) = page(20);
    alpha.put(Kind::Page, &a, &abytes).unwrap(); // the vault's grants are loaded
    let beta = site.connect(&site.enroll("beta", &["v"]), "v");
    let journal = site.dir.path().join("grants/v/beta");
    std::fs::create_dir_all(&journal).unwrap();
    let (g, gbytes) = page(21);
    let (p, pbytes) = pack(22, 2, 1000);
    assert!(beta.put(Kind::Page, &g, &gbytes).is_err(), "a page stored without its grant");
    assert!(beta.create(Kind::Pack, &p, &pbytes).is_err(), "a pack stored without its grant");
    let local = vault::LocalBackend::open(&site.vault_dir("v")).unwrap();
    assert_eq!(local.size(Kind::Page, &g).unwrap(), None, "the page became visible without its grant");
    assert_eq!(local.size(Kind::Pack, &p).unwrap(), None, "the pack became visible without its grant");
    // Once the journal can be written, the same writes land and read back.
    std::fs::remove_dir(&journal).unwrap();
    beta.put(Kind::Page, &g, &gbytes).unwrap();
    beta.create(Kind::Pack, &p, &pbytes).unwrap();
    assert_eq!(beta.get(Kind::Page, &g).unwrap(), gbytes);
    assert_eq!(beta.get(Kind::Pack, &p).unwrap(), pbytes);
    // Alpha's page is not beta's to read, and a HEAD's refusal says why
    // though the answer has no body.
    let e = beta.size(Kind::Page, &a).unwrap_err();
    assert!(matches!(&e, VaultError::Refused { .. }) && e.to_string().contains("HTTP 403: the server's rights"), "{e}");
}
