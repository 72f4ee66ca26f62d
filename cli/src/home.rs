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

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use filter::copies::CopyMemory;
use filter::disk::DiskPaths;
use filter::{Disk, ImageId};
use serde::{Deserialize, Serialize};

/// Whether `dir` holds only entries named in `known` (true if it is missing).
fn only_entries(dir: &std::path::Path, known: &[&str]) -> std::io::Result<bool> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(true),
        Err(e) => return Err(e),
    };
    for e in entries {
        if !e?.file_name().to_str().is_some_and(|n| known.contains(&n)) {
            return Ok(false);
        }
    }
    Ok(true)
}

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
    /// Which file the image was when it was protected: its device
    /// (`st_dev`) and inode. Absent in configs written before they were
    /// recorded; the next open records them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_device: Option<u64>,
    /// See `image_device`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_inode: Option<u64>,
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
    /// TLS credentials (`protect --tls-creds`, a directory in QEMU's
    /// tls-creds-x509 layout): the agent requires TLS with a client
    /// certificate signed by its CA on every TCP `listen` address, which may
    /// then be non-loopback without `insecure_tcp`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_creds: Option<PathBuf>,
    /// Replication settings, once the disk has a vault.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication: Option<Replication>,
    /// Record the churn profile while the disk is served (`lifeboat profile
    /// show`); `protect --profile off` writes `profile = false`.
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub profile: bool,
}

fn yes() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's signature
fn is_yes(b: &bool) -> bool {
    *b
}

impl DiskConfig {
    /// The image's identity recorded at protect, if it was.
    pub fn image_id(&self) -> Option<ImageId> {
        Some(ImageId { device: self.image_device?, inode: self.image_inode? })
    }

    /// Records the image's identity.
    pub fn set_image_id(&mut self, id: ImageId) {
        self.image_device = Some(id.device);
        self.image_inode = Some(id.inode);
    }

    /// Writes the configuration to `conf`, atomically and durably
    /// (`system::file::replace`: a host crash leaves the old or the new
    /// file, never an empty one) and private whatever the umask: it names
    /// the image and the key.
    pub fn write(&self, conf: &Path) -> Result<()> {
        system::file::replace(conf, toml::to_string(self)?.as_bytes())
            .with_context(|| format!("writing {}", conf.display()))
    }
}

/// Closes a disk that was opened but could not be served (a socket could
/// not be bound), so its state file is left clean rather than looking like a
/// filter that died; returns `e`, the reason. Call after every other holder
/// of `disk` (the control server) has been stopped.
pub fn close_unserved(disk: Arc<Disk>, e: anyhow::Error) -> anyhow::Error {
    match Arc::try_unwrap(disk).map(Disk::close) {
        Ok(Err(c)) => e.context(format!("(closing the disk's state file also failed: {c})")),
        _ => e,
    }
}

/// Where and how often a disk replicates.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Replication {
    /// The vault: a directory, or a vault server's URL (stored as the same
    /// string a directory's path always was).
    pub vault: vault::Location,
    /// The customer key file.
    pub key: PathBuf,
    /// Cycle interval (the RPO target), seconds.
    pub rpo_seconds: u64,
    /// The retention ladder the agent applies after each cycle.
    #[serde(default)]
    pub retention: Retention,
    /// Compress blocks before sealing; written only when off.
    #[serde(default = "compress_default", skip_serializing_if = "is_true")]
    pub compress: bool,
}

fn compress_default() -> bool {
    true
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_true(b: &bool) -> bool {
    *b
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
    /// Thin the recent points older than a minute to one per this many
    /// seconds (0, the default: keep every recent point). `protect` sets 30
    /// for an RPO under 30 s.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub thin_seconds: u64,
}

#[allow(clippy::trivially_copy_pass_by_ref)] // serde's skip_serializing_if passes a reference
fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// With thinning, every point of this last stretch is kept.
pub const THIN_DENSE_SECONDS: u64 = 60;

impl Default for Retention {
    fn default() -> Retention {
        Retention { recent_seconds: 3600, hourly: 24, daily: 0, thin_seconds: 0 }
    }
}

impl Retention {
    pub fn policy(&self) -> vault::retention::Policy {
        let secs = std::time::Duration::from_secs;
        vault::retention::Policy {
            recent: secs(self.recent_seconds),
            thin: (self.thin_seconds > 0)
                .then(|| vault::Thin { dense: secs(THIN_DENSE_SECONDS), step: secs(self.thin_seconds) }),
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

    /// Makes the home and the top of each local vault in `vaults` private to
    /// the administrator, as this Lifeboat creates them whatever the umask:
    /// an older one followed the umask, and under `umask 000` left
    /// `disk.toml` (which names the image and the key) and the sockets open
    /// to every local user. These are Lifeboat's own files, so it tightens
    /// them rather than refuse to start; each change is reported (`PATH from
    /// 0777 to 0700`) so the administrator sees what was open.
    ///
    /// Only what is surely Lifeboat's is changed: the home's own
    /// subdirectories, everything in them; the home itself and a vault's
    /// top directory only while they hold nothing but Lifeboat's entries (a
    /// `--home /tmp` must not turn `/tmp` private). Otherwise, and where a
    /// vault cannot be changed (a root-squashed share), a warning names the
    /// path and the chmod to run. A vault's top directory is enough: at 0700
    /// nobody else can reach below it. A vault server's files are the
    /// site's: only vault directories are looked at.
    pub fn make_private(&self, vaults: &[&vault::Location]) -> Result<Vec<recovery::trust::Tightened>> {
        const HOME_ENTRIES: [&str; 6] = ["disks", "vms", "failovers", "plans", "audit", "cache"];
        let mut changed = Vec::new();
        for sub in HOME_ENTRIES {
            let dir = self.root.join(sub);
            changed.extend(
                recovery::trust::make_private(&dir, true)
                    .with_context(|| format!("making {} private", dir.display()))?,
            );
        }
        let vault_entries: Vec<&str> =
            vault::backend::Kind::ALL.iter().map(|k| k.prefix()).chain(["tmp", "trash"]).collect();
        let tops = std::iter::once((self.root.as_path(), &HOME_ENTRIES[..], "home"))
            .chain(vaults.iter().filter_map(|v| v.path()).map(|v| (v, &vault_entries[..], "vault")));
        for (dir, known, what) in tops {
            let tightened = match only_entries(dir, known) {
                Ok(true) => recovery::trust::make_private(dir, false).map_err(|e| e.to_string()),
                Ok(false) => Err("it holds more than Lifeboat's own entries".to_string()),
                Err(e) => Err(e.to_string()),
            };
            match tightened {
                Ok(c) => changed.extend(c),
                Err(why) => {
                    let mode =
                        std::fs::metadata(dir).map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()));
                    if mode.is_ok_and(|m| m & 0o077 != 0) {
                        tracing::info!(
                            "lifeboat: warning: the {what} {} is open to other users and was left so ({why}); if it \
                             is Lifeboat's alone, run `chmod go-rwx {}`",
                            dir.display(),
                            dir.display()
                        );
                    }
                }
            }
        }
        Ok(changed)
    }

    pub fn disk_dir(&self, name: &str) -> PathBuf {
        self.root.join("disks").join(name)
    }

    /// Where the vaults' index caches live (`vault::index_cache`): a hint
    /// kept on this host so that a cycle need not read every pack's index.
    pub fn index_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("index")
    }

    /// Where the host keeps a copy of each disk's newest map pages
    /// (`shipper::CycleOptions::page_cache`): built here, checked against
    /// the root before use, so a cycle need not read them back.
    pub fn page_cache_dir(&self) -> PathBuf {
        self.root.join("cache").join("pages")
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
        Ok(recovery::VmDefinition::load_dir(&self.vms_dir())?)
    }

    /// The VM a disk belongs to, if any.
    pub fn vm_of_disk(&self, disk: &str) -> Result<Option<recovery::VmDefinition>> {
        Ok(recovery::VmDefinition::of_disk(&self.vms_dir(), disk)?)
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

    /// The protected disk (other than `except`) whose image is the file
    /// `id`, and its image path: the file its image path names now
    /// (following symlinks), or the one recorded at protect. Disks whose
    /// configuration cannot be read are passed over.
    pub fn disk_with_image(&self, id: ImageId, except: Option<&str>) -> Result<Option<(String, PathBuf)>> {
        for name in self.disk_names()? {
            if except == Some(name.as_str()) {
                continue;
            }
            let Ok(entry) = self.disk(&name) else { continue };
            let now = std::fs::metadata(&entry.config.image).ok().map(|m| ImageId::of(&m));
            if now == Some(id) || entry.config.image_id() == Some(id) {
                return Ok(Some((name, entry.config.image)));
            }
        }
        Ok(None)
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
    pub fn config_path(&self) -> PathBuf {
        self.dir.join("disk.toml")
    }

    /// Opens the disk to serve or cut it ([`Disk::open_with_copy_memory`]:
    /// the image under QEMU's lock, the state file under its own) and checks
    /// that the image is still the file that was protected: a file renamed
    /// or restored over the path is refused, because the state file's bits
    /// describe the old file. A config from before identities were recorded
    /// gets the open file's recorded now; the second value then says so,
    /// for the caller's log.
    pub fn open_disk(&mut self, name: &str, copy_memory: Arc<CopyMemory>) -> Result<(Disk, Option<String>)> {
        let was = self.config.image_id();
        // Checked first on the path, so a replaced image is refused before
        // its state file is touched; then on the file opened (the path may
        // have changed in between).
        if let (Some(was), Ok(meta)) = (was, std::fs::metadata(&self.config.image)) {
            if ImageId::of(&meta) != was {
                return Err(self.replaced(name, was, ImageId::of(&meta)));
            }
        }
        let disk = Disk::open_with_copy_memory(self.paths(), copy_memory)
            .with_context(|| format!("disk {name:?}: opening its image and state"))?;
        let is = disk.image_id();
        match was {
            Some(was) if was == is => Ok((disk, None)),
            Some(was) => {
                // Leave the state file as clean as it was: nothing was served.
                disk.close().with_context(|| format!("disk {name:?}: closing its state file"))?;
                Err(self.replaced(name, was, is))
            }
            None => {
                self.config.set_image_id(is);
                self.config.write(&self.config_path())?;
                let note = format!(
                    "{name}: recorded the image's identity (device:inode {is}) in {}; from now on a file replaced \
                     at {} is refused",
                    self.config_path().display(),
                    self.config.image.display()
                );
                Ok((disk, Some(note)))
            }
        }
    }

    fn replaced(&self, name: &str, was: ImageId, is: ImageId) -> anyhow::Error {
        anyhow::anyhow!(
            "disk {name:?}: the image at {} is not the file that was protected (device:inode was {was}, is {is}): \
             it was replaced or restored over; run `lifeboat protect {name} --image {} --reset-state` to protect \
             the new file (the next cycle is a full verify)",
            self.config.image.display(),
            self.config.image.display()
        )
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join("state")
    }

    pub fn control_path(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    /// The disk identity as bytes.
    pub fn disk_id(&self) -> Result<[u8; 16]> {
        let hex = &self.config.disk_id;
        disk_format::ids::parse_hex(hex).with_context(|| format!("disk.toml: disk_id {hex:?} is not 32 hex digits"))
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
