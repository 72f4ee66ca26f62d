//! Packs: immutable, content-addressed vault objects holding many sealed
//! blocks (tens of MiB), so object stores see few, large objects.
//!
//! ```text
//! header (32) ‖ blob 0 ‖ blob 1 ‖ … ‖ index (56 per blob; 48 in v1) ‖ trailer (64)
//! ```
//!
//! Blobs sit back to back in index order, the first at byte 32, the last
//! ending where the index starts: no gaps, no overlap, no unaccounted bytes.
//! The trailer at the very end locates and hashes the index, so a reader can
//! fetch the last 64 bytes, then the index, then single blobs by range,
//! without reading the whole pack. The blobs inside are authenticated by the
//! key ([`crate::keys::Keys::open_block`]); without it, the vault scrubs a
//! pack by its name ([`PackId`]):
//!
//! - **version 2** (written): each index entry holds a CRC-32 of its blob,
//!   and the name is BLAKE3 of everything but the blobs (header, index,
//!   trailer), which covers every CRC. A flipped bit in a blob fails its
//!   CRC, any other change fails the name. CRC-32 runs at ~15 GB/s here,
//!   where hashing every byte with BLAKE3 cost the shipper a second pass as
//!   dear as a third of its crypto (FORMAT.md, "Why version 2").
//! - **version 3** (written for AES-256-GCM vaults and for compressed
//!   blocks): version 2 with the [`Cipher`] of its blobs in the trailer and,
//!   per index entry, whether the blob holds the block compressed. A version 2 pack's blobs are
//!   XChaCha20-Poly1305; XChaCha packs are still written as version 2, byte
//!   for byte what earlier builds wrote, so hosts not yet upgraded read them.
//! - **version 1** (read): 48-byte entries without a CRC; the name is BLAKE3
//!   of all the pack's bytes.
//!
//! See FORMAT.md, "Pack".

use std::collections::HashMap;
use std::ops::Range;

use crate::codec::{first_nonzero, get_array, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, to_usize};
use crate::geometry::MAX_BLOCK_SIZE;
use crate::ids::{BlockId, PackId};
use crate::keys::{Cipher, SEAL_OVERHEAD};

/// First 8 bytes of BLAKE3("lifeboat pack v1"); at the start of the header and
/// the end of the trailer (of every version).
pub const PACK_MAGIC: [u8; 8] = [0x7e, 0x19, 0xcf, 0x13, 0xd3, 0x08, 0x2f, 0x09];
/// The newest pack format this code writes (for AES-256-GCM; XChaCha20-Poly1305
/// packs are written as version 2).
pub const PACK_VERSION: u16 = 3;
/// Size of the pack header.
pub const PACK_HEADER_LEN: usize = 32;
/// Size of the pack trailer.
pub const PACK_TRAILER_LEN: usize = 64;
/// Size of one index entry (version 2).
pub const INDEX_ENTRY_LEN: usize = 56;
/// Size of one index entry in a version 1 pack.
pub const INDEX_ENTRY_LEN_V1: usize = 48;

/// The pack format versions this code reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackVersion {
    /// Named by BLAKE3 of all its bytes; 48-byte entries.
    V1,
    /// Named by BLAKE3 of header, index and trailer; 56-byte entries with a
    /// CRC-32 of each blob. Its blobs are XChaCha20-Poly1305.
    V2,
    /// Version 2 with the cipher of its blobs in the trailer.
    V3,
}

impl TryFrom<u16> for PackVersion {
    type Error = u16;
    fn try_from(v: u16) -> Result<PackVersion, u16> {
        match v {
            1 => Ok(PackVersion::V1),
            2 => Ok(PackVersion::V2),
            3 => Ok(PackVersion::V3),
            other => Err(other),
        }
    }
}

impl PackVersion {
    /// Bytes per index entry.
    pub fn entry_len(self) -> usize {
        match self {
            PackVersion::V1 => INDEX_ENTRY_LEN_V1,
            PackVersion::V2 | PackVersion::V3 => INDEX_ENTRY_LEN,
        }
    }

    /// The version number in header and trailer.
    pub fn number(self) -> u16 {
        match self {
            PackVersion::V1 => 1,
            PackVersion::V2 => 2,
            PackVersion::V3 => 3,
        }
    }

    /// Whether index entries carry a CRC-32 of their blob (versions 2 and 3).
    pub fn has_checksums(self) -> bool {
        self != PackVersion::V1
    }
}

/// The CRC-32 (ISO-HDLC, as zlib's) a version 2 index stores for a blob.
pub fn blob_checksum(blob: &[u8]) -> u32 {
    crc32fast::hash(blob)
}
/// Largest plaintext a blob may hold: one block of the largest block size.
pub const MAX_PLAIN_LEN: u32 = MAX_BLOCK_SIZE;

const HEADER: u64 = PACK_HEADER_LEN as u64;
const TRAILER: u64 = PACK_TRAILER_LEN as u64;
const OVERHEAD: u32 = 40;
const _: () = assert!(OVERHEAD as usize == SEAL_OVERHEAD);
// Trailer field offsets, relative to the trailer's start.
const T_INDEX_OFFSET: usize = 0;
const T_COUNT: usize = 8;
const T_VERSION: usize = 12;
/// Version 3: the cipher's code ([`Cipher::code`]); reserved before.
const T_CIPHER: usize = 14;
const T_INDEX_HASH: usize = 16;
const T_MAGIC: usize = 56;
const _: () = assert!(T_INDEX_HASH + 32 + 8 == T_MAGIC && T_MAGIC + 8 == PACK_TRAILER_LEN);
const _: () = assert!(32 + 8 + 4 + 4 == INDEX_ENTRY_LEN_V1 && PACK_HEADER_LEN == 8 + 2 + 22);
// Version 2 entry: the v1 fields, then the blob's CRC-32 and 4 reserved bytes.
const E_CHECKSUM: usize = 48;
/// Version 3: 1 if the blob holds the block zstd-compressed, else 0.
const E_ENCODING: usize = 52;
const _: () = assert!(E_CHECKSUM + 4 + 4 == INDEX_ENTRY_LEN);

/// Why a pack (or part of one) was refused. Every variant names the place:
/// the entry number (0-based, in index order) and the byte offset in the pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PackError {
    /// Shorter than a header and a trailer.
    #[error("the pack is {len} bytes, shorter than a 32-byte header and a 64-byte trailer (truncated)")]
    TooShort {
        /// Length of the pack.
        len: u64,
    },
    /// The header is a pack's but the end is not a trailer: a pack cut
    /// short, or one whose writer never finished.
    #[error("the {len}-byte pack has a pack header but no trailer at its end (truncated or never finished)")]
    Truncated {
        /// Length of the pack.
        len: u64,
    },
    /// A magic is wrong.
    #[error("not a Lifeboat pack: wrong magic in the {place} at byte {offset}")]
    BadMagic {
        /// `header` or `trailer`.
        place: &'static str,
        /// Byte offset of the magic.
        offset: u64,
    },
    /// A version this build does not know.
    #[error(
        "pack format version {version} in the {place} is not supported by this build (it knows versions 1 to 3); \
         use a newer lifeboat"
    )]
    UnsupportedVersion {
        /// `header` or `trailer`.
        place: &'static str,
        /// The version found.
        version: u16,
    },
    /// A reserved byte is not zero.
    #[error("byte {offset} of the pack (reserved, in the {place}) is {value:#04x}, not zero")]
    Reserved {
        /// `header` or `trailer`.
        place: &'static str,
        /// Byte offset in the pack.
        offset: u64,
        /// The byte found.
        value: u8,
    },
    /// The trailer's count and index offset do not fit the pack's length.
    #[error(
        "the pack trailer says {count} index entries start at byte {index_offset}, but in a {pack_len}-byte pack \
         the index must end at byte {index_end} (truncated, extended or damaged trailer)"
    )]
    CountMismatch {
        /// Entries the trailer claims.
        count: u32,
        /// Index offset the trailer claims.
        index_offset: u64,
        /// Length of the pack.
        pack_len: u64,
        /// Where the index must end: `pack_len - 64`.
        index_end: u64,
    },
    /// A pack holds at least one blob.
    #[error("the pack trailer says 0 entries; a pack holds at least one blob")]
    Empty,
    /// The index bytes do not hash to the trailer's index hash.
    #[error("the pack index at byte {offset} does not match the hash in the trailer (damaged index)")]
    IndexHashMismatch {
        /// Byte offset of the index.
        offset: u64,
    },
    /// A blob starts before the previous one ends.
    #[error(
        "index entry {entry}: its blob at byte {offset} overlaps the previous blob, which ends at byte {expected}"
    )]
    Overlap {
        /// Entry number.
        entry: u32,
        /// Blob offset the entry states.
        offset: u64,
        /// Where the blob must start.
        expected: u64,
    },
    /// A blob starts after the previous one ends.
    #[error("index entry {entry}: its blob at byte {offset} leaves a gap after the previous blob, which ends at byte {expected}")]
    Gap {
        /// Entry number.
        entry: u32,
        /// Blob offset the entry states.
        offset: u64,
        /// Where the blob must start.
        expected: u64,
    },
    /// A blob runs into the index.
    #[error(
        "index entry {entry}: its {len}-byte blob at byte {offset} runs past byte {limit}, where the index starts"
    )]
    OutOfRange {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
        /// Blob length.
        len: u32,
        /// Start of the index.
        limit: u64,
    },
    /// The blobs end before the index starts.
    #[error("bytes {from}..{to} of the pack belong to no blob")]
    Unaccounted {
        /// End of the last blob.
        from: u64,
        /// Start of the index.
        to: u64,
    },
    /// The blob and plaintext lengths disagree, or the plaintext length is
    /// impossible.
    #[error(
        "index entry {entry} (blob at byte {offset}): blob length {blob_len} and plaintext length {plain_len} are \
         invalid: the plaintext is 1 ..= 1048576 bytes and the blob 40 bytes longer"
    )]
    BadLength {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
        /// Blob length stated.
        blob_len: u32,
        /// Plaintext length stated.
        plain_len: u32,
    },
    /// The all-zero id names a zero block, which is never stored.
    #[error("index entry {entry} (blob at byte {offset}) has the all-zero block id, which is never stored")]
    ZeroId {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
    },
    /// Two entries name the same block.
    #[error("index entry {entry} (blob at byte {offset}) names block {id}, already named by entry {first}")]
    DuplicateId {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
        /// The block.
        id: BlockId,
        /// The earlier entry.
        first: u32,
    },
    /// Header and trailer state different versions.
    #[error("the pack header says format version {header}, its trailer version {trailer} (damaged)")]
    VersionMismatch {
        /// Version in the header.
        header: u16,
        /// Version in the trailer.
        trailer: u16,
    },
    /// A blob's bytes do not match the CRC-32 its index entry holds (v2).
    #[error(
        "index entry {entry}: its {len}-byte blob at byte {offset} has CRC-32 {got:08x}, the index says {expected:08x} \
         (the blob is damaged)"
    )]
    BlobChecksum {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
        /// Blob length.
        len: u32,
        /// The CRC the index holds.
        expected: u32,
        /// The CRC of the bytes found.
        got: u32,
    },
    /// The pack's bytes do not hash to its name.
    #[error("the pack's contents hash to {got}, not to its name {expected} (damaged, truncated or swapped)")]
    IdMismatch {
        /// The name it was stored or referenced under.
        expected: PackId,
        /// What its bytes hash to.
        got: PackId,
    },
    /// An entry number past the end of the index.
    #[error("the pack has {count} entries; there is no entry {entry}")]
    NoSuchEntry {
        /// Entry asked for.
        entry: usize,
        /// Entries in the pack.
        count: usize,
    },
    /// More blobs than a pack can index (2^32 - 1).
    #[error("a pack holds at most 4294967295 blobs")]
    TooManyEntries,
    /// A version 3 trailer names no cipher this build knows.
    #[error(
        "the pack trailer names cipher {code} at byte {offset}, which this build does not know (1 and 2 are known)"
    )]
    UnknownCipher {
        /// The code found.
        code: u8,
        /// Byte offset of the code in the pack.
        offset: u64,
    },
    /// A version 3 entry's encoding byte is neither 0 (stored) nor 1 (zstd),
    /// or a compressed blob was given to a version 2 pack's writer.
    #[error("index entry {entry} (blob at byte {offset}): encoding {value} is not 0 (stored) or 1 (zstd), or its pack version cannot record it")]
    BadEncoding {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
        /// The byte found.
        value: u8,
    },
    /// A blob read by range has the wrong length.
    #[error("index entry {entry}: read {got} bytes at byte {offset}, the index says {want}")]
    BlobLength {
        /// Entry number.
        entry: u32,
        /// Blob offset.
        offset: u64,
        /// Bytes read.
        got: usize,
        /// Blob length stated.
        want: u32,
    },
}

/// One index entry: where a sealed block sits in the pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackEntry {
    /// The block's id (the AAD of its seal).
    pub id: BlockId,
    /// Byte offset of the blob in the pack.
    pub offset: u64,
    /// Length of the blob (`plain_len + 40`).
    pub blob_len: u32,
    /// Length of what was sealed: the block's plaintext, or its compressed
    /// form when `compressed`.
    pub plain_len: u32,
    /// CRC-32 of the blob ([`blob_checksum`]); `None` in a version 1 pack.
    pub checksum: Option<u32>,
    /// The blob holds the block zstd-compressed (version 3 only); opened, it
    /// inflates to the block's length.
    pub compressed: bool,
}

impl PackEntry {
    /// Byte range of the blob in the pack (for a ranged read).
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + u64::from(self.blob_len)
    }

    /// Writes the entry in the version 2 layout (`out`: 56 bytes, zeroed).
    fn encode(&self, out: &mut [u8]) {
        out[..32].copy_from_slice(&self.id.0);
        put_u64(out, 32, self.offset);
        put_u32(out, 40, self.blob_len);
        put_u32(out, 44, self.plain_len);
        put_u32(out, E_CHECKSUM, self.checksum.unwrap_or(0));
        out[E_ENCODING] = u8::from(self.compressed);
    }

    fn decode(b: &[u8], version: PackVersion) -> PackEntry {
        PackEntry {
            id: BlockId(get_array(b, 0)),
            offset: get_u64(b, 32),
            blob_len: get_u32(b, 40),
            plain_len: get_u32(b, 44),
            checksum: version.has_checksums().then(|| get_u32(b, E_CHECKSUM)),
            compressed: version == PackVersion::V3 && b[E_ENCODING] == 1,
        }
    }

    /// Checks `blob` (entry `n`'s bytes) against the entry's CRC-32, where
    /// the pack has one (version 2). The keyless check of a blob.
    pub fn check_checksum(&self, n: u32, blob: &[u8]) -> Result<(), PackError> {
        let Some(expected) = self.checksum else { return Ok(()) };
        let got = blob_checksum(blob);
        if got != expected {
            return Err(PackError::BlobChecksum { entry: n, offset: self.offset, len: self.blob_len, expected, got });
        }
        Ok(())
    }

    /// Checks the lengths and id of entry `n` (not its position).
    fn check(&self, n: u32) -> Result<(), PackError> {
        if self.plain_len == 0
            || self.plain_len > MAX_PLAIN_LEN
            || u64::from(self.blob_len) != u64::from(self.plain_len) + u64::from(OVERHEAD)
        {
            return Err(PackError::BadLength {
                entry: n,
                offset: self.offset,
                blob_len: self.blob_len,
                plain_len: self.plain_len,
            });
        }
        if self.id.is_zero() {
            return Err(PackError::ZeroId { entry: n, offset: self.offset });
        }
        Ok(())
    }

    /// Checks that `blob`, read by range for entry `n`, has the stated length.
    pub fn check_blob(&self, n: u32, blob: &[u8]) -> Result<(), PackError> {
        if blob.len() as u64 != u64::from(self.blob_len) {
            return Err(PackError::BlobLength { entry: n, offset: self.offset, got: blob.len(), want: self.blob_len });
        }
        Ok(())
    }
}

/// The decoded trailer: where the index is and what it hashes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackTrailer {
    /// The pack's format version.
    pub version: PackVersion,
    /// The cipher its blobs are sealed with (XChaCha20-Poly1305 before
    /// version 3).
    pub cipher: Cipher,
    /// Byte offset of the index.
    pub index_offset: u64,
    /// Number of index entries (blobs).
    pub count: u32,
    /// BLAKE3 of the index bytes.
    pub index_hash: [u8; 32],
}

impl PackTrailer {
    /// Byte range of the index in the pack.
    pub fn index_range(&self) -> Range<u64> {
        self.index_offset..self.index_offset + u64::from(self.count) * self.version.entry_len() as u64
    }
}

/// A checked pack index: entries in pack order, blobs back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackIndex {
    version: PackVersion,
    cipher: Cipher,
    entries: Vec<PackEntry>,
    index_offset: u64,
}

/// The header every pack of `version` has (readers accept no other).
pub fn header_bytes(version: PackVersion) -> [u8; PACK_HEADER_LEN] {
    let mut h = [0u8; PACK_HEADER_LEN];
    h[..8].copy_from_slice(&PACK_MAGIC);
    put_u16(&mut h, 8, version.number());
    h
}

/// The name of a version 2 or 3 pack from its tail (index and trailer, the
/// last bytes from the index on): BLAKE3 of its header, index and trailer.
/// The blobs are not hashed; their CRCs in the index are. A version 1
/// pack's name needs every byte (`None`).
pub fn pack_id_from_tail(version: PackVersion, tail: &[u8]) -> Option<PackId> {
    (version != PackVersion::V1).then(|| tail_pack_id(version, tail))
}

fn tail_pack_id(version: PackVersion, tail: &[u8]) -> PackId {
    let mut h = blake3::Hasher::new();
    h.update(&header_bytes(version));
    h.update(tail);
    PackId(*h.finalize().as_bytes())
}

fn check_reserved(b: &[u8], range: Range<usize>, place: &'static str, base: u64) -> Result<(), PackError> {
    match first_nonzero(b, range) {
        None => Ok(()),
        Some(at) => Err(PackError::Reserved { place, offset: base + at as u64, value: b[at] }),
    }
}

impl PackIndex {
    /// Decodes the trailer from the pack's last bytes. `tail` holds at least
    /// the last 64 bytes of a `pack_len`-byte pack (only its last 64 are read).
    /// Checks magic, version, reserved bytes, and that the index exactly fills
    /// the space before the trailer.
    pub fn parse_trailer(tail: &[u8], pack_len: u64) -> Result<PackTrailer, PackError> {
        if pack_len < HEADER + TRAILER || tail.len() < PACK_TRAILER_LEN || tail.len() as u64 > pack_len {
            return Err(PackError::TooShort { len: pack_len.min(tail.len() as u64) });
        }
        let t = &tail[tail.len() - PACK_TRAILER_LEN..];
        let base = pack_len - TRAILER;
        if t[T_MAGIC..] != PACK_MAGIC {
            return Err(PackError::BadMagic { place: "trailer", offset: base + T_MAGIC as u64 });
        }
        let version = PackVersion::try_from(get_u16(t, T_VERSION))
            .map_err(|version| PackError::UnsupportedVersion { place: "trailer", version })?;
        let cipher = if version == PackVersion::V3 {
            let code = t[T_CIPHER];
            let cipher =
                Cipher::from_code(code).ok_or(PackError::UnknownCipher { code, offset: base + T_CIPHER as u64 })?;
            check_reserved(t, T_CIPHER + 1..T_INDEX_HASH, "trailer", base)?;
            cipher
        } else {
            check_reserved(t, T_VERSION + 2..T_INDEX_HASH, "trailer", base)?;
            Cipher::XChaCha20Poly1305
        };
        check_reserved(t, T_INDEX_HASH + 32..T_MAGIC, "trailer", base)?;
        let trailer = PackTrailer {
            version,
            cipher,
            index_offset: get_u64(t, T_INDEX_OFFSET),
            count: get_u32(t, T_COUNT),
            index_hash: get_array(t, T_INDEX_HASH),
        };
        let entry_len = version.entry_len() as u64;
        let fits = trailer.index_offset >= HEADER
            && trailer.index_offset.checked_add(u64::from(trailer.count) * entry_len) == Some(base);
        if !fits {
            return Err(PackError::CountMismatch {
                count: trailer.count,
                index_offset: trailer.index_offset,
                pack_len,
                index_end: base,
            });
        }
        if trailer.count == 0 {
            return Err(PackError::Empty);
        }
        Ok(trailer)
    }

    /// Decodes and checks the index bytes that `trailer` locates: their hash,
    /// every entry's lengths and id, that the blobs tile bytes
    /// `32 .. index_offset` exactly in order, and that no block appears twice.
    pub fn parse_index(index: &[u8], trailer: &PackTrailer) -> Result<PackIndex, PackError> {
        let version = trailer.version;
        let entry_len = version.entry_len();
        let want_len = u64::from(trailer.count) * entry_len as u64;
        if index.len() as u64 != want_len || blake3::hash(index) != blake3::Hash::from(trailer.index_hash) {
            return Err(PackError::IndexHashMismatch { offset: trailer.index_offset });
        }
        let mut entries = Vec::with_capacity(index.len() / entry_len);
        let mut seen: HashMap<BlockId, u32> = HashMap::with_capacity(entries.capacity());
        let mut expected = HEADER;
        for (n, raw) in (0u32..).zip(index.chunks_exact(entry_len)) {
            if version.has_checksums() {
                let base = trailer.index_offset + u64::from(n) * entry_len as u64;
                let from = if version == PackVersion::V3 { E_ENCODING + 1 } else { E_ENCODING };
                check_reserved(raw, from..INDEX_ENTRY_LEN, "index entry", base)?;
                if version == PackVersion::V3 && raw[E_ENCODING] > 1 {
                    let offset = get_u64(raw, 32);
                    return Err(PackError::BadEncoding { entry: n, offset, value: raw[E_ENCODING] });
                }
            }
            let e = PackEntry::decode(raw, version);
            e.check(n)?;
            if e.offset < expected {
                return Err(PackError::Overlap { entry: n, offset: e.offset, expected });
            }
            if e.offset > expected {
                return Err(PackError::Gap { entry: n, offset: e.offset, expected });
            }
            let end = e.offset + u64::from(e.blob_len);
            if end > trailer.index_offset {
                return Err(PackError::OutOfRange {
                    entry: n,
                    offset: e.offset,
                    len: e.blob_len,
                    limit: trailer.index_offset,
                });
            }
            if let Some(&first) = seen.get(&e.id) {
                return Err(PackError::DuplicateId { entry: n, offset: e.offset, id: e.id, first });
            }
            seen.insert(e.id, n);
            entries.push(e);
            expected = end;
        }
        if expected != trailer.index_offset {
            return Err(PackError::Unaccounted { from: expected, to: trailer.index_offset });
        }
        Ok(PackIndex { version, cipher: trailer.cipher, entries, index_offset: trailer.index_offset })
    }

    /// The pack's format version.
    pub fn version(&self) -> PackVersion {
        self.version
    }

    /// The cipher the pack's blobs are sealed with: pass it to
    /// [`crate::keys::Keys::open_in_place`].
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The entries, in pack order.
    pub fn entries(&self) -> &[PackEntry] {
        &self.entries
    }

    /// Byte offset of the index (the end of the blobs).
    pub fn index_offset(&self) -> u64 {
        self.index_offset
    }

    /// The entry number and entry naming `id`, if this pack holds it.
    pub fn find(&self, id: &BlockId) -> Option<(u32, &PackEntry)> {
        (0u32..).zip(&self.entries).find(|(_, e)| e.id == *id)
    }
}

/// Checks a pack's 32-byte header: magic, version, reserved bytes.
pub fn check_header(bytes: &[u8]) -> Result<(), PackError> {
    check_header_version(bytes).map(|_| ())
}

fn check_header_version(bytes: &[u8]) -> Result<PackVersion, PackError> {
    if bytes.len() < PACK_HEADER_LEN {
        return Err(PackError::TooShort { len: bytes.len() as u64 });
    }
    if bytes[..8] != PACK_MAGIC {
        return Err(PackError::BadMagic { place: "header", offset: 0 });
    }
    let version = PackVersion::try_from(get_u16(bytes, 8))
        .map_err(|version| PackError::UnsupportedVersion { place: "header", version })?;
    check_reserved(bytes, 10..PACK_HEADER_LEN, "header", 0)?;
    Ok(version)
}

/// A whole pack in memory, structurally checked.
#[derive(Debug, Clone)]
pub struct Pack<'a> {
    bytes: &'a [u8],
    index: PackIndex,
}

impl<'a> Pack<'a> {
    /// Checks header, trailer and index. Does not hash the blobs: a flipped
    /// bit inside a blob is found by [`Pack::verify`] (without the key) or
    /// when the blob is opened (with it).
    pub fn parse(bytes: &'a [u8]) -> Result<Pack<'a>, PackError> {
        let len = bytes.len() as u64;
        if len < HEADER + TRAILER {
            return Err(PackError::TooShort { len });
        }
        let version = check_header_version(bytes)?;
        let trailer = PackIndex::parse_trailer(bytes, len).map_err(|e| match e {
            PackError::BadMagic { .. } => PackError::Truncated { len },
            other => other,
        })?;
        if trailer.version != version {
            return Err(PackError::VersionMismatch { header: version.number(), trailer: trailer.version.number() });
        }
        let r = trailer.index_range();
        let index = PackIndex::parse_index(&bytes[to_usize(r.start)..to_usize(r.end)], &trailer)?;
        Ok(Pack { bytes, index })
    }

    /// [`Pack::parse`], then the vault's keyless scrub: the pack's name is
    /// `expected` ([`Pack::check_id`]) and every blob matches its CRC
    /// ([`Pack::check_checksums`]). Catches any change to any byte, a
    /// truncation, and one pack stored under another's name.
    pub fn verify(bytes: &'a [u8], expected: &PackId) -> Result<Pack<'a>, PackError> {
        let pack = Pack::parse(bytes)?;
        pack.check_id(expected)?;
        if let Some(e) = pack.check_checksums().into_iter().next() {
            return Err(e);
        }
        Ok(pack)
    }

    /// The pack's name, computed from its bytes: BLAKE3 of header, index
    /// and trailer (v2), of every byte (v1).
    pub fn id(&self) -> PackId {
        match self.index.version {
            PackVersion::V1 => PackId::of(self.bytes),
            v @ (PackVersion::V2 | PackVersion::V3) => {
                tail_pack_id(v, &self.bytes[to_usize(self.index.index_offset)..])
            }
        }
    }

    /// Checks that the pack is named `expected` (*IdMismatch* otherwise).
    pub fn check_id(&self, expected: &PackId) -> Result<(), PackError> {
        let got = self.id();
        if got != *expected {
            return Err(PackError::IdMismatch { expected: *expected, got });
        }
        Ok(())
    }

    /// Checks every blob against its CRC (version 2; a version 1 pack has
    /// none, its name covers the blobs): one *BlobChecksum* per damaged blob.
    pub fn check_checksums(&self) -> Vec<PackError> {
        (0u32..)
            .zip(&self.index.entries)
            .filter_map(|(n, e)| {
                let r = e.range();
                e.check_checksum(n, &self.bytes[to_usize(r.start)..to_usize(r.end)]).err()
            })
            .collect()
    }

    /// The checked index.
    pub fn index(&self) -> &PackIndex {
        &self.index
    }

    /// The sealed blob of entry `n`, to open with
    /// `Keys::open_block(index.cipher(), &entry.id, blob)`.
    pub fn blob(&self, n: usize) -> Result<(&PackEntry, &'a [u8]), PackError> {
        let e =
            self.index.entries.get(n).ok_or(PackError::NoSuchEntry { entry: n, count: self.index.entries.len() })?;
        let r = e.range();
        Ok((e, &self.bytes[to_usize(r.start)..to_usize(r.end)]))
    }
}

/// Runs the pack parsers on `data` the way the `pack` fuzz target does: the
/// whole input as a pack, and its tail as a trailer. An accepted version 2
/// pack must be exactly what [`PackWriter`] writes for the same blobs and
/// CRCs (a version 1 pack, which this code no longer writes, must keep its
/// blobs and name). Returns the number of entries accepted. Panics only on a
/// real bug.
pub fn fuzz_pack_bytes(data: &[u8]) -> usize {
    let trailer = PackIndex::parse_trailer(data, data.len() as u64);
    let Ok(pack) = Pack::parse(data) else { return 0 };
    assert!(trailer.is_ok(), "a parsed pack has a valid trailer");
    let version = pack.index().version();
    let cipher = pack.index().cipher();
    let mut w = match version {
        PackVersion::V3 => PackWriter::v3(Vec::with_capacity(data.len()), cipher),
        _ => PackWriter::new(Vec::with_capacity(data.len())),
    }
    .expect("Vec output");
    for n in 0..pack.index().entries().len() {
        let (e, blob) = pack.blob(n).expect("entry in range");
        let checksum = e.checksum.unwrap_or_else(|| blob_checksum(blob));
        w.add_encoded(&e.id, blob, checksum, e.compressed).expect("an accepted entry is accepted again");
    }
    let done = w.finish().expect("Vec output");
    let again = Pack::parse(&done.out).expect("what the writer writes parses");
    assert_eq!(again.id(), done.id);
    assert_eq!(again.index().cipher(), cipher);
    match version {
        PackVersion::V2 | PackVersion::V3 => {
            assert_eq!(done.out, data, "pack round trip");
            assert_eq!(done.id, pack.id());
            assert_eq!(&done.index, pack.index());
        }
        PackVersion::V1 => {
            assert_eq!(pack.id(), PackId::of(data));
            for n in 0..pack.index().entries().len() {
                assert_eq!(again.blob(n).expect("same count").1, pack.blob(n).expect("entry in range").1);
            }
        }
    }
    pack.index().entries().len()
}

mod writer;
pub use writer::{FinishedPack, PackWriteError, PackWriter};

#[cfg(test)]
mod tests;
