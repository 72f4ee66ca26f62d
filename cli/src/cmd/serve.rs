//! `lifeboat vault serve`: the recovery site's vault server, in the
//! foreground (systemd-friendly). SIGTERM or SIGINT stops accepting, lets
//! requests in flight finish, and exits 0.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};

use crate::signals;

#[derive(clap::Args)]
pub struct Args {
    /// The site directory (`lifeboat site init`): its CA, the server's
    /// certificate, the enrolled hosts and the grants journal.
    #[command(flatten)]
    pub site: super::site::SiteDir,
    /// Address to listen on; by default every interface on the port of the
    /// first address in the site's site.toml.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// The vaults served, as NAME=PATH (the NAME in lifeboat://HOST:PORT/NAME).
    #[arg(value_name = "VAULT=PATH", required = true)]
    pub vaults: Vec<String>,
}

fn parse_vault(spec: &str) -> Result<(String, PathBuf)> {
    let Some((name, path)) = spec.split_once('=') else {
        bail!("{spec:?} is not NAME=PATH: name each vault served, e.g. `prod=/srv/vaults/prod`");
    };
    site::protocol::check_vault_name(name).with_context(|| format!("vault name {name:?}"))?;
    Ok((name.to_string(), PathBuf::from(path)))
}

pub fn serve(home: &crate::home::Home, a: Args) -> Result<()> {
    // Before any thread starts: the server's threads inherit the mask, and
    // only the waiting thread below receives the signals.
    signals::block_termination().context("blocking SIGTERM/SIGINT")?;
    let vaults = a.vaults.iter().map(|v| parse_vault(v)).collect::<Result<Vec<_>>>()?;
    let site_path = a.site.path(home);
    let site =
        site::site_dir::Site::open(&site_path).with_context(|| format!("opening site {}", site_path.display()))?;
    let listen = match a.listen {
        Some(l) => l,
        None => {
            let Some(first) = site.config().addresses.first() else {
                bail!("site {} lists no address in site.toml; give --listen ADDR:PORT", site_path.display());
            };
            let (_, port) = site::site_dir::split_address(first)?;
            SocketAddr::from(([0, 0, 0, 0], port))
        }
    };
    let (cert, key) = site.server_pem()?;
    let tls = site::tls::server_config(&site.ca_pem()?, &cert, &key)?;
    let grants = site.grants_dir();
    let site = Arc::new(site);
    let audit = site.audit()?;
    let config = site::server::ServerConfig { tls, vaults: vaults.clone(), grants, hosts: site.clone() };
    let server = site::server::Server::start(listen, config)?;
    let names: Vec<&str> = vaults.iter().map(|(n, _)| n.as_str()).collect();
    let served: Vec<serde_json::Value> =
        vaults.iter().map(|(n, p)| serde_json::json!({ "vault": n, "path": p.display().to_string() })).collect();
    audit.record("serve.start", serde_json::json!({ "listen": server.local_addr().to_string(), "vaults": served }))?;
    tracing::info!("lifeboat vault serve: serving vaults {}", names.join(", "));
    let signal = signals::wait_termination();
    tracing::info!("lifeboat vault serve: {signal}: finishing requests in flight, then stopping");
    server.shutdown_handle().shutdown();
    server.wait();
    audit.record("serve.stop", serde_json::json!({ "signal": signal.to_string() }))?;
    Ok(())
}
