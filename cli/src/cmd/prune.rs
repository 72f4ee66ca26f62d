//! `lifeboat prune`: apply the retention ladder to a disk's points.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use vault::retention::Policy;

use crate::home::Home;
use crate::size::parse_duration;

#[derive(clap::Args)]
pub struct Args {
    /// The protected disk.
    name: String,
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
    #[arg(long)]
    vault: Option<PathBuf>,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    // The disk's own settings, when it is protected here.
    let settings = home.disk(&a.name).ok().and_then(|e| e.config.replication.clone());
    let dir = match (a.vault, &settings) {
        (Some(v), _) => v,
        (None, Some(s)) => s.vault.clone(),
        (None, None) => home.disk(&a.name)?.replication(&a.name)?.vault.clone(),
    };
    let vault = super::vault::open(&dir)?;
    let base = settings.map(|s| s.retention).unwrap_or_default();
    let policy = Policy {
        recent: Duration::from_secs(a.recent.unwrap_or(base.recent_seconds)),
        hourly: a.hourly.unwrap_or(base.hourly),
        daily: a.daily.unwrap_or(base.daily),
    };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    let r = vault.prune(&a.name, &policy, now)?;
    // Recorded under the disk's key when it is protected here (pruning needs no key).
    if let Some(s) = home.disk(&a.name).ok().and_then(|e| e.config.replication.clone()) {
        if !r.pruned.is_empty() {
            let keys = crate::keyfile::load(&s.key)?;
            let details = serde_json::json!({ "pruned": r.pruned, "kept": r.kept, "held": r.held, "by": "prune" });
            super::audit::record(&super::audit::audit_dir(home), &keys, Some(&vault), "prune", Some(&a.name), details)?;
        }
    }
    outln!(
        "{}: {} points kept, {} pruned{}; run `lifeboat vault gc {}` to free the space they alone used",
        a.name,
        r.kept.len(),
        r.pruned.len(),
        if r.held.is_empty() {
            String::new()
        } else {
            format!(" ({} kept because a restore holds them)", r.held.len())
        },
        dir.display()
    );
    Ok(())
}
