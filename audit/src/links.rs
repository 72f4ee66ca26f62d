//! The cross-links between a vault's points and the audit logs copied to it
//! (issue 12, hole 8), checked with the key.
//!
//! - **Points name the log.** A point's root carries the head of the writing
//!   host's audit log at its cut (`disk_format::AuditHead`: log id, seq, MAC,
//!   under the root's MAC). The vault's copy of that log must hold that
//!   record: one that ends before it lost its newest segments.
//! - **The log names the points.** Each `cycle.committed` record names the
//!   point and root it committed, and every record about a disk names the
//!   disk's newest committed point (`newest_point`), each with the vault it
//!   is in (a log is copied whole to every vault of its key). The vault must
//!   hold the roots that name it, unless a `prune` record of the same log
//!   removed the point.
//!
//! Deleting a vault's newest roots, or its newest audit segments, is then
//! seen from the other side. What stays out of reach of any check inside the
//! vault is a rollback of both, together, to an earlier consistent state:
//! only a party that remembers a newer state can see that (the protected
//! host's state file and home log; see README, threat model).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use disk_format::{Keys, RootExtension, RootId};
use vault::Vault;

use crate::error::AuditError;
use crate::record::LogId;
use crate::verify::{scan_vault, LogReport, Problem, ProblemKind, Record};

/// What [`check_links`] looked at, and what it found.
#[derive(Debug, Default)]
pub struct LinkReport {
    /// Points whose root was read with the key.
    pub points: u64,
    /// Points that name an audit head.
    pub heads: u64,
    /// Points the log names (committed, or newest at a record about the
    /// disk), checked against the vault's points.
    pub commits: u64,
    /// What disagrees.
    pub problems: Vec<Problem>,
}

/// Checks both directions of the links in `vault` (its points, and its
/// copies of the logs of `keys`). Points whose root does not decode with the
/// key are skipped here: the vault's own check reports them.
pub fn check_links(vault: &Vault, keys: &Keys) -> Result<LinkReport, AuditError> {
    let loc = vault.backend().location();
    let verr = AuditError::vault;
    let mut records: BTreeMap<LogId, Vec<Record>> = BTreeMap::new();
    let reports = scan_vault(vault.backend(), keys, &mut |r| {
        if r.authentic {
            records.entry(r.log_id).or_default().push(r.clone());
        }
    })?;
    let logs: HashMap<LogId, &LogReport> = reports.iter().filter_map(|r| Some((r.log_id?, r))).collect();
    let mut report = LinkReport::default();
    // Points -> log.
    // Every point that decodes with the key, by disk name and sequence (two
    // disks of one name may both have a point of a sequence), and every
    // root id; the sequences of roots that do not decode (the vault check
    // reports them; a format-2 root that does not open names no disk).
    let mut roots: HashMap<(String, u64), Vec<RootId>> = HashMap::new();
    let mut ids: HashSet<RootId> = HashSet::new();
    let mut undecodable: HashSet<u64> = HashSet::new();
    for chain in vault.disks().map_err(verr(format!("listing the points in {loc}")))? {
        for seq in vault.sequences(&chain).map_err(verr(format!("listing the points of {chain} in {loc}")))? {
            let Ok((root, id)) = vault.load_root_with_id(&chain, seq, Some(keys)) else {
                let _ = undecodable.insert(seq);
                continue;
            };
            roots.entry((root.disk_name.clone(), seq)).or_default().push(id);
            let _ = ids.insert(id);
            report.points += 1;
            let Some(head) = RootExtension::decode(&root.extension, keys).ok().and_then(|e| e.audit_head) else {
                continue;
            };
            report.heads += 1;
            let log_id = LogId(head.log_id);
            let (place, last, mac) = match logs.get(&log_id) {
                Some(l) => (l.place.clone(), l.last_seq, l.mac_of(head.seq)),
                None => (format!("{loc}: audit/{}/{log_id}", keys.fingerprint()), 0, None),
            };
            if mac != Some(head.mac) {
                report.problems.push(Problem {
                    place,
                    seq: Some(head.seq),
                    offset: None,
                    kind: ProblemKind::LostRecords { disk: root.disk_name.clone(), point: seq, seq: head.seq, last },
                });
            }
        }
    }
    // Log -> points.
    let vault_id = vault.config().vault_id.to_string();
    for (log_id, recs) in &records {
        let place = logs.get(log_id).map_or_else(|| loc.clone(), |l| l.place.clone());
        let pruned: BTreeSet<(String, u64)> = recs
            .iter()
            .filter_map(|r| r.body.as_ref())
            .filter(|b| b.kind == "prune")
            .flat_map(|b| {
                let disk = b.disk.clone().unwrap_or_default();
                let list = b.details.get("pruned").and_then(|p| p.as_array()).cloned().unwrap_or_default();
                list.into_iter().filter_map(move |p| p.as_u64().map(|s| (disk.clone(), s)))
            })
            .collect();
        let mut seen = BTreeSet::new();
        for r in recs {
            let Some(b) = r.body.as_ref() else { continue };
            let Some(disk) = b.disk.clone() else { continue };
            // A committed point, or the newest point a record about the disk names.
            let named = match b.details.get("newest_point") {
                Some(n) => n,
                None if b.kind == "cycle.committed" => &b.details,
                None => continue,
            };
            // The log is copied whole to every vault of its key: only what
            // names this vault is this vault's to hold (older records, which
            // do not name a vault, are not checked).
            if named.get("vault").and_then(|v| v.as_str()) != Some(vault_id.as_str()) {
                continue;
            }
            let point_key = if b.details.get("newest_point").is_some() { "id" } else { "point" };
            let Some(point) = named.get(point_key).and_then(|p| p.as_u64()) else { continue };
            if !seen.insert((disk.clone(), point)) {
                continue;
            }
            report.commits += 1;
            let want = named.get("root").and_then(|r| r.as_str()).and_then(RootId::from_hex);
            if want.is_some_and(|w| ids.contains(&w)) {
                continue; // the very root the record names
            }
            // Pruned on record first: a root found under the same name and
            // sequence is then another disk's of that name (another host's
            // `d1`, whose chain has its own point of that sequence), not
            // this record's point replaced.
            if pruned.contains(&(disk.clone(), point)) {
                continue;
            }
            let kind = match roots.get(&(disk.clone(), point)) {
                Some(found) if want.is_some_and(|w| !found.contains(&w)) => ProblemKind::PointDiffers { disk, point },
                Some(_) => continue,
                // Present but damaged: the vault check's to report.
                None if undecodable.contains(&point) => continue,
                None => ProblemKind::LostPoint { disk, point },
            };
            report.problems.push(Problem { place: place.clone(), seq: Some(r.seq), offset: Some(r.offset), kind });
        }
    }
    Ok(report)
}
