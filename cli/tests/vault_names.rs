//! Issue 12, holes 2 and 10, through the real binary: the vault keeps each
//! disk identity's points apart under a keyed id, and names nothing.
//!
//! * Two hosts (two homes) protect different disks under one name into one
//!   vault: each host's points, restores and cycles see only its own disk,
//!   and a recovery site holding only the key refuses "latest" of that name
//!   until `--disk-id` says which, then restores exactly that disk.
//! * After replication, restore and an audit copy, no file of the vault
//!   contains the disk's name, the host's name or the image's path.

use std::fs;
use std::path::Path;

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::arg;
use vm_tests::Rng;

const BS: u64 = 64 * 1024;

fn points_json(home: &vm_tests::lifeboat::Home, args: &[&str]) -> Vec<serde_json::Value> {
    let mut all = vec!["points"];
    all.extend(args);
    all.push("--json");
    let v: serde_json::Value = serde_json::from_slice(&home.run_ok(&all).stdout).unwrap();
    v.as_array().unwrap().clone()
}

#[test]
fn two_homes_one_name_one_vault_each_host_and_the_recovery_site_get_the_disk_they_mean() {
    let a = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-twohomes-a-");
    let b = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-twohomes-b-");
    let site = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-twohomes-site-");
    let (key, vault) = (a.path("main.key"), a.path("vault"));
    a.home.key_new(&key);
    a.home.vault_init(&vault, &key);
    let (img_a, img_b) = (a.path("a.img"), b.path("b.img"));
    fs::write(&img_a, Rng::new(1).bytes(1 << 20)).unwrap();
    fs::write(&img_b, Rng::new(2).bytes(1 << 20)).unwrap();
    a.home.protect_replicated("d1", &img_a, BS, &vault, &key);
    b.home.protect_replicated("d1", &img_b, BS, &vault, &key);
    // Each home protects a VM "web" of that disk, as two hosts would.
    a.home.run_ok(&["vm", "define", "web", "--disk", "d1"]);
    b.home.run_ok(&["vm", "define", "web", "--disk", "d1"]);
    let ship = |home: &vm_tests::lifeboat::Home, host: &str| -> serde_json::Value {
        serde_json::from_slice(&on(host, home, &["ship", "d1", "--once", "--json"])).unwrap()
    };
    assert_eq!(ship(&a.home, HOST_A)["sequence"], 1);
    let rb = ship(&b.home, HOST_B);
    assert!(rb["sequence"] == 1 && rb["full"] == true, "B's disk starts a chain of its own: {rb}");

    // Each host lists and restores its own disk, never the other's.
    let (pa, pb) = (points_json(&a.home, &["d1"]), points_json(&b.home, &["d1"]));
    assert!(pa.len() == 1 && pb.len() == 1, "{pa:?} {pb:?}");
    let (id_a, id_b) = (pa[0]["disk_id"].as_str().unwrap(), pb[0]["disk_id"].as_str().unwrap());
    assert_ne!(id_a, id_b);
    assert!(pa[0]["host"] == HOST_A && pb[0]["host"] == HOST_B, "{pa:?} {pb:?}");
    assert_eq!(pa[0]["disk"], "d1");
    assert_ne!(pa[0]["root_object"], pb[0]["root_object"]);
    let chain = pa[0]["root_object"].as_str().unwrap().split('/').nth(1).unwrap().to_string();
    assert!(
        chain.len() == 32 && chain.bytes().all(|b| b.is_ascii_hexdigit()),
        "the vault names the chain by something else than a keyed id: {pa:?}"
    );
    assert_eq!(a.home.restore("d1", "latest", &a.path("a-latest.img")), fs::read(&img_a).unwrap());
    assert_eq!(b.home.restore("d1", "latest", &b.path("b-latest.img")), fs::read(&img_b).unwrap());
    // A's next cycle builds on its own chain: an incremental, not a verify.
    let ra = ship(&a.home, HOST_A);
    assert!(ra["sequence"] == 2 && ra["full"] == false, "A's chain was disturbed by B's disk: {ra}");

    // At a recovery site, with only the vault and the key: "latest" of d1
    // is ambiguous, so nothing is restored, and the error names both.
    let out = site.path("restored.img");
    let at_site = |extra: &[&str]| {
        let mut args = vec!["restore", "d1", "--out", arg(&out), "--vault", arg(&vault), "--key", arg(&key)];
        args.extend(extra);
        site.home.run(&args)
    };
    let o = at_site(&[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !out.exists(), "the recovery site restored one of two disks named d1: {err}");
    assert!(!err.contains("  "), "the message has a hole in it: {err}");
    for want in ["2 disks named \"d1\"", id_a, id_b, "--disk-id", HOST_A, HOST_B] {
        assert!(err.contains(want), "the refusal does not name {want:?}: {err}");
    }
    // `points` there lists both, each with its identity and host.
    let listed = points_json(&site.home, &["d1", "--vault", arg(&vault), "--key", arg(&key)]);
    let mut ids: Vec<&str> = listed.iter().map(|p| p["disk_id"].as_str().unwrap()).collect();
    ids.dedup();
    assert_eq!(ids.len(), 2, "{listed:?}");
    // --disk-id picks one: exactly that disk.
    let o = at_site(&["--disk-id", id_b]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&out).unwrap() == fs::read(&img_b).unwrap(), "--disk-id restored another disk");
    let o = at_site(&["--disk-id", id_a, "--point", "2", "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&out).unwrap() == fs::read(&img_a).unwrap(), "--disk-id restored another disk");
    // An identity of no disk of that name is refused, naming what there is.
    let o = at_site(&["--disk-id", "00000000000000000000000000000000", "--force"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains(id_a) && err.contains(id_b), "{err}");
    // --from-host picks by host.
    let o = at_site(&["--from-host", HOST_B, "--point", "1", "--force"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fs::read(&out).unwrap() == fs::read(&img_b).unwrap(), "--from-host restored another disk");
    // Without a name, the vault's disks.
    let disks = points_json(&site.home, &["--vault", arg(&vault), "--key", arg(&key)]);
    assert_eq!(disks.len(), 2, "{disks:?}");
    assert!(disks.iter().all(|d| d["disk"] == "d1"), "{disks:?}");
    // A failover of "web" at the recovery site does not guess either: it is
    // refused before anything is restored or booted, naming both hosts.
    let o = site.home.run(&["failover", "web", "--test", "--vault", arg(&vault), "--key", arg(&key)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("2 VMs named \"web\""), "{err}");
    assert!(err.contains(HOST_A) && err.contains(HOST_B) && err.contains("--from-host"), "{err}");
    assert!(!site.path("home/failovers/web/disks/d1.raw").exists(), "a refused failover restored a disk");
}

/// The two hosts' names (each in a UTS namespace of its own).
const HOST_A: &str = "lifeboat-host-a";
const HOST_B: &str = "lifeboat-host-b";

/// Every regular file under `dir`, with its bytes.
fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files(&p));
        } else {
            out.push((p.display().to_string(), fs::read(&p).unwrap()));
        }
    }
    out
}

/// A host name no random byte string will hold by chance (this machine's
/// may be two letters): the commands that write the vault run in a UTS
/// namespace of their own under it.
const HOST: &str = "payroll-hypervisor-07";

/// `lifeboat --home DIR ARGS...` on a host named [`HOST`]; must succeed.
fn on_host(home: &vm_tests::lifeboat::Home, args: &[&str]) -> Vec<u8> {
    on(HOST, home, args)
}

/// `lifeboat --home DIR ARGS...` on a host named `host` (a UTS namespace of
/// its own); must succeed.
fn on(host: &str, home: &vm_tests::lifeboat::Home, args: &[&str]) -> Vec<u8> {
    let lifeboat = home.command();
    let o = std::process::Command::new("unshare")
        .args(["--uts", "sh", "-c", &format!("hostname {host} && exec \"$0\" \"$@\"")])
        .arg(lifeboat.get_program())
        .args(lifeboat.get_args())
        .args(args)
        .output()
        .expect("unshare (util-linux)");
    assert!(o.status.success(), "lifeboat {args:?} on host {host}: {}", String::from_utf8_lossy(&o.stderr));
    o.stdout
}

#[test]
fn a_vault_holds_no_disk_name_host_name_or_image_path() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-vaultnames-");
    let (key, vault) = (s.path("main.key"), s.path("vault"));
    let image = s.path("payroll-database-volume.img");
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, Rng::new(3).bytes(1 << 20)).unwrap();
    let name = "payroll-db-root";
    s.home.protect_replicated(name, &image, BS, &vault, &key);
    s.home.run_ok(&["vm", "define", "payroll-vm", "--disk", name]);
    for _ in 0..2 {
        on_host(&s.home, &["ship", name, "--once"]);
    }
    let restored = s.path("r.img");
    on_host(&s.home, &["restore", name, "--out", arg(&restored)]);
    assert!(fs::read(&restored).unwrap() == fs::read(&image).unwrap());
    on_host(&s.home, &["audit", "verify", "--vault", arg(&vault), "--key", arg(&key)]);
    // The host is recorded (sealed), so there was something to find.
    let listed = points_json(&s.home, &[name]);
    assert!(listed.iter().all(|p| p["host"] == HOST), "{listed:?}");
    let vault_files = files(&vault);
    assert!(vault_files.iter().any(|(p, _)| p.contains("/audit/")), "no audit copy to look in: {vault_files:?}");
    for secret in [name, "payroll-vm", "payroll-database-volume", HOST] {
        for (path, bytes) in &vault_files {
            assert!(!path.contains(secret), "the vault names a file after {secret:?}: {path}");
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                "{path} holds {secret:?} in the clear"
            );
        }
    }
}
