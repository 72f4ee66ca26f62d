//! `lifeboat agent`: Lifeboat's main job. Serves every protected disk over
//! NBD (as `lifeboat filter` does) and, in the same process, replicates each
//! disk that has a vault on its RPO schedule, then applies its retention.
//!
//! Scheduling: a disk's cycles start every `rpo` seconds, measured from the
//! previous cycle's *scheduled* start. A cycle that runs longer than the
//! interval delays the next one, which then starts at once: nothing is
//! skipped or lost, the RPO just grows, and the log and `lifeboat status` say
//! so. A failed cycle leaves its changes dirty; the next attempt comes sooner
//! (5 s, doubling up to the interval) so a short outage costs little RPO.
//!
//! Stopping (SIGTERM/SIGINT): a cycle in progress is cancelled (its changes
//! stay dirty for the next run), the NBD servers finish the requests in
//! flight, and every state file is marked clean.

use std::sync::Arc;
use std::time::Duration;

use agent::runtime::{Group, Member, Placement};
use agent::{Stop, SystemClock, Target};
use anyhow::{bail, Context, Result};
use filter::control::ControlServer;
use filter::copies::CopyMemory;
use filter::nbd::Server;
use filter::Disk;

use crate::cmd::ship::Bar;
use crate::home::{close_unserved, Home};
use crate::signals;
use crate::size::{parse_duration, parse_size};
use crate::status_file;

#[derive(clap::Args)]
pub struct Args {
    /// Run only these disks (default: every protected disk in the home).
    #[arg(value_name = "NAME")]
    disks: Vec<String>,
    /// After pruning, collect the vault's garbage at most this often
    /// (`0` = never: run `lifeboat vault gc` yourself). A collection briefly
    /// holds off the cycles of every disk that uses the vault; it moves the
    /// garbage into the vault's trash, which a thread of the agent empties
    /// beside the next cycle.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    gc_every: u64,
    /// Memory for copy-before-write copies, shared by every disk the agent
    /// serves (default: a quarter of the machine's memory, at most 8 GiB).
    /// When the VM overwrites a block the running cycle has not read yet,
    /// the block's old contents wait here until the cycle reads them; past
    /// this, they wait in the disk's scratch file, which costs disk
    /// bandwidth. `0` keeps every copy in the scratch file.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    copy_memory: Option<u64>,
    #[command(flatten)]
    nbd: crate::cmd::filter::NbdLimits,
    /// One limit for the whole host: every disk's cycles share it.
    #[command(flatten)]
    bandwidth: crate::vault_open::BandwidthArg,
}

/// One disk the agent runs.
struct Served {
    name: String,
    disk: Arc<Disk>,
    /// Records the disk's churn profile while it is served.
    profiler: Option<profile::Profiler>,
    control: ControlServer,
    target: Option<Target>,
    status_path: std::path::PathBuf,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    signals::block_termination().context("blocking SIGTERM/SIGINT")?;
    crate::cmd::filter::raise_open_files_limit("lifeboat agent");
    let names = if a.disks.is_empty() { home.disk_names()? } else { a.disks.clone() };
    if names.is_empty() {
        bail!(
            "no protected disks in this home; protect one with \
             `lifeboat protect NAME --image IMAGE --vault DIR --key KEYFILE` (or pass the right --home / LIFEBOAT_HOME)"
        );
    }
    let vaults: Vec<vault::Location> =
        names.iter().filter_map(|n| home.disk(n).ok()?.config.replication.map(|r| r.vault)).collect();
    for t in home.make_private(&vaults.iter().collect::<Vec<_>>())? {
        tracing::info!("lifeboat agent: {t}: it was open to other users; Lifeboat keeps its home and vault private");
    }
    let copy_memory = a.copy_memory.map_or_else(CopyMemory::global, CopyMemory::new);
    let link = a.bandwidth.throttle();
    if let Some(l) = &link {
        tracing::info!(
            "lifeboat agent: bandwidth limited to {} (now {})",
            l.limiter.schedule(),
            l.limiter.rate_now().map_or_else(|| "unlimited".to_string(), |r| r.to_string())
        );
    }
    let mut served = Vec::new();
    let mut servers = Vec::new();
    for name in &names {
        match open(home, name, &copy_memory, &a.nbd, link.as_ref()) {
            Ok((s, server)) => {
                served.push(s);
                servers.push((name.clone(), server));
            }
            Err(e) => {
                tracing::error!(
                    "lifeboat agent: error: {name}: {}; this disk is not served or replicated",
                    crate::error_chain(&e)
                );
            }
        }
    }
    if served.is_empty() {
        bail!("none of the {} protected disk(s) could be started (see above)", names.len());
    }
    let stop = Arc::new(Stop::new());
    let shutdowns: Arc<Vec<_>> = Arc::new(servers.iter().map(|(_, s)| s.shutdown_handle()).collect());
    let stop_all = {
        let (stop, shutdowns) = (stop.clone(), shutdowns.clone());
        move || {
            stop.set();
            for s in shutdowns.iter() {
                s.shutdown();
            }
        }
    };
    {
        let stop_all = stop_all.clone();
        // Not scoped: it may wait for a signal that never comes if the agent
        // stops because a server failed.
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            let sig = signals::wait_termination();
            tracing::info!("lifeboat agent: {sig}: cancelling cycles in progress, finishing NBD requests in flight");
            stop_all();
        })?;
    }
    tracing::info!("lifeboat agent: running {} of {} disk(s); SIGTERM stops", served.len(), names.len());
    let gc_every = Duration::from_secs(a.gc_every);
    let mut failures = Vec::new();
    let groups = groups(home, &served);
    let progress = |name: &str| -> Box<dyn shipper::Progress> {
        Box::new(Bar::new(&format!("{name}: "), false).quiet_when_done())
    };
    std::thread::scope(|scope| {
        for group in &groups {
            std::thread::Builder::new()
                .name(format!("cycle {}", group.label))
                .spawn_scoped(scope, || {
                    Group::new(&group.label, group.members(), &stop, &SystemClock, &progress).run_schedule(gc_every)
                })
                .expect("spawning a scheduler thread");
        }
        let handles: Vec<_> =
            servers.into_iter().map(|(name, server)| (name, scope.spawn(move || server.run()))).collect();
        for (name, h) in handles {
            if let Err(e) = h.join().expect("NBD server thread") {
                tracing::error!("lifeboat agent: error: {name}: serving NBD failed: {e}; stopping every disk");
                failures.push(format!("serving disk {name:?} over NBD failed: {e}"));
                stop_all();
            }
        }
        // Every server has stopped: end the schedulers so the scope can close.
        stop.set();
    });
    for s in served {
        s.control.stop();
        if let Some(p) = s.profiler {
            p.stop();
        }
        if let Some(t) = &s.target {
            if let Err(e) = t.record(None, "agent.stop", serde_json::json!({ "pid": std::process::id() })) {
                tracing::warn!("lifeboat agent: warning: {}: {e:#}", s.name);
            }
        }
        drop(s.target);
        let closed = match Arc::try_unwrap(s.disk) {
            Ok(disk) => disk.close().map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("internal error: disk still referenced at shutdown")),
        };
        if let Err(e) = closed {
            tracing::error!("lifeboat agent: error: {}: closing: {e:#}", s.name);
            failures.push(format!("closing disk {:?}: {e:#}", s.name));
        }
        let _ = status_file::update(&s.status_path, |st| {
            st.agent_pid = None;
            st.next_cycle_ns = None;
            st.log_lines_dropped = filter::log::dropped();
        });
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    tracing::info!("lifeboat agent: stopped cleanly");
    Ok(())
}

/// One scheduler's disks.
struct Scheduled<'a> {
    label: String,
    members: Vec<(&'a Target, &'a Arc<Disk>, bool)>,
}

impl Scheduled<'_> {
    fn members(&self) -> Vec<Member<'_>> {
        self.members.iter().map(|&(target, disk, runs_app)| Member { target, disk, runs_app }).collect()
    }
}

/// The schedulers ([`agent::runtime::groups`]): each replicated disk alone,
/// except the disks of a VM with several (or of VMs sharing a consistency
/// group), which are cut together. The first disk of each VM runs its
/// app-consistency hooks.
fn groups<'a>(home: &Home, served: &'a [Served]) -> Vec<Scheduled<'a>> {
    let replicated: Vec<(&Target, &Arc<Disk>)> =
        served.iter().filter_map(|s| Some((s.target.as_ref()?, &s.disk))).collect();
    let placements: Vec<Placement> = replicated
        .iter()
        .map(|(t, _)| {
            let vm = home.vm_of_disk(&t.name).ok().flatten();
            Placement {
                disk: t.name.clone(),
                first_of_vm: vm.as_ref().is_some_and(|v| v.disks.first() == Some(&t.name)),
                consistency_group: vm.as_ref().and_then(|v| v.consistency_group.clone()),
                vm: vm.map(|v| v.name),
            }
        })
        .collect();
    let specs = agent::runtime::groups(&placements);
    specs
        .into_iter()
        .map(|g| {
            if g.members.len() > 1 {
                let names: Vec<&str> = g.members.iter().map(|&i| placements[i].disk.as_str()).collect();
                tracing::info!("lifeboat agent: {}: disks {} are cut together", g.label, names.join(", "));
            }
            let members =
                g.members.iter().map(|&i| (replicated[i].0, replicated[i].1, placements[i].first_of_vm)).collect();
            Scheduled { label: g.label, members }
        })
        .collect()
}

/// Opens one disk: its state file (locked), control socket and NBD listener.
fn open(
    home: &Home,
    name: &str,
    copy_memory: &Arc<CopyMemory>,
    nbd: &crate::cmd::filter::NbdLimits,
    link: Option<&vault::throttle::Throttle>,
) -> Result<(Served, Server)> {
    let mut entry = home.disk(name)?;
    entry.check_usable(name)?;
    let target = match entry.config.replication {
        Some(_) => {
            let mut target = crate::replicate::load(home, name)?.1;
            target.throttle = link.map(vault::throttle::Throttle::share);
            Some(target)
        }
        None => {
            tracing::info!("lifeboat agent: {name}: no vault configured: served, but not replicated");
            None
        }
    };
    let (disk, note) = entry.open_disk(name, Arc::clone(copy_memory))?;
    if let Some(note) = note {
        tracing::info!("lifeboat agent: {note}");
    }
    let opened = disk.state().opened();
    if opened.newly_suspect {
        tracing::info!(
            "lifeboat agent: {name}: the host went down while the disk was served (or its bitmaps were damaged); \
             the next cycle verifies every block"
        );
    } else if opened.was_unclean {
        tracing::info!(
            "lifeboat agent: {name}: the previous run stopped without a clean shutdown; its bitmaps are intact"
        );
    }
    let profiler = crate::cmd::profile::start(&entry, &disk, name);
    let disk = Arc::new(disk);
    let control = match ControlServer::start(&entry.control_path(), disk.clone())
        .with_context(|| format!("starting the control socket {}", entry.control_path().display()))
    {
        Ok(c) => c,
        Err(e) => return Err(close_unserved(disk, e)),
    };
    let mut options = nbd.options(entry.config.insecure_tcp);
    let tls = match entry.config.tls_creds.as_deref().map(crate::cmd::filter::load_tls).transpose() {
        Ok(tls) => tls,
        Err(e) => {
            control.stop();
            return Err(close_unserved(disk, e.context(format!("disk {name:?} (tls_creds in its disk.toml)"))));
        }
    };
    let with_tls = tls.is_some();
    options.tls = tls;
    let listen = entry.listen().and_then(|listen| {
        if !entry.config.insecure_tcp && !with_tls {
            crate::cmd::protect::refuse_exposed(name, &listen, "lifeboat agent")?;
        }
        Ok(listen)
    });
    let bound = listen.and_then(|listen| {
        Server::bind_with(&listen, name, disk.clone(), options)
            .with_context(|| {
                format!("listening on {}", listen.iter().map(|l| l.to_string()).collect::<Vec<_>>().join(" "))
            })
            .map(|server| (server, listen))
    });
    let (server, listen) = match bound {
        Ok(s) => s,
        Err(e) => {
            control.stop();
            return Err(close_unserved(disk, e));
        }
    };
    for addr in server.local_addrs().iter().filter(|l| l.is_exposed() && !with_tls) {
        tracing::info!("lifeboat agent: {}", crate::cmd::filter::insecure_warning(name, addr));
    }
    let addrs: Vec<String> = listen.iter().map(|l| l.to_string()).collect();
    let rpo = target.as_ref().map(|t| format!(", RPO {} s", t.rpo.as_secs())).unwrap_or_default();
    tracing::info!("lifeboat agent: {name}: serving on {}{rpo}", addrs.join(" "));
    let status_path = entry.status_path();
    status_file::update(&status_path, |st| {
        st.agent_pid = Some(std::process::id());
        st.log_lines_dropped = filter::log::dropped();
    })?;
    if let Some(t) = &target {
        t.record(
            None,
            "agent.start",
            serde_json::json!({ "pid": std::process::id(), "listen": addrs, "rpo_seconds": t.rpo.as_secs() }),
        )?;
    }
    Ok((Served { name: name.to_string(), disk, profiler, control, target, status_path }, server))
}
