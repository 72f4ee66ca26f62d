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

// Test code for 64-bit hosts: offsets and sizes fit usize; pattern bytes are reduced mod 251.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use vm_tests::clients::{nbd_uri, python_nbd};
use vm_tests::lifeboat::Scratch;
use vm_tests::process::wait_for;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A scratch directory with a home driven by the binary cargo built.
fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-snap-")
}

/// CLOCK_MONOTONIC in nanoseconds: the clock Python's `time.monotonic_ns()` reads.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively
    // borrowed `ts` and reads nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0);
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

/// The unit a record is made of; independent of the filter's block size.
const SLOT: u64 = 4 * KIB;
const REC_MAGIC: &[u8; 8] = b"LBREC001";
const ORIG_MAGIC: &[u8; 8] = b"LBORIG01";

/// Writes records (random, or a backwards sequential sweep) at queue depth 1 until STOP exists (checked every 16
/// records) or MAX records are written. Prints "SEQ FIRST N T_ISSUE T_ACK" per
/// acknowledged record (CLOCK_MONOTONIC ns), then "done".
const WRITER: &str = r#"
import sys, os, time, struct, random, nbd
uri, slot, nslots, seed, mode, stop, maxn = sys.argv[1:8]
slot, nslots, seed, maxn = int(slot), int(nslots), int(seed), int(maxn)
rng = random.Random(seed)
h = nbd.NBD()
h.connect_uri(uri)
def record(seq, s):
    head = b"LBREC001" + struct.pack("<QQ", seq, s)
    return head + bytes([(seq * 31 + s * 7) % 251 + 1]) * (slot - len(head))
seq = 0
while seq < maxn:
    if seq % 16 == 0 and os.path.exists(stop):
        break
    if mode == "sweep":
        # Backwards, so a copier reading forwards meets the writer.
        n, first = 1, nslots - 1 - seq % nslots
    else:
        n = rng.choice((1, 1, 1, 2, 3))
        first = rng.randrange(0, nslots - n + 1)
    buf = b"".join(record(seq, first + k) for k in range(n))
    t0 = time.monotonic_ns()
    h.pwrite(buf, first * slot)
    t1 = time.monotonic_ns()
    print(seq, first, n, t0, t1, flush=True)
    seq += 1
h.shutdown()
print("done", flush=True)
"#;

fn record(seq: u64, slot: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT as usize);
    v.extend_from_slice(REC_MAGIC);
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&slot.to_le_bytes());
    v.resize(SLOT as usize, ((seq * 31 + slot * 7) % 251 + 1) as u8);
    v
}

fn original_slot(slot: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(SLOT as usize);
    v.extend_from_slice(ORIG_MAGIC);
    v.extend_from_slice(&slot.to_le_bytes());
    v.resize(SLOT as usize, 0xA5);
    v
}

#[derive(Debug, Clone, Copy)]
struct Rec {
    seq: u64,
    first: u64,
    n: u64,
    t_issue: u64,
    t_ack: u64,
}

/// What one slot of a copy holds.
#[derive(Debug, PartialEq)]
enum Content {
    Original,
    Record(u64),
}

fn decode(copy: &[u8], slot: u64, what: &str) -> Content {
    let bytes = &copy[(slot * SLOT) as usize..((slot + 1) * SLOT) as usize];
    if bytes == original_slot(slot).as_slice() {
        return Content::Original;
    }
    if &bytes[..8] == REC_MAGIC {
        let seq = u64::from_le_bytes(bytes[8..16].try_into().unwrap());
        let at = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
        assert_eq!(at, slot, "{what}: slot {slot} holds record {seq}'s data for slot {at}");
        assert!(bytes == record(seq, slot).as_slice(), "{what}: slot {slot} holds a torn copy of record {seq}");
        return Content::Record(seq);
    }
    panic!("{what}: slot {slot} holds neither its original content nor a record: {:02x?}", &bytes[..32]);
}

/// Finds the K that explains `copy`, or fails naming the slots that disagree.
/// K = -1 means "before the first record".
fn explain(copy: &[u8], per_slot: &[Vec<u64>], what: &str) -> (i64, i64) {
    let (mut lo, mut hi) = (-1i64, i64::MAX);
    let (mut lo_by, mut hi_by) = (None, None);
    for (slot, writes) in per_slot.iter().enumerate() {
        match decode(copy, slot as u64, what) {
            Content::Original => {
                if let Some(&first) = writes.first() {
                    if (first as i64 - 1) < hi {
                        hi = first as i64 - 1;
                        hi_by = Some((slot, "original content"));
                    }
                }
            }
            Content::Record(seq) => {
                let at = writes
                    .binary_search(&seq)
                    .unwrap_or_else(|_| panic!("{what}: slot {slot} holds record {seq}, which never covered it"));
                if seq as i64 > lo {
                    lo = seq as i64;
                    lo_by = Some(slot);
                }
                if let Some(&next) = writes.get(at + 1) {
                    if (next as i64 - 1) < hi {
                        hi = next as i64 - 1;
                        hi_by = Some((slot, "a record overwritten later"));
                    }
                }
            }
        }
    }
    assert!(
        lo <= hi,
        "{what} is not crash-consistent: slot {lo_by:?} holds record {lo}, but slot {hi_by:?} shows nothing \
         after record {hi} had been written"
    );
    (lo, hi)
}

struct Config {
    block_size: u64,
    mode: &'static str,
    /// Records acknowledged before each snapshot starts.
    lead: usize,
    seed: u64,
}

fn snapshot_while_writing(cfg: Config) {
    let s = scratch();
    let size = 48 * MIB + 4 * KIB; // not a multiple of 64 KiB or 1 MiB
    let nslots = size / SLOT;
    let image = s.path("disk.img");
    let original: Vec<u8> = (0..nslots).flat_map(original_slot).collect();
    fs::write(&image, &original).unwrap();
    s.home.protect("snap", &image, cfg.block_size);
    let sock = s.path("s.sock");
    let filter = s.home.filter("snap", &sock);

    let script = s.path("writer.py");
    fs::write(&script, WRITER).unwrap();
    let stop = s.path("stop");
    let mut writer = Command::new(python_nbd())
        .arg(&script)
        .arg(nbd_uri("snap", &sock))
        .args([SLOT.to_string(), nslots.to_string(), cfg.seed.to_string(), cfg.mode.to_string()])
        .arg(&stop)
        .arg("2000000")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn writer");
    let recs: Arc<Mutex<Vec<Rec>>> = Arc::default();
    let reader = {
        let recs = Arc::clone(&recs);
        let out = writer.stdout.take().unwrap();
        thread::spawn(move || {
            let mut done = false;
            for line in BufReader::new(out).lines() {
                let line = line.expect("writer stdout");
                if line == "done" {
                    done = true;
                    continue;
                }
                let f: Vec<u64> = line.split_whitespace().map(|x| x.parse().expect("writer line")).collect();
                assert_eq!(f.len(), 5, "writer line {line:?}");
                let mut r = recs.lock().unwrap();
                assert_eq!(f[0], r.len() as u64, "writer sequence numbers must be consecutive");
                r.push(Rec { seq: f[0], first: f[1], n: f[2], t_issue: f[3], t_ack: f[4] });
            }
            done
        })
    };
    let acked = || recs.lock().unwrap().len();
    let wait_acked = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while acked() < n {
            assert!(Instant::now() < deadline, "the writer acknowledged only {} of {n} records in 120 s", acked());
            thread::sleep(Duration::from_millis(2));
        }
    };

    // Two snapshots per run, each taken while the writer keeps going.
    let mut snaps = Vec::new();
    let mut target = cfg.lead;
    for round in 0..2 {
        wait_acked(target);
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
        target = acked() + 300;
    }
    wait_acked(target);
    fs::write(&stop, b"").unwrap();
    let status = wait_for(&mut writer, Duration::from_secs(60), "writer");
    assert!(reader.join().expect("reader thread"), "the writer did not finish cleanly");
    assert!(status.success(), "the writer failed: {status}");
    filter.stop();

    let recs = recs.lock().unwrap().clone();
    let mut per_slot: Vec<Vec<u64>> = vec![Vec::new(); nslots as usize];
    for r in &recs {
        for k in r.first..r.first + r.n {
            per_slot[k as usize].push(r.seq);
        }
    }

    // The final image is the state after every record.
    let last = recs.len() as i64 - 1;
    let (lo, hi) = explain(&fs::read(&image).unwrap(), &per_slot, "the final image");
    assert!(lo <= last && last <= hi, "the final image does not hold every acknowledged record ({lo}..={hi})");

    let mut previous_k = -1i64;
    for (i, (file, t_start, t_end)) in snaps.iter().enumerate() {
        let what = format!("snapshot {i} ({} KiB blocks, {} writes)", cfg.block_size / KIB, cfg.mode);
        let copy = fs::read(file).unwrap();
        assert_eq!(copy.len() as u64, size, "{what}: size");
        let (lo, hi) = explain(&copy, &per_slot, &what);
        // The clock: acknowledged before the command started => in;
        // issued after it ended => out.
        let must_in = recs.iter().filter(|r| r.t_ack < *t_start).map(|r| r.seq as i64).max().unwrap_or(-1);
        let must_out = recs.iter().filter(|r| r.t_issue > *t_end).map(|r| r.seq as i64).min().unwrap_or(i64::MAX);
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
    snapshot_while_writing(Config { block_size: 4 * KIB, mode: "random", lead: 20, seed: 1 });
}

#[test]
fn snapshot_is_crash_consistent_with_64k_blocks_and_random_records() {
    snapshot_while_writing(Config { block_size: 64 * KIB, mode: "random", lead: 700, seed: 2 });
}

#[test]
fn snapshot_is_crash_consistent_with_1m_blocks_and_a_sequential_sweep() {
    snapshot_while_writing(Config { block_size: MIB, mode: "sweep", lead: 2500, seed: 3 });
}

#[test]
fn snapshot_is_crash_consistent_when_taken_as_the_writer_starts() {
    snapshot_while_writing(Config { block_size: 64 * KIB, mode: "sweep", lead: 1, seed: 4 });
}
