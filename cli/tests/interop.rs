//! Interoperability of the real `lifeboat filter` process with real NBD clients.
//!
//! Every test here starts the `lifeboat` binary built by cargo, serves a fresh
//! image through it on a unix socket, and drives it with the clients QEMU users
//! actually run: `qemu-io` (QEMU's own NBD client), `nbdinfo` and `nbdcopy`
//! (libnbd). After the clients are done the test checks three things:
//!
//! * the clients saw their own data (`qemu-io read -P`, `nbdcopy` out),
//! * the image file on disk holds exactly what was written, and nothing else
//!   changed,
//! * `lifeboat dirty NAME --json` marks exactly the blocks the writes touched,
//!   computed here from each request's offset, length and the block size.
//!
//! A missing client tool fails the test with "run scripts/setup.sh": these
//! tests never skip.

// Test code for 64-bit hosts: offsets and sizes fit usize; pattern bytes are reduced mod 251.
#![allow(clippy::cast_possible_truncation)]

use std::collections::BTreeSet;
use std::fs;
use std::process::Command;

use serde_json::Value;
use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::{unix_listen, Scratch};
use vm_tests::paths::tool;
use vm_tests::process::assert_ok;
use vm_tests::{blocks_of, pseudo_random};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// A scratch directory with a home driven by the binary cargo built.
fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-interop-")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// One client request in the qemu-io test.
#[derive(Clone, Copy)]
enum Op {
    /// `write -P byte off len`
    Write(u8),
    /// `write -z off len` (NBD_CMD_WRITE_ZEROES)
    Zero,
    /// `discard off len` (NBD_CMD_TRIM): contents afterwards are unspecified
    Trim,
}

#[test]
fn qemu_io_writes_read_back_and_dirty_marks_exactly_the_touched_blocks() {
    let s = scratch();
    let bs = 64 * KIB;
    // Not a multiple of the block size: the last block (index 80) is 20 KiB long.
    let size = 5 * MIB + 20 * KIB;
    let last = size / bs;
    let original = pseudo_random(size as usize, 1);
    let image = s.path("disk.img");
    fs::write(&image, &original).unwrap();
    s.home.protect("vm1", &image, bs);

    let fresh = s.home.dirty("vm1");
    assert_eq!((fresh.block_size, fresh.disk_size), (bs, size), "geometry after protect");
    assert!(fresh.dirty_blocks.is_empty(), "a freshly protected disk has dirty blocks: {fresh:?}");
    assert!(!fresh.suspect, "a freshly protected disk is suspect");

    let sock = s.path("f.sock");
    let filter = s.home.filter("vm1", &sock);

    // (offset, length, op): unaligned, spanning, tiny, and at the disk's very end.
    // The pattern writes do not overlap each other, so each reads back whole.
    let ops: Vec<(u64, u64, Op)> = vec![
        (0, 4096, Op::Write(0x11)),                // aligned, first block
        (bs - 100, 300, Op::Write(0x22)),          // spans blocks 0 and 1
        (2 * bs + 3, 1, Op::Write(0x33)),          // one byte, unaligned
        (3 * bs + 7, 2 * bs + 5, Op::Write(0x44)), // spans blocks 3, 4, 5
        (last * bs - 10, 30, Op::Write(0x55)),     // into the short last block
        (size - 4096 - 7, 4096, Op::Write(0x66)),  // near the end
        (size - 7, 7, Op::Write(0x77)),            // the very last bytes
        (40 * bs + 512, 8192, Op::Zero),           // WRITE_ZEROES inside block 40
        (44 * bs + 4096, bs, Op::Zero),            // WRITE_ZEROES spanning 44/45
        (50 * bs, bs, Op::Trim),                   // TRIM of block 50
        (60 * bs - 512, 1024, Op::Trim),           // TRIM spanning 59/60
    ];
    let named = nbd_uri("vm1", &sock);
    let default = nbd_uri("", &sock);

    // Half of the requests go to the named export, half to the default one.
    for (i, (off, len, op)) in ops.iter().enumerate() {
        let c = match op {
            Op::Write(p) => format!("write -P {p} {off} {len}"),
            Op::Zero => format!("write -z {off} {len}"),
            Op::Trim => format!("discard {off} {len}"),
        };
        qemu_io(if i % 2 == 0 { &named } else { &default }, &[c]);
    }
    // Read everything back through both exports, in one qemu-io session each.
    let reads: Vec<String> = ops
        .iter()
        .filter_map(|(off, len, op)| match op {
            Op::Write(p) => Some(format!("read -P {p} {off} {len}")),
            Op::Zero => Some(format!("read -P 0 {off} {len}")),
            Op::Trim => None,
        })
        .collect();
    qemu_io(&named, &reads);
    qemu_io(&default, &reads);

    let expected: BTreeSet<u64> = ops.iter().flat_map(|&(off, len, _)| blocks_of(off, len, bs)).collect();
    assert!(expected.contains(&last) && expected.contains(&0));
    let live = s.home.dirty("vm1");
    assert_eq!(live.dirty_blocks, expected, "dirty blocks while the filter runs");
    assert!(!live.suspect);
    assert_eq!((live.block_size, live.disk_size), (bs, size));

    filter.stop();
    let after = s.home.dirty("vm1");
    assert_eq!(after.dirty_blocks, expected, "dirty blocks after a clean stop");
    assert!(!after.suspect, "a cleanly stopped filter left the state suspect");

    // The image holds exactly the writes; bytes nobody wrote are unchanged.
    let got = fs::read(&image).unwrap();
    assert_eq!(got.len() as u64, size, "the image changed size");
    let mut want = original.clone();
    let mut trimmed = vec![false; size as usize];
    for &(off, len, op) in &ops {
        let r = off as usize..(off + len) as usize;
        match op {
            Op::Write(p) => want[r].fill(p),
            Op::Zero => want[r].fill(0),
            Op::Trim => trimmed[r].fill(true),
        }
    }
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        // A trimmed byte may read as its old value or as zero.
        let ok = g == w || (trimmed[i] && g == 0);
        assert!(ok, "image byte {i} (block {}) is {g:#04x}, expected {w:#04x}", i as u64 / bs);
    }
}

#[test]
fn nbdinfo_reports_size_block_sizes_and_flags_for_both_exports_and_tcp() {
    let s = scratch();
    let size = 3 * MIB + 4 * KIB;
    let image = s.path("disk.img");
    fs::write(&image, pseudo_random(size as usize, 2)).unwrap();
    s.home.protect("info", &image, 4 * KIB);
    let sock = s.path("i.sock");
    // A free TCP port on loopback for the second listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let filter = s.home.filter_on("info", &[unix_listen(&sock), format!("tcp:127.0.0.1:{port}")]);

    let nbdinfo = tool("nbdinfo");
    let uris = [nbd_uri("info", &sock), nbd_uri("", &sock), format!("nbd://127.0.0.1:{port}/info")];
    for uri in &uris {
        let out = Command::new(&nbdinfo).args(["--json", uri]).output().expect("run nbdinfo");
        assert_ok(&out, &format!("nbdinfo --json {uri}"));
        let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo JSON");
        let e = &v["exports"][0];
        assert_eq!(e["export-size"].as_u64(), Some(size), "{uri}: size\n{e:#}");
        assert_eq!(e["is_read_only"].as_bool(), Some(false), "{uri}: read-only\n{e:#}");
        for flag in ["can_flush", "can_fua", "can_trim", "can_zero"] {
            assert_eq!(e[flag].as_bool(), Some(true), "{uri}: {flag}\n{e:#}");
        }
        let min = e["block_size_minimum"].as_u64().unwrap_or_else(|| panic!("{uri}: no block size info\n{e:#}"));
        let pref = e["block_size_preferred"].as_u64().expect("preferred block size");
        let max = e["block_size_maximum"].as_u64().expect("maximum block size");
        assert!(min.is_power_of_two() && min <= 4096, "{uri}: minimum block size {min}");
        assert!(pref.is_power_of_two() && pref >= min && pref <= max, "{uri}: preferred block size {pref}");
        assert!(max >= 64 * KIB && max.is_multiple_of(min), "{uri}: maximum block size {max}");
        assert_eq!(v["protocol"].as_str(), Some("newstyle-fixed"), "{uri}: protocol");
    }

    // NBD_OPT_LIST names the disk's export.
    let out = Command::new(&nbdinfo).args(["--list", "--json", &nbd_uri("", &sock)]).output().unwrap();
    assert_ok(&out, "nbdinfo --list");
    let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --list JSON");
    let names: Vec<&str> =
        v["exports"].as_array().expect("exports").iter().filter_map(|e| e["export-name"].as_str()).collect();
    assert!(names.contains(&"info"), "NBD_OPT_LIST does not name the export: {names:?}");

    // An unknown export name is refused, and the server keeps serving.
    let out = Command::new(&nbdinfo).arg(nbd_uri("no-such-disk", &sock)).output().unwrap();
    assert!(!out.status.success(), "nbdinfo on an unknown export succeeded");
    let out = Command::new(&nbdinfo).args(["--size", &nbd_uri("info", &sock)]).output().unwrap();
    assert_ok(&out, "nbdinfo --size after a refused export");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), size.to_string());

    // nbdinfo only reads: nothing is dirty.
    assert!(s.home.dirty("info").dirty_blocks.is_empty(), "reads dirtied blocks");
    filter.stop();
}

#[test]
fn nbdcopy_in_and_out_is_byte_for_byte_and_dirties_every_block() {
    let s = scratch();
    let bs = 64 * KIB;
    let size = 24 * MIB + 12 * KIB; // last block is partial
    let image = s.path("disk.img");
    fs::write(&image, pseudo_random(size as usize, 3)).unwrap();
    s.home.protect("copy", &image, bs);

    // The source: random data with a 2 MiB hole in the middle, which nbdcopy
    // sends as zero requests rather than data.
    let source = s.path("source.bin");
    let mut data = pseudo_random(size as usize, 4);
    let hole = (8 * MIB) as usize..(10 * MIB) as usize;
    data[hole.clone()].fill(0);
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = fs::File::create(&source).unwrap();
        f.write_all(&data[..hole.start]).unwrap();
        f.seek(SeekFrom::Start(hole.end as u64)).unwrap();
        f.write_all(&data[hole.end..]).unwrap();
    }

    let sock = s.path("c.sock");
    let filter = s.home.filter("copy", &sock);
    let nbdcopy = tool("nbdcopy");
    let out = Command::new(&nbdcopy).arg(&source).arg(nbd_uri("copy", &sock)).output().unwrap();
    assert_ok(&out, "nbdcopy file -> filter");

    let back = s.path("back.bin");
    let out = Command::new(&nbdcopy).arg(nbd_uri("", &sock)).arg(&back).output().unwrap();
    assert_ok(&out, "nbdcopy filter -> file");
    let got = fs::read(&back).unwrap();
    assert_eq!(got.len(), data.len(), "nbdcopy out: wrong length");
    if let Some(i) = got.iter().zip(&data).position(|(a, b)| a != b) {
        panic!("nbdcopy out differs from what nbdcopy wrote in, first at byte {i}");
    }

    let all: BTreeSet<u64> = (0..size.div_ceil(bs)).collect();
    assert_eq!(s.home.dirty("copy").dirty_blocks, all, "every block was written: all must be dirty");
    filter.stop();

    let img = fs::read(&image).unwrap();
    assert!(img == data, "the image file differs from the source after a clean stop");
    let after = s.home.dirty("copy");
    assert_eq!(after.dirty_blocks, all);
    assert!(!after.suspect);
}
