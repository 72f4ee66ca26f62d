//! Retention: the ladder's properties (proptest over random points, policies
//! and holds), and pruning a real vault: kept points restore byte for byte,
//! a held point (being restored) is never pruned.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::{lease_body, master, new_vault, restore_bytes, test_host, Disk, Rng};
use disk_format::Consistency;
use proptest::prelude::*;
use vault::{select, BlockIndex, HostIdentity, Kind, PointSummary, Policy, Selection};

const HOUR: i128 = 3_600_000_000_000;
const DAY: i128 = 24 * HOUR;
const NOW: u64 = 1_790_000_000_000_000_000;

fn summary(sequence: u64, cut_time_ns: u64) -> PointSummary {
    PointSummary {
        sequence,
        damage: None,
        cut_time_ns,
        consistency: Consistency::Crash,
        bytes_shipped: 0,
        disk_size: 0,
        block_size: 0,
        chain: String::new(),
        root_name: String::new(),
        cut_group: None,
        disk_id: [0; 16],
    }
}

/// Points with distinct sequences and cut times from 40 days before `NOW` to
/// one hour after it (a clock ahead), sometimes equal.
fn points() -> impl Strategy<Value = Vec<PointSummary>> {
    prop::collection::vec((0u64..1_000, -40 * DAY..HOUR, any::<bool>()), 0..80).prop_map(|v| {
        let mut seen = HashSet::new();
        let mut last = 0i128;
        v.into_iter()
            .filter(|(s, _, _)| seen.insert(*s))
            .map(|(s, off, same)| {
                // Sometimes repeat the previous cut time, to test ties.
                let cut = if same { last } else { i128::from(NOW) + off };
                last = cut;
                summary(s, u64::try_from(cut).unwrap())
            })
            .collect()
    })
}

fn policy() -> impl Strategy<Value = Policy> {
    (0u64..4 * 3_600, 0u32..30, 0u32..20, thin()).prop_map(|(recent, hourly, daily, thin)| Policy {
        recent: Duration::from_secs(recent),
        thin,
        hourly,
        daily,
    })
}

/// No thinning, or a dense window and a bucket (zero included: no thinning).
fn thin() -> impl Strategy<Value = Option<vault::Thin>> {
    prop::option::of((0u64..2 * 3_600, prop::sample::select(vec![0u64, 1, 5, 30, 60, 600]))).prop_map(|t| {
        t.map(|(dense, step)| vault::Thin { dense: Duration::from_secs(dense), step: Duration::from_secs(step) })
    })
}

/// Points of the last two hours (and a little ahead), where thinning acts.
fn recent_points() -> impl Strategy<Value = Vec<PointSummary>> {
    prop::collection::vec((0u64..1_000, -2 * HOUR..HOUR / 60), 0..200).prop_map(|v| {
        let mut seen = HashSet::new();
        v.into_iter()
            .filter(|(s, _)| seen.insert(*s))
            .map(|(s, off)| summary(s, u64::try_from(i128::from(NOW) + off).unwrap()))
            .collect()
    })
}

/// The rungs, recomputed from the documented rules.
struct Rungs {
    recent_start: i128,
    /// Recent points older than this are thinned into buckets of `step`.
    dense_start: i128,
    step: i128,
    hours: std::ops::RangeInclusive<i128>,
    hourly_start: i128,
    days: std::ops::RangeInclusive<i128>,
}

fn rungs(p: &Policy, now: u64) -> Rungs {
    let recent_start = (i128::from(now) - p.recent.as_nanos() as i128).max(0);
    let c = (recent_start - 1).div_euclid(HOUR);
    let hours = c - i128::from(p.hourly) + 1..=c;
    let hourly_start = *hours.start() * HOUR;
    let e = (hourly_start - 1).div_euclid(DAY);
    let (dense_start, step) = match p.thin {
        Some(t) if t.step.as_nanos() > 0 => {
            ((i128::from(now) - t.dense.as_nanos() as i128).max(recent_start), t.step.as_nanos() as i128)
        }
        _ => (recent_start, 0),
    };
    Rungs { recent_start, dense_start, step, hours, hourly_start, days: e - i128::from(p.daily) + 1..=e }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn the_ladder_holds(points in points(), policy in policy(), held_bits in any::<u64>(), now_off in 0u64..HOUR as u64) {
        ladder_holds(&points, &policy, held_bits, NOW + now_off)?;
    }

    #[test]
    fn the_thinned_recent_rung_holds(
        points in recent_points(),
        recent in 0u64..3 * 3_600,
        thin in thin(),
        held_bits in any::<u64>(),
        now_off in 0u64..60_000_000_000,
    ) {
        let policy = Policy { recent: Duration::from_secs(recent), thin, hourly: 3, daily: 1 };
        ladder_holds(&points, &policy, held_bits, NOW + now_off)?;
    }
}

fn ladder_holds(points: &[PointSummary], policy: &Policy, held_bits: u64, now: u64) -> Result<(), TestCaseError> {
    {
        let (points, policy) = (points.to_vec(), *policy);
        let held: HashSet<u64> =
            points.iter().map(|p| p.sequence).filter(|s| held_bits & (1 << (s % 64)) != 0).collect();
        let sel = select(&points, now, &policy, &held);

        // A partition of the input, sorted.
        let mut all: Vec<u64> = points.iter().map(|p| p.sequence).collect();
        all.sort_unstable();
        let mut both: Vec<u64> = sel.keep.iter().chain(&sel.prune).copied().collect();
        both.sort_unstable();
        prop_assert_eq!(&both, &all);
        prop_assert!(sel.keep.windows(2).all(|w| w[0] < w[1]) && sel.prune.windows(2).all(|w| w[0] < w[1]));

        // Deterministic, and independent of the input's order.
        prop_assert_eq!(&select(&points, now, &policy, &held), &sel);
        let mut reversed = points.clone();
        reversed.reverse();
        prop_assert_eq!(&select(&reversed, now, &policy, &held), &sel);

        let kept: HashSet<u64> = sel.keep.iter().copied().collect();
        let newest = points.iter().map(|p| p.sequence).max();
        // Never the newest point nor a held one.
        if let Some(n) = newest {
            prop_assert!(kept.contains(&n), "newest {} pruned", n);
        }
        for s in &held {
            prop_assert!(kept.contains(s), "held {} pruned", s);
        }

        let r = rungs(&policy, now);
        let mut step_kept: BTreeMap<i128, Vec<u64>> = BTreeMap::new();
        let mut step_newest: BTreeMap<i128, (u64, u64)> = BTreeMap::new();
        let mut hour_kept: BTreeMap<i128, Vec<u64>> = BTreeMap::new();
        let mut day_kept: BTreeMap<i128, Vec<u64>> = BTreeMap::new();
        let mut hour_newest: BTreeMap<i128, (u64, u64)> = BTreeMap::new();
        let mut day_newest: BTreeMap<i128, (u64, u64)> = BTreeMap::new();
        for p in &points {
            let cut = i128::from(p.cut_time_ns);
            let special = Some(p.sequence) == newest || held.contains(&p.sequence);
            let key = (p.cut_time_ns, p.sequence);
            if cut >= r.dense_start {
                // Every point within `recent` (within `dense`, when thinned) is kept.
                prop_assert!(kept.contains(&p.sequence), "recent point {} pruned", p.sequence);
                continue;
            }
            if cut >= r.recent_start {
                // Thinned: at most one per bucket of `step`, its newest.
                let b = cut.div_euclid(r.step);
                let e = step_newest.entry(b).or_insert(key);
                *e = (*e).max(key);
                if kept.contains(&p.sequence) && !special {
                    step_kept.entry(b).or_default().push(p.sequence);
                }
                continue;
            }
            if cut >= r.hourly_start {
                let h = cut.div_euclid(HOUR);
                prop_assert!(r.hours.contains(&h));
                let e = hour_newest.entry(h).or_insert(key);
                *e = (*e).max(key);
                if kept.contains(&p.sequence) && !special {
                    hour_kept.entry(h).or_default().push(p.sequence);
                }
            } else if r.days.contains(&cut.div_euclid(DAY)) {
                let d = cut.div_euclid(DAY);
                let e = day_newest.entry(d).or_insert(key);
                *e = (*e).max(key);
                if kept.contains(&p.sequence) && !special {
                    day_kept.entry(d).or_default().push(p.sequence);
                }
            } else {
                // Beyond the ladder: only the newest or a held point survives.
                prop_assert_eq!(kept.contains(&p.sequence), special, "point {} beyond the ladder", p.sequence);
            }
        }
        // At most one per bucket beyond `recent` (besides the newest and held
        // points), and in every non-empty bucket its newest point is kept.
        for (h, v) in &hour_kept {
            prop_assert!(v.len() <= 1, "hour {} keeps {:?}", h, v);
        }
        for (b, v) in &step_kept {
            prop_assert!(v.len() <= 1, "bucket {} keeps {:?}", b, v);
        }
        for (d, v) in &day_kept {
            prop_assert!(v.len() <= 1, "day {} keeps {:?}", d, v);
        }
        for (_, (_, s)) in hour_newest.iter().chain(&day_newest).chain(&step_newest) {
            prop_assert!(kept.contains(s), "newest point {} of its bucket pruned", s);
        }
    }
    Ok(())
}

#[test]
fn stable_under_repeated_pruning() {
    // A point every 5 minutes for 3 days, pruned after every cycle: the
    // survivors are the same as one prune at the end (fixed buckets).
    let policy = Policy { recent: Duration::from_secs(3_600), thin: None, hourly: 24, daily: 15 };
    let step = 300_000_000_000u64;
    let mut alive: Vec<PointSummary> = Vec::new();
    let mut all = Vec::new();
    for s in 1..=864u64 {
        let p = summary(s, NOW + s * step);
        alive.push(p.clone());
        all.push(p);
        let Selection { keep, .. } = select(&alive, NOW + s * step + 1, &policy, &HashSet::new());
        alive.retain(|p| keep.contains(&p.sequence));
    }
    let once = select(&all, NOW + 864 * step + 1, &policy, &HashSet::new());
    let alive: Vec<u64> = alive.iter().map(|p| p.sequence).collect();
    assert_eq!(alive, once.keep);
    // 12 recent, 24 hourly, and the newest point of 2 earlier days.
    assert!(alive.len() >= 12 + 24 + 2, "{} kept", alive.len());
}

/// A day of 5 s points (`--rpo 5s`), pruned after every cycle with the
/// thinned ladder (a minute of every point, then one per 30 s for the rest
/// of the hour): the survivors are what one prune at the end keeps, one per
/// 30 s bucket in the thinned stretch, and as many as a day of 30 s points
/// keeps under the plain ladder, within 10%.
#[test]
fn a_day_of_5s_points_thinned_costs_about_a_day_of_30s_points() {
    let thin = Some(vault::Thin { dense: Duration::from_secs(60), step: Duration::from_secs(30) });
    let thinned = Policy { recent: Duration::from_secs(3_600), thin, hourly: 24, daily: 0 };
    let step = 5_000_000_000u64;
    let n = 24 * 720u64;
    let mut alive: Vec<PointSummary> = Vec::new();
    let mut all = Vec::new();
    for s in 1..=n {
        let p = summary(s, NOW + s * step);
        alive.push(p.clone());
        all.push(p);
        let Selection { keep, .. } = select(&alive, NOW + s * step + 1, &thinned, &HashSet::new());
        alive.retain(|p| keep.contains(&p.sequence));
    }
    let now = NOW + n * step + 1;
    let once = select(&all, now, &thinned, &HashSet::new());
    let kept: Vec<u64> = alive.iter().map(|p| p.sequence).collect();
    // Pruning after every cycle keeps what one prune keeps, but for the
    // hour that is crossing out of the recent window: there one prune keeps
    // the point that just crossed, repeated pruning the newest of the 30 s
    // buckets that crossed before (the one that just crossed was thinned
    // away inside the window). Either is one point for that hour.
    let only_repeated: Vec<u64> = kept.iter().filter(|s| !once.keep.contains(s)).copied().collect();
    let only_once: Vec<u64> = once.keep.iter().filter(|s| !kept.contains(s)).copied().collect();
    assert_eq!(kept.len(), once.keep.len());
    assert!(only_repeated.len() <= 1 && only_once.len() <= 1, "{only_repeated:?} {only_once:?}");
    let hour_of = |s: &u64| i128::from(NOW + s * step).div_euclid(HOUR);
    let crossing = (i128::from(now) - HOUR - 1).div_euclid(HOUR);
    assert!(only_repeated.iter().chain(&only_once).all(|s| hour_of(s) == crossing));
    // In the thinned stretch (older than a minute, within the hour), one
    // point per 30 s clock bucket, and it is the bucket's last.
    let (dense_start, recent_start) = (i128::from(now) - 60_000_000_000, i128::from(now) - HOUR);
    let mut buckets = BTreeMap::new();
    for p in &alive {
        let cut = i128::from(p.cut_time_ns);
        if cut >= recent_start && cut < dense_start {
            *buckets.entry(cut.div_euclid(30_000_000_000)).or_insert(0) += 1;
        }
    }
    assert!(buckets.len() >= 110 && buckets.values().all(|&c| c == 1), "{buckets:?}");

    // A day of 30 s points under the default ladder.
    let plain = Policy::default();
    let every30: Vec<PointSummary> = (1..=n / 6).map(|s| summary(s, NOW + s * 6 * step)).collect();
    let plain_kept = select(&every30, now, &plain, &HashSet::new()).keep.len();
    let thinned_kept = kept.len();
    assert!(
        thinned_kept * 10 <= plain_kept * 11,
        "5 s points thinned keep {thinned_kept}, 30 s points keep {plain_kept}"
    );
}

/// Ships `n` points of a small disk, one every 20 minutes, each rewriting a
/// few blocks; returns the images at every point.
fn shipped(vault: &vault::Vault, n: u64) -> (Disk, Vec<Vec<u8>>) {
    let keys = master().keys();
    let mut index = BlockIndex::new();
    let mut rng = Rng(0x5eed);
    let mut disk = Disk::new("web", 48 * 4096, 4096, 4);
    disk.cut_interval_ns = 20 * 60 * 1_000_000_000;
    let mut images = vec![Vec::new()]; // index = sequence
    let first: Vec<u64> = (0..32).collect();
    for &b in &first {
        rng.fill(disk.block_mut(b));
    }
    disk.ship(vault, &keys, &mut index, &first);
    images.push(disk.image.clone());
    for s in 2..=n {
        let changed: Vec<u64> = (0..6).map(|i| (s * 5 + i * 7) % 48).collect();
        for &b in &changed {
            rng.fill(disk.block_mut(b));
        }
        assert_eq!(disk.ship(vault, &keys, &mut index, &changed), s);
        images.push(disk.image.clone());
    }
    (disk, images)
}

#[test]
fn prune_deletes_roots_only_and_kept_points_restore_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (disk, images) = shipped(&vault, 12); // 12 points over 4 hours
    let (packs, pack_bytes) = common::objects(&vault, Kind::Pack);
    let (pages, _) = common::objects(&vault, Kind::Page);
    let now = disk.cut_base_ns + 12 * disk.cut_interval_ns + 1;
    let policy = Policy { recent: Duration::from_secs(3_600), thin: None, hourly: 2, daily: 0 };
    let expected = select(&vault.points("web").unwrap(), now, &policy, &HashSet::new());
    let report = vault.prune("web", &policy, now).unwrap();
    assert_eq!(report.kept, expected.keep);
    assert_eq!(report.pruned, expected.prune);
    assert!(!report.pruned.is_empty() && report.held.is_empty());
    assert_eq!(vault.sequences("web").unwrap(), report.kept);
    // Only roots went.
    assert_eq!(common::objects(&vault, Kind::Pack), (packs, pack_bytes));
    assert_eq!(common::objects(&vault, Kind::Page).0, pages);
    for &s in &report.kept {
        assert!(restore_bytes(&vault, dir.path(), "web", s).unwrap() == images[s as usize], "point {s}");
    }
    for &s in &report.pruned {
        assert!(restore_bytes(&vault, dir.path(), "web", s).is_err(), "pruned point {s} still restores");
    }
    // Nothing left behind by the restores' holds.
    assert!(vault.leases("").unwrap().is_empty());
    // Pruning again at the same time prunes nothing more.
    assert!(vault.prune("web", &policy, now).unwrap().pruned.is_empty());
}

#[test]
fn a_held_point_is_never_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (disk, images) = shipped(&vault, 4);
    let now = disk.cut_base_ns + 4 * disk.cut_interval_ns + 10 * 3_600_000_000_000;
    let keep_newest = Policy { recent: Duration::ZERO, thin: None, hourly: 0, daily: 0 };

    let hold = vault.hold("web", 2, "test restore").unwrap();
    let report = vault.prune("web", &keep_newest, now).unwrap();
    assert_eq!(report.kept, vec![2, 4]);
    assert_eq!(report.held, vec![2]);
    assert_eq!(report.pruned, vec![1, 3]);
    // Still restorable while held (the restore takes its own hold as well).
    assert!(restore_bytes(&vault, dir.path(), "web", 2).unwrap() == images[2]);
    drop(hold);
    assert_eq!(vault.prune("web", &keep_newest, now).unwrap().pruned, vec![2]);

    // A hold on a point that does not exist is refused and leaves nothing.
    assert!(matches!(vault.hold("web", 2, "x"), Err(vault::VaultError::NoSuchPoint { sequence: 2, .. })));
    assert!(vault.leases("").unwrap().is_empty());
}

#[test]
fn restore_holds_its_point_while_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    shipped(&vault, 2);
    let out = tempfile::tempfile().unwrap();
    let mut seen = Vec::new();
    vault
        .restore(
            "web",
            1,
            &master().keys(),
            &out,
            &mut vault::Callback::new(|_, _, _| {
                seen.push(vault.leases("point/web/").unwrap().iter().map(|l| l.purpose.clone()).collect::<Vec<_>>());
            }),
        )
        .unwrap();
    assert!(!seen.is_empty());
    for leases in &seen {
        assert_eq!(leases, &vec![vault::Purpose::Point { disk: "web".into(), sequence: 1 }]);
    }
    assert!(vault.leases("").unwrap().is_empty(), "the hold is released when the restore returns");
}

#[test]
fn a_lease_from_another_host_is_respected_and_a_stale_one_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (disk, _) = shipped(&vault, 3);
    let now = disk.cut_base_ns + 3 * disk.cut_interval_ns + 10 * 3_600_000_000_000;
    let keep_newest = Policy { recent: Duration::ZERO, thin: None, hourly: 0, daily: 0 };
    let other_host =
        "lifeboat lease v1\nholder=restore\nhost=far\nmachine=another-machine\nboot=b\npid=1\nstart=5\ncreated_ns=0\n";
    vault.backend().put(Kind::Lease, "point/web/00000000000000000001/00aa", other_host.as_bytes()).unwrap();
    // Garbage in a lease: cannot be judged, so it holds.
    vault.backend().put(Kind::Lease, "point/web/00000000000000000002/00bb", b"junk").unwrap();
    let report = vault.prune("web", &keep_newest, now).unwrap();
    assert_eq!(report.kept, vec![1, 2, 3]);
    assert_eq!(report.held, vec![1, 2]);
    vault.break_lease("point/web/00000000000000000002/00bb").unwrap();

    // A lease of this host from a process that no longer exists is stale
    // (pid 4000000000 is above any pid_max), and so is one of this host
    // taken before it rebooted (another boot id).
    let dead = lease_body("restore", &test_host(), 4_000_000_000, 5);
    let before_reboot = lease_body("restore", &HostIdentity { boot: Some("test-boot-0".into()), ..test_host() }, 1, 5);
    vault.backend().put(Kind::Lease, "point/web/00000000000000000002/00dd", before_reboot.as_bytes()).unwrap();
    vault.backend().put(Kind::Lease, "point/web/00000000000000000001/00cc", dead.as_bytes()).unwrap();
    vault.break_lease("point/web/00000000000000000001/00aa").unwrap();
    let report = vault.prune("web", &keep_newest, now).unwrap();
    assert_eq!(report.pruned, vec![1, 2]);
    assert_eq!(
        report.stale_leases_removed,
        vec!["point/web/00000000000000000001/00cc".to_string(), "point/web/00000000000000000002/00dd".to_string()]
    );
    assert!(vault.leases("").unwrap().is_empty());
}
