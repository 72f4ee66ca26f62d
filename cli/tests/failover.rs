//! Failover's refusals and its job state, with the real `lifeboat` binary
//! and a real vault but no guest booting (the booting tests are in
//! `vm-tests/tests/guest_failover.rs`, full pass):
//!
//! * `vm define` refuses a disk that is not protected, has no vault, or
//!   replicates elsewhere than the VM's other disks, and changes nothing;
//! * the definition is sealed into the next point (not readable in the
//!   vault's files) and `vm show --vault --key` reads it back from there;
//! * at a recovery site, a VM whose points carry no definition, an unknown
//!   point and the wrong key are refused with what to do, leaving no job;
//! * an unplanned failover whose NIC's network has no mapping stops at the
//!   boot step, with its disk restored and the job saying so; `failover
//!   status` shows the failed step, and `cleanup` removes everything and is
//!   audited.

// Test code for 64-bit hosts: sizes fit usize, and the pattern byte wraps on purpose.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::Path;

use vm_tests::lifeboat::{Home, Scratch};
use vm_tests::replicate::{arg, assert_refused};

const MIB: u64 = 1024 * 1024;

/// A home with disk `d1` (4 MiB of a pattern) replicating to `vault` with
/// `k.key`, one point shipped before any VM is defined.
fn setup(prefix: &str) -> Scratch {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), prefix);
    let image = s.path("d1.img");
    let data: Vec<u8> = (0..4 * MIB).map(|i| (i / 4096) as u8).collect();
    fs::write(&image, &data).unwrap();
    s.home.key_new(&s.path("k.key"));
    s.home.vault_init(&s.path("vault"), &s.path("k.key"));
    s.home.protect_replicated("d1", &image, 64 * 1024, &s.path("vault"), &s.path("k.key"));
    s.home.ship("d1");
    s
}

fn define(home: &Home, vm: &str, disks: &[&str], nic: Option<&str>) -> std::process::Output {
    let mut args = vec!["vm", "define", vm];
    for d in disks {
        args.extend(["--disk", d]);
    }
    if let Some(n) = nic {
        args.extend(["--nic", n]);
    }
    args.extend(["--kernel", "/nonexistent/vmlinuz", "--health-serial", "ready"]);
    home.run(&args)
}

/// Every file under `dir`, read whole.
fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(all_bytes(&p));
        } else {
            out.extend(fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn vm_define_refuses_disks_it_cannot_fail_over_and_changes_nothing() {
    let s = setup("lb-vmdef-");
    let o = define(&s.home, "app", &["nope"], None);
    assert_refused(&o, "a VM of an unprotected disk", &["no protected disk named \"nope\""]);
    let image = s.path("d2.img");
    fs::write(&image, vec![0u8; MIB as usize]).unwrap();
    s.home.protect("d2", &image, 64 * 1024);
    let o = define(&s.home, "app", &["d1", "d2"], None);
    assert_refused(&o, "a VM with a disk that has no vault", &["disk \"d2\" has no vault", "lifeboat protect d2"]);
    s.home.key_new(&s.path("k2.key"));
    s.home.vault_init(&s.path("vault2"), &s.path("k2.key"));
    s.home.protect_replicated("d2", &image, 64 * 1024, &s.path("vault2"), &s.path("k2.key"));
    let o = define(&s.home, "app", &["d1", "d2"], None);
    assert_refused(&o, "a VM whose disks replicate to two vaults", &["must share a vault and key"]);
    assert!(!s.path("home").join("vms").join("app.toml").exists(), "a refused definition was written");
    let o = define(&s.home, "app", &["d1", "d1"], None);
    assert_refused(&o, "a disk listed twice", &["listed twice"]);
}

#[test]
fn the_definition_is_sealed_into_the_next_point_and_read_back_from_the_vault() {
    let s = setup("lb-vmseal-");
    let o = define(&s.home, "web", &["d1"], Some("prod=52:54:00:aa:bb:cc"));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let vault = s.path("vault");
    let key = s.path("k.key");
    // Point 1 was cut before the definition: the site finds no VM yet.
    let site = Home::new(env!("CARGO_BIN_EXE_lifeboat"), s.path("site"));
    let o = site.run(&["failover", "web", "--test", "--vault", arg(&vault), "--key", arg(&key)]);
    assert_refused(&o, "a VM not yet in the vault", &["carries a definition of VM \"web\"", "lifeboat vm define"]);
    assert!(!s.path("site/failovers/web/job.json").exists(), "a refused failover left a job");
    s.home.ship("d1");
    assert!(
        !all_bytes(&vault).windows(17).any(|w| w == b"52:54:00:aa:bb:cc"),
        "the VM definition is readable in the vault"
    );
    let shown = site.run_ok(&["vm", "show", "web", "--vault", arg(&vault), "--key", arg(&key)]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("name = \"web\"") && text.contains("52:54:00:aa:bb:cc"), "{text}");
    // Point 1 carries none; point 2 does.
    let o = site.run(&["vm", "show", "web", "--vault", arg(&vault), "--key", arg(&key), "--point", "1"]);
    assert_refused(&o, "a point cut before the VM was defined", &["point 1", "carries no VM definition"]);

    // The wrong key, an unknown point.
    s.home.key_new(&s.path("other.key"));
    let o = site.run(&["failover", "web", "--test", "--vault", arg(&vault), "--key", arg(&s.path("other.key"))]);
    assert_refused(&o, "the wrong key", &["fingerprint"]);
    let o = site.run(&["failover", "web", "--test", "--point", "9", "--vault", arg(&vault), "--key", arg(&key)]);
    assert_refused(&o, "an unknown point", &["has no point 9"]);
}

#[test]
fn an_unmapped_network_stops_at_boot_with_the_disk_restored_and_cleanup_removes_it() {
    let s = setup("lb-vmnet-");
    assert!(define(&s.home, "db", &["d1"], Some("prod")).status.success());
    s.home.ship("d1");
    let o = s.home.run(&["failover", "db", "--unplanned"]);
    assert_refused(&o, "an unmapped network", &["network \"prod\"", "no mapping", "--network prod="]);
    let job = s.path("home").join("failovers/db");
    let image = job.join("disks/d1.raw");
    let restored = fs::read(&image).expect("the restore step finished before boot");
    assert!(restored == fs::read(s.path("d1.img")).unwrap(), "the restored disk differs from the image at its cut");
    let status = s.home.run_ok(&["failover", "status", "db", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["state"], "failed", "{v}");
    let steps: Vec<(&str, &str)> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap(), s["state"].as_str().unwrap()))
        .collect();
    assert_eq!(steps, [("choose point", "done"), ("restore disk d1", "done"), ("boot", "failed")], "{v}");
    let o = s.home.run(&["failover", "commit", "db"]);
    assert_refused(&o, "committing a failover that never booted", &["not booted"]);
    s.home.run_ok(&["failover", "cleanup", "db"]);
    assert!(!job.exists(), "cleanup left {}", job.display());
    let o = s.home.run(&["failover", "cleanup", "db"]);
    assert_refused(&o, "a second cleanup", &["no failover"]);
    let audit = s.home.run_ok(&["audit", "show", "--json"]);
    let text = String::from_utf8_lossy(&audit.stdout);
    for kind in ["vm.define", "failover.start", "failover.failed", "failover.cleanup"] {
        assert!(text.contains(kind), "no {kind} record:\n{text}");
    }
}
