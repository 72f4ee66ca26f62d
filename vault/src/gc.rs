//! Garbage collection: delete the map pages and packs no point references,
//! without the key.
//!
//! **Mark**: every root, decoded without the key (its page ids are all GC
//! needs; a forged root can only make GC keep too much), then every page it
//! names (hashed against its id and decoded), then every block id those pages
//! name. **Sweep**: delete every page no root names, and every pack none of
//! whose blocks is marked (its blocks are read from its own index, a ranged
//! read of its tail). A pack holding some live blocks is kept whole; packs
//! that are mostly garbage are listed in [`GcReport::mostly_garbage`]
//! (repacking them is not done yet).
//!
//! **Deleting is two steps.** Under the lease, a swept object is *discarded*
//! ([`crate::Backend::discard`]: the local backend renames it into `trash/`),
//! which removes it from every listing at once; its space is freed after the
//! lease is released ([`Vault::empty_trash`]). Unlinking is the slow part
//! (seconds for a few hundred packs on the test machine), and while GC holds
//! its lease no cycle can start. [`Vault::gc`] does both steps; the agent
//! calls [`Vault::collect`] and empties the trash on another thread, so the
//! next cycle starts on time.
//!
//! When unsure, keep: a pack whose index cannot be read, or whose name is not
//! a pack id, is kept and listed. A root that does not decode, or a page a
//! root names that is missing or damaged, means GC cannot know what is live:
//! it deletes nothing and says which object ([`VaultError::GcUnsafe`]); run
//! `lifeboat vault check`, and prune or repair the damaged point first.
//!
//! # Racing the shipper: the rule
//!
//! A cycle writes its packs and pages **before** its root, and it
//! deduplicates against every pack in the vault — garbage included — and
//! reuses the previous point's pages. So while a cycle runs, objects that no
//! root names yet (or any more) are about to be named: a GC that swept them
//! would commit a root whose blocks are gone. Timestamps cannot tell "new"
//! from "old garbage" safely (backend times are not trusted; see STYLE.md on
//! Proxmox's atime bug), so cycles and GC **exclude each other** through
//! leases ([`crate::lease`]), a write-then-look handshake on both sides:
//!
//! - a cycle writes `leases/cycle/DISK/TOKEN` ([`Vault::begin_cycle`]), *then*
//!   lists `leases/gc/`; if a live GC lease is there it removes its own lease
//!   and fails with [`VaultError::Busy`] (the agent retries it within seconds;
//!   its blocks stay dirty, nothing is lost);
//! - GC writes `leases/gc/TOKEN`, *then* lists all leases; if a live cycle
//!   lease (or another GC's) is there it removes its own and refuses with
//!   [`VaultError::Busy`], naming the holder.
//!
//! Each side makes itself visible before it looks, so with a backend whose
//! listing shows every completed put (the [`crate::Backend`] contract) at
//! least one of two that start together sees the other: they never run at
//! once (both may back off; each retries later). The cycle holds its lease
//! from before it reads the latest root and builds the block index until its
//! root is durable, so every object it reuses or writes is named by a root
//! before any GC can start. Crashed holders: a lease is ignored (and removed)
//! only when it is provably stale — same host, and its process is gone or the
//! host rebooted, or it is this process's own and no longer held (a failed
//! delete) ([`crate::lease`]); a lease from a crashed process on
//! another host blocks GC until an operator breaks it ([`Vault::break_lease`]).
//!
//! Restores and prune: a restore holds its point ([`Vault::hold`]) before it
//! reads the root, and prune skips held points. GC lists roots **before**
//! leases, so a point whose root was pruned in the window between a restore's
//! lease and prune's listing is caught: if a live point lease names a point
//! whose root GC did not see, or a root vanishes while GC reads it and is held,
//! GC deletes nothing ([`VaultError::Busy`]) until that restore is over.
//!
//! As a second line (for a shipper that takes no lease), packs and pages are
//! listed before the roots: an object written after that listing is never a
//! candidate. That does not cover dedup against old garbage, which is why the
//! lease is the rule.
//!
//! A dry run reads everything and deletes nothing: it writes no lease either,
//! so it does not wait for cycles, and its figures are what a run would do
//! now.

use std::collections::HashSet;
use std::time::Duration;

use disk_format::{BlockId, MapPage, PackId, PageId};

use crate::backend::Kind;
use crate::error::VaultError;
use crate::index::read_pack_tail;
use crate::lease::Purpose;
use crate::store::{decode_root, parse_root_name, Vault};

/// A pack is listed as mostly garbage when at least this fraction (1/N) of
/// its blob bytes belong to no point.
const MOSTLY_GARBAGE_DIVISOR: u64 = 2;

/// A kept pack of which most is garbage (a candidate for repacking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GarbagePack {
    /// The pack's name.
    pub name: String,
    /// Its size in bytes.
    pub len: u64,
    /// Bytes of blobs no point references.
    pub garbage_bytes: u64,
}

/// What [`Vault::gc`] did (or, in a dry run, would do).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct GcReport {
    /// Whether this was a dry run (nothing deleted).
    pub dry_run: bool,
    /// Roots marked from.
    pub roots: u64,
    /// Distinct pages referenced.
    pub live_pages: u64,
    /// Distinct block ids referenced.
    pub live_blocks: u64,
    /// Pages deleted (or that would be), by name.
    pub pages_deleted: Vec<String>,
    /// Their total size.
    pub page_bytes_deleted: u64,
    /// Packs deleted (or that would be), by name.
    pub packs_deleted: Vec<String>,
    /// Their total size.
    pub pack_bytes_deleted: u64,
    /// Packs kept.
    pub packs_kept: u64,
    /// Their total size.
    pub pack_bytes_kept: u64,
    /// Kept packs that are mostly garbage.
    pub mostly_garbage: Vec<GarbagePack>,
    /// Packs kept because their index could not be read: (name, why).
    pub unreadable_packs: Vec<(String, String)>,
    /// Stale leases removed.
    pub stale_leases_removed: Vec<String>,
    /// Objects and bytes freed from the trash by [`Vault::gc`]: this
    /// collection's and any an earlier one left there (see
    /// [`Vault::collect`]). Zero from `collect` and dry runs.
    pub trash_freed: (u64, u64),
    /// Unfinished objects (a writer killed mid-write) older than
    /// [`UNFINISHED_AGE`] removed (or that would be), with their sizes.
    pub unfinished_removed: Vec<(String, u64)>,
    /// In an immutable vault: objects whose lock was extended (see
    /// [`crate::Backend::extend_locks`]).
    pub locks_extended: u64,
    /// Garbage the store still keeps under a lock or immutability policy
    /// ([`VaultError::Locked`]), as `KIND/NAME`: kept, and collected by a
    /// later collection once the lock has ended.
    pub locked_kept: Vec<String>,
    /// Every object a point uses (marked; handed to `extend_locks`).
    pub(crate) live: Vec<(Kind, String)>,
}

impl GcReport {
    /// Bytes of the unfinished objects removed (or that would be).
    pub fn unfinished_bytes(&self) -> u64 {
        self.unfinished_removed.iter().map(|(_, n)| n).sum()
    }
}

/// How often a waiting garbage collection looks whether the cycles in its
/// way are over ([`Vault::gc_within`]): a list of the lease directory, so
/// cheap, and a gap between cycles lasts seconds.
const GC_POLL: Duration = Duration::from_secs(1);

/// How old an object that was never committed must be before garbage
/// collection removes it: far longer than any write takes (a pack streams
/// in seconds), so a writer still at work is never touched, also on a share
/// whose clock is a little off.
pub const UNFINISHED_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Vault {
    /// Collects garbage (see the module documentation) and frees its space.
    /// `dry_run` deletes nothing and reports what would be deleted.
    pub fn gc(&self, dry_run: bool) -> Result<GcReport, VaultError> {
        self.gc_within(dry_run, Duration::ZERO, &mut |_| {})
    }

    /// [`Vault::gc`] that, while replication cycles (or another collection)
    /// hold the vault, waits up to `wait` for a gap between them instead of
    /// refusing at once, looking once a second. `waiting` hears each
    /// refusal that starts a wait, naming the lease in the way. This is what
    /// a recovery site's scheduled collection runs: hosts that replicate
    /// every 30 s leave gaps of seconds, which a collection that refuses at
    /// once meets only by luck (and never when its period is in step with
    /// the cycles').
    pub fn gc_within(
        &self,
        dry_run: bool,
        wait: Duration,
        waiting: &mut dyn FnMut(&VaultError),
    ) -> Result<GcReport, VaultError> {
        let mut report = self.collect_within(dry_run, wait, waiting)?;
        if !dry_run {
            report.trash_freed = self.empty_trash()?;
        }
        Ok(report)
    }

    /// Collects garbage like [`Vault::gc`] but only *discards* it
    /// ([`crate::Backend::discard`]): the deleted objects leave the vault's
    /// listings before this returns, and their space is freed by
    /// [`Vault::empty_trash`], which the caller runs when it likes — after
    /// the lease is released, alongside the next cycle.
    pub fn collect(&self, dry_run: bool) -> Result<GcReport, VaultError> {
        self.collect_within(dry_run, Duration::ZERO, &mut |_| {})
    }

    /// [`Vault::collect`], waiting for the cycles in its way as
    /// [`Vault::gc_within`] does (a zero `wait` refuses at once). In an
    /// immutable vault ([`crate::immutability`]), once the lease is
    /// released, every object a point uses is kept locked for at least half
    /// the vault's immutable days more ([`crate::Backend::extend_locks`]):
    /// the packs a point shares with older points were locked from *their*
    /// write. Outside the lease because it asks the store about every live
    /// object, and a lock extended while a cycle runs harms nothing.
    fn collect_within(
        &self,
        dry_run: bool,
        wait: Duration,
        waiting: &mut dyn FnMut(&VaultError),
    ) -> Result<GcReport, VaultError> {
        let mut report = self.sweep(dry_run, wait, waiting)?;
        let live = std::mem::take(&mut report.live);
        if !dry_run {
            if let Some(days) = self.immutability_promised()? {
                report.locks_extended = self.backend().extend_locks(&live, days.div_ceil(2), days)?;
            }
        }
        Ok(report)
    }

    /// Marks and sweeps under the GC lease; `report.live` lists every
    /// object a point uses.
    fn sweep(
        &self,
        dry_run: bool,
        wait: Duration,
        waiting: &mut dyn FnMut(&VaultError),
    ) -> Result<GcReport, VaultError> {
        let _lease = if dry_run { None } else { Some(self.begin_gc_within(wait, GC_POLL, waiting)?) };
        let location = self.backend().location();
        let mut report = GcReport { dry_run, ..GcReport::default() };

        // Candidates first (see "a second line" above), then roots, then
        // leases (see "Restores and prune").
        let pack_names = self.backend().list(Kind::Pack, "")?;
        let page_names = self.backend().list(Kind::Page, "")?;
        let roots = self.backend().list(Kind::Root, "")?;
        let leases = self.leases("")?;
        let seen: HashSet<(&str, u64)> = roots.iter().filter_map(|n| parse_root_name(n)).collect();
        let held: HashSet<(String, u64)> = leases
            .iter()
            .filter(|l| l.is_live())
            .filter_map(|l| match &l.purpose {
                Purpose::Point { disk, sequence } => Some((disk.clone(), *sequence)),
                _ => None,
            })
            .collect();
        let busy = |lease: String| VaultError::Busy {
            location: location.clone(),
            action: "garbage collection".into(),
            lease,
            next: "the point being restored was pruned meanwhile; run garbage collection again when the restore \
                   is over"
                .into(),
        };
        if let Some(l) = leases.iter().find(|l| {
            l.is_live()
                && matches!(&l.purpose, Purpose::Point { disk, sequence } if !seen.contains(&(disk.as_str(), *sequence)))
        }) {
            return Err(busy(l.describe()));
        }
        if !dry_run {
            report.stale_leases_removed = self.remove_stale(&leases)?;
        }
        report.unfinished_removed = self.backend().sweep_unfinished(UNFINISHED_AGE, dry_run)?;

        // Mark.
        let unsafe_ =
            |object: String, detail: String| VaultError::GcUnsafe { location: location.clone(), object, detail };
        let mut live_pages: HashSet<PageId> = HashSet::new();
        let mut live_page_packs: HashSet<PageId> = HashSet::new();
        let mut live_alone: HashSet<PageId> = HashSet::new(); // pages stored as objects of their own
        let mut live_blocks: HashSet<BlockId> = HashSet::new();
        for name in &roots {
            let object = format!("roots/{name}");
            let bytes = match self.backend().get(Kind::Root, name) {
                Err(VaultError::NotFound { .. }) => {
                    // Pruned meanwhile: its objects are garbage, unless a
                    // restore holds it.
                    match parse_root_name(name) {
                        Some((d, s)) if held.contains(&(d.to_string(), s)) => {
                            return Err(busy(format!("a restore of point {d}/{s}")))
                        }
                        _ => continue,
                    }
                }
                other => other?,
            };
            let root = decode_root(name, &bytes, None).map_err(|(damage, detail)| {
                unsafe_(object.clone(), format!("is {damage} ({detail}), so what it references is unknown"))
            })?;
            report.roots += 1;
            live_page_packs.extend(root.page_packs.iter().copied());
            live_alone.extend(
                (0u64..)
                    .zip(&root.pages)
                    .filter(|(p, id)| !id.is_zero() && root.page_pack(*p).is_none())
                    .map(|(_, id)| *id),
            );
            // The pages no root read so far named, fetched together (from
            // page packs: an index read per pack, a read per run of pages).
            let new: Vec<u64> = (0u64..)
                .zip(&root.pages)
                .filter(|(_, id)| !id.is_zero() && live_pages.insert(**id))
                .map(|(p, _)| p)
                .collect();
            let fetched = self.load_pages(&object, &root, &new).map_err(|e| match e {
                VaultError::Damaged { object: page_object, detail, .. } => unsafe_(
                    page_object,
                    format!(
                        "({detail}, for {object}) cannot be read, so the blocks it named are unknown; run `lifeboat \
                         vault check` and prune the damaged point"
                    ),
                ),
                other => other,
            })?;
            for p in new {
                let id = root.pages[crate::pages::ix(p)];
                let bytes = &fetched[&p];
                let page_object = match root.page_pack(p) {
                    Some(pack) => format!("pages/{pack}"),
                    None => format!("pages/{id}"),
                };
                let page = if id.matches(bytes) {
                    MapPage::decode(bytes).map_err(|e| e.to_string())
                } else {
                    Err("its contents do not hash to its name".to_string())
                };
                let page = page.map_err(|e| {
                    unsafe_(
                        page_object.clone(),
                        format!(
                            "(map page {p} of {object}) is damaged ({e}), so the blocks it named are unknown; run \
                             `lifeboat vault check` and prune the damaged point"
                        ),
                    )
                })?;
                live_blocks.extend(page.entries.iter().filter(|b| !b.is_zero()));
            }
        }
        report.live_pages = live_pages.len() as u64;
        report.live_blocks = live_blocks.len() as u64;
        report.live.extend(roots.iter().map(|n| (Kind::Root, n.clone())));
        report.live.extend(live_alone.iter().chain(&live_page_packs).map(|p| (Kind::Page, p.to_string())));
        live_pages.extend(live_page_packs); // a page pack is kept like a page
        for name in [crate::store::CONFIG_NAME, crate::immutability::PROMISE_NAME] {
            report.live.push((Kind::Config, name.to_string()));
        }

        // Sweep pages.
        for name in &page_names {
            if PageId::from_hex(name).is_some_and(|id| live_pages.contains(&id)) {
                continue;
            }
            if PageId::from_hex(name).is_none() {
                continue; // not ours to judge: `check` reports it
            }
            let Some(len) = self.backend().size(Kind::Page, name)? else { continue };
            if !dry_run {
                match self.backend().discard(Kind::Page, name) {
                    Ok(()) | Err(VaultError::NotFound { .. }) => {}
                    Err(VaultError::Locked { .. }) => {
                        report.locked_kept.push(format!("pages/{name}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            report.pages_deleted.push(name.clone());
            report.page_bytes_deleted += len;
        }

        // Sweep packs.
        for name in &pack_names {
            if PackId::from_hex(name).is_none() {
                report.unreadable_packs.push((name.clone(), "not a pack name (64 hex digits)".into()));
                continue;
            }
            let tail = match read_pack_tail(self.backend(), name)? {
                Ok(tail) => tail,
                Err(why) => {
                    report.unreadable_packs.push((name.clone(), why));
                    continue;
                }
            };
            let entries = tail.index.entries();
            let garbage: u64 =
                entries.iter().filter(|e| !live_blocks.contains(&e.id)).map(|e| u64::from(e.blob_len)).sum();
            let total: u64 = entries.iter().map(|e| u64::from(e.blob_len)).sum();
            if entries.iter().any(|e| live_blocks.contains(&e.id)) {
                report.live.push((Kind::Pack, name.clone()));
                report.packs_kept += 1;
                report.pack_bytes_kept += tail.len;
                if garbage.saturating_mul(MOSTLY_GARBAGE_DIVISOR) >= total && garbage > 0 {
                    report.mostly_garbage.push(GarbagePack {
                        name: name.clone(),
                        len: tail.len,
                        garbage_bytes: garbage,
                    });
                }
                continue;
            }
            if !dry_run {
                match self.backend().discard(Kind::Pack, name) {
                    Ok(()) | Err(VaultError::NotFound { .. }) => {}
                    Err(VaultError::Locked { .. }) => {
                        report.locked_kept.push(format!("packs/{name}"));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            report.packs_deleted.push(name.clone());
            report.pack_bytes_deleted += tail.len;
        }
        Ok(report)
    }

    /// Frees the space of the objects garbage collection discarded:
    /// `(objects, bytes)`. Takes no lease and may run alongside cycles,
    /// restores and other collections: nothing refers to a discarded object.
    pub fn empty_trash(&self) -> Result<(u64, u64), VaultError> {
        self.backend().empty_trash()
    }
}
