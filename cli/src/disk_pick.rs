//! Which disk a command means when it names one: the vault keeps each disk
//! identity's points apart (root format 2), and several disks may share a
//! name (two hosts each protecting a `web1-root`). At the protected site the
//! home's own disk is meant; elsewhere the one disk of that name, or the one
//! `--disk-id` / `--from-host` picks.

use anyhow::{bail, Result};
use disk_format::Keys;
use vault::{DiskChoice, DiskPoints, Vault};

use crate::home::Home;

/// The flags that pick one of several disks of a name.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ChooseArgs {
    /// When the vault holds several disks of this name (protected from different hosts, or protected
    /// anew): the identity of the one meant, as `lifeboat points NAME --json` shows it (disk_id).
    #[arg(long, value_name = "ID")]
    pub disk_id: Option<String>,
    /// When the vault holds several disks of this name: the one protected from HOST (its host name, as
    /// `lifeboat points NAME` shows it).
    #[arg(long, value_name = "HOST")]
    pub from_host: Option<String>,
}

impl ChooseArgs {
    /// The choice the flags make.
    pub fn choice(&self) -> Result<DiskChoice> {
        let disk_id = match &self.disk_id {
            None => None,
            Some(hex) => Some(parse_id(hex)?),
        };
        Ok(DiskChoice { disk_id, host: self.from_host.clone() })
    }

    /// Whether any flag was given.
    pub fn given(&self) -> bool {
        self.disk_id.is_some() || self.from_host.is_some()
    }
}

/// A disk identity from its 32 hex digits.
pub fn parse_id(hex: &str) -> Result<[u8; 16]> {
    match disk_format::ids::parse_hex(hex) {
        Some(id) => Ok(id),
        None => {
            bail!("--disk-id {hex:?}: a disk identity is 32 hex digits (`lifeboat points NAME --json` shows disk_id)")
        }
    }
}

/// The identity of the disk this home protects as `name`, if it does.
pub fn own_identity(home: &Home, name: &str) -> Option<[u8; 16]> {
    home.disk(name).ok().and_then(|e| e.disk_id().ok())
}

/// The points of the disk `name` means in `vault`: with no choice given, at
/// the protected site this home's own disk's, elsewhere the only disk of
/// that name; else the one the choice picks.
pub fn disk_points(home: &Home, vault: &Vault, keys: &Keys, name: &str, choose: &ChooseArgs) -> Result<DiskPoints> {
    let choice = choose.choice()?;
    if !choose.given() {
        if let Some(id) = own_identity(home, name) {
            return Ok(vault.disk_points(keys, name, &id)?);
        }
    }
    let disks = vault.disks_by_identity(keys)?;
    Ok(disks.pick(name, &choice, &vault.backend().location())?.clone())
}
