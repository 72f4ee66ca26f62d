//! Issue 12, hole 1, through the real binary: a cycle builds only on the
//! point its dirty map is relative to (DESIGN.md invariant 8).
//!
//! * The vault's two newest roots are deleted (its storage rolled back):
//!   `points` and `restore` warn at once, the next `ship --once` verifies the
//!   whole disk and says "VAULT ROLLED BACK", and its point restores to the
//!   disk byte for byte; the sequence numbers it lost are not reused.
//! * A careless admin re-points the disk to vault B and back to A with
//!   `protect --vault`: A's next point is a full verify and holds what went to
//!   B meanwhile.
//!
//! Writes go through a running `lifeboat filter` (libnbd), as a VM's would;
//! each `ship --once` cuts through the filter's control socket.

use std::fs;
use std::path::PathBuf;

use vm_tests::clients::nbd_uri;
use vm_tests::lifeboat::{Filter, Scratch};
use vm_tests::replicate::{arg, nbd_write, root_name, Object};
use vm_tests::Rng;

const KIB: u64 = 1024;
const BS: u64 = 64 * KIB;

struct Setup {
    s: Scratch,
    key: PathBuf,
    vault: PathBuf,
    image: PathBuf,
    sock: PathBuf,
    filter: Option<Filter>,
}

/// Disk `d1` (4 MiB of random data), protected into `vault` and served by
/// a filter; the first point is shipped.
fn setup() -> Setup {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-rollback-");
    let key = s.path("main.key");
    let vault = s.path("vault");
    let image = s.path("disk.img");
    let sock = s.path("d1.sock");
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, Rng::new(12).bytes(4 << 20)).unwrap();
    s.home.protect_replicated("d1", &image, BS, &vault, &key);
    let filter = Some(s.home.filter("d1", &sock));
    let r = s.home.ship("d1");
    assert_eq!((r.sequence, r.full), (1, true), "{r:?}");
    Setup { s, key, vault, image, sock, filter }
}

impl Setup {
    /// Writes 4 KiB of `fill` into block `block` through the filter.
    fn write(&self, block: u64, fill: u8) {
        nbd_write(self.s.dir(), &nbd_uri("d1", &self.sock), &[(block * BS + 512, &[fill; 4096])]);
    }

    /// `ship d1 --once --json`: the parsed stdout and the stderr.
    fn ship(&self) -> (serde_json::Value, String) {
        let o = self.s.home.run_ok(&["ship", "d1", "--once", "--json"]);
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("ship --json prints JSON");
        (v, String::from_utf8_lossy(&o.stderr).into_owned())
    }

    /// Stops the filter (the image is then final) and restores the latest
    /// point, which must be the image byte for byte.
    fn assert_latest_is_the_disk(&mut self, what: &str) {
        if let Some(f) = self.filter.take() {
            f.stop();
        }
        let out = self.s.path("restored.img");
        let restored = self.s.home.restore("d1", "latest", &out);
        let image = fs::read(&self.image).unwrap();
        if let Some(at) = vm_tests::replicate::first_difference(&restored, &image, BS) {
            panic!("{what}: the latest point differs from the disk from block {at} on");
        }
    }
}

#[test]
fn deleted_newest_roots_are_noticed_and_the_next_point_is_the_disk() {
    let mut t = setup();
    t.write(3, 0xa1);
    assert_eq!(t.ship().0["sequence"], 2);
    t.write(9, 0xb2);
    assert_eq!(t.ship().0["sequence"], 3);
    // The vault's storage is rolled back: its two newest roots vanish.
    let chain = t.s.home.chain("d1");
    for seq in [2, 3] {
        fs::remove_file(Object::Root.path(&t.vault, &root_name(&chain, seq))).unwrap();
    }
    // At the protected site, listing and restoring say so at once.
    let o = t.s.home.run_ok(&["points", "d1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("VAULT ROLLED BACK") && err.contains("point 3"), "points: {err}");
    let out = t.s.path("early.img");
    let o = t.s.home.run_ok(&["restore", "d1", "--out", arg(&out)]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("VAULT ROLLED BACK"), "restore: {err}");

    t.write(20, 0xc3);
    let (r, err) = t.ship();
    assert_eq!(r["full"], true, "after a rollback the cycle must verify the whole disk: {r}");
    assert_eq!(r["sequence"], 4, "points 2 and 3 were committed once: their numbers are not reused: {r}");
    let warnings = r["warnings"].to_string();
    assert!(warnings.contains("VAULT ROLLED BACK") && warnings.contains("point 3"), "{r}");
    assert!(err.contains("VAULT ROLLED BACK"), "ship's stderr: {err}");
    // The point restores to the disk: without the fix, blocks 3 and 9
    // (carried by the lost points) are missing from it.
    t.assert_latest_is_the_disk("after the rollback");
    // The audit trail names the break.
    let audit = t.s.home.run_ok(&["audit", "show", "--key", arg(&t.key), "--json"]);
    let audit = String::from_utf8_lossy(&audit.stdout);
    assert!(audit.contains("chain_break") && audit.contains("VAULT ROLLED BACK"), "{audit}");
}

#[test]
fn a_disk_re_pointed_to_another_vault_and_back_verifies_in_full() {
    let mut t = setup();
    let other = t.s.path("vault-b");
    t.s.home.vault_init(&other, &t.key);
    t.write(3, 0xa1);
    let repoint = |vault: &PathBuf| {
        t.s.home.run_ok(&["protect", "d1", "--image", arg(&t.image), "--vault", arg(vault), "--key", arg(&t.key)]);
    };
    repoint(&other);
    let (r, _) = t.ship();
    assert_eq!((r["sequence"].as_u64(), r["full"].as_bool()), (Some(1), Some(true)), "{r}");
    t.write(9, 0xb2);
    repoint(&t.vault.clone());
    let (r, err) = t.ship();
    assert_eq!(r["full"], true, "{r}");
    assert!(r["warnings"].to_string().contains("another vault"), "{r}");
    assert!(err.contains("another vault"), "{err}");
    t.assert_latest_is_the_disk("vault A after B");
}
