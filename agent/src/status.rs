//! `HOME/disks/NAME/status.json`: the outcome of a disk's latest cycles, as
//! written by whoever ran them (the agent or `lifeboat ship --once`) and read
//! by `lifeboat status`. Replaced atomically; a missing or unreadable file
//! only means "no cycle recorded here yet".

use std::path::Path;

use serde::{Deserialize, Serialize};

/// The status file could not be written.
#[derive(Debug, thiserror::Error)]
#[error("writing {}: {source}", path.display())]
pub struct StatusError {
    /// The status file.
    pub path: std::path::PathBuf,
    /// Why.
    #[source]
    pub source: std::io::Error,
}

/// What `status.json` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct DiskStatus {
    /// The agent process replicating the disk, while it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_pid: Option<u32>,
    /// When the agent plans the next cycle (ns since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cycle_ns: Option<u64>,
    /// The latest cycle, committed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_cycle: Option<CycleOutcome>,
    /// The latest committed cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_success: Option<CycleOutcome>,
    /// Failed cycles since the last committed one.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Log lines the agent (or `lifeboat filter`) serving the disk could not
    /// write to its stderr (full, or a pipe nobody reads): dropped, not fatal.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_lines_dropped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One cycle's outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CycleOutcome {
    /// When the cycle started and ended (ns since the epoch).
    pub started_ns: u64,
    /// See `started_ns`.
    pub ended_ns: u64,
    /// How late it started against its schedule (a slow cycle before it, or
    /// a busy vault), milliseconds; 0 for cycles run by hand.
    #[serde(default)]
    pub late_ms: u64,
    /// The committed point, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequence: Option<u64>,
    /// A full sync (every block read), not an incremental.
    #[serde(default)]
    pub full: bool,
    /// Blocks the cycle read.
    #[serde(default)]
    pub blocks_read: u64,
    /// Blocks the vault did not hold yet.
    #[serde(default)]
    pub new_blocks: u64,
    /// Bytes written to the vault.
    #[serde(default)]
    pub bytes_shipped: u64,
    /// Requests the cycle made to the vault's store (its cost on a cloud
    /// vault: it grows with what changed, not with the vault).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// Time the cycle waited for the bandwidth limit, milliseconds: a cycle
    /// late or slow *because of* `--bandwidth` says so in `status`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub throttled_ms: u64,
    /// The bandwidth limit in force (`--bandwidth`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<String>,
    /// Why the cycle failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Warnings of a committed cycle.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Reads the status, or the default if there is none (or it is unreadable:
/// it is advisory, and the next cycle rewrites it).
pub fn read(path: &Path) -> DiskStatus {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or_default()
}

/// Replaces the status atomically, not durably
/// (`system::file::replace_unsynced`): it summarises what the vault and the
/// state file keep durably, [`read`] takes an unreadable file for a fresh
/// status, and a cycle does not wait for two device flushes to say so.
pub fn write(path: &Path, status: &DiskStatus) -> Result<(), StatusError> {
    let bytes = serde_json::to_vec_pretty(status).map_err(std::io::Error::from);
    bytes
        .and_then(|b| system::file::replace_unsynced(path, &b))
        .map_err(|source| StatusError { path: path.to_path_buf(), source })
}

/// Reads, changes and writes the status.
pub fn update(path: &Path, f: impl FnOnce(&mut DiskStatus)) -> Result<(), StatusError> {
    let mut s = read(path);
    f(&mut s);
    write(path, &s)
}

/// Records how many log lines this process has dropped so far
/// ([`filter::log::dropped`]), if the file says otherwise: `lifeboat filter`
/// calls it when it starts and stops, so a disk only ever served has no
/// status file unless a line was lost.
pub fn record_log_drops(path: &Path) -> Result<(), StatusError> {
    let dropped = filter::log::dropped();
    if read(path).log_lines_dropped == dropped {
        return Ok(());
    }
    update(path, |s| s.log_lines_dropped = dropped)
}

/// Records a cycle's outcome.
pub fn record_cycle(path: &Path, outcome: CycleOutcome) -> Result<(), StatusError> {
    update(path, |s| {
        if outcome.error.is_none() {
            s.consecutive_failures = 0;
            s.last_success = Some(outcome.clone());
        } else {
            s.consecutive_failures += 1;
        }
        s.last_cycle = Some(outcome);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(error: Option<&str>) -> CycleOutcome {
        CycleOutcome { started_ns: 1, ended_ns: 2, error: error.map(str::to_string), ..CycleOutcome::default() }
    }

    #[test]
    fn failures_count_up_until_a_commit_and_the_last_success_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert_eq!(read(&path).consecutive_failures, 0, "no file: nothing recorded yet");
        record_cycle(&path, CycleOutcome { sequence: Some(4), ..outcome(None) }).unwrap();
        record_cycle(&path, outcome(Some("vault gone"))).unwrap();
        record_cycle(&path, outcome(Some("vault gone"))).unwrap();
        let s = read(&path);
        assert_eq!(s.consecutive_failures, 2);
        assert_eq!(s.last_success.as_ref().and_then(|o| o.sequence), Some(4), "a failure keeps the last success");
        assert_eq!(s.last_cycle.as_ref().and_then(|o| o.error.as_deref()), Some("vault gone"));
        record_cycle(&path, CycleOutcome { sequence: Some(5), ..outcome(None) }).unwrap();
        assert_eq!(read(&path).consecutive_failures, 0);
    }

    #[test]
    fn an_unreadable_file_reads_as_nothing_recorded_and_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        std::fs::write(&path, b"{ torn").unwrap();
        assert_eq!(read(&path).last_cycle, None);
        update(&path, |s| s.agent_pid = Some(42)).unwrap();
        assert_eq!(read(&path).agent_pid, Some(42));
    }

    #[test]
    fn a_status_that_cannot_be_written_names_the_file() {
        let e = write(Path::new("/nonexistent/dir/status.json"), &DiskStatus::default()).unwrap_err();
        assert!(e.to_string().starts_with("writing /nonexistent/dir/status.json: "), "{e}");
    }
}
