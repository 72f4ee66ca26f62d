//! One replication cycle, from cut to committed point.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crossbeam_channel::{bounded, Receiver, Sender};
use disk_format::ids::{BlockId, PackId, PageId, RootId};
use disk_format::keys::{Cipher, Keys};
use disk_format::map_page::MapBuilder;
use disk_format::pack::{FinishedPack, PackWriter};
use disk_format::point::{Consistency, Root};
use disk_format::root_ext::{block_cipher_unauthenticated, with_block_cipher};
use disk_format::{Geometry, LastPoint};
use filter::{CutInfo, CutKind};
use vault::index_cache::{IndexCache, Opened};
use vault::{BlockIndex, Vault};

use crate::chain::{self, Base, Break};
use crate::error::ShipError;
use crate::pack_out::{Chunk, ChunkOut, ToStorer, CHUNKS};
use crate::page_copy::PageCopy;
use crate::pipeline::{self, Sealed};
use crate::source::CutSource;

/// The largest pack a cycle writes, index and trailer included: a pack is
/// ended before a block would take it past this, and as soon as it could
/// not take another block of the size just added. (A block larger than
/// this, possible only at a 32 MiB block size, goes in a pack alone.)
///
/// At most 32 MiB, not about 32 MiB: glibc's allocator serves a buffer of
/// more than 32 MiB from a fresh mapping whatever its tuning (its
/// `M_MMAP_THRESHOLD` cannot go higher), so a server that holds a whole
/// object in memory pays page faults and zeroing for every pack above it.
/// moto took 807 MB in objects of 32 MiB + 0.5 MiB in 2.34-2.62 s and in
/// objects of 30 MiB in 1.81-2.16 s (docs/DESIGN-NOTES.md, "Packs of at
/// most 32 MiB").
pub const PACK_MAX: u64 = 32 << 20;

/// The smallest pack a cycle's new blocks are split into to keep every
/// upload lane busy ([`pack_limit`]): below it a PUT is mostly round trip.
pub const PACK_SPLIT_MIN: u64 = 4 << 20;

/// The largest pack of a cycle that reads `blocks` blocks of `block_size`
/// into a backend taking `lanes` packs at once
/// ([`vault::Backend::writes_in_flight`]): its blocks split evenly across
/// the lanes (sealed, with their index entries), so that an incremental
/// cycle's first pack is sent while the rest is still read and the packs go
/// up side by side, instead of one pack sent alone after the last block;
/// never below [`PACK_SPLIT_MIN`] nor above [`PACK_MAX`]. Blocks found zero,
/// known or compressed make the packs smaller, never more of them.
pub fn pack_limit(blocks: u64, block_size: u32, lanes: usize) -> u64 {
    use disk_format::pack::{INDEX_ENTRY_LEN, PACK_HEADER_LEN, PACK_TRAILER_LEN};
    let per_block = u64::from(block_size) + (disk_format::SEAL_OVERHEAD + INDEX_ENTRY_LEN) as u64;
    let share = blocks.div_ceil(lanes.max(1) as u64);
    let bytes = share.saturating_mul(per_block).saturating_add((PACK_HEADER_LEN + PACK_TRAILER_LEN) as u64);
    bytes.clamp(PACK_SPLIT_MIN, PACK_MAX)
}

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
    /// Compress new blocks (zstd, kept when it saves an eighth; packs are
    /// then written in format 3). On by default.
    pub compress: bool,
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
    /// The directory of this host's index caches (`vault::index_cache`,
    /// normally `HOME/cache/index`): the cycle deduplicates against the
    /// vault's index kept there, and its requests grow with what changed,
    /// not with the vault. `None`: the index is rebuilt from every pack's
    /// tail, as before.
    pub index_cache: Option<&'a std::path::Path>,
    /// With an index cache: committed cycles between two full listings of
    /// the vault's packs ([`vault::index_cache::RELIST_EVERY`]).
    pub relist_every: u32,
    /// With an index cache: where a process that runs cycle after cycle
    /// (the agent) keeps it in memory between them. The cycle takes it from
    /// here instead of loading the file when the file is unchanged
    /// ([`vault::index_cache::IndexCache::is_current`]), and puts it back
    /// when it ends, committed or not. `None`: loaded from the file.
    pub warm_index: Option<&'a vault::index_cache::WarmIndex>,
    /// Where the host keeps a copy of each disk's newest map pages
    /// (`page_copy`, normally `HOME/cache/pages`): an incremental cycle
    /// builds on them instead of reading them back from the vault. `None`:
    /// they are read from the vault.
    pub page_cache: Option<&'a std::path::Path>,
}

/// Why a [`CutHook`] could not quiesce or resume: the implementation's own
/// typed error (the agent's `QuiesceError`, say), which the cycle reports as
/// a warning on the point and callers may downcast.
pub type HookError = Box<dyn std::error::Error + Send + Sync>;

/// What an app-consistent point runs around its cut: `before` quiesces the
/// guest (freezes its file systems, or runs the user's pre-cut hook), the
/// cut is taken (it only moves bits: the guest stays frozen for
/// microseconds plus the hooks' own time), then `after` resumes it. If
/// `before` fails the point is still taken, crash-consistent, with a
/// warning, and `after` still runs, so a half-done freeze is undone.
pub trait CutHook: Sync {
    /// Quiesce; an error says why the point will not be app-consistent.
    fn before(&self) -> Result<(), HookError>;
    /// Resume; an error is reported as a warning.
    fn after(&self) -> Result<(), HookError>;
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
            compress: true,
            cancel: None,
            clock: &system_clock,
            extension: &[],
            cut_hook: None,
            index_cache: None,
            relist_every: vault::index_cache::RELIST_EVERY,
            warm_index: None,
            page_cache: None,
        }
    }
}

/// This host's name (the kernel's), at most 64 bytes; empty if unreadable.
pub fn host_name() -> String {
    let mut name = system::host::kernel_hostname().unwrap_or_default();
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
    /// Of those, blocks stored compressed.
    pub compressed_blocks: u64,
    /// Plaintext bytes of the blocks stored (what `bytes_shipped`'s packs
    /// hold before compression and sealing).
    pub new_bytes: u64,
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
    /// Backend requests the cycle made, when its caller counted them
    /// (`vault::counting`); `None` otherwise.
    pub requests: Option<u64>,
    /// With an index cache: the cycle listed the vault's packs (a full
    /// listing was due, or the cache was new or discarded).
    pub index_listed: bool,
}

impl CycleReport {
    /// A report of nothing done yet.
    fn empty(full: bool) -> CycleReport {
        CycleReport {
            sequence: 0,
            full,
            blocks_read: 0,
            zero_blocks: 0,
            known_blocks: 0,
            new_blocks: 0,
            compressed_blocks: 0,
            new_bytes: 0,
            cached_blocks: 0,
            bytes_shipped: 0,
            packs: 0,
            pages: 0,
            millis: 0,
            warnings: Vec::new(),
            app_consistent: false,
            root_id: RootId::ZERO,
            chain_break: None,
            requests: None,
            index_listed: false,
        }
    }
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
fn format_1_points(vault: &Vault, disk: &Disk<'_>) -> Result<Vec<u64>, ShipError> {
    let points = vault.format_1_points(disk.name)?;
    Ok(points.iter().filter(|p| p.damage.is_none() && p.disk_id == disk.id).map(|p| p.sequence).collect())
}

/// Whose points a cycle looks for: the disk's name (of its format-1
/// points), identity and namespace. Shared with the thread that asks the
/// vault while the cut is read ([`CycleOptions`] holds a clock that need
/// not be shared).
#[derive(Clone, Copy)]
struct Disk<'a> {
    name: &'a str,
    id: [u8; 16],
    chain: &'a str,
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
    // cycle writes nothing before it holds its lease. The disk's points
    // live under its namespace; before root format 2 they lived under its
    // name, and the first cycle after the upgrade builds on the newest of
    // those that is this disk's.
    let own_chain = Vault::chain_of(keys, &opts.disk_id);
    let disk = Disk { name: opts.disk_name, id: opts.disk_id, chain: &own_chain };
    let geometry = source.geometry();
    let mut cycle = Cycle {
        source,
        vault,
        keys,
        opts,
        progress,
        own_chain: &own_chain,
        geometry,
        warnings: Vec::new(),
        cache: None,
        written: Vec::new(),
        index_listed: false,
    };
    let (lease, newest, warnings, early_ship) = if !vault.backend().remote() {
        // Into a local vault the lease is taken before the filter is asked anything.
        let lease = vault.begin_cycle(disk.chain)?;
        let recorded = cycle.source.last_point()?;
        let mut warnings = Vec::new();
        (Ok(lease), newest(vault, keys, disk, recorded, &mut warnings), warnings, None)
    } else {
        // On a remote vault, the lease's two requests (write it, then look
        // for a GC's) and the newest point's two (list the chain, read its
        // root) go at once: two round trips instead of four. Reading the
        // root early is safe: a GC that could change it is either seen
        // running (and the cycle stops, its reads unused) or over before
        // the lease is looked at, and no GC removes a chain's newest root.
        //
        // And when the dirty maps are relative to a point of this vault,
        // the cut is taken before those round trips and its blocks are read
        // and sealed meanwhile: nothing leaves the host until the lease is
        // held and the newest point is the one the maps are relative to
        // (`Gate`). If it is not, or the vault is busy, the cut is handed
        // back (its blocks stay dirty) and the cycle goes on as the answers
        // say. Not with a cut hook: the guest would be quiesced twice.
        let recorded = cycle.source.last_point()?;
        let early = opts.cut_hook.is_none()
            && recorded.is_some_and(|r| r.vault_id == vault.config().vault_id)
            && !cycle.source.suspect()?;
        if early {
            let cut = cycle.cut(false)?;
            let gate = Gate::default();
            std::thread::scope(|s| {
                let answers = s.spawn(|| {
                    let _answered = AnswerOnDrop(&gate);
                    let (lease, newest, warnings) = ask(vault, keys, disk, recorded);
                    let previous = match (&lease, &newest) {
                        (Ok(_), Ok(n)) => n.reusable(geometry).cloned(),
                        _ => None,
                    };
                    gate.answer(previous);
                    (lease, newest, warnings)
                });
                let shipped = cycle.ship_cut(cut, Prev::Pending(&gate));
                let (lease, newest, warnings) = answers.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (lease, newest, warnings, Some(shipped))
            })
        } else {
            let (lease, newest, warnings) = ask(vault, keys, disk, recorded);
            (lease, newest, warnings, None)
        }
    };
    cycle.warnings.extend(warnings);
    // A busy vault is said first: the newest point's failure may be its GC's.
    let _cycle = lease?;
    let newest = newest?;
    let chain_break = match &newest.base {
        Base::Broken(b) => {
            cycle.warnings.push(format!(
                "{}; this cycle reads and verifies the whole disk (blocks the vault holds are not sent again)",
                b.describe(opts.disk_name)
            ));
            Some(b.clone())
        }
        _ => None,
    };
    let (cut, mut report, mut pages) = match early_ship {
        Some(Err(ShipError::EarlyCutUndone)) | None => {
            let reuse = newest.reusable(geometry);
            let full = reuse.is_none() || cycle.source.suspect()?;
            let cut = cycle.cut(full)?;
            cycle.ship_cut(cut, Prev::Known(reuse))?
        }
        Some(shipped) => shipped?,
    };
    let Newest { previous_id, last_sequence, recorded, .. } = newest;
    // A sequence number this host committed is never used again for another
    // point, even if the vault lost it (rolled back).
    let vault_id = vault.config().vault_id;
    let committed_here = recorded.filter(|r| r.vault_id == vault_id).map_or(0, |r| r.sequence);
    let sequence = last_sequence.max(committed_here) + 1;
    // The previous root's id is the hash of its stored bytes, read above.
    let new_pages = std::mem::take(&mut pages.new_pages);
    let root = cycle.root(&cut, sequence, previous_id, pages, report.bytes_shipped);
    let root_id = cycle.commit(&root, &mut report)?;
    cycle.save_cache();
    // An incremental cut's map was built on the newest point's.
    let built_on = newest.reusable(geometry).filter(|_| !cut.full);
    cycle.keep_pages(&root.pages, &new_pages, built_on.map(|r| r.pages.as_slice()));
    report.index_listed = cycle.index_listed;
    // The point is durable; the state records it as the one its dirty maps
    // are relative to, and the cut's blocks are no longer needed.
    let point = LastPoint { vault_id, sequence, root_id, cut_generation: cut.info.generation };
    cycle.release(&point, cut.full);
    report.sequence = sequence;
    report.root_id = root_id;
    report.chain_break = chain_break;
    report.app_consistent = cut.consistency == Consistency::App;
    report.warnings = std::mem::take(&mut cycle.warnings);
    report.millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    Ok(report)
}

/// The vault's answers a cut taken before them waits for before anything
/// of it leaves the host (see [`run_cycle`]): the point to build on, once
/// the lease is held and the vault's newest point is the one the dirty maps
/// are relative to; or none, and the cut is handed back.
#[derive(Default)]
struct Gate {
    answer: std::sync::OnceLock<Option<Root>>,
    lock: std::sync::Mutex<()>,
    answered: std::sync::Condvar,
}

impl Gate {
    /// Gives the answers (only the first counts).
    fn answer(&self, previous: Option<Root>) {
        let _lock = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let _first = self.answer.set(previous);
        self.answered.notify_all();
    }

    /// Waits for the answers: the point to build on, if the cut may go.
    fn wait(&self) -> Option<&Root> {
        let mut lock = self.lock.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        while self.answer.get().is_none() {
            lock = self.answered.wait(lock).unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        drop(lock);
        self.answer.get().and_then(Option::as_ref)
    }

    /// Waits for the answers; an error if the cut may not be shipped.
    fn go(&self) -> Result<(), ShipError> {
        self.wait().map(|_| ()).ok_or(ShipError::EarlyCutUndone)
    }
}

/// Answers a [`Gate`] "no" when dropped unanswered (its answering thread
/// panicked), so that nothing waits for it forever.
struct AnswerOnDrop<'g>(&'g Gate);

impl Drop for AnswerOnDrop<'_> {
    fn drop(&mut self) {
        self.0.answer(None);
    }
}

/// The point a cycle's new map builds on.
#[derive(Clone, Copy)]
enum Prev<'a> {
    /// Known before the blocks are read (`None`: nothing to build on).
    Known(Option<&'a Root>),
    /// Known once the vault has answered (a cut taken before).
    Pending(&'a Gate),
}

/// Takes the cycle lease of `disk` and finds its newest point at once (see
/// [`run_cycle`]); with what the operator should know of the newest point.
fn ask<'v>(
    vault: &'v Vault,
    keys: &Keys,
    disk: Disk<'_>,
    recorded: Option<LastPoint>,
) -> (Result<vault::Hold<'v>, vault::VaultError>, Result<Newest, ShipError>, Vec<String>) {
    std::thread::scope(|s| {
        let lease = s.spawn(|| vault.begin_cycle(disk.chain));
        let mut warnings = Vec::new();
        let newest = newest(vault, keys, disk, recorded, &mut warnings);
        (lease.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)), newest, warnings)
    })
}

/// Finds the newest point of `disk` in the vault, and judges it against
/// `recorded`, the point the filter's state says its dirty maps are
/// relative to. What the operator should know goes to `warnings`.
fn newest(
    vault: &Vault,
    keys: &Keys,
    disk: Disk<'_>,
    recorded: Option<LastPoint>,
    warnings: &mut Vec<String>,
) -> Result<Newest, ShipError> {
    let own_chain = disk.chain;
    let mut last_sequence = vault.sequences(own_chain)?.last().copied().unwrap_or(0);
    let legacy = if last_sequence == 0 { format_1_points(vault, &disk)? } else { Vec::new() };
    let latest = match (last_sequence, legacy.last()) {
        (0, None) => Ok(None),
        (0, Some(&seq)) => {
            last_sequence = seq;
            vault.load_root_with_id(disk.name, seq, Some(keys)).map(Some)
        }
        (seq, _) => vault.load_root_with_id(own_chain, seq, Some(keys)).map(Some),
    };
    // The newest point (its MAC verified) names the cipher the vault had
    // when it was cut; a config naming another was replaced since (a
    // downgrade, or a copy of another vault's config): ship nothing.
    if let Ok(Some((root, _))) = &latest {
        let was = block_cipher_unauthenticated(&root.extension).unwrap_or(Cipher::XChaCha20Poly1305);
        let now = vault.config().cipher;
        if was != now {
            let location = vault.backend().location();
            return Err(ShipError::CipherChanged { location, sequence: root.sequence, was, now });
        }
    }
    let (previous, previous_id, base) = match latest {
        // Only the point the dirty maps are relative to can be built on
        // (`chain`): anything else gets a full verify, and says why.
        Ok(newest) => {
            let mut point = |seq: u64| match legacy.contains(&seq) {
                true => vault.load_root_with_id(disk.name, seq, Some(keys)).ok(),
                false => vault.load_root_with_id(own_chain, seq, Some(keys)).ok(),
            };
            let newest_ref = newest.as_ref().map(|(r, id)| (r, *id));
            let vault_id = vault.config().vault_id;
            let base = chain::judge(recorded.as_ref(), vault_id, disk.id, newest_ref, &mut point);
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
    Ok(Newest { previous, previous_id, last_sequence, base, recorded })
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

/// What one cycle works with, from its cut to its committed point.
struct Cycle<'c, 'o> {
    source: &'c mut dyn CutSource,
    vault: &'c Vault,
    keys: &'c Keys,
    opts: &'c CycleOptions<'o>,
    progress: &'c mut dyn Progress,
    /// The disk's namespace in the vault, where its new root goes.
    own_chain: &'c str,
    /// The disk's geometry, as the source reports it.
    geometry: Geometry,
    /// What the operator should know about the cycle (into the report).
    warnings: Vec<String>,
    /// The index cache, once opened (with `CycleOptions::index_cache`).
    cache: Option<IndexCache>,
    /// The packs this cycle stored, for the index cache.
    written: Vec<FinishedPack<()>>,
    /// The index cache listed the vault's packs.
    index_listed: bool,
}

impl Drop for Cycle<'_, '_> {
    /// Hands the index cache back for the process's next cycle (see
    /// [`CycleOptions::warm_index`]), whether this one committed or not:
    /// what it learnt (a listing, packs found gone) is still true, and its
    /// records not yet saved are saved by the next commit.
    fn drop(&mut self) {
        if let (Some(slot), Some(cache)) = (self.opts.warm_index, self.cache.take()) {
            *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(cache);
        }
    }
}

/// What a cycle deduplicates against.
enum Known {
    /// The index rebuilt from the vault's packs.
    Vault(BlockIndex),
    /// The host's index cache.
    Cache(IndexCache),
}

impl Known {
    fn index(&self) -> &BlockIndex {
        match self {
            Known::Vault(i) => i,
            Known::Cache(c) => c.index(),
        }
    }
}

/// The point a cycle may build on.
struct Newest {
    /// The vault's newest point of the disk, when it could be loaded.
    previous: Option<Root>,
    /// Its root id (the hash of its stored bytes): the new point's parent.
    previous_id: Option<RootId>,
    /// The newest sequence in the vault (0: none).
    last_sequence: u64,
    /// Whether the dirty maps are relative to `previous` ([`chain::judge`]).
    base: Base,
    /// The point the filter's state records as committed.
    recorded: Option<LastPoint>,
}

impl Newest {
    /// The point whose map the cycle builds on: the newest one, when the
    /// dirty maps are relative to it and the disk kept its geometry.
    fn reusable(&self, geometry: Geometry) -> Option<&Root> {
        match self.base {
            Base::Broken(_) => None,
            _ => self.previous.as_ref().filter(|r| r.geometry == geometry),
        }
    }
}

/// The cut a cycle ships.
struct Cut {
    info: CutInfo,
    /// The point's time: the cut's, taken before the guest is resumed.
    time_ns: u64,
    consistency: Consistency,
    /// Every block is shipped (and verified against the vault).
    full: bool,
    /// A second, full cut replaced the first, after the guest was resumed
    /// (a group released): it is neither app-consistent nor a group's.
    recut: bool,
}

impl Cycle<'_, '_> {
    /// Takes the cut (of every block when `full`), around the cut hook if
    /// there is one.
    fn cut(&mut self, full: bool) -> Result<Cut, ShipError> {
        let kind = if full { CutKind::Full } else { CutKind::Dirty };
        let clock = self.opts.clock;
        let Some(hook) = self.opts.cut_hook else {
            let info = self.source.cut(kind)?;
            return Ok(Cut { info, time_ns: clock(), consistency: Consistency::Crash, full, recut: false });
        };
        let mut consistency = Consistency::Crash;
        let quiesced = hook.before();
        let cut = self.source.cut(kind);
        let at = clock();
        let resumed = hook.after();
        match (&quiesced, &cut) {
            (Ok(()), Ok(_)) if hook.app_consistent() => consistency = Consistency::App,
            (Ok(()), Ok(_)) => {}
            (Err(e), _) => self.warnings.push(format!("the point is crash-consistent, not app-consistent: {e}")),
            _ => {}
        }
        if let Err(e) = resumed {
            self.warnings.push(format!("resuming the guest after the cut: {e}"));
        }
        Ok(Cut { info: cut?, time_ns: at, consistency, full, recut: false })
    }

    /// Ships the cut's blocks, building on `previous`'s map unless the cut
    /// is full. If that map turns out to be unusable, the cut is replaced by
    /// a full one and shipped again. On an error the cut is aborted; a cut
    /// taken before the vault answered that the answers do not allow fails
    /// with [`ShipError::EarlyCutUndone`].
    ///
    /// If the index cache named packs the vault no longer has, the cut is
    /// taken again and shipped against the corrected cache (a cut's blocks
    /// can be read only once, so those found in the gone packs cannot be
    /// read again from this one).
    fn ship_cut(&mut self, mut cut: Cut, previous: Prev<'_>) -> Result<(Cut, CycleReport, PointMap), ShipError> {
        // A full cycle sets every block: it never needs the previous map.
        let first = match previous {
            Prev::Known(p) => Prev::Known(p.filter(|_| !cut.full)),
            pending => pending,
        };
        let mut shipped = self.ship(first, cut.full);
        // What a second attempt builds on: after a cut taken early, the
        // point the vault named, if its answers allow the cut at all.
        let reuse = match previous {
            Prev::Known(p) => p,
            Prev::Pending(_) if shipped.is_ok() => None,
            Prev::Pending(gate) => {
                let Some(answered) = gate.wait() else {
                    let _ = self.source.abort();
                    return Err(ShipError::EarlyCutUndone);
                };
                Some(answered)
            }
        };
        if let Err(e @ ShipError::IndexCacheStale { .. }) = &shipped {
            self.warnings.push(format!("{e}; the cut was taken again and shipped against the corrected cache"));
            self.source.abort()?;
            let info = self.source.cut(if cut.full { CutKind::Full } else { CutKind::Dirty })?;
            let time_ns = (self.opts.clock)();
            cut = Cut { info, time_ns, consistency: Consistency::Crash, full: cut.full, recut: true };
            shipped = self.ship(Prev::Known(reuse.filter(|_| !cut.full)), cut.full);
        }
        if let Err(e) = &shipped {
            if !cut.full && previous_map_unusable(e) {
                // Building on a damaged map would fail every cycle from now on
                // (found by the simulation, seed 993): verify the whole disk instead.
                self.warnings.push(format!(
                    "{e}; the previous point's map cannot be built on, so this cycle reads and verifies the whole disk"
                ));
                self.source.abort()?;
                let info = self.source.cut(CutKind::Full)?;
                let time_ns = (self.opts.clock)();
                cut = Cut { info, time_ns, consistency: Consistency::Crash, full: true, recut: true };
                shipped = self.ship(Prev::Known(None), true);
            }
        }
        match shipped {
            Ok((report, pages)) => Ok((cut, report, pages)),
            Err(e) => {
                // Nothing was committed: hand the cut's blocks back.
                let _ = self.source.abort();
                Err(e)
            }
        }
    }

    /// The new point's root.
    fn root(&self, cut: &Cut, sequence: u64, parent: Option<RootId>, map: PointMap, bytes_shipped: u64) -> Root {
        let opts = self.opts;
        Root {
            consistency: cut.consistency,
            disk_id: opts.disk_id,
            disk_name: opts.disk_name.to_string(),
            host: opts.host.clone(),
            namespace: None, // encode derives it from disk_id
            sequence,
            cut_time_ns: cut.time_ns,
            cut_generation: cut.info.generation,
            geometry: self.geometry,
            bytes_shipped,
            parent,
            pages: map.pages,
            page_packs: map.page_packs,
            page_pack_of: map.page_pack_of,
            // The vault's cipher goes into every point (one that is not
            // XChaCha20-Poly1305 as an extension entry), under the root's
            // MAC: a config replaced later cannot change it unnoticed.
            extension: with_block_cipher(
                &opts
                    .cut_hook
                    .filter(|_| !cut.recut)
                    .and_then(|h| h.root_extension())
                    .unwrap_or_else(|| opts.extension.to_vec()),
                self.vault.config().cipher,
            ),
        }
    }

    /// Writes `root` to the vault, counting its bytes as shipped: the point
    /// is committed. On an error the cut is aborted.
    fn commit(&mut self, root: &Root, report: &mut CycleReport) -> Result<RootId, ShipError> {
        let sequence = root.sequence;
        let committed =
            root.encode(self.keys).map_err(|source| ShipError::EncodeRoot { sequence, source }).and_then(|bytes| {
                report.bytes_shipped += bytes.len() as u64;
                self.vault.put_root(self.own_chain, sequence, &bytes)?;
                Ok(RootId::of(&bytes))
            });
        if committed.is_err() {
            let _ = self.source.abort();
        }
        committed
    }

    /// Tells the filter the committed point and that the cut's blocks are
    /// no longer needed. If it cannot be told (it died), nothing is lost: a
    /// restarted filter merges the cut back into its live map, and the next
    /// cycle builds on this point (`chain::Base::Unrecorded`) and finds those
    /// blocks already in the vault.
    fn release(&mut self, point: &LastPoint, full: bool) {
        if let Err(e) = self.source.finish(point, full) {
            self.warnings.push(format!(
                "point {} is committed, but the filter could not be told to release its cut ({e}); \
                 the next cycle will read those blocks again (and find them already in the vault)",
                point.sequence
            ));
        }
    }

    /// Reads, seals and stores the cut's blocks (every block when `full`),
    /// and the new point's map pages, built on `previous`'s. Returns the
    /// counts and the new point's page ids. With a pending previous point
    /// (a cut taken early), the blocks are read and sealed at once, and
    /// nothing is written before the vault's answers let the cut go.
    fn ship(&mut self, previous: Prev<'_>, full: bool) -> Result<(CycleReport, PointMap), ShipError> {
        let geometry = self.geometry;
        let blocks: Vec<u64> = if full { (0..geometry.block_count).collect() } else { self.source.blocks()? };
        let total: u64 = blocks.iter().map(|&b| geometry.block_len(b) as u64).sum();
        self.progress.start(if full { "full sync" } else { "changes" }, total);
        let (map, gate) = match previous {
            Prev::Known(Some(r)) => (MapBuilder::from_previous(&r.pages, geometry)?, None),
            Prev::Known(None) => (MapBuilder::new(geometry), None),
            // The previous pages go under the map once the vault names them.
            Prev::Pending(gate) => (MapBuilder::new(geometry), Some(gate)),
        };
        let mut known = self.known(full)?;
        // Packs stream to the vault in aligned chunks (`pack_out`): the writer
        // thread fills them, the storer thread writes them and commits each pack
        // under its id, so the pipeline keeps sealing while a pack is written
        // and synced.
        let (free_tx, free_rx) = bounded::<Chunk>(CHUNKS);
        for _ in 0..CHUNKS {
            free_tx.send(Chunk::new()).expect("room for every chunk");
        }
        let (to_storer, storer_rx) = bounded::<ToStorer>(CHUNKS);
        let vault = self.vault;
        let (read, pages, stored_packs) = std::thread::scope(|s| {
            let storer = std::thread::Builder::new()
                .name("ship-store".into())
                .spawn_scoped(s, move || store_packs(vault, storer_rx, free_tx, gate))
                .expect("spawning the pack storer");
            // The previous point's pages this cycle's blocks fall in are
            // fetched while the blocks are read: they wait for nothing but
            // the list of blocks, and would otherwise cost their round trips
            // after the read, on the way to the root.
            let copy = self.page_copy();
            let prefetch = (!matches!(previous, Prev::Known(None))).then(|| {
                let mut wanted: Vec<u64> = blocks.iter().map(|b| b / disk_format::PAGE_ENTRIES as u64).collect();
                wanted.sort_unstable();
                wanted.dedup();
                s.spawn(move || {
                    let prev = match previous {
                        Prev::Known(prev) => prev,
                        Prev::Pending(gate) => gate.wait(),
                    };
                    let Some(prev) = prev else { return Ok::<_, vault::VaultError>(HashMap::new()) };
                    // The host's copies first; the vault for the rest.
                    let (mut have, missing) = match &copy {
                        Some(copy) => copy.load(prev, &wanted),
                        None => (HashMap::new(), wanted),
                    };
                    if !missing.is_empty() {
                        let point = format!("{}/{}", prev.chain(), prev.sequence);
                        have.extend(vault.load_pages(&point, prev, &missing)?);
                    }
                    Ok(have)
                })
            });
            let cipher = self.vault.config().cipher;
            let limit = pack_limit(blocks.len() as u64, geometry.block_size, vault.backend().writes_in_flight());
            let read = Packer::new(&free_rx, &to_storer, map, full, cipher, self.opts.compress, limit)
                .and_then(|p| self.read(p, &blocks, &mut known, gate));
            drop(to_storer);
            // The map's pages do not depend on the packs: they are built and
            // stored while the storer finishes the last pack. The root still
            // waits for both.
            let (read, pages) = match read {
                Ok((mut map, placed, report)) => {
                    let previous = match previous {
                        Prev::Known(p) => Ok(p),
                        Prev::Pending(gate) => gate.wait().ok_or(ShipError::EarlyCutUndone).and_then(|r| {
                            map.set_previous(&r.pages)?;
                            Ok(Some(r))
                        }),
                    };
                    let previous_pages = prefetch
                        .map(|p| p.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                        .transpose()
                        .map_err(ShipError::from);
                    let pages = previous.and_then(|previous| {
                        let pages = previous_pages?.unwrap_or_default();
                        store_pages(vault, map, previous, pages, &placed, known.index())
                    });
                    (Ok(report), Some(pages))
                }
                Err(e) => (Err(e), None),
            };
            let stored_packs = storer.join().map_err(|_| ShipError::Panic);
            (read, pages, stored_packs)
        });
        // A storer error is the cause; the reader's "storer stopped" is its echo.
        if let Known::Cache(cache) = known {
            self.cache = Some(cache);
        }
        let stored_packs = stored_packs??;
        let mut report = read?;
        let (pages, page_bytes, new_pages) = pages.expect("built when the read succeeded")?;
        for p in &stored_packs {
            report.bytes_shipped += p.len;
            report.packs += 1;
        }
        report.bytes_shipped += page_bytes;
        report.pages += new_pages;
        self.written.extend(stored_packs);
        Ok((report, pages))
    }

    /// The index to deduplicate against: the host's index cache, brought up
    /// to date if a full listing is due, or else the index rebuilt from the
    /// vault. A `full` cycle always lists: it reads the whole disk anyway,
    /// and it is the cycle that follows another writer's work on this disk
    /// (a failback, a replaced state file), whose packs it must find to
    /// send nothing the vault holds.
    fn known(&mut self, full: bool) -> Result<Known, ShipError> {
        let Some(dir) = self.opts.index_cache else {
            return Ok(Known::Vault(self.vault.block_index()?));
        };
        let warm = || {
            let slot = self.opts.warm_index?;
            let cache = slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()?;
            cache.is_current(dir, self.vault).then_some(cache)
        };
        let mut cache = match self.cache.take().or_else(warm) {
            Some(c) => c,
            None => {
                let (cache, opened) = IndexCache::open(dir, self.vault, self.keys);
                if let Opened::Discarded(why) = opened {
                    tracing::warn!("lifeboat: warning: {why}; it is rebuilt from the vault");
                }
                cache
            }
        };
        cache.relist_every = self.opts.relist_every;
        if full {
            cache.require_listing();
        }
        let synced = cache.sync(self.vault)?;
        self.index_listed |= synced.listed;
        Ok(Known::Cache(cache))
    }

    /// The host's copy of this disk's newest map pages, if it keeps one.
    fn page_copy(&self) -> Option<PageCopy> {
        let base = self.opts.page_cache?;
        Some(PageCopy::new(base, &self.vault.config().vault_id.to_string(), self.own_chain))
    }

    /// Keeps the committed point's map pages in the host's copy (`pages`:
    /// the root's list). A copy that cannot be written is a warning: the
    /// next cycle reads what it lacks from the vault.
    fn keep_pages(&mut self, pages: &[PageId], new: &[(PageId, Vec<u8>)], built_on: Option<&[PageId]>) {
        let Some(copy) = self.page_copy() else { return };
        if let Err(e) = copy.keep(new, pages, built_on) {
            self.warnings.push(format!(
                "the host's copy of the map pages could not be written ({e}); the next cycle reads them from the vault"
            ));
        }
    }

    /// Records the committed cycle's packs in the index cache, durably. A
    /// cache that cannot be written is a warning: the point is committed,
    /// and the next cycle starts from the old cache (still a correct hint)
    /// or rebuilds it.
    fn save_cache(&mut self) {
        let Some(cache) = self.cache.as_mut() else { return };
        let written: Vec<(PackId, u64, &disk_format::PackIndex)> =
            self.written.iter().map(|p| (p.id, p.len, &p.index)).collect();
        if let Err(e) = cache.commit(&written) {
            self.warnings.push(format!("the index cache could not be saved ({e}); the next cycle may list the vault"));
        }
    }

    /// Runs `blocks` through the read pipeline into `packer`; returns the
    /// new map and the counts.
    ///
    /// With an index cache, the packs the cycle deduplicated against are
    /// confirmed present in one request before the point can reference
    /// them. If some are gone (garbage-collected at the site behind the
    /// cache's back), the cache drops them (durably) and the cycle fails
    /// with [`ShipError::IndexCacheStale`]: the blocks found in them were
    /// released from the cut and cannot be read again, so [`Cycle::ship_cut`]
    /// takes the cut again.
    fn read(
        &mut self,
        mut packer: Packer<'_>,
        blocks: &[u64],
        known: &mut Known,
        gate: Option<&Gate>,
    ) -> Result<(MapBuilder, Placed, CycleReport), ShipError> {
        packer.track_known = matches!(known, Known::Cache(_));
        let cached = self.run_pipeline(&mut packer, blocks, known.index())?;
        if let Known::Cache(cache) = known {
            // Packs confirmed present stay so only while the lease is held.
            if let Some(gate) = gate {
                gate.go()?;
            }
            let found_in = std::mem::take(&mut packer.known_in);
            let gone = cache.confirm(self.vault, &found_in.keys().copied().collect())?;
            if !gone.is_empty() {
                let blocks = found_in.iter().filter(|(p, _)| gone.contains(p)).map(|(_, n)| n).sum();
                if let Err(e) = cache.save() {
                    tracing::warn!("lifeboat: warning: the index cache could not be saved: {e}");
                }
                return Err(ShipError::IndexCacheStale { packs: gone.len(), blocks });
            }
        }
        packer.finish(blocks.len() as u64, cached)
    }

    /// Runs `blocks` through the read pipeline into `packer`, deduplicating
    /// against `known`; returns how many the page cache served.
    fn run_pipeline(&mut self, packer: &mut Packer<'_>, blocks: &[u64], known: &BlockIndex) -> Result<u64, ShipError> {
        let job = pipeline::Job {
            runs: &runs(blocks),
            geometry: self.geometry,
            keys: self.keys,
            // Every pack of the cycle names the vault's cipher.
            cipher: packer.pack.cipher(),
            compress: packer.compress,
            known,
            workers: self.opts.workers,
            cancel: self.opts.cancel,
            // An incremental cycle's blocks were written minutes ago, most
            // likely still in the page cache; a full one reads cold data.
            cache_first: !packer.report.full,
        };
        let progress = &mut *self.progress;
        pipeline::run(&mut *self.source, &job, &mut |s| packer.take(s), &mut |n| progress.advance(n))
    }
}

/// The storer thread: writes the chunks it is sent to the vault, pack after
/// pack, and commits each pack under its id once its last chunk is written;
/// hands each written chunk back to `free`. Returns the packs stored, in
/// the order they were built.
///
/// A backend that takes several streamed objects at once
/// ([`vault::Backend::writes_in_flight`], a vault server) gets that many
/// lanes: pack `n` goes to lane `n % lanes`, so the next pack streams while
/// the one before waits for the server's fsyncs. Every lane has committed
/// (or failed) before this returns, and the root is written only after, so
/// a point never names a pack that is not durable.
///
/// With a `gate` (a cut taken before the vault answered), no lane starts
/// its first pack before the answers let the cut go.
fn store_packs(
    vault: &Vault,
    chunks: Receiver<ToStorer>,
    free: Sender<Chunk>,
    gate: Option<&Gate>,
) -> Result<Vec<FinishedPack<()>>, ShipError> {
    let lanes = vault.backend().writes_in_flight().max(1);
    if lanes == 1 {
        return store_lane(vault, chunks, free, gate);
    }
    std::thread::scope(|s| {
        let mut senders = Vec::with_capacity(lanes);
        let mut handles = Vec::with_capacity(lanes);
        // A lane that fails says so at once: the router may be waiting for
        // the packer, and the packer for a free chunk that will never come
        // back (the failed lane's queued chunks died with its channel).
        let (failed_tx, failed) = bounded::<()>(lanes);
        for n in 0..lanes {
            let (tx, rx) = bounded::<ToStorer>(CHUNKS);
            let free = free.clone();
            let failed_tx = failed_tx.clone();
            let lane = std::thread::Builder::new()
                .name(format!("ship-store-{n}"))
                .spawn_scoped(s, move || {
                    let r =
                        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| store_lane(vault, rx, free, gate)))
                            .unwrap_or(Err(ShipError::Panic));
                    if r.is_err() {
                        let _ = failed_tx.send(());
                    }
                    r
                })
                .expect("spawning a pack storer lane");
            senders.push(tx);
            handles.push(lane);
        }
        drop((free, failed_tx));
        let mut lane = 0;
        loop {
            let msg = crossbeam_channel::select! {
                recv(chunks) -> msg => match msg {
                    Ok(msg) => msg,
                    Err(_) => break, // the packer is done
                },
                recv(failed) -> _ => break,
            };
            let end = matches!(msg, ToStorer::End(_));
            // A lane that stopped has failed: its error is the cause.
            if senders[lane].send(msg).is_err() {
                break;
            }
            if end {
                lane = (lane + 1) % lanes;
            }
        }
        // The lanes' channels close: a healthy lane drops its half-sent
        // pack and ends, and with the last lane the last sender of `free`
        // goes, so a packer waiting for a chunk stops, as does one sending
        // to `chunks`, dropped here.
        drop((senders, chunks));
        // Every lane is joined before any error is returned. Only a lane
        // that failed has one: the others end cleanly when the router
        // stops, dropping a half-sent pack (which leaves nothing behind).
        // (A lane's panic is its `Err(Panic)` already.)
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap_or(Err(ShipError::Panic))).collect();
        let mut stored = results.into_iter().map(|r| r.map(Vec::into_iter)).collect::<Result<Vec<_>, _>>()?;
        // Back into build order: lane `n` holds packs n, n + lanes, ...
        let mut done = Vec::new();
        for n in 0.. {
            match stored[n % lanes].next() {
                Some(p) => done.push(p),
                None => break,
            }
        }
        Ok(done)
    })
}

/// One lane of [`store_packs`]: the packs whose chunks it is sent, one
/// after the other.
fn store_lane(
    vault: &Vault,
    chunks: Receiver<ToStorer>,
    free: Sender<Chunk>,
    gate: Option<&Gate>,
) -> Result<Vec<FinishedPack<()>>, ShipError> {
    let mut done = Vec::new();
    let mut current = None;
    for msg in chunks {
        let (chunk, end) = match msg {
            ToStorer::Piece(chunk) => (chunk, None),
            ToStorer::End(FinishedPack { id, len, index, out }) => {
                (out, Some(FinishedPack { id, len, index, out: () }))
            }
        };
        let writer = match &mut current {
            Some(w) => w,
            None => {
                // A pack writer may start sending (to a vault server) at once.
                if let Some(gate) = gate {
                    gate.go()?;
                }
                current.insert(vault.pack_writer()?)
            }
        };
        writer.write(chunk.bytes())?;
        let _ = free.send(chunk.cleared());
        if let Some(pack) = end {
            vault.commit_pack(current.take().expect("written above"), &pack.id)?;
            done.push(pack);
        }
    }
    Ok(done)
}

/// Where a cycle's sealed blocks go: the new point's map, the pack being
/// filled (streamed to the storer in chunks), and the cycle's counts. A
/// write that fails because the storer stopped is the echo of the storer's
/// error, which [`Cycle::ship`] reports first.
struct Packer<'p> {
    free: &'p Receiver<Chunk>,
    to_storer: &'p Sender<ToStorer>,
    /// The pack being filled, and its number in this cycle (from 0).
    pack: PackWriter<ChunkOut<'p>>,
    number: u64,
    /// Blocks put in a pack by this cycle (a block sealed twice is stored
    /// once), with that pack's number.
    stored: HashMap<BlockId, u32>,
    /// The ids of the packs ended so far, by number.
    ended: Vec<PackId>,
    map: MapBuilder,
    report: CycleReport,
    /// Record which packs the known blocks were found in (`known_in`).
    track_known: bool,
    /// How many blocks were deduplicated against each pack of the index.
    known_in: HashMap<PackId, u64>,
    /// New blocks are compressed, and packs written in format 3.
    compress: bool,
    /// The largest pack of this cycle ([`pack_limit`]).
    limit: u64,
}

impl<'p> Packer<'p> {
    fn new(
        free: &'p Receiver<Chunk>,
        to_storer: &'p Sender<ToStorer>,
        map: MapBuilder,
        full: bool,
        cipher: Cipher,
        compress: bool,
        limit: u64,
    ) -> Result<Packer<'p>, ShipError> {
        let pack = Packer::open(free, to_storer, 0, cipher, compress)?;
        let report = CycleReport::empty(full);
        Ok(Packer {
            free,
            to_storer,
            pack,
            number: 0,
            stored: HashMap::new(),
            ended: Vec::new(),
            map,
            report,
            track_known: false,
            known_in: HashMap::new(),
            compress,
            limit,
        })
    }

    /// Starts pack `number`.
    fn open(
        free: &'p Receiver<Chunk>,
        to_storer: &'p Sender<ToStorer>,
        number: u64,
        cipher: Cipher,
        compress: bool,
    ) -> Result<PackWriter<ChunkOut<'p>>, ShipError> {
        let out = ChunkOut::new(free, to_storer).map_err(|source| ShipError::PackOut { pack: number, source })?;
        // Only format 3 records compressed blobs; without compression an
        // XChaCha20-Poly1305 pack stays format 2, as earlier builds wrote.
        let pack = if compress { PackWriter::v3(out, cipher) } else { PackWriter::for_cipher(out, cipher) };
        pack.map_err(|source| ShipError::Pack { pack: number, block: None, source })
    }

    /// Ends pack `number`: its index and trailer go to the storer, which
    /// commits it. Returns its id.
    fn end(pack: PackWriter<ChunkOut<'p>>, number: u64) -> Result<PackId, ShipError> {
        let finished = pack.finish().map_err(|source| ShipError::Pack { pack: number, block: None, source })?;
        let id = finished.id;
        ChunkOut::end(finished).map_err(|source| ShipError::PackOut { pack: number, source })?;
        Ok(id)
    }

    /// Ends the pack being filled and opens the next.
    fn next_pack(&mut self) -> Result<(), ShipError> {
        let number = self.number;
        let next = Packer::open(self.free, self.to_storer, number + 1, self.pack.cipher(), self.compress)?;
        self.ended.push(Packer::end(std::mem::replace(&mut self.pack, next), number)?);
        self.number = number + 1;
        Ok(())
    }

    fn set(&mut self, block: u64, id: BlockId) -> Result<(), ShipError> {
        self.map.set(block, id).map_err(|source| ShipError::MapEntry { block, source })
    }

    /// Takes one block out of the pipeline.
    fn take(&mut self, s: &Sealed) -> Result<(), ShipError> {
        self.report.blocks_read += 1;
        match s {
            Sealed::Zero { index, .. } => {
                self.report.zero_blocks += 1;
                self.set(*index, BlockId::ZERO)
            }
            Sealed::Known { index, id, pack, .. } => {
                self.report.known_blocks += 1;
                if self.track_known {
                    *self.known_in.entry(*pack).or_default() += 1;
                }
                self.set(*index, *id)
            }
            Sealed::New { index, id, buf, blob_len, checksum, compressed, len } => {
                self.set(*index, *id)?;
                // A block sealed twice stays in the pack it went into first;
                // a new one goes in the next pack if this one has no room.
                let full = self.pack.count() > 0 && self.pack.len_with(*blob_len) > self.limit;
                let number = self.number + u64::from(full);
                match self.stored.entry(*id) {
                    Entry::Occupied(_) => {
                        self.report.known_blocks += 1;
                        return Ok(());
                    }
                    Entry::Vacant(v) => v.insert(u32::try_from(number).expect("fewer than 2^32 packs a cycle")),
                };
                if full {
                    self.next_pack()?;
                }
                self.report.new_blocks += 1;
                self.report.compressed_blocks += u64::from(*compressed);
                self.report.new_bytes += *len as u64;
                self.pack
                    .add_encoded(id, &buf[..*blob_len], *checksum, *compressed)
                    .map_err(|source| ShipError::Pack { pack: number, block: Some(*index), source })?;
                if self.pack.len_with(*blob_len) > self.limit {
                    self.next_pack()?;
                }
                Ok(())
            }
        }
    }

    /// Ends the last pack, after the pipeline said `cached` of the
    /// `blocks` it was given came from the page cache; returns the new map,
    /// where the cycle stored its new blocks, and the counts.
    fn finish(self, blocks: u64, cached: u64) -> Result<(MapBuilder, Placed, CycleReport), ShipError> {
        let Packer { pack, number, map, mut report, stored, mut ended, .. } = self;
        report.cached_blocks = cached;
        if report.blocks_read != blocks {
            return Err(ShipError::BlocksLost { shipped: report.blocks_read, blocks });
        }
        if pack.count() > 0 {
            ended.push(Packer::end(pack, number)?);
        }
        Ok((map, Placed { stored, packs: ended }, report))
    }
}

/// The packs a cycle stored its new blocks in.
struct Placed {
    /// Each new block's pack, by number.
    stored: HashMap<BlockId, u32>,
    /// The packs' ids, by number.
    packs: Vec<PackId>,
}

impl Placed {
    /// The packs holding the blocks of map page `bytes`, for its page pack's
    /// hints: this cycle's, or where `known` has them. `None` if a block is
    /// in neither (the hint would lead a restore astray) or the page does
    /// not decode.
    fn hint(&self, bytes: &[u8], known: &BlockIndex) -> Option<Vec<PackId>> {
        let page = disk_format::MapPage::decode(bytes).ok()?;
        let mut packs = Vec::new();
        for id in page.entries.iter().filter(|id| !id.is_zero()) {
            let pack = match self.stored.get(id) {
                Some(&n) => self.packs[n as usize],
                None => known.get(id)?.pack,
            };
            if packs.last() != Some(&pack) {
                packs.push(pack);
            }
        }
        packs.sort_unstable();
        packs.dedup();
        Some(packs)
    }
}

/// A new point's map: every page's id, and the page packs that hold them
/// (the root's fields of the same names).
struct PointMap {
    pages: Vec<PageId>,
    page_packs: Vec<PageId>,
    page_pack_of: Vec<u32>,
    /// The pages this point stored, for the host's copy.
    new_pages: Vec<(PageId, Vec<u8>)>,
}

/// Builds the point's map pages on the previous point's and stores the new
/// ones as page packs (one per [`disk_format::MAX_PACK_PAGES`] pages: one
/// request for most cycles, where a page each was most of an incremental's
/// requests). Returns the point's map, the bytes stored and the pages stored.
/// Each page pack hints where its pages' blocks are (`placed` by this cycle,
/// or in `known`), so that a restore reads those packs' indexes only.
/// `previous_pages`: `previous`'s pages that the cycle's blocks fall in, by
/// page index, fetched while the blocks were read (each page pack's index
/// once, then runs of pages: vault/src/pages.rs); a page the map needs and
/// they lack is read alone.
fn store_pages(
    vault: &Vault,
    map: MapBuilder,
    previous: Option<&Root>,
    mut previous_pages: HashMap<u64, Vec<u8>>,
    placed: &Placed,
    known: &BlockIndex,
) -> Result<(PointMap, u64, u64), ShipError> {
    let mut fetched: HashMap<PageId, Vec<u8>> =
        map.pages_to_load().into_iter().filter_map(|(p, id)| Some((id, previous_pages.remove(&p)?))).collect();
    let built = map.finish(|id| match fetched.remove(id) {
        Some(bytes) => Ok(bytes),
        None => vault.get_page(id).map_err(ShipError::from),
    })?;
    // The new pages go into page packs; the root that names them is written
    // only after every pack has returned. A pack is created where absent (one
    // already stored, named by the same contents, is the same pack).
    let chunks: Vec<&[(PageId, Vec<u8>)]> = built.new_pages.chunks(disk_format::MAX_PACK_PAGES).collect();
    let stored = vault::par::map(&chunks, |chunk| {
        let refs: Vec<(PageId, &[u8])> = chunk.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        let hints: Vec<Option<Vec<PackId>>> = chunk.iter().map(|(_, b)| placed.hint(b, known)).collect();
        vault.create_page_pack(&refs, &hints)
    })?;
    // Each page's home: the pack it was just stored in, or, unchanged, the
    // previous point's (a page stored alone stays alone).
    let mut home: HashMap<PageId, PageId> = HashMap::new();
    for (chunk, (pack, _)) in chunks.iter().zip(&stored) {
        home.extend(chunk.iter().map(|(id, _)| (*id, *pack)));
    }
    let mut page_packs: Vec<PageId> = Vec::new();
    let mut slot_of: HashMap<PageId, u32> = HashMap::new();
    let mut page_pack_of = Vec::with_capacity(built.pages.len());
    for (p, id) in (0u64..).zip(&built.pages) {
        let pack = if id.is_zero() {
            None
        } else {
            home.get(id).copied().or_else(|| previous.and_then(|r| r.page_pack(p).copied()))
        };
        page_pack_of.push(match pack {
            None => disk_format::NO_PAGE_PACK,
            Some(pack) => *slot_of.entry(pack).or_insert_with(|| {
                page_packs.push(pack);
                u32::try_from(page_packs.len() - 1).expect("at most one pack per page")
            }),
        });
    }
    if page_packs.is_empty() {
        page_pack_of.clear(); // every page alone or zero: a format-2 root
    }
    let bytes = stored.iter().map(|(_, n)| n).sum();
    let new = chunks.iter().zip(&stored).filter(|(_, (_, n))| *n > 0).map(|(c, _)| c.len() as u64).sum();
    Ok((PointMap { pages: built.pages, page_packs, page_pack_of, new_pages: built.new_pages }, bytes, new))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_split_across_lanes_within_their_bounds() {
        // A sealed 64 KiB block and its index entry: 65,632 bytes; a pack's
        // header and trailer: 96.
        assert_eq!(pack_limit(160, 65536, 2), 96 + 80 * 65_632, "a 10 MiB cycle, two lanes: two packs");
        assert_eq!(pack_limit(160, 65536, 1), 96 + 160 * 65_632, "one lane: one pack");
        assert_eq!(pack_limit(161, 65536, 2), 96 + 81 * 65_632, "the odd block goes in the first");
        assert_eq!(pack_limit(40, 65536, 2), PACK_SPLIT_MIN, "never below 4 MiB");
        assert_eq!(pack_limit(16_384, 65536, 2), PACK_MAX, "a full sync: packs of 32 MiB");
        assert_eq!(pack_limit(0, 65536, 0), PACK_SPLIT_MIN);
        assert_eq!(pack_limit(u64::MAX, 32 << 20, 1), PACK_MAX);
    }

    /// A local vault taking two packs at once, whose commit of the pack
    /// `hold` waits for the test to `release` it and then fails.
    struct HeldCommit {
        inner: vault::LocalBackend,
        hold: String,
        release: Receiver<()>,
    }

    struct HeldWriter<'a> {
        inner: Box<dyn vault::ObjectWriter + 'a>,
        backend: &'a HeldCommit,
    }

    impl vault::ObjectWriter for HeldWriter<'_> {
        fn write(&mut self, data: &[u8]) -> Result<(), vault::VaultError> {
            self.inner.write(data)
        }
        fn commit(self: Box<Self>, name: &str) -> Result<(), vault::VaultError> {
            if name != self.backend.hold {
                return self.inner.commit(name);
            }
            let _ = self.backend.release.recv();
            Err(vault::VaultError::Io {
                what: "injected failure committing",
                path: name.into(),
                source: std::io::Error::other("the link went down"),
            })
        }
    }

    impl vault::Backend for HeldCommit {
        fn put(&self, kind: vault::Kind, name: &str, data: &[u8]) -> Result<(), vault::VaultError> {
            self.inner.put(kind, name, data)
        }
        fn create(&self, kind: vault::Kind, name: &str, data: &[u8]) -> Result<vault::Version, vault::VaultError> {
            self.inner.create(kind, name, data)
        }
        fn get_versioned(&self, kind: vault::Kind, name: &str) -> Result<(Vec<u8>, vault::Version), vault::VaultError> {
            self.inner.get_versioned(kind, name)
        }
        fn replace_if(
            &self,
            kind: vault::Kind,
            name: &str,
            data: &[u8],
            version: &vault::Version,
        ) -> Result<vault::Version, vault::VaultError> {
            self.inner.replace_if(kind, name, data, version)
        }
        fn get(&self, kind: vault::Kind, name: &str) -> Result<Vec<u8>, vault::VaultError> {
            self.inner.get(kind, name)
        }
        fn get_range(
            &self,
            kind: vault::Kind,
            name: &str,
            offset: u64,
            len: u64,
        ) -> Result<Vec<u8>, vault::VaultError> {
            self.inner.get_range(kind, name, offset, len)
        }
        fn size(&self, kind: vault::Kind, name: &str) -> Result<Option<u64>, vault::VaultError> {
            self.inner.size(kind, name)
        }
        fn list(&self, kind: vault::Kind, prefix: &str) -> Result<Vec<String>, vault::VaultError> {
            self.inner.list(kind, prefix)
        }
        fn delete(&self, kind: vault::Kind, name: &str) -> Result<(), vault::VaultError> {
            self.inner.delete(kind, name)
        }
        fn location(&self) -> String {
            self.inner.location()
        }
        fn writes_in_flight(&self) -> usize {
            2
        }
        fn writer(&self, kind: vault::Kind) -> Result<Option<Box<dyn vault::ObjectWriter + '_>>, vault::VaultError> {
            let inner = self.inner.writer(kind)?.expect("a local vault streams packs");
            Ok(Some(Box::new(HeldWriter { inner, backend: self })))
        }
    }

    /// The end of a pack: an id of its own, and `out` as its last chunk.
    fn end(seed: u8, out: Chunk) -> ToStorer {
        let keys = disk_format::keys::MasterKey::from_bytes([5; 32]).keys();
        let id = keys.block_id(&[seed]);
        let mut w = PackWriter::new(Vec::new()).unwrap();
        w.add_blob(&id, &keys.seal_block(disk_format::Cipher::XChaCha20Poly1305, &id, &[seed]).unwrap()).unwrap();
        let done = w.finish().unwrap();
        ToStorer::End(FinishedPack { id: PackId([seed; 32]), len: done.len, index: done.index, out })
    }

    /// A lane that fails while every chunk waits in its queue: the storer
    /// stops at once, so the packer, waiting for a free chunk that will
    /// never come back, is told (the free channel closes) instead of
    /// waiting for ever; and the lane's error is the storer's.
    #[test]
    fn a_lane_failing_with_the_chunks_in_its_queue_stops_the_packer() {
        let dir = tempfile::tempdir().unwrap();
        let keys = disk_format::keys::MasterKey::from_bytes([5; 32]).keys();
        let (release_tx, release) = bounded::<()>(1);
        let held = PackId([0; 32]).to_string();
        let backend = HeldCommit { inner: vault::LocalBackend::create(dir.path()).unwrap(), hold: held, release };
        let vault = Vault::init(Box::new(backend), &keys).unwrap();
        let (free_tx, free_rx) = bounded::<Chunk>(CHUNKS);
        for _ in 0..CHUNKS {
            free_tx.send(Chunk::new()).unwrap();
        }
        let (to_storer, storer_rx) = bounded::<ToStorer>(CHUNKS);
        std::thread::scope(|s| {
            let storer = s.spawn(|| store_packs(&vault, storer_rx, free_tx, None));
            // Pack 0 to lane 0, whose commit is held; pack 1 to lane 1.
            to_storer.send(end(0, free_rx.recv().unwrap())).unwrap();
            to_storer.send(end(1, free_rx.recv().unwrap())).unwrap();
            // Pack 2's first pieces, every chunk there is, to lane 0.
            for _ in 0..CHUNKS {
                to_storer.send(ToStorer::Piece(free_rx.recv().unwrap())).unwrap();
            }
            while !to_storer.is_empty() {
                std::thread::yield_now();
            }
            release_tx.send(()).unwrap();
            // The packer asks for a chunk: the storer has stopped.
            let got = free_rx.recv_timeout(std::time::Duration::from_secs(60));
            assert!(
                matches!(got, Err(crossbeam_channel::RecvTimeoutError::Disconnected)),
                "the packer was left waiting for a chunk"
            );
            drop(to_storer);
            let e = storer.join().unwrap().unwrap_err();
            assert!(e.to_string().contains("injected failure committing"), "{e}");
        });
    }
    use crate::engine::BlockPool;
    use disk_format::map_page::PageError;
    use std::error::Error;

    const CIPHER: Cipher = Cipher::Aes256Gcm;

    fn chunks() -> (Sender<Chunk>, Receiver<Chunk>, Sender<ToStorer>, Receiver<ToStorer>) {
        let (free_tx, free_rx) = bounded::<Chunk>(CHUNKS);
        free_tx.send(Chunk::new()).unwrap();
        let (to_storer, storer_rx) = bounded::<ToStorer>(CHUNKS);
        (free_tx, free_rx, to_storer, storer_rx)
    }

    #[test]
    fn a_block_the_new_map_refuses_is_named_and_is_not_taken_for_a_damaged_previous_map() {
        let geometry = Geometry::new(8 << 20, 1 << 20).unwrap();
        let (_free_tx, free_rx, to_storer, _storer_rx) = chunks();
        let mut packer =
            Packer::new(&free_rx, &to_storer, MapBuilder::new(geometry), false, CIPHER, true, PACK_MAX).unwrap();
        let (_pool, mut bufs) = BlockPool::new(1 << 20, 1).unwrap();
        let e = packer.take(&Sealed::Zero { index: 8, buf: bufs.pop().unwrap() }).unwrap_err();
        let ShipError::MapEntry { block: 8, source: PageError::BlockOutOfRange { block: 8, block_count: 8 } } = &e
        else {
            panic!("{e:?}")
        };
        assert_eq!(e.to_string(), "building the point: block 8 is past the end of the disk (8 blocks)");
        assert!(e.source().is_some_and(|s| s.is::<PageError>()), "the map's error is the source");
        // A previous map that cannot be used makes the cycle verify the whole
        // disk; a refused entry of the new map must not.
        assert!(!previous_map_unusable(&e));
        assert!(previous_map_unusable(&ShipError::Page(PageError::BadMagic)));
    }

    #[test]
    fn blocks_lost_in_the_pipeline_and_a_stopped_storer_are_typed_with_the_old_messages() {
        let geometry = Geometry::new(8 << 20, 1 << 20).unwrap();
        let (_free_tx, free_rx, to_storer, _storer_rx) = chunks();
        let packer =
            Packer::new(&free_rx, &to_storer, MapBuilder::new(geometry), true, CIPHER, true, PACK_MAX).unwrap();
        let e = packer.finish(5, 0).map(drop).unwrap_err();
        assert!(matches!(e, ShipError::BlocksLost { shipped: 0, blocks: 5 }), "{e:?}");
        assert_eq!(e.to_string(), "building the point: internal error: 0 of 5 blocks went through the pipeline");

        // The storer stopped: no chunk will ever come back for a new pack.
        let (free_tx, free_rx, to_storer, _storer_rx) = chunks();
        drop(free_tx);
        let _first = free_rx.recv().unwrap();
        let e = Packer::new(&free_rx, &to_storer, MapBuilder::new(geometry), true, CIPHER, true, PACK_MAX)
            .map(drop)
            .unwrap_err();
        assert!(
            matches!(&e, ShipError::PackOut { pack: 0, source } if source.to_string() == "the pack storer stopped")
        );
        assert_eq!(e.to_string(), "building the point: the pack storer stopped");
    }

    #[test]
    fn runs_group_consecutive_blocks() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[3]), vec![(3, 1)]);
        assert_eq!(runs(&[0, 1, 2, 5, 6, 9]), vec![(0, 3), (5, 2), (9, 1)]);
    }
}
