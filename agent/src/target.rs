//! One protected disk's replication target (key, vault, schedule and where
//! its records go) and the cycle runner that `lifeboat ship --once` and the
//! agent share: it sets up each cycle (vault, quiescing, the sealed root
//! extension, the audit head), runs it, and records its outcome in the
//! disk's status file and the audit log.
//!
//! The vault is opened for each cycle, not once: a vault that is unreachable
//! when the agent starts (or goes away and comes back) only fails the cycles
//! that meet it, while the disk keeps being served and its changes recorded.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use disk_format::keys::Keys;
use serde_json::json;
use shipper::{run_cycle, CutHook, CutSource, CycleOptions, CycleReport, Progress, ShipError};
use vault::counting::{Counting, RequestCount};
use vault::{Location, Opener, Vault, VaultError};

use crate::round::{HoldWrites, Member, Round, Sealed};
use crate::status::{self, CycleOutcome};

/// Everything a cycle of one disk needs besides its source.
pub struct Target {
    /// The disk's name.
    pub name: String,
    /// The disk's identity.
    pub disk_id: [u8; 16],
    /// Where the disk's vault is.
    pub vault: Location,
    /// How vaults are opened (the binary's, which reaches vault servers too).
    pub opener: Arc<dyn Opener>,
    /// The cycle interval (the RPO target).
    pub rpo: Duration,
    /// The retention ladder applied after each committed cycle.
    pub retention: vault::retention::Policy,
    /// The customer's keys.
    pub keys: Keys,
    /// The disk's `status.json`.
    pub status_path: PathBuf,
    /// The disk's state file (its newest committed point is named in every
    /// audit record about the disk).
    pub state_path: PathBuf,
    /// The home's audit log directory.
    pub audit_dir: PathBuf,
    /// The home's VM definitions (read again every cycle, so a redefined VM
    /// travels with the next point).
    pub vms_dir: PathBuf,
    /// The bandwidth limit (`--bandwidth`): the link's limiter, shared with
    /// the other disks of the agent, and this disk's time waited on it.
    pub throttle: Option<vault::throttle::Throttle>,
    /// The home's index caches (`HOME/cache/index`, see
    /// `vault::index_cache`); `None`: every cycle rebuilds the vault's index.
    pub index_cache: Option<PathBuf>,
    /// The index cache kept in memory from one cycle to the next (loading
    /// it is the one cost of a cycle that grows with the vault).
    pub warm_index: vault::index_cache::WarmIndex,
    /// The home's copies of its disks' newest map pages (`HOME/cache/pages`,
    /// see `shipper::CycleOptions::page_cache`); `None`: every incremental
    /// cycle reads the pages it builds on from the vault.
    pub page_cache: Option<PathBuf>,
    /// Set once the vault's store refused this host a delete (pruning or
    /// collecting): its credentials may not delete, as a protected host's
    /// least-privilege credentials should not. Retention and collection
    /// then run elsewhere, and the agent stops trying them.
    pub deletes_refused: std::sync::atomic::AtomicBool,
    /// Compress blocks before sealing (disk.toml `compress`, on by default).
    pub compress: bool,
}

/// Why a cycle did not commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CycleError {
    /// The vault could not be opened, or does not take this key.
    #[error("vault {location}: {source}")]
    Vault {
        /// Where the vault is.
        location: Location,
        /// Why.
        #[source]
        source: Box<VaultError>,
    },
    /// The disk's VM definition could not be read.
    #[error("{0}")]
    VmDefinition(#[from] recovery::RecoveryError),
    /// The root extension could not be sealed.
    #[error("sealing the root extension of disk {disk:?}: {source}")]
    Extension {
        /// The disk.
        disk: String,
        /// Why.
        #[source]
        source: disk_format::root_ext::ExtError,
    },
    /// The cycle itself failed (or was cancelled: [`CycleError::cancelled`]).
    #[error(transparent)]
    Ship(#[from] ShipError),
}

impl CycleError {
    /// Whether the cycle was cancelled (the agent is stopping) rather than failed.
    pub fn cancelled(&self) -> bool {
        matches!(self, CycleError::Ship(ShipError::Cancelled))
    }
}

/// This disk's part in a group cut.
pub struct GroupPart<'a> {
    /// The round.
    pub round: &'a Round<'a>,
    /// The disk whose writes are held at the cut.
    pub disk: &'a dyn HoldWrites,
    /// Whether this disk runs its VM's quiescing.
    pub runs_app: bool,
}

/// An error's message with its causes, `a: b: c`, each said once.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What a bandwidth limit did to one cycle.
struct Throttled {
    /// Time the cycle's transfers waited for the limit.
    waited: Duration,
    /// The limit in force when the cycle ended.
    limit: String,
}

impl Target {
    /// Opens the disk's vault and checks that it takes this key.
    pub fn open_vault(&self) -> Result<Vault, CycleError> {
        self.open_counted().map(|(vault, _)| vault)
    }

    /// Opens the disk's vault like [`Target::open_vault`], counting its
    /// backend requests from here on (requests the limiter delays count
    /// once, like any other).
    fn open_counted(&self) -> Result<(Vault, Arc<RequestCount>), CycleError> {
        let fail = |source| CycleError::Vault { location: self.vault.clone(), source: Box::new(source) };
        let mut backend: Box<dyn vault::Backend> = self.opener.open(&self.vault).map_err(fail)?;
        if let Some(t) = &self.throttle {
            backend = t.wrap(backend);
        }
        let backend = Counting::new(backend);
        let count = backend.count();
        let vault = Vault::open(Box::new(backend)).map_err(fail)?;
        vault.check_key(&self.keys).map_err(fail)?;
        Ok((vault, count))
    }

    /// Runs one cycle and records its outcome (committed or failed) in the
    /// status file and the audit log. `late_ms`: how late the cycle starts
    /// against its schedule. Returns the report and the open vault.
    pub fn cycle(
        &self,
        source: &mut dyn CutSource,
        cancel: Option<&AtomicBool>,
        late_ms: u64,
        progress: &mut dyn Progress,
        group: Option<GroupPart<'_>>,
    ) -> Result<(CycleReport, Vault), CycleError> {
        let started_ns = system::clock::now_ns();
        let waited_before = self.throttle.as_ref().map(|t| t.waited.get());
        let (vault, count) = match self.open_counted() {
            Ok((v, c)) => (Ok(v), Some(c)),
            Err(e) => (Err(e), None),
        };
        let vm = recovery::VmDefinition::of_disk(&self.vms_dir, &self.name);
        let mut hooks = match (&vault, &vm) {
            (Ok(v), Ok(Some(vm))) => self.app_hooks(v, vm),
            _ => None,
        };
        let definition = vm.as_ref().ok().and_then(|vm| vm.as_ref().map(|vm| vm.to_toml().into_bytes()));
        let audit_head = vault.as_ref().ok().and_then(|v| self.audit_head(v));
        let extension = self.extension(definition.clone(), audit_head);
        // In a group cut, the member hook runs the app hooks (if this disk
        // carries them) and adds the group's id to the root.
        let member = match (group, &extension) {
            (Some(g), Ok(_)) => {
                let app = if g.runs_app { hooks.take().map(|h| Box::new(h) as Box<dyn CutHook>) } else { None };
                let sealed = Sealed { definition, audit_head, keys: &self.keys };
                Some(Member::new(g.round, g.disk, &self.name, app, sealed))
            }
            _ => None,
        };
        let hook: Option<&dyn CutHook> = match &member {
            Some(m) => Some(m),
            None => hooks.as_ref().map(|h| h as &dyn CutHook),
        };
        let result = match (vault, vm, extension) {
            (Ok(v), Ok(_), Ok(extension)) => {
                let opts = CycleOptions {
                    cancel,
                    extension: &extension,
                    cut_hook: hook,
                    index_cache: self.index_cache.as_deref(),
                    warm_index: Some(&self.warm_index),
                    page_cache: self.page_cache.as_deref(),
                    compress: self.compress,
                    ..CycleOptions::new(&self.name, self.disk_id)
                };
                let requests = || count.as_ref().map(|c| c.get().total);
                run_cycle(source, &v, &self.keys, &opts, progress)
                    .map(|r| (CycleReport { requests: requests(), ..r }, v))
                    .map_err(CycleError::from)
            }
            (Err(e), _, _) => Err(e),
            (_, Err(e), _) => Err(e.into()),
            (_, _, Err(e)) => Err(e),
        };
        drop(member);
        let throttled = self.throttle.as_ref().zip(waited_before).map(|(t, before)| Throttled {
            waited: t.waited.get().saturating_sub(before),
            limit: t.limiter.rate_now().map_or_else(|| "unlimited".to_string(), |r| r.to_string()),
        });
        self.record_outcome(started_ns, late_ms, throttled, &result, count.as_deref());
        // The count goes on to the outcome's audit record and its copy to
        // the vault: what the cycle cost the vault, all of it.
        let total = count.map(|c| c.get().total);
        result.map(|(r, v)| (CycleReport { requests: total.or(r.requests), ..r }, v))
    }

    /// Records a cycle's outcome in the status file and the audit log. The
    /// outcome stands either way: a log that cannot be appended to must not
    /// stop replication, but it must be seen. The status's request count is
    /// `count`'s after the audit record was copied to the vault (the
    /// record's own figure cannot include its copy).
    fn record_outcome(
        &self,
        started_ns: u64,
        late_ms: u64,
        throttled: Option<Throttled>,
        result: &Result<(CycleReport, Vault), CycleError>,
        count: Option<&RequestCount>,
    ) {
        let mut outcome =
            CycleOutcome { started_ns, ended_ns: system::clock::now_ns(), late_ms, ..CycleOutcome::default() };
        if let Some(t) = throttled {
            outcome.throttled_ms = u64::try_from(t.waited.as_millis()).unwrap_or(u64::MAX);
            outcome.bandwidth_limit = Some(t.limit);
        }
        let (kind, details, vault) = match result {
            Ok((r, vault)) => {
                outcome.sequence = Some(r.sequence);
                outcome.full = r.full;
                outcome.blocks_read = r.blocks_read;
                outcome.new_blocks = r.new_blocks;
                outcome.bytes_shipped = r.bytes_shipped;
                outcome.requests = r.requests;
                outcome.warnings = r.warnings.clone();
                let d = json!({
                    "point": r.sequence, "full": r.full, "blocks_read": r.blocks_read, "new_blocks": r.new_blocks,
                    "bytes_shipped": r.bytes_shipped, "requests": r.requests, "millis": r.millis, "late_ms": late_ms,
                    "warnings": r.warnings,
                    "app_consistent": r.app_consistent, "root": r.root_id.to_string(),
                    "vault": vault.config().vault_id.to_string(),
                    // The dirty map was not relative to the vault's newest
                    // point (rolled back, re-pointed, another writer): the
                    // cycle verified the whole disk (invariant 8).
                    "chain_break": r.chain_break.as_ref().map(|b| b.describe(&self.name)),
                });
                ("cycle.committed", d, Some(vault))
            }
            Err(e) => {
                outcome.error = Some(chain(e));
                ("cycle.failed", json!({ "error": chain(e), "late_ms": late_ms }), None)
            }
        };
        if let Err(e) = self.record(vault, kind, details) {
            tracing::warn!("lifeboat: warning: {}: {}", self.name, chain(&e));
        }
        if outcome.requests.is_some() {
            outcome.requests = count.map(|c| c.get().total);
        }
        if let Err(e) = status::record_cycle(&self.status_path, outcome) {
            tracing::warn!(
                "lifeboat: warning: {}: could not record the cycle in its status file: {}",
                self.name,
                chain(&e)
            );
        }
    }

    /// The hooks for an app-consistent cut, if the disk's VM asks for them
    /// and its newest app-consistent point is older than their interval.
    fn app_hooks(&self, vault: &Vault, vm: &recovery::VmDefinition) -> Option<crate::quiesce::Hooks> {
        let app = vm.app_consistent.as_ref()?;
        let newest = vault
            .disk_points(&self.keys, &self.name, &self.disk_id)
            .ok()?
            .points
            .iter()
            .filter(|p| p.damage.is_none() && p.consistency == disk_format::Consistency::App)
            .map(|p| p.cut_time_ns)
            .max();
        let now = system::clock::now_ns();
        let due = newest.is_none_or(|t| now.saturating_sub(t) >= app.every_seconds.saturating_mul(1_000_000_000));
        if due {
            crate::quiesce::Hooks::new(&vm.name, &self.name, app)
        } else {
            None
        }
    }

    /// The root extension of this cycle's point: the sealed definition of
    /// the VM the disk belongs to, if any, and the audit head.
    fn extension(
        &self,
        vm_definition: Option<Vec<u8>>,
        audit_head: Option<disk_format::AuditHead>,
    ) -> Result<Vec<u8>, CycleError> {
        let ext = disk_format::RootExtension { vm_definition, audit_head, ..Default::default() };
        ext.encode(&self.keys).map_err(|source| CycleError::Extension { disk: self.name.clone(), source })
    }

    /// Where this key's audit log in the home stands, for the point's root
    /// to commit to (issue 12, hole 8). The log is copied to the vault first,
    /// so the vault holds every record the root names. `None` (with a
    /// warning; the point is still taken) if the log cannot be read.
    fn audit_head(&self, vault: &Vault) -> Option<disk_format::AuditHead> {
        let head = audit::AuditLog::open(&self.audit_dir, &self.keys).and_then(|log| {
            // A failed copy is retried by the next record; the head still goes in.
            let _ = log.sync_to(vault.backend());
            log.head()
        });
        match head {
            Ok(head) => head,
            Err(e) => {
                tracing::warn!("lifeboat: warning: {}: the point will not name the audit log's head: {e}", self.name);
                None
            }
        }
    }

    /// Appends a record about this disk to the audit log of its key and
    /// copies the log to `vault` (the disk's vault, opened for the purpose if
    /// `None`; if it cannot be opened the copy waits for a later record).
    pub fn record(
        &self,
        vault: Option<&Vault>,
        kind: &str,
        mut details: serde_json::Value,
    ) -> Result<(), audit::AuditError> {
        // Every record about the disk names its newest committed point, so
        // a vault that lost it is seen from the log (issue 12, hole 8).
        if let Some(obj) = details.as_object_mut() {
            if let Some(p) = filter::StateFile::header_of(&self.state_path).ok().and_then(|h| h.last_point) {
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
        crate::audit_record(&self.audit_dir, &self.keys, vault, kind, Some(&self.name), details)
    }
}
