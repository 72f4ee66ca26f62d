//! The home directory: one folder per protected disk.
//!
//! ```text
//! HOME/disks/NAME/disk.toml     configuration (image path, block size, identity)
//! HOME/disks/NAME/state         the state file (disk-format/FORMAT.md)
//! HOME/disks/NAME/control.sock  the running filter's control socket
//! HOME/disks/NAME/scratch       copy-before-write copies during a cut
//! HOME/disks/NAME/nbd.sock      the agent's NBD socket (unless `listen` says otherwise)
//! HOME/disks/NAME/status.json   the last cycle's outcome (`lifeboat status`)
//! HOME/vms/VM.toml              a VM's launch definition (`lifeboat vm define`)
//! HOME/failovers/VM/            a failover at this site: job.json, disks/, console.log, qmp.sock
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
    /// Where the agent serves the disk over NBD (`unix:PATH` or
    /// `tcp:HOST:PORT`); empty means `unix:HOME/disks/NAME/nbd.sock`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// The administrator accepted (`protect --insecure-tcp`) that a `listen`
    /// address is not loopback: the agent serves the disk there, without
    /// authentication, with a warning at every start. Without it the agent
    /// refuses such an address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_tcp: bool,
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
    /// The retention ladder the agent applies after each cycle.
    #[serde(default)]
    pub retention: Retention,
}

/// Which points the agent keeps (see `vault::retention::Policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep every point cut within this many seconds.
    pub recent_seconds: u64,
    /// Then the newest point of each of this many clock hours.
    pub hourly: u32,
    /// Then the newest point of each of this many days.
    pub daily: u32,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { recent_seconds: 3600, hourly: 24, daily: 0 }
    }
}

impl Retention {
    pub fn policy(&self) -> vault::retention::Policy {
        vault::retention::Policy {
            recent: std::time::Duration::from_secs(self.recent_seconds),
            hourly: self.hourly,
            daily: self.daily,
        }
    }
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

    /// The home directory itself.
    pub fn root(&self) -> &std::path::Path {
        &self.root
    }

    pub fn disk_dir(&self, name: &str) -> PathBuf {
        self.root.join("disks").join(name)
    }

    /// Where VM definitions live.
    pub fn vms_dir(&self) -> PathBuf {
        self.root.join("vms")
    }

    /// Where this site's failovers live.
    pub fn failovers_dir(&self) -> PathBuf {
        self.root.join("failovers")
    }

    /// Every VM defined in the home, sorted by name.
    pub fn vms(&self) -> Result<Vec<recovery::VmDefinition>> {
        let dir = self.vms_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut vms = Vec::new();
        for e in entries {
            let path = e.with_context(|| format!("listing {}", dir.display()))?.path();
            if path.extension().is_some_and(|x| x == "toml") {
                let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
                vms.push(recovery::VmDefinition::parse(&text, &path.display().to_string())?);
            }
        }
        vms.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(vms)
    }

    /// The VM a disk belongs to, if any.
    pub fn vm_of_disk(&self, disk: &str) -> Result<Option<recovery::VmDefinition>> {
        Ok(self.vms()?.into_iter().find(|v| v.disks.iter().any(|d| d == disk)))
    }

    /// The names of every protected disk, sorted.
    pub fn disk_names(&self) -> Result<Vec<String>> {
        let dir = self.root.join("disks");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut names = Vec::new();
        for e in entries {
            let e = e.with_context(|| format!("listing {}", dir.display()))?;
            let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
            if check_name(&name).is_ok() && e.path().join("disk.toml").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
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

    /// The marker a failback leaves while it rewrites the image.
    pub fn failback_marker(&self) -> PathBuf {
        self.dir.join("failback.inprogress")
    }

    /// Refuses a disk whose failback was interrupted: its image is half
    /// old, half the point it was being brought to.
    pub fn check_usable(&self, name: &str) -> Result<()> {
        match std::fs::read_to_string(self.failback_marker()) {
            Ok(what) => bail!(
                "disk {name:?} is half-way through a failback ({}): its image is not usable until that finishes; run \
                 `lifeboat failback VM` again",
                what.trim()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e).with_context(|| format!("reading {}", self.failback_marker().display())),
        }
    }

    pub fn status_path(&self) -> PathBuf {
        self.dir.join("status.json")
    }

    /// Where the agent serves the disk.
    pub fn listen(&self) -> Result<Vec<filter::nbd::Listen>> {
        if self.config.listen.is_empty() {
            return Ok(vec![filter::nbd::Listen::Unix(self.dir.join("nbd.sock"))]);
        }
        self.config
            .listen
            .iter()
            .map(|l| l.parse().map_err(|e| anyhow::anyhow!("disk.toml: listen address {l:?}: {e}")))
            .collect()
    }

    pub fn paths(&self) -> DiskPaths {
        DiskPaths { image: self.config.image.clone(), state: self.state_path(), scratch: self.dir.join("scratch") }
    }
}
