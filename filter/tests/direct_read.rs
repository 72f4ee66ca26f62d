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
    common::finish(&d).unwrap();
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
    // The test means something only if both paths ran and writers really
    // changed blocks under the reader.
    assert!(
        validated > 0 && from_copy > 0 && torn > 0,
        "validated {validated}, from copies {from_copy}, caught {torn}"
    );
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
