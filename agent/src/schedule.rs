//! The cycle scheduler of one disk, or of the disks of one consistency
//! group, which are cut together in one round.
//!
//! - Rounds start every `interval`, measured from the previous round's
//!   *scheduled* start on the monotonic clock (a wall-clock jump moves no
//!   round). A round that runs past the next start delays it, and the next
//!   one starts at once: nothing is skipped, no burst makes up for it, the
//!   RPO just grows, and the scheduler says so ([`Note::Overran`]).
//! - A round that failed for any member leaves that member's changes dirty;
//!   the next attempt comes sooner: 5 s, doubling, never later than the
//!   interval ([`retry_delay`]).
//! - A cancelled cycle (the agent stopping) ends the schedule.
//! - After a committed cycle the member's retention ladder has run (in
//!   [`Cycles::run`]); its garbage is collected at most every `gc_every`,
//!   and after the first collection only when points were pruned
//!   ([`GcCadence`]).
//!
//! The loop runs on an injected [`Clock`] and an injected [`Cycles`], so
//! `tests/simulation.rs` drives this very code through thousands of seeded
//! schedules with missed intervals, overruns, failing members and clock
//! jumps.

use std::time::{Duration, Instant};

use crate::clock::{Clock, Stop};

/// How one member's cycle of a round ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CycleEnd {
    /// A point was committed, and retention pruned `pruned` points.
    Committed {
        /// Points the retention ladder pruned after the commit.
        pruned: usize,
    },
    /// The cycle was cancelled (the agent is stopping).
    Cancelled,
    /// The cycle failed; its changes stay dirty.
    Failed,
}

/// How a garbage collection went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GcEnd {
    /// It ran (its trash is emptied beside the next cycle).
    Collected,
    /// Another disk's cycle holds the vault: collect after a later cycle.
    Busy,
    /// It failed (said in the log); tried again after a later cycle.
    Failed,
}

/// What the scheduler reports, besides what the cycles report themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The next round is planned `at` (wall ns), for the status file.
    Planned {
        /// Wall-clock nanoseconds since the epoch.
        at_ns: u64,
    },
    /// A member failed: the round is tried again after `after`.
    Retrying {
        /// The delay before the next try.
        after: Duration,
    },
    /// The round ended after the next was due: it starts at once.
    Overran {
        /// How late the round started.
        late: Duration,
        /// How long it ran.
        took: Duration,
        /// The interval (the RPO target).
        interval: Duration,
    },
}

/// The cycles a scheduler runs: the real ones ([`crate::runtime`]) or the
/// simulation's.
pub trait Cycles {
    /// How many disks are cut together in each round.
    fn members(&self) -> usize;
    /// Runs one round, every member's cycle, `late` behind schedule; one
    /// end per member, in member order.
    fn run(&self, late: Duration) -> Vec<CycleEnd>;
    /// Collects the garbage of member `member`'s vault.
    fn collect_garbage(&self, member: usize) -> GcEnd;
    /// Hears what the scheduler has to say (the log, the status file).
    fn note(&self, note: Note);
}

/// When the garbage of one member's vault is collected.
#[derive(Debug, Clone)]
pub struct GcCadence {
    every: Duration,
    last: Option<Instant>,
}

impl GcCadence {
    /// At most once per `every`; `Duration::ZERO` never collects.
    pub fn new(every: Duration) -> GcCadence {
        GcCadence { every, last: None }
    }

    /// Whether to collect now, after a commit that pruned `pruned` points:
    /// never if disabled; the first time whatever was pruned (a restarted
    /// agent collects what an earlier one left); later only once `every`
    /// has passed and something was pruned since.
    pub fn due(&self, now: Instant, pruned: usize) -> bool {
        if self.every.is_zero() {
            return false;
        }
        match self.last {
            None => true,
            Some(at) => pruned > 0 && now.saturating_duration_since(at) >= self.every,
        }
    }

    /// Records a collection that ran at `now`.
    pub fn collected(&mut self, now: Instant) {
        self.last = Some(now);
    }
}

/// The delay before retrying after `failures` failed rounds in a row
/// (from 1): 5 s, doubling, at most `interval`.
pub fn retry_delay(failures: u32, interval: Duration) -> Duration {
    Duration::from_secs(5u64 << failures.min(10).saturating_sub(1)).min(interval)
}

/// When the round after one scheduled for `due` starts: an interval later,
/// or `now` if that has passed (the round overran: `true`). Never sooner
/// than scheduled, and an overrun is not made up for with a burst.
pub fn next_due(due: Instant, interval: Duration, now: Instant) -> (Instant, bool) {
    let next = due + interval;
    if next < now {
        (now, true)
    } else {
        (next, false)
    }
}

/// Runs rounds of `cycles` every `interval` until `stop` (or a cancelled
/// cycle). The first round starts at once.
pub fn run(cycles: &dyn Cycles, clock: &dyn Clock, stop: &Stop, interval: Duration, gc_every: Duration) {
    let interval = interval.max(Duration::from_secs(1));
    let mut due = clock.now();
    let mut failures = 0u32;
    let mut gc = vec![GcCadence::new(gc_every); cycles.members()];
    loop {
        let in_ns = u64::try_from(due.saturating_duration_since(clock.now()).as_nanos()).unwrap_or(u64::MAX);
        cycles.note(Note::Planned { at_ns: clock.wall_ns().saturating_add(in_ns) });
        if clock.wait_until(due, stop) {
            return;
        }
        let start = clock.now();
        let late = start.saturating_duration_since(due);
        let ends = cycles.run(late);
        let mut failed = false;
        for (member, end) in ends.into_iter().enumerate() {
            match end {
                CycleEnd::Committed { pruned } => {
                    let Some(cadence) = gc.get_mut(member) else { continue };
                    if cadence.due(clock.now(), pruned) && cycles.collect_garbage(member) == GcEnd::Collected {
                        cadence.collected(clock.now());
                    }
                }
                CycleEnd::Cancelled => return,
                CycleEnd::Failed => failed = true,
            }
        }
        if failed {
            failures = failures.saturating_add(1);
            let after = retry_delay(failures, interval);
            cycles.note(Note::Retrying { after });
            due = clock.now() + after;
            continue;
        }
        failures = 0;
        let overran;
        (due, overran) = next_due(due, interval, clock.now());
        if overran {
            cycles.note(Note::Overran { late, took: clock.now().saturating_duration_since(start), interval });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_keep_their_schedule_and_an_overrun_delays_the_next() {
        let t0 = Instant::now();
        let i = Duration::from_secs(30);
        // On time: the next is an interval after the scheduled start, even if
        // this one started late or took a while.
        assert_eq!(next_due(t0, i, t0 + Duration::from_secs(12)), (t0 + i, false));
        // Overran: the next starts at once, without a burst to catch up.
        let now = t0 + Duration::from_secs(95);
        assert_eq!(next_due(t0, i, now), (now, true));
        assert_eq!(next_due(now, i, now + Duration::from_secs(1)), (now + i, false));
    }

    #[test]
    fn retries_back_off_from_five_seconds_up_to_the_interval() {
        let i = Duration::from_secs(60);
        let delays: Vec<u64> = (1..=6).map(|f| retry_delay(f, i).as_secs()).collect();
        assert_eq!(delays, [5, 10, 20, 40, 60, 60]);
        assert_eq!(retry_delay(u32::MAX, Duration::from_secs(86_400)).as_secs(), 5 << 9, "no overflow");
        assert_eq!(retry_delay(1, Duration::from_secs(2)).as_secs(), 2, "never later than the interval");
    }

    #[test]
    fn garbage_is_collected_first_then_only_after_pruning_and_at_most_every_period() {
        let t0 = Instant::now();
        let h = Duration::from_secs(3600);
        let mut c = GcCadence::new(h);
        assert!(c.due(t0, 0), "the first commit collects what an earlier run left");
        c.collected(t0);
        assert!(!c.due(t0 + h, 0), "nothing pruned since: nothing to collect");
        assert!(!c.due(t0 + h / 2, 3), "pruned, but the last collection is recent");
        assert!(c.due(t0 + h, 3));
        assert!(!GcCadence::new(Duration::ZERO).due(t0, 10), "0 = never");
    }
}
