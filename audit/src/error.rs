//! Errors of the audit log.
//!
//! Policy: an [`AuditError`] means an operation could not be done (append,
//! copy to the vault, read a log at all); every one names the file or vault
//! object, and where it is about a record, its seq and byte offset, and says
//! what to do. Damage found by *verification* is not an error but a
//! [`crate::Problem`] in a report, so one run can list everything it found.

use std::io;
use std::path::PathBuf;

use disk_format::KeyFingerprint;
use vault::VaultError;

/// Why the audit log could not be appended to, copied or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An I/O error on a path.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The log was written with another key.
    #[error(
        "audit log {place} was written with the key whose fingerprint is {log_fingerprint}, not with the key given \
         ({key_fingerprint}); use that key file (or its first record's fingerprint was edited: run `lifeboat audit \
         verify`)"
    )]
    WrongKey {
        /// The log file or vault object.
        place: String,
        /// The fingerprint its first record carries.
        log_fingerprint: KeyFingerprint,
        /// The fingerprint of the key given.
        key_fingerprint: KeyFingerprint,
    },
    /// The log's last record (or a record to be copied) is damaged or forged;
    /// nothing was appended or copied, so nothing is chained onto it.
    #[error(
        "audit log {}: {} at byte {offset}: {detail}; nothing was written. Run `lifeboat audit verify`, keep the \
         damaged log as evidence (move it aside: the next record then starts a new log) and compare it with the \
         vault's copy",
        path.display(),
        seq.map_or_else(|| "the record".to_string(), |s| format!("record {s}"))
    )]
    Damaged {
        /// The log file.
        path: PathBuf,
        /// Byte offset of the bad record in the file.
        offset: u64,
        /// Its seq, if its header could be read.
        seq: Option<u64>,
        /// What is wrong.
        detail: String,
    },
    /// An action could not be recorded: appending its record to the log
    /// failed (the action must not pass unrecorded).
    #[error("recording `{kind}` in the audit log {}", path.display())]
    Record {
        /// The event's kind.
        kind: String,
        /// The log file.
        path: PathBuf,
        /// Why the append failed.
        #[source]
        source: Box<AuditError>,
    },
    /// The event cannot be recorded (bad kind, disk name or details).
    #[error("cannot record the event: {0}")]
    BadEvent(String),
    /// The operating system's random source failed (no log id).
    #[error("the operating system's random source failed: {0}")]
    Random(String),
    /// The vault refused or failed an operation.
    #[error("{what}: {source}")]
    Vault {
        /// What was being done, naming the vault and object.
        what: String,
        /// The vault's error (boxed: it is large, and rare).
        #[source]
        source: Box<VaultError>,
    },
    /// The vault holds more records of this log than the home: the home's
    /// log lost records (truncated or replaced).
    #[error(
        "the vault {location} holds records of audit log {} up to seq {vault_last}, but the log ends at seq \
         {home_last}: records were removed from the home's log; run `lifeboat audit verify` and keep both copies as \
         evidence",
        path.display()
    )]
    VaultAhead {
        /// The home's log file.
        path: PathBuf,
        /// The vault's location.
        location: String,
        /// The last seq the vault holds.
        vault_last: u64,
        /// The last seq of the home's log.
        home_last: u64,
    },
}

impl AuditError {
    /// A closure making an [`AuditError::Vault`] saying `what`, for `map_err`.
    pub(crate) fn vault(what: String) -> impl FnOnce(VaultError) -> AuditError {
        move |source| AuditError::Vault { what, source: Box::new(source) }
    }

    /// A closure making an [`AuditError::Io`] about `path`, for `map_err`.
    pub(crate) fn io(what: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> AuditError {
        let path = path.to_owned();
        move |source| AuditError::Io { what, path, source }
    }
}
