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

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use filter::control::ControlServer;
use filter::copies::CopyMemory;
use filter::nbd::Server;
use filter::Disk;
use shipper::{LocalSource, ShipError};
use vault::VaultError;

use crate::cmd::ship::Bar;
use crate::home::{close_unserved, Home};
use crate::replicate::Target;
use crate::signals;
use crate::size::{parse_duration, parse_size};
use crate::status_file;
use crate::time::{now_ns, rfc3339};

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
}

/// A log line on stderr with a timestamp (journald adds its own, but the
/// agent is also run by hand). A line stderr does not take is dropped and
/// counted ([`filter::log`]), never a panic: see `log_lines_dropped` in the
/// disk's status.
macro_rules! log {
    ($($arg:tt)*) => {
        filter::log_line!("{} {}", rfc3339(now_ns()), format_args!($($arg)*))
    };
}

/// The stop signal, with a wait that wakes on it.
struct Stop {
    flag: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    fn set(&self) {
        let _g = self.lock.lock().expect("stop lock");
        self.flag.store(true, Ordering::SeqCst);
        self.wake.notify_all();
    }

    fn is_set(&self) -> bool {
        self.flag.load(Ordering::SeqCst)
    }

    /// Sleeps until `deadline`; true if stopping instead.
    fn wait_until(&self, deadline: Instant) -> bool {
        let mut g = self.lock.lock().expect("stop lock");
        loop {
            if self.is_set() {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            g = self.wake.wait_timeout(g, deadline - now).expect("stop lock").0;
        }
    }
}

/// One disk the agent runs.
struct Served {
    name: String,
    disk: Arc<Disk>,
    control: ControlServer,
    target: Option<Target>,
    status_path: std::path::PathBuf,
}

pub fn run(home: &Home, a: Args) -> Result<()> {
    signals::block_termination().context("blocking SIGTERM/SIGINT")?;
    crate::cmd::filter::raise_open_files_limit(&format!("{} lifeboat agent", rfc3339(now_ns())));
    let names = if a.disks.is_empty() { home.disk_names()? } else { a.disks.clone() };
    if names.is_empty() {
        bail!(
            "no protected disks in this home; protect one with \
             `lifeboat protect NAME --image IMAGE --vault DIR --key KEYFILE` (or pass the right --home / LIFEBOAT_HOME)"
        );
    }
    let vaults: Vec<std::path::PathBuf> =
        names.iter().filter_map(|n| home.disk(n).ok()?.config.replication.map(|r| r.vault)).collect();
    for t in home.make_private(&vaults.iter().map(std::path::PathBuf::as_path).collect::<Vec<_>>())? {
        log!("lifeboat agent: {t}: it was open to other users; Lifeboat keeps its home and vault private");
    }
    let copy_memory = a.copy_memory.map_or_else(CopyMemory::global, CopyMemory::new);
    let mut served = Vec::new();
    let mut servers = Vec::new();
    for name in &names {
        match open(home, name, &copy_memory, &a.nbd) {
            Ok((s, server)) => {
                served.push(s);
                servers.push((name.clone(), server));
            }
            Err(e) => {
                log!(
                    "lifeboat agent: error: {name}: {}; this disk is not served or replicated",
                    crate::error_chain(&e)
                );
            }
        }
    }
    if served.is_empty() {
        bail!("none of the {} protected disk(s) could be started (see above)", names.len());
    }
    let stop = Arc::new(Stop { flag: AtomicBool::new(false), lock: Mutex::new(()), wake: Condvar::new() });
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
            log!("lifeboat agent: {sig}: cancelling cycles in progress, finishing NBD requests in flight");
            stop_all();
        })?;
    }
    log!("lifeboat agent: running {} of {} disk(s); SIGTERM stops", served.len(), names.len());
    let gc_every = Duration::from_secs(a.gc_every);
    let mut failures = Vec::new();
    let groups = groups(home, &served);
    std::thread::scope(|scope| {
        for (label, members) in &groups {
            let stop = &*stop;
            std::thread::Builder::new()
                .name(format!("cycle {label}"))
                .spawn_scoped(scope, move || schedule(label, members, stop, gc_every))
                .expect("spawning a scheduler thread");
        }
        let handles: Vec<_> =
            servers.into_iter().map(|(name, server)| (name, scope.spawn(move || server.run()))).collect();
        for (name, h) in handles {
            if let Err(e) = h.join().expect("NBD server thread") {
                log!("lifeboat agent: error: {name}: serving NBD failed: {e}; stopping every disk");
                failures.push(format!("serving disk {name:?} over NBD failed: {e}"));
                stop_all();
            }
        }
        // Every server has stopped: end the schedulers so the scope can close.
        stop.set();
    });
    for s in served {
        s.control.stop();
        if let Some(t) = &s.target {
            if let Err(e) = t.record(None, "agent.stop", serde_json::json!({ "pid": std::process::id() })) {
                log!("lifeboat agent: warning: {}: {e:#}", s.name);
            }
        }
        drop(s.target);
        let closed = match Arc::try_unwrap(s.disk) {
            Ok(disk) => disk.close().map_err(anyhow::Error::from),
            Err(_) => Err(anyhow::anyhow!("internal error: disk still referenced at shutdown")),
        };
        if let Err(e) = closed {
            log!("lifeboat agent: error: {}: closing: {e:#}", s.name);
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
    log!("lifeboat agent: stopped cleanly");
    Ok(())
}

/// The schedulers: each replicated disk alone, except the disks of a VM
/// with several (or of VMs sharing a consistency group), which are cut
/// together. The first disk of each VM runs its app-consistency hooks.
fn groups<'a>(home: &Home, served: &'a [Served]) -> Vec<(String, Vec<Member<'a>>)> {
    let mut out: Vec<(String, Vec<Member<'a>>)> = Vec::new();
    for s in served {
        let Some(t) = &s.target else { continue };
        let vm = home.vm_of_disk(&s.name).ok().flatten();
        let runs_app = vm.as_ref().is_some_and(|v| v.disks.first() == Some(&s.name));
        let key = vm.as_ref().map(|v| v.consistency_group.clone().unwrap_or_else(|| format!("VM {}", v.name)));
        match key.and_then(|k| out.iter_mut().find(|(l, _)| *l == k).map(|g| (k, g))) {
            Some((_, (_, members))) => members.push((t, &s.disk, runs_app)),
            None => {
                let label = vm.as_ref().map_or_else(
                    || s.name.clone(),
                    |v| v.consistency_group.clone().unwrap_or_else(|| format!("VM {}", v.name)),
                );
                out.push((label, vec![(t, &s.disk, runs_app)]));
            }
        }
    }
    for (label, members) in &out {
        if members.len() > 1 {
            let names: Vec<&str> = members.iter().map(|m| m.0.name.as_str()).collect();
            log!("lifeboat agent: {label}: disks {} are cut together", names.join(", "));
        }
    }
    out
}

/// Opens one disk: its state file (locked), control socket and NBD listener.
fn open(
    home: &Home,
    name: &str,
    copy_memory: &Arc<CopyMemory>,
    nbd: &crate::cmd::filter::NbdLimits,
) -> Result<(Served, Server)> {
    let mut entry = home.disk(name)?;
    entry.check_usable(name)?;
    let target = match entry.config.replication {
        Some(_) => Some(Target::load(home, name)?.1),
        None => {
            log!("lifeboat agent: {name}: no vault configured: served, but not replicated");
            None
        }
    };
    let (disk, note) = entry.open_disk(name, Arc::clone(copy_memory))?;
    if let Some(note) = note {
        log!("lifeboat agent: {note}");
    }
    let opened = disk.state().opened();
    if opened.newly_suspect {
        log!(
            "lifeboat agent: {name}: the host went down while the disk was served (or its bitmaps were damaged); \
             the next cycle verifies every block"
        );
    } else if opened.was_unclean {
        log!("lifeboat agent: {name}: the previous run stopped without a clean shutdown; its bitmaps are intact");
    }
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
        log!("lifeboat agent: {}", crate::cmd::filter::insecure_warning(name, addr));
    }
    let addrs: Vec<String> = listen.iter().map(|l| l.to_string()).collect();
    let rpo = target.as_ref().map(|t| format!(", RPO {} s", t.settings.rpo_seconds)).unwrap_or_default();
    log!("lifeboat agent: {name}: serving on {}{rpo}", addrs.join(" "));
    let status_path = entry.status_path();
    status_file::update(&status_path, |st| {
        st.agent_pid = Some(std::process::id());
        st.log_lines_dropped = filter::log::dropped();
    })?;
    if let Some(t) = &target {
        t.record(
            None,
            "agent.start",
            serde_json::json!({ "pid": std::process::id(), "listen": addrs, "rpo_seconds": t.settings.rpo_seconds }),
        )?;
    }
    Ok((Served { name: name.to_string(), disk, control, target, status_path }, server))
}

/// How one cycle ended, for the scheduler.
enum Outcome {
    Committed,
    Cancelled,
    Failed,
}

/// Logs one cycle's result and applies retention after a commit.
fn handle(
    t: &Target,
    disk: &Disk,
    result: Result<(shipper::CycleReport, vault::Vault)>,
    took: Duration,
    gc_every: Duration,
    last_gc: &mut Option<Instant>,
) -> Outcome {
    let name = &t.name;
    match result {
        Ok((r, vault)) => {
            // Only a cut whose blocks were overwritten before they were read made copies.
            let copies = disk.last_cut_copies().map_or_else(String::new, |c| {
                format!(
                    "; blocks overwritten before they were read held up to {} MiB of copies in memory and {} MiB in \
                     the scratch file",
                    c.memory_bytes >> 20,
                    c.file_bytes >> 20
                )
            });
            log!(
                "lifeboat agent: {name}: point {} committed ({}{}): {} blocks read ({} from the page cache), {} new, {} \
                 bytes shipped in {:.1} s{copies}",
                r.sequence,
                if r.full { "full sync" } else { "incremental" },
                if r.app_consistent { ", app-consistent" } else { "" },
                r.blocks_read,
                r.cached_blocks,
                r.new_blocks,
                r.bytes_shipped,
                took.as_secs_f64()
            );
            for w in &r.warnings {
                log!("lifeboat agent: warning: {name}: {w}");
            }
            retention(t, vault, &t.settings.retention.policy(), gc_every, last_gc);
            Outcome::Committed
        }
        Err(e) if matches!(e.downcast_ref::<ShipError>(), Some(ShipError::Cancelled)) => {
            log!(
                "lifeboat agent: {name}: cycle cancelled after {:.1} s; its changes stay marked dirty",
                took.as_secs_f64()
            );
            Outcome::Cancelled
        }
        Err(e) => {
            log!(
                "lifeboat agent: error: {name}: cycle failed: {}; its changes stay marked dirty",
                crate::error_chain(&e)
            );
            Outcome::Failed
        }
    }
}

/// One disk of a scheduler: its target, its disk, and whether its cycles
/// run the VM's app-consistency hooks.
type Member<'a> = (&'a Target, &'a Arc<Disk>, bool);

/// Runs the cycles of one disk — or of every disk of one consistency group,
/// cut together in one round — until `stop`.
fn schedule(label: &str, members: &[Member<'_>], stop: &Stop, gc_every: Duration) {
    let interval = Duration::from_secs(members.iter().map(|m| m.0.settings.rpo_seconds).min().unwrap_or(1).max(1));
    let mut due = Instant::now(); // the first cycle runs at once
    let mut failures = 0u32;
    let mut last_gc: Vec<Option<Instant>> = vec![None; members.len()];
    loop {
        for (t, _, _) in members {
            let _ = status_file::update(&t.status_path, |st| {
                st.next_cycle_ns = Some(
                    now_ns() + u64::try_from(due.saturating_duration_since(Instant::now()).as_nanos()).unwrap_or(0),
                );
                st.log_lines_dropped = filter::log::dropped();
            });
        }
        if stop.wait_until(due) {
            return;
        }
        let start = Instant::now();
        let late = start.duration_since(due);
        let late_ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX);
        let run = |t: &Target, disk: &Arc<Disk>, group: Option<(&crate::group_cut::Round<'_>, &Arc<Disk>, bool)>| {
            let mut bar = Bar::new(&format!("{}: ", t.name), false).quiet_when_done();
            let mut source = LocalSource::shared(disk.clone());
            let r = t.cycle(&mut source, Some(&stop.flag), late_ms, &mut bar, group);
            (r, start.elapsed())
        };
        let results: Vec<_> = if members.len() == 1 {
            let (t, disk, _) = members[0];
            vec![run(t, disk, None)]
        } else {
            match crate::group_cut::Round::new(members.len(), GROUP_CUT_TIMEOUT, Some(&stop.flag)) {
                Ok(round) => std::thread::scope(|scope| {
                    let handles: Vec<_> = members
                        .iter()
                        .map(|&(t, disk, app)| {
                            let (round, run) = (&round, &run);
                            scope.spawn(move || run(t, disk, Some((round, disk, app))))
                        })
                        .collect();
                    handles.into_iter().map(|h| h.join().expect("a cycle thread panicked")).collect()
                }),
                Err(e) => members.iter().map(|&(_, _, _)| (Err(anyhow::anyhow!("{e:#}")), start.elapsed())).collect(),
            }
        };
        let mut failed = false;
        for ((result, took), ((t, disk, _), gc)) in results.into_iter().zip(members.iter().zip(last_gc.iter_mut())) {
            match handle(t, disk, result, took, gc_every, gc) {
                Outcome::Committed => {}
                Outcome::Cancelled => return,
                Outcome::Failed => failed = true,
            }
        }
        if failed {
            failures += 1;
            let retry = Duration::from_secs(5u64 << failures.min(10).saturating_sub(1)).min(interval);
            log!("lifeboat agent: {label}: retrying in {} s", retry.as_secs());
            due = Instant::now() + retry;
            continue;
        }
        failures = 0;
        let delayed;
        (due, delayed) = next_due(due, interval, Instant::now());
        if delayed {
            log!(
                "lifeboat agent: {label}: the cycle (started {:.0} s late, took {:.0} s) ended after the next one was \
                 due: longer than the {} s RPO; the next one starts now (the achieved RPO grows until cycles catch up)",
                late.as_secs_f64(),
                start.elapsed().as_secs_f64(),
                interval.as_secs()
            );
        }
    }
}

/// How long the disks of a group wait for each other at a cut.
const GROUP_CUT_TIMEOUT: Duration = Duration::from_secs(10);

/// When the cycle after one scheduled for `due` starts: an interval later,
/// or `now` if that has passed (the cycle overran: `true`). Never sooner than
/// scheduled, and an overrun is not made up for with a burst of cycles.
fn next_due(due: Instant, interval: Duration, now: Instant) -> (Instant, bool) {
    let next = due + interval;
    if next < now {
        (now, true)
    } else {
        (next, false)
    }
}

/// Applies the disk's retention ladder after a committed cycle, and collects
/// the vault's garbage when points were pruned and the last collection is
/// older than `gc_every`. Under its lease (a cycle of any disk on the vault
/// that starts meanwhile backs off) the collection only discards; the space
/// is freed on a thread of its own, so the next cycle starts on time.
fn retention(
    t: &Target,
    vault: vault::Vault,
    policy: &vault::retention::Policy,
    gc_every: Duration,
    last_gc: &mut Option<Instant>,
) {
    let name = &t.name;
    let pruned = match vault.prune_disk(&t.keys, name, &t.disk_id, policy, now_ns()) {
        Ok(r) => {
            if !r.pruned.is_empty() {
                let details = serde_json::json!({ "pruned": r.pruned, "kept": r.kept, "held": r.held, "by": "agent" });
                if let Err(e) = t.record(Some(&vault), "prune", details) {
                    log!("lifeboat agent: warning: {name}: {e:#}");
                }
            }
            r.pruned.len()
        }
        Err(e) => {
            log!("lifeboat agent: warning: {name}: pruning old points failed: {e}; they are kept until the next try");
            return;
        }
    };
    if pruned > 0 {
        log!("lifeboat agent: {name}: pruned {pruned} point(s) past the retention ladder");
    }
    if gc_every.is_zero() || last_gc.is_some_and(|at| at.elapsed() < gc_every) || (pruned == 0 && last_gc.is_some()) {
        return;
    }
    let started = Instant::now();
    match vault.collect(false) {
        Ok(r) => {
            *last_gc = Some(Instant::now());
            let took = started.elapsed();
            let unfinished = r.unfinished_bytes();
            let details = serde_json::json!({
                "packs_deleted": r.packs_deleted.len(), "pages_deleted": r.pages_deleted.len(),
                "unfinished_deleted": r.unfinished_removed.len(),
                "bytes_freed": r.pack_bytes_deleted + r.page_bytes_deleted + unfinished, "by": "agent",
            });
            if let Err(e) = t.record(Some(&vault), "gc", details) {
                log!("lifeboat agent: warning: {name}: {e:#}");
            }
            if !r.packs_deleted.is_empty() || !r.pages_deleted.is_empty() || !r.unfinished_removed.is_empty() {
                log!(
                    "lifeboat agent: {name}: garbage collection freed {} bytes ({} packs, {} pages, {} unfinished) \
                     in {:.1} s",
                    r.pack_bytes_deleted + r.page_bytes_deleted + unfinished,
                    r.packs_deleted.len(),
                    r.pages_deleted.len(),
                    r.unfinished_removed.len(),
                    took.as_secs_f64()
                );
            }
            empty_trash_beside(name.clone(), vault);
        }
        // Another disk's cycle on the same vault: collect after a later cycle.
        Err(VaultError::Busy { .. }) => {}
        Err(e) => log!("lifeboat agent: warning: {name}: garbage collection failed: {e}"),
    }
}

/// Frees the space a collection discarded, on a thread of its own (not
/// waited for: a stop leaves the rest to the next collection).
fn empty_trash_beside(name: String, vault: vault::Vault) {
    let spawned = std::thread::Builder::new().name("empty trash".into()).spawn({
        let name = name.clone();
        move || {
            let started = Instant::now();
            match vault.empty_trash() {
                Ok((0, _)) => {}
                Ok((n, bytes)) => log!(
                    "lifeboat agent: {name}: emptied the vault's trash: {n} objects, {bytes} bytes, in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => log!(
                    "lifeboat agent: warning: {name}: emptying the vault's trash failed: {e}; the next garbage \
                     collection tries again"
                ),
            }
        }
    });
    if let Err(e) = spawned {
        log!("lifeboat agent: warning: {name}: could not start emptying the vault's trash: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_keep_their_schedule_and_an_overrun_delays_the_next() {
        let t0 = Instant::now();
        let i = Duration::from_secs(30);
        // On time: the next is an interval after the scheduled start, even if
        // this one started late or took a while.
        assert_eq!(next_due(t0, i, t0 + Duration::from_secs(12)), (t0 + i, false));
        // Overran: the next starts at once, without a burst to catch up.
        let now = t0 + Duration::from_secs(95);
        assert_eq!(next_due(t0, i, now), (now, true));
        let (n, d) = next_due(now, i, now + Duration::from_secs(1));
        assert_eq!((n, d), (now + i, false));
    }

    #[test]
    fn stop_wakes_a_sleeping_scheduler() {
        let stop = Arc::new(Stop { flag: AtomicBool::new(false), lock: Mutex::new(()), wake: Condvar::new() });
        assert!(!stop.wait_until(Instant::now() + Duration::from_millis(10)), "no stop yet");
        let s2 = stop.clone();
        let t = std::thread::spawn(move || s2.wait_until(Instant::now() + Duration::from_secs(600)));
        std::thread::sleep(Duration::from_millis(50));
        stop.set();
        assert!(t.join().unwrap(), "a stop wakes the waiter instead of letting it sleep for 10 minutes");
    }
}
