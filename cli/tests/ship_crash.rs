//! A replication cycle killed at random moments loses nothing and leaves no
//! partial point (issue 3, "How it is proved": faults with real SIGKILL;
//! DESIGN.md invariants 1, 4 and 7).
//!
//! A 128 MiB disk of random data is served by the real filter. The test
//! measures an uninterrupted cycle, then starts `lifeboat ship --once` again
//! and again and SIGKILLs it after a delay drawn across that duration: six
//! times during the initial full sync (a full sync that beats its kill is
//! followed by a fresh vault, so the next attempt is a full sync again), ten
//! times across incremental cycles of 16 MiB, and six times after the cycle's
//! last read (sealing, pack, page and root writes, releasing the cut). A
//! cycle that beats its kill re-measures the duration and its kill is tried
//! again earlier, so all 22 kills land on running cycles however loaded the
//! machine is.
//! Between attempts it writes random blocks through the filter (libnbd).
//! After every attempt:
//!
//! * `lifeboat points` lists ids 1..=N with no gap, N grew by at most one
//!   (by exactly one if the cycle completed), and a new point restores to
//!   exactly the disk at the attempt that made it (nothing is written during
//!   an attempt, so that is known);
//! * `vault check` (without the key) finds nothing wrong: a killed cycle
//!   leaves at most unreferenced packs, never a damaged object;
//! * `lifeboat dirty` still holds every block written since the newest
//!   point's cut (the filter aborted the dead shipper's cut when its control
//!   connection dropped), no block never written, and the state is not suspect.
//!
//! Then the filter itself is SIGKILLed mid-cycle three times: the cycle exits
//! 1 with a message naming the disk (or, if the filter died before the cycle
//! reached it, completes offline), the same checks hold, the restarted
//! filter's next cycle completes and its point is byte for byte
//! `lifeboat snapshot`'s copy. Last, `vault check --read-data` with the key
//! verifies every root and block, and the oldest points restore again.
//!
//! The seed is fixed; every attempt prints its delay, outcome and timeline,
//! so a failure shows the schedule that produced it.

// Test code for 64-bit hosts: offsets and sizes fit usize.
#![allow(clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use vm_tests::clients::nbd_uri;
use vm_tests::lifeboat::{Filter, Scratch};
use vm_tests::process::wait_for;
use vm_tests::replicate::{arg, fingerprint, first_difference, nbd_write, ShipReport};
use vm_tests::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
const NAME: &str = "crashy";
const BS: u64 = 64 * KIB;
const SIZE: u64 = 128 * MIB;
const BLOCKS: u64 = SIZE / BS;
const SEED: u64 = 0x5417_c7a5;

/// What a kill's delay counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// The cycle's start.
    Start,
    /// The progress line saying every block was read (sealing, pack, page
    /// and root writes, and releasing the cut follow).
    ReadsDone,
}

/// When an attempt read its last block and exited, from its start.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    reads_done: Option<Duration>,
    exited: Option<Duration>,
}

/// How an attempt ended.
#[derive(Debug)]
enum Outcome {
    /// The cycle finished before the kill.
    Completed(ShipReport),
    /// SIGKILL ended it.
    Killed,
    /// It exited with an error (only expected when the filter was killed).
    Failed(String),
}

struct Run {
    s: Scratch,
    rng: Rng,
    sock: PathBuf,
    filter: Filter,
    /// The disk as the filter serves it.
    model: Vec<u8>,
    /// Fingerprint of the disk each point was cut from, by point id.
    expected: BTreeMap<u64, u64>,
    /// Blocks written since the newest point's cut.
    pending: BTreeSet<u64>,
    /// Blocks written since the disk was protected.
    written: BTreeSet<u64>,
    /// Points listed at the last check.
    points: u64,
    /// The vault the disk replicates to, a directory of the scratch directory.
    vault: String,
    attempt: usize,
}

impl Run {
    fn say(&self, line: &str) {
        eprintln!("[seed {SEED:#x}] attempt {}: {line}", self.attempt);
    }

    /// Writes `n` distinct random blocks (one in 16 all zero) through the filter.
    fn write_blocks(&mut self, n: usize) {
        let mut picked = BTreeSet::new();
        while picked.len() < n {
            picked.insert(self.rng.below(BLOCKS));
        }
        let data: Vec<(u64, Vec<u8>)> = picked
            .iter()
            .map(|&b| {
                let bytes = if self.rng.below(16) == 0 { vec![0; BS as usize] } else { self.rng.bytes(BS as usize) };
                (b, bytes)
            })
            .collect();
        let writes: Vec<(u64, &[u8])> = data.iter().map(|(b, d)| (b * BS, d.as_slice())).collect();
        nbd_write(self.s.dir(), &nbd_uri(NAME, &self.sock), &writes);
        for (b, d) in &data {
            self.model[(b * BS) as usize..((b + 1) * BS) as usize].copy_from_slice(d);
        }
        self.pending.extend(&picked);
        self.written.extend(&picked);
    }

    /// Starts a cycle and SIGKILLs it — or the filter, if `kill_filter` —
    /// `delay` after `from`, unless the cycle finished first. Returns the
    /// outcome, the fingerprint of the disk during the attempt, and how long
    /// after its start the cycle printed that it had read every block (and
    /// exited, if it did).
    fn attempt(&mut self, from: From, delay: Duration, kill_filter: bool) -> (Outcome, u64, Timeline) {
        self.attempt += 1;
        let fp = fingerprint(&self.model);
        let mut child = self.s.home.spawn_ship(NAME);
        let started = Instant::now();
        let (tx, rx) = mpsc::channel::<(Instant, String)>();
        let pipe = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut all = String::new();
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                all.push_str(&line);
                all.push('\n');
                let _ = tx.send((Instant::now(), line));
            }
            all
        });
        let mut timeline = Timeline { reads_done: None, exited: None };
        let mut kill_at = match from {
            From::Start => Some(started + delay),
            From::ReadsDone => None,
        };
        let mut killed = false;
        loop {
            while let Ok((at, line)) = rx.try_recv() {
                if timeline.reads_done.is_none() && line.contains("(100%)") {
                    timeline.reads_done = Some(at - started);
                    if from == From::ReadsDone {
                        kill_at = Some(at + delay);
                    }
                }
            }
            if child.try_wait().unwrap().is_some() {
                timeline.exited = Some(started.elapsed());
                break;
            }
            if kill_at.is_some_and(|t| Instant::now() >= t) {
                if kill_filter {
                    self.filter.signal(libc::SIGKILL);
                    let status = self.filter.wait(Duration::from_secs(10));
                    assert_eq!(status.signal(), Some(libc::SIGKILL), "the filter did not die of SIGKILL: {status}");
                } else {
                    child.kill().unwrap();
                }
                killed = true;
                break;
            }
            assert!(started.elapsed() < Duration::from_secs(120), "seed {SEED:#x}: the cycle ran for 120 s");
            thread::sleep(Duration::from_micros(300));
        }
        let status = wait_for(&mut child, Duration::from_secs(120), "lifeboat ship");
        if status.success() && timeline.exited.is_none() {
            // It exited between the last `try_wait` and the kill (a signal to
            // a process that has exited and not been reaped does nothing): it
            // beat the kill, and its exit time is at most now.
            timeline.exited = Some(started.elapsed());
        }
        let out = child.wait_with_output().unwrap();
        let err = stderr.join().unwrap();
        let outcome = if status.success() {
            Outcome::Completed(ShipReport::parse(&out.stdout))
        } else if status.signal() == Some(libc::SIGKILL) && killed && !kill_filter {
            Outcome::Killed
        } else {
            Outcome::Failed(format!("{status}: {err}"))
        };
        let brief = match &outcome {
            Outcome::Completed(r) => format!("completed point {} (full {})", r.sequence, r.full),
            other => format!("{other:?}"),
        };
        let victim = if kill_filter { "filter" } else { "ship" };
        self.say(&format!("{victim} SIGKILL {delay:?} after {from:?}: {brief}; {timeline:?}"));
        (outcome, fp, timeline)
    }

    /// The checks every attempt must pass (see the module documentation).
    fn check(&mut self, outcome: &Outcome, fp: u64) {
        let ctx = format!("seed {SEED:#x}, attempt {}", self.attempt);
        let points = self.s.home.points(NAME);
        let ids: Vec<u64> = points.iter().map(|p| p.id).collect();
        let n = ids.len() as u64;
        assert_eq!(ids, (1..=n).collect::<Vec<_>>(), "{ctx}: point ids have a gap: {ids:?}");
        assert!(
            n == self.points || n == self.points + 1,
            "{ctx}: {} points before the attempt, {n} after",
            self.points
        );
        if let Outcome::Completed(r) = outcome {
            assert_eq!((n, r.sequence), (self.points + 1, self.points + 1), "{ctx}: a completed cycle added no point");
        }
        assert!(points.iter().all(|p| p.consistency == "crash-consistent" && p.disk_size == SIZE), "{ctx}: {points:?}");
        let new_point = n == self.points + 1;
        if new_point {
            let _ = self.expected.insert(n, fp);
            self.pending.clear();
        }
        self.points = n;

        // A new point restores to the disk at its cut. (Older points are
        // restored at the end; meanwhile `vault check` below hashes every
        // pack and page they use.)
        if new_point {
            let out = self.s.path("latest.img");
            let restored = self.s.home.restore(NAME, "latest", &out);
            if fingerprint(&restored) != self.expected[&n] {
                panic!(
                    "{ctx}: point {n} does not restore to the disk at its cut; against the disk now, the first \
                     differing block is {:?}",
                    first_difference(&restored, &self.model, BS)
                );
            }
            fs::remove_file(out).unwrap();
        }

        let check = self.s.home.run_env(&[], &["vault", "check", arg(&self.s.path(&self.vault))]);
        assert!(
            check.status.success(),
            "{ctx}: `vault check` after the attempt:\n{}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );

        let dirty = self.s.home.dirty(NAME);
        assert!(!dirty.suspect, "{ctx}: a killed process (not a host crash) left the state suspect");
        let lost: Vec<u64> = self.pending.difference(&dirty.dirty_blocks).copied().collect();
        assert!(
            lost.is_empty(),
            "{ctx}: {} blocks written since point {n}'s cut are no longer dirty (first: {:?})",
            lost.len(),
            &lost[..lost.len().min(10)]
        );
        let extra: Vec<u64> = dirty.dirty_blocks.difference(&self.written).copied().collect();
        assert!(extra.is_empty(), "{ctx}: blocks never written are dirty: {:?}", &extra[..extra.len().min(10)]);
    }

    /// A cycle that must complete; returns its timeline.
    fn ship_uninterrupted(&mut self) -> Timeline {
        let (outcome, fp, timeline) = self.attempt(From::Start, Duration::from_secs(3600), false);
        assert!(matches!(outcome, Outcome::Completed(_)), "seed {SEED:#x}: an uninterrupted cycle: {outcome:?}");
        self.check(&outcome, fp);
        timeline
    }

    /// `lifeboat snapshot` now, with no writer, must equal the model, and so
    /// must the latest point.
    fn latest_is_the_snapshot(&self) {
        let snap = self.s.home.snapshot(NAME, &self.s.path("snap.img"));
        assert!(
            snap == self.model,
            "the snapshot differs from the disk at block {:?}",
            first_difference(&snap, &self.model, BS)
        );
        let restored = self.s.home.restore(NAME, "latest", &self.s.path("latest.img"));
        assert!(
            restored == snap,
            "seed {SEED:#x}: the latest point differs from the snapshot at block {:?}",
            first_difference(&restored, &snap, BS)
        );
    }
}

/// `n` delays spread over `0..span`: one drawn at random in each of `n`
/// equal slices, shuffled.
fn delays(rng: &mut Rng, span: Duration, n: usize) -> Vec<Duration> {
    let mut v: Vec<Duration> =
        (0..n).map(|i| span.mul_f64((i as f64 + rng.below(1000) as f64 / 1000.0) / n as f64)).collect();
    for i in (1..v.len()).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

/// A 128 MiB disk of seeded random data, protected with a vault and served
/// by the filter.
fn setup(prefix: &str) -> Run {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), prefix);
    let mut rng = Rng::new(SEED);
    let model = rng.bytes(SIZE as usize);
    let image = s.path("disk.img");
    fs::write(&image, &model).unwrap();
    let key = s.path("k.key");
    s.home.key_new(&key);
    s.home.vault_init(&s.path("vault"), &key);
    s.home.protect_replicated(NAME, &image, BS, &s.path("vault"), &key);
    let sock = s.path("c.sock");
    let filter = s.home.filter(NAME, &sock);
    Run {
        s,
        rng,
        sock,
        filter,
        model,
        expected: BTreeMap::new(),
        pending: BTreeSet::new(),
        written: BTreeSet::new(),
        points: 0,
        vault: "vault".into(),
        attempt: 0,
    }
}

impl Run {
    /// Points the disk at vault `dir` of the scratch directory (created with
    /// the key if missing): its next cycle is a full sync, the first point.
    fn use_vault(&mut self, dir: &str) {
        let s = &self.s;
        if !s.path(dir).exists() {
            s.home.vault_init(&s.path(dir), &s.path("k.key"));
        }
        s.home.protect_replicated(NAME, &s.path("disk.img"), BS, &s.path(dir), &s.path("k.key"));
        self.vault = dir.to_string();
        self.points = 0;
        self.expected.clear();
    }
}

/// Kills counted across the phases of the test.
#[derive(Default)]
struct Kills {
    /// Cycles SIGKILLed while still running.
    killed: usize,
    /// Of those, the ones whose root had already been written.
    committed: usize,
}

/// Runs cycles and SIGKILLs `n` of them `from` a moment, `writes` random
/// blocks written before each. The delays are fractions, one drawn in each
/// of `n` equal slices of (0, 1), of `span`: how long the cycle takes from
/// that moment to its exit. The first estimate comes from an uninterrupted
/// cycle, but cycles get faster or slower with the machine's load (CI runs
/// other tests beside this one), so a cycle that completes before its kill
/// becomes the new estimate and its slice is tried again at three quarters of
/// its fraction. Without that, a calibration cycle slower than the rest leaves
/// most kills landing after the exit. With `fresh_after_point`, a cycle that
/// made a point is followed by a fresh vault (so the next is a full sync
/// again).
fn kill_cycles(
    run: &mut Run,
    from: From,
    mut span: Duration,
    n: usize,
    writes: usize,
    fresh_after_point: bool,
    kills: &mut Kills,
) {
    let mut fractions: Vec<f64> =
        delays(&mut run.rng, Duration::from_secs(1), n).iter().map(Duration::as_secs_f64).collect();
    let mut tries = 0;
    while let Some(f) = fractions.pop() {
        tries += 1;
        assert!(
            tries <= 4 * n,
            "seed {SEED:#x}: {tries} attempts to kill {n} cycles after {from:?}: every cycle beat its kill"
        );
        run.write_blocks(writes);
        let before = run.points;
        let (outcome, fp, t) = run.attempt(from, span.mul_f64(f), false);
        assert!(!matches!(outcome, Outcome::Failed(_)), "seed {SEED:#x}: {outcome:?}");
        run.check(&outcome, fp);
        match outcome {
            Outcome::Killed => {
                kills.killed += 1;
                kills.committed += usize::from(run.points > before);
            }
            Outcome::Completed(_) => {
                let exited = t.exited.expect("a completed attempt has an exit time");
                span = match from {
                    From::Start => exited,
                    From::ReadsDone => exited.saturating_sub(t.reads_done.unwrap_or_default()),
                };
                fractions.push(f * 0.75);
            }
            Outcome::Failed(_) => unreachable!(),
        }
        if fresh_after_point && run.points > 0 {
            let fresh = format!("vault-{}", run.attempt);
            run.use_vault(&fresh);
        }
    }
}

#[test]
fn sigkill_of_the_shipper_or_the_filter_mid_cycle_loses_nothing() {
    let mut run = setup("lb-shipkill-");
    // An uninterrupted full sync, to a vault of its own, measures the cycle.
    run.use_vault("calibration");
    let t = Instant::now();
    let r = run.s.home.ship(NAME);
    let full_sync = t.elapsed();
    assert!(r.full, "{r:?}");
    run.use_vault("vault");
    run.say(&format!("an uninterrupted full sync of {} MiB took {full_sync:?}", SIZE / MIB));
    let mut kills = Kills::default();

    // The initial full sync, killed six times, each time on a fresh vault
    // if the previous attempt made a point.
    kill_cycles(&mut run, From::Start, full_sync, 6, 16, true, &mut kills);
    run.ship_uninterrupted();

    // Incremental cycles of 256 changed blocks (16 MiB): killed anywhere in
    // the cycle, then anywhere after its last read (sealing, pack, page and
    // root writes, releasing the cut).
    run.write_blocks(256);
    let t = run.ship_uninterrupted();
    let (Some(reads_done), Some(mut exited)) = (t.reads_done, t.exited) else {
        panic!("seed {SEED:#x}: the uninterrupted incremental cycle printed no 100% progress line: {t:?}")
    };
    kill_cycles(&mut run, From::Start, exited, 10, 256, false, &mut kills);
    kill_cycles(&mut run, From::ReadsDone, exited - reads_done, 6, 256, false, &mut kills);
    assert_eq!(kills.killed, 22, "seed {SEED:#x}");
    run.say(&format!("{} cycles killed, {} of them after their root was written", kills.killed, kills.committed));
    run.ship_uninterrupted();
    run.latest_is_the_snapshot();

    // The filter killed mid-cycle, then restarted: at least three times, and
    // until at least one kill came before the cycle ended (a cycle that beat
    // its kill sets the span the next delay is drawn from, as above).
    let mut failed = 0;
    let mut fractions = delays(&mut run.rng, Duration::from_secs(1), 3);
    let mut tries = 0;
    while let Some(f) = fractions.pop() {
        tries += 1;
        run.write_blocks(256);
        let before = run.points;
        let (outcome, fp, t) = run.attempt(From::Start, exited.mul_f64(f.as_secs_f64()), true);
        match &outcome {
            Outcome::Failed(err) => {
                failed += 1;
                assert!(
                    err.starts_with("exit status: 1") && err.contains(&format!("{NAME:?}")),
                    "seed {SEED:#x}: a cycle whose filter died must exit 1 naming the disk: {err}"
                );
            }
            // Faster than estimated: the next kill comes earlier.
            Outcome::Completed(_) => exited = t.exited.unwrap_or(exited),
            Outcome::Killed => unreachable!("only the filter was killed"),
        }
        run.check(&outcome, fp);
        if matches!(outcome, Outcome::Failed(_)) && run.points > before {
            run.say(
                "the cycle reported failure, but its point was committed \
                 (issue3_a_cycle_whose_filter_dies_after_its_reads_says_its_point_was_committed)",
            );
        }
        if !run.filter.running() {
            run.filter = run.s.home.filter(NAME, &run.sock);
        }
        run.ship_uninterrupted();
        run.latest_is_the_snapshot();
        if fractions.is_empty() && failed == 0 && tries < 8 {
            fractions.push(Duration::from_secs_f64(0.5 / f64::from(tries)));
        }
    }
    assert!(failed > 0, "seed {SEED:#x}: every cycle whose filter was killed completed: the kills came too late");

    // Each point was restored when it appeared. Since then, `vault check`
    // hashed its packs and pages after every attempt; now the key checks
    // every root and every block, and the oldest points (whose objects later
    // points share) restore again.
    let (vault, key) = (run.s.path(&run.vault), run.s.path("k.key"));
    let o = run.s.home.run_env(&[], &["vault", "check", arg(&vault), "--read-data", "--key", arg(&key)]);
    assert!(o.status.success(), "vault check --read-data:\n{}", String::from_utf8_lossy(&o.stdout));
    for (&id, &fp) in run.expected.iter().take(2) {
        let restored = run.s.home.restore(NAME, &id.to_string(), &run.s.path("point.img"));
        assert_eq!(fingerprint(&restored), fp, "seed {SEED:#x}: point {id} no longer restores to the disk at its cut");
    }
    run.filter.stop();
}

/// Regression test for issue 3: when the filter dies after the cycle read
/// every block, the cycle still commits its point (the blocks are in hand)
/// and only releasing the cut fails. `ship` must then not say the cycle
/// failed and its changes wait for the next one; it says the point was
/// committed.
#[test]
fn issue3_a_cycle_whose_filter_dies_after_its_reads_says_its_point_was_committed() {
    let mut run = setup("lb-shipfin-");
    run.ship_uninterrupted();
    run.write_blocks(256);
    let (outcome, fp, _) = run.attempt(From::ReadsDone, Duration::ZERO, true);
    let before = run.points;
    run.check(&outcome, fp);
    assert_eq!(run.points, before + 1, "the cycle did not commit its point: {outcome:?}");
    if let Outcome::Failed(err) = &outcome {
        assert!(
            err.contains(&format!("point {}", run.points)) && err.contains("committed"),
            "`ship` committed point {} but reported: {err}",
            run.points
        );
    }
}
