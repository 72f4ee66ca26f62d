//! `lifeboat restore`: write a recovery point out as a raw image.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::home::Home;
use crate::keyfile;
use crate::output::PartialFile;
use crate::progress::Reporter;

#[derive(clap::Args)]
pub struct Args {
    /// The disk whose point to restore.
    name: String,
    /// `latest` or a point id from `lifeboat points`.
    #[arg(long, default_value = "latest")]
    point: String,
    /// The raw image to write (must not exist, unless --force). Sparse where the disk is zero.
    #[arg(long)]
    out: PathBuf,
    /// The customer key file (default: the disk's key from `lifeboat protect`).
    #[arg(long)]
    key: Option<PathBuf>,
    /// The vault (default: the disk's vault from `lifeboat protect`).
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    #[command(flatten)]
    choose: crate::disk_pick::ChooseArgs,
    /// Overwrite --out if it exists. Never a protected disk's image, nor an
    /// image a VM or filter has open (QEMU's image lock): restore to a new
    /// file instead.
    #[arg(long)]
    force: bool,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let (vault_dir, key_path) = match (a.vault, a.key) {
        (Some(v), Some(k)) => (v, k),
        (v, k) => {
            let entry =
                home.disk(&a.name).context("pass --vault and --key to restore a disk not protected on this host")?;
            let r = entry.replication(&a.name)?;
            (v.unwrap_or_else(|| r.vault.clone()), k.unwrap_or_else(|| r.key.clone()))
        }
    };
    let keys = keyfile::load(&key_path)?;
    let vault = super::vault::open(home, &vault_dir)?;
    vault.check_key(&keys)?;
    // At the protected site the home's own disk; elsewhere the one disk of
    // that name, or the one --disk-id / --from-host picks: another disk
    // protected under the same name (another host, a recovered copy) has
    // its own points and is never taken for this one.
    let disk = crate::disk_pick::disk_points(home, &vault, &keys, &a.name, &a.choose)?;
    let _ = crate::replicate::warn_if_vault_lost_points(home, &a.name, &vault, &keys, Some(&disk));
    let point = match a.point.as_str() {
        "latest" => match disk.newest() {
            Some(p) => p,
            None => bail!("disk {:?} has no recovery points in {}", a.name, vault_dir),
        },
        id => {
            let seq: u64 = id.parse().map_err(|_| anyhow::anyhow!("--point {id:?}: use `latest` or a point id"))?;
            match disk.point(seq) {
                Some(p) => p,
                None => {
                    bail!("disk {:?} has no point {seq} in {} (see `lifeboat points {}`)", a.name, vault_dir, a.name)
                }
            }
        }
    };
    let sequence = point.sequence;
    if let Some(damage) = &point.damage {
        // Never fall back to another point silently: the user chooses.
        bail!(
            "point {}/{sequence} is damaged: {damage}; pick another point with --point (see `lifeboat points {}`)",
            a.name,
            a.name
        );
    }
    crate::output::refuse_image_in_use(home, &a.out, "restore")?;
    let partial = PartialFile::create(&a.out, a.force)?;
    let started = Instant::now();
    let mut progress = Reporter::new("", std::io::stderr().is_terminal());
    let result = vault.restore(&point.chain, sequence, &keys, partial.file(), &mut progress);
    drop(progress);
    let details = match &result {
        Ok(r) => serde_json::json!({ "point": sequence, "disk_id": disk.disk_id_hex(), "out": a.out,
            "blocks_written": r.blocks_written, "ok": true }),
        Err(e) => serde_json::json!({ "point": sequence, "disk_id": disk.disk_id_hex(), "out": a.out, "ok": false,
            "error": e.to_string() }),
    };
    super::audit::record(&super::audit::audit_dir(home), &keys, Some(&vault), "restore", Some(&a.name), details)?;
    // On error the partial file is removed when `partial` drops.
    let report = result.with_context(|| {
        format!("restoring point {}/{sequence}: nothing was written to {}", a.name, a.out.display())
    })?;
    partial.commit()?;
    outln!(
        "restored point {sequence} of {} to {}: {} blocks written, {} zero, in {:.1} s (every block verified)",
        a.name,
        a.out.display(),
        report.blocks_written,
        report.zero_blocks,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
