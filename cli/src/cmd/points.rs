//! `lifeboat points`: the recovery points of a disk.

use std::path::PathBuf;

use anyhow::Result;

use crate::home::Home;
use crate::time::rfc3339;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk.
    name: String,
    /// The vault to look in (default: the disk's vault from `lifeboat protect`).
    #[arg(long)]
    vault: Option<PathBuf>,
    /// Print a JSON array: [{"id", "cut_time", "cut_time_ns", "consistency", "bytes_shipped", "disk_size",
    /// "cut_group", "disk_id"}] (cut_group: the id shared by the points of disks cut together, or null;
    /// disk_id: the identity of the disk the point was cut from: two disks of one name differ).
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let dir = match a.vault {
        Some(v) => v,
        None => home.disk(&a.name)?.replication(&a.name)?.vault.clone(),
    };
    let vault = super::vault::open(&dir)?;
    let points = vault.points(&a.name)?;
    let _ = crate::replicate::warn_if_vault_lost_points(home, &a.name, &vault);
    if a.json {
        let list: Vec<_> = points
            .iter()
            .map(|p| {
                if let Some(damage) = &p.damage {
                    return serde_json::json!({ "id": p.sequence, "damaged": damage });
                }
                serde_json::json!({
                    "id": p.sequence,
                    "cut_time": rfc3339(p.cut_time_ns),
                    "cut_time_ns": p.cut_time_ns,
                    "consistency": format!("{:?}", p.consistency).to_lowercase() + "-consistent",
                    "bytes_shipped": p.bytes_shipped,
                    "disk_size": p.disk_size,
                    "cut_group": p.cut_group.map(|g| crate::output::hex(&g)),
                    "disk_id": crate::output::hex(&p.disk_id),
                })
            })
            .collect();
        outln!("{}", serde_json::Value::Array(list));
        return Ok(());
    }
    if points.is_empty() {
        outln!("{}: no recovery points in {} yet (run `lifeboat ship {} --once`)", a.name, dir.display(), a.name);
        return Ok(());
    }
    outln!("{:>6}  {:<24}  {:<16}  {:>14}", "ID", "CUT TIME (UTC)", "CONSISTENCY", "BYTES SHIPPED");
    for p in &points {
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
    Ok(())
}
