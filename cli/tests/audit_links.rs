//! Issue 12, hole 8, through the real binary: the points and the audit log
//! vouch for each other, so truncating either is seen from the other, at
//! the protected site and at a recovery site that has only the vault and the
//! key.
//!
//! * Intact: `audit verify` and `vault check --read-data --key` find
//!   nothing (a point removed by `prune`, on record, is checked in
//!   audit/tests/links.rs).
//! * The vault's newest audit segments deleted: `audit verify` at the
//!   protected site reports the records this home copied as lost (it used to
//!   say "not copied yet ... no problems found"), and at a recovery site the
//!   newest point names a record the vault's copy no longer holds.
//! * The vault's newest roots deleted: at a recovery site, `vault check
//!   --read-data --key` and `audit verify` name the points the log says were
//!   committed.
//! * The home's audit log deleted while its disks have committed points:
//!   `audit verify` fails (it used to say "no audit log yet").

use std::fs;
use std::path::{Path, PathBuf};

use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::{arg, root_name, Object};
use vm_tests::Rng;

struct Setup {
    s: Scratch,
    key: PathBuf,
    vault: PathBuf,
}

/// Disk `d1` protected into a vault, with three points shipped (no filter:
/// `ship --once` reads the image).
fn setup(prefix: &str) -> Setup {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), prefix);
    let key = s.path("main.key");
    let vault = s.path("vault");
    let image = s.path("disk.img");
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, Rng::new(8).bytes(1 << 20)).unwrap();
    s.home.protect_replicated("d1", &image, 64 * 1024, &vault, &key);
    for want in 1..=3 {
        assert_eq!(s.home.ship("d1").sequence, want);
    }
    Setup { s, key, vault }
}

/// The vault's audit segments, oldest first (names sort by first seq).
fn segments(vault: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![vault.join("audit")];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Runs `lifeboat ARGS` in `home_of`'s home; returns (success, stdout + stderr).
fn run(s: &Scratch, args: &[&str]) -> (bool, String) {
    let o = s.home.run(args);
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// A recovery site: an empty home of its own, with only the vault and the key.
fn recovery_site() -> Scratch {
    Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-links-site-")
}

#[test]
fn an_intact_vault_has_no_problems_at_home_or_at_the_recovery_site() {
    let t = setup("lb-links-ok-");
    let (ok, out) = run(&t.s, &["audit", "verify"]);
    assert!(ok && out.contains("they agree") && out.contains("no problems found"), "{out}");
    let site = recovery_site();
    let (ok, out) = run(&site, &["audit", "verify", "--vault", arg(&t.vault), "--key", arg(&t.key)]);
    assert!(ok && out.contains("3 point(s) checked"), "{out}");
    let (ok, out) = run(&site, &["vault", "check", arg(&t.vault), "--read-data", "--key", arg(&t.key)]);
    assert!(ok && out.contains("no problems found"), "{out}");
}

#[test]
fn deleted_audit_segments_are_found_at_home_and_at_the_recovery_site() {
    let t = setup("lb-links-seg-");
    let all = segments(&t.vault);
    assert!(all.len() >= 4, "{all:?}");
    // The newest three segments vanish (the vault's storage rolled back).
    for p in &all[all.len() - 3..] {
        fs::remove_file(p).unwrap();
    }
    let (ok, out) = run(&t.s, &["audit", "verify"]);
    assert!(!ok && out.contains("copy lost"), "at the protected site: {out}");
    let site = recovery_site();
    let (ok, out) = run(&site, &["audit", "verify", "--vault", arg(&t.vault), "--key", arg(&t.key)]);
    assert!(!ok && out.contains("lost records") && out.contains("point 3"), "at a recovery site: {out}");
    let (ok, out) = run(&site, &["vault", "check", arg(&t.vault), "--read-data", "--key", arg(&t.key)]);
    assert!(!ok && out.contains("lost records"), "vault check at a recovery site: {out}");
}

#[test]
fn deleted_roots_are_named_by_the_audit_log_at_the_recovery_site() {
    let t = setup("lb-links-roots-");
    let chain = t.s.home.chain("d1");
    for seq in [2, 3] {
        fs::remove_file(Object::Root.path(&t.vault, &root_name(&chain, seq))).unwrap();
    }
    let site = recovery_site();
    let (ok, out) = run(&site, &["vault", "check", arg(&t.vault), "--read-data", "--key", arg(&t.key)]);
    assert!(!ok && out.contains("lost point") && out.contains("point 3"), "vault check: {out}");
    let (ok, out) = run(&site, &["audit", "verify", "--vault", arg(&t.vault), "--key", arg(&t.key)]);
    assert!(!ok && out.contains("lost point") && out.contains("point 2"), "audit verify: {out}");
}

#[test]
fn a_deleted_home_log_is_a_failure_not_yet() {
    let t = setup("lb-links-home-");
    fs::remove_dir_all(t.s.home.dir.join("audit")).unwrap();
    let (ok, out) = run(&t.s, &["audit", "verify"]);
    assert!(!ok, "{out}");
    assert!(out.contains("committed point 3") && !out.contains("no problems found"), "{out}");
}

/// Issue 12, hole 10 (the audit part): the vault's copy of the audit log is
/// sealed, so a vault's bytes name neither the host, nor the image path, nor
/// the key file. (Disk names are still in the root names: FORMAT.md says
/// what the vault reveals.)
#[test]
fn the_vault_holds_no_host_name_image_path_or_key_path() {
    let t = setup("lb-links-grep-");
    let host = String::from_utf8(std::process::Command::new("hostname").output().unwrap().stdout).unwrap();
    // As a record in the clear would carry it (the bare name may be short).
    let host = format!("\"host\":\"{}\"", host.trim());
    let image = t.s.path("disk.img").display().to_string();
    let key = t.key.display().to_string();
    let mut found = Vec::new();
    let mut stack = vec![t.vault.clone()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let bytes = fs::read(&p).unwrap();
            for needle in [&host, &image, &key] {
                if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
                    found.push(format!("{needle:?} in {}", p.display()));
                }
            }
        }
    }
    assert!(found.is_empty(), "the vault reveals:\n{}", found.join("\n"));
    // The records are still all there for whoever holds the key.
    let (ok, out) = run(&t.s, &["audit", "show", "--json"]);
    assert!(ok && out.contains(&host) && out.contains(&image), "{out}");
}
