//! `lifeboat vm`: define the VMs whose disks are protected, so they can be
//! failed over.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use recovery::vmdef::{DirectBoot, Health, Nic};
use recovery::VmDefinition;

use crate::home::Home;
use crate::size::{parse_duration, parse_size};

#[derive(clap::Subcommand)]
pub enum Command {
    /// Define (or redefine) a VM: its protected disks, memory, CPUs, NICs and
    /// boot health check.
    ///
    /// The definition is kept in HOME/vms/NAME.toml and sealed into every
    /// point of its disks from the next cycle on, so the recovery site boots
    /// each point the way the VM was when it was cut. All its disks must be
    /// protected in this home and replicate to one vault with one key.
    ///
    /// Example: lifeboat vm define web1 --disk web1-root --memory 2GiB --cpus 2
    /// --nic prod --health-serial "login:"
    Define(Box<DefineArgs>),
    /// Show a VM's definition: the home's, or (with --vault and --key) the one
    /// stored with a point in the vault, as a failover would use it.
    Show {
        /// The VM.
        name: String,
        /// Read it from this vault instead of the home.
        /// VAULT: a directory, or lifeboat://HOST:PORT/VAULT for a vault server.
        #[arg(long, requires = "key", value_name = "VAULT", value_parser = crate::vault_open::location_parser())]
        vault: Option<vault::Location>,
        /// The customer key (with --vault).
        #[arg(long, requires = "vault")]
        key: Option<PathBuf>,
        /// The point of the VM's first disk (default: its newest).
        #[arg(long)]
        point: Option<u64>,
    },
    /// List the VMs defined in the home.
    List,
}

#[derive(clap::Args)]
pub struct DefineArgs {
    /// The VM's name.
    name: String,
    /// Read the whole definition from a TOML file (name, memory_mib, cpus,
    /// disks, [[nics]] network/mac, [health] serial/tcp_port/timeout_seconds,
    /// [boot] kernel/initrd/append); the other options must then be left out.
    #[arg(long, conflicts_with_all = ["disks", "memory", "cpus", "nics", "health_serial", "health_tcp", "kernel"])]
    file: Option<PathBuf>,
    /// A protected disk of the VM, in order (the first is the boot disk). Repeat for more.
    #[arg(long = "disk", value_name = "DISK")]
    disks: Vec<String>,
    /// Memory, e.g. 512MiB or 2GiB.
    #[arg(long)]
    memory: Option<String>,
    /// Virtual CPUs.
    #[arg(long)]
    cpus: Option<u32>,
    /// A NIC: the network it is on (mapped at the recovery site), optionally
    /// with its MAC: prod or prod=52:54:00:12:34:56. Repeat for more.
    #[arg(long = "nic", value_name = "NETWORK[=MAC]")]
    nics: Vec<String>,
    /// Healthy once a serial-console line contains this text.
    #[arg(long)]
    health_serial: Option<String>,
    /// Healthy once this guest TCP port accepts connections.
    #[arg(long)]
    health_tcp: Option<u16>,
    /// How long the health check may take after boot.
    #[arg(long, default_value = "5m")]
    health_timeout: String,
    /// Boot this kernel directly (for disks without a boot loader). Like the
    /// initrd, it must be owned by root (or you) and not writable by group
    /// or others, nor may its directories be (checked here if it exists, and
    /// at each boot).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The initramfs for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line for --kernel.
    #[arg(long, requires = "kernel", default_value = "")]
    append: String,
    /// App-consistent points: at most this often (e.g. 1h), a cycle freezes
    /// the guest's file systems through --guest-agent (or runs --pre-hook),
    /// cuts, then thaws them (or runs --post-hook).
    #[arg(long)]
    app_every: Option<String>,
    /// The host end of the VM's QEMU guest agent channel (QEMU: -chardev
    /// socket,path=SOCK,server=on,wait=off,id=qga0 -device virtio-serial
    /// -device virtserialport,chardev=qga0,name=org.qemu.guest_agent.0).
    #[arg(long, requires = "app_every", conflicts_with_all = ["pre_hook", "post_hook"])]
    guest_agent: Option<PathBuf>,
    /// Quiesce the guest before an app-consistent cut (absolute path; gets
    /// LIFEBOAT_VM, LIFEBOAT_DISK, LIFEBOAT_HOOK=pre). Hooks run as root: each
    /// must be owned by root (or you) and not writable by group or others,
    /// nor may its directories be; checked here and before every run (a hook
    /// that fails the check does not run, and the point is crash-consistent).
    #[arg(long, requires = "app_every")]
    pre_hook: Option<PathBuf>,
    /// Resume it after the cut (also run by a watchdog if Lifeboat dies in between).
    #[arg(long, requires = "app_every")]
    post_hook: Option<PathBuf>,
    /// How long each freeze, thaw or hook may take.
    #[arg(long, default_value = "30s")]
    hook_timeout: String,
    /// Cut this VM's disks together with those of every VM of this group
    /// (the disks of one VM are always cut together).
    #[arg(long)]
    consistency_group: Option<String>,
}

pub fn run(home: &Home, cmd: Command) -> Result<()> {
    match cmd {
        Command::Define(a) => define(home, *a),
        Command::Show { name, vault, key, point } => {
            let def = match (vault, key) {
                (Some(v), Some(k)) => {
                    let keys = crate::keyfile::load(&k)?;
                    let vault = super::vault::open(home, &v)?;
                    vault.check_key(&keys)?;
                    let disks = vault.disks_by_identity(&keys)?;
                    let (def, first) =
                        recovery::failover::locate_in(&vault, &keys, &name, &disks, &vault::DiskChoice::default())?;
                    match point {
                        None => def,
                        Some(p) => {
                            let chain = first.point(p).map_or(def.disks[0].as_str(), |s| s.chain.as_str());
                            recovery::failover::definition_at(&vault, &keys, chain, p)?.with_context(|| {
                                format!("point {p} of disk {:?} carries no VM definition", def.disks[0])
                            })?
                        }
                    }
                }
                _ => home
                    .vms()?
                    .into_iter()
                    .find(|v| v.name == name)
                    .with_context(|| format!("no VM named {name:?} is defined in {}", home.root().display()))?,
            };
            out!("{}", def.to_toml());
            Ok(())
        }
        Command::List => {
            for v in home.vms()? {
                outln!(
                    "{}\tdisks {}\t{} MiB, {} CPU(s), {} NIC(s)",
                    v.name,
                    v.disks.join(","),
                    v.memory_mib,
                    v.cpus,
                    v.nics.len()
                );
            }
            Ok(())
        }
    }
}

fn define(home: &Home, a: DefineArgs) -> Result<()> {
    let def = match &a.file {
        Some(f) => {
            let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            let def = VmDefinition::parse(&text, &f.display().to_string())?;
            if def.name != a.name {
                bail!("{} defines VM {:?}, not {:?}", f.display(), def.name, a.name);
            }
            def
        }
        None => from_args(&a)?,
    };
    // Hooks, kernel and initrd run as root: refuse them now if another user
    // could change them (each use checks again).
    def.check_trusted_files().with_context(|| format!("VM {:?}", def.name))?;
    // Every disk protected here, all to one vault with one key, none in another VM.
    let mut target: Option<(vault::Location, PathBuf)> = None;
    for d in &def.disks {
        let entry = home.disk(d).with_context(|| format!("VM {:?}", def.name))?;
        let r = entry.replication(d)?;
        match &target {
            None => target = Some((r.vault.clone(), r.key.clone())),
            Some((v, k)) if v != &r.vault || k != &r.key => bail!(
                "disk {d:?} replicates to {} with key {}, but {:?} to {} with key {}: the disks of one VM must share \
                 a vault and key",
                r.vault,
                r.key.display(),
                def.disks[0],
                v,
                k.display()
            ),
            Some(_) => {}
        }
        if let Some(other) = home.vm_of_disk(d)?.filter(|o| o.name != def.name) {
            bail!("disk {d:?} already belongs to VM {:?}; redefine that VM without it first", other.name);
        }
    }
    let dir = home.vms_dir();
    recovery::trust::private_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(format!("{}.toml", def.name));
    system::file::replace(&path, def.to_toml().as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    let (vault_dir, key) = target.expect("a VM has a disk");
    let keys = crate::keyfile::load(&key)?;
    let vault = super::vault::open(home, &vault_dir).ok();
    let details =
        serde_json::json!({ "vm": def.name, "disks": def.disks, "memory_mib": def.memory_mib, "cpus": def.cpus });
    super::audit::record(&super::audit::audit_dir(home), &keys, vault.as_ref(), "vm.define", None, details)?;
    outln!(
        "VM {} defined in {} (disks: {}); it travels with the next point of each disk",
        def.name,
        path.display(),
        def.disks.join(", ")
    );
    Ok(())
}

fn from_args(a: &DefineArgs) -> Result<VmDefinition> {
    if a.disks.is_empty() {
        bail!("give the VM's disks with --disk DISK (repeat in boot order), or the whole definition with --file");
    }
    let memory_mib = match &a.memory {
        Some(m) => {
            let bytes = parse_size(m).map_err(|e| anyhow::anyhow!("--memory: {e}"))?;
            u32::try_from(bytes >> 20).context("--memory is too large")?
        }
        None => 512,
    };
    let nics = a
        .nics
        .iter()
        .map(|n| match n.split_once('=') {
            Some((net, mac)) => Nic { network: net.to_string(), mac: Some(mac.to_string()) },
            None => Nic { network: n.clone(), mac: None },
        })
        .collect();
    let timeout = parse_duration(&a.health_timeout).map_err(|e| anyhow::anyhow!("--health-timeout: {e}"))?;
    let def = VmDefinition {
        name: a.name.clone(),
        memory_mib,
        cpus: a.cpus.unwrap_or(1),
        disks: a.disks.clone(),
        nics,
        health: Health { serial: a.health_serial.clone(), tcp_port: a.health_tcp, timeout_seconds: timeout },
        boot: a.kernel.as_ref().map(|k| DirectBoot {
            kernel: absolute(k),
            initrd: a.initrd.as_deref().map(absolute),
            append: a.append.clone(),
        }),
        app_consistent: None,
        consistency_group: a.consistency_group.clone(),
    };
    let mut def = def;
    if let Some(every) = &a.app_every {
        if a.guest_agent.is_none() && (a.pre_hook.is_none() || a.post_hook.is_none()) {
            bail!("--app-every needs --guest-agent SOCKET, or both --pre-hook and --post-hook");
        }
        def.app_consistent = Some(recovery::vmdef::AppConsistency {
            every_seconds: parse_duration(every).map_err(|e| anyhow::anyhow!("--app-every: {e}"))?,
            guest_agent: a.guest_agent.as_deref().map(absolute),
            pre_hook: a.pre_hook.as_deref().map(absolute),
            post_hook: a.post_hook.as_deref().map(absolute),
            timeout_seconds: parse_duration(&a.hook_timeout).map_err(|e| anyhow::anyhow!("--hook-timeout: {e}"))?,
        });
    }
    def.validate().map_err(|why| anyhow::anyhow!("VM {:?}: {why}", a.name))?;
    Ok(def)
}

fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}
