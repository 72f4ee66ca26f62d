//! Golden vectors and corrupt fixtures of the audit log format, checked in
//! under `tests/fixtures/audit-v2/` (record bodies sealed). The bytes are
//! what FORMAT.md ("Audit log") describes; if this test fails after a code
//! change, the change altered the format. The version 1 fixtures under
//! `tests/fixtures/audit-v1/` (bodies in the clear) are frozen: this build
//! must still read them.
//!
//! To regenerate after an intended, versioned format change:
//! `LIFEBOAT_BLESS=1 cargo test -p audit --test golden`.
//!
//! The golden log: key bytes 0..32, log id bytes 0x10..0x20, three records
//! (`protect` web1, `cycle.committed` web1, `key.use`) stamped one minute
//! apart from 2026-11-25T15:53:00Z by `root` (uid 0) on `golden-host`, pid
//! 4242.
#![allow(clippy::cast_possible_truncation)] // fixture sizes and byte patterns are small

use std::path::PathBuf;

use audit::record::{encode_record, OVERHEAD};
use audit::{read_records, segment_name, verify_log, AuditError, AuditLog, Body, Event, LogId, ProblemKind, Stamp};
use disk_format::{Keys, MasterKey};
use serde_json::json;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-v2")
}

fn frozen_v1() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/audit-v1")
}

fn golden_keys() -> Keys {
    MasterKey::from_bytes(std::array::from_fn(|i| i as u8)).keys()
}

fn log_id() -> LogId {
    LogId(std::array::from_fn(|i| 0x10 + i as u8))
}

fn stamp(i: u64) -> Stamp {
    Stamp {
        time_ns: 1_795_621_980_000_000_000 + i * 60_000_000_000,
        host: "golden-host".into(),
        uid: 0,
        user: Some("root".into()),
        pid: 4242,
    }
}

fn events() -> Vec<Event> {
    vec![
        Event::new("protect", Some("web1"), json!({ "image": "/var/lib/vms/web1.raw", "block_size": 65536 })),
        Event::new("cycle.committed", Some("web1"), json!({ "point": 1, "full": true, "bytes_shipped": 1_048_576 })),
        Event::new("key.use", None, json!({ "purpose": "restore" })),
    ]
}

/// The golden log's records, each as bytes.
fn golden_records(keys: &Keys) -> Vec<Vec<u8>> {
    let mut prev = [0u8; 32];
    let mut out = Vec::new();
    for (i, e) in events().iter().enumerate() {
        let seq = i as u64 + 1;
        let body = Body::new(seq, e, &stamp(i as u64)).unwrap();
        let r = encode_record(keys, log_id(), seq, &prev, &body);
        prev = r[r.len() - 32..].try_into().unwrap();
        out.push(r);
    }
    out
}

/// The record `restore` appended to the golden log by `AuditLog`.
fn appended(golden: &[u8]) -> Vec<u8> {
    let k = golden_keys();
    let tmp = tempfile::tempdir().unwrap();
    let log = AuditLog::open(tmp.path(), &k).unwrap();
    std::fs::write(log.path(), golden).unwrap();
    let a = log
        .append_stamped(&Event::new("restore", Some("web1"), json!({ "point": 1, "out": "/tmp/web1.raw" })), &stamp(3))
        .unwrap();
    assert_eq!((a.seq, a.offset, a.log_id), (4, golden.len() as u64, log_id()));
    std::fs::read(log.path()).unwrap()
}

fn all() -> Vec<(&'static str, Vec<u8>)> {
    let k = golden_keys();
    let recs = golden_records(&k);
    let golden = recs.concat();
    let mut edited = golden.clone();
    edited[recs[0].len() + 88 + 40] ^= 0x20; // a byte of record 2's sealed body
    let other = MasterKey::from_bytes([0xee; 32]).keys();
    vec![
        ("golden.log", golden.clone()),
        ("appended.log", appended(&golden)),
        ("edited.log", edited),
        ("dropped.log", [recs[0].clone(), recs[2].clone()].concat()),
        ("reordered.log", [recs[0].clone(), recs[2].clone(), recs[1].clone()].concat()),
        ("torn.log", golden[..golden.len() - 10].to_vec()),
        ("other-key.log", golden_records(&other).concat()),
    ]
}

#[test]
fn fixtures_are_the_bytes_the_code_writes() {
    let bless = std::env::var_os("LIFEBOAT_BLESS").is_some();
    if bless {
        std::fs::create_dir_all(fixtures()).unwrap();
    }
    for (name, bytes) in all() {
        let path = fixtures().join(name);
        if bless {
            std::fs::write(&path, &bytes).unwrap();
        }
        let on_disk = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(on_disk == bytes, "{name} differs from what the code writes: the format changed");
    }
}

#[test]
fn the_golden_log_reads_back_as_written() {
    let k = golden_keys();
    let (records, report) = read_records(&fixtures().join("appended.log"), &k).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!((report.last_seq, report.log_id), (4, Some(log_id())));
    let first = records[0].body.as_ref().unwrap();
    assert_eq!(first.time, "2026-11-25T15:53:00.000000000Z");
    assert_eq!(
        (first.kind.as_str(), first.disk.as_deref(), first.user.as_deref()),
        ("protect", Some("web1"), Some("root"))
    );
    let last = records[3].body.as_ref().unwrap();
    assert_eq!((last.kind.as_str(), last.time.as_str()), ("restore", "2026-11-25T15:56:00.000000000Z"));
    // The first record's exact bytes: header fields at their offsets.
    let b = std::fs::read(fixtures().join("golden.log")).unwrap();
    assert_eq!(&b[..8], &blake3::hash(b"lifeboat audit record v1").as_bytes()[..8]);
    assert_eq!(&b[8..12], &[2, 0, 0, 0]);
    let body_len = u32::from_le_bytes(b[12..16].try_into().unwrap()) as usize;
    assert_eq!(u64::from_le_bytes(b[16..24].try_into().unwrap()), 1);
    assert_eq!(&b[24..40], k.fingerprint().as_bytes());
    assert_eq!(&b[40..56], &log_id().0);
    assert_eq!(&b[56..88], &[0u8; 32]);
    let len = OVERHEAD + body_len;
    assert_eq!(u32::from_le_bytes(b[88 + body_len..92 + body_len].try_into().unwrap()) as usize, len);
    assert_eq!(&b[len - 32..len], &k.audit_mac(&b[..len - 32]));
    assert_eq!(&b[len + 56..len + 88], &b[len - 32..len], "record 2 chains to record 1");
    assert_eq!(
        segment_name(k.fingerprint(), log_id(), 1),
        format!("{}/101112131415161718191a1b1c1d1e1f/00000000000000000001", k.fingerprint())
    );
}

#[test]
fn corrupt_fixtures_are_refused_with_the_right_problem() {
    let k = golden_keys();
    let recs = golden_records(&k);
    let (r1, r2) = (recs[0].len() as u64, recs[1].len() as u64);
    let cases: [(&str, u64, u64, ProblemKind); 4] = [
        ("edited.log", 2, r1, ProblemKind::Edited),
        ("dropped.log", 3, r1, ProblemKind::Dropped { first: 2, last: 2 }),
        ("reordered.log", 3, r1, ProblemKind::Reordered { expected: 2 }),
        ("torn.log", 3, r1 + r2, ProblemKind::TornTail { bytes: recs[2].len() as u64 - 10 }),
    ];
    for (name, seq, offset, kind) in cases {
        let r = verify_log(&fixtures().join(name), &k).unwrap();
        assert_eq!(r.problems.len(), 1, "{name}: {:?}", r.problems);
        let p = &r.problems[0];
        assert_eq!((p.seq, p.offset, &p.kind), (Some(seq), Some(offset), &kind), "{name}");
    }
    match verify_log(&fixtures().join("other-key.log"), &k) {
        Err(AuditError::WrongKey { log_fingerprint, .. }) => {
            assert_eq!(log_fingerprint, MasterKey::from_bytes([0xee; 32]).fingerprint())
        }
        other => panic!("other-key.log: expected WrongKey, got {other:?}"),
    }
}

#[test]
fn sealed_bodies_show_nothing_of_the_records() {
    let golden = std::fs::read(fixtures().join("appended.log")).unwrap();
    for text in ["golden-host", "web1", "/var/lib/vms", "/tmp/web1.raw", "protect", "root", "restore"] {
        assert!(!golden.windows(text.len()).any(|w| w == text.as_bytes()), "{text:?} is in the clear");
    }
}

#[test]
fn frozen_version_1_logs_still_read() {
    let k = golden_keys();
    let (records, report) = read_records(&frozen_v1().join("appended.log"), &k).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    assert_eq!(report.last_seq, 4);
    let first = records[0].body.as_ref().unwrap();
    assert_eq!((first.kind.as_str(), first.disk.as_deref()), ("protect", Some("web1")));
    let r = verify_log(&frozen_v1().join("edited.log"), &k).unwrap();
    assert!(matches!(r.problems[0].kind, ProblemKind::Edited), "{:?}", r.problems);
}
