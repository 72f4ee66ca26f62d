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
use vault::{DiskPoints, Location, PointSummary, Vault};

use crate::error::{QemuError, RecoveryError, Refusal};
use crate::health::{self, Verdict};
use crate::job_file::{self, JobFile, Remedy};
use crate::launch::{self, Network, QemuConfig, Running};
pub use crate::step_log::{now_ns, Step, StepName, StepState};
use crate::step_log::{StepLog, Steps};
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

/// How a job's health check ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthResult {
    /// Every check passed.
    Passed,
    /// A check did not pass (the job's `health_detail` says why).
    Failed,
}

impl HealthResult {
    /// The word in JSON and in the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            HealthResult::Passed => "passed",
            HealthResult::Failed => "failed",
        }
    }
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
        system::process::alive_with_arg(self.pid, self.socket.as_os_str())
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
            return Err(QemuError::ServerSurvivedKill { pid: self.pid }.into());
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
    /// Where the vault is (stored as its path or URL, as the vault
    /// directory's path was before vault servers).
    pub vault: Location,
    /// The customer key file (its path only; the key is never stored here).
    pub key: PathBuf,
}

/// A failover job. Kept in `job.json` as a [`JobFile`] (see
/// [`crate::job_file`]).
#[derive(Debug, Clone, PartialEq)]
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
    /// The health check's result, once checked.
    pub health: Option<HealthResult>,
    /// Why the health check failed, or the line that passed it.
    pub health_detail: Option<String>,
    /// From the job's start to a passed health check (or to the failure).
    pub rto_seconds: Option<f64>,
    /// Where the vault and key came from.
    pub origin: Option<Origin>,
    /// Booted from the vault by instant recovery (no restore first).
    pub instant: bool,
    /// Its disks were shipped back (`lifeboat failback --prepare`): a
    /// committed failover may then be cleaned up.
    pub failed_back: bool,
}

impl Job {
    /// A new job for `req`, its prelude (steps the caller ran) first.
    fn new(req: &Request<'_>) -> Job {
        Job {
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
        }
    }

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

/// A job's step log (see [`crate::step_log`]).
type JobLog<'a> = StepLog<'a, Job>;

impl Steps for Job {
    type Entry = Step;

    fn steps(&mut self) -> &mut Vec<Step> {
        &mut self.steps
    }
}

/// Writes an audit record outside a step log; a failure stops the job.
fn record(obs: &mut Observer<'_>, kind: &str, details: Value) -> Result<(), RecoveryError> {
    (obs.audit)(kind, details).map_err(|why| RecoveryError::Audit { record: kind.to_string(), why })
}

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
        crate::vmdef::check_name("VM name", vm).map_err(|why| Refusal::BadName { name: vm.to_string(), why })?;
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
            return Err(Refusal::Busy { vm: vm.to_string(), lock: path }.into());
        }
        Ok(Lock(f))
    }

    /// The VM's job, if it has one. A `job.json` of an unknown format
    /// version, malformed or contradicting itself is refused
    /// ([`RecoveryError::StateFile`]) and left as it is.
    pub fn load(&self, vm: &str) -> Result<Option<Job>, RecoveryError> {
        job_file::load::<JobFile, Job>(&self.job_path(vm), || Remedy::RemoveJobDir(self.dir(vm)))
    }

    fn save(&self, job: &Job) -> Result<(), RecoveryError> {
        job_file::save(&self.job_path(&job.vm), &JobFile::from(job))
    }

    /// Runs (or resumes) a failover; see the module documentation. Returns
    /// the job as it ended: booted with its health passed or failed, or
    /// with the error of the step that failed (the job is then `Failed` and
    /// running the command again retries from that step).
    pub fn failover(&self, req: &Request<'_>, obs: &mut Observer<'_>) -> Result<Job, RecoveryError> {
        let _lock = self.lock(req.vm)?;
        let mut job = match self.resumable(req, obs)? {
            Some(j) if j.state == JobState::Booted && j.process.as_ref().is_some_and(Running::alive) => return Ok(j),
            Some(mut j) => {
                j.state = JobState::Running;
                record(obs, "failover.resume", json!({ "vm": j.vm, "kind": j.kind.as_str(), "point": j.point() }))?;
                j
            }
            None => {
                let j = Job::new(req);
                record(obs, "failover.start", json!({ "vm": j.vm, "kind": j.kind.as_str() }))?;
                j
            }
        };
        self.save(&job)?;
        match self.steps(&mut job, req, obs) {
            Ok(()) => Ok(job),
            Err(e) => Err(self.failed(job, e, obs)),
        }
    }

    /// The VM's job to resume, if any: refuses a committed job or one of
    /// another kind; a different point for an uncommitted failover stops its
    /// VM, drops its disks and starts over (the vault still has the old
    /// point).
    fn resumable(&self, req: &Request<'_>, obs: &mut Observer<'_>) -> Result<Option<Job>, RecoveryError> {
        let j = match self.load(req.vm)? {
            None => return Ok(None),
            Some(j) if j.state == JobState::Committed => {
                return Err(Refusal::Committed { vm: j.vm.clone(), kind: j.kind, point: j.point().unwrap_or(0) }.into())
            }
            Some(j) if j.kind != req.kind => {
                return Err(Refusal::OtherKindActive { vm: j.vm.clone(), active: j.kind, state: j.state }.into())
            }
            Some(j) => j,
        };
        let wanted = match req.point {
            Some(PointChoice::Id(n)) => Some(n),
            Some(PointChoice::Latest | PointChoice::LatestApp) | None => None,
        };
        if j.points.is_empty() || wanted.is_none_or(|n| Some(n) == j.point()) {
            return Ok(Some(j));
        }
        if j.kind == Kind::Test && j.state == JobState::Booted {
            return Err(Refusal::TestRunning { vm: j.vm.clone(), point: j.point().unwrap_or(0) }.into());
        }
        self.discard(&j)?;
        record(
            obs,
            "failover.repoint",
            json!({ "vm": j.vm, "kind": j.kind.as_str(), "from": j.point(), "to": wanted }),
        )?;
        Ok(None)
    }

    /// Ends a job whose step failed with `e`: a job refused before anything
    /// was made (no VM, no such point, ...) has nothing to resume and is
    /// removed; else it is kept `Failed` at the step that failed. Returns
    /// the error to report.
    fn failed(&self, mut job: Job, e: RecoveryError, obs: &mut Observer<'_>) -> RecoveryError {
        if job.points.is_empty() {
            let dir = self.dir(&job.vm);
            if let Err(io) = fs::remove_dir_all(&dir) {
                return RecoveryError::io("removing", &dir, io);
            }
            let _ = (obs.audit)(
                "failover.failed",
                json!({ "vm": job.vm, "kind": job.kind.as_str(), "error": e.to_string() }),
            );
            return e;
        }
        let save = |j: &Job| self.save(j);
        let mut log = JobLog::new(&mut job, &save, &mut *obs.step, &mut *obs.audit);
        log.doc.state = JobState::Failed;
        let saved = if log.running().is_some() { log.end(StepState::Failed, e.to_string()) } else { log.save() };
        if let Err(s) = saved {
            return s;
        }
        let (vm, kind, point) = (log.doc.vm.clone(), log.doc.kind, log.doc.point());
        log.record_anyway(
            "failover.failed",
            json!({ "vm": vm, "kind": kind.as_str(), "point": point, "error": e.to_string() }),
        );
        e
    }

    /// Runs the steps not done yet.
    fn steps(&self, job: &mut Job, req: &Request<'_>, obs: &mut Observer<'_>) -> Result<(), RecoveryError> {
        let dir = self.dir(&job.vm);
        let save = |j: &Job| self.save(j);
        let mut log = JobLog::new(job, &save, &mut *obs.step, &mut *obs.audit);
        if log.doc.points.is_empty() {
            choose_step(&mut log, req, &dir)?;
        }
        let def = log.doc.definition.clone().expect("chosen with the points");
        let disks_dir = dir.join("disks");
        crate::trust::private_dir_all(&disks_dir).map_err(|e| RecoveryError::io("creating", &disks_dir, e))?;
        for i in 0..log.doc.points.len() {
            if log.doc.instant {
                serve_step(&mut log, req, i, &disks_dir)?;
            } else {
                restore_step(&mut log, req, i)?;
            }
        }
        let (vm, launched) = match log.doc.process.clone().filter(Running::alive) {
            Some(r) => (r, Instant::now()),
            None => boot_step(&mut log, req, &def, &dir)?,
        };
        health_step(&mut log, &def, &vm, launched)?;
        let job = &mut *log.doc;
        // A planned failover lost nothing and is final once healthy.
        job.state = if job.kind == Kind::Planned && job.health == Some(HealthResult::Passed) {
            JobState::Committed
        } else {
            JobState::Booted
        };
        let booted = json!({
            "vm": job.vm, "kind": job.kind.as_str(), "points": job.points.iter().map(|p| json!({"disk": p.disk, "point": p.point})).collect::<Vec<_>>(),
            "rto_seconds": job.rto_seconds, "health": job.health,
        });
        log.save()?;
        log.record("failover.booted", booted)
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
            (Kind::Test, _) => return Err(Refusal::CommitTest { vm: vm.to_string() }.into()),
            (kind, state) => return Err(Refusal::NotBooted { vm: vm.to_string(), kind, state }.into()),
        }
        job.state = JobState::Committed;
        self.save(&job)?;
        record(obs, "failover.commit", json!({ "vm": vm, "point": job.point(), "rto_seconds": job.rto_seconds }))?;
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
            return Err(Refusal::CleanupCommitted { vm: vm.to_string() }.into());
        }
        self.discard(&job)?;
        let dir = self.dir(vm);
        drop(lock);
        fs::remove_dir_all(&dir).map_err(|e| RecoveryError::io("removing", &dir, e))?;
        record(obs, "failover.cleanup", json!({ "vm": vm, "kind": job.kind.as_str(), "point": job.point() }))?;
        Ok(job)
    }
}

/// Chooses the point of each disk and the definition to boot.
fn choose_step(log: &mut JobLog<'_>, req: &Request<'_>, dir: &Path) -> Result<(), RecoveryError> {
    log.begin(Step::start(StepName::ChoosePoint))?;
    let (def, points) = choose(req, dir)?;
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
    log.doc.definition = Some(def);
    log.doc.points = points;
    log.end(StepState::Done, detail)
}

/// Instant recovery: serves disk `i` from the vault, unless its server still runs.
fn serve_step(log: &mut JobLog<'_>, req: &Request<'_>, i: usize, disks_dir: &Path) -> Result<(), RecoveryError> {
    let p = log.doc.points[i].clone();
    if p.served.as_ref().is_some_and(Served::alive) {
        return Ok(());
    }
    let serve = req.instant.ok_or_else(|| Refusal::NeedsInstant { vm: log.doc.vm.clone() })?;
    log.begin(Step::start(StepName::ServeDisk(p.disk.clone())))?;
    let socket = disks_dir.join(format!("{}.sock", p.disk));
    let (image, bitmap) = (p.instant_image(), p.instant_bitmap());
    let t = Instant::now();
    let pid = serve(&p, &image, &bitmap, &socket).map_err(|why| QemuError::Serve { disk: p.disk.clone(), why })?;
    log.doc.points[i].served = Some(Served { pid, socket: socket.clone() });
    let detail = format!(
        "point {} served on {} by pid {pid} after {:.2} s; blocks are fetched on first read while a background copy \
         fills {}",
        p.point,
        socket.display(),
        t.elapsed().as_secs_f64(),
        image.display()
    );
    log.end(StepState::Done, detail)
}

/// Restores disk `i` from the vault, unless its image is complete: it is
/// written as `.partial`, synced, then renamed.
fn restore_step(log: &mut JobLog<'_>, req: &Request<'_>, i: usize) -> Result<(), RecoveryError> {
    let p = log.doc.points[i].clone();
    if p.image.is_file() {
        return Ok(());
    }
    log.begin(Step::start(StepName::RestoreDisk(p.disk.clone())))?;
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
    drop(file);
    system::file::install(&tmp, &p.image).map_err(|e| match e.step {
        system::file::Step::SyncFile => RecoveryError::io("syncing", &tmp, e.source),
        system::file::Step::Rename => RecoveryError::io("renaming", &tmp, e.source),
        system::file::Step::SyncDir => RecoveryError::io("syncing directory", &e.dir, e.source),
    })?;
    let detail = format!(
        "point {} to {}: {} blocks, {} zero, {:.1} s, every block verified",
        p.point,
        p.image.display(),
        report.blocks_written,
        report.zero_blocks,
        t.elapsed().as_secs_f64()
    );
    log.end(StepState::Done, detail)
}

/// Boots the VM; returns it and when it was launched.
fn boot_step(
    log: &mut JobLog<'_>,
    req: &Request<'_>,
    def: &VmDefinition,
    dir: &Path,
) -> Result<(Running, Instant), RecoveryError> {
    log.begin(Step::start(StepName::Boot))?;
    let networks = match log.doc.kind {
        Kind::Test => def.nics.iter().map(|n| (n.network.clone(), Network::User { isolated: true })).collect(),
        Kind::Unplanned | Kind::Planned => req.networks.clone(),
    };
    let images: Vec<launch::DiskSource> = log
        .doc
        .points
        .iter()
        .map(|p| match &p.served {
            Some(s) => launch::DiskSource::Nbd { socket: s.socket.clone(), export: p.disk.clone() },
            None => launch::DiskSource::File(p.image.clone()),
        })
        .collect();
    let launched = Instant::now();
    let r = launch::launch(def, &images, &networks, dir, req.qemu)?;
    log.doc.process = Some(r.clone());
    let nets: Vec<String> =
        def.nics.iter().map(|n| format!("{} -> {:?}", n.network, networks.get(&n.network))).collect();
    log.end(StepState::Done, format!("QEMU pid {} ({}), networks: [{}]", r.pid, req.qemu.accel, nets.join(", ")))?;
    Ok((r, launched))
}

/// Checks the VM's health; the job keeps the result and the RTO.
fn health_step(log: &mut JobLog<'_>, def: &VmDefinition, vm: &Running, launched: Instant) -> Result<(), RecoveryError> {
    log.begin(Step::start(StepName::HealthCheck))?;
    let verdict = health::check(&def.health, vm, launched);
    let job = &mut *log.doc;
    job.rto_seconds = Some(Duration::from_nanos(now_ns().saturating_sub(job.started_ns)).as_secs_f64());
    let detail = match &verdict {
        Verdict::Passed => {
            job.health = Some(HealthResult::Passed);
            let what = def.health.serial.as_ref().map_or("QEMU running".to_string(), |s| format!("console line {s:?}"));
            format!("passed: {what}, RTO {:.1} s", job.rto_seconds.unwrap_or(0.0))
        }
        Verdict::Failed(why) => {
            job.health = Some(HealthResult::Failed);
            format!("failed: {why}")
        }
    };
    job.health_detail = Some(detail.clone());
    log.end(StepState::Done, detail)
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
    let pick = pick_first(req, first, &first_disk.points)?;
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
            let p = point_with(req, disk, &other.points, first, pick, group)?;
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

/// The point of the VM's first disk `first` that `req` asks for.
fn pick_first<'a>(
    req: &Request<'_>,
    first: &str,
    points: &'a [PointSummary],
) -> Result<&'a PointSummary, RecoveryError> {
    Ok(match req.point.unwrap_or(PointChoice::Latest) {
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
                return Err(Refusal::DamagedPoint { disk: first.to_string(), point: n, damage: d.clone() }.into());
            }
            p
        }
    })
}

/// The point of the VM's disk `disk` (its points `ps`) that goes with point
/// `pick` of its first disk `first`: the point of the same group cut, if
/// `pick` was one (its cut time is within moments of the first disk's),
/// else the newest point not after `pick`'s cut: each disk
/// crash-consistent, the set not.
fn point_with<'a>(
    req: &Request<'_>,
    disk: &str,
    ps: &'a [PointSummary],
    first: &str,
    pick: &PointSummary,
    group: Option<disk_format::CutGroup>,
) -> Result<&'a PointSummary, RecoveryError> {
    if let Some(g) = group {
        for p in
            ps.iter().rev().filter(|p| p.damage.is_none() && p.cut_time_ns.abs_diff(pick.cut_time_ns) < 60_000_000_000)
        {
            if cut_group_at(req.vault, req.keys, &p.chain, p.sequence)?.is_some_and(|h| h.id == g.id) {
                return Ok(p);
            }
        }
    }
    ps.iter().rev().find(|p| p.damage.is_none() && p.cut_time_ns <= pick.cut_time_ns).ok_or_else(|| {
        RecoveryError::NotFound(format!(
            "disk {disk:?} of VM {:?} has no point cut before point {} of {first:?}",
            req.vm, pick.sequence
        ))
    })
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
        count => Err(Refusal::AmbiguousVm {
            vault: vault.backend().location(),
            vm: vm.to_string(),
            count,
            candidates: vault::disks::describe(&found.iter().map(|(_, d)| *d).collect::<Vec<_>>()),
        }
        .into()),
    }
}
