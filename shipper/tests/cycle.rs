//! Cycles end to end in one process: a disk written through the filter's
//! `Disk`, shipped with a `LocalSource` into a local vault, and restored.

#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use disk_format::keys::{Keys, MasterKey};
use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{Disk, StateFile};
use shipper::{run_cycle, CycleOptions, LocalSource, ShipError};
use vault::in_flight::{InFlight, Seen};
use vault::{Backend, Kind, LocalBackend, ObjectWriter, Vault, VaultError};

const BS: u64 = 65536;
const BLOCKS: u64 = 64;

fn keys() -> Keys {
    MasterKey::from_bytes([42; 32]).keys()
}

/// The chain the points of the disk of identity `id` are stored under.
fn chain(id: [u8; 16]) -> String {
    Vault::chain_of(&keys(), &id)
}

struct Fixture {
    dir: tempfile::TempDir,
    paths: DiskPaths,
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::sized(BLOCKS)
    }

    /// A disk of `blocks` blocks, the last one short.
    fn sized(blocks: u64) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        // The last block is short: the disk is not a multiple of the block size.
        std::fs::File::create(&image).unwrap().set_len(blocks * BS - 1000).unwrap();
        let state = dir.path().join("state");
        StateFile::create(&state, Geometry::new(blocks * BS - 1000, BS).unwrap(), [3; 16], false).unwrap();
        let paths = DiskPaths { image, state, scratch: dir.path().join("scratch") };
        Fixture { dir, paths }
    }

    fn write(&self, writes: &[(u64, u8)]) {
        let d = Disk::open(self.paths.clone()).unwrap();
        for &(block, fill) in writes {
            let len = d.geometry().block_len(block).min(5000);
            d.write_at(&vec![fill; len], block * BS + 100.min(BS - len as u64), false).unwrap();
        }
        d.close().unwrap();
    }

    fn vault(&self, backend: Box<dyn Backend>) -> Vault {
        Vault::init(backend, &keys()).unwrap()
    }

    fn ship(&self, vault: &Vault) -> Result<shipper::CycleReport, ShipError> {
        let mut src = LocalSource::open(self.paths.clone()).unwrap();
        let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", [3; 16]) };
        let r = run_cycle(&mut src, vault, &keys(), &opts, &mut ());
        src.close().unwrap();
        r
    }

    fn restore(&self, vault: &Vault, seq: u64) -> Vec<u8> {
        let out = self.dir.path().join(format!("restored-{seq}.img"));
        let f = std::fs::File::create(&out).unwrap();
        vault.restore(&chain([3; 16]), seq, &keys(), &f, &mut ()).unwrap();
        drop(f);
        std::fs::read(out).unwrap()
    }

    fn dirty(&self) -> Vec<u64> {
        StateFile::report(&self.paths.state).unwrap().dirty_blocks
    }
}

fn local(dir: &Path) -> Box<dyn Backend> {
    Box::new(LocalBackend::create(&dir.join("vault")).unwrap())
}

#[test]
fn full_then_incremental_points_restore_exactly() {
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    f.write(&[(0, 1), (5, 2), (6, 2), (BLOCKS - 1, 9)]);
    let r1 = f.ship(&vault).unwrap();
    assert!(r1.full && r1.sequence == 1);
    assert_eq!(r1.blocks_read, BLOCKS);
    assert_eq!(r1.zero_blocks, BLOCKS - 4);
    // Blocks 5 and 6 hold the same bytes: stored once.
    assert_eq!((r1.new_blocks, r1.known_blocks), (3, 1));
    assert!(f.dirty().is_empty(), "a committed point clears the cut bits");
    let image1 = std::fs::read(&f.paths.image).unwrap();
    assert_eq!(f.restore(&vault, 1), image1);

    f.write(&[(5, 7), (20, 8)]);
    assert_eq!(f.dirty(), vec![5, 20]);
    let r2 = f.ship(&vault).unwrap();
    assert!(!r2.full && r2.sequence == 2);
    assert_eq!((r2.blocks_read, r2.new_blocks), (2, 2));
    assert!(r2.bytes_shipped < 3 * BS, "an incremental ships about what changed: {}", r2.bytes_shipped);
    let image2 = std::fs::read(&f.paths.image).unwrap();
    assert_eq!(f.restore(&vault, 2), image2);
    assert_eq!(f.restore(&vault, 1), image1, "the older point is unchanged");
    let points = vault.points(&chain([3; 16])).unwrap();
    assert_eq!(points.iter().map(|p| p.sequence).collect::<Vec<_>>(), vec![1, 2]);

    // Nothing changed: a cycle still commits a point, reading nothing.
    let r3 = f.ship(&vault).unwrap();
    assert_eq!((r3.sequence, r3.blocks_read, r3.packs), (3, 0, 0));
    assert_eq!(f.restore(&vault, 3), image2);
}

/// Overwrites blocks of the disk right after the cut (in the cut hook's
/// `after`, which runs before any block is read).
struct OverwriteAfterCut<'a> {
    disk: &'a Disk,
    blocks: &'a [u64],
    /// Where the copies were once the blocks were overwritten.
    usage: std::sync::Mutex<Option<filter::copies::CopyUsage>>,
}

impl shipper::CutHook for OverwriteAfterCut<'_> {
    fn before(&self) -> Result<(), shipper::HookError> {
        Ok(())
    }
    fn after(&self) -> Result<(), shipper::HookError> {
        for &b in self.blocks {
            let len = self.disk.geometry().block_len(b);
            self.disk.write_at(&vec![0xee; len], b * BS, false)?;
        }
        *self.usage.lock().unwrap() = Some(self.disk.copy_usage()?);
        Ok(())
    }
}

/// Blocks overwritten after the cut but before the cycle reads them are
/// shipped as they were at the cut, from their copies (the reader takes
/// them there without reading the image), whether the copy waited in memory
/// or, past the copy memory budget, in the scratch file.
#[test]
fn blocks_overwritten_before_they_are_read_ship_as_at_the_cut() {
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    let writes: Vec<(u64, u8)> = (0..BLOCKS).map(|b| (b, b as u8 + 1)).collect();
    f.write(&writes);
    let _ = f.ship(&vault).unwrap();
    f.write(&[(3, 0xc3), (4, 0xc4), (10, 0xca), (BLOCKS - 1, 0xcf)]); // fills no other block has
    let at_cut = std::fs::read(&f.paths.image).unwrap();
    // Room in memory for two copies: the other two go to the scratch file.
    let disk = std::sync::Arc::new(
        Disk::open_with_copy_memory(f.paths.clone(), filter::copies::CopyMemory::new(2 * BS)).unwrap(),
    );
    let overwritten = [3, 4, 10, BLOCKS - 1];
    let hook = OverwriteAfterCut { disk: &disk, blocks: &overwritten, usage: std::sync::Mutex::new(None) };
    let mut src = LocalSource::shared(std::sync::Arc::clone(&disk));
    let opts = CycleOptions { workers: 2, cut_hook: Some(&hook), ..CycleOptions::new("disk1", [3; 16]) };
    let r = run_cycle(&mut src, &vault, &keys(), &opts, &mut ()).unwrap();
    let usage = hook.usage.lock().unwrap().expect("the hook ran");
    // Blocks 3 and 4 in memory; 10 and the short last block in the file.
    assert_eq!(
        (usage.memory_bytes, usage.file_bytes),
        (2 * BS, 2 * BS - 1000),
        "two copies in memory, two in the file"
    );
    assert_eq!((r.sequence, r.blocks_read, r.new_blocks), (2, 4, 4));
    // The reader took all four from their copies: none from the image
    // (whose page cache holds the overwrites; with io_uring this counts
    // the blocks the image's cache served).
    assert_eq!(r.cached_blocks, 0);
    assert_eq!(f.restore(&vault, 2), at_cut, "the point is the disk as at the cut, not as overwritten");
    // The overwrites are the next cycle's.
    drop(src);
    let disk = std::sync::Arc::try_unwrap(disk).ok().expect("the only user");
    assert_eq!(disk.state().live().ones().collect::<Vec<_>>(), overwritten.to_vec());
    disk.close().unwrap();
    let _ = f.ship(&vault).unwrap();
    assert_eq!(f.restore(&vault, 3), std::fs::read(&f.paths.image).unwrap());
}

/// A backend that fails every put of one kind after `allow` successes.
struct Failing {
    inner: Box<dyn Backend>,
    kind: Kind,
    allow: AtomicU32,
}

impl Failing {
    /// Fails a write of this backend's kind once its successes are used up.
    fn fail(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.fail_as(kind, name, "injected failure writing")
    }

    fn fail_as(&self, kind: Kind, name: &str, what: &'static str) -> Result<(), VaultError> {
        if kind == self.kind
            && self.allow.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_err()
        {
            return Err(VaultError::Io { what, path: name.into(), source: std::io::Error::other("disk full") });
        }
        Ok(())
    }
}

impl Backend for Failing {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.fail(kind, name)?;
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<vault::Version, VaultError> {
        self.fail(kind, name)?;
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
        version: &vault::Version,
    ) -> Result<vault::Version, VaultError> {
        self.fail(kind, name)?;
        self.inner.replace_if(kind, name, data, version)
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
        self.inner.delete(kind, name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        Ok(self.inner.writer(kind)?.map(|inner| Box::new(FailingWriter { inner, kind, backend: self }) as Box<_>))
    }
}

/// A streamed object of a [`Failing`] backend: its commit counts as a write.
struct FailingWriter<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    kind: Kind,
    backend: &'a Failing,
}

impl ObjectWriter for FailingWriter<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.inner.write(data)
    }
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        self.backend.fail_as(self.kind, name, "injected failure committing")?;
        self.inner.commit(name)
    }
}

#[test]
fn a_failed_cycle_commits_nothing_and_loses_no_change() {
    for kind in [Kind::Pack, Kind::Page, Kind::Root] {
        let f = Fixture::new();
        let vault = f.vault(Box::new(Failing { inner: local(f.dir.path()), kind, allow: AtomicU32::new(1) }));
        f.write(&[(1, 1), (2, 2)]);
        f.ship(&vault).unwrap();
        f.write(&[(2, 3), (30, 4)]);
        let e = f.ship(&vault).unwrap_err();
        assert!(e.to_string().contains("injected failure"), "{kind}: {e}");
        assert_eq!(vault.points(&chain([3; 16])).unwrap().len(), 1, "{kind}: a failed cycle left a point");
        assert_eq!(f.dirty(), vec![2, 30], "{kind}: the failed cycle's changes must stay dirty");
        // With the vault healthy again the next cycle ships them.
        let healthy = Vault::open(local(f.dir.path())).unwrap();
        let r = f.ship(&healthy).unwrap();
        assert_eq!((r.sequence, r.blocks_read), (2, 2), "{kind}");
        assert_eq!(f.restore(&healthy, 2), std::fs::read(&f.paths.image).unwrap(), "{kind}");
    }
}

#[test]
fn a_suspect_state_is_verified_in_full_and_then_cleared() {
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    f.write(&[(1, 1), (2, 2)]);
    f.ship(&vault).unwrap();
    // Replace the state file as after a damaged one: every block suspect.
    std::fs::remove_file(&f.paths.state).unwrap();
    StateFile::create(&f.paths.state, Geometry::new(BLOCKS * BS - 1000, BS).unwrap(), [3; 16], true).unwrap();
    // A change the (lost) bitmap would not know about, written behind the filter's back.
    {
        use std::os::unix::fs::FileExt;
        let img = std::fs::OpenOptions::new().write(true).open(&f.paths.image).unwrap();
        img.write_all_at(&[0xee; 512], 40 * BS).unwrap();
    }
    let r = f.ship(&vault).unwrap();
    assert!(r.full, "a suspect state makes the cycle read every block");
    assert_eq!(r.new_blocks, 1, "only the block that differs is shipped");
    assert!(!StateFile::report(&f.paths.state).unwrap().suspect, "the verify clears suspect");
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
    let r = f.ship(&vault).unwrap();
    assert!(!r.full);
}

/// Regression test for issue 4 (failback) and issue 12 (hole 2): a disk
/// protected anew under a name that another disk's points already use (its
/// recovered copy shipping back, another host) gets a chain of its own: it
/// never builds on the other disk's points, nor adds to their chain. Its
/// first cycle reads the whole disk, sends only blocks the vault lacks (the
/// block index is shared), and restores to this disk.
#[test]
fn a_new_disk_under_a_name_with_points_of_another_disk_syncs_in_full() {
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    f.write(&[(0, 1), (5, 2)]);
    f.ship(&vault).unwrap();
    // Another disk (another identity), same name and size: a copy of the
    // first one with one block changed, its state new and clean.
    let g = Fixture::new();
    std::fs::copy(&f.paths.image, &g.paths.image).unwrap();
    StateFile::create(&g.paths.state, Geometry::new(BLOCKS * BS - 1000, BS).unwrap(), [9; 16], false).unwrap();
    {
        let d = Disk::open(g.paths.clone()).unwrap();
        d.write_at(&[7u8; 4096], 9 * BS, false).unwrap();
        d.close().unwrap();
    }
    let mut src = LocalSource::open(g.paths.clone()).unwrap();
    let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", [9; 16]) };
    let r = run_cycle(&mut src, &vault, &keys(), &opts, &mut ()).unwrap();
    src.close().unwrap();
    assert!(r.full && r.blocks_read == BLOCKS, "{r:?}");
    assert_eq!(r.new_blocks, 1, "only the changed block is new to the vault: {r:?}");
    assert_eq!((r.sequence, r.chain_break.as_ref()), (1, None), "a chain of its own: {r:?}");
    assert_ne!(chain([9; 16]), chain([3; 16]));
    assert_eq!(vault.sequences(&chain([3; 16])).unwrap(), [1], "the first disk's chain is untouched");
    let mut chains = vault.disks().unwrap();
    chains.sort();
    let mut want = vec![chain([3; 16]), chain([9; 16])];
    want.sort();
    assert_eq!(chains, want, "no chain is named after the disk");
    let out = f.dir.path().join("g.img");
    let file = std::fs::File::create(&out).unwrap();
    vault.restore(&chain([9; 16]), r.sequence, &keys(), &file, &mut ()).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&g.paths.image).unwrap());
}

/// Issue 12, hole 1: the vault loses its newest points (its storage rolled
/// back, or the roots deleted). The dirty map is relative to the lost point,
/// so an incremental on the older one would lack what the lost points
/// carried. The cycle must verify the whole disk, say so, and never reuse a
/// sequence number this host committed.
#[test]
fn deleted_newest_roots_make_the_next_cycle_a_full_verify() {
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    f.write(&[(0, 1)]);
    f.ship(&vault).unwrap();
    f.write(&[(3, 2)]);
    f.ship(&vault).unwrap();
    f.write(&[(4, 3)]);
    assert_eq!(f.ship(&vault).unwrap().sequence, 3);
    vault.delete_root(&chain([3; 16]), 3).unwrap();
    vault.delete_root(&chain([3; 16]), 2).unwrap();
    f.write(&[(7, 4)]);
    let r = f.ship(&vault).unwrap();
    assert_eq!(
        f.restore(&vault, r.sequence),
        std::fs::read(&f.paths.image).unwrap(),
        "the point after a rollback must be the disk: {r:?}"
    );
    assert!(r.full, "{r:?}");
    assert!(r.warnings.iter().any(|w| w.contains("VAULT ROLLED BACK") && w.contains("point 3")), "{:?}", r.warnings);
    assert!(r.chain_break.as_ref().is_some_and(|b| b.lost_points()));
    assert_eq!(r.sequence, 4, "sequence 2 and 3 were committed by this host once: never reused");
    // Back on its own chain, the next cycle is incremental again.
    f.write(&[(8, 5)]);
    let r = f.ship(&vault).unwrap();
    assert!(!r.full && r.warnings.is_empty(), "{r:?}");
    assert_eq!(f.restore(&vault, r.sequence), std::fs::read(&f.paths.image).unwrap());
}

/// Issue 12, hole 1, as a careless admin does it: protect to vault A,
/// re-point to vault B, ship, re-point back to A. A's newest point is older
/// than what the dirty map is relative to.
#[test]
fn a_vault_switched_away_and_back_gets_a_full_verify() {
    let f = Fixture::new();
    let a = Vault::init(Box::new(LocalBackend::create(&f.dir.path().join("a")).unwrap()), &keys()).unwrap();
    let b = Vault::init(Box::new(LocalBackend::create(&f.dir.path().join("b")).unwrap()), &keys()).unwrap();
    f.write(&[(0, 1)]);
    f.ship(&a).unwrap();
    f.write(&[(3, 2)]);
    let rb = f.ship(&b).unwrap();
    assert!(rb.full, "a vault with no point of the disk gets a full sync");
    f.write(&[(5, 3)]);
    let r = f.ship(&a).unwrap();
    assert_eq!(
        f.restore(&a, r.sequence),
        std::fs::read(&f.paths.image).unwrap(),
        "vault A's new point must hold the change shipped to B: {r:?}"
    );
    assert!(r.full, "{r:?}");
    assert!(r.warnings.iter().any(|w| w.contains("another vault")), "{:?}", r.warnings);
}

/// The process died after committing a point and before recording it: the
/// dirty maps still hold everything since the recorded point (a superset),
/// so the next cycle builds on the unrecorded point, incrementally.
#[test]
fn a_point_committed_but_never_recorded_is_built_on() {
    struct NoFinish<'a>(&'a mut LocalSource);
    impl shipper::CutSource for NoFinish<'_> {
        fn geometry(&self) -> Geometry {
            self.0.geometry()
        }
        fn suspect(&mut self) -> Result<bool, ShipError> {
            self.0.suspect()
        }
        fn last_point(&mut self) -> Result<Option<disk_format::LastPoint>, ShipError> {
            self.0.last_point()
        }
        fn cut(&mut self, kind: filter::CutKind) -> Result<filter::CutInfo, ShipError> {
            self.0.cut(kind)
        }
        fn blocks(&mut self) -> Result<Vec<u64>, ShipError> {
            self.0.blocks()
        }
        fn read(&mut self, first: u64, count: u64, out: &mut Vec<u8>) -> Result<(), ShipError> {
            self.0.read(first, count, out)
        }
        fn finish(&mut self, _: &disk_format::LastPoint, _: bool) -> Result<(), ShipError> {
            Err(ShipError::Source(std::io::Error::other("the filter died")))
        }
        fn abort(&mut self) -> Result<(), ShipError> {
            self.0.abort()
        }
        fn direct(&self) -> Option<shipper::DirectCut<'_>> {
            self.0.direct()
        }
    }
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    f.write(&[(0, 1)]);
    f.ship(&vault).unwrap();
    f.write(&[(3, 2)]);
    let mut src = LocalSource::open(f.paths.clone()).unwrap();
    let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", [3; 16]) };
    let r = run_cycle(&mut NoFinish(&mut src), &vault, &keys(), &opts, &mut ()).unwrap();
    assert!(r.warnings.iter().any(|w| w.contains("could not be told")), "{r:?}");
    // The cut was never finished: closing the disk merges it back.
    src.close().unwrap();
    assert_eq!(f.dirty(), vec![3]);
    f.write(&[(5, 3)]);
    let r = f.ship(&vault).unwrap();
    assert!(!r.full && r.warnings.is_empty() && r.blocks_read == 2, "{r:?}");
    assert_eq!(r.sequence, 3);
    assert_eq!(f.restore(&vault, 3), std::fs::read(&f.paths.image).unwrap());
}

/// Issue 12, holes 2 and 10: a vault written before root format 2 keeps a
/// disk's points under its name, in format 1. After the upgrade the disk's
/// first cycle builds on the point its state recorded there (an incremental,
/// no full verify), writes format 2 under its namespace, and both points are
/// the disk's.
#[test]
fn the_first_cycle_after_the_upgrade_builds_on_the_format_1_point_on_record() {
    use disk_format::{LastPoint, Root, RootId};
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    let k = keys();
    f.write(&[(0, 1), (5, 2)]);
    f.ship(&vault).unwrap();
    // Make point 1 what an older Lifeboat wrote: format 1, under the name,
    // and recorded so in the state file.
    let ns = chain([3; 16]);
    let v2 = vault.backend().get(Kind::Root, &vault::root_name(&ns, 1)).unwrap();
    let mut old = Root::decode(&v2, &k).unwrap();
    // An older Lifeboat stored each map page alone, not in page packs.
    let all: Vec<u64> = (0..old.pages.len() as u64).collect();
    for bytes in vault.load_pages("disk1/1", &old, &all).unwrap().into_values() {
        vault.put_page(&disk_format::PageId::of(&bytes), &bytes).unwrap();
    }
    (old.page_packs, old.page_pack_of) = (Vec::new(), Vec::new());
    let v1 = old.encode_version_1_for_tests(&k).unwrap();
    vault.put_root("disk1", 1, &v1).unwrap();
    vault.delete_root(&ns, 1).unwrap();
    {
        let d = Disk::open(f.paths.clone()).unwrap();
        let cut = d.cut(filter::CutKind::Dirty).unwrap();
        let point = LastPoint {
            vault_id: vault.config().vault_id,
            sequence: 1,
            root_id: RootId::of(&v1),
            cut_generation: cut.generation,
        };
        d.finish_cut(point, false).unwrap();
        d.close().unwrap();
    }
    f.write(&[(9, 3)]);
    let r = f.ship(&vault).unwrap();
    assert!(!r.full && r.chain_break.is_none() && r.blocks_read == 1, "{r:?}");
    assert_eq!(r.sequence, 2);
    assert_eq!(vault.sequences(&ns).unwrap(), [2]);
    assert_eq!(vault.sequences("disk1").unwrap(), [1]);
    let root2 = vault.load_root(&ns, 2, Some(&k)).unwrap();
    assert_eq!(root2.parent, Some(RootId::of(&v1)));
    assert_eq!(root2.namespace, Some(k.disk_namespace(&[3; 16])));
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
    // The disk's points are both, each from its chain.
    let points = vault.disk_points(&k, "disk1", &[3; 16]).unwrap().points;
    let listed: Vec<(u64, &str)> = points.iter().map(|p| (p.sequence, p.chain.as_str())).collect();
    assert_eq!(listed, [(1, "disk1"), (2, ns.as_str())]);
    // A recovery site finds one disk of that name, with both points.
    let disks = vault.disks_by_identity(&k).unwrap();
    let d = disks.pick("disk1", &vault::DiskChoice::default(), "v").unwrap();
    assert_eq!((d.disk_id, d.points.len()), ([3; 16], 2));
}

/// `inner` taking `lanes` streamed packs at once, as a vault server does
/// ([`Backend::writes_in_flight`]), holding each pack's commit until a
/// second is under way (or, once, until its patience ran out), so that a
/// storer that does overlap its packs is seen to, however fast the disk.
fn overlapping(inner: Box<dyn Backend>, lanes: usize) -> (InFlight<Box<dyn Backend>>, Seen) {
    let patience = Duration::from_secs(if lanes > 1 { 20 } else { 1 });
    let backend = InFlight::new(inner, 1, 1, 0..0, patience).with_commits(lanes, 2);
    let seen = backend.seen();
    (backend, seen)
}

/// A disk of 100 MiB of distinct bytes (its first, full cycle fills four
/// packs).
fn busy_disk() -> Fixture {
    let blocks = 1600;
    let f = Fixture::sized(blocks);
    std::fs::write(&f.paths.image, random_bytes((blocks * BS - 1000) as usize, 1)).unwrap();
    f
}

/// `n` bytes that do not compress and never repeat a block, the same for
/// the same `seed` (BLAKE3's output stream).
fn random_bytes(n: usize, seed: u64) -> Vec<u8> {
    let mut out = vec![0u8; n];
    blake3::Hasher::new().update(&seed.to_le_bytes()).finalize_xof().fill(&mut out);
    out
}

/// Against a backend that takes two streamed packs at once (a vault
/// server), the cycle streams the next pack while the one before is being
/// committed, so the server's fsyncs do not stop the stream; the point is
/// still exact, its packs listed in the order they were built.
#[test]
fn a_cycle_streams_the_next_pack_while_the_last_commits() {
    let f = busy_disk();
    let (backend, commits) = overlapping(local(f.dir.path()), 2);
    let vault = f.vault(Box::new(backend));
    let r = f.ship(&vault).unwrap();
    assert!(r.packs >= 4, "the disk fills at least four packs: {}", r.packs);
    assert_eq!(commits.max_commits(), 2, "a pack's commit waited for the one before it");
    assert_eq!(f.restore(&vault, 1), std::fs::read(&f.paths.image).unwrap());
    // A backend that takes one at a time is given one at a time.
    let g = busy_disk();
    let (backend, commits) = overlapping(local(g.dir.path()), 1);
    let vault = g.vault(Box::new(backend));
    let _ = g.ship(&vault).unwrap();
    assert_eq!(commits.max_commits(), 1, "two packs committed at once against a backend that takes one");
}

/// No pack is larger than `PACK_MAX`, index and trailer included, and
/// every pack but the last is as full as a block more would not make it.
#[test]
fn packs_end_before_a_block_would_take_them_past_the_largest_size() {
    let f = busy_disk();
    let vault = f.vault(local(f.dir.path()));
    let r = f.ship(&vault).unwrap();
    let mut sizes: Vec<u64> = vault
        .backend()
        .list(Kind::Pack, "")
        .unwrap()
        .iter()
        .map(|p| vault.backend().size(Kind::Pack, p).unwrap().unwrap())
        .collect();
    assert_eq!(sizes.len() as u64, r.packs);
    sizes.sort_unstable();
    assert!(sizes.iter().all(|&s| s <= shipper::cycle::PACK_MAX), "a pack above 32 MiB: {sizes:?}");
    let blob = BS + 40 + 56; // a sealed block and its index entry
    assert!(sizes[1..].iter().all(|&s| s > shipper::cycle::PACK_MAX - blob), "a pack ended early: {sizes:?}");
    assert_eq!(f.restore(&vault, 1), std::fs::read(&f.paths.image).unwrap());
}

/// An incremental cycle's new blocks are split evenly across the packs a
/// backend takes at once, so that the first is sent while the rest is
/// read; a cycle of under 8 MiB stays one pack, and a backend that takes one
/// pack at a time gets one.
#[test]
fn an_incremental_fills_every_upload_lane_but_not_with_small_packs() {
    let two_lanes = |f: &Fixture| {
        let b = InFlight::new(local(f.dir.path()), 1, 1, 0..0, Duration::ZERO).with_commits(2, 1);
        f.vault(Box::new(b))
    };
    let ten_mib: Vec<(u64, u8)> = (0..160).map(|i| (i * 10, 1 + (i % 200) as u8)).collect();
    let f = busy_disk();
    let vault = two_lanes(&f);
    f.ship(&vault).unwrap();
    f.write(&ten_mib);
    let r = f.ship(&vault).unwrap();
    assert_eq!((r.new_blocks, r.packs), (160, 2), "{r:?}");
    let few: Vec<(u64, u8)> = ten_mib[..40].iter().map(|&(b, fill)| (b, fill + 1)).collect();
    f.write(&few);
    let r = f.ship(&vault).unwrap();
    assert_eq!((r.new_blocks, r.packs), (40, 1), "{r:?}");
    assert_eq!(f.restore(&vault, 3), std::fs::read(&f.paths.image).unwrap());

    let g = busy_disk();
    let vault = g.vault(local(g.dir.path()));
    g.ship(&vault).unwrap();
    g.write(&ten_mib);
    let r = g.ship(&vault).unwrap();
    assert_eq!((r.new_blocks, r.packs), (160, 1), "{r:?}");
}

/// A flag one thread raises and another waits for, for a while.
#[derive(Default)]
struct Flag {
    up: std::sync::Mutex<bool>,
    changed: std::sync::Condvar,
}

impl Flag {
    fn set(&self, up: bool) {
        *self.up.lock().unwrap() = up;
        self.changed.notify_all();
    }

    /// Waits up to 10 s for the flag to be up; whether it is.
    fn wait(&self) -> bool {
        let up = self.up.lock().unwrap();
        *self.changed.wait_timeout_while(up, Duration::from_secs(10), |up| !*up).unwrap().0
    }
}

/// Whether map pages have been read and how often, and, with `hold_packs`,
/// whether a pack commit waiting for one ran out of patience.
#[derive(Default)]
struct PageGate {
    page_read: Flag,
    reads: AtomicU32,
    hold_packs: std::sync::atomic::AtomicBool,
    waited_out: std::sync::atomic::AtomicBool,
}

/// A local vault that watches the reads of map page objects (`PageGate`).
/// With `hold_packs`, its pack commits wait, up to 10 s, until a page has
/// been read: a cycle that reads the previous point's pages only after its
/// blocks stalls on it (its packer waits for the storer's chunks), and the
/// wait running out is recorded.
struct PageWatch {
    inner: Box<dyn Backend>,
    gate: std::sync::Arc<PageGate>,
}

impl PageWatch {
    fn saw(&self, kind: Kind) {
        if kind == Kind::Page {
            self.gate.reads.fetch_add(1, Ordering::SeqCst);
            self.gate.page_read.set(true);
        }
    }
}

impl Backend for PageWatch {
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<vault::Version, VaultError> {
        self.inner.create(kind, name, data)
    }
    fn get_versioned(&self, kind: Kind, name: &str) -> Result<(Vec<u8>, vault::Version), VaultError> {
        self.saw(kind);
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
        self.saw(kind);
        self.inner.get(kind, name)
    }
    fn get_range(&self, kind: Kind, name: &str, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        self.saw(kind);
        self.inner.get_range(kind, name, offset, len)
    }
    fn size(&self, kind: Kind, name: &str) -> Result<Option<u64>, VaultError> {
        self.saw(kind);
        self.inner.size(kind, name)
    }
    fn get_tail(&self, kind: Kind, name: &str, max_len: u64) -> Result<Option<(Vec<u8>, u64)>, VaultError> {
        self.saw(kind);
        self.inner.get_tail(kind, name, max_len)
    }
    fn list(&self, kind: Kind, prefix: &str) -> Result<Vec<String>, VaultError> {
        self.inner.list(kind, prefix)
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.delete(kind, name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
    fn writer(&self, kind: Kind) -> Result<Option<Box<dyn ObjectWriter + '_>>, VaultError> {
        Ok(self.inner.writer(kind)?.map(|inner| Box::new(AfterPages { inner, kind, gate: &self.gate }) as Box<_>))
    }
}

struct AfterPages<'a> {
    inner: Box<dyn ObjectWriter + 'a>,
    kind: Kind,
    gate: &'a PageGate,
}

impl ObjectWriter for AfterPages<'_> {
    fn write(&mut self, data: &[u8]) -> Result<(), VaultError> {
        self.inner.write(data)
    }
    fn commit(self: Box<Self>, name: &str) -> Result<(), VaultError> {
        let hold = self.gate.hold_packs.load(Ordering::SeqCst);
        if self.kind == Kind::Pack && hold && !self.gate.page_read.wait() {
            self.gate.waited_out.store(true, Ordering::SeqCst);
        }
        self.inner.commit(name)
    }
}

/// An incremental cycle fetches the previous point's map pages while it
/// reads its blocks, not after: its first pack's commit, held until a page
/// has been read, goes through at once.
#[test]
fn the_previous_pages_are_fetched_while_the_blocks_are_read() {
    let f = busy_disk();
    let gate = std::sync::Arc::new(PageGate::default());
    let vault = f.vault(Box::new(PageWatch { inner: local(f.dir.path()), gate: gate.clone() }));
    f.ship(&vault).unwrap(); // a full sync reads no page
    gate.page_read.set(false);
    gate.hold_packs.store(true, Ordering::SeqCst);
    // 50 MiB changed: two packs, the second larger than the storer's chunks.
    let changes: Vec<(u64, u8)> = (0..800).map(|i| (i * 2, 1 + (i % 200) as u8)).collect();
    f.write(&changes);
    let r = f.ship(&vault).unwrap();
    assert!(r.packs >= 2 && r.new_blocks == 800, "{r:?}");
    assert!(!gate.waited_out.load(Ordering::SeqCst), "a pack's commit waited 10 s for the pages to be read");
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
}

/// A pack that fails to commit while the next is in flight fails the cycle:
/// no point names either pack, and the next cycle ships the disk whole.
#[test]
fn a_pack_failing_beside_another_in_flight_fails_the_cycle() {
    let f = busy_disk();
    let failing = Failing { inner: local(f.dir.path()), kind: Kind::Pack, allow: AtomicU32::new(0) };
    let (backend, _) = overlapping(Box::new(failing), 2);
    let vault = f.vault(Box::new(backend));
    let e = f.ship(&vault).unwrap_err();
    assert!(e.to_string().contains("injected failure committing"), "{e}");
    assert!(vault.points(&chain([3; 16])).unwrap().is_empty(), "a failed cycle left a point");
    // The link back: the same vault, without the failure.
    drop(vault);
    let vault = Vault::open(Box::new(LocalBackend::open(&f.dir.path().join("vault")).unwrap())).unwrap();
    let r = f.ship(&vault).unwrap();
    assert!(r.full && r.sequence == 1, "{r:?}");
    assert_eq!(f.restore(&vault, 1), std::fs::read(&f.paths.image).unwrap());
}

/// Issue 17 point 0: a cycle stores the map pages it changed as one page
/// pack; the next point keeps its unchanged pages where they are and names
/// both packs. A damaged page in a pack is named with its pack, and a lost
/// pack makes the next cycle verify the whole disk instead of failing.
#[test]
fn a_cycle_stores_its_changed_map_pages_as_one_page_pack() {
    use disk_format::PagePack;
    let f = Fixture::sized(1100); // three map pages
    let vault = f.vault(local(f.dir.path()));
    let (k, ns) = (keys(), chain([3; 16]));
    let page_objects = || vault.backend().list(Kind::Page, "").unwrap();
    f.write(&[(1, 1), (600, 2), (1050, 3)]);
    f.ship(&vault).unwrap();
    let r1 = vault.load_root(&ns, 1, Some(&k)).unwrap();
    assert_eq!((r1.page_packs.len(), r1.page_pack_of.clone()), (1, vec![0, 0, 0]));
    assert_eq!(page_objects(), [r1.page_packs[0].to_string()], "three pages, one object");

    f.write(&[(700, 4)]);
    let r = f.ship(&vault).unwrap();
    assert_eq!(r.pages, 1);
    let r2 = vault.load_root(&ns, 2, Some(&k)).unwrap();
    let (old, new) = (r1.page_packs[0], *r2.page_pack(1).unwrap());
    assert_ne!(old, new);
    assert_eq!((r2.page_pack(0), r2.page_pack(2)), (Some(&old), Some(&old)), "unchanged pages stay put");
    assert_eq!((r2.pages[0], r2.pages[2]), (r1.pages[0], r1.pages[2]));
    let new_pack = PagePack::parse(&vault.backend().get(Kind::Page, &new.to_string()).unwrap()).unwrap();
    assert_eq!(new_pack.entries.len(), 1, "the new pack holds the one changed page");
    assert_eq!(page_objects().len(), 2);
    let image = std::fs::read(&f.paths.image).unwrap();
    assert_eq!(f.restore(&vault, 2), image);

    // A bit flipped in page 0 inside the first pack: both points name it.
    let object = f.dir.path().join("vault/pages").join(&old.to_string()[..2]).join(old.to_string());
    let mut bytes = std::fs::read(&object).unwrap();
    let page0 = PagePack::parse(&bytes).unwrap().entries[0].range.clone();
    bytes[page0.start as usize + 40] ^= 1;
    std::fs::write(&object, &bytes).unwrap();
    let out = std::fs::File::create(f.dir.path().join("r.img")).unwrap();
    match vault.restore(&ns, 2, &k, &out, &mut ()) {
        Err(VaultError::Damaged { object, damage: vault::Damage::Corrupt, .. }) => {
            assert_eq!(object, format!("pages/{old}"))
        }
        other => panic!("{other:?}"),
    }
    let report = vault.check(None, &mut ()).unwrap();
    assert!(report.problems.iter().any(|p| p.object == format!("pages/{old}")), "{report:?}");
    assert!(
        !report.problems.iter().any(|p| p.detail.contains(&r2.pages[2].to_string())),
        "page 2 of the same pack is sound and not blamed: {report:?}"
    );
    bytes[page0.start as usize + 40] ^= 1;
    std::fs::write(&object, &bytes).unwrap();

    // The second pack lost: point 2 is missing a page, point 1 restores,
    // and the next cycle, which changes that page and so cannot build on
    // point 2's, verifies the whole disk.
    vault.backend().delete(Kind::Page, &new.to_string()).unwrap();
    match vault.restore(&ns, 2, &k, &out, &mut ()) {
        Err(VaultError::Damaged { object, damage: vault::Damage::Missing, .. }) => {
            assert_eq!(object, format!("pages/{new}"))
        }
        other => panic!("{other:?}"),
    }
    let out1 = f.dir.path().join("r1.img");
    vault.restore(&ns, 1, &k, &std::fs::File::create(&out1).unwrap(), &mut ()).unwrap();
    let _ = r1; // point 1's blocks are all it names
    f.write(&[(701, 6)]);
    let r = f.ship(&vault).unwrap();
    assert!(r.full && r.warnings.iter().any(|w| w.contains("cannot be built on")), "{r:?}");
    assert_eq!(f.restore(&vault, 3), std::fs::read(&f.paths.image).unwrap());
}

#[test]
fn a_restore_reads_the_indexes_of_the_packs_its_pages_hint_at() {
    use disk_format::PagePack;
    let a = Fixture::sized(1100); // three map pages
    let vault = a.vault(local(a.dir.path()));
    let (k, ns) = (keys(), chain([3; 16]));
    a.write(&[(1, 1), (600, 2), (1050, 3)]);
    a.ship(&vault).unwrap();
    // Another disk of the same vault ships five points, a pack each.
    let b = Fixture::sized(BLOCKS);
    std::fs::remove_file(&b.paths.state).unwrap();
    StateFile::create(&b.paths.state, Geometry::new(BLOCKS * BS - 1000, BS).unwrap(), [4; 16], false).unwrap();
    for round in 0..5u8 {
        b.write(&[(u64::from(round), 10 + round)]);
        let mut src = LocalSource::open(b.paths.clone()).unwrap();
        let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk2", [4; 16]) };
        run_cycle(&mut src, &vault, &k, &opts, &mut ()).unwrap();
        src.close().unwrap();
    }
    let packs = vault.backend().list(Kind::Pack, "").unwrap();
    assert_eq!(packs.len(), 6);
    let image = std::fs::read(&a.paths.image).unwrap();
    let restore = |name: &str| {
        let out = a.dir.path().join(name);
        let report = vault.restore(&ns, 1, &k, &std::fs::File::create(&out).unwrap(), &mut ()).unwrap();
        assert!(std::fs::read(&out).unwrap() == image, "{name} differs from the disk");
        report
    };
    assert_eq!(restore("hinted.img").packs_indexed, 1, "only the pack the pages hint at");

    // A vault that lies: the page pack's hints rewritten to name another
    // disk's pack (the pages, checked against the root, are untouched). The
    // blocks are not there, so the restore looks in every pack, and still
    // restores exactly; the scrub names the page pack.
    let r1 = vault.load_root(&ns, 1, Some(&k)).unwrap();
    let page_pack = r1.page_packs[0].to_string();
    let object = a.dir.path().join("vault/pages").join(&page_pack[..2]).join(&page_pack);
    let mut bytes = std::fs::read(&object).unwrap();
    let hints = PagePack::parse(&bytes).unwrap().hints_range.expect("version 2");
    let at = usize::try_from(hints.start).unwrap() + 8;
    let ours = hex(&bytes[at..at + 32]);
    let other = packs.iter().find(|p| **p != ours).unwrap();
    bytes[at..at + 32].copy_from_slice(&disk_format::PackId::from_hex(other).unwrap().0);
    std::fs::write(&object, &bytes).unwrap();
    assert_eq!(restore("lied-to.img").packs_indexed, 6, "every pack, once the hints led nowhere");
    let report = vault.check(None, &mut ()).unwrap();
    assert!(report.problems.iter().any(|p| p.object == format!("pages/{page_pack}")), "{report:?}");
}

/// Every page's hints name the pack of each of its blocks, also for a
/// block whose contents were stored earlier in the same cycle, in an
/// earlier pack (the full sync of 70 MB writes three packs of 32 MiB).
#[test]
fn each_pages_hints_name_the_packs_its_blocks_are_in() {
    use disk_format::{MapPage, PagePack};
    let f = Fixture::sized(1100);
    let vault = f.vault(local(f.dir.path()));
    let (k, ns) = (keys(), chain([3; 16]));
    let mut image = random_bytes(1100 * BS as usize - 1000, 7);
    // Block 1050 (page 2, the last pack) holds block 1's bytes (page 0, the first).
    image.copy_within(BS as usize..2 * BS as usize, 1050 * BS as usize);
    std::fs::write(&f.paths.image, &image).unwrap();
    let r = f.ship(&vault).unwrap();
    assert!(r.full && r.packs >= 3, "{r:?}");
    assert_eq!(r.known_blocks, 1, "block 1050 is block 1's contents");
    let root = vault.load_root(&ns, 1, Some(&k)).unwrap();
    let index = vault.block_index().unwrap();
    let pack = PagePack::parse(&vault.backend().get(Kind::Page, &root.page_packs[0].to_string()).unwrap()).unwrap();
    let bytes = vault.backend().get(Kind::Page, &root.page_packs[0].to_string()).unwrap();
    let hints = pack.hints(&bytes, bytes.len() as u64).unwrap().unwrap().expect("version 2");
    for (i, e) in pack.entries.iter().enumerate() {
        let page = MapPage::decode(e.bytes(&bytes)).unwrap();
        let hinted: Vec<_> = hints.of_page(i).expect("known").copied().collect();
        for id in page.entries.iter().filter(|id| !id.is_zero()) {
            let at = index.get(id).unwrap().pack;
            assert!(hinted.contains(&at), "page {i}: block in pack {at} not among its hints {hinted:?}");
        }
    }
    assert_eq!(f.restore(&vault, 1), image);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A local vault that says it is remote (`Backend::remote`): taking a
/// cycle lease waits, up to 10 s, until the newest point's roots have been
/// listed, which only a cycle that sends the two at once does; or, with
/// `Overlap::after_blocks`, until the cut's blocks are being read
/// (`Reading`), which only a cycle that cuts before the vault answers does.
struct Remote {
    inner: Box<dyn Backend>,
    seen: std::sync::Arc<Overlap>,
}

#[derive(Default)]
struct Overlap {
    roots_listed: Flag,
    /// Cycle leases taken while the roots were being listed.
    leases: AtomicU32,
    /// Cycle leases wait for blocks read instead.
    after_blocks: std::sync::atomic::AtomicBool,
    blocks_read: Flag,
    /// A cycle lease waited 10 s for blocks read, in vain.
    waited_out: std::sync::atomic::AtomicBool,
}

/// A cycle's progress that raises a flag once blocks have been read.
struct Reading<'a>(&'a Flag);

impl vault::Progress for Reading<'_> {
    fn start(&mut self, _: &str, _: u64) {}
    fn advance(&mut self, units: u64) {
        if units > 0 {
            self.0.set(true);
        }
    }
}

impl Backend for Remote {
    fn remote(&self) -> bool {
        true
    }
    fn put(&self, kind: Kind, name: &str, data: &[u8]) -> Result<(), VaultError> {
        self.inner.put(kind, name, data)
    }
    fn create(&self, kind: Kind, name: &str, data: &[u8]) -> Result<vault::Version, VaultError> {
        if kind == Kind::Lease && name.starts_with("cycle/") {
            if self.seen.after_blocks.load(Ordering::SeqCst) {
                if !self.seen.blocks_read.wait() {
                    self.seen.waited_out.store(true, Ordering::SeqCst);
                }
            } else if self.seen.roots_listed.wait() {
                self.seen.leases.fetch_add(1, Ordering::SeqCst);
            }
        }
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
        version: &vault::Version,
    ) -> Result<vault::Version, VaultError> {
        self.inner.replace_if(kind, name, data, version)
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
        let names = self.inner.list(kind, prefix);
        if kind == Kind::Root {
            self.seen.roots_listed.set(true);
        }
        names
    }
    fn delete(&self, kind: Kind, name: &str) -> Result<(), VaultError> {
        self.inner.delete(kind, name)
    }
    fn location(&self) -> String {
        self.inner.location()
    }
}

#[test]
fn a_remote_vault_takes_the_lease_while_the_newest_point_is_read() {
    let f = Fixture::new();
    let seen = std::sync::Arc::new(Overlap::default());
    let vault = f.vault(Box::new(Remote { inner: local(f.dir.path()), seen: seen.clone() }));
    // Each cycle must list the roots itself (a cycle lists them again as it
    // commits).
    let ship = |f: &Fixture| {
        seen.roots_listed.set(false);
        f.ship(&vault).unwrap()
    };
    f.write(&[(1, 1), (2, 2)]);
    ship(&f);
    f.write(&[(2, 3), (30, 4)]);
    let r = ship(&f);
    assert_eq!((r.sequence, r.blocks_read), (2, 2));
    assert_eq!(seen.leases.load(Ordering::SeqCst), 2, "each cycle's lease went out while its roots were listed");
    assert!(vault.leases("").unwrap().is_empty(), "both cycles released their leases");
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
}

/// The objects of a vault's packs, pages and roots.
fn stored(vault: &Vault) -> Vec<String> {
    let b = vault.backend();
    [Kind::Pack, Kind::Page, Kind::Root]
        .iter()
        .flat_map(|&k| b.list(k, "").unwrap().into_iter().map(move |n| format!("{}/{n}", k.prefix())))
        .collect()
}

/// A remote vault whose cycle leases answer only once blocks are being read.
fn early_fixture() -> (Fixture, std::sync::Arc<Overlap>, Vault) {
    let f = Fixture::new();
    let seen = std::sync::Arc::new(Overlap::default());
    seen.roots_listed.set(true);
    let vault = f.vault(Box::new(Remote { inner: local(f.dir.path()), seen: seen.clone() }));
    (f, seen, vault)
}

impl Fixture {
    fn ship_reading(&self, vault: &Vault, seen: &Overlap) -> Result<shipper::CycleReport, ShipError> {
        seen.blocks_read.set(false);
        let mut src = LocalSource::open(self.paths.clone()).unwrap();
        let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", [3; 16]) };
        let r = run_cycle(&mut src, vault, &keys(), &opts, &mut Reading(&seen.blocks_read));
        src.close().unwrap();
        r
    }
}

/// Into a remote vault, an incremental cycle cuts before the vault answers
/// and reads its blocks while the lease and the newest point are asked for:
/// a lease held back until blocks are read goes through at once. (The
/// first cycle has no point to build on and cuts after the answers.)
#[test]
fn a_remote_vault_is_asked_while_the_cut_is_read() {
    let (f, seen, vault) = early_fixture();
    f.write(&[(1, 1), (2, 2)]);
    let r = f.ship_reading(&vault, &seen).unwrap();
    assert!(r.full && r.sequence == 1, "{r:?}");
    seen.after_blocks.store(true, Ordering::SeqCst);
    f.write(&[(2, 3), (30, 4)]);
    let r = f.ship_reading(&vault, &seen).unwrap();
    assert!(!r.full && (r.sequence, r.blocks_read, r.new_blocks) == (2, 2, 2), "{r:?}");
    assert!(!seen.waited_out.load(Ordering::SeqCst), "the lease waited 10 s for the cut to be read");
    assert!(vault.leases("").unwrap().is_empty(), "the cycle released its lease");
    assert!(f.dirty().is_empty());
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
}

/// A cut taken before the vault answered, when a GC holds the vault: the
/// cycle is refused as before, nothing of the cut reaches the vault (no
/// pack, page or root), and its blocks stay dirty for the next cycle.
#[test]
fn an_early_cut_writes_nothing_into_a_busy_vault() {
    let (f, seen, vault) = early_fixture();
    f.write(&[(1, 1), (2, 2)]);
    f.ship_reading(&vault, &seen).unwrap();
    let before = stored(&vault);
    let gc = "lifeboat lease v1\nholder=gc\nhost=far\nmachine=another-machine\nboot=b\npid=7\nstart=9\ncreated_ns=0\n";
    vault.backend().put(Kind::Lease, "gc/0011223344556677", gc.as_bytes()).unwrap();
    f.write(&[(2, 3), (30, 4)]);
    let e = f.ship_reading(&vault, &seen).unwrap_err();
    assert!(matches!(&e, ShipError::Vault(VaultError::Busy { .. })), "{e:?}");
    assert!(seen.blocks_read.wait(), "the cut was read while the vault was asked");
    assert_eq!(stored(&vault), before, "the refused cycle wrote into the vault");
    assert_eq!(f.dirty(), vec![2, 30], "the cut's blocks stay dirty");
    assert_eq!(vault.leases("").unwrap().len(), 1, "only the GC's lease is left");
    vault.break_lease("gc/0011223344556677").unwrap();
    let r = f.ship_reading(&vault, &seen).unwrap();
    assert!(!r.full && (r.sequence, r.blocks_read) == (2, 2), "{r:?}");
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
}

/// A cut taken before the vault answered, when the vault lost the point the
/// dirty maps are relative to (rolled back): the cut is handed back, and the
/// cycle verifies the whole disk and says why, as before; the new point
/// restores byte for byte.
#[test]
fn an_early_cut_on_a_rolled_back_vault_becomes_a_full_verify() {
    let (f, seen, vault) = early_fixture();
    f.write(&[(1, 1), (2, 2)]);
    f.ship_reading(&vault, &seen).unwrap();
    f.write(&[(2, 3), (30, 4)]);
    f.ship_reading(&vault, &seen).unwrap();
    let ns = chain([3; 16]);
    vault.backend().delete(Kind::Root, &format!("{ns}/{:020}", 2)).unwrap();
    assert_eq!(vault.points(&ns).unwrap().len(), 1, "the vault is back at point 1");
    f.write(&[(5, 5)]);
    let r = f.ship_reading(&vault, &seen).unwrap();
    assert!(r.full && r.sequence == 3, "{r:?}");
    assert!(r.chain_break.is_some() && r.warnings.iter().any(|w| w.contains("verifies the whole disk")), "{r:?}");
    assert!(f.dirty().is_empty());
    assert_eq!(f.restore(&vault, 3), std::fs::read(&f.paths.image).unwrap());
}

/// The files under `dir`, at any depth.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out = Vec::new();
    for e in entries.map(Result::unwrap) {
        if e.file_type().unwrap().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// The host keeps a copy of the newest point's map pages
/// (`CycleOptions::page_cache`), and an incremental cycle builds on it,
/// reading no page from the vault. Copies that do not check against the
/// root (damaged here) and a lost copy are read from the vault instead:
/// the points are right either way, and no cycle turns into a full verify.
#[test]
fn an_incremental_builds_on_the_hosts_copy_of_the_map_pages() {
    let f = Fixture::sized(1100); // three map pages
    let watch = std::sync::Arc::new(PageGate::default());
    let vault = f.vault(Box::new(PageWatch { inner: local(f.dir.path()), gate: watch.clone() }));
    let copies = f.dir.path().join("pages");
    let ship = |writes: &[(u64, u8)]| {
        f.write(writes);
        watch.reads.store(0, Ordering::SeqCst);
        let mut src = LocalSource::open(f.paths.clone()).unwrap();
        let opts = CycleOptions { workers: 2, page_cache: Some(&copies), ..CycleOptions::new("disk1", [3; 16]) };
        let r = run_cycle(&mut src, &vault, &keys(), &opts, &mut ()).unwrap();
        let page_reads = watch.reads.load(Ordering::SeqCst);
        src.close().unwrap();
        assert_eq!(f.restore(&vault, r.sequence), std::fs::read(&f.paths.image).unwrap(), "point {}", r.sequence);
        assert!(r.warnings.is_empty(), "{r:?}");
        (r, page_reads)
    };
    let (r, _) = ship(&[(1, 1), (600, 2), (1050, 3)]);
    assert!(r.full);
    assert_eq!(files_under(&copies).len(), 3, "a copy of each page");
    let (r, page_reads) = ship(&[(5, 4), (601, 5)]);
    assert!(!r.full && r.pages == 2, "{r:?}");
    assert_eq!(page_reads, 0, "the incremental read pages from the vault");
    assert_eq!(files_under(&copies).len(), 3, "the two replaced pages' copies are gone");

    for file in files_under(&copies) {
        std::fs::write(file, b"not a map page").unwrap();
    }
    let (r, page_reads) = ship(&[(602, 6)]);
    assert!(!r.full && page_reads > 0, "{r:?}, {page_reads} page reads");
    std::fs::remove_dir_all(&copies).unwrap();
    let (r, page_reads) = ship(&[(1051, 7)]);
    assert!(!r.full && page_reads > 0, "{r:?}, {page_reads} page reads");
    assert_eq!(files_under(&copies).len(), 1, "only the page this point wrote");
    let (_, page_reads) = ship(&[(1052, 8)]);
    assert_eq!(page_reads, 0);
}

/// A page copy that cannot be written (here a file stands where its
/// directory goes, as a full disk would fail it) is a warning on the point,
/// which commits; the next incremental reads the pages from the vault.
#[test]
fn a_page_copy_that_cannot_be_written_is_a_warning() {
    let f = Fixture::new();
    let vault = f.vault(local(f.dir.path()));
    let copies = f.dir.path().join("pages");
    std::fs::write(&copies, b"in the way").unwrap();
    let ship = || {
        let mut src = LocalSource::open(f.paths.clone()).unwrap();
        let opts = CycleOptions { workers: 2, page_cache: Some(&copies), ..CycleOptions::new("disk1", [3; 16]) };
        let r = run_cycle(&mut src, &vault, &keys(), &opts, &mut ()).unwrap();
        src.close().unwrap();
        r
    };
    f.write(&[(1, 1)]);
    let r = ship();
    assert!(r.full && r.sequence == 1, "{r:?}");
    assert!(r.warnings.iter().any(|w| w.contains("copy of the map pages could not be written")), "{r:?}");
    f.write(&[(2, 2)]);
    let r = ship();
    assert!(!r.full && r.sequence == 2, "{r:?}");
    assert!(f.dirty().is_empty());
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
}

/// Compression (issue 17 point 2): blocks that shrink by an eighth are
/// stored compressed, random ones as they are, and every path that reads a
/// block back (restore, the point reader of instant recovery and failback,
/// `vault check` with the key) returns it exactly; with compression off
/// nothing is compressed and the same points restore.
#[test]
fn compressible_blocks_are_stored_compressed_and_every_reader_inflates_them() {
    let f = Fixture::new();
    let d = Disk::open(f.paths.clone()).unwrap();
    // Blocks 0-3: text (compressible); 10-13: random; the last (short): text.
    let text: Vec<u8> = b"a line of a log file, repeated; ".iter().copied().cycle().take(BS as usize).collect();
    for b in 0..4 {
        d.write_at(&text, b * BS, false).unwrap();
    }
    for b in 10..14 {
        d.write_at(&random_bytes(BS as usize, b), b * BS, false).unwrap();
    }
    let (last, last_len) = (BLOCKS - 1, d.geometry().block_len(BLOCKS - 1));
    d.write_at(&text[..last_len], last * BS, false).unwrap();
    d.close().unwrap();

    let vault = std::sync::Arc::new(f.vault(local(f.dir.path())));
    let r = f.ship(&vault).unwrap();
    // Blocks 0-3 are one block stored once; the short last block is another.
    assert_eq!((r.new_blocks, r.compressed_blocks), (6, 2), "{r:?}");
    assert_eq!(r.new_bytes, 5 * BS + last_len as u64, "{r:?}");
    assert!(r.bytes_shipped < 4 * BS + BS / 2, "compressed blocks take little room: {r:?}");
    let image = std::fs::read(&f.paths.image).unwrap();
    assert_eq!(f.restore(&vault, 1), image);

    let keys = std::sync::Arc::new(keys());
    let reader = Vault::point_reader(&vault, &chain([3; 16]), 1, &keys).unwrap();
    for b in [0, 2, 10, 13, 20, last] {
        let len = reader.geometry().block_len(b);
        let mut out = vec![0xffu8; len];
        reader.read_block(b, &mut out).unwrap();
        assert!(out[..] == image[(b * BS) as usize..(b * BS) as usize + len], "block {b}");
    }
    let check = vault.check(Some(&keys), &mut ()).unwrap();
    assert!(check.problems.is_empty(), "{:?}", check.problems);
    assert_eq!(check.blocks_verified, 6);

    // Compression off: the next blocks are stored as they are.
    let d = Disk::open(f.paths.clone()).unwrap();
    let text2: Vec<u8> = b"another compressible line. ".iter().copied().cycle().take(BS as usize).collect();
    d.write_at(&text2, 30 * BS, false).unwrap();
    d.close().unwrap();
    let mut src = LocalSource::open(f.paths.clone()).unwrap();
    let opts = CycleOptions { workers: 2, compress: false, ..CycleOptions::new("disk1", [3; 16]) };
    let r2 = run_cycle(&mut src, &vault, &keys, &opts, &mut ()).unwrap();
    src.close().unwrap();
    assert_eq!((r2.new_blocks, r2.compressed_blocks), (1, 0), "{r2:?}");
    assert!(r2.bytes_shipped > BS, "{r2:?}");
    assert_eq!(f.restore(&vault, 2), std::fs::read(&f.paths.image).unwrap());
}
