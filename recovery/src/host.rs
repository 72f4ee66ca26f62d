//! What only the host that protects disks can do, as the failback and
//! planned-failover orchestration sees it.
//!
//! The orchestration ([`crate::failback`], [`crate::planned`]) owns the
//! order of the steps, their checks, the waits, the decisions and the audit
//! details. The protecting host owns its home: which disks it protects and
//! where their images are, protecting a disk, running a replication cycle,
//! opening a key and a vault, and its audit log. That half is this trait,
//! implemented by the binary (and by a fake in the tests), so that this
//! crate never depends on the home's layout or on the shipper.

use std::path::{Path, PathBuf};

use disk_format::keys::Keys;
use serde_json::Value;
use vault::{Location, Vault};

use crate::vmdef::VmDefinition;

/// An error of the host side, passed through untouched (its message already
/// names the disk or file and what to do; its causes stay in its chain).
pub type HostError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A disk this host protects, as the orchestration needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDisk {
    /// The image the disk's filter serves (the VM's disk).
    pub image: PathBuf,
    /// The marker that says a failback is half done on the image (the agent,
    /// filter and cycles refuse the disk while it exists).
    pub failback_marker: PathBuf,
}

/// Start protecting a disk, or start its state over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtectRequest<'a> {
    /// The disk's name.
    pub disk: &'a str,
    /// Its image.
    pub image: &'a Path,
    /// Replicate to this vault with this key file (`(vault, key)`).
    pub replicate_to: Option<(&'a Location, &'a Path)>,
    /// Replace the state file with one that marks every block to verify
    /// (the disk keeps its identity and settings).
    pub reset_state: bool,
}

/// What one replication cycle shipped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shipped {
    /// The point it committed.
    pub sequence: u64,
    /// Blocks it read.
    pub blocks_read: u64,
    /// Blocks the vault did not hold yet.
    pub new_blocks: u64,
    /// Bytes it sent.
    pub bytes_shipped: u64,
}

/// The protecting host's half of failback and of a planned failover's source
/// side (see the module documentation).
pub trait HostSide {
    /// Held while a disk's state must not change (its state file's lock).
    type Lock;

    /// The host's home directory (named in messages).
    fn home(&self) -> &Path;

    /// Tells the person running the command how it goes (one line).
    fn say(&self, line: &str);

    /// A progress reporter for long work (bringing a disk to a point),
    /// its lines prefixed with `prefix`. None by default.
    fn progress(&self, prefix: &str) -> Box<dyn vault::Progress> {
        let _ = prefix;
        Box::new(())
    }

    /// The VM `name` as defined on this host, if it is.
    fn vm(&self, name: &str) -> Result<Option<VmDefinition>, HostError>;

    /// The disk `name` this host protects; an error if it does not.
    fn disk(&self, name: &str) -> Result<LocalDisk, HostError>;

    /// The identity of the disk `name` this host protects.
    fn disk_identity(&self, name: &str) -> Result<[u8; 16], HostError>;

    /// The key and vault the disk `name` replicates to, the key checked
    /// against the vault.
    fn disk_vault(&self, name: &str) -> Result<(Keys, Vault), HostError>;

    /// The key in file `key` and the vault at `vault` (a directory or a
    /// vault server), the key checked against the vault.
    fn open_vault(&self, vault: &Location, key: &Path) -> Result<(Keys, Vault), HostError>;

    /// Takes the disk's state lock; `None` if a filter or cycle holds it.
    fn lock_state(&self, name: &str) -> Result<Option<Self::Lock>, HostError>;

    /// Protects a disk or starts its state over (`lifeboat protect`).
    fn protect(&self, req: &ProtectRequest<'_>) -> Result<(), HostError>;

    /// Runs one replication cycle of the disk `name` (`lifeboat ship`).
    fn run_cycle(&self, name: &str) -> Result<Shipped, HostError>;

    /// Records an action in the audit log of `keys` (copied to `vault`).
    fn audit(
        &self,
        keys: &Keys,
        vault: &Vault,
        kind: &str,
        disk: Option<&str>,
        details: Value,
    ) -> Result<(), HostError>;
}
