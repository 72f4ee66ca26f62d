//! One simulated world: a disk behind a fake filter, a fake vault backend, a
//! fake clock, the shipper's real cycle logic and the vault's real retention,
//! garbage collection, restore and check, driven by a seeded schedule and
//! checked against a model after every step.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use disk_format::{BlockId, Geometry, Keys, LastPoint, MasterKey, Pack, PageId, Root};
use filter::{CutInfo, CutKind};
use shipper::{run_cycle, CutSource, CycleOptions, ShipError};
use vault::{HostIdentity, Kind, Policy, Vault, VaultError};

use super::disk::SimDisk;
use super::rng::{block_bytes, fill_block, Rng};
use super::store::{Action, Fault, Op, Store};

/// The disk's name in the vault.
pub const DISK: &str = "vm1";
const DISK_ID: [u8; 16] = *b"lifeboat-sim-vm1";

/// The chain the disk's points are stored under (its namespace under the
/// simulation's key).
fn chain() -> String {
    Vault::chain_of(&MasterKey::from_bytes([0x5a; 32]).keys(), &DISK_ID)
}
/// The fake clock starts in 2026.
const START_NS: u64 = 1_790_000_000 * 1_000_000_000;
const SECOND: u64 = 1_000_000_000;
/// A pid no process has (above any pid_max): a lease naming it is stale.
const DEAD_PID: u32 = u32::MAX - 1;

type Check = Result<(), String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// The default longest schedule.
pub const DEFAULT_MAX_STEPS: u64 = 16;

/// How to run one seed.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// Print every step and event (replaying one seed).
    pub trace: bool,
    /// After deliberate damage, a clean cycle must still commit a point
    /// (off by default: damage inherited through shared pages and deduplicated blocks can still fail later restores; see `a_damaged_map_page_does_not_stop_replication`).
    pub strict_after_damage: bool,
    /// With `strict_after_damage`: the clean cycle after damage fails
    /// (its root's put fails), so a test can see that strict mode reports
    /// every failure, not only the one it was written for.
    pub fail_cycle_after_damage: bool,
    /// The longest schedule (steps); each seed draws its length from
    /// `max_steps / 4 ..= max_steps`. 0 means [`DEFAULT_MAX_STEPS`].
    pub max_steps: u64,
}

/// A recovery point as the model knows it.
#[derive(Debug, Clone)]
struct Point {
    /// The disk at the point's cut (pattern per block).
    content: Vec<u32>,
    geometry: Geometry,
    cut_time: u64,
    /// BLAKE3 of the root's bytes when it was committed: roots never change.
    root_hash: blake3::Hash,
}

/// What the vault must hold, and what is known about it.
#[derive(Debug, Default)]
struct Model {
    points: BTreeMap<u64, Point>,
    /// Highest sequence ever committed: new points must come after it.
    max_seq: u64,
    /// Points restored and compared since the last step that deleted or damaged anything.
    verified: BTreeSet<u64>,
    /// Points held by a restore on another host: sequence -> lease name.
    held: BTreeMap<u64, String>,
    /// Objects damaged on purpose ("kind/name").
    corrupted: Vec<String>,
    /// The newest point committed, even if the vault lost it since: what
    /// the disk's dirty map is relative to.
    last: Option<(u64, Point)>,
}

impl Model {
    fn newest(&self) -> Option<(u64, &Point)> {
        self.points.iter().next_back().map(|(s, p)| (*s, p))
    }
}

/// Faults and events planned for one cycle.
#[derive(Debug, Clone)]
enum InCycle {
    /// VM writes (how many).
    Write(u32),
    /// The filter process dies and restarts: the cut is merged back, the control connection is gone.
    FilterCrash,
    /// The host goes down: filter and shipper die, the state becomes suspect.
    HostCrash,
    /// The shipper process dies: nothing more reaches the vault.
    ShipperCrash,
    /// Another process tries a garbage collection (must be refused while the cycle runs).
    Gc,
    /// Another process runs a dry-run garbage collection.
    DryGc,
    /// Another process prunes.
    Prune(Policy),
    /// Another process restores a point.
    Restore,
    /// The agent asks the cycle to stop.
    Cancel,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FinishFault {
    /// The control connection drops at finish: the filter aborts the cut (bits back to live).
    LostConnection,
    /// The filter finished the cut, but the reply was lost.
    ReplyLost,
}

#[derive(Debug, Clone)]
struct CutRecord {
    snapshot: Vec<u32>,
    clock: u64,
    kind: CutKind,
    geometry: Geometry,
    suspect: bool,
}

/// What happened inside one cycle.
#[derive(Debug, Default)]
struct CycleLog {
    cut: Option<CutRecord>,
    finish_failed: bool,
    read_error: bool,
    filter_crashed: bool,
    host_crashed: bool,
    shipper_crashed: bool,
    cancelled: bool,
    /// Points another process pruned meanwhile.
    pruned: Vec<u64>,
    violations: Vec<String>,
}

/// The `CutSource` the cycle reads: the fake disk plus the schedule's events
/// between (and inside) its calls.
struct CycleSource<'a> {
    disk: &'a mut SimDisk,
    rng: Rng,
    pool: u32,
    clock: &'a AtomicU64,
    store: &'a Arc<Store>,
    keys: &'a Keys,
    model: &'a Model,
    out: &'a File,
    trace: bool,
    cancel: &'a AtomicBool,
    events: Vec<(u64, InCycle)>,
    read_error_at: Option<u64>,
    finish_fault: Option<FinishFault>,
    tick: u64,
    reads: u64,
    dead: bool,
    log: CycleLog,
}

fn source_error(what: impl Into<String>) -> ShipError {
    ShipError::Source(std::io::Error::other(what.into()))
}

impl CycleSource<'_> {
    /// One call or one block: time passes and the events due now happen.
    fn tick(&mut self) -> Result<(), ShipError> {
        self.tick += 1;
        self.clock.fetch_add(1_000_000, Ordering::SeqCst);
        while let Some(i) = self.events.iter().position(|(t, _)| *t <= self.tick) {
            let (_, e) = self.events.remove(i);
            self.event(e);
        }
        if self.dead {
            return Err(source_error("the filter's control connection was lost"));
        }
        Ok(())
    }

    fn event(&mut self, e: InCycle) {
        if self.trace {
            eprintln!("      tick {}: {e:?}", self.tick);
        }
        match e {
            InCycle::Write(n) => {
                for _ in 0..n {
                    let b = self.rng.below(self.disk.blocks());
                    let p = pick_pattern(&mut self.rng, self.disk, self.pool, b);
                    self.disk.write(b, p);
                }
            }
            InCycle::FilterCrash => {
                self.disk.filter_crash();
                self.dead = true;
                self.log.filter_crashed = true;
            }
            InCycle::HostCrash => {
                let rng = &mut self.rng;
                self.disk.host_crash(&mut || rng.chance(50));
                self.dead = true;
                self.store.crash_now();
                self.log.host_crashed = true;
            }
            InCycle::ShipperCrash => {
                self.store.crash_now();
                self.log.shipper_crashed = true;
            }
            InCycle::Gc | InCycle::DryGc | InCycle::Prune(_) | InCycle::Restore if self.store.crashed() => {}
            InCycle::Gc | InCycle::DryGc => {
                let dry = matches!(e, InCycle::DryGc);
                self.store.suspend_faults(true);
                let other = open_vault(self.store);
                let r = other.gc(dry);
                self.store.suspend_faults(false);
                if !dry {
                    match r {
                        Err(VaultError::Busy { .. }) => {}
                        Ok(rep) => self.log.violations.push(format!(
                            "a garbage collection ran while a cycle held its lease (deleted {} packs, {} pages)",
                            rep.packs_deleted.len(),
                            rep.pages_deleted.len()
                        )),
                        Err(e) => self.log.violations.push(format!("a GC during a cycle failed oddly: {e}")),
                    }
                }
            }
            InCycle::Prune(policy) => {
                self.store.suspend_faults(true);
                let other = open_vault(self.store);
                let now = self.clock.load(Ordering::SeqCst);
                let r = checked_prune(&other, self.model, &policy, now, None, self.store);
                self.store.suspend_faults(false);
                match r {
                    Ok(removed) => self.log.pruned.extend(removed),
                    Err(v) => self.log.violations.push(format!("prune during a cycle: {v}")),
                }
            }
            InCycle::Restore => {
                let live: Vec<u64> =
                    self.model.points.keys().copied().filter(|s| !self.log.pruned.contains(s)).collect();
                if live.is_empty() {
                    return;
                }
                let seq = live[usize::try_from(self.rng.below(live.len() as u64)).expect("small")];
                self.store.suspend_faults(true);
                let other = open_vault(self.store);
                let corrupted = !self.model.corrupted.is_empty();
                let r = restore_check(&other, self.keys, self.out, &chain(), seq, &self.model.points[&seq], corrupted);
                self.store.suspend_faults(false);
                if let Err(v) = r {
                    self.log.violations.push(format!("restore during a cycle: {v}"));
                }
            }
            InCycle::Cancel => {
                self.cancel.store(true, Ordering::SeqCst);
                self.log.cancelled = true;
            }
        }
    }
}

impl CutSource for CycleSource<'_> {
    fn geometry(&self) -> Geometry {
        self.disk.geometry
    }

    fn suspect(&mut self) -> Result<bool, ShipError> {
        self.tick()?;
        Ok(self.disk.suspect)
    }

    fn cut(&mut self, kind: CutKind) -> Result<CutInfo, ShipError> {
        self.tick()?;
        let suspect = self.disk.suspect;
        let info = self.disk.cut(kind).map_err(source_error)?;
        self.log.cut = Some(CutRecord {
            snapshot: self.disk.data.clone(),
            clock: self.clock.load(Ordering::SeqCst),
            kind,
            geometry: self.disk.geometry,
            suspect,
        });
        Ok(info)
    }

    fn blocks(&mut self) -> Result<Vec<u64>, ShipError> {
        self.tick()?;
        self.disk.cut_blocks().map_err(source_error)
    }

    fn read(&mut self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<(), ShipError> {
        self.tick()?;
        self.reads += 1;
        if self.read_error_at == Some(self.reads) {
            self.log.read_error = true;
            return Err(source_error("injected error reading the disk image"));
        }
        let g = self.disk.geometry;
        for b in first..first + count {
            self.tick()?;
            let p = self.disk.read_block(b).map_err(source_error)?;
            let at = out.len();
            out.resize(at + g.block_len(b), 0);
            fill_block(p, &mut out[at..]);
        }
        Ok(())
    }

    fn last_point(&mut self) -> Result<Option<LastPoint>, ShipError> {
        self.tick()?;
        Ok(self.disk.last_point)
    }

    fn finish(&mut self, point: &LastPoint, verified: bool) -> Result<(), ShipError> {
        if let Err(e) = self.tick() {
            self.log.finish_failed = true;
            return Err(e);
        }
        match self.finish_fault {
            None => self.disk.finish(point, verified).map_err(source_error),
            Some(FinishFault::LostConnection) => {
                // The filter sees its control connection drop and aborts the cut.
                self.disk.filter_crash();
                self.dead = true;
                self.log.finish_failed = true;
                Err(source_error("the filter's control connection was lost"))
            }
            Some(FinishFault::ReplyLost) => {
                self.disk.finish(point, verified).map_err(source_error)?;
                self.log.finish_failed = true;
                Err(source_error("no reply from the filter"))
            }
        }
    }

    fn abort(&mut self) -> Result<(), ShipError> {
        self.tick()?;
        self.disk.abort().map_err(source_error)
    }
}

/// Chooses what a write puts in block `b`: zeros, the same bytes again, a
/// copy of another block, or one of a small pool of contents (duplicates).
fn pick_pattern(rng: &mut Rng, disk: &SimDisk, pool: u32, b: u64) -> u32 {
    match rng.below(100) {
        0..=14 => 0,
        15..=22 => disk.data[ix(b)],
        23..=32 => disk.data[ix(rng.below(disk.blocks()))],
        _ => 1 + u32::try_from(rng.below(u64::from(pool))).expect("small pool"),
    }
}

fn ix(b: u64) -> usize {
    usize::try_from(b).expect("small disk")
}

/// Block ids by (pattern, length), computed once.
#[derive(Default)]
struct IdCache(HashMap<(u32, usize), BlockId>);

impl IdCache {
    fn id(&mut self, keys: &Keys, pattern: u32, len: usize) -> BlockId {
        *self.0.entry((pattern, len)).or_insert_with(|| keys.block_id(&block_bytes(pattern)[..len]))
    }
}

/// Restores point `seq` and compares it with the model: equal, or (only when
/// something was damaged on purpose) refused as damaged. Never wrong data.
fn restore_check(
    vault: &Vault,
    keys: &Keys,
    out: &File,
    disk: &str,
    seq: u64,
    point: &Point,
    corrupted: bool,
) -> Check {
    match vault.restore(disk, seq, keys, out, &mut ()) {
        Ok(_) => compare_image(out, point).map_err(|e| format!("point {disk}/{seq} restored WRONG DATA: {e}")),
        Err(VaultError::Damaged { .. }) if corrupted => Ok(()),
        Err(e) => Err(format!("point {disk}/{seq} does not restore: {e}")),
    }
}

fn compare_image(out: &File, point: &Point) -> Check {
    let g = point.geometry;
    let len = out.metadata().map_err(|e| e.to_string())?.len();
    ensure!(len == g.disk_size, "the image is {len} bytes, the disk {}", g.disk_size);
    let mut got = vec![0u8; usize::try_from(g.disk_size).expect("small")];
    out.read_exact_at(&mut got, 0).map_err(|e| e.to_string())?;
    for b in 0..g.block_count {
        let r = g.block_range(b);
        let want = block_bytes(point.content[ix(b)]);
        if got[ix(r.start)..ix(r.end)] != want[..g.block_len(b)] {
            return Err(format!("block {b} differs (want pattern {})", point.content[ix(b)]));
        }
    }
    Ok(())
}

/// Prunes with `vault` and checks the result against the retention rules;
/// returns the sequences removed. `fault` is armed around the prune itself.
fn checked_prune(
    vault: &Vault,
    model: &Model,
    policy: &Policy,
    now: u64,
    fault: Option<Fault>,
    store: &Store,
) -> Result<Vec<u64>, String> {
    let before = vault.points(&chain()).map_err(|e| format!("listing points: {e}"))?;
    let mut held: HashSet<u64> = vault
        .leases(&format!("point/{}/", chain()))
        .map_err(|e| format!("listing leases: {e}"))?
        .iter()
        .filter(|l| l.is_live())
        .filter_map(|l| match &l.purpose {
            vault::Purpose::Point { sequence, .. } => Some(*sequence),
            _ => None,
        })
        .collect();
    held.extend(before.iter().filter(|p| p.damage.is_some()).map(|p| p.sequence));
    let expected = vault::select(&before, now, policy, &held);
    let armed = fault.is_some();
    if let Some(f) = fault {
        store.arm(f);
    }
    let result = vault.prune(&chain(), policy, now);
    let triggered = if armed { store.disarm() } else { Vec::new() };
    let after: BTreeSet<u64> = vault.sequences(&chain()).map_err(|e| format!("listing: {e}"))?.into_iter().collect();
    let removed: Vec<u64> = before.iter().map(|p| p.sequence).filter(|s| !after.contains(s)).collect();
    for s in &removed {
        ensure!(expected.prune.contains(s), "prune removed point {s}, which the ladder keeps ({expected:?})");
    }
    match &result {
        Ok(r) => {
            ensure!(r.pruned == expected.prune, "prune reported {:?}, the ladder says {:?}", r.pruned, expected.prune);
            ensure!(removed == expected.prune, "prune removed {removed:?}, the ladder says {:?}", expected.prune);
        }
        Err(e) => ensure!(!triggered.is_empty(), "prune failed with no fault injected: {e}"),
    }
    // Independent of `select`: the newest (as listed, which may be a point a
    // cycle running meanwhile just committed), held and recent points stay.
    let newest = before.iter().map(|p| p.sequence).max();
    let recent = u64::try_from(policy.recent.as_nanos()).unwrap_or(u64::MAX);
    for s in &removed {
        ensure!(Some(*s) != newest, "prune removed the newest point {s}");
        ensure!(!model.held.contains_key(s), "prune removed point {s}, which a restore holds");
        if let Some(p) = model.points.get(s) {
            ensure!(
                p.cut_time < now.saturating_sub(recent),
                "prune removed point {s} cut at {} though `recent` keeps everything after {}",
                p.cut_time,
                now.saturating_sub(recent)
            );
        }
    }
    Ok(removed)
}

fn lease_body(holder: &str, machine: &str, boot: &str, pid: u32, start: u64) -> String {
    format!(
        "lifeboat lease v1\nholder={holder}\nhost=sim\nmachine={machine}\nboot={boot}\npid={pid}\nstart={start}\n\
         created_ns=0\n"
    )
}

/// The simulated host: this process, on a machine of the simulation's own
/// making, so leases are judged the same on every machine (one without
/// `/etc/machine-id` too). Every `Vault` of the simulation is this host.
fn sim_host() -> HostIdentity {
    HostIdentity {
        host: "sim".into(),
        machine: Some("sim-machine-0123456789abcdef".into()),
        boot: Some("sim-boot-1".into()),
        ..HostIdentity::current()
    }
}

fn open_vault(store: &Arc<Store>) -> Vault {
    Vault::open(store.backend()).expect("opening the vault").with_host_identity(sim_host())
}

/// A second disk in the same vault, with one point: prune of the first
/// disk and GC must leave it alone.
struct OtherDisk {
    point: Point,
    verified: bool,
}

/// The second disk's name.
const OTHER: &str = "vm2";
/// The other disk's identity.
const OTHER_ID: [u8; 16] = *b"lifeboat-sim-vm2";

/// The chain the other disk's points are stored under.
fn other_chain() -> String {
    Vault::chain_of(&MasterKey::from_bytes([0x5a; 32]).keys(), &OTHER_ID)
}

/// A simulated world for one seed.
pub struct Sim {
    other: Option<OtherDisk>,
    opts: Options,
    rng: Rng,
    keys: Keys,
    clock: Arc<AtomicU64>,
    store: Arc<Store>,
    vault: Vault,
    disk: SimDisk,
    pool: u32,
    model: Model,
    out: File,
    ids: IdCache,
    may_corrupt: bool,
    machine: String,
    boot: String,
    /// Counters, for the summary.
    pub stats: Stats,
    /// The step being run and what it is.
    pub step: usize,
    pub doing: String,
}

/// What a schedule did (summed over seeds for the report).
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub steps: u64,
    pub cycles_ok: u64,
    pub cycles_failed: u64,
    pub restores: u64,
    pub prunes: u64,
    pub gcs: u64,
    pub crashes: u64,
    pub corruptions: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.steps += o.steps;
        self.cycles_ok += o.cycles_ok;
        self.cycles_failed += o.cycles_failed;
        self.restores += o.restores;
        self.prunes += o.prunes;
        self.gcs += o.gcs;
        self.crashes += o.crashes;
        self.corruptions += o.corruptions;
    }
}

fn output_file() -> File {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(f) = tempfile::tempfile_in(shm) {
            return f;
        }
    }
    tempfile::tempfile().expect("a temporary file for restores")
}

impl Sim {
    pub fn new(seed: u64, opts: Options) -> Sim {
        let mut rng = Rng::new(seed ^ 0x5eed_11fe_b0a7_0000);
        let blocks = if rng.chance(4) { rng.range(513, 700) } else { rng.range(16, 128) };
        let short = if rng.chance(30) { rng.range(1, 4095) } else { 0 };
        let geometry = Geometry::new(blocks * 4096 - short, 4096).expect("geometry");
        let keys = MasterKey::from_bytes([0x5a; 32]).keys();
        let store = Store::new();
        let vault = Vault::init(store.backend(), &keys).expect("init").with_host_identity(sim_host());
        let disk = SimDisk::new(geometry);
        let pool = u32::try_from(rng.range(2, 40)).expect("small");
        let may_corrupt = rng.chance(12);
        let mut sim = Sim {
            other: None,
            opts,
            rng,
            keys,
            clock: Arc::new(AtomicU64::new(START_NS)),
            store,
            vault,
            disk,
            pool,
            model: Model::default(),
            out: output_file(),
            ids: IdCache::default(),
            may_corrupt,
            machine: sim_host().machine.expect("set"),
            boot: sim_host().boot.expect("set"),
            stats: Stats::default(),
            step: 0,
            doing: "setting up".into(),
        };
        // The VM has written some data before protection starts.
        let n = sim.rng.below(blocks);
        sim.vm_writes(n);
        if sim.rng.chance(30) {
            let mut other = SimDisk::new(Geometry::new(24 * 4096, 4096).expect("geometry"));
            for b in 0..other.blocks() {
                let p = pick_pattern(&mut sim.rng, &other, pool, b);
                other.write(b, p);
            }
            let (r, log) =
                clean_cycle(&mut other, OTHER, &sim.vault, &sim.keys, &sim.clock, &sim.store, &sim.model, &sim.out);
            let report = r.expect("the other disk's first cycle");
            assert_eq!(report.sequence, 1);
            let cut = log.cut.expect("cut");
            let root = sim.store.raw_get(Kind::Root, &vault::root_name(&other_chain(), 1)).expect("root");
            let point = Point {
                content: cut.snapshot,
                geometry: cut.geometry,
                cut_time: cut.clock,
                root_hash: blake3::hash(&root),
            };
            sim.other = Some(OtherDisk { point, verified: false });
        }
        sim.trace(|| format!("seed {seed}: {blocks} blocks, disk size {}, pool {pool}", geometry.disk_size));
        sim
    }

    fn trace(&self, what: impl FnOnce() -> String) {
        if self.opts.trace {
            eprintln!("{}", what());
        }
    }

    fn begin(&mut self, what: String) {
        if self.opts.trace {
            eprintln!("step {}: {what}", self.step);
        }
        self.doing = what;
    }

    fn now(&self) -> u64 {
        self.clock.load(Ordering::SeqCst)
    }

    /// Something was deleted or damaged: every point must be restored again.
    fn invalidate(&mut self) {
        self.model.verified.clear();
        if let Some(o) = &mut self.other {
            o.verified = false;
        }
    }

    fn corrupted(&self) -> bool {
        !self.model.corrupted.is_empty()
    }

    /// Runs the schedule; `Err` is the first violated invariant.
    pub fn run(&mut self) -> Check {
        let max = if self.opts.max_steps > 0 { self.opts.max_steps } else { DEFAULT_MAX_STEPS };
        let steps = usize::try_from(self.rng.range((max / 4).max(1), max)).expect("small");
        for step in 1..=steps {
            self.step = step;
            self.stats.steps += 1;
            self.doing.clear();
            self.one_step()?;
            if self.doing.is_empty() {
                self.begin("nothing to do (no point to act on)".into());
            }
            self.check_all()?;
        }
        self.step = steps + 1;
        self.finale()
    }

    fn one_step(&mut self) -> Check {
        // vm write, cycle, clock, prune, gc, filter crash, host crash, hold,
        // release, stale lease, restore under faults, corrupt, resize, rollback
        let weights = [22, 34, 10, 7, 6, 3, 3, 3, 2, 1, 4, u64::from(self.may_corrupt) * 2, 1, 2];
        match self.rng.weighted(&weights) {
            0 => {
                let n = self.rng.range(1, 8);
                self.begin(format!("{n} VM writes"));
                self.vm_writes(n);
                Ok(())
            }
            1 => self.cycle(),
            2 => {
                if self.rng.chance(5) {
                    let d = self.rng.range(1, 3600) * SECOND;
                    self.begin(format!("the clock is stepped back {} s", d / SECOND));
                    self.clock.fetch_sub(d, Ordering::SeqCst);
                    return Ok(());
                }
                let d = match self.rng.below(10) {
                    0 => self.rng.range(1, 3) * 24 * 3600 * SECOND,
                    1..=4 => self.rng.range(1, 3 * 3600) * SECOND,
                    _ => self.rng.range(1, 600) * SECOND,
                };
                self.begin(format!("clock advances {} s", d / SECOND));
                self.clock.fetch_add(d, Ordering::SeqCst);
                Ok(())
            }
            3 => self.prune(),
            4 => self.gc(),
            5 => {
                self.begin("the filter process crashes and restarts".into());
                self.stats.crashes += 1;
                self.disk.filter_crash();
                Ok(())
            }
            6 => {
                self.begin("the host crashes and reboots".into());
                self.stats.crashes += 1;
                let rng = &mut self.rng;
                self.disk.host_crash(&mut || rng.chance(50));
                self.restart(true);
                Ok(())
            }
            7 => self.hold(),
            8 => {
                let Some((&seq, _)) = self.model.held.iter().next() else { return Ok(()) };
                let name = self.model.held.remove(&seq).expect("held");
                self.begin(format!("the restore of point {seq} on another host ends"));
                ensure!(self.store.raw_delete(Kind::Lease, &name), "lease {name} vanished");
                Ok(())
            }
            9 => {
                let seq = self.rng.range(1, self.model.max_seq + 2);
                self.begin(format!("a restore of point {seq} on this host crashed, leaving its lease"));
                let name = format!("point/{}/{seq:020}/{:016x}", chain(), self.rng.next_u64());
                let body = lease_body("restore", &self.machine, &self.boot, DEAD_PID, 1);
                self.store.raw_put(Kind::Lease, &name, body.into_bytes());
                Ok(())
            }
            10 => self.restore_under_fault(),
            11 => self.corrupt(),
            12 => self.resize(),
            _ => self.rollback(),
        }
    }

    /// The vault's storage is rolled back: its newest roots vanish (issue
    /// 12, hole 1). The next point must still be exactly its cut, which an
    /// incremental on the older point would not be.
    fn rollback(&mut self) -> Check {
        let Some((&newest, _)) = self.model.points.iter().next_back() else { return Ok(()) };
        let n = usize::try_from(self.rng.range(1, 3)).expect("small");
        let gone: Vec<u64> = self.model.points.keys().rev().take(n).copied().collect();
        self.begin(format!("the vault is rolled back: points {gone:?} vanish (newest was {newest})"));
        for seq in &gone {
            if self.model.held.contains_key(seq) {
                continue; // a restore in progress holds it; leave it
            }
            self.store.raw_delete(Kind::Root, &vault::root_name(&chain(), *seq));
            self.model.points.remove(seq);
        }
        // The host never reuses a sequence number it recorded. One it
        // committed but never recorded (the filter died before the release)
        // and that the vault then lost, it cannot know: the next point may
        // take that number again (still exactly its cut). The audit links
        // see that case: the log names another root for the number.
        let recorded = self.disk.last_point.map_or(0, |p| p.sequence);
        let remaining = self.model.points.keys().next_back().copied().unwrap_or(0);
        self.model.max_seq = recorded.max(remaining);
        self.invalidate();
        Ok(())
    }

    fn vm_writes(&mut self, n: u64) {
        for _ in 0..n {
            let b = self.rng.below(self.disk.blocks());
            let p = pick_pattern(&mut self.rng, &self.disk, self.pool, b);
            self.disk.write(b, p);
        }
    }

    /// A process that crashed (or a host that rebooted) is gone: its leases
    /// are provably stale; a new process opens the vault.
    fn restart(&mut self, host: bool) {
        self.store.restart();
        let me = format!("pid={}\n", std::process::id());
        for name in self.store.names(Kind::Lease) {
            let body =
                String::from_utf8(self.store.raw_get(Kind::Lease, &name).unwrap_or_default()).unwrap_or_default();
            if body.contains(&me) && body.contains(&format!("machine={}\n", self.machine)) {
                let body = if host {
                    body.replace(&format!("boot={}\n", self.boot), "boot=sim-before-the-reboot\n")
                } else {
                    body.replace(&me, &format!("pid={DEAD_PID}\n"))
                };
                self.store.raw_put(Kind::Lease, &name, body.into_bytes());
            }
        }
        self.vault = open_vault(&self.store);
    }

    fn cycle(&mut self) -> Check {
        let mut r = self.rng.fork();
        let expected_reads = if self.disk.suspect || self.model.points.is_empty() {
            self.disk.blocks()
        } else {
            self.disk.live.iter().filter(|&&l| l).count() as u64
        };
        let span = expected_reads + expected_reads.div_ceil(2048) + 6;
        let mut events = Vec::new();
        let mut fault = None;
        let mut read_error_at = None;
        let mut finish_fault = None;
        let mut what = Vec::new();
        if r.chance(50) {
            for _ in 0..r.range(1, 4) {
                let t = r.range(1, span);
                let n = u32::try_from(r.range(1, 4)).expect("small");
                events.push((t, InCycle::Write(n)));
            }
            what.push("VM writes during it".to_string());
        }
        if r.chance(60) {
            let t = r.range(1, span);
            let scenario = r.below(13);
            what.push(match scenario {
                0 | 1 => {
                    let ops = [Op::Put, Op::Get, Op::GetRange, Op::Size, Op::List, Op::Delete];
                    let op = ops[ix(r.below(6))];
                    let kinds = [Kind::Pack, Kind::Page, Kind::Root, Kind::Lease, Kind::Config];
                    let kind = if r.chance(50) { Some(kinds[ix(r.below(5))]) } else { None };
                    let action = if op == Op::Put && r.chance(40) { Action::FailAfterPut } else { Action::Fail };
                    let nth = r.range(1, 5);
                    fault = Some(Fault::new(Some(op), kind, nth, action));
                    format!("vault fault: {action:?} on {op:?} #{nth} of {kind:?}")
                }
                2 | 3 => {
                    let nth = r.range(1, 14);
                    let landed = r.chance(50);
                    fault = Some(Fault::new(None, None, nth, Action::Crash { landed }));
                    format!("shipper crash at vault op #{nth} (landed: {landed})")
                }
                4 => {
                    let n = r.range(1, 3);
                    read_error_at = Some(n);
                    format!("read error at read call {n}")
                }
                5 => {
                    events.push((t, InCycle::FilterCrash));
                    format!("filter crash at tick {t}")
                }
                6 => {
                    events.push((t, InCycle::HostCrash));
                    format!("host crash at tick {t}")
                }
                7 => {
                    events.push((t, InCycle::ShipperCrash));
                    format!("shipper crash at tick {t}")
                }
                8 => {
                    let f = if r.chance(50) { FinishFault::LostConnection } else { FinishFault::ReplyLost };
                    finish_fault = Some(f);
                    format!("finish fails: {f:?}")
                }
                9 => {
                    let e = if r.chance(70) { InCycle::Gc } else { InCycle::DryGc };
                    let s = format!("{e:?} by another process at tick {t}");
                    events.push((t, e));
                    s
                }
                10 => {
                    let p = random_policy(&mut r);
                    events.push((t, InCycle::Prune(p)));
                    format!("prune ({p:?}) by another process at tick {t}")
                }
                11 => {
                    events.push((t, InCycle::Restore));
                    format!("restore by another process at tick {t}")
                }
                _ => {
                    events.push((t, InCycle::Cancel));
                    format!("cancel at tick {t}")
                }
            });
        }
        events.sort_by_key(|(t, _)| *t);
        self.begin(format!("cycle [{}]", what.join("; ")));

        if let Some(f) = fault {
            self.store.arm(f);
        }
        let cancel = AtomicBool::new(false);
        let clock = Arc::clone(&self.clock);
        let clock_fn = move || clock.load(Ordering::SeqCst);
        let opts = CycleOptions {
            disk_name: DISK,
            disk_id: DISK_ID,
            host: "sim".into(),
            workers: 1,
            compress: true,
            cancel: Some(&cancel),
            clock: &clock_fn,
            extension: &[],
            cut_hook: None,
            index_cache: None,
            relist_every: vault::index_cache::RELIST_EVERY,
            warm_index: None,
            page_cache: None,
        };
        let mut src = CycleSource {
            disk: &mut self.disk,
            rng: r,
            pool: self.pool,
            clock: &self.clock,
            store: &self.store,
            keys: &self.keys,
            model: &self.model,
            out: &self.out,
            trace: self.opts.trace,
            cancel: &cancel,
            events,
            read_error_at,
            finish_fault,
            tick: 0,
            reads: 0,
            dead: false,
            log: CycleLog::default(),
        };
        let result = run_cycle(&mut src, &self.vault, &self.keys, &opts, &mut ());
        let log = std::mem::take(&mut src.log);
        drop(src);
        let triggered = self.store.disarm();
        let landed = self.store.take_landed_puts();
        let crashed = self.store.crashed() || log.host_crashed || log.shipper_crashed;
        if crashed {
            self.stats.crashes += 1;
            self.restart(log.host_crashed);
        }
        self.trace(|| format!("    -> {result:?}; faults hit: {triggered:?}; landed: {landed:?}"));

        ensure!(log.violations.is_empty(), "{}", log.violations.join("; "));
        ensure!(self.disk.violations.is_empty(), "the shipper broke the filter's contract: {:?}", self.disk.violations);
        ensure!(self.disk.cut.is_none(), "run_cycle returned with its cut still open");
        for s in &log.pruned {
            self.model.points.remove(s);
            self.model.verified.remove(s);
        }
        let seqs = self.vault.sequences(&chain()).map_err(|e| format!("listing points: {e}"))?;
        let new: Vec<u64> = seqs.iter().copied().filter(|s| !self.model.points.contains_key(s)).collect();
        match result {
            Ok(report) => {
                self.stats.cycles_ok += 1;
                let cut = log.cut.as_ref().ok_or("a cycle succeeded without cutting the disk")?;
                ensure!(
                    new == vec![report.sequence],
                    "the cycle committed point {} but the vault gained {new:?}",
                    report.sequence
                );
                ensure!(
                    report.sequence > self.model.max_seq,
                    "point {} does not come after point {}",
                    report.sequence,
                    self.model.max_seq
                );
                ensure!(
                    report.full == (cut.kind == CutKind::Full),
                    "report.full {} for a {:?} cut",
                    report.full,
                    cut.kind
                );
                ensure!(!cut.suspect || report.full, "a suspect disk was shipped without reading every block");
                if log.finish_failed {
                    ensure!(!report.warnings.is_empty(), "finish failed, but the report has no warning");
                } else if report.full && !log.host_crashed {
                    ensure!(!self.disk.suspect, "a verified full cycle left the disk suspect");
                }
                self.commit(report.sequence, cut)?;
            }
            Err(e) => {
                self.stats.cycles_failed += 1;
                let injected = !triggered.is_empty()
                    || log.read_error
                    || log.filter_crashed
                    || crashed
                    || log.cancelled
                    || self.corrupted();
                ensure!(injected, "the cycle failed with no fault injected: {e}");
                if log.cancelled
                    && triggered.is_empty()
                    && !log.read_error
                    && !log.filter_crashed
                    && !crashed
                    && !self.corrupted()
                {
                    ensure!(matches!(e, ShipError::Cancelled), "a cancelled cycle failed with: {e}");
                }
                match new.as_slice() {
                    [] => {}
                    [seq] if landed.contains(&(Kind::Root, vault::root_name(&chain(), *seq))) => {
                        // The root landed but its writer never heard: the
                        // point exists and must be exactly the cut.
                        let cut = log.cut.as_ref().ok_or("a root landed without a cut")?;
                        self.commit(*seq, cut)?;
                    }
                    _ => return Err(format!("the failed cycle ({e}) left points {new:?} in the vault")),
                }
            }
        }
        Ok(())
    }

    /// Records a committed point and checks it restores to the cut.
    fn commit(&mut self, seq: u64, cut: &CutRecord) -> Check {
        ensure!(seq > self.model.max_seq, "point {seq} does not come after point {}", self.model.max_seq);
        let root = self.store.raw_get(Kind::Root, &vault::root_name(&chain(), seq)).ok_or("the new root vanished")?;
        let summary = self.vault.points(&chain()).map_err(|e| e.to_string())?;
        let cut_time = summary.iter().find(|p| p.sequence == seq).map(|p| p.cut_time_ns);
        ensure!(
            cut_time == Some(cut.clock),
            "point {seq} says it was cut at {cut_time:?}, the cut was at {}",
            cut.clock
        );
        let point = Point {
            content: cut.snapshot.clone(),
            geometry: cut.geometry,
            cut_time: cut.clock,
            root_hash: blake3::hash(&root),
        };
        self.model.max_seq = seq;
        self.stats.restores += 1;
        restore_check(&self.vault, &self.keys, &self.out, &chain(), seq, &point, self.corrupted())?;
        self.model.last = Some((seq, point.clone()));
        self.model.points.insert(seq, point);
        self.model.verified.insert(seq);
        Ok(())
    }

    fn prune(&mut self) -> Check {
        let policy = random_policy(&mut self.rng);
        let fault = if self.rng.chance(25) {
            let op = [Op::Delete, Op::Get, Op::List][ix(self.rng.below(3))];
            Some(Fault::new(Some(op), None, self.rng.range(1, 3), Action::Fail))
        } else {
            None
        };
        self.begin(format!("prune {policy:?} at {} (fault {fault:?})", self.now()));
        self.stats.prunes += 1;
        let data = self.data_objects();
        let removed = checked_prune(&self.vault, &self.model, &policy, self.now(), fault, &self.store)?;
        self.trace(|| format!("    -> pruned {removed:?}"));
        for s in removed {
            self.model.points.remove(&s);
        }
        // Prune deletes roots only (the others are checked unchanged after
        // every step); should it touch a pack or page, restore everything.
        ensure!(self.data_objects() == data, "prune deleted or changed packs or pages");
        Ok(())
    }

    fn gc(&mut self) -> Check {
        let fault = if self.rng.chance(30) {
            let op = [Op::Delete, Op::Get, Op::GetRange, Op::List, Op::Put][ix(self.rng.below(5))];
            Some(Fault::new(Some(op), None, self.rng.range(1, 4), Action::Fail))
        } else {
            None
        };
        self.begin(format!("garbage collection (fault {fault:?})"));
        self.stats.gcs += 1;
        let dry = self.vault.gc(true);
        let data = self.data_objects();
        if let Some(f) = fault {
            self.store.arm(f);
        }
        let real = self.vault.gc(false);
        let triggered = self.store.disarm();
        self.trace(|| format!("    -> {real:?}; faults hit {triggered:?}"));
        if self.data_objects() != data {
            // Something was deleted: every remaining point must still restore.
            self.invalidate();
        }
        match real {
            Ok(r) => {
                if triggered.is_empty() {
                    if let Ok(d) = dry {
                        ensure!(
                            d.packs_deleted == r.packs_deleted && d.pages_deleted == r.pages_deleted,
                            "the dry run said {:?}/{:?}, the run deleted {:?}/{:?}",
                            d.packs_deleted,
                            d.pages_deleted,
                            r.packs_deleted,
                            r.pages_deleted
                        );
                    }
                    self.check_no_garbage()?;
                }
                Ok(())
            }
            Err(VaultError::Busy { lease, .. }) => {
                let blocking = self.store.names(Kind::Lease).into_iter().any(|n| {
                    n.starts_with("cycle/")
                        || n.starts_with("gc/")
                        || n.split('/').nth(2).and_then(|s| s.parse::<u64>().ok()).is_some_and(|s| {
                            n.starts_with("point/")
                                && self.store.raw_get(Kind::Root, &vault::root_name(&chain(), s)).is_none()
                        })
                });
                ensure!(blocking || !triggered.is_empty(), "GC refused as busy ({lease}) with no lease in its way");
                Ok(())
            }
            Err(VaultError::GcUnsafe { .. }) if self.corrupted() => Ok(()),
            Err(e) => {
                ensure!(!triggered.is_empty(), "GC failed with no fault injected: {e}");
                Ok(())
            }
        }
    }

    /// Names and sizes of every pack and page.
    fn data_objects(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for kind in [Kind::Pack, Kind::Page] {
            for n in self.store.names(kind) {
                let len = self.store.raw_len(kind, &n).unwrap_or(0);
                out.push((format!("{kind}/{n}"), len));
            }
        }
        out
    }

    /// After a complete GC: every pack holds a block some point uses, and
    /// every page or page pack is named by some point (computed from the
    /// model, not by GC's code).
    fn check_no_garbage(&mut self) -> Check {
        if self.corrupted() {
            return Ok(());
        }
        let mut blocks: HashSet<BlockId> = HashSet::new();
        let mut pages: HashSet<PageId> = HashSet::new();
        for (seq, p) in &self.model.points {
            for b in 0..p.geometry.block_count {
                let pat = p.content[ix(b)];
                if pat != 0 {
                    blocks.insert(self.ids.id(&self.keys, pat, p.geometry.block_len(b)));
                }
            }
            let root = self.store.raw_get(Kind::Root, &vault::root_name(&chain(), *seq)).ok_or("root vanished")?;
            let root = Root::decode(&root, &self.keys).map_err(|e| format!("root {seq}: {e}"))?;
            pages.extend(root.pages.iter().chain(&root.page_packs).filter(|p| !p.is_zero()));
        }
        if let Some(o) = &self.other {
            let p = &o.point;
            for b in 0..p.geometry.block_count {
                let pat = p.content[ix(b)];
                if pat != 0 {
                    blocks.insert(self.ids.id(&self.keys, pat, p.geometry.block_len(b)));
                }
            }
            let root = self.store.raw_get(Kind::Root, &vault::root_name(&other_chain(), 1)).ok_or("root vanished")?;
            let root = Root::decode(&root, &self.keys).map_err(|e| format!("root {OTHER}/1: {e}"))?;
            pages.extend(root.pages.iter().chain(&root.page_packs).filter(|p| !p.is_zero()));
        }
        for name in self.store.names(Kind::Pack) {
            let bytes = self.store.raw_get(Kind::Pack, &name).expect("listed");
            let pack = Pack::parse(&bytes).map_err(|e| format!("pack {name}: {e}"))?;
            ensure!(
                pack.index().entries().iter().any(|e| blocks.contains(&e.id)),
                "GC left pack {name}, which holds no block of any point"
            );
        }
        for name in self.store.names(Kind::Page) {
            let id = PageId::from_hex(&name).ok_or("a page name")?;
            ensure!(pages.contains(&id), "GC left page {name}, which no point names");
        }
        Ok(())
    }

    fn hold(&mut self) -> Check {
        let seqs: Vec<u64> = self.model.points.keys().copied().filter(|s| !self.model.held.contains_key(s)).collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let seq = seqs[ix(self.rng.below(seqs.len() as u64))];
        self.begin(format!("a restore on another host holds point {seq}"));
        let name = format!("point/{}/{seq:020}/{:016x}", chain(), self.rng.next_u64());
        let body = lease_body("restore", "sim-another-machine", "b", 7, 9);
        self.store.raw_put(Kind::Lease, &name, body.into_bytes());
        self.model.held.insert(seq, name);
        Ok(())
    }

    fn restore_under_fault(&mut self) -> Check {
        let seqs: Vec<u64> = self.model.points.keys().copied().collect();
        if seqs.is_empty() {
            return Ok(());
        }
        let seq = seqs[ix(self.rng.below(seqs.len() as u64))];
        let op = [Op::Get, Op::GetRange, Op::Size, Op::List, Op::Put][ix(self.rng.below(5))];
        let fault = Fault::new(Some(op), None, self.rng.range(1, 4), Action::Fail);
        self.begin(format!("restore point {seq} with {fault:?}"));
        self.stats.restores += 1;
        self.store.arm(fault);
        let r = self.vault.restore(&chain(), seq, &self.keys, &self.out, &mut ());
        let triggered = self.store.disarm();
        match r {
            Ok(_) => compare_image(&self.out, &self.model.points[&seq])
                .map_err(|e| format!("point {seq} restored WRONG DATA under a fault: {e}")),
            Err(VaultError::Damaged { .. }) if self.corrupted() => Ok(()),
            Err(e) => {
                ensure!(!triggered.is_empty(), "restore of point {seq} failed with no fault injected: {e}");
                ensure!(
                    !matches!(e, VaultError::Damaged { .. }),
                    "an I/O error was reported as damage of point {seq}: {e}"
                );
                Ok(())
            }
        }
    }

    fn corrupt(&mut self) -> Check {
        let mut names: Vec<(Kind, String)> = Vec::new();
        for kind in [Kind::Pack, Kind::Page, Kind::Root] {
            names.extend(self.store.names_by_age(kind).into_iter().map(|n| (kind, n)));
        }
        if names.is_empty() {
            return Ok(());
        }
        let (kind, name) = names[ix(self.rng.below(names.len() as u64))].clone();
        let mut bytes = self.store.raw_get(kind, &name).expect("listed");
        let truncate = self.rng.chance(25) || bytes.is_empty();
        if truncate {
            bytes.truncate(ix(self.rng.below(bytes.len().max(1) as u64)));
        } else {
            let at = ix(self.rng.below(bytes.len() as u64));
            bytes[at] ^= 1 << self.rng.below(8);
        }
        self.begin(format!("corrupt {kind}/{name} ({})", if truncate { "truncated" } else { "one bit flipped" }));
        self.stats.corruptions += 1;
        self.store.raw_put(kind, &name, bytes);
        self.model.corrupted.push(format!("{kind}/{name}"));
        self.invalidate();
        let report = self.vault.check(Some(&self.keys), &mut ()).map_err(|e| format!("check: {e}"))?;
        ensure!(!report.is_clean(), "check with the key did not notice {kind}/{name} was damaged");
        Ok(())
    }

    fn resize(&mut self) -> Check {
        let blocks = (self.disk.blocks() + self.rng.range(0, 40)).saturating_sub(20).max(8);
        let size = blocks * 4096 - if self.rng.chance(30) { self.rng.range(1, 4095) } else { 0 };
        self.begin(format!("the disk is resized to {size} bytes ({blocks} blocks) with a fresh state file"));
        let g = Geometry::new(size, 4096).expect("geometry");
        let mut data = self.disk.data.clone();
        data.resize(ix(g.block_count), 0);
        let mut disk = SimDisk::new(g);
        disk.data = data;
        disk.live.fill(true);
        disk.generation = self.disk.generation;
        // As `protect --reset-state` does: the new state keeps the record of
        // the last point (every block is dirty anyway), so a rolled-back
        // vault is still noticed and no sequence number is reused.
        disk.last_point = self.disk.last_point;
        self.disk = disk;
        Ok(())
    }

    /// The invariants, after every step.
    fn check_all(&mut self) -> Check {
        ensure!(self.disk.cut.is_none(), "a cut is left open between steps");
        ensure!(self.disk.violations.is_empty(), "the filter's contract was broken: {:?}", self.disk.violations);
        // The vault holds exactly the model's points, each root unchanged.
        let seqs = self.vault.sequences(&chain()).map_err(|e| format!("listing points: {e}"))?;
        let want: Vec<u64> = self.model.points.keys().copied().collect();
        ensure!(seqs == want, "the vault lists points {seqs:?}, the model {want:?}");
        for (seq, p) in &self.model.points {
            let name = vault::root_name(&chain(), *seq);
            if self.model.corrupted.contains(&format!("roots/{name}")) {
                continue;
            }
            let bytes = self.store.raw_get(Kind::Root, &name).ok_or("root vanished")?;
            ensure!(blake3::hash(&bytes) == p.root_hash, "the root of point {seq} changed after it was committed");
        }
        for seq in self.model.held.keys() {
            ensure!(self.model.points.contains_key(seq), "held point {seq} is gone");
        }
        // Every point restores to the disk at its cut.
        let todo: Vec<u64> = want.iter().copied().filter(|s| !self.model.verified.contains(s)).collect();
        for seq in todo {
            self.stats.restores += 1;
            restore_check(
                &self.vault,
                &self.keys,
                &self.out,
                &chain(),
                seq,
                &self.model.points[&seq],
                self.corrupted(),
            )?;
            self.model.verified.insert(seq);
        }
        // The other disk's point: never pruned, never changed, still restorable.
        if let Some(o) = &mut self.other {
            let bytes = self
                .store
                .raw_get(Kind::Root, &vault::root_name(&other_chain(), 1))
                .ok_or("the other disk's root is gone")?;
            ensure!(
                self.model.corrupted.contains(&format!("roots/{}", vault::root_name(&other_chain(), 1)))
                    || blake3::hash(&bytes) == o.point.root_hash,
                "the other disk's root changed"
            );
            if !o.verified {
                self.stats.restores += 1;
                restore_check(
                    &self.vault,
                    &self.keys,
                    &self.out,
                    &other_chain(),
                    1,
                    &o.point,
                    !self.model.corrupted.is_empty(),
                )?;
                o.verified = true;
            }
        }
        // No change is ever lost: each block is as in the newest point
        // committed (even if the vault has lost it since), or dirty.
        if let Some((seq, p)) = &self.model.last {
            if p.geometry == self.disk.geometry && !self.disk.suspect {
                for b in 0..self.disk.blocks() {
                    ensure!(
                        self.disk.data[ix(b)] == p.content[ix(b)] || self.disk.dirty(b),
                        "block {b} changed since point {seq} (pattern {} -> {}) but is not dirty: the change would be lost",
                        p.content[ix(b)],
                        self.disk.data[ix(b)]
                    );
                }
            }
        }
        // A scrub without the key is clean unless something was damaged on purpose.
        if !self.corrupted() && (self.rng.chance(35) || self.step.is_multiple_of(8)) {
            let report = self.vault.check(None, &mut ()).map_err(|e| format!("check: {e}"))?;
            ensure!(report.is_clean(), "check found problems: {:?}", report.problems);
        }
        Ok(())
    }

    /// The end of a schedule: the world heals (holds released, no faults)
    /// and must converge: a cycle ships the disk exactly, GC leaves no
    /// garbage, a keyed scrub is clean.
    fn finale(&mut self) -> Check {
        self.begin("finale: a clean cycle, GC and a keyed check".into());
        for (_, name) in std::mem::take(&mut self.model.held) {
            self.store.raw_delete(Kind::Lease, &name);
        }
        if self.corrupted() {
            if !self.opts.strict_after_damage {
                return Ok(());
            }
            // Damage is reported; replication must still go on.
            if self.opts.fail_cycle_after_damage {
                self.store.arm(Fault::new(Some(Op::Put), Some(Kind::Root), 1, Action::Fail));
            }
            let (r, _) = clean_cycle(
                &mut self.disk,
                DISK,
                &self.vault,
                &self.keys,
                &self.clock,
                &self.store,
                &self.model,
                &self.out,
            );
            return r.map(drop).map_err(|e| format!("after damage to {:?}, cycles fail: {e}", self.model.corrupted));
        }
        // The cycle may build only on the point the state records. When the
        // vault's newest point is another (a fresh state after a resize, a
        // rollback, the recorded point pruned after a lost release), it must
        // say why and verify in full; when it is that point, it must not.
        let newest = self.model.newest().map(|(seq, _)| seq);
        let on_record = self.disk.last_point.is_some_and(|p| Some(p.sequence) == newest);
        let (r, log) = clean_cycle(
            &mut self.disk,
            DISK,
            &self.vault,
            &self.keys,
            &self.clock,
            &self.store,
            &self.model,
            &self.out,
        );
        let report = r.map_err(|e| format!("a cycle with nothing injected failed: {e}"))?;
        match &report.chain_break {
            None => ensure!(report.warnings.is_empty(), "a clean cycle warned: {:?}", report.warnings),
            Some(_) if !on_record => ensure!(report.full && report.warnings.len() == 1, "{report:?}"),
            Some(b) => {
                return Err(format!("the newest point is the recorded one, yet the chain is broken: {b:?}"));
            }
        }
        let cut = log.cut.ok_or("no cut")?;
        ensure!(cut.snapshot == self.disk.data, "the cut is not the disk");
        self.commit(report.sequence, &cut)?;
        ensure!(!self.disk.suspect, "a clean cycle left the disk suspect");
        ensure!(self.disk.live.iter().all(|&l| !l), "a clean cycle left blocks dirty");
        self.check_all()?;
        let data = self.data_objects();
        let gc = self.vault.gc(false).map_err(|e| format!("GC with nothing injected failed: {e}"))?;
        self.trace(|| format!("    -> GC deleted {} packs, {} pages", gc.packs_deleted.len(), gc.pages_deleted.len()));
        self.check_no_garbage()?;
        if self.data_objects() != data {
            self.invalidate();
            self.check_all()?;
        }
        // A scrub that opens every block (a quarter of the seeds: it costs a
        // restore of everything; every point was restored already).
        let keys = self.rng.chance(25).then_some(&self.keys);
        let report = self.vault.check(keys, &mut ()).map_err(|e| format!("check: {e}"))?;
        ensure!(report.is_clean(), "a final check found problems: {:?}", report.problems);
        Ok(())
    }
}

/// Runs a cycle with nothing injected.
#[allow(clippy::too_many_arguments)]
fn clean_cycle(
    disk: &mut SimDisk,
    name: &str,
    vault: &Vault,
    keys: &Keys,
    clock: &Arc<AtomicU64>,
    store: &Arc<Store>,
    model: &Model,
    out: &File,
) -> (Result<shipper::CycleReport, ShipError>, CycleLog) {
    let c = Arc::clone(clock);
    let clock_fn = move || c.load(Ordering::SeqCst);
    let cancel = AtomicBool::new(false);
    let opts = CycleOptions {
        disk_name: name,
        disk_id: if name == OTHER { OTHER_ID } else { DISK_ID },
        host: "sim".into(),
        workers: 1,
        compress: true,
        cancel: None,
        clock: &clock_fn,
        extension: &[],
        cut_hook: None,
        index_cache: None,
        relist_every: vault::index_cache::RELIST_EVERY,
        warm_index: None,
        page_cache: None,
    };
    let mut src = CycleSource {
        disk,
        rng: Rng::new(0),
        pool: 1,
        clock,
        store,
        keys,
        model,
        out,
        trace: false,
        cancel: &cancel,
        events: Vec::new(),
        read_error_at: None,
        finish_fault: None,
        tick: 0,
        reads: 0,
        dead: false,
        log: CycleLog::default(),
    };
    let r = run_cycle(&mut src, vault, keys, &opts, &mut ());
    (r, src.log)
}

fn random_policy(r: &mut Rng) -> Policy {
    let recent = [0, 60, 600, 3600, 3 * 3600][ix(r.below(5))];
    Policy {
        recent: Duration::from_secs(recent),
        thin: None,
        hourly: u32::try_from(r.below(5)).expect("small"),
        daily: u32::try_from(r.below(3)).expect("small"),
    }
}
