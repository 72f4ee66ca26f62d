//! Cloud vaults under faults (issue 15): every scenario runs against an S3
//! bucket on moto's server and an Azure Blob container on Azurite (one
//! `#[test]` per server per scenario, the scenario a helper taking the
//! server's variables and the vault's URL), through the real binary.
//!
//! * **SIGKILL mid-upload.** `ship --once` reaches the bucket through a TCP
//!   proxy ([`FaultProxy`]) that stalls the link at a chosen byte, so each
//!   kill lands at a known stage, never after a sleep: 1 MiB into the full
//!   sync's pack (nothing in the bucket yet, the cycle's lease there), after
//!   an incremental cycle's pack landed but before its root, and after a
//!   root landed but before the cycle finished. After each: the next
//!   `ship --once` commits, every point restores byte for byte, the killed
//!   cycle's blocks stayed dirty, the dead cycles' leases do not block a
//!   `vault gc` on this host, and `vault check --read-data` (which checks
//!   that every object a root names is there and sound) finds nothing.
//! * **Damage in the bucket.** An attacker replays an older root under the
//!   newest root's name: `points` says DAMAGED, `restore` refuses rather than
//!   give the older disk as the latest. Then a byte of one pack is flipped
//!   and one map page deleted, through [`CloudBackend`]: `vault check` with
//!   and without the key names both objects and exits 1, `restore` of each
//!   affected point fails naming its object and writes no image, the
//!   unaffected point restores, and `vault gc` deletes nothing.
//! * **A rolled-back bucket** (its newest root deleted): as
//!   `vault_rollback.rs` expects of a directory — `points` and `restore` say
//!   VAULT ROLLED BACK, the next cycle verifies the whole disk under a new
//!   sequence number and its point is the disk; the audit log and
//!   `vault check --key` name the lost point.
//! * **Instant recovery from the bucket.** `instant-serve --vault URL` over a
//!   slowed link: a `qemu-io` read of the disk's last block succeeds while
//!   the background copy has barely begun; `nbdcopy` of the served disk is
//!   the point byte for byte, and so is the local copy once filled.
//! * **Two hosts, one bucket, a GC at once.** Two homes, each with a disk
//!   `d1` and the same key, cycle into one vault from two threads while a
//!   third runs `prune` (of host A's disk) and `vault gc` in a loop. Block
//!   contents come back to earlier values, so cycles deduplicate against
//!   packs the collector is about to judge garbage. Cycles refused because
//!   the collection held the vault are retried, their blocks dirty
//!   meanwhile; afterwards every point of B and every point of A that prune
//!   kept restores byte for byte, each host's newest point is its disk, and
//!   `vault check --read-data` is clean.
//! * **The race the leases exist for, made deterministic.** A cycle that
//!   found a block it needs in a pack no point names any more (its points
//!   pruned) is held mid-upload by the proxy while `vault gc` runs: the
//!   collection refuses and the pack stays; the released cycle commits, and
//!   its point restores.
//! * **Wrong credentials mid-way** (Azurite only: moto checks no
//!   signature): the cycle fails naming the vault and the credentials, the
//!   secret is not printed, its blocks stay dirty, and the next cycle with
//!   the right key ships them.
//!
//! How each was seen to fail: see "Seen failing" at the end of the file.

// Test code for 64-bit hosts: offsets and sizes fit usize.
#![allow(clippy::cast_possible_truncation)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cloud::{CloudBackend, Settings};
use vault::{Backend, Kind};
use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::cloud_servers::{Azurite, Moto};
use vm_tests::fault_proxy::{Fault, FaultProxy};
use vm_tests::lifeboat::{Filter, Home, Scratch};
use vm_tests::process::wait_for;
use vm_tests::replicate::{arg, first_difference, nbd_write, ShipReport};
use vm_tests::{paths, Rng};

const BIN: &str = env!("CARGO_BIN_EXE_lifeboat");
const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const BS: u64 = 64 * KIB;
/// How long any one wait may take on a loaded 2-core host.
const LIMIT: Duration = Duration::from_secs(60);

type Vars = Vec<(String, String)>;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Fails unless `o` exited with status 1; returns its stdout and stderr.
fn failed(o: &Output, what: &str) -> (String, String) {
    assert_eq!(o.status.code(), Some(1), "{what}: expected exit 1:\n{}{}", stdout(o), stderr(o));
    (stdout(o), stderr(o))
}

// ---------------------------------------------------------------------------
// The bucket, seen directly
// ---------------------------------------------------------------------------

/// The vault at `url` as the test reaches it, directly (never through a
/// proxy): to make the bucket, look at its objects, and damage them.
fn bucket(vars: &Vars, url: &str) -> CloudBackend {
    CloudBackend::open(&url.parse().unwrap(), &Settings::from_vars(vars.iter().cloned())).unwrap()
}

/// Makes the bucket or container of `url` (Lifeboat never creates one) and
/// returns it.
fn make_bucket(vars: &Vars, url: &str) -> CloudBackend {
    let b = bucket(vars, url);
    b.create_bucket(None).unwrap();
    b
}

fn names(b: &CloudBackend, kind: Kind) -> BTreeSet<String> {
    b.list(kind, "").unwrap_or_else(|e| panic!("listing {kind} in {}: {e}", b.location())).into_iter().collect()
}

/// Every pack, page and root (by `KIND/NAME`) and its size.
fn objects(b: &CloudBackend) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for kind in [Kind::Pack, Kind::Page, Kind::Root] {
        for n in names(b, kind) {
            let size = b.size(kind, &n).unwrap().unwrap_or_else(|| panic!("{kind}/{n} vanished"));
            out.insert(format!("{kind}/{n}"), size);
        }
    }
    out
}

/// The one name in `after` that is not in `before`.
fn the_new_one(before: &BTreeSet<String>, after: &BTreeSet<String>, what: &str) -> String {
    let new: Vec<&String> = after.difference(before).collect();
    assert_eq!(new.len(), 1, "expected exactly one new {what}: {new:?}");
    new[0].clone()
}

/// Polls `done` every 10 ms until it holds; fails naming `what` after
/// [`LIMIT`].
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + LIMIT;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `vars` with the server's address (`127.0.0.1:PORT` in its endpoint
/// variable) replaced by the proxy's: the settings a user exports, with
/// the proxy as the link between host and cloud.
fn through(proxy: &FaultProxy, vars: &Vars, port: u16) -> Vars {
    let (from, to) = (format!("127.0.0.1:{port}"), proxy.addr().to_string());
    let out: Vars = vars.iter().map(|(k, v)| (k.clone(), v.replace(&from, &to))).collect();
    assert_ne!(&out, vars, "no variable names the server at {from}: {vars:?}");
    out
}

/// A fault proxy in front of the server on `port` (forwarding, until told
/// otherwise).
fn proxy_to(port: u16) -> FaultProxy {
    FaultProxy::start(SocketAddr::from(([127, 0, 0, 1], port))).expect("start the fault proxy")
}

// ---------------------------------------------------------------------------
// A protected host
// ---------------------------------------------------------------------------

/// A home replicating disk `d1` (an image of `size` seeded random bytes,
/// 64 KiB blocks) to the cloud vault `url`, and what the disk holds.
struct Host {
    home: Home,
    key: PathBuf,
    image: PathBuf,
    sock: PathBuf,
    /// The disk's contents now.
    disk: Vec<u8>,
    /// What each point must restore to, by point id.
    expected: BTreeMap<u64, Vec<u8>>,
    filter: Option<Filter>,
    /// A directory of the host's own in the scratch directory (NBD plan
    /// files); restored images go beside it.
    dir: PathBuf,
}

impl Host {
    /// `home` (its variables set), with key file `key` (made, and the vault
    /// initialised with it, if it does not exist yet) and the disk protected
    /// into `url`.
    fn new(s: &Scratch, home: Home, tag: &str, key: &Path, url: &str, size: u64, seed: u64) -> Host {
        if !key.exists() {
            home.run_ok(&["key", "new", "--out", arg(key)]);
            let o = home.run_ok(&["vault", "init", url, "--key", arg(key)]);
            assert!(stdout(&o).contains(&format!("vault created in {url}")), "{}", stdout(&o));
        }
        let image = s.path(&format!("{tag}.img"));
        let disk = Rng::new(seed).bytes(size as usize);
        fs::write(&image, &disk).unwrap();
        home.run_ok(&[
            "protect",
            "d1",
            "--image",
            arg(&image),
            "--block-size",
            "64KiB",
            "--vault",
            url,
            "--key",
            arg(key),
        ]);
        Host {
            home,
            key: key.to_path_buf(),
            image,
            sock: s.path(&format!("{tag}.sock")),
            disk,
            expected: BTreeMap::new(),
            filter: None,
            dir: s.path(tag),
        }
    }

    /// Writes `data` at each block through the filter (started if it is not
    /// running), and into the model of the disk; returns the blocks.
    fn write(&mut self, blocks: &[(u64, Vec<u8>)]) -> BTreeSet<u64> {
        if self.filter.is_none() {
            self.filter = Some(self.home.filter("d1", &self.sock));
        }
        fs::create_dir_all(&self.dir).unwrap();
        let plan: Vec<(u64, &[u8])> = blocks.iter().map(|(b, d)| (b * BS, d.as_slice())).collect();
        nbd_write(&self.dir, &nbd_uri("d1", &self.sock), &plan);
        for (b, d) in blocks {
            let at = (b * BS) as usize;
            self.disk[at..at + d.len()].copy_from_slice(d);
        }
        blocks.iter().map(|(b, _)| *b).collect()
    }

    /// `n` distinct blocks of new random data, written as [`Host::write`].
    fn write_random(&mut self, rng: &mut Rng, n: usize) -> BTreeSet<u64> {
        let count = self.disk.len() as u64 / BS;
        let mut picked = BTreeSet::new();
        while picked.len() < n {
            picked.insert(rng.below(count));
        }
        let blocks: Vec<(u64, Vec<u8>)> = picked.iter().map(|&b| (b, rng.bytes(BS as usize))).collect();
        self.write(&blocks)
    }

    /// Stops the filter (a later cycle then reads the image itself).
    fn stop_filter(&mut self) {
        if let Some(f) = self.filter.take() {
            f.stop();
        }
    }

    /// `ship d1 --once --json`, which must succeed; the point's expected
    /// contents are the disk now.
    fn ship(&mut self) -> ShipReport {
        let r = self.home.ship("d1");
        self.expected.insert(r.sequence, self.disk.clone());
        r
    }

    /// Restores point `id` and fails unless it is what the disk held when
    /// the point was cut.
    fn assert_restores(&self, id: u64, what: &str) {
        let want = self.expected.get(&id).unwrap_or_else(|| panic!("{what}: no point {id} was shipped"));
        let out = self.dir.with_extension(format!("point{id}.raw"));
        let got = self.home.restore("d1", &id.to_string(), &out);
        fs::remove_file(&out).unwrap();
        if let Some(block) = first_difference(&got, want, BS) {
            panic!("{what}: point {id} differs from the disk at its cut from block {block} on");
        }
    }

    /// `vault check URL --read-data --key KEY`, which must find nothing.
    fn assert_vault_clean(&self, url: &str, what: &str) {
        let o = self.home.run(&["vault", "check", url, "--read-data", "--key", arg(&self.key)]);
        assert!(
            o.status.success() && stdout(&o).contains("no problems found"),
            "{what}: vault check --read-data:\n{}{}",
            stdout(&o),
            stderr(&o)
        );
    }

    /// `points d1 --json`: the ids.
    fn point_ids(&self) -> Vec<u64> {
        self.home.points("d1").iter().map(|p| p.id).collect()
    }
}

/// A child SIGKILLed and reaped when dropped: a test that fails while a
/// `ship` or an `instant-serve` of its own runs leaves neither behind.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        // Already reaped when the test got that far: nothing to do then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl std::ops::Deref for Reaped {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Reaped {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// SIGKILLs `ship`, which must still be running (the kill lands mid-cycle),
/// and reaps it.
fn kill(ship: &mut Child, stage: &str) {
    assert!(ship.try_wait().unwrap().is_none(), "{stage}: the cycle ended before its kill");
    ship.kill().unwrap();
    let status = wait_for(ship, LIMIT, "lifeboat ship");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{stage}: {status}");
}

// ---------------------------------------------------------------------------
// 1. SIGKILL mid-upload
// ---------------------------------------------------------------------------

/// The one-way delay that gives the test time to see an object land (a
/// listing every 10 ms) before the cycle hears the answer and sends its next
/// request.
const STAGE_DELAY: Duration = Duration::from_millis(600);

fn a_cycle_killed_mid_upload_loses_nothing(vars: Vars, port: u16, url: &str, prefix: &str) {
    let s = Scratch::new(BIN, prefix);
    let b = make_bucket(&vars, url);
    let proxy = proxy_to(port);
    let home = Home::new(BIN, s.path("home")).with_env(&through(&proxy, &vars, port));
    let mut h = Host::new(&s, home, "d1", &s.path("k.key"), url, 8 * MIB, 51);
    let mut rng = Rng::new(52);

    // Kill 1: the full sync, with the link stalled 1 MiB into its uploads.
    // Everything it sends before its pack (lease, listings, config) is a
    // few KiB, so the stall holds the pack's PUT half sent.
    let up = proxy.up();
    proxy.set(Fault::StallAfterUp(MIB));
    let mut ship = Reaped(h.home.spawn_ship("d1"));
    assert!(proxy.wait_up(up + MIB, LIMIT), "the full sync did not send 1 MiB");
    let stage = "killed 1 MiB into the full sync's pack";
    assert!(names(&b, Kind::Pack).is_empty(), "{stage}: a pack is in the bucket already");
    assert!(!b.list(Kind::Lease, "cycle/").unwrap().is_empty(), "{stage}: the cycle holds no lease");
    kill(&mut ship, stage);
    // The half-sent request is reset, never completed.
    proxy.reset_all();
    proxy.set(Fault::None);
    assert!(names(&b, Kind::Root).is_empty(), "{stage}: the killed cycle left a point");
    let r = h.ship();
    assert_eq!((r.sequence, r.full), (1, true), "after {stage}: {r:?}");
    h.assert_restores(1, stage);

    // Kill 2: an incremental cycle whose pack landed and whose root did not.
    // The link stalls half a MiB into the pack; then it carries on with a
    // delay each way ([`STAGE_DELAY`]), so that between the pack landing
    // (seen in the bucket directly) and the cycle hearing so there is time
    // to stall the link again: the cycle is held before its pages and root.
    let written = h.write_random(&mut rng, 32);
    h.stop_filter();
    let packs = names(&b, Kind::Pack);
    let up = proxy.up();
    proxy.set(Fault::StallAfterUp(MIB / 2));
    let mut ship = Reaped(h.home.spawn_ship("d1"));
    assert!(proxy.wait_up(up + MIB / 2, LIMIT), "the incremental cycle did not send half a MiB");
    proxy.set_delay(STAGE_DELAY);
    proxy.set(Fault::None);
    wait_until("the incremental cycle's pack to land", || names(&b, Kind::Pack).len() > packs.len());
    proxy.set(Fault::Stall);
    let stage = "killed after its pack landed, before its root";
    assert_eq!(names(&b, Kind::Root).len(), 1, "{stage}: the root landed before the link stalled");
    kill(&mut ship, stage);
    proxy.reset_all();
    proxy.set_delay(Duration::ZERO);
    proxy.set(Fault::None);
    assert_eq!(h.point_ids(), [1], "{stage}: a point was listed");
    let dirty = h.home.dirty("d1");
    let lost: Vec<&u64> = written.difference(&dirty.dirty_blocks).collect();
    assert!(lost.is_empty() && !dirty.suspect, "{stage}: blocks {lost:?} are no longer dirty ({dirty:?})");
    let r = h.ship();
    assert_eq!(r.sequence, 2, "after {stage}: {r:?}");
    eprintln!("the cycle after the kill {stage}: {r:?}");
    h.assert_restores(2, stage);

    // Kill 3: the root landed, the cycle had not finished (releasing its
    // lease, recording the point). Same link as kill 2, stalled once the
    // root is seen.
    h.write_random(&mut rng, 32);
    h.stop_filter();
    let up = proxy.up();
    proxy.set(Fault::StallAfterUp(MIB / 2));
    let mut ship = Reaped(h.home.spawn_ship("d1"));
    assert!(proxy.wait_up(up + MIB / 2, LIMIT), "the third cycle did not send half a MiB");
    proxy.set_delay(STAGE_DELAY);
    proxy.set(Fault::None);
    wait_until("the third cycle's root to land", || names(&b, Kind::Root).len() == 3);
    proxy.set(Fault::Stall);
    let stage = "killed after its root landed";
    kill(&mut ship, stage);
    proxy.reset_all();
    proxy.set_delay(Duration::ZERO);
    proxy.set(Fault::None);
    // The point is committed (its root is whole in the bucket): it is the disk.
    h.expected.insert(3, h.disk.clone());
    assert_eq!(h.point_ids(), [1, 2, 3], "{stage}");
    h.assert_restores(3, stage);
    let r = h.ship();
    assert_eq!(r.sequence, 4, "after {stage}: {r:?}");

    // The dead cycles' leases are provably stale on this host: a collection
    // runs, and removes them; what it deletes no point needed.
    let o = h.home.run(&["vault", "gc", url]);
    assert!(o.status.success(), "vault gc after the kills:\n{}{}", stdout(&o), stderr(&o));
    assert!(names(&b, Kind::Lease).is_empty(), "leases left after gc: {:?}", names(&b, Kind::Lease));
    // Every root's pages and blocks are there and sound (the keyless part
    // of the check), and every block decrypts (with the key).
    h.assert_vault_clean(url, "after the kills and a gc");
    for id in 1..=4 {
        h.assert_restores(id, "after the kills and a gc");
    }
}

#[test]
fn s3_a_cycle_killed_mid_upload_loses_nothing() {
    let moto = Moto::start();
    a_cycle_killed_mid_upload_loses_nothing(moto.vars(), moto.port(), "s3://lb-kill/v", "lb-cf-kill-s3-");
}

#[test]
fn azure_a_cycle_killed_mid_upload_loses_nothing() {
    let azurite = Azurite::start();
    let url = "az://devstoreaccount1/lb-kill/v";
    a_cycle_killed_mid_upload_loses_nothing(azurite.vars(), azurite.port(), url, "lb-cf-kill-az-");
}

// ---------------------------------------------------------------------------
// 2. Damage in the bucket
// ---------------------------------------------------------------------------

fn damaged_objects_are_named_and_never_restored(vars: Vars, url: &str, prefix: &str) {
    let s = Scratch::new(BIN, prefix);
    let b = make_bucket(&vars, url);
    let home = Home::new(BIN, s.path("home")).with_env(&vars);
    let mut h = Host::new(&s, home, "d1", &s.path("k.key"), url, 4 * MIB, 61);
    let mut rng = Rng::new(62);
    assert_eq!(h.ship().sequence, 1);
    let (packs1, pages1) = (names(&b, Kind::Pack), names(&b, Kind::Page));
    // Point 2 changes blocks 1 and 5; point 3 changes block 1 again and 9.
    // The disk is one map page (64 blocks), so each point has a page of its
    // own, and point 3's blocks are all in its own new pack.
    h.write(&[(1, rng.bytes(BS as usize)), (5, rng.bytes(BS as usize))]);
    assert_eq!(h.ship().sequence, 2);
    let (packs2, pages2) = (names(&b, Kind::Pack), names(&b, Kind::Page));
    h.write(&[(1, rng.bytes(BS as usize)), (9, rng.bytes(BS as usize))]);
    assert_eq!(h.ship().sequence, 3);
    h.stop_filter();
    let page2 = the_new_one(&pages1, &pages2, "page of point 2");
    let pack3 = the_new_one(&packs2, &names(&b, Kind::Pack), "pack of point 3");
    assert!(packs2.len() > packs1.len());
    let chain = h.home.chain("d1");
    let root = |seq: u64| format!("{chain}/{seq:020}");
    let check = |key: bool| {
        let mut args = vec!["vault", "check", url];
        if key {
            args.extend(["--read-data", "--key", arg(&h.key)]);
        }
        h.home.run(&args)
    };
    let out = s.path("restored.raw");
    let restore = |point: &str| h.home.run(&["restore", "d1", "--point", point, "--out", arg(&out)]);

    // An attacker who can write the bucket replays point 2's root under
    // point 3's name: "latest" would silently be the older disk. Refused.
    let saved = b.get(Kind::Root, &root(3)).unwrap();
    b.put(Kind::Root, &root(3), &b.get(Kind::Root, &root(2)).unwrap()).unwrap();
    let (_, err) = failed(&restore("latest"), "restore of a replayed root");
    assert!(err.contains(&format!("roots/{}", root(3))) && err.contains("misplaced"), "{err}");
    assert!(!out.exists(), "a refused restore wrote {}", out.display());
    let o = h.home.run_ok(&["points", "d1"]);
    assert!(stdout(&o).contains("DAMAGED"), "points does not flag the replayed root:\n{}", stdout(&o));
    let (text, _) = failed(&check(false), "vault check of a replayed root");
    assert!(text.contains(&format!("PROBLEM roots/{}", root(3))), "{text}");
    b.put(Kind::Root, &root(3), &saved).unwrap();
    h.assert_vault_clean(url, "with the root put back");

    // One byte of point 3's pack flipped (inside its first blob: the blobs
    // start after a 32-byte header), and point 2's map page deleted.
    let mut bytes = b.get(Kind::Pack, &pack3).unwrap();
    bytes[32 + 1000] ^= 0x40;
    b.put(Kind::Pack, &pack3, &bytes).unwrap();
    b.delete(Kind::Page, &page2).unwrap();
    let (pack_obj, page_obj) = (format!("packs/{pack3}"), format!("pages/{page2}"));

    for key in [false, true] {
        let (text, err) = failed(&check(key), &format!("vault check (key: {key})"));
        assert!(text.contains(&format!("PROBLEM {pack_obj}")), "check (key: {key}) misses the pack:\n{text}");
        assert!(text.contains(&format!("PROBLEM {page_obj}")), "check (key: {key}) misses the page:\n{text}");
        assert!(!text.contains("no problems found"), "{text}");
        assert!(err.contains(&format!("problem(s) found in vault {url}")), "{err}");
    }
    let (_, err) = failed(&restore("2"), "restore of the point whose page is gone");
    assert!(err.contains(&page_obj) && err.contains("missing"), "{err}");
    assert!(!out.exists(), "a failed restore of point 2 left an image");
    let (_, err) = failed(&restore("3"), "restore of the point whose pack is damaged");
    assert!(err.contains(&pack_obj), "{err}");
    assert!(!out.exists(), "a failed restore of point 3 left an image");
    h.assert_restores(1, "the point the damage does not touch");
    // GC cannot know what the lost page named: it deletes nothing.
    let before = objects(&b);
    let (_, err) = failed(&h.home.run(&["vault", "gc", url]), "vault gc with a page missing");
    assert!(err.contains(&page_obj) && err.contains("deleted nothing"), "{err}");
    assert_eq!(objects(&b), before, "vault gc changed a damaged vault");
}

#[test]
fn s3_damaged_and_missing_objects_are_named_and_never_restored() {
    let moto = Moto::start();
    damaged_objects_are_named_and_never_restored(moto.vars(), "s3://lb-damage/v", "lb-cf-dmg-s3-");
}

#[test]
fn azure_damaged_and_missing_objects_are_named_and_never_restored() {
    let azurite = Azurite::start();
    damaged_objects_are_named_and_never_restored(azurite.vars(), "az://devstoreaccount1/lb-damage/v", "lb-cf-dmg-az-");
}

/// The newest root deleted from the bucket (its storage rolled back, or an
/// attacker hiding the newest point): what `vault_rollback.rs` asserts of
/// a directory.
fn a_rolled_back_bucket_is_noticed(vars: Vars, url: &str, prefix: &str) {
    let s = Scratch::new(BIN, prefix);
    let b = make_bucket(&vars, url);
    let home = Home::new(BIN, s.path("home")).with_env(&vars);
    let mut h = Host::new(&s, home, "d1", &s.path("k.key"), url, 4 * MIB, 71);
    assert_eq!(h.ship().sequence, 1);
    let fill = |b: u8| vec![b; BS as usize];
    h.write(&[(3, fill(0xa1))]);
    assert_eq!(h.ship().sequence, 2);
    h.write(&[(9, fill(0xb2))]);
    assert_eq!(h.ship().sequence, 3);
    let chain = h.home.chain("d1");
    b.delete(Kind::Root, &format!("{chain}/{:020}", 3)).unwrap();

    let o = h.home.run_ok(&["points", "d1"]);
    assert!(stderr(&o).contains("VAULT ROLLED BACK") && stderr(&o).contains("point 3"), "points: {}", stderr(&o));
    let out = s.path("early.raw");
    let o = h.home.run_ok(&["restore", "d1", "--out", arg(&out)]);
    assert!(stderr(&o).contains("VAULT ROLLED BACK"), "restore: {}", stderr(&o));
    assert!(fs::read(&out).unwrap() == h.expected[&2], "latest, after the rollback, is not point 2");

    h.write(&[(20, fill(0xc3))]);
    let o = h.home.run_ok(&["ship", "d1", "--once", "--json"]);
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ship --json prints JSON");
    assert_eq!(r["full"], true, "after a rollback the cycle must verify the whole disk: {r}");
    assert_eq!(r["sequence"], 4, "point 3 was committed once: its number is not reused: {r}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("VAULT ROLLED BACK") && warnings.contains("point 3"), "{r}");
    assert!(stderr(&o).contains("VAULT ROLLED BACK"), "ship's stderr: {}", stderr(&o));
    h.stop_filter();
    // The new point is the disk: block 9, carried only by the lost point 3,
    // is in it.
    h.expected.insert(4, fs::read(&h.image).unwrap());
    assert!(h.expected[&4] == h.disk, "the image is not the disk the test wrote");
    h.assert_restores(4, "after the rollback");
    h.assert_restores(2, "a point older than the rollback");
    let audit = h.home.run_ok(&["audit", "show", "--key", arg(&h.key), "--json"]);
    let audit = stdout(&audit);
    assert!(audit.contains("chain_break") && audit.contains("VAULT ROLLED BACK"), "{audit}");
    // The vault's copy of the audit log names the point the bucket lost.
    let o = h.home.run(&["vault", "check", url, "--read-data", "--key", arg(&h.key)]);
    let (text, _) = failed(&o, "vault check --read-data of a rolled-back vault");
    assert!(text.contains("PROBLEM") && text.contains("point 3"), "{text}");
}

#[test]
fn s3_a_rolled_back_bucket_is_noticed_and_the_next_point_is_the_disk() {
    let moto = Moto::start();
    a_rolled_back_bucket_is_noticed(moto.vars(), "s3://lb-rollback/v", "lb-cf-rb-s3-");
}

#[test]
fn azure_a_rolled_back_container_is_noticed_and_the_next_point_is_the_disk() {
    let azurite = Azurite::start();
    a_rolled_back_bucket_is_noticed(azurite.vars(), "az://devstoreaccount1/lb-rollback/v", "lb-cf-rb-az-");
}

// ---------------------------------------------------------------------------
// 3. Instant recovery from the bucket
// ---------------------------------------------------------------------------

fn instant_recovery_serves_the_point_from_the_bucket(vars: Vars, port: u16, url: &str, prefix: &str) {
    const SIZE: u64 = 16 * MIB;
    const BLOCKS: u64 = SIZE / BS;
    let s = Scratch::new(BIN, prefix);
    make_bucket(&vars, url);
    let proxy = proxy_to(port);
    let home = Home::new(BIN, s.path("home")).with_env(&through(&proxy, &vars, port));
    let mut h = Host::new(&s, home, "d1", &s.path("k.key"), url, SIZE, 81);
    // A zero stretch (never fetched), and a last block of 0x5a that
    // `qemu-io` can check with a pattern.
    h.disk[(4 * MIB) as usize..(8 * MIB) as usize].fill(0);
    h.disk[(SIZE - BS) as usize..].fill(0x5a);
    fs::write(&h.image, &h.disk).unwrap();
    assert_eq!(h.ship().sequence, 1);
    let point = h.expected[&1].clone();

    // A slow link (200 kB/s per connection): the background copy, in block
    // order, is far from the end when the client reads it.
    proxy.set(Fault::Slow(200_000));
    let sock = s.path("i.sock");
    let log = s.path("serve.log");
    let mut server = Reaped(
        h.home
            .command()
            .args(["instant-serve", "--vault", url, "--key", arg(&h.key), "--disk", "d1", "--point", "1"])
            .args(["--image", arg(&s.path("local.img")), "--bitmap", arg(&s.path("local.present"))])
            .args(["--socket", arg(&sock)])
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let serving = |server: &mut Child| {
        assert!(server.try_wait().unwrap().is_none(), "instant-serve exited:\n{}", fs::read_to_string(&log).unwrap());
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    };
    wait_until("instant-serve to listen", || serving(&mut server));
    let uri = nbd_uri("d1", &sock);
    qemu_io(&uri, &[format!("read -P 0x5a {} {BS}", SIZE - BS)]);
    let present = fs::read(s.path("local.present")).unwrap();
    let last = BLOCKS - 1;
    assert!(present[(last / 8) as usize] & (1 << (last % 8)) != 0, "the last block was read but is not present");
    let count: u32 = present.iter().map(|b| b.count_ones()).sum();
    eprintln!("{count} of {BLOCKS} blocks present when the last one was read");
    assert!(
        u64::from(count) < BLOCKS * 3 / 4,
        "{count} of {BLOCKS} blocks were present when the last was read: the read was not early"
    );

    proxy.set(Fault::None);
    let copy = s.path("copy.raw");
    let o = Command::new(paths::tool("nbdcopy")).arg(&uri).arg(&copy).output().unwrap();
    assert!(o.status.success(), "nbdcopy: {}", stderr(&o));
    let got = fs::read(&copy).unwrap();
    if let Some(block) = first_difference(&got, &point, BS) {
        panic!("the served disk differs from point 1 from block {block} on");
    }
    let all_present = || fs::read(s.path("local.present")).unwrap().iter().map(|b| b.count_ones()).sum::<u32>();
    wait_until("the background copy to finish", || u64::from(all_present()) == BLOCKS);
    drop(server);
    assert!(fs::read(s.path("local.img")).unwrap() == point, "the local copy is not point 1");
}

#[test]
fn s3_instant_recovery_serves_the_point_from_the_bucket() {
    let moto = Moto::start();
    instant_recovery_serves_the_point_from_the_bucket(moto.vars(), moto.port(), "s3://lb-instant/v", "lb-cf-in-s3-");
}

#[test]
fn azure_instant_recovery_serves_the_point_from_the_container() {
    let azurite = Azurite::start();
    let url = "az://devstoreaccount1/lb-instant/v";
    instant_recovery_serves_the_point_from_the_bucket(azurite.vars(), azurite.port(), url, "lb-cf-in-az-");
}

// ---------------------------------------------------------------------------
// 4. Two hosts, one bucket, a GC at once
// ---------------------------------------------------------------------------

/// Each host runs at least this many cycles, then more until the collector
/// has deleted something while cycles ran.
const MIN_CYCLES: usize = 5;

/// Blocks every cycle rewrites, and the only ones: each cycle's new pack
/// holds nothing else, so it is garbage once later cycles have rewritten
/// them and prune has removed the points that used it.
const HOT: u64 = 4;
/// Contents a hot block takes: variants below [`SHARED`] are the same on
/// both hosts, the others the host's own. Blocks come back to earlier
/// values, which some pack already holds — live, or garbage the collector
/// is about to delete — on this host or the other (one key: one block id
/// per contents).
const VARIANTS: u64 = 6;
const SHARED: u64 = 2;

fn variant(host: u64, block: u64, v: u64) -> Vec<u8> {
    let owner = if v < SHARED { 0 } else { host };
    Rng::new(1000 + owner * 1_000_000 + block * 16 + v).bytes(BS as usize)
}

/// What one host's thread saw.
#[derive(Debug, Default)]
struct Cycles {
    committed: usize,
    /// Cycles refused because a collection held the vault.
    refused: usize,
}

/// Runs cycles on `h` until it has run [`MIN_CYCLES`] and `enough` is set:
/// each rewrites the [`HOT`] blocks through the filter, then
/// ships, retrying a cycle the collector refused (its blocks must stay
/// dirty meanwhile).
fn cycle_while_gc_runs(h: &mut Host, seed: u64, enough: &AtomicBool) -> Cycles {
    let mut rng = Rng::new(seed);
    let mut seen = Cycles::default();
    let deadline = Instant::now() + LIMIT;
    while seen.committed < MIN_CYCLES || !enough.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the collector deleted nothing within {LIMIT:?}: {seen:?}");
        let writes: Vec<(u64, Vec<u8>)> = (0..HOT).map(|b| (b, variant(seed, b, rng.below(VARIANTS)))).collect();
        let pending = h.write(&writes);
        loop {
            let o = h.home.run(&["ship", "d1", "--once", "--json"]);
            if o.status.success() {
                let r = ShipReport::parse(&o.stdout);
                h.expected.insert(r.sequence, h.disk.clone());
                seen.committed += 1;
                break;
            }
            let err = stderr(&o);
            assert!(err.contains("cannot run now") && err.contains("gc"), "a cycle failed, not for a GC: {err}");
            seen.refused += 1;
            let dirty = h.home.dirty("d1");
            let lost: Vec<&u64> = pending.difference(&dirty.dirty_blocks).collect();
            assert!(lost.is_empty(), "a refused cycle lost dirty blocks {lost:?}");
            assert!(Instant::now() < deadline, "cycles refused for {LIMIT:?}: {seen:?}");
        }
    }
    seen
}

fn two_hosts_share_a_bucket_while_gc_runs(vars: Vars, url: &str, prefix: &str) {
    let s = Scratch::new(BIN, prefix);
    let b = make_bucket(&vars, url);
    let key = s.path("k.key");
    let home = |name: &str| Home::new(BIN, s.path(name)).with_env(&vars);
    let mut a = Host::new(&s, home("home-a"), "a", &key, url, 4 * MIB, 91);
    let mut bh = Host::new(&s, home("home-b"), "b", &key, url, 4 * MIB, 92);
    let site = home("home-site");
    // Host A's admin, pruning in the same home while its cycles run.
    let a_admin = home("home-a");
    assert_eq!(a.ship().sequence, 1);
    assert_eq!(bh.ship().sequence, 1);

    let enough = AtomicBool::new(false);
    let done = AtomicBool::new(false);
    let (gc_runs, gc_refused, gc_deleted) = (AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0));
    let (seen_a, seen_b) = std::thread::scope(|scope| {
        let collector = scope.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                // Host A's points older than a second go (the newest stays);
                // host B's are never pruned.
                a_admin.run_ok(&["prune", "d1", "--recent", "1s", "--hourly", "0"]);
                let o = site.run(&["vault", "gc", url]);
                if o.status.success() {
                    gc_runs.fetch_add(1, Ordering::SeqCst);
                    let text = stdout(&o);
                    let packs: u64 = text
                        .strip_prefix("deleted ")
                        .and_then(|t| t.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or_else(|| panic!("vault gc said: {text}"));
                    gc_deleted.fetch_add(packs, Ordering::SeqCst);
                    if packs > 0 {
                        enough.store(true, Ordering::SeqCst);
                    }
                } else {
                    let err = stderr(&o);
                    assert!(err.contains("cannot run now"), "vault gc failed, not for a cycle: {err}");
                    gc_refused.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let host_a = scope.spawn(|| cycle_while_gc_runs(&mut a, 93, &enough));
        let host_b = scope.spawn(|| cycle_while_gc_runs(&mut bh, 94, &enough));
        let seen = (host_a.join(), host_b.join());
        done.store(true, Ordering::SeqCst);
        collector.join().expect("the collector");
        (seen.0.expect("host A"), seen.1.expect("host B"))
    });
    eprintln!(
        "host A {seen_a:?}, host B {seen_b:?}; gc ran {} times ({} packs deleted), refused {} times",
        gc_runs.load(Ordering::SeqCst),
        gc_deleted.load(Ordering::SeqCst),
        gc_refused.load(Ordering::SeqCst)
    );
    a.stop_filter();
    bh.stop_filter();
    // Once more with nothing running, so that whatever garbage the cycles
    // left is judged too.
    site.run_ok(&["vault", "gc", url]);
    assert!(names(&b, Kind::Lease).is_empty(), "leases left: {:?}", names(&b, Kind::Lease));
    a.assert_vault_clean(url, "after the shared run");

    for (h, name, pruned) in [(&a, "A", true), (&bh, "B", false)] {
        let ids = h.point_ids();
        let shipped: Vec<u64> = h.expected.keys().copied().collect();
        if pruned {
            assert!(ids.iter().all(|id| shipped.contains(id)), "host {name} lists points never shipped: {ids:?}");
            assert_eq!(ids.last(), shipped.last(), "host {name}'s newest point is not its last cycle's");
        } else {
            assert_eq!(ids, shipped, "host {name}'s points (never pruned) are not those it shipped");
        }
        for id in ids {
            h.assert_restores(id, &format!("host {name}"));
        }
        assert!(h.expected.values().last() == Some(&h.disk), "host {name}: the last point is not the disk");
    }
}

#[test]
fn s3_two_hosts_share_a_bucket_while_gc_and_prune_run() {
    let moto = Moto::start();
    two_hosts_share_a_bucket_while_gc_runs(moto.vars(), "s3://lb-shared/v", "lb-cf-two-s3-");
}

#[test]
fn azure_two_hosts_share_a_container_while_gc_and_prune_run() {
    let azurite = Azurite::start();
    two_hosts_share_a_bucket_while_gc_runs(azurite.vars(), "az://devstoreaccount1/lb-shared/v", "lb-cf-two-az-");
}

/// The race the leases exist for, made deterministic: a cycle that has
/// built its block index (and found a block it needs in a pack no point
/// names any more) is held mid-upload by the proxy while `vault gc` runs.
/// The collection must refuse; if it ran, it would delete that pack and the
/// cycle would commit a point naming it.
fn a_gc_during_a_held_cycle_deletes_nothing_it_needs(vars: Vars, port: u16, url: &str, prefix: &str) {
    let s = Scratch::new(BIN, prefix);
    let b = make_bucket(&vars, url);
    let proxy = proxy_to(port);
    let home = Home::new(BIN, s.path("home")).with_env(&through(&proxy, &vars, port));
    let mut h = Host::new(&s, home, "d1", &s.path("k.key"), url, 4 * MIB, 111);
    let mut rng = Rng::new(112);
    let (x, y) = (rng.bytes(BS as usize), rng.bytes(BS as usize));
    assert_eq!(h.ship().sequence, 1);
    // Point 2 holds X in block 0, in a pack of its own; point 3 overwrites
    // it with Y.
    let packs = names(&b, Kind::Pack);
    h.write(&[(0, x.clone())]);
    assert_eq!(h.ship().sequence, 2);
    let pack_x = the_new_one(&packs, &names(&b, Kind::Pack), "pack of point 2");
    h.write(&[(0, y)]);
    assert_eq!(h.ship().sequence, 3);
    // Points 1 and 2 pruned (once a second old): X's pack is garbage.
    wait_until("prune to remove points 1 and 2", || {
        h.home.run_ok(&["prune", "d1", "--recent", "1s", "--hourly", "0"]);
        h.point_ids() == [3]
    });
    // Block 0 back to X (known, in the garbage pack), block 1 new: the
    // cycle is held 32 KiB into the new block's pack.
    h.write(&[(0, x), (1, rng.bytes(BS as usize))]);
    let up = proxy.up();
    proxy.set(Fault::StallAfterUp(32 * KIB));
    let mut ship = Reaped(h.home.spawn_ship("d1"));
    assert!(proxy.wait_up(up + 32 * KIB, LIMIT), "the cycle did not start its upload");
    // The collection runs elsewhere (an admin's home), its link to the
    // bucket direct.
    let admin = Home::new(BIN, s.path("admin")).with_env(&vars);
    let o = admin.run(&["vault", "gc", url]);
    let (_, err) = failed(&o, "vault gc while a cycle is held mid-upload");
    assert!(err.contains("cannot run now") && err.contains("replication cycle"), "{err}");
    assert!(names(&b, Kind::Pack).contains(&pack_x), "the refused gc deleted the pack the cycle needs");
    proxy.set(Fault::None);
    let status = wait_for(&mut ship, LIMIT, "the held cycle");
    let (mut out, mut err) = (Vec::new(), String::new());
    ship.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    ship.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "the held cycle failed: {err}");
    let r = ShipReport::parse(&out);
    h.expected.insert(r.sequence, h.disk.clone());
    // The guard: the cycle did take X from the garbage pack.
    assert_eq!((r.sequence, r.known_blocks, r.new_blocks), (4, 1, 1), "{r:?}");
    h.stop_filter();
    // Now X's pack is named by point 4: a collection keeps it.
    admin.run_ok(&["vault", "gc", url]);
    assert!(names(&b, Kind::Pack).contains(&pack_x), "gc deleted a pack point 4 names");
    h.assert_restores(4, "a point whose block a gc could have deleted");
    h.assert_vault_clean(url, "after the held cycle and a gc");
}

#[test]
fn s3_a_gc_during_a_held_cycle_deletes_nothing_it_needs() {
    let moto = Moto::start();
    a_gc_during_a_held_cycle_deletes_nothing_it_needs(moto.vars(), moto.port(), "s3://lb-held/v", "lb-cf-held-s3-");
}

#[test]
fn azure_a_gc_during_a_held_cycle_deletes_nothing_it_needs() {
    let azurite = Azurite::start();
    let url = "az://devstoreaccount1/lb-held/v";
    a_gc_during_a_held_cycle_deletes_nothing_it_needs(azurite.vars(), azurite.port(), url, "lb-cf-held-az-");
}

// ---------------------------------------------------------------------------
// A careless admin: wrong credentials mid-way
// ---------------------------------------------------------------------------

/// Azurite checks the shared-key signature of every request (moto checks
/// none, so this case has no S3 twin here).
#[test]
fn azure_wrong_credentials_fail_a_cycle_clearly_and_its_changes_stay_dirty() {
    let azurite = Azurite::start();
    let url = "az://devstoreaccount1/lb-creds/v";
    let s = Scratch::new(BIN, "lb-cf-creds-az-");
    make_bucket(&azurite.vars(), url);
    let home = Home::new(BIN, s.path("home")).with_env(&azurite.vars());
    let mut h = Host::new(&s, home, "d1", &s.path("k.key"), url, 4 * MIB, 101);
    assert_eq!(h.ship().sequence, 1);
    let written = h.write_random(&mut Rng::new(102), 3);
    h.stop_filter();
    // Another account's key (valid base64, 64 bytes), as after a rotation
    // the host was not told about.
    let wrong = format!("{}==", "Q".repeat(86));
    let o = h.home.run_env(&[("AZURE_STORAGE_ACCOUNT_KEY", wrong.as_str())], &["ship", "d1", "--once", "--json"]);
    let (_, err) = failed(&o, "a cycle with the wrong account key");
    assert!(err.contains(url) && err.contains("credentials"), "the error names neither the vault nor the cause: {err}");
    assert!(!err.contains(&wrong) && !err.contains(Azurite::KEY), "the error shows a secret: {err}");
    assert_eq!(h.point_ids(), [1]);
    let dirty = h.home.dirty("d1");
    assert!(written.is_subset(&dirty.dirty_blocks), "the failed cycle's blocks are not dirty: {dirty:?}");
    let r = h.ship();
    assert_eq!((r.sequence, r.new_blocks), (2, 3), "the next cycle did not ship the 3 blocks: {r:?}");
    h.assert_restores(2, "after the credentials were fixed");
}

// Seen failing. Each product change below was made behind an environment
// variable in a scratch build, the file run with the variable set, and the
// change reverted; every test named failed, at the assertion named.
//
// * Stale leases never recognised (`lease.rs` liveness always "live"):
//   both `*_a_cycle_killed_mid_upload_loses_nothing`, at "vault gc after
//   the kills" (the dead cycle's lease blocks it).
// * No CRC check of pack blobs in the keyless `vault check`: both
//   `*_damaged_and_missing_objects_*`, at "check (key: false) misses the
//   pack".
// * A root's sequence not checked against its name (`decode_root`): both
//   `*_damaged_and_missing_objects_*`, at "restore of a replayed root:
//   expected exit 1" (it restored point 2's disk as point 3).
// * A rolled-back vault taken as the recorded point (`chain::judge`): both
//   `*_rolled_back_*`, at "after a rollback the cycle must verify the whole
//   disk".
// * Instant recovery serving a block without fetching it: both
//   `*_instant_recovery_*`, at qemu-io's "Pattern verification failed" on
//   the last block.
// * GC and cycles not excluding each other (`begin_gc`, `begin_cycle`):
//   both `*_a_gc_during_a_held_cycle_*` every time, at "vault gc while a
//   cycle is held mid-upload: expected exit 1" (it deleted the pack);
//   `*_two_hosts_*` only once in six runs (the race is left to chance
//   there: that is why the held-cycle test exists).
// * The audit-links fix of the previous commit undone: both `*_two_hosts_*`,
//   at "vault check --read-data" (every pruned point of host A reported as
//   "point differs": host B's point of that sequence is there). This is how
//   that bug was found.
// * Test side: the wrong-credentials test given the right key fails at "a
//   cycle with the wrong account key: expected exit 1"; the kill test
//   with no `STAGE_DELAY` loses its staging and says so (3 runs of 4: "the
//   root landed before the link stalled", or "a point was listed" after a
//   kill meant to land before the root) instead of passing on a wrong stage.
