//! Page packs: the map pages one cycle wrote, stored as one object.
//!
//! A point changes a few map pages per cycle; stored one object each, they
//! cost a request (and on a local vault an fsync and a rename) per page, more
//! than the data on an object store. A page pack holds up to
//! [`MAX_PACK_PAGES`] encoded map pages back to back, an index naming each
//! by its [`PageId`] with its place, and a trailer at the end, so that a
//! reader fetches the index with one suffix-range request and the pages it
//! needs with one range each (adjacent pages coalesced). The object is named
//! by BLAKE3 of all its bytes, like a map page, and lives beside the map
//! pages (`pages/HEX`); a format-3 root says which pack holds each of its
//! pages ([`crate::Root::page_packs`]). See FORMAT.md, "Page pack".
//!
//! Pages inside are not trusted because of where they are: each is checked
//! against the page id the root names ([`crate::Root::check_page`]) like a
//! page stored alone. [`PagePack::verify`] is the keyless scrub.

use std::ops::Range;

use crate::codec::{first_nonzero, get_array, get_u16, get_u32, get_u64, put_u16, put_u32, put_u64, to_usize};
use crate::ids::PageId;
use crate::map_page::{MapPage, PageError, PAGE_HEADER_LEN, PAGE_LEN};

/// First 8 bytes of BLAKE3("lifeboat page pack v1").
pub const PAGE_PACK_MAGIC: [u8; 8] = [0xf3, 0xe7, 0x15, 0x48, 0xea, 0x6d, 0x2e, 0x63];
/// The page pack format this code writes.
pub const PAGE_PACK_VERSION: u16 = 1;
/// Size of the header: magic, version, 6 reserved bytes.
pub const PAGE_PACK_HEADER_LEN: usize = 16;
/// Size of an index entry: page id (32), offset (u64), length (u32), reserved (u32).
pub const PAGE_PACK_ENTRY_LEN: usize = 48;
/// Size of the trailer: index offset (u64), count (u32), version (u16),
/// reserved (u16), magic (8).
pub const PAGE_PACK_TRAILER_LEN: usize = 24;
/// Most pages one pack holds: its largest size is then 8.4 MiB (under the
/// vault server's 16 MiB bound for a page object), and its index 24 KiB.
pub const MAX_PACK_PAGES: usize = 512;
/// A suffix this long always holds the whole index and trailer.
pub const PAGE_PACK_MAX_TAIL: u64 = (MAX_PACK_PAGES * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN) as u64;

/// Why bytes are not a page pack.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PagePackError {
    /// Shorter than header, one entry and trailer.
    #[error("the page pack is {len} bytes, too short to hold a page (truncated)")]
    TooShort {
        /// Its length.
        len: u64,
    },
    /// A magic is not the page pack's.
    #[error("the page pack's {0} does not carry its magic (not a page pack, or damaged)")]
    BadMagic(&'static str),
    /// A version this code does not read.
    #[error("page pack format version {0} is not supported by this build (it knows version 1)")]
    UnsupportedVersion(u16),
    /// A reserved byte is not zero.
    #[error("the page pack's {0} has a reserved byte that is not zero")]
    Reserved(&'static str),
    /// The count is 0 or above [`MAX_PACK_PAGES`], or does not fit the length.
    #[error("the page pack says {count} pages at index offset {index_offset} in {len} bytes (truncated or damaged)")]
    BadFraming {
        /// The count found.
        count: u32,
        /// The index offset found.
        index_offset: u64,
        /// The object's length.
        len: u64,
    },
    /// An entry's place is not where the previous one ended, or its length is
    /// not a page's.
    #[error("entry {entry} of the page pack places its page at {offset}+{len}: {why}")]
    BadEntry {
        /// Entry number, 0-based.
        entry: usize,
        /// Offset found.
        offset: u64,
        /// Length found.
        len: u32,
        /// What is wrong.
        why: &'static str,
    },
    /// A page id appears twice.
    #[error("page {0} is in the page pack twice")]
    DuplicatePage(PageId),
    /// The whole pack does not hash to its name.
    #[error("the page pack hashes to {got}, not to its name {expected} (damaged or swapped)")]
    IdMismatch {
        /// The name it was stored under.
        expected: PageId,
        /// What its bytes hash to.
        got: PageId,
    },
    /// A page inside is damaged.
    #[error("page {index} of the page pack ({id}): {error}")]
    Page {
        /// Entry number, 0-based.
        index: usize,
        /// The page id the index gives.
        id: PageId,
        /// What is wrong with it.
        error: PageError,
    },
    /// Nothing to pack, or more than [`MAX_PACK_PAGES`] pages.
    #[error("a page pack holds 1 ..= 512 pages, not {0}")]
    Count(usize),
}

/// One page's place in a page pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePackEntry {
    /// The page's id (BLAKE3 of its bytes).
    pub id: PageId,
    /// Its bytes' place in the pack.
    pub range: Range<u64>,
}

/// A page pack's index, parsed from its tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PagePack {
    /// The pages, in pack order.
    pub entries: Vec<PagePackEntry>,
}

impl PagePackEntry {
    /// The page's bytes in `pack`, the whole page pack this entry was
    /// parsed from.
    pub fn bytes<'a>(&self, pack: &'a [u8]) -> &'a [u8] {
        &pack[to_usize(self.range.start)..to_usize(self.range.end)]
    }
}

impl PagePack {
    /// Packs encoded map pages (id, bytes) in the order given. Returns the
    /// object's bytes; its name is `PageId::of` them. Each page must be a
    /// valid map page hashing to its id.
    pub fn encode(pages: &[(PageId, &[u8])]) -> Result<Vec<u8>, PagePackError> {
        if pages.is_empty() || pages.len() > MAX_PACK_PAGES {
            return Err(PagePackError::Count(pages.len()));
        }
        let data: usize = pages.iter().map(|(_, b)| b.len()).sum();
        let mut out =
            Vec::with_capacity(PAGE_PACK_HEADER_LEN + data + pages.len() * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN);
        out.extend_from_slice(&PAGE_PACK_MAGIC);
        out.extend_from_slice(&PAGE_PACK_VERSION.to_le_bytes());
        out.extend_from_slice(&[0; 6]);
        let mut seen = std::collections::HashSet::new();
        for (i, (id, bytes)) in pages.iter().enumerate() {
            if !seen.insert(*id) {
                return Err(PagePackError::DuplicatePage(*id));
            }
            check_page(i, id, bytes)?;
            out.extend_from_slice(bytes);
        }
        let index_offset = out.len() as u64;
        let mut at = PAGE_PACK_HEADER_LEN as u64;
        for (id, bytes) in pages {
            let mut e = [0u8; PAGE_PACK_ENTRY_LEN];
            e[..32].copy_from_slice(&id.0);
            put_u64(&mut e, 32, at);
            put_u32(&mut e, 40, u32::try_from(bytes.len()).expect("a page is 16 KiB at most"));
            out.extend_from_slice(&e);
            at += bytes.len() as u64;
        }
        let mut t = [0u8; PAGE_PACK_TRAILER_LEN];
        put_u64(&mut t, 0, index_offset);
        put_u32(&mut t, 8, u32::try_from(pages.len()).expect("at most 512"));
        put_u16(&mut t, 12, PAGE_PACK_VERSION);
        t[16..].copy_from_slice(&PAGE_PACK_MAGIC);
        out.extend_from_slice(&t);
        Ok(out)
    }

    /// Parses the index from the last `tail.len()` bytes of a `len`-byte
    /// page pack (the whole object, or a suffix of at least
    /// [`PAGE_PACK_MAX_TAIL`] bytes, or at least the index and trailer).
    /// Checks the framing; not the pages, nor the header unless the tail
    /// holds it. `Ok(None)`: the tail is too short to hold the index; fetch
    /// `needed` bytes instead.
    pub fn parse_tail(tail: &[u8], len: u64) -> Result<Result<PagePack, u64>, PagePackError> {
        let min = (PAGE_PACK_HEADER_LEN + PAGE_HEADER_LEN + 32 + PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN) as u64;
        if len < min || (tail.len() as u64) < PAGE_PACK_TRAILER_LEN as u64 || tail.len() as u64 > len {
            return Err(PagePackError::TooShort { len });
        }
        let t = &tail[tail.len() - PAGE_PACK_TRAILER_LEN..];
        if t[16..] != PAGE_PACK_MAGIC {
            return Err(PagePackError::BadMagic("trailer"));
        }
        let version = get_u16(t, 12);
        if version != PAGE_PACK_VERSION {
            return Err(PagePackError::UnsupportedVersion(version));
        }
        if get_u16(t, 14) != 0 {
            return Err(PagePackError::Reserved("trailer"));
        }
        let (index_offset, count) = (get_u64(t, 0), get_u32(t, 8));
        let framing = PagePackError::BadFraming { count, index_offset, len };
        let index_len = u64::from(count) * PAGE_PACK_ENTRY_LEN as u64;
        if count == 0
            || count as usize > MAX_PACK_PAGES
            || index_offset.checked_add(index_len + PAGE_PACK_TRAILER_LEN as u64) != Some(len)
            || index_offset < (PAGE_PACK_HEADER_LEN + PAGE_HEADER_LEN + 32) as u64
        {
            return Err(framing);
        }
        let needed = index_len + PAGE_PACK_TRAILER_LEN as u64;
        if (tail.len() as u64) < needed {
            return Ok(Err(needed));
        }
        let tail_start = len - tail.len() as u64;
        if tail_start == 0 {
            check_header(tail)?;
        }
        let index = &tail[to_usize(index_offset - tail_start)..tail.len() - PAGE_PACK_TRAILER_LEN];
        let mut entries = Vec::with_capacity(count as usize);
        let mut seen = std::collections::HashSet::with_capacity(count as usize);
        let mut at = PAGE_PACK_HEADER_LEN as u64;
        for (i, e) in index.chunks_exact(PAGE_PACK_ENTRY_LEN).enumerate() {
            let id = PageId(get_array(e, 0));
            let (offset, plen) = (get_u64(e, 32), get_u32(e, 40));
            let bad = |why| PagePackError::BadEntry { entry: i, offset, len: plen, why };
            if first_nonzero(e, 44..48).is_some() {
                return Err(PagePackError::Reserved("index"));
            }
            if offset != at {
                return Err(bad("each page starts where the one before ends (the first at byte 16)"));
            }
            let plen64 = u64::from(plen);
            if plen64 < (PAGE_HEADER_LEN + 32) as u64 || plen64 > PAGE_LEN as u64 || (plen64 - 32) % 32 != 0 {
                return Err(bad("not the length of a map page"));
            }
            if offset + plen64 > index_offset {
                return Err(bad("it runs into the index"));
            }
            if !seen.insert(id) {
                return Err(PagePackError::DuplicatePage(id));
            }
            at = offset + plen64;
            entries.push(PagePackEntry { id, range: offset..at });
        }
        if at != index_offset {
            return Err(PagePackError::BadFraming { count, index_offset, len });
        }
        Ok(Ok(PagePack { entries }))
    }

    /// Parses a whole page pack held in memory (framing and header; the
    /// pages are checked where they are used, against the root's ids).
    pub fn parse(bytes: &[u8]) -> Result<PagePack, PagePackError> {
        match PagePack::parse_tail(bytes, bytes.len() as u64)? {
            Ok(pack) => Ok(pack),
            Err(_) => unreachable!("the whole object holds its index"),
        }
    }

    /// The keyless scrub: the pack hashes to its name `id`, frames, and every
    /// page inside hashes to the id its index gives and decodes.
    pub fn verify(bytes: &[u8], id: &PageId) -> Result<PagePack, PagePackError> {
        if !id.matches(bytes) {
            return Err(PagePackError::IdMismatch { expected: *id, got: PageId::of(bytes) });
        }
        let pack = PagePack::parse(bytes)?;
        for (i, e) in pack.entries.iter().enumerate() {
            check_page(i, &e.id, e.bytes(bytes))?;
        }
        Ok(pack)
    }

    /// The entry of page `id`, if the pack holds it.
    pub fn find(&self, id: &PageId) -> Option<&PagePackEntry> {
        self.entries.iter().find(|e| e.id == *id)
    }
}

/// Whether `bytes` start like a page pack (its header magic); a map page
/// starts with its own.
pub fn is_page_pack(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[..8] == PAGE_PACK_MAGIC
}

fn check_header(b: &[u8]) -> Result<(), PagePackError> {
    if b[..8] != PAGE_PACK_MAGIC {
        return Err(PagePackError::BadMagic("header"));
    }
    let version = get_u16(b, 8);
    if version != PAGE_PACK_VERSION {
        return Err(PagePackError::UnsupportedVersion(version));
    }
    if first_nonzero(b, 10..PAGE_PACK_HEADER_LEN).is_some() {
        return Err(PagePackError::Reserved("header"));
    }
    Ok(())
}

fn check_page(index: usize, id: &PageId, bytes: &[u8]) -> Result<(), PagePackError> {
    let error = if !id.matches(bytes) {
        PageError::IdMismatch { expected: *id, got: PageId::of(bytes) }
    } else {
        match MapPage::decode(bytes) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        }
    };
    Err(PagePackError::Page { index, id: *id, error })
}

/// Runs the page pack parser on `data` the way a fuzz target would: an
/// accepted pack must re-encode to the same bytes. Returns whether it was
/// accepted. Panics only on a real bug.
pub fn fuzz_page_pack_bytes(data: &[u8]) -> bool {
    // As the tail of a longer object: framing only, never a panic.
    for extra in [0u64, 1, 4096] {
        let _ = PagePack::parse_tail(data, data.len() as u64 + extra);
    }
    let Ok(pack) = PagePack::verify(data, &PageId::of(data)) else { return false };
    let pages: Vec<(PageId, &[u8])> = pack.entries.iter().map(|e| (e.id, e.bytes(data))).collect();
    assert_eq!(PagePack::encode(&pages).expect("accepted pages re-encode"), data, "page pack round trip");
    true
}

#[cfg(test)]
#[allow(clippy::cast_possible_truncation)] // test sizes are small
mod tests {
    use super::*;
    use crate::ids::BlockId;

    fn page(first_block: u64, entries: usize, seed: u8) -> (PageId, Vec<u8>) {
        let bytes = MapPage { first_block, entries: (0..entries).map(|i| BlockId([seed ^ i as u8 | 1; 32])).collect() }
            .encode();
        (PageId::of(&bytes), bytes)
    }

    fn pack_of(pages: &[(PageId, Vec<u8>)]) -> Vec<u8> {
        let refs: Vec<(PageId, &[u8])> = pages.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        PagePack::encode(&refs).unwrap()
    }

    #[test]
    fn magic_is_derived_from_the_versioned_string() {
        assert_eq!(PAGE_PACK_MAGIC, blake3::hash(b"lifeboat page pack v1").as_bytes()[..8]);
    }

    #[test]
    fn round_trip_and_ranged_reads() {
        let pages = vec![page(0, 512, 1), page(512, 512, 2), page(1024, 7, 3)];
        let b = pack_of(&pages);
        let id = PageId::of(&b);
        let pack = PagePack::verify(&b, &id).unwrap();
        assert_eq!(pack.entries.len(), 3);
        for ((pid, bytes), e) in pages.iter().zip(&pack.entries) {
            assert_eq!(e.id, *pid);
            assert_eq!(e.bytes(&b), bytes.as_slice());
        }
        // From a suffix: the index alone is enough; a shorter one asks for more.
        let need = 3 * PAGE_PACK_ENTRY_LEN + PAGE_PACK_TRAILER_LEN;
        assert_eq!(PagePack::parse_tail(&b[b.len() - need..], b.len() as u64).unwrap(), Ok(pack.clone()));
        assert_eq!(PagePack::parse_tail(&b[b.len() - 30..], b.len() as u64).unwrap(), Err(need as u64));
        assert!(is_page_pack(&b) && !is_page_pack(&pages[0].1));
        assert!(fuzz_page_pack_bytes(&b));
    }

    #[test]
    fn every_flipped_bit_is_refused_by_the_scrub() {
        let pages = vec![page(0, 3, 1), page(512, 2, 2)];
        let b = pack_of(&pages);
        let id = PageId::of(&b);
        for bit in 0..b.len() * 8 {
            let mut c = b.clone();
            c[bit / 8] ^= 1 << (bit % 8);
            assert!(PagePack::verify(&c, &id).is_err(), "bit {bit}");
            // Without the name, the structure or a page's own id still catches it.
            let parsed = PagePack::verify(&c, &PageId::of(&c));
            assert!(parsed.is_err(), "bit {bit} passed the structural scrub");
        }
    }

    #[test]
    fn damage_is_named() {
        let pages = vec![page(0, 3, 1), page(512, 2, 2)];
        let b = pack_of(&pages);
        let len = b.len() as u64;
        assert!(matches!(PagePack::parse(&b[..b.len() - 1]), Err(PagePackError::BadMagic("trailer"))));
        let mut c = b.clone();
        c[0] ^= 1;
        assert!(matches!(PagePack::parse(&c), Err(PagePackError::BadMagic("header"))));
        let mut c = b.clone();
        let at = b.len() - PAGE_PACK_TRAILER_LEN + 8;
        c[at] = 3; // count
        assert!(matches!(PagePack::parse(&c), Err(PagePackError::BadFraming { count: 3, .. })));
        let mut c = b.clone();
        let e1 = b.len() - PAGE_PACK_TRAILER_LEN - PAGE_PACK_ENTRY_LEN;
        c[e1 + 32] ^= 0x20; // second entry's offset
        assert!(matches!(PagePack::parse(&c), Err(PagePackError::BadEntry { entry: 1, .. })));
        let twice = [pages[0].clone(), pages[0].clone()];
        let refs: Vec<(PageId, &[u8])> = twice.iter().map(|(id, b)| (*id, b.as_slice())).collect();
        assert_eq!(PagePack::encode(&refs), Err(PagePackError::DuplicatePage(pages[0].0)));
        assert_eq!(PagePack::encode(&[]), Err(PagePackError::Count(0)));
        let wrong = [(pages[1].0, pages[0].1.as_slice())];
        assert!(matches!(PagePack::encode(&wrong), Err(PagePackError::Page { index: 0, .. })));
        assert!(matches!(PagePack::verify(&b, &pages[0].0), Err(PagePackError::IdMismatch { .. })));
        assert!(matches!(PagePack::parse_tail(&b[..10], len), Err(PagePackError::TooShort { .. })));
    }

    #[test]
    fn fuzz_harness_on_pseudo_random_input() {
        let good = pack_of(&[page(0, 5, 9)]);
        let mut rng = crate::codec::XorShift(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let mut c = good.clone();
            for _ in 0..=rng.below(3) {
                let i = rng.below(c.len());
                c[i] = rng.next().to_le_bytes()[0];
            }
            if rng.below(4) == 0 {
                c.truncate(rng.below(c.len()));
            }
            fuzz_page_pack_bytes(&c);
        }
    }
}
