//! The site's certificates verified for real, with rustls-webpki (the
//! verifier rustls runs in the handshake): a host certificate is a valid
//! client certificate under the site's CA and no other, the server
//! certificate is valid for its names and no other.

use std::time::{Duration, SystemTime};

use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use site::pki::{self, Ca, HostKey, PkiError};
use webpki::{EndEntityCert, KeyUsage};

fn verify(ca: &Ca, cert_pem: &str, usage: KeyUsage, at: SystemTime) -> Result<(), webpki::Error> {
    let der = pki::cert_der(cert_pem).unwrap();
    let anchor = webpki::anchor_from_trusted_cert(ca.cert_der()).unwrap();
    let cert = EndEntityCert::try_from(&der).unwrap();
    let time = UnixTime::since_unix_epoch(at.duration_since(SystemTime::UNIX_EPOCH).unwrap());
    let none: &[CertificateDer<'_>] = &[];
    cert.verify_for_usage(webpki::ALL_VERIFICATION_ALGS, &[anchor], none, time, usage, None, None).map(|_| ())
}

#[test]
fn host_certificate_is_a_client_certificate_of_this_ca_only() {
    let ca = Ca::new("dr-east").unwrap();
    let key = HostKey::generate().unwrap();
    let cert = ca.issue_host("web1", &key.public_key_der(), Duration::from_secs(3600)).unwrap();
    verify(&ca, &cert, KeyUsage::client_auth(), SystemTime::now()).unwrap();
    // Not a server certificate.
    assert!(verify(&ca, &cert, KeyUsage::server_auth(), SystemTime::now()).is_err());
    // Not under another site's CA, even one with the same name.
    let other = Ca::new("dr-east").unwrap();
    assert!(verify(&other, &cert, KeyUsage::client_auth(), SystemTime::now()).is_err());
    // Expired after its validity.
    let later = SystemTime::now() + Duration::from_secs(7200);
    assert!(matches!(verify(&ca, &cert, KeyUsage::client_auth(), later), Err(webpki::Error::CertExpired { .. })));
}

#[test]
fn expired_host_certificate_is_refused() {
    let ca = Ca::new("dr-east").unwrap();
    let key = HostKey::generate().unwrap();
    let now = SystemTime::now();
    let cert = ca
        .issue_host_between(
            "web1",
            &key.public_key_der(),
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
    assert!(matches!(verify(&ca, &cert, KeyUsage::client_auth(), now), Err(webpki::Error::CertExpired { .. })));
}

#[test]
fn ca_read_back_from_pem_issues_certificates_that_verify_under_the_original() {
    let ca = Ca::new("site with spaces").unwrap();
    let again = Ca::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
    let key = HostKey::generate().unwrap();
    let cert = again.issue_host("db1", &key.public_key_der(), Duration::from_secs(3600)).unwrap();
    verify(&ca, &cert, KeyUsage::client_auth(), SystemTime::now()).unwrap();
    let (server, _) = again.issue_server(&["vault.example".to_owned()]).unwrap();
    verify(&ca, &server, KeyUsage::server_auth(), SystemTime::now()).unwrap();
}

#[test]
fn ca_certificate_and_another_key_are_refused() {
    let ca = Ca::new("a").unwrap();
    let other = Ca::new("a").unwrap();
    assert!(matches!(Ca::from_pem(ca.cert_pem(), &other.key_pem()), Err(PkiError::KeyMismatch)));
    assert!(matches!(Ca::from_pem("not pem", &ca.key_pem()), Err(PkiError::BadPem { .. })));
}

#[test]
fn server_certificate_is_valid_for_its_names_and_no_other() {
    let ca = Ca::new("dr-east").unwrap();
    let names = ["vault.example".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let (cert_pem, key_pem) = ca.issue_server(&names).unwrap();
    pki::key_der(&key_pem).unwrap();
    verify(&ca, &cert_pem, KeyUsage::server_auth(), SystemTime::now()).unwrap();
    let der = pki::cert_der(&cert_pem).unwrap();
    let cert = EndEntityCert::try_from(&der).unwrap();
    for good in ["vault.example", "127.0.0.1", "::1"] {
        let name = ServerName::try_from(good).unwrap();
        cert.verify_is_valid_for_subject_name(&name).unwrap_or_else(|e| panic!("{good}: {e}"));
    }
    for bad in ["other.example", "127.0.0.2", "vault.example.evil"] {
        let name = ServerName::try_from(bad).unwrap();
        assert!(cert.verify_is_valid_for_subject_name(&name).is_err(), "{bad} accepted");
    }
    // Not a client certificate.
    assert!(verify(&ca, &cert_pem, KeyUsage::client_auth(), SystemTime::now()).is_err());
}

#[test]
fn only_p256_public_keys_are_signed() {
    let ca = Ca::new("dr-east").unwrap();
    let mut der = HostKey::generate().unwrap().public_key_der();
    assert!(matches!(ca.issue_host("h", &der[..10], Duration::from_secs(60)), Err(PkiError::BadPublicKey { .. })));
    der.push(0);
    assert!(matches!(ca.issue_host("h", &der, Duration::from_secs(60)), Err(PkiError::BadPublicKey { .. })));
    assert!(matches!(Ca::new(""), Err(PkiError::BadSiteName { .. })));
}

#[test]
fn fingerprint_is_blake3_of_the_der() {
    let ca = Ca::new("dr-east").unwrap();
    let fp = pki::fingerprint_pem(ca.cert_pem()).unwrap();
    assert_eq!(fp, *blake3::hash(ca.cert_der()).as_bytes());
    assert_eq!(pki::hex(&fp).len(), 64);
}

#[test]
fn hex_round_trips_and_refuses_what_is_not_hex() {
    let bytes: Vec<u8> = (0..=255).collect();
    assert_eq!(pki::from_hex(&pki::hex(&bytes)).unwrap(), bytes);
    assert_eq!(pki::from_hex("0A0b").unwrap(), [10, 11]);
    for bad in ["0", "0g", "+1", "abc"] {
        assert_eq!(pki::from_hex(bad), None, "{bad}");
    }
}
