//! Which point a cycle may build on (DESIGN.md invariant 8).
//!
//! A disk's dirty maps hold the blocks written since one particular point:
//! the last one a cycle committed from its state file, which the state file
//! records (`disk_format::LastPoint`). An incremental cycle is right only if
//! it builds on that point. The vault's newest point of the disk is usually
//! it, but need not be:
//!
//! - the vault was rolled back (restored from an older snapshot of its
//!   storage) or its newest roots were deleted;
//! - the disk was re-pointed to another vault and back (`protect --vault`);
//! - another writer added points under the disk's name (a second host with a
//!   disk of the same name, a copied state file), or the vault forked;
//! - the state file records nothing (new, reset, or written by a version
//!   that did not record points).
//!
//! In each case this module says so, and the cycle reads and verifies the
//! whole disk instead of trusting the dirty maps. One case is not a break: a
//! cycle committed point N+1 on recorded point N and the process died before
//! it could record N+1 (or the root landed although its write reported a
//! failure, and the cycle aborted its cut). Bits leave the maps only when a
//! point is recorded, so the maps still hold every block written since N's
//! cut, a superset of what changed since any later cut of this disk: building
//! on a descendant of N (by parent links, cut later than N) is right. The
//! simulation found the two-step form of this (seed 1608: a lost release,
//! then a root that landed while its put failed).

use disk_format::ids::{RootId, VaultId};
use disk_format::point::Root;
use disk_format::LastPoint;

/// What the cycle may build on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    /// The vault has no point of this disk and the host recorded none from
    /// this vault: a first cycle (full, nothing wrong).
    First,
    /// The vault's newest point is the recorded one.
    Recorded,
    /// The vault's newest point descends from the recorded one, committed
    /// from cuts whose release was never recorded (the process died in
    /// between, or the root landed after its write reported a failure).
    Unrecorded,
    /// The dirty maps are not relative to the vault's newest point: verify
    /// the whole disk.
    Broken(Break),
}

/// Why the dirty maps cannot be trusted against the vault's newest point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Break {
    /// The state file records no committed point, but the vault has points.
    NoRecord {
        /// The vault's newest point.
        newest: u64,
    },
    /// The last point was committed to another vault.
    OtherVault {
        /// That vault.
        vault: VaultId,
        /// The point committed there.
        sequence: u64,
    },
    /// The host committed a point to this vault, which now holds none.
    Emptied {
        /// The point the host committed.
        recorded: u64,
    },
    /// The vault's newest point is older than the one the host committed.
    RolledBack {
        /// The point the host committed.
        recorded: u64,
        /// The vault's newest.
        newest: u64,
    },
    /// The vault's newest point is another than the one the host committed
    /// (and not its unrecorded successor): another writer, or a fork.
    Diverged {
        /// The point the host committed.
        recorded: u64,
        /// Its root.
        recorded_root: RootId,
        /// The vault's newest.
        newest: u64,
    },
    /// The vault's newest point was cut from another disk of the same name.
    OtherDisk {
        /// The vault's newest.
        newest: u64,
    },
}

impl Break {
    /// Whether the vault has lost points this host committed (rolled back,
    /// emptied): the loudest kind, which `points`, `restore` and `failover`
    /// at the protected site also warn about.
    pub fn lost_points(&self) -> bool {
        matches!(self, Break::Emptied { .. } | Break::RolledBack { .. })
    }

    /// The operator's message, naming the disk.
    pub fn describe(&self, disk: &str) -> String {
        match self {
            Break::NoRecord { newest } => format!(
                "the state file of disk {disk:?} records no committed point (it is new, was reset, or was written \
                 by an older Lifeboat), so its dirty map says nothing about the vault's newest point {newest}"
            ),
            Break::OtherVault { vault, sequence } => format!(
                "disk {disk:?} last committed point {sequence} to another vault (id {vault}); its dirty map says \
                 nothing about this vault's points (was the disk re-pointed with `protect --vault`?)"
            ),
            Break::Emptied { recorded } => format!(
                "VAULT ROLLED BACK: this host committed point {recorded} of disk {disk:?} to this vault, but the \
                 vault holds no point of it now (its storage was rolled back or its roots deleted); check the \
                 vault's storage and its audit trail (`lifeboat audit verify`)"
            ),
            Break::RolledBack { recorded, newest } => format!(
                "VAULT ROLLED BACK: this host committed point {recorded} of disk {disk:?}, but the vault's newest \
                 point of it is {newest} (its storage was rolled back or its newest roots deleted); check the \
                 vault's storage and its audit trail (`lifeboat audit verify`)"
            ),
            Break::Diverged { recorded, recorded_root, newest } => format!(
                "the vault's newest point {newest} of disk {disk:?} is not the point {recorded} (root {recorded_root}) \
                 this host committed last: another host writes points under this disk's name, or the vault was \
                 forked"
            ),
            Break::OtherDisk { newest } => format!(
                "point {newest} of {disk:?} was cut from another disk of that name (another host, a recovered \
                 copy shipping back, or the disk protected anew)"
            ),
        }
    }
}

/// How many points past the recorded one the cycle follows parent links
/// back through before it calls the chain diverged.
pub const MAX_UNRECORDED: u64 = 16;

/// Judges the vault's newest point of the disk (`newest`, with its root id)
/// against what the host recorded (`recorded`) for a vault of id `vault`.
/// `point(sequence)` reads another point of the disk (with its id), for
/// following the newest one's parents back to the recorded one.
pub fn judge(
    recorded: Option<&LastPoint>,
    vault: VaultId,
    disk_id: [u8; 16],
    newest: Option<(&Root, RootId)>,
    point: &mut dyn FnMut(u64) -> Option<(Root, RootId)>,
) -> Base {
    let recorded_here = recorded.filter(|r| r.vault_id == vault);
    match (recorded, recorded_here, newest) {
        (_, _, Some((root, _))) if root.disk_id != disk_id => Base::Broken(Break::OtherDisk { newest: root.sequence }),
        (None, _, None) => Base::First,
        (Some(r), None, _) => Base::Broken(Break::OtherVault { vault: r.vault_id, sequence: r.sequence }),
        (None, _, Some((root, _))) => Base::Broken(Break::NoRecord { newest: root.sequence }),
        (_, Some(r), None) => Base::Broken(Break::Emptied { recorded: r.sequence }),
        (_, Some(r), Some((root, id))) => {
            if id == r.root_id && root.sequence == r.sequence {
                Base::Recorded
            } else if descends(r, disk_id, root, point) {
                Base::Unrecorded
            } else if root.sequence < r.sequence {
                Base::Broken(Break::RolledBack { recorded: r.sequence, newest: root.sequence })
            } else {
                Base::Broken(Break::Diverged { recorded: r.sequence, recorded_root: r.root_id, newest: root.sequence })
            }
        }
    }
}

/// At the protected site (`points`, `restore`, `failover`): whether the
/// vault lost points this host committed to it, given the disk's `points`
/// there ([`vault::Vault::disk_points`]). `None` when the vault shows the
/// recorded point (with the same root id) or newer ones without it
/// (retention may prune it once it is not the newest), or when the point
/// was recorded in another vault.
pub fn check_vault(
    recorded: Option<&LastPoint>,
    vault: &vault::Vault,
    points: &[vault::PointSummary],
) -> Result<Option<Break>, vault::VaultError> {
    let Some(r) = recorded.filter(|r| r.vault_id == vault.config().vault_id) else { return Ok(None) };
    let newest = points.iter().map(|p| p.sequence).max();
    if let Some(p) = points.iter().find(|p| p.sequence == r.sequence) {
        let id = match vault.load_root_with_id(&p.chain, r.sequence, None) {
            Ok((_, id)) => id,
            // A damaged root is reported as damage by whoever lists it.
            Err(vault::VaultError::Damaged { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        return Ok((id != r.root_id).then_some(Break::Diverged {
            recorded: r.sequence,
            recorded_root: r.root_id,
            newest: newest.unwrap_or(0),
        }));
    }
    Ok(match newest {
        None => Some(Break::Emptied { recorded: r.sequence }),
        Some(newest) if newest < r.sequence => Some(Break::RolledBack { recorded: r.sequence, newest }),
        Some(_) => None,
    })
}

/// Whether `root` descends from the recorded point through points of this
/// disk cut after it, each the parent of the next, at most
/// [`MAX_UNRECORDED`] sequences apart.
fn descends(
    r: &LastPoint,
    disk_id: [u8; 16],
    root: &Root,
    point: &mut dyn FnMut(u64) -> Option<(Root, RootId)>,
) -> bool {
    if root.sequence <= r.sequence || root.sequence - r.sequence > MAX_UNRECORDED {
        return false;
    }
    let mut child = root.clone();
    loop {
        if child.disk_id != disk_id || child.cut_generation <= r.cut_generation {
            return false;
        }
        let Some(parent) = child.parent else { return false };
        if parent == r.root_id {
            return true;
        }
        // The parent is one of the points between (sequences are not
        // reused, but a failed cycle may leave a gap).
        let found = (r.sequence + 1..child.sequence).rev().find_map(|seq| point(seq).filter(|(_, id)| *id == parent));
        match found {
            Some((p, _)) => child = p,
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use disk_format::point::Consistency;
    use disk_format::Geometry;

    const DISK: [u8; 16] = [1; 16];
    const VAULT: VaultId = VaultId([2; 16]);

    fn root(sequence: u64, parent: Option<RootId>, cut_generation: u64) -> Root {
        Root {
            consistency: Consistency::Crash,
            disk_id: DISK,
            disk_name: "d".into(),
            host: String::new(),
            namespace: None,
            sequence,
            cut_time_ns: 1,
            cut_generation,
            geometry: Geometry::new(1 << 20, 65536).unwrap(),
            bytes_shipped: 0,
            parent,
            pages: Vec::new(),
            page_packs: Vec::new(),
            page_pack_of: Vec::new(),
            extension: Vec::new(),
        }
    }

    fn rec(sequence: u64, root: RootId, cut_generation: u64) -> LastPoint {
        LastPoint { vault_id: VAULT, sequence, root_id: root, cut_generation }
    }

    fn none(_: u64) -> Option<(Root, RootId)> {
        None
    }

    #[test]
    fn every_case_is_told_apart() {
        let (a, b) = (RootId([10; 32]), RootId([11; 32]));
        let r5 = rec(5, a, 9);
        assert_eq!(judge(None, VAULT, DISK, None, &mut none), Base::First);
        assert_eq!(judge(Some(&r5), VAULT, DISK, Some((&root(5, None, 9), a)), &mut none), Base::Recorded);
        // Committed on 5, died before recording 6.
        assert_eq!(judge(Some(&r5), VAULT, DISK, Some((&root(6, Some(a), 10), b)), &mut none), Base::Unrecorded);
        // A child of 5 from an older cut is not ours.
        assert!(matches!(
            judge(Some(&r5), VAULT, DISK, Some((&root(6, Some(a), 9), b)), &mut none),
            Base::Broken(Break::Diverged { .. })
        ));
        // Point 7 on 6 on 5: the host never committed 6, so 7 is not its successor.
        assert!(matches!(
            judge(Some(&r5), VAULT, DISK, Some((&root(7, Some(b), 12), RootId([12; 32]))), &mut none),
            Base::Broken(Break::Diverged { recorded: 5, newest: 7, .. })
        ));
        assert_eq!(
            judge(Some(&r5), VAULT, DISK, Some((&root(3, None, 4), b)), &mut none),
            Base::Broken(Break::RolledBack { recorded: 5, newest: 3 })
        );
        // Same sequence, another root: a fork.
        assert!(matches!(
            judge(Some(&r5), VAULT, DISK, Some((&root(5, None, 9), b)), &mut none),
            Base::Broken(Break::Diverged { .. })
        ));
        assert_eq!(judge(Some(&r5), VAULT, DISK, None, &mut none), Base::Broken(Break::Emptied { recorded: 5 }));
        assert_eq!(
            judge(Some(&r5), VaultId([3; 16]), DISK, None, &mut none),
            Base::Broken(Break::OtherVault { vault: VAULT, sequence: 5 })
        );
        assert_eq!(
            judge(None, VAULT, DISK, Some((&root(2, None, 1), a)), &mut none),
            Base::Broken(Break::NoRecord { newest: 2 })
        );
        let mut other = root(5, None, 9);
        other.disk_id = [9; 16];
        assert_eq!(
            judge(Some(&r5), VAULT, DISK, Some((&other, a)), &mut none),
            Base::Broken(Break::OtherDisk { newest: 5 })
        );
        assert!(Break::RolledBack { recorded: 5, newest: 3 }.lost_points());
        // 7 on 6 on 5 where the host never recorded 6 or 7: found through 6.
        let (c, d) = (RootId([12; 32]), RootId([13; 32]));
        let six = root(6, Some(a), 10);
        let mut lookup = |seq: u64| (seq == 6).then(|| (six.clone(), b));
        assert_eq!(judge(Some(&r5), VAULT, DISK, Some((&root(7, Some(b), 11), c)), &mut lookup), Base::Unrecorded);
        // A gap (a failed cycle's number) is skipped over.
        assert_eq!(judge(Some(&r5), VAULT, DISK, Some((&root(8, Some(b), 12), d)), &mut lookup), Base::Unrecorded);
        // An ancestor cut before the recorded point is not a descendant.
        let old_six = root(6, Some(a), 8);
        let mut lookup = |seq: u64| (seq == 6).then(|| (old_six.clone(), b));
        assert!(matches!(
            judge(Some(&r5), VAULT, DISK, Some((&root(7, Some(b), 11), c)), &mut lookup),
            Base::Broken(Break::Diverged { .. })
        ));
        assert!(!Break::NoRecord { newest: 3 }.lost_points());
    }
}
