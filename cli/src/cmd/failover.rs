//! `lifeboat failover`: boot a protected VM at the recovery site from a
//! recovery point (test or unplanned), then commit or clean up.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use recovery::failover::{Kind, Observer, PointChoice, Request, Site, Step, StepState};
use recovery::planned::SourceStop;
use recovery::HealthResult;
use recovery::{Network, QemuConfig, VmDefinition};

use crate::home::Home;

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Make an unplanned failover final: the recovered VM is production now.
    Commit {
        /// The VM.
        name: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
    /// End a test (or uncommitted unplanned) failover: stop its VM and remove
    /// its disks and state.
    Cleanup {
        /// The VM.
        name: String,
        /// Print what was removed as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a VM's failover at this site: kind, point, steps, health, RTO.
    Status {
        /// The VM.
        name: String,
        /// Print the job as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// The VM to fail over (`lifeboat vm define`).
    #[arg(required = true)]
    name: Option<String>,
    /// Test failover: boot the point on an isolated network (no route out)
    /// while replication goes on; end it with `lifeboat failover cleanup`.
    #[arg(long, required_unless_present_any = ["unplanned", "planned"], conflicts_with_all = ["unplanned", "planned"])]
    test: bool,
    /// Unplanned failover: the source site is gone; boot the point on the
    /// mapped networks. Run again with another --point to switch points
    /// until `lifeboat failover commit`.
    #[arg(long, conflicts_with = "planned")]
    unplanned: bool,
    /// Planned failover, run where the VM's disks are protected: power the
    /// source VM off (QMP system_powerdown on --source-qmp, then wait until
    /// QEMU's process is gone), ship a final cycle of every disk, and boot
    /// that point on the mapped networks. Nothing is lost; the job is final
    /// once healthy. A QEMU that exits without a guest power-off (killed,
    /// crashed, told to quit) is reported as such, and the final point is
    /// recorded as crash-consistent.
    #[arg(long)]
    planned: bool,
    /// The running source VM's QMP socket (QEMU -qmp unix:PATH,server=on,wait=off), for --planned.
    #[arg(long, requires = "planned")]
    source_qmp: Option<PathBuf>,
    /// For --planned without --source-qmp: you have shut the source VM down yourself.
    #[arg(long, requires = "planned", conflicts_with = "source_qmp")]
    source_stopped: bool,
    /// How long the source VM may take to power off (--planned); QEMU still
    /// running after it fails the failover before anything is shipped.
    #[arg(long, default_value = "5m")]
    shutdown_timeout: String,
    /// `latest`, `latest-app` (the newest app-consistent point) or a point id of the VM's first disk (`lifeboat points DISK`).
    #[arg(long)]
    point: Option<String>,
    /// The vault (default: the vault of the VM's disks in this home).
    /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
    #[arg(long, requires = "key", value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
    vault: Option<vault::Location>,
    /// The customer key file (default: the key of the VM's disks in this home).
    #[arg(long)]
    key: Option<PathBuf>,
    /// Map a network the VM's NICs use to one at this site:
    /// NET=bridge:BRIDGE, NET=user (NAT), NET=isolated or NET=none. Repeat per network.
    #[arg(long = "network", value_name = "NET=SPEC")]
    networks: Vec<String>,
    /// Boot with this definition (TOML) instead of the one stored with the point.
    #[arg(long)]
    definition: Option<PathBuf>,
    /// Instant recovery: boot at once from the vault (each disk served over
    /// NBD, blocks fetched on first read) while a background copy fills the
    /// local disk; the RTO no longer grows with the disk's size.
    #[arg(long)]
    instant: bool,
    /// The QEMU binary.
    #[arg(long, default_value = "qemu-system-x86_64")]
    qemu: PathBuf,
    /// When several hosts protect a VM of this name into the vault: which one (by its first disk's
    /// identity, or its host). At the protected site the VM this host protects is taken.
    #[command(flatten)]
    choose: crate::disk_pick::ChooseArgs,
    /// Print the job as JSON: {"vm", "kind", "point", "rto_seconds", "health", "steps", ...}.
    #[arg(long)]
    json: bool,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    let site = Site::new(home.failovers_dir());
    match a.command {
        Some(Command::Commit { name, json }) => {
            let keys_vault = job_keys(home, &site, &name);
            let mut step = |_: &Step| {};
            let mut audit = auditor(home, keys_vault.as_ref());
            let job = site.commit(&name, &mut Observer { step: &mut step, audit: &mut audit })?;
            print_job(
                &job,
                json,
                &format!("committed: VM {name} runs at the recovery site from point {}", job.point().unwrap_or(0)),
            );
            Ok(())
        }
        Some(Command::Cleanup { name, json }) => {
            let keys_vault = job_keys(home, &site, &name);
            let mut step = |_: &Step| {};
            let mut audit = auditor(home, keys_vault.as_ref());
            let job = site.cleanup(&name, &mut Observer { step: &mut step, audit: &mut audit })?;
            // Disks protected here by `failback --prepare` had their images in
            // the failover's directory, now gone: drop their protection too.
            for p in &job.points {
                if home.disk(&p.disk).is_ok_and(|e| e.config.image == p.local_image()) {
                    let dir = home.disk_dir(&p.disk);
                    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                }
            }
            print_job(
                &job,
                json,
                &format!("cleaned up the {} failover of VM {name}: VM stopped, disks removed", job.kind.as_str()),
            );
            Ok(())
        }
        Some(Command::Status { name, json }) => {
            let job = site.load(&name)?.with_context(|| format!("VM {name:?} has no failover at this site"))?;
            print_job(&job, json, &summary(&job));
            Ok(())
        }
        None => failover(home, &site, a.run),
    }
}

/// The keys and vault a job was run with (for its audit records), if they
/// can still be opened.
fn job_keys(home: &Home, site: &Site, vm: &str) -> Option<(disk_format::keys::Keys, vault::Vault)> {
    let origin = site.load(vm).ok().flatten().and_then(|j| j.origin);
    let (v, k) = origin.map_or((None, None), |o| (Some(o.vault), Some(o.key)));
    match keys_for(home, vm, v, k) {
        Ok(kv) => Some(kv),
        Err(e) => {
            tracing::warn!("lifeboat: warning: cannot open the failover's key and vault ({e:#})");
            None
        }
    }
}

/// The vault and key file for a VM: as given, else those of its first disk
/// in this home.
pub(crate) fn site_paths(
    home: &Home,
    vm: &str,
    vault: Option<vault::Location>,
    key: Option<PathBuf>,
) -> Result<(vault::Location, PathBuf)> {
    Ok(match (vault, key) {
        (Some(v), Some(k)) => (v, k),
        (v, k) => {
            let def = home.vms()?.into_iter().find(|d| d.name == vm).with_context(|| {
                format!(
                    "VM {vm:?} is not defined in {}: at a recovery site pass --vault DIR --key FILE",
                    home.root().display()
                )
            })?;
            let entry = home.disk(&def.disks[0])?;
            let r = entry.replication(&def.disks[0])?;
            (v.unwrap_or_else(|| r.vault.clone()), k.unwrap_or_else(|| r.key.clone()))
        }
    })
}

/// The keys and vault for the VM's audit records and its points.
pub(crate) fn keys_for(
    home: &Home,
    vm: &str,
    vault: Option<vault::Location>,
    key: Option<PathBuf>,
) -> Result<(disk_format::keys::Keys, vault::Vault)> {
    let (vault_dir, key_path) = site_paths(home, vm, vault, key)?;
    let keys = crate::keyfile::load(&key_path)?;
    let vault = super::vault::open(home, &vault_dir)?;
    vault.check_key(&keys)?;
    Ok((keys, vault))
}

/// Records failover actions in the audit log of the key (copied to the vault).
pub(crate) fn auditor<'a>(
    home: &'a Home,
    kv: Option<&'a (disk_format::keys::Keys, vault::Vault)>,
) -> impl FnMut(&str, serde_json::Value) -> std::result::Result<(), String> + 'a {
    move |kind, details| match kv {
        Some((keys, vault)) => {
            super::audit::record(&super::audit::audit_dir(home), keys, Some(vault), kind, None, details)
                .map_err(|e| format!("{e:#}"))
        }
        None => {
            tracing::warn!("lifeboat: warning: no key at hand: `{kind}` is not recorded in the audit log");
            Ok(())
        }
    }
}

fn failover(home: &Home, site: &Site, a: RunArgs) -> Result<()> {
    let name = a.name.clone().expect("clap requires it");
    let kind = match (a.test, a.planned) {
        (true, _) => Kind::Test,
        (_, true) => Kind::Planned,
        _ => Kind::Unplanned,
    };
    let mut point = match a.point.as_deref() {
        None => None,
        Some("latest") => Some(PointChoice::Latest),
        Some("latest-app") => Some(PointChoice::LatestApp),
        Some(id) => Some(PointChoice::Id(
            id.parse().map_err(|_| anyhow::anyhow!("--point {id:?}: use `latest`, `latest-app` or a point id"))?,
        )),
    };
    let networks = parse_networks(&a.networks)?;
    let definition = match &a.definition {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let d = VmDefinition::parse(&text, &f.display().to_string())?;
            if d.name != name {
                bail!("{} defines VM {:?}, not {name:?}", f.display(), d.name);
            }
            Some(d)
        }
        None => None,
    };
    let (vault_dir, key_path) = site_paths(home, &name, a.vault.clone(), a.key.clone())?;
    let kv = keys_for(home, &name, Some(vault_dir.clone()), Some(key_path.clone()))?;
    let mut choice = a.choose.choice()?;
    if let Some(def) = home.vms().ok().and_then(|vms| vms.into_iter().find(|d| d.name == name)) {
        for disk in &def.disks {
            let _ = crate::replicate::warn_if_vault_lost_points(home, disk, &kv.1, &kv.0, None);
        }
        // At the protected site the VM is this host's: its first disk's
        // identity picks it among VMs of that name other hosts protect.
        if !a.choose.given() {
            choice.disk_id = def.disks.first().and_then(|d| crate::disk_pick::own_identity(home, d));
        }
    }
    let serve = super::instant::launcher(home, vault_dir.absolute(), absolute(&key_path));
    let origin = match (a.vault.clone(), a.key.clone()) {
        (Some(vault), Some(key)) => Some(recovery::failover::Origin { vault: vault.absolute(), key: absolute(&key) }),
        _ => None,
    };
    let mut audit = auditor(home, Some(&kv));
    let mut prelude = Vec::new();
    if kind == Kind::Planned {
        if point.is_some() {
            bail!("--planned fails over to the final point it ships itself; leave out --point");
        }
        let seq = planned_source_side(home, site, &name, &a, &mut prelude, &mut audit)?;
        point = Some(PointChoice::Id(seq));
    }
    let qemu = QemuConfig { binary: a.qemu, ..QemuConfig::default() };
    let req = Request {
        vm: &name,
        kind,
        point,
        vault: &kv.1,
        keys: &kv.0,
        networks: &networks,
        definition,
        qemu: &qemu,
        origin,
        instant: if a.instant { Some(&serve) } else { None },
        prelude,
        choice,
    };
    let live = !a.json || std::io::stderr().is_terminal();
    let mut step = |s: &Step| {
        if live {
            match s.state {
                StepState::Running => tracing::info!("[{}] {} ...", name, s.name),
                state => tracing::info!("[{}] {} {state}: {}", name, s.name, s.detail),
            }
        }
    };
    let job = site.failover(&req, &mut Observer { step: &mut step, audit: &mut audit })?;
    print_job(&job, a.json, &summary(&job));
    if job.health != Some(HealthResult::Passed) {
        bail!(
            "VM {name:?} booted from point {} but its health check failed: {}; it is left running for you to \
             look at (console: {}); `lifeboat failover cleanup {name}` stops it",
            job.point().unwrap_or(0),
            job.health_detail.as_deref().unwrap_or("?"),
            job.process.as_ref().map_or("-".into(), |p| p.console.display().to_string())
        );
    }
    Ok(())
}

fn summary(job: &recovery::Job) -> String {
    let next = match (job.kind, job.state) {
        (Kind::Test, _) => format!("end it with `lifeboat failover cleanup {}`", job.vm),
        (Kind::Unplanned, recovery::JobState::Committed) => "committed".to_string(),
        (Kind::Planned, recovery::JobState::Committed) => {
            "final: the source was stopped and its last changes shipped, nothing was lost".to_string()
        }
        (Kind::Planned, _) => format!("look at it, then make it final with `lifeboat failover commit {}`", job.vm),
        (Kind::Unplanned, _) => format!(
            "switch points with `lifeboat failover {} --unplanned --point ID`, or make it final with \
             `lifeboat failover commit {}`",
            job.vm, job.vm
        ),
    };
    format!(
        "{} failover of VM {}: point {}, {:?}, health {}, RTO {}; {next}",
        job.kind.as_str(),
        job.vm,
        job.point().map_or("-".into(), |p| p.to_string()),
        job.state,
        job.health.map_or("not checked", HealthResult::as_str),
        job.rto_seconds.map_or("-".into(), |s| format!("{s:.1} s")),
    )
}

fn print_job(job: &recovery::Job, json: bool, text: &str) {
    if json {
        outln!("{}", job.to_json());
    } else {
        outln!("{text}");
    }
}

pub(crate) fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// The source side of a planned failover ([`recovery::planned`]): the flags
/// say how the source VM is stopped. Returns the final point of the first disk.
fn planned_source_side(
    home: &Home,
    site: &Site,
    name: &str,
    a: &RunArgs,
    prelude: &mut Vec<Step>,
    audit: &mut dyn FnMut(&str, serde_json::Value) -> std::result::Result<(), String>,
) -> Result<u64> {
    let timeout = std::time::Duration::from_secs(
        crate::size::parse_duration(&a.shutdown_timeout).map_err(|e| anyhow::anyhow!("--shutdown-timeout: {e}"))?,
    );
    let stop = match (&a.source_qmp, a.source_stopped) {
        (Some(qmp), _) => SourceStop::Qmp { socket: qmp.clone(), timeout },
        (None, true) => SourceStop::AlreadyStopped,
        (None, false) => SourceStop::Unknown,
    };
    Ok(recovery::planned::source_side(site, &crate::host_side::Host::new(home), name, &stop, prelude, audit)?)
}

/// `--network NET=SPEC` options as a map (failover and plan run).
pub(crate) fn parse_networks(options: &[String]) -> Result<BTreeMap<String, Network>> {
    let mut m = BTreeMap::new();
    for n in options {
        let (net, spec) =
            n.split_once('=').with_context(|| format!("--network {n:?}: use NET=SPEC, e.g. prod=bridge:br0"))?;
        m.insert(net.to_string(), spec.parse().map_err(|e: String| anyhow::anyhow!("--network {n:?}: {e}"))?);
    }
    Ok(m)
}
