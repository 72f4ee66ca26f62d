//! `lifeboat agent` and `lifeboat status` end to end, through the real binary
//! and a real NBD client (issue 3, "How it is proved"):
//!
//! * The agent serves a protected disk over NBD and replicates it on its RPO
//!   schedule while a writer (Python on libnbd, queue depth 1) writes
//!   numbered records through it. Every point it commits restores to a
//!   crash-consistent image (one cut K explains every slot), the points come
//!   in order and no sooner than the interval apart, and once the writer
//!   stops, a later point is byte for byte the image. (With one block of
//!   copy memory, so the copies of overwritten blocks spill to the scratch
//!   file.) `status --json` says
//!   "ok" with a small RPO while it runs; SIGTERM stops it cleanly (exit 0,
//!   state file closed) and status then says the agent is not running.
//! * SIGTERM during a long full sync cancels the cycle at once: the agent
//!   exits 0, no partial point is listed, and `ship --once` afterwards
//!   replicates the disk exactly.
//! * With a short retention and `--gc-every 1s`, the agent collects the
//!   garbage of rewritten blocks while a writer writes: the collection only
//!   moves garbage into the vault's trash under its lease, and a thread of
//!   its own empties the trash; the trash ends empty, the vault checks clean
//!   and the latest point restores byte for byte.
//! * A vault that disappears makes cycles fail: status says "failing" (exit
//!   3) with the error, the agent retries, and once the vault is back the
//!   next cycle commits and status is "ok" again.

// Test code for 64-bit hosts: offsets and sizes fit usize.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vm_tests::clients::nbd_uri;
use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::replicate::{arg, first_difference, History, PointInfo, RecordWriter, SLOT};
use vm_tests::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-agent-")
}

/// A home with a key, a vault, and disk `name` protected with image `image`
/// and the given RPO.
fn protected(s: &Scratch, name: &str, image: &Path, rpo: &str) -> (PathBuf, PathBuf) {
    let (key, vault) = (s.path("k.key"), s.path("vault"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    s.home.run_ok(&[
        "protect",
        name,
        "--image",
        arg(image),
        "--block-size",
        "64KiB",
        "--vault",
        arg(&vault),
        "--key",
        arg(&key),
        "--rpo",
        rpo,
    ]);
    (key, vault)
}

fn points(home: &Home, name: &str) -> Vec<PointInfo> {
    PointInfo::parse_list(&home.run_ok(&["points", name, "--json"]).stdout)
}

/// `lifeboat status NAME --json`: the disk's object and the exit code.
fn status(home: &Home, name: &str) -> (Value, i32) {
    let out = home.run(&["status", name, "--json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!("status --json printed invalid JSON ({e}): {text}\n{}", String::from_utf8_lossy(&out.stderr))
    });
    (v[0].clone(), out.status.code().unwrap_or(-1))
}

/// Polls `points` until `pred` holds; fails after `limit`.
fn wait_points(home: &Home, name: &str, limit: Duration, pred: impl Fn(&[PointInfo]) -> bool) -> Vec<PointInfo> {
    let deadline = Instant::now() + limit;
    loop {
        let p = points(home, name);
        if pred(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "points did not reach the expected state within {limit:?}: {p:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

use system::clock::now_ns;

#[test]
fn agent_replicates_on_schedule_while_a_writer_writes() {
    let s = scratch();
    let home = &s.home;
    let size = 16 * MIB + 4 * KIB; // not a multiple of the block size
    let nslots = size / SLOT;
    let image = s.path("disk.img");
    fs::write(&image, History::original_image(nslots)).unwrap();
    protected(&s, "web", &image, "2s");
    // Room for one copy-before-write copy in memory: the rest wait in the
    // scratch file, so both stores serve the points checked below.
    let agent = home.agent(&["--copy-memory", "64K"], &["web"]);
    let sock = home_dir(home).join("disks/web/nbd.sock");
    assert!(sock.exists(), "the agent serves the disk at {} by default", sock.display());

    let mut writer = RecordWriter::spawn(s.dir(), &nbd_uri("web", &sock), nslots, 11);
    writer.wait_acked(50, Duration::from_secs(60));
    // Three points cut while the writer runs.
    let first_seen = wait_points(home, "web", Duration::from_secs(60), |p| !p.is_empty()).len();
    wait_points(home, "web", Duration::from_secs(120), |p| p.len() >= first_seen + 3);
    let (st, code) = status(home, "web");
    assert_eq!((st["state"].as_str(), code), (Some("ok"), 0), "status while the agent runs: {st}");
    assert_eq!(st["agent"]["running"], true, "{st}");
    assert_eq!(st["rpo_target_seconds"], 2, "{st}");
    assert!(st["rpo_seconds"].as_f64().unwrap() < 60.0, "RPO far above target: {st}");
    assert_eq!(st["last_cycle"]["committed"], true, "{st}");
    let recs = writer.stop();
    let stopped = now_ns();

    // A point cut after the writer stopped holds every record.
    let list = wait_points(home, "web", Duration::from_secs(60), |p| p.last().is_some_and(|l| l.cut_time_ns > stopped));
    agent.stop();
    let disk = fs::read(&image).unwrap();
    let latest = list.last().unwrap();
    let restored = home.restore("web", &latest.id.to_string(), &s.path("latest.img"));
    assert!(
        restored == disk,
        "point {} (cut after the writer stopped) differs from the image at block {:?}",
        latest.id,
        first_difference(&restored, &disk, 64 * KIB)
    );

    // Every point is crash-consistent, later than the one before, and the
    // agent kept the schedule: cycles start an interval apart, never sooner.
    // A cut comes a little after its cycle's start (the vault's lease and
    // newest root are read first, which can take a second on a loaded
    // machine), so single gaps between cuts may be short; over the run they
    // add up to the intervals, less the first cycle's wait before its cut.
    let history = History::new(recs, nslots);
    let mut previous = -1i64;
    let mut last_cut = 0u64;
    let cuts: Vec<u64> = list.iter().map(|p| p.cut_time_ns).collect();
    let span = (cuts[cuts.len() - 1] - cuts[0]) as f64 / 1e9;
    let intervals = (cuts.len() - 1) as f64 * 2.0;
    assert!(span >= intervals - 1.0, "{} points cut within {span:.2} s, with a 2 s RPO: {cuts:?}", cuts.len());
    for p in &list {
        assert_eq!(p.consistency, "crash-consistent", "{p:?}");
        assert!(p.cut_time_ns > last_cut, "point {} was cut before the one before it", p.id);
        last_cut = p.cut_time_ns;
        let copy = home.restore("web", &p.id.to_string(), &s.path("p.img"));
        let (lo, hi) = history.explain(&copy, &format!("point {}", p.id));
        assert!(hi >= previous, "point {} ({lo}..={hi}) is older than the one before it", p.id);
        previous = lo.max(previous);
    }
    assert!(list.len() >= 4, "{list:?}");

    // Stopped cleanly: the state file is closed, and status knows.
    let dirty: Value = serde_json::from_slice(&home.run_ok(&["dirty", "web", "--json"]).stdout).unwrap();
    assert_eq!(
        (&dirty["open"], &dirty["suspect"]),
        (&Value::Bool(false), &Value::Bool(false)),
        "after SIGTERM: {dirty}"
    );
    let (st, _) = status(home, "web");
    assert_eq!(st["agent"]["running"], false, "{st}");

    // The agent's actions are on the audit trail, which verifies.
    home.run_ok(&["audit", "verify"]);
    let shown: Value =
        serde_json::from_slice(&home.run_ok(&["audit", "show", "--json", "--disk", "web"]).stdout).unwrap();
    let kinds: Vec<&str> = shown.as_array().unwrap().iter().map(|r| r["kind"].as_str().unwrap()).collect();
    let committed = kinds.iter().filter(|k| **k == "cycle.committed").count();
    assert_eq!(kinds.first(), Some(&"protect"), "{kinds:?}");
    assert_eq!(kinds.get(1), Some(&"agent.start"), "{kinds:?}");
    let stop = kinds.iter().position(|k| *k == "agent.stop").unwrap_or_else(|| panic!("no agent.stop: {kinds:?}"));
    assert!(kinds[stop..].iter().all(|k| *k != "cycle.committed"), "a cycle after the agent stopped: {kinds:?}");
    assert!(kinds[stop + 1..].iter().all(|k| *k == "restore"), "{kinds:?}");
    assert!(committed >= list.len(), "{} points but {committed} cycle.committed records: {kinds:?}", list.len());
}

#[test]
fn agent_collects_garbage_and_frees_it_off_the_cycle_thread() {
    let s = scratch();
    let home = &s.home;
    // 16 blocks of 64 KiB: random rewrites leave whole packs garbage fast.
    let nslots = MIB / SLOT;
    let image = s.path("disk.img");
    fs::write(&image, History::original_image(nslots)).unwrap();
    let (key, vault) = (s.path("k.key"), s.path("vault"));
    home.key_new(&key);
    home.vault_init(&vault, &key);
    #[rustfmt::skip]
    home.run_ok(&[
        "protect", "web", "--image", arg(&image), "--block-size", "64KiB", "--vault", arg(&vault), "--key", arg(&key),
        "--rpo", "1s", "--keep-recent", "1s", "--keep-hourly", "0",
    ]);
    let mut agent = home.agent(&["--gc-every", "1s"], &["web"]);
    let sock = home_dir(home).join("disks/web/nbd.sock");
    let writer = RecordWriter::spawn(s.dir(), &nbd_uri("web", &sock), nslots, 5);
    let freed = agent.wait_line("garbage collection freed", Duration::from_secs(120));
    assert!(freed.contains(" packs") && !freed.contains("(0 packs"), "{freed}");
    // Emptied by the agent's own thread (the line is logged only when it
    // freed something).
    let emptied = agent.wait_line("emptied the vault's trash", Duration::from_secs(60));
    assert!(!emptied.contains(": 0 objects"), "{emptied}");
    writer.stop();
    let stopped = now_ns();
    wait_points(home, "web", Duration::from_secs(60), |p| p.last().is_some_and(|l| l.cut_time_ns > stopped));
    agent.stop();

    // The agent does not wait for the trash at a stop (it may hold terabytes);
    // whatever the last collections left there, `vault gc` frees, and the
    // vault is whole.
    let leftover = fs::read_dir(vault.join("trash")).unwrap().count();
    let out = String::from_utf8(home.run_ok(&["vault", "gc", arg(&vault)]).stdout).unwrap();
    if leftover > 0 {
        assert!(out.contains(&format!("freed {leftover} objects")), "{leftover} objects were in the trash: {out}");
    }
    let trash: Vec<_> = fs::read_dir(vault.join("trash")).unwrap().collect();
    assert!(trash.is_empty(), "objects left in the trash after `vault gc`: {trash:?}");
    home.run_ok(&["vault", "check", arg(&vault), "--read-data", "--key", arg(&key)]);
    let latest = points(home, "web").last().unwrap().id;
    let restored = home.restore("web", &latest.to_string(), &s.path("latest.img"));
    assert!(restored == fs::read(&image).unwrap(), "the latest point differs from the image after collections");
    let shown: Value =
        serde_json::from_slice(&home.run_ok(&["audit", "show", "--json", "--disk", "web"]).stdout).unwrap();
    let gcs = shown.as_array().unwrap().iter().filter(|r| r["kind"] == "gc").count();
    assert!(gcs >= 1, "no gc record on the audit trail: {shown}");
}

#[test]
fn sigterm_during_a_full_sync_cancels_it_and_nothing_is_lost() {
    let s = scratch();
    let home = &s.home;
    let image = s.path("big.img");
    fs::write(&image, Rng::new(5).bytes(384 * MIB as usize)).unwrap();
    let (_, vault) = protected(&s, "big", &image, "5m");
    let mut agent = home.agent(&[], &["big"]);
    // The cycle holds a lease in the vault while it runs.
    let leases = vault.join("leases");
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(&leases).map_or(0, |d| d.count()) == 0 {
        assert!(Instant::now() < deadline, "no cycle started within 30 s:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let t0 = Instant::now();
    let status = agent.terminate();
    let took = t0.elapsed();
    assert!(status.success(), "agent exited with {status} after SIGTERM:\n{}", agent.log());
    assert!(took < Duration::from_secs(20), "the agent took {took:?} to stop");
    let log = agent.log();
    assert!(log.contains("big: cycle cancelled"), "the full sync was not cancelled:\n{log}");
    assert!(points(home, "big").is_empty(), "a cancelled full sync left a point:\n{log}");
    // Whatever happened, the next cycle replicates the disk exactly.
    let r = home.ship("big");
    let restored = home.restore("big", &r.sequence.to_string(), &s.path("r.img"));
    assert!(restored == fs::read(&image).unwrap(), "the point after a cancelled full sync differs from the image");
}

#[test]
fn status_reports_failing_cycles_and_recovery() {
    let s = scratch();
    let home = &s.home;
    let image = s.path("d.img");
    fs::write(&image, Rng::new(9).bytes(4 * MIB as usize)).unwrap();
    let (_, vault) = protected(&s, "db", &image, "1s");
    let (st, code) = status(home, "db");
    assert_eq!((st["state"].as_str(), code), (Some("no-point"), 0), "before any cycle: {st}");
    let mut agent = home.agent(&[], &["db"]);
    agent.wait_line("db: point 1 committed", Duration::from_secs(60));

    let away = s.path("vault-away");
    fs::rename(&vault, &away).unwrap();
    agent.wait_line("db: cycle failed", Duration::from_secs(30));
    let (st, code) = status(home, "db");
    assert_eq!((st["state"].as_str(), code), (Some("failing"), 3), "with the vault gone: {st}");
    assert_eq!(st["last_cycle"]["committed"], false, "{st}");
    let err = st["error"].as_str().unwrap_or_default();
    assert!(err.contains(vault.to_str().unwrap()), "the error does not name the vault: {st}");

    fs::rename(&away, &vault).unwrap();
    agent.wait_line("point 2 committed", Duration::from_secs(60));
    let (st, code) = status(home, "db");
    assert_eq!((st["state"].as_str(), code), (Some("ok"), 0), "after the vault came back: {st}");
    assert_eq!(st["consecutive_failures"], 0, "{st}");
    agent.stop();
}

/// The home directory a [`Home`] drives (its `--home`).
fn home_dir(home: &Home) -> PathBuf {
    let cmd = home.command();
    let args: Vec<_> = cmd.get_args().collect();
    PathBuf::from(args[1])
}

#[test]
fn agent_and_status_refuse_what_is_not_there() {
    let s = scratch();
    // An empty home: nothing to run, and the message says how to protect a disk.
    let out = s.home.run(&["agent"]);
    assert_eq!(out.status.code(), Some(1), "agent in an empty home: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no protected disks") && err.contains("lifeboat protect"), "{err}");
    // A copy memory that is not a size is refused before anything starts, naming it.
    let out = s.home.run(&["agent", "--copy-memory", "lots"]);
    assert_eq!(out.status.code(), Some(2), "agent --copy-memory lots: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--copy-memory") && err.contains("\"lots\" is not a size"), "{err}");
    // A disk that is not protected here: status names it as an error and exits 3.
    let (st, code) = status(&s.home, "nosuch");
    assert_eq!((st["state"].as_str(), code), (Some("error"), 3), "{st}");
    assert!(st["error"].as_str().unwrap_or_default().contains("nosuch"), "{st}");
    // A disk whose state file is damaged is not served, and the agent says why.
    let image = s.path("d.img");
    fs::write(&image, vec![0u8; MIB as usize]).unwrap();
    s.home.run_ok(&["protect", "d", "--image", arg(&image)]);
    fs::write(home_dir(&s.home).join("disks/d/state"), b"not a state file").unwrap();
    let out = s.home.run(&["agent", "d"]);
    assert_eq!(out.status.code(), Some(1), "agent with only a damaged disk: {out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("d:") && err.contains("not served"), "{err}");
}
