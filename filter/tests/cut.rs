//! The cut and copy-before-write: a reader sees the disk exactly as it was at
//! the cut while writers keep writing, and no write is ever lost from the maps.

#![allow(clippy::cast_possible_truncation)] // test sizes are small

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use disk_format::Geometry;
use filter::copies::{CopyMemory, CopyUsage};
use filter::disk::DiskPaths;
use filter::nbd::Export;
use filter::{CutKind, Disk, FilterError, StateFile};

const BS: u64 = 4096;

fn open(dir: &Path, blocks: u64) -> Disk {
    open_with(dir, blocks, CopyMemory::global())
}

/// A disk whose copies may take `budget` of memory.
fn open_with(dir: &Path, blocks: u64, budget: Arc<CopyMemory>) -> Disk {
    let image = dir.join("disk.img");
    std::fs::write(&image, vec![0u8; (blocks * BS) as usize]).unwrap();
    let state = dir.join("state");
    StateFile::create(&state, Geometry::new(blocks * BS, BS).unwrap(), [1; 16], false).unwrap();
    Disk::open_with_copy_memory(DiskPaths { image, state, scratch: dir.join("scratch") }, budget).unwrap()
}

fn block(fill: u8) -> Vec<u8> {
    vec![fill; BS as usize]
}

fn read_block(d: &Disk, b: u64) -> Vec<u8> {
    let mut buf = block(0);
    d.read_cut_block(b, &mut buf).unwrap();
    buf
}

#[test]
fn dirty_cut_reads_cut_time_contents_then_finish_drops_only_cut_bits() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path(), 16);
    for b in [1u64, 2, 3] {
        d.write_at(&block(b as u8), b * BS, false).unwrap();
    }
    let info = d.cut(CutKind::Dirty).unwrap();
    assert_eq!((info.generation, info.dirty_blocks, info.readable_blocks), (1, 3, 3));
    assert!(matches!(d.cut(CutKind::Dirty), Err(FilterError::CutInProgress(1))));
    assert_eq!(d.cut_blocks().unwrap(), vec![1, 2, 3]);
    assert_eq!(d.state().live().count(), 0);
    // Overwrite a cut block (copied aside first) and a block outside the cut.
    d.write_at(&block(0xaa), 2 * BS, false).unwrap();
    d.write_at(&block(0xbb), 9 * BS, false).unwrap();
    assert_eq!(read_block(&d, 1), block(1));
    assert_eq!(read_block(&d, 2), block(2), "copy-before-write kept the cut-time contents");
    // Released: a second read is refused, a block outside the cut too.
    let mut buf = block(0);
    assert!(matches!(d.read_cut_block(2, &mut buf), Err(FilterError::NotInCut(2))));
    assert!(matches!(d.read_cut_block(9, &mut buf), Err(FilterError::NotInCut(9))));
    // After release, a write to block 1 needs no copy, and block 3 still reads as at the cut.
    d.write_at(&block(0xcc), BS, false).unwrap();
    assert_eq!(read_block(&d, 3), block(3));
    assert_eq!(d.state().live().ones().collect::<Vec<_>>(), vec![1, 2, 9]);
    assert_eq!(common::finish(&d).unwrap(), 3);
    assert_eq!(d.state().cut().count(), 0);
    assert_eq!(d.state().live().ones().collect::<Vec<_>>(), vec![1, 2, 9], "post-cut writes stay dirty");
    assert!(matches!(common::finish(&d), Err(FilterError::NoCut)));
    // The image itself holds the newest data.
    let mut buf = block(0);
    d.read_at(&mut buf, 2 * BS).unwrap();
    assert_eq!(buf, block(0xaa));
}

/// Copies live in scratch slots that are reused once read, so a cut whose
/// reader keeps up never grows the scratch file (no per-block allocation or
/// hole punching, which costs a synchronous discard on `-o discard`
/// filesystems); the file is emptied when the cut ends, and a copy written
/// into a reused slot still reads back as its own block's cut-time contents.
/// (No memory for copies here: every copy goes to the file.)
#[test]
fn scratch_slots_are_reused_and_the_file_is_emptied_when_the_cut_ends() {
    let dir = tempfile::tempdir().unwrap();
    let blocks = 32;
    let d = open_with(dir.path(), blocks, CopyMemory::new(0));
    for b in 0..blocks {
        d.write_at(&block(b as u8 + 1), b * BS, false).unwrap();
    }
    let scratch_len = || std::fs::metadata(dir.path().join("scratch")).unwrap().len();
    let _ = d.cut(CutKind::Dirty).unwrap();
    // The writer runs two blocks ahead of the reader: at most two copies wait.
    for b in 0..blocks {
        d.write_at(&block(0xf0), b * BS, false).unwrap();
        if b >= 1 {
            assert_eq!(read_block(&d, b - 1), block(b as u8), "block {}: its own cut-time copy", b - 1);
        }
    }
    assert_eq!(read_block(&d, blocks - 1), block(blocks as u8));
    assert!(scratch_len() <= 2 * BS, "{} bytes of scratch for at most two waiting copies", scratch_len());
    assert_eq!(common::finish(&d).unwrap(), blocks);
    assert_eq!(scratch_len(), 0, "emptied once the cut ended");
    // The next cut starts from an empty file and copies correctly again.
    let _ = d.cut(CutKind::Dirty).unwrap();
    d.write_at(&block(0x0e), 5 * BS, false).unwrap();
    assert_eq!(scratch_len(), BS);
    assert_eq!(read_block(&d, 5), block(0xf0));
    assert_eq!(d.abort_cut().unwrap(), blocks);
    assert_eq!(scratch_len(), 0);
}

/// Copies wait in memory while the budget lasts and spill to the scratch
/// file past it; freed memory slots are reused before file slots; the memory
/// goes back to the budget (shared by every disk using it) when the cut ends,
/// and every copy reads back as its own block whichever store held it.
#[test]
fn copies_wait_in_memory_within_the_budget_then_spill_to_the_scratch_file() {
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let blocks = 16;
    let budget = CopyMemory::new(3 * BS);
    let a = open_with(dir_a.path(), blocks, Arc::clone(&budget));
    let b = open_with(dir_b.path(), blocks, Arc::clone(&budget));
    for n in 0..blocks {
        a.write_at(&block(n as u8 + 1), n * BS, false).unwrap();
        b.write_at(&block(n as u8 + 0x81), n * BS, false).unwrap();
    }
    let usage = |d: &Disk| d.copy_usage().unwrap();
    let _ = a.cut(CutKind::Dirty).unwrap();
    let _ = b.cut(CutKind::Dirty).unwrap();
    assert!(a.in_image(0) && a.in_image(blocks - 1), "nothing copied yet");
    // Disk b takes one block of the budget, disk a the other two and then spills.
    b.write_at(&block(0xee), 0, false).unwrap();
    assert!(!b.in_image(0), "copied aside: the image no longer holds block 0 as at the cut");
    for n in 0..4 {
        a.write_at(&block(0xf0), n * BS, false).unwrap();
    }
    assert_eq!(usage(&a), CopyUsage { memory_bytes: 2 * BS, file_bytes: 2 * BS });
    assert_eq!(usage(&b), CopyUsage { memory_bytes: BS, file_bytes: 0 });
    assert_eq!(budget.available(), 0);
    // Reading a copy frees its slot; the next copy takes the memory slot.
    assert_eq!(read_block(&a, 0), block(1));
    a.write_at(&block(0xf0), 4 * BS, false).unwrap();
    assert_eq!(usage(&a), CopyUsage { memory_bytes: 2 * BS, file_bytes: 2 * BS }, "reused, not grown");
    for n in 1..5 {
        assert_eq!(read_block(&a, n), block(n as u8 + 1), "block {n}: its own cut-time copy");
    }
    assert_eq!(read_block(&b, 0), block(0x81));
    // Ending a cut empties its stores and gives its memory back to the budget.
    assert_eq!(common::finish(&a).unwrap(), blocks);
    assert_eq!(usage(&a), CopyUsage { memory_bytes: 0, file_bytes: 0 });
    assert_eq!(budget.available(), 2 * BS, "disk b still holds its slot");
    assert_eq!(a.last_cut_copies(), Some(CopyUsage { memory_bytes: 2 * BS, file_bytes: 2 * BS }), "its peak");
    assert!(!a.in_image(5), "no cut, nothing to read");
    assert_eq!(b.abort_cut().unwrap(), blocks);
    assert_eq!(budget.available(), 3 * BS);
    // A cut without copies reports none.
    let _ = a.cut(CutKind::Dirty).unwrap();
    assert_eq!(common::finish(&a).unwrap(), 5, "the five overwritten blocks");
    assert_eq!(a.last_cut_copies(), None);
    // Dropping a disk mid-cut gives its memory back too.
    let _ = b.cut(CutKind::Dirty).unwrap();
    b.write_at(&block(1), 3 * BS, false).unwrap();
    assert_eq!(budget.available(), 2 * BS);
    drop(b);
    assert_eq!(budget.available(), 3 * BS);
}

#[test]
fn abort_puts_the_cut_bits_back() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path(), 16);
    d.write_at(&block(1), 4 * BS, false).unwrap();
    d.cut(CutKind::Dirty).unwrap();
    d.write_at(&block(2), 5 * BS, false).unwrap();
    assert_eq!(d.abort_cut().unwrap(), 1);
    assert_eq!(d.state().live().ones().collect::<Vec<_>>(), vec![4, 5]);
    assert_eq!(d.state().cut().count(), 0);
    // A new cut takes both and reads current data.
    let info = d.cut(CutKind::Dirty).unwrap();
    assert_eq!((info.generation, info.dirty_blocks), (2, 2));
    assert_eq!(read_block(&d, 5), block(2));
}

#[test]
fn a_cut_left_unfinished_by_a_dead_filter_is_merged_back_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let d = open(dir.path(), 16);
    d.write_at(&block(1), 4 * BS, false).unwrap();
    d.cut(CutKind::Dirty).unwrap();
    d.write_at(&block(2), 6 * BS, false).unwrap();
    assert_eq!(StateFile::report(&dir.path().join("state")).unwrap().dirty_blocks, vec![4, 6]);
    d.close().unwrap(); // close aborts the cut
    let state = dir.path().join("state");
    let image = dir.path().join("disk.img");
    let d = Disk::open(DiskPaths { image, state, scratch: dir.path().join("scratch") }).unwrap();
    assert_eq!(d.state().live().ones().collect::<Vec<_>>(), vec![4, 6]);
    assert_eq!(d.state().cut().count(), 0);
}

/// Writers hammer the disk while a full cut is taken and read. For each
/// writer (which writes at queue depth 1), the copy must show exactly the
/// writer's history up to some sequence number K, with K no earlier than
/// the last write acknowledged before the cut began and no later than the
/// last write started before it returned.
#[test]
fn full_cut_is_crash_consistent_under_concurrent_writes() {
    const BLOCKS: u64 = 256;
    const WRITERS: u64 = 4;
    for round in 0..5u64 {
        let dir = tempfile::tempdir().unwrap();
        let d = Arc::new(open(dir.path(), BLOCKS));
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        let started: Arc<Vec<AtomicU64>> = Arc::new((0..WRITERS).map(|_| AtomicU64::new(0)).collect());
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let (d, stop, acked, started) = (d.clone(), stop.clone(), acked.clone(), started.clone());
                std::thread::spawn(move || {
                    let mut log = Vec::new();
                    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ ((w + 1) * (round + 7));
                    let mut seq = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let b = (x % (BLOCKS / WRITERS)) * WRITERS + w; // this writer's blocks
                        seq += 1;
                        let mut rec = vec![0u8; BS as usize];
                        rec[..8].copy_from_slice(&w.to_le_bytes());
                        rec[8..16].copy_from_slice(&seq.to_le_bytes());
                        rec[16..24].copy_from_slice(&b.to_le_bytes());
                        // Sometimes a write that spans two of the writer's blocks' neighbours is
                        // not allowed (blocks interleave between writers), so write whole blocks.
                        started[w as usize].store(seq, Ordering::SeqCst);
                        d.write_at(&rec, b * BS, false).unwrap();
                        acked[w as usize].store(seq, Ordering::SeqCst);
                        log.push((seq, b));
                    }
                    log
                })
            })
            .collect();
        std::thread::sleep(std::time::Duration::from_millis(20 + round * 7));
        let lo: Vec<u64> = acked.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        d.cut(CutKind::Full).unwrap();
        let hi: Vec<u64> = started.iter().map(|a| a.load(Ordering::SeqCst)).collect();
        // Let every writer overwrite blocks the reader has not read yet, so
        // the copy depends on copy-before-write, then read while they go on.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while (0..WRITERS as usize).any(|w| acked[w].load(Ordering::SeqCst) < hi[w] + 20) {
            assert!(std::time::Instant::now() < deadline, "writers stalled after the cut");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let copy: Vec<Vec<u8>> = (0..BLOCKS).map(|b| read_block(&d, b)).collect();
        stop.store(true, Ordering::Relaxed);
        let logs: Vec<Vec<(u64, u64)>> = writers.into_iter().map(|t| t.join().unwrap()).collect();
        for w in 0..WRITERS {
            let log = &logs[w as usize];
            let seen = |b: u64| u64::from_le_bytes(copy[b as usize][8..16].try_into().unwrap());
            let consistent_at = |k: u64| {
                (0..BLOCKS / WRITERS).all(|i| {
                    let b = i * WRITERS + w;
                    let want = log.iter().filter(|(s, lb)| *lb == b && *s <= k).map(|(s, _)| *s).max().unwrap_or(0);
                    seen(b) == want
                })
            };
            let ok = (lo[w as usize]..=hi[w as usize]).any(consistent_at);
            assert!(
                ok,
                "writer {w}: copy is not the disk at one instant between seq {} and {} (round {round})",
                lo[w as usize], hi[w as usize]
            );
        }
        let writes: usize = logs.iter().map(Vec::len).sum();
        assert!(d.state().live().count() > 0 && writes > 0);
        d.abort_cut().unwrap();
    }
}
