//! The NBD server against the real clients the filter must serve: QEMU's
//! `qemu-io` and libnbd's `nbdinfo` and `nbdcopy`, over unix sockets and TCP.
//!
//! The tools come from `scripts/setup.sh`; a missing tool fails the test (it
//! never skips), with a message saying to run that script.

// Test messages are small: their lengths and patterns fit the narrower types.
#![allow(clippy::cast_possible_truncation)]

mod common;

use std::io;
use std::process::{Command, Output};

use common::server_named;

const MIB: usize = 1 << 20;

/// Run a tool; a missing tool is a failure that says how to install it.
fn run(tool: &str, args: &[&str]) -> Output {
    match Command::new(tool).args(args).output() {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            panic!("{tool} is not installed: run scripts/setup.sh (it installs qemu-utils and libnbd-bin)")
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Run qemu-io with one `-c` per command; returns (success, output).
fn qemu_io(uri: &str, commands: &[&str]) -> (bool, String) {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.extend_from_slice(&["-c", c]);
    }
    args.push(uri);
    let out = run("qemu-io", &args);
    let text = text(&out);
    let ok = out.status.success() && !text.contains("Pattern verification failed") && !text.contains("error");
    (ok, text)
}

fn random_bytes(len: usize, mut seed: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed.to_le_bytes()[3]
        })
        .collect()
}

#[test]
fn qemu_io_writes_reads_zeroes_discards_and_flushes() {
    let (export, srv) = server_named(8 * MIB, "disk0");
    for uri in [srv.unix_uri(""), srv.unix_uri("disk0"), srv.tcp_uri("disk0")] {
        let (ok, out) = qemu_io(
            &uri,
            &[
                "write -P 0xab 0 1M",
                "read -P 0xab 0 1M",
                "write -P 0x5c 1000 3000",
                "read -P 0x5c 1000 3000",
                "read -P 0xab 0 1000",
                "write -f -P 0x11 8380416 8192",
                "read -P 0x11 8380416 8192",
                "write -z 65536 65536",
                "read -P 0 65536 65536",
                "discard 2M 1M",
                "flush",
                "aio_write -P 0x22 3M 64k",
                "aio_write -P 0x33 4M 64k",
                "aio_flush",
                "read -P 0x22 3M 64k",
                "read -P 0x33 4M 64k",
            ],
        );
        assert!(ok, "qemu-io against {uri} failed:\n{out}");
    }
    let data = export.data.read().unwrap();
    assert!(data[..1000].iter().all(|b| *b == 0xab));
    assert!(data[1000..4000].iter().all(|b| *b == 0x5c));
    assert!(data[65536..131072].iter().all(|b| *b == 0));
    assert!(data[8 * MIB - 8192..].iter().all(|b| *b == 0x11));
}

#[test]
fn qemu_io_pattern_check_can_fail() {
    // Guards the test above: a wrong pattern must be reported as a failure.
    let (_export, srv) = server_named(MIB, "disk0");
    let (ok, out) = qemu_io(&srv.unix_uri(""), &["write -P 0xab 0 64k", "read -P 0xcd 0 64k"]);
    assert!(!ok, "qemu-io should have failed the pattern check:\n{out}");
    assert!(out.contains("Pattern verification failed"), "{out}");
}

#[test]
fn qemu_io_unknown_export_is_refused() {
    let (_export, srv) = server_named(MIB, "disk0");
    let (ok, out) = qemu_io(&srv.unix_uri("nope"), &["read 0 512"]);
    assert!(!ok, "{out}");
}

#[test]
fn nbdinfo_reports_size_block_sizes_and_capabilities() {
    let (_export, srv) = server_named(24 * MIB, "disk0");
    let out = run("nbdinfo", &["--json", &srv.unix_uri("disk0")]);
    assert!(out.status.success(), "{}", text(&out));
    let json: String = String::from_utf8_lossy(&out.stdout).split_whitespace().collect();
    for expected in [
        "\"export-name\":\"disk0\"",
        "\"export-size\":25165824",
        "\"block_size_minimum\":1",
        "\"block_size_preferred\":4096",
        "\"block_size_maximum\":33554432",
        "\"is_read_only\":false",
        "\"can_flush\":true",
        "\"can_fua\":true",
        "\"can_trim\":true",
        "\"can_zero\":true",
        "\"can_multi_conn\":true",
        "\"can_fast_zero\":false",
        "\"can_cache\":false",
        "\"protocol\":\"newstyle-fixed\"",
    ] {
        assert!(json.contains(expected), "nbdinfo --json lacks {expected}: {json}");
    }
}

#[test]
fn nbdinfo_lists_the_export() {
    let (_export, srv) = server_named(MIB, "vm-disk-1");
    for uri in [format!("nbd+unix://?socket={}", srv.unix_path().display()), srv.tcp_uri("")] {
        let out = run("nbdinfo", &["--list", &uri]);
        let text = text(&out);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("export=\"vm-disk-1\""), "{text}");
        assert!(text.contains("export-size: 1048576"), "{text}");
    }
}

#[test]
fn nbdcopy_copies_in_and_out_exactly() {
    let size = 24 * MIB + 4096 * 3;
    let (export, srv) = server_named(size, "disk0");
    let source = random_bytes(size, 0x1234_5678_9abc_def1);
    let src_path = srv.path("in.raw");
    std::fs::write(&src_path, &source).unwrap();
    let out = run("nbdcopy", &[src_path.to_str().unwrap(), &srv.unix_uri("")]);
    assert!(out.status.success(), "nbdcopy in failed: {}", text(&out));
    assert!(*export.data.read().unwrap() == source, "the export differs from the file copied in");

    for (name, uri) in [("out-unix.raw", srv.unix_uri("disk0")), ("out-tcp.raw", srv.tcp_uri(""))] {
        let dst_path = srv.path(name);
        let out = run("nbdcopy", &[&uri, dst_path.to_str().unwrap()]);
        assert!(out.status.success(), "nbdcopy out of {uri} failed: {}", text(&out));
        let copied = std::fs::read(&dst_path).unwrap();
        assert_eq!(copied.len(), size);
        assert!(copied == source, "the file copied out of {uri} differs from the one copied in");
    }
    // and a copy with one connection and small requests, many in flight
    let out = run("nbdcopy", &["-C", "1", "--request-size=65536", "--requests=64", &srv.tcp_uri(""), "null:"]);
    assert!(out.status.success(), "{}", text(&out));
}
