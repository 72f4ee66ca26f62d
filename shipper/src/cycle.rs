//! One replication cycle, from cut to committed point.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crossbeam_channel::bounded;
use disk_format::ids::{BlockId, PageId, RootId};
use disk_format::keys::Keys;
use disk_format::map_page::MapBuilder;
use disk_format::pack::{FinishedPack, PackWriter};
use disk_format::point::{Consistency, Root};
use disk_format::LastPoint;
use filter::CutKind;
use vault::Vault;

use crate::chain::{self, Base, Break};
use crate::error::ShipError;
use crate::pack_out::{Chunk, ChunkOut, ToStorer, CHUNKS};
use crate::pipeline::{self, Sealed};
use crate::source::CutSource;

/// Packs are closed once they reach this size (the last one may be smaller).
pub const PACK_TARGET: u64 = 32 << 20;

/// How a cycle runs.
pub struct CycleOptions<'a> {
    /// The disk's name, sealed in every root (format-1 points, from before
    /// 2026-12-04, live under it in the vault).
    pub disk_name: &'a str,
    /// The disk's identity, sealed in every root; its roots live under the
    /// namespace the key gives it ([`vault::Vault::chain_of`]).
    pub disk_id: [u8; 16],
    /// This host's name, sealed in every root (`points` shows it).
    pub host: String,
    /// Hashing and sealing threads.
    pub workers: usize,
    /// Set from another thread to stop the cycle early (it is aborted and
    /// fails with [`ShipError::Cancelled`]; its blocks stay dirty).
    pub cancel: Option<&'a AtomicBool>,
    /// The wall clock, nanoseconds since the Unix epoch: a point's cut time.
    pub clock: &'a dyn Fn() -> u64,
    /// The root's extension (disk-format `root_ext`: the sealed VM
    /// definition); empty for a disk that belongs to no VM.
    pub extension: &'a [u8],
    /// Quiesces the guest around the cut, for an app-consistent point.
    pub cut_hook: Option<&'a dyn CutHook>,
}

/// What an app-consistent point runs around its cut: `before` quiesces the
/// guest (freezes its file systems, or runs the user's pre-cut hook), the
/// cut is taken (it only moves bits: the guest stays frozen for
/// microseconds plus the hooks' own time), then `after` resumes it. If
/// `before` fails the point is still taken, crash-consistent, with a
/// warning, and `after` still runs, so a half-done freeze is undone.
pub trait CutHook: Sync {
    /// Quiesce; an error says why the point will not be app-consistent.
    fn before(&self) -> Result<(), String>;
    /// Resume; an error is reported as a warning.
    fn after(&self) -> Result<(), String>;
    /// Whether a successful `before` makes the point app-consistent (a
    /// hook that only coordinates a group cut does not quiesce the guest).
    fn app_consistent(&self) -> bool {
        true
    }
    /// The root extension to write instead of `CycleOptions::extension`,
    /// asked after the cut (a group cut adds its id when it succeeded).
    fn root_extension(&self) -> Option<Vec<u8>> {
        None
    }
}

impl<'a> CycleOptions<'a> {
    /// Options with the system clock, no cancel flag, and one worker per CPU.
    pub fn new(disk_name: &'a str, disk_id: [u8; 16]) -> CycleOptions<'a> {
        CycleOptions {
            disk_name,
            disk_id,
            host: host_name(),
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
            cancel: None,
            clock: &system_clock,
            extension: &[],
            cut_hook: None,
        }
    }
}

/// This host's name (the kernel's), at most 64 bytes; empty if unreadable.
pub fn host_name() -> String {
    let mut name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
    while name.len() > disk_format::point::MAX_HOST_NAME {
        name.pop();
    }
    name
}

/// Nanoseconds since the Unix epoch by the system clock (0 before 1970).
pub fn system_clock() -> u64 {
    system::clock::now_ns()
}

/// Progress callbacks of a long cycle: the one progress trait of the
/// workspace (`vault::Progress`). A cycle reports one phase, "full sync" or
/// "changes", in bytes read.
pub use vault::Progress;

/// What a committed cycle did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CycleReport {
    /// Sequence number of the new point.
    pub sequence: u64,
    /// The whole disk was read: first cycle, or a verify after a suspect state.
    pub full: bool,
    /// Blocks read.
    pub blocks_read: u64,
    /// Blocks that were all zero.
    pub zero_blocks: u64,
    /// Blocks the vault already had (deduplicated).
    pub known_blocks: u64,
    /// Blocks sealed and stored.
    pub new_blocks: u64,
    /// Blocks the page cache served (read engine "page cache first", used
    /// by incremental cycles; the rest came from the device).
    pub cached_blocks: u64,
    /// Bytes of packs, pages and root written to the vault.
    pub bytes_shipped: u64,
    /// Packs written.
    pub packs: u64,
    /// New map pages written.
    pub pages: u64,
    /// Wall time of the cycle, milliseconds.
    pub millis: u64,
    /// Things the operator should know about a cycle that still committed.
    pub warnings: Vec<String>,
    /// The point was taken with the guest quiesced ([`CutHook`]).
    pub app_consistent: bool,
    /// The new point's root id.
    pub root_id: RootId,
    /// Why the cycle could not build on the vault's newest point, when the
    /// dirty maps were not relative to it (also among the `warnings`).
    pub chain_break: Option<Break>,
}

/// Consecutive runs (first, count) of sorted block indexes.
fn runs(blocks: &[u64]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &b in blocks {
        match out.last_mut() {
            Some((first, count)) if *first + *count == b => *count += 1,
            _ => out.push((b, 1)),
        }
    }
    out
}

/// The sequences of this disk's format-1 points (stored under its name
/// before root format 2), ascending; empty when there are none.
fn format_1_points(vault: &Vault, opts: &CycleOptions<'_>) -> Result<Vec<u64>, ShipError> {
    let points = vault.format_1_points(opts.disk_name)?;
    Ok(points.iter().filter(|p| p.damage.is_none() && p.disk_id == opts.disk_id).map(|p| p.sequence).collect())
}

/// Runs one cycle: cut, ship, commit. On any error the cut is aborted (its
/// blocks stay dirty for the next cycle) and no root is written.
pub fn run_cycle(
    source: &mut dyn CutSource,
    vault: &Vault,
    keys: &Keys,
    opts: &CycleOptions<'_>,
    progress: &mut dyn Progress,
) -> Result<CycleReport, ShipError> {
    let started = Instant::now();
    vault.check_key(keys)?;
    // A cycle and a garbage collection never overlap (vault/src/gc.rs): the
    // lease is taken before the cut, so a busy vault costs nothing to undo.
    // The disk's points live under its namespace; before root format 2 they
    // lived under its name, and the first cycle after the upgrade builds on
    // the newest of those that is this disk's.
    let own_chain = Vault::chain_of(keys, &opts.disk_id);
    let _cycle = vault.begin_cycle(&own_chain)?;
    let geometry = source.geometry();
    let mut warnings = Vec::new();
    let vault_id = vault.config().vault_id;
    let recorded = source.last_point()?;
    let mut last_sequence = vault.sequences(&own_chain)?.last().copied().unwrap_or(0);
    let legacy = if last_sequence == 0 { format_1_points(vault, opts)? } else { Vec::new() };
    let latest = match (last_sequence, legacy.last()) {
        (0, None) => Ok(None),
        (0, Some(&seq)) => {
            last_sequence = seq;
            vault.load_root_with_id(opts.disk_name, seq, Some(keys)).map(Some)
        }
        (seq, _) => vault.load_root_with_id(&own_chain, seq, Some(keys)).map(Some),
    };
    let (previous, previous_id, base) = match latest {
        // Only the point the dirty maps are relative to can be built on
        // (`chain`): anything else gets a full verify, and says why.
        Ok(newest) => {
            let mut point = |seq: u64| match legacy.contains(&seq) {
                true => vault.load_root_with_id(opts.disk_name, seq, Some(keys)).ok(),
                false => vault.load_root_with_id(&own_chain, seq, Some(keys)).ok(),
            };
            let newest_ref = newest.as_ref().map(|(r, id)| (r, *id));
            let base = chain::judge(recorded.as_ref(), vault_id, opts.disk_id, newest_ref, &mut point);
            let id = newest.as_ref().map(|(_, id)| *id);
            (newest.map(|(root, _)| root), id, base)
        }
        // The newest point cannot be built on: verify the whole disk instead,
        // as for a first cycle, and number the new point after it.
        Err(e @ vault::VaultError::Damaged { .. }) => {
            warnings.push(format!("{e}; this cycle reads and verifies the whole disk instead of building on it"));
            (None, None, Base::First)
        }
        Err(e) => return Err(e.into()),
    };
    let chain_break = match base {
        Base::Broken(b) => {
            warnings.push(format!(
                "{}; this cycle reads and verifies the whole disk (blocks the vault holds are not sent again)",
                b.describe(opts.disk_name)
            ));
            Some(b)
        }
        _ => None,
    };
    let reuse = previous.as_ref().filter(|r| r.geometry == geometry && chain_break.is_none());
    let mut full = reuse.is_none() || source.suspect()?;
    let kind = if full { CutKind::Full } else { CutKind::Dirty };
    let mut consistency = Consistency::Crash;
    let mut recut = false;
    // The point's time is the cut's, taken before the guest is resumed.
    let (mut info, mut cut_time_ns) = match opts.cut_hook {
        None => {
            let info = source.cut(kind)?;
            (info, (opts.clock)())
        }
        Some(hook) => {
            let quiesced = hook.before();
            let cut = source.cut(kind);
            let at = (opts.clock)();
            let resumed = hook.after();
            match (&quiesced, &cut) {
                (Ok(()), Ok(_)) if hook.app_consistent() => consistency = Consistency::App,
                (Ok(()), Ok(_)) => {}
                (Err(e), _) => warnings.push(format!("the point is crash-consistent, not app-consistent: {e}")),
                _ => {}
            }
            if let Err(e) = resumed {
                warnings.push(format!("resuming the guest after the cut: {e}"));
            }
            (cut?, at)
        }
    };
    // A full cycle sets every block: it never needs the previous map.
    let mut shipped = ship(source, vault, keys, opts, geometry, reuse.filter(|_| !full), full, progress);
    if let Err(e) = &shipped {
        if !full && previous_map_unusable(e) {
            // Building on a damaged map would fail every cycle from now on
            // (found by the simulation, seed 993): verify the whole disk instead.
            warnings.push(format!(
                "{e}; the previous point's map cannot be built on, so this cycle reads and verifies the whole disk"
            ));
            source.abort()?;
            full = true;
            info = source.cut(CutKind::Full)?;
            // The guest was resumed (a group released) before this second
            // cut: neither app-consistent nor part of a group cut.
            consistency = Consistency::Crash;
            recut = true;
            cut_time_ns = (opts.clock)();
            shipped = ship(source, vault, keys, opts, geometry, None, true, progress);
        }
    }
    let (mut report, pages) = match shipped {
        Ok(r) => r,
        Err(e) => {
            // Nothing was committed: hand the cut's blocks back.
            let _ = source.abort();
            return Err(e);
        }
    };
    // A sequence number this host committed is never used again for another
    // point, even if the vault lost it (rolled back).
    let committed_here = recorded.filter(|r| r.vault_id == vault_id).map_or(0, |r| r.sequence);
    let sequence = last_sequence.max(committed_here) + 1;
    // The previous root's id is the hash of its stored bytes, read above.
    let parent = previous_id;
    let root = Root {
        consistency,
        disk_id: opts.disk_id,
        disk_name: opts.disk_name.to_string(),
        host: opts.host.clone(),
        namespace: None, // encode derives it from disk_id
        sequence,
        cut_time_ns,
        cut_generation: info.generation,
        geometry,
        bytes_shipped: report.bytes_shipped,
        parent,
        pages,
        extension: opts
            .cut_hook
            .filter(|_| !recut)
            .and_then(|h| h.root_extension())
            .unwrap_or_else(|| opts.extension.to_vec()),
    };
    let commit =
        root.encode(keys).map_err(|e| ShipError::Format(format!("encoding the root: {e}"))).and_then(|bytes| {
            report.bytes_shipped += bytes.len() as u64;
            vault.put_root(&own_chain, sequence, &bytes)?;
            Ok(RootId::of(&bytes))
        });
    let root_id = match commit {
        Ok(id) => id,
        Err(e) => {
            let _ = source.abort();
            return Err(e);
        }
    };
    // The point is durable; the state records it as the one its dirty maps
    // are relative to, and the cut's blocks are no longer needed. If the
    // filter cannot be told (it died), nothing is lost: a restarted filter
    // merges the cut back into its live map, and the next cycle builds on
    // this point (`chain::Base::Unrecorded`) and finds those blocks already
    // in the vault.
    let point = LastPoint { vault_id, sequence, root_id, cut_generation: info.generation };
    if let Err(e) = source.finish(&point, full) {
        warnings.push(format!(
            "point {sequence} is committed, but the filter could not be told to release its cut ({e}); \
             the next cycle will read those blocks again (and find them already in the vault)"
        ));
    }
    report.sequence = sequence;
    report.root_id = root_id;
    report.chain_break = chain_break;
    report.app_consistent = consistency == Consistency::App;
    report.warnings = warnings;
    report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// The error says the previous point's map pages are missing or damaged.
fn previous_map_unusable(e: &ShipError) -> bool {
    match e {
        ShipError::Page(_) => true,
        ShipError::Vault(vault::VaultError::Damaged { .. }) => true,
        ShipError::Vault(vault::VaultError::NotFound { kind, .. }) => *kind == vault::Kind::Page,
        _ => false,
    }
}

#[allow(clippy::too_many_arguments)]
fn ship(
    source: &mut dyn CutSource,
    vault: &Vault,
    keys: &Keys,
    opts: &CycleOptions<'_>,
    geometry: disk_format::Geometry,
    previous: Option<&Root>,
    full: bool,
    progress: &mut dyn Progress,
) -> Result<(CycleReport, Vec<disk_format::ids::PageId>), ShipError> {
    let blocks: Vec<u64> = if full { (0..geometry.block_count).collect() } else { source.blocks()? };
    let total: u64 = blocks.iter().map(|&b| geometry.block_len(b) as u64).sum();
    progress.start(if full { "full sync" } else { "changes" }, total);
    let fmt = |e: &dyn std::fmt::Display| ShipError::Format(e.to_string());
    let mut map = match previous {
        Some(r) => MapBuilder::from_previous(&r.pages, geometry)?,
        None => MapBuilder::new(geometry),
    };
    let known = vault.block_index()?;
    let mut report = CycleReport {
        sequence: 0,
        full,
        blocks_read: 0,
        zero_blocks: 0,
        known_blocks: 0,
        new_blocks: 0,
        cached_blocks: 0,
        bytes_shipped: 0,
        packs: 0,
        pages: 0,
        millis: 0,
        warnings: Vec::new(),
        app_consistent: false,
        root_id: RootId::ZERO,
        chain_break: None,
    };
    // Packs stream to the vault in aligned chunks (`pack_out`): the writer
    // thread fills them, the storer thread writes them and commits each pack
    // under its id, so the pipeline keeps sealing while a pack is written
    // and synced.
    let (free_tx, free_rx) = bounded::<Chunk>(CHUNKS);
    for _ in 0..CHUNKS {
        free_tx.send(Chunk::new()).expect("room for every chunk");
    }
    let (to_storer, storer_rx) = bounded::<ToStorer>(CHUNKS);
    let mut stored: HashSet<BlockId> = HashSet::new();
    let (read, pages, stored_packs) = std::thread::scope(|s| {
        let storer = std::thread::Builder::new()
            .name("ship-store".into())
            .spawn_scoped(s, move || -> Result<Vec<FinishedPack<()>>, ShipError> {
                let mut done = Vec::new();
                let mut current = None;
                for msg in storer_rx {
                    let (chunk, end) = match msg {
                        ToStorer::Piece(chunk) => (chunk, None),
                        ToStorer::End(FinishedPack { id, len, index, out }) => {
                            (out, Some(FinishedPack { id, len, index, out: () }))
                        }
                    };
                    let writer = match &mut current {
                        Some(w) => w,
                        None => current.insert(vault.pack_writer()?),
                    };
                    writer.write(chunk.bytes())?;
                    let _ = free_tx.send(chunk.cleared());
                    if let Some(pack) = end {
                        vault.commit_pack(current.take().expect("written above"), &pack.id)?;
                        done.push(pack);
                    }
                }
                Ok(done)
            })
            .expect("spawning the pack storer");
        let read = (|| -> Result<(), ShipError> {
            // A write that fails because the storer stopped is the echo of
            // the storer's error, which is reported first.
            let new_pack = || -> Result<PackWriter<ChunkOut<'_>>, ShipError> {
                let out = ChunkOut::new(&free_rx, &to_storer).map_err(|e| fmt(&e))?;
                PackWriter::new(out).map_err(|e| fmt(&e))
            };
            let end_pack = |pack: PackWriter<ChunkOut<'_>>| -> Result<(), ShipError> {
                ChunkOut::end(pack.finish().map_err(|e| fmt(&e))?).map_err(|e| fmt(&e))
            };
            let mut pack = new_pack()?;
            let mut sink = |s: &Sealed| -> Result<(), ShipError> {
                report.blocks_read += 1;
                match s {
                    Sealed::Zero { index, .. } => {
                        report.zero_blocks += 1;
                        map.set(*index, BlockId::ZERO).map_err(|e| fmt(&e))?;
                    }
                    Sealed::Known { index, id, .. } => {
                        report.known_blocks += 1;
                        map.set(*index, *id).map_err(|e| fmt(&e))?;
                    }
                    Sealed::New { index, id, buf, blob_len, checksum } => {
                        map.set(*index, *id).map_err(|e| fmt(&e))?;
                        if stored.insert(*id) {
                            report.new_blocks += 1;
                            pack.add_blob_with_checksum(id, &buf[..*blob_len], *checksum).map_err(|e| fmt(&e))?;
                            if pack.bytes_written() >= PACK_TARGET {
                                end_pack(std::mem::replace(&mut pack, new_pack()?))?;
                            }
                        } else {
                            report.known_blocks += 1;
                        }
                    }
                }
                Ok(())
            };
            let mut advance = |n: u64| progress.advance(n);
            let job = pipeline::Job {
                runs: &runs(&blocks),
                geometry,
                keys,
                known: &known,
                workers: opts.workers,
                cancel: opts.cancel,
                // An incremental cycle's blocks were written minutes ago,
                // most likely still in the page cache; a full one reads
                // cold data.
                cache_first: !full,
            };
            report.cached_blocks = pipeline::run(source, &job, &mut sink, &mut advance)?;
            if report.blocks_read != blocks.len() as u64 {
                return Err(ShipError::Format(format!(
                    "internal error: {} of {} blocks went through the pipeline",
                    report.blocks_read,
                    blocks.len()
                )));
            }
            if pack.count() > 0 {
                end_pack(pack)?;
            }
            Ok(())
        })();
        drop(to_storer);
        // The map's pages do not depend on the packs: they are built and
        // stored while the storer finishes the last pack. The root still
        // waits for both.
        let pages = read.as_ref().ok().map(|()| store_pages(vault, map));
        let stored_packs = storer.join().map_err(|_| ShipError::Panic);
        (read, pages, stored_packs)
    });
    // A storer error is the cause; the reader's "storer stopped" is its echo.
    let stored_packs = stored_packs??;
    read?;
    let (pages, page_bytes, new_pages) = pages.expect("built when the read succeeded")?;
    for p in &stored_packs {
        report.bytes_shipped += p.len;
        report.packs += 1;
    }
    report.bytes_shipped += page_bytes;
    report.pages += new_pages;
    Ok((report, pages))
}

/// Builds the point's map pages on the previous point's and stores the new
/// ones: returns every page id of the point, the bytes stored and how many.
fn store_pages(vault: &Vault, map: MapBuilder) -> Result<(Vec<PageId>, u64, u64), ShipError> {
    // The previous pages this point changes, fetched together (vault/src/par.rs).
    let wanted = map.pages_to_load();
    let fetched = vault::par::map(&wanted, |(_, id)| vault.get_page(id).map(|b| (*id, b)))?;
    let mut fetched: HashMap<PageId, Vec<u8>> = fetched.into_iter().collect();
    let built = map.finish(|id| match fetched.remove(id) {
        Some(bytes) => Ok(bytes),
        None => vault.get_page(id).map_err(ShipError::from),
    })?;
    // New pages are stored together too; each put is durable on its own, and
    // the root that names them is written only after all have returned.
    let stored = vault::par::map(&built.new_pages, |(id, bytes)| {
        if vault.has_page(id)? {
            return Ok(0);
        }
        vault.put_page(id, bytes)?;
        Ok::<_, vault::VaultError>(bytes.len() as u64)
    })?;
    let new = stored.iter().filter(|&&n| n > 0).count() as u64;
    Ok((built.pages, stored.iter().sum(), new))
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_group_consecutive_blocks() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[3]), vec![(3, 1)]);
        assert_eq!(runs(&[0, 1, 2, 5, 6, 9]), vec![(0, 3), (5, 2), (9, 1)]);
    }
}
