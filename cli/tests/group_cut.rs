//! The disks of one VM are cut together (issue 4, item 1: "All disks of one
//! VM are cut together, so a VM's point is consistent across its disks").
//!
//! A VM of two disks is replicated by `lifeboat agent` every second while a
//! writer (libnbd, queue depth 1) writes record n to disk A, waits for the
//! acknowledgement, then writes record n to disk B, and so on. For a cut
//! consistent across the two disks, B's newest record is never newer than
//! A's, and A is at most one record ahead of B. Cutting the disks one after
//! the other, thousands of records apart, breaks that at once. Every round's
//! two points carry the same cut-group id in `lifeboat points --json`. The
//! same holds for two VMs of one disk each that share a consistency group.

// Test code for 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vm_tests::clients::python_nbd;
use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::arg;

const SIZE: u64 = 8 << 20;
const SLOT: u64 = 4096;

/// Writes record n (its number in every 8 bytes of a 4 KiB slot n % slots)
/// to A, then to B, until the stop file appears; prints the last n.
const WRITER: &str = r#"
import nbd, os, struct, sys
a, b, slots, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ha, hb = nbd.NBD(), nbd.NBD()
ha.connect_uri(a); hb.connect_uri(b)
n = 1
while not os.path.exists(stop):
    buf = struct.pack("<Q", n) * 512
    off = (n % slots) * 4096
    ha.pwrite(buf, off)
    hb.pwrite(buf, off)
    n += 1
print(n - 1, flush=True)
"#;

/// The newest record on a disk image.
fn newest(img: &[u8]) -> u64 {
    img.chunks(SLOT as usize).map(|c| u64::from_le_bytes(c[..8].try_into().unwrap())).max().unwrap()
}

#[test]
fn the_disks_of_a_vm_are_cut_together_while_it_writes_to_both() {
    cut_together(&[&["vm", "define", "two", "--disk", "ga", "--disk", "gb"]], "disks ga, gb are cut together");
}

/// The same for two VMs of one disk each that share a consistency group
/// (an application whose database and app server must agree).
#[test]
fn vms_sharing_a_consistency_group_are_cut_together() {
    cut_together(
        &[
            &["vm", "define", "db", "--disk", "ga", "--consistency-group", "shop"],
            &["vm", "define", "app", "--disk", "gb", "--consistency-group", "shop"],
        ],
        "shop: disks ga, gb are cut together",
    );
}

fn cut_together(defines: &[&[&str]], together: &str) {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-group-");
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    for d in ["ga", "gb"] {
        let image = s.path(&format!("{d}.img"));
        fs::File::create(&image).unwrap().set_len(SIZE).unwrap();
        let sock = s.path(&format!("{d}.sock"));
        s.home.run_ok(&[
            "protect",
            d,
            "--image",
            arg(&image),
            "--block-size",
            "64KiB",
            "--vault",
            arg(&s.path("vault")),
            "--key",
            arg(&s.path("k.key")),
            "--rpo",
            "1s",
            "--listen",
            &format!("unix:{}", sock.display()),
        ]);
    }
    for d in defines {
        s.home.run_ok(d);
    }
    let mut agent = s.home.agent(&[], &["ga", "gb"]);
    agent.wait_line(together, Duration::from_secs(30));
    agent.wait_line("gb: point 1 committed", Duration::from_secs(60));

    let script = s.path("writer.py");
    fs::write(&script, WRITER).unwrap();
    let stop = s.path("writer.stop");
    let uri = |d: &str| format!("nbd+unix:///{d}?socket={}", s.path(&format!("{d}.sock")).display());
    let writer = Command::new(python_nbd())
        .arg(&script)
        .args([uri("ga"), uri("gb"), (SIZE / SLOT).to_string()])
        .arg(&stop)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Let the agent cut several rounds while the writer runs.
    let t = Instant::now();
    let mut seen = 1;
    while seen < 6 {
        assert!(t.elapsed() < Duration::from_secs(60), "the agent cut only {seen} rounds in 60 s:\n{}", agent.log());
        let count = |d: &str| {
            let p: serde_json::Value = serde_json::from_slice(&s.home.run_ok(&["points", d, "--json"]).stdout).unwrap();
            p.as_array().unwrap().len()
        };
        seen = count("ga").min(count("gb"));
        std::thread::sleep(Duration::from_millis(200));
    }
    fs::write(&stop, b"").unwrap();
    let out = writer.wait_with_output().unwrap();
    assert!(out.status.success(), "the writer failed");
    let written: u64 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    agent.stop();

    let list = |d: &str| -> Vec<serde_json::Value> {
        serde_json::from_slice::<serde_json::Value>(&s.home.run_ok(&["points", d, "--json"]).stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    };
    // Pair the points by their group cut (stopping the agent may cancel
    // one member's commit of the last round, so sequences can differ by one).
    let (pa, pb) = (list("ga"), list("gb"));
    assert!(
        pa.iter().chain(&pb).all(|p| p["cut_group"].is_string()),
        "a point was not cut in a group:\n{pa:?}\n{pb:?}"
    );
    let mut during = 0;
    let mut pairs = 0;
    for a in &pa {
        let Some(b) = pb.iter().find(|b| b["cut_group"] == a["cut_group"]) else { continue };
        pairs += 1;
        let (ia, ib) = (a["id"].as_u64().unwrap(), b["id"].as_u64().unwrap());
        let ra = s.home.restore("ga", &ia.to_string(), &s.path("a.img"));
        let rb = s.home.restore("gb", &ib.to_string(), &s.path("b.img"));
        let (na, nb) = (newest(&ra), newest(&rb));
        assert!(
            nb <= na && na <= nb + 1,
            "group cut {}: disk A holds record {na}, disk B record {nb}: not consistent",
            a["cut_group"]
        );
        if na > 0 && na < written {
            during += 1;
        }
    }
    assert!(pairs + 1 >= pa.len().max(pb.len()), "only {pairs} of the rounds have a point on both disks");
    assert!(during >= 2, "only {during} points were cut while the writer ran; the test proved little");
    eprintln!("{pairs} group cuts, {during} during {written} record pairs");
}
