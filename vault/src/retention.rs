//! Retention: which recovery points of a disk to keep, as a pure function of
//! the points, the time and a [`Policy`] (a ladder), and which to prune.
//!
//! # The ladder, exactly
//!
//! All times are nanoseconds since the Unix epoch (UTC); a point's time is its
//! cut time. Let `recent_start = now - recent` (0 if that would be negative).
//!
//! 1. **Recent**: every point with `cut >= recent_start` is kept (its age is
//!    at most `recent`; a point cut "in the future", from a clock that ran
//!    ahead, counts as recent), unless the policy **thins** the recent rung
//!    ([`Thin`]: for a seconds-level RPO). Then only the recent points with
//!    `cut >= now - dense` are all kept; the older recent ones are put in
//!    clock buckets of `step`, `cut / step`, and the newest of each bucket is
//!    kept. A day of 5 s points then costs about what a day of 30 s points
//!    did: a minute of every point, then one per 30 s.
//! 2. **Hourly**: the older points are put in *clock-hour* buckets,
//!    `cut / 1 h`. Let `c` be the hour holding the instant `recent_start - 1`
//!    (the youngest instant that is no longer recent). The hourly rung is the
//!    `hourly` hours `c - hourly + 1 ..= c`; in each, the newest point (highest
//!    cut time, then highest sequence) is kept. Hour `c` is usually partly
//!    inside the recent window: its kept point is the newest one that is older
//!    than `recent`, so with the defaults the rung adds up to 24 points.
//! 3. **Daily**: points older than the hourly rung (before the start of hour
//!    `c - hourly + 1`) are put in UTC *day* buckets, `cut / 24 h`. Let `e` be
//!    the day holding the last instant before the hourly rung starts; the
//!    daily rung is the `daily` days `e - daily + 1 ..= e`, and in each the
//!    newest point is kept.
//! 4. Everything older is pruned.
//!
//! On top of the ladder: the **newest point** (highest sequence: the one the
//! next cycle builds on) is always kept, whatever its age, and so is every
//! **held** point (one being restored, see [`crate::lease`]).
//! App-consistent points are not treated specially yet.
//!
//! Buckets are fixed clock hours and days, not windows sliding with `now`, so
//! the choice is stable: a point kept as the newest of its hour stays the
//! newest of that hour at every later prune, until its hour leaves the
//! hourly rung. (With buckets measured back from `now`, each prune would keep
//! the youngest point of the first bucket and prune the one before it, and
//! no point would ever age into the later buckets.) While an hour or a day
//! straddles a rung boundary, its kept point moves forward, point by point,
//! until the whole bucket has crossed: then it is the bucket's newest.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::error::VaultError;
use crate::lease::Purpose;
use crate::store::{PointSummary, Vault};

const HOUR_NS: i128 = 3_600 * 1_000_000_000;
const DAY_NS: i128 = 24 * HOUR_NS;

/// A retention ladder (see the module documentation for the exact rules).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Keep every point whose cut is at most this old. Default 1 hour.
    pub recent: Duration,
    /// Thin the recent rung: `None` (the default) keeps every recent point.
    pub thin: Option<Thin>,
    /// Then the newest point of each of this many clock hours. Default 24.
    pub hourly: u32,
    /// Then the newest point of each of this many UTC days. Default 0.
    pub daily: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy { recent: Duration::from_secs(3_600), thin: None, hourly: 24, daily: 0 }
    }
}

/// How the recent rung is thinned (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thin {
    /// Every point at most this old is kept.
    pub dense: Duration,
    /// Older recent points: the newest of each clock bucket of this length.
    /// Zero keeps every one (no thinning).
    pub step: Duration,
}

/// Which points to keep and which to prune: a partition of the input's
/// sequences, each list ascending.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Sequences of the points kept.
    pub keep: Vec<u64>,
    /// Sequences of the points to prune.
    pub prune: Vec<u64>,
}

/// The rung a point falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Rung {
    Recent,
    Step(i128),
    Hour(i128),
    Day(i128),
    Beyond,
}

/// Where the rungs start, for a policy at `now_ns`.
struct Ladder {
    recent_start: i128,
    /// With thinning: where every recent point is kept from, and the bucket.
    dense_start: i128,
    step: i128,
    hours: std::ops::RangeInclusive<i128>,
    hourly_start: i128,
    days: std::ops::RangeInclusive<i128>,
}

impl Ladder {
    fn new(policy: &Policy, now_ns: u64) -> Ladder {
        let recent = i128::try_from(policy.recent.as_nanos()).unwrap_or(i128::MAX / 4).min(i128::MAX / 4);
        let recent_start = (i128::from(now_ns) - recent).max(0);
        // The hour of the youngest instant that is not recent. With
        // `recent_start == 0` no point is old (cuts are never negative).
        let c = (recent_start - 1).div_euclid(HOUR_NS);
        let hourly = i128::from(policy.hourly);
        let hours = c - hourly + 1..=c;
        let hourly_start = (c - hourly + 1) * HOUR_NS;
        let e = (hourly_start - 1).div_euclid(DAY_NS);
        let days = e - i128::from(policy.daily) + 1..=e;
        let (dense_start, step) = match policy.thin {
            Some(t) if !t.step.is_zero() => {
                let dense = i128::try_from(t.dense.as_nanos()).unwrap_or(i128::MAX / 4).min(i128::MAX / 4);
                let step = i128::try_from(t.step.as_nanos()).unwrap_or(i128::MAX / 4).min(i128::MAX / 4);
                ((i128::from(now_ns) - dense).max(recent_start), step)
            }
            _ => (recent_start, 0),
        };
        Ladder { recent_start, dense_start, step, hours, hourly_start, days }
    }

    fn rung(&self, cut_ns: u64) -> Rung {
        let cut = i128::from(cut_ns);
        if cut >= self.dense_start {
            return Rung::Recent;
        }
        if cut >= self.recent_start {
            return Rung::Step(cut.div_euclid(self.step));
        }
        if cut >= self.hourly_start {
            let h = cut.div_euclid(HOUR_NS);
            debug_assert!(self.hours.contains(&h));
            return Rung::Hour(h);
        }
        let d = cut.div_euclid(DAY_NS);
        if self.days.contains(&d) {
            Rung::Day(d)
        } else {
            Rung::Beyond
        }
    }
}

/// Chooses which of one disk's `points` to keep under `policy` at `now_ns`
/// (nanoseconds since the Unix epoch); `held` are sequences that must be
/// kept whatever their age. Pure and deterministic: the result depends only
/// on the set of (sequence, cut time) pairs, not on their order. Sequences
/// are expected to be unique (they are, for one disk's points).
pub fn select(points: &[PointSummary], now_ns: u64, policy: &Policy, held: &HashSet<u64>) -> Selection {
    let ladder = Ladder::new(policy, now_ns);
    let newest = points.iter().map(|p| p.sequence).max();
    // The newest point of each hour or day bucket: (cut, sequence) is the
    // order, so ties in cut time are broken the same way every time.
    let mut best: HashMap<Rung, (u64, u64)> = HashMap::new();
    for p in points {
        let rung = ladder.rung(p.cut_time_ns);
        if matches!(rung, Rung::Step(_) | Rung::Hour(_) | Rung::Day(_)) {
            let key = (p.cut_time_ns, p.sequence);
            let slot = best.entry(rung).or_insert(key);
            if key > *slot {
                *slot = key;
            }
        }
    }
    let mut selection = Selection::default();
    for p in points {
        let rung = ladder.rung(p.cut_time_ns);
        let keep = Some(p.sequence) == newest
            || held.contains(&p.sequence)
            || rung == Rung::Recent
            || best.get(&rung) == Some(&(p.cut_time_ns, p.sequence));
        if keep {
            selection.keep.push(p.sequence);
        } else {
            selection.prune.push(p.sequence);
        }
    }
    selection.keep.sort_unstable();
    selection.prune.sort_unstable();
    selection
}

/// What [`Vault::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PruneReport {
    /// Sequences of the points kept, ascending.
    pub kept: Vec<u64>,
    /// Sequences of the points pruned (roots deleted), ascending.
    pub pruned: Vec<u64>,
    /// Sequences kept only because a live lease holds them (being restored).
    pub held: Vec<u64>,
    /// Stale point leases of this disk that were removed.
    pub stale_leases_removed: Vec<String>,
}

impl Vault {
    /// Prunes `disk`'s points under `policy` at `now_ns` (nanoseconds since
    /// the Unix epoch): deletes the roots of the points [`select`] does not
    /// keep. Only roots are deleted; what they alone referenced is left for
    /// [`Vault::gc`]. A point held by a live lease ([`Vault::hold`], e.g. a
    /// restore) is never pruned; a lease that cannot be judged counts as
    /// live. Stale point leases of the disk are removed.
    ///
    /// A restore that takes its hold after prune listed the leases may see
    /// its root deleted under it: it still completes (it read the root
    /// first; GC keeps what a held point needs, see `gc.rs`), but the point
    /// is gone once it is over.
    pub fn prune(&self, disk: &str, policy: &Policy, now_ns: u64) -> Result<PruneReport, VaultError> {
        let points = self.points(disk)?;
        let leases = self.leases(&format!("point/{disk}/"))?;
        let mut held = HashSet::new();
        for l in leases.iter().filter(|l| l.is_live()) {
            if let Purpose::Point { disk: d, sequence } = &l.purpose {
                if d == disk {
                    let _ = held.insert(*sequence);
                }
            }
        }
        // A damaged root is kept for inspection: pruning is not repair.
        held.extend(points.iter().filter(|p| p.damage.is_some()).map(|p| p.sequence));
        let selection = select(&points, now_ns, policy, &HashSet::new());
        let with_holds = select(&points, now_ns, policy, &held);
        let mut report = PruneReport {
            held: with_holds.keep.iter().copied().filter(|s| selection.prune.contains(s)).collect(),
            stale_leases_removed: self.remove_stale(&leases)?,
            ..PruneReport::default()
        };
        for &sequence in &with_holds.prune {
            match self.delete_root(disk, sequence) {
                Ok(()) | Err(VaultError::NotFound { .. }) => report.pruned.push(sequence),
                Err(e) => return Err(e),
            }
        }
        report.kept = with_holds.keep;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::Consistency;

    fn point(sequence: u64, cut_time_ns: u64) -> PointSummary {
        PointSummary {
            sequence,
            damage: None,
            cut_time_ns,
            consistency: Consistency::Crash,
            bytes_shipped: 0,
            disk_size: 0,
            block_size: 0,
            root_name: String::new(),
            chain: String::new(),
            cut_group: None,
            disk_id: [0; 16],
        }
    }

    const H: u64 = 3_600_000_000_000;

    #[test]
    fn defaults_keep_the_recent_hour_and_one_point_per_hour_for_24_hours() {
        // A point every 10 minutes for 3 days, now = 10 minutes after the last.
        let points: Vec<_> = (1..=432u64).map(|s| point(s, 1_000 * H + s * H / 6)).collect();
        let now = 1_000 * H + 433 * H / 6;
        let sel = select(&points, now, &Policy::default(), &HashSet::new());
        let recent: Vec<u64> = points.iter().filter(|p| p.cut_time_ns >= now - H).map(|p| p.sequence).collect();
        assert_eq!(recent.len(), 6);
        let older: Vec<u64> = sel.keep.iter().copied().filter(|s| !recent.contains(s)).collect();
        assert_eq!(older.len(), 24, "24 hourly points beyond the recent hour: {older:?}");
        // Each is the last point of its clock hour, but for the hour the
        // recent window starts in: its newest point that is not recent.
        assert_eq!(*older.last().unwrap(), 426);
        for s in &older[..23] {
            assert_eq!(s % 6, 5, "point {s} is not the newest of its hour");
        }
        assert_eq!(sel.keep.len() + sel.prune.len(), points.len());
    }

    #[test]
    fn daily_rung_keeps_the_newest_point_of_each_day() {
        // A point every hour for 20 days; listed in a shuffled order, so that
        // "the first seen of a day" is not "the newest of a day".
        let mut points: Vec<_> = (1..=24 * 20u64).map(|s| point(s, 48 * H + s * H)).collect();
        let n = points.len();
        for i in 0..n {
            points.swap(i, (i * 7919 + 13) % n);
        }
        let now = 48 * H + 24 * 20 * H + H / 2;
        let policy = Policy { recent: Duration::from_secs(3_600), thin: None, hourly: 24, daily: 15 };
        let sel = select(&points, now, &policy, &HashSet::new());
        // 1 recent + 24 hourly + 15 daily.
        assert_eq!(sel.keep.len(), 1 + 24 + 15, "{:?}", sel.keep);
        // The hourly rung starts at the hour 24 hours before the recent
        // window's: points before it are on the daily rung (or beyond).
        let hourly_start = (now - H) / H * H - 23 * H;
        let day = |s: u64| (48 + s) * H / (24 * H);
        let older: Vec<u64> = points.iter().filter(|p| p.cut_time_ns < hourly_start).map(|p| p.sequence).collect();
        let daily: Vec<u64> = sel.keep.iter().copied().filter(|s| older.contains(s)).collect();
        assert_eq!(daily.len(), 15, "{daily:?}");
        for &s in &daily {
            let newest = older.iter().copied().filter(|&t| day(t) == day(s)).max().unwrap();
            assert_eq!(s, newest, "day {}: kept point {s}, but the newest of that day is {newest}", day(s));
        }
        let mut days: Vec<u64> = daily.iter().map(|&s| day(s)).collect();
        days.dedup();
        assert_eq!(days, (6..=20).collect::<Vec<_>>(), "one point for each of the 15 days before the hourly rung");
    }
}
