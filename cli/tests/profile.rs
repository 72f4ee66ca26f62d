//! The churn profile (issue 16, part 1) recorded by the real `lifeboat
//! filter` process under a real NBD client (`qemu-io`): counts exact on a
//! known write pattern, records that survive a SIGKILL and a restart, and
//! recording turned off.

use std::fs;
use std::time::{Duration, Instant};

use serde_json::Value;
use vm_tests::clients::{nbd_uri, qemu_io};
use vm_tests::lifeboat::{unix_listen, Filter, Home, Scratch};

const KIB: u64 = 1024;
const BS: u64 = 64 * KIB;
/// [`BS`] as a length.
const BSZ: usize = 64 << 10;

fn scratch() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-profile-")
}

/// `lifeboat filter NAME` on `sock`, its profile intervals `interval` s long.
fn filter(home: &Home, name: &str, sock: &std::path::Path, interval: u32) -> Filter {
    let mut f = home.spawn_with(&["filter", name, "--listen", &unix_listen(sock)], |c| {
        c.env("LIFEBOAT_PROFILE_INTERVAL", interval.to_string());
    });
    f.wait_line(&format!("filter {name} listening on"), Duration::from_secs(30));
    f
}

/// `lifeboat profile export NAME`, parsed.
fn export(home: &Home, name: &str) -> Vec<Value> {
    let out = home.run_ok(&["profile", "export", name]);
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn sum(records: &[Value], field: &str) -> u64 {
    records.iter().map(|r| r[field].as_u64().unwrap()).sum()
}

#[test]
fn a_real_client_s_writes_are_counted_exactly() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0x5a; 16 * BSZ]).unwrap();
    s.home.protect("vm1", &image, BS);
    let sock = s.path("f.sock");
    // One interval for the whole test: the stop closes it.
    let f = filter(&s.home, "vm1", &sock, 3600);
    qemu_io(
        &nbd_uri("vm1", &sock),
        &[
            format!("write -P 0 0 {BS}"),           // block 0: zero data, written as data
            format!("write -P 65 {BS} {}", 2 * BS), // blocks 1 and 2: the same text-like contents
            format!("write -P 66 {} {BS}", 3 * BS), // block 3
            format!("write -P 66 {} 4096", 3 * BS), // block 3 again, contents unchanged
            format!("write -z {} {BS}", 10 * BS),   // block 10: write-zeroes
            format!("discard {} {BS}", 11 * BS),    // block 11: trim
        ],
    );
    f.stop();
    let records = export(&s.home, "vm1");
    assert_eq!(records.len(), 1, "one interval, closed by the stop: {records:?}");
    let r = &records[0];
    assert_eq!(r["writes"], 6);
    assert_eq!(r["bytes_written"].as_u64().unwrap(), 4 * BS + 4096);
    assert_eq!(r["bytes_zeroed"].as_u64().unwrap(), 2 * BS);
    assert_eq!(r["distinct"], serde_json::json!([6, 6, 6]), "blocks 0, 1, 2, 3, 10 and 11");
    // Every data write's blocks read back: 0 zero; 1 new; 2 a repeat of 1;
    // 3 new; 3 again a repeat. Zeroes and trims are not sampled.
    assert_eq!(
        (r["sampled"].as_u64(), r["sampled_zero"].as_u64(), r["sampled_repeat"].as_u64()),
        (Some(5), Some(1), Some(2))
    );
    assert_eq!(r["sampled_bytes"].as_u64().unwrap(), 2 * BS);
    let stored = r["sampled_stored"].as_u64().unwrap();
    assert!(stored > 0 && stored < BS / 8, "a repeated byte compresses to almost nothing: {stored}");

    let show = s.home.run_ok(&["profile", "show", "vm1", "--json"]);
    let v: Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!((v["disk"].as_str(), v["intervals"].as_u64(), v["writes"].as_u64()), (Some("vm1"), Some(1), Some(6)));
    assert!(
        (v["zero_share"].as_f64().unwrap() - 0.2).abs() < 1e-9
            && (v["repeat_share"].as_f64().unwrap() - 0.4).abs() < 1e-9
    );
    let text = String::from_utf8(s.home.run_ok(&["profile", "show", "vm1"]).stdout).unwrap();
    assert!(text.contains("distinct blocks changed per window") && text.contains("5 read back: 20.0% zero"), "{text}");
}

#[test]
fn the_profile_survives_a_sigkill_and_goes_on_after_a_restart() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0u8; 16 * BSZ]).unwrap();
    s.home.protect("vm1", &image, BS);
    let sock = s.path("f.sock");
    let mut f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 7 0 {BS}")]);
    // Wait for the interval holding the write to be written (1 s intervals).
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let records = export(&s.home, "vm1");
        if sum(&records, "writes") == 1 {
            break records;
        }
        assert!(Instant::now() < deadline, "no interval with the write within 30 s: {records:?}\n{}", f.log());
        std::thread::sleep(Duration::from_millis(100));
    };
    f.signal(libc::SIGKILL);
    f.wait(Duration::from_secs(30));
    let killed = export(&s.home, "vm1");
    assert_eq!(&killed[..before.len()], &before[..], "records written before the SIGKILL are intact");
    assert_eq!(sum(&killed, "writes"), 1);

    let restart = system::clock::now_ns() / 1_000_000_000;
    let f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 8 {BS} {BS}"), format!("write -P 9 {BS} {BS}")]);
    f.stop();
    let after = export(&s.home, "vm1");
    assert_eq!(&after[..killed.len()], &killed[..], "the restart kept every record");
    let seqs: Vec<u64> = after.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequence numbers go on: {seqs:?}");
    assert_eq!(sum(&after, "writes"), 3);
    let new = &after[killed.len()..];
    assert!(!new.is_empty() && new.iter().all(|r| r["since"].as_u64().unwrap() >= restart), "{new:?}");
    assert_eq!(sum(new, "bytes_written"), 2 * BS);
}

#[test]
fn recording_turned_off_writes_nothing_and_show_says_why() {
    let s = scratch();
    let image = s.path("disk.img");
    fs::write(&image, vec![0u8; 4 * BSZ]).unwrap();
    let img = image.to_str().unwrap();
    s.home.run_ok(&["protect", "vm1", "--image", img, "--profile", "off"]);
    let conf = fs::read_to_string(s.home.dir.join("disks/vm1/disk.toml")).unwrap();
    assert!(conf.contains("profile = false"), "{conf}");
    let sock = s.path("f.sock");
    let f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 7 0 {BS}")]);
    f.stop();
    assert!(!s.home.dir.join("disks/vm1/churn.profile").exists());
    let out = s.home.run(&["profile", "show", "vm1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("recording is off") && err.contains("--profile on"), "{err}");
    // Turned on again for the disk already protected: only that changes.
    let out = s.home.run_ok(&["protect", "vm1", "--image", img, "--profile", "on"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("churn profile on"));
    let f = filter(&s.home, "vm1", &sock, 1);
    qemu_io(&nbd_uri("vm1", &sock), &[format!("write -P 7 0 {BS}")]);
    f.stop();
    assert_eq!(sum(&export(&s.home, "vm1"), "writes"), 1);
    // A bad value is a usage error that says what to write.
    let out = s.home.run(&["protect", "vm1", "--image", img, "--profile", "maybe"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("say on or off"));
}
