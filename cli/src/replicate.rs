//! One protected disk's replication target (key + vault + settings) and the
//! cycle runner that `lifeboat ship --once` and the agent share: it runs the
//! cycle and records its outcome in the disk's status file.

use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

use anyhow::Result;
use disk_format::keys::Keys;
use shipper::{run_cycle, CutSource, CycleOptions, CycleReport, Progress, ShipError};
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
    pub vault: Vault,
    pub status_path: PathBuf,
}

impl Target {
    /// Loads the disk's settings and key and opens its vault (checking the key against it).
    pub fn load(home: &Home, name: &str) -> Result<(DiskEntry, Target)> {
        let entry = home.disk(name)?;
        let settings = entry.replication(name)?.clone();
        let keys = keyfile::load(&settings.key)?;
        let vault = crate::cmd::vault::open(&settings.vault)?;
        vault.check_key(&keys)?;
        let target = Target {
            name: name.to_string(),
            disk_id: entry.disk_id()?,
            status_path: entry.status_path(),
            settings,
            keys,
            vault,
        };
        Ok((entry, target))
    }

    /// Runs one cycle and records its outcome (committed or failed) in the
    /// status file. `late_ms`: how late the cycle starts against its schedule.
    pub fn cycle(
        &self,
        source: &mut dyn CutSource,
        cancel: Option<&AtomicBool>,
        late_ms: u64,
        progress: &mut dyn Progress,
    ) -> Result<CycleReport, ShipError> {
        let started_ns = now_ns();
        let opts = CycleOptions { cancel, ..CycleOptions::new(&self.name, self.disk_id) };
        let result = run_cycle(source, &self.vault, &self.keys, &opts, progress);
        let mut outcome = CycleOutcome { started_ns, ended_ns: now_ns(), late_ms, ..CycleOutcome::default() };
        match &result {
            Ok(r) => {
                outcome.sequence = Some(r.sequence);
                outcome.full = r.full;
                outcome.blocks_read = r.blocks_read;
                outcome.new_blocks = r.new_blocks;
                outcome.bytes_shipped = r.bytes_shipped;
                outcome.warnings = r.warnings.clone();
            }
            Err(e) => outcome.error = Some(e.to_string()),
        }
        if let Err(e) = status_file::record_cycle(&self.status_path, outcome) {
            eprintln!("lifeboat: warning: {}: could not record the cycle in its status file: {e:#}", self.name);
        }
        result
    }
}
