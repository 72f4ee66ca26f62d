//! `lifeboat points`: the recovery points of a disk, or the disks of a vault.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vault::DiskPoints;

use crate::disk_pick::ChooseArgs;
use crate::home::Home;
use crate::time::rfc3339;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk. Without it: every disk in the vault (name, identity, host, points), which
    /// needs --vault and --key.
    name: Option<String>,
    /// The vault to look in (default: the disk's vault from `lifeboat protect`).
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    /// The customer key file (default: the disk's key from `lifeboat protect`). The vault seals disk
    /// names and hosts, so listing by name needs the key.
    #[arg(long)]
    key: Option<PathBuf>,
    #[command(flatten)]
    choose: ChooseArgs,
    /// Print a JSON array: [{"id", "cut_time", "cut_time_ns", "consistency", "bytes_shipped", "disk_size",
    /// "cut_group", "disk", "disk_id", "host"}] (cut_group: the id shared by the points of disks cut
    /// together, or null; disk_id: the identity of the disk the point was cut from, two disks of one name
    /// differ; host: the host that protected it, "" for points from before 2026-12-04; root_object: the
    /// point's root in the vault, roots/CHAIN/SEQUENCE, CHAIN being a keyed id of the disk). Without a NAME:
    /// [{"disk", "disk_id", "host", "points", "newest_point", "newest_cut_time"}].
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let entry = a.name.as_deref().and_then(|n| home.disk(n).ok());
    let replication = entry.as_ref().and_then(|e| e.replication(a.name.as_deref().unwrap_or_default()).ok());
    let (dir, key) = match (a.vault, a.key, replication) {
        (Some(v), Some(k), _) => (v, k),
        (v, k, Some(r)) => (v.unwrap_or_else(|| r.vault.clone()), k.unwrap_or_else(|| r.key.clone())),
        (_, _, None) => match &a.name {
            Some(n) => bail!("disk {n:?} is not protected on this host: pass --vault DIR and --key KEYFILE"),
            None => bail!("listing the disks of a vault needs --vault DIR and --key KEYFILE"),
        },
    };
    let keys = crate::keyfile::load(&key)?;
    let vault = super::vault::open(home, &dir)?;
    vault.check_key(&keys)?;
    let Some(name) = a.name else { return list_disks(&vault, &keys, &dir, a.json) };
    let own = crate::disk_pick::own_identity(home, &name).filter(|_| !a.choose.given());
    let disks: Vec<DiskPoints> = match own {
        Some(id) => vec![vault.disk_points(&keys, &name, &id)?],
        None => {
            let all = vault.disks_by_identity(&keys)?;
            let choice = a.choose.choice()?;
            let found: Vec<DiskPoints> = all.named(&name).filter(|d| choice.accepts(d)).cloned().collect();
            if found.is_empty() {
                all.pick(&name, &choice, &vault.backend().location())?; // names what the vault holds
            }
            found
        }
    };
    let _ = crate::replicate::warn_if_vault_lost_points(home, &name, &vault, &keys, disks.first());
    if a.json {
        let list: Vec<_> = disks
            .iter()
            .flat_map(|d| d.points.iter().map(move |p| (d, p)))
            .map(|(d, p)| {
                if let Some(damage) = &p.damage {
                    return serde_json::json!({ "id": p.sequence, "damaged": damage, "disk": d.name,
                        "disk_id": d.disk_id_hex(), "host": d.host, "root_object": format!("roots/{}", p.root_name) });
                }
                serde_json::json!({
                    "id": p.sequence,
                    "cut_time": rfc3339(p.cut_time_ns),
                    "cut_time_ns": p.cut_time_ns,
                    "consistency": format!("{:?}", p.consistency).to_lowercase() + "-consistent",
                    "bytes_shipped": p.bytes_shipped,
                    "disk_size": p.disk_size,
                    "cut_group": p.cut_group.map(|g| crate::output::hex(&g)),
                    "disk": d.name,
                    "disk_id": crate::output::hex(&p.disk_id),
                    "host": d.host,
                    "root_object": format!("roots/{}", p.root_name),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if disks.iter().all(|d| d.points.is_empty()) {
        outln!("{name}: no recovery points in {} yet (run `lifeboat ship {name} --once`)", dir);
        return Ok(());
    }
    for (n, d) in disks.iter().enumerate() {
        if disks.len() > 1 {
            if n > 0 {
                outln!();
            }
            let host = if d.host.is_empty() { "not recorded" } else { &d.host };
            outln!("disk {name}, identity {} (--disk-id), host {host} (--from-host):", d.disk_id_hex());
        }
        outln!("{:>6}  {:<24}  {:<16}  {:>14}", "ID", "CUT TIME (UTC)", "CONSISTENCY", "BYTES SHIPPED");
        for p in &d.points {
            if let Some(damage) = &p.damage {
                outln!("{:>6}  DAMAGED: {damage}", p.sequence);
                continue;
            }
            outln!(
                "{:>6}  {:<24}  {:<16}  {:>14}",
                p.sequence,
                rfc3339(p.cut_time_ns),
                format!("{:?}", p.consistency).to_lowercase() + "-consistent",
                p.bytes_shipped
            );
        }
    }
    Ok(())
}

/// Every disk of the vault, one line each.
fn list_disks(vault: &vault::Vault, keys: &disk_format::Keys, dir: &vault::Location, json: bool) -> Result<()> {
    let all = vault.disks_by_identity(keys).with_context(|| format!("listing the disks of {}", dir))?;
    for u in &all.unreadable {
        tracing::warn!("lifeboat: warning: chain {} of {} cannot be read with this key: {}", u.chain, dir, u.detail);
    }
    if json {
        let list: Vec<_> = all
            .disks
            .iter()
            .map(|d| {
                let newest = d.points.iter().rev().find(|p| p.damage.is_none());
                serde_json::json!({
                    "disk": d.name,
                    "disk_id": d.disk_id_hex(),
                    "host": d.host,
                    "points": d.points.len(),
                    "newest_point": newest.map(|p| p.sequence),
                    "newest_cut_time": newest.map(|p| rfc3339(p.cut_time_ns)),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if all.disks.is_empty() {
        outln!("{}: no recovery points yet", dir);
        return Ok(());
    }
    outln!("{:<24}  {:<32}  {:<20}  {:>6}  {:<24}", "DISK", "IDENTITY", "HOST", "POINTS", "NEWEST CUT (UTC)");
    for d in &all.disks {
        let newest = d.points.iter().rev().find(|p| p.damage.is_none());
        outln!(
            "{:<24}  {:<32}  {:<20}  {:>6}  {:<24}",
            d.name,
            d.disk_id_hex(),
            if d.host.is_empty() { "-" } else { &d.host },
            d.points.len(),
            newest.map_or("-".to_string(), |p| rfc3339(p.cut_time_ns))
        );
    }
    Ok(())
}
