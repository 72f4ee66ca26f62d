//! The read engines, each through the same conformance checks: the bytes of
//! every block equal what `pread` returns (random runs, a short last block),
//! O_DIRECT where the filesystem takes it and buffered where it does not,
//! the environment switch, and I/O errors that name the block. Then whole
//! cycles with each engine forced, restored byte for byte.

#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;

use disk_format::keys::{Keys, MasterKey};
use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{Disk, StateFile};
use shipper::engine::{BlockPool, Done, Engine, EngineChoice, EngineKind, ENGINE_ENV};
use shipper::{run_cycle, CycleOptions, LocalSource};
use vault::{LocalBackend, Vault};

const BS: usize = 65536;

/// A deterministic generator (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_bytes(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&rng.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

/// An image of `blocks` blocks, the last one `short` bytes short.
fn make_image(dir: &Path, blocks: u64, short: u64, seed: u64) -> (std::path::PathBuf, u64) {
    let path = dir.join("image.raw");
    let size = blocks * BS as u64 - short;
    std::fs::write(&path, random_bytes(&mut Rng(seed), size as usize)).unwrap();
    (path, size)
}

fn geometry(size: u64) -> Geometry {
    Geometry::new(size, BS as u64).unwrap()
}

/// Reads `order` (block numbers) with `engine`, as the pipeline does: keep
/// the engine full and reap. `bufs` holds a buffer per block read.
fn read_blocks(engine: &mut Engine, mut bufs: Vec<shipper::engine::BlockBuf>, g: Geometry, order: &[u64]) -> Vec<Done> {
    let mut out = Vec::new();
    let mut done = Vec::new();
    let mut next = order.iter().copied().peekable();
    loop {
        while let Some(&b) = next.peek() {
            if engine.in_flight() >= engine.capacity() || bufs.is_empty() {
                break;
            }
            let buf = bufs.pop().unwrap();
            engine.push(b, g.block_range(b).start, g.block_len(b), buf).unwrap();
            let _ = next.next();
        }
        if engine.in_flight() == 0 {
            break;
        }
        engine.reap(true, &mut done).unwrap();
        out.append(&mut done);
    }
    out
}

/// The conformance check every engine passes: random runs of blocks,
/// including the short last block, read exactly as pread reads them.
fn conforms(choice: EngineChoice, dir: &Path, seed: u64) -> Engine {
    let blocks = 48;
    let (path, size) = make_image(dir, blocks, 1000, seed);
    let g = geometry(size);
    let image = File::open(&path).unwrap();
    let mut rng = Rng(seed ^ 0xabcd);
    // Random runs: a start and a length, several times, always the last block too.
    let mut order = Vec::new();
    for _ in 0..12 {
        let first = rng.below(blocks);
        let len = 1 + rng.below(8).min(blocks - first - 1);
        order.extend(first..first + len);
    }
    order.push(blocks - 1);
    let (pool, bufs) = BlockPool::new(BS, order.len()).unwrap();
    let mut engine = Engine::open_path(choice, &path, &pool, 16).unwrap();
    let done = read_blocks(&mut engine, bufs, g, &order);
    assert_eq!(done.len(), order.len());
    let mut seen: Vec<u64> = done.iter().map(|d| d.block).collect();
    let mut want = order.clone();
    seen.sort_unstable();
    want.sort_unstable();
    assert_eq!(seen, want, "every read came back once");
    for d in &done {
        d.result.as_ref().unwrap();
        let mut expect = vec![0u8; g.block_len(d.block)];
        image.read_exact_at(&mut expect, g.block_range(d.block).start).unwrap();
        assert_eq!(d.len, expect.len());
        assert!(d.buf.data()[..d.len] == expect[..], "{:?}: block {} differs from pread", engine, d.block);
    }
    assert_eq!(g.block_len(blocks - 1), BS - 1000, "the last block is short");
    engine
}

#[test]
fn io_uring_reads_with_o_direct_on_a_real_disk() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let engine = conforms(EngineChoice::Uring, dir.path(), 1);
    assert_eq!(engine.kind(), EngineKind::Uring);
    assert!(engine.direct(), "ext4 takes O_DIRECT: {engine:?}");
    assert!(engine.registered(), "the pool is registered as a fixed buffer: {engine:?}");
}

#[test]
fn io_uring_reads_on_tmpfs() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    // tmpfs takes O_DIRECT since Linux 6.6 (and does buffered I/O under it);
    // older kernels refuse it with EINVAL and the engine opens buffered.
    let engine = conforms(EngineChoice::Uring, dir.path(), 2);
    assert_eq!(engine.kind(), EngineKind::Uring);
}

#[test]
fn io_uring_falls_back_to_buffered_where_o_direct_is_refused() {
    let dir = tempfile::tempdir_in("/dev/shm").unwrap();
    let (path, size) = make_image(dir.path(), 8, 4096 + 7, 3);
    let g = geometry(size);
    let (pool, bufs) = BlockPool::new(BS, 8).unwrap();
    // A filesystem that refuses O_DIRECT at open, as FUSE, ramfs and old tmpfs do.
    let reopen = |direct: bool| {
        if direct {
            Err(io::Error::from_raw_os_error(libc::EINVAL))
        } else {
            File::open(&path)
        }
    };
    let mut engine = Engine::open(EngineChoice::Uring, &path, &reopen, &pool, 8).unwrap();
    assert_eq!((engine.kind(), engine.direct()), (EngineKind::Uring, false));
    let done = read_blocks(&mut engine, bufs, g, &(0..8).collect::<Vec<_>>());
    let image = std::fs::read(&path).unwrap();
    for d in &done {
        d.result.as_ref().unwrap();
        assert_eq!(d.buf.data()[..d.len], image[g.block_range(d.block).start as usize..][..d.len]);
    }
}

/// Drops the file's pages from the page cache (they are clean after the sync).
fn evict(path: &Path) {
    use std::os::unix::io::AsRawFd;
    let f = File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
}

/// Page cache first: a cached image is served by the cache alone (every
/// read a hit), an evicted one from the device, and the bytes are pread's
/// either way; with the switch off nothing is asked of the cache.
#[test]
fn io_uring_asks_the_page_cache_first_when_told() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let blocks = 24;
    let (path, size) = make_image(dir.path(), blocks, 1000, 11);
    let g = geometry(size);
    let image = std::fs::read(&path).unwrap(); // also: every page is cached now
    let order: Vec<u64> = (0..blocks).rev().collect();
    let run = |cache_first: bool| {
        let (pool, bufs) = BlockPool::new(BS, order.len()).unwrap();
        let mut engine = Engine::open_path(EngineChoice::Uring, &path, &pool, 8).unwrap();
        assert!(engine.direct(), "ext4 takes O_DIRECT: {engine:?}");
        engine.set_cache_first(cache_first);
        let done = read_blocks(&mut engine, bufs, g, &order);
        assert_eq!(done.len(), order.len());
        for d in &done {
            d.result.as_ref().unwrap();
            let want = &image[g.block_range(d.block).start as usize..][..d.len];
            assert!(&d.buf.data()[..d.len] == want, "cache first {cache_first}: block {} differs", d.block);
        }
        engine.cache_stats()
    };
    assert_eq!(run(true), (blocks, 0), "every block is in the page cache: every read is a hit");
    assert_eq!(run(false).0, 0, "switched off, the cache is never asked");
    evict(&path);
    let (hits, misses) = run(true);
    assert_eq!(hits + misses, blocks);
    assert!(misses >= 1, "the first read of an evicted image must go to the device ({hits} hits)");
}

#[test]
fn sync_engine_reads_on_disk_and_tmpfs() {
    for base in ["/var/tmp", "/dev/shm"] {
        let dir = tempfile::tempdir_in(base).unwrap();
        let engine = conforms(EngineChoice::Sync, dir.path(), 4);
        assert_eq!((engine.kind(), engine.direct(), engine.capacity()), (EngineKind::Sync, false, 1));
    }
}

#[test]
fn auto_picks_io_uring_on_this_kernel() {
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let engine = conforms(EngineChoice::Auto, dir.path(), 5);
    assert_eq!(engine.kind(), EngineKind::Uring, "io_uring is enabled here: auto must not fall back");
}

/// A read error names the image, the block and its offset, for every engine.
#[test]
fn a_truncated_image_is_an_error_naming_the_block() {
    for choice in [EngineChoice::Uring, EngineChoice::Sync] {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (path, size) = make_image(dir.path(), 16, 0, 6);
        let g = geometry(size);
        let (pool, bufs) = BlockPool::new(BS, 4).unwrap();
        let mut engine = Engine::open_path(choice, &path, &pool, 4).unwrap();
        // Cut short after the engine opened it: block 9 ends early, 12 is gone.
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(9 * BS as u64 + 512).unwrap();
        let done = read_blocks(&mut engine, bufs, g, &[3, 9, 12]);
        assert_eq!(done.len(), 3);
        for d in done {
            match d.block {
                3 => d.result.unwrap(),
                b => {
                    let e = d.result.unwrap_err().to_string();
                    let offset = b * BS as u64;
                    assert!(
                        e.contains(&format!("block {b} (byte {offset})")) && e.contains(&path.display().to_string()),
                        "{choice:?}: {e}"
                    );
                    assert!(e.contains("truncated"), "{choice:?}: {e}");
                }
            }
        }
    }
}

#[test]
fn a_read_the_kernel_refuses_is_an_error_naming_the_block() {
    // A descriptor opened write-only: every read fails with EBADF.
    for choice in [EngineChoice::Uring, EngineChoice::Sync] {
        let dir = tempfile::tempdir_in("/var/tmp").unwrap();
        let (path, size) = make_image(dir.path(), 4, 0, 7);
        let g = geometry(size);
        let (pool, bufs) = BlockPool::new(BS, 2).unwrap();
        let reopen = |direct: bool| {
            let mut o = std::fs::OpenOptions::new();
            o.write(true);
            if direct {
                o.custom_flags(libc::O_DIRECT);
            }
            o.open(&path)
        };
        let mut engine = Engine::open(choice, &path, &reopen, &pool, 2).unwrap();
        let done = read_blocks(&mut engine, bufs, g, &[2]);
        let e = done.into_iter().next().unwrap().result.unwrap_err().to_string();
        assert!(e.contains("block 2 (byte 131072)") && e.contains("image.raw"), "{choice:?}: {e}");
        drop(engine);
    }
}

fn keys() -> Keys {
    MasterKey::from_bytes([9; 32]).keys()
}

/// The environment variable picks the engine, for a bare engine and for
/// whole cycles (which must restore exactly with either). One test, because
/// the environment is the process's.
#[test]
fn the_environment_forces_an_engine_and_cycles_restore_exactly_with_each() {
    let old = std::env::var_os(ENGINE_ENV);
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let (pool, _bufs) = BlockPool::new(BS, 1).unwrap();
    for (value, want) in [("sync", EngineChoice::Sync), ("uring", EngineChoice::Uring), ("auto", EngineChoice::Auto)] {
        std::env::set_var(ENGINE_ENV, value);
        assert_eq!(EngineChoice::from_env().unwrap(), want);
    }
    std::env::set_var(ENGINE_ENV, "sync");
    let (path, _) = make_image(dir.path(), 2, 0, 8);
    let e = Engine::open_path(EngineChoice::from_env().unwrap(), &path, &pool, 8).unwrap();
    assert_eq!(e.kind(), EngineKind::Sync);
    assert_eq!(Engine::probe(EngineChoice::Sync).unwrap(), EngineKind::Sync);
    assert_eq!(Engine::probe(EngineChoice::Auto).unwrap(), EngineKind::Uring);
    std::env::set_var(ENGINE_ENV, "fast");
    let err = EngineChoice::from_env().unwrap_err().to_string();
    assert!(err.contains("LIFEBOAT_IO_ENGINE") && err.contains("fast"), "{err}");

    // Whole cycles: the same disk shipped with each engine, restored exactly.
    let blocks = 40u64;
    let size = blocks * BS as u64 - 3000;
    let image = dir.path().join("disk.img");
    std::fs::write(&image, random_bytes(&mut Rng(11), size as usize)).unwrap();
    let state = dir.path().join("state");
    StateFile::create(&state, geometry(size), [5; 16], false).unwrap();
    let paths = DiskPaths { image: image.clone(), state, scratch: dir.path().join("scratch") };
    for (n, engine) in ["uring", "sync"].into_iter().enumerate() {
        std::env::set_var(ENGINE_ENV, engine);
        let vault =
            Vault::init(Box::new(LocalBackend::create(&dir.path().join(format!("vault-{engine}"))).unwrap()), &keys())
                .unwrap();
        // A full cycle, then an incremental one after some writes.
        for round in 0..2u8 {
            if round == 1 {
                let d = Disk::open(paths.clone()).unwrap();
                for b in [0u64, 7, blocks - 1] {
                    let len = d.geometry().block_len(b).min(3000);
                    d.write_at(&vec![round + n as u8 + 1; len], b * BS as u64, false).unwrap();
                }
                d.close().unwrap();
            }
            let mut src = LocalSource::open(paths.clone()).unwrap();
            let opts = CycleOptions { workers: 2, ..CycleOptions::new("disk1", [5; 16]) };
            let report = run_cycle(&mut src, &vault, &keys(), &opts, &mut ()).unwrap();
            src.close().unwrap();
            assert_eq!(report.full, round == 0, "{engine}");
            let out = dir.path().join(format!("restored-{engine}-{round}"));
            let f = File::create(&out).unwrap();
            vault
                .restore(&vault::Vault::chain_of(&keys(), &opts.disk_id), report.sequence, &keys(), &f, &mut ())
                .unwrap();
            drop(f);
            assert!(std::fs::read(&out).unwrap() == std::fs::read(&image).unwrap(), "{engine}, cycle {round}");
        }
    }
    // A forced engine that cannot start fails the cycle rather than silently
    // using another; here io_uring works, so only the bad value can fail.
    std::env::set_var(ENGINE_ENV, "bogus");
    let vault = Vault::init(Box::new(LocalBackend::create(&dir.path().join("vault-bogus")).unwrap()), &keys()).unwrap();
    let mut src = LocalSource::open(paths.clone()).unwrap();
    let opts = CycleOptions::new("disk1", [5; 16]);
    let err = run_cycle(&mut src, &vault, &keys(), &opts, &mut ()).unwrap_err().to_string();
    src.close().unwrap();
    assert!(err.contains("bogus"), "{err}");
    match old {
        Some(v) => std::env::set_var(ENGINE_ENV, v),
        None => std::env::remove_var(ENGINE_ENV),
    }
}
