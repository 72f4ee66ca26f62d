//! Restore and check against a small vault built the way the shipper builds
//! one (see `common`), then damaged in every way issue 3 lists: a flipped
//! bit, a truncated, deleted or swapped pack, a deleted page, roots swapped
//! between disks or points, the wrong key. Each damage must be refused with
//! its place named (point, block, object), and `check` must report it.
//!
//! Two disks: `web` (1100 blocks of 4 KiB, the last one short; three map
//! pages; packs of 64 blobs; point 2 rewrites blocks 10..30 and zeroes block
//! 5, sharing map pages 1 and 2 with point 1) and `db` (100 blocks of 16 KiB;
//! packs of 40 blobs; point 2 rewrites 30 of point 1's 40 blocks, so restoring
//! it reads only a quarter of point 1's pack, by ranges).
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;

use common::{master, new_vault, other_master, Disk, Rng};
use disk_format::{Keys, PackId, PageId, VaultConfig};
use vault::{BlockIndex, Damage, Kind, LocalBackend, Problem, Vault, VaultError};

struct Fixture {
    dir: tempfile::TempDir,
    vault: Vault,
    keys: Keys,
    web: Disk,
    /// web's image at points 1 and 2.
    web_images: [Vec<u8>; 2],
    db_images: [Vec<u8>; 2],
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let keys = master().keys();
    let mut index = BlockIndex::new();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    let mut web = Disk::new("web", 1100 * 4096 - 1000, 4096, 64);
    let mut changed = Vec::new();
    for b in (0..600).filter(|b| b % 7 != 6) {
        rng.fill(web.block_mut(b));
        changed.push(b);
    }
    for b in 700..720 {
        let same = web.block(3).to_vec(); // deduplicated: one blob, 21 blocks
        web.block_mut(b).copy_from_slice(&same);
        changed.push(b);
    }
    rng.fill(web.block_mut(1099)); // the short last block
    changed.push(1099);
    assert_eq!(web.ship(&vault, &keys, &mut index, &changed), 1);
    let web1 = web.image.clone();
    let mut changed: Vec<u64> = (10..30).collect();
    for &b in &changed {
        rng.fill(web.block_mut(b));
    }
    web.block_mut(5).fill(0);
    changed.push(5);
    assert_eq!(web.ship(&vault, &keys, &mut index, &changed), 2);
    let web2 = web.image.clone();

    let mut db = Disk::new("db", 100 * 16384, 16384, 40);
    let changed: Vec<u64> = (0..40).collect();
    for &b in &changed {
        rng.fill(db.block_mut(b));
    }
    db.ship(&vault, &keys, &mut index, &changed);
    let db1 = db.image.clone();
    let changed: Vec<u64> = (0..30).collect();
    for &b in &changed {
        rng.fill(db.block_mut(b));
    }
    db.ship(&vault, &keys, &mut index, &changed);
    let db2 = db.image.clone();

    Fixture { dir, vault, keys, web, web_images: [web1, web2], db_images: [db1, db2] }
}

impl Fixture {
    /// Restores into a file that already holds garbage (which must not show
    /// through), returning the image.
    fn restore(&self, disk: &str, seq: u64) -> Result<Vec<u8>, VaultError> {
        self.restore_with(&self.vault, disk, seq, &self.keys)
    }

    fn restore_with(&self, vault: &Vault, disk: &str, seq: u64, keys: &Keys) -> Result<Vec<u8>, VaultError> {
        let path = self.dir.path().join(format!("restored-{disk}-{seq}.img"));
        std::fs::write(&path, vec![0xa5u8; 5 << 20]).unwrap();
        let out = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
        vault.restore(disk, seq, keys, &out, &mut ())?;
        Ok(std::fs::read(&path).unwrap())
    }

    fn backend(&self) -> &dyn vault::Backend {
        self.vault.backend()
    }

    /// The pack holding block `block` of web's image at point `point`.
    fn web_pack_of(&self, point: usize, block: u64) -> (PackId, vault::BlockLocation) {
        let r = self.web.geometry.block_range(block);
        let id = self.keys.block_id(&self.web_images[point - 1][r.start as usize..r.end as usize]);
        let loc = self.vault.block_index().unwrap().get(&id).expect("block is stored").clone();
        (loc.pack, loc)
    }

    /// Every block of web point `point` whose blob is in `pack`.
    fn web_blocks_in(&self, point: usize, pack: &PackId) -> BTreeSet<u64> {
        let index = self.vault.block_index().unwrap();
        let g = self.web.geometry;
        (0..g.block_count)
            .filter(|&b| {
                let r = g.block_range(b);
                let data = &self.web_images[point - 1][r.start as usize..r.end as usize];
                data.iter().any(|&x| x != 0) && index.get(&self.keys.block_id(data)).is_some_and(|l| l.pack == *pack)
            })
            .collect()
    }

    fn flip(&self, kind: Kind, name: &str, at: u64) {
        let mut bytes = self.backend().get(kind, name).unwrap();
        bytes[at as usize] ^= 0x10;
        self.backend().put(kind, name, &bytes).unwrap();
    }

    fn swap(&self, kind: Kind, a: &str, b: &str) {
        let (x, y) = (self.backend().get(kind, a).unwrap(), self.backend().get(kind, b).unwrap());
        self.backend().put(kind, a, &y).unwrap();
        self.backend().put(kind, b, &x).unwrap();
    }

    fn check(&self, keys: Option<&Keys>) -> vault::CheckReport {
        let mut lines = 0;
        let report = self.vault.check(keys, &mut vault::Callback::new(|_, _, _| lines += 1)).unwrap();
        assert!(lines > 0, "check reports progress");
        report
    }
}

/// The `Damaged` fields of an error, or a panic naming what it was instead.
fn damaged(e: VaultError) -> (String, Option<u64>, String, Damage, String) {
    let msg = e.to_string();
    match e {
        VaultError::Damaged { point, block, object, damage, .. } => (point, block, object, damage, msg),
        other => panic!("expected a Damaged error, got {other:?}: {msg}"),
    }
}

fn has(problems: &[Problem], f: impl Fn(&Problem) -> bool) -> bool {
    problems.iter().any(f)
}

const WEB1: &str = "roots/web/00000000000000000001";

#[test]
fn restores_every_point_byte_for_byte() {
    let f = fixture();
    for (disk, images) in [("web", &f.web_images), ("db", &f.db_images)] {
        for seq in 1..=2u64 {
            let path = f.dir.path().join(format!("{disk}-{seq}.img"));
            std::fs::write(&path, vec![0xa5u8; 6 << 20]).unwrap(); // garbage that must not show through
            let out = std::fs::OpenOptions::new().read(true).write(true).open(&path).unwrap();
            let mut last = (0, 1);
            let report =
                f.vault.restore(disk, seq, &f.keys, &out, &mut vault::Callback::new(|_, d, t| last = (d, t))).unwrap();
            let got = std::fs::read(&path).unwrap();
            assert!(got == images[seq as usize - 1], "{disk}/{seq} differs from the disk at its cut");
            assert_eq!(last.0, last.1, "progress reaches the total");
            assert_eq!(report.bytes_written, last.1);
            let block_size = if disk == "web" { 4096 } else { 16384 };
            let blocks = (got.len() as u64).div_ceil(block_size);
            assert_eq!(report.blocks_written + report.zero_blocks, blocks);
            let zero = got.chunks(block_size as usize).filter(|c| c.iter().all(|&x| x == 0)).count() as u64;
            assert_eq!(report.zero_blocks, zero);
        }
    }
    // web/1 has ~400 zero blocks (1.6 MB) which the image leaves unallocated.
    let meta = std::fs::metadata(f.dir.path().join("web-1.img")).unwrap();
    assert!(meta.blocks() * 512 + (1 << 20) < meta.len(), "zero blocks are sparse: {} allocated", meta.blocks() * 512);

    // db/2 needs 10 of the 40 blobs of db/1's pack: read by range, not whole.
    let out = tempfile::tempfile().unwrap();
    let report = f.vault.restore("db", 2, &f.keys, &out, &mut ()).unwrap();
    let stored: u64 = f
        .backend()
        .list(Kind::Pack, "")
        .unwrap()
        .iter()
        .map(|n| f.backend().size(Kind::Pack, n).unwrap().unwrap())
        .sum();
    assert!(report.pack_bytes_read < 45 * 16424, "read {} bytes of packs", report.pack_bytes_read);
    assert!(report.pack_bytes_read < stored);
    assert_eq!(report.packs_read, 2);

    // A clean vault checks clean, with and without the key.
    let index = f.vault.block_index().unwrap();
    assert!(index.unreadable().is_empty());
    let r = f.check(None);
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.blocks_verified, 0);
    assert_eq!((r.roots, r.packs), (4, index.pack_count() as u64));
    let r = f.check(Some(&f.keys));
    assert!(r.is_clean(), "{:?}", r.problems);
    assert_eq!(r.blocks_verified, index.len() as u64);
    // Point 2 stored only the map page it changed.
    assert_eq!(r.pages, 3 + 1 + 1 + 1);
}

#[test]
fn points_are_listed_in_sequence_order() {
    let mut f = fixture();
    let mut web = std::mem::replace(&mut f.web, Disk::new("unused", 4096, 4096, 1));
    let mut index = f.vault.block_index().unwrap();
    for _ in 3..=11 {
        web.ship(&f.vault, &f.keys, &mut index, &[]); // no change: a root and nothing else
    }
    let points = f.vault.points("web").unwrap();
    assert_eq!(points.iter().map(|p| p.sequence).collect::<Vec<_>>(), (1..=11).collect::<Vec<_>>());
    assert_eq!(points[0].consistency, disk_format::Consistency::Crash);
    assert_eq!(points[1].consistency, disk_format::Consistency::App);
    assert_eq!(points[10].root_name, "web/00000000000000000011");
    assert!(points.windows(2).all(|w| w[0].cut_time_ns < w[1].cut_time_ns));
    assert_eq!((points[0].disk_size, points[0].block_size), (1100 * 4096 - 1000, 4096));
    assert!(points[0].bytes_shipped > 500 * 4096 && points[2].bytes_shipped == 0);
    assert_eq!(f.vault.latest_root("web", Some(&f.keys)).unwrap().unwrap().sequence, 11);
    assert_eq!(f.vault.latest_root("db", None).unwrap().unwrap().sequence, 2);
    assert_eq!(f.vault.latest_root("nothing", None).unwrap(), None);
    assert!(f.vault.points("nothing").unwrap().is_empty());
    assert_eq!(f.vault.disks().unwrap(), vec!["db", "web"]);
    assert!(matches!(f.vault.load_root("web", 12, None), Err(VaultError::NoSuchPoint { sequence: 12, .. })));
    let e = f.restore("web", 99).unwrap_err();
    assert!(e.to_string().contains("no recovery point 99"), "{e}");
    // Deleting a root (pruning) removes only that point.
    f.vault.delete_root("web", 4).unwrap();
    assert_eq!(f.vault.points("web").unwrap().len(), 10);
    assert_eq!(f.restore("web", 11).unwrap(), f.web_images[1]);
}

#[test]
fn init_twice_is_refused_and_an_empty_dir_is_not_a_vault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v");
    let e = Vault::open(Box::new(LocalBackend::create(&path).unwrap())).unwrap_err();
    assert!(matches!(e, VaultError::NotAVault { .. }));
    let msg = e.to_string();
    assert!(msg.contains("lifeboat vault init") && msg.contains(&path.display().to_string()), "{msg}");

    let keys = master().keys();
    let v = Vault::init(Box::new(LocalBackend::open(&path).unwrap()), &keys).unwrap();
    assert_eq!(v.config().key_fingerprint, keys.fingerprint());
    let e = Vault::init(Box::new(LocalBackend::open(&path).unwrap()), &keys).unwrap_err();
    assert!(matches!(e, VaultError::AlreadyAVault { .. }));
    assert!(e.to_string().contains("already a Lifeboat vault"), "{e}");
    let again = Vault::open(Box::new(LocalBackend::open(&path).unwrap())).unwrap();
    assert_eq!(again.config(), v.config());

    // Objects without a config are not silently adopted by a new init.
    let f = fixture();
    f.backend().delete(Kind::Config, "config").unwrap();
    let e = Vault::init(Box::new(LocalBackend::open(&f.dir.path().join("vault")).unwrap()), &keys).unwrap_err();
    assert!(matches!(e, VaultError::NotEmpty { .. }), "{e}");

    // A damaged config is named.
    let b = LocalBackend::open(&path).unwrap();
    use vault::Backend as _;
    b.put(Kind::Config, "config", b"not a config").unwrap();
    let e = Vault::open(Box::new(b)).unwrap_err();
    assert!(matches!(e, VaultError::BadConfig { .. }), "{e}");
}

#[test]
fn the_wrong_key_is_refused() {
    let f = fixture();
    let other = other_master().keys();
    let e = f.vault.check_key(&other).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("this vault was created with another key"), "{msg}");
    assert!(msg.contains(&f.keys.fingerprint().to_string()) && msg.contains(&other.fingerprint().to_string()));
    assert!(matches!(f.restore_with(&f.vault, "web", 1, &other), Err(VaultError::WrongKey { .. })));
    assert!(matches!(f.vault.load_root("web", 1, Some(&other)), Err(VaultError::WrongKey { .. })));
    assert!(matches!(f.vault.check(Some(&other), &mut ()), Err(VaultError::WrongKey { .. })));
    f.vault.check_key(&f.keys).unwrap();

    // A config forged to carry the other key's fingerprint gets past the key
    // check; the root's MAC then refuses the key.
    let forged = VaultConfig { key_fingerprint: other.fingerprint(), ..*f.vault.config() };
    f.backend().put(Kind::Config, "config", &forged.encode()).unwrap();
    let forged_vault = Vault::open(Box::new(LocalBackend::open(&f.dir.path().join("vault")).unwrap())).unwrap();
    let (point, block, object, damage, msg) = damaged(f.restore_with(&forged_vault, "web", 1, &other).unwrap_err());
    assert_eq!((point.as_str(), block, object.as_str(), damage), ("web/1", None, WEB1, Damage::Inauthentic), "{msg}");
    assert!(msg.contains("another key") || msg.contains("key given"), "{msg}");
    let r = forged_vault.check(Some(&other), &mut ()).unwrap();
    assert!(has(&r.problems, |p| p.object == WEB1 && p.point.as_deref() == Some("web/1")), "{:?}", r.problems);
    assert!(has(&r.problems, |p| p.object.starts_with("packs/") && p.detail.contains("does not open")));
    assert_eq!(r.blocks_verified, 0);
}

#[test]
fn a_flipped_bit_in_a_pack_names_the_pack_and_block() {
    let f = fixture();
    let (pack, loc) = f.web_pack_of(1, 100);
    f.flip(Kind::Pack, &pack.to_string(), loc.range.start + 24 + 77);
    let obj = format!("packs/{pack}");
    for seq in [1, 2] {
        let (point, block, object, damage, msg) = damaged(f.restore("web", seq).unwrap_err());
        assert_eq!((block, object.as_str(), damage), (Some(100), obj.as_str(), Damage::Inauthentic), "{msg}");
        assert_eq!(point, format!("web/{seq}"));
        assert!(msg.contains(&pack.to_string()) && msg.contains("block 100"), "{msg}");
    }
    // Other disks are unaffected.
    assert_eq!(f.restore("db", 2).unwrap(), f.db_images[1]);

    // Without the key, the blob's CRC (pack format 2) names the entry, and
    // through it the points and block that need it.
    let r = f.check(None);
    assert!(
        has(&r.problems, |p| p.object == obj && p.point.is_none() && p.detail.contains("CRC-32")),
        "{:?}",
        r.problems
    );
    for point in ["web/1", "web/2"] {
        assert!(
            has(&r.problems, |p| p.object == obj && p.point.as_deref() == Some(point) && p.block == Some(100)),
            "{:?}",
            r.problems
        );
    }
    assert_eq!(r.problems.len(), 3, "{:?}", r.problems);
    let r = f.check(Some(&f.keys));
    for point in ["web/1", "web/2"] {
        assert!(
            has(&r.problems, |p| p.object == obj && p.point.as_deref() == Some(point) && p.block == Some(100)),
            "{:?}",
            r.problems
        );
    }
}

#[test]
fn a_flipped_bit_in_a_pack_read_by_ranges_names_the_pack_and_block() {
    let f = fixture();
    // Block 35 of db is in db/1's pack, of which db/2 needs only blocks 30..40.
    let g = disk_format::Geometry::new(100 * 16384, 16384).unwrap();
    let data = &f.db_images[1][g.block_range(35).start as usize..g.block_range(35).end as usize];
    let loc = f.vault.block_index().unwrap().get(&f.keys.block_id(data)).unwrap().clone();
    f.flip(Kind::Pack, &loc.pack.to_string(), loc.range.end - 20);
    let (point, block, object, damage, msg) = damaged(f.restore("db", 2).unwrap_err());
    assert_eq!((point.as_str(), block, damage), ("db/2", Some(35), Damage::Inauthentic), "{msg}");
    assert_eq!(object, format!("packs/{}", loc.pack));
    assert_eq!(f.restore("web", 2).unwrap(), f.web_images[1]);
}

#[test]
fn a_truncated_pack_is_named() {
    let f = fixture();
    let (pack, _) = f.web_pack_of(1, 200);
    let name = pack.to_string();
    let in_pack = f.web_blocks_in(1, &pack);
    let bytes = f.backend().get(Kind::Pack, &name).unwrap();
    f.backend().put(Kind::Pack, &name, &bytes[..bytes.len() - 10]).unwrap();
    let (point, block, object, damage, msg) = damaged(f.restore("web", 1).unwrap_err());
    assert_eq!((point.as_str(), object.as_str(), damage), ("web/1", format!("packs/{pack}").as_str(), Damage::Missing));
    assert_eq!(block, in_pack.first().copied(), "{msg}");
    assert!(msg.contains("unreadable") && msg.contains("truncated"), "{msg}");

    let index = f.vault.block_index().unwrap();
    assert_eq!(index.unreadable().len(), 1);
    assert_eq!(index.unreadable()[0].name, name);
    let r = f.check(None);
    assert!(
        has(&r.problems, |p| p.object == format!("packs/{pack}") && p.detail.contains("truncated")),
        "{:?}",
        r.problems
    );
    assert!(has(&r.problems, |p| p.point.as_deref() == Some("web/1") && p.block == in_pack.first().copied()));
}

#[test]
fn a_deleted_pack_is_named_with_the_point_and_block() {
    let f = fixture();
    let (pack, _) = f.web_pack_of(1, 301);
    let in_pack = f.web_blocks_in(1, &pack);
    f.backend().delete(Kind::Pack, &pack.to_string()).unwrap();
    for seq in [1, 2] {
        let (point, block, object, damage, msg) = damaged(f.restore("web", seq).unwrap_err());
        assert_eq!((point, damage), (format!("web/{seq}"), Damage::Missing), "{msg}");
        assert_eq!(block, in_pack.first().copied(), "{msg}");
        assert!(object.starts_with("the pack holding block id") && msg.contains("missing"), "{msg}");
        assert!(msg.contains(&format!("{} blocks of this point are missing", in_pack.len())), "{msg}");
    }
    let r = f.check(None);
    for point in ["web/1", "web/2"] {
        assert!(
            has(&r.problems, |p| p.point.as_deref() == Some(point)
                && p.block == in_pack.first().copied()
                && p.detail.contains("missing")),
            "{:?}",
            r.problems
        );
    }
    // Many missing blocks are summarised, not listed one by one.
    assert!(has(&r.problems, |p| p.detail.contains("more damaged blocks")), "{:?}", r.problems);
    assert_eq!(f.restore("db", 1).unwrap(), f.db_images[0]);
}

#[test]
fn swapped_packs_are_refused() {
    let f = fixture();
    let (a, _) = f.web_pack_of(1, 100);
    let (b, _) = f.web_pack_of(1, 400);
    assert_ne!(a, b);
    f.swap(Kind::Pack, &a.to_string(), &b.to_string());
    let (point, _, object, damage, msg) = damaged(f.restore("web", 1).unwrap_err());
    assert_eq!((point.as_str(), damage), ("web/1", Damage::Corrupt), "{msg}");
    assert!(object == format!("packs/{a}") || object == format!("packs/{b}"), "{msg}");
    assert!(msg.contains("not to its name"), "{msg}");
    let r = f.check(None);
    for p in [a, b] {
        assert!(has(&r.problems, |x| x.object == format!("packs/{p}") && x.detail.contains("not to its name")));
    }
}

#[test]
fn roots_swapped_between_disks_or_points_are_refused() {
    let f = fixture();
    let db1 = "db/00000000000000000001";
    f.swap(Kind::Root, "web/00000000000000000001", db1);
    for keys in [Some(&f.keys), None] {
        let (point, _, object, damage, msg) = damaged(f.vault.load_root("web", 1, keys).unwrap_err());
        assert_eq!((point.as_str(), object.as_str(), damage), ("web/1", WEB1, Damage::Misplaced), "{msg}");
        assert!(msg.contains("\"db\""), "{msg}");
    }
    let (_, _, object, damage, _) = damaged(f.restore("db", 1).unwrap_err());
    assert_eq!((object, damage), (format!("roots/{db1}"), Damage::Misplaced));
    // The misplaced root is listed as damaged; it does not hide the others.
    let points = f.vault.points("web").unwrap();
    assert!(points.iter().any(|p| p.sequence == 1 && p.damage.as_deref().is_some_and(|d| d.contains("\"db\""))));
    assert!(points.iter().any(|p| p.sequence == 2 && p.damage.is_none()));
    let r = f.check(None);
    assert!(has(&r.problems, |p| p.object == WEB1) && has(&r.problems, |p| p.object == format!("roots/{db1}")));
    f.swap(Kind::Root, "web/00000000000000000001", db1); // undo

    f.swap(Kind::Root, "web/00000000000000000001", "web/00000000000000000002");
    let (point, _, object, damage, msg) = damaged(f.restore("web", 2).unwrap_err());
    assert_eq!((point.as_str(), damage), ("web/2", Damage::Misplaced), "{msg}");
    assert_eq!(object, "roots/web/00000000000000000002");
    assert!(msg.contains("point 1 of chain"), "{msg}");
    assert!(f.vault.latest_root("web", Some(&f.keys)).is_err());
}

#[test]
fn a_deleted_or_damaged_page_is_named() {
    let f = fixture();
    let root = f.vault.load_root("web", 1, Some(&f.keys)).unwrap();
    let shared: PageId = root.pages[1];
    assert_eq!(f.vault.load_root("web", 2, None).unwrap().pages[1], shared, "page 1 is shared");
    let obj = format!("pages/{shared}");
    f.backend().delete(Kind::Page, &shared.to_string()).unwrap();
    assert!(!f.vault.has_page(&shared).unwrap());
    for seq in [1, 2] {
        let (point, block, object, damage, msg) = damaged(f.restore("web", seq).unwrap_err());
        assert_eq!((block, object.as_str(), damage), (Some(512), obj.as_str(), Damage::Missing), "{msg}");
        assert_eq!(point, format!("web/{seq}"));
    }
    let r = f.check(None);
    for point in ["web/1", "web/2"] {
        assert!(has(&r.problems, |p| p.object == obj && p.point.as_deref() == Some(point) && p.block == Some(512)));
    }

    let f = fixture();
    let page0 = f.vault.load_root("web", 1, None).unwrap().pages[0];
    f.flip(Kind::Page, &page0.to_string(), 100);
    let (_, block, object, damage, msg) = damaged(f.restore("web", 1).unwrap_err());
    assert_eq!((block, object, damage), (Some(0), format!("pages/{page0}"), Damage::Corrupt), "{msg}");
    assert_eq!(f.restore("web", 2).unwrap(), f.web_images[1], "point 2 rewrote page 0");
    let r = f.check(None);
    assert!(has(&r.problems, |p| p.object == format!("pages/{page0}") && p.point.is_none()), "{:?}", r.problems);
    assert!(has(&r.problems, |p| p.object == format!("pages/{page0}") && p.point.as_deref() == Some("web/1")));
}

#[test]
fn a_tampered_root_is_refused() {
    let f = fixture();
    f.flip(Kind::Root, "web/00000000000000000001", 104); // cut time
    let (_, _, object, damage, msg) = damaged(f.restore("web", 1).unwrap_err());
    assert_eq!((object.as_str(), damage), (WEB1, Damage::Inauthentic), "{msg}");
    // Without the key the root's MAC cannot be checked, but point 2 names
    // point 1's root by its hash, so the keyless check still sees the change.
    let r = f.check(None);
    assert!(has(&r.problems, |p| p.object == WEB1 && p.detail.contains("parent id")), "{:?}", r.problems);
    let r = f.check(Some(&f.keys));
    assert!(has(&r.problems, |p| p.object == WEB1 && p.detail.contains("not authentic")), "{:?}", r.problems);
    f.flip(Kind::Root, "web/00000000000000000002", 5); // the magic
    assert!(has(&f.check(None).problems, |p| p.object == "roots/web/00000000000000000002"));
}

#[test]
fn objects_that_would_make_the_vault_invalid_are_not_stored() {
    let f = fixture();
    let root = f.backend().get(Kind::Root, "web/00000000000000000001").unwrap();
    assert!(matches!(f.vault.put_root("web", 5, &root), Err(VaultError::Invalid { .. })));
    assert!(matches!(f.vault.put_root("db", 1, &root), Err(VaultError::Invalid { .. })));
    assert!(matches!(f.vault.put_root("a/b", 1, &root), Err(VaultError::BadName { .. })));
    let page_id = f.vault.load_root("web", 1, None).unwrap().pages[0];
    let page = f.vault.get_page(&page_id).unwrap();
    assert!(matches!(f.vault.put_page(&PageId([1; 32]), &page), Err(VaultError::Invalid { .. })));
    let e = f
        .vault
        .put_pack(&PackId([2; 32]), b"not a pack at all, not at all, no, not a pack: not a pack at all, really")
        .unwrap_err();
    assert!(matches!(e, VaultError::Invalid { .. }), "{e}");
    // A sound version 2 pack under a name that is not its own: its name is
    // checked from header, index and trailer, and nothing is stored.
    let mut w = disk_format::PackWriter::new(Vec::new()).unwrap();
    let block = b"a block for a pack stored under the wrong name";
    let id = f.keys.block_id(block);
    w.add_blob(&id, &f.keys.seal_block(disk_format::Cipher::XChaCha20Poly1305, &id, block).unwrap()).unwrap();
    let done = w.finish().unwrap();
    let wrong = PackId([3; 32]);
    let e = f.vault.put_pack(&wrong, &done.out).unwrap_err();
    assert!(
        matches!(&e, VaultError::Invalid { object, detail } if object == &format!("packs/{wrong}")
        && detail.contains("not to its name")),
        "{e}"
    );
    assert_eq!(f.backend().size(Kind::Pack, &wrong.to_string()).unwrap(), None);
    f.vault.put_pack(&done.id, &done.out).unwrap();
    assert!(f.check(None).is_clean());
}

#[test]
fn a_block_of_the_wrong_length_is_refused() {
    // A key holder's bug: point 3 names the short last block's id (3096
    // bytes) for block 0 (4096 bytes). Everything authenticates; the length
    // does not fit the geometry.
    let f = fixture();
    let root2 = f.vault.load_root("web", 2, Some(&f.keys)).unwrap();
    let last = f.web.geometry.block_range(1099);
    let short_id = f.keys.block_id(&f.web_images[1][last.start as usize..last.end as usize]);
    let mut map = disk_format::MapBuilder::from_previous(&root2.pages, root2.geometry).unwrap();
    map.set(0, short_id).unwrap();
    let built = map.finish(|id| f.vault.get_page(id).map_err(common::PageErrorOrVault::Vault)).unwrap();
    for (id, bytes) in &built.new_pages {
        f.vault.put_page(id, bytes).unwrap();
    }
    let root3 = disk_format::Root { sequence: 3, pages: built.pages, parent: None, ..root2 };
    f.vault.put_root("web", 3, &root3.encode_version_1_for_tests(&f.keys).unwrap()).unwrap();
    let (point, block, _, damage, msg) = damaged(f.restore("web", 3).unwrap_err());
    assert_eq!((point.as_str(), block, damage), ("web/3", Some(0), Damage::Misplaced), "{msg}");
    assert!(msg.contains("3096"), "{msg}");
    let r = f.check(None);
    assert!(
        has(&r.problems, |p| p.point.as_deref() == Some("web/3") && p.block == Some(0) && p.detail.contains("3096")),
        "{:?}",
        r.problems
    );
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
}

#[test]
fn an_all_zero_disk_restores_to_zeros() {
    let f = fixture();
    let mut empty = Disk::new("empty", 3 << 20, 65536, 8);
    let seq = empty.ship(&f.vault, &f.keys, &mut BlockIndex::new(), &[0, 5]); // written, but zeros
    let root = f.vault.load_root("empty", seq, Some(&f.keys)).unwrap();
    assert!(root.pages.iter().all(PageId::is_zero));
    let got = f.restore("empty", seq).unwrap();
    assert!(got.len() == 3 << 20 && got.iter().all(|&b| b == 0));
    assert!(f.check(Some(&f.keys)).is_clean());
}

/// A point's root is created, never overwritten: two writers of one point
/// (two hosts replicating one chain), even at the same moment, leave exactly
/// one root, whole, and the other writer is told which point it was.
#[test]
fn a_point_is_created_once_and_a_second_writer_is_refused_naming_it() {
    let f = fixture();
    let stored = f.backend().get(Kind::Root, "web/00000000000000000002").unwrap();
    let root2 = f.vault.load_root("web", 2, Some(&f.keys)).unwrap();
    let other = disk_format::Root { cut_time_ns: root2.cut_time_ns + 1, ..root2.clone() }
        .encode_version_1_for_tests(&f.keys)
        .unwrap();
    assert_ne!(other, stored);
    let e = f.vault.put_root("web", 2, &other).unwrap_err();
    assert!(matches!(&e, VaultError::PointExists { disk, sequence: 2, .. } if disk == "web"), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("point 2 of disk chain web") && msg.contains(&f.vault.backend().location()), "{msg}");
    assert_eq!(f.backend().get(Kind::Root, "web/00000000000000000002").unwrap(), stored, "a root was overwritten");

    // Two writers (separate handles, as two hosts) store points 3..8 at once,
    // each with its own root for the point.
    let path = f.dir.path().join("vault");
    let second = Vault::open(Box::new(LocalBackend::open(&path).unwrap())).unwrap();
    for sequence in 3..9 {
        let encodings = [1, 2].map(|host| {
            let root = disk_format::Root { sequence, cut_time_ns: root2.cut_time_ns + host, ..root2.clone() };
            root.encode_version_1_for_tests(&f.keys).unwrap()
        });
        let start = std::sync::Barrier::new(2);
        let results: Vec<Result<(), VaultError>> = std::thread::scope(|s| {
            let hs: Vec<_> = [&f.vault, &second]
                .into_iter()
                .zip(&encodings)
                .map(|(v, bytes)| {
                    let start = &start;
                    s.spawn(move || {
                        start.wait();
                        v.put_root("web", sequence, bytes)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..2).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "point {sequence}: {results:?}");
        let lost = results.iter().find_map(|r| r.as_ref().err()).unwrap();
        assert!(matches!(lost, VaultError::PointExists { sequence: s, .. } if *s == sequence), "{lost}");
        assert_eq!(f.backend().get(Kind::Root, &vault::root_name("web", sequence)).unwrap(), encodings[won[0]]);
    }
}

/// Several inits of one directory at once: exactly one makes the vault, the
/// others are refused as "already a vault", and the config is the winner's.
#[test]
fn inits_racing_on_one_directory_make_one_vault() {
    for round in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v");
        LocalBackend::create(&path).unwrap();
        let keys: Vec<Keys> = (0..6u8).map(|i| disk_format::MasterKey::from_bytes([i + 1; 32]).keys()).collect();
        let start = std::sync::Barrier::new(keys.len());
        let results: Vec<Result<Vault, VaultError>> = std::thread::scope(|s| {
            let hs: Vec<_> = keys
                .iter()
                .map(|k| {
                    let (start, path) = (&start, &path);
                    s.spawn(move || {
                        let b = LocalBackend::open(path).unwrap();
                        start.wait();
                        Vault::init(Box::new(b), k)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let won: Vec<usize> = (0..keys.len()).filter(|&i| results[i].is_ok()).collect();
        assert_eq!(won.len(), 1, "round {round}: {} inits made the vault", won.len());
        for r in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(matches!(r, VaultError::AlreadyAVault { .. }), "round {round}: {r}");
        }
        let opened = Vault::open(Box::new(LocalBackend::open(&path).unwrap())).unwrap();
        assert_eq!(opened.config().key_fingerprint, keys[won[0]].fingerprint(), "round {round}");
    }
}
