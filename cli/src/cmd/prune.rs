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
    /// Keep every point cut within this long ago.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    recent: u64,
    /// Then keep the newest point of each of this many clock hours.
    #[arg(long, default_value_t = 24)]
    hourly: u32,
    /// Then keep the newest point of each of this many days (15 or more for a long ladder).
    #[arg(long, default_value_t = 0)]
    daily: u32,
    /// The vault (default: the disk's vault from `lifeboat protect`).
    #[arg(long)]
    vault: Option<PathBuf>,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let dir = match a.vault {
        Some(v) => v,
        None => home.disk(&a.name)?.replication(&a.name)?.vault.clone(),
    };
    let vault = super::vault::open(&dir)?;
    let policy = Policy { recent: Duration::from_secs(a.recent), hourly: a.hourly, daily: a.daily };
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(0));
    let r = vault.prune(&a.name, &policy, now)?;
    println!(
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
