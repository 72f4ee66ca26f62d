//! `lifeboat snapshot` is crash-consistent while the VM keeps writing
//! (DESIGN.md invariant 2: a point is exactly the disk at the instant of its cut).
//!
//! A writer (Python on libnbd, the module behind nbdsh) writes numbered records
//! through the real filter at queue depth 1. A record covers 1 to 3 consecutive
//! 4 KiB slots; every slot of a record carries the record's global sequence
//! number, the slot index and a fill derived from both, so a torn or misplaced
//! slot is recognisable. Meanwhile the test runs `lifeboat snapshot NAME --out
//! FILE`, twice per run. Each snapshot must then be explained by one K: every
//! slot holds exactly the last record with seq <= K that covered it, or its
//! original content when no such record exists. K must also agree with the
//! clock: records acknowledged before the snapshot command started are in,
//! records issued after it finished are out.
//!
//! The runs differ in block size (4 KiB, 64 KiB, 1 MiB: records are smaller
//! than, equal to, or straddle filter blocks), write pattern (random, or a
//! sequential sweep from the disk's end backwards) and how long the writer runs before the snapshot.

use std::fs;
use std::process::Stdio;
use std::time::Duration;

use vm_tests::clients::nbd_uri;
use vm_tests::lifeboat::Scratch;
use vm_tests::process::wait_for;
use vm_tests::replicate::{monotonic_ns, History, RecordWriter, WriteOrder, SLOT};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A scratch directory with a home driven by the binary cargo built.
fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-snap-")
}

struct Config {
    block_size: u64,
    order: WriteOrder,
    /// Records acknowledged before each snapshot starts.
    lead: usize,
    seed: u64,
}

fn snapshot_while_writing(cfg: Config) {
    let s = scratch();
    let size = 48 * MIB + 4 * KIB; // not a multiple of 64 KiB or 1 MiB
    let nslots = size / SLOT;
    let image = s.path("disk.img");
    fs::write(&image, History::original_image(nslots)).unwrap();
    s.home.protect("snap", &image, cfg.block_size);
    let sock = s.path("s.sock");
    let filter = s.home.filter("snap", &sock);
    let mut writer =
        RecordWriter::spawn_ordered(s.path("").as_path(), &nbd_uri("snap", &sock), nslots, cfg.seed, cfg.order);
    let limit = Duration::from_secs(120);

    // Two snapshots per run, each taken while the writer keeps going.
    let mut snaps = Vec::new();
    let mut target = cfg.lead;
    for round in 0..2 {
        writer.wait_acked(target, limit);
        let out_file = s.path(&format!("snap{round}.raw"));
        let t_start = monotonic_ns();
        let mut snap = s
            .home
            .command()
            .args(["snapshot", "snap", "--out"])
            .arg(&out_file)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn snapshot");
        let status = wait_for(&mut snap, Duration::from_secs(120), "lifeboat snapshot");
        let t_end = monotonic_ns();
        let out = snap.wait_with_output().unwrap();
        assert!(
            status.success(),
            "lifeboat snapshot failed ({status}): {}\nfilter log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            filter.log()
        );
        snaps.push((out_file, t_start, t_end));
        // Keep writing for a while after the snapshot finished.
        target = writer.acked() + 300;
    }
    writer.wait_acked(target, limit);
    let history = History::new(writer.stop(), nslots);
    filter.stop();
    let recs = &history.recs;

    // The final image is the state after every record.
    let last = recs.len() as i64 - 1;
    let (lo, hi) = history.explain(&fs::read(&image).unwrap(), "the final image");
    assert!(lo <= last && last <= hi, "the final image does not hold every acknowledged record ({lo}..={hi})");

    let mut previous_k = -1i64;
    for (i, (file, t_start, t_end)) in snaps.iter().enumerate() {
        let what = format!("snapshot {i} ({} KiB blocks, {:?} writes)", cfg.block_size / KIB, cfg.order);
        let copy = fs::read(file).unwrap();
        assert_eq!(copy.len() as u64, size, "{what}: size");
        let (lo, hi) = history.explain(&copy, &what);
        // The clock: acknowledged before the command started => in;
        // issued after it ended => out.
        let (must_in, must_out) = history.clock_bounds(*t_start, *t_end);
        let k_lo = lo.max(must_in);
        let k_hi = hi.min(must_out - 1);
        assert!(
            k_lo <= k_hi,
            "{what}: its content fits cuts {lo}..={hi}, but the snapshot ran while records {}..{} were written",
            must_in + 1,
            must_out
        );
        assert!(k_lo > previous_k, "{what}: not later than the snapshot before it");
        previous_k = k_lo;
        let during = recs.iter().filter(|r| r.t_ack > *t_start && r.t_issue < *t_end).count();
        assert!(
            copy != fs::read(&image).unwrap(),
            "{what}: identical to the final image, so no write happened after the cut"
        );
        eprintln!("{what}: cut after record {k_lo}..={k_hi}; {during} records written while it ran");
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn snapshot_is_crash_consistent_with_4k_blocks_and_random_records() {
    snapshot_while_writing(Config { block_size: 4 * KIB, order: WriteOrder::Random, lead: 20, seed: 1 });
}

#[test]
fn snapshot_is_crash_consistent_with_64k_blocks_and_random_records() {
    snapshot_while_writing(Config { block_size: 64 * KIB, order: WriteOrder::Random, lead: 700, seed: 2 });
}

#[test]
fn snapshot_is_crash_consistent_with_1m_blocks_and_a_sequential_sweep() {
    snapshot_while_writing(Config { block_size: MIB, order: WriteOrder::Sweep, lead: 2500, seed: 3 });
}

#[test]
fn snapshot_is_crash_consistent_when_taken_as_the_writer_starts() {
    snapshot_while_writing(Config { block_size: 64 * KIB, order: WriteOrder::Sweep, lead: 1, seed: 4 });
}
