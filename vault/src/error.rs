//! Errors of the vault.
//!
//! Policy: every error names the object (kind and name) or the path it is
//! about; a missing object is its own variant so callers can tell "not there"
//! from "could not read". Errors about a recovery point's data
//! ([`VaultError::Damaged`]) also name the point (`DISK/SEQUENCE`) and, where
//! there is one, the block index, and say what kind of damage it is, so a
//! caller can match on [`Damage`] and a user reads where to look.

use std::fmt;
use std::io;
use std::path::PathBuf;

use disk_format::VaultConfigError;

use crate::backend::Kind;

/// What is wrong with an object a point needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Damage {
    /// The object (a page, the pack holding a block) is not in the vault.
    Missing,
    /// The object's bytes are damaged: it does not parse, is truncated, or
    /// does not hash to its name.
    Corrupt,
    /// Authentication failed: a block's AEAD tag or id, or a root's MAC.
    Inauthentic,
    /// The object is valid but belongs elsewhere: a root stored under another
    /// disk's or point's name, a page for other blocks, a block of the wrong
    /// length.
    Misplaced,
}

impl fmt::Display for Damage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Damage::Missing => "missing",
            Damage::Corrupt => "damaged",
            Damage::Inauthentic => "not authentic",
            Damage::Misplaced => "misplaced",
        })
    }
}

fn block_part(block: &Option<u64>) -> String {
    block.map(|b| format!(", block {b}")).unwrap_or_default()
}

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
    /// A create-if-absent ([`crate::Backend::create`]) of an object that
    /// exists: nothing was written; the existing object is as it was.
    #[error("vault object {kind}/{name} already exists; it was left as it is and nothing was written")]
    AlreadyExists {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// A replace-if-unchanged ([`crate::Backend::replace_if`]) of an object
    /// another writer changed (or deleted) since it was read: nothing was
    /// written. Read it again and redo the change on what is there now.
    #[error(
        "vault object {kind}/{name} changed (or was deleted) since it was read, so it was not replaced: another \
         writer got there first; read it again and redo the change"
    )]
    Conflict {
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// A point's root that is already stored: another writer (a second host
    /// or process replicating the same disk chain) stored this point first.
    /// Roots are created, never overwritten; nothing was written.
    #[error(
        "vault {location} already holds point {sequence} of disk chain {disk}: another writer stored it first (is a \
         second host or process replicating this disk into the same vault?); it was not overwritten and this \
         point was not stored"
    )]
    PointExists {
        /// The disk (chain) name.
        disk: String,
        /// The point's sequence.
        sequence: u64,
        /// The backend's location.
        location: String,
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
    /// A vault this build (or this opener) cannot reach: a vault server
    /// without the client, for example.
    #[error("vault {location}: {why}")]
    Unsupported {
        /// The vault's location.
        location: String,
        /// Why, and what to do instead.
        why: String,
    },
    /// The backend holds no vault config: nothing was initialised there.
    #[error(
        "{location} is not a Lifeboat vault (it has no vault config); create one with `lifeboat vault init {location}`"
    )]
    NotAVault {
        /// The backend's location.
        location: String,
    },
    /// `init` on a backend that already holds a vault config.
    #[error("{location} is already a Lifeboat vault (it has a vault config); refusing to initialise it again")]
    AlreadyAVault {
        /// The backend's location.
        location: String,
    },
    /// `init` on a backend that holds vault objects but no config.
    #[error(
        "{location} holds {what} but no vault config; refusing to initialise over them (restore the config from a \
         copy, or use an empty location)"
    )]
    NotEmpty {
        /// The backend's location.
        location: String,
        /// What was found, e.g. "packs".
        what: &'static str,
    },
    /// `create` on a directory that holds files other than a vault's.
    #[error(
        "{} is not empty (it holds {entry:?}) and is not a Lifeboat vault; refusing to create a vault among other \
         files: give an empty or new directory",
        path.display()
    )]
    DirectoryNotEmpty {
        /// The directory.
        path: PathBuf,
        /// One entry that is not a vault's.
        entry: String,
    },
    /// The vault config is damaged.
    #[error("the vault config of {location} is unusable: {source}")]
    BadConfig {
        /// The backend's location.
        location: String,
        /// Why.
        #[source]
        source: VaultConfigError,
    },
    /// The key given is not the vault's key.
    #[error("vault {location}: {source}")]
    WrongKey {
        /// The backend's location.
        location: String,
        /// [`VaultConfigError::WrongKey`], naming both fingerprints.
        #[source]
        source: VaultConfigError,
    },
    /// The recovery point asked for does not exist.
    #[error(
        "disk {disk} has no recovery point {sequence} in vault {location} (list them with `lifeboat points {disk}`)"
    )]
    NoSuchPoint {
        /// The disk.
        disk: String,
        /// The sequence asked for.
        sequence: u64,
        /// The backend's location.
        location: String,
    },
    /// No disk of that name has points in the vault (or none that the key
    /// opens).
    #[error("vault {location} holds no points of a disk named {name:?}{detail}")]
    NoSuchDisk {
        /// The name asked for.
        name: String,
        /// The backend's location.
        location: String,
        /// What narrowed the search, or what else the vault holds.
        detail: String,
    },
    /// Several disks of one name (different identities: protected from two
    /// hosts, or protected anew) hold points, and nothing said which.
    #[error(
        "vault {location} holds {count} disks named {name:?}, each with its own points (protected from different \
         hosts, or protected anew); nothing says which one is meant, so nothing was done: {candidates}. Name one \
         with --disk-id ID, or --from-host HOST when their hosts differ"
    )]
    AmbiguousDisk {
        /// The name asked for.
        name: String,
        /// The backend's location.
        location: String,
        /// How many disks matched.
        count: usize,
        /// Each of them: identity, host, newest point.
        candidates: String,
    },
    /// An object a point needs is missing, damaged, not authentic or
    /// misplaced. Nothing read from it was returned or written as data; an
    /// image being restored is incomplete and should be deleted.
    #[error("point {point}{}: {object} is {damage}: {detail}", block_part(block))]
    Damaged {
        /// The point, as `DISK/SEQUENCE`.
        point: String,
        /// The block index in the disk, when one block is concerned.
        block: Option<u64>,
        /// The object, as `KIND/NAME` (e.g. `packs/ab12…`, `roots/web/000…07`).
        object: String,
        /// What kind of damage.
        damage: Damage,
        /// What was found, and what to do.
        detail: String,
    },
    /// A caller handed the vault an object that would make it invalid
    /// (nothing was stored).
    #[error("refusing to store {object}: {detail}")]
    Invalid {
        /// The object, as `KIND/NAME`.
        object: String,
        /// What is wrong with it.
        detail: String,
    },
    /// Another process holds a lease that this action must wait for (a
    /// cycle and a garbage collection exclude each other).
    #[error("vault {location}: {action} cannot run now: {lease} is in progress; {next}")]
    Busy {
        /// The backend's location.
        location: String,
        /// What was refused.
        action: String,
        /// The lease in the way: its name, purpose and holder.
        lease: String,
        /// What to do.
        next: String,
    },
    /// Garbage collection cannot tell what is referenced: it deleted nothing.
    #[error("garbage collection of {location} deleted nothing: {object} {detail}")]
    GcUnsafe {
        /// The backend's location.
        location: String,
        /// The object in question, as `KIND/NAME`.
        object: String,
        /// What is wrong, and what to do.
        detail: String,
    },
    /// The store refused the request: this host has no right to it (a vault
    /// server: see "Rights" in FORMAT.md, or its certificate was revoked; a
    /// cloud store: its credentials may not do that).
    #[error("vault {location} refused {request}: {why}")]
    Refused {
        /// The vault's URL.
        location: String,
        /// The request, e.g. "deleting packs/ab12…".
        request: String,
        /// Why, and what to do.
        why: String,
    },
    /// The vault server could not be reached or spoke no Lifeboat protocol
    /// (a TLS failure, a broken connection); `source` is the typed cause
    /// (`site::tls::TlsError` for a TLS failure).
    #[error("cannot reach the vault server at {location}: {source}")]
    Unreachable {
        /// The vault's URL.
        location: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store keeps the object under a lock or an immutability policy
    /// (an immutable vault, see `crate::immutability`): it cannot be deleted
    /// before the lock ends. Garbage collection keeps such objects and
    /// collects them once their lock has ended.
    #[error(
        "vault {location} keeps {kind}/{name} under a lock or immutability policy: it cannot be deleted before that \
         ends"
    )]
    Locked {
        /// The vault's URL.
        location: String,
        /// Its kind.
        kind: Kind,
        /// Its name.
        name: String,
    },
    /// A cloud store (S3, Azure Blob) failed a request with an error the
    /// contract has no kind for, or could not be reached, after its
    /// client's own retries; `source` is the client's error (it never holds
    /// a credential).
    #[error("the cloud store of vault {location} failed: {source}")]
    Cloud {
        /// The vault's URL.
        location: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Writing the restored image failed.
    #[error("writing the restored image ({what}): {source}")]
    Output {
        /// What was being done, e.g. "writing block 7 at byte 458752".
        what: String,
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
