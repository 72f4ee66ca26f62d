//! Failback: bring a VM's disks home after a failover, moving only the
//! blocks that differ.
//!
//! Two halves, each run by `lifeboat failback`:
//!
//! * [`prepare`], at the recovery site: power the recovered VM off, let
//!   instant recovery's local copies finish, protect each recovered disk as
//!   a disk of this host (same vault and key) and ship it. Blocks the vault
//!   already holds are not sent again, so only what the VM changed since the
//!   failover travels. The job is then marked failed back.
//! * [`bring_back`], at the original site: for each of the VM's disks, pick
//!   the copy the vault holds with the newest point (what `prepare` shipped),
//!   hold that point, and [`converge`] the local image to it; then start the
//!   disk's state over and record it in the audit log.
//!
//! Both are written against [`HostSide`], what only the protecting host can
//! do. Re-running either after a failure picks up where it stopped: a disk
//! already protected at the recovered image is not protected again, a cycle
//! ships only what the vault lacks, and converging a disk that already
//! matches its point fetches nothing.
//!
//! [`converge`] reads the local image block by block, computes each block's
//! keyed id (the same BLAKE3 the shipper names blocks with) and compares it
//! with the point's; only a block whose id differs is fetched from the vault
//! (authenticated) and written, and a block the point has as zero is zeroed.
//! The differing blocks are fetched after the comparison, 16 at a time
//! (`vault::par`), so a WAN's round trip is paid once per 16 blocks.
//! So the bytes fetched are those the two sides disagree on — what the
//! recovered VM changed since the failover, plus what the original disk
//! changed after the failover point — whatever the disk's size, and no
//! state file has to have survived at either site. The local disk is read
//! once, whole (hashing runs at several GB/s; the disk is the bound).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use disk_format::Keys;
use serde::Serialize;
use serde_json::{json, Value};
use vault::{DiskChoice, DiskPoints, PointReader, Vault, VaultError};

use crate::error::RecoveryError;
use crate::failover::{DiskPoint, JobState, Site};
use crate::host::{HostError, HostSide, ProtectRequest};

/// Why a failback stopped. Whatever it did before stays done; running the
/// same command again goes on from there.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FailbackError {
    /// `prepare` at a site with no failover of the VM.
    #[error("VM {vm:?} has no failover at this site to fail back")]
    NoFailover {
        /// The VM.
        vm: String,
    },
    /// `prepare` of a failover that is not committed.
    #[error(
        "the {kind} failover of VM {vm:?} is {state:?}: only a committed failover is failed back (`lifeboat \
         failover commit {vm}` first; a test failover is ended with cleanup)"
    )]
    NotCommitted {
        /// The VM.
        vm: String,
        /// The failover's kind.
        kind: &'static str,
        /// Its state.
        state: JobState,
    },
    /// `prepare` of a failover run where the VM is defined: it does not
    /// record the vault and key to ship back to.
    #[error("the failover of VM {vm:?} does not record its vault and key (it ran where the VM is defined)")]
    NoOrigin {
        /// The VM.
        vm: String,
    },
    /// The recovered VM could not be powered off; nothing was shipped.
    #[error("{source}; nothing was shipped: stop the VM cleanly and run `lifeboat failback {vm} --prepare` again")]
    PowerOff {
        /// The VM.
        vm: String,
        /// Why.
        source: Box<RecoveryError>,
    },
    /// An instant-recovery copy is incomplete and its server is gone.
    #[error(
        "the instant-recovery copy of disk {disk:?} of VM {vm:?} is incomplete ({present} of {blocks} blocks) and \
         its server is gone; run `lifeboat failover {vm} --unplanned --instant` to restart it, then failback again"
    )]
    CopyServerGone {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
        /// Blocks copied.
        present: u64,
        /// Blocks of the disk.
        blocks: u64,
    },
    /// An instant-recovery copy did not complete in time.
    #[error("the instant-recovery copy of disk {disk:?} is still incomplete ({present} of {blocks} blocks)")]
    CopyIncomplete {
        /// The disk.
        disk: String,
        /// Blocks copied.
        present: u64,
        /// Blocks of the disk.
        blocks: u64,
    },
    /// Shipping a recovered disk back failed.
    #[error("shipping disk {disk:?} of VM {vm:?} back")]
    Shipping {
        /// The VM.
        vm: String,
        /// The disk.
        disk: String,
        /// Why.
        source: HostError,
    },
    /// `bring_back` where the VM is not defined.
    #[error("VM {vm:?} is not defined in {}: run failback where it ran before", home.display())]
    NotDefinedHere {
        /// The VM.
        vm: String,
        /// The home it was looked for in.
        home: PathBuf,
    },
    /// A filter, agent or cycle holds the disk.
    #[error("disk {disk:?} is in use (the agent or a filter serves it): stop it, then run failback again")]
    DiskInUse {
        /// The disk.
        disk: String,
    },
    /// The vault holds no copy of the disk that the choice accepts.
    #[error(
        "vault {vault} holds no point of disk {disk:?}{}: run `lifeboat failback VM --prepare` at the recovery \
         site first (it ships the recovered disk back)",
        if *chosen { " that --disk-id/--from-host accept" } else { "" }
    )]
    NoCopy {
        /// The vault's location.
        vault: String,
        /// The disk.
        disk: String,
        /// Whether a disk id or host was asked for.
        chosen: bool,
    },
    /// The point asked for is not one of the copy's.
    #[error("the recovered copy of disk {disk:?} (identity {identity}) has no point {point}")]
    NoSuchPoint {
        /// The disk.
        disk: String,
        /// The copy's identity (hex).
        identity: String,
        /// The point asked for.
        point: u64,
    },
    /// Every point of the copy is damaged.
    #[error("the recovered copy of disk {disk:?} has no usable point")]
    NoUsablePoint {
        /// The disk.
        disk: String,
    },
    /// The point could not be opened for reading.
    #[error("point {point} of disk {disk:?}")]
    Point {
        /// The disk.
        disk: String,
        /// The point.
        point: u64,
        /// Why.
        source: Box<VaultError>,
    },
    /// Bringing the image to the point failed half-way; the failback marker
    /// keeps the disk out of use until a re-run finishes.
    #[error("bringing disk {disk:?} to point {point} (run the command again to finish)")]
    Converge {
        /// The disk.
        disk: String,
        /// The point.
        point: u64,
        /// Why.
        source: io::Error,
    },
    /// A local file could not be opened, written or removed.
    #[error("{what} {}", path.display())]
    File {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The failover's job could not be read or written.
    #[error(transparent)]
    Recovery(Box<RecoveryError>),
    /// The vault refused or failed.
    #[error(transparent)]
    Vault(Box<VaultError>),
    /// The host side failed (its message names what and why).
    #[error(transparent)]
    Host(HostError),
}

impl From<RecoveryError> for FailbackError {
    fn from(e: RecoveryError) -> FailbackError {
        FailbackError::Recovery(Box::new(e))
    }
}

impl From<VaultError> for FailbackError {
    fn from(e: VaultError) -> FailbackError {
        FailbackError::Vault(Box::new(e))
    }
}

impl FailbackError {
    fn file<'a>(what: &'static str, path: &'a std::path::Path) -> impl FnOnce(io::Error) -> FailbackError + 'a {
        move |source| FailbackError::File { what, path: path.to_path_buf(), source }
    }
}

/// What [`prepare`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// How the recovered VM was stopped.
    pub stopped: String,
    /// Bytes shipped back, all disks.
    pub bytes_shipped: u64,
    /// Disks shipped back.
    pub disks: usize,
    /// The audit record's details, also the command's JSON output:
    /// `{"vm", "stopped", "points": [{"disk", "disk_id", "point", ...}], "bytes_shipped"}`.
    pub details: Value,
}

/// At the recovery site: power the recovered VM of a committed failover off
/// (waiting up to `timeout`), let instant recovery's copies complete, then
/// protect each recovered disk here with the failover's vault and key and
/// ship it back; marks the job failed back and records `failback.prepare`.
pub fn prepare<H: HostSide>(site: &Site, host: &H, vm: &str, timeout: Duration) -> Result<Prepared, FailbackError> {
    let job = site.load(vm)?.ok_or_else(|| FailbackError::NoFailover { vm: vm.to_string() })?;
    if job.state != JobState::Committed {
        return Err(FailbackError::NotCommitted { vm: vm.to_string(), kind: job.kind.as_str(), state: job.state });
    }
    let origin = job.origin.clone().ok_or_else(|| FailbackError::NoOrigin { vm: vm.to_string() })?;
    let (keys, vault) = host.open_vault(&origin.vault, &origin.key).map_err(FailbackError::Host)?;
    let stopped = match job.process.as_ref().filter(|p| p.alive()) {
        Some(p) => {
            host.say(&format!("[{vm}] powering the recovered VM off (QMP system_powerdown) ..."));
            let off = crate::launch::power_off(&p.qmp, timeout)
                .map_err(|e| FailbackError::PowerOff { vm: vm.to_string(), source: Box::new(e) })?;
            if !off.clean {
                host.say(&format!(
                    "[{vm}] WARNING: {}. The recovered VM did NOT shut down cleanly: its disks ship back \
                     crash-consistent",
                    off.detail
                ));
            }
            off.detail
        }
        None => "already off".to_string(),
    };
    // Instant recovery: the local copies must be complete (the servers keep
    // copying after the VM is off), then their servers stop.
    for p in &job.points {
        let Some(served) = &p.served else { continue };
        wait_for_copy(host, &vault, p, vm, timeout)?;
        served.stop()?;
    }
    let mut points = Vec::new();
    let mut shipped = 0u64;
    for p in &job.points {
        let local = p.local_image();
        let protected = host.disk(&p.disk).is_ok_and(|d| d.image == local);
        if !protected {
            host.protect(&ProtectRequest {
                disk: &p.disk,
                image: &local,
                replicate_to: Some((&origin.vault, &origin.key)),
                reset_state: false,
            })
            .map_err(FailbackError::Host)?;
        }
        host.say(&format!("[{vm}] shipping disk {} back ...", p.disk));
        let r = host.run_cycle(&p.disk).map_err(|source| FailbackError::Shipping {
            vm: vm.to_string(),
            disk: p.disk.clone(),
            source,
        })?;
        shipped += r.bytes_shipped;
        let disk_id = host.disk_identity(&p.disk).ok().map(|id| disk_format::ids::hex(&id));
        points.push(json!({
            "disk": p.disk, "disk_id": disk_id, "point": r.sequence, "blocks_read": r.blocks_read,
            "new_blocks": r.new_blocks, "bytes_shipped": r.bytes_shipped,
        }));
    }
    site.mark_failed_back(vm)?;
    let disks = points.len();
    let details = json!({ "vm": vm, "stopped": stopped, "points": points, "bytes_shipped": shipped });
    host.audit(&keys, &vault, "failback.prepare", None, details.clone()).map_err(FailbackError::Host)?;
    Ok(Prepared { stopped, bytes_shipped: shipped, disks, details })
}

/// Waits until instant recovery's local copy of `p` holds every block.
fn wait_for_copy<H: HostSide>(
    host: &H,
    vault: &Vault,
    p: &DiskPoint,
    vm: &str,
    timeout: Duration,
) -> Result<(), FailbackError> {
    let summary = vault.points(p.chain())?.into_iter().find(|s| s.sequence == p.point);
    let blocks = summary.map_or(0, |s| s.disk_size.div_ceil(u64::from(s.block_size.max(1))));
    let started = Instant::now();
    loop {
        let present: u64 =
            std::fs::read(p.instant_bitmap()).map(|b| b.iter().map(|x| u64::from(x.count_ones())).sum()).unwrap_or(0);
        if present >= blocks {
            return Ok(());
        }
        if !p.served.as_ref().is_some_and(crate::failover::Served::alive) {
            return Err(FailbackError::CopyServerGone { vm: vm.to_string(), disk: p.disk.clone(), present, blocks });
        }
        if started.elapsed() > timeout.max(Duration::from_secs(3600)) {
            return Err(FailbackError::CopyIncomplete { disk: p.disk.clone(), present, blocks });
        }
        host.say(&format!("[{vm}] waiting for the local copy of disk {}: {present} of {blocks} blocks", p.disk));
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// Which point [`bring_back`] brings the disks to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BringBack {
    /// The point of the VM's first disk (default: the newest usable one of
    /// each disk's copy).
    pub point: Option<u64>,
    /// Which copy of each disk, when the vault holds several of its name
    /// (its `disk_id` applies to the first disk only); default: the one
    /// with the newest point.
    pub choice: DiskChoice,
    /// Whether the person asked for a copy (`choice` is not the default):
    /// named when nothing matches.
    pub chosen: bool,
}

/// What [`bring_back`] did.
#[derive(Debug, Clone, PartialEq)]
pub struct BroughtBack {
    /// Bytes fetched from the vault, all disks.
    pub bytes_fetched: u64,
    /// The command's JSON output: `{"vm", "disks": [{"disk", "point", "report"}], "bytes_fetched"}`
    /// (each disk's entry is its `failback.converge` audit record).
    pub details: Value,
}

/// At the original site: brings each of the VM's disks, in order, to the
/// point `how` picks of the copy the recovery site shipped back (see the
/// module documentation). Each disk is locked while it converges, marked
/// half-done until its state starts over, and recorded in the audit log
/// (`failback.converge`) before the next disk starts.
pub fn bring_back<H: HostSide>(host: &H, vm: &str, how: &BringBack) -> Result<BroughtBack, FailbackError> {
    let def = host
        .vm(vm)
        .map_err(FailbackError::Host)?
        .ok_or_else(|| FailbackError::NotDefinedHere { vm: vm.to_string(), home: host.home().to_path_buf() })?;
    let mut disks = Vec::new();
    let mut fetched = 0u64;
    for (i, disk) in def.disks.iter().enumerate() {
        let local = host.disk(disk).map_err(FailbackError::Host)?;
        let (keys, vault) = host.disk_vault(disk).map_err(FailbackError::Host)?;
        let (keys, vault) = (Arc::new(keys), Arc::new(vault));
        // Nothing may write the disk meanwhile.
        let lock = host
            .lock_state(disk)
            .map_err(FailbackError::Host)?
            .ok_or_else(|| FailbackError::DiskInUse { disk: disk.clone() })?;
        // The copy to bring back: the recovery site protects the recovered
        // disk as a disk of its own (`prepare`) under the same name.
        let copy = recovered_copy(&vault, &keys, disk, how, i == 0)?;
        let own = host.disk_identity(disk).map_err(FailbackError::Host)? == copy.disk_id;
        let (seq, chain) = match (i, how.point) {
            (0, Some(p)) => match copy.point(p) {
                Some(s) => (p, s.chain.clone()),
                None => {
                    return Err(FailbackError::NoSuchPoint {
                        disk: disk.clone(),
                        identity: copy.disk_id_hex(),
                        point: p,
                    })
                }
            },
            _ => copy
                .points
                .iter()
                .rev()
                .find(|p| p.damage.is_none())
                .map(|p| (p.sequence, p.chain.clone()))
                .ok_or_else(|| FailbackError::NoUsablePoint { disk: disk.clone() })?,
        };
        host.say(&format!(
            "[{vm}] disk {disk}: point {seq} of {}",
            if own {
                "this host's own disk (nothing was shipped back since)".to_string()
            } else {
                format!(
                    "the recovered copy, identity {} from host {}",
                    copy.disk_id_hex(),
                    if copy.host.is_empty() { "not recorded" } else { &copy.host }
                )
            }
        ));
        let _hold = vault.hold(&chain, seq, "failback")?;
        let reader = Vault::point_reader(&vault, &chain, seq, &keys).map_err(|e| FailbackError::Point {
            disk: disk.clone(),
            point: seq,
            source: Box::new(e),
        })?;
        let image = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&local.image)
            .map_err(FailbackError::file("opening", &local.image))?;
        host.say(&format!("[{vm}] bringing disk {disk} to point {seq}: comparing every block ..."));
        // Until it is done, the image is half old, half the point: the
        // marker keeps the agent, filter and cycles off it, and says so.
        let marker = &local.failback_marker;
        crate::trust::write_private(
            marker,
            format!("to point {seq}, started {}\n", disk_format::time::rfc3339(system::clock::now_ns(), 3)).as_bytes(),
        )
        .map_err(FailbackError::file("writing", marker))?;
        let mut progress = host.progress(&format!("[{vm}] disk {disk}: "));
        let report = converge(&reader, &keys, &image, progress.as_mut()).map_err(|source| FailbackError::Converge {
            disk: disk.clone(),
            point: seq,
            source,
        })?;
        drop(lock);
        // The disk now is the point: a fresh state, verified by the next cycle
        // (which finds nothing to send).
        host.protect(&ProtectRequest { disk, image: &local.image, replicate_to: None, reset_state: true })
            .map_err(FailbackError::Host)?;
        std::fs::remove_file(marker).map_err(FailbackError::file("removing", marker))?;
        fetched += report.fetched_bytes;
        let d = json!({ "disk": disk, "point": seq, "report": report });
        host.audit(&keys, &vault, "failback.converge", Some(disk), d.clone()).map_err(FailbackError::Host)?;
        disks.push(d);
    }
    Ok(BroughtBack { bytes_fetched: fetched, details: json!({ "vm": vm, "disks": disks, "bytes_fetched": fetched }) })
}

/// The copy of `disk` a failback brings back: among the vault's disks of that
/// name, the one `how` picks, else the one with the newest point — what
/// the last `prepare` shipped (the recovered copy, a disk of its own), or
/// this host's own disk when nothing was shipped back since.
fn recovered_copy(
    vault: &Vault,
    keys: &Keys,
    disk: &str,
    how: &BringBack,
    first: bool,
) -> Result<DiskPoints, FailbackError> {
    let all = vault.disks_by_identity(keys)?;
    let mut choice = how.choice.clone();
    if !first {
        choice.disk_id = None;
    }
    let newest = |d: &DiskPoints| d.points.iter().rev().find(|p| p.damage.is_none()).map(|p| p.cut_time_ns);
    all.named(disk).filter(|d| choice.accepts(d)).max_by_key(|d| newest(d)).cloned().ok_or_else(|| {
        FailbackError::NoCopy { vault: vault.backend().location(), disk: disk.to_string(), chosen: how.chosen }
    })
}

/// What a [`converge`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ConvergeReport {
    /// Blocks of the disk.
    pub blocks: u64,
    /// Blocks whose contents differed and were fetched and written.
    pub fetched_blocks: u64,
    /// Bytes fetched from the vault (plaintext).
    pub fetched_bytes: u64,
    /// Blocks the point has as zero that were not zero locally (zeroed).
    pub zeroed_blocks: u64,
}

/// Makes `image` byte for byte the point `reader` reads (see the module
/// documentation); `progress` counts blocks compared (one phase,
/// "comparing blocks"). The image must be the
/// disk's size.
pub fn converge(
    reader: &PointReader,
    keys: &Keys,
    image: &File,
    progress: &mut dyn vault::Progress,
) -> io::Result<ConvergeReport> {
    let g = reader.geometry();
    let len = image.metadata()?.len();
    if len != g.disk_size {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the disk is {len} bytes but the point's disk is {}: not the same disk", g.disk_size),
        ));
    }
    let mut report = ConvergeReport { blocks: g.block_count, ..ConvergeReport::default() };
    let mut local = vec![0u8; g.block_size as usize];
    let mut remote = vec![0u8; g.block_size as usize];
    let mut differ = Vec::new();
    progress.start("comparing blocks", g.block_count);
    for b in 0..g.block_count {
        let n = g.block_len(b);
        let at = g.block_range(b).start;
        image.read_exact_at(&mut local[..n], at)?;
        match reader.block_id(b) {
            None => {
                if local[..n].iter().any(|&x| x != 0) {
                    remote[..n].fill(0);
                    image.write_all_at(&remote[..n], at)?;
                    report.zeroed_blocks += 1;
                }
            }
            Some(id) => {
                if keys.block_id(&local[..n]) != *id {
                    differ.push(b);
                }
            }
        }
        if b % 256 == 255 || b + 1 == g.block_count {
            progress.advance(b % 256 + 1);
        }
    }
    // The blocks that differ, fetched with many reads in flight (over a
    // WAN one at a time would cost a round trip each).
    let fetched = vault::par::map(&differ, |&b| -> io::Result<u64> {
        let n = g.block_len(b);
        let mut remote = vec![0u8; n];
        reader.read_block(b, &mut remote).map_err(|e| io::Error::other(e.to_string()))?;
        image.write_all_at(&remote, g.block_range(b).start)?;
        Ok(n as u64)
    })?;
    report.fetched_blocks = fetched.len() as u64;
    report.fetched_bytes = fetched.iter().sum();
    image.sync_all()?;
    Ok(report)
}
