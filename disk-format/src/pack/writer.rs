//! Streaming pack writer: header, then each sealed blob as it comes, then
//! index and trailer. Writes version 2 (XChaCha20-Poly1305 blobs) or 3 (the
//! cipher in the trailer): each blob's CRC-32 goes into its index entry, and
//! the pack id is BLAKE3 of header, index and trailer, so the blobs
//! themselves are never hashed here.

use std::collections::HashMap;
use std::io::Write;

use super::{
    blob_checksum, header_bytes, tail_pack_id, PackEntry, PackError, PackIndex, PackVersion, HEADER, INDEX_ENTRY_LEN,
    OVERHEAD, PACK_MAGIC, PACK_TRAILER_LEN, PACK_VERSION, T_CIPHER, T_COUNT, T_INDEX_HASH, T_INDEX_OFFSET, T_MAGIC,
    T_VERSION,
};
use crate::codec::{put_u16, put_u32, put_u64};
use crate::ids::{BlockId, PackId};
use crate::keys::{Cipher, SealFrame, SEAL_OVERHEAD};

const _: () = assert!(PACK_VERSION == 3);

/// Why a pack could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackWriteError {
    /// The output failed. The pack written so far is unusable: discard it.
    #[error("writing the pack failed: {0}")]
    Io(#[from] std::io::Error),
    /// The blob given would make an invalid pack (nothing was written).
    #[error("refused to add a blob: {0}")]
    Invalid(#[from] PackError),
}

/// What [`PackWriter::finish`] returns.
#[derive(Debug)]
pub struct FinishedPack<W> {
    /// The pack's name: BLAKE3 of header, index and trailer.
    pub id: PackId,
    /// Total bytes written.
    pub len: u64,
    /// The index written, for the vault's block locations.
    pub index: PackIndex,
    /// The output, handed back.
    pub out: W,
}

/// Writes a pack to any output (a `Vec<u8>`, a buffered file, a socket),
/// one sealed blob at a time. Wrap a file or socket in a `BufWriter` of
/// 1 MiB or more: the writer issues one write per part.
#[derive(Debug)]
pub struct PackWriter<W: Write> {
    out: W,
    version: PackVersion,
    cipher: Cipher,
    entries: Vec<PackEntry>,
    seen: HashMap<BlockId, u32>,
    offset: u64,
}

impl<W: Write> PackWriter<W> {
    /// Starts a pack of XChaCha20-Poly1305 blobs (version 2): writes the header.
    pub fn new(out: W) -> Result<PackWriter<W>, PackWriteError> {
        PackWriter::start(out, PackVersion::V2, Cipher::XChaCha20Poly1305)
    }

    /// Starts a pack of blobs sealed with `cipher`: version 2 for
    /// XChaCha20-Poly1305 (readable by builds that predate AES-256-GCM),
    /// version 3 for AES-256-GCM.
    pub fn for_cipher(out: W, cipher: Cipher) -> Result<PackWriter<W>, PackWriteError> {
        match cipher {
            Cipher::XChaCha20Poly1305 => PackWriter::new(out),
            Cipher::Aes256Gcm => PackWriter::v3(out, cipher),
        }
    }

    /// Starts a version 3 pack naming `cipher` (whichever it is): the
    /// version that can record compressed blocks ([`PackWriter::add_encoded`]).
    pub fn v3(out: W, cipher: Cipher) -> Result<PackWriter<W>, PackWriteError> {
        PackWriter::start(out, PackVersion::V3, cipher)
    }

    fn start(mut out: W, version: PackVersion, cipher: Cipher) -> Result<PackWriter<W>, PackWriteError> {
        out.write_all(&header_bytes(version))?;
        Ok(PackWriter { out, version, cipher, entries: Vec::new(), seen: HashMap::new(), offset: HEADER })
    }

    /// The cipher the pack records for its blobs: seal with it.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// Bytes written so far (header and blobs): compare with the target pack
    /// size to decide when to [`finish`](PackWriter::finish).
    pub fn bytes_written(&self) -> u64 {
        self.offset
    }

    /// The pack's whole length once finished (header, blobs, index and
    /// trailer) if one more blob of `blob_len` bytes were added: compare
    /// with the largest pack wanted before adding it.
    pub fn len_with(&self, blob_len: usize) -> u64 {
        let entries = self.entries.len() as u64 + 1;
        self.offset + blob_len as u64 + entries * INDEX_ENTRY_LEN as u64 + PACK_TRAILER_LEN as u64
    }

    /// Blobs added so far.
    pub fn count(&self) -> usize {
        self.entries.len()
    }

    /// Whether the pack already holds block `id`.
    pub fn contains(&self, id: &BlockId) -> bool {
        self.seen.contains_key(id)
    }

    fn admit(&self, id: &BlockId, plain_len: usize, checksum: u32) -> Result<PackEntry, PackError> {
        let n = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
        let plain = u32::try_from(plain_len).unwrap_or(u32::MAX);
        let entry = PackEntry {
            id: *id,
            offset: self.offset,
            blob_len: plain.saturating_add(OVERHEAD),
            plain_len: plain,
            checksum: Some(checksum),
            compressed: false,
        };
        entry.check(n)?;
        if n == u32::MAX {
            return Err(PackError::TooManyEntries);
        }
        if let Some(&first) = self.seen.get(id) {
            return Err(PackError::DuplicateId { entry: n, offset: self.offset, id: *id, first });
        }
        Ok(entry)
    }

    fn record(&mut self, entry: PackEntry) {
        let n = u32::try_from(self.entries.len()).expect("checked by admit");
        self.seen.insert(entry.id, n);
        self.offset += u64::from(entry.blob_len);
        self.entries.push(entry);
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), PackWriteError> {
        self.out.write_all(bytes)?;
        Ok(())
    }

    /// Appends a sealed blob (`nonce ‖ ciphertext ‖ tag`) for block `id`,
    /// computing its CRC.
    pub fn add_blob(&mut self, id: &BlockId, blob: &[u8]) -> Result<(), PackWriteError> {
        self.add_blob_with_checksum(id, blob, blob_checksum(blob))
    }

    /// [`PackWriter::add_blob`] with the blob's CRC ([`blob_checksum`])
    /// computed by the caller, e.g. by the thread that sealed the blob while
    /// it was still in that core's cache. The writer does not recompute it:
    /// a wrong one makes a pack that `Pack::verify` refuses at this blob.
    pub fn add_blob_with_checksum(&mut self, id: &BlockId, blob: &[u8], checksum: u32) -> Result<(), PackWriteError> {
        self.add_encoded(id, blob, checksum, false)
    }

    /// [`PackWriter::add_blob_with_checksum`] for a blob that holds its
    /// block zstd-compressed when `compressed` (recorded in its index
    /// entry). Only a version 3 pack records it: a version 2 writer refuses
    /// a compressed blob (*BadEncoding*).
    pub fn add_encoded(
        &mut self,
        id: &BlockId,
        blob: &[u8],
        checksum: u32,
        compressed: bool,
    ) -> Result<(), PackWriteError> {
        if compressed && self.version != PackVersion::V3 {
            let entry = u32::try_from(self.entries.len()).unwrap_or(u32::MAX);
            return Err(PackError::BadEncoding { entry, offset: self.offset, value: 1 }.into());
        }
        let plain = blob.len().checked_sub(SEAL_OVERHEAD).ok_or_else(|| PackError::BadLength {
            entry: u32::try_from(self.entries.len()).unwrap_or(u32::MAX),
            offset: self.offset,
            blob_len: u32::try_from(blob.len()).unwrap_or(u32::MAX),
            plain_len: 0,
        })?;
        let entry = PackEntry { compressed, ..self.admit(id, plain, checksum)? };
        self.put(blob)?;
        self.record(entry);
        Ok(())
    }

    /// Appends a blob sealed by [`crate::keys::Keys::seal_detached`]: its
    /// frame and its ciphertext (still in the caller's buffer).
    pub fn add_sealed(&mut self, id: &BlockId, frame: &SealFrame, ciphertext: &[u8]) -> Result<(), PackWriteError> {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&frame.nonce);
        crc.update(ciphertext);
        crc.update(&frame.tag);
        let entry = self.admit(id, ciphertext.len(), crc.finalize())?;
        self.put(&frame.nonce)?;
        self.put(ciphertext)?;
        self.put(&frame.tag)?;
        self.record(entry);
        Ok(())
    }

    /// Writes the index and trailer and flushes the output. A pack holds at
    /// least one blob.
    pub fn finish(mut self) -> Result<FinishedPack<W>, PackWriteError> {
        let count = u32::try_from(self.entries.len()).map_err(|_| PackError::TooManyEntries)?;
        if count == 0 {
            return Err(PackError::Empty.into());
        }
        let mut index = vec![0u8; self.entries.len() * INDEX_ENTRY_LEN];
        for (e, out) in self.entries.iter().zip(index.chunks_exact_mut(INDEX_ENTRY_LEN)) {
            e.encode(out);
        }
        let mut t = [0u8; PACK_TRAILER_LEN];
        put_u64(&mut t, T_INDEX_OFFSET, self.offset);
        put_u32(&mut t, T_COUNT, count);
        put_u16(&mut t, T_VERSION, self.version.number());
        if self.version == PackVersion::V3 {
            t[T_CIPHER] = self.cipher.code();
        }
        t[T_INDEX_HASH..T_INDEX_HASH + 32].copy_from_slice(blake3::hash(&index).as_bytes());
        t[T_MAGIC..].copy_from_slice(&PACK_MAGIC);
        // The tail (index ‖ trailer) is written in one piece and names the pack.
        let mut tail = index;
        tail.extend_from_slice(&t);
        self.put(&tail)?;
        self.out.flush()?;
        let index_offset = self.offset;
        Ok(FinishedPack {
            id: tail_pack_id(self.version, &tail),
            len: index_offset + tail.len() as u64,
            index: PackIndex { version: self.version, cipher: self.cipher, entries: self.entries, index_offset },
            out: self.out,
        })
    }
}
