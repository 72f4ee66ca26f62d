//! `lifeboat failback`: after a failover, bring the VM's disks home shipping
//! only what changed.

use std::time::Duration;

use anyhow::Result;
use recovery::failback::{self, BringBack};
use recovery::failover::Site;

use crate::home::Home;
use crate::host_side::Host;

#[derive(clap::Args)]
pub struct Args {
    /// The VM.
    name: String,
    /// At the recovery site: power the failed-over VM off, protect its disks
    /// here (same vault and key) and ship them; blocks the vault already
    /// holds are not sent again, so only what the VM changed since the
    /// failover travels. Then run `lifeboat failback VM` at the original site.
    #[arg(long)]
    prepare: bool,
    /// How long the VM may take to power off (--prepare).
    #[arg(long, default_value = "5m")]
    shutdown_timeout: String,
    /// At the original site: the point of the VM's first disk to bring the
    /// disks to (default: the newest, i.e. what --prepare shipped).
    #[arg(long, conflicts_with = "prepare")]
    point: Option<u64>,
    /// At the original site: which copy to bring back when the vault holds several other disks of a
    /// disk's name (default: the one with the newest point, i.e. what the last --prepare shipped;
    /// --disk-id applies to the VM's first disk).
    #[command(flatten)]
    choose: crate::disk_pick::ChooseArgs,
    /// Print what was done as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    bandwidth: crate::vault_open::BandwidthArg,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    if a.prepare {
        prepare(home, &a)
    } else {
        converge(home, &a)
    }
}

fn prepare(home: &Home, a: &Args) -> Result<()> {
    let name = &a.name;
    let timeout = Duration::from_secs(
        crate::size::parse_duration(&a.shutdown_timeout).map_err(|e| anyhow::anyhow!("--shutdown-timeout: {e}"))?,
    );
    let done = failback::prepare(
        &Site::new(home.failovers_dir()),
        &Host::limited(home, a.bandwidth.throttle()),
        name,
        timeout,
    )?;
    if a.json {
        outln!("{}", done.details);
    } else {
        outln!(
            "VM {name}: powered off ({}); {} bytes shipped back ({} disk(s)); now, at the original site: \
             lifeboat failback {name}",
            done.stopped,
            done.bytes_shipped,
            done.disks
        );
    }
    Ok(())
}

fn converge(home: &Home, a: &Args) -> Result<()> {
    let name = &a.name;
    let how = BringBack { point: a.point, choice: a.choose.choice()?, chosen: a.choose.given() };
    let done = failback::bring_back(&Host::limited(home, a.bandwidth.throttle()), name, &how)?;
    if a.json {
        outln!("{}", done.details);
    } else {
        outln!(
            "VM {name}: disks brought to the recovered VM's last point, {} bytes fetched; start it again through \
             `lifeboat agent` (protection resumes)",
            done.bytes_fetched
        );
    }
    Ok(())
}
