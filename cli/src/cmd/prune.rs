//! `lifeboat prune`: apply the retention ladder to a disk's points.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use vault::retention::Policy;

use crate::home::Home;
use crate::size::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk (its points are found with the key: the vault seals disk names).
    #[arg(required_unless_present = "all")]
    name: Option<String>,
    /// Prune every chain of points in the vault, without the key (for a recovery-site administrator,
    /// who holds no key); needs --vault.
    #[arg(long, conflicts_with = "name", requires = "vault")]
    all: bool,
    /// Keep every point cut within this long ago (default: the disk's
    /// setting from `lifeboat protect --keep-recent`, else 1h).
    #[arg(long, value_parser = parse_duration)]
    recent: Option<u64>,
    /// Then keep the newest point of each of this many clock hours (default:
    /// the disk's setting, else 24).
    #[arg(long)]
    hourly: Option<u32>,
    /// Then keep the newest point of each of this many days, 15 or more for a
    /// long ladder (default: the disk's setting, else 0).
    #[arg(long)]
    daily: Option<u32>,
    /// The vault (default: the disk's vault from `lifeboat protect`).
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    /// The customer key file (default: the disk's key from `lifeboat protect`).
    #[arg(long)]
    key: Option<PathBuf>,
    #[command(flatten)]
    choose: crate::disk_pick::ChooseArgs,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let Some(name) = a.name.clone() else { return prune_all(home, &a) };
    // The disk's own settings, when it is protected here.
    let settings = home.disk(&name).ok().and_then(|e| e.config.replication.clone());
    let (dir, key) = match (a.vault.clone(), a.key.clone(), &settings) {
        (Some(v), Some(k), _) => (v, k),
        (v, k, Some(s)) => (v.unwrap_or_else(|| s.vault.clone()), k.unwrap_or_else(|| s.key.clone())),
        (_, _, None) => bail!(
            "disk {name:?} is not protected on this host: pass --vault DIR and --key KEYFILE (or prune every \
             chain without the key: --all --vault DIR)"
        ),
    };
    crate::vault_open::refuse_on_server(&dir, "prune")?;
    let vault = super::vault::open(home, &dir)?;
    let keys = crate::keyfile::load(&key)?;
    let policy = policy(&a, settings.map(|s| s.retention).unwrap_or_default());
    let disk = crate::disk_pick::disk_points(home, &vault, &keys, &name, &a.choose)?;
    let r = vault.prune_disk(&keys, &name, &disk.disk_id, &policy, now())?;
    if !r.pruned.is_empty() {
        let details = serde_json::json!({ "pruned": r.pruned, "kept": r.kept, "held": r.held, "by": "prune",
            "disk_id": disk.disk_id_hex() });
        super::audit::record(&super::audit::audit_dir(home), &keys, Some(&vault), "prune", Some(&name), details)?;
    }
    outln!(
        "{}: {} points kept, {} pruned{}; run `lifeboat vault gc {}` to free the space they alone used",
        name,
        r.kept.len(),
        r.pruned.len(),
        if r.held.is_empty() {
            String::new()
        } else {
            format!(" ({} kept because a restore holds them)", r.held.len())
        },
        dir
    );
    Ok(())
}

fn policy(a: &Args, base: crate::home::Retention) -> Policy {
    Policy {
        recent: Duration::from_secs(a.recent.unwrap_or(base.recent_seconds)),
        hourly: a.hourly.unwrap_or(base.hourly),
        daily: a.daily.unwrap_or(base.daily),
        // As the disk's settings say (`protect --thin-recent`).
        ..base.policy()
    }
}

fn now() -> u64 {
    system::clock::now_ns()
}

/// `--all`: every chain, keyless (the vault cannot tell which disk a chain is).
fn prune_all(home: &Home, a: &Args) -> Result<()> {
    let dir = a.vault.clone().expect("clap requires --vault with --all");
    crate::vault_open::refuse_on_server(&dir, "prune")?;
    let vault = super::vault::open(home, &dir)?;
    let policy = policy(a, crate::home::Retention::default());
    let (mut kept, mut pruned, mut held) = (0, 0, 0);
    for chain in vault.disks()? {
        let r = vault.prune(&chain, &policy, now())?;
        (kept, pruned, held) = (kept + r.kept.len(), pruned + r.pruned.len(), held + r.held.len());
    }
    outln!(
        "{}: {kept} points kept, {pruned} pruned{} across every disk; run `lifeboat vault gc {}` to free the space \
         they alone used (not recorded in an audit log: no key was given)",
        dir,
        if held == 0 { String::new() } else { format!(" ({held} kept because a restore holds them)") },
        dir
    );
    Ok(())
}
