//! The agent's real cycles: one [`Group`] per scheduler, the disks of one
//! VM or consistency group (or one disk alone), each cycle on its own
//! thread when they are cut together; the log lines, the status file,
//! retention after every commit, and garbage collection with its trash
//! emptied on a thread of its own.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use shipper::{LocalSource, Progress};
use vault::{Vault, VaultError};

use crate::clock::{Clock, Stop};
use crate::round::Round;
use crate::schedule::{CycleEnd, Cycles, GcEnd, Note};
use crate::target::{chain, CycleError, GroupPart, Target};

/// How long the disks of a group wait for each other at a cut.
pub const GROUP_CUT_TIMEOUT: Duration = Duration::from_secs(10);

/// One disk of a scheduler.
pub struct Member<'a> {
    /// Its replication target.
    pub target: &'a Target,
    /// The disk, served by this process.
    pub disk: &'a Arc<filter::Disk>,
    /// Whether its cycles run the VM's quiescing (the first disk of each VM).
    pub runs_app: bool,
}

/// Makes the progress reporter of one cycle, given the disk's name.
pub type ProgressFactory<'a> = &'a (dyn Fn(&str) -> Box<dyn Progress> + Sync);

/// The cycles of one scheduler, run for real.
pub struct Group<'a> {
    label: String,
    members: Vec<Member<'a>>,
    stop: &'a Stop,
    clock: &'a dyn Clock,
    progress: ProgressFactory<'a>,
    /// Each member's vault as its last committed cycle left it, for the
    /// garbage collection that may follow.
    vaults: Mutex<Vec<Option<Vault>>>,
}

impl<'a> Group<'a> {
    /// A scheduler's cycles: `members` cut together (one alone is cut alone).
    pub fn new(
        label: &str,
        members: Vec<Member<'a>>,
        stop: &'a Stop,
        clock: &'a dyn Clock,
        progress: ProgressFactory<'a>,
    ) -> Group<'a> {
        let vaults = Mutex::new(members.iter().map(|_| None).collect());
        Group { label: label.to_string(), members, stop, clock, progress, vaults }
    }

    /// The shortest RPO of the members: the round's interval.
    pub fn interval(&self) -> Duration {
        self.members.iter().map(|m| m.target.rpo).min().unwrap_or(Duration::from_secs(1))
    }

    /// Runs the scheduler until the stop (or a cancelled cycle).
    pub fn run_schedule(&self, gc_every: Duration) {
        crate::schedule::run(self, self.clock, self.stop, self.interval(), gc_every);
    }

    fn cycle(
        &self,
        m: &Member<'_>,
        late_ms: u64,
        group: Option<GroupPart<'_>>,
    ) -> Result<(shipper::CycleReport, Vault), CycleError> {
        let mut progress = (self.progress)(&m.target.name);
        let mut source = LocalSource::shared(m.disk.clone());
        m.target.cycle(&mut source, Some(self.stop.flag()), late_ms, progress.as_mut(), group)
    }

    /// Logs one member's result; after a commit applies retention.
    fn finish(
        &self,
        member: usize,
        result: Result<(shipper::CycleReport, Vault), CycleError>,
        took: Duration,
    ) -> CycleEnd {
        let m = &self.members[member];
        let name = &m.target.name;
        match result {
            Ok((r, vault)) => {
                log_commit(name, m.disk, &r, took);
                let pruned = prune(m.target, &vault);
                self.vaults.lock().unwrap_or_else(PoisonError::into_inner)[member] = Some(vault);
                CycleEnd::Committed { pruned }
            }
            Err(e) if e.cancelled() => {
                tracing::info!(
                    "lifeboat agent: {name}: cycle cancelled after {:.1} s; its changes stay marked dirty",
                    took.as_secs_f64()
                );
                CycleEnd::Cancelled
            }
            Err(e) => {
                tracing::info!(
                    "lifeboat agent: error: {name}: cycle failed: cycle of disk {name:?}: {}; its changes stay marked \
                     dirty",
                    chain(&e)
                );
                CycleEnd::Failed
            }
        }
    }
}

impl Cycles for Group<'_> {
    fn members(&self) -> usize {
        self.members.len()
    }

    fn run(&self, late: Duration) -> Vec<CycleEnd> {
        let start = Instant::now();
        let late_ms = u64::try_from(late.as_millis()).unwrap_or(u64::MAX);
        if let [m] = &self.members[..] {
            let r = self.cycle(m, late_ms, None);
            return vec![self.finish(0, r, start.elapsed())];
        }
        let results: Vec<_> = match Round::new(self.members.len(), GROUP_CUT_TIMEOUT, Some(self.stop.flag())) {
            Ok(round) => std::thread::scope(|scope| {
                let handles: Vec<_> = self
                    .members
                    .iter()
                    .map(|m| {
                        let round = &round;
                        scope.spawn(move || {
                            let part = GroupPart { round, disk: &**m.disk, runs_app: m.runs_app };
                            (self.cycle(m, late_ms, Some(part)), start.elapsed())
                        })
                    })
                    .collect();
                handles.into_iter().map(|h| h.join().expect("a cycle thread panicked")).collect()
            }),
            Err(e) => {
                tracing::error!("lifeboat agent: error: {}: no group id for the cut: {e}", self.label);
                return self.members.iter().map(|_| CycleEnd::Failed).collect();
            }
        };
        results.into_iter().enumerate().map(|(i, (r, took))| self.finish(i, r, took)).collect()
    }

    fn collect_garbage(&self, member: usize) -> GcEnd {
        let vault = self.vaults.lock().unwrap_or_else(PoisonError::into_inner)[member].take();
        match vault {
            Some(vault) => collect(self.members[member].target, vault),
            None => GcEnd::Failed,
        }
    }

    fn note(&self, note: Note) {
        match note {
            Note::Planned { at_ns } => {
                for m in &self.members {
                    let _ = crate::status::update(&m.target.status_path, |st| {
                        st.next_cycle_ns = Some(at_ns);
                        st.log_lines_dropped = filter::log::dropped();
                    });
                }
            }
            Note::Retrying { after } => {
                tracing::info!("lifeboat agent: {}: retrying in {} s", self.label, after.as_secs());
            }
            Note::Overran { late, took, interval } => tracing::info!(
                "lifeboat agent: {}: the cycle (started {:.0} s late, took {:.0} s) ended after the next one was \
                 due: longer than the {} s RPO; the next one starts now (the achieved RPO grows until cycles catch up)",
                self.label,
                late.as_secs_f64(),
                took.as_secs_f64(),
                interval.as_secs()
            ),
        }
    }
}

fn log_commit(name: &str, disk: &filter::Disk, r: &shipper::CycleReport, took: Duration) {
    // Only a cut whose blocks were overwritten before they were read made copies.
    let copies = disk.last_cut_copies().map_or_else(String::new, |c| {
        format!(
            "; blocks overwritten before they were read held up to {} MiB of copies in memory and {} MiB in the \
             scratch file",
            c.memory_bytes >> 20,
            c.file_bytes >> 20
        )
    });
    tracing::info!(
        "lifeboat agent: {name}: point {} committed ({}{}): {} blocks read ({} from the page cache), {} new, {} bytes \
         shipped in {:.1} s{copies}",
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
        tracing::warn!("lifeboat agent: warning: {name}: {w}");
    }
}

/// Applies the disk's retention ladder after a committed cycle; how many
/// points it pruned (0 when pruning failed: they are kept until the next try).
///
/// Not on a vault server: it is append-only for the hosts (a stolen host
/// cannot delete points), and retention runs at the site, by path.
fn prune(t: &Target, vault: &Vault) -> usize {
    if t.vault.is_server() || t.deletes_refused.load(std::sync::atomic::Ordering::Relaxed) {
        return 0;
    }
    let name = &t.name;
    match vault.prune_disk(&t.keys, name, &t.disk_id, &t.retention, system::clock::now_ns()) {
        Ok(r) if r.pruned.is_empty() => 0,
        Ok(r) => {
            let details = serde_json::json!({ "pruned": r.pruned, "kept": r.kept, "held": r.held, "by": "agent" });
            if let Err(e) = t.record(Some(vault), "prune", details) {
                tracing::warn!("lifeboat agent: warning: {name}: {}", chain(&e));
            }
            tracing::info!("lifeboat agent: {name}: pruned {} point(s) past the retention ladder", r.pruned.len());
            r.pruned.len()
        }
        Err(e @ VaultError::Refused { .. }) => {
            refused_deletes(t, &e);
            0
        }
        Err(e) => {
            tracing::warn!(
                "lifeboat agent: warning: {name}: pruning old points failed: {e}; they are kept until the next try"
            );
            0
        }
    }
}

/// Collects the vault's garbage. Under its lease (a cycle of any disk on the
/// vault that starts meanwhile backs off) the collection only discards; the
/// space is freed on a thread of its own, so the next cycle starts on time.
///
/// On a vault server the site collects (by path); the agent has nothing to
/// do, which counts as done.
fn collect(t: &Target, vault: Vault) -> GcEnd {
    if t.vault.is_server() || t.deletes_refused.load(std::sync::atomic::Ordering::Relaxed) {
        return GcEnd::Collected;
    }
    let name = &t.name;
    let started = Instant::now();
    match vault.collect(false) {
        Ok(r) => {
            let took = started.elapsed();
            let unfinished = r.unfinished_bytes();
            let freed = r.pack_bytes_deleted + r.page_bytes_deleted + unfinished;
            let details = serde_json::json!({
                "packs_deleted": r.packs_deleted.len(), "pages_deleted": r.pages_deleted.len(),
                "unfinished_deleted": r.unfinished_removed.len(), "bytes_freed": freed,
                "locks_extended": r.locks_extended, "by": "agent",
            });
            if let Err(e) = t.record(Some(&vault), "gc", details) {
                tracing::warn!("lifeboat agent: warning: {name}: {}", chain(&e));
            }
            if !r.packs_deleted.is_empty() || !r.pages_deleted.is_empty() || !r.unfinished_removed.is_empty() {
                tracing::info!(
                    "lifeboat agent: {name}: garbage collection freed {freed} bytes ({} packs, {} pages, {} unfinished) \
                     in {:.1} s",
                    r.packs_deleted.len(),
                    r.pages_deleted.len(),
                    r.unfinished_removed.len(),
                    took.as_secs_f64()
                );
            }
            empty_trash_beside(name.clone(), vault);
            GcEnd::Collected
        }
        // Another disk's cycle on the same vault: collect after a later cycle.
        Err(VaultError::Busy { .. }) => GcEnd::Busy,
        Err(e @ VaultError::Refused { .. }) => {
            refused_deletes(t, &e);
            GcEnd::Collected
        }
        Err(e) => {
            tracing::warn!("lifeboat agent: warning: {name}: garbage collection failed: {e}");
            GcEnd::Failed
        }
    }
}

/// The vault's store refused this host a delete: its credentials may not
/// delete (a protected host's least-privilege credentials, as the README
/// advises). Said once; retention and collection of this disk are then
/// left to a machine that may delete, and not tried again by this agent.
fn refused_deletes(t: &Target, e: &VaultError) {
    if !t.deletes_refused.swap(true, std::sync::atomic::Ordering::Relaxed) {
        tracing::warn!(
            "lifeboat agent: {}: the vault's store refuses this host's deletes ({e}); this agent no longer prunes \
             or collects garbage in {}: run `lifeboat prune --all --vault {}` and `lifeboat vault gc {}` from a \
             machine that may delete",
            t.name,
            t.vault,
            t.vault,
            t.vault
        );
    }
}

/// Frees the space a collection discarded, on a thread of its own (not
/// waited for: a stop leaves the rest to the next collection).
fn empty_trash_beside(name: String, vault: Vault) {
    let spawned = std::thread::Builder::new().name("empty trash".into()).spawn({
        let name = name.clone();
        move || {
            let started = Instant::now();
            match vault.empty_trash() {
                Ok((0, _)) => {}
                Ok((n, bytes)) => tracing::info!(
                    "lifeboat agent: {name}: emptied the vault's trash: {n} objects, {bytes} bytes, in {:.1} s",
                    started.elapsed().as_secs_f64()
                ),
                Err(e) => tracing::info!(
                    "lifeboat agent: warning: {name}: emptying the vault's trash failed: {e}; the next garbage \
                     collection tries again"
                ),
            }
        }
    });
    if let Err(e) = spawned {
        tracing::warn!("lifeboat agent: warning: {name}: could not start emptying the vault's trash: {e}");
    }
}

/// A disk's place in the VMs the home defines, for [`groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The disk.
    pub disk: String,
    /// Its VM, if it belongs to one.
    pub vm: Option<String>,
    /// The VM's consistency group, if it names one.
    pub consistency_group: Option<String>,
    /// Whether the disk is its VM's first (it runs the VM's quiescing).
    pub first_of_vm: bool,
}

/// One scheduler's disks: indexes into the placements given to [`groups`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupSpec {
    /// How the log names it: the disk, `VM name`, or the consistency group.
    pub label: String,
    /// The member disks, as indexes into the placements.
    pub members: Vec<usize>,
}

/// Which disks are cut together: each disk alone, except the disks of a VM
/// (or of VMs sharing a consistency group), in the order given.
pub fn groups(placements: &[Placement]) -> Vec<GroupSpec> {
    // Each with whether it is a VM's (or consistency group's): only those take more disks.
    let mut out: Vec<(GroupSpec, bool)> = Vec::new();
    for (i, p) in placements.iter().enumerate() {
        let key = p.vm.as_ref().map(|vm| p.consistency_group.clone().unwrap_or_else(|| format!("VM {vm}")));
        match key {
            Some(k) => match out.iter_mut().find(|(g, of_vm)| *of_vm && g.label == k) {
                Some((g, _)) => g.members.push(i),
                None => out.push((GroupSpec { label: k, members: vec![i] }, true)),
            },
            None => out.push((GroupSpec { label: p.disk.clone(), members: vec![i] }, false)),
        }
    }
    out.into_iter().map(|(g, _)| g).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(disk: &str, vm: Option<&str>, group: Option<&str>) -> Placement {
        Placement {
            disk: disk.into(),
            vm: vm.map(Into::into),
            consistency_group: group.map(Into::into),
            first_of_vm: false,
        }
    }

    #[test]
    fn disks_of_a_vm_or_a_consistency_group_are_cut_together_and_the_rest_alone() {
        let p = [
            place("a", None, None),
            place("web-root", Some("web"), None),
            place("db-root", Some("db"), Some("shop")),
            place("web-data", Some("web"), None),
            place("app-root", Some("app"), Some("shop")),
            place("b", None, None),
        ];
        let g = groups(&p);
        let got: Vec<(&str, &[usize])> = g.iter().map(|g| (g.label.as_str(), &g.members[..])).collect();
        assert_eq!(got, [("a", &[0][..]), ("VM web", &[1, 3]), ("shop", &[2, 4]), ("b", &[5])]);
    }

    #[test]
    fn a_disk_named_like_a_group_label_is_not_pulled_into_it() {
        // Disks alone never join a group, whatever their name.
        let p = [place("shop", None, None), place("x", Some("v"), Some("shop"))];
        assert_eq!(groups(&p).len(), 2);
    }
}
