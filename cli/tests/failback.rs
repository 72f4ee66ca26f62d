//! `lifeboat failback` at the original site, with real processes and no
//! guest: bringing a disk to a point fetches exactly the blocks that
//! differ; SIGKILLed half-way, the disk is refused by `ship`, `filter` and
//! `snapshot` (it is half old, half new) until the same command, run again,
//! finishes it; afterwards the disk is byte for byte the point and its next
//! cycle has nothing to send.

// Test code for 64-bit hosts.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::assert_refused;

const MIB: u64 = 1 << 20;
const BS: u64 = 64 * 1024;

#[test]
fn failback_fetches_only_differing_blocks_and_a_killed_one_is_refused_until_rerun() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-fb-");
    let size = 192 * MIB;
    let image = s.path("d.img");
    fs::write(&image, vm_tests::pseudo_random(size as usize, 11)).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d", &image, BS, &s.path("vault"), &s.path("k.key"));
    s.home.run_ok(&["vm", "define", "v", "--disk", "d"]);
    s.home.ship("d");
    let point = fs::read(&image).unwrap();
    // The original disk moves on after the point (the VM off, so straight
    // into the image): 1600 blocks rewritten, one in three, and the
    // tail zeroed.
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    let noise = vm_tests::pseudo_random(BS as usize, 99);
    let mut changed = 0u64;
    for b in (0..size / BS - 64).step_by(3).take(1600) {
        f.write_all_at(&noise, b * BS).unwrap();
        changed += 1;
    }
    f.write_all_at(&vec![0u8; (16 * MIB) as usize], size - 16 * MIB).unwrap();
    changed += 16 * MIB / BS;
    drop(f);

    // Killed half-way.
    let mut child = s
        .home
        .command()
        .args(["failback", "v", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let marker = s.path("home/disks/d/failback.inprogress");
    let t = Instant::now();
    while !marker.exists() {
        assert!(t.elapsed() < Duration::from_secs(30), "failback never started converging");
        assert!(child.try_wait().unwrap().is_none(), "failback exited before it started converging");
        std::thread::sleep(Duration::from_millis(2));
    }
    // Kill once block 0 (rewritten above, the first converged) is the point's again.
    let img = fs::File::open(&image).unwrap();
    let mut b0 = vec![0u8; BS as usize];
    loop {
        img.read_exact_at(&mut b0, 0).unwrap();
        if b0[..] == point[..BS as usize] {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "failback exited before block 0 was converged");
        std::thread::sleep(Duration::from_millis(1));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "failback finished before its kill; the test proved little");
    assert!(marker.exists());
    for args in [
        &["ship", "d", "--once"][..],
        &["filter", "d", "--listen", "unix:/tmp/lb-fb-never.sock"],
        &["snapshot", "d", "--out", "/tmp/lb-fb-never.img"],
    ] {
        let o = s.home.run(args);
        assert_refused(
            &o,
            &format!("{args:?} on a half-failed-back disk"),
            &["half-way through a failback", "lifeboat failback"],
        );
    }

    // The same command finishes it.
    let o = s.home.run_ok(&["failback", "v", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let fetched = v["bytes_fetched"].as_u64().unwrap();
    let report = &v["disks"][0]["report"];
    let redone = report["fetched_blocks"].as_u64().unwrap() + report["zeroed_blocks"].as_u64().unwrap();
    assert!(redone < changed, "the rerun redid every block ({redone} of {changed}): the first run did nothing?");
    assert!(fetched <= changed * BS, "failback fetched {fetched} bytes for {changed} changed blocks");
    assert!(!marker.exists(), "the marker outlived the failback");
    assert!(fs::read(&image).unwrap() == point, "the disk is not the point after failback");
    // Protection resumes: the verify cycle finds nothing to send.
    let r = s.home.ship("d");
    assert!(r.full && r.new_blocks == 0, "{r:?}");
}

#[test]
fn an_uninterrupted_failback_fetches_exactly_the_differing_blocks() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-fb2-");
    let image = s.path("d.img");
    fs::write(&image, vm_tests::pseudo_random((16 * MIB) as usize, 5)).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d", &image, BS, &s.path("vault"), &s.path("k.key"));
    s.home.run_ok(&["vm", "define", "v", "--disk", "d"]);
    s.home.ship("d");
    let point = fs::read(&image).unwrap();
    let f = fs::OpenOptions::new().write(true).open(&image).unwrap();
    for b in [3u64, 40, 41, 200] {
        f.write_all_at(b"changed", b * BS + 10).unwrap();
    }
    drop(f);
    let o = s.home.run_ok(&["failback", "v", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["bytes_fetched"].as_u64(), Some(4 * BS), "{v}");
    assert!(fs::read(&image).unwrap() == point);
}
