//! Cycles with the host's index cache (issue 14, point 5): an incremental
//! cycle asks the vault in proportion to what changed, a pack removed behind
//! the cache's back is shipped again and the point restores whole, a
//! damaged cache is rebuilt, another writer's packs are found at the next
//! listing.

#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::path::{Path, PathBuf};
use std::sync::Arc;

use disk_format::keys::{Keys, MasterKey};
use disk_format::pack::PackWriter;
use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{Disk, StateFile};
use shipper::{run_cycle, CycleOptions, CycleReport, LocalSource};
use vault::counting::{Counting, RequestCount};
use vault::index_cache::{IndexCache, Opened, WarmIndex};
use vault::{Kind, LocalBackend, Vault};

const BS: u64 = 65536;
const BLOCKS: u64 = 64;
const DISK_ID: [u8; 16] = [3; 16];

fn keys() -> Keys {
    MasterKey::from_bytes([42; 32]).keys()
}

struct Fixture {
    dir: tempfile::TempDir,
    paths: DiskPaths,
    vault: Vault,
    count: Arc<RequestCount>,
    cache: PathBuf,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(BLOCKS * BS).unwrap();
        let state = dir.path().join("state");
        StateFile::create(&state, Geometry::new(BLOCKS * BS, BS).unwrap(), DISK_ID, false).unwrap();
        let paths = DiskPaths { image, state, scratch: dir.path().join("scratch") };
        let backend = Counting::new(LocalBackend::create(&dir.path().join("vault")).unwrap());
        let count = backend.count();
        let vault = Vault::init(Box::new(backend), &keys()).unwrap();
        let cache = dir.path().join("cache");
        Fixture { dir, paths, vault, count, cache }
    }

    /// Fills blocks: `(block, byte)`; two blocks of one byte hold the same data.
    fn write(&self, writes: &[(u64, u8)]) {
        let d = Disk::open(self.paths.clone()).unwrap();
        for &(block, fill) in writes {
            d.write_at(&vec![fill; 5000], block * BS + 100, false).unwrap();
        }
        d.close().unwrap();
    }

    /// One cycle with the index cache (`relist_every` cycles between
    /// listings), and the requests it made.
    fn ship(&self, relist_every: u32) -> (CycleReport, u64) {
        self.ship_with(relist_every, None)
    }

    /// [`Fixture::ship`], keeping the cache in memory in `warm` between
    /// cycles, as the agent does.
    fn ship_with(&self, relist_every: u32, warm: Option<&WarmIndex>) -> (CycleReport, u64) {
        let before = self.count.get().total;
        let mut src = LocalSource::open(self.paths.clone()).unwrap();
        let opts = CycleOptions {
            workers: 2,
            index_cache: Some(&self.cache),
            relist_every,
            warm_index: warm,
            ..CycleOptions::new("disk1", DISK_ID)
        };
        let r = run_cycle(&mut src, &self.vault, &keys(), &opts, &mut ()).unwrap();
        src.close().unwrap();
        (r, self.count.get().total - before)
    }

    /// Restores point `seq` and checks it against the disk, byte for byte.
    fn restores_to_the_disk(&self, seq: u64) {
        let out = self.dir.path().join(format!("restored-{seq}.img"));
        let f = std::fs::File::create(&out).unwrap();
        self.vault.restore(&Vault::chain_of(&keys(), &DISK_ID), seq, &keys(), &f, &mut ()).unwrap();
        drop(f);
        assert!(std::fs::read(&out).unwrap() == std::fs::read(&self.paths.image).unwrap(), "point {seq} differs");
    }

    fn cache_file(&self) -> PathBuf {
        IndexCache::path_in(&self.cache, &self.vault)
    }
}

/// Stores `n` packs of one block each, as another host would.
fn other_writers_packs(vault: &Vault, n: u32, data: impl Fn(u32) -> Vec<u8>) {
    let k = keys();
    for i in 0..n {
        let block = data(i);
        let id = k.block_id(&block);
        let mut w = PackWriter::new(Vec::new()).unwrap();
        w.add_blob(&id, &k.seal_block(disk_format::Cipher::XChaCha20Poly1305, &id, &block).unwrap()).unwrap();
        let done = w.finish().unwrap();
        vault.put_pack(&done.id, &done.out).unwrap();
    }
}

fn pack_count(vault: &Vault) -> usize {
    vault.backend().list(Kind::Pack, "").unwrap().len()
}

/// The requests of the same incremental cycle into a vault of `extra` more packs.
fn incremental_requests(extra: u32) -> (u64, u64) {
    let f = Fixture::new();
    other_writers_packs(&f.vault, extra, |i| format!("someone else's block {i}").into_bytes());
    f.write(&[(0, 1), (1, 2), (9, 3)]);
    let (first, _) = f.ship(1000);
    assert!(first.index_listed, "a new cache lists the vault");
    f.write(&[(1, 4), (20, 5)]);
    let (r, requests) = f.ship(1000);
    assert!(!r.index_listed);
    assert_eq!((r.new_blocks, r.full), (2, false));
    f.restores_to_the_disk(r.sequence);
    // The same cycle without the cache reads every pack's tail.
    f.write(&[(1, 6), (21, 7)]);
    let before = f.count.get().total;
    let mut src = LocalSource::open(f.paths.clone()).unwrap();
    let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", DISK_ID) };
    run_cycle(&mut src, &f.vault, &keys(), &opts, &mut ()).unwrap();
    src.close().unwrap();
    (requests, f.count.get().total - before)
}

#[test]
fn an_incremental_cycle_asks_the_vault_the_same_whatever_its_size() {
    let (small, small_uncached) = incremental_requests(0);
    let (large, large_uncached) = incremental_requests(200);
    assert_eq!(small, large, "with the cache, 200 more packs cost no request");
    assert!(large_uncached >= small_uncached + 200, "without it, each pack's tail is read: {large_uncached}");
    assert!(large < 40, "a few requests per changed pack, page and root: {large}");
}

#[test]
fn a_pack_removed_behind_the_caches_back_is_shipped_again_and_the_point_is_whole() {
    let f = Fixture::new();
    f.write(&[(0, 1), (1, 2)]);
    let (first, _) = f.ship(1000);
    // Block 0's data moves on; its pack is only the first point's.
    f.write(&[(0, 3), (1, 3)]);
    f.ship(1000);
    let first_packs = f.vault.backend().list(Kind::Pack, "").unwrap();
    assert_eq!(first_packs.len(), 2);
    // The site prunes the first point and collects its pack (as GC would,
    // without the host knowing).
    let first_root = vault::root_name(&Vault::chain_of(&keys(), &DISK_ID), first.sequence);
    f.vault.backend().delete(Kind::Root, &first_root).unwrap();
    let mut gone = 0;
    for name in &first_packs {
        let id = disk_format::PackId::from_hex(name).unwrap();
        if f.vault.block_index().unwrap().iter().any(|(_, l)| l.pack == id && l.entry == 0) {
            let holds_fill_1 = f.vault.block_index().unwrap().get(&keys().block_id(&block_of(1))).map(|l| l.pack);
            if holds_fill_1 == Some(id) {
                f.vault.backend().delete(Kind::Pack, name).unwrap();
                gone += 1;
            }
        }
    }
    assert_eq!(gone, 1);
    // The old data comes back, in another block: the cache says the vault has it.
    f.write(&[(7, 1)]);
    // No listing was due: only the `missing` check can see the pack is
    // gone. It makes a listing due, and the cycle cuts and ships again.
    let (r, _) = f.ship(1000);
    assert!(r.index_listed, "{r:?}");
    assert_eq!(r.new_blocks, 1, "stored again: {r:?}");
    assert!(r.warnings.iter().any(|w| w.contains("gone from the vault")), "{:?}", r.warnings);
    f.restores_to_the_disk(r.sequence);
    // The cache forgot the pack: the next cycle with that data dedups against the new one.
    f.write(&[(8, 1)]);
    let (r, _) = f.ship(1000);
    assert_eq!((r.new_blocks, r.known_blocks), (0, 1), "{r:?}");
    assert!(r.warnings.is_empty(), "{:?}", r.warnings);
    f.restores_to_the_disk(r.sequence);
}

/// Block data as `Fixture::write` makes it for fill `b`.
fn block_of(b: u8) -> Vec<u8> {
    let mut v = vec![0u8; BS as usize];
    v[100..5100].fill(b);
    v
}

#[test]
fn a_damaged_cache_is_rebuilt_from_the_vault() {
    let f = Fixture::new();
    f.write(&[(0, 1), (1, 2)]);
    f.ship(1000);
    let path = f.cache_file();
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x40;
    std::fs::write(&path, &bytes).unwrap();
    let (_, opened) = IndexCache::open(&f.cache, &f.vault, &keys());
    assert!(matches!(opened, Opened::Discarded(_)), "{opened:?}");
    // The cycle rebuilds it by listing, and still dedups against the vault.
    f.write(&[(5, 1)]);
    let (r, _) = f.ship(1000);
    assert!(r.index_listed);
    assert_eq!((r.new_blocks, r.known_blocks), (0, 1), "{r:?}");
    f.restores_to_the_disk(r.sequence);
    let (c, opened) = IndexCache::open(&f.cache, &f.vault, &keys());
    assert!(matches!(opened, Opened::Loaded { packs: 1 }), "{opened:?}");
    assert_eq!(c.index().len(), f.vault.block_index().unwrap().len());
}

#[test]
fn another_writers_packs_are_found_at_the_next_listing() {
    let f = Fixture::new();
    f.write(&[(0, 1)]);
    f.ship(3);
    other_writers_packs(&f.vault, 2, |i| block_of(10 + i as u8));
    // No listing due: the other host's block is stored again.
    f.write(&[(2, 10)]);
    let (r, _) = f.ship(3);
    assert_eq!((r.index_listed, r.new_blocks), (false, 1), "{r:?}");
    f.write(&[(3, 10)]);
    let (r, _) = f.ship(3);
    assert_eq!((r.index_listed, r.new_blocks, r.known_blocks), (false, 0, 1), "{r:?}");
    // The third cycle since the listing lists, and finds the other's second block.
    f.write(&[(4, 11)]);
    let (r, _) = f.ship(3);
    assert_eq!((r.index_listed, r.new_blocks, r.known_blocks), (true, 0, 1), "{r:?}");
    f.restores_to_the_disk(r.sequence);
    assert_eq!(pack_count(&f.vault), 4);
}

#[test]
fn a_full_cycle_lists_and_sends_nothing_another_writer_stored() {
    let f = Fixture::new();
    f.write(&[(0, 1)]);
    f.ship(1000);
    // The failover side stores the disk's new blocks (as a failback does),
    // and the state here is replaced: the next cycle verifies every block.
    other_writers_packs(&f.vault, 2, |i| block_of(20 + i as u8));
    f.write(&[(5, 20), (6, 21)]);
    std::fs::remove_file(&f.paths.state).unwrap();
    StateFile::create(&f.paths.state, Geometry::new(BLOCKS * BS, BS).unwrap(), DISK_ID, true).unwrap();
    let (r, _) = f.ship(1000);
    assert!(r.full && r.index_listed, "{r:?}");
    assert_eq!((r.new_blocks, r.known_blocks), (0, 3), "{r:?}");
    f.restores_to_the_disk(r.sequence);
}

#[test]
fn a_cache_dir_that_cannot_be_written_is_a_warning_not_a_failure() {
    let f = Fixture::new();
    std::fs::write(&f.cache, b"a file where the directory should be").unwrap();
    f.write(&[(0, 1)]);
    let (r, _) = f.ship(1000);
    assert!(r.warnings.iter().any(|w| w.contains("index cache could not be saved")), "{:?}", r.warnings);
    f.restores_to_the_disk(r.sequence);
    let _ = Path::new(&f.cache);
}

/// The agent keeps the cache in memory between cycles: the next cycle uses
/// it without reading the file, as long as the file is as the cache left
/// it. Shown by damaging the file in place (same inode, same length): the
/// warm cycle neither notices nor lists, where a cycle that loads the file
/// discards it and lists.
#[test]
fn the_agents_cache_stays_in_memory_while_its_file_is_unchanged() {
    let f = Fixture::new();
    let warm = WarmIndex::default();
    f.write(&[(0, 1)]);
    f.ship_with(1000, Some(&warm));
    assert!(warm.lock().unwrap().is_some(), "the cycle handed its cache back");
    {
        use std::os::unix::fs::FileExt;
        let file = std::fs::OpenOptions::new().read(true).write(true).open(f.cache_file()).unwrap();
        let at = file.metadata().unwrap().len() - 20;
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).unwrap();
        file.write_all_at(&[b[0] ^ 0x40], at).unwrap();
    }
    f.write(&[(1, 1)]);
    let (r, _) = f.ship_with(1000, Some(&warm));
    assert_eq!((r.index_listed, r.new_blocks, r.known_blocks), (false, 0, 1), "the warm cache: {r:?}");
    assert!(r.warnings.is_empty(), "the damaged file was read: {:?}", r.warnings);
    // A cycle of another process loads the file: damaged, so it lists.
    f.write(&[(2, 1)]);
    let (r, _) = f.ship(1000);
    assert!(r.index_listed, "a cycle loading the damaged file lists: {r:?}");
    f.restores_to_the_disk(r.sequence);
}

/// When another process committed a cycle meanwhile (`ship --once`, a
/// failback), its records are in the file and not in the agent's memory:
/// the agent's next cycle loads the file again and deduplicates against
/// them, without a listing.
#[test]
fn the_agent_reloads_a_cache_another_process_changed() {
    let f = Fixture::new();
    let warm = WarmIndex::default();
    f.write(&[(0, 1)]);
    f.ship_with(1000, Some(&warm));
    f.write(&[(5, 7)]);
    let (other, _) = f.ship(1000);
    assert_eq!(other.new_blocks, 1, "{other:?}");
    f.write(&[(6, 7)]);
    let (r, _) = f.ship_with(1000, Some(&warm));
    assert_eq!((r.index_listed, r.new_blocks, r.known_blocks), (false, 0, 1), "{r:?}");
    f.restores_to_the_disk(r.sequence);
}
