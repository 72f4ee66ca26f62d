//! Enrollment: how a protected host gets its certificate, like ASR's
//! registration key.
//!
//! 1. At the site, [`Site::enroll`] makes a one-time token (256 random
//!    bits) that expires, and writes an [`EnrollmentFile`]: the token, the
//!    site's CA certificate, the server's addresses, the host's name and
//!    vaults. The site keeps only BLAKE3 of the token (`enroll/ID.toml`,
//!    ID = the hash), so its directory holds nothing that redeems it.
//! 2. The administrator carries the file to the host (it is a secret until
//!    redeemed: mode 0600).
//! 3. On the host, [`join`] makes the host's key pair (its private key is
//!    written 0600 and never sent), sends the token and the public key over
//!    TLS, checked against the CA in the file (`POST /v1/enroll`), and
//!    stores the certificate it gets under `HOME/sites/HOST_PORT/`.
//! 4. The server calls [`Site::redeem`]: the token must be known, for this
//!    host, unexpired and unused. It is consumed by creating `enroll/ID.used`
//!    with `O_EXCL`, so of two redemptions racing exactly one wins; then the
//!    CA signs the key, and `hosts/HOST.toml` records the new certificate's
//!    fingerprint (a re-enrollment replaces the old one, which stops working).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pki::{self, HostKey, PkiError};
use crate::site_dir::{
    check_name, damaged, io_at, make_dir, split_address, sync_dir, write, HostRecord, Site, SiteError,
};

/// How long a host certificate is valid. Hosts are cut off by revocation
/// (checked on every request), not by expiry; there is no renewal yet, so
/// the validity is long.
pub const HOST_VALIDITY: Duration = Duration::from_secs(10 * 365 * 86_400);

/// The version of the enrollment file's layout.
const ENROLLMENT_FORMAT: u32 = 1;

/// What `lifeboat site enroll` writes and `lifeboat site join` reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollmentFile {
    /// The layout's version.
    pub format: u32,
    /// The site's name.
    pub site: String,
    /// Where the server is reached, `HOST:PORT`, in order of preference.
    pub addresses: Vec<String>,
    /// The host this file enrolls.
    pub host: String,
    /// The vaults it may use.
    pub vaults: Vec<String>,
    /// When the token expires, RFC 3339.
    pub expires: String,
    /// The one-time token, hex (the secret).
    pub token: String,
    /// The site's CA certificate, PEM: the only server the host will trust.
    pub ca: String,
}

impl EnrollmentFile {
    /// Writes the file at `path`, mode 0600 (it is a secret until redeemed).
    pub fn write(&self, path: &Path) -> Result<(), SiteError> {
        let text = toml::to_string(self).map_err(|e| damaged(path, e))?;
        write(path, text.as_bytes())
    }

    /// Reads an enrollment file.
    pub fn read(path: &Path) -> Result<EnrollmentFile, SiteError> {
        let text = fs::read_to_string(path).map_err(io_at(path))?;
        let file: EnrollmentFile = toml::from_str(&text).map_err(|e| damaged(path, e))?;
        if file.format != ENROLLMENT_FORMAT {
            return Err(damaged(
                path,
                format!("layout version {} (this lifeboat reads {ENROLLMENT_FORMAT})", file.format),
            ));
        }
        Ok(file)
    }
}

/// `enroll/ID.toml`: a token the site issued, by the hash of the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct TokenRecord {
    host: String,
    vaults: Vec<String>,
    issued: String,
    expires: String,
}

/// A host's request for its certificate (the body of `POST /v1/enroll`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedeemRequest {
    /// The token, hex, from the enrollment file.
    pub token: String,
    /// The host enrolling.
    pub host: String,
    /// Its public key, SubjectPublicKeyInfo DER.
    pub public_key_der: Vec<u8>,
}

/// Why a redemption was refused (the server answers `403` with the
/// message: only the holder of a token learns what is wrong with it).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RedeemError {
    /// No such token was issued (or it was typed wrong).
    #[error("the enrollment token is not one this site issued: ask the site for a new enrollment file")]
    UnknownToken,
    /// The token was redeemed already.
    #[error("the enrollment token of host {host:?} was used already: ask the site for a new enrollment file")]
    Used {
        /// The host it was for.
        host: String,
    },
    /// The token expired.
    #[error("the enrollment token of host {host:?} expired at {expires}: ask the site for a new enrollment file")]
    Expired {
        /// The host it was for.
        host: String,
        /// When it expired.
        expires: String,
    },
    /// The token is another host's.
    #[error("the enrollment token is for host {expected:?}, not {host:?}")]
    WrongHost {
        /// The host it was issued for.
        expected: String,
        /// The host that presented it.
        host: String,
    },
    /// The public key is not one the CA signs.
    #[error(transparent)]
    Key(PkiError),
    /// The site's files.
    #[error(transparent)]
    Site(#[from] SiteError),
}

impl Site {
    /// Issues a one-time enrollment for `host`, for `vaults`, that expires
    /// after `valid_for`. The returned file holds the token; the site keeps
    /// only its hash.
    pub fn enroll(&self, host: &str, vaults: &[String], valid_for: Duration) -> Result<EnrollmentFile, SiteError> {
        check_name("host", host)?;
        if vaults.is_empty() {
            return Err(SiteError::BadName { what: "vault", name: String::new() });
        }
        for v in vaults {
            check_name("vault", v)?;
        }
        let mut token = [0u8; 32];
        getrandom::fill(&mut token).map_err(|e| SiteError::Pki(PkiError::Random(e)))?;
        let token = pki::hex(&token);
        let now = jiff::Timestamp::now();
        let span = jiff::SignedDuration::try_from(valid_for).map_err(|e| damaged(self.dir(), e))?;
        // Whole seconds, rounded down: never later than asked.
        let expires = now.checked_add(span).map_err(|e| damaged(self.dir(), e))?;
        let expires =
            jiff::Timestamp::from_second(expires.as_second()).map_err(|e| damaged(self.dir(), e))?.to_string();
        let record = TokenRecord {
            host: host.to_owned(),
            vaults: vaults.to_vec(),
            issued: now.to_string(),
            expires: expires.clone(),
        };
        let path = self.token_path(&token, "toml");
        let text = toml::to_string(&record).map_err(|e| damaged(&path, e))?;
        write(&path, text.as_bytes())?;
        self.audit()?
            .record("site.enroll", serde_json::json!({ "host": host, "vaults": vaults, "expires": expires }))?;
        Ok(EnrollmentFile {
            format: ENROLLMENT_FORMAT,
            site: self.config().name.clone(),
            addresses: self.config().addresses.clone(),
            host: host.to_owned(),
            vaults: vaults.to_vec(),
            expires,
            token,
            ca: self.ca_pem()?,
        })
    }

    /// Redeems an enrollment token: checks it, consumes it (one winner
    /// among racing redemptions), issues the host's certificate for its
    /// key, and records the host (replacing an earlier certificate).
    /// Returns the certificate, PEM.
    pub fn redeem(&self, request: &RedeemRequest) -> Result<String, RedeemError> {
        // The token's hash names the file: a malformed token simply names
        // none (and never a path outside enroll/).
        let path = self.token_path(&request.token, "toml");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(RedeemError::UnknownToken),
            Err(e) => return Err(SiteError::Io { path, source: e }.into()),
        };
        let record: TokenRecord = toml::from_str(&text).map_err(|e| damaged(&path, e))?;
        if record.host != request.host {
            return Err(RedeemError::WrongHost { expected: record.host, host: request.host.clone() });
        }
        let expires: jiff::Timestamp = record.expires.parse().map_err(|e| damaged(&path, e))?;
        if jiff::Timestamp::now() >= expires {
            return Err(RedeemError::Expired { host: record.host, expires: record.expires });
        }
        let ca = self.ca()?;
        // Check the key before the token is spent on it.
        pki::check_public_key(&request.public_key_der).map_err(RedeemError::Key)?;
        self.consume(&request.token, &record.host)?;
        let cert = ca.issue_host(&record.host, &request.public_key_der, HOST_VALIDITY).map_err(RedeemError::Key)?;
        let fingerprint = pki::hex(&pki::fingerprint_pem(&cert).map_err(RedeemError::Key)?);
        self.change(|| {
            let mut superseded = Vec::new();
            if let Some(old) = self.host(&record.host)? {
                superseded = old.superseded;
                superseded.push(old.fingerprint);
            }
            self.write_host(&HostRecord {
                host: record.host.clone(),
                vaults: record.vaults.clone(),
                fingerprint: fingerprint.clone(),
                enrolled: jiff::Timestamp::now().to_string(),
                revoked: None,
                superseded,
            })
        })?;
        tracing::info!(host = %record.host, vaults = ?record.vaults, "host enrolled");
        // The certificate is issued: a log that cannot be written is the
        // site's problem to see (warned), not the host's.
        let joined = serde_json::json!({ "host": record.host, "vaults": record.vaults, "fingerprint": fingerprint });
        if let Err(e) = self.audit().and_then(|a| a.record("site.join", joined)) {
            tracing::warn!("site {}: the audit log: {e}", self.dir().display());
        }
        Ok(cert)
    }

    /// Marks the token used, atomically: `O_CREAT|O_EXCL` on `ID.used`
    /// succeeds for exactly one caller, in any process.
    fn consume(&self, token: &str, host: &str) -> Result<(), RedeemError> {
        let path = self.token_path(token, "used");
        let mut f = match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(RedeemError::Used { host: host.to_owned() })
            }
            Err(e) => return Err(SiteError::Io { path, source: e }.into()),
        };
        f.write_all(jiff::Timestamp::now().to_string().as_bytes()).and_then(|()| f.sync_all()).map_err(io_at(&path))?;
        sync_dir(&self.dir().join("enroll"))?;
        Ok(())
    }

    fn token_path(&self, token: &str, ext: &str) -> PathBuf {
        let id = blake3::hash(token.as_bytes()).to_hex();
        self.dir().join("enroll").join(format!("{id}.{ext}"))
    }
}

pub use crate::client::Credentials;

/// `HOME/sites/HOST_PORT/site.toml`: what a host knows of a site it joined.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinedSite {
    /// The site's name.
    pub site: String,
    /// The address joined through, `HOST:PORT`.
    pub address: String,
    /// Every address of the site (credentials are found under any of them).
    #[serde(default)]
    pub addresses: Vec<String>,
    /// This host's name at the site.
    pub host: String,
    /// The vaults it may use.
    pub vaults: Vec<String>,
}

/// Why joining a site failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// The enrollment file names no address.
    #[error("the enrollment file names no server address: ask the site for a new one")]
    NoAddress,
    /// The request did not reach the server or was refused.
    #[error("the site refused or could not be reached: {0}")]
    Send(Box<dyn std::error::Error + Send + Sync>),
    /// The certificate the site sent is not for this key and site.
    #[error("the certificate the site sent is unusable: {0}")]
    BadCertificate(PkiError),
    /// Making the key or storing the files.
    #[error(transparent)]
    Site(#[from] SiteError),
    /// The key.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The directory of the site reached at `host:port` under `home`.
pub fn site_dir(home: &Path, host: &str, port: u16) -> PathBuf {
    home.join("sites").join(format!("{host}_{port}"))
}

/// Joins the site of `file`: makes this host's key pair, asks the site
/// through `send` (the real client posts `POST /v1/enroll` over TLS checked
/// against `file.ca`) for a certificate, and stores the CA, the
/// certificate, the key (0600) and a `site.toml` under
/// `HOME/sites/HOST_PORT/` (0700) for the first address. Returns that
/// directory. The key is written only once the certificate came back.
pub fn join<E>(
    file: &EnrollmentFile,
    home: &Path,
    send: impl FnOnce(&EnrollmentFile, &RedeemRequest) -> Result<String, E>,
) -> Result<PathBuf, JoinError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let address = file.addresses.first().ok_or(JoinError::NoAddress)?;
    let (host, port) = split_address(address)?;
    check_name("host", &file.host)?;
    let key = HostKey::generate()?;
    let request =
        RedeemRequest { token: file.token.clone(), host: file.host.clone(), public_key_der: key.public_key_der() };
    let cert_pem = send(file, &request).map_err(|e| JoinError::Send(e.into()))?;
    // The certificate must be a certificate at all (the TLS handshake
    // checks the rest the first time it is used).
    pki::cert_der(&cert_pem).map_err(JoinError::BadCertificate)?;
    let sites = home.join("sites");
    if !sites.exists() {
        fs::create_dir_all(home).map_err(io_at(home))?;
        make_dir(&sites)?;
    }
    let dir = site_dir(home, &host, port);
    make_dir(&dir)?;
    write(&dir.join("host.key"), key.key_pem().as_bytes())?;
    write(&dir.join("host.pem"), cert_pem.as_bytes())?;
    write(&dir.join("ca.pem"), file.ca.as_bytes())?;
    let joined = JoinedSite {
        site: file.site.clone(),
        address: address.clone(),
        addresses: file.addresses.clone(),
        host: file.host.clone(),
        vaults: file.vaults.clone(),
    };
    let path = dir.join("site.toml");
    let text = toml::to_string(&joined).map_err(|e| damaged(&path, e))?;
    write(&path, text.as_bytes())?;
    Ok(dir)
}

/// The directory of the joined site reached at `host:port`: the one named
/// after it, or else the one whose site lists it among its addresses (a
/// site joined through another of its addresses).
pub fn joined_dir(home: &Path, host: &str, port: u16) -> Result<PathBuf, SiteError> {
    let named = site_dir(home, host, port);
    let not_joined = || SiteError::NotJoined { address: format!("{host}:{port}"), dir: named.clone() };
    if named.join("site.toml").exists() {
        return Ok(named);
    }
    let sites = home.join("sites");
    let entries = match fs::read_dir(&sites) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_joined()),
        Err(e) => return Err(SiteError::Io { path: sites, source: e }),
    };
    for entry in entries {
        let dir = entry.map_err(io_at(&sites))?.path();
        let Ok(text) = fs::read_to_string(dir.join("site.toml")) else { continue };
        let Ok(joined) = toml::from_str::<JoinedSite>(&text) else { continue };
        let want = (host.to_owned(), port);
        if joined.addresses.iter().any(|a| split_address(a).is_ok_and(|hp| hp == want)) {
            return Ok(dir);
        }
    }
    Err(not_joined())
}

/// This host's credentials for the site at `host:port` (joined earlier,
/// through that address or another of the site's).
pub fn credentials_for(home: &Path, host: &str, port: u16) -> Result<Credentials, SiteError> {
    let dir = joined_dir(home, host, port)?;
    let read = |name: &str| {
        let path = dir.join(name);
        fs::read_to_string(&path).map_err(io_at(&path))
    };
    Ok(Credentials { ca_pem: read("ca.pem")?, cert_pem: read("host.pem")?, key_pem: read("host.key")? })
}

/// What this host knows of the site at `host:port`.
pub fn joined_site(home: &Path, host: &str, port: u16) -> Result<JoinedSite, SiteError> {
    let path = joined_dir(home, host, port)?.join("site.toml");
    let text = fs::read_to_string(&path).map_err(io_at(&path))?;
    toml::from_str(&text).map_err(|e| damaged(&path, e))
}
