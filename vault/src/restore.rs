//! Restore: write a point's disk image, verifying everything read.
//!
//! Order of work, so that a damaged vault is refused as early as possible:
//!
//! 1. the key against the vault config, then the root: MAC, and that it is
//!    stored under its own disk and sequence;
//! 2. every map page the root names: hash against its id, format, place;
//! 3. every non-zero block located in the block index, with the length the
//!    geometry gives it: a block in no readable pack fails the restore here,
//!    before any data is written;
//! 4. the packs, each read once, in chunks of about 4 MiB (whole blobs; a
//!    chunk stays in the CPU caches while it is opened and written): a pack
//!    of which at least half is needed is read from end to end and must
//!    carry its name (version 2: BLAKE3 of header, index and trailer, checked
//!    from the tail before any blob is read; version 1: BLAKE3 of every
//!    byte), so a truncated or swapped pack is refused even when the blocks
//!    this point needs from it are intact; from other packs only the needed
//!    blobs are read, runs closer than 1 MiB in one read;
//! 5. every blob opened with the key (AEAD tag with the block id as AAD, then
//!    the plaintext's keyed hash against the id) before its block is written.
//!
//! Only authenticated blocks are ever written. A pack that turns out not to
//! match its name fails the restore after the blocks it gave were written;
//! they are right, but the image as a whole is then incomplete. A pack read
//! by ranges is not hashed as a whole; each blob read from it is still
//! authenticated on its own, and `check` verifies every pack's name.
//!
//! Packs are processed by up to four threads (never more than the cores),
//! or by as many as the backend wants reads in flight
//! ([`crate::Backend::reads_in_flight`]: 16 for a vault server, whose round
//! trip the extra threads hide);
//! `progress` is called on the caller's thread. Zero blocks are not written
//! to a regular file (it is truncated and re-extended, so they read as
//! zeros and stay sparse); on a block device they are written as zeros.
//!
//! The point is held ([`Vault::hold`]) for the whole restore, so retention
//! does not prune it meanwhile; the vault must therefore be writable (the
//! lease is an object in it).
//!
//! On any error the image is incomplete (other threads may have written
//! blocks of other packs): the caller must not use it.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};

use disk_format::pack::{pack_id_from_tail, PackVersion};
use disk_format::{BlockId, CryptoError, Geometry, Keys, PackId, PageError, Root, SEAL_OVERHEAD};

use crate::backend::Kind;
use crate::error::{Damage, VaultError};
use crate::index::{read_pack_tail, BlockIndex, BlockLocation};
use crate::progress::Progress;
use crate::store::{point_label, Vault};

/// Read a pack whole when at least this fraction (1/N) of it is needed.
const WHOLE_PACK_DIVISOR: u64 = 2;
/// Needed blobs this close together are fetched in one ranged read.
const MAX_GAP: u64 = 1 << 20;
/// Largest single read: packs are read in chunks this size, which stay in
/// the CPU's caches while they are hashed, opened and written (reading 32 MiB
/// packs whole measured 40% more CPU per byte).
const CHUNK: u64 = 4 << 20;
/// At most this many restore threads.
const MAX_THREADS: usize = 4;

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RestoreReport {
    /// Non-zero blocks written.
    pub blocks_written: u64,
    /// Zero blocks (not stored; left sparse or written as zeros).
    pub zero_blocks: u64,
    /// Bytes of non-zero blocks written.
    pub bytes_written: u64,
    /// Packs read from (whole or by ranges).
    pub packs_read: u64,
    /// Bytes read from packs.
    pub pack_bytes_read: u64,
    /// Backend calls that read pack data.
    pub pack_reads: u64,
    /// Packs whose index was read to find the point's blocks: those its
    /// page packs hint at, or every pack in the vault (see
    /// [`Vault::hinted_index`]).
    pub packs_indexed: u64,
}

/// One block to write: where it goes and where its blob is.
#[derive(Clone, Copy)]
pub(crate) struct Item<'a> {
    pub(crate) block: u64,
    pub(crate) id: &'a BlockId,
    pub(crate) loc: &'a BlockLocation,
}

/// The blocks a restore needs from one pack, by blob offset.
pub(crate) struct PackJob<'a> {
    pack: PackId,
    pub(crate) items: Vec<Item<'a>>,
    whole: bool,
}

/// A restore's per-pack jobs and its count of zero blocks.
pub(crate) type Plan<'a> = (Vec<PackJob<'a>>, u64);

/// The first block of a point no pack of an index holds (block, id), and
/// how many such blocks there are.
pub(crate) type Unplaced = (u64, BlockId, u64);

/// State shared by the restore threads.
struct Run<'a> {
    vault: &'a Vault,
    keys: &'a Keys,
    out: &'a File,
    geometry: Geometry,
    point: String,
    stop: AtomicBool,
    bytes_read: AtomicU64,
    reads: AtomicU64,
}

/// Map pages a restore fetches at once (2,048 pages name 64 GiB of a disk of
/// 64 KiB blocks and take 32 MiB of memory).
const PAGE_BATCH: u64 = 2048;

impl Vault {
    /// Restores point `sequence` of `disk` into `out` as a raw image of the
    /// disk at the point's cut, verifying every object read (see the module
    /// documentation). `progress` counts bytes of non-zero blocks written
    /// (one phase, "restoring"). `out` is truncated and sized to the disk if it is a
    /// regular file; a block device must be at least as large as the disk.
    pub fn restore(
        &self,
        disk: &str,
        sequence: u64,
        keys: &Keys,
        out: &File,
        progress: &mut dyn Progress,
    ) -> Result<RestoreReport, VaultError> {
        // Held until the restore returns: prune keeps the point meanwhile.
        let _hold = self.hold(disk, sequence, "restore")?;
        let root = self.load_root(disk, sequence, Some(keys))?;
        // Named by the disk the key shows (its chain is a keyed id).
        let point = point_label(&root.disk_name, sequence);
        self.with_plan(&point, &root, |(jobs, zeros), packs_indexed| {
            let geometry = root.geometry;
            let sparse = prepare_output(out, geometry.disk_size)?;
            let total: u64 = jobs.iter().flat_map(|j| &j.items).map(|i| geometry.block_len(i.block) as u64).sum();
            let blocks: u64 = jobs.iter().map(|j| j.items.len() as u64).sum();
            progress.start("restoring", total);

            let run = Run {
                vault: self,
                keys,
                out,
                geometry,
                point: point.clone(),
                stop: AtomicBool::new(false),
                bytes_read: AtomicU64::new(0),
                reads: AtomicU64::new(0),
            };
            // As many threads as cores (up to MAX_THREADS) to open and write, or
            // more where the vault wants more reads in flight (a remote one:
            // each thread has one ranged read outstanding at a time).
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()).min(MAX_THREADS);
            let threads = cores.max(self.backend().reads_in_flight()).min(jobs.len());
            let next = AtomicUsize::new(0);
            let first_error: Mutex<Option<(usize, VaultError)>> = Mutex::new(None);
            let (tx, rx) = mpsc::channel::<u64>();
            std::thread::scope(|s| {
                for _ in 0..threads {
                    let tx = tx.clone();
                    let (run, jobs, next, first_error) = (&run, &jobs, &next, &first_error);
                    s.spawn(move || {
                        while !run.stop.load(Ordering::Relaxed) {
                            let n = next.fetch_add(1, Ordering::Relaxed);
                            let Some(job) = jobs.get(n) else { break };
                            if let Err(e) = run.job(job, &tx) {
                                run.stop.store(true, Ordering::Relaxed);
                                let mut slot = first_error.lock().unwrap_or_else(|p| p.into_inner());
                                if slot.as_ref().is_none_or(|(m, _)| n < *m) {
                                    *slot = Some((n, e));
                                }
                            }
                        }
                    });
                }
                drop(tx);
                for bytes in rx {
                    progress.advance(bytes);
                }
            });
            if let Some((_, e)) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
                return Err(e);
            }
            if !sparse {
                write_zero_blocks(out, &geometry, &jobs)?;
            }
            out.sync_all().map_err(|source| VaultError::Output { what: "syncing the image".to_string(), source })?;
            Ok(RestoreReport {
                blocks_written: blocks,
                zero_blocks: zeros,
                bytes_written: total,
                packs_read: jobs.len() as u64,
                pack_bytes_read: run.bytes_read.into_inner(),
                pack_reads: run.reads.into_inner(),
                packs_indexed: packs_indexed as u64,
            })
        })
    }

    /// Plans the reading of `root`'s blocks against the packs its page packs
    /// hint at ([`Vault::hinted_index`]), or, where a page has no hints or
    /// the hinted packs lack a block, against every pack; hands the plan, and
    /// how many packs' indexes it was made from, to `then` (the plan borrows
    /// the index).
    pub(crate) fn with_plan<R>(
        &self,
        point: &str,
        root: &Root,
        then: impl FnOnce(Plan<'_>, usize) -> Result<R, VaultError>,
    ) -> Result<R, VaultError> {
        if let Some(index) = self.hinted_index(root)? {
            if let Ok(plan) = self.plan_within(point, root, &index)? {
                return then(plan, index.pack_count());
            }
        }
        let every = self.block_index()?;
        then(self.plan(point, root, &every)?, every.pack_count())
    }

    /// Loads and checks the point's pages and locates every non-zero block.
    /// Returns the per-pack jobs, ordered by the first block each writes, and
    /// the number of zero blocks. A block in no pack of `index` is
    /// [`VaultError::Damaged`] (missing).
    pub(crate) fn plan<'a>(
        &self,
        point: &str,
        root: &Root,
        index: &'a BlockIndex,
    ) -> Result<(Vec<PackJob<'a>>, u64), VaultError> {
        self.plan_within(point, root, index)?
            .map_err(|(block, id, count)| missing_block(point, block, &id, count, index))
    }

    /// [`Vault::plan`], but a block in no pack of `index` is `Ok(Err((block,
    /// id, blocks missing)))`: for an index of some packs only
    /// ([`Vault::hinted_index`]), where the caller looks in every pack next.
    pub(crate) fn plan_within<'a>(
        &self,
        point: &str,
        root: &Root,
        index: &'a BlockIndex,
    ) -> Result<Result<Plan<'a>, Unplaced>, VaultError> {
        let g = root.geometry;
        let damaged = |block: u64, object: String, damage: Damage, detail: String| VaultError::Damaged {
            point: point.to_string(),
            block: Some(block),
            object,
            damage,
            detail,
        };
        let mut by_pack: HashMap<PackId, Vec<Item<'a>>> = HashMap::new();
        let mut zeros = 0u64;
        let mut missing: Option<(u64, BlockId)> = None;
        let mut missing_count = 0u64;
        // Pages are fetched a batch at a time (32 MiB of pages at most in
        // memory): from page packs, one index read per pack and one ranged
        // read per run of pages (vault/src/pages.rs).
        let mut fetched = HashMap::new();
        for (p, page_id) in (0u64..).zip(&root.pages) {
            if p % PAGE_BATCH == 0 {
                let batch: Vec<u64> = (p..(p + PAGE_BATCH).min(root.pages.len() as u64)).collect();
                fetched = self.load_pages(point, root, &batch)?;
            }
            let blocks = root.page_blocks(p);
            if page_id.is_zero() {
                zeros += blocks.end - blocks.start;
                continue;
            }
            let object = match root.page_pack(p) {
                Some(pack) => format!("pages/{pack}"),
                None => format!("pages/{page_id}"),
            };
            let what = format!("map page {p} (blocks {}..{})", blocks.start, blocks.end);
            let bytes = fetched.remove(&p).expect("load_pages returns every non-zero page or fails");
            let page = root.check_page(p, &bytes).map_err(|e| {
                let damage =
                    if matches!(e, PageError::WrongPlace { .. }) { Damage::Misplaced } else { Damage::Corrupt };
                damaged(blocks.start, object.clone(), damage, format!("{what}: {e}"))
            })?;
            for (block, id) in blocks.zip(&page.entries) {
                if id.is_zero() {
                    zeros += 1;
                    continue;
                }
                let Some((id, loc)) = index.get_key_value(id) else {
                    missing_count += 1;
                    missing.get_or_insert((block, *id));
                    continue;
                };
                let want = g.block_len(block);
                // Stored as it is, the blob holds the whole block; compressed,
                // less of it.
                let fits =
                    if loc.compressed { (loc.plain_len as usize) < want } else { loc.plain_len as usize == want };
                if !fits {
                    return Err(damaged(
                        block,
                        format!("packs/{}", loc.pack),
                        Damage::Misplaced,
                        format!(
                            "block id {id} is stored with {} bytes; this block of the disk is {want}",
                            loc.plain_len
                        ),
                    ));
                }
                by_pack.entry(loc.pack).or_default().push(Item { block, id, loc });
            }
        }
        if let Some((block, id)) = missing {
            return Ok(Err((block, id, missing_count)));
        }
        let mut jobs: Vec<PackJob<'a>> = by_pack
            .into_iter()
            .map(|(pack, mut items)| {
                items.sort_unstable_by_key(|i| (i.loc.range.start, i.block));
                let mut needed = 0u64;
                let mut last = None;
                for i in &items {
                    if last != Some(i.loc.entry) {
                        needed += i.loc.range.end - i.loc.range.start;
                        last = Some(i.loc.entry);
                    }
                }
                let len = index.pack_len(&pack).unwrap_or(u64::MAX);
                PackJob { pack, items, whole: needed.saturating_mul(WHOLE_PACK_DIVISOR) >= len }
            })
            .collect();
        jobs.sort_unstable_by_key(|j| j.items.iter().map(|i| i.block).min());
        Ok(Ok((jobs, zeros)))
    }
}

/// Where an opened block's plaintext is.
enum Plain {
    /// In the read buffer, where the blob was decrypted.
    At(Range<usize>),
    /// Inflated from a compressed blob.
    Inflated(Vec<u8>),
}

impl Plain {
    fn bytes<'b>(&'b self, buf: &'b [u8]) -> &'b [u8] {
        match self {
            Plain::At(r) => &buf[r.clone()],
            Plain::Inflated(b) => b,
        }
    }
}

/// The error for a block in no readable pack.
fn missing_block(point: &str, block: u64, id: &BlockId, count: u64, index: &BlockIndex) -> VaultError {
    let others = if count > 1 { format!("; {} blocks of this point are missing in all", count) } else { String::new() };
    let (object, why) = match index.unreadable() {
        [] => (
            format!("the pack holding block id {id}"),
            format!(
                "it is in none of the vault's {} packs: the pack that held it is missing (deleted?)",
                index.pack_count()
            ),
        ),
        [one] => (
            format!("packs/{}", one.name),
            format!(
                "block id {id} is in no readable pack; this pack, which may hold it, is unreadable: {}",
                one.detail
            ),
        ),
        many => (
            format!("packs/{}", many[0].name),
            format!(
                "block id {id} is in no readable pack; {} packs, which may hold it, are unreadable, this one: {}",
                many.len(),
                many[0].detail
            ),
        ),
    };
    VaultError::Damaged {
        point: point.to_string(),
        block: Some(block),
        object,
        damage: Damage::Missing,
        detail: format!("{why}{others}. Run `lifeboat vault check` to list every damaged object"),
    }
}

/// Sizes the output; returns whether it is a sparse regular file.
fn prepare_output(out: &File, disk_size: u64) -> Result<bool, VaultError> {
    fn err(what: &'static str) -> impl FnOnce(std::io::Error) -> VaultError {
        move |source| VaultError::Output { what: what.to_string(), source }
    }
    let meta = out.metadata().map_err(err("reading its metadata"))?;
    if meta.file_type().is_file() {
        // Truncate first: whatever the file held must not show through where
        // the point has zero blocks.
        out.set_len(0).map_err(err("truncating it"))?;
        out.set_len(disk_size).map_err(err("sizing it to the disk"))?;
        return Ok(true);
    }
    if meta.file_type().is_block_device() {
        let mut f = out;
        let size = f.seek(SeekFrom::End(0)).map_err(err("finding the device's size"))?;
        if size < disk_size {
            return Err(VaultError::Output {
                what: format!("the device holds {size} bytes, the disk is {disk_size}"),
                source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
            });
        }
        return Ok(false);
    }
    Err(VaultError::Output {
        what: "the output is neither a regular file nor a block device".to_string(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

/// Writes zeros over every zero block (outputs that are not sparse files).
fn write_zero_blocks(out: &File, geometry: &Geometry, jobs: &[PackJob<'_>]) -> Result<(), VaultError> {
    let mut written = vec![false; usize::try_from(geometry.block_count).expect("block map fits in memory")];
    for i in jobs.iter().flat_map(|j| &j.items) {
        written[usize::try_from(i.block).expect("fits")] = true;
    }
    let zeros = vec![0u8; geometry.block_size as usize];
    for (block, _) in (0u64..).zip(&written).filter(|(_, w)| !**w) {
        let r = geometry.block_range(block);
        out.write_all_at(&zeros[..geometry.block_len(block)], r.start).map_err(|source| VaultError::Output {
            what: format!("writing zero block {block} at byte {}", r.start),
            source,
        })?;
    }
    Ok(())
}

impl Run<'_> {
    fn damaged(&self, block: u64, pack: &PackId, damage: Damage, detail: String) -> VaultError {
        VaultError::Damaged {
            point: self.point.clone(),
            block: Some(block),
            object: format!("packs/{pack}"),
            damage,
            detail,
        }
    }

    /// Reads `len` bytes at `offset` of the pack, turning a vanished or
    /// short pack into damage at `block`.
    fn read(&self, pack: &PackId, block: u64, offset: u64, len: u64) -> Result<Vec<u8>, VaultError> {
        let bytes =
            self.vault.backend().get_range(Kind::Pack, &pack.to_string(), offset, len).map_err(|e| match e {
                VaultError::NotFound { .. } => {
                    self.damaged(block, pack, Damage::Missing, "the pack vanished during the restore".to_string())
                }
                VaultError::ShortObject { size, end, .. } => self.damaged(
                    block,
                    pack,
                    Damage::Corrupt,
                    format!("the pack is {size} bytes but its index places blobs up to byte {end} (truncated)"),
                ),
                other => other,
            })?;
        self.reads.fetch_add(1, Ordering::Relaxed);
        self.bytes_read.fetch_add(bytes.len() as u64, Ordering::Relaxed);
        Ok(bytes)
    }

    /// [`Run::open`], once per blob: consecutive items of one entry
    /// (equal blocks of the point) share what `last` holds.
    fn open_once<'l>(
        &self,
        buf: &mut [u8],
        at: usize,
        item: &Item<'_>,
        last: &'l mut Option<(u32, Plain)>,
    ) -> Result<&'l Plain, VaultError> {
        if last.as_ref().is_none_or(|(entry, _)| *entry != item.loc.entry) {
            *last = Some((item.loc.entry, self.open(buf, at, item)?));
        }
        Ok(&last.as_ref().expect("set above").1)
    }

    /// Opens the blob at `buf[at..at + len]` for `item` in place; returns
    /// where its block's plaintext is: in `buf`, or inflated beside it.
    fn open(&self, buf: &mut [u8], at: usize, item: &Item<'_>) -> Result<Plain, VaultError> {
        let len = usize::try_from(item.loc.range.end - item.loc.range.start).expect("a blob fits in memory");
        let crypto = |e: CryptoError| {
            let damage = match e {
                CryptoError::Inauthentic { .. } | CryptoError::IdMismatch { .. } => Damage::Inauthentic,
                _ => Damage::Corrupt,
            };
            self.damaged(item.block, &item.loc.pack, damage, format!("entry {}: {e}", item.loc.entry))
        };
        let sealed = self.keys.decrypt_in_place(item.loc.cipher, item.id, &mut buf[at..at + len]).map_err(crypto)?;
        debug_assert_eq!(sealed.len() + SEAL_OVERHEAD, len);
        if !item.loc.compressed {
            self.keys.check_block_id(item.id, sealed).map_err(crypto)?;
            return Ok(Plain::At(at + disk_format::NONCE_LEN..at + disk_format::NONCE_LEN + sealed.len()));
        }
        let r = self.geometry.block_range(item.block);
        let mut block = vec![0u8; usize::try_from(r.end - r.start).expect("a block fits in memory")];
        crate::compress::decompress(sealed, &mut block).map_err(|detail| {
            // Authenticated yet not a compressed block: a key holder's forgery.
            self.damaged(item.block, &item.loc.pack, Damage::Inauthentic, format!("entry {}: {detail}", item.loc.entry))
        })?;
        self.keys.check_block_id(item.id, &block).map_err(crypto)?;
        Ok(Plain::Inflated(block))
    }

    fn write(&self, block: u64, plain: &[u8], tx: &mpsc::Sender<u64>) -> Result<(), VaultError> {
        let r = self.geometry.block_range(block);
        debug_assert_eq!(plain.len() as u64, r.end - r.start);
        self.out.write_all_at(plain, r.start).map_err(|source| VaultError::Output {
            what: format!("writing block {block} at byte {}", r.start),
            source,
        })?;
        let _ = tx.send(plain.len() as u64);
        Ok(())
    }

    /// Reads, verifies and writes every block `job` needs from its pack.
    fn job(&self, job: &PackJob<'_>, tx: &mpsc::Sender<u64>) -> Result<(), VaultError> {
        if job.whole {
            self.whole_pack(job, tx)
        } else {
            self.ranges(job, tx)
        }
    }

    /// Reads the whole pack in chunks of about [`CHUNK`] and writes the
    /// needed blocks from each chunk as it comes (each authenticated on its
    /// own). The pack must carry its name: a version 2 pack's name is
    /// checked from its tail before any blob is read; a version 1 pack's is
    /// the hash of every byte, checked at the end.
    fn whole_pack(&self, job: &PackJob<'_>, tx: &mpsc::Sender<u64>) -> Result<(), VaultError> {
        let first = job.items[0].block;
        let tail = match read_pack_tail(self.vault.backend(), &job.pack.to_string())? {
            Ok(tail) => tail,
            Err(why) => return Err(self.damaged(first, &job.pack, Damage::Corrupt, why)),
        };
        for item in &job.items {
            let same = tail.index.entries().get(item.loc.entry as usize).map(|e| (e.id, e.range()));
            if same != Some((*item.id, item.loc.range.clone())) {
                return Err(self.damaged(
                    item.block,
                    &job.pack,
                    Damage::Corrupt,
                    format!("entry {} is not the blob the pack's index named when the restore began", item.loc.entry),
                ));
            }
        }
        let misnamed = |got: PackId| {
            self.damaged(
                first,
                &job.pack,
                Damage::Corrupt,
                format!(
                    "the pack's contents hash to {got}, not to its name (damaged or swapped with another pack); the \
                     blocks this point needs from it authenticate, but a misnamed pack is refused"
                ),
            )
        };
        let mut hasher = match tail.index.version() {
            PackVersion::V1 => Some(blake3::Hasher::new()),
            v @ (PackVersion::V2 | PackVersion::V3) => {
                let got = pack_id_from_tail(v, &tail.bytes).expect("named by its tail");
                if got != job.pack {
                    return Err(misnamed(got));
                }
                None
            }
        };
        let mut items = job.items.iter().peekable();
        let mut at = 0u64;
        let mut entries = tail.index.entries().iter().peekable();
        while at < tail.index.index_offset() {
            // The next chunk: whole blobs from `at`, about CHUNK bytes.
            let mut end = at;
            while let Some(e) = entries.peek() {
                let e_end = e.offset + u64::from(e.blob_len);
                if end > at && e_end - at > CHUNK {
                    break;
                }
                end = e_end;
                entries.next();
            }
            if end == at {
                // Unreachable: a parsed index tiles the pack up to its index.
                return Err(self.damaged(
                    first,
                    &job.pack,
                    Damage::Corrupt,
                    "the index leaves bytes unaccounted".into(),
                ));
            }
            let mut buf = self.read(&job.pack, items.peek().map_or(first, |i| i.block), at, end - at)?;
            if at == 0 {
                disk_format::pack::check_header(&buf)
                    .map_err(|e| self.damaged(first, &job.pack, Damage::Corrupt, e.to_string()))?;
            }
            if let Some(h) = hasher.as_mut() {
                let _ = h.update(&buf);
            }
            let mut last: Option<(u32, Plain)> = None;
            while let Some(item) = items.next_if(|i| i.loc.range.end <= end) {
                let from = usize::try_from(item.loc.range.start - at).expect("inside the chunk");
                let plain = self.open_once(&mut buf, from, item, &mut last)?;
                self.write(item.block, plain.bytes(&buf), tx)?;
            }
            at = end;
        }
        let got = match hasher {
            Some(mut h) => PackId(*h.update(&tail.bytes).finalize().as_bytes()),
            None => job.pack,
        };
        if got != job.pack || tail.len != tail.index.index_offset() + tail.bytes.len() as u64 {
            return Err(misnamed(got));
        }
        Ok(())
    }

    fn ranges(&self, job: &PackJob<'_>, tx: &mpsc::Sender<u64>) -> Result<(), VaultError> {
        let mut i = 0;
        while i < job.items.len() {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            // One read: items[i..j], blobs closer than MAX_GAP, at most MAX_READ.
            let start = job.items[i].loc.range.start;
            let mut end = job.items[i].loc.range.end;
            let mut j = i + 1;
            while let Some(next) = job.items.get(j) {
                let r = &next.loc.range;
                if r.start > end.saturating_add(MAX_GAP) || r.end.max(end) - start > CHUNK {
                    break;
                }
                end = end.max(r.end);
                j += 1;
            }
            let mut buf = self.read(&job.pack, job.items[i].block, start, end - start)?;
            let mut last: Option<(u32, Plain)> = None;
            for item in &job.items[i..j] {
                let at = usize::try_from(item.loc.range.start - start).expect("inside the read");
                let plain = self.open_once(&mut buf, at, item, &mut last)?;
                self.write(item.block, plain.bytes(&buf), tx)?;
            }
            i = j;
        }
        Ok(())
    }
}
