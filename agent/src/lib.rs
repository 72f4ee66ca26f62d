//! Lifeboat's agent runtime: what the protected host does on its own
//! between a user's commands.
//!
//! This crate owns the cycle scheduler with an injected clock
//! ([`schedule`], [`clock`]), the per-cycle target set-up and outcome
//! records ([`target`]), retention and garbage-collection cadence with the
//! trash emptied beside the cycles ([`runtime`]), consistency-group rounds
//! ([`round`]), quiescing through the QEMU guest agent or the user's hooks
//! ([`quiesce`]), and the status file ([`status`]).
//!
//! It must not parse command lines, print for a user, or decide exit codes
//! (the `lifeboat` binary does), and it does no system calls of its own
//! (the `system` crate does). It builds on `shipper` for the cycle itself,
//! `vault` for retention and collection, `recovery` for VM definitions, the
//! trust rules and the JSON-lines client, and `audit` for records.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod clock;
pub mod quiesce;
pub mod round;
pub mod runtime;
pub mod schedule;
pub mod status;
pub mod target;

pub use clock::{Clock, Stop, SystemClock};
pub use target::{chain, CycleError, RecordError, Target};

use std::path::Path;

use disk_format::keys::Keys;

/// Records an action in the audit log of `keys` in `dir` (the home's
/// `audit/`) and copies the log to `vault` (if given). A failed append is an
/// error (the action must not pass unrecorded); a failed copy is a warning,
/// retried by the next record. Never put a secret in `details`: records are
/// not encrypted.
pub fn audit_record(
    dir: &Path,
    keys: &Keys,
    vault: Option<&vault::Vault>,
    kind: &str,
    disk: Option<&str>,
    details: serde_json::Value,
) -> Result<(), RecordError> {
    let fail = |source| RecordError { kind: kind.to_string(), dir: dir.to_path_buf(), source };
    let log = audit::AuditLog::open(dir, keys).map_err(fail)?;
    log.append(&audit::Event::new(kind, disk, details)).map_err(fail)?;
    if let Some(v) = vault {
        let copied = if v.config().key_fingerprint != keys.fingerprint() {
            Err(format!("the vault belongs to key {}", v.config().key_fingerprint))
        } else {
            log.sync_to(v.backend()).map(|_| ()).map_err(|e| chain(&e))
        };
        if let Err(e) = copied {
            filter::log_line!(
                "lifeboat: warning: the audit record is kept in {} but could not be copied to the vault {}: {e}; \
                 the next record retries",
                log.path().display(),
                v.backend().location()
            );
        }
    }
    Ok(())
}
