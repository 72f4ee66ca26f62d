//! Opening vaults by [`Location`] for the `lifeboat` command: a directory
//! with the local backend, a vault server (`lifeboat://HOST:PORT/VAULT`)
//! through [`open_server`], the one place that knows how to reach one, and a
//! cloud vault (`az://`, `s3://`) with the `cloud` crate and the settings
//! of this process's environment. The agent and the recovery code get this
//! opener and never name a backend.
//!
//! Also the command line's parser of vault arguments: a path that is not
//! UTF-8 stays a path, as it was when `--vault` was a `PathBuf`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::builder::{OsStringValueParser, TypedValueParser};
use vault::{Backend, LocalOpener, Location, Opener, Vault, VaultError};

use crate::home::Home;

/// The opener of the `lifeboat` command: directories and vault servers.
#[derive(Debug, Clone)]
pub struct CliOpener {
    /// The home (where the host's vault-server credentials are).
    home: PathBuf,
}

impl CliOpener {
    pub fn new(home: &Home) -> CliOpener {
        CliOpener { home: home.root().to_path_buf() }
    }
}

/// The opener of `home`, for the agent and the recovery code.
pub fn opener(home: &Home) -> Arc<dyn Opener> {
    Arc::new(CliOpener::new(home))
}

impl Opener for CliOpener {
    fn open(&self, at: &Location) -> Result<Box<dyn Backend>, VaultError> {
        match at {
            Location::Path(_) => LocalOpener.open(at),
            Location::Server { host, port, vault } => open_server(&self.home, host, *port, vault),
            Location::Azure { .. } | Location::S3 { .. } => open_cloud(at),
        }
    }

    fn create(&self, at: &Location) -> Result<Box<dyn Backend>, VaultError> {
        match at {
            Location::Path(_) => LocalOpener.create(at),
            // The server's vault directory exists; `Vault::init` creates
            // its config there (if the site lets this host).
            Location::Server { host, port, vault } => open_server(&self.home, host, *port, vault),
            // The bucket or container exists (Lifeboat never creates one:
            // its settings, such as Object Lock, are the owner's);
            // `Vault::init` creates the config there.
            Location::Azure { .. } | Location::S3 { .. } => open_cloud(at),
        }
    }
}

/// Opens the cloud vault at `at` with this process's settings (see
/// `cloud::Settings`: the AWS_* and AZURE_* variables, ~/.aws).
pub fn open_cloud(at: &Location) -> Result<Box<dyn Backend>, VaultError> {
    Ok(Box::new(cloud::CloudBackend::open(at, &cloud::Settings::from_env())?))
}

/// Connects to vault `vault` served at `host`:`port` with this home's
/// credentials (`lifeboat site join`; see "Vault server protocol" in
/// disk-format/FORMAT.md). A home that never joined that site is told how.
pub fn open_server(home: &Path, host: &str, port: u16, vault: &str) -> Result<Box<dyn Backend>, VaultError> {
    let location = Location::Server { host: host.to_string(), port, vault: vault.to_string() }.to_string();
    let creds = site::enroll::credentials_for(home, host, port)
        .map_err(|e| VaultError::Unsupported { location: location.clone(), why: e.to_string() })?;
    let timeouts = timeouts().map_err(|why| VaultError::Unsupported { location: location.clone(), why })?;
    Ok(Box::new(site::client::RemoteBackend::connect_with(host, port, vault, &creds, timeouts)?))
}

/// The environment variable that sets how long, in seconds, a host waits on
/// a vault server: to connect, and with no byte moving during a request.
pub const TIMEOUT_ENV: &str = "LIFEBOAT_VAULT_TIMEOUT";

/// The vault server timeouts: [`TIMEOUT_ENV`] seconds, or 60 s.
fn timeouts() -> Result<site::client::Timeouts, String> {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => Ok(site::client::Timeouts::default()),
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(secs) if secs > 0 => Ok(site::client::Timeouts::secs(secs)),
            _ => Err(format!("{TIMEOUT_ENV}={v:?} is not a whole number of seconds above 0 (unset it for 60 s)")),
        },
    }
}

/// Opens the existing vault at `at`.
pub fn open(home: &Home, at: &Location) -> Result<Vault> {
    open_limited(home, at, None)
}

/// Opens the existing vault at `at`, every transfer paced by `throttle`
/// (`--bandwidth`) if there is one.
pub fn open_limited(home: &Home, at: &Location, throttle: Option<&vault::throttle::Throttle>) -> Result<Vault> {
    let mut backend = CliOpener::new(home).open(at).with_context(|| format!("opening vault {at}"))?;
    if let Some(t) = throttle {
        backend = t.wrap(backend);
    }
    Ok(Vault::open(backend)?)
}

/// Refuses `what` (prune, gc) on a vault server, saying where it runs: the
/// server is append-only for protected hosts, so that a stolen host cannot
/// delete the recovery site's points.
pub fn refuse_on_server(at: &Location, what: &str) -> Result<()> {
    if at.is_server() {
        anyhow::bail!(
            "`lifeboat {what}` cannot run through the vault server {at}: it is append-only for protected hosts (a \
             stolen host cannot delete points); {what} runs at the site, by path: `lifeboat {what} VAULT-DIR` on the \
             recovery site's host"
        );
    }
    Ok(())
}

/// The `--bandwidth` argument: a rate or a weekly schedule of rates.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct BandwidthArg {
    /// Limit what is sent to and read from the vault to RATE (`100Mbit`,
    /// `1Gbit`, `50MB/s`, `20MiB/s`), or to a weekly schedule in this host's
    /// local time, the first matching rule winning and no match unlimited:
    /// `mon-fri 08:00-18:00=100Mbit,*=1Gbit`. A cycle slowed by the limit
    /// says so in `lifeboat status`.
    #[arg(long, value_name = "RATE|SCHEDULE", value_parser = parse_bandwidth)]
    pub bandwidth: Option<vault::throttle::Schedule>,
}

impl BandwidthArg {
    /// The link's throttle, if a limit was given.
    pub fn throttle(&self) -> Option<vault::throttle::Throttle> {
        self.bandwidth.clone().map(vault::throttle::Throttle::new)
    }
}

fn parse_bandwidth(s: &str) -> Result<vault::throttle::Schedule, String> {
    s.parse()
}

/// The command line's parser of a vault argument: a path (as given; one that
/// is not UTF-8 too) or a URL.
pub fn location_parser() -> impl TypedValueParser<Value = Location> {
    OsStringValueParser::new().try_map(|arg: OsString| match arg.into_string() {
        Ok(text) => text.parse::<Location>(),
        Err(raw) => Ok(Location::Path(raw.into())),
    })
}
