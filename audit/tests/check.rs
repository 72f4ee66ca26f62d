//! `audit::check`: a home's logs and their vault copies checked at once,
//! with what the home knows (its vaults, its disks' committed points)
//! injected through `HomeView`.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use audit::{
    check, AuditLog, CallerError, CheckFailure, CheckPlan, Event, HomeLog, HomeView, KeyToCheck, ProblemKind,
    VaultCheck,
};
use disk_format::{KeyFingerprint, Keys, MasterKey};
use serde_json::json;
use vault::{Kind, LocalBackend, Location, Vault};

fn keys(seed: u8) -> Keys {
    MasterKey::from_bytes([seed; 32]).keys()
}

/// A home as the check sees it: vaults opened from local directories, and
/// the disks that committed points, per key.
#[derive(Default)]
struct FakeHome {
    committed: Vec<(KeyFingerprint, String, u64)>,
    opened: RefCell<Vec<PathBuf>>,
}

#[derive(Debug, thiserror::Error)]
#[error("opening vault {0}")]
struct Opening(String, #[source] vault::VaultError);

impl HomeView for FakeHome {
    fn open_vault(&self, at: &Location) -> Result<Vault, CallerError> {
        let dir = at.path().expect("this home's vaults are directories");
        self.opened.borrow_mut().push(dir.to_owned());
        let backend = LocalBackend::open(dir).map_err(|e| Opening(dir.display().to_string(), e))?;
        Ok(Vault::open(Box::new(backend))?)
    }

    fn committed_disks(&self, fp: KeyFingerprint) -> Vec<(String, u64)> {
        self.committed.iter().filter(|c| c.0 == fp).map(|c| (c.1.clone(), c.2)).collect()
    }
}

struct Site {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    vault: PathBuf,
}

/// A home audit dir and a vault of key 1 holding a copy of its `n` records.
fn site(n: u64) -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let vault = tmp.path().join("vault");
    let k = keys(1);
    let v = Vault::init(Box::new(LocalBackend::create(&vault).unwrap()), &k).unwrap();
    for i in 0..n {
        audit::record(&dir, &k, Some(&v), &Event::new("cycle.committed", Some("web1"), json!({ "i": i }))).unwrap();
    }
    Site { _tmp: tmp, dir, vault }
}

fn key_to_check(seed: u8, vaults: &[&Path]) -> KeyToCheck {
    KeyToCheck {
        keys: keys(seed),
        key_file: PathBuf::from(format!("/keys/{seed}.key")),
        vaults: vaults.iter().map(|v| Location::from(*v)).collect(),
    }
}

#[test]
fn an_intact_home_and_copy_check_out_and_uncopied_records_are_counted() {
    let s = site(3);
    let k = [key_to_check(1, &[&s.vault])];
    let plan = CheckPlan { dir: &s.dir, keys: &k, key_named: false, vault_named: false };
    let r = check(&plan, &FakeHome::default());
    assert!(r.is_ok(), "{:?} {:?}", r.problems(), r.failures());
    let kc = &r.keys[0];
    assert_eq!(kc.log_path, audit::log_path(&s.dir, keys(1).fingerprint()));
    assert!(matches!(&kc.home, HomeLog::Checked { report, file_missing: false } if report.last_seq == 3));
    let VaultCheck::Checked { links, copies } = &kc.vaults[0].1 else { panic!("{:?}", kc.vaults) };
    assert!(links.as_ref().unwrap().problems.is_empty());
    assert_eq!(copies.len(), 1);
    let cmp = copies[0].home.as_ref().expect("the vault's copy is of the home's log");
    assert_eq!((cmp.not_copied, cmp.problems.len()), (0, 0));

    // A record the vault has not got yet is not a problem, only counted.
    AuditLog::open(&s.dir, &keys(1)).unwrap().append(&Event::new("key.use", None, json!({}))).unwrap();
    let r = check(&plan, &FakeHome::default());
    assert!(r.is_ok());
    let VaultCheck::Checked { copies, .. } = &r.keys[0].vaults[0].1 else { panic!() };
    assert_eq!(copies[0].home.as_ref().unwrap().not_copied, 1);
}

#[test]
fn a_deleted_log_is_missing_only_when_disks_committed_with_the_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = [key_to_check(1, &[])];
    let plan = CheckPlan { dir: &dir, keys: &k, key_named: false, vault_named: false };
    // No log and no disk that committed points: nothing to check yet.
    let r = check(&plan, &FakeHome::default());
    assert!(matches!(r.keys[0].home, HomeLog::Absent) && r.is_ok());
    // A disk of another key committed points: still nothing.
    let other = FakeHome { committed: vec![(keys(2).fingerprint(), "db".into(), 9)], ..FakeHome::default() };
    assert!(check(&plan, &other).is_ok());
    // A disk of this key committed point 4: the log was deleted.
    let home = FakeHome { committed: vec![(keys(1).fingerprint(), "web1".into(), 4)], ..FakeHome::default() };
    let r = check(&plan, &home);
    let HomeLog::Deleted(p) = &r.keys[0].home else { panic!("{:?}", r.keys[0].home) };
    assert_eq!(p.kind, ProblemKind::LogMissing { disk: "web1".into(), point: 4 });
    assert_eq!(p.place, audit::log_path(&dir, keys(1).fingerprint()).display().to_string());
    assert_eq!(r.problems().len(), 1);
    assert!(r.failures().is_empty());
}

#[test]
fn copied_records_deleted_from_the_vault_are_a_lost_copy() {
    let s = site(2);
    let k1 = keys(1);
    let v = Vault::open(Box::new(LocalBackend::open(&s.vault).unwrap())).unwrap();
    for _ in 0..2 {
        audit::record(&s.dir, &k1, Some(&v), &Event::new("prune", Some("web1"), json!({}))).unwrap();
    }
    // Records 3 and 4 went to their own segments; delete them.
    let mut segments = v.backend().list(Kind::Audit, "").unwrap();
    segments.sort();
    assert_eq!(segments.len(), 4, "{segments:?}");
    for name in &segments[2..] {
        v.backend().delete(Kind::Audit, name).unwrap();
    }
    let k = [key_to_check(1, &[&s.vault])];
    let r = check(&CheckPlan { dir: &s.dir, keys: &k, key_named: false, vault_named: false }, &FakeHome::default());
    let kinds: Vec<_> = r.problems().into_iter().map(|p| p.kind.clone()).collect();
    assert!(kinds.contains(&ProblemKind::CopyLost { copied: 4, vault_last: 2 }), "{kinds:?}");
    let VaultCheck::Checked { copies, .. } = &r.keys[0].vaults[0].1 else { panic!() };
    assert_eq!(copies[0].home.as_ref().unwrap().not_copied, 2);
    assert!(!r.is_ok());
}

#[test]
fn checks_that_cannot_be_made_are_failures_in_order_with_their_causes() {
    let s = site(1);
    let tmp = tempfile::tempdir().unwrap();
    let other_vault = tmp.path().join("other");
    drop(Vault::init(Box::new(LocalBackend::create(&other_vault).unwrap()), &keys(2)).unwrap());
    let nowhere = tmp.path().join("nowhere");

    // A vault of another key is passed over, unless it was named for one key.
    let k = [key_to_check(1, &[&nowhere, &other_vault, &s.vault])];
    let plan = CheckPlan { dir: &s.dir, keys: &k, key_named: false, vault_named: false };
    let home = FakeHome::default();
    let r = check(&plan, &home);
    assert_eq!(*home.opened.borrow(), vec![nowhere.clone(), other_vault.clone(), s.vault.clone()]);
    assert!(matches!(r.keys[0].vaults[1].1, VaultCheck::OtherKey(fp) if fp == keys(2).fingerprint()));
    assert!(matches!(r.keys[0].vaults[2].1, VaultCheck::Checked { .. }));
    let f = r.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    let CheckFailure::VaultUnopened { vault, .. } = f[0] else { panic!("{f:?}") };
    assert_eq!(vault, &nowhere);
    // The message carries the caller's error and its causes.
    let msg = f[0].to_string();
    let prefix =
        format!("cannot check the audit copy in vault {}: opening vault {}: ", nowhere.display(), nowhere.display());
    assert!(msg.starts_with(&prefix) && msg.len() > prefix.len(), "{msg}");

    let plan = CheckPlan { vault_named: true, ..plan };
    let r = check(&plan, &FakeHome::default());
    let f = r.failures();
    assert_eq!(f.len(), 2, "{f:?}");
    let CheckFailure::OtherKey { vault, vault_fingerprint, key_fingerprint, key_file } = f[1] else { panic!("{f:?}") };
    assert_eq!(
        (vault, *vault_fingerprint, *key_fingerprint),
        (&Location::from(other_vault), keys(2).fingerprint(), keys(1).fingerprint())
    );
    assert_eq!(key_file, Path::new("/keys/1.key"));
    assert!(f[1].to_string().ends_with("pass that vault's key with --key"), "{}", f[1]);
}

#[test]
fn a_named_key_with_no_log_anywhere_is_a_failure() {
    let s = site(1);
    // Key 3 has no log in the home, and the vault (of key 1) holds none of it.
    let k = [key_to_check(3, &[&s.vault])];
    let plan = CheckPlan { dir: &s.dir, keys: &k, key_named: true, vault_named: false };
    let r = check(&plan, &FakeHome::default());
    let f = r.failures();
    assert!(
        matches!(f[..], [CheckFailure::NoLog { fingerprint, .. }] if *fingerprint == keys(3).fingerprint()),
        "{f:?}"
    );
    assert!(f[0].to_string().ends_with("is it the right key?"));
    // Not named (every key of the home): no log yet is fine.
    let r = check(&CheckPlan { key_named: false, ..plan }, &FakeHome::default());
    assert!(r.is_ok(), "{:?}", r.failures());
    // Named, and its log is there: fine.
    let k = [key_to_check(1, &[])];
    let r = check(&CheckPlan { dir: &s.dir, keys: &k, key_named: true, vault_named: false }, &FakeHome::default());
    assert!(r.is_ok(), "{:?}", r.failures());
}

#[test]
fn logs_of_keys_not_given_are_listed_as_skipped() {
    let s = site(1);
    audit::record(&s.dir, &keys(2), None, &Event::new("key.use", None, json!({}))).unwrap();
    std::fs::write(s.dir.join("notes.log"), b"not a log of a key").unwrap();
    let k = [key_to_check(1, &[])];
    let r = check(&CheckPlan { dir: &s.dir, keys: &k, key_named: false, vault_named: false }, &FakeHome::default());
    assert_eq!(r.skipped, vec![(audit::log_path(&s.dir, keys(2).fingerprint()), keys(2).fingerprint())]);
    let k = [key_to_check(1, &[]), key_to_check(2, &[])];
    let r = check(&CheckPlan { dir: &s.dir, keys: &k, key_named: false, vault_named: false }, &FakeHome::default());
    assert!(r.skipped.is_empty() && r.is_ok());
}
