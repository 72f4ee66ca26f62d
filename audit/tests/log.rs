//! The audit log through its public API: appends and verification of the
//! home's log, each kind of tampering, torn tails, the wrong key, concurrent
//! writers (threads and processes), and the copy in a (local) vault.
#![allow(clippy::cast_possible_truncation)] // test sizes are small

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use audit::record::{encode_record, HEADER_LEN};
use audit::{
    cross_check, not_copied, read_records, verify_home, verify_log, verify_vault, AuditError, AuditLog, Body, Event,
    LogId, ProblemKind, Stamp,
};
use disk_format::{Keys, MasterKey};
use serde_json::json;
use vault::{Backend, Kind, LocalBackend};

fn keys(seed: u8) -> Keys {
    MasterKey::from_bytes([seed; 32]).keys()
}

fn event(i: u64) -> Event {
    let kinds = ["protect", "cycle.committed", "cycle.failed", "prune", "restore", "key.use"];
    Event::new(kinds[i as usize % kinds.len()], Some("web1"), json!({ "i": i }))
}

/// A home audit dir with `n` records appended under key 1.
fn log_with(n: u64) -> (tempfile::TempDir, PathBuf, Keys) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys(1);
    let log = AuditLog::open(&dir, &k).unwrap();
    for i in 1..=n {
        let a = log.append(&event(i)).unwrap();
        assert_eq!(a.seq, i);
    }
    let path = log.path().to_owned();
    (tmp, path, k)
}

/// Byte ranges of each record in a log file.
fn spans(path: &Path) -> Vec<std::ops::Range<usize>> {
    let b = fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut at = 0;
    while at + HEADER_LEN <= b.len() {
        let len = 128 + u32::from_le_bytes(b[at + 12..at + 16].try_into().unwrap()) as usize;
        if at + len > b.len() {
            break;
        }
        out.push(at..at + len);
        at += len;
    }
    out
}

fn kinds(path: &Path, k: &Keys) -> Vec<ProblemKind> {
    verify_log(path, k).unwrap().problems.into_iter().map(|p| p.kind).collect()
}

#[test]
fn append_then_verify_round_trip() {
    let (tmp, path, k) = log_with(6);
    assert_eq!(path, tmp.path().join("audit").join(format!("{}.log", k.fingerprint())));
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
    let (records, report) = read_records(&path, &k).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.records, report.last_seq), (6, 6));
    assert_eq!(report.bytes, fs::metadata(&path).unwrap().len());
    let me = Stamp::now();
    for (i, r) in records.iter().enumerate() {
        let b = r.body.as_ref().unwrap();
        assert!(r.authentic);
        assert_eq!(r.log_id, report.log_id.unwrap());
        assert_eq!((r.seq, b.seq), (i as u64 + 1, i as u64 + 1));
        let want = event(i as u64 + 1);
        assert_eq!((&b.kind, &b.disk, &b.details), (&want.kind, &want.disk, &want.details));
        assert_eq!((&b.host, b.uid, b.pid), (&me.host, me.uid, me.pid));
        assert!(b.time.ends_with('Z') && b.time_ns > 1_700_000_000_000_000_000);
    }
}

#[test]
fn bad_events_are_refused_and_write_nothing() {
    let (_tmp, path, k) = log_with(2);
    let before = fs::read(&path).unwrap();
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    for bad in [
        Event::new("Protect", None, json!({})),
        Event::new("protect", Some("../etc"), json!({})),
        Event::new("protect", None, json!("not an object")),
        Event::new("protect", None, json!({ "big": "x".repeat(70_000) })),
    ] {
        assert!(matches!(log.append(&bad), Err(AuditError::BadEvent(_))), "{bad:?}");
    }
    assert_eq!(fs::read(&path).unwrap(), before);
}

#[test]
fn an_edited_byte_is_reported_as_an_edit_naming_the_record() {
    let (_tmp, path, k) = log_with(5);
    let s = spans(&path);
    let mut b = fs::read(&path).unwrap();
    // A byte of record 3's sealed body.
    let at = 30;
    b[s[2].start + HEADER_LEN + at] ^= 0x01;
    fs::write(&path, &b).unwrap();
    let r = verify_log(&path, &k).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!((p.seq, p.offset, &p.kind), (Some(3), Some(s[2].start as u64), &ProblemKind::Edited));
    let msg = p.to_string();
    assert!(msg.contains("record 3") && msg.contains("edited") && msg.contains(&path.display().to_string()), "{msg}");
    // Every other byte of a record, flipped, is caught too.
    let good = {
        b[s[2].start + HEADER_LEN + at] ^= 0x01;
        b.clone()
    };
    for off in (s[1].start..s[1].end).step_by(7) {
        let mut c = good.clone();
        c[off] ^= 0x10;
        fs::write(&path, &c).unwrap();
        let r = verify_log(&path, &k).unwrap();
        assert!(!r.is_ok(), "a flipped bit at byte {off} of record 2 went unnoticed");
    }
}

#[test]
fn a_dropped_record_is_reported() {
    let (_tmp, path, k) = log_with(5);
    let s = spans(&path);
    let mut b = fs::read(&path).unwrap();
    b.drain(s[2].clone());
    fs::write(&path, &b).unwrap();
    let r = verify_log(&path, &k).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!(
        (p.seq, p.offset, &p.kind),
        (Some(4), Some(s[2].start as u64), &ProblemKind::Dropped { first: 3, last: 3 })
    );
    assert!(p.to_string().contains("record 3 is missing"), "{p}");
    // Dropping the first record is caught as well.
    let (_tmp2, path2, k2) = log_with(3);
    let mut b = fs::read(&path2).unwrap();
    b.drain(spans(&path2)[0].clone());
    fs::write(&path2, &b).unwrap();
    assert_eq!(kinds(&path2, &k2), vec![ProblemKind::Dropped { first: 1, last: 1 }]);
}

#[test]
fn swapped_records_are_reported_as_reordered() {
    let (_tmp, path, k) = log_with(5);
    let s = spans(&path);
    let b = fs::read(&path).unwrap();
    let mut c = b[..s[2].start].to_vec();
    c.extend_from_slice(&b[s[3].clone()]);
    c.extend_from_slice(&b[s[2].clone()]);
    c.extend_from_slice(&b[s[4].clone()]);
    fs::write(&path, &c).unwrap();
    let r = verify_log(&path, &k).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    let p = &r.problems[0];
    assert_eq!((p.seq, p.offset, &p.kind), (Some(4), Some(s[2].start as u64), &ProblemKind::Reordered { expected: 3 }));
    // A record repeated is a duplicate.
    let mut d = b.clone();
    d.extend_from_slice(&b[s[1].clone()]);
    fs::write(&path, &d).unwrap();
    assert_eq!(kinds(&path, &k), vec![ProblemKind::Duplicated]);
}

#[test]
fn a_torn_tail_is_repaired_by_the_next_append_without_losing_records() {
    for zeros in [false, true] {
        let (_tmp, path, k) = log_with(5);
        let s = spans(&path);
        let good = fs::read(&path).unwrap();
        let mut b = good[..s[4].start + 50].to_vec(); // record 5 cut 50 bytes in
        if zeros {
            // What some file systems show after a crash: the size grew, the data did not land.
            b = good[..s[4].start].to_vec();
            b.resize(s[4].end, 0);
        }
        fs::write(&path, &b).unwrap();
        let torn = (b.len() - s[4].start) as u64;
        let r = verify_log(&path, &k).unwrap();
        assert_eq!(r.problems.len(), 1);
        assert_eq!((r.problems[0].seq, &r.problems[0].kind), (Some(5), &ProblemKind::TornTail { bytes: torn }));
        assert_eq!(r.last_seq, 4);

        let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
        let a = log.append(&event(9)).unwrap();
        assert_eq!((a.seq, a.repaired_torn_bytes), (6, Some(torn)), "zeros: {zeros}");
        let (records, r) = read_records(&path, &k).unwrap();
        assert!(r.is_ok(), "{:?}", r.problems);
        assert_eq!(fs::read(&path).unwrap()[..s[4].start], good[..s[4].start], "a good record changed");
        let note = records[4].body.as_ref().unwrap();
        assert_eq!((note.kind.as_str(), &note.details["bytes"]), ("audit.torn-tail", &json!(torn)));
        assert_eq!(records[5].body.as_ref().unwrap().details, json!({ "i": 9 }));
    }
}

#[test]
fn a_damaged_last_record_is_refused_not_chained_onto() {
    let (_tmp, path, k) = log_with(4);
    let s = spans(&path);
    let mut b = fs::read(&path).unwrap();
    b[s[3].start + HEADER_LEN + 3] ^= 1;
    fs::write(&path, &b).unwrap();
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    match log.append(&event(5)) {
        Err(e @ AuditError::Damaged { seq: Some(4), offset, .. }) if offset == s[3].start as u64 => {
            assert!(e.to_string().contains("record 4"), "{e}");
        }
        other => panic!("expected Damaged at record 4, got {other:?}"),
    }
    assert_eq!(fs::read(&path).unwrap(), b, "a refused append changed the log");
    // Garbage after the last record is not a torn tail either.
    let mut g = fs::read(&path).unwrap();
    g[s[3].start + HEADER_LEN + 3] ^= 1;
    g.extend_from_slice(b"not a record at all");
    fs::write(&path, &g).unwrap();
    assert!(matches!(log.append(&event(5)), Err(AuditError::Damaged { seq: None, .. })));
}

#[test]
fn the_wrong_key_is_refused_clearly() {
    let (_tmp, path, k) = log_with(3);
    let other = keys(2);
    match verify_log(&path, &other) {
        Err(e @ AuditError::WrongKey { .. }) => {
            let msg = e.to_string();
            assert!(
                msg.contains(&k.fingerprint().to_string()) && msg.contains(&other.fingerprint().to_string()),
                "{msg}"
            );
        }
        other => panic!("expected WrongKey, got {other:?}"),
    }
    // An append with the other key to a log it did not write.
    let dir = path.parent().unwrap();
    fs::copy(&path, audit::log_path(dir, other.fingerprint())).unwrap();
    let log = AuditLog::open(dir, &other).unwrap();
    assert!(matches!(log.append(&event(1)), Err(AuditError::WrongKey { .. })));
}

#[test]
fn concurrent_appends_from_threads_keep_one_chain() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let k = keys(1);
    std::thread::scope(|s| {
        for t in 0..4u64 {
            let (dir, k) = (&dir, &k);
            s.spawn(move || {
                for i in 0..25 {
                    let log = AuditLog::open(dir, k).unwrap();
                    log.append(&Event::new("cycle.committed", None, json!({ "t": t, "i": i }))).unwrap();
                }
            });
        }
    });
    let (records, r) = read_records(&audit::log_path(&dir, k.fingerprint()), &k).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!((r.records, r.last_seq), (100, 100));
    let mut seen: Vec<_> = records.iter().map(|r| r.body.as_ref().unwrap().details.clone()).collect();
    seen.sort_by_key(|d| (d["t"].as_u64(), d["i"].as_u64()));
    seen.dedup();
    assert_eq!(seen.len(), 100, "a record was lost or written twice");
}

const CHILD_ENV: &str = "LIFEBOAT_AUDIT_TEST_CHILD_DIR";
const PER_PROCESS: u64 = 30;

/// Run as the parent by the test harness: starts three copies of this test
/// binary that run this same test as children (they find `CHILD_ENV` set
/// and only append), appends alongside them, then checks the chain.
#[test]
fn concurrent_appends_from_processes_keep_one_chain() {
    let k = keys(1);
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        let log = AuditLog::open(Path::new(&dir), &k).unwrap();
        for i in 0..PER_PROCESS {
            log.append(&Event::new("gc", None, json!({ "i": i }))).unwrap();
        }
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("audit");
    let children: Vec<_> = (0..3)
        .map(|_| {
            std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "concurrent_appends_from_processes_keep_one_chain", "--test-threads=1", "--quiet"])
                .env(CHILD_ENV, &dir)
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let log = AuditLog::open(&dir, &k).unwrap();
    for i in 0..PER_PROCESS {
        log.append(&Event::new("gc", None, json!({ "i": i }))).unwrap();
    }
    for mut c in children {
        assert!(c.wait().unwrap().success(), "a child appender failed");
    }
    let (records, r) = read_records(log.path(), &k).unwrap();
    assert!(r.is_ok(), "{:?}", r.problems);
    assert_eq!(r.last_seq, 4 * PER_PROCESS);
    let pids: std::collections::BTreeSet<u32> = records.iter().map(|r| r.body.as_ref().unwrap().pid).collect();
    assert_eq!(pids.len(), 4, "records from 4 processes expected: {pids:?}");
}

// ---------------------------------------------------------------------------
// The vault's copy
// ---------------------------------------------------------------------------

fn vault(tmp: &tempfile::TempDir) -> LocalBackend {
    LocalBackend::create(&tmp.path().join("vault")).unwrap()
}

#[test]
fn the_vault_copy_round_trips_and_copies_only_what_is_new() {
    let (tmp, path, k) = log_with(3);
    let v = vault(&tmp);
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    let s1 = log.sync_to(&v).unwrap();
    assert_eq!((s1.records, s1.vault_last, s1.segments.len()), (3, 3, 1));
    assert!(s1.segments[0].ends_with("/00000000000000000001"), "{:?}", s1.segments);
    assert_eq!(log.sync_to(&v).unwrap().records, 0, "nothing new, nothing copied");
    for i in 4..=5 {
        log.append(&event(i)).unwrap();
    }
    let s2 = log.sync_to(&v).unwrap();
    assert_eq!((s2.records, s2.vault_last), (2, 5));
    assert!(s2.segments[0].ends_with("/00000000000000000004"), "{:?}", s2.segments);
    // The vault's segments are byte for byte the log.
    let mut joined = v.get(Kind::Audit, &s1.segments[0]).unwrap();
    joined.extend(v.get(Kind::Audit, &s2.segments[0]).unwrap());
    assert_eq!(joined, fs::read(&path).unwrap());

    let home = verify_log(&path, &k).unwrap();
    let vaults = verify_vault(&v, &k).unwrap();
    assert_eq!(vaults.len(), 1);
    assert!(vaults[0].is_ok(), "{:?}", vaults[0].problems);
    assert_eq!((vaults[0].log_id, vaults[0].last_seq), (home.log_id, 5));
    assert!(cross_check(&home, &vaults[0]).is_empty());
    log.append(&event(6)).unwrap();
    let home = verify_log(&path, &k).unwrap();
    assert!(cross_check(&home, &vaults[0]).is_empty(), "a vault behind the home is not a problem");
    assert_eq!(not_copied(&home, &vaults[0]), 1);
}

/// The copy is on every cycle's path, so on a cloud vault its requests are
/// part of each cycle's bill and wall time (issue 15): nothing to copy asks
/// nothing, and a new record costs two probes and one create-if-absent.
#[test]
fn a_copy_asks_the_vault_only_what_it_must() {
    let (tmp, path, k) = log_with(3);
    let v = vault::counting::Counting::new(vault(&tmp));
    let count = v.count();
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    log.sync_to(&v).unwrap();
    let before = count.get();
    assert_eq!(log.sync_to(&v).unwrap().vault_last, 3);
    assert_eq!((count.get() - before).total, 0, "nothing to copy asks the vault nothing");
    log.append(&event(4)).unwrap();
    let before = count.get();
    assert_eq!(log.sync_to(&v).unwrap().vault_last, 4);
    let spent = count.get() - before;
    assert_eq!((spent.reads, spent.writes, spent.lists), (2, 1, 0), "{spent:?}");
}

#[test]
fn the_copy_survives_a_lost_or_stale_sync_state() {
    let (tmp, path, k) = log_with(3);
    let v = vault(&tmp);
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    let state = PathBuf::from(format!("{}.sync", path.display()));
    log.sync_to(&v).unwrap();
    let stale = fs::read(&state).unwrap();
    log.append(&event(4)).unwrap();
    log.sync_to(&v).unwrap();
    // Lost: the vault is listed instead; only record 5 is copied.
    fs::remove_file(&state).unwrap();
    log.append(&event(5)).unwrap();
    let s = log.sync_to(&v).unwrap();
    assert_eq!((s.records, s.vault_last), (1, 5));
    // Stale (a copy that crashed before saving its state): segment 4 is
    // rewritten with its own bytes and more, never duplicated.
    fs::write(&state, &stale).unwrap();
    log.append(&event(6)).unwrap();
    let s = log.sync_to(&v).unwrap();
    assert_eq!(s.vault_last, 6);
    let r = verify_vault(&v, &k).unwrap();
    assert!(r[0].is_ok() && r[0].last_seq == 6, "{:?}", r[0].problems);
    assert_eq!(v.list(Kind::Audit, "").unwrap().len(), 4, "segments 1, 4, 5 and 6");
    // Overlapping segments holding the same records are harmless.
    let s = spans(&path);
    let b = fs::read(&path).unwrap();
    let id = r[0].log_id.unwrap();
    v.put(Kind::Audit, &audit::segment_name(k.fingerprint(), id, 2), &b[s[1].start..s[4].end]).unwrap();
    let r = verify_vault(&v, &k).unwrap();
    assert!(r[0].is_ok() && (r[0].records, r[0].last_seq) == (6, 6), "{:?}", r[0]);
    // But not different records under the same seq.
    let mut other = b[s[1].clone()].to_vec();
    other[HEADER_LEN + 1] ^= 1;
    v.put(Kind::Audit, &audit::segment_name(k.fingerprint(), id, 2), &other).unwrap();
    assert!(!verify_vault(&v, &k).unwrap()[0].is_ok());
}

#[test]
fn a_damaged_log_is_not_copied() {
    let (tmp, path, k) = log_with(4);
    let v = vault(&tmp);
    let s = spans(&path);
    let mut b = fs::read(&path).unwrap();
    b[s[1].start + HEADER_LEN] ^= 1;
    fs::write(&path, &b).unwrap();
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    assert!(matches!(log.sync_to(&v), Err(AuditError::Damaged { seq: Some(2), .. })));
    assert!(v.list(Kind::Audit, "").unwrap().is_empty(), "nothing may reach the vault");
}

#[test]
fn damage_to_the_vault_copy_is_reported_naming_the_segment() {
    let (tmp, path, k) = log_with(3);
    let v = vault(&tmp);
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    let first = log.sync_to(&v).unwrap().segments.remove(0);
    log.append(&event(4)).unwrap();
    log.append(&event(5)).unwrap();
    let second = log.sync_to(&v).unwrap().segments.remove(0);

    // A flipped byte in the vault's copy.
    let good = v.get(Kind::Audit, &first).unwrap();
    let mut bad = good.clone();
    bad[spans(&path)[1].start + HEADER_LEN + 2] ^= 4;
    v.put(Kind::Audit, &first, &bad).unwrap();
    let r = verify_vault(&v, &k).unwrap();
    assert_eq!(r[0].problems.len(), 1, "{:?}", r[0].problems);
    let p = &r[0].problems[0];
    assert_eq!((p.seq, &p.kind), (Some(2), &ProblemKind::Edited));
    assert!(p.place.contains(&first), "{p}");
    v.put(Kind::Audit, &first, &good).unwrap();

    // A deleted segment: its records are missing.
    v.delete(Kind::Audit, &first).unwrap();
    let r = verify_vault(&v, &k).unwrap();
    assert_eq!(
        r[0].problems.iter().map(|p| &p.kind).collect::<Vec<_>>(),
        vec![&ProblemKind::Dropped { first: 1, last: 3 }]
    );
    assert!(r[0].problems[0].place.contains(&second));
    v.put(Kind::Audit, &first, &good).unwrap();
    assert!(verify_vault(&v, &k).unwrap()[0].is_ok());
}

#[test]
fn a_home_log_truncated_at_a_record_boundary_is_caught_by_the_vault_copy() {
    let (tmp, path, k) = log_with(5);
    let v = vault(&tmp);
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    log.sync_to(&v).unwrap();
    let s = spans(&path);
    let b = fs::read(&path).unwrap();
    fs::write(&path, &b[..s[2].end]).unwrap(); // records 4 and 5 gone, cleanly
    let home = verify_log(&path, &k).unwrap();
    assert!(home.is_ok(), "a clean truncation cannot be seen in the log alone");
    let vault_report = &verify_vault(&v, &k).unwrap()[0];
    let problems = cross_check(&home, vault_report);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].kind, ProblemKind::HomeTruncated { vault_last: 5, home_last: 3 });
    assert!(problems[0].to_string().contains("truncated"), "{}", problems[0]);
    // And the next copy refuses to go on as if nothing happened.
    assert!(matches!(log.sync_to(&v), Err(AuditError::VaultAhead { vault_last: 5, home_last: 3, .. })));
}

#[test]
fn a_rewritten_history_differs_from_the_vault_copy() {
    // A key holder rewrites record 2 and everything after it (valid MACs,
    // same log id): the log alone verifies, the vault's copy disagrees.
    let (tmp, path, k) = log_with(3);
    let v = vault(&tmp);
    let log = AuditLog::open(path.parent().unwrap(), &k).unwrap();
    log.sync_to(&v).unwrap();
    let (records, home) = read_records(&path, &k).unwrap();
    let id: LogId = home.log_id.unwrap();
    let s = spans(&path);
    let b = fs::read(&path).unwrap();
    let mut forged = b[..s[0].end].to_vec();
    let mut prev: [u8; 32] = b[s[0].end - 32..s[0].end].try_into().unwrap();
    for r in &records[1..] {
        let mut body: Body = r.body.clone().unwrap();
        body.details = json!({ "rewritten": true });
        let bytes = encode_record(&k, id, r.seq, &prev, &body);
        prev = bytes[bytes.len() - 32..].try_into().unwrap();
        forged.extend_from_slice(&bytes);
    }
    fs::write(&path, &forged).unwrap();
    let home = verify_log(&path, &k).unwrap();
    assert!(home.is_ok());
    let problems = cross_check(&home, &verify_vault(&v, &k).unwrap()[0]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].seq, Some(2));
    assert!(matches!(problems[0].kind, ProblemKind::Differs { .. }));
}

#[test]
fn a_deleted_or_replaced_home_log_is_reported() {
    let (tmp, path, k) = log_with(3);
    let dir = path.parent().unwrap().to_owned();
    let v = vault(&tmp);
    let log = AuditLog::open(&dir, &k).unwrap();
    assert!(verify_home(&dir, &k).unwrap().unwrap().is_ok(), "never copied: nothing to compare with");
    log.sync_to(&v).unwrap();
    let copied = verify_log(&path, &k).unwrap().log_id.unwrap();
    fs::remove_file(&path).unwrap();
    let home = verify_home(&dir, &k).unwrap().expect("a report for the missing log");
    assert_eq!(home.problems.len(), 1);
    assert_eq!(home.problems[0].kind, ProblemKind::Replaced { copied, found: None });
    assert!(home.problems[0].to_string().contains("gone"), "{}", home.problems[0]);
    let problems = cross_check(&home, &verify_vault(&v, &k).unwrap()[0]);
    assert_eq!(problems[0].kind, ProblemKind::HomeTruncated { vault_last: 3, home_last: 0 });
    // A new log in its place (the next append starts one).
    log.append(&event(1)).unwrap();
    let home = verify_home(&dir, &k).unwrap().unwrap();
    let found = home.log_id;
    assert_ne!(found, Some(copied));
    assert_eq!(home.problems[0].kind, ProblemKind::Replaced { copied, found });
    // Once the new log is copied, the home holds it and the old copy stays in the vault.
    log.sync_to(&v).unwrap();
    assert!(verify_home(&dir, &k).unwrap().unwrap().is_ok());
    assert_eq!(verify_vault(&v, &k).unwrap().len(), 2);
}

#[test]
fn a_record_replaced_by_another_authentic_one_breaks_the_chain() {
    // A key holder swaps record 2 for a record 2 of their own (right seq,
    // valid MAC): record 3 no longer chains to it.
    let (_tmp, path, k) = log_with(3);
    let (records, report) = read_records(&path, &k).unwrap();
    let s = spans(&path);
    let b = fs::read(&path).unwrap();
    let prev: [u8; 32] = b[s[0].end - 32..s[0].end].try_into().unwrap();
    let mut body = records[1].body.clone().unwrap();
    body.details = json!({ "replaced": true });
    let forged = encode_record(&k, report.log_id.unwrap(), 2, &prev, &body);
    let mut c = b[..s[0].end].to_vec();
    c.extend_from_slice(&forged);
    c.extend_from_slice(&b[s[2].clone()]);
    fs::write(&path, &c).unwrap();
    let r = verify_log(&path, &k).unwrap();
    assert_eq!(r.problems.len(), 1, "{:?}", r.problems);
    assert_eq!((r.problems[0].seq, &r.problems[0].kind), (Some(3), &ProblemKind::ChainBroken));
}
