//! Replication end to end, through the real `lifeboat` binary and real NBD
//! clients (issue 3, "How it is proved"): the customer key file, shipping
//! while a writer keeps writing, shipping with the VM off, and a damaged
//! vault.
//!
//! * The key: `key new` writes a 0600 file; a key file others can read, a
//!   damaged one, a wrong or missing passphrase, or the key of another vault
//!   are refused with exit status 1 and a message saying what to do, and a
//!   refused command changes nothing in the vault.
//! * While a writer (Python on libnbd, queue depth 1) writes numbered records
//!   through the filter, `ship --once` runs several times; every point then
//!   restores to a crash-consistent image (one K explains every slot, and K
//!   fits the clock), and once the writer stops, the latest point is byte for
//!   byte `lifeboat snapshot`'s copy.
//! * With no filter running, `ship --once` reads the image itself; the
//!   restored point is the image.
//! * Each kind of damage to a copy of a two-point vault (a flipped bit in a
//!   pack, a page or a root; a truncated, deleted or swapped pack) makes
//!   `restore` fail naming the point, the object and the block, with no
//!   output file, and `vault check` (with and without the key) name the
//!   object.

// Test code for 64-bit hosts: offsets and sizes fit usize.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::{
    arg, assert_refused, copy_tree, first_difference, flip_bit, monotonic_ns, nbd_write, tree, History, Object,
    RecordWriter, PASSPHRASE_ENV, SLOT,
};
use vm_tests::Rng;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A scratch directory with a home driven by the binary cargo built.
fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-repl-")
}

fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

/// A protected disk replicated to a vault, with one point shipped.
struct Replicated {
    s: Scratch,
    key: PathBuf,
    vault: PathBuf,
    image: PathBuf,
}

fn replicated(name: &str, size: u64, seed: u64) -> Replicated {
    let s = scratch();
    let key = s.path("main.key");
    let vault = s.path("vault");
    let image = s.path("disk.img");
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, Rng::new(seed).bytes(size as usize)).unwrap();
    s.home.protect_replicated(name, &image, 64 * KIB, &vault, &key);
    let r = s.home.ship(name);
    assert_eq!((r.sequence, r.full), (1, true), "the first cycle is a full sync: {r:?}");
    Replicated { s, key, vault, image }
}

// ---------------------------------------------------------------------------
// The key
// ---------------------------------------------------------------------------

#[test]
fn key_file_is_private_and_one_others_can_read_is_refused() {
    let r = replicated("priv", 4 * MIB, 1);
    let home = &r.s.home;
    let mode = fs::metadata(&r.key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "`key new` wrote the key file with mode {mode:03o}");

    // `key new` never overwrites a key.
    let before = fs::read(&r.key).unwrap();
    let o = home.run_env(&[], &["key", "new", "--out", arg(&r.key)]);
    assert_refused(&o, "key new over an existing key", &[arg(&r.key)]);
    assert_eq!(fs::read(&r.key).unwrap(), before, "`key new` changed an existing key file");

    let vault_before = tree(&r.vault);
    let out = r.s.path("restored.img");
    let other_vault = r.s.path("vault2");
    for loose in [0o644, 0o640, 0o604] {
        set_mode(&r.key, loose);
        let what = format!("key file mode {loose:03o}");
        for args in [
            vec!["ship", "priv", "--once"],
            vec!["vault", "init", arg(&other_vault), "--key", arg(&r.key)],
            vec!["restore", "priv", "--out", arg(&out)],
            vec!["vault", "check", arg(&r.vault), "--read-data", "--key", arg(&r.key)],
            vec!["protect", "priv", "--image", arg(&r.image), "--vault", arg(&r.vault), "--key", arg(&r.key)],
            // The vault seals disk names: listing by name needs the key.
            vec!["points", "priv"],
        ] {
            let o = home.run_env(&[], &args);
            assert_refused(&o, &format!("{what}: {args:?}"), &[arg(&r.key), "chmod 600"]);
        }
        assert!(!other_vault.exists(), "{what}: `vault init` created a vault");
        assert!(!out.exists(), "{what}: `restore` wrote an image");
        assert_eq!(tree(&r.vault), vault_before, "{what}: a refused command changed the vault");
    }
    // The same file is accepted once it is private again.
    set_mode(&r.key, 0o600);
    assert_eq!(home.ship("priv").sequence, 2);
    assert_eq!(home.restore("priv", "latest", &out), fs::read(&r.image).unwrap());
}

#[test]
fn damaged_key_file_is_refused_as_damaged() {
    let r = replicated("dmg", 4 * MIB, 2);
    let home = &r.s.home;
    let good = fs::read(&r.key).unwrap();
    let vault_before = tree(&r.vault);
    let other_vault = r.s.path("vault2");
    let out = r.s.path("restored.img");
    // Magic, version, the key's bytes, the checksum at the end; then a
    // truncated file and an empty one.
    let len = good.len() as u64;
    let mut damages: Vec<(String, Vec<u8>)> = [0, 8, 72, 100, len - 1]
        .iter()
        .map(|&at| {
            let mut b = good.clone();
            b[at as usize] ^= 0x10;
            (format!("a flipped bit in byte {at}"), b)
        })
        .collect();
    damages.push(("the last 20 bytes missing".into(), good[..good.len() - 20].to_vec()));
    damages.push(("an empty file".into(), Vec::new()));
    for (what, bytes) in damages {
        fs::write(&r.key, &bytes).unwrap();
        for args in [
            vec!["key", "show", arg(&r.key)],
            vec!["vault", "init", arg(&other_vault), "--key", arg(&r.key)],
            vec!["ship", "dmg", "--once"],
            vec!["restore", "dmg", "--out", arg(&out)],
        ] {
            let o = home.run_env(&[], &args);
            assert_refused(&o, &format!("key file with {what}: {args:?}"), &[arg(&r.key), "damaged"]);
        }
        assert!(!other_vault.exists() && !out.exists(), "key file with {what}: something was created");
        assert_eq!(tree(&r.vault), vault_before, "key file with {what}: a refused command changed the vault");
    }
    fs::write(&r.key, &good).unwrap();
    assert_eq!(home.ship("dmg").sequence, 2, "the repaired key file must work again");
}

#[test]
fn passphrase_key_works_only_with_its_passphrase() {
    let sc = scratch();
    let home = &sc.home;
    let key = sc.path("pass.key");
    let pass = "correct horse battery staple";
    let right = [(PASSPHRASE_ENV, pass)];

    // --passphrase with no passphrase to take writes nothing.
    let o = home.run_env(&[], &["key", "new", "--passphrase", "--out", arg(&key)]);
    assert_refused(&o, "key new --passphrase without the variable", &[PASSPHRASE_ENV]);
    assert!(!key.exists(), "a key file was written without a passphrase");

    let o = home.run_env(&right, &["key", "new", "--passphrase", "--out", arg(&key)]);
    assert!(o.status.success(), "key new --passphrase: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600, "mode of a passphrase key file");
    let fp = home.key_show(&key, &right);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&fp), "key new printed another fingerprint than {fp}");
    assert!(
        !fs::read(&key).unwrap().windows(pass.len()).any(|w| w == pass.as_bytes()),
        "the passphrase is in the file"
    );

    let missing: [(&str, &str); 0] = [];
    let wrong = [(PASSPHRASE_ENV, "correct horse battery stapler")];
    let o = home.run_env(&missing, &["key", "show", arg(&key)]);
    assert_refused(&o, "key show without the passphrase", &[arg(&key), PASSPHRASE_ENV]);
    let o = home.run_env(&wrong, &["key", "show", arg(&key)]);
    assert_refused(&o, "key show with a wrong passphrase", &[arg(&key), "wrong passphrase"]);

    // The whole round trip with the passphrase.
    let vault = sc.path("vault");
    let o = home.run_env(&right, &["vault", "init", arg(&vault), "--key", arg(&key)]);
    assert!(o.status.success(), "vault init: {}", String::from_utf8_lossy(&o.stderr));
    let o = home.run_env(&wrong, &["vault", "init", arg(&sc.path("v2")), "--key", arg(&key)]);
    assert_refused(&o, "vault init with a wrong passphrase", &["wrong passphrase"]);
    assert!(!sc.path("v2").exists(), "vault init with a wrong passphrase created a vault");
    let image = sc.path("disk.img");
    fs::write(&image, Rng::new(3).bytes((3 * MIB) as usize)).unwrap();
    let protect = ["protect", "pp", "--image", arg(&image), "--vault", arg(&vault), "--key", arg(&key)];
    assert_refused(&home.run_env(&wrong, &protect), "protect with a wrong passphrase", &["wrong passphrase"]);
    assert!(home.run_env(&right, &protect).status.success(), "protect with the passphrase");
    let before = tree(&vault);
    let out = sc.path("restored.img");
    for (env, why) in [(&missing[..], PASSPHRASE_ENV), (&wrong[..], "wrong passphrase")] {
        assert_refused(&home.run_env(env, &["ship", "pp", "--once"]), &format!("ship ({why})"), &[why]);
        let o = home.run_env(env, &["restore", "pp", "--out", arg(&out)]);
        assert_refused(&o, &format!("restore ({why})"), &[why]);
        assert!(!out.exists(), "restore ({why}) wrote an image");
        assert_eq!(tree(&vault), before, "ship ({why}) changed the vault");
    }
    let o = home.run_env(&right, &["ship", "pp", "--once"]);
    assert!(o.status.success(), "ship with the passphrase: {}", String::from_utf8_lossy(&o.stderr));
    let o = home.run_env(&right, &["restore", "pp", "--out", arg(&out)]);
    assert!(o.status.success(), "restore with the passphrase: {}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&out).unwrap() == fs::read(&image).unwrap(), "the restored image differs from the disk");
}

#[test]
fn another_key_is_refused_naming_both_fingerprints() {
    let r = replicated("mine", 4 * MIB, 4);
    let home = &r.s.home;
    let fp1 = home.key_show(&r.key, &[]);
    let other = r.s.path("other.key");
    let fp2 = home.key_new(&other);
    assert_ne!(fp1, fp2, "two new keys have the same fingerprint");

    let vault_before = tree(&r.vault);
    let config = home.dir.join("disks/mine/disk.toml");
    let config_before = fs::read(&config).unwrap();
    let out = r.s.path("restored.img");
    let both = [fp1.as_str(), fp2.as_str()];
    let o = home
        .run_env(&[], &["protect", "mine", "--image", arg(&r.image), "--vault", arg(&r.vault), "--key", arg(&other)]);
    assert_refused(&o, "protect an already protected disk with another key", &both);
    assert_eq!(fs::read(&config).unwrap(), config_before, "a refused protect changed the disk's config");

    let image2 = r.s.path("disk2.img");
    fs::write(&image2, [1u8; 65536]).unwrap();
    let o =
        home.run_env(&[], &["protect", "new", "--image", arg(&image2), "--vault", arg(&r.vault), "--key", arg(&other)]);
    assert_refused(&o, "protect a new disk with another key", &both);
    assert!(!home.dir.join("disks/new").exists(), "a refused protect created the disk");

    let o = home.run_env(&[], &["restore", "mine", "--out", arg(&out), "--key", arg(&other)]);
    assert_refused(&o, "restore with another key", &both);
    assert!(!out.exists(), "restore with another key wrote an image");
    let o = home.run_env(&[], &["restore", "mine", "--out", arg(&out), "--key", arg(&other), "--vault", arg(&r.vault)]);
    assert_refused(&o, "restore --vault --key with another key", &both);
    let o = home.run_env(&[], &["vault", "check", arg(&r.vault), "--read-data", "--key", arg(&other)]);
    assert_refused(&o, "vault check --read-data with another key", &both);
    let o = home.run_env(&[], &["vault", "init", arg(&r.vault), "--key", arg(&other)]);
    assert_refused(&o, "vault init over an existing vault", &["already"]);

    assert_eq!(tree(&r.vault), vault_before, "a refused command changed the vault");
    assert_eq!(home.restore("mine", "latest", &out), fs::read(&r.image).unwrap(), "the right key still restores");
}

// ---------------------------------------------------------------------------
// Shipping while a writer writes
// ---------------------------------------------------------------------------

#[test]
fn points_shipped_while_writing_are_crash_consistent_and_the_last_is_exact() {
    let sc = scratch();
    let home = &sc.home;
    let size = 24 * MIB + 4 * KIB; // not a multiple of the block size
    let nslots = size / SLOT;
    let image = sc.path("disk.img");
    fs::write(&image, History::original_image(nslots)).unwrap();
    let (key, vault) = (sc.path("k.key"), sc.path("vault"));
    home.key_new(&key);
    home.vault_init(&vault, &key);
    home.protect_replicated("busy", &image, 64 * KIB, &vault, &key);
    let sock = sc.path("b.sock");
    let filter = home.filter("busy", &sock);

    let mut writer = RecordWriter::spawn(sc.dir(), &nbd_uri("busy", &sock), nslots, 7);
    writer.wait_acked(100, Duration::from_secs(60));
    let mut shipped = Vec::new();
    for round in 1..=3u64 {
        let (t0, wall0) = (monotonic_ns(), std::time::SystemTime::now());
        let r = home.ship("busy");
        let (t1, wall1) = (monotonic_ns(), std::time::SystemTime::now());
        assert_eq!((r.sequence, r.full), (round, round == 1), "cycle {round}: {r:?}");
        let points = home.points("busy");
        assert_eq!(points.iter().map(|p| p.id).collect::<Vec<_>>(), (1..=round).collect::<Vec<_>>(), "points");
        let p = points.last().unwrap();
        let ns = |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        assert!(
            ns(wall0) <= p.cut_time_ns && p.cut_time_ns <= ns(wall1),
            "point {round}'s cut time is not within its cycle: {p:?}"
        );
        assert_eq!(p.consistency, "crash-consistent", "{p:?}");
        assert_eq!(p.disk_size, size, "{p:?}");
        assert!(p.cut_time.starts_with("20") && p.cut_time.ends_with('Z'), "cut_time is not RFC 3339 UTC: {p:?}");
        let copy = home.restore("busy", &round.to_string(), &sc.path(&format!("point{round}.img")));
        shipped.push((round, copy, t0, t1));
        let n = writer.acked() + 150;
        writer.wait_acked(n, Duration::from_secs(60));
    }
    let recs = writer.stop();

    // The VM is idle: the next point is exactly the disk.
    let last = home.ship("busy");
    assert_eq!((last.sequence, last.full), (4, false), "{last:?}");
    let snap = home.snapshot("busy", &sc.path("snap.img"));
    let restored = home.restore("busy", "latest", &sc.path("latest.img"));
    assert!(
        restored == snap,
        "the latest point differs from the snapshot taken after it, first at block {:?}",
        first_difference(&restored, &snap, 64 * KIB)
    );
    filter.stop();
    assert!(restored == fs::read(&image).unwrap(), "the latest point differs from the image");

    let history = History::new(recs, nslots);
    let (lo, hi) = history.explain(&restored, "the latest point");
    let all = history.recs.len() as i64 - 1;
    assert!(lo <= all && all <= hi, "the latest point does not hold every record ({lo}..={hi}, {all} written)");
    let mut previous = -1i64;
    let mut written_during = 0;
    for (id, copy, t0, t1) in &shipped {
        let what = format!("point {id}, shipped while writing");
        let (lo, hi) = history.explain(copy, &what);
        let (must_in, must_out) = history.clock_bounds(*t0, *t1);
        let (k_lo, k_hi) = (lo.max(must_in), hi.min(must_out - 1));
        assert!(
            k_lo <= k_hi,
            "{what}: its content fits cuts {lo}..={hi}, but the cycle ran while records {}..{must_out} were written",
            must_in + 1
        );
        assert!(k_lo > previous, "{what}: not later than the point before it");
        previous = k_lo;
        assert!(copy != &restored, "{what}: identical to the final disk, so no write followed its cut");
        written_during += history.recs.iter().filter(|r| r.t_ack > *t0 && r.t_issue < *t1).count();
        // An older point still restores the same after later points shared its pages.
        let again = home.restore("busy", &id.to_string(), &sc.path("again.img"));
        assert!(&again == copy, "{what}: restores differently after later points were shipped");
        eprintln!("{what}: cut after record {k_lo}..={k_hi}");
    }
    assert!(written_during > 0, "no record was written while a cycle ran: the test proved nothing");
}

// ---------------------------------------------------------------------------
// Shipping with the VM off
// ---------------------------------------------------------------------------

#[test]
fn ship_with_no_filter_reads_the_image_and_restores_it_exactly() {
    let sc = scratch();
    let home = &sc.home;
    let bs = 64 * KIB;
    let size = 20 * MIB + 20 * KIB; // a short last block
    let blocks = size.div_ceil(bs);
    let image = sc.path("disk.img");
    let mut rng = Rng::new(5);
    let mut disk = rng.bytes(size as usize);
    // Zero blocks are skipped and restored sparse, and still read as zeros.
    let zero_blocks: BTreeSet<u64> = [3, 4, 5, 100, blocks - 1].into();
    for &b in &zero_blocks {
        let end = ((b + 1) * bs).min(size);
        disk[(b * bs) as usize..end as usize].fill(0);
    }
    fs::write(&image, &disk).unwrap();
    let (key, vault) = (sc.path("k.key"), sc.path("vault"));
    home.key_new(&key);
    home.vault_init(&vault, &key);
    home.protect_replicated("off", &image, bs, &vault, &key);
    // Written before the first cycle, not through a filter: the full sync reads it.
    let patch = rng.bytes((3 * bs) as usize);
    disk[(10 * bs) as usize..(13 * bs) as usize].copy_from_slice(&patch);
    fs::write(&image, &disk).unwrap();

    let r = home.ship("off");
    assert_eq!((r.sequence, r.full, r.blocks_read), (1, true, blocks), "{r:?}");
    assert_eq!(r.cached_blocks, 0, "a full cycle reads the device, not the page cache: {r:?}");
    assert_eq!(r.zero_blocks, zero_blocks.len() as u64, "{r:?}");
    let one = home.restore("off", "latest", &sc.path("one.img"));
    assert!(one == disk, "point 1 differs from the image at block {:?}", first_difference(&one, &disk, bs));
    assert!(home.dirty("off").dirty_blocks.is_empty(), "blocks are still dirty after a committed cycle");

    // The VM runs and writes, then stops: the next cycle ships only its writes.
    let sock = sc.path("o.sock");
    let filter = home.filter("off", &sock);
    let uri = nbd_uri("off", &sock);
    qemu_io(&uri, &["write -P 0x5a 131072 70000", "write -z 6553600 65536", "write -P 0x11 20971520 20480"]);
    filter.stop();
    let touched: BTreeSet<u64> = [2, 3, 100, blocks - 1].into();
    assert_eq!(home.dirty("off").dirty_blocks, touched, "dirty after the VM stopped");
    let two = home.ship("off");
    assert_eq!((two.sequence, two.full, two.blocks_read), (2, false, touched.len() as u64), "{two:?}");
    // Blocks 2, 3 and the last were just written through the page cache
    // (block 100 was zeroed with fallocate, which may leave it uncached):
    // an incremental cycle reads them from there.
    assert!(two.cached_blocks >= 3, "{two:?}");
    assert!(home.dirty("off").dirty_blocks.is_empty(), "blocks are still dirty after an offline cycle");
    let now = fs::read(&image).unwrap();
    assert!(now != disk, "the VM's writes did not reach the image");
    let latest = home.restore("off", "latest", &sc.path("two.img"));
    assert!(latest == now, "point 2 differs from the image at block {:?}", first_difference(&latest, &now, bs));
    assert!(home.restore("off", "1", &sc.path("one-again.img")) == disk, "point 1 changed after point 2");
    // The offline cycle released the disk: a filter can serve it again.
    home.filter("off", &sock).stop();
}

// ---------------------------------------------------------------------------
// A damaged vault
// ---------------------------------------------------------------------------

const DISK: &str = "dmg";
/// The one block point 2 changes, so its pack holds a single blob.
const CHANGED: u64 = 77;

/// A vault with two points of a 24 MiB disk: point 1 a full sync, point 2
/// one changed block, in its own pack and page.
struct TwoPoints {
    s: Scratch,
    key: PathBuf,
    vault: PathBuf,
    images: [Vec<u8>; 2],
    packs: [String; 2],
    pages: [String; 2],
}

fn two_points() -> TwoPoints {
    let s = scratch();
    let bs = 64 * KIB;
    let (key, vault, image) = (s.path("k.key"), s.path("vault"), s.path("disk.img"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    let mut rng = Rng::new(6);
    fs::write(&image, rng.bytes((24 * MIB) as usize)).unwrap();
    s.home.protect_replicated(DISK, &image, bs, &vault, &key);
    s.home.ship(DISK);
    let (packs1, pages1) = (Object::Pack.list(&vault), Object::Page.list(&vault));
    assert_eq!((packs1.len(), pages1.len()), (1, 1), "point 1 of a 24 MiB disk: one pack, one page");
    let image1 = fs::read(&image).unwrap();

    let sock = s.path("d.sock");
    let filter = s.home.filter(DISK, &sock);
    nbd_write(s.dir(), &nbd_uri(DISK, &sock), &[(CHANGED * bs, &rng.bytes(bs as usize))]);
    filter.stop();
    let r = s.home.ship(DISK);
    assert_eq!((r.sequence, r.new_blocks), (2, 1), "{r:?}");
    let new_packs: Vec<String> = Object::Pack.list(&vault).difference(&packs1).cloned().collect();
    let new_pages: Vec<String> = Object::Page.list(&vault).difference(&pages1).cloned().collect();
    assert_eq!((new_packs.len(), new_pages.len()), (1, 1), "point 2: one new pack and page");
    let image2 = fs::read(&image).unwrap();
    assert_ne!(image1, image2);
    TwoPoints {
        images: [image1, image2],
        packs: [packs1.into_iter().next().unwrap(), new_packs[0].clone()],
        pages: [pages1.into_iter().next().unwrap(), new_pages[0].clone()],
        s,
        key,
        vault,
    }
}

impl TwoPoints {
    /// A fresh copy of the vault, to damage.
    fn copy(&self, label: &str) -> PathBuf {
        let dir = self.s.path(&format!("vault-{label}"));
        copy_tree(&self.vault, &dir);
        dir
    }

    /// Runs `restore --point POINT` of the test disk from `vault` into `out`.
    fn restore_cmd(&self, vault: &Path, point: u64, out: &Path, extra: &[&str]) -> std::process::Output {
        let point = point.to_string();
        let mut args = vec!["restore", DISK, "--point", &point, "--out", arg(out), "--key", arg(&self.key)];
        args.extend(["--vault", arg(vault)]);
        args.extend(extra);
        self.s.home.run_env(&[], &args)
    }

    /// `restore --point POINT` from `vault` must fail naming the point and
    /// every one of `names`, and — if `block` is given — that block index; it
    /// must leave no file behind. Returns the message.
    fn restore_refused(&self, vault: &Path, point: u64, names: &[String], block: Option<u64>, what: &str) -> String {
        let before: BTreeSet<_> = fs::read_dir(self.s.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        let o = self.restore_cmd(vault, point, &self.s.path("restored.img"), &[]);
        let label = format!("point {DISK}/{point}");
        let mut needles: Vec<&str> = vec![&label];
        needles.extend(names.iter().map(String::as_str));
        let block_label = block.map(|b| format!(", block {b}:"));
        needles.extend(block_label.as_deref());
        let err = assert_refused(&o, &format!("{what}: restore --point {point}"), &needles);
        let after: BTreeSet<_> = fs::read_dir(self.s.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(before, after, "{what}: a refused restore left a file behind");
        err
    }

    /// `vault check` on `vault`, without and with the key, must fail and
    /// report every one of `names`.
    fn check_reports(&self, vault: &Path, names: &[String], keyless: bool, what: &str) {
        let mut runs =
            vec![("--read-data --key", vec!["vault", "check", arg(vault), "--read-data", "--key", arg(&self.key)])];
        if keyless {
            runs.push(("without the key", vec!["vault", "check", arg(vault)]));
        }
        // Without the key a point is named by its chain (a keyed id of the
        // disk: the vault does not know the disk's name).
        let chain = self.s.home.chain(DISK);
        for (how, args) in runs {
            let o = self.s.home.run_env(&[], &args);
            let report = String::from_utf8_lossy(&o.stdout);
            assert_eq!(o.status.code(), Some(1), "{what}: `vault check` {how} exit status {}:\n{report}", o.status);
            for n in names {
                let n = match how {
                    "without the key" => n.replace(&format!("point {DISK}/"), &format!("point {chain}/")),
                    _ => n.clone(),
                };
                assert!(
                    report.lines().any(|l| l.starts_with("PROBLEM") && l.contains(n.as_str())),
                    "{what}: `vault check` {how} reports no problem naming {n}:\n{report}"
                );
            }
        }
    }

    /// Point `point` restores from `vault` to exactly its image.
    fn restores(&self, vault: &Path, point: u64, what: &str) {
        let out = self.s.path("intact.img");
        let o = self.restore_cmd(vault, point, &out, &["--force"]);
        assert!(
            o.status.success(),
            "{what}: intact point {point} does not restore: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(
            fs::read(&out).unwrap() == self.images[point as usize - 1],
            "{what}: point {point} restores wrong data"
        );
        fs::remove_file(&out).unwrap();
    }
}

#[test]
fn flipped_bit_in_a_pack_is_named_by_restore_and_check() {
    let t = two_points();
    let v = t.copy("pack-bit");
    let pack = Object::Pack.path(&v, &t.packs[1]);
    // The pack is header, one blob, index, trailer: the middle is inside the blob.
    flip_bit(&pack, fs::metadata(&pack).unwrap().len() / 2, 3);
    let named = [Object::Pack.label(&t.packs[1])];
    t.restore_refused(&v, 2, &named, Some(CHANGED), "a flipped bit in point 2's pack");
    t.check_reports(&v, &named, true, "a flipped bit in point 2's pack");
    t.restores(&v, 1, "a flipped bit in point 2's pack");
}

#[test]
fn truncated_pack_is_named_by_restore_and_check() {
    let t = two_points();
    for cut in [1u64, 64, 1000] {
        let v = t.copy(&format!("pack-short-{cut}"));
        let pack = Object::Pack.path(&v, &t.packs[1]);
        let f = fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.set_len(f.metadata().unwrap().len() - cut).unwrap();
        let what = format!("point 2's pack {cut} bytes short");
        let named = [Object::Pack.label(&t.packs[1])];
        t.restore_refused(&v, 2, &named, Some(CHANGED), &what);
        t.check_reports(&v, &named, true, &what);
        t.restores(&v, 1, &what);
    }
}

#[test]
fn deleted_pack_is_reported_by_restore_and_check() {
    let t = two_points();
    let v = t.copy("pack-gone");
    fs::remove_file(Object::Pack.path(&v, &t.packs[1])).unwrap();
    // Nothing names a pack but its file, so the block it held is what is missing.
    let what = "point 2's pack deleted";
    let err = t.restore_refused(&v, 2, &[], Some(CHANGED), what);
    assert!(err.contains("missing"), "{what}: restore does not say the block is missing:\n{err}");
    t.check_reports(&v, &[format!("(point {DISK}/2, block {CHANGED})")], true, what);
    t.restores(&v, 1, what);
}

#[test]
fn swapped_packs_are_named_by_restore_and_check() {
    let t = two_points();
    let v = t.copy("pack-swap");
    let (a, b) = (Object::Pack.path(&v, &t.packs[0]), Object::Pack.path(&v, &t.packs[1]));
    let (da, db) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
    fs::write(&a, db).unwrap();
    fs::write(&b, da).unwrap();
    let what = "the two points' packs swapped";
    for point in [1, 2] {
        let err = t.restore_refused(&v, point, &[], None, what);
        assert!(
            t.packs.iter().any(|p| err.contains(&Object::Pack.label(p))),
            "{what}: restore of point {point} names neither pack:\n{err}"
        );
    }
    let both: Vec<String> = t.packs.iter().map(|p| Object::Pack.label(p)).collect();
    t.check_reports(&v, &both, true, what);
}

#[test]
fn flipped_bit_in_a_map_page_is_named_by_restore_and_check() {
    let t = two_points();
    // A block id entry near the start, and one near the end of the page.
    for at in [40u64, 4000] {
        let v = t.copy(&format!("page-bit-{at}"));
        let page = Object::Page.path(&v, &t.pages[1]);
        flip_bit(&page, at.min(fs::metadata(&page).unwrap().len() - 1), 0);
        let what = format!("a flipped bit in byte {at} of point 2's map page");
        let named = [Object::Page.label(&t.pages[1])];
        t.restore_refused(&v, 2, &named, None, &what);
        t.check_reports(&v, &named, true, &what);
        t.restores(&v, 1, &what);
    }
}

#[test]
fn flipped_bit_in_a_root_is_named_by_restore_and_check() {
    let t = two_points();
    let root = t.s.home.root_name(DISK, 2);
    let named = [Object::Root.label(&root)];
    let len = fs::metadata(Object::Root.path(&t.vault, &root)).unwrap().len();
    // (offset, what it hits, whether a keyless check can see it): a root is
    // MACed, not named by its hash, so without the key only a change that
    // breaks its structure or its name shows.
    for (at, field, keyless) in [
        (10, "consistency", true),
        (96, "sequence", true),
        (104, "cut time", false),
        (150, "parent id", false),
        (len - 1, "MAC", false),
    ] {
        let v = t.copy(&format!("root-bit-{at}"));
        flip_bit(&Object::Root.path(&v, &root), at, 0);
        let what = format!("a flipped bit in point 2's root ({field}, byte {at})");
        t.restore_refused(&v, 2, &named, None, &what);
        // `latest` must not quietly fall back to point 1.
        let o = t.s.home.run_env(
            &[],
            &["restore", DISK, "--out", arg(&t.s.path("latest.img")), "--key", arg(&t.key), "--vault", arg(&v)],
        );
        assert_refused(&o, &format!("{what}: restore --point latest"), &[&named[0]]);
        assert!(!t.s.path("latest.img").exists(), "{what}: restore latest wrote an image");
        t.check_reports(&v, &named, keyless, &what);
    }
}

/// Regression test for issue 3: damage to one point's root must not make the
/// other points unlistable and unrestorable (`points` and `restore` read every
/// root first; `ship` reads the latest one with the key and stops for good).
#[test]
fn issue3_a_damaged_root_leaves_the_other_points_restorable() {
    let t = two_points();
    let v = t.copy("root-damaged");
    flip_bit(&Object::Root.path(&v, &t.s.home.root_name(DISK, 2)), 10, 0);
    t.restores(&v, 1, "point 2's root damaged");
    let o = t.s.home.run_env(&[], &["points", DISK, "--vault", arg(&v)]);
    assert!(o.status.success(), "`points` fails when one root is damaged: {}", String::from_utf8_lossy(&o.stderr));
}

/// Regression test for issue 3: `vault check` without the key must see a
/// flipped bit anywhere in a root that a later root names by hash (its
/// `parent`), as it does for packs and pages.
#[test]
fn issue3_keyless_check_verifies_roots_against_their_childs_parent_id() {
    let t = two_points();
    let root = t.s.home.root_name(DISK, 1);
    let len = fs::metadata(Object::Root.path(&t.vault, &root)).unwrap().len();
    for at in [104, len - 1] {
        let v = t.copy(&format!("root1-bit-{at}"));
        flip_bit(&Object::Root.path(&v, &root), at, 0);
        t.check_reports(&v, &[Object::Root.label(&root)], true, &format!("a flipped bit in point 1's root, byte {at}"));
    }
}

/// Retention end to end: `prune` drops every point but the newest under a
/// ladder that keeps nothing older, `vault gc` then frees the packs only the
/// pruned point used, and the newest point still restores exactly with a
/// clean keyed scrub.
#[test]
fn prune_then_gc_frees_old_points_and_keeps_the_newest_exact() {
    let sc = scratch();
    let home = &sc.home;
    let (bs, size) = (64 * KIB, 4 * MIB);
    let image = sc.path("disk.img");
    let mut rng = Rng::new(11);
    fs::write(&image, rng.bytes(size as usize)).unwrap();
    let (key, vault) = (sc.path("k.key"), sc.path("vault"));
    home.key_new(&key);
    home.vault_init(&vault, &key);
    home.protect_replicated("pr", &image, bs, &vault, &key);
    home.ship("pr");
    // Every block changes (random data: nothing dedups with point 1); a
    // reset state makes the next cycle read and verify the whole disk.
    let two = rng.bytes(size as usize);
    fs::write(&image, &two).unwrap();
    let conf = sc.path("home/disks/pr/disk.toml");
    let id_line = |c: &str| c.lines().find(|l| l.starts_with("disk_id")).unwrap_or_default().to_string();
    let before_reset = fs::read_to_string(&conf).unwrap();
    let o = home.run_env(&[], &["protect", "pr", "--image", arg(&image), "--reset-state"]);
    assert!(o.status.success(), "protect --reset-state: {}", String::from_utf8_lossy(&o.stderr));
    let after_reset = fs::read_to_string(&conf).unwrap();
    assert_eq!(id_line(&after_reset), id_line(&before_reset), "--reset-state changed the disk's identity");
    assert!(after_reset.contains("[replication]"), "--reset-state dropped the replication settings:\n{after_reset}");
    assert!(home.ship("pr").full);
    assert_eq!(home.points("pr").iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 2]);
    let bytes = |v: &Path| tree(v).values().map(|(size, _)| size).sum::<u64>();

    std::thread::sleep(Duration::from_millis(1100)); // both points now older than --recent 1s
    let o = home.run_env(&[], &["prune", "pr", "--recent", "1s", "--hourly", "0"]);
    assert!(o.status.success(), "prune: {}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(home.points("pr").iter().map(|p| p.id).collect::<Vec<_>>(), vec![2], "the newest point is kept");
    let before = bytes(&vault);
    let dry = home.run_env(&[], &["vault", "gc", arg(&vault), "--dry-run"]);
    assert!(dry.status.success() && bytes(&vault) == before, "a dry run deletes nothing");
    let o = home.run_env(&[], &["vault", "gc", arg(&vault)]);
    assert!(o.status.success(), "gc: {}", String::from_utf8_lossy(&o.stderr));
    let after = bytes(&vault);
    assert!(before - after >= size - size / 8, "gc freed {} of the ~{size} bytes only point 1 used", before - after);

    assert!(home.restore("pr", "latest", &sc.path("two.img")) == two, "point 2 no longer restores exactly");
    let o = home.run_env(&[], &["restore", "pr", "--point", "1", "--out", arg(&sc.path("one.img"))]);
    assert!(!o.status.success() && !sc.path("one.img").exists(), "a pruned point must not restore");
    let o = home.run_env(&[], &["vault", "check", arg(&vault), "--read-data", "--key", arg(&key)]);
    assert!(o.status.success(), "scrub after gc: {}", String::from_utf8_lossy(&o.stdout));
}

/// A recovery site's scheduled collection on a vault its hosts replicate to
/// continuously: `vault gc` refuses at once while a cycle holds the vault,
/// naming the cycle, and deletes nothing; `vault gc --wait` says what it
/// waits for, deletes nothing while the cycle runs, and collects as soon as
/// the cycle ends; a wait that runs out is refused naming how long it waited.
/// The cycle is a real cycle lease (`Vault::begin_cycle`), taken by this
/// process, so it is live until dropped.
#[test]
fn gc_waits_for_the_cycle_in_its_way_and_collects_in_the_gap() {
    use std::io::{BufRead, BufReader};
    let t = two_points();
    let home = &t.s.home;
    // Point 2 gone (as prune would drop it): its one pack and page are garbage.
    fs::remove_file(Object::Root.path(&t.vault, &home.root_name(DISK, 2))).unwrap();
    let garbage = [Object::Pack.path(&t.vault, &t.packs[1]), Object::Page.path(&t.vault, &t.pages[1])];
    let v = vault::Vault::open(Box::new(vault::LocalBackend::open(&t.vault).unwrap())).unwrap();
    let cycle = v.begin_cycle("d0").unwrap();

    let o = home.run(&["vault", "gc", arg(&t.vault)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("cycle/d0"), "gc beside a cycle: {err}");
    assert!(garbage.iter().all(|p| p.exists()), "a refused gc deleted something");

    let o = home.run(&["vault", "gc", arg(&t.vault), "--wait", "1s"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("after waiting 1s") && err.contains("cycle/d0"), "{err}");
    assert!(garbage.iter().all(|p| p.exists()), "a gc whose wait ran out deleted something");

    let mut gc = home
        .command()
        .args(["vault", "gc", arg(&t.vault), "--wait", "10m"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(gc.stderr.take().unwrap()).lines();
    let first = lines.next().expect("gc --wait said nothing").unwrap();
    assert!(first.contains("waiting up to 600s") && first.contains("cycle/d0"), "{first}");
    assert!(garbage.iter().all(|p| p.exists()), "gc --wait deleted something while the cycle ran");
    assert!(gc.try_wait().unwrap().is_none(), "gc --wait ended while the cycle still held the vault");
    drop(cycle);
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let o = gc.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "gc --wait after the cycle: {rest:?}");
    assert!(out.contains("deleted 1 packs") && out.contains("and 1 pages"), "{out}");
    assert!(garbage.iter().all(|p| !p.exists()), "gc --wait left the garbage");
    assert_eq!(home.restore(DISK, "1", &t.s.path("one.img")), t.images[0], "point 1 after gc");
}

#[test]
fn ship_names_the_disk_when_the_process_serving_it_hangs_up_at_once() {
    // A peer on the disk's control socket that closes every connection
    // before the cycle starts (a filter dying at that moment, or something
    // else bound to the path): the error names the disk, the vault is
    // untouched, and a later cycle ships normally.
    let r = replicated("hup", MIB, 21);
    let sock = r.s.path("home/disks/hup/control.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let peer = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        drop(conn);
    });
    let before = tree(&r.vault);
    let o = r.s.home.run(&["ship", "hup", "--once"]);
    peer.join().unwrap();
    assert_refused(&o, "ship through a peer that hangs up", &["\"hup\"", "marked dirty"]);
    assert_eq!(tree(&r.vault), before, "a cycle that never started changed the vault");
    fs::remove_file(&sock).unwrap();
    let next = r.s.home.ship("hup");
    assert_eq!(next.sequence, 2, "{next:?}");
}
