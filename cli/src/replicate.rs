//! A protected disk's replication target ([`agent::Target`], loaded from the
//! home here), and the protected site's check that its vault still holds
//! the points it committed.

use anyhow::Result;
use disk_format::keys::Keys;
use vault::Vault;

pub use agent::Target;

use crate::home::{DiskEntry, Home};
use crate::keyfile;

/// Loads disk `name`'s settings and its key into its replication target
/// (the vault is opened per cycle).
pub fn load(home: &Home, name: &str) -> Result<(DiskEntry, Target)> {
    let entry = home.disk(name)?;
    let settings = entry.replication(name)?.clone();
    let target = Target {
        name: name.to_string(),
        disk_id: entry.disk_id()?,
        vault: settings.vault.clone(),
        opener: crate::vault_open::opener(home),
        rpo: std::time::Duration::from_secs(settings.rpo_seconds),
        retention: settings.retention.policy(),
        keys: keyfile::load(&settings.key)?,
        status_path: entry.status_path(),
        state_path: entry.state_path(),
        audit_dir: crate::cmd::audit::audit_dir(home),
        vms_dir: home.vms_dir(),
        throttle: None,
        index_cache: Some(home.index_cache_dir()),
        warm_index: Default::default(),
        page_cache: Some(home.page_cache_dir()),
        deletes_refused: Default::default(),
        compress: settings.compress,
    };
    Ok((entry, target))
}

/// At the protected site: if this home protects `disk` and the vault has lost
/// points its cycles committed there (rolled back, emptied, or forked where
/// the last one was), says so on stderr and returns the message. `points`,
/// `restore` and `failover` call it before they trust "latest".
///
/// `known`: the disk's points if the caller listed them already (used when
/// they are this home's disk's, else listed here).
pub fn warn_if_vault_lost_points(
    home: &Home,
    disk: &str,
    vault: &Vault,
    keys: &Keys,
    known: Option<&vault::DiskPoints>,
) -> Option<String> {
    let entry = home.disk(disk).ok()?;
    let recorded = filter::StateFile::header_of(&entry.state_path()).ok()?.last_point;
    let own = entry.disk_id().ok()?;
    let points = match known.filter(|d| d.disk_id == own) {
        Some(d) => Ok(d.points.clone()),
        None => vault.disk_points(keys, disk, &own).map(|d| d.points),
    };
    let found = match points.and_then(|p| shipper::chain::check_vault(recorded.as_ref(), vault, &p)) {
        Ok(found) => found?,
        Err(e) => {
            let msg = format!("could not compare the vault's points of disk {disk:?} with this host's record: {e}");
            tracing::warn!("lifeboat: warning: {msg}");
            return Some(msg);
        }
    };
    let msg = format!(
        "{}; the newest point listed is not the newest this host committed, so it lacks changes this host \
         shipped: do not fail over to it unless the newer points are truly gone",
        found.describe(disk)
    );
    tracing::warn!("lifeboat: WARNING: {msg}");
    Some(msg)
}
