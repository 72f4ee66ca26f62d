//! Where a cloud vault's endpoint, region and credentials come from: each
//! ecosystem's standard environment variables and files, never the command
//! line.
//!
//! - S3: the `AWS_*` variables the AWS CLI and SDKs read
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//!   `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ENDPOINT_URL` for an
//!   S3-compatible store, `AWS_ALLOW_HTTP=true` for one without TLS), then
//!   the shared files: `~/.aws/credentials` and `~/.aws/config` (or
//!   `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE`), profile
//!   `AWS_PROFILE` or `default`. A variable wins over a file. With neither,
//!   `object_store` tries the instance's role (EC2, ECS, web identity).
//! - Azure: the `AZURE_*` variables (`AZURE_STORAGE_ACCOUNT_KEY`,
//!   `AZURE_STORAGE_SAS_TOKEN`, `AZURE_CLIENT_ID`/`AZURE_CLIENT_SECRET`/
//!   `AZURE_TENANT_ID`, `AZURE_USE_AZURE_CLI=true` for `az login`,
//!   `AZURE_STORAGE_ENDPOINT` for another endpoint such as Azurite's
//!   `http://127.0.0.1:10000/devstoreaccount1`, `AZURE_ALLOW_HTTP=true`);
//!   without any, a managed identity.
//!
//! A [`Settings`] never shows a value: its `Debug` lists the names only.

use std::fmt;
use std::path::{Path, PathBuf};

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::ClientOptions;

/// The settings of cloud vaults: variable names and values, as the
/// environment gives them.
#[derive(Clone, Default)]
pub struct Settings {
    vars: Vec<(String, String)>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.vars.iter().map(|(k, _)| k)).finish()
    }
}

/// Whether a variable is one of ours to read.
fn relevant(name: &str) -> bool {
    name.starts_with("AWS_") || name.starts_with("AZURE_") || name == "AZURITE_BLOB_STORAGE_URL"
}

/// The variables that name where S3 credentials come from.
const AWS_NAMED: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_SKIP_SIGNATURE",
];
/// Azure variables that hold the key or token itself (Shared Key, SAS).
const AZURE_KEYS: &[&str] = &[
    "AZURE_STORAGE_ACCOUNT_KEY",
    "AZURE_STORAGE_ACCESS_KEY",
    "AZURE_STORAGE_MASTER_KEY",
    "AZURE_STORAGE_SAS_KEY",
    "AZURE_STORAGE_SAS_TOKEN",
];
/// Azure variables that send the client to a token service (Entra, over
/// HTTPS) or to the Azure CLI for its credentials.
const AZURE_TOKEN_SERVICES: &[&str] =
    &["AZURE_CLIENT_ID", "AZURE_STORAGE_CLIENT_ID", "AZURE_FEDERATED_TOKEN_FILE", "AZURE_USE_AZURE_CLI"];
/// The other Azure variables that name credentials (or their absence).
const AZURE_OTHER: &[&str] = &["AZURE_STORAGE_TOKEN", "AZURE_STORAGE_USE_EMULATOR", "AZURE_SKIP_SIGNATURE"];

impl Settings {
    /// This process's environment and, for S3, the AWS shared files under
    /// `$HOME` (see the module documentation).
    pub fn from_env() -> Settings {
        let vars: Vec<(String, String)> = std::env::vars().collect();
        Settings::from_vars_and_files(vars, std::env::var_os("HOME").map(PathBuf::from).as_deref())
    }

    /// Exactly these variables, no files: for tests, and for a caller that
    /// holds its own configuration.
    pub fn from_vars<K: Into<String>, V: Into<String>>(vars: impl IntoIterator<Item = (K, V)>) -> Settings {
        let vars = vars.into_iter().map(|(k, v)| (k.into(), v.into())).filter(|(k, _)| relevant(k)).collect();
        Settings { vars }
    }

    /// `vars`, then what the AWS shared files under `home` add for the
    /// settings `vars` leave unset.
    pub fn from_vars_and_files(vars: Vec<(String, String)>, home: Option<&Path>) -> Settings {
        let mut s = Settings::from_vars(vars);
        for (k, v) in aws_files(&s, home) {
            if s.get(&k).is_none() {
                s.vars.push((k, v));
            }
        }
        s
    }

    /// Where the store's credentials come from when the settings name none:
    /// the instance's identity (S3: the EC2/ECS role; Azure: a managed
    /// identity), said in an error that follows. `None` when they name one.
    pub(crate) fn implicit_credentials(&self, s3: bool) -> Option<&'static str> {
        let named: &[&[&str]] = if s3 { &[AWS_NAMED] } else { &[AZURE_KEYS, AZURE_TOKEN_SERVICES, AZURE_OTHER] };
        if named.iter().any(|names| self.any_set(names)) {
            return None;
        }
        Some(if s3 {
            "no S3 credentials were given (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or ~/.aws/credentials), so the \
             instance's role was asked (the metadata service)"
        } else {
            "no Azure credentials were given (AZURE_STORAGE_ACCOUNT_KEY, AZURE_STORAGE_SAS_TOKEN, a service principal \
             or AZURE_USE_AZURE_CLI=true), so a managed identity was asked (the metadata service)"
        })
    }

    /// Whether every request this vault makes is plain HTTP to `endpoint`:
    /// the endpoint says `http://`, and the credentials are a key or token
    /// these settings hold (no token service, which is HTTPS, is asked).
    /// Then no TLS certificate is ever checked, and the client does not
    /// load the system's roots (`CloudBackend::open`): a request redirected
    /// to HTTPS fails, for want of a trusted root, rather than succeeding.
    pub(crate) fn plain_http_only(&self, s3: bool, endpoint: Option<&str>) -> bool {
        let plain =
            endpoint.is_some_and(|e| e.len() > 7 && e.get(..7).is_some_and(|s| s.eq_ignore_ascii_case("http://")));
        let own_key = if s3 {
            self.any_set(&["AWS_ACCESS_KEY_ID"])
                && self.any_set(&["AWS_SECRET_ACCESS_KEY"])
                && !self.any_set(&["AWS_WEB_IDENTITY_TOKEN_FILE"])
        } else {
            self.any_set(AZURE_KEYS) && !self.any_set(AZURE_TOKEN_SERVICES)
        };
        plain && own_key
    }

    /// Whether any of the variables `names` is set.
    fn any_set(&self, names: &[&str]) -> bool {
        names.iter().any(|n| self.get(n).is_some())
    }

    /// The value of variable `name`, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().rev().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// The builder of an S3 store for `bucket` with these settings over
    /// `client` (which they may change: `AWS_ALLOW_HTTP`).
    pub(crate) fn s3(&self, bucket: &str, client: ClientOptions) -> AmazonS3Builder {
        let mut b = AmazonS3Builder::new().with_client_options(client);
        for (k, v) in &self.vars {
            if !k.starts_with("AWS_") {
                continue;
            }
            // Unknown AWS_ variables (AWS_PROFILE, AWS_PAGER...) are the
            // AWS CLI's, not errors.
            if let Ok(key) = k.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                b = b.with_config(key, v);
            }
        }
        if self.get("AWS_REGION").is_none() {
            if let Some(region) = self.get("AWS_DEFAULT_REGION") {
                b = b.with_region(region);
            }
        }
        b.with_bucket_name(bucket)
    }

    /// The builder of an Azure Blob store for `container` of `account`,
    /// over `client` as for [`Settings::s3`].
    pub(crate) fn azure(&self, account: &str, container: &str, client: ClientOptions) -> MicrosoftAzureBuilder {
        let mut b = MicrosoftAzureBuilder::new().with_client_options(client);
        for (k, v) in &self.vars {
            if !k.starts_with("AZURE_") {
                continue;
            }
            if let Ok(key) = k.to_ascii_lowercase().parse::<AzureConfigKey>() {
                b = b.with_config(key, v);
            }
        }
        b.with_account(account).with_container_name(container)
    }
}

/// What the AWS shared credentials and config files say for the profile
/// in use, as the variables that would say the same.
fn aws_files(vars: &Settings, home: Option<&Path>) -> Vec<(String, String)> {
    let profile = vars.get("AWS_PROFILE").unwrap_or("default").to_string();
    let file = |var: &str, rel: &str| -> Option<PathBuf> {
        vars.get(var).map(PathBuf::from).or_else(|| home.map(|h| h.join(rel)))
    };
    let mut out = Vec::new();
    if let Some(text) =
        file("AWS_SHARED_CREDENTIALS_FILE", ".aws/credentials").and_then(|p| std::fs::read_to_string(p).ok())
    {
        for (k, v) in ini_section(&text, &profile) {
            let var = match k.as_str() {
                "aws_access_key_id" => "AWS_ACCESS_KEY_ID",
                "aws_secret_access_key" => "AWS_SECRET_ACCESS_KEY",
                "aws_session_token" => "AWS_SESSION_TOKEN",
                _ => continue,
            };
            out.push((var.to_string(), v));
        }
    }
    if let Some(text) = file("AWS_CONFIG_FILE", ".aws/config").and_then(|p| std::fs::read_to_string(p).ok()) {
        // The config file names profiles `[profile NAME]`, except `[default]`.
        let section = if profile == "default" { profile.clone() } else { format!("profile {profile}") };
        for (k, v) in ini_section(&text, &section) {
            let var = match k.as_str() {
                "region" => "AWS_REGION",
                "endpoint_url" => "AWS_ENDPOINT_URL",
                _ => continue,
            };
            out.push((var.to_string(), v));
        }
    }
    out
}

/// The `key = value` lines of section `[name]` of an INI file, keys in
/// lower case; comments (`#`, `;`) and other sections skipped.
fn ini_section(text: &str, name: &str) -> Vec<(String, String)> {
    let mut inside = false;
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = section.trim() == name;
            continue;
        }
        if inside {
            if let Some((k, v)) = line.split_once('=') {
                out.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_names_never_values() {
        let s = Settings::from_vars([("AWS_SECRET_ACCESS_KEY", "hunter2"), ("PATH", "/bin")]);
        let shown = format!("{s:?}");
        assert!(shown.contains("AWS_SECRET_ACCESS_KEY") && !shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("PATH"), "only cloud variables are kept: {shown}");
    }

    #[test]
    fn the_shared_files_fill_what_the_variables_leave_unset() {
        let home = std::env::temp_dir().join(format!("cloud-settings-{}", std::process::id()));
        std::fs::create_dir_all(home.join(".aws")).unwrap();
        std::fs::write(
            home.join(".aws/credentials"),
            "[default]\naws_access_key_id = AKDEFAULT\naws_secret_access_key=SKDEFAULT\n\n[dr]\n# the DR \
             account\naws_access_key_id = AKDR\naws_secret_access_key = SKDR\naws_session_token = TDR\n",
        )
        .unwrap();
        std::fs::write(
            home.join(".aws/config"),
            "[default]\nregion = eu-west-1\n[profile dr]\nregion = eu-north-1\nendpoint_url = http://127.0.0.1:9\n",
        )
        .unwrap();
        let s = Settings::from_vars_and_files(vec![], Some(&home));
        assert_eq!(s.get("AWS_ACCESS_KEY_ID"), Some("AKDEFAULT"));
        assert_eq!(s.get("AWS_SECRET_ACCESS_KEY"), Some("SKDEFAULT"));
        assert_eq!(s.get("AWS_REGION"), Some("eu-west-1"));
        assert_eq!(s.get("AWS_SESSION_TOKEN"), None);

        let vars = vec![("AWS_PROFILE".to_string(), "dr".to_string()), ("AWS_REGION".into(), "us-east-2".into())];
        let s = Settings::from_vars_and_files(vars, Some(&home));
        assert_eq!(s.get("AWS_ACCESS_KEY_ID"), Some("AKDR"));
        assert_eq!(s.get("AWS_SESSION_TOKEN"), Some("TDR"));
        assert_eq!(s.get("AWS_REGION"), Some("us-east-2"), "a variable wins over the file");
        assert_eq!(s.get("AWS_ENDPOINT_URL"), Some("http://127.0.0.1:9"));
        std::fs::remove_dir_all(&home).unwrap();
    }

    #[test]
    fn no_home_and_no_files_is_no_settings() {
        let s = Settings::from_vars_and_files(vec![], Some(Path::new("/nonexistent-home")));
        assert_eq!(format!("{s:?}"), "[]");
        assert!(Settings::from_vars_and_files(vec![], None).get("AWS_REGION").is_none());
    }

    #[test]
    fn roots_are_skipped_only_when_no_request_can_be_https() {
        let keys = [("AWS_ACCESS_KEY_ID", "k"), ("AWS_SECRET_ACCESS_KEY", "s")];
        let s3 = Settings::from_vars(keys);
        assert!(s3.plain_http_only(true, Some("http://127.0.0.1:9000")));
        assert!(s3.plain_http_only(true, Some("HTTP://minio.lan")));
        assert!(!s3.plain_http_only(true, Some("https://s3.example")), "TLS needs the roots");
        assert!(!s3.plain_http_only(true, None), "the default endpoint is AWS, over TLS");
        assert!(!s3.plain_http_only(true, Some("http://")));
        // A value with a multibyte character across the scheme's end.
        assert!(!s3.plain_http_only(true, Some("http:/\u{e9}minio.lan")));
        // Credentials from a token service (HTTPS) need the roots too.
        let sts = Settings::from_vars([("AWS_WEB_IDENTITY_TOKEN_FILE", "/t"), ("AWS_ROLE_ARN", "r")]);
        assert!(!sts.plain_http_only(true, Some("http://127.0.0.1:9000")));
        let both = Settings::from_vars(keys.into_iter().chain([("AWS_WEB_IDENTITY_TOKEN_FILE", "/t")]));
        assert!(!both.plain_http_only(true, Some("http://127.0.0.1:9000")));
        let role = Settings::from_vars([("AWS_REGION", "us-east-1")]);
        assert!(!role.plain_http_only(true, Some("http://127.0.0.1:9000")), "the instance role: who knows");

        let az = Settings::from_vars([("AZURE_STORAGE_ACCOUNT_KEY", "k")]);
        assert!(az.plain_http_only(false, Some("http://127.0.0.1:10000/devstoreaccount1")));
        assert!(!az.plain_http_only(false, Some("https://acct.blob.core.windows.net")));
        let sp = Settings::from_vars([("AZURE_STORAGE_ACCOUNT_KEY", "k"), ("AZURE_CLIENT_ID", "c")]);
        assert!(!sp.plain_http_only(false, Some("http://127.0.0.1:10000/devstoreaccount1")), "Entra is HTTPS");
        // An S3 key says nothing of Azure, and the other way round.
        assert!(!s3.plain_http_only(false, Some("http://127.0.0.1:10000")));
        assert!(!az.plain_http_only(true, Some("http://127.0.0.1:9000")));
    }
}
