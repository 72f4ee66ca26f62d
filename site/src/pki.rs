//! The site's own certificate authority: the CA that `lifeboat site init`
//! makes, the server certificate it signs, and the host certificates it
//! issues at enrollment.
//!
//! Every key is ECDSA P-256 (rcgen with ring, as nbd-tls). A host's private
//! key is made on the host ([`HostKey`]) and never leaves it: the CA signs
//! the public key it is handed ([`Ca::issue_host`]), as a CSR-less
//! certificate request would. The server identifies a host by the
//! [`fingerprint`] of its certificate (BLAKE3 of the DER), recorded when the
//! certificate was issued, so nothing here parses certificates.
//!
//! The CA's subject is one common name, "Lifeboat site NAME", which
//! [`Ca::from_pem`] reads back from the certificate to rebuild the issuer
//! (rcgen's own reader needs x509-parser, a tree of crates this would be
//! the only user of).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PublicKeyData, SanType, SerialNumber, SignatureAlgorithm, PKCS_ECDSA_P256_SHA256,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// How long the site's CA is valid: the life of the site (its certificates
/// are replaced by a new `site init`, never renewed in place).
pub const CA_VALIDITY: Duration = Duration::from_secs(30 * 365 * 86_400);

/// How long the server's certificate is valid.
pub const SERVER_VALIDITY: Duration = Duration::from_secs(20 * 365 * 86_400);

/// How far back a new certificate's validity starts, for clocks that lag
/// the site's by a little.
pub const CLOCK_SKEW: Duration = Duration::from_secs(3_600);

/// What a site CA's common name starts with; the site's name follows.
pub const CA_NAME_PREFIX: &str = "Lifeboat site ";

/// The DER prefix of a P-256 SubjectPublicKeyInfo: SEQUENCE, the
/// AlgorithmIdentifier (id-ecPublicKey, prime256v1), and the BIT STRING
/// header of the 65-byte uncompressed point that follows.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// Why a certificate or key could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// rcgen refused to make a key or a certificate.
    #[error("making {what}: {source}")]
    Generate {
        /// What was being made.
        what: &'static str,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// A PEM file holds no object of the kind expected, or is malformed.
    #[error("{what} is not a PEM {what}: {detail}; is it the right file?")]
    BadPem {
        /// What was expected ("certificate", "private key").
        what: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// A private key is not an ECDSA P-256 key in PKCS#8.
    #[error("the private key is not an ECDSA P-256 PKCS#8 key: {0}")]
    BadKey(rcgen::Error),
    /// A public key handed in for signing is not a P-256 SubjectPublicKeyInfo.
    #[error("the public key is not an ECDSA P-256 SubjectPublicKeyInfo ({len} bytes); only P-256 keys are enrolled")]
    BadPublicKey {
        /// Its length.
        len: usize,
    },
    /// The CA certificate and the CA key are not a pair.
    #[error("the CA certificate does not hold the CA key's public key: ca.pem and ca.key are not a pair")]
    KeyMismatch,
    /// A server name is neither an IP address nor a valid DNS name.
    #[error("{name:?} is not a DNS name or an IP address for the server's certificate")]
    BadName {
        /// The name.
        name: String,
    },
    /// A host name cannot be a certificate's common name.
    #[error("{host:?} cannot name a host in a certificate")]
    BadHost {
        /// The name.
        host: String,
    },
    /// No server names were given.
    #[error("the server certificate needs at least one DNS name or IP address")]
    NoNames,
    /// A site name that cannot go in the CA's name.
    #[error("{name:?} cannot name a site: use 1 to 64 characters, no control characters")]
    BadSiteName {
        /// The name.
        name: String,
    },
    /// A CA certificate not made by `lifeboat site init`.
    #[error("the CA certificate was not made by `lifeboat site init` (its subject is not \"{CA_NAME_PREFIX}...\")")]
    NotOurCa,
    /// The system's random source failed.
    #[error("reading the system's random source: {0}")]
    Random(getrandom::Error),
}

/// The site's certificate authority: its certificate and its signing key.
pub struct Ca {
    cert_pem: String,
    cert_der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").field("fingerprint", &hex(&fingerprint(&self.cert_der))).finish_non_exhaustive()
    }
}

impl Ca {
    /// Makes a new self-signed CA for the site called `site_name` (its
    /// subject is "Lifeboat site NAME"), valid for [`CA_VALIDITY`].
    pub fn new(site_name: &str) -> Result<Ca, PkiError> {
        check_site_name(site_name)?;
        let key = new_key("the CA key")?;
        let mut params = ca_params(&format!("{CA_NAME_PREFIX}{site_name}"));
        let now = SystemTime::now();
        set_validity(&mut params, now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH), now + CA_VALIDITY);
        params.serial_number = Some(serial()?);
        let cert =
            params.self_signed(&key).map_err(|source| PkiError::Generate { what: "the CA certificate", source })?;
        let cert_pem = cert.pem();
        let cert_der = cert.der().clone();
        Ok(Ca { cert_pem, cert_der, issuer: Issuer::new(params, key) })
    }

    /// The CA of a site as stored: its certificate and its key, in PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let cert_der = cert_der(cert_pem)?;
        let key = KeyPair::from_pem_and_sign_algo(key_pem, &PKCS_ECDSA_P256_SHA256).map_err(PkiError::BadKey)?;
        let spki = key.subject_public_key_info();
        if !cert_der.windows(spki.len()).any(|w| w == spki.as_slice()) {
            return Err(PkiError::KeyMismatch);
        }
        let name = common_name(&cert_der).filter(|n| n.starts_with(CA_NAME_PREFIX)).ok_or(PkiError::NotOurCa)?;
        Ok(Ca { cert_pem: cert_pem.to_owned(), cert_der, issuer: Issuer::new(ca_params(&name), key) })
    }

    /// The CA's certificate, PEM: what hosts and the server trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's certificate, DER.
    pub fn cert_der(&self) -> &CertificateDer<'static> {
        &self.cert_der
    }

    /// The CA's private key, PKCS#8 PEM (a secret: the site stores it 0600).
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues the server's certificate for `names` (DNS names or IP
    /// addresses, each a subject alternative name; the first is also the
    /// common name), with a new key, valid for [`SERVER_VALIDITY`]. Returns
    /// the certificate and its private key, PEM.
    pub fn issue_server(&self, names: &[String]) -> Result<(String, String), PkiError> {
        let first = names.first().ok_or(PkiError::NoNames)?;
        let mut params = CertificateParams::default();
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<std::net::IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => n.clone().try_into().map(SanType::DnsName).map_err(|_| PkiError::BadName { name: n.clone() }),
            })
            .collect::<Result<_, _>>()?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, first.as_str());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = SystemTime::now();
        set_validity(&mut params, now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH), now + SERVER_VALIDITY);
        params.serial_number = Some(serial()?);
        let key = new_key("the server key")?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| PkiError::Generate { what: "the server certificate", source })?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Issues a host's client certificate: common name `host`, client-auth
    /// only, for the P-256 public key `public_key_der` (SubjectPublicKeyInfo
    /// DER, as [`HostKey::public_key_der`] gives), valid from a little
    /// before now for `valid_for`. Returns the certificate, PEM.
    pub fn issue_host(&self, host: &str, public_key_der: &[u8], valid_for: Duration) -> Result<String, PkiError> {
        let now = SystemTime::now();
        self.issue_host_between(
            host,
            public_key_der,
            now.checked_sub(CLOCK_SKEW).unwrap_or(UNIX_EPOCH),
            now + valid_for,
        )
    }

    /// [`Ca::issue_host`] with an explicit validity (tests make expired and
    /// not-yet-valid certificates with it).
    pub fn issue_host_between(
        &self,
        host: &str,
        public_key_der: &[u8],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<String, PkiError> {
        let public_key = P256PublicKey::from_der(public_key_der)?;
        if host.is_empty() || host.chars().any(|c| c.is_control()) {
            return Err(PkiError::BadHost { host: host.to_owned() });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, host);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, not_before, not_after);
        params.serial_number = Some(serial()?);
        let cert = params
            .signed_by(&public_key, &self.issuer)
            .map_err(|source| PkiError::Generate { what: "the host certificate", source })?;
        Ok(cert.pem())
    }
}

/// A host's key pair, made on the host; only its public half is sent.
pub struct HostKey {
    key: KeyPair,
}

impl std::fmt::Debug for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostKey").finish_non_exhaustive()
    }
}

impl HostKey {
    /// Makes a new ECDSA P-256 key pair.
    pub fn generate() -> Result<HostKey, PkiError> {
        Ok(HostKey { key: new_key("the host key")? })
    }

    /// The private key, PKCS#8 PEM (a secret: stored 0600, never sent).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The public key as SubjectPublicKeyInfo DER: what the CA signs.
    pub fn public_key_der(&self) -> Vec<u8> {
        self.key.subject_public_key_info()
    }
}

/// Whether `der` is a public key [`Ca::issue_host`] signs (a P-256
/// SubjectPublicKeyInfo).
pub fn check_public_key(der: &[u8]) -> Result<(), PkiError> {
    P256PublicKey::from_der(der).map(|_| ())
}

/// BLAKE3 of a certificate's DER: how the server knows a host.
pub fn fingerprint(cert_der: &[u8]) -> [u8; 32] {
    *blake3::hash(cert_der).as_bytes()
}

/// The first certificate in `pem`, DER.
pub fn cert_der(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadPem { what: "certificate", detail: e.to_string() })
}

/// The private key in `pem`, DER.
pub fn key_der(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::BadPem { what: "private key", detail: e.to_string() })
}

/// The [`fingerprint`] of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Result<[u8; 32], PkiError> {
    Ok(fingerprint(&cert_der(pem)?))
}

/// Lower-case hex of `bytes` (fingerprints in files and logs).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// The bytes of lower-case or upper-case hex `text`, if it is hex.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    text.as_bytes()
        .chunks(2)
        .map(|pair| match pair {
            [hi, lo] => Some(u8::try_from((char::from(*hi).to_digit(16)? << 4) | char::from(*lo).to_digit(16)?).ok()?),
            _ => None,
        })
        .collect()
}

/// A P-256 public key checked against the one SubjectPublicKeyInfo form
/// P-256 keys take (rcgen's own parser needs x509-parser, a dependency
/// tree this would be its only user of).
struct P256PublicKey {
    point: Vec<u8>,
}

impl P256PublicKey {
    fn from_der(der: &[u8]) -> Result<P256PublicKey, PkiError> {
        match der.strip_prefix(&P256_SPKI_PREFIX[..]) {
            Some(point) if point.len() == 65 && point[0] == 0x04 => Ok(P256PublicKey { point: point.to_vec() }),
            _ => Err(PkiError::BadPublicKey { len: der.len() }),
        }
    }
}

impl PublicKeyData for P256PublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

/// A site name fits in the CA's common name (a short UTF8String).
fn check_site_name(name: &str) -> Result<(), PkiError> {
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(PkiError::BadSiteName { name: name.to_owned() });
    }
    Ok(())
}

fn new_key(what: &'static str) -> Result<KeyPair, PkiError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| PkiError::Generate { what, source })
}

/// The CA's parameters: its subject, the common name `name` alone (what
/// an issuer needs besides its key: the name issued certificates carry as
/// their issuer, which must equal the CA certificate's subject), and its
/// usages.
fn ca_params(name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    params
}

/// A random positive 128-bit serial number.
fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(PkiError::Random)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

/// `t` in rcgen's time type, reached from its public epoch (rcgen
/// re-exports a constructor, not the `time` crate; adding that crate for
/// this alone is not worth it).
fn at<T>(epoch: T, t: SystemTime) -> T
where
    T: std::ops::Add<Duration, Output = T> + std::ops::Sub<Duration, Output = T>,
{
    match t.duration_since(UNIX_EPOCH) {
        Ok(after) => epoch + after,
        Err(before) => epoch - before.duration(),
    }
}

/// Sets `params`' validity to `not_before..=not_after`.
fn set_validity(params: &mut CertificateParams, not_before: SystemTime, not_after: SystemTime) {
    params.not_before = at(rcgen::date_time_ymd(1970, 1, 1), not_before);
    params.not_after = at(rcgen::date_time_ymd(1970, 1, 1), not_after);
}

/// The common name in a certificate's DER made by [`Ca::new`]: the first
/// `id-at-commonName` attribute (the issuer's, the same as the subject's
/// in a self-signed certificate), a UTF8String of under 128 bytes.
fn common_name(der: &[u8]) -> Option<String> {
    const CN_OID: [u8; 5] = [0x06, 0x03, 0x55, 0x04, 0x03];
    let at = der.windows(CN_OID.len()).position(|w| w == CN_OID)? + CN_OID.len();
    let (&tag, rest) = der[at..].split_first()?;
    let (&len, rest) = rest.split_first()?;
    if tag != 0x0c || len >= 0x80 {
        return None;
    }
    let value = rest.get(..usize::from(len))?;
    String::from_utf8(value.to_vec()).ok()
}
