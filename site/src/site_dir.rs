//! The site directory that `lifeboat site init` makes and the vault server
//! reads: the site's CA, the server's certificate, and the hosts enrolled.
//!
//! ```text
//! SITE/                  0700
//!   site.toml            the site's name and the addresses HOST:PORT it is reached at
//!   ca.pem  ca.key       the site's CA (the key 0600)
//!   server.pem server.key  the server's certificate and key (the key 0600)
//!   hosts/HOST.toml      a host: its vaults, its certificate's fingerprint, revoked or not
//!   generation           changed on every change under hosts/ (the server's cache check)
//!   enroll/ID.toml       an enrollment token not yet redeemed (ID = BLAKE3 of the token)
//!   enroll/ID.used       its redemption (created once, atomically)
//!   grants/VAULT/HOST    what each host wrote (the server's rights journal)
//!   contact/HOST.json    last contact and bytes received (the server, every few seconds)
//!   audit.key            the key the site's audit log is MAC'd under (0600)
//!   audit/FP.log         the site's audit log (`site_audit`; `lifeboat site audit`)
//!   lock                 serializes changes to hosts/ between processes
//! ```
//!
//! Every file is written by `system::file::replace` (private temporary,
//! fsync, rename, fsync of the directory); every directory is 0700 and
//! every file 0600 whatever the umask. `site.toml` is written last by
//! [`Site::init`]: a directory without it is not a site.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::pki::{self, Ca, PkiError};
use crate::site_audit::SiteAudit;

/// How often a host's contact file is rewritten at most, per host.
pub const CONTACT_WRITE_INTERVAL: Duration = Duration::from_secs(5);

/// The version of `site.toml`'s layout.
const SITE_FORMAT: u32 = 1;

/// Why a site operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SiteError {
    /// `site init` over a directory that holds something.
    #[error("{} is not empty: `lifeboat site init` makes a new site in an empty or new directory", dir.display())]
    NotEmpty {
        /// The directory.
        dir: PathBuf,
    },
    /// A directory without `site.toml`.
    #[error("{} is not a site directory (no site.toml): make one with `lifeboat site init`, or pass --site", dir.display())]
    NotASite {
        /// The directory.
        dir: PathBuf,
    },
    /// An address that is not `HOST:PORT`.
    #[error("{address:?} is not HOST:PORT (an IPv6 address goes in brackets: [::1]:8443)")]
    BadAddress {
        /// The address.
        address: String,
    },
    /// `site init` without an address.
    #[error("a site needs at least one address HOST:PORT that hosts reach its server at")]
    NoAddress,
    /// A host or vault name outside the naming rule.
    #[error(
        "{name:?} cannot name a {what}: use 1 to 64 letters, digits, '.', '-' or '_', not starting with '.' or '-'"
    )]
    BadName {
        /// "host" or "vault".
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A host the site never enrolled.
    #[error("no host {host:?} is enrolled at this site (`lifeboat site hosts` lists them)")]
    UnknownHost {
        /// The host.
        host: String,
    },
    /// This host never joined the site at this address.
    #[error("this host has not joined the site at {address} (no {}): run `lifeboat site join FILE` with an enrollment file from the site", dir.display())]
    NotJoined {
        /// `HOST:PORT`.
        address: String,
        /// Where its credentials would be.
        dir: PathBuf,
    },
    /// A file of the site could not be parsed.
    #[error("{} is damaged: {detail}", path.display())]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A certificate or key could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// Reading or writing a file of the site failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

pub(crate) fn io_at(path: &Path) -> impl FnOnce(io::Error) -> SiteError + '_ {
    move |source| SiteError::Io { path: path.to_path_buf(), source }
}

/// `site.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SiteConfig {
    /// The layout's version.
    pub format: u32,
    /// The site's name (in its CA's subject).
    pub name: String,
    /// Where hosts reach the server, `HOST:PORT`; the server's certificate
    /// names each HOST.
    pub addresses: Vec<String>,
}

/// `hosts/HOST.toml`: an enrolled host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRecord {
    /// The host's name (its certificate's common name).
    pub host: String,
    /// The vaults it may use.
    pub vaults: Vec<String>,
    /// BLAKE3 of its current certificate's DER, hex.
    pub fingerprint: String,
    /// When it was (last) enrolled, RFC 3339.
    pub enrolled: String,
    /// When it was revoked, RFC 3339; absent while it may connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked: Option<String>,
    /// Fingerprints of its earlier certificates, replaced by a re-enrollment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<String>,
}

/// `contact/HOST.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactRecord {
    /// The host.
    pub host: String,
    /// Its last request, RFC 3339.
    pub last_contact: String,
    /// Bytes of request bodies received from it, in all.
    pub bytes_received: u64,
}

/// A host as `site hosts` lists it (in JSON: the record's fields, every
/// one present, `revoked` and `last_contact` null when there is none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// The host's record.
    pub record: HostRecord,
    /// Its last contact, RFC 3339, if it ever made one.
    pub last_contact: Option<String>,
    /// Bytes received from it.
    pub bytes_received: u64,
}

impl Serialize for HostInfo {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            host: &'a str,
            vaults: &'a [String],
            fingerprint: &'a str,
            enrolled: &'a str,
            revoked: Option<&'a str>,
            superseded: &'a [String],
            last_contact: Option<&'a str>,
            bytes_received: u64,
        }
        let r = &self.record;
        Json {
            host: &r.host,
            vaults: &r.vaults,
            fingerprint: &r.fingerprint,
            enrolled: &r.enrolled,
            revoked: r.revoked.as_deref(),
            superseded: &r.superseded,
            last_contact: self.last_contact.as_deref(),
            bytes_received: self.bytes_received,
        }
        .serialize(s)
    }
}

/// What a certificate's fingerprint says about its holder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// An enrolled host and the vaults it may use.
    Enrolled {
        /// The host.
        host: String,
        /// Its vaults.
        vaults: Vec<String>,
    },
    /// A host's certificate that is revoked, or replaced by a re-enrollment.
    Revoked {
        /// The host.
        host: String,
    },
    /// No certificate of this site's hosts.
    Unknown,
}

/// The fingerprint index, valid for one value of the generation file.
#[derive(Default)]
struct Cache {
    generation: Option<Vec<u8>>,
    by_fingerprint: HashMap<String, Lookup>,
}

/// A host's contact, as the server accumulates it.
struct Contact {
    bytes: u64,
    last: jiff::Timestamp,
    written: Option<Instant>,
    dirty: bool,
}

/// An open site directory.
pub struct Site {
    dir: PathBuf,
    config: SiteConfig,
    cache: Mutex<Cache>,
    contacts: Mutex<HashMap<String, Contact>>,
    audit: std::sync::OnceLock<SiteAudit>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site").field("dir", &self.dir).field("config", &self.config).finish_non_exhaustive()
    }
}

impl Site {
    /// Makes a new site in `dir` (new or empty) called `name`, reached at
    /// `addresses` (`HOST:PORT` each): its CA, the server's certificate for
    /// every HOST, and the empty directories.
    pub fn init(dir: &Path, name: &str, addresses: &[String]) -> Result<Site, SiteError> {
        if addresses.is_empty() {
            return Err(SiteError::NoAddress);
        }
        let mut names = Vec::new();
        for a in addresses {
            let (host, _) = split_address(a)?;
            if !names.contains(&host) {
                names.push(host);
            }
        }
        let ca = Ca::new(name)?;
        let (server_pem, server_key) = ca.issue_server(&names)?;
        match fs::read_dir(dir) {
            Ok(mut entries) => {
                if entries.next().is_some() {
                    return Err(SiteError::NotEmpty { dir: dir.to_path_buf() });
                }
                fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_at(dir))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fs::create_dir_all(parent).map_err(io_at(parent))?;
                }
                make_dir(dir)?;
            }
            Err(e) => return Err(SiteError::Io { path: dir.to_path_buf(), source: e }),
        }
        for sub in ["hosts", "enroll", "grants", "contact"] {
            make_dir(&dir.join(sub))?;
        }
        write(&dir.join("ca.pem"), ca.cert_pem().as_bytes())?;
        write(&dir.join("ca.key"), ca.key_pem().as_bytes())?;
        write(&dir.join("server.pem"), server_pem.as_bytes())?;
        write(&dir.join("server.key"), server_key.as_bytes())?;
        write(&dir.join("generation"), new_generation()?.as_bytes())?;
        let config = SiteConfig { format: SITE_FORMAT, name: name.to_owned(), addresses: addresses.to_vec() };
        let text = toml::to_string(&config).map_err(|e| damaged(&dir.join("site.toml"), e))?;
        write(&dir.join("site.toml"), text.as_bytes())?;
        sync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))?;
        let site = Site::with(dir, config);
        let ca_fingerprint = pki::hex(&pki::fingerprint_pem(ca.cert_pem())?);
        site.audit()?.record(
            "site.init",
            serde_json::json!({ "name": name, "addresses": addresses, "ca_fingerprint": ca_fingerprint }),
        )?;
        Ok(site)
    }

    /// Opens the site in `dir`.
    pub fn open(dir: &Path) -> Result<Site, SiteError> {
        let path = dir.join("site.toml");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(SiteError::NotASite { dir: dir.to_path_buf() })
            }
            Err(e) => return Err(SiteError::Io { path, source: e }),
        };
        let config: SiteConfig = toml::from_str(&text).map_err(|e| damaged(&path, e))?;
        if config.format != SITE_FORMAT {
            return Err(damaged(
                &path,
                format!("layout version {} (this lifeboat reads {SITE_FORMAT})", config.format),
            ));
        }
        Ok(Site::with(dir, config))
    }

    fn with(dir: &Path, config: SiteConfig) -> Site {
        Site {
            dir: dir.to_path_buf(),
            config,
            cache: Mutex::default(),
            contacts: Mutex::default(),
            audit: std::sync::OnceLock::new(),
        }
    }

    /// The site's audit log ([`crate::site_audit`]).
    pub fn audit(&self) -> Result<&SiteAudit, SiteError> {
        if let Some(a) = self.audit.get() {
            return Ok(a);
        }
        let a = SiteAudit::open(&self.dir)?;
        Ok(self.audit.get_or_init(|| a))
    }

    /// The site directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `site.toml`.
    pub fn config(&self) -> &SiteConfig {
        &self.config
    }

    /// The grants journal's directory (`SITE/grants`).
    pub fn grants_dir(&self) -> PathBuf {
        self.dir.join("grants")
    }

    /// The site's CA certificate, PEM.
    pub fn ca_pem(&self) -> Result<String, SiteError> {
        self.read("ca.pem")
    }

    /// The server's certificate and key, PEM.
    pub fn server_pem(&self) -> Result<(String, String), SiteError> {
        Ok((self.read("server.pem")?, self.read("server.key")?))
    }

    /// The site's CA, with its key (to issue host certificates).
    pub fn ca(&self) -> Result<Ca, SiteError> {
        Ok(Ca::from_pem(&self.read("ca.pem")?, &self.read("ca.key")?)?)
    }

    pub(crate) fn read(&self, name: &str) -> Result<String, SiteError> {
        let path = self.dir.join(name);
        fs::read_to_string(&path).map_err(io_at(&path))
    }

    pub(crate) fn host_path(&self, host: &str) -> PathBuf {
        self.dir.join("hosts").join(format!("{host}.toml"))
    }

    /// The record of `host`, if it was ever enrolled.
    pub fn host(&self, host: &str) -> Result<Option<HostRecord>, SiteError> {
        check_name("host", host)?;
        let path = self.host_path(host);
        match fs::read_to_string(&path) {
            Ok(text) => Ok(Some(toml::from_str(&text).map_err(|e| damaged(&path, e))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SiteError::Io { path, source: e }),
        }
    }

    /// Every host record, sorted by name.
    pub fn host_records(&self) -> Result<Vec<HostRecord>, SiteError> {
        let dir = self.dir.join("hosts");
        let mut out = Vec::new();
        for entry in fs::read_dir(&dir).map_err(io_at(&dir))? {
            let path = entry.map_err(io_at(&dir))?.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = fs::read_to_string(&path).map_err(io_at(&path))?;
                out.push(toml::from_str::<HostRecord>(&text).map_err(|e| damaged(&path, e))?);
            }
        }
        out.sort_by(|a, b| a.host.cmp(&b.host));
        Ok(out)
    }

    /// Runs `change` holding the site's lock (against other processes),
    /// then changes the generation so every server's cache reloads.
    pub(crate) fn change<T>(&self, change: impl FnOnce() -> Result<T, SiteError>) -> Result<T, SiteError> {
        let path = self.dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_at(&path))?;
        system::lock::lock(&file, true).map_err(io_at(&path))?;
        let out = change()?;
        write(&self.dir.join("generation"), new_generation()?.as_bytes())?;
        Ok(out)
    }

    /// Writes `record` (holding the lock, see [`Site::change`]).
    pub(crate) fn write_host(&self, record: &HostRecord) -> Result<(), SiteError> {
        let path = self.host_path(&record.host);
        let text = toml::to_string(record).map_err(|e| damaged(&path, e))?;
        write(&path, text.as_bytes())
    }

    /// Cuts `host` off: its certificate is refused from the server's next
    /// request on, on new and open connections alike. Revoking a revoked
    /// host is not an error (it keeps its first revocation time).
    pub fn revoke(&self, host: &str) -> Result<HostRecord, SiteError> {
        self.change(|| {
            let mut record = self.host(host)?.ok_or_else(|| SiteError::UnknownHost { host: host.to_owned() })?;
            if record.revoked.is_none() {
                record.revoked = Some(jiff::Timestamp::now().to_string());
                self.write_host(&record)?;
                self.audit()?.record(
                    "site.revoke",
                    serde_json::json!({ "host": host, "fingerprint": record.fingerprint, "vaults": record.vaults }),
                )?;
            }
            Ok(record)
        })
    }

    /// Who holds the certificate with this fingerprint (hex BLAKE3 of its
    /// DER). Cheap enough for every request: the index is rebuilt only when
    /// the generation file changed (one small read otherwise).
    pub fn lookup(&self, fingerprint: &str) -> Result<Lookup, SiteError> {
        let path = self.dir.join("generation");
        // Read before the host records: a change writes them first, then
        // the generation, so a reload never keeps a stale index.
        let generation = fs::read(&path).map_err(io_at(&path))?;
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.generation.as_deref() != Some(generation.as_slice()) {
            let mut index = HashMap::new();
            for r in self.host_records()? {
                for old in &r.superseded {
                    let _ = index.insert(old.clone(), Lookup::Revoked { host: r.host.clone() });
                }
                let now = match r.revoked {
                    Some(_) => Lookup::Revoked { host: r.host.clone() },
                    None => Lookup::Enrolled { host: r.host.clone(), vaults: r.vaults.clone() },
                };
                let _ = index.insert(r.fingerprint.clone(), now);
            }
            *cache = Cache { generation: Some(generation), by_fingerprint: index };
        }
        Ok(cache.by_fingerprint.get(fingerprint).cloned().unwrap_or(Lookup::Unknown))
    }

    /// Every host with its last contact and bytes received, sorted by name.
    pub fn hosts(&self) -> Result<Vec<HostInfo>, SiteError> {
        self.host_records()?
            .into_iter()
            .map(|record| {
                let contact = self.read_contact(&record.host)?;
                Ok(HostInfo {
                    last_contact: contact.as_ref().map(|c| c.last_contact.clone()),
                    bytes_received: contact.map_or(0, |c| c.bytes_received),
                    record,
                })
            })
            .collect()
    }

    fn contact_path(&self, host: &str) -> PathBuf {
        self.dir.join("contact").join(format!("{host}.json"))
    }

    fn read_contact(&self, host: &str) -> Result<Option<ContactRecord>, SiteError> {
        let path = self.contact_path(host);
        match fs::read(&path) {
            Ok(bytes) => Ok(Some(serde_json::from_slice(&bytes).map_err(|e| damaged(&path, e))?)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(SiteError::Io { path, source: e }),
        }
    }

    /// Notes that `host` made a request with `bytes` of body. The contact
    /// file is rewritten at most every [`CONTACT_WRITE_INTERVAL`] per host;
    /// [`Site::flush_contacts`] writes what is pending (at shutdown).
    pub fn record_contact(&self, host: &str, bytes: u64) -> Result<(), SiteError> {
        self.record_contact_at(host, bytes, Instant::now())
    }

    /// [`Site::record_contact`] at `now` (tests step the clock).
    pub fn record_contact_at(&self, host: &str, bytes: u64, now: Instant) -> Result<(), SiteError> {
        check_name("host", host)?;
        let mut contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        if !contacts.contains_key(host) {
            // Continue the total the file holds (a restarted server).
            let before = self.read_contact(host)?.map_or(0, |c| c.bytes_received);
            let _ = contacts.insert(
                host.to_owned(),
                Contact { bytes: before, last: jiff::Timestamp::now(), written: None, dirty: true },
            );
        }
        let Some(c) = contacts.get_mut(host) else { return Ok(()) };
        c.bytes = c.bytes.saturating_add(bytes);
        c.last = jiff::Timestamp::now();
        c.dirty = true;
        if c.written.is_none_or(|w| now.saturating_duration_since(w) >= CONTACT_WRITE_INTERVAL) {
            self.write_contact(host, c)?;
            c.written = Some(now);
            c.dirty = false;
        }
        Ok(())
    }

    /// Writes every contact not yet written.
    pub fn flush_contacts(&self) -> Result<(), SiteError> {
        let mut contacts = self.contacts.lock().unwrap_or_else(|p| p.into_inner());
        for (host, c) in contacts.iter_mut().filter(|(_, c)| c.dirty) {
            self.write_contact(host, c)?;
            c.dirty = false;
        }
        Ok(())
    }

    fn write_contact(&self, host: &str, c: &Contact) -> Result<(), SiteError> {
        let path = self.contact_path(host);
        let record = ContactRecord { host: host.to_owned(), last_contact: c.last.to_string(), bytes_received: c.bytes };
        let bytes = serde_json::to_vec(&record).map_err(|e| damaged(&path, e))?;
        write(&path, &bytes)
    }
}

/// Splits `HOST:PORT` (`[V6]:PORT` for IPv6) into the host and the port.
pub fn split_address(address: &str) -> Result<(String, u16), SiteError> {
    let bad = || SiteError::BadAddress { address: address.to_owned() };
    let (host, port) = address.rsplit_once(':').ok_or_else(bad)?;
    let port: u16 = port.parse().map_err(|_| bad())?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let v6 = v6.strip_suffix(']').ok_or_else(bad)?;
            v6.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            v6
        }
        None if host.contains(':') => return Err(bad()),
        None => host,
    };
    if host.is_empty() || port == 0 {
        return Err(bad());
    }
    Ok((host.to_owned(), port))
}

/// The naming rule for hosts and vaults: they become file names here and
/// path segments in the protocol.
pub fn check_name(what: &'static str, name: &str) -> Result<(), SiteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(SiteError::BadName { what, name: name.to_owned() })
    }
}

/// Writes `path` durably, private (0600).
pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), SiteError> {
    system::file::replace(path, bytes).map_err(io_at(path))
}

/// Makes `dir` (its parent exists), 0700 whatever the umask, and makes its
/// entry durable.
pub(crate) fn make_dir(dir: &Path) -> Result<(), SiteError> {
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(SiteError::Io { path: dir.to_path_buf(), source: e }),
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io_at(dir))?;
    sync_dir(dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")))
}

pub(crate) fn sync_dir(dir: &Path) -> Result<(), SiteError> {
    File::open(dir).and_then(|f| f.sync_all()).map_err(io_at(dir))
}

pub(crate) fn damaged(path: &Path, e: impl std::fmt::Display) -> SiteError {
    SiteError::Damaged { path: path.to_path_buf(), detail: e.to_string() }
}

fn new_generation() -> Result<String, SiteError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| SiteError::Pki(PkiError::Random(e)))?;
    Ok(pki::hex(&bytes))
}

/// The vault server's view of the site (`lifeboat vault serve --site DIR`).
impl crate::server::HostDirectory for Site {
    fn lookup(&self, fingerprint: &str) -> crate::server::HostStatus {
        use crate::server::HostStatus;
        match Site::lookup(self, fingerprint) {
            Ok(Lookup::Enrolled { host, vaults }) => HostStatus::Enrolled { host, vaults },
            Ok(Lookup::Revoked { host }) => HostStatus::Revoked { host },
            Ok(Lookup::Unknown) => HostStatus::Unknown,
            // Fail closed: a site whose host list cannot be read lets no one in.
            Err(e) => {
                tracing::error!("site {}: cannot read the hosts, refusing the certificate: {e}", self.dir.display());
                HostStatus::Unknown
            }
        }
    }

    fn redeem(&self, request: &crate::protocol::EnrollRequest) -> Result<String, String> {
        let public_key_der = pki::from_hex(&request.public_key)
            .ok_or_else(|| "the public key is not hex (SubjectPublicKeyInfo DER)".to_owned())?;
        let request =
            crate::enroll::RedeemRequest { token: request.token.clone(), host: request.host.clone(), public_key_der };
        Site::redeem(self, &request).map_err(|e| {
            tracing::warn!("site {}: enrollment of host {:?} refused: {e}", self.dir.display(), request.host);
            e.to_string()
        })
    }

    fn record_contact(&self, host: &str, bytes: u64) {
        if let Err(e) = Site::record_contact(self, host, bytes) {
            tracing::warn!("site {}: recording contact of {host}: {e}", self.dir.display());
        }
    }

    fn record_refusal(&self, who: &str, code: &str, details: serde_json::Value) {
        match self.audit() {
            Ok(a) => a.refusal(who, code, details),
            Err(e) => tracing::warn!("site {}: the audit log: {e}", self.dir.display()),
        }
    }
}
