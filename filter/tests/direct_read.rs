//! Reading cut blocks straight from the image without a lock, then
//! validating them (`Disk::validate_direct_read`), while writers keep
//! overwriting those very blocks through the same `Disk`: every block the
//! reader ends up with is its cut-time content, whether the image read
//! survived validation or the reader fell back to the copy.

#![allow(clippy::cast_possible_truncation)] // test sizes are small

mod common;

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use disk_format::Geometry;
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{CutKind, Disk, FilterError, StateFile};

const BS: u64 = 4096;
const BLOCKS: u64 = 512;

fn open(dir: &Path) -> Disk {
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; (BLOCKS * BS) as usize]).unwrap();
    let state = dir.join("state");
    StateFile::create(&state, Geometry::new(BLOCKS * BS, BS).unwrap(), [1; 16], false).unwrap();
    Disk::open(DiskPaths { image, state, scratch: dir.join("scratch") }).unwrap()
}

/// Block `b`'s contents in `round` at `version` (0: what the cut sees).
fn content(b: u64, round: u64, version: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(BS as usize);
    let mut x = b.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ round << 48 ^ version << 20 ^ 1;
    while v.len() < BS as usize {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v
}

/// A 4096-aligned buffer of one block, without unsafe: a slice of a larger
/// vector that starts at an aligned address (O_DIRECT needs it).
struct Aligned(Vec<u8>);

impl Aligned {
    fn new() -> Aligned {
        Aligned(vec![0u8; 2 * BS as usize])
    }
    fn get(&mut self) -> &mut [u8] {
        let skip = (BS as usize - self.0.as_ptr() as usize % BS as usize) % BS as usize;
        &mut self.0[skip..skip + BS as usize]
    }
}

struct Outcome {
    validated: u64,
    from_copy: u64,
    torn_caught: u64,
}

/// One round: fill every block, cut them all, let `writers` threads
/// overwrite random blocks (whole and partial writes) while the reader reads
/// every block through `image` and validates. Returns what happened.
fn round(d: &Arc<Disk>, image: &File, round: u64, writers: usize, pause: Duration) -> Outcome {
    for b in 0..BLOCKS {
        d.write_at(&content(b, round, 0), b * BS, false).unwrap();
    }
    let generation = d.cut(CutKind::Full).unwrap().generation;
    let stop = Arc::new(AtomicBool::new(false));
    let version = Arc::new(AtomicU64::new(1));
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (d, stop, version) = (Arc::clone(d), Arc::clone(&stop), Arc::clone(&version));
            std::thread::spawn(move || {
                let mut x = 0x1234_5678_u64 + w as u64 + round * 77;
                while !stop.load(Ordering::Relaxed) {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    let b = x % BLOCKS;
                    let data = content(b, round, version.fetch_add(1, Ordering::Relaxed));
                    if x & 1 == 0 {
                        d.write_at(&data, b * BS, false).unwrap();
                    } else {
                        // A partial write: a torn read is possible.
                        let off = (x >> 8) % (BS - 512);
                        d.write_at(&data[..512], b * BS + off, false).unwrap();
                    }
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                }
            })
        })
        .collect();
    let mut buf = Aligned::new();
    let mut out = Outcome { validated: 0, from_copy: 0, torn_caught: 0 };
    // Start where the writers have had a little time, and leave gaps between
    // a read and its validation so writers land in them.
    std::thread::sleep(Duration::from_millis(2));
    for b in 0..BLOCKS {
        let data = buf.get();
        image.read_exact_at(data, b * BS).unwrap();
        if b % 3 == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
        let want = content(b, round, 0);
        if d.validate_direct_read(generation, b).unwrap() {
            assert!(data[..] == want[..], "round {round}: block {b} validated but is not its cut-time content");
            out.validated += 1;
        } else {
            if data[..] != want[..] {
                out.torn_caught += 1;
            }
            d.read_cut_block(b, data).unwrap();
            assert!(data[..] == want[..], "round {round}: block {b}'s copy is not its cut-time content");
            out.from_copy += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().unwrap();
    }
    // Every block was released either way: a second validation says no.
    for b in 0..BLOCKS {
        assert!(matches!(d.validate_direct_read(generation, b), Ok(false)), "round {round}: block {b} not released");
    }
    common::finish(d).unwrap();
    out
}

/// `rounds` rounds; O_DIRECT reads are slower here (each first writes back
/// the dirty pages in its range, and the writers keep dirtying them).
fn run(direct: bool, rounds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let d = Arc::new(open(dir.path()));
    let image = d.reopen_image(direct).unwrap();
    let (mut validated, mut from_copy, mut torn) = (0, 0, 0);
    for r in 1..=rounds {
        // Paced writers for O_DIRECT, so that not every page is dirty.
        let pause = if direct { Duration::from_micros(300) } else { Duration::ZERO };
        let o = round(&d, &image, r, 2, pause);
        validated += o.validated;
        from_copy += o.from_copy;
        torn += o.torn_caught;
    }
    // Which paths ran depends on the scheduler; every block was checked
    // above whichever it took. Each path, the torn read included, is
    // driven on purpose by `interleavings`.
    eprintln!("validated {validated}, from copies {from_copy}, torn reads caught {torn}");
    Arc::try_unwrap(d).ok().unwrap().close().unwrap();
}

#[test]
fn direct_reads_under_concurrent_writes_are_cut_time_contents_buffered() {
    run(false, 6);
}

#[test]
fn direct_reads_under_concurrent_writes_are_cut_time_contents_o_direct() {
    run(true, 3);
}

/// Each interleaving of a direct read, a write of the same block and the
/// validation, driven explicitly (no luck needed): only a read that no
/// write overlapped validates; a torn read, a read of the new data and a
/// read overlapped by a partial write are refused, and the copy holds the
/// cut-time contents. A torn read is what a read whose two halves straddle
/// the write returns: it is built from two whole-block reads, before and
/// after the write (a half-block `O_DIRECT` read may be refused).
fn interleavings(direct: bool) {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path());
    let image = d.reopen_image(direct).unwrap();
    for b in 0..BLOCKS {
        d.write_at(&content(b, 1, 0), b * BS, false).unwrap();
    }
    let generation = d.cut(CutKind::Full).unwrap().generation;
    let (mut before, mut after, mut copy) = (Aligned::new(), Aligned::new(), Aligned::new());
    let half = (BS / 2) as usize;

    // No write: the read validates, and the block is released (a later
    // write makes no copy and cannot change what was read).
    image.read_exact_at(before.get(), 0).unwrap();
    assert!(d.validate_direct_read(generation, 0).unwrap(), "block 0: nothing was written, yet refused");
    assert!(before.get()[..] == content(0, 1, 0)[..]);
    d.write_at(&content(0, 1, 1), 0, false).unwrap();
    assert!(matches!(d.validate_direct_read(generation, 0), Ok(false)), "block 0 was released");

    // (block, what the writer writes between the reader's two halves)
    let cases: [(u64, Option<u64>); 3] = [(1, None), (2, Some(0)), (3, Some(BS - 512))];
    for (b, partial) in cases {
        let new = content(b, 1, 1);
        image.read_exact_at(before.get(), b * BS).unwrap();
        match partial {
            None => d.write_at(&new, b * BS, false).unwrap(),
            Some(off) => d.write_at(&new[..512], b * BS + off, false).unwrap(),
        }
        image.read_exact_at(after.get(), b * BS).unwrap();
        // The first half from before the write, the second from after.
        let mut torn = before.get()[..half].to_vec();
        torn.extend_from_slice(&after.get()[half..]);
        let want = content(b, 1, 0);
        if partial != Some(0) {
            assert!(torn != want, "block {b}: the write did not reach the reader's second half");
        }
        assert!(
            !d.validate_direct_read(generation, b).unwrap(),
            "block {b}: a write overlapped the read (partial: {partial:?}), yet it validated"
        );
        d.read_cut_block(b, copy.get()).unwrap();
        assert!(copy.get()[..] == want[..], "block {b}: the copy is not the cut-time contents");
    }

    // A write before the read: the reader sees only new data, refused too.
    d.write_at(&content(4, 1, 1), 4 * BS, false).unwrap();
    image.read_exact_at(before.get(), 4 * BS).unwrap();
    assert!(before.get()[..] == content(4, 1, 1)[..]);
    assert!(!d.validate_direct_read(generation, 4).unwrap(), "block 4 was written before the read");
    d.read_cut_block(4, copy.get()).unwrap();
    assert!(copy.get()[..] == content(4, 1, 0)[..]);
    common::finish(&d).unwrap();
    d.close().unwrap();
}

#[test]
fn every_interleaving_of_a_read_and_a_write_is_caught_buffered() {
    interleavings(false);
}

#[test]
fn every_interleaving_of_a_read_and_a_write_is_caught_o_direct() {
    interleavings(true);
}

#[test]
fn validation_refuses_a_stale_or_missing_cut() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path());
    assert!(matches!(d.validate_direct_read(1, 0), Err(FilterError::NoCut)));
    d.write_at(&content(3, 0, 0), 3 * BS, false).unwrap();
    let g1 = d.cut(CutKind::Dirty).unwrap().generation;
    assert!(matches!(d.validate_direct_read(g1, BLOCKS), Err(FilterError::NotInCut(_))));
    assert!(matches!(d.validate_direct_read(g1, 4), Ok(false)), "block 4 is not in the cut");
    d.abort_cut().unwrap();
    // A later cut of the same block: a reader of the old cut is refused, so
    // a read made before the abort can never pass as the new cut's data.
    let g2 = d.cut(CutKind::Dirty).unwrap().generation;
    assert!(g2 > g1);
    assert!(matches!(d.validate_direct_read(g1, 3), Err(FilterError::NoCut)));
    assert!(d.validate_direct_read(g2, 3).unwrap());
    common::finish(&d).unwrap();
    assert_eq!(d.image_path(), dir.path().join("disk.img"));
    d.close().unwrap();
}
