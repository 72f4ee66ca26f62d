//! Whole cycles reading the cut straight from the image (each engine) while
//! writers overwrite the disk through the same `Disk`, as the agent will do:
//! every point restores to exactly the disk at its cut.
//!
//! The writers are released by `Progress::start`, which runs after the cut
//! and before the first read; it first copies the image (nobody writes yet,
//! so that copy is the disk at the cut). The cycle's reads then race the
//! writers.

#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use disk_format::keys::{Keys, MasterKey};
use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{Disk, StateFile};
use shipper::engine::ENGINE_ENV;
use shipper::{run_cycle, CycleOptions, LocalSource, Progress};
use vault::{LocalBackend, Vault};

const BS: u64 = 65536;
const BLOCKS: u64 = 256;

fn keys() -> Keys {
    MasterKey::from_bytes([21; 32]).keys()
}

struct AtCut {
    image: PathBuf,
    snapshot: Option<Vec<u8>>,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    left: u64,
}

impl Progress for AtCut {
    fn start(&mut self, _: &str, total: u64) {
        self.snapshot = Some(std::fs::read(&self.image).unwrap());
        self.left = total;
        self.go.store(true, Ordering::Release);
    }
    fn advance(&mut self, n: u64) {
        // Everything is read: stop writing (the rest of the cycle is vault work).
        self.left = self.left.saturating_sub(n);
        if self.left == 0 {
            self.stop.store(true, Ordering::Relaxed);
        }
    }
}

fn fill(b: u64, v: u64) -> Vec<u8> {
    let mut x = b.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ v << 32 ^ 7;
    let mut out = Vec::with_capacity(BS as usize);
    while out.len() < BS as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out
}

#[test]
fn cycles_ship_the_cut_while_writers_overwrite_the_disk() {
    let old = std::env::var_os(ENGINE_ENV);
    for engine in ["uring", "sync"] {
        std::env::set_var(ENGINE_ENV, engine);
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image).unwrap().set_len(BLOCKS * BS).unwrap();
        let state = dir.path().join("state");
        StateFile::create(&state, Geometry::new(BLOCKS * BS, BS).unwrap(), [8; 16], false).unwrap();
        let disk =
            Arc::new(Disk::open(DiskPaths { image: image.clone(), state, scratch: dir.path().join("s") }).unwrap());
        for b in 0..BLOCKS {
            disk.write_at(&fill(b, 0), b * BS, false).unwrap();
        }
        // The vault in memory: its fsyncs are not what this test is about.
        let vault_dir = tempfile::tempdir_in("/dev/shm").unwrap();
        let vault =
            Vault::init(Box::new(LocalBackend::create(&vault_dir.path().join("vault")).unwrap()), &keys()).unwrap();
        let version = Arc::new(AtomicU64::new(1));
        let mut overwritten = 0;
        // A full cycle, then incremental ones: the blocks the writers touched.
        for cycle in 0..3u64 {
            let go = Arc::new(AtomicBool::new(false));
            let stop = Arc::new(AtomicBool::new(false));
            let writers: Vec<_> = (0..2u64)
                .map(|w| {
                    let (disk, go, stop, version) =
                        (Arc::clone(&disk), Arc::clone(&go), Arc::clone(&stop), Arc::clone(&version));
                    std::thread::spawn(move || {
                        let mut x = 0x51_u64 + w * 1000 + cycle;
                        let mut writes = 0u64;
                        while !go.load(Ordering::Acquire) && !stop.load(Ordering::Relaxed) {
                            std::thread::yield_now();
                        }
                        while !stop.load(Ordering::Relaxed) {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let b = x % BLOCKS;
                            let data = fill(b, version.fetch_add(1, Ordering::Relaxed));
                            let (off, len) = if x & 1 == 0 { (0, BS) } else { ((x >> 8) % (BS - 4096), 4096) };
                            disk.write_at(&data[..len as usize], b * BS + off, false).unwrap();
                            writes += 1;
                        }
                        writes
                    })
                })
                .collect();
            let mut src = LocalSource::shared(Arc::clone(&disk));
            let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", [8; 16]) };
            let mut at_cut =
                AtCut { image: image.clone(), snapshot: None, go: Arc::clone(&go), stop: Arc::clone(&stop), left: 0 };
            let report = run_cycle(&mut src, &vault, &keys(), &opts, &mut at_cut).unwrap();
            stop.store(true, Ordering::Relaxed);
            let writes: u64 = writers.into_iter().map(|h| h.join().unwrap()).sum();
            overwritten += writes;
            assert_eq!(report.full, cycle == 0, "{engine}");
            let out = vault_dir.path().join(format!("restored-{cycle}"));
            let f = std::fs::File::create(&out).unwrap();
            vault
                .restore(&vault::Vault::chain_of(&keys(), &opts.disk_id), report.sequence, &keys(), &f, &mut ())
                .unwrap();
            drop(f);
            let restored = std::fs::read(&out).unwrap();
            let snapshot = at_cut.snapshot.unwrap();
            if let Some(b) = (0..BLOCKS as usize)
                .find(|&b| restored[b * BS as usize..][..BS as usize] != snapshot[b * BS as usize..][..BS as usize])
            {
                panic!("{engine}, cycle {cycle}: block {b} of the point is not the disk at the cut ({writes} writes raced)");
            }
        }
        assert!(overwritten > 50, "{engine}: the writers barely ran ({overwritten} writes)");
        drop(vault);
        Arc::try_unwrap(disk).ok().unwrap().close().unwrap();
    }
    match old {
        Some(v) => std::env::set_var(ENGINE_ENV, v),
        None => std::env::remove_var(ENGINE_ENV),
    }
}
