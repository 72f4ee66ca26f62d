//! One protected disk's replication target (key + vault + settings) and the
//! cycle runner that `lifeboat ship --once` and the agent share: it runs the
//! cycle and records its outcome in the disk's status file and the audit log.
//!
//! The vault is opened for each cycle, not once: a vault that is unreachable
//! when the agent starts (or goes away and comes back) only fails the cycles
//! that meet it, while the disk keeps being served and its changes recorded.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result};
use disk_format::keys::Keys;
use serde_json::json;
use shipper::{run_cycle, CutSource, CycleOptions, CycleReport, Progress};
use vault::Vault;

use crate::home::{DiskEntry, Home, Replication};
use crate::keyfile;
use crate::status_file::{self, CycleOutcome};
use crate::time::now_ns;

/// Everything a cycle of one disk needs besides its source.
pub struct Target {
    pub name: String,
    pub disk_id: [u8; 16],
    pub settings: Replication,
    pub keys: Keys,
    pub status_path: PathBuf,
    /// The home's audit log directory.
    pub audit_dir: PathBuf,
    /// The home, where the VM definitions are (read again every cycle, so
    /// a redefined VM travels with the next point).
    pub home: PathBuf,
}

impl Target {
    /// Loads the disk's settings and its key (the vault is opened per cycle).
    pub fn load(home: &Home, name: &str) -> Result<(DiskEntry, Target)> {
        let entry = home.disk(name)?;
        let settings = entry.replication(name)?.clone();
        let keys = keyfile::load(&settings.key)?;
        let target = Target {
            name: name.to_string(),
            disk_id: entry.disk_id()?,
            status_path: entry.status_path(),
            audit_dir: crate::cmd::audit::audit_dir(home),
            home: home.root().to_path_buf(),
            settings,
            keys,
        };
        Ok((entry, target))
    }

    /// Opens the disk's vault and checks that it takes this key.
    pub fn open_vault(&self) -> Result<Vault> {
        let vault = crate::cmd::vault::open(&self.settings.vault)?;
        vault.check_key(&self.keys)?;
        Ok(vault)
    }

    /// Runs one cycle and records its outcome (committed or failed) in the
    /// status file and the audit log. `late_ms`: how late the cycle starts
    /// against its schedule. Returns the report and the open vault. A
    /// cancelled cycle's error downcasts to `ShipError::Cancelled`.
    pub fn cycle(
        &self,
        source: &mut dyn CutSource,
        cancel: Option<&AtomicBool>,
        late_ms: u64,
        progress: &mut dyn Progress,
        group: Option<(&crate::group_cut::Round<'_>, &std::sync::Arc<filter::Disk>, bool)>,
    ) -> Result<(CycleReport, Vault)> {
        let started_ns = now_ns();
        let vault = self.open_vault();
        let mut hooks = vault.as_ref().ok().and_then(|v| self.app_hooks(v));
        let audit_head = vault.as_ref().ok().and_then(|v| self.audit_head(v));
        let extension = self.extension(audit_head);
        // In a group cut, the member hook runs the app hooks (if this disk
        // carries them) and adds the group's id to the root.
        let member = match (group, &extension) {
            (Some((round, disk, runs_app)), Ok(_)) => Some(crate::group_cut::Member::new(
                round,
                disk,
                &self.name,
                if runs_app { hooks.take() } else { None },
                self.vm_definition_bytes(),
                audit_head,
                &self.keys,
            )),
            _ => None,
        };
        let hook: Option<&dyn shipper::CutHook> = match &member {
            Some(m) => Some(m),
            None => hooks.as_ref().map(|h| h as &dyn shipper::CutHook),
        };
        let result = match (&vault, &extension) {
            (Ok(v), Ok(extension)) => {
                let opts =
                    CycleOptions { cancel, extension, cut_hook: hook, ..CycleOptions::new(&self.name, self.disk_id) };
                run_cycle(source, v, &self.keys, &opts, progress).map_err(anyhow::Error::from)
            }
            (Err(e), _) | (_, Err(e)) => Err(anyhow::anyhow!("{}", crate::error_chain(e))),
        };
        let mut outcome = CycleOutcome { started_ns, ended_ns: now_ns(), late_ms, ..CycleOutcome::default() };
        let (kind, details) = match &result {
            Ok(r) => {
                outcome.sequence = Some(r.sequence);
                outcome.full = r.full;
                outcome.blocks_read = r.blocks_read;
                outcome.new_blocks = r.new_blocks;
                outcome.bytes_shipped = r.bytes_shipped;
                outcome.warnings = r.warnings.clone();
                let d = json!({
                    "point": r.sequence, "full": r.full, "blocks_read": r.blocks_read, "new_blocks": r.new_blocks,
                    "bytes_shipped": r.bytes_shipped, "millis": r.millis, "late_ms": late_ms, "warnings": r.warnings,
                    "app_consistent": r.app_consistent, "root": r.root_id.to_string(),
                    "vault": vault.as_ref().map(|v| v.config().vault_id.to_string()).unwrap_or_default(),
                    // The dirty map was not relative to the vault's newest
                    // point (rolled back, re-pointed, another writer): the
                    // cycle verified the whole disk (invariant 8).
                    "chain_break": r.chain_break.as_ref().map(|b| b.describe(&self.name)),
                });
                ("cycle.committed", d)
            }
            Err(e) => {
                outcome.error = Some(crate::error_chain(e));
                ("cycle.failed", json!({ "error": crate::error_chain(e), "late_ms": late_ms }))
            }
        };
        // The cycle's outcome stands either way: a log that cannot be
        // appended to must not stop replication, but it must be seen.
        if let Err(e) = self.record(vault.as_ref().ok(), kind, details) {
            filter::log_line!("lifeboat: warning: {}: {e:#}", self.name);
        }
        if let Err(e) = status_file::record_cycle(&self.status_path, outcome) {
            filter::log_line!("lifeboat: warning: {}: could not record the cycle in its status file: {e:#}", self.name);
        }
        let report = result.with_context(|| format!("cycle of disk {:?}", self.name))?;
        Ok((report, vault.expect("a committed cycle had its vault")))
    }

    /// The hooks for an app-consistent cut, if the disk's VM asks for them
    /// and its newest app-consistent point is older than their interval.
    fn app_hooks(&self, vault: &Vault) -> Option<crate::app_hooks::Hooks> {
        let home = Home::new(self.home.clone());
        let vm = home.vm_of_disk(&self.name).ok().flatten()?;
        let app = vm.app_consistent.as_ref()?;
        let newest = vault
            .disk_points(&self.keys, &self.name, &self.disk_id)
            .ok()?
            .points
            .iter()
            .filter(|p| p.damage.is_none() && p.consistency == disk_format::Consistency::App)
            .map(|p| p.cut_time_ns)
            .max();
        let due = newest.is_none_or(|t| now_ns().saturating_sub(t) >= app.every_seconds.saturating_mul(1_000_000_000));
        if due {
            crate::app_hooks::Hooks::new(&vm.name, &self.name, app)
        } else {
            None
        }
    }

    /// The plaintext of the disk's VM definition, if it belongs to one.
    fn vm_definition_bytes(&self) -> Option<Vec<u8>> {
        let home = Home::new(self.home.clone());
        home.vm_of_disk(&self.name).ok().flatten().map(|vm| vm.to_toml().into_bytes())
    }

    /// The root extension of this cycle's point: the sealed definition of
    /// the VM the disk belongs to, if any, and the audit head.
    fn extension(&self, audit_head: Option<disk_format::AuditHead>) -> Result<Vec<u8>> {
        let home = Home::new(self.home.clone());
        let vm = home.vm_of_disk(&self.name)?;
        let ext = disk_format::RootExtension {
            vm_definition: vm.as_ref().map(|vm| vm.to_toml().into_bytes()),
            cut_group: None,
            audit_head,
        };
        ext.encode(&self.keys).with_context(|| format!("sealing the root extension of disk {:?}", self.name))
    }

    /// Where this key's audit log in the home stands, for the point's root
    /// to commit to (issue 12, hole 8). The log is copied to the vault first,
    /// so the vault holds every record the root names. `None` (with a
    /// warning; the point is still taken) if the log cannot be read.
    fn audit_head(&self, vault: &Vault) -> Option<disk_format::AuditHead> {
        let log = match audit::AuditLog::open(&self.audit_dir, &self.keys) {
            Ok(log) => log,
            Err(e) => {
                filter::log_line!(
                    "lifeboat: warning: {}: the point will not name the audit log's head: {e}",
                    self.name
                );
                return None;
            }
        };
        // A failed copy is retried by the next record; the head still goes in.
        let _ = log.sync_to(vault.backend());
        match log.head() {
            Ok(head) => head,
            Err(e) => {
                filter::log_line!(
                    "lifeboat: warning: {}: the point will not name the audit log's head: {e}",
                    self.name
                );
                None
            }
        }
    }

    /// Appends a record about this disk to the audit log of its key and
    /// copies the log to `vault` (the disk's vault, opened for the purpose if
    /// `None`; if it cannot be opened the copy waits for a later record).
    pub fn record(&self, vault: Option<&Vault>, kind: &str, mut details: serde_json::Value) -> Result<()> {
        // Every record about the disk names its newest committed point, so
        // a vault that lost it is seen from the log (issue 12, hole 8).
        let state = Home::new(self.home.clone()).disk(&self.name).map(|e| e.state_path());
        if let (Ok(path), Some(obj)) = (state, details.as_object_mut()) {
            if let Some(p) = filter::StateFile::header_of(&path).ok().and_then(|h| h.last_point) {
                obj.entry("newest_point").or_insert(json!({
                    "id": p.sequence, "root": p.root_id.to_string(), "vault": p.vault_id.to_string(),
                }));
            }
        }
        let opened;
        let vault = match vault {
            Some(v) => Some(v),
            None => {
                opened = self.open_vault().ok();
                opened.as_ref()
            }
        };
        crate::cmd::audit::record(&self.audit_dir, &self.keys, vault, kind, Some(&self.name), details)
    }
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
            filter::log_line!("lifeboat: warning: {msg}");
            return Some(msg);
        }
    };
    let msg = format!(
        "{}; the newest point listed is not the newest this host committed, so it lacks changes this host \
         shipped: do not fail over to it unless the newer points are truly gone",
        found.describe(disk)
    );
    filter::log_line!("lifeboat: WARNING: {msg}");
    Some(msg)
}
