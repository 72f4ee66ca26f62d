//! The local index cache: the block index of a vault kept on the protected
//! host between cycles, so that a cycle's backend requests grow with what
//! changed, not with the vault (issue 14, point 5).
//!
//! Without it, every cycle rebuilds the index ([`crate::Vault::block_index`]):
//! one LIST and a ranged read of every pack's tail, O(packs) requests. With
//! it, a cycle loads the index from a file on the host and asks the vault
//! only about what it uses:
//!
//! - **A hint, never trusted.** The cache can only make a block be shipped
//!   again, never make a point reference a block the vault lacks. Before a
//!   cycle commits a root, the packs its deduplicated blocks were found in
//!   are confirmed present with ONE [`Backend::missing`] call
//!   ([`IndexCache::confirm`]); a pack gone (garbage-collected at the site,
//!   a vault rolled back) is dropped from the cache and its blocks are
//!   shipped again in the same cycle. A pack's name binds its index (its id
//!   is the hash of index and trailer), so a pack present under a cached
//!   name holds the cached blocks at the cached places. The cycle lease
//!   keeps garbage collection out from the check to the commit.
//! - **Re-listing, bounded.** Every [`RELIST_EVERY`] committed cycles (and
//!   whenever the cache is new or was discarded) the cycle lists the packs
//!   (one LIST: one request per 10,000 names on the vault server), reads the
//!   tails only of packs the cache lacks (another host's, or this host's
//!   from a cycle that failed after storing them) and drops packs no longer
//!   listed. In between no LIST is made: another writer's packs are missed
//!   for a while (its blocks are shipped again, stored twice until GC), and a
//!   garbage-collected pack is caught by the `missing` check. A full cycle
//!   (a first cycle, a suspect state, the verify after a failback) always
//!   lists: it reads the whole disk anyway, and must find the packs the
//!   other side of a failback wrote.
//! - **Verifiable.** Every record carries a MAC (keyed BLAKE3, 128 bits,
//!   under a key derived from the customer key) over the vault's identity
//!   and the record, and the header names the vault id and key fingerprint:
//!   a damaged, foreign or forged cache is discarded and rebuilt from the
//!   vault ([`Opened::Discarded`] says why; the shipper logs it), never
//!   used. A record cut short at the end of the file (a crash while
//!   appending) is ignored.
//! - **Crash-safe.** A committed cycle appends its records (new packs,
//!   dropped packs, the cycle count) in one write and fsyncs; when the file
//!   has grown to twice its live size it is rewritten whole to a temporary
//!   file and renamed over (atomic replace). A cycle killed mid-way appends
//!   nothing, or a torn record that the next load ignores: the old cache
//!   stays, still a correct hint. Writers in several processes (the agent
//!   and `ship --once`) take an exclusive `flock` on `FILE.lock` to append
//!   or rewrite; a record one process loses to another's rewrite is a lost
//!   hint, not an error.
//!
//! Where: a file `VAULTID-FINGERPRINT.idx` (both in hex) in the directory the
//! caller gives, normally `HOME/cache/index/` on the protected host. The
//! vault id is random per vault and fixed at `vault init`, so the cache
//! follows the vault whatever location string names it (a path today, a
//! `lifeboat://` URL tomorrow), and a vault created anew at the same place
//! gets a new cache.
//!
//! File layout (all integers little-endian). Header, 64 bytes: magic (the
//! first 8 bytes of BLAKE3("lifeboat index cache v1")), version u16 = 2, 6
//! reserved zero bytes, vault id (16), key fingerprint (16), MAC (16) of the
//! first 48 bytes. Then records: payload length u32, kind u8, 3 reserved
//! zero bytes, the payload, and a MAC (16) of `vault id ‖ the record's first
//! 8 bytes ‖ payload`. Kinds: 1 = packs, back to back (each: id 32, length u64,
//! count u32, cipher code u8, 3 reserved zero bytes, then per block: id 32, entry u32, range start u64, range end
//! u64, sealed length u32, flags u32: 1 = compressed); 2 = packs dropped (their ids, 32 each); 3 = cycles since the last full
//! listing (u32). Records apply in order.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use disk_format::keys::Keys;
use disk_format::{BlockId, Cipher, PackId, PackIndex};

use crate::backend::Kind;
use crate::error::VaultError;
use crate::index::{read_tails, BlockIndex, BlockLocation};
use crate::store::Vault;

/// Committed cycles between two full listings of the vault's packs.
pub const RELIST_EVERY: u32 = 32;

const VERSION: u16 = 2;
const HEADER_LEN: usize = 64;
const MAC_LEN: usize = 16;
const RECORD_HEAD: usize = 8;
const KIND_PACK: u8 = 1;
const KIND_DROP: u8 = 2;
const KIND_CYCLES: u8 = 3;
const PACK_HEAD: usize = 48;
const ENTRY_LEN: usize = 60;
/// Bytes of packs a rewritten file puts in one record, at least.
const BATCH: usize = 1 << 20;
/// A record longer than this is damage, not data (a pack of 1 GiB of index).
const MAX_RECORD: usize = 1 << 30;

fn magic() -> [u8; 8] {
    blake3::hash(b"lifeboat index cache v1").as_bytes()[..8].try_into().expect("8 bytes")
}

/// Why a cache file was not used (it is rebuilt from the vault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheProblem {
    /// The file could not be read.
    #[error("index cache {}: reading it: {source}", path.display())]
    Io {
        /// The cache file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Not an index cache of this version (bad magic, version or reserved bytes).
    #[error("index cache {}: not an index cache of version {VERSION}", path.display())]
    NotACache {
        /// The cache file.
        path: PathBuf,
    },
    /// Made for another vault, or under another key.
    #[error("index cache {}: made for another vault or under another key", path.display())]
    Foreign {
        /// The cache file.
        path: PathBuf,
    },
    /// A record's MAC does not match: damaged or tampered with.
    #[error("index cache {}: damaged at byte {offset} (its MAC does not match)", path.display())]
    Damaged {
        /// The cache file.
        path: PathBuf,
        /// Where the bad record starts.
        offset: u64,
    },
}

/// What [`IndexCache::open`] found.
#[derive(Debug)]
#[non_exhaustive]
pub enum Opened {
    /// No cache yet: it is built from the vault.
    New,
    /// The cache was loaded, with this many packs.
    Loaded {
        /// Packs in the cache.
        packs: usize,
    },
    /// The cache could not be used and is rebuilt from the vault.
    Discarded(CacheProblem),
}

/// What [`IndexCache::sync`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Synced {
    /// The packs were listed (a full listing was due).
    pub listed: bool,
    /// Tails read: packs listed that the cache lacked.
    pub read: usize,
    /// Packs dropped: cached but no longer listed.
    pub dropped: usize,
}

/// The block index of one vault, cached on the host; see the module doc.
pub struct IndexCache {
    path: PathBuf,
    key: [u8; 32],
    vault_id: [u8; 16],
    fingerprint: [u8; 16],
    index: BlockIndex,
    cycles_since_list: u32,
    /// The file must be rewritten whole (none, discarded, or torn at its end).
    rewrite: bool,
    /// Records to append at the next commit.
    pending: Vec<u8>,
    /// Committed cycles between two full listings ([`RELIST_EVERY`]).
    pub relist_every: u32,
    /// The file as this cache last read or wrote it: device, inode and
    /// length. Another process that appended to it or rewrote it since
    /// changes one of them ([`IndexCache::is_current`]).
    stamp: Option<(u64, u64, u64)>,
}

/// A cache kept in memory between the cycles of one process (the agent):
/// the next cycle of the same vault takes it instead of loading the file,
/// if the file is still as the cache left it ([`IndexCache::is_current`]).
/// Loading is the one cost of a cached cycle that grows with the vault
/// (about 0.5 µs per pack: 25 ms at 50,000 packs).
pub type WarmIndex = std::sync::Mutex<Option<IndexCache>>;

impl std::fmt::Debug for IndexCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IndexCache({}, {} packs)", self.path.display(), self.index.pack_count())
    }
}

impl IndexCache {
    /// The cache file of `vault` (under `keys`) in `dir`.
    pub fn path_in(dir: &Path, vault: &Vault) -> PathBuf {
        let c = vault.config();
        dir.join(format!("{}-{}.idx", hex(&c.vault_id.0), hex(&c.key_fingerprint.0)))
    }

    /// Loads the cache of `vault` from `dir`. Never fails: a cache that is
    /// missing, unreadable, damaged or foreign is started afresh (and a full
    /// listing made due), and [`Opened`] says which.
    pub fn open(dir: &Path, vault: &Vault, keys: &Keys) -> (IndexCache, Opened) {
        let config = vault.config();
        let mut cache = IndexCache {
            path: IndexCache::path_in(dir, vault),
            key: keys.audit_mac(b"lifeboat index cache v1: the key of its MACs"),
            vault_id: config.vault_id.0,
            fingerprint: config.key_fingerprint.0,
            index: BlockIndex::new(),
            cycles_since_list: 0,
            rewrite: true,
            pending: Vec::new(),
            relist_every: RELIST_EVERY,
            stamp: None,
        };
        let opened = match read_stamped(&cache.path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Opened::New,
            Err(source) => Opened::Discarded(CacheProblem::Io { path: cache.path.clone(), source }),
            Ok((bytes, stamp)) => match cache.load(&bytes) {
                Ok(()) => {
                    cache.stamp = Some(stamp);
                    Opened::Loaded { packs: cache.index.pack_count() }
                }
                Err(problem) => Opened::Discarded(problem),
            },
        };
        if !matches!(opened, Opened::Loaded { .. }) {
            cache.index = BlockIndex::new();
            cache.cycles_since_list = u32::MAX;
            cache.rewrite = true;
        }
        (cache, opened)
    }

    /// Whether this cache, kept in memory since it was loaded or saved, is
    /// still the one to use for `vault` with the caches in `dir`: its file,
    /// and the file has not changed since (another process, `ship --once`
    /// or a failback, appended to it or rewrote it). A `false` means load
    /// it again. Either way it stays a hint that every cycle confirms.
    pub fn is_current(&self, dir: &Path, vault: &Vault) -> bool {
        self.path == IndexCache::path_in(dir, vault)
            && self.stamp.is_some_and(|s| std::fs::metadata(&self.path).is_ok_and(|m| stamp_of(&m, m.len()) == s))
    }

    /// The cached index.
    pub fn index(&self) -> &BlockIndex {
        &self.index
    }

    /// The cache file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the next [`IndexCache::sync`] lists the vault's packs.
    pub fn listing_due(&self) -> bool {
        self.cycles_since_list >= self.relist_every
    }

    /// Makes the next [`IndexCache::sync`] list the vault's packs, whatever
    /// the count of cycles since the last listing.
    pub fn require_listing(&mut self) {
        self.cycles_since_list = self.cycles_since_list.max(self.relist_every);
    }

    /// Brings the cache up to date with the vault's packs when a full
    /// listing is due: one LIST, the tails of packs not cached, and the
    /// packs no longer listed dropped. Otherwise does nothing (no request).
    pub fn sync(&mut self, vault: &Vault) -> Result<Synced, VaultError> {
        if !self.listing_due() {
            return Ok(Synced::default());
        }
        let names = vault.backend().list(Kind::Pack, "")?;
        let listed: HashSet<PackId> = names.iter().filter_map(|n| PackId::from_hex(n)).collect();
        let gone: HashSet<PackId> = self.index.packs().filter(|p| !listed.contains(p)).copied().collect();
        let new: Vec<String> = names
            .into_iter()
            .filter(|n| PackId::from_hex(n).is_none_or(|id| self.index.pack_len(&id).is_none()))
            .collect();
        let tails = read_tails(vault.backend(), &new)?;
        let mut read = 0;
        for (name, tail) in new.into_iter().zip(tails) {
            match tail {
                Ok((id, tail)) => {
                    self.add(&id, tail.len, &tail.index);
                    read += 1;
                }
                // Not cached: read again at the next listing.
                Err(detail) => self.index.note_unreadable(name, detail),
            }
        }
        self.drop_packs(&gone);
        self.cycles_since_list = 0;
        Ok(Synced { listed: true, read, dropped: gone.len() })
    }

    /// Of `packs` (cached packs a cycle deduplicated against), those the
    /// vault no longer holds, asked in ONE [`crate::Backend::missing`] call
    /// (none when `packs` is empty); they are dropped from the cache, and
    /// if there were any, a full listing is made due (others may be gone
    /// too). [`IndexCache::save`] records that.
    pub fn confirm(&mut self, vault: &Vault, packs: &HashSet<PackId>) -> Result<HashSet<PackId>, VaultError> {
        if packs.is_empty() {
            return Ok(HashSet::new());
        }
        let mut names: Vec<String> = packs.iter().map(|p| p.to_string()).collect();
        names.sort();
        let missing: HashSet<PackId> =
            vault.backend().missing(Kind::Pack, &names)?.iter().filter_map(|n| PackId::from_hex(n)).collect();
        self.drop_packs(&missing);
        if !missing.is_empty() {
            self.cycles_since_list = self.cycles_since_list.max(self.relist_every);
        }
        Ok(missing)
    }

    /// Records the packs a committed cycle `written` (id, length, index),
    /// counts the cycle, and makes the cache durable: appends what changed
    /// since it was opened in one write and fsyncs it, or rewrites the file
    /// whole (atomic replace) when it is new, was discarded, or has grown
    /// to twice its live size.
    pub fn commit(&mut self, written: &[(PackId, u64, &PackIndex)]) -> Result<(), VaultError> {
        for (id, len, index) in written {
            self.add(id, *len, index);
        }
        self.cycles_since_list = self.cycles_since_list.saturating_add(1);
        self.save()
    }

    /// Makes what changed since the cache was opened or last saved durable
    /// (see [`IndexCache::commit`]), without counting a cycle: for a cycle
    /// that failed after [`IndexCache::confirm`] found packs gone.
    pub fn save(&mut self) -> Result<(), VaultError> {
        let cycles = self.cycles_since_list.to_le_bytes();
        self.record(KIND_CYCLES, &[&cycles]);
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| VaultError::Io { what, path, source }
        };
        let dir = self.path.parent().expect("a file in a directory").to_path_buf();
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io("creating", &dir))?;
        let lock_path = self.path.with_extension("idx.lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        system::lock::lock(&lock, true).map_err(io("locking", &lock_path))?;
        let on_disk = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
        let grown = on_disk + self.pending.len() as u64 > 2 * self.live_len() + (64 << 10);
        if self.rewrite || grown {
            self.rewrite_whole(&dir)?;
        } else {
            let mut f = OpenOptions::new().append(true).open(&self.path).map_err(io("opening", &self.path))?;
            self.stamp = None;
            f.write_all(&self.pending).map_err(io("appending to", &self.path))?;
            f.sync_data().map_err(io("syncing", &self.path))?;
            let m = f.metadata().map_err(io("reading the metadata of", &self.path))?;
            self.stamp = Some(stamp_of(&m, m.len()));
        }
        self.pending.clear();
        Ok(())
    }

    /// Writes the whole cache to a temporary file and renames it over.
    fn rewrite_whole(&mut self, dir: &Path) -> Result<(), VaultError> {
        let mut by_pack: HashMap<PackId, Vec<(&BlockId, &BlockLocation)>> =
            self.index.packs().map(|p| (*p, Vec::new())).collect();
        for (id, loc) in self.index.iter() {
            by_pack.entry(loc.pack).or_default().push((id, loc));
        }
        let mut out = self.header();
        let mut payload = Vec::new();
        // Many packs to a record, so that loading hashes long runs of bytes.
        for (pack, mut blocks) in by_pack {
            blocks.sort_by_key(|(_, l)| l.entry);
            let (len, cipher) = (self.index.pack_len(&pack), self.index.pack_cipher(&pack));
            encode_pack_head(&mut payload, &pack, len.unwrap_or(0), cipher, blocks.len());
            for (id, loc) in blocks {
                encode_entry(&mut payload, id, loc);
            }
            if payload.len() >= BATCH {
                self.push_record(&mut out, KIND_PACK, &[&payload]);
                payload.clear();
            }
        }
        if !payload.is_empty() {
            self.push_record(&mut out, KIND_PACK, &[&payload]);
        }
        self.push_record(&mut out, KIND_CYCLES, &[&self.cycles_since_list.to_le_bytes()]);
        let tmp = self.path.with_extension(format!("idx.tmp{}", std::process::id()));
        self.stamp = None;
        let written = (|| {
            let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
            f.write_all(&out)?;
            f.sync_all()?;
            let m = f.metadata()?;
            std::fs::rename(&tmp, &self.path)?;
            File::open(dir)?.sync_all()?;
            Ok::<_, io::Error>(stamp_of(&m, m.len()))
        })();
        match written {
            Err(source) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(VaultError::Io { what: "rewriting", path: self.path.clone(), source });
            }
            Ok(stamp) => self.stamp = Some(stamp),
        }
        self.rewrite = false;
        Ok(())
    }

    /// Bytes of a file holding the cache as it is now.
    fn live_len(&self) -> u64 {
        let rec = (RECORD_HEAD + MAC_LEN) as u64;
        HEADER_LEN as u64
            + self.index.pack_count() as u64 * (rec + PACK_HEAD as u64)
            + self.index.len() as u64 * ENTRY_LEN as u64
    }

    fn add(&mut self, id: &PackId, len: u64, index: &PackIndex) {
        self.index.add_pack(id, index);
        let mut payload = Vec::with_capacity(PACK_HEAD + ENTRY_LEN * index.entries().len());
        encode_pack_head(&mut payload, id, len, Some(index.cipher()), index.entries().len());
        for (entry, e) in (0u32..).zip(index.entries()) {
            let loc = BlockLocation {
                pack: *id,
                entry,
                range: e.range(),
                plain_len: e.plain_len,
                cipher: index.cipher(),
                compressed: e.compressed,
            };
            encode_entry(&mut payload, &e.id, &loc);
        }
        self.record(KIND_PACK, &[&payload]);
    }

    fn drop_packs(&mut self, packs: &HashSet<PackId>) {
        if packs.is_empty() {
            return;
        }
        self.index.remove_packs(packs);
        let ids: Vec<u8> = packs.iter().flat_map(|p| p.0).collect();
        self.record(KIND_DROP, &[&ids]);
    }

    fn record(&mut self, kind: u8, parts: &[&[u8]]) {
        let mut pending = std::mem::take(&mut self.pending);
        self.push_record(&mut pending, kind, parts);
        self.pending = pending;
    }

    fn push_record(&self, out: &mut Vec<u8>, kind: u8, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let start = out.len();
        out.extend_from_slice(&u32::try_from(len).expect("a record under 4 GiB").to_le_bytes());
        out.extend_from_slice(&[kind, 0, 0, 0]);
        for p in parts {
            out.extend_from_slice(p);
        }
        let mac = self.mac(&out[start..start + RECORD_HEAD], &out[start + RECORD_HEAD..]);
        out.extend_from_slice(&mac);
    }

    fn mac(&self, head: &[u8], payload: &[u8]) -> [u8; MAC_LEN] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(&self.vault_id);
        h.update(head);
        h.update(payload);
        h.finalize().as_bytes()[..MAC_LEN].try_into().expect("16 bytes")
    }

    fn header(&self) -> Vec<u8> {
        let mut h = Vec::with_capacity(HEADER_LEN);
        h.extend_from_slice(&magic());
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&[0; 6]);
        h.extend_from_slice(&self.vault_id);
        h.extend_from_slice(&self.fingerprint);
        let mac = blake3::keyed_hash(&self.key, &h);
        h.extend_from_slice(&mac.as_bytes()[..MAC_LEN]);
        h
    }

    /// Replays a cache file into `self`.
    fn load(&mut self, bytes: &[u8]) -> Result<(), CacheProblem> {
        let file = self.path.clone();
        let path = || file.clone();
        let header = self.header();
        if bytes.len() < HEADER_LEN || bytes[..16] != header[..16] {
            return Err(CacheProblem::NotACache { path: path() });
        }
        if bytes[..HEADER_LEN] != header[..] {
            return Err(CacheProblem::Foreign { path: path() });
        }
        // At most this many blocks, and packs (of one block or more).
        let most = bytes.len() / (PACK_HEAD + ENTRY_LEN);
        self.index.reserve(bytes.len() / ENTRY_LEN, most);
        let mut at = HEADER_LEN;
        let mut torn = false;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let Some(len) = rest.get(..4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize) else {
                torn = true;
                break;
            };
            if len > MAX_RECORD {
                return Err(CacheProblem::Damaged { path: path(), offset: at as u64 });
            }
            let Some(record) = rest.get(..RECORD_HEAD + len + MAC_LEN) else {
                torn = true;
                break;
            };
            let (head, body) = record.split_at(RECORD_HEAD);
            let (payload, mac) = body.split_at(len);
            if self.mac(head, payload) != mac || head[5..8] != [0, 0, 0] || !self.apply(head[4], payload) {
                return Err(CacheProblem::Damaged { path: path(), offset: at as u64 });
            }
            at += record.len();
        }
        // A record cut short by a crash is ignored, and the file rewritten
        // at the next commit (appending after it would bury later records).
        self.rewrite = torn;
        Ok(())
    }

    /// Adds the first pack of `p` (a pack record's payload); returns the
    /// bytes it took, `None` if it is malformed.
    fn apply_pack(&mut self, p: &[u8]) -> Option<usize> {
        let head = p.get(..PACK_HEAD)?;
        let pack = PackId(head[..32].try_into().expect("32 bytes"));
        let len = u64::from_le_bytes(head[32..40].try_into().expect("8 bytes"));
        let count = u32::from_le_bytes(head[40..44].try_into().expect("4 bytes")) as usize;
        let cipher = Cipher::from_code(head[44]).filter(|_| head[45..48] == [0, 0, 0])?;
        let used = PACK_HEAD + count.checked_mul(ENTRY_LEN)?;
        let entries = p.get(PACK_HEAD..used)?;
        self.index.add_pack_len(pack, len, cipher);
        for e in entries.chunks_exact(ENTRY_LEN) {
            let u64_at = |i: usize| u64::from_le_bytes(e[i..i + 8].try_into().expect("8 bytes"));
            let u32_at = |i: usize| u32::from_le_bytes(e[i..i + 4].try_into().expect("4 bytes"));
            let id = BlockId(e[..32].try_into().expect("32 bytes"));
            let range = u64_at(36)..u64_at(44);
            if range.start > range.end || range.end > len {
                return None;
            }
            if !self.index.contains(&id) {
                let flags = u32_at(56);
                if flags > 1 {
                    return None;
                }
                let compressed = flags == 1;
                let loc = BlockLocation { pack, entry: u32_at(32), range, plain_len: u32_at(52), cipher, compressed };
                self.index.insert(id, loc);
            }
        }
        Some(used)
    }

    /// Applies one record; `false` if it is malformed.
    fn apply(&mut self, kind: u8, p: &[u8]) -> bool {
        match kind {
            KIND_PACK if !p.is_empty() => {
                let mut rest = p;
                while !rest.is_empty() {
                    let Some(used) = self.apply_pack(rest) else { return false };
                    rest = &rest[used..];
                }
                true
            }
            KIND_DROP if !p.is_empty() && p.len().is_multiple_of(32) => {
                let packs = p.chunks_exact(32).map(|id| PackId(id.try_into().expect("32 bytes"))).collect();
                self.index.remove_packs(&packs);
                true
            }
            KIND_CYCLES if p.len() == 4 => {
                self.cycles_since_list = u32::from_le_bytes(p.try_into().expect("4 bytes"));
                true
            }
            _ => false,
        }
    }
}

/// The file at `path`, read whole, and its stamp (device, inode, the length
/// read) taken from the same open file.
fn read_stamped(path: &Path) -> io::Result<(Vec<u8>, (u64, u64, u64))> {
    use std::io::Read;
    let mut f = File::open(path)?;
    let m = f.metadata()?;
    let mut bytes = Vec::with_capacity(usize::try_from(m.len()).unwrap_or(0));
    f.read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    Ok((bytes, stamp_of(&m, len)))
}

fn stamp_of(m: &std::fs::Metadata, len: u64) -> (u64, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino(), len)
}

fn encode_pack_head(out: &mut Vec<u8>, pack: &PackId, len: u64, cipher: Option<Cipher>, count: usize) {
    out.extend_from_slice(&pack.0);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&u32::try_from(count).expect("a pack's blocks fit a u32").to_le_bytes());
    // Every pack the index holds was added with its cipher.
    let code = cipher.map_or(Cipher::XChaCha20Poly1305.code(), Cipher::code);
    out.extend_from_slice(&[code, 0, 0, 0]);
}

fn encode_entry(out: &mut Vec<u8>, id: &BlockId, loc: &BlockLocation) {
    out.extend_from_slice(&id.0);
    out.extend_from_slice(&loc.entry.to_le_bytes());
    out.extend_from_slice(&loc.range.start.to_le_bytes());
    out.extend_from_slice(&loc.range.end.to_le_bytes());
    out.extend_from_slice(&loc.plain_len.to_le_bytes());
    out.extend_from_slice(&u32::from(loc.compressed).to_le_bytes());
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::counting::Counting;
    use crate::LocalBackend;
    use disk_format::keys::MasterKey;
    use disk_format::pack::PackWriter;

    fn keys(n: u8) -> Keys {
        MasterKey::from_bytes([n; 32]).keys()
    }

    /// A vault in `dir` (counted) and its request count.
    fn vault(dir: &Path, keys: &Keys) -> (Vault, std::sync::Arc<crate::counting::RequestCount>) {
        let backend = Counting::new(LocalBackend::create(dir).unwrap());
        let count = backend.count();
        (Vault::init(Box::new(backend), keys).unwrap(), count)
    }

    /// Stores a pack of `n` blocks whose contents start with `seed`.
    fn put_pack(vault: &Vault, keys: &Keys, seed: u32, n: u32) -> (PackId, u64, PackIndex) {
        let mut w = PackWriter::new(Vec::new()).unwrap();
        for i in 0..n {
            let data = format!("block {seed} {i}").into_bytes();
            let id = keys.block_id(&data);
            w.add_blob(&id, &keys.seal_block(disk_format::Cipher::XChaCha20Poly1305, &id, &data).unwrap()).unwrap();
        }
        let done = w.finish().unwrap();
        vault.put_pack(&done.id, &done.out).unwrap();
        (done.id, done.len, done.index)
    }

    fn same_blocks(a: &BlockIndex, b: &BlockIndex) {
        assert_eq!(a.len(), b.len());
        assert_eq!(a.pack_count(), b.pack_count());
        for (id, loc) in a.iter() {
            assert_eq!(b.get(id), Some(loc), "block {id}");
        }
    }

    #[test]
    fn a_saved_cache_loads_to_the_vaults_index_without_asking_the_vault() {
        let (vdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k = keys(1);
        let (v, count) = vault(vdir.path(), &k);
        for seed in 0..20 {
            put_pack(&v, &k, seed, 3);
        }
        let (mut c, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::New), "{opened:?}");
        let synced = c.sync(&v).unwrap();
        assert_eq!(synced, Synced { listed: true, read: 20, dropped: 0 });
        let written = put_pack(&v, &k, 99, 2);
        c.commit(&[(written.0, written.1, &written.2)]).unwrap();
        same_blocks(c.index(), &v.block_index().unwrap());

        let before = count.get();
        let (mut again, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::Loaded { packs: 21 }), "{opened:?}");
        assert_eq!(again.sync(&v).unwrap(), Synced::default(), "no listing is due");
        assert_eq!(count.get() - before, crate::counting::Requests::default(), "loading asks nothing");
        same_blocks(again.index(), &v.block_index().unwrap());
    }

    #[test]
    fn a_listing_reads_only_new_packs_and_drops_gone_ones() {
        let (vdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k = keys(1);
        let (v, count) = vault(vdir.path(), &k);
        let first: Vec<_> = (0..10).map(|s| put_pack(&v, &k, s, 2)).collect();
        let (mut c, _) = IndexCache::open(cdir.path(), &v, &k);
        c.sync(&v).unwrap();
        c.commit(&[]).unwrap();
        // Another host adds two packs, the site's GC removes one.
        put_pack(&v, &k, 100, 2);
        put_pack(&v, &k, 101, 2);
        v.backend().delete(Kind::Pack, &first[3].0.to_string()).unwrap();
        let (mut c, _) = IndexCache::open(cdir.path(), &v, &k);
        c.relist_every = 1;
        let before = count.get();
        assert_eq!(c.sync(&v).unwrap(), Synced { listed: true, read: 2, dropped: 1 });
        let asked = count.get() - before;
        assert_eq!(asked.lists, 1);
        assert!(asked.reads <= 2 * 2, "the two new packs' size and tail only: {asked:?}");
        same_blocks(c.index(), &v.block_index().unwrap());
        c.commit(&[]).unwrap();
        let (c, _) = IndexCache::open(cdir.path(), &v, &k);
        same_blocks(c.index(), &v.block_index().unwrap());
    }

    #[test]
    fn confirm_asks_once_and_drops_missing_packs() {
        let (vdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k = keys(1);
        let (v, count) = vault(vdir.path(), &k);
        let packs: Vec<_> = (0..5).map(|s| put_pack(&v, &k, s, 2)).collect();
        let (mut c, _) = IndexCache::open(cdir.path(), &v, &k);
        c.sync(&v).unwrap();
        v.backend().delete(Kind::Pack, &packs[1].0.to_string()).unwrap();
        let before = count.get();
        let asked: HashSet<PackId> = packs.iter().map(|p| p.0).collect();
        assert_eq!(c.confirm(&v, &asked).unwrap(), HashSet::from([packs[1].0]));
        assert_eq!((count.get() - before).total, 1, "one `missing` request");
        assert_eq!(c.index().pack_len(&packs[1].0), None);
        assert!(c.index().get(&packs[1].2.entries()[0].id).is_none());
        c.commit(&[]).unwrap();
        let (c, _) = IndexCache::open(cdir.path(), &v, &k);
        same_blocks(c.index(), &v.block_index().unwrap());
    }

    #[test]
    fn a_damaged_or_foreign_cache_is_discarded_and_a_torn_tail_ignored() {
        let (vdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k = keys(1);
        let (v, _) = vault(vdir.path(), &k);
        for seed in 0..4 {
            put_pack(&v, &k, seed, 2);
        }
        let (mut c, _) = IndexCache::open(cdir.path(), &v, &k);
        c.sync(&v).unwrap();
        c.commit(&[]).unwrap();
        let path = c.path().to_path_buf();
        let good = std::fs::read(&path).unwrap();

        // A torn record at the end (a crash while appending): ignored.
        let mut torn = good.clone();
        torn.extend_from_slice(&[200, 0, 0, 0, KIND_PACK, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&path, &torn).unwrap();
        let (mut c, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::Loaded { packs: 4 }), "{opened:?}");
        c.commit(&[]).unwrap();
        let (_, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::Loaded { packs: 4 }), "rewritten whole after a torn tail: {opened:?}");

        // One flipped bit in a record: discarded, and a listing made due.
        let mut bad = good.clone();
        bad[HEADER_LEN + RECORD_HEAD + 40] ^= 1;
        std::fs::write(&path, &bad).unwrap();
        let (c, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::Discarded(CacheProblem::Damaged { offset: 64, .. })), "{opened:?}");
        assert!(c.index().is_empty() && c.listing_due());

        // Not a cache at all.
        std::fs::write(&path, b"hello").unwrap();
        let (_, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::Discarded(CacheProblem::NotACache { .. })), "{opened:?}");

        // Another vault's cache (or another key's) under this one's name.
        let (other_dir, other_cache) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (other, _) = vault(other_dir.path(), &k);
        let (mut oc, _) = IndexCache::open(other_cache.path(), &other, &k);
        oc.sync(&other).unwrap();
        oc.commit(&[]).unwrap();
        std::fs::copy(oc.path(), &path).unwrap();
        let (_, opened) = IndexCache::open(cdir.path(), &v, &k);
        assert!(matches!(opened, Opened::Discarded(CacheProblem::Foreign { .. })), "{opened:?}");
        std::fs::write(&path, &good).unwrap();
        let (_, opened) = IndexCache::open(cdir.path(), &v, &keys(2));
        assert!(matches!(opened, Opened::Discarded(CacheProblem::Foreign { .. })), "another key: {opened:?}");
    }

    #[test]
    fn the_file_is_rewritten_when_it_has_grown_to_twice_its_live_size() {
        let (vdir, cdir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let k = keys(1);
        let (v, _) = vault(vdir.path(), &k);
        let (mut c, _) = IndexCache::open(cdir.path(), &v, &k);
        c.sync(&v).unwrap();
        let mut lens = Vec::new();
        for seed in 0..80 {
            let p = put_pack(&v, &k, seed, 40);
            c.commit(&[(p.0, p.1, &p.2)]).unwrap();
            let gone = HashSet::from([p.0]);
            c.drop_packs(&gone);
            lens.push(std::fs::metadata(c.path()).unwrap().len());
        }
        let max = *lens.iter().max().unwrap();
        assert!(lens.windows(2).any(|w| w[1] < w[0]), "never rewritten: {lens:?}");
        assert!(max < 2 * c.live_len() + (64 << 10) + 4096, "bounded: {max} bytes");
        c.commit(&[]).unwrap();
        let (again, _) = IndexCache::open(cdir.path(), &v, &k);
        same_blocks(again.index(), c.index());
    }
}
