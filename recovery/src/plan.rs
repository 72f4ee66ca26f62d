//! Recovery plans: fail a whole application over in order.
//!
//! A plan (TOML) is an ordered list of steps, each one of: a **group** of VMs
//! failed over in parallel (each a failover job of its own, see
//! [`crate::failover`]); a **script** run with the plan's name, kind and the
//! VMs recovered so far in its environment (a failure stops the plan with a
//! report, unless the step is `optional`); or a **manual** step, where the
//! run pauses until `lifeboat plan resume`.
//!
//! ```toml
//! name = "shop"
//!
//! [[step]]
//! group = "database"
//! vms = ["db"]
//!
//! [[step]]
//! script = "/srv/dr/db-ready.sh"     # absolute path, executable
//! timeout_seconds = 300
//! optional = false
//!
//! [[step]]
//! manual = "Check the database accepts writes, then resume"
//!
//! [[step]]
//! group = "app"
//! vms = ["app1", "app2"]
//! ```
//!
//! A run's state is `SITE/NAME/run.json`, rewritten atomically after every
//! step, so a crash or a pause resumes at the first step not done. There is
//! no limit on the number of groups or VMs beyond what the host can boot.

use std::collections::BTreeSet;
use std::fmt;
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::{RecoveryError, Refusal};
use crate::failover::{HealthResult, Job, Kind, Observer, Request, Site};
use crate::job_file::{self, Remedy};
use crate::run_file::RunFile;
use crate::step_log::{now_ns, Entry, Step, StepLog, Steps};
use crate::vmdef::check_name;

/// A plan file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The plan's name.
    pub name: String,
    /// Its steps, in order.
    #[serde(rename = "step")]
    pub steps: Vec<PlanStep>,
}

/// One step of a plan: exactly one of `group`, `script` or `manual`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// A group's name; with `vms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The group's VMs, failed over in parallel.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<String>,
    /// A script to run (absolute path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<PathBuf>,
    /// Its arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// A script's failure does not stop the plan.
    #[serde(default)]
    pub optional: bool,
    /// How long a script may run.
    #[serde(default = "default_script_timeout")]
    pub timeout_seconds: u64,
    /// What the operator must do before `lifeboat plan resume`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<String>,
}

fn default_script_timeout() -> u64 {
    600
}

/// What a plan step is (a checked plan's step is exactly one of these).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepKind<'a> {
    /// A group of VMs failed over in parallel.
    Group {
        /// The group's name.
        name: &'a str,
        /// Its VMs.
        vms: &'a [String],
    },
    /// A script run (its arguments, timeout and `optional` are the step's).
    Script {
        /// The script (absolute).
        path: &'a Path,
    },
    /// A pause until `lifeboat plan resume`.
    Manual {
        /// What the operator must do.
        text: &'a str,
    },
}

impl PlanStep {
    /// What the step is. The file form has three optional fields, of which
    /// [`Plan::validate`] lets exactly one be set; should more be, group
    /// wins over script over manual.
    pub fn kind(&self) -> StepKind<'_> {
        match (&self.group, &self.script) {
            (Some(name), _) => StepKind::Group { name, vms: &self.vms },
            (None, Some(path)) => StepKind::Script { path },
            (None, None) => StepKind::Manual { text: self.manual.as_deref().unwrap_or("") },
        }
    }

    /// A one-line description, for the live view and reports.
    pub fn describe(&self) -> String {
        match self.kind() {
            StepKind::Group { name, vms } => format!("group {name} ({})", vms.join(", ")),
            StepKind::Script { path } => {
                format!("script {}{}", path.display(), if self.optional { " (optional)" } else { "" })
            }
            StepKind::Manual { text } => format!("manual: {text}"),
        }
    }
}

impl Plan {
    /// Parses and checks a plan; `what` names it in errors.
    pub fn parse(text: &str, what: &str) -> Result<Plan, RecoveryError> {
        let plan: Plan = toml::from_str(text)
            .map_err(|e| RecoveryError::Definition { what: format!("plan {what}"), why: e.to_string() })?;
        plan.validate().map_err(|why| RecoveryError::Definition { what: format!("plan {what}"), why })?;
        Ok(plan)
    }

    /// Checks every step; the error names the step and what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        check_name("plan name", &self.name)?;
        if !self.steps.iter().any(|s| s.group.is_some()) {
            return Err("a plan needs at least one [[step]] with a group of VMs".into());
        }
        let mut seen = BTreeSet::new();
        for (i, s) in self.steps.iter().enumerate() {
            let n = i + 1;
            let kinds =
                usize::from(s.group.is_some()) + usize::from(s.script.is_some()) + usize::from(s.manual.is_some());
            if kinds != 1 {
                return Err(format!("step {n}: give exactly one of group (with vms), script or manual"));
            }
            if let Some(g) = &s.group {
                check_name(&format!("step {n}: group"), g)?;
                if s.vms.is_empty() {
                    return Err(format!("step {n}: group {g:?} lists no vms"));
                }
                for vm in &s.vms {
                    check_name(&format!("step {n}: VM"), vm)?;
                    if !seen.insert(vm.clone()) {
                        return Err(format!("step {n}: VM {vm:?} is in the plan twice"));
                    }
                }
            } else if !s.vms.is_empty() {
                return Err(format!("step {n}: vms belong to a group step"));
            }
            if let Some(p) = &s.script {
                if !p.is_absolute() {
                    return Err(format!("step {n}: script {} must be an absolute path", p.display()));
                }
                let executable = fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
                if !executable.unwrap_or(false) {
                    return Err(format!("step {n}: script {} does not exist or is not executable", p.display()));
                }
                crate::trust::check_private_executable(p, "plan script").map_err(|e| format!("step {n}: {e}"))?;
                if !(1..=86_400).contains(&s.timeout_seconds) {
                    return Err(format!("step {n}: timeout_seconds must be 1 to 86400"));
                }
            } else if s.optional || !s.args.is_empty() {
                return Err(format!("step {n}: optional and args belong to a script step"));
            }
            if s.manual.as_deref().is_some_and(|m| m.trim().is_empty()) {
                return Err(format!("step {n}: a manual step needs the text of what to do"));
            }
        }
        Ok(())
    }

    /// Every VM in the plan, in order.
    pub fn vms(&self) -> Vec<&str> {
        self.steps.iter().flat_map(|s| s.vms.iter().map(String::as_str)).collect()
    }
}

/// Where a plan run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// Steps are running (or were, when Lifeboat died).
    Running,
    /// Waiting at a manual step for `lifeboat plan resume`.
    Paused,
    /// A step failed; the plan stopped there.
    Failed,
    /// Every step is done.
    Done,
}

/// Where a plan step is. Kept in `run.json` and printed as the words in
/// each variant's documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PlanStepState {
    /// "running".
    #[serde(rename = "running")]
    Running,
    /// "done".
    #[serde(rename = "done")]
    Done,
    /// "failed": the plan stopped here.
    #[serde(rename = "failed")]
    Failed,
    /// "failed (optional)": an optional script failed; the plan went on.
    #[serde(rename = "failed (optional)")]
    FailedOptional,
    /// "waiting": a manual step, until `lifeboat plan resume`.
    #[serde(rename = "waiting")]
    Waiting,
}

impl PlanStepState {
    /// The words in JSON and in the live view.
    pub fn as_str(self) -> &'static str {
        match self {
            PlanStepState::Running => "running",
            PlanStepState::Done => "done",
            PlanStepState::Failed => "failed",
            PlanStepState::FailedOptional => "failed (optional)",
            PlanStepState::Waiting => "waiting",
        }
    }
}

impl fmt::Display for PlanStepState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one plan step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its place in the plan, from 1.
    pub number: usize,
    /// What it is.
    pub what: String,
    /// Where it is.
    pub state: PlanStepState,
    /// When it started.
    pub started_ns: u64,
    /// When it ended.
    pub ended_ns: Option<u64>,
    /// What happened.
    pub detail: String,
    /// For a group: each VM's point, health and RTO.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vms: Vec<Value>,
}

impl StepRecord {
    /// Step `number`, `what`, starting now.
    fn start(number: usize, what: String) -> StepRecord {
        StepRecord {
            number,
            what,
            state: PlanStepState::Running,
            started_ns: now_ns(),
            ended_ns: None,
            detail: String::new(),
            vms: Vec::new(),
        }
    }
}

impl Entry for StepRecord {
    type State = PlanStepState;

    /// A waiting step has not ended: the operator ends it.
    fn finish(&mut self, state: PlanStepState, detail: String, now_ns: u64) {
        self.state = state;
        self.detail = detail;
        if state != PlanStepState::Waiting {
            self.ended_ns = Some(now_ns);
        }
    }

    fn running(&self) -> bool {
        self.state == PlanStepState::Running
    }
}

/// A plan run. Kept in `run.json` as a [`RunFile`] (see [`crate::run_file`]).
#[derive(Debug, Clone, PartialEq)]
pub struct PlanRun {
    /// The plan as it was when the run started.
    pub plan: Plan,
    /// The failover kind of every VM.
    pub kind: Kind,
    /// Where it is.
    pub state: RunState,
    /// When it started.
    pub started_ns: u64,
    /// Steps started so far.
    pub steps: Vec<StepRecord>,
    /// From the start to the last group's health check passing.
    pub rto_seconds: Option<f64>,
    /// Where the vault and key came from (for `plan resume`).
    pub origin: Option<crate::failover::Origin>,
    /// Every VM is booted by instant recovery.
    pub instant: bool,
}

impl PlanRun {
    /// The JSON `lifeboat plan run --json` prints.
    pub fn to_json(&self) -> Value {
        json!({
            "plan": self.plan.name, "kind": self.kind.as_str(), "state": self.state,
            "rto_seconds": self.rto_seconds, "steps": self.steps,
        })
    }
}

impl Steps for PlanRun {
    type Entry = StepRecord;

    fn steps(&mut self) -> &mut Vec<StepRecord> {
        &mut self.steps
    }
}

/// A run's step log (see [`crate::step_log`]).
type RunLog<'a> = StepLog<'a, PlanRun>;

/// Called as the run goes: a step started or ended, and audit records.
pub struct PlanObserver<'a> {
    /// A step started or ended.
    pub step: &'a (dyn Fn(&StepRecord) + Sync),
    /// A VM's failover step (plan step number, VM, step).
    pub vm_step: &'a (dyn Fn(usize, &str, &Step) + Sync),
    /// An audit record; an error stops the run.
    pub audit: &'a (dyn Fn(&str, Value) -> Result<(), String> + Sync),
}

impl PlanObserver<'_> {
    fn record(&self, kind: &str, details: Value) -> Result<(), RecoveryError> {
        (self.audit)(kind, details).map_err(|why| RecoveryError::Audit { record: kind.to_string(), why })
    }
}

/// The runs of one site's plans: `root/NAME/run.json`.
pub struct Plans {
    root: PathBuf,
}

impl Plans {
    /// Plan runs under `root` (`HOME/plans`).
    pub fn new(root: PathBuf) -> Plans {
        Plans { root }
    }

    fn path(&self, plan: &str) -> PathBuf {
        self.root.join(plan).join("run.json")
    }

    /// The plan's run, if any. A `run.json` of an unknown format version,
    /// malformed or contradicting itself is refused
    /// ([`RecoveryError::StateFile`]) and left as it is.
    pub fn load(&self, plan: &str) -> Result<Option<PlanRun>, RecoveryError> {
        check_name("plan name", plan).map_err(|why| Refusal::BadName { name: plan.to_string(), why })?;
        job_file::load::<RunFile, PlanRun>(&self.path(plan), || Remedy::RemoveRunDir(self.root.join(plan)))
    }

    fn save(&self, run: &PlanRun) -> Result<(), RecoveryError> {
        let path = self.path(&run.plan.name);
        let dir = path.parent().expect("run.json has a directory");
        crate::trust::private_dir_all(dir).map_err(|e| RecoveryError::io("creating", dir, e))?;
        job_file::save(&path, &RunFile::from(run))
    }

    /// Removes a finished or abandoned run's record.
    pub fn forget(&self, plan: &str) -> Result<(), RecoveryError> {
        let dir = self.root.join(plan);
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(RecoveryError::io("removing", &dir, e)),
            _ => Ok(()),
        }
    }

    /// Starts a run of `plan`, or resumes one that stopped (paused at a
    /// manual step, failed, or interrupted). `template` is the failover
    /// request every VM gets (its `vm` is replaced per VM).
    pub fn run(
        &self,
        plan: &Plan,
        kind: Kind,
        site: &Site,
        template: &Request<'_>,
        obs: &PlanObserver<'_>,
    ) -> Result<PlanRun, RecoveryError> {
        let mut run = self.start_or_resume(plan, kind, template, obs)?;
        let save = |r: &PlanRun| self.save(r);
        let mut show = |r: &StepRecord| (obs.step)(r);
        let mut audit = |kind: &str, details: Value| (obs.audit)(kind, details);
        let mut log = RunLog::new(&mut run, &save, &mut show, &mut audit);
        log.save()?;
        let group = |step: &PlanStep, number: usize| group(step, number, site, template, obs);
        self.steps(&mut log, plan, &group)?;
        Ok(run)
    }

    /// The plan's run to go on with (marked running), or a new one;
    /// refuses a run that ended or one made another way.
    fn start_or_resume(
        &self,
        plan: &Plan,
        kind: Kind,
        template: &Request<'_>,
        obs: &PlanObserver<'_>,
    ) -> Result<PlanRun, RecoveryError> {
        match self.load(&plan.name)? {
            Some(r) if r.state == RunState::Done => {
                Err(Refusal::PlanDone { plan: plan.name.clone(), kind: r.kind }.into())
            }
            Some(r) if r.kind != kind || r.plan != *plan || r.instant != template.instant.is_some() => {
                Err(Refusal::PlanInProgress {
                    plan: plan.name.clone(),
                    kind: r.kind,
                    state: r.state,
                    same_plan: r.plan == *plan,
                }
                .into())
            }
            Some(mut r) => {
                obs.record("plan.resume", json!({ "plan": plan.name, "kind": kind.as_str() }))?;
                r.state = RunState::Running;
                Ok(r)
            }
            None => {
                obs.record("plan.start", json!({ "plan": plan.name, "kind": kind.as_str(), "vms": plan.vms() }))?;
                Ok(PlanRun {
                    plan: plan.clone(),
                    kind,
                    state: RunState::Running,
                    started_ns: now_ns(),
                    steps: Vec::new(),
                    rto_seconds: None,
                    origin: template.origin.clone(),
                    instant: template.instant.is_some(),
                })
            }
        }
    }

    /// Runs the steps not done yet, until one waits or fails, or the end.
    fn steps(&self, log: &mut RunLog<'_>, plan: &Plan, group: Group<'_>) -> Result<(), RecoveryError> {
        for number in 1..=plan.steps.len() {
            if confirm_or_skip(log, plan, number)? {
                continue;
            }
            let (state, kind, details) = match self.run_step(log, plan, number, group)? {
                PlanStepState::Waiting => {
                    (RunState::Paused, "plan.paused", json!({ "plan": plan.name, "step": number }))
                }
                PlanStepState::Failed => {
                    let detail = log.last().detail.clone();
                    (RunState::Failed, "plan.failed", json!({ "plan": plan.name, "step": number, "detail": detail }))
                }
                PlanStepState::Running | PlanStepState::Done | PlanStepState::FailedOptional => continue,
            };
            log.doc.state = state;
            log.save()?;
            return log.record(kind, details);
        }
        log.doc.state = RunState::Done;
        log.save()?;
        let (kind, rto) = (log.doc.kind, log.doc.rto_seconds);
        log.record("plan.done", json!({ "plan": plan.name, "kind": kind.as_str(), "rto_seconds": rto }))
    }

    /// Runs step `number` of `plan` (anew, if it ran before and failed or
    /// was interrupted); returns how it ended.
    fn run_step(
        &self,
        log: &mut RunLog<'_>,
        plan: &Plan,
        number: usize,
        group: Group<'_>,
    ) -> Result<PlanStepState, RecoveryError> {
        let step = &plan.steps[number - 1];
        log.doc.steps.retain(|r| r.number != number);
        log.begin(StepRecord::start(number, step.describe()))?;
        log.record("plan.step.start", json!({ "plan": plan.name, "step": number, "what": step.describe() }))?;
        let (state, detail, vms) = match step.kind() {
            StepKind::Group { .. } => group_outcome(log.doc, group(step, number)),
            StepKind::Script { path } => {
                let recovered: Vec<&str> =
                    plan.steps[..number - 1].iter().flat_map(|s| s.vms.iter().map(String::as_str)).collect();
                let dir = self.root.join(&plan.name);
                match run_script(path, step, &plan.name, log.doc.kind, &recovered, number, &dir) {
                    Ok(out) => (PlanStepState::Done, out, Vec::new()),
                    Err(e) if step.optional => (PlanStepState::FailedOptional, e, Vec::new()),
                    Err(e) => (PlanStepState::Failed, e, Vec::new()),
                }
            }
            StepKind::Manual { text } => (PlanStepState::Waiting, text.to_string(), Vec::new()),
        };
        log.last().vms = vms;
        log.end(state, detail)?;
        let rec = log.last().clone();
        log.record(
            "plan.step",
            json!({ "plan": plan.name, "step": number, "what": rec.what, "result": state, "detail": rec.detail, "vms": rec.vms }),
        )?;
        Ok(state)
    }
}

/// Fails over a group step's VMs (see [`group`]).
type Group<'a> = &'a dyn Fn(&PlanStep, usize) -> Vec<(String, Result<Job, String>)>;

/// Whether step `number` is over: done, failed but optional, or a manual
/// step that was waiting, which resuming confirms (the operator's "done").
fn confirm_or_skip(log: &mut RunLog<'_>, plan: &Plan, number: usize) -> Result<bool, RecoveryError> {
    let Some(at) = log.doc.steps.iter().position(|r| r.number == number) else { return Ok(false) };
    match log.doc.steps[at].state {
        PlanStepState::Done | PlanStepState::FailedOptional => Ok(true),
        PlanStepState::Waiting => {
            log.end_at(at, PlanStepState::Done, "confirmed by `lifeboat plan resume`".into())?;
            let what = log.doc.steps[at].what.clone();
            log.record("plan.step", json!({ "plan": plan.name, "step": number, "what": what, "result": "done" }))?;
            Ok(true)
        }
        PlanStepState::Running | PlanStepState::Failed => Ok(false),
    }
}

/// A group step's result from each VM's failover: done when every VM
/// booted with its health passed (the run's RTO then counts to now).
fn group_outcome(
    run: &mut PlanRun,
    outcome: Vec<(String, Result<Job, String>)>,
) -> (PlanStepState, String, Vec<Value>) {
    let vms: Vec<Value> = outcome
        .iter()
        .map(|(vm, r)| match r {
            Ok(j) => {
                json!({ "vm": vm, "point": j.point(), "health": j.health, "rto_seconds": j.rto_seconds, "instant": j.instant })
            }
            Err(e) => json!({ "vm": vm, "error": e }),
        })
        .collect();
    let why: Vec<String> = outcome
        .iter()
        .filter_map(|(vm, r)| match r {
            Ok(j) if j.health == Some(HealthResult::Passed) => None,
            Ok(j) => Some(format!("{vm}: health {}", j.health_detail.as_deref().unwrap_or("failed"))),
            Err(e) => Some(format!("{vm}: {e}")),
        })
        .collect();
    if why.is_empty() {
        run.rto_seconds = Some(Duration::from_nanos(now_ns().saturating_sub(run.started_ns)).as_secs_f64());
        (PlanStepState::Done, format!("{} VM(s) booted, health passed", outcome.len()), vms)
    } else {
        (PlanStepState::Failed, why.join("; "), vms)
    }
}

/// Fails over every VM of a group step in parallel.
fn group(
    step: &PlanStep,
    number: usize,
    site: &Site,
    template: &Request<'_>,
    obs: &PlanObserver<'_>,
) -> Vec<(String, Result<Job, String>)> {
    // The audit log is appended to one record at a time.
    let audit_lock = Mutex::new(());
    std::thread::scope(|scope| {
        let handles: Vec<_> = step
            .vms
            .iter()
            .map(|vm| {
                let audit_lock = &audit_lock;
                scope.spawn(move || {
                    let req = Request {
                        vm,
                        kind: template.kind,
                        point: template.point,
                        vault: template.vault,
                        keys: template.keys,
                        networks: template.networks,
                        definition: None,
                        qemu: template.qemu,
                        origin: template.origin.clone(),
                        instant: template.instant,
                        prelude: Vec::new(),
                        choice: template.choice.clone(),
                    };
                    let mut on_step = |s: &Step| (obs.vm_step)(number, vm, s);
                    let mut audit = |kind: &str, details: Value| {
                        let _held = audit_lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        (obs.audit)(kind, details)
                    };
                    let r = site.failover(&req, &mut Observer { step: &mut on_step, audit: &mut audit });
                    (vm.clone(), r.map_err(|e| e.to_string()))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("a failover thread panicked")).collect()
    })
}

/// Runs a script step; its output goes to `dir/step-N.log`. Ok: a summary;
/// Err: why it failed, with the end of its output.
fn run_script(
    script: &Path,
    step: &PlanStep,
    plan: &str,
    kind: Kind,
    recovered: &[&str],
    number: usize,
    dir: &Path,
) -> Result<String, String> {
    // Checked again at each run: the script may have been made loose since
    // the plan was loaded.
    crate::trust::check_private_executable(script, "plan script").map_err(|e| e.to_string())?;
    let log = dir.join(format!("step-{number}.log"));
    let out = crate::trust::private_file(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let started = Instant::now();
    let mut child = Command::new(script)
        .args(&step.args)
        .env("LIFEBOAT_PLAN", plan)
        .env("LIFEBOAT_PLAN_KIND", kind.as_str())
        .env("LIFEBOAT_PLAN_STEP", number.to_string())
        .env("LIFEBOAT_PLAN_VMS", recovered.join(" "))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    let limit = Duration::from_secs(step.timeout_seconds);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) if started.elapsed() >= limit => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => return Err(format!("waiting for {}: {e}", script.display())),
        }
    };
    let tail = tail(&log, 400);
    match status {
        Some(s) if s.success() => {
            Ok(format!("exit 0 in {:.1} s (output: {})", started.elapsed().as_secs_f64(), log.display()))
        }
        Some(s) => Err(format!("{} failed ({s}); its output ({}) ends: {tail}", script.display(), log.display())),
        None => Err(format!(
            "{} ran past its {} s timeout and was killed; output ends: {tail}",
            script.display(),
            limit.as_secs()
        )),
    }
}

/// The last `n` bytes of a file, as one line.
fn tail(path: &Path, n: u64) -> String {
    let mut s = String::new();
    if let Ok(mut f) = File::open(path) {
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        let _ = std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(len.saturating_sub(n)));
        let _ = f.read_to_string(&mut s);
    }
    s.trim().replace('\n', " | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_parse_and_bad_ones_name_the_step() {
        let good = "name = \"shop\"\n[[step]]\ngroup = \"db\"\nvms = [\"db\"]\n[[step]]\nmanual = \"check\"\n\
                    [[step]]\ngroup = \"web\"\nvms = [\"w1\", \"w2\"]\n";
        let p = Plan::parse(good, "t").unwrap();
        assert_eq!(p.vms(), ["db", "w1", "w2"]);
        for (text, needle) in [
            ("name = \"p\"\n[[step]]\nmanual = \"x\"\n", "at least one"),
            ("name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = [\"a\"]\nmanual = \"x\"\n", "step 1: give exactly one"),
            ("name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = []\n", "lists no vms"),
            (
                "name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = [\"a\"]\n[[step]]\ngroup = \"h\"\nvms = [\"a\"]\n",
                "step 2: VM \"a\" is in the plan twice",
            ),
            ("name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = [\"a\"]\n[[step]]\nscript = \"run.sh\"\n", "absolute"),
            (
                "name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = [\"a\"]\n[[step]]\nscript = \"/nonexistent/x\"\n",
                "not executable",
            ),
            ("name = \"p\"\n[[step]]\ngroup = \"g\"\nvms = [\"a\"]\noptional = true\n", "belong to a script"),
            ("name = \"p\"\n[[steps]]\n", "unknown field"),
        ] {
            let e = Plan::parse(text, "t").unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_plan_may_hold_many_groups_and_vms() {
        let mut text = String::from("name = \"big\"\n");
        for g in 0..12 {
            text.push_str(&format!("[[step]]\ngroup = \"g{g}\"\nvms = ["));
            let vms: Vec<String> = (0..10).map(|v| format!("\"vm-{g}-{v}\"")).collect();
            text.push_str(&vms.join(", "));
            text.push_str("]\n");
        }
        let p = Plan::parse(&text, "big").unwrap();
        assert_eq!((p.steps.len(), p.vms().len()), (12, 120));
    }

    #[test]
    fn scripts_get_the_plan_in_their_environment_and_a_failure_shows_its_output() {
        let dir = tempfile::tempdir().unwrap();
        let ok = dir.path().join("ok.sh");
        fs::write(
            &ok,
            "#!/bin/sh\necho \"$LIFEBOAT_PLAN $LIFEBOAT_PLAN_KIND $LIFEBOAT_PLAN_STEP [$LIFEBOAT_PLAN_VMS]\"\n",
        )
        .unwrap();
        fs::set_permissions(&ok, fs::Permissions::from_mode(0o755)).unwrap();
        let step = PlanStep {
            group: None,
            vms: vec![],
            script: Some(ok.clone()),
            args: vec![],
            optional: false,
            timeout_seconds: 10,
            manual: None,
        };
        run_script(&ok, &step, "shop", Kind::Test, &["db", "app"], 2, dir.path()).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("step-2.log")).unwrap(), "shop test 2 [db app]\n");
        let bad = dir.path().join("bad.sh");
        fs::write(&bad, "#!/bin/sh\necho the database is not up >&2\nexit 3\n").unwrap();
        fs::set_permissions(&bad, fs::Permissions::from_mode(0o755)).unwrap();
        let e = run_script(&bad, &step, "shop", Kind::Test, &[], 3, dir.path()).unwrap_err();
        assert!(e.contains("exit status: 3") && e.contains("the database is not up"), "{e}");
        let slow = dir.path().join("slow.sh");
        fs::write(&slow, "#!/bin/sh\nsleep 30\n").unwrap();
        fs::set_permissions(&slow, fs::Permissions::from_mode(0o755)).unwrap();
        let quick = PlanStep { timeout_seconds: 1, ..step };
        let e = run_script(&slow, &quick, "shop", Kind::Test, &[], 4, dir.path()).unwrap_err();
        assert!(e.contains("timeout"), "{e}");
    }

    #[test]
    fn a_script_made_writable_by_others_after_loading_does_not_run() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("ready.sh");
        let ran = dir.path().join("ran");
        fs::write(&script, format!("#!/bin/sh\ntouch {}\n", ran.display())).unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o757)).unwrap();
        let step = PlanStep {
            group: None,
            vms: vec![],
            script: Some(script.clone()),
            args: vec![],
            optional: false,
            timeout_seconds: 10,
            manual: None,
        };
        let e = run_script(&script, &step, "shop", Kind::Test, &[], 2, dir.path()).unwrap_err();
        assert!(e.contains("plan script") && e.contains(&format!("chmod go-w {}", script.display())), "{e}");
        assert!(!ran.exists(), "the loose script ran");
    }
}
