//! The home directory: one folder per protected disk.
//!
//! ```text
//! HOME/disks/NAME/disk.toml     configuration (image path, block size, identity)
//! HOME/disks/NAME/state         the state file (disk-format/FORMAT.md)
//! HOME/disks/NAME/control.sock  the running filter's control socket
//! HOME/disks/NAME/scratch       copy-before-write copies during a cut
//! ```

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use filter::disk::DiskPaths;
use serde::{Deserialize, Serialize};

/// The home directory.
pub struct Home {
    root: PathBuf,
}

/// A protected disk's configuration, `disk.toml`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Absolute path of the raw image.
    pub image: PathBuf,
    /// Block size in bytes.
    pub block_size: u32,
    /// Hex of the 16-byte disk identity (also in the state file).
    pub disk_id: String,
    /// Replication settings, once the disk has a vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
}

/// Where and how often a disk replicates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// The vault directory.
    pub vault: PathBuf,
    /// The customer key file.
    pub key: PathBuf,
    /// Cycle interval (the RPO target), seconds.
    pub rpo_seconds: u64,
}

/// A protected disk in the home.
pub struct DiskEntry {
    pub dir: PathBuf,
    pub config: DiskConfig,
}

/// Checks a disk name: it becomes a directory name and an NBD export name.
pub fn check_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if !ok {
        bail!("{name:?} is not a valid disk name: use 1 to 64 letters, digits, '.', '_' or '-', not starting with '.' or '-'");
    }
    Ok(())
}

impl Home {
    pub fn new(root: PathBuf) -> Home {
        Home { root }
    }

    pub fn disk_dir(&self, name: &str) -> PathBuf {
        self.root.join("disks").join(name)
    }

    /// Loads a protected disk, with an error that says how to protect it if it is not.
    pub fn disk(&self, name: &str) -> Result<DiskEntry> {
        check_name(name)?;
        let dir = self.disk_dir(name);
        let conf = dir.join("disk.toml");
        let text = match std::fs::read_to_string(&conf) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "no protected disk named {name:?} in {} (looked for {}); protect it with \
                 `lifeboat protect {name} --image IMAGE` or pass the right --home / LIFEBOAT_HOME",
                self.root.display(),
                conf.display()
            ),
            Err(e) => return Err(e).with_context(|| format!("reading {}", conf.display())),
        };
        let config: DiskConfig =
            toml::from_str(&text).with_context(|| format!("{} is not a valid disk configuration", conf.display()))?;
        Ok(DiskEntry { dir, config })
    }
}

impl DiskEntry {
    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The disk identity as bytes.
    pub fn disk_id(&self) -> Result<[u8; 16]> {
        let hex = &self.config.disk_id;
        let mut id = [0u8; 16];
        if hex.len() != 32 {
            bail!("disk.toml: disk_id {hex:?} is not 32 hex digits");
        }
        for (i, b) in id.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                .map_err(|_| anyhow::anyhow!("disk.toml: disk_id {hex:?} is not hex"))?;
        }
        Ok(id)
    }

    /// The replication settings, or an error that says how to add them.
    pub fn replication(&self, name: &str) -> Result<&Replication> {
        self.config.replication.as_ref().ok_or_else(|| {
            anyhow::anyhow!(
                "disk {name:?} has no vault yet; add one with \
                 `lifeboat protect {name} --image IMAGE --vault DIR --key KEYFILE [--rpo 5m]`"
            )
        })
    }

    pub fn paths(&self) -> DiskPaths {
        DiskPaths { image: self.config.image.clone(), state: self.state_path(), scratch: self.dir.join("scratch") }
    }
}
