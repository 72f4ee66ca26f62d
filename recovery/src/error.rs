//! Errors of the recovery crate.
//!
//! Policy: every message names the VM (and the disk, point or file) and says
//! what the user can do next; the kinds are matchable so the CLI can choose
//! an exit status and tests can tell a refusal from a failure.

use std::path::PathBuf;

use vault::VaultError;

/// What went wrong in a failover.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RecoveryError {
    /// A VM definition is invalid.
    #[error("VM definition {what}: {why}")]
    Definition {
        /// Which definition (VM name or file).
        what: String,
        /// What is wrong and how to fix it.
        why: String,
    },
    /// The VM, or a point of it, cannot be found in the vault.
    #[error("{0}")]
    NotFound(String),
    /// The failover cannot go on as asked (another one is active, it was
    /// committed, ...): nothing was changed.
    #[error("{0}")]
    Refused(String),
    /// Launching or stopping QEMU failed.
    #[error("{0}")]
    Qemu(String),
    /// A file of the failover's state could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The vault refused or failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

impl RecoveryError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> RecoveryError {
        RecoveryError::Io { what, path: path.to_path_buf(), source }
    }
}
