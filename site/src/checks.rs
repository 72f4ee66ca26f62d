//! The checks an uploaded object passes before it becomes visible ("What the
//! server checks before an object is visible" in FORMAT.md), all without
//! the key, with `disk-format`'s own parsers (as `vault check` does):
//!
//! - a pack: its name is its [`PackId`] recomputed from the bytes received,
//!   its header, index and trailer parse, and every blob matches its CRC-32;
//! - a page: its name is BLAKE3 of its bytes;
//! - a root `DISK/SEQUENCE`: it parses and names that chain and sequence;
//! - an audit segment replaced: the new bytes begin with the stored ones
//!   (checked by the server against the version it replaces).
//!
//! A pack is streamed to the vault's `tmp/` ([`vault::StagedObject`]) and
//! checked there, read back piece by piece (header, trailer, index, then one
//! blob at a time: at most one block's blob in memory): its blobs' places
//! are known only from the index at its end, so their CRCs cannot be taken
//! on the way in.

use disk_format::pack::{check_header, pack_id_from_tail, PackIndex, PackVersion, PACK_HEADER_LEN, PACK_TRAILER_LEN};
use disk_format::{PackId, PageId, Root};
use vault::store::parse_root_name;
use vault::{Kind, StagedObject, VaultError};

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// Its bytes do not match its name, or do not parse (`422`).
    #[error("{object}: {why}")]
    Mismatch {
        /// `KIND/NAME`.
        object: String,
        /// What is wrong.
        why: String,
    },
    /// Reading it back failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

fn mismatch(kind: Kind, name: &str, why: impl Into<String>) -> CheckError {
    CheckError::Mismatch { object: format!("{}/{name}", kind.prefix()), why: why.into() }
}

/// Checks a whole object held in memory (pages and roots; other kinds pass).
pub fn check_object(kind: Kind, name: &str, bytes: &[u8]) -> Result<(), CheckError> {
    match kind {
        Kind::Page => {
            let want = PageId::from_hex(name).ok_or_else(|| mismatch(kind, name, "a page's name is 64 hex digits"))?;
            let got = PageId::of(bytes);
            if got != want {
                return Err(mismatch(kind, name, format!("the bytes hash to {got}, not to the name")));
            }
            Ok(())
        }
        Kind::Root => {
            let (disk, sequence) = parse_root_name(name)
                .ok_or_else(|| mismatch(kind, name, "a root's name is DISK/SEQUENCE (20 digits)"))?;
            let root = Root::decode_unauthenticated(bytes).map_err(|e| mismatch(kind, name, e.to_string()))?;
            if root.chain() != disk || root.sequence != sequence {
                return Err(mismatch(
                    kind,
                    name,
                    format!("the root inside is point {} of chain {:?}", root.sequence, root.chain()),
                ));
            }
            Ok(())
        }
        Kind::Pack => {
            let want = PackId::from_hex(name).ok_or_else(|| mismatch(kind, name, "a pack's name is 64 hex digits"))?;
            let pack = disk_format::Pack::verify(bytes, &want).map_err(|e| mismatch(kind, name, e.to_string()))?;
            drop(pack);
            Ok(())
        }
        _ => Ok(()),
    }
}

fn to_usize(n: u64) -> usize {
    usize::try_from(n).expect("bounded by the pack size limit")
}

/// Checks a pack staged in `tmp/` against `name` (see the module
/// documentation).
pub fn check_staged_pack(staged: &mut StagedObject<'_>, name: &str) -> Result<(), CheckError> {
    let kind = Kind::Pack;
    let want = PackId::from_hex(name).ok_or_else(|| mismatch(kind, name, "a pack's name is 64 hex digits"))?;
    let len = staged.len();
    if len < (PACK_HEADER_LEN + PACK_TRAILER_LEN) as u64 {
        return Err(mismatch(kind, name, format!("{len} bytes is too short for a pack")));
    }
    let mut header = [0u8; PACK_HEADER_LEN];
    staged.read_at(&mut header, 0)?;
    check_header(&header).map_err(|e| mismatch(kind, name, e.to_string()))?;
    let mut trailer = [0u8; PACK_TRAILER_LEN];
    staged.read_at(&mut trailer, len - PACK_TRAILER_LEN as u64)?;
    let t = PackIndex::parse_trailer(&trailer, len).map_err(|e| mismatch(kind, name, e.to_string()))?;
    if header[8..10] != t.version.number().to_le_bytes() {
        return Err(mismatch(kind, name, "header and trailer name different pack versions"));
    }
    let r = t.index_range();
    let mut tail = vec![0u8; to_usize(len - r.start)];
    staged.read_at(&mut tail, r.start)?;
    let index_len = to_usize(r.end - r.start);
    let index = PackIndex::parse_index(&tail[..index_len], &t).map_err(|e| mismatch(kind, name, e.to_string()))?;
    let got = match t.version {
        v @ (PackVersion::V2 | PackVersion::V3) => pack_id_from_tail(v, &tail).expect("named by its tail"),
        PackVersion::V1 => {
            let mut h = blake3::Hasher::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < len {
                let n = to_usize((len - at).min(buf.len() as u64));
                staged.read_at(&mut buf[..n], at)?;
                let _ = h.update(&buf[..n]);
                at += n as u64;
            }
            PackId(*h.finalize().as_bytes())
        }
    };
    if got != want {
        return Err(mismatch(kind, name, format!("its contents hash to {got}, not to its name")));
    }
    let mut blob = Vec::new();
    for (n, e) in (0u32..).zip(index.entries()) {
        if e.checksum.is_none() {
            continue;
        }
        blob.resize(e.blob_len as usize, 0);
        staged.read_at(&mut blob, e.offset)?;
        e.check_checksum(n, &blob).map_err(|e| mismatch(kind, name, e.to_string()))?;
    }
    Ok(())
}
