//! A deterministic simulation of the agent's scheduler, group rounds and
//! retention cadence (issue 13: "The seeded simulation drives the
//! scheduler, group rounds and retention cadence: a missed interval, an
//! overrun, a failing disk in a group, and a clock jump").
//!
//! The real `agent::schedule::run` loop runs on a fake clock and fake
//! cycles. Each seed draws a schedule: an interval, 1 to 4 disks cut
//! together, a garbage-collection period, and per round these faults:
//!
//! - **missed interval**: the scheduler wakes late (a busy or stalled
//!   host), by up to three intervals;
//! - **overrun**: a round runs longer than the interval (up to four);
//! - **failing disk in a group**: a member's cycle fails before the cut and
//!   never arrives at the round's meeting, or arrives later than the others
//!   wait ([`agent::round::Meeting`] decides, with the real state machine),
//!   or fails after its cut;
//! - **clock jump**: the wall clock steps by up to ±a day mid-round (NTP);
//! - garbage collection finding the vault busy, or failing;
//! - a stop mid-schedule, seen by a cycle as a cancel.
//!
//! After every step the model checks: a round never starts before it is
//! due, and starts exactly as late as the missed wake-up made it; after a
//! committed round the next is an interval after the last scheduled start,
//! or at once (with an overrun note) when that has passed, never a burst;
//! after a failure the retry comes 5 s later, doubling, never later than the
//! interval, and the count resets on success; a cancel ends the schedule; a
//! round is grouped for all of its members or for none, and only when every
//! member met in time; garbage is collected only after a commit, never when
//! disabled, first at once and then at most once per period and only after
//! pruning. And the wall clock moves nothing: every seed run again without
//! its jumps starts its rounds at the same monotonic instants.
//!
//! - `LIFEBOAT_SIM_SEEDS=N` runs N seeds (default 2000), from
//!   `LIFEBOAT_SIM_FIRST` (default 0);
//! - `LIFEBOAT_SIM_SEED=S` replays seed S alone, printing every step.

// Draws are small numbers: casting them cannot truncate.
#![allow(clippy::cast_possible_truncation)]

use std::sync::Mutex;
use std::time::{Duration, Instant};

use agent::round::{Gate, Meeting, Phase};
use agent::schedule::{retry_delay, CycleEnd, Cycles, GcEnd, Note};
use agent::{Clock, Stop};

/// splitmix64: small, seedable, good enough to draw schedules.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    fn secs(&mut self, max: u64) -> Duration {
        Duration::from_millis(self.below(max * 1000 + 1))
    }
}

/// The fake clock: monotonic time moves only when the simulation says so.
struct SimClock {
    base: Instant,
    state: Mutex<ClockState>,
}

struct ClockState {
    mono: Duration,
    /// Wall time minus monotonic time, ns (a jump changes it).
    wall_offset: i128,
    /// How late the next wake-up is (a missed interval).
    oversleep: Duration,
    /// Wake-ups left before the schedule is stopped.
    wakes_left: u32,
}

impl SimClock {
    fn advance(&self, d: Duration) {
        self.state.lock().unwrap().mono += d;
    }
    fn jump_wall(&self, ns: i128) {
        self.state.lock().unwrap().wall_offset += ns;
    }
}

impl Clock for SimClock {
    fn now(&self) -> Instant {
        self.base + self.state.lock().unwrap().mono
    }
    fn wall_ns(&self) -> u64 {
        let s = self.state.lock().unwrap();
        u64::try_from((s.mono.as_nanos() as i128 + s.wall_offset).max(0)).unwrap()
    }
    fn wait_until(&self, deadline: Instant, stop: &Stop) -> bool {
        let mut s = self.state.lock().unwrap();
        if s.wakes_left == 0 {
            stop.set();
        }
        if stop.is_set() {
            return true;
        }
        s.wakes_left -= 1;
        let target = deadline.saturating_duration_since(self.base).max(s.mono) + s.oversleep;
        s.mono = target;
        false
    }
}

/// What one seed draws once.
#[derive(Debug, Clone)]
struct Plan {
    interval: Duration,
    members: usize,
    gc_every: Duration,
    round_timeout: Duration,
    /// Percent chances of the faults, per round (or per member).
    missed: u64,
    overrun: u64,
    fail_early: u64,
    fail_late: u64,
    straggle: u64,
    jump: u64,
    gc_busy: u64,
    cancel: u64,
    rounds: u32,
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let interval = Duration::from_secs([1, 5, 30, 60, 300, 900][rng.below(6) as usize]);
        Plan {
            interval,
            members: 1 + rng.below(4) as usize,
            gc_every: [Duration::ZERO, Duration::from_secs(60), Duration::from_secs(3600)][rng.below(3) as usize],
            round_timeout: Duration::from_secs(10),
            missed: rng.below(30),
            overrun: rng.below(40),
            fail_early: rng.below(25),
            fail_late: rng.below(15),
            straggle: rng.below(20),
            jump: rng.below(30),
            gc_busy: rng.below(40),
            cancel: rng.below(3),
            rounds: 5 + rng.below(60) as u32,
        }
    }
}

/// A round as the model saw it.
#[derive(Debug, Clone, PartialEq)]
struct Round {
    start: Duration,
    end: Duration,
    ends: Vec<CycleEnd>,
    grouped: bool,
}

/// The model's record and expectations, checked as the loop runs.
struct Model {
    rng: Rng,
    plan: Plan,
    jumps: bool,
    verbose: bool,
    /// The monotonic instant the scheduler said the next round is due.
    due: Option<Duration>,
    /// The oversleep the clock applied to the wait for it.
    oversleep: Duration,
    rounds: Vec<Round>,
    failures_in_a_row: u32,
    /// The last round's outcome, checked at the next `Planned`.
    expect: Option<Expect>,
    /// Per member: when garbage was last collected, and GC calls seen.
    last_gc: Vec<Option<Duration>>,
    gc_pending: Vec<Option<usize>>,
    cancelled: bool,
    notes: Vec<Note>,
    /// Committed rounds that ended after the next was due.
    overruns: usize,
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// After a committed round: the next due.
    Next { due: Duration, overran: bool },
    /// After a failed one: a retry this much after the round's end.
    Retry { at: Duration, after: Duration },
}

struct Sim<'a> {
    clock: &'a SimClock,
    stop: &'a Stop,
    model: Mutex<Model>,
}

fn mono(clock: &SimClock) -> Duration {
    clock.now().duration_since(clock.base)
}

impl Sim<'_> {
    /// The members' meeting at the cut: who arrives when, decided by the
    /// real state machine. Returns whether the round was grouped, and per
    /// member whether it failed before the cut.
    fn meet(&self, m: &mut Model) -> (bool, Vec<bool>) {
        let n = m.plan.members;
        let early: Vec<bool> = (0..n).map(|_| m.rng.chance(m.plan.fail_early)).collect();
        if n == 1 {
            return (false, early);
        }
        // Arrival times within the round; a straggler comes later than the others wait.
        let arrivals: Vec<Option<Duration>> = early
            .iter()
            .map(|&failed| {
                (!failed).then(|| {
                    if m.rng.chance(m.plan.straggle) {
                        m.plan.round_timeout + m.rng.secs(20)
                    } else {
                        m.rng.secs(5)
                    }
                })
            })
            .collect();
        let mut meeting = Meeting::new(n);
        // Events in time order: arrivals, and each arrived member's deadline.
        let mut events: Vec<(Duration, usize, bool)> = Vec::new(); // (time, member, is_deadline)
        for (i, a) in arrivals.iter().enumerate() {
            if let Some(a) = a {
                events.push((*a, i, false));
                events.push((*a + m.plan.round_timeout, i, true));
            }
        }
        events.sort_by_key(|&(t, i, deadline)| (t, deadline, i));
        let mut waiting = vec![false; n];
        let mut passed = vec![None; n];
        for (_, i, deadline) in events {
            if deadline {
                if waiting[i] {
                    match meeting.gate(Phase::Arrived) {
                        Gate::Open => passed[i] = Some(true),
                        Gate::Broken => passed[i] = Some(false),
                        Gate::Wait => {
                            meeting.give_up();
                            passed[i] = Some(false);
                        }
                    }
                    waiting[i] = false;
                }
            } else {
                match meeting.arrive(Phase::Arrived) {
                    Gate::Wait => waiting[i] = true,
                    Gate::Open => passed[i] = Some(true),
                    Gate::Broken => passed[i] = Some(false),
                }
            }
        }
        // Everyone still waiting when the last one arrived sees it open.
        for i in 0..n {
            if waiting[i] {
                passed[i] = Some(meeting.gate(Phase::Arrived) == Gate::Open);
            }
        }
        let came: Vec<bool> = passed.iter().filter_map(|p| *p).collect();
        let grouped = !came.is_empty() && came.iter().all(|&p| p);
        assert!(
            came.iter().all(|&p| p == grouped),
            "a round is grouped for all of its members or for none: {passed:?} (arrivals {arrivals:?})"
        );
        let first = arrivals.iter().flatten().min().copied();
        let last = arrivals.iter().flatten().max().copied();
        let in_time = early.iter().all(|f| !f)
            && match (first, last) {
                (Some(f), Some(l)) => l <= f + m.plan.round_timeout,
                _ => false,
            };
        assert_eq!(grouped, in_time, "grouped only when every member met in time: arrivals {arrivals:?}");
        (grouped, early)
    }
}

impl Cycles for Sim<'_> {
    fn members(&self) -> usize {
        self.model.lock().unwrap().plan.members
    }

    fn run(&self, late: Duration) -> Vec<CycleEnd> {
        let mut guard = self.model.lock().unwrap();
        let m = &mut *guard;
        assert!(!m.cancelled, "no round after a cancelled cycle");
        let start = mono(self.clock);
        let due = m.due.expect("a round runs only after it was planned");
        assert!(start >= due, "round started at {start:?}, before it was due at {due:?}");
        assert_eq!(start - due, m.oversleep, "a round starts exactly as late as the wake-up was");
        assert_eq!(late, start - due, "the cycle is told how late it starts");
        let (grouped, early) = self.meet(m);
        let interval = m.plan.interval;
        let took = if m.rng.chance(m.plan.overrun) {
            interval + m.rng.secs(3 * interval.as_secs())
        } else {
            m.rng.secs(interval.as_secs()) / 2
        };
        // Both runs of a seed draw the same numbers; only one applies them.
        if m.rng.chance(m.plan.jump) {
            let ns = i128::from(m.rng.below(2 * 86_400)) * 1_000_000_000 - 86_400 * 1_000_000_000;
            if m.jumps {
                self.clock.jump_wall(ns);
            }
        }
        self.clock.advance(took);
        let cancel = m.rng.chance(m.plan.cancel);
        if cancel {
            self.stop.set();
        }
        let mut ends = Vec::new();
        for failed_early in early {
            let late_failure = m.rng.chance(m.plan.fail_late);
            let pruned = m.rng.below(3) as usize;
            ends.push(if cancel {
                CycleEnd::Cancelled
            } else if failed_early || late_failure {
                CycleEnd::Failed
            } else {
                CycleEnd::Committed { pruned }
            });
        }
        let end = mono(self.clock);
        let failed = ends.contains(&CycleEnd::Failed);
        m.cancelled = cancel;
        m.expect = if cancel {
            None
        } else if failed {
            m.failures_in_a_row += 1;
            let after = retry_delay(m.failures_in_a_row, interval);
            assert!(after <= interval && after >= Duration::from_secs(1).min(interval));
            Some(Expect::Retry { at: end + after, after })
        } else {
            m.failures_in_a_row = 0;
            let next = due + interval;
            if next < end {
                m.overruns += 1;
                Some(Expect::Next { due: end, overran: true })
            } else {
                Some(Expect::Next { due: next, overran: false })
            }
        };
        m.gc_pending =
            ends.iter().map(|e| if let CycleEnd::Committed { pruned } = e { Some(*pruned) } else { None }).collect();
        if m.verbose {
            eprintln!("round at {start:?} (late {late:?}) took {took:?}: {ends:?}, grouped {grouped}");
        }
        m.rounds.push(Round { start, end, ends: ends.clone(), grouped });
        ends
    }

    fn collect_garbage(&self, member: usize) -> GcEnd {
        let mut guard = self.model.lock().unwrap();
        let m = &mut *guard;
        let now = mono(self.clock);
        let pruned = m.gc_pending.get(member).copied().flatten().expect("garbage is collected only after a commit");
        assert!(!m.plan.gc_every.is_zero(), "gc_every 0 never collects");
        if let Some(last) = m.last_gc[member] {
            assert!(pruned > 0, "after the first collection, only when points were pruned");
            assert!(
                now - last >= m.plan.gc_every,
                "collected {:?} after the last, period {:?}",
                now - last,
                m.plan.gc_every
            );
        }
        m.gc_pending[member] = None;
        if m.rng.chance(m.plan.gc_busy) {
            if m.rng.chance(50) {
                GcEnd::Busy
            } else {
                GcEnd::Failed
            }
        } else {
            m.last_gc[member] = Some(now);
            GcEnd::Collected
        }
    }

    fn note(&self, note: Note) {
        let mut guard = self.model.lock().unwrap();
        let m = &mut *guard;
        let now = mono(self.clock);
        match &note {
            Note::Planned { at_ns } => {
                let wall = i128::from(self.clock.wall_ns());
                let due =
                    now + Duration::from_nanos(u64::try_from(i128::from(*at_ns) - wall).expect("planned in the past"));
                match m.expect.take() {
                    None => assert_eq!(due, now, "the first round starts at once"),
                    Some(Expect::Next { due: want, .. }) => assert_eq!(due, want, "next round after a commit"),
                    Some(Expect::Retry { at, .. }) => assert_eq!(due, at, "retry after a failure"),
                }
                // Gc candidates that were not collected must not have been due.
                for (i, p) in m.gc_pending.clone().into_iter().enumerate() {
                    if let Some(pruned) = p {
                        let due_gc = !m.plan.gc_every.is_zero()
                            && match m.last_gc[i] {
                                None => true,
                                Some(last) => pruned > 0 && now - last >= m.plan.gc_every,
                            };
                        assert!(!due_gc, "member {i} was due for garbage collection and was not collected");
                    }
                }
                m.gc_pending.clear();
                m.due = Some(due);
                let oversleep = if m.rng.chance(m.plan.missed) {
                    m.rng.secs(3 * m.plan.interval.as_secs())
                } else {
                    Duration::ZERO
                };
                m.oversleep = oversleep;
                self.clock.state.lock().unwrap().oversleep = oversleep;
            }
            Note::Retrying { after } => match m.expect {
                Some(Expect::Retry { after: want, .. }) => assert_eq!(*after, want),
                other => panic!("a retry note after {other:?}"),
            },
            Note::Overran { interval, .. } => {
                assert_eq!(*interval, m.plan.interval);
                assert!(
                    matches!(m.expect, Some(Expect::Next { overran: true, .. })),
                    "overran note without an overrun"
                );
            }
        }
        m.notes.push(note);
    }
}

/// Runs seed `seed`; with `jumps`, its wall-clock jumps happen. Returns the rounds.
fn run_seed(seed: u64, jumps: bool, verbose: bool) -> Vec<Round> {
    let mut rng = Rng(seed);
    let plan = Plan::draw(&mut rng);
    if verbose {
        eprintln!("seed {seed}: {plan:?}");
    }
    let clock = SimClock {
        base: Instant::now(),
        state: Mutex::new(ClockState {
            mono: Duration::ZERO,
            wall_offset: 1_800_000_000 * 1_000_000_000,
            oversleep: Duration::ZERO,
            wakes_left: plan.rounds,
        }),
    };
    let stop = Stop::new();
    let members = plan.members;
    let sim = Sim {
        clock: &clock,
        stop: &stop,
        model: Mutex::new(Model {
            rng,
            plan: plan.clone(),
            jumps,
            verbose,
            due: None,
            oversleep: Duration::ZERO,
            rounds: Vec::new(),
            failures_in_a_row: 0,
            expect: None,
            last_gc: vec![None; members],
            gc_pending: Vec::new(),
            cancelled: false,
            notes: Vec::new(),
            overruns: 0,
        }),
    };
    agent::schedule::run(&sim, &clock, &stop, plan.interval, plan.gc_every);
    let m = sim.model.into_inner().unwrap();
    // One overrun note for each committed round that ended after the next was due.
    let overruns = m.notes.iter().filter(|n| matches!(n, Note::Overran { .. })).count();
    assert_eq!(overruns, m.overruns, "overrun notes");
    if m.cancelled {
        assert!(m.rounds.last().unwrap().ends.iter().all(|e| *e == CycleEnd::Cancelled));
    } else {
        assert_eq!(m.rounds.len() as u32, plan.rounds, "one round per wake-up until the stop");
    }
    m.rounds
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

#[test]
fn seeded_schedules_keep_time_back_off_group_and_collect_as_specified() {
    if let Some(seed) = env_u64("LIFEBOAT_SIM_SEED") {
        run_seed(seed, true, true);
        return;
    }
    let first = env_u64("LIFEBOAT_SIM_FIRST").unwrap_or(0);
    let count = env_u64("LIFEBOAT_SIM_SEEDS").unwrap_or(2000);
    let (mut rounds, mut grouped, mut broken, mut failed) = (0usize, 0usize, 0usize, 0usize);
    for seed in first..first + count {
        let with = std::panic::catch_unwind(|| run_seed(seed, true, false))
            .unwrap_or_else(|_| panic!("seed {seed} failed: replay with LIFEBOAT_SIM_SEED={seed}"));
        let without = run_seed(seed, false, false);
        let starts = |r: &[Round]| r.iter().map(|r| r.start).collect::<Vec<_>>();
        assert_eq!(starts(&with), starts(&without), "seed {seed}: a wall-clock jump moved a round");
        rounds += with.len();
        grouped += with.iter().filter(|r| r.grouped).count();
        broken += with.iter().filter(|r| r.ends.len() > 1 && !r.grouped).count();
        failed += with.iter().filter(|r| r.ends.contains(&CycleEnd::Failed)).count();
    }
    eprintln!(
        "{count} schedules, {rounds} rounds: {grouped} grouped, {broken} group rounds broken, {failed} with a failure"
    );
    // The faults happened: a simulation that never breaks a group proves nothing.
    assert!(count < 100 || (grouped > 0 && broken > 0 && failed > 0));
}
