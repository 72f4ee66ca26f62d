//! The block index: which pack holds each stored block, and where in it.
//!
//! There is no separate index object in the vault: every pack ends with its
//! own index, bound to the pack by the trailer's index hash, so the index is
//! rebuilt by reading each pack's tail (two ranged reads at most, usually
//! one; never the whole pack). The shipper uses it for dedup, restore to
//! find blocks.
//!
//! Memory: about 100 bytes per distinct stored block (1.6 GB per TiB of
//! distinct 64 KiB blocks).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;

use disk_format::pack::{INDEX_ENTRY_LEN, PACK_TRAILER_LEN};
use disk_format::{BlockId, Cipher, PackId, PackIndex};

use crate::backend::{Backend, Kind};
use crate::error::VaultError;
use crate::store::Vault;

/// How much of a pack's end one read fetches: the trailer and, for packs of
/// up to ~5,000 blobs, the whole index with it.
const TAIL_READ: u64 = 256 * 1024;

/// Where one block's sealed blob is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockLocation {
    /// The pack holding it.
    pub pack: PackId,
    /// Its entry number in the pack's index.
    pub entry: u32,
    /// Byte range of the blob in the pack.
    pub range: Range<u64>,
    /// Length of the block's plaintext.
    pub plain_len: u32,
    /// The cipher the pack's blobs are sealed with.
    pub cipher: Cipher,
    /// The blob holds the block zstd-compressed (`plain_len` is then the
    /// compressed length; the block's is the geometry's).
    pub compressed: bool,
}

/// A pack whose index could not be read: its blocks are not in the index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadablePack {
    /// The object name (normally the hex pack id).
    pub name: String,
    /// Why it could not be read.
    pub detail: String,
}

/// Hashes block and pack ids, which are BLAKE3 outputs (keyed with the
/// customer's key for blocks): uniform, and chosen by nobody without the
/// key, so SipHash's defence against chosen keys buys nothing here and a
/// multiply per word is enough. A 50,000-pack index cache loads about twice
/// as fast with it.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            self.mix(u64::from_le_bytes(w.try_into().expect("8 bytes")));
        }
        for &b in words.remainder() {
            self.mix(u64::from(b));
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.mix(n as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

impl IdHasher {
    fn mix(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

/// Block id -> location, over every readable pack of a vault.
#[derive(Debug, Clone, Default)]
pub struct BlockIndex {
    blocks: IdMap<BlockId, BlockLocation>,
    /// Each pack's length and cipher.
    pack_lens: IdMap<PackId, (u64, Cipher)>,
    unreadable: Vec<UnreadablePack>,
}

impl BlockIndex {
    /// An empty index.
    pub fn new() -> BlockIndex {
        BlockIndex::default()
    }

    /// Whether block `id` is stored.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.blocks.contains_key(id)
    }

    /// Where block `id` is stored.
    pub fn get(&self, id: &BlockId) -> Option<&BlockLocation> {
        self.blocks.get(id)
    }

    /// Records (or replaces) a block's location.
    pub fn insert(&mut self, id: BlockId, loc: BlockLocation) {
        self.blocks.insert(id, loc);
    }

    /// Adds every block of a pack. A block already indexed in another pack
    /// keeps its first location.
    pub fn add_pack(&mut self, pack: &PackId, index: &PackIndex) {
        let len = index.index_offset() + (INDEX_ENTRY_LEN * index.entries().len() + PACK_TRAILER_LEN) as u64;
        self.pack_lens.insert(*pack, (len, index.cipher()));
        self.blocks.reserve(index.entries().len());
        for (entry, e) in (0u32..).zip(index.entries()) {
            self.blocks.entry(e.id).or_insert_with(|| BlockLocation {
                pack: *pack,
                entry,
                range: e.range(),
                plain_len: e.plain_len,
                cipher: index.cipher(),
                compressed: e.compressed,
            });
        }
    }

    /// Number of blocks indexed.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    /// Whether no block is indexed.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Number of packs added.
    pub fn pack_count(&self) -> usize {
        self.pack_lens.len()
    }

    /// The cipher of an added pack's blobs.
    pub fn pack_cipher(&self, pack: &PackId) -> Option<Cipher> {
        self.pack_lens.get(pack).map(|&(_, cipher)| cipher)
    }

    /// The length of an added pack (from its index and trailer).
    pub fn pack_len(&self, pack: &PackId) -> Option<u64> {
        self.pack_lens.get(pack).map(|&(len, _)| len)
    }

    /// The stored id (key) and location of block `id`.
    pub(crate) fn get_key_value(&self, id: &BlockId) -> Option<(&BlockId, &BlockLocation)> {
        self.blocks.get_key_value(id)
    }

    /// Packs [`Vault::block_index`] found but could not read an index from
    /// (truncated, damaged, misnamed). Their blocks are not indexed: a
    /// shipper deduplicating against this index ships them again.
    pub fn unreadable(&self) -> &[UnreadablePack] {
        &self.unreadable
    }

    pub(crate) fn note_unreadable(&mut self, name: String, detail: String) {
        self.unreadable.push(UnreadablePack { name, detail });
    }

    /// The packs added, in no particular order.
    pub fn packs(&self) -> impl Iterator<Item = &PackId> + '_ {
        self.pack_lens.keys()
    }

    /// Every indexed block and its location, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&BlockId, &BlockLocation)> + '_ {
        self.blocks.iter()
    }

    /// Records pack `pack`, of `len` bytes, as added, with no blocks of its
    /// own yet (they follow with [`BlockIndex::insert`]): for an index
    /// loaded from elsewhere than the packs (`index_cache`).
    pub fn add_pack_len(&mut self, pack: PackId, len: u64, cipher: Cipher) {
        self.pack_lens.insert(pack, (len, cipher));
    }

    /// Makes room for `blocks` more blocks in `packs` more packs.
    pub fn reserve(&mut self, blocks: usize, packs: usize) {
        self.blocks.reserve(blocks);
        self.pack_lens.reserve(packs);
    }

    /// Forgets `packs` and every block located in them. A block also stored
    /// in a pack kept is forgotten too (the index keeps one location per
    /// block): a shipper deduplicating against the index ships it again.
    pub fn remove_packs(&mut self, packs: &std::collections::HashSet<PackId>) {
        if packs.is_empty() {
            return;
        }
        self.pack_lens.retain(|p, _| !packs.contains(p));
        self.blocks.retain(|_, loc| !packs.contains(&loc.pack));
    }
}

/// A pack's checked index and its last bytes, from the index to the end.
pub(crate) struct PackTail {
    /// The checked index.
    pub index: PackIndex,
    /// Bytes `index_offset .. len` of the pack: the index and the trailer.
    pub bytes: Vec<u8>,
    /// The pack's length.
    pub len: u64,
}

/// Reads and checks the index of pack `name` from its tail. `Ok(Err(why))`
/// for a pack that is damaged, truncated or vanished; `Err` for a backend
/// failure.
pub(crate) fn read_pack_tail(backend: &dyn Backend, name: &str) -> Result<Result<PackTail, String>, VaultError> {
    // One request for the size and the tail (a suffix range on a cloud
    // store).
    let (tail, len) = match backend.get_tail(Kind::Pack, name, TAIL_READ) {
        Ok(Some(got)) => got,
        Ok(None) => return Ok(Err("the pack vanished while its index was read".to_string())),
        Err(e @ VaultError::ShortObject { .. }) => return Ok(Err(e.to_string())),
        Err(e) => return Err(e),
    };
    let read = |offset: u64, n: u64| match backend.get_range(Kind::Pack, name, offset, n) {
        Ok(b) => Ok(Ok(b)),
        Err(e @ (VaultError::NotFound { .. } | VaultError::ShortObject { .. })) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    };
    let tail_at = len - tail.len() as u64;
    let trailer = match PackIndex::parse_trailer(&tail, len) {
        Ok(t) => t,
        Err(e) => return Ok(Err(format!("{e} (a truncated or damaged pack)"))),
    };
    let range = trailer.index_range();
    let bytes = if range.start >= tail_at {
        tail[usize::try_from(range.start - tail_at).expect("within the tail read")..].to_vec()
    } else {
        match read(range.start, len - range.start)? {
            Ok(b) => b,
            Err(why) => return Ok(Err(why)),
        }
    };
    let index_len = usize::try_from(range.end - range.start).expect("an index read fits in memory");
    if bytes.len() != index_len + PACK_TRAILER_LEN {
        return Ok(Err("the pack changed while its index was read".to_string()));
    }
    Ok(PackIndex::parse_index(&bytes[..index_len], &trailer)
        .map(|index| PackTail { index, bytes, len })
        .map_err(|e| e.to_string()))
}

/// A pack's id and tail, or why it could not be read.
pub(crate) type TailOrWhy = Result<(PackId, PackTail), String>;

/// Reads the tails of packs `names` together (see [`read_pack_tail`]):
/// for each, its id and tail, or why it could not be read.
pub(crate) fn read_tails(backend: &dyn Backend, names: &[String]) -> Result<Vec<TailOrWhy>, VaultError> {
    // The packs' tails are independent small reads: fetch them together.
    crate::par::map(names, |name| match PackId::from_hex(name) {
        None => Ok(Err("not a pack name (64 hex digits)".to_string())),
        Some(id) => read_pack_tail(backend, name).map(|r| r.map(|tail| (id, tail))),
    })
}

impl Vault {
    /// Builds the block index from every pack's own index (ranged reads of
    /// each pack's tail, never whole packs). Packs whose index cannot be read
    /// are listed in [`BlockIndex::unreadable`], not an error: their blocks
    /// are simply not indexed. Does not verify pack contents (see
    /// [`Vault::check`]).
    pub fn block_index(&self) -> Result<BlockIndex, VaultError> {
        let mut index = BlockIndex::new();
        let names = self.backend().list(Kind::Pack, "")?;
        let tails = read_tails(self.backend(), &names)?;
        for (name, tail) in names.into_iter().zip(tails) {
            match tail {
                Ok((id, tail)) => index.add_pack(&id, &tail.index),
                Err(detail) => index.note_unreadable(name, detail),
            }
        }
        Ok(index)
    }
}
