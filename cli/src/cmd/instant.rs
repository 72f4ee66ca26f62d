//! `lifeboat instant-serve` (hidden): the process `lifeboat failover
//! --instant` starts for each disk. Serves a recovery point over NBD on a
//! unix socket, fetching blocks from the vault on first read, while copying
//! the rest into a local image; SIGTERM stops it.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use recovery::instant::{serve, InstantDisk};
use vault::Vault;

use crate::home::Home;
use crate::signals;

#[derive(clap::Args)]
pub struct Args {
    /// The vault.
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: vault::Location,
    /// The customer key file.
    #[arg(long)]
    key: PathBuf,
    /// The disk whose point to serve.
    #[arg(long)]
    disk: String,
    /// The vault chain the point is in (default: found with the key, from the only disk of that name).
    #[arg(long)]
    chain: Option<String>,
    /// The point id.
    #[arg(long)]
    point: u64,
    /// The local image blocks are fetched into.
    #[arg(long)]
    image: PathBuf,
    /// Its present-blocks bitmap.
    #[arg(long)]
    bitmap: PathBuf,
    /// The NBD unix socket to listen on.
    #[arg(long)]
    socket: PathBuf,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    signals::block_termination().context("blocking SIGTERM/SIGINT")?;
    let keys = Arc::new(crate::keyfile::load(&a.key)?);
    let vault = Arc::new(super::vault::open(home, &a.vault)?);
    vault.check_key(&keys)?;
    // Held while serving: retention does not prune the point meanwhile.
    let chain = match a.chain.clone() {
        Some(c) => c,
        None => {
            let disks = vault.disks_by_identity(&keys)?;
            let disk = disks.pick(&a.disk, &vault::DiskChoice::default(), &vault.backend().location())?;
            disk.point(a.point).with_context(|| format!("disk {:?} has no point {}", a.disk, a.point))?.chain.clone()
        }
    };
    let _hold = vault.hold(&chain, a.point, "instant recovery")?;
    let reader = Vault::point_reader(&vault, &chain, a.point, &keys)
        .with_context(|| format!("point {} of disk {:?}", a.point, a.disk))?;
    let disk = Arc::new(
        InstantDisk::open(reader, &a.image, &a.bitmap)
            .with_context(|| format!("opening {} for instant recovery", a.image.display()))?,
    );
    let name = a.disk.clone();
    let watched = Arc::clone(&disk);
    let (point, where_) = (a.point, a.socket.display().to_string());
    serve(Arc::clone(&disk), &a.socket, &a.disk, move |shutdown| {
        tracing::info!("instant {name}: serving point {point} on {where_}");
        let _ = std::thread::Builder::new().name("signals".into()).spawn(move || {
            let sig = signals::wait_termination();
            let (present, total) = watched.present_blocks();
            tracing::info!("instant {name}: {sig}: stopping ({present} of {total} blocks local)");
            shutdown.shutdown();
        });
    })
    .context("serving NBD")?;
    let (present, total) = disk.present_blocks();
    let (fetched, on_demand) = disk.fetched();
    tracing::info!(
        "instant {}: stopped; {present} of {total} blocks local, {fetched} fetched ({on_demand} on demand)",
        a.disk
    );
    Ok(())
}

/// What `lifeboat failover --instant` uses to start one server per disk:
/// this binary's `instant-serve` in `home` (a `lifeboat://` vault is
/// reached with the credentials `site join` stored there), detached in its
/// own process group with its output in `IMAGE.log`; returns its pid once
/// its socket accepts connections (or the reason it did not start).
pub fn launcher(
    home: &Home,
    vault: vault::Location,
    key: PathBuf,
) -> impl Fn(&recovery::failover::DiskPoint, &Path, &Path, &Path) -> Result<u32, String> + Sync {
    let home = super::failover::absolute(home.root());
    move |p, image, bitmap, socket| {
        let disk = p.disk.as_str();
        let exe = std::env::current_exe().map_err(|e| format!("finding the lifeboat binary: {e}"))?;
        let log_path = image.with_extension("log");
        let log =
            recovery::trust::private_file(&log_path).map_err(|e| format!("creating {}: {e}", log_path.display()))?;
        let _ = std::fs::remove_file(socket);
        let mut child = Command::new(exe)
            .arg("--home")
            .arg(&home)
            .arg("instant-serve")
            .arg("--vault")
            .arg(match &vault {
                // A path goes as it is (it may not be UTF-8); the server
                // parses the argument back into the same location.
                vault::Location::Path(dir) => dir.as_os_str().to_owned(),
                server => server.to_string().into(),
            })
            .arg("--key")
            .arg(&key)
            .args(["--disk", disk, "--chain", p.chain(), "--point", &p.point.to_string()])
            .arg("--image")
            .arg(image)
            .arg("--bitmap")
            .arg(bitmap)
            .arg("--socket")
            .arg(socket)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting the instant-recovery server: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if std::os::unix::net::UnixStream::connect(socket).is_ok() {
                return Ok(child.id());
            }
            if let Ok(Some(status)) = child.try_wait() {
                let text = std::fs::read_to_string(&log_path).unwrap_or_default();
                return Err(format!("the instant-recovery server of disk {disk:?} exited ({status}): {}", text.trim()));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err(format!("the instant-recovery server of disk {disk:?} did not listen within 120 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
