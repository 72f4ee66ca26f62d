//! Where a vault is: a directory, or a vault served by `lifeboat vault serve`
//! at the recovery site (`lifeboat://HOST:PORT/VAULT`).
//!
//! Every place that names a vault (the command line, a disk's `disk.toml`,
//! failover job files, audit details) holds a [`Location`]. Its text form is
//! the path itself or the URL, and it is stored as that same string, so the
//! files written when vaults were only paths read back unchanged and are
//! written byte for byte as before.
//!
//! A string is a URL when it begins with a scheme and `://`; anything else is
//! a path (an absolute path never looks like a URL: `/` cannot begin a
//! scheme). Cloud vaults are `az://ACCOUNT/CONTAINER[/PREFIX]` (Azure Blob
//! storage) and `s3://BUCKET[/PREFIX]` (S3 and S3-compatible stores); any
//! other scheme is refused by name.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The scheme of a vault server's URL.
pub const SCHEME: &str = "lifeboat";

/// Where a vault is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Location {
    /// A vault directory on this machine (a local disk or a mounted share).
    Path(PathBuf),
    /// A vault served by `lifeboat vault serve`: `lifeboat://HOST:PORT/VAULT`.
    Server {
        /// The server's host name or address (an IPv6 address without its
        /// brackets).
        host: String,
        /// The server's TCP port.
        port: u16,
        /// The name of the vault on that server.
        vault: String,
    },
    /// A vault in an Azure Blob storage container:
    /// `az://ACCOUNT/CONTAINER[/PREFIX]`.
    Azure {
        /// The storage account.
        account: String,
        /// The container.
        container: String,
        /// Where in the container the vault's objects are: `/`-separated
        /// parts, without a leading or trailing `/`; empty for the whole
        /// container.
        prefix: String,
    },
    /// A vault in an S3 bucket (AWS or an S3-compatible store; the endpoint
    /// comes from the environment): `s3://BUCKET[/PREFIX]`.
    S3 {
        /// The bucket.
        bucket: String,
        /// Where in the bucket the vault's objects are, as for
        /// [`Location::Azure`].
        prefix: String,
    },
}

/// Why a string is not a vault location.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// An `az://` or `s3://` URL that is not well formed.
    #[error("{url}: not a cloud vault URL ({why}); write {form}")]
    BadCloudUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
        /// The form the scheme takes, with an example.
        form: &'static str,
    },
    /// A URL with a scheme Lifeboat does not know.
    #[error(
        "{url}: unknown vault URL scheme {scheme:?}; a vault is a directory, lifeboat://HOST:PORT/VAULT (a vault \
         server), az://ACCOUNT/CONTAINER[/PREFIX] (Azure Blob) or s3://BUCKET[/PREFIX] (S3)"
    )]
    UnknownScheme {
        /// The URL given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// A `lifeboat://` URL that does not have the form
    /// `lifeboat://HOST:PORT/VAULT`.
    #[error("{url}: not a vault server URL ({why}); write lifeboat://HOST:PORT/VAULT, e.g. lifeboat://dr1:7443/main")]
    BadUrl {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// An empty string.
    #[error("an empty vault location; give a directory or a vault URL (lifeboat://, az://, s3://)")]
    Empty,
}

impl Location {
    /// The directory, for a vault on this machine.
    pub fn path(&self) -> Option<&Path> {
        match self {
            Location::Path(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the vault is on this machine.
    pub fn is_path(&self) -> bool {
        matches!(self, Location::Path(_))
    }

    /// Whether it names a vault server (`lifeboat://`), which is
    /// append-only for protected hosts: prune and gc run at the site.
    pub fn is_server(&self) -> bool {
        matches!(self, Location::Server { .. })
    }

    /// Whether it names a cloud vault (`az://`, `s3://`).
    pub fn is_cloud(&self) -> bool {
        matches!(self, Location::Azure { .. } | Location::S3 { .. })
    }

    /// The same location with its path made absolute against the current
    /// directory, as [`std::path::absolute`] does (links are not resolved;
    /// the path as it is if that fails); a URL as it is. For locations
    /// handed to other processes or stored for later.
    pub fn absolute(&self) -> Location {
        match self {
            Location::Path(p) => Location::Path(std::path::absolute(p).unwrap_or_else(|_| p.clone())),
            other => other.clone(),
        }
    }
}

/// A location is equal to a path when it is that directory.
impl PartialEq<Path> for Location {
    fn eq(&self, other: &Path) -> bool {
        self.path() == Some(other)
    }
}

impl PartialEq<PathBuf> for Location {
    fn eq(&self, other: &PathBuf) -> bool {
        self.path() == Some(other.as_path())
    }
}

impl From<PathBuf> for Location {
    fn from(p: PathBuf) -> Location {
        Location::Path(p)
    }
}

impl From<&Path> for Location {
    fn from(p: &Path) -> Location {
        Location::Path(p.to_path_buf())
    }
}

/// The scheme of `s` if it begins `SCHEME://` (RFC 3986's scheme syntax).
fn scheme_of(s: &str) -> Option<&str> {
    let (scheme, _) = s.split_once("://")?;
    let mut chars = scheme.chars();
    let first = chars.next()?;
    (first.is_ascii_alphabetic() && chars.all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))).then_some(scheme)
}

fn host_ok(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// A vault name on a server: one part of an object name (see
/// [`crate::backend::check_name`]), at most 64 characters.
fn vault_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

fn parse_server(url: &str, rest: &str) -> Result<Location, LocationError> {
    let bad = |why| LocationError::BadUrl { url: url.to_string(), why };
    let (authority, vault) = rest.split_once('/').ok_or_else(|| bad("no /VAULT after the port"))?;
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (addr, after) = bracketed.split_once(']').ok_or_else(|| bad("an IPv6 address without its closing ]"))?;
        addr.parse::<Ipv6Addr>().map_err(|_| bad("not an IPv6 address between [ and ]"))?;
        let port = after.strip_prefix(':').ok_or_else(|| bad("no :PORT after the host"))?;
        (addr, port)
    } else {
        let (host, port) = authority.rsplit_once(':').ok_or_else(|| bad("no :PORT after the host"))?;
        if host.contains(':') {
            return Err(bad("an IPv6 address must be written in brackets, e.g. [::1]:7443"));
        }
        (host, port)
    };
    if host.is_empty() {
        return Err(bad("no host"));
    }
    if !host.contains(':') && !host_ok(host) {
        return Err(bad("the host is not a host name or address"));
    }
    if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("the port is not a number"));
    }
    let port: u16 = port.parse().map_err(|_| bad("the port is over 65535"))?;
    if port == 0 {
        return Err(bad("port 0"));
    }
    if vault.is_empty() {
        return Err(bad("no vault name after the port"));
    }
    if vault.contains(['/', '?', '#']) {
        return Err(bad("the vault name is one name, without '/', '?' or '#'"));
    }
    if !vault_name_ok(vault) {
        return Err(bad("the vault name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'"));
    }
    Ok(Location::Server { host: host.to_string(), port, vault: vault.to_string() })
}

const AZURE_FORM: &str = "az://ACCOUNT/CONTAINER[/PREFIX], e.g. az://drsite/vaults/web";
const S3_FORM: &str = "s3://BUCKET[/PREFIX], e.g. s3://dr-vaults/web";

/// A prefix inside a container or bucket: object-name parts (see
/// [`crate::backend::check_name`]), a trailing `/` dropped.
fn cloud_prefix(rest: Option<&str>) -> Result<String, &'static str> {
    let Some(p) = rest.map(|p| p.strip_suffix('/').unwrap_or(p)).filter(|p| !p.is_empty()) else {
        return Ok(String::new());
    };
    if p.len() > 200 {
        return Err("the prefix is over 200 characters");
    }
    for part in p.split('/') {
        if part.is_empty() || part.starts_with('.') {
            return Err("the prefix's parts may not be empty or start with '.'");
        }
        if !part.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) {
            return Err("the prefix has only letters, digits, '.', '_', '-' and '/'");
        }
    }
    Ok(p.to_string())
}

fn parse_azure(url: &str, rest: &str) -> Result<Location, LocationError> {
    let bad = |why| LocationError::BadCloudUrl { url: url.to_string(), why, form: AZURE_FORM };
    let mut parts = rest.splitn(3, '/');
    let account = parts.next().unwrap_or_default();
    let container = parts.next().ok_or_else(|| bad("no /CONTAINER after the account"))?;
    // Azure's rules: an account is 3-24 lower-case letters and digits; a
    // container 3-63 of lower-case letters, digits and single hyphens, not
    // starting or ending with one.
    if !(3..=24).contains(&account.len()) || !account.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
        return Err(bad("the account is 3 to 24 lower-case letters and digits"));
    }
    if !(3..=63).contains(&container.len())
        || !container.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        || container.starts_with('-')
        || container.ends_with('-')
        || container.contains("--")
    {
        return Err(bad("the container is 3 to 63 lower-case letters, digits and single hyphens"));
    }
    let prefix = cloud_prefix(parts.next()).map_err(bad)?;
    Ok(Location::Azure { account: account.to_string(), container: container.to_string(), prefix })
}

fn parse_s3(url: &str, rest: &str) -> Result<Location, LocationError> {
    let bad = |why| LocationError::BadCloudUrl { url: url.to_string(), why, form: S3_FORM };
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, Some(p)),
        None => (rest, None),
    };
    // S3's rules for a bucket: 3-63 lower-case letters, digits, '.' and
    // '-', beginning and ending with a letter or digit.
    let edge_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if bucket.is_empty() {
        return Err(bad("no bucket"));
    }
    if !(3..=63).contains(&bucket.len())
        || !bucket.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c))
        || !edge_ok(bucket.chars().next())
        || !edge_ok(bucket.chars().last())
    {
        return Err(bad("the bucket is 3 to 63 lower-case letters, digits, '.' and '-'"));
    }
    let prefix = cloud_prefix(prefix).map_err(bad)?;
    Ok(Location::S3 { bucket: bucket.to_string(), prefix })
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(s: &str) -> Result<Location, LocationError> {
        if s.is_empty() {
            return Err(LocationError::Empty);
        }
        let Some(scheme) = scheme_of(s) else {
            return Ok(Location::Path(PathBuf::from(s)));
        };
        let rest = &s[scheme.len() + 3..];
        match scheme.to_ascii_lowercase().as_str() {
            SCHEME => parse_server(s, rest),
            "az" => parse_azure(s, rest),
            "s3" => parse_s3(s, rest),
            _ => Err(LocationError::UnknownScheme { url: s.to_string(), scheme: scheme.to_string() }),
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Path(p) => write!(f, "{}", p.display()),
            Location::Server { host, port, vault } if host.contains(':') => {
                write!(f, "{SCHEME}://[{host}]:{port}/{vault}")
            }
            Location::Server { host, port, vault } => write!(f, "{SCHEME}://{host}:{port}/{vault}"),
            Location::Azure { account, container, prefix } if prefix.is_empty() => {
                write!(f, "az://{account}/{container}")
            }
            Location::Azure { account, container, prefix } => write!(f, "az://{account}/{container}/{prefix}"),
            Location::S3 { bucket, prefix } if prefix.is_empty() => write!(f, "s3://{bucket}"),
            Location::S3 { bucket, prefix } => write!(f, "s3://{bucket}/{prefix}"),
        }
    }
}

/// Stored as its text: a path exactly as a `PathBuf` is stored (a path that
/// is not UTF-8 cannot be stored, as before), a server as its URL.
impl serde::Serialize for Location {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Location::Path(p) => match p.to_str() {
                Some(text) => s.serialize_str(text),
                None => Err(serde::ser::Error::custom("path contains invalid UTF-8 characters")),
            },
            _ => s.collect_str(self),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Location {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Location, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn server(host: &str, port: u16, vault: &str) -> Location {
        Location::Server { host: host.into(), port, vault: vault.into() }
    }

    #[test]
    fn paths_stay_paths_as_written() {
        for p in ["/srv/vault", "vault", "./v", "../a/b", "/x/lifeboat://y:1/z", "a:b", "C:/x", "dir with space/"] {
            assert_eq!(p.parse::<Location>().unwrap(), Location::Path(p.into()), "{p}");
            assert_eq!(p.parse::<Location>().unwrap().to_string(), p);
        }
    }

    #[test]
    fn server_urls() {
        assert_eq!("lifeboat://dr1:7443/main".parse::<Location>().unwrap(), server("dr1", 7443, "main"));
        assert_eq!("lifeboat://127.0.0.1:1/v".parse::<Location>().unwrap(), server("127.0.0.1", 1, "v"));
        assert_eq!("lifeboat://[::1]:7443/v".parse::<Location>().unwrap(), server("::1", 7443, "v"));
        assert_eq!(
            "LIFEBOAT://h.example.com:9/a_b-c.1".parse::<Location>().unwrap(),
            server("h.example.com", 9, "a_b-c.1")
        );
        assert_eq!(server("::1", 7443, "v").to_string(), "lifeboat://[::1]:7443/v");
        assert_eq!(server("dr1", 7443, "main").to_string(), "lifeboat://dr1:7443/main");
    }

    #[test]
    fn bad_server_urls_say_what_is_wrong() {
        for (url, why) in [
            ("lifeboat://dr1:7443", "no /VAULT after the port"),
            ("lifeboat://dr1/main", "no :PORT after the host"),
            ("lifeboat://:7443/main", "no host"),
            ("lifeboat://dr1:x/main", "the port is not a number"),
            ("lifeboat://dr1:70000/main", "the port is over 65535"),
            ("lifeboat://dr1:0/main", "port 0"),
            ("lifeboat://dr1:1/", "no vault name after the port"),
            ("lifeboat://dr1:1/a/b", "the vault name is one name, without '/', '?' or '#'"),
            (
                "lifeboat://dr1:1/.hidden",
                "the vault name is 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'",
            ),
            ("lifeboat://::1:7443/v", "an IPv6 address must be written in brackets, e.g. [::1]:7443"),
            ("lifeboat://[::1/v", "an IPv6 address without its closing ]"),
            ("lifeboat://[zz]:1/v", "not an IPv6 address between [ and ]"),
            ("lifeboat://bad_host:1/v", "the host is not a host name or address"),
        ] {
            assert_eq!(url.parse::<Location>().unwrap_err(), LocationError::BadUrl { url: url.into(), why }, "{url}");
        }
    }

    fn azure(account: &str, container: &str, prefix: &str) -> Location {
        Location::Azure { account: account.into(), container: container.into(), prefix: prefix.into() }
    }

    fn s3(bucket: &str, prefix: &str) -> Location {
        Location::S3 { bucket: bucket.into(), prefix: prefix.into() }
    }

    #[test]
    fn cloud_urls() {
        for (url, at, printed) in [
            ("az://drsite/vaults", azure("drsite", "vaults", ""), "az://drsite/vaults"),
            ("az://drsite/vaults/", azure("drsite", "vaults", ""), "az://drsite/vaults"),
            ("AZ://drsite/vaults/web/a_b.c", azure("drsite", "vaults", "web/a_b.c"), "az://drsite/vaults/web/a_b.c"),
            ("s3://dr-vaults", s3("dr-vaults", ""), "s3://dr-vaults"),
            ("s3://dr.vaults.1/web/", s3("dr.vaults.1", "web"), "s3://dr.vaults.1/web"),
            ("S3://b12/x/y", s3("b12", "x/y"), "s3://b12/x/y"),
        ] {
            let parsed = url.parse::<Location>().unwrap();
            assert_eq!(parsed, at, "{url}");
            assert_eq!(parsed.to_string(), printed);
            assert!(parsed.is_cloud() && !parsed.is_path() && !parsed.is_server());
            assert_eq!(parsed.path(), None);
        }
    }

    #[test]
    fn bad_cloud_urls_say_what_is_wrong() {
        for (url, why) in [
            ("az://drsite", "no /CONTAINER after the account"),
            ("az://Dr/vaults", "the account is 3 to 24 lower-case letters and digits"),
            ("az://drsite/Vaults", "the container is 3 to 63 lower-case letters, digits and single hyphens"),
            ("az://drsite/a--b", "the container is 3 to 63 lower-case letters, digits and single hyphens"),
            ("az://drsite/vaults/a//b", "the prefix's parts may not be empty or start with '.'"),
            ("az://drsite/vaults/../b", "the prefix's parts may not be empty or start with '.'"),
            ("s3://", "no bucket"),
            ("s3:///x", "no bucket"),
            ("s3://B1/x", "the bucket is 3 to 63 lower-case letters, digits, '.' and '-'"),
            ("s3://-ab/x", "the bucket is 3 to 63 lower-case letters, digits, '.' and '-'"),
            ("s3://bucket/a b", "the prefix has only letters, digits, '.', '_', '-' and '/'"),
            ("s3://bucket/.hidden", "the prefix's parts may not be empty or start with '.'"),
        ] {
            match url.parse::<Location>().unwrap_err() {
                LocationError::BadCloudUrl { url: u, why: w, form } => {
                    assert_eq!((u.as_str(), w), (url, why), "{url}");
                    assert!(form.starts_with(if url.to_lowercase().starts_with("az") { "az://" } else { "s3://" }));
                }
                e => panic!("{url}: {e}"),
            }
        }
        let e = "s3://B1".parse::<Location>().unwrap_err().to_string();
        assert!(e.contains("s3://B1") && e.contains("write s3://BUCKET[/PREFIX]"), "{e}");
    }

    #[test]
    fn unknown_schemes_are_refused() {
        let e = "https://x/y".parse::<Location>().unwrap_err();
        assert_eq!(e, LocationError::UnknownScheme { url: "https://x/y".into(), scheme: "https".into() });
        assert!(e.to_string().contains("\"https\"") && e.to_string().contains("s3://BUCKET"), "{e}");
        assert_eq!("".parse::<Location>().unwrap_err(), LocationError::Empty);
    }

    #[test]
    fn stored_as_the_same_string_as_a_path() {
        #[derive(serde::Serialize, serde::Deserialize)]
        struct Old {
            vault: PathBuf,
        }
        #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
        struct New {
            vault: Location,
        }
        let old = serde_json::to_string(&Old { vault: "/srv/dr vault".into() }).unwrap();
        let new: New = serde_json::from_str(&old).unwrap();
        assert_eq!(new, New { vault: Location::Path("/srv/dr vault".into()) });
        assert_eq!(serde_json::to_string(&new).unwrap(), old);
        let url = New { vault: server("::1", 7443, "v") };
        let text = serde_json::to_string(&url).unwrap();
        assert_eq!(text, r#"{"vault":"lifeboat://[::1]:7443/v"}"#);
        assert_eq!(serde_json::from_str::<New>(&text).unwrap(), url);
        let cloud = New { vault: s3("bucket", "p/q") };
        let text = serde_json::to_string(&cloud).unwrap();
        assert_eq!(text, r#"{"vault":"s3://bucket/p/q"}"#);
        assert_eq!(serde_json::from_str::<New>(&text).unwrap(), cloud);
        let e = serde_json::from_str::<New>(r#"{"vault":"s3://B/p"}"#).unwrap_err();
        assert!(e.to_string().contains("not a cloud vault URL"), "{e}");
    }

    #[test]
    fn absolute_joins_the_current_directory_and_leaves_urls() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(Location::Path("v".into()).absolute(), Location::Path(cwd.join("v")));
        assert_eq!(Location::Path("/v".into()).absolute(), Location::Path("/v".into()));
        assert_eq!(server("h", 1, "v").absolute(), server("h", 1, "v"));
    }

    fn any_host() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,6}){0,3}",
            any::<[u8; 4]>().prop_map(|o| std::net::Ipv4Addr::from(o).to_string()),
            any::<u128>().prop_map(|a| Ipv6Addr::from(a).to_string()),
        ]
    }

    fn any_location() -> impl Strategy<Value = Location> {
        prop_oneof![
            (any_host(), 1..=u16::MAX, "[A-Za-z0-9_-][A-Za-z0-9._-]{0,20}")
                .prop_map(|(host, port, vault)| Location::Server { host, port, vault }),
            (
                "[a-z0-9]{3,24}",
                "[a-z0-9]([a-z0-9]|-[a-z0-9]){2,20}",
                "([a-z0-9_-][a-z0-9._-]{0,8}(/[A-Z0-9_-]{1,5}){0,2})?"
            )
                .prop_map(|(account, container, prefix)| Location::Azure { account, container, prefix }),
            ("[a-z0-9][a-z0-9.-]{1,30}[a-z0-9]", "([a-z0-9_-][a-z0-9._-]{0,8}(/[A-Z0-9_-]{1,5}){0,2})?")
                .prop_map(|(bucket, prefix)| Location::S3 { bucket, prefix }),
            // Any path that does not begin like a URL.
            "(/|\\.{1,2}/)?[^\\x00]{1,40}"
                .prop_filter("a path that reads as a URL", |p| scheme_of(p).is_none())
                .prop_map(|p| Location::Path(p.into())),
        ]
    }

    proptest! {
        #[test]
        fn text_round_trip(at in any_location()) {
            let text = at.to_string();
            prop_assert_eq!(text.parse::<Location>().unwrap(), at.clone());
            let json = serde_json::to_string(&at).unwrap();
            prop_assert_eq!(serde_json::from_str::<Location>(&json).unwrap(), at);
        }

        #[test]
        fn parsing_never_panics_and_what_parses_prints_back(s in "\\PC{0,60}") {
            if let Ok(at) = s.parse::<Location>() {
                if at.is_path() {
                    prop_assert_eq!(at.to_string(), s);
                } else {
                    prop_assert_eq!(at.to_string().parse::<Location>().unwrap(), at);
                }
            }
        }
    }
}
