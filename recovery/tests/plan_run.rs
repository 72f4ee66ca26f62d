//! `Plans::run` through its step log, without QEMU: a script step, a
//! manual step that pauses the run, and a group whose VM is not in the
//! vault, which stops the plan. Checks what the live view saw, what the
//! audit log got, and what `run.json` holds after each run.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::sync::Mutex;

use disk_format::keys::{Keys, MasterKey};
use recovery::failover::{Kind, PointChoice, Request, Site, Step};
use recovery::plan::{Plan, PlanObserver, PlanStep, PlanStepState, Plans, RunState, StepRecord};
use recovery::{QemuConfig, RecoveryError, Refusal};
use vault::{LocalBackend, Vault};

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *m.lock().unwrap())
}

fn step() -> PlanStep {
    PlanStep {
        group: None,
        vms: vec![],
        script: None,
        args: vec![],
        optional: false,
        timeout_seconds: 10,
        manual: None,
    }
}

#[test]
fn a_plan_pauses_at_its_manual_step_resumes_and_stops_at_a_failed_group() {
    let dir = tempfile::tempdir().unwrap();
    let keys = Keys::derive(&MasterKey::generate().unwrap());
    std::fs::create_dir(dir.path().join("vault")).unwrap();
    let vault = Vault::init(Box::new(LocalBackend::open(&dir.path().join("vault")).unwrap()), &keys).unwrap();
    let script = dir.path().join("ready.sh");
    std::fs::write(&script, "#!/bin/sh\necho ready\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700)).unwrap();
    let plan = Plan {
        name: "shop".into(),
        steps: vec![
            PlanStep { script: Some(script), ..step() },
            PlanStep { manual: Some("check the database".into()), ..step() },
            PlanStep { group: Some("db".into()), vms: vec!["db".into()], ..step() },
        ],
    };
    let networks = BTreeMap::new();
    let qemu = QemuConfig::default();
    let template = Request {
        vm: "db",
        kind: Kind::Test,
        point: Some(PointChoice::Latest),
        vault: &vault,
        keys: &keys,
        networks: &networks,
        definition: None,
        qemu: &qemu,
        origin: None,
        instant: None,
        prelude: Vec::new(),
        choice: vault::DiskChoice::default(),
    };
    let shown = Mutex::new(Vec::new());
    let audited = Mutex::new(Vec::new());
    let on_step = |r: &StepRecord| shown.lock().unwrap().push((r.number, r.state));
    let on_vm = |_: usize, _: &str, _: &Step| {};
    let audit = |kind: &str, _: serde_json::Value| {
        audited.lock().unwrap().push(kind.to_string());
        Ok(())
    };
    let obs = PlanObserver { step: &on_step, vm_step: &on_vm, audit: &audit };
    let plans = Plans::new(dir.path().join("plans"));
    let site = Site::new(dir.path().join("failovers"));
    let run_json = dir.path().join("plans/shop/run.json");
    let on_disk = || serde_json::from_slice::<serde_json::Value>(&std::fs::read(&run_json).unwrap()).unwrap();

    // First run: the script, then the manual step pauses it.
    let run = plans.run(&plan, Kind::Test, &site, &template, &obs).unwrap();
    assert_eq!(run.state, RunState::Paused);
    use PlanStepState::{Done, Failed, Running, Waiting};
    assert_eq!(take(&shown), [(1, Running), (1, Done), (2, Running), (2, Waiting)]);
    assert_eq!(
        take(&audited),
        ["plan.start", "plan.step.start", "plan.step", "plan.step.start", "plan.step", "plan.paused"]
    );
    let file = on_disk();
    assert_eq!((&file["format_version"], &file["state"]), (&1.into(), &"paused".into()), "{file}");
    assert_eq!(file["steps"][1]["state"], "waiting", "{file}");
    assert!(file["steps"][1]["ended_ns"].is_null(), "a waiting step has not ended: {file}");
    assert!(run.steps[0].detail.starts_with("exit 0"), "{:?}", run.steps[0]);

    // Another kind of run of the same plan is refused.
    let e = plans.run(&plan, Kind::Unplanned, &site, &template, &obs).unwrap_err();
    assert!(
        matches!(
            &e,
            RecoveryError::Refused(Refusal::PlanInProgress {
                kind: Kind::Test,
                state: RunState::Paused,
                same_plan: true,
                ..
            })
        ),
        "{e:?}"
    );
    assert!(take(&audited).is_empty());

    // Resuming confirms the manual step; the group's VM is not in the vault.
    let run = plans.run(&plan, Kind::Test, &site, &template, &obs).unwrap();
    assert_eq!(run.state, RunState::Failed);
    assert_eq!(take(&shown), [(2, Done), (3, Running), (3, Failed)]);
    assert_eq!(
        take(&audited),
        [
            "plan.resume",
            "plan.step",
            "plan.step.start",
            "failover.start",
            "failover.failed",
            "plan.step",
            "plan.failed"
        ]
    );
    assert_eq!(run.steps[1].detail, "confirmed by `lifeboat plan resume`");
    assert!(run.steps[2].detail.starts_with("db: no disk in vault"), "{:?}", run.steps[2]);
    assert_eq!(run.steps[2].vms.len(), 1);
    assert!(!dir.path().join("failovers/db").exists(), "a refused failover left its directory");
    let file = on_disk();
    assert_eq!((&file["state"], &file["steps"][2]["state"]), (&"failed".into(), &"failed".into()), "{file}");

    // Running it again retries the failed step only, in place.
    let run = plans.run(&plan, Kind::Test, &site, &template, &obs).unwrap();
    assert_eq!((run.state, run.steps.len()), (RunState::Failed, 3));
    assert_eq!(take(&shown), [(3, Running), (3, Failed)]);
}
