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
pub use target::{chain, CycleError, Target};

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
) -> Result<(), audit::AuditError> {
    let r = audit::record(dir, keys, vault, &audit::Event::new(kind, disk, details))?;
    if let (Some(v), Some(Err(e))) = (vault, r.copy) {
        tracing::info!(
            "lifeboat: warning: the audit record is kept in {} but could not be copied to the vault {}: {}; the \
             next record retries",
            r.log.display(),
            v.backend().location(),
            chain(&e)
        );
    }
    Ok(())
}
