//! `lifeboat failback`: after a failover, bring the VM's disks home shipping
//! only what changed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use recovery::failover::{JobState, Site};
use serde_json::json;
use vault::Vault;

use crate::home::Home;

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
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    if a.prepare {
        prepare(home, &a)
    } else {
        converge(home, &a)
    }
}

fn prepare(home: &Home, a: &Args) -> Result<()> {
    let site = Site::new(home.failovers_dir());
    let name = &a.name;
    let job = site.load(name)?.with_context(|| format!("VM {name:?} has no failover at this site to fail back"))?;
    if job.state != JobState::Committed {
        bail!(
            "the {} failover of VM {name:?} is {:?}: only a committed failover is failed back (`lifeboat failover \
             commit {name}` first; a test failover is ended with cleanup)",
            job.kind.as_str(),
            job.state
        );
    }
    let origin = job.origin.clone().with_context(|| {
        format!("the failover of VM {name:?} does not record its vault and key (it ran where the VM is defined)")
    })?;
    let timeout = Duration::from_secs(
        crate::size::parse_duration(&a.shutdown_timeout).map_err(|e| anyhow::anyhow!("--shutdown-timeout: {e}"))?,
    );
    let (keys, vault) = super::failover::keys_for(home, name, Some(origin.vault.clone()), Some(origin.key.clone()))?;
    let stopped = match job.process.as_ref().filter(|p| p.alive()) {
        Some(p) => {
            filter::log_line!("[{name}] powering the recovered VM off (QMP system_powerdown) ...");
            let off = recovery::launch::power_off(&p.qmp, timeout).map_err(|e| {
                anyhow::anyhow!(
                    "{e}; nothing was shipped: stop the VM cleanly and run `lifeboat failback {name} --prepare` again"
                )
            })?;
            if !off.clean {
                filter::log_line!(
                    "[{name}] WARNING: {}. The recovered VM did NOT shut down cleanly: its disks ship back \
                     crash-consistent",
                    off.detail
                );
            }
            off.detail
        }
        None => "already off".to_string(),
    };
    // Instant recovery: the local copies must be complete (the servers keep
    // copying after the VM is off), then their servers stop.
    for p in &job.points {
        let Some(served) = &p.served else { continue };
        wait_for_copy(&vault, p, name, timeout)?;
        served.stop()?;
    }
    let mut points = Vec::new();
    let mut shipped = 0u64;
    for p in &job.points {
        let local = p.local_image();
        let protected = home.disk(&p.disk).is_ok_and(|e| e.config.image == local);
        if !protected {
            super::protect::run_args(
                home,
                &[
                    &p.disk,
                    "--image",
                    crate::cmd::failover::path_str(&local)?,
                    "--vault",
                    crate::cmd::failover::path_str(&origin.vault)?,
                    "--key",
                    crate::cmd::failover::path_str(&origin.key)?,
                ],
            )?;
        }
        filter::log_line!("[{name}] shipping disk {} back ...", p.disk);
        let r = super::ship::once(home, &p.disk, super::ship::Bar::new("", false).quiet_when_done())
            .with_context(|| format!("shipping disk {:?} of VM {name:?} back", p.disk))?;
        shipped += r.bytes_shipped;
        let disk_id = crate::disk_pick::own_identity(home, &p.disk).map(|id| crate::output::hex(&id));
        points.push(json!({
            "disk": p.disk, "disk_id": disk_id, "point": r.sequence, "blocks_read": r.blocks_read,
            "new_blocks": r.new_blocks, "bytes_shipped": r.bytes_shipped,
        }));
    }
    site.mark_failed_back(name)?;
    let details = json!({ "vm": name, "stopped": stopped, "points": points, "bytes_shipped": shipped });
    super::audit::record(
        &super::audit::audit_dir(home),
        &keys,
        Some(&vault),
        "failback.prepare",
        None,
        details.clone(),
    )?;
    if a.json {
        outln!("{details}");
    } else {
        outln!(
            "VM {name}: powered off ({stopped}); {shipped} bytes shipped back ({} disk(s)); now, at the original site: \
             lifeboat failback {name}",
            points.len()
        );
    }
    Ok(())
}

/// Waits until instant recovery's local copy of `p` holds every block.
fn wait_for_copy(vault: &vault::Vault, p: &recovery::failover::DiskPoint, vm: &str, timeout: Duration) -> Result<()> {
    let summary = vault.points(p.chain())?.into_iter().find(|s| s.sequence == p.point);
    let blocks = summary.map_or(0, |s| s.disk_size.div_ceil(u64::from(s.block_size.max(1))));
    let started = std::time::Instant::now();
    loop {
        let present: u64 =
            std::fs::read(p.instant_bitmap()).map(|b| b.iter().map(|x| u64::from(x.count_ones())).sum()).unwrap_or(0);
        if present >= blocks {
            return Ok(());
        }
        if !p.served.as_ref().is_some_and(recovery::failover::Served::alive) {
            bail!(
                "the instant-recovery copy of disk {:?} of VM {vm:?} is incomplete ({present} of {blocks} blocks) and its \
                 server is gone; run `lifeboat failover {vm} --unplanned --instant` to restart it, then failback again",
                p.disk
            );
        }
        if started.elapsed() > timeout.max(Duration::from_secs(3600)) {
            bail!("the instant-recovery copy of disk {:?} is still incomplete ({present} of {blocks} blocks)", p.disk);
        }
        filter::log_line!("[{vm}] waiting for the local copy of disk {}: {present} of {blocks} blocks", p.disk);
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn converge(home: &Home, a: &Args) -> Result<()> {
    let name = &a.name;
    let def = home.vms()?.into_iter().find(|d| &d.name == name).with_context(|| {
        format!("VM {name:?} is not defined in {}: run failback where it ran before", home.root().display())
    })?;
    let mut disks = Vec::new();
    let mut fetched = 0u64;
    for (i, disk) in def.disks.iter().enumerate() {
        let entry = home.disk(disk)?;
        let r = entry.replication(disk)?;
        let keys = Arc::new(crate::keyfile::load(&r.key)?);
        let vault = Arc::new(super::vault::open(&r.vault)?);
        vault.check_key(&keys)?;
        // Nothing may write the disk meanwhile: take its state file's lock.
        let state = std::fs::File::open(entry.state_path())
            .with_context(|| format!("opening {}", entry.state_path().display()))?;
        if !crate::cmd::protect::lock_state(&state) {
            bail!("disk {disk:?} is in use (the agent or a filter serves it): stop it, then run failback again");
        }
        // The copy to bring back: the recovery site protects the recovered
        // disk as a disk of its own (--prepare) under the same name.
        let copy = recovered_copy(&vault, &keys, disk, &a.choose, i == 0)?;
        let own = entry.disk_id()? == copy.disk_id;
        let (seq, chain) = match (i, a.point) {
            (0, Some(p)) => match copy.point(p) {
                Some(s) => (p, s.chain.clone()),
                None => bail!("the recovered copy of disk {disk:?} (identity {}) has no point {p}", copy.disk_id_hex()),
            },
            _ => copy
                .points
                .iter()
                .rev()
                .find(|p| p.damage.is_none())
                .map(|p| (p.sequence, p.chain.clone()))
                .with_context(|| format!("the recovered copy of disk {disk:?} has no usable point"))?,
        };
        filter::log_line!(
            "[{name}] disk {disk}: point {seq} of {}",
            if own {
                "this host's own disk (nothing was shipped back since)".to_string()
            } else {
                format!(
                    "the recovered copy, identity {} from host {}",
                    copy.disk_id_hex(),
                    if copy.host.is_empty() { "not recorded" } else { &copy.host }
                )
            }
        );
        let _hold = vault.hold(&chain, seq, "failback")?;
        let reader =
            Vault::point_reader(&vault, &chain, seq, &keys).with_context(|| format!("point {seq} of disk {disk:?}"))?;
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&entry.config.image)
            .with_context(|| format!("opening {}", entry.config.image.display()))?;
        filter::log_line!("[{name}] bringing disk {disk} to point {seq}: comparing every block ...");
        // Until it is done, the image is half old, half the point: the
        // marker keeps the agent, filter and cycles off it, and says so.
        let marker = entry.failback_marker();
        recovery::trust::write_private(
            &marker,
            format!("to point {seq}, started {}\n", crate::time::rfc3339(crate::time::now_ns())).as_bytes(),
        )
        .with_context(|| format!("writing {}", marker.display()))?;
        let report = recovery::failback::converge(
            &reader,
            &keys,
            &image,
            &mut crate::progress::Reporter::counting(
                &format!("[{name}] disk {disk}: "),
                std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ),
        )
        .with_context(|| format!("bringing disk {disk:?} to point {seq} (run the command again to finish)"))?;
        drop(state);
        // The disk now is the point: a fresh state, verified by the next cycle
        // (which finds nothing to send).
        super::protect::run_args(
            home,
            &[disk, "--image", crate::cmd::failover::path_str(&entry.config.image)?, "--reset-state"],
        )?;
        std::fs::remove_file(&marker).with_context(|| format!("removing {}", marker.display()))?;
        fetched += report.fetched_bytes;
        let d = json!({ "disk": disk, "point": seq, "report": report });
        super::audit::record(
            &super::audit::audit_dir(home),
            &keys,
            Some(&vault),
            "failback.converge",
            Some(disk),
            d.clone(),
        )?;
        disks.push(d);
    }
    let out = json!({ "vm": name, "disks": disks, "bytes_fetched": fetched });
    if a.json {
        outln!("{out}");
    } else {
        outln!("VM {name}: disks brought to the recovered VM's last point, {fetched} bytes fetched; start it again through `lifeboat agent` (protection resumes)");
    }
    Ok(())
}

/// The copy of `disk` a failback brings back: among the vault's disks of that
/// name, the one the flags pick, else the one with the newest point — what
/// the last `failback --prepare` shipped (the recovered copy, a disk of its
/// own), or this host's own disk when nothing was shipped back since.
fn recovered_copy(
    vault: &Vault,
    keys: &disk_format::Keys,
    disk: &str,
    choose: &crate::disk_pick::ChooseArgs,
    first: bool,
) -> Result<vault::DiskPoints> {
    let all = vault.disks_by_identity(keys)?;
    let mut choice = choose.choice()?;
    if !first {
        choice.disk_id = None;
    }
    let newest = |d: &vault::DiskPoints| d.points.iter().rev().find(|p| p.damage.is_none()).map(|p| p.cut_time_ns);
    all.named(disk).filter(|d| choice.accepts(d)).max_by_key(|d| newest(d)).cloned().with_context(|| {
        format!(
            "vault {} holds no point of disk {disk:?}{}: run `lifeboat failback VM --prepare` at the recovery site \
             first (it ships the recovered disk back)",
            vault.backend().location(),
            if choose.given() { " that --disk-id/--from-host accept" } else { "" }
        )
    })
}
