//! Garbage collection: after a prune it frees exactly the packs and pages no
//! remaining root references (sizes before and after), every remaining point
//! still restores and checks clean; a dry run deletes nothing; it refuses
//! while a cycle lease is held (and a cycle refuses while a GC lease is).
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use common::{lease_body, master, new_vault, objects, restore_bytes, test_host, Disk, Rng};
use disk_format::{BlockId, Pack};
use vault::{BlockIndex, HostIdentity, Kind, LocalBackend, Policy, Vault, VaultError};

/// Two disks; `web` has 8 points each rewriting blocks (packs of 4 blobs, so
/// rewritten blocks leave whole packs garbage), `db` one point.
fn fixture(vault: &Vault) -> (Disk, Vec<Vec<u8>>, Vec<u8>) {
    let keys = master().keys();
    let mut index = BlockIndex::new();
    let mut rng = Rng(0xdead_beef);
    let mut web = Disk::new("web", 64 * 4096, 4096, 4);
    web.cut_interval_ns = 3_600_000_000_000;
    let mut images = vec![Vec::new()];
    let first: Vec<u64> = (0..40).collect();
    for &b in &first {
        rng.fill(web.block_mut(b));
    }
    web.ship(vault, &keys, &mut index, &first);
    images.push(web.image.clone());
    for s in 2..=8u64 {
        let changed: Vec<u64> = (0..8).map(|i| (s * 8 + i) % 40).collect();
        for &b in &changed {
            rng.fill(web.block_mut(b));
        }
        web.ship(vault, &keys, &mut index, &changed);
        images.push(web.image.clone());
    }
    let mut db = Disk::new("db", 16 * 4096, 4096, 4);
    let all: Vec<u64> = (0..16).collect();
    for &b in &all {
        rng.fill(db.block_mut(b));
    }
    db.ship(vault, &keys, &mut index, &all);
    (web, images, db.image.clone())
}

/// The packs and pages the remaining roots reference, computed from the
/// objects themselves (not through `gc`).
fn referenced(vault: &Vault) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut pages = BTreeSet::new();
    let mut blocks: HashSet<BlockId> = HashSet::new();
    for disk in vault.disks().unwrap() {
        for s in vault.sequences(&disk).unwrap() {
            let root = vault.load_root(&disk, s, Some(&master().keys())).unwrap();
            for id in root.pages.iter().filter(|p| !p.is_zero()) {
                pages.insert(id.to_string());
                let page = disk_format::MapPage::decode(&vault.get_page(id).unwrap()).unwrap();
                blocks.extend(page.entries.iter().filter(|b| !b.is_zero()));
            }
        }
    }
    let mut packs = BTreeSet::new();
    for name in vault.backend().list(Kind::Pack, "").unwrap() {
        let bytes = vault.backend().get(Kind::Pack, &name).unwrap();
        if Pack::parse(&bytes).unwrap().index().entries().iter().any(|e| blocks.contains(&e.id)) {
            packs.insert(name);
        }
    }
    (packs, pages)
}

fn keep_newest(vault: &Vault, disk: &Disk) {
    let now = disk.cut_base_ns + 9 * disk.cut_interval_ns;
    let policy = Policy { recent: Duration::from_secs(3 * 3_600), thin: None, hourly: 0, daily: 0 };
    let report = vault.prune("web", &policy, now).unwrap();
    assert_eq!(report.kept, vec![6, 7, 8]);
}

fn check_clean(vault: &Vault) {
    for keys in [None, Some(master().keys())] {
        let report = vault.check(keys.as_ref(), &mut ()).unwrap();
        assert!(report.is_clean(), "check (key: {}): {:?}", keys.is_some(), report.problems);
    }
}

#[test]
fn gc_after_prune_frees_exactly_what_no_root_references() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (web, images, db_image) = fixture(&vault);
    keep_newest(&vault, &web);

    let (packs_before, pack_bytes_before) = objects(&vault, Kind::Pack);
    let (pages_before, page_bytes_before) = objects(&vault, Kind::Page);
    let (live_packs, live_pages) = referenced(&vault);
    let dead_packs: BTreeSet<String> = packs_before.difference(&live_packs).cloned().collect();
    let dead_pages: BTreeSet<String> = pages_before.difference(&live_pages).cloned().collect();
    assert!(!dead_packs.is_empty() && !dead_pages.is_empty(), "the fixture leaves garbage");

    let report = vault.gc(false).unwrap();
    assert!(!report.dry_run);
    assert_eq!(report.roots, 4);
    assert_eq!(report.packs_deleted.iter().cloned().collect::<BTreeSet<_>>(), dead_packs);
    assert_eq!(report.pages_deleted.iter().cloned().collect::<BTreeSet<_>>(), dead_pages);
    assert!(report.unreadable_packs.is_empty());

    let (packs_after, pack_bytes_after) = objects(&vault, Kind::Pack);
    let (pages_after, page_bytes_after) = objects(&vault, Kind::Page);
    assert_eq!(packs_after, live_packs);
    assert_eq!(pages_after, live_pages);
    assert_eq!(pack_bytes_before - pack_bytes_after, report.pack_bytes_deleted);
    assert_eq!(page_bytes_before - page_bytes_after, report.page_bytes_deleted);
    assert_eq!(report.pack_bytes_kept, pack_bytes_after);
    assert_eq!(report.packs_kept, packs_after.len() as u64);

    for s in 6..=8u64 {
        assert!(restore_bytes(&vault, dir.path(), "web", s).unwrap() == images[s as usize], "web/{s}");
    }
    assert!(restore_bytes(&vault, dir.path(), "db", 1).unwrap() == db_image);
    check_clean(&vault);

    // The space is freed, not only hidden: nothing waits in the trash.
    assert_eq!(vault.empty_trash().unwrap(), (0, 0), "gc empties the trash itself");

    // A second run finds nothing more; no lease is left behind.
    let again = vault.gc(false).unwrap();
    assert!(again.packs_deleted.is_empty() && again.pages_deleted.is_empty());
    assert!(vault.leases("").unwrap().is_empty());
}

#[test]
fn dry_run_deletes_nothing_and_reports_what_a_run_would() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (web, _, _) = fixture(&vault);
    keep_newest(&vault, &web);
    let before: Vec<_> = [Kind::Pack, Kind::Page, Kind::Root].map(|k| objects(&vault, k)).into();
    let dry = vault.gc(true).unwrap();
    assert!(dry.dry_run && !dry.packs_deleted.is_empty() && !dry.pages_deleted.is_empty());
    let after: Vec<_> = [Kind::Pack, Kind::Page, Kind::Root].map(|k| objects(&vault, k)).into();
    assert_eq!(before, after);
    assert!(vault.leases("").unwrap().is_empty());
    let real = vault.gc(false).unwrap();
    assert_eq!((real.packs_deleted, real.pages_deleted), (dry.packs_deleted, dry.pages_deleted));
    assert_eq!(real.pack_bytes_deleted, dry.pack_bytes_deleted);
}

#[test]
fn gc_refuses_while_a_cycle_runs_and_a_cycle_refuses_while_gc_runs() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (web, _, _) = fixture(&vault);
    keep_newest(&vault, &web);
    let packs = objects(&vault, Kind::Pack);

    let cycle = vault.begin_cycle("web").unwrap();
    let e = vault.gc(false).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, VaultError::Busy { .. }), "{e:?}");
    assert!(msg.contains("replication cycle of disk web") && msg.contains(cycle.name()), "{msg}");
    assert_eq!(objects(&vault, Kind::Pack), packs, "nothing deleted");
    // The refused GC left no lease of its own: the cycle's is the only one.
    assert_eq!(vault.leases("").unwrap().len(), 1);
    drop(cycle);
    assert!(vault.leases("").unwrap().is_empty());
    assert!(!vault.gc(false).unwrap().packs_deleted.is_empty());

    // A GC in progress elsewhere (a live lease from another host): cycles and
    // other GCs refuse, naming it, until it is gone.
    let body =
        "lifeboat lease v1\nholder=gc\nhost=far\nmachine=another-machine\nboot=b\npid=7\nstart=9\ncreated_ns=0\n";
    vault.backend().put(Kind::Lease, "gc/0011223344556677", body.as_bytes()).unwrap();
    let e = vault.begin_cycle("web").unwrap_err();
    assert!(matches!(e, VaultError::Busy { .. }) && e.to_string().contains("pid 7 on host far"), "{e}");
    assert!(matches!(vault.gc(false), Err(VaultError::Busy { .. })));
    assert_eq!(vault.leases("").unwrap().len(), 1, "refusals leave no lease");
    vault.break_lease("gc/0011223344556677").unwrap();
    drop(vault.begin_cycle("web").unwrap());
}

#[test]
fn gc_removes_a_stale_cycle_lease_of_a_dead_process() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    fixture(&vault);
    // Process 4000000000 (above any pid_max) of this host: it no longer runs.
    let dead = lease_body("shipper", &test_host(), 4_000_000_000, 5);
    vault.backend().put(Kind::Lease, "cycle/web/00000000000000ff", dead.as_bytes()).unwrap();
    // Judged from another host, the same lease may be live: GC refuses.
    let elsewhere = HostIdentity { machine: Some("another-machine".into()), ..test_host() };
    let far = Vault::open(Box::new(LocalBackend::open(&dir.path().join("vault")).unwrap()))
        .unwrap()
        .with_host_identity(elsewhere);
    assert!(matches!(far.gc(false), Err(VaultError::Busy { .. })), "another host cannot judge it");
    assert_eq!(vault.leases("").unwrap().len(), 1, "still there");
    let report = vault.gc(false).unwrap();
    assert_eq!(report.stale_leases_removed, vec!["cycle/web/00000000000000ff".to_string()]);
    assert!(vault.leases("").unwrap().is_empty());
}

#[test]
fn gc_keeps_what_a_held_point_needs_even_if_its_root_was_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (web, images, _) = fixture(&vault);
    // A restore holds point 2 after a prune listed the leases: the root goes.
    let hold = vault.hold("web", 2, "restore").unwrap();
    let root = vault.backend().get(Kind::Root, "web/00000000000000000002").unwrap();
    vault.delete_root("web", 2).unwrap();
    let packs = objects(&vault, Kind::Pack);
    let e = vault.gc(false).unwrap_err();
    assert!(matches!(e, VaultError::Busy { .. }) && e.to_string().contains("web/2"), "{e}");
    assert_eq!(objects(&vault, Kind::Pack), packs);
    // The restore can still complete (its objects are all there).
    vault.backend().put(Kind::Root, "web/00000000000000000002", &root).unwrap();
    assert!(restore_bytes(&vault, dir.path(), "web", 2).unwrap() == images[2]);
    drop(hold);
    keep_newest(&vault, &web);
    vault.gc(false).unwrap();
    check_clean(&vault);
}

#[test]
fn gc_deletes_nothing_when_a_root_is_damaged() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (web, _, _) = fixture(&vault);
    keep_newest(&vault, &web);
    vault.backend().put(Kind::Root, "web/00000000000000000007", b"not a root").unwrap();
    let (packs, pages) = (objects(&vault, Kind::Pack), objects(&vault, Kind::Page));
    let e = vault.gc(false).unwrap_err();
    assert!(matches!(e, VaultError::GcUnsafe { .. }), "{e:?}");
    assert!(e.to_string().contains("roots/web/00000000000000000007"), "{e}");
    assert_eq!((objects(&vault, Kind::Pack), objects(&vault, Kind::Page)), (packs, pages));
    assert!(vault.leases("").unwrap().is_empty());
}

#[test]
fn gc_removes_objects_a_dead_writer_left_unfinished_and_only_old_ones() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    fixture(&vault);
    // A pack whose writer was killed mid-write two days ago, and one being
    // written right now (dropped at the end of the test).
    let tmp = dir.path().join("vault/tmp");
    let old = tmp.join("4000000.packs.7");
    std::fs::write(&old, vec![7u8; 5000]).unwrap();
    let two_days = std::time::SystemTime::now() - Duration::from_secs(2 * 24 * 3600);
    std::fs::File::options().write(true).open(&old).unwrap().set_modified(two_days).unwrap();
    let mut live = vault.pack_writer().unwrap();
    live.write(b"still being written").unwrap();

    let dry = vault.gc(true).unwrap();
    assert_eq!(dry.unfinished_removed, vec![("tmp/4000000.packs.7".to_string(), 5000)]);
    assert!(old.exists(), "a dry run deletes nothing");
    let report = vault.gc(false).unwrap();
    assert_eq!(report.unfinished_removed, dry.unfinished_removed);
    assert!(!old.exists());
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 1, "the writer at work keeps its object");
    check_clean(&vault);
    drop(live);
    assert_eq!(std::fs::read_dir(&tmp).unwrap().count(), 0);
}

#[test]
fn collect_hides_garbage_under_the_lease_and_frees_it_later() {
    let dir = tempfile::tempdir().unwrap();
    let vault = new_vault(dir.path());
    let (web, images, _) = fixture(&vault);
    keep_newest(&vault, &web);
    let (live_packs, live_pages) = referenced(&vault);
    let (_, pack_bytes_before) = objects(&vault, Kind::Pack);

    let report = vault.collect(false).unwrap();
    assert!(!report.packs_deleted.is_empty() && !report.pages_deleted.is_empty());
    // Gone from the vault's listings at once (a cycle that starts now cannot
    // deduplicate against them), and no lease left behind...
    assert_eq!(objects(&vault, Kind::Pack).0, live_packs);
    assert_eq!(objects(&vault, Kind::Page).0, live_pages);
    assert!(vault.leases("").unwrap().is_empty());
    for name in &report.packs_deleted {
        assert!(matches!(vault.backend().get(Kind::Pack, name), Err(VaultError::NotFound { .. })));
    }
    // ...while the space waits in the trash until it is emptied.
    let trashed = report.packs_deleted.len() + report.pages_deleted.len();
    assert_eq!(std::fs::read_dir(dir.path().join("vault/trash")).unwrap().count(), trashed);
    // A later `gc` (which finds nothing new) frees what an earlier collection
    // left there, and says so.
    let later = vault.gc(false).unwrap();
    assert!(later.packs_deleted.is_empty() && later.pages_deleted.is_empty());
    assert_eq!(later.trash_freed, (trashed as u64, report.pack_bytes_deleted + report.page_bytes_deleted));
    assert_eq!(vault.empty_trash().unwrap(), (0, 0));
    assert_eq!(pack_bytes_before - objects(&vault, Kind::Pack).1, report.pack_bytes_deleted);
    assert_eq!(std::fs::read_dir(dir.path().join("vault/trash")).unwrap().count(), 0);
    for s in 6..=8u64 {
        assert!(restore_bytes(&vault, dir.path(), "web", s).unwrap() == images[s as usize], "web/{s}");
    }
    check_clean(&vault);
}

/// A store that keeps some objects under a lock (an Azure immutability
/// policy): deleting them is [`VaultError::Locked`] until `unlocked`.
struct Locking {
    inner: LocalBackend,
    locked: std::sync::Mutex<BTreeSet<String>>,
}

impl vault::Backend for Locking {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<vault::Version, VaultError> {
        self.inner.create(kind, name, data)
    }
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, vault::Version), VaultError> {
        self.inner.get_versioned(kind, name)
    }
    fn replace_if(
        &self,
        kind: Kind,
        name: &str,
        data: &[u8],
        v: &vault::Version,
    ) -> Result<vault::Version, VaultError> {
        self.inner.replace_if(kind, name, data, v)
    }
    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>, VaultError> {
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        self.inner.get_range(kind, name, offset, len)
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.inner.size(kind, name)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        self.inner.list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        if self.locked.lock().unwrap().contains(&format!("{kind}/{name}")) {
            return Err(VaultError::Locked { location: self.location(), kind, name: name.to_string() });
        }
        self.inner.delete(kind, name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

/// Garbage the store still locks is kept (and reported), the rest is
/// collected, and every remaining point restores; once the lock ends, the
/// next collection takes it.
#[test]
fn gc_keeps_garbage_the_store_still_locks_and_collects_it_once_unlocked() {
    let dir = tempfile::tempdir().unwrap();
    let probe = new_vault(dir.path());
    let (web, images, _) = fixture(&probe);
    keep_newest(&probe, &web);
    let (packs, _) = objects(&probe, Kind::Pack);
    let (live_packs, _) = referenced(&probe);
    let dead: Vec<String> = packs.difference(&live_packs).cloned().collect();
    assert!(dead.len() >= 2, "the fixture leaves garbage packs");
    drop(probe);
    let locked: BTreeSet<String> = [format!("packs/{}", dead[0])].into();
    let backend =
        Locking { inner: LocalBackend::open(&dir.path().join("vault")).unwrap(), locked: locked.clone().into() };
    let vault = Vault::open(Box::new(backend)).unwrap().with_host_identity(test_host());

    let report = vault.gc(false).unwrap();
    assert_eq!(report.locked_kept, vec![format!("packs/{}", dead[0])]);
    assert!(!report.packs_deleted.contains(&dead[0]) && report.packs_deleted.contains(&dead[1]), "{report:?}");
    assert!(vault.backend().size(Kind::Pack, &dead[0]).unwrap().is_some(), "the locked pack is gone");
    for s in 6..=8u64 {
        assert!(restore_bytes(&vault, dir.path(), "web", s).unwrap() == images[s as usize], "web/{s}");
    }
    drop(vault);

    // The lock ended: the next collection takes it.
    let backend =
        Locking { inner: LocalBackend::open(&dir.path().join("vault")).unwrap(), locked: BTreeSet::new().into() };
    let vault = Vault::open(Box::new(backend)).unwrap().with_host_identity(test_host());
    let report = vault.gc(false).unwrap();
    assert_eq!(report.packs_deleted, vec![dead[0].clone()]);
    assert!(report.locked_kept.is_empty());
}
