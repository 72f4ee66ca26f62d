//! Failover jobs: choose a point, materialize its disks, boot the VM, check
//! its health; and the commit and cleanup that end a failover.
//!
//! A job is a list of steps kept in `SITE/VM/job.json`, rewritten atomically
//! after every change, so a crash of Lifeboat at any moment leaves a file that
//! says which step was running. Running the same command again resumes: done
//! steps are skipped (a materialized disk exists under its final name only
//! once complete and synced; a half-written one is a `.partial` file that is
//! started over), and a VM that is still running is not booted twice. A lock
//! on `SITE/VM/lock` keeps two failover commands of one VM apart.
//!
//! Kinds: a **test** failover boots the point on an isolated network while
//! replication goes on, and `cleanup` removes everything it made. An
//! **unplanned** failover boots on the mapped production networks; until it
//! is committed, running it again with another `--point` stops the VM and
//! boots that point instead (the vault still holds every point, so no choice
//! is lost), and `commit` makes it final.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use disk_format::keys::Keys;
use disk_format::RootExtension;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use vault::{DiskPoints, Vault};

use crate::error::RecoveryError;
use crate::health::{self, Verdict};
use crate::launch::{self, Network, QemuConfig, Running};
use crate::vmdef::VmDefinition;

/// What kind of failover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Boot a point in isolation while replication goes on; cleaned up after.
    Test,
    /// The source site is gone: boot a chosen point; commit makes it final.
    Unplanned,
    /// The source VM was stopped cleanly and its last changes shipped
    /// before this job (the caller's part); boot that final point. Final
    /// once healthy: zero data loss.
    Planned,
}

impl Kind {
    /// The word used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Test => "test",
            Kind::Unplanned => "unplanned",
            Kind::Planned => "planned",
        }
    }
}

/// Which point to fail over to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PointChoice {
    /// The newest undamaged point.
    Latest,
    /// The newest undamaged app-consistent point.
    LatestApp,
    /// A point id of the VM's first disk (`lifeboat points DISK`).
    Id(u64),
}

/// Where a job is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Steps are running (or were, when Lifeboat died).
    Running,
    /// The VM was booted and its health checked.
    Booted,
    /// A step failed; running the command again retries from it.
    Failed,
    /// An unplanned failover made final.
    Committed,
}

/// One step of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Step {
    /// What it does, e.g. "restore disk web1-root".
    pub name: String,
    /// "running", "done" or "failed".
    pub state: String,
    /// When it started, ns since the epoch.
    pub started_ns: u64,
    /// When it ended.
    pub ended_ns: Option<u64>,
    /// What it found or did.
    pub detail: String,
}

/// The point one disk is failed over to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskPoint {
    /// The disk.
    pub disk: String,
    /// The vault chain the point is in (the disk's namespace; its name for
    /// format-1 points and for jobs written before chains had names).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub chain: String,
    /// Its point id.
    pub point: u64,
    /// The point's cut, ns since the epoch.
    pub cut_time_ns: u64,
    /// The materialized image.
    pub image: PathBuf,
    /// With instant recovery: the process serving the point over NBD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub served: Option<Served>,
}

impl DiskPoint {
    /// The chain under which the vault stores the point.
    pub fn chain(&self) -> &str {
        if self.chain.is_empty() {
            &self.disk
        } else {
            &self.chain
        }
    }

    /// The local copy instant recovery fills (beside `image`).
    pub fn instant_image(&self) -> PathBuf {
        self.image.with_extension("instant")
    }

    /// Its present-blocks bitmap.
    pub fn instant_bitmap(&self) -> PathBuf {
        self.image.with_extension("present")
    }

    /// The disk the recovered VM ran on: the instant copy if it was served
    /// that way, else the restored image.
    pub fn local_image(&self) -> PathBuf {
        if self.served.is_some() {
            self.instant_image()
        } else {
            self.image.clone()
        }
    }
}

/// A disk served by instant recovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Served {
    /// The serving process.
    pub pid: u32,
    /// Its NBD unix socket.
    pub socket: PathBuf,
}

impl Served {
    /// Whether the process is still alive and still this disk's server.
    pub fn alive(&self) -> bool {
        launch::process_alive_with_arg(self.pid, &self.socket)
    }

    /// Stops the server: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&self) -> Result<(), RecoveryError> {
        for (sig, wait) in [(libc::SIGTERM, 10), (libc::SIGKILL, 10)] {
            if !self.alive() {
                return Ok(());
            }
            // `alive` just checked the pid is this disk's server.
            let _ = system::process::signal(self.pid, sig);
            let deadline = Instant::now() + Duration::from_secs(wait);
            while self.alive() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if self.alive() {
            return Err(RecoveryError::Qemu(format!("the instant-recovery server pid {} survived SIGKILL", self.pid)));
        }
        Ok(())
    }
}

/// Starts a detached process serving `point` of `disk` over NBD on
/// `socket`, fetching into `image` (its present bitmap in `bitmap`); returns
/// its pid once it listens.
pub type ServeInstant<'a> = &'a (dyn Fn(&DiskPoint, &Path, &Path, &Path) -> Result<u32, String> + Sync);

/// Where a job's vault and key file are, so that commit and cleanup (run
/// later, maybe with no other reference to them) can record in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// The vault directory.
    pub vault: PathBuf,
    /// The customer key file (its path only; the key is never stored here).
    pub key: PathBuf,
}

/// A failover job, as kept in `job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    /// The VM.
    pub vm: String,
    /// Its kind.
    pub kind: Kind,
    /// Where it is.
    pub state: JobState,
    /// When it started, ns since the epoch (the RTO counts from here).
    pub started_ns: u64,
    /// The chosen point of each disk, once chosen.
    pub points: Vec<DiskPoint>,
    /// The definition it boots, once found.
    pub definition: Option<VmDefinition>,
    /// The steps so far.
    pub steps: Vec<Step>,
    /// The running VM, once booted.
    pub process: Option<Running>,
    /// "passed" or "failed", once checked.
    pub health: Option<String>,
    /// Why the health check failed, or the line that passed it.
    pub health_detail: Option<String>,
    /// From the job's start to a passed health check (or to the failure).
    pub rto_seconds: Option<f64>,
    /// Where the vault and key came from.
    #[serde(default)]
    pub origin: Option<Origin>,
    /// Booted from the vault by instant recovery (no restore first).
    #[serde(default)]
    pub instant: bool,
    /// Its disks were shipped back (`lifeboat failback --prepare`): a
    /// committed failover may then be cleaned up.
    #[serde(default)]
    pub failed_back: bool,
}

impl Job {
    /// The point of the VM's first disk.
    pub fn point(&self) -> Option<u64> {
        self.points.first().map(|p| p.point)
    }

    /// The JSON `lifeboat failover --json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "vm": self.vm,
            "kind": self.kind.as_str(),
            "state": self.state,
            "point": self.point(),
            "points": self.points,
            "rto_seconds": self.rto_seconds,
            "health": self.health,
            "health_detail": self.health_detail,
            "pid": self.process.as_ref().filter(|p| p.alive()).map(|p| p.pid),
            "console": self.process.as_ref().map(|p| &p.console),
            "steps": self.steps,
        })
    }
}

/// Nanoseconds since the Unix epoch.
pub use system::clock::now_ns;

/// The failovers of one recovery site: a directory per VM.
pub struct Site {
    root: PathBuf,
}

/// Everything a failover run needs besides the site.
pub struct Request<'a> {
    /// The VM.
    pub vm: &'a str,
    /// Its kind.
    pub kind: Kind,
    /// The point; `None` keeps a resumed job's point (or takes the latest).
    pub point: Option<PointChoice>,
    /// The vault the VM's disks replicate to.
    pub vault: &'a Vault,
    /// The customer key.
    pub keys: &'a Keys,
    /// Recovery-site networks, by the name the definition's NICs use
    /// (ignored by a test failover, which isolates every NIC).
    pub networks: &'a BTreeMap<String, Network>,
    /// Use this definition instead of the one stored with the point.
    pub definition: Option<VmDefinition>,
    /// How to run QEMU.
    pub qemu: &'a QemuConfig,
    /// Where `vault` and `keys` came from, kept in the job.
    pub origin: Option<Origin>,
    /// Instant recovery: serve each disk from the vault with this instead
    /// of restoring it first.
    pub instant: Option<ServeInstant<'a>>,
    /// Steps the caller already ran for a new job (a planned failover's
    /// source shutdown and final cycle), recorded first.
    pub prelude: Vec<Step>,
    /// Which disk of the VM's first disk's name is meant, when the vault
    /// holds several (hosts that each protect a disk of that name); the
    /// VM's other disks are then taken from the same host.
    pub choice: vault::DiskChoice,
}

/// Called with each step as it starts and ends (the live view), and with
/// each audit record: `(kind, details)`.
pub struct Observer<'a> {
    /// A step started or ended.
    pub step: &'a mut dyn FnMut(&Step),
    /// An action to record in the audit log; an error stops the job.
    pub audit: &'a mut dyn FnMut(&str, Value) -> Result<(), String>,
}

/// An exclusive lock on one VM's failover directory, released on drop.
struct Lock(#[allow(dead_code)] File);

impl Site {
    /// The site whose failovers live under `root` (`HOME/failovers`).
    pub fn new(root: PathBuf) -> Site {
        Site { root }
    }

    fn dir(&self, vm: &str) -> PathBuf {
        self.root.join(vm)
    }

    fn job_path(&self, vm: &str) -> PathBuf {
        self.dir(vm).join("job.json")
    }

    fn lock(&self, vm: &str) -> Result<Lock, RecoveryError> {
        crate::vmdef::check_name("VM name", vm).map_err(RecoveryError::Refused)?;
        let dir = self.dir(vm);
        crate::trust::private_dir_all(&dir).map_err(|e| RecoveryError::io("creating", &dir, e))?;
        let path = dir.join("lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| RecoveryError::io("opening", &path, e))?;
        if !system::lock::try_lock_exclusive(&f).map_err(|e| RecoveryError::io("locking", &path, e))? {
            return Err(RecoveryError::Refused(format!(
                "another `lifeboat failover` of VM {vm:?} is running right now (it holds {}); wait for it",
                path.display()
            )));
        }
        Ok(Lock(f))
    }

    /// The VM's job, if it has one.
    pub fn load(&self, vm: &str) -> Result<Option<Job>, RecoveryError> {
        let path = self.job_path(vm);
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(RecoveryError::io("reading", &path, e)),
        };
        serde_json::from_str(&text).map(Some).map_err(|e| {
            RecoveryError::Refused(format!(
                "{} is damaged ({e}); nothing was changed. Look at the VM's files in {} and remove the directory \
                 to start over",
                path.display(),
                self.dir(vm).display()
            ))
        })
    }

    fn save(&self, job: &Job) -> Result<(), RecoveryError> {
        let path = self.job_path(&job.vm);
        let text = serde_json::to_vec_pretty(job).expect("a job serializes");
        system::file::replace(&path, &text).map_err(|e| RecoveryError::io("writing", &path, e))
    }

    /// Runs (or resumes) a failover; see the module documentation. Returns
    /// the job as it ended: booted with its health passed or failed, or
    /// with the error of the step that failed (the job is then `Failed` and
    /// running the command again retries from that step).
    pub fn failover(&self, req: &Request<'_>, obs: &mut Observer<'_>) -> Result<Job, RecoveryError> {
        let _lock = self.lock(req.vm)?;
        let mut job = match self.load(req.vm)? {
            None => None,
            Some(j) if j.state == JobState::Committed => {
                return Err(RecoveryError::Refused(format!(
                    "the {} failover of VM {:?} to point {} was committed; the VM runs at the recovery site now",
                    j.kind.as_str(),
                    j.vm,
                    j.point().unwrap_or(0)
                )))
            }
            Some(j) if j.kind != req.kind => {
                return Err(RecoveryError::Refused(format!(
                    "a {} failover of VM {:?} is active ({:?}); end it first with `lifeboat failover cleanup {}`{}",
                    j.kind.as_str(),
                    j.vm,
                    j.state,
                    j.vm,
                    if j.kind == Kind::Unplanned { " or `lifeboat failover commit`" } else { "" }
                )))
            }
            Some(j) => Some(j),
        };
        // A different point for an uncommitted failover: stop its VM, drop
        // its disks, start over (the vault still has the old point).
        if let (Some(j), Some(choice)) = (&job, req.point) {
            let wanted = match choice {
                PointChoice::Id(n) => Some(n),
                PointChoice::Latest | PointChoice::LatestApp => None,
            };
            if !j.points.is_empty() && wanted.is_some_and(|n| Some(n) != j.point()) {
                if j.kind == Kind::Test && j.state == JobState::Booted {
                    return Err(RecoveryError::Refused(format!(
                        "a test failover of VM {:?} to point {} is running; `lifeboat failover cleanup {}` first",
                        j.vm,
                        j.point().unwrap_or(0),
                        j.vm
                    )));
                }
                self.discard(j)?;
                (obs.audit)(
                    "failover.repoint",
                    json!({ "vm": j.vm, "kind": j.kind.as_str(), "from": j.point(), "to": wanted }),
                )
                .map_err(RecoveryError::Refused)?;
                job = None;
            }
        }
        let mut job = match job {
            Some(j) if j.state == JobState::Booted && j.process.as_ref().is_some_and(Running::alive) => return Ok(j),
            Some(mut j) => {
                j.state = JobState::Running;
                (obs.audit)("failover.resume", json!({ "vm": j.vm, "kind": j.kind.as_str(), "point": j.point() }))
                    .map_err(RecoveryError::Refused)?;
                j
            }
            None => {
                let j = Job {
                    vm: req.vm.to_string(),
                    kind: req.kind,
                    state: JobState::Running,
                    // The RTO counts from the first thing the failover did.
                    started_ns: req.prelude.first().map_or_else(now_ns, |s| s.started_ns),
                    points: Vec::new(),
                    definition: None,
                    steps: req.prelude.clone(),
                    process: None,
                    health: None,
                    health_detail: None,
                    rto_seconds: None,
                    origin: req.origin.clone(),
                    instant: req.instant.is_some(),
                    failed_back: false,
                };
                (obs.audit)("failover.start", json!({ "vm": j.vm, "kind": j.kind.as_str() }))
                    .map_err(RecoveryError::Refused)?;
                j
            }
        };
        self.save(&job)?;
        match self.steps(&mut job, req, obs) {
            Ok(()) => Ok(job),
            Err(e) if job.points.is_empty() => {
                // Refused before anything was made (no VM, no such point,
                // ...): nothing to resume, so no job is left behind.
                let dir = self.dir(&job.vm);
                fs::remove_dir_all(&dir).map_err(|io| RecoveryError::io("removing", &dir, io))?;
                let _ = (obs.audit)(
                    "failover.failed",
                    json!({ "vm": job.vm, "kind": job.kind.as_str(), "error": e.to_string() }),
                );
                Err(e)
            }
            Err(e) => {
                job.state = JobState::Failed;
                if let Some(s) = job.steps.last_mut().filter(|s| s.state == "running") {
                    s.state = "failed".into();
                    s.ended_ns = Some(now_ns());
                    s.detail = e.to_string();
                    (obs.step)(s);
                }
                self.save(&job)?;
                let _ = (obs.audit)(
                    "failover.failed",
                    json!({ "vm": job.vm, "kind": job.kind.as_str(), "point": job.point(), "error": e.to_string() }),
                );
                Err(e)
            }
        }
    }

    /// Runs the steps not done yet.
    fn steps(&self, job: &mut Job, req: &Request<'_>, obs: &mut Observer<'_>) -> Result<(), RecoveryError> {
        let dir = self.dir(&job.vm);
        if job.points.is_empty() {
            self.begin(job, "choose point", obs)?;
            let (def, points) = choose(req, &dir)?;
            let together = if points.len() > 1 {
                let ids: Vec<Option<[u8; 16]>> = points
                    .iter()
                    .map(|p| cut_group_at(req.vault, req.keys, p.chain(), p.point).map(|g| g.map(|g| g.id)))
                    .collect::<Result<_, _>>()?;
                if ids[0].is_some() && ids.iter().all(|i| *i == ids[0]) {
                    "; its disks' points were cut together".to_string()
                } else {
                    "; its disks' points were NOT cut together (each crash-consistent on its own)".to_string()
                }
            } else {
                String::new()
            };
            let p = &points[0];
            let detail = format!(
                "point {} of disk {} (cut {}), definition of VM {} with {} disk(s){together}",
                p.point,
                p.disk,
                disk_format::time::rfc3339(p.cut_time_ns, 3),
                def.name,
                def.disks.len()
            );
            job.definition = Some(def);
            job.points = points;
            self.end(job, detail, obs)?;
        }
        let def = job.definition.clone().expect("chosen with the points");
        let disks_dir = dir.join("disks");
        crate::trust::private_dir_all(&disks_dir).map_err(|e| RecoveryError::io("creating", &disks_dir, e))?;
        for (i, p) in job.points.clone().into_iter().enumerate() {
            if job.instant {
                if p.served.as_ref().is_some_and(Served::alive) {
                    continue;
                }
                let serve = req.instant.ok_or_else(|| {
                    RecoveryError::Refused(format!(
                        "the failover of VM {:?} was started with instant recovery; run it again with --instant",
                        job.vm
                    ))
                })?;
                self.begin(job, &format!("serve disk {} from the vault", p.disk), obs)?;
                let socket = disks_dir.join(format!("{}.sock", p.disk));
                let (image, bitmap) = (p.instant_image(), p.instant_bitmap());
                let t = Instant::now();
                let pid = serve(&p, &image, &bitmap, &socket).map_err(RecoveryError::Qemu)?;
                job.points[i].served = Some(Served { pid, socket: socket.clone() });
                let detail = format!(
                    "point {} served on {} by pid {pid} after {:.2} s; blocks are fetched on first read while a \
                     background copy fills {}",
                    p.point,
                    socket.display(),
                    t.elapsed().as_secs_f64(),
                    image.display()
                );
                self.end(job, detail, obs)?;
                continue;
            }
            if p.image.is_file() {
                continue;
            }
            self.begin(job, &format!("restore disk {}", p.disk), obs)?;
            let t = Instant::now();
            let tmp = p.image.with_extension("partial");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| RecoveryError::io("creating", &tmp, e))?;
            let report = req.vault.restore(p.chain(), p.point, req.keys, &file, &mut ())?;
            file.sync_all().map_err(|e| RecoveryError::io("syncing", &tmp, e))?;
            fs::rename(&tmp, &p.image).map_err(|e| RecoveryError::io("renaming", &tmp, e))?;
            let detail = format!(
                "point {} to {}: {} blocks, {} zero, {:.1} s, every block verified",
                p.point,
                p.image.display(),
                report.blocks_written,
                report.zero_blocks,
                t.elapsed().as_secs_f64()
            );
            self.end(job, detail, obs)?;
        }
        let running = job.process.clone().filter(Running::alive);
        let (vm, launched) = match running {
            Some(r) => (r, Instant::now()),
            None => {
                self.begin(job, "boot", obs)?;
                let networks = match job.kind {
                    Kind::Test => {
                        def.nics.iter().map(|n| (n.network.clone(), Network::User { isolated: true })).collect()
                    }
                    Kind::Unplanned | Kind::Planned => req.networks.clone(),
                };
                let images: Vec<launch::DiskSource> = job
                    .points
                    .iter()
                    .map(|p| match &p.served {
                        Some(s) => launch::DiskSource::Nbd { socket: s.socket.clone(), export: p.disk.clone() },
                        None => launch::DiskSource::File(p.image.clone()),
                    })
                    .collect();
                let launched = Instant::now();
                let r = launch::launch(&def, &images, &networks, &dir, req.qemu)?;
                job.process = Some(r.clone());
                let nets: Vec<String> =
                    def.nics.iter().map(|n| format!("{} -> {:?}", n.network, networks.get(&n.network))).collect();
                self.end(
                    job,
                    format!("QEMU pid {} ({}), networks: [{}]", r.pid, req.qemu.accel, nets.join(", ")),
                    obs,
                )?;
                (r, launched)
            }
        };
        self.begin(job, "health check", obs)?;
        let verdict = health::check(&def.health, &vm, launched);
        job.rto_seconds = Some(Duration::from_nanos(now_ns().saturating_sub(job.started_ns)).as_secs_f64());
        let detail = match &verdict {
            Verdict::Passed => {
                job.health = Some("passed".into());
                let what =
                    def.health.serial.as_ref().map_or("QEMU running".to_string(), |s| format!("console line {s:?}"));
                format!("passed: {what}, RTO {:.1} s", job.rto_seconds.unwrap_or(0.0))
            }
            Verdict::Failed(why) => {
                job.health = Some("failed".into());
                format!("failed: {why}")
            }
        };
        job.health_detail = Some(detail.clone());
        self.end(job, detail, obs)?;
        // A planned failover lost nothing and is final once healthy.
        job.state = if job.kind == Kind::Planned && job.health.as_deref() == Some("passed") {
            JobState::Committed
        } else {
            JobState::Booted
        };
        self.save(job)?;
        (obs.audit)(
            "failover.booted",
            json!({
                "vm": job.vm, "kind": job.kind.as_str(), "points": job.points.iter().map(|p| json!({"disk": p.disk, "point": p.point})).collect::<Vec<_>>(),
                "rto_seconds": job.rto_seconds, "health": job.health,
            }),
        )
        .map_err(RecoveryError::Refused)
    }

    fn begin(&self, job: &mut Job, name: &str, obs: &mut Observer<'_>) -> Result<(), RecoveryError> {
        job.steps.push(Step {
            name: name.to_string(),
            state: "running".into(),
            started_ns: now_ns(),
            ended_ns: None,
            detail: String::new(),
        });
        self.save(job)?;
        (obs.step)(job.steps.last().expect("just pushed"));
        Ok(())
    }

    fn end(&self, job: &mut Job, detail: String, obs: &mut Observer<'_>) -> Result<(), RecoveryError> {
        let s = job.steps.last_mut().expect("a step is running");
        s.state = "done".into();
        s.ended_ns = Some(now_ns());
        s.detail = detail;
        self.save(job)?;
        (obs.step)(job.steps.last().expect("a step is running"));
        Ok(())
    }

    /// Stops a job's VM and removes its disks.
    fn discard(&self, job: &Job) -> Result<(), RecoveryError> {
        if let Some(p) = &job.process {
            p.stop(Duration::from_secs(10))?;
        }
        for s in job.points.iter().filter_map(|p| p.served.as_ref()) {
            s.stop()?;
        }
        let disks = self.dir(&job.vm).join("disks");
        match fs::remove_dir_all(&disks) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecoveryError::io("removing", &disks, e)),
            _ => Ok(()),
        }
    }

    /// Records that a committed failover's disks were shipped back.
    pub fn mark_failed_back(&self, vm: &str) -> Result<Job, RecoveryError> {
        let _lock = self.lock(vm)?;
        let mut job =
            self.load(vm)?.ok_or_else(|| RecoveryError::NotFound(format!("VM {vm:?} has no failover at this site")))?;
        job.failed_back = true;
        self.save(&job)?;
        Ok(job)
    }

    /// Makes an unplanned failover (or a planned one whose health check
    /// failed) final.
    pub fn commit(&self, vm: &str, obs: &mut Observer<'_>) -> Result<Job, RecoveryError> {
        let _lock = self.lock(vm)?;
        let Some(mut job) = self.load(vm)? else {
            return Err(RecoveryError::NotFound(format!("VM {vm:?} has no failover to commit at this site")));
        };
        match (job.kind, job.state) {
            (Kind::Unplanned | Kind::Planned, JobState::Booted) => {}
            (Kind::Unplanned | Kind::Planned, JobState::Committed) => return Ok(job),
            (Kind::Test, _) => {
                return Err(RecoveryError::Refused(format!(
                    "the failover of VM {vm:?} is a test; it cannot be committed (`lifeboat failover cleanup {vm}` ends it)"
                )))
            }
            (_, state) => {
                return Err(RecoveryError::Refused(format!(
                    "the {} failover of VM {vm:?} is {state:?}, not booted; run `lifeboat failover {vm} --{}` \
                     again to finish it, then commit",
                    job.kind.as_str(),
                    job.kind.as_str()
                )))
            }
        }
        job.state = JobState::Committed;
        self.save(&job)?;
        (obs.audit)("failover.commit", json!({ "vm": vm, "point": job.point(), "rto_seconds": job.rto_seconds }))
            .map_err(RecoveryError::Refused)?;
        Ok(job)
    }

    /// Removes everything a (test or uncommitted) failover made: stops its
    /// VM, deletes its disks and its job. Returns what it removed.
    pub fn cleanup(&self, vm: &str, obs: &mut Observer<'_>) -> Result<Job, RecoveryError> {
        let lock = self.lock(vm)?;
        let Some(job) = self.load(vm)? else {
            drop(lock);
            let _ = fs::remove_dir_all(self.dir(vm));
            return Err(RecoveryError::NotFound(format!(
                "VM {vm:?} has no failover at this site; nothing to clean up"
            )));
        };
        if job.state == JobState::Committed && !job.failed_back {
            return Err(RecoveryError::Refused(format!(
                "the failover of VM {vm:?} was committed: its VM and disks are production now and are not removed \
                 (after `lifeboat failback {vm} --prepare` they may be)"
            )));
        }
        self.discard(&job)?;
        let dir = self.dir(vm);
        drop(lock);
        fs::remove_dir_all(&dir).map_err(|e| RecoveryError::io("removing", &dir, e))?;
        (obs.audit)("failover.cleanup", json!({ "vm": vm, "kind": job.kind.as_str(), "point": job.point() }))
            .map_err(RecoveryError::Refused)?;
        Ok(job)
    }
}

/// Finds the VM's definition and the point of each of its disks.
fn choose(req: &Request<'_>, dir: &Path) -> Result<(VmDefinition, Vec<DiskPoint>), RecoveryError> {
    let disks = req.vault.disks_by_identity(req.keys)?;
    let location = req.vault.backend().location();
    let (located, first_disk) = match &req.definition {
        Some(d) => (d.clone(), disks.pick(&d.disks[0], &req.choice, &location)?),
        None => locate_in(req.vault, req.keys, req.vm, &disks, &req.choice)?,
    };
    let first = &located.disks[0].clone();
    let points = &first_disk.points;
    let pick = match req.point.unwrap_or(PointChoice::Latest) {
        PointChoice::Latest => points.iter().rev().find(|p| p.damage.is_none()).ok_or_else(|| {
            RecoveryError::NotFound(format!("disk {first:?} of VM {:?} has no usable recovery point", req.vm))
        })?,
        PointChoice::LatestApp => points
            .iter()
            .rev()
            .find(|p| p.damage.is_none() && p.consistency == disk_format::Consistency::App)
            .ok_or_else(|| {
                RecoveryError::NotFound(format!(
                    "disk {first:?} of VM {:?} has no app-consistent point (`lifeboat points {first}`)",
                    req.vm
                ))
            })?,
        PointChoice::Id(n) => {
            let p = points.iter().find(|p| p.sequence == n).ok_or_else(|| {
                RecoveryError::NotFound(format!(
                    "disk {first:?} of VM {:?} has no point {n} (see `lifeboat points {first} --vault ...`)",
                    req.vm
                ))
            })?;
            if let Some(d) = &p.damage {
                return Err(RecoveryError::Refused(format!("{d}; pick another point with --point")));
            }
            p
        }
    };
    // The VM as it was at that cut, unless the caller gave a definition.
    let def = match &req.definition {
        Some(d) => d.clone(),
        None => definition_at(req.vault, req.keys, &pick.chain, pick.sequence)?
            .filter(|d| d.name == req.vm)
            .unwrap_or(located),
    };
    let group = if def.disks.len() > 1 { cut_group_at(req.vault, req.keys, &pick.chain, pick.sequence)? } else { None };
    let mut out = Vec::new();
    for disk in &def.disks {
        let (chain, point, cut) = if disk == first {
            (pick.chain.clone(), pick.sequence, pick.cut_time_ns)
        } else {
            let other = same_host(&disks, disk, first_disk, &req.choice, &location)?;
            let ps = &other.points;
            // The point of the same group cut, if the first disk's was one
            // (its cut time is within moments of the first disk's) ...
            let mut same = None;
            if let Some(g) = group {
                for p in ps
                    .iter()
                    .rev()
                    .filter(|p| p.damage.is_none() && p.cut_time_ns.abs_diff(pick.cut_time_ns) < 60_000_000_000)
                {
                    if cut_group_at(req.vault, req.keys, &p.chain, p.sequence)?.is_some_and(|h| h.id == g.id) {
                        same = Some(p);
                        break;
                    }
                }
            }
            // ... else the newest point not after the first disk's cut:
            // each disk crash-consistent, the set not.
            let p = match same {
                Some(p) => p,
                None => ps.iter().rev().find(|p| p.damage.is_none() && p.cut_time_ns <= pick.cut_time_ns).ok_or_else(
                    || {
                        RecoveryError::NotFound(format!(
                            "disk {disk:?} of VM {:?} has no point cut before point {} of {first:?}",
                            req.vm, pick.sequence
                        ))
                    },
                )?,
            };
            (p.chain.clone(), p.sequence, p.cut_time_ns)
        };
        out.push(DiskPoint {
            disk: disk.clone(),
            chain,
            point,
            cut_time_ns: cut,
            image: dir.join("disks").join(format!("{disk}.raw")),
            served: None,
        });
    }
    Ok((def, out))
}

/// The disk named `name` that belongs with `first` (a VM's first disk): the
/// only one of that name, else the one protected from `first`'s host (a VM's
/// disks replicate from one host), else the one `choice` picks.
fn same_host<'a>(
    disks: &'a vault::Disks,
    name: &str,
    first: &DiskPoints,
    choice: &vault::DiskChoice,
    location: &str,
) -> Result<&'a DiskPoints, RecoveryError> {
    let named: Vec<&DiskPoints> = disks.disks.iter().filter(|d| d.name == name).collect();
    if named.len() > 1 && !first.host.is_empty() {
        let from_first: Vec<&DiskPoints> = named.iter().copied().filter(|d| d.host == first.host).collect();
        if let [one] = from_first.as_slice() {
            return Ok(one);
        }
    }
    let by_host = vault::DiskChoice { disk_id: None, host: choice.host.clone() };
    Ok(disks.pick(name, &by_host, location)?)
}

/// The group cut point `sequence` of `disk` was taken in, if any.
pub fn cut_group_at(
    vault: &Vault,
    keys: &Keys,
    disk: &str,
    sequence: u64,
) -> Result<Option<disk_format::CutGroup>, RecoveryError> {
    let root = vault.load_root(disk, sequence, Some(keys))?;
    let ext = RootExtension::decode(&root.extension, keys).map_err(|e| RecoveryError::Definition {
        what: format!("stored with point {sequence} of disk {disk:?}"),
        why: e.to_string(),
    })?;
    Ok(ext.cut_group)
}

/// The VM definition stored with point `sequence` of `disk`, if it has one.
pub fn definition_at(
    vault: &Vault,
    keys: &Keys,
    disk: &str,
    sequence: u64,
) -> Result<Option<VmDefinition>, RecoveryError> {
    let root = vault.load_root(disk, sequence, Some(keys))?;
    let what = format!("stored with point {sequence} of disk {disk:?}");
    let ext = RootExtension::decode(&root.extension, keys)
        .map_err(|e| RecoveryError::Definition { what: what.clone(), why: e.to_string() })?;
    let Some(bytes) = ext.vm_definition else { return Ok(None) };
    let text = String::from_utf8(bytes)
        .map_err(|_| RecoveryError::Definition { what: what.clone(), why: "not UTF-8".into() })?;
    VmDefinition::parse(&text, &what).map(Some)
}

/// Finds VM `vm`'s definition in the vault: the newest point of each disk
/// carries the definition of the VM it belongs to. When several hosts each
/// protect a VM of that name, the one `choice` picks (its first disk's
/// identity or host); else an error listing them.
pub fn locate(vault: &Vault, keys: &Keys, vm: &str, choice: &vault::DiskChoice) -> Result<VmDefinition, RecoveryError> {
    let disks = vault.disks_by_identity(keys)?;
    locate_in(vault, keys, vm, &disks, choice).map(|(def, _)| def)
}

/// [`locate`] among `disks` (read once with the key), with the first disk's points.
pub fn locate_in<'a>(
    vault: &Vault,
    keys: &Keys,
    vm: &str,
    disks: &'a vault::Disks,
    choice: &vault::DiskChoice,
) -> Result<(VmDefinition, &'a DiskPoints), RecoveryError> {
    let mut found = Vec::new();
    for d in &disks.disks {
        let Some(last) = d.points.iter().rev().find(|p| p.damage.is_none()) else { continue };
        if let Some(def) = definition_at(vault, keys, &last.chain, last.sequence)? {
            if def.name == vm && def.disks.first() == Some(&d.name) && choice.accepts(d) {
                found.push((def, d));
            }
        }
    }
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => Err(RecoveryError::NotFound(format!(
            "no disk in vault {} carries a definition of VM {vm:?}{}: define it where it runs with `lifeboat vm \
             define {vm} --disk DISK ...` (the definition travels with the next point), or pass --definition FILE",
            vault.backend().location(),
            if *choice == vault::DiskChoice::default() { "" } else { " that --disk-id/--from-host accept" },
        ))),
        n => Err(RecoveryError::Refused(format!(
            "vault {} holds {n} VMs named {vm:?} (protected from different hosts, or protected anew); nothing says \
             which one is meant, so nothing was done: {}. Name one with --from-host HOST or --disk-id ID (of its \
             first disk)",
            vault.backend().location(),
            vault::disks::describe(&found.iter().map(|(_, d)| *d).collect::<Vec<_>>())
        ))),
    }
}
