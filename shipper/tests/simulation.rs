//! A deterministic simulation of the replication cycle (issue requirement:
//! "a deterministic simulation of the cycle logic — fake clock, disk, vault
//! with injected faults — that runs thousands of seeded schedules").
//!
//! Each seed draws a schedule over a small disk: VM writes (zeros, repeats,
//! duplicates), cycles — clean, or with a vault fault, a lost reply, a
//! shipper, filter or host crash, a read error, a failed finish, a
//! concurrent GC / prune / restore, a cancel, VM writes between and inside
//! the cycle's reads — clock steps, prunes and garbage collections (with
//! faults), holds from restores elsewhere, stale leases, restores under
//! faults, deliberate corruption, resizes. The shipper's real `run_cycle` and
//! the vault's real prune, GC, restore and check run against fakes
//! (`sim/disk.rs`: the filter's contract; `sim/store.rs`: the backend's,
//! with faults), and after every step the model checks: every point restores
//! to exactly the disk at its cut, sequences only grow, a failed cycle leaves
//! no point (unless its root landed and the reply was lost — then it must be
//! exact too), no change is ever lost (each block is as in the newest point
//! or dirty), prune keeps the newest, held and recent points, GC keeps what
//! points use and leaves nothing they do not, and a scrub is clean unless
//! something was damaged on purpose (then damage is reported, never wrong
//! data). A schedule ends by healing: a clean cycle must ship the disk
//! exactly, GC and a keyed check must pass.
//!
//! Other processes (a restarted shipper, a concurrent GC) are other `Vault`s
//! on the same store. Leases are judged by process, never by time
//! (vault/src/lease.rs), so a crash is modelled by rewriting the crashed
//! process's leases with a dead pid (or, for a host crash, an old boot id);
//! a restore elsewhere is a lease from another machine. A second disk with
//! one point shares the vault in some seeds. Not simulated: the direct
//! (io_uring) read path of `LocalSource`, which needs a real `filter::Disk`.
//!
//! - `LIFEBOAT_SIM_SEEDS=N` runs N seeds (default 2000), from
//!   `LIFEBOAT_SIM_FIRST` (default 0);
//! - `LIFEBOAT_SIM_STEPS=N` makes schedules up to N steps long (default 16);
//! - `LIFEBOAT_SIM_SEED=S` replays seed S alone, printing every step.

mod sim;

use std::time::Instant;

use sim::{run_seed, run_seeds, Options};

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

const DEFAULT_SEEDS: u64 = 2000;

#[test]
fn seeded_schedules_keep_every_invariant() {
    let max_steps = env_u64("LIFEBOAT_SIM_STEPS").unwrap_or(0);
    if let Some(seed) = env_u64("LIFEBOAT_SIM_SEED") {
        let opts = Options { trace: true, max_steps, ..Options::default() };
        let stats = run_seed(seed, opts).unwrap_or_else(|e| panic!("{e}"));
        eprintln!("seed {seed} passed: {stats:?}");
        return;
    }
    let count = env_u64("LIFEBOAT_SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
    let first = env_u64("LIFEBOAT_SIM_FIRST").unwrap_or(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = Instant::now();
    match run_seeds(first, count, threads, Options { max_steps, ..Options::default() }) {
        Ok(stats) => eprintln!(
            "simulation: {count} seeds from {first} passed in {:.1} s: {stats:?}",
            started.elapsed().as_secs_f64()
        ),
        Err((e, n)) => panic!("{e}\n  ({n} seed(s) failed before the run stopped)"),
    }
}

/// Regression (found by this simulation, seed 993): one damaged map page of
/// the newest point used to stop replication for good. A cycle builds the
/// new point's pages from the previous point's, and `MapBuilder::finish`
/// rightly refuses a page that does not hash to its id; the cycle then failed
/// every time, and since prune never removes the newest point and GC refuses
/// while a page is damaged, no new point was ever made. Now the cycle falls
/// back to a full read, as it does for a damaged root. Seed 993: point 1 is
/// shipped, one bit of its only map page flips; later cycles must commit.
#[test]
fn a_damaged_map_page_does_not_stop_replication() {
    let opts = Options { strict_after_damage: true, ..Options::default() };
    strict_seeds(opts).unwrap_or_else(|e| panic!("{e}"));
}

/// Strict mode fails on every failure after damage, whatever its text: here
/// the clean cycle after each deliberate damage fails for another reason (its
/// root's put fails), which a check of one error text let through.
#[test]
fn strict_mode_reports_a_failure_of_any_kind() {
    let opts = Options { strict_after_damage: true, fail_cycle_after_damage: true, ..Options::default() };
    let e = strict_seeds(opts).expect_err("a failed cycle after damage must fail strict mode");
    assert!(e.contains("cycles fail: injected fault") && e.contains("/roots/"), "{e}");
}

/// Seed 993, then seeds 0..300, in strict mode: any failure at all (not one
/// error text) fails the run.
fn strict_seeds(opts: Options) -> Result<(), String> {
    run_seed(993, opts)?;
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    run_seeds(0, 300, threads, opts).map(drop).map_err(|(e, n)| format!("{e}\n  ({n} seed(s) failed)"))
}

/// The fake backend keeps `vault::Backend`'s contract, and its faults do what
/// they say.
#[test]
fn the_fake_backend_keeps_the_backend_contract() {
    use sim::store::{Action, Fault, Op, Store};
    use vault::{Kind, VaultError};
    let store = Store::new();
    let b = store.backend();
    b.put(Kind::Pack, "ab01", b"0123456789").unwrap();
    assert_eq!(b.get(Kind::Pack, "ab01").unwrap(), b"0123456789");
    assert_eq!(b.get_range(Kind::Pack, "ab01", 3, 4).unwrap(), b"3456");
    assert!(matches!(b.get_range(Kind::Pack, "ab01", 8, 4), Err(VaultError::ShortObject { size: 10, .. })));
    assert!(matches!(b.get(Kind::Page, "ab01"), Err(VaultError::NotFound { .. })));
    assert!(matches!(b.delete(Kind::Page, "ab01"), Err(VaultError::NotFound { .. })));
    assert_eq!(b.size(Kind::Page, "ab01").unwrap(), None);
    assert!(b.put(Kind::Root, "../x", b"").is_err());
    for n in ["web/2", "web/1", "db/1"] {
        b.put(Kind::Root, n, b"r").unwrap();
    }
    assert_eq!(b.list(Kind::Root, "web/").unwrap(), vec!["web/1", "web/2"]);
    assert_eq!(b.list(Kind::Root, "").unwrap(), vec!["db/1", "web/1", "web/2"]);
    // The 2nd put fails and stores nothing; a lost reply stores the object.
    store.arm(Fault::new(Some(Op::Put), None, 2, Action::Fail));
    b.put(Kind::Page, "aa", b"1").unwrap();
    assert!(b.put(Kind::Page, "bb", b"2").is_err());
    assert_eq!(b.size(Kind::Page, "bb").unwrap(), None);
    assert_eq!(store.disarm().len(), 1);
    store.arm(Fault::new(Some(Op::Put), Some(Kind::Page), 1, Action::FailAfterPut));
    assert!(b.put(Kind::Page, "cc", b"3").is_err());
    assert_eq!(b.get(Kind::Page, "cc").unwrap(), b"3");
    assert_eq!(store.take_landed_puts(), vec![(Kind::Page, "cc".to_string())]);
    // A crash: that put (not landed) and everything after fail until restart.
    store.disarm();
    store.arm(Fault::new(None, None, 1, Action::Crash { landed: false }));
    assert!(b.put(Kind::Page, "dd", b"4").is_err());
    assert!(b.get(Kind::Page, "aa").is_err());
    store.restart();
    assert_eq!(b.size(Kind::Page, "dd").unwrap(), None);
    assert_eq!(b.get(Kind::Page, "aa").unwrap(), b"1");
}

/// The fake disk keeps the filter's contract: a cut reads as at the cut
/// whatever is written meanwhile, each block once; finish drops the cut,
/// abort and a filter crash give its bits back; a host crash makes every
/// block dirty and the state suspect until a verified full cut.
#[test]
fn the_fake_disk_keeps_the_filter_contract() {
    use filter::CutKind;
    use sim::disk::SimDisk;
    let mut d = SimDisk::new(disk_format::Geometry::new(8 * 4096, 4096).unwrap());
    d.write(1, 11);
    d.write(2, 22);
    let info = d.cut(CutKind::Dirty).unwrap();
    assert_eq!((info.dirty_blocks, info.readable_blocks), (2, 2));
    assert_eq!(d.cut_blocks().unwrap(), vec![1, 2]);
    d.write(1, 99); // copy-before-write keeps 11 for the reader
    d.write(3, 33);
    assert_eq!(d.read_block(1).unwrap(), 11);
    d.write(2, 98); // read after the write: still the cut's contents
    assert_eq!(d.read_block(2).unwrap(), 22);
    assert!(d.read_block(2).is_err(), "each block once");
    assert!(d.read_block(3).is_err(), "not in the cut");
    d.violations.clear();
    assert!(d.cut(CutKind::Dirty).is_err(), "one cut at a time");
    d.violations.clear();
    d.abort().unwrap();
    assert!(d.dirty(1) && d.dirty(2) && d.dirty(3) && !d.dirty(0));
    d.cut(CutKind::Dirty).unwrap();
    d.filter_crash();
    assert!(d.cut.is_none() && d.dirty(1) && d.dirty(2));
    let info = d.cut(CutKind::Dirty).unwrap();
    for b in d.cut_blocks().unwrap() {
        d.read_block(b).unwrap();
    }
    let point = |sequence, cut_generation| disk_format::LastPoint {
        vault_id: disk_format::VaultId([1; 16]),
        sequence,
        root_id: disk_format::RootId([2; 32]),
        cut_generation,
    };
    d.finish(&point(1, info.generation), false).unwrap();
    assert_eq!(d.last_point, Some(point(1, info.generation)), "finish records the point");
    assert!((0..8).all(|b| !d.dirty(b)));
    d.host_crash(&mut || true);
    assert!(d.suspect && (0..8).all(|b| d.dirty(b)));
    let info = d.cut(CutKind::Full).unwrap();
    for b in 0..8 {
        d.read_block(b).unwrap();
    }
    d.finish(&point(2, info.generation), true).unwrap();
    assert!(!d.suspect && d.violations.is_empty());
}
