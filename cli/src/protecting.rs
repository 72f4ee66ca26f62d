//! Protecting a disk: the work of `lifeboat protect`, as a function of a
//! typed [`Request`], so that the command and the commands that protect a
//! disk themselves (failback protects a recovered disk and starts a
//! failed-back one's state over) share it without going through the
//! command's argument parser.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use disk_format::Geometry;
use filter::{ImageId, StateFile};
use vault::Location;

use crate::home::{check_name, DiskConfig, Home, Replication, Retention};
use crate::keyfile;

/// The tracking granularity when none is asked for (`protect --block-size`'s default).
pub const DEFAULT_BLOCK_SIZE: u64 = 64 * 1024;

/// The cycle interval when none is asked for (`protect --rpo`'s default), seconds.
pub const DEFAULT_RPO_SECONDS: u64 = 5 * 60;

/// What to protect and how (the flags of `lifeboat protect`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Name of the disk: its directory in the home and its NBD export name.
    pub name: String,
    /// The raw disk image (file or block device) the VM uses.
    pub image: PathBuf,
    /// Tracking granularity in bytes: a power of two from 4 KiB to 1 MiB.
    pub block_size: u64,
    /// Replicate to a vault (for an already protected disk: add or change
    /// its replication settings).
    pub replicate: Option<Replicate>,
    /// Where the agent serves the disk over NBD (empty: the default socket,
    /// or, for an already protected disk, unchanged).
    pub listen: Vec<filter::nbd::Listen>,
    /// Require TLS with client certificates from this directory on TCP.
    pub tls_creds: Option<PathBuf>,
    /// Allow a non-loopback TCP address without TLS.
    pub insecure_tcp: bool,
    /// Replace the disk's state file with one that marks every block to verify.
    pub reset_state: bool,
    /// Record the churn profile while the disk is served (None: unchanged
    /// for a disk already protected, on for a new one).
    pub profile: Option<bool>,
}

/// Where and how often a disk replicates, as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicate {
    /// The vault (a directory or a vault server).
    pub vault: Location,
    /// The customer key file.
    pub key: PathBuf,
    /// Cycle interval (the RPO), seconds.
    pub rpo_seconds: u64,
    /// The retention ladder.
    pub retention: Retention,
    /// Compress blocks before sealing (`--no-compress` turns it off).
    pub compress: bool,
}

impl Request {
    /// Protect `image` as disk `name`, with every setting at its default.
    pub fn new(name: &str, image: &Path) -> Request {
        Request {
            name: name.to_string(),
            image: image.to_path_buf(),
            block_size: DEFAULT_BLOCK_SIZE,
            replicate: None,
            listen: Vec::new(),
            tls_creds: None,
            insecure_tcp: false,
            reset_state: false,
            profile: None,
        }
    }
}

impl Replicate {
    /// Replicate to `vault` with `key`, at the default RPO and retention.
    pub fn new(vault: impl Into<Location>, key: &Path) -> Replicate {
        Replicate {
            vault: vault.into(),
            key: key.to_path_buf(),
            rpo_seconds: DEFAULT_RPO_SECONDS,
            retention: Retention::default(),
            compress: true,
        }
    }
}

fn random_id() -> Result<[u8; 16]> {
    let mut id = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut id))
        .context("reading /dev/urandom for a disk identity")?;
    Ok(id)
}

/// What `protect` learns about an image by opening it as the filter will.
struct ImageInfo {
    size: u64,
    id: ImageId,
}

/// Opens the image read-write, as the filter does, so that an image the
/// filter would refuse (a directory, an immutable or read-only file) is
/// refused here, before anything is recorded.
fn inspect_image(path: &Path) -> Result<ImageInfo> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::metadata(path).with_context(|| format!("inspecting disk image {}", path.display()))?;
    let kind = meta.file_type();
    if kind.is_dir() {
        bail!("disk image {} is a directory: give the VM's raw image file or block device", path.display());
    }
    if !kind.is_file() && !kind.is_block_device() {
        bail!("disk image {} is neither a regular file nor a block device: give the VM's raw image", path.display());
    }
    let mut f = std::fs::OpenOptions::new().read(true).write(true).open(path).map_err(|e| {
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => {
                "it is immutable or append-only (see `lsattr`; `chattr -i` / `chattr -a` clear that), and the \
                 filter must write the VM's data to it"
            }
            Some(libc::EACCES | libc::EROFS) => "the filter must write the VM's data to it: make it writable",
            _ => "the filter must open it for reading and writing",
        };
        anyhow::anyhow!("disk image {} cannot be opened for writing ({e}): {why}", path.display())
    })?;
    let size = f.seek(SeekFrom::End(0)).with_context(|| format!("sizing disk image {}", path.display()))?;
    let id = ImageId::of(&f.metadata().with_context(|| format!("inspecting disk image {}", path.display()))?);
    Ok(ImageInfo { size, id })
}

/// The longest path a unix socket may have: `sun_path` holds 108 bytes,
/// the terminating NUL included.
const SOCKET_PATH_MAX: usize = 107;

/// Refuses a socket path the agent could not bind, before anything is
/// recorded (an agent that fails to bind leaves the disk's state unclean).
fn check_socket_path(name: &str, what: &str, path: &Path) -> Result<()> {
    let len = path.as_os_str().len();
    if len > SOCKET_PATH_MAX {
        bail!(
            "disk {name:?}: its {what} {} would be {len} bytes long, longer than a unix socket path may be \
             ({SOCKET_PATH_MAX}): use a shorter disk name, a home with a shorter path (--home / LIFEBOAT_HOME), or \
             a shorter --listen path",
            path.display()
        );
    }
    Ok(())
}

/// Checks every unix socket the disk would have: its control socket, and
/// its NBD sockets (the default one unless `listen` names others).
fn check_socket_paths(home: &Home, name: &str, listen: &[filter::nbd::Listen]) -> Result<()> {
    let dir = home.disk_dir(name);
    check_socket_path(name, "control socket", &dir.join("control.sock"))?;
    if listen.is_empty() {
        check_socket_path(name, "NBD socket", &dir.join("nbd.sock"))?;
    }
    for l in listen {
        if let filter::nbd::Listen::Unix(p) = l {
            check_socket_path(name, "NBD socket", p)?;
        }
    }
    Ok(())
}

/// Protects disk `a.name` (or changes its replication or listen
/// addresses, or starts its state over), reporting to `out`: stdout for
/// `lifeboat protect`, stderr when another command protects a disk.
pub fn protect(home: &Home, a: &Request, out: &mut dyn std::io::Write) -> Result<()> {
    check_name(&a.name)?;
    let vaults: Vec<&Location> = a.replicate.as_ref().map(|r| &r.vault).into_iter().collect();
    for t in home.make_private(&vaults)? {
        tracing::info!("lifeboat: {t}: it was open to other users; Lifeboat keeps its home and vault private");
    }
    let image = std::fs::canonicalize(&a.image)
        .with_context(|| format!("disk image {} does not exist or cannot be reached", a.image.display()))?;
    let ImageInfo { size, id: image_id } = inspect_image(&image)?;
    if let Some((other, other_image)) = home.disk_with_image(image_id, Some(&a.name))? {
        bail!(
            "disk image {} is already protected as disk {other:?} (image {}, the same file: device:inode {image_id}); \
             one image is protected under one name only, or two filters would each record only their own writes",
            image.display(),
            other_image.display()
        );
    }
    check_socket_paths(home, &a.name, &a.listen)?;
    let geometry = Geometry::new(size, a.block_size)
        .with_context(|| format!("cannot protect {} with block size {}", image.display(), a.block_size))?;
    let dir = home.disk_dir(&a.name);
    let state = dir.join("state");
    let conf = dir.join("disk.toml");
    let existing = conf.exists();
    let replication = match &a.replicate {
        Some(r) => Some(Replication {
            compress: r.compress,
            ..check_replication(home, &r.vault, &r.key, r.rpo_seconds, r.retention.clone())?
        }),
        None => None,
    };
    let tls_creds = match &a.tls_creds {
        Some(dir) => {
            let dir = std::fs::canonicalize(dir)
                .with_context(|| format!("TLS credentials directory {} does not exist", dir.display()))?;
            crate::cmd::filter::load_tls(&dir)?;
            Some(dir)
        }
        None => None,
    };
    if !a.insecure_tcp && tls_creds.is_none() {
        refuse_exposed(&a.name, &a.listen, "lifeboat protect")?;
    }
    let listen: Vec<String> = a.listen.iter().map(|l| l.to_string()).collect();
    if existing && !a.reset_state && (replication.is_some() || !listen.is_empty() || a.profile.is_some()) {
        let mut old = home.disk(&a.name)?;
        if old.config.image != image {
            bail!("disk {:?} protects {}, not {}", a.name, old.config.image.display(), image.display());
        }
        if let Some(r) = &replication {
            audit_protect(home, &a.name, &image, a.block_size, r, "replication changed")?;
            old.config.replication = replication;
            writeln!(
                out,
                "{}: replication set: vault {}, every {} s",
                a.name,
                a.replicate.as_ref().map(|v| v.vault.to_string()).unwrap_or_default(),
                a.replicate.as_ref().map_or(0, |r| r.rpo_seconds)
            )?;
        }
        if !listen.is_empty() {
            old.config.listen = listen;
            old.config.insecure_tcp = a.insecure_tcp;
            old.config.tls_creds.clone_from(&tls_creds);
            writeln!(out, "{}: the agent will serve it on {}", a.name, old.config.listen.join(" "))?;
        }
        if let Some(on) = a.profile {
            old.config.profile = on;
            writeln!(
                out,
                "{}: churn profile {} (from the next start of its filter or the agent)",
                a.name,
                if on { "on" } else { "off" }
            )?;
        }
        old.config.write(&conf)?;
        return Ok(());
    }
    if existing && !a.reset_state {
        let old = home.disk(&a.name)?;
        bail!(
            "disk {:?} is already protected (image {}); to start its state over, add --reset-state",
            a.name,
            old.config.image.display()
        );
    }
    recovery::trust::private_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut suspect = false;
    let mut last_point = None;
    let mut replication = replication;
    let mut listen = listen;
    let mut insecure_tcp = a.insecure_tcp;
    let mut tls_creds = tls_creds;
    let mut profile = a.profile.unwrap_or(true);
    let disk_id = if existing {
        let old = home.disk(&a.name)?;
        profile = a.profile.unwrap_or(old.config.profile);
        // --reset-state replaces the state, not the replication settings.
        replication = replication.or(old.config.replication.clone());
        if listen.is_empty() {
            listen.clone_from(&old.config.listen);
            insecure_tcp = old.config.insecure_tcp;
            tls_creds.clone_from(&old.config.tls_creds);
        }
        if old.config.image != image {
            bail!(
                "disk {:?} protects {}, not {}; --reset-state keeps the image — pick another name for another image",
                a.name,
                old.config.image.display(),
                image.display()
            );
        }
        if state.exists() {
            // Refuse while a filter holds it; otherwise keep the old file for inspection.
            let lock = std::fs::File::open(&state)?;
            if !try_lock(&lock) {
                bail!("disk {:?} is in use by a running filter or cycle; stop it before --reset-state", a.name);
            }
            let now = system::clock::now_ns() / 1_000_000_000;
            // The new state is suspect (every block dirty), so it is
            // relative to any point; keeping the old record of the last
            // committed point lets the next cycle still notice a vault that
            // lost points, and never reuse a sequence number.
            last_point = filter::StateFile::report(&state).ok().and_then(|r| r.last_point);
            let keep = dir.join(format!("state.replaced-{now}"));
            std::fs::rename(&state, &keep)?;
            tracing::info!("lifeboat: kept the old state file as {}", keep.display());
        }
        suspect = true;
        old.disk_id()? // the same disk: its identity stays
    } else {
        random_id()?
    };
    if let Some(r) = &replication {
        audit_protect(
            home,
            &a.name,
            &image,
            geometry.block_size.into(),
            r,
            if existing { "state reset" } else { "protected" },
        )?;
    }
    StateFile::create_with(&state, geometry, disk_id, suspect, last_point)?;
    let config = DiskConfig {
        image: image.clone(),
        block_size: geometry.block_size,
        disk_id: crate::output::hex(&disk_id),
        image_device: Some(image_id.device),
        image_inode: Some(image_id.inode),
        listen,
        insecure_tcp,
        tls_creds,
        replication,
        profile,
    };
    config.write(&conf)?;
    writeln!(
        out,
        "protected {}: image {} ({} bytes, {} blocks of {} bytes){}",
        a.name,
        image.display(),
        size,
        geometry.block_count,
        geometry.block_size,
        if suspect { "; state reset: every block will be verified" } else { "" }
    )?;
    let entry = home.disk(&a.name)?;
    let at: Vec<String> = entry.listen()?.iter().map(|l| l.to_string()).collect();
    if entry.config.replication.is_some() {
        writeln!(
            out,
            "next: run `lifeboat agent`; it serves the disk on {} (point the VM's disk there)",
            at.join(" ")
        )?;
    } else {
        writeln!(
            out,
            "next: add a vault (`lifeboat protect {} --image {} --vault DIR --key KEYFILE`), \
             or serve it now with `lifeboat agent` (on {})",
            a.name,
            image.display(),
            at.join(" ")
        )?;
    }
    Ok(())
}

/// Refuses TCP listen addresses that are not loopback (what they resolve
/// to), saying why and what to do instead; `who` names the command.
pub fn refuse_exposed(name: &str, listens: &[filter::nbd::Listen], who: &str) -> Result<()> {
    for l in listens {
        let exposed = l.non_loopback_addrs().with_context(|| format!("disk {name:?}: checking listen address {l}"))?;
        if let Some(addr) = exposed.first() {
            bail!(
                "{who}: disk {name:?}: refusing to serve it on {l} ({}): that is not a loopback address, and Lifeboat's \
                 NBD server has no authentication or encryption, so anyone who can reach it could read and overwrite \
                 the disk. Use the default unix socket, or tcp:127.0.0.1:PORT and reach it from another host \
                 through an ssh tunnel (ssh -L PORT:127.0.0.1:PORT HOST), or require TLS with client certificates: \
                 `lifeboat protect {name} --image IMAGE --listen {l} --tls-creds DIR` (see --help). To accept the \
                 risk on an isolated network: `lifeboat protect {name} --image IMAGE --listen {l} --insecure-tcp`",
                addr.ip()
            );
        }
    }
    Ok(())
}

/// Checks that the key loads and the vault accepts it, and makes the key's
/// path and a vault directory's absolute (a vault server's URL is kept as
/// given).
fn check_replication(
    home: &Home,
    vault: &Location,
    key: &std::path::Path,
    rpo_seconds: u64,
    retention: Retention,
) -> Result<Replication> {
    let key = std::fs::canonicalize(key).with_context(|| format!("key file {} does not exist", key.display()))?;
    let keys = keyfile::load(&key)?;
    let vault = match vault {
        Location::Path(dir) => Location::Path(std::fs::canonicalize(dir).with_context(|| {
            format!("vault {} does not exist; create it with `lifeboat vault init`", dir.display())
        })?),
        url => url.clone(),
    };
    crate::vault_open::open(home, &vault)?.check_key(&keys)?;
    Ok(Replication { vault, key, rpo_seconds, retention, compress: true })
}

/// Takes the exclusive lock a filter or cycle holds on a state file;
/// false if someone holds it.
pub fn lock_state(f: &std::fs::File) -> bool {
    try_lock(f)
}

fn try_lock(f: &std::fs::File) -> bool {
    system::lock::try_lock_exclusive(f).unwrap_or(false)
}

/// Records the protection (or its change) in the audit log of the disk's key.
fn audit_protect(
    home: &Home,
    name: &str,
    image: &std::path::Path,
    block_size: u64,
    r: &Replication,
    what: &str,
) -> Result<()> {
    let keys = keyfile::load(&r.key)?;
    let vault = crate::vault_open::open(home, &r.vault)?;
    let details = serde_json::json!({
        "what": what, "image": image, "block_size": block_size, "vault": r.vault, "rpo_seconds": r.rpo_seconds,
        "retention": { "recent_seconds": r.retention.recent_seconds, "hourly": r.retention.hourly, "daily": r.retention.daily },
    });
    crate::cmd::audit::record(&crate::cmd::audit::audit_dir(home), &keys, Some(&vault), "protect", Some(name), details)
}
