//! The tamper-evident audit log.
//!
//! Every state-changing action (protect, a cycle committed or failed, prune,
//! garbage collection, restore, a use of the key, vault init; later failover
//! and plans) appends a record to an append-only, hash-chained log: one log
//! per customer key in the home, `HOME/audit/<fingerprint>.log`
//! ([`AuditLog`]), copied record for record to the vault
//! ([`AuditLog::sync_to`]). Each record is MAC'd with the key's audit subkey
//! over its bytes, including the MAC of the record before it, so
//! [`verify_log`] and [`verify_vault`] find any edited, dropped, reordered or
//! spliced record, and [`cross_check`] finds a home log that lost its tail.
//! [`record`] is what every action calls (append, then copy to the vault it
//! used); [`check`] checks a home's logs and their vault copies at once, for
//! `lifeboat audit verify`.
//! The byte format is specified in `disk-format/FORMAT.md` ("Audit log").
//!
//! ```no_run
//! # fn main() -> Result<(), audit::AuditError> {
//! # let keys = disk_format::MasterKey::from_bytes([1; 32]).keys();
//! # let backend = vault::LocalBackend::open(std::path::Path::new("/mnt/vault")).unwrap();
//! let log = audit::AuditLog::open(std::path::Path::new("/var/lib/lifeboat/audit"), &keys)?;
//! log.append(&audit::Event::new("cycle.committed", Some("web1"), serde_json::json!({ "point": 7 })))?;
//! log.sync_to(&backend)?; // may fail (vault away): the next sync copies what is missing
//! let report = audit::verify_log(log.path(), &keys)?;
//! assert!(report.is_ok());
//! # Ok(()) }
//! ```
//!
//! This crate owns the record format, the log file (locking, appends, torn
//! tail repair), the vault copy and verification. It must not hold the key
//! beyond a borrow, write anything but audit records and its sync state, or
//! put secrets in records: records are authenticated, **not encrypted**, and
//! the vault can read them.
#![deny(missing_docs)]
// Its lock (flock) is `system::lock`'s; the crate has no unsafe of its own.
#![forbid(unsafe_code)]

pub mod check;
pub mod error;
pub mod links;
pub mod log;
pub mod record;
pub mod recorder;
pub mod verify;

pub use check::{
    check, CallerError, CheckFailure, CheckPlan, CheckReport, Comparison, HomeLog, HomeView, KeyCheck, KeyToCheck,
    VaultCheck, VaultCopy,
};
pub use error::AuditError;
pub use links::{check_links, LinkReport};
pub use log::{copied_through, log_path, parse_segment_name, segment_name, Appended, AuditLog, Synced, SEGMENT_MAX};
pub use record::{Body, Event, LogId, Stamp};
pub use recorder::{record, CopyFailure, Recorded};
pub use verify::{
    cross_check, not_copied, read_records, scan_log, scan_vault, verify_home, verify_log, verify_vault, LogReport,
    Problem, ProblemKind, Record,
};
