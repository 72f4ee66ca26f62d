//! Errors of the vault.
//!
//! Policy: every error names the object (kind and name) or the path it is
//! about; a missing object is its own variant so callers can tell "not there"
//! from "could not read".

use std::io;
use std::path::PathBuf;

use crate::backend::Kind;

/// What went wrong in the vault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VaultError {
    /// The object does not exist.
    #[error("vault object {kind}/{name} does not exist")]
    NotFound {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// An object name that could escape the vault or is not allowed.
    #[error("invalid vault object name {name:?}: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A read of a byte range past the object's end.
    #[error("vault object {kind}/{name} is {size} bytes; bytes {offset}..{end} are past its end (truncated?)")]
    ShortObject {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
        /// Its size.
        size: u64,
        /// Start of the range asked for.
        offset: u64,
        /// End of the range asked for.
        end: u64,
    },
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
}

impl VaultError {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> VaultError {
        let path = path.into();
        move |source| VaultError::Io { what, path, source }
    }
}
