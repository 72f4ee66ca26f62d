//! `lifeboat audit verify` and `lifeboat audit show` on a real home: a key
//! from `key new`, a vault from `vault init`, a disk from `protect`. The
//! records come from the `audit` crate called here with the same key (the
//! commands' own `record` calls are not reachable from a binary test), and
//! the log is then tampered with as an attacker on the host would: a byte
//! edited, a record dropped, two swapped, the tail cut off; the vault's copy
//! damaged; the wrong key. Each must make `verify` exit 1 naming the record
//! and what happened.

// Test code for 64-bit hosts: offsets and sizes fit usize.
#![allow(clippy::cast_possible_truncation)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use audit::{AuditLog, Event};
use disk_format::{KeyFile, Keys};
use serde_json::json;
use vault::LocalBackend;
use vm_tests::lifeboat::Scratch;
use vm_tests::replicate::{arg, assert_refused};

const RECORDS: u64 = 5;

/// A home with a replicated disk `web1`, and `RECORDS` records appended
/// after whatever the commands themselves recorded; the vault holds all but
/// the last one.
struct Audited {
    s: Scratch,
    key: PathBuf,
    vault: PathBuf,
    keys: Keys,
    log: PathBuf,
    /// Seq of the first record this test appended.
    first: u64,
}

fn load_keys(key: &Path) -> Keys {
    KeyFile::decode(&fs::read(key).unwrap(), || None::<&str>).unwrap().keys()
}

fn audited() -> Audited {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-audit-");
    let (key, vault, image) = (s.path("main.key"), s.path("vault"), s.path("web1.img"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, vec![0u8; 1 << 20]).unwrap();
    s.home.protect_replicated("web1", &image, 64 * 1024, &vault, &key);
    let keys = load_keys(&key);
    let dir = s.home.dir.join("audit");
    let log = AuditLog::open(&dir, &keys).unwrap();
    let backend = LocalBackend::open(&vault).unwrap();
    let mut first = 0;
    for i in 0..RECORDS {
        let (kind, disk) =
            [("protect", Some("web1")), ("cycle.committed", Some("web1")), ("key.use", None)][i as usize % 3];
        let a = log.append(&Event::new(kind, disk, json!({ "i": i }))).unwrap();
        if i == 0 {
            first = a.seq;
        }
        if i + 1 < RECORDS {
            log.sync_to(&backend).unwrap();
        }
    }
    let log = log.path().to_owned();
    Audited { s, key, vault, keys, log, first }
}

impl Audited {
    fn run(&self, args: &[&str]) -> Output {
        self.s.home.run_env(&[], args)
    }

    /// Byte ranges of every record in the home's log.
    fn spans(&self) -> Vec<std::ops::Range<usize>> {
        let (records, _) = audit::read_records(&self.log, &self.keys).unwrap();
        let len = fs::metadata(&self.log).unwrap().len() as usize;
        let mut starts: Vec<usize> = records.iter().map(|r| r.offset as usize).collect();
        starts.push(len);
        starts.windows(2).map(|w| w[0]..w[1]).collect()
    }

    /// Byte range of record `seq`.
    fn span(&self, seq: u64) -> std::ops::Range<usize> {
        self.spans()[seq as usize - 1].clone()
    }

    fn last(&self) -> u64 {
        self.first + RECORDS - 1
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn verify_and_show_an_intact_log() {
    let a = audited();
    let o = a.run(&["audit", "verify"]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    assert!(out.contains(&format!("records 1 to {}, intact", a.last())), "{out}");
    assert!(out.contains("1 newer record(s) not copied yet") && out.contains("no problems found"), "{out}");

    let o = a.run(&["audit", "verify", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["ok"], json!(true), "{v}");
    assert_eq!(v["logs"][0]["last_seq"], json!(a.last()));
    assert_eq!(v["logs"][0]["fingerprint"], json!(a.keys.fingerprint().to_string()));
    assert_eq!((&v["vaults"][0]["last_seq"], &v["vaults"][0]["not_copied"]), (&json!(a.last() - 1), &json!(1)));

    let o = a.run(&["audit", "show", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let all: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(all.len() as u64, a.last());
    let mine = &all[a.first as usize - 1..];
    assert_eq!(
        mine.iter().map(|r| r["details"]["i"].as_u64().unwrap()).collect::<Vec<_>>(),
        (0..RECORDS).collect::<Vec<_>>()
    );
    assert!(mine.iter().all(|r| r["authentic"] == json!(true) && r["time"].as_str().unwrap().ends_with('Z')));

    // Record first + 2 is about no disk: --disk skips it.
    let o = a.run(&["audit", "show", "--disk", "web1", "--last", "3", "--json"]);
    let three: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    assert!(three.iter().all(|r| r["disk"] == json!("web1")), "{three:?}");
    let seqs: Vec<u64> = three.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, vec![a.first + 1, a.first + 3, a.first + 4]);

    let o = a.run(&["audit", "show"]);
    let text = stdout(&o);
    assert!(text.contains("cycle.committed") && text.contains("key.use") && text.contains("{\"i\":4}"), "{text}");
}

#[test]
fn an_edited_record_fails_verify_naming_it() {
    let a = audited();
    let seq = a.first + 2;
    let r = a.span(seq);
    let mut b = fs::read(&a.log).unwrap();
    // A byte of its sealed body (version 2 records are not readable JSON).
    b[r.start + 88 + 30] ^= 0x04;
    fs::write(&a.log, &b).unwrap();
    let o = a.run(&["audit", "verify"]);
    let err = assert_refused(&o, "verify of an edited log", &[&format!("record {seq} at byte {}", r.start), "edited"]);
    assert!(err.contains(&a.log.display().to_string()), "{err}");
    assert!(stdout(&o).contains("PROBLEM"), "{}", stdout(&o));
    let o = a.run(&["audit", "verify", "--json"]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!((&v["ok"], &v["logs"][0]["problems"][0]["kind"]), (&json!(false), &json!("edited")));
    assert_eq!(v["logs"][0]["problems"][0]["seq"], json!(seq));
    // `show` lists it, marked, and fails.
    let o = a.run(&["audit", "show"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stdout(&o).contains("NOT AUTHENTIC"), "{}", stdout(&o));
}

#[test]
fn a_dropped_or_reordered_record_fails_verify() {
    let a = audited();
    let good = fs::read(&a.log).unwrap();
    let (r2, r3) = (a.span(a.first + 1), a.span(a.first + 2));

    let mut dropped = good.clone();
    dropped.drain(r2.clone());
    fs::write(&a.log, &dropped).unwrap();
    let o = a.run(&["audit", "verify"]);
    assert_refused(&o, "verify after a drop", &[&format!("record {}", a.first + 2), "dropped"]);

    let mut swapped = good[..r2.start].to_vec();
    swapped.extend_from_slice(&good[r3.clone()]);
    swapped.extend_from_slice(&good[r2.clone()]);
    swapped.extend_from_slice(&good[r3.end..]);
    fs::write(&a.log, &swapped).unwrap();
    let o = a.run(&["audit", "verify"]);
    assert_refused(&o, "verify after a swap", &[&format!("record {}", a.first + 2), "reordered"]);

    fs::write(&a.log, &good).unwrap();
    assert_eq!(a.run(&["audit", "verify"]).status.code(), Some(0));
}

#[test]
fn a_cut_off_home_log_is_caught_by_the_vault_copy() {
    let a = audited();
    // Mid-record: a torn tail, visible in the log itself.
    let r = a.span(a.last());
    let b = fs::read(&a.log).unwrap();
    fs::write(&a.log, &b[..r.start + 30]).unwrap();
    assert_refused(
        &a.run(&["audit", "verify"]),
        "verify of a torn log",
        &[&format!("record {}", a.last()), "torn tail"],
    );
    // At a record boundary, behind what the vault holds: only the copy shows it.
    let cut = a.span(a.first + 1).end;
    fs::write(&a.log, &b[..cut]).unwrap();
    let o = a.run(&["audit", "verify"]);
    assert_refused(&o, "verify of a truncated log", &["truncated", &format!("up to {}", a.last() - 1)]);
    // Deleted altogether.
    fs::remove_file(&a.log).unwrap();
    let o = a.run(&["audit", "verify"]);
    assert_refused(&o, "verify of a deleted log", &["the log is gone"]);
    assert!(stdout(&o).contains("truncated"), "{}", stdout(&o));
}

#[test]
fn the_vault_copy_is_verified_on_its_own_at_the_recovery_site() {
    let a = audited();
    fs::remove_dir_all(a.s.home.dir.join("audit")).unwrap();
    let elsewhere = a.s.path("recovery-home");
    let recovery = vm_tests::lifeboat::Home::new(env!("CARGO_BIN_EXE_lifeboat"), elsewhere);
    let o = recovery.run(&["audit", "verify", "--key", arg(&a.key), "--vault", arg(&a.vault)]);
    assert_eq!(o.status.code(), Some(0), "{}\n{}", stdout(&o), String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).contains(&format!("records 1 to {}, intact", a.last() - 1)), "{}", stdout(&o));

    // Damage one segment of the vault's copy.
    let fp = a.keys.fingerprint().to_string();
    let seg_dir = fs::read_dir(a.vault.join("audit").join(&fp)).unwrap().next().unwrap().unwrap().path();
    let mut segs: Vec<PathBuf> = fs::read_dir(&seg_dir).unwrap().map(|e| e.unwrap().path()).collect();
    segs.sort();
    let seg = segs.last().unwrap();
    let mut b = fs::read(seg).unwrap();
    b[100] ^= 0x20;
    fs::write(seg, &b).unwrap();
    let name = seg.file_name().unwrap().to_str().unwrap();
    let o = a.run(&["audit", "verify", "--key", arg(&a.key), "--vault", arg(&a.vault)]);
    assert_refused(&o, "verify of a damaged vault copy", &[name, "edited"]);
}

#[test]
fn the_wrong_key_is_refused() {
    let a = audited();
    let other = a.s.path("other.key");
    a.s.home.key_new(&other);
    let o = a.run(&["audit", "verify", "--key", arg(&other), "--vault", arg(&a.vault)]);
    assert_refused(&o, "verify with another vault's key", &["created with the key", arg(&other)]);
    let o = a.run(&["audit", "verify", "--key", arg(&other)]);
    assert_refused(&o, "verify with a key that has no log", &["no audit log of the key", "right key"]);
    // The main key's log under the other key's name: written with another key.
    let other_fp = load_keys(&other).fingerprint();
    fs::copy(&a.log, a.s.home.dir.join("audit").join(format!("{other_fp}.log"))).unwrap();
    let o = a.run(&["audit", "verify", "--key", arg(&other)]);
    assert_refused(
        &o,
        "verify of a log with the wrong key",
        &["written with the key", &a.keys.fingerprint().to_string()],
    );
}

/// The kinds (and disks) of every record `audit show --json` lists.
fn shown_kinds(s: &Scratch) -> Vec<(String, Option<String>)> {
    let out = s.home.run_ok(&["audit", "show", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v.as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["authentic"], true, "{r}");
            (r["kind"].as_str().unwrap().to_string(), r["disk"].as_str().map(str::to_string))
        })
        .collect()
}

#[test]
fn commands_leave_a_verifiable_trail_in_the_home_and_the_vault() {
    let s = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-audit-trail-");
    let (key, vault, image) = (s.path("k.key"), s.path("vault"), s.path("d.img"));
    s.home.key_new(&key);
    s.home.vault_init(&vault, &key);
    fs::write(&image, vm_tests::Rng::new(3).bytes(2 << 20)).unwrap();
    s.home.protect_replicated("d", &image, 64 * 1024, &vault, &key);
    s.home.ship("d");
    s.home.ship("d");
    s.home.restore("d", "1", &s.path("r.img"));
    std::thread::sleep(std::time::Duration::from_millis(1100)); // point 1 older than --recent 1s
    s.home.run_ok(&["prune", "d", "--recent", "1s", "--hourly", "0"]);
    s.home.run_ok(&["vault", "check", arg(&vault), "--read-data", "--key", arg(&key)]);
    // A cycle that fails is on record too: the vault is gone.
    let away = s.path("away");
    fs::rename(&vault, &away).unwrap();
    assert!(!s.home.run(&["ship", "d", "--once"]).status.success());
    fs::rename(&away, &vault).unwrap();

    let kinds = shown_kinds(&s);
    let d = Some("d".to_string());
    let want: Vec<(String, Option<String>)> = [
        ("vault.init", None),
        ("protect", d.clone()),
        ("cycle.committed", d.clone()),
        ("cycle.committed", d.clone()),
        ("restore", d.clone()),
        ("prune", d.clone()),
        ("vault.check", None),
        ("cycle.failed", d.clone()),
    ]
    .into_iter()
    .map(|(k, d)| (k.to_string(), d))
    .collect();
    assert_eq!(kinds, want, "the audit trail of the commands run");
    let v = s.home.run(&["audit", "verify"]);
    assert!(v.status.success(), "audit verify of an untouched trail: {}", String::from_utf8_lossy(&v.stderr));

    // At the recovery site, with only the key and the vault: the copy holds
    // every record up to the last one that reached the vault (the failed
    // cycle's record could not: the vault was gone).
    let empty = Scratch::new(env!("CARGO_BIN_EXE_lifeboat"), "lb-audit-dr-");
    let out = empty.home.run(&["audit", "verify", "--key", arg(&key), "--vault", arg(&vault), "--json"]);
    assert!(out.status.success(), "verify of the vault copy: {}", String::from_utf8_lossy(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = doc.to_string();
    assert!(text.contains("\"last_seq\":7") || text.contains("\"records\":7"), "the vault copy: {doc}");
}
