//! Crash safety of the real `lifeboat filter` process (DESIGN.md invariants 1 and 7).
//!
//! * A client writes through the filter and reports each write the moment the
//!   server acknowledges it; the test SIGKILLs the filter in the middle of the
//!   stream. Then every acknowledged write's blocks must be dirty, the state must
//!   not be suspect (the process died, the host did not), the data of every
//!   acknowledged write must read back through a restarted filter, and the
//!   blocks must still be dirty after that filter stops cleanly.
//! * A corrupt or truncated state file is refused by `lifeboat filter` and
//!   `lifeboat dirty` with exit code 1 and a message naming the file, and the
//!   file is left byte for byte as it was.
//!
//! The writer is a small Python program on libnbd (python3-libnbd, the module
//! behind nbdsh), run with /usr/bin/python3; it prints `issue I` before it sends
//! write I and `ack I` after the server acknowledged it, flushing each line.

// Test code for 64-bit hosts: offsets and sizes fit usize; pattern bytes are reduced mod 251.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::clients::{nbd_uri, python_nbd, qemu_io};
use vm_tests::lifeboat::{unix_listen, Dirty, Filter, Home, Scratch};
use vm_tests::paths::tool;
use vm_tests::process::assert_ok;
use vm_tests::{blocks_of, Rng};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;
/// The state file's header page and the offsets of its two header slots
/// (disk-format/FORMAT.md).
const HEADER_PAGE: u64 = 4096;
const HEADER_SLOTS: [u64; 2] = [0, 2048];

/// A scratch directory with a home driven by the binary cargo built.
fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-crash-")
}

/// The disk's state file: the file in HOME/disks/NAME that starts with a
/// header page and is not the config.
fn state_file(home: &Home, name: &str) -> PathBuf {
    let dir = home.dir.join("disks").join(name);
    let mut files: Vec<(PathBuf, u64)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let len = fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .filter(|(p, len)| *len >= HEADER_PAGE && p.extension().is_none_or(|e| e != "toml"))
        .collect();
    files.sort_by_key(|(p, len)| (!p.to_string_lossy().contains("state"), u64::MAX - len));
    files.into_iter().next().unwrap_or_else(|| panic!("no state file in {}", dir.display())).0
}

// ---------------------------------------------------------------------------
// The writer
// ---------------------------------------------------------------------------

/// Reads a plan of writes ("OFFSET LENGTH BYTE" per line) and sends them with
/// at most QD requests in flight, printing `issue I` before sending write I
/// and `ack I` once the server acknowledged it.
const WRITER: &str = r#"
import sys, nbd
uri, plan_path, qd = sys.argv[1], sys.argv[2], int(sys.argv[3])
plan = [tuple(int(x) for x in line.split()) for line in open(plan_path)]
h = nbd.NBD()
h.connect_uri(uri)
pending = {}
i = 0
while i < len(plan) or pending:
    while i < len(plan) and len(pending) < qd:
        off, ln, b = plan[i]
        buf = nbd.Buffer.from_bytearray(bytearray([b]) * ln)
        print("issue", i, flush=True)
        pending[h.aio_pwrite(buf, off)] = (i, buf)
        i += 1
    h.poll(-1)
    for cookie in list(pending):
        if h.aio_command_completed(cookie):
            print("ack", pending.pop(cookie)[0], flush=True)
h.shutdown()
print("done", flush=True)
"#;

struct Write {
    off: u64,
    len: u64,
    byte: u8,
}

/// The outcome of a writer run that was cut short.
struct Run {
    issued: BTreeSet<usize>,
    acked: BTreeSet<usize>,
}

/// Runs the writer against the filter and SIGKILLs the filter once `kill_after`
/// writes have been acknowledged. Returns what the writer reported.
fn write_and_kill(s: &Scratch, filter: &mut Filter, uri: &str, plan: &[Write], qd: usize, kill_after: usize) -> Run {
    let script = s.path("writer.py");
    fs::write(&script, WRITER).unwrap();
    let plan_path = s.path("plan.txt");
    let text: String = plan.iter().map(|w| format!("{} {} {}\n", w.off, w.len, w.byte)).collect();
    fs::write(&plan_path, text).unwrap();

    let mut writer = Command::new(python_nbd())
        .arg(&script)
        .arg(uri)
        .arg(&plan_path)
        .arg(qd.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let mut lines = BufReader::new(writer.stdout.take().unwrap()).lines();
    let mut run = Run { issued: BTreeSet::new(), acked: BTreeSet::new() };
    let mut killed = false;
    let deadline = Instant::now() + Duration::from_secs(120);
    for line in lines.by_ref() {
        let line = line.expect("writer stdout");
        let mut it = line.split_whitespace();
        match (it.next(), it.next().and_then(|n| n.parse::<usize>().ok())) {
            (Some("issue"), Some(i)) => assert!(run.issued.insert(i)),
            (Some("ack"), Some(i)) => {
                assert!(run.issued.contains(&i), "ack {i} before issue");
                assert!(run.acked.insert(i));
                if !killed && run.acked.len() >= kill_after {
                    filter.signal(libc::SIGKILL);
                    killed = true;
                }
            }
            (Some("done"), None) => {}
            _ => panic!("unexpected writer line {line:?}"),
        }
        assert!(Instant::now() < deadline, "writer still running after 120 s");
    }
    let out = writer.wait_with_output().expect("writer exit");
    assert!(killed, "the writer finished all {} writes before the kill point {kill_after}", plan.len());
    assert!(
        !out.status.success(),
        "the writer did not notice the filter dying (exit {}): the kill came too late",
        out.status
    );
    let status = filter.wait(Duration::from_secs(10));
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL),
        "filter did not die of SIGKILL: {status}"
    );
    assert!(run.acked.len() < plan.len(), "every write was acknowledged: nothing was in flight at the kill");
    run
}

/// The core check shared by the crash tests: kill mid-stream, then the state
/// and the data of every acknowledged write must have survived.
fn crash_mid_stream(qd: usize, bs: u64, size: u64, plan: Vec<Write>, kill_after: usize, seed: u64) {
    let s = scratch();
    let image = s.path("disk.img");
    let original = Rng::new(seed).bytes(size as usize);
    fs::write(&image, &original).unwrap();
    s.home.protect("crashy", &image, bs);
    let sock = s.path("c.sock");
    let mut filter = s.home.filter("crashy", &sock);
    let uri = nbd_uri("crashy", &sock);
    let run = write_and_kill(&s, &mut filter, &uri, &plan, qd, kill_after);
    drop(filter);

    let acked_blocks: BTreeSet<u64> = run.acked.iter().flat_map(|&i| blocks_of(plan[i].off, plan[i].len, bs)).collect();
    let issued_blocks: BTreeSet<u64> =
        run.issued.iter().flat_map(|&i| blocks_of(plan[i].off, plan[i].len, bs)).collect();

    let check = |d: &Dirty, when: &str| {
        assert_eq!((d.block_size, d.disk_size), (bs, size), "{when}: geometry");
        assert!(!d.suspect, "{when}: a process crash (not a host crash) left the state suspect");
        let lost: Vec<u64> = acked_blocks.difference(&d.dirty_blocks).copied().collect();
        assert!(
            lost.is_empty(),
            "{when}: {} blocks of acknowledged writes are not dirty (first: {:?}); {} writes were acknowledged",
            lost.len(),
            &lost[..lost.len().min(10)],
            run.acked.len()
        );
        let extra: Vec<u64> = d.dirty_blocks.difference(&issued_blocks).copied().collect();
        assert!(extra.is_empty(), "{when}: blocks no write touched are dirty: {:?}", &extra[..extra.len().min(10)]);
    };
    check(&s.home.dirty("crashy"), "after SIGKILL");

    // Restart: the filter must accept a state file left by a killed process.
    let filter = s.home.filter("crashy", &sock);
    check(&s.home.dirty("crashy"), "after restart");
    let back = s.path("back.bin");
    let out = Command::new(tool("nbdcopy")).arg(&uri).arg(&back).output().expect("nbdcopy");
    assert_ok(&out, "nbdcopy out after restart");
    filter.stop();
    check(&s.home.dirty("crashy"), "after a clean stop of the restarted filter");

    // Every acknowledged write reads back. Bytes of writes that were in flight
    // at the kill may hold either the old or the new value.
    let mut want = original;
    let mut either: Vec<Option<u8>> = vec![None; size as usize];
    for (i, w) in plan.iter().enumerate() {
        let r = w.off as usize..(w.off + w.len) as usize;
        if run.acked.contains(&i) {
            want[r.clone()].fill(w.byte);
            either[r].fill(None);
        } else if run.issued.contains(&i) {
            either[r].fill(Some(w.byte));
        }
    }
    for (name, got) in
        [("read through the restarted filter", fs::read(&back).unwrap()), ("image", fs::read(&image).unwrap())]
    {
        assert_eq!(got.len() as u64, size, "{name}: size");
        for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
            assert!(
                g == w || either[i] == Some(g),
                "{name}: byte {i} is {g:#04x}, an acknowledged write left {w:#04x}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
fn sigkill_mid_stream_at_queue_depth_1_keeps_every_acknowledged_write() {
    let (bs, size) = (4 * KIB, 32 * MIB + 4 * KIB);
    let mut rng = Rng::new(11);
    // Overlapping writes of 1 byte to 192 KiB at random offsets.
    let plan: Vec<Write> = (0..3000)
        .map(|i| {
            let len = 1 + rng.below(if i % 4 == 0 { 192 * KIB } else { 9000 });
            Write { off: rng.below(size - len + 1), len, byte: (i % 250 + 1) as u8 }
        })
        .collect();
    crash_mid_stream(1, bs, size, plan, 400, 12);
}

#[test]
fn sigkill_with_32_writes_in_flight_keeps_every_acknowledged_write() {
    let (bs, size) = (64 * KIB, 48 * MIB + 20 * KIB);
    let mut rng = Rng::new(21);
    // Writes to disjoint slots in random order, many in flight at the kill.
    let slot = 96 * KIB;
    let slots = size / slot;
    let mut order: Vec<u64> = (0..slots).collect();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let plan: Vec<Write> = order
        .iter()
        .enumerate()
        .map(|(i, &k)| {
            let len = 1 + rng.below(slot - 1);
            Write { off: k * slot + rng.below(slot - len + 1), len, byte: (i % 250 + 1) as u8 }
        })
        .collect();
    crash_mid_stream(32, bs, size, plan, 120, 22);
}

/// What a corruption does to the state file, and the check that follows.
fn refused_and_untouched(s: &Scratch, name: &str, state: &Path, what: &str) {
    let before = fs::read(state).unwrap();
    let shown = state.display().to_string();

    let out = s.home.run(&["dirty", name, "--json"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: `dirty` exit status {} (stderr: {err})", out.status);
    assert!(err.contains(&shown), "{what}: `dirty` error does not name the state file {shown}:\n{err}");

    let sock = s.path("refused.sock");
    let mut filter = s.home.spawn_filter(name, &[unix_listen(&sock)]);
    let status = filter.wait(Duration::from_secs(30));
    let err = filter.log();
    assert_eq!(status.code(), Some(1), "{what}: `filter` exit status {status} (stderr: {err})");
    assert!(err.contains(&shown), "{what}: `filter` error does not name the state file {shown}:\n{err}");
    assert!(!err.contains("listening on"), "{what}: the filter served a disk with a bad state file:\n{err}");

    assert!(fs::read(state).unwrap() == before, "{what}: the state file was changed by a refused command");
}

/// A disk that has been written to and cleanly stopped, ready to be damaged.
fn protected_with_dirty_blocks(s: &Scratch, name: &str) -> PathBuf {
    let image = s.path("disk.img");
    fs::write(&image, Rng::new(5).bytes((8 * MIB) as usize)).unwrap();
    s.home.protect(name, &image, 64 * KIB);
    let sock = s.path("w.sock");
    let filter = s.home.filter(name, &sock);
    qemu_io(&nbd_uri(name, &sock), &["write -P 7 100000 300000"]);
    filter.stop();
    assert_eq!(s.home.dirty(name).dirty_blocks, (1..=6).collect::<BTreeSet<u64>>());
    state_file(&s.home, name)
}

#[test]
fn state_file_with_both_header_copies_corrupt_is_refused_and_untouched() {
    for (what, at) in [("checksum", 40u64), ("magic", 0)] {
        let s = scratch();
        let state = protected_with_dirty_blocks(&s, "bad");
        let mut bytes = fs::read(&state).unwrap();
        for slot in HEADER_SLOTS {
            bytes[(slot + at) as usize] ^= 0x20;
        }
        fs::write(&state, &bytes).unwrap();
        refused_and_untouched(&s, "bad", &state, &format!("both header copies with a flipped {what} byte"));
    }
}

#[test]
fn truncated_state_file_is_refused_and_untouched() {
    for (what, keep) in
        [("inside the bitmaps", HEADER_PAGE + 10), ("inside the header page", 100), ("to zero bytes", 0)]
    {
        let s = scratch();
        let state = protected_with_dirty_blocks(&s, "short");
        let f = fs::OpenOptions::new().write(true).open(&state).unwrap();
        f.set_len(keep).unwrap();
        drop(f);
        refused_and_untouched(&s, "short", &state, &format!("state file truncated {what}"));
    }
}

#[test]
fn state_file_with_a_dirty_bit_past_the_disk_end_is_refused_and_untouched() {
    // 8 MiB in 64 KiB blocks = 128 blocks; the live bitmap page has room for
    // many more bits, which must all be zero (disk-format/FORMAT.md).
    let s = scratch();
    let state = protected_with_dirty_blocks(&s, "overhang");
    let mut bytes = fs::read(&state).unwrap();
    let bit = 200u64;
    bytes[(HEADER_PAGE + bit / 8) as usize] |= 1 << (bit % 8);
    fs::write(&state, &bytes).unwrap();
    refused_and_untouched(&s, "overhang", &state, "a live bitmap bit for block 200 of a 128-block disk");
}
