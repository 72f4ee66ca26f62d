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
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::error::RecoveryError;
use crate::failover::{now_ns, Job, Kind, Observer, Request, Site, Step};
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

impl PlanStep {
    /// A one-line description, for the live view and reports.
    pub fn describe(&self) -> String {
        if let Some(g) = &self.group {
            format!("group {g} ({})", self.vms.join(", "))
        } else if let Some(s) = &self.script {
            format!("script {}{}", s.display(), if self.optional { " (optional)" } else { "" })
        } else {
            format!("manual: {}", self.manual.as_deref().unwrap_or(""))
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

/// The outcome of one plan step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// Its place in the plan, from 1.
    pub number: usize,
    /// What it is.
    pub what: String,
    /// "running", "done", "failed", "failed (optional)" or "waiting".
    pub state: String,
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

/// A plan run, as kept in `run.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub origin: Option<crate::failover::Origin>,
    /// Every VM is booted by instant recovery.
    #[serde(default)]
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

/// Called as the run goes: a step started or ended, and audit records.
pub struct PlanObserver<'a> {
    /// A step started or ended.
    pub step: &'a (dyn Fn(&StepRecord) + Sync),
    /// A VM's failover step (plan step number, VM, step).
    pub vm_step: &'a (dyn Fn(usize, &str, &Step) + Sync),
    /// An audit record; an error stops the run.
    pub audit: &'a (dyn Fn(&str, Value) -> Result<(), String> + Sync),
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

    /// The plan's run, if any.
    pub fn load(&self, plan: &str) -> Result<Option<PlanRun>, RecoveryError> {
        check_name("plan name", plan).map_err(RecoveryError::Refused)?;
        let path = self.path(plan);
        match fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t).map(Some).map_err(|e| {
                RecoveryError::Refused(format!("{} is damaged ({e}); nothing was changed", path.display()))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(RecoveryError::io("reading", &path, e)),
        }
    }

    fn save(&self, run: &PlanRun) -> Result<(), RecoveryError> {
        let path = self.path(&run.plan.name);
        let dir = path.parent().expect("run.json has a directory");
        crate::trust::private_dir_all(dir).map_err(|e| RecoveryError::io("creating", dir, e))?;
        let text = serde_json::to_vec_pretty(run).expect("a run serializes");
        system::file::replace(&path, &text).map_err(|e| RecoveryError::io("writing", &path, e))
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
        let mut run = match self.load(&plan.name)? {
            Some(r) if r.state == RunState::Done => {
                return Err(RecoveryError::Refused(format!(
                    "plan {:?} already ran to the end ({}); `lifeboat plan cleanup {}` ends a test run, and a new run \
                     needs the old one cleaned up",
                    plan.name,
                    r.kind.as_str(),
                    plan.name
                )))
            }
            Some(r) if r.kind != kind || r.plan != *plan || r.instant != template.instant.is_some() => {
                return Err(RecoveryError::Refused(format!(
                    "plan {:?} has a {} run in progress ({:?}) made from {}; resume it with `lifeboat plan resume {}` \
                     or end it with `lifeboat plan cleanup {}`",
                    plan.name,
                    r.kind.as_str(),
                    r.state,
                    if r.plan == *plan { "this plan" } else { "a different version of the plan file" },
                    plan.name,
                    plan.name
                )))
            }
            Some(mut r) => {
                (obs.audit)("plan.resume", json!({ "plan": plan.name, "kind": kind.as_str() }))
                    .map_err(RecoveryError::Refused)?;
                r.state = RunState::Running;
                r
            }
            None => {
                (obs.audit)("plan.start", json!({ "plan": plan.name, "kind": kind.as_str(), "vms": plan.vms() }))
                    .map_err(RecoveryError::Refused)?;
                PlanRun {
                    plan: plan.clone(),
                    kind,
                    state: RunState::Running,
                    started_ns: now_ns(),
                    steps: Vec::new(),
                    rto_seconds: None,
                    origin: template.origin.clone(),
                    instant: template.instant.is_some(),
                }
            }
        };
        self.save(&run)?;
        for (i, step) in plan.steps.iter().enumerate() {
            let number = i + 1;
            match run.steps.iter().find(|r| r.number == number) {
                Some(r) if r.state == "done" || r.state == "failed (optional)" => continue,
                // A manual step that was waiting: resuming is the operator's "done".
                Some(r) if r.state == "waiting" => {
                    let r = run.steps.iter_mut().find(|r| r.number == number).expect("found above");
                    r.state = "done".into();
                    r.ended_ns = Some(now_ns());
                    r.detail = "confirmed by `lifeboat plan resume`".into();
                    (obs.step)(r);
                    (obs.audit)(
                        "plan.step",
                        json!({ "plan": plan.name, "step": number, "what": r.what, "result": "done" }),
                    )
                    .map_err(RecoveryError::Refused)?;
                    self.save(&run)?;
                    continue;
                }
                _ => {}
            }
            run.steps.retain(|r| r.number != number);
            run.steps.push(StepRecord {
                number,
                what: step.describe(),
                state: "running".into(),
                started_ns: now_ns(),
                ended_ns: None,
                detail: String::new(),
                vms: Vec::new(),
            });
            self.save(&run)?;
            (obs.step)(run.steps.last().expect("pushed"));
            (obs.audit)("plan.step.start", json!({ "plan": plan.name, "step": number, "what": step.describe() }))
                .map_err(RecoveryError::Refused)?;
            let recovered: Vec<&str> = plan.steps[..i].iter().flat_map(|s| s.vms.iter().map(String::as_str)).collect();
            let (state, detail, vms) = if step.group.is_some() {
                let outcome = group(step, number, site, template, obs);
                let failed: Vec<&(String, Result<Job, String>)> = outcome
                    .iter()
                    .filter(|(_, r)| !matches!(r, Ok(j) if j.health.as_deref() == Some("passed")))
                    .collect();
                let vms: Vec<Value> = outcome
                    .iter()
                    .map(|(vm, r)| match r {
                        Ok(j) => {
                            json!({ "vm": vm, "point": j.point(), "health": j.health, "rto_seconds": j.rto_seconds, "instant": j.instant })
                        }
                        Err(e) => json!({ "vm": vm, "error": e }),
                    })
                    .collect();
                if failed.is_empty() {
                    run.rto_seconds = Some(Duration::from_nanos(now_ns().saturating_sub(run.started_ns)).as_secs_f64());
                    ("done", format!("{} VM(s) booted, health passed", outcome.len()), vms)
                } else {
                    let why: Vec<String> = failed
                        .iter()
                        .map(|(vm, r)| match r {
                            Ok(j) => format!("{vm}: health {}", j.health_detail.as_deref().unwrap_or("failed")),
                            Err(e) => format!("{vm}: {e}"),
                        })
                        .collect();
                    ("failed", why.join("; "), vms)
                }
            } else if let Some(script) = &step.script {
                match run_script(script, step, &plan.name, kind, &recovered, number, &self.root.join(&plan.name)) {
                    Ok(out) => ("done", out, Vec::new()),
                    Err(e) if step.optional => ("failed (optional)", e, Vec::new()),
                    Err(e) => ("failed", e, Vec::new()),
                }
            } else {
                ("waiting", step.manual.clone().unwrap_or_default(), Vec::new())
            };
            let rec = run.steps.last_mut().expect("pushed");
            rec.state = state.into();
            rec.detail = detail;
            rec.vms = vms;
            if state != "waiting" {
                rec.ended_ns = Some(now_ns());
            }
            (obs.step)(rec);
            let rec = rec.clone();
            (obs.audit)(
                "plan.step",
                json!({ "plan": plan.name, "step": number, "what": rec.what, "result": state, "detail": rec.detail, "vms": rec.vms }),
            )
            .map_err(RecoveryError::Refused)?;
            match state {
                "waiting" => {
                    run.state = RunState::Paused;
                    self.save(&run)?;
                    (obs.audit)("plan.paused", json!({ "plan": plan.name, "step": number }))
                        .map_err(RecoveryError::Refused)?;
                    return Ok(run);
                }
                "failed" => {
                    run.state = RunState::Failed;
                    self.save(&run)?;
                    (obs.audit)("plan.failed", json!({ "plan": plan.name, "step": number, "detail": rec.detail }))
                        .map_err(RecoveryError::Refused)?;
                    return Ok(run);
                }
                _ => self.save(&run)?,
            }
        }
        run.state = RunState::Done;
        self.save(&run)?;
        (obs.audit)("plan.done", json!({ "plan": plan.name, "kind": kind.as_str(), "rto_seconds": run.rto_seconds }))
            .map_err(RecoveryError::Refused)?;
        Ok(run)
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
