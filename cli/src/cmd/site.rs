//! `lifeboat site`: the recovery site's CA, and the hosts it lets in.
//!
//! Every command is a library method of `site::site_dir::Site` or
//! `site::enroll`; this file parses, prints and logs. Site actions go to
//! the site's own audit log (`site::site_audit`: the hosts' format, under
//! the site's key, since the site has no customer key), listed and verified
//! by `lifeboat site audit`; each is also logged (one line on stderr, or the
//! journal under systemd).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use site::enroll::{self, EnrollmentFile};
use site::site_dir::{HostInfo, Site};

/// Where the site directory is unless `--site` says: `$LIFEBOAT_SITE`, or
/// `HOME/site`.
pub const SITE_ENV: &str = "LIFEBOAT_SITE";

#[derive(Args)]
pub struct SiteDir {
    /// The site directory [default: HOME/site].
    #[arg(long, value_name = "DIR", env = SITE_ENV)]
    site: Option<PathBuf>,
}

impl SiteDir {
    pub fn path(&self, home: &crate::home::Home) -> PathBuf {
        self.site.clone().unwrap_or_else(|| home.root().join("site"))
    }

    fn open(&self, home: &crate::home::Home) -> Result<Site> {
        Ok(Site::open(&self.path(home))?)
    }
}

#[derive(Subcommand)]
pub enum Command {
    /// Make a recovery site: its own certificate authority, the vault
    /// server's certificate, and an empty list of hosts.
    ///
    /// Run once at the recovery site. The server's certificate names every
    /// HOST of --address (a DNS name or an IP address): protected hosts check
    /// the server against it. The CA's key (ca.key, 0600) signs every host's
    /// certificate; keep the directory private and backed up.
    ///
    /// Then, for each protected host: `lifeboat site enroll HOST --vault
    /// VAULT --out FILE` here, and `lifeboat site join FILE` on the host.
    ///
    ///   lifeboat site init /srv/lifeboat-site --address dr.example.com:8443
    ///
    ///   lifeboat site enroll web1 --vault main --out web1.enroll --site /srv/lifeboat-site
    ///
    ///   lifeboat site join web1.enroll          (on web1)
    Init {
        /// The new site directory (new or empty) [default: $LIFEBOAT_SITE, or HOME/site].
        dir: Option<PathBuf>,
        /// Where protected hosts reach the vault server, HOST:PORT (an IPv6
        /// address in brackets: [2001:db8::1]:8443). Repeat for several.
        #[arg(long = "address", value_name = "HOST:PORT", required = true)]
        addresses: Vec<String>,
        /// The site's name (in its CA's subject) [default: this machine's host name].
        #[arg(long)]
        name: Option<String>,
    },
    /// Let a protected host in: write a one-time enrollment file for it.
    ///
    /// The file holds a token that expires (--valid) and works once, the
    /// site's CA certificate and the server's addresses. Copy it to the host
    /// (it is a secret until used: mode 0600) and run `lifeboat site join
    /// FILE` there. The site keeps only a hash of the token. Enrolling a host
    /// again replaces its certificate: the old one stops working.
    Enroll {
        /// The host's name at the site (letters, digits, '.', '-', '_').
        host: String,
        /// A vault the host may replicate to. Repeat for several.
        #[arg(long = "vault", value_name = "VAULT", required = true)]
        vaults: Vec<String>,
        /// Where to write the enrollment file.
        #[arg(long)]
        out: PathBuf,
        /// How long the token may wait to be used: 30m, 24h, 7d.
        #[arg(long, default_value = "24h", value_parser = crate::size::parse_duration)]
        valid: u64,
        #[command(flatten)]
        site: SiteDir,
    },
    /// On a protected host: join the site of an enrollment file.
    ///
    /// Makes the host's key pair (the private key is written 0600 under
    /// HOME/sites/HOST_PORT/ and never leaves the host), sends the token and
    /// the public key to the site's server at the file's first address
    /// (checked against the site's CA in the file, so the token goes to no
    /// other server), and stores the certificate it gets back with the CA.
    /// The used file is then deleted. Vaults of the site are then reached
    /// as lifeboat://HOST:PORT/VAULT.
    Join {
        /// The enrollment file from `lifeboat site enroll`.
        file: PathBuf,
    },
    /// Cut a host off: the server refuses its certificate from its next
    /// request on, on new and open connections alike. What it wrote stays.
    Revoke {
        /// The host.
        host: String,
        #[command(flatten)]
        site: SiteDir,
    },
    /// List and verify the site's audit log: what the site did (init,
    /// enroll, join, revoke, server start and stop) and what its server
    /// refused (a revoked or unknown host, a forbidden request, an upload
    /// whose bytes do not match its name, a failed TLS handshake; at most one
    /// record per host and cause a minute, with a count).
    ///
    /// The log (SITE/audit/) is hash-chained and each record MAC'd under the
    /// site's audit.key: an edited, dropped or reordered record is reported
    /// and the command exits 1.
    Audit {
        /// Print JSON lines (one record each) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteDir,
    },
    /// List the enrolled hosts: vaults, when enrolled, revoked or not, last
    /// contact and bytes received.
    Hosts {
        /// Print JSON (one object per host) instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        site: SiteDir,
    },
}

pub fn run(home: &crate::home::Home, cmd: Command) -> Result<()> {
    match cmd {
        Command::Init { dir, addresses, name } => {
            let from_env = std::env::var_os(SITE_ENV).filter(|v| !v.is_empty()).map(PathBuf::from);
            let dir = dir.unwrap_or_else(|| SiteDir { site: from_env }.path(home));
            let name = name.unwrap_or_else(system::host::hostname);
            let site = Site::init(&dir, &name, &addresses)?;
            tracing::info!("lifeboat site: site {name:?} made in {} for {}", dir.display(), addresses.join(", "));
            let ca = site::pki::hex(&site::pki::fingerprint_pem(&site.ca_pem()?)?);
            outln!("site {name:?} made in {} (CA fingerprint {ca})", site.dir().display());
            outln!("the server's certificate names {}", addresses.join(", "));
            outln!("next: `lifeboat site enroll HOST --vault VAULT --out FILE --site {}`", dir.display());
            Ok(())
        }
        Command::Enroll { host, vaults, out, valid, site } => {
            let site = site.open(home)?;
            let file = site.enroll(&host, &vaults, Duration::from_secs(valid))?;
            file.write(&out).with_context(|| format!("writing the enrollment file {}", out.display()))?;
            tracing::info!(
                "lifeboat site: enrollment of host {host:?} for vaults {} issued, expires {}",
                vaults.join(", "),
                file.expires
            );
            outln!("enrollment file for {host} written to {} (valid until {}, once)", out.display(), file.expires);
            outln!("copy it to {host} and run `lifeboat site join FILE` there; it is a secret until then");
            Ok(())
        }
        Command::Join { file } => {
            let path = file;
            let file = EnrollmentFile::read(&path)?;
            let dir = enroll::join(&file, home.root(), site::enroll_client::post_enroll)?;
            tracing::info!("lifeboat site: joined site {:?} as host {:?}", file.site, file.host);
            let ca = site::pki::hex(&site::pki::fingerprint_pem(&file.ca)?);
            outln!("joined site {:?} as {}: credentials in {}", file.site, file.host, dir.display());
            outln!("the site's CA fingerprint is {ca}: `lifeboat site init` printed it at the site");
            outln!(
                "vaults: {}",
                file.vaults
                    .iter()
                    .map(|v| format!("lifeboat://{}/{v}", file.addresses[0]))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            // The token is spent: the file is no longer a secret, only litter.
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!("lifeboat site: could not remove the used enrollment file {}: {e}", path.display());
            }
            Ok(())
        }
        Command::Revoke { host, site } => {
            let site = site.open(home)?;
            let record = site.revoke(&host)?;
            tracing::info!("lifeboat site: host {host:?} revoked");
            outln!(
                "host {host} revoked at {}: the server refuses its certificate from its next request on",
                record.revoked.unwrap_or_default()
            );
            Ok(())
        }
        Command::Audit { json, site } => {
            let site = site.open(home)?;
            let audit = site.audit()?;
            let path = audit.path();
            if !path.exists() {
                anyhow::bail!(
                    "site {} has no audit log yet ({} is missing); it starts with the site's next action",
                    site.dir().display(),
                    path.display()
                );
            }
            let (records, report) = audit::read_records(&path, audit.keys())
                .with_context(|| format!("reading the site's audit log {}", path.display()))?;
            for r in &records {
                let Some(b) = &r.body else { continue };
                if json {
                    outln!(
                        "{}",
                        serde_json::json!({ "seq": b.seq, "time": b.time, "kind": b.kind, "user": b.user,
                        "authentic": r.authentic, "details": b.details })
                    );
                } else {
                    let mark = if r.authentic { "" } else { "  [NOT AUTHENTIC]" };
                    outln!("{:>6}  {}  {:<14} {}{mark}", b.seq, short_time(&b.time), b.kind, b.details);
                }
            }
            if !report.is_ok() {
                for p in &report.problems {
                    eprintln!("lifeboat site audit: {p}");
                }
                anyhow::bail!(
                    "the site's audit log {} failed verification ({} problems): it was changed after it was written",
                    path.display(),
                    report.problems.len()
                );
            }
            if !json {
                outln!("{} records, verified", report.records);
            }
            Ok(())
        }
        Command::Hosts { json, site } => {
            let hosts = site.open(home)?.hosts()?;
            if json {
                outln!("{}", serde_json::to_string(&hosts)?);
            } else {
                print_hosts(&hosts);
            }
            Ok(())
        }
    }
}

fn print_hosts(hosts: &[HostInfo]) {
    if hosts.is_empty() {
        outln!("no hosts enrolled (`lifeboat site enroll HOST --vault VAULT --out FILE`)");
        return;
    }
    outln!("{:<20} {:<20} {:<9} {:<26} {:>14}  VAULTS", "HOST", "ENROLLED", "STATE", "LAST CONTACT", "RECEIVED");
    for h in hosts {
        let r = &h.record;
        let state = if r.revoked.is_some() { "revoked" } else { "enrolled" };
        outln!(
            "{:<20} {:<20} {:<9} {:<26} {:>14}  {}",
            r.host,
            short_time(&r.enrolled),
            state,
            h.last_contact.as_deref().map_or_else(|| "never".to_owned(), short_time),
            human_bytes(h.bytes_received),
            r.vaults.join(",")
        );
    }
}

/// Bytes in B, KiB, MiB, GiB or TiB, one decimal.
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// An RFC 3339 time to the second.
fn short_time(t: &str) -> String {
    match t.parse::<jiff::Timestamp>() {
        Ok(ts) => ts.round(jiff::Unit::Second).map(|r| r.to_string()).unwrap_or_else(|_| t.to_owned()),
        Err(_) => t.to_owned(),
    }
}
