//! `lifeboat plan`: fail a whole application over in order.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use recovery::failover::{Kind, Origin, PointChoice, Request, Site, Step, StepState};
use recovery::plan::{Plan, PlanObserver, PlanRun, PlanStepState, Plans, RunState, StepRecord};
use recovery::QemuConfig;

use crate::home::Home;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Check a plan file without running it: its steps, scripts and (with
    /// --vault and --key) that every VM is in the vault with a point.
    Validate {
        /// The plan file (TOML).
        plan: PathBuf,
        #[command(flatten)]
        site: SiteArgs,
    },
    /// Run a plan: each group's VMs fail over in parallel, groups in order,
    /// scripts and manual steps between them, with a live view of the steps.
    ///
    /// A failing script (unless optional) or VM stops the plan with a report;
    /// a manual step pauses it until `lifeboat plan resume`. The plan file
    /// format: `name = "shop"`, then `[[step]]` tables, each with either
    /// `group = "db"` + `vms = ["db1"]`, or `script = "/abs/path"` (+ `args`,
    /// `optional`, `timeout_seconds`; it gets LIFEBOAT_PLAN, LIFEBOAT_PLAN_KIND,
    /// LIFEBOAT_PLAN_STEP and LIFEBOAT_PLAN_VMS in its environment; it must be
    /// owned by root or you and not writable by group or others, nor its
    /// directories, checked at load and before it runs), or
    /// `manual = "what to do"`.
    Run {
        /// The plan file (TOML).
        plan: PathBuf,
        /// Test failover of every VM (isolated networks; `plan cleanup` ends it).
        #[arg(long, required_unless_present = "unplanned", conflicts_with = "unplanned")]
        test: bool,
        /// Unplanned failover of every VM (commit each with `lifeboat failover commit`).
        #[arg(long)]
        unplanned: bool,
        /// `latest` (default), `latest-app` or a point id, used for every VM.
        #[arg(long)]
        point: Option<String>,
        /// Instant recovery for every VM: boot from the vault at once (see
        /// `lifeboat failover --help`).
        #[arg(long)]
        instant: bool,
        #[command(flatten)]
        site: SiteArgs,
        /// Print the run as JSON: {"plan", "kind", "state", "rto_seconds", "steps": [...]}.
        #[arg(long)]
        json: bool,
    },
    /// Go on with a plan paused at a manual step (the step counts as done),
    /// or retry one that failed or was interrupted.
    Resume {
        /// The plan's name.
        name: String,
        #[command(flatten)]
        site: SiteArgs,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a plan's run: state, each step and each VM's health and RTO.
    Status {
        /// The plan's name.
        name: String,
        /// Print the run as JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a plan's run: clean up every VM's test (or uncommitted) failover
    /// and forget the run.
    Cleanup {
        /// The plan's name.
        name: String,
    },
}

#[derive(clap::Args)]
pub struct SiteArgs {
    /// The vault (default: that of the plan's first VM in this home).
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, requires = "key", value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    /// The customer key file.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Map a network: NET=bridge:BRIDGE, NET=user, NET=isolated or NET=none. Repeat per network.
    #[arg(long = "network", value_name = "NET=SPEC")]
    networks: Vec<String>,
}

pub fn run(home: &Home, cmd: Command) -> Result<()> {
    let plans = Plans::new(home.root().join("plans"));
    match cmd {
        Command::Validate { plan, site } => validate(home, &plan, site),
        Command::Run { plan, test, unplanned: _, point, instant, site, json } => {
            let plan = load(&plan)?;
            let kind = if test { Kind::Test } else { Kind::Unplanned };
            let point = match point.as_deref() {
                None | Some("latest") => PointChoice::Latest,
                Some("latest-app") => PointChoice::LatestApp,
                Some(id) => PointChoice::Id(
                    id.parse()
                        .map_err(|_| anyhow::anyhow!("--point {id:?}: use `latest`, `latest-app` or a point id"))?,
                ),
            };
            execute(home, &plans, &plan, How { kind, point, instant }, site, json)
        }
        Command::Resume { name, mut site, json } => {
            let run = plans.load(&name)?.with_context(|| format!("plan {name:?} has no run at this site"))?;
            if let (None, Some(o)) = (&site.vault, &run.origin) {
                site.vault = Some(o.vault.clone());
                site.key = Some(o.key.clone());
            }
            let how = How { kind: run.kind, point: PointChoice::Latest, instant: run.instant };
            execute(home, &plans, &run.plan, how, site, json)
        }
        Command::Status { name, json } => {
            let run = plans.load(&name)?.with_context(|| format!("plan {name:?} has no run at this site"))?;
            report(&run, json);
            Ok(())
        }
        Command::Cleanup { name } => {
            let run = plans.load(&name)?.with_context(|| format!("plan {name:?} has no run at this site"))?;
            let site = Site::new(home.failovers_dir());
            let kv = match &run.origin {
                Some(o) => super::failover::keys_for(home, "", Some(o.vault.clone()), Some(o.key.clone())).ok(),
                None => None,
            };
            let mut audit = super::failover::auditor(home, kv.as_ref());
            let mut step = |_: &Step| {};
            let mut problems = Vec::new();
            for vm in run.plan.vms() {
                match site.load(vm)? {
                    None => {}
                    Some(_) => {
                        let mut obs = recovery::Observer { step: &mut step, audit: &mut audit };
                        match site.cleanup(vm, &mut obs) {
                            Ok(_) => tracing::info!("[plan {name}] {vm}: cleaned up"),
                            Err(e) => problems.push(format!("{vm}: {e}")),
                        }
                    }
                }
            }
            if !problems.is_empty() {
                bail!("plan {name:?}: not every VM was cleaned up (the run is kept): {}", problems.join("; "));
            }
            plans.forget(&name)?;
            audit("plan.cleanup", serde_json::json!({ "plan": name })).map_err(anyhow::Error::msg)?;
            outln!("plan {name}: every VM's failover cleaned up, run forgotten");
            Ok(())
        }
    }
}

fn load(path: &std::path::Path) -> Result<Plan> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the plan {}", path.display()))?;
    Ok(Plan::parse(&text, &path.display().to_string())?)
}

fn validate(home: &Home, path: &std::path::Path, site: SiteArgs) -> Result<()> {
    let plan = load(path)?;
    let groups = plan.steps.iter().filter(|s| s.group.is_some()).count();
    outln!(
        "plan {}: {} steps, {groups} groups, {} VMs; steps and scripts check",
        plan.name,
        plan.steps.len(),
        plan.vms().len()
    );
    if site.key.is_none() && site.vault.is_none() && home.vms()?.is_empty() {
        outln!("(pass --vault and --key to check that every VM is in the vault with a recovery point)");
        return Ok(());
    }
    let first = plan.vms()[0].to_string();
    let (keys, vault) = super::failover::keys_for(home, &first, site.vault, site.key)?;
    let mut problems = Vec::new();
    let disks = vault.disks_by_identity(&keys)?;
    for vm in plan.vms() {
        match recovery::failover::locate_in(&vault, &keys, vm, &disks, &vault::DiskChoice::default()) {
            Ok((def, first)) => match first.points.iter().rev().find(|p| p.damage.is_none()) {
                Some(p) => outln!(
                    "  {vm}: point {} of disk {} ({})",
                    p.sequence,
                    def.disks[0],
                    crate::time::rfc3339(p.cut_time_ns)
                ),
                None => problems.push(format!("{vm}: no usable point")),
            },
            Err(e) => problems.push(format!("{vm}: {e}")),
        }
    }
    if !problems.is_empty() {
        bail!("plan {} cannot run: {}", plan.name, problems.join("; "));
    }
    Ok(())
}

/// How a plan's VMs fail over.
struct How {
    kind: Kind,
    point: PointChoice,
    instant: bool,
}

fn execute(home: &Home, plans: &Plans, plan: &Plan, how: How, site_args: SiteArgs, json: bool) -> Result<()> {
    let How { kind, point, instant } = how;
    let first = plan.vms()[0].to_string();
    let origin = match (&site_args.vault, &site_args.key) {
        (Some(v), Some(k)) => Some(Origin { vault: v.absolute(), key: super::failover::absolute(k) }),
        _ => None,
    };
    let networks = super::failover::parse_networks(&site_args.networks)?;
    let (vault_dir, key_path) = super::failover::site_paths(home, &first, site_args.vault, site_args.key)?;
    let (keys, vault) = super::failover::keys_for(home, &first, Some(vault_dir.clone()), Some(key_path.clone()))?;
    let serve = super::instant::launcher(home, vault_dir.absolute(), super::failover::absolute(&key_path));
    let qemu = QemuConfig::default();
    let template = Request {
        vm: &first,
        kind,
        point: Some(point),
        vault: &vault,
        keys: &keys,
        networks: &networks,
        definition: None,
        qemu: &qemu,
        origin,
        instant: if instant { Some(&serve) } else { None },
        prelude: Vec::new(),
        choice: vault::DiskChoice::default(),
    };
    let name = plan.name.clone();
    let total = plan.steps.len();
    let on_step = |r: &StepRecord| match r.state {
        PlanStepState::Running => tracing::info!("[plan {name}] step {}/{total} {} ...", r.number, r.what),
        state => tracing::info!("[plan {name}] step {}/{total} {} {state}: {}", r.number, r.what, r.detail),
    };
    let on_vm = |n: usize, vm: &str, s: &Step| {
        if s.state != StepState::Running {
            tracing::info!("[plan {name}] step {n}: {vm}: {} {}: {}", s.name, s.state, s.detail);
        }
    };
    let audit_dir = super::audit::audit_dir(home);
    let audit = |kind: &str, details: serde_json::Value| {
        super::audit::record(&audit_dir, &keys, Some(&vault), kind, None, details).map_err(|e| format!("{e:#}"))
    };
    let obs = PlanObserver { step: &on_step, vm_step: &on_vm, audit: &audit };
    let site = Site::new(home.failovers_dir());
    let run = plans.run(plan, kind, &site, &template, &obs)?;
    report(&run, json);
    match run.state {
        RunState::Done | RunState::Paused => Ok(()),
        RunState::Failed | RunState::Running => {
            let last =
                run.steps.last().map_or(String::new(), |s| format!("step {} ({}): {}", s.number, s.what, s.detail));
            bail!(
                "plan {:?} stopped at {last}; fix it and run `lifeboat plan resume {}`, or end it with `lifeboat plan \
                 cleanup {}`",
                run.plan.name,
                run.plan.name,
                run.plan.name
            )
        }
    }
}

fn report(run: &PlanRun, json: bool) {
    if json {
        outln!("{}", run.to_json());
        return;
    }
    outln!("plan {} ({} failover): {:?}", run.plan.name, run.kind.as_str(), run.state);
    for s in &run.steps {
        outln!("  {:>2}. {:<40} {}  {}", s.number, s.what, s.state, s.detail);
        for v in &s.vms {
            outln!(
                "        {}: point {}, health {}, RTO {}",
                v["vm"].as_str().unwrap_or("?"),
                v["point"],
                v["health"].as_str().unwrap_or("-"),
                v["rto_seconds"].as_f64().map_or(v["error"].to_string(), |r| format!("{r:.1} s"))
            );
        }
    }
    match (run.state, run.rto_seconds) {
        (RunState::Paused, _) => {
            let s = run.steps.last().map_or("", |s| s.detail.as_str());
            outln!("paused for a manual step: {s}\nwhen it is done: lifeboat plan resume {}", run.plan.name);
        }
        (RunState::Done, Some(rto)) => outln!("done: the whole plan's RTO was {rto:.1} s"),
        _ => {}
    }
}
