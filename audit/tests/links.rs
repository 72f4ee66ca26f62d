//! The cross-links between a vault's points and its audit copies (issue 12,
//! hole 8), with real roots in a real local vault: a point removed by a
//! prune on record is not lost; one deleted without a record is; a root
//! naming a record the vault's copy lacks is found.

use disk_format::point::{Consistency, Root};
use disk_format::{Geometry, Keys, MasterKey, PageId, RootExtension, RootId};
use serde_json::json;
use vault::{LocalBackend, Vault};

fn keys() -> Keys {
    MasterKey::from_bytes([7; 32]).keys()
}

/// The chain `d1`'s points are stored under.
fn chain(keys: &Keys) -> String {
    Vault::chain_of(keys, &[1; 16])
}

/// Commits point `seq` of `d1` as a cycle does: the root names the log's
/// head, then a `cycle.committed` record names the root.
fn commit(vault: &Vault, log: &audit::AuditLog<'_>, keys: &Keys, seq: u64) {
    commit_of(vault, log, keys, [1; 16], seq);
}

/// [`commit`] for the disk named `d1` whose identity is `disk_id`.
fn commit_of(vault: &Vault, log: &audit::AuditLog<'_>, keys: &Keys, disk_id: [u8; 16], seq: u64) {
    let ext = RootExtension { audit_head: log.head().unwrap(), ..RootExtension::default() };
    let root = Root {
        consistency: Consistency::Crash,
        disk_id,
        disk_name: "d1".into(),
        host: "h1".into(),
        namespace: None,
        sequence: seq,
        cut_time_ns: seq,
        cut_generation: seq,
        geometry: Geometry::new(1 << 20, 65536).unwrap(),
        bytes_shipped: 0,
        parent: None,
        pages: vec![PageId::ZERO],
        page_packs: Vec::new(),
        page_pack_of: Vec::new(),
        extension: ext.encode(keys).unwrap(),
    };
    let bytes = root.encode(keys).unwrap();
    vault.put_root(&Vault::chain_of(keys, &disk_id), seq, &bytes).unwrap();
    let details =
        json!({ "point": seq, "root": RootId::of(&bytes).to_string(), "vault": vault.config().vault_id.to_string() });
    log.append(&audit::Event::new("cycle.committed", Some("d1"), details)).unwrap();
    log.sync_to(vault.backend()).unwrap();
}

#[test]
fn pruned_points_are_excused_deleted_ones_and_lost_records_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    let vault = Vault::init(Box::new(LocalBackend::create(&dir.path().join("vault")).unwrap()), &k).unwrap();
    let log = audit::AuditLog::open(&dir.path().join("audit"), &k).unwrap();
    log.append(&audit::Event::new("protect", Some("d1"), json!({}))).unwrap();
    for seq in 1..=4 {
        commit(&vault, &log, &k, seq);
    }
    let r = audit::check_links(&vault, &k).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);
    assert_eq!((r.points, r.heads, r.commits), (4, 4, 4));

    // A prune on record removes point 1: not lost.
    vault.delete_root(&chain(&k), 1).unwrap();
    log.append(&audit::Event::new("prune", Some("d1"), json!({ "pruned": [1], "kept": [2, 3, 4] }))).unwrap();
    log.sync_to(vault.backend()).unwrap();
    let r = audit::check_links(&vault, &k).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);

    // Point 3 deleted behind the log's back: lost, named.
    vault.delete_root(&chain(&k), 3).unwrap();
    let r = audit::check_links(&vault, &k).unwrap();
    let names: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].contains("lost point") && names[0].contains("point 3"), "{names:?}");
    assert_eq!(r.problems[0].kind.name(), "lost-point");

    // The same log copied to another vault of the key names points of the
    // first one: not this vault's to hold.
    let other = Vault::init(Box::new(LocalBackend::create(&dir.path().join("other")).unwrap()), &k).unwrap();
    log.sync_to(other.backend()).unwrap();
    let r = audit::check_links(&other, &k).unwrap();
    assert!(r.problems.is_empty() && r.commits == 0, "{:?}", r.problems);
}

/// Two hosts protect a disk named `d1` each into one vault (two chains, two
/// logs); host A prunes its point 1 on record. Host B's point 1 is still
/// there under the same name and sequence: that is not A's point replaced
/// (found by cli/tests/cloud_faults.rs, two hosts sharing a bucket while
/// one prunes).
#[test]
fn a_pruned_point_is_excused_while_another_disk_of_its_name_has_that_sequence() {
    let dir = tempfile::tempdir().unwrap();
    let k = keys();
    let vault = Vault::init(Box::new(LocalBackend::create(&dir.path().join("vault")).unwrap()), &k).unwrap();
    let (a, b) = ([1; 16], [2; 16]);
    let log_a = audit::AuditLog::open(&dir.path().join("audit-a"), &k).unwrap();
    let log_b = audit::AuditLog::open(&dir.path().join("audit-b"), &k).unwrap();
    for seq in 1..=2 {
        commit_of(&vault, &log_a, &k, a, seq);
        commit_of(&vault, &log_b, &k, b, seq);
    }
    let r = audit::check_links(&vault, &k).unwrap();
    assert!(r.problems.is_empty() && r.commits == 4, "{:?}", r.problems);

    vault.delete_root(&Vault::chain_of(&k, &a), 1).unwrap();
    log_a.append(&audit::Event::new("prune", Some("d1"), json!({ "pruned": [1], "kept": [2] }))).unwrap();
    log_a.sync_to(vault.backend()).unwrap();
    let r = audit::check_links(&vault, &k).unwrap();
    assert!(r.problems.is_empty(), "{:?}", r.problems);

    // Without a prune record, A's lost point is still a problem (named as a
    // point that differs: B's root of that name and sequence is there).
    vault.delete_root(&Vault::chain_of(&k, &a), 2).unwrap();
    let r = audit::check_links(&vault, &k).unwrap();
    let names: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
    assert!(names.len() == 1 && names[0].contains("point 2"), "{names:?}");
}
